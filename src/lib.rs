//! wasmail: programmable, sandboxed mail policy for Postfix and Dovecot.
//!
//! # Layout
//! - [`config`]: the TOML configuration: raw serde structs, validation with file/line/key errors.
//! - [`host`]: the WebAssembly plugin host (wasmtime), the WIT bindings and the capabilities.
//! - [`milter_service`]: the `[milter]` service that runs plugin chains for Postfix.
//! - [`registry`]: the domain registry (domains, mailboxes, aliases, plugin chains).
//! - [`lookup`] and [`policy`]: Postfix socketmap / tcp_table and policy delegation responders.
//! - [`dovecot`]: Dovecot delegation endpoints (auth policy, Lua passdb, post-login, events).
//! - [`mailhook`]: `mail-hook` plugin chains shared by the mail fronts and Dovecot endpoints.
//! - [`lmtp`]: the LMTP front: Postfix delivers to one socket, recipients go to their
//!   domain's worker.
//! - [`fastcontainer`]: per-domain mailbox workers in lightweight containers.
//! - [`cluster`]: many hosts: membership, worker placement over etcd, and routing
//!   sessions to the domain's owner host.
//! - [`proxy`]: the IMAP and POP3 fronts that route logins to the domain's worker.
//! - [`serve`]: wires the configured services into one tokio process with graceful shutdown.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod dovecot;
pub mod fastcontainer;
pub mod host;
pub mod listen;
pub mod lmtp;
pub mod lookup;
pub mod mailhook;
pub mod milter_service;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod serve;
pub mod telemetry;
