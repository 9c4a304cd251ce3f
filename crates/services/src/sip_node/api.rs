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
//! | `POST /{conn_id}/conference` | `{"dn", "to"}` | InitiateConference |
//! | `POST /{conn_id}/conference/complete` | `{"dn"}` | CompleteConference |
//! | `POST /{conn_id}/conference/single-step` | `{"dn", "to"}` | SingleStepConference |
//! | `DELETE /{conn_id}/conference/parties/{party}` | `{"dn"}` | DeleteFromConference |
//! | `POST /{conn_id}/user-data` | `{"dn", "data": {...}}` | AttachUserData |
//! | `PUT /{conn_id}/user-data` | `{"dn", "data": {...}}` | UpdateUserData |
//! | `DELETE /{conn_id}/user-data` | `{"dn", "keys": [...]}` (none: all) | DeleteUserData |
//! | `POST /{conn_id}/dtmf` | `{"dn", "digits"}` | SendDTMF |
//! | `POST /{conn_id}/route` | `{"dn", "to", "route_type"}` (`dn` the route point or queue; `route_type` `"default"`, the default) | RouteCall |
//! | `POST /{conn_id}/treatment` | `{"dn", "treatment": {"type", ...}}` (`dn` the route point or queue; the treatment as in `CallOp::ApplyTreatment`) | ApplyTreatment |
//! | `DELETE /{conn_id}/treatment` | `{"dn"}` | CancelTreatment |
//!
//! The same operations arrive from other roles as [`CallRequest`]s on the bus
//! ([`Api::from_bus`]): both forms go through one validation path.

use super::core::{Directory, NodeCommand};
use super::model::{codes, Request, Resolved};
use super::treatment::media_service;
use serde::Deserialize;
use switchboard_events::requests::{CallOp, CallRequest, Treatment};
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

/// A request for a call the node does not have (in that tenant).
pub fn unknown_call(conn: ConnId, tenant: &str) -> Problem {
    problem(
        404,
        "Unknown call",
        format!("no call {conn} in tenant {tenant}"),
    )
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
    #[serde(default)]
    treatment: Option<Treatment>,
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

impl Problem {
    /// The stable `error_code` of the EventError that answers a bus request refused for this
    /// problem.
    pub fn error_code(&self) -> &'static str {
        match (self.status, self.title) {
            (404, "Unknown tenant") => "unknown_tenant",
            (404, "Unknown call") => codes::NO_SUCH_CALL,
            (422, "Invalid destination") => codes::INVALID_DESTINATION,
            (503, _) => "unavailable",
            _ => codes::BAD_ARGUMENT,
        }
    }
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
        self.check_tenant(tenant)?;
        let (dn, conn, op) = rest_request(target, verb, body)?;
        self.check_dn(tenant, &dn)?;
        self.command(id, tenant, dn, conn, op)
    }

    /// A call-control request from the bus ([`CallRequest`]): the same checks and the same
    /// [`NodeCommand`] as its REST form; `request_id` is the command's id.
    pub fn from_bus(&self, r: &CallRequest) -> Result<NodeCommand, Problem> {
        self.check_tenant(&r.tenant)?;
        self.check_dn(&r.tenant, &r.dn)?;
        self.command(
            r.request_id,
            &r.tenant,
            r.dn.clone(),
            r.conn_id,
            r.op.clone(),
        )
    }

    fn check_tenant(&self, tenant: &str) -> Result<(), Problem> {
        if !self.directory.has_tenant(tenant) {
            return Err(problem(
                404,
                "Unknown tenant",
                format!("no tenant named {:?}", clip(tenant)),
            ));
        }
        Ok(())
    }

    fn check_dn(&self, tenant: &str, dn: &str) -> Result<(), Problem> {
        if !self.directory.is_dn(tenant, dn) {
            return Err(bad(format!(
                "dn {:?} is not a DN of tenant {tenant}",
                clip(dn)
            )));
        }
        Ok(())
    }

    /// The one path from an operation to a model request, for REST and the bus alike:
    /// destinations resolved as `dn` dials them, arguments checked.
    fn command(
        &self,
        id: u64,
        tenant: &str,
        dn: String,
        conn: Option<ConnId>,
        op: CallOp,
    ) -> Result<NodeCommand, Problem> {
        let request = self.request(tenant, dn, conn, op)?;
        Ok(NodeCommand {
            id,
            tenant: tenant.to_string(),
            request,
        })
    }

    fn request(
        &self,
        tenant: &str,
        dn: String,
        conn: Option<ConnId>,
        op: CallOp,
    ) -> Result<Request, Problem> {
        let from = dn.clone();
        let to = |number: &str| self.destination(tenant, &from, number);
        let conn = match (conn, &op) {
            (None, CallOp::MakeCall { to: number }) => {
                return Ok(Request::MakeCall {
                    to: to(number)?,
                    dn,
                })
            }
            (Some(_), CallOp::MakeCall { .. }) => return Err(bad("MakeCall takes no \"conn_id\"")),
            (Some(c), _) => c,
            (None, _) => return Err(bad("\"conn_id\" (the call) is required")),
        };
        let data = |d: UserData| {
            if d.is_empty() {
                Err(bad("\"data\" (a non-empty JSON object) is required"))
            } else {
                Ok(d)
            }
        };
        let req = match op {
            CallOp::MakeCall { .. } => return Err(bad("MakeCall takes no \"conn_id\"")),
            CallOp::Answer => Request::Answer { conn, dn },
            CallOp::Release => Request::Release { conn, dn },
            CallOp::Hold => Request::Hold { conn, dn },
            CallOp::Retrieve => Request::Retrieve { conn, dn },
            CallOp::SingleStepTransfer { to: t } => Request::SingleStepTransfer {
                to: to(&t)?,
                conn,
                dn,
            },
            CallOp::InitiateTransfer { to: t } => Request::InitiateTransfer {
                to: to(&t)?,
                conn,
                dn,
            },
            CallOp::CompleteTransfer => Request::CompleteTransfer { conn, dn },
            CallOp::InitiateConference { to: t } => Request::InitiateConference {
                to: to(&t)?,
                conn,
                dn,
            },
            CallOp::CompleteConference => Request::CompleteConference { conn, dn },
            CallOp::SingleStepConference { to: t } => Request::SingleStepConference {
                to: to(&t)?,
                conn,
                dn,
            },
            CallOp::DeleteFromConference { party } => {
                if party.is_empty() || party.len() > 64 {
                    return Err(bad(
                        "\"party\": the DN or number of a party (1 to 64 characters)",
                    ));
                }
                Request::DeleteFromConference { conn, dn, party }
            }
            CallOp::AttachUserData { data: d } => Request::AttachUserData {
                data: data(d)?,
                conn,
                dn,
            },
            CallOp::UpdateUserData { data: d } => Request::UpdateUserData {
                data: data(d)?,
                conn,
                dn,
            },
            CallOp::DeleteUserData { keys } => Request::DeleteUserData { keys, conn, dn },
            CallOp::SendDtmf { digits } => {
                if digits.is_empty()
                    || digits.len() > 32
                    || !digits
                        .chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D'))
                {
                    return Err(bad("\"digits\": 1 to 32 of 0-9, *, #, A-D"));
                }
                Request::SendDtmf { conn, dn, digits }
            }
            CallOp::RouteCall { to: t } => Request::RouteCall {
                to: to(&t)?,
                conn,
                dn,
            },
            CallOp::ApplyTreatment { treatment } => Request::ApplyTreatment {
                service: media_service(&treatment)
                    .map_err(|why| problem(422, "Unsupported treatment", why))?,
                conn,
                dn,
            },
            CallOp::CancelTreatment => Request::CancelTreatment { conn, dn },
            CallOp::SetRouteTimeout {
                timeout_ms: Some(0),
            } => return Err(bad("\"timeout_ms\": at least 1 (or null for the DN's own)")),
            CallOp::SetRouteTimeout { timeout_ms } => Request::SetRouteTimeout {
                conn,
                dn,
                ms: timeout_ms,
            },
        };
        Ok(req)
    }

    /// A number dialled for DN `dn`.
    fn destination(&self, tenant: &str, dn: &str, to: &str) -> Result<Resolved, Problem> {
        match self.directory.resolve(tenant, dn, to, self.have_trunk) {
            Resolved::Invalid(why) => Err(problem(422, "Invalid destination", why)),
            ok => Ok(ok),
        }
    }
}
/// A REST request on `/v1/tenants/{tenant}/calls[/{conn_id}/{action}]` as far as it can be
/// read without the node's directory: the DN it acts for, the call and the operation. The
/// node's REST API checks the rest ([`Api::parse`]); a front-end without a node sends it on
/// as a [`CallRequest`], checked by [`Api::from_bus`].
pub fn rest_request(
    target: Option<(&str, &str)>,
    verb: Verb,
    body: &[u8],
) -> Result<(String, Option<ConnId>, CallOp), Problem> {
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not a valid request: {e}")))?;
    let dn = body.dn.clone();
    match target {
        None if verb == Verb::Post => Ok((
            dn,
            None,
            CallOp::MakeCall {
                to: required_to(&body)?,
            },
        )),
        None => Err(problem(405, "Method not allowed", "POST makes a call")),
        Some((conn, action)) => {
            let conn = conn.parse::<ConnId>().map_err(bad)?;
            Ok((dn, Some(conn), rest_op(action, verb, body)?))
        }
    }
}

fn required_to(body: &Body) -> Result<String, Problem> {
    body.to
        .clone()
        .ok_or_else(|| bad("\"to\" (the number to call) is required"))
}

/// The operation a REST request on a call asks for (`action` the path after the call's id:
/// one segment, or `conference/...`).
fn rest_op(action: &str, verb: Verb, body: Body) -> Result<CallOp, Problem> {
    if let Some(party) = action.strip_prefix("conference/parties/") {
        if verb == Verb::Delete && !party.contains('/') {
            return Ok(CallOp::DeleteFromConference {
                party: party.to_string(),
            });
        }
    }
    let op = match (verb, action) {
        (Verb::Post, "answer") => CallOp::Answer,
        (Verb::Post, "release") => CallOp::Release,
        (Verb::Post, "hold") => CallOp::Hold,
        (Verb::Post, "retrieve") => CallOp::Retrieve,
        (Verb::Post, "transfer") => CallOp::SingleStepTransfer {
            to: required_to(&body)?,
        },
        (Verb::Post, "consult") => CallOp::InitiateTransfer {
            to: required_to(&body)?,
        },
        (Verb::Post, "complete") => CallOp::CompleteTransfer,
        (Verb::Post, "conference") => CallOp::InitiateConference {
            to: required_to(&body)?,
        },
        (Verb::Post, "conference/complete") => CallOp::CompleteConference,
        (Verb::Post, "conference/single-step") => CallOp::SingleStepConference {
            to: required_to(&body)?,
        },
        (Verb::Post, "user-data") => CallOp::AttachUserData {
            data: body.data.unwrap_or_default(),
        },
        (Verb::Put, "user-data") => CallOp::UpdateUserData {
            data: body.data.unwrap_or_default(),
        },
        (Verb::Delete, "user-data") => CallOp::DeleteUserData {
            keys: body.keys.unwrap_or_default(),
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
            CallOp::RouteCall {
                to: required_to(&body)?,
            }
        }
        (Verb::Post, "dtmf") => CallOp::SendDtmf {
            digits: body.digits.unwrap_or_default(),
        },
        (Verb::Post, "treatment") => CallOp::ApplyTreatment {
            treatment: body
                .treatment
                .ok_or_else(|| bad("\"treatment\" (an object with a \"type\") is required"))?,
        },
        (Verb::Delete, "treatment") => CallOp::CancelTreatment,
        (_, a) => {
            return Err(problem(
                404,
                "Unknown request",
                format!("{verb:?} {:?} is not a call-control request", clip(a)),
            ))
        }
    };
    Ok(op)
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

    #[test]
    fn treatments_parse_into_media_services() {
        let conn = ConnId(0x0001_0000_0000_0001);
        let r = post(
            "treatment",
            r#"{"dn":"1001","treatment":{"type":"music","url":"tone:440"}}"#,
        );
        assert_eq!(
            r,
            Ok(Request::ApplyTreatment {
                conn,
                dn: "1001".into(),
                service: crate::sip_node::model::MediaService {
                    user: "annc".into(),
                    params: ";play=tone:440;repeat=forever".into()
                }
            })
        );
        let cancel = api(false)
            .parse(
                1,
                "demo",
                Some((CONN, "treatment")),
                Verb::Delete,
                br#"{"dn":"1001"}"#,
            )
            .unwrap();
        assert_eq!(
            cancel.request,
            Request::CancelTreatment {
                conn,
                dn: "1001".into()
            }
        );
        let status = |body: &str| post("treatment", body).unwrap_err().status;
        assert_eq!(status(r#"{"dn":"1001"}"#), 400, "no treatment");
        assert_eq!(status(r#"{"dn":"1001","treatment":{"type":"dance"}}"#), 400);
        assert_eq!(
            status(r#"{"dn":"1001","treatment":{"type":"music","url":""}}"#),
            422
        );
        assert_eq!(
            status(
                r#"{"dn":"1001","treatment":{"type":"collect_digits","prompt":"x","max_digits":99}}"#
            ),
            422,
            "too many digits"
        );
    }

    #[test]
    fn conference_routes_parse_like_the_transfer_routes() {
        let conn = ConnId(0x0001_0000_0000_0001);
        let dn = || "1001".to_string();
        let to = || Resolved::Ok(Dest::Dn("1002".into()));
        assert_eq!(
            post("conference", r#"{"dn":"1001","to":"1002"}"#),
            Ok(Request::InitiateConference {
                conn,
                dn: dn(),
                to: to()
            })
        );
        assert_eq!(
            post("conference/complete", r#"{"dn":"1001"}"#),
            Ok(Request::CompleteConference { conn, dn: dn() })
        );
        assert_eq!(
            post("conference/single-step", r#"{"dn":"1001","to":"1002"}"#),
            Ok(Request::SingleStepConference {
                conn,
                dn: dn(),
                to: to()
            })
        );
        let delete = |action: &str| {
            api(false)
                .parse(
                    3,
                    "demo",
                    Some((CONN, action)),
                    Verb::Delete,
                    br#"{"dn":"1001"}"#,
                )
                .map(|c| c.request)
        };
        assert_eq!(
            delete("conference/parties/+15551234567"),
            Ok(Request::DeleteFromConference {
                conn,
                dn: dn(),
                party: "+15551234567".into()
            })
        );
        let status = |r: Result<Request, Problem>| r.unwrap_err().status;
        assert_eq!(status(post("conference", r#"{"dn":"1001"}"#)), 400, "no to");
        assert_eq!(
            status(post("conference/single-step", r#"{"dn":"1001","to":"77"}"#)),
            422
        );
        assert_eq!(status(post("conference/nope", r#"{"dn":"1001"}"#)), 404);
        assert_eq!(
            status(post("conference/parties/1002", r#"{"dn":"1001"}"#)),
            404,
            "POST"
        );
        assert_eq!(status(delete("conference/parties/")), 400, "no party");
        // The bus form goes through the same checks.
        let bus = CallRequest {
            tenant: "demo".into(),
            request_id: 3,
            conn_id: Some(conn),
            dn: "1001".into(),
            op: CallOp::DeleteFromConference {
                party: "+15551234567".into(),
            },
            reply_to: None,
        };
        assert_eq!(
            api(false).from_bus(&bus).map(|c| c.request),
            delete("conference/parties/+15551234567")
        );
    }

    #[test]
    fn bus_requests_take_the_same_path_as_rest() {
        use switchboard_events::requests::{CallOp, CallRequest};
        let conn = ConnId(0x0001_0000_0000_0001);
        let req = |dn: &str, conn_id: Option<ConnId>, op: CallOp| CallRequest {
            tenant: "demo".into(),
            request_id: 42,
            conn_id,
            dn: dn.into(),
            op,
            reply_to: None,
        };
        let c = api(false)
            .from_bus(&req(
                "1001",
                Some(conn),
                CallOp::RouteCall { to: "1002".into() },
            ))
            .unwrap();
        let rest = api(false)
            .parse(
                42,
                "demo",
                Some((CONN, "route")),
                Verb::Post,
                br#"{"dn":"1001","to":"1002"}"#,
            )
            .unwrap();
        assert_eq!(c, rest);
        let err = |r: CallRequest| {
            let p = api(false).from_bus(&r).unwrap_err();
            (p.status, p.error_code())
        };
        assert_eq!(
            err(req(
                "1001",
                Some(conn),
                CallOp::RouteCall { to: "77".into() }
            )),
            (422, codes::INVALID_DESTINATION)
        );
        assert_eq!(
            err(req("1001", None, CallOp::Hold)),
            (400, codes::BAD_ARGUMENT),
            "no conn_id"
        );
        assert_eq!(
            err(req("9999", Some(conn), CallOp::Hold)),
            (400, codes::BAD_ARGUMENT),
            "unknown DN"
        );
        assert_eq!(
            err(req(
                "1001",
                Some(conn),
                CallOp::MakeCall { to: "1002".into() }
            )),
            (400, codes::BAD_ARGUMENT),
            "MakeCall names no call"
        );
        assert_eq!(
            err(req(
                "1001",
                Some(conn),
                CallOp::SendDtmf { digits: "x".into() }
            )),
            (400, codes::BAD_ARGUMENT)
        );
        let mut unknown = req("1001", Some(conn), CallOp::Hold);
        unknown.tenant = "nope".into();
        assert_eq!(err(unknown), (404, "unknown_tenant"));
        let make = api(false)
            .from_bus(&req("1001", None, CallOp::MakeCall { to: "1002".into() }))
            .unwrap();
        assert_eq!(
            make.request,
            Request::MakeCall {
                dn: "1001".into(),
                to: Resolved::Ok(Dest::Dn("1002".into()))
            }
        );
    }
}
