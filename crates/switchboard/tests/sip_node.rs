//! The SIP Server (`sip-node`) against real SIPp, with the SIP edge and call-state in the same
//! process: a carrier calls a registered phone through the B2BUA, a phone calls out through a
//! trunk, call control over REST, and the TLib events on the bus and in call-state.

mod common;

use common::{background, free_port, party_state, register, scenario, sipp};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use switchboard_bus::{EmbeddedBus, RedisBus, SharedBus};
use switchboard_events::Event;
use switchboard_testkit::{http_request, require_program, RedisServer, Switchboard};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// `bus`: extra TOML for `[bus]` (empty for the embedded bus); `entities`: TOML of
/// `[[tenants.*]]` entries of tenant `demo` (empty for none).
fn config_with(data_dir: &Path, trunk_port: u16, bus: &str, entities: &str) -> String {
    format!(
        r#"data_dir = {:?}
{bus}

[registrar]
algorithms = ["MD5"]

[sip_node]
trunks = ["127.0.0.1:{trunk_port}"]

[[tenants]]
name = "demo"
domain = "switchboard"
[[tenants.users]]
user = "1001"
password = "secret"
[[tenants.users]]
user = "1002"
password = "secret"
{entities}"#,
        data_dir.display().to_string()
    )
}

fn start(dir: &Path, trunk_port: u16) -> Option<Switchboard> {
    start_with(dir, trunk_port, None)
}

/// With `redis`, the bus is that Redis server.
fn start_with(dir: &Path, trunk_port: u16, redis: Option<&RedisServer>) -> Option<Switchboard> {
    start_full(dir, trunk_port, redis, "")
}

/// [`start_with`] with tenant entities (see [`config_with`]).
fn start_full(
    dir: &Path,
    trunk_port: u16,
    redis: Option<&RedisServer>,
    entities: &str,
) -> Option<Switchboard> {
    if !require_program("sipp") {
        return None;
    }
    let bus = match redis {
        Some(r) => format!("[bus]\nbackend = \"redis\"\nredis_url = {:?}\n", r.url()),
        None => String::new(),
    };
    Some(
        Switchboard::builder()
            .binary(BIN)
            .config(&config_with(dir, trunk_port, &bus, entities))
            .roles(&["sip-proxy", "registrar", "sip-node", "call-state"])
            .spawn()
            .expect("switchboard starts"),
    )
}

fn request(sb: &Switchboard, method: &str, path: &str, body: &str) -> (u16, String, Value) {
    let r = http_request(sb.http_addr(), method, path, Some(body)).expect("HTTP request");
    let ct = r.header("content-type").unwrap_or("").to_string();
    (
        r.status,
        ct,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

fn calls(sb: &Switchboard, state: &str) -> Vec<Value> {
    let r = sb
        .get(&format!("/v1/tenants/demo/calls?state={state}"))
        .expect("GET calls");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("JSON");
    v["calls"].as_array().cloned().unwrap_or_default()
}

/// Polls call-state until `pred` holds for some call in `state`.
fn wait_call(sb: &Switchboard, state: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = calls(sb, state);
        if let Some(c) = list.iter().find(|c| pred(c)) {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no such {state} call in {list:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The events on `events:demo`, read from the embedded bus file once the process is gone.
fn bus_events(sb: &mut Switchboard, dir: &Path) -> Vec<Event> {
    bus_events_with(sb, dir, None)
}

/// Stops the process cleanly, then reads `events:demo` from the embedded bus file or from
/// `redis`.
fn bus_events_with(sb: &mut Switchboard, dir: &Path, redis: Option<&RedisServer>) -> Vec<Event> {
    sb.terminate().expect("SIGTERM");
    let status = sb.wait_exit(Duration::from_secs(15)).expect("wait");
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let bus: SharedBus = match redis {
            Some(r) => Arc::new(RedisBus::connect(&r.url()).await.expect("redis")),
            None => Arc::new(EmbeddedBus::open(&dir.join("bus.db")).expect("bus file")),
        };
        bus.read_range("events:demo", None, 1000)
            .await
            .expect("read")
            .into_iter()
            .map(|e| Event::from_json(&String::from_utf8_lossy(&e.payload)).expect("an event"))
            // The call events: the registrar's EventDNBackInService / EventDNOutOfService for
            // the registering phones share the stream but are not these tests' subject.
            .filter(|e| e.call().is_some())
            .collect()
    })
}

fn seq(events: &[Event]) -> Vec<(&'static str, String)> {
    events
        .iter()
        .map(|e| (e.name(), e.this_dn().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn carrier_call_to_a_registered_phone_released_over_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut sb) = start(dir.path(), free_port()) else {
        return;
    };
    let node = sb
        .addr("sip_node_udp")
        .expect("sip_node_udp in the listening line");
    let phone = free_port();
    register(&sb, "1002", phone);
    let callee = background(scenario("callee", &[]), None, phone);
    let carrier = background(
        scenario(
            "carrier_wait_bye",
            &[("CALLEE", "1002"), ("WAIT_MS", "15000")],
        ),
        Some(node),
        free_port(),
    );
    let call = wait_call(&sb, "active", |c| {
        party_state(c, "1002").as_deref() == Some("established")
    });
    let conn = call["conn_id"].as_str().expect("conn_id").to_string();
    assert_eq!(call["call_type"], "inbound", "{call}");

    // Bad requests get problems, the call is untouched.
    let base = format!("/v1/tenants/demo/calls/{conn}");
    let (status, ct, body) = request(&sb, "POST", &format!("{base}/hold"), "{not json");
    assert_eq!(
        (status, ct.as_str()),
        (400, "application/problem+json"),
        "{body}"
    );
    let (status, _, _) = request(
        &sb,
        "POST",
        "/v1/tenants/demo/calls/00000000000000ff/release",
        r#"{"dn":"1002"}"#,
    );
    assert_eq!(status, 404, "unknown call");
    let (status, _, _) = request(
        &sb,
        "POST",
        &format!("/v1/tenants/nope/calls/{conn}/release"),
        r#"{"dn":"1002"}"#,
    );
    assert_eq!(status, 404, "unknown tenant");
    let (status, _, body) = request(
        &sb,
        "POST",
        &format!("{base}/transfer"),
        r#"{"dn":"1002","to":"77"}"#,
    );
    assert_eq!(status, 422, "invalid destination: {body}");

    let (status, _, body) = request(
        &sb,
        "POST",
        &format!("{base}/user-data"),
        r#"{"dn":"1002","data":{"case":"42"}}"#,
    );
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = request(&sb, "POST", &format!("{base}/release"), r#"{"dn":"1002"}"#);
    assert_eq!(status, 202, "{body}");
    let release_id = body["request_id"].as_u64().expect("request_id");
    assert_eq!(body["conn_id"], conn.as_str());

    let carrier = carrier.join().expect("carrier thread");
    let callee = callee.join().expect("callee thread");
    assert!(carrier.success(), "carrier:\n{}", carrier.report());
    assert!(callee.success(), "phone:\n{}", callee.report());

    let done = wait_call(&sb, "released", |c| c["conn_id"] == conn.as_str());
    assert_eq!(
        party_state(&done, "1002").as_deref(),
        Some("released"),
        "{done}"
    );
    assert_eq!(done["user_data"]["case"], "42", "{done}");

    let events = bus_events(&mut sb, dir.path());
    assert_eq!(
        seq(&events),
        vec![
            ("EventRinging", "1002".into()),
            ("EventEstablished", "1002".into()),
            ("EventAttachedDataChanged", "1002".into()),
            ("EventReleased", "1002".into()),
        ]
    );
    let released = events[3].call().expect("call event");
    assert_eq!(released.request_id, Some(release_id));
    assert_eq!(released.other_dn.as_deref(), Some("+15551234567"));
    assert!(events
        .iter()
        .all(|e| e.call().and_then(|c| c.conn_id).map(|c| c.to_string()) == Some(conn.clone())));
}

#[test]
fn phone_calls_out_through_the_trunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trunk = free_port();
    let Some(mut sb) = start(dir.path(), trunk) else {
        return;
    };
    let gateway = background(scenario("trunk_uas", &[]), None, trunk);
    // 1001's phone calls through the edge, which hands the new call to the SIP Server.
    let phone = sipp(
        &scenario("caller", &[("CALLEE", "+15550001111")]),
        sb.sip_udp_addr(),
        free_port(),
    )
    .run()
    .expect("sipp runs");
    let gateway = gateway.join().expect("gateway thread");
    assert!(phone.success(), "phone:\n{}", phone.report());
    assert!(gateway.success(), "trunk:\n{}", gateway.report());

    let done = wait_call(&sb, "released", |c| party_state(c, "1001").is_some());
    assert_eq!(done["call_type"], "outbound", "{done}");
    let events = bus_events(&mut sb, dir.path());
    assert_eq!(
        seq(&events),
        vec![
            ("EventDialing", "1001".into()),
            ("EventEstablished", "1001".into()),
            ("EventReleased", "1001".into()),
        ]
    );
    assert_eq!(
        events[0].call().unwrap().other_dn.as_deref(),
        Some("+15550001111")
    );
}

/// Waits until call `conn` satisfies `pred` in call-state.
fn wait_conn(sb: &Switchboard, conn: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_call(sb, "all", |c| c["conn_id"] == conn && pred(c))
}

fn post(sb: &Switchboard, path: &str, body: &str) -> u64 {
    let (status, _, json) = request(sb, "POST", path, body);
    assert_eq!(status, 202, "POST {path} {body}: {json}");
    json["request_id"].as_u64().expect("request_id")
}

#[test]
fn hold_retrieve_and_single_step_transfer_over_rest() {
    hold_retrieve_transfer(None);
}

#[test]
fn hold_retrieve_and_transfer_with_the_redis_bus() {
    if !require_program("redis-server") {
        return;
    }
    let redis = RedisServer::spawn().expect("redis-server starts");
    hold_retrieve_transfer(Some(&redis));
}

fn hold_retrieve_transfer(redis: Option<&RedisServer>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut sb) = start_with(dir.path(), free_port(), redis) else {
        return;
    };
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    let (p1, p2) = (free_port(), free_port());
    register(&sb, "1001", p1);
    register(&sb, "1002", p2);
    let phone2 = background(scenario("callee", &[]), None, p2);
    let phone1 = background(scenario("callee", &[]), None, p1);
    let carrier = background(
        scenario(
            "carrier_hold_transfer",
            &[("CALLEE", "1002"), ("WAIT_MS", "15000")],
        ),
        Some(node),
        free_port(),
    );
    let call = wait_call(&sb, "active", |c| {
        party_state(c, "1002").as_deref() == Some("established")
    });
    let conn = call["conn_id"].as_str().expect("conn_id").to_string();
    let base = format!("/v1/tenants/demo/calls/{conn}");

    let hold = post(&sb, &format!("{base}/hold"), r#"{"dn":"1002"}"#);
    wait_conn(&sb, &conn, |c| {
        party_state(c, "1002").as_deref() == Some("held")
    });
    let retrieve = post(&sb, &format!("{base}/retrieve"), r#"{"dn":"1002"}"#);
    wait_conn(&sb, &conn, |c| c["last_event"] == "EventRetrieved");
    let transfer = post(
        &sb,
        &format!("{base}/transfer"),
        r#"{"dn":"1002","to":"1001"}"#,
    );
    wait_conn(&sb, &conn, |c| {
        party_state(c, "1001").as_deref() == Some("established")
    });
    let release = post(&sb, &format!("{base}/release"), r#"{"dn":"1001"}"#);

    for (who, h) in [("carrier", carrier), ("1002", phone2), ("1001", phone1)] {
        let out = h.join().expect("sipp thread");
        assert!(out.success(), "{who}:\n{}", out.report());
    }
    let events = bus_events_with(&mut sb, dir.path(), redis);
    assert_eq!(
        seq(&events),
        vec![
            ("EventRinging", "1002".into()),
            ("EventEstablished", "1002".into()),
            ("EventHeld", "1002".into()),
            ("EventRetrieved", "1002".into()),
            ("EventReleased", "1002".into()),
            ("EventRinging", "1001".into()),
            ("EventEstablished", "1001".into()),
            ("EventReleased", "1001".into()),
        ]
    );
    let req = |i: usize| events[i].call().and_then(|c| c.request_id);
    assert_eq!(
        [req(2), req(3), req(4), req(7)],
        [Some(hold), Some(retrieve), Some(transfer), Some(release)]
    );
    let transferred = events[4].call().unwrap();
    assert_eq!(
        transferred.this_role,
        Some(switchboard_events::PartyRole::TransferredBy)
    );
    assert_eq!(transferred.third_party_dn.as_deref(), Some("1001"));
    assert!(events.iter().all(|e| e
        .call()
        .and_then(|c| c.conn_id)
        .is_some_and(|c| c.to_string() == conn)));
}

/// The events of one ConnID, in order.
fn of_call<'a>(events: &'a [Event], conn: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| {
            e.call()
                .and_then(|c| c.conn_id)
                .is_some_and(|c| c.to_string() == conn)
        })
        .collect()
}

fn seq_of(events: &[&Event]) -> Vec<(&'static str, String)> {
    events
        .iter()
        .map(|e| (e.name(), e.this_dn().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn consult_and_complete_transfer_over_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut sb) = start(dir.path(), free_port()) else {
        return;
    };
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    let (p1, p2) = (free_port(), free_port());
    register(&sb, "1001", p1);
    register(&sb, "1002", p2);
    let agent_xml = scenario("agent_consult", &[]);
    let agent = thread::spawn(move || {
        sipp(&agent_xml, None, p2)
            .calls(2)
            .run()
            .expect("sipp runs")
    });
    let consulted = background(scenario("callee_reinvite", &[]), None, p1);
    let carrier = background(
        scenario(
            "carrier_consult",
            &[("CALLEE", "1002"), ("WAIT_MS", "15000")],
        ),
        Some(node),
        free_port(),
    );
    let call = wait_call(&sb, "active", |c| {
        party_state(c, "1002").as_deref() == Some("established")
    });
    let conn = call["conn_id"].as_str().expect("conn_id").to_string();
    let base = format!("/v1/tenants/demo/calls/{conn}");
    post(
        &sb,
        &format!("{base}/user-data"),
        r#"{"dn":"1002","data":{"case":"7"}}"#,
    );

    let consult = post(
        &sb,
        &format!("{base}/consult"),
        r#"{"dn":"1002","to":"1001"}"#,
    );
    let c2 = wait_call(&sb, "active", |c| {
        c["call_type"] == "consult" && party_state(c, "1001").as_deref() == Some("established")
    });
    let conn2 = c2["conn_id"].as_str().expect("conn_id").to_string();
    wait_conn(&sb, &conn, |c| {
        party_state(c, "1002").as_deref() == Some("held")
    });
    let complete = post(&sb, &format!("{base}/complete"), r#"{"dn":"1002"}"#);
    wait_conn(&sb, &conn, |c| c["last_event"] == "EventPartyChanged");
    let release = post(&sb, &format!("{base}/release"), r#"{"dn":"1001"}"#);

    for (who, h) in [("carrier", carrier), ("1002", agent), ("1001", consulted)] {
        let out = h.join().expect("sipp thread");
        assert!(out.success(), "{who}:\n{}", out.report());
    }
    let events = bus_events(&mut sb, dir.path());
    let first = of_call(&events, &conn);
    assert_eq!(
        seq_of(&first),
        vec![
            ("EventRinging", "1002".into()),
            ("EventEstablished", "1002".into()),
            ("EventAttachedDataChanged", "1002".into()),
            ("EventHeld", "1002".into()),
            ("EventReleased", "1002".into()),
            ("EventPartyChanged", "1001".into()),
            ("EventReleased", "1001".into()),
        ]
    );
    let second = of_call(&events, &conn2);
    assert_eq!(
        seq_of(&second),
        vec![
            ("EventDialing", "1002".into()),
            ("EventRinging", "1001".into()),
            ("EventEstablished", "1001".into()),
            ("EventEstablished", "1002".into()),
            ("EventReleased", "1002".into()),
        ]
    );
    let attrs = |e: &Event| e.call().cloned().expect("call event");
    assert_eq!(
        attrs(first[3]).request_id,
        Some(consult),
        "EventHeld confirms the consult"
    );
    assert_eq!(attrs(second[0]).request_id, Some(consult));
    assert_eq!(attrs(second[0]).user_data["case"], "7", "user data copied");
    assert_eq!(attrs(first[4]).request_id, Some(complete));
    let changed = attrs(first[5]);
    assert_eq!(changed.previous_conn_id.map(|c| c.to_string()), Some(conn2));
    assert_eq!(changed.third_party_dn.as_deref(), Some("1002"));
    assert_eq!(changed.other_dn.as_deref(), Some("+15551234567"));
    assert_eq!(attrs(first[6]).request_id, Some(release));
}

#[test]
fn make_call_over_rest_between_two_phones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut sb) = start(dir.path(), free_port()) else {
        return;
    };
    let (p1, p2) = (free_port(), free_port());
    register(&sb, "1001", p1);
    register(&sb, "1002", p2);
    // 1001's phone auto-answers the offerless INVITE (its offer in the 200) and takes the
    // re-INVITE with 1002's media; 1002's phone rings and answers.
    let origin = background(scenario("agent_consult", &[]), None, p1);
    let dest = background(scenario("callee", &[]), None, p2);
    let (status, ct, body) = request(
        &sb,
        "POST",
        "/v1/tenants/demo/calls",
        r#"{"dn":"1001","to":"1002"}"#,
    );
    assert_eq!(status, 202, "{body}");
    let make = body["request_id"].as_u64().expect("request_id");
    assert!(ct.starts_with("application/json"), "{ct}");
    let call = wait_call(&sb, "active", |c| {
        party_state(c, "1001").as_deref() == Some("established")
            && party_state(c, "1002").as_deref() == Some("established")
    });
    let conn = call["conn_id"].as_str().expect("conn_id").to_string();
    assert_eq!(call["call_type"], "internal", "{call}");
    post(
        &sb,
        &format!("/v1/tenants/demo/calls/{conn}/release"),
        r#"{"dn":"1001"}"#,
    );
    for (who, h) in [("1001", origin), ("1002", dest)] {
        let out = h.join().expect("sipp thread");
        assert!(out.success(), "{who}:\n{}", out.report());
    }
    let events = bus_events(&mut sb, dir.path());
    assert_eq!(
        seq(&events),
        vec![
            ("EventDialing", "1001".into()),
            ("EventRinging", "1002".into()),
            ("EventEstablished", "1002".into()),
            ("EventEstablished", "1001".into()),
            ("EventReleased", "1001".into()),
            ("EventReleased", "1002".into()),
        ]
    );
    assert_eq!(events[0].call().unwrap().request_id, Some(make));
}

/// Route point 5000 (60 s to route a call) and agent `a1002` on DN 1002.
const ROUTE_POINT: &str = r#"
[[tenants.dns]]
number = "1002"
kind = "extension"

[[tenants.dns]]
number = "5000"
kind = "route_point"

[[tenants.route_points]]
number = "5000"
strategy_url = "builtin:test"
timeout_s = 60

[[tenants.agents]]
login_id = "a1002"
dn = "1002"
"#;

#[test]
fn carrier_call_parks_at_a_route_point_and_is_routed_over_rest() {
    route_point_routed(None);
}

#[test]
fn route_point_routing_with_the_redis_bus() {
    if !require_program("redis-server") {
        return;
    }
    let redis = RedisServer::spawn().expect("redis-server starts");
    route_point_routed(Some(&redis));
}

fn route_point_routed(redis: Option<&RedisServer>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut sb) = start_full(dir.path(), free_port(), redis, ROUTE_POINT) else {
        return;
    };
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    let phone = free_port();
    register(&sb, "1002", phone);
    let callee = background(scenario("callee", &[]), None, phone);
    let carrier = background(
        scenario(
            "carrier_wait_bye",
            &[("CALLEE", "5000"), ("WAIT_MS", "15000")],
        ),
        Some(node),
        free_port(),
    );
    let call = wait_call(&sb, "active", |c| {
        party_state(c, "5000").as_deref() == Some("at_route_point")
    });
    let conn = call["conn_id"].as_str().expect("conn_id").to_string();
    let base = format!("/v1/tenants/demo/calls/{conn}");

    // Bad RouteCall requests are problems; the call keeps waiting.
    for (body, want) in [
        (r#"{"dn":"5000","to":"1002","route_type":"bogus"}"#, 400),
        (r#"{"dn":"5000"}"#, 400),
        (r#"{"dn":"5000","to":"77"}"#, 422),
        (r#"{"dn":"5000","to":"1002","x":1}"#, 400),
        ("[1,2]", 400),
    ] {
        let (status, ct, json) = request(&sb, "POST", &format!("{base}/route"), body);
        assert_eq!(status, want, "{body}: {json}");
        assert_eq!(ct, "application/problem+json", "{body}");
    }
    let (status, _, _) = request(
        &sb,
        "POST",
        "/v1/tenants/demo/calls/00000000000000ff/route",
        r#"{"dn":"5000","to":"1002"}"#,
    );
    assert_eq!(status, 404, "unknown call");

    let route = post(
        &sb,
        &format!("{base}/route"),
        r#"{"dn":"5000","to":"1002","route_type":"default"}"#,
    );
    wait_conn(&sb, &conn, |c| {
        party_state(c, "1002").as_deref() == Some("established")
    });
    let release = post(&sb, &format!("{base}/release"), r#"{"dn":"1002"}"#);
    for (who, h) in [("carrier", carrier), ("1002", callee)] {
        let out = h.join().expect("sipp thread");
        assert!(out.success(), "{who}:\n{}", out.report());
    }

    let events = bus_events_with(&mut sb, dir.path(), redis);
    assert_eq!(
        seq(&events),
        vec![
            ("EventRouteRequest", "5000".into()),
            ("EventDiverted", "5000".into()),
            ("EventRinging", "1002".into()),
            ("EventEstablished", "1002".into()),
            ("EventReleased", "1002".into()),
        ]
    );
    let attrs: Vec<_> = events
        .iter()
        .map(|e| e.call().expect("call event"))
        .collect();
    assert!(attrs
        .iter()
        .all(|c| c.conn_id.map(|c| c.to_string()).as_deref() == Some(conn.as_str())));
    let rr = attrs[0];
    assert_eq!(
        rr.other_dn.as_deref(),
        Some("+15551234567"),
        "OtherDN is the caller"
    );
    assert_eq!(rr.ani.as_deref(), Some("+15551234567"));
    assert_eq!(rr.dnis.as_deref(), Some("5000"));
    assert_eq!(rr.agent_id, None);
    assert_eq!(
        attrs[1].request_id,
        Some(route),
        "EventDiverted confirms RouteCall"
    );
    assert_eq!(attrs[1].third_party_dn.as_deref(), Some("1002"));
    assert_eq!(attrs[2].third_party_dn.as_deref(), Some("5000"));
    for a in &attrs[2..] {
        assert_eq!(
            a.agent_id.as_deref(),
            Some("a1002"),
            "AgentID on 1002's events"
        );
    }
    assert_eq!(attrs[4].request_id, Some(release));
}

#[test]
fn a_caller_that_hangs_up_at_a_route_point_is_abandoned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut sb) = start_full(dir.path(), free_port(), None, ROUTE_POINT) else {
        return;
    };
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    // DN 1001 calls the route point straight at the SIP Server, hears ringback (180),
    // cancels: 487.
    let out = sipp(
        &scenario("caller_cancel", &[("CALLEE", "5000")]),
        Some(node),
        free_port(),
    )
    .run()
    .expect("sipp runs");
    assert!(out.success(), "caller:\n{}", out.report());
    let done = wait_call(&sb, "released", |c| party_state(c, "5000").is_some());
    assert_eq!(
        party_state(&done, "5000").as_deref(),
        Some("abandoned"),
        "{done}"
    );
    let events = bus_events(&mut sb, dir.path());
    assert_eq!(
        seq(&events),
        vec![
            ("EventDialing", "1001".into()),
            ("EventRouteRequest", "5000".into()),
            ("EventReleased", "1001".into()),
            ("EventAbandoned", "5000".into()),
        ]
    );
    let abandoned = events[3].call().expect("call event");
    assert_eq!(abandoned.other_dn.as_deref(), Some("1001"));
}

/// The route point of [`ROUTE_POINT`] and ACD queue 6000 (no timeout: calls wait until
/// they are distributed).
fn with_queue() -> String {
    format!(
        r#"{ROUTE_POINT}
[[tenants.dns]]
number = "6000"
kind = "queue"
"#
    )
}

#[test]
fn carrier_call_waits_in_a_queue_and_is_distributed_over_rest() {
    queue_distributed(false);
}

#[test]
fn a_call_routed_from_a_route_point_to_a_queue_is_queued_there() {
    queue_distributed(true);
}

/// A carrier calls queue 6000 (or route point 5000, which routes the call to the queue); the
/// call waits unanswered with EventQueued until a RouteCall by the queue distributes it to
/// the phone on 1002.
fn queue_distributed(via_route_point: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut sb) = start_full(dir.path(), free_port(), None, &with_queue()) else {
        return;
    };
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    let phone = free_port();
    register(&sb, "1002", phone);
    let callee = background(scenario("callee", &[]), None, phone);
    let dialled = if via_route_point { "5000" } else { "6000" };
    let carrier = background(
        scenario(
            "carrier_wait_bye",
            &[("CALLEE", dialled), ("WAIT_MS", "15000")],
        ),
        Some(node),
        free_port(),
    );
    let conn = if via_route_point {
        let call = wait_call(&sb, "active", |c| {
            party_state(c, "5000").as_deref() == Some("at_route_point")
        });
        let conn = call["conn_id"].as_str().expect("conn_id").to_string();
        post(
            &sb,
            &format!("/v1/tenants/demo/calls/{conn}/route"),
            r#"{"dn":"5000","to":"6000"}"#,
        );
        conn
    } else {
        String::new()
    };
    let call = wait_call(&sb, "active", |c| {
        party_state(c, "6000").as_deref() == Some("queued")
    });
    let conn = if via_route_point {
        assert_eq!(
            call["conn_id"].as_str(),
            Some(conn.as_str()),
            "the same call"
        );
        conn
    } else {
        call["conn_id"].as_str().expect("conn_id").to_string()
    };
    let base = format!("/v1/tenants/demo/calls/{conn}");

    // Distributing to an invalid number is a problem; the call keeps waiting.
    let (status, ct, json) = request(
        &sb,
        "POST",
        &format!("{base}/route"),
        r#"{"dn":"6000","to":"77"}"#,
    );
    assert_eq!(status, 422, "{json}");
    assert_eq!(ct, "application/problem+json");

    let route = post(
        &sb,
        &format!("{base}/route"),
        r#"{"dn":"6000","to":"1002"}"#,
    );
    wait_conn(&sb, &conn, |c| {
        party_state(c, "1002").as_deref() == Some("established")
    });
    let release = post(&sb, &format!("{base}/release"), r#"{"dn":"1002"}"#);
    for (who, h) in [("carrier", carrier), ("1002", callee)] {
        let out = h.join().expect("sipp thread");
        assert!(out.success(), "{who}:\n{}", out.report());
    }

    let events = bus_events(&mut sb, dir.path());
    let mut want = Vec::new();
    if via_route_point {
        want.push(("EventRouteRequest", "5000".to_string()));
        want.push(("EventDiverted", "5000".into()));
    }
    want.extend([
        ("EventQueued", "6000".to_string()),
        ("EventDiverted", "6000".into()),
        ("EventRinging", "1002".into()),
        ("EventEstablished", "1002".into()),
        ("EventReleased", "1002".into()),
    ]);
    assert_eq!(seq(&events), want);
    let attrs: Vec<_> = events
        .iter()
        .map(|e| e.call().expect("call event"))
        .collect();
    assert!(attrs
        .iter()
        .all(|c| c.conn_id.map(|c| c.to_string()).as_deref() == Some(conn.as_str())));
    let attrs = &attrs[attrs.len() - 5..];
    let queued = attrs[0];
    assert_eq!(queued.this_dn, "6000");
    assert_eq!(
        queued.other_dn.as_deref(),
        Some("+15551234567"),
        "OtherDN is the caller"
    );
    assert_eq!(queued.ani.as_deref(), Some("+15551234567"));
    assert_eq!(queued.dnis.as_deref(), Some(dialled));
    assert_eq!(queued.agent_id, None);
    assert_eq!(
        queued.third_party_dn.as_deref(),
        via_route_point.then_some("5000"),
        "ThirdPartyDN is the route point the call came from"
    );
    assert_eq!(
        attrs[1].request_id,
        Some(route),
        "EventDiverted confirms RouteCall"
    );
    assert_eq!(attrs[1].third_party_dn.as_deref(), Some("1002"));
    assert_eq!(attrs[2].third_party_dn.as_deref(), Some("6000"));
    for a in &attrs[2..] {
        assert_eq!(
            a.agent_id.as_deref(),
            Some("a1002"),
            "AgentID on 1002's events"
        );
    }
    assert_eq!(attrs[4].request_id, Some(release));
}

#[test]
fn a_caller_that_hangs_up_in_a_queue_is_abandoned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut sb) = start_full(dir.path(), free_port(), None, &with_queue()) else {
        return;
    };
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    // DN 1001 calls the queue straight at the SIP Server, hears ringback (180), cancels: 487.
    let out = sipp(
        &scenario("caller_cancel", &[("CALLEE", "6000")]),
        Some(node),
        free_port(),
    )
    .run()
    .expect("sipp runs");
    assert!(out.success(), "caller:\n{}", out.report());
    let done = wait_call(&sb, "released", |c| party_state(c, "6000").is_some());
    assert_eq!(
        party_state(&done, "6000").as_deref(),
        Some("abandoned"),
        "{done}"
    );
    let events = bus_events(&mut sb, dir.path());
    assert_eq!(
        seq(&events),
        vec![
            ("EventDialing", "1001".into()),
            ("EventQueued", "6000".into()),
            ("EventReleased", "1001".into()),
            ("EventAbandoned", "6000".into()),
        ]
    );
    let abandoned = events[3].call().expect("call event");
    assert_eq!(abandoned.other_dn.as_deref(), Some("1001"));
}

#[test]
fn an_unanswered_call_is_forwarded_on_no_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entities = r#"
[[tenants.dns]]
number = "1002"
kind = "extension"
no_answer_timeout_s = 1
forward_no_answer = "1001"
"#;
    let Some(mut sb) = start_full(dir.path(), free_port(), None, entities) else {
        return;
    };
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    let (p1, p2) = (free_port(), free_port());
    register(&sb, "1001", p1);
    register(&sb, "1002", p2);
    let phone2 = background(scenario("callee_ringing", &[]), None, p2);
    let phone1 = background(scenario("callee", &[]), None, p1);
    let carrier = background(
        scenario(
            "carrier_wait_bye",
            &[("CALLEE", "1002"), ("WAIT_MS", "15000")],
        ),
        Some(node),
        free_port(),
    );
    let call = wait_call(&sb, "active", |c| {
        party_state(c, "1001").as_deref() == Some("established")
    });
    let conn = call["conn_id"].as_str().expect("conn_id").to_string();
    post(
        &sb,
        &format!("/v1/tenants/demo/calls/{conn}/release"),
        r#"{"dn":"1001"}"#,
    );
    for (who, h) in [("carrier", carrier), ("1002", phone2), ("1001", phone1)] {
        let out = h.join().expect("sipp thread");
        assert!(out.success(), "{who}:\n{}", out.report());
    }
    let events = bus_events(&mut sb, dir.path());
    assert_eq!(
        seq(&events),
        vec![
            ("EventRinging", "1002".into()),
            ("EventDiverted", "1002".into()),
            ("EventRinging", "1001".into()),
            ("EventEstablished", "1001".into()),
            ("EventReleased", "1001".into()),
        ]
    );
    let diverted = events[1].call().expect("call event");
    assert_eq!(diverted.reason.as_deref(), Some("forward_no_answer"));
    assert_eq!(diverted.third_party_dn.as_deref(), Some("1001"));
    let ringing = events[2].call().expect("call event");
    assert_eq!(ringing.third_party_dn.as_deref(), Some("1002"));
    assert_eq!(ringing.other_dn.as_deref(), Some("+15551234567"));
    // About one second between the first ringing and the diversion.
    let waited = diverted.ts_ms - events[0].call().expect("call").ts_ms;
    assert!((900..5000).contains(&waited), "forwarded after {waited} ms");
}
