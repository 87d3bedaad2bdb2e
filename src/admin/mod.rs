//! The admin API: health, Prometheus metrics, the FastContainer workers (list, prewarm,
//! stop, change limits) and plugin reload, over HTTP/1.1 on a unix socket or loopback TCP,
//! and `wasmail ctl`, its command-line client.
//!
//! - [`config`]: the `[admin]` section (listen address, token file, socket mode), read by
//!   both ends.
//! - [`api`]: the endpoints as plain functions of (method, path, token, body) → [`api::Reply`],
//!   and the JSON types both ends share.
//! - [`server`]: the hyper driver that `wasmail serve` runs as the `admin` service.
//! - [`client`] and [`cli`]: the hyper client and the `wasmail ctl` subcommands.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod server;
