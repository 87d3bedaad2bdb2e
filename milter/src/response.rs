//! Responses the milter sends (`SMFIR_*` and the `O` negotiation reply), as typed values
//! with a pure encoder and decoder.
//!
//! Three kinds: [`Action`]s end the reply to a command; [`Modification`]s (including
//! quarantine) may only precede the final action at end of message; `PROGRESS` keeps the
//! MTA waiting. The decoder is strict (no trailing bytes), like Postfix's `milter8.c`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::command::OptNeg;
use crate::flags::{Actions, CHUNK_SIZE, MacroStage, resp};
use crate::frame::{Frame, begin_frame, finish_frame};
use crate::reply::ReplyCode;
use crate::wire::{DecodeError, expect_empty, put_cstr, take_argv, take_cstr, take_u32};

/// The milter's negotiation reply: what it wants, plus macro lists per stage
/// (`SMFIR_SETSYMLIST` entries, sent only if `SMFIF_SETSYMLIST` is requested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Version, actions and protocol flags the milter asks for.
    pub opts: OptNeg,
    /// Space-separated macro names per stage.
    pub symlists: Vec<(MacroStage, Bytes)>,
}

/// A final answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `SMFIR_CONTINUE` (`c`).
    Continue,
    /// `SMFIR_ACCEPT` (`a`): accept the message (or, at CONNECT/HELO, the connection)
    /// without further filtering.
    Accept,
    /// `SMFIR_REJECT` (`r`): Postfix answers `550 5.7.1`.
    Reject,
    /// `SMFIR_TEMPFAIL` (`t`): Postfix answers `451 4.7.1`.
    Tempfail,
    /// `SMFIR_DISCARD` (`d`): accept and silently drop the message.
    Discard,
    /// `SMFIR_SKIP` (`s`): no more events of this kind (body chunks); needs `SMFIP_SKIP`.
    Skip,
    /// `SMFIR_REPLYCODE` (`y`): reject or tempfail with a custom reply.
    ReplyCode(ReplyCode),
    /// `SMFIR_SHUTDOWN` (`4`): 421 and disconnect.
    Shutdown,
    /// `SMFIR_CONN_FAIL` (`f`). Postfix does not support it; the server never sends it.
    ConnFail,
}

impl Action {
    /// The response code.
    pub fn code(&self) -> u8 {
        match self {
            Action::Continue => resp::CONTINUE,
            Action::Accept => resp::ACCEPT,
            Action::Reject => resp::REJECT,
            Action::Tempfail => resp::TEMPFAIL,
            Action::Discard => resp::DISCARD,
            Action::Skip => resp::SKIP,
            Action::ReplyCode(_) => resp::REPLYCODE,
            Action::Shutdown => resp::SHUTDOWN,
            Action::ConnFail => resp::CONN_FAIL,
        }
    }

    /// Whether this ends the message (or connection) rather than letting it go on.
    pub fn is_final(&self) -> bool {
        !matches!(self, Action::Continue | Action::Skip)
    }

    /// A name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Continue => "continue",
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::Tempfail => "tempfail",
            Action::Discard => "discard",
            Action::Skip => "skip",
            Action::ReplyCode(r) if r.is_temporary() => "replycode-4xx",
            Action::ReplyCode(_) => "replycode-5xx",
            Action::Shutdown => "shutdown",
            Action::ConnFail => "conn-fail",
        }
    }
}

/// An end-of-message modification (or quarantine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modification {
    /// `SMFIR_ADDHEADER` (`h`): append a header.
    AddHeader {
        /// Header name.
        name: Bytes,
        /// Value (`\n` + whitespace for continuation lines).
        value: Bytes,
    },
    /// `SMFIR_INSHEADER` (`i`): insert a header at `index` (0 = the very top).
    InsertHeader {
        /// Position among the headers.
        index: u32,
        /// Header name.
        name: Bytes,
        /// Value.
        value: Bytes,
    },
    /// `SMFIR_CHGHEADER` (`m`): change the `index`-th (1-based) header called `name`; an
    /// empty value deletes it.
    ChangeHeader {
        /// 1-based occurrence among headers of this name.
        index: u32,
        /// Header name.
        name: Bytes,
        /// New value; empty deletes.
        value: Bytes,
    },
    /// `SMFIR_ADDRCPT` (`+`).
    AddRcpt(Bytes),
    /// `SMFIR_ADDRCPT_PAR` (`2`): add a recipient with ESMTP arguments.
    AddRcptPar {
        /// The recipient.
        rcpt: Bytes,
        /// ESMTP arguments (`NOTIFY=`, `ORCPT=`).
        args: Vec<Bytes>,
    },
    /// `SMFIR_DELRCPT` (`-`): remove a recipient (as given in RCPT).
    DeleteRcpt(Bytes),
    /// `SMFIR_CHGFROM` (`e`): change the envelope sender.
    ChangeFrom {
        /// The new sender.
        from: Bytes,
        /// ESMTP arguments.
        args: Vec<Bytes>,
    },
    /// `SMFIR_REPLBODY` (`b`): (part of) the new body. Consecutive packets concatenate.
    ReplaceBody(Bytes),
    /// `SMFIR_QUARANTINE` (`q`): put the message on hold with a reason.
    Quarantine(Bytes),
}

impl Modification {
    /// The response code.
    pub fn code(&self) -> u8 {
        match self {
            Modification::AddHeader { .. } => resp::ADDHEADER,
            Modification::InsertHeader { .. } => resp::INSHEADER,
            Modification::ChangeHeader { .. } => resp::CHGHEADER,
            Modification::AddRcpt(_) => resp::ADDRCPT,
            Modification::AddRcptPar { .. } => resp::ADDRCPT_PAR,
            Modification::DeleteRcpt(_) => resp::DELRCPT,
            Modification::ChangeFrom { .. } => resp::CHGFROM,
            Modification::ReplaceBody(_) => resp::REPLBODY,
            Modification::Quarantine(_) => resp::QUARANTINE,
        }
    }

    /// The action flag the MTA must have granted for this modification.
    pub fn required_action(&self) -> Actions {
        match self {
            Modification::AddHeader { .. } | Modification::InsertHeader { .. } => {
                Actions::ADD_HEADERS
            }
            Modification::ChangeHeader { .. } => Actions::CHANGE_HEADERS,
            Modification::AddRcpt(_) => Actions::ADD_RCPT,
            Modification::AddRcptPar { .. } => Actions::ADD_RCPT_PAR,
            Modification::DeleteRcpt(_) => Actions::DELETE_RCPT,
            Modification::ChangeFrom { .. } => Actions::CHANGE_FROM,
            Modification::ReplaceBody(_) => Actions::CHANGE_BODY,
            Modification::Quarantine(_) => Actions::QUARANTINE,
        }
    }

    /// The protocol name, for logs.
    pub fn name(&self) -> &'static str {
        response_name(self.code())
    }
}

/// One response frame from the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The `O` reply to `SMFIC_OPTNEG`.
    Negotiate(Negotiated),
    /// `SMFIR_PROGRESS` (`p`): still working, restart the MTA's timer.
    Progress,
    /// A final action.
    Action(Action),
    /// A modification (end of message only).
    Modify(Modification),
}

impl Response {
    /// The response code.
    pub fn code(&self) -> u8 {
        match self {
            Response::Negotiate(_) => resp::OPTNEG,
            Response::Progress => resp::PROGRESS,
            Response::Action(a) => a.code(),
            Response::Modify(m) => m.code(),
        }
    }

    /// Decodes a frame the milter sent.
    pub fn decode(frame: Frame) -> Result<Response, DecodeError> {
        let Frame { code, mut payload } = frame;
        let p = &mut payload;
        let what = response_name(code);
        let simple = |a: Action, p: &Bytes| expect_empty(p, what).map(|()| Response::Action(a));
        let r = match code {
            resp::OPTNEG => {
                let opts = OptNeg::decode(p)?;
                let mut symlists = Vec::new();
                while !p.is_empty() {
                    let index = take_u32(p, "macro list stage")?;
                    let stage =
                        MacroStage::from_index(index).ok_or(DecodeError::BadMacroStage(index))?;
                    symlists.push((stage, take_cstr(p, "macro list")?));
                }
                Response::Negotiate(Negotiated { opts, symlists })
            }
            resp::CONTINUE => simple(Action::Continue, p)?,
            resp::ACCEPT => simple(Action::Accept, p)?,
            resp::REJECT => simple(Action::Reject, p)?,
            resp::TEMPFAIL => simple(Action::Tempfail, p)?,
            resp::DISCARD => simple(Action::Discard, p)?,
            resp::SKIP => simple(Action::Skip, p)?,
            resp::SHUTDOWN => simple(Action::Shutdown, p)?,
            resp::CONN_FAIL => simple(Action::ConnFail, p)?,
            resp::PROGRESS => {
                expect_empty(p, what)?;
                Response::Progress
            }
            resp::REPLYCODE => {
                let text = take_cstr(p, "reply code")?;
                expect_empty(p, what)?;
                Response::Action(Action::ReplyCode(ReplyCode::parse(&text)?))
            }
            resp::QUARANTINE => {
                let reason = take_cstr(p, "quarantine reason")?;
                expect_empty(p, what)?;
                Response::Modify(Modification::Quarantine(reason))
            }
            resp::ADDHEADER => {
                let name = take_cstr(p, "header name")?;
                let value = take_cstr(p, "header value")?;
                expect_empty(p, what)?;
                Response::Modify(Modification::AddHeader { name, value })
            }
            resp::INSHEADER | resp::CHGHEADER => {
                let index = take_u32(p, "header index")?;
                let name = take_cstr(p, "header name")?;
                let value = take_cstr(p, "header value")?;
                expect_empty(p, what)?;
                Response::Modify(if code == resp::INSHEADER {
                    Modification::InsertHeader { index, name, value }
                } else {
                    Modification::ChangeHeader { index, name, value }
                })
            }
            resp::ADDRCPT | resp::DELRCPT => {
                let rcpt = take_cstr(p, "recipient")?;
                expect_empty(p, what)?;
                Response::Modify(if code == resp::ADDRCPT {
                    Modification::AddRcpt(rcpt)
                } else {
                    Modification::DeleteRcpt(rcpt)
                })
            }
            resp::ADDRCPT_PAR | resp::CHGFROM => {
                let mut argv = take_argv(std::mem::take(p), what)?;
                if argv.is_empty() {
                    return Err(DecodeError::Truncated { what });
                }
                let addr = argv.remove(0);
                Response::Modify(if code == resp::ADDRCPT_PAR {
                    Modification::AddRcptPar {
                        rcpt: addr,
                        args: argv,
                    }
                } else {
                    Modification::ChangeFrom {
                        from: addr,
                        args: argv,
                    }
                })
            }
            resp::REPLBODY => Response::Modify(Modification::ReplaceBody(payload)),
            other => return Err(DecodeError::UnknownCode(other)),
        };
        Ok(r)
    }

    /// Appends this response as one frame to `dst`. A [`Modification::ReplaceBody`] longer
    /// than 65535 bytes is written as several `SMFIR_REPLBODY` frames.
    pub fn encode(&self, dst: &mut BytesMut) {
        if let Response::Modify(Modification::ReplaceBody(body)) = self {
            encode_body(body, dst);
            return;
        }
        let start = begin_frame(self.code(), dst);
        match self {
            Response::Negotiate(n) => {
                n.opts.put(dst);
                for (stage, names) in &n.symlists {
                    dst.put_u32(*stage as u32);
                    put_cstr(dst, names);
                }
            }
            Response::Progress => {}
            Response::Action(Action::ReplyCode(r)) => put_cstr(dst, r.as_bytes()),
            Response::Action(_) => {}
            Response::Modify(m) => match m {
                Modification::AddHeader { name, value } => {
                    put_cstr(dst, name);
                    put_cstr(dst, value);
                }
                Modification::InsertHeader { index, name, value }
                | Modification::ChangeHeader { index, name, value } => {
                    dst.put_u32(*index);
                    put_cstr(dst, name);
                    put_cstr(dst, value);
                }
                Modification::AddRcpt(r) | Modification::DeleteRcpt(r) => put_cstr(dst, r),
                Modification::Quarantine(r) => put_cstr(dst, r),
                Modification::AddRcptPar { rcpt: a, args }
                | Modification::ChangeFrom { from: a, args } => {
                    put_cstr(dst, a);
                    for arg in args {
                        put_cstr(dst, arg);
                    }
                }
                Modification::ReplaceBody(_) => unreachable!("handled above"),
            },
        }
        finish_frame(start, dst);
    }
}

/// Writes `body` as `SMFIR_REPLBODY` frames of at most 65535 bytes (one empty frame for an
/// empty body).
fn encode_body(body: &[u8], dst: &mut BytesMut) {
    if body.is_empty() {
        crate::frame::encode_frame(resp::REPLBODY, &[], dst);
        return;
    }
    for chunk in body.chunks(CHUNK_SIZE) {
        crate::frame::encode_frame(resp::REPLBODY, chunk, dst);
    }
}

/// The protocol name of a response code, for logs.
pub fn response_name(code: u8) -> &'static str {
    match code {
        resp::OPTNEG => "OPTNEG",
        resp::CONTINUE => "CONTINUE",
        resp::ACCEPT => "ACCEPT",
        resp::REJECT => "REJECT",
        resp::TEMPFAIL => "TEMPFAIL",
        resp::DISCARD => "DISCARD",
        resp::SKIP => "SKIP",
        resp::REPLYCODE => "REPLYCODE",
        resp::SHUTDOWN => "SHUTDOWN",
        resp::CONN_FAIL => "CONN_FAIL",
        resp::PROGRESS => "PROGRESS",
        resp::QUARANTINE => "QUARANTINE",
        resp::ADDHEADER => "ADDHEADER",
        resp::INSHEADER => "INSHEADER",
        resp::CHGHEADER => "CHGHEADER",
        resp::ADDRCPT => "ADDRCPT",
        resp::ADDRCPT_PAR => "ADDRCPT_PAR",
        resp::DELRCPT => "DELRCPT",
        resp::CHGFROM => "CHGFROM",
        resp::REPLBODY => "REPLBODY",
        resp::SETSYMLIST => "SETSYMLIST",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode_frame;

    fn frames(r: &Response) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        r.encode(&mut buf);
        let mut out = Vec::new();
        while let Some(f) = decode_frame(&mut buf, usize::MAX).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn body_replacement_is_split_at_65535() {
        for (len, packets) in [
            (0usize, 1usize),
            (1, 1),
            (65535, 1),
            (65536, 2),
            (200_000, 4),
        ] {
            let r = Response::Modify(Modification::ReplaceBody(Bytes::from(vec![b'x'; len])));
            let f = frames(&r);
            assert_eq!(f.len(), packets, "body of {len}");
            assert!(
                f.iter()
                    .all(|f| f.code == b'b' && f.payload.len() <= CHUNK_SIZE)
            );
            assert_eq!(f.iter().map(|f| f.payload.len()).sum::<usize>(), len);
        }
    }

    #[test]
    fn simple_actions_refuse_trailing_data() {
        let f = Frame {
            code: b'c',
            payload: Bytes::from_static(b"x"),
        };
        assert_eq!(
            Response::decode(f),
            Err(DecodeError::TrailingData {
                what: "CONTINUE",
                len: 1
            })
        );
        let f = Frame {
            code: b'p',
            payload: Bytes::from_static(b"x"),
        };
        assert!(Response::decode(f).is_err());
    }

    #[test]
    fn optneg_reply_with_symlists() {
        let r = Response::Negotiate(Negotiated {
            opts: OptNeg::POSTFIX,
            symlists: vec![
                (MacroStage::Connect, Bytes::from_static(b"{client_addr} j")),
                (MacroStage::Eoh, Bytes::new()),
            ],
        });
        let f = frames(&r).remove(0);
        assert_eq!(Response::decode(f).unwrap(), r);
        let mut bad = BytesMut::new();
        OptNeg::POSTFIX.put(&mut bad);
        bad.put_u32(9);
        bad.put_slice(b"x\0");
        assert_eq!(
            Response::decode(Frame {
                code: b'O',
                payload: bad.freeze()
            }),
            Err(DecodeError::BadMacroStage(9))
        );
    }

    #[test]
    fn replycode_is_validated_on_decode() {
        let f = Frame {
            code: b'y',
            payload: Bytes::from_static(b"250 ok\0"),
        };
        assert!(matches!(Response::decode(f), Err(DecodeError::Reply(_))));
    }
}
