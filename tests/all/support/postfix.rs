//! A private Postfix instance for end-to-end tests (root only, loopback only).
//!
//! Layout: everything under one temp dir (config, queue, data, Maildirs, log). Two SMTP
//! listeners on 127.0.0.1:
//! - `filter_port`: smtpd with the milter (the `smtpd_milters` line of docs/postfix.md's
//!   tested block, pointed at the wasmail socket); mail for example.com is delivered by
//!   Postfix's `virtual` agent into Maildirs under `<dir>/mail/example.com/<user>/`.
//! - `queue_port`: smtpd without a milter whose mail goes through the queue to the filter
//!   port (`content_filter = smtp:[127.0.0.1]:filter_port`), so a 4xx from the milter leaves
//!   the message in this instance's deferred queue, to be retried on flush — the situation a
//!   real sending MTA is in.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The main.cf block marked `<!-- tested: NAME -->` in docs/postfix.md.
pub fn docs_block(name: &str) -> String {
    docs_block_in("docs/postfix.md", name)
}

/// The main.cf block marked `<!-- tested: NAME -->` in `doc` (a path from the repository
/// root, e.g. `docs/lmtp.md`).
pub fn docs_block_in(doc: &str, name: &str) -> String {
    super::docs_fenced(doc, name, "main.cf")
}

/// A loopback TCP port nobody listens on, for a server a test is about to start.
///
/// Ports come from a per-process counter in 20000-31999, below the kernel's ephemeral
/// range (32768+), and each is checked by binding it. Asking the kernel for port 0
/// instead (as this did before) could hand two tests running in parallel the same port
/// (it is free again once the probe closes), and took ports from the range the kernel
/// also gives to outgoing connections. A suspected cause of a Postfix test whose swaks
/// got no greeting under full-suite load.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread test processes (the test binary and e.g. a bench) over the range.
    let _ = NEXT.compare_exchange(
        0,
        1 + (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// A running private Postfix; stopped on drop.
pub struct Postfix {
    /// Temp dir holding everything.
    pub dir: tempfile::TempDir,
    /// Config directory (`postfix -c`).
    pub etc: PathBuf,
    /// Queue directory.
    pub spool: PathBuf,
    /// smtpd with the milter.
    pub filter_port: u16,
    /// smtpd without milter, queueing to the filter port.
    pub queue_port: u16,
}

fn run(cmd: &mut Command) -> String {
    let out = super::output_within(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Postfix {
    /// Starts Postfix with the docs' milter block, `smtpd_milters` pointing at `milter`
    /// (e.g. `unix:/tmp/x/milter.sock`), plus `extra` main.cf lines. Mailboxes:
    /// bob, carol, dave @example.com and erin@example.net.
    pub fn start(milter: &str, extra: &str) -> Postfix {
        Self::start_with(milter, extra, &[])
    }

    /// Like [`Postfix::start`], with `-o name=value` overrides for the `virtual` delivery
    /// agent in master.cf (virtual(8) refuses socketmap/tcp maps for its own
    /// `virtual_mailbox_maps`, so lookup tests keep the file map there).
    pub fn start_with(milter: &str, extra: &str, virtual_overrides: &[&str]) -> Postfix {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        chmod(&root, 0o755);
        let etc = root.join("etc");
        let spool = root.join("spool");
        let data = root.join("data");
        let mail = root.join("mail");
        for d in [&etc, &spool, &data, &mail] {
            std::fs::create_dir_all(d).unwrap();
        }
        run(Command::new("chown").args(["postfix"]).arg(&data));
        run(Command::new("chown").args(["nobody:nogroup"]).arg(&mail));
        let (filter_port, queue_port) = (free_port(), free_port());
        let dist = std::fs::read_to_string("/usr/share/postfix/master.cf.dist").unwrap();
        let mut master = String::new();
        for line in dist.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if line.starts_with(|c: char| c.is_ascii_lowercase()) && fields.len() >= 8 {
                if fields[0] == "smtp" && fields[1] == "inet" {
                    continue;
                }
                // Unchrooted (column 5 = n), so socket paths are the same for everyone.
                let mut f = fields.clone();
                f[4] = "n";
                master.push_str(&f.join(" "));
                master.push('\n');
                if fields[0] == "virtual" && fields[1] == "unix" {
                    for o in virtual_overrides {
                        master.push_str(&format!("  -o {o}\n"));
                    }
                }
            } else {
                master.push_str(line);
                master.push('\n');
            }
        }
        master.push_str(&format!(
            "127.0.0.1:{filter_port} inet n - n - - smtpd\n  -o content_filter=\n  -o myhostname=filter.wasmail.test\n\
             127.0.0.1:{queue_port} inet n - n - - smtpd\n  -o smtpd_milters=\n  -o smtpd_recipient_restrictions=permit_mynetworks,reject\n  -o content_filter=smtp:[127.0.0.1]:{filter_port}\n"
        ));
        std::fs::write(etc.join("master.cf"), master).unwrap();
        let docs = docs_block("milter").replace("unix:/run/wasmail/milter.sock", milter);
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {spool}\n\
             data_directory = {data}\n\
             command_directory = /usr/sbin\n\
             daemon_directory = /usr/lib/postfix/sbin\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = mx.wasmail.test\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             mydestination =\n\
             local_transport = error:5.1.1 no local delivery\n\
             alias_maps =\n\
             local_recipient_maps =\n\
             virtual_mailbox_domains = example.com, example.net\n\
             virtual_mailbox_maps = texthash:{etc}/vmailbox\n\
             virtual_mailbox_base = {mail}\n\
             virtual_uid_maps = static:65534\n\
             virtual_gid_maps = static:65534\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             smtp_dns_support_level = disabled\n\
             maillog_file = {root}/postfix.log\n\
             maillog_file_prefixes = /var, {root}\n\
             smtputf8_enable = no\n\
             minimal_backoff_time = 300s\n\
             maximal_backoff_time = 600s\n\
             queue_run_delay = 300s\n\
             default_process_limit = 50\n\
             {docs}\n{extra}\n",
            spool = spool.display(),
            data = data.display(),
            etc = etc.display(),
            mail = mail.display(),
            root = root.display(),
        );
        std::fs::write(etc.join("main.cf"), last_entries_win(&main_cf)).unwrap();
        raise_dgram_queue();
        std::fs::write(
            etc.join("vmailbox"),
            "bob@example.com example.com/bob/\ncarol@example.com example.com/carol/\n\
             dave@example.com example.com/dave/\nerin@example.net example.net/erin/\n",
        )
        .unwrap();
        run(Command::new("postfix").arg("-c").arg(&etc).arg("start"));
        let pf = Postfix {
            dir,
            etc,
            spool,
            filter_port,
            queue_port,
        };
        pf.wait_listening(filter_port);
        pf.wait_listening(queue_port);
        pf
    }

    fn wait_listening(&self, port: u16) {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "postfix did not listen on {port}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Postfix's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }

    /// Sends one message with swaks to `port`; returns (exit status, transcript).
    pub fn swaks(&self, port: u16, from: &str, to: &[&str], extra: &[&str]) -> (i32, String) {
        let mut cmd = Command::new("swaks");
        cmd.args(["--server", "127.0.0.1", "--port", &port.to_string()])
            .args(["--from", from, "--to", &to.join(",")])
            .args(["--helo", "client.wasmail.test", "--timeout", "60"])
            .args(extra);
        // swaks's own --timeout is per SMTP step; this bounds the whole conversation.
        let out = super::output_within(&mut cmd, Duration::from_secs(180));
        let mut text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.contains("<** Timeout") {
            // Postfix took a connection and never answered: what its master and the
            // daemons logged says why (a throttled service, a daemon stuck at start-up).
            let ps = Command::new("ps")
                .args(["-eo", "pid,ppid,etimes,stat,wchan:20,args"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let postfix_ps: String = ps
                .lines()
                .filter(|l| l.contains("postfix") || l.contains("PID"))
                .map(|l| format!("{l}\n"))
                .collect();
            text.push_str(&format!(
                "\n--- Postfix log ---\n{}\n--- Postfix processes ---\n{postfix_ps}",
                self.log()
            ));
        }
        (out.status.code().unwrap_or(-1), text)
    }

    /// Sends a message from alice@example.org to `to` through the milter-filtered smtpd
    /// (`filter_port`, swaks `extra` arguments) and panics with the transcript unless the SMTP
    /// client saw it accepted. Returns the transcript.
    pub fn send_accepted(&self, to: &[&str], extra: &[&str]) -> String {
        let (code, out) = self.swaks(self.filter_port, "alice@example.org", to, extra);
        assert_eq!(code, 0, "the message should have been accepted:\n{out}");
        out
    }

    /// Like [`Postfix::send_accepted`], expecting a refusal whose transcript contains
    /// `reply`. Checks that nothing reached any recipient in `to` and nothing was left in
    /// Postfix's queue (the refusal is the client's to handle). Returns the transcript.
    pub fn send_refused(&self, to: &[&str], extra: &[&str], reply: &str) -> String {
        let (code, out) = self.swaks(self.filter_port, "alice@example.org", to, extra);
        assert_ne!(code, 0, "the message should have been refused:\n{out}");
        assert!(out.contains(reply), "expected {reply:?} in:\n{out}");
        // A delivery that wrongly went ahead would land within this wait.
        std::thread::sleep(Duration::from_millis(500));
        for rcpt in to {
            assert!(
                self.delivered(rcpt).is_empty(),
                "{rcpt} got a refused message"
            );
        }
        for queue in ["incoming", "active", "deferred", "hold"] {
            assert_eq!(
                self.queue_count(queue),
                0,
                "refused, yet in the {queue} queue"
            );
        }
        out
    }

    /// Messages delivered to `user` (`bob` = bob@example.com, or a full address in
    /// example.com / example.net), as text, in delivery order.
    pub fn delivered(&self, user: &str) -> Vec<String> {
        let (local, domain) = user.split_once('@').unwrap_or((user, "example.com"));
        let new = self
            .dir
            .path()
            .join("mail")
            .join(domain)
            .join(local)
            .join("new");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&new)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect()
    }

    /// Waits until `user` has at least `n` messages; panics with the log after `timeout`.
    pub fn wait_delivered(&self, user: &str, n: usize, timeout: Duration) -> Vec<String> {
        let start = Instant::now();
        loop {
            let got = self.delivered(user);
            if got.len() >= n {
                return got;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{user}: {} of {n} messages delivered after {timeout:?}\n{}",
                    got.len(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Files in a queue (`hold`, `deferred`, `active`, `incoming`).
    pub fn queue_count(&self, queue: &str) -> usize {
        fn walk(p: &Path) -> usize {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| {
                            let p = e.path();
                            if p.is_dir() { walk(&p) } else { 1 }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.spool.join(queue))
    }

    /// Waits until `queue` holds `n` messages.
    pub fn wait_queue(&self, queue: &str, n: usize, timeout: Duration) {
        let start = Instant::now();
        while self.queue_count(queue) != n {
            assert!(
                start.elapsed() < timeout,
                "{queue} queue has {} messages, expected {n}\n{}",
                self.queue_count(queue),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `postfix reload`: fresh daemon processes with the current configuration.
    pub fn reload(&self) {
        run(Command::new("postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("reload"));
        std::thread::sleep(Duration::from_millis(500));
        self.wait_listening(self.filter_port);
    }

    /// `postqueue -f`: retry deferred mail now.
    pub fn flush(&self) {
        run(Command::new("postqueue").arg("-c").arg(&self.etc).arg("-f"));
    }
}

/// main.cf text with each parameter defined once, at its last definition (the one Postfix
/// uses). Postfix warns "overriding earlier entry" for every repeated parameter, in every
/// program at start-up: postlogd included, before it reads its own socket. Those warnings
/// could fill the postlog socket's queue and wedge the whole instance (see
/// [`raise_dgram_queue`]); the harness's `extra` lines override base lines on purpose.
pub fn last_entries_win(main_cf: &str) -> String {
    // Entries: a `name = value` line plus its indented continuation lines.
    let mut entries: Vec<(Option<String>, String)> = Vec::new();
    for line in main_cf.lines() {
        let continuation = line.starts_with([' ', '\t']) && !line.trim().is_empty();
        match entries.last_mut() {
            Some((Some(_), text)) if continuation => {
                text.push('\n');
                text.push_str(line);
            }
            _ => {
                let name = line
                    .split_once('=')
                    .map(|(n, _)| n.trim())
                    .filter(|n| {
                        !line.trim_start().starts_with('#')
                            && !n.is_empty()
                            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    })
                    .map(str::to_string);
                entries.push((name, line.to_string()));
            }
        }
    }
    let mut out = String::new();
    for (i, (name, text)) in entries.iter().enumerate() {
        let overridden = name
            .as_ref()
            .is_some_and(|n| entries[i + 1..].iter().any(|(m, _)| m.as_ref() == Some(n)));
        if !overridden {
            out.push_str(text);
            out.push('\n');
        }
    }
    out
}

/// Makes sure the kernel's unix datagram queue is at least 512 deep (what systemd-sysctl
/// sets on a standard Debian host; a container without it keeps the kernel default of 10).
/// Postfix's daemons log through postlogd's datagram socket, and postlogd logs its own
/// start-up messages to that same socket: with a queue of 10, a burst of start-up lines
/// under load blocked postlogd on itself and every daemon behind it, so smtpd never sent
/// its greeting. Needs root, as the Postfix tests do; `scripts/setup.sh` sets it too.
fn raise_dgram_queue() {
    let path = "/proc/sys/net/unix/max_dgram_qlen";
    let now: u32 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if now < 512 && std::fs::write(path, "512\n").is_err() {
        eprintln!("postfix harness: could not raise {path} from {now} to 512");
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // Never panics (this may run while a test is already failing).
        if let Ok(mut child) = Command::new("postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("stop")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Give master a moment to take its children down before the dir goes away.
        std::thread::sleep(Duration::from_millis(300));
        if std::env::var_os("WASMAIL_KEEP_POSTFIX").is_some() {
            let kept = self.dir.path().to_path_buf();
            eprintln!("kept postfix dir {}", kept.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap(),
            ));
        }
    }
}

#[test]
fn main_cf_keeps_the_last_definition_of_each_parameter() {
    let text = "a = 1\nb = x,\n  y\n# c = comment\nmilter_protocol = 6\nb = z\nc=3\n\na = 2\n";
    assert_eq!(
        last_entries_win(text),
        "# c = comment\nmilter_protocol = 6\nb = z\nc=3\n\na = 2\n"
    );
}
