//! A three-party conference end to end: the binary with `sip-proxy,registrar,sip-node,
//! call-state,mcp` on loopback and random ports, three SIPp user agents (the carrier, agent
//! 1002's phone, phone 1001) whose audio goes to sockets of the test. The agent's call with the
//! carrier becomes a conference over REST (InitiateConference to 1001, CompleteConference);
//! every party is re-INVITEd to its own leg of the media server's mixer, each socket then hears
//! the two others' tones and not its own; 1001 is deleted from the conference, the agent hangs
//! up, and the TLib events on the bus are checked.

mod common;

use common::{background, free_port, party_state, register, scenario, sipp};
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use switchboard_bus::{EmbeddedBus, SharedBus};
use switchboard_events::{CallAttrs, Event};
use switchboard_rtp::codec::g711;
use switchboard_rtp::{RtpHeader, RtpPacket};
use switchboard_testkit::{http_request, require_program, SippOutcome, Switchboard};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const CARRIER: &str = "+15551234567";

fn config(data_dir: &Path) -> String {
    format!(
        r#"data_dir = {:?}

[registrar]
algorithms = ["MD5"]

[mcp]
fallback_prompt = "tone:440/300"

[[tenants]]
name = "demo"
domain = "switchboard"
[[tenants.users]]
user = "1001"
password = "secret"
[[tenants.users]]
user = "1002"
password = "secret"
"#,
        data_dir.display().to_string()
    )
}

/// A request the node must accept (202): its request id.
fn accepted(sb: &Switchboard, method: &str, path: &str, body: &str) -> u64 {
    let r = http_request(sb.http_addr(), method, path, Some(body)).expect("HTTP request");
    assert_eq!(r.status, 202, "{method} {path} {body}: {}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("JSON");
    v["request_id"].as_u64().expect("request_id")
}

/// Polls call-state until `pred` holds for some call.
fn wait_call(sb: &Switchboard, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = sb
            .get("/v1/tenants/demo/calls?state=all")
            .expect("GET calls");
        let v: Value = serde_json::from_str(&r.body).expect("JSON");
        let list = v["calls"].as_array().cloned().unwrap_or_default();
        if let Some(c) = list.iter().find(|c| pred(c)) {
            return c.clone();
        }
        assert!(Instant::now() < deadline, "no such call in {list:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the process cleanly and reads the call events of `events:demo` from the bus file.
fn bus_events(sb: &mut Switchboard, dir: &Path) -> Vec<Event> {
    sb.terminate().expect("SIGTERM");
    let status = sb.wait_exit(Duration::from_secs(15)).expect("wait");
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let bus: SharedBus = Arc::new(EmbeddedBus::open(&dir.join("bus.db")).expect("bus file"));
        bus.read_range("events:demo", None, 1000)
            .await
            .expect("read")
            .into_iter()
            .map(|e| Event::from_json(&String::from_utf8_lossy(&e.payload)).expect("an event"))
            .filter(|e| e.call().is_some())
            .collect()
    })
}

/// (event, ThisDN) of the events of call `conn`.
fn seq_of(events: &[Event], conn: &str) -> Vec<(&'static str, String)> {
    of_call(events, conn)
        .iter()
        .map(|e| (e.name(), e.this_dn().unwrap_or("").to_string()))
        .collect()
}

fn of_call<'a>(events: &'a [Event], conn: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| {
            e.call()
                .and_then(|c| c.conn_id)
                .is_some_and(|c| c.to_string() == conn)
        })
        .collect()
}

/// What one party's socket heard: where the mixer's RTP came from and the audio.
#[derive(Default)]
struct Heard {
    from: Option<SocketAddr>,
    packets: usize,
    pcm: Vec<i16>,
}

fn sine(freq: f64, n: usize, offset: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = (offset + i) as f64 / 8000.0;
            (6000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
        })
        .collect()
}

/// The power of frequency `f` in `s` (Goertzel), normalised by the length.
fn goertzel(s: &[i16], f: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * f / 8000.0).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in s {
        let s0 = x as f64 + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - k * s1 * s2).sqrt() / s.len().max(1) as f64
}

/// For `ms`: every socket sends its own tone (G.711 µ-law, 20 ms frames) to wherever the
/// mixer's RTP to it comes from, and keeps what it hears once it has heard 500 ms.
fn talk_and_listen(socks: &[&UdpSocket], freqs: &[f64], ms: u64) -> Vec<Heard> {
    let mut heard: Vec<Heard> = socks.iter().map(|_| Heard::default()).collect();
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let mut frame = 0usize;
    while start.elapsed() < Duration::from_millis(ms) {
        for (i, s) in socks.iter().enumerate() {
            let h = &mut heard[i];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let Ok(p) = RtpPacket::parse(&buf[..n]) else {
                    continue;
                };
                h.from.get_or_insert(from);
                h.packets += 1;
                if h.packets > 25 {
                    h.pcm
                        .extend(p.payload().iter().map(|&c| g711::ulaw_decode_sample(c)));
                }
            }
            let Some(to) = h.from else { continue };
            let mut enc = [0u8; 160];
            g711::encode_ulaw(&sine(freqs[i], 160, frame * 160), &mut enc);
            let header = RtpHeader {
                marker: false,
                payload_type: 0,
                sequence: frame as u16,
                timestamp: (frame * 160) as u32,
                ssrc: 7 + i as u32,
            };
            let mut out = [0u8; 200];
            let len = header.write_with_payload(&enc, &mut out).expect("rtp");
            let _ = s.send_to(&out[..len], to);
        }
        frame += 1;
        let next = start + Duration::from_millis(20 * frame as u64);
        if let Some(w) = next.checked_duration_since(Instant::now()) {
            thread::sleep(w);
        }
    }
    heard
}

fn attrs(e: &Event) -> CallAttrs {
    e.call().cloned().expect("call event")
}

/// The binary with `sip-proxy,registrar,sip-node,call-state,mcp`, phones 1001 and 1002
/// registered (their SIPp ports), and the audio sockets of the carrier (0), agent 1002 (1)
/// and phone 1001 (2).
struct Rig {
    sb: Switchboard,
    dir: tempfile::TempDir,
    socks: Vec<UdpSocket>,
    p1: u16,
    p2: u16,
}

impl Rig {
    /// `None` (the test is skipped, loudly) without SIPp.
    fn start() -> Option<Rig> {
        if !require_program("sipp") {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let sb = Switchboard::builder()
            .binary(BIN)
            .config(&config(dir.path()))
            .roles(&["sip-proxy", "registrar", "sip-node", "call-state", "mcp"])
            .log("info,switchboard_services=debug")
            .spawn()
            .expect("switchboard starts");
        let (p1, p2) = (free_port(), free_port());
        register(&sb, "1001", p1);
        register(&sb, "1002", p2);
        let socks: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        for s in &socks {
            s.set_nonblocking(true).expect("nonblocking");
        }
        Some(Rig {
            sb,
            dir,
            socks,
            p1,
            p2,
        })
    }

    fn port(&self, i: usize) -> String {
        self.socks[i].local_addr().expect("addr").port().to_string()
    }

    /// Where UA `i` writes the audio port of the sendrecv re-INVITEs it gets.
    fn port_file(&self, i: usize) -> String {
        let path = self.dir.path().join(format!("reinvites-{i}"));
        path.display().to_string()
    }

    fn vars(&self, i: usize) -> [(&'static str, String); 2] {
        [("RTP_PORT", self.port(i)), ("PORT_FILE", self.port_file(i))]
    }

    fn xml(&self, name: &str, i: usize, more: &[(&str, &str)]) -> String {
        let vars = self.vars(i);
        let mut all: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(more);
        scenario(name, &all)
    }

    /// Agent 1002's phone for `calls` calls (2 with a consult call).
    fn agent(&self, calls: u32) -> thread::JoinHandle<SippOutcome> {
        let (xml, port) = (self.xml("conf_agent", 1, &[]), self.p2);
        let h = thread::spawn(move || {
            sipp(&xml, None, port)
                .calls(calls)
                .run()
                .expect("sipp runs")
        });
        thread::sleep(Duration::from_millis(400));
        h
    }

    fn party(&self) -> thread::JoinHandle<SippOutcome> {
        background(self.xml("conf_party", 2, &[]), None, self.p1)
    }

    /// The carrier calls 1002 with scenario `name`.
    fn carrier(&self, name: &str) -> thread::JoinHandle<SippOutcome> {
        let more = [("CALLEE", "1002"), ("WAIT_MS", "15000")];
        let node = self.sb.addr("sip_node_udp").expect("sip_node_udp");
        background(self.xml(name, 0, &more), Some(node), free_port())
    }

    fn socks(&self, which: &[usize]) -> Vec<&UdpSocket> {
        which.iter().map(|&i| &self.socks[i]).collect()
    }

    /// The parties `which` heard (`heard[k]` is party `which[k]`, sending `freqs[k]`): each
    /// from its own mixer leg, whose media its UA was re-INVITEd with (the mixer sends from
    /// the port it answered with); each hears the others and not itself.
    fn check_mixer(&self, heard: &[Heard], which: &[usize], freqs: &[f64]) {
        let sources: Vec<SocketAddr> = heard
            .iter()
            .map(|h| h.from.expect("RTP from the mixer"))
            .collect();
        for (k, from) in sources.iter().enumerate() {
            assert!(
                !sources[..k].contains(from),
                "one mixer leg each: {sources:?}"
            );
            let i = which[k];
            let written = std::fs::read_to_string(self.port_file(i)).unwrap_or_default();
            let ports: Vec<u16> = written
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            assert!(
                ports.contains(&from.port()),
                "party {i}: re-INVITEs {ports:?}, mixer {from}"
            );
        }
        for (k, h) in heard.iter().enumerate() {
            let i = which[k];
            assert!(h.packets >= 75, "party {i} got {} packets", h.packets);
            let level = |f: f64| goertzel(&h.pcm, f);
            let own = level(freqs[k]);
            for (j, &f) in freqs.iter().enumerate().filter(|(j, _)| *j != k) {
                assert!(
                    level(f) > 10.0 * own.max(1.0),
                    "party {i} hears party {} ({:.1}) over itself ({own:.1})",
                    which[j],
                    level(f)
                );
            }
        }
    }

    fn events(&mut self) -> Vec<Event> {
        bus_events(&mut self.sb, self.dir.path())
    }
}

/// Polls call-state until call `conn` has DN `dn` in `state`.
fn wait_party(sb: &Switchboard, conn: &str, dn: &str, state: &str) {
    wait_call(sb, |c| {
        c["conn_id"] == conn && party_state(c, dn).as_deref() == Some(state)
    });
}

/// The carrier's call once agent 1002 answered it: its ConnID and REST path.
fn agent_call(sb: &Switchboard) -> (String, String) {
    let call = wait_call(sb, |c| {
        party_state(c, "1002").as_deref() == Some("established")
    });
    let conn = call["conn_id"].as_str().expect("conn_id").to_string();
    let base = format!("/v1/tenants/demo/calls/{conn}");
    (conn, base)
}

#[test]
fn three_party_conference_on_the_mixer_then_delete_and_hang_up() {
    let Some(mut rig) = Rig::start() else { return };
    let agent = rig.agent(2);
    let party = rig.party();
    let carrier = rig.carrier("conf_carrier");
    let sb = &rig.sb;
    let (conn, base) = agent_call(sb);
    let init = accepted(
        sb,
        "POST",
        &format!("{base}/conference"),
        r#"{"dn":"1002","to":"1001"}"#,
    );
    let consult = wait_call(sb, |c| {
        c["call_type"] == "consult" && party_state(c, "1001").as_deref() == Some("established")
    });
    let conn2 = consult["conn_id"].as_str().expect("conn_id").to_string();
    wait_party(sb, &conn, "1002", "held");
    let complete = accepted(
        sb,
        "POST",
        &format!("{base}/conference/complete"),
        r#"{"dn":"1002"}"#,
    );
    let freqs = [500.0, 1000.0, 1500.0];
    let heard = talk_and_listen(&rig.socks(&[0, 1, 2]), &freqs, 3000);

    let delete = accepted(
        sb,
        "DELETE",
        &format!("{base}/conference/parties/1001"),
        r#"{"dn":"1002"}"#,
    );
    wait_party(sb, &conn, "1001", "released");
    let release = accepted(sb, "POST", &format!("{base}/release"), r#"{"dn":"1002"}"#);
    for (who, h) in [("carrier", carrier), ("1002", agent), ("1001", party)] {
        let out = h.join().expect("sipp thread");
        assert!(out.success(), "{who}:\n{}", out.report());
    }

    rig.check_mixer(&heard, &[0, 1, 2], &freqs);

    let events = rig.events();
    assert_eq!(
        seq_of(&events, &conn),
        vec![
            ("EventRinging", "1002".into()),
            ("EventEstablished", "1002".into()),
            ("EventHeld", "1002".into()),
            ("EventRetrieved", "1002".into()),
            ("EventPartyChanged", "1001".into()),
            ("EventPartyAdded", "1002".into()),
            ("EventPartyAdded", "1001".into()),
            ("EventReleased", "1001".into()),
            ("EventPartyDeleted", "1002".into()),
            ("EventReleased", "1002".into()),
        ]
    );
    assert_eq!(
        seq_of(&events, &conn2),
        vec![
            ("EventDialing", "1002".into()),
            ("EventRinging", "1001".into()),
            ("EventEstablished", "1001".into()),
            ("EventEstablished", "1002".into()),
            ("EventReleased", "1002".into()),
        ]
    );
    let first = of_call(&events, &conn);
    assert_eq!(attrs(first[2]).request_id, Some(init));
    assert_eq!(attrs(first[3]).request_id, Some(complete));
    assert_eq!(
        attrs(first[4]).previous_conn_id.map(|c| c.to_string()),
        Some(conn2.clone())
    );
    for added in [attrs(first[5]), attrs(first[6])] {
        assert_eq!(added.third_party_dn.as_deref(), Some("1001"));
        assert_eq!(added.parties, vec![CARRIER, "1002", "1001"]);
        assert_eq!(added.request_id, Some(complete));
    }
    let released = attrs(first[7]);
    assert_eq!(
        (released.request_id, released.third_party_dn.as_deref()),
        (Some(delete), Some("1002"))
    );
    let deleted = attrs(first[8]);
    assert_eq!(deleted.third_party_dn.as_deref(), Some("1001"));
    assert_eq!(deleted.parties, vec![CARRIER, "1002"]);
    assert_eq!(attrs(first[9]).request_id, Some(release));
}

#[test]
fn single_step_conference_then_the_parties_leave_one_by_one() {
    let Some(mut rig) = Rig::start() else { return };
    let agent = rig.agent(1);
    let party = rig.party();
    let carrier = rig.carrier("conf_carrier_direct");
    let sb = &rig.sb;
    let (conn, base) = agent_call(sb);
    let add = accepted(
        sb,
        "POST",
        &format!("{base}/conference/single-step"),
        r#"{"dn":"1002","to":"1001"}"#,
    );
    wait_party(sb, &conn, "1001", "established");
    let freqs = [500.0, 1000.0, 1500.0];
    let heard = talk_and_listen(&rig.socks(&[0, 1, 2]), &freqs, 3000);
    rig.check_mixer(&heard, &[0, 1, 2], &freqs);

    // The agent leaves: the carrier and 1001 go on talking through the mixer.
    let release = accepted(sb, "POST", &format!("{base}/release"), r#"{"dn":"1002"}"#);
    wait_party(sb, &conn, "1002", "released");
    let two = [freqs[0], freqs[2]];
    let heard = talk_and_listen(&rig.socks(&[0, 2]), &two, 2000);
    rig.check_mixer(&heard, &[0, 2], &two);
    let last = accepted(sb, "POST", &format!("{base}/release"), r#"{"dn":"1001"}"#);
    for (who, h) in [("carrier", carrier), ("1002", agent), ("1001", party)] {
        let out = h.join().expect("sipp thread");
        assert!(out.success(), "{who}:\n{}", out.report());
    }

    let events = rig.events();
    assert_eq!(
        seq_of(&events, &conn),
        vec![
            ("EventRinging", "1002".into()),
            ("EventEstablished", "1002".into()),
            ("EventRinging", "1001".into()),
            ("EventEstablished", "1001".into()),
            ("EventPartyAdded", "1002".into()),
            ("EventPartyAdded", "1001".into()),
            ("EventReleased", "1002".into()),
            ("EventPartyDeleted", "1001".into()),
            ("EventReleased", "1001".into()),
        ]
    );
    let all = of_call(&events, &conn);
    assert_eq!(attrs(all[2]).request_id, Some(add));
    for added in [attrs(all[4]), attrs(all[5])] {
        assert_eq!(added.third_party_dn.as_deref(), Some("1001"));
        assert_eq!(added.parties, vec![CARRIER, "1002", "1001"]);
        assert_eq!(added.request_id, Some(add));
    }
    assert_eq!(attrs(all[6]).request_id, Some(release));
    let deleted = attrs(all[7]);
    assert_eq!(deleted.third_party_dn.as_deref(), Some("1002"));
    assert_eq!(deleted.parties, vec![CARRIER, "1001"]);
    assert_eq!(attrs(all[8]).request_id, Some(last));
}
