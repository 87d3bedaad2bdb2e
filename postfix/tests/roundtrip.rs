//! decode(encode(x)) == x for every protocol, both directions, and every decoder
//! reassembles any split of a pipelined stream.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wasmail_postfix::{netstring, policy, socketmap, tcp};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Text as servers produce it: no control characters.
fn clean_text() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{0,60}"
}

/// Feeds `wire` to `decode` in chunks of the given sizes (cycled), collecting every item,
/// and checks that `Ok(None)` never consumed anything.
fn split_decode<T>(
    wire: &[u8],
    chunks: &[usize],
    mut decode: impl FnMut(&mut BytesMut) -> Option<T>,
) -> Vec<T> {
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().cycle();
    while pos < wire.len() {
        let n = (*sizes.next().unwrap()).clamp(1, wire.len() - pos);
        buf.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        loop {
            let before = buf.clone();
            match decode(&mut buf) {
                Some(item) => got.push(item),
                None => {
                    assert_eq!(buf, before, "Ok(None) consumed bytes");
                    break;
                }
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    got
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..40, 1..8)
}

fn socketmap_request() -> impl Strategy<Value = socketmap::Request> {
    ("[!-~]{1,24}", bytes(200)).prop_map(|(t, k)| socketmap::Request::new(t, Bytes::from(k)))
}

fn socketmap_reply(text: BoxedStrategy<String>) -> impl Strategy<Value = socketmap::Reply> {
    prop_oneof![
        bytes(300).prop_map(|b| socketmap::Reply::Ok(Bytes::from(b))),
        Just(socketmap::Reply::NotFound),
        text.clone().prop_map(socketmap::Reply::Temp),
        text.clone().prop_map(socketmap::Reply::Timeout),
        text.prop_map(socketmap::Reply::Perm),
    ]
}

fn tcp_request() -> impl Strategy<Value = tcp::Request> {
    prop_oneof![
        bytes(1300).prop_map(tcp::Request::Get),
        "[!-~&&[^g]][!-~]{0,20}".prop_map(tcp::Request::Unsupported),
    ]
}

fn tcp_reply(text: BoxedStrategy<String>) -> impl Strategy<Value = tcp::Reply> {
    prop_oneof![
        bytes(1300).prop_map(tcp::Reply::Found),
        text.clone().prop_map(tcp::Reply::NotFound),
        text.prop_map(tcp::Reply::Temp),
    ]
}

fn policy_request() -> impl Strategy<Value = policy::Request> {
    proptest::collection::vec(("[a-z_]{1,20}", "[^\\x00\\n]{0,40}[^\\x00\\n\\r]?"), 0..30)
        .prop_map(policy::Request::new)
        .prop_filter("values ending in CR cannot be sent", |r| {
            r.attrs.iter().all(|(_, v)| !v.ends_with('\r'))
        })
}

proptest! {
    #[test]
    fn netstring_roundtrip(payloads in proptest::collection::vec(bytes(100), 1..6), sizes in chunks()) {
        let mut wire = BytesMut::new();
        for p in &payloads {
            netstring::encode(p, &mut wire);
        }
        let got = split_decode(&wire, &sizes, |b| netstring::decode(b, 100).unwrap());
        prop_assert_eq!(got, payloads.into_iter().map(Bytes::from).collect::<Vec<_>>());
    }

    #[test]
    fn socketmap_requests_roundtrip(reqs in proptest::collection::vec(socketmap_request(), 1..6), sizes in chunks()) {
        let mut wire = BytesMut::new();
        for r in &reqs {
            socketmap::encode_request(r, &mut wire).unwrap();
        }
        let got = split_decode(&wire, &sizes, |b| {
            socketmap::decode_request(b, socketmap::DEFAULT_MAX_REQUEST).unwrap()
        });
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn socketmap_clean_replies_roundtrip(replies in proptest::collection::vec(socketmap_reply(clean_text().boxed()), 1..6), sizes in chunks()) {
        let mut wire = BytesMut::new();
        for r in &replies {
            socketmap::encode_reply(r, &mut wire);
        }
        let got = split_decode(&wire, &sizes, |b| socketmap::decode_reply(b, socketmap::MAX_REPLY).unwrap());
        prop_assert_eq!(got, replies);
    }

    #[test]
    fn socketmap_any_reply_decodes_to_its_fit(reply in socketmap_reply(any::<String>().boxed())) {
        let mut wire = BytesMut::new();
        socketmap::encode_reply(&reply, &mut wire);
        let got = socketmap::decode_reply(&mut wire, socketmap::MAX_REPLY).unwrap().unwrap();
        prop_assert_eq!(got, reply.fit());
    }

    #[test]
    fn tcp_requests_roundtrip(reqs in proptest::collection::vec(tcp_request(), 1..6), sizes in chunks()) {
        let mut wire = BytesMut::new();
        for r in &reqs {
            tcp::encode_request(r, &mut wire).unwrap();
        }
        let got = split_decode(&wire, &sizes, |b| tcp::decode_request(b).unwrap());
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn tcp_clean_replies_roundtrip(replies in proptest::collection::vec(tcp_reply(clean_text().boxed()), 1..6), sizes in chunks()) {
        let mut wire = BytesMut::new();
        for r in &replies {
            tcp::encode_reply(r, &mut wire);
        }
        let got = split_decode(&wire, &sizes, |b| tcp::decode_reply(b).unwrap());
        prop_assert_eq!(got, replies);
    }

    #[test]
    fn tcp_any_reply_decodes_to_its_fit(reply in tcp_reply(any::<String>().boxed())) {
        let mut wire = BytesMut::new();
        tcp::encode_reply(&reply, &mut wire);
        prop_assert!(wire.len() <= tcp::MAX_LINE);
        let got = tcp::decode_reply(&mut wire).unwrap().unwrap();
        prop_assert_eq!(got, reply.fit());
    }

    #[test]
    fn tcp_key_encoding_is_hex_quote(key in bytes(200)) {
        let mut wire = BytesMut::new();
        tcp::encode_request(&tcp::Request::Get(key.clone()), &mut wire).unwrap();
        let line = &wire[4..wire.len() - 1];
        // Only ASCII graphic characters other than '%' appear raw; escapes are upper case.
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'%' {
                let hex = &line[i + 1..i + 3];
                prop_assert!(hex.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)));
                i += 3;
            } else {
                prop_assert!(line[i].is_ascii_graphic());
                i += 1;
            }
        }
    }

    #[test]
    fn policy_requests_roundtrip(reqs in proptest::collection::vec(policy_request(), 1..4), sizes in chunks()) {
        let mut wire = BytesMut::new();
        for r in &reqs {
            policy::encode_request(r, &mut wire).unwrap();
        }
        let limits = policy::Limits::default();
        let got = split_decode(&wire, &sizes, |b| policy::decode_request(b, &limits).unwrap());
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn policy_any_attrs_encode_only_if_they_roundtrip(attrs in proptest::collection::vec((any::<String>(), any::<String>()), 0..6)) {
        let req = policy::Request { attrs };
        let mut wire = BytesMut::new();
        if policy::encode_request(&req, &mut wire).is_ok() {
            let got = policy::decode_request(&mut wire, &policy::Limits::UNBOUNDED).unwrap().unwrap();
            prop_assert_eq!(got, req);
        } else {
            prop_assert!(wire.is_empty());
        }
    }

    #[test]
    fn policy_replies_roundtrip(actions in proptest::collection::vec(any::<String>(), 1..5), sizes in chunks()) {
        let replies: Vec<policy::Reply> = actions.into_iter().map(policy::Reply::new).collect();
        let mut wire = BytesMut::new();
        for r in &replies {
            policy::encode_reply(r, &mut wire);
        }
        let limits = policy::Limits::default();
        let got = split_decode(&wire, &sizes, |b| policy::decode_reply(b, &limits).unwrap());
        let fitted: Vec<policy::Reply> = replies.into_iter().map(policy::Reply::fit).collect();
        prop_assert_eq!(got, fitted);
    }

    #[test]
    fn policy_clean_reply_is_unchanged(action in "[^\\x00\\r\\n]{0,80}") {
        let reply = policy::Reply::new(action);
        let mut wire = BytesMut::new();
        policy::encode_reply(&reply, &mut wire);
        let got = policy::decode_reply(&mut wire, &policy::Limits::default()).unwrap().unwrap();
        prop_assert_eq!(got, reply);
    }
}
