//! Helpers shared by the SIPp-driven integration tests (each test binary includes this module
//! and uses part of it, hence the allowance for unused items; `bus_events.rs` and `carrier.rs`
//! are included on their own by path).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use switchboard_testkit::{Sipp, SippOutcome, Switchboard};

pub fn scenario(name: &str, vars: &[(&str, &str)]) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sipp");
    switchboard_testkit::scenario_file(&dir, name, vars).expect("scenario file")
}

pub fn free_port() -> u16 {
    switchboard_testkit::free_udp_port().expect("free port")
}

pub fn sipp(xml: &str, remote: Option<SocketAddr>, port: u16) -> Sipp {
    let mut s = Sipp::scenario(xml)
        .arg("-p")
        .arg(&port.to_string())
        .timeout(Duration::from_secs(20));
    if let Some(r) = remote {
        s = s.remote(r);
    }
    s
}

/// Runs a SIPp scenario in the background; join it for its outcome.
pub fn background(
    xml: String,
    remote: Option<SocketAddr>,
    port: u16,
) -> thread::JoinHandle<SippOutcome> {
    let h = thread::spawn(move || sipp(&xml, remote, port).run().expect("sipp runs"));
    // SIPp needs a moment to bind before the first message is sent to it.
    thread::sleep(Duration::from_millis(400));
    h
}

/// Registers SIP user `user` (password `secret`) at the switchboard's edge with its contact on
/// loopback port `contact_port` (where the test's SIPp phone listens).
pub fn register(sb: &Switchboard, user: &str, contact_port: u16) {
    let contact = format!("127.0.0.1:{contact_port}");
    let xml = scenario(
        "register",
        &[
            ("USER", user),
            ("CONTACT", &contact),
            ("EXPIRES", "300"),
            ("PASSWORD", "secret"),
        ],
    );
    let out = sipp(&xml, sb.sip_udp_addr(), free_port())
        .run()
        .expect("sipp runs");
    assert!(out.success(), "REGISTER {user} failed:\n{}", out.report());
}

/// The state of DN `dn` in a call of call-state's REST API.
pub fn party_state(call: &Value, dn: &str) -> Option<String> {
    call["parties"]
        .as_array()?
        .iter()
        .find(|p| p["dn"] == dn)
        .and_then(|p| p["state"].as_str())
        .map(str::to_string)
}
