//! Capability `config`: the plugin's own settings from `[plugin.NAME.settings]`.
//!
//! Needs the `config` grant. The host passes TOML strings as they are and other values in
//! TOML syntax (`60`, `true`, `["a", "b"]`); the typed getters here accept both forms where
//! it makes sense (e.g. a list may be `"a, b"` or `["a", "b"]`).
//!
//! Settings cannot change while an instance lives (a configuration change reloads the
//! plugin, which gets new instances), and the host may reuse an instance for many requests
//! (lookups), so values are fetched from the host once per instance and kept, and parsed
//! lists too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::str::FromStr;

use crate::milter::wasmail::plugin::config as raw;

/// One setting's parsed lists, by the default text they were asked with.
type ListsByDefault = HashMap<String, Rc<[String]>>;

thread_local! {
    static VALUES: RefCell<HashMap<String, Option<String>>> = RefCell::new(HashMap::new());
    /// Parsed lists by setting name, then by default text.
    static LISTS: RefCell<HashMap<String, ListsByDefault>> = RefCell::new(HashMap::new());
}

/// The value of setting `key` as text, if set.
pub fn get(key: &str) -> Option<String> {
    if let Some(v) = VALUES.with(|c| c.borrow().get(key).cloned()) {
        return v;
    }
    let v = raw::get(key);
    VALUES.with(|c| c.borrow_mut().insert(key.to_string(), v.clone()));
    v
}

/// The value of setting `key`, or `default` when it is not set.
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_string())
}

/// All setting names.
pub fn keys() -> Vec<String> {
    raw::keys()
}

/// Setting `key` parsed with [`FromStr`] (surrounding whitespace and TOML quotes removed);
/// `default` when it is not set **or does not parse**.
pub fn get_parsed_or<T: FromStr>(key: &str, default: T) -> T {
    get(key)
        .and_then(|v| unquote(v.trim()).parse().ok())
        .unwrap_or(default)
}

/// Setting `key` as a boolean (see [`parse_bool`]); `default` when it is not set or is not a
/// boolean.
pub fn get_bool_or(key: &str, default: bool) -> bool {
    get(key).and_then(|v| parse_bool(&v)).unwrap_or(default)
}

/// Setting `key` as a list (see [`parse_list`]), or `None` when it is not set.
pub fn get_list(key: &str) -> Option<Vec<String>> {
    get(key).map(|v| parse_list(&v))
}

/// Setting `key` as a list (see [`parse_list`]); `default` (also parsed as a list) when it is
/// not set.
pub fn get_list_or(key: &str, default: &str) -> Vec<String> {
    list_or(key, default).to_vec()
}

/// [`get_list_or`] without the copy: the parsed list shared with the instance's cache.
/// Prefer it on hot paths (a table plugin answering many lookups per instance): after the
/// first call it costs two hash lookups, whatever the list's length.
pub fn list_or(key: &str, default: &str) -> Rc<[String]> {
    let cached = LISTS.with(|c| c.borrow().get(key).and_then(|d| d.get(default)).cloned());
    if let Some(v) = cached {
        return v;
    }
    let v: Rc<[String]> = parse_list(&get(key).unwrap_or_else(|| default.to_string())).into();
    LISTS.with(|c| {
        c.borrow_mut()
            .entry(key.to_string())
            .or_default()
            .insert(default.to_string(), Rc::clone(&v))
    });
    v
}

/// Parses a boolean: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0` (ASCII case ignored,
/// TOML quotes allowed).
pub fn parse_bool(value: &str) -> Option<bool> {
    match unquote(value.trim()).to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Parses a list: either comma-separated text (`exe, scr,bat`) or a TOML array of strings
/// (`["exe", "scr"]`). Items are trimmed and unquoted; empty items are dropped. Commas
/// inside quoted items are not supported.
pub fn parse_list(value: &str) -> Vec<String> {
    let value = value.trim();
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    inner
        .split(',')
        .map(|item| unquote(item.trim()).trim())
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// Removes one pair of surrounding TOML quotes (`"..."` or `'...'`), if present.
fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(parse_list("exe, scr,,bat "), ["exe", "scr", "bat"]);
        assert_eq!(
            parse_list(r#"["exe", 'scr' ,"bat"]"#),
            ["exe", "scr", "bat"]
        );
        assert_eq!(parse_list("[]"), Vec::<String>::new());
        assert_eq!(parse_list(""), Vec::<String>::new());
    }

    #[test]
    fn bools() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool(" No "), Some(false));
        assert_eq!(parse_bool("\"on\""), Some(true));
        assert_eq!(parse_bool("maybe"), None);
    }

    #[test]
    fn unquoting() {
        assert_eq!(unquote("\"60\""), "60");
        assert_eq!(unquote("60"), "60");
        assert_eq!(unquote("\""), "\"");
    }
}
