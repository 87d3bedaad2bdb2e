//! `[cluster]` configuration section: this host's name and relay address, the etcd
//! endpoints, the key prefix, lease timing, capacity and the optional relay TLS.
//!
//! ```toml
//! [cluster]
//! host = "mx1"                          # unique per host
//! relay = "10.0.0.1:7400"               # host-to-host listener (also advertised)
//! etcd = ["http://10.0.0.10:2379"]
//! # prefix = "/wasmail"
//! # lease_ttl = "10s"
//! # capacity = 100
//! # lmtp = "10.0.0.1:24"                # advertised for socketmap transport answers
//! # [cluster.tls]
//! # ca = "/etc/wasmail/cluster-ca.pem"
//! # cert = "/etc/wasmail/mx1.pem"
//! # key = "/etc/wasmail/mx1.key"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Validator;

/// Raw `[cluster]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This host's name: unique in the cluster, letters, digits, `.`, `-`, `_` (at most 63
    /// characters). It names the host's etcd keys and, with TLS, must be a DNS name in the
    /// host's certificate. Required.
    pub host: String,
    /// Host-to-host listener (`IP:PORT`): other hosts forward the sessions of domains this
    /// host owns here. Also advertised in this host's membership key unless `advertise`
    /// says otherwise. Required.
    pub relay: SocketAddr,
    /// The address other hosts connect to, when it differs from `relay` (NAT, a
    /// wildcard `relay`). Default: `relay`.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// etcd client URLs (`http://HOST:PORT`). Required, at least one.
    pub etcd: Vec<String>,
    /// Prefix of every cluster key. The keys used here are `<prefix>/hosts/`,
    /// `<prefix>/owners/` and `<prefix>/drain/`; `<prefix>/registry/` belongs to the etcd
    /// registry. Default `/wasmail`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// TTL of this host's etcd lease (its membership key and every ownership key are
    /// bound to it): a host that dies loses its domains this long after its last
    /// keep-alive. Kept alive every third of it. Default 10 s, at least 2 s.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Relative weight of this host in rendezvous hashing (a host with twice the capacity
    /// gets about twice the domains). Default 100.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Longest wait for one etcd request (claim, lookup, keep-alive); past it the session
    /// gets a temporary failure. Default 2 s.
    #[serde(default = "default_etcd_timeout", with = "humantime_serde")]
    pub etcd_timeout: Duration,
    /// Longest wait to connect to another host's relay and get its answer (which may
    /// include starting the worker there). Default 30 s.
    #[serde(default = "default_relay_timeout", with = "humantime_serde")]
    pub relay_timeout: Duration,
    /// A domain this host owns is given up (its ownership key deleted) once it has no
    /// worker and no session and was last used this long ago; a domain claimed for this
    /// host by another host but never used is given up after the same time. Default 5 s.
    #[serde(default = "default_release_grace", with = "humantime_serde")]
    pub release_grace: Duration,
    /// This host's LMTP front as other hosts' Postfix reaches it (`IP:PORT`): the built-in
    /// `transport_maps` table answers `lmtp:inet:<lmtp of the owner>` for a domain owned by
    /// another host that advertises one. Default none (Postfix uses its default transport,
    /// the local LMTP front, which forwards).
    #[serde(default)]
    pub lmtp: Option<SocketAddr>,
    /// TLS for host-to-host traffic; absent = plain TCP (keep the relay on a private
    /// network then).
    #[serde(default)]
    pub tls: Option<ClusterTls>,
}

/// `[cluster.tls]`: mutual TLS between hosts with certificates from one shared CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// PEM file of the cluster CA: peers must present a certificate it signed.
    pub ca: PathBuf,
    /// PEM certificate chain of this host (its DNS name = `host`), used as server and as
    /// client.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
}

fn default_prefix() -> String {
    "/wasmail".into()
}
fn default_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_capacity() -> u32 {
    100
}
fn default_etcd_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_relay_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_release_grace() -> Duration {
    Duration::from_secs(5)
}

/// True for a usable host name (see [`ClusterSection::host`]).
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !name.starts_with('.')
}

impl ClusterSection {
    /// The address other hosts connect to.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.relay)
    }

    /// The prefix without a trailing `/`.
    pub fn prefix(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    /// Checks values serde cannot check by type.
    pub fn validate(&self, key: &str, v: &mut Validator) {
        if !valid_host_name(&self.host) {
            v.error(
                format!("{key}.host"),
                "must be 1-63 letters, digits, '.', '-' or '_'",
            );
        }
        if self.etcd.is_empty() {
            v.error(
                format!("{key}.etcd"),
                "at least one etcd endpoint is needed",
            );
        }
        for (i, e) in self.etcd.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                v.error(
                    format!("{key}.etcd[{i}]"),
                    "must be a URL such as \"http://127.0.0.1:2379\"",
                );
            }
        }
        if !self.prefix.starts_with('/') || self.prefix().is_empty() {
            v.error(
                format!("{key}.prefix"),
                "must start with '/' and name something, e.g. \"/wasmail\"",
            );
        }
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl > Duration::from_secs(3600) {
            v.error(format!("{key}.lease_ttl"), "must be between 2s and 1h");
        }
        if self.capacity == 0 {
            v.error(format!("{key}.capacity"), "must be at least 1");
        }
        if self.etcd_timeout.is_zero() {
            v.error(format!("{key}.etcd_timeout"), "must be positive");
        }
        if self.relay_timeout.is_zero() {
            v.error(format!("{key}.relay_timeout"), "must be positive");
        }
        if self.advertised().ip().is_unspecified() {
            v.error(
                format!("{key}.advertise"),
                "other hosts cannot connect to a wildcard address: set advertise",
            );
        }
        if let Some(t) = &self.tls {
            for (name, p) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
                if !p.is_absolute() {
                    v.error(format!("{key}.tls.{name}"), "must be an absolute path");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        for ok in ["mx1", "a.b-c_d", "H0"] {
            assert!(valid_host_name(ok), "{ok}");
        }
        for bad in ["", "a/b", "a b", ".x", &"x".repeat(64)] {
            assert!(!valid_host_name(bad), "{bad}");
        }
    }

    #[test]
    fn defaults_and_validation() {
        let s: ClusterSection = toml::from_str(
            "host = \"mx1\"\nrelay = \"127.0.0.2:7400\"\netcd = [\"http://127.0.0.1:2379\"]\n",
        )
        .unwrap();
        assert_eq!(s.prefix(), "/wasmail");
        assert_eq!(s.lease_ttl, Duration::from_secs(10));
        let mut v = Validator::default();
        s.validate("cluster", &mut v);
        assert!(v.problems().is_empty(), "{:?}", v.problems());
        let bad = ClusterSection {
            host: "a b".into(),
            etcd: vec!["127.0.0.1:2379".into()],
            lease_ttl: Duration::from_secs(1),
            relay: "0.0.0.0:7400".parse().unwrap(),
            ..s
        };
        let mut v = Validator::default();
        bad.validate("cluster", &mut v);
        let keys: Vec<_> = v.problems().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cluster.host",
                "cluster.etcd[0]",
                "cluster.lease_ttl",
                "cluster.advertise"
            ]
        );
    }
}
