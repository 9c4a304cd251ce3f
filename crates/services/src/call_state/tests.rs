//! The role in process: an embedded bus in a temporary directory, events published on it, the
//! state and the REST answers read back.

use super::*;
use axum::body::Body;
use axum::http::{header, Request};
use switchboard_bus::EmbeddedBus;
use switchboard_config::Tenant;
use switchboard_events::CallAttrs;
use tower::ServiceExt;

const C1: ConnId = ConnId(0x00a1_b2c3_d4e5_f601);
const C2: ConnId = ConnId(0x00a1_b2c3_d4e5_f602);

fn config() -> Arc<Config> {
    Arc::new(Config {
        tenants: vec![
            Tenant::new("demo", "switchboard"),
            Tenant::new("acme", "acme"),
        ],
        ..Config::default()
    })
}

fn options(consumer: &str) -> Options {
    Options {
        limits: Limits::default(),
        snapshot_every: 2,
        consumer: consumer.to_string(),
    }
}

/// Event times: `ms` after the start of the test run (released calls are pruned by the wall
/// clock, so times must be recent).
fn t(ms: u64) -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BASE.get_or_init(now_ms) + ms
}

fn event(kind: fn(CallAttrs) -> Event, tenant: &str, conn: ConnId, dn: &str, ms: u64) -> Event {
    let ts = t(ms);
    kind(CallAttrs {
        tenant: tenant.into(),
        conn_id: Some(conn),
        this_dn: dn.into(),
        other_dn: Some("+15551234567".into()),
        ts_ms: ts,
        ..Default::default()
    })
}

async fn publish(bus: &SharedBus, e: &Event) -> EntryId {
    bus.publish(
        &switchboard_bus::events_stream(e.tenant()),
        e.to_json().as_bytes(),
    )
    .await
    .expect("publish")
}

fn open(path: &std::path::Path) -> SharedBus {
    Arc::new(EmbeddedBus::open(path).expect("open bus"))
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Nothing stays pending in the role's group (the ack follows the fold: give it a moment).
/// Peeks with a min_idle so long that nothing is actually claimed away from the consumer.
async fn assert_nothing_pending(bus: &SharedBus, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // claim_pending with min_idle 0 would take entries; instead read the group's pending
        // entries through a claim that only an entry delivered over 1 ms ago satisfies, after
        // waiting longer than that: an entry still pending then was not acknowledged.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let pending = bus
            .claim_pending(stream, GROUP, "probe", Duration::from_millis(1), 100)
            .await
            .unwrap();
        if pending.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still pending: {pending:?}");
    }
}

fn status(state: &CallState, tenant: &str, conn: ConnId) -> Option<CallStatus> {
    state.call(tenant, conn).flatten().map(|c| c.state)
}

async fn stop(role: CallStateRole, drain: CancellationToken) {
    drain.cancel();
    tokio::time::timeout(Duration::from_secs(10), role.task)
        .await
        .expect("the role stops after the drain")
        .expect("join")
        .expect("the role ends with Ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folds_live_events_and_acks_them() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir.path().join("bus.db"));
    let drain = CancellationToken::new();
    let role = start_with(config(), bus.clone(), drain.clone(), options("c1"))
        .await
        .unwrap();
    publish(&bus, &event(Event::EventRinging, "demo", C1, "1002", 100)).await;
    publish(
        &bus,
        &event(Event::EventEstablished, "demo", C1, "1002", 200),
    )
    .await;
    let state = role.state.clone();
    wait_for(|| {
        state
            .call("demo", C1)
            .flatten()
            .is_some_and(|c| c.events == 2)
    })
    .await;
    assert_eq!(status(&state, "demo", C1), Some(CallStatus::Active));
    // Tenants are separate: nothing for acme.
    assert_eq!(state.call("acme", C1), Some(None));
    assert_eq!(state.call("nope", C1), None);
    // Everything folded was acknowledged: nothing pending for anyone.
    assert_nothing_pending(&bus, "events:demo").await;
    stop(role, drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_after_restart_from_snapshot_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.db");
    {
        let bus = open(&path);
        let drain = CancellationToken::new();
        let role = start_with(config(), bus.clone(), drain.clone(), options("c1"))
            .await
            .unwrap();
        publish(&bus, &event(Event::EventRinging, "demo", C1, "1002", 100)).await;
        publish(
            &bus,
            &event(Event::EventEstablished, "demo", C1, "1002", 110),
        )
        .await;
        publish(&bus, &event(Event::EventRinging, "demo", C2, "1003", 120)).await;
        let state = role.state.clone();
        wait_for(|| status(&state, "demo", C2).is_some()).await;
        stop(role, drain).await;
        // The drain saved a snapshot.
        assert!(bus.kv_get("call-state:demo").await.unwrap().is_some());
        // While the role is down, C1 ends.
        publish(&bus, &event(Event::EventReleased, "demo", C1, "1002", 130)).await;
    }
    // A new process: same file, a new consumer name.
    let bus = open(&path);
    let drain = CancellationToken::new();
    let role = start_with(config(), bus.clone(), drain.clone(), options("c2"))
        .await
        .unwrap();
    // Rebuilt before start returned.
    let state = role.state.clone();
    assert_eq!(status(&state, "demo", C1), Some(CallStatus::Released));
    assert_eq!(status(&state, "demo", C2), Some(CallStatus::Active));
    let c1 = state.call("demo", C1).flatten().unwrap();
    assert_eq!(c1.events, 3, "each event folded once: {c1:?}");
    assert_eq!(c1.released_ms, Some(t(130)));
    let (_, position) = state.calls("demo", Filter::All).unwrap();
    assert_eq!(position, bus.last_id("events:demo").await.unwrap());
    stop(role, drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_from_the_stream_alone_and_reclaims_a_crashed_consumers_entries() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir.path().join("bus.db"));
    let stream = switchboard_bus::events_stream("demo");
    // A previous run created the group and took two entries without acking them (it died),
    // and never wrote a snapshot.
    publish(&bus, &event(Event::EventRinging, "demo", C1, "1002", 1)).await;
    bus.create_group(&stream, GROUP, GroupStart::Beginning)
        .await
        .unwrap();
    publish(&bus, &event(Event::EventEstablished, "demo", C1, "1002", 2)).await;
    let taken = bus
        .read_group(&stream, GROUP, "dead", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    publish(&bus, &event(Event::EventHeld, "demo", C1, "1002", 3)).await;

    let drain = CancellationToken::new();
    let role = start_with(config(), bus.clone(), drain.clone(), options("heir"))
        .await
        .unwrap();
    let call = role.state.call("demo", C1).flatten().unwrap();
    assert_eq!(call.events, 3);
    assert_eq!(call.party("1002").unwrap().state, PartyState::Held);
    // The dead consumer's entries were reclaimed and acknowledged.
    assert_nothing_pending(&bus, &stream).await;
    // The live loop still gets new ones (the third entry, redelivered by the group, was
    // skipped as already folded).
    publish(&bus, &event(Event::EventRetrieved, "demo", C1, "1002", 4)).await;
    let state = role.state.clone();
    wait_for(|| {
        state
            .call("demo", C1)
            .flatten()
            .is_some_and(|c| c.events == 4)
    })
    .await;
    stop(role, drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir.path().join("bus.db"));
    bus.publish("events:demo", b"not json").await.unwrap();
    bus.publish("events:demo", &[0xff, 0xfe]).await.unwrap();
    bus.publish("events:demo", br#"{"event":"EventNope"}"#)
        .await
        .unwrap();
    // An acme event on demo's stream is not folded into demo.
    let foreign = event(Event::EventRinging, "acme", C2, "1002", 1);
    bus.publish("events:demo", foreign.to_json().as_bytes())
        .await
        .unwrap();
    publish(&bus, &event(Event::EventRinging, "demo", C1, "1002", 2)).await;
    let drain = CancellationToken::new();
    let role = start_with(config(), bus.clone(), drain.clone(), options("c"))
        .await
        .unwrap();
    let (calls, position) = role.state.calls("demo", Filter::All).unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].conn_id, C1);
    assert_eq!(position, bus.last_id("events:demo").await.unwrap());
    assert_eq!(role.state.call("acme", C2), Some(None));
    stop(role, drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_ahead_of_the_stream_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir.path().join("bus.db"));
    let snap = Snapshot {
        version: SNAPSHOT_VERSION,
        position: Some(EntryId::new(u64::MAX / 4, 0)),
        calls: Vec::new(),
    };
    bus.kv_set("call-state:demo", &serde_json::to_vec(&snap).unwrap())
        .await
        .unwrap();
    bus.kv_set("call-state:acme", b"garbage").await.unwrap();
    publish(&bus, &event(Event::EventRinging, "demo", C1, "1002", 2)).await;
    publish(&bus, &event(Event::EventRinging, "acme", C2, "1002", 2)).await;
    let drain = CancellationToken::new();
    let role = start_with(config(), bus.clone(), drain.clone(), options("c"))
        .await
        .unwrap();
    assert_eq!(status(&role.state, "demo", C1), Some(CallStatus::Active));
    assert_eq!(status(&role.state, "acme", C2), Some(CallStatus::Active));
    stop(role, drain).await;
}

async fn get(router: &Router, path: &str) -> (StatusCode, String, serde_json::Value) {
    let response = router
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, content_type, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers() {
    let dir = tempfile::tempdir().unwrap();
    let bus = open(&dir.path().join("bus.db"));
    let mut ringing = event(Event::EventRinging, "demo", C1, "1002", 100);
    if let Event::EventRinging(a) = &mut ringing {
        a.user_data
            .insert("account".into(), serde_json::json!("4711"));
    }
    publish(&bus, &ringing).await;
    publish(&bus, &event(Event::EventRinging, "demo", C2, "1003", 200)).await;
    publish(&bus, &event(Event::EventReleased, "demo", C2, "1003", 300)).await;
    let drain = CancellationToken::new();
    let role = start_with(config(), bus.clone(), drain.clone(), options("c"))
        .await
        .unwrap();
    let router = role.router.clone();

    let (s, ct, body) = get(&router, "/v1/tenants/demo/calls").await;
    assert_eq!(s, StatusCode::OK);
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_eq!(body["tenant"], "demo");
    assert_eq!(body["active"], 1);
    assert_eq!(body["calls"].as_array().unwrap().len(), 2);
    assert_eq!(body["calls"][0]["conn_id"], "00a1b2c3d4e5f601");
    assert_eq!(body["calls"][0]["state"], "active");
    assert_eq!(body["calls"][0]["user_data"]["account"], "4711");
    assert_eq!(body["calls"][0]["parties"][0]["dn"], "1002");
    assert_eq!(body["calls"][0]["parties"][0]["state"], "ringing");
    assert_eq!(body["calls"][1]["state"], "released");
    assert_eq!(body["calls"][1]["released_ms"], t(300));
    let last = bus.last_id("events:demo").await.unwrap().unwrap();
    assert_eq!(body["position"], last.to_string());

    let (s, _, body) = get(&router, "/v1/tenants/demo/calls?state=active").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["calls"].as_array().unwrap().len(), 1);
    let (_, _, body) = get(&router, "/v1/tenants/demo/calls?state=released").await;
    assert_eq!(body["calls"][0]["conn_id"], "00a1b2c3d4e5f602");
    let (_, _, body) = get(&router, "/v1/tenants/acme/calls").await;
    assert_eq!(body["calls"].as_array().unwrap().len(), 0);
    assert_eq!(body["position"], serde_json::Value::Null);

    let (s, _, body) = get(&router, "/v1/tenants/demo/calls/00a1b2c3d4e5f601").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["conn_id"], "00a1b2c3d4e5f601");
    assert_eq!(body["created_ms"], t(100));
    assert_eq!(body["last_event"], "EventRinging");

    for (path, want, title) in [
        (
            "/v1/tenants/nope/calls",
            StatusCode::NOT_FOUND,
            "Unknown tenant",
        ),
        (
            "/v1/tenants/nope/calls/00a1b2c3d4e5f601",
            StatusCode::NOT_FOUND,
            "Unknown tenant",
        ),
        (
            "/v1/tenants/nope/calls/zz",
            StatusCode::NOT_FOUND,
            "Unknown tenant",
        ),
        (
            "/v1/tenants/demo/calls/00000000000000ff",
            StatusCode::NOT_FOUND,
            "Unknown call",
        ),
        (
            "/v1/tenants/demo/calls/not-a-conn-id",
            StatusCode::BAD_REQUEST,
            "Bad connection id",
        ),
        (
            "/v1/tenants/demo/calls?state=ringing",
            StatusCode::BAD_REQUEST,
            "Bad query",
        ),
        (
            "/v1/tenants/demo/calls?limit=3",
            StatusCode::BAD_REQUEST,
            "Bad query",
        ),
    ] {
        let (s, ct, body) = get(&router, path).await;
        assert_eq!(s, want, "{path}");
        assert_eq!(ct, "application/problem+json", "{path}");
        assert_eq!(body["title"], title, "{path}");
        assert_eq!(body["status"], want.as_u16(), "{path}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    stop(role, drain).await;
}
