//! Postfix's search orders, applied by wasmail because Postfix does not apply them to
//! pattern tables.
//!
//! `tcp:` and `socketmap:` maps are "pattern" tables: Postfix sends them the full key only,
//! never the partial keys (`user@domain` without the extension, the bare domain, parent
//! domains, `@domain`, `*`) it would try against a hash or SQL table, and it does not
//! always lower-case the key (`virtual_alias_maps` and `transport_maps` receive
//! `Alice@Example.TEST` verbatim; measured on Postfix 3.7, see
//! shared/reference/hooks.md §1.3). So the responder folds the key to lower case and
//! expands it into the list of keys Postfix would have tried, most specific first; the
//! first key with an answer wins.
//!
//! | search | key `user+ext@sub.example.com` becomes |
//! |---|---|
//! | `exact` | the key |
//! | `address` (virtual(5), canonical(5), login maps) | `user+ext@…`, `user@…`, `@sub.example.com` |
//! | `transport` (transport(5)) | `user+ext@…`, `user@…`, `sub.example.com`, `.example.com`, `.com`, `*` |
//! | `access` (access(5)) | `user+ext@…`, `user@…`, `sub.example.com`, `example.com`, `com`, `user+ext@`, `user@` |
//!
//! `access` also expands host names (the name, then parent domains) and IPv4 addresses
//! (`192.0.2.1`, `192.0.2`, `192.0`, `192`) and IPv6 addresses (dropping one `:` group at
//! a time), as access(5) describes for client lookups. An extension is only stripped when
//! a local part remains.

use serde::Deserialize;

/// A search order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Search {
    /// The key only.
    Exact,
    /// virtual(5) / canonical(5): address, address without extension, `@domain`.
    Address,
    /// transport(5): address, without extension, domain, `.parent` domains, `*`.
    Transport,
    /// access(5): address, without extension, domain and parents, `user@`; host names and
    /// IP addresses by parent / prefix.
    Access,
}

impl Search {
    /// The order Postfix uses for a table of this name (for plugin tables without an
    /// explicit `search`).
    pub fn for_table(table: &str) -> Search {
        match table {
            "transport_maps" | "sender_dependent_default_transport_maps" => Search::Transport,
            "virtual_alias_maps"
            | "virtual_mailbox_maps"
            | "smtpd_sender_login_maps"
            | "canonical_maps"
            | "sender_canonical_maps"
            | "recipient_canonical_maps"
            | "sender_bcc_maps"
            | "recipient_bcc_maps"
            | "relay_recipient_maps" => Search::Address,
            t if t.ends_with("_access") || t.starts_with("check_") || t == "access" => {
                Search::Access
            }
            _ => Search::Exact,
        }
    }
}

/// Folds `key` the way the tables expect it: lower case, surrounding `<>` and spaces
/// removed.
pub fn fold(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix('<')
        .and_then(|k| k.strip_suffix('>'))
        .unwrap_or(k);
    k.to_lowercase()
}

/// `user+ext` → `user` when `delimiters` has a character found in `local` after its
/// first character; None when there is no extension to strip.
pub fn strip_extension<'a>(local: &'a str, delimiters: &str) -> Option<&'a str> {
    if delimiters.is_empty() {
        return None;
    }
    let pos = local.find(|c| delimiters.contains(c))?;
    (pos > 0).then(|| &local[..pos])
}

/// The keys to try for `folded` (already [`fold`]ed), most specific first, no duplicates.
pub fn candidates(search: Search, folded: &str, delimiters: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(6);
    let mut push = |k: String| {
        if !k.is_empty() && !out.contains(&k) {
            out.push(k);
        }
    };
    push(folded.to_string());
    if search == Search::Exact {
        return out;
    }
    if let Some((local, domain)) = folded.rsplit_once('@') {
        let bare = strip_extension(local, delimiters);
        if let Some(bare) = bare {
            push(format!("{bare}@{domain}"));
        }
        match search {
            Search::Exact => {}
            Search::Address => {
                if !domain.is_empty() {
                    push(format!("@{domain}"));
                }
            }
            Search::Transport => {
                if !domain.is_empty() {
                    push(domain.to_string());
                    for parent in parents(domain) {
                        push(format!(".{parent}"));
                    }
                }
                push("*".to_string());
            }
            Search::Access => {
                if !domain.is_empty() {
                    push(domain.to_string());
                    for parent in parents(domain) {
                        push(parent.to_string());
                    }
                }
                if !local.is_empty() {
                    push(format!("{local}@"));
                    if let Some(bare) = bare {
                        push(format!("{bare}@"));
                    }
                }
            }
        }
        return out;
    }
    match search {
        Search::Exact | Search::Address => {}
        Search::Transport => {
            if folded != "*" {
                for parent in parents(folded) {
                    push(format!(".{parent}"));
                }
                push("*".to_string());
            }
        }
        Search::Access => {
            if let Ok(std::net::IpAddr::V4(_)) = folded.parse::<std::net::IpAddr>() {
                let mut k = folded;
                while let Some((head, _)) = k.rsplit_once('.') {
                    push(head.to_string());
                    k = head;
                }
            } else if folded.contains(':') && folded.parse::<std::net::Ipv6Addr>().is_ok() {
                let mut k = folded.trim_end_matches(':');
                while let Some((head, _)) = k.rsplit_once(':') {
                    let head = head.trim_end_matches(':');
                    if head.is_empty() {
                        break;
                    }
                    push(head.to_string());
                    k = head;
                }
            } else {
                for parent in parents(folded) {
                    push(parent.to_string());
                }
            }
        }
    }
    out
}

/// Parent domains of `domain`, nearest first: `a.b.c` → `b.c`, `c`.
fn parents(domain: &str) -> impl Iterator<Item = &str> {
    let mut rest = domain;
    std::iter::from_fn(move || {
        let (_, parent) = rest.split_once('.')?;
        rest = parent;
        (!parent.is_empty()).then_some(parent)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(search: Search, key: &str) -> Vec<String> {
        candidates(search, &fold(key), "+")
    }

    #[test]
    fn folding_lowercases_and_strips_brackets() {
        assert_eq!(fold(" <Alice@Example.TEST> "), "alice@example.test");
        assert_eq!(fold("Ünïcode@Example.test"), "ünïcode@example.test");
    }

    #[test]
    fn exact_is_the_key() {
        assert_eq!(c(Search::Exact, "Bob+x@Example.com"), ["bob+x@example.com"]);
    }

    #[test]
    fn address_order() {
        assert_eq!(
            c(Search::Address, "Bob+Tag@Example.COM"),
            ["bob+tag@example.com", "bob@example.com", "@example.com"]
        );
        assert_eq!(
            c(Search::Address, "bob@example.com"),
            ["bob@example.com", "@example.com"]
        );
        // A bare domain (virtual_alias_domains probes) is looked up as is.
        assert_eq!(c(Search::Address, "example.com"), ["example.com"]);
        // A leading delimiter is not an extension.
        assert_eq!(
            c(Search::Address, "+x@example.com"),
            ["+x@example.com", "@example.com"]
        );
    }

    #[test]
    fn transport_order() {
        assert_eq!(
            c(Search::Transport, "Alice+a@Sub.Example.TEST"),
            [
                "alice+a@sub.example.test",
                "alice@sub.example.test",
                "sub.example.test",
                ".example.test",
                ".test",
                "*"
            ]
        );
        assert_eq!(c(Search::Transport, "*"), ["*"]);
        assert_eq!(
            c(Search::Transport, "example.com"),
            ["example.com", ".com", "*"]
        );
    }

    #[test]
    fn access_order() {
        assert_eq!(
            c(Search::Access, "spam+1@mx.example.test"),
            [
                "spam+1@mx.example.test",
                "spam@mx.example.test",
                "mx.example.test",
                "example.test",
                "test",
                "spam+1@",
                "spam@"
            ]
        );
        assert_eq!(
            c(Search::Access, "192.0.2.10"),
            ["192.0.2.10", "192.0.2", "192.0", "192"]
        );
        assert_eq!(
            c(Search::Access, "2001:db8:1::5"),
            ["2001:db8:1::5", "2001:db8:1", "2001:db8", "2001"]
        );
        assert_eq!(
            c(Search::Access, "mail.example.org"),
            ["mail.example.org", "example.org", "org"]
        );
    }

    #[test]
    fn delimiters_are_configurable() {
        assert_eq!(
            candidates(Search::Address, "a-b@x.test", "+-"),
            ["a-b@x.test", "a@x.test", "@x.test"]
        );
        assert_eq!(
            candidates(Search::Address, "a+b@x.test", ""),
            ["a+b@x.test", "@x.test"]
        );
    }

    #[test]
    fn default_orders_by_table_name() {
        assert_eq!(Search::for_table("transport_maps"), Search::Transport);
        assert_eq!(Search::for_table("virtual_alias_maps"), Search::Address);
        assert_eq!(Search::for_table("check_sender_access"), Search::Access);
        assert_eq!(Search::for_table("helo_access"), Search::Access);
        assert_eq!(Search::for_table("whatever"), Search::Exact);
    }
}
