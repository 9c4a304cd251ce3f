//! A small owned element tree built from roxmltree, and URL resolution.
//!
//! The interpreter keeps documents for the whole call and walks them by element name, so an
//! owned tree with `Rc` nodes (cheap to hold on to the current form item) is simpler than
//! keeping a borrowed roxmltree document alive.

use std::rc::Rc;

/// An element: local name, attributes, children.
#[derive(Debug)]
pub struct Elem {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub kids: Vec<Node>,
}

/// A child node: an element or a run of text.
#[derive(Debug, Clone)]
pub enum Node {
    Elem(Rc<Elem>),
    Text(String),
}

impl Elem {
    /// The value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Child elements.
    pub fn elems(&self) -> impl Iterator<Item = &Rc<Elem>> {
        self.kids.iter().filter_map(|n| match n {
            Node::Elem(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Child elements named `name`.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Rc<Elem>> + 'a {
        self.elems().filter(move |e| e.name == name)
    }

    /// The concatenated text of this element and its descendants.
    pub fn text(&self) -> String {
        let mut out = String::new();
        collect_text(self, &mut out);
        out
    }
}

fn collect_text(e: &Elem, out: &mut String) {
    for k in &e.kids {
        match k {
            Node::Text(t) => out.push_str(t),
            Node::Elem(c) => collect_text(c, out),
        }
    }
}

/// Parses XML text; DTDs (and so external entities) are refused.
pub fn parse(text: &str) -> Result<Rc<Elem>, String> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, opts).map_err(|e| e.to_string())?;
    if too_deep(doc.root_element()) {
        return Err(format!("elements nested deeper than {MAX_DEPTH}"));
    }
    Ok(convert(doc.root_element()))
}

/// The tree is walked recursively (conversion, validation, execution): deeper documents are
/// refused so that a hostile page cannot overflow the stack.
const MAX_DEPTH: usize = 200;

fn too_deep(root: roxmltree::Node<'_, '_>) -> bool {
    root.descendants()
        .any(|n| n.is_element() && n.ancestors().count() > MAX_DEPTH)
}

fn convert(n: roxmltree::Node<'_, '_>) -> Rc<Elem> {
    let attrs = n
        .attributes()
        .map(|a| (a.name().to_string(), a.value().to_string()))
        .collect();
    let kids = n
        .children()
        .filter_map(|c| {
            if c.is_element() {
                Some(Node::Elem(convert(c)))
            } else if c.is_text() {
                c.text().map(|t| Node::Text(t.to_string()))
            } else {
                None
            }
        })
        .collect();
    Rc::new(Elem {
        name: n.tag_name().name().to_string(),
        attrs,
        kids,
    })
}

/// Splits `url#frag` into the document part and the fragment.
pub fn split_fragment(url: &str) -> (&str, Option<&str>) {
    match url.find('#') {
        Some(i) => (&url[..i], Some(&url[i + 1..])),
        None => (url, None),
    }
}

/// Resolves `rel` against `base` (RFC 3986 in the common cases: absolute URL, absolute path,
/// fragment only, relative path with `.` and `..` segments).
pub fn resolve(base: &str, rel: &str) -> String {
    let rel = rel.trim();
    if rel.contains("://") || rel.starts_with("data:") {
        return rel.to_string();
    }
    let (base_doc, _) = split_fragment(base);
    if rel.is_empty() {
        return base_doc.to_string();
    }
    if rel.starts_with('#') {
        return format!("{base_doc}{rel}");
    }
    let base_doc = base_doc.split('?').next().unwrap_or(base_doc);
    let (origin, path) = match base_doc.find("://") {
        Some(i) => {
            let after = &base_doc[i + 3..];
            let slash = after.find('/').map(|j| i + 3 + j).unwrap_or(base_doc.len());
            (&base_doc[..slash], &base_doc[slash..])
        }
        None => ("", base_doc),
    };
    let joined = if rel.starts_with('/') {
        rel.to_string()
    } else {
        let dir = match path.rfind('/') {
            Some(i) => &path[..=i],
            None => "/",
        };
        format!("{dir}{rel}")
    };
    format!("{origin}{}", normalize(&joined))
}

/// Removes `.` and `..` segments from a path (keeping any query/fragment untouched).
fn normalize(path: &str) -> String {
    let (p, rest) = match path.find(['?', '#']) {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    };
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "." => {}
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
            }
            s => out.push(s),
        }
    }
    format!("{}{rest}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_urls() {
        assert_eq!(resolve("http://h/a/b.vxml", "c.vxml"), "http://h/a/c.vxml");
        assert_eq!(resolve("http://h/a/b.vxml", "/x"), "http://h/x");
        assert_eq!(resolve("http://h/a/b.vxml", "#f"), "http://h/a/b.vxml#f");
        assert_eq!(resolve("http://h/a/b.vxml", "../c"), "http://h/c");
        assert_eq!(resolve("http://h/a/b.vxml", "http://o/z"), "http://o/z");
    }

    #[test]
    fn refuses_deep_nesting() {
        let deep = format!("{}{}", "<a>".repeat(300), "</a>".repeat(300));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn refuses_dtd() {
        assert!(parse("<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>").is_err());
        assert_eq!(parse("<a b='1'>t<c/></a>").unwrap().text(), "t");
    }
}
