//! The switchboard process: starts roles, serves health and metrics, drains on SIGTERM.
//!
//! [`run`] is the supervisor behind `switchboard up` and `switchboard run --roles ...`. Roles
//! plug in through [`role::Registry`]; see [`role`] for the contract.

mod builtin;
pub mod http;
pub mod role;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use switchboard_config::Config;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use role::{Registry, Role, RoleContext, RoleHandle, RoleKind, Shared};

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Drained after a signal; every role finished within the grace period.
    Drained,
    /// Drained after a signal, but some roles had not finished when the grace period ended.
    GraceExpired,
    /// A role failed (at start or while running); the others were drained.
    RoleFailed,
    /// A second signal arrived during the drain.
    Interrupted,
}

impl Outcome {
    /// The process exit code: 0 for a drain (even one cut short by the grace bound, which is
    /// what the bound is for), 1 when a role failed, 130 when interrupted twice.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Drained | Outcome::GraceExpired => 0,
            Outcome::RoleFailed => 1,
            Outcome::Interrupted => 130,
        }
    }
}

/// Options of [`run`].
#[derive(Debug)]
pub struct RunOptions {
    /// Drain on SIGTERM and SIGINT (default true; tests running in-process turn it off).
    pub os_signals: bool,
    /// Drain when this token is cancelled, like on SIGTERM.
    pub shutdown: CancellationToken,
    /// Receives every bound address (`http`, then what roles reported) once ready.
    pub listening: Option<tokio::sync::oneshot::Sender<Vec<(String, SocketAddr)>>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            os_signals: true,
            shutdown: CancellationToken::new(),
            listening: None,
        }
    }
}

/// Runs `roles` until SIGTERM/SIGINT (or [`RunOptions::shutdown`]), then drains.
///
/// `metrics` is the handle of the Prometheus recorder, rendered at `/metrics`.
pub async fn run(
    config: Config,
    roles: &[RoleKind],
    registry: &Registry,
    metrics: PrometheusHandle,
    options: RunOptions,
) -> anyhow::Result<Outcome> {
    let config = Arc::new(config);
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();

    let mut signals = Signals::install(options.os_signals, options.shutdown.clone())?;
    let state = http::AppState::new(metrics);
    metrics::gauge!("switchboard_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!("switchboard_ready").set(0.0);
    metrics::gauge!("switchboard_draining").set(0.0);

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on http.listen {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let role_routes = Arc::new(RwLock::new(Router::new()));
    let stop_http = CancellationToken::new();
    let keys = Arc::new(switchboard_services::front_end::auth::KeyBook::from_config(
        &config,
    ));
    let server = tokio::spawn(http::serve(
        listener,
        state.clone(),
        role_routes.clone(),
        keys,
        stop_http.clone(),
    ));

    let drain = CancellationToken::new();
    let shared = Shared::default();
    shared.get_or_init(|| role::HttpAddr(http_addr));
    shared.get_or_init(|| role::ProcessRoles(roles.to_vec()));
    let mut running: JoinSet<(RoleKind, RoleExit)> = JoinSet::new();
    let mut bound: Vec<(String, SocketAddr)> = vec![("http".to_owned(), http_addr)];
    let mut started = Vec::new();
    let mut missing = Vec::new();
    // None: all started; Some(None): stop requested during startup; Some(Some(o)): failed.
    let mut interrupted: Option<Option<Outcome>> = None;

    for &kind in &roles {
        let Some(role) = registry.get(kind) else {
            missing.push(kind);
            continue;
        };
        // One implementation registered for several kinds starts once, for all of them.
        let kinds: Vec<RoleKind> = roles
            .iter()
            .copied()
            .filter(|k| registry.get(*k).is_some_and(|r| Arc::ptr_eq(&r, &role)))
            .collect();
        if kinds.first() != Some(&kind) {
            continue;
        }
        let ctx = RoleContext::new(
            kind,
            config.clone(),
            drain.clone(),
            role_routes.clone(),
            shared.clone(),
        )
        .with_kinds(kinds.clone());
        let start = role.start(ctx);
        let result = tokio::select! {
            result = start => result,
            signal = signals.next() => {
                warn!(%signal, role = %kind, "signal while starting roles: draining");
                interrupted = Some(None);
                break;
            }
        };
        match result {
            Ok(handle) => {
                info!(role = %list(&kinds), "role started");
                bound.extend(handle.bound);
                if let Some(task) = handle.task {
                    running.spawn(async move { (kind, RoleExit::from(task.await)) });
                }
                started.extend(kinds);
            }
            Err(e) => {
                error!(role = %kind, error = format!("{e:#}"), "role failed to start");
                interrupted = Some(Some(Outcome::RoleFailed));
                break;
            }
        }
    }

    let mut outcome = None;
    if let Some(early) = interrupted {
        outcome = early;
    } else {
        if !missing.is_empty() {
            warn!(
                roles = %list(&missing),
                "roles requested but not implemented in this build: not started"
            );
        }
        let line: Vec<String> = bound.iter().map(|(k, a)| format!("{k}={a}")).collect();
        info!("listening {}", line.join(" "));
        if let Some(tx) = options.listening {
            let _ = tx.send(bound.clone());
        }
        info!(
            started = %list(&started),
            not_implemented = %list(&missing),
            "ready"
        );
        metrics::gauge!("switchboard_roles_running").set(started.len() as f64);
        state.ready.store(true, Ordering::SeqCst);
        metrics::gauge!("switchboard_ready").set(1.0);

        tokio::select! {
            signal = signals.next() => {
                info!(%signal, grace_ms = config.drain.grace_ms, "signal received: draining");
            }
            Some(joined) = running.join_next() => {
                match joined {
                    Ok((kind, exit)) => error!(
                        role = %kind, exit = %exit, "role stopped before the drain: shutting down"
                    ),
                    Err(e) => error!(error = %e, "role supervisor task failed: shutting down"),
                }
                outcome = Some(Outcome::RoleFailed);
            }
        }
    }

    // Drain: not ready any more, roles stop taking new work, wait for them within the bound.
    state.ready.store(false, Ordering::SeqCst);
    state.draining.store(true, Ordering::SeqCst);
    metrics::gauge!("switchboard_ready").set(0.0);
    metrics::gauge!("switchboard_draining").set(1.0);
    drain.cancel();
    let grace = Duration::from_millis(config.drain.grace_ms);
    let deadline = tokio::time::Instant::now() + grace;
    let drained = loop {
        tokio::select! {
            joined = running.join_next() => match joined {
                None => break Outcome::Drained,
                Some(Ok((kind, RoleExit::Finished))) => info!(role = %kind, "role drained"),
                Some(Ok((kind, exit))) => {
                    error!(role = %kind, exit = %exit, "role failed while draining");
                    outcome.get_or_insert(Outcome::RoleFailed);
                }
                Some(Err(e)) => {
                    error!(error = %e, "role supervisor task failed");
                    outcome.get_or_insert(Outcome::RoleFailed);
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                warn!(
                    unfinished = running.len(),
                    grace_ms = config.drain.grace_ms,
                    "drain grace period over: abandoning unfinished roles"
                );
                running.abort_all();
                break Outcome::GraceExpired;
            }
            signal = signals.next() => {
                warn!(%signal, "second signal during the drain: exiting now");
                running.abort_all();
                break Outcome::Interrupted;
            }
        }
    };
    let outcome = match (outcome, drained) {
        (_, Outcome::Interrupted) => Outcome::Interrupted,
        (Some(o), _) => o,
        (None, d) => d,
    };

    stop_http.cancel();
    match tokio::time::timeout(Duration::from_secs(2), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "http server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "http server task failed"),
        Err(_) => warn!("http server did not stop within 2 s"),
    }
    info!(outcome = ?outcome, "stopped");
    Ok(outcome)
}

fn list(kinds: &[RoleKind]) -> String {
    if kinds.is_empty() {
        return "none".to_owned();
    }
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// How a role's task ended.
enum RoleExit {
    Finished,
    Failed(anyhow::Error),
    Panicked,
    Cancelled,
}

impl From<Result<anyhow::Result<()>, tokio::task::JoinError>> for RoleExit {
    fn from(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> Self {
        match r {
            Ok(Ok(())) => RoleExit::Finished,
            Ok(Err(e)) => RoleExit::Failed(e),
            Err(e) if e.is_panic() => RoleExit::Panicked,
            Err(_) => RoleExit::Cancelled,
        }
    }
}

impl std::fmt::Display for RoleExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoleExit::Finished => f.write_str("finished"),
            RoleExit::Failed(e) => write!(f, "error: {e:#}"),
            RoleExit::Panicked => f.write_str("panicked"),
            RoleExit::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// SIGTERM, SIGINT and [`RunOptions::shutdown`] as one stream of stop requests.
struct Signals {
    #[cfg(unix)]
    os: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    #[cfg(not(unix))]
    os: Option<()>,
    token: CancellationToken,
    token_fired: bool,
}

impl Signals {
    fn install(os_signals: bool, token: CancellationToken) -> anyhow::Result<Self> {
        let os = if os_signals {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                Some((
                    signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                    signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
                ))
            }
            #[cfg(not(unix))]
            {
                Some(())
            }
        } else {
            None
        };
        Ok(Signals {
            os,
            token,
            token_fired: false,
        })
    }

    /// The name of the next stop request (cancel safe). The shutdown token counts once.
    async fn next(&mut self) -> &'static str {
        let token = self.token.clone();
        let watch_token = !self.token_fired;
        let fired = &mut self.token_fired;
        let os = async {
            match &mut self.os {
                #[cfg(unix)]
                Some((term, int)) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                },
                #[cfg(not(unix))]
                Some(()) => {
                    let _ = tokio::signal::ctrl_c().await;
                    "ctrl-c"
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            name = os => name,
            _ = token.cancelled(), if watch_token => {
                *fired = true;
                "shutdown request"
            }
        }
    }
}
