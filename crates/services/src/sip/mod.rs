//! The SIP edge: registrar, location service, and the stateful proxy with load balancing.

pub mod location;
pub mod registrar;
pub mod routes;
