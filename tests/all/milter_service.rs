//! `wasmail serve` with a `[milter]` section: the binary listens where the config says,
//! negotiates with an MTA (wasmail's milter client), serves messages, and shuts down
//! cleanly, removing its socket.

use std::time::Duration;

use wasmail::config::LoopCount;
use wasmail_milter::net::{MilterClient, SocketSpec};
use wasmail_milter::{Action, Agreement, Stage};

use crate::support::Serve;

async fn one_session(spec: &SocketSpec) {
    let mut c = MilterClient::connect(spec)
        .await
        .expect("connect to wasmail milter");
    let n = c.negotiate().await.expect("negotiation");
    assert_eq!(n.opts.version, 6);
    let a = *c.agreement().unwrap();
    // No plugins: only the stages the chain needs (MAIL for transaction boundaries, end of
    // message) are requested; Postfix skips the rest.
    for stage in [
        Stage::Connect,
        Stage::Helo,
        Stage::Rcpt,
        Stage::Header,
        Stage::Body,
    ] {
        assert!(!a.sends(stage), "{stage:?} not requested without plugins");
    }
    assert!(a.sends(Stage::Mail) && a.sends(Stage::Eom));
    c.macros(b'C', &[("j", "mx.test")]);
    let r = c
        .connect_inet("client.example", "192.0.2.1", 4711)
        .await
        .unwrap();
    assert!(r.is_none(), "CONNECT is not sent");
    c.helo("client.example").await.unwrap();
    let r = c.mail("<a@example.com>", &["SIZE=5"]).await.unwrap();
    assert_eq!(r.unwrap().action, Action::Continue);
    c.rcpt("<b@example.net>", &[]).await.unwrap();
    c.header("Subject", "smoke").await.unwrap();
    c.eoh().await.unwrap();
    c.body(b"hello\r\n").await.unwrap();
    let r = c.eom().await.unwrap();
    assert_eq!(
        r.action,
        Action::Continue,
        "no plugins: every message continues"
    );
    assert!(r.modifications.is_empty());
    c.abort().await.unwrap();
    c.quit().await.unwrap();
    c.expect_closed().await.unwrap();
}

#[tokio::test]
async fn serve_milter_on_a_unix_socket_negotiates_serves_and_quits() {
    let mut serve =
        Serve::start("[milter]\nlisten = \"unix:{dir}/run/milter.sock\"\nsocket_mode = \"0600\"\n");
    let sock = serve.dir.path().join("run/milter.sock");
    assert!(sock.exists(), "socket created (with its directory)");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    one_session(&SocketSpec::Unix(sock.clone())).await;
    one_session(&SocketSpec::Unix(sock.clone())).await;
    let status = serve.stop(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", serve.log_text());
    assert!(!sock.exists(), "socket removed on shutdown");
    let log = serve.log_text();
    assert!(log.contains("milter listening"), "{log}");
    assert!(log.contains("wasmail stopped"), "{log}");
    // The default runtime shape, `[server] event_loops = "auto"`, resolved for the CPUs
    // this host gives the process (the rule itself is unit-tested in src/config).
    let loops = LoopCount::Auto.resolve_here();
    assert!(
        log.contains(&format!(" event_loops={loops}")),
        "expected event_loops={loops} in {log}"
    );
}

#[tokio::test]
async fn serve_milter_on_libmilter_style_tcp_address() {
    let mut serve = Serve::start("[milter]\nlisten = \"inet:0@127.0.0.1\"\n");
    let log = serve.log_text();
    let listen = log
        .lines()
        .find(|l| l.contains("milter listening"))
        .and_then(|l| l.split("listen=").nth(1))
        .map(|s| {
            s.split_whitespace()
                .next()
                .unwrap()
                .trim_matches('"')
                .to_owned()
        })
        .unwrap_or_else(|| panic!("listen address in log:\n{log}"));
    let spec: SocketSpec = listen.parse().unwrap();
    assert!(matches!(&spec, SocketSpec::Tcp { host, port } if host == "127.0.0.1" && *port != 0));
    one_session(&spec).await;
    // Garbage on the port closes that connection only and is logged with the peer.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let SocketSpec::Tcp { host, port } = &spec else {
            unreachable!()
        };
        let mut s = tokio::net::TcpStream::connect((host.as_str(), *port))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).await.unwrap();
    }
    serve.wait_for_log("milter connection closed on error", Duration::from_secs(10));
    assert!(
        serve.log_text().contains("above the limit"),
        "{}",
        serve.log_text()
    );
    one_session(&spec).await;
    assert!(serve.stop(Duration::from_secs(30)).success());
}

#[test]
fn serve_refuses_a_chain_naming_an_unknown_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wasmail.toml");
    std::fs::write(
        &cfg,
        format!(
            "[milter]\nlisten = \"unix:{}/m.sock\"\nchain = [\"spam\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(crate::support::wasmail_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("wasmail.toml:3:"), "{stderr}");
    assert!(stderr.contains("no plugin `spam`"), "{stderr}");
}

#[test]
fn serve_refuses_to_start_with_a_broken_plugin_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wasmail.toml");
    std::fs::write(dir.path().join("bad.wasm"), "not wasm").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[milter]\nlisten = \"unix:{d}/m.sock\"\nchain = [\"bad\"]\n\
             [plugins]\ndir = \"{d}\"\n[plugin.bad]\nfile = \"bad.wasm\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(crate::support::wasmail_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("bad.wasm") && stderr.contains("not a WebAssembly file"),
        "{stderr}"
    );
    assert!(!dir.path().join("m.sock").exists(), "nothing listens");
}

/// A server (one runtime worker, no event loops: the milter connections run on that
/// worker) whose chain's first plugin rejects at end of headers, with an admin socket; a
/// client that negotiated and sent CONNECT and HELO.
async fn rejecting_at_end_of_headers(milter_extra: &str) -> (Serve, MilterClient, Agreement) {
    let serve = Serve::start(&format!(
        r#"
[server]
worker_threads = 1
event_loops = 0
[milter]
listen = "unix:{{dir}}/milter.sock"
chain = ["first", "second"]
{milter_extra}
[admin]
listen = "unix:{{dir}}/admin.sock"
[plugins]
dir = "{{dir}}"
watch = false
[plugin.first]
file = "{plugins}/stamp.wasm"
[plugin.first.settings]
verdict_at = "end-of-headers"
verdict = "reject"
[plugin.second]
file = "{plugins}/stamp.wasm"
"#,
        plugins = crate::support::plugins_dir().display()
    ));
    let spec = SocketSpec::Unix(serve.dir.path().join("milter.sock"));
    let mut c = MilterClient::connect(&spec).await.unwrap();
    c.negotiate().await.unwrap();
    let a = *c.agreement().unwrap();
    c.connect_inet("client.example", "192.0.2.1", 4711)
        .await
        .unwrap();
    c.helo("client.example").await.unwrap();
    (serve, c, a)
}

/// Runs one message up to the body; returns the replies to end of headers, the body and
/// end of message.
async fn message_rejected_at_end_of_headers(
    c: &mut MilterClient,
) -> (Option<Action>, Option<Action>, Action) {
    c.mail("<a@example.com>", &[]).await.unwrap();
    c.rcpt("<b@example.net>", &[]).await.unwrap();
    c.header("Subject", "deferred").await.unwrap();
    let eoh = c.eoh().await.unwrap().map(|r| r.action);
    let body = c.body(b"hello\r\n").await.unwrap().map(|r| r.action);
    let eom = c.eom().await.unwrap();
    assert!(
        eom.modifications.is_empty(),
        "a rejected message gets no edits"
    );
    (eoh, body, eom.action)
}

fn reject_text(action: &Action) -> String {
    match action {
        Action::ReplyCode(r) => r.lines().join("\n"),
        other => panic!("expected the plugin's custom reject, got {other:?}"),
    }
}

/// `wasmail_plugin_calls_total` for `plugin` from the admin API.
fn calls(serve: &Serve, plugin: &str) -> u64 {
    crate::support::metric_total(
        &serve.dir.path().join("admin.sock"),
        &format!("wasmail_plugin_calls_total{{plugin=\"{plugin}\""),
    )
    .0
}

#[tokio::test]
async fn content_verdicts_are_sent_at_end_of_message_and_nothing_runs_after_them() {
    let (mut serve, mut c, a) = rejecting_at_end_of_headers("").await;
    assert!(
        serve.log_text().contains("workers=1 event_loops=0"),
        "[server] worker_threads = 1 and event_loops = 0 are in force: {}",
        serve.log_text()
    );
    for stage in [Stage::Header, Stage::Eoh, Stage::Body] {
        assert!(a.sends(stage), "{stage:?} is sent");
        assert!(!a.expects_reply(stage), "{stage:?} is not answered");
    }
    assert!(a.expects_reply(Stage::Rcpt) && a.expects_reply(Stage::Eom));
    let (eoh, body, eom) = message_rejected_at_end_of_headers(&mut c).await;
    assert_eq!(
        (eoh, body),
        (None, None),
        "Postfix does not wait in between"
    );
    assert_eq!(
        reject_text(&eom),
        "550 5.7.1 stamp: reject at end-of-headers"
    );
    // `first` ran connect, helo, mail-from, rcpt, headers and end-of-headers; `second`
    // the same but end-of-headers (the chain stopped there). Neither saw the body or end
    // of message that Postfix still sent.
    assert_eq!(calls(&serve, "first"), 6);
    assert_eq!(calls(&serve, "second"), 5);
    // The next message on the connection starts clean and is judged again.
    let (_, _, eom) = message_rejected_at_end_of_headers(&mut c).await;
    assert_eq!(
        reject_text(&eom),
        "550 5.7.1 stamp: reject at end-of-headers"
    );
    c.quit().await.unwrap();
    assert!(serve.stop(Duration::from_secs(30)).success());
}

#[tokio::test]
async fn content_verdicts_can_be_answered_at_their_stage() {
    let (mut serve, mut c, a) =
        rejecting_at_end_of_headers("defer_content_verdicts = false\n").await;
    assert!(!a.expects_reply(Stage::Header), "headers stay unanswered");
    assert!(a.expects_reply(Stage::Eoh) && a.expects_reply(Stage::Body));
    c.mail("<a@example.com>", &[]).await.unwrap();
    c.rcpt("<b@example.net>", &[]).await.unwrap();
    c.header("Subject", "answered").await.unwrap();
    let eoh = c.eoh().await.unwrap().expect("end of headers answered");
    assert_eq!(
        reject_text(&eoh.action),
        "550 5.7.1 stamp: reject at end-of-headers"
    );
    c.abort().await.unwrap();
    c.quit().await.unwrap();
    assert!(serve.stop(Duration::from_secs(30)).success());
}
