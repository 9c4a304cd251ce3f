//! REST call control in a process without a SIP Server (a front-end on its own nodes): the
//! request, parsed as the node's REST API parses it ([`rest_request`]), goes to the SIP Server
//! that owns the call as a [`CallRequest`] with a reply stream of this process; the node
//! checks it as it checks its own REST requests ([`super::api::Api::from_bus`]) and replies
//! whether it took it, which becomes the same answer its REST API gives.

use super::api::{rest_request, unknown_call, Verb};
use super::role::{accepted, problem_response};
use crate::problem::ApiProblem;
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use switchboard_bus::{BusError, SharedBus};
use switchboard_events::requests::{
    node_of, sip_node_presence_key, sip_node_requests_stream, CallReply, CallRequest,
};
use switchboard_events::ConnId;

/// Sends REST call-control requests to the SIP Servers over the bus.
pub struct Forwarder {
    bus: SharedBus,
    /// Where the nodes reply to this process: `front-end:{host-pid}:call-replies`.
    replies: String,
    /// How long a request waits for the node's reply.
    timeout: Duration,
}

impl Forwarder {
    pub fn new(bus: SharedBus, timeout: Duration) -> Self {
        let replies = format!(
            "front-end:{}:call-replies",
            crate::single_writer::consumer_name()
        );
        Forwarder {
            bus,
            replies,
            timeout,
        }
    }

    /// Parses, sends and waits: 202 when the node took the request, its problem when it
    /// refused, 404 when the node that owns the call is gone, 503 for MakeCall (no call
    /// names a node to make it), 504 when the node did not reply in time.
    pub async fn submit(
        &self,
        tenant: &str,
        target: Option<(&str, &str)>,
        verb: Verb,
        body: &[u8],
    ) -> Response {
        let (dn, conn, op) = match rest_request(target, verb, body) {
            Ok(parsed) => parsed,
            Err(p) => return problem_response(p),
        };
        let Some(conn) = conn else {
            return no_node();
        };
        match self.present(conn).await {
            Ok(true) => {}
            Ok(false) => return problem_response(unknown_call(conn, tenant)),
            Err(e) => return bus_unavailable(tenant, conn, e),
        }
        // Below 2^53, so that JavaScript clients read it exactly.
        let request = CallRequest {
            tenant: tenant.to_string(),
            request_id: rand::random::<u64>() >> 11,
            conn_id: Some(conn),
            dn,
            op,
            reply_to: Some(self.replies.clone()),
        };
        let conn_id = conn.to_string();
        tracing::info!(tenant, conn_id, request_id = request.request_id, op = ?request.op,
            "call-control request to the owning SIP Server");
        match self.send(&request, conn).await {
            Ok(Some(reply)) => answer(reply, tenant, conn_id),
            Ok(None) => ApiProblem::new(
                504,
                "No answer",
                format!(
                    "no sip-node answered within {} ms (the node of call {conn_id} may be gone)",
                    self.timeout.as_millis()
                ),
            )
            .into_response(),
            Err(e) => bus_unavailable(tenant, conn, e),
        }
    }

    /// Whether the node that owns `conn` runs (holds its presence lease).
    async fn present(&self, conn: ConnId) -> Result<bool, BusError> {
        let key = sip_node_presence_key(node_of(conn));
        Ok(self.bus.lease_owner(&key).await?.is_some())
    }

    /// Publishes on the stream of the node that owns `conn` and waits for its reply.
    async fn send(
        &self,
        request: &CallRequest,
        conn: ConnId,
    ) -> Result<Option<CallReply>, BusError> {
        let payload = serde_json::to_vec(request).map_err(|e| BusError::Invalid(e.to_string()))?;
        crate::bus::request_reply(
            self.bus.as_ref(),
            &sip_node_requests_stream(node_of(conn)),
            &payload,
            &self.replies,
            self.timeout,
            |entry| {
                serde_json::from_slice::<CallReply>(entry)
                    .ok()
                    .filter(|r| r.request_id == request.request_id)
            },
        )
        .await
    }
}

fn bus_unavailable(tenant: &str, conn: ConnId, e: BusError) -> Response {
    tracing::warn!(tenant, conn_id = %conn, error = %e, "call-control request not sent");
    ApiProblem::new(503, "Bus unavailable", e.to_string()).into_response()
}

/// MakeCall names no call, hence no node to send it to.
fn no_node() -> Response {
    ApiProblem::new(
        503,
        "No SIP Server",
        "no sip-node in this process: make calls through a process that runs one",
    )
    .into_response()
}

/// The node's reply as its REST API would have answered: 202, or its problem.
fn answer(reply: CallReply, tenant: &str, conn_id: String) -> Response {
    match reply.refused {
        None => accepted(reply.request_id, tenant, Some(conn_id)),
        Some(r) => ApiProblem::new(r.status, r.title, r.detail).into_response(),
    }
}
