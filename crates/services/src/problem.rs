//! `application/problem+json` answers (RFC 9457) for the REST APIs of the roles.

use std::borrow::Cow;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem: status, a short title, a detail for this occurrence and, for validation errors,
/// the field at fault (a path relative to the request body, `number`, `dids[0].first`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiProblem {
    pub status: u16,
    /// Usually a constant; a problem relayed from another process carries its own.
    pub title: Cow<'static, str>,
    pub detail: String,
    pub field: Option<String>,
}

impl ApiProblem {
    pub fn new(
        status: u16,
        title: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> ApiProblem {
        ApiProblem {
            status,
            title: title.into(),
            detail: detail.into(),
            field: None,
        }
    }

    /// Names the field at fault (ignored when empty).
    pub fn field(mut self, field: impl Into<String>) -> ApiProblem {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> ApiProblem {
        ApiProblem::new(400, "Bad request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiProblem {
        ApiProblem::new(404, "Not found", detail)
    }

    /// The JSON body: `type`, `title`, `status`, `detail` and, when known, `field` (also as
    /// the RFC 9457 extension `errors: [{"pointer", "detail"}]`).
    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        });
        if let Some(field) = &self.field {
            body["field"] = json!(field);
            body["errors"] = json!([{ "pointer": pointer(field), "detail": self.detail }]);
        }
        body
    }
}

/// `dids[0].first` -> `/dids/0/first` (a JSON pointer into the request body).
fn pointer(field: &str) -> String {
    let mut out = String::new();
    for part in field.split('.') {
        let mut rest = part;
        while let Some(open) = rest.find('[') {
            push_token(&mut out, &rest[..open]);
            let close = rest[open..].find(']').map_or(rest.len(), |c| open + c);
            push_token(&mut out, &rest[(open + 1).min(close)..close]);
            rest = rest.get(close + 1..).unwrap_or("");
        }
        push_token(&mut out, rest);
    }
    out
}

fn push_token(out: &mut String, token: &str) {
    if !token.is_empty() {
        out.push('/');
        out.push_str(&token.replace('~', "~0").replace('/', "~1"));
    }
}

impl IntoResponse for ApiProblem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (
            status,
            [(header::CONTENT_TYPE, PROBLEM_JSON)],
            self.body().to_string(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_pointer() {
        let p = ApiProblem::new(422, "Invalid", "bad").field("dids[0].first");
        let b = p.body();
        assert_eq!(b["status"], 422);
        assert_eq!(b["field"], "dids[0].first");
        assert_eq!(b["errors"][0]["pointer"], "/dids/0/first");
        assert_eq!(pointer("skills.sales"), "/skills/sales");
        assert_eq!(pointer("a/b~c"), "/a~1b~0c");
        assert_eq!(pointer("x[1][2]"), "/x/1/2");
        assert_eq!(pointer("x[1"), "/x/1");
        let p = ApiProblem::bad_request("no").field("");
        assert!(p.body().get("field").is_none());
    }
}
