//! The protocol edge cases of `shared/reference/milter.md` §7 that live in the sans-IO
//! session (negotiation, macros, state machine, replies, content), one named test each.
//! Framing and resource cases are in `driver.rs`.

use bytes::{Bytes, BytesMut};
use wasmail_milter::{
    Action, Actions, Call, Command, Connect, Envelope, Family, MacroStage, Modification, Needs,
    OptNeg, Protocol, ProtocolError, ReplyCode, RespondError, Response, ServerSession,
    SessionOptions, Stage, StageSet, decode_frame,
};

/// An MTA's view of a server session: feed commands, read what the server wrote.
struct Mta {
    s: ServerSession,
    out: BytesMut,
}

impl Mta {
    fn new() -> Mta {
        Mta {
            s: ServerSession::new(SessionOptions::default()),
            out: BytesMut::new(),
        }
    }

    fn negotiated(offer: OptNeg, needs: Needs) -> Mta {
        let mut m = Mta::new();
        let d = m.s.receive(Command::OptNeg(offer), &mut m.out).unwrap();
        assert_eq!(d.call, Call::Negotiate(offer));
        m.s.negotiate(&offer, &needs, &mut m.out).unwrap();
        let r = m.take();
        assert!(matches!(r[..], [Response::Negotiate(_)]), "{r:?}");
        m
    }

    fn postfix(needs: Needs) -> Mta {
        Mta::negotiated(OptNeg::POSTFIX, needs)
    }

    fn feed(&mut self, cmd: Command) -> Result<Call, ProtocolError> {
        self.s.receive(cmd, &mut self.out).map(|d| d.call)
    }

    /// Feeds a stage command, answers it with `action` (edits at EOM) if it reached the
    /// handler, returns what went on the wire.
    fn step(&mut self, cmd: Command, action: Action, edits: Vec<Modification>) -> Vec<Response> {
        if let Call::Event(e) = self.feed(cmd).unwrap() {
            let _ = self.s.respond(e.stage(), action, edits, &mut self.out);
        }
        self.take()
    }

    fn ok(&mut self, cmd: Command) -> Vec<Response> {
        self.step(cmd, Action::Continue, Vec::new())
    }

    fn take(&mut self) -> Vec<Response> {
        let mut v = Vec::new();
        while let Some(f) = decode_frame(&mut self.out, usize::MAX).unwrap() {
            v.push(Response::decode(f).unwrap());
        }
        v
    }

    fn connect_helo_mail(&mut self) {
        assert_eq!(self.ok(connect()), vec![cont()]);
        assert_eq!(self.ok(Command::Helo(b("client"))), vec![cont()]);
        assert_eq!(self.ok(mail("<a@example.com>")), vec![cont()]);
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

fn cont() -> Response {
    Response::Action(Action::Continue)
}

fn act(a: Action) -> Response {
    Response::Action(a)
}

fn connect() -> Command {
    Command::Connect(Connect {
        hostname: b("client.example"),
        family: Family::Inet,
        port: 4711,
        address: b("192.0.2.1"),
    })
}

fn mail(addr: &str) -> Command {
    Command::Mail(Envelope {
        address: b(addr),
        args: vec![],
    })
}

fn rcpt(addr: &str) -> Command {
    Command::Rcpt(Envelope {
        address: b(addr),
        args: vec![],
    })
}

fn macro_(code: u8, pairs: &[(&str, &str)]) -> Command {
    Command::Macro {
        code,
        pairs: pairs.iter().map(|(n, v)| (b(n), b(v))).collect(),
    }
}

fn header(n: &str, v: &str) -> Command {
    Command::Header {
        name: b(n),
        value: b(v),
    }
}

fn eom() -> Command {
    Command::BodyEob(Bytes::new())
}

fn all_actions() -> Needs {
    Needs {
        actions: Actions::CURRENT - Actions::SET_SYMLIST,
        ..Needs::default()
    }
}

#[test]
fn e08_mta_versions_2_3_4_6_and_7() {
    for (mta, reply, data, unknown) in [
        (2, 2, false, false),
        (3, 3, false, true),
        (4, 4, true, true),
        (6, 6, true, true),
        (7, 6, true, true),
    ] {
        let offer = OptNeg {
            version: mta,
            ..OptNeg::POSTFIX
        };
        let mut m = Mta::new();
        m.feed(Command::OptNeg(offer)).unwrap();
        let a =
            m.s.negotiate(&offer, &Needs::default(), &mut m.out)
                .unwrap();
        let Response::Negotiate(n) = m.take().remove(0) else {
            panic!()
        };
        assert_eq!(n.opts.version, reply, "MTA v{mta}");
        assert_eq!(a.sends(Stage::Data), data, "DATA for v{mta}");
        assert_eq!(a.sends(Stage::Unknown), unknown, "UNKNOWN for v{mta}");
    }
    let mut m = Mta::new();
    let offer = OptNeg {
        version: 1,
        ..OptNeg::POSTFIX
    };
    m.feed(Command::OptNeg(offer)).unwrap();
    assert!(matches!(
        m.s.negotiate(&offer, &Needs::default(), &mut m.out),
        Err(ProtocolError::Negotiation(_))
    ));
    assert!(m.out.is_empty(), "no reply to a refused negotiation");
}

#[test]
fn e08_zero_actions_and_protocol_mean_v1() {
    let offer = OptNeg {
        version: 6,
        actions: Actions::empty(),
        protocol: Protocol::empty(),
    };
    let mut m = Mta::new();
    m.feed(Command::OptNeg(offer)).unwrap();
    let needs = Needs {
        actions: Actions::ADD_HEADERS | Actions::DELETE_RCPT,
        ..Needs::default()
    };
    let a = m.s.negotiate(&offer, &needs, &mut m.out).unwrap();
    assert_eq!(a.offer.actions, Actions::V1);
    assert_eq!(a.offer.protocol, Protocol::V1);
}

#[test]
fn e09_mta_offering_fewer_actions_than_needed_fails_negotiation() {
    let offer = OptNeg {
        actions: Actions::ADD_HEADERS,
        ..OptNeg::POSTFIX
    };
    let mut m = Mta::new();
    m.feed(Command::OptNeg(offer)).unwrap();
    let err =
        m.s.negotiate(&offer, &all_actions(), &mut m.out)
            .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(m.s.agreement().is_none());
}

#[test]
fn e10_second_optneg_mid_session_is_an_error() {
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    assert_eq!(
        m.feed(Command::OptNeg(OptNeg::POSTFIX)),
        Err(ProtocolError::RepeatedNegotiation)
    );
}

#[test]
fn e11_symlists_are_echoed_for_each_stage() {
    let macros: Vec<(MacroStage, String)> = (0..7)
        .map(|i| (MacroStage::from_index(i).unwrap(), format!("{{m{i}}} j")))
        .chain([(MacroStage::Eoh, String::new())])
        .collect();
    let mut m = Mta::new();
    m.feed(Command::OptNeg(OptNeg::POSTFIX)).unwrap();
    m.s.negotiate(
        &OptNeg::POSTFIX,
        &Needs {
            macros: macros.clone(),
            ..Needs::default()
        },
        &mut m.out,
    )
    .unwrap();
    let Response::Negotiate(n) = m.take().remove(0) else {
        panic!()
    };
    assert!(n.opts.actions.contains(Actions::SET_SYMLIST));
    let got: Vec<(MacroStage, String)> = n
        .symlists
        .iter()
        .map(|(s, names)| (*s, String::from_utf8(names.to_vec()).unwrap()))
        .collect();
    assert_eq!(got, macros);
}

#[test]
fn e12_empty_macro_packets_for_every_stage() {
    let mut m = Mta::postfix(Needs::default());
    for code in *b"CHMRTLNBEU" {
        assert_eq!(m.feed(macro_(code, &[])).unwrap(), Call::None);
    }
    assert!(m.take().is_empty(), "macros get no reply");
    m.connect_helo_mail();
}

#[test]
fn e13_macros_for_postfix_codes_and_for_commands_that_never_follow() {
    let mut m = Mta::postfix(Needs::default());
    m.connect_helo_mail();
    m.ok(rcpt("<b@example.net>"));
    m.feed(macro_(b'T', &[("i", "QID1")])).unwrap();
    m.ok(Command::Data);
    m.feed(macro_(b'L', &[("i", "QID1")])).unwrap();
    m.ok(header("Subject", "x"));
    m.feed(macro_(b'N', &[("i", "QID1")])).unwrap();
    m.ok(Command::Eoh);
    m.feed(macro_(b'B', &[("i", "QID1")])).unwrap();
    m.ok(Command::Body(b("hi\r\n")));
    m.feed(macro_(b'Z', &[("zz", "1")])).unwrap();
    m.feed(macro_(b'E', &[("i", "QID1")])).unwrap();
    assert_eq!(m.s.macros().get("i"), Some(&b"QID1"[..]));
    assert_eq!(m.s.macros().get("zz"), None);
    assert_eq!(m.ok(eom()), vec![cont()]);
}

#[test]
fn e14_odd_pairs_duplicates_and_brace_forms() {
    let mut m = Mta::postfix(Needs::default());
    // The decoder drops a dangling name; a missing final NUL is a decode error (driver.rs).
    let f = {
        let mut buf = BytesMut::new();
        wasmail_milter::encode_frame(b'D', b"Cj\0mx\0{daemon_name}\0smtpd\0dangling\0", &mut buf);
        decode_frame(&mut buf, 1 << 20).unwrap().unwrap()
    };
    m.feed(Command::decode(f).unwrap()).unwrap();
    m.feed(macro_(b'C', &[("j", "a"), ("{j}", "b")])).unwrap();
    assert_eq!(m.s.macros().get("j"), Some(&b"b"[..]));
    assert_eq!(m.s.macros().get("{j}"), Some(&b"b"[..]));
    assert_eq!(m.s.macros().get("dangling"), None);
}

#[test]
fn e15_connect_macros_survive_abort_and_rcpt_macros_clear_at_next_mail() {
    let mut m = Mta::postfix(Needs::default());
    m.feed(macro_(
        b'C',
        &[("j", "mx.example"), ("{client_addr}", "192.0.2.1")],
    ))
    .unwrap();
    m.ok(connect());
    m.ok(Command::Helo(b("c")));
    m.feed(macro_(b'M', &[("{mail_addr}", "a@x")])).unwrap();
    m.ok(mail("<a@x>"));
    m.feed(macro_(b'R', &[("{rcpt_addr}", "b@y")])).unwrap();
    m.ok(rcpt("<b@y>"));
    assert_eq!(m.feed(Command::Abort).unwrap(), Call::Abort);
    assert_eq!(m.s.macros().get("client_addr"), Some(&b"192.0.2.1"[..]));
    assert_eq!(m.s.macros().get("mail_addr"), None);
    m.ok(mail("<c@x>"));
    assert_eq!(m.s.macros().get("rcpt_addr"), None);
    assert_eq!(m.s.macros().get("j"), Some(&b"mx.example"[..]));
    m.feed(macro_(b'R', &[("{rcpt_addr}", "d@y")])).unwrap();
    m.ok(rcpt("<d@y>"));
    m.ok(mail("<e@x>"));
    assert_eq!(
        m.s.macros().get("rcpt_addr"),
        None,
        "a second MAIL clears RCPT macros"
    );
}

#[test]
fn e16_helo_twice_mail_without_helo_and_1000_rcpts() {
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    assert_eq!(m.ok(Command::Helo(b("first"))), vec![cont()]);
    m.feed(macro_(b'H', &[("{tls_version}", "TLSv1.3")]))
        .unwrap();
    assert_eq!(m.ok(Command::Helo(b("second"))), vec![cont()]);
    assert_eq!(m.s.macros().get("tls_version"), Some(&b"TLSv1.3"[..]));
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    assert_eq!(m.ok(mail("<a@x>")), vec![cont()], "MAIL without HELO");
    for i in 0..1000 {
        assert_eq!(m.ok(rcpt(&format!("<r{i}@y>"))), vec![cont()]);
    }
    assert_eq!(m.ok(eom()), vec![cont()]);
}

#[test]
fn e17_abort_before_mail_double_abort_then_new_mail() {
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    assert_eq!(
        m.feed(Command::Abort).unwrap(),
        Call::None,
        "no message: no-op"
    );
    m.ok(mail("<a@x>"));
    m.ok(rcpt("<b@y>"));
    m.ok(eom());
    assert_eq!(m.feed(Command::Abort).unwrap(), Call::None);
    assert_eq!(m.feed(Command::Abort).unwrap(), Call::None);
    assert!(m.take().is_empty(), "ABORT never gets a reply");
    assert_eq!(m.ok(mail("<c@x>")), vec![cont()]);
    assert_eq!(m.feed(Command::Abort).unwrap(), Call::Abort);
    assert!(!m.s.in_message());
}

#[test]
fn e18_several_messages_and_quit_nc_then_new_connect() {
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    for i in 0..3 {
        m.ok(mail(&format!("<a{i}@x>")));
        m.ok(rcpt("<b@y>"));
        m.ok(header("Subject", "s"));
        m.ok(Command::Eoh);
        m.ok(Command::Body(b("x\r\n")));
        assert_eq!(m.ok(eom()), vec![cont()]);
    }
    m.feed(macro_(b'C', &[("j", "old")])).unwrap();
    assert_eq!(m.feed(Command::QuitNc).unwrap(), Call::QuitNc);
    assert_eq!(m.s.macros().get("j"), None);
    assert!(matches!(
        m.feed(mail("<x@y>")),
        Err(ProtocolError::OutOfOrder { .. })
    ));
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    m.feed(Command::QuitNc).unwrap();
    assert_eq!(m.ok(connect()), vec![cont()], "new CONNECT after QUIT_NC");
}

#[test]
fn e19_eom_without_body_body_without_headers_eoh_without_headers() {
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    m.ok(mail("<a@x>"));
    m.ok(rcpt("<b@y>"));
    assert_eq!(m.ok(eom()), vec![cont()]);
    m.ok(mail("<a@x>"));
    m.ok(rcpt("<b@y>"));
    assert_eq!(m.ok(Command::Body(b("no headers\r\n"))), vec![cont()]);
    m.ok(eom());
    m.ok(mail("<a@x>"));
    m.ok(rcpt("<b@y>"));
    m.ok(Command::Data);
    assert_eq!(m.ok(Command::Eoh), vec![cont()]);
    m.ok(eom());
}

#[test]
fn e19_data_skipped_when_nodata_negotiated() {
    let needs = Needs {
        stages: StageSet::ALL.without(Stage::Data),
        ..Needs::default()
    };
    let mut m = Mta::postfix(needs);
    assert!(!m.s.agreement().unwrap().sends(Stage::Data));
    m.ok(connect());
    m.ok(mail("<a@x>"));
    m.ok(rcpt("<b@y>"));
    assert_eq!(m.ok(header("From", "a@x")), vec![cont()]);
    // avoid_nodata (TCP without quick ACKs): DATA still comes and is answered for the handler.
    let mut m = Mta {
        s: ServerSession::new(SessionOptions { avoid_nodata: true }),
        out: BytesMut::new(),
    };
    m.feed(Command::OptNeg(OptNeg::POSTFIX)).unwrap();
    m.s.negotiate(
        &OptNeg::POSTFIX,
        &Needs {
            stages: StageSet::ALL.without(Stage::Data),
            ..Needs::default()
        },
        &mut m.out,
    )
    .unwrap();
    m.take();
    m.ok(connect());
    m.ok(mail("<a@x>"));
    m.ok(rcpt("<b@y>"));
    assert_eq!(
        m.feed(Command::Data).unwrap(),
        Call::None,
        "not the handler's"
    );
    assert_eq!(m.take(), vec![cont()], "answered by the session");
}

#[test]
fn e19_bodyeob_carrying_data_is_delivered_with_eom() {
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    m.ok(mail("<a@x>"));
    let call = m.feed(Command::BodyEob(b("last chunk\r\n"))).unwrap();
    assert_eq!(
        call,
        Call::Event(wasmail_milter::Event::Eom(b("last chunk\r\n")))
    );
}

#[test]
fn e20_out_of_order_commands_are_protocol_errors() {
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    assert!(matches!(
        m.feed(rcpt("<b@y>")),
        Err(ProtocolError::OutOfOrder {
            command: "RCPT",
            ..
        })
    ));
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    m.ok(mail("<a@x>"));
    m.ok(Command::Body(b("x")));
    assert!(matches!(
        m.feed(Command::Eoh),
        Err(ProtocolError::OutOfOrder { command: "EOH", .. })
    ));
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    m.ok(mail("<a@x>"));
    m.ok(eom());
    assert!(matches!(
        m.feed(Command::Body(b("late"))),
        Err(ProtocolError::OutOfOrder { .. })
    ));
    let mut m = Mta::new();
    assert_eq!(
        m.feed(Command::Helo(b("x"))),
        Err(ProtocolError::BeforeNegotiation("HELO"))
    );
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    assert!(matches!(
        m.feed(connect()),
        Err(ProtocolError::OutOfOrder { .. })
    ));
}

#[test]
fn e20_mail_inside_a_message_aborts_it_first() {
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    m.ok(mail("<a@x>"));
    m.ok(rcpt("<b@y>"));
    let d = m.s.receive(mail("<c@x>"), &mut m.out).unwrap();
    assert!(d.abort_first);
    assert!(matches!(d.call, Call::Event(_)));
}

#[test]
fn e21_rejected_rcpt_keeps_the_transaction() {
    let needs = Needs {
        rejected_rcpts: true,
        ..Needs::default()
    };
    let mut m = Mta::postfix(needs);
    assert!(
        m.s.agreement()
            .unwrap()
            .protocol
            .contains(Protocol::RCPT_REJ)
    );
    m.ok(connect());
    m.ok(mail("<a@x>"));
    m.feed(macro_(
        b'R',
        &[("{rcpt_host}", "5.1.1"), ("{rcpt_mailer}", "error")],
    ))
    .unwrap();
    assert_eq!(
        m.step(rcpt("<nobody@y>"), Action::Reject, vec![]),
        vec![act(Action::Reject)]
    );
    assert_eq!(m.s.macros().get("rcpt_mailer"), Some(&b"error"[..]));
    assert!(
        m.s.in_message(),
        "a rejected recipient does not end the message"
    );
    let tf = ReplyCode::new(450, Some("4.2.0"), "later").unwrap();
    assert_eq!(
        m.step(rcpt("<busy@y>"), Action::ReplyCode(tf.clone()), vec![]),
        vec![act(Action::ReplyCode(tf))]
    );
    assert_eq!(m.ok(rcpt("<ok@y>")), vec![cont()]);
    assert_eq!(m.ok(Command::Data), vec![cont()]);
}

#[test]
fn e22_unknown_with_and_without_helo() {
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    assert_eq!(m.ok(Command::Unknown(b("XFOO bar"))), vec![cont()]);
    m.ok(Command::Helo(b("c")));
    assert_eq!(
        m.step(Command::Unknown(b("XBAR")), Action::Reject, vec![]),
        vec![act(Action::Reject)]
    );
    assert_eq!(m.ok(mail("<a@x>")), vec![cont()]);
    assert_eq!(
        m.ok(Command::Unknown(b("XBAZ"))),
        vec![cont()],
        "inside a message"
    );
}

#[test]
fn e23_no_reply_for_macro_abort_quit_and_no_reply_stages() {
    let needs = Needs {
        replies: [Stage::Rcpt, Stage::Eom].into_iter().collect(),
        ..Needs::default()
    };
    let mut m = Mta::postfix(needs);
    let a = *m.s.agreement().unwrap();
    for s in [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Header,
        Stage::Body,
    ] {
        assert!(!a.expects_reply(s), "{s}");
    }
    assert!(m.ok(connect()).is_empty());
    assert!(m.ok(Command::Helo(b("h"))).is_empty());
    assert!(m.ok(mail("<a@x>")).is_empty());
    assert_eq!(m.ok(rcpt("<b@y>")), vec![cont()]);
    // A reject at a no-reply header is not sent there, but at the next answered stage.
    assert!(
        m.step(header("X-Spam", "yes"), Action::Reject, vec![])
            .is_empty()
    );
    // The handler sees nothing more of that message, as if the MTA had waited.
    assert_eq!(m.feed(header("Subject", "s")).unwrap(), Call::None);
    assert!(m.take().is_empty());
    assert!(m.feed(macro_(b'E', &[])).is_ok());
    assert_eq!(m.feed(eom()).unwrap(), Call::None);
    assert_eq!(m.take(), vec![act(Action::Reject)]);
    // The deferred verdict belonged to that message only.
    assert!(m.ok(mail("<a2@x>")).is_empty());
    assert_eq!(m.ok(rcpt("<b@y>")), vec![cont()]);
    assert_eq!(m.feed(Command::Quit).unwrap(), Call::Quit);
    assert!(m.take().is_empty());
}

#[test]
fn e24_accept_reject_tempfail_at_connect_and_helo() {
    for a in [
        Action::Accept,
        Action::Reject,
        Action::Tempfail,
        Action::Shutdown,
    ] {
        let mut m = Mta::postfix(Needs::default());
        assert_eq!(m.step(connect(), a.clone(), vec![]), vec![act(a.clone())]);
        let mut m = Mta::postfix(Needs::default());
        m.ok(connect());
        assert_eq!(
            m.step(Command::Helo(b("h")), a.clone(), vec![]),
            vec![act(a.clone())]
        );
    }
}

#[test]
fn e25_discard_at_connect_is_not_sent_but_discards_each_message() {
    let mut m = Mta::postfix(Needs::default());
    assert_eq!(m.step(connect(), Action::Discard, vec![]), vec![cont()]);
    assert_eq!(m.ok(Command::Helo(b("h"))), vec![cont()]);
    assert_eq!(m.ok(mail("<a@x>")), vec![act(Action::Discard)]);
    assert_eq!(
        m.ok(mail("<b@x>")),
        vec![act(Action::Discard)],
        "every message"
    );
}

#[test]
fn e26_replycode_at_each_stage_is_sent_verbatim() {
    let r = ReplyCode::new(554, Some("5.7.1"), "No thanks 100%\nreally").unwrap();
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    assert_eq!(
        m.step(mail("<a@x>"), Action::ReplyCode(r.clone()), vec![]),
        vec![act(Action::ReplyCode(r.clone()))]
    );
    assert!(!m.s.in_message(), "a 5xx at MAIL ends the message");
}

#[test]
fn e27_skip_only_when_negotiated() {
    let with = Needs {
        skip: true,
        ..Needs::default()
    };
    let mut m = Mta::postfix(with);
    m.ok(connect());
    m.ok(mail("<a@x>"));
    assert_eq!(
        m.step(Command::Body(b("1")), Action::Skip, vec![]),
        vec![act(Action::Skip)]
    );
    let mut m = Mta::postfix(Needs::default());
    m.ok(connect());
    m.ok(mail("<a@x>"));
    assert_eq!(
        m.step(Command::Body(b("1")), Action::Skip, vec![]),
        vec![cont()]
    );
    // Further chunks no longer reach the handler but are still answered.
    assert_eq!(m.feed(Command::Body(b("2"))).unwrap(), Call::None);
    assert_eq!(m.take(), vec![cont()]);
    assert!(matches!(m.feed(eom()).unwrap(), Call::Event(_)));
    // SKIP anywhere but the body is a CONTINUE.
    let mut m = Mta::postfix(Needs {
        skip: true,
        ..Needs::default()
    });
    assert_eq!(m.step(connect(), Action::Skip, vec![]), vec![cont()]);
}

#[test]
fn e29_edits_outside_eom_are_refused_with_tempfail() {
    let mut m = Mta::postfix(all_actions());
    m.ok(connect());
    m.ok(mail("<a@x>"));
    let Call::Event(e) = m.feed(rcpt("<b@y>")).unwrap() else {
        panic!()
    };
    let err =
        m.s.respond(
            e.stage(),
            Action::Continue,
            vec![Modification::AddRcpt(b("<c@y>"))],
            &mut m.out,
        )
        .unwrap_err();
    assert_eq!(err, RespondError::EditOutsideEom(Stage::Rcpt));
    assert_eq!(m.take(), vec![act(Action::Tempfail)]);
}

#[test]
fn e29_edits_not_granted_or_malformed_turn_into_tempfail() {
    let mut m = Mta::postfix(Needs {
        actions: Actions::ADD_HEADERS,
        ..Needs::default()
    });
    m.ok(connect());
    m.ok(mail("<a@x>"));
    let Call::Event(e) = m.feed(eom()).unwrap() else {
        panic!()
    };
    let err =
        m.s.respond(
            e.stage(),
            Action::Accept,
            vec![Modification::DeleteRcpt(b("<b@y>"))],
            &mut m.out,
        )
        .unwrap_err();
    assert!(matches!(err, RespondError::NotGranted { .. }));
    assert_eq!(m.take(), vec![act(Action::Tempfail)]);
    for bad in [
        Modification::AddHeader {
            name: b("Bad Name"),
            value: b("v"),
        },
        Modification::AddHeader {
            name: b("X"),
            value: b("a\r\nInjected: yes"),
        },
        Modification::AddHeader {
            name: b("X"),
            value: b("a\nInjected: yes"),
        },
        Modification::AddHeader {
            name: b(""),
            value: b("v"),
        },
    ] {
        m.ok(mail("<a@x>"));
        let Call::Event(e) = m.feed(eom()).unwrap() else {
            panic!()
        };
        let err =
            m.s.respond(e.stage(), Action::Continue, vec![bad.clone()], &mut m.out)
                .unwrap_err();
        assert!(matches!(err, RespondError::InvalidEdit { .. }), "{bad:?}");
        assert_eq!(m.take(), vec![act(Action::Tempfail)]);
    }
}

#[test]
fn e30_header_values_arrive_as_sent() {
    let mut m = Mta::postfix(Needs {
        leading_space: true,
        ..Needs::default()
    });
    assert!(
        m.s.agreement()
            .unwrap()
            .protocol
            .contains(Protocol::HEADER_LEADING_SPACE)
    );
    m.ok(connect());
    m.ok(mail("<a@x>"));
    for (n, v) in [
        ("Subject", " leading space"),
        ("X-Tab", "\tvalue"),
        ("X-Empty", ""),
        ("X-Folded", "line1\n\tline2"),
        ("X-Utf8", "caf\u{e9} \u{1f600}"),
    ] {
        let Call::Event(wasmail_milter::Event::Header { name, value }) =
            m.feed(header(n, v)).unwrap()
        else {
            panic!()
        };
        assert_eq!((&name[..], &value[..]), (n.as_bytes(), v.as_bytes()));
        m.s.respond(Stage::Header, Action::Continue, vec![], &mut m.out)
            .unwrap();
    }
    let big = "x".repeat(102_400);
    assert!(matches!(
        m.feed(header("X-Big", &big)).unwrap(),
        Call::Event(_)
    ));
}

#[test]
fn e31_header_edit_indexes_are_sent_as_given() {
    let mut m = Mta::postfix(all_actions());
    m.ok(connect());
    m.ok(mail("<a@x>"));
    let edits = vec![
        Modification::InsertHeader {
            index: 0,
            name: b("X-Top"),
            value: b("1"),
        },
        Modification::InsertHeader {
            index: 1000,
            name: b("X-Beyond"),
            value: b("2"),
        },
        Modification::ChangeHeader {
            index: 2,
            name: b("Received"),
            value: b("changed"),
        },
        Modification::ChangeHeader {
            index: 1,
            name: b("X-Gone"),
            value: Bytes::new(),
        },
        Modification::AddHeader {
            name: b("X-Folded"),
            value: b("a\n\tb"),
        },
    ];
    let mut want: Vec<Response> = edits.iter().cloned().map(Response::Modify).collect();
    want.push(cont());
    assert_eq!(m.step(eom(), Action::Continue, edits), want);
}

#[test]
fn e33_body_replacement_goes_after_other_edits_in_65535_byte_packets() {
    let mut m = Mta::postfix(all_actions());
    m.ok(connect());
    m.ok(mail("<a@x>"));
    let body = Bytes::from(vec![b'y'; 65536]);
    let got = m.step(
        eom(),
        Action::Accept,
        vec![
            Modification::ReplaceBody(body.slice(..10)),
            Modification::AddHeader {
                name: b("X-A"),
                value: b("1"),
            },
            Modification::ReplaceBody(body.slice(10..)),
        ],
    );
    assert_eq!(
        got.len(),
        4,
        "{:?}",
        got.iter().map(Response::code).collect::<Vec<_>>()
    );
    assert!(matches!(
        &got[0],
        Response::Modify(Modification::AddHeader { .. })
    ));
    let Response::Modify(Modification::ReplaceBody(p1)) = &got[1] else {
        panic!()
    };
    let Response::Modify(Modification::ReplaceBody(p2)) = &got[2] else {
        panic!()
    };
    assert_eq!((p1.len(), p2.len()), (65535, 1));
    assert_eq!(got[3], act(Action::Accept));
    m.ok(mail("<a@x>"));
    let got = m.step(
        eom(),
        Action::Continue,
        vec![Modification::ReplaceBody(Bytes::new())],
    );
    assert_eq!(
        got,
        vec![
            Response::Modify(Modification::ReplaceBody(Bytes::new())),
            cont()
        ]
    );
}

#[test]
fn e34_chgfrom_and_addrcpt_par_with_esmtp_args() {
    let mut m = Mta::postfix(all_actions());
    m.ok(connect());
    m.ok(mail("<>"));
    let edits = vec![
        Modification::ChangeFrom {
            from: b("<>"),
            args: vec![b("ENVID=abc"), b("SIZE=100")],
        },
        Modification::AddRcptPar {
            rcpt: b("<x@y>"),
            args: vec![b("NOTIFY=NEVER"), b("ORCPT=rfc822;x@y")],
        },
        Modification::AddRcpt(b("bare@y")),
        Modification::DeleteRcpt(b("<b@y>")),
    ];
    let mut want: Vec<Response> = edits.iter().cloned().map(Response::Modify).collect();
    want.push(cont());
    assert_eq!(m.step(eom(), Action::Continue, edits), want);
}

#[test]
fn e35_quarantine_with_accept_is_sent_and_with_reject_dropped() {
    let mut m = Mta::postfix(all_actions());
    m.ok(connect());
    m.ok(mail("<a@x>"));
    let reason = b(&"r".repeat(200));
    assert_eq!(
        m.step(
            eom(),
            Action::Accept,
            vec![Modification::Quarantine(reason.clone())]
        ),
        vec![
            Response::Modify(Modification::Quarantine(reason.clone())),
            act(Action::Accept)
        ]
    );
    m.ok(mail("<a@x>"));
    assert_eq!(
        m.step(
            eom(),
            Action::Reject,
            vec![Modification::Quarantine(reason)]
        ),
        vec![act(Action::Reject)]
    );
}

#[test]
fn conn_fail_is_never_sent() {
    let mut m = Mta::postfix(Needs::default());
    assert_eq!(
        m.step(connect(), Action::ConnFail, vec![]),
        vec![act(Action::Tempfail)]
    );
}

#[test]
fn unwanted_stages_are_answered_without_the_handler() {
    let offer = OptNeg {
        protocol: Protocol::V2,
        ..OptNeg::POSTFIX
    };
    let needs = Needs {
        stages: StageSet::EMPTY.with(Stage::Rcpt),
        ..Needs::default()
    };
    let mut m = Mta::negotiated(offer, needs);
    // V2 offers NO_* for connect..hdrs and eoh, so those are negotiated away...
    assert!(!m.s.agreement().unwrap().sends(Stage::Connect));
    // ...but an MTA without the flag for a stage still sends it: answered for the handler.
    assert_eq!(m.feed(Command::Unknown(b("X"))).unwrap(), Call::None);
    assert_eq!(m.take(), vec![cont()]);
    assert_eq!(m.feed(mail("<a@x>")).unwrap(), Call::None);
    m.take();
    assert!(matches!(m.feed(rcpt("<b@y>")).unwrap(), Call::Event(_)));
}
