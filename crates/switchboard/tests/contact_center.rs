//! The contact center end to end (issue 7), with real processes only: `switchboard up` with
//! the demo configuration (API keys on, embedded bus), SIPp as the carrier and as the agents'
//! phones, the desktop API's REST and event WebSocket as an agent desktop and a supervisor
//! would use them. Nothing is driven behind the product's back: route point 5000's demo
//! strategy plays the VoiceXML menu, queues the call by skill and routes it to the agent
//! that `routing` reserved; agent-state takes the agent through after-call work.

#[path = "common/carrier.rs"]
mod carrier;
mod common;

use carrier::{carrier_scenario, pause, play_pcap, send_bye, until_agent_media};
use common::{free_port, register, scenario};
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use switchboard_testkit::{http_request_with, require_program, Sipp, SippOutcome, Switchboard};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const SUPERVISOR: &str = "demo-supervisor-key-change-me";
const PLATFORM: &str = "demo-platform-key-change-me";
const AGENT_A1006: &str = "demo-agent-a1006-key";
/// A number of the demo's DID range (`+15550000000..=+15550009999` -> route point 5000) on
/// its carrier trunk (`127.0.0.1`).
const DID: &str = "+15550000042";

/// The demo configuration (which offers MD5 only, what SIPp answers) with `acw_s` seconds of
/// after-call work for support.
fn demo_config(acw_s: u32) -> String {
    let demo = switchboard_config::EXAMPLE_TOML;
    let support = "name = \"support\"\ndescription = \"Support team\"\nafter_call_work_s = 0";
    assert!(demo.contains(support), "the demo's support group moved");
    let cfg = demo.replace(
        support,
        &format!("name = \"support\"\ndescription = \"Support team\"\nafter_call_work_s = {acw_s}"),
    );
    assert!(
        cfg.contains("algorithms = [\"MD5\"]"),
        "the demo must offer MD5"
    );
    cfg
}

fn start(config: &str) -> Switchboard {
    Switchboard::builder()
        .binary(BIN)
        .config(config)
        .api_keys()
        .log("info,switchboard_services=debug")
        .spawn()
        .expect("switchboard starts")
}

/// A REST request with `key`: (status, JSON body).
fn rest(sb: &Switchboard, key: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let r = http_request_with(
        sb.http_addr(),
        method,
        path,
        &[("Authorization", auth.as_str())],
        body,
    )
    .expect("HTTP");
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::String(r.body)),
    )
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

// ---- the event WebSocket ----

/// A desktop's event socket, read on a thread of its own; every event kept in order.
struct Socket {
    events: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
}

impl Socket {
    /// Connects to `GET /v1/tenants/demo/events?{query}` with `key` (as `?api_key=`, as a
    /// browser would) and returns once the upgrade succeeded.
    fn open(sb: &Switchboard, query: &str, key: &str) -> Socket {
        let url = format!(
            "ws://{}/v1/tenants/demo/events?{query}{}api_key={key}",
            sb.http_addr(),
            if query.is_empty() { "" } else { "&" }
        );
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (connected_tx, connected_rx) = std::sync::mpsc::channel();
        let (ev, st) = (events.clone(), stop.clone());
        thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut ws = match tokio_tungstenite::connect_async(url).await {
                    Ok((ws, _)) => {
                        let _ = connected_tx.send(Ok(()));
                        ws
                    }
                    Err(e) => {
                        let _ = connected_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                while !st.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            let v: Value = serde_json::from_str(&t).expect("event JSON");
                            ev.lock().expect("lock").push(v);
                        }
                        Ok(Some(Ok(_))) | Err(_) => {}
                        Ok(None) | Ok(Some(Err(_))) => return,
                    }
                }
            });
        });
        connected_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the socket connects in time")
            .expect("the upgrade succeeds");
        Socket { events, stop }
    }

    fn snapshot(&self) -> Vec<Value> {
        self.events.lock().expect("lock").clone()
    }

    /// Waits until an event matching `pred` arrived; returns it.
    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.snapshot().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the socket; events so far:\n{}",
                summary(&self.snapshot())
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn name(e: &Value) -> &str {
    e["event"].as_str().unwrap_or("")
}

fn is(e: &Value, event: &str, dn: &str) -> bool {
    name(e) == event && e["this_dn"] == dn
}

/// `Event@dn` per line, for failure messages.
fn summary(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("{}@{} {}", name(e), e["this_dn"].as_str().unwrap_or("-"), e))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Walks a stream in order: each `next` finds the first matching event after the last one.
struct Sequence<'a> {
    all: &'a [Value],
    at: usize,
}

impl Sequence<'_> {
    fn next(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.at = position(self.all, self.at, what, pred);
        self.all[self.at].clone()
    }
}

/// The position of the first event after `from` matching `pred`; panics with the stream.
fn position(events: &[Value], from: usize, what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    events
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, e)| pred(e))
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            panic!(
                "no {what} after position {from}; the stream:\n{}",
                summary(events)
            )
        })
}

// ---- SIPp ----

/// Runs SIPp in the background on SIP port `sip` (media port `media`); join for the outcome.
fn background(
    xml: String,
    remote: Option<SocketAddr>,
    sip: u16,
    media: u16,
    calls: u32,
    timeout: Duration,
) -> thread::JoinHandle<SippOutcome> {
    let h = thread::spawn(move || {
        let mut s = Sipp::scenario(&xml)
            .arg("-p")
            .arg(&sip.to_string())
            .arg("-mp")
            .arg(&media.to_string())
            .calls(calls)
            .timeout(timeout);
        if let Some(r) = remote {
            s = s.remote(r);
        }
        s.run().expect("sipp runs")
    });
    // SIPp needs a moment to bind before the first message is sent to it.
    thread::sleep(Duration::from_millis(400));
    h
}

/// A UDP socket standing in for a phone's media port: counts the RTP packets it receives.
struct MediaSink {
    port: u16,
    packets: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl MediaSink {
    fn bind() -> MediaSink {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind media");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let port = socket.local_addr().expect("addr").port();
        let packets = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (packets.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    // RTP version 2, a payload after the 12-byte header.
                    if n > 12 && buf[0] >> 6 == 2 {
                        p.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        MediaSink {
            port,
            packets,
            stop,
        }
    }

    fn packets(&self) -> usize {
        self.packets.load(Ordering::Relaxed)
    }
}

impl Drop for MediaSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---- the tests ----

/// The issue's demo call: a customer calls the demo's number, presses 2 for support in the
/// VoiceXML menu, waits with music, is routed to agent a1006 (DN 1006, support 6), talks,
/// hangs up; the agent wraps up and is Ready again. Both the agent's desktop socket and the
/// supervisor's socket see it happen, in order.
#[test]
fn the_demo_call_from_the_menu_to_the_agent_and_back_to_ready() {
    if !require_program("sipp") || !require_program("espeak-ng") {
        return;
    }
    let sb = start(&demo_config(2));

    // The desktops connect first: the supervisor watches the tenant, the agent itself.
    let supervisor = Socket::open(&sb, "", SUPERVISOR);
    let desktop = Socket::open(&sb, "agent=a1006", AGENT_A1006);
    // An agent key cannot watch the tenant.
    let (status, _) = rest(&sb, AGENT_A1006, "GET", "/v1/tenants/demo/events", None);
    assert_eq!(status, 403, "an agent key watching the whole tenant");

    // Agent 1006's phone registers, and answers with its media on a socket of the test.
    let media = MediaSink::bind();
    let (phone_sip, phone_media) = (free_port(), free_port());
    register(&sb, "1006", phone_sip);
    let phone = background(
        scenario(
            "agent_phone",
            &[
                ("MEDIA_PORT", &media.port.to_string()),
                ("AFTER_ACK", &play_pcap("g711a.pcap")),
            ],
        ),
        None,
        phone_sip,
        phone_media,
        1,
        Duration::from_secs(60),
    );

    // The agent logs in and goes Ready from its desktop, with its own key.
    let (status, login) = rest(
        &sb,
        AGENT_A1006,
        "POST",
        "/v1/tenants/demo/agents/a1006/login",
        Some(r#"{"dn":"1006"}"#),
    );
    assert_eq!((status, name(&login)), (200, "EventAgentLogin"), "{login}");
    let (status, ready) = rest(
        &sb,
        AGENT_A1006,
        "POST",
        "/v1/tenants/demo/agents/a1006/ready",
        None,
    );
    assert_eq!((status, name(&ready)), (200, "EventAgentReady"), "{ready}");
    // Its key is its own: not another agent's.
    let (status, _) = rest(
        &sb,
        AGENT_A1006,
        "POST",
        "/v1/tenants/demo/agents/a1007/ready",
        None,
    );
    assert_eq!(status, 403, "agent a1006's key acting for a1007");

    // The customer calls the demo's number from the carrier: answered by the menu, presses
    // 2, takes the music's media (a re-INVITE), then the agent's (a re-INVITE with the
    // agent's media port), sends the agent audio for a few seconds and hangs up.
    let during = pause(2500)
        + &play_pcap("dtmf_2833_2.pcap")
        + &until_agent_media(media.port, 30000)
        + &play_pcap("g711a.pcap")
        + &pause(3000)
        + &send_bye(DID);
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    // The caller's media (the menu's prompts, the music, the agent's voice) goes to a socket
    // of the test too.
    let heard = MediaSink::bind();
    let carrier_xml = carrier_scenario(DID, &during)
        .replace("m=audio [media_port] ", &format!("m=audio {} ", heard.port));
    assert!(!carrier_xml.contains("[media_port]"));
    let carrier = background(
        carrier_xml,
        Some(node),
        free_port(),
        free_port(),
        1,
        Duration::from_secs(60),
    );

    // The agent answers: from then on the caller hears the agent (the media server's leg was
    // hung up before the agent's phone rang).
    let established = supervisor.wait("EventEstablished at 1006", Duration::from_secs(40), |e| {
        is(e, "EventEstablished", "1006")
    });
    let before_agent = heard.packets();
    assert!(
        before_agent > 0,
        "the caller heard the menu's prompt before the agent"
    );

    // While talking, the agent's desktop notes the case on the call (its own DN only).
    let conn_hex = established["conn_id"]
        .as_str()
        .expect("conn_id")
        .to_string();
    let user_data = format!("/v1/tenants/demo/calls/{conn_hex}/user-data");
    let (status, v) = rest(
        &sb,
        AGENT_A1006,
        "POST",
        &user_data,
        Some(r#"{"dn":"1006","data":{"case":"42"}}"#),
    );
    assert_eq!(status, 202, "{v}");
    let (status, v) = rest(
        &sb,
        AGENT_A1006,
        "POST",
        &user_data,
        Some(r#"{"dn":"5000","data":{"case":"43"}}"#),
    );
    assert_eq!(status, 403, "an agent acting for another DN: {v}");
    let noted = desktop.wait("the agent's note", Duration::from_secs(5), |e| {
        is(e, "EventAttachedDataChanged", "1006")
    });
    assert_eq!(
        noted["user_data"],
        json!({"service": "support", "case": "42"}),
        "{noted}"
    );

    // The call ends, the agent wraps up for 2 s and is Ready again.
    let released = supervisor.wait("EventReleased at 1006", Duration::from_secs(45), |e| {
        is(e, "EventReleased", "1006")
    });
    let conn = released["conn_id"].clone();
    wait_until(
        "after-call work, then Ready, on the agent's desktop",
        Duration::from_secs(10),
        || {
            let mine = desktop.snapshot();
            mine.iter()
                .position(|e| name(e) == "EventAgentAfterCallWork")
                .is_some_and(|acw| mine[acw..].iter().any(|e| name(e) == "EventAgentReady"))
        },
    );
    for (who, h) in [("carrier", carrier), ("agent 1006's phone", phone)] {
        let out = h.join().expect("sipp thread");
        assert!(
            out.success(),
            "{who}:\n{}\n--- switchboard ---\n{}",
            out.report(),
            sb.logs()
        );
    }
    assert!(
        media.packets() >= 50,
        "the caller's audio reached the agent's phone: {} RTP packets",
        media.packets()
    );
    assert!(
        heard.packets() - before_agent >= 50,
        "the agent's audio reached the caller: {} RTP packets",
        heard.packets() - before_agent
    );

    eprintln!(
        "RTP: caller to agent {} packets; the caller heard {before_agent} before the agent, {} from the agent",
        media.packets(),
        heard.packets() - before_agent
    );

    // What the supervisor saw, in order (other events may come in between).
    let all = supervisor.snapshot();
    let ours = |e: &Value| e["conn_id"] == conn;
    let mut seq = Sequence { all: &all, at: 0 };
    seq.next("EventAgentLogin a1006", |e| {
        name(e) == "EventAgentLogin" && e["agent_id"] == "a1006"
    });
    seq.next("EventAgentReady a1006", |e| {
        name(e) == "EventAgentReady" && e["agent_id"] == "a1006"
    });
    let rr = seq.next("EventRouteRequest at 5000", |e| {
        is(e, "EventRouteRequest", "5000") && ours(e)
    });
    assert_eq!(rr["ani"], "+15551234567", "{rr}");
    assert_eq!(rr["dnis"], DID, "{rr}");
    seq.next("EventTreatmentApplied (menu)", |e| {
        is(e, "EventTreatmentApplied", "5000") && ours(e)
    });
    let menu = seq.next("EventTreatmentEnd (menu)", |e| {
        is(e, "EventTreatmentEnd", "5000") && ours(e)
    });
    assert_eq!(menu["reason"], "completed", "{menu}");
    assert_eq!(
        menu["treatment_results"],
        json!({"choice": "support"}),
        "the menu's exit namelist after DTMF 2: {menu}"
    );
    // The strategy attaches the service, starts the music and submits the call to the
    // queue in one step: the SIP Server's and routing's answers may come in either order.
    let data = all[position(&all, seq.at, "EventAttachedDataChanged", |e| {
        name(e) == "EventAttachedDataChanged" && ours(e)
    })]
    .clone();
    assert_eq!(data["user_data"]["service"], "support", "{data}");
    let reserved = seq.next("EventAgentReserved a1006", |e| {
        name(e) == "EventAgentReserved" && e["agent_id"] == "a1006"
    });
    assert_eq!(reserved["this_dn"], "1006", "{reserved}");
    seq.next("EventDiverted at 5000 to 1006", |e| {
        is(e, "EventDiverted", "5000") && ours(e) && e["third_party_dn"] == "1006"
    });
    let ringing = seq.next("EventRinging at 1006", |e| {
        is(e, "EventRinging", "1006") && ours(e)
    });
    assert_eq!(ringing["agent_id"], "a1006", "{ringing}");
    assert_eq!(ringing["user_data"]["service"], "support", "{ringing}");
    seq.next("EventEstablished at 1006", |e| {
        is(e, "EventEstablished", "1006") && ours(e)
    });
    let released = seq.next("EventReleased at 1006", |e| {
        is(e, "EventReleased", "1006") && ours(e)
    });
    assert!(ringing["call_id"].is_string(), "{ringing}");
    assert_eq!(
        released["call_id"], ringing["call_id"],
        "every event of the agent's DN names its leg's Call-ID: {released}"
    );
    seq.next("EventAgentAfterCallWork a1006", |e| {
        name(e) == "EventAgentAfterCallWork" && e["agent_id"] == "a1006"
    });
    seq.next("EventAgentReady a1006 after the call", |e| {
        name(e) == "EventAgentReady" && e["agent_id"] == "a1006"
    });
    // One call, one agent: no second reservation, no error.
    assert_eq!(
        all.iter()
            .filter(|e| name(e) == "EventAgentReserved")
            .count(),
        1,
        "{}",
        summary(&all)
    );
    assert!(
        !all.iter().any(|e| name(e) == "EventError"),
        "{}",
        summary(&all)
    );

    // The agent's desktop sees its own story and nothing of the route point.
    let mine = desktop.snapshot();
    let names: Vec<&str> = mine
        .iter()
        .map(name)
        .filter(|n| *n != "EventDNBackInService" && *n != "EventAttachedDataChanged")
        .collect();
    assert_eq!(
        names,
        vec![
            "EventAgentLogin",
            "EventAgentReady",
            "EventAgentReserved",
            "EventRinging",
            "EventEstablished",
            "EventReleased",
            "EventAgentAfterCallWork",
            "EventAgentReady",
        ],
        "the agent's desktop:\n{}",
        summary(&mine)
    );
    assert!(
        mine.iter()
            .all(|e| e["this_dn"] == "1006" || e["agent_id"] == "a1006"),
        "only the agent's events: {}",
        summary(&mine)
    );

    // The state a supervisor reads back agrees.
    wait_until("a1006 ready", Duration::from_secs(5), || {
        let (_, s) = rest(
            &sb,
            SUPERVISOR,
            "GET",
            "/v1/tenants/demo/agent-states/a1006",
            None,
        );
        s["state"] == "ready"
    });
    let (status, _) = rest(&sb, PLATFORM, "GET", "/v1/mcp/calls", None);
    assert_eq!(status, 200);
}

// ---- fifty callers, ten agents ----

/// A SIPp phone answering every call until the test ends (killed on drop).
struct Phone {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Phone {
    fn spawn(xml: &str, sip: u16, media: u16) -> Phone {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("phone.xml");
        std::fs::write(&path, xml).expect("write scenario");
        let child = std::process::Command::new("sipp")
            .arg("-sf")
            .arg(&path)
            .args(["-i", "127.0.0.1", "-p", &sip.to_string()])
            .args(["-mp", &media.to_string(), "-nostdin", "-trace_err"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sipp starts");
        Phone { child, _dir: dir }
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls to `+1555000000{digit}` by the last digit of the number: 1 sales, 2 support, 3
/// Spanish (first `spanish >= 9`, which no demo agent has, for 2 s; then it overflows to
/// any Spanish speaker). An agent who does not answer puts the call back (three tries).
const BY_NUMBER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<scxml xmlns="http://www.w3.org/2005/07/scxml" xmlns:sb="http://switchboard.dev/scxml/1.0"
       version="1.0" datamodel="ecmascript" initial="call" name="by-number">
  <datamodel>
    <data id="service" expr="'support'"/>
    <data id="skills" expr="'support >= 5'"/>
    <data id="timeout" expr="60"/>
    <data id="target" expr="''"/>
    <data id="routes" expr="0"/>
  </datamodel>
  <state id="call" initial="pick">
    <transition event="call.abandoned call.released" target="done"/>
    <state id="pick">
      <onentry>
        <if cond="_genesys.dnis.slice(-1) == '1'">
          <assign location="service" expr="'sales'"/>
          <assign location="skills" expr="'sales >= 5'"/>
        <elseif cond="_genesys.dnis.slice(-1) == '3'"/>
          <assign location="service" expr="'spanish'"/>
          <assign location="skills" expr="'spanish >= 9'"/>
          <assign location="timeout" expr="2"/>
        </if>
        <sb:attach data="({ service: service })"/>
      </onentry>
      <transition target="queued"/>
    </state>
    <state id="queued">
      <onentry>
        <sb:queue queueexpr="service" skillsexpr="skills" timeoutexpr="timeout"/>
      </onentry>
      <transition event="queue.target" target="routing">
        <assign location="target" expr="_event.data.dn"/>
      </transition>
      <transition event="queue.timeout" cond="service == 'spanish' &amp;&amp; skills != 'spanish'" target="queued">
        <assign location="skills" expr="'spanish'"/>
        <assign location="timeout" expr="60"/>
      </transition>
      <transition event="queue.timeout queue.error" target="failed"/>
    </state>
    <state id="routing">
      <onentry>
        <assign location="routes" expr="routes + 1"/>
        <sb:route toexpr="target"/>
      </onentry>
      <transition event="route.done" target="done"/>
      <transition event="route.error" cond="routes &lt; 3" target="queued"/>
      <transition event="route.error" target="failed"/>
    </state>
    <state id="failed">
      <onentry><sb:release/></onentry>
      <transition event="release.done release.error" target="done"/>
    </state>
  </state>
  <final id="done"/>
</scxml>
"#;

/// The demo agents' skills: which DNs may take a call of each service.
fn may_take(service: &str, dn: &str) -> bool {
    match service {
        "sales" => ["1001", "1002", "1003", "1004", "1005"].contains(&dn),
        "support" => ["1006", "1007", "1008", "1009", "1010"].contains(&dn),
        "spanish" => ["1002", "1005", "1008"].contains(&dn),
        _ => false,
    }
}

/// 50 carrier callers (20 sales, 20 support, 10 Spanish who overflow) on the demo's ten
/// agents (mixed skills, SIPp phones registered): every call is answered by an agent with the
/// right skill, no agent ever has two calls or is offered one while wrapping up (support
/// has 1 s of after-call work), no call is lost, and every agent is Ready at the end.
#[test]
fn fifty_callers_ten_agents_by_skill() {
    if !require_program("sipp") {
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("by-number.scxml"), BY_NUMBER).expect("write strategy");
    // Support agents wrap up for 1 s after each call, sales agents are Ready at once.
    let cfg = demo_config(1)
        .replace(
            "data_dir = \"./data\"",
            &format!("data_dir = {:?}", data.path().display().to_string()),
        )
        .replace(
            "strategy_url = \"builtin:demo-strategy\"",
            // Calls wait in the queues without a treatment: the route point's wait must be
            // longer than the queues'.
            "strategy_url = \"file://by-number.scxml\"\ntimeout_s = 120",
        );
    assert!(
        cfg.contains("file://by-number.scxml"),
        "the demo's route point moved"
    );
    let sb = start(&cfg);
    let supervisor = Socket::open(&sb, "", SUPERVISOR);

    let sink = MediaSink::bind();
    let phone_xml = scenario(
        "agent_phone",
        &[("MEDIA_PORT", &sink.port.to_string()), ("AFTER_ACK", "")],
    );
    let mut phones = Vec::new();
    for n in 1001..=1010 {
        let (sip, media) = (free_port(), free_port());
        register(&sb, &n.to_string(), sip);
        phones.push(Phone::spawn(&phone_xml, sip, media));
        let agent = format!("/v1/tenants/demo/agents/a{n}");
        let (status, v) = rest(&sb, SUPERVISOR, "POST", &format!("{agent}/login"), None);
        assert_eq!(status, 200, "login a{n}: {v}");
        let (status, v) = rest(&sb, SUPERVISOR, "POST", &format!("{agent}/ready"), None);
        assert_eq!(status, 200, "ready a{n}: {v}");
    }
    thread::sleep(Duration::from_millis(300));

    // 50 callers at 10 per second, each talking 1 s once answered.
    let inf = data.path().join("callers.csv");
    let mut lines = String::from("SEQUENTIAL\n");
    for i in 0..50 {
        let digit = match i % 5 {
            0 | 1 => 1,
            2 | 3 => 2,
            _ => 3,
        };
        lines.push_str(&format!("+1555000000{digit};\n"));
    }
    std::fs::write(&inf, lines).expect("write injection file");
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    let started = Instant::now();
    let out = Sipp::scenario(&scenario("carrier_talk", &[("TALK_MS", "1000")]))
        .remote(node)
        .calls(50)
        .arg("-inf")
        .arg(&inf.display().to_string())
        .arg("-r")
        .arg("10")
        .arg("-l")
        .arg("50")
        .arg("-p")
        .arg(&free_port().to_string())
        .timeout(Duration::from_secs(60))
        .run()
        .expect("sipp runs");
    let all = supervisor.snapshot();
    assert!(
        out.success(),
        "callers:\n{}\n--- events ---\n{}\n--- switchboard ---\n{}",
        out.report(),
        summary(&all),
        sb.logs()
    );
    let took = started.elapsed();

    // Every agent is Ready again (after-call work is 0 in the demo).
    wait_until("every agent ready", Duration::from_secs(10), || {
        let (_, s) = rest(
            &sb,
            SUPERVISOR,
            "GET",
            "/v1/tenants/demo/agent-states",
            None,
        );
        s["agents"]
            .as_array()
            .is_some_and(|a| a.len() == 10 && a.iter().all(|x| x["state"] == "ready"))
    });
    let all = supervisor.snapshot();

    // Each call: its route request (the service by number), answered once by an agent
    // who may take it; no agent with two calls at once.
    let mut service = std::collections::HashMap::new();
    let mut arrived = std::collections::HashMap::new();
    let mut wrapping_up = std::collections::HashSet::new();
    let mut acw = 0;
    let mut answered_by = std::collections::HashMap::new();
    let mut on_dn: std::collections::HashMap<String, String> = Default::default();
    let mut calls_per_dn: std::collections::BTreeMap<String, usize> = Default::default();
    for e in &all {
        let conn = e["conn_id"].as_str().unwrap_or("").to_string();
        let dn = e["this_dn"].as_str().unwrap_or("").to_string();
        match name(e) {
            "EventRouteRequest" => {
                let s = match e["dnis"].as_str().and_then(|d| d.chars().last()) {
                    Some('1') => "sales",
                    Some('2') => "support",
                    _ => "spanish",
                };
                arrived.insert(conn.clone(), e["ts_ms"].as_u64().unwrap_or(0));
                service.insert(conn, s);
            }
            "EventAgentReserved" => {
                // Routing reserves only agents with no call on their DN, not wrapping up.
                if let Some(other) = on_dn.get(&dn) {
                    panic!(
                        "{} reserved for {conn} while on {other}:\n{}",
                        e["agent_id"],
                        summary(&all)
                    );
                }
                assert!(
                    !wrapping_up.contains(&dn),
                    "{} reserved for {conn} in after-call work:\n{}",
                    e["agent_id"],
                    summary(&all)
                );
            }
            "EventAgentAfterCallWork" => {
                assert!(dn.as_str() >= "1006", "sales has no after-call work: {e}");
                wrapping_up.insert(dn);
                acw += 1;
            }
            "EventAgentReady" => {
                wrapping_up.remove(&dn);
            }
            "EventRinging" if dn.starts_with("10") => {
                if let Some(other) = on_dn.insert(dn.clone(), conn.clone()) {
                    panic!(
                        "DN {dn} rings for {conn} while on {other}:\n{}",
                        summary(&all)
                    );
                }
            }
            "EventEstablished" if dn.starts_with("10") => {
                assert_eq!(on_dn.get(&dn), Some(&conn), "{}", summary(&all));
                let s = service.get(&conn).copied().unwrap_or("?");
                assert!(may_take(s, &dn), "a {s} call {conn} at {dn}");
                assert!(
                    answered_by.insert(conn.clone(), dn.clone()).is_none(),
                    "{conn} answered twice"
                );
                if s == "spanish" {
                    // Nobody has spanish >= 9: the call overflowed after its 2 s.
                    let waited = e["ts_ms"]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(arrived[&conn]);
                    assert!(waited >= 2000, "{conn} answered after {waited} ms");
                }
                *calls_per_dn.entry(dn).or_default() += 1;
            }
            "EventReleased" | "EventDiverted"
                if dn.starts_with("10") && on_dn.get(&dn) == Some(&conn) =>
            {
                on_dn.remove(&dn);
            }
            _ => {}
        }
    }
    assert_eq!(service.len(), 50, "50 route requests:\n{}", summary(&all));
    assert_eq!(
        answered_by.len(),
        50,
        "every call answered by an agent:\n{}",
        summary(&all)
    );
    assert!(on_dn.is_empty(), "calls left on DNs: {on_dn:?}");
    let errors: Vec<&Value> = all.iter().filter(|e| name(e) == "EventError").collect();
    assert!(errors.is_empty(), "errors: {errors:?}");
    // The Spanish calls overflowed to the Spanish speakers, all of whom are in sales but
    // 1008.
    let spanish: Vec<&String> = service
        .iter()
        .filter(|(_, s)| **s == "spanish")
        .map(|(c, _)| &answered_by[c])
        .collect();
    assert_eq!(spanish.len(), 10);
    let support = calls_per_dn
        .iter()
        .filter(|(dn, _)| dn.as_str() >= "1006")
        .map(|(_, n)| n)
        .sum::<usize>();
    assert_eq!(
        acw, support,
        "after-call work after every support agent's call"
    );
    eprintln!("50 calls in {took:?}; calls per agent DN: {calls_per_dn:?}");
    drop(phones);
}

/// The demo strategy's second chance: the first agent's phone is busy (486), so the call goes
/// back to the support queue and the next agent takes it; the busy agent is Ready again.
#[test]
fn a_busy_agent_phone_puts_the_call_back_in_the_queue_for_the_next_agent() {
    if !require_program("sipp") || !require_program("espeak-ng") {
        return;
    }
    let sb = start(&demo_config(0));
    let supervisor = Socket::open(&sb, "", SUPERVISOR);

    // a1006 (longest idle) has a phone that answers 486; a1007's phone answers.
    let (busy_sip, busy_media) = (free_port(), free_port());
    register(&sb, "1006", busy_sip);
    let busy = background(
        scenario("callee_busy", &[]),
        None,
        busy_sip,
        busy_media,
        1,
        Duration::from_secs(60),
    );
    let media = MediaSink::bind();
    let (sip, phone_media) = (free_port(), free_port());
    register(&sb, "1007", sip);
    let phone = background(
        scenario(
            "agent_phone",
            &[("MEDIA_PORT", &media.port.to_string()), ("AFTER_ACK", "")],
        ),
        None,
        sip,
        phone_media,
        1,
        Duration::from_secs(60),
    );
    for agent in ["a1006", "a1007"] {
        for action in ["login", "ready"] {
            let (status, v) = rest(
                &sb,
                SUPERVISOR,
                "POST",
                &format!("/v1/tenants/demo/agents/{agent}/{action}"),
                None,
            );
            assert_eq!(status, 200, "{action} {agent}: {v}");
        }
        thread::sleep(Duration::from_millis(100));
    }

    let during = pause(2500)
        + &play_pcap("dtmf_2833_2.pcap")
        + &until_agent_media(media.port, 30000)
        + &play_pcap("g711a.pcap")
        + &pause(1500)
        + &send_bye(DID);
    let node = sb.addr("sip_node_udp").expect("sip_node_udp");
    let carrier = background(
        carrier_scenario(DID, &during),
        Some(node),
        free_port(),
        free_port(),
        1,
        Duration::from_secs(60),
    );
    for (who, h) in [
        ("carrier", carrier),
        ("agent 1006's busy phone", busy),
        ("agent 1007's phone", phone),
    ] {
        let out = h.join().expect("sipp thread");
        assert!(
            out.success(),
            "{who}:\n{}\n--- events ---\n{}\n--- switchboard ---\n{}",
            out.report(),
            summary(&supervisor.snapshot()),
            sb.logs()
        );
    }
    supervisor.wait("EventReleased at 1007", Duration::from_secs(10), |e| {
        is(e, "EventReleased", "1007")
    });
    assert!(media.packets() >= 20, "{} RTP packets", media.packets());

    let all = supervisor.snapshot();
    let mut seq = Sequence { all: &all, at: 0 };
    let rr = seq.next("EventRouteRequest", |e| is(e, "EventRouteRequest", "5000"));
    let conn = rr["conn_id"].clone();
    let ours = |e: &Value| e["conn_id"] == conn;
    seq.next("EventAgentReserved a1006", |e| {
        name(e) == "EventAgentReserved" && e["agent_id"] == "a1006"
    });
    seq.next("EventRinging at 1006", |e| {
        is(e, "EventRinging", "1006") && ours(e)
    });
    let refused = seq.next("EventReleased at 1006", |e| {
        is(e, "EventReleased", "1006") && ours(e)
    });
    assert_eq!(refused["reason"], "sip 486", "{refused}");
    // The call is back at the route point (not hung up), for the strategy to queue again.
    seq.next("EventRouteRequest at 5000 again", |e| {
        is(e, "EventRouteRequest", "5000") && ours(e) && e["third_party_dn"] == "1006"
    });
    seq.next("EventAgentReserved a1007", |e| {
        name(e) == "EventAgentReserved" && e["agent_id"] == "a1007"
    });
    seq.next("EventRinging at 1007", |e| {
        is(e, "EventRinging", "1007") && ours(e)
    });
    seq.next("EventEstablished at 1007", |e| {
        is(e, "EventEstablished", "1007") && ours(e)
    });
    seq.next("EventReleased at 1007", |e| {
        is(e, "EventReleased", "1007") && ours(e)
    });
    assert!(
        !all.iter().any(|e| name(e) == "EventError"),
        "{}",
        summary(&all)
    );
    for agent in ["a1006", "a1007"] {
        wait_until(&format!("{agent} ready"), Duration::from_secs(5), || {
            let (_, s) = rest(
                &sb,
                SUPERVISOR,
                "GET",
                &format!("/v1/tenants/demo/agent-states/{agent}"),
                None,
            );
            s["state"] == "ready"
        });
    }
}
