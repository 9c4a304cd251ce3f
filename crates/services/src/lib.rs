//! Switchboard's roles. Each module holds a role's domain logic as sans-I/O cores and reducers;
//! the thin async glue that binds sockets and HTTP routes lives next to it.

pub mod agent_state;
pub mod bus;
pub mod call_state;
pub mod config_api;
pub mod dialplan;
pub mod front_end;
pub mod mcp;
pub mod orchestrator;
pub mod problem;
pub mod routing;
pub mod single_writer;
pub mod sip;
pub mod sip_node;
pub mod store;
pub mod voicemail;
