//! `[admin]` configuration section: where the admin API listens and how it is protected.
//!
//! ```toml
//! [admin]
//! listen = "unix:/run/wasmail/admin.sock"   # or "127.0.0.1:9925" / "inet:127.0.0.1:9925"
//! # token_file = "/etc/wasmail/admin.token" # required on TCP
//! # socket_mode = "0600"
//! ```
//!
//! Both `wasmail serve` (to listen) and `wasmail ctl` (to connect) read this section, so
//! one file configures both ends.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wasmail_milter::net::SocketSpec;

use crate::config::Validator;
use crate::registry::password::Secret;

/// Raw `[admin]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Where the admin API listens: a unix socket (`unix:/abs/path`, or a bare absolute
    /// path) or a loopback TCP address (`127.0.0.1:PORT`, `[::1]:PORT`,
    /// `inet:127.0.0.1:PORT`, `inet:localhost:PORT`). Other addresses are refused: the API
    /// stops workers and changes limits, so it is never exposed beyond the host (reach it
    /// remotely through ssh). Default `unix:/run/wasmail/admin.sock`.
    pub listen: String,
    /// File holding the bearer token every request must present as
    /// `Authorization: Bearer <token>` (surrounding whitespace is ignored; at least 16
    /// characters). Required when `listen` is TCP, where any local user can connect;
    /// optional on a unix socket, whose file mode already limits who connects. Absolute
    /// path; keep it mode 0600 (a token readable by others is logged as a warning).
    /// `wasmail ctl` reads the same file. Default none.
    pub token_file: Option<PathBuf>,
    /// File mode of the unix socket, octal text. Default `"0600"`: only the user running
    /// `wasmail serve` (and root) may use the API. Ignored for TCP.
    pub socket_mode: String,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: "unix:/run/wasmail/admin.sock".into(),
            token_file: None,
            socket_mode: "0600".into(),
        }
    }
}

/// Shortest accepted token (characters).
pub const MIN_TOKEN_LEN: usize = 16;

impl AdminSection {
    /// Checks values serde cannot check by type; problems are recorded under `key`.
    pub fn validate(&self, key: &str, v: &mut Validator) {
        let tcp = match self.endpoint() {
            Ok(SocketSpec::Tcp { .. }) => true,
            Ok(SocketSpec::Unix(_)) => false,
            Err(e) => {
                v.error(format!("{key}.listen"), e);
                false
            }
        };
        match &self.token_file {
            Some(p) if !p.is_absolute() => {
                v.error(format!("{key}.token_file"), "must be an absolute path")
            }
            None if tcp => v.error(
                format!("{key}.token_file"),
                format_args!(
                    "required when listen is TCP (`{}`): any local user can connect to a \
                     TCP port; set token_file or listen on a unix socket",
                    self.listen
                ),
            ),
            _ => {}
        }
        if crate::listen::parse_mode(&self.socket_mode).is_none() {
            v.error(
                format!("{key}.socket_mode"),
                "must be octal text such as \"0600\"",
            );
        }
    }

    /// The listen address: the usual `unix:` / `inet:` / `inet6:` spellings or a bare
    /// `ADDR:PORT`; TCP only on a loopback address or `localhost`.
    pub fn endpoint(&self) -> Result<SocketSpec, String> {
        let spec = parse_listen(&self.listen)?;
        match &spec {
            SocketSpec::Unix(p) if !p.is_absolute() => Err(format!(
                "`{}`: a unix socket path must be absolute",
                self.listen
            )),
            SocketSpec::Tcp { host, .. } if !is_loopback(host) => Err(format!(
                "`{}`: the admin API listens only on loopback (127.0.0.1, ::1 or \
                 localhost) or a unix socket; reach it from elsewhere through ssh",
                self.listen
            )),
            _ => Ok(spec),
        }
    }

    /// Reads the token from `token_file` (None when no file is configured).
    pub fn read_token(&self) -> Result<Option<Secret>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        read_token(path).map(Some)
    }
}

/// `unix:/p`, `inet:h:p`, `inet6:[a]:p`, `/p`, or a bare socket address `127.0.0.1:9925` /
/// `[::1]:9925`.
fn parse_listen(s: &str) -> Result<SocketSpec, String> {
    match s.parse::<SocketSpec>() {
        Ok(spec) => Ok(spec),
        Err(e) => match s.parse::<std::net::SocketAddr>() {
            Ok(a) => Ok(SocketSpec::Tcp {
                host: a.ip().to_string(),
                port: a.port(),
            }),
            Err(_) => Err(format!("{e}; or ADDR:PORT such as 127.0.0.1:9925")),
        },
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads a token file: trimmed, at least [`MIN_TOKEN_LEN`] characters, visible ASCII only
/// (it travels in an HTTP header). The error names the file.
pub fn read_token(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("[admin] token_file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "[admin] token_file {}: the token must be at least {MIN_TOKEN_LEN} characters \
             (e.g. `openssl rand -hex 32`)",
            path.display()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "[admin] token_file {}: the token may contain only visible ASCII characters",
            path.display()
        ));
    }
    Ok(Secret::new(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> AdminSection {
        toml::from_str(text).unwrap()
    }

    fn problems(text: &str) -> Vec<(String, String)> {
        let mut v = Validator::default();
        section(text).validate("admin", &mut v);
        v.problems().to_vec()
    }

    #[test]
    fn defaults_are_a_private_unix_socket() {
        let s = AdminSection::default();
        assert_eq!(
            s.endpoint(),
            Ok(SocketSpec::Unix("/run/wasmail/admin.sock".into()))
        );
        assert_eq!(crate::listen::parse_mode(&s.socket_mode), Some(0o600));
        assert!(problems("").is_empty());
    }

    #[test]
    fn listen_spellings() {
        let tcp = |host: &str, port| SocketSpec::Tcp {
            host: host.into(),
            port,
        };
        for (text, want) in [
            ("127.0.0.1:9925", tcp("127.0.0.1", 9925)),
            ("[::1]:9925", tcp("::1", 9925)),
            ("inet:127.0.0.1:9925", tcp("127.0.0.1", 9925)),
            ("inet:localhost:1", tcp("localhost", 1)),
            ("inet:9925", tcp("127.0.0.1", 9925)),
            ("inet6:[::1]:2", tcp("::1", 2)),
            ("unix:/run/a.sock", SocketSpec::Unix("/run/a.sock".into())),
            ("/run/a.sock", SocketSpec::Unix("/run/a.sock".into())),
        ] {
            let s = AdminSection {
                listen: text.into(),
                ..AdminSection::default()
            };
            assert_eq!(s.endpoint(), Ok(want), "{text}");
        }
    }

    #[test]
    fn tcp_needs_a_token_and_loopback() {
        let p = problems("listen = \"127.0.0.1:9925\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "admin.token_file");
        assert!(p[0].1.contains("required when listen is TCP"), "{p:?}");
        assert!(problems("listen = \"127.0.0.1:9925\"\ntoken_file = \"/etc/t\"\n").is_empty());

        let p = problems("listen = \"inet:0.0.0.0:9925\"\ntoken_file = \"/etc/t\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "admin.listen");
        assert!(p[0].1.contains("only on loopback"), "{p:?}");
        let p = problems("listen = \"192.0.2.1:80\"\ntoken_file = \"/etc/t\"\n");
        assert_eq!(p[0].0, "admin.listen", "{p:?}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let p = problems("listen = \"tcp:1.2.3.4\"\n");
        assert_eq!(p[0].0, "admin.listen", "{p:?}");
        assert!(p[0].1.contains("ADDR:PORT"), "{p:?}");
        let p = problems("listen = \"unix:run/a.sock\"\n");
        assert!(p[0].1.contains("absolute"), "{p:?}");
        let p = problems("token_file = \"token\"\n");
        assert_eq!(p[0].0, "admin.token_file", "{p:?}");
        let p = problems("socket_mode = \"rw\"\n");
        assert_eq!(p[0].0, "admin.socket_mode", "{p:?}");
        assert!(toml::from_str::<AdminSection>("lisen = \"x\"").is_err());
    }

    #[test]
    fn token_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "  0123456789abcdef0123\n").unwrap();
        assert_eq!(read_token(&path).unwrap().expose(), "0123456789abcdef0123");
        std::fs::write(&path, "short\n").unwrap();
        assert!(read_token(&path).unwrap_err().contains("at least 16"));
        std::fs::write(&path, "0123456789 abcdef0123").unwrap();
        assert!(read_token(&path).unwrap_err().contains("visible ASCII"));
        let missing = dir.path().join("missing");
        let e = read_token(&missing).unwrap_err();
        assert!(e.contains(&missing.display().to_string()), "{e}");
    }
}
