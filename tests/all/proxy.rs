//! Integration tests: the IMAP and POP3 fronts of `wasmail serve` in front of real
//! Dovecot workers (FastContainer), driven by Python's `imaplib` and `poplib` and by raw
//! sockets for bad input. The TLS certificate is generated at test time with the
//! `openssl` CLI. Root, Dovecot, python3 and openssl only; loud `SKIPPED:` otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wasmail::registry::password::hash_password;
use wasmail::registry::sqlite::SqliteRegistry;
use wasmail::registry::{Domain, Mailbox, Registry};

use crate::fastcontainer_dovecot::dovecot_worker;
use crate::support::postfix::free_port;
use crate::support::{Serve, output_within, plugin, repo_root, require_program, require_root};

/// The worker user of the Dovecot template (the spawner's default uid/gid).
const WORKER_ID: u32 = 65534;

/// True when everything the end-to-end tests need is here (prints why not).
fn prerequisites(test: &str) -> bool {
    require_root(test)
        && require_program(test, "/usr/sbin/dovecot")
        && require_program(test, "python3")
        && require_program(test, "openssl")
}

/// A `wasmail serve` with the fronts on loopback, a Dovecot worker template and the
/// `login-rule` plugin denying mallory.
pub(crate) struct Fronts {
    pub serve: Serve,
    pub imap: u16,
    pub pop3: u16,
}

impl Fronts {
    /// `extra` is appended to the `[proxy]` section.
    pub fn start(idle_timeout: &str, extra: &str) -> Fronts {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_certificate(d);
        fill_registry(&d.join("registry.db"));
        deliver_to_maildir(&d.join("mail/example.com/bob/Maildir"));
        let (imap, pop3) = (free_port(), free_port());
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_wasmail"))
            .parent()
            .unwrap()
            .display()
            .to_string();
        let config = format!(
            r#"
[server]
shutdown_grace = "5s"

[registry]
path = "{{dir}}/registry.db"
refresh = "200ms"

[plugins]
watch = false

[plugin.login-rule]
file = "{login_rule}"
grants = ["config", "log"]
[plugin.login-rule.settings]
deny_users = "mallory@example.com"
deny_message = "Mallory may not log in here"

[fastcontainer]
run_root = "{{dir}}/run"
storage_root = "{{dir}}/mail"
cgroup_root = "wasmail-proxy-test"
idle = "fixed"
idle_timeout = "{idle_timeout}"
stop_grace = "2s"
start_timeout = "10s"
system_mounts = ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "{bin_dir}"]

[fastcontainer.worker]
{worker}

[proxy]
imap = "inet:127.0.0.1:{imap}"
pop3 = "inet:127.0.0.1:{pop3}"
tls_cert = "{{dir}}/cert.pem"
tls_key = "{{dir}}/key.pem"
hooks = ["login-rule"]
auth_failure_delay = "100ms"
{extra}
"#,
            login_rule = plugin("login-rule").display(),
            worker = dovecot_worker(),
        );
        let mut serve = Serve::start_in(dir, &config);
        serve.wait_for_log("imap front listening", Duration::from_secs(10));
        serve.wait_for_log("pop3 front listening", Duration::from_secs(10));
        Fronts { serve, imap, pop3 }
    }

    pub fn dir(&self) -> &Path {
        self.serve.dir.path()
    }

    /// Running workers' run directories.
    pub fn workers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir().join("run"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Waits until no worker runs (reaped after its idle timeout).
    pub fn wait_no_worker(&self, within: Duration) {
        let start = Instant::now();
        while !self.workers().is_empty() {
            assert!(
                start.elapsed() < within,
                "worker still running after {within:?}: {:?}\n{}",
                self.workers(),
                self.serve.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost (cert.pem, key.pem in `dir`).
pub(crate) fn make_certificate(dir: &Path) {
    let out = output_within(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem")),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "openssl: {out:?}");
}

/// example.com with bob (password `pw-bob`); mallory is not a mailbox.
fn fill_registry(path: &Path) {
    let r = SqliteRegistry::open(path).unwrap();
    r.add_domain(&Domain {
        name: "example.com".into(),
        ..Domain::default()
    })
    .unwrap();
    r.add_mailbox(&Mailbox {
        address: "bob@example.com".into(),
        password_hash: Some(hash_password("pw-bob").unwrap()),
        ..Mailbox::default()
    })
    .unwrap();
}

/// One message in a fresh Maildir, owned by the worker user.
fn deliver_to_maildir(maildir: &Path) {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::write(
        maildir.join("new/1700000000.M1P1.wasmail-test"),
        "From: alice@remote.test\r\nTo: bob@example.com\r\nSubject: through the front\r\n\r\nhello through the proxy\r\n",
    )
    .unwrap();
    // Every directory from the storage root down belongs to the worker.
    let mut p = maildir.to_path_buf();
    let mut todo = vec![];
    while !p.ends_with("mail") {
        todo.push(p.clone());
        p.pop();
    }
    todo.push(p);
    for d in todo {
        chown_tree(&d);
    }
}

fn chown_tree(p: &Path) {
    std::os::unix::fs::chown(p, Some(WORKER_ID), Some(WORKER_ID)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path());
        }
    }
}

/// A raw line-oriented client of a front.
struct Raw {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.r.read_line(&mut l);
        l
    }
    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }
    /// True when the server closed the connection (EOF or reset) with nothing more.
    fn closed(&mut self) -> bool {
        self.rest().is_some_and(|r| r.is_empty())
    }
    /// What the server sent before closing; None if it did not close (read timeout).
    fn rest(&mut self) -> Option<Vec<u8>> {
        let mut rest = Vec::new();
        match self.r.read_to_end(&mut rest) {
            Ok(_) => Some(rest),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(rest),
            Err(_) => None,
        }
    }
}

#[test]
fn imaplib_and_poplib_log_in_through_the_fronts_and_read_mail() {
    let name = "proxy::imaplib_and_poplib_log_in_through_the_fronts_and_read_mail";
    if !prerequisites(name) {
        return;
    }
    let fronts = Fronts::start("2s", "");
    assert!(
        fronts.workers().is_empty(),
        "no worker before the first login"
    );

    let t0 = Instant::now();
    let out = output_within(
        Command::new("python3")
            .arg(repo_root().join("tests/fixtures/proxy_clients.py"))
            .arg(fronts.imap.to_string())
            .arg(fronts.pop3.to_string())
            .arg(fronts.dir().join("cert.pem")),
        Duration::from_secs(120),
    );
    let took = t0.elapsed();
    let log = fronts.serve.log_text();
    assert!(
        out.status.success(),
        "python clients failed:\n{}\n{}\n--- serve log ---\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("python clients ({took:?}): {r:#}");

    // Logins in plain text on loopback and after STARTTLS/STLS read the message.
    for s in ["imap_plain", "imap_tls"] {
        assert_eq!(r[s]["exists"], 1, "{s}: {r:#}");
        let login = r[s]["login"].as_str().unwrap();
        assert!(
            login.contains("[CAPABILITY IMAP4rev1"),
            "{s}: worker capabilities in the OK: {login}"
        );
        assert!(
            r[s]["message"]
                .as_str()
                .unwrap()
                .contains("Subject: through the front"),
            "{s}: {r:#}"
        );
    }
    for s in ["pop3_plain", "pop3_tls"] {
        assert_eq!(r[s]["count"], 1, "{s}: {r:#}");
        assert!(
            r[s]["message"]
                .as_str()
                .unwrap()
                .contains("hello through the proxy"),
            "{s}: {r:#}"
        );
    }
    // Wrong password and unknown domain look the same to the client.
    for s in ["imap_wrong_password", "imap_unknown_domain"] {
        let e = r[s]["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("[AUTHENTICATIONFAILED] Authentication failed."),
            "{s}: {r:#}"
        );
    }
    let e = r["pop3_wrong_password"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(e.contains("-ERR [AUTH] Authentication failed."), "{r:#}");
    // The deny plugin's message reaches the client.
    let e = r["imap_denied"]["error"].as_str().unwrap_or_default();
    assert!(e.contains("[ALERT] Mallory may not log in here"), "{r:#}");
    let e = r["pop3_denied"]["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("-ERR [AUTH] Mallory may not log in here"),
        "{r:#}"
    );

    // One worker, started by the first session; the log says who logged in and how.
    assert_eq!(
        log.matches("fastcontainer: worker ready").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("logged in; splicing to the worker").count(),
        4,
        "{log}"
    );
    assert!(log.contains("secured=true"), "{log}");
    assert!(log.contains("reason=\"wrong password\""), "{log}");
    assert!(log.contains("login failed: unknown domain"), "{log}");
    assert!(
        log.contains("plugin=login-rule") && log.contains("hook denied"),
        "{log}"
    );
    assert!(
        !log.contains("pw-bob"),
        "a password reached the log:\n{log}"
    );

    // Idle → reaped: the worker is gone after its idle timeout.
    fronts.wait_no_worker(Duration::from_secs(20));
    // The manager removes the run directory before it logs the stop.
    let mut fronts = fronts;
    fronts
        .serve
        .wait_for_log("fastcontainer: worker stopped", Duration::from_secs(10));
}

#[test]
fn bad_input_is_refused_with_clear_logs_and_no_leaked_worker_session() {
    let name = "proxy::bad_input_is_refused_with_clear_logs_and_no_leaked_worker_session";
    if !prerequisites(name) {
        return;
    }
    let mut fronts = Fronts::start("1s", "max_bad_commands = 5");

    // Garbage before login: BAD, then BYE after too many.
    let mut c = Raw::connect(fronts.imap);
    assert!(c.line().starts_with("* OK [CAPABILITY IMAP4rev1"));
    c.send(b"\x00\xff\xfe\x80 garbage\r\n");
    assert_eq!(c.line(), "* BAD Invalid characters in command.\r\n");
    c.send(b"a SELECT INBOX\r\n");
    assert_eq!(
        c.line(),
        "a BAD Unknown command, or not valid before login.\r\n"
    );
    c.send(b"b\r\nc LOGIN\r\nd FOO\r\n");
    assert!(c.line().starts_with("b BAD"));
    assert!(c.line().starts_with("c BAD"));
    assert!(c.line().starts_with("d BAD"));
    assert_eq!(c.line(), "* BYE Too many invalid IMAP commands.\r\n");
    assert!(c.closed());

    // An overlong line ends the connection; an overlong literal is refused in step.
    let mut c = Raw::connect(fronts.imap);
    c.line();
    c.send(&vec![b'a'; 9000]);
    assert_eq!(c.line(), "* BYE Line too long.\r\n");
    assert!(c.closed());
    let mut c = Raw::connect(fronts.imap);
    c.line();
    c.send(b"a LOGIN {100000}\r\n");
    assert_eq!(c.line(), "a BAD Literal too large.\r\n");
    c.send(b"b NOOP\r\n");
    assert_eq!(c.line(), "b OK NOOP completed.\r\n");
    c.send(b"c LOGIN bob@example.com {100000+}\r\nxxxx");
    assert_eq!(c.line(), "* BYE Literal too large.\r\n");
    assert!(c.closed());

    // POP3: garbage and an overlong line.
    let mut c = Raw::connect(fronts.pop3);
    assert_eq!(c.line(), "+OK wasmail ready.\r\n");
    c.send(b"RETR 1\r\n");
    assert_eq!(
        c.line(),
        "-ERR Unknown command, or not valid before login.\r\n"
    );
    c.send(&vec![b'x'; 9000]);
    assert_eq!(c.line(), "-ERR Line too long.\r\n");
    assert!(c.closed());

    // A TLS handshake that fails (not TLS at all) closes the connection.
    let mut c = Raw::connect(fronts.imap);
    c.line();
    c.send(b"a STARTTLS\r\n");
    assert_eq!(c.line(), "a OK Begin TLS negotiation now.\r\n");
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let rest = c.rest().expect("closed after the failed handshake");
    // Nothing, or one TLS alert record (content type 21).
    assert!(rest.is_empty() || rest[0] == 0x15, "{rest:?}");

    // Clients that disconnect mid-login: after a complete LOGIN (the worker is started
    // and logged in to, then the session ends), and in the middle of a literal.
    let mut c = Raw::connect(fronts.imap);
    c.line();
    c.send(b"a LOGIN bob@example.com pw-bob\r\n");
    drop(c);
    let mut c = Raw::connect(fronts.pop3);
    c.line();
    c.send(b"USER bob@example.com\r\nPASS pw-bob\r\n");
    drop(c);
    let mut c = Raw::connect(fronts.imap);
    c.line();
    c.send(b"a LOGIN bob@example.com {6}\r\n");
    assert_eq!(c.line(), "+ Ready for literal data\r\n");
    c.send(b"pw-");
    drop(c);

    fronts.serve.wait_for_log(
        "client closed in the middle of a command",
        Duration::from_secs(10),
    );
    fronts
        .serve
        .wait_for_log("fastcontainer: worker ready", Duration::from_secs(20));
    // Both abandoned logins end their worker session, so the worker is reaped.
    fronts.wait_no_worker(Duration::from_secs(30));
    // The manager removes the run directory before it logs the stop.
    fronts
        .serve
        .wait_for_log("fastcontainer: worker stopped", Duration::from_secs(10));
    let log = fronts.serve.log_text();
    for needle in [
        "too many invalid commands; closing",
        "client sent an overlong line; closing",
        "client sent an overlong literal; closing",
        "TLS handshake failed",
        "fastcontainer: worker stopped",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
    let status = fronts.serve.stop(Duration::from_secs(20));
    assert!(status.success(), "{status}");
}

#[test]
fn imap_command_hooks_deny_a_command_and_pass_the_rest_through() {
    let name = "proxy::imap_command_hooks_deny_a_command_and_pass_the_rest_through";
    if !prerequisites(name) {
        return;
    }
    let extra = format!(
        r#"
[plugin.command-rules]
file = "{}"
grants = ["config", "log"]
[plugin.command-rules.settings]
commands = ["DELETE=deny:Deleting folders is disabled here", "APPEND Blocked=deny:No appends to Blocked", "XDELAYED=delay:300"]
"#,
        plugin("command-rules").display()
    );
    let mut fronts = Fronts::start("30s", &extra);

    // Without the domain chain the session is spliced without parsing.
    let mut c = Raw::connect(fronts.imap);
    c.line();
    c.send(b"a LOGIN bob@example.com pw-bob\r\n");
    assert!(c.line().starts_with("a OK"));
    c.send(b"b DELETE NoSuchFolder\r\n");
    let l = c.line();
    assert!(l.starts_with("b NO") && !l.contains("disabled here"), "{l}");
    c.send(b"c LOGOUT\r\n");
    drop(c);
    fronts
        .serve
        .wait_for_log("imap_command_hooks=false", Duration::from_secs(10));

    // example.com subscribes its sessions to command-rules.
    let registry = SqliteRegistry::open(&fronts.dir().join("registry.db")).unwrap();
    let mut d = registry
        .snapshot()
        .unwrap()
        .domain("example.com")
        .unwrap()
        .clone();
    d.chains
        .insert("hook".into(), vec!["command-rules".to_string()]);
    registry.update_domain(&d).unwrap();
    std::thread::sleep(Duration::from_millis(800)); // [registry] refresh is 200ms

    let out = output_within(
        Command::new("python3")
            .arg(repo_root().join("tests/fixtures/proxy_commands.py"))
            .arg(fronts.imap.to_string()),
        Duration::from_secs(60),
    );
    let log = fronts.serve.log_text();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}\n--- serve log ---\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("imaplib on the hooked path: {r:#}");
    assert_eq!(r["select"][0], "OK", "{r:#}");
    assert!(
        r["fetch"][1]
            .as_str()
            .unwrap()
            .contains("Subject: through the front"),
        "{r:#}"
    );
    assert_eq!(r["append"][0], "OK", "{r:#}");
    assert_eq!(r["exists_after_append"], 2, "{r:#}");
    assert_eq!(
        r["appended_subject"], "Subject: appended through the hooks",
        "{r:#}"
    );
    assert_eq!(r["create"], "OK", "{r:#}");
    assert_eq!(
        r["delete"],
        serde_json::json!(["NO", "[ALERT] Deleting folders is disabled here"]),
        "the plugin's tagged NO: {r:#}"
    );
    // The worker never saw the DELETE: the folder is still listed, and on disk.
    assert!(
        r["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().ends_with("Keep")),
        "{r:#}"
    );
    assert!(
        fronts
            .dir()
            .join("mail/example.com/bob/Maildir/.Keep")
            .is_dir()
    );
    assert_eq!(r["noop"], "OK", "{r:#}");

    // Raw: literals both ways round a denial, IDLE/DONE, a delayed command.
    let mut c = Raw::connect(fronts.imap);
    c.line();
    c.send(b"a LOGIN bob@example.com pw-bob\r\n");
    assert!(c.line().starts_with("a OK"));
    // A denied synchronizing literal: the NO comes instead of "+", nothing is sent.
    c.send(b"b APPEND Blocked {5}\r\n");
    assert_eq!(c.line(), "b NO [ALERT] No appends to Blocked\r\n");
    // A denied non-synchronizing literal: its data is dropped with the command.
    c.send(b"c APPEND Blocked {15+}\r\nd DELETE Keep\r\n\r\ne NOOP\r\n");
    assert_eq!(c.line(), "c NO [ALERT] No appends to Blocked\r\n");
    let l = c.line();
    assert!(l.starts_with("e OK"), "{l}");
    // An allowed non-synchronizing literal (LITERAL+) and a DELETE inside a literal:
    // it is message data, not a command.
    let body = b"Subject: lit\r\n\r\nf DELETE Keep\r\n";
    c.send(format!("f APPEND INBOX {{{}+}}\r\n", body.len()).as_bytes());
    c.send(body);
    c.send(b"\r\n");
    let l = c.line();
    assert!(l.starts_with("f OK"), "{l}");
    // IDLE: the worker's "+", then DONE passes through unhooked.
    c.send(b"g IDLE\r\n");
    assert!(c.line().starts_with("+ "));
    c.send(b"DONE\r\n");
    let l = c.line();
    assert!(l.starts_with("g OK"), "{l}");
    let t = Instant::now();
    c.send(b"h XDELAYED\r\n");
    let l = c.line();
    assert!(
        l.starts_with("h BAD"),
        "the worker answers the unknown command: {l}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    c.send(b"i COMPRESS DEFLATE\r\n");
    assert_eq!(
        c.line(),
        "i NO [CANNOT] COMPRESS is not available on this connection.\r\n"
    );
    c.send(b"j LIST \"\" Keep\r\n");
    let l = c.line();
    assert!(l.starts_with("* LIST") && l.contains("Keep"), "{l}");
    assert!(c.line().starts_with("j OK"));
    // The worker refuses a synchronizing literal (no such mailbox) instead of "+": the
    // client does not send it, and its next line is a command again, hooked.
    c.send(b"m APPEND NoSuchBox {5}\r\n");
    let l = c.line();
    eprintln!("APPEND to a missing mailbox, the worker's first answer: {l:?}");
    if l.starts_with('+') {
        c.send(b"hello\r\n");
        let l = c.line();
        assert!(l.starts_with("m NO"), "{l}");
    } else {
        assert!(l.starts_with("m NO"), "{l}");
    }
    c.send(b"n DELETE Keep\r\n");
    assert_eq!(
        c.line(),
        "n NO [ALERT] Deleting folders is disabled here\r\n"
    );
    c.send(b"k LOGOUT\r\n");
    assert!(c.line().starts_with("* BYE"));
    drop(c);

    let log = fronts.serve.log_text();
    assert!(log.contains("imap_command_hooks=true"), "{log}");
    assert!(
        log.contains("imap command denied") && log.contains("plugin=command-rules"),
        "{log}"
    );
    let status = fronts.serve.stop(Duration::from_secs(20));
    assert!(status.success(), "{status}");
}
