//! Host-side logic of the plugin capabilities `kv`, `message`, `auth` and `send`.
//!
//! Everything here is plain Rust with no knowledge of wasmtime: the glue in
//! [`crate::host`] maps the WIT imports of `wit/plugin.wit` onto these types.
//!
//! Threading: plugin calls run on blocking threads, so [`kv`] and [`message`] are
//! synchronous. [`auth::Authenticator::check`] is async (DNS lookups); the glue drives it
//! with `tokio::runtime::Handle::block_on`. [`send::SendQueue::queue`] never blocks: it
//! only enqueues, and a background tokio task delivers.

pub mod auth;
pub mod kv;
pub mod message;
pub mod send;
