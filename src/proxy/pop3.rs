//! The POP3 front before login (AUTHORIZATION state), sans-IO: CAPA (RFC 2449), STLS
//! (RFC 2595), USER/PASS, AUTH PLAIN with an optional initial response (RFC 5034), NOOP
//! and QUIT, with the response codes of RFC 3206 (`[AUTH]`, `[SYS/TEMP]`).
//!
//! Limits: a line longer than `max_line` bytes ends the connection; after `max_bad`
//! invalid commands the connection is closed.

use bytes::BytesMut;

use super::sasl::{self, SaslError};
use super::{Action, FrontSession, LoginRequest, Protocol, Refusal, one_line};
use crate::registry::password::Secret;

pub use super::imap::{MAX_AUTH_FAILURES, Settings};

/// The AUTHORIZATION state of one POP3 connection.
#[derive(Debug)]
pub struct Session {
    settings: Settings,
    tls: bool,
    /// The name given with USER, waiting for PASS.
    user: Option<String>,
    /// An AUTH PLAIN is waiting for the client's response line.
    sasl: bool,
    bad: u32,
    failures: u32,
}

impl Session {
    /// A new session.
    pub fn new(settings: Settings) -> Session {
        Session {
            settings,
            tls: false,
            user: None,
            sasl: false,
            bad: 0,
            failures: 0,
        }
    }

    fn plaintext_ok(&self) -> bool {
        self.tls || self.settings.plaintext_before_tls
    }

    /// The CAPA response body (without the status line and the final dot).
    pub fn capa(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.plaintext_ok() {
            c.push("USER");
            c.push("SASL PLAIN");
        }
        if !self.tls && self.settings.tls_available {
            c.push("STLS");
        }
        c.extend(["RESP-CODES", "AUTH-RESP-CODE", "IMPLEMENTATION wasmail"]);
        c
    }

    fn err(&mut self, text: &str) -> Action {
        self.bad += 1;
        let out = format!("-ERR {text}\r\n").into_bytes();
        if self.bad >= self.settings.max_bad {
            let mut out = out;
            out.extend_from_slice(b"-ERR Too many invalid commands.\r\n");
            return Action::Close(out);
        }
        Action::Send(out)
    }

    fn plaintext_refused() -> Action {
        Action::Send(
            b"-ERR [AUTH] Plaintext authentication is disallowed without TLS.\r\n".to_vec(),
        )
    }

    fn command(&mut self, line: &[u8]) -> Action {
        let Ok(line) = std::str::from_utf8(line) else {
            return self.err("Invalid characters in command.");
        };
        if line.chars().any(|c| c.is_control()) {
            return self.err("Invalid characters in command.");
        }
        let (name, arg) = match line.split_once(' ') {
            Some((n, a)) => (n, Some(a)),
            None => (line, None),
        };
        let name = name.to_ascii_uppercase();
        match (name.as_str(), arg) {
            ("CAPA", None) => {
                let mut out = String::from("+OK Capability list follows\r\n");
                for c in self.capa() {
                    out.push_str(c);
                    out.push_str("\r\n");
                }
                out.push_str(".\r\n");
                Action::Send(out.into_bytes())
            }
            ("NOOP", None) => Action::Send(b"+OK\r\n".to_vec()),
            ("QUIT", None) => Action::Close(b"+OK Logging out.\r\n".to_vec()),
            ("STLS", None) => {
                if self.tls {
                    self.err("TLS is already active.")
                } else if !self.settings.tls_available {
                    self.err("STLS is not available.")
                } else {
                    self.user = None;
                    Action::StartTls(b"+OK Begin TLS negotiation now.\r\n".to_vec())
                }
            }
            ("USER", Some(user)) if !user.is_empty() => {
                if !self.plaintext_ok() {
                    return Self::plaintext_refused();
                }
                self.user = Some(user.to_string());
                Action::Send(b"+OK\r\n".to_vec())
            }
            ("PASS", Some(pass)) if !pass.is_empty() => {
                if !self.plaintext_ok() {
                    return Self::plaintext_refused();
                }
                let Some(user) = self.user.take() else {
                    return self.err("No user name given (send USER first).");
                };
                Action::Login(LoginRequest {
                    tag: String::new(),
                    user,
                    password: Secret::new(pass.to_string()),
                    mechanism: "USER",
                })
            }
            ("AUTH", None) => Action::Send(b"+OK\r\nPLAIN\r\n.\r\n".to_vec()),
            ("AUTH", Some(rest)) => {
                let (mech, ir) = match rest.split_once(' ') {
                    Some((m, ir)) => (m, Some(ir)),
                    None => (rest, None),
                };
                if !mech.eq_ignore_ascii_case("PLAIN") {
                    return Action::Send(
                        b"-ERR Unsupported authentication mechanism.\r\n".to_vec(),
                    );
                }
                if !self.plaintext_ok() {
                    return Self::plaintext_refused();
                }
                match ir {
                    Some(ir) => self.sasl_response(ir.as_bytes()),
                    None => {
                        self.sasl = true;
                        Action::Send(b"+ \r\n".to_vec())
                    }
                }
            }
            ("CAPA" | "NOOP" | "QUIT" | "STLS" | "USER" | "PASS", _) => {
                self.err("Invalid arguments.")
            }
            _ => self.err("Unknown command, or not valid before login."),
        }
    }

    fn sasl_response(&mut self, line: &[u8]) -> Action {
        if line == b"*" {
            return self.err("Authentication canceled.");
        }
        match sasl::decode_plain(line) {
            Ok((user, password)) => Action::Login(LoginRequest {
                tag: String::new(),
                user,
                password,
                mechanism: "PLAIN",
            }),
            Err(SaslError::Authzid) => self.refused("", &Refusal::BadCredentials),
            Err(e) => self.err(&format!("Invalid response: {e}.")),
        }
    }
}

impl FrontSession for Session {
    const PROTOCOL: Protocol = Protocol::Pop3;

    fn greeting(&self) -> Vec<u8> {
        b"+OK wasmail ready.\r\n".to_vec()
    }

    fn next(&mut self, buf: &mut BytesMut) -> Option<Action> {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > self.settings.max_line {
                buf.clear();
                return Some(Action::Close(b"-ERR Line too long.\r\n".to_vec()));
            }
            return None;
        };
        if nl + 1 > self.settings.max_line {
            buf.clear();
            return Some(Action::Close(b"-ERR Line too long.\r\n".to_vec()));
        }
        let raw = buf.split_to(nl + 1);
        let mut line = &raw[..nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if std::mem::take(&mut self.sasl) {
            return Some(self.sasl_response(line));
        }
        Some(self.command(line))
    }

    fn tls_started(&mut self) {
        self.tls = true;
        self.user = None;
        self.sasl = false;
    }

    fn refused(&mut self, _tag: &str, why: &Refusal) -> Action {
        self.failures += 1;
        let mut out = match why {
            Refusal::BadCredentials => "-ERR [AUTH] Authentication failed.\r\n".to_string(),
            Refusal::Denied(m) => format!("-ERR [AUTH] {}\r\n", one_line(m, 400)),
            Refusal::Tempfail => "-ERR [SYS/TEMP] Temporary failure, try again later.\r\n".into(),
        }
        .into_bytes();
        if self.failures >= MAX_AUTH_FAILURES {
            out.extend_from_slice(b"-ERR Too many failed logins.\r\n");
            return Action::Close(out);
        }
        Action::Send(out)
    }

    fn logged_in(&self, _tag: &str, worker: &str) -> Vec<u8> {
        format!("+OK {}\r\n", one_line(worker, 400)).into_bytes()
    }

    fn connect_refused(&self, why: &Refusal) -> Vec<u8> {
        match why {
            Refusal::Denied(m) => format!("-ERR {}\r\n", one_line(m, 400)).into_bytes(),
            _ => b"-ERR [SYS/TEMP] Temporary failure, try again later.\r\n".to_vec(),
        }
    }

    fn timed_out(&self) -> Vec<u8> {
        b"-ERR Disconnected for inactivity.\r\n".to_vec()
    }

    fn shutting_down(&self) -> Vec<u8> {
        b"-ERR Server shutting down.\r\n".to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(plaintext: bool) -> Session {
        Session::new(Settings {
            max_line: 100,
            max_bad: 3,
            tls_available: true,
            plaintext_before_tls: plaintext,
        })
    }

    fn feed(s: &mut Session, input: &[u8]) -> Vec<String> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(a) = s.next(&mut buf) {
            let (text, stop) = match a {
                Action::Send(b) => (String::from_utf8(b).unwrap(), false),
                Action::Close(b) => (format!("{}<close>", String::from_utf8(b).unwrap()), true),
                Action::StartTls(b) => (format!("{}<tls>", String::from_utf8(b).unwrap()), true),
                Action::Login(r) => (
                    format!("<login {} {} {}>", r.user, r.password.expose(), r.mechanism),
                    false,
                ),
            };
            out.push(text);
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn transcript_user_pass_and_capa() {
        let mut s = session(true);
        assert_eq!(s.greeting(), b"+OK wasmail ready.\r\n");
        let out = feed(
            &mut s,
            b"CAPA\r\nNOOP\r\nPASS early\r\nUSER bob@example.com\r\npass pw with space\r\n",
        );
        assert_eq!(
            out,
            [
                "+OK Capability list follows\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nIMPLEMENTATION wasmail\r\n.\r\n",
                "+OK\r\n",
                "-ERR No user name given (send USER first).\r\n",
                "+OK\r\n",
                "<login bob@example.com pw with space USER>",
            ]
        );
        assert_eq!(feed(&mut s, b"QUIT\r\n"), ["+OK Logging out.\r\n<close>"]);
    }

    #[test]
    fn plaintext_needs_tls_when_not_allowed() {
        let mut s = session(false);
        assert!(!s.capa().contains(&"USER"));
        let out = feed(&mut s, b"USER bob\r\nAUTH PLAIN AGJvYgBwdw==\r\nSTLS\r\n");
        assert!(out[0].starts_with("-ERR [AUTH] Plaintext"), "{out:?}");
        assert!(out[1].starts_with("-ERR [AUTH] Plaintext"), "{out:?}");
        assert_eq!(out[2], "+OK Begin TLS negotiation now.\r\n<tls>");
        s.tls_started();
        assert!(s.capa().contains(&"USER") && !s.capa().contains(&"STLS"));
        let out = feed(
            &mut s,
            b"AUTH PLAIN AGJvYgBwdw==\r\nAUTH PLAIN\r\nAGJvYgBwdw==\r\n",
        );
        assert_eq!(
            out,
            ["<login bob pw PLAIN>", "+ \r\n", "<login bob pw PLAIN>"]
        );
    }

    #[test]
    fn garbage_and_overlong_lines() {
        let mut s = session(true);
        let out = feed(&mut s, b"\x01\x02\r\nRETR 1\r\nHELLO\r\n");
        assert_eq!(
            out,
            [
                "-ERR Invalid characters in command.\r\n",
                "-ERR Unknown command, or not valid before login.\r\n",
                "-ERR Unknown command, or not valid before login.\r\n-ERR Too many invalid commands.\r\n<close>",
            ]
        );
        let mut s = session(true);
        assert_eq!(
            feed(&mut s, &[b'x'; 150]),
            ["-ERR Line too long.\r\n<close>"]
        );
    }

    #[test]
    fn refusals() {
        let mut s = session(true);
        let a = s.refused("", &Refusal::Denied("Go away".into()));
        assert!(matches!(&a, Action::Send(b) if b == b"-ERR [AUTH] Go away\r\n"));
        let a = s.refused("", &Refusal::Tempfail);
        assert!(matches!(&a, Action::Send(b) if b.starts_with(b"-ERR [SYS/TEMP]")));
        let a = s.refused("", &Refusal::BadCredentials);
        assert!(
            matches!(&a, Action::Close(b) if b.starts_with(b"-ERR [AUTH] Authentication failed."))
        );
        assert_eq!(s.logged_in("", "Logged in."), b"+OK Logged in.\r\n");
    }
}
