//! Idle plugin instances kept for reuse: the lookup service's `table` instances
//! ([`TablePool`](super::calls::TablePool)) and milter-filter instances of plugins with
//! `instance_reuse` above 1 ([`FilterPool`](super::milter::FilterPool)).
//!
//! Isolation rules, the same for both:
//! - an instance waits under its plugin name and chain/domain key, and is only taken by the
//!   same plugin *version* (older versions are dropped when met), so it never serves
//!   another tenant and a reloaded plugin gets new instances;
//! - callers give back only instances that did not fail (wasmtime never re-enters a trapped
//!   instance, and a plugin past a limit is not trusted again);
//! - an instance is retired after its caller's `max_uses`, bounding what a plugin can
//!   accumulate in its memory;
//! - at most `max_idle` instances wait in all (each holds a pooling-allocator slot).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime::Store;

use super::plugin::LoadedPlugin;
use super::state::HostState;

/// Plugin name and domain (None = global).
pub type PoolKey = (String, Option<String>);

/// One instance of a plugin version, with its store.
pub struct Pooled<B> {
    /// The version it runs.
    pub plugin: Arc<LoadedPlugin>,
    /// Its store.
    pub store: Store<HostState>,
    /// Its generated bindings.
    pub bindings: B,
    /// Requests or transactions it has served.
    pub uses: u32,
}

impl<B> std::fmt::Debug for Pooled<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("plugin", &self.plugin.meta.name)
            .field("version", &self.plugin.meta.version)
            .field("uses", &self.uses)
            .finish_non_exhaustive()
    }
}

/// Idle instances, shared by every connection of a service.
pub struct InstancePool<B> {
    idle: Mutex<Idle<B>>,
    max_idle: usize,
}

/// The waiting instances by key, and how many there are in all (kept, not counted per
/// request: a responder with one key per domain would otherwise walk every domain on each
/// lookup).
struct Idle<B> {
    by_key: HashMap<PoolKey, Vec<Pooled<B>>>,
    count: usize,
}

impl<B> std::fmt::Debug for InstancePool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("idle", &self.len())
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

impl<B> InstancePool<B> {
    /// A pool keeping at most `max_idle` instances (0 = never keep one).
    pub fn new(max_idle: usize) -> Self {
        InstancePool {
            idle: Mutex::new(Idle {
                by_key: HashMap::new(),
                count: 0,
            }),
            max_idle,
        }
    }

    /// Idle instances now.
    pub fn len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).count
    }

    /// True when no instance waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every idle instance (after a reload).
    pub fn clear(&self) {
        let drained: Vec<Vec<Pooled<B>>> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.count = 0;
            idle.by_key.drain().map(|(_, v)| v).collect()
        };
        // Dropped outside the lock: freeing an instance resets its memory.
        drop(drained);
    }

    /// An idle instance of exactly this plugin version under `key`, if one waits.
    pub fn take(&self, plugin: &Arc<LoadedPlugin>, key: &PoolKey) -> Option<Pooled<B>> {
        let mut stale = Vec::new();
        let found = {
            let mut guard = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let idle = &mut *guard;
            let list = idle.by_key.get_mut(key)?;
            let mut found = None;
            while let Some(p) = list.pop() {
                idle.count -= 1;
                if Arc::ptr_eq(&p.plugin, plugin) {
                    found = Some(p);
                    break;
                }
                // An older version of the plugin.
                stale.push(p);
            }
            found
        };
        drop(stale);
        found
    }

    /// Keeps `p` for a later request under `key`, unless it has served `max_uses` or the
    /// pool is full (then it is dropped).
    pub fn give_back(&self, key: PoolKey, p: Pooled<B>, max_uses: u32) {
        if p.uses >= max_uses || self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.count < self.max_idle {
            idle.count += 1;
            idle.by_key.entry(key).or_default().push(p);
            return;
        }
        // Full: `p` is dropped after the lock is released (freeing an instance resets its
        // memory).
        drop(idle);
    }
}
