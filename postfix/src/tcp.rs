//! tcp_table(5): Postfix's line-based lookup protocol (`tcp:host:port`).
//!
//! Facts from Postfix 3.7 (`man5/tcp_table.5`, `src/util/dict_tcp.c`, `src/util/hex_quote.c`):
//! - One request line, one reply line, each ended by a newline; the connection is kept
//!   and reused. Postfix 3.7 only sends `get SPACE key NEWLINE` (older manuals listed a
//!   never-implemented `put`).
//! - The key is `hex_quote`d: `%`, whitespace and every non-printable byte (so everything
//!   but ASCII graphic characters) become `%XX` in upper case. `hex_unquote` accepts
//!   either case and fails on a `%` not followed by two hex digits.
//! - Replies are read with a bound of 4096 bytes including the newline (`DICT_TCP_MAXLEN`;
//!   [`MAX_LINE`]); a longer line is an error and the connection is closed. The reply must
//!   be three digits, a whitespace byte, then text that `hex_unquote` accepts (for every
//!   code). Postfix acts on the first digit: `2` found (the text, decoded, is the value),
//!   `5` not found (text ignored, connection kept), `4` temporary error (`DICT_ERR_RETRY`,
//!   connection closed), anything else is also `DICT_ERR_RETRY`.
//!
//! Server side: [`decode_request`] → [`Request`] (lines up to [`MAX_LINE`], CRLF tolerated);
//! [`encode_reply`] writes a [`Reply`] after [`Reply::fit`]. Client side: [`encode_request`]
//! and [`decode_reply`], which accepts exactly `200`, `500` and `400`.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use crate::text::{controls_to_spaces, preview, truncate};

/// Longest line, newline included (`DICT_TCP_MAXLEN`). Postfix enforces it on replies;
/// [`decode_request`] enforces it on requests too.
pub const MAX_LINE: usize = 4096;

/// Bytes of an unsupported request verb kept in [`Request::Unsupported`].
pub const MAX_VERB: usize = 64;

/// The `400` text sent instead of a value whose encoded reply line exceeds [`MAX_LINE`].
pub const VALUE_TOO_LONG: &str = "value too long for tcp_table";

/// Bytes left for reply text: `NNN SPACE text NEWLINE`.
const MAX_TEXT: usize = MAX_LINE - 5;

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get SPACE key`: the key, %-decoded.
    Get(Vec<u8>),
    /// Any other verb (e.g. `put`): the word before the first space, converted from UTF-8
    /// lossily, control characters replaced by `?`, cut to [`MAX_VERB`] bytes. Servers
    /// answer `400` (Postfix treats any other request as a client-side error anyway).
    Unsupported(String),
}

/// A reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `200 SPACE encoded-value`: found.
    Found(Vec<u8>),
    /// `500 SPACE text`: not found (Postfix ignores the text and keeps the connection).
    NotFound(String),
    /// `400 SPACE text`: temporary error (Postfix logs, closes the connection and fails
    /// the lookup with `DICT_ERR_RETRY`).
    Temp(String),
}

impl Reply {
    /// The reply as [`encode_reply`] sends it, which is also what [`decode_reply`] returns
    /// for it: a `Found` value whose encoded line would exceed [`MAX_LINE`] becomes
    /// `Temp(VALUE_TOO_LONG)`; texts get control characters replaced by spaces and are cut
    /// (at a character boundary) so the line fits.
    #[must_use]
    pub fn fit(self) -> Reply {
        match self {
            Reply::Found(v) if found_fits(&v) => Reply::Found(v),
            Reply::Found(_) => Reply::Temp(VALUE_TOO_LONG.to_owned()),
            Reply::NotFound(t) => Reply::NotFound(fit_owned(t)),
            Reply::Temp(t) => Reply::Temp(fit_owned(t)),
        }
    }
}

/// Why a tcp_table line cannot be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No newline within [`MAX_LINE`] bytes (nothing was consumed).
    #[error("tcp_table line longer than {max} bytes (newline included)")]
    LineTooLong {
        /// The limit, [`MAX_LINE`].
        max: usize,
    },
    /// A `%` not followed by two hex digits.
    #[error("tcp_table line {line}: '%' at offset {offset} is not followed by two hex digits")]
    BadEscape {
        /// Offset of the `%` in the line.
        offset: usize,
        /// The line, escaped and cut.
        line: String,
    },
    /// `get` without a space and a key.
    #[error("tcp_table request {line} has no key (expected `get SPACE key`)")]
    MissingKey {
        /// The line, escaped and cut.
        line: String,
    },
    /// A reply line not starting with three digits and a whitespace byte.
    #[error("tcp_table reply {line} does not start with a three-digit code and a space")]
    MalformedReply {
        /// The line, escaped and cut.
        line: String,
    },
    /// A reply code other than 200, 400 or 500.
    #[error("tcp_table reply code {code} is not 200, 400 or 500")]
    UnknownCode {
        /// The three digits.
        code: String,
    },
    /// An [`Request::Unsupported`] verb that would not decode as the same request: `get`,
    /// or one holding spaces or control characters, or longer than [`MAX_VERB`] bytes.
    #[error("tcp_table request verb {verb:?} cannot be sent as an unsupported request")]
    InvalidVerb {
        /// The verb as given.
        verb: String,
    },
}

/// Takes one line (newline included) off `buf`, or says why not.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, Error> {
    let window = &buf[..buf.len().min(MAX_LINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(buf.split_to(i + 1))),
        None if buf.len() >= MAX_LINE => Err(Error::LineTooLong { max: MAX_LINE }),
        None => Ok(None),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Postfix `hex_unquote`: `%XX` (either case) to a byte, other bytes as they are.
/// On error, the offset of the bad `%`.
fn unquote(text: &[u8]) -> Result<Vec<u8>, usize> {
    let mut raw = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'%' {
            let hi = text.get(i + 1).copied().and_then(hex_value).ok_or(i)?;
            let lo = text.get(i + 2).copied().and_then(hex_value).ok_or(i)?;
            raw.push((hi << 4) | lo);
            i += 3;
        } else {
            raw.push(b);
            i += 1;
        }
    }
    Ok(raw)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Postfix `hex_quote`: everything but ASCII graphic characters, and `%`, as `%XX`.
fn quote(raw: &[u8], out: &mut BytesMut) {
    out.reserve(quoted_len(raw));
    for &b in raw {
        if b != b'%' && b.is_ascii_graphic() {
            out.put_u8(b);
        } else {
            out.put_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

fn quoted_len(raw: &[u8]) -> usize {
    raw.iter()
        .map(|&b| {
            if b != b'%' && b.is_ascii_graphic() {
                1
            } else {
                3
            }
        })
        .sum()
}

fn found_fits(value: &[u8]) -> bool {
    quoted_len(value) <= MAX_TEXT
}

/// Reply text: control characters to spaces, cut so that its encoding (`%` → `%25`)
/// fits [`MAX_TEXT`].
fn fit_text(text: &str) -> Cow<'_, str> {
    let text = controls_to_spaces(text);
    let mut used = 0;
    let mut cut = None;
    for (i, c) in text.char_indices() {
        used += if c == '%' { 3 } else { c.len_utf8() };
        if used > MAX_TEXT {
            cut = Some(i);
            break;
        }
    }
    match cut {
        Some(i) => truncate(text, i),
        None => text,
    }
}

fn fit_owned(text: String) -> String {
    match fit_text(&text) {
        Cow::Borrowed(b) if b.len() == text.len() => text,
        other => other.into_owned(),
    }
}

fn write_text(code: &[u8; 3], text: &str, out: &mut BytesMut) {
    let text = fit_text(text);
    out.reserve(5 + text.len() + 2 * text.bytes().filter(|&b| b == b'%').count());
    out.put_slice(code);
    out.put_u8(b' ');
    for chunk in text.as_bytes().split_inclusive(|&b| b == b'%') {
        match chunk.split_last() {
            Some((b'%', head)) => {
                out.put_slice(head);
                out.put_slice(b"%25");
            }
            _ => out.put_slice(chunk),
        }
    }
    out.put_u8(b'\n');
}

/// The verb as [`Request::Unsupported`] holds it.
fn verb_text(verb: &[u8]) -> String {
    let lossy = String::from_utf8_lossy(verb);
    let mut verb: String = lossy
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    verb.truncate(verb.floor_char_boundary(MAX_VERB));
    verb
}

/// Server side: takes one request line off the front of `buf`.
///
/// A trailing CR before the newline is dropped. `Ok(None)`: no newline yet, nothing
/// consumed. [`Error::LineTooLong`] consumes nothing; other errors consume the line. A verb
/// other than `get` is not an error but [`Request::Unsupported`].
pub fn decode_request(buf: &mut BytesMut) -> Result<Option<Request>, Error> {
    let Some(line) = take_line(buf)? else {
        return Ok(None);
    };
    let line = &line[..line.len() - 1];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (verb, key) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], Some(&line[space + 1..])),
        None => (line, None),
    };
    if verb != b"get" {
        return Ok(Some(Request::Unsupported(verb_text(verb))));
    }
    let Some(key) = key else {
        return Err(Error::MissingKey {
            line: preview(line),
        });
    };
    let key = unquote(key).map_err(|offset| Error::BadEscape {
        offset: offset + 4,
        line: preview(line),
    })?;
    Ok(Some(Request::Get(key)))
}

/// Server side: appends `reply` as one line, after [`Reply::fit`].
///
/// `Found` values are encoded like Postfix's `hex_quote`; `500`/`400` texts only have `%`
/// encoded (as `%25`, since Postfix decodes every reply text).
pub fn encode_reply(reply: &Reply, out: &mut BytesMut) {
    match reply {
        Reply::Found(value) if found_fits(value) => {
            out.reserve(5 + value.len());
            out.put_slice(b"200 ");
            quote(value, out);
            out.put_u8(b'\n');
        }
        Reply::Found(_) => write_text(b"400", VALUE_TOO_LONG, out),
        Reply::NotFound(text) => write_text(b"500", text, out),
        Reply::Temp(text) => write_text(b"400", text, out),
    }
}

/// Client side: appends `request` as one line, as Postfix does (`get SPACE hex_quote(key)`).
///
/// `Get` never fails (and, like Postfix, has no length limit: a long key makes a line the
/// server refuses). `Unsupported(verb)` writes `verb NEWLINE` and fails with
/// [`Error::InvalidVerb`] (writing nothing) if that would not decode as the same request.
pub fn encode_request(request: &Request, out: &mut BytesMut) -> Result<(), Error> {
    match request {
        Request::Get(key) => {
            out.reserve(5 + key.len());
            out.put_slice(b"get ");
            quote(key, out);
            out.put_u8(b'\n');
        }
        Request::Unsupported(verb) => {
            if verb == "get" || verb.contains(' ') || verb_text(verb.as_bytes()) != *verb {
                return Err(Error::InvalidVerb { verb: verb.clone() });
            }
            out.reserve(verb.len() + 1);
            out.put_slice(verb.as_bytes());
            out.put_u8(b'\n');
        }
    }
    Ok(())
}

/// Client side: takes one reply line off the front of `buf`, checked as Postfix checks it
/// (at most [`MAX_LINE`] bytes with the newline, three digits, a whitespace byte, text that
/// %-decodes), but accepting only the codes `200`, `500` and `400`.
///
/// Texts are %-decoded and converted from UTF-8 lossily. A CR before the newline is kept,
/// as Postfix keeps it.
pub fn decode_reply(buf: &mut BytesMut) -> Result<Option<Reply>, Error> {
    let Some(line) = take_line(buf)? else {
        return Ok(None);
    };
    let line = &line[..line.len() - 1];
    let well_formed = line.len() >= 4
        && line[..3].iter().all(u8::is_ascii_digit)
        && matches!(line[3], b' ' | b'\t' | b'\x0b' | b'\x0c' | b'\r');
    if !well_formed {
        return Err(Error::MalformedReply {
            line: preview(line),
        });
    }
    let text = unquote(&line[4..]).map_err(|offset| Error::BadEscape {
        offset: offset + 4,
        line: preview(line),
    })?;
    let lossy = || String::from_utf8_lossy(&text).into_owned();
    Ok(Some(match &line[..3] {
        b"200" => Reply::Found(text),
        b"500" => Reply::NotFound(lossy()),
        b"400" => Reply::Temp(lossy()),
        code => {
            return Err(Error::UnknownCode {
                code: String::from_utf8_lossy(code).into_owned(),
            });
        }
    }))
}

#[cfg(feature = "tokio")]
pub use crate::codec::tcp::{ClientCodec, ServerCodec};

#[cfg(test)]
mod tests {
    use super::*;

    fn req(wire: &[u8]) -> Result<Option<Request>, Error> {
        decode_request(&mut BytesMut::from(wire))
    }

    fn reply_wire(reply: &Reply) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_reply(reply, &mut out);
        out.to_vec()
    }

    #[test]
    fn hooks_md_example() {
        // postmap -q "hello world%" tcp:… sent exactly this.
        assert_eq!(
            req(b"get hello%20world%25\n"),
            Ok(Some(Request::Get(b"hello world%".to_vec())))
        );
        let mut out = BytesMut::new();
        encode_request(&Request::Get(b"hello world%".to_vec()), &mut out).unwrap();
        assert_eq!(&out[..], b"get hello%20world%25\n");
        // … and printed `HELLO WORLD%` for this reply.
        assert_eq!(
            reply_wire(&Reply::Found(b"HELLO WORLD%".to_vec())),
            b"200 HELLO%20WORLD%25\n"
        );
        let mut buf = BytesMut::from(&b"200 HELLO%20WORLD%25\n"[..]);
        assert_eq!(
            decode_reply(&mut buf),
            Ok(Some(Reply::Found(b"HELLO WORLD%".to_vec())))
        );
    }

    #[test]
    fn transcript_of_a_kept_connection() {
        let mut buf = BytesMut::from(
            &b"get example.test\nget Alice@Example.TEST\r\nget caf%c3%A9\nget \nput k v\n"[..],
        );
        let mut got = Vec::new();
        while let Some(r) = decode_request(&mut buf).unwrap() {
            got.push(r);
        }
        assert_eq!(
            got,
            vec![
                Request::Get(b"example.test".to_vec()),
                Request::Get(b"Alice@Example.TEST".to_vec()),
                Request::Get("café".as_bytes().to_vec()),
                Request::Get(Vec::new()),
                Request::Unsupported("put".into()),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_line_consumes_nothing() {
        let wire = b"get hello%20world%25\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decode_request(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], &wire[..cut]);
        }
    }

    #[test]
    fn raw_bytes_in_keys_pass_through() {
        assert_eq!(
            req(b"get a b\xff\r\r\n"),
            Ok(Some(Request::Get(b"a b\xff\r".to_vec())))
        );
    }

    #[test]
    fn bad_escapes() {
        for (wire, offset) in [
            (&b"get 100%\n"[..], 7),
            (b"get %4\n", 4),
            (b"get %zz\n", 4),
            (b"get a%2g\n", 5),
        ] {
            match req(wire) {
                Err(Error::BadEscape { offset: o, .. }) => assert_eq!(o, offset, "{wire:?}"),
                other => panic!("{wire:?}: {other:?}"),
            }
        }
        assert_eq!(
            req(b"get 100%\n").unwrap_err().to_string(),
            "tcp_table line \"get 100%\": '%' at offset 7 is not followed by two hex digits"
        );
    }

    #[test]
    fn other_verbs_are_unsupported_not_errors() {
        assert_eq!(
            req(b"put k v\n"),
            Ok(Some(Request::Unsupported("put".into())))
        );
        assert_eq!(
            req(b"GET k\n"),
            Ok(Some(Request::Unsupported("GET".into())))
        );
        assert_eq!(req(b"\n"), Ok(Some(Request::Unsupported(String::new()))));
        assert_eq!(
            req(b"q\x1b[2J\xff x\n"),
            Ok(Some(Request::Unsupported("q?[2J\u{fffd}".into())))
        );
        let long = [b'v'; 100];
        assert_eq!(
            req(&[&long[..], b"\n"].concat()),
            Ok(Some(Request::Unsupported("v".repeat(MAX_VERB))))
        );
        assert!(matches!(req(b"get\n"), Err(Error::MissingKey { .. })));
        assert!(matches!(req(b"get\r\n"), Err(Error::MissingKey { .. })));
    }

    #[test]
    fn line_limit_includes_the_newline() {
        let mut at = vec![b'a'; MAX_LINE - 5];
        at.splice(0..0, *b"get ");
        at.push(b'\n');
        assert_eq!(at.len(), MAX_LINE);
        assert!(matches!(req(&at), Ok(Some(Request::Get(k))) if k.len() == MAX_LINE - 5));

        let mut over = at.clone();
        over.insert(4, b'a');
        let mut buf = BytesMut::from(&over[..]);
        assert_eq!(
            decode_request(&mut buf),
            Err(Error::LineTooLong { max: MAX_LINE })
        );
        assert_eq!(buf.len(), over.len(), "nothing consumed");
        // Refused as soon as MAX_LINE bytes without a newline are buffered.
        assert_eq!(
            req(&over[..MAX_LINE]),
            Err(Error::LineTooLong { max: MAX_LINE })
        );
        assert_eq!(req(&over[..MAX_LINE - 1]), Ok(None));
    }

    #[test]
    fn reply_encodings() {
        assert_eq!(
            reply_wire(&Reply::Found(b"REJECT spam address".to_vec())),
            b"200 REJECT%20spam%20address\n"
        );
        assert_eq!(
            reply_wire(&Reply::Found(b"\x00\x7f\x80\xff\t~!".to_vec())),
            b"200 %00%7F%80%FF%09~!\n"
        );
        assert_eq!(reply_wire(&Reply::Found(Vec::new())), b"200 \n");
        assert_eq!(
            reply_wire(&Reply::NotFound("not found".into())),
            b"500 not found\n"
        );
        assert_eq!(
            reply_wire(&Reply::Temp("100% busy\r\nnow".into())),
            b"400 100%25 busy  now\n"
        );
    }

    #[test]
    fn over_long_found_becomes_temp() {
        let fits = vec![b'x'; MAX_LINE - 5];
        let wire = reply_wire(&Reply::Found(fits.clone()));
        assert_eq!(wire.len(), MAX_LINE);
        assert_eq!(Reply::Found(fits.clone()).fit(), Reply::Found(fits));

        // Encoded length counts: 1366 spaces are 4098 bytes encoded.
        let spaces = vec![b' '; 1366];
        assert_eq!(
            Reply::Found(spaces.clone()).fit(),
            Reply::Temp(VALUE_TOO_LONG.into())
        );
        assert_eq!(
            reply_wire(&Reply::Found(spaces)),
            b"400 value too long for tcp_table\n"
        );
    }

    #[test]
    fn over_long_texts_are_cut_to_fit() {
        for text in ["%".repeat(5000), "é".repeat(5000), "x".repeat(5000)] {
            for reply in [Reply::NotFound(text.clone()), Reply::Temp(text.clone())] {
                let wire = reply_wire(&reply);
                assert!(
                    wire.len() <= MAX_LINE && wire.len() > MAX_LINE - 3,
                    "{}",
                    wire.len()
                );
                let mut buf = BytesMut::from(&wire[..]);
                assert_eq!(decode_reply(&mut buf), Ok(Some(reply.clone().fit())));
            }
        }
    }

    #[test]
    fn client_reads_replies() {
        let mut buf = BytesMut::from(
            &b"200 lmtp:inet:10.1.2.3:24\n500 not%20found\n400 try later\n200 x\r\n200\tY\n"[..],
        );
        let mut got = Vec::new();
        while let Some(r) = decode_reply(&mut buf).unwrap() {
            got.push(r);
        }
        assert_eq!(
            got,
            vec![
                Reply::Found(b"lmtp:inet:10.1.2.3:24".to_vec()),
                Reply::NotFound("not found".into()),
                Reply::Temp("try later".into()),
                Reply::Found(b"x\r".to_vec()),
                Reply::Found(b"Y".to_vec()),
            ]
        );
    }

    #[test]
    fn client_rejects_what_postfix_rejects() {
        let dec = |w: &[u8]| decode_reply(&mut BytesMut::from(w));
        assert!(matches!(dec(b"200\n"), Err(Error::MalformedReply { .. })));
        assert!(matches!(dec(b"OK x\n"), Err(Error::MalformedReply { .. })));
        assert!(matches!(
            dec(b"2000 x\n"),
            Err(Error::MalformedReply { .. })
        ));
        assert!(matches!(
            dec(b"500 100%\n"),
            Err(Error::BadEscape { offset: 7, .. })
        ));
        assert_eq!(
            dec(b"250 ok\n"),
            Err(Error::UnknownCode { code: "250".into() })
        );
        let long = [&b"200 "[..], &[b'x'; MAX_LINE - 4]].concat();
        assert_eq!(dec(&long), Err(Error::LineTooLong { max: MAX_LINE }));
    }

    #[test]
    fn unsupported_verbs_encode_only_if_they_decode_the_same() {
        let mut out = BytesMut::new();
        encode_request(&Request::Unsupported("put".into()), &mut out).unwrap();
        assert_eq!(&out[..], b"put\n");
        for bad in ["get", "a b", "a\tb", &"v".repeat(MAX_VERB + 1)] {
            assert!(
                matches!(
                    encode_request(&Request::Unsupported(bad.into()), &mut out),
                    Err(Error::InvalidVerb { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(&out[..], b"put\n");
    }
}
