//! Admin API (health, metrics, workers); filled in by the FastContainer work.

pub mod config;
