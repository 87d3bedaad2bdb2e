//! Maps byte offsets and dotted key paths of a TOML document to lines, columns and keys,
//! so that every configuration error can name where it is.

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

/// A parsed view of the document that answers "which line" and "which key" questions.
#[derive(Debug)]
pub struct Locator<'i> {
    text: &'i str,
    line_starts: Vec<usize>,
    root: Option<Spanned<DeTable<'i>>>,
}

impl<'i> Locator<'i> {
    /// Indexes `text`; a document that does not parse still gives lines and columns.
    pub fn new(text: &'i str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let (root, _errors) = DeTable::parse_recoverable(text);
        Locator {
            text,
            line_starts,
            root: Some(root),
        }
    }

    /// 1-based line and column of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let column = self.text[start..offset].chars().count() + 1;
        (line + 1, column)
    }

    /// The dotted path of the innermost key whose key or value covers `offset`.
    pub fn key_at(&self, offset: usize) -> String {
        let mut path = Vec::new();
        if let Some(root) = &self.root {
            walk_table(root.get_ref(), offset, &mut path);
        }
        path.join(".")
    }

    /// Line and column of the key at dotted `path` (segments may carry `[n]` array indexes).
    /// Falls back to the nearest existing ancestor when the key itself is absent (for
    /// "missing key" problems).
    pub fn key_line_col(&self, path: &str) -> Option<(usize, usize)> {
        let root = self.root.as_ref()?;
        let mut table: &DeTable<'_> = root.get_ref();
        let mut found: Option<usize> = None;
        for segment in path.split('.') {
            let (name, index) = split_index(segment);
            let Some((key, value)) = table.iter().find(|(k, _)| k.get_ref() == name) else {
                break;
            };
            found = Some(key.span().start);
            let mut value: &Spanned<DeValue<'_>> = value;
            if let Some(i) = index {
                match value.get_ref() {
                    DeValue::Array(items) if i < items.len() => {
                        value = &items[i];
                        found = Some(value.span().start);
                    }
                    _ => break,
                }
            }
            match value.get_ref() {
                DeValue::Table(t) => table = t,
                _ => break,
            }
        }
        found.map(|o| self.line_col(o))
    }
}

fn split_index(segment: &str) -> (&str, Option<usize>) {
    if let Some(open) = segment.find('[')
        && let Some(i) = segment[open + 1..]
            .strip_suffix(']')
            .and_then(|n| n.parse().ok())
    {
        return (&segment[..open], Some(i));
    }
    (segment, None)
}

fn covers(span: std::ops::Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// Depth-first search for the deepest key whose key span or scalar value span covers
/// `offset`. Table and array spans are not trusted to cover their bodies (a `[header]`
/// table's span is the header only), so containers are always searched.
fn walk_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        if covers(key.span(), offset) || walk_value(value, offset, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn walk_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<String>) -> bool {
    match value.get_ref() {
        DeValue::Table(t) => walk_table(t, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let saved = path.last().cloned();
                if let Some(last) = path.last_mut() {
                    last.push_str(&format!("[{i}]"));
                }
                if walk_value(item, offset, path) {
                    return true;
                }
                if let (Some(last), Some(saved)) = (path.last_mut(), saved) {
                    *last = saved;
                }
            }
            covers(value.span(), offset)
        }
        _ => covers(value.span(), offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        let l = Locator::new("a = 1\nbb = 2\n");
        assert_eq!(l.line_col(0), (1, 1));
        assert_eq!(l.line_col(6), (2, 1));
        assert_eq!(l.line_col(8), (2, 3));
    }

    #[test]
    fn key_paths_resolve_to_lines_including_arrays() {
        let text = "[milter]\nlisten = \"unix:/x\"\nchain = [\"a\",\n  \"b\"]\n\n[plugins.spam]\nfile = \"s.wasm\"\n";
        let l = Locator::new(text);
        assert_eq!(l.key_line_col("milter.listen"), Some((2, 1)));
        assert_eq!(l.key_line_col("milter.chain[1]").map(|p| p.0), Some(4));
        assert_eq!(l.key_line_col("plugins.spam.file"), Some((7, 1)));
        // Missing key: nearest ancestor.
        assert_eq!(l.key_line_col("plugins.spam.nope").map(|p| p.0), Some(6));
    }

    #[test]
    fn key_at_finds_nested_values() {
        let text = "[server]\nshutdown_grace = 5\n";
        let l = Locator::new(text);
        let off = text.find('5').unwrap();
        assert_eq!(l.key_at(off), "server.shutdown_grace");
    }
}
