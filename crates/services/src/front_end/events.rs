//! `GET /v1/tenants/{tenant}/events` (WebSocket): the tenant's TLib events, live, for one
//! agent (`?agent=ID`), one DN or queue (`?dn=N`, `?queue=N`), or the whole tenant (no filter,
//! supervisors). Every message is one event's JSON (the bus schema) plus `"event_id"`, the
//! stream entry id. A client that reconnects passes the last id it saw as `?from=ID` (or the
//! `Last-Event-ID` header) and first gets every matching event after it.
//!
//! One feed per tenant and process reads `events:{tenant}` from the bus and fans out to the
//! sockets; a socket that falls behind the fan-out re-reads what it missed from the bus.

use crate::problem::ApiProblem;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_bus::{events_stream, EntryId, SharedBus};
use switchboard_config::Tenant;

use crate::single_writer::TenantsFeed;
use switchboard_events::Event;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Which events a socket gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Tenant,
    /// An agent's own events and those of the DNs it is logged in on (its configured DN until
    /// a login says otherwise).
    Agent {
        id: String,
        dns: HashSet<String>,
    },
    /// Events at a DN (a phone, a route point, a queue), or that left it for another.
    Dn(String),
}

impl Scope {
    /// Whether `e` goes to the socket; follows the agent's logins and logouts.
    pub fn admit(&mut self, e: &Event) -> bool {
        match self {
            Scope::Tenant => true,
            Scope::Dn(dn) => {
                e.this_dn() == Some(dn.as_str())
                    || e.call().and_then(|c| c.third_party_dn.as_deref()) == Some(dn.as_str())
            }
            Scope::Agent { id, dns } => {
                let own = match e {
                    Event::EventAgentLogin(a) if a.agent_id == *id => {
                        dns.insert(a.this_dn.clone());
                        true
                    }
                    Event::EventAgentLogout(a) if a.agent_id == *id => {
                        dns.remove(&a.this_dn);
                        true
                    }
                    Event::EventAgentReady(a)
                    | Event::EventAgentNotReady(a)
                    | Event::EventAgentAfterCallWork(a)
                    | Event::EventAgentReserved(a) => a.agent_id == *id,
                    other => other.call().and_then(|c| c.agent_id.as_deref()) == Some(id.as_str()),
                };
                own || e.this_dn().is_some_and(|d| dns.contains(d))
            }
        }
    }
}

/// One event as sockets receive it.
#[derive(Debug)]
pub struct Item {
    pub id: EntryId,
    pub event: Event,
    /// The event's JSON with `event_id`.
    pub text: String,
}

impl Item {
    /// `None` for an entry that is not an event (it is skipped, as call-state does).
    pub fn parse(id: EntryId, payload: &[u8]) -> Option<Item> {
        let event = Event::from_json(std::str::from_utf8(payload).ok()?).ok()?;
        let mut value = serde_json::to_value(&event).ok()?;
        value
            .as_object_mut()?
            .insert("event_id".into(), id.to_string().into());
        Some(Item {
            id,
            event,
            text: value.to_string(),
        })
    }
}

/// Entries read from the bus per call.
const PAGE: usize = 256;
/// How often a feed looks for new entries when the last read found none.
const POLL: Duration = Duration::from_millis(20);

/// The feeds of a process, one per tenant that has sockets.
pub struct Hub {
    bus: SharedBus,
    feeds: Mutex<HashMap<String, broadcast::Sender<Arc<Item>>>>,
    stop: CancellationToken,
}

impl Hub {
    pub fn new(bus: SharedBus, stop: CancellationToken) -> Arc<Hub> {
        Arc::new(Hub {
            bus,
            feeds: Mutex::new(HashMap::new()),
            stop,
        })
    }

    /// A receiver of the tenant's live events, starting the tenant's feed when needed.
    async fn subscribe(
        self: &Arc<Hub>,
        tenant: &str,
    ) -> Result<broadcast::Receiver<Arc<Item>>, ApiProblem> {
        if let Some(tx) = self.lock().get(tenant) {
            return Ok(tx.subscribe());
        }
        let start = self
            .bus
            .last_id(&events_stream(tenant))
            .await
            .map_err(|e| ApiProblem::new(503, "Bus unavailable", e.to_string()))?;
        let mut feeds = self.lock();
        if let Some(tx) = feeds.get(tenant) {
            return Ok(tx.subscribe());
        }
        let (tx, rx) = broadcast::channel(4096);
        feeds.insert(tenant.to_owned(), tx.clone());
        tokio::spawn(self.clone().feed(tenant.to_owned(), tx, start));
        Ok(rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Arc<Item>>>> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the tenant's stream after `after` and fans it out until nobody listens.
    async fn feed(
        self: Arc<Hub>,
        tenant: String,
        tx: broadcast::Sender<Arc<Item>>,
        mut after: Option<EntryId>,
    ) {
        let stream = events_stream(&tenant);
        loop {
            if tx.receiver_count() == 0 {
                let mut feeds = self.lock();
                // A socket may have subscribed between the check and the lock.
                if tx.receiver_count() == 0 {
                    feeds.remove(&tenant);
                    return;
                }
            }
            let page = match self.bus.read_range(&stream, after, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "event feed: reading the bus failed");
                    Vec::new()
                }
            };
            let full = page.len() == PAGE;
            for entry in page {
                after = Some(entry.id);
                if let Some(item) = Item::parse(entry.id, &entry.payload) {
                    let _ = tx.send(Arc::new(item));
                }
            }
            if !full {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Params {
    agent: Option<String>,
    dn: Option<String>,
    queue: Option<String>,
    from: Option<String>,
}

struct WsState {
    hub: Arc<Hub>,
    tenants: TenantsFeed,
}

/// The route; the gate (API keys) stands in front of it.
pub fn routes(hub: Arc<Hub>, tenants: TenantsFeed) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/events", get(events))
        .with_state(Arc::new(WsState { hub, tenants }))
}

fn scope_of(tenants: &[Tenant], tenant: &str, p: &Params) -> Result<Scope, ApiProblem> {
    let t = tenants
        .iter()
        .find(|t| t.name == tenant)
        .ok_or_else(|| ApiProblem::not_found(format!("no tenant named {tenant:?}")))?;
    match (&p.agent, p.dn.as_ref().or(p.queue.as_ref())) {
        (Some(_), Some(_)) => Err(ApiProblem::bad_request("choose one of agent, dn and queue")),
        (Some(id), None) => {
            let agent = t.agents.iter().find(|a| a.login_id == *id).ok_or_else(|| {
                ApiProblem::not_found(format!("no agent {id:?} in tenant {tenant:?}"))
                    .field("agent")
            })?;
            Ok(Scope::Agent {
                id: id.clone(),
                dns: agent.dn.iter().cloned().collect(),
            })
        }
        (None, Some(dn)) => Ok(Scope::Dn(dn.clone())),
        (None, None) => Ok(Scope::Tenant),
    }
}

async fn events(
    State(s): State<Arc<WsState>>,
    Path(tenant): Path<String>,
    Query(p): Query<Params>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let tenants = s.tenants.borrow().clone();
    let scope = match scope_of(&tenants, &tenant, &p) {
        Ok(scope) => scope,
        Err(problem) => return problem.into_response(),
    };
    let from = p
        .from
        .as_deref()
        .or_else(|| headers.get("last-event-id").and_then(|v| v.to_str().ok()));
    let from = match from.map(str::parse::<EntryId>).transpose() {
        Ok(f) => f,
        Err(e) => {
            return ApiProblem::bad_request(format!("from: {e}"))
                .field("from")
                .into_response()
        }
    };
    let Ok(ws) = ws else {
        return ApiProblem::new(426, "Upgrade required", "this endpoint is a WebSocket")
            .into_response();
    };
    let live = match s.hub.subscribe(&tenant).await {
        Ok(rx) => rx,
        Err(problem) => return problem.into_response(),
    };
    let hub = s.hub.clone();
    ws.on_upgrade(move |socket| async move {
        let mut session = Session {
            hub,
            tenant,
            scope,
            sent: from,
            live,
        };
        metrics::gauge!("frontend_ws_clients").increment(1.0);
        if let Err(e) = session.run(socket).await {
            tracing::debug!(tenant = %session.tenant, error = %e, "event socket ended");
        }
        metrics::gauge!("frontend_ws_clients").decrement(1.0);
    })
}

/// One socket.
struct Session {
    hub: Arc<Hub>,
    tenant: String,
    scope: Scope,
    /// The last entry id the socket has seen (sent or filtered out).
    sent: Option<EntryId>,
    live: broadcast::Receiver<Arc<Item>>,
}

impl Session {
    async fn run(&mut self, mut socket: WebSocket) -> anyhow::Result<()> {
        if self.sent.is_some() {
            self.catch_up(&mut socket).await?;
        }
        let mut ping = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = self.hub.stop.cancelled() => {
                    let close = CloseFrame { code: 1001, reason: "server shutting down".into() };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    return Ok(());
                }
                item = self.live.recv() => match item {
                    Ok(item) => self.offer(&mut socket, &item).await?,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::info!(tenant = %self.tenant, missed, "event socket fell behind: re-reading the bus");
                        self.catch_up(&mut socket).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                msg = socket.recv() => match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(_)) => {}
                },
                _ = ping.tick() => socket.send(Message::Ping(Vec::new().into())).await?,
            }
        }
    }

    /// Sends `item` unless the socket saw it already or the scope filters it out.
    async fn offer(&mut self, socket: &mut WebSocket, item: &Item) -> anyhow::Result<()> {
        if self.sent.is_some_and(|s| item.id <= s) {
            return Ok(());
        }
        self.sent = Some(item.id);
        if self.scope.admit(&item.event) {
            socket.send(Message::Text(item.text.clone().into())).await?;
        }
        Ok(())
    }

    /// Sends what the bus holds after `sent` (a resume, or after lagging behind the feed).
    async fn catch_up(&mut self, socket: &mut WebSocket) -> anyhow::Result<()> {
        let stream = events_stream(&self.tenant);
        loop {
            let page = self.hub.bus.read_range(&stream, self.sent, PAGE).await?;
            let full = page.len() == PAGE;
            for entry in page {
                match Item::parse(entry.id, &entry.payload) {
                    Some(item) => self.offer(socket, &item).await?,
                    None => self.sent = Some(entry.id),
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_events::{AgentAttrs, CallAttrs};

    fn agent_event(mk: fn(AgentAttrs) -> Event, agent: &str, dn: &str) -> Event {
        mk(AgentAttrs {
            tenant: "demo".into(),
            agent_id: agent.into(),
            this_dn: dn.into(),
            ..Default::default()
        })
    }

    fn ringing(dn: &str, agent: Option<&str>, third: Option<&str>) -> Event {
        Event::EventRinging(CallAttrs {
            tenant: "demo".into(),
            this_dn: dn.into(),
            agent_id: agent.map(str::to_owned),
            third_party_dn: third.map(str::to_owned),
            ..Default::default()
        })
    }

    #[test]
    fn agent_scope_follows_logins() {
        let mut s = Scope::Agent {
            id: "a1".into(),
            dns: ["1001".to_string()].into(),
        };
        assert!(s.admit(&ringing("1001", None, None)), "its configured DN");
        assert!(!s.admit(&ringing("1002", None, None)));
        assert!(s.admit(&agent_event(Event::EventAgentLogin, "a1", "1002")));
        assert!(
            s.admit(&ringing("1002", None, None)),
            "the DN it logged in on"
        );
        assert!(!s.admit(&agent_event(Event::EventAgentReady, "a2", "1003")));
        assert!(
            s.admit(&ringing("1009", Some("a1"), None)),
            "a call naming the agent"
        );
        assert!(s.admit(&agent_event(Event::EventAgentLogout, "a1", "1002")));
        assert!(!s.admit(&ringing("1002", None, None)), "not after logout");
    }

    #[test]
    fn dn_and_tenant_scopes() {
        let mut q = Scope::Dn("6000".into());
        assert!(q.admit(&ringing("6000", None, None)));
        assert!(q.admit(&ringing("1001", None, Some("6000"))));
        assert!(!q.admit(&ringing("1001", None, None)));
        assert!(Scope::Tenant.admit(&ringing("1001", None, None)));
    }

    #[test]
    fn item_text_carries_the_entry_id() {
        let e = ringing("1001", None, None);
        let item = Item::parse(EntryId::new(5, 1), e.to_json().as_bytes()).expect("event");
        let v: serde_json::Value = serde_json::from_str(&item.text).expect("json");
        assert_eq!(
            (v["event"].as_str(), v["event_id"].as_str()),
            (Some("EventRinging"), Some("5-1"))
        );
        assert!(Item::parse(EntryId::new(5, 2), b"not json").is_none());
    }

    #[test]
    fn scope_parameters() {
        let c = switchboard_config::Config::demo().tenants;
        let p = |agent: Option<&str>, dn: Option<&str>| Params {
            agent: agent.map(str::to_owned),
            dn: dn.map(str::to_owned),
            ..Default::default()
        };
        assert_eq!(
            scope_of(&c, "nope", &p(None, None)).unwrap_err().status,
            404
        );
        assert_eq!(
            scope_of(&c, "demo", &p(Some("zz"), None))
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(
            scope_of(&c, "demo", &p(Some("a1001"), Some("1")))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            scope_of(&c, "demo", &p(None, Some("6000"))).unwrap(),
            Scope::Dn("6000".into())
        );
        let Scope::Agent { dns, .. } = scope_of(&c, "demo", &p(Some("a1001"), None)).unwrap()
        else {
            panic!()
        };
        assert!(dns.contains("1001"));
    }
}
