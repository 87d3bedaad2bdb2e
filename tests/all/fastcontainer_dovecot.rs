//! Integration test: a real Dovecot (Debian `dovecot-core`, `-imapd`, `-pop3d`, `-lmtpd`)
//! as a domain's FastContainer worker. The worker's `worker.conf` is rendered from
//! `examples/dovecot-worker.conf` (the template the docs ship), its passdb file is
//! generated from the registry, and it runs rootless inside its container with unix
//! sockets in its run directory. Root and Dovecot only; loud `SKIPPED:` otherwise.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmail::fastcontainer::Endpoint;
use wasmail::registry::password::hash_password;
use wasmail::registry::sqlite::SqliteRegistry;
use wasmail::registry::{Domain, Mailbox, Registry};

use crate::fastcontainer_manager::Fixture;
use crate::support::{repo_root, require_program, require_root};

/// The `[fastcontainer.worker]` table for the shipped Dovecot template.
pub(crate) fn dovecot_worker() -> String {
    format!(
        r#"argv = ["/usr/sbin/dovecot", "-F", "-c", "{{run_dir}}/worker.conf"]
ready = "unix:imap"
passwd_file = "users"
files = {{ "worker.conf" = "{}" }}"#,
        repo_root().join("examples/dovecot-worker.conf").display()
    )
}

/// A registry with example.com (bob, carol) and example.net (erin), passwords `pw-NAME`.
pub(crate) fn registry() -> Arc<SqliteRegistry> {
    let r = SqliteRegistry::open_in_memory().unwrap();
    for d in ["example.com", "example.net"] {
        r.add_domain(&Domain {
            name: d.into(),
            ..Domain::default()
        })
        .unwrap();
    }
    for a in ["bob@example.com", "carol@example.com", "erin@example.net"] {
        let local = a.split('@').next().unwrap();
        r.add_mailbox(&Mailbox {
            address: a.into(),
            password_hash: Some(hash_password(&format!("pw-{local}")).unwrap()),
            ..Mailbox::default()
        })
        .unwrap();
    }
    Arc::new(r)
}

/// One line-oriented exchange on a unix socket.
pub(crate) struct Lines {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Lines {
    pub fn connect(path: &Path) -> Lines {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Lines {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l
    }
    pub fn send(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).unwrap();
    }
    /// Sends `cmd` and reads lines until one starts with `until`.
    pub fn ask(&mut self, cmd: &str, until: &str) -> String {
        self.send(cmd);
        let mut all = String::new();
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "connection closed; so far:\n{all}");
            all.push_str(&l);
            if l.starts_with(until) {
                return all;
            }
        }
    }
}

/// IMAP LOGIN on a fresh connection; returns the tagged reply line and the connection.
pub(crate) fn imap_login(endpoint: &Endpoint, user: &str, pass: &str) -> (String, Lines) {
    let Endpoint::Unix(path) = endpoint else {
        panic!("unix endpoint expected")
    };
    let mut c = Lines::connect(path);
    let greeting = c.line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let reply = c.ask(&format!("a LOGIN {user} {pass}\r\n"), "a ");
    (reply, c)
}

#[test]
fn dovecot_worker_delivers_over_lmtp_and_logs_in_over_imap() {
    let name = "fastcontainer_dovecot::dovecot_worker_delivers_over_lmtp_and_logs_in_over_imap";
    if !require_root(name) || !require_program(name, "/usr/sbin/dovecot") {
        return;
    }
    let reg = registry();
    let r = reg.clone();
    let fx = Fixture::with_specs(
        "idle = \"fixed\"\nidle_timeout = \"1s\"\nlimits = { memory = \"256MiB\", pids = 128 }",
        &dovecot_worker(),
        move |s, d| s.spec_with_registry(d, Some(&r.snapshot().unwrap())),
    );

    let t0 = Instant::now();
    let lease = fx.rt.block_on(fx.manager.acquire("example.com")).unwrap();
    let (reply, mut imap) = imap_login(lease.endpoint(), "Bob@Example.com", "pw-bob");
    let first_login = t0.elapsed();
    assert!(reply.contains("a OK"), "{reply}");
    eprintln!("dovecot worker: cold start to first IMAP login {first_login:?}");

    // Wrong password and a user of another domain are refused by this domain's passdb.
    let (reply, _) = imap_login(lease.endpoint(), "bob@example.com", "wrong");
    assert!(reply.contains("a NO"), "{reply}");
    let (reply, _) = imap_login(lease.endpoint(), "erin@example.net", "pw-erin");
    assert!(reply.contains("a NO"), "{reply}");

    // LMTP delivery to the worker's lmtp socket lands in bob's Maildir under the domain's
    // storage, and IMAP sees it.
    let Endpoint::Unix(imap_sock) = lease.endpoint().clone() else {
        unreachable!()
    };
    let mut lmtp = Lines::connect(&imap_sock.with_file_name("lmtp"));
    assert!(lmtp.line().starts_with("220 "));
    lmtp.ask("LHLO wasmail.test\r\n", "250 ");
    assert!(
        lmtp.ask("MAIL FROM:<a@remote.test>\r\n", "250")
            .starts_with("250")
    );
    assert!(
        lmtp.ask("RCPT TO:<Bob+Tag@example.com>\r\n", "")
            .starts_with("250")
    );
    let unknown = lmtp.ask("RCPT TO:<nobody@example.com>\r\n", "");
    assert!(unknown.starts_with("550 5.1.1"), "{unknown}");
    assert!(lmtp.ask("DATA\r\n", "").starts_with("354"));
    let done = lmtp.ask("Subject: through the worker\r\n\r\nhello\r\n.\r\n", "");
    assert!(done.starts_with("250 2.0.0"), "{done}");
    let new = fx.tmp.path().join("mail/example.com/bob/Maildir");
    let files: Vec<_> = ["new", "cur"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(new.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .collect();
    assert_eq!(files.len(), 1, "one message in {}", new.display());
    let text = std::fs::read_to_string(files[0].path()).unwrap();
    assert!(text.contains("Subject: through the worker"), "{text}");
    let select = imap.ask("b SELECT INBOX\r\n", "b ");
    assert!(select.contains("* 1 EXISTS"), "{select}");
    imap.ask("c LOGOUT\r\n", "c ");

    // The worker runs in its own namespaces, as the unprivileged user.
    let pid = lease.pid();
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(ns(&pid.to_string()), ns("self"));
    drop(lease);
    drop(imap);
    drop(lmtp);

    // Idle → reaped: no Dovecot process of this worker remains; the mail stays.
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() || imap_sock.parent().unwrap().exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "worker not reaped and cleaned up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(text.contains("hello"));
    assert_eq!(
        std::fs::read_dir(new.join("cur"))
            .unwrap()
            .chain(std::fs::read_dir(new.join("new")).unwrap())
            .count(),
        1
    );

    // A password change in the registry reaches the next worker.
    reg.set_password(
        "carol@example.com",
        Some(&hash_password("new-secret").unwrap()),
    )
    .unwrap();
    let lease = fx.rt.block_on(fx.manager.acquire("example.com")).unwrap();
    let (reply, _) = imap_login(lease.endpoint(), "carol@example.com", "new-secret");
    assert!(reply.contains("a OK"), "{reply}");
}

/// Cold start → first IMAP login, 20 times (the benchmark runs more; see
/// benches/fastcontainer.sh). Prints p50/max so CI logs carry the figure.
#[test]
fn dovecot_cold_start_to_first_login_latency() {
    let name = "fastcontainer_dovecot::dovecot_cold_start_to_first_login_latency";
    if !require_root(name) || !require_program(name, "/usr/sbin/dovecot") {
        return;
    }
    let reg = registry();
    let fx = Fixture::with_specs(
        "idle = \"fixed\"\nidle_timeout = \"10m\"",
        &dovecot_worker(),
        move |s, d| s.spec_with_registry(d, Some(&reg.snapshot().unwrap())),
    );
    let mut times = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let lease = fx.rt.block_on(fx.manager.acquire("example.com")).unwrap();
        let (reply, _c) = imap_login(lease.endpoint(), "bob@example.com", "pw-bob");
        times.push(t0.elapsed());
        assert!(reply.contains("a OK"), "{reply}");
        drop(lease);
        assert_eq!(fx.rt.block_on(fx.manager.stop("example.com")), 1);
    }
    times.sort();
    eprintln!(
        "dovecot worker cold start → first login over {} starts: p50 {:?}, max {:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert_eq!(fx.starts("example.com"), 20);
}
