//! `[policy]` configuration section: the SMTPD policy delegation listener and chain.

use std::time::Duration;

use serde::Deserialize;

use crate::config::Validator;

/// Raw `[policy]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// Listener for Postfix's `check_policy_service`: `unix:/path` or `inet:HOST:PORT`.
    /// Default `unix:/run/wasmail/policy.sock`.
    pub listen: String,
    /// File mode of a unix socket, octal text. Default `"0666"` (smtpd runs as
    /// `postfix`; restrict the directory instead).
    pub socket_mode: String,
    /// `policy` plugins run for every request, in order. The recipient domain's registry
    /// chain (`wasmail domain set DOMAIN --chain policy=a,b`) runs after them.
    pub chain: Vec<String>,
    /// Most concurrent connections (Postfix keeps one per smtpd process). Default 512.
    pub max_connections: usize,
    /// Close a connection after this long without a request. Default 10 min (above
    /// Postfix's `smtpd_policy_service_max_idle` of 300 s, so Postfix closes first).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Action when a plugin with `on_error = "tempfail"` fails, or a chain plugin is not
    /// loaded. Default `"DEFER_IF_PERMIT 4.3.0 Policy service temporarily unavailable"`:
    /// the mail is deferred unless another restriction rejects it.
    pub tempfail_action: String,
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            listen: "unix:/run/wasmail/policy.sock".into(),
            socket_mode: "0666".into(),
            chain: Vec::new(),
            max_connections: 512,
            idle_timeout: Duration::from_secs(600),
            tempfail_action: "DEFER_IF_PERMIT 4.3.0 Policy service temporarily unavailable".into(),
        }
    }
}

impl PolicySection {
    /// Checks values serde cannot check by type.
    pub fn validate(&self, key: &str, plugin_exists: &dyn Fn(&str) -> bool, v: &mut Validator) {
        crate::listen::validate_spec(&self.listen, &format!("{key}.listen"), v);
        if crate::listen::parse_mode(&self.socket_mode).is_none() {
            v.error(
                format!("{key}.socket_mode"),
                "must be octal text such as \"0666\"",
            );
        }
        if self.max_connections == 0 {
            v.error(format!("{key}.max_connections"), "must be at least 1");
        }
        for (i, name) in self.chain.iter().enumerate() {
            if !plugin_exists(name) {
                v.error(
                    format!("{key}.chain[{i}]"),
                    format_args!("no plugin `{name}`: add a [plugin.{name}] table"),
                );
            }
        }
        let action = self.tempfail_action.trim();
        let first = action.split_whitespace().next().unwrap_or("");
        let tempfail = first.starts_with('4')
            || matches!(
                first.to_ascii_uppercase().as_str(),
                "DEFER" | "DEFER_IF_PERMIT" | "DEFER_IF_REJECT"
            );
        if !tempfail || action.contains(['\n', '\r', '\0']) {
            v.error(
                format!("{key}.tempfail_action"),
                "must be a temporary access(5) action on one line: DEFER, DEFER_IF_PERMIT or 4NN text",
            );
        }
    }
}
