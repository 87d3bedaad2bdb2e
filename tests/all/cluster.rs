//! Many hosts: the etcd harness, the etcd registry backend, placement and routing
//! (issue 8). Each test starts its own private etcd on loopback.
//!
//! The placement tests run three real `wasmail serve` hosts on 127.0.0.2, .3 and .4 (one
//! process each, its own run directory and cgroup root) with real Dovecot workers, one
//! registry file and one mail storage directory shared by all three (shared storage is
//! what lets a domain move between hosts without losing mail). Root, etcd and Dovecot
//! only; loud `SKIPPED:` otherwise.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use wasmail::registry::etcd::{EtcdOptions, EtcdRegistry};
use wasmail::registry::password::hash_password;
use wasmail::registry::{Domain, Mailbox, Registry};

use crate::support::etcd::Etcd;
use crate::support::postfix::free_port;
use crate::support::{Serve, require_program, require_root};

/// The harness itself: a private etcd starts, answers a put/get through `etcd-client`, and
/// is gone after drop.
#[test]
fn private_etcd_starts_and_answers() {
    let Some(bin) = Etcd::binary("cluster::private_etcd_starts_and_answers") else {
        return;
    };
    let etcd = Etcd::start(&bin);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let value = rt.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .expect("connect to the private etcd");
        client.put("/wasmail-test/k", "v1", None).await.unwrap();
        let got = client.get("/wasmail-test/k", None).await.unwrap();
        got.kvs()[0].value_str().unwrap().to_string()
    });
    assert_eq!(value, "v1");
    let port = etcd.port;
    drop(etcd);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "etcd still listening on {port} after drop"
    );
}

/// Host names and their loopback addresses.
const HOSTS: [(&str, &str); 3] = [("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")];
/// Domains in the shared registry; each has a mailbox `bob@` with password `pw-bob`.
const DOMAINS: [&str; 12] = [
    "one.test",
    "two.test",
    "three.test",
    "four.test",
    "five.test",
    "six.test",
    "seven.test",
    "eight.test",
    "nine.test",
    "ten.test",
    "eleven.test",
    "twelve.test",
];
/// Lease TTL of the test hosts.
const TTL: Duration = Duration::from_secs(3);

/// Everything shared by the hosts of one test: etcd, the registry and the mail storage.
struct Cluster {
    etcd: Etcd,
    shared: tempfile::TempDir,
    hosts: Vec<Host>,
}

/// One running host.
struct Host {
    name: &'static str,
    ip: &'static str,
    lmtp: u16,
    imap: u16,
    pop3: u16,
    serve: Option<Serve>,
    cgroup_root: String,
}

/// The shared registry, in the test's etcd (`[registry] backend = "etcd"` on every host).
fn fill_registry(endpoint: &str) {
    let r = EtcdRegistry::open(&EtcdOptions {
        endpoints: vec![endpoint.to_string()],
        prefix: "/wasmail".into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
    })
    .unwrap();
    for d in DOMAINS {
        r.add_domain(&Domain {
            name: d.into(),
            ..Domain::default()
        })
        .unwrap();
        r.add_mailbox(&Mailbox {
            address: format!("bob@{d}"),
            password_hash: Some(hash_password("pw-bob").unwrap()),
            ..Mailbox::default()
        })
        .unwrap();
    }
}

fn host_config(
    name: &str,
    ip: &str,
    (lmtp, imap, pop3, relay): (u16, u16, u16, u16),
    shared: &Path,
    etcd: &str,
    idle: &str,
    tls: bool,
) -> String {
    let tls = if tls {
        format!(
            "[cluster.tls]\nca = \"{shared}/tls/ca.pem\"\ncert = \"{shared}/tls/{name}.pem\"\n\
             key = \"{shared}/tls/{name}.key\"\n",
            shared = shared.display()
        )
    } else {
        String::new()
    };
    format!(
        r#"
[server]
shutdown_grace = "5s"

[registry]
backend = "etcd"
endpoints = ["{etcd}"]
refresh = "10s"

[lookup]
socketmap = "unix:{{dir}}/sm.sock"

[lmtp]
listen = "inet:{ip}:{lmtp}"
hostname = "lmtp.{name}.test"
worker_timeout = "20s"

[proxy]
imap = "inet:{ip}:{imap}"
pop3 = "inet:{ip}:{pop3}"
auth_failure_delay = "100ms"

[admin]
listen = "unix:{{dir}}/admin.sock"

{fastcontainer}
[cluster]
host = "{name}"
relay = "{ip}:{relay}"
lmtp = "{ip}:{lmtp}"
etcd = ["{etcd}"]
lease_ttl = "{ttl}s"
etcd_timeout = "1s"
relay_timeout = "20s"
release_grace = "1s"
{tls}
"#,
        fastcontainer = crate::lmtp::dovecot_fastcontainer_section(
            &format!("{}/mail", shared.display()),
            &format!("wasmail-cluster-{name}"),
            idle,
        ),
        ttl = TTL.as_secs(),
    )
}

impl Cluster {
    /// etcd, the shared registry and storage, and the three hosts (idle timeout `idle`).
    fn start(test: &str, idle: &str) -> Option<Cluster> {
        Cluster::start_with(test, idle, false)
    }

    /// Like [`Cluster::start`]; with `tls`, the relay runs mutual TLS with certificates
    /// from a test CA (made with the `openssl` command).
    fn start_with(test: &str, idle: &str, tls: bool) -> Option<Cluster> {
        if !require_root(test) || !require_program(test, "dovecot") {
            return None;
        }
        let bin = Etcd::binary(test)?;
        let etcd = Etcd::start(&bin);
        let shared = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(shared.path().join("mail")).unwrap();
        fill_registry(&etcd.endpoint);
        if tls {
            if !require_program(test, "openssl") {
                return None;
            }
            make_cluster_ca(&shared.path().join("tls"));
        }
        let mut c = Cluster {
            etcd,
            shared,
            hosts: Vec::new(),
        };
        for (name, ip) in HOSTS {
            let (lmtp, imap, pop3, relay) = (free_port(), free_port(), free_port(), free_port());
            let config = host_config(
                name,
                ip,
                (lmtp, imap, pop3, relay),
                c.shared.path(),
                &c.etcd.endpoint,
                idle,
                tls,
            );
            let mut serve = Serve::start(&config);
            serve.wait_for_log("cluster: member", Duration::from_secs(20));
            c.hosts.push(Host {
                name,
                ip,
                lmtp,
                imap,
                pop3,
                serve: Some(serve),
                cgroup_root: format!("wasmail-cluster-{name}"),
            });
        }
        Some(c)
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }

    /// Every live host's log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            if let Some(s) = &h.serve {
                out.push_str(&format!("===== host {} =====\n{}\n", h.name, s.log_text()));
            }
        }
        out
    }

    /// The owner of `domain` per etcd.
    fn owner(&self, domain: &str) -> Option<String> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut client = etcd_client::Client::connect([self.etcd.endpoint.as_str()], None)
                .await
                .ok()?;
            let got = client
                .get(format!("/wasmail/owners/{domain}"), None)
                .await
                .ok()?;
            got.kvs()
                .first()
                .map(|kv| kv.value_str().unwrap().to_string())
        })
    }

    /// Hosts whose log shows a Dovecot worker of `domain` becoming ready.
    fn worker_starts(&self, domain: &str) -> Vec<&'static str> {
        let mut v = Vec::new();
        for h in &self.hosts {
            if let Some(s) = &h.serve {
                let log = s.log_text();
                let n = log
                    .lines()
                    .filter(|l| {
                        l.contains("fastcontainer: worker ready")
                            && l.contains(&format!("domain={domain}"))
                    })
                    .count();
                v.extend(std::iter::repeat_n(h.name, n));
            }
        }
        v
    }

    /// Messages in bob@`domain`'s Maildir (shared storage).
    fn maildir(&self, domain: &str) -> Vec<String> {
        let md = self
            .shared
            .path()
            .join("mail")
            .join(domain)
            .join("bob/Maildir");
        crate::lmtp::read_maildir(&md)
    }

    /// Simulates the host dying: SIGKILL to its wasmail and to every worker container it
    /// started (a dead machine takes its workers with it).
    fn kill_host(&mut self, name: &str) {
        let h = self.hosts.iter_mut().find(|h| h.name == name).unwrap();
        let mut serve = h.serve.take().expect("host running");
        let pid = serve.child.id() as i32;
        for child in children_of(pid) {
            // SAFETY: kill with a pid we just read from /proc.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
        let _ = serve.child.kill();
        let _ = serve.child.wait();
    }

    /// `wasmail ctl` against host `name`.
    fn ctl(&self, name: &str, args: &[&str]) -> std::process::Output {
        let serve = self.host(name).serve.as_ref().unwrap();
        std::process::Command::new(crate::support::wasmail_bin())
            .arg("ctl")
            .arg("--config")
            .arg(serve.dir.path().join("wasmail.toml"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            drop(h.serve.take());
        }
        for h in &self.hosts {
            remove_cgroups(&h.cgroup_root);
        }
    }
}

/// A test CA and a certificate for each host (DNS name = host name, server and client
/// use) in `dir`.
fn make_cluster_ca(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=wasmail test cluster CA",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&ca);
    for (name, _) in HOSTS {
        let ext = format!(
            "subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth\n\
             basicConstraints=CA:FALSE\n"
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, pem, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={name}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(&req);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extf,
        ]);
    }
}

/// Pids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the comm may hold spaces, so split after the ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Removes what a killed host left in the cgroup trees under `root` (empty groups only).
fn remove_cgroups(root: &str) {
    fn rm(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rm(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let base = Path::new("/sys/fs/cgroup");
    rm(&base.join(root));
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            rm(&e.path().join(root));
        }
    }
}

/// One LMTP delivery of a message to bob@`domain` through `ip:port`; the reply to the
/// recipient (RCPT refusal or the post-DATA reply).
fn deliver(ip: &str, port: u16, domain: &str, subject: &str) -> String {
    let s = TcpStream::connect((ip, port)).unwrap_or_else(|e| panic!("{ip}:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let reply = |r: &mut BufReader<TcpStream>| -> String {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            assert!(!l.is_empty(), "connection closed; so far {all:?}");
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    };
    let ask = |w: &mut TcpStream, r: &mut BufReader<TcpStream>, cmd: &str| {
        w.write_all(cmd.as_bytes()).unwrap();
        reply(r)
    };
    assert!(reply(&mut r).starts_with("220 "));
    assert!(ask(&mut w, &mut r, "LHLO client.test\r\n").starts_with("250"));
    assert!(ask(&mut w, &mut r, "MAIL FROM:<alice@sender.test>\r\n").starts_with("250"));
    let rcpt = ask(&mut w, &mut r, &format!("RCPT TO:<bob@{domain}>\r\n"));
    if !rcpt.starts_with("250") {
        let _ = w.write_all(b"QUIT\r\n");
        return rcpt;
    }
    assert!(ask(&mut w, &mut r, "DATA\r\n").starts_with("354"));
    let msg = format!(
        "From: alice@sender.test\r\nTo: bob@{domain}\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n.\r\n"
    );
    let done = ask(&mut w, &mut r, &msg);
    let _ = w.write_all(b"QUIT\r\n");
    done
}

/// Like a Postfix queue: retries a 4xx every 200 ms until `within`; panics on 5xx.
/// Returns the final reply and how many 4xx came before it.
fn deliver_retrying(
    c: &Cluster,
    host: &str,
    domain: &str,
    subject: &str,
    within: Duration,
) -> (String, usize) {
    let h = c.host(host);
    let start = Instant::now();
    let mut deferred = 0;
    loop {
        let r = deliver(h.ip, h.lmtp, domain, subject);
        if r.starts_with('2') {
            return (r, deferred);
        }
        assert!(
            r.starts_with('4'),
            "{subject} via {host}: a permanent failure: {r}\n{}",
            c.logs()
        );
        deferred += 1;
        assert!(
            start.elapsed() < within,
            "{subject} via {host}: still deferred after {within:?}: {r}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// IMAP login as bob@`domain` through `ip:port` and the `EXISTS` count of INBOX.
fn imap_inbox(ip: &str, port: u16, domain: &str) -> Result<usize, String> {
    let s = TcpStream::connect((ip, port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    if !line.starts_with("* OK") {
        return Err(line);
    }
    let mut until = |w: &mut TcpStream, cmd: &str, tag: &str| -> Vec<String> {
        w.write_all(cmd.as_bytes()).unwrap();
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            if l.is_empty() {
                lines.push("<closed>".into());
                return lines;
            }
            let done = l.starts_with(&format!("{tag} "));
            lines.push(l);
            if done {
                return lines;
            }
        }
    };
    let login = until(&mut w, &format!("a1 LOGIN bob@{domain} pw-bob\r\n"), "a1");
    if !login.last().unwrap().starts_with("a1 OK") {
        return Err(login.join(""));
    }
    let select = until(&mut w, "a2 SELECT INBOX\r\n", "a2");
    let exists = select
        .iter()
        .find_map(|l| {
            l.strip_prefix("* ")?
                .strip_suffix(" EXISTS\r\n")?
                .parse()
                .ok()
        })
        .ok_or_else(|| select.join(""))?;
    until(&mut w, "a3 LOGOUT\r\n", "a3");
    Ok(exists)
}

/// POP3 login as bob@`domain` through `ip:port` and the message count from `STAT`.
fn pop3_stat(ip: &str, port: u16, domain: &str) -> Result<usize, String> {
    let s = TcpStream::connect((ip, port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = || {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l
    };
    let greeting = line();
    if !greeting.starts_with("+OK") {
        return Err(greeting);
    }
    w.write_all(format!("USER bob@{domain}\r\n").as_bytes())
        .unwrap();
    let user = line();
    if !user.starts_with("+OK") {
        return Err(user);
    }
    w.write_all(b"PASS pw-bob\r\n").unwrap();
    let pass = line();
    if !pass.starts_with("+OK") {
        return Err(pass);
    }
    w.write_all(b"STAT\r\n").unwrap();
    let stat = line();
    w.write_all(b"QUIT\r\n").unwrap();
    stat.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or(stat)
}

#[test]
fn concurrent_sessions_on_three_hosts_start_exactly_one_worker() {
    let Some(c) = Cluster::start(
        "cluster::concurrent_sessions_on_three_hosts_start_exactly_one_worker",
        "10m",
    ) else {
        return;
    };
    // `wasmail ctl hosts` lists all three, live.
    let out = c.ctl("a", &["hosts"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, ip) in HOSTS {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.contains(ip) && l.contains("live")),
            "{name} missing in:\n{table}"
        );
    }
    // Three sessions for one cold domain, one at each host, at the same time.
    let domain = "one.test";
    std::thread::scope(|s| {
        let handles: Vec<_> = c
            .hosts
            .iter()
            .map(|h| {
                let (ip, port, name) = (h.ip, h.lmtp, h.name);
                s.spawn(move || deliver(ip, port, domain, &format!("via {name}")))
            })
            .collect();
        for h in handles {
            let r = h.join().unwrap();
            assert!(r.starts_with("250 "), "{r}\n{}", c.logs());
        }
    });
    let owner = c.owner(domain).expect("an owner key");
    assert_eq!(
        c.worker_starts(domain),
        vec![owner.as_str()],
        "exactly one worker, on the owner\n{}",
        c.logs()
    );
    assert_eq!(c.maildir(domain).len(), 3, "all three messages delivered");
    // The two other hosts relayed; IMAP logins through every host see the same mailbox.
    for h in &c.hosts {
        assert_eq!(
            imap_inbox(h.ip, h.imap, domain),
            Ok(3),
            "IMAP via {}\n{}",
            h.name,
            c.logs()
        );
    }
    for h in &c.hosts {
        assert_eq!(
            pop3_stat(h.ip, h.pop3, domain),
            Ok(3),
            "POP3 via {}\n{}",
            h.name,
            c.logs()
        );
    }
    assert_eq!(c.worker_starts(domain).len(), 1, "still one worker");
    for h in c.hosts.iter().filter(|h| h.name != owner) {
        let log = h.serve.as_ref().unwrap().log_text();
        assert!(
            log.contains(&format!("worker_host=\"{owner}\""))
                || log.contains(&format!("worker_host={owner}")),
            "{} logged its relayed login to {owner}:\n{log}",
            h.name
        );
    }
    // Metrics: the owner counts the relayed sessions in (2 LMTP, 2 IMAP, 2 POP3), owns one
    // domain.
    let metric = |host: &str, name: &str| -> u64 {
        let out = c.ctl(host, &["metrics"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} from {host}"))
    };
    assert_eq!(metric(&owner, "wasmail_cluster_relayed_in_total"), 6);
    assert_eq!(metric(&owner, "wasmail_cluster_owned_domains"), 1);
    assert_eq!(metric(&owner, "wasmail_cluster_member"), 1);
    let out_total: u64 = HOSTS
        .iter()
        .map(|(n, _)| metric(n, "wasmail_cluster_relayed_out_total"))
        .sum();
    assert_eq!(out_total, 6);
    // The socketmap transport answer of a non-owner points Postfix at the owner's LMTP.
    let other = c.hosts.iter().find(|h| h.name != owner).unwrap();
    let owner_host = c.host(&owner);
    let sm = other.serve.as_ref().unwrap().dir.path().join("sm.sock");
    let answer = socketmap(&sm, "transport_maps", domain);
    assert_eq!(
        answer,
        format!("OK lmtp:inet:{}:{}", owner_host.ip, owner_host.lmtp)
    );
    let own_sm = owner_host
        .serve
        .as_ref()
        .unwrap()
        .dir
        .path()
        .join("sm.sock");
    assert_eq!(socketmap(&own_sm, "transport_maps", domain), "NOTFOUND ");

    // A registry change made through one host's configuration (the CLI, writing to the
    // etcd registry) is answered by the lookups of the other hosts within a second: they
    // watch the registry (their poll interval is 10 s).
    let first = &c.hosts[0];
    let cfg = first
        .serve
        .as_ref()
        .unwrap()
        .dir
        .path()
        .join("wasmail.toml");
    let carol = format!("carol@{domain}");
    let out = std::process::Command::new(crate::support::wasmail_bin())
        .args(["mailbox", "--config"])
        .arg(&cfg)
        .args(["add", &carol, "--no-password"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t0 = Instant::now();
    for h in &c.hosts[1..] {
        let sm = h.serve.as_ref().unwrap().dir.path().join("sm.sock");
        while !socketmap(&sm, "virtual_mailbox_maps", &carol).starts_with("OK ") {
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "{carol} not found on {} within 1 s",
                h.name
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    eprintln!(
        "registry change answered on the other hosts after {:?}",
        t0.elapsed()
    );
}

/// One socketmap request; the answer without its netstring framing.
fn socketmap(path: &Path, table: &str, key: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    let req = format!("{table} {key}");
    s.write_all(format!("{}:{req},", req.len()).as_bytes())
        .unwrap();
    let mut r = BufReader::new(s);
    let mut len = Vec::new();
    r.read_until(b':', &mut len).unwrap();
    let n: usize = String::from_utf8_lossy(&len[..len.len() - 1])
        .parse()
        .unwrap();
    let mut body = vec![0; n + 1];
    std::io::Read::read_exact(&mut r, &mut body).unwrap();
    String::from_utf8_lossy(&body[..n]).into_owned()
}

#[test]
fn killed_owner_host_is_replaced_after_the_lease_ttl_and_no_mail_is_lost() {
    let Some(mut c) = Cluster::start(
        "cluster::killed_owner_host_is_replaced_after_the_lease_ttl_and_no_mail_is_lost",
        "10m",
    ) else {
        return;
    };
    let domain = "two.test";
    for (i, (name, _)) in HOSTS.iter().enumerate() {
        let (r, _) = deliver_retrying(&c, name, domain, &format!("before {i}"), TTL * 5);
        assert!(r.starts_with("250 "), "{r}");
    }
    let owner = c.owner(domain).expect("owned");
    assert_eq!(c.worker_starts(domain), vec![owner.as_str()]);
    c.kill_host(&owner);
    let killed_at = Instant::now();
    let survivor = HOSTS.iter().find(|(n, _)| *n != owner).unwrap().0;
    // Until the dead host's lease expires its key still names it: deferred, never refused.
    let (r, deferred) = deliver_retrying(&c, survivor, domain, "after the kill", TTL * 5);
    assert!(r.starts_with("250 "), "{r}");
    assert!(
        deferred > 0,
        "the first attempt, within the TTL, is deferred"
    );
    assert!(
        killed_at.elapsed() >= TTL - Duration::from_millis(500),
        "delivered {:?} after the kill, before the lease TTL {TTL:?}",
        killed_at.elapsed()
    );
    let new_owner = c.owner(domain).expect("re-placed");
    assert_ne!(new_owner, owner);
    assert_eq!(c.worker_starts(domain), vec![new_owner.as_str()]);
    // Both surviving hosts now route to the new owner; nothing delivered was lost.
    for (name, _) in HOSTS.iter().filter(|(n, _)| *n != owner) {
        let (r, _) = deliver_retrying(&c, name, domain, &format!("later via {name}"), TTL * 3);
        assert!(r.starts_with("250 "), "{r}");
    }
    let mail = c.maildir(domain);
    assert_eq!(mail.len(), 6, "3 before, 1 after the kill, 2 later");
    for i in 0..3 {
        assert!(
            mail.iter()
                .any(|m| m.contains(&format!("Subject: before {i}")))
        );
    }
    let out = c.ctl(survivor, &["hosts"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        !table.lines().any(|l| l.starts_with(&owner)),
        "the dead host left the member list:\n{table}"
    );
}

#[test]
fn etcd_unreachable_known_owners_keep_working_others_get_4xx() {
    let Some(mut c) = Cluster::start(
        "cluster::etcd_unreachable_known_owners_keep_working_others_get_4xx",
        "10m",
    ) else {
        return;
    };
    let known = "three.test";
    let (r, _) = deliver_retrying(&c, "a", known, "warm-up", TTL * 3);
    assert!(r.starts_with("250 "), "{r}");
    let owner = c.owner(known).unwrap();
    // Every host learns the owner through its watch.
    std::thread::sleep(Duration::from_millis(500));
    c.etcd.kill();
    std::thread::sleep(Duration::from_millis(300));
    for (i, (name, ip)) in HOSTS.iter().enumerate() {
        let h = c.host(name);
        let r = deliver(ip, h.lmtp, known, &format!("etcd down via {name}"));
        assert!(
            r.starts_with("250 "),
            "known owner via {name}: {r}\n{}",
            c.logs()
        );
        assert_eq!(imap_inbox(ip, h.imap, known), Ok(i + 2), "IMAP via {name}");
    }
    for (name, ip) in HOSTS {
        let r = deliver(ip, c.host(name).lmtp, "four.test", "unknown owner");
        assert!(
            r.starts_with("451 4.3.0"),
            "unknown owner via {name}: {r}\n{}",
            c.logs()
        );
        let imap = imap_inbox(ip, c.host(name).imap, "four.test");
        assert!(
            imap.as_ref()
                .is_err_and(|e| e.contains("a1 NO [UNAVAILABLE]")),
            "IMAP for an unknown owner via {name}: {imap:?}"
        );
    }
    assert_eq!(c.maildir(known).len(), 4);
    assert_eq!(c.worker_starts(known), vec![owner.as_str()]);
}

#[test]
fn drained_host_takes_no_new_domains_and_its_idle_domains_move() {
    let Some(c) = Cluster::start(
        "cluster::drained_host_takes_no_new_domains_and_its_idle_domains_move",
        "2s",
    ) else {
        return;
    };
    // A domain whose preferred host is c, placed there first.
    let hosts = [("a", 100), ("b", 100), ("c", 100)];
    let domain = DOMAINS
        .iter()
        .copied()
        .find(|d| wasmail::cluster::rendezvous::ranked(d, hosts)[0] == "c")
        .expect("some domain prefers c");
    let fresh = DOMAINS
        .iter()
        .copied()
        .find(|d| *d != domain && wasmail::cluster::rendezvous::ranked(d, hosts)[0] == "c")
        .expect("a second domain prefers c");
    let (r, _) = deliver_retrying(&c, "a", domain, "placed on c", TTL * 3);
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(c.owner(domain).as_deref(), Some("c"));
    let out = c.ctl("a", &["drain", "c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table_has = |needle: &str| {
        let out = c.ctl("b", &["hosts"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with('c') && l.contains(needle))
    };
    crate::lmtp::wait_until(
        "c shows as draining",
        Duration::from_secs(5),
        || table_has("live,draining"),
        || c.logs(),
    );
    // A new domain that prefers c goes to its second choice.
    let (r, _) = deliver_retrying(&c, "b", fresh, "not on c", TTL * 3);
    assert!(r.starts_with("250 "), "{r}");
    let second = wasmail::cluster::rendezvous::ranked(fresh, hosts)[1];
    assert_eq!(c.owner(fresh).as_deref(), Some(second));
    // c's idle worker is reaped, the domain released and re-placed elsewhere.
    crate::lmtp::wait_until(
        "c releases its idle domain",
        Duration::from_secs(15),
        || c.owner(domain).is_none(),
        || c.logs(),
    );
    let (r, _) = deliver_retrying(&c, "a", domain, "after the drain", TTL * 3);
    assert!(r.starts_with("250 "), "{r}");
    let moved = c.owner(domain).unwrap();
    assert_ne!(moved, "c");
    assert_eq!(c.maildir(domain).len(), 2);
    // Undrain: c is a candidate again.
    let out = c.ctl("a", &["drain", "c", "--undo"]);
    assert!(out.status.success());
    crate::lmtp::wait_until(
        "c back in placement",
        Duration::from_secs(5),
        || table_has("live") && !table_has("draining"),
        || c.logs(),
    );
}

#[test]
fn relay_with_mutual_tls_forwards_and_refuses_clients_without_a_certificate() {
    let Some(c) = Cluster::start_with(
        "cluster::relay_with_mutual_tls_forwards_and_refuses_clients_without_a_certificate",
        "10m",
        true,
    ) else {
        return;
    };
    let domain = "five.test";
    for (name, _) in HOSTS {
        let (r, _) = deliver_retrying(&c, name, domain, &format!("tls via {name}"), TTL * 3);
        assert!(r.starts_with("250 "), "{r}");
        let h = c.host(name);
        assert!(imap_inbox(h.ip, h.imap, domain).is_ok(), "IMAP via {name}");
    }
    let owner = c.owner(domain).unwrap();
    assert_eq!(c.worker_starts(domain), vec![owner.as_str()]);
    assert_eq!(c.maildir(domain).len(), 3);
    // A plain-text handshake on the owner's relay port is not TLS: nothing is relayed.
    let log = c.host(&owner).serve.as_ref().unwrap().log_text();
    let relay: String = log
        .lines()
        .find(|l| l.contains("cluster relay listening"))
        .and_then(|l| l.split("listen=").nth(1))
        .map(|s| {
            s.split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches("inet:")
                .to_string()
        })
        .expect("relay address in the log");
    let mut s = TcpStream::connect(relay.as_str()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("WASMAIL-RELAY 1 {domain} lmtp\r\n").as_bytes())
        .unwrap();
    let mut got = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut got);
    assert!(!got.contains("OK"), "plain handshake answered: {got:?}");
    crate::lmtp::wait_until(
        "the refused handshake is logged",
        Duration::from_secs(5),
        || {
            c.host(&owner)
                .serve
                .as_ref()
                .unwrap()
                .log_text()
                .contains("relay: TLS handshake failed")
        },
        || c.logs(),
    );
}

#[test]
fn etcd_back_after_an_outage_placement_resumes_without_moving_domains() {
    let Some(mut c) = Cluster::start(
        "cluster::etcd_back_after_an_outage_placement_resumes_without_moving_domains",
        "10m",
    ) else {
        return;
    };
    let known = "six.test";
    let (r, _) = deliver_retrying(&c, "b", known, "before the outage", TTL * 3);
    assert!(r.starts_with("250 "), "{r}");
    let owner = c.owner(known).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.etcd.kill();
    let r = deliver(
        c.host("a").ip,
        c.host("a").lmtp,
        "seven.test",
        "during the outage",
    );
    assert!(r.starts_with("451 "), "{r}");
    // Longer than the lease TTL: etcd restores leases with a fresh TTL when it restarts.
    std::thread::sleep(TTL + Duration::from_secs(1));
    // Same port and data dir: its leases come back.
    c.etcd.restart();
    let (r, _) = deliver_retrying(&c, "a", "seven.test", "after the outage", TTL * 5);
    assert!(r.starts_with("250 "), "{r}");
    let (r, _) = deliver_retrying(&c, "c", known, "known after the outage", TTL * 3);
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(c.owner(known), Some(owner.clone()), "not moved");
    assert_eq!(c.worker_starts(known), vec![owner.as_str()]);
    let out = c.ctl("a", &["hosts"]);
    let table = String::from_utf8_lossy(&out.stdout);
    for (name, _) in HOSTS {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.contains("live")),
            "{name} not live after the outage:\n{table}"
        );
    }
    assert_eq!(c.maildir("seven.test").len(), 1);
    assert_eq!(c.maildir(known).len(), 2);
}

#[test]
fn a_host_that_lost_its_lease_gives_way_to_the_new_owner() {
    let Some(c) = Cluster::start(
        "cluster::a_host_that_lost_its_lease_gives_way_to_the_new_owner",
        "10m",
    ) else {
        return;
    };
    let domain = "eight.test";
    let (r, _) = deliver_retrying(&c, "a", domain, "first", TTL * 3);
    assert!(r.starts_with("250 "), "{r}");
    let owner = c.owner(domain).unwrap();
    let other = HOSTS.iter().find(|(n, _)| *n != owner).unwrap().0;
    // As if the owner's lease expired behind its back and another host claimed the domain
    // before the owner noticed: revoke the lease, put the other host as owner (bound to
    // the other host's lease, as a claim would).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut e = etcd_client::Client::connect([c.etcd.endpoint.as_str()], None)
            .await
            .unwrap();
        let lease_of = |v: &[u8]| -> i64 {
            serde_json::from_slice::<serde_json::Value>(v).unwrap()["lease"]
                .as_i64()
                .unwrap()
        };
        let o = e
            .get(format!("/wasmail/hosts/{owner}"), None)
            .await
            .unwrap();
        let t = e
            .get(format!("/wasmail/hosts/{other}"), None)
            .await
            .unwrap();
        let (old, new) = (lease_of(o.kvs()[0].value()), lease_of(t.kvs()[0].value()));
        e.lease_revoke(old).await.unwrap();
        e.put(
            format!("/wasmail/owners/{domain}"),
            other,
            Some(etcd_client::PutOptions::new().with_lease(new)),
        )
        .await
        .unwrap();
    });
    let owner_log = || c.host(&owner).serve.as_ref().unwrap().log_text();
    crate::lmtp::wait_until(
        "the old owner gives the domain up and stops its worker",
        Duration::from_secs(10),
        || {
            owner_log().contains("lost the domain to another host")
                && owner_log().contains("fastcontainer: worker stopped")
        },
        || c.logs(),
    );
    crate::lmtp::wait_until(
        "the old owner registers again",
        Duration::from_secs(10),
        || owner_log().matches("cluster: registered").count() >= 2,
        || c.logs(),
    );
    for (name, _) in HOSTS {
        let (r, _) = deliver_retrying(&c, name, domain, &format!("after via {name}"), TTL * 3);
        assert!(r.starts_with("250 "), "{r}");
    }
    // The domain was placed again (on whichever host the next claim named: the unused
    // claim for `other` is released after release_grace), with a fresh worker.
    assert!(c.owner(domain).is_some());
    assert_eq!(c.worker_starts(domain).len(), 2, "{}", c.logs());
    assert_eq!(c.maildir(domain).len(), 4);
}

/// The `[cluster]` block of docs/cluster.md passes `wasmail check-config` (with a
/// `[fastcontainer]` section), and a cluster without one is refused naming the key.
#[test]
fn documented_cluster_config_checks_and_needs_fastcontainer() {
    let block = crate::support::docs_fenced("docs/cluster.md", "cluster-config", "toml");
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let p = dir.path().join("wasmail.toml");
        std::fs::write(&p, text).unwrap();
        std::process::Command::new(crate::support::wasmail_bin())
            .args(["check-config", "--config"])
            .arg(&p)
            .output()
            .unwrap()
    };
    let fc = crate::support::fc_test_worker_section("wasmail-cluster-doc")
        .replace("{dir}", &dir.path().display().to_string());
    let out = check(&format!("{block}\n{fc}"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(&block);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key `cluster`") && err.contains("[fastcontainer]"),
        "{err}"
    );
    let out = check(&format!(
        "{}\n{fc}",
        block
            .replace("lease_ttl", "x")
            .replace("# x = \"10s\"", "lease_ttl = \"1s\"")
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.lease_ttl"), "{err}");
}

/// Postfix with docs/cluster.md's main.cf lines, pointed at a host that does not own the
/// domain, follows that host's `transport_maps` answer and delivers straight to the owner's
/// LMTP front: the message arrives, Postfix's log names the owner's address, and the
/// non-owner relays nothing.
#[test]
fn postfix_delivers_straight_to_the_owner_named_by_transport_maps() {
    let test = "cluster::postfix_delivers_straight_to_the_owner_named_by_transport_maps";
    if !require_program(test, "postfix") || !require_program(test, "swaks") {
        return;
    }
    let Some(c) = Cluster::start(test, "10m") else {
        return;
    };
    // Place the domain: one session through host a.
    let domain = "two.test";
    let a = c.host("a");
    let r = deliver(a.ip, a.lmtp, domain, "placing");
    assert!(r.starts_with("250 "), "{r}\n{}", c.logs());
    let owner = c.owner(domain).expect("an owner key");
    let other = c.hosts.iter().find(|h| h.name != owner).unwrap();
    let owner_host = c.host(&owner);
    let sm = other.serve.as_ref().unwrap().dir.path().join("sm.sock");
    // The non-owner's cache learns the owner through its watch.
    let t0 = Instant::now();
    while !socketmap(&sm, "transport_maps", domain).starts_with("OK ") {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{} never named the owner\n{}",
            other.name,
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let relayed_out = |h: &Host| -> u64 {
        let out = c.ctl(h.name, &["metrics"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("wasmail_cluster_relayed_out_total ")?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no relayed_out from {}", h.name))
    };
    let before = relayed_out(other);

    let block = crate::support::postfix::docs_block_in("docs/cluster.md", "cluster-postfix")
        .replace(
            "unix:/run/wasmail/socketmap.sock",
            &format!("unix:{}", sm.display()),
        )
        .replace(
            "lmtp:inet:10.0.0.1:24",
            &format!("lmtp:inet:{}:{}", other.ip, other.lmtp),
        );
    let pf = crate::support::postfix::Postfix::start_with("", &block, &[]);
    let (code, text) = pf.swaks(
        pf.filter_port,
        "sender@remote.test",
        &[&format!("bob@{domain}")],
        &["--header", "Subject: straight to the owner"],
    );
    assert_eq!(code, 0, "{text}\n{}", pf.log());
    let t0 = Instant::now();
    let sent = loop {
        if let Some(l) = pf
            .log()
            .lines()
            .find(|l| l.contains(&format!("to=<bob@{domain}>")) && l.contains("status=sent"))
        {
            break l.to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not delivered\n{}\n{}",
            pf.log(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        sent.contains(&format!("[{}]:{}", owner_host.ip, owner_host.lmtp)),
        "Postfix did not deliver to the owner {owner} ({}:{}): {sent}",
        owner_host.ip,
        owner_host.lmtp
    );
    assert_eq!(c.maildir(domain).len(), 2, "both messages in the Maildir");
    assert_eq!(
        relayed_out(other),
        before,
        "{} relayed a session it should not have seen",
        other.name
    );
}
