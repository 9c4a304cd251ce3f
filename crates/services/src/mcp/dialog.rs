//! The seam for the VoiceXML browser (RFC 5552): a call to `sip:dialog@host;voicexml=<url>`
//! is handed to a [`DialogRunner`] once it is answered. The runner plays prompts and collects
//! DTMF on the call's stream through the media engine, and the call is hung up when the
//! returned future ends. Without a runner such calls get 488.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use switchboard_media::{MediaEngine, MediaEventKind, PromptCache, StreamId};
use tokio::sync::mpsc::UnboundedReceiver;

/// Everything a dialog needs for one call.
pub struct DialogContext {
    /// The VoiceXML document to run (%-decoded from the Request-URI).
    pub url: String,
    pub call_id: String,
    /// The caller's address (From URI).
    pub caller: String,
    /// The call's RTP stream: play, record and read DTMF on it.
    pub stream: StreamId,
    pub media: MediaEngine,
    pub prompts: Arc<PromptCache>,
    /// The stream's media events (DTMF, play and record completions), in order.
    pub events: UnboundedReceiver<MediaEventKind>,
}

/// How a dialog ended (logged; the call is hung up either way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogOutcome {
    /// The document exited normally, with an optional result (namelist) for the caller.
    Exit(Option<String>),
    /// The dialog failed (e.g. `error.badfetch`).
    Error(String),
}

/// Runs VoiceXML dialogs (implemented by the VoiceXML browser).
pub trait DialogRunner: Send + Sync + 'static {
    /// Runs the dialog of one call; the call is hung up when the future resolves. If the
    /// caller hangs up first, the future is dropped.
    fn run(&self, ctx: DialogContext) -> Pin<Box<dyn Future<Output = DialogOutcome> + Send>>;
}
