//! The interpreter state and the Form Interpretation Algorithm (select, collect, process).

use crate::dom::{self, Elem};
use crate::exec::{self, Jump};
use crate::fetchopts::{Kind, Props};
use crate::grammar::Grammar;
use crate::{Command, Config, FetchError, FetchOptions, Input, Method, PromptPart, TransferKind};
use serde_json::{json, Value as Json};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use switchboard_ecma::{EcmaError, Engine, Scope};

/// Elements that are form items (they have a guard variable and are visited by the FIA).
const FORM_ITEMS: &[&str] = &[
    "field",
    "block",
    "initial",
    "record",
    "transfer",
    "subdialog",
    "object",
];

/// Events handled in a row without waiting for anything: past this an application is looping
/// on its own events (e.g. a catch that rethrows) and the call is ended.
pub(crate) const MAX_EVENTS_IN_A_ROW: u32 = 100;

/// FIA iterations in one `handle` call past which the application is taken to be looping
/// on its own (goto to itself, clear in a loop) and the call is ended.
const MAX_STEPS_WITHOUT_WAITING: u32 = 10_000;

/// One VoiceXML session (one call).
pub struct Interpreter {
    pub(crate) engine: Engine,
    pub(crate) cmds: VecDeque<Command>,
    pub(crate) prompts: Vec<PromptPart>,
    pub(crate) now: u64,
    pub(crate) app_scope: Scope,
    pub(crate) doc_scope: Scope,
    pub(crate) session_scope: Scope,
    pub(crate) app_url: Option<String>,
    pub(crate) app_root: Option<Rc<Elem>>,
    pub(crate) doc_url: String,
    pub(crate) doc_root: Option<Rc<Elem>>,
    pub(crate) form: Option<FormState>,
    pub(crate) wait: Wait,
    pub(crate) done: bool,
    pub(crate) hung_up: bool,
    /// Fetched scripts and grammars by URL (an `Err` is the fetch failure's reason).
    pub(crate) resources: HashMap<String, Result<String, String>>,
    /// Callers of the running subdialogs, innermost last.
    pub(crate) stack: Vec<crate::subdialog::Frame>,
    /// `<param>` values for the first dialog of a subdialog being started.
    pub(crate) sub_params: Option<Vec<(String, Json)>>,
    /// Set by `<reprompt>` in the catch being run.
    pub(crate) reprompt: bool,
    /// The last FIA iteration ended with a catch without `<reprompt>`: skip prompts once.
    pub(crate) suppress_prompts: bool,
    pub(crate) events_in_a_row: u32,
    /// Keys pressed while no input was being collected.
    pub(crate) typeahead: String,
    /// The `timeout` attribute of the last queued prompt.
    pub(crate) prompt_timeout: Option<u64>,
    /// See [`Config::trace`].
    pub(crate) tracing: bool,
    /// Whether the host does (blind, bridge) transfers.
    pub(crate) transfers: (bool, bool),
    /// A `bargein` attribute on a queued prompt (wins over the property).
    pub(crate) prompt_bargein: Option<bool>,
    /// Whether the last Play could be interrupted by keys.
    pub(crate) last_bargein: bool,
}

/// The dialog being run: a form, or a menu (one implicit item).
pub(crate) struct FormState {
    pub elem: Rc<Elem>,
    pub scope: Scope,
    pub items: Vec<Item>,
    pub prompt_counts: Vec<u32>,
    pub event_counts: HashMap<(Option<usize>, String), u32>,
    pub current: Option<usize>,
    pub next_item: Option<usize>,
}

pub(crate) struct Item {
    pub elem: Rc<Elem>,
    pub var: String,
}

/// What the interpreter waits for.
pub(crate) enum Wait {
    Nothing,
    Fetch(Fetching),
    Input(Collect),
    Record(usize),
    Transfer(Transferring),
    Done,
}

/// A bridge or consultation transfer in progress.
pub(crate) struct Transferring {
    pub(crate) item: usize,
    pub(crate) kind: TransferKind,
    /// The transfer's own grammars: a match ends the transfer (`near_end_disconnect`).
    pub(crate) grammars: Vec<Grammar>,
    pub(crate) buf: String,
    /// Interdigit timer of a match that could go on.
    pub(crate) deadline: Option<u64>,
    pub(crate) interdigit: u64,
    /// The keys that ended the transfer, once [`crate::Command::EndTransfer`] went out.
    pub(crate) hotword: Option<String>,
}

pub(crate) enum Fetching {
    /// A script or grammar a document or field needs before it can go on.
    Resource {
        url: String,
        resume: Box<crate::resources::Resume>,
    },
    Document {
        url: String,
        /// Fetched by `<submit>`: the target is always loaded afresh.
        submitted: bool,
    },
    /// The leaf was fetched and names an application root that is being fetched.
    Root {
        leaf_url: String,
        leaf: Rc<Elem>,
        root_url: String,
    },
}

/// DTMF collection for a field, initial or menu.
pub(crate) struct Collect {
    pub(crate) item: usize,
    pub(crate) grammars: Vec<Grammar>,
    /// `grammars[form_base..link_base]` are the form's own (mixed initiative).
    pub(crate) form_base: usize,
    /// `grammars[link_base..]` belong to `links`, in order.
    pub(crate) link_base: usize,
    pub(crate) links: Vec<Rc<Elem>>,
    pub(crate) buf: String,
    pub(crate) deadline: Option<u64>,
    pub(crate) timeout: u64,
    pub(crate) interdigit: u64,
    pub(crate) termtimeout: u64,
    pub(crate) termchar: Option<char>,
    /// Prompts are still playing (no PromptsDone yet).
    pub(crate) playing: bool,
    /// Keys may interrupt the prompts; if not, keys pressed while they play are dropped.
    pub(crate) bargein: bool,
}

/// The grammars listening in a field (see `Collect` for the ranges).
struct Active {
    grammars: Vec<Grammar>,
    form_base: usize,
    link_base: usize,
    links: Vec<Rc<Elem>>,
}

/// The next thing the FIA does.
pub(crate) enum Step {
    Select,
    Jump(Jump),
    Wait,
}

/// The combined result of all active grammars on the digits so far.
pub(crate) enum Eval {
    Dead,
    Prefix,
    Complete {
        grammar: usize,
        value: Json,
        more: bool,
    },
}

impl Interpreter {
    /// Creates the interpreter and queues the fetch of the first document.
    pub fn new(config: Config) -> Result<Interpreter, EcmaError> {
        let engine = Engine::new(config.limits.clone())?;
        let session_scope = engine.new_scope(None)?;
        engine.alias_scope(session_scope, "session")?;
        engine.alias_scope(session_scope, exec::SELF)?;
        if let Json::Object(m) = &config.session {
            for (k, v) in m {
                engine.declare_in_scope(session_scope, k, Some(v))?;
            }
        }
        let app_scope = new_named_scope(&engine, session_scope, "application")?;
        let doc_scope = new_named_scope(&engine, app_scope, "document")?;
        let mut vx = Interpreter {
            engine,
            cmds: VecDeque::new(),
            prompts: Vec::new(),
            now: 0,
            app_scope,
            doc_scope,
            session_scope,
            app_url: None,
            app_root: None,
            doc_url: config.url.clone(),
            doc_root: None,
            form: None,
            wait: Wait::Nothing,
            done: false,
            hung_up: false,
            resources: HashMap::new(),
            stack: Vec::new(),
            sub_params: None,
            reprompt: false,
            suppress_prompts: false,
            events_in_a_row: 0,
            typeahead: String::new(),
            prompt_timeout: None,
            tracing: config.trace,
            transfers: (config.blind_transfer, config.bridge_transfer),
            prompt_bargein: None,
            last_bargein: true,
        };
        vx.fetch(
            config.url,
            config.method,
            config.params,
            FetchOptions::default(),
        );
        Ok(vx)
    }

    /// The next command for the host.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.cmds.pop_front()
    }

    /// Whether the session has ended (after `Exit`).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// When [`Interpreter::handle_timeout`] must be called next.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.wait {
            Wait::Input(c) => c.deadline,
            Wait::Transfer(t) => t.deadline,
            _ => None,
        }
    }

    /// Fires a due timer (noinput, interdigit, termtimeout).
    pub fn handle_timeout(&mut self, now: u64) {
        self.now = now;
        let due = matches!(self.next_deadline(), Some(d) if d <= now);
        if due {
            self.events_in_a_row = 0;
            let step = self.on_timeout();
            self.drive(step);
        }
    }

    /// Handles one input.
    pub fn handle(&mut self, input: Input, now: u64) {
        self.now = now;
        if self.done {
            return;
        }
        // The loop guard counts events between two inputs.
        self.events_in_a_row = 0;
        let step = match input {
            Input::DocumentFetched { url, result } => self.on_fetched(url, result),
            Input::PromptsDone => self.on_prompts_done(),
            Input::Dtmf(k) => self.on_dtmf(k),
            Input::RecordingDone {
                url,
                duration_ms,
                termchar,
            } => self.on_recording(url, duration_ms, termchar),
            Input::TransferResult {
                status,
                duration_ms,
            } => self.on_transfer(status, duration_ms),
            Input::Hangup => self.on_hangup(),
            Input::HangupDuringRecording {
                url,
                duration_ms,
                size,
            } => self.on_hangup_recording(url, duration_ms, size),
        };
        self.drive(step);
    }

    /// Runs the FIA until it has to wait.
    fn drive(&mut self, mut step: Step) {
        let mut steps = 0u32;
        loop {
            steps += 1;
            if steps > MAX_STEPS_WITHOUT_WAITING {
                // e.g. a block that goes to itself: no input, no fetch, no end.
                self.log_error("the application loops without waiting for anything");
                self.exit(Json::Null);
                return;
            }
            step = match step {
                Step::Wait => return,
                Step::Select => self.select(),
                Step::Jump(j) => self.jump(j),
            };
            if self.done {
                return;
            }
        }
    }

    fn jump(&mut self, j: Jump) -> Step {
        match j {
            Jump::Goto(url, options) => self.goto(url, *options),
            Jump::GotoItem(name) => self.goto_item(&name),
            Jump::Submit {
                url,
                method,
                params,
                options,
            } => {
                self.fetch(url, method, params, *options);
                if let Wait::Fetch(Fetching::Document { submitted, .. }) = &mut self.wait {
                    *submitted = true;
                }
                Step::Wait
            }
            Jump::Throw { event, message } => self.throw(&event, &message),
            Jump::Exit(values) => {
                self.exit(values);
                Step::Wait
            }
            Jump::Return { values, event } => self.return_from_subdialog(values, event),
            Jump::Disconnect(values) => {
                self.flush_prompts();
                self.cmds.push_back(Command::Hangup { values });
                self.hung_up = true;
                self.throw("connection.disconnect.hangup", "")
            }
        }
    }

    pub(crate) fn exit(&mut self, values: Json) {
        self.flush_prompts();
        self.cmds.push_back(Command::Exit { values });
        self.wait = Wait::Done;
        self.done = true;
    }

    /// Emits the queued prompts as one Play; returns whether there were any.
    fn flush_prompts(&mut self) -> bool {
        if self.prompts.is_empty() {
            return false;
        }
        let prompts = std::mem::take(&mut self.prompts);
        let bargein = match self.prompt_bargein.take() {
            Some(b) => b,
            None => self.prop(None, "bargein").as_deref() != Some("false"),
        };
        self.last_bargein = bargein;
        self.cmds.push_back(Command::Play { prompts, bargein });
        true
    }

    /// A step of the FIA for the per-call trace (see [`Config::trace`]).
    pub(crate) fn trace(&mut self, text: impl FnOnce() -> String) {
        if self.tracing {
            self.cmds.push_back(Command::Log {
                label: Some("fia".into()),
                text: text(),
            });
        }
    }

    pub(crate) fn fetch(
        &mut self,
        url: String,
        method: Method,
        params: Vec<(String, String)>,
        options: FetchOptions,
    ) {
        self.trace(|| format!("fetch {url}"));
        self.flush_prompts();
        self.cmds.push_back(Command::Fetch {
            url: url.clone(),
            method,
            params,
            options,
        });
        self.wait = Wait::Fetch(Fetching::Document {
            url,
            submitted: false,
        });
    }

    // ---- documents ----

    /// `#id` moves within the current document; any other URL (even the current document's
    /// own) loads the document again.
    fn goto(&mut self, url: String, options: FetchOptions) -> Step {
        if let Some(id) = url.strip_prefix('#') {
            return self.start_dialog_by_id(Some(id));
        }
        self.fetch(url, Method::Get, Vec::new(), options);
        Step::Wait
    }

    fn on_fetched(&mut self, _url: String, result: Result<String, FetchError>) -> Step {
        let fetching = match std::mem::replace(&mut self.wait, Wait::Nothing) {
            Wait::Fetch(f) => f,
            other => {
                // Not waiting for a document: a stray answer is dropped.
                self.wait = other;
                return Step::Wait;
            }
        };
        if let Fetching::Resource { url, resume } = fetching {
            let r = result.map_err(|e| fetch_reason(&e));
            return self.resource_fetched(url, r, *resume);
        }
        let text = match result {
            Ok(t) => t,
            Err(e) => {
                // VoiceXML 2.1 names the HTTP status: error.badfetch.http.404
                let event = match e.status {
                    Some(s) => format!("error.badfetch.http.{s}"),
                    None => "error.badfetch".to_string(),
                };
                return self.fetch_failed(&event, &fetch_reason(&e));
            }
        };
        let root = match parse_vxml(&text) {
            Ok(r) => r,
            Err(m) => return self.fetch_failed("error.badfetch", &m),
        };
        self.process_document(fetching, root)
    }

    /// A parsed document: once its scripts and grammars are fetched, load it.
    pub(crate) fn process_document(&mut self, fetching: Fetching, root: Rc<Elem>) -> Step {
        let base = match &fetching {
            Fetching::Document { url, .. } => url.clone(),
            Fetching::Root { root_url, .. } => root_url.clone(),
            Fetching::Resource { .. } => return Step::Wait,
        };
        if let Some((src, options)) = self.missing_resource(&root, &root, &base) {
            let resume = crate::resources::Resume::Document(fetching, root);
            return self.fetch_resource(src, options, resume);
        }
        match fetching {
            Fetching::Resource { .. } => Step::Wait,
            Fetching::Document { url, submitted } => {
                let doc_part = dom::split_fragment(&url).0;
                if !submitted
                    && self.app_url.as_deref() == Some(doc_part)
                    && root.attr("application").is_none()
                {
                    // Going to the application root itself: its variables live on in the
                    // application scope, which is not initialized again (VoiceXML 2.0 §1.5.2).
                    return self.enter_document(url, root, false);
                }
                self.document_fetched(url, root)
            }
            Fetching::Root {
                leaf_url,
                leaf,
                root_url,
            } => {
                if let Err(j) = self.load_root(root_url, root) {
                    return Step::Jump(j);
                }
                self.load_document(leaf_url, leaf)
            }
        }
    }

    /// A leaf arrived: fetch its application root first when it names a new one.
    pub(crate) fn document_fetched(&mut self, url: String, root: Rc<Elem>) -> Step {
        let app = root.attr("application").map(|a| dom::resolve(&url, a));
        let app_doc = app.as_deref().map(|a| dom::split_fragment(a).0.to_string());
        if app_doc.is_some() && app_doc != self.app_url {
            let root_url = app_doc.unwrap_or_default();
            self.flush_prompts();
            // The leaf's properties say how its root is fetched.
            let options = self.fetch_options(None, Kind::Document, Props::Loading(&root, &url));
            self.cmds.push_back(Command::Fetch {
                url: root_url.clone(),
                method: Method::Get,
                params: Vec::new(),
                options,
            });
            self.wait = Wait::Fetch(Fetching::Root {
                leaf_url: url,
                leaf: root,
                root_url,
            });
            return Step::Wait;
        }
        if app_doc.is_none() && self.app_url.is_some() {
            // Leaving the application: its variables go.
            if let Err(j) = self.reset_app_scope() {
                return Step::Jump(j);
            }
        }
        self.load_document(url, root)
    }

    pub(crate) fn reset_app_scope(&mut self) -> Result<(), Jump> {
        self.engine.drop_scope(self.app_scope);
        self.app_scope = new_named_scope(&self.engine, self.session_scope, "application")
            .map_err(exec::semantic)?;
        self.app_url = None;
        self.app_root = None;
        Ok(())
    }

    /// A new application root: fresh application scope with the root's variables and scripts.
    fn load_root(&mut self, url: String, root: Rc<Elem>) -> Result<(), Jump> {
        self.reset_app_scope()?;
        self.app_url = Some(url);
        self.app_root = Some(root.clone());
        let scope = self.app_scope;
        self.init_vars(&root, scope)
    }

    /// Runs the `<var>` and `<script>` children of `e` in `scope`, in document order.
    fn init_vars(&mut self, e: &Elem, scope: Scope) -> Result<(), Jump> {
        for c in e.elems() {
            match c.name.as_str() {
                "var" => self.exec_var(c, scope)?,
                "script" => self.exec_script(c, scope)?,
                _ => {}
            }
        }
        Ok(())
    }

    pub(crate) fn load_document(&mut self, url: String, root: Rc<Elem>) -> Step {
        self.enter_document(url, root, true)
    }

    /// Makes `root` the current document (with a fresh document scope) and starts its dialog;
    /// `init` runs its variables and scripts.
    fn enter_document(&mut self, url: String, root: Rc<Elem>, init: bool) -> Step {
        self.trace(|| format!("document {url}"));
        self.leave_form();
        self.engine.drop_scope(self.doc_scope);
        self.doc_scope = match new_named_scope(&self.engine, self.app_scope, "document") {
            Ok(s) => s,
            Err(e) => return Step::Jump(exec::semantic(e)),
        };
        let frag = dom::split_fragment(&url).1.map(str::to_string);
        self.doc_url = url;
        self.doc_root = Some(root.clone());
        let scope = self.doc_scope;
        if init {
            if let Err(j) = self.init_vars(&root, scope) {
                return Step::Jump(j);
            }
        }
        self.start_dialog_by_id(frag.as_deref())
    }

    pub(crate) fn leave_form(&mut self) {
        if let Some(f) = self.form.take() {
            self.engine.drop_scope(f.scope);
        }
    }

    fn start_dialog_by_id(&mut self, id: Option<&str>) -> Step {
        let Some(root) = self.doc_root.clone() else {
            return self.throw("error.badfetch", "no document");
        };
        let mut dialogs = root
            .elems()
            .filter(|e| e.name == "form" || e.name == "menu");
        let found = match id {
            Some(id) => dialogs.find(|e| e.attr("id") == Some(id)),
            None => dialogs.next(),
        };
        match found {
            Some(d) => self.start_dialog(d.clone()),
            None if id.is_some() => self.throw("error.badfetch", "no dialog with that id"),
            None => {
                // A document without dialogs ends the session.
                self.exit(Json::Null);
                Step::Wait
            }
        }
    }

    // ---- dialogs ----

    fn start_dialog(&mut self, elem: Rc<Elem>) -> Step {
        self.trace(|| {
            let id = elem.attr("id").unwrap_or("(anonymous)");
            format!("{} {id}", elem.name)
        });
        self.leave_form();
        let scope = match new_named_scope(&self.engine, self.doc_scope, "dialog") {
            Ok(s) => s,
            Err(e) => return Step::Jump(exec::semantic(e)),
        };
        let items = dialog_items(&elem);
        self.form = Some(FormState {
            elem: elem.clone(),
            scope,
            prompt_counts: vec![0; items.len()],
            items,
            event_counts: HashMap::new(),
            current: None,
            next_item: None,
        });
        self.suppress_prompts = false;
        match self.init_dialog(&elem, scope) {
            Ok(()) => Step::Select,
            Err(j) => Step::Jump(j),
        }
    }

    /// Declares the form's variables and item guards, runs its scripts, in document order.
    fn init_dialog(&mut self, elem: &Elem, scope: Scope) -> Result<(), Jump> {
        let params = self.sub_params.take().unwrap_or_default();
        let items: Vec<(String, Rc<Elem>)> = match &self.form {
            Some(f) => f
                .items
                .iter()
                .map(|i| (i.var.clone(), i.elem.clone()))
                .collect(),
            None => Vec::new(),
        };
        for c in elem.elems() {
            let param = c
                .attr("name")
                .and_then(|n| params.iter().find(|(p, _)| p == n));
            match (c.name.as_str(), param) {
                // A subdialog's <param> replaces the initial value of the <var> it names.
                ("var", Some((n, v))) => self.declare(scope, n, Some(v))?,
                ("var", None) => self.exec_var(c, scope)?,
                ("script", _) => self.exec_script(c, scope)?,
                _ => {}
            }
            if let Some((var, _)) = items.iter().find(|(_, e)| Rc::ptr_eq(e, c)) {
                let value = match c.attr("expr") {
                    Some(x) => self.eval(scope, x)?,
                    None => None,
                };
                self.declare(scope, var, value.as_ref())?;
            }
        }
        if elem.name == "menu" {
            self.declare(scope, exec::MENU_VAR, None)?;
        }
        Ok(())
    }

    /// FIA select phase: the forced item, or the first with an undefined guard and a true cond.
    fn select(&mut self) -> Step {
        let Some(form) = &mut self.form else {
            self.exit(Json::Null);
            return Step::Wait;
        };
        if let Some(i) = form.next_item.take() {
            return self.collect(i);
        }
        let scope = form.scope;
        let cands: Vec<(usize, String, Option<String>)> = form
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (i, it.var.clone(), it.elem.attr("cond").map(str::to_string)))
            .collect();
        for (i, var, cond) in cands {
            let free = self.guard_free(scope, &var);
            match free {
                Ok(false) => continue,
                Ok(true) => {}
                Err(j) => return Step::Jump(j),
            }
            match cond.map(|c| self.cond(scope, &c)).unwrap_or(Ok(true)) {
                Ok(true) => return self.collect(i),
                Ok(false) => {}
                Err(j) => return Step::Jump(j),
            }
        }
        // Every item is filled: the form is done and, with nowhere to go, so is the session.
        self.exit(Json::Null);
        Step::Wait
    }

    pub(crate) fn guard_free(&self, scope: Scope, var: &str) -> Result<bool, Jump> {
        let code = format!("{}[{}] === undefined", exec::SELF, Json::String(var.into()));
        self.cond(scope, &code)
    }

    fn goto_item(&mut self, name: &str) -> Step {
        let idx = self
            .form
            .as_ref()
            .and_then(|f| f.items.iter().position(|i| i.var == name));
        match (idx, self.form.as_mut()) {
            (Some(i), Some(f)) => {
                f.next_item = Some(i);
                Step::Select
            }
            _ => self.throw("error.badfetch", &format!("no form item {name}")),
        }
    }

    /// FIA collect phase for item `i`.
    pub(crate) fn collect(&mut self, i: usize) -> Step {
        let Some(form) = self.form.as_mut() else {
            return Step::Wait;
        };
        form.current = Some(i);
        form.prompt_counts[i] = form.prompt_counts[i].saturating_add(1);
        let item = form.items[i].elem.clone();
        let var = form.items[i].var.clone();
        let scope = form.scope;
        self.trace(|| format!("collect <{}> {var}", item.name));
        if self.hung_up {
            self.exit(Json::Null);
            return Step::Wait;
        }
        match self.missing_expr_resource(&item) {
            Ok(Some((url, options))) => {
                return self.fetch_resource(url, options, crate::resources::Resume::Collect(i))
            }
            Ok(None) => {}
            Err(j) => return Step::Jump(j),
        }
        match item.name.as_str() {
            "block" => self.run_block(&item, &var, scope),
            "field" | "initial" | "menu" => self.start_listen(i, &item),
            "record" => self.start_record(i, &item),
            "transfer" => self.start_transfer(i, &item),
            "subdialog" => self.start_subdialog(i, &item, scope),
            _ => self.throw("error.unsupported.objectname", "object not supported"),
        }
    }

    fn run_block(&mut self, item: &Elem, var: &str, scope: Scope) -> Step {
        if let Err(j) = self.declare(scope, var, Some(&Json::Bool(true))) {
            return Step::Jump(j);
        }
        match self.exec_in_anon(&item.kids, scope, &[]) {
            Ok(()) => Step::Select,
            Err(j) => Step::Jump(j),
        }
    }

    /// Queues the item's prompts selected by its prompt counter (VoiceXML 2.0 §4.1.6).
    fn queue_item_prompts(&mut self, i: usize, item: &Elem) -> Result<(), Jump> {
        if std::mem::take(&mut self.suppress_prompts) {
            return Ok(());
        }
        let Some(form) = &self.form else {
            return Ok(());
        };
        let (count, scope) = (form.prompt_counts[i], form.scope);
        let mut chosen: Vec<(u32, Rc<Elem>)> = Vec::new();
        for p in item.children("prompt") {
            let c: u32 = p.attr("count").and_then(|c| c.parse().ok()).unwrap_or(1);
            let ok = match p.attr("cond") {
                Some(x) => self.cond(scope, x)?,
                None => true,
            };
            if ok && c <= count {
                chosen.push((c, p.clone()));
            }
        }
        let best = chosen.iter().map(|(c, _)| *c).max().unwrap_or(0);
        for (c, p) in chosen {
            if c == best {
                self.queue_prompt(&p, scope)?;
            }
        }
        Ok(())
    }

    fn start_listen(&mut self, i: usize, item: &Rc<Elem>) -> Step {
        if let Err(j) = self.queue_item_prompts(i, item) {
            return Step::Jump(j);
        }
        let active = match self.active_grammars(item) {
            Ok(a) => a,
            Err(j) => return Step::Jump(j),
        };
        let Active {
            grammars,
            form_base,
            link_base,
            links,
        } = active;
        let (timeout, interdigit, termtimeout, termchar) = self.listen_props(item);
        let played = self.flush_prompts();
        self.cmds.push_back(Command::Listen {
            grammars: grammars.iter().map(Grammar::describe).collect(),
            timeout_ms: timeout,
            interdigit_ms: interdigit,
            termtimeout_ms: termtimeout,
            termchar,
        });
        self.events_in_a_row = 0;
        // The noinput timer starts when the prompts have been played.
        let deadline = (!played).then_some(self.now.saturating_add(timeout));
        self.wait = Wait::Input(Collect {
            item: i,
            grammars,
            form_base,
            link_base,
            links,
            buf: String::new(),
            deadline,
            timeout,
            interdigit,
            termtimeout,
            termchar,
            playing: played,
            bargein: self.last_bargein,
        });
        self.replay_typeahead()
    }

    /// The item's grammars, then the form's (unless the item is modal), then the links', with
    /// where the form's and the links' start.
    fn active_grammars(&mut self, item: &Elem) -> Result<Active, Jump> {
        let mut grammars = self.item_grammars(item)?;
        let form_base = grammars.len();
        let form = self.form.as_ref().map(|f| f.elem.clone());
        if let Some(felem) = form.filter(|f| f.name == "form") {
            // Mixed initiative: the form's grammars listen in every non-modal field.
            if item.name == "initial" || item.attr("modal") != Some("true") {
                grammars.extend(self.grammar_children(&felem)?);
            }
        }
        let link_base = grammars.len();
        let mut links = self.link_grammars(item, &mut grammars)?;
        // `inputmodes` without dtmf: keys match nothing (and end as nomatch).
        if let Some(modes) = self.prop(Some(item), "inputmodes") {
            if !modes.split_whitespace().any(|m| m == "dtmf") {
                grammars.clear();
                links.clear();
                return Ok(Active {
                    grammars,
                    form_base: 0,
                    link_base: 0,
                    links,
                });
            }
        }
        Ok(Active {
            grammars,
            form_base,
            link_base,
            links,
        })
    }

    /// timeout (a queued prompt's own wins over the property), interdigittimeout,
    /// termtimeout and termchar for an item.
    fn listen_props(&mut self, item: &Elem) -> (u64, u64, u64, Option<char>) {
        let ms = |s: Option<String>, d: u64| s.and_then(|v| parse_time(&v)).unwrap_or(d);
        let timeout = match self.prompt_timeout.take() {
            Some(t) => t,
            None => ms(self.prop(Some(item), "timeout"), 5000),
        };
        let interdigit = ms(self.prop(Some(item), "interdigittimeout"), 3000);
        let termtimeout = ms(self.prop(Some(item), "termtimeout"), 0);
        let termchar = match self.prop(Some(item), "termchar") {
            Some(t) => t.chars().next(),
            None => Some('#'),
        };
        (timeout, interdigit, termtimeout, termchar)
    }

    /// The DTMF grammars among the `<grammar>` children of an item or a form.
    fn grammar_children(&self, source: &Elem) -> Result<Vec<Grammar>, Jump> {
        let mut out = Vec::new();
        for g in source.children("grammar") {
            if let Some(src) = g.attr("src").filter(|s| s.starts_with("builtin:")) {
                // Only the DTMF builtins apply to key presses.
                if src.starts_with("builtin:dtmf/") {
                    out.extend(Grammar::builtin(src));
                }
                continue;
            }
            let g = self.grammar_element(g)?;
            if let Some(c) = Grammar::srgs(&g).map_err(|m| exec::throw("error.badfetch", &m))? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The DTMF grammars active for an item.
    fn item_grammars(&mut self, item: &Elem) -> Result<Vec<Grammar>, Jump> {
        if item.name == "menu" {
            return Ok(menu_grammars(item));
        }
        let mut out = Vec::new();
        if let Some(t) = item.attr("type") {
            match Grammar::builtin(t) {
                Some(g) => out.push(g),
                None => return Err(exec::throw("error.unsupported.builtin", t)),
            }
        }
        out.extend(self.grammar_children(item)?);
        for (n, o) in item.children("option").enumerate() {
            let value = o
                .attr("value")
                .map(str::to_string)
                .unwrap_or_else(|| o.text().trim().to_string());
            let keys = o.attr("dtmf").map(str::to_string);
            let keys = keys.unwrap_or_else(|| (n + 1).to_string());
            out.push(Grammar::Sequence {
                keys,
                value: Json::String(value),
            });
        }
        Ok(out)
    }

    fn start_record(&mut self, i: usize, item: &Rc<Elem>) -> Step {
        if let Err(j) = self.queue_item_prompts(i, item) {
            return Step::Jump(j);
        }
        let ms = |a: Option<&str>, d| a.and_then(parse_time).unwrap_or(d);
        let cmd = Command::Record {
            beep: item.attr("beep") == Some("true"),
            maxtime_ms: ms(item.attr("maxtime"), 60_000),
            finalsilence_ms: ms(item.attr("finalsilence"), 3_000),
            dtmfterm: item.attr("dtmfterm") != Some("false"),
            mime: item.attr("type").unwrap_or("audio/x-wav").to_string(),
        };
        self.flush_prompts();
        self.cmds.push_back(cmd);
        self.wait = Wait::Record(i);
        Step::Wait
    }

    fn start_transfer(&mut self, i: usize, item: &Rc<Elem>) -> Step {
        if let Err(j) = self.queue_item_prompts(i, item) {
            return Step::Jump(j);
        }
        let scope = self
            .form
            .as_ref()
            .map(|f| f.scope)
            .unwrap_or(self.doc_scope);
        let dest = match (item.attr("dest"), item.attr("destexpr")) {
            (Some(d), _) => Ok(d.to_string()),
            (None, Some(x)) => self.string(scope, x),
            (None, None) => Err(exec::throw("error.badfetch", "transfer without dest")),
        };
        let dest = match dest {
            Ok(d) => d,
            Err(j) => return Step::Jump(j),
        };
        let ms = |a: Option<&str>, d| a.and_then(parse_time).unwrap_or(d);
        // VoiceXML 2.1 `type` wins over 2.0 `bridge` (whose default is false: blind).
        let kind = match (item.attr("type"), item.attr("bridge")) {
            (Some("bridge"), _) => TransferKind::Bridge,
            (Some("consultation"), _) => TransferKind::Consultation,
            (Some("blind"), _) => TransferKind::Blind,
            (Some(other), _) => {
                return Step::Jump(exec::throw(
                    "error.badfetch",
                    &format!("transfer type {other:?}"),
                ))
            }
            (None, Some("true")) => TransferKind::Bridge,
            (None, _) => TransferKind::Blind,
        };
        let aai = match (item.attr("aai"), item.attr("aaiexpr")) {
            (Some(a), _) => Some(a.to_string()),
            (None, Some(x)) => match self.string(scope, x) {
                Ok(a) => Some(a),
                Err(j) => return Step::Jump(j),
            },
            (None, None) => None,
        };
        let blind = kind == TransferKind::Blind;
        if (blind && !self.transfers.0) || (!blind && !self.transfers.1) {
            let kind = if blind { "blind" } else { "bridge" };
            return Step::Jump(exec::throw(
                &format!("error.unsupported.transfer.{kind}"),
                "this platform does not transfer calls",
            ));
        }
        let grammars = if blind {
            Vec::new()
        } else {
            // `type` names the transfer kind here, not a builtin grammar.
            match self.grammar_children(item) {
                Ok(g) => g,
                Err(j) => return Step::Jump(j),
            }
        };
        let (_, interdigit, _, _) = self.listen_props(item);
        let cmd = Command::Transfer {
            dest,
            kind,
            connect_timeout_ms: ms(item.attr("connecttimeout"), 30_000),
            maxtime_ms: ms(item.attr("maxtime"), 0),
            transfer_audio: item.attr("transferaudio").map(str::to_string),
            aai,
            grammars: grammars.iter().map(Grammar::describe).collect(),
        };
        self.flush_prompts();
        self.cmds.push_back(cmd);
        if blind {
            // A blind transfer hands the caller over: the session is disconnected from it
            // (VoiceXML 2.0 §2.3.7.1) and no result comes back.
            self.hung_up = true;
            return self.throw("connection.disconnect.transfer", "");
        }
        self.events_in_a_row = 0;
        self.wait = Wait::Transfer(Transferring {
            item: i,
            kind,
            grammars,
            buf: String::new(),
            deadline: None,
            interdigit,
            hotword: None,
        });
        Step::Wait
    }

    // ---- properties ----

    /// A property from the item outwards to the application root.
    pub(crate) fn prop(&self, item: Option<&Elem>, name: &str) -> Option<String> {
        let form = self.form.as_ref().map(|f| f.elem.clone());
        let levels = item
            .into_iter()
            .chain(form.as_deref())
            .chain(self.doc_root.as_deref())
            .chain(self.app_root.as_deref());
        for l in levels {
            let v = l
                .children("property")
                .filter(|p| p.attr("name") == Some(name))
                .filter_map(|p| p.attr("value"))
                .last();
            if let Some(v) = v {
                return Some(v.to_string());
            }
        }
        None
    }
}

pub(crate) fn new_named_scope(
    engine: &Engine,
    parent: Scope,
    name: &str,
) -> Result<Scope, EcmaError> {
    let s = engine.new_scope(Some(parent))?;
    engine.alias_scope(s, name)?;
    engine.alias_scope(s, exec::SELF)?;
    Ok(s)
}

fn fetch_reason(e: &FetchError) -> String {
    match e.status {
        Some(s) => format!("HTTP {s}: {}", e.reason),
        None => e.reason.clone(),
    }
}

fn parse_vxml(text: &str) -> Result<Rc<Elem>, String> {
    let root = dom::parse(text)?;
    if root.name != "vxml" {
        return Err(format!("root element is <{}>, not <vxml>", root.name));
    }
    crate::validate::validate(&root)?;
    Ok(root)
}

/// The form items of a dialog with their guard variable names (generated when unnamed).
fn dialog_items(elem: &Rc<Elem>) -> Vec<Item> {
    if elem.name == "menu" {
        return vec![Item {
            elem: elem.clone(),
            var: exec::MENU_VAR.to_string(),
        }];
    }
    elem.elems()
        .filter(|e| FORM_ITEMS.contains(&e.name.as_str()))
        .enumerate()
        .map(|(n, e)| Item {
            elem: e.clone(),
            var: e
                .attr("name")
                .map(str::to_string)
                .unwrap_or_else(|| format!("__vx_item{n}")),
        })
        .collect()
}

/// A menu's choices as DTMF sequences (`dtmf="true"` numbers the unnumbered ones 1..9).
fn menu_grammars(menu: &Elem) -> Vec<Grammar> {
    choice_keys(menu)
        .into_iter()
        .enumerate()
        .map(|(n, keys)| Grammar::Sequence {
            // A speech-only choice cannot be selected by keys.
            keys: keys.unwrap_or_else(|| String::from("\u{0}")),
            value: json!(n),
        })
        .collect()
}

/// The keys of each `<choice>` of a menu: its `dtmf`, or 1..9 in order when the menu has
/// `dtmf="true"`.
pub(crate) fn choice_keys(menu: &Elem) -> Vec<Option<String>> {
    let auto = menu.attr("dtmf") == Some("true");
    let mut next = 1;
    let mut out = Vec::new();
    for c in menu.children("choice") {
        out.push(match c.attr("dtmf") {
            Some(k) => Some(k.replace(' ', "")),
            None if auto && next <= 9 => {
                next += 1;
                Some((next - 1).to_string())
            }
            None => None,
        });
    }
    out
}

/// CSS2 times: `5s`, `250ms`, `1.5s`; a bare number is milliseconds.
pub(crate) fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    (v >= 0.0).then_some((v * mult) as u64)
}
