//! `[milter]` configuration section.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Validator;

/// Raw `[milter]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MilterSection {
    /// Where to listen: `unix:/path`, `inet:HOST:PORT`, `inet6:[ADDR]:PORT`, or libmilter's
    /// `inet:PORT@HOST`. Default `unix:/run/wasmail/milter.sock`. Unix sockets are
    /// recommended (no Nagle/delayed-ACK interaction with Postfix).
    pub listen: String,
    /// File mode of a unix socket, octal text. Default `"0660"`.
    pub socket_mode: String,
    /// Plugins (names from `[plugins.<name>]`) that run for every message, in order.
    pub chain: Vec<String>,
    /// Extra plugins per recipient domain, run after the global chain. See
    /// `docs/postfix.md` for the rule when a message has recipients in several domains.
    pub domains: BTreeMap<String, DomainChain>,
    /// Most concurrent milter connections (one per SMTP session). Default 1024; further
    /// connections wait in the listen backlog.
    pub max_connections: usize,
    /// Longest silence from Postfix between two commands before the connection is
    /// closed. Default 15 min (Postfix's `smtpd_timeout` is 300 s).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest milter packet accepted, in bytes. Default 1 MiB (one Postfix header can be
    /// 102,400 bytes, so libmilter's 64 KiB is too small). Checked before allocating.
    pub max_packet: u32,
    /// Send SMFIR_PROGRESS this often while an end-of-message plugin is still running, so
    /// Postfix's `milter_content_timeout` does not fire. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Deadline for one command-stage call (connect .. rcpt) across the chain; keep it
    /// below Postfix's `milter_command_timeout` (30 s). Default 20 s.
    #[serde(with = "humantime_serde")]
    pub command_deadline: Duration,
    /// Deadline for one content-stage call (headers .. end of message) across the chain;
    /// keep it below Postfix's `milter_content_timeout` (300 s). Default 240 s.
    #[serde(with = "humantime_serde")]
    pub content_deadline: Duration,
    /// Where plugin calls run: `"inline"` on the connection's task (fastest; a slow plugin
    /// holds one runtime thread for at most its call deadline), `"blocking"` on tokio's
    /// blocking thread pool (two thread hand-offs per stage), or `"auto"` (the default):
    /// blocking when a chain plugin is granted `auth` (its DNS lookups block) or has a
    /// `call_deadline` of at least `progress_interval` (so SMFIR_PROGRESS can be sent while
    /// it runs), else inline.
    pub plugin_threads: PluginThreads,
    /// Send verdicts from the header, end-of-headers and body stages at end of message
    /// (`SMFIP_NR_EOH`, `SMFIP_NR_BODY`; headers are always unanswered): Postfix then
    /// streams a message's content without waiting for wasmail in between. The SMTP client
    /// sees the same answer either way, because Postfix answers it after the final dot.
    /// Default true. Set false to answer at each stage, so Postfix stops sending the rest
    /// of a message a plugin already rejected (saves copying a large body to wasmail).
    pub defer_content_verdicts: bool,
}

/// `[milter] plugin_threads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginThreads {
    /// Blocking when a plugin is granted `auth` or may run past `progress_interval`, else
    /// inline.
    #[default]
    Auto,
    /// Always on the connection's task.
    Inline,
    /// Always on the blocking thread pool.
    Blocking,
}

/// Per-domain chain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainChain {
    /// Plugins run for messages with a recipient in this domain, after the global chain.
    pub chain: Vec<String>,
}

impl Default for MilterSection {
    fn default() -> Self {
        MilterSection {
            listen: "unix:/run/wasmail/milter.sock".into(),
            socket_mode: "0660".into(),
            chain: Vec::new(),
            domains: BTreeMap::new(),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(900),
            max_packet: 1 << 20,
            progress_interval: Duration::from_secs(10),
            command_deadline: Duration::from_secs(20),
            content_deadline: Duration::from_secs(240),
            plugin_threads: PluginThreads::Auto,
            defer_content_verdicts: true,
        }
    }
}

impl MilterSection {
    /// Checks values serde cannot check by type.
    pub fn validate(&self, key: &str, v: &mut Validator) {
        if !valid_listen(&self.listen) {
            v.error(
                format!("{key}.listen"),
                format_args!(
                    "`{}` is not a milter address: use unix:/path, inet:HOST:PORT, \
                     inet6:[ADDR]:PORT or inet:PORT@HOST",
                    self.listen
                ),
            );
        }
        if u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8).is_err() {
            v.error(
                format!("{key}.socket_mode"),
                "must be octal text such as \"0660\"",
            );
        }
        if self.max_connections == 0 {
            v.error(format!("{key}.max_connections"), "must be at least 1");
        }
        if self.max_packet < 65_536 {
            v.error(
                format!("{key}.max_packet"),
                "must be at least 65536 (Postfix sends 65535-byte body chunks)",
            );
        }
        if self.command_deadline >= Duration::from_secs(30) {
            v.error(
                format!("{key}.command_deadline"),
                "must stay below Postfix's milter_command_timeout (30s)",
            );
        }
        if self.content_deadline >= Duration::from_secs(300) {
            v.error(
                format!("{key}.content_deadline"),
                "must stay below Postfix's milter_content_timeout (300s)",
            );
        }
        if self.progress_interval.is_zero() {
            v.error(format!("{key}.progress_interval"), "must be greater than 0");
        }
    }
}

fn valid_listen(s: &str) -> bool {
    match s.parse::<wasmail_milter::net::SocketSpec>() {
        // A relative socket path would depend on the working directory.
        Ok(wasmail_milter::net::SocketSpec::Unix(p)) => p.is_absolute(),
        Ok(_) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_spellings() {
        for ok in [
            "unix:/run/m.sock",
            "inet:127.0.0.1:8891",
            "inet:8891@127.0.0.1",
            "inet6:[::1]:8891",
            "inet:localhost:8891",
        ] {
            assert!(valid_listen(ok), "{ok}");
        }
        for bad in [
            "",
            "unix:",
            "unix:rel",
            "tcp:1.2.3.4:5",
            "inet:127.0.0.1",
            "inet:x@",
        ] {
            assert!(!valid_listen(bad), "{bad}");
        }
    }

    #[test]
    fn deadlines_must_stay_under_postfix_timeouts() {
        let mut v = Validator::default();
        let m = MilterSection {
            command_deadline: Duration::from_secs(30),
            ..Default::default()
        };
        m.validate("milter", &mut v);
        assert_eq!(v.problems().len(), 1);
        assert_eq!(v.problems()[0].0, "milter.command_deadline");
    }
}
