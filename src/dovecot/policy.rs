//! Dovecot's auth policy protocol (sans-IO): the JSON request Dovecot's auth process
//! POSTs to `auth_policy_server_url?command=allow|report`, and the `{"status":N,"msg":..}`
//! answer.
//!
//! Status −1 refuses the login (the message is shown to the client: `NO [ALERT] msg`),
//! 0 lets it go on, N > 0 tarpits N seconds before going on. Dovecot calls `allow`
//! before the password check and again after a successful one, then `report` (with
//! `success` and `policy_reject`), whose answer it ignores.

use std::time::Duration;

use serde_json::{Map, Value};

use super::RequestError;
use crate::mailhook::Outcome;

/// The `command` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Decide: allow, tarpit or refuse.
    Allow,
    /// Observe the result of an authentication.
    Report,
}

/// Reads `command=` from the query string.
pub fn command(query: Option<&str>) -> Result<Command, RequestError> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("command="));
    match value {
        Some("allow") => Ok(Command::Allow),
        Some("report") => Ok(Command::Report),
        Some(other) => Err(RequestError::Invalid(format!(
            "unknown command `{}` (allow or report)",
            other.escape_debug()
        ))),
        None => Err(RequestError::Invalid(
            "missing ?command=allow|report".into(),
        )),
    }
}

/// The attributes of one auth policy request that wasmail uses. Dovecot sends what
/// `auth_policy_request_attributes` names; these are its defaults plus `mechanism` and
/// `attrs/domain` (see docs/dovecot.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    /// `login`: the user name as the client typed it.
    pub login: String,
    /// `remote`: client IP.
    pub remote: String,
    /// `local`: the address the client connected to (empty unless configured).
    pub local: String,
    /// `protocol`: `imap`, `pop3`, ...
    pub protocol: String,
    /// `session_id`.
    pub session_id: String,
    /// `mechanism` (optional attribute): SASL mechanism.
    pub mechanism: String,
    /// `tls` (sent by Dovecot on every request).
    pub tls: bool,
    /// The lower-case domain: `attrs/domain` or `domain` when sent, else the login's
    /// part after the last `@`; None when there is none.
    pub domain: Option<String>,
    /// `report` only: whether the authentication succeeded.
    pub success: Option<bool>,
    /// `report` only: whether the policy refused it.
    pub policy_reject: Option<bool>,
}

/// Parses a request body (a JSON object; unknown keys are ignored).
pub fn parse(body: &[u8]) -> Result<PolicyRequest, RequestError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| RequestError::Invalid(format!("malformed JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(RequestError::Invalid(
            "the body is not a JSON object".into(),
        ));
    };
    let text = |k: &str| match obj.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let flag = |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_bool);
    let login = text("login");
    let domain = obj
        .get("attrs")
        .and_then(|a| a.get("domain"))
        .and_then(Value::as_str)
        .or_else(|| obj.get("domain").and_then(Value::as_str))
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .or_else(|| login.rsplit_once('@').map(|(_, d)| d.to_string()))
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty());
    Ok(PolicyRequest {
        remote: text("remote"),
        local: text("local"),
        protocol: text("protocol"),
        session_id: text("session_id"),
        mechanism: text("mechanism"),
        tls: flag(&obj, "tls").unwrap_or(false),
        success: flag(&obj, "success"),
        policy_reject: flag(&obj, "policy_reject"),
        domain,
        login,
    })
}

/// The answer to an `allow` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `{"status":N,"msg":..}` with HTTP 200.
    Status {
        /// −1 refuse, 0 allow, N > 0 tarpit N seconds.
        status: i64,
        /// Shown to the client on a refusal.
        msg: String,
    },
    /// A plugin failed (`on_error = "tempfail"`) or the deadline passed: HTTP 503, so
    /// Dovecot's `auth_policy_reject_on_fail` decides.
    Unavailable,
}

/// Longest message passed to Dovecot (bytes).
const MAX_MSG: usize = 200;

/// Maps a hook chain's outcome to the policy answer.
pub fn answer(outcome: &Outcome) -> Answer {
    match outcome {
        Outcome::Allow { delay, .. } if delay.is_zero() => Answer::Status {
            status: 0,
            msg: String::new(),
        },
        Outcome::Allow { delay, .. } => Answer::Status {
            status: tarpit_secs(*delay),
            msg: String::new(),
        },
        Outcome::Deny { message, .. } => Answer::Status {
            status: -1,
            msg: clean_message(message),
        },
        Outcome::Tempfail { .. } => Answer::Unavailable,
    }
}

/// A delay in whole seconds, rounded up (Dovecot tarpits in seconds).
fn tarpit_secs(delay: Duration) -> i64 {
    let ms = delay.as_millis();
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1)
}

/// One line of printable text, at most [`MAX_MSG`] bytes; a default when empty.
fn clean_message(message: &str) -> String {
    let mut out = String::new();
    for c in message.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_MSG {
            break;
        }
        out.push(c);
    }
    let out = out.trim().to_string();
    if out.is_empty() {
        "Login not allowed".into()
    } else {
        out
    }
}

/// The JSON body of a status answer.
pub fn encode(status: i64, msg: &str) -> String {
    serde_json::json!({ "status": status, "msg": msg }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEASURED: &str = r#"{"attrs":{"domain":"Example.TEST","service":"imap"},"device_id":"","local":"127.0.0.1",
 "login":"alice@example.test","protocol":"imap","pwhash":"06ca","remote":"127.0.0.1",
 "session_id":"NRL6zOVgXqN/AAAB","tls":false}"#;

    #[test]
    fn parses_the_measured_request() {
        let r = parse(MEASURED.as_bytes()).unwrap();
        assert_eq!(r.login, "alice@example.test");
        assert_eq!(r.domain.as_deref(), Some("example.test"));
        assert_eq!(
            (r.remote.as_str(), r.local.as_str()),
            ("127.0.0.1", "127.0.0.1")
        );
        assert_eq!(r.protocol, "imap");
        assert_eq!(r.session_id, "NRL6zOVgXqN/AAAB");
        assert!(!r.tls);
        assert_eq!(r.success, None);
    }

    #[test]
    fn report_fields_and_domain_fallback() {
        let r = parse(
            br#"{"login":"bob@Sub.Example.COM","tls":true,"success":false,"policy_reject":true}"#,
        )
        .unwrap();
        assert_eq!(r.domain.as_deref(), Some("sub.example.com"));
        assert!(r.tls);
        assert_eq!((r.success, r.policy_reject), (Some(false), Some(true)));
        assert_eq!(parse(br#"{"login":"nodomain"}"#).unwrap().domain, None);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [&b"{"[..], b"[1,2]", b"", b"\"x\"", b"{\"login\":}"] {
            assert!(
                matches!(parse(body), Err(RequestError::Invalid(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn commands() {
        assert_eq!(command(Some("command=allow")), Ok(Command::Allow));
        assert_eq!(command(Some("x=1&command=report")), Ok(Command::Report));
        assert!(command(Some("command=drop")).is_err());
        assert!(command(None).is_err());
    }

    #[test]
    fn outcomes_map_to_statuses() {
        let allow = |ms| Outcome::Allow {
            delay: Duration::from_millis(ms),
            rewrites: vec![],
        };
        let st = |status, msg: &str| Answer::Status {
            status,
            msg: msg.into(),
        };
        assert_eq!(answer(&allow(0)), st(0, ""));
        assert_eq!(answer(&allow(1)), st(1, ""));
        assert_eq!(answer(&allow(2000)), st(2, ""));
        assert_eq!(answer(&allow(2001)), st(3, ""));
        let deny = |m: &str| Outcome::Deny {
            message: m.into(),
            by: "p".into(),
        };
        assert_eq!(answer(&deny("no\r\nway")), st(-1, "no  way"));
        assert_eq!(answer(&deny("")), st(-1, "Login not allowed"));
        assert_eq!(
            answer(&Outcome::Tempfail { by: "p".into() }),
            Answer::Unavailable
        );
        let long = "é".repeat(300);
        let Answer::Status { msg, .. } = answer(&deny(&long)) else {
            panic!()
        };
        assert!(msg.len() <= MAX_MSG && msg.starts_with('é'));
        let v: Value = serde_json::from_str(&encode(-1, "a\"b")).unwrap();
        assert_eq!(v, serde_json::json!({"status": -1, "msg": "a\"b"}));
    }
}
