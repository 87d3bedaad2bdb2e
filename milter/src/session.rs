//! The server side's state machine, sans I/O.
//!
//! A driver feeds every decoded [`Command`] to [`ServerSession::receive`], which updates
//! the connection state and says what to do ([`Dispatch`]): negotiate, hand an [`Event`]
//! to the handler, tell the handler the message was aborted, or close. After the handler
//! answers, the driver calls [`ServerSession::respond`], which writes exactly the frames
//! the MTA expects into the output buffer, all of one stage together so they go out in one
//! write.
//!
//! Guarantees:
//! - no reply to MACRO, ABORT, QUIT, QUIT_NC or a stage negotiated as no-reply; a verdict
//!   a handler returns at a no-reply stage is kept and sent at the next stage of the same
//!   message (or connection) that is answered, instead of being lost;
//! - events the handler did not ask for but the MTA sends anyway are answered `CONTINUE`
//!   without calling the handler;
//! - edits only at end of message, only those the MTA granted, validated (no NUL, no bare
//!   CR/LF, well-formed header names), body replacement sent after the other edits and
//!   split into 65535-byte packets; a bad edit turns the verdict into TEMPFAIL, so the MTA
//!   keeps the message and nothing is lost;
//! - `SKIP` only when negotiated (else `CONTINUE`, and further body chunks are not passed
//!   to the handler); `SMFIR_CONN_FAIL` never (Postfix does not support it: TEMPFAIL);
//!   `DISCARD` at CONNECT/HELO, which Postfix refuses, becomes a discard of each message
//!   of the connection;
//! - commands out of order (RCPT before MAIL, BODY after EOM) or before negotiation are
//!   protocol errors; a HELO or MAIL inside a message aborts the message first, like
//!   libmilter.

use bytes::{Bytes, BytesMut};

use crate::command::{Command, Connect, Envelope, OptNeg};
use crate::flags::Stage;
use crate::macros::Macros;
use crate::negotiate::{Agreement, Needs, NegotiationError, negotiate};
use crate::response::{Action, Modification, Response};

/// What the handler is asked to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `SMFIC_CONNECT`.
    Connect(Connect),
    /// `SMFIC_HELO`.
    Helo(Bytes),
    /// `SMFIC_MAIL`.
    Mail(Envelope),
    /// `SMFIC_RCPT`.
    Rcpt(Envelope),
    /// `SMFIC_DATA`.
    Data,
    /// `SMFIC_HEADER`.
    Header {
        /// Name.
        name: Bytes,
        /// Value.
        value: Bytes,
    },
    /// `SMFIC_EOH`.
    Eoh,
    /// `SMFIC_BODY`.
    Body(Bytes),
    /// `SMFIC_BODYEOB`, with the body bytes it carried (empty from Postfix). A driver passes
    /// non-empty trailing bytes to the handler as a last body chunk first.
    Eom(Bytes),
    /// `SMFIC_UNKNOWN`.
    Unknown(Bytes),
}

impl Event {
    /// The stage of this event.
    pub fn stage(&self) -> Stage {
        match self {
            Event::Connect(_) => Stage::Connect,
            Event::Helo(_) => Stage::Helo,
            Event::Mail(_) => Stage::Mail,
            Event::Rcpt(_) => Stage::Rcpt,
            Event::Data => Stage::Data,
            Event::Header { .. } => Stage::Header,
            Event::Eoh => Stage::Eoh,
            Event::Body(_) => Stage::Body,
            Event::Eom(_) => Stage::Eom,
            Event::Unknown(_) => Stage::Unknown,
        }
    }
}

/// What the driver should do with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Nothing (macros stored, or an event answered without the handler).
    None,
    /// Ask the handler what it needs, then call [`ServerSession::negotiate`].
    Negotiate(OptNeg),
    /// Give the event to the handler, then call [`ServerSession::respond`].
    Event(Event),
    /// The message was aborted: tell the handler (no reply).
    Abort,
    /// The MTA quit: tell the handler the connection is over, then close.
    Quit,
    /// The MTA quit but will start a new SMTP connection on this socket: tell the handler
    /// the connection is over and keep reading.
    QuitNc,
}

/// The result of [`ServerSession::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// A message was in progress and this command ends it implicitly (HELO or MAIL inside
    /// a message, QUIT): tell the handler about the abort before `call`.
    pub abort_first: bool,
    /// What to do.
    pub call: Call,
}

impl Dispatch {
    fn call(call: Call) -> Dispatch {
        Dispatch {
            abort_first: false,
            call,
        }
    }
}

/// A protocol violation by the MTA; the connection should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A command other than OPTNEG arrived first.
    #[error("{0} before option negotiation")]
    BeforeNegotiation(&'static str),
    /// OPTNEG arrived a second time.
    #[error("second OPTNEG on the same connection")]
    RepeatedNegotiation,
    /// A command that cannot follow the previous ones.
    #[error("{command} out of order (state: {state})")]
    OutOfOrder {
        /// The command.
        command: &'static str,
        /// Where the session was.
        state: &'static str,
    },
    /// Negotiation failed.
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
}

/// A handler answer that could not be sent as given; the session sent TEMPFAIL instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    /// An edit needs an action the MTA did not grant.
    #[error("{edit} needs action {needed:#x}, which was not negotiated")]
    NotGranted {
        /// The edit.
        edit: &'static str,
        /// The action flag it needs.
        needed: u32,
    },
    /// An edit with a malformed field.
    #[error("{edit}: {reason}")]
    InvalidEdit {
        /// The edit.
        edit: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// Edits at a stage other than end of message.
    #[error("edits are only allowed at end of message, not at {0}")]
    EditOutsideEom(Stage),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Init,
    AwaitConnect,
    Connected,
    Message(Step),
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Init => "before negotiation",
            Phase::AwaitConnect => "before CONNECT",
            Phase::Connected => "between messages",
            Phase::Message(Step::Mail) => "after MAIL",
            Phase::Message(Step::Rcpt) => "after RCPT",
            Phase::Message(Step::Data) => "after DATA",
            Phase::Message(Step::Header) => "in headers",
            Phase::Message(Step::Eoh) => "after EOH",
            Phase::Message(Step::Body) => "in body",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Message,
    Connection,
}

/// Options of the sans-IO server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionOptions {
    /// Never request `SMFIP_NODATA`/`SMFIP_NR_DATA` (answer DATA with CONTINUE instead).
    /// Set over TCP when `TCP_QUICKACK` cannot be re-armed.
    pub avoid_nodata: bool,
}

/// One milter connection's protocol state (server side).
#[derive(Debug, Clone)]
pub struct ServerSession {
    options: SessionOptions,
    phase: Phase,
    agreement: Option<Agreement>,
    wanted: crate::flags::StageSet,
    macros: Macros,
    pending: Option<(Action, Scope)>,
    skipping_body: bool,
}

impl ServerSession {
    /// A session waiting for OPTNEG.
    pub fn new(options: SessionOptions) -> ServerSession {
        ServerSession {
            options,
            phase: Phase::Init,
            agreement: None,
            wanted: crate::flags::StageSet::ALL,
            macros: Macros::default(),
            pending: None,
            skipping_body: false,
        }
    }

    /// The negotiated agreement, once OPTNEG is done.
    pub fn agreement(&self) -> Option<&Agreement> {
        self.agreement.as_ref()
    }

    /// The macros received so far.
    pub fn macros(&self) -> &Macros {
        &self.macros
    }

    /// Whether a message (MAIL … end of message) is in progress.
    pub fn in_message(&self) -> bool {
        matches!(self.phase, Phase::Message(_))
    }

    /// Whether the MTA waits for a reply to `stage`.
    pub fn expects_reply(&self, stage: Stage) -> bool {
        self.agreement.is_some_and(|a| a.expects_reply(stage))
    }

    /// Takes one command. Replies that need no handler are written to `out`.
    pub fn receive(&mut self, cmd: Command, out: &mut BytesMut) -> Result<Dispatch, ProtocolError> {
        let name = cmd.name();
        let Some(agreement) = self.agreement else {
            return match cmd {
                Command::OptNeg(offer) => Ok(Dispatch::call(Call::Negotiate(offer))),
                _ => Err(ProtocolError::BeforeNegotiation(name)),
            };
        };
        let in_message = self.in_message();
        match cmd {
            Command::OptNeg(_) => Err(ProtocolError::RepeatedNegotiation),
            Command::Macro { code, pairs } => {
                self.macros.set(code, pairs);
                Ok(Dispatch::call(Call::None))
            }
            Command::Abort => {
                if in_message {
                    self.end_message();
                    self.macros.abort();
                    Ok(Dispatch::call(Call::Abort))
                } else {
                    Ok(Dispatch::call(Call::None))
                }
            }
            Command::Quit => {
                if in_message {
                    self.end_message();
                }
                Ok(Dispatch {
                    abort_first: in_message,
                    call: Call::Quit,
                })
            }
            Command::QuitNc => {
                self.end_message();
                self.pending = None;
                self.macros.clear();
                self.phase = self.start_phase(&agreement);
                Ok(Dispatch {
                    abort_first: in_message,
                    call: Call::QuitNc,
                })
            }
            Command::Connect(c) => {
                if self.phase != Phase::AwaitConnect {
                    return Err(self.out_of_order(name));
                }
                self.phase = Phase::Connected;
                self.event(Event::Connect(c), false, out)
            }
            Command::Helo(h) => {
                self.require_connected(name, &agreement)?;
                let abort = self.implicit_abort();
                self.phase = Phase::Connected;
                self.event(Event::Helo(h), abort, out)
            }
            Command::Mail(e) => {
                self.require_connected(name, &agreement)?;
                let abort = self.implicit_abort();
                self.phase = Phase::Message(Step::Mail);
                self.event(Event::Mail(e), abort, out)
            }
            Command::Rcpt(e) => {
                self.advance(name, Step::Rcpt, true, &agreement)?;
                self.event(Event::Rcpt(e), false, out)
            }
            Command::Data => {
                self.advance(name, Step::Data, false, &agreement)?;
                self.event(Event::Data, false, out)
            }
            Command::Header { name: n, value } => {
                self.advance(name, Step::Header, true, &agreement)?;
                self.event(Event::Header { name: n, value }, false, out)
            }
            Command::Eoh => {
                self.advance(name, Step::Eoh, false, &agreement)?;
                self.event(Event::Eoh, false, out)
            }
            Command::Body(b) => {
                self.advance(name, Step::Body, true, &agreement)?;
                self.event(Event::Body(b), false, out)
            }
            Command::BodyEob(b) => {
                match self.phase {
                    Phase::Message(_) => {}
                    Phase::Connected if !agreement.sends(Stage::Mail) => {}
                    _ => return Err(self.out_of_order(name)),
                }
                self.event(Event::Eom(b), false, out)
            }
            Command::Unknown(line) => {
                if self.phase == Phase::AwaitConnect && agreement.sends(Stage::Connect) {
                    return Err(self.out_of_order(name));
                }
                self.event(Event::Unknown(line), false, out)
            }
        }
    }

    fn start_phase(&self, agreement: &Agreement) -> Phase {
        if agreement.sends(Stage::Connect) {
            Phase::AwaitConnect
        } else {
            Phase::Connected
        }
    }

    fn out_of_order(&self, command: &'static str) -> ProtocolError {
        ProtocolError::OutOfOrder {
            command,
            state: self.phase.name(),
        }
    }

    fn require_connected(&self, name: &'static str, a: &Agreement) -> Result<(), ProtocolError> {
        match self.phase {
            Phase::Connected | Phase::Message(_) => Ok(()),
            Phase::AwaitConnect if !a.sends(Stage::Connect) => Ok(()),
            _ => Err(self.out_of_order(name)),
        }
    }

    fn implicit_abort(&mut self) -> bool {
        if self.in_message() {
            self.end_message();
            self.macros.abort();
            true
        } else {
            false
        }
    }

    /// Moves forward inside a message to `step` (repeatable steps may stay).
    fn advance(
        &mut self,
        name: &'static str,
        step: Step,
        repeatable: bool,
        a: &Agreement,
    ) -> Result<(), ProtocolError> {
        let ok = match self.phase {
            Phase::Message(cur) => cur < step || (repeatable && cur == step),
            // MAIL not negotiated: the first message command starts the message.
            Phase::Connected | Phase::AwaitConnect => {
                !a.sends(Stage::Mail)
                    && (self.phase == Phase::Connected || !a.sends(Stage::Connect))
            }
            Phase::Init => false,
        };
        if !ok {
            return Err(self.out_of_order(name));
        }
        self.phase = Phase::Message(step);
        Ok(())
    }

    fn end_message(&mut self) {
        if let Phase::Message(_) = self.phase {
            self.phase = Phase::Connected;
        }
        if matches!(self.pending, Some((_, Scope::Message))) {
            self.pending = None;
        }
        self.skipping_body = false;
    }

    fn event(
        &mut self,
        event: Event,
        abort_first: bool,
        out: &mut BytesMut,
    ) -> Result<Dispatch, ProtocolError> {
        let stage = event.stage();
        self.macros.enter(stage.command_code());
        let skip = stage == Stage::Body && self.skipping_body;
        // A final verdict held back from a no-reply stage ends the message for the handler,
        // as it would have had the MTA waited for it: the rest of the message is answered
        // here, and the next answered stage carries the verdict.
        let decided = matches!(self.pending, Some((_, Scope::Message)))
            && !matches!(stage, Stage::Connect | Stage::Helo | Stage::Mail);
        if self.wanted.contains(stage) && !skip && !decided {
            return Ok(Dispatch {
                abort_first,
                call: Call::Event(event),
            });
        }
        // Not the handler's business: answer for it (this also delivers a deferred verdict).
        let _ = self.respond(stage, Action::Continue, Vec::new(), out);
        Ok(Dispatch {
            abort_first,
            call: Call::None,
        })
    }

    /// Completes negotiation with what the handler needs; writes the `O` reply.
    pub fn negotiate(
        &mut self,
        offer: &OptNeg,
        needs: &Needs,
        out: &mut BytesMut,
    ) -> Result<Agreement, ProtocolError> {
        if self.agreement.is_some() {
            return Err(ProtocolError::RepeatedNegotiation);
        }
        let (agreement, reply) = negotiate(offer, needs, self.options.avoid_nodata)?;
        Response::Negotiate(reply).encode(out);
        self.wanted = needs.stages.with(Stage::Eom);
        self.agreement = Some(agreement);
        self.phase = self.start_phase(&agreement);
        Ok(agreement)
    }

    /// Sends the handler's answer to an event of `stage`: `edits` (end of message only)
    /// then `action`, or nothing if the MTA expects no reply. Returns the action actually
    /// sent, if any. On error TEMPFAIL was sent instead (or, at a no-reply stage, nothing).
    pub fn respond(
        &mut self,
        stage: Stage,
        action: Action,
        edits: Vec<Modification>,
        out: &mut BytesMut,
    ) -> Result<Option<Action>, RespondError> {
        let Some(agreement) = self.agreement else {
            return Ok(None);
        };
        let scope = if matches!(stage, Stage::Connect | Stage::Helo) {
            Scope::Connection
        } else {
            Scope::Message
        };
        if !agreement.expects_reply(stage) {
            if stage == Stage::Body && action == Action::Skip {
                self.skipping_body = true;
            }
            if action.is_final() && self.pending.is_none() {
                self.pending = Some((action, scope));
            }
            return if edits.is_empty() {
                Ok(None)
            } else {
                Err(RespondError::EditOutsideEom(stage))
            };
        }
        if stage != Stage::Eom && !edits.is_empty() {
            Action::Tempfail.encode_into(out);
            self.finish(stage, &Action::Tempfail);
            return Err(RespondError::EditOutsideEom(stage));
        }
        let mut action = match action {
            Action::ConnFail => Action::Tempfail,
            Action::Discard if scope == Scope::Connection => {
                self.pending = Some((Action::Discard, Scope::Connection));
                Action::Continue
            }
            Action::Skip if stage != Stage::Body => Action::Continue,
            Action::Skip if !agreement.protocol.contains(crate::flags::Protocol::SKIP) => {
                self.skipping_body = true;
                Action::Continue
            }
            Action::Skip => {
                self.skipping_body = true;
                Action::Skip
            }
            other => other,
        };
        if !action.is_final()
            && scope == Scope::Message
            && let Some((deferred, _)) = &self.pending
        {
            action = deferred.clone();
        }
        if stage == Stage::Eom {
            if let Err(e) = check_edits(&edits, &agreement) {
                Action::Tempfail.encode_into(out);
                self.finish(stage, &Action::Tempfail);
                return Err(e);
            }
            // Edits only matter for a message that goes on; they are dropped otherwise.
            if matches!(action, Action::Continue | Action::Accept) {
                encode_edits(edits, out);
            }
        }
        action.encode_into(out);
        self.finish(stage, &action);
        Ok(Some(action))
    }

    fn finish(&mut self, stage: Stage, action: &Action) {
        let ends_message = match stage {
            Stage::Eom => true,
            Stage::Connect | Stage::Helo | Stage::Unknown => false,
            Stage::Rcpt => matches!(action, Action::Accept | Action::Discard | Action::Shutdown),
            _ => action.is_final(),
        };
        if ends_message {
            self.end_message();
        }
    }
}

impl Action {
    fn encode_into(&self, out: &mut BytesMut) {
        Response::Action(self.clone()).encode(out);
    }
}

fn check_edits(edits: &[Modification], agreement: &Agreement) -> Result<(), RespondError> {
    for edit in edits {
        let needed = edit.required_action();
        if !agreement.allows(needed) {
            return Err(RespondError::NotGranted {
                edit: edit.name(),
                needed: needed.bits(),
            });
        }
        validate_edit(edit).map_err(|reason| RespondError::InvalidEdit {
            edit: edit.name(),
            reason,
        })?;
    }
    Ok(())
}

/// Checks an edit's fields: what the MTA would choke on or what could inject SMTP or
/// header syntax.
pub fn validate_edit(edit: &Modification) -> Result<(), &'static str> {
    fn line(s: &[u8], what: &'static str) -> Result<(), &'static str> {
        if s.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(what);
        }
        Ok(())
    }
    fn header(name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if name.is_empty() {
            return Err("empty header name");
        }
        if !name.iter().all(|&b| (33..=126).contains(&b) && b != b':') {
            return Err("header name must be printable ASCII without ':' or spaces");
        }
        if value.contains(&0) || value.contains(&b'\r') {
            return Err("header value contains NUL or CR");
        }
        for (i, &b) in value.iter().enumerate() {
            if b == b'\n' && !matches!(value.get(i + 1), Some(b' ' | b'\t')) {
                return Err("header value has a line break not followed by whitespace");
            }
        }
        Ok(())
    }
    fn address(addr: &[u8], args: &[Bytes]) -> Result<(), &'static str> {
        if addr.is_empty() {
            return Err("empty address");
        }
        line(addr, "address contains NUL, CR or LF")?;
        for a in args {
            if a.is_empty() {
                return Err("empty ESMTP argument");
            }
            line(a, "ESMTP argument contains NUL, CR or LF")?;
        }
        Ok(())
    }
    match edit {
        Modification::AddHeader { name, value }
        | Modification::InsertHeader { name, value, .. }
        | Modification::ChangeHeader { name, value, .. } => header(name, value),
        Modification::AddRcpt(r) | Modification::DeleteRcpt(r) => address(r, &[]),
        Modification::AddRcptPar { rcpt: a, args } | Modification::ChangeFrom { from: a, args } => {
            address(a, args)
        }
        Modification::ReplaceBody(_) => Ok(()),
        Modification::Quarantine(reason) => {
            if reason.is_empty() {
                return Err("empty quarantine reason");
            }
            line(reason, "quarantine reason contains NUL, CR or LF")
        }
    }
}

/// Writes edits with every body replacement after the others, concatenated (Postfix
/// cannot mix body replacement with other edits).
fn encode_edits(edits: Vec<Modification>, out: &mut BytesMut) {
    let mut body: Option<BytesMut> = None;
    for edit in edits {
        match edit {
            Modification::ReplaceBody(b) => {
                body.get_or_insert_with(BytesMut::new).extend_from_slice(&b)
            }
            other => Response::Modify(other).encode(out),
        }
    }
    if let Some(b) = body {
        Response::Modify(Modification::ReplaceBody(b.freeze())).encode(out);
    }
}
