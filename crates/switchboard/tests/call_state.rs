//! The `call-state` role in the real binary: events on the bus (embedded or Redis) come back
//! over `GET /v1/tenants/{t}/calls`, and survive restarts of the process, SIGKILL included;
//! and the SIP Server's events under SIPp load survive a SIGKILL of the process that published
//! them.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use switchboard_bus::{EmbeddedBus, RedisBus, SharedBus};
use switchboard_events::{CallAttrs, ConnId, Event};
use switchboard_testkit::{free_udp_port, require_program, RedisServer, Sipp, Switchboard};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const C1: &str = "00000000000000c1";
const C2: &str = "00000000000000c2";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn event(kind: fn(CallAttrs) -> Event, conn: &str, dn: &str) -> Event {
    kind(CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(conn.parse::<ConnId>().expect("conn id")),
        this_dn: dn.into(),
        other_dn: Some("+15551234567".into()),
        ts_ms: now_ms(),
        ..Default::default()
    })
}

async fn publish(bus: &SharedBus, events: &[Event]) {
    for e in events {
        bus.publish("events:demo", e.to_json().as_bytes())
            .await
            .expect("publish");
    }
}

/// Publishes on the embedded bus file while no process holds it.
fn publish_embedded(path: &Path, events: &[Event]) {
    runtime().block_on(async {
        let bus: SharedBus = Arc::new(EmbeddedBus::open(path).expect("open the bus file"));
        publish(&bus, events).await;
    });
}

fn start(config: &str) -> Switchboard {
    Switchboard::builder()
        .binary(BIN)
        .config(config)
        .roles(&["call-state"])
        .spawn()
        .expect("switchboard starts")
}

fn get_json(sb: &Switchboard, path: &str) -> (u16, String, Value) {
    let r = sb.get(path).expect("GET");
    let ct = r.header("content-type").unwrap_or("").to_string();
    let json = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, ct, json)
}

fn call_state(sb: &Switchboard, conn: &str) -> Option<String> {
    let (status, _, body) = get_json(sb, &format!("/v1/tenants/demo/calls/{conn}"));
    (status == 200).then(|| body["state"].as_str().unwrap_or("").to_string())
}

/// Polls until the call has `state` (the consumer folds asynchronously).
fn wait_state(sb: &Switchboard, conn: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if call_state(sb, conn).as_deref() == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "call {conn} never became {state}; last {:?}; log:\n{}",
            call_state(sb, conn),
            sb.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const TENANT: &str = "[[tenants]]\nname = \"demo\"\n";

#[test]
fn embedded_bus_rebuilds_after_sigkill_and_serves_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "data_dir = {:?}\n{TENANT}",
        dir.path().display().to_string()
    );
    let bus_file = dir.path().join("bus.db");
    // Events published before the process ever ran.
    publish_embedded(
        &bus_file,
        &[
            event(Event::EventRinging, C1, "1002"),
            event(Event::EventEstablished, C1, "1002"),
            event(Event::EventRinging, C2, "1003"),
        ],
    );

    let sb = start(&config);
    // Ready means rebuilt: no polling needed.
    let (status, ct, body) = get_json(&sb, "/v1/tenants/demo/calls");
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_eq!(body["tenant"], "demo");
    assert_eq!(body["active"], 2, "{body}");
    let calls = body["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2);
    let (status, _, c1) = get_json(&sb, &format!("/v1/tenants/demo/calls/{C1}"));
    assert_eq!(status, 200);
    assert_eq!(c1["conn_id"], C1);
    assert_eq!(c1["parties"][0]["dn"], "1002");
    assert_eq!(c1["parties"][0]["state"], "established");
    assert_eq!(c1["parties"][1]["dn"], "+15551234567");
    assert_eq!(c1["events"], 2);

    // Errors.
    for (path, want) in [
        ("/v1/tenants/nope/calls", 404),
        ("/v1/tenants/nope/calls/00000000000000c1", 404),
        ("/v1/tenants/demo/calls/00000000000000ff", 404),
        ("/v1/tenants/demo/calls/xyz", 400),
        ("/v1/tenants/demo/calls?state=bogus", 400),
    ] {
        let (status, ct, body) = get_json(&sb, path);
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(ct, "application/problem+json", "{path}");
        assert_eq!(body["status"], want, "{path}");
    }
    let metrics = sb.get("/metrics").expect("metrics").body;
    assert!(
        metrics.contains("switchboard_call_state_entries_total"),
        "{metrics}"
    );

    // SIGKILL: no drain, no snapshot; the bus file's lock goes with the process.
    drop(sb);
    publish_embedded(
        &bus_file,
        &[
            event(Event::EventReleased, C1, "1002"),
            event(Event::EventEstablished, C2, "1003"),
        ],
    );
    let sb = start(&config);
    assert_eq!(call_state(&sb, C1).as_deref(), Some("released"));
    let (_, _, c1) = get_json(&sb, &format!("/v1/tenants/demo/calls/{C1}"));
    assert_eq!(c1["events"], 3, "each event folded once: {c1}");
    assert!(c1["released_ms"].as_u64().is_some(), "{c1}");
    let (_, _, c2) = get_json(&sb, &format!("/v1/tenants/demo/calls/{C2}"));
    assert_eq!(c2["parties"][0]["state"], "established", "{c2}");
    let (_, _, active) = get_json(&sb, "/v1/tenants/demo/calls?state=active");
    assert_eq!(active["calls"].as_array().map(Vec::len), Some(1));

    // A graceful stop exits 0 and leaves a snapshot the next start uses.
    let mut sb = sb;
    sb.terminate().expect("SIGTERM");
    let status = sb
        .wait_exit(Duration::from_secs(15))
        .expect("wait")
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}: {}", sb.logs());
    let sb = start(&config);
    assert!(
        sb.logs().contains("call-state snapshot loaded"),
        "{}",
        sb.logs()
    );
    assert_eq!(call_state(&sb, C1).as_deref(), Some("released"));
    assert_eq!(call_state(&sb, C2).as_deref(), Some("active"));
}

#[test]
fn redis_bus_serves_live_events_and_survives_a_restart() {
    if !require_program("redis-server") {
        return;
    }
    let redis = RedisServer::spawn().expect("redis-server starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "data_dir = {:?}\n[bus]\nbackend = \"redis\"\nredis_url = {:?}\n{TENANT}",
        dir.path().display().to_string(),
        redis.url()
    );
    let rt = runtime();
    let bus: SharedBus = Arc::new(
        rt.block_on(RedisBus::connect(&redis.url()))
            .expect("connect to redis"),
    );

    let sb = start(&config);
    let (status, _, body) = get_json(&sb, "/v1/tenants/demo/calls");
    assert_eq!(status, 200);
    assert_eq!(body["calls"].as_array().map(Vec::len), Some(0), "{body}");
    // Live: published while the process runs, folded within moments.
    rt.block_on(publish(&bus, &[event(Event::EventRinging, C1, "1002")]));
    wait_state(&sb, C1, "active");
    let mut attached = event(Event::EventAttachedDataChanged, C1, "1002");
    if let Event::EventAttachedDataChanged(a) = &mut attached {
        a.user_data.insert("account".into(), "4711".into());
    }
    rt.block_on(publish(
        &bus,
        &[event(Event::EventEstablished, C1, "1002"), attached],
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, _, c1) = get_json(&sb, &format!("/v1/tenants/demo/calls/{C1}"));
        if c1["user_data"]["account"] == "4711" {
            assert_eq!(c1["parties"][0]["state"], "established", "{c1}");
            break;
        }
        assert!(Instant::now() < deadline, "user data never arrived: {c1}");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(publish(&bus, &[event(Event::EventReleased, C1, "1002")]));
    wait_state(&sb, C1, "released");
    // The role acknowledged what it folded: nothing pending in its group.
    let pending = rt
        .block_on(bus.claim_pending(
            "events:demo",
            "call-state",
            "probe",
            Duration::from_millis(1),
            100,
        ))
        .expect("claim_pending");
    assert!(pending.is_empty(), "{pending:?}");

    // Killed, then started again: rebuilt from the Redis stream.
    drop(sb);
    rt.block_on(publish(&bus, &[event(Event::EventRinging, C2, "1003")]));
    let sb = start(&config);
    assert_eq!(call_state(&sb, C1).as_deref(), Some("released"));
    assert_eq!(call_state(&sb, C2).as_deref(), Some("active"));
    let (_, _, c1) = get_json(&sb, &format!("/v1/tenants/demo/calls/{C1}"));
    assert_eq!(c1["events"], 4, "{c1}");
}

#[test]
fn unreachable_redis_fails_startup_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!("[bus]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}/\"\n{TENANT}"),
    )
    .expect("write config");
    let started = Instant::now();
    let out = std::process::Command::new(BIN)
        .args(["run", "--roles", "call-state", "--http", "127.0.0.1:0"])
        .arg("--config")
        .arg(&config)
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .expect("runs");
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bus (redis)") && stderr.contains(&port.to_string()),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A SIPp scenario of `bench/sipp`.
fn bench_scenario(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/sipp")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The sum of the Prometheus series whose line starts with `name`.
fn metric(sb: &Switchboard, name: &str) -> u64 {
    let body = sb.get("/metrics").map(|r| r.body).unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every entry of `events:demo` in the embedded bus file, parsed.
fn stream_events(path: &Path) -> Vec<Event> {
    runtime().block_on(async {
        let bus = EmbeddedBus::open(path).expect("open the bus file");
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let batch = switchboard_bus::Bus::read_range(&bus, "events:demo", after, 1000)
                .await
                .expect("read_range");
            let Some(last) = batch.last() else { break };
            after = Some(last.id);
            for e in &batch {
                let text = String::from_utf8_lossy(&e.payload);
                all.push(Event::from_json(&text).unwrap_or_else(|err| panic!("{text}: {err}")));
            }
        }
        all
    })
}

#[test]
fn sigkill_mid_run_loses_no_event_acknowledged_to_the_sip_server() {
    if !require_program("sipp") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let uas_port = free_udp_port().expect("free port");
    let config = format!(
        r#"data_dir = {:?}
[sip_node]
edge = "127.0.0.1:{uas_port}"
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
        dir.path().display().to_string()
    );
    let start = |config: &str| {
        Switchboard::builder()
            .binary(BIN)
            .config(config)
            .roles(&["sip-node", "call-state"])
            .spawn()
            .expect("switchboard starts")
    };
    let sb = start(&config);
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    // SIPp calls DN 1002 from DN 1001 at 100 calls/s and plays 1002's phone (the SIP
    // Server's legs to DNs go to it): six events per call.
    let uas = Sipp::scenario(&bench_scenario("uas.xml"))
        .arg("-p")
        .arg(&uas_port.to_string())
        .calls(1_000_000)
        .timeout(Duration::from_secs(10));
    let uas = std::thread::spawn(move || uas.run());
    std::thread::sleep(Duration::from_millis(400));
    let uac = Sipp::scenario(&bench_scenario("uac.xml"))
        .remote(node)
        .service("1002")
        .arg("-r")
        .arg("100")
        .calls(1_000_000)
        .timeout(Duration::from_secs(10));
    let uac = std::thread::spawn(move || uac.run());

    // Mid-run: every publish the metric counts returned to the SIP Server after its commit.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&sb, "switchboard_bus_published_total") < 300 {
        assert!(
            Instant::now() < deadline,
            "the load never got going:\n{}",
            sb.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let acknowledged = metric(&sb, "switchboard_bus_published_total");
    assert_eq!(metric(&sb, "sipnode_publish_errors_total"), 0);
    drop(sb); // SIGKILL, calls in flight

    // Started again on the same files: call-state rebuilds from the stream.
    let mut sb = start(&config);
    let (status, _, body) = get_json(&sb, "/v1/tenants/demo/calls?state=all");
    assert_eq!(status, 200, "{body}");
    let folded = body["calls"].as_array().map(Vec::len).unwrap_or(0);
    let published_since = metric(&sb, "switchboard_bus_published_total");
    sb.terminate().expect("SIGTERM");
    let status = sb.wait_exit(Duration::from_secs(15)).expect("wait");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    let events = stream_events(&dir.path().join("bus.db"));
    eprintln!(
        "{acknowledged} publishes acknowledged before SIGKILL, {published_since} after the \
         restart, {} events on the stream, {folded} calls rebuilt",
        events.len()
    );
    assert!(
        events.len() as u64 >= acknowledged + published_since,
        "{} events on the stream, {acknowledged} acknowledged before the kill and \
         {published_since} after the restart",
        events.len()
    );
    // Every call on the stream is a call of the rebuilt call-state.
    let mut conns: Vec<_> = events.iter().filter_map(|e| e.call()?.conn_id).collect();
    conns.sort();
    conns.dedup();
    assert_eq!(folded, conns.len(), "calls in call-state vs. on the stream");
    assert!(
        events
            .iter()
            .all(|e| e.name() != "EventError" && e.tenant() == "demo"),
        "only call events of demo"
    );
    for h in [uac, uas] {
        // The callers lost their node mid-call: SIPp reports failures, which is expected.
        let _ = h.join().expect("sipp thread");
    }
}
