//! Async glue of the SIP Server: binds the UDP socket, builds the core from the
//! configuration, runs it on its own thread with the SIP driver, publishes the model's events
//! on the tenant's event stream, and serves REST call control.

use super::api::{Api, Problem, Verb};
use super::core::{
    Directory, NodeCommand, NodeOutput, NodeSettings, SipNode, VoicemailRoute, VoicemailTarget,
};
use super::forward::Forwarder;
use super::model::ModelSettings;
use crate::bus::publish_event;
use crate::problem::ApiProblem;
use crate::sip::edge::EdgeCommand;
use crate::sip::role::EdgeControl;
use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::Router;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchboard_bus::GroupStart;
use switchboard_bus::SharedBus;
use switchboard_config::Config;
use switchboard_events::requests::{
    sip_node_presence_key, sip_node_requests_stream, CallRefusal, CallReply, CallRequest,
};
use switchboard_events::{ConnId, ErrorAttrs, Event};
use switchboard_sip::transaction::Timers;
use switchboard_sip_net::{Driver, NetConfig, Sockets};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started SIP Server.
pub struct SipNodeRunning {
    pub router: Router,
    pub udp: SocketAddr,
    /// Where its legs to DNs go.
    pub edge: SocketAddr,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// Where its legs to mailboxes and the voicemail access DN go (set by the voicemail role
    /// of the same process when the configuration does not name them).
    pub voicemail: VoicemailRoute,
}

/// Calls of the node by ConnId, with their tenant: REST answers 404 for others at once.
type CallIndex = Arc<Mutex<HashMap<ConnId, String>>>;

struct RestState {
    api: Api,
    commands: mpsc::Sender<NodeCommand>,
    calls: CallIndex,
    next_id: AtomicU64,
}

/// `sip_node.edge` when set, else the edge running in this process, else `sip.udp`.
fn edge_address(cfg: &Config, edge: Option<&EdgeControl>) -> anyhow::Result<SocketAddr> {
    cfg.sip_node
        .edge
        .or_else(|| edge.and_then(|e| e.udp))
        .or(cfg.sip.udp)
        .context("sip_node.edge is not set and there is no SIP edge UDP address (sip.udp)")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts the SIP Server. `directory` is the dial plan it resolves calls with (see
/// [`crate::dialplan`]); it follows the configuration store while the `dialplan` role keeps it
/// current.
pub async fn start(
    cfg: Arc<Config>,
    bus: SharedBus,
    edge: Option<EdgeControl>,
    dir: Directory,
    drain: CancellationToken,
) -> anyhow::Result<SipNodeRunning> {
    let net = NetConfig {
        udp: Some(cfg.sip_node.udp),
        tcp: None,
        max_message_bytes: cfg.sip.max_message_bytes,
        drain_grace: Duration::from_millis(cfg.drain.grace_ms),
    };
    let sockets = Sockets::bind(&net)
        .await
        .with_context(|| format!("cannot bind sip_node.udp {}", cfg.sip_node.udp))?;
    let udp = sockets
        .local_udp
        .context("the SIP Server's UDP socket has no address")?;
    let edge_addr = edge_address(&cfg, edge.as_ref())?;
    // Set now when the configuration names both; else the voicemail role of this process
    // sets it once the media server's address is known.
    let voicemail = VoicemailRoute::default();
    let voicemail_mcp = cfg.voicemail.mcp.or(cfg.sip_node.mcp);
    if let (Some(mcp), false) = (voicemail_mcp, cfg.voicemail.url.is_empty()) {
        voicemail.set(VoicemailTarget {
            mcp,
            base_url: cfg.voicemail.url.trim_end_matches('/').to_owned(),
        });
    }
    // A random node number per run keeps ConnIds of a restarted node apart from the ones
    // call-state still holds; other roles reach the node by it (`sip-node:{node}:requests`).
    let node_number: u16 = rand::random();
    let settings = NodeSettings {
        local: udp,
        edge: edge_addr,
        trunks: cfg.sip_node.trunks.clone(),
        mcp: cfg.sip_node.mcp,
        timers: Timers {
            t1: Duration::from_millis(cfg.sip.t1_ms),
            t2: Duration::from_millis(cfg.sip.t2_ms),
            t4: Duration::from_millis(cfg.sip.t4_ms),
            ..Timers::default()
        },
        model: ModelSettings {
            ring_timeout_ms: cfg.sip_node.ring_timeout_ms,
            node: node_number,
            route_timeout_ms: cfg.sip_node.route_timeout_ms,
        },
        voicemail: voicemail.clone(),
    };
    // Events name the agent who logged in on a DN, followed from agent-state's snapshot and
    // events (wherever agent-state runs).
    let logins = crate::agent_state::logins::SharedLogins::default();
    let plan = dir.clone();
    tokio::spawn(crate::agent_state::logins::follow(
        bus.clone(),
        move || plan.plan().tenant_names().map(str::to_owned).collect(),
        logins.clone(),
        drain.clone(),
    ));
    let dir = dir.with_logins(logins);
    let node = SipNode::new(
        settings,
        dir.clone(),
        rand::random(),
        Instant::now(),
        unix_ms(),
    );
    let (commands, commands_rx) = mpsc::channel(1024);
    let (outputs, outputs_rx) = mpsc::unbounded_channel();
    let requests_drain = drain.clone();
    let driver = switchboard_sip_net::spawn_on_own_thread("sip-node", move || async move {
        Driver::new(node, sockets, net)?
            .run_controlled(drain, commands_rx, outputs)
            .await;
        Ok::<_, std::io::Error>(())
    })?;
    let calls = CallIndex::default();
    let publisher = tokio::spawn(publish_outputs(outputs_rx, bus.clone(), calls.clone()));
    if let Some(edge) = &edge {
        // New calls arriving at the edge now come to us; our legs go back through it.
        edge.commands
            .send(EdgeCommand::SetCallControl(vec![udp]))
            .await
            .context("the SIP edge stopped")?;
    }
    tracing::info!(%udp, edge = %edge_addr, trunks = ?cfg.sip_node.trunks, mcp = ?cfg.sip_node.mcp,
        node = format_args!("{node_number:04x}"), "SIP Server (sip-node) listening");
    let state = Arc::new(RestState {
        api: Api {
            directory: dir,
            have_trunk: !cfg.sip_node.trunks.is_empty(),
        },
        commands,
        calls,
        // Request ids from the clock (1000 per ms of the start time), so that ids of an
        // earlier run still in the event stream are never reused.
        next_id: AtomicU64::new(unix_ms().saturating_mul(1000)),
    });
    let presence = Presence::take(bus.clone(), node_number).await?;
    let requests = BusRequests {
        bus,
        stream: sip_node_requests_stream(node_number),
        consumer: format!("sip-node-{node_number:04x}"),
    };
    requests.prepare().await?;
    let consumer = tokio::spawn(requests.run(state.clone(), requests_drain));
    let (presence_stop, presence) = presence.spawn();
    let task = tokio::spawn(async move {
        let driven = driver.await;
        // Present until the last call ended, not just until the drain began.
        presence_stop.cancel();
        if let Err(e) = presence.await {
            tracing::error!(error = %e, "sip-node presence task failed");
        }
        if let Err(e) = consumer.await {
            tracing::error!(error = %e, "sip-node request consumer failed");
        }
        // The driver dropped its output sender: the publisher ends once the queue is empty.
        if let Err(e) = publisher.await {
            tracing::error!(error = %e, "sip-node event publisher failed");
        }
        driven??;
        Ok(())
    });
    Ok(SipNodeRunning {
        router: routes(Control::Local(state)),
        udp,
        edge: edge_addr,
        task,
        voicemail,
    })
}

/// The node's lease on the bus ([`sip_node_presence_key`]), renewed while the node runs, so
/// that a front-end in another process answers a request for a call of a node that is gone
/// at once (404, as the node would for a call it does not have) rather than waiting for a
/// reply that never comes.
struct Presence {
    bus: SharedBus,
    key: String,
    owner: String,
}

const PRESENCE_TTL: Duration = Duration::from_secs(10);
const PRESENCE_RENEW: Duration = Duration::from_secs(3);

impl Presence {
    async fn take(bus: SharedBus, node: u16) -> anyhow::Result<Presence> {
        let p = Presence {
            bus,
            key: sip_node_presence_key(node),
            owner: crate::single_writer::consumer_name(),
        };
        let taken = p.bus.lease_acquire(&p.key, &p.owner, PRESENCE_TTL).await?;
        if !taken {
            // Two live nodes drew the same random number: they share a request stream.
            tracing::warn!(
                node = format_args!("{node:04x}"),
                "another sip-node holds this node number"
            );
        }
        Ok(p)
    }

    /// Renews the lease until the returned token is cancelled, then gives it up.
    fn spawn(self) -> (CancellationToken, JoinHandle<()>) {
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(PRESENCE_RENEW);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = until.cancelled() => break,
                    _ = every.tick() => self.renew().await,
                }
            }
            if let Err(e) = self.bus.lease_release(&self.key, &self.owner).await {
                tracing::warn!(error = %e, key = %self.key, "sip-node presence not released");
            }
        });
        (stop, task)
    }

    async fn renew(&self) {
        let held = match self
            .bus
            .lease_renew(&self.key, &self.owner, PRESENCE_TTL)
            .await
        {
            Ok(false) => {
                self.bus
                    .lease_acquire(&self.key, &self.owner, PRESENCE_TTL)
                    .await
            }
            other => other,
        };
        if !matches!(held, Ok(true)) {
            tracing::warn!(key = %self.key, result = ?held, "sip-node presence not renewed");
        }
    }
}

/// Publishes the core's events in order on `events:{tenant}` and keeps the call index.
async fn publish_outputs(
    mut outputs: mpsc::UnboundedReceiver<NodeOutput>,
    bus: SharedBus,
    calls: CallIndex,
) {
    while let Some(out) = outputs.recv().await {
        match out {
            NodeOutput::CallStarted { conn, tenant } => {
                lock(&calls).insert(conn, tenant);
            }
            NodeOutput::CallEnded { conn } => {
                lock(&calls).remove(&conn);
            }
            NodeOutput::Event(event) => {
                if let Err(e) = publish_event(&*bus, &event).await {
                    metrics::counter!("sipnode_publish_errors_total").increment(1);
                    tracing::error!(error = %e, tenant = event.tenant(), event = event.name(), "event not published");
                }
            }
        }
    }
}

fn lock(calls: &CallIndex) -> std::sync::MutexGuard<'_, HashMap<ConnId, String>> {
    calls.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who carries out the REST requests: this process's SIP Server, or (a front-end without
/// one) the SIP Server that owns the call, over the bus.
#[derive(Clone)]
enum Control {
    Local(Arc<RestState>),
    Remote(Arc<Forwarder>),
}

/// The call-control routes of a process that runs no SIP Server (a front-end on its own):
/// the same routes and parsing, each request sent to the SIP Server that owns the call (the
/// top 16 bits of its ConnId) with a reply stream of this process, answered with what that
/// node's REST API answers.
pub fn remote_routes(bus: SharedBus, timeout: Duration) -> Router {
    routes(Control::Remote(Arc::new(Forwarder::new(bus, timeout))))
}

fn routes(state: Control) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/calls", post(make_call))
        .route(
            "/v1/tenants/{tenant}/calls/{conn_id}/{action}",
            post(call_post).put(call_put).delete(call_delete),
        )
        .route(
            "/v1/tenants/{tenant}/calls/{conn_id}/conference/{action}",
            post(conference_post),
        )
        .route(
            "/v1/tenants/{tenant}/calls/{conn_id}/conference/parties/{party}",
            delete(conference_delete),
        )
        .with_state(state)
}

pub(super) fn problem_response(p: Problem) -> Response {
    ApiProblem::new(p.status, p.title, p.detail).into_response()
}

async fn make_call(
    State(state): State<Control>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    submit(&state, &tenant, None, Verb::Post, &body).await
}

async fn call_post(
    State(state): State<Control>,
    Path((tenant, conn, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    submit(&state, &tenant, Some((&conn, &action)), Verb::Post, &body).await
}

async fn call_put(
    State(state): State<Control>,
    Path((tenant, conn, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    submit(&state, &tenant, Some((&conn, &action)), Verb::Put, &body).await
}

async fn call_delete(
    State(state): State<Control>,
    Path((tenant, conn, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    submit(&state, &tenant, Some((&conn, &action)), Verb::Delete, &body).await
}

/// `POST .../conference/{action}`: the action is `conference/{action}` (see [`super::api`]).
async fn conference_post(
    State(state): State<Control>,
    Path((tenant, conn, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let action = format!("conference/{action}");
    submit(&state, &tenant, Some((&conn, &action)), Verb::Post, &body).await
}

/// `DELETE .../conference/parties/{party}` (DeleteFromConference).
async fn conference_delete(
    State(state): State<Control>,
    Path((tenant, conn, party)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let action = format!("conference/parties/{party}");
    submit(&state, &tenant, Some((&conn, &action)), Verb::Delete, &body).await
}

async fn submit(
    control: &Control,
    tenant: &str,
    target: Option<(&str, &str)>,
    verb: Verb,
    body: &[u8],
) -> Response {
    match control {
        Control::Local(state) => submit_here(state, tenant, target, verb, body),
        Control::Remote(forwarder) => forwarder.submit(tenant, target, verb, body).await,
    }
}

/// Validates, hands the request to the core and answers `202 {"request_id"}`; the result
/// comes as an event with that `request_id` (EventError when refused).
fn submit_here(
    state: &RestState,
    tenant: &str,
    target: Option<(&str, &str)>,
    verb: Verb,
    body: &[u8],
) -> Response {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let cmd = match state.api.parse(id, tenant, target, verb, body) {
        Ok(c) => c,
        Err(p) => {
            metrics::counter!("sipnode_api_rejected_total", "status" => p.status.to_string())
                .increment(1);
            return problem_response(p);
        }
    };
    let conn = cmd.request.conn().map(|c| c.to_string());
    tracing::info!(request_id = id, tenant, conn_id = ?conn, request = ?cmd.request, "call-control request");
    if let Err(p) = state.hand_over(cmd) {
        return problem_response(p);
    }
    accepted(id, tenant, conn)
}

/// The answer to a request the SIP Server took: `202 {"request_id", "tenant", "conn_id"}`.
pub(super) fn accepted(id: u64, tenant: &str, conn: Option<String>) -> Response {
    let mut body = json!({ "request_id": id, "tenant": tenant });
    if let Some(conn) = conn {
        body["conn_id"] = json!(conn);
    }
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

impl RestState {
    /// Refuses a request for a call that is not one of this node's calls in that tenant.
    fn check_call(&self, cmd: &NodeCommand) -> Result<(), Problem> {
        match cmd.request.conn() {
            Some(conn) if lock(&self.calls).get(&conn) != Some(&cmd.tenant) => {
                Err(super::api::unknown_call(conn, &cmd.tenant))
            }
            _ => Ok(()),
        }
    }

    /// Gives a validated REST request to the core: refused for another node's call, or when
    /// the core's queue is full (the client retries).
    fn hand_over(&self, cmd: NodeCommand) -> Result<(), Problem> {
        self.check_call(&cmd)?;
        self.commands.try_send(cmd).map_err(|_| Problem {
            status: 503,
            title: "Unavailable",
            detail: "the SIP Server is stopping or overloaded; try again".into(),
        })
    }
}

/// Call-control requests from other roles: [`CallRequest`]s on this node's stream, read with
/// consumer group `sip-node`, validated like REST requests (one path, [`Api::from_bus`]).
struct BusRequests {
    bus: SharedBus,
    stream: String,
    consumer: String,
}

/// The consumer group of the SIP Servers on their request streams.
const GROUP: &str = "sip-node";
/// How long one read waits for requests.
const BLOCK: Duration = Duration::from_millis(500);

impl BusRequests {
    /// The group, from the stream's beginning: requests sent before the node was up count.
    async fn prepare(&self) -> anyhow::Result<()> {
        self.bus
            .create_group(&self.stream, GROUP, GroupStart::Beginning)
            .await
            .with_context(|| format!("cannot create consumer group on {}", self.stream))
    }

    async fn run(self, state: Arc<RestState>, drain: CancellationToken) {
        tracing::info!(stream = %self.stream, "taking call-control requests from the bus");
        loop {
            let read = tokio::select! {
                _ = drain.cancelled() => return,
                r = self.bus.read_group(&self.stream, GROUP, &self.consumer, 64, BLOCK) => r,
            };
            let entries = match read {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, stream = %self.stream, "reading requests failed");
                    tokio::select! {
                        _ = drain.cancelled() => return,
                        _ = tokio::time::sleep(BLOCK) => continue,
                    }
                }
            };
            for entry in entries {
                self.handle(&state, &entry.payload).await;
                if let Err(e) = self.bus.ack(&self.stream, GROUP, &[entry.id]).await {
                    tracing::warn!(error = %e, "request not acknowledged");
                }
            }
        }
    }

    /// One request: to the core, or refused; the sender hears which on its `reply_to` stream,
    /// or else from an EventError on the tenant's stream when refused.
    async fn handle(&self, state: &RestState, payload: &[u8]) {
        let req: CallRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("sipnode_bus_requests_total", "result" => "malformed")
                    .increment(1);
                tracing::warn!(error = %e, stream = %self.stream, "dropping a malformed call-control request");
                return;
            }
        };
        let checked = state.api.from_bus(&req).and_then(|cmd| {
            state.check_call(&cmd)?;
            Ok(cmd)
        });
        // A full queue holds the stream back rather than refusing the request.
        let result = match checked {
            Ok(cmd) => state.commands.send(cmd).await.map_err(|_| Problem {
                status: 503,
                title: "Unavailable",
                detail: "the SIP Server is stopping".into(),
            }),
            Err(p) => Err(p),
        };
        match &result {
            Ok(()) => {
                metrics::counter!("sipnode_bus_requests_total", "result" => "accepted")
                    .increment(1);
                tracing::info!(tenant = %req.tenant, conn_id = ?req.conn_id.map(|c| c.to_string()),
                    request_id = req.request_id, op = ?req.op, "call-control request from the bus");
            }
            Err(p) => {
                metrics::counter!("sipnode_bus_requests_total", "result" => "refused").increment(1);
                tracing::info!(tenant = %req.tenant, request_id = req.request_id, reason = %p.detail, "call-control request refused");
            }
        }
        match (result, &req.reply_to) {
            (result, Some(to)) => self.reply(&req, to, result.err()).await,
            (Err(p), None) => self.refuse(state, &req, p).await,
            (Ok(()), None) => {}
        }
    }

    /// Tells the sender whether the request was taken, as the REST API would have answered.
    async fn reply(&self, req: &CallRequest, to: &str, refused: Option<Problem>) {
        let reply = CallReply {
            request_id: req.request_id,
            refused: refused.map(|p| CallRefusal {
                status: p.status,
                title: p.title.to_string(),
                detail: p.detail,
            }),
        };
        let sent = match serde_json::to_vec(&reply) {
            Ok(payload) => self.bus.publish(to, &payload).await.map(drop),
            Err(e) => Err(switchboard_bus::BusError::Invalid(e.to_string())),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, tenant = %req.tenant, reply_to = to, "call-control reply not sent");
        }
    }

    /// An EventError on the tenant's stream for a refused request nobody waits a reply for.
    async fn refuse(&self, state: &RestState, req: &CallRequest, p: Problem) {
        if !state.api.directory.has_tenant(&req.tenant) {
            // No stream to answer on: an unknown tenant's stream is not created.
            return;
        }
        let event = Event::EventError(ErrorAttrs {
            tenant: req.tenant.clone(),
            conn_id: req.conn_id,
            this_dn: Some(req.dn.clone()),
            request_id: req.request_id,
            error_code: p.error_code().to_string(),
            reason: p.detail,
            ts_ms: unix_ms(),
        });
        if let Err(e) = publish_event(&*self.bus, &event).await {
            tracing::error!(error = %e, tenant = %req.tenant, "EventError not published");
        }
    }
}
