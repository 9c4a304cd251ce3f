//! `<subdialog>` and `<return>`: the caller's whole context (documents, scopes, form) is
//! saved on a stack while the subdialog runs in a fresh application and document context.

use crate::dom::{self, Elem};
use crate::exec::{self, Jump};
use crate::fetchopts::{Kind, Props};
use crate::interp::{new_named_scope, FormState, Interpreter, Step, Wait};
use crate::{FetchOptions, Method};
use serde_json::{json, Value as Json};
use std::rc::Rc;
use switchboard_ecma::Scope;

/// A caller's context while its subdialog runs.
pub(crate) struct Frame {
    app_scope: Scope,
    doc_scope: Scope,
    app_url: Option<String>,
    app_root: Option<Rc<Elem>>,
    doc_url: String,
    doc_root: Option<Rc<Elem>>,
    form: Option<FormState>,
    item: usize,
}

/// Nested subdialogs beyond this are taken for runaway recursion.
const MAX_DEPTH: usize = 32;

impl Interpreter {
    /// Collect phase of a `<subdialog>` item: evaluate its params in the caller, then run the
    /// target dialog in a new context.
    pub(crate) fn start_subdialog(&mut self, i: usize, item: &Elem, scope: Scope) -> Step {
        match self.subdialog_call(item, scope) {
            Ok((url, params)) => {
                let options = self.fetch_options(Some(item), Kind::Document, Props::Current);
                self.enter_subdialog(i, url, params, options)
            }
            Err(j) => Step::Jump(j),
        }
    }

    fn subdialog_call(
        &mut self,
        item: &Elem,
        scope: Scope,
    ) -> Result<(String, Vec<(String, Json)>), Jump> {
        let raw = match (item.attr("src"), item.attr("srcexpr")) {
            (Some(s), _) => s.to_string(),
            (None, Some(x)) => self.string(scope, x)?,
            (None, None) => return Err(exec::throw("error.badfetch", "subdialog without src")),
        };
        let mut params = Vec::new();
        for p in item.children("param") {
            let Some(name) = p.attr("name") else {
                return Err(exec::throw("error.badfetch", "<param> without name"));
            };
            let v = match (p.attr("expr"), p.attr("value")) {
                (Some(x), _) => self.eval(scope, x)?.unwrap_or(Json::Null),
                (None, Some(v)) => Json::String(v.to_string()),
                (None, None) => Json::Null,
            };
            params.push((name.to_string(), v));
        }
        Ok((dom::resolve(&self.doc_url, &raw), params))
    }

    fn enter_subdialog(
        &mut self,
        i: usize,
        url: String,
        params: Vec<(String, Json)>,
        options: FetchOptions,
    ) -> Step {
        if self.stack.len() >= MAX_DEPTH {
            return self.throw("error.semantic", "subdialogs nested too deep");
        }
        let caller_root = self.doc_root.clone();
        let same_doc = dom::split_fragment(&url).0 == dom::split_fragment(&self.doc_url).0;
        let app = match new_named_scope(&self.engine, self.session_scope, "application") {
            Ok(s) => s,
            Err(e) => return Step::Jump(exec::semantic(e)),
        };
        let doc = match new_named_scope(&self.engine, app, "document") {
            Ok(s) => s,
            Err(e) => return Step::Jump(exec::semantic(e)),
        };
        let frame = Frame {
            app_scope: std::mem::replace(&mut self.app_scope, app),
            doc_scope: std::mem::replace(&mut self.doc_scope, doc),
            app_url: self.app_url.take(),
            app_root: self.app_root.take(),
            doc_url: self.doc_url.clone(),
            doc_root: self.doc_root.take(),
            form: self.form.take(),
            item: i,
        };
        self.stack.push(frame);
        self.sub_params = Some(params);
        match caller_root {
            Some(root) if same_doc => self.document_fetched(url, root),
            _ => {
                self.fetch(url, Method::Get, Vec::new(), options);
                Step::Wait
            }
        }
    }

    /// Drops the subdialog's context and restores the caller's; returns the caller's item.
    fn pop_frame(&mut self) -> Option<usize> {
        let f = self.stack.pop()?;
        self.leave_form();
        self.engine.drop_scope(self.doc_scope);
        self.engine.drop_scope(self.app_scope);
        self.app_scope = f.app_scope;
        self.doc_scope = f.doc_scope;
        self.app_url = f.app_url;
        self.app_root = f.app_root;
        self.doc_url = f.doc_url;
        self.doc_root = f.doc_root;
        self.form = f.form;
        self.wait = Wait::Nothing;
        self.sub_params = None;
        if let Some(form) = self.form.as_mut() {
            form.current = Some(f.item);
        }
        Some(f.item)
    }

    /// `<return>`: the values fill the caller's subdialog item, or the event is thrown there.
    pub(crate) fn return_from_subdialog(
        &mut self,
        values: Json,
        event: Option<(String, String)>,
    ) -> Step {
        let Some(i) = self.pop_frame() else {
            return self.throw("error.semantic", "<return> outside a subdialog");
        };
        if let Some((ev, msg)) = event {
            return self.throw(&ev, &msg);
        }
        let Some(form) = &self.form else {
            return Step::Select;
        };
        let (scope, var) = (form.scope, form.items[i].var.clone());
        self.fill(i, scope, &var, Some(values), json!({}))
    }

    /// A fetch failed: error.badfetch, thrown in the caller when a subdialog could not even
    /// load its document.
    pub(crate) fn fetch_failed(&mut self, event: &str, reason: &str) -> Step {
        if self.doc_root.is_none() && !self.stack.is_empty() {
            self.pop_frame();
        }
        self.throw(event, reason)
    }
}
