//! The sans-I/O orchestrator: strategy sessions by (tenant, ConnID), fed with route requests,
//! call events, routing replies, HTTP fetch results and the clock; it answers with
//! [`Action`]s for the glue to carry out (publish, fetch, persist). It never reads a clock:
//! `now` is wall-clock milliseconds since the UNIX epoch, given by the caller, so that
//! snapshots taken on one node keep their timers on another.

use super::elements::{self, Command, PlayKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use switchboard_bus::EntryId;
use switchboard_events::requests::{
    node_of, routing_requests_stream, sip_node_requests_stream, CallOp, CallRequest, RoutingReply,
    RoutingRequest, Treatment,
};
use switchboard_events::{CallAttrs, ConnId, ErrorAttrs, Event as CallEvent, UserData};
use switchboard_scxml::{Document, Environment, Event, Output, Session};

/// The name of the read-only system variable holding the call's context.
pub const CONTEXT_VAR: &str = "_genesys";

/// How long a session may live by default: 4 hours.
pub const DEFAULT_MAX_SESSION_MS: u64 = 4 * 3600 * 1000;

/// Version of the persisted session envelope.
const SAVED_VERSION: u32 = 1;

/// A session is the strategy of one call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    pub tenant: String,
    pub conn: ConnId,
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.tenant, self.conn)
    }
}

/// An HTTP request of `<sb:fetch>` for the glue to make.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub url: String,
    /// `GET` or `POST`.
    pub method: String,
    /// Sent as `application/json` (POST).
    pub body: Option<Json>,
}

/// What the glue reports for a [`FetchRequest`]: the status and the body parsed as JSON
/// (`null` when empty or not JSON), or why there was no answer.
pub type FetchResult = Result<(u16, Json), String>;

/// What the orchestrator asks the glue to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Publish `request` (JSON) on `stream` (the owning SIP Server's request stream).
    Call {
        stream: String,
        request: CallRequest,
    },
    /// Publish `request` on `stream` (`routing:{tenant}:requests`).
    Routing {
        stream: String,
        request: RoutingRequest,
    },
    /// Make an HTTP request and report it with [`Orchestrator::handle_fetch`].
    Fetch {
        key: SessionKey,
        id: u64,
        request: FetchRequest,
    },
    /// Store the session's snapshot (after the actions before it were carried out).
    Persist { key: SessionKey, snapshot: Vec<u8> },
    /// The session is over: delete its snapshot, release its lease.
    Ended { key: SessionKey, reason: String },
}

/// The call as the strategy sees it (`_genesys`), and where its requests go.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CallCtx {
    route_point: String,
    ani: Option<String>,
    dnis: Option<String>,
    other_dn: Option<String>,
    user_data: UserData,
    strategy_url: String,
    base: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TreatmentKind {
    Play,
    Collect,
}

impl TreatmentKind {
    fn prefix(self) -> &'static str {
        match self {
            TreatmentKind::Play => "play",
            TreatmentKind::Collect => "collect",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RouteWait {
    request_id: u64,
    to: String,
    /// `<sb:voicemail>`: done when the call leaves the route point for the mailbox.
    voicemail: bool,
    /// EventDiverted seen: the call left the route point for `to`.
    diverted: bool,
    /// Done on EventEstablished at `to` (else on EventDiverted).
    #[serde(default)]
    answer: bool,
}

/// What the host side of a session waits for. Part of the snapshot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Pending {
    treatment: Option<(u64, TreatmentKind)>,
    /// The routing `request_id` of the current submission.
    queue: Option<String>,
    /// When the call first entered a queue: kept for re-submissions.
    enqueued_ms: Option<u64>,
    route: Option<RouteWait>,
    /// Attach/update/release requests by id, with the event prefix to raise.
    ops: BTreeMap<u64, String>,
    fetches: BTreeMap<u64, FetchRequest>,
}

/// The host state of a session: everything but the SCXML session itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Host {
    key: SessionKey,
    call: CallCtx,
    next_id: u64,
    pending: Pending,
    /// The last event of `events:{tenant}` and reply of the reply stream that this session
    /// took into account: a node taking over replays what came after.
    events_pos: Option<(u64, u64)>,
    replies_pos: Option<(u64, u64)>,
    /// Set once the call is gone (abandoned, released): the session ends after this step.
    call_gone: bool,
    /// When the session started (ms since the epoch).
    #[serde(default)]
    started_ms: u64,
    /// Whether the call waits at the route point (it left for a RouteCall's target): the
    /// routing timeout the session set there is given back when the session ends.
    #[serde(default = "waiting")]
    at_route_point: bool,
}

fn waiting() -> bool {
    true
}

struct Live {
    host: Host,
    scxml: Session,
}

/// The persisted form of a session.
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    host: Host,
    /// [`Session::snapshot`] (JSON text).
    scxml: String,
}

fn pos(id: Option<(u64, u64)>) -> Option<EntryId> {
    id.map(|(ms, seq)| EntryId::new(ms, seq))
}

/// The orchestrator core: every session this node runs.
pub struct Orchestrator {
    /// Sessions older than this end (their call's events were lost, e.g. with its SIP Server).
    max_session_ms: u64,
    env: Environment,
    sessions: HashMap<SessionKey, Live>,
    out: VecDeque<Action>,
}

/// A loaded strategy: its document, its URL, and the base that relative URLs of its
/// elements (`src`, `url`) are resolved against.
#[derive(Clone)]
pub struct Strategy {
    pub url: String,
    pub base: String,
    pub doc: Arc<Document>,
}

/// The reply stream of a tenant's orchestrators: `orchestrator:{tenant}:replies`. Every node
/// reads it and keeps the replies of its own sessions, so a reply reaches whichever node runs
/// the session now (even one that took it over after the submission).
pub fn replies_stream(tenant: &str) -> String {
    format!("orchestrator:{tenant}:replies")
}

impl Default for Orchestrator {
    fn default() -> Self {
        Orchestrator::new()
    }
}

impl Orchestrator {
    pub fn new() -> Orchestrator {
        Orchestrator {
            max_session_ms: DEFAULT_MAX_SESSION_MS,
            env: elements::environment(),
            sessions: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// Sessions older than `ms` are ended by [`Orchestrator::handle_timers`].
    pub fn set_max_session_ms(&mut self, ms: u64) {
        self.max_session_ms = ms.max(1);
    }

    /// The environment strategies are loaded with (the `sb:` elements).
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn contains(&self, key: &SessionKey) -> bool {
        self.sessions.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &SessionKey> {
        self.sessions.keys()
    }

    /// The next action for the glue.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// The earliest timer (`<send delay>`) of any session.
    pub fn next_deadline(&self) -> Option<u64> {
        self.sessions
            .values()
            .filter_map(|l| l.scxml.next_deadline())
            .min()
    }

    /// The positions a session has consumed up to: (events, replies).
    pub fn positions(&self, key: &SessionKey) -> Option<(Option<EntryId>, Option<EntryId>)> {
        let h = &self.sessions.get(key)?.host;
        Some((pos(h.events_pos), pos(h.replies_pos)))
    }

    /// Starts `strategy` for the call of an EventRouteRequest (`attrs`, entry `at` of the
    /// events stream; `replies_at`: the end of the reply stream now, where replies to this
    /// session can start). A call that already has a session is left alone (false).
    pub fn start(
        &mut self,
        attrs: &CallAttrs,
        strategy: &Strategy,
        at: Option<EntryId>,
        replies_at: Option<EntryId>,
        now: u64,
    ) -> Result<bool, String> {
        let conn = attrs.conn_id.ok_or("EventRouteRequest without conn_id")?;
        let key = SessionKey {
            tenant: attrs.tenant.clone(),
            conn,
        };
        if self.sessions.contains_key(&key) {
            return Ok(false);
        }
        let host = Host {
            key: key.clone(),
            call: CallCtx {
                route_point: attrs.this_dn.clone(),
                ani: attrs.ani.clone(),
                dnis: attrs.dnis.clone(),
                other_dn: attrs.other_dn.clone(),
                user_data: attrs.user_data.clone(),
                strategy_url: strategy.url.clone(),
                base: strategy.base.clone(),
            },
            next_id: 1,
            pending: Pending::default(),
            events_pos: at.map(|a| (a.ms, a.seq)),
            replies_pos: replies_at.map(|a| (a.ms, a.seq)),
            call_gone: false,
            started_ms: now,
            at_route_point: true,
        };
        let mut scxml = Session::new(strategy.doc.clone(), self.env.clone(), key.to_string())
            .map_err(|e| format!("cannot create a session: {e}"))?;
        scxml.define_system_variable(CONTEXT_VAR, &context(&host))?;
        tracing::info!(tenant = %key.tenant, conn_id = %key.conn, route_point = %attrs.this_dn, strategy = %strategy.url, "strategy started");
        metrics::counter!("switchboard_orchestrator_sessions_started_total").increment(1);
        let mut live = Live { host, scxml };
        // The strategy decides how long its call waits, not the route point's timeout
        // (which is the limit for a call no strategy takes); the session's own limit stays.
        let keep = CallOp::SetRouteTimeout {
            timeout_ms: Some(self.max_session_ms),
        };
        self.call_op(&mut live.host, keep);
        self.sessions.insert(key.clone(), live);
        self.step(&key, now);
        Ok(true)
    }

    /// Restores a session persisted by another node (takeover). Its pending fetches are
    /// made again. Returns its key.
    pub fn restore(&mut self, bytes: &[u8], now: u64) -> Result<SessionKey, String> {
        let saved: Saved =
            serde_json::from_slice(bytes).map_err(|e| format!("bad session snapshot: {e}"))?;
        if saved.version != SAVED_VERSION {
            return Err(format!("session snapshot version {}", saved.version));
        }
        let mut scxml = Session::restore(saved.scxml.as_bytes(), self.env.clone())
            .map_err(|e| format!("cannot restore the strategy: {e}"))?;
        let host = saved.host;
        scxml.define_system_variable(CONTEXT_VAR, &context(&host))?;
        let key = host.key.clone();
        for (id, request) in &host.pending.fetches {
            self.out.push_back(Action::Fetch {
                key: key.clone(),
                id: *id,
                request: request.clone(),
            });
        }
        tracing::info!(tenant = %key.tenant, conn_id = %key.conn, "session taken over");
        metrics::counter!("switchboard_orchestrator_sessions_taken_over_total").increment(1);
        self.sessions.insert(key.clone(), Live { host, scxml });
        // Timers that fell due while nobody ran the session fire now.
        self.step(&key, now);
        Ok(key)
    }

    /// Forgets a session without ending it (its lease was lost: another node runs it).
    pub fn forget(&mut self, key: &SessionKey) -> bool {
        self.sessions.remove(key).is_some()
    }

    /// An entry of `events:{tenant}`: delivered to the session of its call, if this node runs
    /// it and has not seen the entry yet (replays after a takeover are harmless).
    pub fn handle_event(&mut self, at: Option<EntryId>, event: &CallEvent, now: u64) {
        let Some(key) = key_of(event) else { return };
        let Some(live) = self.sessions.get_mut(&key) else {
            return;
        };
        if let Some(at) = at {
            if pos(live.host.events_pos).is_some_and(|p| at <= p) {
                return;
            }
            live.host.events_pos = Some((at.ms, at.seq));
        }
        let delivered = map_event(&mut live.host, event);
        if let Some((name, data)) = delivered.raise {
            live.scxml.push_event(Event::external(&name, Some(data)));
        }
        if delivered.context_changed {
            let ctx = context(&live.host);
            if let Err(e) = live.scxml.define_system_variable(CONTEXT_VAR, &ctx) {
                tracing::warn!(tenant = %key.tenant, conn_id = %key.conn, error = %e, "cannot update the call context");
            }
        }
        self.step(&key, now);
    }

    /// A routing reply (entry `at` of the tenant's reply stream).
    pub fn handle_reply(
        &mut self,
        tenant: &str,
        at: Option<EntryId>,
        reply: &RoutingReply,
        now: u64,
    ) {
        let (request_id, conn) = match reply {
            RoutingReply::Target {
                request_id,
                conn_id,
                ..
            }
            | RoutingReply::Timeout {
                request_id,
                conn_id,
            }
            | RoutingReply::Rejected {
                request_id,
                conn_id,
                ..
            } => (request_id, *conn_id),
        };
        let key = SessionKey {
            tenant: tenant.to_owned(),
            conn,
        };
        let Some(live) = self.sessions.get_mut(&key) else {
            return;
        };
        if let Some(at) = at {
            if pos(live.host.replies_pos).is_some_and(|p| at <= p) {
                return;
            }
            live.host.replies_pos = Some((at.ms, at.seq));
        }
        // A reply to an older submission (replaced by a re-queue) means nothing now.
        if live.host.pending.queue.as_deref() != Some(request_id.as_str()) {
            return;
        }
        live.host.pending.queue = None;
        let (name, data) = match reply {
            RoutingReply::Target { agent_id, dn, .. } => {
                ("queue.target", json!({ "agent_id": agent_id, "dn": dn }))
            }
            RoutingReply::Timeout { .. } => ("queue.timeout", json!({})),
            RoutingReply::Rejected { reason, .. } => ("queue.error", json!({ "reason": reason })),
        };
        live.scxml.push_event(Event::external(name, Some(data)));
        self.step(&key, now);
    }

    /// The result of a fetch the session asked for with [`Action::Fetch`].
    pub fn handle_fetch(&mut self, key: &SessionKey, id: u64, result: FetchResult, now: u64) {
        let Some(live) = self.sessions.get_mut(key) else {
            return;
        };
        if live.host.pending.fetches.remove(&id).is_none() {
            return;
        }
        let (name, data) = match result {
            Ok((status, body)) if (200..300).contains(&status) => {
                ("fetch.done", json!({ "status": status, "body": body }))
            }
            Ok((status, body)) => (
                "fetch.error",
                json!({ "status": status, "body": body, "reason": format!("HTTP status {status}") }),
            ),
            Err(reason) => ("fetch.error", json!({ "reason": reason })),
        };
        live.scxml.push_event(Event::external(name, Some(data)));
        self.step(key, now);
    }

    /// Fires the timers due at `now`, and ends the sessions that outlived the maximum.
    pub fn handle_timers(&mut self, now: u64) {
        let expired: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, l)| now.saturating_sub(l.host.started_ms) > self.max_session_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(live) = self.sessions.remove(&key) {
                tracing::warn!(tenant = %key.tenant, conn_id = %key.conn, "session outlived the maximum: ended");
                self.end(live, "the session outlived the maximum".into());
            }
        }
        let due: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, l)| l.scxml.next_deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.step(&key, now);
        }
    }

    /// Runs a session's macrosteps, turns its outputs into actions, then persists it (or
    /// ends it).
    fn step(&mut self, key: &SessionKey, now: u64) {
        let Some(mut live) = self.sessions.remove(key) else {
            return;
        };
        let mut done = None;
        // Commands may answer at once (`queue.cancelled`): run until nothing is left.
        loop {
            let steps = live.scxml.run(now);
            while let Some(output) = live.scxml.poll_output() {
                match output {
                    Output::Extension { payload, .. } => self.command(&mut live, payload, now),
                    Output::Log { label, message, .. } => {
                        tracing::info!(tenant = %key.tenant, conn_id = %key.conn, label = label.as_deref().unwrap_or(""), "strategy log: {message}")
                    }
                    Output::Error { message, .. } => {
                        metrics::counter!("switchboard_orchestrator_errors_total").increment(1);
                        tracing::warn!(tenant = %key.tenant, conn_id = %key.conn, error = %message, "strategy error");
                    }
                    Output::HttpSend {
                        session, sendid, ..
                    } => {
                        // Strategies talk HTTP through <sb:fetch>, not Basic HTTP sends.
                        live.scxml
                            .http_send_failed(&session, sendid.as_deref(), false);
                    }
                    Output::SendToSession { target, .. } => {
                        tracing::warn!(tenant = %key.tenant, conn_id = %key.conn, target, "send to another session is not supported: dropped");
                    }
                    Output::Done { final_state, .. } => done = Some(final_state),
                }
            }
            if steps == 0 {
                break;
            }
        }
        // An error.communication (from a refused send) may need another run.
        if done.is_none() && live.scxml.is_done() {
            done = Some(live.scxml.final_state().map(str::to_owned));
        }
        if let Some(final_state) = done {
            let reason = format!("final state {}", final_state.as_deref().unwrap_or("-"));
            self.end(live, reason);
        } else if live.host.call_gone {
            self.end(live, "the call is gone".into());
        } else {
            match persist(&live) {
                Ok(snapshot) => self.out.push_back(Action::Persist {
                    key: key.clone(),
                    snapshot,
                }),
                Err(e) => {
                    metrics::counter!("switchboard_orchestrator_errors_total").increment(1);
                    tracing::error!(tenant = %key.tenant, conn_id = %key.conn, error = %e, "cannot snapshot the session");
                }
            }
            self.sessions.insert(key.clone(), live);
        }
    }

    fn end(&mut self, mut live: Live, reason: String) {
        let key = live.host.key.clone();
        if live.host.at_route_point && !live.host.call_gone {
            // A call the strategy left unrouted gets the route point's own timeout and
            // default route.
            self.call_op(&mut live.host, CallOp::SetRouteTimeout { timeout_ms: None });
        }
        if live.host.pending.queue.is_some() {
            self.out.push_back(Action::Routing {
                stream: routing_requests_stream(&key.tenant),
                request: RoutingRequest::Cancel {
                    tenant: key.tenant.clone(),
                    conn_id: key.conn,
                },
            });
        }
        tracing::info!(tenant = %key.tenant, conn_id = %key.conn, reason = %reason, "strategy ended");
        metrics::counter!("switchboard_orchestrator_sessions_ended_total").increment(1);
        self.out.push_back(Action::Ended { key, reason });
    }

    /// An extension element's command.
    fn command(&mut self, live: &mut Live, payload: Json, now: u64) {
        let key = live.host.key.clone();
        let cmd: Command = match serde_json::from_value(payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(tenant = %key.tenant, conn_id = %key.conn, error = %e, "bad extension command");
                return;
            }
        };
        let host = &mut live.host;
        let cmd = resolve_urls(cmd, &host.call.base);
        let id = host.next_id;
        host.next_id += 1;
        let op = match cmd {
            Command::Play {
                kind,
                url,
                params,
                repeat,
            } => {
                host.pending.treatment = Some((id, TreatmentKind::Play));
                CallOp::ApplyTreatment {
                    treatment: match kind {
                        PlayKind::Application => Treatment::PlayApplication { url, params },
                        PlayKind::Music => Treatment::Music { url },
                        PlayKind::Announcement => Treatment::PlayAnnouncement {
                            url,
                            repeat: repeat.unwrap_or(1),
                        },
                    },
                }
            }
            Command::Collect {
                prompt,
                max_digits,
                timeout_s,
            } => {
                host.pending.treatment = Some((id, TreatmentKind::Collect));
                CallOp::ApplyTreatment {
                    treatment: Treatment::CollectDigits {
                        prompt,
                        max_digits,
                        timeout_s,
                    },
                }
            }
            Command::Queue {
                queue,
                skills,
                agent_group,
                priority,
                timeout_s,
            } => {
                let request_id = format!("{}-{id}", key.conn);
                let enqueued_ms = *host.pending.enqueued_ms.get_or_insert(now);
                host.pending.queue = Some(request_id.clone());
                self.out.push_back(Action::Routing {
                    stream: routing_requests_stream(&key.tenant),
                    request: RoutingRequest::Submit {
                        tenant: key.tenant.clone(),
                        request_id,
                        conn_id: key.conn,
                        queue,
                        skills,
                        agent_group,
                        priority,
                        enqueued_ms,
                        timeout_s,
                        reply_to: replies_stream(&key.tenant),
                        user_data: host.call.user_data.clone(),
                    },
                });
                return;
            }
            Command::Route { to, answer } => {
                host.pending.route = Some(RouteWait {
                    request_id: id,
                    to: to.clone(),
                    voicemail: false,
                    diverted: false,
                    answer,
                });
                CallOp::RouteCall { to }
            }
            Command::Voicemail { mailbox } => {
                host.pending.route = Some(RouteWait {
                    request_id: id,
                    to: mailbox.clone(),
                    voicemail: true,
                    diverted: false,
                    answer: false,
                });
                CallOp::RouteCall { to: mailbox }
            }
            Command::Attach { data, update } => {
                host.pending.ops.insert(id, "attach".into());
                if update {
                    CallOp::UpdateUserData { data }
                } else {
                    CallOp::AttachUserData { data }
                }
            }
            Command::Release => {
                host.pending.ops.insert(id, "release".into());
                CallOp::Release
            }
            Command::CancelTreatment => {
                if host.pending.treatment.is_none() {
                    return;
                }
                host.pending.ops.insert(id, "cancel".into());
                CallOp::CancelTreatment
            }
            Command::CancelQueue => {
                if host.pending.queue.take().is_some() {
                    self.out.push_back(Action::Routing {
                        stream: routing_requests_stream(&key.tenant),
                        request: RoutingRequest::Cancel {
                            tenant: key.tenant.clone(),
                            conn_id: key.conn,
                        },
                    });
                }
                live.scxml
                    .push_event(Event::external("queue.cancelled", Some(json!({}))));
                return;
            }
            Command::Fetch { url, method, body } => {
                let request = FetchRequest { url, method, body };
                host.pending.fetches.insert(id, request.clone());
                self.out.push_back(Action::Fetch { key, id, request });
                return;
            }
        };
        self.send_op(host, id, op);
    }

    /// A request for the call at the route point, with the session's next request id.
    fn call_op(&mut self, host: &mut Host, op: CallOp) {
        let id = host.next_id;
        host.next_id += 1;
        self.send_op(host, id, op);
    }

    fn send_op(&mut self, host: &Host, id: u64, op: CallOp) {
        let key = &host.key;
        self.out.push_back(Action::Call {
            stream: sip_node_requests_stream(node_of(key.conn)),
            request: CallRequest {
                tenant: key.tenant.clone(),
                request_id: id,
                conn_id: Some(key.conn),
                dn: host.call.route_point.clone(),
                op,
                reply_to: None,
            },
        });
    }
}

/// The session a call event (or an error naming a call) belongs to.
fn key_of(event: &CallEvent) -> Option<SessionKey> {
    match event {
        CallEvent::EventError(e) => Some(SessionKey {
            tenant: e.tenant.clone(),
            conn: e.conn_id?,
        }),
        other => {
            let c = other.call()?;
            Some(SessionKey {
                tenant: c.tenant.clone(),
                conn: c.conn_id?,
            })
        }
    }
}

/// What a call event means to the strategy.
#[derive(Default)]
struct Delivered {
    raise: Option<(String, Json)>,
    context_changed: bool,
}

impl Delivered {
    fn raise(name: impl Into<String>, data: Json) -> Delivered {
        Delivered {
            raise: Some((name.into(), data)),
            context_changed: false,
        }
    }
}

/// Maps a call event to the SCXML event it raises, updating what the host waits for.
fn map_event(host: &mut Host, event: &CallEvent) -> Delivered {
    match event {
        CallEvent::EventError(e) => error_event(host, e),
        CallEvent::EventTreatmentApplied(c) => match treatment_of(host, c) {
            Some(kind) => Delivered::raise(format!("{}.started", kind.prefix()), json!({})),
            None => Delivered::default(),
        },
        CallEvent::EventTreatmentEnd(c) => treatment_end(host, c),
        CallEvent::EventDiverted(c) => {
            if c.this_dn == host.call.route_point {
                host.at_route_point = false;
            }
            diverted(host, c)
        }
        CallEvent::EventRouteRequest(c) => {
            // A routed call whose target failed comes back.
            host.at_route_point |= c.this_dn == host.call.route_point;
            Delivered::default()
        }
        CallEvent::EventEstablished(c) => established(host, c),
        CallEvent::EventAttachedDataChanged(c) => {
            host.call.user_data = c.user_data.clone();
            let mut d = match c.request_id.and_then(|id| host.pending.ops.remove(&id)) {
                Some(op) => Delivered::raise(format!("{op}.done"), json!({})),
                None => Delivered::default(),
            };
            d.context_changed = true;
            d
        }
        CallEvent::EventAbandoned(c) => {
            host.call_gone = true;
            Delivered::raise("call.abandoned", call_data(c))
        }
        CallEvent::EventReleased(c) => released(host, c),
        _ => Delivered::default(),
    }
}

fn call_data(c: &CallAttrs) -> Json {
    json!({ "this_dn": c.this_dn, "reason": c.reason })
}

/// The kind of the treatment an event is about: the current one (by request id when the
/// event names one).
fn treatment_of(host: &Host, c: &CallAttrs) -> Option<TreatmentKind> {
    let (id, kind) = host.pending.treatment?;
    (c.request_id.is_none() || c.request_id == Some(id)).then_some(kind)
}

fn treatment_end(host: &mut Host, c: &CallAttrs) -> Delivered {
    let Some(kind) = treatment_of(host, c) else {
        return Delivered::default();
    };
    host.pending.treatment = None;
    // A CancelTreatment is answered by this end.
    host.pending.ops.retain(|_, op| op != "cancel");
    let reason = c.reason.clone().unwrap_or_else(|| "completed".into());
    let results = c.treatment_results.clone().unwrap_or_default();
    if reason.starts_with("error") {
        return Delivered::raise(
            format!("{}.error", kind.prefix()),
            json!({ "reason": reason, "results": results }),
        );
    }
    let mut data = json!({ "reason": reason, "results": results });
    if kind == TreatmentKind::Collect {
        data["digits"] = results.get("digits").cloned().unwrap_or(json!(""));
    }
    Delivered::raise(format!("{}.done", kind.prefix()), data)
}

fn error_event(host: &mut Host, e: &ErrorAttrs) -> Delivered {
    let data = json!({ "error_code": e.error_code, "reason": e.reason });
    let p = &mut host.pending;
    if let Some((id, kind)) = p.treatment {
        if id == e.request_id {
            p.treatment = None;
            return Delivered::raise(format!("{}.error", kind.prefix()), data);
        }
    }
    if let Some(r) = &p.route {
        if r.request_id == e.request_id {
            let name = if r.voicemail {
                "voicemail.error"
            } else {
                "route.error"
            };
            p.route = None;
            return Delivered::raise(name, data);
        }
    }
    match p.ops.remove(&e.request_id) {
        Some(op) => Delivered::raise(format!("{op}.error"), data),
        None => Delivered::default(),
    }
}

/// EventDiverted: the call left the route point for the route's target (voicemail: done), or
/// the target handed it on unanswered (forward on no answer: the route failed).
fn diverted(host: &mut Host, c: &CallAttrs) -> Delivered {
    let Some(r) = host.pending.route.as_mut() else {
        return Delivered::default();
    };
    let ours = c.request_id == Some(r.request_id)
        || (c.this_dn == host.call.route_point && c.third_party_dn.as_deref() == Some(&r.to));
    if ours && !r.diverted {
        r.diverted = true;
        if r.voicemail {
            let to = r.to.clone();
            host.pending.route = None;
            return Delivered::raise("voicemail.done", json!({ "mailbox": to }));
        }
        if !r.answer {
            let to = r.to.clone();
            host.pending.route = None;
            return Delivered::raise("route.done", json!({ "dn": to }));
        }
        return Delivered::default();
    }
    if r.diverted && !r.voicemail && c.this_dn == r.to {
        host.pending.route = None;
        return Delivered::raise(
            "route.error",
            json!({ "error_code": "no_answer", "reason": c.reason.clone().unwrap_or_else(|| "no answer".into()) }),
        );
    }
    Delivered::default()
}

fn established(host: &mut Host, c: &CallAttrs) -> Delivered {
    match &host.pending.route {
        Some(r) if !r.voicemail && c.this_dn == r.to => {
            host.pending.route = None;
            Delivered::raise(
                "route.done",
                json!({ "dn": c.this_dn, "agent_id": c.agent_id }),
            )
        }
        _ => Delivered::default(),
    }
}

/// EventReleased: the target's leg ended before answering (the route failed, the strategy
/// may queue again), the strategy's own release, or the call is over.
fn released(host: &mut Host, c: &CallAttrs) -> Delivered {
    if let Some(r) = &host.pending.route {
        if r.diverted && !r.voicemail && c.this_dn == r.to {
            host.pending.route = None;
            return Delivered::raise(
                "route.error",
                json!({ "error_code": "no_answer", "reason": c.reason.clone().unwrap_or_else(|| "released unanswered".into()) }),
            );
        }
    }
    host.call_gone = true;
    match c.request_id.and_then(|id| host.pending.ops.remove(&id)) {
        Some(op) => Delivered::raise(format!("{op}.done"), json!({})),
        None => Delivered::raise("call.released", call_data(c)),
    }
}

/// The `_genesys` variable.
fn context(host: &Host) -> Json {
    json!({
        "tenant": host.key.tenant,
        "conn_id": host.key.conn.to_string(),
        "ani": host.call.ani,
        "dnis": host.call.dnis,
        "other_dn": host.call.other_dn,
        "route_point": host.call.route_point,
        "user_data": host.call.user_data,
        "strategy_url": host.call.strategy_url,
    })
}

fn persist(live: &Live) -> Result<Vec<u8>, String> {
    let scxml = live.scxml.snapshot().map_err(|e| e.to_string())?;
    let scxml = String::from_utf8(scxml).map_err(|e| e.to_string())?;
    serde_json::to_vec(&Saved {
        version: SAVED_VERSION,
        host: live.host.clone(),
        scxml,
    })
    .map_err(|e| e.to_string())
}

/// Relative URLs of a command made absolute against the strategy's base.
fn resolve_urls(cmd: Command, base: &str) -> Command {
    match cmd {
        Command::Play {
            kind,
            url,
            params,
            repeat,
        } => Command::Play {
            kind,
            url: resolve(base, &url),
            params,
            repeat,
        },
        Command::Collect {
            prompt,
            max_digits,
            timeout_s,
        } => Command::Collect {
            prompt: resolve(base, &prompt),
            max_digits,
            timeout_s,
        },
        Command::Fetch { url, method, body } => Command::Fetch {
            url: resolve(base, &url),
            method,
            body,
        },
        other => other,
    }
}

/// `rel` against `base` when it has no scheme (`menu.vxml`, `/ivr/menu.vxml`); URLs with a
/// scheme (`http:`, `tts:`, `tone:`...) are kept.
pub fn resolve(base: &str, rel: &str) -> String {
    let has_scheme = rel.split_once(':').is_some_and(|(s, _)| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if has_scheme || base.is_empty() {
        return rel.to_owned();
    }
    if let Some(path) = rel.strip_prefix('/') {
        // The base's scheme and authority.
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        let end = base[after_scheme..]
            .find('/')
            .map_or(base.len(), |i| after_scheme + i);
        return format!("{}/{path}", &base[..end]);
    }
    let dir = base.rfind('/').map_or(base, |i| &base[..=i]);
    format!("{dir}{rel}")
}
