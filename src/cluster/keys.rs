//! The etcd key layout and values of the cluster (no I/O).
//!
//! ```text
//! <prefix>/hosts/<host>     lease-bound to <host>'s lease; JSON HostRecord
//! <prefix>/owners/<domain>  lease-bound to the owner's lease; value: the owner's host name
//! <prefix>/drain/<host>     no lease (survives restarts); present = <host> is drained
//! ```
//!
//! The three prefixes sort as `drain/ < hosts/ < owners/`, so one ranged read (and one
//! watch) from `<prefix>/drain/` to the end of `<prefix>/owners/` sees all of them and
//! nothing of `<prefix>/registry/`.

use serde::{Deserialize, Serialize};

/// What one host advertises in its membership key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Host-to-host relay address (`IP:PORT`).
    pub relay: String,
    /// The host's LMTP front for Postfix, if advertised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lmtp: Option<String>,
    /// Rendezvous weight.
    pub capacity: u32,
    /// The etcd lease its keys are bound to (other hosts bind claims made for it to it).
    pub lease: i64,
    /// Set once the host has seen its drain key: it takes no new domains.
    #[serde(default)]
    pub draining: bool,
    /// When it registered (Unix seconds).
    #[serde(default)]
    pub since: u64,
}

/// The key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under the watched range is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// `hosts/<host>`.
    Host(String),
    /// `owners/<domain>`.
    Owner(String),
    /// `drain/<host>`.
    Drain(String),
}

impl Keys {
    /// Keys under `prefix` (no trailing `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// `<prefix>/hosts/<host>`.
    pub fn host(&self, host: &str) -> String {
        format!("{}/hosts/{host}", self.prefix)
    }

    /// `<prefix>/owners/<domain>`.
    pub fn owner(&self, domain: &str) -> String {
        format!("{}/owners/{domain}", self.prefix)
    }

    /// `<prefix>/drain/<host>`.
    pub fn drain(&self, host: &str) -> String {
        format!("{}/drain/{host}", self.prefix)
    }

    /// The `[start, end)` range covering drain/, hosts/ and owners/.
    pub fn range(&self) -> (String, String) {
        (
            format!("{}/drain/", self.prefix),
            format!("{}/owners0", self.prefix),
        )
    }

    /// Classifies a key of the watched range; None for anything else.
    pub fn kind(&self, key: &[u8]) -> Option<KeyKind> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (kind, name) = rest.split_once('/')?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        Some(match kind {
            "hosts" => KeyKind::Host(name.to_string()),
            "owners" => KeyKind::Owner(name.to_string()),
            "drain" => KeyKind::Drain(name.to_string()),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_range() {
        let k = Keys::new("/wasmail/");
        assert_eq!(k.host("mx1"), "/wasmail/hosts/mx1");
        assert_eq!(k.owner("example.com"), "/wasmail/owners/example.com");
        let (start, end) = k.range();
        for key in [k.drain("a"), k.host("zz"), k.owner("~~~")] {
            assert!(key >= start && key < end, "{key}");
            assert!(k.kind(key.as_bytes()).is_some(), "{key}");
        }
        let registry = "/wasmail/registry/domains/x";
        assert!(
            registry >= end.as_str(),
            "the registry is outside the range"
        );
        assert_eq!(k.kind(registry.as_bytes()), None);
        assert_eq!(
            k.kind(b"/wasmail/owners/example.com"),
            Some(KeyKind::Owner("example.com".into()))
        );
        assert_eq!(k.kind(b"/wasmail/owners/"), None);
        assert_eq!(k.kind(b"/other/hosts/a"), None);
    }

    #[test]
    fn host_record_json() {
        let r = HostRecord {
            relay: "127.0.0.2:7400".into(),
            lmtp: None,
            capacity: 100,
            lease: 42,
            draining: false,
            since: 1,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"relay":"127.0.0.2:7400","capacity":100,"lease":42,"draining":false,"since":1}"#
        );
        assert_eq!(serde_json::from_str::<HostRecord>(&text).unwrap(), r);
    }
}
