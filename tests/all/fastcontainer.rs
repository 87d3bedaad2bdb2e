//! Integration tests: fastcontainer. The Linux spawner against real namespaces and cgroups,
//! with `fc-test-worker` (src/bin/fc-test-worker.rs) as the worker. Root only; each test
//! prints a loud `SKIPPED:` line otherwise.
//!
//! Every test uses its own temp dir (run dirs, root mount points) and the cgroup parent
//! `wasmail-test`; the spawner is not made a child subreaper here, because this test
//! binary also runs daemons (Postfix) whose orphans must keep going to the host's PID 1.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmail::fastcontainer::cgroup::{CgroupTree, Version};
use wasmail::fastcontainer::spawn::{LinuxSpawner, LinuxSpawnerConfig, LinuxWorker, wait_ready};
use wasmail::fastcontainer::{
    BindMount, ContainerError, Endpoint, Exit, Limits, Spawner, Worker, WorkerSpec,
};

use crate::support::require_root;

const WORKER: &str = env!("CARGO_BIN_EXE_fc-test-worker");

/// The wasmail binary that runs as each container's PID 1: the one built with the tests,
/// or `WASMAIL_FC_INIT` (e.g. a release build, for the latency figures; a debug build of
/// wasmail alone takes ~9 ms to start).
fn init_exe() -> PathBuf {
    std::env::var_os("WASMAIL_FC_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_wasmail").into())
}

fn spawner(tmp: &Path) -> LinuxSpawner {
    spawner_with(tmp, true)
}

/// A spawner with or without template roots.
fn spawner_with(tmp: &Path, template_roots: bool) -> LinuxSpawner {
    LinuxSpawner::new(LinuxSpawnerConfig {
        init_exe: init_exe(),
        cgroup_parent: "wasmail-test".into(),
        roots_dir: tmp.join("roots"),
        subreaper: false,
        template_roots,
    })
    .unwrap()
}

/// The host's system dirs read-only, plus the directory holding the test worker.
fn system_mounts() -> Vec<BindMount> {
    let mut mounts: Vec<BindMount> = ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"]
        .iter()
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .map(|p| BindMount {
            source: p.into(),
            target: p.into(),
            read_only: true,
        })
        .collect();
    let dir = Path::new(WORKER).parent().unwrap();
    mounts.push(BindMount {
        source: dir.into(),
        target: dir.into(),
        read_only: true,
    });
    mounts
}

fn worker_spec(tmp: &Path, domain: &str, mode: &[&str]) -> WorkerSpec {
    let run_dir = tmp.join("run").join(domain);
    let mut argv = vec![WORKER.to_string(), "/run/fc/sock".to_string()];
    argv.extend(mode.iter().map(|m| m.to_string()));
    WorkerSpec {
        domain: domain.into(),
        argv,
        env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
        uid: 0,
        gid: 0,
        run_dir: run_dir.clone(),
        run_dir_inside: "/run/fc".into(),
        mounts: system_mounts(),
        new_net: false,
        limits: Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(1000),
            pids_max: Some(64),
        },
        nofile: 256,
        ready: Endpoint::Unix(run_dir.join("sock")),
        start_timeout: Duration::from_secs(10),
        files: Vec::new(),
    }
}

fn spawn_ready(spawner: &LinuxSpawner, spec: &WorkerSpec) -> LinuxWorker {
    let mut w = spawner.spawn_linux(spec).unwrap();
    wait_ready(spec, &mut w).unwrap();
    w
}

fn greeting(spec: &WorkerSpec) -> String {
    let Endpoint::Unix(path) = &spec.ready else {
        unreachable!()
    };
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    s.read_to_string(&mut line).unwrap();
    line.trim_end().to_string()
}

/// `key=value` from a greeting.
fn field<'a>(greeting: &'a str, key: &str) -> &'a str {
    greeting
        .split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {greeting:?}"))
}

fn ns_inode(pid: &str, ns: &str) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .ino()
}

fn wait_exit(w: &mut dyn Worker, within: Duration) -> Exit {
    let start = Instant::now();
    loop {
        if let Some(e) = w.try_exit() {
            return e;
        }
        assert!(
            start.elapsed() < within,
            "worker still running after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The host's mounts, without the spawners' template roots (`<roots_dir>/.template-*`,
/// one per spawner and worker shape, kept while the spawner lives; tests running in
/// parallel create and drop their own): nothing of a container may appear here.
fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| !l.contains("/.template-"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Host mounts under `dir` (the test's temp dir), templates included.
fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .map(String::from)
        .collect()
}

/// After cleanup: no process, no cgroup, no run dir, no root mount point, no mount.
fn assert_gone(w: &LinuxWorker, cgroup_dirs: &[PathBuf], spec: &WorkerSpec, mounts_before: &str) {
    // SAFETY: kill with signal 0 only checks for existence.
    let r = unsafe { libc::kill(w.pid() as libc::pid_t, 0) };
    assert_eq!(r, -1, "pid {} still exists", w.pid());
    for dir in cgroup_dirs {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    assert!(!spec.run_dir.exists(), "run dir left behind");
    assert!(
        !w.root_mount_point().exists(),
        "root mount point left behind"
    );
    assert_eq!(mountinfo(), mounts_before, "host mounts changed");
}

#[test]
fn namespaces_mounts_and_dropped_privileges() {
    if !require_root("fastcontainer::namespaces_mounts_and_dropped_privileges") {
        return;
    }
    namespaces_mounts_and_privileges(true);
}

/// The same view from inside when every root is built from scratch
/// (`template_roots = false`).
#[test]
fn namespaces_mounts_and_dropped_privileges_without_template() {
    if !require_root("fastcontainer::namespaces_mounts_and_dropped_privileges_without_template") {
        return;
    }
    namespaces_mounts_and_privileges(false);
}

fn namespaces_mounts_and_privileges(template: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let spawner = spawner_with(tmp.path(), template);
    let mounts_before = mountinfo();
    let mut spec = worker_spec(tmp.path(), "ns.example", &["ns"]);
    spec.new_net = true;
    spec.uid = 65534;
    spec.gid = 65534;
    let mut w = spawn_ready(&spawner, &spec);
    let pid = w.pid().to_string();
    let g = greeting(&spec);
    eprintln!("greeting: {g}");

    // The container's namespaces differ from ours, and the worker shares its init's.
    let view: Vec<(&str, u64)> = field(&g, "ns")
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once(':').unwrap();
            (k, v.parse().unwrap())
        })
        .collect();
    for (ns, inside) in view {
        assert_ne!(
            ns_inode("self", ns),
            ns_inode(&pid, ns),
            "{ns} namespace not new"
        );
        assert_eq!(
            inside,
            ns_inode(&pid, ns),
            "{ns}: worker and its init differ"
        );
    }
    let words: Vec<&str> = g.split(' ').collect();
    assert_eq!(
        &words[..3],
        ["hello", "ns.example", "2"],
        "hostname = domain, pid 2"
    );

    // Only the bind mounts (and /dev, /proc, /tmp) are visible.
    let mut expected: BTreeSet<String> = ["dev", "proc", "tmp", "run"].map(String::from).into();
    for m in &spec.mounts {
        expected.insert(
            m.target
                .iter()
                .nth(1)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    let seen: BTreeSet<String> = field(&g, "root").split(',').map(String::from).collect();
    assert_eq!(seen, expected);
    assert_eq!(field(&g, "rootfs"), "ro");
    assert_eq!(field(&g, "usr"), "ro");

    // Dropped to nobody, no capabilities at all, no_new_privs, rlimit, loopback up.
    assert_eq!(field(&g, "uid"), "65534");
    assert_eq!(field(&g, "gid"), "65534");
    assert_eq!(field(&g, "groups"), "");
    assert_eq!(field(&g, "capeff"), "0000000000000000");
    assert_eq!(field(&g, "capprm"), "0000000000000000");
    assert_eq!(field(&g, "capbnd"), "0000000000000000");
    assert_eq!(field(&g, "nnp"), "1");
    assert_eq!(field(&g, "nofile"), "256");
    assert_eq!(field(&g, "lo"), "up");

    // The run dir is the worker's, and visible from the host.
    let meta = std::fs::metadata(&spec.run_dir).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert!(spec.run_dir.join("sock").exists());

    let cgroups = w.cgroup().dirs();
    assert!(cgroups.iter().all(|d| d.is_dir()));
    w.signal(libc::SIGKILL).unwrap();
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(5)),
        Exit::Signal(libc::SIGKILL)
    );
    // With templates, the root came from the spawner's read-only template (one per
    // worker shape), mounted on the host while the spawner lives; without, none exists.
    let templates = mounts_under(tmp.path());
    assert_eq!(
        templates.iter().any(|l| l.contains("/roots/.template-")),
        template,
        "template mounts on the host: {templates:#?}"
    );
    w.cleanup().unwrap();
    assert_gone(&w, &cgroups, &spec, &mounts_before);
    // Dropping the spawner detaches its template; nothing stays mounted under the test dir.
    drop(spawner);
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("roots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "roots dir not empty: {left:?}");
}

#[test]
fn root_worker_keeps_no_capabilities_and_host_network() {
    if !require_root("fastcontainer::root_worker_keeps_no_capabilities_and_host_network") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spawner = spawner(tmp.path());
    let spec = worker_spec(tmp.path(), "root.example", &["ns"]);
    let mut w = spawn_ready(&spawner, &spec);
    let g = greeting(&spec);
    assert_eq!(field(&g, "uid"), "0");
    assert_eq!(field(&g, "capeff"), "0000000000000000");
    assert_eq!(field(&g, "capbnd"), "0000000000000000");
    assert_eq!(field(&g, "rootfs"), "ro");
    assert_eq!(field(&g, "usr"), "ro");
    // No new_net: the host's network namespace.
    let pid = w.pid().to_string();
    assert_eq!(ns_inode("self", "net"), ns_inode(&pid, "net"));
    assert_ne!(ns_inode("self", "mnt"), ns_inode(&pid, "mnt"));
    w.cleanup().unwrap();
}

#[test]
fn memory_limit_oom_kills_only_that_worker() {
    if !require_root("fastcontainer::memory_limit_oom_kills_only_that_worker") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spawner = spawner(tmp.path());
    let calm_spec = worker_spec(tmp.path(), "calm.example", &[]);
    let mut calm = spawn_ready(&spawner, &calm_spec);
    assert!(greeting(&calm_spec).starts_with("hello calm.example "));

    let mut hog_spec = worker_spec(tmp.path(), "hog.example", &["alloc", "256"]);
    hog_spec.limits.memory_bytes = Some(32 << 20);
    let mut hog = spawner.spawn_linux(&hog_spec).unwrap();
    // It may be killed before or after it answers; either way it must die by SIGKILL.
    match wait_ready(&hog_spec, &mut hog) {
        Ok(_) | Err(ContainerError::NotReady { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    let exit = wait_exit(&mut hog, Duration::from_secs(30));
    assert_eq!(exit, Exit::Signal(libc::SIGKILL));
    let usage = hog.usage().unwrap();
    assert!(usage.oom_kills >= 1, "{usage:?}");
    eprintln!("hog usage after OOM: {usage:?}");

    // The neighbour never noticed.
    assert!(calm.try_exit().is_none());
    assert!(greeting(&calm_spec).starts_with("hello calm.example "));
    let calm_usage = calm.usage().unwrap();
    assert_eq!(calm_usage.oom_kills, 0);
    assert!(
        calm_usage.memory_bytes > 0 && calm_usage.pids == 2,
        "{calm_usage:?}"
    );
    hog.cleanup().unwrap();
    calm.cleanup().unwrap();
}

#[test]
fn fork_bomb_stops_at_pids_max() {
    if !require_root("fastcontainer::fork_bomb_stops_at_pids_max") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spawner = spawner(tmp.path());
    let mut spec = worker_spec(tmp.path(), "bomb.example", &["forkbomb"]);
    spec.limits.pids_max = Some(12);
    let mut w = spawn_ready(&spawner, &spec);
    let g = greeting(&spec);
    // init + worker + 10 children = 12.
    assert_eq!(field(&g, "forked"), "10", "{g}");
    assert_eq!(w.usage().unwrap().pids, 12);
    let cgroups = w.cgroup().dirs();
    // SIGTERM is forwarded to the worker; its children go with the namespace.
    w.signal(libc::SIGTERM).unwrap();
    assert_eq!(wait_exit(&mut w, Duration::from_secs(10)), Exit::Code(0));
    w.cleanup().unwrap();
    for d in cgroups {
        assert!(!d.exists());
    }
}

#[test]
fn sigterm_is_forwarded_by_init() {
    if !require_root("fastcontainer::sigterm_is_forwarded_by_init") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spawner = spawner(tmp.path());
    let mounts_before = mountinfo();
    let spec = worker_spec(tmp.path(), "term.example", &[]);
    let mut w = spawn_ready(&spawner, &spec);
    let cgroups = w.cgroup().dirs();
    w.signal(libc::SIGTERM).unwrap();
    // The worker's handler exits 0: the signal reached it through PID 1.
    assert_eq!(wait_exit(&mut w, Duration::from_secs(10)), Exit::Code(0));
    // Signalling a reaped worker is a harmless no-op.
    w.signal(libc::SIGTERM).unwrap();
    w.cleanup().unwrap();
    w.cleanup().unwrap();
    assert_gone(&w, &cgroups, &spec, &mounts_before);
}

#[test]
fn setup_errors_name_the_step() {
    if !require_root("fastcontainer::setup_errors_name_the_step") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spawner = spawner(tmp.path());
    // A missing read-only source (read-write sources, a domain's storage, are created).
    let missing = tmp.path().join("no-such-dir");
    let mut spec = worker_spec(tmp.path(), "broken.example", &[]);
    spec.mounts.push(BindMount {
        source: missing.clone(),
        target: "/data".into(),
        read_only: true,
    });
    let start = Instant::now();
    let err = spawner.spawn(&spec).unwrap_err();
    eprintln!("setup error after {:?}: {err}", start.elapsed());
    let ContainerError::Sys { step, source } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(step, &format!("mount {} on /data", missing.display()));
    assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
    assert!(!spec.run_dir.exists(), "run dir left behind");
    let roots: Vec<_> = std::fs::read_dir(tmp.path().join("roots"))
        .unwrap()
        .collect();
    assert!(roots.is_empty(), "root mount point left behind");
    for parent in spawner.cgroups().parent_dirs() {
        let left: Vec<_> = std::fs::read_dir(&parent)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("broken.example@")
            })
            .collect();
        assert!(
            left.is_empty(),
            "cgroup left behind in {}",
            parent.display()
        );
    }

    // A worker program that does not exist: the exec step says which.
    let mut spec = worker_spec(tmp.path(), "noexec.example", &[]);
    spec.argv[0] = "/usr/bin/no-such-worker".into();
    let err = spawner.spawn(&spec).unwrap_err();
    let ContainerError::Sys { step, source } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(step, "exec /usr/bin/no-such-worker");
    assert_eq!(source.raw_os_error(), Some(libc::ENOENT));

    // A PID 1 binary that does not exist: the exec of container-init is the step named
    // (the child execs it before the cgroup attach, so its report must win over the
    // attach error), and nothing is left behind.
    let bad_init = LinuxSpawner::new(LinuxSpawnerConfig {
        init_exe: tmp.path().join("no-such-init"),
        cgroup_parent: "wasmail-test".into(),
        roots_dir: tmp.path().join("roots"),
        subreaper: false,
        template_roots: true,
    })
    .unwrap();
    let spec = worker_spec(tmp.path(), "noinit.example", &[]);
    let err = bad_init.spawn(&spec).unwrap_err();
    let ContainerError::Sys { step, source } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(step, "exec container-init");
    assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
    assert!(!spec.run_dir.exists(), "run dir left behind");

    // An invalid spec never reaches the kernel.
    let mut spec = worker_spec(tmp.path(), "relative.example", &[]);
    spec.argv[0] = "worker".into();
    assert!(matches!(
        spawner.spawn(&spec),
        Err(ContainerError::Invalid(_))
    ));
}

#[test]
fn crash_before_ready_reports_the_exit() {
    if !require_root("fastcontainer::crash_before_ready_reports_the_exit") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spawner = spawner(tmp.path());
    let spec = worker_spec(tmp.path(), "crash.example", &["crash"]);
    let mut w = spawner.spawn(&spec).unwrap();
    match wait_ready(&spec, w.as_mut()) {
        Err(ContainerError::NotReady { exit, waited, .. }) => {
            assert_eq!(exit, Some(Exit::Code(3)));
            assert!(waited < spec.start_timeout);
        }
        other => panic!("{other:?}"),
    }
    w.cleanup().unwrap();
}

#[test]
fn limits_change_on_a_live_worker() {
    if !require_root("fastcontainer::limits_change_on_a_live_worker") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spawner = spawner(tmp.path());
    let spec = worker_spec(tmp.path(), "limits.example", &[]);
    let mut w = spawn_ready(&spawner, &spec);
    w.set_limits(&Limits {
        memory_bytes: Some(96 << 20),
        cpu_millis: Some(250),
        pids_max: Some(20),
    })
    .unwrap();
    let read = |file: &str| {
        w.cgroup()
            .dirs()
            .iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap().trim().to_string())
            .unwrap_or_else(|| panic!("no {file}"))
    };
    match spawner.cgroups().version() {
        Version::V1 => {
            assert_eq!(read("memory.limit_in_bytes"), (96u64 << 20).to_string());
            assert_eq!(read("cpu.cfs_quota_us"), "25000");
        }
        Version::V2 => {
            assert_eq!(read("memory.max"), (96u64 << 20).to_string());
            assert_eq!(read("cpu.max"), "25000 100000");
        }
    }
    assert_eq!(read("pids.max"), "20");
    let u = w.usage().unwrap();
    assert_eq!(u.pids, 2, "{u:?}");
    assert!(u.memory_bytes > 0 && u.cpu_usec > 0, "{u:?}");
    assert!(greeting(&spec).starts_with("hello limits.example"));
    w.cleanup().unwrap();
}

/// The cgroup v2 writer against the real kernel. On this hybrid host the cgroup2 mount
/// (`/sys/fs/cgroup/unified`) offers no memory/cpu/pids controllers, so this runs without
/// limits, but attach (`cgroup.procs`), usage, `cgroup.kill` and removal are real.
#[test]
fn cgroup_v2_attach_and_kill() {
    if !require_root("fastcontainer::cgroup_v2_attach_and_kill") {
        return;
    }
    let Some(mount) = mountinfo().lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        right.starts_with("cgroup2 ").then(|| PathBuf::from(point))
    }) else {
        eprintln!("SKIPPED: fastcontainer::cgroup_v2_attach_and_kill: no cgroup2 mount");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let tree = CgroupTree::v2(&mount, "wasmail-test").unwrap();
    let spawner = LinuxSpawner::with_cgroups(
        LinuxSpawnerConfig {
            init_exe: init_exe(),
            cgroup_parent: "wasmail-test".into(),
            roots_dir: tmp.path().join("roots"),
            subreaper: false,
            template_roots: true,
        },
        tree,
    )
    .unwrap();
    let offered = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap();
    let mut spec = worker_spec(tmp.path(), "v2.example", &[]);
    spec.limits = Limits::default();
    if offered.split_whitespace().any(|c| c == "pids") {
        spec.limits.pids_max = Some(12);
    }
    let mut w = spawn_ready(&spawner, &spec);
    let dirs = w.cgroup().dirs();
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].starts_with(&mount));
    let procs = std::fs::read_to_string(dirs[0].join("cgroup.procs")).unwrap();
    // init and the worker, both in the v2 cgroup from the start.
    assert_eq!(procs.lines().count(), 2, "{procs}");
    assert!(procs.lines().any(|p| p == w.pid().to_string()));
    assert!(greeting(&spec).starts_with("hello v2.example 2"));
    // `cgroup.kill` takes the whole container down, init included.
    w.cgroup().kill_all().unwrap();
    assert_eq!(
        wait_exit(&mut w, Duration::from_secs(10)),
        Exit::Signal(libc::SIGKILL)
    );
    w.cleanup().unwrap();
    assert!(!dirs[0].exists());
}

/// Informal: spawn → ready over 50 starts (printed; no timing asserts).
#[test]
fn spawn_to_ready_latency() {
    if !require_root("fastcontainer::spawn_to_ready_latency") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let spawner = spawner(tmp.path());
    let (mut ready, mut spawned, mut teardown) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..50 {
        let spec = worker_spec(tmp.path(), &format!("lat{i}.example"), &[]);
        let start = Instant::now();
        let mut w = spawner.spawn(&spec).unwrap();
        spawned.push(start.elapsed());
        wait_ready(&spec, w.as_mut()).unwrap();
        ready.push(start.elapsed());
        let t = Instant::now();
        w.signal(libc::SIGKILL).unwrap();
        w.cleanup().unwrap();
        teardown.push(t.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: usize| {
        v.sort();
        v[(v.len() * p / 100).min(v.len() - 1)]
    };
    eprintln!(
        "fastcontainer spawn→ready over 50 (init {}): p50 {:?} p99 {:?} (spawn() returned: p50 {:?} p99 {:?}; kill+cleanup: p50 {:?} p99 {:?})",
        init_exe().display(),
        pct(&mut ready, 50),
        pct(&mut ready, 99),
        pct(&mut spawned, 50),
        pct(&mut spawned, 99),
        pct(&mut teardown, 50),
        pct(&mut teardown, 99),
    );
}
