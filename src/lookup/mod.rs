//! The Postfix lookup responder: socketmap and tcp_table servers answering table lookups
//! from the domain registry or from `table` plugins.
//!
//! - [`config`]: the `[lookup]` section (listeners, table bindings, search orders).
//! - [`search`]: case folding and Postfix's search orders, which Postfix does not apply to
//!   pattern tables (`tcp:`, `socketmap:`), so wasmail does.
//! - [`tables`]: [`Tables`] resolves a table name and key to an [`Answer`] (built-in
//!   registry tables or a plugin).
//! - [`service`]: the listeners and per-connection loops over the `wasmail-postfix`
//!   codecs.

pub mod config;
pub mod search;
pub mod service;
pub mod tables;

pub use tables::{Answer, Tables};
