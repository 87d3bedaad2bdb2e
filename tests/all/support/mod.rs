//! Shared test support: locating binaries, temp dirs, skip helpers, real-peer harnesses.

#![allow(dead_code)]

pub mod chain;
pub mod etcd;
pub mod postfix;

use std::path::PathBuf;

/// Path of the `wasmail` binary built by cargo for this test run.
pub fn wasmail_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wasmail"))
}

/// True when running as root; prints a loud skip line naming the test and reason otherwise.
pub fn require_root(test: &str) -> bool {
    if nix_is_root() {
        return true;
    }
    eprintln!("SKIPPED: {test}: needs root (CI runs as root)");
    false
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when `program` is on PATH (or an absolute path that exists); prints a loud skip line
/// naming the test and the missing program otherwise.
pub fn require_program(test: &str, program: &str) -> bool {
    if which(program).is_some() {
        return true;
    }
    eprintln!("SKIPPED: {test}: `{program}` is not installed (scripts/setup.sh installs it)");
    false
}

/// Finds `program` on PATH (plus /usr/sbin and /usr/lib/postfix/sbin, which Debian keeps off
/// a normal user's PATH).
pub fn which(program: &str) -> Option<PathBuf> {
    let p = PathBuf::from(program);
    if p.is_absolute() {
        return p.exists().then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/lib/postfix/sbin"])
        .map(|d| PathBuf::from(d).join(program))
        .find(|c| c.is_file())
}

/// A `wasmail serve` process started from a config text in its own temp dir; stopped with
/// SIGTERM (then SIGKILL) when dropped.
pub struct Serve {
    /// The temp dir holding the config and any sockets the config names under it.
    pub dir: tempfile::TempDir,
    /// The child process.
    pub child: std::process::Child,
    /// Where stderr (the log) goes.
    pub log: PathBuf,
}

impl Serve {
    /// Writes `config` (with `{dir}` replaced by the temp dir) and starts `wasmail serve`.
    /// Waits until the log says the services are up, or fails the test after 60 s.
    pub fn start(config: &str) -> Serve {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, config)
    }

    /// Like [`Serve::start`] but in a given temp dir (files may already be placed there).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Serve {
        let text = config.replace("{dir}", dir.path().to_str().unwrap());
        let cfg = dir.path().join("wasmail.toml");
        std::fs::write(&cfg, text).unwrap();
        let log = dir.path().join("serve.log");
        let child = std::process::Command::new(wasmail_bin())
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info,wasmail=debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn wasmail serve");
        let mut s = Serve { dir, child, log };
        s.wait_for_log("wasmail serving", std::time::Duration::from_secs(60));
        s
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `needle` appears in the log; panics with the log after `timeout`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: std::time::Duration) {
        let start = std::time::Instant::now();
        loop {
            if self.log_text().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "wasmail serve exited ({status}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out waiting for {needle:?} in log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for exit (up to `timeout`); returns the exit status.
    pub fn stop(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        // Only a child not reaped yet: a reaped child's pid may belong to another process
        // by now (pid_max is 32768 here, and a full test run starts thousands).
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill with the pid of our own unreaped child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "wasmail serve did not stop within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill with a valid pid of our own child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            for _ in 0..250 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion like `Command::output`, but fails the test (naming the
/// command and what it printed so far) when it has not exited within `timeout`, instead
/// of hanging the whole run. Output goes through temp files, not pipes, so a daemon the
/// command leaves running (Postfix's master) cannot hold the read side open.
pub fn output_within(
    cmd: &mut std::process::Command,
    timeout: std::time::Duration,
) -> std::process::Output {
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let mut text = String::new();
            for f in [&mut out, &mut err] {
                f.rewind().unwrap();
                let _ = f.read_to_string(&mut text);
            }
            panic!("{cmd:?} did not finish within {timeout:?}; it printed:\n{text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let read = |f: &mut std::fs::File| {
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    std::process::Output {
        status,
        stdout: read(&mut out),
        stderr: read(&mut err),
    }
}

/// The fenced block (```FENCE, e.g. `toml`, `main.cf`, `sh`) after the marker
/// `<!-- tested: NAME -->` in `doc` (a path from the repository root, e.g.
/// `docs/dovecot.md`); panics naming what is missing, so a renamed block fails loudly.
pub fn docs_fenced(doc: &str, name: &str, fence: &str) -> String {
    let text =
        std::fs::read_to_string(repo_root().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
    let marker = format!("<!-- tested: {name} -->");
    let start = text
        .find(&marker)
        .unwrap_or_else(|| panic!("{doc} has no {marker}"));
    let rest = &text[start..];
    let open_fence = format!("```{fence}\n");
    let open = rest
        .find(&open_fence)
        .unwrap_or_else(|| panic!("{doc}: no ```{fence} block after {marker}"))
        + open_fence.len();
    let close = rest[open..]
        .find("```")
        .unwrap_or_else(|| panic!("{doc}: no closing fence after {marker}"))
        + open;
    rest[open..close].to_string()
}

/// A `[fastcontainer]` section (text, `{dir}` = the serve temp dir) whose worker is the
/// trivial `fc-test-worker`, under the cgroup parent `cgroup_root`; no idle reaping
/// during a test.
pub fn fc_test_worker_section(cgroup_root: &str) -> String {
    let worker = env!("CARGO_BIN_EXE_fc-test-worker");
    let worker_dir = std::path::Path::new(worker).parent().unwrap().display();
    format!(
        "[fastcontainer]\nrun_root = \"{{dir}}/run\"\nstorage_root = \"{{dir}}/mail\"\n\
         cgroup_root = \"{cgroup_root}\"\nidle = \"fixed\"\nidle_timeout = \"10m\"\n\
         stop_grace = \"2s\"\nstart_timeout = \"10s\"\n\
         system_mounts = [\"/usr\", \"/lib\", \"/lib64\", \"/bin\", \"/sbin\", \"/etc\", \"{worker_dir}\"]\n\
         [fastcontainer.worker]\nargv = [\"{worker}\", \"{{run_dir}}/worker.sock\"]\n\
         uid = 0\ngid = 0\nready = \"unix:worker.sock\"\n\
         [fastcontainer.limits]\nmemory = \"128MiB\"\ncpu = 1\npids = 64\n"
    )
}

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

static PLUGINS_BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();

/// Directory of the built plugin components (`target/plugins/*.wasm`). They are built by
/// `scripts/build-plugins.sh` (which `scripts/test.sh` runs first); if they are missing,
/// the first test that needs them runs the script once for the whole test binary.
pub fn plugins_dir() -> PathBuf {
    PLUGINS_BUILT
        .get_or_init(|| {
            let dir = repo_root().join("target/plugins");
            let wanted = ["noop", "stamp", "faulty", "delivery-rules", "command-rules"];
            if wanted
                .iter()
                .all(|n| dir.join(format!("{n}.wasm")).is_file())
            {
                return Ok(dir);
            }
            let status = std::process::Command::new("bash")
                .arg(repo_root().join("scripts/build-plugins.sh"))
                .status()
                .map_err(|e| format!("running scripts/build-plugins.sh: {e}"))?;
            if !status.success() {
                return Err(format!("scripts/build-plugins.sh failed: {status}"));
            }
            Ok(dir)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Path of the built plugin `name` (`target/plugins/<name>.wasm`); panics with a clear
/// message when it was not built.
pub fn plugin(name: &str) -> PathBuf {
    let p = plugins_dir().join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

/// GET `path` from the admin API on a unix socket; the response body.
pub fn admin_get(socket: &std::path::Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: wasmail\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

/// The sum of every series of the metric whose lines start with `prefix` (e.g.
/// `wasmail_plugin_calls_total{plugin="x"`), read from the admin API's `/metrics` on
/// `socket`; with the metrics text, for failure messages.
pub fn metric_total(socket: &std::path::Path, prefix: &str) -> (u64, String) {
    let metrics = admin_get(socket, "/metrics");
    let total = metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    (total, metrics)
}
