//! The interpreter: the algorithm of SCXML 1.0 Appendix D, driven by the host.

use crate::http::HttpRequest;
use crate::model::{Block, Content, Document, Exec, Kind, Param, StateId, TransitionId, TAG};
use crate::{Environment, ExtensionEnv, BASICHTTP_IOPROCESSOR, SCXML_IOPROCESSOR};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use switchboard_ecma::{EcmaError, Engine};

/// Holds the place of a Basic HTTP event sent to this session itself until it arrives.
const HTTP_PLACEHOLDER: &str = "\u{1}http-pending";

/// Maximum microsteps in one macrostep before the session is stopped (an eventless loop).
const MAX_MICROSTEPS: usize = 100_000;

/// The `_event.type` of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Platform,
    Internal,
    External,
}

/// An SCXML event. `data` is tagged JSON (see `switchboard_ecma::TAG`); plain JSON is fine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub name: String,
    pub kind: EventKind,
    pub sendid: Option<String>,
    pub origin: Option<String>,
    pub origintype: Option<String>,
    pub invokeid: Option<String>,
    pub data: Option<Json>,
    /// The raw form of an event received over HTTP (`_event.raw`).
    pub raw: Option<String>,
}

impl Event {
    /// An external event with a name and optional data, as a host would send it.
    pub fn external(name: &str, data: Option<Json>) -> Event {
        Event {
            name: name.to_string(),
            kind: EventKind::External,
            sendid: None,
            origin: None,
            origintype: None,
            invokeid: None,
            data,
            raw: None,
        }
    }

    fn platform(name: &str, sendid: Option<String>) -> Event {
        Event {
            name: name.to_string(),
            kind: EventKind::Platform,
            sendid,
            origin: None,
            origintype: None,
            invokeid: None,
            data: None,
            raw: None,
        }
    }

    fn to_js(&self) -> Json {
        let u = || json!({ TAG: "u" });
        let s = |v: &Option<String>| {
            v.as_ref()
                .map(|x| Json::String(x.clone()))
                .unwrap_or_else(u)
        };
        let mut m = Map::new();
        m.insert("name".into(), Json::String(self.name.clone()));
        let kind = match self.kind {
            EventKind::Platform => "platform",
            EventKind::Internal => "internal",
            EventKind::External => "external",
        };
        m.insert("type".into(), Json::String(kind.into()));
        m.insert("sendid".into(), s(&self.sendid));
        m.insert("origin".into(), s(&self.origin));
        m.insert("origintype".into(), s(&self.origintype));
        m.insert("invokeid".into(), s(&self.invokeid));
        m.insert("data".into(), self.data.clone().unwrap_or_else(u));
        if let Some(r) = &self.raw {
            m.insert("raw".into(), Json::String(r.clone()));
        }
        Json::Object(m)
    }
}

/// What a session asks its host to do. Poll with [`Session::poll_output`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// `<log>`.
    Log {
        session: String,
        label: Option<String>,
        message: String,
    },
    /// A Basic HTTP send: POST `request` to `url`, then call [`Session::http_send_failed`] if it
    /// could not be delivered.
    HttpSend {
        session: String,
        sendid: Option<String>,
        url: String,
        request: HttpRequest,
    },
    /// A `#_scxml_<id>` send to a session outside this session tree.
    SendToSession {
        from: String,
        target: String,
        event: Event,
    },
    /// Emitted by an extension element.
    Extension {
        session: String,
        namespace: String,
        name: String,
        payload: Json,
    },
    /// The root session reached a top-level final state (or was stopped).
    Done {
        session: String,
        final_state: Option<String>,
        data: Option<Json>,
    },
    /// A platform problem worth logging (script timeout, runaway eventless loop, ...).
    Error { session: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Route {
    Parent(Event),
    Session(String, Event),
    Out(Output),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Delayed {
    pub due: u64,
    pub seq: u64,
    pub sendid: Option<String>,
    pub target: Option<String>,
    pub http: bool,
    pub event: Event,
}

pub(crate) struct Child {
    pub invokeid: String,
    pub state: StateId,
    pub index: usize,
    pub autoforward: bool,
    pub done: bool,
    pub session: Box<Session>,
}

/// A running SCXML session (and the sessions it invoked).
pub struct Session {
    pub(crate) doc: Arc<Document>,
    pub(crate) env: Environment,
    pub(crate) engine: Engine,
    pub(crate) id: String,
    pub(crate) parent_invokeid: Option<String>,
    pub(crate) ancestors: Vec<String>,
    pub(crate) config: BTreeSet<StateId>,
    pub(crate) states_to_invoke: BTreeSet<StateId>,
    pub(crate) history: HashMap<StateId, Vec<StateId>>,
    pub(crate) internal: VecDeque<Event>,
    pub(crate) external: VecDeque<Event>,
    pub(crate) started: bool,
    pub(crate) running: bool,
    pub(crate) finished: bool,
    pub(crate) late_done: HashSet<StateId>,
    pub(crate) delayed: Vec<Delayed>,
    pub(crate) children: Vec<Child>,
    pub(crate) outbox: VecDeque<Route>,
    pub(crate) now: u64,
    pub(crate) seq: u64,
    pub(crate) http_self_pending: u32,
    pub(crate) last_event: Option<Event>,
    pub(crate) params: Vec<(String, Json)>,
    pub(crate) final_state: Option<String>,
    pub(crate) active_ids: Rc<RefCell<HashSet<String>>>,
    /// Recently cancelled invocations (their late events are dropped).
    pub(crate) cancelled: VecDeque<String>,
}

/// Parses a CSS2 time (`2s`, `500ms`, `.5s`) into milliseconds.
pub(crate) fn parse_delay(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix("min") {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    Some((v * mul).round() as u64)
}

fn name_match(descriptors: &[String], name: &str) -> bool {
    descriptors.iter().any(|d| {
        d == "*"
            || name == d
            || (name.len() > d.len()
                && name.starts_with(d.as_str())
                && name.as_bytes()[d.len()] == b'.')
    })
}

fn is_scxml_type(t: &str) -> bool {
    matches!(
        t,
        SCXML_IOPROCESSOR | "scxml" | "http://www.w3.org/TR/scxml/" | "http://www.w3.org/TR/scxml"
    )
}

fn is_http_type(t: &str) -> bool {
    matches!(t, BASICHTTP_IOPROCESSOR | "basichttp")
}

struct Fail;
type R<T> = Result<T, Fail>;

impl Session {
    /// Creates a session for a loaded document. Nothing runs until the first [`Session::run`].
    /// Fails only when a JavaScript runtime cannot be created.
    pub fn new(
        doc: Arc<Document>,
        env: Environment,
        session_id: impl Into<String>,
    ) -> Result<Session, EcmaError> {
        Self::build(doc, env, session_id.into(), None, Vec::new(), Vec::new())
    }

    pub(crate) fn build(
        doc: Arc<Document>,
        env: Environment,
        id: String,
        parent_invokeid: Option<String>,
        ancestors: Vec<String>,
        params: Vec<(String, Json)>,
    ) -> Result<Session, EcmaError> {
        let engine = Engine::new(env.limits.clone())?;
        let mut s = Session {
            doc,
            env,
            engine,
            id,
            parent_invokeid,
            ancestors,
            config: BTreeSet::new(),
            states_to_invoke: BTreeSet::new(),
            history: HashMap::new(),
            internal: VecDeque::new(),
            external: VecDeque::new(),
            started: false,
            running: false,
            finished: false,
            late_done: HashSet::new(),
            delayed: Vec::new(),
            children: Vec::new(),
            outbox: VecDeque::new(),
            now: 0,
            seq: 0,
            http_self_pending: 0,
            last_event: None,
            params,
            final_state: None,
            active_ids: Rc::new(RefCell::new(HashSet::new())),
            cancelled: VecDeque::new(),
        };
        s.setup_engine();
        Ok(s)
    }

    fn setup_engine(&mut self) {
        let ids = self.active_ids.clone();
        let _ = self.engine.register_function(
            "In",
            Box::new(move |args| {
                let id = args.first().and_then(|a| a.as_str()).unwrap_or("");
                Ok(Json::Bool(ids.borrow().contains(id)))
            }),
        );
        for (name, f) in self.env.functions.clone() {
            let _ = self
                .engine
                .register_function(&name, Box::new(move |args| f(args)));
        }
        let _ = self
            .engine
            .define_system("_sessionid", Some(&Json::String(self.id.clone())));
        let name = self
            .doc
            .name
            .clone()
            .map(Json::String)
            .unwrap_or(Json::Null);
        let _ = self.engine.define_system("_name", Some(&name));
        let mut io = Map::new();
        let scxml_loc = json!({ "location": format!("#_scxml_{}", self.id) });
        io.insert(SCXML_IOPROCESSOR.into(), scxml_loc.clone());
        io.insert("scxml".into(), scxml_loc);
        if let Some(loc) = self.http_location() {
            let l = json!({ "location": loc });
            io.insert(BASICHTTP_IOPROCESSOR.into(), l.clone());
            io.insert("basichttp".into(), l);
        }
        let _ = self
            .engine
            .define_system("_ioprocessors", Some(&Json::Object(io)));
    }

    fn http_location(&self) -> Option<String> {
        let base = self.env.basichttp_location.as_ref()?;
        if self.parent_invokeid.is_none() {
            Some(base.clone())
        } else {
            let sep = if base.contains('?') { '&' } else { '?' };
            Some(format!("{base}{sep}sid={}", self.id))
        }
    }

    /// A one-line description of queues and children, for debugging.
    pub fn debug_string(&self) -> String {
        let kids: Vec<String> = self
            .children
            .iter()
            .map(|c| {
                format!(
                    "{}:{}{:?}[{}]",
                    c.invokeid,
                    c.session.id,
                    c.session.configuration(),
                    c.session.debug_string()
                )
            })
            .collect();
        format!(
            "int={:?} ext={:?} delayed={} kids={kids:?}",
            self.internal.iter().map(|e| &e.name).collect::<Vec<_>>(),
            self.external.iter().map(|e| &e.name).collect::<Vec<_>>(),
            self.delayed.len()
        )
    }

    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The document this session runs.
    pub fn document(&self) -> &Arc<Document> {
        &self.doc
    }

    /// Active state ids in document order.
    pub fn configuration(&self) -> Vec<String> {
        self.config
            .iter()
            .map(|&s| self.doc.states[s].id.clone())
            .collect()
    }

    /// `true` once the session reached a top-level final state.
    pub fn is_done(&self) -> bool {
        self.finished
    }

    /// The id of the top-level final state reached, if any.
    pub fn final_state(&self) -> Option<&str> {
        self.final_state.as_deref()
    }

    /// Defines (or redefines) a read-only system variable of the host, like `_sessionid`:
    /// e.g. the orchestrator's `_genesys` call context. Call it before the first
    /// [`Session::run`] so that the data model's initial expressions see it. System variables
    /// are not part of snapshots: define them again after [`Session::restore`].
    pub fn define_system_variable(&mut self, name: &str, value: &Json) -> Result<(), String> {
        self.engine
            .define_system(name, Some(value))
            .map_err(|e| e.to_string())
    }

    /// Queues an external event from the host.
    pub fn push_event(&mut self, event: Event) {
        self.external.push_back(event);
    }

    /// Hands an HTTP request received by the host's Basic HTTP listener to the session tree.
    /// Returns the HTTP status to answer with (200, or 404 for an unknown session).
    pub fn handle_http(&mut self, request: &HttpRequest) -> u16 {
        let sid = request
            .target
            .split_once('?')
            .map(|(_, q)| q)
            .and_then(|q| crate::form_decode(q).into_iter().find(|(k, _)| k == "sid"))
            .map(|(_, v)| v);
        let ev = request.to_event();
        self.deliver_http(sid.as_deref(), ev)
    }

    fn deliver_http(&mut self, sid: Option<&str>, ev: Event) -> u16 {
        if sid.is_none() || sid == Some(self.id.as_str()) {
            if self.http_self_pending > 0 {
                self.http_self_pending -= 1;
                if let Some(p) = self
                    .external
                    .iter_mut()
                    .find(|e| e.name == HTTP_PLACEHOLDER)
                {
                    *p = ev;
                    return 200;
                }
            }
            self.external.push_back(ev);
            return 200;
        }
        for c in &mut self.children {
            if c.session.id == sid.unwrap_or("")
                || sid.is_some_and(|s| s.starts_with(&format!("{}.", c.session.id)))
            {
                return c.session.deliver_http(sid, ev);
            }
        }
        404
    }

    /// Reports that a Basic HTTP send (see [`Output::HttpSend`]) could not be delivered:
    /// `error.communication` is raised in the sending session.
    pub fn http_send_failed(&mut self, session: &str, sendid: Option<&str>, self_target: bool) {
        if session == self.id {
            if self_target && self.http_self_pending > 0 {
                self.http_self_pending -= 1;
                if let Some(i) = self
                    .external
                    .iter()
                    .position(|e| e.name == HTTP_PLACEHOLDER)
                {
                    self.external.remove(i);
                }
            }
            self.internal.push_back(Event::platform(
                "error.communication",
                sendid.map(str::to_string),
            ));
            return;
        }
        for c in &mut self.children {
            c.session.http_send_failed(session, sendid, self_target);
        }
    }

    /// The next output for the host.
    pub fn poll_output(&mut self) -> Option<Output> {
        while let Some(r) = self.outbox.pop_front() {
            match r {
                Route::Out(o) => return Some(o),
                Route::Session(target, event) => {
                    return Some(Output::SendToSession {
                        from: self.id.clone(),
                        target,
                        event,
                    })
                }
                Route::Parent(_) => {}
            }
        }
        None
    }

    /// The earliest due time of a delayed send in the session tree.
    pub fn next_deadline(&self) -> Option<u64> {
        let own = self.delayed.iter().map(|d| d.due).min();
        let kids = self
            .children
            .iter()
            .filter(|c| !c.done)
            .filter_map(|c| c.session.next_deadline())
            .min();
        match (own, kids) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `true` while a Basic HTTP send to this session's own location has not arrived yet
    /// (external events are held so that they keep their order).
    pub fn waiting_for_http(&self) -> bool {
        self.http_self_pending > 0
            || self
                .children
                .iter()
                .any(|c| !c.done && c.session.waiting_for_http())
    }

    /// Runs until nothing more can happen at `now`: all due delayed sends fired, all queued
    /// events processed, all children idle. Returns the number of steps made.
    pub fn run(&mut self, now: u64) -> usize {
        let mut n = 0;
        while self.step(now) {
            n += 1;
        }
        n
    }

    /// One step: starts the session, or fires due timers, steps children once, and processes
    /// at most one external event (one macrostep). Returns `false` when idle.
    pub fn step(&mut self, now: u64) -> bool {
        if now > self.now {
            self.now = now;
        }
        if !self.started {
            self.started = true;
            self.start();
            if !self.running {
                self.exit_interpreter();
            }
            return true;
        }
        if self.finished {
            return false;
        }
        let mut progressed = self.fire_timers();
        progressed |= self.step_children(now);
        if self.running && !self.internal.is_empty() {
            self.macrostep();
            progressed = true;
        }
        let blocked = self
            .external
            .front()
            .is_some_and(|e| e.name == HTTP_PLACEHOLDER);
        if self.running && !blocked {
            if let Some(ev) = self.external.pop_front() {
                self.process_external(ev);
                progressed = true;
            }
        }
        if !self.running && !self.finished {
            self.exit_interpreter();
            progressed = true;
        }
        progressed
    }

    fn fire_timers(&mut self) -> bool {
        let mut fired = false;
        loop {
            let mut best: Option<usize> = None;
            for (i, d) in self.delayed.iter().enumerate() {
                if d.due <= self.now {
                    match best {
                        Some(b) if (self.delayed[b].due, self.delayed[b].seq) <= (d.due, d.seq) => {
                        }
                        _ => best = Some(i),
                    }
                }
            }
            let Some(i) = best else { break };
            let d = self.delayed.remove(i);
            fired = true;
            if d.http {
                self.dispatch_http(d.target.as_deref(), d.event);
            } else {
                self.dispatch(d.target.as_deref(), d.event);
            }
        }
        fired
    }

    fn step_children(&mut self, now: u64) -> bool {
        let mut progressed = false;
        let mut i = 0;
        while i < self.children.len() {
            if self.children[i].done {
                i += 1;
                continue;
            }
            if self.children[i].session.step(now) {
                progressed = true;
            }
            let routes: Vec<Route> = self.children[i].session.outbox.drain(..).collect();
            let invokeid = self.children[i].invokeid.clone();
            if self.children[i].session.finished {
                self.children[i].done = true;
            }
            for r in routes {
                match r {
                    Route::Parent(mut ev) => {
                        ev.invokeid = Some(invokeid.clone());
                        self.external.push_back(ev);
                    }
                    Route::Session(sid, ev) => {
                        if !self.deliver_to_session(&sid, ev.clone()) {
                            self.outbox.push_back(Route::Session(sid, ev));
                        }
                    }
                    Route::Out(o) => self.outbox.push_back(Route::Out(o)),
                }
            }
            i += 1;
        }
        progressed
    }

    fn deliver_to_session(&mut self, sid: &str, ev: Event) -> bool {
        if sid == self.id {
            self.external.push_back(ev);
            return true;
        }
        for c in &mut self.children {
            if !c.done && c.session.deliver_to_session(sid, ev.clone()) {
                return true;
            }
        }
        false
    }

    fn session_in_tree(&self, sid: &str) -> bool {
        sid == self.id
            || self
                .children
                .iter()
                .any(|c| !c.done && c.session.session_in_tree(sid))
    }

    fn out(&mut self, o: Output) {
        self.outbox.push_back(Route::Out(o));
    }

    fn platform_error(&mut self, message: String) {
        let session = self.id.clone();
        self.out(Output::Error { session, message });
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn update_active_ids(&self) {
        let mut ids = self.active_ids.borrow_mut();
        ids.clear();
        for &s in &self.config {
            ids.insert(self.doc.states[s].id.clone());
        }
    }

    // ---- data model helpers ----

    fn ecma_fail(&mut self, e: EcmaError) -> Fail {
        self.exec_error(e, None)
    }

    fn exec_error(&mut self, e: EcmaError, sendid: Option<String>) -> Fail {
        if e == EcmaError::Timeout || e == EcmaError::OutOfMemory {
            self.platform_error(format!("{e}"));
        }
        self.internal
            .push_back(Event::platform("error.execution", sendid));
        Fail
    }

    fn eval_string(&mut self, expr: &str) -> R<String> {
        self.engine.eval_string(expr).map_err(|e| self.ecma_fail(e))
    }

    fn eval_tagged(&mut self, expr: &str) -> R<Json> {
        self.engine.eval_tagged(expr).map_err(|e| self.ecma_fail(e))
    }

    fn cond(&mut self, expr: &str) -> bool {
        match self.engine.eval_bool(expr) {
            Ok(b) => b,
            Err(e) => {
                self.ecma_fail(e);
                false
            }
        }
    }

    fn assign_tagged(&mut self, location: &str, v: &Json) -> R<()> {
        self.engine
            .assign_tagged(location, v)
            .map_err(|e| self.ecma_fail(e))
    }

    pub(crate) fn set_event_pub(&mut self, ev: &Event) {
        self.set_event(ev);
    }

    pub(crate) fn refresh_active_ids(&self) {
        self.update_active_ids();
    }

    fn set_event(&mut self, ev: &Event) {
        let _ = self.engine.define_system_tagged("_event", &ev.to_js());
        self.last_event = Some(ev.clone());
    }

    // ---- start / data ----

    fn start(&mut self) {
        let doc = self.doc.clone();
        // declare every data id first (late binding assigns later)
        for (sidx, st) in doc.states.iter().enumerate() {
            let top = sidx == 0;
            if doc.late_binding && !top {
                for d in &st.data {
                    let _ = self.engine.set_global_json(&d.id, None);
                }
                continue;
            }
            self.init_data(sidx, top);
        }
        self.late_done.insert(0);
        if let Some(script) = &doc.script {
            if let Err(e) = self.engine.run_script(script) {
                self.ecma_fail(e);
            }
        }
        self.running = true;
        if let Some(t) = doc.states[0].initial {
            self.enter_states(&[t]);
        }
        self.macrostep();
    }

    fn init_data(&mut self, state: StateId, top: bool) {
        let doc = self.doc.clone();
        for d in &doc.states[state].data {
            if top {
                if let Some((_, v)) = self.params.iter().find(|(k, _)| *k == d.id) {
                    let v = v.clone();
                    if let Err(e) = self.engine.set_global_tagged(&d.id, &v) {
                        self.ecma_fail(e);
                    }
                    continue;
                }
            }
            let r = if let Some(expr) = &d.expr {
                let _ = self.engine.set_global_json(&d.id, None);
                self.engine.assign_expr(&d.id, expr)
            } else if let Some(v) = &d.value {
                self.engine.set_global_tagged(&d.id, v)
            } else {
                self.engine.set_global_json(&d.id, None)
            };
            if let Err(e) = r {
                self.ecma_fail(e);
            }
        }
    }

    // ---- Appendix D ----

    fn macrostep(&mut self) {
        let doc = self.doc.clone();
        let mut count = 0usize;
        loop {
            while self.running {
                count += 1;
                if count > MAX_MICROSTEPS {
                    self.platform_error(
                        "too many microsteps in one macrostep; session stopped".into(),
                    );
                    self.running = false;
                    break;
                }
                let mut enabled = self.select_transitions(None);
                if enabled.is_empty() {
                    match self.internal.pop_front() {
                        None => break,
                        Some(ev) => {
                            self.set_event(&ev);
                            enabled = self.select_transitions(Some(&ev));
                        }
                    }
                }
                if !enabled.is_empty() {
                    self.microstep(&enabled);
                }
            }
            if !self.running {
                return;
            }
            let to_invoke: Vec<StateId> = std::mem::take(&mut self.states_to_invoke)
                .into_iter()
                .collect();
            for s in to_invoke {
                for i in 0..doc.states[s].invokes.len() {
                    self.invoke(s, i);
                }
            }
            if self.internal.is_empty() {
                return;
            }
        }
    }

    fn process_external(&mut self, ev: Event) {
        if let Some(inv) = &ev.invokeid {
            if self.cancelled.iter().any(|c| c == inv) {
                // from a cancelled invocation
                return;
            }
        }
        self.set_event(&ev);
        let doc = self.doc.clone();
        let mut forward = Vec::new();
        let mut finalize = Vec::new();
        for c in &self.children {
            if !self.config.contains(&c.state) {
                continue;
            }
            if ev.invokeid.as_deref() == Some(c.invokeid.as_str()) {
                finalize.push((c.state, c.index));
            }
            if c.autoforward && !c.done {
                forward.push(c.invokeid.clone());
            }
        }
        for (s, i) in finalize {
            let block = &doc.states[s].invokes[i].finalize;
            self.exec_block(block);
        }
        for id in forward {
            if let Some(c) = self.children.iter_mut().find(|c| c.invokeid == id) {
                c.session.external.push_back(ev.clone());
            }
        }
        let enabled = self.select_transitions(Some(&ev));
        if std::env::var("SCXML_TRACE").is_ok() {
            eprintln!("{} ext {} -> {:?}", self.id, ev.name, enabled);
        }
        if !enabled.is_empty() {
            self.microstep(&enabled);
        }
        self.macrostep();
    }

    fn select_transitions(&mut self, ev: Option<&Event>) -> Vec<TransitionId> {
        let doc = self.doc.clone();
        let atomic: Vec<StateId> = self
            .config
            .iter()
            .copied()
            .filter(|&s| matches!(doc.states[s].kind, Kind::Atomic | Kind::Final))
            .collect();
        let mut enabled: Vec<TransitionId> = Vec::new();
        for s in atomic {
            let mut cur = Some(s);
            'outer: while let Some(st) = cur {
                for &t in &doc.states[st].transitions {
                    let tr = &doc.transitions[t];
                    let matches = match ev {
                        None => tr.events.is_empty(),
                        Some(e) => !tr.events.is_empty() && name_match(&tr.events, &e.name),
                    };
                    if !matches {
                        continue;
                    }
                    let ok = match &tr.cond {
                        None => true,
                        Some(c) => self.cond(c),
                    };
                    if ok {
                        if !enabled.contains(&t) {
                            enabled.push(t);
                        }
                        break 'outer;
                    }
                }
                cur = doc.states[st].parent;
            }
        }
        self.remove_conflicting(enabled)
    }

    fn remove_conflicting(&self, enabled: Vec<TransitionId>) -> Vec<TransitionId> {
        let doc = &self.doc;
        let mut filtered: Vec<(TransitionId, Vec<StateId>)> = Vec::new();
        for t1 in enabled {
            let x1 = self.exit_set(&[t1]);
            let mut preempted = false;
            let mut remove = Vec::new();
            for (i, (t2, x2)) in filtered.iter().enumerate() {
                if x1.iter().any(|s| x2.contains(s)) {
                    if doc.is_descendant(doc.transitions[t1].source, doc.transitions[*t2].source) {
                        remove.push(i);
                    } else {
                        preempted = true;
                        break;
                    }
                }
            }
            if !preempted {
                for i in remove.into_iter().rev() {
                    filtered.remove(i);
                }
                filtered.push((t1, x1));
            }
        }
        filtered.into_iter().map(|(t, _)| t).collect()
    }

    fn effective_targets(&self, t: TransitionId) -> Vec<StateId> {
        let doc = &self.doc;
        let mut out: Vec<StateId> = Vec::new();
        for &s in &doc.transitions[t].targets {
            if matches!(doc.states[s].kind, Kind::HistoryShallow | Kind::HistoryDeep) {
                if let Some(h) = self.history.get(&s) {
                    for &x in h {
                        if !out.contains(&x) {
                            out.push(x);
                        }
                    }
                } else if let Some(dt) = doc.states[s].initial {
                    for x in self.effective_targets(dt) {
                        if !out.contains(&x) {
                            out.push(x);
                        }
                    }
                }
            } else if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    fn transition_domain(&self, t: TransitionId) -> Option<StateId> {
        let doc = &self.doc;
        let tr = &doc.transitions[t];
        let targets = self.effective_targets(t);
        if targets.is_empty() {
            return None;
        }
        if tr.internal
            && doc.states[tr.source].kind == Kind::Compound
            && targets.iter().all(|&s| doc.is_descendant(s, tr.source))
        {
            return Some(tr.source);
        }
        let mut list = vec![tr.source];
        list.extend(targets);
        Some(self.lcca(&list))
    }

    fn lcca(&self, list: &[StateId]) -> StateId {
        let doc = &self.doc;
        let mut cur = doc.states[list[0]].parent;
        while let Some(anc) = cur {
            let k = doc.states[anc].kind;
            if (k == Kind::Compound || k == Kind::Root)
                && list[1..].iter().all(|&s| doc.is_descendant(s, anc))
            {
                return anc;
            }
            cur = doc.states[anc].parent;
        }
        0
    }

    fn exit_set(&self, ts: &[TransitionId]) -> Vec<StateId> {
        let mut out = Vec::new();
        for &t in ts {
            if self.doc.transitions[t].targets.is_empty() {
                continue;
            }
            if let Some(domain) = self.transition_domain(t) {
                for &s in &self.config {
                    if self.doc.is_descendant(s, domain) && !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
        }
        out
    }

    fn microstep(&mut self, enabled: &[TransitionId]) {
        self.exit_states(enabled);
        let doc = self.doc.clone();
        for &t in enabled {
            self.exec_block(&doc.transitions[t].body);
        }
        self.enter_states(enabled);
    }

    fn exit_states(&mut self, enabled: &[TransitionId]) {
        let doc = self.doc.clone();
        let mut to_exit = self.exit_set(enabled);
        for s in &to_exit {
            self.states_to_invoke.remove(s);
        }
        to_exit.sort_unstable_by(|a, b| b.cmp(a));
        for &s in &to_exit {
            for &h in &doc.states[s].history {
                let v: Vec<StateId> = if doc.states[h].kind == Kind::HistoryDeep {
                    self.config
                        .iter()
                        .copied()
                        .filter(|&x| {
                            matches!(doc.states[x].kind, Kind::Atomic | Kind::Final)
                                && doc.is_descendant(x, s)
                        })
                        .collect()
                } else {
                    self.config
                        .iter()
                        .copied()
                        .filter(|&x| doc.states[x].parent == Some(s))
                        .collect()
                };
                self.history.insert(h, v);
            }
        }
        for &s in &to_exit {
            for block in &doc.states[s].onexit {
                self.exec_block(block);
            }
            self.cancel_invokes(s);
            self.config.remove(&s);
            self.active_ids.borrow_mut().remove(&doc.states[s].id);
        }
    }

    fn cancel_invokes(&mut self, s: StateId) {
        for c in &self.children {
            if c.state == s && !c.done {
                self.cancelled.push_back(c.invokeid.clone());
            }
        }
        while self.cancelled.len() > 64 {
            self.cancelled.pop_front();
        }
        self.children.retain(|c| c.state != s);
    }

    fn enter_states(&mut self, enabled: &[TransitionId]) {
        let doc = self.doc.clone();
        let mut to_enter: Vec<StateId> = Vec::new();
        let mut default_entry: Vec<StateId> = Vec::new();
        let mut default_history: HashMap<StateId, TransitionId> = HashMap::new();
        for &t in enabled {
            for &s in &doc.transitions[t].targets {
                self.add_descendants(s, &mut to_enter, &mut default_entry, &mut default_history);
            }
            let ancestor = self.transition_domain(t);
            for s in self.effective_targets(t) {
                self.add_ancestors(
                    s,
                    ancestor,
                    &mut to_enter,
                    &mut default_entry,
                    &mut default_history,
                );
            }
        }
        to_enter.sort_unstable();
        for s in to_enter {
            self.config.insert(s);
            self.states_to_invoke.insert(s);
            self.update_active_ids();
            if doc.late_binding && !self.late_done.contains(&s) {
                self.late_done.insert(s);
                self.init_data(s, false);
            }
            for block in &doc.states[s].onentry {
                self.exec_block(block);
            }
            if default_entry.contains(&s) {
                if let Some(t) = doc.states[s].initial {
                    self.exec_block(&doc.transitions[t].body);
                }
            }
            if let Some(&t) = default_history.get(&s) {
                self.exec_block(&doc.transitions[t].body);
            }
            if doc.states[s].kind == Kind::Final {
                let parent = doc.states[s].parent.unwrap_or(0);
                if parent == 0 {
                    self.running = false;
                    self.final_state = Some(doc.states[s].id.clone());
                } else {
                    let data = self.done_data(s);
                    let mut ev =
                        Event::platform(&format!("done.state.{}", doc.states[parent].id), None);
                    ev.data = data;
                    self.internal.push_back(ev);
                    if let Some(gp) = doc.states[parent].parent {
                        if doc.states[gp].kind == Kind::Parallel
                            && doc.states[gp].children.iter().all(|&c| self.in_final(c))
                        {
                            self.internal.push_back(Event::platform(
                                &format!("done.state.{}", doc.states[gp].id),
                                None,
                            ));
                        }
                    }
                }
            }
        }
    }

    fn in_final(&self, s: StateId) -> bool {
        let doc = &self.doc;
        match doc.states[s].kind {
            Kind::Compound => doc.states[s]
                .children
                .iter()
                .any(|&c| doc.states[c].kind == Kind::Final && self.config.contains(&c)),
            Kind::Parallel => doc.states[s].children.iter().all(|&c| self.in_final(c)),
            _ => false,
        }
    }

    fn add_descendants(
        &self,
        s: StateId,
        to_enter: &mut Vec<StateId>,
        default_entry: &mut Vec<StateId>,
        default_history: &mut HashMap<StateId, TransitionId>,
    ) {
        let doc = &self.doc;
        let st = &doc.states[s];
        match st.kind {
            Kind::HistoryShallow | Kind::HistoryDeep => {
                let parent = st.parent.unwrap_or(0);
                if let Some(h) = self.history.get(&s) {
                    for &x in h {
                        self.add_descendants(x, to_enter, default_entry, default_history);
                    }
                    for &x in h {
                        self.add_ancestors(
                            x,
                            Some(parent),
                            to_enter,
                            default_entry,
                            default_history,
                        );
                    }
                } else if let Some(t) = st.initial {
                    default_history.insert(parent, t);
                    for &x in &doc.transitions[t].targets {
                        self.add_descendants(x, to_enter, default_entry, default_history);
                    }
                    for &x in &doc.transitions[t].targets {
                        self.add_ancestors(
                            x,
                            Some(parent),
                            to_enter,
                            default_entry,
                            default_history,
                        );
                    }
                }
            }
            _ => {
                if !to_enter.contains(&s) {
                    to_enter.push(s);
                }
                if st.kind == Kind::Compound {
                    if !default_entry.contains(&s) {
                        default_entry.push(s);
                    }
                    if let Some(t) = st.initial {
                        for &x in &doc.transitions[t].targets {
                            self.add_descendants(x, to_enter, default_entry, default_history);
                        }
                        for &x in &doc.transitions[t].targets {
                            self.add_ancestors(
                                x,
                                Some(s),
                                to_enter,
                                default_entry,
                                default_history,
                            );
                        }
                    }
                } else if st.kind == Kind::Parallel {
                    for &c in &st.children {
                        if !to_enter.iter().any(|&x| x == c || doc.is_descendant(x, c)) {
                            self.add_descendants(c, to_enter, default_entry, default_history);
                        }
                    }
                }
            }
        }
    }

    fn add_ancestors(
        &self,
        s: StateId,
        ancestor: Option<StateId>,
        to_enter: &mut Vec<StateId>,
        default_entry: &mut Vec<StateId>,
        default_history: &mut HashMap<StateId, TransitionId>,
    ) {
        let doc = &self.doc;
        let mut cur = doc.states[s].parent;
        while let Some(anc) = cur {
            if Some(anc) == ancestor {
                break;
            }
            if anc != 0 && !to_enter.contains(&anc) {
                to_enter.push(anc);
            }
            if anc == 0 {
                break;
            }
            if doc.states[anc].kind == Kind::Parallel {
                for &c in &doc.states[anc].children {
                    if !to_enter.iter().any(|&x| x == c || doc.is_descendant(x, c)) {
                        self.add_descendants(c, to_enter, default_entry, default_history);
                    }
                }
            }
            cur = doc.states[anc].parent;
        }
    }

    fn done_data(&mut self, s: StateId) -> Option<Json> {
        let doc = self.doc.clone();
        let dd = doc.states[s].donedata.as_ref()?;
        self.payload(&[], &dd.params, dd.content.as_ref())
            .ok()
            .flatten()
    }

    fn exit_interpreter(&mut self) {
        let doc = self.doc.clone();
        let all: Vec<StateId> = self.config.iter().rev().copied().collect();
        let mut done_data = None;
        for s in all {
            for block in &doc.states[s].onexit {
                self.exec_block(block);
            }
            self.cancel_invokes(s);
            self.config.remove(&s);
            if doc.states[s].kind == Kind::Final && doc.states[s].parent == Some(0) {
                done_data = self.done_data(s);
            }
        }
        self.update_active_ids();
        self.children.clear();
        self.delayed.clear();
        self.finished = true;
        self.running = false;
        if let Some(inv) = &self.parent_invokeid {
            let mut ev = Event::platform(&format!("done.invoke.{inv}"), None);
            ev.kind = EventKind::External;
            ev.data = done_data;
            self.outbox.push_back(Route::Parent(ev));
        } else {
            let session = self.id.clone();
            let final_state = self.final_state.clone();
            self.out(Output::Done {
                session,
                final_state,
                data: done_data,
            });
        }
    }

    // ---- executable content ----

    fn exec_block(&mut self, block: &Block) {
        for e in block {
            if self.exec(e).is_err() {
                break;
            }
        }
    }

    fn exec(&mut self, e: &Exec) -> R<()> {
        match e {
            Exec::Raise(name) => {
                let mut ev = Event::platform(name, None);
                ev.kind = EventKind::Internal;
                self.internal.push_back(ev);
            }
            Exec::Log { label, expr } => {
                let message = match expr {
                    Some(x) => self.eval_string(x)?,
                    None => String::new(),
                };
                let session = self.id.clone();
                self.out(Output::Log {
                    session,
                    label: label.clone(),
                    message,
                });
            }
            Exec::If(branches) => {
                for (cond, body) in branches {
                    let take = match cond {
                        None => true,
                        Some(c) => self.cond(c),
                    };
                    if take {
                        for x in body {
                            self.exec(x)?;
                        }
                        break;
                    }
                }
            }
            Exec::Foreach {
                array,
                item,
                index,
                body,
            } => {
                let slot = format!("foreach{}", self.next_seq());
                let n = match self.engine.eval_collection_into_slot(array, &slot) {
                    Ok(Some(n)) => n,
                    Ok(None) => {
                        return Err(self.ecma_fail(EcmaError::Script("not iterable".into())))
                    }
                    Err(e) => return Err(self.ecma_fail(e)),
                };
                if !valid_location(item) || index.as_deref().is_some_and(|i| !valid_location(i)) {
                    return Err(self.ecma_fail(EcmaError::Script("bad foreach variable".into())));
                }
                let mut result = Ok(());
                for i in 0..n {
                    let mut src = format!("{} = {};", item, Engine::slot_item_expr(&slot, i));
                    if let Some(ix) = index {
                        src.push_str(&format!("{ix} = {i};"));
                    }
                    if let Err(e) = self.engine.run_script(&src) {
                        result = Err(self.ecma_fail(e));
                        break;
                    }
                    let mut failed = false;
                    for x in body {
                        if self.exec(x).is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if failed {
                        result = Err(Fail);
                        break;
                    }
                }
                let _ = self
                    .engine
                    .run_script(&format!("delete __sb.slots[{}];", Json::String(slot)));
                return result;
            }
            Exec::Assign {
                location,
                expr,
                content,
                ..
            } => {
                if let Some(x) = expr {
                    self.engine
                        .assign_expr(location, x)
                        .map_err(|e| self.ecma_fail(e))?;
                } else {
                    let v = match content {
                        Some(Content::Expr(x)) => self.eval_tagged(x)?,
                        Some(Content::Value(v)) => v.clone(),
                        Some(Content::Scxml(s)) => Json::String(s.to_string()),
                        None => json!({ TAG: "u" }),
                    };
                    self.assign_tagged(location, &v)?;
                }
            }
            Exec::Script(src) => {
                self.engine.run_script(src).map_err(|e| self.ecma_fail(e))?;
            }
            Exec::Cancel { sendid, sendidexpr } => {
                let id = match (sendid, sendidexpr) {
                    (Some(s), _) => s.clone(),
                    (None, Some(x)) => self.eval_string(x)?,
                    (None, None) => return Ok(()),
                };
                self.delayed
                    .retain(|d| d.sendid.as_deref() != Some(id.as_str()));
            }
            Exec::Send(s) => self.send(s)?,
            Exec::Custom(call) => {
                let Some(handler) = self.env.element(&call.namespace, &call.name) else {
                    return Err(self.ecma_fail(EcmaError::Script("unregistered extension".into())));
                };
                let mut env = ExtEnvImpl {
                    session: self,
                    ns: &call.namespace,
                    name: &call.name,
                };
                if handler.execute(call, &mut env).is_err() {
                    self.internal
                        .push_back(Event::platform("error.execution", None));
                    return Err(Fail);
                }
            }
        }
        Ok(())
    }

    fn payload(
        &mut self,
        namelist: &[String],
        params: &[Param],
        content: Option<&Content>,
    ) -> R<Option<Json>> {
        if let Some(c) = content {
            return Ok(Some(match c {
                Content::Expr(x) => self.eval_tagged(x)?,
                Content::Value(v) => v.clone(),
                Content::Scxml(s) => Json::String(s.to_string()),
            }));
        }
        if namelist.is_empty() && params.is_empty() {
            return Ok(None);
        }
        let mut m = Map::new();
        for n in namelist {
            let v = self.eval_tagged(n)?;
            m.insert(n.clone(), v);
        }
        for p in params {
            let v = match (&p.expr, &p.location) {
                (Some(x), _) => self.eval_tagged(x)?,
                (None, Some(l)) => self.eval_tagged(l)?,
                (None, None) => self.eval_tagged(&p.name)?,
            };
            m.insert(p.name.clone(), v);
        }
        Ok(Some(Json::Object(m)))
    }

    fn send(&mut self, s: &crate::model::Send) -> R<()> {
        let name = match (&s.event, &s.eventexpr) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(x)) => Some(self.eval_string(x)?),
            _ => None,
        };
        let target = match (&s.target, &s.targetexpr) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(x)) => Some(self.eval_string(x)?),
            _ => None,
        };
        let ty = match (&s.type_, &s.typeexpr) {
            (Some(t), _) => t.clone(),
            (None, Some(x)) => self.eval_string(x)?,
            _ => SCXML_IOPROCESSOR.to_string(),
        };
        let sendid = if let Some(id) = &s.id {
            Some(id.clone())
        } else if let Some(loc) = &s.idlocation {
            let n = self.next_seq();
            let id = format!("{}.send{}", self.id, n);
            self.assign_tagged(loc, &Json::String(id.clone()))?;
            Some(id)
        } else {
            None
        };
        let delay = match (&s.delay, &s.delayexpr) {
            (Some(d), _) => parse_delay(d).unwrap_or(0),
            (None, Some(x)) => {
                let d = self.eval_string(x)?;
                match parse_delay(&d) {
                    Some(v) => v,
                    None => {
                        return Err(self.ecma_fail(EcmaError::Script(format!("bad delay '{d}'"))))
                    }
                }
            }
            _ => 0,
        };
        let data = self.payload(&s.namelist, &s.params, s.content.as_ref())?;
        let http = if is_scxml_type(&ty) {
            false
        } else if is_http_type(&ty) {
            true
        } else {
            return Err(self.exec_error(
                EcmaError::Script(format!("unsupported send type '{ty}'")),
                sendid,
            ));
        };
        if !http {
            if name.is_none() {
                return Err(self.exec_error(EcmaError::Script("send without event".into()), sendid));
            }
            if let Some(t) = &target {
                if !t.starts_with("#_") {
                    return Err(
                        self.exec_error(EcmaError::Script(format!("invalid target '{t}'")), sendid)
                    );
                }
            }
        }
        let ev = Event {
            name: name.unwrap_or_default(),
            kind: EventKind::External,
            sendid: sendid.clone(),
            origin: Some(format!("#_scxml_{}", self.id)),
            origintype: Some(SCXML_IOPROCESSOR.to_string()),
            invokeid: None,
            data,
            raw: None,
        };
        if delay > 0 {
            let seq = self.next_seq();
            self.delayed.push(Delayed {
                due: self.now + delay,
                seq,
                sendid,
                target,
                http,
                event: ev,
            });
        } else if http {
            self.dispatch_http(target.as_deref(), ev);
        } else {
            self.dispatch(target.as_deref(), ev);
        }
        Ok(())
    }

    fn comm_error(&mut self, sendid: Option<String>) {
        self.internal
            .push_back(Event::platform("error.communication", sendid));
    }

    fn dispatch(&mut self, target: Option<&str>, mut ev: Event) {
        match target {
            None => self.external.push_back(ev),
            Some("#_internal") => {
                ev.kind = EventKind::Internal;
                self.internal.push_back(ev);
            }
            Some("#_parent") => {
                if self.parent_invokeid.is_some() {
                    self.outbox.push_back(Route::Parent(ev));
                } else {
                    self.comm_error(ev.sendid);
                }
            }
            Some(t) if t.starts_with("#_scxml_") => {
                let sid = &t["#_scxml_".len()..];
                if self.session_in_tree(sid) {
                    let sid = sid.to_string();
                    self.deliver_to_session(&sid, ev);
                } else if self.ancestors.iter().any(|a| a == sid)
                    || self.env.session_exists.as_ref().is_some_and(|f| f(sid))
                {
                    self.outbox.push_back(Route::Session(sid.to_string(), ev));
                } else {
                    self.comm_error(ev.sendid);
                }
            }
            Some(t) => {
                let inv = &t[2.min(t.len())..];
                if let Some(c) = self
                    .children
                    .iter_mut()
                    .find(|c| c.invokeid == inv && !c.done)
                {
                    c.session.external.push_back(ev);
                } else {
                    self.comm_error(ev.sendid);
                }
            }
        }
    }

    fn dispatch_http(&mut self, target: Option<&str>, ev: Event) {
        let Some(url) = target else {
            self.comm_error(ev.sendid);
            return;
        };
        if self.env.basichttp_location.is_none()
            || !(url.starts_with("http://") || url.starts_with("https://"))
        {
            self.comm_error(ev.sendid);
            return;
        }
        let own = self.http_location();
        let to_self = own.as_deref() == Some(url);
        if to_self {
            self.http_self_pending += 1;
            self.external
                .push_back(Event::external(HTTP_PLACEHOLDER, None));
        }
        let origin = own.unwrap_or_default();
        let name = if ev.name.is_empty() {
            None
        } else {
            Some(ev.name.as_str())
        };
        let (url, request) = crate::http::encode_send(url, name, ev.data.as_ref(), &origin);
        let session = self.id.clone();
        self.out(Output::HttpSend {
            session,
            sendid: ev.sendid,
            url,
            request,
        });
    }

    fn invoke(&mut self, state: StateId, index: usize) {
        let doc = self.doc.clone();
        let inv = &doc.states[state].invokes[index];
        let invokeid = match &inv.id {
            Some(id) => id.clone(),
            None => {
                let id = format!("{}.{}", doc.states[state].id, self.next_seq());
                if let Some(loc) = &inv.idlocation {
                    if self.assign_tagged(loc, &Json::String(id.clone())).is_err() {
                        return;
                    }
                }
                id
            }
        };
        let ty = match (&inv.type_, &inv.typeexpr) {
            (Some(t), _) => t.clone(),
            (None, Some(x)) => match self.eval_string(x) {
                Ok(t) => t,
                Err(_) => return,
            },
            _ => "scxml".to_string(),
        };
        if !is_scxml_type(&ty) {
            self.ecma_fail(EcmaError::Script(format!("unsupported invoke type '{ty}'")));
            return;
        }
        let src = match (&inv.src, &inv.srcexpr) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(x)) => match self.eval_string(x) {
                Ok(s) => Some(s),
                Err(_) => return,
            },
            _ => None,
        };
        let loaded = if let Some(src) = src {
            match self.env.fetch(doc.base.as_deref(), &src) {
                Ok((uri, text)) => Document::load(&text, Some(&uri), &self.env),
                Err(e) => Err(crate::LoadError {
                    line: 0,
                    message: e,
                }),
            }
        } else {
            let text = match &inv.content {
                Some(Content::Scxml(s)) => Ok(s.to_string()),
                Some(Content::Expr(x)) => match self.eval_tagged(x) {
                    Ok(Json::String(s)) => Ok(s),
                    Ok(Json::Object(m)) if m.get(TAG).and_then(|t| t.as_str()) == Some("x") => {
                        Ok(m.get("s")
                            .and_then(|s| s.as_str())
                            .unwrap_or("")
                            .to_string())
                    }
                    Ok(_) => {
                        self.ecma_fail(EcmaError::Script(
                            "invoke content is not a document".into(),
                        ));
                        Err(())
                    }
                    Err(_) => Err(()),
                },
                Some(Content::Value(Json::String(s))) => Ok(s.clone()),
                _ => Err(()),
            };
            match text {
                Ok(t) => Document::load(&t, doc.base.as_deref(), &self.env),
                Err(()) => return,
            }
        };
        let child_doc = match loaded {
            Ok(d) => d,
            Err(e) => {
                self.platform_error(format!("invoke {invokeid}: {e}"));
                self.internal
                    .push_back(Event::platform("error.execution", None));
                return;
            }
        };
        let params = match self.payload(&inv.namelist, &inv.params, None) {
            Ok(Some(Json::Object(m))) => m.into_iter().collect(),
            Ok(_) => Vec::new(),
            Err(_) => return,
        };
        let n = self.next_seq();
        let sid = format!("{}.{}", self.id, n);
        let mut ancestors = self.ancestors.clone();
        ancestors.push(self.id.clone());
        let mut child = match Session::build(
            child_doc,
            self.env.clone(),
            sid,
            Some(invokeid.clone()),
            ancestors,
            params,
        ) {
            Ok(c) => c,
            Err(e) => {
                self.ecma_fail(e);
                return;
            }
        };
        child.now = self.now;
        self.children.push(Child {
            invokeid,
            state,
            index,
            autoforward: inv.autoforward,
            done: false,
            session: Box::new(child),
        });
    }
}

fn valid_location(s: &str) -> bool {
    let s = s.trim();
    !s.is_empty()
        && s.split('.').all(|p| {
            let mut c = p.chars();
            matches!(c.next(), Some(ch) if ch.is_alphabetic() || ch == '_' || ch == '$')
                && c.all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '$')
        })
}

struct ExtEnvImpl<'a> {
    session: &'a mut Session,
    ns: &'a str,
    name: &'a str,
}

impl ExtensionEnv for ExtEnvImpl<'_> {
    fn eval(&mut self, expr: &str) -> Result<Option<Json>, String> {
        self.session
            .engine
            .eval_json(expr)
            .map_err(|e| e.to_string())
    }

    fn assign(&mut self, location: &str, value: &Json) -> Result<(), String> {
        self.session
            .engine
            .assign_tagged(location, value)
            .map_err(|e| e.to_string())
    }

    fn raise(&mut self, name: &str, data: Option<Json>) {
        let mut ev = Event::platform(name, None);
        ev.kind = EventKind::Internal;
        ev.data = data;
        self.session.internal.push_back(ev);
    }

    fn emit(&mut self, payload: Json) {
        let session = self.session.id.clone();
        let o = Output::Extension {
            session,
            namespace: self.ns.to_string(),
            name: self.name.to_string(),
            payload,
        };
        self.session.out(o);
    }

    fn session_id(&self) -> &str {
        &self.session.id
    }
}
