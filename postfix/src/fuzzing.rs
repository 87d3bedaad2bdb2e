//! Entry points shared by the `cargo fuzz` targets in `postfix/fuzz/` and the test that
//! replays their committed seeds. Each takes arbitrary bytes and must not panic.
//!
//! Each reads the input twice: as a server reads a client's stream (requests, small
//! limits), and as a client reads a server's stream (replies). Whatever decodes must
//! re-encode (requests through the client encoder, replies through the server encoder) to
//! something that decodes the same: a request to itself, a reply to its [`fit`] form.
//! Every decoded request also gets a reply derived from its bytes, which must survive the
//! same round trip.
//!
//! [`fit`]: crate::socketmap::Reply::fit

use bytes::{Bytes, BytesMut};

use crate::{policy, socketmap, tcp};

/// socketmap request payload cap for fuzzing.
const SOCKETMAP_MAX_REQUEST: usize = 1024;

/// Which reply a request gets: picked and filled from the key.
fn pick(key: &[u8]) -> u8 {
    key.first().copied().unwrap_or(0) % 8
}

/// `key` repeated to more than `len` bytes (empty stays empty).
fn blow_up(key: &[u8], len: usize) -> Vec<u8> {
    if key.is_empty() {
        return Vec::new();
    }
    key.repeat(len / key.len() + 1)
}

/// A socketmap stream.
pub fn socketmap(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(req)) = socketmap::decode_request(&mut buf, SOCKETMAP_MAX_REQUEST) {
        assert!(req.table.len() + 1 + req.key.len() <= SOCKETMAP_MAX_REQUEST);
        let mut wire = BytesMut::new();
        socketmap::encode_request(&req, &mut wire).expect("a decoded request re-encodes");
        let again = socketmap::decode_request(&mut wire, SOCKETMAP_MAX_REQUEST)
            .expect("re-encoded request decodes")
            .expect("re-encoded request is complete");
        assert_eq!(again, req);
        assert!(wire.is_empty());

        let text = || String::from_utf8_lossy(&req.key).into_owned();
        let reply = match pick(&req.key) {
            0 => socketmap::Reply::Ok(req.key.clone()),
            1 => socketmap::Reply::NotFound,
            2 => socketmap::Reply::Temp(text()),
            3 => socketmap::Reply::Timeout(text()),
            4 => socketmap::Reply::Perm(text()),
            5 => socketmap::Reply::Ok(Bytes::from(blow_up(&req.key, socketmap::MAX_REPLY))),
            6 => socketmap::Reply::Temp(
                String::from_utf8_lossy(&blow_up(&req.key, socketmap::MAX_REPLY)).into_owned(),
            ),
            _ => socketmap::Reply::Ok(Bytes::from(blow_up(&req.key, socketmap::MAX_REPLY - 4))),
        };
        socketmap_reply(reply);
    }

    let mut buf = BytesMut::from(data);
    while let Ok(Some(reply)) = socketmap::decode_reply(&mut buf, socketmap::MAX_REPLY) {
        socketmap_reply(reply);
    }
}

fn socketmap_reply(reply: socketmap::Reply) {
    let mut wire = BytesMut::new();
    socketmap::encode_reply(&reply, &mut wire);
    let fitted = reply.fit();
    assert_eq!(fitted.clone().fit(), fitted, "fit is idempotent");
    let again = socketmap::decode_reply(&mut wire, socketmap::MAX_REPLY)
        .expect("own reply decodes within MAX_REPLY")
        .expect("own reply is complete");
    assert_eq!(again, fitted);
    assert!(wire.is_empty());
}

/// A tcp_table stream.
pub fn tcp(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(req)) = tcp::decode_request(&mut buf) {
        let mut wire = BytesMut::new();
        tcp::encode_request(&req, &mut wire).expect("a decoded request re-encodes");
        if wire.len() <= tcp::MAX_LINE {
            let again = tcp::decode_request(&mut wire)
                .expect("re-encoded request decodes")
                .expect("re-encoded request is complete");
            assert_eq!(again, req);
            assert!(wire.is_empty());
        } else {
            // Raw bytes re-encoded as %XX can outgrow the line limit.
            assert_eq!(
                tcp::decode_request(&mut wire),
                Err(tcp::Error::LineTooLong { max: tcp::MAX_LINE })
            );
        }

        if let tcp::Request::Get(key) = req {
            let text = || String::from_utf8_lossy(&key).into_owned();
            let reply = match pick(&key) {
                0 | 1 => tcp::Reply::Found(key.clone()),
                2 => tcp::Reply::NotFound(text()),
                3 => tcp::Reply::Temp(text()),
                4 => tcp::Reply::Found(blow_up(&key, tcp::MAX_LINE)),
                5 => tcp::Reply::Temp(
                    String::from_utf8_lossy(&blow_up(&key, tcp::MAX_LINE)).into_owned(),
                ),
                6 => tcp::Reply::NotFound(
                    String::from_utf8_lossy(&blow_up(&key, tcp::MAX_LINE / 3)).into_owned(),
                ),
                _ => tcp::Reply::Found(blow_up(&key, tcp::MAX_LINE / 3)),
            };
            tcp_reply(reply);
        }
    }

    let mut buf = BytesMut::from(data);
    while let Ok(Some(reply)) = tcp::decode_reply(&mut buf) {
        tcp_reply(reply);
    }
}

fn tcp_reply(reply: tcp::Reply) {
    let mut wire = BytesMut::new();
    tcp::encode_reply(&reply, &mut wire);
    assert!(wire.len() <= tcp::MAX_LINE, "own reply fits MAX_LINE");
    let fitted = reply.fit();
    assert_eq!(fitted.clone().fit(), fitted, "fit is idempotent");
    let again = tcp::decode_reply(&mut wire)
        .expect("own reply decodes")
        .expect("own reply is complete");
    assert_eq!(again, fitted);
    assert!(wire.is_empty());
}

/// Small bounds, so the limits are reached.
const POLICY_LIMITS: policy::Limits = policy::Limits {
    max_line: 128,
    max_request: 1024,
    max_attrs: 16,
};

/// A policy delegation stream.
pub fn policy(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(req)) = policy::decode_request(&mut buf, &POLICY_LIMITS) {
        assert!(req.attrs.len() <= POLICY_LIMITS.max_attrs);
        let mut wire = BytesMut::new();
        policy::encode_request(&req, &mut wire).expect("a decoded request re-encodes");
        // Lossy UTF-8 may lengthen it: read it back without bounds.
        let again = policy::decode_request(&mut wire, &policy::Limits::UNBOUNDED)
            .expect("re-encoded request decodes")
            .expect("re-encoded request is complete");
        assert_eq!(again, req);
        assert!(wire.is_empty());

        let action = req
            .attrs
            .last()
            .map(|(n, v)| format!("{v}\r\n{n}\0"))
            .unwrap_or_default();
        policy_reply(policy::Reply { action });
    }

    let mut buf = BytesMut::from(data);
    while let Ok(Some(reply)) = policy::decode_reply(&mut buf, &POLICY_LIMITS) {
        policy_reply(reply);
    }
}

fn policy_reply(reply: policy::Reply) {
    let mut wire = BytesMut::new();
    policy::encode_reply(&reply, &mut wire);
    let fitted = reply.fit();
    assert_eq!(fitted.clone().fit(), fitted, "fit is idempotent");
    let again = policy::decode_reply(&mut wire, &policy::Limits::UNBOUNDED)
        .expect("own reply decodes")
        .expect("own reply is complete");
    assert_eq!(again, fitted);
    assert!(wire.is_empty());
}
