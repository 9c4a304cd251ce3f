//! A sans-I/O VoiceXML 2.1 interpreter: the Form Interpretation Algorithm (VoiceXML 2.0 §2.1.6
//! and Appendix C) driven by inputs, emitting commands. It owns no sockets and reads no clock:
//! the host passes `now` (milliseconds on any clock) and performs the commands.
//!
//! ```
//! use switchboard_vxml::{Command, Input, Interpreter, Config};
//! let mut vx = Interpreter::new(Config::new("http://app/start.vxml")).unwrap();
//! let Some(Command::Fetch { url, .. }) = vx.poll_command() else { panic!() };
//! let page = "<vxml version='2.1'><form><block>hi<exit/></block></form></vxml>";
//! vx.handle(Input::DocumentFetched { url, result: Ok(page.into()) }, 0);
//! assert!(matches!(vx.poll_command(), Some(Command::Play { .. })));
//! assert!(matches!(vx.poll_command(), Some(Command::Exit { .. })));
//! assert!(vx.is_done());
//! ```
//!
//! The host loop: feed [`Input`]s with [`Interpreter::handle`], drain [`Interpreter::poll_command`],
//! and when idle call [`Interpreter::handle_timeout`] at [`Interpreter::next_deadline`].
//!
//! Every fetch goes through the host ([`Command::Fetch`] answered by [`Input::DocumentFetched`]):
//! documents, application roots, and the scripts, grammars and `<data>` a document or item
//! needs, which are fetched before it runs. Bad pages and bad scripts become VoiceXML events
//! (error.badfetch, error.semantic) in that call; nothing from outside panics. An
//! `Interpreter` owns a QuickJS runtime (`switchboard-ecma`) and is not `Send`: run each call
//! on one thread.
//!
//! Modules: `interp` (state, documents, dialogs, the select and collect phases), `input` (DTMF,
//! timers, the process phase), `events` (catch selection and default handlers), `exec`
//! (executable content and prompts), `subdialog`, `resources` (fetch-ahead), `grammar` and
//! `abnf` (DTMF grammars), `validate` (load-time checks), `dom`, `script`.

mod abnf;
mod dom;
mod events;
mod exec;
mod grammar;
mod input;
mod interp;
mod resources;
mod script;
mod subdialog;
mod validate;

pub use interp::Interpreter;
pub use switchboard_ecma::{Json, Limits};

/// What starts an interpreter.
#[derive(Clone, Debug)]
pub struct Config {
    /// The first document's URL.
    pub url: String,
    /// How the first document is fetched (RFC 5552 `method` and `postbody`): GET by default.
    pub method: Method,
    pub params: Vec<(String, String)>,
    /// The `session` variables (e.g. `{"connection": {"remote": {"uri": ".."}}}`).
    pub session: Json,
    /// ECMAScript limits for this call.
    pub limits: Limits,
    /// Emit a `Log` labelled `fia` for each step (fetch, document, dialog, item, event) so
    /// that a host can keep a per-call trace.
    pub trace: bool,
    /// Whether the host can do blind and bridge `<transfer>`s. One it cannot do throws
    /// `error.unsupported.transfer.blind` (or `.bridge`) in the item instead of a
    /// [`Command::Transfer`].
    pub blind_transfer: bool,
    pub bridge_transfer: bool,
}

impl Config {
    /// A config with empty session variables and default limits.
    pub fn new(url: &str) -> Config {
        Config {
            url: url.to_string(),
            method: Method::Get,
            params: Vec::new(),
            session: Json::Object(Default::default()),
            limits: Limits::default(),
            trace: false,
            blind_transfer: true,
            bridge_transfer: true,
        }
    }
}

/// Why a fetch failed.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchError {
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// A human-readable reason.
    pub reason: String,
}

/// An input to the interpreter.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The answer to a [`Command::Fetch`].
    DocumentFetched {
        url: String,
        result: Result<String, FetchError>,
    },
    /// The prompts of the last [`Command::Play`] finished playing (starts the noinput timer).
    PromptsDone,
    /// A DTMF key: `0`-`9`, `*`, `#`, `A`-`D`.
    Dtmf(char),
    /// The answer to a [`Command::Record`].
    RecordingDone {
        /// Where the recording is stored (`None` when nothing was recorded).
        url: Option<String>,
        duration_ms: u64,
        /// The DTMF key that ended it, if any.
        termchar: Option<char>,
    },
    /// The answer to a [`Command::Transfer`]: `busy`, `noanswer`, `near_party_disconnect`, ...
    /// A status starting with `error.` (e.g. `error.unsupported.transfer.blind`) is thrown as
    /// that event instead of filling the item.
    TransferResult {
        status: String,
        /// How long the bridged call lasted.
        duration_ms: u64,
    },
    /// The caller hung up.
    Hangup,
}

/// HTTP method of a fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// One piece of a prompt.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptPart {
    /// Text for TTS.
    Text(String),
    /// An audio file; `fallback` is played when it cannot be.
    Audio {
        url: String,
        fallback: Vec<PromptPart>,
    },
    /// Silence.
    Break { ms: u64 },
}

/// A command for the host.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Fetch a document and answer with [`Input::DocumentFetched`].
    Fetch {
        url: String,
        method: Method,
        params: Vec<(String, String)>,
    },
    /// Play prompts (queued behind earlier ones); answer with [`Input::PromptsDone`] when a
    /// [`Command::Listen`] follows.
    Play {
        prompts: Vec<PromptPart>,
        bargein: bool,
    },
    /// Start collecting DTMF; the interpreter runs the timers itself.
    Listen {
        grammars: Vec<String>,
        timeout_ms: u64,
        interdigit_ms: u64,
        termtimeout_ms: u64,
        termchar: Option<char>,
    },
    /// Stop collecting DTMF (input was recognized or timed out).
    StopListening,
    /// Record the caller; answer with [`Input::RecordingDone`].
    Record {
        beep: bool,
        maxtime_ms: u64,
        finalsilence_ms: u64,
        dtmfterm: bool,
        mime: String,
    },
    /// Transfer the call; answer with [`Input::TransferResult`].
    Transfer {
        dest: String,
        bridge: bool,
        connect_timeout_ms: u64,
        maxtime_ms: u64,
    },
    /// Hang up the caller.
    Hangup {
        /// The `<disconnect namelist>` values (RFC 5552 reports them with the BYE), or null.
        values: Json,
    },
    /// The application ended; `values` is the `<exit>` namelist object or expression value.
    Exit { values: Json },
    /// A `<log>` (or an interpreter diagnostic, label `error`).
    Log { label: Option<String>, text: String },
}
