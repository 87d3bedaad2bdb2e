//! The Sendmail milter protocol, version 6 as Postfix speaks it: a sans-IO core and an
//! optional tokio driver.
//!
//! # Layout
//! - [`frame`]: `uint32 length · code · payload` framing; lengths are checked against a
//!   cap before any allocation.
//! - [`command`]: what the MTA sends ([`Command`]), decoded and encoded.
//! - [`response`]: what the milter sends ([`Response`]: [`Action`]s, [`Modification`]s,
//!   progress and the negotiation reply with macro lists).
//! - [`reply`]: validated `SMFIR_REPLYCODE` texts ([`ReplyCode`]).
//! - [`flags`]: `SMFIF_*` [`Actions`], `SMFIP_*` [`Protocol`] flags, [`Stage`]s.
//! - [`negotiate`]: option negotiation from the MTA's offer and the handler's [`Needs`].
//! - [`macros`]: the per-stage macro store with libmilter's clearing rules.
//! - [`session`]: the server state machine ([`ServerSession`]): which events reach the
//!   handler, which replies the MTA gets, in one buffer per stage.
//! - [`handler`]: the [`Milter`] trait services implement, one method per stage.
//! - [`client`]: the MTA side's bookkeeping (which commands are sent, which get replies).
//! - `net` (feature `tokio`): listeners (`unix:`, `inet:HOST:PORT`, `inet:PORT@HOST`,
//!   `inet6:`), the accept loop with a connection limit, the per-connection driver
//!   (idle timeout, handler deadlines, automatic `SMFIR_PROGRESS`, `TCP_NODELAY`, one write
//!   per stage, `TCP_QUICKACK` re-armed before reads) and an async client.
//!
//! The core does no I/O and no logging; the driver reports through its factory trait.

pub mod client;
pub mod command;
pub mod flags;
pub mod frame;
pub mod handler;
pub mod macros;
pub mod negotiate;
#[cfg(feature = "tokio")]
pub mod net;
pub mod reply;
pub mod response;
pub mod session;
mod wire;

#[doc(hidden)]
pub mod fuzzing;

pub use command::{Command, Connect, Envelope, Family, OptNeg};
pub use flags::{Actions, CHUNK_SIZE, DEFAULT_MAX_FRAME, MacroStage, Protocol, Stage, StageSet};
pub use frame::{Frame, FrameError, decode_frame, encode_frame};
pub use handler::{Context, Milter};
pub use macros::Macros;
pub use negotiate::{Agreement, Needs, NegotiationError};
pub use reply::{ReplyCode, ReplyError};
pub use response::{Action, Modification, Negotiated, Response};
pub use session::{
    Call, Dispatch, Event, ProtocolError, RespondError, ServerSession, SessionOptions,
};
pub use wire::DecodeError;
