//! Per-command IMAP hooks after login, sans-IO: the framing of the client→worker
//! direction into commands, and the response boundaries of the worker→client direction.
//!
//! Used only for sessions whose domain chain subscribes to `imap-command`; every other
//! session is spliced without looking at the bytes.
//!
//! # Client → worker: [`Framer`]
//! The framer cuts the client's bytes into command *heads* and bytes to pass on:
//! - a head is a command's first line, up to its line end; when the line ends with a
//!   literal marker (`{n}` or `{n+}`) the head ends there, before the literal data. The
//!   head is checked with `imap-codec`'s [`CommandCodec`] (a complete command, or a literal
//!   found), and its tag, command name (upper-case; `UID FETCH` for UID commands, as
//!   Dovecot names them) and arguments as sent (up to the first literal) go to the hooks.
//!   A command that `imap-codec` does not know still goes to the hooks, named by its
//!   second word: the worker may know extensions the codec does not.
//! - the driver decides on the head and tells the framer ([`Framer::decided`]); the rest
//!   of the command (literal data, the lines after a literal, further literals) is then
//!   passed on ([`Item::Forward`]) or dropped ([`Item::Drop`]) in chunks, never buffered
//!   whole: an APPEND of any size costs one read buffer.
//! - a line that is not a command (no `tag SP name`: IDLE's `DONE`, a SASL response, an
//!   empty line) is passed on unhooked: the worker can only answer it as the
//!   continuation of the command it belongs to, or with BAD.
//!
//! Synchronizing literals: the client waits for the worker's `+` before it sends `{n}`
//! data. The decision on a command is made before its head is forwarded, so a denied
//! command is answered with a tagged NO and the client never sends the literal. An allowed
//! head is forwarded, and the worker's `+` reaches the client through the plain copy; the
//! driver then waits until the worker's next response is seen ([`ResponseScanner`]): a
//! `+` means the literal follows, a tagged reply for the command means the worker refused
//! it (too large, ...) and the client will not send it.
//!
//! A head line may be at most [`MAX_HEAD`] bytes (Dovecot's own `imap_max_line_length`
//! default); a longer one ends the session with `* BYE Line too long.`
//!
//! # Worker → client: [`ResponseScanner`]
//! Bytes are copied unchanged; the scanner only follows line ends and literal lengths, so
//! that a reply the proxy writes itself (a denied command's tagged NO) lands between two
//! responses, never inside a `FETCH` literal, and so that the driver learns whether the
//! worker answered a synchronizing literal with `+`.

use bytes::{Bytes, BytesMut};
use imap_codec::CommandCodec;
use imap_codec::decode::{CommandDecodeError, Decoder};

use super::imap::literal_marker;

/// Longest command line (a head, or a line after a literal), line end included.
pub const MAX_HEAD: usize = 64 * 1024;

/// A literal announced at the end of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Literal {
    /// Its length in bytes.
    pub len: u64,
    /// `{n}` (the client waits for `+`), not `{n+}`.
    pub sync: bool,
}

/// A command's first line, to decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The bytes as sent, line end included; forwarded unchanged when allowed.
    pub raw: Bytes,
    /// The tag.
    pub tag: String,
    /// The command name, upper-case (`UID FETCH` for UID commands).
    pub name: String,
    /// The arguments as sent, up to the line end (a literal marker included).
    pub args: String,
    /// The literal announced at the end of the line.
    pub literal: Option<Literal>,
    /// `imap-codec` understood the command (or its start, up to a literal).
    pub parsed: bool,
}

/// The next piece of the client's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A command head: decide, then call [`Framer::decided`].
    Command(Head),
    /// Bytes to pass to the worker unchanged; `literal` when this ends a line that
    /// announces one (after a synchronizing one, wait for the worker's `+`).
    Forward {
        /// The bytes.
        bytes: Bytes,
        /// The literal this chunk announces at its end, if any.
        literal: Option<Literal>,
    },
    /// Bytes of a refused command, to discard.
    Drop(usize),
}

/// The client sent a line longer than [`MAX_HEAD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("command line longer than {MAX_HEAD} bytes")]
pub struct LineTooLong;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a command.
    Head,
    /// A head was returned; waiting for [`Framer::decided`].
    Deciding(Option<Literal>),
    /// Inside literal data, `left` bytes to go.
    Literal { left: u64, forward: bool },
    /// After a literal, in the rest of the command's line.
    Tail { forward: bool },
}

/// The client→worker framing of one session.
#[derive(Debug)]
pub struct Framer {
    state: State,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new()
    }
}

impl Framer {
    /// A framer at the start of a command.
    pub fn new() -> Framer {
        Framer { state: State::Head }
    }

    /// The next item from `buf` (consumed as far as used); `None` when more input is
    /// needed, or while a head waits for [`Framer::decided`].
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, LineTooLong> {
        match self.state {
            State::Deciding(_) => Ok(None),
            State::Head => {
                let Some(line) = take_line(buf)? else {
                    return Ok(None);
                };
                match head(line.clone()) {
                    Some(h) => {
                        self.state = State::Deciding(h.literal);
                        Ok(Some(Item::Command(h)))
                    }
                    None => {
                        let literal = line_literal(&line);
                        if let Some(l) = literal {
                            self.state = State::Literal {
                                left: l.len,
                                forward: true,
                            };
                        }
                        Ok(Some(Item::Forward {
                            bytes: line,
                            literal,
                        }))
                    }
                }
            }
            State::Literal { left, forward } => {
                if left == 0 {
                    self.state = State::Tail { forward };
                    return self.next(buf);
                }
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let chunk = buf.split_to(n).freeze();
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::Tail { forward }
                } else {
                    State::Literal { left, forward }
                };
                Ok(Some(if forward {
                    Item::Forward {
                        bytes: chunk,
                        literal: None,
                    }
                } else {
                    Item::Drop(n)
                }))
            }
            State::Tail { forward } => {
                let Some(line) = take_line(buf)? else {
                    return Ok(None);
                };
                let literal = line_literal(&line);
                self.state = match literal {
                    // A refused command's client gave up at our tagged NO: it does not
                    // send a synchronizing literal.
                    Some(l) if forward || !l.sync => State::Literal {
                        left: l.len,
                        forward,
                    },
                    _ => State::Head,
                };
                Ok(Some(if forward {
                    Item::Forward {
                        bytes: line,
                        literal,
                    }
                } else {
                    Item::Drop(line.len())
                }))
            }
        }
    }

    /// The decision on the last [`Item::Command`]: `forward` (allowed, and its head was
    /// sent to the worker) or not (answered here).
    pub fn decided(&mut self, forward: bool) {
        let State::Deciding(literal) = self.state else {
            return;
        };
        self.state = match literal {
            Some(l) if forward || !l.sync => State::Literal {
                left: l.len,
                forward,
            },
            _ => State::Head,
        };
    }

    /// The worker refused a synchronizing literal (a tagged reply instead of `+`): the
    /// client does not send it, and its next line is a new command.
    pub fn literal_refused(&mut self) {
        self.state = State::Head;
    }
}

/// One line (up to and including LF) from `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, LineTooLong> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i < MAX_HEAD => Ok(Some(buf.split_to(i + 1).freeze())),
        None if buf.len() < MAX_HEAD => Ok(None),
        _ => Err(LineTooLong),
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn line_literal(line: &[u8]) -> Option<Literal> {
    literal_marker(trim_line_end(line)).map(|(_, n, sync)| Literal {
        len: n as u64,
        sync,
    })
}

/// The head of a command line, or `None` for a line that is not `tag SP name ...`.
fn head(raw: Bytes) -> Option<Head> {
    let text = trim_line_end(&raw);
    let (tag, rest) = word(text)?;
    // Any second word makes a command: what the worker might execute is hooked, even
    // with odd spacing or a name this front does not know.
    let (first, mut rest) = word(rest)?;
    let mut name = first.to_ascii_uppercase();
    if name == b"UID"
        && let Some((cmd, after)) = word(rest)
    {
        name.push(b' ');
        name.extend_from_slice(&cmd.to_ascii_uppercase());
        rest = after;
    }
    let parsed = match CommandCodec::default().decode(&raw) {
        Ok(_) | Err(CommandDecodeError::LiteralFound { .. }) => true,
        Err(CommandDecodeError::Incomplete | CommandDecodeError::Failed) => false,
    };
    // The tag is echoed in our replies: never a control character there.
    let tag = if tag.iter().all(u8::is_ascii_graphic) {
        String::from_utf8_lossy(tag).into_owned()
    } else {
        "*".into()
    };
    Some(Head {
        tag,
        name: String::from_utf8_lossy(&name).into_owned(),
        args: String::from_utf8_lossy(rest).into_owned(),
        literal: line_literal(&raw),
        parsed,
        raw,
    })
}

/// The first word of `text` (after leading blanks) and what follows it (blanks after the
/// word skipped); `None` when there is no word.
fn word(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = text.iter().position(|b| !blank(b))?;
    let text = &text[start..];
    let end = text.iter().position(blank).unwrap_or(text.len());
    let after = &text[end..];
    let skip = after.iter().position(|b| !blank(b)).unwrap_or(after.len());
    Some((&text[..end], &after[skip..]))
}

/// What the first line of a worker response was, as far as the driver cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A continuation request (`+ ...`).
    Continue,
    /// A tagged completion (`TAG OK|NO|BAD ...`) with this tag.
    Tagged(Vec<u8>),
    /// An untagged response (`* ...`) or anything else.
    Other,
}

/// Follows the worker→client byte stream: line ends and literals, nothing else.
#[derive(Debug, Default)]
pub struct ResponseScanner {
    /// Literal bytes still to come.
    literal_left: u64,
    /// The first bytes of the response's first line (for [`Response`]).
    first: Vec<u8>,
    /// The response's first line has ended (later lines follow literals).
    first_done: bool,
    /// The last bytes of the current line (for a literal marker at its end).
    tail: Vec<u8>,
    /// Bytes of the current response seen so far (0 = between responses).
    in_response: u64,
}

/// Bytes of a response's first line kept to classify it.
const FIRST_BYTES: usize = 64;
/// Bytes kept of a line's end to find `{n}` (`{` + 20 digits + `+}` + CRLF).
const TAIL_BYTES: usize = 26;

impl ResponseScanner {
    /// A scanner between two responses.
    pub fn new() -> ResponseScanner {
        ResponseScanner::default()
    }

    /// True between two responses: bytes written now cannot split one.
    pub fn at_boundary(&self) -> bool {
        self.in_response == 0 && self.literal_left == 0
    }

    /// Scans `chunk`; for every response that ends in it, calls `done(offset just after
    /// the response, what its first line was)`.
    pub fn scan(&mut self, chunk: &[u8], mut done: impl FnMut(usize, Response)) {
        let mut i = 0;
        while i < chunk.len() {
            if self.literal_left > 0 {
                let n = usize::try_from(self.literal_left)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len() - i);
                self.literal_left -= n as u64;
                self.in_response += n as u64;
                i += n;
                continue;
            }
            let rest = &chunk[i..];
            let (end, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(p) => (p + 1, true),
                None => (rest.len(), false),
            };
            let part = &rest[..end];
            if !self.first_done && self.first.len() < FIRST_BYTES {
                let take = (FIRST_BYTES - self.first.len()).min(part.len());
                self.first.extend_from_slice(&part[..take]);
            }
            self.tail.extend_from_slice(part);
            if self.tail.len() > TAIL_BYTES {
                self.tail.drain(..self.tail.len() - TAIL_BYTES);
            }
            self.in_response += end as u64;
            i += end;
            if !complete {
                continue;
            }
            self.first_done = true;
            match line_literal(&self.tail) {
                Some(l) => self.literal_left = l.len,
                None => {
                    done(i, classify(&self.first));
                    self.first.clear();
                    self.first_done = false;
                    self.in_response = 0;
                }
            }
            self.tail.clear();
        }
    }
}

fn classify(first: &[u8]) -> Response {
    if first.starts_with(b"+") {
        return Response::Continue;
    }
    match first.split(|&b| b == b' ').next() {
        Some(tag) if !tag.is_empty() && tag != b"*" && first.len() > tag.len() => {
            Response::Tagged(tag.to_vec())
        }
        _ => Response::Other,
    }
}

/// The tagged answer to a command a hook denied (one line).
pub fn denied(tag: &str, message: &str) -> Vec<u8> {
    format!("{tag} NO [ALERT] {}\r\n", super::one_line(message, 400)).into_bytes()
}

/// The tagged answer to a command whose hook chain failed.
pub fn tempfail(tag: &str) -> Vec<u8> {
    format!("{tag} NO [UNAVAILABLE] Temporary failure, try again later.\r\n").into_bytes()
}

/// Commands refused on the hooked path: after them the stream could not be followed.
pub fn unfollowable(name: &str) -> bool {
    matches!(name, "COMPRESS" | "STARTTLS")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes, deciding every command with `allow`,
    /// and returns a transcript of the items.
    fn run(input: &[u8], step: usize, allow: impl Fn(&Head) -> bool) -> Vec<String> {
        let mut f = Framer::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(item) = f.next(&mut buf).unwrap() {
                out.push(match item {
                    Item::Command(h) => {
                        let ok = allow(&h);
                        f.decided(ok);
                        format!(
                            "{} {}|{}|{}{}",
                            if ok { "CMD" } else { "DENY" },
                            h.tag,
                            h.name,
                            h.args,
                            if h.parsed { "" } else { " (unparsed)" }
                        )
                    }
                    Item::Forward { bytes, .. } => {
                        format!("FWD {}", String::from_utf8_lossy(&bytes).escape_debug())
                    }
                    Item::Drop(n) => format!("DROP {n}"),
                });
            }
        }
        // Merge consecutive forwards/drops so the transcript does not depend on `step`.
        let mut merged: Vec<String> = Vec::new();
        for s in out {
            match (merged.last_mut(), s.split_once(' ')) {
                (Some(last), Some(("FWD", rest))) if last.starts_with("FWD ") => {
                    last.push_str(rest)
                }
                (Some(last), Some(("DROP", n))) if last.starts_with("DROP ") => {
                    let total: usize =
                        last[5..].parse::<usize>().unwrap() + n.parse::<usize>().unwrap();
                    *last = format!("DROP {total}");
                }
                _ => merged.push(s),
            }
        }
        merged
    }

    #[test]
    fn plain_commands_are_heads_with_name_and_args() {
        for step in [1, 3, 1000] {
            let t = run(
                b"a SELECT INBOX\r\nb uid fetch 1:* (FLAGS)\r\nc NOOP\r\n",
                step,
                |_| true,
            );
            assert_eq!(
                t,
                [
                    "CMD a|SELECT|INBOX",
                    "CMD b|UID FETCH|1:* (FLAGS)",
                    "CMD c|NOOP|",
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn literals_pass_through_in_chunks_and_the_tail_follows() {
        let input =
            b"a APPEND INBOX (\\Seen) {11}\r\nhello world (\\Flagged) {3+}\r\nabc\r\nb NOOP\r\n";
        for step in [1, 5, 1000] {
            let t = run(input, step, |_| true);
            assert_eq!(
                t,
                [
                    "CMD a|APPEND|INBOX (\\Seen) {11}",
                    "FWD hello world (\\\\Flagged) {3+}\\r\\nabc\\r\\n",
                    "CMD b|NOOP|",
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn a_denied_sync_literal_is_never_sent_and_a_nonsync_one_is_dropped() {
        // Sync: the client gave up on our NO; the next line is a command.
        let t = run(b"a APPEND x {5}\r\nb NOOP\r\n", 2, |h| h.name != "APPEND");
        assert_eq!(t, ["DENY a|APPEND|x {5}", "CMD b|NOOP|"]);
        // Non-sync: the data comes anyway and is dropped, with the rest of the line.
        let t = run(b"a APPEND x {5+}\r\nhello\r\nb NOOP\r\n", 2, |h| {
            h.name != "APPEND"
        });
        assert_eq!(t, ["DENY a|APPEND|x {5+}", "DROP 7", "CMD b|NOOP|"]);
        // The denied head itself was not forwarded: nothing for the worker at all.
        let t = run(b"a DELETE x\r\n", 100, |_| false);
        assert_eq!(t, ["DENY a|DELETE|x"]);
    }

    #[test]
    fn worker_refusing_a_sync_literal_resets_to_a_command() {
        let mut f = Framer::new();
        let mut buf = BytesMut::from(&b"a APPEND x {99999999}\r\nb DELETE y\r\n"[..]);
        let Some(Item::Command(h)) = f.next(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(
            h.literal,
            Some(Literal {
                len: 99999999,
                sync: true
            })
        );
        f.decided(true);
        f.literal_refused();
        let Some(Item::Command(h)) = f.next(&mut buf).unwrap() else {
            panic!("the next line must be hooked, not passed as literal data")
        };
        assert_eq!((h.name.as_str(), h.args.as_str()), ("DELETE", "y"));
    }

    #[test]
    fn idle_done_and_non_commands_are_forwarded_unhooked() {
        let t = run(b"a IDLE\r\nDONE\r\n\r\nb LOGOUT\r\n", 1, |_| true);
        assert_eq!(t, ["CMD a|IDLE|", "FWD DONE\\r\\n\\r\\n", "CMD b|LOGOUT|"]);
    }

    #[test]
    fn odd_spacing_is_still_a_command() {
        let t = run(b"a  DELETE   x\r\n\tb\tuid\texpunge 1\r\nc\r\n", 3, |_| {
            true
        });
        assert_eq!(
            t,
            [
                "CMD a|DELETE|x (unparsed)",
                "CMD b|UID EXPUNGE|1 (unparsed)",
                "FWD c\\r\\n"
            ]
        );
    }

    #[test]
    fn unknown_extensions_are_hooked_by_name() {
        let t = run(b"a XFOO bar baz\r\nb GETQUOTAROOT INBOX\r\n", 4, |_| true);
        assert_eq!(t[0], "CMD a|XFOO|bar baz (unparsed)");
        assert!(t[1].starts_with("CMD b|GETQUOTAROOT|INBOX"), "{t:?}");
    }

    #[test]
    fn overlong_lines_are_errors() {
        let mut f = Framer::new();
        let mut buf = BytesMut::from(&vec![b'a'; MAX_HEAD][..]);
        assert_eq!(f.next(&mut buf), Err(LineTooLong));
        let mut buf = BytesMut::from(&vec![b'a'; MAX_HEAD - 10][..]);
        assert_eq!(f.next(&mut buf), Ok(None));
    }

    #[test]
    fn scanner_finds_boundaries_outside_literals() {
        let stream: &[u8] =
            b"* 1 FETCH (BODY[] {11}\r\nline\r\n{3}\r\nxx)\r\n+ go ahead\r\na OK done\r\n";
        for step in [1, 7, 1000] {
            let mut s = ResponseScanner::new();
            let mut seen = Vec::new();
            let mut base = 0;
            for piece in stream.chunks(step) {
                s.scan(piece, |at, r| seen.push((base + at, r)));
                base += piece.len();
            }
            assert_eq!(
                seen,
                [
                    (40, Response::Other),
                    (52, Response::Continue),
                    (63, Response::Tagged(b"a".to_vec())),
                ],
                "step {step}"
            );
            assert!(s.at_boundary());
        }
        let mut s = ResponseScanner::new();
        s.scan(b"* 1 FETCH (BODY[] {12}\r\nline", |_, _| {});
        assert!(!s.at_boundary());
    }

    #[test]
    fn replies_are_one_line() {
        assert_eq!(
            denied("a7", "no\r\n* BYE injected"),
            b"a7 NO [ALERT] no  * BYE injected\r\n"
        );
        assert_eq!(
            tempfail("b"),
            b"b NO [UNAVAILABLE] Temporary failure, try again later.\r\n"
        );
    }
}
