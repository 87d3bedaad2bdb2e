//! Interop: the real `miltertest` client (Debian package `miltertest`, OpenDKIM project)
//! drives wasmail's milter server (the `wasmail_milter` tokio driver) with the Lua script
//! `tests/milter/interop.lua`: negotiation, every stage, macros, header and recipient
//! edits, quarantine, a small body replacement and every final verdict.
//!
//! The server runs in this process with a scripted handler: what it does for each input
//! is listed on [`Scripted`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use wasmail_milter::net::{Listener, MilterFactory, Peer, ServerConfig, SocketSpec, serve};
use wasmail_milter::{
    Action, Actions, Connect, Context, Envelope, Milter, Modification, Needs, OptNeg, ReplyCode,
};

use crate::support::require_program;

/// The scripted handler:
/// - CONNECT from host `reject.example` / `tempfail.example` / `accept.example`: that verdict;
/// - MAIL from `<reject@example.com>`: `554 5.7.1 sender rejected`;
///   from `<rewrite@example.com>`: CHGFROM to `<rewritten@example.com>` at end of message;
/// - RCPT `<nobody@example.net>`: reject that recipient;
/// - header `X-Verdict: reject|tempfail|discard|accept`: that verdict at end of message;
/// - header `X-Quarantine`: quarantine and delete that header; `X-Replace: yes`: replace the
///   body with `replaced body\r\n`;
/// - end of message: add `X-Wasmail-Test` summarising what was seen, insert `X-Top: top` at
///   the top, change the first `Subject` to `changed`, add `<added@example.net>`, delete
///   `<deleted@example.net>` if it was a recipient.
#[derive(Default)]
struct Scripted {
    client: String,
    helo: String,
    from: String,
    args: Vec<String>,
    rcpts: Vec<String>,
    headers: usize,
    subject: bool,
    verdict: Option<Action>,
    quarantine: bool,
    replace: bool,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Scripted {
    fn reset_message(&mut self) {
        let keep = (self.client.clone(), self.helo.clone());
        *self = Scripted::default();
        (self.client, self.helo) = keep;
    }
}

impl Milter for Scripted {
    fn negotiate(&mut self, _offer: &OptNeg) -> Needs {
        Needs {
            actions: Actions::ADD_HEADERS
                | Actions::CHANGE_HEADERS
                | Actions::ADD_RCPT
                | Actions::DELETE_RCPT
                | Actions::QUARANTINE
                | Actions::CHANGE_FROM
                | Actions::CHANGE_BODY,
            ..Needs::default()
        }
    }

    async fn connect(&mut self, _cx: &Context<'_>, client: &Connect) -> Action {
        self.client = text(&client.address);
        match &client.hostname[..] {
            b"reject.example" => Action::Reject,
            b"tempfail.example" => Action::Tempfail,
            b"accept.example" => Action::Accept,
            _ => Action::Continue,
        }
    }

    async fn helo(&mut self, _cx: &Context<'_>, name: &Bytes) -> Action {
        self.helo = text(name);
        Action::Continue
    }

    async fn mail(&mut self, _cx: &Context<'_>, from: &Envelope) -> Action {
        self.reset_message();
        self.from = text(&from.address);
        self.args = from.args.iter().map(|a| text(a)).collect();
        if self.from == "<reject@example.com>" {
            return Action::ReplyCode(
                ReplyCode::new(554, Some("5.7.1"), "sender rejected").expect("valid reply"),
            );
        }
        Action::Continue
    }

    async fn rcpt(&mut self, _cx: &Context<'_>, to: &Envelope) -> Action {
        if &to.address[..] == b"<nobody@example.net>" {
            return Action::Reject;
        }
        self.rcpts.push(text(&to.address));
        Action::Continue
    }

    async fn header(&mut self, _cx: &Context<'_>, name: &Bytes, value: &Bytes) -> Action {
        self.headers += 1;
        match (&name[..], &value[..]) {
            (b"X-Verdict", v) => {
                self.verdict = match v {
                    b"reject" => Some(Action::Reject),
                    b"tempfail" => Some(Action::Tempfail),
                    b"discard" => Some(Action::Discard),
                    b"accept" => Some(Action::Accept),
                    _ => None,
                }
            }
            (b"X-Quarantine", _) => self.quarantine = true,
            (b"X-Replace", b"yes") => self.replace = true,
            (b"Subject", _) => self.subject = true,
            _ => {}
        }
        Action::Continue
    }

    async fn eom(&mut self, cx: &Context<'_>, edits: &mut Vec<Modification>) -> Action {
        let b = |s: &str| Bytes::from(s.to_owned());
        let macro_or_dash = |n: &str| cx.macros.get_str(n).map_or("-".into(), |v| v.into_owned());
        let summary = format!(
            "client={} helo={} from={} args={} rcpts={} headers={} j={} i={}",
            self.client,
            self.helo,
            self.from,
            self.args.join(","),
            self.rcpts.len(),
            self.headers,
            macro_or_dash("j"),
            macro_or_dash("i"),
        );
        edits.push(Modification::AddHeader {
            name: b("X-Wasmail-Test"),
            value: b(&summary),
        });
        edits.push(Modification::InsertHeader {
            index: 0,
            name: b("X-Top"),
            value: b("top"),
        });
        if self.subject {
            edits.push(Modification::ChangeHeader {
                index: 1,
                name: b("Subject"),
                value: b("changed"),
            });
        }
        edits.push(Modification::AddRcpt(b("<added@example.net>")));
        if self.rcpts.iter().any(|r| r == "<deleted@example.net>") {
            edits.push(Modification::DeleteRcpt(b("<deleted@example.net>")));
        }
        if self.from == "<rewrite@example.com>" {
            edits.push(Modification::ChangeFrom {
                from: b("<rewritten@example.com>"),
                args: vec![],
            });
        }
        if self.quarantine {
            edits.push(Modification::ChangeHeader {
                index: 1,
                name: b("X-Quarantine"),
                value: Bytes::new(),
            });
            edits.push(Modification::Quarantine(b("quarantined by test")));
        }
        if self.replace {
            edits.push(Modification::ReplaceBody(b("replaced body\r\n")));
        }
        let verdict = self.verdict.take().unwrap_or(Action::Continue);
        self.reset_message();
        verdict
    }

    async fn abort(&mut self, _cx: &Context<'_>) {
        self.reset_message();
    }
}

struct ScriptedFactory;

impl MilterFactory for ScriptedFactory {
    type Milter = Scripted;
    fn new_milter(&self, _peer: &Peer) -> Scripted {
        Scripted::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miltertest_drives_every_stage_edit_and_verdict() {
    let name = "milter_miltertest::miltertest_drives_every_stage_edit_and_verdict";
    if !require_program(name, "miltertest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("milter.sock");
    let listener = Listener::bind(&SocketSpec::Unix(sock.clone()), Some(0o600))
        .await
        .unwrap();
    let (stop, rx) = watch::channel(false);
    let server = tokio::spawn(serve(
        listener,
        Arc::new(ScriptedFactory),
        ServerConfig::default(),
        rx,
    ));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/milter/interop.lua");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("miltertest")
            .arg("-D")
            .arg(format!("MILTER=unix:{}", sock.display()))
            .args(["-s", script])
            .output(),
    )
    .await
    .expect("miltertest finished in time")
    .expect("miltertest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("miltertest stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        out.status.success(),
        "miltertest failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("interop.lua: all checks passed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("helo=client.example from=<alice@example.com> args=SIZE=1234,BODY=8BITMIME rcpts=2 headers=3 j=mx.test i=QID123"),
        "{stdout}"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}
