//! `[registry]` configuration section.
//!
//! ```toml
//! [registry]
//! backend = "sqlite"                    # or "etcd" (many hosts)
//! path = "/var/lib/wasmail/registry.db" # sqlite only
//! refresh = "500ms"                     # how often `serve` checks for changes
//!
//! # etcd only (backend = "etcd"):
//! endpoints = ["http://127.0.0.1:2379"] # client URLs of the etcd cluster
//! prefix = "/wasmail"                   # registry keys live under <prefix>/registry/
//! connect_timeout = "2s"
//! request_timeout = "5s"
//! ```
//!
//! docs/registry.md describes both backends, the etcd key layout and export/import.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Validator;

/// Shortest accepted `refresh`.
const MIN_REFRESH: Duration = Duration::from_millis(10);
/// Longest accepted `refresh`.
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Shortest accepted etcd timeout.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest accepted `connect_timeout`.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest accepted `request_timeout`.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Raw `[registry]` section. Every key is optional; the section itself may be absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Which backend holds the registry. Default `"sqlite"`.
    pub backend: Backend,
    /// (sqlite) The SQLite file. Default `/var/lib/wasmail/registry.db`; created (mode 0600, its
    /// directory 0700) on first use. `serve` and the `wasmail domain|mailbox|alias`
    /// commands must name the same file. Must be absolute.
    pub path: PathBuf,
    /// How often `wasmail serve` checks the registry's generation for changes made by
    /// another process; a change takes effect within this interval. Default 500 ms;
    /// between 10 ms and 1 h. A check is one indexed read.
    /// With etcd, a watch pushes changes at once and this poll is only the fallback.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// (etcd) Client URLs of the etcd cluster members, `http://HOST:PORT`. Default
    /// `["http://127.0.0.1:2379"]`. Requests go to any reachable member. TLS is not
    /// supported yet: keep etcd on loopback or a private network.
    pub endpoints: Vec<String>,
    /// (etcd) Key prefix: the registry lives under `<prefix>/registry/`; other parts
    /// (worker placement) use other keys under the same prefix. Default `/wasmail`; must
    /// start with `/` and not end with one. Every host of one installation names the same
    /// prefix; two installations can share an etcd with different prefixes.
    pub prefix: String,
    /// (etcd) How long to wait for a TCP connection to an endpoint. Default 2 s; between
    /// 10 ms and 60 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// (etcd) How long one registry operation may take in total, retries on conflicting
    /// concurrent writes included; an unreachable etcd fails the operation after this.
    /// Default 5 s; between 10 ms and 5 min.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// `[registry] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One SQLite file on this host ([`crate::registry::sqlite::SqliteRegistry`]).
    #[default]
    Sqlite,
    /// An etcd cluster shared by many hosts ([`crate::registry::etcd::EtcdRegistry`]).
    Etcd,
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection {
            backend: Backend::Sqlite,
            path: PathBuf::from("/var/lib/wasmail/registry.db"),
            refresh: Duration::from_millis(500),
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/wasmail".to_string(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl RegistrySection {
    /// Checks values serde cannot check by type.
    pub fn validate(&self, key: &str, v: &mut Validator) {
        if self.backend == Backend::Sqlite && !self.path.is_absolute() {
            v.error(
                format!("{key}.path"),
                format_args!(
                    "`{}` is relative; give an absolute path such as \
                     /var/lib/wasmail/registry.db",
                    self.path.display()
                ),
            );
        }
        if self.refresh < MIN_REFRESH || self.refresh > MAX_REFRESH {
            v.error(
                format!("{key}.refresh"),
                format_args!(
                    "{} is out of range: must be between 10ms and 1h",
                    humantime::format_duration(self.refresh)
                ),
            );
        }
        if self.backend == Backend::Etcd {
            self.validate_etcd(key, v);
        }
    }

    fn validate_etcd(&self, key: &str, v: &mut Validator) {
        if self.endpoints.is_empty() {
            v.error(
                format!("{key}.endpoints"),
                "is empty: name at least one etcd client URL, e.g. \"http://127.0.0.1:2379\"",
            );
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if let Err(why) = check_endpoint(e) {
                v.error(format!("{key}.endpoints[{i}]"), format_args!("`{e}` {why}"));
            }
        }
        let p = &self.prefix;
        if !p.starts_with('/')
            || (p.len() > 1 && p.ends_with('/'))
            || p == "/"
            || p.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            v.error(
                format!("{key}.prefix"),
                format_args!(
                    "`{p}` is not a key prefix: it must start with `/`, not end with `/` and \
                     have no spaces, e.g. \"/wasmail\""
                ),
            );
        }
        for (name, value, max, max_text) in [
            (
                "connect_timeout",
                self.connect_timeout,
                MAX_CONNECT_TIMEOUT,
                "60s",
            ),
            (
                "request_timeout",
                self.request_timeout,
                MAX_REQUEST_TIMEOUT,
                "5min",
            ),
        ] {
            if value < MIN_TIMEOUT || value > max {
                v.error(
                    format!("{key}.{name}"),
                    format_args!(
                        "{} is out of range: must be between 10ms and {max_text}",
                        humantime::format_duration(value)
                    ),
                );
            }
        }
    }
}

/// Checks one etcd endpoint: `http://HOST:PORT`.
fn check_endpoint(e: &str) -> Result<(), &'static str> {
    if e.starts_with("https://") {
        return Err(
            "uses TLS, which the etcd backend does not support yet; use http:// on \
                    loopback or a private network",
        );
    }
    let Some(rest) = e.strip_prefix("http://") else {
        return Err("is not an etcd client URL: write http://HOST:PORT");
    };
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or("has no port: write http://HOST:PORT (etcd listens on 2379 by default)")?;
    if host.is_empty() || hostport.contains('/') || host.contains(char::is_whitespace) {
        return Err("is not an etcd client URL: write http://HOST:PORT");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("has no valid port: write http://HOST:PORT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let s: RegistrySection = toml::from_str("").unwrap();
        assert_eq!(s.backend, Backend::Sqlite);
        assert_eq!(s.path, PathBuf::from("/var/lib/wasmail/registry.db"));
        assert_eq!(s.refresh, Duration::from_millis(500));
        let s: RegistrySection =
            toml::from_str("backend = \"sqlite\"\npath = \"/tmp/r.db\"\nrefresh = \"2s\"\n")
                .unwrap();
        assert_eq!(s.path, PathBuf::from("/tmp/r.db"));
        assert_eq!(s.refresh, Duration::from_secs(2));
        assert!(toml::from_str::<RegistrySection>("backend = \"zookeeper\"").is_err());
        assert!(toml::from_str::<RegistrySection>("pth = \"/x\"").is_err());

        let s: RegistrySection = toml::from_str("backend = \"etcd\"").unwrap();
        assert_eq!(s.backend, Backend::Etcd);
        assert_eq!(s.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(s.prefix, "/wasmail");
        assert_eq!(s.connect_timeout, Duration::from_secs(2));
        assert_eq!(s.request_timeout, Duration::from_secs(5));
        let s: RegistrySection = toml::from_str(
            "backend = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n\
             prefix = \"/mail/a\"\nconnect_timeout = \"500ms\"\nrequest_timeout = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(s.prefix, "/mail/a");
        assert_eq!(s.request_timeout, Duration::from_secs(3));
    }

    #[test]
    fn etcd_validation_names_the_key() {
        let mut v = Validator::default();
        let ok = RegistrySection {
            backend: Backend::Etcd,
            // The SQLite path is not checked for etcd.
            path: PathBuf::from("unused.db"),
            ..Default::default()
        };
        ok.validate("registry", &mut v);
        assert!(v.problems().is_empty(), "{:?}", v.problems());

        let bad = RegistrySection {
            backend: Backend::Etcd,
            endpoints: vec![
                "http://127.0.0.1:2379".into(),
                "https://10.0.0.1:2379".into(),
                "127.0.0.1:2379".into(),
                "http://host".into(),
                "http://host:99999".into(),
            ],
            prefix: "wasmail/".into(),
            connect_timeout: Duration::from_secs(61),
            request_timeout: Duration::from_millis(1),
            ..Default::default()
        };
        let mut v = Validator::default();
        bad.validate("registry", &mut v);
        let keys: Vec<_> = v.problems().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "registry.endpoints[1]",
                "registry.endpoints[2]",
                "registry.endpoints[3]",
                "registry.endpoints[4]",
                "registry.prefix",
                "registry.connect_timeout",
                "registry.request_timeout"
            ]
        );
        assert!(v.problems()[0].1.contains("TLS"), "{:?}", v.problems());

        let mut v = Validator::default();
        RegistrySection {
            backend: Backend::Etcd,
            endpoints: vec![],
            prefix: "/".into(),
            ..Default::default()
        }
        .validate("registry", &mut v);
        let keys: Vec<_> = v.problems().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["registry.endpoints", "registry.prefix"]);
    }

    #[test]
    fn validation() {
        let mut v = Validator::default();
        RegistrySection::default().validate("registry", &mut v);
        assert!(v.problems().is_empty(), "{:?}", v.problems());

        let s = RegistrySection {
            path: PathBuf::from("reg.db"),
            refresh: Duration::from_millis(5),
            ..Default::default()
        };
        s.validate("registry", &mut v);
        let keys: Vec<_> = v.problems().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["registry.path", "registry.refresh"]);

        let mut v = Validator::default();
        let s = RegistrySection {
            refresh: Duration::from_secs(3601),
            ..Default::default()
        };
        s.validate("registry", &mut v);
        assert_eq!(v.problems().len(), 1);
    }
}
