//! SASL PLAIN (RFC 4616) as the fronts and the worker login use it: the base64 message
//! `authzid NUL authcid NUL passwd`.
//!
//! Only an empty authorization identity, or one equal to the authentication identity, is
//! accepted: the fronts have no master users, so a client can never act as someone else.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::registry::password::Secret;

/// Why a PLAIN response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Not base64.
    #[error("the response is not valid base64")]
    Base64,
    /// Not `authzid NUL authcid NUL passwd`, or not UTF-8, or empty parts.
    #[error("the response is not a PLAIN message")]
    Malformed,
    /// An authorization identity other than the user (proxy authorization).
    #[error("authorizing as another user is not supported")]
    Authzid,
}

/// Decodes a base64 PLAIN response (`=` or an empty line is the empty response, which is
/// malformed for PLAIN) into the user and the password.
pub fn decode_plain(b64: &[u8]) -> Result<(String, Secret), SaslError> {
    let b64 = b64.trim_ascii();
    if b64.is_empty() || b64 == b"=" {
        return Err(SaslError::Malformed);
    }
    let raw = STANDARD.decode(b64).map_err(|_| SaslError::Base64)?;
    let raw = Secret::new(String::from_utf8(raw).map_err(|_| SaslError::Malformed)?);
    let mut parts = raw.expose().splitn(3, '\0');
    let (Some(authz), Some(user), Some(pass)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::Malformed);
    };
    if user.is_empty() || pass.is_empty() || pass.contains('\0') {
        return Err(SaslError::Malformed);
    }
    if !authz.is_empty() && authz != user {
        return Err(SaslError::Authzid);
    }
    Ok((user.to_string(), Secret::new(pass.to_string())))
}

/// The base64 PLAIN response for `user` and `password` (empty authzid). The result holds
/// the password: wrap or drop it promptly.
pub fn encode_plain(user: &str, password: &Secret) -> Secret {
    let mut raw = Vec::with_capacity(user.len() + password.expose().len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.expose().as_bytes());
    let out = STANDARD.encode(&raw);
    raw.fill(0);
    std::hint::black_box(&raw);
    Secret::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let enc = encode_plain("bob@example.com", &Secret::new("pw with spaces".into()));
        let (user, pass) = decode_plain(enc.expose().as_bytes()).unwrap();
        assert_eq!(user, "bob@example.com");
        assert_eq!(pass.expose(), "pw with spaces");
    }

    #[test]
    fn known_vector() {
        // "\0tim\0tanstaaftanstaaf" from RFC 4616 section 4.
        let (user, pass) = decode_plain(b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm").unwrap();
        assert_eq!((user.as_str(), pass.expose()), ("tim", "tanstaaftanstaaf"));
    }

    #[test]
    fn refusals() {
        assert_eq!(decode_plain(b"=").unwrap_err(), SaslError::Malformed);
        assert_eq!(decode_plain(b"!!!").unwrap_err(), SaslError::Base64);
        let b = |s: &[u8]| STANDARD.encode(s);
        assert_eq!(
            decode_plain(b(b"no-nuls").as_bytes()).unwrap_err(),
            SaslError::Malformed
        );
        assert_eq!(
            decode_plain(b(b"\0\0pw").as_bytes()).unwrap_err(),
            SaslError::Malformed
        );
        assert_eq!(
            decode_plain(b(b"admin\0bob\0pw").as_bytes()).unwrap_err(),
            SaslError::Authzid
        );
        assert!(decode_plain(b(b"bob\0bob\0pw").as_bytes()).is_ok());
        assert_eq!(
            decode_plain(b(b"\0bob\0\xff").as_bytes()).unwrap_err(),
            SaslError::Malformed
        );
    }
}
