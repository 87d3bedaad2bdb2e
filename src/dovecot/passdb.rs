//! The passdb endpoint's protocol (sans-IO), spoken by the Lua passdb script in
//! `docs/dovecot-passdb.lua` (Dovecot's `dovecot.http` client).
//!
//! Request: `POST /passdb` with an `application/x-www-form-urlencoded` body: `user`,
//! `password`, and for the logs `service`, `remote_ip`, `local_ip`. Answer: the HTTP
//! status carries the result, which the script maps to a `PASSDB_RESULT_*`:
//!
//! | status | result | body |
//! |---|---|---|
//! | 200 | `OK` | passdb fields, `k=v` separated by spaces (`user=alice@example.com`) |
//! | 403 | `PASSWORD_MISMATCH` | reason |
//! | 404 | `USER_UNKNOWN` | reason |
//! | 503 | `INTERNAL_FAILURE` | reason |

use super::RequestError;
use crate::registry::password::Secret;

/// A password verification request.
#[derive(Debug)]
pub struct VerifyRequest {
    /// The user name as Dovecot has it (after `auth_username_format`).
    pub user: String,
    /// The password (never printed).
    pub password: Secret,
    /// `imap`, `pop3`, ... (logs only).
    pub service: String,
    /// Client IP (logs only).
    pub remote_ip: String,
}

/// Parses a form body.
pub fn parse(body: &[u8]) -> Result<VerifyRequest, RequestError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| RequestError::Invalid("the body is not UTF-8".into()))?;
    let mut user = None;
    let mut password = None;
    let mut service = String::new();
    let mut remote_ip = String::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)?;
        match k {
            "user" => user = Some(v),
            "password" => password = Some(Secret::new(v)),
            "service" => service = v,
            "remote_ip" => remote_ip = v,
            _ => {}
        }
    }
    let user = user
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .ok_or_else(|| RequestError::Invalid("missing `user`".into()))?;
    let password = password.ok_or_else(|| RequestError::Invalid("missing `password`".into()))?;
    Ok(VerifyRequest {
        user,
        password,
        service,
        remote_ip,
    })
}

/// Decodes `%XX` and `+` (form encoding); the result must be UTF-8.
pub fn percent_decode(s: &str) -> Result<String, RequestError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| RequestError::Invalid("bad %-escape in the body".into()))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| RequestError::Invalid("a value is not UTF-8".into()))
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The password matches; the fields go back to Dovecot.
    Ok(Vec<(String, String)>),
    /// Wrong password (or a mailbox that cannot log in).
    Mismatch,
    /// No such mailbox.
    Unknown,
    /// The registry could not answer.
    Unavailable(String),
}

/// HTTP status and body for a verdict. Fields whose name or value would break Dovecot's
/// space-separated `k=v` list are left out.
pub fn encode(verdict: &Verdict) -> (u16, String) {
    match verdict {
        Verdict::Ok(fields) => {
            let body = fields
                .iter()
                .filter(|(k, v)| field_ok(k, v))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            (200, body)
        }
        Verdict::Mismatch => (403, "password mismatch".into()),
        Verdict::Unknown => (404, "unknown user".into()),
        Verdict::Unavailable(why) => (503, why.clone()),
    }
}

fn field_ok(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/' | b'.'))
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_form() {
        let r = parse(b"user=alice%40example.com&password=p%26ss+w%C3%B6rd%3D&service=imap&remote_ip=127.0.0.1&x=y")
            .unwrap();
        assert_eq!(r.user, "alice@example.com");
        assert_eq!(r.password.expose(), "p&ss w\u{f6}rd=");
        assert_eq!(
            (r.service.as_str(), r.remote_ip.as_str()),
            ("imap", "127.0.0.1")
        );
        assert!(!format!("{r:?}").contains("p&ss"));
        // An empty password is a password (it will not match).
        assert_eq!(parse(b"user=a&password=").unwrap().password.expose(), "");
    }

    #[test]
    fn bad_forms_are_refused() {
        for body in [
            &b"password=x"[..],
            b"user=&password=x",
            b"user=a",
            b"user=%zz&password=x",
            b"user=%4&password=x",
            b"user=%ff&password=x",
            b"\xff\xfe",
        ] {
            assert!(parse(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn verdicts_encode() {
        let ok = Verdict::Ok(vec![
            ("user".into(), "a@b".into()),
            ("bad field".into(), "x".into()),
            ("proxy".into(), "y".into()),
            ("note".into(), "two words".into()),
        ]);
        assert_eq!(encode(&ok), (200, "user=a@b proxy=y".into()));
        assert_eq!(encode(&Verdict::Mismatch).0, 403);
        assert_eq!(encode(&Verdict::Unknown).0, 404);
        assert_eq!(
            encode(&Verdict::Unavailable("db".into())),
            (503, "db".into())
        );
    }
}
