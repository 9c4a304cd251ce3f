//! Maps between byte offsets in the TOML text and dotted key paths, so that every error can
//! name both the key and the line.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// One key (or array element) of the document with where it is written.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    key_span: Option<Range<usize>>,
    value_span: Option<Range<usize>>,
}

/// Index of every key in a TOML document.
#[derive(Debug, Clone)]
pub(crate) struct Locator {
    text: String,
    entries: Vec<Entry>,
}

/// A place in the text, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineCol {
    pub line: usize,
    pub column: usize,
}

impl Locator {
    /// Indexes `text`. When the text is not syntactically valid TOML the index is empty
    /// (offsets are still converted to lines, and keys are guessed from the line's text).
    pub(crate) fn new(text: &str) -> Self {
        let mut entries = Vec::new();
        if let Ok(doc) = ImDocument::parse(text) {
            walk_table(doc.as_table(), "", &mut entries);
        }
        Locator {
            text: text.to_owned(),
            entries,
        }
    }

    /// Converts a byte offset into a line and column (both 1-based; the column counts characters).
    pub(crate) fn line_col(&self, offset: usize) -> LineCol {
        let offset = offset.min(self.text.len());
        let mut start = offset;
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        LineCol { line, column }
    }

    /// The deepest key whose key or value covers `offset`.
    pub(crate) fn key_at(&self, offset: usize) -> Option<String> {
        let covers = |span: &Option<Range<usize>>| {
            span.as_ref()
                .is_some_and(|s| s.start <= offset && (offset < s.end || s.is_empty()))
        };
        self.entries
            .iter()
            .filter(|e| covers(&e.key_span) || covers(&e.value_span))
            .max_by_key(|e| e.path.len())
            .map(|e| e.path.clone())
            .or_else(|| self.guess_key_from_line(offset))
    }

    /// Where the key `path` is written: the key itself when `at_value` is false, else its value.
    pub(crate) fn position_of(&self, path: &str, at_value: bool) -> Option<LineCol> {
        let entry = self.entries.iter().find(|e| e.path == path)?;
        let span = if at_value {
            entry.value_span.as_ref().or(entry.key_span.as_ref())
        } else {
            entry.key_span.as_ref().or(entry.value_span.as_ref())
        }?;
        Some(self.line_col(span.start))
    }

    /// Like [`Locator::position_of`], falling back to the closest enclosing key that is written
    /// (a defaulted `tenants[1].domain` points at `[[tenants]]`).
    pub(crate) fn position_of_nearest(&self, path: &str, at_value: bool) -> Option<LineCol> {
        let mut path = path;
        loop {
            if let Some(at) = self.position_of(path, at_value) {
                return Some(at);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }

    /// Whether `path` is written in the document.
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.entries.iter().any(|e| e.path == path)
    }

    /// For syntax errors the document cannot be indexed: take `key = ...` from the line and
    /// the closest `[table]` header above it.
    fn guess_key_from_line(&self, offset: usize) -> Option<String> {
        let LineCol { line, .. } = self.line_col(offset);
        let lines: Vec<&str> = self.text.lines().collect();
        let this = lines.get(line.checked_sub(1)?)?.trim();
        let (key, _) = this.split_once('=')?;
        let key = key.trim().trim_matches('"');
        if key.is_empty() || key.starts_with('[') || key.contains(char::is_whitespace) {
            return None;
        }
        let header = lines[..line - 1].iter().rev().find_map(|l| {
            let l = l.trim();
            let inner = l.strip_prefix('[')?;
            let inner = inner.trim_start_matches('[');
            let end = inner.find(']')?;
            Some(inner[..end].trim().to_owned())
        });
        Some(match header {
            Some(h) if !h.is_empty() => format!("{h}.{key}"),
            _ => key.to_owned(),
        })
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk_table(table: &Table, prefix: &str, out: &mut Vec<Entry>) {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let path = join(prefix, name);
        walk_item(item, path, key.span(), out);
    }
}

fn walk_item(item: &Item, path: String, key_span: Option<Range<usize>>, out: &mut Vec<Entry>) {
    match item {
        Item::None => {}
        Item::Value(value) => walk_value(value, path, key_span, out),
        Item::Table(table) => {
            out.push(Entry {
                path: path.clone(),
                key_span,
                value_span: table.span(),
            });
            walk_table(table, &path, out);
        }
        Item::ArrayOfTables(array) => {
            out.push(Entry {
                path: path.clone(),
                key_span,
                value_span: array.span(),
            });
            for (i, table) in array.iter().enumerate() {
                let element = format!("{path}[{i}]");
                out.push(Entry {
                    path: element.clone(),
                    key_span: table.span(),
                    value_span: None,
                });
                walk_table(table, &element, out);
            }
        }
    }
}

fn walk_value(value: &Value, path: String, key_span: Option<Range<usize>>, out: &mut Vec<Entry>) {
    out.push(Entry {
        path: path.clone(),
        key_span,
        value_span: value.span(),
    });
    match value {
        Value::Array(array) => {
            for (i, element) in array.iter().enumerate() {
                walk_value(element, format!("{path}[{i}]"), None, out);
            }
        }
        Value::InlineTable(table) => {
            for (name, _) in table.iter() {
                let Some((key, element)) = table.get_key_value(name) else {
                    continue;
                };
                walk_item(element, join(&path, name), key.span(), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[sip]\nudp = \"x\"\n\n[[tenants]]\nname = \"a\"\n[[tenants.users]]\nuser = \"1\"\n[[tenants.users]]\nuser = \"2\"\n";

    #[test]
    fn paths_and_lines() {
        let loc = Locator::new(DOC);
        assert_eq!(
            loc.position_of("sip.udp", false),
            Some(LineCol { line: 2, column: 1 })
        );
        assert_eq!(
            loc.position_of("sip.udp", true),
            Some(LineCol { line: 2, column: 7 })
        );
        assert_eq!(
            loc.position_of("tenants[0].users[1].user", false),
            Some(LineCol { line: 9, column: 1 })
        );
        let offset = DOC.find("\"2\"").unwrap_or(0);
        assert_eq!(
            loc.key_at(offset).as_deref(),
            Some("tenants[0].users[1].user")
        );
    }

    #[test]
    fn guesses_key_on_syntax_error() {
        let text = "[http]\nlisten = \n";
        let loc = Locator::new(text);
        assert_eq!(loc.key_at(text.len() - 1).as_deref(), Some("http.listen"));
    }
}
