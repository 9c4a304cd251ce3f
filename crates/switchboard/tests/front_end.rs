//! The desktop API's gate and event stream in the real binary: API keys per tenant and role
//! (401/403 as problem+json), and `GET /v1/tenants/{t}/events` over WebSocket with filters and
//! resume from the last event id. Events are published on a Redis bus by the test, as the
//! SIP Server would.

use futures_util::StreamExt as _;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::{RedisBus, SharedBus};
use switchboard_events::{AgentAttrs, CallAttrs, ConnId, Event};
use switchboard_testkit::{http_request_with, require_program, RedisServer, Switchboard};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const SUPERVISOR: &str = "demo-supervisor-key-change-me";
const AGENT: &str = "demo-agent-a1001-key";

/// The demo tenant (with its demo keys), a second tenant with a key of its own, Redis as the bus.
fn config(redis: &RedisServer) -> String {
    let demo = switchboard_config::EXAMPLE_TOML;
    format!(
        "{demo}\n[[tenants]]\nname = \"other\"\ndomain = \"other.example\"\n\
         [[tenants.api_keys]]\nname = \"other-admin\"\nkey = \"other-tenant-admin-key\"\nrole = \"admin\"\n\
         \n",
    )
    .replace("backend = \"embedded\"", "backend = \"redis\"")
    .replace(
        "redis_url = \"redis://127.0.0.1:6379\"",
        &format!("redis_url = \"{}\"", redis.url()),
    )
}

fn start(redis: &RedisServer) -> Switchboard {
    let cfg = config(redis);
    assert!(
        cfg.contains("backend = \"redis\""),
        "the bus section moved: {cfg}"
    );
    Switchboard::builder()
        .binary(BIN)
        .config(&cfg)
        .roles(&["front-end", "call-state"])
        .api_keys()
        .spawn()
        .expect("switchboard starts")
}

fn get(sb: &Switchboard, path: &str, key: Option<&str>) -> (u16, Option<String>, String) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let r = http_request_with(sb.http_addr(), "GET", path, &headers, None).expect("GET");
    (
        r.status,
        r.header("content-type").map(str::to_owned),
        r.body,
    )
}

fn ringing(conn: u64, dn: &str) -> Event {
    Event::EventRinging(CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(ConnId(conn)),
        this_dn: dn.into(),
        ts_ms: 1,
        ..Default::default()
    })
}

fn ready(agent: &str, dn: &str) -> Event {
    Event::EventAgentReady(AgentAttrs {
        tenant: "demo".into(),
        agent_id: agent.into(),
        this_dn: dn.into(),
        ts_ms: 1,
        ..Default::default()
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    sb: &Switchboard,
    query: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!("ws://{}/v1/tenants/demo/events?{query}", sb.http_addr());
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

/// The next event (skipping pings), as JSON.
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an event within 5 s")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("event JSON");
        }
    }
}

/// Nothing more arrives within a short while.
async fn quiet(ws: &mut Ws) {
    if let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(300), ws.next()).await
    {
        panic!("unexpected event {t}");
    }
}

async fn publish(bus: &SharedBus, e: &Event) {
    bus.publish("events:demo", e.to_json().as_bytes())
        .await
        .expect("publish");
}

#[test]
fn keys_decide_who_reaches_what() {
    if !require_program("redis-server") {
        return;
    }
    let redis = RedisServer::spawn().expect("redis");
    let sb = start(&redis);
    let calls = "/v1/tenants/demo/calls";
    let (status, ctype, body) = get(&sb, calls, None);
    assert_eq!(
        (status, ctype.as_deref()),
        (401, Some("application/problem+json")),
        "{body}"
    );
    assert_eq!(get(&sb, calls, Some("not-a-key-not-a-key")).0, 401);
    assert_eq!(
        get(&sb, calls, Some(SUPERVISOR)).0,
        200,
        "a supervisor lists calls"
    );
    let (status, _, body) = get(&sb, calls, Some(AGENT));
    assert_eq!(
        status, 403,
        "an agent does not list the tenant's calls: {body}"
    );
    let (status, _, body) = get(&sb, calls, Some("other-tenant-admin-key"));
    assert_eq!(status, 403, "another tenant's admin: {body}");
    assert!(body.contains("another tenant"), "{body}");
    assert_eq!(
        get(
            &sb,
            "/v1/tenants/other/calls",
            Some("other-tenant-admin-key")
        )
        .0,
        200
    );
    assert_eq!(get(&sb, "/healthz", None).0, 200, "health needs no key");
    // The query-parameter form, for browsers' WebSocket upgrades.
    let (status, _, _) = get(&sb, &format!("{calls}?api_key={SUPERVISOR}"), None);
    assert_eq!(status, 200);
}

#[test]
fn event_stream_filters_and_resumes() {
    if !require_program("redis-server") {
        return;
    }
    let redis = RedisServer::spawn().expect("redis");
    let sb = start(&redis);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let bus: SharedBus = Arc::new(RedisBus::connect(&redis.url()).await.expect("bus"));
        // An agent key may not watch the tenant, nor another agent.
        assert!(connect(&sb, &format!("api_key={AGENT}")).await.is_err());
        assert!(connect(&sb, &format!("api_key={AGENT}&agent=a1002"))
            .await
            .is_err());
        assert!(connect(&sb, "agent=a1001").await.is_err(), "no key");

        let mut agent = connect(&sb, &format!("api_key={AGENT}&agent=a1001"))
            .await
            .expect("agent socket");
        let mut all = connect(&sb, &format!("api_key={SUPERVISOR}"))
            .await
            .expect("supervisor socket");
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish(&bus, &ringing(1, "1002")).await;
        publish(&bus, &ringing(2, "1001")).await;
        publish(&bus, &ready("a1001", "1001")).await;

        let e = next_event(&mut all).await;
        assert_eq!(
            (e["event"].as_str(), e["this_dn"].as_str()),
            (Some("EventRinging"), Some("1002"))
        );
        assert_eq!(next_event(&mut all).await["this_dn"], "1001");
        let last_all = next_event(&mut all).await;
        assert_eq!(last_all["event"], "EventAgentReady");

        let e = next_event(&mut agent).await;
        assert_eq!(
            (e["event"].as_str(), e["conn_id"].as_str()),
            (Some("EventRinging"), Some("0000000000000002")),
            "only its DN's call"
        );
        let seen = next_event(&mut agent).await;
        assert_eq!(seen["event"], "EventAgentReady");
        quiet(&mut agent).await;

        // The agent's desktop drops; events go on; it comes back with the last id it saw.
        let last_id = seen["event_id"].as_str().expect("event_id").to_owned();
        agent.close(None).await.ok();
        drop(agent);
        publish(&bus, &ringing(3, "1001")).await;
        publish(&bus, &ringing(4, "1003")).await;
        publish(&bus, &ready("a1001", "1001")).await;
        let mut agent = connect(&sb, &format!("api_key={AGENT}&agent=a1001&from={last_id}"))
            .await
            .expect("resume");
        assert_eq!(next_event(&mut agent).await["conn_id"], "0000000000000003");
        assert_eq!(next_event(&mut agent).await["event"], "EventAgentReady");
        quiet(&mut agent).await;
        // And live events keep coming after the catch-up.
        publish(&bus, &ringing(5, "1001")).await;
        assert_eq!(next_event(&mut agent).await["conn_id"], "0000000000000005");
    });
}
