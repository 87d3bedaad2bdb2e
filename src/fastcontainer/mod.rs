//! FastContainer manager: every hosted domain's mailbox worker runs in its own lightweight
//! container (namespaces + cgroup limits), spawned when a session for the domain arrives
//! and reaped when idle: FastCGI, for containers.
//!
//! Layers (each a file):
//! - this module: [`WorkerSpec`], what one domain's worker is (argv, env, ids, mounts,
//!   namespaces, limits), and the [`Spawner`] / [`Worker`] traits.
//! - [`config`]: the `[fastcontainer]` section and `spec_for(domain)`, the spec from the
//!   config defaults (the registry may override).
//! - [`cgroup`]: cgroup v1 / v2 detection and the per-worker cgroup (limits, stats,
//!   removal); every writer takes a root path so tests can use a temp dir.
//! - [`spawn`]: [`Spawner`], the privileged part: clone into new namespaces, the built-in
//!   PID 1 (`wasmail container-init`), rootfs from bind mounts + pivot_root, dropped
//!   capabilities, no_new_privs, rlimits, then exec of the worker; and [`Worker`], the
//!   handle to one running container.
//! - [`manager`]: lifecycle: `acquire(domain) -> Lease` (spawn if cold, shared by
//!   concurrent callers), session counting, idle reaping, max lifetime, crash handling
//!   with backoff, prewarm; [`adaptive`]: the per-domain idle timeout from start time and
//!   arrival history; [`metrics`]: counters and their Prometheus rendering.
//!
//! The manager only talks to the [`Spawner`] trait, so its logic is tested with a double;
//! the Linux implementation is tested as root against real namespaces and cgroups.

pub mod adaptive;
pub mod cgroup;
pub mod config;
pub mod init;
pub mod manager;
pub mod metrics;
pub mod spawn;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How a session reaches a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (inside the worker's run dir, seen from the host).
    Unix(PathBuf),
    /// A TCP address (only when the worker shares or has a routed network).
    Tcp(std::net::SocketAddr),
}

/// Resource limits of one worker's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// memory.max / memory.limit_in_bytes, bytes; None = unlimited.
    pub memory_bytes: Option<u64>,
    /// CPU share as thousandths of one CPU (1000 = one full CPU); None = unlimited.
    pub cpu_millis: Option<u32>,
    /// pids.max; None = unlimited.
    pub pids_max: Option<u32>,
}

/// One bind mount into the worker's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container (absolute).
    pub target: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything needed to start one domain's worker. Placeholders (`{domain}`, `{run_dir}`,
/// `{storage}`) are already substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// The domain (also the container's hostname).
    pub domain: String,
    /// `argv[0]` is the program (a path inside the container).
    pub argv: Vec<String>,
    /// Environment (nothing is inherited).
    pub env: BTreeMap<String, String>,
    /// uid/gid the worker runs as (PID 1 stays root inside the namespaces).
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Host directory for this worker's sockets and state (created; removed on reap).
    pub run_dir: PathBuf,
    /// Where `run_dir` appears inside the container.
    pub run_dir_inside: PathBuf,
    /// Bind mounts making up the root filesystem (host system dirs read-only, the
    /// domain's storage read-write), mounted in order.
    pub mounts: Vec<BindMount>,
    /// Also unshare the network namespace (the worker then listens only on unix sockets
    /// in its run dir; loopback is brought up).
    pub new_net: bool,
    /// cgroup limits.
    pub limits: Limits,
    /// RLIMIT_NOFILE for the worker.
    pub nofile: u64,
    /// The endpoint that answers once the worker is ready (probed by connecting).
    pub ready: Endpoint,
    /// Longest wait for `ready` after spawn.
    pub start_timeout: Duration,
    /// Files written into the run directory before the worker starts (generated
    /// configuration, a passdb file), owned by `uid`/`gid`.
    pub files: Vec<WorkerFile>,
}

/// A file the spawner writes into a worker's run directory before starting it.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerFile {
    /// File name inside the run directory (one plain path component).
    pub name: String,
    /// Contents.
    pub contents: Vec<u8>,
    /// Permission bits, e.g. 0o640.
    pub mode: u32,
}

impl std::fmt::Debug for WorkerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Contents may hold password hashes: never print them.
        f.debug_struct("WorkerFile")
            .field("name", &self.name)
            .field("bytes", &self.contents.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// Resource usage read from a worker's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Current memory charge, bytes.
    pub memory_bytes: u64,
    /// CPU time used, microseconds.
    pub cpu_usec: u64,
    /// Processes in the cgroup.
    pub pids: u64,
    /// OOM kills inside the cgroup so far.
    pub oom_kills: u64,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// Errors from spawning or controlling workers.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A system call failed: which step, and the OS error.
    #[error("{step}: {source}")]
    Sys {
        /// What was being done (e.g. "clone", "mount /usr", "write memory.max").
        step: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The worker did not become ready in time (its exit status if it died).
    #[error("worker for {domain} not ready after {waited:?}{}", .exit.map(|e| format!(" (it exited: {e:?})")).unwrap_or_default())]
    NotReady {
        /// The domain.
        domain: String,
        /// How long we waited.
        waited: Duration,
        /// Its exit, if it died.
        exit: Option<Exit>,
    },
    /// Spawning is refused for a while after repeated crashes.
    #[error("worker for {domain} is crash-looping ({crashes} crashes); next try in {retry_in:?}")]
    Backoff {
        /// The domain.
        domain: String,
        /// Crashes in the current streak.
        crashes: u32,
        /// Time until the next spawn is allowed.
        retry_in: Duration,
    },
    /// The configuration or spec is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// The privileged operations, behind a trait so the manager's logic is testable with a
/// double.
pub trait Spawner: Send + Sync + std::fmt::Debug {
    /// Starts a container for `spec`; returns once the process exists (not yet ready).
    fn spawn(&self, spec: &WorkerSpec) -> Result<Box<dyn Worker>, ContainerError>;
}

/// A running container.
pub trait Worker: Send + Sync + std::fmt::Debug {
    /// Host pid of the container's PID 1.
    fn pid(&self) -> u32;
    /// Sends `signal` (e.g. `libc::SIGTERM`) to the container's PID 1, which forwards it.
    fn signal(&self, signal: i32) -> Result<(), ContainerError>;
    /// Non-blocking: has it exited?
    fn try_exit(&mut self) -> Option<Exit>;
    /// Current usage from its cgroup.
    fn usage(&self) -> Result<Usage, ContainerError>;
    /// Changes the limits of the running worker.
    fn set_limits(&self, limits: &Limits) -> Result<(), ContainerError>;
    /// After exit: removes the cgroup and the run dir; leaves no mount behind.
    fn cleanup(&mut self) -> Result<(), ContainerError>;
}
