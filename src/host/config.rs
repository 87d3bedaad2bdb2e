//! Plugin host configuration: the `[plugins]` section (host-wide settings and default
//! limits) and the `[plugin.NAME]` tables (one loaded plugin each).
//!
//! ```toml
//! [plugins]
//! dir = "/etc/wasmail/plugins"        # relative `file =` paths resolve here
//! cache_dir = "/var/cache/wasmail"    # compiled artifacts (created 0700); omit to disable
//! watch = true                        # reload on file changes (SIGHUP always reloads)
//!
//! [plugins.limits]                    # defaults for every plugin
//! memory_mib = 32
//! call_deadline = "2s"
//!
//! [plugin.dmarc]
//! file = "auth-check.wasm"
//! grants = ["log", "config", "auth"]
//! on_error = "continue"
//! [plugin.dmarc.limits]               # overrides, key by key
//! call_deadline = "5s"
//! [plugin.dmarc.settings]             # read by the plugin through the `config` capability
//! reject_on_dmarc_reject = true
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Validator;
use crate::host::caps::auth::AuthConfig;
use crate::host::caps::kv::KvConfig;
use crate::host::caps::send::SendConfig;

/// `[plugins]`: where plugins live and how the host runs them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Directory relative `[plugin.NAME] file` paths resolve against and that is watched
    /// for changes. Default `/etc/wasmail/plugins`.
    pub dir: PathBuf,
    /// Directory for compiled plugins (keyed by content hash and engine compatibility).
    /// wasmail only ever loads artifacts it wrote there itself. Default: none (compile at
    /// every start).
    pub cache_dir: Option<PathBuf>,
    /// Reload plugins when files in `dir` change (inotify). SIGHUP reloads either way.
    /// Default true.
    pub watch: bool,
    /// How often the epoch ticker advances; deadlines are rounded up to this. Default 5 ms.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Count wasm instructions (fuel) so `limits.fuel` budgets apply. Costs ~2x on tight
    /// loops; off by default (wall-clock deadlines always apply).
    pub fuel: bool,
    /// Instances the pooling allocator reserves address space for. Default 256.
    pub pool_instances: u32,
    /// Idle milter-filter instances kept for reuse, all plugins together (only plugins
    /// with `instance_reuse` above 1 are kept). Each holds one of the `pool_instances`
    /// slots. Default 64.
    pub idle_instances: u32,
    /// Default limits for every plugin.
    pub limits: Limits,
    /// Circuit breaker settings.
    pub breaker: BreakerConfig,
    /// The `kv` capability's store.
    pub kv: KvConfig,
    /// The `auth` capability (authserv-id, DNS timeout, DKIM signing keys).
    pub auth: AuthConfig,
    /// The `send` capability's relay; absent = the capability fails every call.
    pub send: Option<SendConfig>,
}

impl Default for PluginsSection {
    fn default() -> Self {
        PluginsSection {
            dir: PathBuf::from("/etc/wasmail/plugins"),
            cache_dir: None,
            watch: true,
            tick: Duration::from_millis(5),
            fuel: false,
            pool_instances: 256,
            idle_instances: 64,
            limits: Limits::default(),
            breaker: BreakerConfig::default(),
            kv: KvConfig::default(),
            auth: AuthConfig::default(),
            send: None,
        }
    }
}

/// Resource limits of one plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory per instance, MiB. Default 32.
    pub memory_mib: u32,
    /// Wall-clock deadline for one call into the plugin. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub call_deadline: Duration,
    /// Wall-clock budget for all calls of one transaction (one message, one request,
    /// one event). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub transaction_budget: Duration,
    /// Instruction budget per transaction when `[plugins] fuel = true`; 0 = unlimited.
    pub fuel: u64,
    /// Longest log line, bytes (longer lines are truncated). Default 1024.
    pub log_line_bytes: usize,
    /// Log lines per transaction; further lines are dropped and counted. Default 100.
    pub log_lines: u32,
    /// Edits one plugin may return for one message. Default 100.
    pub max_edits: usize,
    /// Largest header value or ESMTP argument a plugin may set, bytes. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Largest replacement body, bytes. Default 25 MiB.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 32,
            call_deadline: Duration::from_secs(2),
            transaction_budget: Duration::from_secs(10),
            fuel: 0,
            log_line_bytes: 1024,
            log_lines: 100,
            max_edits: 100,
            max_header_bytes: 64 << 10,
            max_body_bytes: 25 << 20,
        }
    }
}

/// Per-plugin overrides of [`Limits`]; unset keys take the `[plugins.limits]` value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitOverrides {
    /// See [`Limits::memory_mib`].
    pub memory_mib: Option<u32>,
    /// See [`Limits::call_deadline`].
    #[serde(with = "humantime_serde")]
    pub call_deadline: Option<Duration>,
    /// See [`Limits::transaction_budget`].
    #[serde(with = "humantime_serde")]
    pub transaction_budget: Option<Duration>,
    /// See [`Limits::fuel`].
    pub fuel: Option<u64>,
    /// See [`Limits::log_line_bytes`].
    pub log_line_bytes: Option<usize>,
    /// See [`Limits::log_lines`].
    pub log_lines: Option<u32>,
    /// See [`Limits::max_edits`].
    pub max_edits: Option<usize>,
    /// See [`Limits::max_header_bytes`].
    pub max_header_bytes: Option<usize>,
    /// See [`Limits::max_body_bytes`].
    pub max_body_bytes: Option<usize>,
}

impl Limits {
    /// These limits with `o`'s set keys applied.
    pub fn with(&self, o: &LimitOverrides) -> Limits {
        Limits {
            memory_mib: o.memory_mib.unwrap_or(self.memory_mib),
            call_deadline: o.call_deadline.unwrap_or(self.call_deadline),
            transaction_budget: o.transaction_budget.unwrap_or(self.transaction_budget),
            fuel: o.fuel.unwrap_or(self.fuel),
            log_line_bytes: o.log_line_bytes.unwrap_or(self.log_line_bytes),
            log_lines: o.log_lines.unwrap_or(self.log_lines),
            max_edits: o.max_edits.unwrap_or(self.max_edits),
            max_header_bytes: o.max_header_bytes.unwrap_or(self.max_header_bytes),
            max_body_bytes: o.max_body_bytes.unwrap_or(self.max_body_bytes),
        }
    }
}

/// Circuit breaker: after `failures` failures within `window`, a plugin version is skipped
/// (its `on_error` policy applies without running it) for `backoff`, doubling on each
/// reopen up to `max_backoff`; a success resets it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failures that open the breaker. Default 5; 0 disables the breaker.
    pub failures: u32,
    /// Window the failures are counted in. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// First open period. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Longest open period. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            window: Duration::from_secs(60),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// What happens to the mail when a plugin fails (trap, deadline, memory limit, bad answer,
/// ungranted capability). Never a permanent rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Skip the plugin: as if it answered `continue` (fail open). The default.
    #[default]
    Continue,
    /// Answer 4xx so the client retries later (fail closed; for must-run plugins).
    Tempfail,
}

/// A capability a plugin may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// `wasmail:plugin/log`.
    Log,
    /// `wasmail:plugin/config`.
    Config,
    /// `wasmail:plugin/message`.
    Message,
    /// `wasmail:plugin/auth`.
    Auth,
    /// `wasmail:plugin/kv`.
    Kv,
    /// `wasmail:plugin/send`.
    Send,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 6] = [
        Capability::Log,
        Capability::Config,
        Capability::Message,
        Capability::Auth,
        Capability::Kv,
        Capability::Send,
    ];

    /// The name used in config and in the WIT interface (`wasmail:plugin/<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Config => "config",
            Capability::Message => "message",
            Capability::Auth => "auth",
            Capability::Kv => "kv",
            Capability::Send => "send",
        }
    }
}

/// `[plugin.NAME]`: one plugin as loaded by the host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// The component file (`.wasm`), absolute or relative to `[plugins] dir`.
    pub file: PathBuf,
    /// Capabilities granted. Default `["log", "config"]`.
    #[serde(default = "default_grants")]
    pub grants: Vec<Capability>,
    /// Failure policy. Default `continue`.
    #[serde(default)]
    pub on_error: OnError,
    /// Limit overrides.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Milter-filter plugins: how many SMTP transactions one instance may serve before it
    /// is dropped. Default 1: a fresh instance for every transaction. Above 1, an instance
    /// that finished a transaction without any failure waits for the next transaction of
    /// the same chain (global, or the same domain), after the host called
    /// `on-end-of-message` or `on-abort` in it; the Rust SDK resets every
    /// `instance_state!` value there, other guest memory (plain statics) carries over.
    /// See `docs/plugins.md`.
    #[serde(default = "one")]
    pub instance_reuse: u32,
    /// The plugin's own settings, visible through the `config` capability.
    #[serde(default)]
    pub settings: toml::Table,
}

fn one() -> u32 {
    1
}

fn default_grants() -> Vec<Capability> {
    vec![Capability::Log, Capability::Config]
}

impl PluginsSection {
    /// Checks values serde cannot check by type.
    pub fn validate(&self, plugins: &BTreeMap<String, PluginEntry>, v: &mut Validator) {
        check_limits(&self.limits, "plugins.limits", v);
        if self.tick.is_zero() || self.tick > Duration::from_secs(1) {
            v.error("plugins.tick", "must be between 1ms and 1s");
        }
        if self.pool_instances == 0 {
            v.error("plugins.pool_instances", "must be at least 1");
        }
        if self.idle_instances >= self.pool_instances {
            v.error(
                "plugins.idle_instances",
                format!(
                    "must be below pool_instances ({}), or no slot is left for live instances",
                    self.pool_instances
                ),
            );
        }
        if let Some(dir) = &self.cache_dir
            && dir.is_relative()
        {
            v.error("plugins.cache_dir", "must be an absolute path");
        }
        for (name, entry) in plugins {
            if !valid_plugin_name(name) {
                v.error(
                    format!("plugin.{name}"),
                    "plugin names use letters, digits, `-` and `_` only",
                );
            }
            if entry.file.as_os_str().is_empty() {
                v.error(format!("plugin.{name}.file"), "must name a .wasm file");
            }
            if entry.instance_reuse == 0 {
                v.error(
                    format!("plugin.{name}.instance_reuse"),
                    "must be at least 1 (1 = a fresh instance for every transaction)",
                );
            }
            check_limits(
                &self.limits.with(&entry.limits),
                &format!("plugin.{name}.limits"),
                v,
            );
            if entry.grants.contains(&Capability::Send) && self.send.is_none() {
                v.error(
                    format!("plugin.{name}.grants"),
                    "grants `send` but there is no [plugins.send] relay",
                );
            }
        }
    }
}

/// True for names usable as `[plugin.NAME]`.
pub fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_limits(l: &Limits, key: &str, v: &mut Validator) {
    if l.memory_mib == 0 || l.memory_mib > 4096 {
        v.error(format!("{key}.memory_mib"), "must be between 1 and 4096");
    }
    if l.call_deadline.is_zero() {
        v.error(format!("{key}.call_deadline"), "must be positive");
    }
    if l.transaction_budget < l.call_deadline {
        v.error(
            format!("{key}.transaction_budget"),
            "must be at least call_deadline",
        );
    }
    if l.log_line_bytes < 16 {
        v.error(format!("{key}.log_line_bytes"), "must be at least 16");
    }
}
