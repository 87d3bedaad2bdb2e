//! Listeners shared by the line/netstring services (lookup, policy): address syntax and
//! validation, binding, and one accept loop with a connection limit, an idle timeout and
//! graceful shutdown.
//!
//! Addresses use Postfix's and libmilter's spelling (`unix:/path`, `inet:HOST:PORT`,
//! `inet6:[ADDR]:PORT`), parsed by [`wasmail_milter::net::SocketSpec`]; binding reuses the
//! milter crate's [`Listener`] (stale unix sockets replaced, live ones refused, mode set).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, warn};
use wasmail_milter::net::{EventLoops, Listener, Placement, SocketSpec, Stream, spawn_placed};

use crate::config::Validator;

/// Records a problem when `spec` is not a listen address (relative unix paths included).
pub fn validate_spec(spec: &str, key: &str, v: &mut Validator) {
    match spec.parse::<SocketSpec>() {
        Ok(SocketSpec::Unix(p)) if !p.is_absolute() => v.error(
            key,
            format_args!("`{spec}`: a unix socket path must be absolute"),
        ),
        Ok(_) => {}
        Err(e) => v.error(key, e),
    }
}

/// Parses the octal `socket_mode` text (validated earlier).
pub fn parse_mode(mode: &str) -> Option<u32> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8).ok()
}

/// Binds `spec` (what: the config key, for the error message).
pub async fn bind(spec: &str, mode: Option<u32>, what: &str) -> anyhow::Result<Listener> {
    let parsed: SocketSpec = spec.parse().with_context(|| what.to_string())?;
    if let SocketSpec::Unix(p) = &parsed
        && let Some(dir) = p.parent()
        && !dir.exists()
    {
        anyhow::bail!(
            "{what}: directory {} does not exist (create it, owned by the wasmail user)",
            dir.display()
        );
    }
    Listener::bind(&parsed, mode)
        .await
        .with_context(|| format!("{what}: binding {spec}"))
}

/// The bound address as text (real port for port 0).
pub fn local(listener: &Listener) -> String {
    listener
        .local_spec()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

async fn accept(listener: &Listener) -> std::io::Result<(Stream, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, a) = l.accept().await?;
            Ok((Stream::tcp(s, false)?, a.to_string()))
        }
        Listener::Unix(l, p) | Listener::UnixShared(l, p) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), p.display().to_string()))
        }
    }
}

/// Resolves when `shutdown` is (or becomes) true.
pub async fn flipped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Accepts on `listener` until `shutdown`, at most `limit` connections at once across
/// every listener sharing the semaphore; `handle(stream, peer, shutdown)` serves one
/// connection (it should return at its next request boundary once shutdown flips). Waits
/// for the connections to end before returning. Connections run on this runtime.
pub async fn serve<F, Fut>(
    service: &'static str,
    listener: Listener,
    limit: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(Stream, String, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_on(service, listener, limit, shutdown, None, handle).await
}

/// [`serve`], with every one of `loops` (when given) accepting on the listener and running
/// the connections it accepted.
pub async fn serve_on<F, Fut>(
    service: &'static str,
    listener: Listener,
    limit: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    loops: Option<EventLoops>,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(Stream, String, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    match loops {
        None => accept_loop(service, listener, None, limit, shutdown, handle).await,
        Some(loops) => loops
            .run_accept_loops(listener, move |listener, placement| {
                let (limit, shutdown, handle) = (limit.clone(), shutdown.clone(), handle.clone());
                async move {
                    accept_loop(service, listener, Some(placement), limit, shutdown, handle)
                        .await
                        .map_err(std::io::Error::other)
                }
            })
            .await
            .with_context(|| format!("{service} accept loops")),
    }
}

/// One runtime's accept loop; its connections run on this runtime, or on the event loop
/// `placement` picks.
async fn accept_loop<F, Fut>(
    service: &'static str,
    listener: Listener,
    placement: Option<Placement>,
    limit: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    handle: Arc<F>,
) -> anyhow::Result<()>
where
    F: Fn(Stream, String, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        if limit.available_permits() == 0 {
            warn!(
                service,
                "connection limit reached; new connections wait in the backlog"
            );
        }
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.context("connection semaphore closed")?,
            () = flipped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            r = accept(&listener) => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(service, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = flipped(&mut shutdown) => break,
        };
        let handle = handle.clone();
        let span = tracing::info_span!("conn", service, peer = %peer);
        let shutdown = shutdown.clone();
        spawn_placed(&mut tasks, placement.as_ref(), stream, move |stream| {
            async move {
                let _permit = permit;
                match stream {
                    Ok(stream) => handle(stream, peer, shutdown).await,
                    Err(e) => warn!(
                        error = %e,
                        "could not move the connection to another event loop; closed"
                    ),
                }
            }
            .instrument(span)
        });
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// What a connection's reads wait on besides the socket: its idle timeout and shutdown.
/// Both are set up once per connection and re-armed lazily: a timer or a shutdown watch
/// armed per read would take the runtime's shared timer lock and the watch's lock twice
/// for every request, which costs more than a lookup itself on a busy listener.
pub struct ReadWait {
    idle: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    stop: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    stopped: bool,
}

impl std::fmt::Debug for ReadWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadWait")
            .field("idle", &self.idle)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl ReadWait {
    /// Reads of one connection: at most `idle` without input, and none after `shutdown`.
    pub fn new(idle: Duration, shutdown: &watch::Receiver<bool>) -> ReadWait {
        let mut rx = shutdown.clone();
        ReadWait {
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            stop: Box::pin(async move { flipped(&mut rx).await }),
            stopped: false,
        }
    }
}

/// Reads more bytes into `buf`; false on EOF, a read error, an idle timeout or shutdown
/// (each logged at the right level with `peer`).
pub async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    wait: &mut ReadWait,
    peer: &str,
) -> bool {
    if wait.stopped {
        return false;
    }
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    let until = tokio::time::Instant::now() + wait.idle;
    loop {
        tokio::select! {
            biased;
            r = stream.read_buf(buf) => return match r {
                Ok(0) => {
                    if !buf.is_empty() {
                        warn!(peer, pending = buf.len(), "client closed in the middle of a request");
                    }
                    false
                }
                Ok(_) => true,
                Err(e) => {
                    debug!(peer, error = %e, "read failed");
                    false
                }
            },
            // Armed for an earlier read: only a timeout if this read waited that long.
            () = wait.timer.as_mut() => {
                if tokio::time::Instant::now() >= until {
                    debug!(peer, idle_secs = wait.idle.as_secs(), "idle connection closed");
                    return false;
                }
                wait.timer.as_mut().reset(until);
            }
            () = wait.stop.as_mut() => {
                wait.stopped = true;
                return false;
            }
        }
    }
}

/// Writes `out` and clears it; false when the peer is gone.
pub async fn write<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut BytesMut, peer: &str) -> bool {
    match stream.write_all(out).await {
        Ok(()) => {
            out.clear();
            true
        }
        Err(e) => {
            debug!(peer, error = %e, "write failed");
            false
        }
    }
}

/// Between two batches of requests on a connection: writes the answers in `out`, stops at
/// shutdown when no request is pending, and reads more input. False = close the
/// connection.
pub async fn next_round<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    wait: &mut ReadWait,
    shutdown: &watch::Receiver<bool>,
    peer: &str,
) -> bool {
    if !out.is_empty() && !write(stream, out, peer).await {
        return false;
    }
    if *shutdown.borrow() && buf.is_empty() {
        return false;
    }
    fill(stream, buf, wait, peer).await
}

/// Serves one HTTP/1.1 connection with `service` until the client closes it or shutdown
/// (a request in flight at shutdown is answered first). `header_timeout` bounds how long a
/// client may take to send a request's headers; `what` names the service in the log.
/// Shared by the admin API and the Dovecot endpoints.
pub async fn serve_http1<S, B>(
    stream: Stream,
    service: S,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    what: &'static str,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = flipped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, service = what, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn reads_time_out_after_idle_from_the_last_input_and_stop_at_shutdown() {
        let (tx, rx) = watch::channel(false);
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut wait = ReadWait::new(Duration::from_millis(300), &rx);
        let mut buf = BytesMut::new();
        // Input every 100 ms for three idle periods: never a timeout.
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(900) {
            let write = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                client.write_all(b"x").await.unwrap();
            };
            let (_, ok) = tokio::join!(write, fill(&mut server, &mut buf, &mut wait, "test"));
            assert!(ok, "closed after {:?}", started.elapsed());
        }
        // Silence: a timeout one idle period after this read started.
        let silent = Instant::now();
        assert!(!fill(&mut server, &mut buf, &mut wait, "test").await);
        let waited = silent.elapsed();
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_millis(900),
            "{waited:?}"
        );
        // Shutdown ends a waiting read at once, and every later one.
        let mut wait = ReadWait::new(Duration::from_secs(60), &rx);
        let flip = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(true).unwrap();
        };
        let (_, ok) = tokio::join!(flip, fill(&mut server, &mut buf, &mut wait, "test"));
        assert!(!ok);
        client.write_all(b"y").await.unwrap();
        assert!(!fill(&mut server, &mut buf, &mut wait, "test").await);
    }
}
