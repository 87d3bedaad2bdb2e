//! The LMTP server protocol (RFC 2033) as a sans-IO state machine.
//!
//! [`Session`] consumes client bytes ([`Session::advance`]) and writes replies into its
//! output buffer ([`Session::take_output`]); it never touches a socket. Two points need a
//! decision from outside, and the session stops there until it gets one:
//! - [`Step::Recipient`]: a `RCPT TO` the session found well-formed; answer with
//!   [`Session::recipient`] (accepted, or refused with a reply);
//! - [`Step::Deliver`]: end of `DATA` (or the `BDAT ... LAST` chunk) with at least one
//!   accepted recipient; the message is in [`Session::transaction`]; answer with
//!   [`Session::delivered`], one reply per accepted recipient in `RCPT` order (the LMTP
//!   rule that makes per-recipient results possible).
//!
//! Supported: `LHLO`, `MAIL FROM` (parameters `SIZE=` and `BODY=7BIT|8BITMIME`),
//! `RCPT TO`, `DATA` with dot-unstuffing, `BDAT` (CHUNKING), `RSET`, `NOOP`, `QUIT`,
//! `VRFY` (252). `BINARYMIME` is not offered: the workers get the message with `DATA`,
//! whichever way it arrived. `PIPELINING` is advertised: commands are taken from the input one after
//! the other and their replies collected, so a driver that writes the output whenever
//! the input has no complete command left answers a pipelined group in one write.
//!
//! Limits: a command line longer than [`Limits::max_line`] is refused (`500 5.5.2`) and
//! skipped; a message larger than [`Limits::max_message_size`] is read to its end but not
//! kept, and every recipient gets `552 5.3.4`; more than [`Limits::max_recipients`]
//! recipients get `452 4.5.3`; after [`Limits::max_errors`] bad commands the session
//! ends with `421`.

use bytes::{Buf, BytesMut};

/// Size and count limits of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest command line, CRLF included. Default 2048 (RFC 5321 asks for at least 512,
    /// plus room for ESMTP parameters).
    pub max_line: usize,
    /// Largest message kept, in bytes after dot-unstuffing; advertised as `SIZE`.
    pub max_message_size: usize,
    /// Most recipients per transaction. Default 1000.
    pub max_recipients: usize,
    /// Bad commands before the session is closed. Default 20.
    pub max_errors: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 2048,
            max_message_size: 64 << 20,
            max_recipients: 1000,
            max_errors: 20,
        }
    }
}

/// One SMTP/LMTP reply: code, optional enhanced status code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code (RFC 3463), e.g. `2.1.5`; empty for none.
    pub enhanced: String,
    /// Text on one line (CR and LF are replaced when encoding).
    pub text: String,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: enhanced.to_string(),
            text: text.into(),
        }
    }

    /// Parses one reply line (`250 2.1.5 Ok`, `550 unknown`), no CRLF. None when the
    /// line does not start with a three-digit code.
    pub fn parse(line: &str) -> Option<Reply> {
        let code: u16 = line.get(..3)?.parse().ok()?;
        if !(200..600).contains(&code) {
            return None;
        }
        let rest = line[3..].trim_start_matches([' ', '-']);
        let (enhanced, text) = match rest.split_once(' ') {
            Some((first, text)) if is_enhanced(first) => (first, text),
            None if is_enhanced(rest) => (rest, ""),
            _ => ("", rest),
        };
        Some(Reply {
            code,
            enhanced: enhanced.to_string(),
            text: text.to_string(),
        })
    }

    /// True for 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// True for 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Appends the reply line with CRLF.
    pub fn encode(&self, out: &mut BytesMut) {
        self.encode_line(out, ' ');
    }

    fn encode_line(&self, out: &mut BytesMut, sep: char) {
        let text: String = self
            .text
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect();
        let line = if self.enhanced.is_empty() {
            format!("{}{sep}{text}\r\n", self.code)
        } else {
            format!("{}{sep}{} {text}\r\n", self.code, self.enhanced)
        };
        out.extend_from_slice(line.as_bytes());
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.enhanced.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.enhanced, self.text)
        }
    }
}

fn is_enhanced(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The message body type declared with `MAIL FROM ... BODY=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    /// `7BIT` or nothing.
    #[default]
    SevenBit,
    /// `8BITMIME`.
    EightBitMime,
}

impl Body {
    /// The parameter value as sent in `MAIL FROM`.
    pub fn param(self) -> Option<&'static str> {
        match self {
            Body::SevenBit => None,
            Body::EightBitMime => Some("8BITMIME"),
        }
    }
}

/// The current mail transaction.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    /// Counts the session's transactions (1 for the first `MAIL FROM`), so a driver can
    /// tell a new transaction from the one it was working on.
    pub serial: u64,
    /// The reverse path without brackets; empty for the null sender `<>`.
    pub sender: String,
    /// `SIZE=` from `MAIL FROM`, if given.
    pub size: Option<u64>,
    /// `BODY=` from `MAIL FROM`.
    pub body: Body,
    /// Accepted recipients, in `RCPT` order.
    pub recipients: Vec<String>,
    /// The message (dot-unstuffed), complete once [`Step::Deliver`] is returned.
    pub message: BytesMut,
    /// The message was larger than the limit (the part kept is not the message).
    too_big: bool,
    /// Bytes of message seen, including what was not kept.
    seen: usize,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Decide on a recipient (address without brackets, as sent), then call
    /// [`Session::recipient`].
    Recipient(String),
    /// Deliver [`Session::transaction`]'s message to its recipients, then call
    /// [`Session::delivered`].
    Deliver,
    /// Write the output and close the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before `LHLO`.
    Start,
    /// After `LHLO`, no transaction.
    Ready,
    /// After `MAIL FROM`.
    Mail,
    /// Reading `DATA` content; `at_line_start` tracks where dot-stuffing applies.
    Data { at_line_start: bool },
    /// Reading a `BDAT` chunk: bytes left, whether it is the last one, whether the chunk
    /// is refused (read and dropped).
    Chunk {
        left: usize,
        last: bool,
        refused: Option<&'static str>,
    },
    /// Waiting for [`Session::recipient`].
    AwaitRecipient,
    /// Waiting for [`Session::delivered`].
    AwaitDelivery,
    /// Skipping the rest of an over-long command line.
    SkipLine,
    /// Closed; nothing more is read.
    Closed,
}

/// One LMTP server session.
#[derive(Debug)]
pub struct Session {
    hostname: String,
    limits: Limits,
    phase: Phase,
    /// Phase to return to after a skipped over-long line.
    before_skip: Phase,
    tx: Option<Transaction>,
    /// A `BDAT` transaction is in progress (DATA is then refused).
    chunking: bool,
    /// `LHLO` was accepted.
    greeted: bool,
    /// Transactions started so far.
    serial: u64,
    errors: u32,
    out: BytesMut,
}

impl Session {
    /// A session announcing itself as `hostname`; the greeting is already in the output.
    pub fn new(hostname: &str, limits: Limits) -> Session {
        let mut s = Session {
            hostname: hostname.to_string(),
            limits,
            phase: Phase::Start,
            before_skip: Phase::Start,
            tx: None,
            chunking: false,
            greeted: false,
            serial: 0,
            errors: 0,
            out: BytesMut::new(),
        };
        s.reply(220, "", format!("{hostname} LMTP wasmail ready"));
        s
    }

    /// The replies written so far (cleared).
    pub fn take_output(&mut self) -> BytesMut {
        self.out.split()
    }

    /// True when replies wait to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// The transaction in progress, if any.
    pub fn transaction(&self) -> Option<&Transaction> {
        self.tx.as_ref()
    }

    /// True after `QUIT`, too many errors, or a protocol violation.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True while a message is being received (the driver may apply a longer timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data { .. } | Phase::Chunk { .. })
    }

    /// Consumes input from `buf` until a decision is needed, the input has no complete
    /// command left (None: write the output and read more), or the session closes.
    pub fn advance(&mut self, buf: &mut BytesMut) -> Option<Step> {
        loop {
            match self.phase {
                Phase::Closed => return Some(Step::Close),
                Phase::AwaitRecipient | Phase::AwaitDelivery => return None,
                Phase::Data { at_line_start } => {
                    if let Some(step) = self.data(buf, at_line_start) {
                        return Some(step);
                    }
                    if matches!(self.phase, Phase::Data { .. }) {
                        return None;
                    }
                }
                Phase::Chunk { .. } => {
                    if let Some(step) = self.chunk(buf) {
                        return Some(step);
                    }
                    if matches!(self.phase, Phase::Chunk { .. }) {
                        return None;
                    }
                }
                Phase::SkipLine => match memchr(b'\n', buf) {
                    Some(i) => {
                        buf.advance(i + 1);
                        self.phase = self.before_skip;
                    }
                    None => {
                        buf.clear();
                        return None;
                    }
                },
                Phase::Start | Phase::Ready | Phase::Mail => {
                    let Some(i) = memchr(b'\n', buf) else {
                        if buf.len() < self.limits.max_line {
                            return None;
                        }
                        // Over-long and not ended yet: refuse now, skip to its end.
                        buf.clear();
                        self.before_skip = self.phase;
                        self.phase = Phase::SkipLine;
                        self.error(500, "5.5.2", "Line too long");
                        continue;
                    };
                    let line = buf.split_to(i + 1);
                    if line.len() > self.limits.max_line {
                        self.error(500, "5.5.2", "Line too long");
                        continue;
                    }
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches(['\r', '\n']).to_string();
                    if let Some(step) = self.command(&line) {
                        return Some(step);
                    }
                }
            }
        }
    }

    /// The answer to [`Step::Recipient`]: None accepts (`250 2.1.5`), a reply refuses.
    pub fn recipient(&mut self, address: &str, refused: Option<Reply>) {
        if self.phase != Phase::AwaitRecipient {
            return;
        }
        self.phase = Phase::Mail;
        match refused {
            None => {
                if let Some(tx) = &mut self.tx {
                    tx.recipients.push(address.to_string());
                }
                self.reply(250, "2.1.5", format!("<{address}> OK"));
            }
            Some(r) => self.send(&r),
        }
    }

    /// The answer to [`Step::Deliver`]: one reply per accepted recipient, in order
    /// (missing ones get `451 4.3.0`). Ends the transaction.
    pub fn delivered(&mut self, replies: Vec<Reply>) {
        if self.phase != Phase::AwaitDelivery {
            return;
        }
        let n = self.tx.as_ref().map_or(0, |t| t.recipients.len());
        let mut replies = replies.into_iter();
        for _ in 0..n {
            let r = replies
                .next()
                .unwrap_or_else(|| Reply::new(451, "4.3.0", "Delivery status unknown"));
            self.send(&r);
        }
        self.end_transaction();
        self.phase = Phase::Ready;
    }

    fn end_transaction(&mut self) {
        self.tx = None;
        self.chunking = false;
    }

    fn reply(&mut self, code: u16, enhanced: &str, text: impl Into<String>) {
        Reply::new(code, enhanced, text).encode(&mut self.out);
    }

    fn send(&mut self, r: &Reply) {
        r.encode(&mut self.out);
    }

    /// A bad command: the reply, and the session closes after too many.
    fn error(&mut self, code: u16, enhanced: &str, text: &str) {
        self.errors += 1;
        if self.errors >= self.limits.max_errors {
            self.reply(421, "4.7.0", format!("{} Too many errors", self.hostname));
            self.phase = Phase::Closed;
        } else {
            self.reply(code, enhanced, text);
        }
    }

    fn command(&mut self, line: &str) -> Option<Step> {
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v, a.trim()),
            None => (line, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "LHLO" => self.lhlo(arg),
            "HELO" | "EHLO" => self.error(500, "5.5.1", "This is LMTP: use LHLO"),
            "MAIL" => self.mail(arg),
            "RCPT" => return self.rcpt(arg),
            "DATA" => self.data_command(arg),
            "BDAT" => return self.bdat(arg),
            "RSET" => {
                self.end_transaction();
                if self.phase == Phase::Mail {
                    self.phase = Phase::Ready;
                }
                self.reply(250, "2.0.0", "OK");
            }
            "NOOP" => self.reply(250, "2.0.0", "OK"),
            "VRFY" => self.reply(252, "2.5.0", "Cannot VRFY; send some mail"),
            "QUIT" => {
                self.reply(
                    221,
                    "2.0.0",
                    format!("{} closing connection", self.hostname),
                );
                self.phase = Phase::Closed;
                return Some(Step::Close);
            }
            "" => self.error(500, "5.5.2", "Empty command"),
            _ => self.error(502, "5.5.1", "Command not implemented"),
        }
        (self.phase == Phase::Closed).then_some(Step::Close)
    }

    fn lhlo(&mut self, arg: &str) {
        if arg.is_empty() {
            return self.error(501, "5.5.4", "LHLO needs a host name");
        }
        self.end_transaction();
        self.phase = Phase::Ready;
        self.greeted = true;
        let lines = [
            self.hostname.clone(),
            "PIPELINING".into(),
            "ENHANCEDSTATUSCODES".into(),
            "8BITMIME".into(),
            "CHUNKING".into(),
            format!("SIZE {}", self.limits.max_message_size),
        ];
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
    }

    fn mail(&mut self, arg: &str) {
        match self.phase {
            Phase::Start => return self.error(503, "5.5.1", "Send LHLO first"),
            Phase::Mail => return self.error(503, "5.5.1", "Nested MAIL command"),
            _ => {}
        }
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self.error(501, "5.5.4", "Syntax: MAIL FROM:<address>");
        };
        let Some((sender, params)) = path(rest.trim_start()) else {
            return self.error(501, "5.1.7", "Bad sender address syntax");
        };
        let mut tx = Transaction {
            serial: self.serial + 1,
            sender,
            ..Transaction::default()
        };
        for p in params.split_whitespace() {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.to_ascii_uppercase().as_str() {
                "SIZE" => match v.parse::<u64>() {
                    Ok(n) if n > self.limits.max_message_size as u64 => {
                        return self.reply(552, "5.3.4", "Message size exceeds fixed limit");
                    }
                    Ok(n) => tx.size = Some(n),
                    Err(_) => return self.error(501, "5.5.4", "Bad SIZE parameter"),
                },
                "BODY" => {
                    tx.body = match v.to_ascii_uppercase().as_str() {
                        "7BIT" => Body::SevenBit,
                        "8BITMIME" => Body::EightBitMime,
                        _ => return self.error(501, "5.5.4", "Unknown BODY type"),
                    }
                }
                _ => {
                    return self.error(555, "5.5.4", "Unsupported MAIL parameter");
                }
            }
        }
        self.serial = tx.serial;
        self.tx = Some(tx);
        self.phase = Phase::Mail;
        self.reply(250, "2.1.0", "Sender OK");
    }

    fn rcpt(&mut self, arg: &str) -> Option<Step> {
        if self.phase != Phase::Mail {
            self.error(503, "5.5.1", "Send MAIL first");
            return None;
        }
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            self.error(501, "5.5.4", "Syntax: RCPT TO:<address>");
            return None;
        };
        let Some((address, params)) = path(rest.trim_start()) else {
            self.error(501, "5.1.3", "Bad recipient address syntax");
            return None;
        };
        if !params.trim().is_empty() {
            self.error(555, "5.5.4", "Unsupported RCPT parameter");
            return None;
        }
        if address.is_empty() || !address.contains('@') {
            self.reply(550, "5.1.3", "Recipient address needs a domain");
            return None;
        }
        let count = self.tx.as_ref().map_or(0, |t| t.recipients.len());
        if count >= self.limits.max_recipients {
            self.reply(452, "4.5.3", "Too many recipients");
            return None;
        }
        self.phase = Phase::AwaitRecipient;
        Some(Step::Recipient(address))
    }

    fn has_recipients(&self) -> bool {
        self.tx.as_ref().is_some_and(|t| !t.recipients.is_empty())
    }

    fn data_command(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.error(501, "5.5.4", "DATA takes no argument");
        }
        if self.phase != Phase::Mail {
            return self.error(503, "5.5.1", "Send MAIL first");
        }
        if self.chunking {
            return self.error(503, "5.5.1", "DATA after BDAT");
        }
        if !self.has_recipients() {
            return self.error(503, "5.5.1", "No valid recipients");
        }
        self.reply(354, "", "End data with <CR><LF>.<CR><LF>");
        self.phase = Phase::Data {
            at_line_start: true,
        };
    }

    fn bdat(&mut self, arg: &str) -> Option<Step> {
        let mut words = arg.split_whitespace();
        let size = words.next().and_then(|s| s.parse::<usize>().ok());
        let last = match words.next() {
            None => false,
            Some(w) if w.eq_ignore_ascii_case("LAST") => true,
            Some(_) => {
                self.error(501, "5.5.4", "Syntax: BDAT size [LAST]");
                return None;
            }
        };
        let Some(size) = size.filter(|_| words.next().is_none()) else {
            // The chunk length is unknown: the input cannot be resynchronised.
            self.reply(501, "5.5.4", "Syntax: BDAT size [LAST]");
            self.phase = Phase::Closed;
            return Some(Step::Close);
        };
        let refused = if self.phase != Phase::Mail {
            Some("Send MAIL first")
        } else if !self.has_recipients() {
            Some("No valid recipients")
        } else {
            self.chunking = true;
            None
        };
        self.phase = Phase::Chunk {
            left: size,
            last,
            refused,
        };
        None
    }

    /// `DATA` content: lines up to `CRLF.CRLF`, dot-unstuffed, kept up to the limit.
    fn data(&mut self, buf: &mut BytesMut, mut at_line_start: bool) -> Option<Step> {
        loop {
            if buf.is_empty() {
                self.phase = Phase::Data { at_line_start };
                return None;
            }
            if at_line_start && buf[0] == b'.' {
                match (buf.get(1), buf.get(2)) {
                    (None, _) | (Some(b'\r'), None) => {
                        self.phase = Phase::Data { at_line_start };
                        return None;
                    }
                    (Some(b'\n'), _) => {
                        buf.advance(2);
                        return self.message_complete();
                    }
                    (Some(b'\r'), Some(b'\n')) => {
                        buf.advance(3);
                        return self.message_complete();
                    }
                    // A stuffed dot: dropped.
                    _ => buf.advance(1),
                }
            }
            let (n, line_end) = match memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let part = buf.split_to(n);
            self.keep(&part);
            at_line_start = line_end;
        }
    }

    /// Appends message bytes unless the limit is passed (then only counts them).
    fn keep(&mut self, part: &[u8]) {
        let max = self.limits.max_message_size;
        if let Some(tx) = &mut self.tx {
            tx.seen += part.len();
            if tx.seen > max {
                tx.too_big = true;
                tx.message.clear();
            } else {
                tx.message.extend_from_slice(part);
            }
        }
    }

    /// `BDAT` chunk bytes, then the chunk's reply (or the delivery after `LAST`).
    fn chunk(&mut self, buf: &mut BytesMut) -> Option<Step> {
        let Phase::Chunk {
            left,
            last,
            refused,
        } = self.phase
        else {
            return None;
        };
        let n = left.min(buf.len());
        let part = buf.split_to(n);
        if refused.is_none() {
            self.keep(&part);
        }
        let left = left - n;
        if left > 0 {
            self.phase = Phase::Chunk {
                left,
                last,
                refused,
            };
            return None;
        }
        if let Some(text) = refused {
            self.phase = if self.tx.is_some() {
                Phase::Mail
            } else if self.greeted {
                Phase::Ready
            } else {
                Phase::Start
            };
            self.error(503, "5.5.1", text);
            return (self.phase == Phase::Closed).then_some(Step::Close);
        }
        if last {
            return self.message_complete();
        }
        self.phase = Phase::Mail;
        let seen = self.tx.as_ref().map_or(0, |t| t.seen);
        self.reply(250, "2.0.0", format!("{seen} octets received"));
        None
    }

    /// End of the message: too big → 552 for everyone, else ask for delivery.
    fn message_complete(&mut self) -> Option<Step> {
        let too_big = self.tx.as_ref().is_some_and(|t| t.too_big);
        if too_big {
            let n = self.tx.as_ref().map_or(0, |t| t.recipients.len());
            for _ in 0..n {
                self.reply(552, "5.3.4", "Message size exceeds fixed limit");
            }
            self.end_transaction();
            self.phase = Phase::Ready;
            return None;
        }
        self.phase = Phase::AwaitDelivery;
        Some(Step::Deliver)
    }
}

/// `s` without `prefix`, compared case-insensitively.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits `<path> params`: the address without brackets (an RFC 5321 source route
/// `@a,@b:` dropped) and the parameter text. None for a missing bracket or a space or
/// control character inside the address (quoted local parts may hold spaces).
fn path(s: &str) -> Option<(String, &str)> {
    let s = s.strip_prefix('<')?;
    let mut quoted = false;
    let mut end = None;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {}
            '>' if !quoted => {
                end = Some(i);
                break;
            }
            c if c.is_control() => return None,
            ' ' if !quoted => return None,
            _ => {}
        }
    }
    let end = end?;
    let mut address = &s[..end];
    if address.starts_with('@') {
        address = address.split_once(':')?.1;
    }
    Some((address.to_string(), &s[end + 1..]))
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` and answers decisions: recipients whose local part starts with
    /// `bad` are refused with 550, deliveries get `250 2.0.0 <rcpt> saved` each.
    /// Returns the whole output and the steps seen.
    fn script(limits: Limits, input: &[u8]) -> (String, Vec<Step>, Option<Transaction>) {
        let mut s = Session::new("lmtp.test", limits);
        let mut buf = BytesMut::from(input);
        let mut steps = Vec::new();
        let mut delivered = None;
        while let Some(step) = s.advance(&mut buf) {
            steps.push(step.clone());
            match step {
                Step::Recipient(a) => {
                    let refused = a
                        .starts_with("bad")
                        .then(|| Reply::new(550, "5.1.1", format!("<{a}> no such user")));
                    s.recipient(&a, refused);
                }
                Step::Deliver => {
                    let tx = s.transaction().unwrap().clone();
                    let replies = tx
                        .recipients
                        .iter()
                        .map(|r| Reply::new(250, "2.0.0", format!("<{r}> saved")))
                        .collect();
                    delivered = Some(tx);
                    s.delivered(replies);
                }
                Step::Close => break,
            }
        }
        (
            String::from_utf8(s.take_output().to_vec()).unwrap(),
            steps,
            delivered,
        )
    }

    fn codes(out: &str) -> Vec<&str> {
        out.lines().map(|l| &l[..4]).collect()
    }

    #[test]
    fn pipelined_transaction_gets_per_recipient_replies_in_order() {
        let (out, steps, tx) = script(
            Limits::default(),
            b"LHLO mx.test\r\nMAIL FROM:<s@remote.test> SIZE=40 BODY=8BITMIME\r\n\
              RCPT TO:<a@example.com>\r\nRCPT TO:<bad@example.com>\r\nRCPT TO:<B@Example.NET>\r\n\
              DATA\r\nSubject: hi\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n",
        );
        assert_eq!(
            codes(&out),
            [
                "220 ", "250-", "250-", "250-", "250-", "250-", "250 ", "250 ", "250 ", "550 ",
                "250 ", "354 ", "250 ", "250 ", "221 "
            ],
            "{out}"
        );
        assert!(
            out.contains("250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n"),
            "{out}"
        );
        assert!(out.contains("250 SIZE 67108864\r\n"), "{out}");
        assert!(out.contains("250 2.0.0 <a@example.com> saved\r\n250 2.0.0 <B@Example.NET> saved"));
        assert_eq!(
            steps,
            [
                Step::Recipient("a@example.com".into()),
                Step::Recipient("bad@example.com".into()),
                Step::Recipient("B@Example.NET".into()),
                Step::Deliver,
                Step::Close
            ]
        );
        let tx = tx.unwrap();
        assert_eq!(tx.sender, "s@remote.test");
        assert_eq!((tx.size, tx.body), (Some(40), Body::EightBitMime));
        assert_eq!(tx.recipients, ["a@example.com", "B@Example.NET"]);
        assert_eq!(&tx.message[..], b"Subject: hi\r\n\r\n.leading dot\r\n");
    }

    #[test]
    fn data_split_anywhere_is_unstuffed_the_same() {
        let body = b"line one\r\n..two\r\n.\r\n";
        let head = b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n";
        for cut in 0..body.len() {
            let mut s = Session::new("h", Limits::default());
            let mut buf = BytesMut::from(&head[..]);
            let mut got = None;
            let mut feed = |s: &mut Session, buf: &mut BytesMut| {
                while let Some(step) = s.advance(buf) {
                    match step {
                        Step::Recipient(a) => s.recipient(&a, None),
                        Step::Deliver => {
                            got = Some(s.transaction().unwrap().message.clone());
                            s.delivered(vec![Reply::new(250, "2.0.0", "ok")]);
                        }
                        Step::Close => break,
                    }
                }
            };
            feed(&mut s, &mut buf);
            buf.extend_from_slice(&body[..cut]);
            feed(&mut s, &mut buf);
            buf.extend_from_slice(&body[cut..]);
            feed(&mut s, &mut buf);
            assert_eq!(
                got.as_deref(),
                Some(&b"line one\r\n.two\r\n"[..]),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn sequence_errors_and_bad_syntax() {
        let (out, _, _) = script(
            Limits::default(),
            b"MAIL FROM:<a@b>\r\nEHLO x\r\nLHLO\r\nLHLO x\r\nRCPT TO:<a@b>\r\nDATA\r\n\
              MAIL FROM:a@b\r\nMAIL FROM:<a@b> SMTPUTF8\r\nMAIL FROM:<a@b> BODY=WEIRD\r\n\
              MAIL FROM:<a@b>\r\nMAIL FROM:<c@d>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<x@y> NOTIFY=NEVER\r\n\
              DATA\r\nRSET\r\nNOOP\r\nVRFY bob\r\nFROB\r\nQUIT\r\n",
        );
        let got: Vec<&str> = out.lines().filter(|l| !l.starts_with("250-")).collect();
        let want = [
            "220 h",
            "503 5.5.1 Send LHLO first",
            "500 5.5.1 This is LMTP: use LHLO",
            "501 5.5.4 LHLO needs a host name",
            "250 SIZE",
            "503 5.5.1 Send MAIL first",
            "503 5.5.1 Send MAIL first",
            "501 5.1.7 Bad sender address",
            "555 5.5.4",
            "501 5.5.4 Unknown BODY",
            "250 2.1.0",
            "503 5.5.1 Nested MAIL",
            "550 5.1.3",
            "555 5.5.4",
            "503 5.5.1 No valid recipients",
            "250 2.0.0 OK",
            "250 2.0.0 OK",
            "252 2.5.0",
            "502 5.5.1",
            "221 2.0.0",
        ];
        assert_eq!(got.len(), want.len(), "{out}");
        for (g, w) in got.iter().zip(want) {
            let w = w.replace("220 h", "220 lmtp.test");
            assert!(g.starts_with(&w), "{g:?} should start with {w:?}\n{out}");
        }
    }

    #[test]
    fn size_limits_are_enforced() {
        let limits = Limits {
            max_message_size: 10,
            ..Limits::default()
        };
        let (out, steps, tx) = script(
            limits,
            b"LHLO x\r\nMAIL FROM:<a@b> SIZE=11\r\nMAIL FROM:<a@b> SIZE=10\r\n\
              RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n\
              0123456789abcdef\r\n.\r\nNOOP\r\n",
        );
        assert!(
            out.contains("552 5.3.4 Message size exceeds fixed limit\r\n250 2.1.0"),
            "{out}"
        );
        assert_eq!(
            out.matches("552 5.3.4").count(),
            3,
            "one per recipient: {out}"
        );
        assert!(out.ends_with("250 2.0.0 OK\r\n"), "session goes on: {out}");
        assert!(!steps.contains(&Step::Deliver));
        assert!(tx.is_none());
    }

    #[test]
    fn long_lines_are_refused_and_skipped() {
        let limits = Limits {
            max_line: 32,
            ..Limits::default()
        };
        let long = format!("NOOP {}\r\n", "x".repeat(100));
        let mut input = b"LHLO x\r\n".to_vec();
        input.extend_from_slice(long.as_bytes());
        input.extend_from_slice(b"NOOP\r\n");
        let (out, _, _) = script(limits, &input);
        assert!(
            out.contains("500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"),
            "{out}"
        );

        // The same line arriving in pieces (no newline yet when the limit is passed).
        let mut s = Session::new("h", limits);
        let mut buf = BytesMut::from(&b"LHLO x\r\n"[..]);
        assert_eq!(s.advance(&mut buf), None);
        buf.extend_from_slice(&long.as_bytes()[..60]);
        assert_eq!(s.advance(&mut buf), None);
        buf.extend_from_slice(&long.as_bytes()[60..]);
        buf.extend_from_slice(b"NOOP\r\n");
        assert_eq!(s.advance(&mut buf), None);
        let out = String::from_utf8(s.take_output().to_vec()).unwrap();
        assert!(
            out.ends_with("500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"),
            "{out}"
        );
    }

    #[test]
    fn too_many_errors_close_the_session() {
        let limits = Limits {
            max_errors: 3,
            ..Limits::default()
        };
        let (out, steps, _) = script(limits, b"A\r\nB\r\nC\r\nD\r\n");
        assert!(
            out.ends_with("421 4.7.0 lmtp.test Too many errors\r\n"),
            "{out}"
        );
        assert_eq!(steps, [Step::Close]);
    }

    #[test]
    fn bdat_chunks_and_last() {
        let (out, steps, tx) = script(
            Limits::default(),
            b"LHLO x\r\nBDAT 3\r\nabcMAIL FROM:<s@r> BODY=8BITMIME\r\nRCPT TO:<a@example.com>\r\n\
              BDAT 6\r\nab\r\n.\nBDAT 0 LAST\r\nQUIT\r\n",
        );
        assert!(
            out.contains("503 5.5.1 Send MAIL first\r\n250 2.1.0"),
            "{out}"
        );
        assert!(
            out.contains("250 2.0.0 6 octets received\r\n250 2.0.0 <a@example.com> saved"),
            "{out}"
        );
        assert!(steps.contains(&Step::Deliver));
        assert_eq!(
            &tx.unwrap().message[..],
            b"ab\r\n.\n",
            "BDAT is not unstuffed"
        );
    }

    #[test]
    fn binarymime_is_not_offered_and_data_is_refused_after_bdat() {
        let (out, _, _) = script(
            Limits::default(),
            b"LHLO x\r\nMAIL FROM:<s@r> BODY=BINARYMIME\r\n\
              MAIL FROM:<s@r>\r\nRCPT TO:<a@example.com>\r\nBDAT 1\r\nxDATA\r\n",
        );
        assert!(!out.contains("BINARYMIME"), "{out}");
        assert!(out.contains("501 5.5.4 Unknown BODY type"), "{out}");
        assert!(out.contains("503 5.5.1 DATA after BDAT"), "{out}");
    }

    #[test]
    fn too_many_recipients_get_452() {
        let limits = Limits {
            max_recipients: 1,
            ..Limits::default()
        };
        let (out, _, _) = script(
            limits,
            b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n",
        );
        assert!(out.ends_with("250 2.1.5 <a@example.com> OK\r\n452 4.5.3 Too many recipients\r\n"));
    }

    #[test]
    fn paths_and_replies_parse() {
        assert_eq!(path("<a@b> SIZE=1"), Some(("a@b".into(), " SIZE=1")));
        assert_eq!(path("<@x,@y:a@b>"), Some(("a@b".into(), "")));
        assert_eq!(path("<\"a b\"@c>"), Some(("\"a b\"@c".into(), "")));
        assert_eq!(path("<>"), Some((String::new(), "")));
        assert_eq!(path("a@b"), None);
        assert_eq!(path("<a b@c>"), None);
        let r = Reply::parse("550 5.1.1 <x@y> User doesn't exist: x@y").unwrap();
        assert_eq!((r.code, r.enhanced.as_str()), (550, "5.1.1"));
        assert_eq!(r.text, "<x@y> User doesn't exist: x@y");
        let r = Reply::parse("250 Ok").unwrap();
        assert_eq!(
            (r.code, r.enhanced.as_str(), r.text.as_str()),
            (250, "", "Ok")
        );
        assert_eq!(Reply::parse("hello"), None);
        let mut out = BytesMut::new();
        Reply::new(550, "5.7.1", "no\r\nway").encode(&mut out);
        assert_eq!(&out[..], b"550 5.7.1 no  way\r\n");
    }
}
