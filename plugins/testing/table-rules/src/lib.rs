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

use std::sync::atomic::{AtomicU32, Ordering};

use wasmail_plugin_sdk::table::prelude::*;

static ANSWERED: AtomicU32 = AtomicU32::new(0);

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
        if config::list_or("trap", "").iter().any(|t| t == k) {
            panic!("table-rules: trap on {k}");
        }
        if config::list_or("temp", "").iter().any(|t| t == k) {
            return Answer::temp(format!("no answer for {k} right now"));
        }
        if config::list_or("perm", "").iter().any(|t| t == k) {
            return Answer::perm(format!("{k} is misconfigured"));
        }
        for pair in config::list_or("found", "").iter() {
            if let Some((name, value)) = pair.split_once('=')
                && name == k
            {
                if config::get_bool_or("echo_original", false) {
                    return Answer::found(format!("{value} original={}", key.original));
                }
                return Answer::found(value);
            }
        }
        Answer::NotFound
    }
}

wasmail_plugin_sdk::export_table!(TableRules);
