//! The `config` role: REST CRUD of tenants and their entities over the configuration store,
//! the OpenAPI document at `/openapi.json`, and every committed change published on the bus
//! (stream `config:{tenant}`).
//!
//! | path | methods |
//! |---|---|
//! | `/v1/tenants` | `GET` (list), `POST` (create) |
//! | `/v1/tenants/{tenant}` | `GET`, `PUT`, `DELETE` (with all its entities) |
//! | `/v1/tenants/{tenant}/{collection}` | `GET` (list), `POST` (create) |
//! | `/v1/tenants/{tenant}/{collection}/{key}` | `GET`, `PUT` (replace), `DELETE` |
//!
//! Collections: `skills`, `agent-groups`, `dns`, `agents`, `route-points`, `trunks`,
//! `dialplan`, `mailboxes` (see [`switchboard_store::Kind`]). Errors are
//! `application/problem+json`: 400 malformed JSON or a body of the wrong shape, 404 unknown
//! tenant or entity, 409 duplicate or a change other entities' references forbid, 422 a value
//! that is not valid (`field` names it).

pub mod openapi;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use switchboard_bus::SharedBus;
use switchboard_store::{Change, FieldError, Kind, Record, SharedStore, StoreError, TenantInfo};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::problem::ApiProblem;

/// The bus stream of a tenant's configuration changes.
pub fn changes_stream(tenant: &str) -> String {
    format!("config:{tenant}")
}

/// A started `config` role.
pub struct ConfigRunning {
    pub router: Router,
    /// Publishes the changes on the bus; ends once `drain` is cancelled.
    pub task: JoinHandle<anyhow::Result<()>>,
}

struct RestState {
    store: SharedStore,
    changes: mpsc::UnboundedSender<Change>,
}

/// Starts the role on `store`; changes go to `bus` when there is one.
pub fn start(
    store: SharedStore,
    bus: Option<SharedBus>,
    drain: CancellationToken,
) -> ConfigRunning {
    let (changes, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(publish_changes(rx, bus, drain));
    let state = Arc::new(RestState { store, changes });
    ConfigRunning {
        router: routes(state),
        task,
    }
}

/// Publishes changes in commit order until the drain; what is queued then is still sent.
async fn publish_changes(
    mut rx: mpsc::UnboundedReceiver<Change>,
    bus: Option<SharedBus>,
    drain: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let change = tokio::select! {
            c = rx.recv() => c,
            _ = drain.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(change) = change else {
            return Ok(());
        };
        let Some(bus) = &bus else { continue };
        let payload = serde_json::to_vec(&change).unwrap_or_default();
        match bus.publish(&changes_stream(&change.tenant), &payload).await {
            Ok(_) => metrics::counter!("switchboard_config_events_total").increment(1),
            Err(e) => {
                metrics::counter!("switchboard_config_publish_errors_total").increment(1);
                tracing::error!(error = %e, tenant = %change.tenant, revision = change.revision, "configuration change not published");
            }
        }
    }
}

fn routes(state: Arc<RestState>) -> Router {
    let mut router = Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/v1/tenants/{tenant}",
            get(get_tenant).put(put_tenant).delete(delete_tenant),
        );
    for kind in Kind::ALL {
        let seg = kind.path_segment();
        router = router
            .route(
                &format!("/v1/tenants/{{tenant}}/{seg}"),
                get(move |s, p| list(s, p, kind)).post(move |s, p, b| create(s, p, b, kind)),
            )
            .route(
                &format!("/v1/tenants/{{tenant}}/{seg}/{{key}}"),
                get(move |s, p| read(s, p, kind))
                    .put(move |s, p, b| replace(s, p, b, kind))
                    .delete(move |s, p| delete(s, p, kind)),
            );
    }
    router.with_state(state)
}

async fn openapi_json() -> Response {
    Json(openapi::document()).into_response()
}

/// Runs a store call on a blocking thread.
async fn blocking<T: Send + 'static>(
    state: &RestState,
    f: impl FnOnce(&dyn switchboard_store::Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiProblem> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || f(&*store)).await {
        Ok(r) => r.map_err(problem_of),
        Err(e) => {
            tracing::error!(error = %e, "configuration store call failed");
            Err(ApiProblem::new(
                500,
                "Internal error",
                "the store call failed",
            ))
        }
    }
}

fn problem_of(e: StoreError) -> ApiProblem {
    let detail = e.to_string();
    match e {
        StoreError::NoTenant(_) | StoreError::NotFound { .. } => ApiProblem::not_found(detail),
        StoreError::TenantExists(_) => ApiProblem::new(409, "Conflict", detail).field("name"),
        StoreError::Duplicate { kind, .. } => {
            ApiProblem::new(409, "Conflict", detail).field(kind.key_field())
        }
        StoreError::Conflict { field, message } => {
            ApiProblem::new(409, "Conflict", message).field(field)
        }
        StoreError::Invalid { field, message } => {
            ApiProblem::new(422, "Invalid value", message).field(field)
        }
        StoreError::Db(e) => {
            tracing::error!(error = %e, "configuration store error");
            ApiProblem::new(500, "Internal error", "the configuration store failed")
        }
    }
}

fn malformed(e: FieldError) -> ApiProblem {
    let detail = if e.field.is_empty() {
        format!("malformed JSON: {}", e.message)
    } else {
        format!("{}: {}", e.field, e.message)
    };
    ApiProblem::bad_request(detail).field(e.field)
}

/// The JSON of an entity as the API shows it: mailbox PINs are write-only.
fn shown(record: &Record) -> Value {
    let mut v = record.to_json();
    if let (Record::Mailbox(_), Some(o)) = (record, v.as_object_mut()) {
        o.remove("pin");
    }
    v
}

fn reply(result: Result<Response, ApiProblem>, what: &str, tenant: &str) -> Response {
    match result {
        Ok(r) => r,
        Err(p) => {
            metrics::counter!("switchboard_config_api_rejected_total", "status" => p.status.to_string())
                .increment(1);
            tracing::debug!(tenant, what, status = p.status, detail = %p.detail, "configuration request refused");
            p.into_response()
        }
    }
}

fn created(location: String, body: Value) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response()
}

fn committed(state: &RestState, change: Change) {
    metrics::counter!("switchboard_config_changes_total").increment(1);
    let _ = state.changes.send(change);
}

/// A tenant body: its shape (400) then its values (422).
fn parse_tenant(body: &[u8]) -> Result<TenantInfo, ApiProblem> {
    let t = TenantInfo::from_json(body).map_err(malformed)?;
    t.check()
        .map_err(|e| ApiProblem::new(422, "Invalid value", e.message).field(e.field))?;
    Ok(t)
}

async fn list_tenants(State(state): State<Arc<RestState>>) -> Response {
    let r = blocking(&state, |s| s.tenants())
        .await
        .map(|t| Json(serde_json::json!({ "tenants": t })).into_response());
    reply(r, "tenants", "")
}

async fn create_tenant(State(state): State<Arc<RestState>>, body: Bytes) -> Response {
    let r = async {
        let t = parse_tenant(&body)?;
        let t2 = t.clone();
        let change = blocking(&state, move |s| s.create_tenant(&t2)).await?;
        committed(&state, change);
        Ok(created(
            format!("/v1/tenants/{}", t.name),
            serde_json::to_value(&t).unwrap_or(Value::Null),
        ))
    }
    .await;
    reply(r, "tenant", "")
}

async fn get_tenant(State(state): State<Arc<RestState>>, Path(tenant): Path<String>) -> Response {
    let name = tenant.clone();
    let r = blocking(&state, move |s| s.tenant(&name))
        .await
        .and_then(|t| t.ok_or_else(|| ApiProblem::not_found(format!("no tenant {tenant:?}"))))
        .map(|t| Json(t).into_response());
    reply(r, "tenant", &tenant)
}

async fn put_tenant(
    State(state): State<Arc<RestState>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let r = async {
        let t = parse_tenant(&body)?;
        if t.name != tenant {
            return Err(ApiProblem::new(
                422,
                "Invalid value",
                format!("{:?} differs from {tenant:?} in the path", t.name),
            )
            .field("name"));
        }
        let t2 = t.clone();
        let change = blocking(&state, move |s| s.update_tenant(&t2)).await?;
        committed(&state, change);
        Ok(Json(t).into_response())
    }
    .await;
    reply(r, "tenant", &tenant)
}

async fn delete_tenant(
    State(state): State<Arc<RestState>>,
    Path(tenant): Path<String>,
) -> Response {
    let name = tenant.clone();
    let r = async {
        let change = blocking(&state, move |s| s.delete_tenant(&name)).await?;
        committed(&state, change);
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    reply(r, "tenant", &tenant)
}

async fn list(
    State(state): State<Arc<RestState>>,
    Path(tenant): Path<String>,
    kind: Kind,
) -> Response {
    let name = tenant.clone();
    let r = blocking(&state, move |s| s.list(&name, kind))
        .await
        .map(|records| {
            let items: Vec<Value> = records.iter().map(shown).collect();
            Json(serde_json::json!({ "tenant": tenant, "items": items })).into_response()
        });
    reply(r, kind.as_str(), "")
}

async fn create(
    State(state): State<Arc<RestState>>,
    Path(tenant): Path<String>,
    body: Bytes,
    kind: Kind,
) -> Response {
    let name = tenant.clone();
    let r = async {
        let record = Record::parse_json(kind, &body).map_err(malformed)?;
        let shown_body = shown(&record);
        let location = format!(
            "/v1/tenants/{tenant}/{}/{}",
            kind.path_segment(),
            record.key()
        );
        let change = blocking(&state, move |s| s.create(&name, record)).await?;
        committed(&state, change);
        Ok(created(location, shown_body))
    }
    .await;
    reply(r, kind.as_str(), &tenant)
}

async fn read(
    State(state): State<Arc<RestState>>,
    Path((tenant, key)): Path<(String, String)>,
    kind: Kind,
) -> Response {
    let (name, k) = (tenant.clone(), key.clone());
    let r = blocking(&state, move |s| s.get(&name, kind, &k))
        .await
        .and_then(|r| {
            r.ok_or_else(|| {
                ApiProblem::not_found(format!("no {kind} {key:?} in tenant {tenant:?}"))
            })
        })
        .map(|r| Json(shown(&r)).into_response());
    reply(r, kind.as_str(), "")
}

async fn replace(
    State(state): State<Arc<RestState>>,
    Path((tenant, key)): Path<(String, String)>,
    body: Bytes,
    kind: Kind,
) -> Response {
    let name = tenant.clone();
    let r = async {
        let record = Record::parse_json(kind, &body).map_err(malformed)?;
        let shown_body = shown(&record);
        let change = blocking(&state, move |s| s.replace(&name, &key, record)).await?;
        committed(&state, change);
        Ok(Json(shown_body).into_response())
    }
    .await;
    reply(r, kind.as_str(), &tenant)
}

async fn delete(
    State(state): State<Arc<RestState>>,
    Path((tenant, key)): Path<(String, String)>,
    kind: Kind,
) -> Response {
    let name = tenant.clone();
    let r = async {
        let change = blocking(&state, move |s| s.delete(&name, kind, &key)).await?;
        committed(&state, change);
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    reply(r, kind.as_str(), &tenant)
}
