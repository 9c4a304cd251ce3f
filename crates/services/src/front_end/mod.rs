//! `front-end`: the desktop API's own parts. The access policy of every `/v1/` route of the
//! process ([`auth`], applied by [`gate`] in the binary's HTTP server whether or not this role
//! runs) and the WebSocket event stream ([`events`]). The REST requests themselves are served
//! by the roles that own them (agents by `agent-state`, calls by `sip-node` and `call-state`,
//! queues by `routing`), behind the same gate; in a process without `agent-state`, `routing`
//! or `sip-node`, the binary's front-end adds their `remote_routes`, which serve the same
//! routes over the bus (`agent_state::remote_routes`, `routing::remote_routes`,
//! `sip_node::role::remote_routes`).

pub mod auth;
pub mod events;
pub mod gate;

use crate::single_writer::TenantsFeed;
use switchboard_bus::SharedBus;
use tokio_util::sync::CancellationToken;

/// Starts the event stream's feeds: routes to add to the process's router. `tenants` names
/// the tenants and agents a stream can be asked for.
pub fn start(tenants: TenantsFeed, bus: SharedBus, drain: CancellationToken) -> axum::Router {
    let hub = events::Hub::new(bus, drain);
    events::routes(hub, tenants)
}
