//! A front-end on its own: process A runs the call-handling roles (SIP edge, sip-node,
//! call-state, agent-state, routing), process F only `front-end`, both on one Redis. The
//! desktop API of F answers the agent, queue and call-control requests as A does, over the
//! bus, behind F's own API-key gate.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{background, free_port, register, scenario};
use serde_json::Value;
use switchboard_bus::{RedisBus, SharedBus};
use switchboard_events::requests::{routing_requests_stream, RoutingRequest};
use switchboard_events::{ConnId, UserData};
use switchboard_testkit::{http_request_with, require_program, RedisServer, Switchboard};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const ADMIN: &str = "demo-admin-key-change-me";
/// A platform key: it reaches unknown tenants too, so that F's answers for them show.
const PLATFORM: &str = "test-platform-key-0001";
const AGENT_1002: &str = "demo-agent-a1002-key";

fn config(data_dir: &Path, redis: &RedisServer) -> String {
    format!(
        r#"data_dir = {dir:?}
[bus]
backend = "redis"
redis_url = {url:?}

[http]
admin_keys = ["{PLATFORM}"]

[registrar]
algorithms = ["MD5"]

[sip_node]
trunks = ["127.0.0.1:{trunk}"]

[[tenants]]
name = "demo"
domain = "switchboard"
[[tenants.users]]
user = "1001"
password = "secret"
[[tenants.users]]
user = "1002"
password = "secret"
[[tenants.skills]]
name = "sales"
[[tenants.dns]]
number = "1001"
kind = "extension"
[[tenants.dns]]
number = "1002"
kind = "extension"
[[tenants.agents]]
login_id = "a1001"
dn = "1001"
skills = {{ sales = 5 }}
[[tenants.agents]]
login_id = "a1002"
dn = "1002"
skills = {{ sales = 7 }}
[[tenants.api_keys]]
name = "demo-admin"
key = "{ADMIN}"
role = "admin"
[[tenants.api_keys]]
name = "a1002"
key = "{AGENT_1002}"
role = "agent"
agent = "a1002"
"#,
        dir = data_dir.display().to_string(),
        url = redis.url(),
        trunk = free_port(),
    )
}

/// A: everything a call and an agent need, no front-end (no keys: the gate is F's).
fn start_a(dir: &Path, redis: &RedisServer) -> Switchboard {
    Switchboard::builder()
        .binary(BIN)
        .config(&config(dir, redis))
        .roles(&[
            "sip-proxy",
            "registrar",
            "sip-node",
            "call-state",
            "agent-state",
            "routing",
        ])
        .spawn()
        .expect("process A starts")
}

/// F: the front-end alone, API keys on.
fn start_f(dir: &Path, redis: &RedisServer) -> Switchboard {
    Switchboard::builder()
        .binary(BIN)
        .config(&config(dir, redis))
        .roles(&["front-end"])
        .api_keys()
        .spawn()
        .expect("process F starts")
}

struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

fn call(
    sb: &Switchboard,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> Answer {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let r = http_request_with(sb.http_addr(), method, path, &headers, body).expect("HTTP request");
    Answer {
        status: r.status,
        content_type: r.header("content-type").unwrap_or("").to_string(),
        body: serde_json::from_str(&r.body).unwrap_or(Value::Null),
    }
}

/// The same request to A (no key) and F (a platform key).
fn both(
    a: &Switchboard,
    f: &Switchboard,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (Answer, Answer) {
    (
        call(a, method, path, body, None),
        call(f, method, path, body, Some(PLATFORM)),
    )
}

fn assert_same_problem(a: &Answer, f: &Answer, what: &str) {
    assert_eq!(
        f.content_type, "application/problem+json",
        "{what}: {}",
        f.body
    );
    assert_eq!(
        (f.status, &f.body),
        (a.status, &a.body),
        "{what}: F answers as A does"
    );
}

fn wait_until<T>(what: &str, mut ok: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = ok() {
            return v;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The call-state view of one party of a call (A's `GET /calls`).
fn party(a: &Switchboard, conn: &str, dn: &str) -> Option<Value> {
    let calls = call(a, "GET", "/v1/tenants/demo/calls?state=all", None, None).body;
    let c = calls["calls"]
        .as_array()?
        .iter()
        .find(|c| c["conn_id"] == conn)?
        .clone();
    let p = c["parties"]
        .as_array()?
        .iter()
        .find(|p| p["dn"] == dn)?
        .clone();
    Some(serde_json::json!({ "call": c, "party": p }))
}

#[test]
fn a_front_end_alone_serves_agents_queues_and_call_control_over_the_bus() {
    if !require_program("redis-server") || !require_program("sipp") {
        return;
    }
    let redis = RedisServer::spawn().expect("redis-server starts");
    let (dir_a, dir_f) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_a(dir_a.path(), &redis);
    let f = start_f(dir_f.path(), &redis);
    agents(&a, &f);
    queues(&a, &f, &redis);
    calls(&a, &f);
    gate(&f);
}

fn agents(a: &Switchboard, f: &Switchboard) {
    let login = call(
        f,
        "POST",
        "/v1/tenants/demo/agents/a1002/login",
        None,
        Some(ADMIN),
    );
    assert_eq!(login.status, 200, "{}", login.body);
    assert_eq!(login.body["event"], "EventAgentLogin", "{}", login.body);
    assert_eq!(login.body["agent_id"], "a1002");
    assert_eq!(login.body["this_dn"], "1002");
    let ready = call(
        f,
        "POST",
        "/v1/tenants/demo/agents/a1002/ready",
        Some("{}"),
        Some(ADMIN),
    );
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body["event"], "EventAgentReady", "{}", ready.body);
    assert!(
        ready.body["request_id"].as_u64().is_some(),
        "{}",
        ready.body
    );

    // What A refuses, F refuses the same way.
    let (ra, rf) = both(a, f, "POST", "/v1/tenants/demo/agents/nobody/ready", None);
    assert_same_problem(&ra, &rf, "unknown agent");
    let (ra, rf) = both(a, f, "POST", "/v1/tenants/nope/agents/a1002/ready", None);
    assert_same_problem(&ra, &rf, "unknown tenant");
    let (ra, rf) = both(a, f, "POST", "/v1/tenants/demo/agents/a1002/dance", None);
    assert_same_problem(&ra, &rf, "unknown action");
    let (ra, rf) = both(a, f, "POST", "/v1/tenants/demo/agents/a1001/ready", None);
    assert_eq!(
        (ra.status, rf.status),
        (409, 409),
        "{} / {}",
        ra.body,
        rf.body
    );
    assert_eq!(rf.body["error_code"], ra.body["error_code"], "{}", rf.body);
    assert_eq!(rf.body["detail"], ra.body["detail"], "{}", rf.body);

    // The states F reads from agent-state's snapshot are A's, once it is saved.
    let one = wait_until("F sees a1002 ready", || {
        let r = call(
            f,
            "GET",
            "/v1/tenants/demo/agent-states/a1002",
            None,
            Some(ADMIN),
        );
        (r.body["state"] == "ready").then_some(r)
    });
    assert_eq!(one.status, 200);
    assert_eq!(
        one.body,
        call(a, "GET", "/v1/tenants/demo/agent-states/a1002", None, None).body
    );
    let (la, lf) = both(a, f, "GET", "/v1/tenants/demo/agent-states", None);
    assert_eq!((la.status, lf.status), (200, 200), "{}", lf.body);
    assert_eq!(lf.body["agents"], la.body["agents"]);
    assert_eq!(
        (la.body["writer"].clone(), lf.body["writer"].clone()),
        (true.into(), false.into())
    );
    let (ua, uf) = both(a, f, "GET", "/v1/tenants/demo/agent-states/nobody", None);
    assert_same_problem(&ua, &uf, "unknown agent state");
}

fn queues(a: &Switchboard, f: &Switchboard, redis: &RedisServer) {
    // A call waiting in "sales" for a skill nobody has: routing's state changes, the agent's
    // does not.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bus: SharedBus = std::sync::Arc::new(
        rt.block_on(RedisBus::connect(&redis.url()))
            .expect("redis bus"),
    );
    let submit = RoutingRequest::Submit {
        tenant: "demo".into(),
        request_id: "wait-1".into(),
        conn_id: ConnId(0x0abc_0000_0000_0001),
        queue: "sales".into(),
        skills: "support >= 1".into(),
        agent_group: None,
        priority: 0,
        enqueued_ms: 1,
        timeout_s: None,
        reply_to: "test:replies".into(),
        user_data: UserData::new(),
    };
    rt.block_on(bus.publish(
        &routing_requests_stream("demo"),
        &serde_json::to_vec(&submit).unwrap(),
    ))
    .expect("publish");
    let sales = wait_until("F sees a call waiting in sales", || {
        let r = call(f, "GET", "/v1/tenants/demo/queues/sales", None, Some(ADMIN));
        (r.body["waiting"] == 1).then_some(r)
    });
    assert_eq!(sales.status, 200);
    let (qa, qf) = both(a, f, "GET", "/v1/tenants/demo/queues/sales", None);
    assert_eq!(qf.body["queue"], qa.body["queue"]);
    assert_eq!(qf.body["waiting"], qa.body["waiting"]);
    assert_eq!(qf.body["agents_ready"], qa.body["agents_ready"]);
    let (la, lf) = both(a, f, "GET", "/v1/tenants/demo/queues", None);
    assert_eq!((la.status, lf.status), (200, 200), "{}", lf.body);
    assert_eq!(lf.body["queues"]["sales"]["waiting"], 1, "{}", lf.body);
    assert_eq!(lf.body["writer"], false);
    let (na, nf) = both(a, f, "GET", "/v1/tenants/demo/queues/nope", None);
    assert_same_problem(&na, &nf, "unknown queue");
    let (na, nf) = both(a, f, "GET", "/v1/tenants/nope/queues", None);
    assert_same_problem(&na, &nf, "unknown tenant");
}

fn calls(a: &Switchboard, f: &Switchboard) {
    let node = a.addr("sip_node_udp").expect("sip_node_udp");
    let phone = free_port();
    register(a, "1002", phone);
    let callee = background(scenario("callee", &[]), None, phone);
    let carrier = background(
        scenario(
            "carrier_wait_bye",
            &[("CALLEE", "1002"), ("WAIT_MS", "15000")],
        ),
        Some(node),
        free_port(),
    );
    let conn = wait_until("an established call to 1002", || {
        let calls = call(a, "GET", "/v1/tenants/demo/calls?state=active", None, None).body;
        calls["calls"].as_array()?.iter().find_map(|c| {
            let up = c["parties"]
                .as_array()?
                .iter()
                .any(|p| p["dn"] == "1002" && p["state"] == "established");
            up.then(|| c["conn_id"].as_str().map(str::to_string))
                .flatten()
        })
    });
    let base = format!("/v1/tenants/demo/calls/{conn}");

    let data = call(
        f,
        "POST",
        &format!("{base}/user-data"),
        Some(r#"{"dn":"1002","data":{"case":"42"}}"#),
        Some(ADMIN),
    );
    assert_eq!(data.status, 202, "{}", data.body);
    assert_eq!(data.body["conn_id"], conn.as_str());
    assert_eq!(data.body["tenant"], "demo");
    assert!(data.body["request_id"].as_u64().is_some(), "{}", data.body);
    wait_until("the user data on the call", || {
        party(a, &conn, "1002").filter(|v| v["call"]["user_data"]["case"] == "42")
    });
    let update = call(
        f,
        "PUT",
        &format!("{base}/user-data"),
        Some(r#"{"dn":"1002","data":{"case":"43"}}"#),
        Some(ADMIN),
    );
    assert_eq!(update.status, 202, "{}", update.body);
    wait_until("the user data updated", || {
        party(a, &conn, "1002").filter(|v| v["call"]["user_data"]["case"] == "43")
    });

    // Refusals: the same problems as the node's own REST API.
    // A call the node does not have, and a call of a node that does not run.
    let other = format!("{}00000000000f", &conn[..4]);
    let node_gone = if conn.starts_with("ffff") {
        "fffe"
    } else {
        "ffff"
    };
    let gone = format!("{node_gone}{}", &conn[4..]);
    for (what, method, path, body) in [
        (
            "unknown call",
            "POST",
            format!("/v1/tenants/demo/calls/{other}/release"),
            r#"{"dn":"1002"}"#,
        ),
        (
            "a call of no running node",
            "POST",
            format!("/v1/tenants/demo/calls/{gone}/release"),
            r#"{"dn":"1002"}"#,
        ),
        (
            "unknown DN",
            "POST",
            format!("{base}/hold"),
            r#"{"dn":"9999"}"#,
        ),
        (
            "invalid destination",
            "POST",
            format!("{base}/transfer"),
            r#"{"dn":"1002","to":"77"}"#,
        ),
        (
            "unknown tenant",
            "POST",
            format!("/v1/tenants/nope/calls/{conn}/hold"),
            r#"{"dn":"1002"}"#,
        ),
        ("bad JSON", "POST", format!("{base}/hold"), "{not json"),
        (
            "unknown request",
            "PUT",
            format!("{base}/hold"),
            r#"{"dn":"1002"}"#,
        ),
    ] {
        let (pa, pf) = both(a, f, method, &path, Some(body));
        assert_same_problem(&pa, &pf, what);
    }
    let make = call(
        f,
        "POST",
        "/v1/tenants/demo/calls",
        Some(r#"{"dn":"1002","to":"1001"}"#),
        Some(ADMIN),
    );
    assert_eq!(
        make.status, 503,
        "MakeCall needs a sip-node here: {}",
        make.body
    );

    let release = call(
        f,
        "POST",
        &format!("{base}/release"),
        Some(r#"{"dn":"1002"}"#),
        Some(ADMIN),
    );
    assert_eq!(release.status, 202, "{}", release.body);
    for (who, h) in [("carrier", carrier), ("1002", callee)] {
        let out = h.join().expect("sipp thread");
        assert!(out.success(), "{who}:\n{}", out.report());
    }
}

/// F's gate applies to the routes it serves for other roles.
fn gate(f: &Switchboard) {
    let none = call(
        f,
        "POST",
        "/v1/tenants/demo/agents/a1002/not-ready",
        None,
        None,
    );
    assert_eq!(none.status, 401, "{}", none.body);
    let queues = call(f, "GET", "/v1/tenants/demo/queues", None, None);
    assert_eq!(queues.status, 401, "{}", queues.body);
    let other = call(
        f,
        "POST",
        "/v1/tenants/demo/agents/a1001/login",
        None,
        Some(AGENT_1002),
    );
    assert_eq!(other.status, 403, "another agent: {}", other.body);
    let own = call(
        f,
        "POST",
        "/v1/tenants/demo/agents/a1002/not-ready",
        None,
        Some(AGENT_1002),
    );
    assert_eq!(own.status, 200, "its own agent: {}", own.body);
    assert_eq!(own.body["event"], "EventAgentNotReady", "{}", own.body);
    let dn = call(
        f,
        "POST",
        "/v1/tenants/demo/calls/0abc000000000001/hold",
        Some(r#"{"dn":"1001"}"#),
        Some(AGENT_1002),
    );
    assert_eq!(dn.status, 403, "a call request for another DN: {}", dn.body);
}
