//! `SMFIR_REPLYCODE` texts: a custom SMTP reply, validated so the MTA only ever sees a
//! well-formed one.
//!
//! Rules (libmilter `smfi_setmlreply`, Postfix `milter8_valid_smtp_reply`): a 4xx or 5xx
//! code; an optional enhanced status `c.sss.ddd` whose class matches the code; at most
//! 32 lines of at most 980 bytes each, joined by CRLF, every line but the last written
//! `ddd-`, the last `ddd `; printable ASCII only (no NUL, no bare CR or LF); every `%`
//! doubled, because Sendmail uses the text as a format string and Postfix undoes the
//! doubling.

use bytes::Bytes;

/// Lines per reply (libmilter `MAXREPLIES`).
pub const MAX_LINES: usize = 32;
/// Bytes per line, code included (libmilter `MAXREPLYLEN`).
pub const MAX_LINE_LEN: usize = 980;

/// Why a reply text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The code is not 4xx or 5xx.
    #[error("code {0} is not a 4xx or 5xx SMTP reply code")]
    BadCode(u16),
    /// A line does not start with three digits.
    #[error("line {line}: does not start with a three-digit code")]
    MissingCode {
        /// 1-based line number.
        line: usize,
    },
    /// Lines carry different codes.
    #[error("line {line}: code {found} differs from the first line's {first}")]
    MixedCodes {
        /// 1-based line number.
        line: usize,
        /// The first line's code.
        first: u16,
        /// This line's code.
        found: u16,
    },
    /// A continuation marker (`-`) on the last line or a final marker (` `) before it.
    #[error(
        "line {line}: wrong separator after the code (`-` on all lines but the last, space on the last)"
    )]
    BadSeparator {
        /// 1-based line number.
        line: usize,
    },
    /// The enhanced status code's class differs from the reply code's.
    #[error("enhanced status {enhanced} does not match reply code {code}")]
    EnhancedMismatch {
        /// The reply code.
        code: u16,
        /// The enhanced status as given.
        enhanced: String,
    },
    /// The enhanced status code is malformed.
    #[error("enhanced status {0:?} is not of the form c.sss.ddd")]
    BadEnhanced(String),
    /// More than [`MAX_LINES`] lines.
    #[error("{0} lines, above the limit of {MAX_LINES}")]
    TooManyLines(usize),
    /// A line longer than [`MAX_LINE_LEN`].
    #[error("line {line}: {len} bytes, above the limit of {MAX_LINE_LEN}")]
    LineTooLong {
        /// 1-based line number.
        line: usize,
        /// Its length.
        len: usize,
    },
    /// A byte that may not appear (NUL, bare CR or LF, control or non-ASCII).
    #[error("line {line}: forbidden byte 0x{byte:02x} (only printable ASCII is allowed)")]
    ForbiddenByte {
        /// 1-based line number.
        line: usize,
        /// The byte.
        byte: u8,
    },
    /// A `%` that is not doubled on the wire.
    #[error("line {line}: single `%` (must be doubled as `%%`)")]
    UndoubledPercent {
        /// 1-based line number.
        line: usize,
    },
}

/// A validated SMTP reply as sent in `SMFIR_REPLYCODE` (wire form, without the final NUL).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplyCode {
    wire: Bytes,
    code: u16,
}

impl ReplyCode {
    /// Builds a reply from a code, an optional enhanced status and a text; `\n` in the text
    /// starts a new line. `%` is doubled for the wire.
    ///
    /// ```
    /// # use wasmail_milter::ReplyCode;
    /// let r = ReplyCode::new(550, Some("5.7.1"), "Spam\nGo away 100%").unwrap();
    /// assert_eq!(r.as_bytes(), b"550-5.7.1 Spam\r\n550 5.7.1 Go away 100%%");
    /// ```
    pub fn new(code: u16, enhanced: Option<&str>, text: &str) -> Result<ReplyCode, ReplyError> {
        if !(400..600).contains(&code) {
            return Err(ReplyError::BadCode(code));
        }
        if let Some(e) = enhanced {
            check_enhanced(code, e)?;
        }
        let lines: Vec<&str> = text.split('\n').collect();
        let mut wire = String::new();
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                wire.push_str("\r\n");
            }
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            wire.push_str(&format!("{code}{sep}"));
            if let Some(e) = enhanced {
                wire.push_str(e);
                wire.push(' ');
            }
            wire.push_str(&line.replace('%', "%%"));
        }
        ReplyCode::parse(wire.as_bytes())
    }

    /// Validates a wire-form reply (as received in `SMFIR_REPLYCODE`, without the NUL).
    pub fn parse(wire: &[u8]) -> Result<ReplyCode, ReplyError> {
        let lines = split_crlf(wire);
        if lines.len() > MAX_LINES {
            return Err(ReplyError::TooManyLines(lines.len()));
        }
        let mut first = None;
        for (i, line) in lines.iter().enumerate() {
            let n = i + 1;
            if line.len() > MAX_LINE_LEN {
                return Err(ReplyError::LineTooLong {
                    line: n,
                    len: line.len(),
                });
            }
            if let Some(&byte) = line.iter().find(|&&b| !(0x20..0x7f).contains(&b)) {
                return Err(ReplyError::ForbiddenByte { line: n, byte });
            }
            if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
                return Err(ReplyError::MissingCode { line: n });
            }
            let code = line[..3]
                .iter()
                .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
            let first_code = *first.get_or_insert(code);
            if i == 0 && !(400..600).contains(&code) {
                return Err(ReplyError::BadCode(code));
            }
            if code != first_code {
                return Err(ReplyError::MixedCodes {
                    line: n,
                    first: first_code,
                    found: code,
                });
            }
            let last = n == lines.len();
            match (line.get(3), last) {
                (Some(b'-'), false) | (Some(b' '), true) | (None, true) => {}
                _ => return Err(ReplyError::BadSeparator { line: n }),
            }
            let text = line.get(4..).unwrap_or_default();
            if let Some(enhanced) = leading_enhanced(text) {
                check_enhanced(code, enhanced)?;
            }
            check_percent(text, n)?;
        }
        Ok(ReplyCode {
            wire: Bytes::copy_from_slice(wire),
            code: first.unwrap_or(0),
        })
    }

    /// The three-digit code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// Whether this is a temporary (4xx) failure.
    pub fn is_temporary(&self) -> bool {
        self.code < 500
    }

    /// The wire form (CRLF-joined lines, `%` doubled, no NUL).
    pub fn as_bytes(&self) -> &[u8] {
        &self.wire
    }

    /// The lines as an SMTP client will see them (`%%` undone).
    pub fn lines(&self) -> Vec<String> {
        split_crlf(&self.wire)
            .into_iter()
            .map(|l| String::from_utf8_lossy(l).replace("%%", "%"))
            .collect()
    }
}

impl std::fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lines().join(" / "))
    }
}

fn split_crlf(wire: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = wire;
    loop {
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + 2..];
            }
            None => {
                out.push(rest);
                return out;
            }
        }
    }
}

/// The `c.sss.ddd` token at the start of a line's text, if it looks like one.
fn leading_enhanced(text: &[u8]) -> Option<&str> {
    let token = text.split(|&b| b == b' ').next()?;
    let looks = token.len() >= 2
        && token[0].is_ascii_digit()
        && token[1] == b'.'
        && token.iter().all(|b| b.is_ascii_digit() || *b == b'.');
    if looks {
        std::str::from_utf8(token).ok()
    } else {
        None
    }
}

fn check_enhanced(code: u16, enhanced: &str) -> Result<(), ReplyError> {
    let parts: Vec<&str> = enhanced.split('.').collect();
    let ok = parts.len() == 3
        && parts[0].len() == 1
        && (1..=3).contains(&parts[1].len())
        && (1..=3).contains(&parts[2].len())
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return Err(ReplyError::BadEnhanced(enhanced.to_owned()));
    }
    let class = u16::from(parts[0].as_bytes()[0] - b'0');
    if class != code / 100 {
        return Err(ReplyError::EnhancedMismatch {
            code,
            enhanced: enhanced.to_owned(),
        });
    }
    Ok(())
}

fn check_percent(text: &[u8], line: usize) -> Result<(), ReplyError> {
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' {
            if text.get(i + 1) != Some(&b'%') {
                return Err(ReplyError::UndoubledPercent { line });
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced() {
        let r = ReplyCode::new(451, Some("4.7.1"), "try later").unwrap();
        assert_eq!(r.as_bytes(), b"451 4.7.1 try later");
        assert!(r.is_temporary());
        assert_eq!(r.code(), 451);
    }

    #[test]
    fn without_enhanced_code() {
        let r = ReplyCode::new(554, None, "no").unwrap();
        assert_eq!(r.as_bytes(), b"554 no");
        assert!(ReplyCode::parse(b"554").is_ok());
    }

    #[test]
    fn percent_is_doubled_and_undone() {
        let r = ReplyCode::new(550, None, "100% spam").unwrap();
        assert_eq!(r.as_bytes(), b"550 100%% spam");
        assert_eq!(r.lines(), vec!["550 100% spam"]);
        assert_eq!(
            ReplyCode::parse(b"550 100% spam"),
            Err(ReplyError::UndoubledPercent { line: 1 })
        );
    }

    #[test]
    fn codes_outside_4xx_5xx_are_refused() {
        assert_eq!(
            ReplyCode::new(250, None, "ok"),
            Err(ReplyError::BadCode(250))
        );
        assert_eq!(ReplyCode::parse(b"250 ok"), Err(ReplyError::BadCode(250)));
        assert_eq!(
            ReplyCode::new(600, None, "x"),
            Err(ReplyError::BadCode(600))
        );
    }

    #[test]
    fn mismatched_enhanced_class_is_refused() {
        assert!(matches!(
            ReplyCode::new(550, Some("4.7.1"), "x"),
            Err(ReplyError::EnhancedMismatch { .. })
        ));
        assert!(matches!(
            ReplyCode::parse(b"451 5.7.1 x"),
            Err(ReplyError::EnhancedMismatch { .. })
        ));
        assert!(matches!(
            ReplyCode::new(550, Some("5.7"), "x"),
            Err(ReplyError::BadEnhanced(_))
        ));
    }

    #[test]
    fn multiline_limits() {
        let text = vec!["x".repeat(960); 32].join("\n");
        let r = ReplyCode::new(550, Some("5.7.1"), &text).unwrap();
        assert_eq!(r.lines().len(), 32);
        let text = vec!["x"; 33].join("\n");
        assert_eq!(
            ReplyCode::new(550, None, &text),
            Err(ReplyError::TooManyLines(33))
        );
        let long = "x".repeat(977);
        assert!(matches!(
            ReplyCode::new(550, None, &long),
            Err(ReplyError::LineTooLong { line: 1, len: 981 })
        ));
    }

    #[test]
    fn separators_must_be_consistent() {
        assert!(ReplyCode::parse(b"550-a\r\n550 b").is_ok());
        assert_eq!(
            ReplyCode::parse(b"550 a\r\n550 b"),
            Err(ReplyError::BadSeparator { line: 1 })
        );
        assert_eq!(
            ReplyCode::parse(b"550-a"),
            Err(ReplyError::BadSeparator { line: 1 })
        );
        assert!(matches!(
            ReplyCode::parse(b"550-a\r\n451 b"),
            Err(ReplyError::MixedCodes { .. })
        ));
    }

    #[test]
    fn control_and_non_ascii_bytes_are_refused() {
        for bad in [
            &b"550 a\rb"[..],
            b"550 a\nb",
            b"550 a\0b",
            "550 caf\u{e9}".as_bytes(),
        ] {
            assert!(
                matches!(ReplyCode::parse(bad), Err(ReplyError::ForbiddenByte { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ReplyCode::new(550, None, "a\rb"),
            Err(ReplyError::ForbiddenByte { .. })
        ));
    }
}
