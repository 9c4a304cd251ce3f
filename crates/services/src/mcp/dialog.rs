//! The seam for the VoiceXML browser (RFC 5552): a call to `sip:dialog@host;voicexml=<url>`
//! is handed to a [`DialogRunner`] once it is answered. The runner plays prompts and collects
//! DTMF on the call's stream through the media engine, and the call is hung up when the
//! returned future ends, with the dialog's results in the BYE. Without a runner such calls
//! get 488. The built-in runner is [`super::vxml::VxmlRunner`].

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard_media::{MediaEngine, MediaEventKind, PromptCache, StreamId};
use tokio::sync::mpsc::UnboundedReceiver;

use super::ua::{LegEvent, LegId};

/// Everything a dialog needs for one call.
pub struct DialogContext {
    /// The VoiceXML document to run (%-decoded from the Request-URI).
    pub url: String,
    pub call_id: String,
    /// The caller's address (From URI).
    pub caller: String,
    /// The RFC 5552 `session` variables read from the INVITE
    /// (see [`super::rfc5552::session_variables`]).
    pub session_vars: Value,
    /// The call's RTP stream: play, record and read DTMF on it.
    pub stream: StreamId,
    pub media: MediaEngine,
    pub prompts: Arc<PromptCache>,
    /// The stream's media events (DTMF, play and record completions), in order.
    pub events: UnboundedReceiver<MediaEventKind>,
    /// Where recordings are written (`mcp.recordings_dir`).
    pub recordings_dir: PathBuf,
    /// The call's log, served by `GET /v1/mcp/sessions/{call_id}/log`.
    pub log: DialogLog,
    /// Blind transfer, when the media server can do it (REFER in the call's dialog).
    pub transfer: Option<Transferrer>,
    /// Outgoing calls (bridge and consultation transfers), when the media server can place
    /// them.
    pub outgoing: Option<Arc<dyn OutgoingCalls>>,
}

/// An outgoing call to place for a dialog ([`OutgoingCalls::dial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRequest {
    /// `sip:` URI or `tel:` number (see [`super::ua::dial_target`]).
    pub dest: String,
    /// The dialog's own stream: the new call's stream can be bridged with it.
    pub near: StreamId,
    /// The caller's address, shown to the far end as From.
    pub caller: String,
    /// How long it may ring before it is cancelled (`Failed { status: 408 }`).
    pub ring_timeout: Duration,
    /// Application-to-application information for the far end.
    pub aai: Option<String>,
}

/// Places and controls the outgoing calls of a dialog's bridge and consultation transfers
/// (implemented by the media server's glue on the SIP UA core).
pub trait OutgoingCalls: Send + Sync {
    /// Places a call; its progress comes on the receiver, ending with `Failed` or `Ended`.
    /// Dropping the receiver before then hangs the call up.
    fn dial(&self, req: DialRequest) -> (LegId, UnboundedReceiver<LegEvent>);
    /// Ends the call: CANCEL while it rings, BYE once answered.
    fn hang_up(&self, leg: LegId);
    /// Consultation transfer: asks the caller on `near` to replace our call with the far end
    /// of `leg` (REFER with Replaces); resolves to the REFER's final status.
    fn hand_over(&self, near: StreamId, leg: LegId) -> Pin<Box<dyn Future<Output = u16> + Send>>;
}

/// Asks the caller's side to call a target instead (RFC 3515 REFER with `Refer-To: target`);
/// resolves to the REFER's final status (2xx: accepted).
pub type Transferrer =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = u16> + Send>> + Send + Sync>;

/// How a dialog ended; the call is hung up either way.
#[derive(Debug, Clone, PartialEq)]
pub enum DialogOutcome {
    /// The application exited (`<exit>`): the namelist as an object, the `expr` value, or
    /// null. Reported in the BYE (RFC 5552).
    Exit(Value),
    /// The application disconnected the caller (`<disconnect>`), with its namelist values or
    /// null. The runner may go on running the application's hangup handlers without media.
    Disconnect(Value),
    /// The dialog failed (e.g. `error.badfetch` with no handler).
    Error(String),
}

/// Runs VoiceXML dialogs (implemented by the VoiceXML browser).
pub trait DialogRunner: Send + Sync + 'static {
    /// Runs the dialog of one call; the call is hung up when the future resolves. If the
    /// caller hangs up first, the future is dropped.
    fn run(&self, ctx: DialogContext) -> Pin<Box<dyn Future<Output = DialogOutcome> + Send>>;
}

/// Entries a call's log keeps (the oldest are dropped first).
const LOG_ENTRIES: usize = 500;
/// Longest text of one entry, characters.
const LOG_TEXT: usize = 2000;

#[derive(Debug)]
struct LogInner {
    started: Instant,
    entries: VecDeque<Value>,
    dropped: u64,
    outcome: Option<Value>,
}

/// The per-call log of a dialog: `<log>` output, the FIA's steps (fetches, documents, items)
/// and the events thrown, with their time since the call started. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct DialogLog(Arc<Mutex<LogInner>>);

impl Default for DialogLog {
    fn default() -> Self {
        DialogLog(Arc::new(Mutex::new(LogInner {
            started: Instant::now(),
            entries: VecDeque::new(),
            dropped: 0,
            outcome: None,
        })))
    }
}

impl DialogLog {
    fn inner(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an entry: `kind` is `log` (a `<log>`), `fia` (a step), `event` (a thrown event) or
    /// `error`; `label` is the `<log label>`.
    pub fn push(&self, kind: &str, label: Option<&str>, text: &str) {
        let mut l = self.inner();
        let t_ms = l.started.elapsed().as_millis() as u64;
        let text: String = text.chars().take(LOG_TEXT).collect();
        let mut e = json!({ "t_ms": t_ms, "kind": kind, "text": text });
        if let Some(label) = label {
            e["label"] = Value::String(label.chars().take(200).collect());
        }
        if l.entries.len() >= LOG_ENTRIES {
            l.entries.pop_front();
            l.dropped += 1;
        }
        l.entries.push_back(e);
    }

    /// Records how the dialog ended.
    pub fn set_outcome(&self, outcome: &DialogOutcome) {
        let v = match outcome {
            DialogOutcome::Exit(values) => json!({ "end": "exit", "values": values }),
            DialogOutcome::Disconnect(values) => {
                json!({ "end": "disconnect", "values": values })
            }
            DialogOutcome::Error(e) => json!({ "end": "error", "error": e }),
        };
        self.inner().outcome = Some(v);
    }

    /// `{"entries": [...], "dropped": n, "outcome": {...} | null}`.
    pub fn json(&self) -> Value {
        let l = self.inner();
        json!({
            "entries": l.entries.iter().collect::<Vec<_>>(),
            "dropped": l.dropped,
            "outcome": l.outcome,
        })
    }

    /// The texts of the entries of one kind (tests, diagnostics).
    pub fn texts(&self, kind: &str) -> Vec<String> {
        self.inner()
            .entries
            .iter()
            .filter(|e| e["kind"] == kind)
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_keeps_the_outcome() {
        let log = DialogLog::default();
        for i in 0..LOG_ENTRIES + 5 {
            log.push("log", Some("app"), &format!("line {i}"));
        }
        log.push("event", None, &"x".repeat(LOG_TEXT * 2));
        log.set_outcome(&DialogOutcome::Exit(json!({"pin": "1"})));
        let j = log.json();
        assert_eq!(j["entries"].as_array().unwrap().len(), LOG_ENTRIES);
        assert_eq!(j["dropped"], 6);
        assert_eq!(j["entries"][0]["text"], "line 6");
        assert_eq!(j["entries"][0]["label"], "app");
        assert_eq!(log.texts("event")[0].len(), LOG_TEXT);
        assert_eq!(j["outcome"]["end"], "exit");
        assert_eq!(j["outcome"]["values"]["pin"], "1");
    }
}
