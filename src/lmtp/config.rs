//! `[lmtp]` configuration section: the LMTP front's listener, limits, worker socket and
//! `delivery` hook chain.

use std::time::Duration;

use serde::Deserialize;

use crate::config::Validator;

/// Raw `[lmtp]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmtpSection {
    /// Listener for Postfix's lmtp client: `unix:/path` or `inet:HOST:PORT`. Default
    /// `unix:/run/wasmail/lmtp.sock` (Postfix: `virtual_transport =
    /// lmtp:unix:/run/wasmail/lmtp.sock`).
    pub listen: String,
    /// File mode of a unix socket, octal text. Default `"0666"` (Postfix's lmtp client
    /// runs as `postfix`; restrict the directory instead).
    pub socket_mode: String,
    /// Host name in the greeting and the `LHLO` reply. Default: the system host name.
    pub hostname: Option<String>,
    /// Name of the LMTP socket in a worker's run directory (a sibling of its `ready`
    /// socket). Default `"lmtp"` (the `unix_listener lmtp` of
    /// examples/dovecot-worker.conf).
    pub worker_socket: String,
    /// `mail-hook` plugins run for every recipient (event `delivery`), in order; the
    /// recipient domain's registry `hook` chain runs after them. Default none.
    pub hooks: Vec<String>,
    /// Largest message accepted, in bytes (advertised as `SIZE`; a message is held in
    /// memory while it is handed to the workers, so the worst case is this times
    /// `max_connections`). Text with a unit is allowed (`"50MiB"`). Default 64 MiB.
    #[serde(deserialize_with = "size")]
    pub max_message_size: u64,
    /// Most recipients per transaction (Postfix's `lmtp_destination_recipient_limit`
    /// defaults to 50, so a larger value never bites). Default 1000.
    pub max_recipients: usize,
    /// Most concurrent connections (Postfix opens one per lmtp delivery process).
    /// Default 256.
    pub max_connections: usize,
    /// Close a connection after this long without a command. Default 5 min (Postfix
    /// keeps cached LMTP connections for `lmtp_connection_cache_time_limit`, 2 s).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest wait for one answer from a worker (connect, greeting, each command, the
    /// replies after the message). A worker that exceeds it is given up for the
    /// transaction and its recipients get `451 4.4.2`. Default 2 min (below Postfix's
    /// `lmtp_data_done_timeout` of 600 s).
    #[serde(with = "humantime_serde")]
    pub worker_timeout: Duration,
}

impl Default for LmtpSection {
    fn default() -> Self {
        LmtpSection {
            listen: "unix:/run/wasmail/lmtp.sock".into(),
            socket_mode: "0666".into(),
            hostname: None,
            worker_socket: "lmtp".into(),
            hooks: Vec::new(),
            max_message_size: 64 << 20,
            max_recipients: 1000,
            max_connections: 256,
            idle_timeout: Duration::from_secs(300),
            worker_timeout: Duration::from_secs(120),
        }
    }
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Text(t) => {
            crate::fastcontainer::config::parse_size(&t).map_err(serde::de::Error::custom)
        }
    }
}

impl LmtpSection {
    /// Checks values serde cannot check by type.
    pub fn validate(&self, key: &str, plugin_exists: &dyn Fn(&str) -> bool, v: &mut Validator) {
        crate::listen::validate_spec(&self.listen, &format!("{key}.listen"), v);
        if crate::listen::parse_mode(&self.socket_mode).is_none() {
            v.error(
                format!("{key}.socket_mode"),
                "must be octal text such as \"0666\"",
            );
        }
        let plain_name = !self.worker_socket.is_empty()
            && !self.worker_socket.contains('/')
            && self.worker_socket != "."
            && self.worker_socket != "..";
        if !plain_name {
            v.error(
                format!("{key}.worker_socket"),
                "must be a file name in the worker's run directory, such as \"lmtp\"",
            );
        }
        if let Some(h) = &self.hostname
            && (h.is_empty() || h.contains(|c: char| c.is_whitespace() || c.is_control()))
        {
            v.error(format!("{key}.hostname"), "must be one word");
        }
        for (i, name) in self.hooks.iter().enumerate() {
            if !plugin_exists(name) {
                v.error(
                    format!("{key}.hooks[{i}]"),
                    format_args!("no plugin `{name}`: add a [plugin.{name}] table"),
                );
            }
        }
        if self.max_message_size < 1024 || self.max_message_size > (1 << 30) {
            v.error(
                format!("{key}.max_message_size"),
                "must be between 1KiB and 1GiB",
            );
        }
        if self.max_recipients == 0 {
            v.error(format!("{key}.max_recipients"), "must be at least 1");
        }
        if self.max_connections == 0 {
            v.error(format!("{key}.max_connections"), "must be at least 1");
        }
        if self.worker_timeout < Duration::from_secs(1) {
            v.error(format!("{key}.worker_timeout"), "must be at least 1s");
        }
    }

    /// The host name to announce.
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<(String, String)> {
        let s: LmtpSection = toml::from_str(text).unwrap();
        let mut v = Validator::default();
        s.validate("lmtp", &|n| n == "known", &mut v);
        v.problems().to_vec()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(problems("").is_empty());
        let s: LmtpSection = toml::from_str("max_message_size = \"10MiB\"").unwrap();
        assert_eq!(s.max_message_size, 10 << 20);
        assert_eq!(s.worker_socket, "lmtp");
    }

    #[test]
    fn bad_values_are_named() {
        let p = problems(
            "listen = \"unix:relative.sock\"\nworker_socket = \"../x\"\nhooks = [\"known\", \"nope\"]\n\
             max_message_size = 10\nmax_recipients = 0\nhostname = \"a b\"\n",
        );
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "lmtp.listen",
                "lmtp.worker_socket",
                "lmtp.hostname",
                "lmtp.hooks[1]",
                "lmtp.max_message_size",
                "lmtp.max_recipients"
            ],
            "{p:?}"
        );
    }
}
