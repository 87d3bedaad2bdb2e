//! The server driver: listeners, the accept loop and one task per connection.
//!
//! Per connection: frames are decoded as they arrive (pipelined frames need no extra
//! reads), every reply produced while the input buffer holds complete frames goes out in
//! one write (edits + verdict of end of message together: no Nagle/delayed-ACK stall), the
//! socket has `TCP_NODELAY`, and `TCP_QUICKACK` is re-armed before each read so the MTA
//! never waits for our delayed ACK. An idle timeout bounds the wait between commands; a
//! deadline bounds each handler call (command vs content stages, like Postfix's two
//! timeouts), and while end of message runs `SMFIR_PROGRESS` keeps the MTA waiting.
//!
//! The accept loop holds a semaphore permit per connection: at the limit it stops
//! accepting (the kernel backlog holds new MTAs) instead of failing them. On shutdown it
//! stops accepting; each session closes at the next point between messages.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::addr::SocketSpec;
use super::loops::{EventLoops, Placement, spawn_placed};
use crate::command::Command;
use crate::flags::{DEFAULT_MAX_FRAME, Stage};
use crate::frame::{FrameError, decode_frame};
use crate::handler::{Context, Milter};
use crate::negotiate::Agreement;
use crate::response::{Action, Response};
use crate::session::{Call, Event, ProtocolError, RespondError, ServerSession, SessionOptions};
use crate::wire::DecodeError;

/// Driver settings. Defaults suit Postfix's default timeouts (30 s command, 300 s content).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Cap on one frame's declared length (default 1 MiB).
    pub max_frame: usize,
    /// Longest wait for the MTA's next command before closing (default 15 min; Postfix's
    /// SMTP idle limit is 5 min).
    pub idle_timeout: Duration,
    /// Concurrent connections; at the limit the listener stops accepting (default 1024).
    pub max_connections: usize,
    /// Deadline for a handler at connect, helo, mail, rcpt, data and unknown (default 20 s,
    /// under Postfix's `milter_command_timeout` of 30 s). On expiry: TEMPFAIL.
    pub command_timeout: Duration,
    /// Deadline for a handler at header, eoh, body and end of message (default 240 s, under
    /// `milter_content_timeout` of 300 s).
    pub content_timeout: Duration,
    /// Interval of `SMFIR_PROGRESS` while end of message runs (default 10 s).
    pub progress_interval: Duration,
    /// Re-arm `TCP_QUICKACK` before reads on TCP (Linux). When off, the server does not ask
    /// for `SMFIP_NODATA` over TCP.
    pub quickack: bool,
    /// Event loops to run the sessions on: every loop accepts, and keeps a connection it
    /// accepted unless another loop has fewer ([`super::Placement`]); `None` runs them on
    /// the runtime that calls [`serve`] (default).
    pub event_loops: Option<EventLoops>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: Duration::from_secs(15 * 60),
            max_connections: 1024,
            command_timeout: Duration::from_secs(20),
            content_timeout: Duration::from_secs(240),
            progress_interval: Duration::from_secs(10),
            quickack: true,
            event_loops: None,
        }
    }
}

/// The MTA end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// `ip:port`, or the listening socket path for unix sockets.
    pub addr: String,
    /// Per-listener connection number, for logs.
    pub id: u64,
}

/// Things worth a log line that do not end the session.
#[derive(Debug)]
pub enum Report<'a> {
    /// A handler exceeded its deadline; TEMPFAIL was sent.
    HandlerTimeout {
        /// The stage.
        stage: Stage,
        /// The deadline.
        after: Duration,
    },
    /// A handler's answer was refused; TEMPFAIL was sent.
    Refused {
        /// The stage.
        stage: Stage,
        /// Why.
        error: &'a RespondError,
    },
    /// A handler gave a verdict at a stage negotiated as no-reply; it is sent at the next
    /// answered stage of the message.
    Deferred {
        /// The stage.
        stage: Stage,
        /// The verdict.
        action: &'a Action,
    },
    /// The connection limit is reached; accepting pauses.
    AtCapacity {
        /// The limit.
        limit: usize,
    },
    /// `accept` failed (e.g. out of file descriptors); retried after a pause.
    AcceptFailed(&'a io::Error),
}

/// What a session did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Commands received.
    pub commands: u64,
    /// Messages that reached end of message.
    pub messages: u64,
}

/// Why a session ended abnormally. The connection is closed; nothing else is affected.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// Unreadable framing.
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    /// A command that could not be decoded.
    #[error("{command} command: {error}", command = crate::command::command_name(*.code))]
    Decode {
        /// The command code.
        code: u8,
        /// What was wrong.
        error: DecodeError,
    },
    /// A protocol violation.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// No command for too long.
    #[error("no command for {0:?}; closing")]
    IdleTimeout(Duration),
    /// The MTA closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// The handler panicked.
    #[error("handler panicked: {0}")]
    Panicked(String),
}

/// Builds one handler per connection and hears what happened.
pub trait MilterFactory: Send + Sync + 'static {
    /// The handler type.
    type Milter: Milter + 'static;
    /// A handler for a new connection.
    fn new_milter(&self, peer: &Peer) -> Self::Milter;
    /// Something worth logging happened on a session.
    fn report(&self, peer: &Peer, report: Report<'_>) {
        let _ = (peer, report);
    }
    /// A session ended.
    fn session_ended(&self, peer: &Peer, result: &Result<SessionStats, SessionError>) {
        let _ = (peer, result);
    }
}

/// A transport the driver can run on.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Called before each read (re-arms `TCP_QUICKACK` on TCP).
    fn before_read(&self) {}
    /// Whether NODATA is safe (unix sockets, or TCP with quick ACKs).
    fn nodata_safe(&self) -> bool {
        true
    }
}

impl Transport for tokio::io::DuplexStream {}

/// An accepted or connected stream.
#[derive(Debug)]
pub enum Stream {
    /// TCP, with whether `TCP_QUICKACK` is re-armed before reads.
    Tcp(TcpStream, bool),
    /// A unix socket.
    Unix(UnixStream),
}

impl Stream {
    /// Wraps a TCP stream: sets `TCP_NODELAY`, and remembers whether to quick-ack.
    pub fn tcp(s: TcpStream, quickack: bool) -> io::Result<Stream> {
        s.set_nodelay(true)?;
        Ok(Stream::Tcp(s, quickack))
    }
}

impl Transport for Stream {
    fn before_read(&self) {
        if let Stream::Tcp(s, true) = self {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            let _ = s;
        }
    }

    fn nodata_safe(&self) -> bool {
        match self {
            Stream::Tcp(_, quickack) => {
                *quickack && cfg!(any(target_os = "linux", target_os = "android"))
            }
            Stream::Unix(_) => true,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s, _) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s, _) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s, _) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s, _) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A unix socket; the file is removed when the listener is dropped.
    Unix(UnixListener, PathBuf),
    /// One runtime's listener on a unix socket shared by several
    /// ([`super::SharedListener`], which owns the file).
    UnixShared(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `spec`. A unix socket left behind by a dead process is replaced; one with a
    /// live listener is an error. `mode` sets the socket file's permissions.
    pub async fn bind(spec: &SocketSpec, mode: Option<u32>) -> io::Result<Listener> {
        match spec {
            SocketSpec::Tcp { host, port } => {
                let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), *port))
                    .await?
                    .collect();
                let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address");
                for addr in addrs {
                    match TcpListener::bind(addr).await {
                        Ok(l) => return Ok(Listener::Tcp(l)),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            SocketSpec::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", path.display()),
                        ));
                    }
                    if UnixStream::connect(path).await.is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{} has a live listener", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                let l = UnixListener::bind(path)?;
                if let Some(mode) = mode {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                }
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    /// The bound address, in milter socket syntax (with the real port for port 0).
    pub fn local_spec(&self) -> io::Result<SocketSpec> {
        match self {
            Listener::Tcp(l) => {
                let a = l.local_addr()?;
                Ok(SocketSpec::Tcp {
                    host: a.ip().to_string(),
                    port: a.port(),
                })
            }
            Listener::Unix(_, p) | Listener::UnixShared(_, p) => Ok(SocketSpec::Unix(p.clone())),
        }
    }

    async fn accept(&self, quickack: bool) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                Ok((Stream::tcp(s, quickack)?, a.to_string()))
            }
            Listener::Unix(l, p) | Listener::UnixShared(l, p) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), p.display().to_string()))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // An empty path: the file was handed to a `SharedListener`.
        if let Listener::Unix(_, p) = self
            && !p.as_os_str().is_empty()
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn flipped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Accepts connections until `shutdown` turns true, then waits for the sessions to end
/// (each closes at its next point between messages). Cancel the future to cut them off.
/// With [`ServerConfig::event_loops`], every loop accepts on the listener and runs the
/// sessions it accepted.
pub async fn serve<F: MilterFactory>(
    listener: Listener,
    factory: Arc<F>,
    config: ServerConfig,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let config = Arc::new(config);
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let next_id = Arc::new(AtomicU64::new(0));
    match config.event_loops.clone() {
        None => accept_loop(listener, None, factory, config, limit, next_id, shutdown).await,
        Some(loops) => {
            loops
                .run_accept_loops(listener, move |listener, placement| {
                    accept_loop(
                        listener,
                        Some(placement),
                        factory.clone(),
                        config.clone(),
                        limit.clone(),
                        next_id.clone(),
                        shutdown.clone(),
                    )
                })
                .await
        }
    }
}

/// One runtime's accept loop; its sessions run on this runtime, or on the event loop
/// `placement` picks.
async fn accept_loop<F: MilterFactory>(
    listener: Listener,
    placement: Option<Placement>,
    factory: Arc<F>,
    config: Arc<ServerConfig>,
    limit: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        if limit.available_permits() == 0 {
            let peer = Peer {
                addr: String::new(),
                id: 0,
            };
            factory.report(
                &peer,
                Report::AtCapacity {
                    limit: config.max_connections,
                },
            );
        }
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = flipped(&mut shutdown) => break,
        };
        let accepted = tokio::select! {
            r = listener.accept(config.quickack) => r,
            () = flipped(&mut shutdown) => break,
        };
        let (stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                let peer = Peer {
                    addr: String::new(),
                    id: 0,
                };
                factory.report(&peer, Report::AcceptFailed(&e));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let peer = Peer { addr, id };
        let factory = factory.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        spawn_placed(
            &mut tasks,
            placement.as_ref(),
            stream,
            move |stream| async move {
                let _permit = permit;
                match stream {
                    Ok(stream) => session(stream, peer, factory, config, shutdown).await,
                    Err(e) => factory.session_ended(&peer, &Err(SessionError::Io(e))),
                }
            },
        );
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One connection, start to end: a handler from the factory, the session driver (a panic
/// in the handler ends this session only) and the end-of-session report.
async fn session<F: MilterFactory>(
    stream: Stream,
    peer: Peer,
    factory: Arc<F>,
    config: Arc<ServerConfig>,
    shutdown: watch::Receiver<bool>,
) {
    let mut milter = factory.new_milter(&peer);
    let inner_peer = peer.clone();
    let inner_factory = factory.clone();
    let inner = tokio::spawn(async move {
        let mut shutdown = shutdown;
        let report = |r: Report<'_>| inner_factory.report(&inner_peer, r);
        run_session(
            stream,
            &inner_peer,
            &mut milter,
            &config,
            &mut shutdown,
            &report,
        )
        .await
    });
    let result = match inner.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            Err(SessionError::Panicked(msg))
        }
        Err(_) => return,
    };
    factory.session_ended(&peer, &result);
}

const NO_AGREEMENT: Agreement = Agreement {
    offer: crate::command::OptNeg::POSTFIX,
    version: 6,
    actions: crate::flags::Actions::empty(),
    protocol: crate::flags::Protocol::empty(),
};

fn context<'a>(session: &'a ServerSession, peer: &'a Peer) -> Context<'a> {
    Context {
        macros: session.macros(),
        agreement: session.agreement().unwrap_or(&NO_AGREEMENT),
        peer: &peer.addr,
    }
}

/// Runs one connection to the end. Calls the handler's `close` exactly once (after `abort`
/// if a message was in progress), whatever the outcome.
pub async fn run_session<S: Transport, M: Milter>(
    mut stream: S,
    peer: &Peer,
    milter: &mut M,
    config: &ServerConfig,
    shutdown: &mut watch::Receiver<bool>,
    report: &(dyn Fn(Report<'_>) + Sync),
) -> Result<SessionStats, SessionError> {
    let mut session = ServerSession::new(SessionOptions {
        avoid_nodata: !stream.nodata_safe(),
    });
    let mut stats = SessionStats::default();
    let result = drive(
        &mut stream,
        peer,
        milter,
        config,
        shutdown,
        report,
        &mut session,
        &mut stats,
    )
    .await;
    if session.in_message() {
        milter.abort(&context(&session, peer)).await;
    }
    milter.close().await;
    let _ = stream.shutdown().await;
    result.map(|()| stats)
}

#[allow(clippy::too_many_arguments)]
async fn drive<S: Transport, M: Milter>(
    stream: &mut S,
    peer: &Peer,
    milter: &mut M,
    config: &ServerConfig,
    shutdown: &mut watch::Receiver<bool>,
    report: &(dyn Fn(Report<'_>) + Sync),
    session: &mut ServerSession,
    stats: &mut SessionStats,
) -> Result<(), SessionError> {
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(1024);
    // One idle timer per connection, re-armed lazily: a read only notes when it started,
    // and the timer, when it fires, checks whether the current read has really waited that
    // long. Arming a timer per read would take the runtime's timer lock twice per command.
    let idle_timer = sleep_until(Instant::now() + config.idle_timeout);
    tokio::pin!(idle_timer);
    loop {
        if let Some(frame) = decode_frame(&mut input, config.max_frame)? {
            let code = frame.code;
            let cmd =
                Command::decode(frame).map_err(|error| SessionError::Decode { code, error })?;
            stats.commands += 1;
            let dispatch = session.receive(cmd, &mut out)?;
            if dispatch.abort_first {
                milter.abort(&context(session, peer)).await;
            }
            match dispatch.call {
                Call::None => {}
                Call::Negotiate(offer) => {
                    let needs = milter.negotiate(&offer);
                    session.negotiate(&offer, &needs, &mut out)?;
                }
                Call::Event(event) => {
                    if matches!(event, Event::Eom(_)) {
                        stats.messages += 1;
                    }
                    handle_event(
                        stream, peer, milter, config, report, session, event, &mut out,
                    )
                    .await?;
                }
                Call::Abort => milter.abort(&context(session, peer)).await,
                Call::Quit => {
                    write_out(stream, &mut out).await?;
                    return Ok(());
                }
                Call::QuitNc => milter.close().await,
            }
            continue;
        }
        write_out(stream, &mut out).await?;
        if *shutdown.borrow() && !session.in_message() && input.is_empty() {
            return Ok(());
        }
        stream.before_read();
        let idle_until = Instant::now() + config.idle_timeout;
        let n = loop {
            tokio::select! {
                biased;
                r = stream.read_buf(&mut input) => break r?,
                () = &mut idle_timer => {
                    if Instant::now() >= idle_until {
                        return Err(SessionError::IdleTimeout(config.idle_timeout));
                    }
                    idle_timer.as_mut().reset(idle_until);
                }
                r = shutdown.changed(), if !*shutdown.borrow() => {
                    if r.is_err() || (*shutdown.borrow() && !session.in_message() && input.is_empty()) {
                        return Ok(());
                    }
                }
            }
        };
        if n == 0 {
            return if input.is_empty() {
                Ok(())
            } else {
                Err(SessionError::Truncated(input.len()))
            };
        }
    }
}

async fn write_out<S: Transport>(stream: &mut S, out: &mut BytesMut) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn handle_event<S: Transport, M: Milter>(
    stream: &mut S,
    peer: &Peer,
    milter: &mut M,
    config: &ServerConfig,
    report: &(dyn Fn(Report<'_>) + Sync),
    session: &mut ServerSession,
    event: Event,
    out: &mut BytesMut,
) -> Result<(), SessionError> {
    let stage = event.stage();
    let after = if stage.is_content() {
        config.content_timeout
    } else {
        config.command_timeout
    };
    let deadline = Instant::now() + after;
    let progress = stage == Stage::Eom;
    let mut edits = Vec::new();
    let outcome = {
        let cx = context(session, peer);
        let call = call_handler(milter, &cx, &event, &mut edits);
        tokio::pin!(call);
        // Most handlers answer without waiting (wasmail runs plugin calls inline): they
        // need no deadline timer and no progress ticker, which would cost two trips
        // through the runtime's timer lock per command.
        match std::future::poll_fn(|tcx| Poll::Ready(call.as_mut().poll(tcx))).await {
            Poll::Ready(action) => Some(action),
            Poll::Pending => {
                let mut ticker = tokio::time::interval_at(
                    Instant::now() + config.progress_interval,
                    config.progress_interval,
                );
                loop {
                    tokio::select! {
                        action = &mut call => break Some(action),
                        () = sleep_until(deadline) => break None,
                        _ = ticker.tick(), if progress => {
                            Response::Progress.encode(out);
                            write_out(stream, out).await?;
                        }
                    }
                }
            }
        }
    };
    let action = match outcome {
        Some(a) => a,
        None => {
            report(Report::HandlerTimeout { stage, after });
            edits.clear();
            let ends_message = matches!(
                stage,
                Stage::Mail | Stage::Data | Stage::Header | Stage::Eoh | Stage::Body | Stage::Eom
            );
            if ends_message {
                // The handler's call was cut off: let it reset its message state.
                milter.abort(&context(session, peer)).await;
            }
            Action::Tempfail
        }
    };
    if !session.expects_reply(stage) && action.is_final() {
        report(Report::Deferred {
            stage,
            action: &action,
        });
    }
    if let Err(error) = session.respond(stage, action, edits, out) {
        report(Report::Refused {
            stage,
            error: &error,
        });
    }
    Ok(())
}

async fn call_handler<M: Milter>(
    milter: &mut M,
    cx: &Context<'_>,
    event: &Event,
    edits: &mut Vec<crate::response::Modification>,
) -> Action {
    match event {
        Event::Connect(c) => milter.connect(cx, c).await,
        Event::Helo(h) => milter.helo(cx, h).await,
        Event::Mail(e) => milter.mail(cx, e).await,
        Event::Rcpt(e) => milter.rcpt(cx, e).await,
        Event::Data => milter.data(cx).await,
        Event::Header { name, value } => milter.header(cx, name, value).await,
        Event::Eoh => milter.eoh(cx).await,
        Event::Body(chunk) => milter.body(cx, chunk).await,
        Event::Eom(trailing) => {
            if !trailing.is_empty() {
                let a = milter.body(cx, trailing).await;
                if a.is_final() {
                    return a;
                }
            }
            milter.eom(cx, edits).await
        }
        Event::Unknown(line) => milter.unknown(cx, line).await,
    }
}
