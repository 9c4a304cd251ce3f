//! The call model with DN options, without a network: route points (EventRouteRequest,
//! RouteCall, the default route, EventAbandoned), ACD queues (EventQueued, distribution by
//! RouteCall, the queue timeout, EventAbandoned), forward on no answer and on busy
//! (EventDiverted), the AgentID of events, and treatments (the media server's leg,
//! EventTreatmentApplied/End, the routing timer while a strategy works on the call).

use super::model::*;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use switchboard_events::{CallAttrs, ConnId, Event};

const T: &str = "demo";
const CARRIER: &str = "+15551234567";
const RP: &str = "5000";
const Q: &str = "6000";

fn sdp(tag: &str) -> Option<Bytes> {
    Some(Bytes::from(format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns={tag}\r\n"
    )))
}

/// DN options and agents of tenant `demo`.
#[derive(Default)]
struct Table {
    dns: HashMap<&'static str, DnInfo>,
    agents: HashMap<&'static str, &'static str>,
}

impl DnDirectory for Table {
    fn dn_info(&self, tenant: &str, dn: &str) -> Option<DnInfo> {
        (tenant == T).then(|| self.dns.get(dn).cloned()).flatten()
    }
    fn agent(&self, tenant: &str, dn: &str) -> Option<String> {
        (tenant == T)
            .then(|| self.agents.get(dn).map(|a| a.to_string()))
            .flatten()
    }
}

fn dn(n: &str) -> Dest {
    Dest::Dn(n.into())
}

fn route_point(timeout_ms: Option<u64>, default_route: Option<Dest>) -> DnInfo {
    DnInfo {
        route_point: Some(RoutePointInfo {
            timeout_ms,
            default_route,
        }),
        ..DnInfo::default()
    }
}

struct Sim {
    m: Model,
    now: u64,
    next_req: u64,
}

impl Sim {
    fn new(table: Table) -> Sim {
        Sim {
            m: Model::with_directory(
                ModelSettings {
                    ring_timeout_ms: 20_000,
                    node: 3,
                    route_timeout_ms: 10_000,
                },
                Arc::new(table),
            ),
            now: 1_000,
            next_req: 100,
        }
    }

    fn step(&mut self, input: Input) -> Vec<Action> {
        self.now += 10;
        let mut out = Vec::new();
        self.m.handle(input, self.now, &mut out);
        out
    }

    fn incoming(
        &mut self,
        n: u64,
        caller: &str,
        internal: bool,
        to: Dest,
    ) -> (LegId, ConnId, Vec<Action>) {
        let a = LegId::incoming(n);
        let out = self.step(Input::Incoming {
            leg: a,
            tenant: T.into(),
            caller: caller.into(),
            caller_internal: internal,
            dialed: "+15550001000".into(),
            to: Resolved::Ok(to),
            sdp: sdp("caller"),
        });
        let conn = self.m.call_of_leg(a).expect("a call");
        (a, conn, out)
    }

    fn request(&mut self, req: Request) -> (u64, Vec<Action>) {
        let id = self.next_req;
        self.next_req += 1;
        let out = self.step(Input::Request {
            id,
            tenant: T.into(),
            req,
        });
        (id, out)
    }
}

/// The events of `out` as (name, ThisDN, OtherDN, ThirdPartyDN).
fn seen(out: &[Action]) -> Vec<(&'static str, String, Option<String>, Option<String>)> {
    calls(out)
        .into_iter()
        .map(|(n, c)| (n, c.this_dn, c.other_dn, c.third_party_dn))
        .collect()
}

fn ev(
    name: &'static str,
    this: &str,
    other: &str,
    third: Option<&str>,
) -> (&'static str, String, Option<String>, Option<String>) {
    (
        name,
        this.into(),
        Some(other.into()),
        third.map(str::to_string),
    )
}

fn calls(out: &[Action]) -> Vec<(&'static str, CallAttrs)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Publish { event, .. } => Some((event.name(), event.call()?.clone())),
            _ => None,
        })
        .collect()
}

fn placed(out: &[Action]) -> Vec<(LegId, Dest, Option<Bytes>)> {
    out.iter()
        .filter_map(|a| match a {
            Action::PlaceLeg { leg, dest, sdp, .. } => Some((*leg, dest.clone(), sdp.clone())),
            _ => None,
        })
        .collect()
}

fn timers(out: &[Action]) -> Vec<(LegId, u64)> {
    out.iter()
        .filter_map(|a| match a {
            Action::StartRingTimer { leg, ms } => Some((*leg, *ms)),
            _ => None,
        })
        .collect()
}

fn error_code(out: &[Action]) -> Option<(String, u64)> {
    out.iter().find_map(|a| match a {
        Action::Publish {
            event: Event::EventError(e),
            ..
        } => Some((e.error_code.clone(), e.request_id)),
        _ => None,
    })
}

fn rp_table(default_route: Option<Dest>) -> Table {
    let mut t = Table::default();
    t.dns.insert(RP, route_point(None, default_route));
    t.agents.insert("1002", "a1002");
    t
}

#[test]
fn a_call_to_a_route_point_waits_unanswered_with_a_route_request() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, out) = s.incoming(1, CARRIER, false, dn(RP));
    assert!(placed(&out).is_empty(), "no leg to a route point: {out:?}");
    assert!(
        out.contains(&Action::Ring { leg: a }),
        "the caller hears ringback"
    );
    assert!(
        !out.iter().any(|x| matches!(x, Action::Answer { .. })),
        "the caller is not answered"
    );
    let t = timers(&out);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].1, 10_000, "the node's route timeout");
    let evs = calls(&out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let (name, rr) = &evs[0];
    assert_eq!(*name, "EventRouteRequest");
    assert_eq!(rr.this_dn, RP);
    assert_eq!(rr.other_dn.as_deref(), Some(CARRIER));
    assert_eq!(rr.conn_id, Some(conn));
    assert_eq!(rr.ani.as_deref(), Some(CARRIER));
    assert_eq!(rr.dnis.as_deref(), Some("+15550001000"));
    assert!(rr.user_data.is_empty());
    assert_eq!(rr.agent_id, None, "a route point has no agent");

    // The strategy attaches data at the route point, then routes the call to 1002.
    let mut data = switchboard_events::UserData::new();
    data.insert("lang".into(), "en".into());
    let (_, out) = s.request(Request::AttachUserData {
        conn,
        dn: RP.into(),
        data,
    });
    assert_eq!(
        seen(&out),
        vec![ev("EventAttachedDataChanged", RP, CARRIER, None)]
    );

    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("1002")),
    });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDiverted", RP, CARRIER, Some("1002")),
            ev("EventRinging", "1002", CARRIER, Some(RP)),
        ]
    );
    let evs = calls(&out);
    assert_eq!(
        evs[0].1.request_id,
        Some(id),
        "RouteCall is confirmed by EventDiverted"
    );
    assert_eq!(evs[1].1.user_data.get("lang"), Some(&"en".into()));
    assert_eq!(
        evs[1].1.agent_id.as_deref(),
        Some("a1002"),
        "AgentID of 1002"
    );
    assert_eq!(evs[1].1.conn_id, Some(conn), "the same call");
    let p = placed(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1, dn("1002"));
    assert_eq!(p[0].2, sdp("caller"), "the caller's offer goes to 1002");
    let b = p[0].0;
    assert!(out.contains(&Action::StartRingTimer { leg: b, ms: 20_000 }));

    // The route point's timer no longer matters.
    let rp_leg = t[0].0;
    assert!(out.contains(&Action::CancelRingTimer { leg: rp_leg }));
    assert!(s.step(Input::RingTimeout { leg: rp_leg }).is_empty());

    assert_eq!(
        s.step(Input::Ringing { leg: b }),
        vec![Action::Ring { leg: a }]
    );
    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1002"),
    });
    assert!(out.contains(&Action::Answer {
        leg: a,
        sdp: sdp("1002")
    }));
    assert_eq!(
        seen(&out),
        vec![ev("EventEstablished", "1002", CARRIER, None)]
    );
    assert_eq!(calls(&out)[0].1.agent_id.as_deref(), Some("a1002"));

    // Routing again is refused: the call left the route point.
    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("1003")),
    });
    assert_eq!(error_code(&out), Some((codes::NO_SUCH_PARTY.into(), id)));

    let out = s.step(Input::HungUp { leg: a });
    assert_eq!(seen(&out), vec![ev("EventReleased", "1002", CARRIER, None)]);
    assert!(s.m.is_empty());
}

#[test]
fn route_call_refusals() {
    let mut s = Sim::new(rp_table(None));
    let (_, conn, _) = s.incoming(1, CARRIER, false, dn(RP));
    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Invalid("no route to 77".into()),
    });
    assert_eq!(
        error_code(&out),
        Some((codes::INVALID_DESTINATION.into(), id))
    );
    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn(RP)),
    });
    assert_eq!(
        error_code(&out),
        Some((codes::INVALID_DESTINATION.into(), id))
    );
    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: "1002".into(),
        to: Resolved::Ok(dn("1003")),
    });
    assert_eq!(error_code(&out), Some((codes::NO_SUCH_PARTY.into(), id)));
    let (id, out) = s.request(Request::RouteCall {
        conn: ConnId(42),
        dn: RP.into(),
        to: Resolved::Ok(dn("1003")),
    });
    assert_eq!(error_code(&out), Some((codes::NO_SUCH_CALL.into(), id)));
    // Hold and DTMF at a route point: nobody to talk to.
    let (id, out) = s.request(Request::Hold {
        conn,
        dn: RP.into(),
    });
    assert_eq!(error_code(&out), Some((codes::BAD_STATE.into(), id)));
    assert_eq!(s.m.len(), 1, "the call still waits");

    // A ringing destination cannot be routed.
    let mut s = Sim::new(rp_table(None));
    let (_, conn, _) = s.incoming(1, CARRIER, false, dn("1002"));
    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: "1002".into(),
        to: Resolved::Ok(dn("1003")),
    });
    assert_eq!(error_code(&out), Some((codes::BAD_STATE.into(), id)));
}

#[test]
fn the_caller_hanging_up_at_the_route_point_is_abandoned() {
    // An internal caller: its own EventDialing and EventReleased, the route point's
    // EventAbandoned.
    let mut s = Sim::new(rp_table(None));
    let (a, conn, out) = s.incoming(1, "1001", true, dn(RP));
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDialing", "1001", RP, None),
            ev("EventRouteRequest", RP, "1001", None),
        ]
    );
    let out = s.step(Input::HungUp { leg: a });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventReleased", "1001", RP, None),
            ev("EventAbandoned", RP, "1001", None),
        ]
    );
    assert!(out.contains(&Action::CallEnded { conn }));
    assert!(
        !out.iter().any(|x| matches!(x, Action::Hangup { .. })),
        "nothing to hang up: {out:?}"
    );
    assert!(s.m.is_empty());
}

#[test]
fn nobody_routes_the_call_it_takes_the_default_route() {
    let mut t = rp_table(Some(dn("1003")));
    t.dns.insert(RP, route_point(Some(3_000), Some(dn("1003"))));
    let mut s = Sim::new(t);
    let (a, _, out) = s.incoming(1, CARRIER, false, dn(RP));
    let (rp_leg, ms) = timers(&out)[0];
    assert_eq!(ms, 3_000, "the route point's own timeout");
    let out = s.step(Input::RingTimeout { leg: rp_leg });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDiverted", RP, CARRIER, Some("1003")),
            ev("EventRinging", "1003", CARRIER, Some(RP)),
        ]
    );
    assert_eq!(calls(&out)[0].1.reason.as_deref(), Some("route_timeout"));
    assert_eq!(calls(&out)[0].1.request_id, None);
    let b = placed(&out)[0].0;
    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1003"),
    });
    assert!(out.contains(&Action::Answer {
        leg: a,
        sdp: sdp("1003")
    }));
}

#[test]
fn nobody_routes_the_call_and_there_is_no_default_route() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, out) = s.incoming(1, CARRIER, false, dn(RP));
    let (rp_leg, _) = timers(&out)[0];
    let out = s.step(Input::RingTimeout { leg: rp_leg });
    assert!(
        out.contains(&Action::Reject { leg: a, code: 480 }),
        "{out:?}"
    );
    assert!(out.contains(&Action::CallEnded { conn }));
    assert_eq!(seen(&out), vec![ev("EventReleased", RP, CARRIER, None)]);
    assert_eq!(calls(&out)[0].1.reason.as_deref(), Some("route_timeout"));
    assert!(s.m.is_empty());
}

#[test]
fn route_to_another_route_point_parks_again_and_transfer_to_a_route_point_parks() {
    let mut t = rp_table(None);
    t.dns.insert("5001", route_point(None, None));
    let mut s = Sim::new(t);
    let (_, conn, _) = s.incoming(1, CARRIER, false, dn(RP));
    let (_, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("5001")),
    });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDiverted", RP, CARRIER, Some("5001")),
            ev("EventRouteRequest", "5001", CARRIER, Some(RP)),
        ]
    );
    assert!(placed(&out).is_empty());

    // 1002 answers a call and transfers it to the route point.
    let (_, conn2, out) = s.incoming(2, CARRIER, false, dn("1002"));
    let b = placed(&out)[0].0;
    s.step(Input::Answered {
        leg: b,
        sdp: sdp("1002"),
    });
    let (_, out) = s.request(Request::SingleStepTransfer {
        conn: conn2,
        dn: "1002".into(),
        to: Resolved::Ok(dn(RP)),
    });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventReleased", "1002", CARRIER, Some(RP)),
            ev("EventRouteRequest", RP, CARRIER, Some("1002")),
        ]
    );
    let (_, out) = s.request(Request::RouteCall {
        conn: conn2,
        dn: RP.into(),
        to: Resolved::Ok(dn("1003")),
    });
    let c = placed(&out)[0].clone();
    assert_eq!(c.1, dn("1003"));
    assert_eq!(
        c.2,
        sdp("caller"),
        "the established caller's media is offered"
    );
}

#[test]
fn make_call_to_a_route_point_parks_once_the_origin_answers() {
    let mut s = Sim::new(rp_table(None));
    let (_, out) = s.request(Request::MakeCall {
        dn: "1001".into(),
        to: Resolved::Ok(dn(RP)),
    });
    let a = placed(&out)[0].0;
    let out = s.step(Input::Answered {
        leg: a,
        sdp: sdp("1001"),
    });
    assert_eq!(seen(&out), vec![ev("EventRouteRequest", RP, "1001", None)]);
    assert!(placed(&out).is_empty());
}

fn forwarding(no_answer: Option<&str>, busy: Option<&str>) -> Table {
    let mut t = Table::default();
    t.dns.insert(
        "1002",
        DnInfo {
            ring_timeout_ms: Some(5_000),
            forward_no_answer: no_answer.map(dn),
            forward_busy: busy.map(dn),
            route_point: None,
            queue: None,
            voicemail: None,
        },
    );
    t.agents.insert("1003", "a1003");
    t
}

#[test]
fn forward_on_no_answer_diverts_and_rings_the_target() {
    let mut s = Sim::new(forwarding(Some("1003"), None));
    let (a, conn, out) = s.incoming(1, CARRIER, false, dn("1002"));
    let (b, _, _) = placed(&out)[0].clone();
    assert!(
        out.contains(&Action::StartRingTimer { leg: b, ms: 5_000 }),
        "the DN's own no-answer timeout: {out:?}"
    );
    s.step(Input::Ringing { leg: b });
    let out = s.step(Input::RingTimeout { leg: b });
    assert!(
        out.contains(&Action::Hangup { leg: b }),
        "the first phone stops ringing"
    );
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDiverted", "1002", CARRIER, Some("1003")),
            ev("EventRinging", "1003", CARRIER, Some("1002")),
        ]
    );
    let evs = calls(&out);
    assert_eq!(evs[0].1.reason.as_deref(), Some("forward_no_answer"));
    assert_eq!(evs[1].1.agent_id.as_deref(), Some("a1003"));
    assert_eq!(evs[0].1.agent_id, None, "1002 has no agent");
    assert!(
        !out.iter().any(|x| matches!(x, Action::Reject { .. })),
        "the caller keeps waiting"
    );
    let (c, dest, offer) = placed(&out)[0].clone();
    assert_eq!((dest, offer), (dn("1003"), sdp("caller")));
    assert!(out.contains(&Action::StartRingTimer { leg: c, ms: 20_000 }));
    // A late 487 for the cancelled leg changes nothing.
    assert!(seen(&s.step(Input::Failed { leg: b, code: 487 })).is_empty());
    let out = s.step(Input::Answered {
        leg: c,
        sdp: sdp("1003"),
    });
    assert!(out.contains(&Action::Answer {
        leg: a,
        sdp: sdp("1003")
    }));
    assert_eq!(
        seen(&out),
        vec![ev("EventEstablished", "1003", CARRIER, None)]
    );
    assert_eq!(s.m.call(conn).map(|c| c.parties.len()), Some(2));
}

#[test]
fn forward_on_busy_diverts_and_other_failures_do_not() {
    let mut s = Sim::new(forwarding(None, Some("1003")));
    let (_, _, out) = s.incoming(1, "1001", true, dn("1002"));
    let (b, _, _) = placed(&out)[0].clone();
    let out = s.step(Input::Failed { leg: b, code: 486 });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDiverted", "1002", "1001", Some("1003")),
            ev("EventRinging", "1003", "1001", Some("1002")),
        ]
    );
    assert_eq!(calls(&out)[0].1.reason.as_deref(), Some("forward_busy"));

    // No forward on no answer configured: the caller gets 480.
    let mut s = Sim::new(forwarding(None, Some("1003")));
    let (a, _, out) = s.incoming(1, CARRIER, false, dn("1002"));
    let (b, _, _) = placed(&out)[0].clone();
    let out = s.step(Input::RingTimeout { leg: b });
    assert!(out.contains(&Action::Reject { leg: a, code: 480 }));

    // A 404 is no busy.
    let mut s = Sim::new(forwarding(None, Some("1003")));
    let (a, _, out) = s.incoming(1, CARRIER, false, dn("1002"));
    let (b, _, _) = placed(&out)[0].clone();
    let out = s.step(Input::Failed { leg: b, code: 404 });
    assert!(out.contains(&Action::Reject { leg: a, code: 404 }));
}

#[test]
fn a_forwarding_loop_ends_after_max_diversions() {
    let mut t = forwarding(Some("1003"), None);
    t.dns.insert(
        "1003",
        DnInfo {
            forward_no_answer: Some(dn("1002")),
            ..DnInfo::default()
        },
    );
    let mut s = Sim::new(t);
    let (a, _, out) = s.incoming(1, CARRIER, false, dn("1002"));
    let mut leg = placed(&out)[0].0;
    let mut diverted = 0;
    loop {
        let out = s.step(Input::RingTimeout { leg });
        if out.contains(&Action::Reject { leg: a, code: 480 }) {
            break;
        }
        diverted += 1;
        assert!(diverted <= MAX_DIVERSIONS as usize, "no end: {out:?}");
        leg = placed(&out)[0].0;
    }
    assert_eq!(diverted, MAX_DIVERSIONS as usize);
    assert!(s.m.is_empty());
}

#[test]
fn agent_id_is_on_every_event_of_a_dn_with_an_agent() {
    let mut t = Table::default();
    t.agents.insert("1001", "alice");
    let mut s = Sim::new(t);
    let (a, _, out) = s.incoming(1, "1001", true, dn("1002"));
    let b = placed(&out)[0].0;
    let agents = |out: &[Action]| -> Vec<(String, Option<String>)> {
        calls(out)
            .into_iter()
            .map(|(_, c)| (c.this_dn, c.agent_id))
            .collect()
    };
    assert_eq!(
        agents(&out),
        vec![("1001".into(), Some("alice".into())), ("1002".into(), None)]
    );
    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1002"),
    });
    assert_eq!(
        agents(&out),
        vec![("1002".into(), None), ("1001".into(), Some("alice".into()))]
    );
    let out = s.step(Input::HungUp { leg: a });
    assert_eq!(
        agents(&out),
        vec![("1001".into(), Some("alice".into())), ("1002".into(), None)]
    );
}

#[test]
fn release_by_the_route_point_rejects_the_waiting_caller() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, out) = s.incoming(1, CARRIER, false, dn(RP));
    let (rp_leg, _) = timers(&out)[0];
    let (id, out) = s.request(Request::Release {
        conn,
        dn: RP.into(),
    });
    assert_eq!(seen(&out), vec![ev("EventReleased", RP, CARRIER, None)]);
    assert_eq!(calls(&out)[0].1.request_id, Some(id));
    assert!(
        out.contains(&Action::Hangup { leg: a }),
        "487 to the caller: {out:?}"
    );
    assert!(
        !out.contains(&Action::Hangup { leg: rp_leg }),
        "the route point has no leg"
    );
    assert!(out.contains(&Action::CallEnded { conn }));
    assert!(s.m.is_empty());
}

// ACD queues.

fn queue(timeout_ms: Option<u64>, default_route: Option<Dest>) -> DnInfo {
    DnInfo {
        queue: Some(QueueInfo {
            timeout_ms,
            default_route,
        }),
        ..DnInfo::default()
    }
}

fn q_table(timeout_ms: Option<u64>, default_route: Option<Dest>) -> Table {
    let mut t = Table::default();
    t.dns.insert(Q, queue(timeout_ms, default_route));
    t.dns.insert(RP, route_point(None, None));
    t.agents.insert("1002", "a1002");
    t
}

#[test]
fn a_call_to_a_queue_is_queued_unanswered_and_distributed_by_route_call() {
    let mut s = Sim::new(q_table(None, None));
    let (a, conn, out) = s.incoming(1, CARRIER, false, dn(Q));
    assert!(placed(&out).is_empty(), "no leg to a queue: {out:?}");
    assert!(
        out.contains(&Action::Ring { leg: a }),
        "the caller hears ringback"
    );
    assert!(
        !out.iter().any(|x| matches!(x, Action::Answer { .. })),
        "the caller is not answered"
    );
    assert!(timers(&out).is_empty(), "no queue timeout configured");
    let evs = calls(&out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let (name, q) = &evs[0];
    assert_eq!(*name, "EventQueued");
    assert_eq!(q.this_dn, Q);
    assert_eq!(q.other_dn.as_deref(), Some(CARRIER));
    assert_eq!(q.conn_id, Some(conn));
    assert_eq!(q.ani.as_deref(), Some(CARRIER));
    assert_eq!(q.dnis.as_deref(), Some("+15550001000"));
    assert_eq!(q.third_party_dn, None);
    assert_eq!(q.agent_id, None, "a queue has no agent");
    let state = |s: &Sim| {
        s.m.calls()
            .find(|c| c.conn == conn)
            .map(|c| c.parties.iter().map(|p| p.state).collect::<Vec<_>>())
    };
    assert_eq!(
        state(&s),
        Some(vec![PartyState::Dialing, PartyState::Queued])
    );

    // User data attached while the call waits in the queue travels with it.
    let mut data = switchboard_events::UserData::new();
    data.insert("segment".into(), "gold".into());
    let (_, out) = s.request(Request::AttachUserData {
        conn,
        dn: Q.into(),
        data,
    });
    assert_eq!(
        seen(&out),
        vec![ev("EventAttachedDataChanged", Q, CARRIER, None)]
    );

    // Hold and DTMF in a queue: nobody to talk to.
    let (id, out) = s.request(Request::Hold { conn, dn: Q.into() });
    assert_eq!(error_code(&out), Some((codes::BAD_STATE.into(), id)));
    // Routing to the queue itself is refused.
    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: Q.into(),
        to: Resolved::Ok(dn(Q)),
    });
    assert_eq!(
        error_code(&out),
        Some((codes::INVALID_DESTINATION.into(), id))
    );

    // The routing role distributes the call to 1002.
    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: Q.into(),
        to: Resolved::Ok(dn("1002")),
    });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDiverted", Q, CARRIER, Some("1002")),
            ev("EventRinging", "1002", CARRIER, Some(Q)),
        ]
    );
    let evs = calls(&out);
    assert_eq!(evs[0].1.request_id, Some(id), "confirmed by EventDiverted");
    assert_eq!(evs[0].1.reason, None);
    assert_eq!(evs[1].1.user_data.get("segment"), Some(&"gold".into()));
    assert_eq!(evs[1].1.agent_id.as_deref(), Some("a1002"));
    assert_eq!(evs[1].1.conn_id, Some(conn), "the same call");
    let p = placed(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1, dn("1002"));
    assert_eq!(p[0].2, sdp("caller"), "the caller's offer goes to 1002");
    let b = p[0].0;

    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1002"),
    });
    assert!(out.contains(&Action::Answer {
        leg: a,
        sdp: sdp("1002")
    }));
    assert_eq!(
        seen(&out),
        vec![ev("EventEstablished", "1002", CARRIER, None)]
    );

    // The call left the queue: routing it from there again is refused.
    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: Q.into(),
        to: Resolved::Ok(dn("1003")),
    });
    assert_eq!(error_code(&out), Some((codes::NO_SUCH_PARTY.into(), id)));

    let out = s.step(Input::HungUp { leg: a });
    assert_eq!(seen(&out), vec![ev("EventReleased", "1002", CARRIER, None)]);
    assert!(s.m.is_empty());
}

#[test]
fn the_caller_hanging_up_in_the_queue_is_abandoned() {
    let mut s = Sim::new(q_table(Some(30_000), None));
    let (a, conn, out) = s.incoming(1, "1001", true, dn(Q));
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDialing", "1001", Q, None),
            ev("EventQueued", Q, "1001", None),
        ]
    );
    let (q_leg, _) = timers(&out)[0];
    let out = s.step(Input::HungUp { leg: a });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventReleased", "1001", Q, None),
            ev("EventAbandoned", Q, "1001", None),
        ]
    );
    assert!(out.contains(&Action::CancelRingTimer { leg: q_leg }));
    assert!(out.contains(&Action::CallEnded { conn }));
    assert!(
        !out.iter().any(|x| matches!(x, Action::Hangup { .. })),
        "nothing to hang up: {out:?}"
    );
    assert!(s.m.is_empty());
    assert!(s.step(Input::RingTimeout { leg: q_leg }).is_empty());
}

#[test]
fn the_queue_timeout_takes_the_default_route_or_releases_the_call() {
    let mut s = Sim::new(q_table(Some(30_000), Some(dn("1003"))));
    let (a, _, out) = s.incoming(1, CARRIER, false, dn(Q));
    assert_eq!(timers(&out).len(), 1);
    let (q_leg, ms) = timers(&out)[0];
    assert_eq!(ms, 30_000, "the queue's own timeout");
    let out = s.step(Input::RingTimeout { leg: q_leg });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDiverted", Q, CARRIER, Some("1003")),
            ev("EventRinging", "1003", CARRIER, Some(Q)),
        ]
    );
    assert_eq!(calls(&out)[0].1.reason.as_deref(), Some("queue_timeout"));
    let b = placed(&out)[0].0;
    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1003"),
    });
    assert!(out.contains(&Action::Answer {
        leg: a,
        sdp: sdp("1003")
    }));

    let mut s = Sim::new(q_table(Some(30_000), None));
    let (a, conn, out) = s.incoming(1, CARRIER, false, dn(Q));
    let (q_leg, _) = timers(&out)[0];
    let out = s.step(Input::RingTimeout { leg: q_leg });
    assert!(
        out.contains(&Action::Reject { leg: a, code: 480 }),
        "{out:?}"
    );
    assert!(out.contains(&Action::CallEnded { conn }));
    assert_eq!(seen(&out), vec![ev("EventReleased", Q, CARRIER, None)]);
    assert_eq!(calls(&out)[0].1.reason.as_deref(), Some("queue_timeout"));
    assert!(s.m.is_empty());
}

#[test]
fn a_call_routed_from_a_route_point_to_a_queue_parks_in_the_queue() {
    let mut s = Sim::new(q_table(None, None));
    let (_, conn, out) = s.incoming(1, CARRIER, false, dn(RP));
    assert_eq!(seen(&out), vec![ev("EventRouteRequest", RP, CARRIER, None)]);
    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn(Q)),
    });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDiverted", RP, CARRIER, Some(Q)),
            ev("EventQueued", Q, CARRIER, Some(RP)),
        ]
    );
    assert_eq!(calls(&out)[0].1.request_id, Some(id));
    assert!(placed(&out).is_empty(), "no leg to a queue");
    assert!(timers(&out).is_empty(), "the queue has no timeout");

    // The route point let go of the call; the queue distributes it.
    let (id, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("1002")),
    });
    assert_eq!(error_code(&out), Some((codes::NO_SUCH_PARTY.into(), id)));
    let (_, out) = s.request(Request::RouteCall {
        conn,
        dn: Q.into(),
        to: Resolved::Ok(dn("1002")),
    });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDiverted", Q, CARRIER, Some("1002")),
            ev("EventRinging", "1002", CARRIER, Some(Q)),
        ]
    );

    // A queue routing to a route point parks the call there again.
    let (_, conn2, _) = s.incoming(2, CARRIER, false, dn(Q));
    let (_, out) = s.request(Request::RouteCall {
        conn: conn2,
        dn: Q.into(),
        to: Resolved::Ok(dn(RP)),
    });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventDiverted", Q, CARRIER, Some(RP)),
            ev("EventRouteRequest", RP, CARRIER, Some(Q)),
        ]
    );
}

#[test]
fn release_by_the_queue_rejects_the_waiting_caller() {
    let mut s = Sim::new(q_table(None, None));
    let (a, conn, _) = s.incoming(1, CARRIER, false, dn(Q));
    let (id, out) = s.request(Request::Release { conn, dn: Q.into() });
    assert_eq!(seen(&out), vec![ev("EventReleased", Q, CARRIER, None)]);
    assert_eq!(calls(&out)[0].1.request_id, Some(id));
    assert!(
        out.contains(&Action::Hangup { leg: a }),
        "487 to the caller: {out:?}"
    );
    assert_eq!(
        out.iter()
            .filter(|x| matches!(x, Action::Hangup { .. }))
            .count(),
        1,
        "the queue has no leg: {out:?}"
    );
    assert!(s.m.is_empty());
}

/// 1002 with mailbox 8100 (and `busy` as its busy forward, if any).
fn with_mailbox(busy: Option<&str>) -> Table {
    let mut t = forwarding(None, busy);
    if let Some(d) = t.dns.get_mut("1002") {
        d.voicemail = Some(dn("8100"));
    }
    t
}

#[test]
fn a_dn_with_a_mailbox_sends_unanswered_busy_and_unreachable_calls_there() {
    for (code, busy_forward, to) in [
        (None, None, "8100"),
        (Some(480), None, "8100"),
        (Some(404), None, "8100"),
        (Some(486), None, "8100"),
        (Some(486), Some("1003"), "1003"),
    ] {
        let mut s = Sim::new(with_mailbox(busy_forward));
        let (_, _, out) = s.incoming(1, CARRIER, false, dn("1002"));
        let (b, _, _) = placed(&out)[0].clone();
        let out = match code {
            Some(code) => s.step(Input::Failed { leg: b, code }),
            None => s.step(Input::RingTimeout { leg: b }),
        };
        assert_eq!(
            seen(&out),
            vec![
                ev("EventDiverted", "1002", CARRIER, Some(to)),
                ev("EventRinging", to, CARRIER, Some("1002")),
            ],
            "{code:?}"
        );
        let reason = calls(&out)[0].1.reason.clone();
        let expected = if to == "8100" {
            "voicemail"
        } else {
            "forward_busy"
        };
        assert_eq!(reason.as_deref(), Some(expected), "{code:?}");
        assert_eq!(placed(&out)[0].1, dn(to));
    }
}

#[test]
fn a_refusal_that_is_not_unavailability_does_not_reach_the_mailbox() {
    let mut s = Sim::new(with_mailbox(None));
    let (a, _, out) = s.incoming(1, CARRIER, false, dn("1002"));
    let (b, _, _) = placed(&out)[0].clone();
    let out = s.step(Input::Failed { leg: b, code: 403 });
    assert!(
        out.contains(&Action::Reject { leg: a, code: 403 }),
        "{out:?}"
    );
    assert!(placed(&out).is_empty());
}

// ---- treatments ----

fn service(user: &str) -> MediaService {
    MediaService {
        user: user.into(),
        params: ";voicexml=http://as/menu.vxml".into(),
    }
}

/// The treatment leg placed by `out`, with the SDP offered.
fn media_leg(out: &[Action]) -> (LegId, Bytes) {
    out.iter()
        .find_map(|a| match a {
            Action::PlaceMediaLeg {
                leg, sdp, to, from, ..
            } => {
                assert_eq!((to.as_str(), from.as_str()), (RP, CARRIER));
                Some((*leg, sdp.clone()))
            }
            _ => None,
        })
        .expect("a leg to the media server")
}

fn results(pairs: &[(&str, &str)]) -> switchboard_events::UserData {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).into()))
        .collect()
}

impl Sim {
    fn apply(&mut self, conn: ConnId, user: &str) -> (u64, Vec<Action>) {
        self.request(Request::ApplyTreatment {
            conn,
            dn: RP.into(),
            service: service(user),
        })
    }
}

/// A call parked at the route point: (caller leg, conn, route point leg).
fn parked(s: &mut Sim) -> (LegId, ConnId, LegId) {
    let (a, conn, out) = s.incoming(1, CARRIER, false, dn(RP));
    (a, conn, timers(&out)[0].0)
}

#[test]
fn a_treatment_answers_the_caller_and_its_exit_namelist_ends_it() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, rp) = parked(&mut s);
    let (id, out) = s.apply(conn, "dialog");
    let (m, offer) = media_leg(&out);
    assert_eq!(Some(offer), sdp("caller"), "the caller's offer goes to mcp");
    assert!(
        out.contains(&Action::CancelRingTimer { leg: rp }),
        "no routing timeout while the strategy treats the call: {out:?}"
    );
    assert!(calls(&out).is_empty(), "nothing happened yet: {out:?}");
    assert_eq!(
        s.m.call(conn)
            .and_then(|c| c.treatment.clone())
            .map(|t| t.leg),
        Some(m)
    );

    let out = s.step(Input::Answered {
        leg: m,
        sdp: sdp("mcp"),
    });
    assert!(out.contains(&Action::Answer {
        leg: a,
        sdp: sdp("mcp")
    }));
    let evs = calls(&out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].0, "EventTreatmentApplied");
    assert_eq!(
        (evs[0].1.this_dn.as_str(), evs[0].1.request_id),
        (RP, Some(id))
    );
    assert!(s.step(Input::RingTimeout { leg: rp }).is_empty());

    let out = s.step(Input::TreatmentExit {
        leg: m,
        results: results(&[("choice", "2")]),
    });
    let evs = calls(&out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].0, "EventTreatmentEnd");
    let end = &evs[0].1;
    assert_eq!(end.reason.as_deref(), Some("completed"));
    assert_eq!(end.request_id, Some(id));
    assert_eq!(end.treatment_results, Some(results(&[("choice", "2")])));
    assert_eq!(
        timers(&out),
        vec![(rp, 10_000)],
        "the routing timer restarts"
    );
    assert!(
        !out.iter().any(|x| matches!(x, Action::Hangup { .. })),
        "the caller stays: {out:?}"
    );
    assert!(s.m.call(conn).is_some_and(|c| c.treatment.is_none()));
    // The media server's leg is gone: a late BYE retransmission is nothing.
    assert!(s.step(Input::HungUp { leg: m }).is_empty());
}

#[test]
fn a_second_treatment_and_the_agent_reach_the_answered_caller_by_reinvite() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, _) = parked(&mut s);
    let (_, out) = s.apply(conn, "dialog");
    let (m1, _) = media_leg(&out);
    s.step(Input::Answered {
        leg: m1,
        sdp: sdp("mcp1"),
    });
    s.step(Input::TreatmentExit {
        leg: m1,
        results: results(&[]),
    });
    // Music: the caller is answered already, so the media server's answer is re-offered.
    let (music, out) = s.apply(conn, "annc");
    let (m2, offer) = media_leg(&out);
    assert_eq!(Some(offer), sdp("caller"));
    let out = s.step(Input::Answered {
        leg: m2,
        sdp: sdp("mcp2"),
    });
    assert!(out.contains(&Action::Reoffer {
        leg: a,
        sdp: sdp("mcp2"),
        direction: Direction::SendRecv
    }));
    assert!(!out.iter().any(|x| matches!(x, Action::Answer { .. })));
    assert_eq!(calls(&out)[0].1.request_id, Some(music));
    s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: sdp("caller2"),
    });

    // RouteCall while the music plays: it stops (routed), the agent rings with the caller's
    // media, and its answer goes to the caller in a re-INVITE.
    let (route, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("1002")),
    });
    assert!(out.contains(&Action::Hangup { leg: m2 }));
    assert_eq!(
        seen(&out),
        vec![
            ev("EventTreatmentEnd", RP, CARRIER, None),
            ev("EventDiverted", RP, CARRIER, Some("1002")),
            ev("EventRinging", "1002", CARRIER, Some(RP)),
        ]
    );
    let end = &calls(&out)[0].1;
    assert_eq!(
        (end.reason.as_deref(), end.request_id),
        (Some("routed"), Some(route))
    );
    let p = placed(&out);
    assert_eq!(p[0].2, sdp("caller2"), "the caller's current media");
    let b = p[0].0;
    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1002"),
    });
    assert!(out.contains(&Action::Reoffer {
        leg: a,
        sdp: sdp("1002"),
        direction: Direction::SendRecv
    }));
    assert_eq!(
        seen(&out),
        vec![ev("EventEstablished", "1002", CARRIER, None)]
    );
    let out = s.step(Input::HungUp { leg: b });
    assert!(out.contains(&Action::Hangup { leg: a }));
    assert!(s.m.is_empty());
}

#[test]
fn cancel_treatment_stops_it_and_the_call_waits_on() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, rp) = parked(&mut s);
    let (_, out) = s.apply(conn, "annc");
    let (m, _) = media_leg(&out);
    s.step(Input::Answered {
        leg: m,
        sdp: sdp("mcp"),
    });
    let (id, out) = s.request(Request::CancelTreatment {
        conn,
        dn: RP.into(),
    });
    assert!(out.contains(&Action::Hangup { leg: m }));
    assert!(!out.contains(&Action::Hangup { leg: a }));
    let evs = calls(&out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].0, "EventTreatmentEnd");
    assert_eq!(
        (evs[0].1.reason.as_deref(), evs[0].1.request_id),
        (Some("cancelled"), Some(id))
    );
    assert_eq!(timers(&out), vec![(rp, 10_000)]);
    // Nothing left to cancel.
    let (id, out) = s.request(Request::CancelTreatment {
        conn,
        dn: RP.into(),
    });
    assert_eq!(error_code(&out), Some((codes::BAD_STATE.into(), id)));
    // Nobody routes the call: the answered caller is hung up when the route point times out.
    let out = s.step(Input::RingTimeout { leg: rp });
    assert!(out.contains(&Action::Hangup { leg: a }), "{out:?}");
    assert!(s.m.is_empty());
}

#[test]
fn a_new_treatment_replaces_the_playing_one() {
    let mut s = Sim::new(rp_table(None));
    let (_, conn, _) = parked(&mut s);
    let (_, out) = s.apply(conn, "annc");
    let (m1, _) = media_leg(&out);
    s.step(Input::Answered {
        leg: m1,
        sdp: sdp("mcp"),
    });
    let (id, out) = s.apply(conn, "dialog");
    assert!(out.contains(&Action::Hangup { leg: m1 }));
    let (m2, _) = media_leg(&out);
    assert_ne!(m1, m2);
    let evs = calls(&out);
    assert_eq!(evs[0].0, "EventTreatmentEnd");
    assert_eq!(
        (evs[0].1.reason.as_deref(), evs[0].1.request_id),
        (Some("cancelled"), Some(id))
    );
}

#[test]
fn the_caller_hanging_up_during_a_treatment_ends_it_and_is_abandoned() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, _) = parked(&mut s);
    let (_, out) = s.apply(conn, "annc");
    let (m, _) = media_leg(&out);
    s.step(Input::Answered {
        leg: m,
        sdp: sdp("mcp"),
    });
    let out = s.step(Input::HungUp { leg: a });
    assert!(out.contains(&Action::Hangup { leg: m }), "{out:?}");
    assert_eq!(
        seen(&out),
        vec![
            ev("EventTreatmentEnd", RP, CARRIER, None),
            ev("EventAbandoned", RP, CARRIER, None),
        ]
    );
    assert_eq!(calls(&out)[0].1.reason.as_deref(), Some("caller_hangup"));
    assert!(s.m.is_empty());
    assert!(out.contains(&Action::CallEnded { conn }));
}

#[test]
fn a_media_server_failure_is_an_error_and_the_call_keeps_waiting() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, rp) = parked(&mut s);
    let (id, out) = s.apply(conn, "dialog");
    let (m, _) = media_leg(&out);
    let out = s.step(Input::Failed { leg: m, code: 503 });
    assert_eq!(
        error_code(&out),
        Some((codes::MEDIA_SERVER_FAILED.into(), id))
    );
    assert!(
        !out.iter().any(|x| matches!(x, Action::Reject { .. })),
        "the caller waits on: {out:?}"
    );
    assert_eq!(timers(&out), vec![(rp, 10_000)]);
    // Routed as if nothing happened: the unanswered caller is answered by the agent.
    let (_, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("1002")),
    });
    assert_eq!(seen(&out)[0].0, "EventDiverted", "no treatment to end");
    let b = placed(&out)[0].0;
    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1002"),
    });
    assert!(out.contains(&Action::Answer {
        leg: a,
        sdp: sdp("1002")
    }));
}

#[test]
fn routing_before_the_media_server_answers_cancels_its_leg() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, _) = parked(&mut s);
    let (_, out) = s.apply(conn, "dialog");
    let (m, _) = media_leg(&out);
    let (_, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("1002")),
    });
    assert!(out.contains(&Action::Hangup { leg: m }));
    assert_eq!(seen(&out)[0].0, "EventTreatmentEnd");
    // A late answer of the media server is not the call's business any more.
    let late = s.step(Input::Answered {
        leg: m,
        sdp: sdp("mcp"),
    });
    assert_eq!(late, vec![Action::Hangup { leg: m }]);
    let b = placed(&out)[0].0;
    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1002"),
    });
    assert!(out.contains(&Action::Answer {
        leg: a,
        sdp: sdp("1002")
    }));
}

#[test]
fn treatment_refusals_and_requests_restart_the_routing_timer() {
    let mut s = Sim::new(rp_table(None));
    let (_, conn, rp) = parked(&mut s);
    let (id, out) = s.request(Request::CancelTreatment {
        conn,
        dn: RP.into(),
    });
    assert_eq!(error_code(&out), Some((codes::BAD_STATE.into(), id)));
    assert_eq!(timers(&out), vec![(rp, 10_000)], "any request restarts it");
    let (id, out) = s.request(Request::ApplyTreatment {
        conn,
        dn: CARRIER.into(),
        service: service("dialog"),
    });
    assert_eq!(error_code(&out), Some((codes::BAD_STATE.into(), id)));
    // A call that is not parked gets no treatment.
    let (_, conn2, out) = s.incoming(2, CARRIER, false, dn("1002"));
    let b = placed(&out)[0].0;
    s.step(Input::Answered {
        leg: b,
        sdp: sdp("1002"),
    });
    let (id, out) = s.request(Request::ApplyTreatment {
        conn: conn2,
        dn: "1002".into(),
        service: service("dialog"),
    });
    assert_eq!(error_code(&out), Some((codes::BAD_STATE.into(), id)));
    assert!(timers(&out).is_empty());
}

#[test]
fn a_bye_without_results_completes_the_treatment_with_none() {
    let mut s = Sim::new(rp_table(None));
    let (_, conn, _) = parked(&mut s);
    let (_, out) = s.apply(conn, "annc");
    let (m, _) = media_leg(&out);
    s.step(Input::Answered {
        leg: m,
        sdp: sdp("mcp"),
    });
    let out = s.step(Input::HungUp { leg: m });
    let evs = calls(&out);
    assert_eq!(evs[0].0, "EventTreatmentEnd");
    assert_eq!(evs[0].1.reason.as_deref(), Some("completed"));
    assert_eq!(evs[0].1.treatment_results, Some(results(&[])));
}

#[test]
fn a_call_in_a_queue_gets_treatments_too() {
    let mut s = Sim::new(q_table(Some(30_000), None));
    let (a, conn, out) = s.incoming(1, CARRIER, false, dn(Q));
    let q = timers(&out)[0].0;
    let (id, out) = s.request(Request::ApplyTreatment {
        conn,
        dn: Q.into(),
        service: service("annc"),
    });
    assert!(out.contains(&Action::CancelRingTimer { leg: q }));
    let m = out
        .iter()
        .find_map(|x| match x {
            Action::PlaceMediaLeg { leg, to, .. } => {
                assert_eq!(to, Q);
                Some(*leg)
            }
            _ => None,
        })
        .expect("a media leg");
    let out = s.step(Input::Answered {
        leg: m,
        sdp: sdp("mcp"),
    });
    assert!(out.contains(&Action::Answer {
        leg: a,
        sdp: sdp("mcp")
    }));
    assert_eq!(
        seen(&out),
        vec![ev("EventTreatmentApplied", Q, CARRIER, None)]
    );
    assert_eq!(calls(&out)[0].1.request_id, Some(id));
    // Cancelled: the queue's own timeout runs again.
    let (_, out) = s.request(Request::CancelTreatment { conn, dn: Q.into() });
    assert_eq!(timers(&out), vec![(q, 30_000)]);
    assert_eq!(seen(&out)[0].0, "EventTreatmentEnd");
}

#[test]
fn a_media_server_answer_without_sdp_fails_the_treatment() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, _) = parked(&mut s);
    let (id, out) = s.apply(conn, "dialog");
    let (m, _) = media_leg(&out);
    let out = s.step(Input::Answered { leg: m, sdp: None });
    assert!(out.contains(&Action::Hangup { leg: m }));
    assert_eq!(
        error_code(&out),
        Some((codes::MEDIA_SERVER_FAILED.into(), id))
    );
    assert!(
        !out.iter()
            .any(|x| matches!(x, Action::Answer { leg, .. } if *leg == a)),
        "the caller is not answered with nothing: {out:?}"
    );
    // The media server's own re-INVITE is answered on the spot, not relayed.
    let (_, out) = s.apply(conn, "annc");
    let (m, _) = media_leg(&out);
    s.step(Input::Answered {
        leg: m,
        sdp: sdp("mcp"),
    });
    let out = s.step(Input::DeviceReoffer {
        leg: m,
        sdp: Bytes::from_static(b"v=0\r\n"),
    });
    assert_eq!(
        out,
        vec![Action::AnswerReoffer {
            leg: m,
            code: 200,
            sdp: None
        }]
    );
}

#[test]
fn a_routed_destination_that_fails_sends_the_call_back_to_the_route_point() {
    let mut s = Sim::new(rp_table(Some(dn("1003"))));
    let (a, conn, _) = s.incoming(1, CARRIER, false, dn(RP));
    let (_, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("1002")),
    });
    let b = placed(&out)[0].0;
    s.step(Input::Ringing { leg: b });

    // 1002 is busy: its EventReleased, and the call waits at the route point again (a new
    // EventRouteRequest naming 1002, the routing timer, ringback); the caller is not refused.
    let out = s.step(Input::Failed { leg: b, code: 486 });
    assert_eq!(
        seen(&out),
        vec![
            ev("EventReleased", "1002", CARRIER, None),
            ev("EventRouteRequest", RP, CARRIER, Some("1002")),
        ]
    );
    assert_eq!(calls(&out)[0].1.reason.as_deref(), Some("sip 486"));
    assert_eq!(calls(&out)[1].1.conn_id, Some(conn), "the same call");
    assert!(
        !out.iter().any(|x| matches!(x, Action::Reject { .. })),
        "the caller keeps waiting: {out:?}"
    );
    assert!(out.contains(&Action::Ring { leg: a }));
    let t = timers(&out);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].1, 10_000, "the route point's timer runs again");
    assert_eq!(
        s.m.call(conn).map(|c| c.parties[1].state),
        Some(PartyState::AtRoutePoint)
    );

    // The strategy routes it again; this time the phone rings unanswered: back again.
    let (_, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("1002")),
    });
    let b = placed(&out)[0].0;
    let out = s.step(Input::RingTimeout { leg: b });
    assert!(out.contains(&Action::Hangup { leg: b }));
    assert_eq!(
        seen(&out),
        vec![
            ev("EventReleased", "1002", CARRIER, None),
            ev("EventRouteRequest", RP, CARRIER, Some("1002")),
        ]
    );

    // Nobody routes it in time: the default route (no RouteCall) failing ends the call as
    // before, with the failure's code for the caller.
    let rp_leg = timers(&out)[0].0;
    let out = s.step(Input::RingTimeout { leg: rp_leg });
    let c = placed(&out)[0].0;
    let out = s.step(Input::Failed { leg: c, code: 486 });
    assert!(out.contains(&Action::Reject { leg: a, code: 486 }));
    assert!(s.m.is_empty());
}

#[test]
fn a_strategy_sets_how_long_its_call_waits_at_the_route_point() {
    let mut s = Sim::new(rp_table(None));
    let (a, conn, rp) = parked(&mut s);
    let set = |s: &mut Sim, ms| {
        s.request(Request::SetRouteTimeout {
            conn,
            dn: RP.into(),
            ms,
        })
    };
    let (_, out) = set(&mut s, Some(60_000));
    assert!(
        out.contains(&Action::CancelRingTimer { leg: rp }),
        "{out:?}"
    );
    assert_eq!(timers(&out), vec![(rp, 60_000)]);
    assert!(calls(&out).is_empty(), "no event: {out:?}");

    // The strategy's timeout holds after a treatment and when a routed call comes back.
    let (_, out) = s.apply(conn, "annc");
    let (m, _) = media_leg(&out);
    s.step(Input::Answered {
        leg: m,
        sdp: sdp("mcp"),
    });
    let (_, out) = s.request(Request::CancelTreatment {
        conn,
        dn: RP.into(),
    });
    assert_eq!(timers(&out), vec![(rp, 60_000)]);
    let (_, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("1002")),
    });
    let b = placed(&out)[0].0;
    let out = s.step(Input::Failed { leg: b, code: 486 });
    let t = timers(&out);
    assert_eq!(t.len(), 1, "{out:?}");
    assert_eq!(t[0].1, 60_000);
    let rp = t[0].0;

    // The DN's own timeout back; then nobody routes the call.
    let (_, out) = set(&mut s, None);
    assert_eq!(timers(&out), vec![(rp, 10_000)]);
    let out = s.step(Input::RingTimeout { leg: rp });
    assert!(out.contains(&Action::Hangup { leg: a }), "{out:?}");
    assert!(s.m.is_empty());
}

#[test]
fn set_route_timeout_is_refused_for_a_call_that_is_not_parked() {
    let mut s = Sim::new(rp_table(None));
    let (_, conn, _) = parked(&mut s);
    let (_, out) = s.request(Request::RouteCall {
        conn,
        dn: RP.into(),
        to: Resolved::Ok(dn("1002")),
    });
    let b = placed(&out)[0].0;
    s.step(Input::Ringing { leg: b });
    let (id, out) = s.request(Request::SetRouteTimeout {
        conn,
        dn: "1002".into(),
        ms: Some(60_000),
    });
    assert_eq!(error_code(&out), Some((codes::BAD_STATE.into(), id)));
    assert!(timers(&out).is_empty());
}
