//! SMTPD policy delegation (`check_policy_service`, SMTPD_POLICY_README).
//!
//! Facts from Postfix 3.7 (`README_FILES/SMTPD_POLICY_README`, `src/smtpd/smtpd_check.c`):
//! - The client sends `name=value` lines separated by newlines and ended by an empty line;
//!   the server answers one `action=<access(5) action>` line and an empty line. The
//!   connection stays open for further requests.
//! - Names must not contain `=`, NUL or newline; values must not contain NUL or newline.
//!   Postfix 3.7 sends about 29 attributes per request (`request=smtpd_access_policy`,
//!   `protocol_state`, `client_address`, … `policy_context`), values in the client's case;
//!   `helo_name` and addresses may hold 8-bit bytes.
//! - Postfix reads the reply as attributes (`attr_clnt_request`, `RECV_ATTR_STR("action")`)
//!   and ignores other attributes; on trouble a server should send nothing and disconnect
//!   (Postfix then retries, `smtpd_policy_service_try_limit`, and falls back to
//!   `smtpd_policy_service_default_action`).
//!
//! Server side: [`decode_request`] → [`Request`], bounded by [`Limits`] (line length,
//! request size, attribute count, all checked while scanning, before more is buffered);
//! [`encode_reply`] writes a [`Reply`] after [`Reply::fit`]. Client side: [`encode_request`]
//! (validating names and values) and [`decode_reply`].
//!
//! Decoding tolerates CRLF (every CR before the newline is dropped), splits each line at the
//! first `=` (values may contain `=`), and converts invalid UTF-8 lossily rather than
//! failing. Lines without `=`, with an empty name or with a NUL are errors.

use bytes::{Buf, BufMut, BytesMut};

use crate::text::preview;

/// Bounds on one request (or reply block), checked while scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line in bytes, newline (and any CR) included. Default 16384: Postfix's
    /// own lines are short, but `ccert_subject` and 8-bit HELO names can be long.
    pub max_line: usize,
    /// Largest request in bytes, the final empty line included. Default 65536.
    pub max_request: usize,
    /// Most `name=value` lines in one request. Default 256 (Postfix 3.7 sends 29).
    pub max_attrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: 16_384,
            max_request: 65_536,
            max_attrs: 256,
        }
    }
}

impl Limits {
    /// No bounds at all: for re-reading our own output in tests.
    pub const UNBOUNDED: Limits = Limits {
        max_line: usize::MAX,
        max_request: usize::MAX,
        max_attrs: usize::MAX,
    };
}

/// One policy request: the attributes in the order sent, duplicates kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// `(name, value)` pairs.
    pub attrs: Vec<(String, String)>,
}

impl Request {
    /// A request from `(name, value)` pairs.
    pub fn new<N: Into<String>, V: Into<String>>(attrs: impl IntoIterator<Item = (N, V)>) -> Self {
        Self {
            attrs: attrs
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }

    /// The value of the first attribute called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The answer: one access(5) action (`DUNNO`, `REJECT text`, `PREPEND header: value` …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The action text, without `action=`.
    pub action: String,
}

impl Reply {
    /// A reply with `action`.
    pub fn new(action: impl Into<String>) -> Self {
        Self {
            action: action.into(),
        }
    }

    /// The reply as [`encode_reply`] sends it, which is also what [`decode_reply`] returns
    /// for it: NUL, CR and LF in the action replaced by spaces.
    #[must_use]
    pub fn fit(self) -> Reply {
        if self.action.bytes().any(is_unsafe_in_action) {
            Reply {
                action: self
                    .action
                    .chars()
                    .map(|c| {
                        if matches!(c, '\0' | '\r' | '\n') {
                            ' '
                        } else {
                            c
                        }
                    })
                    .collect(),
            }
        } else {
            self
        }
    }
}

fn is_unsafe_in_action(b: u8) -> bool {
    matches!(b, b'\0' | b'\r' | b'\n')
}

/// Why a policy request or reply cannot be decoded or encoded. Decoding errors leave the
/// buffer as it was; the server should close the connection without answering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A line longer than [`Limits::max_line`].
    #[error("policy line {line} is longer than {max} bytes")]
    LineTooLong {
        /// 1-based line number within the request.
        line: usize,
        /// The limit in force.
        max: usize,
    },
    /// A request longer than [`Limits::max_request`].
    #[error("policy request is longer than {max} bytes")]
    RequestTooLong {
        /// The limit in force.
        max: usize,
    },
    /// More attributes than [`Limits::max_attrs`].
    #[error("policy request has more than {max} attributes")]
    TooManyAttributes {
        /// The limit in force.
        max: usize,
    },
    /// A non-empty line without `=`.
    #[error("policy line {line} has no '=': {text}")]
    MissingEquals {
        /// 1-based line number.
        line: usize,
        /// The line, escaped and cut.
        text: String,
    },
    /// A line starting with `=`.
    #[error("policy line {line} has an empty attribute name: {text}")]
    EmptyName {
        /// 1-based line number.
        line: usize,
        /// The line, escaped and cut.
        text: String,
    },
    /// A line holding a NUL byte.
    #[error("policy line {line} contains a NUL byte: {text}")]
    Nul {
        /// 1-based line number.
        line: usize,
        /// The line, escaped and cut.
        text: String,
    },
    /// A reply block without an `action` attribute.
    #[error("policy reply has no `action` attribute")]
    MissingAction,
    /// An attribute the protocol cannot carry (client side encoding).
    #[error("policy attribute {name} cannot be sent: {reason}")]
    InvalidAttribute {
        /// The name, escaped and cut.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Resumable scan over one `name=value … empty line` block at the front of a buffer.
///
/// Remembers how far complete lines were checked, so a codec fed a byte at a time does not
/// rescan. Must be reset (it resets itself) once a block is taken.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Scan {
    /// Bytes of complete, checked attribute lines.
    checked: usize,
    /// Attribute lines among them.
    attrs: usize,
}

fn trim_cr(mut line: &[u8]) -> &[u8] {
    while let Some(rest) = line.strip_suffix(b"\r") {
        line = rest;
    }
    line
}

fn check_line(line: &[u8], number: usize) -> Result<(), Error> {
    if line.contains(&0) {
        return Err(Error::Nul {
            line: number,
            text: preview(line),
        });
    }
    match line.iter().position(|&b| b == b'=') {
        None => Err(Error::MissingEquals {
            line: number,
            text: preview(line),
        }),
        Some(0) => Err(Error::EmptyName {
            line: number,
            text: preview(line),
        }),
        Some(_) => Ok(()),
    }
}

impl Scan {
    /// The length of the complete block at the front of `buf` (empty line included), or
    /// `None` if it is not complete yet.
    pub(crate) fn advance(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, Error> {
        loop {
            let rest = &buf[self.checked..];
            let window = &rest[..rest.len().min(limits.max_line)];
            let Some(newline) = window.iter().position(|&b| b == b'\n') else {
                if rest.len() >= limits.max_line {
                    return Err(Error::LineTooLong {
                        line: self.attrs + 1,
                        max: limits.max_line,
                    });
                }
                if buf.len() >= limits.max_request {
                    return Err(Error::RequestTooLong {
                        max: limits.max_request,
                    });
                }
                return Ok(None);
            };
            let end = self.checked + newline + 1;
            if end > limits.max_request {
                return Err(Error::RequestTooLong {
                    max: limits.max_request,
                });
            }
            let line = trim_cr(&rest[..newline]);
            if line.is_empty() {
                *self = Scan::default();
                return Ok(Some(end));
            }
            check_line(line, self.attrs + 1)?;
            if self.attrs >= limits.max_attrs {
                return Err(Error::TooManyAttributes {
                    max: limits.max_attrs,
                });
            }
            self.attrs += 1;
            self.checked = end;
        }
    }
}

/// The attributes of a checked block (empty line included).
fn parse_attrs(block: &[u8]) -> Vec<(String, String)> {
    let mut attrs = Vec::new();
    // The block ends with the empty line: every piece but the last two is an attribute.
    let mut lines: Vec<&[u8]> = block.split(|&b| b == b'\n').collect();
    lines.truncate(lines.len().saturating_sub(2));
    for line in lines {
        let line = trim_cr(line);
        let eq = line.iter().position(|&b| b == b'=').expect("checked line");
        attrs.push((
            String::from_utf8_lossy(&line[..eq]).into_owned(),
            String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
        ));
    }
    attrs
}

/// Decodes one block with a caller-held [`Scan`] (the codecs keep theirs across calls).
pub(crate) fn decode_block(
    buf: &mut BytesMut,
    limits: &Limits,
    scan: &mut Scan,
) -> Result<Option<Vec<(String, String)>>, Error> {
    match scan.advance(buf, limits) {
        Ok(Some(len)) => {
            let attrs = parse_attrs(&buf[..len]);
            buf.advance(len);
            Ok(Some(attrs))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            *scan = Scan::default();
            Err(e)
        }
    }
}

/// Server side: takes one request off the front of `buf`.
///
/// `Ok(None)`: the empty line has not arrived yet; nothing consumed. An empty line with no
/// attributes before it decodes as an empty [`Request`] (Postfix never sends one; a server
/// will find no `request=smtpd_access_policy` in it). On error nothing is consumed and the
/// connection should be closed without a reply.
pub fn decode_request(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, Error> {
    Ok(decode_block(buf, limits, &mut Scan::default())?.map(|attrs| Request { attrs }))
}

/// Server side: appends `action=<action>` and the empty line, after [`Reply::fit`].
pub fn encode_reply(reply: &Reply, out: &mut BytesMut) {
    out.reserve(9 + reply.action.len());
    out.put_slice(b"action=");
    for &b in reply.action.as_bytes() {
        out.put_u8(if is_unsafe_in_action(b) { b' ' } else { b });
    }
    out.put_slice(b"\n\n");
}

fn check_attr(name: &str, value: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty name"
    } else if name.contains(['=', '\0', '\n']) {
        "name contains '=', NUL or newline"
    } else if value.contains(['\0', '\n']) {
        "value contains NUL or newline"
    } else if value.ends_with('\r') {
        "value ends with CR (servers drop it as part of CRLF)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidAttribute {
        name: preview(name.as_bytes()),
        reason,
    })
}

/// Client side: appends `request` as `name=value` lines and the empty line, as Postfix
/// does. Fails (writing nothing) if a name is empty or holds `=`, NUL or newline, or a
/// value holds NUL or newline or ends with CR.
pub fn encode_request(request: &Request, out: &mut BytesMut) -> Result<(), Error> {
    for (name, value) in &request.attrs {
        check_attr(name, value)?;
    }
    let len: usize = request
        .attrs
        .iter()
        .map(|(n, v)| n.len() + v.len() + 2)
        .sum();
    out.reserve(len + 1);
    for (name, value) in &request.attrs {
        out.put_slice(name.as_bytes());
        out.put_u8(b'=');
        out.put_slice(value.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    Ok(())
}

/// Client side: takes one reply block off the front of `buf`: `name=value` lines up to an
/// empty line, bounded by `limits`, of which the first `action` is the answer; other
/// attributes are ignored, as Postfix ignores them.
pub fn decode_reply(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Reply>, Error> {
    decode_reply_with(buf, limits, &mut Scan::default())
}

pub(crate) fn decode_reply_with(
    buf: &mut BytesMut,
    limits: &Limits,
    scan: &mut Scan,
) -> Result<Option<Reply>, Error> {
    let Some(len) = scan
        .advance(buf, limits)
        .inspect_err(|_| *scan = Scan::default())?
    else {
        return Ok(None);
    };
    // Find the action before consuming, so an error leaves the buffer as it was.
    let attrs = parse_attrs(&buf[..len]);
    let Some((_, action)) = attrs.into_iter().find(|(n, _)| n == "action") else {
        return Err(Error::MissingAction);
    };
    buf.advance(len);
    Ok(Some(Reply { action }))
}

#[cfg(feature = "tokio")]
pub use crate::codec::policy::{ClientCodec, ServerCodec};

#[cfg(test)]
mod tests {
    use super::*;

    /// The RCPT-stage request Postfix 3.7.11 sent (reference/hooks.md §1.5), verbatim.
    const POSTFIX_RCPT: &[u8] = b"request=smtpd_access_policy
protocol_state=RCPT
protocol_name=ESMTP
client_address=127.0.0.1
client_name=unknown
client_port=55344
reverse_client_name=unknown
server_address=127.0.0.1
server_port=25
helo_name=client.test
sender=sender@remote.test
recipient=alice@example.test
recipient_count=0
queue_id=
instance=25df.6b0379d8.d55b.0
size=0
etrn_domain=
stress=
sasl_method=
sasl_username=
sasl_sender=
ccert_subject=
ccert_issuer=
ccert_fingerprint=
ccert_pubkey_fingerprint=
encryption_protocol=
encryption_cipher=
encryption_keysize=0
policy_context=hooktest

";

    fn dec(wire: &[u8], limits: &Limits) -> (Result<Option<Request>, Error>, BytesMut) {
        let mut buf = BytesMut::from(wire);
        (decode_request(&mut buf, limits), buf)
    }

    #[test]
    fn postfix_rcpt_request() {
        let (r, rest) = dec(POSTFIX_RCPT, &Limits::default());
        let req = r.unwrap().unwrap();
        assert!(rest.is_empty());
        assert_eq!(req.attrs.len(), 29);
        assert_eq!(req.get("request"), Some("smtpd_access_policy"));
        assert_eq!(req.get("protocol_state"), Some("RCPT"));
        assert_eq!(req.get("recipient"), Some("alice@example.test"));
        assert_eq!(req.get("queue_id"), Some(""));
        assert_eq!(req.get("policy_context"), Some("hooktest"));
        assert_eq!(req.get("missing"), None);
        assert_eq!(
            req.attrs.first(),
            Some(&("request".into(), "smtpd_access_policy".into()))
        );
        assert_eq!(
            req.attrs.last(),
            Some(&("policy_context".into(), "hooktest".into()))
        );
        // And the client encoder produces exactly those bytes.
        let mut out = BytesMut::new();
        encode_request(&req, &mut out).unwrap();
        assert_eq!(&out[..], POSTFIX_RCPT);
    }

    #[test]
    fn partial_request_consumes_nothing() {
        for cut in 0..POSTFIX_RCPT.len() {
            let (r, rest) = dec(&POSTFIX_RCPT[..cut], &Limits::default());
            assert_eq!(r, Ok(None), "cut at {cut}");
            assert_eq!(&rest[..], &POSTFIX_RCPT[..cut]);
        }
    }

    #[test]
    fn two_requests_back_to_back() {
        let wire = [
            POSTFIX_RCPT,
            b"request=smtpd_access_policy\nprotocol_state=DATA\n\n",
        ]
        .concat();
        let mut buf = BytesMut::from(&wire[..]);
        let first = decode_request(&mut buf, &Limits::default())
            .unwrap()
            .unwrap();
        let second = decode_request(&mut buf, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(first.get("protocol_state"), Some("RCPT"));
        assert_eq!(second.get("protocol_state"), Some("DATA"));
        assert_eq!(decode_request(&mut buf, &Limits::default()), Ok(None));
        assert!(buf.is_empty());
    }

    #[test]
    fn values_keep_equals_duplicates_and_order() {
        let (r, _) = dec(b"a=b=c\nx=1\nx=2\nempty=\n\n", &Limits::default());
        let req = r.unwrap().unwrap();
        assert_eq!(
            req,
            Request::new([("a", "b=c"), ("x", "1"), ("x", "2"), ("empty", "")])
        );
        assert_eq!(req.get("x"), Some("1"));
    }

    #[test]
    fn crlf_and_8bit_are_tolerated() {
        let (r, _) = dec(
            b"request=smtpd_access_policy\r\nhelo_name=h\xe9llo\r\r\n\r\n",
            &Limits::default(),
        );
        let req = r.unwrap().unwrap();
        assert_eq!(req.get("request"), Some("smtpd_access_policy"));
        assert_eq!(req.get("helo_name"), Some("h\u{fffd}llo"));
    }

    #[test]
    fn empty_line_alone_is_an_empty_request() {
        let (r, rest) = dec(b"\nx=1\n\n", &Limits::default());
        assert_eq!(r, Ok(Some(Request::default())));
        assert_eq!(&rest[..], b"x=1\n\n");
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let (r, rest) = dec(
            b"request=smtpd_access_policy\nbogus line\n\n",
            &Limits::default(),
        );
        assert_eq!(
            r,
            Err(Error::MissingEquals {
                line: 2,
                text: "\"bogus line\"".into()
            })
        );
        assert_eq!(rest.len(), 40, "nothing consumed");
        assert_eq!(
            r.unwrap_err().to_string(),
            "policy line 2 has no '=': \"bogus line\""
        );
        assert!(matches!(
            dec(b"=value\n\n", &Limits::default()).0,
            Err(Error::EmptyName { line: 1, .. })
        ));
        assert!(matches!(
            dec(b"a=b\0c\n\n", &Limits::default()).0,
            Err(Error::Nul { line: 1, .. })
        ));
        // The error is reported as soon as the bad line is complete.
        assert!(matches!(
            dec(b"a=1\nno equals\n", &Limits::default()).0,
            Err(Error::MissingEquals { line: 2, .. })
        ));
        let long = [&b"x"[..]; 200].concat();
        match dec(&[&long[..], b"\n\n"].concat(), &Limits::default()).0 {
            Err(Error::MissingEquals { text, .. }) => {
                assert!(text.len() < 90 && text.ends_with("…\""), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn line_limit() {
        let limits = Limits {
            max_line: 8,
            ..Limits::default()
        };
        assert!(dec(b"abc=efg\n\n", &limits).0.unwrap().is_some());
        assert!(dec(b"abc=ef\r\n\n", &limits).0.unwrap().is_some());
        assert_eq!(
            dec(b"a=1\nabc=efgh\n\n", &limits).0,
            Err(Error::LineTooLong { line: 2, max: 8 })
        );
        // Refused as soon as the limit is reached without a newline.
        assert_eq!(
            dec(b"abc=efgh", &limits).0,
            Err(Error::LineTooLong { line: 1, max: 8 })
        );
        assert_eq!(dec(b"abc=efg", &limits).0, Ok(None));
    }

    #[test]
    fn request_limit() {
        let limits = Limits {
            max_request: 10,
            ..Limits::default()
        };
        assert!(dec(b"a=1\nb=22\n\n", &limits).0.unwrap().is_some());
        assert_eq!(
            dec(b"a=1\nb=333\n\n", &limits).0,
            Err(Error::RequestTooLong { max: 10 })
        );
        // Refused before the rest arrives.
        assert_eq!(
            dec(b"a=1\nb=3333", &limits).0,
            Err(Error::RequestTooLong { max: 10 })
        );
        assert_eq!(dec(b"a=1\nb=333", &limits).0, Ok(None));
        // A pipelined second request does not count against the first.
        let (r, rest) = dec(b"a=1\n\nb=2222222222222\n\n", &limits);
        assert!(r.unwrap().is_some());
        assert_eq!(rest.len(), 17);
    }

    #[test]
    fn attribute_limit() {
        let limits = Limits {
            max_attrs: 2,
            ..Limits::default()
        };
        assert!(dec(b"a=1\nb=2\n\n", &limits).0.unwrap().is_some());
        assert_eq!(
            dec(b"a=1\nb=2\nc=3\n", &limits).0,
            Err(Error::TooManyAttributes { max: 2 })
        );
    }

    #[test]
    fn scan_resumes_where_it_stopped() {
        let limits = Limits::default();
        let mut scan = Scan::default();
        let mut buf = BytesMut::new();
        let mut got = None;
        for &b in POSTFIX_RCPT {
            buf.put_u8(b);
            if let Some(attrs) = decode_block(&mut buf, &limits, &mut scan).unwrap() {
                got = Some(attrs);
            }
        }
        assert_eq!(got.unwrap().len(), 29);
        assert!(buf.is_empty());
    }

    #[test]
    fn reply_encoding() {
        let mut out = BytesMut::new();
        encode_reply(&Reply::new("DUNNO"), &mut out);
        encode_reply(
            &Reply::new("REJECT 5.7.1 blocked\r\nby\0policy plugin"),
            &mut out,
        );
        encode_reply(&Reply::new("PREPEND X-Policy: a=b"), &mut out);
        assert_eq!(
            &out[..],
            &b"action=DUNNO\n\naction=REJECT 5.7.1 blocked  by policy plugin\n\naction=PREPEND X-Policy: a=b\n\n"[..]
        );
        assert_eq!(Reply::new("a\nb").fit(), Reply::new("a b"),);
    }

    #[test]
    fn client_reads_replies() {
        let mut buf = BytesMut::from(
            &b"action=DUNNO\n\nfoo=bar\naction=REJECT no\r\naction=second\n\naction=\n\n"[..],
        );
        let limits = Limits::default();
        assert_eq!(
            decode_reply(&mut buf, &limits),
            Ok(Some(Reply::new("DUNNO")))
        );
        assert_eq!(
            decode_reply(&mut buf, &limits),
            Ok(Some(Reply::new("REJECT no")))
        );
        assert_eq!(decode_reply(&mut buf, &limits), Ok(Some(Reply::new(""))));
        assert_eq!(decode_reply(&mut buf, &limits), Ok(None));

        let mut buf = BytesMut::from(&b"foo=bar\n\n"[..]);
        assert_eq!(decode_reply(&mut buf, &limits), Err(Error::MissingAction));
        assert_eq!(buf.len(), 9, "nothing consumed");
    }

    #[test]
    fn client_request_validation() {
        let mut out = BytesMut::new();
        for (name, value) in [
            ("", "v"),
            ("a=b", "v"),
            ("a\0", "v"),
            ("a\nb", "v"),
            ("a", "v\nw"),
            ("a", "v\0"),
            ("a", "v\r"),
        ] {
            let r = encode_request(&Request::new([("ok", "1"), (name, value)]), &mut out);
            assert!(
                matches!(r, Err(Error::InvalidAttribute { .. })),
                "{name:?}={value:?}: {r:?}"
            );
        }
        assert!(out.is_empty(), "nothing written on error");
        encode_request(&Request::default(), &mut out).unwrap();
        assert_eq!(&out[..], b"\n");
    }
}
