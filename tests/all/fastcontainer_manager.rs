//! Integration tests: the FastContainer manager driving the real Linux spawner (root
//! only; each test prints a loud `SKIPPED:` line otherwise), with `fc-test-worker`
//! (src/bin/fc-test-worker.rs) as the worker and the spec built from a `[fastcontainer]`
//! section exactly as `wasmail serve` builds it.
//!
//! Covered: spawn on first acquire, 50 concurrent acquires of one cold domain start one
//! worker, idle reap leaves no process / cgroup / run dir / root mount point, a crashed
//! worker is respawned by the next acquire, a crash loop backs off with a clear error,
//! and max lifetime replaces a worker without a failed session.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wasmail::fastcontainer::config::FastContainerSection;
use wasmail::fastcontainer::manager::{Manager, Settings};
use wasmail::fastcontainer::spawn::{LinuxSpawner, LinuxSpawnerConfig};
use wasmail::fastcontainer::{ContainerError, Endpoint};

use crate::support::require_root;

const WORKER: &str = env!("CARGO_BIN_EXE_fc-test-worker");

/// A manager over the real spawner, its reaper running on a private runtime.
pub(crate) struct Fixture {
    pub tmp: tempfile::TempDir,
    pub manager: Manager,
    pub rt: tokio::runtime::Runtime,
    shutdown: watch::Sender<bool>,
    reaper: Option<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    /// `extra` is appended to the `[fastcontainer]` section text (top-level keys);
    /// `worker` is the `[worker]` table's text. `{tmp}` is the temp dir.
    pub fn new(extra: &str, worker: &str) -> Fixture {
        Self::with_specs(extra, worker, |s, d| s.spec_for(d))
    }

    pub fn with_specs<F>(extra: &str, worker: &str, specs: F) -> Fixture
    where
        F: Fn(
                &FastContainerSection,
                &str,
            ) -> Result<wasmail::fastcontainer::WorkerSpec, ContainerError>
            + Send
            + Sync
            + 'static,
    {
        let tmp = tempfile::tempdir().unwrap();
        let worker_dir = Path::new(WORKER).parent().unwrap();
        let text = format!(
            r#"
run_root = "{{tmp}}/run"
storage_root = "{{tmp}}/mail"
cgroup_root = "wasmail-test"
system_mounts = ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "{worker_dir}"]
start_timeout = "10s"
stop_grace = "2s"
{extra}
[worker]
{worker}
"#,
            worker_dir = worker_dir.display(),
        )
        .replace("{tmp}", tmp.path().to_str().unwrap());
        let section: FastContainerSection = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("test section does not parse: {e}\n{text}"));
        let spawner = LinuxSpawner::new(LinuxSpawnerConfig {
            init_exe: env!("CARGO_BIN_EXE_wasmail").into(),
            cgroup_parent: section.cgroup_root.clone().into(),
            roots_dir: tmp.path().join("roots"),
            subreaper: false,
            template_roots: section.template_roots,
        })
        .unwrap();
        let settings = Settings::from_section(&section);
        let manager = Manager::new(Arc::new(spawner), move |d| specs(&section, d), settings);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (shutdown, rx) = watch::channel(false);
        let m = manager.clone();
        let reaper = Some(rt.spawn(async move { m.run_reaper(rx).await }));
        Fixture {
            tmp,
            manager,
            rt,
            shutdown,
            reaper,
        }
    }

    /// Stops the reaper, which stops every worker; returns once all are gone.
    pub fn shutdown(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(h) = self.reaper.take() {
            self.rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(30), h).await })
                .expect("manager shutdown within 30 s")
                .unwrap();
        }
    }

    pub fn starts(&self, domain: &str) -> u64 {
        self.manager
            .metrics()
            .domains
            .iter()
            .find(|d| d.domain == domain)
            .map_or(0, |d| d.starts)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The worker's greeting (`hello HOST PID ...`) over its endpoint.
fn greet(endpoint: &Endpoint) -> String {
    let Endpoint::Unix(path) = endpoint else {
        panic!("unix endpoint expected, got {endpoint:?}")
    };
    let mut s = UnixStream::connect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; look at its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// The cgroup directories (every hierarchy) holding `pid`, under `wasmail-test`.
fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if !path.contains("wasmail-test") {
                return None;
            }
            let base = if controllers.is_empty() {
                PathBuf::from("/sys/fs/cgroup")
            } else {
                let c = controllers.trim_start_matches("name=");
                PathBuf::from("/sys/fs/cgroup").join(c)
            };
            Some(base.join(path.trim_start_matches('/')))
        })
        .filter(|p| p.is_dir())
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve_worker() -> String {
    format!("argv = [\"{WORKER}\", \"{{run_dir}}/sock\"]\nready = \"unix:sock\"")
}

#[test]
fn first_acquire_spawns_and_idle_reap_leaves_nothing_behind() {
    if !require_root(
        "fastcontainer_manager::first_acquire_spawns_and_idle_reap_leaves_nothing_behind",
    ) {
        return;
    }
    let mut fx = Fixture::new(
        "idle = \"fixed\"\nidle_timeout = \"300ms\"",
        &serve_worker(),
    );
    assert!(
        fx.manager.list().is_empty(),
        "nothing runs before a session"
    );
    let lease = fx.rt.block_on(fx.manager.acquire("idle.test")).unwrap();
    let pid = lease.pid();
    let hello = greet(lease.endpoint());
    assert!(hello.starts_with("hello idle.test "), "{hello}");
    let Endpoint::Unix(sock) = lease.endpoint().clone() else {
        unreachable!()
    };
    let run_dir = sock.parent().unwrap().to_path_buf();
    assert!(
        run_dir.starts_with(fx.tmp.path().join("run")),
        "{run_dir:?}"
    );
    let cgroups = cgroup_dirs(pid);
    assert!(!cgroups.is_empty(), "worker in a wasmail-test cgroup");
    // The worker's root mount point (the spawner's shared template root aside).
    let roots: Vec<_> = std::fs::read_dir(fx.tmp.path().join("roots"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".template-"))
        .map(|e| e.path())
        .collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert!(
        fx.tmp.path().join("mail/idle.test").is_dir(),
        "storage created"
    );

    // Held by a session: not reaped however long it idles.
    std::thread::sleep(Duration::from_millis(800));
    assert!(alive(pid), "a worker with a session is kept");
    drop(lease);

    wait_until("idle reap", Duration::from_secs(10), || !alive(pid));
    wait_until("cleanup", Duration::from_secs(10), || {
        !run_dir.exists()
            && cgroups.iter().all(|c| !c.exists())
            && roots.iter().all(|r| !r.exists())
    });
    // Only the spawner's template root stays mounted (until the spawner is dropped).
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.contains(fx.tmp.path().to_str().unwrap()))
        .filter(|l| !l.contains("/roots/.template-"))
        .collect();
    assert!(left.is_empty(), "mounts left under the test dir: {left:#?}");
    // The storage stays: it is the domain's mail.
    assert!(fx.tmp.path().join("mail/idle.test").is_dir());
    let m = fx.manager.metrics();
    assert_eq!(m.active_workers(), 0);
    assert_eq!(fx.starts("idle.test"), 1);

    // The next session starts a fresh worker.
    let lease = fx.rt.block_on(fx.manager.acquire("idle.test")).unwrap();
    assert_ne!(lease.pid(), pid);
    drop(lease);
    fx.shutdown();
}

#[test]
fn fifty_concurrent_acquires_of_a_cold_domain_start_one_worker() {
    if !require_root(
        "fastcontainer_manager::fifty_concurrent_acquires_of_a_cold_domain_start_one_worker",
    ) {
        return;
    }
    let fx = Fixture::new("", &serve_worker());
    let pids: Vec<u32> = fx.rt.block_on(async {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let m = fx.manager.clone();
                tokio::spawn(async move {
                    let lease = m.acquire("fifty.test").await.unwrap();
                    let pid = lease.pid();
                    let endpoint = lease.endpoint().clone();
                    let hello = tokio::task::spawn_blocking(move || greet(&endpoint))
                        .await
                        .unwrap();
                    assert!(hello.starts_with("hello fifty.test "), "{hello}");
                    pid
                })
            })
            .collect();
        let mut pids = Vec::new();
        for t in tasks {
            pids.push(t.await.unwrap());
        }
        pids
    });
    assert_eq!(pids.len(), 50);
    assert!(pids.iter().all(|p| *p == pids[0]), "one worker: {pids:?}");
    assert_eq!(fx.starts("fifty.test"), 1, "exactly one start");
    let listed = fx.manager.list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].pid, Some(pids[0]));
}

#[test]
fn a_crashed_worker_is_respawned_and_a_crash_loop_backs_off() {
    if !require_root(
        "fastcontainer_manager::a_crashed_worker_is_respawned_and_a_crash_loop_backs_off",
    ) {
        return;
    }
    let fx = Fixture::with_specs(
        "backoff_base = \"30s\"\nbackoff_max = \"60s\"",
        &serve_worker(),
        |s, d| {
            let mut spec = s.spec_for(d)?;
            if d.starts_with("crash") {
                spec.argv.push("crash".into());
            }
            Ok(spec)
        },
    );
    // A ready worker that dies (killed from outside): the next acquire starts another.
    let lease = fx.rt.block_on(fx.manager.acquire("ok.test")).unwrap();
    let first = lease.pid();
    drop(lease);
    // SAFETY: kill with a pid of a worker we started.
    unsafe { libc::kill(first as libc::pid_t, libc::SIGKILL) };
    wait_until("killed", Duration::from_secs(5), || !alive(first));
    let lease = fx.rt.block_on(fx.manager.acquire("ok.test")).unwrap();
    assert_ne!(lease.pid(), first, "respawned");
    assert!(greet(lease.endpoint()).starts_with("hello ok.test "));
    let info = fx
        .manager
        .list()
        .into_iter()
        .find(|w| w.domain == "ok.test" && w.pid == Some(lease.pid()))
        .unwrap();
    assert_eq!(info.crashes, 1, "{info:?}");
    drop(lease);

    // A worker that exits before it is ready: the first failure is retried at once, then
    // the domain backs off and says so.
    let mut errors = Vec::new();
    for _ in 0..4 {
        errors.push(
            fx.rt
                .block_on(fx.manager.acquire("crash.test"))
                .unwrap_err(),
        );
    }
    assert!(
        matches!(errors[0], ContainerError::NotReady { exit: Some(_), .. }),
        "{:?}",
        errors[0]
    );
    let last = errors.last().unwrap();
    assert!(matches!(last, ContainerError::Backoff { .. }), "{errors:?}");
    let text = last.to_string();
    assert!(
        text.contains("crash.test") && text.contains("crash-looping"),
        "{text}"
    );
    assert_eq!(fx.starts("crash.test"), 0);
}

#[test]
fn max_lifetime_replaces_the_worker_without_a_failed_session() {
    if !require_root(
        "fastcontainer_manager::max_lifetime_replaces_the_worker_without_a_failed_session",
    ) {
        return;
    }
    let fx = Fixture::new("max_lifetime = \"700ms\"", &serve_worker());
    let mut pids = std::collections::BTreeSet::new();
    let mut sessions = 0;
    let start = Instant::now();
    // Sessions back to back (each held a little) for 3 s: every one is served.
    while start.elapsed() < Duration::from_secs(3) {
        let lease = fx
            .rt
            .block_on(fx.manager.acquire("life.test"))
            .unwrap_or_else(|e| panic!("session {sessions} failed: {e}"));
        let hello = greet(lease.endpoint());
        assert!(hello.starts_with("hello life.test "), "{hello}");
        pids.insert(lease.pid());
        sessions += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        pids.len() >= 2,
        "replaced at least once in 3 s ({sessions} sessions, pids {pids:?})"
    );
    // Old workers are gone once their sessions ended.
    wait_until("old workers stopped", Duration::from_secs(10), || {
        let current: Vec<u32> = fx.manager.list().iter().filter_map(|w| w.pid).collect();
        current.len() <= 1
            && pids
                .iter()
                .filter(|p| !current.contains(p))
                .all(|p| !alive(*p))
    });
}
