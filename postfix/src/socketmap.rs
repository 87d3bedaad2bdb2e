//! socketmap_table(5): Sendmail-style socketmap lookups (Postfix 2.10 and later).
//!
//! Facts from Postfix 3.7 (`man5/socketmap_table.5`, `src/util/dict_sockmap.c`):
//! - Each request and each reply is one [`netstring`]; the connection is kept and
//!   reused for further lookups.
//! - Request: `<name> SPACE <key>`. `name` is the last `:`-part of the map spec
//!   (`socketmap:inet:host:port:name`), so one server hosts many tables. The key is raw,
//!   not %-encoded, and arrives in the case Postfix had (tables opened "fixed case" are
//!   not folded).
//! - Reply, at most 100000 bytes without the framing (`DICT_SOCKMAP_DEF_MAX_REPLY`;
//!   [`MAX_REPLY`]): `OK SPACE data`, `NOTFOUND SPACE`, `TEMP SPACE reason`,
//!   `TIMEOUT SPACE reason`, `PERM SPACE reason`. Postfix compares the word before the
//!   first space: TEMP and TIMEOUT are `DICT_ERR_RETRY`, PERM is `DICT_ERR_CONFIG`, an
//!   unknown word is logged as "unknown" and retried. A reply over the limit is a netstring
//!   size error, which fails the lookup.
//!
//! Server side: [`decode_request`] → [`Request`]; [`encode_reply`] writes a [`Reply`] after
//! [`Reply::fit`] (an over-long value becomes `PERM`, reasons lose control characters and
//! are cut to fit). Client side: [`encode_request`], [`decode_reply`].
//!
//! After a framing error ([`Error::Netstring`]) nothing was consumed and the stream is out
//! of step; after a malformed payload the netstring was consumed and the next request can
//! still be read.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

use crate::netstring;
use crate::text::{controls_to_spaces, preview, truncate};

/// Largest reply payload Postfix accepts, framing excluded (`DICT_SOCKMAP_DEF_MAX_REPLY`).
pub const MAX_REPLY: usize = 100_000;

/// Default cap on a request payload (`name SPACE key`), framing excluded. Postfix's keys are
/// addresses, domains and IP addresses; this mirrors the reply limit.
pub const DEFAULT_MAX_REQUEST: usize = 100_000;

/// The `PERM` reason sent instead of a value longer than [`MAX_REPLY`].
pub const VALUE_TOO_LONG: &str = "value longer than 100000 bytes";

/// One lookup: which table, which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The socketmap name: non-empty printable ASCII without spaces.
    pub table: String,
    /// The key as sent: raw bytes, possibly empty (Postfix never sends an empty key).
    pub key: Bytes,
}

impl Request {
    /// A request for `key` in `table`.
    pub fn new(table: impl Into<String>, key: impl Into<Bytes>) -> Self {
        Self {
            table: table.into(),
            key: key.into(),
        }
    }
}

/// A lookup result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK data`: found.
    Ok(Bytes),
    /// `NOTFOUND `: not found (sent with the trailing space, as Postfix documents it).
    NotFound,
    /// `TEMP reason`: temporary failure (`DICT_ERR_RETRY`).
    Temp(String),
    /// `TIMEOUT reason`: temporary failure (`DICT_ERR_RETRY`).
    Timeout(String),
    /// `PERM reason`: permanent failure (`DICT_ERR_CONFIG`).
    Perm(String),
}

impl Reply {
    /// The status word on the wire: `OK`, `NOTFOUND`, `TEMP`, `TIMEOUT` or `PERM`.
    pub fn status(&self) -> &'static str {
        match self {
            Reply::Ok(_) => "OK",
            Reply::NotFound => "NOTFOUND",
            Reply::Temp(_) => "TEMP",
            Reply::Timeout(_) => "TIMEOUT",
            Reply::Perm(_) => "PERM",
        }
    }

    /// The reply as [`encode_reply`] sends it, which is also what [`decode_reply`] returns
    /// for it: an `OK` value longer than [`MAX_REPLY`] minus `"OK "` becomes
    /// `Perm(VALUE_TOO_LONG)`; reasons get control characters replaced by spaces and are
    /// cut (at a character boundary) so the payload fits [`MAX_REPLY`].
    #[must_use]
    pub fn fit(self) -> Reply {
        match self {
            Reply::Ok(data) if ok_fits(&data) => Reply::Ok(data),
            Reply::Ok(_) => Reply::Perm(VALUE_TOO_LONG.to_owned()),
            Reply::NotFound => Reply::NotFound,
            Reply::Temp(r) => Reply::Temp(fit_owned("TEMP", r)),
            Reply::Timeout(r) => Reply::Timeout(fit_owned("TIMEOUT", r)),
            Reply::Perm(r) => Reply::Perm(fit_owned("PERM", r)),
        }
    }
}

fn ok_fits(data: &[u8]) -> bool {
    "OK ".len() + data.len() <= MAX_REPLY
}

fn fit_reason<'a>(status: &str, reason: &'a str) -> Cow<'a, str> {
    truncate(controls_to_spaces(reason), MAX_REPLY - status.len() - 1)
}

fn fit_owned(status: &str, reason: String) -> String {
    match fit_reason(status, &reason) {
        Cow::Borrowed(b) if b.len() == reason.len() => reason,
        other => other.into_owned(),
    }
}

/// Why a socketmap message cannot be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The framing is broken (the stream is out of step; nothing was consumed).
    #[error("socketmap framing: {0}")]
    Netstring(#[from] netstring::Error),
    /// A request without the space between table name and key.
    #[error("socketmap request {payload} has no space between the table name and the key")]
    NoSpace {
        /// The payload, escaped and cut.
        payload: String,
    },
    /// A request (or a request to encode) with an empty table name.
    #[error("socketmap request has an empty table name")]
    EmptyTable,
    /// A table name byte outside printable ASCII, or a space in a table name to encode.
    #[error(
        "socketmap table name {name} has byte {byte:#04x} at offset {offset}; only printable ASCII without spaces is allowed"
    )]
    BadTableName {
        /// The name, escaped and cut.
        name: String,
        /// The offending byte.
        byte: u8,
        /// Its offset in the name.
        offset: usize,
    },
    /// A reply whose first word is not one of the five status words.
    #[error(
        "socketmap reply starts with unknown status {status} (expected OK, NOTFOUND, TEMP, TIMEOUT or PERM)"
    )]
    UnknownStatus {
        /// The word before the first space, escaped and cut.
        status: String,
    },
}

fn check_table(name: &[u8]) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::EmptyTable);
    }
    match name.iter().position(|b| !b.is_ascii_graphic()) {
        None => Ok(()),
        Some(offset) => Err(Error::BadTableName {
            name: preview(name),
            byte: name[offset],
            offset,
        }),
    }
}

/// Server side: takes one request off the front of `buf`.
///
/// `max_request` caps the payload (`name SPACE key`), checked before the payload is
/// buffered; [`DEFAULT_MAX_REQUEST`] is a sensible value. `Ok(None)`: more bytes needed,
/// nothing consumed.
pub fn decode_request(buf: &mut BytesMut, max_request: usize) -> Result<Option<Request>, Error> {
    let Some(payload) = netstring::decode(buf, max_request)? else {
        return Ok(None);
    };
    let Some(space) = payload.iter().position(|&b| b == b' ') else {
        return Err(Error::NoSpace {
            payload: preview(&payload),
        });
    };
    check_table(&payload[..space])?;
    let table = String::from_utf8(payload[..space].to_vec()).expect("checked ASCII");
    Ok(Some(Request {
        table,
        key: payload.slice(space + 1..),
    }))
}

/// Server side: appends `reply` as one netstring, after [`Reply::fit`].
pub fn encode_reply(reply: &Reply, out: &mut BytesMut) {
    let status = reply.status();
    match reply {
        Reply::Ok(data) if ok_fits(data) => netstring::encode_parts(&[b"OK ", data], out),
        Reply::Ok(_) => encode_reason("PERM", VALUE_TOO_LONG, out),
        Reply::NotFound => netstring::encode(b"NOTFOUND ", out),
        Reply::Temp(reason) | Reply::Timeout(reason) | Reply::Perm(reason) => {
            encode_reason(status, reason, out);
        }
    }
}

fn encode_reason(status: &str, reason: &str, out: &mut BytesMut) {
    let reason = fit_reason(status, reason);
    netstring::encode_parts(&[status.as_bytes(), b" ", reason.as_bytes()], out);
}

/// Client side: appends `request` as one netstring.
///
/// Fails (writing nothing) if the table name is empty or not printable ASCII without
/// spaces; the key may hold any bytes.
pub fn encode_request(request: &Request, out: &mut BytesMut) -> Result<(), Error> {
    check_table(request.table.as_bytes())?;
    netstring::encode_parts(&[request.table.as_bytes(), b" ", &request.key], out);
    Ok(())
}

/// Client side: takes one reply off the front of `buf`, as Postfix reads it.
///
/// `max_reply` caps the payload; Postfix uses [`MAX_REPLY`]. The status word is the text
/// before the first space (a bare `OK` or `NOTFOUND` without the space is accepted, as
/// Postfix does); text after `NOTFOUND ` is ignored; reasons are converted from UTF-8
/// lossily.
pub fn decode_reply(buf: &mut BytesMut, max_reply: usize) -> Result<Option<Reply>, Error> {
    let Some(payload) = netstring::decode(buf, max_reply)? else {
        return Ok(None);
    };
    let (word, rest) = match payload.iter().position(|&b| b == b' ') {
        Some(space) => (&payload[..space], payload.slice(space + 1..)),
        None => (&payload[..], Bytes::new()),
    };
    let reason = || String::from_utf8_lossy(&rest).into_owned();
    let reply = match word {
        b"OK" => Reply::Ok(rest.clone()),
        b"NOTFOUND" => Reply::NotFound,
        b"TEMP" => Reply::Temp(reason()),
        b"TIMEOUT" => Reply::Timeout(reason()),
        b"PERM" => Reply::Perm(reason()),
        _ => {
            return Err(Error::UnknownStatus {
                status: preview(word),
            });
        }
    };
    Ok(Some(reply))
}

#[cfg(feature = "tokio")]
pub use crate::codec::socketmap::{ClientCodec, ServerCodec};

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(wire: &[u8], max: usize) -> (Vec<Request>, Result<(), Error>, BytesMut) {
        let mut buf = BytesMut::from(wire);
        let mut got = Vec::new();
        loop {
            match decode_request(&mut buf, max) {
                Ok(Some(r)) => got.push(r),
                Ok(None) => return (got, Ok(()), buf),
                Err(e) => return (got, Err(e), buf),
            }
        }
    }

    fn encoded(reply: &Reply) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_reply(reply, &mut out);
        out.to_vec()
    }

    #[test]
    fn postfix_request_transcript() {
        // What `postmap -q - socketmap:inet:127.0.0.1:PORT:…` sends for three lookups.
        let wire = b"36:virtual_mailbox_maps bob@example.com,\
                     11:transport *,\
                     32:aliases Alice@Example.TEST\xc3\xa9xtra,";
        let (got, end, rest) = requests(wire, DEFAULT_MAX_REQUEST);
        assert_eq!(end, Ok(()));
        assert!(rest.is_empty());
        assert_eq!(
            got,
            vec![
                Request::new("virtual_mailbox_maps", &b"bob@example.com"[..]),
                Request::new("transport", &b"*"[..]),
                Request::new("aliases", &b"Alice@Example.TEST\xc3\xa9xtra"[..]),
            ]
        );
    }

    #[test]
    fn partial_request_consumes_nothing() {
        let wire = b"36:virtual_mailbox_maps bob@example.com,";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decode_request(&mut buf, 100), Ok(None));
            assert_eq!(&buf[..], &wire[..cut]);
        }
    }

    #[test]
    fn key_is_split_at_the_first_space_and_may_be_empty() {
        let (got, ..) = requests(b"9:t a b  c ,2:t ,", 100);
        assert_eq!(got[0], Request::new("t", &b"a b  c "[..]));
        assert_eq!(got[1], Request::new("t", Bytes::new()));
    }

    #[test]
    fn malformed_requests() {
        let (_, e, rest) = requests(b"5:hello,2:t k,", 100);
        assert_eq!(
            e,
            Err(Error::NoSpace {
                payload: "\"hello\"".into()
            })
        );
        // The bad netstring was consumed; the stream is still in step.
        assert_eq!(&rest[..], b"2:t k,");
        assert_eq!(requests(b"2: k,", 100).1, Err(Error::EmptyTable));
        assert_eq!(
            requests(b"5:t\tx k,", 100).1,
            Err(Error::BadTableName {
                name: "\"t\\tx\"".into(),
                byte: b'\t',
                offset: 1
            })
        );
        assert_eq!(
            requests(b"05:t key,", 100).1,
            Err(Error::Netstring(netstring::Error::LeadingZero))
        );
        assert_eq!(
            requests(b"5:t key;", 100).1,
            Err(Error::Netstring(netstring::Error::MissingComma {
                len: 5,
                found: b';'
            }))
        );
    }

    #[test]
    fn oversized_request_is_refused_from_its_length() {
        let (_, e, rest) = requests(b"100001:", DEFAULT_MAX_REQUEST);
        assert!(matches!(
            e,
            Err(Error::Netstring(netstring::Error::TooLong {
                declared: 100_001,
                max: 100_000
            }))
        ));
        assert_eq!(&rest[..], b"100001:");
    }

    #[test]
    fn reply_encodings() {
        assert_eq!(
            encoded(&Reply::Ok(Bytes::from_static(b"lmtp:inet:10.1.2.3:24"))),
            b"24:OK lmtp:inet:10.1.2.3:24,"
        );
        assert_eq!(encoded(&Reply::NotFound), b"9:NOTFOUND ,");
        assert_eq!(
            encoded(&Reply::Temp("backend busy".into())),
            b"17:TEMP backend busy,"
        );
        assert_eq!(encoded(&Reply::Timeout("slow".into())), b"12:TIMEOUT slow,");
        assert_eq!(
            encoded(&Reply::Perm("misconfigured".into())),
            b"18:PERM misconfigured,"
        );
        assert_eq!(encoded(&Reply::Ok(Bytes::new())), b"3:OK ,");
    }

    #[test]
    fn reasons_lose_control_characters() {
        assert_eq!(
            encoded(&Reply::Temp("line1\r\nline2\0\u{1b}[31m".into())),
            b"23:TEMP line1  line2  [31m,"
        );
    }

    #[test]
    fn over_long_value_becomes_perm() {
        let at_limit = Bytes::from(vec![b'v'; MAX_REPLY - 3]);
        let wire = encoded(&Reply::Ok(at_limit.clone()));
        assert!(wire.starts_with(b"100000:OK vvv"));
        assert_eq!(Reply::Ok(at_limit.clone()).fit(), Reply::Ok(at_limit));

        let over = Reply::Ok(Bytes::from(vec![b'v'; MAX_REPLY - 2]));
        assert_eq!(over.clone().fit(), Reply::Perm(VALUE_TOO_LONG.into()));
        assert_eq!(encoded(&over), b"35:PERM value longer than 100000 bytes,");
        assert!(VALUE_TOO_LONG.contains(&MAX_REPLY.to_string()));
    }

    #[test]
    fn over_long_reason_is_cut_to_fit() {
        let long = "é".repeat(MAX_REPLY);
        for reply in [
            Reply::Temp(long.clone()),
            Reply::Timeout(long.clone()),
            Reply::Perm(long.clone()),
        ] {
            let mut wire = BytesMut::from(&encoded(&reply)[..]);
            let back = decode_reply(&mut wire, MAX_REPLY).unwrap().unwrap();
            assert_eq!(back, reply.clone().fit());
            let (Reply::Temp(r) | Reply::Timeout(r) | Reply::Perm(r)) = &back else {
                panic!("{back:?}");
            };
            let payload = back.status().len() + 1 + r.len();
            assert!(payload <= MAX_REPLY && payload > MAX_REPLY - 2, "{payload}");
        }
    }

    #[test]
    fn fit_is_idempotent_and_keeps_short_replies() {
        let r = Reply::Temp("x\ty".into()).fit();
        assert_eq!(r, Reply::Temp("x y".into()));
        assert_eq!(r.clone().fit(), r);
        assert_eq!(Reply::NotFound.fit(), Reply::NotFound);
    }

    #[test]
    fn client_reads_what_postfix_accepts() {
        let mut buf = BytesMut::from(
            &b"5:OK x ,8:NOTFOUND,17:NOTFOUND whatever,2:OK,5:TEMP ,12:PERM caf\xc3\xa9 \xff,"[..],
        );
        let mut got = Vec::new();
        while let Some(r) = decode_reply(&mut buf, MAX_REPLY).unwrap() {
            got.push(r);
        }
        assert_eq!(
            got,
            vec![
                Reply::Ok(Bytes::from_static(b"x ")),
                Reply::NotFound,
                Reply::NotFound,
                Reply::Ok(Bytes::new()),
                Reply::Temp(String::new()),
                Reply::Perm("café \u{fffd}".into()),
            ]
        );
    }

    #[test]
    fn client_rejects_unknown_status_and_oversize() {
        let mut buf = BytesMut::from(&b"9:FOUND yes,"[..]);
        assert_eq!(
            decode_reply(&mut buf, MAX_REPLY),
            Err(Error::UnknownStatus {
                status: "\"FOUND\"".into()
            })
        );
        let mut buf = BytesMut::from(&b"100001:OK "[..]);
        assert!(matches!(
            decode_reply(&mut buf, MAX_REPLY),
            Err(Error::Netstring(netstring::Error::TooLong { .. }))
        ));
        assert_eq!(
            Error::UnknownStatus {
                status: "\"FOUND\"".into()
            }
            .to_string(),
            "socketmap reply starts with unknown status \"FOUND\" (expected OK, NOTFOUND, TEMP, TIMEOUT or PERM)"
        );
    }

    #[test]
    fn client_request_encoding() {
        let mut out = BytesMut::new();
        encode_request(
            &Request::new("virtual_mailbox_maps", &b"bob@example.com"[..]),
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], b"36:virtual_mailbox_maps bob@example.com,");
        out.clear();
        assert_eq!(
            encode_request(&Request::new("", &b"k"[..]), &mut out),
            Err(Error::EmptyTable)
        );
        assert!(matches!(
            encode_request(&Request::new("a b", &b"k"[..]), &mut out),
            Err(Error::BadTableName { byte: b' ', .. })
        ));
        assert!(out.is_empty());
    }
}
