//! The SQLite backend: one file, WAL mode, schema created and migrated on open.
//!
//! # Schema (version 1, `PRAGMA user_version`)
//! - `meta(key, value)`: the row `generation`, incremented in the same transaction as every
//!   write, so any connection (in this process or another) sees a new number exactly when
//!   something was committed;
//! - `domains(name, transport, chains, settings)`: chains and settings as JSON objects;
//! - `mailboxes(address, domain → domains, password_hash, quota_bytes)`;
//! - `aliases(source, domain → domains, targets)`: targets as a JSON array.
//!
//! Foreign keys are on and cascade, so removing a domain with `force` removes its mailboxes
//! and aliases in the same transaction. Writes take the write lock up front
//! (`BEGIN IMMEDIATE`) and wait up to [`BUSY_TIMEOUT`] for another writer; reads never
//! block writers (WAL).
//!
//! Migrations are an ordered list of SQL steps (`MIGRATIONS`); opening a file at version
//! N runs steps N+1.. in one transaction. To change the schema, append a step.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{Alias, Domain, Mailbox, Registry, RegistryError, Result, Snapshot, validate};

/// How long a write waits for another connection's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations: step `i` takes the file from `user_version` i to i+1.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE meta (
         key   TEXT PRIMARY KEY NOT NULL,
         value INTEGER NOT NULL
     ) STRICT;
     INSERT INTO meta (key, value) VALUES ('generation', 0);
     CREATE TABLE domains (
         name      TEXT PRIMARY KEY NOT NULL,
         transport TEXT,
         chains    TEXT NOT NULL DEFAULT '{}',
         settings  TEXT NOT NULL DEFAULT '{}'
     ) STRICT;
     CREATE TABLE mailboxes (
         address       TEXT PRIMARY KEY NOT NULL,
         domain        TEXT NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
         password_hash TEXT,
         quota_bytes   INTEGER CHECK (quota_bytes IS NULL OR quota_bytes > 0)
     ) STRICT;
     CREATE INDEX mailboxes_domain ON mailboxes (domain);
     CREATE TABLE aliases (
         source  TEXT PRIMARY KEY NOT NULL,
         domain  TEXT NOT NULL REFERENCES domains (name) ON DELETE CASCADE,
         targets TEXT NOT NULL
     ) STRICT;
     CREATE INDEX aliases_domain ON aliases (domain);",
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// A registry in one SQLite file (or in memory, for tests).
pub struct SqliteRegistry {
    conn: Mutex<Connection>,
    /// The file; None for an in-memory registry.
    path: Option<PathBuf>,
}

impl fmt::Debug for SqliteRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteRegistry")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteRegistry {
    /// Opens the registry file at `path`, creating it (mode 0600) and its parent directory
    /// (mode 0700, when missing) if needed, and creating or migrating the schema.
    pub fn open(path: &Path) -> Result<SqliteRegistry> {
        let at = |op: &str, e: &dyn fmt::Display| {
            RegistryError::Backend(format!("{}: {op}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    RegistryError::Backend(format!(
                        "cannot create directory {}: {e}",
                        dir.display()
                    ))
                })?;
        }
        if !path.exists() {
            // Create it ourselves so the mode is 0600 (SQLite would use 0644 minus umask);
            // SQLite gives the -wal and -shm files the same mode.
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(at("cannot create the file", &e)),
            }
        }
        let conn = Connection::open(path).map_err(|e| at("cannot open", &e))?;
        let reg = SqliteRegistry {
            conn: Mutex::new(conn),
            path: Some(path.to_path_buf()),
        };
        reg.init()?;
        Ok(reg)
    }

    /// An empty registry in memory (for tests and tools); gone when dropped.
    pub fn open_in_memory() -> Result<SqliteRegistry> {
        let conn = Connection::open_in_memory()
            .map_err(|e| RegistryError::Backend(format!(":memory:: cannot open: {e}")))?;
        let reg = SqliteRegistry {
            conn: Mutex::new(conn),
            path: None,
        };
        reg.init()?;
        Ok(reg)
    }

    /// The file, or None for an in-memory registry.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version of the open file (equals [`SCHEMA_VERSION`] after open).
    pub fn schema_version(&self) -> Result<usize> {
        let conn = self.lock();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err("reading the schema version", e))?;
        Ok(v as usize)
    }

    fn init(&self) -> Result<()> {
        let mut conn = self.lock();
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.err("setting busy_timeout", e))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(|e| self.err("enabling foreign keys", e))?;
        if self.path.is_some() {
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(|e| self.err("enabling WAL mode", e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(
                    self.backend(format!("cannot enable WAL mode (journal_mode is {mode})"))
                );
            }
        }
        migrate(&mut conn).map_err(|e| match e {
            MigrateError::Sql(e) => self.err("creating or migrating the schema", e),
            MigrateError::TooNew(v) => self.backend(format!(
                "schema version {v} is newer than this wasmail understands ({SCHEMA_VERSION}); \
                 upgrade wasmail"
            )),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open (Transaction rolls
        // back on drop), so a poisoned connection is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn location_text(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| ":memory:".to_string(), |p| p.display().to_string())
    }

    fn backend(&self, msg: String) -> RegistryError {
        RegistryError::Backend(format!("{}: {msg}", self.location_text()))
    }

    fn err(&self, op: &str, e: rusqlite::Error) -> RegistryError {
        self.backend(format!("{op}: {e}"))
    }

    /// Runs `f` in a write transaction that also bumps the generation; commits when `f`
    /// succeeds.
    fn write<T>(&self, op: &str, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(op, e))?;
        let out = f(&Tx { tx: &tx, reg: self })?;
        tx.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'generation'",
            [],
        )
        .map_err(|e| self.err(op, e))?;
        tx.commit().map_err(|e| self.err(op, e))?;
        Ok(out)
    }
}

/// A write transaction plus error context.
struct Tx<'a> {
    tx: &'a Transaction<'a>,
    reg: &'a SqliteRegistry,
}

impl Tx<'_> {
    fn err<'s>(&'s self, op: &'s str) -> impl Fn(rusqlite::Error) -> RegistryError + 's {
        move |e| self.reg.err(op, e)
    }

    fn exists(&self, sql: &str, key: &str) -> Result<bool> {
        self.tx
            .query_row(sql, [key], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
            .map_err(self.err("reading"))
    }

    fn domain_exists(&self, name: &str) -> Result<bool> {
        self.exists("SELECT 1 FROM domains WHERE name = ?1", name)
    }

    fn require_domain(&self, name: &str) -> Result<()> {
        if self.domain_exists(name)? {
            Ok(())
        } else {
            Err(RegistryError::UnknownDomain(name.to_string()))
        }
    }

    fn mailbox_exists(&self, address: &str) -> Result<bool> {
        self.exists("SELECT 1 FROM mailboxes WHERE address = ?1", address)
    }

    fn alias_exists(&self, source: &str) -> Result<bool> {
        self.exists("SELECT 1 FROM aliases WHERE source = ?1", source)
    }

    fn count(&self, table: &str, domain: &str) -> Result<u64> {
        let sql = format!("SELECT count(*) FROM {table} WHERE domain = ?1");
        self.tx
            .query_row(&sql, [domain], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.err("counting"))
    }
}

enum MigrateError {
    Sql(rusqlite::Error),
    TooNew(i64),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sql(e)
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction (a concurrent opener waits,
/// then finds nothing to do).
fn migrate(conn: &mut Connection) -> std::result::Result<(), MigrateError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION as i64 {
        return Err(MigrateError::TooNew(version));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Maps of strings and vectors of strings always serialise.
    serde_json::to_string(v).expect("JSON of strings")
}

impl Registry for SqliteRegistry {
    fn generation(&self) -> Result<u64> {
        let conn = self.lock();
        conn.prepare_cached("SELECT value FROM meta WHERE key = 'generation'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map(|g| g as u64)
            .map_err(|e| self.err("reading the generation", e))
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let mut conn = self.lock();
        let op = "reading the registry";
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(|e| self.err(op, e))?;
        let e = |e| self.err(op, e);
        let generation: i64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get(0)
            })
            .map_err(e)?;
        let mut snap = Snapshot {
            generation: generation as u64,
            ..Snapshot::default()
        };
        let corrupt = |what: &str, key: &str, err: serde_json::Error| {
            self.backend(format!("{what} of {key} is not valid JSON: {err}"))
        };

        let mut stmt = tx
            .prepare("SELECT name, transport, chains, settings FROM domains")
            .map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let name: String = r.get(0).map_err(e)?;
            let chains: String = r.get(2).map_err(e)?;
            let settings: String = r.get(3).map_err(e)?;
            let d = Domain {
                transport: r.get(1).map_err(e)?,
                chains: serde_json::from_str(&chains)
                    .map_err(|err| corrupt("the chains", &name, err))?,
                settings: serde_json::from_str::<BTreeMap<String, String>>(&settings)
                    .map_err(|err| corrupt("the settings", &name, err))?,
                name: name.clone(),
            };
            snap.domains.insert(name, d);
        }
        drop(rows);
        drop(stmt);

        let mut stmt = tx
            .prepare("SELECT address, password_hash, quota_bytes FROM mailboxes")
            .map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let address: String = r.get(0).map_err(e)?;
            let quota: Option<i64> = r.get(2).map_err(e)?;
            let m = Mailbox {
                password_hash: r.get(1).map_err(e)?,
                quota_bytes: quota.map(|q| q as u64),
                address: address.clone(),
            };
            snap.mailboxes.insert(address, m);
        }
        drop(rows);
        drop(stmt);

        let mut stmt = tx
            .prepare("SELECT source, targets FROM aliases")
            .map_err(e)?;
        let mut rows = stmt.query([]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let source: String = r.get(0).map_err(e)?;
            let targets: String = r.get(1).map_err(e)?;
            let a = Alias {
                targets: serde_json::from_str(&targets)
                    .map_err(|err| corrupt("the targets", &source, err))?,
                source: source.clone(),
            };
            snap.aliases.insert(source, a);
        }
        drop(rows);
        drop(stmt);
        tx.finish().map_err(e)?;
        Ok(snap)
    }

    fn add_domain(&self, domain: &Domain) -> Result<()> {
        let d = validate::domain(domain)?;
        self.write("adding a domain", |tx| {
            if tx.domain_exists(&d.name)? {
                return Err(RegistryError::Exists(format!("domain {}", d.name)));
            }
            tx.tx
                .execute(
                    "INSERT INTO domains (name, transport, chains, settings)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        d.name,
                        d.transport,
                        to_json(&d.chains),
                        to_json(&d.settings)
                    ],
                )
                .map_err(tx.err("adding a domain"))?;
            Ok(())
        })
    }

    fn update_domain(&self, domain: &Domain) -> Result<()> {
        let d = validate::domain(domain)?;
        self.write("updating a domain", |tx| {
            let n = tx
                .tx
                .execute(
                    "UPDATE domains SET transport = ?2, chains = ?3, settings = ?4
                     WHERE name = ?1",
                    params![
                        d.name,
                        d.transport,
                        to_json(&d.chains),
                        to_json(&d.settings)
                    ],
                )
                .map_err(tx.err("updating a domain"))?;
            if n == 0 {
                return Err(RegistryError::NotFound(format!("domain {}", d.name)));
            }
            Ok(())
        })
    }

    fn remove_domain(&self, name: &str, force: bool) -> Result<()> {
        let name = validate::domain_name(name)?;
        self.write("removing a domain", |tx| {
            if !tx.domain_exists(&name)? {
                return Err(RegistryError::NotFound(format!("domain {name}")));
            }
            if !force {
                let mailboxes = tx.count("mailboxes", &name)?;
                let aliases = tx.count("aliases", &name)?;
                if mailboxes + aliases > 0 {
                    return Err(RegistryError::InUse(format!(
                        "domain {name} still has {mailboxes} mailbox(es) and {aliases} \
                         alias(es); remove them first, or remove everything with \
                         `wasmail domain rm {name} --force`"
                    )));
                }
            }
            // Mailboxes and aliases go with it (ON DELETE CASCADE).
            tx.tx
                .execute("DELETE FROM domains WHERE name = ?1", [&name])
                .map_err(tx.err("removing a domain"))?;
            Ok(())
        })
    }

    fn add_mailbox(&self, mailbox: &Mailbox) -> Result<()> {
        let m = validate::mailbox(mailbox)?;
        self.write("adding a mailbox", |tx| {
            tx.require_domain(m.domain())?;
            if tx.mailbox_exists(&m.address)? {
                return Err(RegistryError::Exists(format!("mailbox {}", m.address)));
            }
            if tx.alias_exists(&m.address)? {
                return Err(RegistryError::Exists(format!(
                    "mailbox {0} cannot be added: an address is either a mailbox or an \
                     alias, and the alias {0}",
                    m.address
                )));
            }
            tx.tx
                .execute(
                    "INSERT INTO mailboxes (address, domain, password_hash, quota_bytes)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        m.address,
                        m.domain(),
                        m.password_hash,
                        m.quota_bytes.map(|q| q as i64)
                    ],
                )
                .map_err(tx.err("adding a mailbox"))?;
            Ok(())
        })
    }

    fn update_mailbox(&self, mailbox: &Mailbox) -> Result<()> {
        let m = validate::mailbox(mailbox)?;
        self.write("updating a mailbox", |tx| {
            let n = tx
                .tx
                .execute(
                    "UPDATE mailboxes SET password_hash = ?2, quota_bytes = ?3
                     WHERE address = ?1",
                    params![m.address, m.password_hash, m.quota_bytes.map(|q| q as i64)],
                )
                .map_err(tx.err("updating a mailbox"))?;
            if n == 0 {
                return Err(RegistryError::NotFound(format!("mailbox {}", m.address)));
            }
            Ok(())
        })
    }

    fn set_password(&self, address: &str, hash: Option<&str>) -> Result<()> {
        let address = validate::mailbox_address(address)?;
        let hash = hash.map(validate::password_hash).transpose()?;
        self.write("setting a password", |tx| {
            let n = tx
                .tx
                .execute(
                    "UPDATE mailboxes SET password_hash = ?2 WHERE address = ?1",
                    params![address, hash],
                )
                .map_err(tx.err("setting a password"))?;
            if n == 0 {
                return Err(RegistryError::NotFound(format!("mailbox {address}")));
            }
            Ok(())
        })
    }

    fn remove_mailbox(&self, address: &str) -> Result<()> {
        let address = validate::mailbox_address(address)?;
        self.write("removing a mailbox", |tx| {
            let n = tx
                .tx
                .execute("DELETE FROM mailboxes WHERE address = ?1", [&address])
                .map_err(tx.err("removing a mailbox"))?;
            if n == 0 {
                return Err(RegistryError::NotFound(format!("mailbox {address}")));
            }
            Ok(())
        })
    }

    fn add_alias(&self, alias: &Alias) -> Result<()> {
        let a = validate::alias(alias)?;
        self.write("adding an alias", |tx| {
            tx.require_domain(a.domain())?;
            if tx.alias_exists(&a.source)? {
                return Err(RegistryError::Exists(format!("alias {}", a.source)));
            }
            if tx.mailbox_exists(&a.source)? {
                return Err(RegistryError::Exists(format!(
                    "alias {0} cannot be added: an address is either a mailbox or an alias, \
                     and the mailbox {0}",
                    a.source
                )));
            }
            tx.tx
                .execute(
                    "INSERT INTO aliases (source, domain, targets) VALUES (?1, ?2, ?3)",
                    params![a.source, a.domain(), to_json(&a.targets)],
                )
                .map_err(tx.err("adding an alias"))?;
            Ok(())
        })
    }

    fn update_alias(&self, alias: &Alias) -> Result<()> {
        let a = validate::alias(alias)?;
        self.write("updating an alias", |tx| {
            let n = tx
                .tx
                .execute(
                    "UPDATE aliases SET targets = ?2 WHERE source = ?1",
                    params![a.source, to_json(&a.targets)],
                )
                .map_err(tx.err("updating an alias"))?;
            if n == 0 {
                return Err(RegistryError::NotFound(format!("alias {}", a.source)));
            }
            Ok(())
        })
    }

    fn remove_alias(&self, source: &str) -> Result<()> {
        let source = validate::alias_source(source)?;
        self.write("removing an alias", |tx| {
            let n = tx
                .tx
                .execute("DELETE FROM aliases WHERE source = ?1", [&source])
                .map_err(tx.err("removing an alias"))?;
            if n == 0 {
                return Err(RegistryError::NotFound(format!("alias {source}")));
            }
            Ok(())
        })
    }

    fn location(&self) -> String {
        self.location_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> SqliteRegistry {
        SqliteRegistry::open_in_memory().unwrap()
    }

    #[test]
    fn snapshot_holds_what_was_written_normalised() {
        let r = mem();
        let mut d = Domain::named("Example.COM");
        d.transport = Some("lmtp:unix:/run/dovecot/lmtp".into());
        d.chains
            .insert("milter".into(), vec!["spam".into(), "dkim".into()]);
        d.settings.insert("workers.max".into(), "4".into());
        r.add_domain(&d).unwrap();
        r.add_mailbox(&Mailbox {
            address: "Alice@Example.com".into(),
            password_hash: Some(crate::registry::password::hash_password("pw").unwrap()),
            quota_bytes: Some(1 << 30),
        })
        .unwrap();
        r.add_alias(&Alias::new(
            "Postmaster@example.com",
            &["alice@EXAMPLE.com"],
        ))
        .unwrap();
        r.add_alias(&Alias::new(
            "@example.com",
            &["Bob@Remote.org", "alice@example.com"],
        ))
        .unwrap();

        let s = r.snapshot().unwrap();
        assert_eq!(s.generation, r.generation().unwrap());
        let d = s.domain("example.com").unwrap();
        assert_eq!(d.transport.as_deref(), Some("lmtp:unix:/run/dovecot/lmtp"));
        assert_eq!(d.chains["milter"], ["spam", "dkim"]);
        assert_eq!(d.settings["workers.max"], "4");
        let m = s.mailbox("alice@example.com").unwrap();
        assert_eq!(m.quota_bytes, Some(1 << 30));
        assert!(crate::registry::password::verify_password(
            m.password_hash.as_deref().unwrap(),
            "pw"
        ));
        assert_eq!(
            s.alias("postmaster@example.com").unwrap().targets,
            ["alice@example.com"]
        );
        let c = s.alias("@example.com").unwrap();
        assert!(c.is_catch_all());
        assert_eq!(c.targets, ["Bob@remote.org", "alice@example.com"]);
        // The Debug form never shows the hash.
        assert!(!format!("{s:?}").contains("argon2"));
    }

    #[test]
    fn every_write_bumps_the_generation() {
        let r = mem();
        let g0 = r.generation().unwrap();
        r.add_domain(&Domain::named("a.example")).unwrap();
        let g1 = r.generation().unwrap();
        assert!(g1 > g0);
        // A failed write changes nothing.
        assert!(r.add_domain(&Domain::named("a.example")).is_err());
        assert_eq!(r.generation().unwrap(), g1);
        r.update_domain(&Domain::named("a.example")).unwrap();
        assert!(r.generation().unwrap() > g1);
    }

    #[test]
    fn exists_and_not_found() {
        let r = mem();
        r.add_domain(&Domain::named("x.example")).unwrap();
        let e = r.add_domain(&Domain::named("X.example")).unwrap_err();
        assert!(matches!(e, RegistryError::Exists(_)), "{e}");
        assert_eq!(e.to_string(), "domain x.example already exists");

        r.add_mailbox(&Mailbox::at("a@x.example")).unwrap();
        assert!(matches!(
            r.add_mailbox(&Mailbox::at("A@x.example")),
            Err(RegistryError::Exists(_))
        ));
        r.add_alias(&Alias::new("b@x.example", &["a@x.example"]))
            .unwrap();
        assert!(matches!(
            r.add_alias(&Alias::new("b@x.example", &["a@x.example"])),
            Err(RegistryError::Exists(_))
        ));

        for e in [
            r.update_domain(&Domain::named("y.example")).unwrap_err(),
            r.remove_domain("y.example", false).unwrap_err(),
            r.remove_mailbox("nobody@x.example").unwrap_err(),
            r.set_password("nobody@x.example", None).unwrap_err(),
            r.remove_alias("nobody@x.example").unwrap_err(),
            r.remove_alias("@x.example").unwrap_err(),
        ] {
            assert!(matches!(e, RegistryError::NotFound(_)), "{e}");
            assert!(e.to_string().ends_with("does not exist"), "{e}");
        }
    }

    #[test]
    fn mailbox_and_alias_cannot_share_an_address() {
        let r = mem();
        r.add_domain(&Domain::named("x.example")).unwrap();
        r.add_mailbox(&Mailbox::at("a@x.example")).unwrap();
        let e = r
            .add_alias(&Alias::new("a@x.example", &["b@y.example"]))
            .unwrap_err();
        assert!(matches!(e, RegistryError::Exists(_)), "{e}");
        assert!(
            e.to_string().contains("either a mailbox or an alias"),
            "{e}"
        );
        r.add_alias(&Alias::new("b@x.example", &["a@x.example"]))
            .unwrap();
        let e = r.add_mailbox(&Mailbox::at("B@x.example")).unwrap_err();
        assert!(matches!(e, RegistryError::Exists(_)), "{e}");
        assert!(e.to_string().contains("the alias b@x.example"), "{e}");
    }

    #[test]
    fn unknown_domain_is_explained() {
        let r = mem();
        let e = r.add_mailbox(&Mailbox::at("a@example.com")).unwrap_err();
        assert!(matches!(e, RegistryError::UnknownDomain(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "domain example.com is not in the registry; add it with \
             `wasmail domain add example.com`"
        );
        let e = r
            .add_alias(&Alias::new("@example.com", &["a@b.example"]))
            .unwrap_err();
        assert!(matches!(e, RegistryError::UnknownDomain(_)), "{e}");
    }

    #[test]
    fn invalid_input_is_rejected_before_writing() {
        let r = mem();
        let g = r.generation().unwrap();
        let mut d = Domain::named("x.example");
        d.chains.insert("smtpd".into(), vec!["p".into()]);
        assert!(matches!(r.add_domain(&d), Err(RegistryError::Invalid(_))));
        d.chains.clear();
        d.transport = Some("lmtp".into());
        assert!(matches!(r.add_domain(&d), Err(RegistryError::Invalid(_))));
        assert!(matches!(
            r.add_domain(&Domain::named("bad_name.example")),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            r.add_mailbox(&Mailbox::at("no-at-sign")),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            r.set_password("a@x.example", Some("plaintext")),
            Err(RegistryError::Invalid(_))
        ));
        assert_eq!(r.generation().unwrap(), g);
    }

    #[test]
    fn remove_domain_refuses_while_in_use_and_cascades_with_force() {
        let r = mem();
        r.add_domain(&Domain::named("x.example")).unwrap();
        r.add_domain(&Domain::named("y.example")).unwrap();
        r.add_mailbox(&Mailbox::at("a@x.example")).unwrap();
        r.add_alias(&Alias::new("@x.example", &["a@x.example"]))
            .unwrap();
        r.add_mailbox(&Mailbox::at("a@y.example")).unwrap();

        let e = r.remove_domain("x.example", false).unwrap_err();
        assert!(matches!(e, RegistryError::InUse(_)), "{e}");
        assert!(
            e.to_string().contains("1 mailbox(es) and 1 alias(es)"),
            "{e}"
        );
        assert!(e.to_string().contains("--force"), "{e}");

        r.remove_domain("X.EXAMPLE", true).unwrap();
        let s = r.snapshot().unwrap();
        assert!(s.domain("x.example").is_none());
        assert!(s.mailbox("a@x.example").is_none());
        assert!(s.alias("@x.example").is_none());
        // Other domains are untouched.
        assert!(s.mailbox("a@y.example").is_some());

        // An empty domain goes without force.
        r.remove_mailbox("a@y.example").unwrap();
        r.remove_domain("y.example", false).unwrap();
        assert!(r.snapshot().unwrap().domains.is_empty());
    }

    #[test]
    fn set_password_sets_and_clears() {
        let r = mem();
        r.add_domain(&Domain::named("x.example")).unwrap();
        r.add_mailbox(&Mailbox::at("a@x.example")).unwrap();
        let h = "{SHA512-CRYPT}$6$tV8xPiQJQSRP3kDN$dcnGGn3qulI32hbq6BKttMlduYC3khAqC87CosPiPECMnkq36bqqhmREzkprJ2fz5o6jdMUyJfS8rftkrbmIs.";
        r.set_password("A@x.example", Some(h)).unwrap();
        let s = r.snapshot().unwrap();
        assert_eq!(
            s.mailbox("a@x.example").unwrap().password_hash.as_deref(),
            Some(h)
        );
        r.set_password("a@x.example", None).unwrap();
        let s = r.snapshot().unwrap();
        assert_eq!(s.mailbox("a@x.example").unwrap().password_hash, None);
    }

    #[test]
    fn file_is_created_private_and_migrated() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/sub/reg.db");
        let r = SqliteRegistry::open(&path).unwrap();
        assert_eq!(r.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(r.location(), path.display().to_string());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("new/sub")), 0o700);
        r.add_domain(&Domain::named("x.example")).unwrap();
        drop(r);
        // Reopening keeps the data and runs no migration twice.
        let r = SqliteRegistry::open(&path).unwrap();
        assert!(r.snapshot().unwrap().domain("x.example").is_some());
        let conn = r.lock();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg.db");
        drop(SqliteRegistry::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = SqliteRegistry::open(&path).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("schema version 99"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn backend_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-db");
        std::fs::write(&path, b"this is not an SQLite file, not even close......").unwrap();
        let e = SqliteRegistry::open(&path).unwrap_err();
        assert!(matches!(e, RegistryError::Backend(_)), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn a_second_connection_sees_the_first_ones_writes() {
        // Two handles on one file behave like two processes: separate connections, no
        // shared memory but the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg.db");
        let serve = SqliteRegistry::open(&path).unwrap();
        let admin = SqliteRegistry::open(&path).unwrap();
        let before = serve.snapshot().unwrap();
        assert_eq!(serve.generation().unwrap(), before.generation);

        admin.add_domain(&Domain::named("x.example")).unwrap();
        let g = serve.generation().unwrap();
        assert_ne!(g, before.generation);
        assert_eq!(g, admin.generation().unwrap());
        let after = serve.snapshot().unwrap();
        assert_eq!(after.generation, g);
        assert!(after.domain("x.example").is_some());

        admin.add_mailbox(&Mailbox::at("a@x.example")).unwrap();
        assert!(serve.generation().unwrap() > g);
    }
}
