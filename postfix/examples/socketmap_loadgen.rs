//! A socketmap load generator that behaves like Postfix: each connection keeps one request
//! outstanding (write a request, read its reply, repeat), as a Postfix process does with a
//! `socketmap:` table. Reports lookups/s and per-lookup latency percentiles, and fails
//! when any reply is not `OK`: a benchmark that measures `NOTFOUND`s by mistake measures
//! the wrong thing.
//!
//! ```text
//! cargo run --release -p wasmail-postfix --example socketmap_loadgen -- \
//!     (--socket PATH | --tcp HOST:PORT) --table NAME --keys K1,K2,... \
//!     [--connections 1] [--duration 10] [--warmup 1] [--json]
//! ```
//!
//! - Keys are cycled; connection `i` starts at key `i * len / connections` so connections
//!   do not ask for the same key in lock step.
//! - Each connection is an OS thread with a blocking socket, like a Postfix process (TCP
//!   keeps Nagle on, as Postfix does; one write per request, so it never waits on it).
//! - The first `--warmup` seconds (default 1) are not measured; after them, every lookup
//!   that starts and completes inside the next `--duration` seconds is: its latency is the
//!   time from just before the request is written to the decoded reply. Percentiles are
//!   exact (every latency is kept, nearest rank).
//! - Every reply, warm-up included, must be `OK`; otherwise the counts per status and the
//!   first offending key are printed and the exit status is 1.
//!
//! Output: one `key=value` line, or one JSON object with `--json`. Latencies in µs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use wasmail_postfix::socketmap::{self, MAX_REPLY, Reply, Request};

/// Where the server listens.
#[derive(Debug, Clone)]
enum Target {
    Unix(String),
    Tcp(String),
}

/// Parsed command line.
#[derive(Debug)]
struct Args {
    target: Target,
    table: String,
    keys: Vec<String>,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    json: bool,
}

const USAGE: &str = "usage: socketmap_loadgen (--socket PATH | --tcp HOST:PORT) --table NAME \
--keys K1,K2,... [--connections N] [--duration SECS] [--warmup SECS] [--json]";

fn parse_args() -> Result<Args, String> {
    let mut target = None;
    let mut table = None;
    let mut keys = None;
    let mut connections = 1;
    let mut duration = 10.0;
    let mut warmup = 1.0;
    let mut json = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => target = Some(Target::Unix(value()?)),
            "--tcp" => target = Some(Target::Tcp(value()?)),
            "--table" => table = Some(value()?),
            "--keys" => {
                keys = Some(
                    value()?
                        .split(',')
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                );
            }
            "--connections" => {
                connections = value()?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?;
            }
            "--duration" => duration = value()?.parse().map_err(|e| format!("--duration: {e}"))?,
            "--warmup" => warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--json" => json = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let keys = keys.filter(|k| !k.is_empty()).ok_or("--keys is required")?;
    if connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let secs =
        |s: f64, what: &str| Duration::try_from_secs_f64(s).map_err(|e| format!("{what}: {e}"));
    Ok(Args {
        target: target.ok_or("--socket or --tcp is required")?,
        table: table.ok_or("--table is required")?,
        keys,
        connections,
        duration: secs(duration, "--duration")?,
        warmup: secs(warmup, "--warmup")?,
        json,
    })
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

fn connect(target: &Target) -> std::io::Result<Box<dyn Conn>> {
    let timeout = Some(Duration::from_secs(5));
    Ok(match target {
        Target::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(timeout)?;
            Box::new(s)
        }
        Target::Tcp(addr) => {
            let s = TcpStream::connect(addr)?;
            s.set_read_timeout(timeout)?;
            Box::new(s)
        }
    })
}

/// What one connection saw.
#[derive(Debug, Default)]
struct ConnStats {
    /// Latencies of the measured lookups, nanoseconds.
    latencies: Vec<u32>,
    /// Replies other than `OK`: (status, count).
    not_ok: Vec<(&'static str, u64)>,
    /// The first reply other than `OK`, with its key.
    first_not_ok: Option<String>,
    /// The value of the first `OK` reply.
    first_value: Option<String>,
}

impl ConnStats {
    fn not_ok(&mut self, key: &str, reply: &Reply) {
        let status = reply.status();
        match self.not_ok.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => self.not_ok.push((status, 1)),
        }
        self.first_not_ok
            .get_or_insert_with(|| format!("{key} -> {reply:?}"));
    }
}

/// One Postfix-like client: request, reply, repeat until `end`.
fn run_connection(
    target: &Target,
    requests: &[(String, Vec<u8>)],
    first: usize,
    measure_from: Instant,
    end: Instant,
) -> Result<ConnStats, String> {
    let mut conn = connect(target).map_err(|e| format!("connect {target:?}: {e}"))?;
    let mut stats = ConnStats::default();
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut i = first;
    loop {
        let (key, wire) = &requests[i % requests.len()];
        i += 1;
        let start = Instant::now();
        if start >= end {
            return Ok(stats);
        }
        conn.write_all(wire)
            .map_err(|e| format!("write to {target:?}: {e}"))?;
        let reply = loop {
            match socketmap::decode_reply(&mut buf, MAX_REPLY) {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(e) => return Err(format!("bad reply from {target:?}: {e}")),
            }
            let n = conn
                .read(&mut chunk)
                .map_err(|e| format!("read from {target:?}: {e}"))?;
            if n == 0 {
                return Err(format!("{target:?} closed the connection"));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let done = Instant::now();
        match &reply {
            Reply::Ok(v) => {
                if stats.first_value.is_none() {
                    stats.first_value = Some(String::from_utf8_lossy(v).into_owned());
                }
            }
            other => stats.not_ok(key, other),
        }
        if start >= measure_from && done <= end {
            let nanos = (done - start).as_nanos();
            stats
                .latencies
                .push(u32::try_from(nanos).unwrap_or(u32::MAX));
        }
    }
}

/// Nearest-rank percentile of sorted `v` (nanoseconds), in µs.
fn percentile_us(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut requests = Vec::with_capacity(args.keys.len());
    for key in &args.keys {
        let mut wire = BytesMut::new();
        if let Err(e) =
            socketmap::encode_request(&Request::new(args.table.clone(), key.clone()), &mut wire)
        {
            eprintln!("--table {}: {e}", args.table);
            return ExitCode::from(2);
        }
        requests.push((key.clone(), wire.to_vec()));
    }
    let measure_from = Instant::now() + args.warmup;
    let end = measure_from + args.duration;
    let results: Vec<Result<ConnStats, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.connections)
            .map(|c| {
                let first = c * requests.len() / args.connections;
                let (target, requests) = (&args.target, &requests);
                s.spawn(move || run_connection(target, requests, first, measure_from, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });

    let mut latencies = Vec::new();
    let mut not_ok: Vec<(&'static str, u64)> = Vec::new();
    let mut first_not_ok = None;
    let mut first_value = None;
    let mut failed = false;
    for r in results {
        match r {
            Ok(s) => {
                latencies.extend_from_slice(&s.latencies);
                for (status, n) in s.not_ok {
                    match not_ok.iter_mut().find(|(x, _)| *x == status) {
                        Some((_, m)) => *m += n,
                        None => not_ok.push((status, n)),
                    }
                }
                first_not_ok = first_not_ok.or(s.first_not_ok);
                first_value = first_value.or(s.first_value);
            }
            Err(e) => {
                eprintln!("socketmap_loadgen: {e}");
                failed = true;
            }
        }
    }
    latencies.sort_unstable();
    let lookups = latencies.len();
    let rate = lookups as f64 / args.duration.as_secs_f64();
    let (p50, p90, p99, p999) = (
        percentile_us(&latencies, 50.0),
        percentile_us(&latencies, 90.0),
        percentile_us(&latencies, 99.0),
        percentile_us(&latencies, 99.9),
    );
    let max = latencies.last().map_or(0.0, |&n| f64::from(n) / 1000.0);
    let bad: u64 = not_ok.iter().map(|(_, n)| n).sum();
    let value = first_value.unwrap_or_default();
    if args.json {
        println!(
            "{{\"table\":{},\"connections\":{},\"duration_s\":{},\"lookups\":{lookups},\
             \"lookups_per_sec\":{rate:.0},\"p50_us\":{p50:.1},\"p90_us\":{p90:.1},\
             \"p99_us\":{p99:.1},\"p999_us\":{p999:.1},\"max_us\":{max:.1},\"not_ok\":{bad},\
             \"first_value\":{}}}",
            json_string(&args.table),
            args.connections,
            args.duration.as_secs_f64(),
            json_string(&value),
        );
    } else {
        println!(
            "table={} connections={} lookups={lookups} lookups_per_sec={rate:.0} \
             p50_us={p50:.1} p90_us={p90:.1} p99_us={p99:.1} p999_us={p999:.1} max_us={max:.1} \
             not_ok={bad} first_value={value:?}",
            args.table, args.connections,
        );
    }
    if bad > 0 {
        let counts: Vec<String> = not_ok.iter().map(|(s, n)| format!("{s}={n}")).collect();
        eprintln!(
            "socketmap_loadgen: {bad} replies were not OK ({}); first: {}",
            counts.join(" "),
            first_not_ok.unwrap_or_default()
        );
        failed = true;
    }
    if lookups == 0 {
        eprintln!("socketmap_loadgen: no lookup completed in the measured window");
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
