//! The `[milter]` service: Postfix's `smtpd_milters` points here, and every SMTP transaction
//! runs through the configured plugin chain stage by stage.

pub mod chain;
pub mod config;
pub mod service;
