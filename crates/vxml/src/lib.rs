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
mod fetchopts;
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
    /// The answer to a [`Command::Transfer`]: `busy`, `noanswer`, `network_busy`,
    /// `near_end_disconnect`, `far_end_disconnect`, `maxtime_disconnect`,
    /// `network_disconnect`, `unknown` (VoiceXML 2.0 §2.3.7.2.2), or for a consultation
    /// transfer `transferred` once the caller has been handed over (the interpreter then
    /// throws `connection.disconnect.transfer`). A status starting with `error.` (e.g.
    /// `error.connection.baddestination`) is thrown as that event instead of filling the
    /// item. When the caller hangs up during the transfer, send [`Input::Hangup`]: the item
    /// stays unfilled and `connection.disconnect.hangup` is thrown.
    TransferResult {
        status: String,
        /// How long the bridged call lasted.
        duration_ms: u64,
    },
    /// The caller hung up.
    Hangup,
    /// The caller hung up while a [`Command::Record`] was recording (VoiceXML 2.0 §2.3.6):
    /// the recording ends, the `<record>` item's variable gets `url` (with `name$.duration`,
    /// `name$.size`, `name$.termchar` null and `name$.maxtime` false) without running its
    /// `<filled>`, and `connection.disconnect.hangup` is thrown, so that the handler may
    /// submit it. With `url` `None` (nothing recorded) it is [`Input::Hangup`]. Sent instead
    /// of both [`Input::RecordingDone`] and [`Input::Hangup`].
    HangupDuringRecording {
        url: Option<String>,
        duration_ms: u64,
        /// The recording's size in bytes.
        size: u64,
    },
}

/// The kind of a `<transfer>` (VoiceXML 2.0 `bridge`, VoiceXML 2.1 `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferKind {
    /// The caller is handed over and the session leaves the call.
    Blind,
    /// The platform calls the far end, connects the two and the application goes on when
    /// the far end's call ends.
    Bridge,
    /// Like a bridge until the far end answers, then the caller is handed over (like a
    /// blind transfer); the application only hears of failures to connect.
    Consultation,
}

impl TransferKind {
    /// A short name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::Blind => "blind",
            TransferKind::Bridge => "bridge",
            TransferKind::Consultation => "consultation",
        }
    }
}

/// The result of a bridge or consultation transfer whose outgoing call ended with SIP
/// status `status` before it was answered (VoiceXML 2.0 §2.3.7.2.2): `busy` for 486 and
/// 600, `noanswer` for 408 and 480 (and the platform's own `connecttimeout`),
/// `network_busy` for the network's refusals (503, 502, 504, 403, 404, 484, 485, 488,
/// 500, 603 and any other 5xx), `unknown` otherwise.
pub fn transfer_failure(status: u16) -> &'static str {
    match status {
        486 | 600 => "busy",
        408 | 480 | 487 => "noanswer",
        403 | 404 | 410 | 484 | 485 | 488 | 603 | 500..=599 => "network_busy",
        _ => "unknown",
    }
}

/// The result of a bridge or consultation transfer's outgoing call (VoiceXML 2.0 §2.3.7.2.2),
/// decided from what happens to it. When the platform ends the call itself (`maxtime`, a
/// grammar match, a refused hand-over, a bridge it could not set up), the first such reason is
/// the result, whatever the far end's answer to our hang-up says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferOutcome {
    ending_as: Option<&'static str>,
}

impl TransferOutcome {
    /// The platform ends the call for `reason`; a reason given earlier stands.
    pub fn end_as(&mut self, reason: &'static str) {
        self.ending_as.get_or_insert(reason);
    }

    /// Whether the platform is ending the call already.
    pub fn ending(&self) -> bool {
        self.ending_as.is_some()
    }

    /// The call failed with final `status` before it was answered.
    pub fn failed(&self, status: u16) -> &'static str {
        self.ending_as.unwrap_or_else(|| transfer_failure(status))
    }

    /// The answered call ended: hung up by the far end, or lost.
    pub fn ended(&self, by_far_end: bool) -> &'static str {
        match self.ending_as {
            Some(r) => r,
            None if by_far_end => "far_end_disconnect",
            None => "network_disconnect",
        }
    }
}

/// HTTP method of a fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// How a fetch is done (VoiceXML 2.0 §6.1): from the attributes of the element that causes
/// it (`fetchtimeout`, `maxage`, `maxstale`, `fetchaudio`), else from the properties in
/// effect (`fetchtimeout`, `documentmaxage`/`documentmaxstale`, `scriptmaxage`, `datamaxage`,
/// `grammarmaxage` and their `maxstale`s, `fetchaudio`, `fetchaudiodelay`,
/// `fetchaudiominimum`). `None` leaves the choice to the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// How long the fetch may take before it fails (error.badfetch), ms.
    pub timeout_ms: Option<u64>,
    /// The oldest cached copy acceptable, seconds (0: fetch afresh).
    pub maxage_s: Option<u64>,
    /// How long past its expiry a cached copy may still be used, seconds.
    pub maxstale_s: Option<u64>,
    /// Audio to play while a document or `<data>` is fetched.
    pub fetch_audio: Option<FetchAudio>,
    /// `<submit method="post" enctype="multipart/form-data">`: the namelist goes as a
    /// `multipart/form-data` body (RFC 7578), in which the host sends the audio of a
    /// recording it made (a value that is a recording's URL) as a file part.
    pub multipart: bool,
}

/// `fetchaudio` (VoiceXML 2.0 §6.1.1): played to the caller once the queued prompts have
/// played and the fetch has taken `delay_ms`; once started it plays for at least
/// `minimum_ms` (the fetched document waits for that), and stops when the fetch is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchAudio {
    /// The audio's absolute URL.
    pub url: String,
    pub delay_ms: u64,
    pub minimum_ms: u64,
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
        /// `fetchtimeout`, `maxage`, `maxstale` and `fetchaudio` of this fetch.
        options: FetchOptions,
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
    /// Transfer the call; answer with [`Input::TransferResult`] (not for blind transfers:
    /// the interpreter has thrown `connection.disconnect.transfer` already).
    Transfer {
        dest: String,
        kind: TransferKind,
        /// `connecttimeout`: how long the far end may ring before the result is `noanswer`.
        connect_timeout_ms: u64,
        /// `maxtime`: how long a bridged call may last (`maxtime_disconnect`); 0 is no limit.
        maxtime_ms: u64,
        /// `transferaudio`: played to the caller while the far end rings.
        transfer_audio: Option<String>,
        /// `aai` / `aaiexpr`: application-to-application information for the far end.
        aai: Option<String>,
        /// The transfer's own DTMF grammars (descriptions): while they listen, a key that
        /// completes one ends the transfer ([`Command::EndTransfer`]).
        grammars: Vec<String>,
    },
    /// The caller matched a grammar of the running bridge or consultation transfer: end the
    /// outgoing call and answer the [`Command::Transfer`] with `near_end_disconnect`.
    EndTransfer,
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
