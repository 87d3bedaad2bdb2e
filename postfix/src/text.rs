//! Peer bytes made safe for error messages and for texts Postfix will log.

use std::borrow::Cow;

/// Bytes of peer input quoted in an error message, at most.
const PREVIEW_BYTES: usize = 80;

/// Up to [`PREVIEW_BYTES`] bytes, escaped (`\n`, `\x00` …) and quoted, with `…` if cut.
pub(crate) fn preview(bytes: &[u8]) -> String {
    let cut = bytes.len() > PREVIEW_BYTES;
    let shown = &bytes[..bytes.len().min(PREVIEW_BYTES)];
    format!("\"{}{}\"", shown.escape_ascii(), if cut { "…" } else { "" })
}

/// `s` with every control character (C0, DEL, C1) replaced by a space.
pub(crate) fn controls_to_spaces(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate(s: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return s;
    }
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..b.floor_char_boundary(max)]),
        Cow::Owned(mut o) => {
            o.truncate(o.floor_char_boundary(max));
            Cow::Owned(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_escapes_and_cuts() {
        assert_eq!(preview(b"a\nb\0"), r#""a\nb\x00""#);
        let long = vec![b'x'; 200];
        let p = preview(&long);
        assert!(p.ends_with("…\""));
        assert_eq!(p.len(), 80 + 2 + "…".len());
    }

    #[test]
    fn controls_become_spaces() {
        assert!(matches!(
            controls_to_spaces("plain"),
            Cow::Borrowed("plain")
        ));
        assert_eq!(controls_to_spaces("a\r\nb\tc\u{7f}d\u{85}e"), "a  b c d e");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate(Cow::Borrowed("abc"), 5), "abc");
        assert_eq!(truncate(Cow::Borrowed("aé"), 2), "a");
        assert_eq!(truncate(Cow::Owned("aéb".to_owned()), 3), "aé");
    }
}
