//! Dovecot's event export (sans-IO): the stats process POSTs one JSON event per request
//! (`event_exporter { format = json  transport = http-post }`). wasmail only observes:
//! it logs the event and counts it by name.

use serde_json::Value;

use super::RequestError;

/// The parts of an exported event wasmail logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `event`: the event name (`auth_request_finished`, `imap_command_finished`, ...).
    pub name: String,
    /// `fields.user`, when present.
    pub user: Option<String>,
    /// `fields.cmd_name` (IMAP/POP3 commands), when present.
    pub command: Option<String>,
    /// `fields.success` / `fields.tagged_reply_state`, when present.
    pub result: Option<String>,
}

/// Parses one exported event.
pub fn parse(body: &[u8]) -> Result<Event, RequestError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| RequestError::Invalid(format!("malformed JSON: {e}")))?;
    let name = value
        .get("event")
        .and_then(Value::as_str)
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 100
                && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .ok_or_else(|| RequestError::Invalid("no valid `event` name".into()))?
        .to_string();
    let field = |k: &str| {
        value.get("fields").and_then(|f| f.get(k)).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    Ok(Event {
        name,
        user: field("user"),
        command: field("cmd_name"),
        result: field("success").or_else(|| field("tagged_reply_state")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_measured_events() {
        let e = parse(br#"{"event":"auth_request_finished","hostname":"vm","categories":["auth"],
            "fields":{"duration":2729,"success":"yes","mechanism":"PLAIN","user":"alice@example.test"}}"#)
            .unwrap();
        assert_eq!(e.name, "auth_request_finished");
        assert_eq!(e.user.as_deref(), Some("alice@example.test"));
        assert_eq!(e.result.as_deref(), Some("yes"));
        let e = parse(br#"{"event":"imap_command_finished","fields":{"user":"a","cmd_name":"SELECT","tagged_reply_state":"OK"}}"#)
            .unwrap();
        assert_eq!(e.command.as_deref(), Some("SELECT"));
        assert_eq!(e.result.as_deref(), Some("OK"));
    }

    #[test]
    fn bad_events_are_refused() {
        for body in [
            &b"{"[..],
            b"{}",
            b"{\"event\":\"a b\"}",
            b"{\"event\":5}",
            b"[]",
        ] {
            assert!(parse(body).is_err(), "{body:?}");
        }
    }
}
