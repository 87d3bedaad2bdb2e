//! The registry dump: a versioned JSON document holding everything in a registry, written
//! by `wasmail registry export` and read by `wasmail registry import`, to move a registry
//! between backends (SQLite → etcd and back) or hosts, and to back it up.
//!
//! # Format (version 1)
//! ```json
//! {
//!   "format": "wasmail-registry",
//!   "version": 1,
//!   "domains": [
//!     {"name": "example.com", "transport": "lmtp:unix:private/dovecot-lmtp",
//!      "chains": {"milter": ["spam"]}, "settings": {"workers.max": "4"}}
//!   ],
//!   "mailboxes": [
//!     {"address": "alice@example.com", "password_hash": "{ARGON2ID}$argon2id$...",
//!      "quota_bytes": 2147483648}
//!   ],
//!   "aliases": [
//!     {"source": "@example.com", "targets": ["alice@example.com"]}
//!   ]
//! }
//! ```
//! Entries are sorted (domains by name, mailboxes by address, aliases by source) and the
//! document carries no generation or time stamp, so exporting the same data from any
//! backend gives the same bytes. `transport`, `password_hash` and `quota_bytes` may be
//! `null`; `chains` and `settings` may be left out (empty). Unknown fields are refused, and
//! so is another `format` or a newer `version`.
//!
//! [`import`] checks the whole document first (every entry valid; every mailbox's and
//! alias's domain in the document or the registry; no address both a mailbox and an
//! alias; nothing already in the registry unless `replace`) and writes nothing when
//! anything is wrong, naming the entry. It then writes domains, mailboxes and aliases in
//! that order, one registry write per entry (an entry already equal in the registry is
//! skipped), so a reader never sees a mailbox without its domain. It is not one
//! transaction: if it fails half-way, running it again with `--replace` completes it.
//! It never removes entries that the document does not name.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Alias, Domain, Mailbox, Registry, RegistryError, Snapshot, validate};

/// The `format` value.
pub const FORMAT: &str = "wasmail-registry";
/// The `version` this build writes (and the newest it reads).
pub const VERSION: u32 = 1;

/// A whole registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dump {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written by this build.
    pub version: u32,
    /// Domains, by name.
    #[serde(default)]
    pub domains: Vec<DomainEntry>,
    /// Mailboxes, by address.
    #[serde(default)]
    pub mailboxes: Vec<MailboxEntry>,
    /// Aliases and catch-alls, by source.
    #[serde(default)]
    pub aliases: Vec<AliasEntry>,
}

/// A domain in a dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEntry {
    /// Domain name.
    pub name: String,
    /// Postfix transport, or null.
    pub transport: Option<String>,
    /// Plugin chains per service.
    #[serde(default)]
    pub chains: BTreeMap<String, Vec<String>>,
    /// Per-domain settings.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// A mailbox in a dump (with its password hash: keep dumps as private as the registry).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxEntry {
    /// `local@domain`.
    pub address: String,
    /// Dovecot-style `{SCHEME}hash`, or null (cannot log in).
    pub password_hash: Option<String>,
    /// Quota in bytes, or null (unlimited).
    pub quota_bytes: Option<u64>,
}

impl std::fmt::Debug for MailboxEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxEntry")
            .field("address", &self.address)
            .field("password", &self.password_hash.as_ref().map(|_| "<set>"))
            .field("quota_bytes", &self.quota_bytes)
            .finish()
    }
}

/// An alias in a dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasEntry {
    /// `local@domain` or `@domain` (catch-all).
    pub source: String,
    /// Target addresses, in order.
    pub targets: Vec<String>,
}

impl Dump {
    /// Everything in `snap`, sorted.
    pub fn from_snapshot(snap: &Snapshot) -> Dump {
        Dump {
            format: FORMAT.to_string(),
            version: VERSION,
            domains: snap
                .domains
                .values()
                .map(|d| DomainEntry {
                    name: d.name.clone(),
                    transport: d.transport.clone(),
                    chains: d.chains.clone(),
                    settings: d.settings.clone(),
                })
                .collect(),
            mailboxes: snap
                .mailboxes
                .values()
                .map(|m| MailboxEntry {
                    address: m.address.clone(),
                    password_hash: m.password_hash.clone(),
                    quota_bytes: m.quota_bytes,
                })
                .collect(),
            aliases: snap
                .aliases
                .values()
                .map(|a| AliasEntry {
                    source: a.source.clone(),
                    targets: a.targets.clone(),
                })
                .collect(),
        }
    }

    /// The document as pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("JSON of strings");
        s.push('\n');
        s
    }

    /// Parses a document and checks its `format` and `version`.
    pub fn parse(text: &str) -> Result<Dump, String> {
        // Look at the header first, so a newer document gets a version message rather than
        // an unknown-field error.
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let h: Header =
            serde_json::from_str(text).map_err(|e| format!("not a registry dump: {e}"))?;
        if h.format.as_deref() != Some(FORMAT) {
            return Err(format!(
                "not a registry dump: \"format\" is {}, expected \"{FORMAT}\"",
                h.format
                    .map_or("missing".to_string(), |f| format!("\"{f}\""))
            ));
        }
        match h.version {
            Some(v) if (1..=VERSION).contains(&v) => {}
            Some(v) => {
                return Err(format!(
                    "registry dump version {v} is newer than this wasmail understands \
                     ({VERSION}); upgrade wasmail"
                ));
            }
            None => return Err("registry dump has no \"version\"".to_string()),
        }
        serde_json::from_str(text).map_err(|e| format!("registry dump: {e}"))
    }
}

/// What [`import`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Entries written that did not exist.
    pub added: usize,
    /// Entries that existed with other values and were overwritten (`replace`).
    pub replaced: usize,
    /// Entries that existed with the same values (nothing written).
    pub unchanged: usize,
}

/// Why an import did not happen (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Entries that already exist (without `replace`); nothing was written.
    #[error(
        "{} already in the registry: {}; nothing was imported (use --replace to overwrite \
         them)", .0.len(), list(.0)
    )]
    Exists(Vec<String>),
    /// An entry is wrong (named in the message); nothing was written.
    #[error("{entry}: {error}; nothing was imported")]
    Invalid {
        /// e.g. `mailbox a@example.com`.
        entry: String,
        /// What is wrong with it.
        error: String,
    },
    /// Writing an entry failed after `done` entries were written.
    #[error(
        "{entry}: {error} (after {done} entries were written; fix the cause and run the \
         import again with --replace to complete it)"
    )]
    Write {
        /// e.g. `mailbox a@example.com`.
        entry: String,
        /// The registry's error.
        error: RegistryError,
        /// Entries written before it.
        done: usize,
    },
    /// Reading the registry failed; nothing was written.
    #[error("reading the registry: {0}")]
    Read(RegistryError),
}

fn list(entries: &[String]) -> String {
    const SHOW: usize = 10;
    let mut s = entries
        .iter()
        .take(SHOW)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if entries.len() > SHOW {
        s.push_str(&format!(" and {} more", entries.len() - SHOW));
    }
    s
}

/// One checked entry to write.
enum Entry {
    Domain(Domain),
    Mailbox(Mailbox),
    Alias(Alias),
}

impl Entry {
    fn name(&self) -> String {
        match self {
            Entry::Domain(d) => format!("domain {}", d.name),
            Entry::Mailbox(m) => format!("mailbox {}", m.address),
            Entry::Alias(a) => format!("alias {}", a.source),
        }
    }
}

/// Writes every entry of `dump` into `reg` (see the module docs for the checks and the
/// order). Without `replace`, refuses (writing nothing) when any entry already exists.
pub fn import(reg: &dyn Registry, dump: &Dump, replace: bool) -> Result<ImportReport, ImportError> {
    let invalid = |entry: String, e: &dyn std::fmt::Display| ImportError::Invalid {
        entry,
        error: e.to_string(),
    };
    // Check and normalise every entry.
    let mut entries = Vec::new();
    let mut seen = BTreeSet::new();
    let dup = |seen: &mut BTreeSet<String>, entry: String, name: String| {
        if seen.insert(entry) {
            Ok(())
        } else {
            Err(invalid(name, &"is in the dump twice"))
        }
    };
    for d in &dump.domains {
        let entry = format!("domain {}", d.name);
        let d = validate::domain(&Domain {
            name: d.name.clone(),
            transport: d.transport.clone(),
            chains: d.chains.clone(),
            settings: d.settings.clone(),
        })
        .map_err(|e| invalid(entry, &e))?;
        dup(
            &mut seen,
            format!("domain {}", d.name),
            format!("domain {}", d.name),
        )?;
        entries.push(Entry::Domain(d));
    }
    for m in &dump.mailboxes {
        let entry = format!("mailbox {}", m.address);
        let m = validate::mailbox(&Mailbox {
            address: m.address.clone(),
            password_hash: m.password_hash.clone(),
            quota_bytes: m.quota_bytes,
        })
        .map_err(|e| invalid(entry, &e))?;
        dup(
            &mut seen,
            format!("address {}", m.address),
            format!("mailbox {}", m.address),
        )?;
        entries.push(Entry::Mailbox(m));
    }
    for a in &dump.aliases {
        let entry = format!("alias {}", a.source);
        let a = validate::alias(&Alias {
            source: a.source.clone(),
            targets: a.targets.clone(),
        })
        .map_err(|e| invalid(entry, &e))?;
        if seen.contains(&format!("address {}", a.source)) {
            return Err(invalid(
                format!("alias {}", a.source),
                &"is also a mailbox in the dump; an address is either a mailbox or an alias",
            ));
        }
        dup(
            &mut seen,
            format!("address {}", a.source),
            format!("alias {}", a.source),
        )?;
        entries.push(Entry::Alias(a));
    }

    // Check against what the registry holds.
    let snap = reg.snapshot().map_err(ImportError::Read)?;
    let mut exists = Vec::new();
    for e in &entries {
        let (domain, existing_same_kind, other_kind) = match e {
            Entry::Domain(d) => (None, snap.domain(&d.name).is_some(), None),
            Entry::Mailbox(m) => (
                Some(m.domain()),
                snap.mailbox(&m.address).is_some(),
                snap.alias(&m.address).map(|_| "an alias"),
            ),
            Entry::Alias(a) => (
                Some(a.domain()),
                snap.alias(&a.source).is_some(),
                snap.mailbox(&a.source).map(|_| "a mailbox"),
            ),
        };
        if let Some(d) = domain
            && snap.domain(d).is_none()
            && !seen.contains(&format!("domain {d}"))
        {
            return Err(invalid(
                e.name(),
                &format_args!("its domain {d} is neither in the dump nor in the registry"),
            ));
        }
        if let Some(kind) = other_kind {
            return Err(invalid(
                e.name(),
                &format_args!(
                    "the registry has {kind} at that address; remove it first (an address \
                     is either a mailbox or an alias)"
                ),
            ));
        }
        if existing_same_kind {
            exists.push(e.name());
        }
    }
    if !replace && !exists.is_empty() {
        return Err(ImportError::Exists(exists));
    }

    // Write.
    let mut report = ImportReport::default();
    for e in &entries {
        let done = report.added + report.replaced;
        let outcome = match e {
            Entry::Domain(d) => match snap.domain(&d.name) {
                None => reg.add_domain(d).map(|_| &mut report.added),
                Some(old) if old == d => Ok(&mut report.unchanged),
                Some(_) => reg.update_domain(d).map(|_| &mut report.replaced),
            },
            Entry::Mailbox(m) => match snap.mailbox(&m.address) {
                None => reg.add_mailbox(m).map(|_| &mut report.added),
                Some(old) if old == m => Ok(&mut report.unchanged),
                Some(_) => reg.update_mailbox(m).map(|_| &mut report.replaced),
            },
            Entry::Alias(a) => match snap.alias(&a.source) {
                None => reg.add_alias(a).map(|_| &mut report.added),
                Some(old) if old == a => Ok(&mut report.unchanged),
                Some(_) => reg.update_alias(a).map(|_| &mut report.replaced),
            },
        };
        match outcome {
            Ok(counter) => *counter += 1,
            Err(error) => {
                return Err(ImportError::Write {
                    entry: e.name(),
                    error,
                    done,
                });
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::sqlite::SqliteRegistry;

    const HASH: &str = "{SHA512-CRYPT}$6$tV8xPiQJQSRP3kDN$dcnGGn3qulI32hbq6BKttMlduYC3khAqC87CosPiPECMnkq36bqqhmREzkprJ2fz5o6jdMUyJfS8rftkrbmIs.";

    fn filled() -> SqliteRegistry {
        let r = SqliteRegistry::open_in_memory().unwrap();
        let mut d = Domain {
            name: "example.com".into(),
            transport: Some("lmtp:unix:private/dovecot-lmtp".into()),
            ..Domain::default()
        };
        d.chains.insert("milter".into(), vec!["spam".into()]);
        d.settings.insert("workers.max".into(), "4".into());
        r.add_domain(&d).unwrap();
        r.add_domain(&Domain {
            name: "example.net".into(),
            ..Domain::default()
        })
        .unwrap();
        r.add_mailbox(&Mailbox {
            address: "alice@example.com".into(),
            password_hash: Some(HASH.into()),
            quota_bytes: Some(1 << 30),
        })
        .unwrap();
        r.add_mailbox(&Mailbox {
            address: "bob@example.net".into(),
            ..Mailbox::default()
        })
        .unwrap();
        r.add_alias(&Alias {
            source: "@example.com".into(),
            targets: vec!["alice@example.com".into(), "x@remote.example".into()],
        })
        .unwrap();
        r
    }

    #[test]
    fn export_import_round_trip_is_identical() {
        let a = filled();
        let dump = Dump::from_snapshot(&a.snapshot().unwrap());
        let text = dump.to_json();
        assert!(text.contains("\"format\": \"wasmail-registry\""), "{text}");
        assert_eq!(Dump::parse(&text).unwrap(), dump);

        let b = SqliteRegistry::open_in_memory().unwrap();
        let report = import(&b, &Dump::parse(&text).unwrap(), false).unwrap();
        assert_eq!(report.added, 5);
        assert_eq!(
            Dump::from_snapshot(&b.snapshot().unwrap()).to_json(),
            text,
            "export → import → export"
        );

        // Again: everything exists.
        let e = import(&b, &dump, false).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("5 already in the registry: domain example.com"),
            "{msg}"
        );
        assert!(msg.contains("--replace"), "{msg}");
        // With --replace and nothing different: nothing written.
        let g = b.generation().unwrap();
        let report = import(&b, &dump, true).unwrap();
        assert_eq!(report.unchanged, 5);
        assert_eq!(b.generation().unwrap(), g);

        // A changed entry is overwritten with --replace.
        let mut changed = dump.clone();
        changed.mailboxes[0].quota_bytes = None;
        changed.aliases[0].targets = vec!["bob@example.net".into()];
        changed.domains[1].transport = Some("smtp:[relay.example]:25".into());
        let report = import(&b, &changed, true).unwrap();
        assert_eq!((report.replaced, report.unchanged), (3, 2));
        assert_eq!(Dump::from_snapshot(&b.snapshot().unwrap()), changed);
    }

    #[test]
    fn bad_documents_and_entries_are_named_and_nothing_is_written() {
        assert!(
            Dump::parse("{}")
                .unwrap_err()
                .contains("\"format\" is missing")
        );
        assert!(
            Dump::parse(r#"{"format": "wasmail-registry", "version": 2}"#)
                .unwrap_err()
                .contains("version 2 is newer")
        );
        assert!(
            Dump::parse(r#"{"format": "wasmail-registry", "version": 1, "x": 1}"#)
                .unwrap_err()
                .contains("unknown field `x`")
        );
        let empty = Dump::parse(r#"{"format": "wasmail-registry", "version": 1}"#).unwrap();
        assert!(empty.domains.is_empty());

        let r = SqliteRegistry::open_in_memory().unwrap();
        let g = r.generation().unwrap();
        let base = Dump::from_snapshot(&filled().snapshot().unwrap());
        let check = |d: &Dump, needle: &str| {
            let e = import(&r, d, false).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(e.contains("nothing was imported"), "{e}");
            assert_eq!(r.generation().unwrap(), g);
        };
        let mut d = base.clone();
        d.mailboxes[1].password_hash = Some("plaintext".into());
        check(&d, "mailbox bob@example.net: ");
        let mut d = base.clone();
        d.domains.remove(1);
        check(
            &d,
            "mailbox bob@example.net: its domain example.net is neither in the dump",
        );
        let mut d = base.clone();
        d.aliases.push(AliasEntry {
            source: "alice@example.com".into(),
            targets: vec!["x@y.example".into()],
        });
        check(&d, "alias alice@example.com: is also a mailbox");
        let mut d = base.clone();
        d.domains.push(d.domains[0].clone());
        check(&d, "domain example.com: is in the dump twice");

        // An alias in the registry where the dump has a mailbox.
        r.add_domain(&Domain {
            name: "example.com".into(),
            ..Domain::default()
        })
        .unwrap();
        r.add_alias(&Alias {
            source: "alice@example.com".into(),
            targets: vec!["x@y.example".into()],
        })
        .unwrap();
        let e = import(&r, &base, true).unwrap_err().to_string();
        assert!(
            e.contains("mailbox alice@example.com: the registry has an alias"),
            "{e}"
        );
    }
}
