//! Async glue of the media server: binds the SIP sockets, starts the media engine and the
//! prompt cache, runs the UA core on the `sip-net` driver, and turns the core's outputs and the
//! engine's events into each other. REST: `GET /v1/mcp/calls`, `GET /v1/conferences/{id}`,
//! `POST /v1/conferences/{id}/participants/{call_id}/mute` (and `/unmute`), and
//! `POST /v1/conferences/{id}/participants/{call_id}/mode` with `{"mode": "normal" | "muted" |
//! "listen" | "whisper", "to": "<call-id>"}` for supervisors (listen: hears everyone, heard by
//! nobody; whisper: heard only by the participant `to`), and
//! `POST /v1/mcp/sessions/{call_id}/dtmf` with `{"digits": "123#"}` to send DTMF to a caller,
//! and `GET /v1/mcp/sessions/{call_id}/log` for a VoiceXML dialog's log.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use switchboard_config::Config;
use switchboard_media::{
    EngineConfig, MediaEngine, MediaEvent, MediaEventKind, ParticipantMode, PlayItem, Playlist,
    PromptCache, PromptSettings, RecordEnd, RecordParams, StreamId, StreamParams,
};
use switchboard_sip::transaction::Timers;
use switchboard_sip_net::{Driver, NetConfig, Sockets};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::dialog::{
    DialRequest, DialogContext, DialogLog, DialogOutcome, DialogRunner, OutgoingCalls, Transferrer,
};
use super::service::{valid_conference_id, Announcement, Service};
use super::ua::{
    LegEvent, LegId, McpCommand, McpOutput, McpUa, SessionId, StreamSetup, UaSettings,
};
use crate::problem::ApiProblem;

/// A started media server.
pub struct McpRunning {
    pub router: Router,
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// How many ended calls `GET /v1/mcp/calls` keeps.
const ENDED_KEPT: usize = 100;
/// The play id of a call's service prompt.
const SERVICE_PLAY: u64 = 1;

/// What the glue knows about a call.
#[derive(Debug, Clone)]
struct CallInfo {
    session: SessionId,
    stream: StreamId,
    call_id: String,
    caller: String,
    service: &'static str,
    conference: Option<String>,
    muted: bool,
    /// Conference mode: `normal`, `muted`, `listen` or `whisper`.
    mode: String,
    digits: String,
    recording: Option<String>,
    /// Set when the prompt could not be loaded and the fallback played instead.
    fallback: bool,
    end: Option<&'static str>,
    /// Dialogs: the VoiceXML URL and the call's log.
    dialog: Option<(String, DialogLog)>,
}

impl CallInfo {
    fn json(&self) -> serde_json::Value {
        json!({
            "call_id": self.call_id,
            "caller": self.caller,
            "service": self.service,
            "stream": self.stream.to_string(),
            "conference": self.conference,
            "muted": self.muted,
            "digits": self.digits,
            "recording": self.recording,
            "fallback": self.fallback,
            "end": self.end,
            "voicexml": self.dialog.as_ref().map(|(url, _)| url),
        })
    }
}

#[derive(Default)]
struct Calls {
    active: HashMap<StreamId, CallInfo>,
    ended: VecDeque<CallInfo>,
    /// Dialog runners' event feeds and tasks, by stream.
    dialogs: HashMap<
        StreamId,
        (
            mpsc::UnboundedSender<MediaEventKind>,
            tokio::task::AbortHandle,
        ),
    >,
    /// The event feeds of dialogs whose call ended, for the recording that the stream's
    /// removal stops (VoiceXML 2.0 §2.3.6: a caller who hangs up while recording leaves the
    /// recording to the application); each is dropped once that arrives or after
    /// [`CLOSING_FEED`].
    closing: HashMap<StreamId, mpsc::UnboundedSender<MediaEventKind>>,
}

/// How long a dialog whose call ended still gets its stream's last recording.
const CLOSING_FEED: Duration = Duration::from_secs(2);

impl Calls {
    /// The call of a stream, running or recently ended.
    fn find_mut(&mut self, stream: StreamId) -> Option<&mut CallInfo> {
        if self.active.contains_key(&stream) {
            return self.active.get_mut(&stream);
        }
        self.ended.iter_mut().rev().find(|c| c.stream == stream)
    }
}

struct Glue {
    engine: MediaEngine,
    prompts: Arc<PromptCache>,
    fallback: String,
    recordings_dir: PathBuf,
    max_record_s: u32,
    calls: Mutex<Calls>,
    commands: mpsc::Sender<McpCommand>,
    runner: Option<Arc<dyn DialogRunner>>,
    /// Dialogs' REFERs waiting for their answer, by stream.
    refers: Mutex<HashMap<StreamId, tokio::sync::oneshot::Sender<u16>>>,
    /// Dialogs' outgoing calls: where their events go, by leg.
    legs: Mutex<HashMap<LegId, mpsc::UnboundedSender<LegEvent>>>,
    next_leg: AtomicU64,
    /// The streams of answered outgoing calls (hung up when their RTP stops).
    leg_streams: Mutex<std::collections::HashSet<StreamId>>,
}

/// A dialog's view of the glue for outgoing calls.
struct GlueCalls(std::sync::Weak<Glue>);

impl OutgoingCalls for GlueCalls {
    fn dial(&self, req: DialRequest) -> (LegId, mpsc::UnboundedReceiver<LegEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let Some(glue) = self.0.upgrade() else {
            let _ = tx.send(LegEvent::Failed { status: 503 });
            return (0, rx);
        };
        let leg = glue.next_leg.fetch_add(1, Ordering::Relaxed);
        glue.legs().insert(leg, tx);
        let affinity = glue.engine.affinity_of(req.near);
        glue.command_now(McpCommand::Dial {
            leg,
            dest: req.dest,
            caller: req.caller,
            affinity,
            ring_timeout: req.ring_timeout,
            aai: req.aai,
        });
        (leg, rx)
    }

    fn hang_up(&self, leg: LegId) {
        if let Some(glue) = self.0.upgrade() {
            glue.command_now(McpCommand::HangupLeg { leg });
        }
    }

    fn hand_over(
        &self,
        near: StreamId,
        leg: LegId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send>> {
        let glue = self.0.clone();
        Box::pin(async move {
            let Some(glue) = glue.upgrade() else {
                return 503;
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            glue.refers().insert(near, tx);
            glue.command(McpCommand::ReferToLeg { stream: near, leg })
                .await;
            drop(glue);
            rx.await.unwrap_or(481)
        })
    }
}

impl Glue {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refers(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<StreamId, tokio::sync::oneshot::Sender<u16>>> {
        self.refers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A dialog's blind transfer: REFER on `stream`, resolved with its final status.
    fn transferrer(self: &Arc<Self>, stream: StreamId) -> Transferrer {
        let glue = Arc::downgrade(self);
        Arc::new(move |target: String| {
            let glue = glue.clone();
            Box::pin(async move {
                let Some(glue) = glue.upgrade() else {
                    return 503;
                };
                let (tx, rx) = tokio::sync::oneshot::channel();
                glue.refers().insert(stream, tx);
                glue.command(McpCommand::Refer { stream, target }).await;
                drop(glue);
                rx.await.unwrap_or(481)
            })
        })
    }

    fn legs(&self) -> std::sync::MutexGuard<'_, HashMap<LegId, mpsc::UnboundedSender<LegEvent>>> {
        self.legs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a command from synchronous code: at once when the queue has room, else from a
    /// task.
    fn command_now(self: &Arc<Self>, cmd: McpCommand) {
        match self.commands.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let glue = self.clone();
                tokio::spawn(async move { glue.command(cmd).await });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("the SIP core has stopped; command dropped");
            }
        }
    }

    async fn command(&self, cmd: McpCommand) {
        if self.commands.send(cmd).await.is_err() {
            tracing::debug!("the SIP core has stopped; command dropped");
        }
    }

    fn params(setup: &StreamSetup, affinity: Option<u64>) -> StreamParams {
        StreamParams {
            remote: setup.remote,
            codec: setup.codec,
            telephone_event: setup.telephone_event,
            // In-band detection only when the peer does not send RFC 4733 events (talk-off).
            inband_dtmf: setup.telephone_event.is_none(),
            send: setup.send,
            receive: setup.receive,
            affinity,
        }
    }

    async fn on_output(self: &Arc<Self>, out: McpOutput) {
        match out {
            McpOutput::Allocate {
                session,
                setup,
                affinity,
            } => {
                let result = self
                    .engine
                    .create_stream(Self::params(&setup, affinity))
                    .map_err(|e| e.to_string());
                self.command(McpCommand::Allocated { session, result })
                    .await;
            }
            McpOutput::Update { stream, setup } => {
                if let Err(e) = self
                    .engine
                    .update_stream(stream, Self::params(&setup, None))
                {
                    tracing::warn!(%stream, error = %e, "stream update failed");
                }
            }
            McpOutput::Start {
                session,
                stream,
                service,
                call_id,
                caller,
                session_vars,
            } => self.start_service(session, stream, service, call_id, caller, session_vars),
            McpOutput::Leg { leg, event } => {
                if let LegEvent::Answered { stream } = &event {
                    self.leg_streams
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(*stream);
                }
                let last = matches!(
                    event,
                    LegEvent::Failed { .. } | LegEvent::Ended { .. } | LegEvent::BadDestination
                );
                let delivered = {
                    let mut legs = self.legs();
                    let delivered = legs
                        .get(&leg)
                        .is_some_and(|tx| tx.send(event.clone()).is_ok());
                    if last || !delivered {
                        legs.remove(&leg);
                    }
                    delivered
                };
                if !delivered && !last {
                    // Nobody waits for this call any more (the dialog ended): hang it up.
                    tracing::info!(leg, ?event, "outgoing call without a dialog: hanging up");
                    self.command(McpCommand::HangupLeg { leg }).await;
                }
            }
            McpOutput::ReferResult { stream, status } => {
                tracing::info!(%stream, status, "transfer answered");
                if let Some(tx) = self.refers().remove(&stream) {
                    let _ = tx.send(status);
                }
            }
            McpOutput::Release {
                session,
                stream,
                reason,
            } => {
                let Some(stream) = stream else { return };
                self.refers().remove(&stream);
                self.leg_streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&stream);
                let mut calls = self.calls();
                if let Some((tx, task)) = calls.dialogs.remove(&stream) {
                    task.abort();
                    // The stream's removal below ends a recording in progress: its samples
                    // still go to the dialog, which outlives the call.
                    calls.closing.insert(stream, tx);
                    let glue = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(CLOSING_FEED).await;
                        glue.calls().closing.remove(&stream);
                    });
                }
                if let Some(mut info) = calls.active.remove(&stream) {
                    info.end = Some(reason);
                    tracing::info!(session, %stream, call_id = %info.call_id, reason, digits = %info.digits, "call ended");
                    calls.ended.push_back(info);
                    while calls.ended.len() > ENDED_KEPT {
                        calls.ended.pop_front();
                    }
                }
                drop(calls);
                if let Err(e) = self.engine.remove_stream(stream) {
                    tracing::debug!(%stream, error = %e, "stream removal failed");
                }
            }
        }
    }

    fn start_service(
        self: &Arc<Self>,
        session: SessionId,
        stream: StreamId,
        service: Service,
        call_id: String,
        caller: String,
        session_vars: serde_json::Value,
    ) {
        let dialog = match &service {
            Service::Dialog { voicexml } => Some((voicexml.clone(), DialogLog::default())),
            _ => None,
        };
        let info = CallInfo {
            session,
            stream,
            call_id: call_id.clone(),
            caller: caller.clone(),
            service: service.kind(),
            conference: None,
            muted: false,
            mode: "normal".to_owned(),
            digits: String::new(),
            recording: None,
            fallback: false,
            end: None,
            dialog: dialog.clone(),
        };
        self.calls().active.insert(stream, info);
        tracing::info!(session, %stream, %call_id, service = service.kind(), "service starts");
        match service {
            Service::Announcement(a) => {
                let glue = self.clone();
                tokio::spawn(async move { glue.announce(stream, a).await });
            }
            Service::Conference(id) => {
                if let Err(e) = self.engine.join(stream, &id, ParticipantMode::Normal) {
                    tracing::warn!(%stream, conference = %id, error = %e, "join failed");
                    return;
                }
                if let Some(c) = self.calls().active.get_mut(&stream) {
                    c.conference = Some(id);
                }
            }
            Service::Record(o) => {
                let max = o.max_s.unwrap_or(self.max_record_s).min(self.max_record_s);
                let params = RecordParams {
                    beep: o.beep,
                    max_time_ms: max.saturating_mul(1000),
                    final_silence_ms: o.final_silence_ms,
                    dtmf_term: o.dtmf_term,
                    ..RecordParams::default()
                };
                if let Err(e) = self.engine.record(stream, params) {
                    tracing::warn!(%stream, error = %e, "record failed");
                }
            }
            // Outgoing calls are never started as a service (the dialog that placed one
            // bridges it).
            Service::Outgoing => {}
            Service::Dialog { voicexml } => {
                let Some(runner) = self.runner.clone() else {
                    // The core refuses dialogs without a runner; nothing to run.
                    return;
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let log = dialog.map(|(_, log)| log).unwrap_or_default();
                let ctx = DialogContext {
                    url: voicexml,
                    call_id: call_id.clone(),
                    caller,
                    session_vars,
                    stream,
                    media: self.engine.clone(),
                    prompts: self.prompts.clone(),
                    events: rx,
                    recordings_dir: self.recordings_dir.clone(),
                    log,
                    transfer: Some(self.transferrer(stream)),
                    outgoing: Some(Arc::new(GlueCalls(Arc::downgrade(self)))),
                };
                let glue = self.clone();
                let task = tokio::spawn(async move {
                    let outcome = runner.run(ctx).await;
                    tracing::info!(%stream, %call_id, ?outcome, "dialog finished");
                    // RFC 5552: the results of <exit> and <disconnect> go in our BYE.
                    let (reason, body) = match &outcome {
                        DialogOutcome::Exit(v) => {
                            ("dialog exit".to_owned(), super::rfc5552::bye_body(v))
                        }
                        DialogOutcome::Disconnect(v) => {
                            ("dialog disconnect".to_owned(), super::rfc5552::bye_body(v))
                        }
                        DialogOutcome::Error(e) => (format!("dialog error: {e}"), None),
                    };
                    let reason: String = reason.chars().take(200).collect();
                    glue.command(McpCommand::Hangup {
                        stream,
                        reason,
                        body,
                    })
                    .await;
                });
                self.calls()
                    .dialogs
                    .insert(stream, (tx, task.abort_handle()));
            }
        }
    }

    /// Loads the prompt (or the fallback when it cannot be loaded) and plays it.
    async fn announce(&self, stream: StreamId, a: Announcement) {
        let voice = a.locale.as_deref();
        let item = match self.prompts.load_url(&a.play, voice).await {
            Ok(item) => item,
            Err(e) => {
                tracing::warn!(%stream, url = %a.play, error = %e, "prompt unavailable: playing the fallback");
                metrics::counter!("mcp_prompt_failures_total").increment(1);
                if let Some(c) = self.calls().find_mut(stream) {
                    c.fallback = true;
                }
                match self.prompts.load_url(&self.fallback, voice).await {
                    Ok(item) => item,
                    Err(e) => {
                        tracing::warn!(%stream, url = %self.fallback, error = %e, "fallback prompt unavailable: one second of silence");
                        PlayItem::Silence { ms: 1000 }
                    }
                }
            }
        };
        let list = Playlist {
            items: vec![item],
            repeat: a.repeat,
            delay_ms: a.delay_ms,
            max_duration_ms: a.duration_ms,
        };
        if let Err(e) = self.engine.play(stream, SERVICE_PLAY, list) {
            tracing::debug!(%stream, error = %e, "play failed");
        }
    }

    async fn on_event(&self, ev: MediaEvent) {
        let stream = ev.stream;
        let mut hangup = None;
        let mut save = None;
        {
            let mut calls = self.calls();
            if let Some((tx, _)) = calls.dialogs.get(&stream) {
                let _ = tx.send(ev.kind.clone());
            } else if matches!(ev.kind, MediaEventKind::RecordDone(_)) {
                if let Some(tx) = calls.closing.remove(&stream) {
                    let _ = tx.send(ev.kind.clone());
                }
            }
            let is_dialog = calls.dialogs.contains_key(&stream);
            let call = calls.find_mut(stream);
            match &ev.kind {
                MediaEventKind::Dtmf { digit, source } => {
                    tracing::info!(%stream, %digit, ?source, "DTMF detected");
                    if let Some(c) = call {
                        c.digits.push(*digit);
                    }
                }
                MediaEventKind::PlayDone { play, completed } => {
                    let annc = call.is_some_and(|c| c.service == "annc" && c.end.is_none());
                    if annc && *play == SERVICE_PLAY && *completed {
                        hangup = Some("announcement complete".to_owned());
                    }
                }
                MediaEventKind::RtpTimeout => {
                    let leg = self
                        .leg_streams
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&stream);
                    if leg || call.is_some_and(|c| c.end.is_none()) {
                        tracing::info!(%stream, "no RTP received: hanging up");
                        hangup = Some("RTP timeout".to_owned());
                    }
                }
                MediaEventKind::RecordDone(rec) => {
                    // A recording that ended by itself (max time, silence, DTMF) ends the call.
                    let running = call
                        .as_ref()
                        .is_some_and(|c| c.service == "record" && c.end.is_none());
                    if running && rec.end != RecordEnd::Stopped {
                        hangup = Some(format!("recording complete ({:?})", rec.end));
                    }
                    if is_dialog {
                        // A dialog's recording: its runner saves it.
                        return;
                    }
                    let name = call
                        .map(|c| recording_name(&c.call_id, stream))
                        .unwrap_or_else(|| format!("{stream}.wav"));
                    let path = self.recordings_dir.join(name);
                    let wav = switchboard_media::audio::write_wav(&rec.samples, 8000);
                    save = Some((path, wav, rec.end));
                }
            }
        }
        if let Some((path, wav, end)) = save {
            self.save_recording(stream, path, wav, end).await;
        }
        if let Some(reason) = hangup {
            self.command(McpCommand::Hangup {
                stream,
                reason,
                body: None,
            })
            .await;
        }
    }

    async fn save_recording(&self, stream: StreamId, path: PathBuf, wav: Vec<u8>, end: RecordEnd) {
        let write = async {
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::write(&path, &wav).await
        };
        match write.await {
            Ok(()) => {
                tracing::info!(%stream, path = %path.display(), bytes = wav.len(), ?end, "recording saved");
                if let Some(c) = self.calls().find_mut(stream) {
                    c.recording = Some(path.display().to_string());
                }
            }
            Err(e) => {
                tracing::warn!(%stream, path = %path.display(), error = %e, "cannot save recording")
            }
        }
    }
}

/// `<call-id>-<stream>.wav` with anything but `[A-Za-z0-9._-]` replaced.
fn recording_name(call_id: &str, stream: StreamId) -> String {
    format!("{}-{stream}.wav", safe_file_stem(call_id))
}

/// A call id as a file name: at most 96 characters, anything but `[A-Za-z0-9._-]` replaced.
pub(super) fn safe_file_stem(call_id: &str) -> String {
    call_id
        .chars()
        .take(96)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn problem(status: StatusCode, detail: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    ApiProblem::new(status.as_u16(), title, detail).into_response()
}

async fn list_calls(State(glue): State<Arc<Glue>>) -> Response {
    let calls = glue.calls();
    let mut active: Vec<&CallInfo> = calls.active.values().collect();
    active.sort_by_key(|c| c.session);
    let body = json!({
        "active": active.iter().map(|c| c.json()).collect::<Vec<_>>(),
        "ended": calls.ended.iter().map(CallInfo::json).collect::<Vec<_>>(),
    });
    Json(body).into_response()
}

async fn get_conference(State(glue): State<Arc<Glue>>, Path(id): Path<String>) -> Response {
    if !valid_conference_id(&id) {
        return problem(StatusCode::BAD_REQUEST, "bad conference id");
    }
    let calls = glue.calls();
    let mut members: Vec<&CallInfo> = calls
        .active
        .values()
        .filter(|c| c.conference.as_deref() == Some(id.as_str()))
        .collect();
    if members.is_empty() {
        return problem(StatusCode::NOT_FOUND, "no such conference");
    }
    members.sort_by_key(|c| c.session);
    let participants: Vec<_> = members
        .iter()
        .map(|c| json!({ "call_id": c.call_id, "caller": c.caller, "muted": c.muted, "mode": c.mode }))
        .collect();
    Json(json!({ "id": id, "participants": participants })).into_response()
}

async fn set_mute(glue: Arc<Glue>, id: String, call_id: String, muted: bool) -> Response {
    if !valid_conference_id(&id) {
        return problem(StatusCode::BAD_REQUEST, "bad conference id");
    }
    let stream = {
        let mut calls = glue.calls();
        let Some(c) = calls
            .active
            .values_mut()
            .find(|c| c.conference.as_deref() == Some(id.as_str()) && c.call_id == call_id)
        else {
            return problem(StatusCode::NOT_FOUND, "no such participant");
        };
        c.muted = muted;
        c.mode = if muted { "muted" } else { "normal" }.to_owned();
        c.stream
    };
    let mode = if muted {
        ParticipantMode::Muted
    } else {
        ParticipantMode::Normal
    };
    if let Err(e) = glue.engine.set_mode(stream, mode) {
        return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    tracing::info!(conference = %id, %call_id, muted, "participant mode changed");
    Json(json!({ "call_id": call_id, "muted": muted })).into_response()
}

/// `POST .../participants/{call_id}/mode`.
async fn set_mode(
    State(glue): State<Arc<Glue>>,
    Path((id, call_id)): Path<(String, String)>,
    body: String,
) -> Response {
    if !valid_conference_id(&id) {
        return problem(StatusCode::BAD_REQUEST, "bad conference id");
    }
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}")),
    };
    let mode_name = v["mode"].as_str().unwrap_or("");
    let to = v["to"].as_str();
    let (stream, mode) = {
        let mut calls = glue.calls();
        let in_conf = |c: &CallInfo, who: &str| {
            c.conference.as_deref() == Some(id.as_str()) && c.call_id == who
        };
        let target = match (mode_name, to) {
            ("whisper", Some(to)) if to != call_id => {
                match calls.active.values().find(|c| in_conf(c, to)) {
                    Some(c) => Some(c.stream),
                    None => {
                        return problem(StatusCode::NOT_FOUND, "no such participant to whisper to")
                    }
                }
            }
            ("whisper", _) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "whisper needs \"to\": the call id of another participant",
                )
            }
            _ => None,
        };
        let mode = match (mode_name, target) {
            ("normal", _) => ParticipantMode::Normal,
            ("muted", _) => ParticipantMode::Muted,
            ("listen", _) => ParticipantMode::Listen,
            ("whisper", Some(t)) => ParticipantMode::Whisper { to: t.0 },
            _ => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "mode must be \"normal\", \"muted\", \"listen\" or \"whisper\"",
                )
            }
        };
        let Some(c) = calls.active.values_mut().find(|c| in_conf(c, &call_id)) else {
            return problem(StatusCode::NOT_FOUND, "no such participant");
        };
        c.muted = !mode.is_heard();
        c.mode = mode_name.to_owned();
        (c.stream, mode)
    };
    if let Err(e) = glue.engine.set_mode(stream, mode) {
        return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    tracing::info!(conference = %id, %call_id, mode = mode_name, "participant mode changed");
    Json(json!({ "call_id": call_id, "mode": mode_name })).into_response()
}

/// `POST /v1/mcp/sessions/{call_id}/dtmf` with `{"digits": "123#"}`: sends the digits on
/// the call's stream (RFC 4733 events when telephone-event was negotiated, else in-band).
async fn send_dtmf(
    State(glue): State<Arc<Glue>>,
    Path(call_id): Path<String>,
    body: String,
) -> Response {
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}")),
    };
    let Some(digits) = v["digits"].as_str() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "\"digits\" must be a string of 0-9 * # A-D",
        );
    };
    if let Err(e) = switchboard_media::valid_digits(digits) {
        return problem(StatusCode::BAD_REQUEST, &e);
    }
    let stream = glue
        .calls()
        .active
        .values()
        .find(|c| c.call_id == call_id)
        .map(|c| c.stream);
    let Some(stream) = stream else {
        return problem(StatusCode::NOT_FOUND, "no such call");
    };
    if let Err(e) = glue.engine.send_dtmf(stream, digits) {
        return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
    }
    metrics::counter!("mcp_dtmf_sent_total").increment(digits.chars().count() as u64);
    tracing::info!(%call_id, %stream, digits, "sending DTMF");
    (
        StatusCode::ACCEPTED,
        Json(json!({ "call_id": call_id, "digits": digits })),
    )
        .into_response()
}

/// `GET /v1/mcp/sessions/{call_id}/log`: a dialog's log (running or recently ended).
async fn dialog_log(State(glue): State<Arc<Glue>>, Path(call_id): Path<String>) -> Response {
    let calls = glue.calls();
    let found = calls
        .active
        .values()
        .find(|c| c.call_id == call_id && c.dialog.is_some())
        .or_else(|| {
            calls
                .ended
                .iter()
                .rev()
                .find(|c| c.call_id == call_id && c.dialog.is_some())
        });
    let Some(c) = found else {
        return problem(StatusCode::NOT_FOUND, "no such dialog");
    };
    let Some((url, log)) = &c.dialog else {
        return problem(StatusCode::NOT_FOUND, "no such dialog");
    };
    let mut body = log.json();
    body["call_id"] = json!(c.call_id);
    body["voicexml"] = json!(url);
    body["active"] = json!(c.end.is_none());
    Json(body).into_response()
}

async fn mute(
    State(glue): State<Arc<Glue>>,
    Path((id, call_id)): Path<(String, String)>,
) -> Response {
    set_mute(glue, id, call_id, true).await
}

async fn unmute(
    State(glue): State<Arc<Glue>>,
    Path((id, call_id)): Path<(String, String)>,
) -> Response {
    set_mute(glue, id, call_id, false).await
}

/// Starts the media server: SIP on `[mcp] udp/tcp`, RTP from `[mcp]`'s port range.
pub async fn start(
    cfg: Arc<Config>,
    drain: CancellationToken,
    runner: Option<Arc<dyn DialogRunner>>,
) -> anyhow::Result<McpRunning> {
    let m = &cfg.mcp;
    let net = NetConfig {
        udp: Some(m.udp),
        tcp: m.tcp,
        max_message_bytes: cfg.sip.max_message_bytes,
        drain_grace: Duration::from_millis(cfg.drain.grace_ms),
    };
    let sockets = Sockets::bind(&net).await.with_context(|| {
        format!(
            "cannot bind the media server's SIP sockets (mcp.udp {:?}, mcp.tcp {:?})",
            net.udp, net.tcp
        )
    })?;
    let (udp, tcp) = (sockets.local_udp, sockets.local_tcp);
    let (engine, mut events) = MediaEngine::start(EngineConfig {
        bind_ip: m.rtp_ip,
        port_min: m.rtp_port_min,
        port_max: m.rtp_port_max,
        workers: usize::from(m.workers),
        rtp_timeout: (m.rtp_timeout_s > 0).then(|| Duration::from_secs(m.rtp_timeout_s)),
        realtime_priority: (m.realtime_priority > 0).then_some(m.realtime_priority),
        ..EngineConfig::default()
    })
    .context("cannot start the media engine")?;
    let extra_ca_pem = match cfg.mcp_extra_ca_file() {
        Some(path) => Some(
            std::fs::read(&path)
                .with_context(|| format!("cannot read mcp.extra_ca_file {}", path.display()))?,
        ),
        None => None,
    };
    let prompts = Arc::new(
        PromptCache::try_new(PromptSettings {
            media_dir: cfg.mcp_media_dir(),
            cache_dir: cfg.data_dir.join("tts-cache"),
            tts_command: m.tts_command.clone(),
            tts_voice: m.tts_voice.clone(),
            timeout: Duration::from_millis(m.fetch_timeout_ms),
            extra_ca_pem,
            ..PromptSettings::default()
        })
        .map_err(|e| anyhow::anyhow!("mcp.extra_ca_file: {e}"))?,
    );
    let ua = McpUa::new(
        UaSettings {
            udp,
            tcp,
            rtp_ip: m.rtp_ip,
            timers: Timers {
                t1: Duration::from_millis(cfg.sip.t1_ms),
                t2: Duration::from_millis(cfg.sip.t2_ms),
                t4: Duration::from_millis(cfg.sip.t4_ms),
                ..Timers::default()
            },
            dialog_runner: runner.is_some(),
            transfer_gateway: m.transfer_gateway,
        },
        rand::random(),
    );
    let (commands_tx, commands_rx) = mpsc::channel(1024);
    let (outputs_tx, mut outputs_rx) = mpsc::unbounded_channel();
    let glue = Arc::new(Glue {
        engine,
        prompts,
        fallback: m.fallback_prompt.clone(),
        recordings_dir: cfg.mcp_recordings_dir(),
        max_record_s: m.max_record_s,
        calls: Mutex::new(Calls::default()),
        commands: commands_tx,
        runner,
        refers: Mutex::new(HashMap::new()),
        legs: Mutex::new(HashMap::new()),
        next_leg: AtomicU64::new(1),
        leg_streams: Mutex::new(std::collections::HashSet::new()),
    });
    let router = Router::new()
        .route("/v1/mcp/calls", get(list_calls))
        .route("/v1/mcp/sessions/{call_id}/dtmf", post(send_dtmf))
        .route("/v1/mcp/sessions/{call_id}/log", get(dialog_log))
        .route("/v1/conferences/{id}", get(get_conference))
        .route(
            "/v1/conferences/{id}/participants/{call_id}/mute",
            post(mute),
        )
        .route(
            "/v1/conferences/{id}/participants/{call_id}/unmute",
            post(unmute),
        )
        .route(
            "/v1/conferences/{id}/participants/{call_id}/mode",
            post(set_mode),
        )
        .with_state(glue.clone());
    tracing::info!(?udp, ?tcp, rtp_ip = %m.rtp_ip, rtp_ports = %format!("{}-{}", m.rtp_port_min, m.rtp_port_max), "media server listening");

    let out_glue = glue.clone();
    let outputs = tokio::spawn(async move {
        while let Some(out) = outputs_rx.recv().await {
            out_glue.on_output(out).await;
        }
    });
    let ev_glue = glue.clone();
    let media_events = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            ev_glue.on_event(ev).await;
        }
    });
    let task = tokio::spawn(async move {
        let started = Instant::now();
        Driver::new(ua, sockets, net)?
            .run_controlled(drain, commands_rx, outputs_tx)
            .await;
        // Let the last outputs (releases) reach the engine, then stop the helpers.
        tokio::time::sleep(Duration::from_millis(50)).await;
        outputs.abort();
        media_events.abort();
        tracing::info!(
            uptime_s = started.elapsed().as_secs(),
            "media server stopped"
        );
        Ok(())
    });
    Ok(McpRunning {
        router,
        udp,
        tcp,
        task,
    })
}
