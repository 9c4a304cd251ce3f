//! Harness for Switchboard's integration tests.
//!
//! Real programs are the counterparts in tests (ARCHITECTURE.md, principle 7). This crate starts
//! them on loopback with ports chosen by the kernel, and cleans up on drop:
//!
//! * [`Switchboard`]: the `switchboard` binary with a TOML configuration, every listener on port
//!   0; the real ports are read back from its `listening http=... sip_udp=...` log line.
//! * [`Sipp`]: runs `sipp` with a scenario and returns its exit status and logs.
//! * [`RedisServer`]: a throw-away `redis-server`.
//! * [`require_program`]: skip a test loudly when a program is missing.
//! * [`http_get`]: a tiny blocking HTTP/1.0 client for health and REST checks.
//! * [`free_udp_port`] and [`wait_udp_bound`]: for programs that cannot bind port 0 (a SIPp UAS).
//!
//! Everything is blocking and uses only the standard library, so it works from `#[test]` and
//! from inside `#[tokio::test]` (via `spawn_blocking`) alike.

mod http;
mod net;
mod process;
mod redis;
mod sipp;
mod switchboard;

pub use http::{http_get, http_request, http_request_with, HttpResponse};
pub use net::{free_udp_port, wait_udp_bound};
pub use process::{find_binary, require_program, send_signal, Output};
pub use redis::RedisServer;
pub use sipp::{scenario_file, Sipp, SippOutcome};
pub use switchboard::{Switchboard, SwitchboardBuilder};

/// Errors are plain `std::io::Error`s with a message saying what went wrong.
pub type Result<T> = std::io::Result<T>;

pub(crate) fn error(message: impl Into<String>) -> std::io::Error {
    std::io::Error::other(message.into())
}
