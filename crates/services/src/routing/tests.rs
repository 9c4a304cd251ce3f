use super::model::*;
use switchboard_config::Config;
use switchboard_events::requests::{RoutingReply, RoutingRequest};
use switchboard_events::{AgentAttrs, CallAttrs, ConnId, DnAttrs, Event, UserData};

/// The demo tenant: a1001..a1005 sales (levels 6, 7, 8, 9, 5; a1002 and a1005 speak Spanish),
/// a1006.. support.
fn queues() -> Queues {
    Queues::new(&Config::demo().tenants[0], 10_000)
}

fn agent_event(kind: fn(AgentAttrs) -> Event, agent: &str, dn: &str, ts: u64) -> Event {
    kind(AgentAttrs {
        tenant: "demo".into(),
        agent_id: agent.into(),
        this_dn: dn.into(),
        ts_ms: ts,
        ..Default::default()
    })
}

/// Logs `agent` in on its demo DN (a1001 -> 1001) and makes it Ready at `ts`.
fn ready(q: &mut Queues, agent: &str, ts: u64) -> Vec<Output> {
    let dn = &agent[1..];
    q.event(&agent_event(Event::EventAgentLogin, agent, dn, ts), ts);
    q.event(&agent_event(Event::EventAgentReady, agent, dn, ts), ts)
}

fn call(kind: fn(CallAttrs) -> Event, conn: u64, dn: &str) -> Event {
    kind(CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(ConnId(conn)),
        this_dn: dn.into(),
        ts_ms: 1,
        ..Default::default()
    })
}

struct Sub<'a> {
    conn: u64,
    skills: &'a str,
    priority: i32,
    enqueued: u64,
    timeout: Option<u32>,
    group: Option<&'a str>,
}

fn sub(conn: u64, skills: &str) -> Sub<'_> {
    Sub {
        conn,
        skills,
        priority: 0,
        enqueued: conn,
        timeout: None,
        group: None,
    }
}

fn submit(q: &mut Queues, s: Sub<'_>, now: u64) -> Vec<Output> {
    q.request(
        &RoutingRequest::Submit {
            tenant: "demo".into(),
            request_id: format!("r{}", s.conn),
            conn_id: ConnId(s.conn),
            queue: "sales".into(),
            skills: s.skills.into(),
            agent_group: s.group.map(str::to_string),
            priority: s.priority,
            enqueued_ms: s.enqueued,
            timeout_s: s.timeout,
            reply_to: "replies".into(),
            user_data: UserData::new(),
        },
        now,
    )
}

/// The (conn, agent) of every Target in `out`.
fn targets(out: &[Output]) -> Vec<(u64, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Reply {
                reply:
                    RoutingReply::Target {
                        conn_id, agent_id, ..
                    },
                ..
            } => Some((conn_id.0, agent_id.clone())),
            _ => None,
        })
        .collect()
}

fn t(conn: u64, agent: &str) -> (u64, String) {
    (conn, agent.to_string())
}

#[test]
fn a_call_takes_the_longest_idle_matching_agent() {
    let mut q = queues();
    ready(&mut q, "a1004", 30);
    ready(&mut q, "a1001", 10);
    ready(&mut q, "a1002", 20);
    let out = submit(&mut q, sub(1, "sales >= 7"), 100);
    assert_eq!(targets(&out), [t(1, "a1002")]);
    // The reservation is published, then the target is replied.
    match &out[0] {
        Output::Publish(Event::EventAgentReserved(a)) => {
            assert_eq!((a.agent_id.as_str(), a.this_dn.as_str()), ("a1002", "1002"));
            assert_eq!(a.conn_id, Some(ConnId(1)));
        }
        other => panic!("{other:?}"),
    }
    match &out[1] {
        Output::Reply { to, queue, reply } => {
            assert_eq!((to.as_str(), queue.as_str()), ("replies", "sales"));
            assert_eq!(
                *reply,
                RoutingReply::Target {
                    request_id: "r1".into(),
                    conn_id: ConnId(1),
                    agent_id: "a1002".into(),
                    dn: "1002".into()
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // The reserved agent is not given twice.
    assert_eq!(
        targets(&submit(&mut q, sub(2, "sales >= 7"), 101)),
        [t(2, "a1004")]
    );
    assert!(targets(&submit(&mut q, sub(3, "sales >= 7"), 102)).is_empty());
    assert_eq!(q.waiting().count(), 1);
}

#[test]
fn an_agent_that_turns_ready_takes_the_first_call_it_matches() {
    let mut q = queues();
    assert!(targets(&submit(&mut q, sub(1, "support"), 1)).is_empty());
    let mut low = sub(2, "sales");
    low.enqueued = 0;
    submit(&mut q, low, 2);
    let mut high = sub(3, "sales");
    high.priority = 5;
    high.enqueued = 50;
    submit(&mut q, high, 3);
    submit(&mut q, sub(4, "sales"), 4);
    // Priority first, then age.
    let order: Vec<u64> = q.waiting().map(|w| w.conn.0).collect();
    assert_eq!(order, [3, 2, 1, 4]);
    assert_eq!(targets(&ready(&mut q, "a1001", 10)), [t(3, "a1001")]);
    assert_eq!(targets(&ready(&mut q, "a1002", 11)), [t(2, "a1002")]);
    // A support agent skips the sales calls.
    assert_eq!(targets(&ready(&mut q, "a1006", 12)), [t(1, "a1006")]);
    assert_eq!(q.waiting().count(), 1);
}

#[test]
fn agent_group_and_rejections() {
    let mut q = queues();
    ready(&mut q, "a1006", 1);
    let mut s = sub(1, "");
    s.group = Some("sales");
    assert!(targets(&submit(&mut q, s, 2)).is_empty());
    ready(&mut q, "a1003", 3);
    assert_eq!(q.waiting().count(), 0);
    let rejected = |out: Vec<Output>| match &out[..] {
        [Output::Reply {
            reply: RoutingReply::Rejected { reason, .. },
            ..
        }] => reason.clone(),
        other => panic!("{other:?}"),
    };
    let reason = rejected(submit(&mut q, sub(2, "sales >="), 4));
    assert!(reason.contains("at position 8"), "{reason}");
    let mut s = sub(3, "");
    s.group = Some("nobody");
    assert!(rejected(submit(&mut q, s, 5)).contains("no agent group"));
    let other = RoutingRequest::Submit {
        tenant: "acme".into(),
        request_id: "x".into(),
        conn_id: ConnId(9),
        queue: "q".into(),
        skills: String::new(),
        agent_group: None,
        priority: 0,
        enqueued_ms: 0,
        timeout_s: None,
        reply_to: "r".into(),
        user_data: UserData::new(),
    };
    assert!(rejected(q.request(&other, 6)).contains("tenant"));
    for bad in ["", "a b", "x".repeat(65).as_str(), "sales\n"] {
        let mut req = other.clone();
        if let RoutingRequest::Submit { tenant, queue, .. } = &mut req {
            *tenant = "demo".into();
            *queue = bad.to_string();
        }
        assert!(
            rejected(q.request(&req, 7)).contains("queue name"),
            "{bad:?}"
        );
    }
    assert_eq!(q.waiting().count(), 0);
}

#[test]
fn busy_not_ready_wrapping_and_out_of_service_agents_are_skipped() {
    let mut q = queues();
    ready(&mut q, "a1001", 1);
    ready(&mut q, "a1002", 2);
    ready(&mut q, "a1003", 3);
    ready(&mut q, "a1004", 4);
    q.event(&call(Event::EventRinging, 90, "1001"), 5);
    q.event(
        &agent_event(Event::EventAgentNotReady, "a1002", "1002", 5),
        5,
    );
    let oos = |f: fn(DnAttrs) -> Event| {
        f(DnAttrs {
            tenant: "demo".into(),
            this_dn: "1003".into(),
            ts_ms: 5,
        })
    };
    q.event(&oos(Event::EventDNOutOfService), 5);
    assert_eq!(
        targets(&submit(&mut q, sub(1, "sales"), 6)),
        [t(1, "a1004")]
    );
    assert!(targets(&submit(&mut q, sub(2, "sales"), 7)).is_empty());
    // Back in service: the agent takes the waiting call.
    assert_eq!(
        targets(&q.event(&oos(Event::EventDNBackInService), 8)),
        [t(2, "a1003")]
    );
    submit(&mut q, sub(3, "sales"), 9);
    // The call on 1001 ends: nothing until agent-state says Ready.
    assert!(q
        .event(&call(Event::EventReleased, 90, "1001"), 10)
        .is_empty());
    assert!(q.agent("a1001").unwrap().wrapping);
    let out = q.event(
        &agent_event(Event::EventAgentReady, "a1001", "1001", 11),
        11,
    );
    assert_eq!(targets(&out), [t(3, "a1001")]);
    assert_eq!(q.agent("a1001").unwrap().ready_since, Some(11));
}

#[test]
fn reservation_ends_on_ringing_resubmission_cancel_or_timeout() {
    let mut q = queues();
    ready(&mut q, "a1001", 1);
    assert_eq!(
        targets(&submit(&mut q, sub(1, "sales"), 10)),
        [t(1, "a1001")]
    );
    assert_eq!(q.next_deadline(), Some(10_010));
    // Ringing ends it (the agent is busy now).
    q.event(&call(Event::EventRinging, 1, "1001"), 11);
    assert!(q.reservation("a1001").is_none());
    assert_eq!(q.next_deadline(), None);
    // Cancel frees the agent for the next call.
    ready(&mut q, "a1002", 20);
    assert_eq!(
        targets(&submit(&mut q, sub(2, "sales"), 21)),
        [t(2, "a1002")]
    );
    submit(&mut q, sub(3, "sales"), 22);
    let out = q.request(
        &RoutingRequest::Cancel {
            tenant: "demo".into(),
            conn_id: ConnId(2),
        },
        23,
    );
    assert_eq!(targets(&out), [t(3, "a1002")]);
    // Timeout: counted, and the agent is offered again.
    submit(&mut q, sub(4, "sales"), 24);
    let out = q.tick(23 + 10_000);
    assert!(out.iter().any(|o| matches!(o, Output::ReservationExpired { agent, conn, .. } if agent == "a1002" && *conn == ConnId(3))));
    assert_eq!(targets(&out), [t(4, "a1002")]);
}

#[test]
fn a_lost_race_requeues_the_call_at_its_old_place() {
    let mut q = queues();
    ready(&mut q, "a1001", 1);
    let mut first = sub(1, "sales");
    first.enqueued = 100;
    assert_eq!(targets(&submit(&mut q, first, 100)), [t(1, "a1001")]);
    let mut later = sub(2, "sales");
    later.enqueued = 200;
    submit(&mut q, later, 200);
    // The agent goes not ready while ringing; nobody answers.
    q.event(&call(Event::EventRinging, 1, "1001"), 201);
    q.event(
        &agent_event(Event::EventAgentNotReady, "a1001", "1001", 202),
        202,
    );
    q.event(&call(Event::EventReleased, 1, "1001"), 210);
    let mut again = sub(1, "sales");
    again.enqueued = 100;
    assert!(targets(&submit(&mut q, again, 211)).is_empty());
    let order: Vec<u64> = q.waiting().map(|w| w.conn.0).collect();
    assert_eq!(
        order,
        [1, 2],
        "the resubmitted call is ahead of the later one"
    );
    assert_eq!(targets(&ready(&mut q, "a1002", 220)), [t(1, "a1002")]);
}

#[test]
fn resubmitting_a_reserved_call_frees_its_agent_first() {
    let mut q = queues();
    ready(&mut q, "a1001", 1);
    ready(&mut q, "a1002", 2);
    assert_eq!(
        targets(&submit(&mut q, sub(1, "sales"), 10)),
        [t(1, "a1001")]
    );
    // Submitted again before anything rang (the route to a1001 failed, and the events saying
    // so have not arrived yet): a1001 is free again, but the call goes to the agent it has not
    // had yet.
    assert_eq!(
        targets(&submit(&mut q, sub(1, "sales"), 11)),
        [t(1, "a1002")]
    );
    assert!(q.reservation("a1001").is_none());
    // With nobody else left, it may go back to an agent it already had.
    assert_eq!(
        targets(&submit(&mut q, sub(1, "sales"), 12)),
        [t(1, "a1001")]
    );
}

#[test]
fn a_resubmitted_call_does_not_go_back_to_the_agent_whose_phone_failed() {
    let mut q = queues();
    ready(&mut q, "a1001", 1);
    ready(&mut q, "a1002", 2);
    assert_eq!(
        targets(&submit(&mut q, sub(1, "sales"), 10)),
        [t(1, "a1001")]
    );
    // a1001's phone rang and answered busy; agent-state put it back to Ready at once (no
    // after-call work) before the strategy submitted the call again.
    q.event(&call(Event::EventRinging, 1, "1001"), 11);
    q.event(&call(Event::EventReleased, 1, "1001"), 12);
    let out = q.event(
        &agent_event(Event::EventAgentReady, "a1001", "1001", 13),
        13,
    );
    assert!(targets(&out).is_empty(), "nothing waits yet");
    assert_eq!(
        targets(&submit(&mut q, sub(1, "sales"), 14)),
        [t(1, "a1002")]
    );
}

#[test]
fn timeouts_count_from_the_first_enqueue() {
    let mut q = queues();
    let mut s = sub(1, "sales");
    s.enqueued = 1_000;
    s.timeout = Some(5);
    submit(&mut q, s, 3_000);
    assert_eq!(q.next_deadline(), Some(6_000));
    assert!(q.tick(5_999).is_empty());
    let out = q.tick(6_000);
    match &out[..] {
        [Output::Reply {
            reply:
                RoutingReply::Timeout {
                    request_id,
                    conn_id,
                },
            ..
        }] => assert_eq!((request_id.as_str(), *conn_id), ("r1", ConnId(1))),
        other => panic!("{other:?}"),
    }
    assert_eq!(q.waiting().count(), 0);
}

#[test]
fn queue_statistics() {
    let mut q = queues();
    ready(&mut q, "a1006", 1);
    let mut s = sub(1, "sales >= 9");
    s.enqueued = 1_000;
    submit(&mut q, s, 1_000);
    let mut s = sub(2, "sales >= 9");
    s.enqueued = 2_000;
    submit(&mut q, s, 2_000);
    let stats = q.stats(5_000);
    assert_eq!(
        stats["sales"],
        QueueStats {
            waiting: 2,
            longest_wait_ms: 4_000,
            agents_ready: 0
        }
    );
    // a1004 (sales 9) takes one; a1003 (sales 8) matches neither call nor the expression.
    ready(&mut q, "a1004", 6_000);
    ready(&mut q, "a1003", 6_000);
    let stats = q.stats(7_000);
    assert_eq!(
        (stats["sales"].waiting, stats["sales"].longest_wait_ms),
        (1, 5_000)
    );
    assert_eq!(stats["sales"].agents_ready, 0);
    // The waiting call is served; the queue's last expression still counts ready agents.
    q.event(&call(Event::EventRinging, 1, "1004"), 7_001);
    q.event(&call(Event::EventReleased, 1, "1004"), 7_002);
    q.event(
        &agent_event(Event::EventAgentReady, "a1004", "1004", 7_003),
        7_003,
    );
    let stats = q.stats(8_000);
    assert_eq!(stats["sales"].waiting, 0);
    q.event(&call(Event::EventRinging, 2, "1004"), 8_001);
    q.event(&call(Event::EventReleased, 2, "1004"), 8_002);
    q.event(
        &agent_event(Event::EventAgentReady, "a1004", "1004", 8_003),
        8_003,
    );
    assert_eq!(
        q.stats(9_000)["sales"],
        QueueStats {
            waiting: 0,
            longest_wait_ms: 0,
            agents_ready: 1
        }
    );
}

#[test]
fn snapshot_round_trip() {
    let mut q = queues();
    ready(&mut q, "a1001", 1);
    submit(&mut q, sub(1, "support & english"), 2);
    submit(&mut q, sub(2, "sales"), 3);
    let json = serde_json::to_string(&q).unwrap();
    let mut back: Queues = serde_json::from_str(&json).unwrap();
    // The indexes are rebuilt from the configuration, as the role does on restore.
    back.configure(&Config::demo().tenants[0], 10_000);
    assert_eq!(back, q);
    // And the restored reducer selects as the original would.
    let out = ready(&mut back, "a1006", 5);
    assert_eq!(targets(&out), [t(1, "a1006")]);
}

#[test]
fn a_call_forwarded_away_from_the_agents_dn_frees_it_after_agent_state_says_ready() {
    let mut q = queues();
    ready(&mut q, "a1001", 1);
    q.event(&call(Event::EventRinging, 9, "1001"), 2);
    q.event(&call(Event::EventDiverted, 9, "1001"), 3);
    assert!(q.agent("a1001").unwrap().calls.is_empty());
    assert!(q.agent("a1001").unwrap().wrapping);
    submit(&mut q, sub(1, "sales"), 4);
    let out = q.event(&agent_event(Event::EventAgentReady, "a1001", "1001", 5), 5);
    assert_eq!(targets(&out), [t(1, "a1001")]);
}
