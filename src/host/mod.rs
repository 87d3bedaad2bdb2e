//! The WebAssembly plugin host: the engine (wasmtime 48, pooling, epoch deadlines), the
//! capability imports, plugin loading with hot reload, failure policy and circuit breaker,
//! and the adapters the services use (milter chain, tables, policy, hooks).

pub mod bindings;
pub mod breaker;
pub mod calls;
pub mod caps;
pub mod cli;
pub mod config;
pub mod engine;
pub mod milter;
pub mod plugin;
pub mod pool;
pub mod set;
pub mod state;
