//! Postfix socketmap and tcp_table responders (filled in by the lookup work).

pub mod config;
