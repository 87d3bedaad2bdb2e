//! `table-rules` (test plugin, world `table`): answers every table from its settings, so
//! tests can make the responder see each kind of answer.
//!
//! Settings (each optional):
//! - `found`: list of `key=value` pairs; a lookup of `key` answers `value`;
//! - `temp`, `perm`: lists of keys answered with a temporary / permanent failure;
//! - `trap`: list of keys on which the plugin traps (a plugin fault);
//! - `echo_original`: when `true`, a found value is suffixed with ` original=<key as Postfix
//!   sent it>` so tests can check what the host passed.
//!
//! - a key `count@DOMAIN` (or `count`) answers how many lookups this instance has answered,
//!   so tests can see instance reuse and its per-domain isolation.
//!
//! Keys are compared with the host's folded key.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};

use wasmail_plugin_sdk::table::prelude::*;

static ANSWERED: AtomicU32 = AtomicU32::new(0);

/// The settings, parsed on an instance's first lookup: settings cannot change while an
/// instance lives, and the host reuses an instance for many lookups, so each lookup costs
/// a few hash probes, whatever the lists' lengths.
struct Rules {
    found: HashMap<String, String>,
    temp: HashSet<String>,
    perm: HashSet<String>,
    trap: HashSet<String>,
    echo_original: bool,
}

impl Rules {
    fn from_settings() -> Rules {
        let set = |name: &str| config::list_or(name, "").iter().cloned().collect();
        let mut found = HashMap::new();
        for pair in config::list_or("found", "").iter() {
            if let Some((name, value)) = pair.split_once('=') {
                // The first pair for a key wins, as a scan in list order would find it.
                found
                    .entry(name.to_string())
                    .or_insert_with(|| value.to_string());
            }
        }
        Rules {
            found,
            temp: set("temp"),
            perm: set("perm"),
            trap: set("trap"),
            echo_original: config::get_bool_or("echo_original", false),
        }
    }
}

thread_local! {
    static RULES: OnceCell<Rules> = const { OnceCell::new() };
}

struct TableRules;

impl Table for TableRules {
    fn describe() -> Description {
        Description::new("table-rules", env!("CARGO_PKG_VERSION"), &["*"])
    }

    fn lookup(_table: String, key: Key) -> Answer {
        let k = key.folded.as_str();
        let n = ANSWERED.fetch_add(1, Ordering::Relaxed) + 1;
        if k == "count" || k.starts_with("count@") {
            return Answer::found(n.to_string());
        }
        RULES.with(|r| {
            let rules = r.get_or_init(Rules::from_settings);
            if rules.trap.contains(k) {
                panic!("table-rules: trap on {k}");
            }
            if rules.temp.contains(k) {
                return Answer::temp(format!("no answer for {k} right now"));
            }
            if rules.perm.contains(k) {
                return Answer::perm(format!("{k} is misconfigured"));
            }
            match rules.found.get(k) {
                Some(value) if rules.echo_original => {
                    Answer::found(format!("{value} original={}", key.original))
                }
                Some(value) => Answer::found(value.as_str()),
                None => Answer::NotFound,
            }
        })
    }
}

wasmail_plugin_sdk::export_table!(TableRules);
