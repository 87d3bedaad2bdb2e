//! The MTA side, sans I/O: which commands go on the wire after negotiation, which wait for
//! a reply, and how the responses to one command add up to a [`Reply`]. Like Postfix's
//! `milter8.c`, it refuses what a milter may not send: a negotiation asking for more than
//! was offered, edits outside end of message or not granted, `SKIP` not negotiated,
//! trailing bytes.

use crate::command::{Command, OptNeg};
use crate::flags::{Actions, Stage};
use crate::negotiate::Agreement;
use crate::response::{Action, Modification, Negotiated, Response};

/// The milter's complete answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The final action.
    pub action: Action,
    /// Modifications (end of message only), in the order received.
    pub modifications: Vec<Modification>,
    /// How many `SMFIR_PROGRESS` packets preceded the action.
    pub progress: u32,
}

/// A milter broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The negotiation reply asks for something not offered.
    #[error("negotiation reply asks for {what} {asked:#x}, not within the offer {offered:#x}")]
    NotOffered {
        /// `version`, `actions` or `protocol`.
        what: &'static str,
        /// What was asked.
        asked: u32,
        /// What was offered.
        offered: u32,
    },
    /// A response other than the negotiation reply to OPTNEG, or vice versa.
    #[error("unexpected {got} in reply to {to}")]
    Unexpected {
        /// The response.
        got: &'static str,
        /// The command it answered.
        to: &'static str,
    },
    /// A modification at a stage other than end of message.
    #[error("{0} outside end of message")]
    EditOutsideEom(&'static str),
    /// A modification whose action was not granted.
    #[error("{0} without the action negotiated")]
    NotGranted(&'static str),
    /// `SKIP` without `SMFIP_SKIP`.
    #[error("SKIP without SMFIP_SKIP negotiated")]
    SkipNotNegotiated,
}

/// The stage a command carries, if any.
pub fn stage_of(cmd: &Command) -> Option<Stage> {
    Stage::from_command_code(cmd.code())
}

/// The client's view of a connection.
#[derive(Debug, Clone)]
pub struct ClientState {
    offer: OptNeg,
    agreement: Option<Agreement>,
    mods: Vec<Modification>,
    progress: u32,
}

impl ClientState {
    /// A connection about to send `offer`.
    pub fn new(offer: OptNeg) -> ClientState {
        ClientState {
            offer,
            agreement: None,
            mods: Vec::new(),
            progress: 0,
        }
    }

    /// The offer sent.
    pub fn offer(&self) -> &OptNeg {
        &self.offer
    }

    /// The agreement, after negotiation.
    pub fn agreement(&self) -> Option<&Agreement> {
        self.agreement.as_ref()
    }

    /// Checks the negotiation reply and records the agreement.
    pub fn negotiated(&mut self, reply: &Negotiated) -> Result<Agreement, Violation> {
        let o = &reply.opts;
        if o.version > self.offer.version {
            return Err(Violation::NotOffered {
                what: "version",
                asked: o.version,
                offered: self.offer.version,
            });
        }
        if !self.offer.actions.contains(o.actions) {
            return Err(Violation::NotOffered {
                what: "actions",
                asked: o.actions.bits(),
                offered: self.offer.actions.bits(),
            });
        }
        if !self.offer.protocol.contains(o.protocol) {
            return Err(Violation::NotOffered {
                what: "protocol",
                asked: o.protocol.bits(),
                offered: self.offer.protocol.bits(),
            });
        }
        let a = Agreement::from_reply(&self.offer, o);
        self.agreement = Some(a);
        Ok(a)
    }

    /// Whether `cmd` goes on the wire (a stage the milter turned off with `SMFIP_NO*`, or one
    /// the negotiated version lacks, is not sent).
    pub fn sends(&self, cmd: &Command) -> bool {
        match (stage_of(cmd), &self.agreement) {
            (Some(stage), Some(a)) => a.sends(stage),
            _ => true,
        }
    }

    /// Whether the milter answers `cmd`.
    pub fn expects_reply(&self, cmd: &Command) -> bool {
        match cmd {
            Command::OptNeg(_) => true,
            Command::Macro { .. } | Command::Abort | Command::Quit | Command::QuitNc => false,
            other => match (stage_of(other), &self.agreement) {
                (Some(stage), Some(a)) => a.expects_reply(stage),
                _ => true,
            },
        }
    }

    /// Takes one response to `cmd`; returns the complete reply once the final action came.
    pub fn response(&mut self, cmd: &Command, r: Response) -> Result<Option<Reply>, Violation> {
        let stage = stage_of(cmd);
        match r {
            Response::Negotiate(_) => Err(Violation::Unexpected {
                got: "OPTNEG",
                to: cmd.name(),
            }),
            Response::Progress => {
                self.progress += 1;
                Ok(None)
            }
            Response::Modify(m) => {
                if stage != Some(Stage::Eom) {
                    return Err(Violation::EditOutsideEom(m.name()));
                }
                let granted = self
                    .agreement
                    .map(|a| a.actions)
                    .unwrap_or(Actions::empty());
                if !granted.contains(m.required_action()) {
                    return Err(Violation::NotGranted(m.name()));
                }
                self.mods.push(m);
                Ok(None)
            }
            Response::Action(action) => {
                if action == Action::Skip
                    && !self
                        .agreement
                        .is_some_and(|a| a.protocol.contains(crate::flags::Protocol::SKIP))
                {
                    return Err(Violation::SkipNotNegotiated);
                }
                Ok(Some(Reply {
                    action,
                    modifications: std::mem::take(&mut self.mods),
                    progress: std::mem::take(&mut self.progress),
                }))
            }
        }
    }
}
