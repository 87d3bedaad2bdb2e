//! The FastContainer lifecycle manager: one worker per domain, started when a session
//! arrives, shared by the domain's sessions, reaped when idle, replaced when old,
//! respawned after a crash (with backoff when it keeps crashing).
//!
//! [`Manager`] is a cheap, cloneable handle (`Send + Sync`) over a [`Spawner`] and a spec
//! source (`domain → WorkerSpec`, usually [`FastContainerSection::spec_for`] or a registry
//! lookup). Sessions call [`Manager::acquire`] and hold the returned [`Lease`] for as long
//! as they talk to the worker at [`Lease::endpoint`]; [`Manager::run_reaper`] is the
//! background task that stops idle, expired and crashed workers and, at shutdown, all of
//! them.
//!
//! # States
//!
//! ```text
//!                acquire / prewarm              ready endpoint accepts
//!      Cold ───────────────────────▶ Starting ────────────────────────▶ Ready ◀──┐ lease,
//!       ▲  ▲                            │ spawn error, exit, start_timeout  │  │  │ drop
//!       │  └────────────────────────────┘ (crash streak + 1)                │  └──┘
//!       │                                                                   │
//!       │          exits on its own (crash streak + 1; next acquire respawns)
//!       │◀──────────────────────────────────────────────────────────────────┤
//!       │                                                                   │ older than
//!       │                 idle ≥ timeout with 0 sessions, stop(), shutdown  │ max_lifetime:
//!       │◀── Stopped ◀── Stopping ◀────────────────────────────────────────┤ a replacement
//!       │    (cleanup)   SIGTERM, grace,                                    │ starts; when it
//!       │                SIGKILL                                            ▼ is Ready:
//!       │                   ▲                 0 sessions                 Draining
//!       │                   └───────────────────────────────────────────────┘
//! ```
//!
//! - **Cold**: no worker. **Starting**: one spawn in flight; every concurrent `acquire`
//!   for the domain waits for the same one (a `tokio::sync::watch` per start). The spawn
//!   and the readiness probe (connect attempts every [`PROBE_INTERVAL`] until
//!   `spec.start_timeout`, checking `try_exit` so a dying worker fails fast with
//!   [`ContainerError::NotReady`]) run on one blocking thread in their own task, so a
//!   cancelled caller does not cancel the start others wait for.
//! - **Ready**: leases are handed out; each counts one session.
//! - **Draining**: a replacement is Ready; this one takes no new sessions and is stopped
//!   when its last lease drops. No session fails: until the replacement is ready, the
//!   old worker keeps taking sessions.
//! - **Stopping**: SIGTERM, up to `stop_grace` for it to exit, SIGKILL, then
//!   [`Worker::cleanup`]. **Stopped**: gone; with no other worker the domain is Cold.
//!
//! A Ready worker that exits on its own is a crash, noticed by the reaper's tick or the
//! next `acquire`, cleaned up, and the next `acquire` respawns. Failed starts and crashes
//! in a row form a streak; after the n-th (n ≥ 2) spawning is refused for
//! `min(backoff_base × 2^(n−2), backoff_max)` with [`ContainerError::Backoff`]. A worker
//! that stays up for `backoff_reset`, or lives until the manager stops it (idle, max
//! lifetime), ends the streak. A spec that cannot be resolved is not a crash: nothing
//! was spawned, and each `acquire` reports the error itself.
//!
//! Each worker instance gets its own host run directory, `<spec.run_dir>@<n>` (the ready
//! socket is moved along), so a replacement and the worker it replaces, or a respawn and
//! the crashed worker still being cleaned up, never share sockets or state.
//!
//! The idle timeout comes from [`IdlePolicy`] (fixed or adaptive, see
//! [`super::adaptive`]); the manager feeds it start times and idle gaps (from the domain's
//! last session ending to the next `acquire`).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::adaptive::{IdlePolicy, IdleStats};
use super::config::{FastContainerSection, check_domain};
use super::metrics::{DomainMetrics, LatencyHistogram, Metrics, ReapCounts, ReapReason};
use super::{ContainerError, Endpoint, Exit, Limits, Spawner, Usage, Worker, WorkerSpec};

/// Pause between two connection attempts while waiting for a worker to become ready.
pub const PROBE_INTERVAL: Duration = Duration::from_micros(100);
/// How long to wait for a worker to exit after SIGKILL before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Pause between two `try_exit` checks while a worker is stopping.
const EXIT_POLL: Duration = Duration::from_millis(5);
/// Longest unix socket path (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Resolves a domain to its worker spec (config defaults, registry overrides).
type SpecSource = dyn Fn(&str) -> Result<WorkerSpec, ContainerError> + Send + Sync;

/// Lifecycle settings, usually from `[fastcontainer]` via [`Settings::from_section`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long an idle worker is kept.
    pub idle: IdlePolicy,
    /// After SIGTERM, how long before SIGKILL.
    pub stop_grace: Duration,
    /// Age at which a worker is replaced.
    pub max_lifetime: Duration,
    /// Backoff after the second crash in a row; doubles per further crash.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Uptime that ends a crash streak.
    pub backoff_reset: Duration,
    /// How often the reaper looks at every worker.
    pub tick: Duration,
}

impl Settings {
    /// The settings configured in `[fastcontainer]`; the reaper ticks at a tenth of the
    /// shortest idle timeout, between 10 ms and 1 s.
    pub fn from_section(s: &FastContainerSection) -> Settings {
        let idle = IdlePolicy::from_section(s);
        let shortest = idle.min.min(idle.fixed);
        Settings {
            idle,
            stop_grace: s.stop_grace,
            max_lifetime: s.max_lifetime,
            backoff_base: s.backoff_base,
            backoff_max: s.backoff_max,
            backoff_reset: s.backoff_reset,
            tick: (shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        }
    }

    /// The pause before the next spawn after `streak` failures in a row: none after the
    /// first, then `backoff_base` doubling per failure, at most `backoff_max`.
    pub fn backoff(&self, streak: u32) -> Duration {
        if streak <= 1 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (streak - 2).min(31);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_section(&FastContainerSection::default())
    }
}

/// A worker's (or a cold domain's) state, as listed by [`Manager::list`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkerState {
    /// No worker and none starting.
    Cold,
    /// A worker is being spawned and probed.
    Starting,
    /// Serving sessions.
    Ready,
    /// Replaced; serving only its existing sessions, stopped when they end.
    Draining,
    /// SIGTERM sent; waiting for it to exit, then cleanup.
    Stopping,
}

/// One line of [`Manager::list`]: a worker, or a domain without one.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    /// The domain.
    pub domain: String,
    /// State of this worker (Cold / Starting: the domain's).
    pub state: WorkerState,
    /// Host pid of the container's PID 1.
    pub pid: Option<u32>,
    /// The worker's instance number (its run directory is `<run_dir>@<instance>`).
    pub instance: Option<u64>,
    /// Where sessions connect.
    pub endpoint: Option<Endpoint>,
    /// Time since it became ready.
    pub uptime: Option<Duration>,
    /// Open sessions on this worker.
    pub sessions: u32,
    /// Usage from its cgroup (None if unreadable or no worker).
    pub usage: Option<Usage>,
    /// The domain's idle timeout in effect.
    pub idle_timeout: Duration,
    /// Spawn → ready latency of the domain's last start.
    pub last_start: Option<Duration>,
    /// Workers of the domain that became ready.
    pub starts: u64,
    /// Ready workers of the domain that exited on their own.
    pub crashes: u64,
    /// Failed starts and crashes in a row.
    pub crash_streak: u32,
    /// Time until spawning is allowed again, during a crash backoff.
    pub retry_in: Option<Duration>,
    /// The cgroup limits in effect: the worker's spec, or what [`Manager::set_limits`]
    /// set since (for a domain without a worker: only the latter).
    pub limits: Option<Limits>,
}

/// The lifecycle manager. Clones share the same workers.
#[derive(Clone)]
pub struct Manager {
    shared: Arc<Shared>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("spawner", &self.shared.spawner)
            .field("settings", &self.shared.settings)
            .field("domains", &lock(&self.shared.domains).len())
            .finish_non_exhaustive()
    }
}

/// A session's hold on a worker: while it lives, the worker counts one more session and
/// is neither reaped nor (when draining) stopped. Dropping it ends the session.
pub struct Lease {
    shared: Arc<Shared>,
    domain: Arc<Domain>,
    id: u64,
    pid: u32,
    endpoint: Endpoint,
}

impl Lease {
    /// Where to connect.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Host pid of the worker's container.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The domain.
    pub fn domain(&self) -> &str {
        &self.domain.name
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("domain", &self.domain.name)
            .field("pid", &self.pid)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut g = lock(&self.domain.inner);
        let mut wake = false;
        if let Some(s) = g.slots.iter_mut().find(|s| s.run.id == self.id) {
            s.sessions = s.sessions.saturating_sub(1);
            if s.sessions == 0 {
                s.idle_since = now;
                wake = s.state == WorkerState::Draining;
            }
        }
        if g.sessions() == 0 {
            g.idle_since = Some(now);
        }
        drop(g);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

struct Shared {
    spawner: Arc<dyn Spawner>,
    specs: Box<SpecSource>,
    settings: Settings,
    domains: Mutex<HashMap<String, Arc<Domain>>>,
    next_id: AtomicU64,
    /// Wakes the reaper early (a draining worker's last lease dropped).
    wake: Notify,
    /// Set when the reaper shuts down: no more starts.
    closed: AtomicBool,
}

struct Domain {
    name: String,
    inner: Mutex<DomainInner>,
}

type StartOutcome = Result<u64, Arc<ContainerError>>;
type StartRx = watch::Receiver<Option<StartOutcome>>;

#[derive(Default)]
struct DomainInner {
    /// Workers that exist: at most one Ready, any number Draining or Stopping.
    slots: Vec<Slot>,
    /// The start in flight, if any.
    starting: Option<StartRx>,
    /// Failed starts and crashes in a row.
    streak: u32,
    /// No spawn before this.
    retry_at: Option<Instant>,
    /// Limits set at run time; they override the spec's for later starts too.
    limits: Option<Limits>,
    stats: IdleStats,
    /// When the domain's last session ended (None while sessions are open or after the
    /// gap was recorded).
    idle_since: Option<Instant>,
    last_start: Option<Duration>,
    starts: u64,
    start_failures: u64,
    crashes: u64,
    reaps: ReapCounts,
    cold_start: LatencyHistogram,
}

impl DomainInner {
    fn sessions(&self) -> u32 {
        self.slots.iter().map(|s| s.sessions).sum()
    }

    fn ready(&mut self) -> Option<&mut Slot> {
        self.slots
            .iter_mut()
            .find(|s| s.state == WorkerState::Ready)
    }

    fn retry_in(&self, now: Instant) -> Option<Duration> {
        self.retry_at
            .map(|t| t.saturating_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Counts a failed start or a crash after `uptime` (None: never ready).
    fn note_failure(&mut self, settings: &Settings, uptime: Option<Duration>, now: Instant) {
        if uptime.is_some_and(|u| u >= settings.backoff_reset) {
            self.streak = 0;
        }
        self.streak += 1;
        let delay = settings.backoff(self.streak);
        self.retry_at = (!delay.is_zero()).then(|| now + delay);
    }
}

struct Slot {
    run: Arc<Running>,
    state: WorkerState,
    sessions: u32,
    /// When its sessions last dropped to 0 (or it became ready).
    idle_since: Instant,
}

/// One started worker.
struct Running {
    id: u64,
    pid: u32,
    endpoint: Endpoint,
    ready_at: Instant,
    /// Spawn → ready.
    took: Duration,
    /// The limits it was started with.
    limits: Limits,
    worker: Mutex<WorkerCell>,
}

struct WorkerCell {
    worker: Box<dyn Worker>,
    exit: Option<Exit>,
}

impl Running {
    /// The exit, once seen (remembered, so the worker is asked only until it exited).
    fn try_exit(&self) -> Option<Exit> {
        let mut c = lock(&self.worker);
        if c.exit.is_none() {
            c.exit = c.worker.try_exit();
        }
        c.exit
    }

    fn signal(&self, sig: i32) -> Result<(), ContainerError> {
        lock(&self.worker).worker.signal(sig)
    }

    fn usage(&self) -> Result<Usage, ContainerError> {
        lock(&self.worker).worker.usage()
    }

    fn set_limits(&self, limits: &Limits) -> Result<(), ContainerError> {
        lock(&self.worker).worker.set_limits(limits)
    }

    fn cleanup(&self) -> Result<(), ContainerError> {
        lock(&self.worker).worker.cleanup()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Manager {
    /// A manager starting workers through `spawner`, with specs from `specs`.
    pub fn new<F>(spawner: Arc<dyn Spawner>, specs: F, settings: Settings) -> Manager
    where
        F: Fn(&str) -> Result<WorkerSpec, ContainerError> + Send + Sync + 'static,
    {
        Manager {
            shared: Arc::new(Shared {
                spawner,
                specs: Box::new(specs),
                settings,
                domains: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The settings in effect.
    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// A session for `domain`: returns at once when its worker is Ready, else starts one
    /// (or joins the start in flight) and returns once the worker accepts connections.
    /// Fails with [`ContainerError::Backoff`] at once while the domain is crash-looping,
    /// [`ContainerError::NotReady`] when the start fails, [`ContainerError::Invalid`] for
    /// a bad domain or spec, or after shutdown.
    pub async fn acquire(&self, domain: &str) -> Result<Lease, ContainerError> {
        check_domain(domain)?;
        let arrival = Instant::now();
        let d = self.shared.domain(domain);
        let mut first = true;
        loop {
            let rx = {
                let now = Instant::now();
                let mut g = lock(&d.inner);
                if first {
                    first = false;
                    if g.sessions() == 0
                        && let Some(since) = g.idle_since.take()
                    {
                        g.stats.record_gap(arrival.saturating_duration_since(since));
                    }
                }
                let exited = self.shared.poll_exits(&d, &mut g, now);
                spawn_cleanups(&d.name, exited);
                if let Some(lease) = self.shared.lease(&d, &mut g, now) {
                    return Ok(lease);
                }
                if self.shared.closed.load(Ordering::Acquire) {
                    return Err(shutting_down());
                }
                match g.starting.clone() {
                    Some(rx) if rx.has_changed().is_ok() || rx.borrow().is_some() => rx,
                    _ => {
                        if let Some(retry_in) = g.retry_in(now) {
                            tracing::debug!(domain, ?retry_in, "fastcontainer: in crash backoff");
                            return Err(ContainerError::Backoff {
                                domain: domain.to_string(),
                                crashes: g.streak,
                                retry_in,
                            });
                        }
                        self.shared.begin_start(&d, &mut g)
                    }
                }
            };
            if let Err(e) = wait_start(rx).await {
                return Err(clone_error(&e));
            }
            // Started: the next round leases it (or, if it already died, starts again,
            // counting the crash).
        }
    }

    /// Starts `domain`'s worker without a session, if it is Cold and not in backoff, and
    /// returns at once; a failed start is logged. Needs a tokio runtime.
    pub fn prewarm(&self, domain: &str) {
        if let Err(e) = check_domain(domain) {
            tracing::warn!(domain, error = %e, "fastcontainer: prewarm refused");
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!(domain, "fastcontainer: prewarm outside a tokio runtime");
            return;
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        let d = self.shared.domain(domain);
        let mut g = lock(&d.inner);
        let running = g
            .slots
            .iter()
            .any(|s| s.state == WorkerState::Ready && s.run.try_exit().is_none());
        if running || g.starting.is_some() {
            return;
        }
        if let Some(retry_in) = g.retry_in(Instant::now()) {
            tracing::debug!(
                domain,
                ?retry_in,
                "fastcontainer: prewarm skipped, in crash backoff"
            );
            return;
        }
        self.shared.begin_start(&d, &mut g);
    }

    /// Like [`Manager::prewarm`], but waits: returns the pid of `domain`'s Ready worker
    /// once there is one (at once when it is already running), without opening a session.
    /// Fails as [`Manager::acquire`] does (backoff, failed start, bad domain, shutdown).
    pub async fn warm(&self, domain: &str) -> Result<u32, ContainerError> {
        check_domain(domain)?;
        let d = self.shared.domain(domain);
        loop {
            let rx = {
                let now = Instant::now();
                let mut g = lock(&d.inner);
                let exited = self.shared.poll_exits(&d, &mut g, now);
                spawn_cleanups(&d.name, exited);
                if let Some(slot) = g.ready() {
                    return Ok(slot.run.pid);
                }
                if self.shared.is_closed() {
                    return Err(shutting_down());
                }
                match g.starting.clone() {
                    Some(rx) if rx.has_changed().is_ok() || rx.borrow().is_some() => rx,
                    _ => {
                        if let Some(retry_in) = g.retry_in(now) {
                            return Err(ContainerError::Backoff {
                                domain: domain.to_string(),
                                crashes: g.streak,
                                retry_in,
                            });
                        }
                        self.shared.begin_start(&d, &mut g)
                    }
                }
            };
            if let Err(e) = wait_start(rx).await {
                return Err(clone_error(&e));
            }
        }
    }

    /// Stops `domain`'s workers now, sessions or not (SIGTERM, grace, SIGKILL, cleanup),
    /// after letting a start in flight finish; returns how many were stopped. The next
    /// `acquire` starts a fresh worker.
    pub async fn stop(&self, domain: &str) -> usize {
        let Some(d) = self.shared.get(domain) else {
            return 0;
        };
        let starting = lock(&d.inner).starting.clone();
        if let Some(rx) = starting {
            let _ = wait_start(rx).await;
        }
        let victims: Vec<Arc<Running>> = {
            let mut g = lock(&d.inner);
            g.slots
                .iter_mut()
                .filter(|s| matches!(s.state, WorkerState::Ready | WorkerState::Draining))
                .map(|s| {
                    s.state = WorkerState::Stopping;
                    s.run.clone()
                })
                .collect()
        };
        let n = victims.len();
        let handles: Vec<_> = victims
            .into_iter()
            .map(|run| {
                tokio::spawn(
                    self.shared
                        .clone()
                        .terminate(d.clone(), run, ReapReason::Stop)
                        .in_current_span(),
                )
            })
            .collect();
        for h in handles {
            let _ = h.await;
        }
        n
    }

    /// Changes `domain`'s limits: applied at once to its running workers (returns how
    /// many), and used for its later starts until the process restarts.
    pub fn set_limits(&self, domain: &str, limits: Limits) -> Result<usize, ContainerError> {
        check_domain(domain)?;
        let d = self.shared.domain(domain);
        let runs: Vec<Arc<Running>> = {
            let mut g = lock(&d.inner);
            g.limits = Some(limits);
            g.slots
                .iter()
                .filter(|s| s.state != WorkerState::Stopping)
                .map(|s| s.run.clone())
                .collect()
        };
        for r in &runs {
            r.set_limits(&limits)?;
        }
        tracing::info!(
            domain,
            ?limits,
            workers = runs.len(),
            "fastcontainer: limits changed"
        );
        Ok(runs.len())
    }

    /// True while `domain` has a worker in any state or a start in flight: the cluster
    /// placement keeps owning a domain until this turns false.
    pub fn busy(&self, domain: &str) -> bool {
        self.shared.get(domain).is_some_and(|d| {
            let g = lock(&d.inner);
            !g.slots.is_empty() || g.starting.is_some()
        })
    }

    /// Every worker, and every domain seen without one (Cold or Starting), sorted by
    /// domain. Reads each worker's usage from its cgroup.
    pub fn list(&self) -> Vec<WorkerInfo> {
        let now = Instant::now();
        let mut out = Vec::new();
        for d in self.shared.snapshot() {
            let (template, slots, starting) = {
                let g = lock(&d.inner);
                let template = WorkerInfo {
                    domain: d.name.clone(),
                    state: WorkerState::Cold,
                    pid: None,
                    instance: None,
                    endpoint: None,
                    uptime: None,
                    sessions: 0,
                    usage: None,
                    idle_timeout: self.shared.settings.idle.timeout(&g.stats),
                    last_start: g.last_start,
                    starts: g.starts,
                    crashes: g.crashes,
                    crash_streak: g.streak,
                    retry_in: g.retry_in(now),
                    limits: g.limits,
                };
                let slots: Vec<_> = g
                    .slots
                    .iter()
                    .map(|s| (s.run.clone(), s.state, s.sessions))
                    .collect();
                (template, slots, g.starting.is_some())
            };
            if starting {
                out.push(WorkerInfo {
                    state: WorkerState::Starting,
                    ..template.clone()
                });
            } else if slots.is_empty() {
                out.push(template.clone());
            }
            for (run, state, sessions) in slots {
                out.push(WorkerInfo {
                    state,
                    pid: Some(run.pid),
                    instance: Some(run.id),
                    limits: Some(template.limits.unwrap_or(run.limits)),
                    endpoint: Some(run.endpoint.clone()),
                    uptime: Some(now.saturating_duration_since(run.ready_at)),
                    sessions,
                    usage: run.usage().ok(),
                    ..template.clone()
                });
            }
        }
        out.sort_by(|a, b| (&a.domain, a.state).cmp(&(&b.domain, b.state)));
        out
    }

    /// A snapshot of the counters, for the admin API.
    pub fn metrics(&self) -> Metrics {
        let mut domains: Vec<DomainMetrics> = self
            .shared
            .snapshot()
            .into_iter()
            .map(|d| {
                let g = lock(&d.inner);
                DomainMetrics {
                    domain: d.name.clone(),
                    starts: g.starts,
                    start_failures: g.start_failures,
                    crashes: g.crashes,
                    reaps: g.reaps,
                    sessions: u64::from(g.sessions()),
                    workers: g.slots.len() as u64,
                    idle_timeout: self.shared.settings.idle.timeout(&g.stats),
                    cold_start: g.cold_start.clone(),
                }
            })
            .collect();
        domains.sort_by(|a, b| a.domain.cmp(&b.domain));
        Metrics { domains }
    }

    /// The background task: every `tick` (or when woken), stops workers idle longer than
    /// their idle timeout, drained workers without sessions and workers past
    /// `max_lifetime` without sessions; starts replacements for busy ones past
    /// `max_lifetime`; cleans up crashed ones. When `shutdown` turns true: refuses new
    /// starts, lets starts in flight finish, stops every worker and returns when all are
    /// gone.
    pub async fn run_reaper(&self, mut shutdown: watch::Receiver<bool>) {
        let shared = &self.shared;
        let mut stopping = JoinSet::new();
        loop {
            tokio::select! {
                _ = crate::listen::flipped(&mut shutdown) => break,
                _ = tokio::time::sleep(shared.settings.tick) => {}
                _ = shared.wake.notified() => {}
            }
            shared.tick(Instant::now(), &mut stopping);
            while stopping.try_join_next().is_some() {}
        }
        shared.closed.store(true, Ordering::Release);
        let starts: Vec<StartRx> = shared
            .snapshot()
            .iter()
            .filter_map(|d| lock(&d.inner).starting.clone())
            .collect();
        for rx in starts {
            let _ = wait_start(rx).await;
        }
        for d in shared.snapshot() {
            let mut g = lock(&d.inner);
            for s in &mut g.slots {
                if s.state != WorkerState::Stopping {
                    s.state = WorkerState::Stopping;
                    stopping.spawn(
                        shared
                            .clone()
                            .terminate(d.clone(), s.run.clone(), ReapReason::Shutdown)
                            .in_current_span(),
                    );
                }
            }
        }
        while stopping.join_next().await.is_some() {}
        tracing::info!("fastcontainer: all workers stopped");
    }
}

impl Shared {
    fn domain(&self, name: &str) -> Arc<Domain> {
        lock(&self.domains)
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Domain {
                    name: name.to_string(),
                    inner: Mutex::new(DomainInner::default()),
                })
            })
            .clone()
    }

    fn get(&self, name: &str) -> Option<Arc<Domain>> {
        lock(&self.domains).get(name).cloned()
    }

    fn snapshot(&self) -> Vec<Arc<Domain>> {
        lock(&self.domains).values().cloned().collect()
    }

    /// A lease on the Ready worker, if there is one. Past `max_lifetime`, also starts its
    /// replacement (the old one keeps serving until that is ready).
    fn lease(
        self: &Arc<Self>,
        d: &Arc<Domain>,
        g: &mut DomainInner,
        now: Instant,
    ) -> Option<Lease> {
        let slot = g.ready()?;
        slot.sessions += 1;
        let (run, expired) = (
            slot.run.clone(),
            now.saturating_duration_since(slot.run.ready_at) >= self.settings.max_lifetime,
        );
        if expired && g.starting.is_none() && g.retry_in(now).is_none() && !self.is_closed() {
            tracing::info!(domain = %d.name, pid = run.pid, "fastcontainer: max lifetime reached, replacing");
            self.begin_start(d, g);
        }
        Some(Lease {
            shared: self.clone(),
            domain: d.clone(),
            id: run.id,
            pid: run.pid,
            endpoint: run.endpoint.clone(),
        })
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Removes Ready and Draining workers that exited on their own, counting the crashes;
    /// returns them for cleanup.
    fn poll_exits(&self, d: &Domain, g: &mut DomainInner, now: Instant) -> Vec<Arc<Running>> {
        let mut dead = Vec::new();
        let mut i = 0;
        while i < g.slots.len() {
            let s = &g.slots[i];
            // Stopping workers belong to their terminate task (which may be cleaning up).
            let live = matches!(s.state, WorkerState::Ready | WorkerState::Draining);
            match live.then(|| s.run.try_exit()).flatten() {
                Some(exit) => {
                    let s = g.slots.remove(i);
                    let uptime = now.saturating_duration_since(s.run.ready_at);
                    g.crashes += 1;
                    g.note_failure(&self.settings, Some(uptime), now);
                    tracing::warn!(
                        domain = %d.name, pid = s.run.pid, ?exit, ?uptime, sessions = s.sessions,
                        crash_streak = g.streak, "fastcontainer: worker exited on its own"
                    );
                    dead.push(s.run);
                }
                _ => i += 1,
            }
        }
        dead
    }

    fn begin_start(self: &Arc<Self>, d: &Arc<Domain>, g: &mut DomainInner) -> StartRx {
        let (tx, rx) = watch::channel(None);
        g.starting = Some(rx.clone());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("fastcontainer.start", domain = %d.name, instance = id);
        tokio::spawn(
            self.clone()
                .start(d.clone(), id, g.limits, tx)
                .instrument(span),
        );
        rx
    }

    /// The start task: spawn and probe on a blocking thread, then install the worker.
    async fn start(
        self: Arc<Self>,
        d: Arc<Domain>,
        id: u64,
        limits: Option<Limits>,
        tx: watch::Sender<Option<StartOutcome>>,
    ) {
        let shared = self.clone();
        let name = d.name.clone();
        let res = tokio::task::spawn_blocking(move || shared.start_blocking(&name, id, limits))
            .await
            .unwrap_or_else(|e| {
                Err(StartError::Spawn(ContainerError::Invalid(format!(
                    "worker start for {} failed: {e}",
                    d.name
                ))))
            });
        let outcome = self.finish_start(&d, res);
        tx.send_replace(Some(outcome));
    }

    /// Resolves the spec, spawns and probes. A failure before anything was spawned (the
    /// spec) is [`StartError::Spec`]: it does not count towards the crash streak.
    fn start_blocking(
        &self,
        domain: &str,
        id: u64,
        limits: Option<Limits>,
    ) -> Result<Running, StartError> {
        let mut spec = (self.specs)(domain)
            .and_then(|spec| instance_spec(spec, id))
            .map_err(StartError::Spec)?;
        if let Some(l) = limits {
            spec.limits = l;
        }
        let t0 = Instant::now();
        let mut worker = self.spawner.spawn(&spec).map_err(StartError::Spawn)?;
        if let Err(e) = wait_ready(&mut *worker, &spec, t0) {
            kill_blocking(&mut *worker, domain);
            return Err(StartError::Spawn(e));
        }
        let ready_at = Instant::now();
        Ok(Running {
            id,
            pid: worker.pid(),
            endpoint: spec.ready.clone(),
            ready_at,
            took: ready_at.saturating_duration_since(t0),
            limits: spec.limits,
            worker: Mutex::new(WorkerCell { worker, exit: None }),
        })
    }

    fn finish_start(&self, d: &Domain, res: Result<Running, StartError>) -> StartOutcome {
        let now = Instant::now();
        let mut g = lock(&d.inner);
        g.starting = None;
        match res {
            Ok(run) => {
                let run = Arc::new(run);
                g.starts += 1;
                g.last_start = Some(run.took);
                g.cold_start.observe(run.took);
                g.stats.record_start(run.took);
                tracing::info!(pid = run.pid, took = ?run.took, "fastcontainer: worker ready");
                if let Some(l) = g.limits.filter(|l| *l != run.limits)
                    && let Err(e) = run.set_limits(&l)
                {
                    tracing::warn!(error = %e, "fastcontainer: could not apply changed limits");
                }
                let mut wake = false;
                for s in &mut g.slots {
                    if s.state == WorkerState::Ready {
                        s.state = WorkerState::Draining;
                        wake |= s.sessions == 0;
                    }
                }
                g.slots.push(Slot {
                    run: run.clone(),
                    state: WorkerState::Ready,
                    sessions: 0,
                    idle_since: now,
                });
                g.retry_at = None;
                drop(g);
                if wake {
                    self.wake.notify_one();
                }
                Ok(run.id)
            }
            Err(StartError::Spec(e)) => {
                tracing::warn!(error = %e, "fastcontainer: no usable worker spec");
                Err(Arc::new(e))
            }
            Err(StartError::Spawn(e)) => {
                g.start_failures += 1;
                g.note_failure(&self.settings, None, now);
                tracing::warn!(error = %e, crash_streak = g.streak, "fastcontainer: worker start failed");
                Err(Arc::new(e))
            }
        }
    }

    /// One reaper round over every domain.
    fn tick(self: &Arc<Self>, now: Instant, stopping: &mut JoinSet<()>) {
        let st = &self.settings;
        for d in self.snapshot() {
            let mut stops = Vec::new();
            let dead = {
                let mut g = lock(&d.inner);
                let dead = self.poll_exits(&d, &mut g, now);
                let timeout = st.idle.timeout(&g.stats);
                let (mut replace, mut stable) = (false, false);
                for s in &mut g.slots {
                    let up = now.saturating_duration_since(s.run.ready_at);
                    let idle =
                        s.sessions == 0 && now.saturating_duration_since(s.idle_since) >= timeout;
                    let reason = match s.state {
                        WorkerState::Ready => {
                            stable |= up >= st.backoff_reset;
                            if idle {
                                Some(ReapReason::Idle)
                            } else if up >= st.max_lifetime && s.sessions == 0 {
                                Some(ReapReason::Lifetime)
                            } else {
                                replace |= up >= st.max_lifetime;
                                None
                            }
                        }
                        WorkerState::Draining if s.sessions == 0 => Some(ReapReason::Lifetime),
                        _ => None,
                    };
                    if let Some(reason) = reason {
                        // It served until we stopped it: healthy, whatever its uptime.
                        stable = true;
                        s.state = WorkerState::Stopping;
                        stops.push((s.run.clone(), reason));
                    }
                }
                if stable && g.streak > 0 {
                    tracing::debug!(domain = %d.name, "fastcontainer: worker stable, crash streak reset");
                    g.streak = 0;
                    g.retry_at = None;
                }
                if replace && g.starting.is_none() && g.retry_in(now).is_none() && !self.is_closed()
                {
                    tracing::info!(domain = %d.name, "fastcontainer: max lifetime reached, replacing");
                    self.begin_start(&d, &mut g);
                }
                dead
            };
            spawn_cleanups(&d.name, dead);
            for (run, reason) in stops {
                stopping.spawn(
                    self.clone()
                        .terminate(d.clone(), run, reason)
                        .in_current_span(),
                );
            }
        }
    }

    /// SIGTERM, grace, SIGKILL, cleanup; then forgets the worker.
    async fn terminate(self: Arc<Self>, d: Arc<Domain>, run: Arc<Running>, reason: ReapReason) {
        let span = tracing::info_span!("fastcontainer.stop", domain = %d.name, pid = run.pid, reason = reason.as_str());
        async {
            let mut exit = run.try_exit();
            if exit.is_none() {
                if let Err(e) = run.signal(libc::SIGTERM) {
                    tracing::debug!(error = %e, "fastcontainer: SIGTERM failed");
                }
                exit = wait_exit(&run, self.settings.stop_grace).await;
            }
            if exit.is_none() {
                tracing::warn!(grace = ?self.settings.stop_grace, "fastcontainer: worker ignored SIGTERM, sending SIGKILL");
                if let Err(e) = run.signal(libc::SIGKILL) {
                    tracing::debug!(error = %e, "fastcontainer: SIGKILL failed");
                }
                exit = wait_exit(&run, KILL_WAIT).await;
            }
            match exit {
                Some(exit) => {
                    let r = run.clone();
                    match tokio::task::spawn_blocking(move || r.cleanup()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "fastcontainer: cleanup failed"),
                        Err(e) => tracing::warn!(error = %e, "fastcontainer: cleanup task failed"),
                    }
                    tracing::info!(?exit, uptime = ?run.ready_at.elapsed(), "fastcontainer: worker stopped");
                }
                None => tracing::error!("fastcontainer: worker did not exit after SIGKILL; left behind"),
            }
            let mut g = lock(&d.inner);
            g.slots.retain(|s| s.run.id != run.id);
            g.reaps.bump(reason);
        }
        .instrument(span)
        .await
    }
}

/// Why a start failed.
enum StartError {
    /// No spec: nothing was spawned.
    Spec(ContainerError),
    /// Spawning or the readiness wait failed (a crash for the backoff).
    Spawn(ContainerError),
}

/// Waits for a start's outcome.
async fn wait_start(mut rx: StartRx) -> StartOutcome {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or_else(|| unreachable!("waited for Some")),
        Err(_) => Err(Arc::new(ContainerError::Invalid(
            "worker start was abandoned".into(),
        ))),
    }
}

/// Polls `try_exit` until the worker exits or `limit` passes.
async fn wait_exit(run: &Running, limit: Duration) -> Option<Exit> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(e) = run.try_exit() {
            return Some(e);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// Cleans up exited workers on the blocking pool.
fn spawn_cleanups(domain: &str, dead: Vec<Arc<Running>>) {
    for run in dead {
        let domain = domain.to_string();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = run.cleanup() {
                tracing::warn!(domain, pid = run.pid, error = %e, "fastcontainer: cleanup failed");
            }
        });
    }
}

/// Gives the instance its own run directory, `<run_dir>@<id>`, moving a ready socket
/// inside the run directory along; checks the socket path fits `sun_path`.
fn instance_spec(mut spec: WorkerSpec, id: u64) -> Result<WorkerSpec, ContainerError> {
    let base = spec.run_dir.clone();
    let Some(name) = base.file_name() else {
        return Err(ContainerError::Invalid(format!(
            "run directory {} of {} has no name",
            base.display(),
            spec.domain
        )));
    };
    let mut name = name.to_os_string();
    name.push(format!("@{id}"));
    spec.run_dir = base.with_file_name(name);
    if let Endpoint::Unix(p) = &spec.ready {
        let moved: PathBuf = match p.strip_prefix(&base) {
            Ok(rest) => spec.run_dir.join(rest),
            Err(_) => p.clone(),
        };
        if moved.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ContainerError::Invalid(format!(
                "socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter \
                 [fastcontainer] run_root",
                moved.display()
            )));
        }
        spec.ready = Endpoint::Unix(moved);
    }
    Ok(spec)
}

/// Probes `spec.ready` until it accepts, the worker exits, or `start_timeout` passes.
fn wait_ready(
    worker: &mut dyn Worker,
    spec: &WorkerSpec,
    t0: Instant,
) -> Result<(), ContainerError> {
    let not_ready = |exit| ContainerError::NotReady {
        domain: spec.domain.clone(),
        waited: t0.elapsed(),
        exit,
    };
    loop {
        if let Some(exit) = worker.try_exit() {
            return Err(not_ready(Some(exit)));
        }
        let accepted = match &spec.ready {
            Endpoint::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
            Endpoint::Tcp(a) => {
                let left = spec.start_timeout.saturating_sub(t0.elapsed());
                let limit = left.clamp(Duration::from_millis(1), Duration::from_millis(100));
                std::net::TcpStream::connect_timeout(a, limit).is_ok()
            }
        };
        if accepted {
            return Ok(());
        }
        if t0.elapsed() >= spec.start_timeout {
            return Err(not_ready(worker.try_exit()));
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// Kills a worker that failed to become ready, waits for it and cleans up (blocking).
fn kill_blocking(worker: &mut dyn Worker, domain: &str) {
    if worker.try_exit().is_none() {
        let _ = worker.signal(libc::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        while worker.try_exit().is_none() {
            if Instant::now() >= deadline {
                tracing::error!(
                    domain,
                    pid = worker.pid(),
                    "fastcontainer: worker did not exit after SIGKILL; left behind"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    if let Err(e) = worker.cleanup() {
        tracing::warn!(domain, error = %e, "fastcontainer: cleanup failed");
    }
}

fn shutting_down() -> ContainerError {
    ContainerError::Invalid("the FastContainer manager is shutting down".into())
}

/// A copy of a shared start error for each caller that waited for the start.
fn clone_error(e: &ContainerError) -> ContainerError {
    match e {
        ContainerError::Sys { step, source } => ContainerError::Sys {
            step: step.clone(),
            source: match source.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(source.kind(), source.to_string()),
            },
        },
        ContainerError::NotReady {
            domain,
            waited,
            exit,
        } => ContainerError::NotReady {
            domain: domain.clone(),
            waited: *waited,
            exit: *exit,
        },
        ContainerError::Backoff {
            domain,
            crashes,
            retry_in,
        } => ContainerError::Backoff {
            domain: domain.clone(),
            crashes: *crashes,
            retry_in: *retry_in,
        },
        ContainerError::Invalid(s) => ContainerError::Invalid(s.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::Path;
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::fastcontainer::config::IdleMode;
    use crate::fastcontainer::metrics::tests::check_exposition;

    /// One fake worker "process": a thread listening on the spec's unix socket until it
    /// exits (by signal, by `die`, or at once when told to crash on start).
    #[derive(Debug)]
    struct FakeProc {
        pid: u32,
        run_dir: PathBuf,
        spec_limits: Limits,
        exit: Mutex<Option<Exit>>,
        signals: Mutex<Vec<i32>>,
        limits: Mutex<Limits>,
        cleanups: AtomicU32,
        ignore_term: bool,
    }

    impl FakeProc {
        fn die(&self, exit: Exit) {
            lock(&self.exit).get_or_insert(exit);
        }

        fn exited(&self) -> Option<Exit> {
            *lock(&self.exit)
        }

        fn signals(&self) -> Vec<i32> {
            lock(&self.signals).clone()
        }

        fn cleanups(&self) -> u32 {
            self.cleanups.load(Ordering::SeqCst)
        }
    }

    #[derive(Debug, Default)]
    struct FakeSpawner {
        next_pid: AtomicU32,
        /// Delay before a new worker listens.
        start_delay_ms: AtomicU32,
        /// New workers exit with code 1 before listening.
        die_on_start: AtomicBool,
        /// New workers ignore SIGTERM.
        ignore_term: AtomicBool,
        procs: Mutex<Vec<Arc<FakeProc>>>,
    }

    impl FakeSpawner {
        fn spawns(&self) -> usize {
            lock(&self.procs).len()
        }

        fn proc(&self, pid: u32) -> Arc<FakeProc> {
            lock(&self.procs)
                .iter()
                .find(|p| p.pid == pid)
                .cloned()
                .expect("no such fake pid")
        }

        fn last(&self) -> Arc<FakeProc> {
            lock(&self.procs).last().cloned().expect("nothing spawned")
        }
    }

    impl Spawner for FakeSpawner {
        fn spawn(&self, spec: &WorkerSpec) -> Result<Box<dyn Worker>, ContainerError> {
            let Endpoint::Unix(path) = spec.ready.clone() else {
                panic!("fake workers listen on unix sockets");
            };
            std::fs::create_dir_all(&spec.run_dir).map_err(|source| ContainerError::Sys {
                step: format!("mkdir {}", spec.run_dir.display()),
                source,
            })?;
            let p = Arc::new(FakeProc {
                pid: 1000 + self.next_pid.fetch_add(1, Ordering::SeqCst),
                run_dir: spec.run_dir.clone(),
                spec_limits: spec.limits,
                exit: Mutex::new(None),
                signals: Mutex::new(Vec::new()),
                limits: Mutex::new(spec.limits),
                cleanups: AtomicU32::new(0),
                ignore_term: self.ignore_term.load(Ordering::SeqCst),
            });
            lock(&self.procs).push(p.clone());
            let delay = Duration::from_millis(self.start_delay_ms.load(Ordering::SeqCst).into());
            let die = self.die_on_start.load(Ordering::SeqCst);
            let proc = p.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                if die {
                    proc.die(Exit::Code(1));
                    return;
                }
                let listener = match UnixListener::bind(&path) {
                    Ok(l) => l,
                    Err(_) => return proc.die(Exit::Code(2)),
                };
                listener.set_nonblocking(true).unwrap();
                while proc.exited().is_none() {
                    if listener.accept().is_err() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
            Ok(Box::new(FakeWorker(p)))
        }
    }

    #[derive(Debug)]
    struct FakeWorker(Arc<FakeProc>);

    impl Worker for FakeWorker {
        fn pid(&self) -> u32 {
            self.0.pid
        }

        fn signal(&self, signal: i32) -> Result<(), ContainerError> {
            lock(&self.0.signals).push(signal);
            match signal {
                libc::SIGKILL => self.0.die(Exit::Signal(libc::SIGKILL)),
                libc::SIGTERM if !self.0.ignore_term => self.0.die(Exit::Signal(libc::SIGTERM)),
                _ => {}
            }
            Ok(())
        }

        fn try_exit(&mut self) -> Option<Exit> {
            self.0.exited()
        }

        fn usage(&self) -> Result<Usage, ContainerError> {
            Ok(Usage {
                memory_bytes: 1 << 20,
                cpu_usec: 42,
                pids: 1,
                oom_kills: 0,
            })
        }

        fn set_limits(&self, limits: &Limits) -> Result<(), ContainerError> {
            *lock(&self.0.limits) = *limits;
            Ok(())
        }

        fn cleanup(&mut self) -> Result<(), ContainerError> {
            assert!(self.0.exited().is_some(), "cleanup before exit");
            let n = self.0.cleanups.fetch_add(1, Ordering::SeqCst);
            assert_eq!(n, 0, "cleanup called twice for pid {}", self.0.pid);
            std::fs::remove_dir_all(&self.0.run_dir).map_err(|source| ContainerError::Sys {
                step: format!("rm {}", self.0.run_dir.display()),
                source,
            })
        }
    }

    struct Harness {
        _dir: tempfile::TempDir,
        root: PathBuf,
        spawner: Arc<FakeSpawner>,
        mgr: Manager,
        shutdown: watch::Sender<bool>,
        reaper: tokio::task::JoinHandle<()>,
    }

    fn settings() -> Settings {
        Settings {
            idle: IdlePolicy::fixed(Duration::from_secs(60)),
            stop_grace: Duration::from_millis(200),
            max_lifetime: Duration::from_secs(3600),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            backoff_reset: Duration::from_secs(60),
            tick: Duration::from_millis(10),
        }
    }

    fn harness(settings: Settings) -> Harness {
        harness_with(settings, Duration::from_secs(5))
    }

    fn harness_with(settings: Settings, start_timeout: Duration) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let spawner = Arc::new(FakeSpawner::default());
        let base = root.clone();
        let specs = move |domain: &str| {
            if domain.starts_with("nospec.") {
                return Err(ContainerError::Invalid(format!(
                    "{domain} is not hosted here"
                )));
            }
            Ok(WorkerSpec {
                domain: domain.to_string(),
                argv: vec!["/bin/worker".into()],
                env: Default::default(),
                uid: 65534,
                gid: 65534,
                run_dir: base.join(domain),
                run_dir_inside: "/run/wasmail".into(),
                mounts: Vec::new(),
                new_net: false,
                limits: Limits::default(),
                nofile: 1024,
                ready: Endpoint::Unix(base.join(domain).join("w.sock")),
                start_timeout,
                files: Vec::new(),
            })
        };
        let mgr = Manager::new(spawner.clone(), specs, settings);
        let (shutdown, rx) = watch::channel(false);
        let m = mgr.clone();
        let reaper = tokio::spawn(async move { m.run_reaper(rx).await });
        Harness {
            _dir: dir,
            root,
            spawner,
            mgr,
            shutdown,
            reaper,
        }
    }

    impl Harness {
        fn info(&self, domain: &str) -> Vec<WorkerInfo> {
            self.mgr
                .list()
                .into_iter()
                .filter(|i| i.domain == domain)
                .collect()
        }

        fn state(&self, domain: &str) -> Vec<WorkerState> {
            self.info(domain).iter().map(|i| i.state).collect()
        }

        async fn shut_down(self) {
            self.shutdown.send_replace(true);
            tokio::time::timeout(Duration::from_secs(10), self.reaper)
                .await
                .expect("reaper did not stop")
                .unwrap();
            for p in lock(&self.spawner.procs).iter() {
                assert!(p.exited().is_some(), "pid {} still running", p.pid);
                assert_eq!(p.cleanups(), 1, "pid {} not cleaned up once", p.pid);
            }
        }
    }

    /// Waits up to 10 s for `f` to hold.
    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn connects(lease: &Lease) -> bool {
        match lease.endpoint() {
            Endpoint::Unix(p) => UnixStream::connect(p).is_ok(),
            Endpoint::Tcp(_) => false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_acquires_of_a_cold_domain_share_one_spawn() {
        let h = harness(settings());
        h.spawner.start_delay_ms.store(50, Ordering::SeqCst);
        let mut set = JoinSet::new();
        for _ in 0..50 {
            let m = h.mgr.clone();
            set.spawn(async move { m.acquire("a.example").await });
        }
        let mut leases = Vec::new();
        while let Some(r) = set.join_next().await {
            leases.push(r.unwrap().expect("acquire failed"));
        }
        assert_eq!(h.spawner.spawns(), 1);
        let pid = leases[0].pid();
        assert!(leases.iter().all(|l| l.pid() == pid));
        assert!(connects(&leases[0]));
        let info = h.info("a.example");
        assert_eq!(info.len(), 1, "{info:?}");
        assert_eq!((info[0].state, info[0].sessions), (WorkerState::Ready, 50));
        assert_eq!(info[0].starts, 1);
        assert!(info[0].last_start.is_some());
        drop(leases);
        assert_eq!(h.info("a.example")[0].sessions, 0);
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_count_sessions_and_each_instance_has_its_own_run_dir() {
        let h = harness(settings());
        let a = h.mgr.acquire("a.example").await.unwrap();
        let b = h.mgr.acquire("a.example").await.unwrap();
        let c = h.mgr.acquire("b.example").await.unwrap();
        assert_eq!(h.spawner.spawns(), 2);
        assert_eq!(a.pid(), b.pid());
        assert_ne!(a.pid(), c.pid());
        assert_eq!(a.domain(), "a.example");
        let Endpoint::Unix(p) = a.endpoint() else {
            panic!()
        };
        assert_eq!(p.parent().unwrap().parent().unwrap(), h.root);
        let dir = p.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert!(dir.starts_with("a.example@"), "{dir}");
        assert_eq!(h.info("a.example")[0].sessions, 2);
        drop(a);
        assert_eq!(h.info("a.example")[0].sessions, 1);
        let m = h.mgr.metrics();
        assert_eq!(m.active_workers(), 2);
        assert_eq!(m.domains[0].sessions, 1);
        drop((b, c));
        assert!(h.mgr.list().iter().all(|i| i.sessions == 0));
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_workers_are_reaped_and_cleaned_up() {
        let h = harness(Settings {
            idle: IdlePolicy::fixed(Duration::from_millis(150)),
            ..settings()
        });
        // A held lease keeps the worker, however long.
        let lease = h.mgr.acquire("a.example").await.unwrap();
        let first = h.spawner.proc(lease.pid());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(h.state("a.example"), [WorkerState::Ready]);
        assert!(first.signals().is_empty());
        drop(lease);

        eventually("idle reap", || h.state("a.example") == [WorkerState::Cold]).await;
        eventually("cleanup", || first.cleanups() == 1).await;
        assert_eq!(first.signals(), [libc::SIGTERM]);
        assert!(!first.run_dir.exists());
        let m = h.mgr.metrics();
        assert_eq!(m.domains[0].reaps.get(ReapReason::Idle), 1);
        assert_eq!(m.active_workers(), 0);

        // The next session starts a fresh worker.
        let lease = h.mgr.acquire("a.example").await.unwrap();
        assert_ne!(lease.pid(), first.pid);
        assert_eq!(h.spawner.spawns(), 2);
        assert!(connects(&lease));
        drop(lease);
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_escalates_to_sigkill_after_the_grace() {
        let h = harness(Settings {
            stop_grace: Duration::from_millis(100),
            ..settings()
        });
        h.spawner.ignore_term.store(true, Ordering::SeqCst);
        let lease = h.mgr.acquire("a.example").await.unwrap();
        let p = h.spawner.proc(lease.pid());
        assert_eq!(h.mgr.stop("a.example").await, 1);
        assert_eq!(p.signals(), [libc::SIGTERM, libc::SIGKILL]);
        assert_eq!(p.exited(), Some(Exit::Signal(libc::SIGKILL)));
        assert_eq!(p.cleanups(), 1);
        assert_eq!(h.state("a.example"), [WorkerState::Cold]);
        assert_eq!(h.mgr.stop("a.example").await, 0);
        assert_eq!(h.mgr.stop("never.example").await, 0);
        drop(lease);
        assert_eq!(h.mgr.metrics().domains[0].reaps.get(ReapReason::Stop), 1);
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashed_worker_is_respawned_by_the_next_acquire() {
        let h = harness(settings());
        let lease = h.mgr.acquire("a.example").await.unwrap();
        let first = h.spawner.proc(lease.pid());
        first.die(Exit::Code(1));
        // The next acquire notices (even before the reaper does) and respawns at once:
        // one crash is not a crash loop.
        let again = h.mgr.acquire("a.example").await.unwrap();
        assert_ne!(again.pid(), first.pid);
        assert!(connects(&again));
        eventually("crashed worker cleaned up", || first.cleanups() == 1).await;
        let info = h.info("a.example");
        assert_eq!((info[0].crashes, info[0].crash_streak), (1, 1), "{info:?}");
        // The stale lease of the crashed worker can still be dropped harmlessly.
        drop(lease);
        assert_eq!(h.info("a.example")[0].sessions, 1);
        drop(again);

        // Crash detected by the reaper alone: the domain goes Cold.
        let second = h.spawner.last();
        second.die(Exit::Signal(libc::SIGSEGV));
        eventually("reaper sees the crash", || {
            h.state("a.example") == [WorkerState::Cold] && second.cleanups() == 1
        })
        .await;
        assert_eq!(h.mgr.metrics().domains[0].crashes, 2);
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_loops_back_off_exponentially_and_a_stable_run_resets() {
        let h = harness(Settings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            backoff_reset: Duration::from_millis(300),
            ..settings()
        });
        h.spawner.die_on_start.store(true, Ordering::SeqCst);
        // Keep acquiring; note the largest retry_in seen per streak length.
        let mut retry: HashMap<u32, Duration> = HashMap::new();
        let mut not_ready = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !retry.contains_key(&4) {
            assert!(
                Instant::now() < deadline,
                "no backoff after 4 crashes: {retry:?}"
            );
            match h.mgr.acquire("a.example").await {
                Err(ContainerError::NotReady { exit, .. }) => {
                    assert_eq!(exit, Some(Exit::Code(1)));
                    not_ready += 1;
                }
                Err(ContainerError::Backoff {
                    crashes, retry_in, ..
                }) => {
                    let max = retry.entry(crashes).or_default();
                    *max = (*max).max(retry_in);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(not_ready >= 4, "{not_ready}");
        assert!(!retry.contains_key(&1), "the first crash must not back off");
        for (streak, max) in &retry {
            let nominal = Duration::from_millis(100) * (1 << (streak - 2));
            assert!(*max <= nominal, "streak {streak}: {max:?} > {nominal:?}");
        }
        assert!(retry[&4] > retry[&2], "backoff does not grow: {retry:?}");
        assert_eq!(h.mgr.metrics().domains[0].start_failures, not_ready);
        let info = &h.info("a.example")[0];
        assert_eq!(info.state, WorkerState::Cold);
        assert!(
            info.crash_streak >= 4 && info.retry_in.is_some(),
            "{info:?}"
        );
        assert!(
            h.spawner
                .procs
                .lock()
                .unwrap()
                .iter()
                .all(|p| p.cleanups() == 1),
            "failed starts are cleaned up"
        );

        // Fixed: the next try after the backoff works, and a stable run ends the streak.
        h.spawner.die_on_start.store(false, Ordering::SeqCst);
        let lease = loop {
            match h.mgr.acquire("a.example").await {
                Ok(l) => break l,
                Err(ContainerError::Backoff { retry_in, .. }) => tokio::time::sleep(retry_in).await,
                Err(e) => panic!("{e}"),
            }
        };
        eventually("streak reset", || h.info("a.example")[0].crash_streak == 0).await;
        h.spawner.proc(lease.pid()).die(Exit::Code(3));
        let again = h.mgr.acquire("a.example").await;
        assert!(
            again.is_ok(),
            "a crash after a stable run is retried at once: {again:?}"
        );
        drop((lease, again));
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_that_never_gets_ready_is_killed_and_cleaned_up() {
        let h = harness_with(settings(), Duration::from_millis(150));
        h.spawner.start_delay_ms.store(5000, Ordering::SeqCst);
        match h.mgr.acquire("a.example").await {
            Err(ContainerError::NotReady { exit, waited, .. }) => {
                assert_eq!(exit, None);
                assert!(waited >= Duration::from_millis(150));
            }
            other => panic!("unexpected {other:?}"),
        }
        let p = h.spawner.last();
        assert_eq!(p.signals(), [libc::SIGKILL]);
        assert_eq!(p.cleanups(), 1);
        assert_eq!(h.state("a.example"), [WorkerState::Cold]);
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_lifetime_replaces_without_failing_a_session() {
        let h = harness(Settings {
            max_lifetime: Duration::from_millis(300),
            ..settings()
        });
        let old_lease = h.mgr.acquire("a.example").await.unwrap();
        let old = h.spawner.proc(old_lease.pid());
        // Sessions keep arriving; every one succeeds, first on the old worker, then on
        // its replacement.
        let deadline = Instant::now() + Duration::from_secs(10);
        let new_lease = loop {
            assert!(Instant::now() < deadline, "no replacement");
            let l = h.mgr.acquire("a.example").await.expect("acquire failed");
            assert!(connects(&l));
            if l.pid() != old.pid {
                break l;
            }
            drop(l);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The old worker still serves the session it has.
        assert!(old.signals().is_empty() && old.exited().is_none());
        assert!(connects(&old_lease));
        let old_info: Vec<_> = h
            .info("a.example")
            .into_iter()
            .filter(|i| i.pid == Some(old.pid))
            .collect();
        assert_eq!(old_info.len(), 1);
        assert_eq!(
            (old_info[0].state, old_info[0].sessions),
            (WorkerState::Draining, 1)
        );
        // Its last session ends: it is stopped.
        drop(old_lease);
        eventually("old worker stopped", || {
            old.cleanups() == 1 && !h.info("a.example").iter().any(|i| i.pid == Some(old.pid))
        })
        .await;
        assert_eq!(old.signals(), [libc::SIGTERM]);
        assert!(h.mgr.metrics().domains[0].reaps.get(ReapReason::Lifetime) >= 1);
        drop(new_lease);
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn set_limits_applies_live_and_to_later_starts_and_list_reports() {
        let h = harness(settings());
        let lease = h.mgr.acquire("a.example").await.unwrap();
        let p = h.spawner.proc(lease.pid());
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            pids_max: Some(32),
        };
        assert_eq!(h.mgr.set_limits("a.example", limits).unwrap(), 1);
        assert_eq!(*p.limits.lock().unwrap(), limits);

        let info = h.info("a.example");
        assert_eq!(info.len(), 1);
        let i = &info[0];
        assert_eq!(i.state, WorkerState::Ready);
        assert_eq!(i.pid, Some(p.pid));
        assert_eq!(i.endpoint.as_ref(), Some(lease.endpoint()));
        assert!(i.uptime.is_some());
        assert_eq!(i.sessions, 1);
        assert_eq!(i.usage.map(|u| u.memory_bytes), Some(1 << 20));
        assert!(i.last_start.is_some());
        assert_eq!((i.starts, i.crashes, i.crash_streak), (1, 0, 0));
        assert_eq!(i.idle_timeout, Duration::from_secs(60));

        drop(lease);
        h.mgr.stop("a.example").await;
        let cold = h.info("a.example");
        assert_eq!(cold.len(), 1);
        assert_eq!((cold[0].state, cold[0].pid), (WorkerState::Cold, None));

        let lease = h.mgr.acquire("a.example").await.unwrap();
        assert_eq!(h.spawner.proc(lease.pid()).spec_limits, limits);
        assert!(h.mgr.set_limits("../etc", limits).is_err());
        drop(lease);
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prewarm_starts_without_a_session() {
        let h = harness(settings());
        h.spawner.start_delay_ms.store(30, Ordering::SeqCst);
        h.mgr.prewarm("a.example");
        h.mgr.prewarm("a.example");
        h.mgr.prewarm("Not/A/Domain");
        eventually("prewarmed", || h.state("a.example") == [WorkerState::Ready]).await;
        assert_eq!(h.info("a.example")[0].sessions, 0);
        let lease = h.mgr.acquire("a.example").await.unwrap();
        assert_eq!(h.spawner.spawns(), 1);
        assert!(matches!(
            h.mgr.acquire("a/../b").await,
            Err(ContainerError::Invalid(_))
        ));
        drop(lease);
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warm_waits_for_ready_and_list_shows_instance_and_limits() {
        let h = harness(settings());
        h.spawner.start_delay_ms.store(30, Ordering::SeqCst);
        let pid = h.mgr.warm("a.example").await.unwrap();
        let info = h.info("a.example");
        assert_eq!(info.len(), 1, "{info:?}");
        assert_eq!(
            (info[0].state, info[0].pid, info[0].sessions),
            (WorkerState::Ready, Some(pid), 0)
        );
        assert!(info[0].instance.is_some(), "{info:?}");
        assert_eq!(info[0].limits, Some(Limits::default()));
        assert_eq!(h.mgr.warm("a.example").await.unwrap(), pid, "same worker");
        assert_eq!(h.spawner.spawns(), 1);

        let limits = Limits {
            memory_bytes: Some(64 << 20),
            ..Limits::default()
        };
        assert_eq!(h.mgr.set_limits("a.example", limits).unwrap(), 1);
        assert_eq!(h.info("a.example")[0].limits, Some(limits));
        assert_eq!(*lock(&h.spawner.proc(pid).limits), limits);

        h.spawner.die_on_start.store(true, Ordering::SeqCst);
        assert!(matches!(
            h.mgr.warm("b.example").await,
            Err(ContainerError::NotReady { .. })
        ));
        assert!(matches!(
            h.mgr.warm("Not/A/Domain").await,
            Err(ContainerError::Invalid(_))
        ));
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prometheus_text_after_starts_and_reaps() {
        let h = harness(Settings {
            idle: IdlePolicy::fixed(Duration::from_millis(50)),
            ..settings()
        });
        drop(h.mgr.acquire("a.example").await.unwrap());
        eventually("reaped", || h.state("a.example") == [WorkerState::Cold]).await;
        let _b = h.mgr.acquire("b.example").await.unwrap();
        let text = h.mgr.metrics().render_prometheus();
        let samples = check_exposition(&text);
        let get = |s: &str| samples.iter().find(|(k, _)| k == s).map(|x| x.1);
        let p = "wasmail_fastcontainer";
        assert_eq!(get(&format!("{p}_active_workers")), Some(1.0), "{text}");
        assert_eq!(
            get(&format!("{p}_starts_total{{domain=\"a.example\"}}")),
            Some(1.0)
        );
        assert_eq!(
            get(&format!(
                "{p}_reaps_total{{domain=\"a.example\",reason=\"idle\"}}"
            )),
            Some(1.0)
        );
        assert_eq!(
            get(&format!("{p}_sessions{{domain=\"b.example\"}}")),
            Some(1.0)
        );
        assert_eq!(
            get(&format!(
                "{p}_cold_start_seconds_count{{domain=\"b.example\"}}"
            )),
            Some(1.0)
        );
        assert_eq!(
            get(&format!(
                "{p}_cold_start_seconds_bucket{{domain=\"b.example\",le=\"+Inf\"}}"
            )),
            Some(1.0)
        );
        assert!(text.contains(&format!("# TYPE {p}_cold_start_seconds histogram")));
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_every_worker_and_refuses_new_sessions() {
        let h = harness(settings());
        let a = h.mgr.acquire("a.example").await.unwrap();
        h.mgr.prewarm("b.example");
        eventually("b ready", || h.state("b.example") == [WorkerState::Ready]).await;
        let mgr = h.mgr.clone();
        let spawner = h.spawner.clone();
        h.shut_down().await;
        assert_eq!(spawner.spawns(), 2);
        assert!(matches!(
            mgr.acquire("a.example").await,
            Err(ContainerError::Invalid(_))
        ));
        assert_eq!(mgr.metrics().active_workers(), 0);
        assert_eq!(
            mgr.metrics()
                .domains
                .iter()
                .map(|d| d.reaps.get(ReapReason::Shutdown))
                .sum::<u64>(),
            2
        );
        drop(a);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unresolvable_spec_is_reported_each_time_not_backed_off() {
        let h = harness(settings());
        for _ in 0..4 {
            match h.mgr.acquire("nospec.example").await {
                Err(ContainerError::Invalid(m)) => assert!(m.contains("not hosted"), "{m}"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(h.spawner.spawns(), 0);
        assert_eq!(h.info("nospec.example")[0].crash_streak, 0);
        h.shut_down().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_adaptive_timeout_learns_from_starts_and_gaps() {
        let h = harness(Settings {
            idle: IdlePolicy {
                mode: IdleMode::Adaptive,
                fixed: Duration::from_secs(5),
                min: Duration::from_millis(100),
                max: Duration::from_secs(10),
                latency_budget: Duration::ZERO,
            },
            ..settings()
        });
        // No history yet: the prior.
        drop(h.mgr.acquire("a.example").await.unwrap());
        assert_eq!(h.info("a.example")[0].idle_timeout, Duration::from_secs(5));
        // Sessions arriving right after each other: every gap is under 1 s, so the
        // 99th percentile is the first bucket's edge.
        for _ in 0..8 {
            drop(h.mgr.acquire("a.example").await.unwrap());
        }
        assert_eq!(h.info("a.example")[0].idle_timeout, Duration::from_secs(1));
        assert_eq!(h.spawner.spawns(), 1);
        h.shut_down().await;
    }

    #[test]
    fn backoff_schedule() {
        let s = Settings {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            ..settings()
        };
        let b: Vec<u64> = (0..12).map(|n| s.backoff(n).as_secs()).collect();
        assert_eq!(b, [0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(s.backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn instance_specs_get_their_own_run_dir() {
        let spec = WorkerSpec {
            domain: "a.example".into(),
            argv: vec!["/w".into()],
            env: Default::default(),
            uid: 1,
            gid: 1,
            run_dir: "/run/w/a.example".into(),
            run_dir_inside: "/run/wasmail".into(),
            mounts: Vec::new(),
            new_net: true,
            limits: Limits::default(),
            nofile: 64,
            ready: Endpoint::Unix("/run/w/a.example/sub/w.sock".into()),
            start_timeout: Duration::from_secs(1),
            files: Vec::new(),
        };
        let s = instance_spec(spec.clone(), 7).unwrap();
        assert_eq!(s.run_dir, Path::new("/run/w/a.example@7"));
        assert_eq!(
            s.ready,
            Endpoint::Unix("/run/w/a.example@7/sub/w.sock".into())
        );
        assert_eq!(s.run_dir_inside, spec.run_dir_inside);
        let long = WorkerSpec {
            run_dir: PathBuf::from("/").join("d".repeat(100)),
            ready: Endpoint::Unix(PathBuf::from("/").join("d".repeat(100)).join("w.sock")),
            ..spec
        };
        assert!(matches!(
            instance_spec(long, 1),
            Err(ContainerError::Invalid(_))
        ));
    }

    #[test]
    fn errors_are_copied_for_every_waiter() {
        let e = ContainerError::Sys {
            step: "clone".into(),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        };
        let c = clone_error(&e);
        assert_eq!(c.to_string(), e.to_string());
        let e = ContainerError::NotReady {
            domain: "d".into(),
            waited: Duration::from_secs(1),
            exit: Some(Exit::Code(3)),
        };
        assert_eq!(clone_error(&e).to_string(), e.to_string());
    }
}
