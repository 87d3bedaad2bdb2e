//! The IMAP4rev1 front before login, sans-IO: command framing with literals (RFC 3501
//! synchronizing `{n}` and RFC 7888 `{n+}`), a small tokenizer, and the not-authenticated
//! state's commands: CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN and AUTHENTICATE PLAIN
//! (with SASL-IR, RFC 4959).
//!
//! Limits: a command (its lines and literals together) may hold at most `max_line` bytes.
//! A longer line cannot be resynchronised and ends the connection with `* BYE`; a
//! synchronizing literal that would exceed the limit is refused with a tagged BAD before
//! the client sends it (the connection goes on); a non-synchronizing one ends the
//! connection. After `max_bad` invalid commands the connection is closed.

use bytes::BytesMut;

use super::sasl::{self, SaslError};
use super::{Action, FrontSession, LoginRequest, Protocol, Refusal, one_line};
use crate::registry::password::Secret;

/// Failed logins allowed on one connection; the next failure closes it.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// Fixed settings of a session.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest command in bytes (lines plus literals).
    pub max_line: usize,
    /// Invalid commands tolerated before the connection is closed.
    pub max_bad: u32,
    /// STARTTLS can be offered (a certificate is configured).
    pub tls_available: bool,
    /// Plaintext logins are allowed before TLS on this connection.
    pub plaintext_before_tls: bool,
}

/// One token of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An atom (tag, command name, NIL, mechanism...).
    Atom(String),
    /// A quoted string or a literal.
    Str(Vec<u8>),
    /// `(`
    Open,
    /// `)`
    Close,
}

/// A tokenized command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The tag.
    pub tag: String,
    /// The command name, upper-case.
    pub name: String,
    /// The arguments.
    pub args: Vec<Token>,
}

/// A line of a command and the literal that followed it (its `{n}` marker removed).
#[derive(Debug, Default)]
struct Piece {
    text: Vec<u8>,
    literal: Option<Vec<u8>>,
}

/// The not-authenticated IMAP state of one connection.
#[derive(Debug)]
pub struct Session {
    settings: Settings,
    tls: bool,
    pieces: Vec<Piece>,
    /// Bytes of the command being assembled.
    size: usize,
    /// Literal bytes still expected.
    literal: Option<usize>,
    /// The tag of an AUTHENTICATE waiting for the client's response line.
    sasl_tag: Option<String>,
    bad: u32,
    failures: u32,
}

impl Session {
    /// A new session.
    pub fn new(settings: Settings) -> Session {
        Session {
            settings,
            tls: false,
            pieces: Vec::new(),
            size: 0,
            literal: None,
            sasl_tag: None,
            bad: 0,
            failures: 0,
        }
    }

    fn plaintext_ok(&self) -> bool {
        self.tls || self.settings.plaintext_before_tls
    }

    /// The capability list of the not-authenticated state.
    pub fn capability(&self) -> String {
        let mut c = String::from("IMAP4rev1 SASL-IR LITERAL+ ID");
        if !self.tls && self.settings.tls_available {
            c.push_str(" STARTTLS");
        }
        if self.plaintext_ok() {
            c.push_str(" AUTH=PLAIN");
        } else {
            c.push_str(" LOGINDISABLED");
        }
        c
    }

    fn reset(&mut self) {
        self.pieces.clear();
        self.size = 0;
        self.literal = None;
    }

    /// A tagged BAD, counted; closes after too many.
    fn bad(&mut self, tag: &str, text: &str) -> Action {
        self.bad += 1;
        let tag = if tag.is_empty() { "*" } else { tag };
        let mut out = format!("{tag} BAD {text}\r\n").into_bytes();
        if self.bad >= self.settings.max_bad {
            out.extend_from_slice(b"* BYE Too many invalid IMAP commands.\r\n");
            return Action::Close(out);
        }
        Action::Send(out)
    }

    fn command(&mut self, pieces: Vec<Piece>) -> Action {
        let first_tag = pieces
            .first()
            .and_then(|p| tag_of(&p.text))
            .unwrap_or_default();
        let cmd = match parse(pieces) {
            Ok(c) => c,
            Err(e) => return self.bad(&first_tag, e),
        };
        let tag = cmd.tag.clone();
        match (cmd.name.as_str(), cmd.args.as_slice()) {
            ("CAPABILITY", []) => Action::Send(
                format!(
                    "* CAPABILITY {}\r\n{tag} OK Capability completed.\r\n",
                    self.capability()
                )
                .into_bytes(),
            ),
            ("NOOP", []) => Action::Send(format!("{tag} OK NOOP completed.\r\n").into_bytes()),
            ("LOGOUT", []) => Action::Close(
                format!("* BYE Logging out.\r\n{tag} OK Logout completed.\r\n").into_bytes(),
            ),
            ("ID", args) if valid_id(args) => Action::Send(
                format!("* ID (\"name\" \"wasmail\")\r\n{tag} OK ID completed.\r\n").into_bytes(),
            ),
            ("STARTTLS", []) => {
                if self.tls {
                    self.bad(&tag, "TLS is already active.")
                } else if !self.settings.tls_available {
                    self.bad(&tag, "STARTTLS is not available.")
                } else {
                    Action::StartTls(
                        format!("{tag} OK Begin TLS negotiation now.\r\n").into_bytes(),
                    )
                }
            }
            ("LOGIN", [user, pass]) => {
                let (Some(user), Some(pass)) = (astring(user), astring(pass)) else {
                    return self.bad(&tag, "LOGIN needs a user name and a password.");
                };
                if !self.plaintext_ok() {
                    return privacy_required(&tag);
                }
                Action::Login(LoginRequest {
                    tag,
                    user,
                    password: Secret::new(pass),
                    mechanism: "LOGIN",
                })
            }
            ("AUTHENTICATE", [Token::Atom(mech), rest @ ..]) if rest.len() <= 1 => {
                if !mech.eq_ignore_ascii_case("PLAIN") {
                    return Action::Send(
                        format!("{tag} NO Unsupported authentication mechanism.\r\n").into_bytes(),
                    );
                }
                if !self.plaintext_ok() {
                    return privacy_required(&tag);
                }
                match rest {
                    [Token::Atom(ir)] => self.sasl_response(tag, ir.as_bytes()),
                    [] => {
                        self.sasl_tag = Some(tag);
                        Action::Send(b"+ \r\n".to_vec())
                    }
                    _ => self.bad(&tag, "Invalid initial response."),
                }
            }
            (
                "CAPABILITY" | "NOOP" | "LOGOUT" | "ID" | "STARTTLS" | "LOGIN" | "AUTHENTICATE",
                _,
            ) => self.bad(&tag, "Invalid arguments."),
            _ => self.bad(&tag, "Unknown command, or not valid before login."),
        }
    }

    fn sasl_response(&mut self, tag: String, line: &[u8]) -> Action {
        if line == b"*" {
            return self.bad(&tag, "Authentication canceled.");
        }
        match sasl::decode_plain(line) {
            Ok((user, password)) => Action::Login(LoginRequest {
                tag,
                user,
                password,
                mechanism: "PLAIN",
            }),
            Err(SaslError::Authzid) => self.refused(&tag, &Refusal::BadCredentials),
            Err(e) => self.bad(&tag, &format!("Invalid response: {e}.")),
        }
    }
}

fn privacy_required(tag: &str) -> Action {
    Action::Send(
        format!(
            "{tag} NO [PRIVACYREQUIRED] Plaintext authentication is disallowed without TLS.\r\n"
        )
        .into_bytes(),
    )
}

impl FrontSession for Session {
    const PROTOCOL: Protocol = Protocol::Imap;

    fn greeting(&self) -> Vec<u8> {
        format!("* OK [CAPABILITY {}] wasmail ready.\r\n", self.capability()).into_bytes()
    }

    fn next(&mut self, buf: &mut BytesMut) -> Option<Action> {
        loop {
            if let Some(n) = self.literal {
                if buf.len() < n {
                    return None;
                }
                let data = buf.split_to(n).to_vec();
                if let Some(p) = self.pieces.last_mut() {
                    p.literal = Some(data);
                }
                self.literal = None;
                continue;
            }
            let room = self.settings.max_line.saturating_sub(self.size);
            let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > room {
                    buf.clear();
                    self.reset();
                    return Some(Action::Close(b"* BYE Line too long.\r\n".to_vec()));
                }
                return None;
            };
            if nl + 1 > room {
                buf.clear();
                self.reset();
                return Some(Action::Close(b"* BYE Line too long.\r\n".to_vec()));
            }
            let raw = buf.split_to(nl + 1);
            self.size += raw.len();
            let mut line = &raw[..nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if let Some(tag) = self.sasl_tag.take() {
                self.reset();
                return Some(self.sasl_response(tag, line));
            }
            if let Some((at, n, sync)) = literal_marker(line) {
                if self.size.saturating_add(n) > self.settings.max_line {
                    let tag = self
                        .pieces
                        .first()
                        .map_or(tag_of(line), |p| tag_of(&p.text))
                        .unwrap_or_default();
                    self.reset();
                    if !sync {
                        buf.clear();
                        return Some(Action::Close(b"* BYE Literal too large.\r\n".to_vec()));
                    }
                    return Some(self.bad(&tag, "Literal too large."));
                }
                self.size += n;
                self.pieces.push(Piece {
                    text: line[..at].to_vec(),
                    literal: None,
                });
                self.literal = Some(n);
                if sync {
                    return Some(Action::Send(b"+ Ready for literal data\r\n".to_vec()));
                }
                continue;
            }
            self.pieces.push(Piece {
                text: line.to_vec(),
                literal: None,
            });
            let pieces = std::mem::take(&mut self.pieces);
            self.reset();
            return Some(self.command(pieces));
        }
    }

    fn tls_started(&mut self) {
        self.tls = true;
        self.reset();
        self.sasl_tag = None;
    }

    fn refused(&mut self, tag: &str, why: &Refusal) -> Action {
        self.failures += 1;
        let text = match why {
            Refusal::BadCredentials => "[AUTHENTICATIONFAILED] Authentication failed.".into(),
            Refusal::Denied(m) => format!("[ALERT] {}", one_line(m, 400)),
            Refusal::Tempfail => "[UNAVAILABLE] Temporary failure, try again later.".into(),
        };
        let mut out = format!("{tag} NO {text}\r\n").into_bytes();
        if self.failures >= MAX_AUTH_FAILURES {
            out.extend_from_slice(b"* BYE Too many failed logins.\r\n");
            return Action::Close(out);
        }
        Action::Send(out)
    }

    fn logged_in(&self, tag: &str, worker: &str) -> Vec<u8> {
        format!("{tag} OK {}\r\n", one_line(worker, 8000)).into_bytes()
    }

    fn connect_refused(&self, why: &Refusal) -> Vec<u8> {
        match why {
            Refusal::Denied(m) => format!("* BYE {}\r\n", one_line(m, 400)).into_bytes(),
            _ => b"* BYE [UNAVAILABLE] Temporary failure, try again later.\r\n".to_vec(),
        }
    }

    fn timed_out(&self) -> Vec<u8> {
        b"* BYE Disconnected for inactivity.\r\n".to_vec()
    }

    fn shutting_down(&self) -> Vec<u8> {
        b"* BYE Server shutting down.\r\n".to_vec()
    }
}

/// `{n}` or `{n+}` at the end of `line`: (where the marker starts, n, synchronizing).
pub(crate) fn literal_marker(line: &[u8]) -> Option<(usize, usize, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let sync = match digits.strip_suffix(b"+") {
        Some(d) => {
            digits = d;
            false
        }
        None => true,
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((open, usize::try_from(n).unwrap_or(usize::MAX), sync))
}

/// The first word of a command line, if it looks like a tag.
fn tag_of(line: &[u8]) -> Option<String> {
    let word = line.split(|&b| b == b' ').next()?;
    (!word.is_empty() && word.iter().all(|&b| is_tag_char(b)))
        .then(|| String::from_utf8_lossy(word).into_owned())
}

fn is_tag_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !b"(){%*\"\\+]".contains(&b)
}

fn is_atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !b"(){%*\"\\".contains(&b)
}

/// Tokenizes the pieces of a command into tag, name and arguments.
pub fn parse_command(lines: &[(&[u8], Option<&[u8]>)]) -> Result<Command, &'static str> {
    parse(
        lines
            .iter()
            .map(|(t, l)| Piece {
                text: t.to_vec(),
                literal: l.map(<[u8]>::to_vec),
            })
            .collect(),
    )
}

fn parse(pieces: Vec<Piece>) -> Result<Command, &'static str> {
    let mut toks = Vec::new();
    for p in pieces {
        tokenize(&p.text, &mut toks)?;
        if let Some(l) = p.literal {
            toks.push(Token::Str(l));
        }
    }
    let mut it = toks.into_iter();
    let tag = match it.next() {
        Some(Token::Atom(t)) if t.bytes().all(is_tag_char) => t,
        _ => return Err("Missing or invalid tag."),
    };
    let name = match it.next() {
        Some(Token::Atom(n)) => n.to_ascii_uppercase(),
        _ => return Err("Missing command name."),
    };
    Ok(Command {
        tag,
        name,
        args: it.collect(),
    })
}

fn tokenize(text: &[u8], out: &mut Vec<Token>) -> Result<(), &'static str> {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b' ' => i += 1,
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b')' => {
                out.push(Token::Close);
                i += 1;
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match text.get(i) {
                        None => return Err("Unterminated quoted string."),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match text.get(i + 1) {
                            Some(&c @ (b'"' | b'\\')) => {
                                s.push(c);
                                i += 2;
                            }
                            _ => return Err("Invalid escape in quoted string."),
                        },
                        Some(&c) if c == 0 || c == b'\r' || c == b'\n' => {
                            return Err("Invalid character in quoted string.");
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Str(s));
            }
            _ => {
                let start = i;
                while i < text.len() && !matches!(text[i], b' ' | b'(' | b')') {
                    if !is_atom_char(text[i]) && text[i] != b']' {
                        return Err("Invalid characters in command.");
                    }
                    i += 1;
                }
                let atom = std::str::from_utf8(&text[start..i]).map_err(|_| "Invalid atom.")?;
                out.push(Token::Atom(atom.to_string()));
            }
        }
    }
    Ok(())
}

/// An astring argument as UTF-8 text.
fn astring(t: &Token) -> Option<String> {
    match t {
        Token::Atom(a) => Some(a.clone()),
        Token::Str(s) => String::from_utf8(s.clone()).ok(),
        _ => None,
    }
}

/// `NIL` or a parenthesised list of strings (RFC 2971), up to 30 pairs.
fn valid_id(args: &[Token]) -> bool {
    match args {
        [Token::Atom(nil)] => nil.eq_ignore_ascii_case("NIL"),
        [Token::Open, inner @ .., Token::Close] => {
            inner.len() <= 60
                && inner.iter().all(|t| match t {
                    Token::Str(_) => true,
                    Token::Atom(a) => a.eq_ignore_ascii_case("NIL"),
                    _ => false,
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(plaintext: bool) -> Session {
        Session::new(Settings {
            max_line: 200,
            max_bad: 3,
            tls_available: true,
            plaintext_before_tls: plaintext,
        })
    }

    /// Feeds `input` and returns every action's bytes (login requests as `LOGIN user
    /// pass mech tag`), until more input is needed.
    fn feed(s: &mut Session, input: &[u8]) -> Vec<String> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(a) = s.next(&mut buf) {
            out.push(match a {
                Action::Send(b) => String::from_utf8(b).unwrap(),
                Action::Close(b) => format!("{}<close>", String::from_utf8(b).unwrap()),
                Action::StartTls(b) => format!("{}<tls>", String::from_utf8(b).unwrap()),
                Action::Login(r) => format!(
                    "<login {} {} {} {}>",
                    r.user,
                    r.password.expose(),
                    r.mechanism,
                    r.tag
                ),
            });
            if out.last().unwrap().ends_with("<close>") || out.last().unwrap().ends_with("<tls>") {
                break;
            }
        }
        out
    }

    #[test]
    fn greeting_and_capability_follow_tls_and_plaintext_policy() {
        let s = session(true);
        let g = String::from_utf8(s.greeting()).unwrap();
        assert_eq!(
            g,
            "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS AUTH=PLAIN] wasmail ready.\r\n"
        );
        let mut s = session(false);
        assert!(s.capability().contains("LOGINDISABLED"));
        assert!(!s.capability().contains("AUTH=PLAIN"));
        let out = feed(&mut s, b"a LOGIN bob pw\r\nb AUTHENTICATE PLAIN\r\n");
        assert!(out[0].starts_with("a NO [PRIVACYREQUIRED]"), "{out:?}");
        assert!(out[1].starts_with("b NO [PRIVACYREQUIRED]"), "{out:?}");
        let out = feed(&mut s, b"c STARTTLS\r\nd NOOP\r\n");
        assert_eq!(out, ["c OK Begin TLS negotiation now.\r\n<tls>"]);
        s.tls_started();
        assert_eq!(s.capability(), "IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN");
        let out = feed(&mut s, b"e STARTTLS\r\nf login Bob \"p\\\"w\"\r\n");
        assert!(out[0].starts_with("e BAD TLS is already active"), "{out:?}");
        assert_eq!(out[1], "<login Bob p\"w LOGIN f>");
    }

    #[test]
    fn transcript_of_simple_commands() {
        let mut s = session(true);
        let out = feed(
            &mut s,
            b"1 capability\r\n2 NOOP\r\n3 ID (\"name\" \"imaplib\" \"version\" NIL)\r\n4 ID NIL\r\n5 LOGOUT\r\n6 NOOP\r\n",
        );
        assert_eq!(
            out,
            [
                "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS AUTH=PLAIN\r\n1 OK Capability completed.\r\n",
                "2 OK NOOP completed.\r\n",
                "* ID (\"name\" \"wasmail\")\r\n3 OK ID completed.\r\n",
                "* ID (\"name\" \"wasmail\")\r\n4 OK ID completed.\r\n",
                "* BYE Logging out.\r\n5 OK Logout completed.\r\n<close>",
            ]
        );
    }

    #[test]
    fn literals_sync_and_nonsync() {
        let mut s = session(true);
        let out = feed(&mut s, b"a LOGIN {3}\r\n");
        assert_eq!(out, ["+ Ready for literal data\r\n"]);
        let out = feed(&mut s, b"bob {5+}\r\np w\r\n\r\n");
        assert_eq!(out, ["<login bob p w\r\n LOGIN a>"]);
        // Split anywhere: the literal waits for its bytes.
        let mut buf = BytesMut::from(&b"b LOGIN x {4+}\r\nab"[..]);
        assert!(s.next(&mut buf).is_none());
        buf.extend_from_slice(b"cd\r\n");
        assert!(
            matches!(s.next(&mut buf), Some(Action::Login(r)) if r.password.expose() == "abcd")
        );
    }

    #[test]
    fn authenticate_plain_with_and_without_initial_response() {
        let mut s = session(true);
        let ir = "AGJvYkBleGFtcGxlLmNvbQBwdy1ib2I="; // \0bob@example.com\0pw-bob
        let out = feed(&mut s, format!("a AUTHENTICATE PLAIN {ir}\r\n").as_bytes());
        assert_eq!(out, ["<login bob@example.com pw-bob PLAIN a>"]);
        let out = feed(&mut s, b"b AUTHENTICATE plain\r\n");
        assert_eq!(out, ["+ \r\n"]);
        let out = feed(&mut s, format!("{ir}\r\n").as_bytes());
        assert_eq!(out, ["<login bob@example.com pw-bob PLAIN b>"]);
        let out = feed(&mut s, b"c AUTHENTICATE PLAIN\r\n*\r\n");
        assert_eq!(out, ["+ \r\n", "c BAD Authentication canceled.\r\n"]);
        let out = feed(&mut s, b"d AUTHENTICATE CRAM-MD5\r\n");
        assert_eq!(out, ["d NO Unsupported authentication mechanism.\r\n"]);
    }

    #[test]
    fn garbage_is_bad_and_too_much_closes() {
        let mut s = session(true);
        let out = feed(
            &mut s,
            b"\x00\xff\xfe garbage\r\n+ NOOP\r\na SELECT INBOX\r\n",
        );
        assert_eq!(
            out,
            [
                "* BAD Invalid characters in command.\r\n",
                "* BAD Missing or invalid tag.\r\n",
                "a BAD Unknown command, or not valid before login.\r\n* BYE Too many invalid IMAP commands.\r\n<close>",
            ]
        );
    }

    #[test]
    fn overlong_line_closes_and_overlong_literal_is_refused() {
        let mut s = session(true);
        let long = vec![b'a'; 250];
        let out = feed(&mut s, &long);
        assert_eq!(out, ["* BYE Line too long.\r\n<close>"]);

        let mut s = session(true);
        let out = feed(&mut s, b"a LOGIN {100000}\r\nb NOOP\r\n");
        assert_eq!(
            out,
            ["a BAD Literal too large.\r\n", "b OK NOOP completed.\r\n"]
        );
        let out = feed(&mut s, b"c LOGIN bob {100000+}\r\nxxxx");
        assert_eq!(out, ["* BYE Literal too large.\r\n<close>"]);
    }

    #[test]
    fn refusals_and_login_reply() {
        let mut s = session(true);
        let a = s.refused("a", &Refusal::BadCredentials);
        assert!(
            matches!(&a, Action::Send(b) if b == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        );
        let a = s.refused("b", &Refusal::Denied("No\r\nway".into()));
        assert!(
            matches!(&a, Action::Send(b) if b == b"b NO [ALERT] No  way\r\n"),
            "{a:?}"
        );
        let a = s.refused("c", &Refusal::Tempfail);
        assert!(
            matches!(&a, Action::Close(b) if b.starts_with(b"c NO [UNAVAILABLE]") && b.ends_with(b"* BYE Too many failed logins.\r\n"))
        );
        assert_eq!(
            s.logged_in("x", "[CAPABILITY IMAP4rev1 IDLE] Logged in"),
            b"x OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
        );
    }

    #[test]
    fn parse_command_tokens() {
        let c =
            parse_command(&[(b"t1 login", None), (b" ", Some(b"a b")), (b" \"x\"", None)]).unwrap();
        assert_eq!(c.tag, "t1");
        assert_eq!(c.name, "LOGIN");
        assert_eq!(
            c.args,
            [Token::Str(b"a b".to_vec()), Token::Str(b"x".to_vec())]
        );
        assert_eq!(literal_marker(b"a {12}"), Some((2, 12, true)));
        assert_eq!(literal_marker(b"a {0+}"), Some((2, 0, false)));
        assert_eq!(literal_marker(b"a {x}"), None);
        assert_eq!(literal_marker(b"a {99999999999}"), None);
    }
}
