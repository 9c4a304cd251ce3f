//! Two `switchboard run --roles orchestrator` processes on one Redis; the test plays the SIP
//! Server and routing on the bus. The process running the demo strategy of a call is killed
//! (SIGKILL) while the call waits in the queue; the other process takes the session over and
//! routes the call to the agent routing reserved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_bus::{RedisBus, SharedBus};
use switchboard_events::requests::{CallOp, CallRequest, RoutingReply, RoutingRequest, Treatment};
use switchboard_events::{CallAttrs, ConnId, Event, UserData};
use switchboard_testkit::{require_program, send_signal, RedisServer, Switchboard};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const CONN: ConnId = ConnId(0x0002_0000_0000_0009);
const REQUESTS: &str = "sip-node:0002:requests";
const LEASE_MS: u64 = 1000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn attrs(dn: &str) -> CallAttrs {
    CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(CONN),
        this_dn: dn.into(),
        ani: Some("+15551234567".into()),
        dnis: Some("+15550001000".into()),
        ts_ms: 1,
        ..Default::default()
    }
}

/// Waits for the entries of `stream` that `pick` accepts; returns them once there is one.
fn wait_for<T>(
    rt: &tokio::runtime::Runtime,
    bus: &SharedBus,
    stream: &str,
    pick: impl Fn(&[u8]) -> Option<T>,
) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all = rt
            .block_on(bus.read_range(stream, None, 1000))
            .expect("read");
        let hits: Vec<T> = all.iter().filter_map(|e| pick(&e.payload)).collect();
        if !hits.is_empty() {
            return hits;
        }
        assert!(Instant::now() < deadline, "nothing on {stream}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn op(p: &[u8], want: impl Fn(&CallOp) -> bool) -> Option<CallRequest> {
    serde_json::from_slice::<CallRequest>(p)
        .ok()
        .filter(|r| want(&r.op))
}

fn is_menu(op: &CallOp) -> bool {
    matches!(
        op,
        CallOp::ApplyTreatment {
            treatment: Treatment::PlayApplication { .. }
        }
    )
}

#[test]
fn a_killed_orchestrator_process_hands_its_call_to_the_other() {
    if !require_program("redis-server") {
        return;
    }
    let redis = RedisServer::spawn().expect("redis-server starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "data_dir = {:?}\n[bus]\nbackend = \"redis\"\nredis_url = {:?}\n\
         [orchestrator]\nlease_ms = {LEASE_MS}\n\
         [[tenants]]\nname = \"demo\"\n\
         [[tenants.dns]]\nnumber = \"5000\"\nkind = \"route_point\"\n\
         [[tenants.route_points]]\nnumber = \"5000\"\nstrategy_url = \"builtin:demo-strategy\"\n",
        dir.path().display().to_string(),
        redis.url()
    );
    let start = || {
        Switchboard::builder()
            .binary(BIN)
            .config(&config)
            .roles(&["orchestrator"])
            .spawn()
            .expect("switchboard starts")
    };
    let nodes = [start(), start()];
    // The menu the strategy plays is served by the role.
    let menu = nodes[0]
        .get("/orchestrator/builtin/menu.vxml")
        .expect("GET");
    assert_eq!(menu.status, 200);
    assert!(menu.body.contains("<vxml"), "{}", menu.body);
    assert_eq!(
        nodes[1]
            .get("/orchestrator/builtin/nope")
            .expect("GET")
            .status,
        404
    );

    let rt = runtime();
    let bus: SharedBus = Arc::new(
        rt.block_on(RedisBus::connect(&redis.url()))
            .expect("connect to redis"),
    );
    let publish = |e: Event| {
        rt.block_on(bus.publish("events:demo", e.to_json().as_bytes()))
            .expect("publish");
    };
    publish(Event::EventRouteRequest(attrs("5000")));
    let menus = wait_for(&rt, &bus, REQUESTS, |p| op(p, is_menu));
    let url = match &menus[0].op {
        CallOp::ApplyTreatment {
            treatment: Treatment::PlayApplication { url, .. },
        } => url.clone(),
        other => panic!("{other:?}"),
    };
    let http = nodes
        .iter()
        .map(|n| format!("http://{}/orchestrator/builtin/menu.vxml", n.http_addr()))
        .collect::<Vec<_>>();
    assert!(http.contains(&url), "{url} is one of {http:?}");

    let mut end = attrs("5000");
    end.request_id = Some(menus[0].request_id);
    let mut results = UserData::new();
    results.insert("choice".into(), "support".into());
    end.treatment_results = Some(results);
    publish(Event::EventTreatmentEnd(end));
    let submits = wait_for(&rt, &bus, "routing:demo:requests", |p| {
        serde_json::from_slice::<RoutingRequest>(p).ok()
    });
    let (request_id, reply_to) = match &submits[0] {
        RoutingRequest::Submit {
            request_id,
            reply_to,
            queue,
            ..
        } => {
            assert_eq!(queue, "support");
            (request_id.clone(), reply_to.clone())
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        wait_for(&rt, &bus, REQUESTS, |p| op(p, is_menu)).len(),
        1,
        "one process started the strategy"
    );

    // SIGKILL the process holding the session, then answer as routing.
    let lease = format!("orchestrator:demo:{CONN}");
    let owner = rt
        .block_on(bus.lease_owner(&lease))
        .expect("lease")
        .expect("a holder");
    let victim = nodes
        .iter()
        .position(|n| owner.starts_with(&format!("orchestrator-{}-", n.pid())))
        .expect("the holder is one of the processes");
    let killed_at = Instant::now();
    send_signal(nodes[victim].pid(), 9).expect("SIGKILL");
    let reply = RoutingReply::Target {
        request_id,
        conn_id: CONN,
        agent_id: "a1007".into(),
        dn: "1007".into(),
    };
    rt.block_on(bus.publish(&reply_to, &serde_json::to_vec(&reply).expect("json")))
        .expect("publish");
    let routes = wait_for(&rt, &bus, REQUESTS, |p| {
        op(p, |o| matches!(o, CallOp::RouteCall { .. }))
    });
    let takeover = killed_at.elapsed();
    assert_eq!(routes[0].op, CallOp::RouteCall { to: "1007".into() });
    let survivor = &nodes[1 - victim];
    let now_owner = rt.block_on(bus.lease_owner(&lease)).expect("lease");
    assert!(
        now_owner
            .as_deref()
            .is_some_and(|o| o.starts_with(&format!("orchestrator-{}-", survivor.pid()))),
        "{now_owner:?}"
    );
    assert!(
        survivor.logs().contains("session taken over"),
        "{}",
        survivor.logs()
    );
    eprintln!(
        "takeover between processes (redis, lease {LEASE_MS} ms): SIGKILL -> RouteCall in {takeover:?}"
    );
}
