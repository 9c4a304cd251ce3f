//! The document model: an SCXML document parsed and validated into flat tables.

use crate::{Environment, LoadError};
use serde_json::{json, Value as Json};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) const SCXML_NS: &str = "http://www.w3.org/2005/07/scxml";
pub(crate) const TAG: &str = "\u{1}t";

pub(crate) type StateId = usize;
pub(crate) type TransitionId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Root,
    Atomic,
    Compound,
    Parallel,
    Final,
    HistoryShallow,
    HistoryDeep,
}

#[derive(Debug)]
pub(crate) struct State {
    pub id: String,
    pub kind: Kind,
    pub parent: Option<StateId>,
    /// Child states (state, parallel, final), document order; history excluded.
    pub children: Vec<StateId>,
    pub history: Vec<StateId>,
    /// For compound states and the root: the initial transition. For history: the default one.
    pub initial: Option<TransitionId>,
    pub onentry: Vec<Block>,
    pub onexit: Vec<Block>,
    pub transitions: Vec<TransitionId>,
    pub invokes: Vec<Invoke>,
    pub data: Vec<Data>,
    pub donedata: Option<DoneData>,
}

#[derive(Debug)]
pub(crate) struct Transition {
    pub source: StateId,
    pub events: Vec<String>,
    pub cond: Option<String>,
    pub targets: Vec<StateId>,
    pub internal: bool,
    pub body: Block,
}

pub(crate) type Block = Vec<Exec>;

#[derive(Debug)]
pub(crate) enum Exec {
    Raise(String),
    Send(Box<Send>),
    Cancel {
        sendid: Option<String>,
        sendidexpr: Option<String>,
    },
    Log {
        label: Option<String>,
        expr: Option<String>,
    },
    If(Vec<(Option<String>, Block)>),
    Foreach {
        array: String,
        item: String,
        index: Option<String>,
        body: Block,
    },
    Assign {
        location: String,
        expr: Option<String>,
        content: Option<Content>,
    },
    Script(String),
    Custom(Box<crate::ExtensionCall>),
}

#[derive(Debug, Default)]
pub(crate) struct Send {
    pub event: Option<String>,
    pub eventexpr: Option<String>,
    pub target: Option<String>,
    pub targetexpr: Option<String>,
    pub type_: Option<String>,
    pub typeexpr: Option<String>,
    pub id: Option<String>,
    pub idlocation: Option<String>,
    pub delay: Option<String>,
    pub delayexpr: Option<String>,
    pub namelist: Vec<String>,
    pub params: Vec<Param>,
    pub content: Option<Content>,
}

#[derive(Debug)]
pub(crate) struct Param {
    pub name: String,
    pub expr: Option<String>,
    pub location: Option<String>,
}

/// `<content>`: an expression or an inline value (tagged JSON for the data model).
#[derive(Debug, Clone)]
pub(crate) enum Content {
    Expr(String),
    Value(Json),
    /// An inline `<scxml>` document (invoke).
    Scxml(Arc<str>),
}

#[derive(Debug)]
pub(crate) struct Invoke {
    pub type_: Option<String>,
    pub typeexpr: Option<String>,
    pub src: Option<String>,
    pub srcexpr: Option<String>,
    pub id: Option<String>,
    pub idlocation: Option<String>,
    pub namelist: Vec<String>,
    pub autoforward: bool,
    pub params: Vec<Param>,
    pub content: Option<Content>,
    pub finalize: Block,
}

#[derive(Debug)]
pub(crate) struct Data {
    pub id: String,
    pub expr: Option<String>,
    pub value: Option<Json>,
}

#[derive(Debug)]
pub(crate) struct DoneData {
    pub content: Option<Content>,
    pub params: Vec<Param>,
}

/// A parsed, validated SCXML document. Cheap to share between sessions (`Arc`).
#[derive(Debug)]
pub struct Document {
    pub(crate) states: Vec<State>,
    pub(crate) transitions: Vec<Transition>,
    pub(crate) name: Option<String>,
    pub(crate) late_binding: bool,
    pub(crate) script: Option<String>,
    pub(crate) source: Arc<str>,
    pub(crate) base: Option<String>,
}

impl Document {
    /// Parses and validates a document. `base` is the URI relative `src` attributes resolve
    /// against (handed to the [`crate::Fetcher`] of `env`), which is also used at load time for
    /// `<data src>` and `<script src>`.
    pub fn load(
        source: &str,
        base: Option<&str>,
        env: &Environment,
    ) -> Result<Arc<Document>, LoadError> {
        let opts = roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: 1_000_000,
        };
        let xml = roxmltree::Document::parse_with_options(source, opts).map_err(|e| {
            let pos = e.pos();
            LoadError {
                line: pos.row,
                message: format!("malformed XML: {e}"),
            }
        })?;
        let mut p = Parser {
            xml: &xml,
            src: source,
            env,
            base,
            states: Vec::new(),
            transitions: Vec::new(),
            pending_targets: Vec::new(),
            ids: HashMap::new(),
        };
        let root = xml.root_element();
        if root.tag_name().name() != "scxml" || root.tag_name().namespace() != Some(SCXML_NS) {
            return Err(p.err(
                root,
                "the root element must be <scxml> in the SCXML namespace",
            ));
        }
        p.check_attrs(
            root,
            &[
                "initial",
                "name",
                "version",
                "datamodel",
                "binding",
                "exmode",
            ],
        )?;
        if let Some(dm) = root.attribute("datamodel") {
            if dm != "ecmascript" {
                return Err(p.err(
                    root,
                    &format!("unsupported datamodel '{dm}' (only ecmascript)"),
                ));
            }
        }
        let late_binding = match root.attribute("binding") {
            None | Some("early") => false,
            Some("late") => true,
            Some(other) => return Err(p.err(root, &format!("bad binding '{other}'"))),
        };
        let mut script = None;
        for c in root.children().filter(|c| c.is_element()) {
            if p.is_scxml(c, "script") {
                let s = p.script_text(c)?;
                script = Some(match script {
                    None => s,
                    Some(prev) => format!("{prev}\n{s}"),
                });
            }
        }
        p.parse_state(root, None, Kind::Root)?;
        // resolve targets
        let pending = std::mem::take(&mut p.pending_targets);
        for (tid, targets, line) in pending {
            let mut ids = Vec::new();
            for t in targets.split_whitespace() {
                match p.ids.get(t) {
                    Some(s) => ids.push(*s),
                    None => {
                        return Err(LoadError {
                            line,
                            message: format!("unknown target state '{t}'"),
                        })
                    }
                }
            }
            p.transitions[tid].targets = ids;
        }
        let doc = Document {
            states: p.states,
            transitions: p.transitions,
            name: root.attribute("name").map(str::to_string),
            late_binding,
            script,
            source: Arc::from(source),
            base: base.map(str::to_string),
        };
        doc.check_structure()?;
        Ok(Arc::new(doc))
    }

    fn check_structure(&self) -> Result<(), LoadError> {
        for (idx, s) in self.states.iter().enumerate() {
            match s.kind {
                Kind::HistoryShallow | Kind::HistoryDeep => {
                    if let Some(t) = s.initial {
                        let p = s.parent.unwrap_or(0);
                        for &tg in &self.transitions[t].targets {
                            if !self.is_descendant(tg, p) {
                                return Err(LoadError {
                                    line: 0,
                                    message: format!(
                                        "history '{}' default target '{}' is not inside its parent",
                                        s.id, self.states[tg].id
                                    ),
                                });
                            }
                        }
                    }
                }
                Kind::Compound | Kind::Root => {
                    if let Some(t) = s.initial {
                        for &tg in &self.transitions[t].targets {
                            if !self.is_descendant(tg, idx) {
                                return Err(LoadError {
                                    line: 0,
                                    message: format!(
                                        "initial state '{}' of '{}' is not a descendant",
                                        self.states[tg].id, s.id
                                    ),
                                });
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `true` when `a` is a proper descendant of `b`.
    pub(crate) fn is_descendant(&self, a: StateId, b: StateId) -> bool {
        let mut cur = self.states[a].parent;
        while let Some(p) = cur {
            if p == b {
                return true;
            }
            cur = self.states[p].parent;
        }
        false
    }

    /// The document's `name` attribute.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The source text the document was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// State ids in document order.
    pub fn state_ids(&self) -> impl Iterator<Item = &str> {
        self.states.iter().skip(1).map(|s| s.id.as_str())
    }
}

struct Parser<'a, 'input> {
    xml: &'a roxmltree::Document<'input>,
    src: &'a str,
    env: &'a Environment,
    base: Option<&'a str>,
    states: Vec<State>,
    transitions: Vec<Transition>,
    pending_targets: Vec<(TransitionId, String, u32)>,
    ids: HashMap<String, StateId>,
}

type N<'a, 'input> = roxmltree::Node<'a, 'input>;

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_alphabetic() || c == '_' || c == '$' => {}
        _ => return false,
    }
    chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

impl<'a, 'input> Parser<'a, 'input> {
    fn line(&self, n: N) -> u32 {
        self.xml.text_pos_at(n.range().start).row
    }

    fn err(&self, n: N, msg: &str) -> LoadError {
        LoadError {
            line: self.line(n),
            message: format!("<{}>: {msg}", n.tag_name().name()),
        }
    }

    fn is_scxml(&self, n: N, name: &str) -> bool {
        n.is_element() && n.tag_name().name() == name && n.tag_name().namespace() == Some(SCXML_NS)
    }

    fn check_attrs(&self, n: N, allowed: &[&str]) -> Result<(), LoadError> {
        for a in n.attributes() {
            if a.namespace().is_some() {
                continue;
            }
            if !allowed.contains(&a.name()) {
                return Err(self.err(n, &format!("unknown attribute '{}'", a.name())));
            }
        }
        Ok(())
    }

    fn exclusive(&self, n: N, a: &str, b: &str) -> Result<(), LoadError> {
        if n.attribute(a).is_some() && n.attribute(b).is_some() {
            return Err(self.err(n, &format!("'{a}' and '{b}' are mutually exclusive")));
        }
        Ok(())
    }

    fn required(&self, n: N, a: &str) -> Result<String, LoadError> {
        n.attribute(a)
            .map(str::to_string)
            .ok_or_else(|| self.err(n, &format!("missing attribute '{a}'")))
    }

    fn fetch(&self, n: N, uri: &str) -> Result<String, LoadError> {
        self.env
            .fetch(self.base, uri)
            .map(|(_, text)| text)
            .map_err(|e| self.err(n, &format!("cannot fetch '{uri}': {e}")))
    }

    fn script_text(&self, n: N) -> Result<String, LoadError> {
        self.check_attrs(n, &["src"])?;
        if let Some(src) = n.attribute("src") {
            if n.children()
                .any(|c| c.is_element() || c.text().is_some_and(|t| !t.trim().is_empty()))
            {
                return Err(self.err(n, "<script> with 'src' must be empty"));
            }
            return self.fetch(n, src);
        }
        Ok(n.children().filter_map(|c| c.text()).collect())
    }

    fn parse_state(
        &mut self,
        n: N,
        parent: Option<StateId>,
        kind: Kind,
    ) -> Result<StateId, LoadError> {
        let idx = self.states.len();
        let name = n.tag_name().name();
        match kind {
            Kind::Root => {}
            Kind::Parallel => self.check_attrs(n, &["id"])?,
            Kind::Final => self.check_attrs(n, &["id"])?,
            Kind::HistoryShallow | Kind::HistoryDeep => self.check_attrs(n, &["id", "type"])?,
            _ => self.check_attrs(n, &["id", "initial"])?,
        }
        let id = match n.attribute("id") {
            Some(id) => id.to_string(),
            None if kind == Kind::Root => "".to_string(),
            None => format!("__{name}_{idx}"),
        };
        if kind != Kind::Root && self.ids.insert(id.clone(), idx).is_some() {
            return Err(self.err(n, &format!("duplicate state id '{id}'")));
        }
        self.states.push(State {
            id,
            kind,
            parent,
            children: Vec::new(),
            history: Vec::new(),
            initial: None,
            onentry: Vec::new(),
            onexit: Vec::new(),
            transitions: Vec::new(),
            invokes: Vec::new(),
            data: Vec::new(),
            donedata: None,
        });
        if matches!(kind, Kind::HistoryShallow | Kind::HistoryDeep) {
            let mut found = false;
            for c in n.children().filter(|c| c.is_element()) {
                if self.is_scxml(c, "transition") && !found {
                    let t = self.parse_transition(c, idx)?;
                    self.states[idx].initial = Some(t);
                    found = true;
                } else {
                    return Err(self.err(c, "unexpected element in <history>"));
                }
            }
            if !found {
                return Err(self.err(n, "<history> needs a default <transition>"));
            }
            return Ok(idx);
        }
        let mut initial_elem = None;
        for c in n.children().filter(|c| c.is_element()) {
            if c.tag_name().namespace() != Some(SCXML_NS) {
                return Err(self.err(c, "element in a foreign namespace is not allowed here"));
            }
            let cname = c.tag_name().name();
            let allowed_in_final = matches!(cname, "onentry" | "onexit" | "donedata");
            if kind == Kind::Final && !allowed_in_final {
                return Err(self.err(c, "not allowed in <final>"));
            }
            match cname {
                "state" | "parallel" | "final" => {
                    let k = match cname {
                        "state" => {
                            let has_children = c.children().any(|g| {
                                self.is_scxml(g, "state")
                                    || self.is_scxml(g, "parallel")
                                    || self.is_scxml(g, "final")
                            });
                            if has_children {
                                Kind::Compound
                            } else {
                                Kind::Atomic
                            }
                        }
                        "parallel" => Kind::Parallel,
                        _ => Kind::Final,
                    };
                    let s = self.parse_state(c, Some(idx), k)?;
                    self.states[idx].children.push(s);
                }
                "history" => {
                    if kind == Kind::Root || kind == Kind::Final {
                        return Err(self.err(c, "<history> not allowed here"));
                    }
                    let k = match c.attribute("type") {
                        None | Some("shallow") => Kind::HistoryShallow,
                        Some("deep") => Kind::HistoryDeep,
                        Some(o) => return Err(self.err(c, &format!("bad history type '{o}'"))),
                    };
                    let s = self.parse_state(c, Some(idx), k)?;
                    self.states[idx].history.push(s);
                }
                "initial" => {
                    if kind != Kind::Compound || n.attribute("initial").is_some() {
                        return Err(
                            self.err(c, "<initial> only in a compound state without 'initial'")
                        );
                    }
                    initial_elem = Some(c);
                }
                "transition" => {
                    if kind == Kind::Root {
                        return Err(self.err(c, "<transition> not allowed in <scxml>"));
                    }
                    let t = self.parse_transition(c, idx)?;
                    self.states[idx].transitions.push(t);
                }
                "onentry" => {
                    self.check_attrs(c, &[])?;
                    let b = self.parse_block(c)?;
                    self.states[idx].onentry.push(b);
                }
                "onexit" => {
                    self.check_attrs(c, &[])?;
                    let b = self.parse_block(c)?;
                    self.states[idx].onexit.push(b);
                }
                "datamodel" => {
                    for d in c.children().filter(|d| d.is_element()) {
                        if !self.is_scxml(d, "data") {
                            return Err(self.err(d, "only <data> in <datamodel>"));
                        }
                        let data = self.parse_data(d)?;
                        self.states[idx].data.push(data);
                    }
                }
                "invoke" => {
                    if kind == Kind::Root {
                        return Err(self.err(c, "<invoke> not allowed in <scxml>"));
                    }
                    let inv = self.parse_invoke(c)?;
                    self.states[idx].invokes.push(inv);
                }
                "donedata" => {
                    if kind != Kind::Final {
                        return Err(self.err(c, "<donedata> only in <final>"));
                    }
                    let (content, params) = self.parse_payload(c)?;
                    self.states[idx].donedata = Some(DoneData { content, params });
                }
                "script" if kind == Kind::Root => {}
                other => return Err(self.err(c, &format!("unexpected <{other}>"))),
            }
        }
        // initial transition for compound states and the root
        if matches!(kind, Kind::Compound | Kind::Root) {
            let attr = n.attribute("initial");
            let tid = self.transitions.len();
            let mut body = Vec::new();
            let line = self.line(n);
            if let Some(ie) = initial_elem {
                let tr = ie
                    .children()
                    .find(|c| self.is_scxml(*c, "transition"))
                    .ok_or_else(|| self.err(ie, "<initial> needs a <transition>"))?;
                let target = self.required(tr, "target")?;
                body = self.parse_block(tr)?;
                self.pending_targets.push((tid, target, self.line(tr)));
            } else if let Some(a) = attr {
                self.pending_targets.push((tid, a.to_string(), line));
            }
            let targets = if initial_elem.is_none() && attr.is_none() {
                match self.states[idx].children.first() {
                    Some(first) => vec![*first],
                    None => return Err(self.err(n, "no child state to start in")),
                }
            } else {
                Vec::new()
            };
            self.transitions.push(Transition {
                source: idx,
                events: Vec::new(),
                cond: None,
                targets,
                internal: false,
                body,
            });
            self.states[idx].initial = Some(tid);
        }
        Ok(idx)
    }

    fn parse_transition(&mut self, n: N, source: StateId) -> Result<TransitionId, LoadError> {
        self.check_attrs(n, &["event", "cond", "target", "type"])?;
        let internal = match n.attribute("type") {
            None | Some("external") => false,
            Some("internal") => true,
            Some(o) => return Err(self.err(n, &format!("bad transition type '{o}'"))),
        };
        let events = n
            .attribute("event")
            .map(|e| {
                e.split_whitespace()
                    .map(|d| {
                        let d = d.strip_suffix(".*").unwrap_or(d);
                        d.strip_suffix('.').unwrap_or(d).to_string()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let body = self.parse_block(n)?;
        let tid = self.transitions.len();
        if let Some(t) = n.attribute("target") {
            self.pending_targets
                .push((tid, t.to_string(), self.line(n)));
        }
        self.transitions.push(Transition {
            source,
            events,
            cond: n.attribute("cond").map(str::to_string),
            targets: Vec::new(),
            internal,
            body,
        });
        Ok(tid)
    }

    fn parse_block(&mut self, n: N) -> Result<Block, LoadError> {
        let mut out = Vec::new();
        for c in n.children().filter(|c| c.is_element()) {
            out.push(self.parse_exec(c)?);
        }
        Ok(out)
    }

    fn parse_exec(&mut self, c: N) -> Result<Exec, LoadError> {
        if c.tag_name().namespace() != Some(SCXML_NS) {
            let ns = c.tag_name().namespace().unwrap_or("");
            let name = c.tag_name().name();
            if !self.env.has_element(ns, name) {
                return Err(self.err(c, &format!("unknown element {{{ns}}}{name}")));
            }
            let call = crate::ExtensionCall {
                namespace: ns.to_string(),
                name: name.to_string(),
                attributes: c
                    .attributes()
                    .map(|a| (a.name().to_string(), a.value().to_string()))
                    .collect(),
                text: c.text().unwrap_or("").to_string(),
                xml: self.src[c.range()].to_string(),
                line: self.line(c),
            };
            return Ok(Exec::Custom(Box::new(call)));
        }
        Ok(match c.tag_name().name() {
            "raise" => {
                self.check_attrs(c, &["event"])?;
                Exec::Raise(self.required(c, "event")?)
            }
            "log" => {
                self.check_attrs(c, &["label", "expr"])?;
                Exec::Log {
                    label: c.attribute("label").map(str::to_string),
                    expr: c.attribute("expr").map(str::to_string),
                }
            }
            "script" => Exec::Script(self.script_text(c)?),
            "cancel" => {
                self.check_attrs(c, &["sendid", "sendidexpr"])?;
                self.exclusive(c, "sendid", "sendidexpr")?;
                if c.attribute("sendid").is_none() && c.attribute("sendidexpr").is_none() {
                    return Err(self.err(c, "needs 'sendid' or 'sendidexpr'"));
                }
                Exec::Cancel {
                    sendid: c.attribute("sendid").map(str::to_string),
                    sendidexpr: c.attribute("sendidexpr").map(str::to_string),
                }
            }
            "assign" => {
                self.check_attrs(c, &["location", "expr"])?;
                let location = self.required(c, "location")?;
                let content = if c.attribute("expr").is_none() {
                    Some(self.inline_content(c, false)?)
                } else {
                    if c.has_children()
                        && c.children().any(|x| {
                            x.is_element() || x.text().is_some_and(|t| !t.trim().is_empty())
                        })
                    {
                        return Err(self.err(c, "'expr' and children are mutually exclusive"));
                    }
                    None
                };
                Exec::Assign {
                    location,
                    expr: c.attribute("expr").map(str::to_string),
                    content,
                }
            }
            "if" => {
                self.check_attrs(c, &["cond"])?;
                let mut branches = vec![(Some(self.required(c, "cond")?), Vec::new())];
                for k in c.children().filter(|k| k.is_element()) {
                    if self.is_scxml(k, "elseif") {
                        self.check_attrs(k, &["cond"])?;
                        branches.push((Some(self.required(k, "cond")?), Vec::new()));
                    } else if self.is_scxml(k, "else") {
                        self.check_attrs(k, &[])?;
                        branches.push((None, Vec::new()));
                    } else {
                        let e = self.parse_exec(k)?;
                        if let Some(last) = branches.last_mut() {
                            last.1.push(e);
                        }
                    }
                }
                Exec::If(branches)
            }
            "foreach" => {
                self.check_attrs(c, &["array", "item", "index"])?;
                Exec::Foreach {
                    array: self.required(c, "array")?,
                    item: self.required(c, "item")?,
                    index: c.attribute("index").map(str::to_string),
                    body: self.parse_block(c)?,
                }
            }
            "send" => Exec::Send(Box::new(self.parse_send(c)?)),
            other => return Err(self.err(c, &format!("<{other}> is not executable content"))),
        })
    }

    fn parse_send(&mut self, c: N) -> Result<Send, LoadError> {
        self.check_attrs(
            c,
            &[
                "event",
                "eventexpr",
                "target",
                "targetexpr",
                "type",
                "typeexpr",
                "id",
                "idlocation",
                "delay",
                "delayexpr",
                "namelist",
            ],
        )?;
        for (a, b) in [
            ("event", "eventexpr"),
            ("target", "targetexpr"),
            ("type", "typeexpr"),
            ("id", "idlocation"),
            ("delay", "delayexpr"),
        ] {
            self.exclusive(c, a, b)?;
        }
        let (content, params) = self.parse_payload(c)?;
        if content.is_some() && (!params.is_empty() || c.attribute("namelist").is_some()) {
            return Err(self.err(c, "<content> excludes <param> and 'namelist'"));
        }
        if let Some(d) = c.attribute("delay") {
            if crate::interp::parse_delay(d).is_none() {
                return Err(self.err(c, &format!("bad delay '{d}'")));
            }
            if c.attribute("target") == Some("#_internal") {
                return Err(self.err(c, "a delay is not allowed with target '#_internal'"));
            }
        }
        Ok(Send {
            event: c.attribute("event").map(str::to_string),
            eventexpr: c.attribute("eventexpr").map(str::to_string),
            target: c.attribute("target").map(str::to_string),
            targetexpr: c.attribute("targetexpr").map(str::to_string),
            type_: c.attribute("type").map(str::to_string),
            typeexpr: c.attribute("typeexpr").map(str::to_string),
            id: c.attribute("id").map(str::to_string),
            idlocation: c.attribute("idlocation").map(str::to_string),
            delay: c.attribute("delay").map(str::to_string),
            delayexpr: c.attribute("delayexpr").map(str::to_string),
            namelist: c
                .attribute("namelist")
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            params,
            content,
        })
    }

    /// `<param>` children and an optional `<content>` child.
    fn parse_payload(&mut self, c: N) -> Result<(Option<Content>, Vec<Param>), LoadError> {
        let mut content = None;
        let mut params = Vec::new();
        for k in c.children().filter(|k| k.is_element()) {
            if self.is_scxml(k, "param") {
                self.check_attrs(k, &["name", "expr", "location"])?;
                self.exclusive(k, "expr", "location")?;
                params.push(Param {
                    name: self.required(k, "name")?,
                    expr: k.attribute("expr").map(str::to_string),
                    location: k.attribute("location").map(str::to_string),
                });
            } else if self.is_scxml(k, "content") {
                if content.is_some() {
                    return Err(self.err(k, "only one <content>"));
                }
                self.check_attrs(k, &["expr"])?;
                content = Some(match k.attribute("expr") {
                    Some(e) => Content::Expr(e.to_string()),
                    None => self.inline_content(k, false)?,
                });
            } else if self.is_scxml(k, "finalize") && self.is_scxml(c, "invoke") {
            } else {
                return Err(self.err(k, "unexpected element"));
            }
        }
        Ok((content, params))
    }

    fn inline_content(&self, k: N, allow_scxml: bool) -> Result<Content, LoadError> {
        let elems: Vec<N> = k.children().filter(|x| x.is_element()).collect();
        if let Some(e) = elems.first() {
            if allow_scxml && e.tag_name().name() == "scxml" {
                let mut text = self.src[e.range()].to_string();
                if e.tag_name().namespace() != Some(SCXML_NS) || !text.contains("xmlns") {
                    text = text.replacen("<scxml", &format!("<scxml xmlns=\"{SCXML_NS}\""), 1);
                }
                return Ok(Content::Scxml(Arc::from(text)));
            }
            let mut text = self.src[e.range()].to_string();
            if e.tag_name().name() == "scxml" && !text.contains("xmlns") {
                text = text.replacen("<scxml", &format!("<scxml xmlns=\"{SCXML_NS}\""), 1);
            }
            return Ok(Content::Value(
                json!({ TAG: "x", "v": xml_tree(*e), "s": text }),
            ));
        }
        let text: String = k.children().filter_map(|x| x.text()).collect();
        Ok(Content::Value(text_value(&text)))
    }

    fn parse_data(&mut self, d: N) -> Result<Data, LoadError> {
        self.check_attrs(d, &["id", "src", "expr"])?;
        self.exclusive(d, "src", "expr")?;
        let id = self.required(d, "id")?;
        if !is_identifier(&id) {
            return Err(self.err(d, &format!("data id '{id}' is not an identifier")));
        }
        let has_children = d
            .children()
            .any(|x| x.is_element() || x.text().is_some_and(|t| !t.trim().is_empty()));
        if has_children && (d.attribute("src").is_some() || d.attribute("expr").is_some()) {
            return Err(self.err(d, "'src'/'expr' exclude children"));
        }
        let value = if let Some(src) = d.attribute("src") {
            let text = self.fetch(d, src)?;
            Some(parse_fetched(&text))
        } else if has_children {
            match self.inline_content(d, false)? {
                Content::Value(v) => Some(v),
                _ => None,
            }
        } else {
            None
        };
        Ok(Data {
            id,
            expr: d.attribute("expr").map(str::to_string),
            value,
        })
    }

    fn parse_invoke(&mut self, c: N) -> Result<Invoke, LoadError> {
        self.check_attrs(
            c,
            &[
                "type",
                "typeexpr",
                "src",
                "srcexpr",
                "id",
                "idlocation",
                "namelist",
                "autoforward",
            ],
        )?;
        for (a, b) in [
            ("type", "typeexpr"),
            ("src", "srcexpr"),
            ("id", "idlocation"),
        ] {
            self.exclusive(c, a, b)?;
        }
        let mut content = None;
        let mut params = Vec::new();
        let mut finalize = Vec::new();
        for k in c.children().filter(|k| k.is_element()) {
            if self.is_scxml(k, "param") {
                self.check_attrs(k, &["name", "expr", "location"])?;
                params.push(Param {
                    name: self.required(k, "name")?,
                    expr: k.attribute("expr").map(str::to_string),
                    location: k.attribute("location").map(str::to_string),
                });
            } else if self.is_scxml(k, "content") {
                content = Some(match k.attribute("expr") {
                    Some(e) => Content::Expr(e.to_string()),
                    None => self.inline_content(k, true)?,
                });
            } else if self.is_scxml(k, "finalize") {
                finalize = self.parse_block(k)?;
            } else {
                return Err(self.err(k, "unexpected element in <invoke>"));
            }
        }
        if content.is_some() && (c.attribute("src").is_some() || c.attribute("srcexpr").is_some()) {
            return Err(self.err(c, "<content> excludes 'src'"));
        }
        let autoforward = match c.attribute("autoforward") {
            None | Some("false") => false,
            Some("true") => true,
            Some(o) => return Err(self.err(c, &format!("bad autoforward '{o}'"))),
        };
        Ok(Invoke {
            type_: c.attribute("type").map(str::to_string),
            typeexpr: c.attribute("typeexpr").map(str::to_string),
            src: c.attribute("src").map(str::to_string),
            srcexpr: c.attribute("srcexpr").map(str::to_string),
            id: c.attribute("id").map(str::to_string),
            idlocation: c.attribute("idlocation").map(str::to_string),
            namelist: c
                .attribute("namelist")
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            autoforward,
            params,
            content,
            finalize,
        })
    }
}

/// An XML element as tagged-JSON tree: `{n, a, c}`.
pub(crate) fn xml_tree(e: N) -> Json {
    let mut attrs = serde_json::Map::new();
    for a in e.attributes() {
        attrs.insert(a.name().to_string(), Json::String(a.value().to_string()));
    }
    let mut children = Vec::new();
    for c in e.children() {
        if c.is_element() {
            children.push(xml_tree(c));
        } else if let Some(t) = c.text() {
            if !t.trim().is_empty() {
                children.push(Json::String(t.to_string()));
            }
        }
    }
    json!({ "n": e.tag_name().name(), "a": attrs, "c": children })
}

/// Inline text content: JSON when it parses, otherwise a whitespace-normalized string.
pub(crate) fn text_value(text: &str) -> Json {
    let t = text.trim();
    if t.is_empty() {
        return json!({ TAG: "u" });
    }
    match serde_json::from_str::<Json>(t) {
        Ok(v) => v,
        Err(_) => Json::String(t.split_whitespace().collect::<Vec<_>>().join(" ")),
    }
}

/// Fetched data: JSON, XML, or a normalized string.
pub(crate) fn parse_fetched(text: &str) -> Json {
    let t = text.trim();
    if t.starts_with('<') {
        let opts = roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: 100_000,
        };
        if let Ok(doc) = roxmltree::Document::parse_with_options(t, opts) {
            return json!({ TAG: "x", "v": xml_tree(doc.root_element()), "s": t });
        }
    }
    text_value(t)
}
