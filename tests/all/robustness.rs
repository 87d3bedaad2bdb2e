//! Property tests for the sans-IO decoders of the mail fronts: the LMTP server session,
//! the IMAP command framer and the worker-response scanner. Arbitrary bytes, split into
//! arbitrary chunks, must never panic or loop, must keep the protocol's shape in what is
//! written back, and must give the same result however the input is split.
//! (The Postfix and milter decoders have cargo-fuzz targets with replayed seeds; these
//! run in every `cargo test`.)

use bytes::BytesMut;
use proptest::prelude::*;
use wasmail::lmtp::protocol::{Limits, Reply, Session, Step};
use wasmail::proxy::commands::{Framer, Item, MAX_HEAD, Response, ResponseScanner};

/// Where the input is cut: `cuts` folded into `0..=len`, sorted, ending at `len`.
fn chunk_ends(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    ends.push(len);
    ends.sort_unstable();
    ends
}

/// Input made of protocol-looking pieces and noise, so the properties reach deep states.
fn lmtp_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"LHLO x\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME\r\n".to_vec()),
        Just(b"RCPT TO:<bob@example.com>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"Subject: x\r\n\r\n..dot\r\n.\r\n".to_vec()),
        Just(b"BDAT 5 LAST\r\nhello".to_vec()),
        Just(b"BDAT 3\r\nabc".to_vec()),
        Just(b"RSET\r\nNOOP\r\nVRFY x\r\n".to_vec()),
        Just(b"QUIT\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
        Just(vec![b'A'; 3000]),
    ];
    proptest::collection::vec(piece, 0..20).prop_map(|v| v.concat())
}

/// Runs an LMTP session over `input` cut at `cuts`; the driver accepts every other
/// recipient and delivers with 250s. Returns everything written back.
fn run_lmtp(input: &[u8], cuts: &[usize]) -> Vec<u8> {
    let limits = Limits {
        max_line: 512,
        max_message_size: 4096,
        max_recipients: 5,
        max_errors: 10,
    };
    let mut s = Session::new("lmtp.test", limits);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rcpt = 0u32;
    let mut fed = 0;
    let bounds = chunk_ends(input.len(), cuts);
    for end in bounds {
        if end > fed {
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
        }
        // A session must come back within a bounded number of steps per chunk.
        for _ in 0..10_000 {
            match s.advance(&mut buf) {
                None => break,
                Some(Step::Close) => {
                    out.extend_from_slice(&s.take_output());
                    return out;
                }
                Some(Step::Recipient(addr)) => {
                    rcpt += 1;
                    let refused = rcpt
                        .is_multiple_of(2)
                        .then(|| Reply::new(550, "5.1.1", "no"));
                    s.recipient(&addr, refused);
                }
                Some(Step::Deliver) => {
                    let n = s.transaction().map_or(0, |t| t.recipients.len());
                    s.delivered((0..n).map(|_| Reply::new(250, "2.0.0", "ok")).collect());
                }
            }
        }
        out.extend_from_slice(&s.take_output());
    }
    out
}

fn assert_replies_well_formed(out: &[u8]) {
    let text = String::from_utf8(out.to_vec()).expect("replies are UTF-8");
    assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
    for line in text.split_terminator("\r\n") {
        let code = line.get(..3).unwrap_or_default();
        assert!(
            code.bytes().all(|b| b.is_ascii_digit()),
            "reply line without a code: {line:?}"
        );
        assert!(
            matches!(line.as_bytes().get(3), Some(b' ' | b'-') | None),
            "{line:?}"
        );
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
    }
}

/// Feeds the framer with every command allowed; returns the bytes it forwarded (heads
/// included) and the bytes still unconsumed at the end.
fn run_framer(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize), ()> {
    let mut f = Framer::new();
    let mut buf = BytesMut::new();
    let mut forwarded = Vec::new();
    let mut fed = 0;
    let bounds = chunk_ends(input.len(), cuts);
    for end in bounds {
        if end > fed {
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
        }
        for _ in 0..100_000 {
            match f.next(&mut buf) {
                Err(_) => return Err(()),
                Ok(None) => break,
                Ok(Some(Item::Command(head))) => {
                    assert!(head.raw.ends_with(b"\n"), "{head:?}");
                    assert!(head.raw.len() <= MAX_HEAD);
                    assert_eq!(head.name, head.name.to_ascii_uppercase());
                    forwarded.extend_from_slice(&head.raw);
                    f.decided(true);
                }
                Ok(Some(Item::Forward { bytes, .. })) => forwarded.extend_from_slice(&bytes),
                Ok(Some(Item::Drop(n))) => panic!("dropped {n} bytes with every command allowed"),
            }
        }
    }
    Ok((forwarded, buf.len()))
}

fn imap_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"a1 SELECT INBOX\r\n".to_vec()),
        Just(b"a2 UID FETCH 1:* (FLAGS BODY[])\r\n".to_vec()),
        Just(b"a3 APPEND INBOX {5}\r\nhello\r\n".to_vec()),
        Just(b"a4 APPEND INBOX {3+}\r\nabc x\r\n".to_vec()),
        Just(b"a5 IDLE\r\nDONE\r\n".to_vec()),
        Just(b"a6 LOGIN {3}\r\nbob {2}\r\npw\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..30),
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|v| v.concat())
}

fn scan_all(input: &[u8], cuts: &[usize]) -> Vec<(usize, Response)> {
    let mut sc = ResponseScanner::new();
    let mut got = Vec::new();
    let mut start = 0;
    let bounds = chunk_ends(input.len(), cuts);
    for end in bounds {
        if end > start {
            sc.scan(&input[start..end], |off, r| got.push((start + off, r)));
            start = end;
        }
    }
    got
}

fn response_input() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"* 1 EXISTS\r\n".to_vec()),
        Just(b"* 1 FETCH (BODY[] {7}\r\nab\r\ncd\r)\r\n".to_vec()),
        Just(b"+ go ahead\r\n".to_vec()),
        Just(b"a1 OK done\r\n".to_vec()),
        Just(b"a2 NO [TRYCREATE] no\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..30),
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn lmtp_session_answers_every_input_in_shape_however_it_is_split(
        input in lmtp_input(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let split = run_lmtp(&input, &cuts);
        assert_replies_well_formed(&split);
        // The replies do not depend on how the bytes arrived.
        prop_assert_eq!(split, run_lmtp(&input, &[]));
    }

    #[test]
    fn imap_framer_forwards_exactly_the_input_when_everything_is_allowed(
        input in imap_input(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        match run_framer(&input, &cuts) {
            Ok((forwarded, left)) => {
                // Nothing invented, nothing lost: what went out is the input minus the
                // unfinished tail still buffered.
                prop_assert!(left < MAX_HEAD);
                prop_assert_eq!(&forwarded[..], &input[..input.len() - left]);
                prop_assert_eq!(Ok((forwarded, left)), run_framer(&input, &[]));
            }
            Err(()) => prop_assert_eq!(Err(()), run_framer(&input, &[])),
        }
    }

    #[test]
    fn response_scanner_finds_the_same_responses_however_the_stream_is_split(
        input in response_input(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let split = scan_all(&input, &cuts);
        prop_assert!(split.windows(2).all(|w| w[0].0 <= w[1].0));
        prop_assert!(split.iter().all(|(off, _)| *off <= input.len()));
        prop_assert_eq!(split, scan_all(&input, &[]));
    }
}
