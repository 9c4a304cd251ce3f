//! The `orchestrator` role: the bus glue around [`Orchestrator`].
//!
//! # Sharing work and failing over
//!
//! * **Route requests**: every node reads `events:{tenant}` (for each tenant with route
//!   points, see [`RoutePoints`]) in consumer group `orchestrator`, so each EventRouteRequest goes to one node.
//!   That node takes the lease `orchestrator:{tenant}:{conn}`, starts the route point's
//!   strategy, writes its first snapshot, announces it on the index stream and acks the
//!   entry. Entries a dead node never acked are claimed after a lease time.
//! * **Call events**: every node also reads `events:{tenant}` from its own position
//!   (`read_range`) and hands each event to the session of its call, if it runs one.
//! * **Routing replies**: submissions name `orchestrator:{tenant}:replies` as `reply_to`,
//!   one stream per tenant that every node reads, keeping the replies of its own sessions.
//!   Whichever node runs a session when the reply comes (the submitter, or the node that
//!   took the session over) gets it, and a reply that came while nobody ran the session is
//!   replayed from the snapshot's position.
//! * **Snapshots**: after every macrostep the session (SCXML state, data model, what it waits
//!   for, the stream positions it consumed) is written to kv `orchestrator:{tenant}:{conn}`,
//!   after its requests were published. A takeover replays what came after the positions, so
//!   a macrostep whose snapshot was lost runs again and its requests may be published twice
//!   (same `request_id`): at least once.
//! * **Index and takeover**: `orchestrator:{tenant}:sessions` is an append-only stream of
//!   `{"op":"start"|"end","conn_id"}` records. Every node folds it into the set of live
//!   sessions and, every quarter lease, tries to take the lease of those it does not run.
//!   Leases are renewed every third of their time; when one is taken (it expired: the node
//!   died or stalled), the taker restores the snapshot and replays the events and replies
//!   after it. A node that fails to renew a lease drops the session (someone else runs it).
//!   On drain, a node releases its leases so that others take its sessions over at once.
//!
//! A [`Session`](switchboard_scxml::Session) is not `Send` (QuickJS): the node runs on a
//! thread of its own with a single-threaded runtime.

use super::core::{replies_stream, Action, FetchRequest, Orchestrator, SessionKey, Strategy};
use super::demo;
use crate::dialplan::role::DialplanCell;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchboard_bus::{events_stream, EntryId, GroupStart, SharedBus};
use switchboard_config::Config;
use switchboard_events::requests::RoutingReply;
use switchboard_events::{ConnId, Event};
use switchboard_media::{HttpRequest, PromptCache, PromptSettings};
use switchboard_scxml::Document;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The consumer group of route requests.
pub const GROUP: &str = "orchestrator";

/// How a node runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Consumer name and lease owner: unique per process.
    pub node_id: String,
    /// Lease time of a session: how long a dead node's sessions wait for a takeover.
    pub lease: Duration,
    /// How often the streams are polled.
    pub poll: Duration,
    /// Base URL of the built-in documents (`http://{http}/orchestrator/builtin/`): relative
    /// URLs of `builtin:` and `file:` strategies resolve against it.
    pub http_base: String,
    /// Where `file:` strategies live.
    pub data_dir: PathBuf,
    /// Timeout of strategy and `<sb:fetch>` HTTP requests.
    pub fetch_timeout: Duration,
    /// Sessions older than this end (a call whose end was never reported).
    pub max_session: Duration,
    /// How often a node announces the sessions it runs on the index again, so that the
    /// bus's retention never trims the only record of a live session (a quarter of
    /// `bus.retention_s`).
    pub reannounce: Duration,
}

impl Settings {
    pub fn new(http: std::net::SocketAddr, data_dir: PathBuf) -> Settings {
        Settings {
            node_id: format!(
                "orchestrator-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            lease: Duration::from_secs(5),
            poll: Duration::from_millis(10),
            http_base: format!("http://{http}/orchestrator/builtin/"),
            data_dir,
            fetch_timeout: Duration::from_secs(10),
            max_session: Duration::from_millis(super::core::DEFAULT_MAX_SESSION_MS),
            reannounce: Duration::from_secs(900),
        }
    }
}

/// A started node.
pub struct Started {
    pub router: Router,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// Stops the node at once as if the process died: no lease released, nothing persisted
    /// (for failover tests).
    pub crash: CancellationToken,
}

/// Where the route points and their strategies come from.
#[derive(Clone)]
pub enum RoutePoints {
    /// The configuration's `[[tenants.route_points]]`, as read at start.
    Config(Arc<Config>),
    /// The process's live dial plan: the configuration store, changes made through the REST
    /// API included (new tenants are followed within a quarter lease).
    Live(Arc<DialplanCell>),
}

impl RoutePoints {
    /// The tenants whose events are followed.
    fn tenants(&self) -> Vec<String> {
        match self {
            RoutePoints::Config(c) => c
                .tenants
                .iter()
                .filter(|t| !t.route_points.is_empty())
                .map(|t| t.name.clone())
                .collect(),
            RoutePoints::Live(cell) => cell.current().tenant_names().map(str::to_owned).collect(),
        }
    }

    /// The strategy URL of route point `dn`, if it has one.
    fn strategy(&self, tenant: &str, dn: &str) -> Option<String> {
        match self {
            RoutePoints::Config(c) => c
                .tenants
                .iter()
                .find(|t| t.name == tenant)?
                .route_points
                .iter()
                .find(|r| r.number == dn)
                .map(|r| r.strategy_url.clone()),
            RoutePoints::Live(cell) => cell
                .current()
                .route_point(tenant, dn)
                .map(|r| r.strategy_url.clone()),
        }
    }
}

/// Starts a node: its task runs until `drain` is cancelled (then releases its leases).
pub fn start(
    points: RoutePoints,
    bus: SharedBus,
    settings: Settings,
    drain: CancellationToken,
) -> Started {
    let crash = CancellationToken::new();
    let stop = crash.clone();
    let task = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let mut node = Node::new(bus, settings, points).await?;
            node.run(drain, stop).await
        })
    });
    Started {
        router: routes(),
        task,
        crash,
    }
}

/// `GET /orchestrator/builtin/{name}`: the built-in documents (the demo's VoiceXML menu is
/// fetched from here by the media server).
pub fn routes() -> Router {
    Router::new().route("/orchestrator/builtin/{name}", get(builtin))
}

async fn builtin(Path(name): Path<String>) -> Response {
    match demo::builtin(&name) {
        Some((text, ctype)) => ([(header::CONTENT_TYPE, ctype)], text).into_response(),
        None => crate::problem::ApiProblem::not_found(format!("no built-in document {name:?}"))
            .into_response(),
    }
}

/// A record of the index stream.
#[derive(Serialize, Deserialize)]
struct IndexRecord {
    op: String,
    conn_id: ConnId,
}

fn index_stream(tenant: &str) -> String {
    format!("orchestrator:{tenant}:sessions")
}

fn snapshot_key(key: &SessionKey) -> String {
    format!("orchestrator:{}:{}", key.tenant, key.conn)
}

fn lease_key(key: &SessionKey) -> String {
    format!("orchestrator:{}:{}", key.tenant, key.conn)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A `file:` strategy's path: under `data_dir`, no `..`.
fn file_path(data_dir: &std::path::Path, path: &str) -> Result<PathBuf, String> {
    let p = std::path::Path::new(path);
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("file://{path}: `..` is not allowed"));
    }
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        data_dir.join(p)
    };
    if !full.starts_with(data_dir) {
        return Err(format!("file://{path} is not under data_dir"));
    }
    Ok(full)
}

/// Per tenant: where the node is in each stream.
struct Tenant {
    name: String,
    events: Option<EntryId>,
    replies: Option<EntryId>,
    index: Option<EntryId>,
    /// Sessions announced and not ended (from the index).
    live: BTreeSet<ConnId>,
}

struct Node {
    bus: SharedBus,
    points: RoutePoints,
    settings: Settings,
    core: Orchestrator,
    tenants: Vec<Tenant>,
    strategies: HashMap<String, (Instant, Strategy)>,
    http: Arc<PromptCache>,
    docs: Arc<crate::mcp::fetch::DocumentCache>,
    /// Sessions whose start is on the index.
    announced: BTreeSet<SessionKey>,
    /// Actions not carried out yet because the bus failed.
    unapplied: std::collections::VecDeque<Action>,
    fetch_tx: mpsc::UnboundedSender<(SessionKey, u64, super::core::FetchResult)>,
    fetch_rx: mpsc::UnboundedReceiver<(SessionKey, u64, super::core::FetchResult)>,
}

/// How long a parsed strategy is reused before it is fetched again.
const STRATEGY_TTL: Duration = Duration::from_secs(30);
/// Entries read per stream per poll.
const BATCH: usize = 256;

impl Node {
    async fn new(bus: SharedBus, settings: Settings, points: RoutePoints) -> anyhow::Result<Node> {
        let http = PromptCache::new(PromptSettings {
            timeout: settings.fetch_timeout,
            max_fetch_bytes: 4 << 20,
            ..PromptSettings::default()
        });
        let (fetch_tx, fetch_rx) = mpsc::unbounded_channel();
        let mut core = Orchestrator::new();
        core.set_max_session_ms(settings.max_session.as_millis() as u64);
        let mut node = Node {
            bus,
            points,
            settings,
            core,
            tenants: Vec::new(),
            strategies: HashMap::new(),
            http: Arc::new(http),
            docs: Arc::default(),
            announced: BTreeSet::new(),
            unapplied: Default::default(),
            fetch_tx,
            fetch_rx,
        };
        node.follow_new_tenants().await?;
        tracing::info!(node = %node.settings.node_id, tenants = node.tenants.len(), "orchestrator node started");
        Ok(node)
    }

    /// Starts following the tenants the route point source names and this node does not
    /// follow yet: the consumer group, and the streams from their current ends.
    async fn follow_new_tenants(&mut self) -> anyhow::Result<()> {
        for name in self.points.tenants() {
            if self.tenants.iter().any(|t| t.name == name) {
                continue;
            }
            let events = events_stream(&name);
            self.bus
                .create_group(&events, GROUP, GroupStart::End)
                .await?;
            self.tenants.push(Tenant {
                events: self.bus.last_id(&events).await?,
                replies: self.bus.last_id(&replies_stream(&name)).await?,
                index: None,
                live: BTreeSet::new(),
                name,
            });
        }
        Ok(())
    }

    async fn run(
        &mut self,
        drain: CancellationToken,
        crash: CancellationToken,
    ) -> anyhow::Result<()> {
        let renew_every = self.settings.lease / 3;
        let scan_every = (self.settings.lease / 4).max(Duration::from_millis(50));
        let mut last_renew = Instant::now();
        let mut last_announce = Instant::now();
        let mut last_scan = Instant::now()
            .checked_sub(scan_every)
            .unwrap_or_else(Instant::now);
        loop {
            tokio::select! {
                _ = crash.cancelled() => {
                    tracing::warn!(node = %self.settings.node_id, "orchestrator node stopped abruptly");
                    return Ok(());
                }
                _ = drain.cancelled() => break,
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
            let scan = last_scan.elapsed() >= scan_every;
            if let Err(e) = self.poll_once(scan).await {
                metrics::counter!("switchboard_orchestrator_errors_total").increment(1);
                tracing::warn!(node = %self.settings.node_id, error = %e, "orchestrator poll failed");
            }
            if last_renew.elapsed() >= renew_every {
                last_renew = Instant::now();
                self.renew().await;
            }
            if last_announce.elapsed() >= self.settings.reannounce {
                last_announce = Instant::now();
                self.reannounce().await;
            }
            if scan {
                last_scan = Instant::now();
                if let Err(e) = self.follow_new_tenants().await {
                    tracing::warn!(node = %self.settings.node_id, error = %e, "cannot follow new tenants");
                }
                if let Err(e) = self.take_over().await {
                    tracing::warn!(node = %self.settings.node_id, error = %e, "takeover scan failed");
                }
            }
            metrics::gauge!("switchboard_orchestrator_sessions_active").set(self.core.len() as f64);
        }
        self.release_all().await;
        Ok(())
    }

    /// One round: route requests (`claim`: also those a dead node left), events, replies,
    /// the index, fetch results, timers.
    async fn poll_once(&mut self, claim: bool) -> anyhow::Result<()> {
        for t in 0..self.tenants.len() {
            self.route_requests(t, claim).await?;
            self.follow_events(t).await?;
            self.follow_replies(t).await?;
            self.follow_index(t).await?;
        }
        while let Ok((key, id, result)) = self.fetch_rx.try_recv() {
            self.core.handle_fetch(&key, id, result, wall_ms());
        }
        self.core.handle_timers(wall_ms());
        self.apply().await
    }

    /// New route requests of the group (and ones a dead node left unacknowledged).
    async fn route_requests(&mut self, t: usize, claim: bool) -> anyhow::Result<()> {
        let stream = events_stream(&self.tenants[t].name);
        let node = self.settings.node_id.clone();
        let mut entries = self
            .bus
            .read_group(&stream, GROUP, &node, 64, Duration::ZERO)
            .await?;
        if claim {
            entries.extend(
                self.bus
                    .claim_pending(&stream, GROUP, &node, self.settings.lease, 16)
                    .await?,
            );
        }
        for entry in entries {
            let done = match Event::from_json(&String::from_utf8_lossy(&entry.payload)) {
                Ok(Event::EventRouteRequest(attrs)) => {
                    self.start_session(t, entry.id, &attrs).await?
                }
                _ => true,
            };
            if done {
                self.bus.ack(&stream, GROUP, &[entry.id]).await?;
            }
        }
        Ok(())
    }

    /// Starts the strategy of a route request; false when it must be retried (the entry
    /// stays pending).
    async fn start_session(
        &mut self,
        t: usize,
        at: EntryId,
        attrs: &switchboard_events::CallAttrs,
    ) -> anyhow::Result<bool> {
        let tenant = self.tenants[t].name.clone();
        let (Some(url), Some(conn)) =
            (self.points.strategy(&tenant, &attrs.this_dn), attrs.conn_id)
        else {
            return Ok(true);
        };
        let key = SessionKey { tenant, conn };
        if self.core.contains(&key) || self.bus.kv_get(&snapshot_key(&key)).await?.is_some() {
            // Started already (a redelivery): the index and the leases take care of it.
            return Ok(true);
        }
        let lease = lease_key(&key);
        if !self
            .bus
            .lease_acquire(&lease, &self.settings.node_id, self.settings.lease)
            .await?
        {
            return Ok(false);
        }
        let strategy = match self.strategy(&url).await {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!("switchboard_orchestrator_errors_total").increment(1);
                tracing::error!(tenant = %key.tenant, conn_id = %conn, strategy = %url, error = %e, "strategy unavailable: the route point's timeout decides");
                self.bus
                    .lease_release(&lease, &self.settings.node_id)
                    .await?;
                return Ok(true);
            }
        };
        let replies_at = self.tenants[t].replies;
        if let Err(e) = self
            .core
            .start(attrs, &strategy, Some(at), replies_at, wall_ms())
        {
            tracing::error!(tenant = %key.tenant, conn_id = %conn, error = %e, "strategy did not start");
            self.bus
                .lease_release(&lease, &self.settings.node_id)
                .await?;
            return Ok(true);
        }
        self.apply().await?;
        // Events of the call that this node's reader passed before the session existed.
        self.catch_up(&key).await?;
        Ok(true)
    }

    /// The strategy at `url`, from the cache while fresh.
    async fn strategy(&mut self, url: &str) -> Result<Strategy, String> {
        if let Some((at, s)) = self.strategies.get(url) {
            if url.starts_with("builtin:") || at.elapsed() < STRATEGY_TTL {
                return Ok(s.clone());
            }
        }
        let (text, base) = self.strategy_text(url).await?;
        let doc = Document::load(&text, Some(url), self.core.environment())
            .map_err(|e| format!("strategy {url}: {e}"))?;
        let s = Strategy {
            url: url.to_owned(),
            base,
            doc,
        };
        self.strategies
            .insert(url.to_owned(), (Instant::now(), s.clone()));
        Ok(s)
    }

    async fn strategy_text(&self, url: &str) -> Result<(String, String), String> {
        if let Some(name) = url.strip_prefix("builtin:") {
            let (text, _) = demo::builtin(name).ok_or(format!("no built-in strategy {name:?}"))?;
            return Ok((
                text.to_owned(),
                format!("{}{name}", self.settings.http_base),
            ));
        }
        if let Some(path) = url.strip_prefix("file://") {
            let path = file_path(&self.settings.data_dir, path)?;
            let text = tokio::fs::read_to_string(&path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok((text, self.settings.http_base.clone()));
        }
        let (text, _) = self
            .docs
            .fetch(
                &self.http,
                url,
                switchboard_vxml::Method::Get,
                &[],
                Default::default(),
                Some(self.settings.fetch_timeout),
            )
            .await;
        text.map(|t| (t, url.to_owned())).map_err(|e| e.reason)
    }

    /// Hands a tenant's new events to the sessions.
    async fn follow_events(&mut self, t: usize) -> anyhow::Result<()> {
        let stream = events_stream(&self.tenants[t].name);
        let entries = self
            .bus
            .read_range(&stream, self.tenants[t].events, BATCH)
            .await?;
        for entry in entries {
            self.tenants[t].events = Some(entry.id);
            if self.core.is_empty() {
                continue;
            }
            if let Ok(ev) = Event::from_json(&String::from_utf8_lossy(&entry.payload)) {
                self.core.handle_event(Some(entry.id), &ev, wall_ms());
            }
        }
        Ok(())
    }

    async fn follow_replies(&mut self, t: usize) -> anyhow::Result<()> {
        let name = self.tenants[t].name.clone();
        let entries = self
            .bus
            .read_range(&replies_stream(&name), self.tenants[t].replies, BATCH)
            .await?;
        for entry in entries {
            self.tenants[t].replies = Some(entry.id);
            match serde_json::from_slice::<RoutingReply>(&entry.payload) {
                Ok(r) => self.core.handle_reply(&name, Some(entry.id), &r, wall_ms()),
                Err(e) => {
                    tracing::warn!(tenant = %name, error = %e, "unreadable routing reply skipped")
                }
            }
        }
        Ok(())
    }

    async fn follow_index(&mut self, t: usize) -> anyhow::Result<()> {
        loop {
            let tenant = &mut self.tenants[t];
            let entries = self
                .bus
                .read_range(&index_stream(&tenant.name), tenant.index, BATCH)
                .await?;
            let more = entries.len() == BATCH;
            for entry in entries {
                tenant.index = Some(entry.id);
                if let Ok(r) = serde_json::from_slice::<IndexRecord>(&entry.payload) {
                    if r.op == "start" {
                        tenant.live.insert(r.conn_id);
                    } else {
                        tenant.live.remove(&r.conn_id);
                    }
                }
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Carries out the core's actions, in order. An action the bus refused is kept and tried
    /// again first on the next call (a request must not be lost to a bus hiccup).
    async fn apply(&mut self) -> anyhow::Result<()> {
        loop {
            let Some(action) = self
                .unapplied
                .pop_front()
                .or_else(|| self.core.poll_action())
            else {
                return Ok(());
            };
            if let Err(e) = self.apply_one(action.clone()).await {
                self.unapplied.push_front(action);
                return Err(e);
            }
        }
    }

    async fn apply_one(&mut self, action: Action) -> anyhow::Result<()> {
        match action {
            Action::Call { stream, request } => {
                let json = serde_json::to_vec(&request)?;
                self.bus.publish(&stream, &json).await?;
            }
            Action::Routing { stream, request } => {
                let json = serde_json::to_vec(&request)?;
                self.bus.publish(&stream, &json).await?;
            }
            Action::Fetch { key, id, request } => self.fetch(key, id, request),
            Action::Persist { key, snapshot } => {
                self.bus.kv_set(&snapshot_key(&key), &snapshot).await?;
                if !self.announced.contains(&key) {
                    self.index(&key, "start").await?;
                    self.announced.insert(key);
                }
            }
            Action::Ended { key, .. } => {
                self.bus.kv_delete(&snapshot_key(&key)).await?;
                self.index(&key, "end").await?;
                self.announced.remove(&key);
                self.bus
                    .lease_release(&lease_key(&key), &self.settings.node_id)
                    .await?;
            }
        }
        Ok(())
    }

    /// The sessions this node runs, announced again (folding a start twice changes nothing).
    async fn reannounce(&self) {
        let keys: Vec<SessionKey> = self.core.keys().cloned().collect();
        for key in keys {
            if let Err(e) = self.index(&key, "start").await {
                tracing::warn!(node = %self.settings.node_id, error = %e, "cannot announce the sessions again");
                return;
            }
        }
    }

    async fn index(&self, key: &SessionKey, op: &str) -> anyhow::Result<()> {
        let r = serde_json::to_vec(&IndexRecord {
            op: op.into(),
            conn_id: key.conn,
        })?;
        self.bus.publish(&index_stream(&key.tenant), &r).await?;
        Ok(())
    }

    /// An `<sb:fetch>`: made on this thread's runtime, reported through the channel.
    fn fetch(&self, key: SessionKey, id: u64, request: FetchRequest) {
        let http = self.http.clone();
        let tx = self.fetch_tx.clone();
        tokio::task::spawn_local(async move {
            let post = request.method == "POST";
            let body = request.body.as_ref().filter(|_| post).map(|b| {
                (
                    "application/json".to_owned(),
                    bytes::Bytes::from(b.to_string()),
                )
            });
            let result = http
                .http(HttpRequest {
                    post,
                    url: request.url.clone(),
                    body,
                })
                .await
                .map(|r| {
                    let body = serde_json::from_slice::<Json>(&r.body).unwrap_or(Json::Null);
                    (r.status, body)
                })
                .map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::info!(tenant = %key.tenant, conn_id = %key.conn, url = %request.url, error = %e, "fetch failed");
            }
            let _ = tx.send((key, id, result));
        });
    }

    async fn renew(&mut self) {
        let keys: Vec<SessionKey> = self.core.keys().cloned().collect();
        for key in keys {
            let held = self
                .bus
                .lease_renew(
                    &lease_key(&key),
                    &self.settings.node_id,
                    self.settings.lease,
                )
                .await;
            if matches!(held, Ok(false)) {
                tracing::warn!(tenant = %key.tenant, conn_id = %key.conn, "session lease lost: another node runs it");
                self.core.forget(&key);
                self.announced.remove(&key);
            }
        }
    }

    /// Takes the sessions whose lease expired.
    async fn take_over(&mut self) -> anyhow::Result<()> {
        for t in 0..self.tenants.len() {
            let tenant = self.tenants[t].name.clone();
            let orphans: Vec<ConnId> = self.tenants[t].live.iter().copied().collect();
            for conn in orphans {
                let key = SessionKey {
                    tenant: tenant.clone(),
                    conn,
                };
                if self.core.contains(&key) {
                    continue;
                }
                let lease = lease_key(&key);
                if !self
                    .bus
                    .lease_acquire(&lease, &self.settings.node_id, self.settings.lease)
                    .await?
                {
                    continue;
                }
                let started = Instant::now();
                let Some(snapshot) = self.bus.kv_get(&snapshot_key(&key)).await? else {
                    // Ended (its end record is on the way).
                    self.tenants[t].live.remove(&conn);
                    self.bus
                        .lease_release(&lease, &self.settings.node_id)
                        .await?;
                    continue;
                };
                match self.core.restore(&snapshot, wall_ms()) {
                    Ok(_) => {
                        self.announced.insert(key.clone());
                        self.apply().await?;
                        self.catch_up(&key).await?;
                        tracing::info!(tenant = %key.tenant, conn_id = %conn, node = %self.settings.node_id, restore_ms = started.elapsed().as_millis() as u64, "session taken over");
                    }
                    Err(e) => {
                        metrics::counter!("switchboard_orchestrator_errors_total").increment(1);
                        tracing::error!(tenant = %key.tenant, conn_id = %conn, error = %e, "cannot restore the session: dropped");
                        self.tenants[t].live.remove(&conn);
                        self.bus.kv_delete(&snapshot_key(&key)).await?;
                        self.index(&key, "end").await?;
                        self.bus
                            .lease_release(&lease, &self.settings.node_id)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Replays to a session the events and replies after its positions, up to where this
    /// node's readers are.
    async fn catch_up(&mut self, key: &SessionKey) -> anyhow::Result<()> {
        let Some(t) = self.tenants.iter().position(|t| t.name == key.tenant) else {
            return Ok(());
        };
        let (mut events, mut replies) = match self.core.positions(key) {
            Some(p) => p,
            None => return Ok(()),
        };
        let events_end = self.tenants[t].events;
        while events < events_end {
            let entries = self
                .bus
                .read_range(&events_stream(&key.tenant), events, BATCH)
                .await?;
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                if Some(entry.id) > events_end {
                    break;
                }
                events = Some(entry.id);
                // The core hands each entry to its call's session once: the other sessions of
                // this node saw these entries already (up to `events_end`) and skip them.
                if let Ok(ev) = Event::from_json(&String::from_utf8_lossy(&entry.payload)) {
                    self.core.handle_event(Some(entry.id), &ev, wall_ms());
                }
            }
            self.apply().await?;
            if !self.core.contains(key) {
                return Ok(());
            }
        }
        let replies_end = self.tenants[t].replies;
        while replies < replies_end {
            let entries = self
                .bus
                .read_range(&replies_stream(&key.tenant), replies, BATCH)
                .await?;
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                if Some(entry.id) > replies_end {
                    break;
                }
                replies = Some(entry.id);
                if let Ok(r) = serde_json::from_slice::<RoutingReply>(&entry.payload) {
                    self.core
                        .handle_reply(&key.tenant, Some(entry.id), &r, wall_ms());
                }
            }
            self.apply().await?;
        }
        Ok(())
    }

    /// On drain: gives the leases up so that other nodes continue the sessions at once.
    async fn release_all(&mut self) {
        let keys: Vec<SessionKey> = self.core.keys().cloned().collect();
        for key in keys {
            let _ = self
                .bus
                .lease_release(&lease_key(&key), &self.settings.node_id)
                .await;
        }
        tracing::info!(node = %self.settings.node_id, sessions = self.core.len(), "orchestrator node drained: sessions left to the other nodes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_strategies_stay_under_data_dir() {
        let d = std::path::Path::new("/var/lib/sb");
        assert_eq!(
            file_path(d, "strategies/a.scxml").unwrap(),
            PathBuf::from("/var/lib/sb/strategies/a.scxml")
        );
        assert_eq!(
            file_path(d, "/var/lib/sb/b.scxml").unwrap(),
            PathBuf::from("/var/lib/sb/b.scxml")
        );
        assert!(file_path(d, "/etc/passwd").is_err());
        assert!(file_path(d, "../x.scxml").is_err());
        assert!(file_path(d, "/var/lib/sb/../../etc/passwd").is_err());
    }

    #[tokio::test]
    async fn builtin_documents_are_served() {
        use tower::ServiceExt;
        let r = routes()
            .oneshot(
                axum::http::Request::get("/orchestrator/builtin/menu.vxml")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = routes()
            .oneshot(
                axum::http::Request::get("/orchestrator/builtin/x")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
}
