//! Payload primitives shared by the command and response codecs: NUL-terminated strings,
//! argv lists and network-order integers, plus the decode error type.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::reply::ReplyError;

/// Why a frame's payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A code byte that is not a known command or response.
    #[error("unknown code {:?} (0x{:02x})", char::from(*.0), .0)]
    UnknownCode(u8),
    /// The payload ends before a required field.
    #[error("{what}: payload truncated")]
    Truncated {
        /// The field that is missing.
        what: &'static str,
    },
    /// A string runs to the end of the payload without its terminating NUL.
    #[error("{what}: string without terminating NUL")]
    MissingNul {
        /// The field.
        what: &'static str,
    },
    /// A payload where none is allowed, or bytes after the last field.
    #[error("{what}: {len} unexpected trailing bytes")]
    TrailingData {
        /// The command or response.
        what: &'static str,
        /// How many bytes were left over.
        len: usize,
    },
    /// A CONNECT family byte other than `U`, `L`, `4`, `6`.
    #[error("connect: unknown address family {:?}", char::from(*.0))]
    BadFamily(u8),
    /// A SETSYMLIST stage index outside 0..=6.
    #[error("option negotiation: macro list for unknown stage {0}")]
    BadMacroStage(u32),
    /// A REPLYCODE text that is not a valid SMTP reply.
    #[error("reply code: {0}")]
    Reply(#[from] ReplyError),
}

/// Reads a NUL-terminated string off the front of `buf` (without the NUL).
pub(crate) fn take_cstr(buf: &mut Bytes, what: &'static str) -> Result<Bytes, DecodeError> {
    match memchr0(buf) {
        Some(end) => {
            let s = buf.split_to(end);
            buf.advance(1);
            Ok(s)
        }
        None if buf.is_empty() => Err(DecodeError::Truncated { what }),
        None => Err(DecodeError::MissingNul { what }),
    }
}

/// Reads NUL-terminated strings to the end of `buf`.
pub(crate) fn take_argv(mut buf: Bytes, what: &'static str) -> Result<Vec<Bytes>, DecodeError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(take_cstr(&mut buf, what)?);
    }
    Ok(out)
}

pub(crate) fn take_u32(buf: &mut Bytes, what: &'static str) -> Result<u32, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Truncated { what });
    }
    Ok(buf.get_u32())
}

pub(crate) fn take_u16(buf: &mut Bytes, what: &'static str) -> Result<u16, DecodeError> {
    if buf.len() < 2 {
        return Err(DecodeError::Truncated { what });
    }
    Ok(buf.get_u16())
}

pub(crate) fn take_u8(buf: &mut Bytes, what: &'static str) -> Result<u8, DecodeError> {
    if buf.is_empty() {
        return Err(DecodeError::Truncated { what });
    }
    Ok(buf.get_u8())
}

pub(crate) fn expect_empty(buf: &Bytes, what: &'static str) -> Result<(), DecodeError> {
    if buf.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingData {
            what,
            len: buf.len(),
        })
    }
}

pub(crate) fn put_cstr(dst: &mut BytesMut, s: &[u8]) {
    dst.put_slice(s);
    dst.put_u8(0);
}

fn memchr0(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == 0)
}
