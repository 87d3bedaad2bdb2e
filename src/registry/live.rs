//! The live registry: the current [`Snapshot`] behind an [`ArcSwap`], replaced when the
//! backend's generation changes.
//!
//! Services hold an `Arc<Live>` and call [`Live::snapshot`] per request (an atomic load,
//! no lock, no I/O). [`Live::spawn_refresher`] polls [`Registry::generation`] on a blocking
//! thread every `[registry] refresh` interval and swaps in a new snapshot when another
//! process (typically `wasmail domain add ...`) committed a change. A request that loaded
//! the old snapshot keeps it until it finishes; the next request sees the new one.
//!
//! A backend that pushes changes ([`Registry::change_notify`], etcd's watch) wakes the
//! refresher at once, so a change made on another host is served within milliseconds;
//! the poll stays as the fallback (e.g. while the watch is down).
//!
//! When the backend cannot be read, the old snapshot stays in place and the error is
//! logged once (with the registry's location) until reads succeed again.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::config::RegistrySection;
use super::{Registry, Result, Snapshot};

/// A registry backend plus its current snapshot.
pub struct Live {
    registry: Arc<dyn Registry>,
    current: ArcSwap<Snapshot>,
    /// Serialises refreshes so two concurrent callers cannot swap an older snapshot over a
    /// newer one.
    refreshing: std::sync::Mutex<()>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.current.load();
        f.debug_struct("Live")
            .field("registry", &self.registry)
            .field("generation", &s.generation)
            .field("domains", &s.domains.len())
            .field("mailboxes", &s.mailboxes.len())
            .field("aliases", &s.aliases.len())
            .finish()
    }
}

impl Live {
    /// Wraps `registry` and loads its first snapshot (an error here means the registry is
    /// unreadable, which should stop `serve` from starting).
    pub fn new(registry: Arc<dyn Registry>) -> Result<Arc<Live>> {
        let first = registry.snapshot()?;
        Ok(Arc::new(Live {
            registry,
            current: ArcSwap::from_pointee(first),
            refreshing: std::sync::Mutex::new(()),
        }))
    }

    /// Opens the backend `section` selects and loads the first snapshot.
    pub fn open(section: &RegistrySection) -> Result<Arc<Live>> {
        Live::new(super::open(section)?)
    }

    /// The current snapshot. Cheap (an atomic load); hold it for one request, not forever.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The backend, for writes and for reads that must not wait for a refresh.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Reads the backend's generation and, when it differs from the current snapshot's,
    /// reads and installs a new snapshot. Returns true when the snapshot was replaced.
    /// Blocking (backend I/O): call it from a blocking thread in async code.
    pub fn refresh(&self) -> Result<bool> {
        let _one = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let have = self.current.load().generation;
        if self.registry.generation()? == have {
            return Ok(false);
        }
        let next = self.registry.snapshot()?;
        if next.generation == have {
            return Ok(false);
        }
        self.current.store(Arc::new(next));
        Ok(true)
    }

    /// Spawns a task that calls [`Live::refresh`] on the blocking pool every `interval`,
    /// and at once whenever the backend's [`Registry::change_notify`] fires, until
    /// `shutdown` becomes true (or its sender is dropped). Logs `registry changed` (info,
    /// with the generation and counts) when the snapshot is replaced; logs a backend error
    /// once per outage (a different error later in the same outage at debug level), with
    /// the registry's location, and keeps serving the old snapshot until reads succeed
    /// again.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let live = Arc::clone(self);
        let location = self.registry.location();
        let span = tracing::info_span!("registry.refresh", registry = %location);
        let pushed = self.registry.change_notify();
        tokio::spawn(
            async move {
                let pushed = async || match &pushed {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                };
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The first tick completes at once; the first snapshot is fresh already.
                tick.tick().await;
                let mut failing: Option<String> = None;
                loop {
                    if *shutdown.borrow_and_update() {
                        break;
                    }
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = pushed() => {}
                        changed = shutdown.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            continue;
                        }
                    }
                    let l = Arc::clone(&live);
                    let outcome = tokio::task::spawn_blocking(move || l.refresh()).await;
                    match outcome {
                        Ok(Ok(replaced)) => {
                            if failing.take().is_some() {
                                tracing::info!("registry readable again");
                            }
                            if replaced {
                                let s = live.snapshot();
                                tracing::info!(
                                    generation = s.generation,
                                    domains = s.domains.len(),
                                    mailboxes = s.mailboxes.len(),
                                    aliases = s.aliases.len(),
                                    "registry changed"
                                );
                            }
                        }
                        Ok(Err(e)) => {
                            // Once per outage: the text may vary while the backend is
                            // down (etcd: connection refused, then timeouts).
                            let msg = e.to_string();
                            if failing.is_none() {
                                tracing::error!(
                                    error = %msg,
                                    generation = live.current.load().generation,
                                    "cannot refresh the registry; keeping the previous snapshot"
                                );
                            } else if failing.as_deref() != Some(msg.as_str()) {
                                tracing::debug!(error = %msg, "registry still unreadable");
                            }
                            failing = Some(msg);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "registry refresh thread failed");
                        }
                    }
                }
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::sqlite::SqliteRegistry;
    use crate::registry::{Domain, Mailbox, RegistryError};

    #[test]
    fn refresh_picks_up_another_connections_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg.db");
        let live = Live::new(Arc::new(SqliteRegistry::open(&path).unwrap())).unwrap();
        let before = live.snapshot();
        assert!(before.domains.is_empty());
        assert!(!live.refresh().unwrap(), "nothing changed yet");

        // Another "process": its own connection to the same file.
        let admin = SqliteRegistry::open(&path).unwrap();
        admin.add_domain(&Domain::named("x.example")).unwrap();
        admin
            .add_mailbox(&Mailbox {
                address: "a@x.example".into(),
                ..Mailbox::default()
            })
            .unwrap();

        assert!(live.refresh().unwrap());
        let after = live.snapshot();
        assert!(after.generation > before.generation);
        assert!(after.domain("x.example").is_some());
        assert!(after.mailbox("a@x.example").is_some());
        // A snapshot taken earlier is unchanged (requests in flight keep theirs).
        assert!(before.domains.is_empty());
        assert!(!live.refresh().unwrap());
    }

    #[test]
    fn writes_through_the_handle_show_after_refresh() {
        let live = Live::new(Arc::new(SqliteRegistry::open_in_memory().unwrap())).unwrap();
        live.registry()
            .add_domain(&Domain::named("y.example"))
            .unwrap();
        assert!(live.snapshot().domain("y.example").is_none());
        assert!(live.refresh().unwrap());
        assert!(live.snapshot().domain("y.example").is_some());
    }

    /// A backend whose reads can be made to fail.
    #[derive(Debug)]
    struct Flaky {
        inner: SqliteRegistry,
        fail: std::sync::atomic::AtomicBool,
        /// Set = a push-style backend.
        push: Option<Arc<tokio::sync::Notify>>,
    }

    impl Flaky {
        fn check(&self) -> crate::registry::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                Err(RegistryError::Backend("/x/reg.db: disk I/O error".into()))
            } else {
                Ok(())
            }
        }
    }

    impl Registry for Flaky {
        fn generation(&self) -> crate::registry::Result<u64> {
            self.check()?;
            self.inner.generation()
        }
        fn snapshot(&self) -> crate::registry::Result<Snapshot> {
            self.check()?;
            self.inner.snapshot()
        }
        fn add_domain(&self, d: &Domain) -> crate::registry::Result<()> {
            self.inner.add_domain(d)
        }
        fn update_domain(&self, d: &Domain) -> crate::registry::Result<()> {
            self.inner.update_domain(d)
        }
        fn remove_domain(&self, n: &str, f: bool) -> crate::registry::Result<()> {
            self.inner.remove_domain(n, f)
        }
        fn add_mailbox(&self, m: &Mailbox) -> crate::registry::Result<()> {
            self.inner.add_mailbox(m)
        }
        fn update_mailbox(&self, m: &Mailbox) -> crate::registry::Result<()> {
            self.inner.update_mailbox(m)
        }
        fn update_alias(&self, a: &crate::registry::Alias) -> crate::registry::Result<()> {
            self.inner.update_alias(a)
        }
        fn set_password(&self, a: &str, h: Option<&str>) -> crate::registry::Result<()> {
            self.inner.set_password(a, h)
        }
        fn remove_mailbox(&self, a: &str) -> crate::registry::Result<()> {
            self.inner.remove_mailbox(a)
        }
        fn add_alias(&self, a: &crate::registry::Alias) -> crate::registry::Result<()> {
            self.inner.add_alias(a)
        }
        fn remove_alias(&self, s: &str) -> crate::registry::Result<()> {
            self.inner.remove_alias(s)
        }
        fn change_notify(&self) -> Option<Arc<tokio::sync::Notify>> {
            self.push.clone()
        }
    }

    #[tokio::test]
    async fn a_pushed_change_is_picked_up_without_waiting_for_the_poll() {
        let push = Arc::new(tokio::sync::Notify::new());
        let flaky = Arc::new(Flaky {
            inner: SqliteRegistry::open_in_memory().unwrap(),
            fail: false.into(),
            push: Some(push.clone()),
        });
        let live = Live::new(flaky.clone()).unwrap();
        let (tx, rx) = watch::channel(false);
        // A poll interval far beyond the test: only the push can refresh.
        let task = live.spawn_refresher(Duration::from_secs(3600), rx);
        flaky.add_domain(&Domain::named("a.example")).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(live.snapshot().domain("a.example").is_none(), "no push yet");
        push.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while live.snapshot().domain("a.example").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "push did not refresh"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn refresher_swaps_on_change_keeps_old_on_error_and_stops() {
        let flaky = Arc::new(Flaky {
            inner: SqliteRegistry::open_in_memory().unwrap(),
            fail: false.into(),
            push: None,
        });
        let live = Live::new(flaky.clone()).unwrap();
        let (tx, rx) = watch::channel(false);
        let task = live.spawn_refresher(Duration::from_millis(10), rx);

        async fn until(mut cond: impl FnMut() -> bool) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !cond() {
                assert!(tokio::time::Instant::now() < deadline, "timed out");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        flaky.add_domain(&Domain::named("a.example")).unwrap();
        until(|| live.snapshot().domain("a.example").is_some()).await;

        // While the backend fails, the last good snapshot stays.
        flaky.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        flaky.add_domain(&Domain::named("b.example")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(live.snapshot().domain("a.example").is_some());
        assert!(live.snapshot().domain("b.example").is_none());

        // Recovery picks up what was missed.
        flaky.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        until(|| live.snapshot().domain("b.example").is_some()).await;

        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("refresher stops on shutdown")
            .unwrap();
    }
}
