//! SIPp scenario pieces for a carrier caller at the SIP Server: the demo call and treatment
//! tests (`contact_center.rs`, `failover_call.rs`, `treatments.rs`) build the caller's script
//! from these.

use super::scenario;
use std::path::Path;

const PCAPS: &str = "/usr/share/sip-tester";

pub fn play_pcap(file: &str) -> String {
    let path = Path::new(PCAPS).join(file);
    assert!(path.exists(), "{} is missing", path.display());
    format!(
        "  <nop><action><exec play_pcap_audio=\"{}\"/></action></nop>\n",
        path.display()
    )
}

pub fn pause(ms: u64) -> String {
    format!("  <pause milliseconds=\"{ms}\"/>\n")
}

/// Takes re-INVITEs (the music's, when it started before the agent was found) until one
/// offers the agent's media port `port`, waiting at most `timeout_ms` for each; answers each
/// with PCMU/PCMA.
// The treatments tests include this module without an agent phone.
#[allow(dead_code)]
pub fn until_agent_media(port: u16, timeout_ms: u64) -> String {
    format!(
        r#"  <label id="reinvite"/>
  <recv request="INVITE" timeout="{timeout_ms}">
    <action><ereg regexp="m=audio {port} RTP/AVP" search_in="body" assign_to="agent"/></action>
  </recv>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:carrier@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=carrier 53655765 2353687638 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000

]]></send>
  <recv request="ACK" timeout="5000" next="talk" test="agent"/>
  <nop next="reinvite"/>
  <label id="talk"/>
"#
    )
}

/// The caller hangs up (along the route set).
pub fn send_bye(callee: &str) -> String {
    format!(
        r#"  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:+15551234567@carrier.example>;tag=[pid]SIPpTag00[call_number]
To: <sip:{callee}@[remote_ip]:[remote_port]>[peer_tag_param]
[routes]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: <sip:carrier@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200" timeout="5000"/>
"#
    )
}

/// The carrier's scenario calling `callee` at the SIP Server, doing `during` after its ACK.
pub fn carrier_scenario(callee: &str, during: &str) -> String {
    let vars: Vec<&str> = during
        .split("assign_to=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    scenario(
        "treatment_caller",
        &[
            ("CALLEE", callee),
            ("DURING", during),
            ("VARS", &vars.join(",")),
        ],
    )
}
