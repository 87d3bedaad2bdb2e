//! One-shot calls for the request/event worlds (`table`, `policy`, `mail-hook`): a fresh
//! store and instance per request, the call deadline, failure classification, counters
//! and the breaker. The services map a [`FailureKind`] to their protocol's temporary
//! answer according to the plugin's `on_error`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::bindings::hook::exports::wasmail::plugin::hook as whook;
use super::bindings::policy::exports::wasmail::plugin::access as waccess;
use super::bindings::table::exports::wasmail::plugin::lookup as wlookup;
use super::breaker::FailureKind;
use super::plugin::{LoadedPlugin, Pre, new_store};
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
    if !plugin.breaker.allows(Instant::now()) {
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
        let iface = inst.wasmail_plugin_lookup();
        let mut last = (0, LookupAnswer::NotFound);
        for (i, folded) in candidates.iter().enumerate() {
            let key = wlookup::Key {
                folded: folded.clone(),
                original: original.to_string(),
            };
            let answer = iface.call_lookup(&mut *store, table, &key)?;
            if !matches!(answer, LookupAnswer::NotFound) {
                return Ok((i, answer));
            }
            last = (i, answer);
        }
        Ok(last)
    })
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
