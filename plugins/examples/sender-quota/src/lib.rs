//! `sender-quota`: a per-sender daily recipient quota for Postfix policy delegation (world
//! `policy`), counted with `kv::increment`. See README.md.

use wasmail_plugin_sdk::addr;
use wasmail_plugin_sdk::policy::prelude::*;

struct SenderQuota;

impl Policy for SenderQuota {
    fn describe() -> Description {
        Description::new("sender-quota", env!("CARGO_PKG_VERSION"))
    }

    fn check(attributes: Attributes) -> Action {
        let Some((sender, count)) = to_count(&attributes) else {
            return Action::Dunno;
        };
        let limit: i64 = config::get_parsed_or("daily_limit", 500);
        let window: u32 = config::get_parsed_or("window_seconds", 86_400);
        if limit <= 0 {
            return Action::Dunno;
        }
        match kv::increment(&format!("quota:{sender}"), count, Some(window.max(1))) {
            Ok(total) if total > limit => {
                log::info!("{sender} is over its quota: {total} > {limit}");
                Action::Defer(over_quota_text(limit))
            }
            Ok(_) => Action::Dunno,
            Err(e) => {
                log::warn!("quota store error, not counting: {e}");
                Action::Dunno
            }
        }
    }
}

wasmail_plugin_sdk::export_policy!(SenderQuota);

/// The sender (normalised) and the number of recipients to count for this request, or `None`
/// when nothing is counted: not an `smtpd_access_policy` request, or the null sender.
///
/// In the `DATA` and `END-OF-MESSAGE` states Postfix sends `recipient_count` (all recipients
/// of the message); in the `RCPT` state each request is one recipient.
fn to_count(attributes: &Attributes) -> Option<(String, i64)> {
    if attributes.get("request") != Some("smtpd_access_policy") {
        return None;
    }
    let sender = addr::normalize(attributes.get_or_empty("sender"));
    if sender.is_empty() {
        return None;
    }
    let state = attributes
        .get_or_empty("protocol_state")
        .to_ascii_uppercase();
    let count = match state.as_str() {
        "RCPT" => 1,
        "DATA" | "END-OF-MESSAGE" => attributes
            .get("recipient_count")
            .and_then(|c| c.trim().parse::<i64>().ok())
            .filter(|c| *c > 0)?,
        _ => return None,
    };
    Some((sender, count))
}

/// The DEFER text (Postfix answers `450 4.7.1 <text>`).
fn over_quota_text(limit: i64) -> String {
    format!("4.7.1 Sender quota exceeded ({limit} recipients per day), try again later")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs.iter().copied().collect()
    }

    #[test]
    fn counts_by_state() {
        let rcpt = attrs(&[
            ("request", "smtpd_access_policy"),
            ("protocol_state", "RCPT"),
            ("sender", "Alice@Example.com"),
            ("recipient_count", "0"),
        ]);
        assert_eq!(to_count(&rcpt), Some(("alice@example.com".into(), 1)));
        let eom = attrs(&[
            ("request", "smtpd_access_policy"),
            ("protocol_state", "END-OF-MESSAGE"),
            ("sender", "alice@example.com"),
            ("recipient_count", "7"),
        ]);
        assert_eq!(to_count(&eom), Some(("alice@example.com".into(), 7)));
    }

    #[test]
    fn ignored_requests() {
        let null_sender = attrs(&[
            ("request", "smtpd_access_policy"),
            ("protocol_state", "RCPT"),
            ("sender", ""),
        ]);
        assert_eq!(to_count(&null_sender), None);
        let other = attrs(&[("request", "junk"), ("sender", "a@b")]);
        assert_eq!(to_count(&other), None);
        let helo = attrs(&[
            ("request", "smtpd_access_policy"),
            ("protocol_state", "HELO"),
            ("sender", "a@b"),
        ]);
        assert_eq!(to_count(&helo), None);
        let zero = attrs(&[
            ("request", "smtpd_access_policy"),
            ("protocol_state", "DATA"),
            ("sender", "a@b"),
            ("recipient_count", "0"),
        ]);
        assert_eq!(to_count(&zero), None);
    }

    #[test]
    fn text() {
        assert_eq!(
            over_quota_text(500),
            "4.7.1 Sender quota exceeded (500 recipients per day), try again later"
        );
    }
}
