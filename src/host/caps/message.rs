//! Capability `message`: a parsed view of the current message.
//!
//! The glue builds the raw message with [`assemble`] from the headers and the body the
//! milter buffered, and wraps it in a [`MessageView`]. The view parses the message with
//! mail-parser once, on the first call that needs it, and answers every later call from
//! that result. Input that mail-parser cannot make sense of never panics: the lists come
//! back empty and the options `None`.
//!
//! MIME parts are listed depth first with index 0 for the message itself. An attached
//! message (`message/rfc822`) is one part; its content is the attached message's raw
//! bytes, and its own parts are not listed.

use std::ops::Range;
use std::sync::OnceLock;

use mail_parser::decoders::html::html_to_text;
use mail_parser::{MessageParser, MimeHeaders, PartType};

/// One MIME part of the message. Mirrors the WIT record `message.part`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Position in [`MessageView::parts`] order (0 = the message itself).
    pub index: u32,
    /// Lower-case `type/subtype`, e.g. `text/plain` or `application/pdf`. Parts without a
    /// Content-Type header get `text/plain` (`message/rfc822` inside multipart/digest).
    pub content_type: String,
    /// File name from Content-Disposition (`filename`) or Content-Type (`name`), decoded.
    pub filename: Option<String>,
    /// True for attachments: parts that are not the message's text or HTML body and not
    /// multipart containers.
    pub attachment: bool,
    /// Decoded size in bytes (for containers and attached messages: the raw body size).
    pub size: u64,
}

/// Where a part's content lives.
#[derive(Debug)]
enum Content {
    /// Decoded bytes (text is UTF-8, converted from its charset).
    Decoded(Vec<u8>),
    /// A slice of the raw message (containers and attached messages).
    Raw(Range<usize>),
}

/// Everything the view answers, computed once.
#[derive(Debug, Default)]
struct Parsed {
    subject: Option<String>,
    from: Vec<String>,
    parts: Vec<(PartInfo, Content)>,
    text_body: Option<String>,
}

/// A parsed view of one message. Cheap to create; parsing happens on first use.
#[derive(Debug)]
pub struct MessageView {
    raw: Vec<u8>,
    truncated: bool,
    parsed: OnceLock<Parsed>,
}

impl MessageView {
    /// Wraps `raw` (header block, empty line, body; see [`assemble`]). `truncated` says
    /// that the body was cut at the host's buffer cap, so the view is incomplete.
    pub fn new(raw: Vec<u8>, truncated: bool) -> Self {
        MessageView {
            raw,
            truncated,
            parsed: OnceLock::new(),
        }
    }

    /// The raw message the view was built from.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The headers of the message in order, as raw names and values: the value without
    /// the space after the colon and without the final CRLF; folded values keep their
    /// CRLF and leading whitespace. Bytes that are not UTF-8 are replaced with U+FFFD.
    pub fn headers(&self) -> Vec<(String, String)> {
        split_headers(&self.raw)
            .into_iter()
            .map(|(name, value)| {
                (
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect()
    }

    /// The Subject, decoded (RFC 2047 encoded words and charsets), if present.
    pub fn subject(&self) -> Option<String> {
        self.parsed().subject.clone()
    }

    /// The addresses of the From header (all of them, including those inside groups).
    pub fn from_addresses(&self) -> Vec<String> {
        self.parsed().from.clone()
    }

    /// Every MIME part, depth first; index 0 is the message itself.
    pub fn parts(&self) -> Vec<PartInfo> {
        self.parsed()
            .parts
            .iter()
            .map(|(info, _)| info.clone())
            .collect()
    }

    /// Up to `len` decoded bytes of part `index` starting at `offset`. Empty for an
    /// unknown index or an offset past the end; short at the end of the part.
    pub fn part_content(&self, index: u32, offset: u64, len: u32) -> Vec<u8> {
        let Some((_, content)) = self.parsed().parts.get(index as usize) else {
            return Vec::new();
        };
        let bytes: &[u8] = match content {
            Content::Decoded(bytes) => bytes,
            Content::Raw(range) => self.raw.get(range.clone()).unwrap_or_default(),
        };
        let Ok(start) = usize::try_from(offset) else {
            return Vec::new();
        };
        if start >= bytes.len() {
            return Vec::new();
        }
        let end = start.saturating_add(len as usize).min(bytes.len());
        bytes[start..end].to_vec()
    }

    /// The first text/plain body, decoded; converted from the first HTML body when the
    /// message has no plain text body.
    pub fn text_body(&self) -> Option<String> {
        self.parsed().text_body.clone()
    }

    /// True when the host's body buffer hit its cap and the view is incomplete.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    fn parsed(&self) -> &Parsed {
        self.parsed.get_or_init(|| parse(&self.raw))
    }
}

/// Rebuilds a raw message from headers as Postfix gives them over milter (values without
/// the leading space, folded lines kept) and the body: `Name: value\r\n` for each header,
/// an empty line, then the body.
pub fn assemble(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let size = headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum::<usize>()
        + 2
        + body.len();
    let mut raw = Vec::with_capacity(size);
    for (name, value) in headers {
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw
}

/// Splits the header block of `raw` into (name, value) slices. The block ends at the
/// first empty line (or at the end of the input); a line without a colon ends it too.
pub(super) fn split_headers(raw: &[u8]) -> Vec<(&[u8], &[u8])> {
    /// Pushes the header that started at `(name start, name end, value start)` and
    /// ends (with its line end) at `end`.
    fn finish<'a>(
        raw: &'a [u8],
        current: Option<(usize, usize, usize)>,
        end: usize,
        headers: &mut Vec<(&'a [u8], &'a [u8])>,
    ) {
        if let Some((ns, ne, vs)) = current {
            let mut ve = end;
            if raw[..ve].ends_with(b"\r\n") {
                ve -= 2;
            } else if raw[..ve].ends_with(b"\n") {
                ve -= 1;
            }
            headers.push((&raw[ns..ne], &raw[vs.min(ve)..ve]));
        }
    }

    let mut headers = Vec::new();
    let mut current: Option<(usize, usize, usize)> = None;
    let mut pos = 0;
    while pos < raw.len() {
        let line_end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| pos + p + 1);
        let line = &raw[pos..line_end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) && current.is_some() {
            // Continuation of the current header.
            pos = line_end;
            continue;
        }
        finish(raw, current.take(), pos, &mut headers);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            // Not a header: the header block is over (garbage or a missing empty line).
            return headers;
        };
        let name_end = pos + line[..colon].trim_ascii_end().len();
        let mut value_start = pos + colon + 1;
        if matches!(raw.get(value_start), Some(b' ')) {
            value_start += 1;
        }
        current = Some((pos, name_end, value_start));
        pos = line_end;
    }
    finish(raw, current.take(), pos, &mut headers);
    headers
}

fn parse(raw: &[u8]) -> Parsed {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Parsed::default();
    };

    let subject = message.subject().map(str::to_owned);
    let from = message
        .from()
        .map(|address| {
            address
                .iter()
                .filter_map(|addr| addr.address())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    // Same as mail-parser's `body_text(0)`, which needs a longer borrow than we have.
    let text_body = message
        .text_body
        .first()
        .and_then(|id| message.parts.get(*id as usize))
        .and_then(|part| match &part.body {
            PartType::Text(text) => Some(text.to_string()),
            PartType::Html(html) => Some(html_to_text(html)),
            _ => None,
        });

    let mut parts = Vec::new();
    // Depth-first walk over the part tree (mail-parser keeps the parts in a flat list
    // with multipart parts pointing at their children).
    let mut stack: Vec<u32> = vec![0];
    let mut seen = vec![false; message.parts.len()];
    while let Some(id) = stack.pop() {
        let Some(part) = message.parts.get(id as usize) else {
            continue;
        };
        if std::mem::replace(&mut seen[id as usize], true) {
            continue; // defensive: never loop on a malformed tree
        }
        let index = parts.len() as u32;
        let content_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_owned(),
            })
            .map(|ct| ct.to_ascii_lowercase())
            .unwrap_or_else(|| match &part.body {
                PartType::Message(_) => "message/rfc822".to_owned(),
                PartType::Multipart(_) => "multipart/mixed".to_owned(),
                _ => "text/plain".to_owned(),
            });
        let raw_body =
            (part.offset_body as usize).min(raw.len())..(part.offset_end as usize).min(raw.len());
        let raw_body = raw_body.start..raw_body.end.max(raw_body.start);
        let content = match &part.body {
            PartType::Text(text) | PartType::Html(text) => {
                Content::Decoded(text.as_bytes().to_vec())
            }
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
                Content::Decoded(bytes.to_vec())
            }
            PartType::Message(_) | PartType::Multipart(_) => Content::Raw(raw_body.clone()),
        };
        let size = match &content {
            Content::Decoded(bytes) => bytes.len(),
            Content::Raw(range) => range.len(),
        } as u64;
        let attachment = !matches!(part.body, PartType::Multipart(_))
            && (message.attachments.contains(&id)
                || (!message.text_body.contains(&id) && !message.html_body.contains(&id)));
        let filename = part.attachment_name().map(str::to_owned);
        parts.push((
            PartInfo {
                index,
                content_type,
                filename,
                attachment,
                size,
            },
            content,
        ));
        if let PartType::Multipart(children) = &part.body {
            stack.extend(children.iter().rev());
        }
    }

    Parsed {
        subject,
        from,
        parts,
        text_body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crlf(text: &str) -> Vec<u8> {
        text.replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes()
    }

    const PDF: &[u8] =
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n";
    const EXE: &[u8] = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xffThis program cannot be run in DOS mode.";

    fn base64(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        // Wrap at 76 columns like real mailers do.
        out.as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    fn mixed_message() -> Vec<u8> {
        let mut text = crlf(
            "Received: from mail.example.org (mail.example.org [192.0.2.10])\n\
             \tby mx.example.com (Postfix) with ESMTPS id 4F1A2B3C4D\n\
             \tfor <bob@example.com>; Tue, 14 Jan 2025 10:00:00 +0000 (UTC)\n\
             From: \"Alice Example\" <alice@example.org>\n\
             To: Bob <bob@example.com>\n\
             Subject: =?UTF-8?B?UmVjaG51bmcgZsO8ciBKYW51YXI=?=\n\
             Date: Tue, 14 Jan 2025 11:00:00 +0100\n\
             Message-ID: <20250114100000.12345@example.org>\n\
             MIME-Version: 1.0\n\
             Content-Type: multipart/mixed; boundary=\"----=_Part_0_1\"\n\
             \n\
             This is a multi-part message in MIME format.\n\
             \n\
             ------=_Part_0_1\n\
             Content-Type: multipart/alternative; boundary=\"alt-boundary\"\n\
             \n\
             --alt-boundary\n\
             Content-Type: text/plain; charset=\"iso-8859-1\"\n\
             Content-Transfer-Encoding: quoted-printable\n\
             \n\
             Hallo Bob,=0A=0Aanbei die Rechnung f=FCr Januar.\n\
             --alt-boundary\n\
             Content-Type: text/html; charset=\"utf-8\"\n\
             \n\
             <html><body><p>Hallo Bob,</p><p>anbei die Rechnung.</p></body></html>\n\
             --alt-boundary--\n\
             \n\
             ------=_Part_0_1\n\
             Content-Type: application/pdf; name=\"Rechnung-2025-01.pdf\"\n\
             Content-Transfer-Encoding: base64\n\
             Content-Disposition: attachment; filename=\"Rechnung-2025-01.pdf\"\n\
             \n",
        );
        text.extend_from_slice(base64(PDF).as_bytes());
        text.extend_from_slice(&crlf(
            "\n\
             ------=_Part_0_1\n\
             Content-Type: application/octet-stream\n\
             Content-Transfer-Encoding: base64\n\
             Content-Disposition: attachment;\n\
             \tfilename=\"=?UTF-8?Q?Zahlung=5Fbest=C3=A4tigen.exe?=\"\n\
             \n",
        ));
        text.extend_from_slice(base64(EXE).as_bytes());
        text.extend_from_slice(&crlf("\n------=_Part_0_1--\n"));
        text
    }

    #[test]
    fn multipart_mixed_with_attachments() {
        let view = MessageView::new(mixed_message(), false);
        assert_eq!(view.subject().as_deref(), Some("Rechnung für Januar"));
        assert_eq!(view.from_addresses(), vec!["alice@example.org".to_owned()]);
        assert!(!view.truncated());

        let parts = view.parts();
        let summary: Vec<(u32, &str, Option<&str>, bool)> = parts
            .iter()
            .map(|p| {
                (
                    p.index,
                    p.content_type.as_str(),
                    p.filename.as_deref(),
                    p.attachment,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, "multipart/mixed", None, false),
                (1, "multipart/alternative", None, false),
                (2, "text/plain", None, false),
                (3, "text/html", None, false),
                (4, "application/pdf", Some("Rechnung-2025-01.pdf"), true),
                (
                    5,
                    "application/octet-stream",
                    Some("Zahlung_bestätigen.exe"),
                    true
                ),
            ]
        );
        assert_eq!(parts[4].size, PDF.len() as u64);
        assert_eq!(parts[5].size, EXE.len() as u64);

        // Decoded content, whole and in pieces.
        assert_eq!(view.part_content(4, 0, u32::MAX), PDF);
        assert_eq!(view.part_content(5, 0, 2), b"MZ");
        assert_eq!(view.part_content(5, 2, 3), &EXE[2..5]);
        assert_eq!(
            view.part_content(5, EXE.len() as u64 - 3, 100),
            &EXE[EXE.len() - 3..]
        );
        assert!(view.part_content(5, EXE.len() as u64, 10).is_empty());
        assert!(view.part_content(5, u64::MAX, 10).is_empty());
        assert!(view.part_content(99, 0, 10).is_empty());
        // Charset conversion and quoted-printable decoding.
        assert_eq!(
            String::from_utf8(view.part_content(2, 0, 1000)).unwrap(),
            "Hallo Bob,\n\nanbei die Rechnung für Januar."
        );
        assert_eq!(
            view.text_body().as_deref(),
            Some("Hallo Bob,\n\nanbei die Rechnung für Januar.")
        );
        // The container's content is its raw body.
        let container = view.part_content(0, 0, u32::MAX);
        assert!(container.starts_with(b"This is a multi-part message"));
        assert_eq!(container.len() as u64, parts[0].size);
    }

    #[test]
    fn headers_are_raw_and_in_order() {
        let view = MessageView::new(mixed_message(), false);
        let headers = view.headers();
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Received",
                "From",
                "To",
                "Subject",
                "Date",
                "Message-ID",
                "MIME-Version",
                "Content-Type"
            ]
        );
        assert_eq!(
            headers[0].1,
            "from mail.example.org (mail.example.org [192.0.2.10])\r\n\
             \tby mx.example.com (Postfix) with ESMTPS id 4F1A2B3C4D\r\n\
             \tfor <bob@example.com>; Tue, 14 Jan 2025 10:00:00 +0000 (UTC)"
        );
        assert_eq!(headers[3].1, "=?UTF-8?B?UmVjaG51bmcgZsO8ciBKYW51YXI=?=");
    }

    #[test]
    fn assemble_round_trips_milter_headers() {
        let headers = vec![
            ("From".to_owned(), "a@example.org".to_owned()),
            (
                "Subject".to_owned(),
                "=?ISO-8859-1?Q?Gr=FC=DFe?= aus\r\n\t=?UTF-8?Q?K=C3=B6ln?=".to_owned(),
            ),
            ("X-Empty".to_owned(), String::new()),
        ];
        let raw = assemble(&headers, b"Body line\r\n");
        assert_eq!(
            raw,
            b"From: a@example.org\r\n\
              Subject: =?ISO-8859-1?Q?Gr=FC=DFe?= aus\r\n\t=?UTF-8?Q?K=C3=B6ln?=\r\n\
              X-Empty: \r\n\
              \r\n\
              Body line\r\n"
        );
        let view = MessageView::new(raw, true);
        assert_eq!(view.headers(), headers);
        assert_eq!(view.subject().as_deref(), Some("Grüße aus Köln"));
        assert_eq!(view.text_body().as_deref(), Some("Body line\r\n"));
        assert!(view.truncated());
        let parts = view.parts();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].content_type, "text/plain");
        assert!(!parts[0].attachment);
    }

    #[test]
    fn rfc2047_subjects() {
        for (encoded, decoded) in [
            ("=?utf-8?q?caf=C3=A9?=", "café"),
            (
                "=?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=",
                "If you can read this yo",
            ),
            (
                "=?UTF-8?B?8J+TpiBZb3VyIHBhY2thZ2U=?= =?UTF-8?B?IGlzIG9uIGl0cyB3YXk=?=",
                "📦 Your package is on its way",
            ),
            ("=?KOI8-R?B?8NLJ18XU?=", "Привет"),
            ("plain ascii", "plain ascii"),
        ] {
            let raw = assemble(&[("Subject".to_owned(), encoded.to_owned())], b"x\r\n");
            let view = MessageView::new(raw, false);
            assert_eq!(view.subject().as_deref(), Some(decoded), "{encoded}");
        }
    }

    #[test]
    fn from_groups_and_lists() {
        let raw = assemble(
            &[(
                "From".to_owned(),
                "Team: a@example.org, \"B\" <b@example.net>;, c@example.com".to_owned(),
            )],
            b"",
        );
        let view = MessageView::new(raw, false);
        assert_eq!(
            view.from_addresses(),
            ["a@example.org", "b@example.net", "c@example.com"]
        );
    }

    #[test]
    fn html_only_message() {
        let raw = crlf(
            "From: news@example.org\n\
             Subject: Newsletter\n\
             Content-Type: text/html; charset=utf-8\n\
             \n\
             <html><body><h1>Hello</h1><p>World &amp; more</p></body></html>\n",
        );
        let view = MessageView::new(raw, false);
        let text = view.text_body().unwrap();
        assert!(text.contains("Hello"), "{text}");
        assert!(text.contains("World & more"), "{text}");
        assert!(!text.contains('<'), "{text}");
        assert_eq!(view.parts()[0].content_type, "text/html");
        assert!(!view.parts()[0].attachment);
    }

    #[test]
    fn message_without_body() {
        let raw = assemble(
            &[
                ("From".to_owned(), "a@example.org".to_owned()),
                ("Subject".to_owned(), "empty".to_owned()),
            ],
            b"",
        );
        let view = MessageView::new(raw, false);
        assert_eq!(view.subject().as_deref(), Some("empty"));
        assert_eq!(view.headers().len(), 2);
        let parts = view.parts();
        assert!(parts.len() <= 1);
        assert!(parts.iter().all(|p| p.size == 0));
        assert!(view.part_content(0, 0, 100).is_empty());
        assert!(view.text_body().unwrap_or_default().is_empty());

        // Headers only, not even the empty line.
        let view = MessageView::new(b"Subject: hi\r\nFrom: a@b.c\r\n".to_vec(), false);
        assert_eq!(view.headers().len(), 2);
        assert_eq!(view.subject().as_deref(), Some("hi"));
    }

    #[test]
    fn attached_message_is_one_part() {
        let raw = crlf(
            "From: a@example.org\n\
             Subject: Fwd: hello\n\
             Content-Type: multipart/mixed; boundary=b1\n\
             \n\
             --b1\n\
             Content-Type: text/plain\n\
             \n\
             See attached.\n\
             --b1\n\
             Content-Type: message/rfc822\n\
             \n\
             From: c@example.net\n\
             Subject: inner\n\
             Content-Type: multipart/mixed; boundary=b2\n\
             \n\
             --b2\n\
             Content-Type: text/plain\n\
             \n\
             inner text\n\
             --b2--\n\
             --b1--\n",
        );
        let view = MessageView::new(raw, false);
        let parts = view.parts();
        let types: Vec<&str> = parts.iter().map(|p| p.content_type.as_str()).collect();
        assert_eq!(types, ["multipart/mixed", "text/plain", "message/rfc822"]);
        assert!(parts[2].attachment);
        let inner = view.part_content(2, 0, u32::MAX);
        assert!(inner.starts_with(b"From: c@example.net\r\n"), "{inner:?}");
        assert_eq!(view.text_body().as_deref(), Some("See attached."));
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\r\n".to_vec(),
            b"\xff\xfe\x00\x01garbage without structure".to_vec(),
            b"no colon here\r\n\r\nbody".to_vec(),
            b": empty name\r\n\r\n".to_vec(),
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n--x\r\n--x--".to_vec(),
            b"Content-Type: multipart/mixed\r\n\r\nno boundary".to_vec(),
            b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!".to_vec(),
            b" leading continuation\r\nSubject: x\r\n\r\n".to_vec(),
            (0..=255u8).cycle().take(5000).collect(),
        ];
        for raw in inputs {
            let view = MessageView::new(raw, false);
            let _ = view.headers();
            let _ = view.subject();
            let _ = view.from_addresses();
            let parts = view.parts();
            for p in &parts {
                let _ = view.part_content(p.index, 0, u32::MAX);
                let _ = view.part_content(p.index, 3, 7);
            }
            let _ = view.part_content(u32::MAX, u64::MAX, u32::MAX);
            let _ = view.text_body();
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut raw = String::from("Subject: deep\r\n");
        for i in 0..200 {
            raw.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
            ));
        }
        raw.push_str("Content-Type: text/plain\r\n\r\nbottom\r\n");
        let view = MessageView::new(raw.into_bytes(), false);
        let _ = view.parts();
        let _ = view.text_body();
    }
}
