//! decode(encode(x)) == x for every command and response type, and the frame decoder
//! reassembles any split of a stream.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wasmail_milter::{
    Action, Actions, Command, Connect, Envelope, Family, MacroStage, Modification, Negotiated,
    OptNeg, Protocol, ReplyCode, Response, decode_frame,
};

/// A NUL-free string of any bytes.
fn cstr() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(1u8..=255, 0..40).prop_map(Bytes::from)
}

fn nonempty_cstr() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(1u8..=255, 1..40).prop_map(Bytes::from)
}

fn raw() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn optneg() -> impl Strategy<Value = OptNeg> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(v, a, p)| OptNeg {
        version: v,
        actions: Actions::from_bits_retain(a),
        protocol: Protocol::from_bits_retain(p),
    })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (cstr(), proptest::collection::vec(cstr(), 0..4))
        .prop_map(|(address, args)| Envelope { address, args })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        optneg().prop_map(Command::OptNeg),
        (
            any::<u8>(),
            proptest::collection::vec((cstr(), cstr()), 0..5)
        )
            .prop_map(|(code, pairs)| Command::Macro { code, pairs }),
        (
            cstr(),
            prop_oneof![
                Just(Family::Unknown),
                Just(Family::Unix),
                Just(Family::Inet),
                Just(Family::Inet6)
            ],
            any::<u16>(),
            cstr()
        )
            .prop_map(|(hostname, family, port, address)| {
                let (port, address) = if family == Family::Unknown {
                    (0, Bytes::new())
                } else {
                    (port, address)
                };
                Command::Connect(Connect {
                    hostname,
                    family,
                    port,
                    address,
                })
            }),
        cstr().prop_map(Command::Helo),
        envelope().prop_map(Command::Mail),
        envelope().prop_map(Command::Rcpt),
        Just(Command::Data),
        (cstr(), cstr()).prop_map(|(name, value)| Command::Header { name, value }),
        Just(Command::Eoh),
        raw().prop_map(Command::Body),
        raw().prop_map(Command::BodyEob),
        Just(Command::Abort),
        Just(Command::Quit),
        Just(Command::QuitNc),
        cstr().prop_map(Command::Unknown),
    ]
}

fn reply_code() -> impl Strategy<Value = ReplyCode> {
    (
        prop_oneof![400u16..500, 500u16..600],
        any::<bool>(),
        proptest::collection::vec("[ -~]{0,60}", 1..4),
    )
        .prop_map(|(code, enhanced, lines)| {
            let e = enhanced.then(|| format!("{}.7.1", code / 100));
            ReplyCode::new(code, e.as_deref(), &lines.join("\n")).expect("valid reply")
        })
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Continue),
        Just(Action::Accept),
        Just(Action::Reject),
        Just(Action::Tempfail),
        Just(Action::Discard),
        Just(Action::Skip),
        Just(Action::Shutdown),
        Just(Action::ConnFail),
        reply_code().prop_map(Action::ReplyCode),
    ]
}

fn modification() -> impl Strategy<Value = Modification> {
    prop_oneof![
        (cstr(), cstr()).prop_map(|(name, value)| Modification::AddHeader { name, value }),
        (any::<u32>(), cstr(), cstr())
            .prop_map(|(index, name, value)| Modification::InsertHeader { index, name, value }),
        (any::<u32>(), cstr(), cstr())
            .prop_map(|(index, name, value)| Modification::ChangeHeader { index, name, value }),
        cstr().prop_map(Modification::AddRcpt),
        (cstr(), proptest::collection::vec(cstr(), 0..3))
            .prop_map(|(rcpt, args)| Modification::AddRcptPar { rcpt, args }),
        cstr().prop_map(Modification::DeleteRcpt),
        (cstr(), proptest::collection::vec(cstr(), 0..3))
            .prop_map(|(from, args)| Modification::ChangeFrom { from, args }),
        nonempty_cstr().prop_map(Modification::Quarantine),
    ]
}

fn stage() -> impl Strategy<Value = MacroStage> {
    (0u32..7).prop_map(|i| MacroStage::from_index(i).unwrap())
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (optneg(), proptest::collection::vec((stage(), cstr()), 0..4))
            .prop_map(|(opts, symlists)| Response::Negotiate(Negotiated { opts, symlists })),
        Just(Response::Progress),
        action().prop_map(Response::Action),
        modification().prop_map(Response::Modify),
    ]
}

fn one_frame(buf: &mut BytesMut) -> wasmail_milter::Frame {
    let f = decode_frame(buf, usize::MAX)
        .unwrap()
        .expect("a complete frame");
    assert!(buf.is_empty(), "exactly one frame");
    f
}

proptest! {
    #[test]
    fn commands_round_trip(cmd in command()) {
        let mut buf = BytesMut::new();
        cmd.encode(&mut buf);
        let back = Command::decode(one_frame(&mut buf)).unwrap();
        // A dangling macro name is dropped by design; pairs always round-trip.
        prop_assert_eq!(back, cmd);
    }

    #[test]
    fn responses_round_trip(r in response()) {
        let mut buf = BytesMut::new();
        r.encode(&mut buf);
        prop_assert_eq!(Response::decode(one_frame(&mut buf)).unwrap(), r);
    }

    #[test]
    fn body_replacement_round_trips_across_packets(len in 0usize..200_000) {
        let body = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let mut buf = BytesMut::new();
        Response::Modify(Modification::ReplaceBody(body.clone())).encode(&mut buf);
        let mut joined = Vec::new();
        while let Some(f) = decode_frame(&mut buf, usize::MAX).unwrap() {
            prop_assert!(f.payload.len() <= 65535);
            match Response::decode(f).unwrap() {
                Response::Modify(Modification::ReplaceBody(b)) => joined.extend_from_slice(&b),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(&joined[..], &body[..]);
    }

    #[test]
    fn any_split_of_a_stream_yields_the_same_commands(
        cmds in proptest::collection::vec(command(), 1..8),
        cuts in proptest::collection::vec(1usize..50, 1..40),
    ) {
        let mut wire = BytesMut::new();
        for c in &cmds {
            c.encode(&mut wire);
        }
        let wire = wire.freeze();
        let mut input = BytesMut::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < wire.len() {
            let n = (*cut.next().unwrap()).min(wire.len() - pos);
            input.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            while let Some(f) = decode_frame(&mut input, usize::MAX).unwrap() {
                got.push(Command::decode(f).unwrap());
            }
        }
        prop_assert_eq!(got, cmds);
    }
}
