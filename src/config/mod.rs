//! Configuration: one TOML file, raw serde structs, validation, and error reports that name
//! the file, the line and the key.
//!
//! Loading happens in three steps:
//! 1. the file is read and parsed twice: once into a span-carrying TOML tree
//!    ([`toml::de::DeTable`]) used only to locate keys for error messages, and once into the
//!    raw serde structs ([`Config`]), every one of which denies unknown keys;
//! 2. a syntax or type error from serde is mapped back to `file:line:column` plus the dotted
//!    key path under the error ([`Diagnostic`]);
//! 3. [`Config::validate`] runs the semantic checks of each section through a [`Validator`],
//!    which records `(key path, message)` pairs and resolves each to a line the same way.
//!
//! Sections are owned by the part they configure (`crate::host::config::PluginsSection` and
//! so on); this module only assembles them. Every section is optional in the file, and a
//! service runs only when its section is present (see [`crate::serve`]).

mod locate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use locate::Locator;

use crate::admin::config::AdminSection;
use crate::cluster::config::ClusterSection;
use crate::dovecot::config::DovecotSection;
use crate::fastcontainer::config::FastContainerSection;
use crate::host::config::{PluginEntry, PluginsSection};
use crate::lmtp::config::LmtpSection;
use crate::lookup::config::LookupSection;
use crate::milter_service::config::MilterSection;
use crate::policy::config::PolicySection;
use crate::proxy::config::ProxySection;
use crate::registry::config::RegistrySection;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings: shutdown grace, log format.
    #[serde(default)]
    pub server: ServerSection,
    /// The milter service for Postfix's `smtpd_milters`; absent = not started.
    pub milter: Option<MilterSection>,
    /// The plugin host: plugin directory, limits and per-plugin settings.
    #[serde(default)]
    pub plugins: PluginsSection,
    /// Loaded plugins, one `[plugin.NAME]` table each.
    #[serde(default)]
    pub plugin: BTreeMap<String, PluginEntry>,
    /// The domain registry (domains, mailboxes, aliases, per-domain chains). Absent = the
    /// defaults, opened only by services that need it (lookup, policy); present = also
    /// opened for the milter's per-domain chains. See [`Config::registry_section`].
    pub registry: Option<RegistrySection>,
    /// Postfix socketmap / tcp_table responder; absent = not started.
    pub lookup: Option<LookupSection>,
    /// Postfix SMTPD policy delegation responder; absent = not started.
    pub policy: Option<PolicySection>,
    /// The LMTP front Postfix delivers to; absent = not started.
    pub lmtp: Option<LmtpSection>,
    /// Per-domain mailbox workers; absent = not started.
    pub fastcontainer: Option<FastContainerSection>,
    /// Admin API (health, metrics, workers); absent = not started.
    pub admin: Option<AdminSection>,
    /// IMAP and POP3 fronts routing logins to FastContainer workers; absent = not
    /// started. Needs `[fastcontainer]`.
    pub proxy: Option<ProxySection>,
    /// Dovecot delegation endpoints (auth policy, Lua passdb, post-login, events);
    /// absent = not started.
    pub dovecot: Option<DovecotSection>,
    /// Many hosts: membership and worker placement over etcd, and the host-to-host relay;
    /// absent = a single host. Needs `[fastcontainer]`.
    pub cluster: Option<ClusterSection>,
    /// Where this configuration was read from (not a TOML key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[server]`: settings of the `wasmail serve` process itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// After SIGTERM/SIGINT: how long sessions in flight may run before they are closed.
    /// Default 30 s; keep it below the init system's stop timeout.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Log line format on stderr: `"text"` (default) or `"json"`.
    pub log_format: LogFormat,
    /// Runtime worker threads that run every service's connections (and inline plugin
    /// calls), except those `event_loops` takes. Default 0: one per CPU core.
    pub worker_threads: usize,
    /// Single-threaded event loops that the milter, lookup and policy connections run
    /// on, instead of the runtime's worker threads. Each loop accepts on the listeners and
    /// keeps a connection it accepted unless another loop has fewer; a connection's events
    /// are then all handled on one thread. `0`: no loops, those connections run on the
    /// worker threads like every other service. Default `"auto"`: one loop on a host with
    /// at most 2 CPUs, where it gave the milter the most messages per CPU second, and none
    /// on a bigger host (`docs/postfix.md`, Throughput).
    pub event_loops: LoopCount,
    /// Default tracing filter when `RUST_LOG` is unset, e.g. `"info,wasmail::host=debug"`.
    /// Default `"info"`.
    pub log_filter: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            shutdown_grace: Duration::from_secs(30),
            worker_threads: 0,
            event_loops: LoopCount::Auto,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
        }
    }
}

/// `[server] event_loops`: a number of loops, or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopCount {
    /// One loop on a host with at most [`LoopCount::AUTO_MAX_CPUS`] CPUs, else none.
    Auto,
    /// This many loops (0 = none).
    Fixed(usize),
}

impl LoopCount {
    /// The most CPUs on which `"auto"` still starts a loop. Measured on 2 CPUs only
    /// (`benches/RESULTS.md`): there one loop beat both the worker threads and a loop per
    /// CPU; bigger hosts keep the worker threads until measured.
    pub const AUTO_MAX_CPUS: usize = 2;

    /// The number of loops to start on a host with `cpus` CPUs.
    pub fn resolve(self, cpus: usize) -> usize {
        match self {
            LoopCount::Auto => usize::from(cpus <= Self::AUTO_MAX_CPUS),
            LoopCount::Fixed(n) => n,
        }
    }

    /// The number of loops to start on this host: [`LoopCount::resolve`] for the CPUs this
    /// process may use (CPU affinity and the cgroup quota count).
    pub fn resolve_here(self) -> usize {
        self.resolve(std::thread::available_parallelism().map_or(1, usize::from))
    }
}

impl<'de> Deserialize<'de> for LoopCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = LoopCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of event loops or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<LoopCount, E> {
                usize::try_from(n)
                    .map(LoopCount::Fixed)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(n), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<LoopCount, E> {
                u64::try_from(n)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<LoopCount, E> {
                match s {
                    "auto" => Ok(LoopCount::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One problem found in a configuration file, located by line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file that was read.
    pub file: PathBuf,
    /// 1-based line of the offending key or value (0 when it could not be located).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, e.g. `milter.listen`; empty for document-level errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Errors from loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read configuration: {source}", path.display())]
    Read {
        /// The path that was opened.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not valid; every problem found is listed.
    #[error("{}", DiagList(.0))]
    Invalid(Vec<Diagnostic>),
}

struct DiagList<'a>(&'a [Diagnostic]);

impl fmt::Display for DiagList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects semantic problems by key path during [`Config::validate`].
#[derive(Debug, Default)]
pub struct Validator {
    problems: Vec<(String, String)>,
}

impl Validator {
    /// Records a problem with the value at `key` (dotted path such as `milter.listen`).
    pub fn error(&mut self, key: impl Into<String>, message: impl fmt::Display) {
        self.problems.push((key.into(), message.to_string()));
    }

    /// Problems recorded so far, as `(key, message)`.
    pub fn problems(&self) -> &[(String, String)] {
        &self.problems
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_str_at(&text, path)
    }

    /// Parses and validates `text`, naming `path` in diagnostics.
    pub fn from_str_at(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let locator = Locator::new(text);
        let mut config: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                let offset = e.span().map(|s| s.start);
                let (line, column) = offset.map_or((0, 0), |o| locator.line_col(o));
                let key = offset.map(|o| locator.key_at(o)).unwrap_or_default();
                return Err(ConfigError::Invalid(vec![Diagnostic {
                    file: path.to_path_buf(),
                    line,
                    column,
                    key,
                    message: e.message().trim_end().to_string(),
                }]));
            }
        };
        config.source = Some(path.to_path_buf());
        let mut v = Validator::default();
        config.validate(&mut v);
        if v.problems.is_empty() {
            return Ok(config);
        }
        let diags = v
            .problems
            .into_iter()
            .map(|(key, message)| {
                let (line, column) = locator.key_line_col(&key).unwrap_or((0, 0));
                Diagnostic {
                    file: path.to_path_buf(),
                    line,
                    column,
                    key,
                    message,
                }
            })
            .collect();
        Err(ConfigError::Invalid(diags))
    }

    /// Semantic checks across sections (values serde cannot check by type).
    pub fn validate(&self, v: &mut Validator) {
        if self.server.shutdown_grace > Duration::from_secs(3600) {
            v.error("server.shutdown_grace", "must be at most 1h");
        }
        if self.server.worker_threads > 1024 {
            v.error(
                "server.worker_threads",
                "must be at most 1024 (0 = one per CPU core)",
            );
        }
        if matches!(self.server.event_loops, LoopCount::Fixed(n) if n > 1024) {
            v.error(
                "server.event_loops",
                "must be at most 1024 (0 = none: the connections run on the worker threads)",
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.server.log_filter) {
            v.error("server.log_filter", format_args!("not a valid filter: {e}"));
        }
        self.plugins.validate(&self.plugin, v);
        if let Some(m) = &self.milter {
            m.validate("milter", v);
            let known = |name: &String| self.plugin.contains_key(name);
            for (i, name) in m.chain.iter().enumerate() {
                if !known(name) {
                    v.error(
                        format!("milter.chain[{i}]"),
                        format_args!("no plugin `{name}`: add a [plugin.{name}] table"),
                    );
                }
            }
            // A plugin's own deadline must end before the milter stage deadline, so the
            // plugin's on_error policy decides, not the stage timeout (and never Postfix).
            let names = m
                .chain
                .iter()
                .chain(m.domains.values().flat_map(|d| d.chain.iter()));
            for name in names {
                if let Some(entry) = self.plugin.get(name) {
                    let limits = self.plugins.limits.with(&entry.limits);
                    if limits.call_deadline >= m.command_deadline {
                        v.error(
                            format!("plugin.{name}.limits.call_deadline"),
                            format_args!(
                                "{} is not below [milter] command_deadline ({}); lower it",
                                humantime::format_duration(limits.call_deadline),
                                humantime::format_duration(m.command_deadline)
                            ),
                        );
                    }
                }
            }
            for (domain, d) in &m.domains {
                for (i, name) in d.chain.iter().enumerate() {
                    if !known(name) {
                        v.error(
                            format!("milter.domains.{domain}.chain[{i}]"),
                            format_args!("no plugin `{name}`: add a [plugin.{name}] table"),
                        );
                    }
                }
            }
        }
        let plugin_exists = |name: &str| self.plugin.contains_key(name);
        if let Some(r) = &self.registry {
            r.validate("registry", v);
        }
        if let Some(l) = &self.lookup {
            l.validate("lookup", &plugin_exists, v);
        }
        if let Some(p) = &self.policy {
            p.validate("policy", &plugin_exists, v);
        }
        if let Some(l) = &self.lmtp {
            l.validate("lmtp", &plugin_exists, v);
        }
        if let Some(fc) = &self.fastcontainer {
            fc.validate("fastcontainer", v);
        }
        if let Some(a) = &self.admin {
            a.validate("admin", v);
        }
        if let Some(p) = &self.proxy {
            p.validate("proxy", &plugin_exists, v);
            if self.fastcontainer.is_none() {
                v.error(
                    "proxy",
                    "the fronts route sessions to workers: add a [fastcontainer] section",
                );
            }
        }
        if let Some(d) = &self.dovecot {
            d.validate("dovecot", &plugin_exists, v);
        }
        if let Some(c) = &self.cluster {
            c.validate("cluster", v);
            if self.fastcontainer.is_none() {
                v.error(
                    "cluster",
                    "a cluster member runs the workers of the domains it owns: add a \
                     [fastcontainer] section",
                );
            }
        }
    }

    /// The `[registry]` section, or its defaults when the file has none.
    pub fn registry_section(&self) -> RegistrySection {
        self.registry.clone().unwrap_or_default()
    }

    /// Names of the services this configuration starts, for logs and `check-config`.
    pub fn services(&self) -> Vec<&'static str> {
        let mut s = Vec::new();
        if self.milter.is_some() {
            s.push("milter");
        }
        if self.lookup.is_some() {
            s.push("lookup");
        }
        if self.policy.is_some() {
            s.push("policy");
        }
        if self.lmtp.is_some() {
            s.push("lmtp");
        }
        if self.fastcontainer.is_some() {
            s.push("fastcontainer");
        }
        if self.admin.is_some() {
            s.push("admin");
        }
        if let Some(p) = &self.proxy {
            if p.imap.is_some() {
                s.push("imap");
            }
            if p.pop3.is_some() {
                s.push("pop3");
            }
        }
        if self.dovecot.is_some() {
            s.push("dovecot");
        }
        if self.cluster.is_some() {
            s.push("relay");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_at(text, Path::new("test.toml"))
    }

    fn diags(text: &str) -> Vec<Diagnostic> {
        match load(text) {
            Err(ConfigError::Invalid(d)) => d,
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_valid_and_starts_nothing() {
        let c = load("").unwrap();
        assert!(c.services().is_empty());
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
    }

    #[test]
    fn worker_threads_default_to_one_per_core_and_are_bounded() {
        assert_eq!(load("").unwrap().server.worker_threads, 0);
        assert_eq!(
            load("[server]\nworker_threads = 1\n")
                .unwrap()
                .server
                .worker_threads,
            1
        );
        let d = diags("[server]\nworker_threads = 5000\n");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].key, "server.worker_threads");
        assert_eq!(d[0].line, 2, "{:?}", d[0]);
    }

    #[test]
    fn event_loops_are_auto_by_default_and_bounded() {
        let auto = load("").unwrap().server.event_loops;
        assert_eq!(auto, LoopCount::Auto);
        assert_eq!(auto.resolve(1), 1);
        assert_eq!(auto.resolve(2), 1);
        assert_eq!(auto.resolve(3), 0);
        assert_eq!(auto.resolve(64), 0);
        // (value, parsed, loops on a 64-CPU host)
        for (text, want, on_64) in [
            ("2", LoopCount::Fixed(2), 2),
            ("0", LoopCount::Fixed(0), 0),
            ("\"auto\"", LoopCount::Auto, 0),
        ] {
            let got = load(&format!("[server]\nevent_loops = {text}\n"))
                .unwrap()
                .server
                .event_loops;
            assert_eq!(got, want, "{text}");
            assert_eq!(got.resolve(64), on_64, "{text}");
        }
        let d = diags("[server]\nevent_loops = 2000\n");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].key, "server.event_loops");
        assert_eq!(d[0].line, 2, "{:?}", d[0]);
        for bad in ["\"many\"", "-1", "1.5"] {
            let d = diags(&format!("[server]\nevent_loops = {bad}\n"));
            assert_eq!(d.len(), 1, "{bad}: {d:?}");
            assert_eq!(d[0].key, "server.event_loops", "{bad}: {d:?}");
            assert_eq!(d[0].line, 2, "{bad}: {d:?}");
            assert!(
                d[0].message.contains("a number of event loops or \"auto\""),
                "{bad}: {d:?}"
            );
        }
    }

    #[test]
    fn unknown_top_level_key_names_line_and_key() {
        let d = diags("[server]\nshutdown_grace = \"5s\"\n\n[bogus]\nx = 1\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].line, 4, "{:?}", d[0]);
        assert!(d[0].message.contains("unknown field `bogus`"), "{:?}", d[0]);
        let shown = d[0].to_string();
        assert!(shown.starts_with("test.toml:4:"), "{shown}");
    }

    #[test]
    fn unknown_nested_key_names_its_path() {
        let d = diags("[server]\nshutdown_grace = \"5s\"\nlog_fromat = \"json\"\n");
        assert_eq!(d[0].line, 3);
        assert_eq!(d[0].key, "server.log_fromat");
        assert!(d[0].message.contains("log_fromat"));
    }

    #[test]
    fn bad_value_type_names_line_and_key() {
        let d = diags("[server]\n\nshutdown_grace = 5\n");
        assert_eq!(d[0].line, 3);
        assert_eq!(d[0].key, "server.shutdown_grace");
    }

    #[test]
    fn bad_duration_text_is_reported() {
        let d = diags("[server]\nshutdown_grace = \"five seconds\"\n");
        assert_eq!(d[0].line, 2);
        assert_eq!(d[0].key, "server.shutdown_grace");
    }

    #[test]
    fn semantic_error_is_located() {
        let d = diags("# comment\n[server]\nlog_filter = \"info\"\nshutdown_grace = \"2h\"\n");
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].line, d[0].key.as_str()), (4, "server.shutdown_grace"));
        assert!(d[0].message.contains("at most"));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let d = diags("[server]\nshutdown_grace = \"5s\nx");
        // toml reports the unterminated string where the parser gives up: the next line.
        assert_eq!(d[0].line, 3, "{:?}", d[0]);
        assert!(!d[0].message.is_empty());
    }

    #[test]
    fn milter_chain_must_name_configured_plugins() {
        let d = diags("[milter]\nlisten = \"unix:/run/x.sock\"\nchain = [\"nope\"]\n");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].line, 3);
        assert!(d[0].message.contains("no plugin `nope`"), "{:?}", d[0]);
    }

    #[test]
    fn plugin_deadline_must_be_below_the_milter_stage_deadline() {
        let d = diags(
            "[milter]\nlisten = \"unix:/run/x.sock\"\ncommand_deadline = \"5s\"\nchain = [\"p\"]\n\
             [plugin.p]\nfile = \"p.wasm\"\n[plugin.p.limits]\ncall_deadline = \"5s\"\n",
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].key, "plugin.p.limits.call_deadline");
        assert_eq!(d[0].line, 8);
        assert!(d[0].message.contains("command_deadline"), "{:?}", d[0]);
    }

    #[test]
    fn plugin_entries_are_checked() {
        let d = diags("[plugin.p]\nfile = \"p.wasm\"\ngrants = [\"log\", \"teleport\"]\n");
        assert_eq!(d[0].line, 3, "{d:?}");
        assert!(d[0].message.contains("teleport"), "{:?}", d[0]);
        let d = diags("[plugin.p]\nfile = \"p.wasm\"\non_error = \"reject\"\n");
        assert_eq!(d[0].line, 3, "{d:?}");
        assert!(d[0].message.contains("reject"), "{:?}", d[0]);
    }

    #[test]
    fn read_error_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/wasmail.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/wasmail.toml"), "{e}");
    }
}
