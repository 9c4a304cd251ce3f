//! The `routing` role: queues, skill-based selection of the longest idle agent, reservation.
//!
//! * [`expr`]: skill expressions (`sales >= 5 & english`).
//! * [`model`]: the pure reducer ([`Queues`], one per tenant).
//! * The glue ([`crate::single_writer`]): one writer per tenant (lease `routing:{tenant}`),
//!   reading `routing:{tenant}:requests` (group `routing`) and `events:{tenant}`, replying on
//!   each submission's `reply_to` stream, snapshot in kv `routing:{tenant}`.
//! * REST: `GET /v1/tenants/{t}/queues` and `/queues/{name}`: waiting calls, longest wait,
//!   agents ready.
//! * Metrics: gauges `switchboard_queue_waiting`, `switchboard_queue_longest_wait_seconds`,
//!   `switchboard_queue_agents_ready` (tenant, queue); counters `switchboard_routing_targets_total`,
//!   `switchboard_routing_timeouts_total`, `switchboard_routing_rejected_total`,
//!   `switchboard_routing_reservations_expired_total` (tenant, queue).

pub mod expr;
pub mod model;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use switchboard_bus::SharedBus;
use switchboard_config::{Config, Tenant};
use switchboard_events::requests::{routing_requests_stream, RoutingReply, RoutingRequest};
use switchboard_events::Event;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::problem::ApiProblem;
use crate::single_writer::{self, lock, Core, Emit, Remote, Shared, Timing, View};
pub use model::{Output, QueueStats, Queues};

/// The role's name: lease and snapshot key prefix, consumer group.
pub const ROLE: &str = "routing";

/// Turns the reducer's outputs into what the glue publishes, counting them.
pub fn emits(tenant: &str, out: Vec<Output>) -> Vec<Emit> {
    let mut emits = Vec::with_capacity(out.len());
    for o in out {
        match o {
            Output::Publish(e) => emits.push(Emit::Event(e)),
            Output::ReservationExpired { queue, agent, conn } => {
                tracing::info!(tenant, queue, agent, conn_id = %conn, "reservation expired");
                metrics::counter!("switchboard_routing_reservations_expired_total",
                    "tenant" => tenant.to_string(), "queue" => queue)
                .increment(1);
            }
            Output::Reply { to, queue, reply } => {
                let name = match &reply {
                    RoutingReply::Target { .. } => "switchboard_routing_targets_total",
                    RoutingReply::Timeout { .. } => "switchboard_routing_timeouts_total",
                    RoutingReply::Rejected {
                        reason, conn_id, ..
                    } => {
                        tracing::info!(tenant, queue, conn_id = %conn_id, reason, "submission rejected");
                        "switchboard_routing_rejected_total"
                    }
                };
                metrics::counter!(name, "tenant" => tenant.to_string(), "queue" => queue)
                    .increment(1);
                match serde_json::to_vec(&reply) {
                    Ok(payload) => emits.push(Emit::To {
                        stream: to,
                        payload,
                    }),
                    Err(e) => tracing::warn!(tenant, error = %e, "reply not serializable"),
                }
            }
        }
    }
    emits
}

impl Core for Queues {
    type Request = RoutingRequest;
    fn request(&mut self, req: &RoutingRequest, now: u64) -> Vec<Emit> {
        let out = Queues::request(self, req, now);
        emits(&self.tenant, out)
    }
    fn event(&mut self, event: &Event, now: u64) -> Vec<Emit> {
        let out = Queues::event(self, event, now);
        emits(&self.tenant, out)
    }
    fn tick(&mut self, now: u64) -> Vec<Emit> {
        let out = Queues::tick(self, now);
        emits(&self.tenant, out)
    }
    fn next_deadline(&self) -> Option<u64> {
        Queues::next_deadline(self)
    }
    fn configure(&mut self, config: &Config, tenant: &Tenant) {
        Queues::configure(self, tenant, config.routing.reservation_timeout_ms);
    }
}

/// Tuning of the role.
#[derive(Clone, Debug)]
pub struct Options {
    pub timing: Timing,
    pub consumer: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timing: Timing::default(),
            consumer: single_writer::consumer_name(),
        }
    }
}

/// The queues of the configured tenants.
pub struct Routing {
    tenants: single_writer::Tenants<Queues>,
}

impl Routing {
    /// Statistics per queue and whether this process is the tenant's writer; `None` for an
    /// unknown tenant.
    pub fn stats(
        &self,
        tenant: &str,
    ) -> Option<(std::collections::BTreeMap<String, QueueStats>, bool)> {
        let slot = self.tenants.get(tenant)?;
        let s = lock(&slot);
        Some((s.core.stats(single_writer::now_ms()), s.writer))
    }
}

/// What [`start`] gives back.
pub struct RoutingRole {
    pub router: Router,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub state: Arc<Routing>,
}

pub async fn start(
    config: Arc<Config>,
    bus: SharedBus,
    drain: CancellationToken,
    tenants: single_writer::TenantsFeed,
    options: Options,
) -> anyhow::Result<RoutingRole> {
    let reservation_ms = config.routing.reservation_timeout_ms;
    let started = single_writer::start_tenants(
        ROLE,
        routing_requests_stream,
        move |t| Queues::new(t, reservation_ms),
        config,
        bus,
        &options.consumer,
        &options.timing,
        drain,
        tenants,
        gauges,
    )
    .await?;
    let (task, state) = (
        started.task,
        Arc::new(Routing {
            tenants: started.tenants,
        }),
    );
    Ok(RoutingRole {
        router: routes(View::Local(state.tenants.clone())),
        task,
        state,
    })
}

fn gauges(tenants: &[(String, Shared<Queues>)]) {
    for (tenant, slot) in tenants {
        let stats = lock(slot).core.stats(single_writer::now_ms());
        for (queue, s) in stats {
            let labels = [("tenant", tenant.clone()), ("queue", queue)];
            metrics::gauge!("switchboard_queue_waiting", &labels).set(s.waiting as f64);
            metrics::gauge!("switchboard_queue_longest_wait_seconds", &labels)
                .set(s.longest_wait_ms as f64 / 1000.0);
            metrics::gauge!("switchboard_queue_agents_ready", &labels).set(s.agents_ready as f64);
        }
    }
}

/// `GET /v1/tenants/{t}/queues` and `/queues/{name}`; the desktop API puts its
/// authentication in front of them.
fn routes(view: View<Queues>) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/queues", get(list_queues))
        .route("/v1/tenants/{tenant}/queues/{queue}", get(get_queue))
        .with_state(view)
}

/// The queue routes of a process that does not run routing (a front-end on its own): the
/// same handlers, reading routing's snapshots on the bus.
pub fn remote_routes(
    config: Arc<Config>,
    bus: SharedBus,
    tenants: single_writer::TenantsFeed,
) -> Router {
    let reservation_ms = config.routing.reservation_timeout_ms;
    routes(View::Remote(Arc::new(Remote {
        role: ROLE,
        bus,
        config,
        tenants,
        new: Box::new(move |t| Queues::new(t, reservation_ms)),
    })))
}

/// Statistics per queue and whether this process is the tenant's writer, or the answer for
/// an unknown tenant or an unreadable bus.
async fn stats(
    view: &View<Queues>,
    tenant: &str,
) -> Result<(std::collections::BTreeMap<String, QueueStats>, bool), Response> {
    match view.get(tenant).await {
        Ok(Some(slot)) => {
            let s = lock(&slot);
            Ok((s.core.stats(single_writer::now_ms()), s.writer))
        }
        Ok(None) => Err(
            ApiProblem::not_found(format!("no tenant named {:?}", clip(tenant))).into_response(),
        ),
        Err(e) => {
            tracing::warn!(tenant, error = %e, "routing snapshot not read");
            Err(ApiProblem::new(503, "Bus unavailable", e.to_string()).into_response())
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

async fn list_queues(State(view): State<View<Queues>>, Path(tenant): Path<String>) -> Response {
    match stats(&view, &tenant).await {
        Err(answer) => answer,
        Ok((stats, writer)) => {
            Json(json!({ "tenant": tenant, "writer": writer, "queues": stats })).into_response()
        }
    }
}

async fn get_queue(
    State(view): State<View<Queues>>,
    Path((tenant, queue)): Path<(String, String)>,
) -> Response {
    let stats = match stats(&view, &tenant).await {
        Ok((stats, _)) => stats,
        Err(answer) => return answer,
    };
    match stats.get(&queue) {
        Some(s) => Json(json!({
            "queue": queue,
            "waiting": s.waiting,
            "longest_wait_ms": s.longest_wait_ms,
            "agents_ready": s.agents_ready,
        }))
        .into_response(),
        None => ApiProblem::new(
            404,
            "Unknown queue",
            format!("no call was ever queued in {:?}", clip(&queue)),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;
