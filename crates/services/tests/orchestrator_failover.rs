//! The orchestrator role on a real bus, with the test playing the SIP Server and routing:
//! two nodes share route requests; the node running a session dies mid-queue (no lease
//! released); the other takes the session over after the lease expires and routes the call
//! when the routing reply (sent while nobody ran the session) is replayed to it.

use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_bus::{EmbeddedBus, RedisBus, SharedBus};
use switchboard_config::Config;
use switchboard_events::requests::{CallOp, CallRequest, RoutingReply, RoutingRequest, Treatment};
use switchboard_events::{CallAttrs, ConnId, Event, UserData};
use switchboard_services::orchestrator::role::{self, RoutePoints, Settings, Started};
use tokio_util::sync::CancellationToken;

const CONN: ConnId = ConnId(0x0001_0000_0000_0042);
const LEASE: Duration = Duration::from_millis(600);

fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::new("127.0.0.1:9".parse().unwrap(), dir.to_path_buf());
    s.lease = LEASE;
    s.poll = Duration::from_millis(5);
    s
}

fn attrs(dn: &str) -> CallAttrs {
    CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(CONN),
        this_dn: dn.into(),
        ani: Some("+15551234567".into()),
        ts_ms: 1,
        ..Default::default()
    }
}

async fn publish(bus: &SharedBus, e: Event) {
    bus.publish("events:demo", e.to_json().as_bytes())
        .await
        .unwrap();
}

/// Waits for the first entry of `stream` after `from` that `pick` accepts.
async fn wait_for<T>(
    bus: &SharedBus,
    stream: &str,
    pick: impl Fn(&[u8]) -> Option<T>,
) -> (T, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = bus.read_range(stream, None, 1000).await.unwrap();
        let hits: Vec<T> = all.iter().filter_map(|e| pick(&e.payload)).collect();
        let n = hits.len();
        if let Some(first) = hits.into_iter().next() {
            return (first, n);
        }
        assert!(Instant::now() < deadline, "nothing on {stream}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn call_request(p: &[u8], want: impl Fn(&CallOp) -> bool) -> Option<CallRequest> {
    serde_json::from_slice::<CallRequest>(p)
        .ok()
        .filter(|r| want(&r.op))
}

async fn failover(bus: SharedBus) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(Config::demo());
    let drain = CancellationToken::new();
    let mut nodes: Vec<(Settings, Started)> = (0..2)
        .map(|_| {
            let s = settings(dir.path());
            let started = role::start(
                RoutePoints::Config(config.clone()),
                bus.clone(),
                s.clone(),
                drain.clone(),
            );
            (s, started)
        })
        .collect();
    // A failing assertion must not leave the node threads running (the runtime would wait
    // for them forever).
    let _stop: Vec<_> = nodes
        .iter()
        .map(|n| n.1.crash.clone().drop_guard())
        .collect();
    // Both nodes have created the group once the stream has it; give them a moment to start.
    tokio::time::sleep(Duration::from_millis(200)).await;

    publish(&bus, Event::EventRouteRequest(attrs("5000"))).await;
    let requests = "sip-node:0001:requests";
    let (menu, _) = wait_for(&bus, requests, |p| {
        call_request(p, |op| {
            matches!(
                op,
                CallOp::ApplyTreatment {
                    treatment: Treatment::PlayApplication { .. }
                }
            )
        })
    })
    .await;
    let mut results = UserData::new();
    results.insert("choice".into(), "sales".into());
    let mut end = attrs("5000");
    end.request_id = Some(menu.request_id);
    end.treatment_results = Some(results);
    publish(&bus, Event::EventTreatmentEnd(end)).await;
    let (submit, _) = wait_for(&bus, "routing:demo:requests", |p| {
        serde_json::from_slice::<RoutingRequest>(p).ok()
    })
    .await;
    let (request_id, reply_to) = match submit {
        RoutingRequest::Submit {
            request_id,
            reply_to,
            skills,
            ..
        } => {
            assert_eq!(skills, "sales >= 5");
            (request_id, reply_to)
        }
        other => panic!("{other:?}"),
    };
    // Only one node started the strategy.
    let menus = bus.read_range(requests, None, 100).await.unwrap();
    let started = menus
        .iter()
        .filter(|e| {
            call_request(&e.payload, |op| {
                matches!(
                    op,
                    CallOp::ApplyTreatment {
                        treatment: Treatment::PlayApplication { .. }
                    }
                )
            })
            .is_some()
        })
        .count();
    assert_eq!(started, 1, "each route request is handled once");

    // The node holding the session dies; routing answers while nobody runs it.
    let lease = "orchestrator:demo:0001000000000042";
    let owner = bus
        .lease_owner(lease)
        .await
        .unwrap()
        .expect("a lease holder");
    let (victim, survivor) = if owner == nodes[0].0.node_id {
        (0, 1)
    } else {
        (1, 0)
    };
    let crash_at = Instant::now();
    nodes[victim].1.crash.cancel();
    (&mut nodes[victim].1.task).await.unwrap().unwrap();
    let reply = RoutingReply::Target {
        request_id,
        conn_id: CONN,
        agent_id: "a1003".into(),
        dn: "1003".into(),
    };
    bus.publish(&reply_to, &serde_json::to_vec(&reply).unwrap())
        .await
        .unwrap();
    let (route, n) = wait_for(&bus, requests, |p| {
        call_request(p, |op| matches!(op, CallOp::RouteCall { .. }))
    })
    .await;
    let takeover = crash_at.elapsed();
    assert_eq!(route.op, CallOp::RouteCall { to: "1003".into() });
    assert_eq!(n, 1, "one RouteCall");
    assert_eq!(
        bus.lease_owner(lease).await.unwrap().as_deref(),
        Some(nodes[survivor].0.node_id.as_str())
    );
    assert!(
        takeover >= LEASE / 4,
        "not before the lease expired: {takeover:?}"
    );

    // The agent answers: the strategy ends, its snapshot is gone.
    let mut d = attrs("5000");
    d.third_party_dn = Some("1003".into());
    d.request_id = Some(route.request_id);
    publish(&bus, Event::EventDiverted(d)).await;
    publish(&bus, Event::EventEstablished(attrs("1003"))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while bus.kv_get(lease).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the session did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drain.cancel();
    let (_, survivor) = nodes.swap_remove(survivor);
    survivor.task.await.unwrap().unwrap();
    takeover
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_the_embedded_bus() {
    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).unwrap());
    let t = failover(bus).await;
    eprintln!("takeover (embedded bus, lease {LEASE:?}): crash -> RouteCall in {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_redis() {
    let redis = switchboard_testkit::RedisServer::spawn().expect("redis-server");
    let bus: SharedBus = Arc::new(RedisBus::connect(&redis.url()).await.unwrap());
    let t = failover(bus).await;
    eprintln!("takeover (redis, lease {LEASE:?}): crash -> RouteCall in {t:?}");
}

const HTTP_STRATEGY: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" xmlns:sb="http://switchboard.dev/scxml/1.0" version="1.0" datamodel="ecmascript">
  <state id="lookup">
    <onentry><sb:fetch url="crm/lookup" method="post" body="({ ani: _genesys.ani })"/></onentry>
    <transition event="fetch.done" target="known">
      <sb:attach data="({ vip: _event.data.body.vip, ani: _event.data.body.ani })"/>
    </transition>
  </state>
  <state id="known"/>
</scxml>"#;

/// A strategy fetched over HTTP; its `<sb:fetch>` posts JSON to a customer system (a loopback
/// server) and attaches what came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_strategy_with_a_customer_system_fetch() {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route("/strategies/main.scxml", get(|| async { HTTP_STRATEGY }))
        .route(
            "/strategies/crm/lookup",
            post(
                |axum::Json(body): axum::Json<serde_json::Value>| async move {
                    axum::Json(serde_json::json!({ "vip": true, "ani": body["ani"] }))
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).unwrap());
    let mut config = Config::demo();
    config.tenants[0].route_points[0].strategy_url = format!("http://{addr}/strategies/main.scxml");
    let drain = CancellationToken::new();
    let node = role::start(
        RoutePoints::Config(Arc::new(config)),
        bus.clone(),
        settings(dir.path()),
        drain.clone(),
    );
    let _stop = node.crash.clone().drop_guard();
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&bus, Event::EventRouteRequest(attrs("5000"))).await;
    let (attach, _) = wait_for(&bus, "sip-node:0001:requests", |p| {
        call_request(p, |op| matches!(op, CallOp::UpdateUserData { .. }))
    })
    .await;
    let mut want = UserData::new();
    want.insert("vip".into(), true.into());
    want.insert("ani".into(), "+15551234567".into());
    assert_eq!(attach.op, CallOp::UpdateUserData { data: want });
    drain.cancel();
    node.task.await.unwrap().unwrap();
}

/// A route request delivered to a node that died before acknowledging it is claimed by
/// another node after a lease time, and its strategy starts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_request_left_unacknowledged_is_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).unwrap());
    bus.create_group("events:demo", role::GROUP, switchboard_bus::GroupStart::End)
        .await
        .unwrap();
    publish(&bus, Event::EventRouteRequest(attrs("5000"))).await;
    let taken = bus
        .read_group("events:demo", role::GROUP, "dead-node", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    let delivered_at = Instant::now();
    let drain = CancellationToken::new();
    let node = role::start(
        RoutePoints::Config(Arc::new(Config::demo())),
        bus.clone(),
        settings(dir.path()),
        drain.clone(),
    );
    let _stop = node.crash.clone().drop_guard();
    wait_for(&bus, "sip-node:0001:requests", |p| {
        call_request(p, |op| matches!(op, CallOp::ApplyTreatment { .. }))
    })
    .await;
    assert!(
        delivered_at.elapsed() >= LEASE,
        "claimed only once idle for a lease"
    );
    drain.cancel();
    node.task.await.unwrap().unwrap();
}

/// With the live dial plan as the source, a tenant and route point added to the store after
/// the node started (as the REST API does) are orchestrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_points_follow_the_live_dial_plan() {
    use switchboard_services::dialplan::role::DialplanCell;
    use switchboard_services::dialplan::Dialplan;
    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).unwrap());
    let cell = Arc::new(DialplanCell::new(Dialplan::build(&Config::demo().tenants)));
    let drain = CancellationToken::new();
    let node = role::start(
        RoutePoints::Live(cell.clone()),
        bus.clone(),
        settings(dir.path()),
        drain.clone(),
    );
    let _stop = node.crash.clone().drop_guard();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let acme = Config::from_toml_str(
        "[[tenants]]\nname = \"acme\"\n\
         [[tenants.dns]]\nnumber = \"7100\"\nkind = \"route_point\"\n\
         [[tenants.route_points]]\nnumber = \"7100\"\nstrategy_url = \"builtin:demo-strategy\"\n",
    )
    .unwrap();
    let mut tenants = Config::demo().tenants;
    tenants.extend(acme.tenants);
    cell.set(Dialplan::build(&tenants));
    // The node picks the new tenant up on its next scan (a quarter lease).
    tokio::time::sleep(LEASE / 2).await;
    let mut a = attrs("7100");
    a.tenant = "acme".into();
    bus.publish(
        "events:acme",
        Event::EventRouteRequest(a).to_json().as_bytes(),
    )
    .await
    .unwrap();
    let (menu, _) = wait_for(&bus, "sip-node:0001:requests", |p| {
        call_request(p, |op| matches!(op, CallOp::ApplyTreatment { .. }))
    })
    .await;
    assert_eq!((menu.tenant.as_str(), menu.dn.as_str()), ("acme", "7100"));
    drain.cancel();
    node.task.await.unwrap().unwrap();
}
