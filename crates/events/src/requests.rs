//! Requests between roles, carried on bus streams as JSON (one schema for every backend).
//!
//! | stream | written by | read by | payload |
//! |---|---|---|---|
//! | [`sip_node_requests_stream`]`(node)` | orchestrator, front-end | the `sip-node` whose ConnIds carry `node` (consumer group `sip-node`) | [`CallRequest`] |
//! | [`routing_requests_stream`]`(tenant)` | orchestrator | `routing` (group `routing`) | [`RoutingRequest`] |
//! | `RoutingRequest::Submit::reply_to` | routing | the submitter | [`RoutingReply`] |
//! | [`agent_requests_stream`]`(tenant)` | front-end | `agent-state` (group `agent-state`) | [`AgentRequest`] |
//! | `CallRequest::reply_to` | sip-node | the front-end that sent it | [`CallReply`] |
//!
//! The outcome of a call or agent request is the event it causes on `events:{tenant}` (with
//! the request's `request_id`), or `EventError` naming the request. Routing answers on the
//! submitter's own reply stream, because only the submitter cares; so does a SIP Server asked
//! for a reply (`CallRequest::reply_to`) whether it took a request.

use crate::{ConnId, UserData};
use serde::{Deserialize, Serialize};

/// The stream of call-control requests for the SIP Server numbered `node` (the top 16 bits of
/// the ConnIds it allocates): `sip-node:{node:04x}:requests`.
pub fn sip_node_requests_stream(node: u16) -> String {
    format!("sip-node:{node:04x}:requests")
}

/// The lease a running SIP Server numbered `node` holds (and renews) on the bus:
/// `sip-node:{node:04x}`. Free means no such node runs: its calls are gone.
pub fn sip_node_presence_key(node: u16) -> String {
    format!("sip-node:{node:04x}")
}

/// The SIP Server that owns a call: the top 16 bits of its ConnId.
pub fn node_of(conn: ConnId) -> u16 {
    (conn.0 >> 48) as u16
}

/// Queue submissions and cancellations of a tenant: `routing:{tenant}:requests`.
pub fn routing_requests_stream(tenant: &str) -> String {
    format!("routing:{tenant}:requests")
}

/// Agent requests of a tenant (login, ready, ...): `agent-state:{tenant}:requests`.
pub fn agent_requests_stream(tenant: &str) -> String {
    format!("agent-state:{tenant}:requests")
}

/// A call-control request (TLib T-request) for the SIP Server that owns the call. The same
/// operations as the node's REST API (`/v1/tenants/{t}/calls/...`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    pub tenant: String,
    /// Chosen by the sender; echoed as `request_id` in the events the request causes.
    pub request_id: u64,
    /// The call; `None` only for MakeCall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<ConnId>,
    /// The DN the request acts for (the route point for RouteCall and treatments).
    pub dn: String,
    #[serde(flatten)]
    pub op: CallOp,
    /// A stream for the SIP Server's [`CallReply`]: whether it took the request, the answer
    /// its REST API gives (a front-end forwarding a desktop's request wants that). With it, a
    /// request refused before it reached the call model is answered there only, not by an
    /// EventError.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// The SIP Server's answer on [`CallRequest::reply_to`]: the request was taken (its outcome
/// follows as events, as for a REST request answered 202) or refused with the problem the
/// REST API would answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallReply {
    pub request_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<CallRefusal>,
}

/// Why a SIP Server refused a call request: an HTTP status, a problem title and detail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallRefusal {
    pub status: u16,
    pub title: String,
    pub detail: String,
}

/// What a [`CallRequest`] asks. JSON: `"op": "route_call"` and the fields in snake_case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CallOp {
    MakeCall {
        to: String,
    },
    Answer,
    Release,
    Hold,
    Retrieve,
    SingleStepTransfer {
        to: String,
    },
    InitiateTransfer {
        to: String,
    },
    CompleteTransfer,
    /// TInitiateConference: like InitiateTransfer, a consult call to `to` with the call's
    /// other party held; CompleteConference then merges the two calls.
    InitiateConference {
        to: String,
    },
    /// TCompleteConference (from either call): the consulted party joins the held call,
    /// which becomes a conference of three on the media server's mixer.
    CompleteConference,
    /// TSingleStepConference: `to` rings and joins the call when it answers.
    SingleStepConference {
        to: String,
    },
    /// TDeleteFromConference: party `party` (a DN or number) leaves the conference; the
    /// others stay. (Not `dn`: the request's own `dn` is the DN that asks.)
    DeleteFromConference {
        party: String,
    },
    AttachUserData {
        data: UserData,
    },
    UpdateUserData {
        data: UserData,
    },
    DeleteUserData {
        #[serde(default)]
        keys: Vec<String>,
    },
    SendDtmf {
        digits: String,
    },
    /// TRouteCall (route type default): the call at route point or queue `dn` goes to `to`
    /// (a DN, or an external number). A treatment playing on the call stops first.
    RouteCall {
        to: String,
    },
    /// TApplyTreatment: connects the call waiting at route point or queue `dn` to the media
    /// server for `treatment`; the caller is answered if it was not. Ends with
    /// `EventTreatmentEnd` (results in its user data), or `EventError`.
    ApplyTreatment {
        treatment: Treatment,
    },
    /// Stops the treatment playing on the call (EventTreatmentEnd with reason `cancelled`).
    CancelTreatment,
    /// A routing strategy that keeps the call at route point or queue `dn` longer than the
    /// DN's own routing timeout sets its own: the call waits `timeout_ms` from now for
    /// RouteCall (and again after each treatment), then takes the DN's default route.
    /// `None` gives the DN its own timeout back. No event answers it; `EventError` when the
    /// call is not waiting at `dn`.
    SetRouteTimeout {
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

/// A treatment the media server plays to a call while it waits at a route point or queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Treatment {
    /// A VoiceXML application (`sip:dialog@mcp;voicexml=URL`); `params` are passed as query
    /// parameters of the URL. Ends when the application exits: its exit namelist is the
    /// `treatment_results` of `EventTreatmentEnd`.
    PlayApplication {
        url: String,
        #[serde(default)]
        params: UserData,
    },
    /// Music on hold (`sip:annc@mcp;play=URL;repeat=forever`), until cancelled or routed.
    Music { url: String },
    /// An announcement: an audio URL (`file:`, `http:`, `tone:`) or `tts:TEXT`, played
    /// `repeat` times (default 1), then EventTreatmentEnd.
    PlayAnnouncement {
        url: String,
        #[serde(default = "one")]
        repeat: u32,
    },
    /// Plays `prompt` (a URL or `tts:TEXT`) and collects up to `max_digits` DTMF digits
    /// (ending early on `#`); EventTreatmentEnd's `treatment_results` is `{"digits": "..."}`.
    CollectDigits {
        prompt: String,
        max_digits: u32,
        #[serde(default = "five")]
        timeout_s: u32,
    },
}

fn one() -> u32 {
    1
}
fn five() -> u32 {
    5
}

/// A request to `routing`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RoutingRequest {
    /// Wait for a Ready agent that matches `skills` (e.g. `"sales >= 5 & english"`; empty:
    /// any agent of `agent_group` when set, else any agent). Calls are served by `priority`
    /// (higher first), then by `enqueued_ms` (older first). A call submitted again (after a
    /// lost race) keeps its place by passing its first `enqueued_ms`; the new submission
    /// replaces the old one and frees the agent reserved for it.
    Submit {
        tenant: String,
        /// Unique per submission; echoed in the reply.
        request_id: String,
        conn_id: ConnId,
        /// The virtual queue the call is counted in (statistics).
        queue: String,
        #[serde(default)]
        skills: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_group: Option<String>,
        #[serde(default)]
        priority: i32,
        /// Milliseconds since the Unix epoch when the call first entered the queue.
        enqueued_ms: u64,
        /// None: waits until cancelled.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_s: Option<u32>,
        /// The stream the [`RoutingReply`] goes to.
        reply_to: String,
        /// The call's user data, for targets' information and statistics.
        #[serde(default)]
        user_data: UserData,
    },
    /// The call no longer waits (abandoned, routed elsewhere, strategy ended); frees any
    /// reservation it holds.
    Cancel { tenant: String, conn_id: ConnId },
}

/// The answer of `routing` to a [`RoutingRequest::Submit`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RoutingReply {
    /// `agent_id` on `dn` is reserved for the call (EventAgentReserved was published); route
    /// the call there. The reservation ends when the agent's DN rings or gets the call, when
    /// the call is submitted again or cancelled, or after the reservation timeout.
    Target {
        request_id: String,
        conn_id: ConnId,
        agent_id: String,
        dn: String,
    },
    /// `timeout_s` passed without a target.
    Timeout { request_id: String, conn_id: ConnId },
    /// The submission was refused (unknown tenant, bad skill expression...).
    Rejected {
        request_id: String,
        conn_id: ConnId,
        reason: String,
    },
}

/// An agent request (TLib TAgentLogin, TAgentSetReady, ...) for `agent-state`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRequest {
    pub tenant: String,
    pub request_id: u64,
    pub agent_id: String,
    #[serde(flatten)]
    pub op: AgentOp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AgentOp {
    /// Logs in on `dn` (the agent's configured DN when absent).
    Login {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dn: Option<String>,
    },
    Logout,
    Ready,
    NotReady {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason_code: Option<String>,
    },
    /// Ends after-call work early: the agent goes Ready.
    AfterCallWorkDone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_request_json() {
        let r = CallRequest {
            tenant: "demo".into(),
            request_id: 7,
            conn_id: Some(ConnId(0x1234_0000_0000_0001)),
            dn: "5000".into(),
            op: CallOp::ApplyTreatment {
                treatment: Treatment::PlayApplication {
                    url: "http://127.0.0.1:8080/menu.vxml".into(),
                    params: UserData::new(),
                },
            },
            reply_to: None,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains(r#""op":"apply_treatment""#), "{j}");
        assert!(j.contains(r#""type":"play_application""#), "{j}");
        assert_eq!(serde_json::from_str::<CallRequest>(&j).unwrap(), r);
        assert_eq!(node_of(r.conn_id.unwrap()), 0x1234);
        assert_eq!(sip_node_requests_stream(0x1234), "sip-node:1234:requests");
        assert_eq!(sip_node_presence_key(0x1234), "sip-node:1234");
        let route: CallRequest = serde_json::from_str(
            r#"{"tenant":"demo","request_id":1,"conn_id":"0001000000000002","dn":"5000","op":"route_call","to":"1001"}"#,
        )
        .unwrap();
        assert_eq!(route.op, CallOp::RouteCall { to: "1001".into() });
    }

    #[test]
    fn call_reply_json() {
        let r: CallRequest = serde_json::from_str(
            r#"{"tenant":"demo","request_id":1,"conn_id":"0001000000000002","dn":"1001","op":"hold","reply_to":"front-end:h-1:call-replies"}"#,
        )
        .unwrap();
        assert_eq!(r.reply_to.as_deref(), Some("front-end:h-1:call-replies"));
        assert_eq!(r.op, CallOp::Hold);
        let taken = CallReply {
            request_id: 1,
            refused: None,
        };
        assert_eq!(
            serde_json::to_string(&taken).unwrap(),
            r#"{"request_id":1}"#
        );
        let refused: CallReply = serde_json::from_str(
            r#"{"request_id":2,"refused":{"status":404,"title":"Unknown call","detail":"no call"}}"#,
        )
        .unwrap();
        assert_eq!(refused.refused.map(|r| r.status), Some(404));
    }

    #[test]
    fn conference_ops_json() {
        let ops = [
            (
                r#""op":"initiate_conference","to":"1003""#,
                CallOp::InitiateConference { to: "1003".into() },
            ),
            (r#""op":"complete_conference""#, CallOp::CompleteConference),
            (
                r#""op":"single_step_conference","to":"1003""#,
                CallOp::SingleStepConference { to: "1003".into() },
            ),
            (
                r#""op":"delete_from_conference","party":"1003""#,
                CallOp::DeleteFromConference {
                    party: "1003".into(),
                },
            ),
        ];
        for (json, op) in ops {
            let text = format!(
                r#"{{"tenant":"demo","request_id":1,"conn_id":"0001000000000002","dn":"1001",{json}}}"#
            );
            let r: CallRequest = serde_json::from_str(&text).unwrap();
            assert_eq!((r.dn.as_str(), &r.op), ("1001", &op), "{text}");
            let back = serde_json::to_string(&r).unwrap();
            assert!(back.contains(json), "{back}");
        }
    }

    #[test]
    fn set_route_timeout_json() {
        let r: CallRequest = serde_json::from_str(
            r#"{"tenant":"demo","request_id":1,"conn_id":"0001000000000002","dn":"5000","op":"set_route_timeout","timeout_ms":600000}"#,
        )
        .unwrap();
        assert_eq!(
            r.op,
            CallOp::SetRouteTimeout {
                timeout_ms: Some(600_000)
            }
        );
        let back: CallRequest =
            serde_json::from_str(r#"{"tenant":"demo","request_id":2,"conn_id":"0001000000000002","dn":"5000","op":"set_route_timeout"}"#)
                .unwrap();
        assert_eq!(back.op, CallOp::SetRouteTimeout { timeout_ms: None });
    }

    #[test]
    fn routing_json() {
        let s: RoutingRequest = serde_json::from_str(
            r#"{"op":"submit","tenant":"demo","request_id":"r1","conn_id":"0001000000000002","queue":"support","skills":"support >= 3","enqueued_ms":5,"reply_to":"orchestrator:n1:replies"}"#,
        )
        .unwrap();
        match &s {
            RoutingRequest::Submit {
                priority,
                timeout_s,
                ..
            } => assert_eq!((*priority, *timeout_s), (0, None)),
            other => panic!("{other:?}"),
        }
        let r = RoutingReply::Target {
            request_id: "r1".into(),
            conn_id: ConnId(2),
            agent_id: "a1".into(),
            dn: "1001".into(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.starts_with(r#"{"result":"target""#), "{j}");
        assert_eq!(serde_json::from_str::<RoutingReply>(&j).unwrap(), r);
    }

    #[test]
    fn agent_request_json() {
        let a: AgentRequest = serde_json::from_str(
            r#"{"tenant":"demo","request_id":3,"agent_id":"a1","op":"not_ready","reason_code":"lunch"}"#,
        )
        .unwrap();
        assert_eq!(
            a.op,
            AgentOp::NotReady {
                reason_code: Some("lunch".into())
            }
        );
        assert!(serde_json::from_str::<AgentRequest>(
            r#"{"tenant":"demo","request_id":3,"agent_id":"a1","op":"dance"}"#
        )
        .is_err());
    }
}
