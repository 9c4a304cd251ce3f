use super::model::*;
use switchboard_config::Config;
use switchboard_events::requests::{AgentOp, AgentRequest};
use switchboard_events::{AgentAttrs, CallAttrs, ConnId, DnAttrs, Event};

const C1: ConnId = ConnId(0xc1);
const C2: ConnId = ConnId(0xc2);

fn board_with_acw(acw_s: u32) -> Board {
    let mut config = Config::demo();
    let tenant = &mut config.tenants[0];
    for g in &mut tenant.agent_groups {
        g.after_call_work_s = acw_s;
    }
    Board::new(tenant, 5_000)
}

fn board() -> Board {
    board_with_acw(0)
}

fn req(agent: &str, id: u64, op: AgentOp) -> AgentRequest {
    AgentRequest {
        tenant: "demo".into(),
        request_id: id,
        agent_id: agent.into(),
        op,
    }
}

fn login(b: &mut Board, agent: &str, dn: Option<&str>, now: u64) -> Vec<Event> {
    b.request(
        &req(
            agent,
            1,
            AgentOp::Login {
                dn: dn.map(str::to_string),
            },
        ),
        now,
    )
}

fn ready(b: &mut Board, agent: &str, now: u64) -> Vec<Event> {
    b.request(&req(agent, 2, AgentOp::Ready), now)
}

fn call(kind: fn(CallAttrs) -> Event, conn: ConnId, dn: &str) -> Event {
    kind(CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(conn),
        this_dn: dn.into(),
        ts_ms: 1,
        ..Default::default()
    })
}

fn reserved(agent: &str, dn: &str, conn: ConnId) -> Event {
    Event::EventAgentReserved(AgentAttrs {
        tenant: "demo".into(),
        agent_id: agent.into(),
        this_dn: dn.into(),
        conn_id: Some(conn),
        ts_ms: 1,
        ..Default::default()
    })
}

fn names(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::name).collect()
}

fn error_code(events: &[Event]) -> &str {
    match events {
        [Event::EventError(e)] => &e.error_code,
        other => panic!("expected one EventError, got {other:?}"),
    }
}

fn status(b: &Board, agent: &str) -> AgentStatus {
    b.agent(agent).expect("agent").status.clone()
}

#[test]
fn login_on_the_default_dn_then_not_ready() {
    let mut b = board();
    let out = login(&mut b, "a1001", None, 10);
    assert_eq!(names(&out), ["EventAgentLogin"]);
    match &out[0] {
        Event::EventAgentLogin(a) => {
            assert_eq!((a.agent_id.as_str(), a.this_dn.as_str()), ("a1001", "1001"));
            assert_eq!(a.request_id, Some(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        status(&b, "a1001"),
        AgentStatus::NotReady { reason_code: None }
    );
    assert_eq!(b.agent("a1001").unwrap().dn.as_deref(), Some("1001"));
    // Logging in again on the same DN is confirmed without change.
    assert_eq!(
        names(&login(&mut b, "a1001", Some("1001"), 11)),
        ["EventAgentLogin"]
    );
    assert_eq!(b.agent("a1001").unwrap().since, 10);
}

#[test]
fn login_refusals_have_stable_codes() {
    let mut b = board();
    assert_eq!(
        error_code(&login(&mut b, "nobody", None, 1)),
        codes::UNKNOWN_AGENT
    );
    assert_eq!(
        error_code(&login(&mut b, "a1001", Some("5000"), 1)),
        codes::UNKNOWN_DN
    );
    assert_eq!(
        error_code(&login(&mut b, "a1001", Some("9999"), 1)),
        codes::UNKNOWN_DN
    );
    login(&mut b, "a1001", None, 1);
    assert_eq!(
        error_code(&login(&mut b, "a1002", Some("1001"), 2)),
        codes::DN_TAKEN
    );
    assert_eq!(
        error_code(&login(&mut b, "a1001", Some("1003"), 2)),
        codes::LOGGED_IN_ELSEWHERE
    );
    let mut other = req("a1001", 9, AgentOp::Ready);
    other.tenant = "acme".into();
    assert_eq!(error_code(&b.request(&other, 3)), codes::WRONG_TENANT);
    // An agent without a default DN must name one.
    let mut config = Config::demo();
    config.tenants[0].agents[0].dn = None;
    let mut b = Board::new(&config.tenants[0], 5_000);
    assert_eq!(error_code(&login(&mut b, "a1001", None, 1)), codes::NO_DN);
    assert_eq!(
        names(&login(&mut b, "a1001", Some("1005"), 1)),
        ["EventAgentLogin"]
    );
}

#[test]
fn requests_of_a_logged_out_agent_are_refused() {
    let mut b = board();
    for op in [
        AgentOp::Ready,
        AgentOp::NotReady { reason_code: None },
        AgentOp::Logout,
        AgentOp::AfterCallWorkDone,
    ] {
        let out = b.request(&req("a1001", 5, op), 1);
        assert_eq!(error_code(&out), codes::NOT_LOGGED_IN);
        match &out[0] {
            Event::EventError(e) => assert_eq!(e.request_id, 5),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(status(&b, "a1001"), AgentStatus::LoggedOut);
}

#[test]
fn ready_not_ready_logout() {
    let mut b = board();
    login(&mut b, "a1001", None, 1);
    assert_eq!(names(&ready(&mut b, "a1001", 5)), ["EventAgentReady"]);
    assert_eq!(status(&b, "a1001"), AgentStatus::Ready { since: 5 });
    // Ready again keeps the idle time.
    ready(&mut b, "a1001", 9);
    assert_eq!(status(&b, "a1001"), AgentStatus::Ready { since: 5 });
    let out = b.request(
        &req(
            "a1001",
            3,
            AgentOp::NotReady {
                reason_code: Some("lunch".into()),
            },
        ),
        10,
    );
    match &out[..] {
        [Event::EventAgentNotReady(a)] => assert_eq!(a.reason_code.as_deref(), Some("lunch")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        status(&b, "a1001"),
        AgentStatus::NotReady {
            reason_code: Some("lunch".into())
        }
    );
    let out = b.request(&req("a1001", 4, AgentOp::Logout), 11);
    match &out[..] {
        [Event::EventAgentLogout(a)] => assert_eq!(a.this_dn, "1001"),
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&b, "a1001"), AgentStatus::LoggedOut);
    assert_eq!(b.agent("a1001").unwrap().dn, None);
    // The DN is free for another agent now.
    assert_eq!(
        names(&login(&mut b, "a1002", Some("1001"), 12)),
        ["EventAgentLogin"]
    );
}

#[test]
fn a_call_makes_the_agent_busy_then_ready_without_after_call_work() {
    let mut b = board();
    login(&mut b, "a1001", None, 1);
    ready(&mut b, "a1001", 2);
    assert!(b
        .event(&call(Event::EventRinging, C1, "1001"), 3)
        .is_empty());
    assert_eq!(status(&b, "a1001"), AgentStatus::Busy { conn: C1 });
    b.event(&call(Event::EventEstablished, C1, "1001"), 4);
    assert_eq!(status(&b, "a1001"), AgentStatus::Busy { conn: C1 });
    let out = b.event(&call(Event::EventReleased, C1, "1001"), 6);
    match &out[..] {
        [Event::EventAgentReady(a)] => {
            assert_eq!((a.conn_id, a.request_id), (Some(C1), None));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&b, "a1001"), AgentStatus::Ready { since: 6 });
}

#[test]
fn after_call_work_is_timed_by_the_group_and_can_end_early() {
    let mut b = board_with_acw(30);
    login(&mut b, "a1001", None, 1);
    ready(&mut b, "a1001", 2);
    b.event(&call(Event::EventRinging, C1, "1001"), 3);
    let out = b.event(&call(Event::EventReleased, C1, "1001"), 1_000);
    assert_eq!(names(&out), ["EventAgentAfterCallWork"]);
    assert_eq!(
        status(&b, "a1001"),
        AgentStatus::AfterCallWork { until: 31_000 }
    );
    assert_eq!(b.next_deadline(), Some(31_000));
    assert!(b.tick(30_999).is_empty());
    assert_eq!(names(&b.tick(31_000)), ["EventAgentReady"]);
    assert_eq!(status(&b, "a1001"), AgentStatus::Ready { since: 31_000 });
    assert_eq!(b.next_deadline(), None);
    // Second call: done early by request.
    b.event(&call(Event::EventRinging, C2, "1001"), 40_000);
    b.event(&call(Event::EventReleased, C2, "1001"), 41_000);
    let out = b.request(&req("a1001", 8, AgentOp::AfterCallWorkDone), 42_000);
    match &out[..] {
        [Event::EventAgentReady(a)] => assert_eq!(a.request_id, Some(8)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        error_code(&b.request(&req("a1001", 9, AgentOp::AfterCallWorkDone), 43_000)),
        codes::NOT_IN_AFTER_CALL_WORK
    );
}

#[test]
fn not_ready_before_or_during_a_call_stays_not_ready_after_it() {
    let mut b = board_with_acw(30);
    login(&mut b, "a1001", None, 1);
    b.request(
        &req(
            "a1001",
            3,
            AgentOp::NotReady {
                reason_code: Some("break".into()),
            },
        ),
        2,
    );
    b.event(&call(Event::EventRinging, C1, "1001"), 3);
    let out = b.event(&call(Event::EventReleased, C1, "1001"), 4);
    match &out[..] {
        [Event::EventAgentNotReady(a)] => assert_eq!(a.reason_code.as_deref(), Some("break")),
        other => panic!("{other:?}"),
    }
    // Not ready asked while ringing (the lost race): not ready after the call.
    ready(&mut b, "a1001", 5);
    b.event(&call(Event::EventRinging, C2, "1001"), 6);
    b.request(&req("a1001", 4, AgentOp::NotReady { reason_code: None }), 7);
    assert_eq!(status(&b, "a1001"), AgentStatus::Busy { conn: C2 });
    assert_eq!(
        names(&b.event(&call(Event::EventReleased, C2, "1001"), 8)),
        ["EventAgentNotReady"]
    );
    // Ready asked during a call skips after-call work.
    ready(&mut b, "a1001", 9);
    b.event(&call(Event::EventRinging, C1, "1001"), 10);
    ready(&mut b, "a1001", 11);
    assert_eq!(
        names(&b.event(&call(Event::EventReleased, C1, "1001"), 12)),
        ["EventAgentReady"]
    );
}

#[test]
fn busy_until_the_last_call_on_the_dn_ends() {
    let mut b = board();
    login(&mut b, "a1001", None, 1);
    ready(&mut b, "a1001", 2);
    b.event(&call(Event::EventRinging, C1, "1001"), 3);
    b.event(&call(Event::EventDialing, C2, "1001"), 4);
    assert!(b
        .event(&call(Event::EventReleased, C1, "1001"), 5)
        .is_empty());
    assert_eq!(status(&b, "a1001"), AgentStatus::Busy { conn: C1 });
    // A transfer replaces the call's id.
    let mut changed = call(Event::EventPartyChanged, ConnId(0xc3), "1001");
    if let Some(c) = changed.call_mut() {
        c.previous_conn_id = Some(C2);
    }
    b.event(&changed, 6);
    assert!(b
        .event(&call(Event::EventReleased, C2, "1001"), 7)
        .is_empty());
    assert_eq!(
        names(&b.event(&call(Event::EventReleased, ConnId(0xc3), "1001"), 8)),
        ["EventAgentReady"]
    );
    // Calls on DNs without an agent, or released twice, change nothing.
    assert!(b
        .event(&call(Event::EventRinging, C1, "1009"), 9)
        .is_empty());
    assert!(b
        .event(&call(Event::EventReleased, C1, "1001"), 9)
        .is_empty());
}

#[test]
fn reservation_holds_until_ringing_or_timeout() {
    let mut b = board();
    login(&mut b, "a1001", None, 1);
    ready(&mut b, "a1001", 2);
    b.event(&reserved("a1001", "1001", C1), 10);
    assert_eq!(
        status(&b, "a1001"),
        AgentStatus::Reserved {
            conn: C1,
            since: 10,
            until: 5_010,
            ready_since: 2
        }
    );
    assert_eq!(b.next_deadline(), Some(5_010));
    // Nothing rang: back to Ready with the old idle time, no event.
    assert!(b.tick(5_010).is_empty());
    assert_eq!(status(&b, "a1001"), AgentStatus::Ready { since: 2 });
    b.event(&reserved("a1001", "1001", C2), 6_000);
    b.event(&call(Event::EventRinging, C2, "1001"), 6_001);
    assert_eq!(status(&b, "a1001"), AgentStatus::Busy { conn: C2 });
    // A reservation of an agent who is not Ready changes nothing.
    login(&mut b, "a1002", None, 1);
    b.event(&reserved("a1002", "1002", C1), 7_000);
    assert_eq!(
        status(&b, "a1002"),
        AgentStatus::NotReady { reason_code: None }
    );
}

#[test]
fn dn_service_and_own_events_coming_back() {
    let mut b = board();
    let dn = |f: fn(DnAttrs) -> Event| {
        f(DnAttrs {
            tenant: "demo".into(),
            this_dn: "1001".into(),
            ts_ms: 1,
        })
    };
    b.event(&dn(Event::EventDNOutOfService), 1);
    assert!(!b.in_service("1001"));
    b.event(&dn(Event::EventDNBackInService), 2);
    assert!(b.in_service("1001"));
    login(&mut b, "a1001", None, 1);
    let before = b.clone();
    let echo = ready(&mut before.clone(), "a1001", 3);
    for e in &echo {
        assert!(b.event(e, 4).is_empty());
    }
    assert_eq!(b, before);
}

#[test]
fn snapshot_round_trip_and_reconfigure() {
    let mut b = board();
    login(&mut b, "a1001", None, 1);
    ready(&mut b, "a1001", 2);
    let json = serde_json::to_string(&b).unwrap();
    let mut back: Board = serde_json::from_str(&json).unwrap();
    // The DN index is rebuilt from the agents, as the role does on restore.
    back.configure(&Config::demo().tenants[0], 5_000);
    assert_eq!(back, b);
    assert_eq!(back.agent_on("1001").map(|a| a.id.as_str()), Some("a1001"));
    let mut config = Config::demo();
    config.tenants[0].agent_groups[0].after_call_work_s = 7;
    back.configure(&config.tenants[0], 5_000);
    assert_eq!(back.agent("a1001").unwrap().acw_ms, 7_000);
    assert_eq!(status(&back, "a1001"), AgentStatus::Ready { since: 2 });
}

#[test]
fn a_call_forwarded_away_from_the_dn_ends_the_agents_call() {
    let mut b = board();
    login(&mut b, "a1001", None, 1);
    ready(&mut b, "a1001", 2);
    b.event(&call(Event::EventRinging, C1, "1001"), 3);
    // Ring-no-answer with forward_no_answer: the DN gets EventDiverted, not EventReleased.
    assert_eq!(
        names(&b.event(&call(Event::EventDiverted, C1, "1001"), 4)),
        ["EventAgentReady"]
    );
    assert_eq!(status(&b, "a1001"), AgentStatus::Ready { since: 4 });
}

#[test]
fn logout_during_a_call_leaves_the_call_alone() {
    let mut b = board();
    login(&mut b, "a1001", None, 1);
    b.event(&call(Event::EventRinging, C1, "1001"), 2);
    let out = b.request(&req("a1001", 7, AgentOp::Logout), 3);
    assert_eq!(names(&out), ["EventAgentLogout"]);
    assert_eq!(status(&b, "a1001"), AgentStatus::LoggedOut);
    assert!(b.agent("a1001").unwrap().calls.is_empty());
    // The call's end concerns no agent any more.
    assert!(b
        .event(&call(Event::EventReleased, C1, "1001"), 4)
        .is_empty());
    assert_eq!(status(&b, "a1001"), AgentStatus::LoggedOut);
}
