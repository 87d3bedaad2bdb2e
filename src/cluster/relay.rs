//! The host-to-host hop. The receiving host keeps speaking the protocol (LMTP, IMAP, POP3)
//! itself; the relay only carries its connection to the worker socket on the owner host:
//!
//! ```text
//! receiving host                         owner host (relay listener, TCP_NODELAY)
//!   WASMAIL-RELAY 1 <domain> <socket>\r\n  ──▶
//!                                          checks it owns <domain>, acquires the worker,
//!                                          connects to <run dir>/<socket>
//!                                   ◀──  OK <host> <pid>\r\n
//!                                   ◀──▶ raw bytes both ways until either side closes
//!          (or)                     ◀──  NOTOWNER <owner or ->\r\n   (then closed)
//!                                   ◀──  TEMP <text>\r\n             (then closed)
//! ```
//!
//! So per-recipient LMTP replies and IMAP login state are exactly what the worker says,
//! the hooks run once (on the receiving host), and the worker lease and the domain's
//! ownership are held on the owner for as long as the relayed connection lives. With
//! `[cluster.tls]` the connection is mutual TLS before the first line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::route::WorkerStream;
use super::tls::RelayTls;
use super::{Cluster, ClusterError};
use crate::fastcontainer::Endpoint;
use crate::fastcontainer::manager::Manager;
use crate::serve::ServiceFuture;

/// Longest handshake or answer line.
const MAX_LINE: usize = 512;
/// Most concurrent relayed connections one host accepts.
const MAX_RELAYED: usize = 4096;

/// A relay request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The domain whose worker is wanted.
    pub domain: String,
    /// The socket file name in the worker's run directory (`lmtp`, `imap`, `pop3`).
    pub socket: String,
}

/// The owner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Connected to the worker: host name and worker pid.
    Ok {
        /// The owner's name.
        host: String,
        /// The worker's pid there.
        pid: u32,
    },
    /// This host does not own the domain (the owner it knows, if any).
    NotOwner(Option<String>),
    /// Temporary failure (worker could not start, socket not answering).
    Temp(String),
}

/// True for a plain file name (no path, not `.`/`..`).
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

impl Request {
    /// The handshake line.
    pub fn encode(&self) -> String {
        format!("WASMAIL-RELAY 1 {} {}\r\n", self.domain, self.socket)
    }

    /// Parses a handshake line (without CRLF).
    pub fn parse(line: &str) -> Option<Request> {
        let mut w = line.split(' ');
        if w.next()? != "WASMAIL-RELAY" || w.next()? != "1" {
            return None;
        }
        let domain = w.next()?.to_ascii_lowercase();
        let socket = w.next()?.to_string();
        if w.next().is_some() || !plain_name(&domain) || !plain_name(&socket) {
            return None;
        }
        Some(Request { domain, socket })
    }
}

impl Answer {
    /// The answer line.
    pub fn encode(&self) -> String {
        match self {
            Answer::Ok { host, pid } => format!("OK {host} {pid}\r\n"),
            Answer::NotOwner(o) => format!("NOTOWNER {}\r\n", o.as_deref().unwrap_or("-")),
            Answer::Temp(t) => format!("TEMP {}\r\n", t.replace(['\r', '\n'], " ")),
        }
    }

    /// Parses an answer line (without CRLF).
    pub fn parse(line: &str) -> Option<Answer> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "OK" => {
                let (host, pid) = rest.split_once(' ')?;
                Some(Answer::Ok {
                    host: host.to_string(),
                    pid: pid.parse().ok()?,
                })
            }
            "NOTOWNER" => Some(Answer::NotOwner(
                (rest != "-" && !rest.is_empty()).then(|| rest.to_string()),
            )),
            "TEMP" => Some(Answer::Temp(rest.to_string())),
            _ => None,
        }
    }
}

/// Reads one line byte by byte (nothing after it is consumed: the worker's bytes follow).
async fn read_line<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<String> {
    let mut line = Vec::with_capacity(64);
    loop {
        let b = s.read_u8().await?;
        if b == b'\n' {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return String::from_utf8(line)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"));
        }
        if line.len() >= MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "line too long",
            ));
        }
        line.push(b);
    }
}

/// Client side: connects to `host`'s relay at `addr` and asks for `domain`'s `socket`.
/// Ok: the stream now carries the worker's bytes, plus the worker pid there.
pub async fn connect(
    host: &str,
    addr: SocketAddr,
    req: &Request,
    tls: Option<&RelayTls>,
    timeout: Duration,
) -> Result<(WorkerStream, u32), ClusterError> {
    let fail = |what: String| ClusterError::Relay {
        host: host.to_string(),
        addr,
        what,
    };
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| fail(format!("TCP_NODELAY: {e}")))?;
        let mut stream = match tls {
            Some(t) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| fail(format!("host name for TLS: {e}")))?;
                let s = t
                    .connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| fail(format!("TLS: {e}")))?;
                WorkerStream::Tls(Box::new(s))
            }
            None => WorkerStream::Tcp(tcp),
        };
        stream
            .write_all(req.encode().as_bytes())
            .await
            .map_err(|e| fail(format!("write: {e}")))?;
        let line = read_line(&mut stream)
            .await
            .map_err(|e| fail(format!("read answer: {e}")))?;
        match Answer::parse(&line) {
            Some(Answer::Ok { pid, .. }) => Ok((stream, pid)),
            Some(Answer::NotOwner(owner)) => Err(ClusterError::NotOwner {
                domain: req.domain.clone(),
                owner,
            }),
            Some(Answer::Temp(t)) => Err(fail(format!("temporary failure: {t}"))),
            None => Err(fail(format!("not a relay answer: {line:?}"))),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!("no answer within {timeout:?}"))),
    }
}

/// Binds `[cluster] relay` and returns the relay service.
pub async fn start(
    cluster: Cluster,
    manager: Option<Manager>,
    tls: Option<RelayTls>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ServiceFuture> {
    let spec = format!("inet:{}", cluster.section().relay);
    let listener = crate::listen::bind(&spec, None, "[cluster] relay").await?;
    info!(listen = %crate::listen::local(&listener), tls = tls.is_some(), host = %cluster.host(), "cluster relay listening");
    let limit = Arc::new(Semaphore::new(MAX_RELAYED));
    let timeout = cluster.section().relay_timeout;
    let tls = tls.map(Arc::new);
    Ok(Box::pin(crate::listen::serve(
        "relay",
        listener,
        limit,
        shutdown,
        move |stream, peer, _shutdown| {
            let (cluster, manager, tls) = (cluster.clone(), manager.clone(), tls.clone());
            async move {
                match tls {
                    Some(t) => match tokio::time::timeout(timeout, t.acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => serve_one(s, &peer, &cluster, manager.as_ref(), timeout).await,
                        Ok(Err(e)) => warn!(peer, error = %e, "relay: TLS handshake failed"),
                        Err(_) => warn!(peer, "relay: TLS handshake timed out"),
                    },
                    None => serve_one(stream, &peer, &cluster, manager.as_ref(), timeout).await,
                }
            }
        },
    )))
}

/// Serves one relayed connection.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    peer: &str,
    cluster: &Cluster,
    manager: Option<&Manager>,
    timeout: Duration,
) {
    let line = match tokio::time::timeout(timeout, read_line(&mut client)).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            debug!(peer, error = %e, "relay: no handshake");
            return;
        }
        Err(_) => {
            debug!(peer, "relay: handshake timed out");
            return;
        }
    };
    let Some(req) = Request::parse(&line) else {
        warn!(peer, line = %line.chars().take(80).collect::<String>(), "relay: bad handshake");
        let _ = client
            .write_all(Answer::Temp("bad handshake".into()).encode().as_bytes())
            .await;
        return;
    };
    let answer = |a: Answer| a.encode();
    let owned = match cluster.serve_owned(&req.domain).await {
        Ok(g) => g,
        Err(ClusterError::NotOwner { owner, .. }) => {
            debug!(peer, domain = %req.domain, ?owner, "relay: not the owner");
            let _ = client
                .write_all(answer(Answer::NotOwner(owner)).as_bytes())
                .await;
            return;
        }
        Err(e) => {
            let _ = client
                .write_all(answer(Answer::Temp(e.to_string())).as_bytes())
                .await;
            return;
        }
    };
    let Some(manager) = manager else {
        let _ = client
            .write_all(answer(Answer::Temp("no workers on this host".into())).as_bytes())
            .await;
        return;
    };
    let lease = match manager.acquire(&req.domain).await {
        Ok(l) => l,
        Err(e) => {
            warn!(peer, domain = %req.domain, error = %e, "relay: worker unavailable");
            let _ = client
                .write_all(answer(Answer::Temp(format!("worker unavailable: {e}"))).as_bytes())
                .await;
            return;
        }
    };
    let path: PathBuf = match lease.endpoint() {
        Endpoint::Unix(ready) => ready.with_file_name(&req.socket),
        Endpoint::Tcp(a) => {
            let _ = client
                .write_all(
                    answer(Answer::Temp(format!("worker has a TCP endpoint {a}"))).as_bytes(),
                )
                .await;
            return;
        }
    };
    let mut worker = match UnixStream::connect(&path).await {
        Ok(w) => w,
        Err(e) => {
            warn!(peer, domain = %req.domain, socket = %path.display(), error = %e, "relay: worker socket not answering");
            let _ = client
                .write_all(answer(Answer::Temp("worker socket not answering".into())).as_bytes())
                .await;
            return;
        }
    };
    let ok = Answer::Ok {
        host: cluster.host().to_string(),
        pid: lease.pid(),
    };
    if client.write_all(ok.encode().as_bytes()).await.is_err() {
        return;
    }
    cluster.note_relayed_in();
    debug!(peer, domain = %req.domain, socket = %req.socket, pid = lease.pid(), "relay: session relayed to the worker");
    let r = tokio::io::copy_bidirectional(&mut client, &mut worker).await;
    debug!(peer, domain = %req.domain, bytes = ?r.as_ref().ok(), "relay: session ended");
    drop(lease);
    drop(owned);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_and_answers_round_trip() {
        let r = Request {
            domain: "example.com".into(),
            socket: "lmtp".into(),
        };
        let line = r.encode();
        assert_eq!(line, "WASMAIL-RELAY 1 example.com lmtp\r\n");
        assert_eq!(Request::parse(line.trim_end()), Some(r));
        assert_eq!(
            Request::parse("WASMAIL-RELAY 1 Example.COM imap").map(|r| r.domain),
            Some("example.com".into())
        );
        for bad in [
            "WASMAIL-RELAY 2 a b",
            "WASMAIL-RELAY 1 a ../x",
            "WASMAIL-RELAY 1 a",
            "WASMAIL-RELAY 1 a b c",
            "GET / HTTP/1.0",
            "WASMAIL-RELAY 1 a/b lmtp",
        ] {
            assert_eq!(Request::parse(bad), None, "{bad}");
        }
        for a in [
            Answer::Ok {
                host: "mx2".into(),
                pid: 42,
            },
            Answer::NotOwner(Some("mx3".into())),
            Answer::NotOwner(None),
            Answer::Temp("worker unavailable".into()),
        ] {
            assert_eq!(Answer::parse(a.encode().trim_end()), Some(a.clone()));
        }
    }
}
