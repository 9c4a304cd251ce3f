//! The SIP Server role (`sip-node`): a B2BUA with the TLib call model.
//!
//! * [`model`]: the call model, a pure reducer `(state, input) -> actions`; its conferences
//!   (three or more parties on the media server's mixer) in [`model::conference`].
//! * [`core`]: the sans-I/O SIP core (transactions, dialogs, SDP relay) around the model.
//! * [`api`]: REST call-control requests parsed into model requests, without I/O.
//! * [`role`]: the async glue: socket, driver thread, event publishing, REST routes, and the
//!   call-control requests of other roles from the bus (`sip-node:{node}:requests`).
//! * [`forward`]: the same REST routes in a process without a SIP Server, sent to the node
//!   that owns the call over the bus.
//! * [`sdp`]: the SDP editing a relaying B2BUA needs (origin per leg, direction).
//! * [`treatment`]: treatments as media-server Request-URIs, and their results from the BYE.

pub mod api;
pub mod core;
pub mod forward;
pub mod model;
pub mod role;
pub mod sdp;
pub mod treatment;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod route_tests;
