//! The SIPp helper against SIPp itself: proves the harness before the product is under test.

use std::time::Duration;

use switchboard_testkit::{free_udp_port, require_program, wait_udp_bound, Sipp};

#[test]
fn uac_calls_uas() {
    if !require_program("sipp") {
        return;
    }
    // SIPp cannot report a port it picked, so the UAS gets one that was free a moment ago.
    let port = free_udp_port().expect("free port");
    let uas = std::thread::spawn(move || {
        Sipp::builtin("uas")
            .arg("-p")
            .arg(&port.to_string())
            .timeout(Duration::from_secs(20))
            .run()
    });
    assert!(
        wait_udp_bound(port, Duration::from_secs(5)),
        "sipp uas did not bind"
    );
    let uac = Sipp::builtin("uac")
        .remote(([127, 0, 0, 1], port).into())
        .service("1001")
        .timeout(Duration::from_secs(15))
        .run()
        .expect("sipp uac runs");
    assert!(uac.success(), "{}", uac.report());
    let uas = uas.join().expect("join").expect("sipp uas runs");
    assert!(uas.success(), "{}", uas.report());
}

#[test]
fn failing_scenario_reports_errors() {
    if !require_program("sipp") {
        return;
    }
    // Nobody answers on the discard port: the scenario must time out and say so.
    let scenario = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options">
  <send retrans="500">
    <![CDATA[
OPTIONS sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:sipp@[local_ip]:[local_port]>;tag=[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200" timeout="1000"/>
</scenario>
"#;
    let port = free_udp_port().expect("free port");
    let out = Sipp::scenario(scenario)
        .remote(([127, 0, 0, 1], port).into())
        .timeout(Duration::from_secs(10))
        .run()
        .expect("sipp runs");
    assert!(!out.success(), "{}", out.report());
    assert!(
        !out.errors.is_empty(),
        "the -trace_err log says why: {}",
        out.report()
    );
}
