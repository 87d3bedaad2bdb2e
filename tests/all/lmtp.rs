//! Integration tests: the LMTP front of `wasmail serve` (`[lmtp]`, docs/lmtp.md).
//!
//! Without root: the protocol over the front's unix socket with no worker manager
//! (registry refusals, `delivery` hook refusals and tempfails, hosted recipients deferred
//! because there is no worker, pipelining, limits). As root with Dovecot (loud `SKIPPED:`
//! otherwise): the front in front of real Dovecot workers, first spoken to directly
//! (per-recipient replies, the worker's own refusals, BDAT), then end to end with a
//! private Postfix and swaks: two domains delivered into their Maildirs by workers the
//! first session started and the idle timeout reaped, a hook refusal reaching the sender,
//! and a domain whose worker cannot start deferred alone and delivered after the fix.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmail::registry::password::hash_password;
use wasmail::registry::sqlite::SqliteRegistry;
use wasmail::registry::{Domain, Mailbox, Registry};

use crate::fastcontainer_dovecot::dovecot_worker;
use crate::support::postfix::{Postfix, docs_block_in};
use crate::support::{Serve, plugins_dir, require_program, require_root};

/// Registry with example.com (bob, carol, denied) and example.net (erin), passwords
/// `pw-NAME` (the worker's passdb lists only mailboxes with a password).
fn fill_registry(path: &Path) {
    let r = SqliteRegistry::open(path).unwrap();
    for d in ["example.com", "example.net"] {
        r.add_domain(&Domain {
            name: d.into(),
            ..Domain::default()
        })
        .unwrap();
    }
    for a in [
        "bob@example.com",
        "carol@example.com",
        "denied@example.com",
        "erin@example.net",
    ] {
        let local = a.split('@').next().unwrap();
        r.add_mailbox(&Mailbox {
            address: a.into(),
            password_hash: Some(hash_password(&format!("pw-{local}")).unwrap()),
            ..Mailbox::default()
        })
        .unwrap();
    }
}

/// The `[registry]`, plugins and `[lmtp]` part every test uses: the `gate` plugin denies
/// denied@example.com with a text of its own and traps on trap@example.com.
fn base_config() -> String {
    format!(
        r#"
[server]
shutdown_grace = "5s"

[registry]
path = "{{dir}}/registry.db"
refresh = "100ms"

[plugins]
dir = "{plugins}"
watch = false

[plugin.gate]
file = "delivery-rules.wasm"
grants = ["config", "log"]
on_error = "tempfail"
[plugin.gate.settings]
rules = ["denied@example.com=deny:denied@example.com does not take mail here (gate)", "trap@example.com=trap"]

[lookup]
socketmap = "unix:{{dir}}/sm.sock"

[lmtp]
listen = "unix:{{dir}}/lmtp.sock"
hostname = "lmtp.wasmail.test"
hooks = ["gate"]
max_message_size = "1MiB"
"#,
        plugins = plugins_dir().display()
    )
}

/// `[fastcontainer]` with the shipped Dovecot worker template; workers reaped after
/// `idle` without sessions.
fn fastcontainer_config(idle: &str) -> String {
    dovecot_fastcontainer_section("{dir}/mail", "wasmail-lmtp-test", idle)
}

/// `[fastcontainer]` running the shipped Dovecot worker template, with storage under
/// `storage_root` (`{dir}` = the serve's temp dir), cgroups under `cgroup_root`, and
/// workers reaped after `idle` without sessions.
pub(crate) fn dovecot_fastcontainer_section(
    storage_root: &str,
    cgroup_root: &str,
    idle: &str,
) -> String {
    format!(
        r#"
[fastcontainer]
run_root = "{{dir}}/run"
storage_root = "{storage_root}"
cgroup_root = "{cgroup_root}"
idle = "fixed"
idle_timeout = "{idle}"
start_timeout = "10s"
stop_grace = "2s"
backoff_base = "100ms"
backoff_max = "1s"
system_mounts = ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"]
[fastcontainer.limits]
memory = "256MiB"
pids = 128
[fastcontainer.worker]
{worker}
"#,
        worker = dovecot_worker()
    )
}

/// Starts `wasmail serve` with `config` in a fresh temp dir holding the registry; the
/// dir is world-traversable so Postfix's lmtp client (user `postfix`) reaches the socket.
fn start(config: &str) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    fill_registry(&dir.path().join("registry.db"));
    Serve::start_in(dir, config)
}

/// A line-oriented LMTP client.
struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut c = Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let greeting = c.reply();
        assert!(greeting.starts_with("220 lmtp.wasmail.test "), "{greeting}");
        c
    }

    fn send(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).unwrap();
    }

    /// One whole reply (continuation lines included).
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            self.r.read_line(&mut l).unwrap();
            assert!(!l.is_empty(), "connection closed; so far: {all:?}");
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    /// Sends `cmd` and returns its reply.
    fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.reply()
    }

    /// Reads until EOF.
    fn rest(mut self) -> String {
        let mut s = String::new();
        let _ = self.r.read_to_string(&mut s);
        s
    }
}

/// Messages in `user@domain`'s Maildir (new and cur) under the serve dir's storage.
pub(crate) fn maildir(serve: &Serve, address: &str) -> Vec<String> {
    let (local, domain) = address.split_once('@').unwrap();
    let md = serve
        .dir
        .path()
        .join("mail")
        .join(domain)
        .join(local)
        .join("Maildir");
    read_maildir(&md)
}

/// The messages (new and cur) in the Maildir `md`, sorted by file name.
pub(crate) fn read_maildir(md: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = ["new", "cur"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(md.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

/// Run directories of running workers (`<domain>@<n>`).
fn running_workers(serve: &Serve) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(serve.dir.path().join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub(crate) fn wait_until(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < within,
            "{what} not within {within:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `lmtp: delivery` log lines for `recipient`.
fn delivery_lines(log: &str, recipient: &str) -> Vec<String> {
    let needle = format!("recipient=\"{recipient}\"");
    log.lines()
        .filter(|l| l.contains("lmtp: delivery ") && l.contains(&needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn lmtp_protocol_without_workers_refuses_and_defers_per_recipient() {
    let serve = start(&base_config());
    let sock = serve.dir.path().join("lmtp.sock");
    let mut c = Client::connect(&sock);
    let lhlo = c.ask("LHLO mx.test\r\n");
    for ext in [
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "CHUNKING",
        "SIZE 1048576",
    ] {
        assert!(
            lhlo.contains(&format!("250-{ext}\r\n")) || lhlo.contains(&format!("250 {ext}\r\n")),
            "{lhlo}"
        );
    }
    assert!(
        c.ask("MAIL FROM:<a@remote.test> SIZE=2000000\r\n")
            .starts_with("552 5.3.4")
    );

    // One pipelined group: every RCPT answered in order, DATA refused (nothing accepted).
    c.send(
        "MAIL FROM:<a@remote.test> BODY=8BITMIME\r\nRCPT TO:<x@unhosted.test>\r\n\
         RCPT TO:<Denied@Example.com>\r\nRCPT TO:<trap@example.com>\r\nRCPT TO:<bob@example.com>\r\n\
         RCPT TO:<carol@example.com>\r\nDATA\r\n",
    );
    let replies: Vec<String> = (0..7).map(|_| c.reply()).collect();
    assert!(replies[0].starts_with("250 2.1.0"), "{replies:?}");
    assert_eq!(
        replies[1],
        "550 5.1.2 <x@unhosted.test>: Recipient domain unhosted.test is not hosted here\r\n"
    );
    // The plugin compares in lower case and its text reaches the client.
    assert_eq!(
        replies[2],
        "550 5.7.1 denied@example.com does not take mail here (gate)\r\n"
    );
    assert!(
        replies[3].starts_with("451 4.3.0 <trap@example.com>: Temporary failure"),
        "{replies:?}"
    );
    for r in &replies[4..6] {
        assert!(
            r.starts_with(
                "451 4.3.0 Mailbox worker for example.com unavailable (no workers configured)"
            ),
            "{replies:?}"
        );
    }
    assert!(
        replies[6].starts_with("503 5.5.1 No valid recipients"),
        "{replies:?}"
    );
    assert!(c.ask("RSET\r\n").starts_with("250 2.0.0"));
    assert!(c.ask("HELO x\r\n").starts_with("500 5.5.1"));
    assert!(c.ask("QUIT\r\n").starts_with("221 2.0.0"));
    assert_eq!(c.rest(), "", "closed after QUIT");

    let log = serve.log_text();
    let lines = delivery_lines(&log, "Denied@Example.com");
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("status=\"rejected\"") && lines[0].contains("stage=\"rcpt\""),
        "{}",
        lines[0]
    );
    let lines = delivery_lines(&log, "carol@example.com");
    assert!(lines[0].contains("status=\"deferred\""), "{}", lines[0]);
    assert!(
        lines[0].contains("deferred=3") && lines[0].contains("rejected=2"),
        "{}",
        lines[0]
    );
    assert!(
        log.contains("delivery-rules: denied@example.com from a@remote.test over lmtp: deny"),
        "{log}"
    );
}

#[test]
fn lmtp_front_relays_dovecot_worker_replies_per_recipient() {
    let name = "lmtp::lmtp_front_relays_dovecot_worker_replies_per_recipient";
    if !require_root(name) || !require_program(name, "/usr/sbin/dovecot") {
        return;
    }
    let serve = start(&format!("{}{}", base_config(), fastcontainer_config("10m")));
    let sock = serve.dir.path().join("lmtp.sock");
    let mut c = Client::connect(&sock);
    c.ask("LHLO mx.test\r\n");
    c.send(
        "MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<nobody@example.com>\r\n\
         RCPT TO:<erin@example.net>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n",
    );
    let replies: Vec<String> = (0..6).map(|_| c.reply()).collect();
    assert!(
        replies[1].starts_with("250 2.1.5 <bob@example.com>"),
        "{replies:?}"
    );
    // The worker's passdb does not know nobody@: its own refusal is relayed.
    assert!(replies[2].starts_with("550 5.1.1"), "{replies:?}");
    assert!(
        replies[3].starts_with("250 2.1.5 <erin@example.net>"),
        "{replies:?}"
    );
    assert!(
        replies[4].starts_with("250 2.1.5 <carol@example.com>"),
        "{replies:?}"
    );
    assert!(replies[5].starts_with("354"), "{replies:?}");
    // Stuffed by the client: the message has the lines ".dot line" and ".".
    c.send("Subject: to two workers\r\n\r\n..dot line\r\n..\r\n.\r\n");
    let after: Vec<String> = (0..3).map(|_| c.reply()).collect();
    for (r, who) in after
        .iter()
        .zip(["bob@example.com", "erin@example.net", "carol@example.com"])
    {
        assert!(r.starts_with("250 2.0.0") && r.contains(who), "{after:?}");
    }
    for who in ["bob@example.com", "erin@example.net", "carol@example.com"] {
        let got = maildir(&serve, who);
        assert_eq!(got.len(), 1, "{who}");
        assert!(got[0].contains("Subject: to two workers"), "{}", got[0]);
        assert!(
            got[0].contains("\n.dot line\n") || got[0].contains("\r\n.dot line\r\n"),
            "{}",
            got[0]
        );
        assert!(
            got[0].contains("\n.\n") || got[0].contains("\r\n.\r\n"),
            "unstuffed: {}",
            got[0]
        );
    }
    assert_eq!(running_workers(&serve).len(), 2, "one worker per domain");

    // BDAT (CHUNKING) in two chunks, to one domain: relayed to the worker with DATA.
    c.ask("MAIL FROM:<> BODY=8BITMIME\r\n");
    let r = c.ask("RCPT TO:<erin@example.net>\r\n");
    assert!(r.starts_with("250"), "{r}\n{}", serve.log_text());
    let body = "Subject: chunked\r\n\r\n8bit \u{e9} body\r\n.\r\n";
    let (a, b) = body.split_at(10);
    c.send(&format!("BDAT {}\r\n{a}", a.len()));
    assert!(c.reply().starts_with("250 2.0.0 10 octets"));
    c.send(&format!("BDAT {} LAST\r\n{b}", b.len()));
    let r = c.reply();
    assert!(
        r.starts_with("250 2.0.0") && r.contains("erin@example.net"),
        "{r}"
    );
    let got = maildir(&serve, "erin@example.net");
    assert_eq!(got.len(), 2);
    assert!(
        got.iter().any(|m| m.contains("8bit \u{e9} body")),
        "{got:?}"
    );
    c.ask("QUIT\r\n");

    let log = serve.log_text();
    assert_eq!(delivery_lines(&log, "erin@example.net").len(), 2, "{log}");
    assert!(log.contains("status=\"delivered\""), "{log}");
}

/// Postfix with the docs' tested block, pointed at this serve's sockets; `lmtp`
/// unchrooted (the harness unchroots every service).
fn postfix_for(serve: &Serve) -> Postfix {
    let block = docs_block_in("docs/lmtp.md", "lmtp")
        .replace(
            "unix:/run/wasmail/socketmap.sock",
            &format!("unix:{}", serve.dir.path().join("sm.sock").display()),
        )
        .replace(
            "unix:/run/wasmail/lmtp.sock",
            &format!("unix:{}", serve.dir.path().join("lmtp.sock").display()),
        );
    Postfix::start_with("", &block, &[])
}

fn postfix_ready(name: &str) -> bool {
    require_root(name)
        && require_program(name, "/usr/sbin/dovecot")
        && require_program(name, "postfix")
        && require_program(name, "swaks")
}

/// The Postfix log line for `to=<recipient>` with a final status (sent/bounced/deferred).
fn postfix_status(pf: &Postfix, recipient: &str, status: &str) -> Option<String> {
    let to = format!("to=<{recipient}>");
    pf.log()
        .lines()
        .find(|l| l.contains(&to) && l.contains(&format!("status={status}")))
        .map(str::to_string)
}

#[test]
fn postfix_delivers_two_domains_through_the_lmtp_front_to_dovecot_workers() {
    let name = "lmtp::postfix_delivers_two_domains_through_the_lmtp_front_to_dovecot_workers";
    if !postfix_ready(name) {
        return;
    }
    let serve = start(&format!("{}{}", base_config(), fastcontainer_config("3s")));
    assert!(
        running_workers(&serve).is_empty(),
        "no worker before the first session"
    );
    let pf = postfix_for(&serve);

    let (code, text) = pf.swaks(
        pf.filter_port,
        "sender@remote.test",
        &["bob@example.com", "erin@example.net", "denied@example.com"],
        &["--header", "Subject: lmtp front e2e"],
    );
    assert_eq!(code, 0, "{text}");
    let t = Duration::from_secs(60);
    wait_until(
        "delivery to bob, erin and the bounce for denied@",
        t,
        || {
            // Postfix logs after the worker's reply, i.e. after the Maildir file exists.
            postfix_status(&pf, "bob@example.com", "sent").is_some()
                && postfix_status(&pf, "erin@example.net", "sent").is_some()
                && postfix_status(&pf, "denied@example.com", "bounced").is_some()
        },
        || format!("{}\n{}", pf.log(), serve.log_text()),
    );
    for who in ["bob@example.com", "erin@example.net"] {
        let m = &maildir(&serve, who)[0];
        assert!(m.contains("Subject: lmtp front e2e"), "{m}");
        let line = postfix_status(&pf, who, "sent").unwrap();
        assert!(
            line.contains("relay=") && line.contains("lmtp.sock"),
            "{line}"
        );
        assert!(line.contains("250 2.0.0"), "{line}");
    }
    // The plugin's text is what Postfix reports (and puts in the bounce).
    let bounced = postfix_status(&pf, "denied@example.com", "bounced").unwrap();
    assert!(
        bounced.contains("550 5.7.1 denied@example.com does not take mail here (gate)"),
        "{bounced}"
    );
    assert!(maildir(&serve, "denied@example.com").is_empty());

    // The workers were started by that session, and reaped after the idle timeout.
    let log = serve.log_text();
    assert_eq!(
        log.matches("fastcontainer: worker ready").count(),
        2,
        "one start per domain:\n{log}"
    );
    assert!(
        delivery_lines(&log, "bob@example.com")[0].contains("status=\"delivered\""),
        "{log}"
    );
    wait_until(
        "both workers reaped",
        Duration::from_secs(30),
        || running_workers(&serve).is_empty(),
        || serve.log_text(),
    );
    // Mail stays; a new message starts a new worker.
    let (code, text) = pf.swaks(
        pf.filter_port,
        "sender@remote.test",
        &["carol@example.com"],
        &[],
    );
    assert_eq!(code, 0, "{text}");
    wait_until(
        "delivery to carol",
        t,
        || maildir(&serve, "carol@example.com").len() == 1,
        || format!("{}\n{}", pf.log(), serve.log_text()),
    );
    assert_eq!(maildir(&serve, "bob@example.com").len(), 1);
    assert_eq!(
        serve
            .log_text()
            .matches("fastcontainer: worker ready")
            .count(),
        3
    );
}

#[test]
fn worker_that_cannot_start_defers_only_its_domain_and_nothing_is_lost() {
    let name = "lmtp::worker_that_cannot_start_defers_only_its_domain_and_nothing_is_lost";
    if !postfix_ready(name) {
        return;
    }
    let serve = start(&format!("{}{}", base_config(), fastcontainer_config("10m")));
    // An operator mistake in example.net's registry settings: its worker cannot start.
    let registry = SqliteRegistry::open(&serve.dir.path().join("registry.db")).unwrap();
    let set_memory = |value: &str| {
        let mut d = registry
            .snapshot()
            .unwrap()
            .domain("example.net")
            .unwrap()
            .clone();
        d.settings.insert("worker.memory".into(), value.into());
        registry.update_domain(&d).unwrap();
    };
    set_memory("lots");
    std::thread::sleep(Duration::from_millis(500)); // [registry] refresh is 100ms
    let pf = postfix_for(&serve);

    let (code, text) = pf.swaks(
        pf.filter_port,
        "sender@remote.test",
        &["bob@example.com", "erin@example.net"],
        &["--header", "Subject: partly deferred"],
    );
    assert_eq!(code, 0, "{text}\n{}\n{}", pf.log(), serve.log_text());
    let t = Duration::from_secs(60);
    wait_until(
        "bob delivered, erin deferred",
        t,
        || {
            maildir(&serve, "bob@example.com").len() == 1
                && postfix_status(&pf, "erin@example.net", "deferred").is_some()
        },
        || format!("{}\n{}", pf.log(), serve.log_text()),
    );
    let deferred = postfix_status(&pf, "erin@example.net", "deferred").unwrap();
    assert!(
        deferred.contains("451 4.3.0 Mailbox worker for example.net unavailable"),
        "{deferred}"
    );
    assert!(postfix_status(&pf, "erin@example.net", "bounced").is_none());
    pf.wait_queue("deferred", 1, t);
    let log = serve.log_text();
    assert!(
        delivery_lines(&log, "erin@example.net")[0].contains("status=\"deferred\""),
        "{log}"
    );
    assert!(log.contains("lmtp: worker could not be started"), "{log}");

    // Fixed in the registry: a flush delivers the deferred message, once.
    set_memory("256MiB");
    std::thread::sleep(Duration::from_millis(500));
    pf.flush();
    wait_until(
        "erin delivered after the fix",
        t,
        || postfix_status(&pf, "erin@example.net", "sent").is_some(),
        || format!("{}\n{}", pf.log(), serve.log_text()),
    );
    let got = maildir(&serve, "erin@example.net");
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("Subject: partly deferred"), "{}", got[0]);
    pf.wait_queue("deferred", 0, t);
    assert_eq!(
        maildir(&serve, "bob@example.com").len(),
        1,
        "bob got it once"
    );
    let log = serve.log_text();
    let lines = delivery_lines(&log, "erin@example.net");
    assert!(
        lines.last().unwrap().contains("status=\"delivered\""),
        "{log}"
    );
}
