//! Async glue of the SIP edge: binds the sockets, builds the core from the configuration, serves
//! `GET /v1/registrations`, and runs the driver until the drain.

use super::edge::{registrations_json, EdgeSettings, SipEdge};
use super::location::Location;
use super::registrar::{Registrar, RegistrarSettings, Tenant};
use super::routes::Routes;
use super::target::Identity;
use anyhow::Context as _;
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_config::{Config, DigestAlgorithm};
use switchboard_sip::auth::Algorithm;
use switchboard_sip::transaction::Timers;
use switchboard_sip_net::{Driver, NetConfig, Sockets};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The handle other roles in the process use to steer the running edge: the `sip-node` role
/// sends `EdgeCommand::SetCallControl(vec![its address])` once bound, so that new calls reach
/// it. Put in the process's shared state by the binary when the edge starts.
#[derive(Clone)]
pub struct EdgeControl {
    pub commands: tokio::sync::mpsc::Sender<super::edge::EdgeCommand>,
    /// The edge's bound UDP address: where the SIP Server sends its legs by default.
    pub udp: Option<SocketAddr>,
}

/// A started SIP edge.
pub struct EdgeRunning {
    pub router: Router,
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// Commands to the running edge (e.g. the SIP Server's address for call control).
    pub control: tokio::sync::mpsc::Sender<super::edge::EdgeCommand>,
    /// The registrar's location service (read by the dial plan's device resolution).
    pub location: SharedLocation,
}

/// The location service of the SIP edge running in this process, for readers in other roles.
#[derive(Clone)]
pub struct SharedLocation(pub Arc<Mutex<Location>>);

impl SharedLocation {
    /// The live contacts of `user@domain`, best first: `(contact, seconds left, source)`.
    pub fn contacts(&self, aor: &str, now: Instant) -> Vec<(String, u64, String)> {
        match self.0.lock() {
            Ok(l) => l
                .lookup(aor, now)
                .into_iter()
                .map(|b| {
                    (
                        b.contact.clone(),
                        super::location::remaining(b, now),
                        b.source.addr.to_string(),
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

pub fn tenants(cfg: &Config) -> Vec<Tenant> {
    cfg.tenants
        .iter()
        .map(|t| Tenant {
            name: t.name.clone(),
            domain: t.domain.clone(),
            users: t
                .users
                .iter()
                .map(|u| (u.user.clone(), u.password.clone()))
                .collect(),
        })
        .collect()
}

fn registrar_settings(cfg: &Config) -> RegistrarSettings {
    let r = &cfg.registrar;
    RegistrarSettings {
        min_expires: r.min_expires,
        max_expires: r.max_expires,
        default_expires: r.default_expires,
        nonce_ttl_s: r.nonce_ttl_s,
        algorithms: r
            .algorithms
            .iter()
            .map(|a| match a {
                DigestAlgorithm::Md5 => Algorithm::Md5,
                DigestAlgorithm::Sha256 => Algorithm::Sha256,
            })
            .collect(),
    }
}

pub async fn start(cfg: Arc<Config>, drain: CancellationToken) -> anyhow::Result<EdgeRunning> {
    let net = NetConfig {
        udp: cfg.sip.udp,
        tcp: cfg.sip.tcp,
        max_message_bytes: cfg.sip.max_message_bytes,
        drain_grace: Duration::from_millis(cfg.drain.grace_ms),
    };
    let sockets = Sockets::bind(&net).await.with_context(|| {
        format!(
            "cannot bind SIP sockets (sip.udp {:?}, sip.tcp {:?})",
            net.udp, net.tcp
        )
    })?;
    let (udp, tcp) = (sockets.local_udp, sockets.local_tcp);
    let mut domains = vec![cfg.sip.domain.clone()];
    domains.extend(cfg.tenants.iter().map(|t| t.domain.clone()));
    let settings = EdgeSettings {
        identity: Identity { udp, tcp, domains },
        record_route: cfg.proxy.record_route,
        health_interval: Duration::from_millis(cfg.proxy.health_interval_ms),
        node_timeout: Duration::from_millis(cfg.proxy.node_timeout_ms),
        timers: Timers {
            t1: Duration::from_millis(cfg.sip.t1_ms),
            t2: Duration::from_millis(cfg.sip.t2_ms),
            t4: Duration::from_millis(cfg.sip.t4_ms),
            ..Timers::default()
        },
    };
    let location = Arc::new(Mutex::new(Location::default()));
    let shared_location = SharedLocation(location.clone());
    let registrar = Registrar::new(
        registrar_settings(&cfg),
        tenants(&cfg),
        rand::random(),
        location.clone(),
    );
    let rules: Vec<(String, Vec<SocketAddr>)> = cfg
        .proxy
        .routes
        .iter()
        .map(|r| (r.prefix.clone(), r.nodes.clone()))
        .collect();
    let edge = SipEdge::new(
        settings,
        registrar,
        Routes::new(&rules),
        rand::random(),
        Instant::now(),
    );
    let router = Router::new().route(
        "/v1/registrations",
        get(move || {
            let loc = location.clone();
            async move {
                let now = Instant::now();
                let body = match loc.lock() {
                    Ok(l) => registrations_json(&l, now),
                    Err(_) => serde_json::json!({ "registrations": [] }),
                };
                Json(body)
            }
        }),
    );
    tracing::info!(?udp, ?tcp, "SIP edge (proxy + registrar) listening");
    let (control, commands) = tokio::sync::mpsc::channel(16);
    let (outputs, _) = tokio::sync::mpsc::unbounded_channel();
    let driver = switchboard_sip_net::spawn_on_own_thread("sip-edge", move || async move {
        Driver::new(edge, sockets, net)?
            .run_controlled(drain, commands, outputs)
            .await;
        Ok::<_, std::io::Error>(())
    })?;
    let task = tokio::spawn(async move {
        driver.await??;
        Ok(())
    });
    Ok(EdgeRunning {
        router,
        udp,
        tcp,
        task,
        control,
        location: shared_location,
    })
}
