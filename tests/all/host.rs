//! Plugin host tests with real components built from `plugins/` (scripts/build-plugins.sh):
//! stage calls and replay, every fault a plugin can commit, load-time refusals, the
//! circuit breaker, hot reload under concurrent load, the example plugins with their
//! capabilities, and the `wasmail plugin check|test` commands.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmail::config::Config;
use wasmail::host::engine::World;
use wasmail::host::set::PluginHost;
use wasmail::host::state::Services;
use wasmail::milter_service::chain::{ChainRunner, Event, Header, Outcome, Stage, Verdict};

use crate::support;
use crate::support::chain::{eom, header_edit, runner, runtime};

struct Fixture {
    _dir: tempfile::TempDir,
    host: Arc<PluginHost>,
}

/// Loads the `[plugins]`/`[plugin.*]` part of `toml` (`{plugins}` = built plugin dir,
/// `{dir}` = a fresh temp dir), expecting milter-filter for `milter` names.
fn try_host(toml: &str, milter: &[&str]) -> (tempfile::TempDir, anyhow::Result<Arc<PluginHost>>) {
    let dir = tempfile::tempdir().unwrap();
    let text = toml
        .replace("{plugins}", support::plugins_dir().to_str().unwrap())
        .replace("{dir}", dir.path().to_str().unwrap());
    let config = Config::from_str_at(&text, &dir.path().join("wasmail.toml"))
        .unwrap_or_else(|e| panic!("config: {e}\n{text}"));
    let expect: HashMap<String, World> = milter
        .iter()
        .map(|n| (n.to_string(), World::MilterFilter))
        .collect();
    let result = Services::start(&config.plugins, &config.plugin, runtime().handle())
        .and_then(|services| PluginHost::start(&config.plugins, &config.plugin, expect, services));
    (dir, result)
}

fn host(toml: &str, milter: &[&str]) -> Fixture {
    let (dir, host) = try_host(toml, milter);
    Fixture {
        _dir: dir,
        host: host.unwrap_or_else(|e| panic!("loading plugins: {e:#}")),
    }
}

fn headers(list: &[(&str, &str)]) -> Vec<Header> {
    list.iter()
        .map(|(n, v)| Header {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect()
}

/// A message's events after CONNECT/HELO.
fn message_events(from: &str, rcpt: &str, hdrs: Vec<Header>, body: &[u8]) -> Vec<Event> {
    vec![
        Event::MailFrom {
            address: format!("<{from}>"),
            args: vec![],
        },
        Event::Rcpt {
            address: format!("<{rcpt}>"),
            args: vec![],
        },
        Event::Headers(hdrs),
        Event::EndOfHeaders,
        Event::Body(body.to_vec()),
        Event::EndOfMessage,
    ]
}

fn connect_events() -> Vec<Event> {
    vec![
        Event::Connect {
            hostname: "client.example".into(),
            address: "192.0.2.10".into(),
            port: 4000,
        },
        Event::Helo("client.example".into()),
    ]
}

fn simple_message() -> Vec<Event> {
    message_events(
        "alice@example.org",
        "bob@example.com",
        headers(&[
            ("From", "Alice <alice@example.org>"),
            ("To", "bob@example.com"),
            ("Subject", "Hello"),
        ]),
        b"Hello Bob\r\n",
    )
}

/// Runs events until a final verdict (what Postfix would do); returns every outcome.
fn run(r: &mut ChainRunner, events: Vec<Event>) -> Vec<(Stage, Outcome)> {
    let mut out = Vec::new();
    for ev in events {
        let stage = ev.stage();
        let o = r.run(ev);
        let stop = o.verdict.is_final() && stage != Stage::Rcpt;
        out.push((stage, o));
        if stop {
            break;
        }
    }
    r.end_transaction();
    out
}

fn full(host: &Arc<PluginHost>, chain: &[&str]) -> Vec<(Stage, Outcome)> {
    let mut r = runner(host, chain);
    let mut events = connect_events();
    events.extend(simple_message());
    run(&mut r, events)
}

fn counter(
    host: &PluginHost,
    name: &str,
    f: impl Fn(&wasmail::host::breaker::Counters) -> &AtomicU64,
) -> u64 {
    f(&host.get(name).unwrap().counters).load(Ordering::Relaxed)
}

const STAMP: &str = r#"
[plugins]
dir = "{plugins}"
watch = false
[plugin.stamp]
file = "stamp.wasm"
[plugin.stamp.settings]
value = "v1"
"#;

#[test]
fn stamp_plugin_runs_every_stage_and_edits_at_end_of_message() {
    let f = host(STAMP, &["stamp"]);
    let out = full(&f.host, &["stamp"]);
    let o = eom(&out);
    assert_eq!(o.verdict, Verdict::Continue);
    assert_eq!(header_edit(o, "X-Wasmail-Stamp"), Some("v1"), "{o:?}");
    let seen = header_edit(o, "X-Wasmail-Seen").expect("seen header");
    for stage in [
        "connect",
        "helo",
        "mail-from",
        "rcpt",
        "headers",
        "end-of-headers",
        "body",
        "end-of-message",
    ] {
        assert!(seen.contains(stage), "{stage} missing from {seen}");
    }
    assert_eq!(counter(&f.host, "stamp", |c| &c.failures), 0);
}

#[test]
fn each_message_gets_a_fresh_instance_with_connect_and_helo_replayed() {
    let f = host(STAMP, &["stamp"]);
    let mut r = runner(&f.host, &["stamp"]);
    let mut first = connect_events();
    first.extend(simple_message());
    let o1 = run(&mut r, first);
    let o2 = run(&mut r, simple_message());
    let seen1 = header_edit(eom(&o1), "X-Wasmail-Seen").unwrap().to_string();
    let seen2 = header_edit(eom(&o2), "X-Wasmail-Seen").unwrap().to_string();
    assert_eq!(
        seen1, seen2,
        "the second message's instance starts clean and sees the replayed connect/helo"
    );
    assert_eq!(seen2.matches("mail-from").count(), 1, "{seen2}");
    assert_eq!(counter(&f.host, "stamp", |c| &c.instances), 2);
}

fn reusing(toml: &str) -> String {
    toml.replace(
        "file = \"stamp.wasm\"\n",
        "file = \"stamp.wasm\"\ninstance_reuse = 100\n",
    )
}

#[test]
fn reused_instances_start_every_transaction_clean() {
    let f = host(&reusing(STAMP), &["stamp"]);
    let seen = |o: &[(Stage, Outcome)]| header_edit(eom(o), "X-Wasmail-Seen").unwrap().to_string();
    // Connection 1: a message, an aborted one (after RCPT), another message.
    let mut r = runner(&f.host, &["stamp"]);
    let mut first = connect_events();
    first.extend(simple_message());
    let s1 = seen(&run(&mut r, first));
    let mut aborted = simple_message();
    aborted.truncate(2);
    let out = run(&mut r, aborted);
    assert_eq!(out.len(), 2, "{out:?}");
    let s2 = seen(&run(&mut r, simple_message()));
    drop(r);
    // Connection 2 takes the same instance.
    let mut r = runner(&f.host, &["stamp"]);
    let mut events = connect_events();
    events.extend(simple_message());
    let s3 = seen(&run(&mut r, events));
    assert_eq!(
        s1, s2,
        "on-abort reset the state of the aborted transaction"
    );
    assert_eq!(s1, s3, "a new connection sees a clean instance");
    assert_eq!(s1.matches("mail-from").count(), 1, "{s1}");
    assert_eq!(counter(&f.host, "stamp", |c| &c.instances), 1);
    assert_eq!(counter(&f.host, "stamp", |c| &c.reused), 3);
    assert_eq!(f.host.filter_pool().len(), 1);
    let metrics = f.host.render_prometheus();
    assert!(
        metrics.contains("wasmail_plugin_reused_total{plugin=\"stamp\",version=")
            && metrics.contains("wasmail_plugin_idle_instances 1"),
        "{metrics}"
    );
}

#[test]
fn at_most_idle_instances_wait_for_reuse() {
    let f = host(
        &reusing(STAMP).replace("watch = false\n", "watch = false\nidle_instances = 2\n"),
        &["stamp"],
    );
    let instances = || counter(&f.host, "stamp", |c| &c.instances);
    // `n` connections with a transaction open at the same time (an instance each), then
    // each ends its message, which offers its instance to the pool.
    let overlapping = |n: usize| {
        let mut runners: Vec<ChainRunner> = (0..n).map(|_| runner(&f.host, &["stamp"])).collect();
        let mut rests = Vec::new();
        for r in &mut runners {
            let mut events = connect_events();
            let mut message = simple_message();
            rests.push(message.split_off(2));
            events.extend(message);
            for ev in events {
                assert!(!r.run(ev).verdict.is_final());
            }
        }
        let live = instances();
        for (r, rest) in runners.iter_mut().zip(rests) {
            let out = run(r, rest);
            assert!(
                header_edit(eom(&out), "X-Wasmail-Stamp").is_some(),
                "{out:?}"
            );
        }
        live
    };
    assert_eq!(
        overlapping(3),
        3,
        "three transactions at once, three instances"
    );
    assert_eq!(
        f.host.filter_pool().len(),
        2,
        "the third instance is dropped"
    );
    // Two more at once take the two waiting instances and give them back.
    assert_eq!(overlapping(2), 3, "no new instance");
    assert_eq!(counter(&f.host, "stamp", |c| &c.reused), 2);
    assert_eq!(f.host.filter_pool().len(), 2);
    assert!(
        f.host
            .render_prometheus()
            .contains("wasmail_plugin_idle_instances 2")
    );
}

#[test]
fn reuse_ends_after_instance_reuse_transactions() {
    let f = host(
        &STAMP.replace(
            "file = \"stamp.wasm\"\n",
            "file = \"stamp.wasm\"\ninstance_reuse = 2\n",
        ),
        &["stamp"],
    );
    for _ in 0..5 {
        full(&f.host, &["stamp"]);
    }
    // Transactions 1-2, 3-4 and 5 ran on three instances.
    assert_eq!(counter(&f.host, "stamp", |c| &c.instances), 3);
    assert_eq!(counter(&f.host, "stamp", |c| &c.reused), 2);
}

#[test]
fn a_failed_instance_is_never_reused() {
    let toml = faulty("trap", "continue", "mail-from").replace(
        "on_error = \"continue\"\n",
        "on_error = \"continue\"\ninstance_reuse = 100\n",
    );
    let f = host(&toml, &["faulty"]);
    for _ in 0..3 {
        assert_eq!(eom(&full(&f.host, &["faulty"])).verdict, Verdict::Continue);
    }
    assert_eq!(counter(&f.host, "faulty", |c| &c.failures), 3);
    assert_eq!(counter(&f.host, "faulty", |c| &c.instances), 3);
    assert_eq!(counter(&f.host, "faulty", |c| &c.reused), 0);
    assert!(f.host.filter_pool().is_empty());
}

#[test]
fn reused_instances_stay_within_their_domain_chain() {
    use wasmail::host::milter::HostDomainChains;
    let f = host(&reusing(STAMP), &["stamp"]);
    let chains: std::collections::BTreeMap<String, Vec<String>> = ["a.example", "b.example"]
        .into_iter()
        .map(|d| (d.to_string(), vec!["stamp".to_string()]))
        .collect();
    let chains = Arc::new(chains);
    let message_to = |rcpt: &str| {
        let mut r = ChainRunner::new(
            Vec::new(),
            Box::new(HostDomainChains::new(f.host.clone(), chains.clone())),
        );
        let mut events = connect_events();
        events.extend(message_events(
            "x@example.org",
            rcpt,
            headers(&[("Subject", "s")]),
            b"b\r\n",
        ));
        let out = run(&mut r, events);
        header_edit(eom(&out), "X-Wasmail-Seen").map(str::to_string)
    };
    let a1 = message_to("u@a.example").expect("a.example's chain ran");
    let b1 = message_to("u@b.example").expect("b.example's chain ran");
    let a2 = message_to("v@a.example").expect("a.example's chain ran again");
    assert_eq!(a1, a2);
    assert_eq!(a1, b1);
    // One instance per domain: b.example never got a.example's instance.
    assert_eq!(counter(&f.host, "stamp", |c| &c.instances), 2);
    assert_eq!(counter(&f.host, "stamp", |c| &c.reused), 1);
    assert_eq!(f.host.filter_pool().len(), 2);
}

fn faulty(mode: &str, on_error: &str, stage: &str) -> String {
    format!(
        r#"
[plugins]
dir = "{{plugins}}"
watch = false
[plugin.faulty]
file = "faulty.wasm"
on_error = "{on_error}"
grants = ["log", "config"]
[plugin.faulty.limits]
memory_mib = 16
call_deadline = "300ms"
log_lines = 5
max_edits = 50
max_header_bytes = 65536
[plugin.faulty.settings]
mode = "{mode}"
stage = "{stage}"
"#
    )
}

/// What every fault must look like: the transaction finishes quickly, the configured
/// policy applies, nothing is rejected permanently, and the failure is counted by kind.
fn check_fault(mode: &str, kind: fn(&wasmail::host::breaker::Counters) -> &AtomicU64) {
    for on_error in ["continue", "tempfail"] {
        let f = host(&faulty(mode, on_error, "end-of-message"), &["faulty"]);
        let started = Instant::now();
        let out = full(&f.host, &["faulty"]);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "{mode}: took {took:?}");
        for (_, o) in &out {
            assert!(
                !matches!(o.verdict, Verdict::Reject(_)),
                "{mode}/{on_error}: permanent reject {o:?}"
            );
        }
        let o = eom(&out);
        match on_error {
            "continue" => assert_eq!(o.verdict, Verdict::Continue, "{mode}: {o:?}"),
            _ => {
                let Verdict::Tempfail(r) = &o.verdict else {
                    panic!("{mode}: expected tempfail, got {o:?}")
                };
                assert_eq!(r.code, Some(451));
                assert_eq!(r.enhanced.as_deref(), Some("4.3.0"));
            }
        }
        assert!(
            o.edits.is_empty(),
            "{mode}: a failed plugin's edits are dropped: {o:?}"
        );
        assert_eq!(
            counter(&f.host, "faulty", |c| &c.failures),
            1,
            "{mode}/{on_error}"
        );
        assert_eq!(
            counter(&f.host, "faulty", kind),
            1,
            "{mode}/{on_error}: wrong failure kind"
        );
    }
}

#[test]
fn fault_trap() {
    check_fault("trap", |c| &c.traps);
}

#[test]
fn fault_infinite_loop_hits_the_deadline() {
    check_fault("loop", |c| &c.timeouts);
}

#[test]
fn fault_memory_bomb_hits_the_memory_limit() {
    check_fault("alloc", |c| &c.memory);
}

#[test]
fn fault_oversized_edit() {
    check_fault("big-edit", |c| &c.limits);
}

#[test]
fn fault_too_many_edits() {
    check_fault("many-edits", |c| &c.limits);
}

#[test]
fn fault_ungranted_capability() {
    check_fault("ungranted", |c| &c.denied);
}

#[test]
fn log_flood_is_capped_not_fatal() {
    // 100,000 log calls: a generous deadline so a busy test machine does not turn this
    // into a timeout; the point is that the lines are capped and the call succeeds.
    let toml = faulty("log-flood", "tempfail", "end-of-message")
        .replace("call_deadline = \"300ms\"", "call_deadline = \"10s\"");
    let f = host(&toml, &["faulty"]);
    let started = Instant::now();
    let out = full(&f.host, &["faulty"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(eom(&out).verdict, Verdict::Continue);
    assert_eq!(counter(&f.host, "faulty", |c| &c.failures), 0);
}

#[test]
fn fault_at_an_early_stage_skips_the_plugin_for_the_rest_of_the_message() {
    let f = host(&faulty("trap", "continue", "mail-from"), &["faulty"]);
    let out = full(&f.host, &["faulty"]);
    assert_eq!(eom(&out).verdict, Verdict::Continue);
    assert_eq!(counter(&f.host, "faulty", |c| &c.failures), 1);
    // The next message gets a new instance and fails again (and is counted again).
    let out = full(&f.host, &["faulty"]);
    assert_eq!(eom(&out).verdict, Verdict::Continue);
    assert_eq!(counter(&f.host, "faulty", |c| &c.failures), 2);
}

#[test]
fn breaker_opens_after_repeated_failures_and_skips_the_plugin() {
    let toml = faulty("trap", "continue", "end-of-message")
        + "[plugins.breaker]\nfailures = 2\nwindow = \"1m\"\nbackoff = \"1m\"\n";
    let f = host(&toml, &["faulty"]);
    for _ in 0..2 {
        full(&f.host, &["faulty"]);
    }
    let out = full(&f.host, &["faulty"]);
    assert_eq!(eom(&out).verdict, Verdict::Continue);
    assert_eq!(counter(&f.host, "faulty", |c| &c.failures), 2);
    assert!(
        counter(&f.host, "faulty", |c| &c.skipped) >= 1,
        "the third message skipped the plugin"
    );
}

fn load_error(file_setup: impl FnOnce(&Path), milter: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    file_setup(dir.path());
    let toml = format!(
        "[plugins]\ndir = \"{}\"\nwatch = false\n[plugin.p]\nfile = \"p.wasm\"\n",
        dir.path().display()
    );
    let (_d, r) = try_host(&toml, if milter { &["p"] } else { &[] });
    match r {
        Ok(_) => panic!("loading should fail"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn refuses_a_file_that_is_not_wasm() {
    let e = load_error(|d| std::fs::write(d.join("p.wasm"), "hello").unwrap(), true);
    assert!(
        e.contains("not a WebAssembly file") && e.contains("p.wasm"),
        "{e}"
    );
}

#[test]
fn refuses_a_core_module() {
    let e = load_error(
        |d| std::fs::write(d.join("p.wasm"), b"\0asm\x01\0\0\0").unwrap(),
        true,
    );
    assert!(
        e.contains("core WebAssembly module") && e.contains("component"),
        "{e}"
    );
}

#[test]
fn refuses_a_plugin_of_another_world() {
    let src = support::plugin("virtual-mailbox");
    let e = load_error(
        |d| {
            std::fs::copy(&src, d.join("p.wasm")).unwrap();
        },
        true,
    );
    assert!(
        e.contains("is a `table` plugin") && e.contains("milter-filter"),
        "{e}"
    );
}

#[test]
fn refuses_a_missing_file() {
    let e = load_error(|_| {}, true);
    assert!(e.contains("p.wasm"), "{e}");
}

fn write_atomically(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[test]
fn hot_reload_under_concurrent_load_loses_no_transaction() {
    hot_reload_under_load(1);
}

#[test]
fn hot_reload_under_concurrent_load_with_reused_instances() {
    hot_reload_under_load(1000);
}

fn hot_reload_under_load(instance_reuse: u32) {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("p.wasm");
    let (stamp, noop) = (support::plugin("stamp"), support::plugin("noop"));
    write_atomically(&stamp, &live);
    let toml = format!(
        "[plugins]\ndir = \"{}\"\nwatch = false\n[plugin.p]\nfile = \"p.wasm\"\non_error = \"tempfail\"\n\
         instance_reuse = {instance_reuse}\n",
        dir.path().display()
    );
    let (_d, host) = try_host(&toml, &["p"]);
    let host = host.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stamped = Arc::new(AtomicU64::new(0));
    let plain = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (host, stop, stamped, plain) =
            (host.clone(), stop.clone(), stamped.clone(), plain.clone());
        workers.push(std::thread::spawn(move || {
            let mut failures = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let out = full(&host, &["p"]);
                let o = &out.last().unwrap().1;
                if out.last().unwrap().0 != Stage::EndOfMessage || o.verdict != Verdict::Continue {
                    failures += 1;
                    continue;
                }
                if header_edit(o, "X-Wasmail-Stamp").is_some() {
                    stamped.fetch_add(1, Ordering::Relaxed);
                } else {
                    plain.fetch_add(1, Ordering::Relaxed);
                }
            }
            failures
        }));
    }
    let mut reloads = 0;
    for i in 0..8 {
        std::thread::sleep(Duration::from_millis(150));
        write_atomically(if i % 2 == 0 { &noop } else { &stamp }, &live);
        let report = host.reload();
        assert_eq!(report.loaded, vec!["p".to_string()], "{report:?}");
        reloads += 1;
    }
    // A broken file is refused; the last good version keeps serving.
    let before = host.get("p").unwrap().sha256.clone();
    std::fs::write(dir.path().join("p.tmp"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    std::fs::rename(dir.path().join("p.tmp"), &live).unwrap();
    let report = host.reload();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(host.get("p").unwrap().sha256, before);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let failures: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let (s, p) = (
        stamped.load(Ordering::Relaxed),
        plain.load(Ordering::Relaxed),
    );
    eprintln!(
        "hot reload: {reloads} reloads, {s} stamped + {p} plain transactions, {failures} failed"
    );
    assert_eq!(failures, 0, "no transaction may fail during reloads");
    assert!(
        s > 0 && p > 0,
        "both versions served: stamped {s}, plain {p}"
    );
}

#[test]
fn watcher_reloads_a_replaced_file() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("p.wasm");
    write_atomically(&support::plugin("stamp"), &live);
    let toml = format!(
        "[plugins]\ndir = \"{}\"\n[plugin.p]\nfile = \"p.wasm\"\n",
        dir.path().display()
    );
    let (_d, host) = try_host(&toml, &["p"]);
    let host = host.unwrap();
    let _watch = host.watch().unwrap();
    let before = host.get("p").unwrap().sha256.clone();
    write_atomically(&support::plugin("noop"), &live);
    let started = Instant::now();
    while host.get("p").unwrap().sha256 == before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the watcher did not reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        header_edit(eom(&full(&host, &["p"])), "X-Wasmail-Stamp").is_none(),
        "noop now serves"
    );
}

#[test]
fn compiled_artifacts_are_cached_and_only_private_files_are_trusted() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("cache");
    let toml = format!(
        "[plugins]\ndir = \"{{plugins}}\"\nwatch = false\ncache_dir = \"{}\"\n[plugin.stamp]\nfile = \"stamp.wasm\"\n",
        cache_dir.display()
    );
    let (_d, first) = try_host(&toml, &["stamp"]);
    let first = first.unwrap();
    let sha = first.get("stamp").unwrap().sha256.clone();
    let entries: Vec<std::path::PathBuf> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let artifact = &entries[0];
    let name = artifact.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with(&sha) && name.ends_with(".cwasm"), "{name}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(artifact).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second host loads from the cache and works.
    let (_d, second) = try_host(&toml, &["stamp"]);
    let second = second.unwrap();
    assert_eq!(
        header_edit(eom(&full(&second, &["stamp"])), "X-Wasmail-Stamp"),
        Some("stamped")
    );
    // A cache file others could have written is not trusted: it is replaced, not loaded.
    std::fs::write(artifact, b"not an artifact").unwrap();
    std::fs::set_permissions(artifact, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_d, third) = try_host(&toml, &["stamp"]);
    let third = third.unwrap();
    assert_eq!(
        header_edit(eom(&full(&third, &["stamp"])), "X-Wasmail-Stamp"),
        Some("stamped")
    );
    assert_eq!(
        std::fs::metadata(artifact).unwrap().permissions().mode() & 0o777,
        0o600,
        "rewritten by the host"
    );
}

#[test]
fn sighup_reloads_plugins_in_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    let live = dir.path().join("plugins/p.wasm");
    write_atomically(&support::plugin("stamp"), &live);
    let config = r#"
[server]
shutdown_grace = "2s"
[milter]
listen = "unix:{dir}/milter.sock"
chain = ["p"]
[plugins]
dir = "{dir}/plugins"
watch = false
[plugin.p]
file = "p.wasm"
"#;
    let mut serve = support::Serve::start_in(dir, config);
    serve.wait_for_log("plugin loaded", Duration::from_secs(30));
    let live = serve.dir.path().join("plugins/p.wasm");
    write_atomically(&support::plugin("noop"), &live);
    // SAFETY: kill with a valid pid of our own child.
    unsafe { libc::kill(serve.child.id() as libc::pid_t, libc::SIGHUP) };
    serve.wait_for_log("plugins reloaded", Duration::from_secs(30));
    let log = serve.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("plugins reloaded"))
        .unwrap();
    assert!(line.contains("loaded=[\"p\"]"), "{line}");
    assert!(serve.stop(Duration::from_secs(10)).success());
}

#[test]
fn fuel_budget_stops_a_busy_plugin_deterministically() {
    // Fuel metering on, a generous wall-clock deadline: the instruction budget is what
    // stops the loop.
    let toml = faulty("loop", "tempfail", "end-of-message")
        .replace(
            "call_deadline = \"300ms\"",
            "call_deadline = \"20s\"\ntransaction_budget = \"20s\"\nfuel = 5000000",
        )
        .replace("[plugins]\n", "[plugins]\nfuel = true\n");
    let f = host(&toml, &["faulty"]);
    let started = Instant::now();
    let out = full(&f.host, &["faulty"]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped by fuel, not by the deadline"
    );
    assert!(matches!(eom(&out).verdict, Verdict::Tempfail(_)), "{out:?}");
    assert_eq!(
        counter(&f.host, "faulty", |c| &c.timeouts),
        1,
        "out of fuel counts as a timeout"
    );
}

#[test]
fn a_reused_instance_gets_its_full_fuel_budget_every_transaction() {
    // One stamp transaction takes 20,000-50,000 instructions (measured); 100,000 is one
    // transaction's budget with room to spare, and 20 transactions need far more than that
    // together: they only pass if every transaction starts with a full budget.
    let toml = reusing(STAMP)
        .replace("[plugins]\n", "[plugins]\nfuel = true\n")
        .replace(
            "instance_reuse = 100\n",
            "instance_reuse = 100\n[plugin.stamp.limits]\nfuel = 100000\n",
        );
    let f = host(&toml, &["stamp"]);
    for _ in 0..20 {
        let out = full(&f.host, &["stamp"]);
        assert_eq!(eom(&out).verdict, Verdict::Continue, "{out:?}");
    }
    assert_eq!(counter(&f.host, "stamp", |c| &c.failures), 0);
    assert_eq!(counter(&f.host, "stamp", |c| &c.instances), 1);
    assert_eq!(counter(&f.host, "stamp", |c| &c.reused), 19);
}
