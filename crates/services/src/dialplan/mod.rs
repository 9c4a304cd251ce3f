//! The `dialplan` role: tenant and device resolution for a number, number translation.
//!
//! * [`plan`]: the compiled dial plan, pure (no I/O): [`plan::Dialplan::resolve`].
//! * [`role`]: the async glue: builds the plan from the configuration store, rebuilds it on
//!   every change, shares it with `sip-node`, and serves `GET /v1/tenants/{t}/dialplan/resolve`.

pub mod plan;
pub mod role;

#[cfg(test)]
mod plan_tests;

pub use plan::{Device, Dialplan, Ingress, Query, Resolution, ResolveError, Scope, Target};
