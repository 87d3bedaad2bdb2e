//! Sans-IO codecs for the three protocols Postfix uses to hand a lookup or a policy decision
//! to an outside server: `socketmap:` tables, `tcp:` tables and SMTPD policy delegation.
//!
//! Every protocol module offers both sides as plain functions over a [`bytes::BytesMut`]:
//! the server side (`decode_request`, `encode_reply`) that wasmail's responders use, and the
//! client side (`encode_request`, `decode_reply`) that plays Postfix in tests and load
//! generators. A decoder takes exactly one message off the front of the buffer, returns
//! `Ok(None)` (consuming nothing) while the message is incomplete, and checks every declared
//! length and line length against its limit *before* waiting for, or reserving room for,
//! more bytes. Encoders never fail for server replies: a reply Postfix would refuse (too
//! long, control characters in a reason) is first made acceptable by `Reply::fit`, which
//! the encoder applies.
//!
//! # Layout
//! - [`netstring`]: `<decimal length>:<bytes>,` framing (cr.yp.to netstrings, Postfix
//!   netstring(3)), used by socketmap.
//! - [`socketmap`]: socketmap_table(5): netstring requests `name SPACE key`, replies
//!   `OK data` / `NOTFOUND ` / `TEMP reason` / `TIMEOUT reason` / `PERM reason`, at most
//!   [`socketmap::MAX_REPLY`] payload bytes.
//! - [`tcp`]: tcp_table(5): `get SPACE %-encoded-key NEWLINE` requests, `200`/`500`/`400`
//!   reply lines of at most [`tcp::MAX_LINE`] bytes, Postfix's `hex_quote` encoding.
//! - [`policy`]: SMTPD_POLICY_README: `name=value` lines ended by an empty line, answered by
//!   `action=...` and an empty line; [`policy::Limits`] bounds lines, size and attributes.
//! - `CodecError` and, per protocol, `ServerCodec` / `ClientCodec` (feature `tokio`):
//!   `tokio_util::codec::{Decoder, Encoder}` wrappers around the functions above.
//!
//! The crate does no I/O and no logging. Error messages quote peer bytes escaped and cut
//! to about 80 characters, so they are safe to log.

#[cfg(feature = "tokio")]
mod codec;
pub mod netstring;
pub mod policy;
pub mod socketmap;
pub mod tcp;
mod text;

#[doc(hidden)]
pub mod fuzzing;

#[cfg(feature = "tokio")]
pub use codec::CodecError;
