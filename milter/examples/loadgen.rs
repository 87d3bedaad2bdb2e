//! A milter load generator: replays Postfix's conversation for one message per connection
//! (macros included, each macro packet in the same write as its command) with N concurrent
//! MTAs, and reports sessions/s and latency percentiles.
//!
//! ```text
//! cargo run --release -p wasmail-milter --features tokio --example loadgen -- \
//!     SOCKET [CONCURRENCY=16] [MESSAGES=2000] [BODY_BYTES=4096] [HEADERS=8] [--nagle]
//! ```
//! `SOCKET` is `unix:/path`, `inet:host:port` or `inet:port@host`. `--nagle` leaves Nagle on,
//! as Postfix does, to expose milters that write one reply in several packets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmail_milter::net::{MilterClient, SocketSpec};
use wasmail_milter::{Action, OptNeg};

/// The protocol flags the last session agreed (`SMFIP_*`), printed so a run shows which
/// stages the milter answered.
static PROTOCOL: AtomicU32 = AtomicU32::new(0);

async fn one_message(
    spec: &SocketSpec,
    nodelay: bool,
    body: &[u8],
    headers: usize,
) -> Result<Action, Box<dyn std::error::Error + Send + Sync>> {
    let mut c = MilterClient::connect_with(spec, nodelay, OptNeg::POSTFIX).await?;
    let negotiated = c.negotiate().await?;
    PROTOCOL.store(negotiated.opts.protocol.bits(), Ordering::Relaxed);
    c.macros(
        b'C',
        &[
            ("j", "mx.load.test"),
            ("{daemon_name}", "smtpd"),
            ("v", "Postfix 3.7.11"),
        ],
    );
    c.connect_inet("client.load.test", "192.0.2.10", 40000)
        .await?;
    c.macros(b'H', &[]);
    c.helo("client.load.test").await?;
    c.macros(b'M', &[("{mail_addr}", "sender@load.test")]);
    c.mail("<sender@load.test>", &["SIZE=4096"]).await?;
    c.macros(b'R', &[("{rcpt_addr}", "rcpt@example.net")]);
    c.rcpt("<rcpt@example.net>", &[]).await?;
    c.macros(b'T', &[("i", "4LOADQ1")]);
    c.data().await?;
    for i in 0..headers {
        c.macros(b'L', &[("i", "4LOADQ1")]);
        c.header(&format!("X-Load-{i}"), "value of a typical header line")
            .await?;
    }
    c.macros(b'N', &[("i", "4LOADQ1")]);
    c.eoh().await?;
    c.macros(b'B', &[("i", "4LOADQ1")]);
    c.body(body).await?;
    c.macros(b'E', &[("i", "4LOADQ1")]);
    let r = c.eom().await?;
    c.abort().await?;
    c.abort().await?;
    c.quit().await?;
    Ok(r.action)
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let nagle = args.iter().any(|a| a == "--nagle");
    args.retain(|a| a != "--nagle");
    let Some(spec) = args.first() else {
        eprintln!(
            "usage: loadgen SOCKET [CONCURRENCY] [MESSAGES] [BODY_BYTES] [HEADERS] [--nagle]"
        );
        std::process::exit(2);
    };
    let spec: SocketSpec = spec.parse().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (concurrency, messages, body_len, headers) =
        (num(1, 16), num(2, 2000), num(3, 4096), num(4, 8));
    let body: Arc<Vec<u8>> = Arc::new(
        (0..body_len)
            .map(|i| {
                if i % 78 == 77 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (spec, body, next, errors) = (spec.clone(), body.clone(), next.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                let t = Instant::now();
                match one_message(&spec, !nagle, &body, headers).await {
                    Ok(Action::Continue | Action::Accept) => lat.push(t.elapsed()),
                    Ok(other) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("unexpected verdict {other:?}");
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("session failed: {e}");
                    }
                }
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("worker"));
    }
    let elapsed = start.elapsed();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "sessions={} errors={} secs={:.3} sessions_per_sec={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} concurrency={concurrency} body={body_len} headers={headers} nagle={nagle} protocol={:#x}",
        lat.len(),
        errors.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        PROTOCOL.load(Ordering::Relaxed),
    );
    if errors.load(Ordering::Relaxed) > 0 {
        std::process::exit(1);
    }
}
