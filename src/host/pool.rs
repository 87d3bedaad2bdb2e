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

/// The waiting instances by plugin name, then by domain (`""` for the global chain: no
/// domain is empty), and how many there are in all (kept, not counted per request: a
/// responder with one key per domain would otherwise walk every domain on each lookup).
/// Two levels keyed by `String` let a request look its instances up with borrowed `&str`s,
/// without building an owned key each time.
struct Idle<B> {
    by_key: HashMap<String, HashMap<String, Vec<Pooled<B>>>>,
    count: usize,
}

/// Drops the domains whose lists are empty once there are at least twice `max_idle` (and
/// at least 64) of them. A taken instance leaves its (now empty) list in place, so the next
/// give-back under that domain allocates nothing; but lookups carry domains from mail (a
/// sender login check sees any MAIL FROM domain), and without this a stream of new ones
/// would grow the map without bound. At most `max_idle` lists hold an instance, so a prune
/// leaves at most that many and the next one is at least as many new domains away.
fn prune_empty<T>(by_domain: &mut HashMap<String, Vec<T>>, max_idle: usize) {
    if by_domain.len() >= max_idle.saturating_mul(2).max(64) {
        by_domain.retain(|_, list| !list.is_empty());
    }
}

/// The inner key for `domain`.
fn domain_key(domain: Option<&str>) -> &str {
    debug_assert_ne!(
        domain,
        Some(""),
        "an empty domain would share the global chain's key"
    );
    domain.unwrap_or("")
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
            idle.by_key
                .drain()
                .flat_map(|(_, by_domain)| by_domain.into_values())
                .collect()
        };
        // Dropped outside the lock: freeing an instance resets its memory.
        drop(drained);
    }

    /// An idle instance of exactly this plugin version, kept under plugin `name` and
    /// `domain` (None = the global chain), if one waits.
    pub fn take(
        &self,
        plugin: &Arc<LoadedPlugin>,
        name: &str,
        domain: Option<&str>,
    ) -> Option<Pooled<B>> {
        let mut stale = Vec::new();
        let found = {
            let mut guard = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let idle = &mut *guard;
            let list = idle.by_key.get_mut(name)?.get_mut(domain_key(domain))?;
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

    /// Keeps `p` for a later request under plugin `name` and `domain`, unless it has
    /// served `max_uses` or the pool is full (then it is dropped).
    pub fn give_back(&self, name: &str, domain: Option<&str>, p: Pooled<B>, max_uses: u32) {
        if p.uses >= max_uses || self.max_idle == 0 {
            return;
        }
        let mut guard = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let idle = &mut *guard;
        if idle.count < self.max_idle {
            idle.count += 1;
            let domain = domain_key(domain);
            // Owned keys are made only the first time a plugin or domain is seen.
            let by_domain = match idle.by_key.get_mut(name) {
                Some(m) => m,
                None => idle.by_key.entry(name.to_string()).or_default(),
            };
            match by_domain.get_mut(domain) {
                Some(list) => list.push(p),
                None => {
                    prune_empty(by_domain, self.max_idle);
                    by_domain.insert(domain.to_string(), vec![p]);
                }
            }
            return;
        }
        // Full: `p` is dropped after the lock is released (freeing an instance resets its
        // memory).
        drop(guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_domain_lists_are_pruned_once_there_are_many() {
        let mut m: HashMap<String, Vec<u32>> = HashMap::new();
        m.insert("kept.example".into(), vec![1]);
        for i in 0..62 {
            m.insert(format!("d{i}.example"), Vec::new());
        }
        // 63 lists: below the bound (64 for a small pool), nothing goes.
        prune_empty(&mut m, 4);
        assert_eq!(m.len(), 63);
        m.insert("d62.example".into(), Vec::new());
        prune_empty(&mut m, 4);
        assert_eq!(m.len(), 1, "only the list holding an instance is left");
        assert_eq!(m["kept.example"], vec![1]);
        // A bigger pool allows more lists before pruning.
        for i in 0..100 {
            m.insert(format!("e{i}.example"), Vec::new());
        }
        prune_empty(&mut m, 100);
        assert_eq!(m.len(), 101);
    }
}
