//! The tokio driver against malformed input, slow and failing handlers, limits and
//! shutdown (`shared/reference/milter.md` §7 framing and resource cases), over real
//! loopback TCP and unix sockets.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use wasmail_milter::net::{
    EventLoops, Listener, MilterClient, MilterFactory, Peer, Report, ServerConfig, SessionError,
    SessionStats, SocketSpec, Transport, run_session, serve,
};
use wasmail_milter::{
    Action, Actions, Command, Context, Envelope, Milter, Modification, Needs, OptNeg, Response,
};

#[derive(Debug, Default)]
struct Log {
    ended: Vec<String>,
    reports: Vec<String>,
    aborts: usize,
    closes: usize,
}

#[derive(Clone)]
struct Factory {
    log: Arc<Mutex<Log>>,
    eom_delay: Duration,
}

impl Factory {
    fn new() -> Factory {
        Factory {
            log: Arc::default(),
            eom_delay: Duration::ZERO,
        }
    }
    fn ended(&self) -> Vec<String> {
        self.log.lock().unwrap().ended.clone()
    }
    async fn wait_ended(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            if self.log.lock().unwrap().ended.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.ended()
    }
}

struct TestMilter {
    log: Arc<Mutex<Log>>,
    body_bytes: usize,
    eom_delay: Duration,
}

impl Milter for TestMilter {
    fn negotiate(&mut self, _offer: &OptNeg) -> Needs {
        Needs {
            actions: Actions::ADD_HEADERS | Actions::CHANGE_BODY | Actions::ADD_RCPT,
            ..Needs::default()
        }
    }

    async fn helo(&mut self, _cx: &Context<'_>, name: &Bytes) -> Action {
        match &name[..] {
            b"slow" => tokio::time::sleep(Duration::from_secs(5)).await,
            b"panic" => panic!("boom at helo"),
            b"reject" => return Action::Reject,
            _ => {}
        }
        Action::Continue
    }

    async fn mail(&mut self, _cx: &Context<'_>, from: &Envelope) -> Action {
        if &from.address[..] == b"<reject@example.com>" {
            return Action::Reject;
        }
        Action::Continue
    }

    async fn body(&mut self, _cx: &Context<'_>, chunk: &Bytes) -> Action {
        self.body_bytes += chunk.len();
        Action::Continue
    }

    async fn eom(&mut self, cx: &Context<'_>, edits: &mut Vec<Modification>) -> Action {
        tokio::time::sleep(self.eom_delay).await;
        edits.push(Modification::AddHeader {
            name: Bytes::from_static(b"X-Body-Bytes"),
            value: Bytes::from(self.body_bytes.to_string()),
        });
        if let Some(i) = cx.macros.get("i") {
            edits.push(Modification::AddHeader {
                name: Bytes::from_static(b"X-Queue-Id"),
                value: Bytes::copy_from_slice(i),
            });
        }
        edits.push(Modification::AddRcpt(Bytes::from_static(
            b"<copy@example.net>",
        )));
        self.body_bytes = 0;
        Action::Continue
    }

    async fn abort(&mut self, _cx: &Context<'_>) {
        self.body_bytes = 0;
        self.log.lock().unwrap().aborts += 1;
    }

    async fn close(&mut self) {
        self.log.lock().unwrap().closes += 1;
    }
}

impl MilterFactory for Factory {
    type Milter = TestMilter;
    fn new_milter(&self, _peer: &Peer) -> TestMilter {
        TestMilter {
            log: self.log.clone(),
            body_bytes: 0,
            eom_delay: self.eom_delay,
        }
    }
    fn report(&self, _peer: &Peer, report: Report<'_>) {
        self.log.lock().unwrap().reports.push(format!("{report:?}"));
    }
    fn session_ended(&self, peer: &Peer, result: &Result<SessionStats, SessionError>) {
        let line = match result {
            Ok(s) => format!("ok {} commands {} messages", s.commands, s.messages),
            Err(e) => format!("error from {}: {e}", peer.addr),
        };
        self.log.lock().unwrap().ended.push(line);
    }
}

struct Server {
    spec: SocketSpec,
    factory: Factory,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<io::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

async fn start_with(factory: Factory, config: ServerConfig, unix: bool) -> Server {
    let (dir, spec) = if unix {
        let dir = tempfile::tempdir().unwrap();
        let spec = SocketSpec::Unix(dir.path().join("milter.sock"));
        (Some(dir), spec)
    } else {
        (
            None,
            SocketSpec::Tcp {
                host: "127.0.0.1".into(),
                port: 0,
            },
        )
    };
    let listener = Listener::bind(&spec, Some(0o660)).await.unwrap();
    let spec = listener.local_spec().unwrap();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, Arc::new(factory.clone()), config, rx));
    Server {
        spec,
        factory,
        stop,
        task,
        _dir: dir,
    }
}

async fn start() -> Server {
    start_with(Factory::new(), ServerConfig::default(), false).await
}

async fn raw(server: &Server) -> TcpStream {
    let SocketSpec::Tcp { host, port } = &server.spec else {
        panic!("tcp only")
    };
    TcpStream::connect((host.as_str(), *port)).await.unwrap()
}

fn frame(code: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(code);
    v.extend_from_slice(payload);
    v
}

fn optneg_bytes() -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&6u32.to_be_bytes());
    p.extend_from_slice(&0x1ffu32.to_be_bytes());
    p.extend_from_slice(&0x1f_ffffu32.to_be_bytes());
    frame(b'O', &p)
}

/// Reads until the server closes; returns what it sent.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut v))
        .await
        .expect("server should close the connection")
        .unwrap();
    v
}

/// A full Postfix-like message on an open client; returns the EOM reply.
async fn message(c: &mut MilterClient, body: &[u8]) -> wasmail_milter::client::Reply {
    c.macros(b'M', &[("{mail_addr}", "a@example.com")]);
    assert_eq!(
        c.mail("<a@example.com>", &["SIZE=10"])
            .await
            .unwrap()
            .unwrap()
            .action,
        Action::Continue
    );
    c.rcpt("<b@example.net>", &[]).await.unwrap();
    c.macros(b'T', &[("i", "4ABC")]);
    c.data().await.unwrap();
    c.header("From", "a@example.com").await.unwrap();
    c.eoh().await.unwrap();
    c.body(body).await.unwrap();
    c.eom().await.unwrap()
}

async fn session(server: &Server) -> MilterClient {
    let mut c = MilterClient::connect(&server.spec).await.unwrap();
    c.negotiate().await.unwrap();
    c.connect_inet("client.example", "192.0.2.1", 4711)
        .await
        .unwrap();
    c.helo("client.example").await.unwrap();
    c
}

async fn assert_healthy(server: &Server) {
    let mut c = session(server).await;
    let r = message(&mut c, b"hello\r\n").await;
    assert_eq!(r.action, Action::Continue);
    c.quit().await.unwrap();
}

#[tokio::test]
async fn e01_zero_length_frame_closes_only_that_connection() {
    let server = start().await;
    let mut other = session(&server).await;
    let mut s = raw(&server).await;
    s.write_all(&[0, 0, 0, 0]).await.unwrap();
    assert!(read_to_close(&mut s).await.is_empty());
    let ended = server.factory.wait_ended(1).await;
    assert!(ended[0].contains("declared length 0"), "{ended:?}");
    assert!(
        ended[0].contains("127.0.0.1:"),
        "log names the peer: {ended:?}"
    );
    assert_eq!(message(&mut other, b"x\r\n").await.action, Action::Continue);
    assert_healthy(&server).await;
}

#[tokio::test]
async fn e02_empty_payloads_valid_for_a_n_t_e_q_k_errors_for_c_h_m_r_l() {
    let server = start().await;
    for code in *b"CHMRL" {
        let mut s = raw(&server).await;
        let mut pre = optneg_bytes();
        if code != b'C' {
            pre.extend(frame(b'C', b"h\0U"));
        }
        if matches!(code, b'R' | b'L') {
            pre.extend(frame(b'M', b"<a@x>\0"));
        }
        pre.extend(frame(code, b""));
        s.write_all(&pre).await.unwrap();
        read_to_close(&mut s).await;
    }
    let ended = server.factory.wait_ended(5).await;
    assert_eq!(ended.len(), 5);
    for e in &ended {
        assert!(e.contains("truncated"), "{e}");
    }
    // A N T E Q K with empty payloads are the normal forms.
    let mut c = session(&server).await;
    c.mail("<a@x>", &[]).await.unwrap();
    c.rcpt("<b@y>", &[]).await.unwrap();
    assert!(c.data().await.unwrap().is_some());
    assert!(c.eoh().await.unwrap().is_some());
    assert!(
        c.send(Command::BodyEob(Bytes::new()))
            .await
            .unwrap()
            .is_some()
    );
    c.abort().await.unwrap();
    c.send(Command::QuitNc).await.unwrap();
    c.connect_inet("again", "192.0.2.2", 1).await.unwrap();
    c.quit().await.unwrap();
    c.expect_closed().await.unwrap();
}

#[tokio::test]
async fn e03_oversized_lengths_are_rejected_before_allocating() {
    let server = start().await;
    let mut s = raw(&server).await;
    s.write_all(&[0xff, 0xff, 0xff, 0xff, b'O']).await.unwrap();
    read_to_close(&mut s).await;
    // 1 GiB announced, a little data, then close.
    let mut s = raw(&server).await;
    s.write_all(&[0x40, 0, 0, 0, b'B', 1, 2, 3]).await.unwrap();
    read_to_close(&mut s).await;
    let ended = server.factory.wait_ended(2).await;
    assert!(
        ended
            .iter()
            .all(|e| e.contains("above the limit of 1048576")),
        "{ended:?}"
    );
    // Exactly at the cap is fine: a 1 MiB - 1 byte header value.
    let mut c = session(&server).await;
    c.mail("<a@x>", &[]).await.unwrap();
    let big = "v".repeat((1 << 20) - 1 - "X-Big\0".len() - 1);
    assert!(c.header("X-Big", &big).await.unwrap().is_some());
}

#[tokio::test]
async fn e04_one_byte_at_a_time_and_everything_pipelined() {
    let server = start().await;
    let mut wire = optneg_bytes();
    wire.extend(frame(b'D', b"Cj\0mx\0"));
    wire.extend(frame(b'C', b"h\0U"));
    wire.extend(frame(b'H', b"client\0"));
    wire.extend(frame(b'M', b"<a@x>\0"));
    wire.extend(frame(b'Q', b""));
    let mut s = raw(&server).await;
    s.set_nodelay(true).unwrap();
    for byte in &wire {
        s.write_all(std::slice::from_ref(byte)).await.unwrap();
        s.flush().await.unwrap();
    }
    let got = read_to_close(&mut s).await;
    // O reply (13 bytes + 4 length) then three 'c' replies (5 bytes each).
    assert_eq!(got.len(), 17 + 15, "{got:?}");
    assert_eq!(
        &got[17..],
        &[0, 0, 0, 1, b'c', 0, 0, 0, 1, b'c', 0, 0, 0, 1, b'c']
    );
    // All at once.
    let mut s = raw(&server).await;
    s.write_all(&wire).await.unwrap();
    assert_eq!(read_to_close(&mut s).await, got);
}

#[tokio::test]
async fn e05_unknown_command_byte_closes_with_a_clear_error() {
    let server = start().await;
    let mut s = raw(&server).await;
    let mut w = optneg_bytes();
    w.extend(frame(b'Z', b"what"));
    s.write_all(&w).await.unwrap();
    read_to_close(&mut s).await;
    let ended = server.factory.wait_ended(1).await;
    assert!(ended[0].contains("unknown code 'Z'"), "{ended:?}");
}

#[tokio::test]
async fn e06_eof_mid_frame_and_between_frames_abort_once_and_close_once() {
    let server = start().await;
    {
        let mut c = session(&server).await;
        c.mail("<a@x>", &[]).await.unwrap();
        c.send_raw(&[0, 0, 0, 9, b'R', b'<']).await.unwrap();
    }
    {
        let mut c = session(&server).await;
        c.mail("<a@x>", &[]).await.unwrap();
    }
    let ended = server.factory.wait_ended(2).await;
    assert!(
        ended.iter().any(|e| e.contains("middle of a frame")),
        "{ended:?}"
    );
    assert!(ended.iter().any(|e| e.starts_with("ok ")), "{ended:?}");
    let log = server.factory.log.lock().unwrap();
    assert_eq!(log.aborts, 2, "one abort per interrupted message");
    assert_eq!(log.closes, 2, "one close per connection");
}

#[tokio::test]
async fn e07_http_and_tls_garbage_close_the_connection() {
    let server = start().await;
    for garbage in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        &[0x16, 3, 1, 0, 0xa5, 1, 0, 0, 0xa1, 3, 3],
    ] {
        let mut s = raw(&server).await;
        s.write_all(garbage).await.unwrap();
        read_to_close(&mut s).await;
    }
    let ended = server.factory.wait_ended(2).await;
    assert!(
        ended[0].contains("[47, 45, 54, 20]") || ended[1].contains("[47, 45, 54, 20]"),
        "{ended:?}"
    );
    assert_healthy(&server).await;
}

#[tokio::test]
async fn command_before_optneg_closes() {
    let server = start().await;
    let mut s = raw(&server).await;
    s.write_all(&frame(b'B', b"body")).await.unwrap();
    read_to_close(&mut s).await;
    let ended = server.factory.wait_ended(1).await;
    assert!(
        ended[0].contains("BODY before option negotiation"),
        "{ended:?}"
    );
}

#[tokio::test]
async fn invalid_utf8_is_carried_and_nul_less_macros_close() {
    let server = start().await;
    let mut c = session(&server).await;
    c.send_raw(&frame(b'D', b"Mx\0\xff\xfe\0")).await.unwrap();
    c.mail("<a@x>", &[]).await.unwrap();
    assert!(
        c.send(Command::Header {
            name: Bytes::from_static(b"Subject"),
            value: Bytes::from_static(b"\xc3\x28 broken utf-8"),
        })
        .await
        .unwrap()
        .is_some()
    );
    c.send_raw(&frame(b'D', b"Mx\0no-nul")).await.unwrap();
    c.expect_closed().await.unwrap();
    let ended = server.factory.wait_ended(1).await;
    assert!(
        ended[0].contains("macro: string without terminating NUL"),
        "{ended:?}"
    );
}

#[tokio::test]
async fn e28_progress_is_sent_while_a_slow_end_of_message_runs() {
    let factory = Factory {
        eom_delay: Duration::from_millis(450),
        ..Factory::new()
    };
    let config = ServerConfig {
        progress_interval: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let server = start_with(factory, config, false).await;
    let mut c = session(&server).await;
    let r = message(&mut c, b"x\r\n").await;
    assert_eq!(r.action, Action::Continue);
    assert!(r.progress >= 2, "progress packets: {}", r.progress);
    assert_eq!(r.modifications.len(), 3);
}

#[tokio::test]
async fn e37_handler_over_its_deadline_gets_tempfail_and_the_session_goes_on() {
    let config = ServerConfig {
        command_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let server = start_with(Factory::new(), config, false).await;
    let mut c = MilterClient::connect(&server.spec).await.unwrap();
    c.negotiate().await.unwrap();
    c.connect_inet("h", "192.0.2.1", 1).await.unwrap();
    let r = c.helo("slow").await.unwrap().unwrap();
    assert_eq!(r.action, Action::Tempfail);
    assert_eq!(
        c.helo("fine").await.unwrap().unwrap().action,
        Action::Continue
    );
    assert_eq!(message(&mut c, b"x\r\n").await.action, Action::Continue);
    let reports = server.factory.log.lock().unwrap().reports.clone();
    assert!(
        reports.iter().any(|r| r.contains("HandlerTimeout")),
        "{reports:?}"
    );
}

#[tokio::test]
async fn e37_handler_panic_closes_only_that_connection() {
    let server = start().await;
    let mut c = MilterClient::connect(&server.spec).await.unwrap();
    c.negotiate().await.unwrap();
    c.connect_inet("h", "192.0.2.1", 1).await.unwrap();
    assert!(c.helo("panic").await.is_err());
    let ended = server.factory.wait_ended(1).await;
    assert!(
        ended[0].contains("handler panicked: boom at helo"),
        "{ended:?}"
    );
    assert_healthy(&server).await;
}

#[tokio::test]
async fn e32_body_sizes_stream_through() {
    let server = start().await;
    let mut c = session(&server).await;
    for len in [0usize, 1, 65535, 65536, 10 << 20] {
        let body: Vec<u8> = (0..len)
            .map(|i| if i % 80 == 79 { b'\n' } else { b'a' })
            .collect();
        let r = message(&mut c, &body).await;
        let Modification::AddHeader { value, .. } = &r.modifications[0] else {
            panic!()
        };
        assert_eq!(&value[..], len.to_string().as_bytes(), "body of {len}");
        c.abort().await.unwrap();
        c.abort().await.unwrap();
    }
}

#[tokio::test]
async fn e36_idle_connections_are_closed() {
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let server = start_with(Factory::new(), config, false).await;
    let mut s = raw(&server).await;
    read_to_close(&mut s).await;
    let ended = server.factory.wait_ended(1).await;
    assert!(ended[0].contains("no command for 200ms"), "{ended:?}");
}

#[tokio::test]
async fn e36_the_idle_timeout_counts_from_the_last_command_not_the_first() {
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(400),
        ..ServerConfig::default()
    };
    let server = start_with(Factory::new(), config, false).await;
    let mut c = session(&server).await;
    // Busy for three idle timeouts in all, never silent for one.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = message(&mut c, b"still here\r\n").await;
        assert_eq!(r.action, Action::Continue);
    }
    // Then silent: closed after the timeout.
    let silent = std::time::Instant::now();
    c.expect_closed().await.unwrap();
    assert!(
        silent.elapsed() >= Duration::from_millis(350),
        "closed {:?} after the last command",
        silent.elapsed()
    );
    let ended = server.factory.wait_ended(1).await;
    assert!(ended[0].contains("no command for 400ms"), "{ended:?}");
}

#[tokio::test]
async fn e36_connection_limit_applies_backpressure() {
    let config = ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    };
    let server = start_with(Factory::new(), config, false).await;
    let mut a = session(&server).await;
    let _b = session(&server).await;
    let mut third = MilterClient::connect(&server.spec).await.unwrap();
    let pending = tokio::time::timeout(Duration::from_millis(300), third.negotiate()).await;
    assert!(
        pending.is_err(),
        "third connection must wait while two are open"
    );
    a.quit().await.unwrap();
    // The OPTNEG already sent is answered once a slot frees.
    let n = tokio::time::timeout(Duration::from_secs(5), third.read_response()).await;
    assert!(matches!(
        n.expect("served once a slot frees").unwrap(),
        Some(Response::Negotiate(_))
    ));
    let reports = server.factory.log.lock().unwrap().reports.clone();
    assert!(
        reports.iter().any(|r| r.contains("AtCapacity")),
        "{reports:?}"
    );
}

/// After shutdown was asked for: the message in flight on `c` still completes, then the
/// connection closes, the server returns and its socket file is gone.
async fn finish_in_flight_after_shutdown(server: Server, mut c: MilterClient) {
    c.header("Subject", "in flight").await.unwrap();
    c.body(b"still going\r\n").await.unwrap();
    assert_eq!(c.eom().await.unwrap().action, Action::Continue);
    c.expect_closed().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let SocketSpec::Unix(path) = &server.spec else {
        panic!()
    };
    assert!(!path.exists(), "socket file removed");
}

#[tokio::test]
async fn e38_shutdown_lets_the_message_finish_then_closes() {
    let server = start_with(Factory::new(), ServerConfig::default(), true).await;
    let mut c = session(&server).await;
    let mut idle = session(&server).await;
    c.mail("<a@x>", &[]).await.unwrap();
    c.rcpt("<b@y>", &[]).await.unwrap();
    server.stop.send(true).unwrap();
    idle.expect_closed().await.unwrap();
    finish_in_flight_after_shutdown(server, c).await;
}

#[tokio::test]
async fn unix_socket_mode_stale_socket_and_live_listener() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sock");
    let spec = SocketSpec::Unix(path.clone());
    let first = Listener::bind(&spec, Some(0o600)).await.unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let err = Listener::bind(&spec, None).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    drop(first);
    // A crashed process leaves its socket file behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(
        Listener::bind(&spec, None).await.is_ok(),
        "stale socket replaced"
    );
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let err = Listener::bind(&SocketSpec::Unix(dir.path().join("file")), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a socket"));
}

/// Counts writes, so the test can see each stage leave in one.
struct Counting {
    inner: tokio::io::DuplexStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            assert_eq!(
                *n,
                buf.len(),
                "the duplex buffer is big enough for one write"
            );
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Transport for Counting {}

#[tokio::test]
async fn e39_end_of_message_edits_and_verdict_leave_in_one_write() {
    let (client_end, server_end) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(AtomicUsize::new(0));
    let transport = Counting {
        inner: server_end,
        writes: writes.clone(),
    };
    let factory = Factory::new();
    let mut milter = factory.new_milter(&Peer {
        addr: "duplex".into(),
        id: 1,
    });
    let server = tokio::spawn(async move {
        let (_tx, mut rx) = watch::channel(false);
        let peer = Peer {
            addr: "duplex".into(),
            id: 1,
        };
        run_session(
            transport,
            &peer,
            &mut milter,
            &ServerConfig::default(),
            &mut rx,
            &|_| {},
        )
        .await
    });
    let mut c = MilterClient::new(client_end, OptNeg::POSTFIX);
    c.negotiate().await.unwrap();
    c.connect_inet("h", "192.0.2.1", 1).await.unwrap();
    c.mail("<a@x>", &[]).await.unwrap();
    c.body(b"abc").await.unwrap();
    let before = writes.load(Ordering::SeqCst);
    let r = c.eom().await.unwrap();
    assert_eq!(r.modifications.len(), 2);
    assert_eq!(
        writes.load(Ordering::SeqCst) - before,
        1,
        "edits + verdict in one write"
    );
    c.quit().await.unwrap();
    let stats = server.await.unwrap().unwrap();
    assert_eq!(stats.messages, 1);
}

#[tokio::test]
async fn reject_at_mail_then_next_message_works() {
    let server = start().await;
    let mut c = session(&server).await;
    assert_eq!(
        c.mail("<reject@example.com>", &[])
            .await
            .unwrap()
            .unwrap()
            .action,
        Action::Reject
    );
    c.abort().await.unwrap();
    assert_eq!(message(&mut c, b"ok\r\n").await.action, Action::Continue);
    let r = message(&mut c, b"ok\r\n").await;
    assert!(r.modifications.iter().any(|m| matches!(m, Modification::AddHeader { name, value } if &name[..] == b"X-Queue-Id" && &value[..] == b"4ABC")));
}

#[tokio::test]
async fn event_loops_serve_sessions_limit_them_and_drain_at_shutdown() {
    let config = ServerConfig {
        max_connections: 3,
        event_loops: Some(EventLoops::start(2, "driver-loop").unwrap()),
        ..ServerConfig::default()
    };
    let server = start_with(Factory::new(), config, true).await;
    // Three sessions at once, each with a message, served on the loops.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = session(&server).await;
        let r = message(&mut c, b"on a loop\r\n").await;
        assert_eq!(r.action, Action::Continue);
        c.abort().await.unwrap();
        open.push(c);
    }
    // The limit holds across loops: a fourth waits until one closes.
    let mut fourth = MilterClient::connect(&server.spec).await.unwrap();
    let pending = tokio::time::timeout(Duration::from_millis(300), fourth.negotiate()).await;
    assert!(
        pending.is_err(),
        "fourth connection must wait while three are open"
    );
    open.pop().unwrap().quit().await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read_response()).await;
    assert!(matches!(
        n.expect("served once a slot frees").unwrap(),
        Some(Response::Negotiate(_))
    ));
    drop(fourth);
    // A handler panic on a loop ends only its session.
    open.pop().unwrap().quit().await.unwrap();
    let mut p = MilterClient::connect(&server.spec).await.unwrap();
    p.negotiate().await.unwrap();
    p.connect_inet("h", "192.0.2.1", 1).await.unwrap();
    assert!(p.helo("panic").await.is_err());
    let ended = server.factory.wait_ended(4).await;
    assert!(
        ended
            .iter()
            .any(|e| e.contains("handler panicked: boom at helo")),
        "{ended:?}"
    );
    // Shutdown: the message in flight finishes, then every loop stops accepting and the
    // socket file goes.
    let mut c = open.pop().unwrap();
    c.mail("<a@x>", &[]).await.unwrap();
    server.stop.send(true).unwrap();
    c.rcpt("<b@y>", &[]).await.unwrap();
    finish_in_flight_after_shutdown(server, c).await;
}
