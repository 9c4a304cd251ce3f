//! The VoiceXML browser of the media server: a [`DialogRunner`] on `switchboard-vxml`.
//!
//! Each call's interpreter runs on a thread of its own (it owns a QuickJS runtime and is not
//! `Send`; a script that loops until its time budget runs out blocks only that thread). The
//! thread only feeds inputs to the interpreter, fires its timers at its deadlines and hands
//! its commands over; this module's async task performs them: prompts through the
//! [`switchboard_media::PromptCache`] and the media engine (with barge-in), DTMF from the stream's events,
//! recordings to WAV, document fetches through the [`DocumentCache`], and the log.
//!
//! `fetchaudio` (VoiceXML 2.0 §6.1.1): when a fetch that names one is still pending after its
//! `fetchaudiodelay` and the prompts queued before it have played, the audio plays (looped,
//! not interruptible by keys); once started it plays at least `fetchaudiominimum` (the
//! fetched document is held back until then) and stops when the fetch is over.
//!
//! Blind transfers are a REFER in the call's dialog (RFC 3515; the interpreter has already
//! thrown `connection.disconnect.transfer`, as VoiceXML 2.0 says, so a refused REFER is only
//! logged); the BYE follows once the REFER is answered.
//!
//! Bridge and consultation transfers place an outgoing call through [`OutgoingCalls`] once the
//! prompts queued before them have played: `transferaudio` plays to the caller while it
//! rings, the ring timeout is `connecttimeout`. On the answer a bridge joins the two streams
//! (the caller's DTMF still reaches the transfer's grammars) until either side hangs up or
//! `maxtime` passes; a consultation asks the caller to replace our call with the far end's
//! (REFER with Replaces). The outcome goes back to the interpreter as a VoiceXML 2.0
//! §2.3.7.2.2 result ([`switchboard_vxml::transfer_failure`] for the SIP failures).

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_media::{DtmfSource, PlayItem as MediaItem, StreamId};
use switchboard_media::{
    MediaEventKind, PlayItem, Playlist, PromptSource, RecordEnd, RecordParams, Recording,
};
use switchboard_vxml::{
    transfer_failure, Command, Config, FetchAudio, Input, Interpreter, Limits, PromptPart,
    TransferKind, TransferOutcome,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::dialog::{DialRequest, DialogContext, DialogOutcome, DialogRunner};
use super::fetch::{DocumentCache, FilePart, Freshness};
use super::rfc5552::initial_fetch;
use super::ua::{LegEvent, LegId};

/// Settings of the VoiceXML browser.
#[derive(Debug, Clone)]
pub struct VxmlSettings {
    /// ECMAScript limits of each call (memory, time budget of one script or expression).
    pub limits: Limits,
    /// How long an application may go on after the caller is gone (its
    /// `connection.disconnect.hangup` handlers, a last `<submit>`), before it is stopped.
    pub after_hangup: Duration,
    /// Stack of each call's interpreter thread, bytes.
    pub thread_stack: usize,
}

impl Default for VxmlSettings {
    fn default() -> Self {
        VxmlSettings {
            limits: Limits::default(),
            after_hangup: Duration::from_secs(10),
            thread_stack: 2 << 20,
        }
    }
}

/// The built-in [`DialogRunner`]: runs VoiceXML 2.1 applications.
pub struct VxmlRunner {
    settings: VxmlSettings,
    documents: Arc<DocumentCache>,
}

impl VxmlRunner {
    pub fn new(settings: VxmlSettings) -> VxmlRunner {
        VxmlRunner {
            settings,
            documents: Arc::new(DocumentCache::default()),
        }
    }
}

impl DialogRunner for VxmlRunner {
    fn run(&self, ctx: DialogContext) -> Pin<Box<dyn Future<Output = DialogOutcome> + Send>> {
        let (done_tx, done_rx) = oneshot::channel();
        let span = tracing::info_span!("vxml", call_id = %ctx.call_id);
        let settings = self.settings.clone();
        let documents = self.documents.clone();
        // The session outlives this future when the caller hangs up first: the application
        // then runs its hangup handlers without media.
        tokio::spawn(session(ctx, settings, documents, done_tx).instrument(span));
        Box::pin(async move {
            done_rx
                .await
                .unwrap_or_else(|_| DialogOutcome::Error("the dialog stopped".into()))
        })
    }
}

/// Commands of one step of the interpreter.
struct Batch {
    cmds: Vec<Command>,
    done: bool,
}

/// The interpreter's thread: inputs in, batches of commands out, timers at the deadlines.
fn interpreter_thread(
    config: Config,
    inputs: std_mpsc::Receiver<Input>,
    out: mpsc::UnboundedSender<Batch>,
) {
    let started = Instant::now();
    let ms = || started.elapsed().as_millis() as u64;
    let mut vx = match Interpreter::new(config) {
        Ok(vx) => vx,
        Err(e) => {
            let _ = out.send(Batch {
                cmds: vec![
                    Command::Log {
                        label: Some("error".into()),
                        text: format!("cannot start the interpreter: {e}"),
                    },
                    Command::Exit {
                        values: Value::Null,
                    },
                ],
                done: true,
            });
            return;
        }
    };
    loop {
        let mut cmds = Vec::new();
        while let Some(c) = vx.poll_command() {
            cmds.push(c);
        }
        let done = vx.is_done();
        if (!cmds.is_empty() || done) && out.send(Batch { cmds, done }).is_err() {
            return;
        }
        if done {
            return;
        }
        let input = match vx.next_deadline() {
            Some(d) if d <= ms() => None,
            Some(d) => match inputs.recv_timeout(Duration::from_millis(d.saturating_sub(ms()))) {
                Ok(i) => Some(i),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match inputs.recv() {
                Ok(i) => Some(i),
                Err(_) => return,
            },
        };
        match input {
            Some(i) => vx.handle(i, ms()),
            None => vx.handle_timeout(ms()),
        }
    }
}

/// Decrements `vxml_sessions_active` when a session ends, however it ends.
struct Active;

impl Active {
    fn new() -> Active {
        metrics::gauge!("vxml_sessions_active").increment(1.0);
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics::gauge!("vxml_sessions_active").decrement(1.0);
    }
}

/// Longest `<break>` played, ms.
const MAX_BREAK_MS: u64 = 60_000;

/// One call's dialog, on the async side.
struct Call {
    ctx: DialogContext,
    documents: Arc<DocumentCache>,
    input: std_mpsc::Sender<Input>,
    /// The runner's future, until the outcome is reported.
    done: Option<oneshot::Sender<DialogOutcome>>,
    /// The caller is still there (prompts, DTMF and recordings are possible).
    media: bool,
    next_play: u64,
    /// The play running on the stream and whether it may be barged in.
    playing: Option<(u64, bool)>,
    queued: VecDeque<(Playlist, bool)>,
    /// A `Listen` waits for the prompts to end before its noinput timer starts.
    owe_prompts_done: bool,
    /// A `Record` waits for the prompts before it starts.
    pending_record: Option<RecordParams>,
    recording: bool,
    /// The caller hung up while recording: the stream's removal ends the recording, whose
    /// samples come as a last `RecordDone` (until this deadline; then the hangup goes without).
    awaiting_recording: Option<tokio::time::Instant>,
    /// The recording the stream's removal ended, before the hangup was noticed: it goes with
    /// the hangup (VoiceXML 2.0 §2.3.6).
    hangup_recording: Option<Input>,
    recordings: u32,
    /// The recordings saved in this call, by the `file://` URL the application got: the
    /// only files a multipart `<submit>` sends.
    recorded: std::collections::HashMap<String, PathBuf>,
    fetch: Option<JoinHandle<Input>>,
    /// The `fetchaudio` of the pending fetch.
    fetch_audio: Option<FetchAudioState>,
    /// A fetch's answer held back until its fetchaudio has played its minimum.
    held: Option<(Input, tokio::time::Instant)>,
    /// The last unhandled error the interpreter reported.
    last_error: Option<String>,
    /// When the application is stopped once the caller is gone.
    stop_at: Option<tokio::time::Instant>,
    /// The application exited or disconnected (`true`): reported once the prompts it queued
    /// before have played.
    ending: Option<(DialogOutcome, bool)>,
    after_hangup: Duration,
    /// A blind transfer's REFER, until it is answered (the BYE waits for it).
    transferring: Option<JoinHandle<u16>>,
    /// The cache rules of the first fetch (RFC 5552 `maxage`/`maxstale`), then the default.
    freshness: Option<Freshness>,
    /// A bridge or consultation transfer waiting for the prompts queued before it.
    pending_bridge: Option<BridgeRequest>,
    /// The bridge or consultation transfer in progress.
    bridge: Option<Bridge>,
}

/// The `fetchaudio` of a pending fetch.
struct FetchAudioState {
    url: String,
    /// When it starts (`fetchaudiodelay` after the fetch began).
    start_at: tokio::time::Instant,
    minimum: Duration,
    stage: FetchAudioStage,
}

enum FetchAudioStage {
    /// Until `start_at`.
    Waiting,
    /// Loaded; waits for the prompts queued before the fetch to end.
    Ready(MediaItem),
    /// Playing as play `id`; the fetch's answer waits until `until`.
    Playing {
        id: u64,
        until: tokio::time::Instant,
        started: tokio::time::Instant,
    },
}

/// A bridge or consultation `<transfer>` to start.
struct BridgeRequest {
    dest: String,
    kind: TransferKind,
    connect_timeout: Duration,
    maxtime: Option<Duration>,
    /// `transferaudio`, loaded.
    audio: Option<MediaItem>,
    aai: Option<String>,
    /// No grammar of the transfer listens: the caller's RFC 4733 keys go to the far end.
    relay_dtmf: bool,
}

/// A bridge or consultation transfer in progress: its outgoing call.
struct Bridge {
    leg: LegId,
    kind: TransferKind,
    events: mpsc::UnboundedReceiver<LegEvent>,
    /// The far end's stream once it answered, and when.
    answered: Option<(StreamId, tokio::time::Instant)>,
    maxtime: Option<Duration>,
    /// When `maxtime` ends the bridged call.
    deadline: Option<tokio::time::Instant>,
    /// The result the call will have.
    outcome: TransferOutcome,
    /// The play id of `transferaudio` while it plays.
    audio_play: Option<u64>,
    /// A consultation's REFER, until it is answered.
    handing_over: Option<JoinHandle<u16>>,
    relay_dtmf: bool,
}

/// What woke a transfer in progress.
enum BridgeWake {
    Leg(Option<LegEvent>),
    Maxtime,
    HandedOver(u16),
}

impl Bridge {
    async fn wake(&mut self) -> BridgeWake {
        let deadline = self.deadline;
        let handing = self.handing_over.as_mut();
        tokio::select! {
            ev = self.events.recv() => BridgeWake::Leg(ev),
            _ = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => BridgeWake::Maxtime,
            status = async {
                match handing {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            } => BridgeWake::HandedOver(status.unwrap_or(500)),
        }
    }
}

/// How long the far end of a consultation may take to be replaced (the caller's INVITE with
/// Replaces) before our call to it is hung up.
const HAND_OVER_GRACE: Duration = Duration::from_secs(32);

async fn session(
    ctx: DialogContext,
    settings: VxmlSettings,
    documents: Arc<DocumentCache>,
    done: oneshot::Sender<DialogOutcome>,
) {
    let _active = Active::new();
    let mut config = Config::new(&ctx.url);
    // RFC 5552 §2.1: the Request-URI may say how to fetch the first document.
    let first = initial_fetch(&ctx.session_vars);
    if first.post {
        config.method = switchboard_vxml::Method::Post;
        config.params = first.params.clone();
    }
    let first_freshness = Freshness {
        maxage: first.maxage.map(Duration::from_secs),
        maxstale: first.maxstale.map(Duration::from_secs),
    };
    config.session = ctx.session_vars.clone();
    config.limits = settings.limits.clone();
    config.trace = true;
    config.blind_transfer = ctx.transfer.is_some();
    config.bridge_transfer = ctx.outgoing.is_some();
    let (in_tx, in_rx) = std_mpsc::channel();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("vxml".into())
        .stack_size(settings.thread_stack)
        .spawn(move || interpreter_thread(config, in_rx, out_tx));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the interpreter thread");
        let outcome = DialogOutcome::Error(format!("cannot start the interpreter thread: {e}"));
        ctx.log.set_outcome(&outcome);
        let _ = done.send(outcome);
        return;
    }
    tracing::info!(url = %ctx.url, "dialog starts");
    let mut call = Call {
        ctx,
        documents,
        input: in_tx,
        done: Some(done),
        media: true,
        next_play: 1,
        playing: None,
        queued: VecDeque::new(),
        owe_prompts_done: false,
        pending_record: None,
        recording: false,
        awaiting_recording: None,
        hangup_recording: None,
        recordings: 0,
        recorded: std::collections::HashMap::new(),
        fetch: None,
        fetch_audio: None,
        held: None,
        last_error: None,
        stop_at: None,
        ending: None,
        after_hangup: settings.after_hangup,
        transferring: None,
        freshness: Some(first_freshness),
        pending_bridge: None,
        bridge: None,
    };
    let mut events_open = true;
    let mut interpreter_done = false;
    loop {
        if interpreter_done && call.ending.is_none() {
            break;
        }
        tokio::select! {
            batch = out_rx.recv(), if !interpreter_done => {
                let Some(batch) = batch else {
                    call.finish(DialogOutcome::Error("the interpreter stopped".into()));
                    break;
                };
                for c in batch.cmds {
                    call.perform(c).await;
                }
                interpreter_done = batch.done;
            }
            ev = call.ctx.events.recv(), if events_open => match ev {
                Some(ev) => call.on_media(ev).await,
                None => events_open = false,
            },
            fetched = async {
                match call.fetch.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            } => {
                call.fetch = None;
                match fetched {
                    Ok(input) => call.fetched(input),
                    Err(e) => tracing::debug!(error = %e, "fetch task ended"),
                }
            }
            _ = async {
                match &call.fetch_audio {
                    Some(FetchAudioState { start_at, stage: FetchAudioStage::Waiting, .. }) => {
                        tokio::time::sleep_until(*start_at).await
                    }
                    _ => std::future::pending().await,
                }
            } => call.load_fetch_audio().await,
            _ = async {
                match &call.held {
                    Some((_, until)) => tokio::time::sleep_until(*until).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((input, _)) = call.held.take() {
                    call.stop_fetch_audio();
                    call.send(input);
                }
            }
            _ = async {
                match call.done.as_mut() {
                    Some(d) => d.closed().await,
                    None => std::future::pending().await,
                }
            } => {
                // The caller hung up (the runner's future was dropped).
                call.done = None;
                call.ending = None;
                call.hung_up();
                if let Some(kind) = call.end_bridge("caller hung up") {
                    // VoiceXML 2.0 §2.3.7.2.2: the item stays unfilled, the hangup event is
                    // thrown.
                    metrics::counter!("vxml_transfers_total", "kind" => kind.as_str(), "result" => "near_end_disconnect").increment(1);
                }
                if let Some(input) = call.hangup_recording.take() {
                    call.send(input);
                } else if call.recording {
                    // VoiceXML 2.0 §2.3.6: the recording so far goes to the application with
                    // the hangup; the stream's removal ends it.
                    call.awaiting_recording =
                        Some(tokio::time::Instant::now() + AWAIT_RECORDING);
                } else {
                    call.send(Input::Hangup);
                }
            }
            _ = async {
                match call.awaiting_recording {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!("no recording after the hangup");
                call.awaiting_recording = None;
                call.recording = false;
                call.send(Input::Hangup);
            }
            wake = async {
                match call.bridge.as_mut() {
                    Some(b) => b.wake().await,
                    None => std::future::pending().await,
                }
            } => match wake {
                BridgeWake::Leg(ev) => call.on_leg(ev),
                BridgeWake::Maxtime => call.maxtime_reached(),
                BridgeWake::HandedOver(status) => call.handed_over(status),
            },
            status = async {
                match call.transferring.as_mut() {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            } => {
                call.transferring = None;
                call.transferred(status.unwrap_or(500));
            }
            _ = async {
                match call.stop_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!("the application did not end after the caller left: stopped");
                call.ctx.log.push("error", None, "stopped: the application did not end after the caller left");
                break;
            }
        }
    }
    if let Some(f) = call.fetch.take() {
        f.abort();
    }
    if let Some(t) = call.transferring.take() {
        t.abort();
    }
    call.end_bridge("the dialog ended");
    // Dropping `call` closes the interpreter's input: its thread ends.
}

/// How long after the caller's hangup the recording it ended may take to arrive.
const AWAIT_RECORDING: Duration = Duration::from_secs(2);

impl Call {
    fn send(&self, input: Input) {
        // The thread has ended when the session is done; nothing to tell it then.
        let _ = self.input.send(input);
    }

    fn finish(&mut self, outcome: DialogOutcome) {
        tracing::info!(?outcome, "dialog ends");
        self.ctx.log.set_outcome(&outcome);
        if let Some(done) = self.done.take() {
            let _ = done.send(outcome);
        }
    }

    /// The REFER of a blind transfer was answered.
    fn transferred(&mut self, status: u16) {
        if (200..300).contains(&status) {
            tracing::info!(status, "transfer accepted");
            self.ctx
                .log
                .push("fia", None, &format!("transfer accepted ({status})"));
        } else {
            tracing::info!(status, "transfer refused");
            self.ctx
                .log
                .push("error", None, &format!("transfer refused ({status})"));
        }
        let result = if (200..300).contains(&status) {
            "accepted"
        } else {
            "refused"
        };
        metrics::counter!("vxml_transfers_total", "result" => result).increment(1);
        self.when_idle();
    }

    /// The caller is gone (hung up, or `<disconnect>`): no more media.
    fn hung_up(&mut self) {
        if self.media {
            self.media = false;
            self.queued.clear();
            self.playing = None;
            self.pending_record = None;
            self.stop_at = Some(tokio::time::Instant::now() + self.after_hangup);
        }
    }

    async fn perform(&mut self, cmd: Command) {
        match cmd {
            Command::Fetch {
                url,
                method,
                params,
                options,
            } => {
                if let Some(f) = self.fetch.take() {
                    f.abort();
                }
                self.stop_fetch_audio();
                self.fetch_audio = options.fetch_audio.clone().filter(|_| self.media).map(
                    |FetchAudio {
                         url,
                         delay_ms,
                         minimum_ms,
                     }| FetchAudioState {
                        url,
                        start_at: tokio::time::Instant::now() + Duration::from_millis(delay_ms),
                        minimum: Duration::from_millis(minimum_ms),
                        stage: FetchAudioStage::Waiting,
                    },
                );
                let docs = self.documents.clone();
                let http = self.ctx.prompts.clone();
                // The Request-URI's rules for the first document, then the application's.
                let freshness = self
                    .freshness
                    .take()
                    .unwrap_or_else(|| Freshness::of(&options));
                let timeout = options.timeout_ms.map(Duration::from_millis);
                // The recordings of this call that a multipart submit names.
                let attach: Vec<(String, PathBuf)> =
                    if options.multipart && method == switchboard_vxml::Method::Post {
                        params
                            .iter()
                            .filter_map(|(_, v)| Some((v.clone(), self.recorded.get(v)?.clone())))
                            .collect()
                    } else {
                        Vec::new()
                    };
                let multipart = options.multipart && method == switchboard_vxml::Method::Post;
                let task = async move {
                    let started = Instant::now();
                    let (result, cached) = if multipart {
                        let mut files = std::collections::HashMap::new();
                        for (value, path) in attach {
                            match tokio::fs::read(&path).await {
                                Ok(data) => {
                                    let file_name = path
                                        .file_name()
                                        .map(|n| n.to_string_lossy().into_owned())
                                        .unwrap_or_else(|| "recording.wav".into());
                                    files.insert(
                                        value,
                                        FilePart {
                                            file_name,
                                            content_type: "audio/wav".into(),
                                            data: data.into(),
                                        },
                                    );
                                }
                                // Sent as its URL, like any other value.
                                Err(e) => {
                                    tracing::warn!(path = %path.display(), error = %e, "recording not readable for the submit")
                                }
                            }
                        }
                        let r = docs
                            .submit_multipart(&http, &url, &params, &files, timeout)
                            .await;
                        (r, super::fetch::Cached::Miss)
                    } else {
                        docs.fetch(&http, &url, method, &params, freshness, timeout)
                            .await
                    };
                    metrics::counter!("vxml_documents_fetched_total", "cache" => cached.label())
                        .increment(1);
                    match &result {
                        Ok(text) => {
                            tracing::debug!(%url, cache = cached.label(), bytes = text.len(), ms = started.elapsed().as_millis() as u64, "document fetched")
                        }
                        Err(e) => {
                            tracing::info!(%url, status = ?e.status, reason = %e.reason, "fetch failed")
                        }
                    }
                    Input::DocumentFetched { url, result }
                };
                self.fetch = Some(tokio::spawn(task.in_current_span()));
            }
            Command::Play { prompts, bargein } => {
                if !self.media {
                    return;
                }
                let mut items = Vec::new();
                for p in &prompts {
                    self.load_part(p, &mut items).await;
                }
                if !items.is_empty() {
                    self.queued.push_back((Playlist::once(items), bargein));
                    self.play_next();
                }
            }
            Command::Listen { .. } => {
                self.owe_prompts_done = true;
                self.when_idle();
            }
            Command::StopListening => self.owe_prompts_done = false,
            Command::Record {
                beep,
                maxtime_ms,
                finalsilence_ms,
                dtmfterm,
                ..
            } => {
                if !self.media {
                    self.send(Input::RecordingDone {
                        url: None,
                        duration_ms: 0,
                        termchar: None,
                    });
                    return;
                }
                let to_u32 = |ms: u64| u32::try_from(ms).unwrap_or(u32::MAX);
                self.pending_record = Some(RecordParams {
                    beep,
                    max_time_ms: to_u32(if maxtime_ms == 0 { 60_000 } else { maxtime_ms }),
                    final_silence_ms: (finalsilence_ms > 0).then(|| to_u32(finalsilence_ms)),
                    dtmf_term: dtmfterm,
                    ..RecordParams::default()
                });
                self.when_idle();
            }
            Command::Transfer {
                kind: TransferKind::Blind,
                dest,
                ..
            } => match &self.ctx.transfer {
                Some(transfer) if self.media => {
                    // The caller leaves the application: no more prompts or input.
                    let _ = self.ctx.media.stop_play(self.ctx.stream);
                    self.ctx.log.push("fia", None, &format!("transfer {dest}"));
                    self.transferring = Some(tokio::spawn(transfer(dest)));
                    self.hung_up();
                }
                _ => {
                    // Not reached: the interpreter knows what the host cannot do.
                    self.send(Input::TransferResult {
                        status: "error.unsupported.transfer.blind".into(),
                        duration_ms: 0,
                    });
                }
            },
            Command::Transfer {
                kind,
                dest,
                connect_timeout_ms,
                maxtime_ms,
                transfer_audio,
                aai,
                grammars,
                ..
            } => {
                if self.ctx.outgoing.is_none() {
                    self.send(Input::TransferResult {
                        status: "error.unsupported.transfer.bridge".into(),
                        duration_ms: 0,
                    });
                    return;
                }
                if !self.media || self.bridge.is_some() {
                    // The caller is gone (the interpreter has been told), or a transfer runs.
                    self.send(Input::TransferResult {
                        status: "error.connection.noresource".into(),
                        duration_ms: 0,
                    });
                    return;
                }
                let audio = match transfer_audio {
                    Some(url) => match self.ctx.prompts.load_url(&url, None).await {
                        Ok(item) => Some(item),
                        Err(e) => {
                            // VoiceXML 2.0 §2.3.7: silence when the audio cannot be played.
                            tracing::info!(%url, error = %e, "transferaudio unavailable");
                            self.ctx.log.push(
                                "error",
                                None,
                                &format!("transferaudio {url} unavailable: {e}"),
                            );
                            None
                        }
                    },
                    None => None,
                };
                self.pending_bridge = Some(BridgeRequest {
                    dest,
                    kind,
                    connect_timeout: Duration::from_millis(connect_timeout_ms.max(1)),
                    maxtime: (maxtime_ms > 0).then(|| Duration::from_millis(maxtime_ms)),
                    audio,
                    aai,
                    relay_dtmf: grammars.is_empty(),
                });
                self.when_idle();
            }
            Command::EndTransfer => {
                if let Some(b) = self.bridge.as_mut() {
                    self.ctx
                        .log
                        .push("fia", None, "transfer ended by a grammar match");
                    b.outcome.end_as("near_end_disconnect");
                    if let Some(out) = &self.ctx.outgoing {
                        out.hang_up(b.leg);
                    }
                }
            }
            Command::Hangup { values } => {
                self.ctx.log.push("fia", None, "disconnect");
                self.ending = Some((DialogOutcome::Disconnect(values), true));
                self.when_idle();
            }
            Command::Exit { values } => {
                let outcome = match (&values, self.last_error.take()) {
                    (Value::Null, Some(e)) => DialogOutcome::Error(e),
                    _ => DialogOutcome::Exit(values),
                };
                if self.done.is_some() {
                    // The prompts queued before the exit play first.
                    self.ending = Some((outcome, false));
                    self.when_idle();
                } else {
                    // Already disconnected: the outcome was reported; keep the exit in the log.
                    self.ctx.log.push("fia", None, "exit");
                }
            }
            Command::Log { label, text } => self.log(label.as_deref(), &text),
        }
    }

    fn log(&mut self, label: Option<&str>, text: &str) {
        match label {
            Some("fia") => match text.strip_prefix("event ") {
                Some(ev) => {
                    let name = ev.split_whitespace().next().unwrap_or_default();
                    if name.starts_with("error.") {
                        metrics::counter!("vxml_errors_total", "event" => error_label(name))
                            .increment(1);
                        tracing::info!(event = %ev, "error event");
                    } else {
                        tracing::debug!(event = %ev, "event");
                    }
                    self.ctx.log.push("event", None, ev);
                }
                None => {
                    tracing::debug!(step = %text, "fia");
                    self.ctx.log.push("fia", None, text);
                }
            },
            Some("error") => {
                tracing::info!(error = %text, "application error");
                self.last_error = Some(text.to_owned());
                self.ctx.log.push("error", None, text);
            }
            _ => {
                tracing::info!(label = label.unwrap_or(""), %text, "log");
                self.ctx.log.push("log", label, text);
            }
        }
    }

    /// Turns a prompt part into playable items (TTS for text, the fallback for audio that
    /// cannot be loaded).
    fn load_part<'a>(
        &'a mut self,
        part: &'a PromptPart,
        items: &'a mut Vec<PlayItem>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match part {
                PromptPart::Text(t) => {
                    let t = t.trim();
                    if t.is_empty() {
                        return;
                    }
                    match self
                        .ctx
                        .prompts
                        .load(&PromptSource::Tts(t.to_owned()), None)
                        .await
                    {
                        Ok(item) => items.push(item),
                        Err(e) => {
                            tracing::warn!(error = %e, "TTS failed");
                            self.ctx
                                .log
                                .push("error", None, &format!("TTS failed: {e}"));
                        }
                    }
                }
                PromptPart::Audio { url, fallback } => {
                    match self.ctx.prompts.load_url(url, None).await {
                        Ok(item) => items.push(item),
                        Err(e) => {
                            tracing::info!(%url, error = %e, "audio unavailable: its fallback plays");
                            self.ctx.log.push(
                                "error",
                                None,
                                &format!("audio {url} unavailable: {e}"),
                            );
                            for f in fallback {
                                self.load_part(f, items).await;
                            }
                        }
                    }
                }
                PromptPart::Break { ms } => {
                    let ms = (*ms).min(MAX_BREAK_MS) as u32;
                    if ms > 0 {
                        items.push(PlayItem::Silence { ms });
                    }
                }
            }
        })
    }

    /// Starts the next queued prompt list when nothing plays.
    fn play_next(&mut self) {
        if self.playing.is_some() {
            return;
        }
        while let Some((list, bargein)) = self.queued.pop_front() {
            let id = self.next_play;
            self.next_play += 1;
            match self.ctx.media.play(self.ctx.stream, id, list) {
                Ok(()) => {
                    self.playing = Some((id, bargein));
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "play failed"),
            }
        }
        if self.play_fetch_audio() {
            return;
        }
        self.when_idle();
    }

    /// A fetch's answer: delivered at once, or held until its fetchaudio has played its
    /// minimum.
    fn fetched(&mut self, input: Input) {
        if let Some(FetchAudioState {
            stage: FetchAudioStage::Playing { until, .. },
            ..
        }) = &self.fetch_audio
        {
            if self.media && tokio::time::Instant::now() < *until {
                self.held = Some((input, *until));
                return;
            }
        }
        self.stop_fetch_audio();
        self.send(input);
    }

    /// The fetchaudio's delay is over and the fetch still runs: load the audio and play it
    /// once the prompts queued before have played.
    async fn load_fetch_audio(&mut self) {
        let Some(url) = self.fetch_audio.as_ref().map(|f| f.url.clone()) else {
            return;
        };
        match self.ctx.prompts.load_url(&url, None).await {
            Ok(item) => {
                if let Some(f) = self.fetch_audio.as_mut() {
                    f.stage = FetchAudioStage::Ready(item);
                    self.play_fetch_audio();
                }
            }
            Err(e) => {
                tracing::info!(%url, error = %e, "fetchaudio unavailable");
                self.ctx
                    .log
                    .push("error", None, &format!("fetchaudio {url} unavailable: {e}"));
                self.fetch_audio = None;
            }
        }
    }

    /// Starts a loaded fetchaudio when nothing else plays; whether it started.
    fn play_fetch_audio(&mut self) -> bool {
        if self.playing.is_some() || !self.queued.is_empty() || !self.media {
            return false;
        }
        let Some(f) = self.fetch_audio.as_mut() else {
            return false;
        };
        if !matches!(f.stage, FetchAudioStage::Ready(_)) {
            return false;
        }
        let FetchAudioStage::Ready(item) =
            std::mem::replace(&mut f.stage, FetchAudioStage::Waiting)
        else {
            return false;
        };
        let id = self.next_play;
        self.next_play += 1;
        let list = Playlist {
            items: vec![item],
            repeat: None,
            delay_ms: 0,
            max_duration_ms: None,
        };
        match self.ctx.media.play(self.ctx.stream, id, list) {
            Ok(()) => {
                let now = tokio::time::Instant::now();
                f.stage = FetchAudioStage::Playing {
                    id,
                    until: now + f.minimum,
                    started: now,
                };
                let text = format!("fetchaudio {}", f.url);
                self.playing = Some((id, false));
                self.ctx.log.push("fia", None, &text);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "fetchaudio not played");
                self.fetch_audio = None;
                false
            }
        }
    }

    /// The fetch is over: its fetchaudio stops (or never starts).
    fn stop_fetch_audio(&mut self) {
        let Some(f) = self.fetch_audio.take() else {
            return;
        };
        if let FetchAudioStage::Playing { id, started, .. } = f.stage {
            if self.playing.is_some_and(|(p, _)| p == id) {
                let _ = self.ctx.media.stop_play(self.ctx.stream);
            }
            let ms = started.elapsed().as_millis();
            self.ctx
                .log
                .push("fia", None, &format!("fetchaudio stopped after {ms} ms"));
        }
    }

    /// Nothing plays: a waiting listen starts its timer, a waiting recording starts.
    fn when_idle(&mut self) {
        if self.playing.is_some() || !self.queued.is_empty() {
            return;
        }
        if self.owe_prompts_done {
            self.owe_prompts_done = false;
            self.send(Input::PromptsDone);
        }
        if self.transferring.is_some() {
            // The BYE waits for the REFER's answer.
            return;
        }
        if let Some((outcome, disconnect)) = self.ending.take() {
            if disconnect {
                self.hung_up();
            }
            self.finish(outcome);
            return;
        }
        if let Some(req) = self.pending_bridge.take() {
            self.start_bridge(req);
            return;
        }
        if let Some(params) = self.pending_record.take() {
            match self.ctx.media.record(self.ctx.stream, params) {
                Ok(()) => self.recording = true,
                Err(e) => {
                    tracing::info!(error = %e, "record failed");
                    self.send(Input::RecordingDone {
                        url: None,
                        duration_ms: 0,
                        termchar: None,
                    });
                }
            }
        }
    }

    /// Places the outgoing call of a bridge or consultation transfer.
    fn start_bridge(&mut self, req: BridgeRequest) {
        let Some(out) = self.ctx.outgoing.clone() else {
            return;
        };
        let kind = req.kind.as_str();
        tracing::info!(dest = %req.dest, kind, "transfer: calling");
        self.ctx
            .log
            .push("fia", None, &format!("transfer ({kind}) {}", req.dest));
        let (leg, events) = out.dial(DialRequest {
            dest: req.dest,
            near: self.ctx.stream,
            caller: self.ctx.caller.clone(),
            ring_timeout: req.connect_timeout,
            aai: req.aai,
        });
        let mut audio_play = None;
        if let Some(item) = req.audio {
            let id = self.next_play;
            self.next_play += 1;
            let list = Playlist {
                items: vec![item],
                repeat: None,
                delay_ms: 0,
                max_duration_ms: None,
            };
            match self.ctx.media.play(self.ctx.stream, id, list) {
                Ok(()) => audio_play = Some(id),
                Err(e) => tracing::debug!(error = %e, "transferaudio not played"),
            }
        }
        self.bridge = Some(Bridge {
            leg,
            kind: req.kind,
            events,
            answered: None,
            maxtime: req.maxtime,
            deadline: None,
            outcome: TransferOutcome::default(),
            audio_play,
            handing_over: None,
            relay_dtmf: req.relay_dtmf,
        });
    }

    fn stop_transfer_audio(&mut self) {
        if let Some(b) = self.bridge.as_mut() {
            if b.audio_play.take().is_some() {
                let _ = self.ctx.media.stop_play(self.ctx.stream);
            }
        }
    }

    /// Progress of the transfer's outgoing call.
    fn on_leg(&mut self, ev: Option<LegEvent>) {
        let Some(ev) = ev else {
            // The glue is gone: the call cannot go on.
            return self.bridge_over("network_disconnect");
        };
        match ev {
            LegEvent::Ringing => {
                tracing::info!("transfer: ringing");
                self.ctx.log.push("fia", None, "transfer ringing");
            }
            LegEvent::Answered { stream } => {
                self.stop_transfer_audio();
                let Some(b) = self.bridge.as_mut() else {
                    return;
                };
                let now = tokio::time::Instant::now();
                b.answered = Some((stream, now));
                tracing::info!(far = %stream, kind = b.kind.as_str(), "transfer: answered");
                self.ctx.log.push("fia", None, "transfer answered");
                if b.outcome.ending() {
                    // A grammar matched while it rang: the hang-up is on its way.
                    return;
                }
                match b.kind {
                    TransferKind::Consultation => {
                        if let Some(out) = &self.ctx.outgoing {
                            let refer = out.hand_over(self.ctx.stream, b.leg);
                            b.handing_over = Some(tokio::spawn(refer.in_current_span()));
                        }
                    }
                    _ => {
                        b.deadline = b.maxtime.map(|m| now + m);
                        if let Err(e) = self.ctx.media.bridge(self.ctx.stream, stream) {
                            tracing::warn!(error = %e, "cannot bridge the two calls");
                            b.outcome.end_as("unknown");
                            if let Some(out) = &self.ctx.outgoing {
                                out.hang_up(b.leg);
                            }
                        }
                    }
                }
            }
            LegEvent::Failed { status } => {
                self.stop_transfer_audio();
                let result = match self.bridge.as_ref() {
                    Some(b) => b.outcome.failed(status),
                    None => transfer_failure(status),
                };
                tracing::info!(status, result, "transfer: the call failed");
                self.bridge_over(result);
            }
            LegEvent::BadDestination => {
                self.stop_transfer_audio();
                tracing::info!("transfer: bad destination");
                self.bridge_over("error.connection.baddestination");
            }
            LegEvent::Ended { by_far_end } => {
                let result = self
                    .bridge
                    .as_ref()
                    .map_or(TransferOutcome::default(), |b| b.outcome)
                    .ended(by_far_end);
                tracing::info!(by_far_end, result, "transfer: the call ended");
                self.bridge_over(result);
            }
        }
    }

    /// The transfer's outgoing call is over: the caller leaves the bridge and the
    /// application hears the result.
    fn bridge_over(&mut self, result: &'static str) {
        let Some(b) = self.bridge.take() else {
            return;
        };
        if let Some(t) = &b.handing_over {
            t.abort();
        }
        if b.audio_play.is_some() && self.media {
            let _ = self.ctx.media.stop_play(self.ctx.stream);
        }
        let duration_ms = b
            .answered
            .map(|(_, at)| at.elapsed().as_millis() as u64)
            .unwrap_or(0);
        if b.answered.is_some() && b.kind != TransferKind::Consultation {
            let _ = self.ctx.media.leave(self.ctx.stream);
        }
        metrics::counter!("vxml_transfers_total", "kind" => b.kind.as_str(), "result" => result)
            .increment(1);
        self.ctx.log.push(
            "fia",
            None,
            &format!("transfer result {result} after {duration_ms} ms"),
        );
        if !self.media {
            // The caller hung up: the interpreter has its hangup event already.
            return;
        }
        self.send(Input::TransferResult {
            status: result.to_owned(),
            duration_ms,
        });
    }

    fn maxtime_reached(&mut self) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        b.deadline = None;
        tracing::info!("transfer: maxtime reached");
        b.outcome.end_as("maxtime_disconnect");
        if let Some(out) = &self.ctx.outgoing {
            out.hang_up(b.leg);
        }
    }

    /// The REFER of a consultation transfer was answered.
    fn handed_over(&mut self, status: u16) {
        let Some(b) = self.bridge.as_mut() else {
            return;
        };
        b.handing_over = None;
        if !(200..300).contains(&status) {
            tracing::info!(status, "consultation: the caller refused the hand-over");
            self.ctx.log.push(
                "error",
                None,
                &format!("consultation REFER refused ({status})"),
            );
            b.outcome.end_as("unknown");
            if let Some(out) = &self.ctx.outgoing {
                out.hang_up(b.leg);
            }
            return;
        }
        tracing::info!(status, "consultation: the caller is handed over");
        let Some(b) = self.bridge.take() else {
            return;
        };
        metrics::counter!("vxml_transfers_total", "kind" => "consultation", "result" => "transferred")
            .increment(1);
        self.ctx
            .log
            .push("fia", None, "transfer result transferred");
        // Our call to the far end stays until the caller's INVITE with Replaces ends it, for
        // a while at most.
        if let Some(out) = self.ctx.outgoing.clone() {
            let Bridge {
                leg, mut events, ..
            } = b;
            tokio::spawn(
                async move {
                    let ended = tokio::time::timeout(HAND_OVER_GRACE, async {
                        while let Some(ev) = events.recv().await {
                            if matches!(
                                ev,
                                LegEvent::Failed { .. }
                                    | LegEvent::Ended { .. }
                                    | LegEvent::BadDestination
                            ) {
                                return;
                            }
                        }
                    })
                    .await;
                    if ended.is_err() {
                        tracing::info!("consultation: the far end was not taken over; hanging up");
                        out.hang_up(leg);
                    }
                }
                .in_current_span(),
            );
        }
        self.send(Input::TransferResult {
            status: "transferred".into(),
            duration_ms: 0,
        });
    }

    /// Hangs up the transfer's outgoing call, if one runs (the caller is gone or the dialog
    /// ended); the transfer's kind if there was one.
    fn end_bridge(&mut self, why: &str) -> Option<TransferKind> {
        self.pending_bridge = None;
        let b = self.bridge.take()?;
        tracing::info!(why, "transfer: hanging up the outgoing call");
        if let Some(t) = &b.handing_over {
            t.abort();
        }
        if let Some(out) = &self.ctx.outgoing {
            out.hang_up(b.leg);
        }
        Some(b.kind)
    }

    async fn on_media(&mut self, ev: MediaEventKind) {
        if let MediaEventKind::RecordDone(rec) = ev {
            if self.recording {
                self.recording = false;
                if self.media && rec.end != RecordEnd::Stopped {
                    self.recorded(rec).await;
                } else {
                    // The runner never stops a recording: the stream went away with the
                    // caller (VoiceXML 2.0 §2.3.6).
                    self.recorded_at_hangup(rec).await;
                }
            }
            return;
        }
        if !self.media {
            return;
        }
        match ev {
            MediaEventKind::Dtmf { digit, source } => {
                // A bridge whose transfer has no grammar: the caller's keys are for the far
                // end (in-band ones reach it with the audio already).
                if let Some(b) = &self.bridge {
                    if let (true, Some((far, _)), DtmfSource::Rfc4733) =
                        (b.relay_dtmf, b.answered, source)
                    {
                        if b.kind == TransferKind::Bridge {
                            if let Err(e) = self.ctx.media.send_dtmf(far, &digit.to_string()) {
                                tracing::debug!(error = %e, "DTMF not relayed");
                            }
                        }
                    }
                }
                if let Some((_, true)) = self.playing {
                    // Barge-in: the key stops the prompts queued so far.
                    self.queued.clear();
                    let _ = self.ctx.media.stop_play(self.ctx.stream);
                    self.ctx.log.push("fia", None, &format!("barge-in {digit}"));
                }
                self.send(Input::Dtmf(digit));
            }
            MediaEventKind::PlayDone { play, .. } => {
                if self.playing.is_some_and(|(id, _)| id == play) {
                    self.playing = None;
                    self.play_next();
                }
            }
            MediaEventKind::RecordDone(_) | MediaEventKind::RtpTimeout => {}
        }
    }

    async fn recorded(&mut self, rec: Recording) {
        let duration_ms = rec.samples.len() as u64 / 8;
        let termchar = match rec.end {
            RecordEnd::Dtmf(c) => Some(c),
            _ => None,
        };
        let url = self.save_recording(&rec).await.map(|(url, _)| url);
        self.send(Input::RecordingDone {
            url,
            duration_ms,
            termchar,
        });
    }

    /// The recording the caller's hangup ended: saved, and sent with the hangup (now, or when
    /// the runner notices it).
    async fn recorded_at_hangup(&mut self, rec: Recording) {
        let duration_ms = rec.samples.len() as u64 / 8;
        let saved = self.save_recording(&rec).await;
        let size = saved.as_ref().map_or(0, |(_, size)| *size);
        let input = Input::HangupDuringRecording {
            url: saved.map(|(url, _)| url),
            duration_ms,
            size,
        };
        if self.done.is_some() {
            self.hangup_recording = Some(input);
        } else {
            self.awaiting_recording = None;
            self.send(input);
        }
    }

    /// Writes the recording's WAV (when the caller said something): its `file://` URL and
    /// size.
    async fn save_recording(&mut self, rec: &Recording) -> Option<(String, u64)> {
        let duration_ms = rec.samples.len() as u64 / 8;
        if !rec.heard_speech {
            return None;
        }
        self.recordings += 1;
        let path = self
            .ctx
            .recordings_dir
            .join(recording_file(&self.ctx.call_id, self.recordings));
        let wav = switchboard_media::audio::write_wav(&rec.samples, 8000);
        match save(&path, &wav).await {
            Ok(()) => {
                tracing::info!(path = %path.display(), duration_ms, "recording saved");
                let url = format!("file://{}", path.display());
                self.recorded.insert(url.clone(), path.clone());
                Some((url, wav.len() as u64))
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot save the recording");
                None
            }
        }
    }
}

/// The `event` label of `vxml_errors_total`: the platform's error events (VoiceXML 2.0 §5.2.6)
/// by name, cut to four components (`error.badfetch.http.404`,
/// `error.unsupported.transfer.bridge`); events an application makes up are all
/// `error.application`, so that no application can grow the label set without bound.
fn error_label(name: &str) -> String {
    const PLATFORM: [&str; 6] = [
        "error.badfetch",
        "error.semantic",
        "error.noauthorization",
        "error.noresource",
        "error.unsupported",
        "error.connection",
    ];
    let known = PLATFORM
        .iter()
        .any(|p| name == *p || name.strip_prefix(p).is_some_and(|r| r.starts_with('.')));
    if !known {
        return "error.application".to_owned();
    }
    name.split('.')
        .take(4)
        .map(|c| {
            c.chars()
                .filter(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-'))
                .take(24)
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(".")
}

async fn save(path: &PathBuf, wav: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::write(path, wav).await
}

/// `vxml-<call-id>-<n>.wav`, the call id made safe for a file name.
fn recording_file(call_id: &str, n: u32) -> String {
    format!("vxml-{}-{n}.wav", super::role::safe_file_stem(call_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_labels_are_bounded() {
        assert_eq!(
            error_label("error.badfetch.http.404"),
            "error.badfetch.http.404"
        );
        assert_eq!(error_label("error.semantic"), "error.semantic");
        assert_eq!(
            error_label("error.unsupported.transfer.bridge.extra"),
            "error.unsupported.transfer.bridge"
        );
        assert_eq!(error_label("error.myapp.x1"), "error.application");
        assert_eq!(error_label("error.semanticx"), "error.application");
        assert_eq!(
            error_label("error.badfetch.http.4\"04"),
            "error.badfetch.http.404"
        );
    }

    #[test]
    fn recording_files_are_safe_names() {
        assert_eq!(recording_file("a/b@c", 2), "vxml-a_b_c-2.wav");
    }
}
