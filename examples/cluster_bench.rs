//! Cluster placement and routing figures (benches/cluster.sh runs this).
//!
//! ```text
//! cluster_bench placement --etcd URL [--n N]
//! cluster_bench lmtp --etcd URL --addr IP:PORT --host NAME --domains D1,D2,.. [--n N]
//! ```
//!
//! `placement`: one in-process [`Cluster`] member (`bench-a`, no workers) against the etcd
//! at URL, prefix `/wasmail-bench`, plus a member record for `bench-b` written directly
//! (lease 0: never a claim target). Each case times N calls of the real code path:
//! - `claim (new domain)`: `resolve` of a never-seen domain: the claim transaction takes the
//!   create branch (bound to bench-a's lease), then the domain is adopted locally;
//! - `claim (owned elsewhere)`: `resolve` of a domain whose key names bench-b, after
//!   dropping it from the cache: the transaction takes the get branch and returns bench-b;
//! - `lookup (etcd get)`: `serve_owned` of a bench-b domain, the relay side's check: one
//!   get of the owner key;
//! - `resolve (cached, local)` / `(cached, remote)`: no etcd round trip.
//!
//! `lmtp`: one LMTP delivery per session (connect, LHLO, MAIL, RCPT, DATA with a 1 KiB
//! message, QUIT) through the LMTP front at `--addr` of host `--host`. Each domain of
//! `--domains` gets one warm-up delivery (placing it and starting its worker), then the
//! first domain owned by `--host` (local) and the first owned by another host (remote,
//! relayed) get N timed deliveries each, alternating.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use wasmail::cluster::Cluster;
use wasmail::cluster::config::ClusterSection;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    println!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        v.len(),
        q(0.5).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6,
        v[v.len() - 1].as_secs_f64() * 1e6
    );
}

fn header() {
    println!("| case | n | p50 µs | p99 µs | mean µs | max µs |");
    println!("|---|---|---|---|---|---|");
}

async fn placement(etcd: &str, n: usize) {
    let section: ClusterSection = toml::from_str(&format!(
        "host = \"bench-a\"\nrelay = \"127.0.0.1:1\"\netcd = [\"{etcd}\"]\n\
         prefix = \"/wasmail-bench\"\nrelease_grace = \"1h\"\n"
    ))
    .expect("section");
    let mut raw = etcd_client::Client::connect([etcd], None)
        .await
        .expect("etcd");
    raw.delete(
        "/wasmail-bench/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("clean prefix");
    raw.put(
        "/wasmail-bench/hosts/bench-b",
        r#"{"relay":"127.0.0.1:2","capacity":100,"lease":0}"#,
        None,
    )
    .await
    .unwrap();
    for i in 0..n {
        raw.put(format!("/wasmail-bench/owners/b{i}.bench"), "bench-b", None)
            .await
            .unwrap();
    }
    let cluster = Cluster::new(section, None).await.expect("cluster");
    cluster.start();
    assert!(cluster.ready(Duration::from_secs(5)).await, "registered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Warm-up: connections and code paths.
    for i in 0..50 {
        let _ = cluster.resolve(&format!("warm{i}.bench")).await.unwrap();
    }
    header();
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let p = cluster.resolve(&format!("a{i}.bench")).await.unwrap();
        v.push(t.elapsed());
        assert!(matches!(p, wasmail::cluster::Placement::Local(_)));
    }
    summary("claim (new domain: create branch)", v);
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let d = format!("b{i}.bench");
        cluster.forget(&d, "bench-b");
        let t = Instant::now();
        let p = cluster.resolve(&d).await.unwrap();
        v.push(t.elapsed());
        assert!(matches!(p, wasmail::cluster::Placement::Remote { .. }));
    }
    summary("claim (owned elsewhere: get branch)", v);
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = cluster.serve_owned(&format!("b{i}.bench")).await;
        v.push(t.elapsed());
        assert!(r.is_err());
    }
    summary("lookup (etcd get of the owner key)", v);
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let p = cluster.resolve(&format!("a{i}.bench")).await.unwrap();
        v.push(t.elapsed());
        drop(p);
    }
    summary("resolve (cached, local owner)", v);
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let p = cluster.resolve(&format!("b{i}.bench")).await.unwrap();
        v.push(t.elapsed());
        drop(p);
    }
    summary("resolve (cached, remote owner)", v);
    cluster.leave().await;
    raw.delete(
        "/wasmail-bench/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
}

/// One LMTP delivery to bob@`domain`; panics unless it is accepted.
fn deliver(addr: &str, domain: &str, body: &str) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let reply = |r: &mut BufReader<TcpStream>| {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            assert!(!l.is_empty(), "closed after {all:?}");
            all.push_str(&l);
            if l.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    };
    assert!(reply(&mut r).starts_with("220"));
    for (cmd, want) in [
        ("LHLO bench.test\r\n".to_string(), "250"),
        ("MAIL FROM:<alice@bench.test>\r\n".into(), "250"),
        (format!("RCPT TO:<bob@{domain}>\r\n"), "250"),
        ("DATA\r\n".into(), "354"),
        (
            format!(
                "From: alice@bench.test\r\nTo: bob@{domain}\r\nSubject: bench\r\n\r\n{body}\r\n.\r\n"
            ),
            "250",
        ),
    ] {
        w.write_all(cmd.as_bytes()).unwrap();
        let got = reply(&mut r);
        assert!(got.starts_with(want), "{domain}: {cmd:?} → {got}");
    }
    w.write_all(b"QUIT\r\n").unwrap();
    let _ = reply(&mut r);
}

async fn owner(etcd: &str, domain: &str) -> Option<String> {
    let mut c = etcd_client::Client::connect([etcd], None).await.ok()?;
    let r = c
        .get(format!("/wasmail/owners/{domain}"), None)
        .await
        .ok()?;
    r.kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_string())
}

async fn lmtp(etcd: &str, addr: &str, host: &str, domains: &[String], n: usize) {
    let body = "x".repeat(1000);
    let (mut local, mut remote) = (None, None);
    for d in domains {
        deliver(addr, d, &body);
        match owner(etcd, d).await {
            Some(o) if o == host => local = local.or(Some(d.clone())),
            Some(_) => remote = remote.or(Some(d.clone())),
            None => panic!("{d} has no owner after a delivery"),
        }
    }
    let (Some(local), Some(remote)) = (local, remote) else {
        panic!("need a domain owned by {host} and one owned elsewhere among {domains:?}");
    };
    for _ in 0..20 {
        deliver(addr, &local, &body);
        deliver(addr, &remote, &body);
    }
    header();
    let (mut l, mut r) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        deliver(addr, &local, &body);
        l.push(t.elapsed());
        let t = Instant::now();
        deliver(addr, &remote, &body);
        r.push(t.elapsed());
    }
    summary(
        &format!("LMTP delivery via {host}, owner local ({local})"),
        l,
    );
    summary(
        &format!("LMTP delivery via {host}, owner remote ({remote}, relayed)"),
        r,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let etcd = arg(&args, "--etcd").expect("--etcd URL");
    let n: usize = arg(&args, "--n").map_or(1000, |v| v.parse().expect("--n"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match args.get(1).map(String::as_str) {
        Some("placement") => rt.block_on(placement(&etcd, n)),
        Some("lmtp") => {
            let addr = arg(&args, "--addr").expect("--addr");
            let host = arg(&args, "--host").expect("--host");
            let domains: Vec<String> = arg(&args, "--domains")
                .expect("--domains")
                .split(',')
                .map(str::to_string)
                .collect();
            rt.block_on(lmtp(&etcd, &addr, &host, &domains, n));
        }
        _ => {
            eprintln!("usage: cluster_bench placement|lmtp --etcd URL ...");
            std::process::exit(2);
        }
    }
}
