//! Integration tests: the lookup responder (socketmap and tcp_table) against Postfix's own
//! clients: `postmap -q` for every kind of answer, and a private Postfix that takes its
//! virtual domains, mailboxes, aliases and transports from wasmail.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wasmail::registry::sqlite::SqliteRegistry;
use wasmail::registry::{Alias, Domain, Mailbox, Registry};

use crate::support::postfix::{Postfix, docs_block, free_port};
use crate::support::{Serve, plugins_dir, require_program, require_root, wasmail_bin};

/// The registry every test starts from.
fn fill_registry(path: &Path) {
    let r = SqliteRegistry::open(path).unwrap();
    for (name, transport) in [
        ("example.com", None),
        ("example.net", None),
        ("discard.test", Some("discard:routed-by-wasmail")),
    ] {
        r.add_domain(&Domain {
            name: name.into(),
            transport: transport.map(Into::into),
            ..Domain::default()
        })
        .unwrap();
    }
    for a in [
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
        "erin@example.net",
        "sink@discard.test",
    ] {
        r.add_mailbox(&Mailbox {
            address: a.into(),
            ..Mailbox::default()
        })
        .unwrap();
    }
    for (src, targets) in [
        (
            "info@example.com",
            vec!["bob@example.com", "carol@example.com"],
        ),
        ("@example.net", vec!["erin@example.net"]),
    ] {
        r.add_alias(&Alias {
            source: src.into(),
            targets: targets.into_iter().map(Into::into).collect(),
        })
        .unwrap();
    }
}

/// A `wasmail serve` with the registry filled, the socketmap socket at `{dir}/sm.sock`,
/// tcp_table listeners for `virtual_mailbox_maps` and `rules`, and two plugin tables.
struct Responder {
    serve: Serve,
    socket: PathBuf,
    tcp_mailboxes: u16,
    tcp_rules: u16,
}

impl Responder {
    fn start() -> Responder {
        let dir = tempfile::tempdir().unwrap();
        fill_registry(&dir.path().join("registry.db"));
        let (tcp_mailboxes, tcp_rules) = (free_port(), free_port());
        // Two event loops (`[server] event_loops`): postmap's and Postfix's connections
        // are accepted on either and may move to the other.
        let config = format!(
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
file = "table-rules.wasm"
grants = ["config"]
[plugin.rules.settings]
found = ["hello world%=HELLO WORLD%", "greeting=hi", "example.org=domain-wide"]
temp = ["slow.example"]
perm = ["broken.example"]
trap = ["boom.example"]

[plugin.echo]
file = "table-rules.wasm"
grants = ["config"]
[plugin.echo.settings]
found = ["greeting=hi", "bob@example.org=bob", "example.org=domain"]
echo_original = "true"

[plugin.strict]
file = "table-rules.wasm"
grants = ["config"]
on_error = "tempfail"
[plugin.strict.settings]
trap = ["boom.example"]

[lookup]
socketmap = "unix:{{dir}}/sm.sock"
tcp = {{ virtual_mailbox_maps = "inet:127.0.0.1:{tcp_mailboxes}", rules = "inet:127.0.0.1:{tcp_rules}" }}

[lookup.tables.rules]
plugin = "rules"
[lookup.tables.echo]
plugin = "echo"
search = "access"
[lookup.tables.strict]
plugin = "strict"
"#,
            plugins = plugins_dir().display(),
        );
        let serve = Serve::start_in(dir, &config);
        let socket = serve.dir.path().join("sm.sock");
        Responder {
            serve,
            socket,
            tcp_mailboxes,
            tcp_rules,
        }
    }

    fn socketmap(&self, table: &str) -> String {
        format!("socketmap:unix:{}:{table}", self.socket.display())
    }
}

/// `postmap -q KEY MAP` with a throwaway config dir: (exit code, stdout, stderr).
pub(crate) fn postmap(key: &str, map: &str) -> (i32, String, String) {
    let etc = tempfile::tempdir().unwrap();
    // Postfix waits about 2 s when main.cf was modified in the last seconds (measured:
    // 2.1-2.4 s per call with a fresh file, 5 ms with an older one), so date it back.
    let main_cf = std::fs::File::create(etc.path().join("main.cf")).unwrap();
    main_cf
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    let out = crate::support::output_within(
        Command::new("postmap")
            .arg("-c")
            .arg(etc.path())
            .args(["-q", key, map]),
        Duration::from_secs(60),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn found(key: &str, map: &str) -> String {
    let (code, out, err) = postmap(key, map);
    assert_eq!(code, 0, "postmap -q {key} {map}: {err}");
    out
}

fn not_found(key: &str, map: &str) {
    let (code, out, err) = postmap(key, map);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", ""),
        "postmap -q {key} {map}"
    );
}

#[test]
fn postmap_gets_registry_answers_over_socketmap_and_tcp() {
    if !require_program(
        "postmap_gets_registry_answers_over_socketmap_and_tcp",
        "postmap",
    ) {
        return;
    }
    let r = Responder::start();
    let sm = |t: &str| r.socketmap(t);
    assert_eq!(found("example.com", &sm("virtual_mailbox_domains")), "OK");
    not_found("example.org", &sm("virtual_mailbox_domains"));
    // Mixed case and +extension, as Postfix sends them (postmap -q does not fold).
    assert_eq!(
        found("Bob+Tag@Example.COM", &sm("virtual_mailbox_maps")),
        "example.com/bob/"
    );
    not_found("nobody@example.com", &sm("virtual_mailbox_maps"));
    assert_eq!(
        found("Info@Example.com", &sm("virtual_alias_maps")),
        "bob@example.com,carol@example.com"
    );
    // Catch-all: unknown users go to it, real mailboxes map to themselves.
    assert_eq!(
        found("whoever@example.net", &sm("virtual_alias_maps")),
        "erin@example.net"
    );
    assert_eq!(
        found("ERIN@example.net", &sm("virtual_alias_maps")),
        "erin@example.net"
    );
    not_found("example.net", &sm("virtual_alias_maps"));
    assert_eq!(
        found("Sink+x@Discard.TEST", &sm("transport_maps")),
        "discard:routed-by-wasmail"
    );
    not_found("*", &sm("transport_maps"));
    assert_eq!(
        found("bob@example.com", &sm("smtpd_sender_login_maps")),
        "bob@example.com"
    );
    // A table wasmail does not serve is a permanent error.
    let (code, _, err) = postmap("x", &sm("no_such_table"));
    assert_eq!(code, 1);
    assert!(err.contains("permanent error"), "{err}");

    // tcp_table: the same registry, %-encoding both ways.
    let tcp = format!("tcp:127.0.0.1:{}", r.tcp_mailboxes);
    assert_eq!(found("Carol@Example.com", &tcp), "example.com/carol/");
    not_found("nobody@example.com", &tcp);
    let rules = format!("tcp:127.0.0.1:{}", r.tcp_rules);
    assert_eq!(found("Hello World%", &rules), "HELLO WORLD%");

    // A change made by another process (the CLI) is answered without a restart.
    not_found("frank@example.com", &sm("virtual_mailbox_maps"));
    let out = Command::new(wasmail_bin())
        .args(["mailbox", "--config"])
        .arg(r.serve.dir.path().join("wasmail.toml"))
        .args(["add", "frank@example.com", "--no-password"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let start = Instant::now();
    loop {
        let (code, value, _) = postmap("frank@example.com", &sm("virtual_mailbox_maps"));
        if code == 0 {
            assert_eq!(value, "example.com/frank/");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "registry change not visible after 3 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(r.serve.log_text().contains("registry changed"));
    // All of it was served on the two event loops of the config.
    assert!(
        r.serve.log_text().contains("event_loops=2"),
        "{}",
        r.serve.log_text()
    );
}

#[test]
fn postmap_gets_plugin_answers_of_every_kind() {
    if !require_program("postmap_gets_plugin_answers_of_every_kind", "postmap") {
        return;
    }
    let r = Responder::start();
    let sm = |t: &str| r.socketmap(t);
    assert_eq!(found("GREETING", &sm("rules")), "hi");
    not_found("nothing", &sm("rules"));
    let (code, _, err) = postmap("slow.example", &sm("rules"));
    assert_eq!(code, 1);
    assert!(
        err.contains("temporary error: no answer for slow.example right now"),
        "{err}"
    );
    let (code, _, err) = postmap("Broken.Example", &sm("rules"));
    assert_eq!(code, 1);
    assert!(
        err.contains("permanent error: broken.example is misconfigured"),
        "{err}"
    );
    // The plugin sees the folded candidate and the original key; access(5) order finds
    // the domain entry for an address in it.
    assert_eq!(found("Greeting", &sm("echo")), "hi original=Greeting");
    assert_eq!(
        found("Bob+X@Example.ORG", &sm("echo")),
        "bob original=Bob+X@Example.ORG"
    );
    assert_eq!(
        found("Other@Mail.Example.ORG", &sm("echo")),
        "domain original=Other@Mail.Example.ORG"
    );
    // `rules` has no `search`: a custom name gets the exact key only.
    not_found("someone@example.org", &sm("rules"));
    assert_eq!(found("example.org", &sm("rules")), "domain-wide");

    // A trapping plugin: on_error = continue → not found; tempfail → TEMP.
    not_found("boom.example", &sm("rules"));
    let (code, _, err) = postmap("boom.example", &sm("strict"));
    assert_eq!(code, 1);
    assert!(
        err.contains("temporary error: table plugin `strict` failed"),
        "{err}"
    );
    // Instances are reused across lookups, per domain: each domain's counter runs on
    // its own, and a trap (above) did not leave a broken instance in the pool.
    let counts: Vec<String> = [
        "count@a.test",
        "count@a.test",
        "count@b.test",
        "count@a.test",
    ]
    .iter()
    .map(|k| found(k, &sm("rules")))
    .collect();
    let n: Vec<u32> = counts.iter().map(|c| c.parse().unwrap()).collect();
    assert_eq!(n[1], n[0] + 1, "a.test reused its instance: {counts:?}");
    assert_eq!(n[2], 1, "b.test got its own instance: {counts:?}");
    assert_eq!(n[3], n[1] + 1, "a.test again: {counts:?}");
    // Both failures are logged with the plugin's name; the responder keeps serving.
    assert_eq!(found("greeting", &sm("rules")), "hi");
    let log = r.serve.log_text();
    assert!(log.contains("strict"), "{log}");
}

#[test]
fn postfix_takes_domains_mailboxes_aliases_and_transports_from_wasmail() {
    let name = "postfix_takes_domains_mailboxes_aliases_and_transports_from_wasmail";
    if !require_root(name) || !require_program(name, "postfix") || !require_program(name, "swaks") {
        return;
    }
    let r = Responder::start();
    let block = docs_block("lookup").replace(
        "unix:/run/wasmail/socketmap.sock",
        &format!("unix:{}", r.socket.display()),
    );
    // virtual(8) refuses socketmap for its own maps (docs/postfix.md): it keeps the
    // harness's file map; smtpd, cleanup and trivial-rewrite ask wasmail.
    let pf = Postfix::start_with(
        "",
        &block,
        &["virtual_mailbox_maps=texthash:$config_directory/vmailbox"],
    );
    let send = |to: &str| pf.swaks(pf.filter_port, "sender@remote.test", &[to], &[]);

    // Unknown mailbox in a registry domain: 550 at RCPT.
    let (code, text) = send("nobody@example.com");
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("550 5.1.1"), "{text}");
    assert!(
        text.contains("User unknown in virtual mailbox table"),
        "{text}"
    );

    // Mailbox with case and +extension; alias expansion; catch-all; transport route.
    let (code, text) = send("Bob+Tag@Example.COM");
    assert_eq!(code, 0, "{text}");
    let (code, text) = send("Info@Example.com");
    assert_eq!(code, 0, "{text}");
    let (code, text) = send("anyone@example.net");
    assert_eq!(code, 0, "{text}");
    let (code, text) = send("sink@discard.test");
    assert_eq!(code, 0, "{text}");

    let t = Duration::from_secs(30);
    assert_eq!(pf.wait_delivered("bob", 2, t).len(), 2, "direct + alias");
    assert_eq!(pf.wait_delivered("carol", 1, t).len(), 1, "alias");
    assert_eq!(
        pf.wait_delivered("erin@example.net", 1, t).len(),
        1,
        "catch-all"
    );
    let start = Instant::now();
    while !pf.log().contains("to=<sink@discard.test>") {
        assert!(
            start.elapsed() < t,
            "no delivery of sink@discard.test:\n{}",
            pf.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = pf.log();
    let line = log
        .lines()
        .find(|l| l.contains("to=<sink@discard.test>"))
        .unwrap();
    assert!(
        line.contains("status=sent (routed-by-wasmail)"),
        "transport_maps route not used: {line}"
    );
    assert!(
        !log.contains("warning: socketmap"),
        "Postfix logged a socketmap problem:\n{log}"
    );

    // The responder down: Postfix answers 4xx (the sender retries), never 5xx; once it
    // is back, the same mail is accepted and delivered.
    let Responder { mut serve, .. } = r;
    assert!(serve.stop(Duration::from_secs(20)).success());
    let (code, text) = send("carol@example.com");
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("451 4.3.0"), "{text}");
    assert!(!text.contains("\n<** 5"), "no permanent error: {text}");
    let dir = std::mem::replace(&mut serve.dir, tempfile::tempdir().unwrap());
    drop(serve);
    let config = std::fs::read_to_string(dir.path().join("wasmail.toml")).unwrap();
    let _serve = Serve::start_in(dir, &config);
    // A new address resolves at once; the failed one is cached as failed by the smtpd
    // process that saw the failure (smtpd's resolve cache lives as long as the process),
    // so it goes through once Postfix has fresh processes, as a retrying sender sees.
    let (code, text) = send("dave@example.com");
    assert_eq!(code, 0, "{text}");
    assert_eq!(pf.wait_delivered("dave", 1, t).len(), 1);
    pf.reload();
    let (code, text) = send("carol@example.com");
    assert_eq!(code, 0, "{text}");
    assert_eq!(pf.wait_delivered("carol", 2, t).len(), 2);
    // The harness's overrides are written once each: no start-up warning flood (see
    // support::postfix::last_entries_win).
    let log = pf.log();
    assert!(!log.contains("overriding earlier entry"), "{log}");
}

/// Raw bytes to a socket; returns what came back before the server closed or 2 s passed.
fn exchange(stream: &mut (impl Read + Write), bytes: &[u8]) -> Vec<u8> {
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn malformed_requests_close_the_connection_and_the_responder_keeps_serving() {
    let r = Responder::start();
    let unix = || {
        let s = std::os::unix::net::UnixStream::connect(&r.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    // A good request, then garbage on the same connection: one answer, then closed.
    let got = exchange(
        &mut unix(),
        b"36:virtual_mailbox_maps bob@example.com,xx:garbage",
    );
    assert_eq!(got, b"19:OK example.com/bob/,");
    // A declared length over the limit is refused before the payload is read.
    let got = exchange(&mut unix(), b"99999999:virtual_mailbox_maps");
    assert!(got.is_empty(), "{got:?}");
    // tcp_table: an over-long line gets 400 and a close.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", r.tcp_rules)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut long = b"get ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 5000));
    long.push(b'\n');
    let got = String::from_utf8(exchange(&mut tcp, &long)).unwrap();
    assert!(got.starts_with("400 "), "{got:?}");
    // `put` is not supported: 400 and a close.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", r.tcp_rules)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let got = String::from_utf8(exchange(&mut tcp, b"put a b\n")).unwrap();
    assert!(got.starts_with("400 "), "{got:?}");
    // Still serving, and the log names the problems.
    let got = exchange(&mut unix(), b"36:virtual_mailbox_maps bob@example.com,");
    assert_eq!(got, b"19:OK example.com/bob/,");
    let log = r.serve.log_text();
    assert!(log.contains("bad socketmap request"), "{log}");
    assert!(log.contains("bad tcp_table request"), "{log}");
}
