//! `virtual-mailbox`: answers Postfix's `virtual_mailbox_domains` and `virtual_mailbox_maps`
//! lookups from the plugin's settings (world `table`). See README.md.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use wasmail_plugin_sdk::addr;
use wasmail_plugin_sdk::table::prelude::*;

const DOMAINS_TABLE: &str = "virtual_mailbox_domains";
const MAPS_TABLE: &str = "virtual_mailbox_maps";

struct VirtualMailbox;

impl Table for VirtualMailbox {
    fn describe() -> Description {
        Description::new(
            "virtual-mailbox",
            env!("CARGO_PKG_VERSION"),
            &[DOMAINS_TABLE, MAPS_TABLE],
        )
    }

    fn lookup(table: String, key: Key) -> Answer {
        // Built once per instance: the host reuses instances across lookups, and settings
        // do not change while an instance lives.
        DIRECTORY.with(|d| {
            d.get_or_init(|| {
                Directory::new(
                    &config::get_list_or("domains", ""),
                    &config::get_list_or("mailboxes", ""),
                )
            })
            .lookup(&table, &key.folded)
        })
    }
}

wasmail_plugin_sdk::export_table!(VirtualMailbox);

thread_local! {
    static DIRECTORY: std::cell::OnceCell<Directory> = const { std::cell::OnceCell::new() };
}

/// The configured domains and mailboxes, lower case.
struct Directory {
    domains: HashSet<String>,
    /// Mailbox address → its maildir path (`domain/local/`), worked out once; a mailbox
    /// whose path would be unsafe is left out (not found).
    mailboxes: HashMap<String, String>,
}

impl Directory {
    fn new(domains: &[String], mailboxes: &[String]) -> Directory {
        Directory {
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            mailboxes: mailboxes
                .iter()
                .map(|m| addr::normalize(m))
                .filter_map(|m| maildir(&m).map(|path| (m, path)))
                .collect(),
        }
    }

    /// Answers one lookup.
    fn lookup(&self, table: &str, key: &str) -> Answer {
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Answer::perm(format!("invalid lookup key {key:?}"));
        }
        // The host passes keys folded to lower case; copy only when one is not.
        let key = if key.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(key.to_ascii_lowercase())
        } else {
            Cow::Borrowed(key)
        };
        match table {
            DOMAINS_TABLE if self.domains.contains(key.as_ref()) => Answer::found("OK"),
            MAPS_TABLE => match self.mailboxes.get(key.as_ref()) {
                Some(path) => Answer::found(path.as_str()),
                None => Answer::NotFound,
            },
            _ => Answer::NotFound,
        }
    }
}

/// The maildir path of an address relative to the virtual mailbox base: `<domain>/<local>/`,
/// or None when the local part or domain would make an unsafe path.
fn maildir(address: &str) -> Option<String> {
    let domain = addr::domain(address)?;
    let local = addr::local_part(address);
    if local.is_empty() || local.contains('/') || domain.contains('/') || local.starts_with('.') {
        return None;
    }
    Some(format!("{domain}/{local}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        Directory::new(
            &["example.com".into(), "Example.NET".into()],
            &["alice@example.com".into(), "<Bob@Example.net>".into()],
        )
    }

    #[test]
    fn domains() {
        let d = dir();
        assert_eq!(d.lookup(DOMAINS_TABLE, "example.com"), Answer::found("OK"));
        assert_eq!(d.lookup(DOMAINS_TABLE, "example.net"), Answer::found("OK"));
        assert_eq!(d.lookup(DOMAINS_TABLE, "example.org"), Answer::NotFound);
        assert_eq!(
            d.lookup(DOMAINS_TABLE, "alice@example.com"),
            Answer::NotFound
        );
    }

    #[test]
    fn mailboxes() {
        let d = dir();
        assert_eq!(
            d.lookup(MAPS_TABLE, "alice@example.com"),
            Answer::found("example.com/alice/")
        );
        assert_eq!(
            d.lookup(MAPS_TABLE, "bob@example.net"),
            Answer::found("example.net/bob/")
        );
        assert_eq!(d.lookup(MAPS_TABLE, "carol@example.com"), Answer::NotFound);
        assert_eq!(d.lookup(MAPS_TABLE, "@example.com"), Answer::NotFound);
        assert_eq!(d.lookup(MAPS_TABLE, "example.com"), Answer::NotFound);
    }

    #[test]
    fn bad_keys_and_tables() {
        let d = dir();
        assert!(matches!(d.lookup(MAPS_TABLE, ""), Answer::Perm(_)));
        assert!(matches!(d.lookup(DOMAINS_TABLE, "a b"), Answer::Perm(_)));
        assert!(matches!(d.lookup(MAPS_TABLE, "a@b\t"), Answer::Perm(_)));
        assert_eq!(d.lookup("other_table", "example.com"), Answer::NotFound);
    }

    #[test]
    fn maildir_paths() {
        assert_eq!(maildir("a@b.c").as_deref(), Some("b.c/a/"));
        assert_eq!(maildir("../x@b.c"), None);
        assert_eq!(maildir("a@b/c"), None);
        assert_eq!(maildir("nodomain"), None);
    }
}
