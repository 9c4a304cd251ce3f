//! The SIP Server role (`sip-node`): a B2BUA with the TLib call model.
//!
//! * [`model`]: the call model, a pure reducer `(state, input) -> actions`.
//! * [`core`]: the sans-I/O SIP core (transactions, dialogs, SDP relay) around the model.
//! * [`sdp`]: the SDP editing a relaying B2BUA needs (origin per leg, direction).

pub mod core;
pub mod model;
pub mod sdp;

#[cfg(test)]
mod model_tests;
