//! The domain registry (filled in by the registry work).

pub mod cli;
pub mod config;
