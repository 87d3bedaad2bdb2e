//! FastContainer manager (filled in by the FastContainer work).

pub mod cli;
pub mod config;
