//! The Linux [`Spawner`]: clone into new namespaces, cgroup limits, the built-in PID 1.
//!
//! [`LinuxSpawner::spawn`] (the hot path, ~2–3 ms):
//! 1. checks the spec, creates the run dir (owned by the worker's uid/gid) and an empty
//!    root mount point `<roots_dir>/<name>` on the host (the root tmpfs is mounted on it
//!    only inside the container's mount namespace);
//! 2. creates the cgroup `<cgroup_parent>/<name>` with the spec's limits, where `name` is
//!    `<sanitized domain>@<manager pid>-<manager start time>.<sequence>`: unique per
//!    worker (and per manager, even when a later manager gets the same pid), so a replacement
//!    can start while the old worker of the same domain drains;
//! 3. prepares everything the child touches (paths, argv, pipes) and then clones
//!    (`clone3`, falling back to `clone`) with `CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWUTS|
//!    CLONE_NEWIPC` (+ `CLONE_NEWNET`). The manager is multi-threaded (tokio), so the child
//!    makes only async-signal-safe calls: it blocks reading one byte from the spec pipe,
//!    then execs `<init_exe> container-init` ([`super::init`]);
//! 4. the parent writes the child's pid into the cgroup and only then sends that byte
//!    and the JSON spec, so nothing of the container ever runs outside its limits;
//! 5. it waits for EOF on the status pipe (the worker's `execve` succeeded) or an error
//!    report (`errno` + step), which becomes [`ContainerError::Sys`].
//!
//! [`LinuxWorker`] is the handle: the host pid of the container's PID 1, the cgroup, the
//! exit pipe (PID 1 writes the worker's exact wait status there before it exits). Every
//! mount of a worker lives in the container's own mount namespace, so nothing needs
//! unmounting on the host; cleanup removes the cgroup, the run dir and the empty root
//! mount point. The one host mount is the spawner's read-only template root per worker
//! shape (`<roots_dir>/.template-<pid>-<n>`, see [`super::init::build_template`]), built
//! at the first start of that shape and detached when the spawner is dropped (or, after
//! a crash, when the next spawner starts).
//!
//! [`wait_ready`] probes the spec's ready endpoint until it accepts.
//!
//! # Child subreaper
//! [`LinuxSpawner::new`] calls `prctl(PR_SET_CHILD_SUBREAPER)` once (unless configured
//! off): on hosts whose PID 1 is not a reaping init (like the CI VM), orphans of anything
//! the manager starts come back to the manager instead of lingering as zombies, and
//! [`LinuxSpawner::reap_orphans`] collects them. Containers never produce such orphans:
//! their processes are reparented to their own PID 1.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};

use super::cgroup::{CgroupTree, WorkerCgroup, sanitize};
use super::init::{Failure, InitMount, InitSpec};
use super::{ContainerError, Endpoint, Exit, Limits, Spawner, Usage, Worker, WorkerSpec};

/// How the Linux spawner is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxSpawnerConfig {
    /// The binary run as each container's PID 1 (`<init_exe> container-init`). Default
    /// [`default_init_exe`]: `wasmail-container-init` installed next to `wasmail` (same
    /// build, so both speak the same protocol; ~3 MB instead of ~40 MB to exec), else
    /// `/proc/self/exe`. Tests point it at a built binary.
    pub init_exe: PathBuf,
    /// Parent of the worker cgroups, relative to each hierarchy's root. Default `wasmail`.
    pub cgroup_parent: PathBuf,
    /// Host directory for the (empty) per-worker root mount points. Default
    /// `/run/wasmail/roots`.
    pub roots_dir: PathBuf,
    /// Make the manager a child subreaper (see the module docs). Default true.
    pub subreaper: bool,
    /// Start workers from a shared read-only template root per worker shape (see
    /// [`super::init::build_template`]). Default true.
    pub template_roots: bool,
}

impl Default for LinuxSpawnerConfig {
    fn default() -> Self {
        Self {
            init_exe: default_init_exe(),
            cgroup_parent: PathBuf::from("wasmail"),
            roots_dir: PathBuf::from("/run/wasmail/roots"),
            subreaper: true,
            template_roots: true,
        }
    }
}

/// `wasmail-container-init` next to the running executable when it exists (a small binary:
/// faster to exec at every cold start), else `/proc/self/exe` (`wasmail container-init`).
pub fn default_init_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let small = exe.with_file_name("wasmail-container-init");
            small.is_file().then_some(small)
        })
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// Spawns workers in namespaces and cgroups; needs root.
#[derive(Debug)]
pub struct LinuxSpawner {
    config: LinuxSpawnerConfig,
    cgroups: CgroupTree,
    /// Host pids of running (not yet reaped) workers: never touched by the orphan reaper.
    live: Arc<Mutex<HashSet<i32>>>,
    /// Zombie children seen by the previous [`LinuxSpawner::reap_orphans`].
    zombies: Mutex<HashSet<i32>>,
    /// Template roots by spec shape ([`TemplateKey`]); `None` when building one failed
    /// (those specs build their root from scratch; the failure was logged once).
    templates: Mutex<HashMap<TemplateKey, Option<PathBuf>>>,
}

/// What a template root depends on: the read-only binds, the kind and place of the
/// read-write ones and of the run dir. Workers of one configuration share one shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TemplateKey {
    read_only: Vec<(PathBuf, PathBuf)>,
    /// (kind of the host source, target inside); kind is `dir`, `file`, `missing` or
    /// `symlink:<link>` (a symlinked source is recreated as that symlink in the template).
    read_write: Vec<(String, PathBuf)>,
    run_dir_inside: PathBuf,
}

impl TemplateKey {
    fn of(spec: &InitSpec) -> Self {
        let kind = |p: &Path| match fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => match fs::read_link(p) {
                Ok(l) => format!("symlink:{}", l.display()),
                Err(_) => "missing".into(),
            },
            Ok(m) if m.is_dir() => "dir".into(),
            Ok(_) => "file".into(),
            Err(_) => "missing".into(),
        };
        TemplateKey {
            read_only: spec
                .mounts
                .iter()
                .filter(|m| m.read_only)
                .map(|m| (m.source.clone(), m.target.clone()))
                .collect(),
            read_write: spec
                .mounts
                .iter()
                .filter(|m| !m.read_only)
                .map(|m| (kind(&m.source), m.target.clone()))
                .collect(),
            run_dir_inside: spec.run_dir_inside.clone(),
        }
    }
}

/// Name prefix of template roots in `roots_dir`: `.template-<manager pid>-<n>`.
const TEMPLATE_PREFIX: &str = ".template-";

fn sys(step: impl Into<String>, source: io::Error) -> ContainerError {
    ContainerError::Sys {
        step: step.into(),
        source,
    }
}

fn errno(step: impl Into<String>, e: Errno) -> ContainerError {
    sys(step, io::Error::from_raw_os_error(e as i32))
}

impl LinuxSpawner {
    /// Detects the cgroup mode, creates `roots_dir`, and (if configured) makes this process
    /// a child subreaper.
    pub fn new(config: LinuxSpawnerConfig) -> Result<Self, ContainerError> {
        let cgroups = CgroupTree::detect(&config.cgroup_parent)?;
        Self::with_cgroups(config, cgroups)
    }

    /// As [`LinuxSpawner::new`] with an explicit cgroup tree.
    pub fn with_cgroups(
        config: LinuxSpawnerConfig,
        cgroups: CgroupTree,
    ) -> Result<Self, ContainerError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.roots_dir)
            .map_err(|e| sys(format!("mkdir {}", config.roots_dir.display()), e))?;
        if config.subreaper {
            nix::sys::prctl::set_child_subreaper(true)
                .map_err(|e| errno("prctl PR_SET_CHILD_SUBREAPER", e))?;
        }
        remove_stale_templates(&config.roots_dir);
        reap_stale_containers(&cgroups, &config.roots_dir);
        Ok(Self {
            config,
            cgroups,
            live: Arc::default(),
            zombies: Mutex::default(),
            templates: Mutex::default(),
        })
    }

    /// The template root for `spec`'s shape, built on first use (see
    /// [`super::init::build_template`]); `None` when it cannot be built (then every such
    /// start builds its root from scratch, as before templates existed).
    fn template_for(&self, spec: &InitSpec) -> Option<PathBuf> {
        if !self.config.template_roots {
            return None;
        }
        let key = TemplateKey::of(spec);
        let mut templates = self.templates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = templates.get(&key) {
            return t.clone();
        }
        static TEMPLATE_SEQ: AtomicU64 = AtomicU64::new(0);
        let n = TEMPLATE_SEQ.fetch_add(1, Ordering::Relaxed);
        let at = self
            .config
            .roots_dir
            .join(format!("{TEMPLATE_PREFIX}{}-{n}", std::process::id()));
        let built = fs::DirBuilder::new()
            .mode(0o700)
            .create(&at)
            .map_err(|e| format!("mkdir {}: {e}", at.display()))
            .and_then(|()| {
                super::init::build_template(&at, spec).map_err(|f| {
                    let _ = super::init::remove_template(&at);
                    format!("{}: {}", f.step, io::Error::from_raw_os_error(f.errno))
                })
            });
        let entry = match built {
            Ok(()) => {
                tracing::debug!(template = %at.display(), "fastcontainer.template built");
                Some(at)
            }
            Err(e) => {
                let _ = fs::remove_dir(&at);
                tracing::warn!(
                    error = %e,
                    "cannot prepare a template root; workers build their root from scratch"
                );
                None
            }
        };
        templates.insert(key, entry.clone());
        entry
    }

    /// The cgroup tree in use.
    pub fn cgroups(&self) -> &CgroupTree {
        &self.cgroups
    }

    /// [`Spawner::spawn`] with the concrete handle type.
    pub fn spawn_linux(&self, spec: &WorkerSpec) -> Result<LinuxWorker, ContainerError> {
        let t0 = Instant::now();
        validate(spec)?;
        // One counter per process, not per spawner: two spawners in one process (tests,
        // a reload) must never pick the same cgroup or root name.
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}@{}.{seq}", sanitize(&spec.domain), manager_id());
        let root = self.config.roots_dir.join(&name);
        let init_spec = init_spec(spec, &root);

        // Host side: run dir, root mount point, cgroup. `Pending` undoes them on error.
        let mut pending = Pending {
            run_dir: Some(spec.run_dir.clone()),
            root: None,
            cgroup: None,
        };
        make_run_dir(spec)?;
        write_files(spec)?;
        make_storage_dirs(spec)?;
        let mut init_spec = init_spec;
        init_spec.template = self.template_for(&init_spec);
        let mut message = Vec::with_capacity(1024);
        serde_json::to_writer(&mut message, &init_spec)
            .map_err(|e| ContainerError::Invalid(format!("spec for {}: {e}", spec.domain)))?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(|e| sys(format!("mkdir {}", root.display()), e))?;
        pending.root = Some(root.clone());
        pending.cgroup = Some(self.cgroups.create(&name, &spec.limits)?);

        let t_cgroup = t0.elapsed();
        let pipe = |what: &str| {
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| errno(format!("pipe ({what})"), e))
        };
        let (spec_r, spec_w) = pipe("spec")?;
        let (status_r, status_w) = pipe("status")?;
        let (exit_r, exit_w) = pipe("exit")?;
        let plan = ChildPlan::new(
            &self.config.init_exe,
            spec_r.as_raw_fd(),
            status_w.as_raw_fd(),
            exit_w.as_raw_fd(),
        )?;
        let mut flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
        if spec.new_net {
            flags |= libc::CLONE_NEWNET;
        }

        // The orphan reaper must never see the child before it is registered as live.
        let (pid, start) = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            let (pid, start) = clone_child(flags as u64, &plan).map_err(|e| errno("clone", e))?;
            live.insert(pid);
            (pid, start)
        };
        if start == ChildStart::AfterGo {
            message.insert(0, b'G');
        }
        let t_clone = t0.elapsed();
        drop((spec_r, status_w, exit_w));
        let (run_dir, root, cgroup) = pending.disarm();
        let worker = LinuxWorker {
            domain: spec.domain.clone(),
            pid,
            cgroup,
            run_dir,
            root,
            exit_pipe: Some(exit_r),
            exit: None,
            live: Arc::clone(&self.live),
            cleaned: false,
        };
        // From here on, dropping `worker` kills and cleans up.
        let sent = worker.cgroup.add_pid(pid as u32).and_then(|()| {
            let mut spec_w = fs::File::from(spec_w);
            spec_w
                .write_all(&message)
                .map_err(|e| sys("send spec to container-init", e))
        });
        if let Err(e) = sent {
            // A child started with `ChildStart::Execed` whose exec failed is already gone;
            // its report on the status pipe says why, better than the attach or send error.
            if start == ChildStart::Execed
                && let Ok(Some(f)) = read_status(status_r, Duration::from_millis(200))
            {
                return Err(sys(f.step, io::Error::from_raw_os_error(f.errno)));
            }
            return Err(e);
        }
        let t_attach = t0.elapsed();
        match read_status(status_r, spec.start_timeout.max(Duration::from_secs(1))) {
            Ok(None) => {
                // Where the time goes (cumulative, µs): cgroup created, cloned, attached
                // and spec sent, worker exec'd.
                tracing::debug!(
                    domain = %spec.domain,
                    pid,
                    cgroup_us = t_cgroup.as_micros() as u64,
                    clone_us = t_clone.as_micros() as u64,
                    attach_us = t_attach.as_micros() as u64,
                    exec_us = t0.elapsed().as_micros() as u64,
                    start = ?start,
                    "fastcontainer.spawn"
                );
                Ok(worker)
            }
            Ok(Some(f)) => Err(sys(f.step, io::Error::from_raw_os_error(f.errno))),
            Err(StatusError::TimedOut(waited)) => {
                let _ = worker.signal(libc::SIGKILL);
                Err(ContainerError::NotReady {
                    domain: spec.domain.clone(),
                    waited,
                    exit: None,
                })
            }
            Err(StatusError::Io(e)) => Err(sys("read container-init status", e)),
        }
    }

    /// Reaps exited children of this process that are not workers: orphans reparented to
    /// us as the subreaper. A zombie is reaped only when it was already a zombie at the
    /// previous call, so a child whose owner is about to `wait` for it (e.g. a
    /// `std::process::Command`) is left alone; call this periodically (every few
    /// seconds). Returns how many were reaped.
    pub fn reap_orphans(&self) -> usize {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = self.zombies.lock().unwrap_or_else(|e| e.into_inner());
        let now: HashSet<i32> = own_children()
            .into_iter()
            .filter(|pid| !live.contains(pid) && is_zombie(*pid))
            .collect();
        let mut reaped = 0;
        for pid in now.intersection(&seen) {
            let mut st = 0;
            // SAFETY: waitpid on one pid, writing into our local.
            if unsafe { libc::waitpid(*pid, &mut st, libc::WNOHANG) } == *pid {
                reaped += 1;
            }
        }
        *seen = now;
        reaped
    }
}

impl Spawner for LinuxSpawner {
    fn spawn(&self, spec: &WorkerSpec) -> Result<Box<dyn Worker>, ContainerError> {
        Ok(Box::new(self.spawn_linux(spec)?))
    }
}

/// Host-side state of a spawn that has not produced a process yet; removed on drop.
struct Pending {
    run_dir: Option<PathBuf>,
    root: Option<PathBuf>,
    cgroup: Option<WorkerCgroup>,
}

impl Pending {
    fn disarm(&mut self) -> (PathBuf, PathBuf, WorkerCgroup) {
        (
            self.run_dir.take().expect("run dir"),
            self.root.take().expect("root"),
            self.cgroup.take().expect("cgroup"),
        )
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.remove();
        }
        if let Some(root) = self.root.take() {
            let _ = fs::remove_dir(root);
        }
        if let Some(dir) = self.run_dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Checks what the kernel or container-init would otherwise reject less clearly.
fn validate(spec: &WorkerSpec) -> Result<(), ContainerError> {
    let bad = |msg: String| {
        Err(ContainerError::Invalid(format!(
            "worker spec for {:?}: {msg}",
            spec.domain
        )))
    };
    let inside_ok = |p: &Path| {
        p.is_absolute()
            && p.components().any(|c| matches!(c, Component::Normal(_)))
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    };
    if spec.domain.is_empty() || spec.domain.contains('\0') {
        return bad("empty domain".into());
    }
    match spec.argv.first() {
        None => return bad("empty argv".into()),
        Some(p) if !p.starts_with('/') => {
            return bad(format!(
                "argv[0] {p:?} must be an absolute path inside the container"
            ));
        }
        _ => {}
    }
    if spec.argv.iter().any(|a| a.contains('\0')) {
        return bad("argv contains NUL".into());
    }
    for f in &spec.files {
        let p = Path::new(&f.name);
        let plain = matches!(
            p.components().collect::<Vec<_>>()[..],
            [Component::Normal(_)]
        );
        if !plain || f.name.contains('\0') {
            return bad(format!(
                "file {:?} must be a plain name inside the run directory",
                f.name
            ));
        }
    }
    if spec
        .env
        .iter()
        .any(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
    {
        return bad("bad environment variable name or value".into());
    }
    if !spec.run_dir.is_absolute() {
        return bad(format!(
            "run_dir {} must be absolute",
            spec.run_dir.display()
        ));
    }
    if !inside_ok(&spec.run_dir_inside) {
        return bad(format!(
            "run_dir_inside {} must be an absolute path below / without `..`",
            spec.run_dir_inside.display()
        ));
    }
    for m in &spec.mounts {
        if !m.source.is_absolute() {
            return bad(format!(
                "mount source {} must be absolute",
                m.source.display()
            ));
        }
        if !inside_ok(&m.target) {
            return bad(format!(
                "mount target {} must be an absolute path below / without `..`",
                m.target.display()
            ));
        }
    }
    Ok(())
}

/// The JSON handed to container-init.
fn init_spec(spec: &WorkerSpec, root: &Path) -> InitSpec {
    // The kernel's limit for a hostname is 64 bytes; domains are ASCII (IDNA).
    let mut hostname = spec.domain.clone();
    while hostname.len() > 64 {
        hostname.pop();
    }
    InitSpec {
        hostname,
        argv: spec.argv.clone(),
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        uid: spec.uid,
        gid: spec.gid,
        root: root.to_path_buf(),
        run_dir: spec.run_dir.clone(),
        run_dir_inside: spec.run_dir_inside.clone(),
        mounts: spec
            .mounts
            .iter()
            .map(|m| InitMount {
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
            })
            .collect(),
        new_net: spec.new_net,
        nofile: spec.nofile,
        template: None,
    }
}

/// The run dir, owned by the worker (it creates its sockets there), mode 0750.
fn make_run_dir(spec: &WorkerSpec) -> Result<(), ContainerError> {
    let dir = &spec.run_dir;
    let step = |what: &str| format!("{what} {}", dir.display());
    fs::create_dir_all(dir).map_err(|e| sys(step("mkdir"), e))?;
    std::os::unix::fs::chown(dir, Some(spec.uid), Some(spec.gid))
        .map_err(|e| sys(step(&format!("chown {}:{}", spec.uid, spec.gid)), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o750)).map_err(|e| sys(step("chmod"), e))
}

/// Writes the spec's generated files into its run directory, owned by the worker.
fn write_files(spec: &WorkerSpec) -> Result<(), ContainerError> {
    for f in &spec.files {
        let path = spec.run_dir.join(&f.name);
        let step = |what: &str| format!("{what} {}", path.display());
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(f.mode)
            .open(&path)
            .map_err(|e| sys(step("create"), e))?;
        file.write_all(&f.contents)
            .map_err(|e| sys(step("write"), e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode))
            .map_err(|e| sys(step("chmod"), e))?;
        std::os::unix::fs::chown(&path, Some(spec.uid), Some(spec.gid))
            .map_err(|e| sys(step(&format!("chown {}:{}", spec.uid, spec.gid)), e))?;
    }
    Ok(())
}

/// Creates missing sources of read-write mounts (a new domain's storage), owned by the
/// worker and private to it. Existing directories are left as they are.
fn make_storage_dirs(spec: &WorkerSpec) -> Result<(), ContainerError> {
    for m in spec.mounts.iter().filter(|m| !m.read_only) {
        if m.source.exists() {
            continue;
        }
        let step = |what: &str| format!("{what} {}", m.source.display());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&m.source)
            .map_err(|e| sys(step("mkdir"), e))?;
        std::os::unix::fs::chown(&m.source, Some(spec.uid), Some(spec.gid))
            .map_err(|e| sys(step(&format!("chown {}:{}", spec.uid, spec.gid)), e))?;
    }
    Ok(())
}

impl Drop for LinuxSpawner {
    fn drop(&mut self) {
        let templates = self.templates.get_mut().unwrap_or_else(|e| e.into_inner());
        for at in templates.values().flatten() {
            let _ = super::init::remove_template(at);
            let _ = fs::remove_dir(at);
        }
    }
}

/// This process as `<pid>-<start time>` (the start time in clock ticks since boot, field
/// 22 of `/proc/self/stat`): unique among the processes of one boot, unlike the pid alone,
/// which a later manager may get again (always, in a pid namespace of its own).
fn manager_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        match start_time(pid) {
            Some(t) => format!("{pid}-{t}"),
            None => pid.to_string(),
        }
    })
}

/// Start time of process `pid` in clock ticks since boot, from `/proc/<pid>/stat`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: fields after
    // the last `)` start at field 3 (state); the start time is field 22.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The manager in a worker name `<sanitized domain>@<pid>-<start time>.<sequence>` (or
/// `@<pid>.<sequence>` from older versions): its pid and, when present, its start time.
fn manager_of(name: &str) -> Option<(u32, Option<u64>)> {
    let (_, tail) = name.rsplit_once('@')?;
    let (id, seq) = tail.split_once('.')?;
    seq.parse::<u64>().ok()?;
    match id.split_once('-') {
        Some((pid, start)) => Some((pid.parse().ok()?, Some(start.parse().ok()?))),
        None => Some((id.parse().ok()?, None)),
    }
}

/// True when the manager named in a worker name no longer runs: no such pid, or the pid
/// now belongs to a process that started at another time (pid reuse).
fn manager_gone(pid: u32, start: Option<u64>) -> bool {
    match (start_time(pid), start) {
        (None, _) => true,
        (Some(now), Some(then)) => now != then,
        // An old-style name: only the pid to go by.
        (Some(_), None) => false,
    }
}

/// Stops the containers of managers that are gone (killed with SIGKILL, OOM-killed,
/// crashed): their workers keep running, since nothing ties a container's life to its
/// manager's, and must not serve a domain next to a new worker on the same storage. Every
/// worker cgroup under our parent whose name carries the pid of a process that no longer
/// exists has its processes killed and is removed, with its root mount point. Returns how
/// many were stopped.
fn reap_stale_containers(cgroups: &CgroupTree, roots_dir: &Path) -> usize {
    let mut names: Vec<String> = Vec::new();
    for parent in cgroups.parent_dirs() {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Some((pid, start)) = manager_of(&name) else {
                continue;
            };
            let ours = name
                .rsplit_once('@')
                .is_some_and(|(_, t)| t.starts_with(&format!("{}.", manager_id())));
            let gone = !ours && manager_gone(pid, start);
            if gone && e.path().is_dir() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let mut stopped = 0;
    for name in names {
        let Ok(cg) = cgroups.existing(&name) else {
            continue;
        };
        let procs = cg.procs().map(|p| p.len()).unwrap_or(0);
        match cg.remove() {
            Ok(()) => {
                stopped += 1;
                let _ = fs::remove_dir(roots_dir.join(&name));
                tracing::warn!(
                    container = %name,
                    processes = procs,
                    "stopped a container left by a wasmail manager that is gone"
                );
            }
            Err(e) => tracing::error!(
                container = %name,
                error = %e,
                "cannot stop a container left by a wasmail manager that is gone"
            ),
        }
    }
    stopped
}

/// Detaches and removes template roots in `roots_dir` left by managers that are gone
/// (killed before their spawner was dropped).
fn remove_stale_templates(roots_dir: &Path) {
    let Ok(entries) = fs::read_dir(roots_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMPLATE_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = super::init::remove_template(&e.path());
        if fs::remove_dir(e.path()).is_ok() {
            tracing::info!(template = %e.path().display(), "removed a stale template root");
        }
    }
}

/// Sequence numbers for worker names (cgroups, root mount points) in this process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Everything the cloned child touches, allocated before the clone.
struct ChildPlan {
    exe: CString,
    /// Owns the strings `argv_ptrs` points into.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    spec_r: RawFd,
    status_w: RawFd,
    exit_w: RawFd,
}

/// Reported by the child when the exec of container-init fails.
const EXEC_FAILED: &[u8] = b"exec container-init";

impl ChildPlan {
    fn new(
        exe: &Path,
        spec_r: RawFd,
        status_w: RawFd,
        exit_w: RawFd,
    ) -> Result<Self, ContainerError> {
        use std::os::unix::ffi::OsStrExt;
        let exe = CString::new(exe.as_os_str().as_bytes())
            .map_err(|_| ContainerError::Invalid("init_exe contains NUL".into()))?;
        let argv: Vec<CString> = [
            "wasmail".to_string(),
            "container-init".into(),
            "--spec-fd".into(),
            spec_r.to_string(),
            "--status-fd".into(),
            status_w.to_string(),
            "--exit-fd".into(),
            exit_w.to_string(),
        ]
        .into_iter()
        .map(|a| CString::new(a).expect("no NUL"))
        .collect();
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        Ok(Self {
            exe,
            _argv: argv,
            argv_ptrs,
            envp_ptrs: vec![std::ptr::null()],
            spec_r,
            status_w,
            exit_w,
        })
    }
}

/// `struct clone_args` (kernel ≥ 5.7 layout, `CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// How the cloned child starts container-init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildStart {
    /// Cloned sharing our memory (`CLONE_VM|CLONE_VFORK`, as `posix_spawn` does): the child
    /// execs container-init at once, which then blocks reading its spec; the spec is sent
    /// after the cgroup attach, so no worker code runs outside its cgroup (container-init's
    /// own start-up, ~1 ms of trusted code, does).
    Execed,
    /// Cloned like `fork` (the fallback when the above is refused): the child waits for the
    /// byte `G` on the spec pipe, sent after the cgroup attach, before it execs.
    AfterGo,
}

/// Size of the stack the `CLONE_VM` child runs on until its exec.
const CHILD_STACK: usize = 64 * 1024;

/// Clones into new namespaces (`flags`); the child execs container-init and never returns
/// here. Returns the child's host pid and how it starts. Tries [`ChildStart::Execed`]
/// first (no copy of the manager's page tables, no teardown of that copy at the exec: the
/// manager is a large multi-threaded process), then [`ChildStart::AfterGo`].
fn clone_child(flags: u64, plan: &ChildPlan) -> Result<(i32, ChildStart), Errno> {
    // No signal handler of the manager may run in the child between clone and exec: block
    // everything around the clone (the child keeps the full mask through the exec;
    // container-init sets its own).
    let mut old = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )?;
    let r = clone_vm(flags, plan)
        .map(|pid| (pid, ChildStart::Execed))
        .or_else(|_| clone_fork(flags, plan).map(|pid| (pid, ChildStart::AfterGo)));
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    r
}

/// `clone(CLONE_VM|CLONE_VFORK|flags)` on a stack of its own: this thread sleeps until the
/// child has exec'd container-init (or failed and exited).
fn clone_vm(flags: u64, plan: &ChildPlan) -> Result<i32, Errno> {
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `&ChildPlan` passed below, alive while we run (the parent
        // is suspended until we exec or exit); see `exec_init`.
        unsafe { exec_init(&*(arg as *const ChildPlan)) }
    }
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down; align its top to 16 bytes as the ABI requires.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let flags = flags as libc::c_int | libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: glibc's clone runs `entry` on `stack` in a child sharing our memory while
    // this thread is suspended (CLONE_VFORK), so nothing else touches the stack or the
    // plan meanwhile. `entry` makes only async-signal-safe calls (fcntl, execve, write,
    // _exit) with all signals blocked, allocates nothing and takes no lock.
    let pid = unsafe {
        libc::clone(
            entry,
            top as *mut libc::c_void,
            flags,
            plan as *const ChildPlan as *mut libc::c_void,
        )
    };
    drop(stack);
    if pid < 0 { Err(Errno::last()) } else { Ok(pid) }
}

/// Clones like `fork`: the child runs [`child_after_clone`].
fn clone_fork(flags: u64, plan: &ChildPlan) -> Result<i32, Errno> {
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork: the child gets
    // a copy of this thread's stack and returns 0 here. It only runs
    // `child_after_clone`, which makes async-signal-safe calls and never returns.
    let mut r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 && Errno::last() == Errno::ENOSYS {
        // Kernels before 5.3. With a null stack every argument order is the same.
        // SAFETY: as above (fork semantics).
        r = unsafe { libc::syscall(libc::SYS_clone, flags | libc::SIGCHLD as u64, 0, 0, 0, 0) };
    }
    if r == 0 {
        // SAFETY: we are the freshly cloned child; see `child_after_clone`.
        unsafe { child_after_clone(plan) }
    }
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as i32)
    }
}

/// The fork-like child, before exec: waits for the go byte, then execs.
///
/// # Safety
/// Must only be called in the child of [`clone_fork`]. The parent is multi-threaded, so
/// this makes only async-signal-safe calls (read, fcntl, execve, write, _exit), allocates
/// nothing and takes no lock; everything it reads was prepared before the clone.
unsafe fn child_after_clone(plan: &ChildPlan) -> ! {
    // SAFETY: raw syscalls on descriptors and buffers prepared before the clone; see the
    // function's safety section.
    unsafe {
        // Wait until the parent has put us into the cgroup (one byte) or gave up (EOF).
        let mut b = 0u8;
        loop {
            let r = libc::read(plan.spec_r, (&mut b as *mut u8).cast(), 1);
            if r == 1 {
                break;
            }
            if r < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            libc::_exit(1);
        }
        exec_init(plan)
    }
}

/// Execs container-init with the three descriptors inherited; on failure reports errno and
/// the step on the status pipe and exits 127.
///
/// # Safety
/// Only in a freshly cloned child (either kind): async-signal-safe calls only, on data
/// prepared before the clone. With `CLONE_VM` the fd table is still the child's own (no
/// `CLONE_FILES`), so clearing close-on-exec does not touch the parent's descriptors.
unsafe fn exec_init(plan: &ChildPlan) -> ! {
    // SAFETY: see the function's safety section.
    unsafe {
        for fd in [plan.spec_r, plan.status_w, plan.exit_w] {
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
        libc::execve(
            plan.exe.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );
        let e = (*libc::__errno_location()).to_le_bytes();
        libc::write(plan.status_w, e.as_ptr().cast(), e.len());
        libc::write(
            plan.status_w,
            EXEC_FAILED.as_ptr().cast(),
            EXEC_FAILED.len(),
        );
        libc::_exit(127)
    }
}

enum StatusError {
    TimedOut(Duration),
    Io(io::Error),
}

/// Reads the status pipe to EOF: `None` = the worker exec'd, `Some` = a setup failure.
fn read_status(pipe: OwnedFd, timeout: Duration) -> Result<Option<Failure>, StatusError> {
    let start = Instant::now();
    let mut file = fs::File::from(pipe);
    let mut buf = Vec::new();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(StatusError::TimedOut(start.elapsed()));
        }
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 60_000) as libc::c_int;
        // SAFETY: poll on one pollfd we own.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => continue,
            r if r < 0 => match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(StatusError::Io(e.into())),
            },
            _ => {}
        }
        let mut chunk = [0u8; 512];
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StatusError::Io(e)),
        }
    }
    if buf.is_empty() {
        return Ok(None);
    }
    Ok(Some(Failure::decode(&buf).unwrap_or(Failure {
        step: "container-init sent a truncated status".into(),
        errno: libc::EPROTO,
    })))
}

/// Pids of this process's children (every thread's `children` list).
fn own_children() -> Vec<i32> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for t in tasks.flatten() {
        if let Ok(list) = fs::read_to_string(t.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// One running container (see the module docs). Dropping a worker that was not cleaned
/// up kills it (SIGKILL to its PID 1 takes the whole pid namespace down), reaps it and
/// cleans up, so a failed caller never leaks a container.
#[derive(Debug)]
pub struct LinuxWorker {
    domain: String,
    pid: i32,
    cgroup: WorkerCgroup,
    run_dir: PathBuf,
    root: PathBuf,
    /// PID 1 writes the worker's raw wait status here before exiting.
    exit_pipe: Option<OwnedFd>,
    /// Set once PID 1 has been reaped (its pid may be reused after that).
    exit: Option<Exit>,
    live: Arc<Mutex<HashSet<i32>>>,
    cleaned: bool,
}

fn decode_status(st: i32) -> Exit {
    if libc::WIFSIGNALED(st) {
        Exit::Signal(libc::WTERMSIG(st))
    } else {
        Exit::Code(libc::WEXITSTATUS(st))
    }
}

impl LinuxWorker {
    /// The domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The worker's cgroup.
    pub fn cgroup(&self) -> &WorkerCgroup {
        &self.cgroup
    }

    /// The host directory the root tmpfs is mounted on inside the container (empty on
    /// the host; removed by cleanup).
    pub fn root_mount_point(&self) -> &Path {
        &self.root
    }

    /// Waits for PID 1 (blocking when `block`); records and returns the worker's exit.
    fn wait(&mut self, block: bool) -> Option<Exit> {
        if self.exit.is_some() {
            return self.exit;
        }
        let flags = if block { 0 } else { libc::WNOHANG };
        let mut st = 0;
        let r = loop {
            // SAFETY: waitpid on our own child, writing into our local.
            let r = unsafe { libc::waitpid(self.pid, &mut st, flags) };
            if r < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            break r;
        };
        if r == 0 {
            return None;
        }
        let init_exit = if r < 0 {
            // Someone else reaped it (a stray waitpid(-1) elsewhere in the process).
            tracing::warn!(domain = %self.domain, pid = self.pid, "container init was reaped elsewhere");
            Exit::Signal(libc::SIGKILL)
        } else {
            decode_status(st)
        };
        // The worker's own status, if PID 1 lived to report it.
        let worker_exit = self.exit_pipe.take().and_then(|fd| {
            let mut b = [0u8; 4];
            let mut f = fs::File::from(fd);
            let _ = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
            match f.read(&mut b) {
                Ok(4) => Some(decode_status(i32::from_le_bytes(b))),
                _ => None,
            }
        });
        let exit = worker_exit.unwrap_or(init_exit);
        self.exit = Some(exit);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid);
        self.exit
    }
}

impl Worker for LinuxWorker {
    fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Signalling a worker that has already been reaped is a no-op.
    fn signal(&self, signal: i32) -> Result<(), ContainerError> {
        if self.exit.is_some() {
            return Ok(());
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child,
        // so it cannot have been reused.
        Errno::result(unsafe { libc::kill(self.pid, signal) })
            .map(drop)
            .map_err(|e| errno(format!("kill {} ({})", self.pid, self.domain), e))
    }

    fn try_exit(&mut self) -> Option<Exit> {
        self.wait(false)
    }

    fn usage(&self) -> Result<Usage, ContainerError> {
        self.cgroup.usage()
    }

    fn set_limits(&self, limits: &Limits) -> Result<(), ContainerError> {
        self.cgroup.set_limits(limits)
    }

    /// Kills the container if it still runs, then removes the cgroup, the run dir and the
    /// root mount point. Idempotent.
    fn cleanup(&mut self) -> Result<(), ContainerError> {
        if self.cleaned {
            return Ok(());
        }
        if self.exit.is_none() {
            let _ = self.signal(libc::SIGKILL);
            self.wait(true);
        }
        let mut result = self.cgroup.remove();
        let mut keep = |r: Result<(), ContainerError>| {
            if result.is_ok() {
                result = r;
            }
        };
        match fs::remove_dir_all(&self.run_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                keep(Err(sys(format!("remove {}", self.run_dir.display()), e)));
            }
            _ => {}
        }
        match fs::remove_dir(&self.root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                keep(Err(sys(format!("rmdir {}", self.root.display()), e)));
            }
            _ => {}
        }
        self.cleaned = result.is_ok();
        result
    }
}

impl Drop for LinuxWorker {
    fn drop(&mut self) {
        if !self.cleaned
            && let Err(e) = self.cleanup()
        {
            tracing::warn!(domain = %self.domain, error = %e, "container cleanup on drop failed");
        }
    }
}

/// Waits until `spec.ready` accepts a connection (probing every ~200 µs) and returns how
/// long that took; [`ContainerError::NotReady`] after `spec.start_timeout`, or at once
/// (with its exit) when the worker dies first. Blocking: call it from a blocking thread.
pub fn wait_ready(spec: &WorkerSpec, worker: &mut dyn Worker) -> Result<Duration, ContainerError> {
    let start = Instant::now();
    loop {
        let accepted = match &spec.ready {
            Endpoint::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            Endpoint::Tcp(addr) => {
                std::net::TcpStream::connect_timeout(addr, Duration::from_millis(100)).is_ok()
            }
        };
        if accepted {
            return Ok(start.elapsed());
        }
        let exit = worker.try_exit();
        if exit.is_some() || start.elapsed() >= spec.start_timeout {
            return Err(ContainerError::NotReady {
                domain: spec.domain.clone(),
                waited: start.elapsed(),
                exit,
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastcontainer::BindMount;

    fn spec() -> WorkerSpec {
        WorkerSpec {
            domain: "example.org".into(),
            argv: vec!["/usr/bin/worker".into()],
            env: Default::default(),
            uid: 0,
            gid: 0,
            run_dir: "/run/wasmail/w/example.org".into(),
            run_dir_inside: "/run/worker".into(),
            mounts: vec![BindMount {
                source: "/usr".into(),
                target: "/usr".into(),
                read_only: true,
            }],
            new_net: false,
            limits: Limits::default(),
            nofile: 1024,
            ready: Endpoint::Unix("/run/wasmail/w/example.org/sock".into()),
            start_timeout: Duration::from_secs(1),
            files: Vec::new(),
        }
    }

    #[test]
    fn specs_are_validated() {
        assert!(validate(&spec()).is_ok());
        type Edit = Box<dyn Fn(&mut WorkerSpec)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("empty argv", Box::new(|s| s.argv.clear())),
            (
                "must be an absolute path inside",
                Box::new(|s| s.argv[0] = "worker".into()),
            ),
            (
                "run_dir_inside",
                Box::new(|s| s.run_dir_inside = "/".into()),
            ),
            (
                "run_dir_inside",
                Box::new(|s| s.run_dir_inside = "/a/../b".into()),
            ),
            (
                "mount target",
                Box::new(|s| s.mounts[0].target = "usr".into()),
            ),
            (
                "mount source",
                Box::new(|s| s.mounts[0].source = "usr".into()),
            ),
            (
                "environment",
                Box::new(|s| {
                    s.env.insert("A=B".into(), "c".into());
                }),
            ),
            ("empty domain", Box::new(|s| s.domain.clear())),
        ];
        for (want, edit) in cases {
            let mut s = spec();
            edit(&mut s);
            let err = validate(&s).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn worker_names_carry_the_manager_and_its_start_time() {
        let id = manager_id();
        let (pid, start) = id.split_once('-').unwrap();
        assert_eq!(pid, std::process::id().to_string());
        let name = format!("mail.example.com@{id}.7");
        let (p, s) = manager_of(&name).unwrap();
        assert_eq!(p, std::process::id());
        assert_eq!(s, Some(start.parse().unwrap()));
        assert!(!manager_gone(p, s), "this process is alive");
        // The same pid with another start time: a reused pid, so the manager is gone.
        assert!(manager_gone(p, Some(s.unwrap() + 1)));
        // Old-style names (pid only) and pids that do not exist.
        assert_eq!(manager_of("a.example@123.4"), Some((123, None)));
        assert!(manager_gone(u32::MAX - 1, None));
        assert_eq!(manager_of("no-manager"), None);
        assert_eq!(manager_of("a@1-x.2"), None);
    }

    #[test]
    fn init_spec_truncates_the_hostname() {
        let mut s = spec();
        s.domain = format!("{}.example", "a".repeat(70));
        let i = init_spec(&s, Path::new("/r"));
        assert_eq!(i.hostname.len(), 64);
        assert_eq!(i.mounts.len(), 1);
        assert_eq!(i.root, PathBuf::from("/r"));
    }

    #[test]
    fn wait_statuses_decode() {
        // 3 << 8: exited with 3; 9: killed by SIGKILL.
        assert_eq!(decode_status(3 << 8), Exit::Code(3));
        assert_eq!(decode_status(9), Exit::Signal(9));
    }

    /// A double-forked grandchild comes back to us as the subreaper, and is reaped on the
    /// second sighting as a zombie (root not needed).
    #[test]
    fn orphans_come_back_and_are_reaped() {
        let tmp = tempfile::tempdir().unwrap();
        let spawner = LinuxSpawner {
            config: LinuxSpawnerConfig {
                roots_dir: tmp.path().into(),
                ..LinuxSpawnerConfig::default()
            },
            cgroups: CgroupTree::v2(tmp.path(), "x").unwrap(),
            live: Arc::default(),
            zombies: Mutex::default(),
            templates: Mutex::default(),
        };
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let pidfile = tmp.path().join("pid");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sleep 0.05 & echo $! > {}", pidfile.display()))
            .status()
            .unwrap();
        assert!(status.success());
        let orphan: i32 = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut reaped = 0;
        while Instant::now() < deadline {
            reaped += spawner.reap_orphans();
            if !Path::new(&format!("/proc/{orphan}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(reaped >= 1, "the orphan {orphan} was not reaped");
    }
}
