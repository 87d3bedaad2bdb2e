//! Helpers for mail addresses as they appear in envelopes and settings.

/// Removes surrounding whitespace and one pair of angle brackets: `<a@b>` → `a@b`.
pub fn strip_brackets(address: &str) -> &str {
    let a = address.trim();
    a.strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(a)
        .trim()
}

/// The domain of an address (after the last `@`), if it has a non-empty one.
pub fn domain(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

/// The local part of an address (before the last `@`); the whole text when there is no `@`.
pub fn local_part(address: &str) -> &str {
    address.rsplit_once('@').map_or(address, |(l, _)| l)
}

/// Normalises an address for comparisons and keys: brackets removed, ASCII-lowercased.
pub fn normalize(address: &str) -> String {
    strip_brackets(address).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(strip_brackets(" <a@b.c> "), "a@b.c");
        assert_eq!(strip_brackets("<>"), "");
        assert_eq!(strip_brackets("a@b"), "a@b");
        assert_eq!(domain("a@b.c"), Some("b.c"));
        assert_eq!(domain("\"x@y\"@b.c"), Some("b.c"));
        assert_eq!(domain("a@"), None);
        assert_eq!(domain("postmaster"), None);
        assert_eq!(local_part("a+x@b"), "a+x");
        assert_eq!(normalize("<A@B.C>"), "a@b.c");
    }
}
