//! The WebAssembly plugin host (filled in by the plugin-host work).

pub mod cli;
pub mod config;
