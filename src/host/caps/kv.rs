//! Capability `kv`: a persistent key/value store with TTLs and a byte quota per namespace.
//!
//! Namespaces are opaque strings; the glue uses `"<domain or *>/<plugin name>"`, so every
//! plugin of every tenant gets its own space. The quota of a namespace is the sum of the
//! byte lengths of its keys and values; expired entries do not count. Expired entries are
//! removed lazily (when they are read or when their namespace is written) and, every few
//! hundred writes, for the whole store.
//!
//! Counters written by [`KvStore::increment`] are stored as decimal text, so a plugin can
//! read them with [`KvStore::get`] as well.
//!
//! [`SqliteKv`] keeps the data in SQLite (a file in WAL mode, or memory when no path is
//! configured). One connection behind a mutex serves all callers; the calls are short.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Why a key/value operation failed. Mirrors the WIT variant `kv-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The write would take the namespace over its byte quota.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// The key or the value is longer than the configured limit.
    #[error("key or value too large")]
    TooLarge,
    /// The store failed, or the operation does not make sense for the stored value
    /// (for example incrementing a value that is not a counter). The text says why.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for KvError {
    fn from(err: rusqlite::Error) -> Self {
        KvError::Unavailable(err.to_string())
    }
}

/// Settings of the key/value store (`[kv]` in the configuration).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// SQLite database file. `None` keeps the data in memory (lost on restart).
    pub path: Option<PathBuf>,
    /// Maximum bytes (keys plus values) per namespace. Default 1 MiB.
    pub quota_bytes: u64,
    /// Maximum key length in bytes. Default 256.
    pub max_key_bytes: usize,
    /// Maximum value length in bytes. Default 64 KiB.
    pub max_value_bytes: usize,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            path: None,
            quota_bytes: 1024 * 1024,
            max_key_bytes: 256,
            max_value_bytes: 64 * 1024,
        }
    }
}

/// A key/value store shared by all plugins; every call names the namespace it works in.
///
/// TTLs are whole seconds: an entry written with a TTL of `n` seconds at time `t` is gone
/// from time `t + n` on (a TTL of zero stores an entry that is already expired).
pub trait KvStore: Send + Sync + fmt::Debug {
    /// The value under `key`, or `None` when it is missing or expired.
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvError>;

    /// Stores `value` under `key`, replacing any previous value, expiring after `ttl`
    /// (`None` = never).
    ///
    /// Fails with [`KvError::TooLarge`] when the key or value exceeds its limit and with
    /// [`KvError::QuotaExceeded`] when the namespace would exceed its quota.
    fn set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError>;

    /// Adds `delta` to the signed 64-bit counter under `key` (a missing key counts as 0)
    /// and returns the new value.
    ///
    /// `ttl` applies only when the key is created; incrementing an existing counter keeps
    /// its expiry time. An existing value that is not a decimal integer gives
    /// `KvError::Unavailable("not a counter")`, and a result that does not fit in an `i64`
    /// gives `KvError::Unavailable("counter overflow")`; the stored value is unchanged in
    /// both cases.
    fn increment(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError>;

    /// Removes `key`; `true` when it existed (and had not expired).
    fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError>;
}

/// A clock returning seconds since the Unix epoch. Injectable so tests need not sleep.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// How many writes pass between two store-wide purges of expired entries.
const PURGE_EVERY: u64 = 256;

/// [`KvStore`] backed by SQLite.
pub struct SqliteKv {
    conn: Mutex<Connection>,
    config: KvConfig,
    clock: Clock,
    writes: AtomicU64,
}

impl fmt::Debug for SqliteKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteKv")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    ns      TEXT    NOT NULL,
    key     TEXT    NOT NULL,
    value   BLOB    NOT NULL,
    size    INTEGER NOT NULL,
    expires INTEGER,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
";

impl SqliteKv {
    /// Opens (or creates) the store described by `config`: creates the parent directory
    /// of the database file, the schema, and switches the file to WAL mode. Uses the
    /// system clock.
    pub fn open(config: &KvConfig) -> anyhow::Result<Self> {
        let conn = match &config.path {
            None => Connection::open_in_memory().context("opening in-memory kv store")?,
            Some(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).with_context(|| {
                        format!("creating directory {} for the kv store", parent.display())
                    })?;
                }
                let conn = Connection::open(path)
                    .with_context(|| format!("opening kv store {}", path.display()))?;
                conn.pragma_update(None, "journal_mode", "WAL")
                    .with_context(|| format!("enabling WAL on {}", path.display()))?;
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                conn
            }
        };
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)
            .context("creating the kv store schema")?;
        Ok(SqliteKv {
            conn: Mutex::new(conn),
            config: config.clone(),
            clock: system_clock(),
            writes: AtomicU64::new(0),
        })
    }

    /// Replaces the clock (seconds since the Unix epoch); for tests.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Removes every expired entry of every namespace; returns how many were removed.
    pub fn purge_expired(&self) -> Result<usize, KvError> {
        let now = self.now();
        let conn = self.lock()?;
        Ok(conn.execute(
            "DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?1",
            params![now],
        )?)
    }

    /// Bytes (keys plus values) the live entries of `ns` use.
    pub fn usage(&self, ns: &str) -> Result<u64, KvError> {
        let now = self.now();
        let conn = self.lock()?;
        usage(&conn, ns, now)
    }

    fn now(&self) -> i64 {
        i64::try_from((self.clock)()).unwrap_or(i64::MAX)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, KvError> {
        self.conn
            .lock()
            .map_err(|_| KvError::Unavailable("kv store lock poisoned".into()))
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.len() > self.config.max_key_bytes {
            return Err(KvError::TooLarge);
        }
        Ok(())
    }

    fn expiry(&self, now: i64, ttl: Option<Duration>) -> Option<i64> {
        ttl.map(|ttl| now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)))
    }

    /// Counts a write and, every [`PURGE_EVERY`] writes, purges the whole store.
    fn after_write(&self, conn: &Connection, now: i64) {
        if self.writes.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == PURGE_EVERY - 1
            && let Err(err) = conn.execute(
                "DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ?1",
                params![now],
            )
        {
            tracing::warn!(error = %err, "purging expired kv entries failed");
        }
    }

    /// Writes `key` in a transaction that already purged `ns`, checking the quota.
    fn put(
        &self,
        tx: &rusqlite::Transaction<'_>,
        ns: &str,
        key: &str,
        value: &[u8],
        expires: Option<i64>,
        now: i64,
    ) -> Result<(), KvError> {
        let size = (key.len() + value.len()) as u64;
        let old: u64 = tx
            .query_row(
                "SELECT size FROM kv WHERE ns = ?1 AND key = ?2",
                params![ns, key],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .map_or(0, |s| s.max(0) as u64);
        let used = usage(tx, ns, now)?;
        if used.saturating_sub(old).saturating_add(size) > self.config.quota_bytes {
            return Err(KvError::QuotaExceeded);
        }
        tx.execute(
            "INSERT OR REPLACE INTO kv (ns, key, value, size, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![ns, key, value, size as i64, expires],
        )?;
        Ok(())
    }
}

fn usage(conn: &Connection, ns: &str, now: i64) -> Result<u64, KvError> {
    let used: i64 = conn.query_row(
        "SELECT COALESCE(SUM(size), 0) FROM kv WHERE ns = ?1 AND (expires IS NULL OR expires > ?2)",
        params![ns, now],
        |row| row.get(0),
    )?;
    Ok(used.max(0) as u64)
}

fn purge_ns(conn: &Connection, ns: &str, now: i64) -> Result<(), KvError> {
    conn.execute(
        "DELETE FROM kv WHERE ns = ?1 AND expires IS NOT NULL AND expires <= ?2",
        params![ns, now],
    )?;
    Ok(())
}

impl KvStore for SqliteKv {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        if key.len() > self.config.max_key_bytes {
            return Ok(None);
        }
        let now = self.now();
        let conn = self.lock()?;
        let row: Option<(Vec<u8>, Option<i64>)> = conn
            .query_row(
                "SELECT value, expires FROM kv WHERE ns = ?1 AND key = ?2",
                params![ns, key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        match row {
            Some((_, Some(expires))) if expires <= now => {
                conn.execute(
                    "DELETE FROM kv WHERE ns = ?1 AND key = ?2 AND expires <= ?3",
                    params![ns, key, now],
                )?;
                Ok(None)
            }
            Some((value, _)) => Ok(Some(value)),
            None => Ok(None),
        }
    }

    fn set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError> {
        self.check_key(key)?;
        if value.len() > self.config.max_value_bytes {
            return Err(KvError::TooLarge);
        }
        let now = self.now();
        let expires = self.expiry(now, ttl);
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        purge_ns(&tx, ns, now)?;
        self.put(&tx, ns, key, value, expires, now)?;
        tx.commit()?;
        self.after_write(&conn, now);
        Ok(())
    }

    fn increment(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        self.check_key(key)?;
        let now = self.now();
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        purge_ns(&tx, ns, now)?;
        let existing: Option<(Vec<u8>, Option<i64>)> = tx
            .query_row(
                "SELECT value, expires FROM kv WHERE ns = ?1 AND key = ?2",
                params![ns, key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        let (current, expires) = match existing {
            Some((value, expires)) => {
                let current = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .ok_or_else(|| KvError::Unavailable("not a counter".into()))?;
                (current, expires)
            }
            None => (0, self.expiry(now, ttl)),
        };
        let new = current
            .checked_add(delta)
            .ok_or_else(|| KvError::Unavailable("counter overflow".into()))?;
        self.put(&tx, ns, key, new.to_string().as_bytes(), expires, now)?;
        tx.commit()?;
        self.after_write(&conn, now);
        Ok(new)
    }

    fn delete(&self, ns: &str, key: &str) -> Result<bool, KvError> {
        if key.len() > self.config.max_key_bytes {
            return Ok(false);
        }
        let now = self.now();
        let conn = self.lock()?;
        let live = conn.execute(
            "DELETE FROM kv WHERE ns = ?1 AND key = ?2 AND (expires IS NULL OR expires > ?3)",
            params![ns, key, now],
        )?;
        // An expired entry may still be on disk; drop it too, but it did not "exist".
        conn.execute(
            "DELETE FROM kv WHERE ns = ?1 AND key = ?2",
            params![ns, key],
        )?;
        Ok(live > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A store with a manual clock starting at 1_000_000.
    fn store(config: KvConfig) -> (SqliteKv, Arc<AtomicU64>) {
        let time = Arc::new(AtomicU64::new(1_000_000));
        let t = time.clone();
        let kv = SqliteKv::open(&config)
            .unwrap()
            .with_clock(Arc::new(move || t.load(Ordering::SeqCst)));
        (kv, time)
    }

    const NS: &str = "example.com/test";

    #[test]
    fn get_set_delete() {
        let (kv, _) = store(KvConfig::default());
        assert_eq!(kv.get(NS, "a").unwrap(), None);
        kv.set(NS, "a", b"one", None).unwrap();
        assert_eq!(kv.get(NS, "a").unwrap(), Some(b"one".to_vec()));
        kv.set(NS, "a", b"two", None).unwrap();
        assert_eq!(kv.get(NS, "a").unwrap(), Some(b"two".to_vec()));
        kv.set(NS, "", b"empty key", None).unwrap();
        assert_eq!(kv.get(NS, "").unwrap(), Some(b"empty key".to_vec()));
        assert!(kv.delete(NS, "a").unwrap());
        assert!(!kv.delete(NS, "a").unwrap());
        assert_eq!(kv.get(NS, "a").unwrap(), None);
        // Binary values round-trip.
        kv.set(NS, "bin", &[0, 255, 1, 254], None).unwrap();
        assert_eq!(kv.get(NS, "bin").unwrap(), Some(vec![0, 255, 1, 254]));
    }

    #[test]
    fn ttl_expiry() {
        let (kv, time) = store(KvConfig::default());
        kv.set(NS, "t", b"v", Some(Duration::from_secs(60)))
            .unwrap();
        kv.set(NS, "forever", b"v", None).unwrap();
        time.fetch_add(59, Ordering::SeqCst);
        assert_eq!(kv.get(NS, "t").unwrap(), Some(b"v".to_vec()));
        time.fetch_add(1, Ordering::SeqCst);
        assert_eq!(kv.get(NS, "t").unwrap(), None);
        assert!(!kv.delete(NS, "t").unwrap(), "expired key does not exist");
        assert_eq!(kv.get(NS, "forever").unwrap(), Some(b"v".to_vec()));
        // A zero TTL stores an already expired entry.
        kv.set(NS, "zero", b"v", Some(Duration::ZERO)).unwrap();
        assert_eq!(kv.get(NS, "zero").unwrap(), None);
        // Re-setting without TTL makes a key permanent.
        kv.set(NS, "t2", b"v", Some(Duration::from_secs(1)))
            .unwrap();
        kv.set(NS, "t2", b"w", None).unwrap();
        time.fetch_add(10, Ordering::SeqCst);
        assert_eq!(kv.get(NS, "t2").unwrap(), Some(b"w".to_vec()));
    }

    #[test]
    fn increment_creates_with_ttl_and_keeps_expiry() {
        let (kv, time) = store(KvConfig::default());
        assert_eq!(
            kv.increment(NS, "c", 1, Some(Duration::from_secs(10)))
                .unwrap(),
            1
        );
        time.fetch_add(5, Ordering::SeqCst);
        // A later TTL does not extend the counter's life.
        assert_eq!(
            kv.increment(NS, "c", 41, Some(Duration::from_secs(100)))
                .unwrap(),
            42
        );
        assert_eq!(kv.get(NS, "c").unwrap(), Some(b"42".to_vec()));
        time.fetch_add(5, Ordering::SeqCst);
        assert_eq!(kv.get(NS, "c").unwrap(), None);
        // Expired counter starts again from zero, with the new TTL.
        assert_eq!(kv.increment(NS, "c", -3, None).unwrap(), -3);
        time.fetch_add(1_000_000, Ordering::SeqCst);
        assert_eq!(kv.increment(NS, "c", 3, None).unwrap(), 0);
    }

    #[test]
    fn increment_errors() {
        let (kv, _) = store(KvConfig::default());
        kv.set(NS, "text", b"hello", None).unwrap();
        assert_eq!(
            kv.increment(NS, "text", 1, None),
            Err(KvError::Unavailable("not a counter".into()))
        );
        assert_eq!(kv.get(NS, "text").unwrap(), Some(b"hello".to_vec()));
        kv.set(NS, "num", b"7", None).unwrap();
        assert_eq!(kv.increment(NS, "num", 1, None).unwrap(), 8);
        kv.increment(NS, "big", i64::MAX, None).unwrap();
        assert_eq!(
            kv.increment(NS, "big", 1, None),
            Err(KvError::Unavailable("counter overflow".into()))
        );
        assert_eq!(kv.increment(NS, "big", 0, None).unwrap(), i64::MAX);
    }

    #[test]
    fn quota() {
        let (kv, time) = store(KvConfig {
            quota_bytes: 100,
            ..KvConfig::default()
        });
        // key (2) + value (48) = 50 bytes each.
        kv.set(NS, "k1", &[b'x'; 48], None).unwrap();
        kv.set(NS, "k2", &[b'x'; 48], Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(kv.usage(NS).unwrap(), 100);
        assert_eq!(
            kv.set(NS, "k3", b"x", None),
            Err(KvError::QuotaExceeded),
            "full namespace refuses a new key"
        );
        assert_eq!(kv.increment(NS, "k4", 1, None), Err(KvError::QuotaExceeded));
        // Replacing a value only counts the difference.
        kv.set(NS, "k1", &[b'y'; 48], None).unwrap();
        assert_eq!(
            kv.set(NS, "k1", &[b'y'; 49], None),
            Err(KvError::QuotaExceeded)
        );
        kv.set(NS, "k1", &[b'y'; 10], None).unwrap();
        kv.set(NS, "k3", b"x", None).unwrap();
        // Other namespaces have their own quota.
        kv.set("other/ns", "k1", &[b'x'; 98], None).unwrap();
        // Expired entries do not count.
        time.fetch_add(10, Ordering::SeqCst);
        assert_eq!(kv.usage(NS).unwrap(), 12 + 3);
        kv.set(NS, "k5", &[b'z'; 80], None).unwrap();
        // Deleting frees space.
        assert!(kv.delete(NS, "k5").unwrap());
        kv.set(NS, "k6", &[b'z'; 80], None).unwrap();
    }

    #[test]
    fn size_limits() {
        let (kv, _) = store(KvConfig {
            max_key_bytes: 8,
            max_value_bytes: 16,
            ..KvConfig::default()
        });
        kv.set(NS, "12345678", &[0; 16], None).unwrap();
        assert_eq!(kv.set(NS, "123456789", b"v", None), Err(KvError::TooLarge));
        assert_eq!(kv.set(NS, "k", &[0; 17], None), Err(KvError::TooLarge));
        assert_eq!(
            kv.increment(NS, "123456789", 1, None),
            Err(KvError::TooLarge)
        );
        assert_eq!(kv.get(NS, "123456789").unwrap(), None);
        assert!(!kv.delete(NS, "123456789").unwrap());
        // Limits are in bytes, not characters.
        assert_eq!(kv.set(NS, "ééééé", b"v", None), Err(KvError::TooLarge));
    }

    #[test]
    fn namespaces_are_isolated() {
        let (kv, _) = store(KvConfig::default());
        kv.set("a.example/p", "k", b"a", None).unwrap();
        kv.set("b.example/p", "k", b"b", None).unwrap();
        kv.set("*/p", "k", b"star", None).unwrap();
        assert_eq!(kv.get("a.example/p", "k").unwrap(), Some(b"a".to_vec()));
        assert_eq!(kv.get("b.example/p", "k").unwrap(), Some(b"b".to_vec()));
        assert_eq!(kv.get("*/p", "k").unwrap(), Some(b"star".to_vec()));
        assert_eq!(kv.get("a.example/q", "k").unwrap(), None);
        assert!(kv.delete("a.example/p", "k").unwrap());
        assert_eq!(kv.get("b.example/p", "k").unwrap(), Some(b"b".to_vec()));
        assert_eq!(kv.increment("c/p", "k", 5, None).unwrap(), 5);
        assert_eq!(kv.increment("d/p", "k", 1, None).unwrap(), 1);
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = KvConfig {
            path: Some(dir.path().join("sub/dir/kv.sqlite")),
            ..KvConfig::default()
        };
        {
            let kv = SqliteKv::open(&config).unwrap();
            kv.set(NS, "k", b"v", None).unwrap();
            kv.increment(NS, "c", 3, Some(Duration::from_secs(3600)))
                .unwrap();
            kv.set(NS, "gone", b"v", Some(Duration::ZERO)).unwrap();
        }
        let kv = SqliteKv::open(&config).unwrap();
        assert_eq!(kv.get(NS, "k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(kv.increment(NS, "c", 1, None).unwrap(), 4);
        assert_eq!(kv.get(NS, "gone").unwrap(), None);
    }

    #[test]
    fn purge_removes_expired_everywhere() {
        let (kv, time) = store(KvConfig::default());
        for i in 0..10 {
            kv.set(&format!("ns{i}"), "k", b"v", Some(Duration::from_secs(1)))
                .unwrap();
        }
        kv.set("keep", "k", b"v", None).unwrap();
        time.fetch_add(1, Ordering::SeqCst);
        assert_eq!(kv.purge_expired().unwrap(), 10);
        assert_eq!(kv.get("keep", "k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn opportunistic_purge() {
        let (kv, time) = store(KvConfig::default());
        kv.set("old", "k", b"v", Some(Duration::from_secs(1)))
            .unwrap();
        time.fetch_add(2, Ordering::SeqCst);
        for i in 0..PURGE_EVERY {
            kv.set("busy", &format!("k{}", i % 4), b"v", None).unwrap();
        }
        let conn = kv.lock().unwrap();
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM kv WHERE ns = 'old'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn config_deserializes() {
        let config: KvConfig =
            toml::from_str("path = \"/var/lib/wasmail/kv.sqlite\"\nquota_bytes = 5000\n").unwrap();
        assert_eq!(config.quota_bytes, 5000);
        assert_eq!(config.max_key_bytes, 256);
        assert_eq!(config.max_value_bytes, 65536);
        assert!(toml::from_str::<KvConfig>("bogus = 1").is_err());
    }
}
