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

/// The issue's concurrency test, through the binary: 50 callers, the demo's 10 agents with
/// mixed skills, a simulated floor that answers each target and hangs up a little later (and,
/// for some calls, the lost race: the agent turns not ready while ringing, no answer, the call
/// is submitted again with its first `enqueued_ms`). Every call reaches an agent with the
/// right skill or overflows as configured; no agent gets two calls; no call is lost.
#[test]
fn fifty_callers_ten_agents_through_the_binary() {
    use std::collections::{BTreeMap, BTreeSet};
    use switchboard_services::routing::expr::Expr;

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
    let demo = switchboard_config::Config::demo();
    let agents: BTreeMap<String, (String, BTreeMap<String, u32>)> = demo.tenants[0]
        .agents
        .iter()
        .map(|a| {
            (
                a.login_id.clone(),
                (a.dn.clone().unwrap_or_default(), a.skills.clone()),
            )
        })
        .collect();
    let sb = start(&config);
    wait_until("both roles are writers", || {
        get(&sb, "/v1/tenants/demo/agent-states")["writer"] == true
            && get(&sb, "/v1/tenants/demo/queues")["writer"] == true
    });
    for agent in agents.keys() {
        for action in ["login", "ready"] {
            let (status, body) = post(
                &sb,
                &format!("/v1/tenants/demo/agents/{agent}/{action}"),
                None,
            );
            assert_eq!(status, 200, "{agent} {action}: {body}");
        }
    }

    // Nobody has sales >= 10: those calls overflow after their 2 s timeout.
    let expressions = [
        "sales >= 7",
        "support",
        "spanish",
        "english & sales >= 5",
        "sales >= 10",
        "support >= 8 | spanish",
        "!sales",
    ];
    const CALLS: u64 = 50;
    let expr_of = |conn: u64| expressions[(conn % expressions.len() as u64) as usize];
    let matchable = |conn: u64| {
        let e = Expr::parse(expr_of(conn)).expect("expression");
        agents.values().any(|(_, skills)| e.matches(skills))
    };
    let submission = |conn: u64, enqueued_ms: u64| RoutingRequest::Submit {
        tenant: "demo".into(),
        request_id: format!("c{conn}-{}", switchboard_services::single_writer::now_ms()),
        conn_id: ConnId(conn),
        queue: "mixed".into(),
        skills: expr_of(conn).into(),
        agent_group: None,
        priority: (conn % 3) as i32,
        enqueued_ms,
        timeout_s: (!matchable(conn)).then_some(2),
        reply_to: REPLIES.into(),
        user_data: UserData::new(),
    };
    let send = |req: &RoutingRequest| {
        rt.block_on(bus.publish(
            &routing_requests_stream("demo"),
            &serde_json::to_vec(req).expect("json"),
        ))
        .expect("publish");
    };
    let start_ms = switchboard_services::single_writer::now_ms();
    let first_enqueued: BTreeMap<u64, u64> = (1..=CALLS).map(|c| (c, start_ms + c)).collect();
    for conn in 1..=CALLS {
        send(&submission(conn, first_enqueued[&conn]));
    }

    // The floor.
    let mut busy: BTreeMap<String, u64> = BTreeMap::new(); // agent -> call
    let mut hangups: Vec<(Instant, u64, String)> = Vec::new(); // when, call, agent
    let mut done = BTreeSet::new();
    let mut overflowed = BTreeSet::new();
    let mut raced = BTreeSet::new();
    let mut not_ready: Vec<(Instant, String)> = Vec::new();
    let mut after = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.len() + overflowed.len() < CALLS as usize {
        assert!(
            Instant::now() < deadline,
            "calls never ended: done {done:?}, overflowed {overflowed:?}, busy {busy:?}"
        );
        let page = rt
            .block_on(bus.read_range(REPLIES, after, 100))
            .expect("read replies");
        for entry in &page {
            after = Some(entry.id);
            match serde_json::from_slice::<RoutingReply>(&entry.payload).expect("a reply") {
                RoutingReply::Target {
                    conn_id,
                    agent_id,
                    dn,
                    ..
                } => {
                    let conn = conn_id.0;
                    let (agent_dn, skills) = &agents[&agent_id];
                    assert_eq!(&dn, agent_dn);
                    let expr = Expr::parse(expr_of(conn)).expect("expression");
                    assert!(
                        expr.matches(skills),
                        "{agent_id} {skills:?} for {}",
                        expr_of(conn)
                    );
                    assert!(
                        !busy.contains_key(&agent_id),
                        "{agent_id} given call {conn} while on call {:?}",
                        busy.get(&agent_id)
                    );
                    assert!(!done.contains(&conn), "call {conn} routed twice");
                    publish(&rt, &bus, &call_event(Event::EventRinging, conn, &dn));
                    busy.insert(agent_id.clone(), conn);
                    if conn % 7 == 0 && raced.insert(conn) {
                        // The lost race: not ready while ringing, no answer, submitted again.
                        let (status, _) = post(
                            &sb,
                            &format!("/v1/tenants/demo/agents/{agent_id}/not-ready"),
                            None,
                        );
                        assert_eq!(status, 200);
                        publish(&rt, &bus, &call_event(Event::EventReleased, conn, &dn));
                        busy.remove(&agent_id);
                        send(&submission(conn, first_enqueued[&conn]));
                        not_ready.push((Instant::now() + Duration::from_millis(300), agent_id));
                    } else {
                        publish(&rt, &bus, &call_event(Event::EventEstablished, conn, &dn));
                        let talk = Duration::from_millis(50 + (conn * 37) % 200);
                        hangups.push((Instant::now() + talk, conn, agent_id));
                    }
                }
                RoutingReply::Timeout { conn_id, .. } => {
                    assert!(
                        !matchable(conn_id.0),
                        "call {} matchable, yet it timed out",
                        conn_id.0
                    );
                    assert!(
                        overflowed.insert(conn_id.0),
                        "call {} timed out twice",
                        conn_id.0
                    );
                }
                RoutingReply::Rejected { reason, .. } => panic!("rejected: {reason}"),
            }
        }
        let now = Instant::now();
        for (_, conn, agent) in hangups.iter().filter(|(at, _, _)| *at <= now) {
            let dn = &agents[agent].0;
            publish(&rt, &bus, &call_event(Event::EventReleased, *conn, dn));
            busy.remove(agent);
            done.insert(*conn);
        }
        hangups.retain(|(at, _, _)| *at > now);
        for (_, agent) in not_ready.iter().filter(|(at, _)| *at <= now) {
            let (status, _) = post(&sb, &format!("/v1/tenants/demo/agents/{agent}/ready"), None);
            assert_eq!(status, 200);
        }
        not_ready.retain(|(at, _)| *at > now);
        if page.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let unmatched = (1..=CALLS).filter(|c| !matchable(*c)).count();
    assert_eq!(
        overflowed.len(),
        unmatched,
        "only the unmatchable calls overflow"
    );
    assert_eq!(
        done.len() + overflowed.len(),
        CALLS as usize,
        "no call is lost"
    );
    assert!(!raced.is_empty());
    wait_until("the queue is empty", || {
        get(&sb, "/v1/tenants/demo/queues/mixed")["waiting"] == 0
    });
}

/// The registrar's DN service events: an agent whose phone unregisters is out of service and
/// gets no call; when the phone registers again, the waiting call goes to the agent.
#[test]
fn dn_out_of_service_while_the_phone_is_unregistered() {
    use switchboard_testkit::{free_udp_port, scenario_file, Sipp};

    if !require_program("redis-server") || !require_program("sipp") {
        return;
    }
    let redis = RedisServer::spawn().expect("redis-server starts");
    let dir = tempfile::tempdir().expect("tempdir");
    // SIPp answers digest challenges with MD5 only.
    let config = config(&redis.url(), &dir.path().display().to_string());
    assert!(config.contains("algorithms = [\"MD5\"]"));
    let rt = runtime();
    let bus: SharedBus = Arc::new(
        rt.block_on(RedisBus::connect(&redis.url()))
            .expect("connect to redis"),
    );
    let sb = Switchboard::builder()
        .binary(BIN)
        .config(&config)
        .roles(&["sip-proxy", "registrar", "agent-state", "routing"])
        .spawn()
        .expect("switchboard starts");
    let sipp_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sipp");
    let contact = format!("127.0.0.1:{}", free_udp_port().expect("port"));
    let register = |expires: &str| {
        let mut xml = scenario_file(
            &sipp_dir,
            "register",
            &[
                ("USER", "1003"),
                ("CONTACT", &contact),
                ("EXPIRES", expires),
                ("PASSWORD", "secret"),
            ],
        )
        .expect("scenario");
        if expires == "0" {
            // Removed: the 200 lists no binding to check.
            let start = xml.find("<recv response=\"200\">").expect("200");
            let end = xml.find("</scenario>").expect("end");
            xml.replace_range(start..end, "<recv response=\"200\"/>\n");
        }
        let out = Sipp::scenario(&xml)
            .arg("-p")
            .arg(&free_udp_port().expect("port").to_string())
            .remote(sb.sip_udp_addr().expect("sip address"))
            .timeout(Duration::from_secs(15))
            .run()
            .expect("sipp runs");
        assert!(
            out.success(),
            "REGISTER Expires {expires}:\n{}",
            out.report()
        );
    };
    let dn_events = |name: &str| {
        rt.block_on(bus.read_range("events:demo", None, 10_000))
            .expect("read")
            .iter()
            .filter_map(|e| Event::from_json(std::str::from_utf8(&e.payload).ok()?).ok())
            .filter(|e| e.name() == name && e.this_dn() == Some("1003"))
            .count()
    };

    wait_until("agent-state is the writer", || {
        get(&sb, "/v1/tenants/demo/agent-states")["writer"] == true
            && get(&sb, "/v1/tenants/demo/queues")["writer"] == true
    });
    for action in ["login", "ready"] {
        let (status, _) = post(
            &sb,
            &format!("/v1/tenants/demo/agents/a1003/{action}"),
            None,
        );
        assert_eq!(status, 200);
    }
    register("120");
    wait_until("EventDNBackInService for 1003", || {
        dn_events("EventDNBackInService") == 1
    });
    register("0");
    wait_until("EventDNOutOfService for 1003", || {
        dn_events("EventDNOutOfService") == 1
    });
    wait_until("a1003 out of service", || {
        get(&sb, "/v1/tenants/demo/agent-states/a1003")["in_service"] == false
    });
    // Only a1003 (sales 8) matches and is logged in: the call waits while its phone is away.
    let req = submit(0xb1, "sales = 8", None);
    rt.block_on(bus.publish(
        &routing_requests_stream("demo"),
        &serde_json::to_vec(&req).expect("json"),
    ))
    .expect("publish");
    wait_until("the call waits", || {
        get(&sb, "/v1/tenants/demo/queues/sales")["waiting"] == 1
    });
    assert!(rt
        .block_on(bus.read_range(REPLIES, None, 10))
        .expect("read")
        .is_empty());
    register("120");
    let mut seen = 0;
    let reply = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let all = bus.read_range(REPLIES, None, 10).await.expect("read");
            if let Some(e) = all.get(seen) {
                seen += 1;
                return serde_json::from_slice::<RoutingReply>(&e.payload).expect("reply");
            }
            assert!(Instant::now() < deadline, "no target once back in service");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(
        matches!(&reply, RoutingReply::Target { agent_id, .. } if agent_id == "a1003"),
        "{reply:?}"
    );
}

#[test]
fn an_agent_created_over_the_config_api_logs_in_and_gets_calls() {
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
    let sb = Switchboard::builder()
        .binary(BIN)
        .config(&config)
        .roles(&["config", "agent-state", "routing"])
        .spawn()
        .expect("switchboard starts");
    wait_until("both writers", || {
        get(&sb, "/v1/tenants/demo/agent-states")["writer"] == true
            && get(&sb, "/v1/tenants/demo/queues")["writer"] == true
    });
    let (status, _) = post(&sb, "/v1/tenants/demo/agents/a2001/login", None);
    assert_eq!(status, 404, "no such agent yet");

    let (status, body) = post(
        &sb,
        "/v1/tenants/demo/agents",
        Some(r#"{"login_id":"a2001","name":"New Hire","skills":{"sales":10}}"#),
    );
    assert_eq!(status, 201, "{body}");
    let mut login = (0, Value::Null);
    wait_until("agent-state knows a2001", || {
        login = post(
            &sb,
            "/v1/tenants/demo/agents/a2001/login",
            Some(r#"{"dn":"1005"}"#),
        );
        login.0 != 404
    });
    assert_eq!(login.0, 200, "{}", login.1);
    let (status, _) = post(&sb, "/v1/tenants/demo/agents/a2001/ready", None);
    assert_eq!(status, 200);
    // Only the new agent has sales 10: routing knows its skills too.
    let mut seen = 0;
    let reply = route(&rt, &bus, &submit(0xb1, "sales >= 10", None), &mut seen);
    assert_eq!(
        reply,
        RoutingReply::Target {
            request_id: "req-177".into(),
            conn_id: ConnId(0xb1),
            agent_id: "a2001".into(),
            dn: "1005".into()
        }
    );
}
