//! The set of loaded plugins, reloaded atomically.
//!
//! [`PluginHost::get`] hands out the current `Arc<LoadedPlugin>`; a transaction keeps the
//! `Arc` it started with, so a reload never changes a message in flight. A reload compiles
//! and type-checks new files off the hot path (on the caller's thread — the watcher's own
//! thread or a blocking task for SIGHUP), then swaps the whole map at once. A file that
//! fails to load is refused with a logged error naming the file and the reason; the
//! previous version keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use super::breaker::Counters;
use super::config::{PluginEntry, PluginsSection};
use super::engine::{PluginEngine, World};
use super::milter::FilterPool;
use super::plugin::{LoadRequest, LoadedPlugin, load};
use super::state::Services;

/// Outcome of one reload.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Plugins loaded with new content.
    pub loaded: Vec<String>,
    /// Plugins whose file did not change.
    pub unchanged: Vec<String>,
    /// Plugins refused, with the reason; their previous version (if any) keeps serving.
    pub failed: Vec<(String, String)>,
}

/// The plugin host: engine, services and the current plugin versions.
pub struct PluginHost {
    engine: Arc<PluginEngine>,
    services: Services,
    section: PluginsSection,
    entries: BTreeMap<String, PluginEntry>,
    expect: HashMap<String, World>,
    current: ArcSwap<HashMap<String, Arc<LoadedPlugin>>>,
    reload_lock: Mutex<()>,
    filters: FilterPool,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("engine", &self.engine)
            .field("plugins", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Builds the engine and loads every configured plugin. `expect` names the world each
    /// plugin must have, for plugins a service uses (e.g. the milter chain needs
    /// milter-filter). Any plugin that fails to load fails start-up, with every reason.
    pub fn start(
        section: &PluginsSection,
        entries: &BTreeMap<String, PluginEntry>,
        expect: HashMap<String, World>,
        services: Services,
    ) -> anyhow::Result<Arc<PluginHost>> {
        let max_mib = entries
            .values()
            .map(|e| section.limits.with(&e.limits).memory_mib)
            .max()
            .unwrap_or(section.limits.memory_mib);
        let engine = PluginEngine::new(section, max_mib)?;
        let host = PluginHost {
            engine,
            services,
            section: section.clone(),
            entries: entries.clone(),
            expect,
            current: ArcSwap::from_pointee(HashMap::new()),
            reload_lock: Mutex::new(()),
            filters: FilterPool::new(section.idle_instances as usize),
        };
        let report = host.reload();
        if !report.failed.is_empty() {
            let reasons: Vec<String> = report
                .failed
                .iter()
                .map(|(n, e)| format!("plugin `{n}`: {e}"))
                .collect();
            anyhow::bail!("{}", reasons.join("\n"));
        }
        Ok(Arc::new(host))
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// Idle milter-filter instances of plugins with `instance_reuse` above 1.
    pub fn filter_pool(&self) -> &FilterPool {
        &self.filters
    }

    /// Capability services.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The current version of plugin `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.current.load().get(name).cloned()
    }

    /// Names of all loaded plugins.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.current.load().keys().cloned().collect();
        v.sort();
        v
    }

    /// Where plugin `entry`'s file is.
    pub fn path_of(&self, entry: &PluginEntry) -> PathBuf {
        if entry.file.is_absolute() {
            entry.file.clone()
        } else {
            self.section.dir.join(&entry.file)
        }
    }

    /// Re-reads every plugin file; loads those whose content changed; swaps atomically.
    pub fn reload(&self) -> ReloadReport {
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let mut next: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        let mut report = ReloadReport::default();
        for (name, entry) in &self.entries {
            let path = self.path_of(entry);
            let previous = old.get(name);
            let hash = std::fs::read(&path)
                .map(|b| hex::encode(Sha256::digest(&b)))
                .ok();
            if let (Some(prev), Some(h)) = (previous, &hash)
                && prev.sha256 == *h
            {
                next.insert(name.clone(), prev.clone());
                report.unchanged.push(name.clone());
                continue;
            }
            let req = LoadRequest {
                name,
                entry,
                path: path.clone(),
                defaults: &self.section.limits,
                breaker: &self.section.breaker,
                cache_dir: self.section.cache_dir.as_deref(),
                expect: self.expect.get(name).copied(),
            };
            match load(&self.engine, req) {
                Ok(p) => {
                    info!(
                        plugin = %name, version = %p.meta.version, world = %p.world,
                        file = %path.display(), description = ?p.description,
                        "plugin loaded"
                    );
                    if !p.ungranted.is_empty() {
                        warn!(
                            plugin = %name,
                            ungranted = ?p.ungranted.iter().map(|c| c.name()).collect::<Vec<_>>(),
                            "plugin imports capabilities it was not granted; calls to them will fail"
                        );
                    }
                    next.insert(name.clone(), Arc::new(p));
                    report.loaded.push(name.clone());
                }
                Err(e) => {
                    let reason = format!("{e:#}");
                    match previous {
                        Some(prev) => {
                            error!(
                                plugin = %name, file = %path.display(), error = %reason,
                                kept_version = %prev.meta.version,
                                "plugin refused; the previous version keeps serving"
                            );
                            next.insert(name.clone(), prev.clone());
                        }
                        None => {
                            error!(plugin = %name, file = %path.display(), error = %reason, "plugin refused")
                        }
                    }
                    report.failed.push((name.clone(), reason));
                }
            }
        }
        self.current.store(Arc::new(next));
        if !report.loaded.is_empty() {
            // Instances of replaced versions would only be dropped at their next checkout.
            self.filters.clear();
        }
        report
    }

    /// Watches the plugin directory (and the directories of plugins configured with
    /// absolute paths) and reloads after changes settle (200 ms). The watcher stops when
    /// the returned handle is dropped.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<WatchHandle> {
        let (tx, rx) = mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        })
        .context("creating the plugin directory watcher")?;
        let mut dirs: Vec<PathBuf> = vec![self.section.dir.clone()];
        for entry in self.entries.values() {
            if let Some(parent) = self.path_of(entry).parent() {
                dirs.push(parent.to_path_buf());
            }
        }
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            if dir.is_dir() {
                watcher
                    .watch(dir, RecursiveMode::NonRecursive)
                    .with_context(|| format!("watching {}", dir.display()))?;
            }
        }
        let host = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("wasmail-plugin-watch".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Debounce: wait until no event arrived for 200 ms.
                    while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
                    let Some(host) = host.upgrade() else { return };
                    let report = host.reload();
                    if !report.loaded.is_empty() || !report.failed.is_empty() {
                        info!(loaded = ?report.loaded, failed = report.failed.len(), "plugin directory reloaded");
                    }
                }
            })
            .context("spawning the watcher thread")?;
        info!(dirs = ?dirs, "watching plugin files");
        Ok(WatchHandle { _watcher: watcher })
    }

    /// Prometheus text of the current plugin versions' counters and the idle pool. The
    /// counters belong to a version, so they start again from 0 after a reload (the
    /// `version` label changes with them).
    pub fn render_prometheus(&self) -> String {
        use std::fmt::Write as _;
        use std::sync::atomic::Ordering::Relaxed;
        let current = self.current.load();
        let mut names: Vec<&String> = current.keys().collect();
        names.sort();
        let mut out = String::new();
        let series: [(&str, &str, CounterOf); 5] = [
            (
                "wasmail_plugin_calls_total",
                "Plugin calls that returned normally.",
                |c| &c.calls,
            ),
            (
                "wasmail_plugin_instances_total",
                "Plugin instances created.",
                |c| &c.instances,
            ),
            (
                "wasmail_plugin_reused_total",
                "Milter transactions served by a reused instance (instance_reuse).",
                |c| &c.reused,
            ),
            (
                "wasmail_plugin_failures_total",
                "Plugin failures of every kind (trap, deadline, memory, limit, denied).",
                |c| &c.failures,
            ),
            (
                "wasmail_plugin_skipped_total",
                "Calls skipped because the plugin's circuit breaker was open.",
                |c| &c.skipped,
            ),
        ];
        for (metric, help, get) in series {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for name in &names {
                let p = &current[*name];
                let _ = writeln!(
                    out,
                    "{metric}{{plugin=\"{name}\",version=\"{}\"}} {}",
                    p.meta.version,
                    get(&p.counters).load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP wasmail_plugin_idle_instances Milter-filter instances waiting for reuse.\n\
             # TYPE wasmail_plugin_idle_instances gauge\nwasmail_plugin_idle_instances {}",
            self.filters.len()
        );
        out
    }

    /// The plugin directory.
    pub fn dir(&self) -> &Path {
        &self.section.dir
    }
}

/// Picks one counter out of a plugin version's [`Counters`].
type CounterOf = fn(&Counters) -> &AtomicU64;

/// Keeps the directory watcher alive.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchHandle")
    }
}
