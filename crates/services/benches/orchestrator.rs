//! Routing throughput of the orchestrator core: calls per second through strategy start ->
//! queue submission -> target (a simulated routing picking from a pool of agents) ->
//! RouteCall -> EventDiverted + EventEstablished -> session end. No bus, no media: the
//! figure is the orchestrator's own cost per call, snapshots included (one per macrostep).
//! Run: `cargo bench -p switchboard-services --bench orchestrator`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use switchboard_bus::EntryId;
use switchboard_events::requests::{CallOp, RoutingReply, RoutingRequest};
use switchboard_events::{CallAttrs, ConnId, Event, UserData};
use switchboard_scxml::Document;
use switchboard_services::orchestrator::demo::DEMO_STRATEGY;
use switchboard_services::orchestrator::{Action, Orchestrator, Strategy};

/// A strategy that queues by skill and routes to the target.
const QUEUE_AND_ROUTE: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" xmlns:sb="http://switchboard.dev/scxml/1.0" version="1.0" datamodel="ecmascript" initial="queued">
  <state id="queued">
    <onentry><sb:queue queue="sales" skills="sales >= 5 &amp; english" priority="1" timeout="60"/></onentry>
    <transition event="queue.target" target="routing"><sb:route toexpr="_event.data.dn"/></transition>
    <transition event="queue.timeout" target="done"/>
  </state>
  <state id="routing">
    <transition event="route.done" target="done"/>
    <transition event="route.error" target="queued"/>
  </state>
  <final id="done"/>
</scxml>"#;

/// Plays routing and the SIP Server for one call; returns the number of actions seen.
fn one_call(o: &mut Orchestrator, s: &Strategy, n: u64, ivr: bool) -> usize {
    let conn = ConnId(0x0001_0000_0000_0000 | n);
    let attrs = |dn: &str| CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(conn),
        this_dn: dn.into(),
        ani: Some("+15551234567".into()),
        ts_ms: n,
        ..Default::default()
    };
    let now = 1_000_000 + n;
    let mut seq = n * 8;
    let mut at = || {
        seq += 1;
        Some(EntryId::new(seq, 0))
    };
    o.start(&attrs("5000"), s, at(), None, now).expect("starts");
    let mut actions = 0;
    let mut submit = None;
    let mut route = None;
    let mut menu = None;
    let mut drain = |o: &mut Orchestrator,
                     submit: &mut Option<String>,
                     route: &mut Option<u64>,
                     menu: &mut Option<u64>| {
        while let Some(a) = o.poll_action() {
            actions += 1;
            match a {
                Action::Routing {
                    request: RoutingRequest::Submit { request_id, .. },
                    ..
                } => *submit = Some(request_id),
                Action::Call { request, .. } => match request.op {
                    CallOp::RouteCall { .. } => *route = Some(request.request_id),
                    CallOp::ApplyTreatment { .. } if menu.is_none() => {
                        *menu = Some(request.request_id)
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    };
    drain(o, &mut submit, &mut route, &mut menu);
    if ivr {
        let mut end = attrs("5000");
        end.request_id = menu;
        let mut results = UserData::new();
        results.insert("choice".into(), json!("sales"));
        end.treatment_results = Some(results);
        o.handle_event(at(), &Event::EventTreatmentEnd(end), now);
        drain(o, &mut submit, &mut route, &mut menu);
    }
    // Simulated routing: agents 1001..=1010, round robin.
    let dn = format!("{}", 1001 + n % 10);
    let reply = RoutingReply::Target {
        request_id: submit.take().expect("a submission"),
        conn_id: conn,
        agent_id: format!("a{dn}"),
        dn: dn.clone(),
    };
    o.handle_reply("demo", at(), &reply, now);
    drain(o, &mut submit, &mut route, &mut menu);
    let mut d = attrs("5000");
    d.third_party_dn = Some(dn.clone());
    d.request_id = route;
    o.handle_event(at(), &Event::EventDiverted(d), now);
    o.handle_event(at(), &Event::EventEstablished(attrs(&dn)), now);
    drain(o, &mut submit, &mut route, &mut menu);
    assert!(o.is_empty(), "the session ended");
    actions
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("orchestrator");
    g.throughput(Throughput::Elements(1));
    for (name, src, ivr) in [
        ("call_queue_route", QUEUE_AND_ROUTE, false),
        ("call_demo_strategy_ivr_queue_route", DEMO_STRATEGY, true),
    ] {
        let mut o = Orchestrator::new();
        let s = Strategy {
            url: "builtin:bench".into(),
            base: "http://127.0.0.1:8080/orchestrator/builtin/".into(),
            doc: Document::load(src, None, o.environment()).expect("loads"),
        };
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                one_call(&mut o, &s, n, ivr)
            })
        });
    }
    // The share of a call that is creating the session (QuickJS runtime and context, the
    // data model, the first macrostep and its snapshot), without routing it.
    let mut o = Orchestrator::new();
    let s = Strategy {
        url: "builtin:bench".into(),
        base: String::new(),
        doc: Document::load(QUEUE_AND_ROUTE, None, o.environment()).expect("loads"),
    };
    let mut n = 0u64;
    g.bench_function("session_start_only", |b| {
        b.iter(|| {
            n += 1;
            let conn = ConnId(0x0002_0000_0000_0000 | n);
            let attrs = CallAttrs {
                tenant: "demo".into(),
                conn_id: Some(conn),
                this_dn: "5000".into(),
                ..Default::default()
            };
            o.start(&attrs, &s, None, None, n).expect("starts");
            while o.poll_action().is_some() {}
            o.forget(&switchboard_services::orchestrator::SessionKey {
                tenant: "demo".into(),
                conn,
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
