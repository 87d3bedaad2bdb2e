//! `[dovecot]` configuration section: the HTTP endpoints Dovecot calls (auth policy,
//! Lua passdb, event export), the post-login socket, the hook chain and the limits.
//!
//! ```toml
//! [dovecot]
//! http = "127.0.0.1:9930"                      # or "unix:/run/wasmail/dovecot-http.sock"
//! api_key_file = "/etc/wasmail/dovecot.key"    # required on TCP
//! post_login = "unix:/run/wasmail/post-login.sock"
//! hooks = ["login-rule"]
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use wasmail_milter::net::SocketSpec;

use crate::config::Validator;
use crate::registry::password::Secret;

/// Raw `[dovecot]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DovecotSection {
    /// Where the HTTP endpoints listen (`/auth-policy`, `/passdb`, `/events`, `/metrics`):
    /// a unix socket (`unix:/abs/path`) or a loopback TCP address (`127.0.0.1:PORT`,
    /// `inet:127.0.0.1:PORT`). Dovecot's HTTP client speaks TCP, so TCP is the usual
    /// choice. Other addresses are refused (the endpoints decide logins). Default
    /// `127.0.0.1:9930`. Empty = no HTTP endpoints (post-login socket only).
    pub http: String,
    /// File holding the shared key every HTTP request must present (Dovecot's
    /// `auth_policy_server_api_header = X-API-Key: KEY`; the Lua passdb sends the same
    /// header; the event exporter, which cannot send headers, puts it in the URL as
    /// `?api_key=KEY`). At least 16 visible ASCII characters. Required when `http` is TCP.
    pub api_key_file: Option<PathBuf>,
    /// Name of the header carrying the key. Default `X-API-Key` (what Dovecot sends when
    /// `auth_policy_server_api_header` has no colon).
    pub api_key_header: String,
    /// The post-login socket (Dovecot's script-login protocol, `service imap { executable
    /// = imap /path }`): `unix:/abs/path`; empty = not served. Default empty.
    pub post_login: String,
    /// File mode of the post-login socket, octal text. Default `"0666"` (the imap and
    /// pop3 processes connect under changing users; restrict the directory instead).
    pub post_login_mode: String,
    /// File mode of the HTTP unix socket, octal text. Default `"0660"`.
    pub http_socket_mode: String,
    /// `mail-hook` plugins run for auth policy and post-login events, before the user's
    /// domain chain (`wasmail domain set DOMAIN --chain hook=a,b`).
    pub hooks: Vec<String>,
    /// Largest request body accepted (bytes); larger ones get 413. Default 65536.
    pub max_body: usize,
    /// Largest post-login request (bytes); larger ones are closed (a denial). Default
    /// 65536.
    pub max_post_login: usize,
    /// Deadline for answering an HTTP request, plugins included. Keep it below Dovecot's
    /// `auth_policy_server_timeout_msecs` (2 s) and the Lua script's request timeout; on
    /// expiry the answer is 503 and Dovecot's `auth_policy_reject_on_fail` decides.
    /// Default 1.5 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Deadline for a post-login exchange (reading the request, plugins, the reply);
    /// below Dovecot's 60 s. Default 20 s.
    #[serde(with = "humantime_serde")]
    pub post_login_timeout: Duration,
    /// Most concurrent connections (HTTP and post-login each). Default 256.
    pub max_connections: usize,
    /// On the auth policy's `allow` call, start the user's domain worker (FastContainer)
    /// so it is warm when the session arrives. Default true; needs `[fastcontainer]`.
    pub prewarm: bool,
}

impl Default for DovecotSection {
    fn default() -> Self {
        DovecotSection {
            http: "127.0.0.1:9930".into(),
            api_key_file: None,
            api_key_header: "X-API-Key".into(),
            post_login: String::new(),
            post_login_mode: "0666".into(),
            http_socket_mode: "0660".into(),
            hooks: Vec::new(),
            max_body: 64 * 1024,
            max_post_login: 64 * 1024,
            request_timeout: Duration::from_millis(1500),
            post_login_timeout: Duration::from_secs(20),
            max_connections: 256,
            prewarm: true,
        }
    }
}

/// Shortest accepted API key (characters).
pub const MIN_KEY_LEN: usize = 16;

impl DovecotSection {
    /// Checks values serde cannot check by type; problems are recorded under `key`.
    pub fn validate(&self, key: &str, plugin_exists: &dyn Fn(&str) -> bool, v: &mut Validator) {
        let tcp = match self.http_endpoint() {
            Ok(Some(SocketSpec::Tcp { .. })) => true,
            Ok(_) => false,
            Err(e) => {
                v.error(format!("{key}.http"), e);
                false
            }
        };
        match &self.api_key_file {
            Some(p) if !p.is_absolute() => {
                v.error(format!("{key}.api_key_file"), "must be an absolute path")
            }
            None if tcp => v.error(
                format!("{key}.api_key_file"),
                format_args!(
                    "required when http is TCP (`{}`): any local user can connect to a TCP \
                     port; set api_key_file (and Dovecot's auth_policy_server_api_header)",
                    self.http
                ),
            ),
            _ => {}
        }
        if hyper::header::HeaderName::from_bytes(self.api_key_header.as_bytes()).is_err() {
            v.error(
                format!("{key}.api_key_header"),
                "must be an HTTP header name such as X-API-Key",
            );
        }
        if let Err(e) = self.post_login_path() {
            v.error(format!("{key}.post_login"), e);
        }
        if self.http.trim().is_empty() && self.post_login.trim().is_empty() {
            v.error(
                format!("{key}.http"),
                "neither http nor post_login is set: nothing to serve",
            );
        }
        for (k, mode) in [
            ("post_login_mode", &self.post_login_mode),
            ("http_socket_mode", &self.http_socket_mode),
        ] {
            if crate::listen::parse_mode(mode).is_none() {
                v.error(format!("{key}.{k}"), "must be octal text such as \"0660\"");
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
        if self.max_body < 1024 || self.max_post_login < 1024 {
            v.error(
                format!("{key}.max_body"),
                "max_body and max_post_login must be at least 1024 bytes",
            );
        }
        if self.request_timeout.is_zero() || self.request_timeout >= Duration::from_secs(2) {
            v.error(
                format!("{key}.request_timeout"),
                "must be above 0 and below 2s (Dovecot's auth_policy_server_timeout_msecs \
                 default); Dovecot gives up first otherwise",
            );
        }
        if self.post_login_timeout.is_zero() || self.post_login_timeout >= Duration::from_secs(60) {
            v.error(
                format!("{key}.post_login_timeout"),
                "must be above 0 and below 60s (Dovecot's post-login timeout)",
            );
        }
        if self.max_connections == 0 {
            v.error(format!("{key}.max_connections"), "must be at least 1");
        }
    }

    /// The HTTP listen address (None when `http` is empty); TCP only on loopback.
    pub fn http_endpoint(&self) -> Result<Option<SocketSpec>, String> {
        let text = self.http.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let spec = match text.parse::<SocketSpec>() {
            Ok(spec) => spec,
            Err(e) => match text.parse::<std::net::SocketAddr>() {
                Ok(a) => SocketSpec::Tcp {
                    host: a.ip().to_string(),
                    port: a.port(),
                },
                Err(_) => return Err(format!("{e}; or ADDR:PORT such as 127.0.0.1:9930")),
            },
        };
        match &spec {
            SocketSpec::Unix(p) if !p.is_absolute() => {
                Err(format!("`{text}`: a unix socket path must be absolute"))
            }
            SocketSpec::Tcp { host, .. }
                if host != "localhost"
                    && !host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) =>
            {
                Err(format!(
                    "`{text}`: the Dovecot endpoints listen only on loopback (127.0.0.1, ::1, \
                     localhost) or a unix socket"
                ))
            }
            _ => Ok(Some(spec)),
        }
    }

    /// The post-login socket path (None when `post_login` is empty).
    pub fn post_login_path(&self) -> Result<Option<PathBuf>, String> {
        let text = self.post_login.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let path = Path::new(text.strip_prefix("unix:").unwrap_or(text));
        if !path.is_absolute() {
            return Err(format!(
                "`{text}`: must be a unix socket with an absolute path (unix:/run/wasmail/post-login.sock)"
            ));
        }
        Ok(Some(path.to_path_buf()))
    }

    /// Reads the API key from `api_key_file` (None when no file is configured).
    pub fn read_api_key(&self) -> Result<Option<Secret>, String> {
        let Some(path) = &self.api_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("[dovecot] api_key_file {}: {e}", path.display()))?;
        let key = text.trim();
        if key.len() < MIN_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "[dovecot] api_key_file {}: the key must be at least {MIN_KEY_LEN} visible \
                 ASCII characters (e.g. `openssl rand -hex 32`)",
                path.display()
            ));
        }
        Ok(Some(Secret::new(key.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<(String, String)> {
        let s: DovecotSection = toml::from_str(text).unwrap();
        let mut v = Validator::default();
        s.validate("dovecot", &|n| n == "login-rule", &mut v);
        v.problems().to_vec()
    }

    #[test]
    fn tcp_needs_a_key_and_loopback() {
        let p = problems("");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "dovecot.api_key_file");
        assert!(problems("api_key_file = \"/etc/k\"\n").is_empty());
        let p = problems("http = \"0.0.0.0:9930\"\napi_key_file = \"/etc/k\"\n");
        assert_eq!(p[0].0, "dovecot.http", "{p:?}");
        assert!(p[0].1.contains("loopback"), "{p:?}");
        assert!(problems("http = \"unix:/run/w/d.sock\"\n").is_empty());
        let p = problems("http = \"unix:run/d.sock\"\n");
        assert!(p[0].1.contains("absolute"), "{p:?}");
    }

    #[test]
    fn values_are_checked_by_key() {
        let base = "api_key_file = \"/etc/k\"\n";
        for (extra, key) in [
            ("hooks = [\"nope\"]\n", "dovecot.hooks[0]"),
            ("post_login = \"rel.sock\"\n", "dovecot.post_login"),
            ("post_login_mode = \"rw\"\n", "dovecot.post_login_mode"),
            ("request_timeout = \"3s\"\n", "dovecot.request_timeout"),
            (
                "post_login_timeout = \"90s\"\n",
                "dovecot.post_login_timeout",
            ),
            ("api_key_header = \"X Key\"\n", "dovecot.api_key_header"),
            ("max_body = 10\n", "dovecot.max_body"),
            ("max_connections = 0\n", "dovecot.max_connections"),
        ] {
            let p = problems(&format!("{base}{extra}"));
            assert_eq!(p.len(), 1, "{extra}: {p:?}");
            assert_eq!(p[0].0, key, "{extra}: {p:?}");
        }
        assert!(problems(&format!("{base}hooks = [\"login-rule\"]\n")).is_empty());
        let p = problems("http = \"\"\n");
        assert!(p[0].1.contains("nothing to serve"), "{p:?}");
        assert!(toml::from_str::<DovecotSection>("htp = \"x\"").is_err());
    }

    #[test]
    fn post_login_spellings() {
        let s = DovecotSection {
            post_login: "unix:/run/w/pl.sock".into(),
            ..DovecotSection::default()
        };
        assert_eq!(s.post_login_path().unwrap(), Some("/run/w/pl.sock".into()));
        let s = DovecotSection {
            post_login: "/run/w/pl.sock".into(),
            ..DovecotSection::default()
        };
        assert_eq!(s.post_login_path().unwrap(), Some("/run/w/pl.sock".into()));
    }

    #[test]
    fn api_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let s = DovecotSection {
            api_key_file: Some(path.clone()),
            ..DovecotSection::default()
        };
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(
            s.read_api_key().unwrap().unwrap().expose(),
            "0123456789abcdef0123"
        );
        std::fs::write(&path, "short").unwrap();
        assert!(s.read_api_key().unwrap_err().contains("at least 16"));
    }
}
