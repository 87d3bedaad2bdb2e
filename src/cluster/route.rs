//! [`Router`]: how the fronts reach a domain's worker socket, on this host or on the
//! domain's owner host.
//!
//! Without `[cluster]` it is the FastContainer manager alone: acquire the domain's worker
//! (started if cold) and connect to `<run dir>/<socket>`. With `[cluster]`,
//! [`Cluster::resolve`] decides first: this host (then the same, with the domain's
//! ownership held for the session) or another host's relay ([`super::relay`]). A relay
//! that answers "not the owner" makes the router forget the cached owner and resolve
//! once more (a claim round trip then returns the current owner).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::relay::{self, Request};
use super::tls::RelayTls;
use super::{Cluster, ClusterError, OwnedGuard, Placement};
use crate::fastcontainer::manager::{Lease, Manager};
use crate::fastcontainer::{ContainerError, Endpoint};

/// A connection to a worker socket: local (unix) or through another host's relay.
#[derive(Debug)]
pub enum WorkerStream {
    /// The worker's unix socket on this host.
    Unix(UnixStream),
    /// A relay connection to the owner host.
    Tcp(TcpStream),
    /// A relay connection with TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for WorkerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WorkerStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            WorkerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            WorkerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WorkerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WorkerStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            WorkerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            WorkerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WorkerStream::Unix(s) => Pin::new(s).poll_flush(cx),
            WorkerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            WorkerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WorkerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            WorkerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            WorkerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WorkerStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WorkerStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WorkerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WorkerStream::Unix(s) => s.is_write_vectored(),
            WorkerStream::Tcp(s) => s.is_write_vectored(),
            WorkerStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What keeps a routed session's worker (and ownership) alive.
#[derive(Debug)]
pub enum Hold {
    /// The worker runs here.
    Local {
        /// The worker lease (dropped first).
        lease: Lease,
        /// This host's ownership of the domain, with `[cluster]`.
        owned: Option<OwnedGuard>,
    },
    /// The worker runs on another host (which holds its lease for the relay's lifetime).
    Remote {
        /// The owner host.
        host: String,
        /// The worker's pid there.
        pid: u32,
    },
}

/// A connection to a domain's worker socket and what keeps it alive. Fields drop in
/// order: the stream closes before the lease is given back.
#[derive(Debug)]
pub struct Routed {
    /// The connection (protocol bytes as the worker sends them).
    pub stream: WorkerStream,
    /// The lease or the remote owner.
    pub hold: Hold,
}

impl Routed {
    /// The worker's pid (on its host).
    pub fn pid(&self) -> u32 {
        match &self.hold {
            Hold::Local { lease, .. } => lease.pid(),
            Hold::Remote { pid, .. } => *pid,
        }
    }

    /// The host running the worker: None = this one.
    pub fn remote_host(&self) -> Option<&str> {
        match &self.hold {
            Hold::Local { .. } => None,
            Hold::Remote { host, .. } => Some(host),
        }
    }
}

/// Why a domain's worker could not be reached (always temporary for the client).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Neither `[fastcontainer]` here nor a cluster to forward to.
    #[error("no [fastcontainer] section: no workers on this host")]
    NoWorkers,
    /// The worker could not be started.
    #[error("worker: {0}")]
    Worker(#[from] ContainerError),
    /// The worker has no unix endpoint.
    #[error("the worker has a TCP endpoint {0}; the fronts need its unix sockets")]
    TcpEndpoint(std::net::SocketAddr),
    /// Its socket did not accept.
    #[error("worker socket {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Placement or the host-to-host hop failed.
    #[error("{0}")]
    Cluster(#[from] ClusterError),
}

/// Reaches worker sockets for the fronts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    manager: Option<Manager>,
    cluster: Option<Cluster>,
    tls: Option<Arc<RelayTls>>,
}

impl Router {
    /// A router over this host's manager and, with `[cluster]`, the placement.
    pub fn new(
        manager: Option<Manager>,
        cluster: Option<Cluster>,
        tls: Option<RelayTls>,
    ) -> Router {
        Router {
            manager,
            cluster,
            tls: tls.map(Arc::new),
        }
    }

    /// This host's manager.
    pub fn manager(&self) -> Option<&Manager> {
        self.manager.as_ref()
    }

    /// The cluster, when configured.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// True when sessions can be routed at all (local workers or a cluster).
    pub fn can_route(&self) -> bool {
        self.manager.is_some() || self.cluster.is_some()
    }

    /// Connects to `domain`'s worker socket named `socket` (`lmtp`, `imap`, `pop3`),
    /// wherever the worker runs; a cold worker is started first.
    pub async fn open(&self, domain: &str, socket: &str) -> Result<Routed, RouteError> {
        let Some(cluster) = &self.cluster else {
            return self.local(domain, socket, None).await;
        };
        let mut retried = false;
        loop {
            match cluster.resolve(domain).await? {
                Placement::Local(owned) => return self.local(domain, socket, Some(owned)).await,
                Placement::Remote { host, addr } => {
                    let req = Request {
                        domain: domain.to_string(),
                        socket: socket.to_string(),
                    };
                    let timeout: Duration = cluster.section().relay_timeout;
                    match relay::connect(&host, addr, &req, self.tls.as_deref(), timeout).await {
                        Ok((stream, pid)) => {
                            cluster.note_relayed_out();
                            return Ok(Routed {
                                stream,
                                hold: Hold::Remote { host, pid },
                            });
                        }
                        Err(ClusterError::NotOwner { .. }) if !retried => {
                            tracing::debug!(domain, host = %host, "cluster: cached owner was stale; resolving again");
                            cluster.forget(domain, &host);
                            retried = true;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }

    async fn local(
        &self,
        domain: &str,
        socket: &str,
        owned: Option<OwnedGuard>,
    ) -> Result<Routed, RouteError> {
        let Some(manager) = &self.manager else {
            return Err(RouteError::NoWorkers);
        };
        let lease = manager.acquire(domain).await?;
        let path = match lease.endpoint() {
            Endpoint::Unix(ready) => ready.with_file_name(socket),
            Endpoint::Tcp(a) => return Err(RouteError::TcpEndpoint(*a)),
        };
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| RouteError::Connect { path, source })?;
        Ok(Routed {
            stream: WorkerStream::Unix(stream),
            hold: Hold::Local { lease, owned },
        })
    }
}
