//! The `agent-state` role: agent login, ready, not ready, after-call work, reservations.
//!
//! * [`model`]: the pure reducer ([`Board`], one per tenant).
//! * The glue ([`crate::single_writer`]): one writer per tenant (lease `agent-state:{tenant}`),
//!   reading `agent-state:{tenant}:requests` (group `agent-state`) and `events:{tenant}`,
//!   snapshot in kv `agent-state:{tenant}`.
//! * REST: `POST /v1/tenants/{t}/agents/{id}/{login|logout|ready|not-ready|after-call-work-done}`
//!   publishes an [`AgentRequest`] and waits (at most [`Options::answer_timeout`]) for the
//!   event carrying its `request_id`: 200 with the event, 409 with the error code of an
//!   EventError, 404 for an unknown tenant or agent, 504 when no agent-state answers.
//!   `GET /v1/tenants/{t}/agent-states` and `/agent-states/{id}`: state, DN, since, skills
//!   (`/agents` and `/agents/{id}` are the configuration API's agent entities).

pub mod logins;
pub mod model;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use switchboard_bus::SharedBus;
use switchboard_config::{Config, Tenant};
use switchboard_events::requests::{agent_requests_stream, AgentOp, AgentRequest};
use switchboard_events::Event;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::problem::{ApiProblem, PROBLEM_JSON};
use crate::single_writer::{self, lock, Core, Emit, Remote, Shared, Timing, View};
pub use model::{codes, Agent, AgentStatus, Board};

/// The role's name: lease and snapshot key prefix, consumer group.
pub const ROLE: &str = "agent-state";

impl Core for Board {
    type Request = AgentRequest;
    fn request(&mut self, req: &AgentRequest, now: u64) -> Vec<Emit> {
        let out = Board::request(self, req, now);
        let result = if matches!(out.first(), Some(Event::EventError(_))) {
            "refused"
        } else {
            "done"
        };
        metrics::counter!("switchboard_agent_requests_total", "tenant" => self.tenant.clone(), "result" => result)
            .increment(1);
        out.into_iter().map(Emit::Event).collect()
    }
    fn event(&mut self, event: &Event, now: u64) -> Vec<Emit> {
        Board::event(self, event, now)
            .into_iter()
            .map(Emit::Event)
            .collect()
    }
    fn tick(&mut self, now: u64) -> Vec<Emit> {
        Board::tick(self, now)
            .into_iter()
            .map(Emit::Event)
            .collect()
    }
    fn next_deadline(&self) -> Option<u64> {
        Board::next_deadline(self)
    }
    fn configure(&mut self, config: &Config, tenant: &Tenant) {
        Board::configure(self, tenant, config.routing.reservation_timeout_ms);
    }
}

/// Tuning of the role.
#[derive(Clone, Debug)]
pub struct Options {
    pub timing: Timing,
    /// How long a POST waits for agent-state's answer.
    pub answer_timeout: Duration,
    pub consumer: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timing: Timing::default(),
            answer_timeout: Duration::from_secs(5),
            consumer: single_writer::consumer_name(),
        }
    }
}

/// The boards of the configured tenants.
pub struct AgentState {
    tenants: single_writer::Tenants<Board>,
}

impl AgentState {
    fn tenant(&self, name: &str) -> Option<Shared<Board>> {
        self.tenants.get(name)
    }

    /// A copy of an agent, `None` for an unknown tenant; `Some(None)` for an unknown agent.
    pub fn agent(&self, tenant: &str, id: &str) -> Option<Option<Agent>> {
        self.tenant(tenant)
            .map(|s| lock(&s).core.agent(id).cloned())
    }
}

/// What [`start`] gives back.
pub struct AgentStateRole {
    pub router: Router,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub state: Arc<AgentState>,
}

/// Loads the tenants' snapshots, then runs a writer (or standby) per tenant.
pub async fn start(
    config: Arc<Config>,
    bus: SharedBus,
    drain: CancellationToken,
    tenants: single_writer::TenantsFeed,
    options: Options,
) -> anyhow::Result<AgentStateRole> {
    let reservation_ms = config.routing.reservation_timeout_ms;
    let started = single_writer::start_tenants(
        ROLE,
        agent_requests_stream,
        move |t| Board::new(t, reservation_ms),
        config.clone(),
        bus.clone(),
        &options.consumer,
        &options.timing,
        drain.clone(),
        tenants,
        gauges,
    )
    .await?;
    let (task, state) = (
        started.task,
        Arc::new(AgentState {
            tenants: started.tenants,
        }),
    );
    let api = Api {
        boards: View::Local(state.tenants.clone()),
        bus,
        timeout: options.answer_timeout,
    };
    Ok(AgentStateRole {
        router: routes(api),
        task,
        state,
    })
}

/// Agents per tenant and state.
fn gauges(tenants: &[(String, Shared<Board>)]) {
    for (tenant, slot) in tenants {
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for a in lock(slot).core.agents.values() {
            *counts.entry(state_name(&a.status)).or_default() += 1;
        }
        for name in STATES {
            metrics::gauge!("switchboard_agents", "tenant" => tenant.clone(), "state" => name)
                .set(counts.get(name).copied().unwrap_or(0) as f64);
        }
    }
}

const STATES: [&str; 6] = [
    "logged_out",
    "not_ready",
    "ready",
    "reserved",
    "busy",
    "after_call_work",
];

fn state_name(s: &AgentStatus) -> &'static str {
    match s {
        AgentStatus::LoggedOut => STATES[0],
        AgentStatus::NotReady { .. } => STATES[1],
        AgentStatus::Ready { .. } => STATES[2],
        AgentStatus::Reserved { .. } => STATES[3],
        AgentStatus::Busy { .. } => STATES[4],
        AgentStatus::AfterCallWork { .. } => STATES[5],
    }
}

// ---------------------------------------------------------------------------------------------
// REST

#[derive(Clone)]
struct Api {
    boards: View<Board>,
    bus: SharedBus,
    timeout: Duration,
}

/// The agent routes of a process that does not run agent-state (a front-end on its own): the
/// same handlers, reading agent-state's snapshots on the bus and sending the requests to the
/// tenant's agent-state writer wherever it runs.
pub fn remote_routes(
    config: Arc<Config>,
    bus: SharedBus,
    tenants: single_writer::TenantsFeed,
    answer_timeout: Duration,
) -> Router {
    let reservation_ms = config.routing.reservation_timeout_ms;
    let remote = Remote {
        role: ROLE,
        bus: bus.clone(),
        config,
        tenants,
        new: Box::new(move |t| Board::new(t, reservation_ms)),
    };
    routes(Api {
        boards: View::Remote(Arc::new(remote)),
        bus,
        timeout: answer_timeout,
    })
}

/// The tenant's board, or the answer for an unknown tenant or an unreadable bus.
async fn board(api: &Api, tenant: &str) -> Result<Shared<Board>, Response> {
    match api.boards.get(tenant).await {
        Ok(Some(slot)) => Ok(slot),
        Ok(None) => Err(unknown_tenant(tenant)),
        Err(e) => {
            tracing::warn!(tenant, error = %e, "agent-state snapshot not read");
            Err(ApiProblem::new(503, "Bus unavailable", e.to_string()).into_response())
        }
    }
}

/// The agent routes; the desktop API puts its authentication in front of them. The states
/// are under `agent-states`: `GET /v1/tenants/{t}/agents[/{id}]` is the configuration API's
/// list of agent entities.
fn routes(api: Api) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/agent-states", get(list_agents))
        .route("/v1/tenants/{tenant}/agent-states/{agent}", get(get_agent))
        .route("/v1/tenants/{tenant}/agents/{agent}/{action}", post(act))
        .with_state(api)
}

/// The JSON of an agent: `agent_id`, `state`, `dn`, `since`, `skills`, `groups`, `in_service`
/// and, by state, `reason_code`, `conn_id`, `until`, `ready_since`.
pub fn agent_json(a: &Agent, board: &Board) -> Value {
    let mut v = json!({
        "agent_id": a.id,
        "state": state_name(&a.status),
        "dn": a.dn,
        "since": a.since,
        "skills": a.skills,
        "groups": a.groups,
        "in_service": a.dn.as_deref().is_none_or(|dn| board.in_service(dn)),
        "calls": a.calls,
    });
    match &a.status {
        AgentStatus::NotReady {
            reason_code: Some(r),
        } => v["reason_code"] = json!(r),
        AgentStatus::Ready { since } => v["ready_since"] = json!(since),
        AgentStatus::Reserved {
            conn,
            until,
            ready_since,
            ..
        } => {
            v["conn_id"] = json!(conn);
            v["until"] = json!(until);
            v["ready_since"] = json!(ready_since);
        }
        AgentStatus::Busy { conn } => v["conn_id"] = json!(conn),
        AgentStatus::AfterCallWork { until } => v["until"] = json!(until),
        _ => {}
    }
    v
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn unknown_tenant(tenant: &str) -> Response {
    ApiProblem::not_found(format!("no tenant named {:?}", clip(tenant))).into_response()
}

fn unknown_agent(tenant: &str, agent: &str) -> Response {
    ApiProblem::new(
        404,
        "Unknown agent",
        format!("tenant {:?} has no agent {:?}", clip(tenant), clip(agent)),
    )
    .into_response()
}

async fn list_agents(State(api): State<Api>, Path(tenant): Path<String>) -> Response {
    let slot = match board(&api, &tenant).await {
        Ok(slot) => slot,
        Err(answer) => return answer,
    };
    let s = lock(&slot);
    let agents: Vec<Value> = s
        .core
        .agents
        .values()
        .map(|a| agent_json(a, &s.core))
        .collect();
    Json(json!({ "tenant": tenant, "writer": s.writer, "agents": agents })).into_response()
}

async fn get_agent(
    State(api): State<Api>,
    Path((tenant, agent)): Path<(String, String)>,
) -> Response {
    let slot = match board(&api, &tenant).await {
        Ok(slot) => slot,
        Err(answer) => return answer,
    };
    let s = lock(&slot);
    match s.core.agent(&agent) {
        Some(a) => Json(agent_json(a, &s.core)).into_response(),
        None => unknown_agent(&tenant, &agent),
    }
}

/// The request a POST asks for, from its action and body.
fn parse_op(action: &str, body: &[u8]) -> Result<AgentOp, ApiProblem> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiProblem::bad_request(format!("the body is not JSON: {e}")))?
    };
    if !body.is_object() {
        return Err(ApiProblem::bad_request("the body must be a JSON object"));
    }
    let text = |field: &str| -> Result<Option<String>, ApiProblem> {
        match &body[field] {
            Value::Null => Ok(None),
            Value::String(s) if !s.is_empty() && s.len() <= 64 => Ok(Some(s.clone())),
            _ => Err(ApiProblem::new(
                422,
                "Invalid field",
                format!("{field} must be a string of 1 to 64 characters"),
            )
            .field(field)),
        }
    };
    Ok(match action {
        "login" => AgentOp::Login { dn: text("dn")? },
        "logout" => AgentOp::Logout,
        "ready" => AgentOp::Ready,
        "not-ready" => AgentOp::NotReady {
            reason_code: text("reason_code")?,
        },
        "after-call-work-done" => AgentOp::AfterCallWorkDone,
        other => {
            return Err(ApiProblem::not_found(format!(
                "no agent action {:?} (login, logout, ready, not-ready, after-call-work-done)",
                clip(other)
            )))
        }
    })
}

async fn act(
    State(api): State<Api>,
    Path((tenant, agent, action)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let op = match parse_op(&action, &body) {
        Ok(op) => op,
        Err(p) => return p.into_response(),
    };
    let known = match board(&api, &tenant).await {
        Ok(slot) => lock(&slot).core.agent(&agent).is_some(),
        Err(answer) => return answer,
    };
    if !known {
        return unknown_agent(&tenant, &agent);
    }
    // Below 2^53, so that JavaScript clients read it exactly.
    let request = AgentRequest {
        tenant: tenant.clone(),
        request_id: rand::random::<u64>() >> 11,
        agent_id: agent.clone(),
        op,
    };
    match send_and_wait(&api.bus, &request, api.timeout).await {
        Ok(Some(event)) => answer(event),
        Ok(None) => ApiProblem::new(
            504,
            "No answer",
            format!(
                "no agent-state answered within {} ms",
                api.timeout.as_millis()
            ),
        )
        .into_response(),
        Err(e) => {
            tracing::warn!(tenant, agent, error = %e, "agent request not sent");
            ApiProblem::new(503, "Bus unavailable", e.to_string()).into_response()
        }
    }
}

fn answer(event: Event) -> Response {
    match event {
        Event::EventError(e) => {
            let mut body = ApiProblem::new(409, "Refused", e.reason.clone()).body();
            body["error_code"] = json!(e.error_code);
            body["request_id"] = json!(e.request_id);
            (
                StatusCode::CONFLICT,
                [(header::CONTENT_TYPE, PROBLEM_JSON)],
                body.to_string(),
            )
                .into_response()
        }
        other => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            other.to_json(),
        )
            .into_response(),
    }
}

/// The request id an agent event or EventError answers.
fn answers(event: &Event) -> Option<u64> {
    match event {
        Event::EventError(e) => Some(e.request_id),
        Event::EventAgentLogin(a)
        | Event::EventAgentLogout(a)
        | Event::EventAgentReady(a)
        | Event::EventAgentNotReady(a)
        | Event::EventAgentAfterCallWork(a) => a.request_id,
        _ => None,
    }
}

/// Publishes the request and reads the tenant's events after it for the answer.
async fn send_and_wait(
    bus: &SharedBus,
    request: &AgentRequest,
    timeout: Duration,
) -> Result<Option<Event>, switchboard_bus::BusError> {
    let payload = serde_json::to_vec(request)
        .map_err(|e| switchboard_bus::BusError::Invalid(e.to_string()))?;
    crate::bus::request_reply(
        bus.as_ref(),
        &agent_requests_stream(&request.tenant),
        &payload,
        &switchboard_bus::events_stream(&request.tenant),
        timeout,
        |entry| {
            serde_json::from_slice::<Event>(entry)
                .ok()
                .filter(|event| answers(event) == Some(request.request_id))
        },
    )
    .await
}

#[cfg(test)]
mod role_tests;
#[cfg(test)]
mod tests;
