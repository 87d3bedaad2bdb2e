//! FastContainer benchmark harness (root; run by `benches/fastcontainer.sh`).
//!
//! - `cold-starts`: N × (acquire a cold domain through the manager → first answer from the
//!   worker → stop): spawn → ready as a session sees it, and teardown (SIGTERM, exit,
//!   cgroup and run dir removed). With `--dovecot TEMPLATE` the worker is Dovecot rendered
//!   from the template, and "ready" is the first successful IMAP LOGIN.
//! - `idle-domains`: memory of a running `wasmail serve` with N configured domains in its
//!   registry and `[fastcontainer]` enabled but no session: its RSS against the same
//!   server with an empty registry, and the processes it runs (idle domains must cost
//!   none).
//!
//! Figures are printed as one line per metric; the script copies them into
//! benches/RESULTS.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::sync::watch;
use wasmail::fastcontainer::Endpoint;
use wasmail::fastcontainer::config::FastContainerSection;
use wasmail::fastcontainer::manager::{Manager, Settings};
use wasmail::fastcontainer::spawn::{LinuxSpawner, LinuxSpawnerConfig};
use wasmail::registry::password::hash_password;
use wasmail::registry::sqlite::SqliteRegistry;
use wasmail::registry::{Domain, Mailbox, Registry};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cold start → ready and teardown latency over N starts.
    ColdStarts {
        /// How many starts.
        #[arg(long, default_value_t = 200)]
        n: usize,
        /// The container's PID 1 binary (`wasmail-container-init` or `wasmail`).
        #[arg(long)]
        init: PathBuf,
        /// The trivial worker binary (`fc-test-worker`).
        #[arg(long, conflicts_with = "dovecot")]
        worker: Option<PathBuf>,
        /// Use Dovecot rendered from this template instead.
        #[arg(long)]
        dovecot: Option<PathBuf>,
        /// Switch the host's cgroups to favordynmods first (as `[fastcontainer]
        /// favordynmods = true` does; stays on until reboot).
        #[arg(long)]
        favordynmods: bool,
        /// Build every root from scratch (`[fastcontainer] template_roots = false`).
        #[arg(long)]
        no_template: bool,
    },
    /// RSS and processes of `wasmail serve` with N idle domains.
    IdleDomains {
        /// Domains in the registry.
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        /// The wasmail binary.
        #[arg(long)]
        wasmail: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    // RUST_LOG=wasmail=debug shows where each start's time goes (fastcontainer.spawn).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match Args::parse().cmd {
        Cmd::ColdStarts {
            n,
            init,
            worker,
            dovecot,
            favordynmods,
            no_template,
        } => {
            if favordynmods {
                let at = wasmail::fastcontainer::cgroup::favor_dynmods(&std::fs::read_to_string(
                    "/proc/self/mountinfo",
                )?)?;
                println!("cgroups: favordynmods on ({})", at.display());
            }
            cold_starts(
                n,
                &init,
                worker.as_deref(),
                dovecot.as_deref(),
                !no_template,
            )
        }
        Cmd::IdleDomains { n, wasmail } => idle_domains(n, &wasmail),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what}: n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.9)),
        ms(percentile(&v, 0.99)),
        ms(*v.last().unwrap())
    );
}

fn cold_starts(
    n: usize,
    init: &Path,
    worker: Option<&Path>,
    dovecot: Option<&Path>,
    template_roots: bool,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut mounts = vec!["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    let worker_table = match (worker, dovecot) {
        (Some(w), None) => {
            mounts.push(w.parent().unwrap().display().to_string());
            format!(
                "argv = [\"{}\", \"{{run_dir}}/sock\"]\nready = \"unix:sock\"",
                w.display()
            )
        }
        (None, Some(t)) => format!(
            "argv = [\"/usr/sbin/dovecot\", \"-F\", \"-c\", \"{{run_dir}}/worker.conf\"]\n\
             ready = \"unix:imap\"\npasswd_file = \"users\"\n\
             files = {{ \"worker.conf\" = \"{}\" }}",
            t.display()
        ),
        _ => anyhow::bail!("give --worker or --dovecot"),
    };
    let text = format!(
        "run_root = \"{tmp}/run\"\nstorage_root = \"{tmp}/mail\"\ncgroup_root = \"wasmail-bench\"\n\
         system_mounts = {mounts:?}\nidle = \"fixed\"\nidle_timeout = \"1h\"\n\
         start_timeout = \"10s\"\ntemplate_roots = {template_roots}\n\
         [worker]\n{worker_table}\n",
        tmp = tmp.path().display()
    );
    let section: FastContainerSection = toml::from_str(&text)?;
    let registry = SqliteRegistry::open_in_memory()?;
    registry.add_domain(&Domain {
        name: "bench.example".into(),
        ..Domain::default()
    })?;
    registry.add_mailbox(&Mailbox {
        address: "bob@bench.example".into(),
        password_hash: Some(hash_password("pw-bob")?),
        ..Mailbox::default()
    })?;
    let snapshot = Arc::new(registry.snapshot()?);
    let spawner = LinuxSpawner::new(LinuxSpawnerConfig {
        init_exe: init.to_path_buf(),
        cgroup_parent: section.cgroup_root.clone().into(),
        roots_dir: tmp.path().join("roots"),
        subreaper: true,
        template_roots: section.template_roots,
    })?;
    let settings = Settings::from_section(&section);
    let manager = Manager::new(
        Arc::new(spawner),
        move |d| section.spec_with_registry(d, Some(&snapshot)),
        settings,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let m = manager.clone();
    let reaper = rt.spawn(async move { m.run_reaper(stop_rx).await });
    let kind = if dovecot.is_some() {
        "dovecot"
    } else {
        "trivial"
    };
    let (mut ready, mut teardown) = (Vec::new(), Vec::new());
    // One warm-up start (page cache, cgroup hierarchy), not counted.
    for i in 0..=n {
        let t0 = Instant::now();
        let lease = rt.block_on(manager.acquire("bench.example"))?;
        if dovecot.is_some() {
            imap_login(lease.endpoint())?;
        } else {
            greet(lease.endpoint())?;
        }
        let took = t0.elapsed();
        drop(lease);
        let t1 = Instant::now();
        let stopped = rt.block_on(manager.stop("bench.example"));
        anyhow::ensure!(stopped == 1, "stop found {stopped} workers");
        if i > 0 {
            ready.push(took);
            teardown.push(t1.elapsed());
        }
    }
    let what = if dovecot.is_some() {
        "cold start → first IMAP login"
    } else {
        "cold start → ready (first answer)"
    };
    let roots = if template_roots {
        "template roots"
    } else {
        "roots from scratch"
    };
    report(&format!("{kind} ({roots}) {what}"), ready);
    report(
        &format!("{kind} ({roots}) teardown (SIGTERM → cleaned up)"),
        teardown,
    );
    let _ = stop_tx.send(true);
    rt.block_on(reaper)?;
    Ok(())
}

fn greet(endpoint: &Endpoint) -> anyhow::Result<()> {
    let Endpoint::Unix(p) = endpoint else {
        anyhow::bail!("unix endpoint expected")
    };
    let mut s = UnixStream::connect(p)?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    anyhow::ensure!(buf[..n].starts_with(b"hello "), "unexpected greeting");
    Ok(())
}

fn imap_login(endpoint: &Endpoint) -> anyhow::Result<()> {
    let Endpoint::Unix(p) = endpoint else {
        anyhow::bail!("unix endpoint expected")
    };
    let s = UnixStream::connect(p)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line)?;
    anyhow::ensure!(line.starts_with("* OK"), "greeting: {line}");
    w.write_all(b"a LOGIN bob@bench.example pw-bob\r\n")?;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        anyhow::ensure!(!line.is_empty(), "closed during LOGIN");
        if line.starts_with("a ") {
            anyhow::ensure!(line.starts_with("a OK"), "login: {line}");
            return Ok(());
        }
    }
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// Processes whose parent is `pid`.
fn children(pid: u32) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .count()
}

fn idle_domains(n: usize, wasmail: &Path) -> anyhow::Result<()> {
    let mut figures = Vec::new();
    for domains in [0, n] {
        let tmp = tempfile::tempdir()?;
        let db = tmp.path().join("registry.db");
        let registry = SqliteRegistry::open(&db)?;
        for i in 0..domains {
            registry.add_domain(&Domain {
                name: format!("d{i}.example"),
                ..Domain::default()
            })?;
        }
        drop(registry);
        let dir = tmp.path().display();
        let config = format!(
            "[registry]\npath = \"{dir}/registry.db\"\n\
             [fastcontainer]\nrun_root = \"{dir}/run\"\nstorage_root = \"{dir}/mail\"\n\
             cgroup_root = \"wasmail-bench\"\n\
             [fastcontainer.worker]\nargv = [\"/usr/sbin/dovecot\", \"-F\"]\n\
             [lookup]\nsocketmap = \"unix:{dir}/sm.sock\"\n"
        );
        std::fs::write(tmp.path().join("wasmail.toml"), config)?;
        let log = tmp.path().join("serve.log");
        let mut child = std::process::Command::new(wasmail)
            .args(["serve", "--config"])
            .arg(tmp.path().join("wasmail.toml"))
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let start = Instant::now();
        while !std::fs::read_to_string(&log)?.contains("wasmail serving") {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("serve exited {status}: {}", std::fs::read_to_string(&log)?);
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "serve did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let it settle (registry refresh, allocator), then ask one lookup per 100
        // domains so every code path that touches the domains has run.
        std::thread::sleep(Duration::from_secs(2));
        let mut sm = UnixStream::connect(tmp.path().join("sm.sock"))?;
        for i in (0..domains).step_by(100) {
            let req = format!("virtual_mailbox_domains d{i}.example");
            sm.write_all(format!("{}:{req},", req.len()).as_bytes())?;
            let mut buf = [0u8; 64];
            let got = sm.read(&mut buf)?;
            anyhow::ensure!(
                buf[..got].windows(3).any(|w| w == b":OK"),
                "lookup d{i}: {:?}",
                String::from_utf8_lossy(&buf[..got])
            );
        }
        let rss = rss_kib(child.id())?;
        let kids = children(child.id());
        println!("wasmail serve with {domains} idle domains: rss={rss}KiB child_processes={kids}");
        figures.push(rss);
        // SAFETY: SIGTERM to our child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait()?;
    }
    let per = (figures[1] as f64 - figures[0] as f64) * 1024.0 / n.max(1) as f64;
    println!("idle domain cost: {per:.0} bytes of wasmail RSS per configured domain, no process");
    Ok(())
}
