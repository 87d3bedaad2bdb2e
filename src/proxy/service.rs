//! The front listeners and the per-connection driver.
//!
//! A connection goes through: the `connect` hooks, the greeting, the pre-login loop of
//! its [`FrontSession`] (with STARTTLS/STLS upgrading the stream in place and bytes sent
//! after the command discarded), the login ([`Gate::login`], which ends logged in at the
//! worker), and finally a splice of bytes in both directions
//! ([`tokio::io::copy_bidirectional_with_sizes`], nothing parsed) — or, for an IMAP
//! session whose domain chain subscribes to `imap-command` (checked once, at login), the
//! command-by-command path of [`hooked`] — until either side closes, the session has been
//! idle for `idle_timeout`, or `serve` shuts down. The
//! worker's [`Hold`](crate::cluster::Hold) (its lease here, or the relay to its owner
//! host) lives exactly as long as the splice.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn};
use wasmail_milter::net::Stream;

use super::config::ProxySection;
use super::gate::{Gate, WorkerSockets};
use super::imap::Settings;
use super::{Action, FrontSession, LoginRequest, Protocol, hooked, imap, pop3};
use crate::cluster::WorkerStream;
use crate::host::calls::HookSession;
use crate::listen;
use crate::mailhook::HookChain;
use crate::serve::{ServiceFuture, Shared};

/// Splice buffer size per direction.
const SPLICE_BUFFER: usize = 64 * 1024;

/// Everything a connection needs, shared by the connections of both fronts.
pub struct Front {
    gate: Gate,
    tls: Option<TlsAcceptor>,
    section: ProxySection,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("gate", &self.gate)
            .field("tls", &self.tls.is_some())
            .field("section", &self.section)
            .finish()
    }
}

/// Binds the configured fronts and returns their services (`imap`, `pop3`).
pub async fn start(
    section: ProxySection,
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Vec<(&'static str, ServiceFuture)>> {
    let tls = match (&section.tls_cert, &section.tls_key) {
        (Some(cert), Some(key)) => Some(super::tls::acceptor(cert, key).context("[proxy] TLS")?),
        _ => None,
    };
    if tls.is_none() {
        warn!(
            "[proxy] has no tls_cert/tls_key: STARTTLS is not offered, only loopback clients can log in"
        );
    }
    let hooks = HookChain::new(
        shared.plugins.clone(),
        shared.registry.clone(),
        section.hooks.clone(),
    );
    let gate = Gate::new(
        hooks,
        shared.registry.clone(),
        shared.router.clone(),
        section.credentials,
        section.auth_failure_delay,
        WorkerSockets {
            imap: section.worker_imap.clone(),
            pop3: section.worker_pop3.clone(),
            timeout: section.login_timeout.min(Duration::from_secs(30)),
        },
    );
    let front = Arc::new(Front {
        gate,
        tls,
        section: section.clone(),
    });
    let limit = Arc::new(Semaphore::new(section.max_connections));
    let mode = listen::parse_mode(&section.socket_mode);
    let mut services: Vec<(&'static str, ServiceFuture)> = Vec::new();
    if let Some(spec) = &section.imap {
        let listener = listen::bind(spec, mode, "[proxy] imap").await?;
        info!(listen = %listen::local(&listener), tls = front.tls.is_some(), "imap front listening");
        let front = front.clone();
        services.push((
            "imap",
            Box::pin(listen::serve(
                "imap",
                listener,
                limit.clone(),
                shutdown.clone(),
                move |stream, _peer, shutdown| {
                    connection(front.clone(), stream, shutdown, imap::Session::new)
                },
            )),
        ));
    }
    if let Some(spec) = &section.pop3 {
        let listener = listen::bind(spec, mode, "[proxy] pop3").await?;
        info!(listen = %listen::local(&listener), tls = front.tls.is_some(), "pop3 front listening");
        let front = front.clone();
        services.push((
            "pop3",
            Box::pin(listen::serve(
                "pop3",
                listener,
                limit,
                shutdown,
                move |stream, _peer, shutdown| {
                    connection(front.clone(), stream, shutdown, pop3::Session::new)
                },
            )),
        ));
    }
    Ok(services)
}

/// The client's stream, before or after STARTTLS.
#[derive(Debug)]
enum Conn {
    Plain(Stream),
    Tls(Box<TlsStream<Stream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Client address, local address (IP text, or `unix`), and whether the client is on
/// this host (loopback or a unix socket).
fn addresses(stream: &Stream) -> (String, String, bool) {
    match stream {
        Stream::Tcp(s, _) => {
            let peer = s.peer_addr().map(|a| a.ip().to_canonical());
            let local = s
                .local_addr()
                .map(|a| a.ip().to_canonical().to_string())
                .unwrap_or_default();
            let on_host = peer.as_ref().is_ok_and(|ip| ip.is_loopback());
            let peer = peer.map(|ip| ip.to_string()).unwrap_or_default();
            (peer, local, on_host)
        }
        Stream::Unix(_) => ("unix".into(), "unix".into(), true),
    }
}

/// Writes and flushes; false when the client is gone.
async fn send(conn: &mut Conn, bytes: &[u8]) -> bool {
    match async {
        conn.write_all(bytes).await?;
        conn.flush().await
    }
    .await
    {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, "write to client failed");
            false
        }
    }
}

async fn close(conn: &mut Conn, bytes: &[u8]) {
    if send(conn, bytes).await {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.shutdown()).await;
    }
}

/// Serves one client connection.
async fn connection<S: FrontSession>(
    front: Arc<Front>,
    stream: Stream,
    mut shutdown: watch::Receiver<bool>,
    new: fn(Settings) -> S,
) {
    let protocol = S::PROTOCOL;
    let section = &front.section;
    let deadline = tokio::time::Instant::now() + section.login_timeout;
    let (client, local, on_host) = addresses(&stream);
    let mut hook_session = HookSession {
        protocol: protocol.name().into(),
        client_address: client,
        local_address: local,
        secured: false,
    };
    let mut session = new(Settings {
        max_line: section.max_line,
        max_bad: section.max_bad_commands,
        tls_available: front.tls.is_some(),
        plaintext_before_tls: section.allow_plaintext_on_loopback && on_host,
    });
    let mut conn = Conn::Plain(stream);
    if let Err(why) = front.gate.connect(&hook_session).await {
        info!(refusal = ?why, "connection refused by a connect hook");
        close(&mut conn, &session.connect_refused(&why)).await;
        return;
    }
    if !send(&mut conn, &session.greeting()).await {
        return;
    }
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some(action) = session.next(&mut buf) {
            let action = match action {
                Action::Login(req) => {
                    match login(
                        &front,
                        &mut session,
                        &mut conn,
                        &hook_session,
                        req,
                        &mut buf,
                        &mut shutdown,
                    )
                    .await
                    {
                        Some(reply) => reply,
                        None => return,
                    }
                }
                other => other,
            };
            match action {
                Action::Send(bytes) => {
                    if !send(&mut conn, &bytes).await {
                        return;
                    }
                }
                Action::Close(bytes) => {
                    if bytes.starts_with(b"* BYE Line too long")
                        || bytes.starts_with(b"-ERR Line too long")
                    {
                        warn!(
                            max_line = section.max_line,
                            "client sent an overlong line; closing"
                        );
                    } else if bytes.starts_with(b"* BYE Literal too large") {
                        warn!(
                            max_line = section.max_line,
                            "client sent an overlong literal; closing"
                        );
                    } else if bytes.windows(11).any(|w| w == b"Too many in") {
                        warn!("too many invalid commands; closing");
                    }
                    close(&mut conn, &bytes).await;
                    return;
                }
                Action::StartTls(bytes) => {
                    if !send(&mut conn, &bytes).await {
                        return;
                    }
                    if !buf.is_empty() {
                        warn!(
                            bytes = buf.len(),
                            "discarding data sent after STARTTLS before the handshake"
                        );
                        buf.clear();
                    }
                    let Conn::Plain(plain) = conn else {
                        return;
                    };
                    let Some(acceptor) = &front.tls else {
                        return;
                    };
                    conn = match tokio::time::timeout_at(deadline, acceptor.accept(plain)).await {
                        Ok(Ok(tls)) => Conn::Tls(Box::new(tls)),
                        Ok(Err(e)) => {
                            warn!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            warn!("TLS handshake timed out (login_timeout)");
                            return;
                        }
                    };
                    debug!("TLS established");
                    session.tls_started();
                    hook_session.secured = true;
                }
                Action::Login(_) => unreachable!("login answers are Send or Close"),
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        tokio::select! {
            r = tokio::time::timeout_at(deadline, conn.read_buf(&mut buf)) => match r {
                Ok(Ok(0)) => {
                    if buf.is_empty() {
                        debug!("client closed before login");
                    } else {
                        info!(pending = buf.len(), "client closed in the middle of a command before login");
                    }
                    return;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    info!(error = %e, "read from client failed before login");
                    return;
                }
                Err(_) => {
                    info!(login_timeout = ?section.login_timeout, "no login in time; closing");
                    close(&mut conn, &session.timed_out()).await;
                    return;
                }
            },
            () = listen::flipped(&mut shutdown) => {
                close(&mut conn, &session.shutting_down()).await;
                return;
            }
        }
    }
}

/// Handles a login request: the reply to send (`Send`/`Close`), or `None` once a
/// successful session has been spliced to its end.
async fn login<S: FrontSession>(
    front: &Front,
    session: &mut S,
    conn: &mut Conn,
    hook_session: &HookSession,
    req: LoginRequest,
    pending: &mut BytesMut,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Action> {
    let protocol = S::PROTOCOL;
    let started = Instant::now();
    let mut admitted = match front
        .gate
        .login(
            protocol,
            hook_session,
            &req.user,
            &req.password,
            req.mechanism,
        )
        .await
    {
        Ok(a) => a,
        Err(why) => return Some(session.refused(&req.tag, &why)),
    };
    let worker = &mut admitted.backend;
    drop(req.password);
    let mut hello = std::mem::take(&mut worker.untagged);
    hello.extend_from_slice(&session.logged_in(&req.tag, &worker.text));
    hello.extend_from_slice(&worker.leftover);
    if !send(conn, &hello).await {
        info!(user = %admitted.user, "client left during login");
        return None;
    }
    // Checked once per session: a chain changed later applies to new sessions.
    let hooked = protocol == Protocol::Imap
        && front
            .gate
            .hooks()
            .wants(Some(&admitted.domain), "imap-command");
    if !hooked {
        if !pending.is_empty() && worker.stream.write_all(pending).await.is_err() {
            return None;
        }
        pending.clear();
    }
    info!(
        user = %admitted.user,
        domain = %admitted.domain,
        worker_pid = admitted.worker_pid,
        worker_host = admitted.worker_host.as_deref().unwrap_or("local"),
        took_ms = started.elapsed().as_millis() as u64,
        secured = hook_session.secured,
        imap_command_hooks = hooked,
        "logged in; splicing to the worker"
    );
    let (to_worker, to_client, end) = if hooked {
        let ctx = hooked::Context {
            hooks: front.gate.hooks(),
            domain: &admitted.domain,
            user: &admitted.user,
            session: hook_session,
        };
        hooked::splice(
            conn,
            &mut worker.stream,
            std::mem::take(pending),
            ctx,
            front.section.idle_timeout,
            shutdown,
        )
        .await
    } else {
        splice(
            conn,
            &mut worker.stream,
            front.section.idle_timeout,
            shutdown,
        )
        .await
    };
    info!(
        user = %admitted.user,
        to_worker,
        to_client,
        secs = started.elapsed().as_secs(),
        end,
        "session closed"
    );
    drop(admitted);
    None
}

/// Copies both ways until either side closes, the session is idle for `idle`, or
/// shutdown; returns bytes client→worker, worker→client, and why it ended.
async fn splice(
    client: &mut Conn,
    worker: &mut WorkerStream,
    idle: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> (u64, u64, &'static str) {
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let mut watched = Watched {
        inner: client,
        last: &last,
        base,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut watched,
        worker,
        SPLICE_BUFFER,
        SPLICE_BUFFER,
    );
    tokio::pin!(copy);
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let wake = tokio::time::Instant::from_std(base + since + idle);
        tokio::select! {
            r = &mut copy => {
                return match r {
                    Ok((up, down)) => (up, down, "closed"),
                    Err(e) => {
                        debug!(error = %e, "splice ended with an error");
                        (0, 0, "error")
                    }
                };
            }
            () = tokio::time::sleep_until(wake) => {
                let since = Duration::from_millis(last.load(Ordering::Relaxed));
                if base.elapsed() >= since + idle {
                    return (0, 0, "idle timeout");
                }
            }
            () = listen::flipped(shutdown) => return (0, 0, "shutdown"),
        }
    }
}

/// The client stream, recording when bytes last moved (ms since `base`).
struct Watched<'a> {
    inner: &'a mut Conn,
    last: &'a AtomicU64,
    base: Instant,
}

impl Watched<'_> {
    fn touch(&self) {
        self.last
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl AsyncWrite for Watched<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}
