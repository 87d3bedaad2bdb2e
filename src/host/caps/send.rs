//! Capability `send`: queue mail for delivery through an SMTP relay, rate-limited per
//! plugin.
//!
//! [`SendQueue::queue`] validates a message (addresses, size, the plugin's rate limit) and
//! puts it on a bounded in-memory queue without blocking; a background tokio task hands
//! queued messages to the relay with lettre (plain SMTP, or STARTTLS when configured). A
//! failed delivery is retried a few times with growing pauses, then logged (message id,
//! relay, error) and counted in [`SendStats::failed`].
//!
//! The queue lives in memory only: messages queued but not yet delivered are lost when the
//! process stops. Plugins use `send` for notifications and auto-replies, not for mail that
//! must not be lost; such mail belongs in the MTA's own queue.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::address::{Address, Envelope};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::{Semaphore, mpsc};

/// Most recipients one queued message may have.
pub const MAX_RECIPIENTS: usize = 100;

/// How many deliveries run at the same time.
const PARALLEL_DELIVERIES: usize = 4;

/// Pauses before the second, third, ... delivery attempt.
const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
];

/// Settings of the `send` capability (`[send]` in the configuration).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(try_from = "RawSendConfig")]
pub struct SendConfig {
    /// The relay as `host:port` (`[v6addr]:port` for IPv6 literals). Default
    /// `127.0.0.1:25`.
    pub relay: String,
    /// Use STARTTLS (required, with certificate verification). Default: `false` when the
    /// relay is a loopback address or `localhost`, `true` otherwise.
    pub starttls: bool,
    /// Messages each plugin may queue per minute (a token bucket: the full amount may be
    /// used at once, then it refills evenly over the minute). 0 disables sending. Default
    /// 10.
    pub per_minute: u32,
    /// Largest message in bytes. Default 1 MiB.
    pub max_bytes: usize,
    /// Messages the queue holds before [`SendQueue::queue`] refuses more. Default 1000.
    pub queue_capacity: usize,
    /// Timeout of each SMTP command during delivery. Default 30 s.
    pub timeout: Duration,
}

impl Default for SendConfig {
    fn default() -> Self {
        SendConfig {
            relay: "127.0.0.1:25".to_owned(),
            starttls: false,
            per_minute: 10,
            max_bytes: 1024 * 1024,
            queue_capacity: 1000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What the configuration file says; `starttls` may be left out.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSendConfig {
    relay: String,
    starttls: Option<bool>,
    per_minute: u32,
    max_bytes: usize,
    queue_capacity: usize,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
}

impl Default for RawSendConfig {
    fn default() -> Self {
        let d = SendConfig::default();
        RawSendConfig {
            relay: d.relay,
            starttls: None,
            per_minute: d.per_minute,
            max_bytes: d.max_bytes,
            queue_capacity: d.queue_capacity,
            timeout: d.timeout,
        }
    }
}

impl TryFrom<RawSendConfig> for SendConfig {
    type Error = String;

    fn try_from(raw: RawSendConfig) -> Result<Self, String> {
        let (host, _) = split_relay(&raw.relay)?;
        if raw.queue_capacity == 0 {
            return Err("send.queue_capacity must be at least 1".into());
        }
        Ok(SendConfig {
            starttls: raw.starttls.unwrap_or(!is_loopback(&host)),
            relay: raw.relay,
            per_minute: raw.per_minute,
            max_bytes: raw.max_bytes,
            queue_capacity: raw.queue_capacity,
            timeout: raw.timeout,
        })
    }
}

/// Splits `host:port` / `[v6]:port` into host and port.
fn split_relay(relay: &str) -> Result<(String, u16), String> {
    let bad = || format!("send.relay {relay:?} is not host:port");
    let (host, port) = relay.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // IPv6 literals must be bracketed.
        Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
        Some(_) => return Err(bad()),
        None if host.is_empty() || host.contains(':') => return Err(bad()),
        None => host,
    };
    let port = port.parse::<u16>().map_err(|_| bad())?;
    Ok((host.to_owned(), port))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A message to send. Mirrors the WIT record `send.outgoing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Envelope sender; empty for the null sender (`MAIL FROM:<>`).
    pub sender: String,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// The complete message, headers and body, CRLF line ends.
    pub raw: Vec<u8>,
}

/// Counters of a [`SendQueue`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Messages accepted into the queue.
    pub queued: u64,
    /// Messages the relay accepted.
    pub sent: u64,
    /// Messages given up on after all delivery attempts.
    pub failed: u64,
    /// Calls to [`SendQueue::queue`] that were refused (invalid, too big, rate limit,
    /// queue full).
    pub rejected: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
}

/// One plugin's token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A validated message on its way to the relay.
#[derive(Debug)]
struct Job {
    plugin: String,
    envelope: Envelope,
    raw: Vec<u8>,
}

#[derive(Debug)]
struct Shared {
    config: SendConfig,
    counters: Counters,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Handle to the outgoing mail queue. Cloning is cheap; all clones share one queue.
#[derive(Debug, Clone)]
pub struct SendQueue {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl SendQueue {
    /// Checks the configuration and spawns the delivery task on `runtime`.
    pub fn start(config: &SendConfig, runtime: &tokio::runtime::Handle) -> anyhow::Result<Self> {
        Self::start_with_retry_delays(config, runtime, RETRY_DELAYS.to_vec())
    }

    fn start_with_retry_delays(
        config: &SendConfig,
        runtime: &tokio::runtime::Handle,
        retry_delays: Vec<Duration>,
    ) -> anyhow::Result<Self> {
        let (host, port) = split_relay(&config.relay).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            config.queue_capacity > 0,
            "send.queue_capacity must be at least 1"
        );
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .timeout(Some(config.timeout));
        if config.starttls {
            let tls = TlsParameters::new(host)
                .map_err(|e| anyhow::anyhow!("TLS setup for relay {}: {e}", config.relay))?;
            builder = builder.tls(Tls::Required(tls));
        }
        let transport = builder.build();
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let shared = Arc::new(Shared {
            config: config.clone(),
            counters: Counters::default(),
            buckets: Mutex::new(HashMap::new()),
        });
        runtime.spawn(deliver_all(rx, transport, shared.clone(), retry_delays));
        Ok(SendQueue { tx, shared })
    }

    /// Queues `message` on behalf of `plugin` without blocking.
    ///
    /// Refuses (with a reason for the plugin) a message that has no recipients, more than
    /// [`MAX_RECIPIENTS`], an address lettre does not accept, more than `max_bytes`
    /// bytes, or that would exceed the plugin's `per_minute` rate; and any message when
    /// the queue is full or the delivery task has stopped. A refused message does not use
    /// up the plugin's rate.
    pub fn queue(&self, plugin: &str, message: Outgoing) -> Result<(), String> {
        let result = self.try_queue(plugin, message);
        if result.is_err() {
            self.shared
                .counters
                .rejected
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn try_queue(&self, plugin: &str, message: Outgoing) -> Result<(), String> {
        let config = &self.shared.config;
        if message.raw.len() > config.max_bytes {
            return Err(format!(
                "message too large: {} bytes (limit {})",
                message.raw.len(),
                config.max_bytes
            ));
        }
        if message.raw.is_empty() {
            return Err("empty message".into());
        }
        if message.recipients.is_empty() {
            return Err("no recipients".into());
        }
        if message.recipients.len() > MAX_RECIPIENTS {
            return Err(format!(
                "too many recipients: {} (limit {MAX_RECIPIENTS})",
                message.recipients.len()
            ));
        }
        let sender = match strip_brackets(&message.sender) {
            "" => None,
            s => Some(
                s.parse::<Address>()
                    .map_err(|e| format!("invalid sender {:?}: {e}", message.sender))?,
            ),
        };
        let recipients = message
            .recipients
            .iter()
            .map(|r| {
                strip_brackets(r)
                    .parse::<Address>()
                    .map_err(|e| format!("invalid recipient {r:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let envelope = Envelope::new(sender, recipients).map_err(|e| e.to_string())?;

        // Reserve the queue slot first so a full queue does not eat rate tokens.
        let permit = self.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => "send queue full, try again later".to_owned(),
            mpsc::error::TrySendError::Closed(()) => "send queue stopped".to_owned(),
        })?;
        self.take_token(plugin)?;
        permit.send(Job {
            plugin: plugin.to_owned(),
            envelope,
            raw: normalize_line_ends(message.raw),
        });
        self.shared.counters.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn take_token(&self, plugin: &str) -> Result<(), String> {
        let per_minute = self.shared.config.per_minute;
        if per_minute == 0 {
            return Err("sending is disabled (send.per_minute = 0)".into());
        }
        let capacity = f64::from(per_minute);
        let now = Instant::now();
        let mut buckets = self
            .shared
            .buckets
            .lock()
            .map_err(|_| "send rate limiter unavailable".to_owned())?;
        let bucket = buckets.entry(plugin.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * capacity / 60.0).min(capacity);
        bucket.updated = now;
        if bucket.tokens < 1.0 {
            return Err(format!(
                "rate limit: at most {per_minute} messages per minute"
            ));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// The queue's counters.
    pub fn stats(&self) -> SendStats {
        let c = &self.shared.counters;
        SendStats {
            queued: c.queued.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Turns bare LF line ends into CRLF and drops one final CRLF: lettre ends the DATA
/// section with `CRLF . CRLF` itself, so the final line end would otherwise become an
/// extra empty line.
fn normalize_line_ends(raw: Vec<u8>) -> Vec<u8> {
    let mut out = if raw
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
    {
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
        for (i, &b) in raw.iter().enumerate() {
            if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
                out.push(b'\r');
            }
            out.push(b);
        }
        out
    } else {
        raw
    };
    if out.ends_with(b"\r\n") {
        out.truncate(out.len() - 2);
    }
    out
}

fn strip_brackets(address: &str) -> &str {
    let address = address.trim();
    address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address)
}

/// The Message-ID of `raw` for log lines, if it has one in its header block.
fn message_id(raw: &[u8]) -> Option<String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    raw[..end].split(|&b| b == b'\n').find_map(|line| {
        let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
        name.eq_ignore_ascii_case(b"message-id")
            .then(|| String::from_utf8_lossy(value[1..].trim_ascii()).into_owned())
    })
}

/// The delivery task: takes jobs off the queue and delivers up to
/// [`PARALLEL_DELIVERIES`] of them at a time. Ends when every [`SendQueue`] handle is gone
/// and the queue is empty.
async fn deliver_all(
    mut rx: mpsc::Receiver<Job>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    shared: Arc<Shared>,
    retry_delays: Vec<Duration>,
) {
    let slots = Arc::new(Semaphore::new(PARALLEL_DELIVERIES));
    let retry_delays: Arc<[Duration]> = retry_delays.into();
    while let Some(job) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let transport = transport.clone();
        let shared = shared.clone();
        let retry_delays = retry_delays.clone();
        tokio::spawn(async move {
            deliver(&transport, &shared, &retry_delays, job).await;
            drop(slot);
        });
    }
}

async fn deliver(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    shared: &Shared,
    retry_delays: &[Duration],
    job: Job,
) {
    let relay = &shared.config.relay;
    let id = message_id(&job.raw).unwrap_or_default();
    let mut attempt = 0;
    loop {
        match transport.send_raw(&job.envelope, &job.raw).await {
            Ok(_) => {
                shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(plugin = %job.plugin, message_id = %id, %relay, "sent");
                return;
            }
            Err(err) => {
                let permanent = err.is_permanent();
                match retry_delays.get(attempt) {
                    Some(delay) if !permanent => {
                        tracing::info!(
                            plugin = %job.plugin, message_id = %id, %relay, error = %err,
                            retry_in = ?delay, "delivery failed, will retry"
                        );
                        tokio::time::sleep(*delay).await;
                        attempt += 1;
                    }
                    _ => {
                        shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            plugin = %job.plugin, message_id = %id, %relay, error = %err,
                            attempts = attempt + 1, "delivery failed, message dropped"
                        );
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// What the fake SMTP server received in one transaction.
    #[derive(Debug, Clone, Default)]
    struct Received {
        mail_from: String,
        rcpt_to: Vec<String>,
        data: Vec<u8>,
    }

    /// A minimal ESMTP receiver on 127.0.0.1:0. `fail_rcpt` makes it answer RCPT with
    /// this reply instead of 250.
    async fn smtp_server(
        fail_rcpt: Option<&'static str>,
    ) -> (String, mpsc::UnboundedReceiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read);
                    write.write_all(b"220 test ESMTP\r\n").await.unwrap();
                    let mut current = Received::default();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let upper = line.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") {
                            b"250-test\r\n250 8BITMIME\r\n"
                        } else if upper.starts_with("HELO") {
                            b"250 test\r\n"
                        } else if upper.starts_with("MAIL FROM:") {
                            current.mail_from = line[10..].trim().to_owned();
                            b"250 ok\r\n"
                        } else if upper.starts_with("RCPT TO:") {
                            if let Some(reply) = fail_rcpt {
                                write.write_all(reply.as_bytes()).await.unwrap();
                                continue;
                            }
                            current.rcpt_to.push(line[8..].trim().to_owned());
                            b"250 ok\r\n"
                        } else if upper.starts_with("DATA") {
                            write.write_all(b"354 go ahead\r\n").await.unwrap();
                            loop {
                                let mut data_line = Vec::new();
                                if lines.read_until(b'\n', &mut data_line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if data_line == b".\r\n" {
                                    break;
                                }
                                current.data.extend_from_slice(&data_line);
                            }
                            tx.send(std::mem::take(&mut current)).unwrap();
                            b"250 queued\r\n"
                        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                            b"250 ok\r\n"
                        } else if upper.starts_with("QUIT") {
                            write.write_all(b"221 bye\r\n").await.unwrap();
                            return;
                        } else {
                            b"502 not implemented\r\n"
                        };
                        write.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        (addr, rx)
    }

    fn config(relay: &str) -> SendConfig {
        SendConfig {
            relay: relay.to_owned(),
            timeout: Duration::from_secs(5),
            ..SendConfig::default()
        }
    }

    fn message() -> Outgoing {
        Outgoing {
            sender: "notify@example.com".into(),
            recipients: vec!["alice@example.org".into(), "<bob@example.net>".into()],
            raw: b"From: notify@example.com\r\nTo: alice@example.org\r\n\
                   Subject: Hello\r\nMessage-ID: <n1@example.com>\r\n\r\n\
                   Line one\r\n.dot line\r\n"
                .to_vec(),
        }
    }

    async fn wait_for(queue: &SendQueue, what: impl Fn(SendStats) -> bool) -> SendStats {
        for _ in 0..500 {
            let stats = queue.stats();
            if what(stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out; stats {:?}", queue.stats());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn delivers_to_relay() {
        let (relay, mut received) = smtp_server(None).await;
        let queue = SendQueue::start(&config(&relay), &tokio::runtime::Handle::current()).unwrap();
        queue.queue("notifier", message()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.mail_from, "<notify@example.com>");
        assert_eq!(got.rcpt_to, ["<alice@example.org>", "<bob@example.net>"]);
        let data = String::from_utf8(got.data).unwrap();
        assert!(data.starts_with("From: notify@example.com\r\n"), "{data}");
        // Dot-stuffed on the wire.
        assert!(data.ends_with("\r\nLine one\r\n..dot line\r\n"), "{data:?}");
        assert!(!data.ends_with("\r\n\r\n"), "no extra empty line: {data:?}");
        let stats = wait_for(&queue, |s| s.sent == 1).await;
        assert_eq!(
            stats,
            SendStats {
                queued: 1,
                sent: 1,
                failed: 0,
                rejected: 0
            }
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn null_sender() {
        let (relay, mut received) = smtp_server(None).await;
        let queue = SendQueue::start(&config(&relay), &tokio::runtime::Handle::current()).unwrap();
        let mut msg = message();
        msg.sender = String::new();
        queue.queue("bouncer", msg).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.mail_from, "<>");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn rate_limit_per_plugin() {
        let (relay, _received) = smtp_server(None).await;
        let cfg = SendConfig {
            per_minute: 3,
            ..config(&relay)
        };
        let queue = SendQueue::start(&cfg, &tokio::runtime::Handle::current()).unwrap();
        for _ in 0..3 {
            queue.queue("a", message()).unwrap();
        }
        let err = queue.queue("a", message()).unwrap_err();
        assert!(err.contains("rate limit"), "{err}");
        // Another plugin has its own budget.
        queue.queue("b", message()).unwrap();
        assert_eq!(queue.stats().queued, 4);
        assert_eq!(queue.stats().rejected, 1);
        // A clone shares the limiter.
        assert!(queue.clone().queue("a", message()).is_err());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn invalid_and_oversized_messages() {
        let (relay, _received) = smtp_server(None).await;
        let cfg = SendConfig {
            max_bytes: 200,
            per_minute: 2,
            ..config(&relay)
        };
        let queue = SendQueue::start(&cfg, &tokio::runtime::Handle::current()).unwrap();
        let bad = |f: &dyn Fn(&mut Outgoing)| {
            let mut msg = message();
            f(&mut msg);
            queue.queue("p", msg).unwrap_err()
        };
        let err = bad(&|m| m.sender = "not an address".into());
        assert!(err.contains("invalid sender"), "{err}");
        assert!(bad(&|m| m.recipients.push("bob@".into())).contains("invalid recipient"));
        assert!(
            bad(&|m| m.recipients = vec!["a@b.c\r\nRCPT TO:<x@y.z>".into()])
                .contains("invalid recipient")
        );
        assert!(bad(&|m| m.recipients.clear()).contains("no recipients"));
        assert!(
            bad(&|m| m.recipients = vec!["a@example.org".into(); MAX_RECIPIENTS + 1])
                .contains("too many recipients")
        );
        assert!(bad(&|m| m.raw = vec![b'x'; 201]).contains("too large"));
        assert!(bad(&|m| m.raw.clear()).contains("empty"));
        // Refused messages did not use up the rate.
        queue.queue("p", message()).unwrap();
        queue.queue("p", message()).unwrap();
        assert_eq!(queue.stats().rejected, 7);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn full_queue_refuses() {
        // Nothing listens here; the single slot stays occupied while deliveries fail.
        let cfg = SendConfig {
            queue_capacity: 1,
            per_minute: 100,
            ..config("127.0.0.1:9")
        };
        let queue = SendQueue::start_with_retry_delays(
            &cfg,
            &tokio::runtime::Handle::current(),
            vec![Duration::from_secs(60)],
        )
        .unwrap();
        let mut refused = 0;
        for _ in 0..20 {
            if queue.queue("p", message()).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0, "a queue of capacity 1 must fill up");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failed_delivery_is_retried_then_counted() {
        let cfg = config("127.0.0.1:9");
        let queue = SendQueue::start_with_retry_delays(
            &cfg,
            &tokio::runtime::Handle::current(),
            vec![Duration::from_millis(10), Duration::from_millis(10)],
        )
        .unwrap();
        queue.queue("p", message()).unwrap();
        let stats = wait_for(&queue, |s| s.failed == 1).await;
        assert_eq!(stats.sent, 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn permanent_rejection_is_not_retried() {
        let (relay, _received) = smtp_server(Some("550 5.1.1 no such user\r\n")).await;
        let queue = SendQueue::start_with_retry_delays(
            &config(&relay),
            &tokio::runtime::Handle::current(),
            vec![Duration::from_secs(3600)],
        )
        .unwrap();
        queue.queue("p", message()).unwrap();
        wait_for(&queue, |s| s.failed == 1).await;
    }

    #[test]
    fn config_parsing() {
        let c: SendConfig = toml::from_str("").unwrap();
        assert_eq!(c, SendConfig::default());
        assert!(!c.starttls);
        let c: SendConfig = toml::from_str("relay = \"smtp.example.com:587\"").unwrap();
        assert!(c.starttls, "non-loopback relays default to STARTTLS");
        let c: SendConfig =
            toml::from_str("relay = \"smtp.example.com:25\"\nstarttls = false\ntimeout = \"10s\"")
                .unwrap();
        assert!(!c.starttls);
        assert_eq!(c.timeout, Duration::from_secs(10));
        let c: SendConfig = toml::from_str("relay = \"[::1]:2525\"").unwrap();
        assert!(!c.starttls);
        let c: SendConfig = toml::from_str("relay = \"localhost:25\"").unwrap();
        assert!(!c.starttls);
        assert!(toml::from_str::<SendConfig>("relay = \"no-port\"").is_err());
        assert!(toml::from_str::<SendConfig>("relay = \"::1:25\"").is_err());
        assert!(toml::from_str::<SendConfig>("bogus = 1").is_err());
        assert!(toml::from_str::<SendConfig>("queue_capacity = 0").is_err());
    }

    #[test]
    fn line_ends() {
        assert_eq!(normalize_line_ends(b"a\nb\r\nc\n".to_vec()), b"a\r\nb\r\nc");
        assert_eq!(normalize_line_ends(b"\nx".to_vec()), b"\r\nx");
        assert_eq!(normalize_line_ends(b"a\r\n\r\nb".to_vec()), b"a\r\n\r\nb");
    }

    #[test]
    fn message_id_extraction() {
        assert_eq!(
            message_id(&message().raw).as_deref(),
            Some("<n1@example.com>")
        );
        assert_eq!(message_id(b"Subject: x\r\n\r\nMessage-ID: <no>\r\n"), None);
    }
}
