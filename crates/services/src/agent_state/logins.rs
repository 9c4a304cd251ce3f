//! Who is logged in on which DN, followed outside agent-state: its last snapshot, then the
//! EventAgentLogin / EventAgentLogout after the snapshot's position on `events:{tenant}`.
//! sip-node puts the logged-in agent into its events' AgentID (an agent may log in on any
//! extension, not only its default DN).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use switchboard_bus::{events_stream, EntryId, SharedBus};
use switchboard_events::Event;
use tokio_util::sync::CancellationToken;

use super::model::Board;
use crate::single_writer::{self, Names};

/// The logins of the tenants that run agent-state (pure; the follower feeds it).
#[derive(Debug, Default)]
pub struct Logins {
    /// Per tenant: DN -> agent login id. A tenant is here once agent-state was seen for it.
    tenants: HashMap<String, HashMap<String, String>>,
}

impl Logins {
    /// The agent on `dn`: `None` when agent-state was never seen for the tenant (the
    /// configuration's default then applies), `Some(None)` when nobody is logged in there.
    pub fn agent(&self, tenant: &str, dn: &str) -> Option<Option<&str>> {
        self.tenants
            .get(tenant)
            .map(|dns| dns.get(dn).map(String::as_str))
    }

    /// The logins of agent-state's snapshot of a tenant.
    pub fn seed(&mut self, board: &Board) {
        let dns = board
            .agents
            .values()
            .filter_map(|a| Some((a.dn.clone()?, a.id.clone())))
            .collect();
        self.tenants.insert(board.tenant.clone(), dns);
    }

    pub fn fold(&mut self, event: &Event) {
        match event {
            Event::EventAgentLogin(a) => {
                let dns = self.tenants.entry(a.tenant.clone()).or_default();
                // One agent per DN, one DN per agent.
                dns.retain(|_, agent| *agent != a.agent_id);
                dns.insert(a.this_dn.clone(), a.agent_id.clone());
            }
            Event::EventAgentLogout(a) => {
                let dns = self.tenants.entry(a.tenant.clone()).or_default();
                dns.retain(|_, agent| *agent != a.agent_id);
            }
            _ => {}
        }
    }
}

pub type SharedLogins = Arc<RwLock<Logins>>;

/// How often the follower looks for new events when it found none.
const IDLE: Duration = Duration::from_millis(20);

/// Follows the logins of `tenants()` (asked again each round: tenants come and go) until the
/// drain. Bus errors are logged and retried.
pub async fn follow(
    bus: SharedBus,
    tenants: impl Fn() -> Vec<String> + Send + 'static,
    logins: SharedLogins,
    drain: CancellationToken,
) {
    let mut positions: HashMap<String, Option<EntryId>> = HashMap::new();
    while !drain.is_cancelled() {
        let mut busy = false;
        for tenant in tenants() {
            match step(&bus, &tenant, &mut positions, &logins).await {
                Ok(n) => busy |= n > 0,
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "cannot follow agent logins")
                }
            }
        }
        if !busy {
            tokio::select! {
                _ = drain.cancelled() => {}
                _ = tokio::time::sleep(IDLE) => {}
            }
        }
    }
}

/// One round for a tenant: the snapshot the first time, then the next page of events.
async fn step(
    bus: &SharedBus,
    tenant: &str,
    positions: &mut HashMap<String, Option<EntryId>>,
    logins: &SharedLogins,
) -> Result<usize, switchboard_bus::BusError> {
    let position = match positions.get(tenant) {
        Some(p) => *p,
        None => {
            let names = Names {
                role: super::ROLE,
                tenant: tenant.to_owned(),
                requests: String::new(),
                consumer: String::new(),
            };
            let (board, position) = single_writer::load::<Board>(bus, &names)
                .await?
                .map_or((None, None), |(b, p)| (Some(b), p));
            if let Some(b) = board {
                write(logins).seed(&b);
            }
            positions.insert(tenant.to_owned(), position);
            position
        }
    };
    let page = bus
        .read_range(&events_stream(tenant), position, 256)
        .await?;
    let Some(last) = page.last().map(|e| e.id) else {
        return Ok(0);
    };
    let mut l = write(logins);
    for entry in &page {
        // Most events are calls: parse only agent logins and logouts.
        let text = String::from_utf8_lossy(&entry.payload);
        if !text.contains("EventAgentLog") {
            continue;
        }
        if let Ok(event) = Event::from_json(&text) {
            l.fold(&event);
        }
    }
    positions.insert(tenant.to_owned(), Some(last));
    Ok(page.len())
}

fn write(logins: &SharedLogins) -> std::sync::RwLockWriteGuard<'_, Logins> {
    logins.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_events::AgentAttrs;

    fn login(agent: &str, dn: &str) -> Event {
        Event::EventAgentLogin(AgentAttrs {
            tenant: "demo".into(),
            agent_id: agent.into(),
            this_dn: dn.into(),
            ..Default::default()
        })
    }

    #[test]
    fn logins_follow_the_agent_events() {
        let mut l = Logins::default();
        assert_eq!(l.agent("demo", "1001"), None, "agent-state not seen yet");
        l.fold(&login("a1006", "1001"));
        assert_eq!(l.agent("demo", "1001"), Some(Some("a1006")));
        assert_eq!(l.agent("demo", "1006"), Some(None));
        // Logged in elsewhere: the old DN is free.
        l.fold(&login("a1006", "1002"));
        assert_eq!(l.agent("demo", "1001"), Some(None));
        assert_eq!(l.agent("demo", "1002"), Some(Some("a1006")));
        l.fold(&Event::EventAgentLogout(AgentAttrs {
            tenant: "demo".into(),
            agent_id: "a1006".into(),
            this_dn: "1002".into(),
            ..Default::default()
        }));
        assert_eq!(l.agent("demo", "1002"), Some(None));
        assert_eq!(l.agent("other", "1002"), None);
    }

    #[test]
    fn a_snapshot_seeds_the_logins() {
        let config = switchboard_config::Config::demo();
        let mut board = Board::new(&config.tenants[0], 5_000);
        let req = switchboard_events::requests::AgentRequest {
            tenant: "demo".into(),
            request_id: 1,
            agent_id: "a1001".into(),
            op: switchboard_events::requests::AgentOp::Login {
                dn: Some("1003".into()),
            },
        };
        board.request(&req, 1);
        let mut l = Logins::default();
        l.seed(&board);
        assert_eq!(l.agent("demo", "1003"), Some(Some("a1001")));
        assert_eq!(l.agent("demo", "1001"), Some(None));
    }

    #[tokio::test]
    async fn sip_node_names_the_agent_logged_in_on_the_dn() {
        let dir = tempfile::tempdir().unwrap();
        let bus: SharedBus =
            Arc::new(switchboard_bus::EmbeddedBus::open(&dir.path().join("bus.db")).unwrap());
        let logins = SharedLogins::default();
        let directory = crate::sip_node::core::Directory::new([(
            "demo".to_string(),
            "switchboard".to_string(),
            vec!["1001".to_string(), "1005".to_string()],
        )])
        .with_logins(logins.clone());
        assert_eq!(directory.agent("demo", "1005"), None);
        let drain = CancellationToken::new();
        let task = tokio::spawn(follow(
            bus.clone(),
            || vec!["demo".to_string()],
            logins,
            drain.clone(),
        ));
        let event = login("a1006", "1005").to_json();
        bus.publish("events:demo", event.as_bytes()).await.unwrap();
        for _ in 0..200 {
            if directory.agent("demo", "1005").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(directory.agent("demo", "1005").as_deref(), Some("a1006"));
        assert_eq!(directory.agent("demo", "1001"), None);
        drain.cancel();
        task.await.unwrap();
    }
}
