//! `[proxy]` configuration section: the IMAP and POP3 front listeners, TLS, the hook
//! chain, limits, and the names of the worker's sockets.
//!
//! ```toml
//! [proxy]
//! imap = "inet:0.0.0.0:143"
//! pop3 = "inet:0.0.0.0:110"
//! tls_cert = "/etc/wasmail/tls/fullchain.pem"
//! tls_key = "/etc/wasmail/tls/key.pem"
//! hooks = ["login-rule"]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Validator;

/// Where credentials are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Credentials {
    /// Against the registry's password hash, before any worker is started (default):
    /// a wrong password never spawns a worker.
    Registry,
    /// By the worker: its login answer decides (the domain must still be in the
    /// registry, so unknown domains never spawn workers).
    Worker,
}

/// Raw `[proxy]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// IMAP listener (`inet:HOST:PORT`, `inet6:[ADDR]:PORT` or `unix:/path`); absent = no
    /// IMAP front.
    pub imap: Option<String>,
    /// POP3 listener; absent = no POP3 front.
    pub pop3: Option<String>,
    /// File mode of unix listeners, octal text. Default `"0666"`.
    pub socket_mode: String,
    /// PEM certificate chain for STARTTLS/STLS. Without `tls_cert` and `tls_key` TLS is
    /// not offered.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Allow plaintext logins before TLS from loopback clients and unix sockets. Default
    /// true (local tools and tests); other clients must always use STARTTLS/STLS first.
    pub allow_plaintext_on_loopback: bool,
    /// `mail-hook` plugins run for every session (`connect`, `auth`, `post-login`),
    /// before the domain's registry chain (`hook`). Default none.
    pub hooks: Vec<String>,
    /// Where passwords are checked. Default `"registry"`.
    pub credentials: Credentials,
    /// A client must have logged in within this long after connecting. Default 2 min.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// After login: close a session with no traffic in either direction for this long.
    /// Default 30 min (RFC 3501's minimum autologout timer; IDLE clients re-issue before).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Wait this long before answering a failed login (slows down password guessing; the
    /// same for every failure, so it reveals nothing). Default 2 s.
    #[serde(with = "humantime_serde")]
    pub auth_failure_delay: Duration,
    /// Longest pre-login command in bytes, literals included. Default 8192.
    pub max_line: usize,
    /// Invalid pre-login commands tolerated per connection. Default 10.
    pub max_bad_commands: u32,
    /// Most concurrent client connections over both fronts. Default 1000.
    pub max_connections: usize,
    /// The worker's IMAP socket, a file name in its run directory. Default `"imap"`
    /// (`examples/dovecot-worker.conf`).
    pub worker_imap: String,
    /// The worker's POP3 socket. Default `"pop3"`.
    pub worker_pop3: String,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            imap: None,
            pop3: None,
            socket_mode: "0666".into(),
            tls_cert: None,
            tls_key: None,
            allow_plaintext_on_loopback: true,
            hooks: Vec::new(),
            credentials: Credentials::Registry,
            login_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(30 * 60),
            auth_failure_delay: Duration::from_secs(2),
            max_line: 8192,
            max_bad_commands: 10,
            max_connections: 1000,
            worker_imap: "imap".into(),
            worker_pop3: "pop3".into(),
        }
    }
}

impl ProxySection {
    /// Checks values serde cannot check by type.
    pub fn validate(&self, key: &str, plugin_exists: &dyn Fn(&str) -> bool, v: &mut Validator) {
        if self.imap.is_none() && self.pop3.is_none() {
            v.error(key, "set `imap`, `pop3` or both");
        }
        for (name, spec) in [("imap", &self.imap), ("pop3", &self.pop3)] {
            if let Some(spec) = spec {
                crate::listen::validate_spec(spec, &format!("{key}.{name}"), v);
            }
        }
        if crate::listen::parse_mode(&self.socket_mode).is_none() {
            v.error(
                format!("{key}.socket_mode"),
                "must be octal text such as \"0666\"",
            );
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => v.error(format!("{key}.tls_key"), "`tls_cert` needs `tls_key`"),
            (None, Some(_)) => v.error(format!("{key}.tls_cert"), "`tls_key` needs `tls_cert`"),
            _ => {}
        }
        for (name, path) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)] {
            if let Some(p) = path
                && !p.is_absolute()
            {
                v.error(format!("{key}.{name}"), "must be an absolute path");
            }
        }
        for (i, name) in self.hooks.iter().enumerate() {
            if !plugin_exists(name) {
                v.error(
                    format!("{key}.hooks[{i}]"),
                    format_args!("no plugin `{name}`: add a [plugin.{name}] table"),
                );
            }
        }
        if !(512..=1 << 20).contains(&self.max_line) {
            v.error(format!("{key}.max_line"), "must be between 512 and 1048576");
        }
        if self.max_bad_commands == 0 {
            v.error(format!("{key}.max_bad_commands"), "must be at least 1");
        }
        if self.max_connections == 0 {
            v.error(format!("{key}.max_connections"), "must be at least 1");
        }
        for (name, d) in [
            ("login_timeout", self.login_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                v.error(format!("{key}.{name}"), "must be more than 0s");
            }
        }
        if self.auth_failure_delay > Duration::from_secs(60) {
            v.error(format!("{key}.auth_failure_delay"), "must be at most 1m");
        }
        for (name, file) in [
            ("worker_imap", &self.worker_imap),
            ("worker_pop3", &self.worker_pop3),
        ] {
            if file.is_empty() || file.contains('/') || file == "." || file == ".." {
                v.error(
                    format!("{key}.{name}"),
                    "must be a file name in the worker's run directory",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    fn problems(text: &str) -> Vec<(usize, String, String)> {
        match Config::from_str_at(text, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(d)) => {
                d.into_iter().map(|d| (d.line, d.key, d.message)).collect()
            }
            Err(e) => panic!("{e}"),
        }
    }

    const FC: &str = "[fastcontainer.worker]\nargv = [\"/usr/sbin/dovecot\"]\n";

    #[test]
    fn a_valid_section_starts_both_fronts() {
        let text =
            format!("{FC}[proxy]\nimap = \"inet:127.0.0.1:1143\"\npop3 = \"unix:/run/p.sock\"\n");
        let c = Config::from_str_at(&text, Path::new("t.toml")).unwrap();
        let p = c.proxy.as_ref().unwrap();
        assert!(p.allow_plaintext_on_loopback);
        assert_eq!((p.max_line, p.worker_imap.as_str()), (8192, "imap"));
        assert!(c.services().ends_with(&["imap", "pop3"]));
    }

    #[test]
    fn problems_are_located_by_key() {
        let p = problems(
            "[proxy]\nimap = \"inet:127.0.0.1:1143\"\ntls_cert = \"/c.pem\"\nhooks = [\"nope\"]\nmax_line = 10\nworker_pop3 = \"a/b\"\n",
        );
        let keys: Vec<&str> = p.iter().map(|(_, k, _)| k.as_str()).collect();
        assert!(keys.contains(&"proxy.tls_key"), "{p:?}");
        assert!(keys.contains(&"proxy.hooks[0]"), "{p:?}");
        assert!(keys.contains(&"proxy.max_line"), "{p:?}");
        assert!(keys.contains(&"proxy.worker_pop3"), "{p:?}");
        let fc = p.iter().find(|(_, k, _)| k == "proxy").unwrap();
        assert!(fc.2.contains("[fastcontainer]"), "{p:?}");
        assert_eq!(fc.0, 1);
        let p = problems(&format!("{FC}[proxy]\n"));
        assert!(p[0].2.contains("set `imap`, `pop3` or both"), "{p:?}");
    }
}
