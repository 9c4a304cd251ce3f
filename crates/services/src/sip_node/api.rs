//! REST call control, without I/O: a request path, method and body become a [`NodeCommand`]
//! or a problem (`application/problem+json`). The async glue in [`super::role`] only moves
//! the bytes.
//!
//! | method and path (under `/v1/tenants/{tenant}/calls`) | body | request |
//! |---|---|---|
//! | `POST` | `{"dn", "to"}` | MakeCall |
//! | `POST /{conn_id}/answer` | `{"dn"}` | AnswerCall |
//! | `POST /{conn_id}/release` | `{"dn"}` | ReleaseCall |
//! | `POST /{conn_id}/hold`, `/retrieve` | `{"dn"}` | HoldCall, RetrieveCall |
//! | `POST /{conn_id}/transfer` | `{"dn", "to"}` | SingleStepTransfer |
//! | `POST /{conn_id}/consult` | `{"dn", "to"}` | InitiateTransfer |
//! | `POST /{conn_id}/complete` | `{"dn"}` | CompleteTransfer |
//! | `POST /{conn_id}/user-data` | `{"dn", "data": {...}}` | AttachUserData |
//! | `PUT /{conn_id}/user-data` | `{"dn", "data": {...}}` | UpdateUserData |
//! | `DELETE /{conn_id}/user-data` | `{"dn", "keys": [...]}` (none: all) | DeleteUserData |
//! | `POST /{conn_id}/dtmf` | `{"dn", "digits"}` | SendDTMF |
//! | `POST /{conn_id}/route` | `{"dn", "to", "route_type"}` (`dn` the route point or queue; `route_type` `"default"`, the default) | RouteCall |

use super::core::{Directory, NodeCommand};
use super::model::{Request, Resolved};
use serde::Deserialize;
use switchboard_events::{ConnId, UserData};

/// An API error: the HTTP status and the problem's title and detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub title: &'static str,
    pub detail: String,
}

fn problem(status: u16, title: &'static str, detail: impl Into<String>) -> Problem {
    Problem {
        status,
        title,
        detail: detail.into(),
    }
}

fn bad(detail: impl Into<String>) -> Problem {
    problem(400, "Bad request", detail)
}

/// Echoes at most 64 characters of what a client sent.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Every field any request takes; each request checks it got the ones it needs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    dn: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    data: Option<UserData>,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    digits: Option<String>,
    #[serde(default)]
    route_type: Option<String>,
}

/// The HTTP method of a call-control request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Post,
    Put,
    Delete,
}

/// What the API needs to know about the node: the tenants and DNs, and whether external
/// numbers can be dialled.
#[derive(Clone, Debug)]
pub struct Api {
    pub directory: Directory,
    pub have_trunk: bool,
}

impl Api {
    /// Parses a request on `/v1/tenants/{tenant}/calls[/{conn_id}/{action}]`. `id` is the
    /// request id the caller allocated.
    pub fn parse(
        &self,
        id: u64,
        tenant: &str,
        target: Option<(&str, &str)>,
        verb: Verb,
        body: &[u8],
    ) -> Result<NodeCommand, Problem> {
        if !self.directory.has_tenant(tenant) {
            return Err(problem(
                404,
                "Unknown tenant",
                format!("no tenant named {:?}", clip(tenant)),
            ));
        }
        let body: Body = serde_json::from_slice(body)
            .map_err(|e| bad(format!("the body is not a valid request: {e}")))?;
        if !self.directory.is_dn(tenant, &body.dn) {
            return Err(bad(format!(
                "dn {:?} is not a DN of tenant {tenant}",
                clip(&body.dn)
            )));
        }
        let request = match target {
            None if verb == Verb::Post => Request::MakeCall {
                to: self.destination(tenant, &body)?,
                dn: body.dn,
            },
            None => return Err(problem(405, "Method not allowed", "POST makes a call")),
            Some((conn, action)) => {
                let conn = conn.parse::<ConnId>().map_err(bad)?;
                self.call_request(tenant, conn, action, verb, body)?
            }
        };
        Ok(NodeCommand {
            id,
            tenant: tenant.to_string(),
            request,
        })
    }

    fn destination(&self, tenant: &str, body: &Body) -> Result<Resolved, Problem> {
        let to = body
            .to
            .as_deref()
            .ok_or_else(|| bad("\"to\" (the number to call) is required"))?;
        match self
            .directory
            .resolve(tenant, &body.dn, to, self.have_trunk)
        {
            Resolved::Invalid(why) => Err(problem(422, "Invalid destination", why)),
            ok => Ok(ok),
        }
    }

    fn call_request(
        &self,
        tenant: &str,
        conn: ConnId,
        action: &str,
        verb: Verb,
        body: Body,
    ) -> Result<Request, Problem> {
        let to = |b: &Body| self.destination(tenant, b);
        let data = |b: &mut Body| {
            b.data
                .take()
                .filter(|d| !d.is_empty())
                .ok_or_else(|| bad("\"data\" (a non-empty JSON object) is required"))
        };
        let mut body = body;
        let req = match (verb, action) {
            (Verb::Post, "answer") => Request::Answer { conn, dn: body.dn },
            (Verb::Post, "release") => Request::Release { conn, dn: body.dn },
            (Verb::Post, "hold") => Request::Hold { conn, dn: body.dn },
            (Verb::Post, "retrieve") => Request::Retrieve { conn, dn: body.dn },
            (Verb::Post, "transfer") => Request::SingleStepTransfer {
                to: to(&body)?,
                conn,
                dn: body.dn,
            },
            (Verb::Post, "consult") => Request::InitiateTransfer {
                to: to(&body)?,
                conn,
                dn: body.dn,
            },
            (Verb::Post, "complete") => Request::CompleteTransfer { conn, dn: body.dn },
            (Verb::Post, "user-data") => Request::AttachUserData {
                data: data(&mut body)?,
                conn,
                dn: body.dn,
            },
            (Verb::Put, "user-data") => Request::UpdateUserData {
                data: data(&mut body)?,
                conn,
                dn: body.dn,
            },
            (Verb::Delete, "user-data") => Request::DeleteUserData {
                keys: body.keys.unwrap_or_default(),
                conn,
                dn: body.dn,
            },
            (Verb::Post, "route") => {
                match body.route_type.as_deref() {
                    None | Some("default") => {}
                    Some(other) => {
                        return Err(bad(format!(
                            "\"route_type\" {:?} is not supported: only \"default\"",
                            clip(other)
                        )))
                    }
                }
                Request::RouteCall {
                    to: to(&body)?,
                    conn,
                    dn: body.dn,
                }
            }
            (Verb::Post, "dtmf") => {
                let digits = body.digits.unwrap_or_default();
                if digits.is_empty()
                    || digits.len() > 32
                    || !digits
                        .chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
                {
                    return Err(bad("\"digits\": 1 to 32 of 0-9, *, #, A-D"));
                }
                Request::SendDtmf {
                    conn,
                    dn: body.dn,
                    digits,
                }
            }
            (_, a) => {
                return Err(problem(
                    404,
                    "Unknown request",
                    format!("{verb:?} {:?} is not a call-control request", clip(a)),
                ))
            }
        };
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip_node::model::Dest;

    fn api(trunk: bool) -> Api {
        Api {
            directory: Directory::new([(
                "demo".into(),
                "switchboard".into(),
                vec!["1001".into(), "1002".into()],
            )]),
            have_trunk: trunk,
        }
    }

    const CONN: &str = "0001000000000001";

    fn post(action: &str, body: &str) -> Result<Request, Problem> {
        api(false)
            .parse(5, "demo", Some((CONN, action)), Verb::Post, body.as_bytes())
            .map(|c| c.request)
    }

    #[test]
    fn requests_parse_into_model_requests() {
        let conn = ConnId(0x0001_0000_0000_0001);
        let c = api(true)
            .parse(
                9,
                "demo",
                None,
                Verb::Post,
                br#"{"dn":"1001","to":"+15550001111"}"#,
            )
            .unwrap();
        assert_eq!((c.id, c.tenant.as_str()), (9, "demo"));
        assert_eq!(
            c.request,
            Request::MakeCall {
                dn: "1001".into(),
                to: Resolved::Ok(Dest::External("+15550001111".into()))
            }
        );
        assert_eq!(
            post("hold", r#"{"dn":"1001"}"#),
            Ok(Request::Hold {
                conn,
                dn: "1001".into()
            })
        );
        assert_eq!(
            post("transfer", r#"{"dn":"1001","to":"1002"}"#),
            Ok(Request::SingleStepTransfer {
                conn,
                dn: "1001".into(),
                to: Resolved::Ok(Dest::Dn("1002".into()))
            })
        );
        assert_eq!(
            post(
                "route",
                r#"{"dn":"1001","to":"1002","route_type":"default"}"#
            ),
            Ok(Request::RouteCall {
                conn,
                dn: "1001".into(),
                to: Resolved::Ok(Dest::Dn("1002".into()))
            })
        );
        let del = api(false)
            .parse(
                1,
                "demo",
                Some((CONN, "user-data")),
                Verb::Delete,
                br#"{"dn":"1001","keys":["a"]}"#,
            )
            .unwrap();
        assert_eq!(
            del.request,
            Request::DeleteUserData {
                conn,
                dn: "1001".into(),
                keys: vec!["a".into()]
            }
        );
    }

    #[test]
    fn bad_input_is_a_problem_with_a_status() {
        let status = |r: Result<Request, Problem>| r.unwrap_err().status;
        assert_eq!(status(post("hold", "{")), 400, "malformed JSON");
        assert_eq!(
            status(post("hold", r#"{"dn":"1001","x":1}"#)),
            400,
            "unknown field"
        );
        assert_eq!(status(post("hold", r#"{"dn":"9999"}"#)), 400, "unknown DN");
        assert_eq!(status(post("fly", r#"{"dn":"1001"}"#)), 404);
        assert_eq!(status(post("transfer", r#"{"dn":"1001"}"#)), 400, "no to");
        assert_eq!(
            status(post("transfer", r#"{"dn":"1001","to":"+15550001111"}"#)),
            422,
            "external without a trunk"
        );
        assert_eq!(status(post("user-data", r#"{"dn":"1001","data":{}}"#)), 400);
        assert_eq!(status(post("dtmf", r#"{"dn":"1001","digits":"12x"}"#)), 400);
        assert_eq!(status(post("route", r#"{"dn":"1001"}"#)), 400, "no to");
        assert_eq!(
            status(post(
                "route",
                r#"{"dn":"1001","to":"1002","route_type":"nope"}"#
            )),
            400,
            "unsupported route type"
        );
        assert_eq!(
            status(post("route", r#"{"dn":"1001","to":"77"}"#)),
            422,
            "no route to the destination"
        );
        let e = api(false)
            .parse(
                1,
                "demo",
                Some(("xyz", "hold")),
                Verb::Post,
                br#"{"dn":"1001"}"#,
            )
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.detail.contains("16 hex digits"), "{e:?}");
        let e = api(false)
            .parse(1, "nope", None, Verb::Post, br#"{"dn":"1001","to":"1002"}"#)
            .unwrap_err();
        assert_eq!((e.status, e.title), (404, "Unknown tenant"));
        let e = api(false)
            .parse(
                1,
                "demo",
                Some((CONN, "hold")),
                Verb::Put,
                br#"{"dn":"1001"}"#,
            )
            .unwrap_err();
        assert_eq!(e.status, 404);
    }
}
