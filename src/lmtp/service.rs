//! The `[lmtp]` service: one task per Postfix LMTP connection, driving a
//! [`protocol::Session`] and the per-domain worker connections of its transaction.
//!
//! At each `RCPT TO`:
//! 1. the recipient's domain must be in the registry (else `550 5.1.2`);
//! 2. the `delivery` hook chain (`[lmtp] hooks`, then the domain's registry `hook` chain)
//!    runs: `deny` → `550 5.7.1` with the plugin's text, a failed plugin with
//!    `on_error = "tempfail"` → `451 4.3.0`, `delay` → the front waits first;
//! 3. at the domain's first recipient in the transaction, the domain's worker is reached
//!    through the [`Router`]: on this host, acquired from the FastContainer manager
//!    (started if cold; the lease is held until the transaction ends), or, with
//!    `[cluster]`, on the domain's owner host through its relay; an LMTP session to its
//!    `worker_socket` is opened with the same `MAIL FROM`. If that fails, the recipient, and every later one of that domain
//!    in the transaction, gets `451 4.3.0` (Postfix retries them; other domains are not
//!    affected);
//! 4. the recipient is sent to the worker, and the worker's refusal (e.g. `550 5.1.1`
//!    for an unknown user) is relayed as is.
//!
//! After the message: each domain group gets the message once (all groups at the same
//! time), and the workers'
//! per-recipient replies are written back in `RCPT` order. A worker that fails in the
//! middle leaves its unanswered recipients with `451 4.4.2`. Every recipient outcome is
//! logged on one line (`lmtp: delivery`) with the running counts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::config::LmtpSection;
use super::protocol::{Limits, Reply, Session, Step, Transaction};
use super::worker::WorkerConn;
use crate::cluster::{Hold, RouteError, Router};
use crate::host::calls::{HookEvent, HookSession};
use crate::host::set::PluginHost;
use crate::listen;
use crate::mailhook::{HookChain, Outcome};
use crate::registry::Live;
use crate::serve::ServiceFuture;

/// Counts of recipient outcomes since start (also in every `lmtp: delivery` log line).
#[derive(Debug, Default)]
pub struct Counters {
    /// Recipients a worker accepted the message for.
    pub delivered: AtomicU64,
    /// Recipients answered with 4xx (Postfix retries).
    pub deferred: AtomicU64,
    /// Recipients answered with 5xx.
    pub rejected: AtomicU64,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Front {
    hostname: String,
    limits: Limits,
    worker_socket: String,
    worker_timeout: Duration,
    local: String,
    registry: Option<Arc<Live>>,
    router: Router,
    hooks: HookChain,
    /// Recipient outcomes so far.
    pub counters: Counters,
}

/// One domain's part of the current transaction.
struct Group {
    domain: String,
    /// Held while the worker connection is open: the worker is not reaped meanwhile.
    _hold: Option<Hold>,
    conn: Option<WorkerConn>,
    /// Set when the worker could not be reached: the answer for the domain's recipients.
    failed: Option<Reply>,
    /// Positions (in the transaction's accepted recipients) of this group's recipients.
    accepted: Vec<usize>,
}

impl Front {
    /// The shared state for `section`.
    pub fn new(
        section: &LmtpSection,
        registry: Option<Arc<Live>>,
        plugins: Option<Arc<PluginHost>>,
        router: Router,
        local: String,
    ) -> Front {
        Front {
            hostname: section.hostname(),
            limits: Limits {
                max_message_size: section.max_message_size as usize,
                max_recipients: section.max_recipients,
                ..Limits::default()
            },
            worker_socket: section.worker_socket.clone(),
            worker_timeout: section.worker_timeout,
            local,
            hooks: HookChain::new(plugins, registry.clone(), section.hooks.clone()),
            registry,
            router,
            counters: Counters::default(),
        }
    }

    /// Decides one recipient; None = accepted (a worker took it).
    async fn recipient(
        &self,
        peer: &str,
        tx: &Transaction,
        address: &str,
        groups: &mut Vec<Group>,
    ) -> Option<Reply> {
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        if let Some(live) = &self.registry
            && live.snapshot().domain(&domain).is_none()
        {
            return Some(Reply::new(
                550,
                "5.1.2",
                format!("<{address}>: Recipient domain {domain} is not hosted here"),
            ));
        }
        if self.hooks.wants(Some(&domain), "delivery") {
            let event = HookEvent::Delivery((
                self.hook_session(peer),
                tx.sender.clone(),
                address.to_string(),
            ));
            match self.hooks.run(Some(&domain), event).await {
                Outcome::Allow { delay, .. } => {
                    if !delay.is_zero() {
                        debug!(
                            recipient = address,
                            ?delay,
                            "lmtp: recipient delayed by a hook"
                        );
                        tokio::time::sleep(delay).await;
                    }
                }
                Outcome::Deny { message, by } => {
                    info!(recipient = address, plugin = %by, "lmtp: recipient denied by a hook");
                    let text = if message.trim().is_empty() {
                        format!("<{address}>: Delivery refused")
                    } else {
                        message
                    };
                    return Some(Reply::new(550, "5.7.1", text));
                }
                Outcome::Tempfail { by } => {
                    warn!(recipient = address, plugin = %by, "lmtp: hook failed; recipient deferred");
                    return Some(Reply::new(
                        451,
                        "4.3.0",
                        format!("<{address}>: Temporary failure in delivery policy"),
                    ));
                }
            }
        }
        let index = match groups.iter().position(|g| g.domain == domain) {
            Some(i) => i,
            None => {
                groups.push(self.open_group(&domain, tx).await);
                groups.len() - 1
            }
        };
        let group = &mut groups[index];
        if let Some(failed) = &group.failed {
            return Some(failed.clone());
        }
        let conn = group.conn.as_mut()?;
        match conn.rcpt(address).await {
            Ok(r) if r.is_positive() => {
                group.accepted.push(tx.recipients.len());
                None
            }
            Ok(r) => Some(r),
            Err(e) => {
                warn!(domain, error = %e, "lmtp: worker failed at RCPT");
                let r = Reply::new(
                    451,
                    "4.4.2",
                    format!("<{address}>: Mailbox worker for {domain} failed, try again later"),
                );
                group.conn = None;
                group.failed = Some(r.clone());
                Some(r)
            }
        }
    }

    /// Reaches `domain`'s worker (here or on its owner host) and opens an LMTP
    /// transaction on it.
    async fn open_group(&self, domain: &str, tx: &Transaction) -> Group {
        let mut group = Group {
            domain: domain.to_string(),
            _hold: None,
            conn: None,
            failed: None,
            accepted: Vec::new(),
        };
        let unavailable = |why: &str| {
            Reply::new(
                451,
                "4.3.0",
                format!("Mailbox worker for {domain} unavailable ({why}), try again later"),
            )
        };
        let started = Instant::now();
        let routed = match self.router.open(domain, &self.worker_socket).await {
            Ok(r) => r,
            Err(e) => {
                let why = match &e {
                    RouteError::NoWorkers => "no workers configured",
                    RouteError::Worker(_) => "start failed",
                    RouteError::TcpEndpoint(_) => "no LMTP socket",
                    RouteError::Connect { .. } => "worker not answering",
                    RouteError::Cluster(_) => "placement or owner host unavailable",
                };
                if matches!(e, RouteError::Worker(_)) {
                    warn!(domain, error = %e, "lmtp: worker could not be started; deferring its recipients");
                } else {
                    warn!(domain, error = %e, "lmtp: worker unreachable; deferring its recipients");
                }
                group.failed = Some(unavailable(why));
                return group;
            }
        };
        let label = match routed.remote_host() {
            Some(host) => format!("{domain} {} via {host}", self.worker_socket),
            None => format!("{domain} {}", self.worker_socket),
        };
        let pid = routed.pid();
        let remote = routed.remote_host().map(str::to_string);
        let crate::cluster::Routed { stream, hold } = routed;
        match WorkerConn::open(
            stream,
            &label,
            &self.hostname,
            self.worker_timeout,
            &tx.sender,
            tx.body,
        )
        .await
        {
            Ok(conn) => {
                debug!(domain, pid, owner = ?remote, waited = ?started.elapsed(), "lmtp: worker session open");
                group.conn = Some(conn);
                group._hold = Some(hold);
            }
            Err(e) => {
                warn!(domain, error = %e, "lmtp: cannot open an LMTP session with the worker");
                group.failed = Some(unavailable("worker not answering"));
            }
        }
        group
    }

    /// Hands the message to every group, all groups at once (a slow worker does not hold
    /// up another domain), and returns one reply per accepted recipient.
    async fn deliver(&self, tx: &Transaction, groups: &mut [Group]) -> Vec<Reply> {
        type Sent = Result<Vec<Reply>, (Vec<Reply>, super::worker::WorkerError)>;
        type Sending<'a> = Pin<Box<dyn Future<Output = (usize, Sent)> + Send + 'a>>;
        let message = &tx.message[..];
        let mut sending: Vec<Sending<'_>> = groups
            .iter_mut()
            .enumerate()
            .filter(|(_, g)| !g.accepted.is_empty())
            .filter_map(|(gi, g)| {
                let n = g.accepted.len();
                let conn = g.conn.as_mut()?;
                Some(Box::pin(async move { (gi, conn.send(message, n).await) }) as Pin<Box<_>>)
            })
            .collect();
        let mut done: Vec<(usize, Sent)> = Vec::with_capacity(sending.len());
        std::future::poll_fn(|cx| {
            sending.retain_mut(|f| match f.as_mut().poll(cx) {
                Poll::Ready(r) => {
                    done.push(r);
                    false
                }
                Poll::Pending => true,
            });
            if sending.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        drop(sending);
        let mut replies: Vec<Option<Reply>> = vec![None; tx.recipients.len()];
        for (gi, sent) in done {
            let g = &mut groups[gi];
            let got = match sent {
                Ok(r) => r,
                Err((r, e)) => {
                    warn!(domain = %g.domain, error = %e, "lmtp: worker failed during the message");
                    g.conn = None;
                    r
                }
            };
            let mut got = got.into_iter();
            for &i in &g.accepted {
                replies[i] = Some(got.next().unwrap_or_else(|| {
                    Reply::new(
                        451,
                        "4.4.2",
                        format!(
                            "<{}>: Mailbox worker for {} failed, try again later",
                            tx.recipients[i], g.domain
                        ),
                    )
                }));
            }
        }
        replies
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| {
                    Reply::new(
                        451,
                        "4.3.0",
                        format!("<{}>: Delivery status unknown", tx.recipients[i]),
                    )
                })
            })
            .collect()
    }

    /// Counts and logs one recipient's outcome.
    fn record(&self, sender: &str, recipient: &str, reply: &Reply, stage: &'static str) {
        let (status, counter) = if reply.is_positive() {
            ("delivered", &self.counters.delivered)
        } else if reply.is_transient() {
            ("deferred", &self.counters.deferred)
        } else {
            ("rejected", &self.counters.rejected)
        };
        counter.fetch_add(1, Ordering::Relaxed);
        info!(
            sender,
            recipient,
            status,
            stage,
            reply = %reply,
            delivered = self.counters.delivered.load(Ordering::Relaxed),
            deferred = self.counters.deferred.load(Ordering::Relaxed),
            rejected = self.counters.rejected.load(Ordering::Relaxed),
            "lmtp: delivery"
        );
    }

    fn hook_session(&self, peer: &str) -> HookSession {
        HookSession {
            protocol: "lmtp".into(),
            // A unix-socket peer has no address (listen names the socket path).
            client_address: if peer.starts_with('/') {
                String::new()
            } else {
                peer.to_string()
            },
            local_address: self.local.clone(),
            secured: false,
        }
    }
}

/// Binds `[lmtp] listen` now and returns the service future.
pub async fn start(
    section: LmtpSection,
    registry: Option<Arc<Live>>,
    plugins: Option<Arc<PluginHost>>,
    router: Router,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ServiceFuture> {
    let listener = listen::bind(
        &section.listen,
        listen::parse_mode(&section.socket_mode),
        "[lmtp] listen",
    )
    .await?;
    let local = listen::local(&listener);
    if !router.can_route() {
        warn!("[lmtp] without [fastcontainer]: every hosted recipient is deferred (no workers)");
    }
    info!(listen = %local, hooks = ?section.hooks, worker_socket = %section.worker_socket, "lmtp listening");
    let limit = Arc::new(Semaphore::new(section.max_connections));
    let idle = section.idle_timeout;
    let front = Arc::new(Front::new(&section, registry, plugins, router, local));
    Ok(Box::pin(listen::serve(
        "lmtp",
        listener,
        limit,
        shutdown,
        move |stream, peer, shutdown| {
            let front = front.clone();
            async move { connection(stream, &peer, &front, idle, shutdown).await }
        },
    )))
}

/// Serves one LMTP connection until QUIT, EOF, the idle timeout or shutdown (at a
/// transaction boundary).
pub async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: &str,
    front: &Front,
    idle: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut session = Session::new(&front.hostname, front.limits);
    let mut buf = BytesMut::with_capacity(8192);
    let mut wait = listen::ReadWait::new(idle, &shutdown);
    let mut groups: Vec<Group> = Vec::new();
    let mut serial = 0;
    loop {
        while let Some(step) = session.advance(&mut buf) {
            match step {
                Step::Recipient(address) => {
                    let Some(tx) = session.transaction() else {
                        session.recipient(&address, Some(Reply::new(503, "5.5.1", "No MAIL")));
                        continue;
                    };
                    if tx.serial != serial {
                        end_groups(&mut groups).await;
                        serial = tx.serial;
                    }
                    let refused = front.recipient(peer, tx, &address, &mut groups).await;
                    if let Some(r) = &refused {
                        front.record(&tx.sender, &address, r, "rcpt");
                    }
                    session.recipient(&address, refused);
                }
                Step::Deliver => {
                    let Some(tx) = session.transaction() else {
                        session.delivered(Vec::new());
                        continue;
                    };
                    let replies = front.deliver(tx, &mut groups).await;
                    for (rcpt, r) in tx.recipients.iter().zip(&replies) {
                        front.record(&tx.sender, rcpt, r, "data");
                    }
                    session.delivered(replies);
                    end_groups(&mut groups).await;
                }
                Step::Close => break,
            }
        }
        if session.transaction().is_none() && !groups.is_empty() {
            end_groups(&mut groups).await;
        }
        if session.has_output() {
            let mut out = session.take_output();
            if !listen::write(&mut stream, &mut out, peer).await {
                break;
            }
        }
        if session.is_closed() {
            break;
        }
        if *shutdown.borrow() && buf.is_empty() && session.transaction().is_none() {
            let mut out = BytesMut::new();
            Reply::new(421, "4.3.2", format!("{} shutting down", front.hostname)).encode(&mut out);
            let _ = listen::write(&mut stream, &mut out, peer).await;
            break;
        }
        if !listen::fill(&mut stream, &mut buf, &mut wait, peer).await {
            break;
        }
    }
    end_groups(&mut groups).await;
}

/// Ends the worker sessions of a transaction (QUIT, then the leases are dropped).
async fn end_groups(groups: &mut Vec<Group>) {
    for g in groups.drain(..) {
        if let Some(conn) = g.conn {
            conn.quit().await;
        }
    }
}
