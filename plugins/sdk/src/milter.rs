//! World `milter-filter`: plugins that run at the SMTP stages Postfix reports through the
//! milter protocol.
//!
//! Implement [`Filter`] (only [`Filter::describe`] is required; every stage defaults to
//! [`Verdict::Continue`]) and export it with [`export_filter!`](crate::export_filter).
//! [`prelude`] imports everything a filter usually needs.
//!
//! The host calls a stage only when the plugin listed it in [`Description::stages`]; for the
//! second and later messages of one SMTP connection it replays `on_connect` and `on_helo`
//! into the new instance (their verdicts are then ignored).

#![allow(missing_docs)] // the generated bindings carry the WIT documentation

wit_bindgen::generate!({
    world: "milter-filter",
    path: "../../wit",
    additional_derives: [PartialEq, Eq],
    pub_export_macro: true,
    default_bindings_module: "wasmail_plugin_sdk::milter",
    export_macro_name: "export",
});

pub use self::wasmail::plugin::milter_types::{
    BodyMode, Client, Description, Edit, Envelope, Outcome, Reply, Stage, Verdict,
};
pub use crate::types::Header;

/// The milter macros the MTA sent (always available, no grant needed):
/// `macros::get("client_addr")`, `macros::get("i")` (queue id), `macros::all()`.
pub mod macros {
    pub use super::wasmail::plugin::macros::*;
}

/// Capability `message`: a parsed view of the current message (needs body mode `whole`).
pub mod message {
    pub use super::wasmail::plugin::message::*;
}

/// Capability `auth`: SPF, DKIM, DMARC and ARC of the current message, and DKIM signing.
pub mod auth {
    pub use super::wasmail::plugin::auth::*;
}

/// Everything a milter plugin usually needs: `use wasmail_plugin_sdk::milter::prelude::*;`.
pub mod prelude {
    pub use super::{
        BodyMode, Client, Description, Edit, Envelope, Filter, Header, Outcome, Reply, Stage,
        Verdict, auth, macros, message,
    };
    pub use crate::{config, kv, log, send};
}

/// A milter plugin. Every stage has a default that answers [`Verdict::Continue`] (and an
/// empty [`Outcome`] at end of message), so a plugin implements only the stages it lists in
/// [`describe`](Filter::describe).
///
/// Export the implementing type with [`export_filter!`](crate::export_filter).
pub trait Filter: 'static {
    /// Declares the plugin's name, stages and body mode. Called once at load time.
    fn describe() -> Description;

    /// The SMTP client connected (also replayed for later messages of the connection).
    fn on_connect(client: Client) -> Verdict {
        let _ = client;
        Verdict::Continue
    }

    /// HELO/EHLO argument (also replayed for later messages of the connection).
    fn on_helo(name: String) -> Verdict {
        let _ = name;
        Verdict::Continue
    }

    /// MAIL FROM.
    fn on_mail_from(sender: Envelope) -> Verdict {
        let _ = sender;
        Verdict::Continue
    }

    /// RCPT TO, once per recipient. A reject or tempfail refuses this recipient only.
    fn on_rcpt(recipient: Envelope) -> Verdict {
        let _ = recipient;
        Verdict::Continue
    }

    /// All headers of the message, in order.
    fn on_headers(headers: Vec<Header>) -> Verdict {
        let _ = headers;
        Verdict::Continue
    }

    /// End of headers.
    fn on_end_of_headers() -> Verdict {
        Verdict::Continue
    }

    /// A body chunk (body mode `chunks`) or the whole body (body mode `whole`; `truncated`
    /// is true when the host cut it at the cap).
    fn on_body_chunk(chunk: Vec<u8>, truncated: bool) -> Verdict {
        let _ = (chunk, truncated);
        Verdict::Continue
    }

    /// End of message: the final verdict and the edits.
    fn on_end_of_message() -> Outcome {
        Outcome::default()
    }

    /// The transaction ended without `on_end_of_message` (aborted, refused earlier, or
    /// answered at the body stage). A fresh instance is then dropped; a reused one
    /// (`instance_reuse`) serves the next transaction. `instance_state!` values are reset
    /// after this returns.
    fn on_abort() {}
}

impl<T: Filter> exports::wasmail::plugin::filter::Guest for T {
    fn describe() -> Description {
        T::describe()
    }
    fn on_connect(client: Client) -> Verdict {
        T::on_connect(client)
    }
    fn on_helo(name: String) -> Verdict {
        T::on_helo(name)
    }
    fn on_mail_from(sender: Envelope) -> Verdict {
        T::on_mail_from(sender)
    }
    fn on_rcpt(recipient: Envelope) -> Verdict {
        T::on_rcpt(recipient)
    }
    fn on_headers(headers: Vec<Header>) -> Verdict {
        T::on_headers(headers)
    }
    fn on_end_of_headers() -> Verdict {
        T::on_end_of_headers()
    }
    fn on_body_chunk(chunk: Vec<u8>, truncated: bool) -> Verdict {
        T::on_body_chunk(chunk, truncated)
    }
    fn on_end_of_message() -> Outcome {
        let outcome = T::on_end_of_message();
        crate::state::end_transaction();
        outcome
    }
    fn on_abort() {
        T::on_abort();
        crate::state::end_transaction();
    }
}

impl Stage {
    /// Every stage, in the order they happen.
    pub const ALL: [Stage; 8] = [
        Stage::Connect,
        Stage::Helo,
        Stage::MailFrom,
        Stage::Rcpt,
        Stage::Headers,
        Stage::EndOfHeaders,
        Stage::Body,
        Stage::EndOfMessage,
    ];

    /// The stage's WIT name, e.g. `mail-from` or `end-of-message`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::MailFrom => "mail-from",
            Stage::Rcpt => "rcpt",
            Stage::Headers => "headers",
            Stage::EndOfHeaders => "end-of-headers",
            Stage::Body => "body",
            Stage::EndOfMessage => "end-of-message",
        }
    }

    /// Parses a WIT stage name (as [`as_str`](Stage::as_str) writes it; `_` is accepted for
    /// `-` and case is ignored).
    pub fn from_name(name: &str) -> Option<Stage> {
        let name = name.trim().to_ascii_lowercase().replace('_', "-");
        Stage::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl Description {
    /// A description with the given name, version, stages and body mode.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        stages: &[Stage],
        body: BodyMode,
    ) -> Self {
        Description {
            name: name.into(),
            version: version.into(),
            stages: stages.to_vec(),
            body,
        }
    }
}

impl Reply {
    /// A reply with a code, an enhanced status code and a text (each may be empty to take the
    /// MTA's default: code `0`, enhanced `""`, text `""`).
    pub fn new(code: u16, enhanced: &str, text: &str) -> Self {
        Reply {
            code: (code != 0).then_some(code),
            enhanced: (!enhanced.is_empty()).then(|| enhanced.to_string()),
            text: (!text.is_empty()).then(|| one_line(text)),
        }
    }
}

/// Replaces CR and LF (not allowed in an SMTP reply text) with spaces.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

impl Default for Verdict {
    /// [`Verdict::Continue`].
    fn default() -> Self {
        Verdict::Continue
    }
}

impl Verdict {
    /// A permanent refusal, e.g. `Verdict::reject(550, "5.7.1", "Message rejected")`.
    /// CR/LF in `text` become spaces.
    pub fn reject(code: u16, enhanced: &str, text: &str) -> Self {
        Verdict::Reject(Reply::new(code, enhanced, text))
    }

    /// A temporary refusal, e.g. `Verdict::tempfail(451, "4.7.1", "Try again later")`.
    /// CR/LF in `text` become spaces.
    pub fn tempfail(code: u16, enhanced: &str, text: &str) -> Self {
        Verdict::Tempfail(Reply::new(code, enhanced, text))
    }

    /// Keep going but put the message on hold with this reason.
    pub fn quarantine(reason: &str) -> Self {
        Verdict::Quarantine(one_line(reason))
    }

    /// True for [`Verdict::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Verdict::Continue)
    }
}

impl Default for Outcome {
    /// [`Verdict::Continue`] without edits.
    fn default() -> Self {
        Outcome {
            verdict: Verdict::Continue,
            edits: Vec::new(),
        }
    }
}

impl From<Verdict> for Outcome {
    fn from(verdict: Verdict) -> Self {
        Outcome {
            verdict,
            edits: Vec::new(),
        }
    }
}

impl Outcome {
    /// An outcome with a verdict and edits.
    pub fn new(verdict: Verdict, edits: Vec<Edit>) -> Self {
        Outcome { verdict, edits }
    }

    /// [`Verdict::Continue`] with these edits.
    pub fn continue_with(edits: Vec<Edit>) -> Self {
        Outcome {
            verdict: Verdict::Continue,
            edits,
        }
    }
}

impl Edit {
    /// Append a header.
    pub fn add_header(name: impl Into<String>, value: impl Into<String>) -> Self {
        Edit::AddHeader(Header::new(name, value))
    }

    /// Insert a header at `index` (0 = the very top).
    pub fn insert_header(index: u32, name: impl Into<String>, value: impl Into<String>) -> Self {
        Edit::InsertHeader((index, Header::new(name, value)))
    }

    /// Change the `index`-th (1-based) header called `name` to `value`.
    pub fn change_header(index: u32, name: impl Into<String>, value: impl Into<String>) -> Self {
        Edit::ChangeHeader((index, Header::new(name, value)))
    }

    /// Delete the `index`-th (1-based) header called `name`.
    pub fn delete_header(index: u32, name: impl Into<String>) -> Self {
        Edit::DeleteHeader((index, name.into()))
    }

    /// Add an envelope recipient without ESMTP arguments.
    pub fn add_recipient(address: impl Into<String>) -> Self {
        Edit::AddRecipient((address.into(), String::new()))
    }

    /// Remove an envelope recipient (as given at RCPT).
    pub fn delete_recipient(address: impl Into<String>) -> Self {
        Edit::DeleteRecipient(address.into())
    }

    /// Change the envelope sender, without ESMTP arguments.
    pub fn change_sender(address: impl Into<String>) -> Self {
        Edit::ChangeSender((address.into(), String::new()))
    }

    /// Replace the whole body (use CRLF line ends).
    pub fn replace_body(body: impl Into<Vec<u8>>) -> Self {
        Edit::ReplaceBody(body.into())
    }
}

impl Envelope {
    /// The address without angle brackets, e.g. `alice@example.com` (empty for `<>`).
    pub fn addr(&self) -> &str {
        crate::addr::strip_brackets(&self.address)
    }

    /// The address's domain, if it has one.
    pub fn domain(&self) -> Option<&str> {
        crate::addr::domain(self.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_name(s.as_str()), Some(s));
        }
        assert_eq!(
            Stage::from_name("END_OF_MESSAGE"),
            Some(Stage::EndOfMessage)
        );
        assert_eq!(Stage::from_name("nope"), None);
    }

    #[test]
    fn reply_defaults_and_one_line() {
        assert_eq!(
            Verdict::reject(550, "5.7.1", "no\r\nway"),
            Verdict::Reject(Reply {
                code: Some(550),
                enhanced: Some("5.7.1".into()),
                text: Some("no  way".into()),
            })
        );
        assert_eq!(
            Reply::new(0, "", ""),
            Reply {
                code: None,
                enhanced: None,
                text: None
            }
        );
    }

    #[test]
    fn envelope_helpers() {
        let e = Envelope {
            address: "<Alice@Example.com>".into(),
            args: vec![],
        };
        assert_eq!(e.addr(), "Alice@Example.com");
        assert_eq!(e.domain(), Some("Example.com"));
    }
}
