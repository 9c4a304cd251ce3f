//! The role implementations compiled into this binary.

use crate::role::{Registry, RoleContext, RoleHandle, RoleKind};

// The process's bus, opened from `[bus]` by the first role that needs it and shared by all
// (`sip-node` publishes on it, `call-state` consumes from it): take it with
// `bus(&ctx)` below.
use switchboard_services::bus::BusSlot;
use tokio::sync::Mutex;

// The configuration store (`[store]`), opened and seeded by the first role that needs it
// (`sip-node`, `dialplan` or `config`), and the dial plan built from it, kept current by a
// task that follows the store's changes. `sip-node` resolves calls with the same plan that
// `GET /v1/tenants/{t}/dialplan/resolve` answers from.
use std::sync::Arc;
use switchboard_services::dialplan::role::{DialplanCell, DialplanSlot};
use switchboard_services::store::StoreSlot;

/// The process's bus (opened by the first role that asks).
async fn bus(ctx: &RoleContext) -> anyhow::Result<switchboard_services::bus::SharedBus> {
    ctx.shared()
        .get_or_init(BusSlot::default)
        .get_or_open(&ctx.config)
        .await
}

async fn dialplan_cell(ctx: &RoleContext) -> anyhow::Result<Arc<DialplanCell>> {
    let store = ctx
        .shared()
        .get_or_init(StoreSlot::default)
        .get_or_open(&ctx.config)
        .await?;
    ctx.shared()
        .get_or_init(DialplanSlot::default)
        .get_or_start(ctx.config.clone(), store, ctx.drain.clone())
        .await
}

/// `dialplan`: the dial plan of the store (shared with `sip-node` in this process) and
/// `GET /v1/tenants/{t}/dialplan/resolve`.
async fn start_dialplan(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    let cell = dialplan_cell(&ctx).await?;
    // The registered contacts of devices, when the SIP edge runs in this process (it starts
    // before the dial plan).
    let location = ctx
        .shared()
        .get::<switchboard_services::sip::role::SharedLocation>()
        .map(|l| (*l).clone());
    ctx.add_routes(switchboard_services::dialplan::role::routes(
        cell,
        &ctx.config,
        location,
    ));
    Ok(RoleHandle::idle())
}

/// `config`: REST CRUD of tenants and entities on the store, `/openapi.json`, and every
/// change published on the bus (`config:{tenant}`).
async fn start_config(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    let store = ctx
        .shared()
        .get_or_init(StoreSlot::default)
        .get_or_open(&ctx.config)
        .await?;
    let bus = bus(&ctx).await?;
    let role = switchboard_services::config_api::start(store, Some(bus), ctx.drain.clone());
    ctx.add_routes(role.router);
    Ok(RoleHandle::from_task(role.task))
}

/// The SIP edge serves both `sip-proxy` and `registrar` from one core (one set of sockets, one
/// location service); whichever of the two starts first starts it, the other shares it.
struct EdgeOnce(Mutex<bool>);

async fn start_sip_edge(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    let once = ctx.shared().get_or_init(|| EdgeOnce(Mutex::new(false)));
    let mut started = once.0.lock().await;
    let mut handle = if *started {
        RoleHandle::idle()
    } else {
        *started = true;
        start_edge(&ctx).await?
    };
    drop(started);
    if ctx.kinds.contains(&RoleKind::Registrar) {
        handle = with_dn_service(&ctx, handle).await?;
    }
    Ok(handle)
}

async fn start_edge(ctx: &RoleContext) -> anyhow::Result<RoleHandle> {
    let edge =
        switchboard_services::sip::role::start(ctx.config.clone(), ctx.drain.clone()).await?;
    ctx.add_routes(edge.router);
    ctx.shared()
        .get_or_init(|| switchboard_services::sip::role::EdgeControl {
            commands: edge.control.clone(),
            udp: edge.udp,
        });
    let location = edge.location.clone();
    ctx.shared().get_or_init(move || location);
    let mut handle = RoleHandle::from_task(edge.task);
    if let Some(a) = edge.udp {
        handle = handle.bound("sip_udp", a);
    }
    if let Some(a) = edge.tcp {
        handle = handle.bound("sip_tcp", a);
    }
    Ok(handle)
}

/// The bound `mcp.udp` of this process's media server: where `sip-node` plays treatments
/// unless `sip_node.mcp` says otherwise (mcp starts before sip-node).
struct McpUdp(std::net::SocketAddr);

/// The registrar publishes EventDNBackInService / EventDNOutOfService for the tenants'
/// extensions as their devices register and unregister; the watcher runs next to the edge's
/// task in the role's handle.
async fn with_dn_service(ctx: &RoleContext, handle: RoleHandle) -> anyhow::Result<RoleHandle> {
    let Some(location) = ctx
        .shared()
        .get::<switchboard_services::sip::role::SharedLocation>()
    else {
        return Ok(handle);
    };
    let bus = bus(ctx).await?;
    let watcher = switchboard_services::sip::dn_service::spawn(
        &ctx.config,
        (*location).clone(),
        bus,
        ctx.drain.clone(),
    );
    let RoleHandle { task, bound } = handle;
    let task = match task {
        None => watcher,
        Some(edge) => tokio::spawn(async move {
            let flat = |h: tokio::task::JoinHandle<anyhow::Result<()>>| async move {
                h.await.map_err(|e| anyhow::anyhow!("SIP edge task: {e}"))?
            };
            tokio::try_join!(flat(edge), flat(watcher))?;
            Ok(())
        }),
    };
    Ok(RoleHandle {
        task: Some(task),
        bound,
    })
}

/// The media server (`mcp`): its own SIP sockets (`[mcp] udp/tcp`), reported as `mcp_udp` and
/// `mcp_tcp` in the `listening` line, with the built-in VoiceXML browser behind
/// `sip:dialog@HOST;voicexml=URL` (RFC 5552).
async fn start_mcp(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    use switchboard_services::mcp::dialog::DialogRunner;
    use switchboard_services::mcp::vxml::{VxmlRunner, VxmlSettings};
    let runner: std::sync::Arc<dyn DialogRunner> =
        std::sync::Arc::new(VxmlRunner::new(VxmlSettings::default()));
    // Transfers to tel: numbers go to `mcp.transfer_gateway`, or else to the SIP edge of this
    // process when it runs one (it starts before mcp).
    let mut config = ctx.config.clone();
    if config.mcp.transfer_gateway.is_none() {
        let edge = ctx
            .shared()
            .get::<switchboard_services::sip::role::EdgeControl>()
            .and_then(|e| e.udp);
        if let Some(edge) = edge {
            let mut c = (*config).clone();
            c.mcp.transfer_gateway = Some(edge);
            config = std::sync::Arc::new(c);
        }
    }
    let mcp =
        switchboard_services::mcp::role::start(config, ctx.drain.clone(), Some(runner)).await?;
    ctx.add_routes(mcp.router);
    let udp = mcp.udp;
    ctx.shared().get_or_init(move || McpAddress(udp));
    let mut handle = RoleHandle::from_task(mcp.task);
    if let Some(a) = mcp.udp {
        handle = handle.bound("mcp_udp", a);
        ctx.shared().get_or_init(|| McpUdp(a));
    }
    if let Some(a) = mcp.tcp {
        handle = handle.bound("mcp_tcp", a);
    }
    Ok(handle)
}

/// The SIP Server (`sip-node`): the B2BUA on `sip_node.udp` (reported as `sip_node_udp`),
/// REST call control under `/v1/tenants/{t}/calls`, events on the bus. When the SIP edge runs
/// in this process it sends new calls here and takes our legs to the phones.
async fn start_sip_node(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    let bus = bus(&ctx).await?;
    let edge = ctx
        .shared()
        .get::<switchboard_services::sip::role::EdgeControl>()
        .map(|e| (*e).clone());
    let directory =
        switchboard_services::sip_node::core::Directory::live(dialplan_cell(&ctx).await?);
    let mut config = ctx.config.clone();
    if config.sip_node.mcp.is_none() {
        if let Some(mcp) = ctx.shared().get::<McpUdp>() {
            let mut c = (*config).clone();
            c.sip_node.mcp = Some(mcp.0);
            config = Arc::new(c);
        }
    }
    let node = switchboard_services::sip_node::role::start(
        config,
        bus,
        edge,
        directory,
        ctx.drain.clone(),
    )
    .await?;
    ctx.add_routes(node.router);
    let route = node.voicemail.clone();
    ctx.shared().get_or_init(move || route);
    Ok(RoleHandle::from_task(node.task).bound("sip_node_udp", node.udp))
}

/// The media server of this process (its SIP UDP address), for voicemail legs.
struct McpAddress(Option<std::net::SocketAddr>);

/// `voicemail`: the deposit and access menus (VoiceXML run by the media server), the
/// messages' REST API, the retention sweep, and message waiting on `voicemail.udp`
/// (reported as `voicemail_udp`). It starts after `sip-node` and `mcp`, so it tells the
/// SIP Server of this process where voicemail legs go, and the SIP edge where message-summary
/// SUBSCRIBEs go.
async fn start_voicemail(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    use switchboard_services::sip_node::core::{VoicemailRoute, VoicemailTarget};
    use switchboard_services::voicemail;
    let store = ctx
        .shared()
        .get_or_init(StoreSlot::default)
        .get_or_open(&ctx.config)
        .await?;
    let bus = bus(&ctx).await?;
    let cell = dialplan_cell(&ctx).await?;
    let cfg = &ctx.config.voicemail;
    if let Some(route) = ctx.shared().get::<VoicemailRoute>() {
        // The same media server as the treatments' unless voicemail names its own.
        let mcp = cfg
            .mcp
            .or(ctx.config.sip_node.mcp)
            .or_else(|| ctx.shared().get::<McpAddress>().and_then(|a| a.0));
        let http = ctx.shared().get::<crate::role::HttpAddr>().map(|a| a.0);
        let base_url = match (cfg.url.is_empty(), http) {
            (false, _) => Some(cfg.url.trim_end_matches('/').to_owned()),
            (true, Some(h)) => Some(format!("http://{h}")),
            (true, None) => None,
        };
        match (mcp, base_url) {
            (Some(mcp), Some(base_url)) => route.set(VoicemailTarget { mcp, base_url }),
            _ => tracing::warn!(
                "voicemail: no media server (mcp role or voicemail.mcp): calls to mailboxes get 503"
            ),
        }
    }
    let location = ctx
        .shared()
        .get::<switchboard_services::sip::role::SharedLocation>()
        .map(|l| (*l).clone());
    let mut tasks = Vec::new();
    let mut bound = None;
    let mwi = match cfg.udp {
        Some(udp) => {
            let m = voicemail::mwi::start(
                udp,
                &ctx.config,
                cell.clone(),
                store.clone(),
                location,
                ctx.drain.clone(),
            )
            .await?;
            if let Some(edge) = ctx
                .shared()
                .get::<switchboard_services::sip::role::EdgeControl>()
            {
                let cmd = switchboard_services::sip::edge::EdgeCommand::SetMwiServer(vec![m.udp]);
                edge.commands
                    .send(cmd)
                    .await
                    .map_err(|_| anyhow::anyhow!("the SIP edge stopped"))?;
            }
            bound = Some(m.udp);
            tasks.push(m.task);
            Some(m.mwi)
        }
        None => None,
    };
    let running = voicemail::role::start(
        ctx.config.voicemail_dir(),
        store,
        Some(bus),
        cell,
        mwi,
        ctx.drain.clone(),
    );
    ctx.add_routes(running.router);
    tasks.push(running.task);
    let mut handle = RoleHandle::spawn(async move {
        for t in tasks {
            t.await??;
        }
        Ok(())
    });
    if let Some(a) = bound {
        handle = handle.bound("voicemail_udp", a);
    }
    Ok(handle)
}

/// `call-state`: folds `events:{tenant}` into call threads; `GET /v1/tenants/{t}/calls[/{id}]`.
/// Its state is shared as `Arc<switchboard_services::call_state::CallState>`.
async fn start_call_state(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    let bus = bus(&ctx).await?;
    let role =
        switchboard_services::call_state::start(ctx.config.clone(), bus, ctx.drain.clone()).await?;
    ctx.add_routes(role.router);
    let state = role.state.clone();
    ctx.shared().get_or_init(move || state);
    Ok(RoleHandle::from_task(role.task))
}

/// `front-end`: the desktop API's event WebSocket, `GET /v1/tenants/{t}/events` (the API-key
/// gate in front of every `/v1/` route is the HTTP server's, see `http.rs`). The agent, queue
/// and call-control routes of roles that run in other processes are served over the bus, so
/// that the desktop API can run on nodes of its own.
async fn start_front_end(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    let bus = bus(&ctx).await?;
    let tenants = tenants_feed(&ctx).await?;
    ctx.add_routes(switchboard_services::front_end::start(
        tenants.clone(),
        bus.clone(),
        ctx.drain.clone(),
    ));
    add_remote_routes(&ctx, bus, tenants);
    Ok(RoleHandle::idle())
}

/// The routes of `agent-state`, `routing` and `sip-node` when they do not run in this
/// process (`up` runs them all: nothing is added there).
fn add_remote_routes(
    ctx: &RoleContext,
    bus: switchboard_services::bus::SharedBus,
    tenants: switchboard_services::single_writer::TenantsFeed,
) {
    let here = ctx.shared().get::<crate::role::ProcessRoles>();
    let elsewhere = |kind| here.as_ref().is_some_and(|h| !h.runs(kind));
    use switchboard_services::{agent_state, routing, sip_node};
    // How long a request waits for the owning role: what agent-state's own REST waits.
    let timeout = agent_state::Options::default().answer_timeout;
    let config = ctx.config.clone();
    if elsewhere(RoleKind::AgentState) {
        tracing::info!("front-end: the agent routes go to agent-state over the bus");
        ctx.add_routes(agent_state::remote_routes(
            config.clone(),
            bus.clone(),
            tenants.clone(),
            timeout,
        ));
    }
    if elsewhere(RoleKind::Routing) {
        tracing::info!("front-end: the queue routes read routing's state on the bus");
        ctx.add_routes(routing::remote_routes(config, bus.clone(), tenants));
    }
    if elsewhere(RoleKind::SipNode) {
        tracing::info!("front-end: call control goes to the owning sip-node over the bus");
        ctx.add_routes(sip_node::role::remote_routes(bus, timeout));
    }
}

/// The configuration store's tenants, following changes made over the REST API.
async fn tenants_feed(
    ctx: &RoleContext,
) -> anyhow::Result<switchboard_services::single_writer::TenantsFeed> {
    let store = ctx
        .shared()
        .get_or_init(StoreSlot::default)
        .get_or_open(&ctx.config)
        .await?;
    switchboard_services::store::watch_tenants(store, ctx.config.clone(), ctx.drain.clone()).await
}

/// `agent-state`: agent login, ready, not ready, after-call work per tenant (one writer per
/// tenant by bus lease); `POST /v1/tenants/{t}/agents/{id}/{action}`,
/// `GET /v1/tenants/{t}/agent-states[/{id}]`.
/// Its state is shared as `Arc<switchboard_services::agent_state::AgentState>`.
async fn start_agent_state(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    let bus = bus(&ctx).await?;
    let role = switchboard_services::agent_state::start(
        ctx.config.clone(),
        bus,
        ctx.drain.clone(),
        tenants_feed(&ctx).await?,
        Default::default(),
    )
    .await?;
    ctx.add_routes(role.router);
    let state = role.state.clone();
    ctx.shared().get_or_init(move || state);
    Ok(RoleHandle::from_task(role.task))
}

/// `routing`: queues and agent selection per tenant (one writer per tenant by bus lease);
/// `GET /v1/tenants/{t}/queues[/{name}]`.
async fn start_routing(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    let bus = bus(&ctx).await?;
    let role = switchboard_services::routing::start(
        ctx.config.clone(),
        bus,
        ctx.drain.clone(),
        tenants_feed(&ctx).await?,
        Default::default(),
    )
    .await?;
    ctx.add_routes(role.router);
    let state = role.state.clone();
    ctx.shared().get_or_init(move || state);
    Ok(RoleHandle::from_task(role.task))
}

/// `orchestrator`: runs the route points' SCXML strategies (consumer group `orchestrator` on
/// `events:{tenant}`), with sessions persisted on the bus and taken over by another node when
/// this one dies; serves the built-in documents at `/orchestrator/builtin/{name}`.
async fn start_orchestrator(ctx: RoleContext) -> anyhow::Result<RoleHandle> {
    let bus = bus(&ctx).await?;
    let http = ctx
        .shared()
        .get::<crate::role::HttpAddr>()
        .map_or(ctx.config.http.listen, |a| a.0);
    let mut settings =
        switchboard_services::orchestrator::role::Settings::new(http, ctx.config.data_dir.clone());
    settings.lease = std::time::Duration::from_millis(ctx.config.orchestrator.lease_ms);
    settings.max_session = std::time::Duration::from_secs(ctx.config.orchestrator.max_session_s);
    settings.reannounce = std::time::Duration::from_secs(ctx.config.bus.retention_s / 4);
    // Route points from the live dial plan (the store, REST changes included) when a role of
    // this process keeps one, else from the configuration file.
    use switchboard_services::orchestrator::role::RoutePoints;
    let points = match ctx.shared().get::<DialplanSlot>().and_then(|s| s.get()) {
        Some(cell) => RoutePoints::Live(cell),
        None => RoutePoints::Config(ctx.config.clone()),
    };
    let node =
        switchboard_services::orchestrator::role::start(points, bus, settings, ctx.drain.clone());
    ctx.add_routes(node.router);
    Ok(RoleHandle::from_task(node.task))
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(RoleKind::SipProxy, start_sip_edge);
    r.register(RoleKind::Registrar, start_sip_edge);
    r.register(RoleKind::SipNode, start_sip_node);
    r.register(RoleKind::Dialplan, start_dialplan);
    r.register(RoleKind::Config, start_config);
    r.register(RoleKind::Mcp, start_mcp);
    r.register(RoleKind::CallState, start_call_state);
    r.register(RoleKind::Voicemail, start_voicemail);
    r.register(RoleKind::FrontEnd, start_front_end);
    r.register(RoleKind::AgentState, start_agent_state);
    r.register(RoleKind::Routing, start_routing);
    r.register(RoleKind::Orchestrator, start_orchestrator);
    r
}
