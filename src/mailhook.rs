//! Running `mail-hook` plugin chains: the decision point shared by the IMAP/POP3 fronts,
//! the LMTP front and the Dovecot delegation endpoints.
//!
//! A chain is the service's global list (e.g. `[proxy] hooks`) followed by the domain's
//! registry chain under the key `hook` (`wasmail domain set example.com --chain
//! hook=login-rule`). Only plugins whose `describe` lists the event's kind are called.
//! The decisions are folded into one [`Outcome`]:
//! - `allow` passes to the next plugin;
//! - `deny(message)` ends the chain: the client sees the message;
//! - `delay(ms)` adds to the total delay (capped at [`HookChain::max_delay`]) and goes on:
//!   the front waits that long before it goes on (a tarpit);
//! - `rewrite(fields)` records the fields (a later rewrite of the same field wins) and
//!   goes on; which fields a front honours is its business (`user` everywhere);
//! - a failed plugin (trap, deadline, not loaded) with `on_error = "continue"` is skipped;
//!   with `on_error = "tempfail"` (the default) the chain ends with [`Outcome::Tempfail`]:
//!   the client gets a temporary failure, never a permanent one.
//!
//! Plugin calls are synchronous (wasmtime with epoch deadlines); [`HookChain::run`] runs
//! the chain on tokio's blocking pool.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::host::calls::{self, HookDecision, HookEvent};
use crate::host::config::OnError;
use crate::host::plugin::Description;
use crate::host::set::PluginHost;
use crate::registry::live::Live;

/// The folded answer of a hook chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Go on, after `delay`, with `rewrites` applied.
    Allow {
        /// Total tarpit delay asked for (capped).
        delay: Duration,
        /// Field rewrites, in the order given; a later one of the same name wins.
        rewrites: Vec<(String, String)>,
    },
    /// Refused; the message is for the client.
    Deny {
        /// The plugin's message.
        message: String,
        /// The plugin that refused.
        by: String,
    },
    /// A plugin failed with `on_error = "tempfail"`: a temporary failure for the client.
    Tempfail {
        /// The plugin that failed.
        by: String,
    },
}

impl Outcome {
    /// The last rewrite of `field`, if any.
    pub fn rewritten(&self, field: &str) -> Option<&str> {
        match self {
            Outcome::Allow { rewrites, .. } => rewrites
                .iter()
                .rev()
                .find(|(k, _)| k == field)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// One service's hook chain: the global plugin list plus each domain's registry chain.
#[derive(Debug, Clone)]
pub struct HookChain {
    plugins: Option<Arc<PluginHost>>,
    registry: Option<Arc<Live>>,
    global: Vec<String>,
    /// Longest total delay a chain may ask for.
    pub max_delay: Duration,
}

/// The event kind's name as plugins declare it (`describe().events`).
pub fn event_kind(e: &HookEvent) -> &'static str {
    match e {
        HookEvent::Connect(_) => "connect",
        HookEvent::Auth(_) => "auth",
        HookEvent::PostLogin(_) => "post-login",
        HookEvent::ImapCommand(_) => "imap-command",
        HookEvent::Delivery(_) => "delivery",
    }
}

impl HookChain {
    /// A chain running `global` (plugin names) and then the domain's registry `hook` chain.
    pub fn new(
        plugins: Option<Arc<PluginHost>>,
        registry: Option<Arc<Live>>,
        global: Vec<String>,
    ) -> HookChain {
        HookChain {
            plugins,
            registry,
            global,
            max_delay: Duration::from_secs(30),
        }
    }

    /// The plugin names that run for `domain`, in order (global first, no duplicates).
    pub fn names(&self, domain: Option<&str>) -> Vec<String> {
        let mut names = self.global.clone();
        if let (Some(live), Some(domain)) = (&self.registry, domain) {
            let snap = live.snapshot();
            if let Some(chain) = snap.domain(domain).and_then(|d| d.chains.get("hook")) {
                for n in chain {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
        }
        names
    }

    /// True when some plugin of `domain`'s chain wants events of `kind`.
    pub fn wants(&self, domain: Option<&str>, kind: &str) -> bool {
        let Some(host) = &self.plugins else {
            return false;
        };
        self.names(domain).iter().any(|n| {
            host.get(n).is_some_and(|p| match &p.description {
                Description::Hook { events, .. } => events.iter().any(|e| e == kind),
                _ => false,
            })
        })
    }

    /// Runs the chain for `event` on the blocking pool. `domain` selects the registry
    /// chain and the plugins' kv namespace.
    pub async fn run(&self, domain: Option<&str>, event: HookEvent) -> Outcome {
        let this = self.clone();
        let domain = domain.map(str::to_string);
        match tokio::task::spawn_blocking(move || this.run_blocking(domain.as_deref(), &event))
            .await
        {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "mail-hook chain panicked");
                Outcome::Tempfail {
                    by: "(host)".into(),
                }
            }
        }
    }

    /// [`HookChain::run`] on the calling thread.
    pub fn run_blocking(&self, domain: Option<&str>, event: &HookEvent) -> Outcome {
        let kind = event_kind(event);
        let mut delay = Duration::ZERO;
        let mut rewrites = Vec::new();
        for name in self.names(domain) {
            let Some(host) = &self.plugins else {
                warn!(plugin = %name, "mail-hook plugin named but no plugins are configured");
                return Outcome::Tempfail { by: name };
            };
            let Some(plugin) = host.get(&name) else {
                warn!(plugin = %name, "mail-hook plugin is not loaded");
                return Outcome::Tempfail { by: name };
            };
            let subscribed = match &plugin.description {
                Description::Hook { events, .. } => events.iter().any(|e| e == kind),
                _ => {
                    warn!(plugin = %name, "plugin in a hook chain is not a mail-hook plugin");
                    return Outcome::Tempfail { by: name };
                }
            };
            if !subscribed {
                continue;
            }
            match calls::hook(host, &name, domain, event) {
                Ok(HookDecision::Allow) => {}
                Ok(HookDecision::Deny(message)) => {
                    debug!(plugin = %name, event = kind, "mail-hook: deny");
                    return Outcome::Deny { message, by: name };
                }
                Ok(HookDecision::Delay(ms)) => {
                    delay = (delay + Duration::from_millis(ms.into())).min(self.max_delay);
                }
                Ok(HookDecision::Rewrite(fields)) => rewrites.extend(fields),
                Err(e) => {
                    let tempfail = e
                        .plugin
                        .as_ref()
                        .is_none_or(|p| p.on_error == OnError::Tempfail);
                    if tempfail {
                        return Outcome::Tempfail { by: name };
                    }
                }
            }
        }
        Outcome::Allow { delay, rewrites }
    }
}
