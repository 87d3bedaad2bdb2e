//! End to end, "wasmail as the front" (docs/dovecot.md, topology A): the tested blocks of
//! the docs (wasmail.toml, Postfix's main.cf lines, the registry commands) run against a
//! private Postfix and real Dovecot workers on loopback. Mail sent with swaks to two
//! domains (and to an alias) lands in each domain's Maildir through the LMTP front;
//! Python's imaplib and poplib log in through the fronts (plain on loopback, STARTTLS and
//! STLS with a certificate made at test time) and read it; a deny plugin's message
//! reaches the client; a `delay` and a `rewrite` of the user at `auth` take effect; the
//! workers are started by the first session and gone after the idle timeout.
//! Root, Postfix, swaks, Dovecot, python3 and openssl only; loud `SKIPPED:` otherwise.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::lmtp::{maildir, wait_until};
use crate::proxy::make_certificate;
use crate::support::postfix::{Postfix, free_port};
use crate::support::{
    Serve, docs_fenced, output_within, plugins_dir, repo_root, require_program, require_root,
    wasmail_bin,
};

const DOC: &str = "docs/dovecot.md";

/// `text` with `from` replaced by `to`; panics when the docs no longer contain `from`, so
/// a changed doc block fails here instead of silently testing something else.
fn sub(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "{DOC}: the tested block no longer contains {from:?}:\n{text}"
    );
    text.replace(from, to)
}

/// The docs' wasmail.toml with the paths under the temp dir (`{dir}`), loopback ports,
/// the test certificate, a short fixed idle timeout and a private cgroup root; plus the
/// `hook-verdicts` test plugin (for the domains' `hook` chains).
fn config(imap: u16, pop3: u16) -> String {
    let mut t = docs_fenced(DOC, "front-wasmail", "toml");
    for (from, to) in [
        (
            "/var/lib/wasmail/registry.db",
            "{dir}/registry.db".to_string(),
        ),
        (
            "dir = \"/etc/wasmail/plugins\"",
            format!("dir = \"{}\"\nwatch = false", plugins_dir().display()),
        ),
        (
            "unix:/run/wasmail/socketmap.sock",
            "unix:{dir}/sm.sock".into(),
        ),
        ("unix:/run/wasmail/lmtp.sock", "unix:{dir}/lmtp.sock".into()),
        ("inet:0.0.0.0:143", format!("inet:127.0.0.1:{imap}")),
        ("inet:0.0.0.0:110", format!("inet:127.0.0.1:{pop3}")),
        ("/etc/wasmail/tls/fullchain.pem", "{dir}/cert.pem".into()),
        ("/etc/wasmail/tls/key.pem", "{dir}/key.pem".into()),
        ("/run/wasmail/workers", "{dir}/run".into()),
        (
            "storage_root = \"/var/lib/wasmail/mail\"",
            "storage_root = \"{dir}/mail\"\ncgroup_root = \"wasmail-e2e-test\"\n\
             start_timeout = \"10s\"\nstop_grace = \"2s\""
                .into(),
        ),
        ("idle = \"adaptive\"", "idle = \"fixed\"".into()),
        ("idle_timeout = \"5m\"", "idle_timeout = \"5s\"".into()),
        (
            "/etc/wasmail/dovecot-worker.conf",
            repo_root()
                .join("examples/dovecot-worker.conf")
                .display()
                .to_string(),
        ),
        (
            "unix:/run/wasmail/admin.sock",
            "unix:{dir}/admin.sock".into(),
        ),
    ] {
        t = sub(&t, from, &to);
    }
    t.push_str(
        r#"
[server]
shutdown_grace = "5s"

[plugin.verdicts]
file = "hook-verdicts.wasm"
grants = ["config", "log"]
[plugin.verdicts.settings]
auth = ["robert@example.com=rewrite:user=bob@example.com", "erin@example.net=delay:1500"]
"#,
    );
    t
}

/// Runs the docs' registry commands verbatim with `sh -e`, `wasmail` on PATH and
/// `WASMAIL_CONFIG` pointing at the test's configuration.
fn run_registry_commands(cfg: &Path, extra: &str) {
    let script = format!("{}{extra}", docs_fenced(DOC, "front-registry", "sh"));
    let bin_dir = wasmail_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = output_within(
        Command::new("sh")
            .args(["-e", "-x", "-c", &script])
            .env("PATH", path)
            .env("WASMAIL_CONFIG", cfg),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "registry commands failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `wasmail ctl workers --json` through the `[admin]` socket of the docs' config.
fn ctl_workers(cfg: &Path) -> Vec<serde_json::Value> {
    let out = output_within(
        Command::new(wasmail_bin())
            .args(["ctl", "workers", "--json", "--config"])
            .arg(cfg),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "wasmail ctl workers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    v["workers"].as_array().cloned().unwrap_or_default()
}

/// Domains with a running worker (a host pid) in `ctl workers`.
fn running(workers: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = workers
        .iter()
        .filter(|w| !w["pid"].is_null())
        .map(|w| w["domain"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn wasmail_as_the_front_delivers_with_postfix_and_serves_imap_pop3() {
    let name = "e2e::wasmail_as_the_front_delivers_with_postfix_and_serves_imap_pop3";
    if !require_root(name)
        || !require_program(name, "postfix")
        || !require_program(name, "swaks")
        || !require_program(name, "/usr/sbin/dovecot")
        || !require_program(name, "python3")
        || !require_program(name, "openssl")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Postfix's lmtp and lookup clients (user postfix) reach the sockets in here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    make_certificate(dir.path());
    let (imap, pop3) = (free_port(), free_port());
    let text = config(imap, pop3);
    let cfg = dir.path().join("wasmail.toml");
    std::fs::write(&cfg, text.replace("{dir}", dir.path().to_str().unwrap())).unwrap();
    // What the docs tell the operator to run first.
    let out = output_within(
        Command::new(wasmail_bin())
            .args(["check-config", "--config"])
            .arg(&cfg),
        Duration::from_secs(30),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in ["lookup", "lmtp", "fastcontainer", "admin", "imap", "pop3"] {
        assert!(said.contains(service), "check-config: {said}");
    }
    // The docs' commands, then the test's hook chain (delay and rewrite at `auth`).
    run_registry_commands(
        &cfg,
        "\nwasmail domain set example.com --chain hook=verdicts\n\
         wasmail domain set example.net --chain hook=verdicts\n",
    );

    let mut serve = Serve::start_in(dir, &text);
    serve.wait_for_log("imap front listening", Duration::from_secs(10));
    serve.wait_for_log("pop3 front listening", Duration::from_secs(10));
    assert_eq!(
        running(&ctl_workers(&cfg)),
        Vec::<String>::new(),
        "no worker before the first mail"
    );

    // Postfix with the docs' main.cf lines, pointed at this serve's sockets.
    let d = serve.dir.path();
    let block = sub(
        &sub(
            &docs_fenced(DOC, "front-postfix", "main.cf"),
            "unix:/run/wasmail/socketmap.sock",
            &format!("unix:{}", d.join("sm.sock").display()),
        ),
        "unix:/run/wasmail/lmtp.sock",
        &format!("unix:{}", d.join("lmtp.sock").display()),
    );
    let pf = Postfix::start_with("", &block, &[]);
    let logs = || format!("{}\n--- serve ---\n{}", pf.log(), serve.log_text());

    let (code, out) = pf.swaks(
        pf.filter_port,
        "alice@remote.test",
        &["bob@example.com", "erin@example.net"],
        &[
            "--header",
            "Subject: e2e to two domains",
            "--body",
            "first body, through the LMTP front",
        ],
    );
    assert_eq!(code, 0, "{out}\n{}", logs());
    let (code, out) = pf.swaks(
        pf.filter_port,
        "alice@remote.test",
        &["team@example.com"],
        &[
            "--header",
            "Subject: e2e to the alias",
            "--body",
            "second body, for the whole team",
        ],
    );
    assert_eq!(code, 0, "{out}\n{}", logs());
    // An unknown mailbox in a hosted domain is refused by Postfix at RCPT (registry).
    let (code, out) = pf.swaks(
        pf.filter_port,
        "alice@remote.test",
        &["nobody@example.com"],
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("550 5.1.1"), "{out}");

    let within = Duration::from_secs(90);
    wait_until(
        "two messages each for bob and erin",
        within,
        || {
            maildir(&serve, "bob@example.com").len() >= 2
                && maildir(&serve, "erin@example.net").len() >= 2
        },
        logs,
    );
    // Each message exactly once per mailbox, in that domain's storage.
    for who in ["bob@example.com", "erin@example.net"] {
        let got = maildir(&serve, who);
        assert_eq!(got.len(), 2, "{who}: {got:?}");
        for (subject, body) in [
            (
                "Subject: e2e to two domains",
                "first body, through the LMTP front",
            ),
            (
                "Subject: e2e to the alias",
                "second body, for the whole team",
            ),
        ] {
            assert_eq!(
                got.iter()
                    .filter(|m| m.contains(subject) && m.contains(body))
                    .count(),
                1,
                "{who}: {got:?}"
            );
        }
    }
    assert!(maildir(&serve, "mallory@example.com").is_empty());
    // Postfix logs a delivery after the LMTP reply (through postlogd), so its log line can
    // trail the message in the Maildir: wait for it.
    let sent = || {
        pf.log()
            .lines()
            .filter(|l| l.contains("status=sent") && l.contains("lmtp.sock"))
            .count()
    };
    wait_until(
        "four status=sent lines in Postfix's log",
        Duration::from_secs(10),
        || sent() >= 4,
        || pf.log(),
    );
    assert_eq!(sent(), 4, "{}", pf.log());
    assert!(
        pf.log().contains("orig_to=<team@example.com>"),
        "alias expanded by Postfix:\n{}",
        pf.log()
    );

    // The first mail started one worker per domain.
    let workers = ctl_workers(&cfg);
    assert_eq!(
        running(&workers),
        ["example.com", "example.net"],
        "{workers:?}"
    );
    for w in &workers {
        assert_eq!(w["starts"], 1, "{workers:?}");
    }
    assert_eq!(
        serve
            .log_text()
            .matches("fastcontainer: worker ready")
            .count(),
        2,
        "{}",
        serve.log_text()
    );

    // Python's clients through the fronts.
    let out = output_within(
        Command::new("python3")
            .arg(repo_root().join("tests/fixtures/e2e_clients.py"))
            .arg(imap.to_string())
            .arg(pop3.to_string())
            .arg(d.join("cert.pem"))
            .args([
                "imap_plain:imap:plain:bob@example.com:bob-secret",
                "imap_tls:imap:tls:erin@example.net:erin-secret",
                "pop3_tls_bob:pop3:tls:bob@example.com:bob-secret",
                "pop3_tls_erin:pop3:tls:erin@example.net:erin-secret",
                "imap_denied:imap:tls:mallory@example.com:mallory-secret",
                "pop3_denied:pop3:tls:mallory@example.com:mallory-secret",
                "imap_rewritten:imap:tls:robert@example.com:bob-secret",
            ]),
        Duration::from_secs(180),
    );
    assert!(
        out.status.success(),
        "python clients failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        serve.log_text()
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("python clients: {r:#}");
    for s in [
        "imap_plain",
        "imap_tls",
        "pop3_tls_bob",
        "pop3_tls_erin",
        "imap_rewritten",
    ] {
        let msgs: Vec<&str> = r[s]["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("{s}: {r:#}\n{}", serve.log_text()))
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(msgs.len(), 2, "{s}: {r:#}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("Subject: e2e to two domains")
                    && m.contains("first body, through the LMTP front")),
            "{s}: {r:#}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("Subject: e2e to the alias")
                && m.contains("second body, for the whole team")),
            "{s}: {r:#}"
        );
    }
    // The deny plugin's message (from the docs' settings) reaches the clients.
    let e = r["imap_denied"]["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("[ALERT] This account is locked; call the help desk"),
        "{r:#}"
    );
    let e = r["pop3_denied"]["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("-ERR [AUTH] This account is locked; call the help desk"),
        "{r:#}"
    );
    // `delay` at auth holds erin's logins; `rewrite` logged robert in as bob.
    for s in ["imap_tls", "pop3_tls_erin"] {
        let secs = r[s]["seconds"].as_f64().unwrap();
        assert!(
            secs >= 1.5,
            "{s}: login took {secs}s, the hook asked for 1.5s"
        );
    }
    let log = serve.log_text();
    assert!(log.contains("auth erin@example.net: delay:1500"), "{log}");
    assert!(
        log.contains("auth robert@example.com: rewrite:user=bob@example.com"),
        "{log}"
    );
    assert!(
        log.contains("plugin=login-rule") && log.contains("hook denied"),
        "{log}"
    );
    // Both kinds of session reached the worker: plain on loopback and after STARTTLS/STLS.
    assert!(log.contains("secured=false"), "{log}");
    assert!(log.contains("secured=true"), "{log}");
    for secret in ["bob-secret", "erin-secret", "mallory-secret"] {
        assert!(!log.contains(secret), "a password reached the log:\n{log}");
    }

    // Idle → reaped: each domain's worker is gone after the idle timeout; mail stays.
    wait_until(
        "both workers reaped",
        Duration::from_secs(40),
        || running(&ctl_workers(&cfg)).is_empty(),
        || serve.log_text(),
    );
    // The stop is logged after the cleanup.
    wait_until(
        "both stops logged",
        Duration::from_secs(10),
        || {
            serve
                .log_text()
                .matches("fastcontainer: worker stopped")
                .count()
                >= 2
        },
        || serve.log_text(),
    );
    assert_eq!(maildir(&serve, "bob@example.com").len(), 2);
    drop(pf);
    let status = serve.stop(Duration::from_secs(30));
    assert!(status.success(), "{status}");
}
