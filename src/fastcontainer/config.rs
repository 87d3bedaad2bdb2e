//! `[fastcontainer]` configuration section: where workers live, the default worker
//! template, limits and the lifecycle policy (idle, max lifetime, crash backoff).
//!
//! [`FastContainerSection`] is the raw serde struct; [`FastContainerSection::validate`]
//! checks what types cannot; [`FastContainerSection::spec_for`] turns the template into one
//! domain's [`WorkerSpec`]. Sizes and CPU amounts are parsed here ([`parse_size`],
//! [`parse_cpu`]) so the CLI and the admin API accept the same spellings as the file.
//!
//! ```toml
//! [fastcontainer]
//! idle = "adaptive"          # or "fixed" (then idle_timeout is the timeout)
//! max_lifetime = "24h"
//!
//! [fastcontainer.worker]
//! argv = ["/usr/libexec/wasmail-worker", "--socket", "{run_dir}/worker.sock", "--mail", "{storage}"]
//! env = { DOMAIN = "{domain}" }
//! ready = "unix:worker.sock"
//!
//! [fastcontainer.limits]
//! memory = "256MiB"
//! cpu = 0.5
//! pids = 256
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{BindMount, ContainerError, Endpoint, Limits, WorkerFile, WorkerSpec};
use crate::config::Validator;

/// Raw `[fastcontainer]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FastContainerSection {
    /// Host directory holding one run directory per running worker (its sockets and
    /// state; removed when the worker stops). Default `/run/wasmail/workers`. A worker's
    /// run directory is `<run_root>/<domain>@<instance>`, so keep this short: a unix socket
    /// path is limited to 107 bytes.
    pub run_root: PathBuf,
    /// Host directory holding each domain's mail storage as `<storage_root>/<domain>`,
    /// bind-mounted read-write into that domain's worker. Default `/var/lib/wasmail/mail`.
    pub storage_root: PathBuf,
    /// Where the worker's run directory appears inside its container (`{run_dir}` in the
    /// template). Default `/run/wasmail`.
    pub run_dir_inside: PathBuf,
    /// Where the domain's storage appears inside its container (`{storage}` in the
    /// template). Default `/mail`.
    pub storage_inside: PathBuf,
    /// Name of the cgroup (in every controller hierarchy) under which worker cgroups are
    /// created. Default `"wasmail"`.
    pub cgroup_root: String,
    /// The default worker, used for every domain unless the registry says otherwise.
    pub worker: WorkerTemplate,
    /// Host directories bind-mounted read-only at the same path into every worker; entries
    /// that do not exist on the host are skipped (so one list serves merged-/usr and
    /// multiarch hosts). Default `["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"]`.
    pub system_mounts: Vec<PathBuf>,
    /// Also give each worker its own network namespace (loopback only: the worker is then
    /// reachable only through sockets in its run directory). Default false.
    pub new_net: bool,
    /// Default cgroup limits per worker.
    pub limits: LimitsSection,
    /// RLIMIT_NOFILE (open files) per worker. Default 4096.
    pub nofile: u64,
    /// Longest wait from spawn until the worker's `ready` endpoint accepts a connection;
    /// a worker not ready by then is killed and the session fails. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// How long an idle worker (no sessions) is kept: `"adaptive"` (default; per domain,
    /// from its measured start time and arrival history, between `idle_min` and
    /// `idle_max`, see `fastcontainer::adaptive`) or `"fixed"` (always `idle_timeout`).
    pub idle: IdleMode,
    /// The idle timeout in `fixed` mode; in `adaptive` mode, the timeout of a domain with
    /// too little history (clamped to `idle_min..=idle_max`). Default 10 min.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Adaptive mode: the shortest idle timeout. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub idle_min: Duration,
    /// Adaptive mode: the longest idle timeout. Default 30 min.
    #[serde(with = "humantime_serde")]
    pub idle_max: Duration,
    /// Adaptive mode: the expected cold-start delay per idle period we accept. A domain
    /// whose start takes less than this is reaped after `idle_min`; a slower one is kept
    /// long enough that the next arrival finds it running with probability
    /// `1 - budget / start_time`. Default 10 ms.
    #[serde(with = "humantime_serde")]
    pub idle_latency_budget: Duration,
    /// After SIGTERM, how long a worker may take to exit before SIGKILL. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// A worker older than this is replaced: new sessions go to a fresh worker, the old
    /// one stops when its last session ends (so updates reach every domain without a
    /// maintenance window). Default 24 h.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// First delay after repeated crashes; it doubles with each further crash in a row.
    /// The first crash is retried at once. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Longest crash backoff. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A worker that stayed up this long ends its domain's crash streak. Default 1 min.
    #[serde(with = "humantime_serde")]
    pub backoff_reset: Duration,
    /// At start, switch the host's cgroups to the kernel's `favordynmods` mode (Linux ≥
    /// 6.0; a remount of one cgroup hierarchy, host-wide, until reboot): a worker's move
    /// into its cgroup no longer waits for an RCU grace period, which removed the 10-30 ms
    /// tail of cold starts on the test VM, at the cost of slightly slower fork/exit for the
    /// whole host. Default false (wasmail leaves host settings alone unless asked).
    pub favordynmods: bool,
    /// Build each worker's root from a read-only template root that the manager prepares
    /// once per worker shape (a tmpfs with the system binds and `/dev` nodes under
    /// `roots/.template-*` beside `run_root`, mounted on the host while `serve` runs): one
    /// recursive bind per start instead of ~14 mount calls. Default true; false builds
    /// every root from scratch.
    pub template_roots: bool,
}

/// `[fastcontainer.worker]`: the worker template. In `argv` and `env` values the
/// placeholders `{domain}`, `{run_dir}` and `{storage}` are replaced (paths as seen inside
/// the container); `{{` and `}}` stand for literal braces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerTemplate {
    /// Program and arguments; `argv[0]` is an absolute path inside the container. Required
    /// (default empty, which `validate` rejects).
    pub argv: Vec<String>,
    /// Environment of the worker (nothing is inherited from wasmail). Default empty.
    pub env: BTreeMap<String, String>,
    /// User id the worker runs as. Default 65534 (nobody).
    pub uid: u32,
    /// Group id the worker runs as. Default 65534 (nogroup).
    pub gid: u32,
    /// The endpoint that accepts once the worker is ready, and where sessions connect:
    /// `unix:NAME` (a socket at NAME relative to the worker's run directory) or
    /// `tcp:ADDR:PORT`. Default `unix:worker.sock`.
    pub ready: String,
    /// Files generated into the worker's run directory before it starts: file name →
    /// template file on the host (absolute path, read at every spawn, so edits reach the
    /// next worker). In templates exactly these tokens are replaced and every other brace
    /// is kept (Dovecot's own `%{...}` and `{ }` blocks pass through): `{domain}`,
    /// `{run_dir}`, `{storage}` (paths inside the container), `{uid}`, `{gid}`, and
    /// `{user}`, `{group}` (the names of `uid`/`gid` on the host). Default none.
    pub files: BTreeMap<String, PathBuf>,
    /// Name of a file generated in the run directory listing the domain's mailboxes from
    /// the registry in Dovecot `passwd-file` format (`address:{SCHEME}hash::::::`, one
    /// line per mailbox with a password; mode 0640), for the worker's passdb. Default
    /// none.
    pub passwd_file: Option<String>,
}

/// `[fastcontainer.limits]`: cgroup limits per worker. Each also accepts `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Memory limit: bytes as an integer, or text with a unit `K`, `M`, `G`, `T` (or
    /// `KiB`, `MiB`, `GiB`, `TiB`; all powers of 1024, as in cgroups and systemd), e.g.
    /// `"256MiB"`. Default 256 MiB.
    #[serde(deserialize_with = "de_memory")]
    pub memory: Option<u64>,
    /// CPU limit in CPUs, e.g. `0.5` or `"0.5"` (half of one CPU) or `2`; at most three
    /// decimals. Default 1 CPU.
    #[serde(deserialize_with = "de_cpu")]
    pub cpu: Option<u32>,
    /// Most processes and threads in the worker's cgroup. Default 256.
    #[serde(deserialize_with = "de_pids")]
    pub pids: Option<u32>,
}

/// `[fastcontainer] idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleMode {
    /// Per domain from start time and arrival history, within `idle_min..=idle_max`.
    #[default]
    Adaptive,
    /// Always `idle_timeout`.
    Fixed,
}

impl Default for FastContainerSection {
    fn default() -> Self {
        FastContainerSection {
            run_root: "/run/wasmail/workers".into(),
            storage_root: "/var/lib/wasmail/mail".into(),
            run_dir_inside: "/run/wasmail".into(),
            storage_inside: "/mail".into(),
            cgroup_root: "wasmail".into(),
            worker: WorkerTemplate::default(),
            system_mounts: ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            new_net: false,
            limits: LimitsSection::default(),
            nofile: 4096,
            start_timeout: Duration::from_secs(5),
            idle: IdleMode::Adaptive,
            idle_timeout: Duration::from_secs(600),
            idle_min: Duration::from_secs(30),
            idle_max: Duration::from_secs(1800),
            idle_latency_budget: Duration::from_millis(10),
            stop_grace: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(24 * 3600),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(60),
            favordynmods: false,
            template_roots: true,
        }
    }
}

impl Default for WorkerTemplate {
    fn default() -> Self {
        WorkerTemplate {
            argv: Vec::new(),
            env: BTreeMap::new(),
            uid: 65534,
            gid: 65534,
            ready: "unix:worker.sock".into(),
            files: BTreeMap::new(),
            passwd_file: None,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            memory: Some(256 << 20),
            cpu: Some(1000),
            pids: Some(256),
        }
    }
}

impl LimitsSection {
    /// The limits in the form the spawner applies.
    pub fn to_limits(self) -> Limits {
        Limits {
            memory_bytes: self.memory,
            cpu_millis: self.cpu,
            pids_max: self.pids,
        }
    }
}

/// Where a worker is reached, relative to its run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadyTemplate {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

fn parse_ready(s: &str) -> Result<ReadyTemplate, String> {
    if let Some(rel) = s.strip_prefix("unix:") {
        let p = Path::new(rel);
        let plain = p
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if rel.is_empty() || !plain {
            return Err(format!(
                "`{s}`: the socket must be a relative path inside the run directory, \
                 without `..`, e.g. unix:worker.sock"
            ));
        }
        Ok(ReadyTemplate::Unix(p.to_path_buf()))
    } else if let Some(addr) = s.strip_prefix("tcp:") {
        addr.parse()
            .map(ReadyTemplate::Tcp)
            .map_err(|_| format!("`{s}`: expected tcp:ADDR:PORT, e.g. tcp:127.0.0.1:1143"))
    } else {
        Err(format!(
            "`{s}`: use unix:NAME (relative to the run directory) or tcp:ADDR:PORT"
        ))
    }
}

impl FastContainerSection {
    /// Checks values serde cannot check by type; problems are recorded under `key`.
    pub fn validate(&self, key: &str, v: &mut Validator) {
        for (name, path) in [
            ("run_root", &self.run_root),
            ("storage_root", &self.storage_root),
            ("run_dir_inside", &self.run_dir_inside),
            ("storage_inside", &self.storage_inside),
        ] {
            if !path.is_absolute() {
                v.error(format!("{key}.{name}"), "must be an absolute path");
            }
        }
        for (i, m) in self.system_mounts.iter().enumerate() {
            if !m.is_absolute() {
                v.error(
                    format!("{key}.system_mounts[{i}]"),
                    "must be an absolute path",
                );
            }
        }
        if self.cgroup_root.is_empty()
            || self.cgroup_root.contains('/')
            || self.cgroup_root == "."
            || self.cgroup_root == ".."
        {
            v.error(
                format!("{key}.cgroup_root"),
                "must be one cgroup name (no `/`), e.g. \"wasmail\"",
            );
        }
        match self.worker.argv.first() {
            None => v.error(
                format!("{key}.worker.argv"),
                "set the worker program and its arguments, e.g. \
                 [\"/usr/libexec/wasmail-worker\", \"--socket\", \"{run_dir}/worker.sock\"]",
            ),
            Some(prog) if !prog.starts_with('/') => v.error(
                format!("{key}.worker.argv"),
                "argv[0] must be an absolute path inside the container",
            ),
            Some(_) => {}
        }
        let vars = [
            ("domain", "example.com"),
            ("run_dir", "/r"),
            ("storage", "/s"),
        ];
        for (i, a) in self.worker.argv.iter().enumerate() {
            if let Err(e) = substitute(a, &vars) {
                v.error(format!("{key}.worker.argv[{i}]"), e);
            }
        }
        for (name, value) in &self.worker.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                v.error(
                    format!("{key}.worker.env"),
                    format_args!("`{name}` is not an environment variable name"),
                );
            }
            if let Err(e) = substitute(value, &vars) {
                v.error(format!("{key}.worker.env.{name}"), e);
            }
        }
        if let Err(e) = parse_ready(&self.worker.ready) {
            v.error(format!("{key}.worker.ready"), e);
        }
        for (name, template) in &self.worker.files {
            if let Err(e) = check_file_name(name) {
                v.error(format!("{key}.worker.files"), e);
            }
            if !template.is_absolute() {
                v.error(
                    format!("{key}.worker.files.{name}"),
                    "the template must be an absolute path",
                );
            } else if let Err(e) = std::fs::metadata(template) {
                v.error(
                    format!("{key}.worker.files.{name}"),
                    format_args!("template {}: {e}", template.display()),
                );
            }
        }
        if let Some(name) = &self.worker.passwd_file {
            if let Err(e) = check_file_name(name) {
                v.error(format!("{key}.worker.passwd_file"), e);
            } else if self.worker.files.contains_key(name) {
                v.error(
                    format!("{key}.worker.passwd_file"),
                    format_args!("`{name}` is also in worker.files"),
                );
            }
        }
        if self.limits.memory.is_some_and(|m| m < 1 << 20) {
            v.error(format!("{key}.limits.memory"), "must be at least 1MiB");
        }
        if self.limits.pids == Some(0) {
            v.error(format!("{key}.limits.pids"), "must be at least 1");
        }
        if self.nofile < 16 {
            v.error(format!("{key}.nofile"), "must be at least 16");
        }
        for (name, d) in [
            ("start_timeout", self.start_timeout),
            ("idle_timeout", self.idle_timeout),
            ("idle_min", self.idle_min),
            ("backoff_base", self.backoff_base),
            ("backoff_reset", self.backoff_reset),
            ("max_lifetime", self.max_lifetime),
        ] {
            if d.is_zero() {
                v.error(format!("{key}.{name}"), "must be greater than 0");
            }
        }
        if self.idle_min > self.idle_max {
            v.error(
                format!("{key}.idle_max"),
                format_args!(
                    "must not be below idle_min ({})",
                    humantime::format_duration(self.idle_min)
                ),
            );
        }
        if self.backoff_base > self.backoff_max {
            v.error(
                format!("{key}.backoff_max"),
                format_args!(
                    "must not be below backoff_base ({})",
                    humantime::format_duration(self.backoff_base)
                ),
            );
        }
        if self.stop_grace > Duration::from_secs(600) {
            v.error(format!("{key}.stop_grace"), "must be at most 10m");
        }
    }

    /// The worker spec for `domain` as the running server builds it: [`Self::spec_for`]
    /// plus what comes from the registry (the domain's mailboxes for a generated passdb
    /// file). `registry` is None when no registry is configured.
    pub fn spec_with_registry(
        &self,
        domain: &str,
        registry: Option<&crate::registry::Snapshot>,
    ) -> Result<WorkerSpec, ContainerError> {
        let mut spec = self.spec_for(domain)?;
        let Some(snapshot) = registry else {
            return Ok(spec);
        };
        if let Some(d) = snapshot.domain(domain) {
            apply_domain_limits(&mut spec.limits, &d.settings)?;
        }
        if let Some(name) = &self.worker.passwd_file {
            spec.files.push(WorkerFile {
                name: name.clone(),
                contents: passwd_file(snapshot, domain),
                mode: 0o640,
            });
        }
        Ok(spec)
    }

    /// The worker spec for `domain` from the defaults: placeholders substituted, system
    /// mounts that exist on the host (read-only) plus the domain's storage (read-write),
    /// run directory `<run_root>/<domain>` (the manager gives each worker instance its own
    /// `…@<n>` sibling of it). Fails with [`ContainerError::Invalid`] for a domain that is
    /// not a lower-case DNS name or a template that does not expand.
    pub fn spec_for(&self, domain: &str) -> Result<WorkerSpec, ContainerError> {
        check_domain(domain)?;
        let run_inside = self.run_dir_inside.to_string_lossy();
        let storage_inside = self.storage_inside.to_string_lossy();
        let vars = [
            ("domain", domain),
            ("run_dir", &*run_inside),
            ("storage", &*storage_inside),
        ];
        let expand = |s: &str| {
            substitute(s, &vars).map_err(|e| {
                ContainerError::Invalid(format!("[fastcontainer.worker] for {domain}: {e}"))
            })
        };
        if self.worker.argv.is_empty() {
            return Err(ContainerError::Invalid(
                "[fastcontainer.worker] argv is empty".into(),
            ));
        }
        let argv = self
            .worker
            .argv
            .iter()
            .map(|a| expand(a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = self
            .worker
            .env
            .iter()
            .map(|(k, val)| Ok((k.clone(), expand(val)?)))
            .collect::<Result<BTreeMap<_, _>, ContainerError>>()?;
        let run_dir = self.run_root.join(domain);
        let ready = match parse_ready(&self.worker.ready).map_err(ContainerError::Invalid)? {
            ReadyTemplate::Unix(rel) => Endpoint::Unix(run_dir.join(rel)),
            ReadyTemplate::Tcp(addr) => Endpoint::Tcp(addr),
        };
        let mut mounts: Vec<BindMount> = self
            .system_mounts
            .iter()
            .filter(|p| p.exists())
            .map(|p| BindMount {
                source: p.clone(),
                target: p.clone(),
                read_only: true,
            })
            .collect();
        mounts.push(BindMount {
            source: self.storage_root.join(domain),
            target: self.storage_inside.clone(),
            read_only: false,
        });
        let files = self
            .worker
            .files
            .iter()
            .map(|(name, template)| {
                let text = std::fs::read_to_string(template).map_err(|e| ContainerError::Sys {
                    step: format!(
                        "read [fastcontainer.worker.files] template {}",
                        template.display()
                    ),
                    source: e,
                })?;
                Ok(WorkerFile {
                    name: name.clone(),
                    contents: render_file(&text, &self.file_vars(domain)).into_bytes(),
                    mode: 0o640,
                })
            })
            .collect::<Result<Vec<_>, ContainerError>>()?;
        Ok(WorkerSpec {
            files,
            domain: domain.to_string(),
            argv,
            env,
            uid: self.worker.uid,
            gid: self.worker.gid,
            run_dir,
            run_dir_inside: self.run_dir_inside.clone(),
            mounts,
            new_net: self.new_net,
            limits: self.limits.to_limits(),
            nofile: self.nofile,
            ready,
            start_timeout: self.start_timeout,
        })
    }
}

impl FastContainerSection {
    /// The tokens replaced in file templates, for `domain`.
    fn file_vars(&self, domain: &str) -> Vec<(&'static str, String)> {
        let uid = self.worker.uid;
        let gid = self.worker.gid;
        let user = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        let group = nix::unistd::Group::from_gid(gid.into())
            .ok()
            .flatten()
            .map_or_else(|| gid.to_string(), |g| g.name);
        vec![
            ("domain", domain.to_string()),
            (
                "run_dir",
                self.run_dir_inside.to_string_lossy().into_owned(),
            ),
            (
                "storage",
                self.storage_inside.to_string_lossy().into_owned(),
            ),
            ("uid", uid.to_string()),
            ("gid", gid.to_string()),
            ("user", user),
            ("group", group),
        ]
    }
}

/// Replaces exactly the `{name}` tokens of `vars` in `text`; other braces stay.
fn render_file(text: &str, vars: &[(&'static str, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// A generated file's name: one plain path component.
fn check_file_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be a plain file name inside the run directory"
        ))
    }
}

/// Per-domain limit overrides from registry settings (`worker.memory`, `worker.cpu`,
/// `worker.pids`, same spellings as `[fastcontainer.limits]`).
fn apply_domain_limits(
    limits: &mut Limits,
    settings: &BTreeMap<String, String>,
) -> Result<(), ContainerError> {
    let bad = |k: &str, e: String| ContainerError::Invalid(format!("registry setting {k}: {e}"));
    let unlimited = |v: &str| v.trim().eq_ignore_ascii_case("unlimited");
    if let Some(v) = settings.get("worker.memory") {
        limits.memory_bytes = if unlimited(v) {
            None
        } else {
            Some(parse_size(v).map_err(|e| bad("worker.memory", e))?)
        };
    }
    if let Some(v) = settings.get("worker.cpu") {
        limits.cpu_millis = if unlimited(v) {
            None
        } else {
            Some(parse_cpu(v).map_err(|e| bad("worker.cpu", e))?)
        };
    }
    if let Some(v) = settings.get("worker.pids") {
        limits.pids_max = if unlimited(v) {
            None
        } else {
            Some(
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("worker.pids", format!("`{v}` is not a count above 0")))?,
            )
        };
    }
    Ok(())
}

/// The domain's mailboxes with a password, in Dovecot passwd-file format.
fn passwd_file(snapshot: &crate::registry::Snapshot, domain: &str) -> Vec<u8> {
    let mut out = String::new();
    for m in snapshot.mailboxes.values().filter(|m| m.domain() == domain) {
        // A hash with `:` or a line break would corrupt the file; the registry never
        // stores one, but skip rather than trust.
        if let Some(hash) = m
            .password_hash
            .as_deref()
            .filter(|h| !h.contains([':', '\n', '\r']))
        {
            out.push_str(&m.address);
            out.push(':');
            out.push_str(hash);
            out.push_str("::::::\n");
        }
    }
    out.into_bytes()
}

/// Checks that `domain` is a lower-case DNS name (letters, digits, hyphens; labels of
/// 1-63 characters not starting or ending with a hyphen; at most 253 characters), which
/// also rules out `/`, `..` and anything else that could escape a directory.
pub fn check_domain(domain: &str) -> Result<(), ContainerError> {
    let bad = |why: &str| Err(ContainerError::Invalid(format!("domain `{domain}` {why}")));
    if domain.is_empty() || domain.len() > 253 {
        return bad("must be 1 to 253 characters long");
    }
    for label in domain.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("has an empty or over-long label");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("may contain only lower-case letters, digits, hyphens and dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("has a label starting or ending with a hyphen");
        }
    }
    Ok(())
}

/// Replaces `{name}` by its value from `vars`, in one pass (values are not expanded
/// again); `{{` and `}}` are literal braces. An unknown or unclosed placeholder is an
/// error naming it.
fn substitute(template: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{{") {
            out.push('{');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("}}") {
            out.push('}');
            rest = t;
        } else if tail.starts_with('}') {
            return Err(format!("`{template}`: unmatched `}}` (write `}}}}`)"));
        } else {
            let Some(end) = tail.find('}') else {
                return Err(format!("`{template}`: unclosed `{{`"));
            };
            let name = &tail[1..end];
            let Some((_, value)) = vars.iter().find(|(n, _)| *n == name) else {
                return Err(format!(
                    "`{template}`: unknown placeholder `{{{name}}}`; use {{domain}}, \
                     {{run_dir}} or {{storage}}"
                ));
            };
            out.push_str(value);
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses a size: a byte count, optionally followed by `K`, `M`, `G` or `T` (optionally
/// with `iB` or `B`; all powers of 1024) and surrounding or inner blanks: `"256MiB"`,
/// `"1 G"`, `"4096"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "`{s}` is not a size: expected e.g. 256MiB, 1G or 4096"
        ));
    }
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KB" | "KiB" | "k" => 10,
        "M" | "MB" | "MiB" => 20,
        "G" | "GB" | "GiB" => 30,
        "T" | "TB" | "TiB" => 40,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}`; use K, M, G, T (or KiB, MiB, GiB, TiB)"
            ));
        }
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is too large"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses a CPU amount in CPUs (`"0.5"`, `"2"`, `"1.25"`) into thousandths of one CPU;
/// at most three decimals, more than 0.
pub fn parse_cpu(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let err = || format!("`{s}` is not a CPU amount: expected e.g. 0.5, 1 or 2.25");
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    if frac.len() > 3 {
        return Err(format!("`{s}`: at most three decimals (0.001 CPU)"));
    }
    let whole: u32 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err())?
    };
    let mut millis_frac = 0u32;
    for (i, b) in frac.bytes().enumerate() {
        millis_frac += u32::from(b - b'0') * 10u32.pow(2 - i as u32);
    }
    let millis = whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(millis_frac))
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if millis == 0 {
        return Err(format!("`{s}`: must be more than 0 (or \"unlimited\")"));
    }
    Ok(millis)
}

fn is_unlimited(s: &str) -> bool {
    matches!(s.trim(), "unlimited" | "max")
}

/// A parsed limit: `None` is unlimited.
type LimitResult = Result<Option<u64>, String>;

/// One limit value: an integer, a float (CPU only) or text.
struct LimitVisitor {
    what: &'static str,
    from_int: fn(u64) -> LimitResult,
    from_float: Option<fn(f64) -> LimitResult>,
    from_str: fn(&str) -> LimitResult,
}

impl Visitor<'_> for LimitVisitor {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        (self.from_int)(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!("{v} is negative"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        match self.from_float {
            Some(f) => f(v).map_err(E::custom),
            None => Err(E::invalid_type(de::Unexpected::Float(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if is_unlimited(v) {
            return Ok(None);
        }
        (self.from_str)(v).map_err(E::custom)
    }
}

fn de_memory<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(LimitVisitor {
        what: "a size such as \"256MiB\", a byte count, or \"unlimited\"",
        from_int: |n| Ok(Some(n)),
        from_float: None,
        from_str: |s| parse_size(s).map(Some),
    })
}

fn millis_to_u32(m: u64) -> LimitResult {
    if m == 0 {
        Err("must be more than 0 (or \"unlimited\")".into())
    } else if m > u64::from(u32::MAX) {
        Err("is too large".into())
    } else {
        Ok(Some(m))
    }
}

fn de_cpu<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = d.deserialize_any(LimitVisitor {
        what: "a number of CPUs such as 0.5 or \"0.5\", or \"unlimited\"",
        from_int: |n| millis_to_u32(n.saturating_mul(1000)),
        from_float: Some(|f| {
            if !f.is_finite() || f < 0.0 {
                return Err(format!("{f} is not a CPU amount"));
            }
            millis_to_u32((f * 1000.0).round() as u64)
        }),
        from_str: |s| parse_cpu(s).map(|m| Some(u64::from(m))),
    })?;
    Ok(v.map(|m| m as u32))
}

fn de_pids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = d.deserialize_any(LimitVisitor {
        what: "a process count or \"unlimited\"",
        from_int: |n| {
            u32::try_from(n)
                .map(|n| Some(u64::from(n)))
                .map_err(|_| format!("{n} is too large"))
        },
        from_float: None,
        from_str: |s| {
            s.trim()
                .parse::<u32>()
                .map(|n| Some(u64::from(n)))
                .map_err(|_| format!("`{s}` is not a process count"))
        },
    })?;
    Ok(v.map(|m| m as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FastContainerSection, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn problems(s: &FastContainerSection) -> Vec<(String, String)> {
        let mut v = Validator::default();
        s.validate("fastcontainer", &mut v);
        v.problems().to_vec()
    }

    #[test]
    fn files_registry_passwd_and_domain_limits() {
        use crate::registry::{Domain, Mailbox, Snapshot};
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("worker.conf.in");
        std::fs::write(
            &template,
            "base_dir = {run_dir}\nhome = {storage}/%n\nuser = {user}/{uid}\nx { y = {other} }\n",
        )
        .unwrap();
        let s = parse(&format!(
            "[worker]\nargv = [\"/bin/w\"]\nuid = 0\ngid = 0\npasswd_file = \"users\"\n\
             files = {{ \"worker.conf\" = \"{}\" }}\n",
            template.display()
        ))
        .unwrap();
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        let mut snap = Snapshot::default();
        snap.domains.insert(
            "example.com".into(),
            Domain {
                name: "example.com".into(),
                settings: [
                    ("worker.memory".to_string(), "512MiB".to_string()),
                    ("worker.pids".to_string(), "unlimited".to_string()),
                ]
                .into(),
                ..Domain::default()
            },
        );
        for (a, h) in [
            ("bob@example.com", Some("{ARGON2ID}$argon2id$x")),
            ("nopw@example.com", None),
            ("erin@example.net", Some("{ARGON2ID}$argon2id$y")),
        ] {
            snap.mailboxes.insert(
                a.into(),
                Mailbox {
                    address: a.into(),
                    password_hash: h.map(Into::into),
                    quota_bytes: None,
                },
            );
        }
        let spec = s.spec_with_registry("example.com", Some(&snap)).unwrap();
        assert_eq!(spec.limits.memory_bytes, Some(512 << 20));
        assert_eq!(spec.limits.pids_max, None);
        assert_eq!(spec.limits.cpu_millis, Some(1000), "default kept");
        let file = |n: &str| {
            let f = spec.files.iter().find(|f| f.name == n).unwrap();
            String::from_utf8(f.contents.clone()).unwrap()
        };
        assert_eq!(
            file("worker.conf"),
            "base_dir = /run/wasmail\nhome = /mail/%n\nuser = root/0\nx { y = {other} }\n"
        );
        // Only this domain's mailboxes with a password.
        assert_eq!(
            file("users"),
            "bob@example.com:{ARGON2ID}$argon2id$x::::::\n"
        );
        // Without a registry: no passwd file, template files still rendered.
        let spec = s.spec_with_registry("example.com", None).unwrap();
        assert_eq!(spec.files.len(), 1);
        // A bad registry setting is an error naming it.
        snap.domains.get_mut("example.com").unwrap().settings =
            [("worker.cpu".to_string(), "lots".to_string())].into();
        let err = s
            .spec_with_registry("example.com", Some(&snap))
            .unwrap_err();
        assert!(err.to_string().contains("worker.cpu"), "{err}");
        // Generated file names must be plain names.
        let bad = parse("[worker]\nargv = [\"/bin/w\"]\npasswd_file = \"../x\"\n").unwrap();
        assert!(
            problems(&bad)
                .iter()
                .any(|(k, _)| k == "fastcontainer.worker.passwd_file")
        );
    }

    fn with_argv() -> FastContainerSection {
        let mut s = FastContainerSection::default();
        s.worker.argv = vec!["/bin/worker".into(), "{run_dir}/w.sock".into()];
        s
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size(" 1 G "), Ok(1 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in [
            "",
            "MiB",
            "1.5G",
            "12 parsecs",
            "-1",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("1.25"), Ok(1250));
        assert_eq!(parse_cpu(".001"), Ok(1));
        assert_eq!(parse_cpu("0.05"), Ok(50));
        for bad in [
            "", ".", "0", "0.000", "0.0001", "-1", "1e3", "half", "1.2.3",
        ] {
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_and_limits_spellings() {
        let s = parse("").unwrap();
        assert_eq!(s.run_root, Path::new("/run/wasmail/workers"));
        assert_eq!(s.idle, IdleMode::Adaptive);
        assert_eq!(s.idle_timeout, Duration::from_secs(600));
        assert_eq!(
            s.limits.to_limits(),
            Limits {
                memory_bytes: Some(256 << 20),
                cpu_millis: Some(1000),
                pids_max: Some(256)
            }
        );
        let s = parse(
            "idle = \"fixed\"\nidle_timeout = \"2m\"\n\
             [limits]\nmemory = \"64MiB\"\ncpu = 0.5\npids = \"unlimited\"\n",
        )
        .unwrap();
        assert_eq!(s.idle, IdleMode::Fixed);
        assert_eq!(s.idle_timeout, Duration::from_secs(120));
        assert_eq!(s.limits.memory, Some(64 << 20));
        assert_eq!(s.limits.cpu, Some(500));
        assert_eq!(s.limits.pids, None);
        let s = parse("[limits]\nmemory = 1048576\ncpu = \"1.5\"\npids = 10\n").unwrap();
        assert_eq!(
            (s.limits.memory, s.limits.cpu, s.limits.pids),
            (Some(1 << 20), Some(1500), Some(10))
        );
        let s = parse("[limits]\ncpu = 2\nmemory = \"unlimited\"\n").unwrap();
        assert_eq!((s.limits.memory, s.limits.cpu), (None, Some(2000)));
    }

    #[test]
    fn bad_limits_and_unknown_keys_fail_to_parse() {
        for bad in [
            "[limits]\nmemory = \"lots\"\n",
            "[limits]\nmemory = 1.5\n",
            "[limits]\ncpu = 0\n",
            "[limits]\ncpu = -1\n",
            "[limits]\npids = -3\n",
            "[limits]\nswap = 1\n",
            "idle = \"sometimes\"\n",
            "idel_timeout = \"1m\"\n",
            "[worker]\nprogram = \"/x\"\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_reports_keys() {
        assert!(
            problems(&with_argv()).is_empty(),
            "{:?}",
            problems(&with_argv())
        );
        let p = problems(&FastContainerSection::default());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "fastcontainer.worker.argv");

        let mut s = with_argv();
        s.worker.argv.push("{nope}".into());
        s.worker.ready = "unix:../escape".into();
        s.idle_min = Duration::from_secs(3600);
        s.backoff_base = Duration::from_secs(600);
        s.cgroup_root = "a/b".into();
        s.run_root = "relative".into();
        s.start_timeout = Duration::ZERO;
        let keys: Vec<String> = problems(&s).into_iter().map(|(k, _)| k).collect();
        for k in [
            "fastcontainer.worker.argv[2]",
            "fastcontainer.worker.ready",
            "fastcontainer.idle_max",
            "fastcontainer.backoff_max",
            "fastcontainer.cgroup_root",
            "fastcontainer.run_root",
            "fastcontainer.start_timeout",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn spec_for_substitutes_placeholders() {
        let mut s = with_argv();
        s.worker.argv = vec![
            "/bin/worker".into(),
            "--socket={run_dir}/w.sock".into(),
            "--mail".into(),
            "{storage}/{domain}".into(),
            "{{literal}}".into(),
        ];
        s.worker.env.insert("DOMAIN".into(), "{domain}".into());
        s.system_mounts = vec!["/".into(), "/does/not/exist".into()];
        let spec = s.spec_for("mail.example.com").unwrap();
        assert_eq!(
            spec.argv,
            [
                "/bin/worker",
                "--socket=/run/wasmail/w.sock",
                "--mail",
                "/mail/mail.example.com",
                "{literal}"
            ]
        );
        assert_eq!(spec.env["DOMAIN"], "mail.example.com");
        assert_eq!(
            spec.run_dir,
            Path::new("/run/wasmail/workers/mail.example.com")
        );
        assert_eq!(
            spec.ready,
            Endpoint::Unix("/run/wasmail/workers/mail.example.com/worker.sock".into())
        );
        assert_eq!(spec.mounts.len(), 2, "missing system mounts are skipped");
        assert!(spec.mounts[0].read_only);
        assert_eq!(
            spec.mounts[1],
            BindMount {
                source: "/var/lib/wasmail/mail/mail.example.com".into(),
                target: "/mail".into(),
                read_only: false
            }
        );
        assert_eq!(spec.limits, s.limits.to_limits());
        assert_eq!(spec.start_timeout, Duration::from_secs(5));

        s.worker.ready = "tcp:127.0.0.1:1143".into();
        let spec = s.spec_for("example.com").unwrap();
        assert_eq!(spec.ready, Endpoint::Tcp("127.0.0.1:1143".parse().unwrap()));
    }

    #[test]
    fn spec_for_rejects_unsafe_domains() {
        let s = with_argv();
        for bad in [
            "",
            "..",
            "a/../b",
            "../etc",
            "a/b",
            "Example.com",
            "a..b",
            ".a",
            "-a.com",
            "a@b",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(s.spec_for(bad), Err(ContainerError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(s.spec_for("xn--bcher-kva.example").is_ok());
    }

    #[test]
    fn substitution_errors() {
        let vars = [("domain", "d")];
        assert_eq!(substitute("a{domain}b", &vars).unwrap(), "adb");
        assert_eq!(substitute("{{domain}}", &vars).unwrap(), "{domain}");
        assert!(substitute("{domain", &vars).is_err());
        assert!(substitute("domain}", &vars).is_err());
        assert!(
            substitute("{other}", &vars)
                .unwrap_err()
                .contains("{other}")
        );
    }
}
