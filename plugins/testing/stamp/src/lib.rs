//! `stamp`: a milter-filter test plugin that makes every call visible and lets tests drive
//! every verdict and every edit through its settings.
//!
//! Subscribes to every stage (body mode `chunks`) and records each call, in order. At end of
//! message it adds `X-Wasmail-Stamp: <value>` and `X-Wasmail-Seen: <stage,stage,...>` (one
//! entry per call, so `rcpt` appears once per recipient and `body` once per chunk; replayed
//! `connect`/`helo` calls appear too), then the edits the settings ask for.
//!
//! Settings (capability `config`; all optional):
//!
//! | setting          | effect                                                              |
//! |------------------|---------------------------------------------------------------------|
//! | `value`          | value of `X-Wasmail-Stamp` (default `stamped`)                      |
//! | `reject_rcpt`    | reject this recipient at RCPT with `550 5.1.1`                      |
//! | `verdict_at`     | stage name (`connect` ... `end-of-message`) where `verdict` applies |
//! | `verdict`        | `continue`, `accept`, `reject`, `tempfail`, `discard`, `quarantine` |
//! | `add_rcpt`       | add this envelope recipient                                         |
//! | `delete_rcpt`    | delete this envelope recipient                                      |
//! | `change_from`    | change the envelope sender to this address                          |
//! | `replace_body`   | replace the body with this text (line ends become CRLF)             |
//! | `change_subject` | set the Subject (changes the first one, or adds one if missing)     |
//! | `delete_header`  | delete the first header with this name                              |
//! | `add_rcpt_args`  | ESMTP arguments for `add_rcpt` (e.g. `NOTIFY=NEVER`)                 |
//! | `insert_header`  | `Name: value` inserted at the very top of the headers               |
//! | `stages`         | comma list of stages to subscribe to (default: all)                 |
//! | `macros`         | comma list of milter macro names: adds `X-Wasmail-Macros: n=v; ...` |

use wasmail_plugin_sdk::addr;
use wasmail_plugin_sdk::milter::prelude::*;

wasmail_plugin_sdk::instance_state! {
    /// Every call so far, in order.
    static SEEN: Vec<Stage> = Vec::new();
    /// Whether the message had a Subject header.
    static HAS_SUBJECT: bool = false;
}

struct Stamp;

impl Filter for Stamp {
    fn describe() -> Description {
        // Setting `stages` (comma list) narrows the subscription, e.g. to
        // `end-of-message` for the one-plugin benchmark row.
        let stages: Vec<Stage> = match config::get("stages") {
            Some(list) => list
                .split(',')
                .filter_map(|s| Stage::from_name(s.trim()))
                .collect(),
            None => Stage::ALL.to_vec(),
        };
        let body = if stages.contains(&Stage::Body) {
            BodyMode::Chunks
        } else {
            BodyMode::None
        };
        Description::new("stamp", env!("CARGO_PKG_VERSION"), &stages, body)
    }

    fn on_connect(_client: Client) -> Verdict {
        called(Stage::Connect)
    }

    fn on_helo(_name: String) -> Verdict {
        called(Stage::Helo)
    }

    fn on_mail_from(_sender: Envelope) -> Verdict {
        called(Stage::MailFrom)
    }

    fn on_rcpt(recipient: Envelope) -> Verdict {
        let verdict = called(Stage::Rcpt);
        if let Some(reject) = config::get("reject_rcpt")
            && addr::normalize(&reject) == addr::normalize(&recipient.address)
        {
            return Verdict::reject(550, "5.1.1", "stamp: recipient rejected");
        }
        verdict
    }

    fn on_headers(headers: Vec<Header>) -> Verdict {
        HAS_SUBJECT.set(headers.iter().any(|h| h.is("Subject")));
        called(Stage::Headers)
    }

    fn on_end_of_headers() -> Verdict {
        called(Stage::EndOfHeaders)
    }

    fn on_body_chunk(_chunk: Vec<u8>, _truncated: bool) -> Verdict {
        called(Stage::Body)
    }

    fn on_end_of_message() -> Outcome {
        let verdict = called(Stage::EndOfMessage);
        let seen = SEEN.with_borrow(|s| seen_list(s));
        let settings = EditSettings {
            add_rcpt: config::get("add_rcpt"),
            add_rcpt_args: config::get("add_rcpt_args"),
            insert_header: config::get("insert_header"),
            delete_rcpt: config::get("delete_rcpt"),
            change_from: config::get("change_from"),
            replace_body: config::get("replace_body"),
            change_subject: config::get("change_subject"),
            delete_header: config::get("delete_header"),
        };
        let mut edits = vec![
            Edit::add_header("X-Wasmail-Stamp", config::get_or("value", "stamped")),
            Edit::add_header("X-Wasmail-Seen", seen),
        ];
        if let Some(names) = config::get("macros") {
            let shown: Vec<String> = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| format!("{n}={}", macros::get(n).unwrap_or_default()))
                .collect();
            edits.push(Edit::add_header("X-Wasmail-Macros", shown.join("; ")));
        }
        edits.extend(settings.edits(HAS_SUBJECT.with_borrow(|h| *h)));
        Outcome::new(verdict, edits)
    }
}

wasmail_plugin_sdk::export_filter!(Stamp);

/// Records a call at `stage` and returns the verdict the settings ask for there.
fn called(stage: Stage) -> Verdict {
    SEEN.with_borrow_mut(|s| s.push(stage));
    let at = config::get("verdict_at").and_then(|s| Stage::from_name(&s));
    if at != Some(stage) {
        return Verdict::Continue;
    }
    verdict_named(&config::get_or("verdict", "continue"), stage)
}

/// The verdict called `name` (unknown names continue).
fn verdict_named(name: &str, stage: Stage) -> Verdict {
    match name.trim().to_ascii_lowercase().as_str() {
        "accept" => Verdict::Accept,
        "reject" => Verdict::reject(
            550,
            "5.7.1",
            &format!("stamp: reject at {}", stage.as_str()),
        ),
        "tempfail" => Verdict::tempfail(
            451,
            "4.7.1",
            &format!("stamp: tempfail at {}", stage.as_str()),
        ),
        "discard" => Verdict::Discard,
        "quarantine" => Verdict::quarantine(&format!("stamp: quarantine at {}", stage.as_str())),
        _ => Verdict::Continue,
    }
}

/// `connect,helo,...`.
fn seen_list(seen: &[Stage]) -> String {
    seen.iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The edit settings, read at end of message.
#[derive(Default)]
struct EditSettings {
    add_rcpt: Option<String>,
    add_rcpt_args: Option<String>,
    insert_header: Option<String>,
    delete_rcpt: Option<String>,
    change_from: Option<String>,
    replace_body: Option<String>,
    change_subject: Option<String>,
    delete_header: Option<String>,
}

impl EditSettings {
    /// The edits these settings ask for, in a fixed order.
    fn edits(self, has_subject: bool) -> Vec<Edit> {
        let mut edits = Vec::new();
        if let Some(a) = self.add_rcpt {
            edits.push(match self.add_rcpt_args {
                Some(args) => Edit::AddRecipient((a, args)),
                None => Edit::add_recipient(a),
            });
        }
        if let Some((name, value)) = self
            .insert_header
            .as_deref()
            .and_then(|h| h.split_once(':'))
        {
            edits.push(Edit::InsertHeader((
                0,
                Header::new(name.trim(), value.trim()),
            )));
        }
        if let Some(a) = self.delete_rcpt {
            edits.push(Edit::delete_recipient(a));
        }
        if let Some(a) = self.change_from {
            edits.push(Edit::change_sender(a));
        }
        if let Some(text) = self.replace_body {
            edits.push(Edit::replace_body(crlf(&text)));
        }
        if let Some(subject) = self.change_subject {
            edits.push(if has_subject {
                Edit::change_header(1, "Subject", subject)
            } else {
                Edit::add_header("Subject", subject)
            });
        }
        if let Some(name) = self.delete_header {
            edits.push(Edit::delete_header(1, name));
        }
        edits
    }
}

/// Converts line ends to CRLF.
fn crlf(text: &str) -> Vec<u8> {
    text.replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_by_name() {
        assert_eq!(verdict_named("accept", Stage::Rcpt), Verdict::Accept);
        assert_eq!(verdict_named(" Discard ", Stage::Rcpt), Verdict::Discard);
        assert_eq!(
            verdict_named("reject", Stage::MailFrom),
            Verdict::reject(550, "5.7.1", "stamp: reject at mail-from")
        );
        assert_eq!(
            verdict_named("tempfail", Stage::Helo),
            Verdict::tempfail(451, "4.7.1", "stamp: tempfail at helo")
        );
        assert_eq!(
            verdict_named("quarantine", Stage::EndOfMessage),
            Verdict::Quarantine("stamp: quarantine at end-of-message".into())
        );
        assert_eq!(verdict_named("bogus", Stage::Rcpt), Verdict::Continue);
    }

    #[test]
    fn seen_is_in_call_order() {
        let s = [
            Stage::Connect,
            Stage::Helo,
            Stage::Rcpt,
            Stage::Rcpt,
            Stage::EndOfMessage,
        ];
        assert_eq!(seen_list(&s), "connect,helo,rcpt,rcpt,end-of-message");
        assert_eq!(seen_list(&[]), "");
    }

    #[test]
    fn edits_from_settings() {
        assert!(EditSettings::default().edits(true).is_empty());
        let s = EditSettings {
            add_rcpt: Some("a@x".into()),
            delete_rcpt: Some("<b@x>".into()),
            change_from: Some("c@x".into()),
            replace_body: Some("one\ntwo\r\n".into()),
            change_subject: Some("New".into()),
            delete_header: Some("X-Junk".into()),
            ..Default::default()
        };
        assert_eq!(
            s.edits(false),
            vec![
                Edit::add_recipient("a@x"),
                Edit::delete_recipient("<b@x>"),
                Edit::change_sender("c@x"),
                Edit::replace_body(b"one\r\ntwo\r\n".to_vec()),
                Edit::add_header("Subject", "New"),
                Edit::delete_header(1, "X-Junk"),
            ]
        );
        let s = EditSettings {
            change_subject: Some("New".into()),
            ..Default::default()
        };
        assert_eq!(
            s.edits(true),
            vec![Edit::change_header(1, "Subject", "New")]
        );
        let s = EditSettings {
            add_rcpt: Some("a@x".into()),
            add_rcpt_args: Some("NOTIFY=NEVER".into()),
            insert_header: Some("X-Top: first".into()),
            ..Default::default()
        };
        assert_eq!(
            s.edits(true),
            vec![
                Edit::AddRecipient(("a@x".into(), "NOTIFY=NEVER".into())),
                Edit::InsertHeader((0, Header::new("X-Top", "first"))),
            ]
        );
    }
}
