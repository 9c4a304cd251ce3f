//! Load-time checks: a document that breaks these is a semantic error of the document, so its
//! fetch fails with error.badfetch in the referring context (VoiceXML 2.0 §5.2.6) instead of
//! failing halfway through a dialog.

use crate::dom::{Elem, Node};

/// Attribute groups of which at most one may be present (`exactly` also requires one).
struct Rule {
    elem: &'static str,
    attrs: &'static [&'static str],
    exactly: bool,
}

const RULES: &[Rule] = &[
    rule("goto", &["next", "expr", "nextitem", "expritem"], true),
    rule("submit", &["next", "expr"], true),
    rule("subdialog", &["src", "srcexpr"], true),
    rule("audio", &["src", "expr"], true),
    rule("throw", &["event", "eventexpr"], true),
    rule("choice", &["next", "expr", "event", "eventexpr"], false),
    rule("link", &["next", "expr", "event", "eventexpr"], true),
    rule("exit", &["expr", "namelist"], false),
    rule("return", &["event", "eventexpr", "namelist"], false),
    rule("log", &["label", "labelexpr"], false),
    rule("transfer", &["dest", "destexpr"], false),
    rule("param", &["expr", "value"], false),
    rule("data", &["src", "srcexpr"], true),
    rule("var", &["name"], true),
    rule("foreach", &["array"], true),
    rule("foreach", &["item"], true),
    rule("assign", &["name"], true),
];

const fn rule(elem: &'static str, attrs: &'static [&'static str], exactly: bool) -> Rule {
    Rule {
        elem,
        attrs,
        exactly,
    }
}

/// Checks the whole tree.
pub fn validate(e: &Elem) -> Result<(), String> {
    check(e)?;
    for c in e.elems() {
        validate(c)?;
    }
    Ok(())
}

fn check(e: &Elem) -> Result<(), String> {
    for r in RULES.iter().filter(|r| r.elem == e.name) {
        let n = r.attrs.iter().filter(|a| e.attr(a).is_some()).count();
        if n > 1 || (r.exactly && n == 0) {
            return Err(format!(
                "<{}> needs {} of {:?}",
                e.name,
                quantity(r),
                r.attrs
            ));
        }
    }
    match e.name.as_str() {
        "script" => one_source(e, has_text(e)),
        "grammar" => one_source(e, has_text(e) || e.elems().next().is_some()),
        _ => Ok(()),
    }
}

fn quantity(r: &Rule) -> &'static str {
    if r.exactly {
        "exactly one"
    } else {
        "at most one"
    }
}

fn has_text(e: &Elem) -> bool {
    e.kids.iter().any(|k| match k {
        Node::Text(t) => !t.trim().is_empty(),
        Node::Elem(_) => false,
    })
}

/// Scripts and grammars come from exactly one of `src`, `srcexpr` or inline content.
fn one_source(e: &Elem, inline: bool) -> Result<(), String> {
    let n = ["src", "srcexpr"]
        .iter()
        .filter(|a| e.attr(a).is_some())
        .count()
        + usize::from(inline);
    if n != 1 {
        return Err(format!(
            "<{}> needs exactly one of src, srcexpr or inline content",
            e.name
        ));
    }
    Ok(())
}
