//! `[lookup]` configuration section: the socketmap and tcp_table listeners and the table
//! bindings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::search::Search;
use crate::config::Validator;

/// Raw `[lookup]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupSection {
    /// socketmap listener (`unix:/path` or `inet:HOST:PORT`); every table is served on it,
    /// selected by the name at the end of Postfix's map spec
    /// (`socketmap:unix:/run/wasmail/socketmap.sock:virtual_mailbox_maps`). Default
    /// `unix:/run/wasmail/socketmap.sock`; `""` = no socketmap listener.
    pub socketmap: String,
    /// tcp_table listeners, one per table (the protocol has no table name): table name →
    /// `inet:HOST:PORT` (or `unix:/path` for other clients). Postfix can only reach
    /// tcp_table over TCP. Default none.
    pub tcp: BTreeMap<String, String>,
    /// File mode of unix sockets, octal text. Default `"0666"`: Postfix's smtpd,
    /// cleanup and trivial-rewrite run as `postfix`; restrict the directory instead.
    pub socket_mode: String,
    /// Postfix's `recipient_delimiter`: characters that start an address extension
    /// (`user+ext@domain`). Default `"+"`; `""` = extensions are not stripped.
    pub recipient_delimiter: String,
    /// Most concurrent client connections (all listeners together). Default 512.
    pub max_connections: usize,
    /// Close a connection after this long without a request. Default 5 min (Postfix closes
    /// idle socketmap connections after 10 s and tcp_table connections when its process
    /// exits).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest socketmap request accepted, bytes. Default 100000 (Postfix's reply limit;
    /// real requests are a table name and an address).
    pub max_request: usize,
    /// Warm `table` plugin instances kept for reuse (all plugins and domains together); an
    /// instance serves one plugin version and one domain, and is dropped after any failure.
    /// Default 32; 0 = a fresh instance for every lookup (slower: instantiation costs about
    /// as much as the lookup's socket round trip).
    pub instance_pool: usize,
    /// Lookups one instance may answer before it is retired. Default 10000.
    pub instance_max_uses: u32,
    /// Tables, by the name Postfix uses in the map spec. The built-in names
    /// (`virtual_mailbox_domains`, `virtual_mailbox_maps`, `virtual_alias_maps`,
    /// `transport_maps`, `smtpd_sender_login_maps`) are answered from the domain registry
    /// without any entry here; an entry binds a name to a `table` plugin instead.
    pub tables: BTreeMap<String, TableEntry>,
}

/// `[lookup.tables.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    /// The `table` plugin (a `[plugin.NAME]`) that answers this table. Absent = the
    /// registry answers (only for the built-in names).
    pub plugin: Option<String>,
    /// Search order applied to the key before asking the plugin: `exact`, `address`,
    /// `alias`, `transport`, `access` or `domain` (see docs/postfix.md). Default: the
    /// order Postfix itself uses for a table of that name (`transport_maps` →
    /// `transport`, `*_access` → `access`, ...), else `exact`.
    pub search: Option<Search>,
}

impl Default for LookupSection {
    fn default() -> Self {
        LookupSection {
            socketmap: "unix:/run/wasmail/socketmap.sock".into(),
            tcp: BTreeMap::new(),
            socket_mode: "0666".into(),
            recipient_delimiter: "+".into(),
            max_connections: 512,
            idle_timeout: Duration::from_secs(300),
            max_request: 100_000,
            instance_pool: 32,
            instance_max_uses: 10_000,
            tables: BTreeMap::new(),
        }
    }
}

/// The tables the registry answers by itself.
pub const BUILTIN_TABLES: [&str; 5] = [
    "virtual_mailbox_domains",
    "virtual_mailbox_maps",
    "virtual_alias_maps",
    "transport_maps",
    "smtpd_sender_login_maps",
];

impl LookupSection {
    /// Checks values serde cannot check by type; `plugin_exists` says whether a
    /// `[plugin.NAME]` table exists.
    pub fn validate(&self, key: &str, plugin_exists: &dyn Fn(&str) -> bool, v: &mut Validator) {
        if !self.socketmap.is_empty() {
            crate::listen::validate_spec(&self.socketmap, &format!("{key}.socketmap"), v);
        }
        for (table, listen) in &self.tcp {
            crate::listen::validate_spec(listen, &format!("{key}.tcp.{table}"), v);
            if !self.serves(table) {
                v.error(
                    format!("{key}.tcp.{table}"),
                    format_args!(
                        "no table `{table}`: use a built-in name ({}) or add [{key}.tables.{table}] with a plugin",
                        BUILTIN_TABLES.join(", ")
                    ),
                );
            }
        }
        if self.socketmap.is_empty() && self.tcp.is_empty() {
            v.error(
                format!("{key}.socketmap"),
                "no listener: set socketmap or add a tcp table",
            );
        }
        if crate::listen::parse_mode(&self.socket_mode).is_none() {
            v.error(
                format!("{key}.socket_mode"),
                "must be octal text such as \"0666\"",
            );
        }
        if self
            .recipient_delimiter
            .chars()
            .any(|c| c == '@' || c.is_whitespace() || c.is_control())
        {
            v.error(
                format!("{key}.recipient_delimiter"),
                "must not contain '@', spaces or control characters",
            );
        }
        if self.max_connections == 0 {
            v.error(format!("{key}.max_connections"), "must be at least 1");
        }
        if !(256..=1 << 20).contains(&self.max_request) {
            v.error(
                format!("{key}.max_request"),
                "must be between 256 and 1048576 bytes",
            );
        }
        if self.instance_max_uses == 0 {
            v.error(format!("{key}.instance_max_uses"), "must be at least 1");
        }
        for (table, entry) in &self.tables {
            if !valid_table_name(table) {
                v.error(
                    format!("{key}.tables.{table}"),
                    "a table name is letters, digits, '_', '-' and '.'",
                );
            }
            match &entry.plugin {
                Some(p) if !plugin_exists(p) => v.error(
                    format!("{key}.tables.{table}.plugin"),
                    format_args!("no plugin `{p}`: add a [plugin.{p}] table"),
                ),
                None if !BUILTIN_TABLES.contains(&table.as_str()) => v.error(
                    format!("{key}.tables.{table}"),
                    format_args!(
                        "`{table}` is not a built-in table ({}); bind it to a plugin with `plugin = \"NAME\"`",
                        BUILTIN_TABLES.join(", ")
                    ),
                ),
                _ => {}
            }
        }
    }

    /// True when `table` is served (built-in or configured).
    pub fn serves(&self, table: &str) -> bool {
        BUILTIN_TABLES.contains(&table) || self.tables.contains_key(table)
    }

    /// Names of the plugins tables are bound to.
    pub fn plugins(&self) -> impl Iterator<Item = &String> {
        self.tables.values().filter_map(|t| t.plugin.as_ref())
    }
}

fn valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
