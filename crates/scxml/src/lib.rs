//! A sans-I/O SCXML 1.0 interpreter (W3C Recommendation, Appendix D algorithm) with the
//! ECMAScript data model (on `switchboard-ecma`), invoke of child SCXML sessions, the Basic HTTP
//! Event I/O Processor (protocol logic only), host extension elements and functions, and
//! snapshot/restore of a running session to bytes.
//!
//! # Driving a session
//! ```no_run
//! use switchboard_scxml::{Document, Environment, Session, Output};
//! let env = Environment::default();
//! let doc = Document::load("<scxml xmlns='http://www.w3.org/2005/07/scxml' version='1.0'><final id='f'/></scxml>", None, &env).unwrap();
//! let mut s = Session::new(doc, env.clone(), "session-1").unwrap();
//! let mut now = 0u64; // milliseconds, any epoch chosen by the host
//! s.run(now);
//! while let Some(out) = s.poll_output() {
//!     match out {
//!         Output::Done { .. } => {}
//!         _ => {}
//!     }
//! }
//! // when idle, sleep until s.next_deadline() and call s.run(deadline) again;
//! // feed outside events with s.push_event(..) and HTTP POSTs with s.handle_http(..).
//! let bytes = s.snapshot().unwrap();
//! let restored = Session::restore(&bytes, env).unwrap();
//! # let _ = (restored, now);
//! ```
//!
//! # Host integration (orchestrator)
//! - **Load**: [`Document::load`]`(source, base, &env)` parses and validates (DTDs refused,
//!   unknown target ids, unknown/mutually exclusive attributes, unregistered foreign-namespace
//!   elements and unfetchable `<script src>`/`<data src>` are [`LoadError`]s with a line).
//! - **Extensions**: [`Environment::register_element`] binds `{namespace}name` in executable
//!   content to an [`ExtensionElement`]; it can evaluate expressions, assign, raise events and
//!   emit [`Output::Extension`] (call-control commands). [`Environment::register_function`]
//!   exposes a host function (JSON in/out) to the data model, e.g. `sb.queueSize('sales')`.
//! - **Inputs**: [`Session::push_event`] (external events), [`Session::handle_http`] (a POST
//!   received by the host's Basic HTTP listener; `env.basichttp_location` is its URL),
//!   [`Session::http_send_failed`], and `now` in [`Session::run`] / [`Session::step`].
//! - **Outputs**: [`Session::poll_output`] gives [`Output::Log`], [`Output::HttpSend`] (the host
//!   POSTs it), [`Output::SendToSession`] (a `#_scxml_<id>` send to a session outside this tree;
//!   `env.session_exists` tells which ids are deliverable), [`Output::Extension`],
//!   [`Output::Error`] and finally [`Output::Done`]. [`Session::next_deadline`] is the next timer.
//! - **Failover**: [`Session::snapshot`] (self-contained) or [`Session::snapshot_compact`]
//!   (without the root document) after any `run`/`step`; [`Session::restore`] /
//!   [`Session::restore_with_document`] on another process with the same [`Environment`]. Drain
//!   outputs before snapshotting if they must not be emitted twice (undrained ones are kept).
//!
//! Invoked child sessions live inside their parent's `Session` and are stepped, timed and
//! snapshotted with it.
//!
//! Time is a `u64` of milliseconds on a clock chosen by the host (for snapshots that move between
//! processes, use wall-clock milliseconds since the UNIX epoch). The crate never reads a clock.
//! A `Session` is not `Send` (it owns a QuickJS runtime); run it on one thread and move it between
//! threads or processes as a snapshot.

mod http;
mod interp;
mod model;
mod snapshot;

pub use http::{form_decode, form_encode, HttpRequest};
pub use interp::{Event, EventKind, Output, Session};
pub use model::Document;
pub use snapshot::SnapshotError;
pub use switchboard_ecma::{Json, Limits};

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// The type URI of the SCXML Event I/O Processor.
pub const SCXML_IOPROCESSOR: &str = "http://www.w3.org/TR/scxml/#SCXMLEventProcessor";
/// The type URI of the Basic HTTP Event I/O Processor.
pub const BASICHTTP_IOPROCESSOR: &str = "http://www.w3.org/TR/scxml/#BasicHTTPEventProcessor";

/// A document failed to load: malformed XML, invalid structure, unknown target, bad attribute,
/// unknown foreign element, or an unfetchable `src`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LoadError {
    /// 1-based line in the document (0 when not tied to one element).
    pub line: u32,
    pub message: String,
}

/// Fetches documents and data named by `src` attributes (`<data src>`, `<script src>`,
/// `<invoke src>`). The host decides what is reachable; the interpreter does no I/O itself.
pub trait Fetcher: Send + Sync {
    /// Resolves `uri` against `base` and returns `(resolved uri, text)`.
    fn fetch(&self, base: Option<&str>, uri: &str) -> Result<(String, String), String>;
}

/// A host extension element in executable content, as parsed at load time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExtensionCall {
    pub namespace: String,
    pub name: String,
    /// Attributes (local names) with their raw values.
    pub attributes: Vec<(String, String)>,
    /// The element's first text child.
    pub text: String,
    /// The element's XML text.
    pub xml: String,
    pub line: u32,
}

impl ExtensionCall {
    /// The raw value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What an extension element can do while it runs.
pub trait ExtensionEnv {
    /// Evaluates an expression in the session's data model.
    fn eval(&mut self, expr: &str) -> Result<Option<Json>, String>;
    /// Assigns a JSON value to a location expression.
    fn assign(&mut self, location: &str, value: &Json) -> Result<(), String>;
    /// Raises an internal event.
    fn raise(&mut self, name: &str, data: Option<Json>);
    /// Emits an [`Output::Extension`] for the host (e.g. a call-control command).
    fn emit(&mut self, payload: Json);
    /// The session id.
    fn session_id(&self) -> &str;
}

/// The behaviour of a host extension element. An `Err` raises `error.execution` and stops the
/// enclosing block, like any executable content.
pub trait ExtensionElement: Send + Sync {
    fn execute(&self, call: &ExtensionCall, env: &mut dyn ExtensionEnv) -> Result<(), String>;
}

/// A host function callable from the data model.
pub type ExtensionFn = Arc<dyn Fn(&[Json]) -> Result<Json, String> + Send + Sync>;

/// Tells whether the host can deliver to a session id outside the session tree.
pub type SessionExists = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Everything a session gets from its host: fetcher, extension elements and functions, limits,
/// and the Basic HTTP location. Cheap to clone; pass the same one to [`Session::restore`].
#[derive(Clone, Default)]
pub struct Environment {
    fetcher: Option<Arc<dyn Fetcher>>,
    elements: HashMap<(String, String), Arc<dyn ExtensionElement>>,
    functions: Vec<(String, ExtensionFn)>,
    /// JavaScript limits per session.
    pub limits: Limits,
    /// The URL where the host receives Basic HTTP events for the root session
    /// (`_ioprocessors['basichttp'].location`); `None` disables the processor.
    pub basichttp_location: Option<String>,
    /// Ids of other sessions the host can deliver `#_scxml_<id>` sends to (besides the session
    /// tree itself).
    pub session_exists: Option<SessionExists>,
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Environment")
            .field("elements", &self.elements.keys().collect::<Vec<_>>())
            .field(
                "functions",
                &self.functions.iter().map(|f| &f.0).collect::<Vec<_>>(),
            )
            .field("basichttp_location", &self.basichttp_location)
            .finish()
    }
}

impl Environment {
    /// Sets the fetcher for `src` attributes.
    pub fn with_fetcher(mut self, f: Arc<dyn Fetcher>) -> Self {
        self.fetcher = Some(f);
        self
    }

    /// Registers an extension element `{namespace}name`. Documents that use an element in a
    /// foreign namespace that is not registered fail to load.
    pub fn register_element(&mut self, namespace: &str, name: &str, e: Arc<dyn ExtensionElement>) {
        self.elements
            .insert((namespace.to_string(), name.to_string()), e);
    }

    /// Registers a data-model function; `name` may be dotted (`sb.queueSize`).
    pub fn register_function(&mut self, name: &str, f: ExtensionFn) {
        self.functions.push((name.to_string(), f));
    }

    pub(crate) fn has_element(&self, ns: &str, name: &str) -> bool {
        self.elements
            .contains_key(&(ns.to_string(), name.to_string()))
    }

    pub(crate) fn element(&self, ns: &str, name: &str) -> Option<Arc<dyn ExtensionElement>> {
        self.elements
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    pub(crate) fn fetch(&self, base: Option<&str>, uri: &str) -> Result<(String, String), String> {
        match &self.fetcher {
            Some(f) => f.fetch(base, uri),
            None => Err("no fetcher configured".into()),
        }
    }
}
