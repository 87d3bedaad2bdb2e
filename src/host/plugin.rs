//! Loading one plugin file: checks, compilation (with the on-disk cache), world detection,
//! `instantiate_pre` type-checking, and a canary call to `describe` under strict limits.

use std::fs;
use std::hash::Hasher;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::Component;

use super::bindings;
use super::breaker::{Breaker, Counters, FailureKind};
use super::config::{BreakerConfig, Capability, Limits, OnError, PluginEntry};
use super::engine::{PluginEngine, World};
use super::state::{HostState, PluginMeta, Services};
use crate::milter_service::chain::Stage;

/// How a milter plugin wants the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// Not at all.
    None,
    /// Chunk by chunk.
    Chunks,
    /// Buffered by the host, up to this many bytes, delivered once before end of message.
    Whole(u32),
}

/// What a plugin declared in `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Description {
    /// A milter-filter plugin.
    Milter {
        /// Its own name.
        name: String,
        /// Its own version string.
        version: String,
        /// Stages it subscribed to.
        stages: Vec<Stage>,
        /// Body mode.
        body: BodyMode,
    },
    /// A table plugin.
    Table {
        /// Its own name.
        name: String,
        /// Its own version string.
        version: String,
        /// Tables it answers.
        tables: Vec<String>,
    },
    /// A policy plugin.
    Policy {
        /// Its own name.
        name: String,
        /// Its own version string.
        version: String,
    },
    /// A mail-hook plugin.
    Hook {
        /// Its own name.
        name: String,
        /// Its own version string.
        version: String,
        /// Event kinds it wants (WIT names).
        events: Vec<String>,
    },
}

/// The type-checked, ready-to-instantiate form of a plugin.
pub enum Pre {
    /// milter-filter.
    Milter(bindings::milter::MilterFilterPre<HostState>),
    /// table.
    Table(bindings::table::TablePre<HostState>),
    /// policy.
    Policy(bindings::policy::PolicyPre<HostState>),
    /// mail-hook.
    Hook(bindings::hook::MailHookPre<HostState>),
}

impl std::fmt::Debug for Pre {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pre::Milter(_) => "Pre::Milter",
            Pre::Table(_) => "Pre::Table",
            Pre::Policy(_) => "Pre::Policy",
            Pre::Hook(_) => "Pre::Hook",
        })
    }
}

/// One loaded plugin version. Shared through `Arc`: transactions keep the version they
/// started with even when a reload swaps in a new one.
#[derive(Debug)]
pub struct LoadedPlugin {
    /// Name, version hash, grants, limits, settings.
    pub meta: Arc<PluginMeta>,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Full SHA-256 of the file, hex.
    pub sha256: String,
    /// Its world.
    pub world: World,
    /// What `describe` returned.
    pub description: Description,
    /// Interfaces the component imports (names with versions).
    pub imports: Vec<String>,
    /// wasmail capabilities it imports but was not granted (calls will trap).
    pub ungranted: Vec<Capability>,
    /// Failure policy.
    pub on_error: OnError,
    /// Transactions one milter-filter instance may serve (1 = a fresh one each).
    pub instance_reuse: u32,
    /// Instantiation handle.
    pub pre: Pre,
    /// Circuit breaker of this version.
    pub breaker: Breaker,
    /// Counters of this version.
    pub counters: Counters,
}

impl LoadedPlugin {
    /// The milter description parts, if this is a milter plugin.
    pub fn milter_description(&self) -> Option<(&[Stage], BodyMode)> {
        match &self.description {
            Description::Milter { stages, body, .. } => Some((stages, *body)),
            _ => None,
        }
    }
}

/// Where a compiled artifact for `sha256` lives in `cache_dir`.
fn cache_path(engine: &PluginEngine, cache_dir: &Path, sha256: &str) -> PathBuf {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.engine().precompile_compatibility_hash(), &mut h);
    let compat = hex::encode(&h.0.finalize()[..8]);
    cache_dir.join(format!("{sha256}-{compat}.cwasm"))
}

/// Creates the cache directory with mode 0700 (tightening a directory we own) and checks
/// that it is ours and private: deserialization trusts its files.
fn prepare_cache_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    let meta = fs::metadata(dir)?;
    if meta.uid() == me && meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {}", dir.display()))?;
    }
    let meta = fs::metadata(dir)?;
    if meta.uid() != me || meta.mode() & 0o077 != 0 {
        bail!(
            "{} is not a private directory owned by wasmail's user; refusing to use it as \
             the plugin cache",
            dir.display()
        );
    }
    Ok(())
}

/// Compiles `bytes`, through the cache when one is configured.
fn compile(
    engine: &PluginEngine,
    bytes: &[u8],
    sha256: &str,
    cache_dir: Option<&Path>,
) -> anyhow::Result<Component> {
    let Some(dir) = cache_dir else {
        return Ok(Component::new(engine.engine(), bytes)?);
    };
    prepare_cache_dir(dir)?;
    let path = cache_path(engine, dir, sha256);
    if let Ok(meta) = fs::symlink_metadata(&path)
        && meta.is_file()
        && meta.uid() == nix::unistd::geteuid().as_raw()
        && meta.mode() & 0o077 == 0
    {
        // Read into memory rather than mmap: a cache file truncated by someone else while
        // in use must not crash the process (SIGBUS).
        match fs::read(&path) {
            // SAFETY: the bytes come from a regular file in our private (0700, our uid)
            // cache directory, written by `write_cache` below from `Component::serialize`
            // under the same engine configuration (the file name carries the engine's
            // compatibility hash), and readable and writable by our own user only.
            Ok(artifact) => match unsafe { Component::deserialize(engine.engine(), &artifact) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "ignoring unusable cached plugin artifact")
                }
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read cached plugin artifact")
            }
        }
    }
    let component = Component::new(engine.engine(), bytes)?;
    if let Err(e) = write_cache(&component, &path) {
        tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "could not write the plugin cache");
    }
    Ok(component)
}

fn write_cache(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Checks the file's header: a component, not a core module or something else.
pub fn check_header(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!(
            "{}: not a WebAssembly file (no `\\0asm` header); plugins are wasm components \
             built for wasm32-wasip2",
            path.display()
        );
    }
    match &bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => bail!(
            "{}: is a core WebAssembly module, not a component; build the plugin for \
             `--target wasm32-wasip2` (or wrap it with `wasm-tools component new`)",
            path.display()
        ),
        v => bail!(
            "{}: unsupported WebAssembly version/layer bytes {v:02x?}",
            path.display()
        ),
    }
}

/// Settings as `(key, text)`: strings as they are, other values in TOML syntax.
fn settings_text(settings: &toml::Table) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

/// Inputs to [`load`].
#[derive(Debug)]
pub struct LoadRequest<'a> {
    /// Configured name.
    pub name: &'a str,
    /// The plugin's configuration.
    pub entry: &'a PluginEntry,
    /// The file, resolved against `[plugins] dir`.
    pub path: PathBuf,
    /// Host-wide default limits.
    pub defaults: &'a Limits,
    /// Breaker settings.
    pub breaker: &'a BreakerConfig,
    /// Compiled-artifact cache.
    pub cache_dir: Option<&'a Path>,
    /// The world the caller needs (None = whatever the file is).
    pub expect: Option<World>,
}

/// Loads, type-checks and describes one plugin. The error names the file and the reason.
pub fn load(engine: &PluginEngine, req: LoadRequest<'_>) -> anyhow::Result<LoadedPlugin> {
    let path = &req.path;
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    check_header(path, &bytes)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let component = compile(engine, &bytes, &sha256, req.cache_dir)
        .with_context(|| format!("{}: compiling", path.display()))?;
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine.engine())
        .map(|(n, _)| n.to_string())
        .collect();
    let imports: Vec<String> = ty
        .imports(engine.engine())
        .map(|(n, _)| n.to_string())
        .collect();
    let world = World::ALL
        .into_iter()
        .find(|w| {
            exports
                .iter()
                .any(|e| e.split('@').next() == Some(w.export()))
        })
        .ok_or_else(|| {
            anyhow!(
                "{}: exports none of the wasmail:plugin@0.1 interfaces (it exports: {}); \
                 build it against one of the worlds milter-filter, table, policy, mail-hook",
                path.display(),
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                }
            )
        })?;
    if let Some(want) = req.expect
        && want != world
    {
        bail!(
            "{}: is a `{world}` plugin, but it is used where a `{want}` plugin is needed",
            path.display()
        );
    }
    for import in &imports {
        let base = import.split('@').next().unwrap_or(import);
        if !(base.starts_with("wasi:") || base.starts_with("wasmail:plugin/")) {
            bail!(
                "{}: imports `{import}`, which wasmail does not provide (plugins may import \
                 WASI 0.2 and wasmail:plugin capabilities only)",
                path.display()
            );
        }
    }
    let ungranted: Vec<Capability> = Capability::ALL
        .into_iter()
        .filter(|c| !req.entry.grants.contains(c))
        .filter(|c| {
            imports.iter().any(|i| {
                i.split('@').next() == Some(&format!("wasmail:plugin/{}", c.name()) as &str)
            })
        })
        .collect();
    let instance_pre = engine
        .linker(world)
        .instantiate_pre(&component)
        .map_err(|e| {
            anyhow!(
                "{}: does not link against the `{world}` world: {e:#}",
                path.display()
            )
        })?;
    let pre = match world {
        World::MilterFilter => Pre::Milter(bindings::milter::MilterFilterPre::new(instance_pre)?),
        World::Table => Pre::Table(bindings::table::TablePre::new(instance_pre)?),
        World::Policy => Pre::Policy(bindings::policy::PolicyPre::new(instance_pre)?),
        World::MailHook => Pre::Hook(bindings::hook::MailHookPre::new(instance_pre)?),
    };
    let limits = req.defaults.with(&req.entry.limits);
    let meta = Arc::new(PluginMeta {
        name: req.name.to_string(),
        version: sha256[..12].to_string(),
        grants: req.entry.grants.clone(),
        limits,
        settings: settings_text(&req.entry.settings),
    });
    let description = describe(engine, &pre, &meta)
        .with_context(|| format!("{}: calling describe()", path.display()))?;
    Ok(LoadedPlugin {
        meta,
        file: path.clone(),
        sha256,
        world,
        description,
        imports,
        ungranted,
        on_error: req.entry.on_error,
        instance_reuse: req.entry.instance_reuse.max(1),
        pre,
        breaker: Breaker::new(req.breaker.clone()),
        counters: Counters::default(),
    })
}

/// A store prepared with limits and a deadline for one call.
pub fn new_store(
    engine: &PluginEngine,
    meta: &Arc<PluginMeta>,
    services: Services,
    domain: Option<&str>,
) -> Store<HostState> {
    let mut store = Store::new(
        engine.engine(),
        HostState::new(meta.clone(), services, domain),
    );
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(engine.ticks(meta.limits.call_deadline));
    refuel(engine, &mut store, meta);
    store
}

/// Gives `store` the plugin's full per-transaction fuel budget again (when `[plugins] fuel`
/// is on; 0 = unlimited), for a new store or a reused instance's next transaction.
pub fn refuel(engine: &PluginEngine, store: &mut Store<HostState>, meta: &PluginMeta) {
    if engine.fuel() {
        let fuel = match meta.limits.fuel {
            0 => u64::MAX,
            f => f,
        };
        store.set_fuel(fuel).expect("fuel is enabled");
    }
}

fn describe(
    engine: &PluginEngine,
    pre: &Pre,
    meta: &Arc<PluginMeta>,
) -> anyhow::Result<Description> {
    // The canary runs with the plugin's own limits but a short deadline.
    let mut store = new_store(engine, meta, Services::default(), None);
    store.set_epoch_deadline(engine.ticks(meta.limits.call_deadline.min(Duration::from_secs(1))));
    let started = Instant::now();
    let out = match pre {
        Pre::Milter(p) => {
            let inst = p.instantiate(&mut store)?;
            let d = inst.wasmail_plugin_filter().call_describe(&mut store)?;
            milter_description(d)?
        }
        Pre::Table(p) => {
            let inst = p.instantiate(&mut store)?;
            let d = inst.wasmail_plugin_lookup().call_describe(&mut store)?;
            Description::Table {
                name: d.name,
                version: d.version,
                tables: d.tables,
            }
        }
        Pre::Policy(p) => {
            let inst = p.instantiate(&mut store)?;
            let d = inst.wasmail_plugin_access().call_describe(&mut store)?;
            Description::Policy {
                name: d.name,
                version: d.version,
            }
        }
        Pre::Hook(p) => {
            let inst = p.instantiate(&mut store)?;
            let d = inst.wasmail_plugin_hook().call_describe(&mut store)?;
            Description::Hook {
                name: d.name,
                version: d.version,
                events: d
                    .events
                    .iter()
                    .map(|e| hook_event_name(*e).to_string())
                    .collect(),
            }
        }
    };
    tracing::debug!(plugin = %meta.name, elapsed_us = started.elapsed().as_micros() as u64, "describe canary");
    Ok(out)
}

fn hook_event_name(e: bindings::hook::exports::wasmail::plugin::hook::EventKind) -> &'static str {
    use bindings::hook::exports::wasmail::plugin::hook::EventKind as K;
    match e {
        K::Connect => "connect",
        K::Auth => "auth",
        K::PostLogin => "post-login",
        K::ImapCommand => "imap-command",
        K::Delivery => "delivery",
    }
}

fn milter_description(
    d: bindings::milter::wasmail::plugin::milter_types::Description,
) -> anyhow::Result<Description> {
    use bindings::milter::wasmail::plugin::milter_types::{BodyMode as B, Stage as S};
    let mut stages: Vec<Stage> = d
        .stages
        .iter()
        .map(|s| match s {
            S::Connect => Stage::Connect,
            S::Helo => Stage::Helo,
            S::MailFrom => Stage::MailFrom,
            S::Rcpt => Stage::Rcpt,
            S::Headers => Stage::Headers,
            S::EndOfHeaders => Stage::EndOfHeaders,
            S::Body => Stage::Body,
            S::EndOfMessage => Stage::EndOfMessage,
        })
        .collect();
    stages.sort();
    stages.dedup();
    let body = match d.body {
        B::None => BodyMode::None,
        B::Chunks => BodyMode::Chunks,
        B::Whole(0) => bail!("body mode whole(0): the cap must be positive"),
        B::Whole(n) => BodyMode::Whole(n),
    };
    if d.name.is_empty() {
        bail!("describe() returned an empty name");
    }
    Ok(Description::Milter {
        name: d.name,
        version: d.version,
        stages,
        body,
    })
}

impl LoadedPlugin {
    /// Records a failure of this version at `stage`: counts it by kind, feeds the circuit
    /// breaker (unless the breaker itself skipped the call) and logs it with the plugin,
    /// version, stage, kind and failure policy. Shared by every service's adapter.
    pub fn record_failure(&self, stage: &str, kind: &FailureKind) {
        self.counters.count(kind);
        tracing::error!(
            plugin = %self.meta.name, version = %self.meta.version, stage,
            kind = kind.label(), detail = %kind, on_error = ?self.on_error,
            "plugin failed"
        );
        if !matches!(kind, FailureKind::BreakerOpen)
            && let super::breaker::Tripped::Opened(period) =
                self.breaker.record_failure(std::time::Instant::now())
        {
            tracing::warn!(
                plugin = %self.meta.name, version = %self.meta.version,
                open_secs = period.as_secs_f64(),
                "circuit breaker opened: plugin version skipped (on_error applies)"
            );
        }
    }
}
