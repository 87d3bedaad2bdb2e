//! `vacation`: out-of-office auto-replies (RFC 3834 rules).
//!
//! For each recipient listed in the setting `away` (comma-separated addresses), the plugin
//! queues one auto-reply to the envelope sender through the `send` capability, at most once
//! per sender and recipient every `period_days` (kv key with a TTL). It never replies to a
//! null sender, to `MAILER-DAEMON`/`noreply` senders, to mail with `Auto-Submitted` other
//! than `no`, `Precedence: bulk|list|junk`, or list headers (`List-Id`, `List-Unsubscribe`).
//! The original message is always delivered (verdict `continue`).
//!
//! Settings: `away` (required), `subject` (default `Out of office`), `message` (default a
//! one-line notice), `period_days` (default 7). Grants: `send`, `kv`, `config`, `log`.

use wasmail_plugin_sdk::milter::prelude::*;
use wasmail_plugin_sdk::send::Outgoing;

wasmail_plugin_sdk::instance_state! {
    /// Envelope sender of this transaction (without brackets).
    static SENDER: String = String::new();
    /// Recipients of this transaction that are away.
    static AWAY: Vec<String> = Vec::new();
    /// Why this message must not get an auto-reply, if any.
    static SUPPRESSED: Option<&'static str> = None;
}

struct Vacation;

impl Filter for Vacation {
    fn describe() -> Description {
        Description::new(
            "vacation",
            env!("CARGO_PKG_VERSION"),
            &[
                Stage::MailFrom,
                Stage::Rcpt,
                Stage::Headers,
                Stage::EndOfMessage,
            ],
            BodyMode::None,
        )
    }

    fn on_mail_from(sender: Envelope) -> Verdict {
        SENDER.set(sender.addr().to_string());
        Verdict::Continue
    }

    fn on_rcpt(recipient: Envelope) -> Verdict {
        let away = config::get_list_or("away", "");
        let rcpt = recipient.addr().to_ascii_lowercase();
        if away.iter().any(|a| a.eq_ignore_ascii_case(&rcpt)) {
            AWAY.with_borrow_mut(|v| v.push(rcpt));
        }
        Verdict::Continue
    }

    fn on_headers(headers: Vec<Header>) -> Verdict {
        let pairs: Vec<(String, String)> = headers.into_iter().map(|h| (h.name, h.value)).collect();
        SUPPRESSED.set(suppression(&pairs));
        Verdict::Continue
    }

    fn on_end_of_message() -> Outcome {
        let sender = SENDER.with_borrow(|s| s.clone());
        if let Some(why) = sender_suppression(&sender).or(SUPPRESSED.with_borrow(|s| *s)) {
            if AWAY.with_borrow(|a| !a.is_empty()) {
                log::debug!("no auto-reply to {sender:?}: {why}");
            }
            return Outcome::default();
        }
        let period = config::get_parsed_or("period_days", 7u32).saturating_mul(86_400);
        let subject = config::get_or("subject", "Out of office");
        let text = config::get_or(
            "message",
            "I am away and will read your message when I return.",
        );
        for rcpt in AWAY.with_borrow(|a| a.clone()) {
            let key = format!("replied:{rcpt}:{}", sender.to_ascii_lowercase());
            if kv::exists(&key) {
                continue;
            }
            let raw = reply(&rcpt, &sender, &subject, &text);
            match send::queue(&Outgoing::new("", vec![sender.clone()], raw)) {
                Ok(()) => {
                    let _ = kv::set(&key, b"1", Some(period.max(1)));
                    log::info!("auto-reply queued from {rcpt} to {sender}");
                }
                Err(e) => log::warn!("auto-reply from {rcpt} to {sender} not queued: {e}"),
            }
        }
        Outcome::default()
    }
}

wasmail_plugin_sdk::export_filter!(Vacation);

/// Why a sender must never get an auto-reply (RFC 3834 §2), if so.
fn sender_suppression(sender: &str) -> Option<&'static str> {
    let local = sender.split('@').next().unwrap_or("").to_ascii_lowercase();
    if sender.is_empty() {
        Some("null sender")
    } else if local == "mailer-daemon"
        || local.starts_with("noreply")
        || local.starts_with("no-reply")
        || local.starts_with("owner-")
        || local.ends_with("-request")
    {
        Some("automated sender")
    } else {
        None
    }
}

/// Why a message with these headers must not get an auto-reply, if so.
fn suppression(headers: &[(String, String)]) -> Option<&'static str> {
    for (name, value) in headers {
        let v = value.trim().to_ascii_lowercase();
        match name.to_ascii_lowercase().as_str() {
            "auto-submitted" if v != "no" => return Some("Auto-Submitted"),
            "precedence" if matches!(v.as_str(), "bulk" | "list" | "junk") => {
                return Some("Precedence");
            }
            "list-id" | "list-unsubscribe" => return Some("mailing list"),
            _ => {}
        }
    }
    None
}

/// The auto-reply message (CRLF line ends, RFC 3834 headers).
fn reply(from: &str, to: &str, subject: &str, text: &str) -> Vec<u8> {
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {}\r\nAuto-Submitted: auto-replied\r\n\
         Precedence: bulk\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
        clean(subject),
        text.replace("\r\n", "\n").replace('\n', "\r\n")
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: &str, v: &str) -> (String, String) {
        (n.to_string(), v.to_string())
    }

    #[test]
    fn never_replies_to_automated_mail() {
        assert_eq!(sender_suppression(""), Some("null sender"));
        assert_eq!(
            sender_suppression("MAILER-DAEMON@x.example"),
            Some("automated sender")
        );
        assert_eq!(
            sender_suppression("list-request@x.example"),
            Some("automated sender")
        );
        assert_eq!(sender_suppression("alice@x.example"), None);
        assert_eq!(
            suppression(&[h("Auto-Submitted", "auto-generated")]),
            Some("Auto-Submitted")
        );
        assert_eq!(suppression(&[h("Auto-Submitted", "no")]), None);
        assert_eq!(suppression(&[h("Precedence", " Bulk")]), Some("Precedence"));
        assert_eq!(
            suppression(&[h("List-Id", "<x.example>")]),
            Some("mailing list")
        );
        assert_eq!(suppression(&[h("Subject", "hi")]), None);
    }

    #[test]
    fn reply_is_marked_auto_replied_with_crlf() {
        let r = String::from_utf8(reply(
            "bob@x",
            "alice@y",
            "Away\r\nBcc: evil",
            "line1\nline2",
        ))
        .unwrap();
        assert!(r.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(r.contains("Subject: Away  Bcc: evil\r\n"), "{r}");
        assert!(r.ends_with("line1\r\nline2\r\n"));
        assert!(!r.contains("\n\n"));
    }
}
