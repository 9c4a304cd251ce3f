//! The `call-state` role: call-thread state (parties, states, user data, timestamps) folded
//! from the tenants' event streams, served over REST, rebuilt from the bus after a restart.
//!
//! * [`model`]: the pure reducer ([`CallBook`], one per tenant).
//! * The consumer (this module): for each configured tenant, reads `events:{tenant}` with the
//!   consumer group `call-state` and folds every entry in stream order, acknowledging it once
//!   folded. At start it rebuilds: the last snapshot (kv key `call-state:{tenant}`, written
//!   every 30 s while entries arrive, after [`Options::snapshot_every`] entries, and at
//!   drain), then every entry
//!   after the snapshot's position with `read_range`, then the entries its group had delivered
//!   but not acknowledged before a crash. The role is started (and `/readyz` can turn ready)
//!   only once every tenant is rebuilt. Entries at or below the position already folded are
//!   skipped, so redelivery (at-least-once) never folds an event twice.
//! * REST: `GET /v1/tenants/{tenant}/calls[?state=active|released|all]` and
//!   `GET /v1/tenants/{tenant}/calls/{conn_id}`; errors as `application/problem+json`.
//!
//! The state is in memory and complete in each process that runs the role: two processes
//! running `call-state` on one Redis would split the group's entries between them, so run one
//! per deployment (a group per instance is the way to scale it out later).

pub mod model;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::problem::ApiProblem;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_bus::{BusError, Entry, EntryId, GroupStart, SharedBus};
use switchboard_config::Config;
use switchboard_events::{ConnId, Event};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use model::{Applied, Call, CallBook, CallStatus, Limits, Party, PartyState};

/// The consumer group of the role on every `events:{tenant}` stream.
pub const GROUP: &str = "call-state";

/// Entries taken per read.
const BATCH: usize = 256;
/// How long one `read_group` waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);
/// Snapshot at least this often while entries arrive.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(30);

/// Tuning of the role; [`Options::default`] is what the binary uses.
#[derive(Clone, Debug)]
pub struct Options {
    pub limits: Limits,
    /// Write a snapshot after this many folded entries (0: only on the timer and at drain).
    pub snapshot_every: u64,
    /// This process's consumer name in the group.
    pub consumer: String,
}

impl Default for Options {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "local".to_string());
        Options {
            limits: Limits::default(),
            // A snapshot rewrites the whole book: mostly the 30 s timer decides.
            snapshot_every: 100_000,
            consumer: format!("{host}-{}", std::process::id()),
        }
    }
}

/// The state of every configured tenant, shared by the consumer and the HTTP handlers (and by
/// other roles of the process: put it in the shared state).
pub struct CallState {
    tenants: HashMap<String, Mutex<Tenant>>,
}

struct Tenant {
    book: CallBook,
    /// The id of the last entry folded in.
    position: Option<EntryId>,
    /// Entries folded since the last snapshot.
    unsaved: u64,
}

/// Which calls a listing returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    Active,
    Released,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    position: Option<EntryId>,
    calls: Vec<Call>,
}

const SNAPSHOT_VERSION: u32 = 1;

fn snapshot_key(tenant: &str) -> String {
    format!("call-state:{tenant}")
}

impl CallState {
    pub fn new<'a>(tenants: impl IntoIterator<Item = &'a str>, limits: Limits) -> CallState {
        CallState {
            tenants: tenants
                .into_iter()
                .map(|t| {
                    (
                        t.to_string(),
                        Mutex::new(Tenant {
                            book: CallBook::new(limits),
                            position: None,
                            unsaved: 0,
                        }),
                    )
                })
                .collect(),
        }
    }

    fn tenant(&self, tenant: &str) -> Option<std::sync::MutexGuard<'_, Tenant>> {
        self.tenants
            .get(tenant)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The configured tenants.
    pub fn tenants(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tenants.keys().cloned().collect();
        v.sort();
        v
    }

    /// `None` when the tenant is unknown; `Some(None)` when the call is.
    pub fn call(&self, tenant: &str, conn: ConnId) -> Option<Option<Call>> {
        self.tenant(tenant).map(|t| t.book.get(conn).cloned())
    }

    /// The tenant's calls (oldest first) and the id of the last entry folded in; `None` when
    /// the tenant is unknown.
    pub fn calls(&self, tenant: &str, filter: Filter) -> Option<(Vec<Call>, Option<EntryId>)> {
        let t = self.tenant(tenant)?;
        let calls = t
            .book
            .calls()
            .into_iter()
            .filter(|c| match filter {
                Filter::All => true,
                Filter::Active => c.state == CallStatus::Active,
                Filter::Released => c.state == CallStatus::Released,
            })
            .cloned()
            .collect();
        Some((calls, t.position))
    }

    /// Folds a stream entry of `tenant`'s stream unless it was folded already (its id is not
    /// after the position). Returns false for an unknown tenant or a skipped entry.
    pub fn fold_entry(&self, tenant: &str, entry: &Entry) -> bool {
        let Some(mut t) = self.tenant(tenant) else {
            return false;
        };
        if t.position.is_some_and(|p| entry.id <= p) {
            metrics::counter!("switchboard_call_state_entries_total", "result" => "duplicate")
                .increment(1);
            return false;
        }
        t.position = Some(entry.id);
        t.unsaved += 1;
        let result = match std::str::from_utf8(&entry.payload)
            .ok()
            .and_then(|s| Event::from_json(s).ok())
        {
            None => {
                tracing::warn!(tenant, entry = %entry.id, bytes = entry.payload.len(),
                    "call-state: entry is not an event; skipped");
                "invalid"
            }
            Some(event) if event.tenant() != tenant => {
                tracing::warn!(tenant, entry = %entry.id, event_tenant = event.tenant(),
                    "call-state: event of another tenant on this stream; skipped");
                "foreign"
            }
            Some(event) => match t.book.apply(&event) {
                Applied::Ignored => "ignored",
                Applied::Created => "created",
                Applied::Updated => "updated",
                Applied::Released => "released",
            },
        };
        metrics::counter!("switchboard_call_state_entries_total", "result" => result).increment(1);
        true
    }

    fn prune(&self, now_ms: u64) {
        for (name, t) in &self.tenants {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            t.book.prune(now_ms);
            let active = t.book.active();
            let released = t.book.len() - active;
            drop(t);
            metrics::gauge!("switchboard_call_state_calls", "tenant" => name.clone(), "state" => "active")
                .set(active as f64);
            metrics::gauge!("switchboard_call_state_calls", "tenant" => name.clone(), "state" => "released")
                .set(released as f64);
        }
    }

    /// The snapshot bytes of `tenant` if anything changed since the last one.
    fn take_snapshot(&self, tenant: &str, force: bool) -> Option<Vec<u8>> {
        let mut t = self.tenant(tenant)?;
        if t.unsaved == 0 && !force {
            return None;
        }
        t.unsaved = 0;
        let snap = Snapshot {
            version: SNAPSHOT_VERSION,
            position: t.position,
            calls: t.book.calls().into_iter().cloned().collect(),
        };
        serde_json::to_vec(&snap).ok()
    }

    fn restore(&self, tenant: &str, snap: Snapshot, limits: Limits) {
        if let Some(mut t) = self.tenant(tenant) {
            t.book = CallBook::from_calls(limits, snap.calls);
            t.position = snap.position;
            t.unsaved = 0;
        }
    }

    /// The id of the last entry of `tenant`'s stream folded in (`None` before the first, or
    /// for an unknown tenant): once it reaches an id a publisher got, that event is in.
    pub fn position(&self, tenant: &str) -> Option<EntryId> {
        self.tenant(tenant).and_then(|t| t.position)
    }

    fn unsaved(&self, tenant: &str) -> u64 {
        self.tenant(tenant).map_or(0, |t| t.unsaved)
    }
}

/// What [`start`] gives back.
pub struct CallStateRole {
    pub router: Router,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub state: Arc<CallState>,
}

/// Starts the role with [`Options::default`]: rebuilds every tenant from `bus`, then spawns
/// the consumer.
pub async fn start(
    config: Arc<Config>,
    bus: SharedBus,
    drain: CancellationToken,
) -> anyhow::Result<CallStateRole> {
    start_with(config, bus, drain, Options::default()).await
}

pub async fn start_with(
    config: Arc<Config>,
    bus: SharedBus,
    drain: CancellationToken,
    options: Options,
) -> anyhow::Result<CallStateRole> {
    let names: Vec<&str> = config.tenants.iter().map(|t| t.name.as_str()).collect();
    let state = Arc::new(CallState::new(names.iter().copied(), options.limits));
    let started = Instant::now();
    for tenant in &names {
        rebuild(&state, &bus, tenant, &options)
            .await
            .map_err(|e| anyhow::anyhow!("call-state: rebuilding tenant {tenant}: {e}"))?;
    }
    let calls: usize = names
        .iter()
        .filter_map(|t| state.calls(t, Filter::All))
        .map(|(c, _)| c.len())
        .sum();
    tracing::info!(
        tenants = names.len(),
        calls,
        ms = started.elapsed().as_millis() as u64,
        consumer = %options.consumer,
        "call-state rebuilt from the bus"
    );
    metrics::gauge!("switchboard_call_state_rebuild_seconds").set(started.elapsed().as_secs_f64());
    state.prune(now_ms());

    let mut tasks = tokio::task::JoinSet::new();
    for tenant in names {
        let (state, bus, drain, options) =
            (state.clone(), bus.clone(), drain.clone(), options.clone());
        let tenant = tenant.to_string();
        tasks.spawn(async move { consume(state, bus, tenant, drain, options).await });
    }
    {
        let (state, drain) = (state.clone(), drain.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = drain.cancelled() => return Ok(()),
                    _ = tick.tick() => state.prune(now_ms()),
                }
            }
        });
    }
    let task = tokio::spawn(async move {
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| anyhow::anyhow!("call-state task: {e}"))??;
        }
        Ok(())
    });
    Ok(CallStateRole {
        router: routes(state.clone()),
        task,
        state,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Snapshot, then the stream after it, then the group's leftovers.
async fn rebuild(
    state: &CallState,
    bus: &SharedBus,
    tenant: &str,
    options: &Options,
) -> Result<(), BusError> {
    let stream = switchboard_bus::events_stream(tenant);
    if let Some(bytes) = bus.kv_get(&snapshot_key(tenant)).await? {
        match serde_json::from_slice::<Snapshot>(&bytes) {
            Ok(snap) if snap.version == SNAPSHOT_VERSION => {
                tracing::info!(tenant, calls = snap.calls.len(),
                    position = ?snap.position.map(|p| p.to_string()), "call-state snapshot loaded");
                state.restore(tenant, snap, options.limits);
            }
            Ok(snap) => {
                tracing::warn!(
                    tenant,
                    version = snap.version,
                    "call-state snapshot of another version; replaying the whole stream"
                )
            }
            Err(e) => {
                tracing::warn!(tenant, error = %e, "call-state snapshot unreadable; replaying the whole stream")
            }
        }
    }
    // A stream shorter than the snapshot (the bus was wiped): start over from what is there.
    let last = bus.last_id(&stream).await?;
    if let Some(pos) = state.position(tenant) {
        let behind = match last {
            Some(l) => l < pos,
            None => true,
        };
        if behind {
            tracing::warn!(tenant, position = %pos, "call-state snapshot is ahead of the stream; dropping it");
            state.restore(
                tenant,
                Snapshot {
                    version: SNAPSHOT_VERSION,
                    position: None,
                    calls: Vec::new(),
                },
                options.limits,
            );
        }
    }
    let mut replayed = 0u64;
    loop {
        let page = bus
            .read_range(&stream, state.position(tenant), 1000)
            .await?;
        if page.is_empty() {
            break;
        }
        for entry in &page {
            state.fold_entry(tenant, entry);
        }
        replayed += page.len() as u64;
    }
    // A new group starts where the replay ended; an existing one keeps its position and
    // redelivers what it had not delivered yet (skipped if already folded).
    let start = match state.position(tenant) {
        Some(p) => GroupStart::After(p),
        None => GroupStart::Beginning,
    };
    bus.create_group(&stream, GROUP, start).await?;
    // Entries delivered to a consumer (of an earlier run) and never acknowledged.
    let mut reclaimed = 0usize;
    loop {
        let pending = bus
            .claim_pending(&stream, GROUP, &options.consumer, Duration::ZERO, BATCH)
            .await?;
        if pending.is_empty() {
            break;
        }
        for entry in &pending {
            state.fold_entry(tenant, entry);
        }
        let ids: Vec<EntryId> = pending.iter().map(|e| e.id).collect();
        bus.ack(&stream, GROUP, &ids).await?;
        reclaimed += pending.len();
    }
    tracing::info!(tenant, replayed, reclaimed, "call-state tenant rebuilt");
    Ok(())
}

async fn save(state: &CallState, bus: &SharedBus, tenant: &str, force: bool) {
    let Some(bytes) = state.take_snapshot(tenant, force) else {
        return;
    };
    match bus.kv_set(&snapshot_key(tenant), &bytes).await {
        Ok(()) => tracing::debug!(tenant, bytes = bytes.len(), "call-state snapshot saved"),
        Err(e) => {
            metrics::counter!("switchboard_call_state_bus_errors_total").increment(1);
            tracing::warn!(tenant, error = %e, "call-state snapshot not saved")
        }
    }
}

/// The live loop of one tenant: read, fold, ack; snapshot now and then; until the drain.
async fn consume(
    state: Arc<CallState>,
    bus: SharedBus,
    tenant: String,
    drain: CancellationToken,
    options: Options,
) -> anyhow::Result<()> {
    let stream = switchboard_bus::events_stream(&tenant);
    let mut last_snapshot = Instant::now();
    let mut failures = 0u32;
    loop {
        let read = tokio::select! {
            _ = drain.cancelled() => break,
            r = bus.read_group(&stream, GROUP, &options.consumer, BATCH, BLOCK) => r,
        };
        match read {
            Ok(entries) => {
                failures = 0;
                if !entries.is_empty() {
                    for entry in &entries {
                        state.fold_entry(&tenant, entry);
                    }
                    let ids: Vec<EntryId> = entries.iter().map(|e| e.id).collect();
                    if let Err(e) = bus.ack(&stream, GROUP, &ids).await {
                        // They stay pending and are reclaimed (and skipped) after a restart.
                        metrics::counter!("switchboard_call_state_bus_errors_total").increment(1);
                        tracing::warn!(tenant, error = %e, "call-state ack failed");
                    }
                }
                let due =
                    options.snapshot_every > 0 && state.unsaved(&tenant) >= options.snapshot_every;
                if due || last_snapshot.elapsed() >= SNAPSHOT_INTERVAL {
                    save(&state, &bus, &tenant, false).await;
                    last_snapshot = Instant::now();
                }
            }
            Err(BusError::NoGroup { .. }) => {
                // Someone deleted the group (or the Redis data): make it again where we are.
                let start = state
                    .position(&tenant)
                    .map_or(GroupStart::Beginning, GroupStart::After);
                tracing::warn!(tenant, "call-state group missing; creating it again");
                if let Err(e) = bus.create_group(&stream, GROUP, start).await {
                    tracing::warn!(tenant, error = %e, "call-state cannot create its group");
                    backoff(&drain, &mut failures).await;
                }
            }
            Err(e) => {
                metrics::counter!("switchboard_call_state_bus_errors_total").increment(1);
                tracing::warn!(tenant, error = %e, "call-state read failed; retrying");
                backoff(&drain, &mut failures).await;
            }
        }
    }
    save(&state, &bus, &tenant, false).await;
    tracing::info!(tenant, "call-state consumer stopped");
    Ok(())
}

async fn backoff(drain: &CancellationToken, failures: &mut u32) {
    *failures = failures.saturating_add(1);
    let wait = Duration::from_millis(100u64 << (*failures).min(5)).min(Duration::from_secs(3));
    tokio::select! {
        _ = drain.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// REST

/// `GET /v1/tenants/{tenant}/calls` and `GET /v1/tenants/{tenant}/calls/{conn_id}`.
pub fn routes(state: Arc<CallState>) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/calls", get(list_calls))
        .route("/v1/tenants/{tenant}/calls/{conn_id}", get(get_call))
        .with_state(state)
}

fn problem(status: StatusCode, title: &'static str, detail: &str) -> Response {
    ApiProblem::new(status.as_u16(), title, detail).into_response()
}

fn unknown_tenant(tenant: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Unknown tenant",
        &format!("no tenant named {:?}", clip(tenant)),
    )
}

/// Echoes at most 64 characters of what a client sent.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

fn parse_filter(query: Option<&str>) -> Result<Filter, String> {
    let mut filter = Filter::All;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "state" => {
                filter = match value {
                    "all" => Filter::All,
                    "active" => Filter::Active,
                    "released" => Filter::Released,
                    other => {
                        return Err(format!(
                            "state must be active, released or all, not {:?}",
                            clip(other)
                        ))
                    }
                }
            }
            other => return Err(format!("unknown query parameter {:?}", clip(other))),
        }
    }
    Ok(filter)
}

async fn list_calls(
    State(state): State<Arc<CallState>>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let filter = match parse_filter(query.as_deref()) {
        Ok(f) => f,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Bad query", &detail),
    };
    let Some((calls, position)) = state.calls(&tenant, filter) else {
        return unknown_tenant(&tenant);
    };
    let active = calls
        .iter()
        .filter(|c| c.state == CallStatus::Active)
        .count();
    Json(json!({
        "tenant": tenant,
        "position": position,
        "active": active,
        "calls": calls,
    }))
    .into_response()
}

async fn get_call(
    State(state): State<Arc<CallState>>,
    Path((tenant, conn_id)): Path<(String, String)>,
) -> Response {
    let conn = match conn_id.parse::<ConnId>() {
        Ok(c) => c,
        Err(_) => {
            if state.call(&tenant, ConnId(0)).is_none() {
                return unknown_tenant(&tenant);
            }
            return problem(
                StatusCode::BAD_REQUEST,
                "Bad connection id",
                &format!(
                    "{:?} is not a connection id (16 hex digits)",
                    clip(&conn_id)
                ),
            );
        }
    };
    match state.call(&tenant, conn) {
        None => unknown_tenant(&tenant),
        Some(None) => problem(
            StatusCode::NOT_FOUND,
            "Unknown call",
            &format!("tenant {tenant:?} has no call {conn}"),
        ),
        Some(Some(call)) => Json(call).into_response(),
    }
}

#[cfg(test)]
mod tests;
