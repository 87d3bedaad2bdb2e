//! Framing: `uint32 len` (big-endian, = 1 + payload length), one code byte, the payload.
//!
//! [`decode_frame`] checks the declared length against the cap *before* reserving any
//! memory, so a peer announcing 4 GiB costs nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// One frame: a command or response code and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command (`SMFIC_*`) or response (`SMFIR_*`) code.
    pub code: u8,
    /// The payload after the code byte.
    pub payload: Bytes,
}

/// A framing error: the stream cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length of 0: there is no code byte.
    #[error("frame with declared length 0 (no command byte)")]
    ZeroLength,
    /// The declared length exceeds the configured cap.
    #[error(
        "frame declares {declared} bytes, above the limit of {max} (first bytes {prefix:02x?})"
    )]
    TooLong {
        /// The declared length.
        declared: u32,
        /// The cap in force.
        max: usize,
        /// The four length bytes as received (ASCII here means a non-milter client, e.g. HTTP).
        prefix: [u8; 4],
    },
}

/// Takes one complete frame off the front of `src`.
///
/// Returns `Ok(None)` when more bytes are needed (having reserved room for the rest of a
/// frame whose length is known and within `max`). `max` bounds the declared length
/// (code byte + payload).
pub fn decode_frame(src: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    if src.len() < 4 {
        return Ok(None);
    }
    let prefix = [src[0], src[1], src[2], src[3]];
    let declared = u32::from_be_bytes(prefix);
    if declared == 0 {
        return Err(FrameError::ZeroLength);
    }
    if declared as usize > max {
        return Err(FrameError::TooLong {
            declared,
            max,
            prefix,
        });
    }
    let total = 4 + declared as usize;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    src.advance(4);
    let mut body = src.split_to(declared as usize);
    let code = body.get_u8();
    Ok(Some(Frame {
        code,
        payload: body.freeze(),
    }))
}

/// Appends one frame to `dst`.
///
/// # Panics
/// If the payload is longer than `u32::MAX - 1` bytes (callers split bodies long before).
pub fn encode_frame(code: u8, payload: &[u8], dst: &mut BytesMut) {
    let len = u32::try_from(payload.len() + 1).expect("milter frame payload over 4 GiB");
    dst.reserve(5 + payload.len());
    dst.put_u32(len);
    dst.put_u8(code);
    dst.put_slice(payload);
}

/// Starts a frame whose payload is written afterwards; finish it with [`finish_frame`].
pub(crate) fn begin_frame(code: u8, dst: &mut BytesMut) -> usize {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(code);
    start
}

/// Fills in the length of a frame begun with [`begin_frame`].
pub(crate) fn finish_frame(start: usize, dst: &mut BytesMut) {
    let len = u32::try_from(dst.len() - start - 4).expect("milter frame payload over 4 GiB");
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_more_until_complete_and_reserves() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, b'H', b'a'][..]);
        assert_eq!(decode_frame(&mut buf, 100), Ok(None));
        assert!(buf.capacity() >= 7);
        buf.put_u8(0);
        let frame = decode_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(frame.code, b'H');
        assert_eq!(&frame.payload[..], b"a\0");
        assert!(buf.is_empty());
    }

    #[test]
    fn zero_length_is_an_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut buf, 100), Err(FrameError::ZeroLength));
    }

    #[test]
    fn too_long_is_rejected_before_reserving() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.0\r\n"[..]);
        let cap_before = buf.capacity();
        match decode_frame(&mut buf, 1 << 20) {
            Err(FrameError::TooLong {
                declared, prefix, ..
            }) => {
                assert_eq!(declared, 0x4745_5420);
                assert_eq!(&prefix, b"GET ");
            }
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn length_exactly_at_cap_is_accepted() {
        let mut buf = BytesMut::new();
        encode_frame(b'B', &[7u8; 9], &mut buf);
        assert!(decode_frame(&mut buf, 10).unwrap().is_some());
        encode_frame(b'B', &[7u8; 10], &mut buf);
        assert!(matches!(
            decode_frame(&mut buf, 10),
            Err(FrameError::TooLong { declared: 11, .. })
        ));
    }

    #[test]
    fn begin_finish_matches_encode() {
        let mut a = BytesMut::new();
        encode_frame(b'x', b"hello", &mut a);
        let mut b = BytesMut::new();
        let start = begin_frame(b'x', &mut b);
        b.put_slice(b"hello");
        finish_frame(start, &mut b);
        assert_eq!(a, b);
    }
}
