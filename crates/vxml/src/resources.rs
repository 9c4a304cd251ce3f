//! External scripts, grammars and `<data>` (`src`, `srcexpr`).
//!
//! The interpreter cannot stop in the middle of executable content to wait for a fetch, so a
//! document's static `src` URLs are fetched before the document is initialized, and a field's
//! `srcexpr` grammars before the field collects. Results are kept by URL for the call.

use crate::dom::{self, Elem};
use crate::exec::{self, Jump};
use crate::fetchopts::{Kind, Props};
use crate::interp::{Fetching, Interpreter, Step, Wait};
use crate::{Command, FetchOptions, Method};
use std::rc::Rc;

/// What to do once a resource has arrived.
pub(crate) enum Resume {
    /// Go on loading this document.
    Document(Fetching, Rc<Elem>),
    /// Collect form item `i` again.
    Collect(usize),
}

impl Interpreter {
    pub(crate) fn fetch_resource(
        &mut self,
        url: String,
        options: FetchOptions,
        resume: Resume,
    ) -> Step {
        self.cmds.push_back(Command::Fetch {
            url: url.clone(),
            method: Method::Get,
            params: Vec::new(),
            options,
        });
        self.wait = Wait::Fetch(Fetching::Resource {
            url,
            resume: Box::new(resume),
        });
        Step::Wait
    }

    pub(crate) fn resource_fetched(
        &mut self,
        url: String,
        result: Result<String, String>,
        resume: Resume,
    ) -> Step {
        self.resources.insert(url, result);
        match resume {
            Resume::Document(fetching, root) => self.process_document(fetching, root),
            Resume::Collect(i) => {
                // The interrupted attempt does not count as a visit.
                if let Some(f) = self.form.as_mut() {
                    f.prompt_counts[i] = f.prompt_counts[i].saturating_sub(1);
                }
                self.collect(i)
            }
        }
    }

    /// The first static script, grammar or data URL of document `doc` (at `base`) that has
    /// not been fetched yet, with how to fetch it.
    pub(crate) fn missing_resource(
        &self,
        doc: &Elem,
        e: &Elem,
        base: &str,
    ) -> Option<(String, FetchOptions)> {
        if e.name == "script" || e.name == "grammar" || e.name == "data" {
            if let Some(src) = e.attr("src").filter(|s| !s.starts_with("builtin:")) {
                let url = dom::resolve(base, src);
                let url = dom::split_fragment(&url).0.to_string();
                if !self.resources.contains_key(&url) {
                    let options =
                        self.fetch_options(Some(e), Kind::of(e), Props::Loading(doc, base));
                    return Some((url, options));
                }
            }
        }
        e.elems().find_map(|c| self.missing_resource(doc, c, base))
    }

    /// The first `srcexpr` URL of an item's grammars, or of the scripts and data inside it, that has not
    /// been fetched yet. Script expressions are evaluated ahead of time in the dialog scope;
    /// one that fails here is left to fail (with its own error) when the script runs.
    pub(crate) fn missing_expr_resource(
        &self,
        item: &Elem,
    ) -> Result<Option<(String, FetchOptions)>, Jump> {
        let scope = self
            .form
            .as_ref()
            .map(|f| f.scope)
            .unwrap_or(self.doc_scope);
        for g in item.children("grammar") {
            if let Some(x) = g.attr("srcexpr") {
                let url = dom::resolve(&self.doc_url, &self.string(scope, x)?);
                if !self.resources.contains_key(&url) {
                    let options = self.fetch_options(Some(g), Kind::Grammar, Props::Current);
                    return Ok(Some((url, options)));
                }
            }
        }
        let mut scripts = Vec::new();
        scripts_with_srcexpr(item, &mut scripts);
        for (x, e) in scripts {
            if let Ok(u) = self.string(scope, &x) {
                let url = dom::resolve(&self.doc_url, &u);
                if !self.resources.contains_key(&url) {
                    let options = self.fetch_options(Some(e), Kind::of(e), Props::Current);
                    return Ok(Some((url, options)));
                }
            }
        }
        Ok(None)
    }

    /// The fetched text of `url` (error.badfetch when it failed).
    pub(crate) fn resource(&self, url: &str) -> Result<String, Jump> {
        let url = dom::split_fragment(url).0;
        match self.resources.get(url) {
            Some(Ok(t)) => Ok(t.clone()),
            Some(Err(reason)) => Err(exec::throw("error.badfetch", reason)),
            None => Err(exec::throw(
                "error.badfetch",
                &format!("{url} was not fetched"),
            )),
        }
    }

    /// A `<grammar>` element, or the SRGS document its `src`/`srcexpr` names.
    pub(crate) fn grammar_element(&self, g: &Rc<Elem>) -> Result<Rc<Elem>, Jump> {
        let scope = self
            .form
            .as_ref()
            .map(|f| f.scope)
            .unwrap_or(self.doc_scope);
        let url = match (g.attr("src"), g.attr("srcexpr")) {
            (Some(s), _) => dom::resolve(&self.doc_url, s),
            (None, Some(x)) => dom::resolve(&self.doc_url, &self.string(scope, x)?),
            (None, None) if g.elems().next().is_none() && g.text().trim().starts_with("#ABNF") => {
                return abnf_grammar(&g.text(), Some(g));
            }
            (None, None) => return Ok(g.clone()),
        };
        let text = self.resource(&url)?;
        if text.trim_start().starts_with("#ABNF") {
            return abnf_grammar(&text, None);
        }
        let root = dom::parse(&text).map_err(|m| exec::throw("error.badfetch", &m))?;
        if root.name != "grammar" {
            return Err(exec::throw("error.badfetch", "not an SRGS grammar"));
        }
        Ok(root)
    }
}

fn scripts_with_srcexpr<'a>(e: &'a Elem, out: &mut Vec<(String, &'a Elem)>) {
    for c in e.elems() {
        match c.attr("srcexpr") {
            Some(x) if c.name == "script" || c.name == "data" => out.push((x.to_string(), c)),
            _ => scripts_with_srcexpr(c, out),
        }
    }
}

/// An ABNF grammar as an SRGS element; the `mode` of an enclosing `<grammar>` applies when
/// the ABNF header declares none.
fn abnf_grammar(text: &str, outer: Option<&Elem>) -> Result<Rc<Elem>, Jump> {
    let g = crate::abnf::parse(text).map_err(|m| exec::throw("error.badfetch", &m))?;
    let outer_mode = outer.and_then(|o| o.attr("mode"));
    match outer_mode {
        Some(mode) if g.attr("mode").is_none() => {
            let mut attrs = g.attrs.clone();
            attrs.push(("mode".into(), mode.to_string()));
            Ok(Rc::new(Elem {
                name: g.name.clone(),
                attrs,
                kids: g.kids.clone(),
            }))
        }
        _ => Ok(g),
    }
}
