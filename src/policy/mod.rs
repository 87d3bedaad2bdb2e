//! Postfix SMTPD policy delegation responder (filled in by the lookup work).

pub mod config;
