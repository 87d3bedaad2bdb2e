//! Host membership and worker placement over etcd.
//!
//! [`Cluster`] is a cheap, cloneable handle. It runs three background tasks
//! ([`Cluster::start`]):
//! - **membership**: grants this host's lease (TTL `lease_ttl`), puts `hosts/<host>` bound
//!   to it and keeps it alive every `lease_ttl / 3`. When etcd says the lease is gone
//!   (it expired while this host could not reach etcd), it registers anew and re-claims
//!   the domains it owns; a domain someone else took meanwhile has its worker stopped.
//! - **sync**: one ranged read of `drain/`, `hosts/` and `owners/`, then one watch from the
//!   next revision, keeping a local cache of members, drained hosts and domain owners
//!   (re-listed after any watch error). The cache is what lets sessions for domains with
//!   a known owner keep flowing while etcd is unreachable.
//! - **sweep**: gives up (deletes the key of) owned domains with no worker, no session and
//!   no use for `release_grace`, and adopts domains other hosts claimed for this host.
//!
//! [`Cluster::resolve`] answers "where does this domain's session go": this host
//! ([`Placement::Local`], with an [`OwnedGuard`] that keeps the ownership from being
//! released while the session runs) or another host's relay ([`Placement::Remote`]).
//! Unknown domains are claimed with one transaction:
//!
//! ```text
//! if create_revision(owners/<d>) == 0 then put(owners/<d>, P, lease = P's lease)
//! else get(owners/<d>)
//! ```
//!
//! where P is the rendezvous-preferred live, undrained host (possibly another one: the
//! claim binds the key to P's lease, read from P's membership record). Either branch
//! answers the owner in the same round trip. If P's lease no longer exists, P is dead:
//! the next preferred host is tried.
//!
//! Ownership transitions of one domain on this host (adopting, releasing) are serialised
//! by a per-domain async lock, so a session never starts a worker for a domain whose key
//! is being deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::ClusterError;
use super::config::ClusterSection;
use super::keys::{HostRecord, KeyKind, Keys};
use super::rendezvous;
use crate::fastcontainer::manager::Manager;

/// Pause before retrying etcd after a failure (registration, list, watch).
const RETRY: Duration = Duration::from_millis(500);

/// Where a domain's sessions go.
#[derive(Debug)]
pub enum Placement {
    /// This host owns the domain; hold the guard for the session.
    Local(OwnedGuard),
    /// Another host owns it.
    Remote {
        /// Its name.
        host: String,
        /// Its relay address.
        addr: SocketAddr,
    },
}

/// One line of `wasmail ctl hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HostInfo {
    /// Host name.
    pub host: String,
    /// Relay address (empty for a drained host that is not running).
    pub relay: String,
    /// Advertised LMTP address.
    pub lmtp: Option<String>,
    /// Rendezvous weight.
    pub capacity: u32,
    /// Running (its lease-bound membership key exists).
    pub live: bool,
    /// A drain key exists for it.
    pub drained: bool,
    /// Domains it owns now.
    pub domains: usize,
    /// Registered since (Unix seconds).
    pub since: u64,
}

/// The cluster handle. Clones share everything.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("host", &self.inner.section.host)
            .field("etcd", &self.inner.section.etcd)
            .finish_non_exhaustive()
    }
}

struct Inner {
    section: ClusterSection,
    keys: Keys,
    client: Client,
    manager: Option<Manager>,
    state: Mutex<State>,
    /// Per-domain ownership transition locks (adopt / release).
    transitions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes the membership task to re-put this host's record (drain changed).
    record_changed: Notify,
    /// Flipped by [`Cluster::leave`]: the membership task revokes the lease and ends.
    leave: watch::Sender<bool>,
    /// Set once the lease has been revoked.
    left: Notify,
    counters: Counters,
}

/// Counters since start, for `/metrics`.
#[derive(Default)]
struct Counters {
    claims_created: AtomicU64,
    claims_existing: AtomicU64,
    claim_errors: AtomicU64,
    relayed_out: AtomicU64,
    relayed_in: AtomicU64,
    releases: AtomicU64,
    lost: AtomicU64,
    /// False while keep-alives fail.
    etcd_ok: AtomicBool,
}

#[derive(Default)]
struct State {
    /// This host's current lease.
    lease: Option<i64>,
    /// This host is drained (its drain key exists).
    draining: bool,
    /// This host is shutting down (no new domains either).
    stopping: bool,
    hosts: BTreeMap<String, HostRecord>,
    drained: BTreeSet<String>,
    /// Owner per domain as last seen, with the revision it was seen at (None: deleted).
    owners: HashMap<String, Seen>,
    /// Domains this host owns.
    owned: HashMap<String, Owned>,
}

#[derive(Debug, Clone)]
struct Seen {
    host: Option<String>,
    rev: i64,
}

struct Owned {
    /// Sessions (local or relayed) using it.
    active: u32,
    last_used: Instant,
    /// Its key is being deleted: new sessions wait for the outcome.
    releasing: bool,
}

/// Keeps this host's ownership of a domain while a session uses it; dropping it ends the
/// session's use (the domain is released later, once its worker is reaped).
pub struct OwnedGuard {
    inner: Arc<Inner>,
    domain: String,
}

impl std::fmt::Debug for OwnedGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedGuard")
            .field("domain", &self.domain)
            .finish()
    }
}

impl Drop for OwnedGuard {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if let Some(o) = st.owned.get_mut(&self.domain) {
            o.active = o.active.saturating_sub(1);
            o.last_used = Instant::now();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs an etcd call with the configured timeout.
async fn bounded<T>(
    op: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ClusterError::Etcd { op, source }),
        Err(_) => Err(ClusterError::Timeout { op, after: limit }),
    }
}

fn lease_not_found(e: &ClusterError) -> bool {
    matches!(e, ClusterError::Etcd { source, .. } if source.to_string().contains("lease not found"))
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn host(&self) -> &str {
        &self.section.host
    }

    fn transition(&self, domain: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(domain.to_string())
            .or_default()
            .clone()
    }

    fn record(&self, lease: i64, draining: bool, since: u64) -> HostRecord {
        HostRecord {
            relay: self.section.advertised().to_string(),
            lmtp: self.section.lmtp.map(|a| a.to_string()),
            capacity: self.section.capacity,
            lease,
            draining,
            since,
        }
    }

    /// Records what was seen for `domain` at `rev`, unless something newer is known.
    fn see(st: &mut State, domain: &str, host: Option<String>, rev: i64) {
        match st.owners.get_mut(domain) {
            Some(s) if s.rev > rev => {}
            Some(s) => {
                s.host = host;
                s.rev = rev;
            }
            None => {
                st.owners.insert(domain.to_string(), Seen { host, rev });
            }
        }
    }

    fn guard(self: &Arc<Self>, domain: &str) -> OwnedGuard {
        OwnedGuard {
            inner: self.clone(),
            domain: domain.to_string(),
        }
    }

    /// A guard if this host owns `domain` and is not releasing it; Err(()) while it is
    /// being released (wait for the transition lock, then look again).
    fn try_local(self: &Arc<Self>, domain: &str) -> Option<Result<OwnedGuard, ()>> {
        let mut st = self.lock();
        let o = st.owned.get_mut(domain)?;
        if o.releasing {
            return Some(Err(()));
        }
        o.active += 1;
        o.last_used = Instant::now();
        drop(st);
        Some(Ok(self.guard(domain)))
    }

    /// Takes ownership of `domain` (its key names this host) for a session.
    async fn adopt(self: &Arc<Self>, domain: &str) -> OwnedGuard {
        let lock = self.transition(domain);
        let _t = lock.lock().await;
        let mut st = self.lock();
        let o = st.owned.entry(domain.to_string()).or_insert_with(|| {
            info!(domain, "cluster: this host now owns the domain");
            Owned {
                active: 0,
                last_used: Instant::now(),
                releasing: false,
            }
        });
        o.active += 1;
        o.last_used = Instant::now();
        drop(st);
        self.guard(domain)
    }

    /// This host's lease, if registered and not draining: a candidate for claims.
    fn candidates(&self, excluded: &BTreeSet<String>) -> Vec<(String, u32, i64)> {
        let st = self.lock();
        let mut out: Vec<(String, u32, i64)> = st
            .hosts
            .iter()
            .filter(|(name, r)| {
                !r.draining
                    && r.lease != 0
                    && !st.drained.contains(*name)
                    && !excluded.contains(*name)
                    && name.as_str() != self.host()
            })
            .map(|(name, r)| (name.clone(), r.capacity, r.lease))
            .collect();
        if let Some(lease) = st.lease
            && !st.draining
            && !st.stopping
            && !st.drained.contains(self.host())
            && !excluded.contains(self.host())
        {
            out.push((self.host().to_string(), self.section.capacity, lease));
        }
        out
    }

    /// The claim transaction: the domain's owner (this host's claim for the preferred
    /// host, or the existing owner).
    async fn claim(self: &Arc<Self>, domain: &str) -> Result<String, ClusterError> {
        let key = self.keys.owner(domain);
        let mut excluded = BTreeSet::new();
        loop {
            let cands = self.candidates(&excluded);
            let ranked = rendezvous::ranked(domain, cands.iter().map(|(n, c, _)| (n.as_str(), *c)));
            let Some(target) = ranked.first() else {
                return Err(ClusterError::NoHost {
                    domain: domain.to_string(),
                });
            };
            let lease = cands
                .iter()
                .find(|(n, _, _)| n == target)
                .map_or(0, |c| c.2);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    target.as_bytes(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let mut kv = self.client.kv_client();
            let resp = match bounded("claim", self.section.etcd_timeout, kv.txn(txn)).await {
                Ok(r) => r,
                Err(e) if lease_not_found(&e) => {
                    warn!(domain, host = %target, "cluster: preferred host's lease is gone; trying the next");
                    excluded.insert(target.to_string());
                    let mut st = self.lock();
                    st.hosts.remove(*target);
                    continue;
                }
                Err(e) => {
                    self.counters.claim_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let rev = resp.header().map_or(0, |h| h.revision());
            let which = if resp.succeeded() {
                &self.counters.claims_created
            } else {
                &self.counters.claims_existing
            };
            which.fetch_add(1, Ordering::Relaxed);
            let owner = if resp.succeeded() {
                debug!(domain, owner = %target, "cluster: claimed");
                target.to_string()
            } else {
                let existing = resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                        (
                            String::from_utf8_lossy(kv.value()).into_owned(),
                            kv.mod_revision(),
                        )
                    }),
                    _ => None,
                });
                match existing {
                    Some((owner, _)) => owner,
                    None => {
                        return Err(ClusterError::NoHost {
                            domain: domain.to_string(),
                        });
                    }
                }
            };
            let mut st = self.lock();
            Inner::see(&mut st, domain, Some(owner.clone()), rev);
            return Ok(owner);
        }
    }

    /// The owner per etcd right now (None: unowned).
    async fn owner_now(&self, domain: &str) -> Result<Option<String>, ClusterError> {
        let mut kv = self.client.kv_client();
        let resp = bounded(
            "get owner",
            self.section.etcd_timeout,
            kv.get(self.keys.owner(domain), None),
        )
        .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let owner = resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        let mut st = self.lock();
        Inner::see(&mut st, domain, owner.clone(), rev);
        Ok(owner)
    }

    fn relay_of(&self, host: &str) -> Option<SocketAddr> {
        self.lock()
            .hosts
            .get(host)
            .and_then(|r| r.relay.parse().ok())
    }

    fn cached_owner(&self, domain: &str) -> Option<String> {
        self.lock().owners.get(domain).and_then(|s| s.host.clone())
    }

    /// Deletes `domain`'s key if it is still unused (see the sweep).
    async fn release(self: &Arc<Self>, domain: &str) {
        let lock = self.transition(domain);
        let _t = lock.lock().await;
        {
            let mut st = self.lock();
            let Some(o) = st.owned.get_mut(domain) else {
                return;
            };
            if o.active > 0 || o.releasing || o.last_used.elapsed() < self.section.release_grace {
                return;
            }
            o.releasing = true;
        }
        let busy = self.manager.as_ref().is_some_and(|m| m.busy(domain));
        let outcome = if busy {
            None
        } else {
            let key = self.keys.owner(domain);
            let txn = Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, self.host())])
                .and_then([TxnOp::delete(key, None)]);
            let mut kv = self.client.kv_client();
            Some(bounded("release", self.section.etcd_timeout, kv.txn(txn)).await)
        };
        let mut st = self.lock();
        match outcome {
            Some(Ok(resp)) => {
                let rev = resp.header().map_or(0, |h| h.revision());
                st.owned.remove(domain);
                Inner::see(&mut st, domain, None, rev);
                self.counters.releases.fetch_add(1, Ordering::Relaxed);
                info!(domain, "cluster: released the domain (worker gone, unused)");
            }
            other => {
                if let Some(Err(e)) = other {
                    debug!(domain, error = %e, "cluster: release failed; keeping the domain for now");
                }
                if let Some(o) = st.owned.get_mut(domain) {
                    o.releasing = false;
                }
            }
        }
    }

    /// Another host owns a domain this host thought it owned: forget it and stop its
    /// worker here.
    fn lost(self: &Arc<Self>, domain: &str, now_owner: Option<&str>) {
        let removed = self.lock().owned.remove(domain).is_some();
        if !removed {
            return;
        }
        self.counters.lost.fetch_add(1, Ordering::Relaxed);
        warn!(domain, owner = ?now_owner, "cluster: lost the domain to another host; stopping its worker here");
        if let Some(m) = self.manager.clone() {
            let domain = domain.to_string();
            tokio::spawn(async move {
                m.stop(&domain).await;
            });
        }
    }

    /// Applies one key's new value (None = deleted) at `rev`.
    fn apply(self: &Arc<Self>, kind: KeyKind, value: Option<&[u8]>, rev: i64) {
        let me = self.host().to_string();
        match kind {
            KeyKind::Host(name) => {
                let mut st = self.lock();
                match value.map(serde_json::from_slice::<HostRecord>) {
                    Some(Ok(r)) => {
                        st.hosts.insert(name, r);
                    }
                    Some(Err(e)) => {
                        warn!(host = %name, error = %e, "cluster: unreadable host record")
                    }
                    None => {
                        st.hosts.remove(&name);
                    }
                }
            }
            KeyKind::Drain(name) => {
                let mut st = self.lock();
                let changed = if value.is_some() {
                    st.drained.insert(name.clone())
                } else {
                    st.drained.remove(&name)
                };
                if changed && name == me {
                    st.draining = value.is_some();
                    drop(st);
                    info!(
                        draining = value.is_some(),
                        "cluster: this host's drain flag changed"
                    );
                    self.record_changed.notify_one();
                }
            }
            KeyKind::Owner(domain) => {
                let owner = value.map(|v| String::from_utf8_lossy(v).into_owned());
                let lost = {
                    let mut st = self.lock();
                    Inner::see(&mut st, &domain, owner.clone(), rev);
                    let mine = st.owned.get(&domain).is_some_and(|o| !o.releasing);
                    mine && owner.as_deref().is_some_and(|o| o != me)
                };
                if lost {
                    self.lost(&domain, owner.as_deref());
                }
            }
        }
    }

    /// Reads the whole range and replaces the cache; returns the revision.
    async fn list(self: &Arc<Self>) -> Result<i64, ClusterError> {
        let (start, end) = self.keys.range();
        let mut kv = self.client.kv_client();
        let resp = bounded(
            "list",
            self.section.etcd_timeout,
            kv.get(start, Some(GetOptions::new().with_range(end))),
        )
        .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let me = self.host().to_string();
        let mut hosts = BTreeMap::new();
        let mut drained = BTreeSet::new();
        let mut owners: HashMap<String, String> = HashMap::new();
        for kv in resp.kvs() {
            match self.keys.kind(kv.key()) {
                Some(KeyKind::Host(h)) => {
                    if let Ok(r) = serde_json::from_slice::<HostRecord>(kv.value()) {
                        hosts.insert(h, r);
                    }
                }
                Some(KeyKind::Drain(h)) => {
                    drained.insert(h);
                }
                Some(KeyKind::Owner(d)) => {
                    owners.insert(d, String::from_utf8_lossy(kv.value()).into_owned());
                }
                None => {}
            }
        }
        let mut lost = Vec::new();
        {
            let mut st = self.lock();
            let was_draining = st.draining;
            st.draining = drained.contains(&me);
            if st.draining != was_draining {
                self.record_changed.notify_one();
            }
            st.hosts = hosts;
            st.drained = drained;
            let known: Vec<String> = st.owners.keys().cloned().collect();
            for d in known {
                if !owners.contains_key(&d) {
                    Inner::see(&mut st, &d, None, rev);
                }
            }
            for (d, h) in &owners {
                Inner::see(&mut st, d, Some(h.clone()), rev);
                if h != &me && st.owned.get(d).is_some_and(|o| !o.releasing) {
                    lost.push((d.clone(), h.clone()));
                }
            }
        }
        for (d, h) in lost {
            self.lost(&d, Some(&h));
        }
        Ok(rev)
    }

    /// List, then watch until an error; returns when the watch ends.
    async fn sync_once(self: &Arc<Self>) -> Result<(), ClusterError> {
        let rev = self.list().await?;
        let (start, end) = self.keys.range();
        let mut client = self.client.clone();
        let mut stream = bounded(
            "watch",
            self.section.etcd_timeout,
            client.watch(
                start,
                Some(
                    WatchOptions::new()
                        .with_range(end)
                        .with_start_revision(rev + 1),
                ),
            ),
        )
        .await?;
        loop {
            let msg = stream
                .message()
                .await
                .map_err(|source| ClusterError::Etcd {
                    op: "watch",
                    source,
                })?;
            let Some(resp) = msg else {
                return Ok(());
            };
            if resp.canceled() {
                debug!(reason = resp.cancel_reason(), "cluster: watch canceled");
                return Ok(());
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(kind) = self.keys.kind(kv.key()) else {
                    continue;
                };
                let value = match ev.event_type() {
                    EventType::Put => Some(kv.value()),
                    EventType::Delete => None,
                };
                self.apply(kind, value, kv.mod_revision());
            }
        }
    }

    /// Grants a lease and puts this host's record; re-claims the domains owned under an
    /// earlier lease.
    async fn register(self: &Arc<Self>) -> Result<i64, ClusterError> {
        let t = self.section.etcd_timeout;
        let mut client = self.client.clone();
        let ttl = self.section.lease_ttl.as_secs().max(2) as i64;
        let lease = bounded("lease grant", t, client.lease_grant(ttl, None))
            .await?
            .id();
        let draining = {
            let st = self.lock();
            st.draining || st.stopping
        };
        let record = self.record(lease, draining, unix_now());
        let value = serde_json::to_vec(&record).unwrap_or_default();
        bounded(
            "register",
            t,
            client.put(
                self.keys.host(self.host()),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        let owned: Vec<String> = {
            let mut st = self.lock();
            st.lease = Some(lease);
            st.hosts.insert(self.host().to_string(), record);
            st.owned.keys().cloned().collect()
        };
        for domain in owned {
            let key = self.keys.owner(&domain);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    self.host(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let mut kv = self.client.kv_client();
            let resp = bounded("reclaim", t, kv.txn(txn)).await?;
            if resp.succeeded() {
                info!(domain, "cluster: re-claimed the domain under the new lease");
                continue;
            }
            let owner = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            });
            if owner.as_deref() != Some(self.host()) {
                self.lost(&domain, owner.as_deref());
            }
        }
        info!(host = %self.host(), lease, ttl_secs = ttl, relay = %self.section.advertised(), "cluster: registered");
        Ok(lease)
    }

    /// Keeps `lease` alive until it is gone (Ok(false)), `leave` flips (Ok(true)), or this
    /// host's record must be re-put (loops on).
    async fn keep_alive(self: &Arc<Self>, lease: i64, leave: &mut watch::Receiver<bool>) -> bool {
        let t = self.section.etcd_timeout;
        let every = self.section.lease_ttl / 3;
        let mut keeper = None;
        let mut failing_since: Option<Instant> = None;
        loop {
            if keeper.is_none() {
                let mut client = self.client.clone();
                match bounded("keep-alive", t, client.lease_keep_alive(lease)).await {
                    Ok(k) => keeper = Some(k),
                    Err(e) => {
                        self.counters.etcd_ok.store(false, Ordering::Relaxed);
                        if failing_since.is_none() {
                            warn!(error = %e, "cluster: etcd unreachable; serving domains with known owners");
                            failing_since = Some(Instant::now());
                        }
                    }
                }
            }
            if let Some((k, stream)) = keeper.as_mut() {
                let r = bounded("keep-alive", t, async {
                    k.keep_alive().await?;
                    stream.message().await
                })
                .await;
                match r {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        self.counters.etcd_ok.store(true, Ordering::Relaxed);
                        if let Some(since) = failing_since.take() {
                            info!(after = ?since.elapsed(), "cluster: etcd reachable again");
                        }
                    }
                    Ok(Some(_)) => {
                        warn!(
                            lease,
                            "cluster: this host's lease expired; registering again"
                        );
                        return false;
                    }
                    Ok(None) | Err(_) => {
                        self.counters.etcd_ok.store(false, Ordering::Relaxed);
                        if failing_since.is_none() {
                            warn!("cluster: etcd unreachable; serving domains with known owners");
                            failing_since = Some(Instant::now());
                        }
                        keeper = None;
                    }
                }
            }
            let pause = if keeper.is_some() { every } else { RETRY };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = crate::listen::flipped(leave) => return true,
                () = self.record_changed.notified() => {
                    let draining = {
                        let st = self.lock();
                        st.draining || st.stopping
                    };
                    let since = self.lock().hosts.get(self.host()).map_or_else(unix_now, |r| r.since);
                    let record = self.record(lease, draining, since);
                    let value = serde_json::to_vec(&record).unwrap_or_default();
                    let mut client = self.client.clone();
                    match bounded("update record", t, client.put(
                        self.keys.host(self.host()), value, Some(PutOptions::new().with_lease(lease)))).await {
                        Ok(_) => info!(draining, "cluster: host record updated"),
                        Err(e) => {
                            warn!(error = %e, "cluster: could not update the host record; retrying");
                            self.record_changed.notify_one();
                        }
                    }
                }
            }
        }
    }

    async fn membership(self: Arc<Self>, mut leave: watch::Receiver<bool>) {
        loop {
            let lease = tokio::select! {
                r = self.register() => r,
                () = crate::listen::flipped(&mut leave) => break,
            };
            match lease {
                Ok(lease) => {
                    if self.keep_alive(lease, &mut leave).await {
                        break;
                    }
                    self.lock().lease = None;
                }
                Err(e) => {
                    warn!(error = %e, "cluster: cannot register with etcd; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        () = crate::listen::flipped(&mut leave) => break,
                    }
                }
            }
        }
        let lease = self.lock().lease.take();
        if let Some(lease) = lease {
            let mut client = self.client.clone();
            match bounded(
                "lease revoke",
                self.section.etcd_timeout,
                client.lease_revoke(lease),
            )
            .await
            {
                Ok(_) => info!("cluster: left (lease revoked, domains released)"),
                Err(e) => {
                    warn!(error = %e, "cluster: could not revoke the lease; it expires by itself")
                }
            }
        }
        self.left.notify_one();
    }

    async fn sync(self: Arc<Self>, mut leave: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                r = self.sync_once() => {
                    if let Err(e) = r {
                        debug!(error = %e, "cluster: watch ended; listing again");
                    }
                }
                () = crate::listen::flipped(&mut leave) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = crate::listen::flipped(&mut leave) => return,
            }
        }
    }

    async fn sweep(self: Arc<Self>, mut leave: watch::Receiver<bool>) {
        let every = (self.section.release_grace / 5)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = crate::listen::flipped(&mut leave) => return,
            }
            let candidates: Vec<String> = {
                let mut st = self.lock();
                let me = self.host().to_string();
                let adopt: Vec<String> = st
                    .owners
                    .iter()
                    .filter(|(d, s)| {
                        s.host.as_deref() == Some(me.as_str()) && !st.owned.contains_key(*d)
                    })
                    .map(|(d, _)| d.clone())
                    .collect();
                for d in adopt {
                    debug!(domain = %d, "cluster: adopting a domain claimed for this host");
                    st.owned.insert(
                        d,
                        Owned {
                            active: 0,
                            last_used: Instant::now(),
                            releasing: false,
                        },
                    );
                }
                st.owned
                    .iter()
                    .filter(|(_, o)| {
                        o.active == 0
                            && !o.releasing
                            && o.last_used.elapsed() >= self.section.release_grace
                    })
                    .map(|(d, _)| d.clone())
                    .collect()
            };
            if !self.counters.etcd_ok.load(Ordering::Relaxed) {
                // Nothing can be released while etcd is unreachable; trying would only
                // hold up the domain's sessions for etcd_timeout each round.
                continue;
            }
            for d in candidates {
                if self.manager.as_ref().is_some_and(|m| m.busy(&d)) {
                    continue;
                }
                self.release(&d).await;
            }
        }
    }
}

impl Cluster {
    /// A handle for `section`; `manager` runs this host's workers (needed to own domains).
    /// Does not contact etcd yet (see [`Cluster::start`]).
    pub async fn new(
        section: ClusterSection,
        manager: Option<Manager>,
    ) -> Result<Cluster, ClusterError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(section.etcd_timeout)
            .with_timeout(section.etcd_timeout)
            .with_keep_alive(Duration::from_secs(2), section.etcd_timeout);
        let client = Client::connect(&section.etcd, Some(options))
            .await
            .map_err(|source| ClusterError::Etcd {
                op: "connect",
                source,
            })?;
        let (leave, _) = watch::channel(false);
        Ok(Cluster {
            inner: Arc::new(Inner {
                keys: Keys::new(section.prefix()),
                section,
                client,
                manager,
                state: Mutex::new(State::default()),
                transitions: Mutex::new(HashMap::new()),
                record_changed: Notify::new(),
                leave,
                left: Notify::new(),
                counters: Counters::default(),
            }),
        })
    }

    /// Starts membership, the cache sync and the release sweep; they run until
    /// [`Cluster::leave`].
    pub fn start(&self) {
        let i = &self.inner;
        tokio::spawn(i.clone().membership(i.leave.subscribe()));
        tokio::spawn(i.clone().sync(i.leave.subscribe()));
        tokio::spawn(i.clone().sweep(i.leave.subscribe()));
    }

    /// Waits (up to `limit`) until this host is registered and its cache is loaded;
    /// false on timeout (serving starts anyway; sessions of unknown domains tempfail until
    /// etcd answers).
    pub async fn ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            {
                let st = self.inner.lock();
                if st.lease.is_some() && st.hosts.contains_key(self.host()) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// At the start of a graceful stop: this host takes no new domains (its record says
    /// draining, so other hosts stop naming it in claims); the domains it owns stay until
    /// [`Cluster::leave`].
    pub fn begin_shutdown(&self) {
        let mut st = self.inner.lock();
        if !st.stopping {
            st.stopping = true;
            drop(st);
            self.inner.record_changed.notify_one();
        }
    }

    /// Stops claiming, revokes the lease (every key of this host goes at once) and stops
    /// the background tasks. Call after the workers have stopped.
    pub async fn leave(&self) {
        self.inner.lock().stopping = true;
        let left = self.inner.left.notified();
        let _ = self.inner.leave.send(true);
        let _ = tokio::time::timeout(self.inner.section.etcd_timeout * 2, left).await;
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        self.inner.host()
    }

    /// The configuration.
    pub fn section(&self) -> &ClusterSection {
        &self.inner.section
    }

    /// Where `domain`'s sessions go: this host (claimed or adopted if needed) or another
    /// host's relay. Without etcd, only domains with a known owner resolve.
    pub async fn resolve(&self, domain: &str) -> Result<Placement, ClusterError> {
        let inner = &self.inner;
        loop {
            match inner.try_local(domain) {
                Some(Ok(g)) => return Ok(Placement::Local(g)),
                Some(Err(())) => {
                    // Being released: wait for the outcome, then look again.
                    let lock = inner.transition(domain);
                    drop(lock.lock().await);
                    continue;
                }
                None => {}
            }
            let owner = match inner.cached_owner(domain) {
                Some(o) => o,
                None => inner.claim(domain).await?,
            };
            if owner == inner.host() {
                return Ok(Placement::Local(inner.adopt(domain).await));
            }
            let Some(addr) = inner.relay_of(&owner) else {
                return Err(ClusterError::OwnerGone {
                    domain: domain.to_string(),
                    owner,
                });
            };
            return Ok(Placement::Remote { host: owner, addr });
        }
    }

    /// For the relay server: a guard if this host owns `domain` (per etcd, or per the
    /// cache while etcd is unreachable), else [`ClusterError::NotOwner`].
    pub async fn serve_owned(&self, domain: &str) -> Result<OwnedGuard, ClusterError> {
        let inner = &self.inner;
        loop {
            match inner.try_local(domain) {
                Some(Ok(g)) => return Ok(g),
                Some(Err(())) => {
                    let lock = inner.transition(domain);
                    drop(lock.lock().await);
                    continue;
                }
                None => {}
            }
            let owner = match inner.owner_now(domain).await {
                Ok(o) => o,
                Err(e) => {
                    debug!(domain, error = %e, "cluster: etcd unreachable; using the cached owner");
                    inner.cached_owner(domain)
                }
            };
            if owner.as_deref() == Some(inner.host()) {
                return Ok(inner.adopt(domain).await);
            }
            return Err(ClusterError::NotOwner {
                domain: domain.to_string(),
                owner,
            });
        }
    }

    /// Drops a cached owner that turned out wrong (its relay said it is not the owner).
    pub fn forget(&self, domain: &str, host: &str) {
        let mut st = self.inner.lock();
        if let Some(s) = st.owners.get_mut(domain)
            && s.host.as_deref() == Some(host)
        {
            st.owners.remove(domain);
        }
    }

    /// The known owner of `domain` and its advertised LMTP address (cache only, no etcd
    /// round trip): for the socketmap `transport_maps` answer.
    pub fn known_owner(&self, domain: &str) -> Option<(String, Option<String>)> {
        let st = self.inner.lock();
        let owner = st.owners.get(domain)?.host.clone()?;
        let lmtp = st.hosts.get(&owner).and_then(|r| r.lmtp.clone());
        Some((owner, lmtp))
    }

    /// Domains this host owns now, sorted.
    pub fn owned(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.lock().owned.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every member and drained host, read from etcd now.
    pub async fn hosts(&self) -> Result<Vec<HostInfo>, ClusterError> {
        let inner = &self.inner;
        let (start, end) = inner.keys.range();
        let mut kv = inner.client.kv_client();
        let resp = bounded(
            "list hosts",
            inner.section.etcd_timeout,
            kv.get(start, Some(GetOptions::new().with_range(end))),
        )
        .await?;
        let mut out: BTreeMap<String, HostInfo> = BTreeMap::new();
        let blank = |host: &str| HostInfo {
            host: host.to_string(),
            relay: String::new(),
            lmtp: None,
            capacity: 0,
            live: false,
            drained: false,
            domains: 0,
            since: 0,
        };
        for kv in resp.kvs() {
            match inner.keys.kind(kv.key()) {
                Some(KeyKind::Host(h)) => {
                    let e = out.entry(h.clone()).or_insert_with(|| blank(&h));
                    if let Ok(r) = serde_json::from_slice::<HostRecord>(kv.value()) {
                        e.relay = r.relay;
                        e.lmtp = r.lmtp;
                        e.capacity = r.capacity;
                        e.since = r.since;
                        e.drained |= r.draining;
                    }
                    e.live = true;
                }
                Some(KeyKind::Drain(h)) => {
                    out.entry(h.clone()).or_insert_with(|| blank(&h)).drained = true;
                }
                Some(KeyKind::Owner(_)) => {
                    let h = String::from_utf8_lossy(kv.value()).into_owned();
                    out.entry(h.clone()).or_insert_with(|| blank(&h)).domains += 1;
                }
                None => {}
            }
        }
        Ok(out.into_values().collect())
    }

    /// Drains `host` (no new domains are placed there; its workers are reaped when idle
    /// and their domains re-placed), or undrains it.
    pub async fn drain(&self, host: &str, drain: bool) -> Result<(), ClusterError> {
        let inner = &self.inner;
        let mut kv = inner.client.kv_client();
        let key = inner.keys.drain(host);
        let t = inner.section.etcd_timeout;
        if drain {
            bounded("drain", t, kv.put(key, unix_now().to_string(), None)).await?;
        } else {
            bounded("undrain", t, kv.delete(key, None)).await?;
        }
        info!(host, drain, "cluster: drain flag set");
        Ok(())
    }

    /// Counts a session forwarded to another host (the router calls it).
    pub fn note_relayed_out(&self) {
        self.inner
            .counters
            .relayed_out
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a session another host forwarded here (the relay calls it).
    pub fn note_relayed_in(&self) {
        self.inner
            .counters
            .relayed_in
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The cluster's Prometheus metrics.
    pub fn render_prometheus(&self) -> String {
        let c = &self.inner.counters;
        let (member, owned, members, drained) = {
            let st = self.inner.lock();
            (
                u64::from(st.lease.is_some()),
                st.owned.len(),
                st.hosts.len(),
                u64::from(st.draining || st.stopping),
            )
        };
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        one(
            "wasmail_cluster_member",
            "gauge",
            "1 while this host holds a live lease.",
            member.to_string(),
        );
        one(
            "wasmail_cluster_etcd_ok",
            "gauge",
            "1 while this host's keep-alives succeed.",
            u64::from(c.etcd_ok.load(Ordering::Relaxed)).to_string(),
        );
        one(
            "wasmail_cluster_draining",
            "gauge",
            "1 while this host takes no new domains (drained or stopping).",
            drained.to_string(),
        );
        one(
            "wasmail_cluster_hosts",
            "gauge",
            "Members in this host's cache.",
            members.to_string(),
        );
        one(
            "wasmail_cluster_owned_domains",
            "gauge",
            "Domains this host owns.",
            owned.to_string(),
        );
        for (name, help, v) in [
            (
                "wasmail_cluster_claims_created_total",
                "Claim transactions that placed a domain.",
                &c.claims_created,
            ),
            (
                "wasmail_cluster_claims_existing_total",
                "Claim transactions that found an owner.",
                &c.claims_existing,
            ),
            (
                "wasmail_cluster_claim_errors_total",
                "Claim transactions that failed (the session got a 4xx).",
                &c.claim_errors,
            ),
            (
                "wasmail_cluster_relayed_out_total",
                "Sessions forwarded to another host.",
                &c.relayed_out,
            ),
            (
                "wasmail_cluster_relayed_in_total",
                "Sessions other hosts forwarded here.",
                &c.relayed_in,
            ),
            (
                "wasmail_cluster_releases_total",
                "Domains given up after their worker was reaped.",
                &c.releases,
            ),
            (
                "wasmail_cluster_lost_total",
                "Domains found owned by another host while running here.",
                &c.lost,
            ),
        ] {
            one(name, "counter", help, v.load(Ordering::Relaxed).to_string());
        }
        out
    }

    /// The etcd client (benchmarks and tests read keys through it).
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }
}
