//! Many hosts: host membership, worker placement and routing to the owner host, over
//! etcd (docs/cluster.md).
//!
//! Every host runs the same `wasmail serve` with a `[cluster]` section. Each registers
//! itself under a lease; each hosted domain has at most one owner host at a time, recorded
//! in a key bound to the owner's lease, and only the owner runs the domain's worker. A
//! session arriving at any host is either served locally (this host owns the domain) or
//! relayed to the owner's wasmail over TCP (optionally mutual TLS).
//!
//! - [`config`]: the `[cluster]` section.
//! - [`keys`]: the etcd key layout and the membership record (no I/O).
//! - [`rendezvous`]: weighted rendezvous hashing, the preferred host of a domain.
//! - [`placement`]: [`Cluster`]: membership (lease, keep-alive), the watched cache of
//!   members and owners, the claim transaction, ownership release, drain.
//! - [`relay`]: the host-to-host hop: a one-line handshake naming the domain and the
//!   worker socket, then raw bytes both ways.
//! - [`route`]: [`Router`], what the LMTP and IMAP/POP3 fronts call to reach a domain's
//!   worker socket wherever it runs ([`WorkerStream`]).
//! - [`tls`]: rustls configurations for the relay (shared CA, client certificates).

pub mod config;
pub mod keys;
pub mod placement;
pub mod relay;
pub mod rendezvous;
pub mod route;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

pub use placement::{Cluster, HostInfo, OwnedGuard, Placement};
pub use route::{Hold, RouteError, Routed, Router, WorkerStream};

/// Errors of the cluster layer. Every one is temporary for a session (4xx).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// An etcd request failed.
    #[error("etcd {op}: {source}")]
    Etcd {
        /// The request.
        op: &'static str,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// An etcd request got no answer in time.
    #[error("etcd {op}: no answer within {after:?}")]
    Timeout {
        /// The request.
        op: &'static str,
        /// The limit.
        after: Duration,
    },
    /// No live, undrained host can take the domain.
    #[error("no live host can take {domain}")]
    NoHost {
        /// The domain.
        domain: String,
    },
    /// The domain's owner is not a live member (its lease is about to expire).
    #[error("{domain} is owned by {owner}, which is not a live member")]
    OwnerGone {
        /// The domain.
        domain: String,
        /// The owner named by its key.
        owner: String,
    },
    /// This host does not own the domain (relay side).
    #[error("this host does not own {domain} (owner: {})", .owner.as_deref().unwrap_or("none"))]
    NotOwner {
        /// The domain.
        domain: String,
        /// The actual owner, if known.
        owner: Option<String>,
    },
    /// Connecting to or talking with another host's relay failed.
    #[error("relay to {host} at {addr}: {what}")]
    Relay {
        /// The other host.
        host: String,
        /// Its relay address.
        addr: SocketAddr,
        /// What went wrong.
        what: String,
    },
}
