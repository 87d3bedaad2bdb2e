//! `wasmail ctl ...`: talk to a running `wasmail serve` through its admin API, found
//! through the `[admin]` section of the same configuration file.

use std::time::Duration;

use anyhow::Context as _;
use hyper::Method;
use serde::de::DeserializeOwned;

use super::api::{
    Drained, Health, HostList, LimitsChanged, LimitsView, Prewarmed, Reloaded, Stopped, WorkerList,
    WorkerView,
};
use super::client::Client;
use crate::config::Config;

/// `wasmail ctl` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCmd {
    /// List FastContainer workers: state, pid, uptime, sessions, cgroup memory/CPU/pids.
    Workers {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start DOMAIN's worker now (without a session) and wait until it is ready.
    Prewarm {
        /// The domain.
        domain: String,
    },
    /// Stop DOMAIN's workers now (SIGTERM, grace, SIGKILL); open sessions are cut.
    Stop {
        /// The domain.
        domain: String,
    },
    /// Change the cgroup limits of DOMAIN's running worker (kept for its later starts
    /// until `wasmail serve` restarts). Same spellings as [fastcontainer.limits].
    #[command(group(clap::ArgGroup::new("limit").required(true).multiple(true)))]
    Limits {
        /// The domain.
        domain: String,
        /// Memory limit, e.g. 64MiB, 1G, a byte count, or "unlimited".
        #[arg(long, group = "limit")]
        memory: Option<String>,
        /// CPU limit in CPUs, e.g. 0.5 or 2, or "unlimited".
        #[arg(long, group = "limit")]
        cpu: Option<String>,
        /// Most processes and threads, or "unlimited".
        #[arg(long, group = "limit")]
        pids: Option<String>,
    },
    /// Reload the plugin files (like SIGHUP); exits non-zero if a file was refused.
    Reload,
    /// Print the Prometheus metrics.
    Metrics,
    /// Print the server's version and services.
    Health,
    /// List the cluster's hosts (from etcd): address, capacity, live, drained, domains.
    Hosts {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drain HOST: no new domains are placed there; its workers are reaped when idle and
    /// their domains re-placed on other hosts. `--undo` takes it back into placement.
    Drain {
        /// The host name (its `[cluster] host`).
        host: String,
        /// Undrain instead.
        #[arg(long)]
        undo: bool,
    },
}

/// Runs a `wasmail ctl` subcommand against the server configured in `config`.
pub fn run(config: &Config, cmd: CtlCmd) -> anyhow::Result<()> {
    let source = config.source.as_ref().map_or_else(
        || "the configuration".to_string(),
        |p| p.display().to_string(),
    );
    let section = config.admin.as_ref().with_context(|| {
        format!("{source} has no [admin] section: the admin API is off, nothing to talk to")
    })?;
    let client = Client::new(section)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(ctl(&client, cmd))
}

async fn ctl(client: &Client, cmd: CtlCmd) -> anyhow::Result<()> {
    match cmd {
        CtlCmd::Workers { json } => {
            let answer = client.request(Method::GET, "/workers", None).await?;
            if json {
                let value: serde_json::Value = serde_json::from_slice(&answer.body)?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let list: WorkerList = decode(&answer.body)?;
                print!("{}", table(&list.workers));
            }
        }
        CtlCmd::Prewarm { domain } => {
            let p: Prewarmed = post(client, &worker_path(&domain, "prewarm")?, None).await?;
            println!("{}: ready (pid {})", p.domain, p.pid);
        }
        CtlCmd::Stop { domain } => {
            let s: Stopped = post(client, &worker_path(&domain, "stop")?, None).await?;
            println!(
                "{}: stopped {} worker{}",
                s.domain,
                s.stopped,
                if s.stopped == 1 { "" } else { "s" }
            );
        }
        CtlCmd::Limits {
            domain,
            memory,
            cpu,
            pids,
        } => {
            let mut body = serde_json::Map::new();
            for (name, value) in [("memory", memory), ("cpu", cpu), ("pids", pids)] {
                if let Some(v) = value {
                    body.insert(name.into(), v.into());
                }
            }
            let body = serde_json::Value::Object(body);
            let c: LimitsChanged =
                post(client, &worker_path(&domain, "limits")?, Some(&body)).await?;
            println!(
                "{}: {} (applied to {} running worker{})",
                c.domain,
                limits_text(&c.limits),
                c.workers,
                if c.workers == 1 { "" } else { "s" }
            );
        }
        CtlCmd::Reload => {
            let r: Reloaded = post(client, "/plugins/reload", None).await?;
            println!(
                "plugins reloaded: {} loaded{}, {} unchanged, {} refused",
                r.loaded.len(),
                if r.loaded.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.loaded.join(", "))
                },
                r.unchanged.len(),
                r.failed.len()
            );
            for f in &r.failed {
                eprintln!("refused {}: {}", f.plugin, f.error);
            }
            if !r.failed.is_empty() {
                anyhow::bail!(
                    "{} plugin file(s) refused; their previous versions keep serving",
                    r.failed.len()
                );
            }
        }
        CtlCmd::Metrics => {
            let answer = client.request(Method::GET, "/metrics", None).await?;
            print!("{}", String::from_utf8_lossy(&answer.body));
        }
        CtlCmd::Hosts { json } => {
            let answer = client.request(Method::GET, "/cluster/hosts", None).await?;
            if json {
                let value: serde_json::Value = serde_json::from_slice(&answer.body)?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let list: HostList = decode(&answer.body)?;
                print!("{}", hosts_table(&list));
            }
        }
        CtlCmd::Drain { host, undo } => {
            if !crate::cluster::config::valid_host_name(&host) {
                anyhow::bail!("not a host name: {host:?}");
            }
            let verb = if undo { "undrain" } else { "drain" };
            let d: Drained = post(client, &format!("/cluster/{verb}/{host}"), None).await?;
            if d.draining {
                println!(
                    "{}: draining (no new domains; idle workers move elsewhere)",
                    d.host
                );
            } else {
                println!("{}: back in placement", d.host);
            }
        }
        CtlCmd::Health => {
            let answer = client.request(Method::GET, "/health", None).await?;
            let h: Health = decode(&answer.body)?;
            println!(
                "{}: wasmail {} up {}; services: {}",
                h.status,
                h.version,
                duration(h.uptime_seconds),
                if h.services.is_empty() {
                    "none".into()
                } else {
                    h.services.join(", ")
                }
            );
        }
    }
    Ok(())
}

/// `/workers/DOMAIN/ACTION`, refusing what would not be one path segment.
fn worker_path(domain: &str, action: &str) -> anyhow::Result<String> {
    crate::fastcontainer::config::check_domain(domain)?;
    Ok(format!("/workers/{domain}/{action}"))
}

async fn post<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<T> {
    let answer = client.request(Method::POST, path, body).await?;
    decode(&answer.body)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(body).context("unexpected answer from the admin API")
}

/// `wasmail ctl hosts` as an aligned table.
pub fn hosts_table(list: &HostList) -> String {
    let mut rows = vec![[
        "HOST".to_string(),
        "RELAY".into(),
        "LMTP".into(),
        "CAPACITY".into(),
        "STATE".into(),
        "DOMAINS".into(),
    ]];
    for h in &list.hosts {
        let state = match (h.live, h.drained) {
            (true, false) => "live",
            (true, true) => "live,draining",
            (false, true) => "down,drained",
            (false, false) => "down",
        };
        let name = if h.host == list.host {
            format!("{}*", h.host)
        } else {
            h.host.clone()
        };
        rows.push([
            name,
            if h.relay.is_empty() {
                "-".into()
            } else {
                h.relay.clone()
            },
            h.lmtp.clone().unwrap_or_else(|| "-".into()),
            h.capacity.to_string(),
            state.into(),
            h.domains.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The workers as an aligned table.
pub fn table(workers: &[WorkerView]) -> String {
    if workers.is_empty() {
        return "no workers\n".into();
    }
    let header = [
        "DOMAIN", "STATE", "PID", "INST", "UPTIME", "SESSIONS", "MEMORY", "CPU", "PIDS",
    ];
    let dash = || "-".to_string();
    let rows: Vec<[String; 9]> = workers
        .iter()
        .map(|w| {
            [
                w.domain.clone(),
                w.state.clone(),
                w.pid.map_or_else(dash, |p| p.to_string()),
                w.instance.map_or_else(dash, |i| i.to_string()),
                w.uptime_seconds.map_or_else(dash, duration),
                w.sessions.to_string(),
                w.memory_bytes.map_or_else(dash, |m| {
                    let limit = w
                        .limits
                        .map_or_else(|| "?".into(), |l| l.memory_bytes.map_or("max".into(), size));
                    format!("{}/{limit}", size(m))
                }),
                w.cpu_usec
                    .map_or_else(dash, |c| format!("{:.2}s", c as f64 / 1e6)),
                w.pids.map_or_else(dash, |p| p.to_string()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells.zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `64MiB`, `1.5GiB`, `512B`: powers of 1024, as the configuration spells them.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Whole seconds as `1h2m3s` (sub-second uptimes as `0s`).
pub fn duration(seconds: f64) -> String {
    let secs = Duration::from_secs_f64(seconds.max(0.0)).as_secs();
    humantime::format_duration(Duration::from_secs(secs))
        .to_string()
        .replace(' ', "")
}

fn limits_text(l: &LimitsView) -> String {
    format!(
        "memory {}, cpu {}, pids {}",
        l.memory_bytes.map_or("unlimited".into(), size),
        l.cpu.map_or("unlimited".into(), |c| c.to_string()),
        l.pids.map_or("unlimited".into(), |p| p.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(domain: &str, state: &str) -> WorkerView {
        WorkerView {
            domain: domain.into(),
            state: state.into(),
            pid: None,
            instance: None,
            uptime_seconds: None,
            sessions: 0,
            memory_bytes: None,
            cpu_usec: None,
            pids: None,
            oom_kills: None,
            limits: None,
            endpoint: None,
            idle_timeout_seconds: 600.0,
            last_start_seconds: None,
            starts: 0,
            crashes: 0,
            crash_streak: 0,
            retry_in_seconds: None,
        }
    }

    #[test]
    fn table_is_aligned() {
        let mut a = worker("a.example", "ready");
        a.pid = Some(4242);
        a.instance = Some(3);
        a.uptime_seconds = Some(3723.4);
        a.sessions = 2;
        a.memory_bytes = Some(3 << 20);
        a.cpu_usec = Some(1_250_000);
        a.pids = Some(1);
        a.limits = Some(LimitsView {
            memory_bytes: Some(64 << 20),
            cpu: Some(0.5),
            pids: Some(100),
        });
        let text = table(&[a, worker("longer-name.example", "cold")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("DOMAIN               STATE  PID"),
            "{text}"
        );
        assert_eq!(
            lines[1],
            "a.example            ready  4242  3     1h2m3s  2         3MiB/64MiB  1.25s  1"
        );
        assert_eq!(
            lines[2],
            "longer-name.example  cold   -     -     -       0         -           -      -"
        );
        assert_eq!(table(&[]), "no workers\n");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size(512), "512B");
        assert_eq!(size(64 << 20), "64MiB");
        assert_eq!(size(1536 << 20), "1.5GiB");
        assert_eq!(duration(0.4), "0s");
        assert_eq!(duration(61.0), "1m1s");
    }
}
