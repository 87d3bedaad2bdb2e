//! Plugin host cost per message and per call, through the real host code paths:
//! `PluginHost` (engine, pooling allocator, `InstancePre`), `WasmFilter` (the milter
//! adapter: one store + instance per transaction, deadlines, budget, verdict/edit checks)
//! and `ChainRunner` (the chain the milter service drives).
//!
//! ```sh
//! scripts/build-plugins.sh            # once, if target/plugins/*.wasm are missing
//! cargo bench --bench plugin_host
//! ```
//!
//! Groups:
//! - `per_message/*`: one SMTP session with one message, as Postfix sends it (CONNECT,
//!   HELO, MAIL, RCPT, 20 headers, EOH, one 64 KiB body chunk, EOM, end of transaction):
//!   new `ChainRunner` + `WasmFilter`, new store and instance at CONNECT, eight calls,
//!   instance dropped at end of transaction; `*_reused` is the same with the plugin's
//!   `instance_reuse` on, so the instance comes from the pool and goes back to it
//!   (`on-end-of-message` and the SDK's state reset included). `instantiate_only` is new store, instantiate
//!   and drop; `store_only` is new store and drop (the per-store `HostState`/WASI setup).
//!   `raw_bindings_64k` is the same eight calls through the generated bindings on a fresh
//!   store, without the adapter and the chain (the wasmtime floor with this engine config).
//! - `call/*`: one `StagePlugin::call` on a live instance (the instance is created outside
//!   the timed region and renewed every few thousand calls so the transaction budget never
//!   runs out). `call_raw/*`: the same calls through the generated bindings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;

use wasmail::config::Config;
use wasmail::host::bindings::milter::wasmail::plugin::milter_types as wt;
use wasmail::host::bindings::milter::wasmail::plugin::types as wtypes;
use wasmail::host::engine::World;
use wasmail::host::milter::WasmFilter;
use wasmail::host::plugin::{LoadedPlugin, Pre, new_store};
use wasmail::host::set::PluginHost;
use wasmail::host::state::Services;
use wasmail::milter_service::chain::{
    ChainRunner, Edit, Event, Header, NoDomainChains, StagePlugin, Verdict,
};

/// Body chunk size: one 64 KiB chunk (Postfix sends at most 65535 bytes per chunk).
const BODY: usize = 64 << 10;
/// Calls per live instance in the `call/*` groups before it is renewed (untimed).
const CALLS_PER_INSTANCE: u64 = 5_000;

fn plugins_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/plugins");
    if !dir.join("noop.wasm").is_file() || !dir.join("stamp.wasm").is_file() {
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/build-plugins.sh"))
            .current_dir(root)
            .status()
            .expect("running scripts/build-plugins.sh");
        assert!(status.success(), "scripts/build-plugins.sh failed");
    }
    dir
}

fn start_host() -> Arc<PluginHost> {
    let dir = plugins_dir();
    let text = format!(
        r#"
[plugins]
dir = "{}"
watch = false

[plugin.noop]
file = "noop.wasm"

[plugin.stamp]
file = "stamp.wasm"
[plugin.stamp.settings]
value = "bench"

[plugin.noop-reused]
file = "noop.wasm"
instance_reuse = 1000000

[plugin.stamp-reused]
file = "stamp.wasm"
instance_reuse = 1000000
[plugin.stamp-reused.settings]
value = "bench"
"#,
        dir.display()
    );
    let at = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/plugin_host.toml");
    let config = Config::from_str_at(&text, &at).unwrap_or_else(|e| panic!("config: {e}"));
    let expect: HashMap<String, World> = ["noop", "stamp", "noop-reused", "stamp-reused"]
        .into_iter()
        .map(|n| (n.to_string(), World::MilterFilter))
        .collect();
    // noop and stamp use no service-backed capability (kv, auth, send): no runtime needed.
    PluginHost::start(&config.plugins, &config.plugin, expect, Services::default())
        .unwrap_or_else(|e| panic!("loading plugins: {e:#}"))
}

/// Same test as `engine.rs` (PAGEMAP_SCAN arrived in Linux 6.7); that function is private.
fn kernel() -> (String, bool) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let pagemap = matches!((it.next(), it.next()), (Some(a), Some(b)) if (a, b) >= (6, 7));
    (release, pagemap)
}

fn connect() -> Event {
    Event::Connect {
        hostname: "client.example".into(),
        address: "192.0.2.10".into(),
        port: 40000,
    }
}

fn helo() -> Event {
    Event::Helo("client.example".into())
}

fn mail_from() -> Event {
    Event::MailFrom {
        address: "<alice@example.org>".into(),
        args: vec!["SIZE=70000".into(), "BODY=8BITMIME".into()],
    }
}

fn rcpt() -> Event {
    Event::Rcpt {
        address: "<bob@example.com>".into(),
        args: vec![],
    }
}

/// 20 headers of a typical message (~2.4 KB).
fn header_list() -> Vec<Header> {
    let h = |n: &str, v: &str| Header {
        name: n.into(),
        value: v.into(),
    };
    vec![
        h(
            "Received",
            "from client.example (client.example [192.0.2.10])\n\tby mx.example.com (Postfix) with ESMTPS id 4Xyz1234\n\tfor <bob@example.com>; Mon, 23 Nov 2026 10:00:00 +0000 (UTC)",
        ),
        h(
            "Received",
            "from [10.0.0.5] (unknown [10.0.0.5])\n\tby client.example (Postfix) with ESMTPSA id 4Abc9876\n\tfor <bob@example.com>; Mon, 23 Nov 2026 09:59:59 +0000 (UTC)",
        ),
        h(
            "DKIM-Signature",
            "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel1;\n\tt=1795082399; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n\th=From:To:Subject:Date:Message-ID;\n\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgaXQgaGFzIHRoZSByaWdodCBsZW5ndGg\n\t gZm9yIGEgYmVuY2htYXJrIGhlYWRlciB0aGF0IGxvb2tzIGxpa2UgYSByZWFsIG9uZQ==",
        ),
        h("From", "Alice Example <alice@example.org>"),
        h("To", "Bob Example <bob@example.com>"),
        h("Cc", "carol@example.net, dave@example.net"),
        h("Subject", "Quarterly report, draft 3 (please review)"),
        h("Date", "Mon, 23 Nov 2026 09:59:58 +0000"),
        h("Message-ID", "<20261123095958.4Abc9876@client.example>"),
        h("MIME-Version", "1.0"),
        h("Content-Type", "text/plain; charset=utf-8; format=flowed"),
        h("Content-Transfer-Encoding", "8bit"),
        h("Reply-To", "alice@example.org"),
        h("In-Reply-To", "<20261122170000.1111@example.com>"),
        h(
            "References",
            "<20261120120000.0000@example.org> <20261122170000.1111@example.com>",
        ),
        h("User-Agent", "Mozilla/5.0 Thunderbird/128.0"),
        h("Content-Language", "en-US"),
        h("X-Mailer", "bench"),
        h("List-Id", "<reports.example.org>"),
        h(
            "Authentication-Results",
            "mx.example.com; spf=pass smtp.mailfrom=example.org; dkim=pass header.d=example.org",
        ),
    ]
}

fn body() -> Vec<u8> {
    let line =
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n";
    line.iter().copied().cycle().take(BODY).collect()
}

/// The events of one session with one message.
fn message() -> Vec<Event> {
    vec![
        connect(),
        helo(),
        mail_from(),
        rcpt(),
        Event::Headers(header_list()),
        Event::EndOfHeaders,
        Event::Body(body()),
        Event::EndOfMessage,
    ]
}

fn runner(host: &Arc<PluginHost>, name: &str) -> ChainRunner {
    let filter = WasmFilter::new(host.clone(), name, None).expect("a milter plugin");
    ChainRunner::new(vec![Box::new(filter)], Box::new(NoDomainChains))
}

/// One session: every event through the chain, then end of transaction (drops the store).
fn run_message(host: &Arc<PluginHost>, name: &str, events: Vec<Event>) -> usize {
    let mut r = runner(host, name);
    let mut edits = 0;
    for ev in events {
        let o = r.run(ev);
        edits += o.edits.len();
        black_box(&o);
    }
    r.end_transaction();
    edits
}

fn plugin(host: &PluginHost, name: &str) -> Arc<LoadedPlugin> {
    host.get(name).expect("loaded")
}

/// Runs one message and checks the plugin really ran every stage without failing (the
/// default `on_error = continue` would otherwise hide a failure behind `continue`).
fn sanity(host: &Arc<PluginHost>, name: &str) {
    let p = plugin(host, name);
    let (calls, instances) = (
        p.counters.calls.load(Ordering::Relaxed),
        p.counters.instances.load(Ordering::Relaxed),
    );
    // A reusing plugin creates its instance once; the other makes one per message.
    let new_instances = if name.ends_with("-reused") {
        u64::from(instances == 0)
    } else {
        1
    };
    let mut r = runner(host, name);
    let mut last = None;
    for ev in message() {
        let o = r.run(ev);
        assert_eq!(o.verdict, Verdict::Continue, "{name}: {o:?}");
        last = Some(o);
    }
    r.end_transaction();
    assert_eq!(
        p.counters.failures.load(Ordering::Relaxed),
        0,
        "{name} failed"
    );
    assert_eq!(
        p.counters.calls.load(Ordering::Relaxed) - calls,
        8,
        "{name}: calls"
    );
    assert_eq!(
        p.counters.instances.load(Ordering::Relaxed) - instances,
        new_instances,
        "{name}: instances"
    );
    let edits = last.expect("some outcome").edits;
    if name.starts_with("stamp") {
        assert!(
            edits
                .iter()
                .any(|e| matches!(e, Edit::AddHeader { name, value } if name == "X-Wasmail-Stamp" && value == "bench")),
            "stamp edits: {edits:?}"
        );
    } else {
        assert!(edits.is_empty(), "{name} edits: {edits:?}");
    }
}

/// The same eight calls as [`message`], straight through the generated bindings on a fresh
/// store from the host's own `new_store` and `InstancePre` (no adapter, no chain).
fn raw_message(host: &PluginHost, p: &LoadedPlugin, data: &RawData) {
    let Pre::Milter(pre) = &p.pre else {
        unreachable!("milter plugin")
    };
    let mut store = new_store(host.engine(), &p.meta, host.services().clone(), None);
    let inst = pre.instantiate(&mut store).expect("instantiate");
    let f = inst.wasmail_plugin_filter();
    black_box(f.call_on_connect(&mut store, &data.client).unwrap());
    black_box(f.call_on_helo(&mut store, "client.example").unwrap());
    black_box(f.call_on_mail_from(&mut store, &data.from).unwrap());
    black_box(f.call_on_rcpt(&mut store, &data.rcpt).unwrap());
    black_box(f.call_on_headers(&mut store, &data.headers).unwrap());
    black_box(f.call_on_end_of_headers(&mut store).unwrap());
    black_box(f.call_on_body_chunk(&mut store, &data.body, false).unwrap());
    black_box(f.call_on_end_of_message(&mut store).unwrap());
    drop(store);
}

struct RawData {
    client: wt::Client,
    from: wt::Envelope,
    rcpt: wt::Envelope,
    headers: Vec<wtypes::Header>,
    body: Vec<u8>,
}

impl RawData {
    fn new() -> Self {
        RawData {
            client: wt::Client {
                hostname: "client.example".into(),
                address: "192.0.2.10".into(),
                port: 40000,
            },
            from: wt::Envelope {
                address: "<alice@example.org>".into(),
                args: vec!["SIZE=70000".into(), "BODY=8BITMIME".into()],
            },
            rcpt: wt::Envelope {
                address: "<bob@example.com>".into(),
                args: vec![],
            },
            headers: header_list()
                .into_iter()
                .map(|h| wtypes::Header {
                    name: h.name,
                    value: h.value,
                })
                .collect(),
            body: body(),
        }
    }
}

fn per_message(c: &mut Criterion, host: &Arc<PluginHost>) {
    let mut g = c.benchmark_group("per_message");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(30);
    let events = message();
    // `*-reused`: the same plugins with `instance_reuse`, so the instance is created once
    // and every message after that runs on it.
    for (name, label) in [
        ("noop", "noop_64k"),
        ("stamp", "stamp_64k"),
        ("noop-reused", "noop_64k_reused"),
        ("stamp-reused", "stamp_64k_reused"),
    ] {
        g.bench_function(label, |b| {
            // The events are built outside the timed region (the milter service gets them
            // from its decoder); everything the host does with them is timed, including
            // dropping them. Batched setup means the 64 KiB body is not cache-hot.
            b.iter_batched(
                || events.clone(),
                |evs| run_message(host, name, evs),
                BatchSize::SmallInput,
            )
        });
    }
    let noop = plugin(host, "noop");
    let data = RawData::new();
    g.bench_function("raw_bindings_64k", |b| {
        b.iter(|| raw_message(host, &noop, &data))
    });
    let Pre::Milter(pre) = &noop.pre else {
        unreachable!("milter plugin")
    };
    g.bench_function("instantiate_only", |b| {
        b.iter(|| {
            let mut store = new_store(host.engine(), &noop.meta, host.services().clone(), None);
            let inst = pre.instantiate(&mut store).expect("instantiate");
            black_box(&inst);
            drop(store);
        })
    });
    g.bench_function("store_only", |b| {
        b.iter(|| {
            let store = new_store(host.engine(), &noop.meta, host.services().clone(), None);
            black_box(&store);
            drop(store);
        })
    });
    g.finish();
}

/// Times `iters` calls of `event` on live instances of `name`; instance creation (at a
/// CONNECT) and renewal are outside the timed region.
fn timed_calls(host: &Arc<PluginHost>, name: &str, event: &Event, iters: u64) -> Duration {
    let mut f = WasmFilter::new(host.clone(), name, None).expect("a milter plugin");
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        f.abort();
        black_box(f.call(&connect()));
        black_box(f.call(&helo()));
        black_box(f.call(&mail_from()));
        let n = CALLS_PER_INSTANCE.min(iters - done);
        let started = Instant::now();
        for _ in 0..n {
            black_box(f.call(black_box(event)));
        }
        total += started.elapsed();
        done += n;
    }
    f.abort();
    total
}

fn calls(c: &mut Criterion, host: &Arc<PluginHost>) {
    let mut g = c.benchmark_group("call");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    let cases = [
        ("connect", connect()),
        ("helo", helo()),
        ("mail_from", mail_from()),
        ("rcpt", rcpt()),
        ("headers_20", Event::Headers(header_list())),
        ("end_of_headers", Event::EndOfHeaders),
        ("body_64k", Event::Body(body())),
        ("end_of_message", Event::EndOfMessage),
    ];
    for (stage, event) in &cases {
        g.bench_function(*stage, |b| {
            b.iter_custom(|iters| timed_calls(host, "noop", event, iters))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("call_raw");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    let noop = plugin(host, "noop");
    let Pre::Milter(pre) = &noop.pre else {
        unreachable!("milter plugin")
    };
    let data = RawData::new();
    let (noop, data) = (&noop, &data);
    let raw = |stage: &'static str| {
        move |iters: u64| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let mut store = new_store(host.engine(), &noop.meta, host.services().clone(), None);
                let inst = pre.instantiate(&mut store).expect("instantiate");
                let f = inst.wasmail_plugin_filter();
                let n = CALLS_PER_INSTANCE.min(iters - done);
                let started = Instant::now();
                for _ in 0..n {
                    let v = match stage {
                        "helo" => f.call_on_helo(&mut store, "client.example"),
                        "end_of_headers" => f.call_on_end_of_headers(&mut store),
                        "headers_20" => f.call_on_headers(&mut store, &data.headers),
                        _ => f.call_on_body_chunk(&mut store, &data.body, false),
                    };
                    black_box(v.expect("call"));
                }
                total += started.elapsed();
                done += n;
            }
            total
        }
    };
    for stage in ["helo", "end_of_headers", "headers_20", "body_64k"] {
        g.bench_function(stage, |b| b.iter_custom(raw(stage)));
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let host = start_host();
    let (release, pagemap) = kernel();
    eprintln!(
        "plugin_host: allocation = {:?}, kernel = {release}, pagemap_scan = {}",
        host.engine().allocation(),
        if pagemap { "on" } else { "off" },
    );
    for name in ["noop", "stamp", "noop-reused", "stamp-reused"] {
        sanity(&host, name);
    }
    // Twice: the second message of a reusing plugin runs on the first one's instance.
    sanity(&host, "noop-reused");
    assert!(
        plugin(&host, "noop-reused")
            .counters
            .reused
            .load(Ordering::Relaxed)
            >= 1,
        "noop-reused: no instance was reused"
    );
    per_message(c, &host);
    calls(c, &host);
    eprintln!(
        "plugin_host: allocation = {:?} (noop: {} instances, {} calls, {} failures)",
        host.engine().allocation(),
        plugin(&host, "noop")
            .counters
            .instances
            .load(Ordering::Relaxed),
        plugin(&host, "noop").counters.calls.load(Ordering::Relaxed),
        plugin(&host, "noop")
            .counters
            .failures
            .load(Ordering::Relaxed),
    );
}

criterion_group!(plugin_host, benches);
criterion_main!(plugin_host);
