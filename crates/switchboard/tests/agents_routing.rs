//! The `agent-state` and `routing` roles in the real binary on Redis: agents log in and go
//! ready over REST, a submission published on the bus gets its target (or its timeout) on its
//! reply stream, call events move the agent, and after a SIGKILL the restarted process has the
//! agents' and queues' state back from its snapshots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_bus::{RedisBus, SharedBus};
use switchboard_events::requests::{routing_requests_stream, RoutingReply, RoutingRequest};
use switchboard_events::{CallAttrs, ConnId, Event, UserData};
use switchboard_testkit::{http_request, require_program, RedisServer, Switchboard};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const REPLIES: &str = "test:replies";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The demo configuration on the test's Redis and data directory.
fn config(redis_url: &str, data_dir: &str) -> String {
    switchboard_config::EXAMPLE_TOML
        .replace("data_dir = \"./data\"", &format!("data_dir = {data_dir:?}"))
        .replace("backend = \"embedded\"", "backend = \"redis\"")
        .replace(
            "redis_url = \"redis://127.0.0.1:6379\"",
            &format!("redis_url = {redis_url:?}"),
        )
}

fn start(config: &str) -> Switchboard {
    Switchboard::builder()
        .binary(BIN)
        .config(config)
        .roles(&["agent-state", "routing"])
        .spawn()
        .expect("switchboard starts")
}

fn request(sb: &Switchboard, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let r = http_request(sb.http_addr(), method, path, body).expect("HTTP request");
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

fn post(sb: &Switchboard, path: &str, body: Option<&str>) -> (u16, Value) {
    request(sb, "POST", path, body)
}

fn get(sb: &Switchboard, path: &str) -> Value {
    request(sb, "GET", path, None).1
}

fn agent_state(sb: &Switchboard, agent: &str) -> String {
    get(sb, &format!("/v1/tenants/demo/agent-states/{agent}"))["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn submit(conn: u64, skills: &str, timeout_s: Option<u32>) -> RoutingRequest {
    RoutingRequest::Submit {
        tenant: "demo".into(),
        request_id: format!("req-{conn}"),
        conn_id: ConnId(conn),
        queue: "sales".into(),
        skills: skills.into(),
        agent_group: None,
        priority: 0,
        enqueued_ms: 1,
        timeout_s,
        reply_to: REPLIES.into(),
        user_data: UserData::new(),
    }
}

/// Publishes `req` and waits for the next reply on the reply stream.
fn route(
    rt: &tokio::runtime::Runtime,
    bus: &SharedBus,
    req: &RoutingRequest,
    seen: &mut usize,
) -> RoutingReply {
    rt.block_on(async {
        bus.publish(
            &routing_requests_stream("demo"),
            &serde_json::to_vec(req).expect("json"),
        )
        .await
        .expect("publish");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let all = bus.read_range(REPLIES, None, 1000).await.expect("read");
            if let Some(e) = all.get(*seen) {
                *seen += 1;
                return serde_json::from_slice(&e.payload).expect("a routing reply");
            }
            assert!(Instant::now() < deadline, "no reply to {req:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

fn call_event(kind: fn(CallAttrs) -> Event, conn: u64, dn: &str) -> Event {
    kind(CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(ConnId(conn)),
        this_dn: dn.into(),
        ts_ms: 1,
        ..Default::default()
    })
}

fn publish(rt: &tokio::runtime::Runtime, bus: &SharedBus, event: &Event) {
    rt.block_on(bus.publish("events:demo", event.to_json().as_bytes()))
        .expect("publish");
}

#[test]
fn agents_and_routing_on_redis_survive_sigkill() {
    if !require_program("redis-server") {
        return;
    }
    let redis = RedisServer::spawn().expect("redis-server starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(&redis.url(), &dir.path().display().to_string());
    let rt = runtime();
    let bus: SharedBus = Arc::new(
        rt.block_on(RedisBus::connect(&redis.url()))
            .expect("connect to redis"),
    );

    let sb = start(&config);
    wait_until("agent-state is the writer", || {
        get(&sb, "/v1/tenants/demo/agent-states")["writer"] == true
    });
    // a1001: sales 6, a1002: sales 7 (not ready), a1003: sales 8.
    for agent in ["a1001", "a1002", "a1003"] {
        let (status, body) = post(&sb, &format!("/v1/tenants/demo/agents/{agent}/login"), None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["event"], "EventAgentLogin");
    }
    for agent in ["a1001", "a1003"] {
        let (status, body) = post(&sb, &format!("/v1/tenants/demo/agents/{agent}/ready"), None);
        assert_eq!(
            (status, body["event"].as_str()),
            (200, Some("EventAgentReady"))
        );
    }
    let (status, body) = post(
        &sb,
        "/v1/tenants/demo/agents/a1002/not-ready",
        Some(r#"{"reason_code":"training"}"#),
    );
    assert_eq!(
        (status, body["reason_code"].as_str()),
        (200, Some("training"))
    );
    let (status, body) = post(
        &sb,
        "/v1/tenants/demo/agents/a1004/login",
        Some(r#"{"dn":"1001"}"#),
    );
    assert_eq!(
        (status, body["error_code"].as_str()),
        (409, Some("dn_taken"))
    );
    assert_eq!(agent_state(&sb, "a1001"), "ready");
    assert_eq!(agent_state(&sb, "a1002"), "not_ready");

    // Routing takes the submission from the bus and answers on the reply stream.
    let mut seen = 0;
    wait_until("routing is the writer", || {
        get(&sb, "/v1/tenants/demo/queues")["writer"] == true
    });
    let reply = route(&rt, &bus, &submit(0xa1, "sales >= 7", None), &mut seen);
    assert_eq!(
        reply,
        RoutingReply::Target {
            request_id: "req-161".into(),
            conn_id: ConnId(0xa1),
            agent_id: "a1003".into(),
            dn: "1003".into()
        }
    );
    wait_until("a1003 reserved", || agent_state(&sb, "a1003") == "reserved");
    // Nobody with sales >= 9 is logged in: the call times out.
    let reply = route(&rt, &bus, &submit(0xa2, "sales >= 9", Some(1)), &mut seen);
    assert!(
        matches!(
            reply,
            RoutingReply::Timeout {
                conn_id: ConnId(0xa2),
                ..
            }
        ),
        "{reply:?}"
    );
    let reply = route(&rt, &bus, &submit(0xa3, "sales >=", None), &mut seen);
    assert!(
        matches!(&reply, RoutingReply::Rejected { reason, .. } if reason.contains("position 8")),
        "{reply:?}"
    );
    // A call waits for a Spanish speaker (a1002, not ready).
    let req = submit(0xa4, "spanish", None);
    rt.block_on(bus.publish(
        &routing_requests_stream("demo"),
        &serde_json::to_vec(&req).expect("json"),
    ))
    .expect("publish");
    wait_until("one call waits", || {
        get(&sb, "/v1/tenants/demo/queues/sales")["waiting"] == 1
    });

    publish(&rt, &bus, &call_event(Event::EventRinging, 0xa1, "1003"));
    wait_until("a1003 busy", || agent_state(&sb, "a1003") == "busy");
    let metrics = sb.get("/metrics").expect("metrics").body;
    for name in [
        "switchboard_routing_targets_total",
        "switchboard_routing_timeouts_total",
        "switchboard_agents",
    ] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }

    // SIGKILL: the next process serves the state of the snapshots at once.
    drop(sb);
    let sb = start(&config);
    assert_eq!(agent_state(&sb, "a1001"), "ready");
    assert_eq!(agent_state(&sb, "a1002"), "not_ready");
    assert_eq!(agent_state(&sb, "a1003"), "busy");
    let queue = get(&sb, "/v1/tenants/demo/queues/sales");
    assert_eq!(queue["waiting"], 1, "{queue}");
    // Once it holds the leases (the dead process's ran out), it carries on: the call ends,
    // a1003 is Ready again; a1002 turns Ready and takes the waiting Spanish call.
    wait_until("agent-state is the writer again", || {
        get(&sb, "/v1/tenants/demo/agent-states")["writer"] == true
    });
    publish(&rt, &bus, &call_event(Event::EventReleased, 0xa1, "1003"));
    wait_until("a1003 ready after the call", || {
        agent_state(&sb, "a1003") == "ready"
    });
    let (status, _) = post(&sb, "/v1/tenants/demo/agents/a1002/ready", None);
    assert_eq!(status, 200);
    let reply = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let all = bus.read_range(REPLIES, None, 1000).await.expect("read");
            if let Some(e) = all.get(seen) {
                return serde_json::from_slice::<RoutingReply>(&e.payload).expect("reply");
            }
            assert!(Instant::now() < deadline, "the waiting call got no reply");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(
        matches!(&reply, RoutingReply::Target { agent_id, conn_id: ConnId(0xa4), .. } if agent_id == "a1002"),
        "{reply:?}"
    );
}

#[test]
fn embedded_bus_agent_state_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = switchboard_config::EXAMPLE_TOML.replace(
        "data_dir = \"./data\"",
        &format!("data_dir = {:?}", dir.path().display().to_string()),
    );
    // With the configuration API, whose /v1/tenants/{t}/agents are the agent entities.
    let sb = Switchboard::builder()
        .binary(BIN)
        .config(&config)
        .roles(&["config", "agent-state"])
        .spawn()
        .expect("switchboard starts");
    wait_until("agent-state is the writer", || {
        get(&sb, "/v1/tenants/demo/agent-states")["writer"] == true
    });
    let entities = get(&sb, "/v1/tenants/demo/agents");
    assert_eq!(entities["items"][0]["login_id"], "a1001", "{entities}");
    let (status, _) = post(
        &sb,
        "/v1/tenants/demo/agents/a1005/login",
        Some(r#"{"dn":"1009"}"#),
    );
    assert_eq!(status, 200);
    let (status, _) = post(&sb, "/v1/tenants/demo/agents/a1005/ready", None);
    assert_eq!(status, 200);
    let before = get(&sb, "/v1/tenants/demo/agent-states/a1005");
    assert_eq!(
        (before["state"].as_str(), before["dn"].as_str()),
        (Some("ready"), Some("1009"))
    );

    drop(sb); // SIGKILL
    let sb = Switchboard::builder()
        .binary(BIN)
        .config(&config)
        .roles(&["agent-state"])
        .spawn()
        .expect("switchboard starts again");
    let after = get(&sb, "/v1/tenants/demo/agent-states/a1005");
    assert_eq!(after["state"], "ready", "{after}");
    assert_eq!(after["dn"], "1009");
    assert_eq!(
        after["since"], before["since"],
        "the same state, not a new one"
    );
    wait_until("agent-state is the writer again", || {
        get(&sb, "/v1/tenants/demo/agent-states")["writer"] == true
    });
    let (status, body) = post(&sb, "/v1/tenants/demo/agents/a1005/logout", None);
    assert_eq!((status, body["this_dn"].as_str()), (200, Some("1009")));
    assert_eq!(agent_state(&sb, "a1005"), "logged_out");
}
