//! `wasmail container-init`: the built-in PID 1 of every FastContainer.
//!
//! [`super::spawn::LinuxSpawner`] clones a child into new mount, pid, uts, ipc (and
//! optionally net) namespaces, puts it into the worker's cgroup, and the child execs
//! `/proc/self/exe container-init`: a fresh, single-threaded copy of wasmail, so everything
//! here may allocate and use ordinary library calls. Its job, in order:
//!
//! 1. read the [`InitSpec`] (JSON) from the spec pipe;
//! 2. set the hostname to the domain; make every mount private (`MS_REC|MS_PRIVATE` on
//!    `/`), so nothing propagates back to the host even where `/` is shared;
//! 3. build the root: a tmpfs on the spec's root dir, each bind mount in order (read-only
//!    ones remounted `MS_RDONLY`; all `nosuid,nodev`; a symlinked source such as Debian's
//!    `/bin -> usr/bin` is recreated as the same symlink), the run dir, a fresh `/proc`
//!    (with `/proc/sys` read-only), a minimal `/dev` (null, zero, full, random, urandom
//!    bound from the host, the fd symlinks, a `/dev/shm` tmpfs) and a `/tmp` tmpfs. When
//!    the spawner prepared a template root for this worker shape ([`build_template`],
//!    [`InitSpec::template`]), the root is instead one recursive bind of the template
//!    (read-only tmpfs, system binds, `/dev` nodes, mount points) plus the storage and run
//!    dir binds, `/proc`, `/dev/shm` and `/tmp`;
//! 4. `pivot_root` into it, detach the old root, remount `/` read-only (a template root
//!    is read-only already);
//! 5. bring `lo` up when the container has its own network namespace;
//! 6. fork the worker: reset signals, new session, rlimits (`RLIMIT_NOFILE`, no core
//!    dumps), drop the capability bounding set and ambient set, `setgroups([])`, setgid,
//!    setuid, clear every capability set, `PR_SET_NO_NEW_PRIVS`, `execve` with exactly the
//!    spec's environment;
//! 7. supervise: forward SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 to the worker
//!    (a pid-namespace init ignores signals it has no handler for, so forwarding is what
//!    makes a plain `kill -TERM <pid>` from the host work), reap every zombie, and when
//!    the worker exits: SIGKILL whatever is left in the namespace, reap it, write the
//!    worker's wait status to the exit pipe and exit with the worker's code (128 + signal
//!    when it was killed; the parent reads the exact status from the pipe).
//!
//! Any failure in steps 1–6 is written to the status pipe as `errno` (4 bytes, little
//! endian) followed by the step (`mount /usr on /usr`, `exec /usr/bin/worker`, ...), and
//! the parent turns it into [`super::ContainerError::Sys`]. The status pipe is close-on-exec
//! in the worker, so the parent sees EOF exactly when the worker's `execve` succeeded.

use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

/// What `container-init` needs, sent by the spawner over the spec pipe as JSON. A private
/// mirror of [`super::WorkerSpec`] (plus the host root mount point), so the public type
/// needs no serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InitSpec {
    /// Hostname inside the container (the domain, at most 64 bytes).
    pub hostname: String,
    /// The worker's argv; argv[0] is an absolute path inside the container.
    pub argv: Vec<String>,
    /// The worker's whole environment.
    pub env: Vec<(String, String)>,
    /// uid the worker runs as.
    pub uid: u32,
    /// gid the worker runs as.
    pub gid: u32,
    /// Host directory (empty, created by the spawner) on which the root tmpfs is mounted
    /// inside the container's mount namespace.
    pub root: PathBuf,
    /// Host run dir, bound read-write at `run_dir_inside`.
    pub run_dir: PathBuf,
    /// Where the run dir appears inside.
    pub run_dir_inside: PathBuf,
    /// The bind mounts, in order.
    pub mounts: Vec<InitMount>,
    /// Bring `lo` up (the container has its own network namespace).
    pub new_net: bool,
    /// RLIMIT_NOFILE for the worker.
    pub nofile: u64,
    /// A read-only template root prepared by the spawner in the host's mount namespace
    /// ([`build_template`]) for this spec's shape: when set, the root is one recursive bind
    /// of it instead of a fresh tmpfs plus every system bind mount and `/dev` node.
    #[serde(default)]
    pub template: Option<PathBuf>,
}

/// One bind mount of an [`InitSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InitMount {
    /// Host path.
    pub source: PathBuf,
    /// Absolute path inside.
    pub target: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

/// A failed setup step: what was being done and the OS error.
#[derive(Debug)]
pub(crate) struct Failure {
    pub step: String,
    pub errno: i32,
}

impl Failure {
    fn new(step: impl Into<String>, errno: i32) -> Self {
        Self {
            step: step.into(),
            errno,
        }
    }

    /// The wire form on the status pipe: errno (i32 LE) then the step.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = self.errno.to_le_bytes().to_vec();
        b.extend_from_slice(self.step.as_bytes());
        b
    }

    /// Parses [`Failure::encode`]'s output; `None` for fewer than 4 bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let errno = i32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
        Some(Self::new(String::from_utf8_lossy(&bytes[4..]), errno))
    }
}

trait Step<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T> Step<T> for nix::Result<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(step(), e as i32))
    }
}

impl<T> Step<T> for io::Result<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(step(), e.raw_os_error().unwrap_or(libc::EIO)))
    }
}

/// Signals PID 1 passes on to the worker.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Entry point of `wasmail container-init`; returns the process exit code. The three fds
/// are inherited from the spawner (see the module docs).
pub fn run(spec_fd: RawFd, status_fd: RawFd, exit_fd: RawFd) -> i32 {
    for fd in [spec_fd, status_fd, exit_fd] {
        // SAFETY: fcntl on an fd number has no memory-safety preconditions.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: the spawner passed us these descriptors; we are their only owner here.
    let mut status = unsafe { fs::File::from_raw_fd(status_fd) };
    // SAFETY: as above.
    let exit = unsafe { fs::File::from_raw_fd(exit_fd) };
    let worker = match setup(spec_fd, status_fd) {
        Ok(w) => w,
        Err(f) => {
            let _ = status.write_all(&f.encode());
            return 1;
        }
    };
    // The worker holds the only other copy of the status pipe, close-on-exec.
    drop(status);
    supervise(worker, exit)
}

fn setup(spec_fd: RawFd, status_fd: RawFd) -> Result<Pid, Failure> {
    let spec = read_spec(spec_fd)?;
    nix::unistd::sethostname(&spec.hostname).step(|| format!("sethostname {}", spec.hostname))?;
    mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .step(|| "make / private".into())?;
    build_root(&spec)?;
    pivot(&spec.root, spec.template.is_some())?;
    if spec.new_net {
        loopback_up().step(|| "bring up lo".into())?;
    }
    // Block the forwarded signals and SIGCHLD before the fork, so none is lost between
    // the fork and the first sigwait; the worker unblocks everything.
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set.thread_set_mask().step(|| "sigprocmask".into())?;
    // SAFETY: container-init is single-threaded, so the child may do anything.
    match unsafe { nix::unistd::fork() }.step(|| "fork worker".into())? {
        nix::unistd::ForkResult::Parent { child } => Ok(child),
        nix::unistd::ForkResult::Child => {
            let Err(f) = exec_worker(&spec);
            // The status fd is still open here (it is only close-on-exec).
            let msg = f.encode();
            // SAFETY: `write` on the status fd from a buffer we own; `_exit` ends the
            // forked child without running the parent's destructors.
            unsafe {
                libc::write(status_fd, msg.as_ptr().cast(), msg.len());
                libc::_exit(127)
            }
        }
    }
}

fn read_spec(fd: RawFd) -> Result<InitSpec, Failure> {
    // SAFETY: the spawner passed this descriptor; we are its only owner.
    let mut f = unsafe { fs::File::from_raw_fd(fd) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).step(|| "read spec".into())?;
    // A fork-like start gets the go byte `G` first (see the spawner's `ChildStart`).
    let json = buf.strip_prefix(b"G").unwrap_or(&buf);
    serde_json::from_slice(json).map_err(|e| Failure::new(format!("parse spec: {e}"), libc::EINVAL))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    nix::mount::mount(source, target, fstype, flags, data)
}

/// Creates the directories of `inside` under `root`, refusing to walk through a symlink
/// (a recreated `/bin -> usr/bin` must not lead a later mount point out of the root).
fn make_dirs(root: &Path, inside: &Path, mount: &str) -> Result<PathBuf, Failure> {
    let mut p = root.to_path_buf();
    for c in inside.components() {
        let Component::Normal(n) = c else { continue };
        p.push(n);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Failure::new(
                    format!(
                        "{mount}: target goes through the symlink {}",
                        display_inside(root, &p)
                    ),
                    libc::ELOOP,
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&p)
                    .step(|| format!("{mount}: mkdir {}", display_inside(root, &p)))?;
            }
            Err(e) => {
                return Err(e).step(|| format!("{mount}: stat {}", display_inside(root, &p)));
            }
        }
    }
    Ok(p)
}

fn display_inside(root: &Path, p: &Path) -> String {
    match p.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => p.display().to_string(),
    }
}

/// Mount flags of the filesystem holding `path` that a bind remount must keep.
fn kept_flags(path: &Path) -> MsFlags {
    match nix::sys::statvfs::statvfs(path) {
        Ok(st) if st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC) => MsFlags::MS_NOEXEC,
        _ => MsFlags::empty(),
    }
}

/// Binds `source` at `inside` (under `root`): directories and files; a symlinked source is
/// recreated as the same symlink.
fn bind(root: &Path, source: &Path, inside: &Path, read_only: bool) -> Result<(), Failure> {
    let what = format!("mount {} on {}", source.display(), inside.display());
    let meta = fs::symlink_metadata(source).step(|| what.clone())?;
    let parent = inside.parent().unwrap_or(Path::new("/"));
    let name = inside.file_name();
    if meta.file_type().is_symlink() {
        let link = fs::read_link(source).step(|| format!("{what}: readlink"))?;
        let dir = make_dirs(root, parent, &what)?;
        let at = dir.join(name.unwrap_or(OsStr::new("")));
        return symlink(&link, &at).step(|| format!("{what}: symlink {}", link.display()));
    }
    let target = if meta.is_dir() {
        make_dirs(root, inside, &what)?
    } else {
        let dir = make_dirs(root, parent, &what)?;
        let file = dir.join(name.unwrap_or(OsStr::new("")));
        if fs::symlink_metadata(&file).is_err() {
            fs::File::create(&file).step(|| format!("{what}: create mount point"))?;
        }
        file
    };
    mount(Some(source), &target, None, MsFlags::MS_BIND, None).step(|| what.clone())?;
    let mut flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | kept_flags(source);
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None, &target, None, flags, None).step(|| {
        format!(
            "{what}: remount {}",
            if read_only {
                "read-only"
            } else {
                "nosuid,nodev"
            }
        )
    })
}

fn build_root(spec: &InitSpec) -> Result<(), Failure> {
    let root = &spec.root;
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if let Some(template) = &spec.template {
        // Everything that is the same for every worker of this shape is in the template
        // (read-only tmpfs, system binds, /dev nodes, mount points): one recursive bind.
        mount(
            Some(template),
            root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .step(|| format!("bind template {} on {}", template.display(), root.display()))?;
        for m in spec.mounts.iter().filter(|m| !m.read_only) {
            if !is_symlink(&m.source) {
                bind(root, &m.source, &m.target, false)?;
            }
        }
        bind(root, &spec.run_dir, &spec.run_dir_inside, false)?;
        let proc_ = root.join("proc");
        mount_proc(&proc_)?;
        for (dir, opts, extra) in [
            ("dev/shm", "mode=1777", MsFlags::MS_NOEXEC),
            ("tmp", "mode=1777", MsFlags::empty()),
        ] {
            mount(
                None,
                &root.join(dir),
                Some("tmpfs"),
                nosuid_nodev | extra,
                Some(opts),
            )
            .step(|| format!("mount /{dir}"))?;
        }
        return Ok(());
    }
    mount(
        None,
        root,
        Some("tmpfs"),
        nosuid_nodev,
        Some("mode=0755,size=1m"),
    )
    .step(|| format!("mount tmpfs on {}", root.display()))?;
    for m in &spec.mounts {
        bind(root, &m.source, &m.target, m.read_only)?;
    }
    bind(root, &spec.run_dir, &spec.run_dir_inside, false)?;

    let proc_ = make_dirs(root, Path::new("/proc"), "mount /proc")?;
    mount_proc(&proc_)?;
    make_dev(root)?;
    let shm = make_dirs(root, Path::new("/dev/shm"), "mount /dev/shm")?;
    mount(
        None,
        &shm,
        Some("tmpfs"),
        nosuid_nodev | MsFlags::MS_NOEXEC,
        Some("mode=1777"),
    )
    .step(|| "mount /dev/shm".into())?;
    let tmp = make_dirs(root, Path::new("/tmp"), "mount /tmp")?;
    mount(None, &tmp, Some("tmpfs"), nosuid_nodev, Some("mode=1777"))
        .step(|| "mount /tmp".into())?;
    Ok(())
}

fn is_symlink(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

/// A fresh `/proc` for the container's pid namespace on `proc_`, with `/proc/sys` and
/// `/proc/sysrq-trigger` read-only.
fn mount_proc(proc_: &Path) -> Result<(), Failure> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        None,
        proc_,
        Some("proc"),
        nosuid_nodev | MsFlags::MS_NOEXEC,
        None,
    )
    .step(|| "mount /proc".into())?;
    // A root worker without capabilities could still write sysctls owned by uid 0.
    for p in ["sys", "sysrq-trigger"] {
        let at = proc_.join(p);
        if !at.exists() {
            continue; // e.g. a kernel without CONFIG_MAGIC_SYSRQ
        }
        let what = || format!("mount /proc/{p} read-only");
        mount(Some(&at), &at, None, MsFlags::MS_BIND, None).step(what)?;
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev;
        mount(None, &at, None, ro | MsFlags::MS_NOEXEC, None).step(what)?;
    }
    Ok(())
}

/// A minimal `/dev` under `root`: null, zero, full, random, urandom bound from the host and
/// the fd symlinks (`/dev/shm` is mounted per container).
fn make_dev(root: &Path) -> Result<(), Failure> {
    let dev = make_dirs(root, Path::new("/dev"), "mount /dev")?;
    for d in ["null", "zero", "full", "random", "urandom"] {
        let host = Path::new("/dev").join(d);
        let at = dev.join(d);
        let what = || format!("mount {}", host.display());
        fs::File::create(&at).step(what)?;
        mount(Some(&host), &at, None, MsFlags::MS_BIND, None).step(what)?;
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(name)).step(|| format!("symlink /dev/{name}"))?;
    }
    Ok(())
}

/// Prepares the read-only template root for `spec`'s shape at `at` (an empty directory),
/// in the calling process's mount namespace (the spawner's, i.e. the host's): a private
/// tmpfs holding the read-only system binds, the `/dev` nodes and symlinks, and the mount
/// points of the read-write binds, the run dir, `/proc`, `/dev/shm` and `/tmp`; then the
/// tmpfs is remounted read-only. Containers of that shape bind it recursively as their
/// root ([`InitSpec::template`]), which replaces ~14 mount calls and ~20 file operations
/// per start by one. Undo with [`remove_template`].
pub(crate) fn build_template(at: &Path, spec: &InitSpec) -> Result<(), Failure> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        None,
        at,
        Some("tmpfs"),
        nosuid_nodev,
        Some("mode=0755,size=1m"),
    )
    .step(|| format!("mount tmpfs on {}", at.display()))?;
    // Nothing mounted below it may propagate to or from the host's other mounts.
    mount(None, at, None, MsFlags::MS_PRIVATE, None)
        .step(|| format!("make {} private", at.display()))?;
    for m in &spec.mounts {
        if m.read_only {
            bind(at, &m.source, &m.target, true)?;
        } else {
            mount_point(at, &m.source, &m.target)?;
        }
    }
    mount_point(at, &spec.run_dir, &spec.run_dir_inside)?;
    for d in ["/proc", "/dev/shm", "/tmp"] {
        make_dirs(at, Path::new(d), &format!("mount {d}"))?;
    }
    make_dev(at)?;
    mount(
        None,
        at,
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev,
        None,
    )
    .step(|| format!("remount template {} read-only", at.display()))
}

/// Detaches a template made by [`build_template`] (and everything mounted below it).
pub(crate) fn remove_template(at: &Path) -> nix::Result<()> {
    nix::mount::umount2(at, MntFlags::MNT_DETACH)
}

/// What [`bind`] creates before mounting, without the mount: the directory, the empty file
/// or the symlink for `source` at `inside`.
fn mount_point(root: &Path, source: &Path, inside: &Path) -> Result<(), Failure> {
    let what = format!(
        "mount point for {} at {}",
        source.display(),
        inside.display()
    );
    let meta = fs::symlink_metadata(source).step(|| what.clone())?;
    let parent = inside.parent().unwrap_or(Path::new("/"));
    let name = inside.file_name().unwrap_or(OsStr::new(""));
    if meta.file_type().is_symlink() {
        let link = fs::read_link(source).step(|| format!("{what}: readlink"))?;
        let at = make_dirs(root, parent, &what)?.join(name);
        return symlink(&link, &at).step(|| format!("{what}: symlink {}", link.display()));
    }
    if meta.is_dir() {
        make_dirs(root, inside, &what)?;
    } else {
        let file = make_dirs(root, parent, &what)?.join(name);
        fs::File::create(&file).step(|| format!("{what}: create"))?;
    }
    Ok(())
}

fn pivot(root: &Path, template: bool) -> Result<(), Failure> {
    nix::unistd::chdir(root).step(|| format!("chdir {}", root.display()))?;
    nix::unistd::pivot_root(".", ".").step(|| "pivot_root".into())?;
    // The old root is now stacked on top of the new one; detach it.
    nix::mount::umount2(".", MntFlags::MNT_DETACH).step(|| "detach old root".into())?;
    nix::unistd::chdir("/").step(|| "chdir /".into())?;
    if template {
        // The template's tmpfs is read-only (and nosuid,nodev) already.
        return Ok(());
    }
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    mount(None, Path::new("/"), None, ro, None).step(|| "remount / read-only".into())
}

/// `ip link set lo up`, with the classic ioctl (no netlink crate needed).
fn loopback_up() -> nix::Result<()> {
    // SAFETY: socket() has no memory-safety preconditions; the fd is closed below.
    let fd = Errno::result(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq we own; the flags member
    // of the union is the one these requests use.
    let r = unsafe {
        let r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr)
        } else {
            r
        }
    };
    let e = Errno::last();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    if r == 0 { Ok(()) } else { Err(e) }
}

/// In the forked child: drop everything and exec the worker. Returns only on failure.
fn exec_worker(spec: &InitSpec) -> Result<Infallible, Failure> {
    // Ordinary dispositions and an empty mask for the worker (execve keeps both, and
    // SIG_IGN from the manager, e.g. Rust's SIGPIPE, must not leak in).
    for s in Signal::iterator() {
        if s == Signal::SIGKILL || s == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: resetting to SIG_DFL installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) };
    }
    SigSet::empty()
        .thread_set_mask()
        .step(|| "sigprocmask".into())?;
    nix::unistd::setsid().step(|| "setsid".into())?;
    // Nothing but stdio crosses into the worker (the status pipe closes on exec).
    // SAFETY: close_range only changes flags of our own descriptors.
    let r = unsafe {
        libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    };
    if r != 0 {
        mark_cloexec_from_proc().step(|| "mark descriptors close-on-exec".into())?;
    }

    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_NOFILE, spec.nofile, spec.nofile)
        .step(|| format!("setrlimit NOFILE {}", spec.nofile))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).step(|| "setrlimit CORE 0".into())?;

    drop_bounding_set().step(|| "drop capability bounding set".into())?;
    // SAFETY: prctl with integer arguments only.
    Errno::result(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })
    .step(|| "clear ambient capabilities".into())?;
    nix::unistd::setgroups(&[]).step(|| "setgroups []".into())?;
    let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.gid));
    nix::unistd::setresgid(gid, gid, gid).step(|| format!("setgid {}", spec.gid))?;
    nix::unistd::setresuid(uid, uid, uid).step(|| format!("setuid {}", spec.uid))?;
    clear_capabilities().step(|| "capset (clear all)".into())?;
    nix::sys::prctl::set_no_new_privs().step(|| "PR_SET_NO_NEW_PRIVS".into())?;

    let program = &spec.argv[0];
    let cstr = |s: &str, what: &str| {
        CString::new(s).map_err(|_| Failure::new(format!("{what} contains NUL"), libc::EINVAL))
    };
    let path = cstr(program, "argv[0]")?;
    let argv = spec
        .argv
        .iter()
        .map(|a| cstr(a, "argv"))
        .collect::<Result<Vec<_>, _>>()?;
    let env = spec
        .env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}"), "env"))
        .collect::<Result<Vec<_>, _>>()?;
    let e = nix::unistd::execve(&path, &argv, &env).unwrap_err();
    Err(Failure::new(format!("exec {program}"), e as i32))
}

fn mark_cloexec_from_proc() -> io::Result<()> {
    let fds: Vec<RawFd> = fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        // SAFETY: fcntl on an fd number has no memory-safety preconditions.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Drops every capability from the bounding set (needs CAP_SETPCAP, so before setuid).
fn drop_bounding_set() -> nix::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r != 0 {
            return match Errno::last() {
                // Past the last capability this kernel knows.
                Errno::EINVAL if cap > 0 => Ok(()),
                e => Err(e),
            };
        }
    }
    Ok(())
}

/// Clears the effective, permitted and inheritable sets (capset v3).
fn clear_capabilities() -> nix::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads one header and two data structs (v3 layout) that we own.
    Errno::result(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }).map(drop)
}

/// PID 1's loop: forward signals, reap zombies, end with the worker.
fn supervise(worker: Pid, mut exit: fs::File) -> i32 {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    let status = loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(status) = reap(worker) {
                    break status;
                }
            }
            Ok(sig) => {
                let _ = nix::sys::signal::kill(worker, sig);
            }
            Err(_) => {}
        }
    };
    // Anything the worker left behind goes with it. kill(-1) reaches every process this
    // one may signal: only the namespace's own as its PID 1, the whole host otherwise.
    if nix::unistd::getpid().as_raw() == 1 {
        let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
    }
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes the status into our local.
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r < 0 && Errno::last() != Errno::EINTR {
            break;
        }
    }
    let _ = exit.write_all(&status.to_le_bytes());
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// Reaps every exited child; returns the worker's raw wait status if it was among them.
fn reap(worker: Pid) -> Option<i32> {
    let mut worker_status = None;
    loop {
        let mut st = 0;
        // SAFETY: waitpid writes the status into our local.
        let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if pid <= 0 {
            if pid < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            return worker_status;
        }
        if pid == worker.as_raw() {
            worker_status = Some(st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_wire_form_roundtrips() {
        let f = Failure::new("mount /usr on /usr", libc::ENOENT);
        let back = Failure::decode(&f.encode()).unwrap();
        assert_eq!(back.step, "mount /usr on /usr");
        assert_eq!(back.errno, libc::ENOENT);
        assert!(Failure::decode(&[1, 2]).is_none());
    }

    #[test]
    fn paths_inside() {
        assert_eq!(
            display_inside(Path::new("/r"), Path::new("/r/bin/x")),
            "/bin/x"
        );
    }

    #[test]
    fn mount_points_never_follow_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        symlink("/etc", root.join("bin")).unwrap();
        let err = make_dirs(root, Path::new("/bin/sub"), "mount x").unwrap_err();
        assert_eq!(err.errno, libc::ELOOP);
        assert!(err.step.contains("symlink /bin"), "{}", err.step);
        let made = make_dirs(root, Path::new("/a/b"), "mount y").unwrap();
        assert!(made.is_dir());
    }

    #[test]
    fn spec_json_roundtrips() {
        let spec = InitSpec {
            hostname: "example.org".into(),
            argv: vec!["/bin/worker".into(), "--x".into()],
            env: vec![("A".into(), "b".into())],
            uid: 1,
            gid: 2,
            root: "/run/wasmail/roots/x".into(),
            run_dir: "/tmp/run".into(),
            run_dir_inside: "/run/w".into(),
            mounts: vec![InitMount {
                source: "/usr".into(),
                target: "/usr".into(),
                read_only: true,
            }],
            new_net: true,
            nofile: 1024,
            template: None,
        };
        let json = serde_json::to_vec(&spec).unwrap();
        assert_eq!(serde_json::from_slice::<InitSpec>(&json).unwrap(), spec);
    }
}
