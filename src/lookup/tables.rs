//! Table resolution: which source answers a table name, and the answers of the built-in
//! registry tables.
//!
//! A table is either built in (answered from the live registry [`Snapshot`]) or bound to a
//! `table` plugin (`[lookup.tables.NAME] plugin = "..."`). Both see the key folded to lower
//! case and expanded into Postfix's search order ([`super::search`]); the first candidate
//! with an answer wins.
//!
//! Built-in answers:
//! - `virtual_mailbox_domains`: a registry domain → `OK`.
//! - `virtual_mailbox_maps`: a mailbox (the address, or without its extension) →
//!   `domain/local/` (a Maildir path under `virtual_mailbox_base`; LMTP delivery ignores it).
//! - `virtual_alias_maps`: an alias → its targets, comma-separated; a catch-all
//!   (`@domain`) → its targets. When the domain has a catch-all, a mailbox maps to
//!   itself, so the catch-all does not swallow mail for real mailboxes (the virtual(5)
//!   idiom). A bare domain key (Postfix's `virtual_alias_domains` probe) is never found, so
//!   registry domains stay virtual *mailbox* domains.
//! - `transport_maps`: the domain's `transport`, for the address's domain; `*` and parent
//!   domains are not found (Postfix's default transport applies). With `[cluster]`, a
//!   registry domain without a `transport` whose known owner is another host advertising
//!   an LMTP address answers `lmtp:inet:<that address>`, so Postfix delivers straight to
//!   the owner (from the watched cache: no etcd round trip; an unknown owner is not
//!   found, and the local LMTP front places and forwards).
//! - `smtpd_sender_login_maps`: a mailbox → its own address (the SASL login name); an
//!   alias → those of its targets that are mailboxes.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{debug, warn};

use super::config::{BUILTIN_TABLES, LookupSection};
use super::search::{Search, candidates, fold};
use crate::host::calls::{LookupAnswer, TablePool};
use crate::host::config::OnError;
use crate::host::set::PluginHost;
use crate::registry::{Live, Snapshot};

/// One answer, in protocol-neutral form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Found, with the value.
    Found(String),
    /// Not found.
    NotFound,
    /// Temporary failure (Postfix defers and retries).
    Temp(String),
    /// Permanent failure (Postfix logs a configuration error).
    Perm(String),
}

/// A built-in registry table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    Domains,
    Mailboxes,
    Aliases,
    Transport,
    SenderLogins,
}

impl Builtin {
    fn from_name(name: &str) -> Option<Builtin> {
        Some(match name {
            "virtual_mailbox_domains" => Builtin::Domains,
            "virtual_mailbox_maps" => Builtin::Mailboxes,
            "virtual_alias_maps" => Builtin::Aliases,
            "transport_maps" => Builtin::Transport,
            "smtpd_sender_login_maps" => Builtin::SenderLogins,
            _ => return None,
        })
    }

    fn search(self) -> Search {
        match self {
            Builtin::Domains => Search::Exact,
            Builtin::Mailboxes | Builtin::Aliases | Builtin::SenderLogins => Search::Address,
            Builtin::Transport => Search::Transport,
        }
    }

    /// Answers one candidate key from `snap`; None = not found, try the next candidate.
    fn answer(self, snap: &Snapshot, key: &str) -> Option<String> {
        let address = key
            .rsplit_once('@')
            .filter(|(local, domain)| !local.is_empty() && !domain.is_empty());
        match self {
            Builtin::Domains => snap.domain(key).map(|_| "OK".to_string()),
            Builtin::Mailboxes => {
                let (local, domain) = address?;
                snap.mailbox(key).map(|_| format!("{domain}/{local}/"))
            }
            Builtin::Aliases => {
                if !key.contains('@') {
                    return None;
                }
                if let Some(alias) = snap.alias(key) {
                    return Some(alias.targets.join(","));
                }
                let (_, domain) = address?;
                (snap.mailbox(key).is_some() && snap.alias(&format!("@{domain}")).is_some())
                    .then(|| key.to_string())
            }
            Builtin::Transport => {
                if key.contains('@') || key.starts_with('.') || key == "*" {
                    return None;
                }
                snap.domain(key)?.transport.clone()
            }
            Builtin::SenderLogins => {
                address?;
                if snap.mailbox(key).is_some() {
                    return Some(key.to_string());
                }
                let logins: Vec<&str> = snap
                    .alias(key)?
                    .targets
                    .iter()
                    .filter(|t| snap.mailbox(t).is_some())
                    .map(String::as_str)
                    .collect();
                (!logins.is_empty()).then(|| logins.join(","))
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Binding {
    Builtin(Builtin),
    Plugin { name: String, search: Search },
}

/// Resolves lookups for every served table.
#[derive(Debug)]
pub struct Tables {
    bindings: BTreeMap<String, Binding>,
    delimiters: String,
    registry: Option<Arc<Live>>,
    plugins: Option<Arc<PluginHost>>,
    pool: TablePool,
    cluster: Option<crate::cluster::Cluster>,
}

/// Why [`Tables::new`] refused the configuration.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    /// A built-in table is served but no registry was opened.
    #[error("table `{0}` is answered by the registry, but no registry is open")]
    NoRegistry(String),
    /// A plugin table is configured but no plugins are loaded.
    #[error("table `{0}` is bound to plugin `{1}`, but that plugin is not loaded")]
    NoPlugin(String, String),
}

impl Tables {
    /// Builds the bindings of `section`: every built-in name (when a registry is given),
    /// overridden or extended by `[lookup.tables.NAME]` entries.
    pub fn new(
        section: &LookupSection,
        registry: Option<Arc<Live>>,
        plugins: Option<Arc<PluginHost>>,
    ) -> Result<Tables, TablesError> {
        let mut bindings = BTreeMap::new();
        if registry.is_some() {
            for name in BUILTIN_TABLES {
                let b = Builtin::from_name(name).expect("built-in names match");
                bindings.insert(name.to_string(), Binding::Builtin(b));
            }
        }
        for (table, entry) in &section.tables {
            let binding = match &entry.plugin {
                Some(p) => {
                    if plugins.as_ref().and_then(|h| h.get(p)).is_none() {
                        return Err(TablesError::NoPlugin(table.clone(), p.clone()));
                    }
                    Binding::Plugin {
                        name: p.clone(),
                        search: entry.search.unwrap_or_else(|| Search::for_table(table)),
                    }
                }
                None => match Builtin::from_name(table) {
                    Some(b) if registry.is_some() => Binding::Builtin(b),
                    _ => return Err(TablesError::NoRegistry(table.clone())),
                },
            };
            bindings.insert(table.clone(), binding);
        }
        Ok(Tables {
            bindings,
            delimiters: section.recipient_delimiter.clone(),
            registry,
            plugins,
            pool: TablePool::new(section.instance_pool, section.instance_max_uses),
            cluster: None,
        })
    }

    /// Lets `transport_maps` point Postfix at a domain's owner host.
    pub fn with_cluster(mut self, cluster: Option<crate::cluster::Cluster>) -> Tables {
        self.cluster = cluster;
        self
    }

    /// `lmtp:inet:<owner's LMTP>` for a registry domain (without its own transport) that
    /// another host owns and advertises an LMTP address for.
    fn owner_transport(&self, b: Builtin, snap: &Snapshot, key: &str) -> Option<String> {
        let cluster = self.cluster.as_ref()?;
        if b != Builtin::Transport || key.contains('@') || key.starts_with('.') || key == "*" {
            return None;
        }
        snap.domain(key)?;
        let (owner, lmtp) = cluster.known_owner(key)?;
        if owner == cluster.host() {
            return None;
        }
        Some(format!("lmtp:inet:{}", lmtp?))
    }

    /// True when `table` is served.
    pub fn serves(&self, table: &str) -> bool {
        self.bindings.contains_key(table)
    }

    /// Names of the served tables.
    pub fn names(&self) -> Vec<&str> {
        self.bindings.keys().map(String::as_str).collect()
    }

    /// Looks `key` (bytes as Postfix sent them) up in `table`.
    pub fn lookup(&self, table: &str, key: &[u8]) -> Answer {
        let Some(binding) = self.bindings.get(table) else {
            return Answer::Perm(format!("no table `{table}` is configured in wasmail"));
        };
        let Ok(original) = std::str::from_utf8(key) else {
            // No registry entry or plugin rule can name a non-UTF-8 address.
            debug!(table, "key is not UTF-8: not found");
            return Answer::NotFound;
        };
        let folded = fold(original);
        if folded.is_empty() {
            return Answer::NotFound;
        }
        match binding {
            Binding::Builtin(b) => {
                let Some(live) = &self.registry else {
                    return Answer::Temp("registry not open".into());
                };
                let snap = live.snapshot();
                candidates(b.search(), &folded, &self.delimiters)
                    .iter()
                    .find_map(|k| {
                        b.answer(&snap, k)
                            .or_else(|| self.owner_transport(*b, &snap, k))
                    })
                    .map_or(Answer::NotFound, Answer::Found)
            }
            Binding::Plugin { name, search } => {
                let Some(host) = &self.plugins else {
                    return Answer::Temp(format!("plugin `{name}` is not loaded"));
                };
                let keys = candidates(*search, &folded, &self.delimiters);
                let domain = folded
                    .rsplit_once('@')
                    .map(|(_, d)| d)
                    .filter(|d| !d.is_empty());
                match self.pool.lookup(host, name, domain, table, &keys, original) {
                    Ok((_, LookupAnswer::Found(v))) => Answer::Found(v),
                    Ok((_, LookupAnswer::NotFound)) => Answer::NotFound,
                    Ok((_, LookupAnswer::Temp(r))) => Answer::Temp(r),
                    Ok((_, LookupAnswer::Perm(r))) => Answer::Perm(r),
                    Err(e) => {
                        let on_error = e.plugin.as_ref().map_or(OnError::Tempfail, |p| p.on_error);
                        match on_error {
                            OnError::Tempfail => Answer::Temp(format!(
                                "table plugin `{name}` failed ({})",
                                e.kind.label()
                            )),
                            OnError::Continue => {
                                warn!(table, plugin = %name, "table plugin failed; answering not found (on_error = continue)");
                                Answer::NotFound
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Alias, Domain, Mailbox};

    fn snap() -> Snapshot {
        let mut s = Snapshot::default();
        for (name, transport) in [
            ("example.com", Some("lmtp:unix:/run/wasmail/lmtp.sock")),
            ("example.net", None),
        ] {
            s.domains.insert(
                name.into(),
                Domain {
                    name: name.into(),
                    transport: transport.map(Into::into),
                    ..Domain::default()
                },
            );
        }
        for a in ["bob@example.com", "carol@example.com", "erin@example.net"] {
            s.mailboxes.insert(
                a.into(),
                Mailbox {
                    address: a.into(),
                    ..Mailbox::default()
                },
            );
        }
        for (src, targets) in [
            (
                "info@example.com",
                vec!["bob@example.com", "carol@example.com"],
            ),
            ("@example.net", vec!["erin@example.net"]),
            (
                "team@example.net",
                vec!["erin@example.net", "x@remote.test"],
            ),
        ] {
            s.aliases.insert(
                src.into(),
                Alias {
                    source: src.into(),
                    targets: targets.into_iter().map(Into::into).collect(),
                },
            );
        }
        s
    }

    fn ask(b: Builtin, key: &str) -> Option<String> {
        let s = snap();
        candidates(b.search(), &fold(key), "+")
            .iter()
            .find_map(|k| b.answer(&s, k))
    }

    #[test]
    fn domains() {
        assert_eq!(ask(Builtin::Domains, "Example.COM").as_deref(), Some("OK"));
        assert_eq!(ask(Builtin::Domains, "sub.example.com"), None);
    }

    #[test]
    fn mailboxes_with_case_and_extension() {
        assert_eq!(
            ask(Builtin::Mailboxes, "Bob+Tag@Example.com").as_deref(),
            Some("example.com/bob/")
        );
        assert_eq!(ask(Builtin::Mailboxes, "nobody@example.com"), None);
    }

    #[test]
    fn aliases_and_catch_all() {
        assert_eq!(
            ask(Builtin::Aliases, "INFO@example.com").as_deref(),
            Some("bob@example.com,carol@example.com")
        );
        // No catch-all in example.com: a mailbox is not an alias.
        assert_eq!(ask(Builtin::Aliases, "bob@example.com"), None);
        // Catch-all in example.net: unknown → catch-all, mailbox → itself.
        assert_eq!(
            ask(Builtin::Aliases, "whoever@example.net").as_deref(),
            Some("erin@example.net")
        );
        assert_eq!(
            ask(Builtin::Aliases, "Erin@Example.net").as_deref(),
            Some("erin@example.net")
        );
        // The virtual_alias_domains probe with a bare domain is never found.
        assert_eq!(ask(Builtin::Aliases, "example.net"), None);
    }

    #[test]
    fn transport_by_domain() {
        assert_eq!(
            ask(Builtin::Transport, "Alice+x@Example.com").as_deref(),
            Some("lmtp:unix:/run/wasmail/lmtp.sock")
        );
        assert_eq!(ask(Builtin::Transport, "erin@example.net"), None);
        assert_eq!(ask(Builtin::Transport, "*"), None);
    }

    #[test]
    fn sender_logins() {
        assert_eq!(
            ask(Builtin::SenderLogins, "bob@example.com").as_deref(),
            Some("bob@example.com")
        );
        assert_eq!(
            ask(Builtin::SenderLogins, "team@example.net").as_deref(),
            Some("erin@example.net")
        );
        assert_eq!(ask(Builtin::SenderLogins, "x@remote.test"), None);
    }
}
