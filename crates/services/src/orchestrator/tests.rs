//! Whole strategies run deterministically through the core, playing the SIP Server and
//! routing by hand.

use super::core::{resolve, Action, Orchestrator, SessionKey, Strategy};
use super::demo::DEMO_STRATEGY;
use serde_json::json;
use switchboard_bus::EntryId;
use switchboard_events::requests::{CallOp, CallRequest, RoutingReply, RoutingRequest, Treatment};
use switchboard_events::{CallAttrs, ConnId, ErrorAttrs, Event, UserData};
use switchboard_scxml::Document;

const T: &str = "demo";
const CONN: ConnId = ConnId(0x0001_0000_0000_0007);
const BASE: &str = "http://127.0.0.1:8080/orchestrator/builtin/demo-strategy";

fn key() -> SessionKey {
    SessionKey {
        tenant: T.into(),
        conn: CONN,
    }
}

fn strategy(o: &Orchestrator, src: &str) -> Strategy {
    Strategy {
        url: "builtin:demo-strategy".into(),
        base: BASE.into(),
        doc: Document::load(src, None, o.environment()).expect("strategy loads"),
    }
}

fn attrs(dn: &str) -> CallAttrs {
    CallAttrs {
        tenant: T.into(),
        conn_id: Some(CONN),
        this_dn: dn.into(),
        ani: Some("+15551234567".into()),
        dnis: Some("+15550001000".into()),
        ts_ms: 1,
        ..Default::default()
    }
}

/// A harness: the core, the clock, the stream positions.
struct H {
    o: Orchestrator,
    now: u64,
    seq: u64,
}

impl H {
    fn start(src: &str) -> (H, Vec<Action>) {
        let mut o = Orchestrator::new();
        let s = strategy(&o, src);
        let now = 1_000_000;
        assert!(o
            .start(&attrs("5000"), &s, Some(EntryId::new(1, 0)), None, now)
            .unwrap());
        let mut h = H { o, now, seq: 1 };
        let mut a = h.drain();
        // First the strategy takes over the route point's timeout (its own is the limit).
        let first = a.remove(0);
        assert!(
            matches!(&first, Action::Call { request, .. } if request.op == CallOp::SetRouteTimeout {
                timeout_ms: Some(super::core::DEFAULT_MAX_SESSION_MS)
            }),
            "{first:?}"
        );
        (h, a)
    }

    fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.o.poll_action()).collect()
    }

    fn at(&mut self) -> Option<EntryId> {
        self.seq += 1;
        Some(EntryId::new(self.seq, 0))
    }

    fn event(&mut self, e: Event) -> Vec<Action> {
        self.now += 100;
        let at = self.at();
        self.o.handle_event(at, &e, self.now);
        self.drain()
    }

    fn reply(&mut self, r: RoutingReply) -> Vec<Action> {
        self.now += 100;
        let at = self.at();
        self.o.handle_reply(T, at, &r, self.now);
        self.drain()
    }
}

fn calls(actions: &[Action]) -> Vec<CallRequest> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Call { stream, request } => {
                assert_eq!(stream, "sip-node:0001:requests");
                Some(request.clone())
            }
            _ => None,
        })
        .collect()
}

fn routing(actions: &[Action]) -> Vec<RoutingRequest> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Routing { stream, request } => {
                assert_eq!(stream, "routing:demo:requests");
                Some(request.clone())
            }
            _ => None,
        })
        .collect()
}

fn ended(actions: &[Action]) -> Option<String> {
    actions.iter().find_map(|a| match a {
        Action::Ended { key: k, reason } => {
            assert_eq!(k, &key());
            Some(reason.clone())
        }
        _ => None,
    })
}

fn persisted(actions: &[Action]) -> Option<Vec<u8>> {
    actions.iter().find_map(|a| match a {
        Action::Persist { snapshot, .. } => Some(snapshot.clone()),
        _ => None,
    })
}

fn treatment_end(request_id: u64, results: UserData) -> Event {
    let mut a = attrs("5000");
    a.request_id = Some(request_id);
    a.reason = Some("completed".into());
    a.treatment_results = Some(results);
    Event::EventTreatmentEnd(a)
}

fn diverted(from: &str, to: &str, request_id: Option<u64>) -> Event {
    let mut a = attrs(from);
    a.third_party_dn = Some(to.into());
    a.request_id = request_id;
    Event::EventDiverted(a)
}

fn target(request_id: &str, dn: &str) -> RoutingReply {
    RoutingReply::Target {
        request_id: request_id.into(),
        conn_id: CONN,
        agent_id: format!("a{dn}"),
        dn: dn.into(),
    }
}

fn submit_id(r: &RoutingRequest) -> (String, u64) {
    match r {
        RoutingRequest::Submit {
            request_id,
            enqueued_ms,
            ..
        } => (request_id.clone(), *enqueued_ms),
        other => panic!("not a submit: {other:?}"),
    }
}

/// The demo up to the queue: menu (support chosen), then attach, music and the submission.
fn demo_to_queue() -> (H, String, u64) {
    let (mut h, a) = H::start(DEMO_STRATEGY);
    let c = calls(&a);
    assert_eq!(c.len(), 1, "{a:?}");
    assert_eq!(c[0].dn, "5000");
    assert_eq!(c[0].conn_id, Some(CONN));
    assert_eq!(
        c[0].op,
        CallOp::ApplyTreatment {
            treatment: Treatment::PlayApplication {
                url: "http://127.0.0.1:8080/orchestrator/builtin/menu.vxml".into(),
                params: UserData::new(),
            }
        }
    );
    assert!(
        persisted(&a).is_some(),
        "a snapshot after the first macrostep"
    );
    let menu_id = c[0].request_id;
    let mut results = UserData::new();
    results.insert("choice".into(), json!("support"));
    let a = h.event(treatment_end(menu_id, results));
    let c = calls(&a);
    assert_eq!(c.len(), 2, "{a:?}");
    let mut data = UserData::new();
    data.insert("service".into(), json!("support"));
    assert_eq!(c[0].op, CallOp::UpdateUserData { data });
    assert!(matches!(
        &c[1].op,
        CallOp::ApplyTreatment {
            treatment: Treatment::Music { url }
        } if url.starts_with("tts:")
    ));
    let r = routing(&a);
    assert_eq!(r.len(), 1);
    match &r[0] {
        RoutingRequest::Submit {
            queue,
            skills,
            timeout_s,
            reply_to,
            conn_id,
            ..
        } => {
            assert_eq!(
                (queue.as_str(), skills.as_str(), *timeout_s),
                ("support", "support >= 5", Some(60))
            );
            assert_eq!(reply_to, "orchestrator:demo:replies");
            assert_eq!(*conn_id, CONN);
        }
        other => panic!("{other:?}"),
    }
    let (id, enqueued) = submit_id(&r[0]);
    (h, id, enqueued)
}

#[test]
fn ivr_then_queue_then_route_to_the_agent() {
    let (mut h, submit, _) = demo_to_queue();
    let a = h.reply(target(&submit, "1007"));
    let c = calls(&a);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].op, CallOp::RouteCall { to: "1007".into() });
    let route_id = c[0].request_id;
    // The call leaves the route point, rings, is answered: the strategy is done.
    assert!(ended(&h.event(diverted("5000", "1007", Some(route_id)))).is_none());
    assert!(h.event(Event::EventRinging(attrs("1007"))).len() == 1);
    let mut est = attrs("1007");
    est.agent_id = Some("a1007".into());
    let a = h.event(Event::EventEstablished(est));
    assert_eq!(ended(&a).as_deref(), Some("final state done"));
    assert!(routing(&a).is_empty(), "no cancel once routed: {a:?}");
    assert!(h.o.is_empty());
}

#[test]
fn queue_timeout_goes_to_voicemail() {
    let (mut h, submit, _) = demo_to_queue();
    let a = h.reply(RoutingReply::Timeout {
        request_id: submit,
        conn_id: CONN,
    });
    let c = calls(&a);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].op, CallOp::RouteCall { to: "8200".into() });
    let a = h.event(diverted("5000", "8200", Some(c[0].request_id)));
    assert_eq!(ended(&a).as_deref(), Some("final state done"));
}

#[test]
fn lost_race_queues_again_keeping_the_place() {
    let (mut h, submit, enqueued) = demo_to_queue();
    let a = h.reply(target(&submit, "1006"));
    let route_id = calls(&a)[0].request_id;
    h.event(diverted("5000", "1006", Some(route_id)));
    // The agent does not answer: its leg ends; the strategy queues the call again.
    let mut gone = attrs("1006");
    gone.reason = Some("no_answer".into());
    let a = h.event(Event::EventReleased(gone));
    assert!(ended(&a).is_none(), "{a:?}");
    let r = routing(&a);
    assert_eq!(r.len(), 1, "{a:?}");
    let (again, enqueued_again) = submit_id(&r[0]);
    assert_ne!(again, submit);
    assert_eq!(enqueued_again, enqueued, "the call keeps its place");
    // A late reply to the first submission means nothing.
    assert!(calls(&h.reply(target(&submit, "1009"))).is_empty());
    let a = h.reply(target(&again, "1008"));
    assert_eq!(calls(&a)[0].op, CallOp::RouteCall { to: "1008".into() });
}

#[test]
fn route_error_queues_again_then_voicemail_after_three() {
    let (mut h, mut submit, _) = demo_to_queue();
    for round in 0..3 {
        let a = h.reply(target(&submit, "1006"));
        let id = calls(&a)[0].request_id;
        let a = h.event(Event::EventError(ErrorAttrs {
            tenant: T.into(),
            conn_id: Some(CONN),
            request_id: id,
            error_code: "invalid_destination".into(),
            reason: "no".into(),
            ..Default::default()
        }));
        if round < 2 {
            submit = submit_id(&routing(&a)[0]).0;
        } else {
            assert_eq!(calls(&a)[0].op, CallOp::RouteCall { to: "8200".into() });
        }
    }
}

#[test]
fn abandoned_while_queued_cancels_the_submission() {
    let (mut h, _, _) = demo_to_queue();
    let a = h.event(Event::EventAbandoned(attrs("5000")));
    assert_eq!(
        routing(&a),
        vec![RoutingRequest::Cancel {
            tenant: T.into(),
            conn_id: CONN
        }]
    );
    assert!(ended(&a).is_some());
    assert!(h.o.is_empty());
}

#[test]
fn a_snapshot_resumes_on_another_node() {
    let (mut h, submit, _) = demo_to_queue();
    // The last snapshot: the one after the submission.
    let mut o2 = Orchestrator::new();
    let noise = h.event(Event::EventRinging(attrs("1234")));
    let bytes = persisted(&noise).expect("each delivered event persists");
    let k = o2.restore(&bytes, h.now + 5000).unwrap();
    assert_eq!(k, key());
    let restored: Vec<Action> = std::iter::from_fn(|| o2.poll_action()).collect();
    assert!(calls(&restored).is_empty() && routing(&restored).is_empty());
    // Replayed entries the snapshot already saw are ignored.
    let seen = EntryId::new(h.seq, 0);
    o2.handle_event(Some(seen), &treatment_end(1, UserData::new()), h.now);
    assert!(calls(&std::iter::from_fn(|| o2.poll_action()).collect::<Vec<_>>()).is_empty());
    o2.handle_reply(
        T,
        Some(EntryId::new(999, 0)),
        &target(&submit, "1010"),
        h.now,
    );
    let a: Vec<Action> = std::iter::from_fn(|| o2.poll_action()).collect();
    assert_eq!(calls(&a)[0].op, CallOp::RouteCall { to: "1010".into() });
    assert!(o2.restore(b"{not json", 0).is_err());
}

const NS_HEAD: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" xmlns:sb="http://switchboard.dev/scxml/1.0" version="1.0" datamodel="ecmascript">"#;

#[test]
fn fetch_collect_context_and_timers() {
    let src = format!(
        r#"{NS_HEAD}
        <datamodel><data id="who" expr="''"/></datamodel>
        <state id="s">
          <onentry><sb:fetch url="/crm/lookup" method="post" body="({{ ani: _genesys.ani, conn: _genesys.conn_id }})"/></onentry>
          <transition event="fetch.done" cond="_event.data.body.vip" target="collect">
            <assign location="who" expr="_event.data.body.name"/>
          </transition>
          <transition event="fetch.error" target="fail"/>
        </state>
        <state id="collect">
          <onentry><sb:collect prompt="tts:Your PIN" max="4" timeout="7"/></onentry>
          <transition event="collect.done" cond="_event.data.digits == '1234'" target="wait"/>
        </state>
        <state id="wait">
          <onentry><send event="tick" delay="3s"/></onentry>
          <transition event="tick" target="out"><sb:route to="+15557654321" wait="divert"/></transition>
        </state>
        <state id="out">
          <transition event="route.done" cond="_event.data.dn == '+15557654321'" target="end"><sb:release/></transition>
        </state>
        <state id="end"/>
        <final id="fail"/>
        </scxml>"#
    );
    let (mut h, a) = H::start(&src);
    let (id, req) = a
        .iter()
        .find_map(|a| match a {
            Action::Fetch { id, request, .. } => Some((*id, request.clone())),
            _ => None,
        })
        .expect("a fetch");
    assert_eq!(req.url, "http://127.0.0.1:8080/crm/lookup");
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.body,
        Some(json!({"ani": "+15551234567", "conn": "0001000000000007"}))
    );
    h.o.handle_fetch(
        &key(),
        id,
        Ok((200, json!({"vip": true, "name": "Ada"}))),
        h.now,
    );
    let c = calls(&h.drain());
    assert_eq!(
        c[0].op,
        CallOp::ApplyTreatment {
            treatment: Treatment::CollectDigits {
                prompt: "tts:Your PIN".into(),
                max_digits: 4,
                timeout_s: 7
            }
        }
    );
    let mut r = UserData::new();
    r.insert("digits".into(), json!("1234"));
    let a = h.event(treatment_end(c[0].request_id, r));
    assert!(calls(&a).is_empty());
    let due = h.o.next_deadline().expect("a timer");
    assert_eq!(due, h.now + 3000);
    h.o.handle_timers(due - 1);
    assert!(calls(&h.drain()).is_empty());
    h.o.handle_timers(due);
    let c = calls(&h.drain());
    assert_eq!(
        c[0].op,
        CallOp::RouteCall {
            to: "+15557654321".into()
        }
    );
    // An external number: done once the call left the route point for it.
    let c = calls(&h.event(diverted("5000", "+15557654321", Some(c[0].request_id))));
    assert_eq!(c[0].op, CallOp::Release);
    // The release confirmed: the call is over, the session too.
    let mut rel = attrs("5000");
    rel.request_id = Some(c[0].request_id);
    assert!(ended(&h.event(Event::EventReleased(rel))).is_some());
}

#[test]
fn bad_input_does_not_break_a_session() {
    let src = format!(
        r#"{NS_HEAD}
        <state id="s">
          <onentry><sb:route/></onentry>
          <transition event="error.execution" target="ok"/>
        </state>
        <state id="ok"><onentry><sb:fetch url="http://x/" /></onentry>
          <transition event="fetch.error" target="bye"/></state>
        <final id="bye"/>
        </scxml>"#
    );
    let (mut h, a) = H::start(&src);
    assert!(
        calls(&a).is_empty(),
        "a route without `to` is an error.execution"
    );
    let id = a
        .iter()
        .find_map(|a| match a {
            Action::Fetch { id, .. } => Some(*id),
            _ => None,
        })
        .unwrap();
    // Events of other calls, unknown fetches and stale replies are ignored.
    let mut other = attrs("5000");
    other.conn_id = Some(ConnId(99));
    assert!(h.event(Event::EventAbandoned(other)).is_empty());
    h.o.handle_fetch(&key(), id + 100, Err("x".into()), h.now);
    assert!(h.drain().is_empty());
    h.o.handle_fetch(&key(), id, Err("connection refused".into()), h.now);
    assert!(ended(&h.drain()).is_some());
    // A strategy with an unknown sb: element does not load.
    let o = Orchestrator::new();
    assert!(Document::load(
        &format!("{NS_HEAD}<state id='a'><onentry><sb:dance/></onentry></state></scxml>"),
        None,
        o.environment()
    )
    .is_err());
}

#[test]
fn relative_urls() {
    assert_eq!(
        resolve("http://h:1/a/b.scxml", "menu.vxml"),
        "http://h:1/a/menu.vxml"
    );
    assert_eq!(
        resolve("http://h:1/a/b.scxml", "/x.vxml"),
        "http://h:1/x.vxml"
    );
    assert_eq!(resolve("http://h:1/a/", "tts:Hello"), "tts:Hello");
    assert_eq!(resolve("", "menu.vxml"), "menu.vxml");
}

#[test]
fn cancel_the_queue_and_the_treatment() {
    let src = format!(
        r#"{NS_HEAD}
        <state id="q">
          <onentry>
            <sb:play type="music" src="http://x/hold.wav"/>
            <sb:queue queue="sales" skills="sales" priority="2"/>
          </onentry>
          <transition event="play.started" target="leave"/>
        </state>
        <state id="leave">
          <onentry><sb:cancel what="queue"/></onentry>
          <transition event="queue.cancelled" target="quiet"/>
        </state>
        <state id="quiet">
          <onentry><sb:cancel/></onentry>
          <transition event="play.done" cond="_event.data.reason == 'cancelled'" target="bye"/>
        </state>
        <final id="bye"/>
        </scxml>"#
    );
    let (mut h, a) = H::start(&src);
    let music = calls(&a)[0].request_id;
    let (submit, _) = submit_id(&routing(&a)[0]);
    let mut applied = attrs("5000");
    applied.request_id = Some(music);
    let a = h.event(Event::EventTreatmentApplied(applied));
    // The queue is left at once (routing does not answer a Cancel), then the music stops.
    assert_eq!(
        routing(&a),
        vec![RoutingRequest::Cancel {
            tenant: T.into(),
            conn_id: CONN
        }]
    );
    assert_eq!(calls(&a)[0].op, CallOp::CancelTreatment);
    assert!(calls(&h.reply(target(&submit, "1001"))).is_empty());
    let mut end = attrs("5000");
    end.request_id = Some(music);
    end.reason = Some("cancelled".into());
    assert!(ended(&h.event(Event::EventTreatmentEnd(end))).is_some());
}

#[test]
fn a_session_whose_call_vanished_ends_after_the_maximum() {
    let (mut h, _, _) = demo_to_queue();
    h.o.set_max_session_ms(60_000);
    h.o.handle_timers(h.now + 1000);
    assert!(h.drain().is_empty());
    h.o.handle_timers(1_000_000 + 60_001);
    let a = h.drain();
    assert_eq!(routing(&a).len(), 1, "the submission is cancelled: {a:?}");
    assert!(ended(&a).is_some());
}

#[test]
fn the_route_point_timeout_is_given_back_only_for_a_call_left_unrouted() {
    // A strategy that ends without routing its call: the route point's own timeout (and
    // default route) takes over again.
    let src = format!(r#"{NS_HEAD}<final id="bye"/></scxml>"#);
    let (_, a) = H::start(&src);
    let c = calls(&a);
    assert_eq!(c.len(), 1, "{a:?}");
    assert_eq!(c[0].op, CallOp::SetRouteTimeout { timeout_ms: None });
    assert!(ended(&a).is_some());

    // One that routed it: nothing to give back.
    let src = format!(
        r#"{NS_HEAD}
        <state id="s">
          <onentry><sb:route to="1002"/></onentry>
          <transition event="route.done" target="bye"/>
        </state>
        <final id="bye"/>
        </scxml>"#
    );
    let (mut h, a) = H::start(&src);
    let c = calls(&a);
    assert_eq!(c[0].op, CallOp::RouteCall { to: "1002".into() });
    let a = h.event(diverted("5000", "1002", Some(c[0].request_id)));
    let mut est = attrs("1002");
    est.agent_id = Some("a1002".into());
    let a = [a, h.event(Event::EventEstablished(est))].concat();
    assert!(ended(&a).is_some(), "{a:?}");
    assert!(calls(&a).is_empty(), "{a:?}");
}
