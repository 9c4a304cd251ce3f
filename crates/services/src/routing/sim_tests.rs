//! Routing and agent-state together, driven through random interleavings: 50 calls, 10 agents
//! with mixed skills, agents going ready and not ready, calls answered or not (the lost race:
//! the agent turns not ready while ringing, the call is submitted again with its first
//! `enqueued_ms`). Checked: every target matches the call's expression, no agent is given a
//! call while it holds another or while a better placed waiting call (priority, then age)
//! matches it, and every call ends answered or timed out: none is lost.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;
use switchboard_config::{Agent, AgentGroup, Dn, DnKind, Skill, Tenant};
use switchboard_events::requests::{AgentOp, AgentRequest, RoutingReply, RoutingRequest};
use switchboard_events::{CallAttrs, ConnId, Event, UserData};

use super::expr::Expr;
use super::model::{Output, Queues};
use crate::agent_state::model::Board;

const AGENTS: usize = 10;
const CALLS: usize = 50;
const RESERVATION_MS: u64 = 10_000;
const SKILLS: [&str; 4] = ["sales", "support", "english", "spanish"];
const EXPRESSIONS: [&str; 7] = [
    "",
    "sales",
    "support >= 5",
    "sales >= 3 & english",
    "spanish | support < 4",
    "!sales & english",
    "(sales > 7 | support > 7) & !spanish",
];

fn tenant(levels: &[[u32; 4]]) -> Tenant {
    let mut t = switchboard_config::Config::demo().tenants.remove(0);
    t.skills = SKILLS
        .iter()
        .map(|s| Skill {
            name: s.to_string(),
            description: String::new(),
        })
        .collect();
    t.agent_groups = vec![AgentGroup {
        name: "all".into(),
        description: String::new(),
        after_call_work_s: 2,
    }];
    t.dns = (0..AGENTS)
        .map(|i| Dn::new(format!("{}", 2000 + i), DnKind::Extension))
        .collect();
    t.agents = levels
        .iter()
        .enumerate()
        .map(|(i, l)| Agent {
            login_id: format!("ag{i}"),
            name: String::new(),
            dn: Some(format!("{}", 2000 + i)),
            // A level 0 means the agent lacks the skill.
            skills: SKILLS
                .iter()
                .zip(l)
                .filter(|(_, level)| **level > 0)
                .map(|(s, level)| (s.to_string(), *level))
                .collect(),
            groups: vec!["all".into()],
        })
        .collect();
    t.route_points.clear();
    t.mailboxes.clear();
    t.dialplan.clear();
    t
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    NotYet,
    Waiting,
    /// Given an agent; the orchestrator has not routed it yet.
    Targeted(usize, u64),
    Ringing(usize),
    Talking(usize),
    Done,
    TimedOut,
}

struct Sim {
    now: u64,
    board: Board,
    queues: Queues,
    bus: VecDeque<Event>,
    calls: Vec<Phase>,
    exprs: Vec<usize>,
    enqueued: Vec<u64>,
    timeouts: Vec<Option<u32>>,
    skills: Vec<BTreeMap<String, u32>>,
    request_id: u64,
    submissions: u64,
    answered: usize,
    targets: usize,
}

impl Sim {
    fn agent_request(&mut self, agent: usize, op: AgentOp) {
        self.request_id += 1;
        let req = AgentRequest {
            tenant: "demo".into(),
            request_id: self.request_id,
            agent_id: format!("ag{agent}"),
            op,
        };
        let out = self.board.request(&req, self.now);
        self.bus.extend(out);
        self.pump();
    }

    fn submit(&mut self, call: usize) {
        self.submissions += 1;
        let req = RoutingRequest::Submit {
            tenant: "demo".into(),
            request_id: format!("s{}", self.submissions),
            conn_id: ConnId(call as u64 + 1),
            queue: "q".into(),
            skills: EXPRESSIONS[self.exprs[call]].into(),
            agent_group: None,
            priority: (call % 3) as i32,
            enqueued_ms: self.enqueued[call],
            timeout_s: self.timeouts[call],
            reply_to: "orchestrator".into(),
            user_data: UserData::new(),
        };
        self.calls[call] = Phase::Waiting;
        let out = self.queues.request(&req, self.now);
        self.routing_output(out);
        self.pump();
    }

    fn call_event(&mut self, kind: fn(CallAttrs) -> Event, call: usize, agent: usize) {
        self.bus.push_back(kind(CallAttrs {
            tenant: "demo".into(),
            conn_id: Some(ConnId(call as u64 + 1)),
            this_dn: format!("{}", 2000 + agent),
            ts_ms: self.now,
            ..Default::default()
        }));
        self.pump();
    }

    /// Delivers every event on the bus to both reducers, in order.
    fn pump(&mut self) {
        while let Some(event) = self.bus.pop_front() {
            let out = self.board.event(&event, self.now);
            self.bus.extend(out);
            let out = self.queues.event(&event, self.now);
            self.routing_output(out);
        }
    }

    fn routing_output(&mut self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Publish(e) => self.bus.push_back(e),
                Output::ReservationExpired { .. } => {
                    panic!("the simulated orchestrator routes within the reservation time")
                }
                Output::Reply { reply, .. } => self.reply(reply),
            }
        }
    }

    fn reply(&mut self, reply: RoutingReply) {
        match reply {
            RoutingReply::Target {
                conn_id, agent_id, ..
            } => {
                let call = (conn_id.0 - 1) as usize;
                let agent: usize = agent_id[2..].parse().expect("agent id");
                assert_eq!(
                    self.calls[call],
                    Phase::Waiting,
                    "call {call} targeted twice"
                );
                let expr = Expr::parse(EXPRESSIONS[self.exprs[call]]).expect("expression");
                assert!(
                    expr.matches(&self.skills[agent]),
                    "agent {agent} {:?} does not match {:?}",
                    self.skills[agent],
                    EXPRESSIONS[self.exprs[call]]
                );
                let holding = self.calls.iter().position(|p| match p {
                    Phase::Targeted(a, _) | Phase::Ringing(a) | Phase::Talking(a) => *a == agent,
                    _ => false,
                });
                assert_eq!(
                    holding, None,
                    "agent {agent} given call {call} while holding another"
                );
                // Priority then age: no waiting call the agent matches has a better place.
                let place = |c: usize| (std::cmp::Reverse(c % 3), self.enqueued[c]);
                for (other, phase) in self.calls.iter().enumerate() {
                    let better = other != call
                        && *phase == Phase::Waiting
                        && place(other) < place(call)
                        && Expr::parse(EXPRESSIONS[self.exprs[other]])
                            .is_ok_and(|e| e.matches(&self.skills[agent]));
                    assert!(
                        !better,
                        "agent {agent} given call {call} before call {other}"
                    );
                }
                self.targets += 1;
                self.calls[call] = Phase::Targeted(agent, self.now);
            }
            RoutingReply::Timeout { conn_id, .. } => {
                let call = (conn_id.0 - 1) as usize;
                assert_eq!(
                    self.calls[call],
                    Phase::Waiting,
                    "call {call} timed out while not waiting"
                );
                self.calls[call] = Phase::TimedOut;
            }
            RoutingReply::Rejected { reason, .. } => panic!("rejected: {reason}"),
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        // Targets are routed before the reservation can run out.
        let late: Vec<(usize, usize)> = self
            .calls
            .iter()
            .enumerate()
            .filter_map(|(c, p)| match p {
                Phase::Targeted(a, at) if self.now - at >= RESERVATION_MS / 2 => Some((c, *a)),
                _ => None,
            })
            .collect();
        for (call, agent) in late {
            self.route(call, agent);
        }
        let out = self.board.tick(self.now);
        self.bus.extend(out);
        self.pump();
        let out = self.queues.tick(self.now);
        self.routing_output(out);
        self.pump();
    }

    fn route(&mut self, call: usize, agent: usize) {
        self.calls[call] = Phase::Ringing(agent);
        self.call_event(Event::EventRinging, call, agent);
    }

    fn find(&self, pick: usize, wanted: fn(&Phase) -> Option<usize>) -> Option<(usize, usize)> {
        let found: Vec<(usize, usize)> = self
            .calls
            .iter()
            .enumerate()
            .filter_map(|(c, p)| wanted(p).map(|a| (c, a)))
            .collect();
        (!found.is_empty()).then(|| found[pick % found.len()])
    }

    fn step(&mut self, action: u8, pick: usize) {
        match action % 8 {
            0 | 1 => {
                if let Some(call) = self.calls.iter().position(|p| *p == Phase::NotYet) {
                    self.enqueued[call] = self.now;
                    self.submit(call);
                }
            }
            2 => self.agent_request(pick % AGENTS, AgentOp::Ready),
            3 => self.agent_request(pick % AGENTS, AgentOp::NotReady { reason_code: None }),
            4 => {
                if let Some((call, agent)) = self.find(pick, |p| match p {
                    Phase::Targeted(a, _) => Some(*a),
                    _ => None,
                }) {
                    self.route(call, agent);
                }
            }
            5 => {
                if let Some((call, agent)) = self.find(pick, |p| match p {
                    Phase::Ringing(a) => Some(*a),
                    _ => None,
                }) {
                    if pick.is_multiple_of(3) {
                        // The lost race: not ready while ringing, no answer, submitted again.
                        self.agent_request(agent, AgentOp::NotReady { reason_code: None });
                        self.call_event(Event::EventReleased, call, agent);
                        self.submit(call);
                    } else {
                        self.calls[call] = Phase::Talking(agent);
                        self.answered += 1;
                        self.call_event(Event::EventEstablished, call, agent);
                    }
                }
            }
            6 => {
                if let Some((call, agent)) = self.find(pick, |p| match p {
                    Phase::Talking(a) => Some(*a),
                    _ => None,
                }) {
                    self.calls[call] = Phase::Done;
                    self.call_event(Event::EventReleased, call, agent);
                }
            }
            _ => self.advance((pick % 2000) as u64),
        }
    }

    /// Everyone works until every call has ended.
    fn finish(&mut self) {
        for _ in 0..5_000 {
            if self
                .calls
                .iter()
                .all(|p| matches!(p, Phase::Done | Phase::TimedOut))
            {
                return;
            }
            if let Some(call) = self.calls.iter().position(|p| *p == Phase::NotYet) {
                self.enqueued[call] = self.now;
                self.submit(call);
            }
            for agent in 0..AGENTS {
                if matches!(
                    self.board.agent(&format!("ag{agent}")).map(|a| &a.status),
                    Some(crate::agent_state::model::AgentStatus::NotReady { .. })
                ) {
                    self.agent_request(agent, AgentOp::Ready);
                }
            }
            let snapshot: Vec<Phase> = self.calls.clone();
            for (call, phase) in snapshot.into_iter().enumerate() {
                match phase {
                    Phase::Targeted(a, _) => self.route(call, a),
                    Phase::Ringing(a) => {
                        self.calls[call] = Phase::Talking(a);
                        self.answered += 1;
                        self.call_event(Event::EventEstablished, call, a);
                    }
                    Phase::Talking(a) => {
                        self.calls[call] = Phase::Done;
                        self.call_event(Event::EventReleased, call, a);
                    }
                    _ => {}
                }
            }
            self.advance(1_000);
        }
        panic!("calls never ended: {:?}", self.calls);
    }
}

fn run(
    levels: Vec<[u32; 4]>,
    exprs: Vec<usize>,
    timeouts: Vec<Option<u32>>,
    script: Vec<(u8, usize)>,
) {
    let tenant = tenant(&levels);
    let skills: Vec<BTreeMap<String, u32>> =
        tenant.agents.iter().map(|a| a.skills.clone()).collect();
    // A call whose expression no agent matches must have a timeout, or it would wait forever.
    let timeouts: Vec<Option<u32>> = exprs
        .iter()
        .zip(timeouts)
        .map(|(e, t)| {
            let expr = Expr::parse(EXPRESSIONS[*e]).expect("expression");
            match t {
                None if !skills.iter().any(|s| expr.matches(s)) => Some(30),
                t => t,
            }
        })
        .collect();
    let mut sim = Sim {
        now: 1_000_000,
        board: Board::new(&tenant, RESERVATION_MS),
        queues: Queues::new(&tenant, RESERVATION_MS),
        bus: VecDeque::new(),
        calls: vec![Phase::NotYet; CALLS],
        exprs,
        enqueued: vec![0; CALLS],
        timeouts,
        skills,
        request_id: 0,
        submissions: 0,
        answered: 0,
        targets: 0,
    };
    for agent in 0..AGENTS {
        sim.agent_request(agent, AgentOp::Login { dn: None });
    }
    for (action, pick) in script {
        sim.step(action, pick);
    }
    sim.finish();
    let done = sim.calls.iter().filter(|p| **p == Phase::Done).count();
    let timed_out = sim.calls.iter().filter(|p| **p == Phase::TimedOut).count();
    assert_eq!(done + timed_out, CALLS, "no call is lost");
    assert_eq!(done, sim.answered);
    assert!(sim.targets >= done);
    assert_eq!(sim.queues.waiting().count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn no_agent_gets_two_calls_and_no_call_is_lost(
        levels in proptest::collection::vec(proptest::array::uniform4(prop_oneof![Just(0u32), 1u32..=10]), AGENTS),
        exprs in proptest::collection::vec(0..EXPRESSIONS.len(), CALLS),
        timeouts in proptest::collection::vec(proptest::option::of(1u32..=120), CALLS),
        script in proptest::collection::vec((any::<u8>(), any::<usize>()), 100..600),
    ) {
        run(levels, exprs, timeouts, script);
    }
}
