//! Entry points shared by the `cargo fuzz` targets in `milter/fuzz/` and the unit test that
//! replays their committed seeds. Each takes arbitrary bytes and must not panic; decoders
//! also check that whatever they accept re-encodes to something that decodes the same.

use bytes::{Bytes, BytesMut};

use crate::command::Command;
use crate::flags::Actions;
use crate::frame::{Frame, decode_frame};
use crate::negotiate::Needs;
use crate::response::{Action, Modification, Response};
use crate::session::{Call, ServerSession, SessionOptions};

/// Frames off an arbitrary stream, with a small cap.
pub fn frame(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = decode_frame(&mut buf, 4096) {
        assert!(f.payload.len() < 4096);
    }
}

fn split(data: &[u8]) -> Option<Frame> {
    let (&code, payload) = data.split_first()?;
    Some(Frame {
        code,
        payload: Bytes::copy_from_slice(payload),
    })
}

/// One command payload: first byte is the code.
pub fn command(data: &[u8]) {
    let Some(f) = split(data) else { return };
    if let Ok(cmd) = Command::decode(f) {
        let mut buf = BytesMut::new();
        cmd.encode(&mut buf);
        let again = decode_frame(&mut buf, usize::MAX)
            .expect("re-encoded frame")
            .expect("complete frame");
        assert_eq!(Command::decode(again).expect("re-decodes"), cmd);
    }
}

/// One response payload: first byte is the code.
pub fn response(data: &[u8]) {
    let Some(f) = split(data) else { return };
    if let Ok(r) = Response::decode(f) {
        let mut buf = BytesMut::new();
        r.encode(&mut buf);
        let mut frames = Vec::new();
        while let Some(f) = decode_frame(&mut buf, usize::MAX).expect("re-encoded frame") {
            frames.push(f);
        }
        if let Response::Modify(Modification::ReplaceBody(body)) = &r {
            let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload.to_vec()).collect();
            assert_eq!(&joined[..], &body[..]);
        } else {
            assert_eq!(frames.len(), 1);
            assert_eq!(Response::decode(frames.remove(0)).expect("re-decodes"), r);
        }
    }
}

/// A whole connection: the bytes are the MTA's stream. The handler's answers are derived
/// from the events, so reject, skip, edits and no-reply paths all get exercised.
pub fn session(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut session = ServerSession::new(SessionOptions {
        avoid_nodata: data.len().is_multiple_of(2),
    });
    let mut out = BytesMut::new();
    loop {
        let f = match decode_frame(&mut buf, 1 << 16) {
            Ok(Some(f)) => f,
            _ => return,
        };
        let Ok(cmd) = Command::decode(f) else { return };
        let Ok(dispatch) = session.receive(cmd, &mut out) else {
            return;
        };
        match dispatch.call {
            Call::Negotiate(offer) => {
                let needs = Needs {
                    actions: offer.actions & Actions::CURRENT,
                    stages: crate::flags::StageSet::ALL,
                    replies: crate::flags::StageSet::ALL.without(crate::flags::Stage::Header),
                    skip: true,
                    ..Needs::default()
                };
                if session.negotiate(&offer, &needs, &mut out).is_err() {
                    return;
                }
            }
            Call::Event(event) => {
                let stage = event.stage();
                let (action, edits) = match &event {
                    crate::session::Event::Header { value, .. } if value.len() % 3 == 0 => {
                        (Action::Reject, Vec::new())
                    }
                    crate::session::Event::Body(b) if b.len() % 2 == 1 => {
                        (Action::Skip, Vec::new())
                    }
                    crate::session::Event::Eom(b) => (
                        Action::Continue,
                        vec![
                            Modification::AddHeader {
                                name: Bytes::from_static(b"X-Fuzz"),
                                value: b.clone(),
                            },
                            Modification::ReplaceBody(b.clone()),
                        ],
                    ),
                    _ => (Action::Continue, Vec::new()),
                };
                let _ = session.respond(stage, action, edits, &mut out);
            }
            Call::Quit => return,
            Call::None | Call::Abort | Call::QuitNc => {}
        }
        // Whatever the session wrote must be well-formed responses.
        while let Some(f) = decode_frame(&mut out, usize::MAX).expect("own output frames") {
            Response::decode(f).expect("own output decodes");
        }
    }
}
