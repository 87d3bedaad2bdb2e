//! `[registry]` configuration section.
//!
//! ```toml
//! [registry]
//! backend = "sqlite"                    # the only backend so far
//! path = "/var/lib/wasmail/registry.db"
//! refresh = "500ms"                     # how often `serve` checks for changes
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Validator;

/// Shortest accepted `refresh`.
const MIN_REFRESH: Duration = Duration::from_millis(10);
/// Longest accepted `refresh`.
const MAX_REFRESH: Duration = Duration::from_secs(3600);

/// Raw `[registry]` section. Every key is optional; the section itself may be absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Which backend holds the registry. Default `"sqlite"` (the only one so far).
    pub backend: Backend,
    /// The SQLite file. Default `/var/lib/wasmail/registry.db`; created (mode 0600, its
    /// directory 0700) on first use. `serve` and the `wasmail domain|mailbox|alias`
    /// commands must name the same file. Must be absolute.
    pub path: PathBuf,
    /// How often `wasmail serve` checks the registry's generation for changes made by
    /// another process; a change takes effect within this interval. Default 500 ms;
    /// between 10 ms and 1 h. A check is one indexed read.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
}

/// `[registry] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One SQLite file on this host ([`crate::registry::sqlite::SqliteRegistry`]).
    #[default]
    Sqlite,
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection {
            backend: Backend::Sqlite,
            path: PathBuf::from("/var/lib/wasmail/registry.db"),
            refresh: Duration::from_millis(500),
        }
    }
}

impl RegistrySection {
    /// Checks values serde cannot check by type.
    pub fn validate(&self, key: &str, v: &mut Validator) {
        if !self.path.is_absolute() {
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
        assert!(toml::from_str::<RegistrySection>("backend = \"etcd\"").is_err());
        assert!(toml::from_str::<RegistrySection>("pth = \"/x\"").is_err());
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
