//! Dovecot's script-login (post-login) protocol, sans-IO.
//!
//! After a login, the imap/pop3 process connects to the post-login socket, passes the
//! client connection's fd (SCM_RIGHTS) and sends two lines:
//!
//! ```text
//! VERSION\tscript-login\t1\t0\n
//! <local_ip>\t<remote_ip>\t<username>\t<userdb k=v>\t...\n
//! ```
//!
//! The answer `<username>\t<k=v>\t...\n` replaces the session's user name and userdb
//! fields; closing without an answer denies the login. Fields are tab-escaped: `\x01`
//! followed by `1`, `0`, `t`, `r` or `n` stands for `\x01`, NUL, TAB, CR or LF.

use super::RequestError;

/// A decoded post-login request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostLogin {
    /// Local IP of the client connection (may be empty).
    pub local_ip: String,
    /// Client IP (may be empty).
    pub remote_ip: String,
    /// The user name after authentication.
    pub user: String,
    /// The userdb fields, in order, as `(name, value)`.
    pub fields: Vec<(String, String)>,
}

/// The protocol line Dovecot sends first.
const VERSION_PREFIX: &str = "VERSION\tscript-login\t1\t";

/// Tries to decode a complete request from `buf`: Ok(None) when more bytes are needed.
pub fn decode(buf: &[u8]) -> Result<Option<PostLogin>, RequestError> {
    let Some(first) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let version = std::str::from_utf8(&buf[..first])
        .map_err(|_| RequestError::Invalid("VERSION line is not UTF-8".into()))?;
    if !version.starts_with(VERSION_PREFIX) {
        return Err(RequestError::Invalid(format!(
            "expected `VERSION\\tscript-login\\t1\\t..`, got {:?}",
            version.chars().take(60).collect::<String>()
        )));
    }
    let rest = &buf[first + 1..];
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&rest[..end])
        .map_err(|_| RequestError::Invalid("request line is not UTF-8".into()))?;
    let mut parts = line.split('\t').map(unescape);
    let mut next = || parts.next().transpose();
    let local_ip = next()?.unwrap_or_default();
    let remote_ip = next()?.unwrap_or_default();
    let user = next()?.unwrap_or_default();
    if user.is_empty() {
        return Err(RequestError::Invalid("no user name in the request".into()));
    }
    let mut fields = Vec::new();
    while let Some(f) = next()? {
        if f.is_empty() {
            continue;
        }
        let (k, v) = f.split_once('=').unwrap_or((&f, ""));
        fields.push((k.to_string(), v.to_string()));
    }
    Ok(Some(PostLogin {
        local_ip,
        remote_ip,
        user,
        fields,
    }))
}

/// Applies rewrites: `user` replaces the user name; any other name replaces that userdb
/// field (or adds it); an empty value removes the field.
pub fn apply(req: &mut PostLogin, rewrites: &[(String, String)]) {
    for (k, v) in rewrites {
        if k == "user" {
            if !v.is_empty() {
                req.user = v.clone();
            }
            continue;
        }
        if v.is_empty() {
            req.fields.retain(|(n, _)| n != k);
        } else if let Some(slot) = req.fields.iter_mut().find(|(n, _)| n == k) {
            slot.1 = v.clone();
        } else {
            req.fields.push((k.clone(), v.clone()));
        }
    }
}

/// The answer line: user name and fields, tab-escaped.
pub fn encode_reply(user: &str, fields: &[(String, String)]) -> Vec<u8> {
    let mut out = escape(user);
    for (k, v) in fields {
        out.push('\t');
        out.push_str(&escape(&format!("{k}={v}")));
    }
    out.push('\n');
    out.into_bytes()
}

fn unescape(s: &str) -> Result<String, RequestError> {
    if !s.contains('\x01') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('1') => '\x01',
            Some('0') => '\0',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('n') => '\n',
            _ => return Err(RequestError::Invalid("bad \\x01 escape".into())),
        });
    }
    Ok(out)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\x01' => out.push_str("\x011"),
            '\0' => out.push_str("\x010"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEASURED: &[u8] = b"VERSION\tscript-login\t1\t0\n127.0.0.1\t127.0.0.1\talice@example.test\tuid=5000\tgid=995\thome=/srv/mailtest/mail/example.test/alice\tauth_mech=PLAIN\tauth_token=51c9\n";

    #[test]
    fn decodes_the_measured_request_in_pieces() {
        for cut in 0..MEASURED.len() {
            assert_eq!(decode(&MEASURED[..cut]).unwrap(), None, "cut at {cut}");
        }
        let r = decode(MEASURED).unwrap().unwrap();
        assert_eq!(r.user, "alice@example.test");
        assert_eq!(
            (r.local_ip.as_str(), r.remote_ip.as_str()),
            ("127.0.0.1", "127.0.0.1")
        );
        assert_eq!(r.fields.len(), 5);
        assert_eq!(
            r.fields[2],
            (
                "home".into(),
                "/srv/mailtest/mail/example.test/alice".into()
            )
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(decode(b"HELLO\n").is_err());
        assert!(decode(b"VERSION\tscript-login\t1\t0\n1.2.3.4\t1.2.3.4\t\n").is_err());
        assert!(decode(b"VERSION\tscript-login\t1\t0\n1\t2\tu\tbad=\x01x\n").is_err());
        assert!(decode(b"VERSION\tscript-login\t1\t0\n1\t2\t\xff\n").is_err());
    }

    #[test]
    fn rewrites_and_escaping_round_trip() {
        let mut r = decode(MEASURED).unwrap().unwrap();
        apply(
            &mut r,
            &[
                ("home".into(), "/new\thome".into()),
                ("plugin/x_worker".into(), "w1".into()),
                ("auth_token".into(), String::new()),
                ("user".into(), "Alice@Example.test".into()),
            ],
        );
        let line = encode_reply(&r.user, &r.fields);
        assert!(line.ends_with(b"\n") && !line[..line.len() - 1].contains(&b'\n'));
        // Decode the reply as Dovecot would (same escaping, fields after the user).
        let mut again = b"VERSION\tscript-login\t1\t0\n1\t2\t".to_vec();
        again.extend_from_slice(&line);
        let back = decode(&again).unwrap().unwrap();
        assert_eq!(back.local_ip, "1");
        // The user was the first field of the reply line: shift by hand.
        assert_eq!(back.remote_ip, "2");
        assert_eq!(back.user, "Alice@Example.test");
        assert!(back.fields.contains(&("home".into(), "/new\thome".into())));
        assert!(
            back.fields
                .contains(&("plugin/x_worker".into(), "w1".into()))
        );
        assert!(!back.fields.iter().any(|(k, _)| k == "auth_token"));
    }
}
