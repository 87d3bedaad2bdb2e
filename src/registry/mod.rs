//! The domain registry: hosted domains, mailboxes, aliases (incl. catch-alls), per-domain
//! plugin chains and settings.
//!
//! One trait, [`Registry`], with backends: [`sqlite::SqliteRegistry`] (the embedded
//! default, one file, schema created and migrated on open) and [`etcd::EtcdRegistry`]
//! (many hosts sharing one etcd cluster). Services never query the backend on their hot
//! path: they read an immutable [`Snapshot`] held by a [`Live`] handle, which a background
//! task replaces whenever the backend's [`Registry::generation`] changes (another process,
//! e.g. `wasmail domain add`, committed a change). So changes take effect without restart:
//! within one refresh interval (polling), or at once for a backend that pushes changes
//! ([`Registry::change_notify`]: etcd's watch).
//!
//! Every backend validates and normalises its input with the functions in [`validate`]
//! (lower-case names, checked addresses, transports and chains), so values read back are
//! canonical. Passwords are stored as Dovecot-compatible hashes made by [`password`].
//! [`config::RegistrySection`] selects the backend; [`cli`] implements the `wasmail domain`,
//! `mailbox`, `alias` and `registry` commands on top of the trait; [`dump`] is the
//! versioned JSON export/import format that moves a registry between backends.
//! docs/registry.md is the operator's guide.

pub mod cli;
pub mod config;
pub mod dump;
pub mod etcd;
pub mod live;
pub mod password;
pub mod sqlite;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use live::Live;

/// Errors from the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A name or address is not acceptable (the message says which and why).
    #[error("{0}")]
    Invalid(String),
    /// The thing to create already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The thing to change or remove does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A mailbox or alias names a domain that is not in the registry.
    #[error("domain {0} is not in the registry; add it with `wasmail domain add {0}`")]
    UnknownDomain(String),
    /// Removing it would leave dangling entries (e.g. a domain that still has mailboxes).
    #[error("{0}")]
    InUse(String),
    /// The backend failed (file, lock, I/O, schema).
    #[error("registry backend: {0}")]
    Backend(String),
}

/// Result alias for registry operations.
pub type Result<T> = std::result::Result<T, RegistryError>;

/// A hosted domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Domain {
    /// Lower-case domain name (IDNA A-label form for non-ASCII domains).
    pub name: String,
    /// Postfix transport for this domain's mail (`transport_maps` answer), e.g.
    /// `lmtp:unix:/run/wasmail/lmtp.sock`; None = Postfix's default.
    pub transport: Option<String>,
    /// Plugin chains per service: key `milter`, `policy` or `hook`; value = plugin names
    /// in order, run after the service's global chain.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Free-form per-domain settings (name → value), visible to the domain's plugins
    /// and used by later services (worker limits, ...).
    pub settings: BTreeMap<String, String>,
}

impl Domain {
    /// A domain with this name and nothing else set.
    pub fn named(name: &str) -> Domain {
        Domain {
            name: name.into(),
            ..Domain::default()
        }
    }
}

/// A mailbox.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Mailbox {
    /// Lower-case `local@domain`.
    pub address: String,
    /// Password hash in Dovecot's `{SCHEME}hash` form (`{ARGON2ID}$argon2id$...`,
    /// `{SHA512-CRYPT}$6$...`); None = cannot log in.
    pub password_hash: Option<String>,
    /// Storage quota in bytes; None = unlimited.
    pub quota_bytes: Option<u64>,
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the hash (logs must not carry password material).
        f.debug_struct("Mailbox")
            .field("address", &self.address)
            .field("password", &self.password_hash.as_ref().map(|_| "<set>"))
            .field("quota_bytes", &self.quota_bytes)
            .finish()
    }
}

impl Mailbox {
    /// A mailbox at `address` without password or quota.
    pub fn at(address: &str) -> Mailbox {
        Mailbox {
            address: address.into(),
            ..Mailbox::default()
        }
    }

    /// The domain part.
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(_, d)| d)
    }
    /// The local part.
    pub fn local(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(l, _)| l)
    }
}

/// An alias: mail to `source` goes to every target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Alias {
    /// Lower-case `local@domain`, or `@domain` for the domain's catch-all.
    pub source: String,
    /// Target addresses (local or remote), in order.
    pub targets: Vec<String>,
}

impl Alias {
    /// An alias from `source` to `targets`.
    pub fn new(source: &str, targets: &[&str]) -> Alias {
        Alias {
            source: source.into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// True for a catch-all (`@domain`).
    pub fn is_catch_all(&self) -> bool {
        self.source.starts_with('@')
    }
    /// The domain part.
    pub fn domain(&self) -> &str {
        self.source.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// Everything in the registry at one generation, indexed for lookups.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The backend generation this was read at.
    pub generation: u64,
    /// Domains by name.
    pub domains: BTreeMap<String, Domain>,
    /// Mailboxes by address.
    pub mailboxes: BTreeMap<String, Mailbox>,
    /// Aliases by source (`local@domain` or `@domain`).
    pub aliases: BTreeMap<String, Alias>,
}

impl Snapshot {
    /// The domain named `name` (already lower-case).
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }
    /// The mailbox at `address` (already lower-case).
    pub fn mailbox(&self, address: &str) -> Option<&Mailbox> {
        self.mailboxes.get(address)
    }
    /// The alias whose source is `source` (already lower-case; `@domain` for catch-alls).
    pub fn alias(&self, source: &str) -> Option<&Alias> {
        self.aliases.get(source)
    }
}

/// A registry backend. Writes validate and normalise (lower-case, IDNA) their input and
/// bump the generation; reads are consistent per call.
pub trait Registry: Send + Sync + fmt::Debug {
    /// A number that changes whenever anything in the registry changed (in this process
    /// or another one). Cheap: services poll it.
    fn generation(&self) -> Result<u64>;
    /// Everything, at one generation.
    fn snapshot(&self) -> Result<Snapshot>;

    /// Adds a domain.
    fn add_domain(&self, domain: &Domain) -> Result<()>;
    /// Replaces an existing domain's transport, chains and settings.
    fn update_domain(&self, domain: &Domain) -> Result<()>;
    /// Removes a domain. Without `force`, refuses while it has mailboxes or aliases;
    /// with `force`, removes them too.
    fn remove_domain(&self, name: &str, force: bool) -> Result<()>;

    /// Adds a mailbox; its domain must exist.
    fn add_mailbox(&self, mailbox: &Mailbox) -> Result<()>;
    /// Replaces an existing mailbox's password hash and quota.
    fn update_mailbox(&self, mailbox: &Mailbox) -> Result<()>;
    /// Sets (or clears) a mailbox's password hash.
    fn set_password(&self, address: &str, hash: Option<&str>) -> Result<()>;
    /// Removes a mailbox.
    fn remove_mailbox(&self, address: &str) -> Result<()>;

    /// Adds an alias (or a catch-all `@domain`); its source domain must exist.
    fn add_alias(&self, alias: &Alias) -> Result<()>;
    /// Replaces an existing alias's targets.
    fn update_alias(&self, alias: &Alias) -> Result<()>;
    /// Removes an alias.
    fn remove_alias(&self, source: &str) -> Result<()>;

    /// Where the data lives (a file path, an endpoint), for logs and messages.
    fn location(&self) -> String {
        "registry".to_string()
    }

    /// For a backend that can push changes (etcd's watch): a [`tokio::sync::Notify`] the
    /// backend signals whenever the registry may have changed, including after a lost
    /// connection came back (changes may have been missed). [`Live`] then refreshes at
    /// once instead of waiting for its next poll; polling stays as the fallback. The first
    /// call starts the watching (so one-shot users such as the CLI never do); None (the
    /// default) = poll only.
    fn change_notify(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// Opens the backend that `section` selects (creating an SQLite file if needed; for etcd,
/// without network I/O: the first operation finds out whether etcd answers).
pub fn open(section: &config::RegistrySection) -> Result<Arc<dyn Registry>> {
    match section.backend {
        config::Backend::Sqlite => Ok(Arc::new(sqlite::SqliteRegistry::open(&section.path)?)),
        config::Backend::Etcd => Ok(Arc::new(etcd::EtcdRegistry::open(&etcd::EtcdOptions {
            endpoints: section.endpoints.clone(),
            prefix: section.prefix.clone(),
            connect_timeout: section.connect_timeout,
            request_timeout: section.request_timeout,
        })?)),
    }
}
