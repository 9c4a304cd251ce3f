//! The `config` and `dialplan` roles in the binary: REST CRUD on the configuration store, the
//! OpenAPI document, problems for bad input, number resolution following REST changes, the
//! changes on the bus, and a SIPp call routed by a dial-plan rule created over REST.

mod common;

use common::{background, free_port, scenario, sipp};
use serde_json::{json, Value};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};
use switchboard_bus::{Bus, EmbeddedBus};
use switchboard_events::Event;
use switchboard_testkit::{http_request, require_program, Switchboard};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

struct Reply {
    status: u16,
    content_type: String,
    body: Value,
}

fn call(sb: &Switchboard, method: &str, path: &str, body: Option<&str>) -> Reply {
    let r = http_request(sb.http_addr(), method, path, body).expect("HTTP request");
    Reply {
        status: r.status,
        content_type: r.header("content-type").unwrap_or("").to_string(),
        body: serde_json::from_str(&r.body).unwrap_or(Value::Null),
    }
}

fn post(sb: &Switchboard, path: &str, body: &Value) -> Reply {
    call(sb, "POST", path, Some(&body.to_string()))
}

/// Asserts a problem with `status` (and `field` when given).
fn assert_problem(r: &Reply, status: u16, field: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json", "{}", r.body);
    assert_eq!(r.body["status"], status, "{}", r.body);
    for key in ["type", "title", "detail"] {
        assert!(r.body[key].is_string(), "{key} in {}", r.body);
    }
    if let Some(f) = field {
        assert_eq!(r.body["field"], f, "{}", r.body);
    }
}

/// Polls the resolve endpoint until `pred` holds for its answer (the dial plan is rebuilt
/// right after each change, asynchronously).
fn resolve_until(sb: &Switchboard, query: &str, pred: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(sb, "GET", query, None);
        if pred(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{query}: {} {}",
            r.status,
            r.body
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn data_dir_config(dir: &Path, extra: &str) -> String {
    format!("data_dir = {:?}\n{extra}\n", dir.display().to_string())
}

#[test]
fn rest_crud_resolve_and_problems_with_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `up` with the demo tenant (the built-in demo's entities come from Config::demo only
    // without a file, so this file names a small tenant of its own).
    let config = data_dir_config(
        dir.path(),
        r#"
[[tenants]]
name = "demo"
domain = "switchboard"
[[tenants.users]]
user = "1001"
password = "secret"
[[tenants.dns]]
number = "5000"
kind = "route_point"
[[tenants.dialplan]]
name = "operator"
priority = 10
applies_to = "internal"
exact = "0"
strip = 1
add_prefix = "5000"
route = "local"
"#,
    );
    let mut sb = Switchboard::builder()
        .binary(BIN)
        .config(&config)
        .spawn()
        .expect("switchboard up starts");
    let logs = sb.logs();
    let missing = logs
        .lines()
        .find(|l| l.contains("not implemented in this build"))
        .unwrap_or("");
    assert!(
        !missing.contains("dialplan")
            && !missing.contains("config,")
            && !missing.ends_with("config"),
        "up starts dialplan and config: {missing}"
    );

    // The OpenAPI document.
    let doc = call(&sb, "GET", "/openapi.json", None);
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.0.3");
    for p in [
        "/v1/tenants",
        "/v1/tenants/{tenant}/dns/{key}",
        "/v1/tenants/{tenant}/dialplan",
        "/v1/tenants/{tenant}/dialplan/resolve",
        "/v1/tenants/{tenant}/route-points",
        "/v1/tenants/{tenant}/mailboxes/{key}",
    ] {
        assert!(doc.body["paths"][p].is_object(), "{p} in the OpenAPI paths");
    }
    assert!(doc.body["components"]["schemas"]["DialRule"].is_object());

    // The seeded tenant is there, with its file entities and its SIP user as an extension.
    let r = call(&sb, "GET", "/v1/tenants/demo/dns/5000", None);
    assert_eq!(
        (r.status, r.body["kind"].as_str()),
        (200, Some("route_point")),
        "{}",
        r.body
    );
    let r = resolve_until(
        &sb,
        "/v1/tenants/demo/dialplan/resolve?number=0&from=1001",
        |r| r.status == 200,
    );
    assert_eq!(r.body["target"], "route_point", "{}", r.body);
    assert_eq!(r.body["number"], "5000");
    assert_eq!(r.body["rule"], "operator");
    assert_eq!(r.body["scope"], "internal");

    // A tenant, a DN and a rule created over REST.
    let r = post(
        &sb,
        "/v1/tenants",
        &json!({"name": "acme", "domain": "acme.example"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_problem(
        &post(
            &sb,
            "/v1/tenants",
            &json!({"name": "acme", "domain": "other.example"}),
        ),
        409,
        Some("name"),
    );
    assert_problem(
        &post(
            &sb,
            "/v1/tenants",
            &json!({"name": "b c", "domain": "b.example"}),
        ),
        422,
        Some("name"),
    );
    let r = post(
        &sb,
        "/v1/tenants/acme/dns",
        &json!({"number": "2001", "kind": "extension", "name": "Front desk"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["name"], "Front desk");
    let r = post(
        &sb,
        "/v1/tenants/acme/dialplan",
        &json!({
            "name": "short", "priority": 10, "range": "3000-3999", "strip": 1, "add_prefix": "2", "route": "local"
        }),
    );
    assert_eq!(r.status, 201, "{}", r.body);

    let q = "/v1/tenants/acme/dialplan/resolve?number=3001&from=2001&ingress=2001";
    let r = resolve_until(&sb, q, |r| r.status == 200);
    assert_eq!(r.body["tenant"], "acme", "{}", r.body);
    assert_eq!(r.body["target"], "extension", "{}", r.body);
    assert_eq!(r.body["number"], "2001");
    assert_eq!(r.body["rule"], "short");
    assert_eq!(r.body["caller_internal"], true);
    assert_eq!(r.body["device"]["contact"], "sip:2001@acme.example");
    assert_eq!(r.body["device"]["dn"]["name"], "Front desk");

    // Bad input.
    assert_problem(
        &call(&sb, "POST", "/v1/tenants/acme/dns", Some("{not json")),
        400,
        None,
    );
    assert_problem(
        &post(
            &sb,
            "/v1/tenants/acme/dns",
            &json!({"number": "2002", "kind": "extension", "colour": "red"}),
        ),
        400,
        Some("colour"),
    );
    assert_problem(
        &post(&sb, "/v1/tenants/acme/dns", &json!({"kind": "extension"})),
        400,
        Some("number"),
    );
    assert_problem(
        &post(
            &sb,
            "/v1/tenants/nope/dns",
            &json!({"number": "2002", "kind": "extension"}),
        ),
        404,
        None,
    );
    assert_problem(&call(&sb, "GET", "/v1/tenants/nope", None), 404, None);
    assert_problem(
        &call(&sb, "GET", "/v1/tenants/acme/agents/nobody", None),
        404,
        None,
    );
    assert_problem(
        &post(
            &sb,
            "/v1/tenants/acme/dns",
            &json!({"number": "2001", "kind": "extension"}),
        ),
        409,
        Some("number"),
    );
    assert_problem(
        &post(
            &sb,
            "/v1/tenants/acme/dns",
            &json!({"number": "2003", "kind": "trunk"}),
        ),
        422,
        Some("trunk"),
    );
    assert_problem(
        &post(
            &sb,
            "/v1/tenants/acme/agents",
            &json!({"login_id": "alice", "dn": "2999"}),
        ),
        422,
        Some("dn"),
    );
    assert_problem(
        &call(
            &sb,
            "GET",
            "/v1/tenants/nope/dialplan/resolve?number=1",
            None,
        ),
        404,
        None,
    );
    assert_problem(
        &call(
            &sb,
            "GET",
            "/v1/tenants/acme/dialplan/resolve?from=2001",
            None,
        ),
        400,
        Some("number"),
    );
    assert_problem(
        &call(
            &sb,
            "GET",
            "/v1/tenants/acme/dialplan/resolve?number=77&from=2001",
            None,
        ),
        422,
        Some("number"),
    );

    // References: an agent on 2001 keeps the DN from being deleted.
    let r = post(
        &sb,
        "/v1/tenants/acme/agents",
        &json!({"login_id": "alice", "dn": "2001"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_problem(
        &call(&sb, "DELETE", "/v1/tenants/acme/dns/2001", None),
        409,
        Some("agents/alice.dn"),
    );
    let r = resolve_until(&sb, q, |r| r.body["device"]["agent"] == "alice");
    assert_eq!(r.status, 200);
    assert_eq!(
        call(&sb, "DELETE", "/v1/tenants/acme/agents/alice", None).status,
        204
    );
    assert_eq!(
        call(&sb, "DELETE", "/v1/tenants/acme/dns/2001", None).status,
        204
    );
    assert_problem(
        &call(&sb, "GET", "/v1/tenants/acme/dns/2001", None),
        404,
        None,
    );
    // The rule now translates to a number that is no DN (and 2001 is no device any more).
    assert_problem(&call(&sb, "GET", q, None), 400, Some("ingress"));
    let r = resolve_until(
        &sb,
        "/v1/tenants/acme/dialplan/resolve?number=3001&from=2001",
        |r| r.status == 422,
    );
    assert!(
        r.body["detail"].as_str().unwrap_or("").contains("not a DN"),
        "{}",
        r.body
    );

    // Replace a rule: PUT with the same name.
    let r = call(
        &sb,
        "PUT",
        "/v1/tenants/acme/dialplan/short",
        Some(
            &json!({"name": "short", "priority": 10, "range": "3000-3999", "strip": 4,
                     "add_prefix": "+4930123", "route": "local"})
            .to_string(),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let list = call(&sb, "GET", "/v1/tenants/acme/dialplan", None);
    assert_eq!(
        list.body["items"][0]["add_prefix"], "+4930123",
        "{}",
        list.body
    );

    // The changes reached the bus, in order.
    sb.terminate().expect("SIGTERM");
    let status = sb.wait_exit(Duration::from_secs(15)).expect("wait");
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    let changes = read_stream(dir.path(), "config:acme");
    let ops: Vec<(String, String, String)> = changes
        .iter()
        .map(|c| {
            (
                c["op"].as_str().unwrap_or("").to_string(),
                c["kind"].as_str().unwrap_or("tenant").to_string(),
                c["key"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        ops,
        vec![
            s("created", "tenant", "acme"),
            s("created", "dn", "2001"),
            s("created", "dial_rule", "short"),
            s("created", "agent", "alice"),
            s("deleted", "agent", "alice"),
            s("deleted", "dn", "2001"),
            s("updated", "dial_rule", "short"),
        ]
    );

    // The store outlives the process: a restart keeps acme and the changed rule.
    let sb = Switchboard::builder()
        .binary(BIN)
        .config(&config)
        .roles(&["config", "dialplan"])
        .spawn()
        .expect("restart");
    let r = call(&sb, "GET", "/v1/tenants/acme/dialplan/short", None);
    assert_eq!(r.body["strip"], 4, "{}", r.body);
}

fn read_stream(dir: &Path, stream: &str) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let bus = EmbeddedBus::open(&dir.join("bus.db")).expect("bus file");
        bus.read_range(stream, None, 1000)
            .await
            .expect("read")
            .into_iter()
            .map(|e| serde_json::from_slice(&e.payload).expect("JSON"))
            .collect()
    })
}

// ---- a SIPp call routed by a rule created over REST ----

fn wait_call(sb: &Switchboard, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = call(sb, "GET", "/v1/tenants/demo/calls?state=active", None);
        if let Some(c) = r.body["calls"]
            .as_array()
            .and_then(|l| l.iter().find(|c| pred(c)))
        {
            return c.clone();
        }
        assert!(Instant::now() < deadline, "no such call: {}", r.body);
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_carrier_call_is_routed_by_a_rule_created_over_rest() {
    if !require_program("sipp") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = data_dir_config(
        dir.path(),
        r#"
[registrar]
algorithms = ["MD5"]

[[tenants]]
name = "demo"
domain = "switchboard"
[[tenants.users]]
user = "1001"
password = "secret"
[[tenants.users]]
user = "1002"
password = "secret"
"#,
    );
    let mut sb = Switchboard::builder()
        .binary(BIN)
        .config(&config)
        .roles(&[
            "sip-proxy",
            "registrar",
            "sip-node",
            "call-state",
            "dialplan",
            "config",
        ])
        .spawn()
        .expect("switchboard starts");
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");

    // The carrier's trunk, its DIDs, and an inbound rule mapping them to extensions.
    let carrier_port = free_port();
    let r = post(
        &sb,
        "/v1/tenants/demo/trunks",
        &json!({
            "name": "carrier",
            "addresses": [format!("127.0.0.1:{carrier_port}")],
            "dids": [{"first": "+15550100000", "last": "+15550100099"}]
        }),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post(
        &sb,
        "/v1/tenants/demo/dialplan",
        &json!({
            "name": "did-in", "priority": 1, "applies_to": "inbound",
            "regex": "^\\+155501000([0-9]{2})$",
            "replace": {"regex": "^\\+155501000([0-9]{2})$", "with": "10$1"},
            "route": "local"
        }),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let q = "/v1/tenants/demo/dialplan/resolve?number=%2B15550100002&ingress=carrier&from=%2B15551234567";
    let r = resolve_until(&sb, q, |r| r.status == 200);
    assert_eq!(
        (r.body["target"].as_str(), r.body["number"].as_str()),
        (Some("extension"), Some("1002")),
        "{}",
        r.body
    );
    assert_eq!(r.body["rule"], "did-in");
    assert_eq!(r.body["did_trunk"], "carrier");

    // 1002's phone registers; the carrier calls the DID straight at the SIP Server.
    let phone = free_port();
    let contact = format!("127.0.0.1:{phone}");
    let reg = sipp(
        &scenario(
            "register",
            &[
                ("USER", "1002"),
                ("CONTACT", &contact),
                ("EXPIRES", "120"),
                ("PASSWORD", "secret"),
            ],
        ),
        sb.sip_udp_addr(),
        free_port(),
    )
    .run()
    .expect("sipp runs");
    assert!(reg.success(), "REGISTER:\n{}", reg.report());
    // Device resolution shows the registered contact (the edge runs in this process).
    let r = call(&sb, "GET", q, None);
    let registered = &r.body["device"]["registered"];
    assert_eq!(registered.as_array().map(Vec::len), Some(1), "{}", r.body);
    assert!(
        registered[0]["contact"]
            .as_str()
            .unwrap_or("")
            .contains(&contact),
        "{}",
        r.body
    );
    let callee = background(scenario("callee", &[]), None, phone);
    let carrier = background(
        scenario(
            "carrier_wait_bye",
            &[("CALLEE", "+15550100002"), ("WAIT_MS", "15000")],
        ),
        Some(node),
        carrier_port,
    );
    let c = wait_call(&sb, |c| {
        c["parties"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["dn"] == "1002" && p["state"] == "established")
        })
    });
    assert_eq!(c["call_type"], "inbound", "{c}");
    let conn = c["conn_id"].as_str().expect("conn_id").to_string();
    let r = post(
        &sb,
        &format!("/v1/tenants/demo/calls/{conn}/release"),
        &json!({"dn": "1002"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let carrier = carrier.join().expect("carrier thread");
    let callee = callee.join().expect("callee thread");
    assert!(carrier.success(), "carrier:\n{}", carrier.report());
    assert!(callee.success(), "phone:\n{}", callee.report());

    sb.terminate().expect("SIGTERM");
    let status = sb.wait_exit(Duration::from_secs(15)).expect("wait");
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    let events: Vec<Event> = read_stream(dir.path(), "events:demo")
        .into_iter()
        .map(|v| Event::from_json(&v.to_string()).expect("an event"))
        .collect();
    let ringing = events
        .iter()
        .find(|e| e.name() == "EventRinging")
        .expect("EventRinging");
    assert_eq!(ringing.this_dn(), Some("1002"));
    assert_eq!(
        ringing.call().and_then(|c| c.other_dn.as_deref()),
        Some("+15551234567")
    );
}
