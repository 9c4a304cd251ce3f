//! Treatments end to end: the binary with `sip-proxy,registrar,sip-node,dialplan,config,mcp`
//! and Redis as the bus, SIPp as the carrier (signalling, and DTMF from the `sip-tester`
//! pcaps) and as the agent's phone, and a small HTTP server of the test serving the VoiceXML
//! menu. A call parks at route point 5000; the test treats it over REST or with
//! `CallRequest`s on the node's bus stream, reads the events from `events:demo` as they come,
//! and routes the call to the agent. The last two tests add the `orchestrator` running the
//! demo strategy: first with the test playing `routing`, then with `agent-state` and `routing`.

#[path = "common/bus_events.rs"]
mod bus_events;
#[path = "common/carrier.rs"]
mod carrier;
mod common;

use bus_events::Events;
use carrier::{carrier_scenario, pause, play_pcap, send_bye};
use common::{free_port, register, scenario};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use switchboard_events::requests::{node_of, sip_node_requests_stream};
use switchboard_events::{ConnId, Event};
use switchboard_testkit::{
    http_request, require_program, RedisServer, Sipp, SippOutcome, Switchboard,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
/// How long a test waits for each event it expects.
const WAIT: Duration = Duration::from_secs(20);

/// Route point 5000 (60 s to route a call) running `strategy`, DN 1002 with agent a1002
/// (registered by SIPp).
fn config_with(dir: &Path, redis: &RedisServer, strategy: &str) -> String {
    format!(
        r#"data_dir = {:?}

[bus]
backend = "redis"
redis_url = {:?}

[registrar]
algorithms = ["MD5"]

[mcp]
fallback_prompt = "tone:440/300"

[[tenants]]
name = "demo"
domain = "switchboard"
[[tenants.users]]
user = "1002"
password = "secret"

[[tenants.dns]]
number = "1002"
kind = "extension"

[[tenants.dns]]
number = "5000"
kind = "route_point"

[[tenants.route_points]]
number = "5000"
strategy_url = {strategy:?}
timeout_s = 60

[[tenants.agents]]
login_id = "a1002"
dn = "1002"
"#,
        dir.display().to_string(),
        redis.url()
    )
}

/// Redis, the binary and the menu application; `None` when SIPp, redis-server or the DTMF
/// pcaps are missing.
struct Rig {
    sb: Switchboard,
    redis: RedisServer,
    app: App,
    _dir: tempfile::TempDir,
}

fn rig() -> Option<Rig> {
    rig_with(&[], "builtin:test", "")
}

/// [`rig`] with more roles, route point 5000 running `strategy`, and `tail` appended to the
/// configuration (it continues agent a1002's table).
fn rig_with(more_roles: &[&str], strategy: &str, tail: &str) -> Option<Rig> {
    if !require_program("sipp") || !require_program("redis-server") {
        return None;
    }
    let redis = RedisServer::spawn().expect("redis-server starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut roles = vec![
        "sip-proxy",
        "registrar",
        "sip-node",
        "dialplan",
        "config",
        "mcp",
    ];
    roles.extend_from_slice(more_roles);
    let sb = Switchboard::builder()
        .binary(BIN)
        .config(&(config_with(dir.path(), &redis, strategy) + tail))
        .roles(&roles)
        .log("info,switchboard_services=debug")
        .spawn()
        .expect("switchboard starts");
    Some(Rig {
        sb,
        redis,
        app: App::start(),
        _dir: dir,
    })
}

impl Rig {
    fn node(&self) -> SocketAddr {
        self.sb.addr("sip_node_udp").expect("sip_node_udp")
    }

    /// A REST request: (status, JSON body).
    fn rest(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let r = http_request(self.sb.http_addr(), method, path, Some(body)).expect("HTTP");
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        )
    }

    /// A request the node must accept (202): its request id.
    fn accepted(&self, method: &str, path: &str, body: &str) -> u64 {
        let (status, v) = self.rest(method, path, body);
        assert_eq!(status, 202, "{method} {path} {body}: {v}");
        v["request_id"].as_u64().expect("request_id")
    }

    /// Waits until the media server has no call left.
    fn mcp_idle(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, calls) = self.rest("GET", "/v1/mcp/calls", "");
            if calls["active"].as_array().is_some_and(|a| a.is_empty()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn named<'a>(e: &'a Event, name: &str) -> Option<&'a switchboard_events::CallAttrs> {
    (e.name() == name).then(|| e.call()).flatten()
}

fn request_id(e: &Event) -> Option<u64> {
    match e {
        Event::EventError(x) => Some(x.request_id),
        other => other.call().and_then(|c| c.request_id),
    }
}

// ---- SIPp ----

/// Takes a re-INVITE whose SDP must match `regexp` (checked, assigned to `var`), answers it
/// with payload types `pts`, takes the ACK.
fn reinvite(regexp: &str, var: &str, pts: &str) -> String {
    format!(
        r#"  <recv request="INVITE" timeout="20000">
    <action><ereg regexp="{regexp}" search_in="body" check_it="true" assign_to="{var}"/></action>
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
m=audio [media_port] RTP/AVP {pts}
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000

]]></send>
  <recv request="ACK" timeout="5000"/>
"#
    )
}

/// Waits for the SIP Server's BYE and answers it.
fn wait_bye() -> String {
    r#"  <recv request="BYE" timeout="20000"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"#
    .to_string()
}

/// The carrier's call to route point 5000 at `node`, doing `during` after its ACK.
fn caller(node: SocketAddr, during: &str) -> thread::JoinHandle<SippOutcome> {
    let xml = carrier_scenario("5000", during);
    let (sip, media) = (free_port(), free_port());
    background(xml, Some(node), sip, media)
}

/// Runs a SIPp scenario in the background on `sip` with media on `media`.
fn background(
    xml: String,
    remote: Option<SocketAddr>,
    sip: u16,
    media: u16,
) -> thread::JoinHandle<SippOutcome> {
    let h = thread::spawn(move || {
        let mut s = Sipp::scenario(&xml)
            .arg("-p")
            .arg(&sip.to_string())
            .arg("-mp")
            .arg(&media.to_string())
            .timeout(Duration::from_secs(40));
        if let Some(r) = remote {
            s = s.remote(r);
        }
        s.run().expect("sipp runs")
    });
    thread::sleep(Duration::from_millis(400));
    h
}

// ---- the VoiceXML application ----

/// A minimal HTTP server on 127.0.0.1 serving `/menu.vxml` (collects one digit and exits
/// with it as `choice`) and logging request targets.
struct App {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

const MENU: &str =
    "<?xml version=\"1.0\"?>\n<vxml version=\"2.1\" xmlns=\"http://www.w3.org/2001/vxml\">\
    <form><field name='choice' type='digits?length=1'>\
    <filled><exit namelist='choice'/></filled></field></form></vxml>";

impl App {
    fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let targets = Arc::new(Mutex::new(Vec::new()));
        let log = targets.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let log = log.clone();
                thread::spawn(move || serve(conn, &log));
            }
        });
        App { addr, targets }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn targets(&self) -> Vec<String> {
        self.targets.lock().expect("lock").clone()
    }
}

fn serve(conn: TcpStream, log: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(read) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    log.lock().expect("lock").push(target.clone());
    let (status, body) = if target.starts_with("/menu.vxml") {
        (200, MENU)
    } else {
        (404, "not found")
    };
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: application/voicexml+xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

// ---- the tests ----

#[test]
fn menu_then_music_then_the_agent_over_rest() {
    let Some(r) = rig() else { return };
    let mut events = Events::new(&r.redis);
    let (agent_sip, agent_media) = (free_port(), free_port());
    register(&r.sb, "1002", agent_sip);
    let agent = background(scenario("callee", &[]), None, agent_sip, agent_media);
    // The caller answers the menu with 2, then takes the music's media, then the agent's.
    let during = pause(1500)
        + &play_pcap("dtmf_2833_2.pcap")
        + &reinvite("m=audio [0-9]+ RTP/AVP", "music", "8 101")
        + &reinvite(&format!("m=audio {agent_media} RTP/AVP"), "agent", "0")
        + &wait_bye();
    let carrier = caller(r.node(), &during);

    let rr = events.wait("EventRouteRequest", WAIT, |e| {
        named(e, "EventRouteRequest").is_some()
    });
    let conn = rr.call().and_then(|c| c.conn_id).expect("conn_id");
    let base = format!("/v1/tenants/demo/calls/{conn}");

    // Bad treatments are problems; the call keeps waiting.
    for (body, want) in [
        (r#"{"dn":"5000"}"#, 400),
        (r#"{"dn":"5000","treatment":{"type":"dance"}}"#, 400),
        (
            r#"{"dn":"5000","treatment":{"type":"collect_digits","prompt":"tts:hi","max_digits":0}}"#,
            422,
        ),
        (
            r#"{"dn":"5000","treatment":{"type":"play_announcement","url":"tone:440","repeat":0}}"#,
            422,
        ),
    ] {
        let (status, v) = r.rest("POST", &format!("{base}/treatment"), body);
        assert_eq!(status, want, "{body}: {v}");
    }

    let menu = r.accepted(
        "POST",
        &format!("{base}/treatment"),
        &json!({"dn": "5000", "treatment": {"type": "play_application",
            "url": r.app.url("/menu.vxml"), "params": {"lang": "en"}}})
        .to_string(),
    );
    events.wait("EventTreatmentApplied", WAIT, |e| {
        named(e, "EventTreatmentApplied").is_some() && request_id(e) == Some(menu)
    });
    let end = events.wait("EventTreatmentEnd", WAIT, |e| {
        named(e, "EventTreatmentEnd").is_some()
    });
    let end = end.call().expect("call event");
    assert_eq!(end.this_dn, "5000");
    assert_eq!(end.request_id, Some(menu));
    assert_eq!(end.reason.as_deref(), Some("completed"));
    assert_eq!(
        end.treatment_results.clone().map(Value::Object),
        Some(json!({"choice": "2"})),
        "the menu's exit namelist"
    );
    assert_eq!(
        r.app.targets(),
        vec!["/menu.vxml?lang=en".to_string()],
        "params go in the URL's query"
    );

    let music = r.accepted(
        "POST",
        &format!("{base}/treatment"),
        r#"{"dn":"5000","treatment":{"type":"music","url":"tone:440"}}"#,
    );
    events.wait("EventTreatmentApplied (music)", WAIT, |e| {
        named(e, "EventTreatmentApplied").is_some() && request_id(e) == Some(music)
    });
    let route = r.accepted(
        "POST",
        &format!("{base}/route"),
        r#"{"dn":"5000","to":"1002"}"#,
    );
    let end = events.wait("EventTreatmentEnd (routed)", WAIT, |e| {
        named(e, "EventTreatmentEnd").is_some()
    });
    assert_eq!(
        (end.call().unwrap().reason.as_deref(), request_id(&end)),
        (Some("routed"), Some(route))
    );
    let est = events.wait("EventEstablished", WAIT, |e| {
        named(e, "EventEstablished").is_some_and(|c| c.this_dn == "1002")
    });
    assert_eq!(est.call().unwrap().agent_id.as_deref(), Some("a1002"));
    assert_eq!(est.call().unwrap().conn_id, Some(conn));
    let release = r.accepted("POST", &format!("{base}/release"), r#"{"dn":"1002"}"#);
    events.wait("EventReleased", WAIT, |e| {
        named(e, "EventReleased").is_some() && request_id(e) == Some(release)
    });
    for (who, h) in [("carrier", carrier), ("agent 1002", agent)] {
        let out = h.join().expect("sipp thread");
        assert!(
            out.success(),
            "{who}:\n{}\n--- switchboard ---\n{}",
            out.report(),
            r.sb.logs()
        );
    }
    assert!(r.mcp_idle(), "the media server's sessions ended");
    // The call's events (the registrar's DN service events come and go with the agent's
    // registration).
    let names: Vec<_> = events
        .seen
        .iter()
        .filter(|e| e.call().is_some())
        .map(|e| e.name())
        .collect();
    assert_eq!(
        names,
        vec![
            "EventRouteRequest",
            "EventTreatmentApplied",
            "EventTreatmentEnd",
            "EventTreatmentApplied",
            "EventTreatmentEnd",
            "EventDiverted",
            "EventRinging",
            "EventEstablished",
            "EventReleased",
        ]
    );
}

#[test]
fn menu_and_collect_digits_over_the_bus_then_the_caller_hangs_up_during_music() {
    let Some(r) = rig() else { return };
    let mut events = Events::new(&r.redis);
    let during = pause(1500)
        + &play_pcap("dtmf_2833_2.pcap")
        + &reinvite("m=audio [0-9]+ RTP/AVP", "collect", "8 101")
        + &pause(1000)
        + &play_pcap("dtmf_2833_7.pcap")
        + &reinvite("m=audio [0-9]+ RTP/AVP", "music", "8 101")
        + &pause(1000)
        + &send_bye("5000");
    let carrier = caller(r.node(), &during);
    let rr = events.wait("EventRouteRequest", WAIT, |e| {
        named(e, "EventRouteRequest").is_some()
    });
    let conn: ConnId = rr.call().and_then(|c| c.conn_id).expect("conn_id");
    let stream = sip_node_requests_stream(node_of(conn));
    let request = |id: u64, treatment: Value| {
        json!({"tenant": "demo", "request_id": id, "conn_id": conn, "dn": "5000",
            "op": "apply_treatment", "treatment": treatment})
        .to_string()
    };

    // Garbage is dropped; a bad treatment is refused with EventError naming the request.
    events.publish(&stream, "not a request");
    events.publish(
        &stream,
        &request(
            901,
            json!({"type": "play_announcement", "url": "tone:440", "repeat": 0}),
        ),
    );
    let err = events.wait("EventError", WAIT, |e| e.name() == "EventError");
    match &err {
        Event::EventError(x) => {
            assert_eq!((x.request_id, x.error_code.as_str()), (901, "bad_argument"));
            assert_eq!(x.conn_id, Some(conn));
        }
        other => panic!("{other:?}"),
    }

    events.publish(
        &stream,
        &request(
            902,
            json!({"type": "play_application", "url": r.app.url("/menu.vxml")}),
        ),
    );
    events.wait("EventTreatmentApplied", WAIT, |e| {
        named(e, "EventTreatmentApplied").is_some() && request_id(e) == Some(902)
    });
    let end = events.wait("EventTreatmentEnd", WAIT, |e| {
        named(e, "EventTreatmentEnd").is_some()
    });
    let end = end.call().expect("call event");
    assert_eq!(end.request_id, Some(902));
    assert_eq!(
        end.treatment_results.clone().map(Value::Object),
        Some(json!({"choice": "2"}))
    );

    // CollectDigits: the media server's built-in page; the caller presses 7. The menu ended on
    // the first packet of the 2; the rest of that pcap (140 ms), which SIPp sends to the newest
    // media address, must not reach the new session (it did once with a 500 ms wait).
    thread::sleep(Duration::from_millis(1000));
    events.publish(
        &stream,
        &request(
            903,
            json!({"type": "collect_digits", "prompt": "tone:440/300", "max_digits": 1}),
        ),
    );
    let end = events.wait("EventTreatmentEnd (digits)", WAIT, |e| {
        named(e, "EventTreatmentEnd").is_some() && request_id(e) == Some(903)
    });
    assert_eq!(
        end.call()
            .unwrap()
            .treatment_results
            .clone()
            .map(Value::Object),
        Some(json!({"digits": "7"}))
    );

    events.publish(
        &stream,
        &request(904, json!({"type": "music", "url": "tone:440"})),
    );
    events.wait("EventTreatmentApplied (music)", WAIT, |e| {
        named(e, "EventTreatmentApplied").is_some() && request_id(e) == Some(904)
    });
    let end = events.wait("EventTreatmentEnd (caller_hangup)", WAIT, |e| {
        named(e, "EventTreatmentEnd").is_some()
    });
    assert_eq!(end.call().unwrap().reason.as_deref(), Some("caller_hangup"));
    events.wait("EventAbandoned", WAIT, |e| {
        named(e, "EventAbandoned").is_some_and(|c| c.this_dn == "5000")
    });
    let out = carrier.join().expect("sipp thread");
    assert!(
        out.success(),
        "carrier:\n{}\n--- switchboard ---\n{}",
        out.report(),
        r.sb.logs()
    );
    assert!(r.mcp_idle(), "the media server's music session ended");
}

/// The demo end to end, with the orchestrator running `builtin:demo-strategy` and the test
/// playing `routing`: the caller presses 2 in the demo menu (the VoiceXML page the
/// orchestrator serves, run by the media server), hears music while queued for support, and
/// reaches agent 1002 when routing reserves it.
#[test]
fn the_demo_strategy_takes_a_call_from_the_menu_to_the_agent() {
    use switchboard_events::requests::{RoutingReply, RoutingRequest};
    let Some(r) = rig_with(&["orchestrator"], "builtin:demo-strategy", "") else {
        return;
    };
    let mut events = Events::new(&r.redis);
    let (agent_sip, agent_media) = (free_port(), free_port());
    register(&r.sb, "1002", agent_sip);
    let agent = background(scenario("callee", &[]), None, agent_sip, agent_media);
    let during = pause(1500)
        + &play_pcap("dtmf_2833_2.pcap")
        + &reinvite("m=audio [0-9]+ RTP/AVP", "music", "8 101")
        + &reinvite(&format!("m=audio {agent_media} RTP/AVP"), "agent", "0")
        + &wait_bye();
    let carrier = caller(r.node(), &during);

    let rr = events.wait("EventRouteRequest", WAIT, |e| {
        named(e, "EventRouteRequest").is_some()
    });
    let conn = rr.call().and_then(|c| c.conn_id).expect("conn_id");
    let end = events.wait("EventTreatmentEnd (menu)", WAIT, |e| {
        named(e, "EventTreatmentEnd").is_some()
    });
    assert_eq!(
        end.call()
            .unwrap()
            .treatment_results
            .clone()
            .map(Value::Object),
        Some(json!({"choice": "support"})),
        "the demo menu's exit namelist"
    );

    // The strategy queues the call for support; the test, as routing, reserves agent 1002.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (submission, reply_to) = loop {
        let entries = events
            .rt
            .block_on(events.bus.read_range("routing:demo:requests", None, 10))
            .expect("read");
        let submit = entries.iter().find_map(|e| {
            match serde_json::from_slice::<RoutingRequest>(&e.payload).ok()? {
                RoutingRequest::Submit {
                    request_id,
                    reply_to,
                    queue,
                    skills,
                    conn_id,
                    ..
                } => Some((request_id, reply_to, queue, skills, conn_id)),
                _ => None,
            }
        });
        if let Some((id, to, queue, skills, c)) = submit {
            assert_eq!(
                (queue.as_str(), skills.as_str(), c),
                ("support", "support >= 5", conn)
            );
            break (id, to);
        }
        assert!(
            Instant::now() < deadline,
            "no submission; log:\n{}",
            r.sb.logs()
        );
        thread::sleep(Duration::from_millis(50));
    };
    events.wait("EventTreatmentApplied (music)", WAIT, |e| {
        named(e, "EventTreatmentApplied").is_some()
    });
    let reply = RoutingReply::Target {
        request_id: submission,
        conn_id: conn,
        agent_id: "a1002".into(),
        dn: "1002".into(),
    };
    events.publish(&reply_to, &serde_json::to_string(&reply).expect("json"));
    let est = events.wait("EventEstablished", WAIT, |e| {
        named(e, "EventEstablished").is_some_and(|c| c.this_dn == "1002")
    });
    assert_eq!(est.call().unwrap().conn_id, Some(conn));
    // The strategy is over once the agent answered: its snapshot is gone.
    let key = format!("orchestrator:demo:{conn}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while events
        .rt
        .block_on(events.bus.kv_get(&key))
        .expect("kv")
        .is_some()
    {
        assert!(Instant::now() < deadline, "the session did not end");
        thread::sleep(Duration::from_millis(50));
    }
    let release = json!({"tenant": "demo", "request_id": 77, "conn_id": conn, "dn": "1002",
        "op": "release"});
    events.publish(
        &sip_node_requests_stream(node_of(conn)),
        &release.to_string(),
    );
    events.wait("EventReleased", WAIT, |e| {
        named(e, "EventReleased").is_some() && request_id(e) == Some(77)
    });
    for (who, h) in [("carrier", carrier), ("agent 1002", agent)] {
        let out = h.join().expect("sipp thread");
        assert!(
            out.success(),
            "{who}:\n{}\n--- switchboard ---\n{}",
            out.report(),
            r.sb.logs()
        );
    }
}

/// The demo with every role it needs: agent a1002 (skill support 8) logs in and goes ready
/// through `agent-state`; the caller presses 2; the orchestrator queues the call for support;
/// `routing` reserves a1002; the call reaches 1002.
#[test]
fn the_demo_with_agent_state_and_routing() {
    use switchboard_events::requests::{agent_requests_stream, AgentOp, AgentRequest};
    let tail = "skills = { support = 8 }\n\n[[tenants.skills]]\nname = \"support\"\n";
    let Some(r) = rig_with(
        &["agent-state", "routing", "orchestrator"],
        "builtin:demo-strategy",
        tail,
    ) else {
        return;
    };
    let mut events = Events::new(&r.redis);
    let (agent_sip, agent_media) = (free_port(), free_port());
    register(&r.sb, "1002", agent_sip);
    let agent = background(scenario("callee", &[]), None, agent_sip, agent_media);
    for (id, op) in [(1, AgentOp::Login { dn: None }), (2, AgentOp::Ready)] {
        let req = AgentRequest {
            tenant: "demo".into(),
            request_id: id,
            agent_id: "a1002".into(),
            op,
        };
        events.publish(
            &agent_requests_stream("demo"),
            &serde_json::to_string(&req).expect("json"),
        );
    }
    events.wait("EventAgentReady", WAIT, |e| e.name() == "EventAgentReady");
    let during = pause(1500)
        + &play_pcap("dtmf_2833_2.pcap")
        + &reinvite("m=audio [0-9]+ RTP/AVP", "music", "8 101")
        + &reinvite(&format!("m=audio {agent_media} RTP/AVP"), "agent", "0")
        + &wait_bye();
    let carrier = caller(r.node(), &during);
    let rr = events.wait("EventRouteRequest", WAIT, |e| {
        named(e, "EventRouteRequest").is_some()
    });
    let conn = rr.call().and_then(|c| c.conn_id).expect("conn_id");
    let est = events.wait("EventEstablished", WAIT, |e| {
        named(e, "EventEstablished").is_some_and(|c| c.this_dn == "1002")
    });
    assert_eq!(est.call().unwrap().conn_id, Some(conn));
    assert!(
        events.seen.iter().any(|e| e.name() == "EventAgentReserved"),
        "routing reserved the agent: {:#?}",
        events.seen
    );
    let release = json!({"tenant": "demo", "request_id": 78, "conn_id": conn, "dn": "1002",
        "op": "release"});
    events.publish(
        &sip_node_requests_stream(node_of(conn)),
        &release.to_string(),
    );
    events.wait("EventReleased", WAIT, |e| {
        named(e, "EventReleased").is_some() && request_id(e) == Some(78)
    });
    for (who, h) in [("carrier", carrier), ("agent 1002", agent)] {
        let out = h.join().expect("sipp thread");
        assert!(
            out.success(),
            "{who}:\n{}\n--- switchboard ---\n{}",
            out.report(),
            r.sb.logs()
        );
    }
}
