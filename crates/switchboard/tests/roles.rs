//! The role seam, in process: roles start, add routes, report addresses, and drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusBuilder;
use switchboard::{Outcome, Registry, RoleContext, RoleHandle, RoleKind, RunOptions};
use switchboard_config::Config;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn config(grace_ms: u64) -> Config {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.drain.grace_ms = grace_ms;
    // These tests are about roles, not keys (front_end.rs tests the gate).
    config.http.auth = switchboard_config::HttpAuth::None;
    config
}

struct Running {
    addrs: Vec<(String, SocketAddr)>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<Outcome>>,
}

impl Running {
    fn addr(&self, key: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.addrs))
    }

    async fn get(&self, path: &str) -> switchboard_testkit::HttpResponse {
        let addr = self.addr("http");
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || switchboard_testkit::http_get(addr, &path))
            .await
            .expect("join")
            .expect("GET")
    }
}

async fn start(registry: Registry, roles: &[RoleKind], grace_ms: u64) -> Running {
    let (tx, rx) = oneshot::channel();
    let shutdown = CancellationToken::new();
    let options = RunOptions {
        os_signals: false,
        shutdown: shutdown.clone(),
        listening: Some(tx),
    };
    let roles = roles.to_vec();
    let handle = PrometheusBuilder::new().build_recorder().handle();
    let task = tokio::spawn(async move {
        switchboard::run(config(grace_ms), &roles, &registry, handle, options).await
    });
    let addrs = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("ready in time")
        .expect("listening addresses");
    Running {
        addrs,
        shutdown,
        task,
    }
}

async fn outcome(task: JoinHandle<anyhow::Result<Outcome>>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run returns")
        .expect("join")
        .expect("run ok")
}

#[tokio::test]
async fn role_adds_routes_reports_addresses_and_drains() {
    let release = Arc::new(Notify::new());
    let mut registry = Registry::new();
    let release_in_role = release.clone();
    registry.register(RoleKind::Registrar, move |ctx: RoleContext| {
        let release = release_in_role.clone();
        async move {
            assert_eq!(ctx.kind, RoleKind::Registrar);
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            let addr = socket.local_addr()?;
            let users = ctx.config.tenants.len();
            ctx.add_routes(Router::new().route(
                "/v1/registrations",
                get(move || async move { format!("[] tenants={users}") }),
            ));
            let drain = ctx.drain.clone();
            Ok(RoleHandle::spawn(async move {
                drain.cancelled().await;
                // Open transactions finish here; the test decides when.
                release.notified().await;
                drop(socket);
                Ok(())
            })
            .bound("sip_udp", addr))
        }
    });

    let sb = start(registry, &[RoleKind::Registrar, RoleKind::Mcp], 10_000).await;
    assert_ne!(sb.addr("sip_udp").port(), 0);
    let regs = sb.get("/v1/registrations").await;
    assert_eq!(regs.status, 200);
    assert_eq!(regs.body, "[] tenants=0");
    assert_eq!(sb.get("/readyz").await.status, 200);

    sb.shutdown.cancel();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = sb.get("/readyz").await;
        if ready.status == 503 {
            assert_eq!(ready.body.trim(), "draining");
            break;
        }
        assert!(Instant::now() < deadline, "readyz never went 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Health stays green while draining.
    assert_eq!(sb.get("/healthz").await.status, 200);
    release.notify_one();
    assert_eq!(outcome(sb.task).await, Outcome::Drained);
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let mut registry = Registry::new();
    registry.register(RoleKind::SipNode, |_ctx: RoleContext| async move {
        // Ignores the drain.
        Ok(RoleHandle::spawn(std::future::pending()))
    });
    let sb = start(registry, &[RoleKind::SipNode], 200).await;
    let asked = Instant::now();
    sb.shutdown.cancel();
    assert_eq!(outcome(sb.task).await, Outcome::GraceExpired);
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert_eq!(Outcome::GraceExpired.exit_code(), 0);
}

#[tokio::test]
async fn failing_start_stops_the_process() {
    let mut registry = Registry::new();
    registry.register(RoleKind::SipProxy, |_ctx: RoleContext| async move {
        Ok(RoleHandle::spawn(async { Ok(()) }))
    });
    registry.register(RoleKind::Registrar, |_ctx: RoleContext| async move {
        Err::<RoleHandle, _>(anyhow::anyhow!("cannot bind"))
    });
    let handle = PrometheusBuilder::new().build_recorder().handle();
    let options = RunOptions {
        os_signals: false,
        ..RunOptions::default()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        switchboard::run(
            config(1000),
            &[RoleKind::Registrar, RoleKind::SipProxy],
            &registry,
            handle,
            options,
        ),
    )
    .await
    .expect("returns");
    let outcome = result.expect("run ok");
    assert_eq!(outcome, Outcome::RoleFailed);
    assert_eq!(outcome.exit_code(), 1);
}

#[tokio::test]
async fn role_ending_early_stops_the_process() {
    let mut registry = Registry::new();
    registry.register(RoleKind::Mcp, |_ctx: RoleContext| async move {
        Ok(RoleHandle::spawn(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            anyhow::bail!("socket closed")
        }))
    });
    registry.register(RoleKind::Voicemail, |_ctx: RoleContext| async move {
        Ok(RoleHandle::idle())
    });
    let sb = start(registry, &[RoleKind::Mcp, RoleKind::Voicemail], 1000).await;
    assert_eq!(outcome(sb.task).await, Outcome::RoleFailed);
}

#[tokio::test]
async fn one_implementation_for_several_kinds_starts_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let starts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let (starts_in, seen_in) = (starts.clone(), seen.clone());
    registry.register_many(
        &[RoleKind::SipProxy, RoleKind::Registrar],
        move |ctx: RoleContext| {
            starts_in.fetch_add(1, Ordering::SeqCst);
            seen_in
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(ctx.kinds.clone());
            async move { Ok(RoleHandle::idle()) }
        },
    );
    let sb = start(
        registry,
        &[RoleKind::Registrar, RoleKind::Mcp, RoleKind::SipProxy],
        1000,
    )
    .await;
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    assert_eq!(
        *seen.lock().unwrap_or_else(|e| e.into_inner()),
        vec![vec![RoleKind::SipProxy, RoleKind::Registrar]]
    );
    sb.shutdown.cancel();
    assert_eq!(outcome(sb.task).await, Outcome::Drained);
}

#[tokio::test]
async fn stop_request_during_startup_drains_cleanly() {
    let mut registry = Registry::new();
    registry.register(RoleKind::SipProxy, |ctx: RoleContext| async move {
        let drain = ctx.drain.clone();
        Ok(RoleHandle::spawn(async move {
            drain.cancelled().await;
            Ok(())
        }))
    });
    // The second role never finishes starting.
    registry.register(RoleKind::Registrar, |_ctx: RoleContext| async move {
        std::future::pending::<anyhow::Result<RoleHandle>>().await
    });
    let shutdown = CancellationToken::new();
    let options = RunOptions {
        os_signals: false,
        shutdown: shutdown.clone(),
        listening: None,
    };
    let handle = PrometheusBuilder::new().build_recorder().handle();
    let task = tokio::spawn(async move {
        switchboard::run(
            config(1000),
            &[RoleKind::SipProxy, RoleKind::Registrar],
            &registry,
            handle,
            options,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    assert_eq!(outcome(task).await, Outcome::Drained);
}
