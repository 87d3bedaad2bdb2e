//! Integration tests: the admin API of `wasmail serve` and `wasmail ctl`.
//!
//! Without root: health, metrics, the token check, 404/405, plugin reload and `ctl`'s
//! errors, over loopback TCP and a unix socket. As root (skipped loudly otherwise): a
//! `[fastcontainer]` server with `fc-test-worker` as the worker, driven through `ctl`:
//! prewarm, list, change the memory limit (checked in the worker's cgroup), stop, and
//! SIGTERM leaving no worker behind.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::postfix::free_port;
use crate::support::{Serve, plugin, require_root, wasmail_bin};

const TOKEN: &str = "admin-test-token-0123456789";

/// Where a test server's admin API is.
enum Addr {
    Tcp(u16),
    Unix(PathBuf),
}

/// One raw HTTP/1.1 exchange (`Connection: close`): status, headers (lower-cased names),
/// body. Independent of the crate's own client on purpose.
struct HttpReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn http(addr: &Addr, method: &str, path: &str, token: Option<&str>, body: &str) -> HttpReply {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut raw = Vec::new();
    match addr {
        Addr::Tcp(port) => {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", *port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            s.read_to_end(&mut raw).unwrap();
        }
        Addr::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            s.read_to_end(&mut raw).unwrap();
        }
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// `wasmail ctl ARGS --config CONFIG`.
fn ctl(config: &Path, args: &[&str]) -> Output {
    Command::new(wasmail_bin())
        .arg("ctl")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `ctl` and expects success; returns stdout.
fn ctl_ok(config: &Path, args: &[&str]) -> String {
    let o = ctl(config, args);
    assert!(
        o.status.success(),
        "ctl {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Runs `ctl` and expects failure; returns stderr.
fn ctl_err(config: &Path, args: &[&str]) -> String {
    let o = ctl(config, args);
    assert!(
        !o.status.success(),
        "ctl {args:?} succeeded: {}",
        stdout(&o)
    );
    stderr(&o)
}

/// A temp dir holding the token file.
fn dir_with_token() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(
        dir.path().join("token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    dir
}

/// The value of the sample `series` (name with labels) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(s, _)| *s == series))
        .map(|(_, v)| v.parse().unwrap())
}

#[test]
fn tcp_api_needs_the_token_and_answers_health_metrics_and_errors() {
    let port = free_port();
    let config = format!(
        "[server]\nshutdown_grace = \"5s\"\n\
         [admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{{dir}}/token\"\n"
    );
    let mut serve = Serve::start_in(dir_with_token(), &config);
    let addr = Addr::Tcp(port);
    let cfg = serve.dir.path().join("wasmail.toml");

    let r = http(&addr, "GET", "/health", Some(TOKEN), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let h = r.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["services"], serde_json::json!(["admin"]));

    for token in [None, Some("admin-test-token-0123456780"), Some("")] {
        for path in ["/health", "/metrics", "/workers", "/no-such-thing"] {
            let r = http(&addr, "GET", path, token, "");
            assert_eq!(r.status, 401, "{token:?} {path}: {}", r.body);
            assert!(r.header("www-authenticate").is_some());
            assert!(!r.error().is_empty());
        }
    }

    let r = http(&addr, "GET", "/metrics", Some(TOKEN), "");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(sample(&r.body, "wasmail_up"), Some(1.0), "{}", r.body);
    assert_eq!(sample(&r.body, "wasmail_plugins"), Some(0.0), "{}", r.body);
    assert!(r.body.contains("# TYPE wasmail_up gauge"), "{}", r.body);

    let r = http(&addr, "GET", "/no-such-thing", Some(TOKEN), "");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("/no-such-thing"), "{}", r.body);
    let r = http(&addr, "DELETE", "/workers", Some(TOKEN), "");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = http(&addr, "GET", "/plugins/reload", Some(TOKEN), "");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));

    // Worker endpoints say why they cannot work here.
    let r = http(&addr, "GET", "/workers", Some(TOKEN), "");
    assert_eq!(r.status, 409);
    assert!(r.error().contains("[fastcontainer]"), "{}", r.body);
    let r = http(
        &addr,
        "POST",
        "/workers/example.com/limits",
        Some(TOKEN),
        "{\"cpu\":1}",
    );
    assert_eq!(r.status, 409);

    // ctl reads the same [admin] section and sends the token.
    let out = ctl_ok(&cfg, &["health"]);
    assert!(out.starts_with("ok: wasmail "), "{out}");
    assert!(out.contains("services: admin"), "{out}");
    let out = ctl_ok(&cfg, &["metrics"]);
    assert_eq!(sample(&out, "wasmail_up"), Some(1.0), "{out}");
    let err = ctl_err(&cfg, &["workers"]);
    assert!(
        err.contains("409") && err.contains("[fastcontainer]"),
        "{err}"
    );
    let err = ctl_err(&cfg, &["stop", "Not_A_Domain"]);
    assert!(err.contains("Not_A_Domain"), "{err}");

    // A wrong token in the file: the server's 401 message reaches the user.
    std::fs::write(
        serve.dir.path().join("token"),
        "some-other-token-0123456789",
    )
    .unwrap();
    let err = ctl_err(&cfg, &["health"]);
    assert!(err.contains("401") && err.contains("wrong token"), "{err}");

    let status = serve.stop(Duration::from_secs(20));
    assert!(status.success(), "{status}\n{}", serve.log_text());
    let log = serve.log_text();
    assert!(log.contains("admin API listening"), "{log}");
}

#[test]
fn unix_socket_api_reloads_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("p.wasm");
    std::fs::copy(plugin("noop"), &wasm).unwrap();
    let config = "[server]\nshutdown_grace = \"5s\"\n\
                  [plugins]\nwatch = false\n\
                  [plugin.p]\nfile = \"{dir}/p.wasm\"\n\
                  [milter]\nlisten = \"unix:{dir}/milter.sock\"\nchain = [\"p\"]\n\
                  [admin]\nlisten = \"unix:{dir}/admin.sock\"\n";
    let mut serve = Serve::start_in(dir, config);
    let sock = serve.dir.path().join("admin.sock");
    let cfg = serve.dir.path().join("wasmail.toml");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the admin socket is private by default");
    let addr = Addr::Unix(sock.clone());

    // No token configured: the socket's mode is the protection.
    let r = http(&addr, "GET", "/health", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["services"], serde_json::json!(["milter", "admin"]));
    let r = http(&addr, "GET", "/metrics", None, "");
    assert_eq!(sample(&r.body, "wasmail_plugins"), Some(1.0), "{}", r.body);

    let r = http(&addr, "POST", "/plugins/reload", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["unchanged"], serde_json::json!(["p"]));
    assert_eq!(r.json()["loaded"], serde_json::json!([]));

    // A new file is loaded; a broken one is refused (and ctl says so, exiting non-zero).
    std::fs::copy(plugin("stamp"), &wasm).unwrap();
    let out = ctl_ok(&cfg, &["reload"]);
    assert!(out.contains("1 loaded (p)"), "{out}");
    std::fs::write(&wasm, b"not a component").unwrap();
    let o = ctl(&cfg, &["reload"]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("1 refused"), "{}", stdout(&o));
    assert!(stderr(&o).contains("refused p:"), "{}", stderr(&o));
    // The previous version keeps serving.
    let r = http(&addr, "GET", "/metrics", None, "");
    assert_eq!(sample(&r.body, "wasmail_plugins"), Some(1.0), "{}", r.body);

    let status = serve.stop(Duration::from_secs(20));
    assert!(status.success(), "{status}\n{}", serve.log_text());
    assert!(!sock.exists(), "admin socket removed on shutdown");
}

#[test]
fn ctl_names_the_address_when_the_server_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wasmail.toml");
    let sock = dir.path().join("admin.sock");
    std::fs::write(
        &cfg,
        format!("[admin]\nlisten = \"unix:{}\"\n", sock.display()),
    )
    .unwrap();
    let err = ctl_err(&cfg, &["workers"]);
    assert!(err.contains("cannot connect"), "{err}");
    assert!(err.contains(&format!("unix:{}", sock.display())), "{err}");

    let port = free_port();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}/token\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let err = ctl_err(&cfg, &["stop", "example.com"]);
    assert!(err.contains(&format!("inet:127.0.0.1:{port}")), "{err}");

    // No [admin] section, and TCP without a token file: said plainly.
    std::fs::write(&cfg, "[server]\n").unwrap();
    let err = ctl_err(&cfg, &["workers"]);
    assert!(err.contains("no [admin] section"), "{err}");
    std::fs::write(&cfg, "[admin]\nlisten = \"127.0.0.1:9925\"\n").unwrap();
    let o = Command::new(wasmail_bin())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("key `admin.token_file`") && err.contains("required when listen is TCP"),
        "{err}"
    );
}

/// The cgroup directory of `pid` for `controller` (v2: the unified hierarchy).
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            return Path::new("/sys/fs/cgroup").join(path);
        }
        if controllers.split(',').any(|c| c == controller) {
            return Path::new("/sys/fs/cgroup").join(controller).join(path);
        }
    }
    panic!("no {controller} cgroup for {pid} in {text}");
}

fn memory_limit(pid: u32) -> String {
    let dir = cgroup_dir(pid, "memory");
    let file = ["memory.max", "memory.limit_in_bytes"]
        .iter()
        .map(|f| dir.join(f))
        .find(|f| f.exists())
        .unwrap_or_else(|| panic!("no memory limit file in {}", dir.display()));
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls until `pid` is gone (it is reaped by `serve`), failing after `within`.
fn wait_gone(pid: u32, within: Duration) {
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < within, "pid {pid} still exists");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temp dir with example.com's storage, and a config with the admin API on a unix
/// socket and the trivial worker under the cgroup parent `cgroup_root`.
fn worker_setup(cgroup_root: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mail/example.com")).unwrap();
    let config = format!(
        "[server]\nshutdown_grace = \"5s\"\n\
         [admin]\nlisten = \"unix:{{dir}}/admin.sock\"\n\
         {fc}",
        fc = crate::support::fc_test_worker_section(cgroup_root),
    );
    (dir, config)
}

/// `wasmail ctl prewarm DOMAIN`: waits until the worker is ready; its pid.
fn prewarm(cfg: &Path, domain: &str) -> u32 {
    let out = ctl_ok(cfg, &["prewarm", domain]);
    out.trim()
        .strip_prefix(&format!("{domain}: ready (pid "))
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap()
}

#[test]
fn ctl_prewarms_lists_limits_and_stops_a_real_worker() {
    if !require_root("admin::ctl_prewarms_lists_limits_and_stops_a_real_worker") {
        return;
    }
    let (dir, config) = worker_setup("wasmail-admin-test");
    let mut serve = Serve::start_in(dir, &config);
    let cfg = serve.dir.path().join("wasmail.toml");
    let log = serve.log_text();
    let serving = log
        .lines()
        .find(|l| l.contains("wasmail serving"))
        .unwrap_or_default();
    assert!(serving.contains("\"fastcontainer\", \"admin\""), "{log}");

    // prewarm waits until the worker is ready and names its pid.
    let pid = prewarm(&cfg, "example.com");
    assert!(alive(pid), "pid {pid} from prewarm does not exist");

    let table = ctl_ok(&cfg, &["workers"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("DOMAIN"), "{table}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &cells[..3],
        ["example.com", "ready", &pid.to_string()],
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl_ok(&cfg, &["workers", "--json"])).unwrap();
    let w = &json["workers"][0];
    assert_eq!(w["pid"], pid, "{json}");
    assert!(w["memory_bytes"].as_u64().unwrap() > 0, "{json}");
    assert!(w["pids"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(w["limits"]["memory_bytes"], 128 << 20, "{json}");

    // Limits change the running worker's cgroup.
    assert_eq!(memory_limit(pid), (128u64 << 20).to_string());
    let out = ctl_ok(&cfg, &["limits", "example.com", "--memory", "64MiB"]);
    assert!(out.contains("memory 64MiB, cpu 1, pids 64"), "{out}");
    assert!(out.contains("applied to 1 running worker"), "{out}");
    assert_eq!(memory_limit(pid), "67108864");
    let err = ctl_err(&cfg, &["limits", "example.com", "--memory", "64 parsecs"]);
    assert!(err.contains("400") && err.contains("memory:"), "{err}");
    assert_eq!(
        memory_limit(pid),
        "67108864",
        "a refused change changes nothing"
    );
    let err = ctl_err(&cfg, &["limits", "other.example", "--cpu", "0.5"]);
    assert!(
        err.contains("404") && err.contains("no running worker for other.example"),
        "{err}"
    );

    // Stop: the process is gone when ctl returns.
    let cgroup = cgroup_dir(pid, "memory");
    let out = ctl_ok(&cfg, &["stop", "example.com"]);
    assert_eq!(out.trim(), "example.com: stopped 1 worker");
    wait_gone(pid, Duration::from_secs(5));
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    assert!(ctl_ok(&cfg, &["workers"]).contains("cold"));
    let err = ctl_err(&cfg, &["stop", "example.com"]);
    assert!(err.contains("404"), "{err}");

    let metrics = ctl_ok(&cfg, &["metrics"]);
    let p = "wasmail_fastcontainer";
    for (series, want) in [
        (format!("{p}_starts_total{{domain=\"example.com\"}}"), 1.0),
        (
            format!("{p}_cold_start_seconds_count{{domain=\"example.com\"}}"),
            1.0,
        ),
        (
            format!("{p}_reaps_total{{domain=\"example.com\",reason=\"stop\"}}"),
            1.0,
        ),
        (format!("{p}_crashes_total{{domain=\"example.com\"}}"), 0.0),
        (format!("{p}_active_workers"), 0.0),
    ] {
        assert_eq!(sample(&metrics, &series), Some(want), "{series}\n{metrics}");
    }

    // SIGTERM with a worker running: serve stops it and leaves nothing behind.
    let out = ctl_ok(&cfg, &["prewarm", "example.com"]);
    let pid2: u32 = out
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    assert_ne!(pid2, pid);
    let cgroup = cgroup_dir(pid2, "memory");
    let status = serve.stop(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", serve.log_text());
    assert!(!alive(pid2), "worker {pid2} outlived serve");
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    let run = serve.dir.path().join("run");
    let left: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "run dirs left behind: {left:?}");
    assert!(serve.log_text().contains("all workers stopped"));
}

/// A `wasmail serve` killed with SIGKILL cannot stop its workers; the next `serve` with the
/// same configuration finds them (cgroups named after the dead manager's pid), kills them,
/// removes their cgroups, and starts its own worker for the domain.
#[test]
fn containers_of_a_killed_serve_are_stopped_by_the_next_one() {
    if !require_root("admin::containers_of_a_killed_serve_are_stopped_by_the_next_one") {
        return;
    }
    let (dir, config) = worker_setup("wasmail-admin-stale-test");
    let mut first = Serve::start_in(dir, &config);
    let cfg = first.dir.path().join("wasmail.toml");
    let old = prewarm(&cfg, "example.com");
    let old_cgroup = cgroup_dir(old, "memory");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(old), "the orphaned worker runs on after SIGKILL");

    // The same configuration (same temp dir) in a new serve.
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().unwrap());
    let _ = std::fs::remove_file(dir.path().join("admin.sock"));
    let second = Serve::start_in(dir, &config);
    wait_gone(old, Duration::from_secs(5));
    assert!(
        !old_cgroup.exists(),
        "cgroup {} left behind",
        old_cgroup.display()
    );
    let log = second.log_text();
    assert!(
        log.contains("stopped a container left by a wasmail manager that is gone"),
        "{log}"
    );
    let new = prewarm(&cfg, "example.com");
    assert_ne!(new, old);
    assert!(alive(new));
}
