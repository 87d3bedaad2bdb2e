//! Netstrings: `<decimal length>:<bytes>,` (D. J. Bernstein, cr.yp.to/proto/netstrings.txt).
//!
//! socketmap_table(5) sends every request and every reply as one netstring. Postfix's
//! reader (`src/util/netstring.c`, `netstring_get`) parses the length digit by digit, then
//! refuses a length above the caller's limit before reading the payload (the socketmap
//! client passes 100000 for replies), then requires the `,`.
//!
//! [`decode`] is stricter than Postfix where the netstring definition is: no leading zeros
//! (`"0"` alone is fine), at most [`MAX_DIGITS`] digits, digits only before the `:`. The
//! length is compared with the limit as each digit arrives, so a peer announcing a huge
//! payload is refused before any of it is buffered or any room reserved.

use std::fmt::Write as _;

use bytes::{Buf, Bytes, BytesMut};

/// Length digits accepted at most (netstrings up to 9 999 999 999 bytes).
pub const MAX_DIGITS: usize = 10;

/// Why a netstring cannot be read: the stream is out of step and must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The length starts with `0` and has more digits.
    #[error("netstring length has a leading zero")]
    LeadingZero,
    /// The stream starts with `:`.
    #[error("netstring length is empty (':' before any digit)")]
    EmptyLength,
    /// A byte other than a digit or `:` in the length.
    #[error(
        "netstring length has byte {byte:#04x} at offset {offset} where a digit or ':' belongs"
    )]
    NotDigit {
        /// The offending byte.
        byte: u8,
        /// Its offset from the start of the netstring.
        offset: usize,
    },
    /// More than [`MAX_DIGITS`] digits.
    #[error("netstring length has more than {MAX_DIGITS} digits")]
    TooManyDigits,
    /// The length exceeds the limit (detected as soon as the digits read so far exceed it,
    /// so `declared` is a lower bound).
    #[error("netstring declares at least {declared} bytes, above the limit of {max}")]
    TooLong {
        /// The length read so far.
        declared: u64,
        /// The limit in force.
        max: usize,
    },
    /// The payload is not followed by `,`.
    #[error("netstring payload of {len} bytes is followed by byte {found:#04x} instead of ','")]
    MissingComma {
        /// The declared payload length.
        len: usize,
        /// The byte found where the `,` belongs.
        found: u8,
    },
}

/// Takes one netstring off the front of `buf` and returns its payload.
///
/// `Ok(None)`: more bytes are needed; nothing was consumed (room for the rest of a
/// netstring whose length is known and within `max_len` has been reserved). On error
/// nothing is consumed either.
pub fn decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<Bytes>, Error> {
    let max = u64::try_from(max_len).unwrap_or(u64::MAX);
    let mut len: u64 = 0;
    let mut digits = 0;
    loop {
        let Some(&b) = buf.get(digits) else {
            return Ok(None);
        };
        match b {
            b':' if digits == 0 => return Err(Error::EmptyLength),
            b':' => break,
            b'0'..=b'9' => {
                if digits == 1 && buf[0] == b'0' {
                    return Err(Error::LeadingZero);
                }
                if digits == MAX_DIGITS {
                    return Err(Error::TooManyDigits);
                }
                len = len * 10 + u64::from(b - b'0');
                digits += 1;
                if len > max {
                    return Err(Error::TooLong {
                        declared: len,
                        max: max_len,
                    });
                }
            }
            _ => {
                return Err(Error::NotDigit {
                    byte: b,
                    offset: digits,
                });
            }
        }
    }
    // `len <= max_len`, so it fits a usize.
    let len = usize::try_from(len).expect("length within max_len");
    let total = digits + 1 + len + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let found = buf[total - 1];
    if found != b',' {
        return Err(Error::MissingComma { len, found });
    }
    buf.advance(digits + 1);
    let payload = buf.split_to(len).freeze();
    buf.advance(1);
    Ok(Some(payload))
}

/// Appends `payload` as one netstring.
pub fn encode(payload: &[u8], out: &mut BytesMut) {
    encode_parts(&[payload], out);
}

/// Appends the concatenation of `parts` as one netstring, without joining them first.
pub fn encode_parts(parts: &[&[u8]], out: &mut BytesMut) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(MAX_DIGITS + 2 + len);
    write!(out, "{len}:").expect("writing to a BytesMut cannot fail");
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b",");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(bytes: &[u8], max: usize) -> (Result<Option<Bytes>, Error>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let r = decode(&mut buf, max);
        (r, buf)
    }

    #[test]
    fn decodes_one_and_leaves_the_rest() {
        let (r, rest) = dec(b"5:hello,0:,", 100);
        assert_eq!(r, Ok(Some(Bytes::from_static(b"hello"))));
        assert_eq!(&rest[..], b"0:,");
        let (r, rest) = dec(&rest, 100);
        assert_eq!(r, Ok(Some(Bytes::new())));
        assert!(rest.is_empty());
    }

    #[test]
    fn partial_input_consumes_nothing() {
        let whole = b"12:hello world!,";
        for cut in 0..whole.len() {
            let (r, rest) = dec(&whole[..cut], 100);
            assert_eq!(r, Ok(None), "cut at {cut}");
            assert_eq!(&rest[..], &whole[..cut]);
        }
    }

    #[test]
    fn reserves_room_for_a_known_length() {
        let mut buf = BytesMut::from(&b"1000:"[..]);
        assert_eq!(decode(&mut buf, 1000), Ok(None));
        assert!(buf.capacity() >= 1006);
    }

    #[test]
    fn too_long_is_refused_before_the_payload_arrives() {
        let mut buf = BytesMut::from(&b"100001:"[..]);
        let cap = buf.capacity();
        assert_eq!(
            decode(&mut buf, 100_000),
            Err(Error::TooLong {
                declared: 100_001,
                max: 100_000
            })
        );
        assert_eq!(buf.capacity(), cap);
        // Already refused while the digits are still arriving.
        assert!(matches!(
            dec(b"999999", 100_000).0,
            Err(Error::TooLong {
                declared: 999_999,
                ..
            })
        ));
        // Exactly at the limit is fine.
        assert_eq!(dec(b"3:abc,", 3).0, Ok(Some(Bytes::from_static(b"abc"))));
        assert!(matches!(dec(b"4:abcd,", 3).0, Err(Error::TooLong { .. })));
    }

    #[test]
    fn malformed_lengths() {
        assert_eq!(dec(b"05:hello,", 100).0, Err(Error::LeadingZero));
        assert_eq!(dec(b"00:,", 100).0, Err(Error::LeadingZero));
        assert_eq!(dec(b":,", 100).0, Err(Error::EmptyLength));
        assert_eq!(
            dec(b"1x:a,", 100).0,
            Err(Error::NotDigit {
                byte: b'x',
                offset: 1
            })
        );
        assert_eq!(
            dec(b"-1:a,", 100).0,
            Err(Error::NotDigit {
                byte: b'-',
                offset: 0
            })
        );
        assert_eq!(dec(b"00000000000", usize::MAX).0, Err(Error::LeadingZero));
        assert_eq!(
            dec(b"12345678901:", usize::MAX).0,
            Err(Error::TooManyDigits)
        );
        // Ten digits are allowed (only the limit refuses them).
        assert_eq!(dec(b"1234567890", usize::MAX).0, Ok(None));
    }

    #[test]
    fn missing_comma() {
        assert_eq!(
            dec(b"3:abc;", 100).0,
            Err(Error::MissingComma {
                len: 3,
                found: b';'
            })
        );
        assert_eq!(
            dec(b"3:abcd,", 100).0,
            Err(Error::MissingComma {
                len: 3,
                found: b'd'
            })
        );
    }

    #[test]
    fn encodes() {
        let mut out = BytesMut::new();
        encode(b"hello", &mut out);
        encode(b"", &mut out);
        encode_parts(&[b"ab", b" ", b"cd"], &mut out);
        assert_eq!(&out[..], b"5:hello,0:,5:ab cd,");
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert_eq!(
            Error::TooLong {
                declared: 200_000,
                max: 100_000
            }
            .to_string(),
            "netstring declares at least 200000 bytes, above the limit of 100000"
        );
        assert_eq!(
            Error::NotDigit {
                byte: b'G',
                offset: 0
            }
            .to_string(),
            "netstring length has byte 0x47 at offset 0 where a digit or ':' belongs"
        );
    }
}
