//! The queues of one tenant as a pure reducer: submissions, cancellations and the tenant's
//! events in; replies to submitters and EventAgentReserved out. No I/O, no clock: inputs carry
//! `now` (milliseconds since the Unix epoch).
//!
//! Invariant after every input: no waiting call matches an available agent. So a new call
//! only needs to look at the available agents (it takes the longest idle that matches), and an
//! agent that becomes available only at the waiting calls (it takes the first, by priority
//! then age, that it matches).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use switchboard_config::Tenant;
use switchboard_events::requests::{RoutingReply, RoutingRequest};
use switchboard_events::{AgentAttrs, ConnId, Event};

use super::expr::{Compiled, Expr};

/// What the role does with the reducer's output.
// Events and replies are the common outputs; boxing them would allocate for each one.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Append `reply` to the submitter's stream `to`.
    Reply {
        to: String,
        queue: String,
        reply: RoutingReply,
    },
    /// Publish on the tenant's event stream.
    Publish(Event),
    /// A reservation nothing rang ran out (counted).
    ReservationExpired {
        queue: String,
        agent: String,
        conn: ConnId,
    },
}

/// A call waiting for an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub request_id: String,
    pub conn: ConnId,
    pub queue: String,
    pub skills: String,
    pub expr: Expr,
    pub agent_group: Option<String>,
    /// `expr` and `agent_group` resolved against the tenant's tables (rebuilt on restore).
    #[serde(skip, default = "any")]
    compiled: Compiled,
    #[serde(skip)]
    group_index: Option<usize>,
    pub priority: i32,
    pub enqueued_ms: u64,
    /// When it times out (None: waits until cancelled).
    pub deadline: Option<u64>,
    pub reply_to: String,
    /// Arrival order, the last tie-break.
    seq: u64,
}

impl Waiting {
    fn place(&self) -> Place {
        Place {
            priority: std::cmp::Reverse(self.priority),
            enqueued_ms: self.enqueued_ms,
            seq: self.seq,
            conn: self.conn,
        }
    }

    fn wants(&self, agent: &AgentView) -> bool {
        self.group_index
            .is_none_or(|g| agent.in_group.get(g).copied().unwrap_or(false))
            && self.compiled.matches(&agent.levels)
    }
}

/// Queue names label metrics and statistics: kept short and plain.
fn valid_queue_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn any() -> Compiled {
    Compiled::Any
}

/// Where a call is in the line: higher priority, then older, first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Place {
    priority: std::cmp::Reverse<i32>,
    enqueued_ms: u64,
    seq: u64,
    conn: ConnId,
}

/// Routing's view of an agent, folded from agent and call events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    pub id: String,
    /// The DN logged in on.
    pub dn: Option<String>,
    /// Some while the agent's last state event was EventAgentReady: since when.
    pub ready_since: Option<u64>,
    /// Calls on the agent's DN.
    pub calls: BTreeSet<ConnId>,
    /// The last call ended and agent-state has not said what comes next yet (Ready, after-call
    /// work or not ready): not routable meanwhile.
    pub wrapping: bool,
    #[serde(default)]
    pub skills: BTreeMap<String, u32>,
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// `skills` by the tenant's skill index, `groups` by its group index (rebuilt on restore).
    #[serde(skip)]
    levels: Vec<Option<u32>>,
    #[serde(skip)]
    in_group: Vec<bool>,
}

/// An agent held for a call that was given it as target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub conn: ConnId,
    pub queue: String,
    pub until: u64,
}

/// Statistics of a virtual queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub waiting: usize,
    /// How long the oldest waiting call has waited, ms (0 when none waits).
    pub longest_wait_ms: u64,
    /// Available agents (Ready, idle, in service, unreserved) that match at least one waiting
    /// call of the queue, or the queue's last skill expression.
    pub agents_ready: usize,
}

/// The queues and agents of one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queues {
    pub tenant: String,
    reservation_ms: u64,
    agents: BTreeMap<String, AgentView>,
    /// DN -> the agent logged in on it.
    dn_agent: BTreeMap<String, String>,
    out_of_service: BTreeSet<String>,
    waiting: BTreeMap<ConnId, Waiting>,
    order: BTreeSet<Place>,
    /// Agent -> its reservation.
    reservations: BTreeMap<String, Reservation>,
    /// Call -> the agent reserved for it.
    reserved_for: BTreeMap<ConnId, String>,
    /// The last expression and group submitted to each queue (statistics).
    last: BTreeMap<String, (Expr, Option<String>)>,
    /// The tenant's agent groups and skills, in configuration order: their indexes are what
    /// compiled expressions and agents' levels use.
    groups: Vec<String>,
    #[serde(default)]
    skills: Vec<String>,
    seq: u64,
    /// Call -> the agents it was already given. A call submitted again after a failed route
    /// (busy, no answer) goes to another matching agent when there is one: the events that
    /// tell routing the first agent's phone failed may arrive after the new submission.
    /// Forgotten when the call is answered, cancelled or times out.
    #[serde(default)]
    tried: BTreeMap<ConnId, Vec<String>>,
}

impl Queues {
    pub fn new(tenant: &Tenant, reservation_ms: u64) -> Queues {
        let mut q = Queues {
            tenant: tenant.name.clone(),
            reservation_ms,
            agents: BTreeMap::new(),
            dn_agent: BTreeMap::new(),
            out_of_service: BTreeSet::new(),
            waiting: BTreeMap::new(),
            order: BTreeSet::new(),
            reservations: BTreeMap::new(),
            reserved_for: BTreeMap::new(),
            last: BTreeMap::new(),
            groups: Vec::new(),
            skills: Vec::new(),
            seq: 0,
            tried: BTreeMap::new(),
        };
        q.configure(tenant, reservation_ms);
        q
    }

    /// Takes skills, groups and the set of agents from the configuration (a new reducer, or
    /// one restored from a snapshot).
    pub fn configure(&mut self, tenant: &Tenant, reservation_ms: u64) {
        self.reservation_ms = reservation_ms;
        self.groups = tenant.agent_groups.iter().map(|g| g.name.clone()).collect();
        self.skills = tenant.skills.iter().map(|s| s.name.clone()).collect();
        let configured: BTreeSet<&str> =
            tenant.agents.iter().map(|a| a.login_id.as_str()).collect();
        self.agents.retain(|id, _| configured.contains(id.as_str()));
        self.dn_agent
            .retain(|_, id| configured.contains(id.as_str()));
        for a in &tenant.agents {
            let view = self.agents.entry(a.login_id.clone()).or_default();
            view.id = a.login_id.clone();
            view.skills = a.skills.clone();
            view.groups = a.groups.iter().cloned().collect();
            view.levels = self
                .skills
                .iter()
                .map(|s| a.skills.get(s).copied())
                .collect();
            view.in_group = self
                .groups
                .iter()
                .map(|g| view.groups.contains(g))
                .collect();
        }
        let waiting = std::mem::take(&mut self.waiting);
        self.waiting = waiting
            .into_iter()
            .map(|(conn, mut w)| {
                (w.compiled, w.group_index) = self.resolve(&w.expr, w.agent_group.as_deref());
                (conn, w)
            })
            .collect();
    }

    /// An expression and an agent group in the tenant's indexes.
    fn resolve(&self, expr: &Expr, group: Option<&str>) -> (Compiled, Option<usize>) {
        let index = |name: &str| self.skills.iter().position(|s| s == name);
        let group = group.and_then(|g| self.groups.iter().position(|n| n == g));
        (expr.compile(&index), group)
    }

    pub fn agent(&self, id: &str) -> Option<&AgentView> {
        self.agents.get(id)
    }

    pub fn waiting(&self) -> impl Iterator<Item = &Waiting> {
        self.order.iter().filter_map(|p| self.waiting.get(&p.conn))
    }

    pub fn reservation(&self, agent: &str) -> Option<&Reservation> {
        self.reservations.get(agent)
    }

    /// Whether routing may give the agent a call now.
    pub fn available(&self, agent: &AgentView) -> bool {
        let Some(dn) = &agent.dn else { return false };
        agent.ready_since.is_some()
            && agent.calls.is_empty()
            && !agent.wrapping
            && !self.out_of_service.contains(dn)
            && !self.reservations.contains_key(&agent.id)
    }

    /// The earliest time [`Queues::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let calls = self.waiting.values().filter_map(|w| w.deadline).min();
        let reservations = self.reservations.values().map(|r| r.until).min();
        calls.into_iter().chain(reservations).min()
    }

    pub fn request(&mut self, req: &RoutingRequest, now: u64) -> Vec<Output> {
        match req {
            RoutingRequest::Submit { .. } => self.submit(req, now),
            RoutingRequest::Cancel { tenant, conn_id } => {
                if *tenant != self.tenant {
                    return Vec::new();
                }
                let mut out = Vec::new();
                self.remove_waiting(*conn_id);
                self.tried.remove(conn_id);
                if let Some(agent) = self.free_call(*conn_id) {
                    self.offer_agent(&agent, now, &mut out);
                }
                out
            }
        }
    }

    fn submit(&mut self, req: &RoutingRequest, now: u64) -> Vec<Output> {
        let RoutingRequest::Submit {
            tenant,
            request_id,
            conn_id,
            queue,
            skills,
            agent_group,
            priority,
            enqueued_ms,
            timeout_s,
            reply_to,
            ..
        } = req
        else {
            return Vec::new();
        };
        let reject = |reason: String| {
            vec![Output::Reply {
                to: reply_to.clone(),
                queue: queue.clone(),
                reply: RoutingReply::Rejected {
                    request_id: request_id.clone(),
                    conn_id: *conn_id,
                    reason,
                },
            }]
        };
        if *tenant != self.tenant {
            return reject(format!("this routing serves tenant {:?}", self.tenant));
        }
        if !valid_queue_name(queue) {
            return reject(
                "the queue name must be 1 to 64 letters, digits, '_', '-' or '.'".to_string(),
            );
        }
        let expr = match Expr::parse(skills) {
            Ok(e) => e,
            Err(e) => return reject(format!("skill expression {skills:?}: {e}")),
        };
        if let Some(g) = agent_group.as_ref().filter(|g| !self.groups.contains(*g)) {
            return reject(format!("no agent group {g:?} in this tenant"));
        }
        let mut out = Vec::new();
        // A submission again (lost race) replaces the old one and frees its agent.
        self.remove_waiting(*conn_id);
        let freed = self.free_call(*conn_id);
        self.seq += 1;
        // The deadline counts from when the call first queued, not from now.
        let deadline =
            timeout_s.map(|t| (*enqueued_ms).min(now).saturating_add(u64::from(t) * 1000));
        let (compiled, group_index) = self.resolve(&expr, agent_group.as_deref());
        let waiting = Waiting {
            request_id: request_id.clone(),
            conn: *conn_id,
            queue: queue.clone(),
            skills: skills.clone(),
            expr: expr.clone(),
            agent_group: agent_group.clone(),
            compiled,
            group_index,
            priority: *priority,
            enqueued_ms: *enqueued_ms,
            deadline,
            reply_to: reply_to.clone(),
            seq: self.seq,
        };
        self.last.insert(queue.clone(), (expr, agent_group.clone()));
        self.order.insert(waiting.place());
        self.waiting.insert(*conn_id, waiting);
        // The call chooses first, so that it can prefer an agent it has not had (`tried`);
        // the agent it freed then goes to whichever call waits first for it.
        if self.waiting.contains_key(conn_id) {
            self.offer_call(*conn_id, now, &mut out);
        }
        if let Some(agent) = freed {
            self.offer_agent(&agent, now, &mut out);
        }
        out
    }

    /// Folds an event of the tenant's stream.
    pub fn event(&mut self, event: &Event, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        match event {
            Event::EventAgentLogin(a) => {
                self.logout(&a.agent_id);
                if let Some(view) = self.agents.get_mut(&a.agent_id) {
                    view.dn = Some(a.this_dn.clone());
                    view.ready_since = None;
                    view.wrapping = false;
                    self.dn_agent.insert(a.this_dn.clone(), a.agent_id.clone());
                }
            }
            Event::EventAgentLogout(a) => self.logout(&a.agent_id),
            Event::EventAgentReady(a) => {
                if let Some(view) = self.agent_with_dn(a) {
                    // Ready again while idle keeps the idle time.
                    if view.ready_since.is_none() || view.wrapping {
                        view.ready_since = Some(a.ts_ms);
                    }
                    view.wrapping = false;
                    self.offer_agent(&a.agent_id, now, &mut out);
                }
            }
            Event::EventAgentNotReady(a) | Event::EventAgentAfterCallWork(a) => {
                if let Some(view) = self.agent_with_dn(a) {
                    view.ready_since = None;
                    view.wrapping = false;
                }
            }
            Event::EventRinging(c) | Event::EventEstablished(c) | Event::EventDialing(c) => {
                if let (Event::EventEstablished(_), Some(conn)) = (event, c.conn_id) {
                    self.tried.remove(&conn);
                }
                if let (Some(conn), Some(id)) = (c.conn_id, self.dn_agent.get(&c.this_dn).cloned())
                {
                    if let Some(view) = self.agents.get_mut(&id) {
                        view.calls.insert(conn);
                        view.ready_since = None;
                    }
                    // The reservation did its job: the agent has the call (or another one).
                    if let Some(r) = self.reservations.remove(&id) {
                        self.reserved_for.remove(&r.conn);
                    }
                }
            }
            Event::EventPartyChanged(c) => {
                if let (Some(old), Some(new), Some(id)) =
                    (c.previous_conn_id, c.conn_id, self.dn_agent.get(&c.this_dn))
                {
                    if let Some(view) = self.agents.get_mut(id) {
                        if view.calls.remove(&old) {
                            view.calls.insert(new);
                        }
                    }
                }
            }
            // The call left the DN: hung up, forwarded (no answer, busy) or abandoned.
            Event::EventReleased(c) | Event::EventDiverted(c) | Event::EventAbandoned(c) => {
                if let (Some(conn), Some(id)) = (c.conn_id, self.dn_agent.get(&c.this_dn)) {
                    if let Some(view) = self.agents.get_mut(id) {
                        if view.calls.remove(&conn) && view.calls.is_empty() {
                            view.wrapping = true;
                        }
                    }
                }
            }
            Event::EventDNOutOfService(d) => {
                self.out_of_service.insert(d.this_dn.clone());
            }
            Event::EventDNBackInService(d) if self.out_of_service.remove(&d.this_dn) => {
                if let Some(id) = self.dn_agent.get(&d.this_dn).cloned() {
                    self.offer_agent(&id, now, &mut out);
                }
            }
            _ => {}
        }
        out
    }

    /// Timers: reservations nothing rang end (the agent is offered again), calls whose
    /// timeout passed get [`RoutingReply::Timeout`].
    pub fn tick(&mut self, now: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let expired: Vec<(String, Reservation)> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.until <= now)
            .map(|(a, r)| (a.clone(), r.clone()))
            .collect();
        for (agent, r) in expired {
            self.reservations.remove(&agent);
            self.reserved_for.remove(&r.conn);
            out.push(Output::ReservationExpired {
                queue: r.queue,
                agent: agent.clone(),
                conn: r.conn,
            });
            self.offer_agent(&agent, now, &mut out);
        }
        let late: Vec<ConnId> = self
            .waiting
            .values()
            .filter(|w| w.deadline.is_some_and(|d| d <= now))
            .map(|w| w.conn)
            .collect();
        for conn in late {
            self.tried.remove(&conn);
            if let Some(w) = self.remove_waiting(conn) {
                out.push(Output::Reply {
                    to: w.reply_to,
                    queue: w.queue,
                    reply: RoutingReply::Timeout {
                        request_id: w.request_id,
                        conn_id: conn,
                    },
                });
            }
        }
        out
    }

    /// Statistics of every queue that ever had a submission.
    pub fn stats(&self, now: u64) -> BTreeMap<String, QueueStats> {
        let mut stats: BTreeMap<String, QueueStats> = self
            .last
            .keys()
            .map(|q| (q.clone(), QueueStats::default()))
            .collect();
        for w in self.waiting.values() {
            let s = stats.entry(w.queue.clone()).or_default();
            s.waiting += 1;
            s.longest_wait_ms = s.longest_wait_ms.max(now.saturating_sub(w.enqueued_ms));
        }
        let available: Vec<&AgentView> =
            self.agents.values().filter(|a| self.available(a)).collect();
        for (queue, s) in stats.iter_mut() {
            s.agents_ready = available
                .iter()
                .filter(|a| {
                    let last = self.last.get(queue).is_some_and(|(expr, group)| {
                        group.as_ref().is_none_or(|g| a.groups.contains(g))
                            && expr.matches(&a.skills)
                    });
                    last || self
                        .waiting
                        .values()
                        .any(|w| w.queue == *queue && w.wants(a))
                })
                .count();
        }
        stats
    }

    fn agent_with_dn(&mut self, a: &AgentAttrs) -> Option<&mut AgentView> {
        self.agents.get_mut(&a.agent_id).filter(|v| v.dn.is_some())
    }

    fn logout(&mut self, agent: &str) {
        if let Some(view) = self.agents.get_mut(agent) {
            if let Some(dn) = view.dn.take() {
                self.dn_agent.remove(&dn);
            }
            view.ready_since = None;
            view.calls.clear();
            view.wrapping = false;
        }
    }

    fn remove_waiting(&mut self, conn: ConnId) -> Option<Waiting> {
        let w = self.waiting.remove(&conn)?;
        self.order.remove(&w.place());
        Some(w)
    }

    /// Ends the reservation held for `conn`; returns the agent it held.
    fn free_call(&mut self, conn: ConnId) -> Option<String> {
        let agent = self.reserved_for.remove(&conn)?;
        self.reservations.remove(&agent);
        Some(agent)
    }

    /// Gives the agent, if available, to the first waiting call that it matches.
    fn offer_agent(&mut self, agent: &str, now: u64, out: &mut Vec<Output>) {
        let Some(view) = self.agents.get(agent).filter(|a| self.available(a)) else {
            return;
        };
        let call = self
            .order
            .iter()
            .filter_map(|p| self.waiting.get(&p.conn))
            .find(|w| w.wants(view))
            .map(|w| w.conn);
        if let Some(conn) = call {
            self.reserve(conn, agent.to_string(), now, out);
        }
    }

    /// Gives the call the longest idle available agent that it matches, if any.
    fn offer_call(&mut self, conn: ConnId, now: u64, out: &mut Vec<Output>) {
        let Some(w) = self.waiting.get(&conn) else {
            return;
        };
        // Cheapest tests first: most agents are busy or not ready.
        // An agent the call already had comes last (see `tried`).
        let best = self
            .agents
            .values()
            .filter(|a| a.ready_since.is_some() && a.calls.is_empty() && !a.wrapping)
            .filter(|a| w.wants(a) && self.available(a))
            .min_by_key(|a| (self.was_tried(conn, &a.id), a.ready_since, a.id.as_str()))
            .map(|a| a.id.clone());
        if let Some(agent) = best {
            self.reserve(conn, agent, now, out);
        }
    }

    fn was_tried(&self, conn: ConnId, agent: &str) -> bool {
        self.tried
            .get(&conn)
            .is_some_and(|t| t.iter().any(|a| a == agent))
    }

    fn reserve(&mut self, conn: ConnId, agent: String, now: u64, out: &mut Vec<Output>) {
        let Some(w) = self.remove_waiting(conn) else {
            return;
        };
        let tried = self.tried.entry(conn).or_default();
        if !tried.contains(&agent) {
            tried.push(agent.clone());
        }
        let dn = self
            .agents
            .get(&agent)
            .and_then(|a| a.dn.clone())
            .unwrap_or_default();
        self.reservations.insert(
            agent.clone(),
            Reservation {
                conn,
                queue: w.queue.clone(),
                until: now.saturating_add(self.reservation_ms),
            },
        );
        self.reserved_for.insert(conn, agent.clone());
        out.push(Output::Publish(Event::EventAgentReserved(AgentAttrs {
            tenant: self.tenant.clone(),
            agent_id: agent.clone(),
            this_dn: dn.clone(),
            reason_code: None,
            conn_id: Some(conn),
            request_id: None,
            ts_ms: now,
        })));
        out.push(Output::Reply {
            to: w.reply_to,
            queue: w.queue,
            reply: RoutingReply::Target {
                request_id: w.request_id,
                conn_id: conn,
                agent_id: agent,
                dn,
            },
        });
    }
}
