//! Option negotiation: from the MTA's offer and what the handler [`Needs`], compute the
//! reply and the resulting [`Agreement`].
//!
//! Rules (libmilter `st_optionneg`, Postfix `milter8_connect`):
//! - an MTA version below 2 is refused; the reply version is `min(6, MTA version)`;
//! - an offer of 0 actions means `SMFI_V1_ACTS`, 0 protocol flags `SMFI_V1_PROT`;
//! - the handler's actions must all be offered, else negotiation fails (a milter that
//!   cannot make its edits must not pretend it can);
//! - only offered flags are requested: stages the handler does not want get `SMFIP_NO*`,
//!   stages whose verdict it does not need get `SMFIP_NR_*`; when the MTA lacks a flag the
//!   server answers those events itself with `CONTINUE`;
//! - `SMFIP_NODATA`/`SMFIP_NR_DATA` can be withheld (`avoid_nodata`): over TCP an
//!   unanswered DATA leaves Postfix's cleanup waiting ~40 ms for a delayed ACK unless the
//!   server re-arms `TCP_QUICKACK`.

use bytes::Bytes;

use crate::command::OptNeg;
use crate::flags::{
    Actions, MIN_PROTOCOL_VERSION, MacroStage, PROTOCOL_VERSION, Protocol, Stage, StageSet,
};
use crate::response::Negotiated;

/// What a milter handler needs from the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// Actions (edits) the handler may make at end of message. All must be offered.
    pub actions: Actions,
    /// Stages the handler wants to see. End of message is always sent.
    pub stages: StageSet,
    /// Stages the MTA waits for the handler's answer at; the others are negotiated as
    /// no-reply. A final verdict the handler returns at a no-reply stage is held and sent as
    /// the answer to the next answered stage, and the handler sees no more events of that
    /// message (just as if the MTA had waited and stopped).
    pub replies: StageSet,
    /// The handler may answer body chunks with `SKIP`.
    pub skip: bool,
    /// Also see recipients the MTA rejected (`SMFIP_RCPT_REJ`).
    pub rejected_rcpts: bool,
    /// Header values with the space after the colon kept (`SMFIP_HDR_LEADSPC`).
    pub leading_space: bool,
    /// Macros to ask for per stage (`SMFIR_SETSYMLIST`), space-separated names.
    pub macros: Vec<(MacroStage, String)>,
}

impl Default for Needs {
    /// Every stage, every verdict, no edits, no macro lists.
    fn default() -> Self {
        Needs {
            actions: Actions::empty(),
            stages: StageSet::ALL,
            replies: StageSet::ALL,
            skip: false,
            rejected_rcpts: false,
            leading_space: false,
            macros: Vec::new(),
        }
    }
}

/// Why negotiation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// The MTA speaks a protocol version below 2.
    #[error("MTA protocol version {0} is not supported (need 2 or later)")]
    UnsupportedVersion(u32),
    /// The handler needs actions the MTA did not offer.
    #[error(
        "MTA offers actions {offered:#x} but the filter needs {needed:#x} (missing {missing:#x})"
    )]
    ActionsNotOffered {
        /// What the MTA offered.
        offered: u32,
        /// What the handler needs.
        needed: u32,
        /// The difference.
        missing: u32,
    },
}

/// The outcome of negotiation: what the MTA will send and accept on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The MTA's offer (with V1 defaults applied for 0).
    pub offer: OptNeg,
    /// The version both sides use.
    pub version: u32,
    /// Actions granted.
    pub actions: Actions,
    /// Protocol flags in force.
    pub protocol: Protocol,
}

impl Agreement {
    /// An agreement as if `reply` had been sent in answer to `offer` (the client side's view).
    pub fn from_reply(offer: &OptNeg, reply: &OptNeg) -> Agreement {
        Agreement {
            offer: *offer,
            version: reply.version.min(offer.version),
            actions: reply.actions,
            protocol: reply.protocol,
        }
    }

    /// Whether the MTA sends events of `stage`.
    pub fn sends(&self, stage: Stage) -> bool {
        self.version >= stage.min_version()
            && stage.no_flag().is_none_or(|f| !self.protocol.contains(f))
    }

    /// Whether the MTA waits for a reply to events of `stage`.
    pub fn expects_reply(&self, stage: Stage) -> bool {
        stage
            .no_reply_flag()
            .is_none_or(|f| !self.protocol.contains(f))
    }

    /// Whether the actions needed are granted.
    pub fn allows(&self, actions: Actions) -> bool {
        self.actions.contains(actions)
    }
}

/// Computes the negotiation reply for `offer`.
pub fn negotiate(
    offer: &OptNeg,
    needs: &Needs,
    avoid_nodata: bool,
) -> Result<(Agreement, Negotiated), NegotiationError> {
    if offer.version < MIN_PROTOCOL_VERSION {
        return Err(NegotiationError::UnsupportedVersion(offer.version));
    }
    let offered_actions = if offer.actions.is_empty() {
        Actions::V1
    } else {
        offer.actions
    };
    let offered_protocol = if offer.protocol.is_empty() {
        Protocol::V1
    } else {
        offer.protocol
    };
    let needed = needs.actions - Actions::SET_SYMLIST;
    if !offered_actions.contains(needed) {
        return Err(NegotiationError::ActionsNotOffered {
            offered: offered_actions.bits(),
            needed: needed.bits(),
            missing: (needed - offered_actions).bits(),
        });
    }
    let mut actions = needed & Actions::CURRENT;
    let mut protocol = Protocol::empty();
    let mut request = |flag: Protocol| {
        if offered_protocol.contains(flag) {
            protocol |= flag;
            true
        } else {
            false
        }
    };
    for stage in Stage::ALL {
        let data_guard = avoid_nodata && stage == Stage::Data;
        if !needs.stages.contains(stage) {
            let no = stage
                .no_flag()
                .filter(|_| !data_guard)
                .is_some_and(&mut request);
            if !no && let Some(nr) = stage.no_reply_flag().filter(|_| !data_guard) {
                request(nr);
            }
        } else if !needs.replies.contains(stage)
            && let Some(nr) = stage.no_reply_flag().filter(|_| !data_guard)
        {
            request(nr);
        }
    }
    if needs.skip {
        request(Protocol::SKIP);
    }
    if needs.rejected_rcpts {
        request(Protocol::RCPT_REJ);
    }
    if needs.leading_space {
        request(Protocol::HEADER_LEADING_SPACE);
    }
    let mut symlists = Vec::new();
    if !needs.macros.is_empty() && offered_actions.contains(Actions::SET_SYMLIST) {
        actions |= Actions::SET_SYMLIST;
        symlists = needs
            .macros
            .iter()
            .map(|(stage, names)| (*stage, Bytes::from(names.clone())))
            .collect();
    }
    let version = offer.version.min(PROTOCOL_VERSION);
    let reply = OptNeg {
        version,
        actions,
        protocol,
    };
    let agreement = Agreement {
        offer: OptNeg {
            version: offer.version,
            actions: offered_actions,
            protocol: offered_protocol,
        },
        version,
        actions,
        protocol,
    };
    Ok((
        agreement,
        Negotiated {
            opts: reply,
            symlists,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_offer_everything_wanted_requests_nothing_extra() {
        let (a, n) = negotiate(&OptNeg::POSTFIX, &Needs::default(), false).unwrap();
        assert_eq!(n.opts.version, 6);
        assert_eq!(n.opts.actions, Actions::empty());
        assert_eq!(n.opts.protocol, Protocol::empty());
        for s in Stage::ALL {
            assert!(a.sends(s) && a.expects_reply(s), "{s}");
        }
    }

    #[test]
    fn unwanted_stages_get_no_flags_and_silent_stages_nr_flags() {
        let needs = Needs {
            stages: [Stage::Rcpt, Stage::Header, Stage::Eom]
                .into_iter()
                .collect(),
            replies: [Stage::Rcpt, Stage::Eom].into_iter().collect(),
            ..Needs::default()
        };
        let (a, n) = negotiate(&OptNeg::POSTFIX, &needs, false).unwrap();
        let p = n.opts.protocol;
        assert!(p.contains(Protocol::NO_CONNECT | Protocol::NO_HELO | Protocol::NO_MAIL));
        assert!(p.contains(Protocol::NO_BODY | Protocol::NO_EOH | Protocol::NO_DATA));
        assert!(p.contains(Protocol::NR_HEADER));
        assert!(!p.contains(Protocol::NO_RCPT) && !p.contains(Protocol::NR_RCPT));
        assert!(a.sends(Stage::Header) && !a.expects_reply(Stage::Header));
        assert!(!a.sends(Stage::Body));
        assert!(a.sends(Stage::Eom) && a.expects_reply(Stage::Eom));
    }

    #[test]
    fn avoid_nodata_keeps_data_on_the_wire_with_a_reply() {
        let needs = Needs {
            stages: StageSet::EMPTY.with(Stage::Eom),
            replies: StageSet::EMPTY.with(Stage::Eom),
            ..Needs::default()
        };
        let (a, n) = negotiate(&OptNeg::POSTFIX, &needs, true).unwrap();
        assert!(!n.opts.protocol.contains(Protocol::NO_DATA));
        assert!(!n.opts.protocol.contains(Protocol::NR_DATA));
        assert!(a.sends(Stage::Data) && a.expects_reply(Stage::Data));
    }

    #[test]
    fn missing_actions_fail_negotiation() {
        let offer = OptNeg {
            actions: Actions::ADD_HEADERS,
            ..OptNeg::POSTFIX
        };
        let needs = Needs {
            actions: Actions::ADD_HEADERS | Actions::CHANGE_BODY,
            ..Needs::default()
        };
        assert_eq!(
            negotiate(&offer, &needs, false).unwrap_err(),
            NegotiationError::ActionsNotOffered {
                offered: 1,
                needed: 3,
                missing: 2
            }
        );
    }

    #[test]
    fn old_versions_and_zero_offers() {
        assert_eq!(
            negotiate(
                &OptNeg {
                    version: 1,
                    ..OptNeg::POSTFIX
                },
                &Needs::default(),
                false
            )
            .unwrap_err(),
            NegotiationError::UnsupportedVersion(1)
        );
        let offer = OptNeg {
            version: 2,
            actions: Actions::empty(),
            protocol: Protocol::empty(),
        };
        let needs = Needs {
            actions: Actions::ADD_HEADERS,
            stages: StageSet::EMPTY,
            ..Needs::default()
        };
        let (a, n) = negotiate(&offer, &needs, false).unwrap();
        assert_eq!(n.opts.version, 2);
        assert_eq!(a.offer.actions, Actions::V1);
        // V1 protocol has NO_CONNECT..NO_HDRS but no NO_EOH, no NR flags.
        assert_eq!(n.opts.protocol, Protocol::from_bits_retain(0x3F));
        assert!(!a.sends(Stage::Data) && !a.sends(Stage::Unknown));
        assert!(a.sends(Stage::Eoh));
        let (_, n) = negotiate(
            &OptNeg {
                version: 7,
                ..OptNeg::POSTFIX
            },
            &Needs::default(),
            false,
        )
        .unwrap();
        assert_eq!(n.opts.version, 6);
    }

    #[test]
    fn symlists_only_when_offered() {
        let needs = Needs {
            macros: vec![(MacroStage::Connect, "{client_addr}".into())],
            ..Needs::default()
        };
        let (_, n) = negotiate(&OptNeg::POSTFIX, &needs, false).unwrap();
        assert!(n.opts.actions.contains(Actions::SET_SYMLIST));
        assert_eq!(n.symlists.len(), 1);
        let offer = OptNeg {
            actions: Actions::V2,
            ..OptNeg::POSTFIX
        };
        let (_, n) = negotiate(&offer, &needs, false).unwrap();
        assert!(!n.opts.actions.contains(Actions::SET_SYMLIST));
        assert!(n.symlists.is_empty());
    }

    #[test]
    fn unoffered_extras_are_not_requested() {
        let offer = OptNeg {
            protocol: Protocol::V2,
            ..OptNeg::POSTFIX
        };
        let needs = Needs {
            skip: true,
            leading_space: true,
            rejected_rcpts: true,
            replies: StageSet::EMPTY.with(Stage::Eom),
            ..Needs::default()
        };
        let (a, n) = negotiate(&offer, &needs, false).unwrap();
        assert_eq!(n.opts.protocol, Protocol::empty());
        assert!(a.expects_reply(Stage::Header));
    }
}
