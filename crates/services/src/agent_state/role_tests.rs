//! The role's glue on the embedded bus: REST requests answered through the bus, snapshots,
//! and the routing role replying to a submission with the agent made Ready over REST.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use serde_json::Value;
use switchboard_bus::{EmbeddedBus, SharedBus};
use switchboard_config::Config;
use switchboard_events::requests::{routing_requests_stream, RoutingReply, RoutingRequest};
use switchboard_events::{CallAttrs, ConnId, Event, UserData};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{start, Options};
use crate::single_writer::{fixed_tenants, Timing};

fn fast() -> Timing {
    Timing {
        lease_ttl: Duration::from_millis(500),
        renew: Duration::from_millis(100),
        standby_poll: Duration::from_millis(50),
        idle_wait: Duration::from_millis(5),
    }
}

fn options(consumer: &str) -> Options {
    Options {
        timing: fast(),
        answer_timeout: Duration::from_secs(3),
        consumer: consumer.into(),
    }
}

async fn call(router: &axum::Router, method: &str, path: &str, body: &str) -> (u16, String, Value) {
    let r = router
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (
        status,
        ct,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn wait_writer(router: &axum::Router) {
    for _ in 0..200 {
        let (_, _, body) = call(router, "GET", "/v1/tenants/demo/agent-states", "").await;
        if body["writer"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("agent-state never became the writer");
}

#[tokio::test]
async fn rest_requests_are_answered_through_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).unwrap());
    let config = Arc::new(Config::demo());
    let drain = CancellationToken::new();
    let role = start(
        config.clone(),
        bus.clone(),
        drain.clone(),
        fixed_tenants(&config),
        options("one"),
    )
    .await
    .unwrap();
    let r = &role.router;
    wait_writer(r).await;

    let (status, _, body) = call(r, "POST", "/v1/tenants/demo/agents/a1001/login", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["event"], "EventAgentLogin");
    assert_eq!(body["this_dn"], "1001");
    let (status, ct, body) = call(
        r,
        "POST",
        "/v1/tenants/demo/agents/a1002/login",
        r#"{"dn":"1001"}"#,
    )
    .await;
    assert_eq!((status, ct.as_str()), (409, "application/problem+json"));
    assert_eq!(body["error_code"], "dn_taken");
    let (status, _, body) = call(r, "POST", "/v1/tenants/demo/agents/a1002/ready", "").await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (409, Some("not_logged_in"))
    );
    let (status, _, _) = call(r, "POST", "/v1/tenants/demo/agents/nobody/ready", "").await;
    assert_eq!(status, 404);
    let (status, _, _) = call(r, "POST", "/v1/tenants/nope/agents/a1001/ready", "").await;
    assert_eq!(status, 404);
    let (status, _, _) = call(r, "POST", "/v1/tenants/demo/agents/a1001/dance", "").await;
    assert_eq!(status, 404);
    let (status, _, body) = call(
        r,
        "POST",
        "/v1/tenants/demo/agents/a1001/not-ready",
        r#"{"reason_code": 5}"#,
    )
    .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("reason_code")));
    let (status, _, _) = call(r, "POST", "/v1/tenants/demo/agents/a1001/not-ready", "{").await;
    assert_eq!(status, 400);
    let (status, _, body) = call(
        r,
        "POST",
        "/v1/tenants/demo/agents/a1001/not-ready",
        r#"{"reason_code":"lunch"}"#,
    )
    .await;
    assert_eq!((status, body["reason_code"].as_str()), (200, Some("lunch")));
    let (_, _, body) = call(r, "GET", "/v1/tenants/demo/agent-states/a1001", "").await;
    assert_eq!(body["state"], "not_ready");
    assert_eq!(body["reason_code"], "lunch");
    assert_eq!(body["skills"]["sales"], 6);

    // Routing in the same process: a submission finds the agent made Ready over REST.
    let routing = crate::routing::start(
        config.clone(),
        bus.clone(),
        drain.clone(),
        fixed_tenants(&config),
        crate::routing::Options {
            timing: fast(),
            consumer: "one".into(),
        },
    )
    .await
    .unwrap();
    let (status, _, _) = call(r, "POST", "/v1/tenants/demo/agents/a1001/ready", "").await;
    assert_eq!(status, 200);
    let submit = RoutingRequest::Submit {
        tenant: "demo".into(),
        request_id: "s1".into(),
        conn_id: ConnId(0x77),
        queue: "sales".into(),
        skills: "sales >= 5".into(),
        agent_group: None,
        priority: 0,
        enqueued_ms: 1,
        timeout_s: Some(30),
        reply_to: "test:replies".into(),
        user_data: UserData::new(),
    };
    bus.publish(
        &routing_requests_stream("demo"),
        &serde_json::to_vec(&submit).unwrap(),
    )
    .await
    .unwrap();
    let mut reply = None;
    for _ in 0..300 {
        if let Some(e) = bus
            .read_range("test:replies", None, 1)
            .await
            .unwrap()
            .first()
        {
            reply = Some(serde_json::from_slice::<RoutingReply>(&e.payload).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        reply,
        Some(RoutingReply::Target {
            request_id: "s1".into(),
            conn_id: ConnId(0x77),
            agent_id: "a1001".into(),
            dn: "1001".into()
        })
    );
    // agent-state folds the reservation, then the call.
    let mut state = Value::Null;
    for _ in 0..300 {
        state = call(r, "GET", "/v1/tenants/demo/agent-states/a1001", "")
            .await
            .2;
        if state["state"] == "reserved" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state["state"], "reserved", "{state}");
    let ringing = Event::EventRinging(CallAttrs {
        tenant: "demo".into(),
        conn_id: Some(ConnId(0x77)),
        this_dn: "1001".into(),
        ts_ms: 1,
        ..Default::default()
    });
    crate::bus::publish_event(bus.as_ref(), &ringing)
        .await
        .unwrap();
    for _ in 0..300 {
        state = call(r, "GET", "/v1/tenants/demo/agent-states/a1001", "")
            .await
            .2;
        if state["state"] == "busy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state["state"], "busy", "{state}");
    let (_, _, queues) = call(&routing.router, "GET", "/v1/tenants/demo/queues/sales", "").await;
    assert_eq!(queues["waiting"], 0, "{queues}");
    let (status, _, _) = call(&routing.router, "GET", "/v1/tenants/demo/queues/none", "").await;
    assert_eq!(status, 404);

    // The drain saves the state; a new process resumes from it.
    drain.cancel();
    role.task.await.unwrap().unwrap();
    routing.task.await.unwrap().unwrap();
    let again = start(
        config.clone(),
        bus,
        CancellationToken::new(),
        fixed_tenants(&config),
        options("two"),
    )
    .await
    .unwrap();
    let (_, _, body) = call(
        &again.router,
        "GET",
        "/v1/tenants/demo/agent-states/a1001",
        "",
    )
    .await;
    assert_eq!(body["state"], "busy", "{body}");
}

#[tokio::test]
async fn without_a_writer_a_request_times_out_with_504() {
    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).unwrap());
    // Another process holds the tenant's lease.
    bus.lease_acquire("agent-state:demo", "elsewhere", Duration::from_secs(60))
        .await
        .unwrap();
    let mut opts = options("standby");
    opts.answer_timeout = Duration::from_millis(200);
    let role = start(
        Arc::new(Config::demo()),
        bus,
        CancellationToken::new(),
        fixed_tenants(&Config::demo()),
        opts,
    )
    .await
    .unwrap();
    let (status, ct, _) = call(
        &role.router,
        "POST",
        "/v1/tenants/demo/agents/a1001/login",
        "",
    )
    .await;
    assert_eq!((status, ct.as_str()), (504, "application/problem+json"));
    let (_, _, body) = call(&role.router, "GET", "/v1/tenants/demo/agent-states", "").await;
    assert_eq!(body["writer"], false);
}

#[tokio::test]
async fn a_standby_takes_over_with_the_writers_state() {
    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).unwrap());
    let config = Arc::new(Config::demo());
    let (drain_a, drain_b) = (CancellationToken::new(), CancellationToken::new());
    let a = start(
        config.clone(),
        bus.clone(),
        drain_a.clone(),
        fixed_tenants(&config),
        options("a"),
    )
    .await
    .unwrap();
    wait_writer(&a.router).await;
    let b = start(
        config.clone(),
        bus,
        drain_b.clone(),
        fixed_tenants(&config),
        options("b"),
    )
    .await
    .unwrap();
    // B is standby, yet its REST works: the writer answers through the bus.
    let (status, _, body) =
        call(&b.router, "POST", "/v1/tenants/demo/agents/a1003/login", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = call(&b.router, "POST", "/v1/tenants/demo/agents/a1003/ready", "").await;
    assert_eq!(status, 200);
    let (_, _, list) = call(&b.router, "GET", "/v1/tenants/demo/agent-states", "").await;
    assert_eq!(list["writer"], false);
    // A stops (its lease released): B takes over with A's state and carries on.
    drain_a.cancel();
    a.task.await.unwrap().unwrap();
    wait_writer(&b.router).await;
    let (_, _, agent) = call(&b.router, "GET", "/v1/tenants/demo/agent-states/a1003", "").await;
    assert_eq!(agent["state"], "ready", "{agent}");
    let (status, _, body) = call(
        &b.router,
        "POST",
        "/v1/tenants/demo/agents/a1003/logout",
        "",
    )
    .await;
    assert_eq!((status, body["this_dn"].as_str()), (200, Some("1003")));
    drain_b.cancel();
    b.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn agents_and_tenants_changed_over_the_config_api_are_served_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).unwrap());
    let config = Arc::new(Config::demo());
    let (feed, rx) = tokio::sync::watch::channel(Arc::new(config.tenants.clone()));
    let drain = CancellationToken::new();
    let role = start(config.clone(), bus, drain.clone(), rx, options("one"))
        .await
        .unwrap();
    let r = &role.router;
    wait_writer(r).await;
    let (status, _, _) = call(r, "POST", "/v1/tenants/demo/agents/a2001/login", "").await;
    assert_eq!(status, 404, "not an agent yet");

    // A new agent in demo, and a new tenant.
    let mut tenants = config.tenants.clone();
    let mut agent = tenants[0].agents[0].clone();
    agent.login_id = "a2001".into();
    agent.dn = None;
    tenants[0].agents.push(agent);
    let mut acme = tenants[0].clone();
    acme.name = "acme".into();
    tenants.push(acme);
    feed.send(Arc::new(tenants.clone())).unwrap();

    let mut answered = (0, Value::Null);
    for _ in 0..200 {
        let (status, _, body) = call(
            r,
            "POST",
            "/v1/tenants/demo/agents/a2001/login",
            r#"{"dn":"1002"}"#,
        )
        .await;
        answered = (status, body);
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(answered.0, 200, "{}", answered.1);
    assert_eq!(answered.1["this_dn"], "1002");
    let (status, _, body) = call(r, "GET", "/v1/tenants/acme/agent-states/a2001", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "logged_out");

    // The tenant deleted: gone from the API.
    tenants.pop();
    feed.send(Arc::new(tenants)).unwrap();
    let mut status = 200;
    for _ in 0..200 {
        status = call(r, "GET", "/v1/tenants/acme/agent-states", "").await.0;
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 404);
    drain.cancel();
    role.task.await.unwrap().unwrap();
}

/// A process without agent-state (a front-end alone) serves the same routes from the bus: the
/// requests reach the writer, the states are its snapshot's.
#[tokio::test]
async fn remote_routes_answer_as_the_role_does() {
    let dir = tempfile::tempdir().unwrap();
    let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).unwrap());
    let config = Arc::new(Config::demo());
    let drain = CancellationToken::new();
    let role = start(
        config.clone(),
        bus.clone(),
        drain.clone(),
        fixed_tenants(&config),
        options("one"),
    )
    .await
    .unwrap();
    wait_writer(&role.router).await;
    let remote = super::remote_routes(
        config.clone(),
        bus.clone(),
        fixed_tenants(&config),
        Duration::from_secs(3),
    );

    let (status, _, body) = call(&remote, "POST", "/v1/tenants/demo/agents/a1001/login", "").await;
    assert_eq!(
        (status, body["event"].as_str()),
        (200, Some("EventAgentLogin"))
    );
    let (status, _, body) = call(&remote, "POST", "/v1/tenants/demo/agents/a1002/ready", "").await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (409, Some("not_logged_in"))
    );
    for path in [
        "/v1/tenants/demo/agents/nobody/ready",
        "/v1/tenants/nope/agents/a1001/ready",
        "/v1/tenants/demo/agents/a1001/dance",
    ] {
        let here = call(&role.router, "POST", path, "").await;
        assert_eq!(call(&remote, "POST", path, "").await, here, "{path}");
        assert_eq!(here.0, 404, "{path}");
    }

    // The snapshot is saved after the change: the remote view catches up with the writer's.
    let path = "/v1/tenants/demo/agent-states/a1001";
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = call(&remote, "GET", path, "").await.2;
        if seen["state"] == "not_ready" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, call(&role.router, "GET", path, "").await.2);
    let (_, _, here) = call(&role.router, "GET", "/v1/tenants/demo/agent-states", "").await;
    let (_, _, there) = call(&remote, "GET", "/v1/tenants/demo/agent-states", "").await;
    assert_eq!(there["agents"], here["agents"]);
    assert_eq!(
        (here["writer"].as_bool(), there["writer"].as_bool()),
        (Some(true), Some(false))
    );
    let unknown = "/v1/tenants/nope/agent-states";
    assert_eq!(call(&remote, "GET", unknown, "").await.0, 404);
    drain.cancel();
    role.task.await.unwrap().unwrap();
}
