//! The process's HTTP server: `/healthz`, `/readyz`, `/metrics`, and the routes roles add.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use switchboard_services::front_end::auth::KeyBook;
use switchboard_services::front_end::gate::gate;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// State behind the built-in endpoints.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// Flags read by `/readyz`.
pub struct Inner {
    /// All roles started and not draining.
    pub ready: AtomicBool,
    /// SIGTERM received.
    pub draining: AtomicBool,
    metrics: PrometheusHandle,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    /// New state: not ready, not draining.
    pub fn new(metrics: PrometheusHandle) -> Self {
        AppState {
            inner: Arc::new(Inner {
                ready: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                metrics,
            }),
        }
    }
}

/// The router: built-in endpoints, then whatever `role_routes` holds at request time, every
/// `/v1/` request behind the API-key gate (`http.auth`).
pub fn router(state: AppState, role_routes: Arc<RwLock<Router>>, keys: Arc<KeyBook>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
        .fallback(move |req: Request| {
            let routes = role_routes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            async move {
                match routes.oneshot(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        })
        .layer(middleware::from_fn_with_state(keys, gate))
        .layer(middleware::from_fn(count_requests))
}

/// Serves until `stop` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    role_routes: Arc<RwLock<Router>>,
    keys: Arc<KeyBook>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state, role_routes, keys))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn count_requests(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("switchboard_http_requests_total", "status" => class).increment(1);
    response
}
