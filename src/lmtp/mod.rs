//! The LMTP front: Postfix delivers every hosted domain's mail to one wasmail socket
//! (`virtual_transport = lmtp:unix:...`), and wasmail hands each recipient to its domain's
//! Dovecot worker.
//!
//! - [`protocol`]: the LMTP server protocol as a sans-IO state machine ([`protocol::Session`]).
//! - [`worker`]: the LMTP client side, one connection to one worker's `lmtp` socket.
//! - [`service`]: the tokio service: recipients checked against the registry, the
//!   `delivery` hook chain run, the domain's worker acquired from the FastContainer
//!   manager (started if cold) at the first recipient of that domain, and per-recipient
//!   replies after `DATA` relayed from the workers in `RCPT` order.
//! - [`config`]: the `[lmtp]` section.

pub mod config;
pub mod protocol;
pub mod service;
pub mod worker;
