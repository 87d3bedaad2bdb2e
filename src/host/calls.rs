//! One-shot calls for the request/event worlds (`table`, `policy`, `mail-hook`): a fresh
//! store and instance per request, the call deadline, failure classification, counters
//! and the breaker. The services map a [`FailureKind`] to their protocol's temporary
//! answer according to the plugin's `on_error`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::bindings::hook::exports::wasmail::plugin::hook as whook;
use super::bindings::policy::exports::wasmail::plugin::access as waccess;
use super::bindings::table::Table as TableBindings;
use super::bindings::table::exports::wasmail::plugin::lookup as wlookup;
use super::breaker::FailureKind;
use super::plugin::{LoadedPlugin, Pre, new_store, refuel};
use super::pool::{InstancePool, Pooled};
use super::set::PluginHost;
use super::state::HostState;

pub use waccess::Action as PolicyAction;
pub use whook::{Decision as HookDecision, Event as HookEvent, Session as HookSession};
pub use wlookup::Answer as LookupAnswer;

/// A failed call: which plugin version, and why.
#[derive(Debug, Clone)]
pub struct CallError {
    /// The plugin version that failed (its `on_error` decides what the service answers);
    /// None when no plugin of that name is loaded.
    pub plugin: Option<Arc<LoadedPlugin>>,
    /// Why.
    pub kind: FailureKind,
}

fn fail(plugin: &Arc<LoadedPlugin>, what: &str, kind: FailureKind) -> CallError {
    plugin.record_failure(what, &kind);
    CallError {
        plugin: Some(plugin.clone()),
        kind,
    }
}

fn once<R>(
    host: &PluginHost,
    name: &str,
    domain: Option<&str>,
    what: &str,
    f: impl FnOnce(&Pre, &mut wasmtime::Store<HostState>) -> wasmtime::Result<R>,
) -> Result<R, CallError> {
    let plugin = host.get(name).ok_or_else(|| CallError {
        plugin: None,
        kind: FailureKind::Instantiate(format!("plugin `{name}` is not loaded")),
    })?;
    if !plugin.breaker.allows_now() {
        return Err(fail(&plugin, what, FailureKind::BreakerOpen));
    }
    let mut store = new_store(host.engine(), &plugin.meta, host.services().clone(), domain);
    match f(&plugin.pre, &mut store) {
        Ok(r) => {
            plugin.counters.instances.fetch_add(1, Ordering::Relaxed);
            plugin.counters.calls.fetch_add(1, Ordering::Relaxed);
            plugin.breaker.record_success();
            Ok(r)
        }
        Err(e) => Err(fail(&plugin, what, FailureKind::classify(&e))),
    }
}

fn wrong_world(what: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!("plugin is not a {what} plugin"))
}

/// Looks a key up in `table` through table plugin `name`: `candidates` are the folded
/// keys in search order (see `crate::lookup::search`), tried in one instance until an
/// answer other than not-found; `original` is the key as Postfix sent it. Returns the
/// index of the candidate that answered (the last one for not-found) and the answer.
pub fn lookup(
    host: &PluginHost,
    name: &str,
    domain: Option<&str>,
    table: &str,
    candidates: &[String],
    original: &str,
) -> Result<(usize, LookupAnswer), CallError> {
    once(host, name, domain, "lookup", |pre, store| {
        let Pre::Table(p) = pre else {
            return Err(wrong_world("table"));
        };
        let inst = p.instantiate(&mut *store)?;
        try_candidates(&inst, store, table, candidates, original)
    })
}

/// Asks a live table instance for each candidate in turn until one is not not-found.
fn try_candidates(
    inst: &TableBindings,
    store: &mut wasmtime::Store<HostState>,
    table: &str,
    candidates: &[String],
    original: &str,
) -> wasmtime::Result<(usize, LookupAnswer)> {
    let iface = inst.wasmail_plugin_lookup();
    let mut last = (0, LookupAnswer::NotFound);
    // One key for every candidate: `original` is copied once and `folded` reuses its buffer.
    let mut key = wlookup::Key {
        folded: String::new(),
        original: original.to_string(),
    };
    for (i, folded) in candidates.iter().enumerate() {
        key.folded.clear();
        key.folded.push_str(folded);
        let answer = iface.call_lookup(&mut *store, table, &key)?;
        if !matches!(answer, LookupAnswer::NotFound) {
            return Ok((i, answer));
        }
        last = (i, answer);
    }
    Ok(last)
}

/// Runs policy plugin `name` on one policy request's attributes.
pub fn policy(
    host: &PluginHost,
    name: &str,
    domain: Option<&str>,
    attributes: &[(String, String)],
) -> Result<PolicyAction, CallError> {
    once(host, name, domain, "policy", |pre, store| {
        let Pre::Policy(p) = pre else {
            return Err(wrong_world("policy"));
        };
        let inst = p.instantiate(&mut *store)?;
        inst.wasmail_plugin_access()
            .call_check(&mut *store, attributes)
    })
}

/// Runs hook plugin `name` on one event.
pub fn hook(
    host: &PluginHost,
    name: &str,
    domain: Option<&str>,
    event: &HookEvent,
) -> Result<HookDecision, CallError> {
    once(host, name, domain, "hook", |pre, store| {
        let Pre::Hook(p) = pre else {
            return Err(wrong_world("mail-hook"));
        };
        let inst = p.instantiate(&mut *store)?;
        inst.wasmail_plugin_hook().call_on_event(&mut *store, event)
    })
}

/// A pool of idle `table` plugin instances, reused across lookups.
///
/// A fresh instance per lookup costs more than the lookup round trip itself (about 10 µs
/// to create and drop, against a 15 µs socket round trip), so the lookup service keeps a
/// few instances warm. Isolation rules:
/// - an instance serves one plugin *version* and one *domain* (the kv namespace): it is
///   never shared across tenants, and a reloaded plugin gets new instances;
/// - an instance that failed in any way (trap, deadline, memory) is dropped, never reused;
/// - an instance is retired after `max_uses` lookups, bounding what a plugin can
///   accumulate in its memory;
/// - at most `max_idle` instances wait in the pool (each holds a pooling-allocator slot).
///
/// A plugin may therefore see state left by its earlier lookups for the same domain (like a
/// FastCGI worker); it must not rely on it.
#[derive(Debug)]
pub struct TablePool {
    pool: InstancePool<TableBindings>,
    max_uses: u32,
}

impl TablePool {
    /// A pool keeping at most `max_idle` instances (0 = a fresh instance per lookup), each
    /// used for at most `max_uses` lookups.
    pub fn new(max_idle: usize, max_uses: u32) -> TablePool {
        TablePool {
            pool: InstancePool::new(max_idle),
            max_uses: max_uses.max(1),
        }
    }

    /// Like [`lookup`], on a pooled instance when one fits.
    pub fn lookup(
        &self,
        host: &PluginHost,
        name: &str,
        domain: Option<&str>,
        table: &str,
        candidates: &[String],
        original: &str,
    ) -> Result<(usize, LookupAnswer), CallError> {
        let plugin = host.get(name).ok_or_else(|| CallError {
            plugin: None,
            kind: FailureKind::Instantiate(format!("plugin `{name}` is not loaded")),
        })?;
        if !plugin.breaker.allows_now() {
            return Err(fail(&plugin, "lookup", FailureKind::BreakerOpen));
        }
        let mut pooled = match self.pool.take(&plugin, name, domain) {
            Some(p) => p,
            None => {
                let Pre::Table(pre) = &plugin.pre else {
                    return Err(fail(
                        &plugin,
                        "lookup",
                        FailureKind::classify(&wrong_world("table")),
                    ));
                };
                let mut store =
                    new_store(host.engine(), &plugin.meta, host.services().clone(), domain);
                let instance = pre
                    .instantiate(&mut store)
                    .map_err(|e| fail(&plugin, "lookup", FailureKind::classify(&e)))?;
                plugin.counters.instances.fetch_add(1, Ordering::Relaxed);
                Pooled {
                    plugin: plugin.clone(),
                    store,
                    bindings: instance,
                    uses: 0,
                }
            }
        };
        let engine = host.engine();
        let limits = &plugin.meta.limits;
        pooled
            .store
            .set_epoch_deadline(engine.ticks(limits.call_deadline));
        refuel(engine, &mut pooled.store, &plugin.meta);
        pooled.store.data_mut().begin_request();
        let result = try_candidates(
            &pooled.bindings,
            &mut pooled.store,
            table,
            candidates,
            original,
        );
        match result {
            Ok(r) => {
                plugin.counters.calls.fetch_add(1, Ordering::Relaxed);
                plugin.breaker.record_success();
                pooled.uses += 1;
                self.pool.give_back(name, domain, pooled, self.max_uses);
                Ok(r)
            }
            // The instance is dropped: never reused after a failure.
            Err(e) => Err(fail(&plugin, "lookup", FailureKind::classify(&e))),
        }
    }
}
