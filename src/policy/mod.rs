//! The Postfix SMTPD policy delegation responder (`check_policy_service`): each request's
//! attributes go through the `policy` plugin chain (global, then the recipient domain's
//! registry chain) and the answers fold into one `action=`.
//!
//! - [`config`]: the `[policy]` section.
//! - [`decide`]: how a chain's answers combine into one access(5) action.
//! - [`service`]: the listener and per-connection loop over the `wasmail-postfix` codec.

pub mod config;
pub mod decide;
pub mod service;
