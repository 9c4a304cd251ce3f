//! The SIP edge: registrar, location service, and the stateful proxy with load balancing.

pub mod dn_service;
pub mod edge;
pub mod location;
pub mod registrar;
pub mod role;
pub mod routes;
pub mod target;
