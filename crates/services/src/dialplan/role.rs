//! Async glue of the dial plan: builds [`Dialplan`] from the configuration store (plus the SIP
//! users of the configuration file, which are extensions), swaps in a new plan after every
//! committed change, and serves `GET /v1/tenants/{tenant}/dialplan/resolve`.

use std::sync::{Arc, RwLock};

use axum::extract::{Path, Query as QueryParams, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use switchboard_config::Config;
use switchboard_store::{SharedStore, Store};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::plan::{Dialplan, Ingress, Query, ResolveError, Target};
use crate::problem::ApiProblem;
use crate::sip::role::SharedLocation;
use std::time::Instant;

/// The current dial plan, swapped whole on every change; readers take an `Arc` and never
/// wait for a rebuild.
#[derive(Debug, Default)]
pub struct DialplanCell(RwLock<Arc<Dialplan>>);

impl DialplanCell {
    pub fn new(plan: Dialplan) -> DialplanCell {
        DialplanCell(RwLock::new(Arc::new(plan)))
    }

    /// The plan in force.
    pub fn current(&self) -> Arc<Dialplan> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, plan: Dialplan) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(plan);
    }
}

/// The process's dial plan, built once and kept current; put one in the roles' shared state.
#[derive(Default)]
pub struct DialplanSlot(OnceCell<Arc<DialplanCell>>);

impl DialplanSlot {
    /// The dial plan: built from `store` by the first caller, which also starts the task that
    /// rebuilds it after every change until `drain` is cancelled.
    pub async fn get_or_start(
        &self,
        config: Arc<Config>,
        store: SharedStore,
        drain: CancellationToken,
    ) -> anyhow::Result<Arc<DialplanCell>> {
        self.0
            .get_or_try_init(|| start(config, store, drain))
            .await
            .cloned()
    }

    /// The dial plan if a role of this process started it.
    pub fn get(&self) -> Option<Arc<DialplanCell>> {
        self.0.get().cloned()
    }
}

/// The plan of everything in `store`, tenants in the order of the configuration file first,
/// then the others by name; each tenant's SIP users (from the file) are extensions.
pub fn build(
    store: &dyn Store,
    config: &Config,
) -> Result<Dialplan, switchboard_store::StoreError> {
    let tenants = crate::store::tenants(store, config)?;
    let plan = Dialplan::build(&tenants);
    for p in plan.problems() {
        tracing::warn!(tenant = %p.tenant, rule = %p.rule, problem = %p.message, "dial-plan rule skipped");
    }
    metrics::gauge!("switchboard_dialplan_rules").set(plan.rule_count() as f64);
    metrics::gauge!("switchboard_dialplan_tenants").set(tenants.len() as f64);
    Ok(plan)
}

async fn build_blocking(store: SharedStore, config: Arc<Config>) -> anyhow::Result<Dialplan> {
    tokio::task::spawn_blocking(move || build(&*store, &config))
        .await?
        .map_err(|e| anyhow::anyhow!("loading the dial plan: {e}"))
}

async fn start(
    config: Arc<Config>,
    store: SharedStore,
    drain: CancellationToken,
) -> anyhow::Result<Arc<DialplanCell>> {
    let mut changes = store.subscribe();
    let plan = build_blocking(store.clone(), config.clone()).await?;
    tracing::info!(rules = plan.rule_count(), "dial plan loaded");
    let cell = Arc::new(DialplanCell::new(plan));
    let keep = cell.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = drain.cancelled() => break,
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
            // Changes that arrive while building are picked up by the next turn.
            changes.mark_unchanged();
            match build_blocking(store.clone(), config.clone()).await {
                Ok(plan) => {
                    metrics::counter!("switchboard_dialplan_reloads_total", "result" => "ok")
                        .increment(1);
                    tracing::info!(
                        rules = plan.rule_count(),
                        revision = store.revision(),
                        "dial plan reloaded"
                    );
                    keep.set(plan);
                }
                Err(e) => {
                    metrics::counter!("switchboard_dialplan_reloads_total", "result" => "error")
                        .increment(1);
                    tracing::error!(error = %e, "dial plan not reloaded; the previous one stays");
                }
            }
        }
    });
    Ok(cell)
}

struct RestState {
    cell: Arc<DialplanCell>,
    /// The registrar's bindings, when the SIP edge runs in this process.
    location: Option<SharedLocation>,
    /// Whether the node has unnamed gateways (`sip_node.trunks`).
    default_gateway: bool,
}

/// `GET /v1/tenants/{tenant}/dialplan/resolve?number=..&from=..&ingress=..`; with
/// `location`, devices carry their registered contacts.
pub fn routes(
    cell: Arc<DialplanCell>,
    config: &Config,
    location: Option<SharedLocation>,
) -> Router {
    let state = Arc::new(RestState {
        cell,
        location,
        default_gateway: !config.sip_node.trunks.is_empty(),
    });
    Router::new()
        .route("/v1/tenants/{tenant}/dialplan/resolve", get(resolve))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveParams {
    number: Option<String>,
    from: Option<String>,
    ingress: Option<String>,
}

async fn resolve(
    State(state): State<Arc<RestState>>,
    Path(tenant): Path<String>,
    params: Result<QueryParams<ResolveParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(QueryParams(p)) => p,
        Err(e) => return ApiProblem::bad_request(e.body_text()).into_response(),
    };
    match answer(&state, &tenant, params) {
        Ok(body) => Json(body).into_response(),
        Err(p) => {
            metrics::counter!("switchboard_dialplan_api_rejected_total", "status" => p.status.to_string())
                .increment(1);
            p.into_response()
        }
    }
}

fn answer(
    state: &RestState,
    tenant: &str,
    params: ResolveParams,
) -> Result<serde_json::Value, ApiProblem> {
    let plan = state.cell.current();
    if !plan.has_tenant(tenant) {
        return Err(ApiProblem::not_found(format!("no tenant {tenant:?}")));
    }
    let number = params
        .number
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiProblem::bad_request("the query needs number=").field("number"))?;
    let ingress_text = params.ingress.unwrap_or_default();
    // `trunk:NAME`, `device:DN`, `gateway`, or a bare trunk name or DN.
    let (ingress, device_dn) = match ingress_text.split_once(':') {
        _ if ingress_text.is_empty() || ingress_text == "device" => (Ingress::Device, None),
        _ if ingress_text == "gateway" => (Ingress::Gateway, None),
        Some(("trunk", name)) => (Ingress::Trunk(name), None),
        Some(("device", dn)) => (Ingress::Device, Some(dn)),
        _ if plan.has_trunk(tenant, &ingress_text) => (Ingress::Trunk(ingress_text.as_str()), None),
        _ if plan.is_dn(tenant, &ingress_text) => (Ingress::Device, Some(ingress_text.as_str())),
        _ => {
            return Err(ApiProblem::bad_request(format!(
                "ingress {ingress_text:?} is neither a trunk nor a DN of tenant {tenant} \
                 (or trunk:NAME, device:DN, gateway)"
            ))
            .field("ingress"))
        }
    };
    if let Some(dn) = device_dn {
        if !plan.is_dn(tenant, dn) {
            return Err(
                ApiProblem::bad_request(format!("{dn:?} is not a DN of tenant {tenant}"))
                    .field("ingress"),
            );
        }
    }
    let from = params
        .from
        .or(device_dn.map(str::to_owned))
        .unwrap_or_default();
    let q = Query {
        tenant: Some(tenant),
        called: &number,
        calling: &from,
        ingress,
        default_gateway: state.default_gateway,
    };
    let r = match plan.resolve(&q) {
        Ok(r) => r,
        Err(ResolveError::UnknownTrunk(t)) => {
            return Err(ApiProblem::bad_request(format!("no trunk {t}")).field("ingress"))
        }
        Err(ResolveError::UnknownTenant(t)) => {
            return Err(ApiProblem::not_found(format!("no tenant {t:?}")))
        }
        Err(e @ ResolveError::NoRoute { .. }) => {
            tracing::debug!(tenant, number, from, reason = %e, "no route");
            return Err(ApiProblem::new(422, "No route", e.to_string()).field("number"));
        }
    };
    let (kind, trunk) = match &r.target {
        Target::Extension => ("extension", None),
        Target::RoutePoint => ("route_point", None),
        Target::Queue => ("queue", None),
        Target::Voicemail => ("voicemail", None),
        Target::Mailbox => ("mailbox", None),
        Target::External { trunk } => ("external", trunk.clone()),
    };
    let mut body = json!({
        "tenant": r.tenant,
        "called": number,
        "from": from,
        "ingress": ingress_name(ingress),
        "scope": r.scope,
        "caller_internal": r.caller_internal,
        "target": kind,
        "number": r.number,
        "rule": r.rule,
        "did_trunk": r.did_trunk,
    });
    if let Target::External { .. } = r.target {
        body["trunk"] = json!(trunk);
        body["gateway"] = json!(trunk
            .as_deref()
            .and_then(|t| plan.trunk_gateway(&r.tenant, t))
            .map(|a| a.to_string()));
    } else if let Some(device) = plan.device(&r.tenant, &r.number) {
        body["device"] = json!(device);
        if let Some(location) = &state.location {
            let aor = format!("{}@{}", r.number, plan.domain(&r.tenant).unwrap_or(""));
            let registered: Vec<serde_json::Value> = location
                .contacts(&aor, Instant::now())
                .into_iter()
                .map(|(contact, expires_in, source)| {
                    json!({ "contact": contact, "expires_in": expires_in, "source": source })
                })
                .collect();
            body["device"]["registered"] = json!(registered);
        }
    }
    Ok(body)
}

fn ingress_name(i: Ingress<'_>) -> String {
    match i {
        Ingress::Device => "device".to_owned(),
        Ingress::Gateway => "gateway".to_owned(),
        Ingress::Trunk(t) => format!("trunk:{t}"),
    }
}
