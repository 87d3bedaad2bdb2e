//! Integration tests: the policy delegation responder, over its socket and with a private
//! Postfix using `check_policy_service` exactly as docs/postfix.md shows.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use wasmail::registry::sqlite::SqliteRegistry;
use wasmail::registry::{Domain, Registry};

use crate::support::postfix::{Postfix, docs_block};
use crate::support::{Serve, plugins_dir, require_program, require_root};

/// Config: global chain `rules` (a `policy-rules` instance), and `net-rules` as the
/// registry chain of example.net. `{dir}` is the serve temp dir.
fn config() -> String {
    // Two event loops (`[server] event_loops`): the policy connections run there.
    format!(
        r#"
[server]
event_loops = 2

[registry]
path = "{{dir}}/registry.db"
refresh = "100ms"

[plugins]
dir = "{plugins}"
watch = false

[plugin.rules]
file = "policy-rules.wasm"
grants = ["config"]
[plugin.rules.settings]
rules = [
    "bob@example.com=prepend:X-Wasmail-Policy: checked by rules",
    "carol@example.com=reject:5.7.1 carol does not take mail from you",
    "dave@example.com=defer:4.7.1 dave is busy; try later",
    "trap@example.com=trap",
]

[plugin.net-rules]
file = "policy-rules.wasm"
grants = ["config"]
on_error = "tempfail"
[plugin.net-rules.settings]
rules = ["erin@example.net=prepend:X-Domain-Policy: example.net", "trap@example.net=trap"]

[policy]
listen = "unix:{{dir}}/policy.sock"
chain = ["rules"]
"#,
        plugins = plugins_dir().display(),
    )
}

fn start_serve(dir: tempfile::TempDir) -> Serve {
    let reg = SqliteRegistry::open(&dir.path().join("registry.db")).unwrap();
    if reg.snapshot().unwrap().domain("example.net").is_none() {
        let mut d = Domain {
            name: "example.net".into(),
            ..Domain::default()
        };
        d.chains.insert("policy".into(), vec!["net-rules".into()]);
        reg.add_domain(&d).unwrap();
    }
    Serve::start_in(dir, &config())
}

/// One request over an open connection: the attribute lines, then the action.
fn ask(conn: &mut BufReader<UnixStream>, attrs: &[(&str, &str)]) -> Option<String> {
    let mut req = String::new();
    for (k, v) in attrs {
        req.push_str(&format!("{k}={v}\n"));
    }
    req.push('\n');
    conn.get_mut().write_all(req.as_bytes()).unwrap();
    let mut action = None;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return action;
        }
        if let Some(a) = line.strip_prefix("action=") {
            action = Some(a.to_string());
        }
    }
}

fn rcpt(recipient: &str) -> Vec<(&'static str, String)> {
    vec![
        ("request", "smtpd_access_policy".into()),
        ("protocol_state", "RCPT".into()),
        ("protocol_name", "ESMTP".into()),
        ("client_address", "127.0.0.1".into()),
        ("sender", "sender@remote.test".into()),
        ("recipient", recipient.into()),
        ("policy_context", "smtpd".into()),
    ]
}

fn connect(socket: &PathBuf) -> BufReader<UnixStream> {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    BufReader::new(s)
}

#[test]
fn policy_chain_answers_over_one_connection() {
    let serve = start_serve(tempfile::tempdir().unwrap());
    let socket = serve.dir.path().join("policy.sock");
    let mut conn = connect(&socket);
    let mut q = |r: &str| {
        let attrs = rcpt(r);
        let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ask(&mut conn, &attrs)
    };
    assert_eq!(
        q("bob@example.com").as_deref(),
        Some("PREPEND X-Wasmail-Policy: checked by rules")
    );
    assert_eq!(
        q("Carol@Example.com").as_deref(),
        Some("REJECT 5.7.1 carol does not take mail from you")
    );
    assert_eq!(
        q("dave@example.com").as_deref(),
        Some("DEFER 4.7.1 dave is busy; try later")
    );
    assert_eq!(q("nobody@example.com").as_deref(), Some("DUNNO"));
    // The registry chain of the recipient domain runs after the global chain.
    assert_eq!(
        q("erin@example.net").as_deref(),
        Some("PREPEND X-Domain-Policy: example.net")
    );
    // A trap in a continue plugin is skipped; in a tempfail plugin it defers.
    assert_eq!(q("trap@example.com").as_deref(), Some("DUNNO"));
    assert_eq!(
        q("trap@example.net").as_deref(),
        Some("DEFER_IF_PERMIT 4.3.0 Policy service temporarily unavailable")
    );

    // Malformed input: no answer and a closed connection; the service keeps going.
    let mut bad = connect(&socket);
    bad.get_mut()
        .write_all(b"request=smtpd_access_policy\nthis line has no equals sign\n\n")
        .unwrap();
    let mut rest = String::new();
    assert_eq!(bad.read_line(&mut rest).unwrap_or(0), 0, "{rest:?}");
    let mut other = connect(&socket);
    assert_eq!(
        ask(&mut other, &[("request", "something_else")]),
        None,
        "unknown request type: closed without an answer"
    );
    let mut again = connect(&socket);
    let attrs = rcpt("bob@example.com");
    let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(ask(&mut again, &attrs).unwrap().starts_with("PREPEND"));
    let log = serve.log_text();
    assert!(log.contains("bad policy request"), "{log}");
}

#[test]
fn postfix_applies_policy_plugin_actions_and_loses_nothing_when_wasmail_is_down() {
    let name = "postfix_applies_policy_plugin_actions_and_loses_nothing_when_wasmail_is_down";
    if !require_root(name) || !require_program(name, "postfix") || !require_program(name, "swaks") {
        return;
    }
    let mut serve = start_serve(tempfile::tempdir().unwrap());
    let socket = serve.dir.path().join("policy.sock");
    let block = docs_block("policy").replace(
        "unix:/run/wasmail/policy.sock",
        &format!("unix:{}", socket.display()),
    );
    let pf = Postfix::start("", &block);
    let send = |to: &str| pf.swaks(pf.filter_port, "sender@remote.test", &[to], &[]);

    let (code, text) = send("carol@example.com");
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("554 5.7.1 <carol@example.com>: Recipient address rejected: carol does not take mail from you"),
        "{text}"
    );
    let (code, text) = send("dave@example.com");
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("450 4.7.1 <dave@example.com>: Recipient address rejected: dave is busy"),
        "{text}"
    );
    let (code, text) = send("bob@example.com");
    assert_eq!(code, 0, "{text}");
    let (code, text) = send("erin@example.net");
    assert_eq!(code, 0, "{text}");
    let t = Duration::from_secs(30);
    let bob = pf.wait_delivered("bob", 1, t);
    assert!(
        bob[0].contains("X-Wasmail-Policy: checked by rules"),
        "{}",
        bob[0]
    );
    let erin = pf.wait_delivered("erin@example.net", 1, t);
    assert!(
        erin[0].contains("X-Domain-Policy: example.net"),
        "{}",
        erin[0]
    );
    assert!(
        !bob[0].contains("X-Domain-Policy"),
        "one action per request"
    );

    // wasmail down: Postfix's default action (451 4.3.5) defers; the queueing listener
    // keeps the message; once wasmail is back, a flush delivers it. Nothing lost.
    let status = serve.stop(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    let (code, text) = pf.swaks(
        pf.queue_port,
        "sender@remote.test",
        &["bob@example.com"],
        &[],
    );
    assert_eq!(code, 0, "the queueing listener accepts: {text}");
    pf.wait_queue("deferred", 1, Duration::from_secs(60));
    assert!(
        pf.log().contains("451 4.3.5"),
        "expected Postfix's policy default action:\n{}",
        pf.log()
    );
    let dir = std::mem::replace(&mut serve.dir, tempfile::tempdir().unwrap());
    drop(serve);
    let _serve = start_serve(dir);
    pf.flush();
    let bob = pf.wait_delivered("bob", 2, Duration::from_secs(60));
    assert!(bob[1].contains("X-Wasmail-Policy: checked by rules"));
    pf.wait_queue("deferred", 0, Duration::from_secs(30));
}
