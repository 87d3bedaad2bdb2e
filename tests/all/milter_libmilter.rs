//! Interop: wasmail's milter client (`wasmail_milter::net::MilterClient`, the MTA role)
//! drives a real C milter built with sendmail's libmilter, the reference implementation
//! (`tests/milter/echo_milter.c`). The C milter reports what it received in an `X-Seen`
//! header at end of message and makes every kind of edit, so both directions are checked:
//! what the client encodes (as libmilter decodes it) and what the client makes of
//! libmilter's replies.
//!
//! Needs gcc and libmilter-dev (`/usr/include/libmilter/mfapi.h`); skipped loudly without.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmail_milter::client::Reply;
use wasmail_milter::net::{MilterClient, SocketSpec};
use wasmail_milter::{Action, Actions, CHUNK_SIZE, MacroStage, Modification, Protocol};

use crate::support::require_program;

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/milter/echo_milter.c");
const MFAPI_H: &str = "/usr/include/libmilter/mfapi.h";
/// Upper bound on one test's conversation with the milter.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The compiled echo milter, listening on a unix socket in its own temp dir; killed (and
/// reaped) when dropped.
struct EchoMilter {
    child: Child,
    spec: SocketSpec,
    log: PathBuf,
    /// Holds the binary, socket and log; removed after the child is killed.
    _dir: tempfile::TempDir,
}

impl Drop for EchoMilter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EchoMilter {
    /// Compiles and starts the milter, or prints a loud skip line and returns `None` when
    /// gcc or libmilter's headers are missing.
    async fn start(test: &str) -> Option<EchoMilter> {
        if !require_program(test, "gcc") {
            return None;
        }
        if !Path::new(MFAPI_H).exists() {
            eprintln!(
                "SKIPPED: {test}: {MFAPI_H} is missing (install libmilter-dev; scripts/setup.sh installs it)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("echo_milter");
        let out = Command::new("gcc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&bin)
            .arg(SOURCE)
            .args(["-lmilter", "-lpthread"])
            .output()
            .expect("run gcc");
        assert!(
            out.status.success(),
            "compiling {SOURCE} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let sock = dir.path().join("echo.sock");
        let log = dir.path().join("echo.log");
        let child = Command::new(&bin)
            .arg(format!("unix:{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start echo_milter");
        let mut m = EchoMilter {
            child,
            spec: SocketSpec::Unix(sock.clone()),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Some(status) = m.child.try_wait().unwrap() {
                panic!("echo_milter exited early ({status}): {}", m.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "echo_milter did not create {} within 10 s: {}",
                sock.display(),
                m.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(m)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client connected to the milter (retrying briefly: the socket file exists once
    /// bound, a moment before `listen`).
    async fn client(&mut self) -> MilterClient {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match MilterClient::connect(&self.spec).await {
                Ok(c) => return c,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("connect to echo_milter: {e}: {}", self.log_text()),
            }
        }
    }
}

/// Asserts a plain CONTINUE reply (no edits, no progress).
#[track_caller]
fn cont(r: Option<Reply>, what: &str) {
    let r = r.unwrap_or_else(|| panic!("{what}: no reply (step not sent or no reply expected)"));
    assert_eq!(
        r,
        Reply {
            action: Action::Continue,
            modifications: vec![],
            progress: 0
        },
        "{what}"
    );
}

/// The 100000-byte body the echo milter substitutes: 80-byte lines of the digits
/// `0123456789` repeated to 78 characters, then CRLF.
fn replacement_body() -> Vec<u8> {
    (0..100_000usize)
        .map(|k| match k % 80 {
            78 => b'\r',
            79 => b'\n',
            c => b'0' + (c % 10) as u8,
        })
        .collect()
}

/// A body of `len` bytes of CRLF-terminated lines.
fn body_of(len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| match k % 64 {
            62 => b'\r',
            63 => b'\n',
            c => b'a' + (c % 26) as u8,
        })
        .collect()
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

/// The `X-Seen` value of an end-of-message reply (its first modification).
#[track_caller]
fn seen(r: &Reply) -> String {
    match r.modifications.first() {
        Some(Modification::AddHeader { name, value }) if name.as_ref() == b"X-Seen" => {
            String::from_utf8(value.to_vec()).unwrap()
        }
        other => panic!("first modification is not X-Seen: {other:?}"),
    }
}

/// Negotiates, then CONNECT (with `j` for C) and HELO, checking each is continued.
async fn open_session(c: &mut MilterClient) {
    let n = c.negotiate().await.expect("negotiate");
    assert_eq!(n.opts.version, 6);
    c.macros(b'C', &[("j", "mx.test")]);
    cont(
        c.connect_inet("client.example", "192.0.2.1", 4711)
            .await
            .unwrap(),
        "CONNECT",
    );
    cont(c.helo("helo.example").await.unwrap(), "HELO");
}

/// RCPTs (all continued), DATA, the headers, EOH, the body and EOM; returns the EOM reply.
async fn message_after_mail(
    c: &mut MilterClient,
    rcpts: &[&str],
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    for r in rcpts {
        cont(c.rcpt(r, &[]).await.unwrap(), "RCPT");
    }
    cont(c.data().await.unwrap(), "DATA");
    for (n, v) in headers {
        cont(c.header(n, v).await.unwrap(), "HEADER");
    }
    cont(c.eoh().await.unwrap(), "EOH");
    cont(c.body(body).await.unwrap(), "BODY");
    c.eom().await.expect("EOM")
}

/// Runs a test body with an overall timeout (a hung conversation fails, not hangs).
async fn within<F: std::future::Future<Output = ()>>(m: &EchoMilter, f: F) {
    if tokio::time::timeout(TEST_TIMEOUT, f).await.is_err() {
        panic!(
            "conversation with echo_milter timed out after {TEST_TIMEOUT:?}: {}",
            m.log_text()
        );
    }
}

#[tokio::test]
async fn libmilter_negotiation_and_symlist() {
    let Some(mut m) = EchoMilter::start("libmilter_negotiation_and_symlist").await else {
        return;
    };
    let mut c = m.client().await;
    within(&m, async {
        let n = c.negotiate().await.expect("negotiate");
        assert_eq!(n.opts.version, 6, "{n:?}");
        // The client offers everything (Postfix's offer); the milter asks for all of it.
        assert!(n.opts.actions.contains(Actions::CURRENT), "{n:?}");
        assert!(n.opts.actions.contains(Actions::SET_SYMLIST), "{n:?}");
        // Every step, every reply: no SMFIP_NO* / SMFIP_NR_* bits.
        let no_steps = Protocol::NO_CONNECT
            | Protocol::NO_HELO
            | Protocol::NO_MAIL
            | Protocol::NO_RCPT
            | Protocol::NO_BODY
            | Protocol::NO_HEADERS
            | Protocol::NO_EOH
            | Protocol::NO_UNKNOWN
            | Protocol::NO_DATA
            | Protocol::NR_HEADER
            | Protocol::NR_CONNECT
            | Protocol::NR_HELO
            | Protocol::NR_MAIL
            | Protocol::NR_RCPT
            | Protocol::NR_DATA
            | Protocol::NR_UNKNOWN
            | Protocol::NR_EOH
            | Protocol::NR_BODY;
        assert!(!n.opts.protocol.intersects(no_steps), "{n:?}");
        assert!(
            n.symlists
                .contains(&(MacroStage::Connect, Bytes::from_static(b"j {client_addr}"))),
            "{n:?}"
        );
        let a = c.agreement().expect("agreement recorded");
        assert_eq!(a.version, 6);
        assert_eq!(a.actions, n.opts.actions);
    })
    .await;
}

#[tokio::test]
async fn libmilter_receives_every_stage_and_sends_every_edit() {
    let Some(mut m) =
        EchoMilter::start("libmilter_receives_every_stage_and_sends_every_edit").await
    else {
        return;
    };
    let mut c = m.client().await;
    within(&m, async {
        open_session(&mut c).await;
        c.macros(b'M', &[("i", "QID42")]);
        cont(
            c.mail("<alice@example.com>", &["SIZE=123", "BODY=8BITMIME"])
                .await
                .unwrap(),
            "MAIL",
        );
        let body = body_of(70_000);
        assert!(
            body.len() > CHUNK_SIZE,
            "the body must take two BODY packets"
        );
        let r = message_after_mail(
            &mut c,
            &["<b@example.net>", "<c@example.net>"],
            &[
                ("Subject", "hello"),
                ("From", "Alice <alice@example.com>"),
                ("X-Replace", "yes"),
            ],
            &body,
        )
        .await;
        assert_eq!(r.action, Action::Continue, "{r:?}");
        assert!(r.progress >= 1, "progress packets: {}", r.progress);

        let expected_seen = "host=client.example family=4 port=4711 addr=192.0.2.1 \
                             helo=helo.example from=<alice@example.com> \
                             args=SIZE=123,BODY=8BITMIME rcpts=2 headers=3 body=70000 \
                             i=QID42 j=mx.test";
        assert_eq!(seen(&r), expected_seen);

        let expected_edits = [
            Modification::AddHeader {
                name: b("X-Seen"),
                value: b(expected_seen),
            },
            Modification::InsertHeader {
                index: 0,
                name: b("X-Top"),
                value: b("top"),
            },
            Modification::ChangeHeader {
                index: 1,
                name: b("Subject"),
                value: b("changed"),
            },
            Modification::AddRcpt(b("<added@example.net>")),
            Modification::AddRcptPar {
                rcpt: b("<par@example.net>"),
                args: vec![b("NOTIFY=NEVER")],
            },
            Modification::DeleteRcpt(b("<b@example.net>")),
            Modification::ChangeFrom {
                from: b("<new@example.com>"),
                args: vec![b("SIZE=1")],
            },
            Modification::Quarantine(b("held by echo")),
        ];
        assert!(
            r.modifications.len() > expected_edits.len(),
            "no body replacement: {:?}",
            r.modifications
        );
        assert_eq!(r.modifications[..expected_edits.len()], expected_edits[..]);

        let mut new_body = Vec::new();
        let mut packets = 0;
        for m in &r.modifications[expected_edits.len()..] {
            match m {
                Modification::ReplaceBody(chunk) => {
                    assert!(chunk.len() <= CHUNK_SIZE, "REPLBODY of {}", chunk.len());
                    new_body.extend_from_slice(chunk);
                    packets += 1;
                }
                other => panic!("unexpected modification after the edits: {other:?}"),
            }
        }
        assert_eq!(packets, 2, "libmilter splits 100000 bytes at 65535");
        assert_eq!(new_body.len(), 100_000);
        assert!(new_body == replacement_body(), "replacement body differs");

        c.quit().await.unwrap();
        c.expect_closed().await.expect("milter closes after QUIT");
    })
    .await;
}

#[tokio::test]
async fn libmilter_verdicts() {
    let Some(mut m) = EchoMilter::start("libmilter_verdicts").await else {
        return;
    };
    let mut c = m.client().await;
    within(&m, async {
        open_session(&mut c).await;

        // Sender rejected with a custom reply; the MTA then aborts the transaction.
        let r = c
            .mail("<reject@example.com>", &[])
            .await
            .unwrap()
            .expect("MAIL reply");
        assert!(r.modifications.is_empty());
        match &r.action {
            Action::ReplyCode(code) => {
                assert_eq!(code.code(), 550);
                let text = String::from_utf8_lossy(code.as_bytes()).into_owned();
                assert!(text.contains("5.7.1 sender rejected"), "{text:?}");
            }
            other => panic!("MAIL <reject@example.com>: expected REPLYCODE, got {other:?}"),
        }
        c.abort().await.unwrap();

        // A recipient rejected, the next one continued; then the EOM verdicts.
        for (verdict, action) in [
            ("discard", Action::Discard),
            ("tempfail", Action::Tempfail),
            ("accept", Action::Accept),
        ] {
            cont(c.mail("<alice@example.com>", &[]).await.unwrap(), "MAIL");
            let r = c
                .rcpt("<nobody@example.net>", &[])
                .await
                .unwrap()
                .expect("RCPT reply");
            assert_eq!(r.action, Action::Reject, "RCPT <nobody@example.net>");
            assert!(r.modifications.is_empty());
            let r = message_after_mail(
                &mut c,
                &["<b@example.net>"],
                &[("Subject", "verdict"), ("X-Verdict", verdict)],
                b"text\r\n",
            )
            .await;
            assert_eq!(r.action, action, "X-Verdict: {verdict}: {r:?}");
            let s = seen(&r);
            assert!(
                s.contains(" from=<alice@example.com> args= rcpts=1 headers=2 body=6 "),
                "{s}"
            );
            assert!(
                !r.modifications
                    .iter()
                    .any(|m| matches!(m, Modification::ReplaceBody(_))),
                "body replaced without X-Replace"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn libmilter_abort_then_new_message_and_quit() {
    let Some(mut m) = EchoMilter::start("libmilter_abort_then_new_message_and_quit").await else {
        return;
    };
    let mut c = m.client().await;
    within(&m, async {
        open_session(&mut c).await;

        // A message abandoned after its headers…
        c.macros(b'M', &[("i", "QIDOLD")]);
        cont(
            c.mail("<old@example.com>", &["SIZE=99"]).await.unwrap(),
            "MAIL",
        );
        cont(c.rcpt("<b@example.net>", &[]).await.unwrap(), "RCPT");
        cont(c.rcpt("<c@example.net>", &[]).await.unwrap(), "RCPT");
        cont(c.data().await.unwrap(), "DATA");
        cont(c.header("X-Verdict", "tempfail").await.unwrap(), "HEADER");
        cont(c.header("X-Replace", "yes").await.unwrap(), "HEADER");
        c.abort().await.unwrap();

        // …leaves nothing behind for the next one on the same connection.
        c.macros(b'M', &[("i", "QIDNEW")]);
        cont(c.mail("<new@example.com>", &[]).await.unwrap(), "MAIL");
        let r = message_after_mail(
            &mut c,
            &["<d@example.net>"],
            &[("Subject", "second")],
            b"second\r\n",
        )
        .await;
        assert_eq!(r.action, Action::Continue, "{r:?}");
        assert_eq!(
            seen(&r),
            "host=client.example family=4 port=4711 addr=192.0.2.1 helo=helo.example \
             from=<new@example.com> args= rcpts=1 headers=1 body=8 i=QIDNEW j=mx.test"
        );
        assert!(
            !r.modifications
                .iter()
                .any(|m| matches!(m, Modification::ReplaceBody(_))),
            "X-Replace of the aborted message leaked into the next one"
        );

        c.quit().await.unwrap();
        c.expect_closed().await.expect("milter closes after QUIT");
    })
    .await;
}
