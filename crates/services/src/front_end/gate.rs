//! The HTTP layer that applies [`super::auth`] to every request of the process: it finds the
//! key, asks the policy, and answers 401/403 as `application/problem+json`. A request that
//! passes carries its [`Principal`] in its extensions.

use super::auth::{authorize, needs_body_dn, protected, Access, Denied, KeyBook, Principal};
use crate::problem::ApiProblem;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Largest body read to find an agent's `dn` (call requests are small JSON objects).
const MAX_BODY: usize = 64 * 1024;

/// The key a request presents: `Authorization: Bearer`, `X-API-Key`, or for GET (browsers
/// cannot set headers on a WebSocket upgrade) the `api_key` query parameter.
fn presented_key<'a>(
    headers: &'a HeaderMap,
    method: &str,
    query: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let header_key = || {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let query_key = || {
        (method == "GET")
            .then_some(query)
            .flatten()?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "api_key")
            .map(|(_, v)| v)
    };
    bearer.or_else(header_key).or_else(query_key)
}

fn denied(d: Denied) -> Response {
    metrics::counter!("switchboard_http_denied_total", "status" => match d {
        Denied::Unauthenticated(_) => "401",
        Denied::Forbidden(_) => "403",
    })
    .increment(1);
    match d {
        Denied::Unauthenticated(why) => {
            let mut r = ApiProblem::new(401, "Unauthorized", why).into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchboard\""),
            );
            r
        }
        Denied::Forbidden(why) => ApiProblem::new(403, "Forbidden", why).into_response(),
    }
}

/// The `dn` of a JSON object body; the body is put back for the handler.
async fn body_dn(req: Request) -> Result<(Request, Option<String>), Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiProblem::new(
            413,
            "Payload too large",
            format!("a call request body is at most {MAX_BODY} bytes"),
        )
        .into_response()
    })?;
    let dn = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("dn").and_then(|d| d.as_str()).map(str::to_owned));
    Ok((Request::from_parts(parts, Body::from(bytes)), dn))
}

/// The middleware: `axum::middleware::from_fn_with_state(book, gate)`.
pub async fn gate(State(book): State<Arc<KeyBook>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if !book.enabled() || !protected(&path) {
        return next.run(req).await;
    }
    let method = req.method().as_str().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let Some(key) = presented_key(req.headers(), &method, query.as_deref()) else {
        return denied(Denied::Unauthenticated(
            "this API needs an API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
        ));
    };
    let Some(principal) = book.lookup(key).cloned() else {
        tracing::info!(%method, %path, "request with an unknown API key refused");
        return denied(Denied::Unauthenticated("the API key is not valid"));
    };
    let (mut req, dn) = if needs_body_dn(&principal, &method, &path) {
        match body_dn(req).await {
            Ok(r) => r,
            Err(response) => return response,
        }
    } else {
        (req, None)
    };
    let access = Access {
        method: &method,
        path: &path,
        query: query.as_deref(),
        body_dn: dn.as_deref(),
    };
    if let Err(d) = authorize(&principal, &access) {
        if let (Denied::Forbidden(why), Principal::Tenant(k)) = (&d, &principal) {
            tracing::info!(tenant = %k.tenant, key = %k.name, %method, %path, why, "request refused");
        }
        return denied(d);
    }
    strip_key_param(&mut req);
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Removes `api_key` from the query: handlers with strict query parameters must not see it,
/// and nothing after the gate should log it.
fn strip_key_param(req: &mut Request) {
    let Some(query) = req.uri().query() else {
        return;
    };
    if !query
        .split('&')
        .any(|kv| kv == "api_key" || kv.starts_with("api_key="))
    {
        return;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| *kv != "api_key" && !kv.starts_with("api_key="))
        .collect();
    let path = req.uri().path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::Router;
    use switchboard_config::Config;
    use tower::ServiceExt as _;

    fn app() -> Router {
        let book = Arc::new(KeyBook::from_config(&Config::demo()));
        Router::new()
            .route(
                "/v1/tenants/{t}/calls/{c}/answer",
                post(|body: String| async move { body }),
            )
            .route(
                "/v1/tenants/{t}/queues",
                get(|uri: axum::http::Uri| async move { uri.to_string() }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(book, gate))
    }

    async fn send(req: axum::http::Request<Body>) -> (StatusCode, String, Option<String>) {
        let r = app().oneshot(req).await.expect("infallible");
        let status = r.status();
        let ctype = r
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let body = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned(), ctype)
    }

    fn req(
        method: &str,
        uri: &str,
        key: Option<(&str, &str)>,
        body: &str,
    ) -> axum::http::Request<Body> {
        let mut b = axum::http::Request::builder().method(method).uri(uri);
        if let Some((name, value)) = key {
            b = b.header(name, value);
        }
        b.body(Body::from(body.to_owned())).expect("request")
    }

    #[tokio::test]
    async fn answers_401_403_and_passes_the_body_on() {
        let (s, _, _) = send(req("GET", "/healthz", None, "")).await;
        assert_eq!(s, StatusCode::OK, "health is open");
        let (s, body, ctype) = send(req("GET", "/v1/tenants/demo/queues", None, "")).await;
        assert_eq!(
            (s, ctype.as_deref()),
            (StatusCode::UNAUTHORIZED, Some("application/problem+json"))
        );
        assert!(body.contains("Bearer"), "{body}");
        let (s, _, _) = send(req(
            "GET",
            "/v1/tenants/demo/queues",
            Some(("authorization", "Bearer wrong-key-wrong-key")),
            "",
        ))
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _, _) = send(req(
            "GET",
            "/v1/tenants/demo/queues?api_key=demo-agent-a1001-key",
            None,
            "",
        ))
        .await;
        assert_eq!(s, StatusCode::OK, "query key for GET");
        let (s, _, _) = send(req(
            "GET",
            "/v1/tenants/other/queues",
            Some(("x-api-key", "demo-agent-a1001-key")),
            "",
        ))
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "another tenant");
        let uri = "/v1/tenants/demo/calls/0001000000000001/answer";
        let agent = Some(("authorization", "Bearer demo-agent-a1001-key"));
        let (s, body, _) = send(req("POST", uri, agent, r#"{"dn":"1001"}"#)).await;
        assert_eq!(
            (s, body.as_str()),
            (StatusCode::OK, r#"{"dn":"1001"}"#),
            "the handler gets the body"
        );
        let (s, body, _) = send(req("POST", uri, agent, r#"{"dn":"1002"}"#)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("own DN"), "{body}");
    }
}
