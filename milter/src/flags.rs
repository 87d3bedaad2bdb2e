//! Protocol constants: command and response codes, action flags (`SMFIF_*`), protocol-step
//! flags (`SMFIP_*`) and macro stage indexes (`SMFIM_*`), as in libmilter's `mfapi.h` and
//! `mfdef.h` (sendmail 8.17.1).

use bitflags::bitflags;

/// The newest protocol version (`SMFI_PROT_VERSION`); Postfix ≥ 2.6 offers it.
pub const PROTOCOL_VERSION: u32 = 6;
/// The oldest MTA protocol version a milter can talk to (libmilter aborts below 2).
pub const MIN_PROTOCOL_VERSION: u32 = 2;
/// Largest body chunk the MTA sends and the size body replacements are split at
/// (`MILTER_CHUNK_SIZE`).
pub const CHUNK_SIZE: usize = 65535;
/// Default cap on one frame's declared length (command byte + payload): 1 MiB. Postfix body
/// chunks are 65535 bytes, but one header can be 102,400 bytes (`header_size_limit`).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Command codes the MTA sends (`SMFIC_*`).
pub mod cmd {
    #![allow(missing_docs)]
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const QUIT_NC: u8 = b'K';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
    pub const UNKNOWN: u8 = b'U';
}

/// Response codes the milter sends (`SMFIR_*`).
pub mod resp {
    #![allow(missing_docs)]
    pub const ADDRCPT: u8 = b'+';
    pub const DELRCPT: u8 = b'-';
    pub const ADDRCPT_PAR: u8 = b'2';
    pub const SHUTDOWN: u8 = b'4';
    pub const ACCEPT: u8 = b'a';
    pub const REPLBODY: u8 = b'b';
    pub const CONTINUE: u8 = b'c';
    pub const DISCARD: u8 = b'd';
    pub const CHGFROM: u8 = b'e';
    pub const CONN_FAIL: u8 = b'f';
    pub const ADDHEADER: u8 = b'h';
    pub const INSHEADER: u8 = b'i';
    pub const SETSYMLIST: u8 = b'l';
    pub const CHGHEADER: u8 = b'm';
    pub const PROGRESS: u8 = b'p';
    pub const QUARANTINE: u8 = b'q';
    pub const REJECT: u8 = b'r';
    pub const SKIP: u8 = b's';
    pub const TEMPFAIL: u8 = b't';
    pub const REPLYCODE: u8 = b'y';
    pub const OPTNEG: u8 = b'O';
}

bitflags! {
    /// Actions the MTA allows and the milter requests (`SMFIF_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Actions: u32 {
        /// `SMFIF_ADDHDRS`: add and insert headers.
        const ADD_HEADERS = 0x001;
        /// `SMFIF_CHGBODY`: replace the body.
        const CHANGE_BODY = 0x002;
        /// `SMFIF_ADDRCPT`: add recipients.
        const ADD_RCPT = 0x004;
        /// `SMFIF_DELRCPT`: delete recipients.
        const DELETE_RCPT = 0x008;
        /// `SMFIF_CHGHDRS`: change and delete headers.
        const CHANGE_HEADERS = 0x010;
        /// `SMFIF_QUARANTINE`: put the message on hold.
        const QUARANTINE = 0x020;
        /// `SMFIF_CHGFROM`: change the envelope sender.
        const CHANGE_FROM = 0x040;
        /// `SMFIF_ADDRCPT_PAR`: add recipients with ESMTP arguments.
        const ADD_RCPT_PAR = 0x080;
        /// `SMFIF_SETSYMLIST`: send macro lists in the negotiation reply.
        const SET_SYMLIST = 0x100;
        // Unknown bits an MTA may offer are kept, never requested.
        const _ = !0;
    }
}

impl Actions {
    /// `SMFI_V1_ACTS`: what an MTA that offers 0 is taken to allow.
    pub const V1: Actions = Actions::from_bits_retain(0x0F);
    /// `SMFI_V2_ACTS`.
    pub const V2: Actions = Actions::from_bits_retain(0x3F);
    /// `SMFI_CURR_ACTS`: everything protocol 6 defines (what Postfix offers).
    pub const CURRENT: Actions = Actions::from_bits_retain(0x1FF);
}

bitflags! {
    /// Protocol-step flags (`SMFIP_*`): steps not to send, replies not to expect, and extras.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Protocol: u32 {
        /// `SMFIP_NOCONNECT`.
        const NO_CONNECT = 0x0000_0001;
        /// `SMFIP_NOHELO`.
        const NO_HELO = 0x0000_0002;
        /// `SMFIP_NOMAIL`.
        const NO_MAIL = 0x0000_0004;
        /// `SMFIP_NORCPT`.
        const NO_RCPT = 0x0000_0008;
        /// `SMFIP_NOBODY`.
        const NO_BODY = 0x0000_0010;
        /// `SMFIP_NOHDRS`.
        const NO_HEADERS = 0x0000_0020;
        /// `SMFIP_NOEOH`.
        const NO_EOH = 0x0000_0040;
        /// `SMFIP_NR_HDR` (also `SMFIP_NOHREPL`): no reply to each header.
        const NR_HEADER = 0x0000_0080;
        /// `SMFIP_NOUNKNOWN`.
        const NO_UNKNOWN = 0x0000_0100;
        /// `SMFIP_NODATA`.
        const NO_DATA = 0x0000_0200;
        /// `SMFIP_SKIP`: the MTA understands `SMFIR_SKIP`.
        const SKIP = 0x0000_0400;
        /// `SMFIP_RCPT_REJ`: also send recipients the MTA rejected.
        const RCPT_REJ = 0x0000_0800;
        /// `SMFIP_NR_CONN`.
        const NR_CONNECT = 0x0000_1000;
        /// `SMFIP_NR_HELO`.
        const NR_HELO = 0x0000_2000;
        /// `SMFIP_NR_MAIL`.
        const NR_MAIL = 0x0000_4000;
        /// `SMFIP_NR_RCPT`.
        const NR_RCPT = 0x0000_8000;
        /// `SMFIP_NR_DATA`.
        const NR_DATA = 0x0001_0000;
        /// `SMFIP_NR_UNKN`.
        const NR_UNKNOWN = 0x0002_0000;
        /// `SMFIP_NR_EOH`.
        const NR_EOH = 0x0004_0000;
        /// `SMFIP_NR_BODY`.
        const NR_BODY = 0x0008_0000;
        /// `SMFIP_HDR_LEADSPC`: header values keep the space after the colon.
        const HEADER_LEADING_SPACE = 0x0010_0000;
        const _ = !0;
    }
}

impl Protocol {
    /// `SMFI_V1_PROT`: what an MTA that offers 0 is taken to support.
    pub const V1: Protocol = Protocol::from_bits_retain(0x3F);
    /// `SMFI_V2_PROT`.
    pub const V2: Protocol = Protocol::from_bits_retain(0x7F);
    /// `SMFI_CURR_PROT`: everything protocol 6 defines (what Postfix offers).
    pub const CURRENT: Protocol = Protocol::from_bits_retain(0x1F_FFFF);
    /// `SMFI_INTERNAL`: libmilter-internal bits (`SMFIP_MDS_*`), never requested.
    pub const INTERNAL: Protocol = Protocol::from_bits_retain(0x7000_0000);
}

/// Macro stage indexes used in `SMFIR_SETSYMLIST` (`SMFIM_*`). The order is frozen by the
/// protocol (EOM before EOH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum MacroStage {
    /// `SMFIM_CONNECT`.
    Connect = 0,
    /// `SMFIM_HELO`.
    Helo = 1,
    /// `SMFIM_ENVFROM`.
    EnvFrom = 2,
    /// `SMFIM_ENVRCPT`.
    EnvRcpt = 3,
    /// `SMFIM_DATA`.
    Data = 4,
    /// `SMFIM_EOM`.
    Eom = 5,
    /// `SMFIM_EOH`.
    Eoh = 6,
}

impl MacroStage {
    /// The stage for a `SMFIM_*` index.
    pub fn from_index(index: u32) -> Option<MacroStage> {
        Some(match index {
            0 => MacroStage::Connect,
            1 => MacroStage::Helo,
            2 => MacroStage::EnvFrom,
            3 => MacroStage::EnvRcpt,
            4 => MacroStage::Data,
            5 => MacroStage::Eom,
            6 => MacroStage::Eoh,
            _ => return None,
        })
    }
}

/// A protocol stage: the events a milter can be asked to see and answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// `SMFIC_CONNECT`.
    Connect,
    /// `SMFIC_HELO`.
    Helo,
    /// `SMFIC_MAIL`.
    Mail,
    /// `SMFIC_RCPT`.
    Rcpt,
    /// `SMFIC_DATA`.
    Data,
    /// `SMFIC_HEADER`.
    Header,
    /// `SMFIC_EOH`.
    Eoh,
    /// `SMFIC_BODY`.
    Body,
    /// `SMFIC_BODYEOB`: end of message, the only stage where edits are allowed.
    Eom,
    /// `SMFIC_UNKNOWN`.
    Unknown,
}

impl Stage {
    /// Every stage, in protocol order.
    pub const ALL: [Stage; 10] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::Header,
        Stage::Eoh,
        Stage::Body,
        Stage::Eom,
        Stage::Unknown,
    ];

    /// The "don't send this step" flag, if the protocol has one (EOM has none).
    pub fn no_flag(self) -> Option<Protocol> {
        Some(match self {
            Stage::Connect => Protocol::NO_CONNECT,
            Stage::Helo => Protocol::NO_HELO,
            Stage::Mail => Protocol::NO_MAIL,
            Stage::Rcpt => Protocol::NO_RCPT,
            Stage::Data => Protocol::NO_DATA,
            Stage::Header => Protocol::NO_HEADERS,
            Stage::Eoh => Protocol::NO_EOH,
            Stage::Body => Protocol::NO_BODY,
            Stage::Unknown => Protocol::NO_UNKNOWN,
            Stage::Eom => return None,
        })
    }

    /// The "no reply for this step" flag, if the protocol has one (EOM has none).
    pub fn no_reply_flag(self) -> Option<Protocol> {
        Some(match self {
            Stage::Connect => Protocol::NR_CONNECT,
            Stage::Helo => Protocol::NR_HELO,
            Stage::Mail => Protocol::NR_MAIL,
            Stage::Rcpt => Protocol::NR_RCPT,
            Stage::Data => Protocol::NR_DATA,
            Stage::Header => Protocol::NR_HEADER,
            Stage::Eoh => Protocol::NR_EOH,
            Stage::Body => Protocol::NR_BODY,
            Stage::Unknown => Protocol::NR_UNKNOWN,
            Stage::Eom => return None,
        })
    }

    /// The command code that carries this stage.
    pub fn command_code(self) -> u8 {
        match self {
            Stage::Connect => cmd::CONNECT,
            Stage::Helo => cmd::HELO,
            Stage::Mail => cmd::MAIL,
            Stage::Rcpt => cmd::RCPT,
            Stage::Data => cmd::DATA,
            Stage::Header => cmd::HEADER,
            Stage::Eoh => cmd::EOH,
            Stage::Body => cmd::BODY,
            Stage::Eom => cmd::BODYEOB,
            Stage::Unknown => cmd::UNKNOWN,
        }
    }

    /// The stage a command code carries, if it is a stage command.
    pub fn from_command_code(code: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.command_code() == code)
    }

    /// The lowest MTA protocol version that sends this stage (DATA needs 4, UNKNOWN 3,
    /// EOH 2).
    pub fn min_version(self) -> u32 {
        match self {
            Stage::Data => 4,
            Stage::Unknown => 3,
            _ => 2,
        }
    }

    /// Stages whose handler Postfix bounds by `milter_content_timeout` rather than
    /// `milter_command_timeout`.
    pub fn is_content(self) -> bool {
        matches!(self, Stage::Header | Stage::Eoh | Stage::Body | Stage::Eom)
    }

    /// A lower-case name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Header => "header",
            Stage::Eoh => "eoh",
            Stage::Body => "body",
            Stage::Eom => "eom",
            Stage::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Stage`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StageSet(u16);

impl StageSet {
    /// No stage.
    pub const EMPTY: StageSet = StageSet(0);
    /// Every stage.
    pub const ALL: StageSet = StageSet((1 << Stage::ALL.len()) - 1);

    fn bit(stage: Stage) -> u16 {
        1 << (stage as u16)
    }

    /// Whether `stage` is in the set.
    pub fn contains(self, stage: Stage) -> bool {
        self.0 & Self::bit(stage) != 0
    }

    /// The set with `stage` added.
    #[must_use]
    pub fn with(self, stage: Stage) -> StageSet {
        StageSet(self.0 | Self::bit(stage))
    }

    /// The set with `stage` removed.
    #[must_use]
    pub fn without(self, stage: Stage) -> StageSet {
        StageSet(self.0 & !Self::bit(stage))
    }

    /// Adds `stage`.
    pub fn insert(&mut self, stage: Stage) {
        *self = self.with(stage);
    }

    /// The stages in the set, in protocol order.
    pub fn iter(self) -> impl Iterator<Item = Stage> {
        Stage::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Stage> for StageSet {
    fn from_iter<T: IntoIterator<Item = Stage>>(iter: T) -> Self {
        iter.into_iter().fold(StageSet::EMPTY, StageSet::with)
    }
}
