//! The admin API's requests and answers, without HTTP I/O: [`Admin::handle`] takes a
//! method, a path, the `Authorization` header and the body, and returns a [`Reply`]. The
//! HTTP driver ([`super::server`]) only reads requests and writes replies.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/health` | `{"status":"ok","version":..,"services":[..]}` |
//! | GET | `/metrics` | Prometheus text: `wasmail_up`, plugins, FastContainer and cluster counters |
//! | GET | `/workers` | `{"workers":[WorkerView..]}` |
//! | POST | `/workers/{domain}/prewarm` | starts the worker, waits until ready |
//! | POST | `/workers/{domain}/stop` | stops its workers (404 if none) |
//! | POST | `/workers/{domain}/limits` | `{"memory":"64MiB","cpu":0.5,"pids":100}` (any subset) |
//! | POST | `/plugins/reload` | reloads plugin files like SIGHUP |
//! | GET | `/cluster/hosts` | `{"host":..,"hosts":[HostInfo..],"owned":[..]}` (read from etcd) |
//! | POST | `/cluster/drain/{host}` | drains HOST (`/cluster/undrain/{host}` undoes it) |
//!
//! With a token configured every request needs `Authorization: Bearer <token>` (401
//! otherwise, before the path is even looked at). Errors are `{"error":"..."}`: 400 bad
//! input (the message names the field), 404 unknown path or no running worker, 405 wrong
//! method (with `Allow`), 409 worker endpoints without `[fastcontainer]` (cluster
//! endpoints without `[cluster]`), 500/502/503
//! failures of the operation itself.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tracing::info;

use crate::fastcontainer::config::{LimitsSection, check_domain};
use crate::fastcontainer::manager::{Manager, WorkerInfo, WorkerState};
use crate::fastcontainer::{ContainerError, Endpoint, Limits};
use crate::registry::password::Secret;
use crate::serve::Shared;

/// Media type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Media type of every other answer.
pub const JSON: &str = "application/json";

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers (`Allow`, `WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: StatusCode, value: &impl Serialize) -> Reply {
        let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Reply {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// `{"error": message}`.
    pub fn error(status: StatusCode, message: impl Into<String>) -> Reply {
        Reply::json(
            status,
            &ErrorBody {
                error: message.into(),
            },
        )
    }

    fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` (the process answers).
    pub status: String,
    /// wasmail's version.
    pub version: String,
    /// The services this process runs (`milter`, `lookup`, `fastcontainer`, ...).
    pub services: Vec<String>,
    /// Seconds since the admin API started.
    pub uptime_seconds: f64,
}

/// Cgroup limits as the API shows them; `null` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LimitsView {
    /// memory.max, bytes.
    pub memory_bytes: Option<u64>,
    /// CPUs (0.5 = half of one CPU).
    pub cpu: Option<f64>,
    /// pids.max.
    pub pids: Option<u32>,
}

impl From<Limits> for LimitsView {
    fn from(l: Limits) -> Self {
        LimitsView {
            memory_bytes: l.memory_bytes,
            cpu: l.cpu_millis.map(|m| f64::from(m) / 1000.0),
            pids: l.pids_max,
        }
    }
}

/// One line of `GET /workers`: a worker, or a domain without one (`cold`, `starting`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// The domain.
    pub domain: String,
    /// `cold`, `starting`, `ready`, `draining` or `stopping`.
    pub state: String,
    /// Host pid of the container's PID 1.
    pub pid: Option<u32>,
    /// Instance number (run directory `<domain>@<instance>`).
    pub instance: Option<u64>,
    /// Seconds since the worker became ready.
    pub uptime_seconds: Option<f64>,
    /// Open sessions.
    pub sessions: u32,
    /// Memory charged to its cgroup, bytes.
    pub memory_bytes: Option<u64>,
    /// CPU time used by its cgroup, microseconds.
    pub cpu_usec: Option<u64>,
    /// Processes in its cgroup.
    pub pids: Option<u64>,
    /// OOM kills in its cgroup.
    pub oom_kills: Option<u64>,
    /// Limits in effect.
    pub limits: Option<LimitsView>,
    /// Where sessions connect (`unix:/path` or `tcp:addr:port`).
    pub endpoint: Option<String>,
    /// The domain's idle timeout in effect, seconds.
    pub idle_timeout_seconds: f64,
    /// Spawn → ready of the domain's last start, seconds.
    pub last_start_seconds: Option<f64>,
    /// Workers of the domain that became ready.
    pub starts: u64,
    /// Ready workers of the domain that exited on their own.
    pub crashes: u64,
    /// Failed starts and crashes in a row.
    pub crash_streak: u32,
    /// Seconds until spawning is allowed again (crash backoff).
    pub retry_in_seconds: Option<f64>,
}

/// `GET /cluster/hosts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostList {
    /// The host answering.
    pub host: String,
    /// Every member and drained host.
    pub hosts: Vec<crate::cluster::HostInfo>,
    /// Domains the answering host owns.
    pub owned: Vec<String>,
}

/// `POST /cluster/drain/{host}` and `/cluster/undrain/{host}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drained {
    /// The host.
    pub host: String,
    /// Whether it is drained now.
    pub draining: bool,
}

/// `GET /workers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerList {
    /// Sorted by domain.
    pub workers: Vec<WorkerView>,
}

/// `POST /workers/{domain}/prewarm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prewarmed {
    /// The domain.
    pub domain: String,
    /// Host pid of its Ready worker.
    pub pid: u32,
}

/// `POST /workers/{domain}/stop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stopped {
    /// The domain.
    pub domain: String,
    /// Workers stopped.
    pub stopped: usize,
}

/// `POST /workers/{domain}/limits`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitsChanged {
    /// The domain.
    pub domain: String,
    /// Running workers whose cgroup was changed.
    pub workers: usize,
    /// The limits now in effect (also for the domain's later starts, until restart).
    pub limits: LimitsView,
}

/// `POST /plugins/reload`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reloaded {
    /// Plugins loaded with new content.
    pub loaded: Vec<String>,
    /// Plugins whose file did not change.
    pub unchanged: Vec<String>,
    /// Plugins refused; their previous version keeps serving.
    pub failed: Vec<ReloadFailure>,
}

/// One refused plugin file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadFailure {
    /// The plugin.
    pub plugin: String,
    /// Why.
    pub error: String,
}

/// The admin API over the running server's handles.
#[derive(Debug)]
pub struct Admin {
    shared: Shared,
    token: Option<Secret>,
    started: Instant,
}

/// The routes, for 404 vs 405.
enum Route<'p> {
    Health,
    Metrics,
    Workers,
    Prewarm(&'p str),
    Stop(&'p str),
    Limits(&'p str),
    Reload,
    Hosts,
    Drain(&'p str, bool),
}

impl Route<'_> {
    fn method(&self) -> Method {
        match self {
            Route::Health | Route::Metrics | Route::Workers | Route::Hosts => Method::GET,
            _ => Method::POST,
        }
    }
}

fn route(path: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    Some(match segments.as_slice() {
        ["health"] => Route::Health,
        ["metrics"] => Route::Metrics,
        ["workers"] => Route::Workers,
        ["workers", d, "prewarm"] => Route::Prewarm(d),
        ["workers", d, "stop"] => Route::Stop(d),
        ["workers", d, "limits"] => Route::Limits(d),
        ["plugins", "reload"] => Route::Reload,
        ["cluster", "hosts"] => Route::Hosts,
        ["cluster", "drain", h] => Route::Drain(h, true),
        ["cluster", "undrain", h] => Route::Drain(h, false),
        _ => return None,
    })
}

impl Admin {
    /// The API over `shared`; with `token`, every request must carry it.
    pub fn new(shared: Shared, token: Option<Secret>) -> Admin {
        Admin {
            shared,
            token,
            started: Instant::now(),
        }
    }

    /// Whether `authorization` (the header's value) carries the token: `Bearer <token>`,
    /// compared in constant time. Always true without a token.
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(value) = authorization else {
            return false;
        };
        let Some((scheme, given)) = value.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"Bearer ")
            && bool::from(given.trim_ascii().ct_eq(token.expose().as_bytes()))
    }

    /// Answers one request.
    pub async fn handle(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&[u8]>,
        body: &[u8],
    ) -> Reply {
        if !self.authorized(authorization) {
            let why = if authorization.is_some() {
                "wrong token"
            } else {
                "missing Authorization: Bearer <token> header"
            };
            return Reply::error(StatusCode::UNAUTHORIZED, why)
                .with_header("www-authenticate", "Bearer realm=\"wasmail\"");
        }
        let Some(route) = route(path) else {
            return Reply::error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
        };
        let allowed = route.method();
        if *method != allowed {
            return Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes {allowed}, not {method}"),
            )
            .with_header("allow", allowed.as_str());
        }
        match route {
            Route::Health => self.health(),
            Route::Metrics => self.metrics(),
            Route::Workers => match self.manager() {
                Ok(m) => Reply::json(
                    StatusCode::OK,
                    &WorkerList {
                        workers: m.list().into_iter().map(view).collect(),
                    },
                ),
                Err(r) => r,
            },
            Route::Prewarm(d) => self.prewarm(d).await,
            Route::Stop(d) => self.stop(d).await,
            Route::Limits(d) => self.limits(d, body),
            Route::Reload => self.reload().await,
            Route::Hosts => self.hosts().await,
            Route::Drain(h, on) => self.drain(h, on).await,
        }
    }

    fn cluster(&self) -> Result<&crate::cluster::Cluster, Reply> {
        self.shared.cluster.as_ref().ok_or_else(|| {
            Reply::error(
                StatusCode::CONFLICT,
                "this server has no [cluster] section: it is a single host",
            )
        })
    }

    async fn hosts(&self) -> Reply {
        let c = match self.cluster() {
            Ok(c) => c,
            Err(r) => return r,
        };
        match c.hosts().await {
            Ok(hosts) => Reply::json(
                StatusCode::OK,
                &HostList {
                    host: c.host().to_string(),
                    hosts,
                    owned: c.owned(),
                },
            ),
            Err(e) => Reply::error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    async fn drain(&self, host: &str, on: bool) -> Reply {
        let c = match self.cluster() {
            Ok(c) => c,
            Err(r) => return r,
        };
        if !crate::cluster::config::valid_host_name(host) {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                format!("host: not a host name: {host:?}"),
            );
        }
        info!(host, drain = on, "admin: drain");
        match c.drain(host, on).await {
            Ok(()) => Reply::json(
                StatusCode::OK,
                &Drained {
                    host: host.to_string(),
                    draining: on,
                },
            ),
            Err(e) => Reply::error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    fn manager(&self) -> Result<&Manager, Reply> {
        self.shared.fastcontainer.as_ref().ok_or_else(|| {
            Reply::error(
                StatusCode::CONFLICT,
                "FastContainer is not configured: this server has no [fastcontainer] section",
            )
        })
    }

    /// The manager and a checked domain for the worker endpoints.
    fn worker_target(&self, domain: &str) -> Result<&Manager, Reply> {
        let m = self.manager()?;
        check_domain(domain).map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e.to_string()))?;
        Ok(m)
    }

    fn health(&self) -> Reply {
        Reply::json(
            StatusCode::OK,
            &Health {
                status: "ok".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                services: self
                    .shared
                    .config
                    .services()
                    .into_iter()
                    .map(String::from)
                    .collect(),
                uptime_seconds: self.started.elapsed().as_secs_f64(),
            },
        )
    }

    fn metrics(&self) -> Reply {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, samples: &[(String, String)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        gauge(
            "wasmail_up",
            "1 while wasmail serve answers.",
            &[(String::new(), "1".into())],
        );
        gauge(
            "wasmail_build_info",
            "The running version, as a label.",
            &[(
                format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
                "1".into(),
            )],
        );
        gauge(
            "wasmail_uptime_seconds",
            "Seconds since the admin API started.",
            &[(
                String::new(),
                self.started.elapsed().as_secs_f64().to_string(),
            )],
        );
        let services: Vec<(String, String)> = self
            .shared
            .config
            .services()
            .into_iter()
            .map(|s| (format!("{{service=\"{s}\"}}"), "1".into()))
            .collect();
        gauge(
            "wasmail_service",
            "Services this process runs (1 each).",
            &services,
        );
        let plugins = self.shared.plugins.as_ref().map_or(0, |p| p.names().len());
        gauge(
            "wasmail_plugins",
            "Plugins currently loaded.",
            &[(String::new(), plugins.to_string())],
        );
        if let Some(p) = &self.shared.plugins {
            out.push_str(&p.render_prometheus());
        }
        if let Some(m) = &self.shared.fastcontainer {
            out.push_str(&m.metrics().render_prometheus());
        }
        if let Some(c) = &self.shared.cluster {
            out.push_str(&c.render_prometheus());
        }
        Reply {
            status: StatusCode::OK,
            content_type: PROMETHEUS_TEXT,
            headers: Vec::new(),
            body: out.into(),
        }
    }

    async fn prewarm(&self, domain: &str) -> Reply {
        let m = match self.worker_target(domain) {
            Ok(m) => m,
            Err(r) => return r,
        };
        info!(domain, "admin: prewarm");
        match m.warm(domain).await {
            Ok(pid) => Reply::json(
                StatusCode::OK,
                &Prewarmed {
                    domain: domain.into(),
                    pid,
                },
            ),
            Err(e) => container_error(domain, &e),
        }
    }

    async fn stop(&self, domain: &str) -> Reply {
        let m = match self.worker_target(domain) {
            Ok(m) => m,
            Err(r) => return r,
        };
        info!(domain, "admin: stop");
        match m.stop(domain).await {
            0 => no_worker(domain),
            n => Reply::json(
                StatusCode::OK,
                &Stopped {
                    domain: domain.into(),
                    stopped: n,
                },
            ),
        }
    }

    fn limits(&self, domain: &str, body: &[u8]) -> Reply {
        let m = match self.worker_target(domain) {
            Ok(m) => m,
            Err(r) => return r,
        };
        let change = match LimitsChange::parse(body) {
            Ok(c) => c,
            Err(e) => return Reply::error(StatusCode::BAD_REQUEST, e),
        };
        let Some(current) = m
            .list()
            .into_iter()
            .filter(|w| w.domain == domain && running(w.state))
            .find_map(|w| w.limits)
        else {
            return no_worker(domain);
        };
        let limits = change.apply(current);
        info!(domain, ?limits, "admin: limits");
        match m.set_limits(domain, limits) {
            Ok(workers) => Reply::json(
                StatusCode::OK,
                &LimitsChanged {
                    domain: domain.into(),
                    workers,
                    limits: limits.into(),
                },
            ),
            Err(e) => Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("changing the limits of {domain}: {e}"),
            ),
        }
    }

    async fn reload(&self) -> Reply {
        info!("admin: plugin reload");
        let report = crate::serve::reload_plugins(&self.shared).await;
        if self.shared.plugins.is_some() && report.is_none() {
            return Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the plugin reload failed (see the server log)",
            );
        }
        let r = report.unwrap_or_default();
        Reply::json(
            StatusCode::OK,
            &Reloaded {
                loaded: r.loaded,
                unchanged: r.unchanged,
                failed: r
                    .failed
                    .into_iter()
                    .map(|(plugin, error)| ReloadFailure { plugin, error })
                    .collect(),
            },
        )
    }
}

fn running(state: WorkerState) -> bool {
    matches!(state, WorkerState::Ready | WorkerState::Draining)
}

fn no_worker(domain: &str) -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        format!("no running worker for {domain}"),
    )
}

fn container_error(domain: &str, e: &ContainerError) -> Reply {
    match e {
        ContainerError::Backoff { retry_in, .. } => {
            Reply::error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                .with_header("retry-after", retry_in.as_secs().max(1).to_string())
        }
        ContainerError::Invalid(_) => Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("starting the worker for {domain}: {e}"),
        ),
        ContainerError::Sys { .. } | ContainerError::NotReady { .. } => Reply::error(
            StatusCode::BAD_GATEWAY,
            format!("starting the worker for {domain}: {e}"),
        ),
    }
}

fn state_name(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Cold => "cold",
        WorkerState::Starting => "starting",
        WorkerState::Ready => "ready",
        WorkerState::Draining => "draining",
        WorkerState::Stopping => "stopping",
    }
}

fn view(w: WorkerInfo) -> WorkerView {
    let secs = |d: Duration| d.as_secs_f64();
    WorkerView {
        state: state_name(w.state).into(),
        pid: w.pid,
        instance: w.instance,
        uptime_seconds: w.uptime.map(secs),
        sessions: w.sessions,
        memory_bytes: w.usage.map(|u| u.memory_bytes),
        cpu_usec: w.usage.map(|u| u.cpu_usec),
        pids: w.usage.map(|u| u.pids),
        oom_kills: w.usage.map(|u| u.oom_kills),
        limits: w.limits.map(LimitsView::from),
        endpoint: w.endpoint.map(|e| match e {
            Endpoint::Unix(p) => format!("unix:{}", p.display()),
            Endpoint::Tcp(a) => format!("tcp:{a}"),
        }),
        idle_timeout_seconds: secs(w.idle_timeout),
        last_start_seconds: w.last_start.map(secs),
        starts: w.starts,
        crashes: w.crashes,
        crash_streak: w.crash_streak,
        retry_in_seconds: w.retry_in.map(secs),
        domain: w.domain,
    }
}

/// The body of `POST /workers/{domain}/limits`: the fields to change, in the spellings of
/// `[fastcontainer.limits]` (`"64MiB"` or bytes, `0.5` or `"0.5"` CPUs, a process count,
/// `"unlimited"`); the others keep their current values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitsChange {
    /// New memory limit (inner None: unlimited).
    pub memory: Option<Option<u64>>,
    /// New CPU limit, thousandths of a CPU.
    pub cpu: Option<Option<u32>>,
    /// New pids limit.
    pub pids: Option<Option<u32>>,
}

impl LimitsChange {
    /// Parses a JSON body; the error names the offending field.
    pub fn parse(body: &[u8]) -> Result<LimitsChange, String> {
        let example = r#"e.g. {"memory":"64MiB","cpu":0.5,"pids":100}"#;
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| format!("the body is not JSON ({e}); {example}"))?;
        let serde_json::Value::Object(fields) = value else {
            return Err(format!("the body must be a JSON object, {example}"));
        };
        let mut change = LimitsChange::default();
        for (name, value) in fields {
            // One field at a time through the config's own parser, so the API accepts
            // exactly the file's spellings.
            let one = serde_json::Value::Object([(name.clone(), value)].into_iter().collect());
            let parsed = match name.as_str() {
                "memory" | "cpu" | "pids" => serde_json::from_value::<LimitsSection>(one)
                    .map_err(|e| format!("{name}: {e}"))?,
                _ => {
                    return Err(format!(
                        "{name}: unknown field; expected memory, cpu or pids"
                    ));
                }
            };
            match name.as_str() {
                "memory" => {
                    if parsed.memory.is_some_and(|m| m < 1 << 20) {
                        return Err("memory: must be at least 1MiB".into());
                    }
                    change.memory = Some(parsed.memory);
                }
                "cpu" => change.cpu = Some(parsed.cpu),
                _ => {
                    if parsed.pids == Some(0) {
                        return Err("pids: must be at least 1".into());
                    }
                    change.pids = Some(parsed.pids);
                }
            }
        }
        if change == LimitsChange::default() {
            return Err(format!(
                "nothing to change: give memory, cpu and/or pids, {example}"
            ));
        }
        Ok(change)
    }

    /// `current` with the given fields replaced.
    pub fn apply(&self, current: Limits) -> Limits {
        Limits {
            memory_bytes: self.memory.unwrap_or(current.memory_bytes),
            cpu_millis: self.cpu.unwrap_or(current.cpu_millis),
            pids_max: self.pids.unwrap_or(current.pids_max),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::sync::watch;

    use super::*;
    use crate::config::Config;
    use crate::fastcontainer::manager::Settings;
    use crate::fastcontainer::metrics::tests::check_exposition;
    use crate::fastcontainer::{Exit, Spawner, Usage, Worker, WorkerSpec};

    /// A worker double: a socket listening at the spec's ready path until signalled.
    #[derive(Debug)]
    struct FakeWorker {
        pid: u32,
        run_dir: PathBuf,
        listener: Mutex<Option<UnixListener>>,
        exit: Mutex<Option<Exit>>,
        limits: Arc<Mutex<Limits>>,
    }

    impl Worker for FakeWorker {
        fn pid(&self) -> u32 {
            self.pid
        }
        fn signal(&self, signal: i32) -> Result<(), ContainerError> {
            self.listener.lock().unwrap().take();
            self.exit
                .lock()
                .unwrap()
                .get_or_insert(Exit::Signal(signal));
            Ok(())
        }
        fn try_exit(&mut self) -> Option<Exit> {
            *self.exit.lock().unwrap()
        }
        fn usage(&self) -> Result<Usage, ContainerError> {
            Ok(Usage {
                memory_bytes: 3 << 20,
                cpu_usec: 1500,
                pids: 2,
                oom_kills: 0,
            })
        }
        fn set_limits(&self, limits: &Limits) -> Result<(), ContainerError> {
            *self.limits.lock().unwrap() = *limits;
            Ok(())
        }
        fn cleanup(&mut self) -> Result<(), ContainerError> {
            let _ = std::fs::remove_dir_all(&self.run_dir);
            Ok(())
        }
    }

    /// Spawns [`FakeWorker`]s; remembers the cgroup limits of the last one.
    #[derive(Debug, Default)]
    struct FakeSpawner {
        next: AtomicU32,
        limits: Arc<Mutex<Limits>>,
    }

    impl Spawner for FakeSpawner {
        fn spawn(&self, spec: &WorkerSpec) -> Result<Box<dyn Worker>, ContainerError> {
            let Endpoint::Unix(path) = &spec.ready else {
                unreachable!("the test config uses a unix socket")
            };
            std::fs::create_dir_all(&spec.run_dir).unwrap();
            *self.limits.lock().unwrap() = spec.limits;
            Ok(Box::new(FakeWorker {
                pid: 5000 + self.next.fetch_add(1, Ordering::SeqCst),
                run_dir: spec.run_dir.clone(),
                listener: Mutex::new(Some(UnixListener::bind(path).unwrap())),
                exit: Mutex::new(None),
                limits: self.limits.clone(),
            }))
        }
    }

    struct Api {
        admin: Admin,
        spawner: Arc<FakeSpawner>,
        shutdown: watch::Sender<bool>,
        reaper: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    const TOKEN: &str = "0123456789abcdef-test";

    fn api(fastcontainer: bool, token: bool) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("[admin]\nlisten = \"unix:/run/a.sock\"\n");
        if fastcontainer {
            text.push_str(&format!(
                "[fastcontainer]\nrun_root = \"{0}/run\"\nstorage_root = \"{0}/mail\"\n\
                 [fastcontainer.worker]\nargv = [\"/bin/worker\"]\n\
                 [fastcontainer.limits]\nmemory = \"128MiB\"\ncpu = 1\npids = 50\n",
                dir.path().display()
            ));
        }
        let config = Arc::new(Config::from_str_at(&text, Path::new("t.toml")).unwrap());
        let spawner = Arc::new(FakeSpawner::default());
        let (shutdown, rx) = watch::channel(false);
        let manager = config.fastcontainer.clone().map(|section| {
            let settings = Settings::from_section(&section);
            Manager::new(
                spawner.clone(),
                move |d: &str| section.spec_with_registry(d, None),
                settings,
            )
        });
        let reaper = {
            let m = manager.clone();
            tokio::spawn(async move {
                if let Some(m) = m {
                    m.run_reaper(rx).await
                }
            })
        };
        let shared = Shared {
            config,
            plugins: None,
            registry: None,
            router: crate::cluster::Router::new(manager.clone(), None, None),
            fastcontainer: manager,
            cluster: None,
            relay_tls: None,
            event_loops: None,
        };
        let token = token.then(|| Secret::new(TOKEN.into()));
        Api {
            admin: Admin::new(shared, token),
            spawner,
            shutdown,
            reaper,
            _dir: dir,
        }
    }

    impl Api {
        async fn call(&self, method: Method, path: &str, body: &str) -> (StatusCode, String) {
            let auth = format!("Bearer {TOKEN}");
            let r = self
                .admin
                .handle(&method, path, Some(auth.as_bytes()), body.as_bytes())
                .await;
            (r.status, String::from_utf8(r.body.to_vec()).unwrap())
        }

        async fn json(&self, method: Method, path: &str, body: &str) -> serde_json::Value {
            let (status, text) = self.call(method, path, body).await;
            assert_eq!(status, StatusCode::OK, "{path}: {text}");
            serde_json::from_str(&text).unwrap()
        }

        async fn shut_down(self) {
            self.shutdown.send(true).unwrap();
            self.reaper.await.unwrap();
        }
    }

    fn error_of(text: &str) -> String {
        serde_json::from_str::<ErrorBody>(text).unwrap().error
    }

    #[tokio::test]
    async fn token_is_checked_before_anything_else() {
        let a = api(false, true);
        for (auth, why) in [
            (None, "missing Authorization"),
            (Some("Bearer wrong-token-0123456789"), "wrong token"),
            (Some("Basic MDEyMzQ1Njc4OWFiY2RlZi10ZXN0"), "wrong token"),
            (Some("Bearer"), "wrong token"),
        ] {
            for path in ["/health", "/nowhere"] {
                let r = a
                    .admin
                    .handle(&Method::GET, path, auth.map(str::as_bytes), b"")
                    .await;
                assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?} {path}");
                assert!(error_of(std::str::from_utf8(&r.body).unwrap()).contains(why));
                assert!(r.headers.iter().any(|(n, _)| *n == "www-authenticate"));
            }
        }
        let ok = format!("bearer {TOKEN}");
        let r = a
            .admin
            .handle(&Method::GET, "/health", Some(ok.as_bytes()), b"")
            .await;
        assert_eq!(r.status, StatusCode::OK);
        // Without a configured token, no header is needed.
        let open = api(false, false);
        let r = open.admin.handle(&Method::GET, "/health", None, b"").await;
        assert_eq!(r.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn health_metrics_404_405_without_fastcontainer() {
        let a = api(false, true);
        let h: Health = serde_json::from_value(a.json(Method::GET, "/health", "").await).unwrap();
        assert_eq!(
            (h.status.as_str(), h.services),
            ("ok", vec!["admin".into()])
        );

        let r = a
            .admin
            .handle(
                &Method::GET,
                "/metrics",
                Some(format!("Bearer {TOKEN}").as_bytes()),
                b"",
            )
            .await;
        assert_eq!(r.content_type, PROMETHEUS_TEXT);
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        let samples = check_exposition(&text);
        assert!(samples.contains(&("wasmail_up".into(), 1.0)), "{text}");
        assert!(samples.contains(&("wasmail_plugins".into(), 0.0)), "{text}");
        assert!(!text.contains("fastcontainer"), "{text}");

        let (s, t) = a.call(Method::GET, "/workerz", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(error_of(&t).contains("/workerz"));
        let (s, t) = a.call(Method::POST, "/health", "").await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert!(error_of(&t).contains("takes GET"), "{t}");
        let (s, _) = a.call(Method::GET, "/workers/a.example/stop", "").await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

        for (m, path) in [
            (Method::GET, "/workers"),
            (Method::POST, "/workers/a.example/prewarm"),
            (Method::POST, "/workers/a.example/stop"),
            (Method::POST, "/workers/a.example/limits"),
        ] {
            let (s, t) = a.call(m, path, "{\"pids\":5}").await;
            assert_eq!(s, StatusCode::CONFLICT, "{path}");
            assert!(error_of(&t).contains("no [fastcontainer] section"), "{t}");
        }
        // Reload without plugins: nothing to do, nothing failed.
        let r: Reloaded =
            serde_json::from_value(a.json(Method::POST, "/plugins/reload", "").await).unwrap();
        assert!(r.loaded.is_empty() && r.failed.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker_lifecycle_through_the_api() {
        let a = api(true, true);
        let list = a.json(Method::GET, "/workers", "").await;
        assert_eq!(list["workers"].as_array().unwrap().len(), 0);
        let (s, t) = a.call(Method::POST, "/workers/a.example/stop", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(error_of(&t).contains("no running worker for a.example"));
        let (s, _) = a
            .call(Method::POST, "/workers/a.example/limits", "{\"pids\":5}")
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, t) = a.call(Method::POST, "/workers/..%2Fetc/prewarm", "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{t}");

        let p: Prewarmed =
            serde_json::from_value(a.json(Method::POST, "/workers/a.example/prewarm", "").await)
                .unwrap();
        let list: WorkerList =
            serde_json::from_value(a.json(Method::GET, "/workers", "").await).unwrap();
        let w = &list.workers[0];
        assert_eq!(
            (w.domain.as_str(), w.state.as_str(), w.pid),
            ("a.example", "ready", Some(p.pid))
        );
        assert_eq!(
            (w.memory_bytes, w.cpu_usec, w.pids),
            (Some(3 << 20), Some(1500), Some(2))
        );
        assert!(w.instance.is_some() && w.uptime_seconds.is_some());
        assert_eq!(
            w.limits,
            Some(LimitsView {
                memory_bytes: Some(128 << 20),
                cpu: Some(1.0),
                pids: Some(50)
            })
        );

        // A subset changes only those fields, in the config's spellings.
        let c: LimitsChanged = serde_json::from_value(
            a.json(
                Method::POST,
                "/workers/a.example/limits",
                r#"{"memory":"64MiB","cpu":"0.5"}"#,
            )
            .await,
        )
        .unwrap();
        let want = Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            pids_max: Some(50),
        };
        assert_eq!((c.workers, c.limits), (1, want.into()));
        assert_eq!(*a.spawner.limits.lock().unwrap(), want);
        a.json(
            Method::POST,
            "/workers/a.example/limits",
            r#"{"pids":"unlimited"}"#,
        )
        .await;
        assert_eq!(a.spawner.limits.lock().unwrap().pids_max, None);

        for (body, names) in [
            (r#"{"memory":"64 parsecs"}"#, "memory:"),
            (r#"{"memory":1000}"#, "memory: must be at least 1MiB"),
            (r#"{"cpu":-1}"#, "cpu:"),
            (r#"{"pids":0}"#, "pids: must be at least 1"),
            (r#"{"swap":"1G"}"#, "swap: unknown field"),
            ("{}", "nothing to change"),
            ("[1]", "JSON object"),
            ("memory=1G", "not JSON"),
        ] {
            let (s, t) = a
                .call(Method::POST, "/workers/a.example/limits", body)
                .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
            assert!(error_of(&t).contains(names), "{body}: {t}");
        }

        let st: Stopped =
            serde_json::from_value(a.json(Method::POST, "/workers/a.example/stop", "").await)
                .unwrap();
        assert_eq!(st.stopped, 1);
        let list: WorkerList =
            serde_json::from_value(a.json(Method::GET, "/workers", "").await).unwrap();
        assert_eq!(list.workers[0].state, "cold", "{list:?}");

        let r = a
            .admin
            .handle(
                &Method::GET,
                "/metrics",
                Some(format!("Bearer {TOKEN}").as_bytes()),
                b"",
            )
            .await;
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        let samples = check_exposition(&text);
        let get = |k: &str| samples.iter().find(|(n, _)| n == k).map(|s| s.1);
        assert_eq!(
            get("wasmail_fastcontainer_starts_total{domain=\"a.example\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            get("wasmail_fastcontainer_reaps_total{domain=\"a.example\",reason=\"stop\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            get("wasmail_service{service=\"fastcontainer\"}"),
            Some(1.0),
            "{text}"
        );
        a.shut_down().await;
    }

    #[test]
    fn limits_change_keeps_unnamed_fields() {
        let current = Limits {
            memory_bytes: Some(1 << 30),
            cpu_millis: Some(2000),
            pids_max: None,
        };
        let c = LimitsChange::parse(br#"{"cpu":0.25,"memory":"unlimited"}"#).unwrap();
        assert_eq!(
            c.apply(current),
            Limits {
                memory_bytes: None,
                cpu_millis: Some(250),
                pids_max: None,
            }
        );
        let c = LimitsChange::parse(br#"{"pids":100,"memory":67108864}"#).unwrap();
        assert_eq!(c.apply(current).memory_bytes, Some(64 << 20));
        assert_eq!(c.apply(current).pids_max, Some(100));
    }
}
