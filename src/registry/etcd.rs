//! The etcd backend: one registry shared by every host of an installation.
//!
//! # Key layout (version 1)
//! Everything lives under `<prefix>/registry/` (`[registry] prefix`, default `/wasmail`);
//! other parts (worker placement) keep their keys elsewhere under `<prefix>/`, so their
//! writes never look like registry changes. Values are JSON objects:
//!
//! | key | value |
//! |---|---|
//! | `<prefix>/registry/generation` | decimal count of registry writes |
//! | `<prefix>/registry/domains/<name>` | `{"transport": ..., "chains": {...}, "settings": {...}}` |
//! | `<prefix>/registry/mailboxes/<domain>/<local@domain>` | `{"password_hash": ..., "quota_bytes": ...}` |
//! | `<prefix>/registry/aliases/<domain>/<source>` | `{"targets": [...]}` (`source` = `local@domain` or `@domain`) |
//!
//! Mailboxes and aliases sit under their domain, so "does this domain still have any" is
//! one counting range read and `domain rm --force` one range delete.
//!
//! # Writes
//! Every write is one etcd transaction that also bumps the generation key, guarded by a
//! compare on the generation key's `mod_revision` as read just before: read what the
//! change depends on (one read-only transaction, so at one revision), decide (or refuse:
//! exists, not found, in use), then commit only if no other registry write happened in
//! between; on a conflict, read again and retry, until `[registry] request_timeout`. So
//! registry writes are serialisable, like SQLite's single writer, and a failed or refused
//! write changes nothing.
//!
//! [`Registry::generation`] is the generation key's `mod_revision` (0 before the first
//! write): it changes with every registry write and with nothing else.
//! [`Registry::snapshot`] reads the whole `<prefix>/registry/` range at one revision, in
//! pages.
//!
//! # Sync over async
//! [`Registry`] is synchronous and `etcd-client` is async: the backend owns a small tokio
//! runtime (one worker thread, `wasmail-etcd`) on which the client, its connections and the
//! watch live. A call spawns its request there and blocks the calling thread on a channel
//! until the answer or `request_timeout`, so it works from any thread: the CLI's main
//! thread, `serve`'s blocking pool (as [`super::Live`] calls it), even (though it blocks)
//! a runtime worker. Dropping the backend shuts its runtime down in the background.
//!
//! # Watch
//! [`Registry::change_notify`] starts a watch on `<prefix>/registry/`: each event (and each
//! re-established watch after etcd was unreachable) signals the returned `Notify`, so a
//! change made on one host reaches every `serve` in milliseconds.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, GetResponse, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::Instrument;

use super::{Alias, Domain, Mailbox, Registry, RegistryError, Result, Snapshot, validate};

/// Keys read per page by [`Registry::snapshot`].
const PAGE: i64 = 500;
/// Pause before watching again after the watch failed.
const REWATCH: Duration = Duration::from_millis(500);

/// How to reach etcd (from `[registry]`).
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs, `http://HOST:PORT`.
    pub endpoints: Vec<String>,
    /// Key prefix without a trailing `/`; the registry is under `<prefix>/registry/`.
    pub prefix: String,
    /// TCP connect timeout per endpoint.
    pub connect_timeout: Duration,
    /// Time limit for one whole operation (retries included).
    pub request_timeout: Duration,
}

/// A registry in etcd.
pub struct EtcdRegistry {
    /// The runtime the client lives on; taken (and shut down in the background) on drop.
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    /// `<prefix>/registry/`.
    root: String,
    /// The endpoints, comma-separated, for messages.
    endpoints: String,
    request_timeout: Duration,
    /// Signalled by the watch task; created (and the watch started) on first use.
    notify: OnceLock<Arc<Notify>>,
}

impl fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        // A plain drop would block (and panics inside another runtime).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A domain's value.
#[derive(Debug, Serialize, Deserialize)]
struct DomainValue {
    transport: Option<String>,
    #[serde(default)]
    chains: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    settings: BTreeMap<String, String>,
}

/// A mailbox's value.
#[derive(Serialize, Deserialize)]
struct MailboxValue {
    password_hash: Option<String>,
    quota_bytes: Option<u64>,
}

/// An alias's value.
#[derive(Debug, Serialize, Deserialize)]
struct AliasValue {
    targets: Vec<String>,
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Strings, maps of strings and numbers always serialise.
    serde_json::to_string(v).expect("JSON of strings")
}

/// The first key after every key starting with `prefix` (etcd's prefix range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One read of a write's plan: a key, or a count of the keys under a prefix.
enum Read {
    Key(String),
    Count(String),
}

/// What a write's reads found, in the order asked.
struct Found {
    /// Per [`Read::Key`]: the value, if the key exists; per [`Read::Count`]: None.
    values: Vec<Option<Vec<u8>>>,
    /// Per [`Read::Count`]: the count; per [`Read::Key`]: 0 or 1.
    counts: Vec<i64>,
}

impl Found {
    fn exists(&self, i: usize) -> bool {
        self.values[i].is_some()
    }
}

/// An error message for etcd's own errors.
fn describe(e: &etcd_client::Error) -> String {
    match e {
        // tonic is not a direct dependency; its code names are stable.
        etcd_client::Error::GRpcStatus(s) if format!("{:?}", s.code()) == "Unavailable" => {
            format!(
                "{} (unavailable; is etcd running and reachable?)",
                s.message()
            )
        }
        etcd_client::Error::GRpcStatus(s) => format!("{} ({:?})", s.message(), s.code()),
        e => e.to_string(),
    }
}

impl EtcdRegistry {
    /// Builds the client (no network I/O yet: etcd is first contacted by the first
    /// operation, which fails with a clear error after `request_timeout` when no endpoint
    /// answers).
    pub fn open(opts: &EtcdOptions) -> Result<EtcdRegistry> {
        let endpoints = opts.endpoints.join(",");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("wasmail-etcd")
            .enable_all()
            .build()
            .map_err(|e| {
                RegistryError::Backend(format!(
                    "etcd {endpoints}: cannot start the client runtime: {e}"
                ))
            })?;
        let options = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_timeout(opts.request_timeout)
            .with_keep_alive(Duration::from_secs(10), opts.request_timeout);
        let eps = opts.endpoints.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(Client::connect(eps, Some(options)).await);
        });
        let client = match rx.recv_timeout(opts.request_timeout + opts.connect_timeout) {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                rt.shutdown_background();
                return Err(RegistryError::Backend(format!(
                    "etcd {endpoints}: connecting: {}",
                    describe(&e)
                )));
            }
            Err(_) => {
                rt.shutdown_background();
                return Err(RegistryError::Backend(format!(
                    "etcd {endpoints}: connecting: no answer within {}",
                    humantime::format_duration(opts.request_timeout)
                )));
            }
        };
        Ok(EtcdRegistry {
            rt: Some(rt),
            client,
            root: format!("{}/registry/", opts.prefix.trim_end_matches('/')),
            endpoints,
            request_timeout: opts.request_timeout,
            notify: OnceLock::new(),
        })
    }

    /// The key prefix of the registry (`<prefix>/registry/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    fn backend(&self, op: &str, msg: impl fmt::Display) -> RegistryError {
        RegistryError::Backend(format!("etcd {}: {op}: {msg}", self.endpoints))
    }

    fn gen_key(&self) -> String {
        format!("{}generation", self.root)
    }
    fn domain_key(&self, name: &str) -> String {
        format!("{}domains/{name}", self.root)
    }
    fn mailboxes_of(&self, domain: &str) -> String {
        format!("{}mailboxes/{domain}/", self.root)
    }
    fn aliases_of(&self, domain: &str) -> String {
        format!("{}aliases/{domain}/", self.root)
    }
    fn mailbox_key(&self, address: &str) -> String {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        format!("{}{address}", self.mailboxes_of(domain))
    }
    fn alias_key(&self, source: &str) -> String {
        let domain = source.rsplit_once('@').map_or("", |(_, d)| d);
        format!("{}{source}", self.aliases_of(domain))
    }

    /// Runs `fut` on the backend's runtime and waits for it, at most `request_timeout`.
    fn run<T: Send + 'static>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let rt = self.rt.as_ref().expect("runtime lives until drop");
        let limit = self.request_timeout;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let out = tokio::time::timeout(limit, fut).await;
            let _ = tx.send(out);
        });
        let no_answer = || {
            self.backend(
                op,
                format_args!(
                    "no answer within {} (request_timeout); is etcd running and reachable?",
                    humantime::format_duration(limit)
                ),
            )
        };
        match rx.recv_timeout(limit + Duration::from_secs(1)) {
            Ok(Ok(out)) => out,
            Ok(Err(_)) | Err(_) => Err(no_answer()),
        }
    }

    /// One registry write: reads `reads` (and the generation) at one revision, lets
    /// `decide` turn what it found into operations (or refuse), and commits them together
    /// with a generation bump, only if no registry write happened since the read; retries
    /// on conflict until `request_timeout`.
    fn write(
        &self,
        op: &'static str,
        reads: Vec<Read>,
        decide: impl Fn(&Found) -> Result<Vec<TxnOp>> + Send + 'static,
    ) -> Result<()> {
        let client = self.client.clone();
        let gen_key = self.gen_key();
        let endpoints = self.endpoints.clone();
        let err = move |e: etcd_client::Error| {
            RegistryError::Backend(format!("etcd {endpoints}: {op}: {}", describe(&e)))
        };
        // Give up on conflicts a little before `run`'s own time limit, to say why.
        let give_up = tokio::time::Instant::now() + self.request_timeout.mul_f32(0.9);
        let timeout = self.request_timeout;
        let endpoints = self.endpoints.clone();
        self.run(op, async move {
            let mut kv = client.kv_client();
            let mut attempt: u32 = 0;
            loop {
                // Read the generation and everything the decision depends on, at one
                // revision.
                let mut gets = vec![TxnOp::get(gen_key.as_str(), None)];
                for r in &reads {
                    gets.push(match r {
                        Read::Key(k) => TxnOp::get(k.as_str(), None),
                        Read::Count(p) => TxnOp::get(
                            p.as_str(),
                            Some(GetOptions::new().with_prefix().with_count_only()),
                        ),
                    });
                }
                let resp = kv.txn(Txn::new().and_then(gets)).await.map_err(&err)?;
                let mut gets = resp.op_responses().into_iter().map(|r| match r {
                    TxnOpResponse::Get(g) => g,
                    _ => unreachable!("a read-only transaction answers gets"),
                });
                let g = gets.next().expect("the generation read");
                let (gen_rev, count) = match g.kvs().first() {
                    Some(kv) => (
                        kv.mod_revision(),
                        std::str::from_utf8(kv.value())
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                            .unwrap_or(0),
                    ),
                    None => (0, 0),
                };
                let mut found = Found {
                    values: Vec::new(),
                    counts: Vec::new(),
                };
                for (r, g) in reads.iter().zip(gets) {
                    match r {
                        Read::Key(_) => {
                            let v = g.kvs().first().map(|kv| kv.value().to_vec());
                            found.counts.push(i64::from(v.is_some()));
                            found.values.push(v);
                        }
                        Read::Count(_) => {
                            found.values.push(None);
                            found.counts.push(g.count());
                        }
                    }
                }
                let mut ops = decide(&found)?;
                ops.push(TxnOp::put(gen_key.as_str(), (count + 1).to_string(), None));
                let guard = if gen_rev == 0 {
                    Compare::version(gen_key.as_str(), CompareOp::Equal, 0)
                } else {
                    Compare::mod_revision(gen_key.as_str(), CompareOp::Equal, gen_rev)
                };
                let resp = kv
                    .txn(Txn::new().when([guard]).and_then(ops))
                    .await
                    .map_err(&err)?;
                if resp.succeeded() {
                    return Ok(());
                }
                // Another registry write came in between: decide again on fresh data,
                // after a short pause that grows and is jittered so that writers that
                // collided do not collide again in lockstep.
                attempt += 1;
                if tokio::time::Instant::now() >= give_up {
                    return Err(RegistryError::Backend(format!(
                        "etcd {endpoints}: {op}: gave up after {attempt} attempts within {} \
                         (request_timeout): other hosts kept changing the registry at the \
                         same time",
                        humantime::format_duration(timeout)
                    )));
                }
                let jitter = u64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos())
                        % 1000,
                );
                let pause = Duration::from_micros(u64::from(attempt.min(20)) * 1000 + jitter);
                tracing::debug!(op, attempt, "etcd registry write conflict; retrying");
                tokio::time::sleep(pause).await;
            }
        })
    }

    fn decode<T: for<'de> Deserialize<'de>>(&self, what: &str, key: &str, v: &[u8]) -> Result<T> {
        serde_json::from_slice(v).map_err(|e| {
            self.backend(
                "reading the registry",
                format_args!("{what} at {key} is not valid JSON: {e}"),
            )
        })
    }
}

impl Registry for EtcdRegistry {
    fn generation(&self) -> Result<u64> {
        let mut kv = self.client.kv_client();
        let key = self.gen_key();
        let endpoints = self.endpoints.clone();
        let op = "reading the generation";
        self.run(op, async move {
            let r = kv.get(key, None).await.map_err(|e| {
                RegistryError::Backend(format!("etcd {endpoints}: {op}: {}", describe(&e)))
            })?;
            Ok(r.kvs().first().map_or(0, |kv| kv.mod_revision() as u64))
        })
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let mut kv = self.client.kv_client();
        let root = self.root.clone();
        let endpoints = self.endpoints.clone();
        let op = "reading the registry";
        let pages: Vec<GetResponse> = self.run(op, async move {
            let err = |e: etcd_client::Error| {
                RegistryError::Backend(format!("etcd {endpoints}: {op}: {}", describe(&e)))
            };
            let end = prefix_end(&root);
            let mut pages = Vec::new();
            let mut start = root.as_bytes().to_vec();
            let mut revision = 0;
            loop {
                let mut o = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                if revision != 0 {
                    o = o.with_revision(revision);
                }
                let r = kv.get(start.clone(), Some(o)).await.map_err(err)?;
                if revision == 0 {
                    revision = r.header().map_or(0, |h| h.revision());
                }
                let more = r.more();
                if let Some(last) = r.kvs().last() {
                    start = last.key().to_vec();
                    start.push(0);
                }
                pages.push(r);
                if !more {
                    return Ok(pages);
                }
            }
        })?;

        let mut snap = Snapshot::default();
        let gen_key = self.gen_key();
        for kv in pages.iter().flat_map(|p| p.kvs()) {
            let Ok(key) = kv.key_str() else { continue };
            if key == gen_key {
                snap.generation = kv.mod_revision() as u64;
                continue;
            }
            let rest = &key[self.root.len()..];
            if let Some(name) = rest.strip_prefix("domains/") {
                let v: DomainValue = self.decode("the domain", key, kv.value())?;
                snap.domains.insert(
                    name.to_string(),
                    Domain {
                        name: name.to_string(),
                        transport: v.transport,
                        chains: v.chains,
                        settings: v.settings,
                    },
                );
            } else if let Some(address) = rest
                .strip_prefix("mailboxes/")
                .and_then(|r| r.split_once('/'))
                .map(|(_, a)| a)
            {
                let v: MailboxValue = self.decode("the mailbox", key, kv.value())?;
                snap.mailboxes.insert(
                    address.to_string(),
                    Mailbox {
                        address: address.to_string(),
                        password_hash: v.password_hash,
                        quota_bytes: v.quota_bytes,
                    },
                );
            } else if let Some(source) = rest
                .strip_prefix("aliases/")
                .and_then(|r| r.split_once('/'))
                .map(|(_, s)| s)
            {
                let v: AliasValue = self.decode("the alias", key, kv.value())?;
                snap.aliases.insert(
                    source.to_string(),
                    Alias {
                        source: source.to_string(),
                        targets: v.targets,
                    },
                );
            }
            // Anything else under the root is not ours to read (a later layout's keys).
        }
        Ok(snap)
    }

    fn add_domain(&self, domain: &Domain) -> Result<()> {
        let d = validate::domain(domain)?;
        let key = self.domain_key(&d.name);
        let value = to_json(&DomainValue {
            transport: d.transport.clone(),
            chains: d.chains.clone(),
            settings: d.settings.clone(),
        });
        let name = d.name;
        self.write("adding a domain", vec![Read::Key(key.clone())], move |f| {
            if f.exists(0) {
                return Err(RegistryError::Exists(format!("domain {name}")));
            }
            Ok(vec![TxnOp::put(key.as_str(), value.as_str(), None)])
        })
    }

    fn update_domain(&self, domain: &Domain) -> Result<()> {
        let d = validate::domain(domain)?;
        let key = self.domain_key(&d.name);
        let value = to_json(&DomainValue {
            transport: d.transport.clone(),
            chains: d.chains.clone(),
            settings: d.settings.clone(),
        });
        let name = d.name;
        self.write(
            "updating a domain",
            vec![Read::Key(key.clone())],
            move |f| {
                if !f.exists(0) {
                    return Err(RegistryError::NotFound(format!("domain {name}")));
                }
                Ok(vec![TxnOp::put(key.as_str(), value.as_str(), None)])
            },
        )
    }

    fn remove_domain(&self, name: &str, force: bool) -> Result<()> {
        let name = validate::domain_name(name)?;
        let key = self.domain_key(&name);
        let mailboxes = self.mailboxes_of(&name);
        let aliases = self.aliases_of(&name);
        let reads = vec![
            Read::Key(key.clone()),
            Read::Count(mailboxes.clone()),
            Read::Count(aliases.clone()),
        ];
        self.write("removing a domain", reads, move |f| {
            if !f.exists(0) {
                return Err(RegistryError::NotFound(format!("domain {name}")));
            }
            let (m, a) = (f.counts[1], f.counts[2]);
            if !force && m + a > 0 {
                return Err(RegistryError::InUse(format!(
                    "domain {name} still has {m} mailbox(es) and {a} alias(es); remove them \
                     first, or remove everything with `wasmail domain rm {name} --force`"
                )));
            }
            Ok(vec![
                TxnOp::delete(key.as_str(), None),
                TxnOp::delete(mailboxes.as_str(), Some(DeleteOptions::new().with_prefix())),
                TxnOp::delete(aliases.as_str(), Some(DeleteOptions::new().with_prefix())),
            ])
        })
    }

    fn add_mailbox(&self, mailbox: &Mailbox) -> Result<()> {
        let m = validate::mailbox(mailbox)?;
        let reads = vec![
            Read::Key(self.domain_key(m.domain())),
            Read::Key(self.mailbox_key(&m.address)),
            Read::Key(self.alias_key(&m.address)),
        ];
        let key = self.mailbox_key(&m.address);
        let value = to_json(&MailboxValue {
            password_hash: m.password_hash.clone(),
            quota_bytes: m.quota_bytes,
        });
        self.write("adding a mailbox", reads, move |f| {
            if !f.exists(0) {
                return Err(RegistryError::UnknownDomain(m.domain().to_string()));
            }
            if f.exists(1) {
                return Err(RegistryError::Exists(format!("mailbox {}", m.address)));
            }
            if f.exists(2) {
                return Err(RegistryError::Exists(format!(
                    "mailbox {0} cannot be added: an address is either a mailbox or an \
                     alias, and the alias {0}",
                    m.address
                )));
            }
            Ok(vec![TxnOp::put(key.as_str(), value.as_str(), None)])
        })
    }

    fn update_mailbox(&self, mailbox: &Mailbox) -> Result<()> {
        let m = validate::mailbox(mailbox)?;
        let key = self.mailbox_key(&m.address);
        let value = to_json(&MailboxValue {
            password_hash: m.password_hash.clone(),
            quota_bytes: m.quota_bytes,
        });
        let address = m.address;
        self.write(
            "updating a mailbox",
            vec![Read::Key(key.clone())],
            move |f| {
                if !f.exists(0) {
                    return Err(RegistryError::NotFound(format!("mailbox {address}")));
                }
                Ok(vec![TxnOp::put(key.as_str(), value.as_str(), None)])
            },
        )
    }

    fn set_password(&self, address: &str, hash: Option<&str>) -> Result<()> {
        let address = validate::mailbox_address(address)?;
        let hash = hash.map(validate::password_hash).transpose()?;
        let key = self.mailbox_key(&address);
        let endpoints = self.endpoints.clone();
        let op = "setting a password";
        self.write(op, vec![Read::Key(key.clone())], move |f| {
            let Some(old) = &f.values[0] else {
                return Err(RegistryError::NotFound(format!("mailbox {address}")));
            };
            let mut v: MailboxValue = serde_json::from_slice(old).map_err(|e| {
                RegistryError::Backend(format!(
                    "etcd {endpoints}: {op}: the mailbox at {key} is not valid JSON: {e}"
                ))
            })?;
            v.password_hash = hash.clone();
            Ok(vec![TxnOp::put(key.as_str(), to_json(&v), None)])
        })
    }

    fn remove_mailbox(&self, address: &str) -> Result<()> {
        let address = validate::mailbox_address(address)?;
        let key = self.mailbox_key(&address);
        self.write(
            "removing a mailbox",
            vec![Read::Key(key.clone())],
            move |f| {
                if !f.exists(0) {
                    return Err(RegistryError::NotFound(format!("mailbox {address}")));
                }
                Ok(vec![TxnOp::delete(key.as_str(), None)])
            },
        )
    }

    fn add_alias(&self, alias: &Alias) -> Result<()> {
        let a = validate::alias(alias)?;
        let reads = vec![
            Read::Key(self.domain_key(a.domain())),
            Read::Key(self.alias_key(&a.source)),
            Read::Key(self.mailbox_key(&a.source)),
        ];
        let key = self.alias_key(&a.source);
        let value = to_json(&AliasValue {
            targets: a.targets.clone(),
        });
        self.write("adding an alias", reads, move |f| {
            if !f.exists(0) {
                return Err(RegistryError::UnknownDomain(a.domain().to_string()));
            }
            if f.exists(1) {
                return Err(RegistryError::Exists(format!("alias {}", a.source)));
            }
            if !a.is_catch_all() && f.exists(2) {
                return Err(RegistryError::Exists(format!(
                    "alias {0} cannot be added: an address is either a mailbox or an alias, \
                     and the mailbox {0}",
                    a.source
                )));
            }
            Ok(vec![TxnOp::put(key.as_str(), value.as_str(), None)])
        })
    }

    fn update_alias(&self, alias: &Alias) -> Result<()> {
        let a = validate::alias(alias)?;
        let key = self.alias_key(&a.source);
        let value = to_json(&AliasValue {
            targets: a.targets.clone(),
        });
        let source = a.source;
        self.write(
            "updating an alias",
            vec![Read::Key(key.clone())],
            move |f| {
                if !f.exists(0) {
                    return Err(RegistryError::NotFound(format!("alias {source}")));
                }
                Ok(vec![TxnOp::put(key.as_str(), value.as_str(), None)])
            },
        )
    }

    fn remove_alias(&self, source: &str) -> Result<()> {
        let source = validate::alias_source(source)?;
        let key = self.alias_key(&source);
        self.write(
            "removing an alias",
            vec![Read::Key(key.clone())],
            move |f| {
                if !f.exists(0) {
                    return Err(RegistryError::NotFound(format!("alias {source}")));
                }
                Ok(vec![TxnOp::delete(key.as_str(), None)])
            },
        )
    }

    fn location(&self) -> String {
        format!("etcd {} ({})", self.endpoints, self.root)
    }

    fn change_notify(&self) -> Option<Arc<Notify>> {
        let notify = self.notify.get_or_init(|| {
            let notify = Arc::new(Notify::new());
            let rt = self.rt.as_ref().expect("runtime lives until drop");
            let span = tracing::info_span!(
                "registry.watch",
                etcd = %self.endpoints,
                prefix = %self.root
            );
            rt.spawn(
                watch_loop(
                    self.client.clone(),
                    self.root.clone(),
                    self.request_timeout,
                    Arc::clone(&notify),
                )
                .instrument(span),
            );
            notify
        });
        Some(Arc::clone(notify))
    }
}

/// Watches `root` for as long as the runtime lives: signals `notify` on every event and
/// whenever a watch is (re-)established; retries every [`REWATCH`] when etcd is
/// unreachable, logging the failure once and the recovery once.
async fn watch_loop(client: Client, root: String, limit: Duration, notify: Arc<Notify>) {
    let mut failing: Option<String> = None;
    loop {
        let mut w = client.watch_client();
        let opened = tokio::time::timeout(
            limit,
            w.watch(root.as_str(), Some(WatchOptions::new().with_prefix())),
        )
        .await;
        let outcome: std::result::Result<(), String> = match opened {
            Err(_) => Err("no answer within request_timeout".to_string()),
            Ok(Err(e)) => Err(describe(&e)),
            Ok(Ok(mut stream)) => {
                // Wait for etcd to confirm the watch: from then on no change is missed, so
                // one refresh now catches whatever happened before.
                match tokio::time::timeout(limit, stream.message()).await {
                    Ok(Ok(Some(r))) if r.created() => {
                        if failing.take().is_some() {
                            tracing::info!("registry watch re-established");
                        }
                        notify.notify_one();
                        loop {
                            match stream.message().await {
                                Ok(Some(r)) if r.canceled() => {
                                    break Err(format!(
                                        "the watch was cancelled: {}",
                                        r.cancel_reason()
                                    ));
                                }
                                Ok(Some(r)) => {
                                    if !r.events().is_empty() {
                                        notify.notify_one();
                                    }
                                }
                                Ok(None) => break Err("etcd closed the watch".to_string()),
                                Err(e) => break Err(describe(&e)),
                            }
                        }
                    }
                    Ok(Ok(_)) => Err("etcd did not confirm the watch".to_string()),
                    Ok(Err(e)) => Err(describe(&e)),
                    Err(_) => Err("no answer within request_timeout".to_string()),
                }
            }
        };
        if let Err(msg) = outcome {
            // Once per outage; the text varies while etcd is down.
            if failing.is_none() {
                tracing::warn!(
                    error = %msg,
                    "registry watch lost; changes are picked up by polling until it is back"
                );
            } else if failing.as_deref() != Some(msg.as_str()) {
                tracing::debug!(error = %msg, "registry watch still down");
            }
            failing = Some(msg);
        }
        tokio::time::sleep(REWATCH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/wasmail/registry/"), b"/wasmail/registry0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
    }

    #[test]
    fn unreachable_etcd_fails_within_the_timeout_naming_the_endpoint() {
        // A port nothing listens on: bind, take the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let reg = EtcdRegistry::open(&EtcdOptions {
            endpoints: vec![endpoint.clone()],
            prefix: "/wasmail".into(),
            connect_timeout: Duration::from_millis(200),
            request_timeout: Duration::from_millis(500),
        })
        .unwrap();
        assert_eq!(reg.root(), "/wasmail/registry/");
        let start = std::time::Instant::now();
        let e = reg.generation().unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(3), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&endpoint), "{msg}");
        assert!(msg.contains("reading the generation"), "{msg}");
        let e = reg
            .add_domain(&Domain {
                name: "x.example".into(),
                ..Domain::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("adding a domain"), "{e}");
        // Dropping inside a runtime must not panic.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move { drop(reg) });
    }
}
