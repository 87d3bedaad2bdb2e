//! `subject-tag`: prefixes the Subject with a tag such as `[EXTERNAL]` and appends a one-line
//! footer to plain-text bodies. See README.md.

use wasmail_plugin_sdk::milter::prelude::*;

const DEFAULT_TAG: &str = "[EXTERNAL]";
const DEFAULT_FOOTER: &str =
    "This message came from outside the organisation. Be careful with links and attachments.";
/// Body buffer cap; a longer body is left unchanged (the subject is still tagged).
const BODY_CAP: u32 = 4 << 20;

/// What the plugin learned from the message.
#[derive(Debug, Default)]
struct Message {
    /// Raw value of the first Subject header, if any.
    subject: Option<String>,
    /// Value of Content-Type, if any.
    content_type: Option<String>,
    /// Value of Content-Transfer-Encoding, if any.
    encoding: Option<String>,
    /// The whole body, unless the host truncated it.
    body: Option<Vec<u8>>,
}

wasmail_plugin_sdk::instance_state! {
    static MESSAGE: Message = Message::default();
}

struct SubjectTag;

impl Filter for SubjectTag {
    fn describe() -> Description {
        Description::new(
            "subject-tag",
            env!("CARGO_PKG_VERSION"),
            &[Stage::Headers, Stage::Body, Stage::EndOfMessage],
            BodyMode::Whole(BODY_CAP),
        )
    }

    fn on_headers(headers: Vec<Header>) -> Verdict {
        let first = |name: &str| headers.iter().find(|h| h.is(name)).map(|h| h.value.clone());
        MESSAGE.with_borrow_mut(|m| {
            m.subject = first("Subject");
            m.content_type = first("Content-Type");
            m.encoding = first("Content-Transfer-Encoding");
        });
        Verdict::Continue
    }

    fn on_body_chunk(chunk: Vec<u8>, truncated: bool) -> Verdict {
        MESSAGE.with_borrow_mut(|m| m.body = (!truncated).then_some(chunk));
        Verdict::Continue
    }

    fn on_end_of_message() -> Outcome {
        let tag = config::get_or("tag", DEFAULT_TAG);
        let footer = config::get_or("footer", DEFAULT_FOOTER);
        let message = MESSAGE.take();
        let mut edits = Vec::new();
        if let Some(edit) = subject_edit(message.subject.as_deref(), &tag) {
            edits.push(edit);
        }
        if !footer.trim().is_empty()
            && let Some(body) = &message.body
            && let Some(mode) =
                footer_mode(message.content_type.as_deref(), message.encoding.as_deref())
        {
            edits.push(Edit::replace_body(with_footer(body, &footer, mode)));
        }
        Outcome::continue_with(edits)
    }
}

wasmail_plugin_sdk::export_filter!(SubjectTag);

/// The Subject edit: `<tag> <subject>` on the first Subject header, a Subject of just the tag
/// when there is none, nothing when the subject already contains the tag (ASCII case
/// ignored, so replies to tagged messages are not tagged twice).
fn subject_edit(subject: Option<&str>, tag: &str) -> Option<Edit> {
    let tag = tag.trim();
    if tag.is_empty() {
        return None;
    }
    match subject {
        None => Some(Edit::add_header("Subject", tag)),
        Some(s) if s.to_ascii_lowercase().contains(&tag.to_ascii_lowercase()) => None,
        Some(s) if s.trim().is_empty() => Some(Edit::change_header(1, "Subject", tag)),
        Some(s) => Some(Edit::change_header(
            1,
            "Subject",
            format!("{tag} {}", s.trim_start()),
        )),
    }
}

/// How the footer can be added to the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FooterMode {
    /// 7bit/8bit/binary (or no Content-Transfer-Encoding): append the text as is.
    Plain,
    /// quoted-printable: append the footer quoted-printable encoded.
    QuotedPrintable,
}

/// Whether a body with this Content-Type and Content-Transfer-Encoding gets a footer: only
/// single-part `text/plain` bodies (a missing Content-Type means text/plain) that are not
/// base64 encoded.
fn footer_mode(content_type: Option<&str>, encoding: Option<&str>) -> Option<FooterMode> {
    let media = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|| "text/plain".to_string());
    if media != "text/plain" {
        return None;
    }
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "7bit" | "8bit" | "binary") => Some(FooterMode::Plain),
        Some("quoted-printable") => Some(FooterMode::QuotedPrintable),
        Some(_) => None,
    }
}

/// `body` + CRLF + footer line (the body first gets a final CRLF if it lacks one).
fn with_footer(body: &[u8], footer: &str, mode: FooterMode) -> Vec<u8> {
    let footer = footer.replace(['\r', '\n'], " ");
    let footer = match mode {
        FooterMode::Plain => footer,
        FooterMode::QuotedPrintable => quoted_printable(&footer),
    };
    let mut out = Vec::with_capacity(body.len() + footer.len() + 6);
    out.extend_from_slice(body);
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(footer.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// Quoted-printable encoding of one line (soft line breaks keep lines under 76 characters).
fn quoted_printable(text: &str) -> String {
    let mut out = String::new();
    let mut line_len = 0;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let last = i + 1 == bytes.len();
        let encoded = if b == b'=' || !(b' '..=b'~').contains(&b) || (last && b == b' ') {
            format!("={b:02X}")
        } else {
            (b as char).to_string()
        };
        if line_len + encoded.len() > 75 {
            out.push_str("=\r\n");
            line_len = 0;
        }
        line_len += encoded.len();
        out.push_str(&encoded);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let tag = "[EXTERNAL]";
        assert_eq!(
            subject_edit(Some("Hello"), tag),
            Some(Edit::change_header(1, "Subject", "[EXTERNAL] Hello"))
        );
        assert_eq!(
            subject_edit(None, tag),
            Some(Edit::add_header("Subject", "[EXTERNAL]"))
        );
        assert_eq!(subject_edit(Some("[EXTERNAL] Hello"), tag), None);
        assert_eq!(subject_edit(Some("Re: [external] Hello"), tag), None);
        assert_eq!(
            subject_edit(Some("  "), tag),
            Some(Edit::change_header(1, "Subject", "[EXTERNAL]"))
        );
        assert_eq!(subject_edit(Some("Hello"), "  "), None);
    }

    #[test]
    fn which_bodies_get_a_footer() {
        assert_eq!(footer_mode(None, None), Some(FooterMode::Plain));
        assert_eq!(
            footer_mode(Some("text/plain; charset=utf-8"), Some("8bit")),
            Some(FooterMode::Plain)
        );
        assert_eq!(
            footer_mode(Some("Text/Plain"), Some("Quoted-Printable")),
            Some(FooterMode::QuotedPrintable)
        );
        assert_eq!(footer_mode(Some("text/plain"), Some("base64")), None);
        assert_eq!(footer_mode(Some("text/html"), None), None);
        assert_eq!(footer_mode(Some("multipart/mixed; boundary=x"), None), None);
    }

    #[test]
    fn footer_is_appended() {
        assert_eq!(
            with_footer(b"Hi\r\n", "Careful.", FooterMode::Plain),
            b"Hi\r\n\r\nCareful.\r\n"
        );
        assert_eq!(
            with_footer(b"Hi", "Careful.", FooterMode::Plain),
            b"Hi\r\n\r\nCareful.\r\n"
        );
        assert_eq!(with_footer(b"", "a\nb", FooterMode::Plain), b"\r\na b\r\n");
        assert_eq!(
            with_footer(b"x\r\n", "a=b é ", FooterMode::QuotedPrintable),
            b"x\r\n\r\na=3Db =C3=A9=20\r\n"
        );
    }

    #[test]
    fn long_quoted_printable_lines_are_wrapped() {
        let qp = quoted_printable(&"x".repeat(200));
        assert!(qp.split("\r\n").all(|l| l.len() <= 76));
        assert_eq!(qp.replace("=\r\n", ""), "x".repeat(200));
    }
}
