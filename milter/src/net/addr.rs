//! Socket specifications as Postfix and libmilter write them.

use std::path::PathBuf;
use std::str::FromStr;

/// Where a milter listens or a client connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SocketSpec {
    /// `unix:/path` (also `local:/path`, or a bare absolute path).
    Unix(PathBuf),
    /// `inet:HOST:PORT`, libmilter's `inet:PORT@HOST`, `inet6:[ADDR]:PORT` or
    /// `inet6:PORT@ADDR`. A bare `inet:PORT` means 127.0.0.1.
    Tcp {
        /// Host name or address (without brackets).
        host: String,
        /// Port.
        port: u16,
    },
}

/// A socket specification that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{spec:?}: {reason} (expected unix:/path, inet:host:port, inet:port@host or inet6:[addr]:port)"
)]
pub struct AddrError {
    spec: String,
    reason: &'static str,
}

impl FromStr for SocketSpec {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<SocketSpec, AddrError> {
        let err = |reason| AddrError {
            spec: s.to_owned(),
            reason,
        };
        let (scheme, rest) = match s.split_once(':') {
            Some((scheme, rest)) if !s.starts_with('/') => (scheme, rest),
            _ if s.starts_with('/') => ("unix", s),
            _ => return Err(err("missing scheme")),
        };
        match scheme {
            "unix" | "local" => {
                if rest.is_empty() {
                    return Err(err("empty socket path"));
                }
                Ok(SocketSpec::Unix(PathBuf::from(rest)))
            }
            "inet" | "inet6" => {
                let (host, port) = if let Some((port, host)) = rest.split_once('@') {
                    (host, port)
                } else if let Some(stripped) = rest.strip_prefix('[') {
                    let (host, port) = stripped
                        .split_once("]:")
                        .ok_or_else(|| err("bad [address]:port"))?;
                    (host, port)
                } else if let Some((host, port)) = rest.rsplit_once(':') {
                    (host, port)
                } else {
                    ("127.0.0.1", rest)
                };
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(err("empty host"));
                }
                let port: u16 = port
                    .parse()
                    .map_err(|_| err("port is not a number 0-65535"))?;
                Ok(SocketSpec::Tcp {
                    host: host.to_owned(),
                    port,
                })
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

impl std::fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketSpec::Unix(p) => write!(f, "unix:{}", p.display()),
            SocketSpec::Tcp { host, port } if host.contains(':') => {
                write!(f, "inet6:[{host}]:{port}")
            }
            SocketSpec::Tcp { host, port } => write!(f, "inet:{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> SocketSpec {
        SocketSpec::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn spellings() {
        assert_eq!(
            "unix:/run/m.sock".parse(),
            Ok(SocketSpec::Unix("/run/m.sock".into()))
        );
        assert_eq!("local:/x".parse(), Ok(SocketSpec::Unix("/x".into())));
        assert_eq!("/abs".parse(), Ok(SocketSpec::Unix("/abs".into())));
        assert_eq!("inet:127.0.0.1:8891".parse(), Ok(tcp("127.0.0.1", 8891)));
        assert_eq!("inet:8891@127.0.0.1".parse(), Ok(tcp("127.0.0.1", 8891)));
        assert_eq!("inet:8891".parse(), Ok(tcp("127.0.0.1", 8891)));
        assert_eq!("inet6:[::1]:8891".parse(), Ok(tcp("::1", 8891)));
        assert_eq!("inet6:8891@::1".parse(), Ok(tcp("::1", 8891)));
        assert_eq!("inet:localhost:1".parse(), Ok(tcp("localhost", 1)));
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "inet:",
            "inet:host:99999",
            "tcp:1.2.3.4:5",
            "unix:",
            "inet::5",
            "inet6:[::1]",
        ] {
            assert!(bad.parse::<SocketSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["unix:/run/m.sock", "inet:127.0.0.1:8891", "inet6:[::1]:25"] {
            assert_eq!(s.parse::<SocketSpec>().unwrap().to_string(), s);
        }
    }
}
