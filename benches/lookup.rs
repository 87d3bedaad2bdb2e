//! Lookup cost in process: `Tables::lookup` (what the socketmap and tcp_table responders
//! call once per request) for a registry table and for `table` plugins, and the plugin
//! call split into its parts. The socket side is measured by `benches/lookup.sh`.
//!
//! ```sh
//! scripts/build-plugins.sh            # once, if target/plugins/*.wasm are missing
//! cargo bench --bench lookup
//! ```
//!
//! The directory is the one `benches/lookup.sh` uses: 20 domains `dNN.bench.test` with
//! 10 mailboxes `userM@...` each, in an in-memory SQLite registry and in the
//! `virtual-mailbox` plugin's settings; keys cycle over every third mailbox.
//!
//! Groups:
//! - `tables/*`: one `Tables::lookup`. `registry_ext` and `plugin_virtual_mailbox` ask
//!   `virtual_mailbox_maps` for `User3+Bench@D07.Bench.TEST` (folded; the candidate with
//!   the extension is not found, the one without is); `registry_exact` asks for
//!   `user3@d07.bench.test`; `plugin_table_rules` asks table-rules (search exact, the keys
//!   in its `found` setting) for the same plain key.
//! - `table_plugin/*`: the plugin call's parts through the host's own `new_store` and
//!   `InstancePre`: `instantiate_only` (new store + instantiate + drop, table-rules),
//!   `call_table_rules` and `call_virtual_mailbox` (one `lookup` export call on a live
//!   instance, instance creation outside the timed region).

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

use wasmail::config::Config;
use wasmail::host::bindings::table::exports::wasmail::plugin::lookup as wlookup;
use wasmail::host::engine::World;
use wasmail::host::plugin::{Pre, new_store};
use wasmail::host::set::PluginHost;
use wasmail::host::state::Services;
use wasmail::lookup::config::TableEntry;
use wasmail::lookup::{Answer, Tables};
use wasmail::registry::sqlite::SqliteRegistry;
use wasmail::registry::{Domain, Live, Mailbox, Registry};

const DOMAINS: usize = 20;
const MAILBOXES: usize = 10;
/// Calls per live instance in `table_plugin/call_*` before it is renewed (untimed), well
/// inside the call deadline.
const CALLS_PER_INSTANCE: u64 = 2_000;

fn plugins_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/plugins");
    if !dir.join("table-rules.wasm").is_file() || !dir.join("virtual-mailbox.wasm").is_file() {
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/build-plugins.sh"))
            .current_dir(root)
            .status()
            .expect("running scripts/build-plugins.sh");
        assert!(status.success(), "scripts/build-plugins.sh failed");
    }
    dir
}

struct Directory {
    domains: Vec<String>,
    mailboxes: Vec<String>,
    /// Every third mailbox, as asked by Postfix with an extension, mixed case.
    keys_ext: Vec<String>,
    /// The same mailboxes, lower case.
    keys_plain: Vec<String>,
}

fn directory() -> Directory {
    let mut d = Directory {
        domains: Vec::new(),
        mailboxes: Vec::new(),
        keys_ext: Vec::new(),
        keys_plain: Vec::new(),
    };
    for n in 1..=DOMAINS {
        d.domains.push(format!("d{n:02}.bench.test"));
        for m in 1..=MAILBOXES {
            let i = d.mailboxes.len();
            d.mailboxes.push(format!("user{m}@d{n:02}.bench.test"));
            if i.is_multiple_of(3) {
                d.keys_plain.push(format!("user{m}@d{n:02}.bench.test"));
                d.keys_ext.push(format!("User{m}+Bench@D{n:02}.Bench.TEST"));
            }
        }
    }
    d
}

fn toml_list(items: impl IntoIterator<Item = String>) -> String {
    let quoted: Vec<String> = items.into_iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

struct Setup {
    host: Arc<PluginHost>,
    /// Built-in registry tables plus `rules` (table-rules).
    registry: Tables,
    /// `virtual_mailbox_maps` bound to the virtual-mailbox plugin.
    plugin: Tables,
    dir: Directory,
}

fn setup() -> Setup {
    let dir = directory();
    let found = dir
        .keys_plain
        .iter()
        .map(|k| {
            let (local, domain) = k.split_once('@').expect("an address");
            format!("{k}={domain}/{local}/")
        })
        .collect::<Vec<_>>();
    let text = format!(
        r#"
[plugins]
dir = "{plugins}"
watch = false

[plugin.rules]
file = "table-rules.wasm"
grants = ["config"]
[plugin.rules.settings]
found = {found}

[plugin.virtual-mailbox]
file = "virtual-mailbox.wasm"
grants = ["config"]
[plugin.virtual-mailbox.settings]
domains = {domains}
mailboxes = {mailboxes}

[lookup]
socketmap = "unix:/nonexistent/bench.sock"
[lookup.tables.rules]
plugin = "rules"
search = "exact"
"#,
        plugins = plugins_dir().display(),
        found = toml_list(found),
        domains = toml_list(dir.domains.clone()),
        mailboxes = toml_list(dir.mailboxes.clone()),
    );
    let at = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/lookup.toml");
    let config = Config::from_str_at(&text, &at).unwrap_or_else(|e| panic!("config: {e}"));
    let expect: HashMap<String, World> = ["rules", "virtual-mailbox"]
        .into_iter()
        .map(|n| (n.to_string(), World::Table))
        .collect();
    // Neither plugin uses a service-backed capability (kv, auth, send): no runtime needed.
    let host = PluginHost::start(&config.plugins, &config.plugin, expect, Services::default())
        .unwrap_or_else(|e| panic!("loading plugins: {e:#}"));

    let registry = SqliteRegistry::open_in_memory().expect("in-memory registry");
    for name in &dir.domains {
        registry
            .add_domain(&Domain {
                name: name.clone(),
                ..Domain::default()
            })
            .expect("add domain");
    }
    for address in &dir.mailboxes {
        registry
            .add_mailbox(&Mailbox {
                address: address.clone(),
                ..Mailbox::default()
            })
            .expect("add mailbox");
    }
    let live = Live::new(Arc::new(registry)).expect("registry snapshot");

    let section = config.lookup.clone().expect("[lookup]");
    let registry_tables =
        Tables::new(&section, Some(live), Some(host.clone())).expect("registry tables");
    let mut plugin_section = section;
    plugin_section.tables.clear();
    plugin_section.tables.insert(
        "virtual_mailbox_maps".into(),
        TableEntry {
            plugin: Some("virtual-mailbox".into()),
            search: None,
        },
    );
    let plugin_tables =
        Tables::new(&plugin_section, None, Some(host.clone())).expect("plugin tables");
    Setup {
        host,
        registry: registry_tables,
        plugin: plugin_tables,
        dir,
    }
}

/// Checks every key of a case answers `Found`, so no case measures not-found by mistake.
fn check(tables: &Tables, table: &str, keys: &[String]) {
    for k in keys {
        let a = tables.lookup(table, k.as_bytes());
        assert!(matches!(a, Answer::Found(_)), "{table} {k}: {a:?}");
    }
}

fn tables(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("tables");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    let cases: [(&str, &Tables, &str, &[String]); 4] = [
        (
            "registry_ext",
            &s.registry,
            "virtual_mailbox_maps",
            &s.dir.keys_ext,
        ),
        (
            "registry_exact",
            &s.registry,
            "virtual_mailbox_maps",
            &s.dir.keys_plain,
        ),
        (
            "plugin_table_rules",
            &s.registry,
            "rules",
            &s.dir.keys_plain,
        ),
        (
            "plugin_virtual_mailbox",
            &s.plugin,
            "virtual_mailbox_maps",
            &s.dir.keys_ext,
        ),
    ];
    for (name, tables, table, keys) in cases {
        check(tables, table, keys);
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(tables.lookup(table, black_box(keys[i].as_bytes())))
            })
        });
    }
    g.finish();
}

/// Times `iters` `lookup` export calls of plugin `name` on live instances.
fn timed_calls(
    host: &PluginHost,
    name: &str,
    table: &str,
    keys: &[String],
    iters: u64,
) -> Duration {
    let p = host.get(name).expect("plugin loaded");
    let Pre::Table(pre) = &p.pre else {
        unreachable!("table plugin")
    };
    let keys: Vec<wlookup::Key> = keys
        .iter()
        .map(|k| wlookup::Key {
            folded: k.clone(),
            original: k.clone(),
        })
        .collect();
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let mut store = new_store(host.engine(), &p.meta, host.services().clone(), None);
        let inst = pre.instantiate(&mut store).expect("instantiate");
        let f = inst.wasmail_plugin_lookup();
        let n = CALLS_PER_INSTANCE.min(iters - done);
        let started = Instant::now();
        for i in 0..n {
            let key = &keys[(done + i) as usize % keys.len()];
            black_box(f.call_lookup(&mut store, table, key).expect("call"));
        }
        total += started.elapsed();
        done += n;
    }
    total
}

fn table_plugin(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("table_plugin");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    let host = &s.host;
    let rules = host.get("rules").expect("plugin loaded");
    let Pre::Table(pre) = &rules.pre else {
        unreachable!("table plugin")
    };
    g.bench_function("instantiate_only", |b| {
        b.iter(|| {
            let mut store = new_store(host.engine(), &rules.meta, host.services().clone(), None);
            let inst = pre.instantiate(&mut store).expect("instantiate");
            black_box(&inst);
            drop(store);
        })
    });
    g.bench_function("call_table_rules", |b| {
        b.iter_custom(|iters| timed_calls(host, "rules", "rules", &s.dir.keys_plain, iters))
    });
    // The key without its extension: the candidate that is found.
    g.bench_function("call_virtual_mailbox", |b| {
        b.iter_custom(|iters| {
            timed_calls(
                host,
                "virtual-mailbox",
                "virtual_mailbox_maps",
                &s.dir.keys_plain,
                iters,
            )
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let s = setup();
    tables(c, &s);
    table_plugin(c, &s);
}

criterion_group!(lookup, benches);
criterion_main!(lookup);
