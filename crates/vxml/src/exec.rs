//! Executable content (blocks, filled, catch) and prompts, over the ECMAScript scopes.

use crate::dom::{self, Elem, Node};
use crate::fetchopts::{Kind, Props};
use crate::interp::{parse_time, Interpreter};
use crate::{script, Command, FetchOptions, Method, PromptPart};
use serde_json::{Map, Value as Json};
use std::rc::Rc;
use switchboard_ecma::{EcmaError, Scope};

/// The name every scope object has for itself (used to declare into the innermost scope).
pub(crate) const SELF: &str = "__vxself";
/// The guard variable of a menu's implicit item.
pub(crate) const MENU_VAR: &str = "__vx_menu";

/// A transfer of control out of executable content.
#[derive(Debug, Clone)]
pub(crate) enum Jump {
    /// Boxed: it keeps `Jump` (the error type of executable content) small.
    Goto(String, Box<FetchOptions>),
    GotoItem(String),
    Submit {
        url: String,
        method: Method,
        params: Vec<(String, String)>,
        options: Box<FetchOptions>,
    },
    Throw {
        event: String,
        message: String,
    },
    Exit(Json),
    /// `<return>`: values for the caller, or an event to throw there.
    Return {
        values: Json,
        event: Option<(String, String)>,
    },
    Disconnect(Json),
}

pub(crate) fn throw(event: &str, message: &str) -> Jump {
    Jump::Throw {
        event: event.to_string(),
        message: message.to_string(),
    }
}

/// An ECMAScript failure (including a script stopped by the time or memory limit).
pub(crate) fn semantic(e: EcmaError) -> Jump {
    throw("error.semantic", &e.to_string())
}

fn js_str(s: &str) -> String {
    Json::String(s.to_string()).to_string()
}

impl Interpreter {
    pub(crate) fn eval(&self, scope: Scope, expr: &str) -> Result<Option<Json>, Jump> {
        let e = expr.trim().trim_end_matches(';');
        self.engine
            .eval_in_scope(scope, &format!("({e}\n)"))
            .map_err(semantic)
    }

    pub(crate) fn cond(&self, scope: Scope, expr: &str) -> Result<bool, Jump> {
        let e = expr.trim().trim_end_matches(';');
        let v = self
            .engine
            .eval_in_scope(scope, &format!("!!({e}\n)"))
            .map_err(semantic)?;
        Ok(v == Some(Json::Bool(true)))
    }

    pub(crate) fn string(&self, scope: Scope, expr: &str) -> Result<String, Jump> {
        let e = expr.trim().trim_end_matches(';');
        let v = self
            .engine
            .eval_in_scope(scope, &format!("String({e}\n)"))
            .map_err(semantic)?;
        Ok(match v {
            Some(Json::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        })
    }

    pub(crate) fn declare(&self, scope: Scope, name: &str, v: Option<&Json>) -> Result<(), Jump> {
        self.engine
            .declare_in_scope(scope, name, v)
            .map_err(semantic)
    }

    /// `<var name expr>`: declared in `scope`, the value evaluated in place so that it may be
    /// any ECMAScript value (functions, dates), not only JSON.
    pub(crate) fn exec_var(&mut self, e: &Elem, scope: Scope) -> Result<(), Jump> {
        let Some(name) = e.attr("name") else {
            return Err(throw("error.badfetch", "<var> without name"));
        };
        self.declare(scope, name, None)?;
        if let Some(x) = e.attr("expr") {
            let code = format!("{SELF}[{}] = ({}\n); void 0", js_str(name), x.trim());
            self.engine.eval_in_scope(scope, &code).map_err(semantic)?;
        }
        Ok(())
    }

    /// `<script>`: inline source run in `scope`; its top-level declarations land in `scope`.
    pub(crate) fn exec_script(&mut self, e: &Elem, scope: Scope) -> Result<(), Jump> {
        let src = match (e.attr("src"), e.attr("srcexpr")) {
            (Some(s), _) => self.resource(&dom::resolve(&self.doc_url, s))?,
            (None, Some(x)) => {
                let url = dom::resolve(&self.doc_url, &self.string(scope, x)?);
                self.resource(&url)?
            }
            (None, None) => e.text(),
        };
        let (vars, funcs) = script::declarations(&src);
        for v in &vars {
            // Pre-declared names make the initializers assign into the scope object.
            let code = format!(
                "if (!({} in {SELF})) {SELF}[{}] = undefined",
                js_str(v),
                js_str(v)
            );
            self.engine.eval_in_scope(scope, &code).map_err(semantic)?;
        }
        let mut code = src;
        for f in &funcs {
            code.push_str(&format!(
                "\n;if (typeof {f} === 'function') {SELF}[{}] = {f};",
                js_str(f)
            ));
        }
        // The script's completion value is not needed (and may not be JSON).
        code.push_str("\n;void 0");
        self.engine.eval_in_scope(scope, &code).map_err(semantic)?;
        Ok(())
    }

    /// Runs content in a fresh anonymous scope under `parent` with some variables declared.
    pub(crate) fn exec_in_anon(
        &mut self,
        kids: &[Node],
        parent: Scope,
        vars: &[(&str, Json)],
    ) -> Result<(), Jump> {
        let anon = self.engine.new_scope(Some(parent)).map_err(semantic)?;
        let r = self
            .init_anon(anon, vars)
            .and_then(|_| self.exec(kids, anon));
        self.engine.drop_scope(anon);
        r
    }

    fn init_anon(&mut self, anon: Scope, vars: &[(&str, Json)]) -> Result<(), Jump> {
        self.engine.alias_scope(anon, SELF).map_err(semantic)?;
        for (k, v) in vars {
            self.declare(anon, k, Some(v))?;
        }
        Ok(())
    }

    /// Executes a list of nodes; bare text and audio are prompts.
    pub(crate) fn exec(&mut self, kids: &[Node], scope: Scope) -> Result<(), Jump> {
        for k in kids {
            match k {
                Node::Text(t) => self.queue_text(t),
                Node::Elem(e) => self.exec_elem(e, scope)?,
            }
        }
        Ok(())
    }

    fn queue_text(&mut self, t: &str) {
        let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
        if !t.is_empty() {
            self.prompts.push(PromptPart::Text(t));
        }
    }

    fn exec_elem(&mut self, e: &Rc<Elem>, scope: Scope) -> Result<(), Jump> {
        match e.name.as_str() {
            "var" => self.exec_var(e, scope),
            "assign" => self.exec_assign(e, scope),
            "clear" => self.exec_clear(e),
            "script" => self.exec_script(e, scope),
            "if" => self.exec_if(e, scope),
            "prompt" => self.exec_prompt(e, scope),
            "audio" | "value" | "break" | "enumerate" | "say-as" | "emphasis" | "prosody" => {
                let mut parts = Vec::new();
                self.prompt_node(e, scope, &mut parts)?;
                self.prompts.extend(parts);
                Ok(())
            }
            "log" => self.exec_log(e, scope),
            "data" => self.exec_data(e, scope),
            "foreach" => {
                let n = self.foreach_start(e, scope)?;
                for i in 0..n {
                    self.foreach_item(e, scope, i)?;
                    self.exec(&e.kids, scope)?;
                }
                Ok(())
            }
            "goto" => Err(self.exec_goto(e, scope)?),
            "submit" => Err(self.exec_submit(e, scope)?),
            "exit" => Err(self.exec_exit(e, scope)?),
            "return" => Err(self.exec_return(e, scope)?),
            "disconnect" => Err(Jump::Disconnect(self.namelist_values(e, scope)?)),
            "throw" => Err(self.exec_throw(e, scope)?),
            "reprompt" => {
                self.reprompt = true;
                Ok(())
            }
            // Marks, cancels and metadata have no effect in DTMF-only execution.
            _ => Ok(()),
        }
    }

    /// `<data>` (VoiceXML 2.1): the fetched XML (fetched ahead, see `resources`) becomes a
    /// read-only DOM-like object in variable `name`: `name.documentElement` with `tagName`,
    /// `attributes`, `getAttribute`, `childNodes`, `getElementsByTagName`, `textContent`.
    fn exec_data(&mut self, e: &Elem, scope: Scope) -> Result<(), Jump> {
        let url = match (e.attr("src"), e.attr("srcexpr")) {
            (Some(s), _) => dom::resolve(&self.doc_url, s),
            (None, Some(x)) => dom::resolve(&self.doc_url, &self.string(scope, x)?),
            (None, None) => return Err(throw("error.badfetch", "<data> without src")),
        };
        let text = self.resource(&url)?;
        let root = dom::parse(&text).map_err(|m| throw("error.badfetch", &m))?;
        let value =
            serde_json::json!({ switchboard_ecma::TAG: "x", "v": xml_tree(&root), "s": text });
        self.engine
            .set_global_tagged("__vx_data", &value)
            .map_err(semantic)?;
        let Some(name) = e.attr("name") else {
            return Ok(());
        };
        self.declare(scope, name, None)?;
        let code = format!(
            "{name} = {{ documentElement: __vx_data, getElementsByTagName: function (n) {{ \
               var d = this.documentElement; var r = d.getElementsByTagName(n); \
               return (n === '*' || d.tagName === n) ? [d].concat(r) : r; }} }}; void 0"
        );
        self.engine.eval_in_scope(scope, &code).map_err(semantic)?;
        Ok(())
    }

    /// `<foreach array item>`: evaluates the array once into a hidden variable of `scope` and
    /// declares `item` there when needed; returns the length.
    fn foreach_start(&mut self, e: &Elem, scope: Scope) -> Result<usize, Jump> {
        let (Some(array), Some(item)) = (e.attr("array"), e.attr("item")) else {
            return Err(throw("error.badfetch", "<foreach> needs array and item"));
        };
        let tmp = js_str(&foreach_tmp(e));
        let item = js_str(item);
        let code = format!(
            "{SELF}[{tmp}] = ({array}\n); if (!Array.isArray({SELF}[{tmp}])) throw new TypeError('foreach array is not an array'); \
             if (!({item} in {SELF})) {SELF}[{item}] = undefined; {SELF}[{tmp}].length"
        );
        let n = self.engine.eval_in_scope(scope, &code).map_err(semantic)?;
        Ok(n.and_then(|v| v.as_u64()).unwrap_or(0) as usize)
    }

    fn foreach_item(&mut self, e: &Elem, scope: Scope, i: usize) -> Result<(), Jump> {
        let tmp = js_str(&foreach_tmp(e));
        let item = e.attr("item").unwrap_or("");
        let code = format!("{item} = {SELF}[{tmp}][{i}]; void 0");
        self.engine.eval_in_scope(scope, &code).map_err(semantic)?;
        Ok(())
    }

    /// `<assign>`: the variable must already be declared (else error.semantic).
    fn exec_assign(&mut self, e: &Elem, scope: Scope) -> Result<(), Jump> {
        let (Some(name), Some(expr)) = (e.attr("name"), e.attr("expr")) else {
            return Err(throw("error.badfetch", "<assign> needs name and expr"));
        };
        let first = name.split(['.', '[']).next().unwrap_or(name).trim();
        // Reading the root name throws a ReferenceError when it was never declared.
        let probe = format!("void ({first})");
        self.engine.eval_in_scope(scope, &probe).map_err(semantic)?;
        let code = format!("{name} = ({}\n); void 0", expr.trim());
        self.engine.eval_in_scope(scope, &code).map_err(semantic)?;
        Ok(())
    }

    /// `<clear>`: the named (default: all) form items and variables become undefined and the
    /// items' counters restart.
    fn exec_clear(&mut self, e: &Elem) -> Result<(), Jump> {
        let Some(form) = &mut self.form else {
            return Ok(());
        };
        let scope = form.scope;
        let names: Vec<String> = match e.attr("namelist") {
            Some(n) => n.split_whitespace().map(str::to_string).collect(),
            None => form.items.iter().map(|i| i.var.clone()).collect(),
        };
        for (idx, it) in form.items.iter().enumerate() {
            if names.contains(&it.var) {
                form.prompt_counts[idx] = 0;
                form.event_counts.retain(|(i, _), _| *i != Some(idx));
            }
        }
        for n in &names {
            // An undeclared name is an error, not a new global.
            let code = format!("void ({n}); {n} = undefined");
            self.engine.eval_in_scope(scope, &code).map_err(semantic)?;
        }
        Ok(())
    }

    fn exec_if(&mut self, e: &Elem, scope: Scope) -> Result<(), Jump> {
        let mut active = self.cond(scope, e.attr("cond").unwrap_or("false"))?;
        let mut done = active;
        for k in &e.kids {
            if let Node::Elem(c) = k {
                if c.name == "elseif" || c.name == "else" {
                    active = !done
                        && match c.attr("cond") {
                            Some(x) if c.name == "elseif" => self.cond(scope, x)?,
                            _ => true,
                        };
                    done |= active;
                    continue;
                }
            }
            if active {
                self.exec(std::slice::from_ref(k), scope)?;
            }
        }
        Ok(())
    }

    fn exec_prompt(&mut self, e: &Elem, scope: Scope) -> Result<(), Jump> {
        if let Some(c) = e.attr("cond") {
            if !self.cond(scope, c)? {
                return Ok(());
            }
        }
        self.queue_prompt(e, scope)
    }

    /// Queues a `<prompt>`'s content.
    pub(crate) fn queue_prompt(&mut self, e: &Elem, scope: Scope) -> Result<(), Jump> {
        if let Some(b) = e.attr("bargein") {
            self.prompt_bargein = Some(b != "false");
        }
        if let Some(t) = e.attr("timeout").and_then(parse_time) {
            self.prompt_timeout = Some(t);
        }
        let mut parts = Vec::new();
        for k in &e.kids {
            match k {
                Node::Text(t) => push_text(&mut parts, t),
                Node::Elem(c) => self.prompt_node(c, scope, &mut parts)?,
            }
        }
        self.prompts.extend(parts);
        Ok(())
    }

    fn prompt_node(
        &mut self,
        e: &Elem,
        scope: Scope,
        out: &mut Vec<PromptPart>,
    ) -> Result<(), Jump> {
        match e.name.as_str() {
            "value" => {
                let v = self.string(scope, e.attr("expr").unwrap_or("''"))?;
                push_text(out, &v);
            }
            "break" => out.push(PromptPart::Break { ms: break_ms(e) }),
            "audio" => {
                let mut fallback = Vec::new();
                self.prompt_kids(e, scope, &mut fallback)?;
                let url = match (e.attr("src"), e.attr("expr")) {
                    (Some(s), _) => dom::resolve(&self.doc_url, s),
                    (None, Some(x)) => dom::resolve(&self.doc_url, &self.string(scope, x)?),
                    (None, None) => String::new(),
                };
                if url.is_empty() {
                    out.extend(fallback);
                } else {
                    out.push(PromptPart::Audio { url, fallback });
                }
            }
            "enumerate" => self.enumerate(e, scope, out)?,
            "foreach" => {
                let n = self.foreach_start(e, scope)?;
                for i in 0..n {
                    self.foreach_item(e, scope, i)?;
                    self.prompt_kids(e, scope, out)?;
                }
            }
            // Other SSML (say-as, emphasis, prosody, s, p, voice) passes its text through.
            _ => self.prompt_kids(e, scope, out)?,
        }
        Ok(())
    }

    fn prompt_kids(
        &mut self,
        e: &Elem,
        scope: Scope,
        out: &mut Vec<PromptPart>,
    ) -> Result<(), Jump> {
        for k in &e.kids {
            match k {
                Node::Text(t) => push_text(out, t),
                Node::Elem(c) => self.prompt_node(c, scope, out)?,
            }
        }
        Ok(())
    }

    /// The current menu's choices (or field's options) in document order: text and keys.
    fn enumerate_choices(&self) -> Vec<(String, Option<String>)> {
        let Some(f) = &self.form else {
            return Vec::new();
        };
        let text = |c: &Elem| c.text().split_whitespace().collect::<Vec<_>>().join(" ");
        match f.current {
            Some(i) if f.items[i].elem.name == "field" => f.items[i]
                .elem
                .children("option")
                .enumerate()
                .map(|(n, o)| {
                    let keys = o.attr("dtmf").map(str::to_string);
                    (text(o), Some(keys.unwrap_or_else(|| (n + 1).to_string())))
                })
                .collect(),
            _ => f
                .elem
                .children("choice")
                .map(|c| text(c))
                .zip(crate::interp::choice_keys(&f.elem))
                .collect(),
        }
    }

    /// `<enumerate>`: the choice texts, or its content rendered once per choice with
    /// `_prompt` and `_dtmf` set.
    fn enumerate(&mut self, e: &Elem, scope: Scope, out: &mut Vec<PromptPart>) -> Result<(), Jump> {
        let choices = self.enumerate_choices();
        if e.kids.is_empty() {
            for (t, _) in choices {
                push_text(out, &t);
            }
            return Ok(());
        }
        for (t, keys) in choices {
            let anon = self.engine.new_scope(Some(scope)).map_err(semantic)?;
            let vars = [
                ("_prompt", Json::String(t)),
                ("_dtmf", keys.map(Json::String).unwrap_or(Json::Null)),
            ];
            let r = self
                .init_anon(anon, &vars)
                .and_then(|_| self.prompt_kids(e, anon, out));
            self.engine.drop_scope(anon);
            r?;
        }
        Ok(())
    }

    fn exec_log(&mut self, e: &Elem, scope: Scope) -> Result<(), Jump> {
        let mut text = String::new();
        for k in &e.kids {
            match k {
                Node::Text(t) => text.push_str(t.trim()),
                Node::Elem(c) if c.name == "value" => {
                    text.push_str(&self.string(scope, c.attr("expr").unwrap_or("''"))?)
                }
                Node::Elem(_) => {}
            }
        }
        if let Some(x) = e.attr("expr") {
            text.push_str(&self.string(scope, x)?);
        }
        let label = match (e.attr("label"), e.attr("labelexpr")) {
            (Some(l), _) => Some(l.to_string()),
            (None, Some(x)) => Some(self.string(scope, x)?),
            _ => None,
        };
        self.cmds.push_back(Command::Log { label, text });
        Ok(())
    }

    /// A URL from `attr` or the value of `attr_expr`, resolved against the current document.
    fn target(
        &self,
        e: &Elem,
        attr: &str,
        attr_expr: &str,
        scope: Scope,
    ) -> Result<Option<String>, Jump> {
        let raw = match (e.attr(attr), e.attr(attr_expr)) {
            (Some(a), _) => a.to_string(),
            (None, Some(x)) => self.string(scope, x)?,
            (None, None) => return Ok(None),
        };
        // A bare fragment stays a move inside the current document.
        if raw.trim().starts_with('#') {
            return Ok(Some(raw.trim().to_string()));
        }
        Ok(Some(dom::resolve(&self.doc_url, &raw)))
    }

    fn exec_goto(&mut self, e: &Elem, scope: Scope) -> Result<Jump, Jump> {
        let item = match (e.attr("nextitem"), e.attr("expritem")) {
            (Some(n), _) => Some(n.to_string()),
            (None, Some(x)) => Some(self.string(scope, x)?),
            _ => None,
        };
        if let Some(item) = item {
            return Ok(Jump::GotoItem(item));
        }
        match self.target(e, "next", "expr", scope)? {
            Some(url) => Ok(Jump::Goto(
                url,
                Box::new(self.fetch_options(Some(e), Kind::Document, Props::Current)),
            )),
            None => Err(throw("error.badfetch", "<goto> without a target")),
        }
    }

    fn exec_submit(&mut self, e: &Elem, scope: Scope) -> Result<Jump, Jump> {
        let Some(url) = self.target(e, "next", "expr", scope)? else {
            return Err(throw("error.badfetch", "<submit> without a target"));
        };
        // A submit always fetches, even to a fragment of the current document.
        let url = dom::resolve(&self.doc_url, &url);
        let method = match e.attr("method").map(|m| m.to_ascii_lowercase()) {
            Some(m) if m == "post" => Method::Post,
            _ => Method::Get,
        };
        let mut params = Vec::new();
        for name in self.namelist(e) {
            let v = self.eval(scope, &name)?;
            let s = match v {
                Some(Json::String(s)) => s,
                None => String::new(),
                Some(other) => other.to_string(),
            };
            params.push((name, s));
        }
        let mut options = self.fetch_options(Some(e), Kind::Document, Props::Current);
        options.multipart = method == Method::Post
            && e.attr("enctype")
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("multipart/form-data"));
        Ok(Jump::Submit {
            url,
            method,
            params,
            options: Box::new(options),
        })
    }

    /// The `namelist` of an element, or (for submit and exit without one) nothing.
    fn namelist(&self, e: &Elem) -> Vec<String> {
        e.attr("namelist")
            .map(|n| n.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn exec_exit(&mut self, e: &Elem, scope: Scope) -> Result<Jump, Jump> {
        if let Some(x) = e.attr("expr") {
            return Ok(Jump::Exit(self.eval(scope, x)?.unwrap_or(Json::Null)));
        }
        Ok(Jump::Exit(self.namelist_values(e, scope)?))
    }

    /// The `namelist` variables as a JSON object (null without a namelist).
    fn namelist_values(&mut self, e: &Elem, scope: Scope) -> Result<Json, Jump> {
        let names = self.namelist(e);
        if names.is_empty() {
            return Ok(Json::Null);
        }
        let mut m = Map::new();
        for n in names {
            let v = self.eval(scope, &n)?.unwrap_or(Json::Null);
            m.insert(n, v);
        }
        Ok(Json::Object(m))
    }

    fn exec_return(&mut self, e: &Elem, scope: Scope) -> Result<Jump, Jump> {
        if e.attr("event").is_some() || e.attr("eventexpr").is_some() {
            let Jump::Throw { event, message } = self.exec_throw(e, scope)? else {
                return Err(throw("error.semantic", "bad <return> event"));
            };
            return Ok(Jump::Return {
                values: Json::Null,
                event: Some((event, message)),
            });
        }
        let mut m = Map::new();
        for n in self.namelist(e) {
            let v = self.eval(scope, &n)?.unwrap_or(Json::Null);
            m.insert(n, v);
        }
        Ok(Jump::Return {
            values: Json::Object(m),
            event: None,
        })
    }

    fn exec_throw(&mut self, e: &Elem, scope: Scope) -> Result<Jump, Jump> {
        let event = match (e.attr("event"), e.attr("eventexpr")) {
            (Some(ev), _) => ev.to_string(),
            (None, Some(x)) => self.string(scope, x)?,
            _ => return Err(throw("error.badfetch", "<throw> without event")),
        };
        let message = match (e.attr("message"), e.attr("messageexpr")) {
            (Some(m), _) => m.to_string(),
            (None, Some(x)) => self.string(scope, x)?,
            _ => String::new(),
        };
        Ok(throw(&event, &message))
    }
}

/// Where a chosen menu `<choice>` goes: `next`/`expr` as a goto, or `event` thrown.
pub(crate) fn choice_target(vx: &mut Interpreter, c: &Elem, scope: Scope) -> Result<Jump, Jump> {
    if let Some(ev) = c.attr("event") {
        return Ok(throw(ev, c.attr("message").unwrap_or("")));
    }
    if let Some(x) = c.attr("eventexpr") {
        return Ok(throw(&vx.string(scope, x)?, ""));
    }
    vx.exec_goto(c, scope)
}

fn push_text(out: &mut Vec<PromptPart>, t: &str) {
    let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.is_empty() {
        return;
    }
    if let Some(PromptPart::Text(prev)) = out.last_mut() {
        prev.push(' ');
        prev.push_str(&t);
    } else {
        out.push(PromptPart::Text(t));
    }
}

fn break_ms(e: &Elem) -> u64 {
    if let Some(t) = e.attr("time").and_then(parse_time) {
        return t;
    }
    match e.attr("strength").unwrap_or("medium") {
        "none" => 0,
        "x-weak" => 100,
        "weak" => 250,
        "strong" => 1000,
        "x-strong" => 2000,
        _ => 500,
    }
}

/// A hidden variable name for one `<foreach>` element (nested loops get different ones).
fn foreach_tmp(e: &Elem) -> String {
    format!("__vx_foreach_{:x}", e as *const Elem as usize)
}

/// An element as the tree `crates/ecma` turns into its XML DOM objects.
fn xml_tree(e: &Elem) -> Json {
    let attrs: Map<String, Json> = e
        .attrs
        .iter()
        .map(|(k, v)| (k.clone(), Json::String(v.clone())))
        .collect();
    let kids: Vec<Json> = e
        .kids
        .iter()
        .filter_map(|k| match k {
            Node::Elem(c) => Some(xml_tree(c)),
            Node::Text(t) if !t.trim().is_empty() => Some(Json::String(t.clone())),
            Node::Text(_) => None,
        })
        .collect();
    serde_json::json!({ "n": e.name, "a": attrs, "c": kids })
}
