//! The agents of one tenant as a pure reducer: agent requests, call events on the agents' DNs,
//! reservations and DN service events in; the agent events to publish out. No I/O, no clock:
//! every input carries `now` (milliseconds since the Unix epoch).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use switchboard_config::{DnKind, Tenant};
use switchboard_events::requests::{AgentOp, AgentRequest};
use switchboard_events::{AgentAttrs, ConnId, ErrorAttrs, Event};

/// Stable error codes of refused agent requests (`EventError.error_code`).
pub mod codes {
    /// No agent with that login id in the tenant.
    pub const UNKNOWN_AGENT: &str = "unknown_agent";
    /// The DN is not an extension of the tenant.
    pub const UNKNOWN_DN: &str = "unknown_dn";
    /// Login without a DN, and the agent has no default DN.
    pub const NO_DN: &str = "no_dn";
    /// Another agent is logged in on the DN.
    pub const DN_TAKEN: &str = "dn_taken";
    /// The agent is logged in on another DN.
    pub const LOGGED_IN_ELSEWHERE: &str = "logged_in_elsewhere";
    /// The request needs a logged-in agent.
    pub const NOT_LOGGED_IN: &str = "not_logged_in";
    /// after-call-work-done while not in after-call work.
    pub const NOT_IN_AFTER_CALL_WORK: &str = "not_in_after_call_work";
    /// The request is for another tenant.
    pub const WRONG_TENANT: &str = "wrong_tenant";
}

/// What an agent is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AgentStatus {
    LoggedOut,
    NotReady {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason_code: Option<String>,
    },
    /// Waiting for a call since `since` (the idle time routing orders by).
    Ready {
        since: u64,
    },
    /// Routing chose the agent for `conn`; ends when the DN rings or after the reservation
    /// timeout (`until`), back to Ready with the old `ready_since`.
    Reserved {
        conn: ConnId,
        since: u64,
        until: u64,
        ready_since: u64,
    },
    /// A call is on the agent's DN.
    Busy {
        conn: ConnId,
    },
    /// Wrapping up a call until `until`, then Ready.
    AfterCallWork {
        until: u64,
    },
}

/// What an agent goes to when the last call on its DN ends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "then", rename_all = "snake_case")]
pub enum AfterCall {
    /// After-call work for the group's time (none: Ready).
    #[default]
    Work,
    /// Ready at once (the agent asked for Ready during the call).
    Ready,
    /// Not ready (the agent was not ready before the call, or asked during it).
    NotReady {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason_code: Option<String>,
    },
}

/// One agent: its configuration and its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    /// The DN logged in on (None while logged out).
    pub dn: Option<String>,
    pub status: AgentStatus,
    /// When the status last changed.
    pub since: u64,
    /// The calls on the agent's DN.
    pub calls: BTreeSet<ConnId>,
    pub after_call: AfterCall,
    // From the configuration (refreshed on restore):
    #[serde(default)]
    pub default_dn: Option<String>,
    #[serde(default)]
    pub skills: BTreeMap<String, u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// After-call work of the agent's groups, ms (the longest).
    #[serde(default)]
    pub acw_ms: u64,
}

/// The agents of one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Board {
    pub tenant: String,
    pub agents: BTreeMap<String, Agent>,
    /// Extensions of the tenant (the DNs an agent may log in on).
    extensions: BTreeSet<String>,
    /// DNs whose device went out of service (unregistered).
    pub out_of_service: BTreeSet<String>,
    /// How long a reservation holds an agent that nothing rings, ms.
    reservation_ms: u64,
    /// DN -> the agent logged in on it (rebuilt by [`Board::configure`]).
    #[serde(skip)]
    dn_agent: BTreeMap<String, String>,
}

impl Board {
    /// The agents of `tenant`, all logged out.
    pub fn new(tenant: &Tenant, reservation_ms: u64) -> Board {
        let mut board = Board {
            tenant: tenant.name.clone(),
            agents: BTreeMap::new(),
            extensions: BTreeSet::new(),
            out_of_service: BTreeSet::new(),
            reservation_ms,
            dn_agent: BTreeMap::new(),
        };
        board.configure(tenant, reservation_ms);
        board
    }

    /// Applies the configuration to a board (a new one, or one restored from a snapshot):
    /// agents added to the configuration appear logged out, removed ones are dropped unless
    /// logged in; skills, groups and after-call work are taken from the configuration.
    pub fn configure(&mut self, tenant: &Tenant, reservation_ms: u64) {
        self.reservation_ms = reservation_ms;
        self.extensions = tenant
            .dns
            .iter()
            .filter(|d| d.kind == DnKind::Extension)
            .map(|d| d.number.clone())
            .collect();
        let acw: BTreeMap<&str, u64> = tenant
            .agent_groups
            .iter()
            .map(|g| (g.name.as_str(), u64::from(g.after_call_work_s) * 1000))
            .collect();
        let configured: BTreeSet<&str> =
            tenant.agents.iter().map(|a| a.login_id.as_str()).collect();
        self.agents
            .retain(|id, a| configured.contains(id.as_str()) || a.dn.is_some());
        for a in &tenant.agents {
            let agent = self
                .agents
                .entry(a.login_id.clone())
                .or_insert_with(|| Agent {
                    id: a.login_id.clone(),
                    dn: None,
                    status: AgentStatus::LoggedOut,
                    since: 0,
                    calls: BTreeSet::new(),
                    after_call: AfterCall::Work,
                    default_dn: None,
                    skills: BTreeMap::new(),
                    groups: Vec::new(),
                    acw_ms: 0,
                });
            agent.default_dn = a.dn.clone();
            agent.skills = a.skills.clone();
            agent.groups = a.groups.clone();
            agent.acw_ms = a
                .groups
                .iter()
                .filter_map(|g| acw.get(g.as_str()))
                .copied()
                .max()
                .unwrap_or(0);
        }
        self.dn_agent = self
            .agents
            .values()
            .filter_map(|a| Some((a.dn.clone()?, a.id.clone())))
            .collect();
    }

    pub fn agent(&self, id: &str) -> Option<&Agent> {
        self.agents.get(id)
    }

    /// The agent logged in on `dn`.
    pub fn agent_on(&self, dn: &str) -> Option<&Agent> {
        self.agents.get(self.dn_agent.get(dn)?)
    }

    fn agent_id_on(&self, dn: &str) -> Option<String> {
        self.dn_agent.get(dn).cloned()
    }

    pub fn in_service(&self, dn: &str) -> bool {
        !self.out_of_service.contains(dn)
    }

    /// The earliest time [`Board::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.agents
            .values()
            .filter_map(|a| match a.status {
                AgentStatus::AfterCallWork { until } | AgentStatus::Reserved { until, .. } => {
                    Some(until)
                }
                _ => None,
            })
            .min()
    }

    /// Handles an agent request: the event confirming it (with its `request_id`), or
    /// EventError with one of [`codes`].
    pub fn request(&mut self, req: &AgentRequest, now: u64) -> Vec<Event> {
        match self.try_request(req, now) {
            Ok(events) => events,
            Err((code, reason)) => vec![Event::EventError(ErrorAttrs {
                tenant: self.tenant.clone(),
                conn_id: None,
                this_dn: self.agents.get(&req.agent_id).and_then(|a| a.dn.clone()),
                request_id: req.request_id,
                error_code: code.to_string(),
                reason,
                ts_ms: now,
            })],
        }
    }

    fn try_request(
        &mut self,
        req: &AgentRequest,
        now: u64,
    ) -> Result<Vec<Event>, (&'static str, String)> {
        if req.tenant != self.tenant {
            return Err((
                codes::WRONG_TENANT,
                format!(
                    "the request is for tenant {:?}, not {:?}",
                    req.tenant, self.tenant
                ),
            ));
        }
        let id = req.agent_id.as_str();
        let Some(agent) = self.agents.get(id) else {
            return Err((
                codes::UNKNOWN_AGENT,
                format!("no agent {id:?} in this tenant"),
            ));
        };
        let logged_in = agent.dn.clone();
        match (&req.op, logged_in) {
            (AgentOp::Login { dn }, current) => {
                let dn = dn
                    .clone()
                    .or_else(|| agent.default_dn.clone())
                    .ok_or_else(|| {
                        (
                            codes::NO_DN,
                            format!("agent {id:?} has no default DN: name one"),
                        )
                    })?;
                if !self.extensions.contains(&dn) {
                    return Err((
                        codes::UNKNOWN_DN,
                        format!("{dn:?} is not an extension of this tenant"),
                    ));
                }
                if let Some(current) = current {
                    if current != dn {
                        return Err((
                            codes::LOGGED_IN_ELSEWHERE,
                            format!("agent {id:?} is logged in on {current:?}"),
                        ));
                    }
                    // Logging in again where it is: confirmed, nothing changes.
                    return Ok(vec![self.agent_event(
                        Event::EventAgentLogin,
                        id,
                        None,
                        Some(req.request_id),
                        None,
                        now,
                    )]);
                }
                if let Some(other) = self.agent_id_on(&dn) {
                    return Err((
                        codes::DN_TAKEN,
                        format!("agent {other:?} is logged in on {dn:?}"),
                    ));
                }
                self.dn_agent.insert(dn.clone(), id.to_string());
                let a = self.agent_mut(id);
                a.dn = Some(dn);
                a.calls.clear();
                a.after_call = AfterCall::Work;
                set(a, AgentStatus::NotReady { reason_code: None }, now);
                Ok(vec![self.agent_event(
                    Event::EventAgentLogin,
                    id,
                    None,
                    Some(req.request_id),
                    None,
                    now,
                )])
            }
            (_, None) => Err((
                codes::NOT_LOGGED_IN,
                format!("agent {id:?} is not logged in"),
            )),
            // Allowed during a call too (the call goes on without the agent): an agent whose
            // DN never reported a call's end must still be able to leave.
            (AgentOp::Logout, Some(_)) => {
                let event = self.agent_event(
                    Event::EventAgentLogout,
                    id,
                    None,
                    Some(req.request_id),
                    None,
                    now,
                );
                let a = self.agent_mut(id);
                if let Some(dn) = a.dn.take() {
                    self.dn_agent.remove(&dn);
                }
                let a = self.agent_mut(id);
                a.calls.clear();
                a.after_call = AfterCall::Work;
                set(a, AgentStatus::LoggedOut, now);
                Ok(vec![event])
            }
            (AgentOp::Ready, Some(_)) => {
                let a = self.agent_mut(id);
                match a.status {
                    AgentStatus::Busy { .. } => a.after_call = AfterCall::Ready,
                    // Already Ready or reserved: confirmed, the idle time runs on.
                    AgentStatus::Ready { .. } | AgentStatus::Reserved { .. } => {}
                    _ => set(a, AgentStatus::Ready { since: now }, now),
                }
                Ok(vec![self.agent_event(
                    Event::EventAgentReady,
                    id,
                    None,
                    Some(req.request_id),
                    None,
                    now,
                )])
            }
            (AgentOp::NotReady { reason_code }, Some(_)) => {
                let a = self.agent_mut(id);
                if matches!(a.status, AgentStatus::Busy { .. }) {
                    a.after_call = AfterCall::NotReady {
                        reason_code: reason_code.clone(),
                    };
                } else {
                    set(
                        a,
                        AgentStatus::NotReady {
                            reason_code: reason_code.clone(),
                        },
                        now,
                    );
                }
                Ok(vec![self.agent_event(
                    Event::EventAgentNotReady,
                    id,
                    reason_code.clone(),
                    Some(req.request_id),
                    None,
                    now,
                )])
            }
            (AgentOp::AfterCallWorkDone, Some(_)) => {
                let a = self.agent_mut(id);
                if !matches!(a.status, AgentStatus::AfterCallWork { .. }) {
                    return Err((
                        codes::NOT_IN_AFTER_CALL_WORK,
                        format!("agent {id:?} is not in after-call work"),
                    ));
                }
                set(a, AgentStatus::Ready { since: now }, now);
                Ok(vec![self.agent_event(
                    Event::EventAgentReady,
                    id,
                    None,
                    Some(req.request_id),
                    None,
                    now,
                )])
            }
        }
    }

    /// Folds an event of the tenant's stream: calls on agents' DNs, reservations by routing,
    /// DN service. Returns the agent events it causes. Agent events other than
    /// EventAgentReserved are this reducer's own output coming back, and are ignored.
    pub fn event(&mut self, event: &Event, now: u64) -> Vec<Event> {
        match event {
            Event::EventRinging(c) | Event::EventEstablished(c) | Event::EventDialing(c) => {
                match c.conn_id {
                    Some(conn) => self.call_on(&c.this_dn, conn, now),
                    None => Vec::new(),
                }
            }
            Event::EventPartyChanged(c) => {
                if let (Some(old), Some(new)) = (c.previous_conn_id, c.conn_id) {
                    if let Some(id) = self.agent_id_on(&c.this_dn) {
                        let a = self.agent_mut(&id);
                        if a.calls.remove(&old) {
                            a.calls.insert(new);
                        }
                    }
                }
                Vec::new()
            }
            // The call left the DN: hung up, forwarded (no answer, busy) or abandoned.
            Event::EventReleased(c) | Event::EventDiverted(c) | Event::EventAbandoned(c) => {
                match c.conn_id {
                    Some(conn) => self.call_gone(&c.this_dn, conn, now),
                    None => Vec::new(),
                }
            }
            Event::EventAgentReserved(r) => {
                self.reserved(r, now);
                Vec::new()
            }
            Event::EventDNOutOfService(d) => {
                self.out_of_service.insert(d.this_dn.clone());
                Vec::new()
            }
            Event::EventDNBackInService(d) => {
                self.out_of_service.remove(&d.this_dn);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Timers: reservations nothing rang end (back to Ready), after-call work ends (Ready,
    /// with EventAgentReady).
    pub fn tick(&mut self, now: u64) -> Vec<Event> {
        let mut due = Vec::new();
        for a in self.agents.values_mut() {
            match a.status {
                AgentStatus::Reserved {
                    until, ready_since, ..
                } if until <= now => {
                    a.status = AgentStatus::Ready { since: ready_since };
                    a.since = now;
                }
                AgentStatus::AfterCallWork { until } if until <= now => {
                    set(a, AgentStatus::Ready { since: now }, now);
                    due.push(a.id.clone());
                }
                _ => {}
            }
        }
        due.iter()
            .map(|id| self.agent_event(Event::EventAgentReady, id, None, None, None, now))
            .collect()
    }

    fn reserved(&mut self, r: &AgentAttrs, now: u64) {
        let Some(conn) = r.conn_id else { return };
        let until = now.saturating_add(self.reservation_ms);
        if let Some(a) = self.agents.get_mut(&r.agent_id) {
            // Only a Ready agent is reserved; any other state means routing lost a race and the
            // call will find the agent busy or not ready.
            if let AgentStatus::Ready { since } = a.status {
                a.status = AgentStatus::Reserved {
                    conn,
                    since: now,
                    until,
                    ready_since: since,
                };
                a.since = now;
            }
        }
    }

    fn call_on(&mut self, dn: &str, conn: ConnId, now: u64) -> Vec<Event> {
        let Some(id) = self.agent_id_on(dn) else {
            return Vec::new();
        };
        let a = self.agent_mut(&id);
        a.calls.insert(conn);
        let after = match &a.status {
            AgentStatus::Busy { .. } => return Vec::new(),
            AgentStatus::NotReady { reason_code } => AfterCall::NotReady {
                reason_code: reason_code.clone(),
            },
            _ => AfterCall::Work,
        };
        a.after_call = after;
        set(a, AgentStatus::Busy { conn }, now);
        Vec::new()
    }

    fn call_gone(&mut self, dn: &str, conn: ConnId, now: u64) -> Vec<Event> {
        let Some(id) = self.agent_id_on(dn) else {
            return Vec::new();
        };
        let a = self.agent_mut(&id);
        if !a.calls.remove(&conn) || !a.calls.is_empty() {
            return Vec::new();
        }
        if !matches!(a.status, AgentStatus::Busy { .. }) {
            return Vec::new();
        }
        let after = std::mem::take(&mut a.after_call);
        let acw_ms = a.acw_ms;
        match after {
            AfterCall::NotReady { reason_code } => {
                set(
                    a,
                    AgentStatus::NotReady {
                        reason_code: reason_code.clone(),
                    },
                    now,
                );
                vec![self.agent_event(
                    Event::EventAgentNotReady,
                    &id,
                    reason_code,
                    None,
                    Some(conn),
                    now,
                )]
            }
            AfterCall::Work if acw_ms > 0 => {
                set(
                    a,
                    AgentStatus::AfterCallWork {
                        until: now.saturating_add(acw_ms),
                    },
                    now,
                );
                vec![self.agent_event(
                    Event::EventAgentAfterCallWork,
                    &id,
                    None,
                    None,
                    Some(conn),
                    now,
                )]
            }
            AfterCall::Work | AfterCall::Ready => {
                set(a, AgentStatus::Ready { since: now }, now);
                vec![self.agent_event(Event::EventAgentReady, &id, None, None, Some(conn), now)]
            }
        }
    }

    fn agent_mut(&mut self, id: &str) -> &mut Agent {
        // Callers looked the agent up first; the entry API keeps this total anyway.
        self.agents.entry(id.to_string()).or_insert_with(|| Agent {
            id: id.to_string(),
            dn: None,
            status: AgentStatus::LoggedOut,
            since: 0,
            calls: BTreeSet::new(),
            after_call: AfterCall::Work,
            default_dn: None,
            skills: BTreeMap::new(),
            groups: Vec::new(),
            acw_ms: 0,
        })
    }

    fn agent_event(
        &self,
        kind: fn(AgentAttrs) -> Event,
        id: &str,
        reason_code: Option<String>,
        request_id: Option<u64>,
        conn_id: Option<ConnId>,
        now: u64,
    ) -> Event {
        let this_dn = self
            .agents
            .get(id)
            .and_then(|a| a.dn.clone())
            .unwrap_or_default();
        kind(AgentAttrs {
            tenant: self.tenant.clone(),
            agent_id: id.to_string(),
            this_dn,
            reason_code,
            conn_id,
            request_id,
            ts_ms: now,
        })
    }
}

fn set(a: &mut Agent, status: AgentStatus, now: u64) {
    a.status = status;
    a.since = now;
}
