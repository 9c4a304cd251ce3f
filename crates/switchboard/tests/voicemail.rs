//! Voicemail end to end: `switchboard up` (SIP edge, sip-node, mcp, voicemail, ...) on port 0,
//! SIPp as the callers and as the owner's registered phone, the `sip-tester` pcaps as the
//! caller's voice and keys.
//!
//! A call to DN 1002 (not registered, `mailbox = "8100"`) goes to mailbox 8100; the caller's
//! voice (g711a.pcap) is recorded until `#`. The access call (1001 dials 7000) points its SDP
//! at a UDP socket of the test, which sends the DTMF pcaps' RFC 4733 packets from there (so
//! the media server keeps sending to it) and reads what is played.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard_bus::{Bus, EmbeddedBus};
use switchboard_events::Event;
use switchboard_rtp::codec::g711;
use switchboard_rtp::RtpPacket;
use switchboard_testkit::{
    free_udp_port, http_request, http_request_with, require_program, send_signal, Sipp,
    SippOutcome, Switchboard,
};

mod common;
use common::scenario;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const PCAPS: &str = "/usr/share/sip-tester";
const CARRIER: &str = "5551234";

fn config(data_dir: &Path, max_messages: u32) -> String {
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
[[tenants.agent_groups]]
name = "sales"
[[tenants.dns]]
number = "1001"
kind = "extension"
[[tenants.dns]]
number = "1002"
kind = "extension"
mailbox = "8100"
[[tenants.dns]]
number = "7000"
kind = "voicemail_access"
[[tenants.agents]]
login_id = "a1001"
dn = "1001"
groups = ["sales"]
[[tenants.agents]]
login_id = "a1002"
dn = "1002"
[[tenants.api_keys]]
name = "a1001"
key = "agent-a1001-key-0123"
role = "agent"
agent = "a1001"
[[tenants.api_keys]]
name = "a1002"
key = "agent-a1002-key-0123"
role = "agent"
agent = "a1002"
[[tenants.mailboxes]]
number = "8100"
owner_group = "sales"
pin = "1234"
max_message_s = 30
max_messages = {max_messages}
"#,
        data_dir.display().to_string()
    )
}

struct Vm {
    sb: Switchboard,
    dir: tempfile::TempDir,
}

impl Vm {
    fn start(max_messages: u32) -> Option<Vm> {
        if !require_program("sipp") {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let sb = spawn(dir.path(), max_messages);
        // A short recorded greeting, so that the recording starts at a known time.
        let greeting = dir.path().join("voicemail/demo/8100/greeting.wav");
        std::fs::create_dir_all(greeting.parent().expect("dir")).expect("mkdir");
        std::fs::write(&greeting, tone_wav(600.0, 300)).expect("greeting");
        Some(Vm { sb, dir })
    }

    fn json(&self, method: &str, path: &str) -> (u16, Value) {
        let r = http_request(self.sb.http_addr(), method, path, None).expect("HTTP");
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        )
    }

    fn messages(&self) -> Vec<Value> {
        let (s, v) = self.json("GET", "/v1/tenants/demo/mailboxes/8100/messages");
        assert_eq!(s, 200, "{v}");
        v["messages"].as_array().cloned().unwrap_or_default()
    }

    fn metric(&self, name: &str) -> f64 {
        let page = self.sb.get("/metrics").expect("metrics").body;
        page.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn wav_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("voicemail/demo/8100"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy() != "greeting.wav")
                    .count()
            })
            .unwrap_or(0)
    }
}

fn spawn(dir: &Path, max_messages: u32) -> Switchboard {
    spawn_with(dir, max_messages, false)
}

/// With `api_keys`, `/v1/` needs the keys of the configuration.
fn spawn_with(dir: &Path, max_messages: u32, api_keys: bool) -> Switchboard {
    let mut b = Switchboard::builder()
        .binary(BIN)
        .config(&config(dir, max_messages))
        .log("info,switchboard_services=debug");
    if api_keys {
        b = b.api_keys();
    }
    b.spawn().expect("switchboard starts")
}

fn tone_wav(freq: f64, ms: usize) -> Vec<u8> {
    let s: Vec<i16> = (0..ms * 8)
        .map(|i| (6000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin()) as i16)
        .collect();
    switchboard_media::audio::write_wav(&s, 8000)
}

fn sipp(xml: &str, remote: SocketAddr, port: u16) -> Sipp {
    Sipp::scenario(xml)
        .remote(remote)
        .arg("-p")
        .arg(&port.to_string())
        .arg("-mp")
        .arg(&free_udp_port().expect("port").to_string())
        .timeout(Duration::from_secs(70))
}

fn edge(sb: &Switchboard) -> SocketAddr {
    sb.sip_udp_addr().expect("sip_udp")
}

/// Registers `user` from (and with a Contact at) local port `port`, as a phone does: the MWI
/// NOTIFY goes to where the REGISTER came from (`tests/common`'s `register` sends from another
/// port).
fn register(sb: &Switchboard, user: &str, port: u16) {
    let contact = format!("127.0.0.1:{port}");
    let xml = scenario(
        "register",
        &[
            ("USER", user),
            ("CONTACT", &contact),
            ("EXPIRES", "120"),
            ("PASSWORD", "secret"),
        ],
    );
    let out = sipp(&xml, edge(sb), port).run().expect("sipp");
    assert!(out.success(), "REGISTER {user}:\n{}", out.report());
}

fn pcap_action(path: &Path) -> String {
    assert!(path.exists(), "{} is missing", path.display());
    format!(
        "  <nop><action><exec play_pcap_audio=\"{}\"/></action></nop>\n",
        path.display()
    )
}

fn pause(ms: u64) -> String {
    format!("  <pause milliseconds=\"{ms}\"/>\n")
}

/// A call from `from` to `callee` with audio to `sdp_port`, doing `during`, ended by the far
/// end.
fn call(sb: &Switchboard, from: &str, callee: &str, sdp_port: &str, during: &str) -> Sipp {
    call_waiting(sb, from, callee, sdp_port, during, 60_000)
}

/// [`call`] waiting at most `bye_wait_ms` for the BYE.
fn call_waiting(
    sb: &Switchboard,
    from: &str,
    callee: &str,
    sdp_port: &str,
    during: &str,
    bye_wait_ms: u32,
) -> Sipp {
    let wait = bye_wait_ms.to_string();
    let xml = scenario(
        "vm_caller",
        &[
            ("FROM", from),
            ("CALLEE", callee),
            ("SDP_PORT", sdp_port),
            ("DURING", during),
            ("BYE_WAIT", &wait),
        ],
    );
    sipp(&xml, edge(sb), free_udp_port().expect("port"))
}

/// The carrier leaves a message at 1002 (unanswered: not registered): g711a.pcap (7.05 s)
/// after the greeting and the beep, then `#`.
fn deposit(sb: &Switchboard) -> SippOutcome {
    let voice = Path::new(PCAPS).join("g711a.pcap");
    let pound = Path::new(PCAPS).join("dtmf_2833_pound.pcap");
    let during = pause(1500) + &pcap_action(&voice) + &pause(7400) + &pcap_action(&pound);
    call(sb, CARRIER, "1002", "[media_port]", &during)
        .run()
        .expect("sipp")
}

/// The samples of an A-law RTP pcap, placed by timestamp.
fn pcap_alaw_samples(path: &Path) -> Vec<i16> {
    let mut out: Vec<i16> = Vec::new();
    let mut base = None;
    for rtp in pcap_rtp(path) {
        let Ok(p) = RtpPacket::parse(&rtp) else {
            continue;
        };
        let ts = p.timestamp();
        let at = ts.wrapping_sub(*base.get_or_insert(ts)) as usize;
        let pcm: Vec<i16> = p
            .payload()
            .iter()
            .map(|&c| g711::alaw_decode_sample(c))
            .collect();
        if out.len() < at + pcm.len() {
            out.resize(at + pcm.len(), 0);
        }
        out[at..at + pcm.len()].copy_from_slice(&pcm);
    }
    out
}

/// The RTP packets of a pcap (Ethernet, IPv4, UDP).
fn pcap_rtp(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).expect("pcap");
    let mut off = 24;
    let mut out = Vec::new();
    while off + 16 <= b.len() {
        let caplen =
            u32::from_le_bytes([b[off + 8], b[off + 9], b[off + 10], b[off + 11]]) as usize;
        let frame = &b[off + 16..off + 16 + caplen];
        off += 16 + caplen;
        let ihl = (frame[14] & 0x0f) as usize * 4;
        out.push(frame[14 + ihl + 8..].to_vec());
    }
    out
}

/// Whether `window` occurs in `stream`.
fn contains(stream: &[i16], window: &[i16]) -> bool {
    !window.is_empty() && stream.windows(window.len()).any(|w| w == window)
}

/// The media side of an access call: the test's RTP socket. It records what the media server
/// plays (A-law, by sequence number) and sends keys as the RFC 4733 packets of the DTMF
/// pcaps, renumbered to follow on from each other.
/// Decoded packets by sequence number.
type Heard = Arc<Mutex<Vec<(u16, Vec<i16>)>>>;

struct Phone {
    sock: UdpSocket,
    heard: Heard,
    peer: Arc<Mutex<Option<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    seq: u16,
    ts: u32,
}

impl Phone {
    fn new() -> Phone {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let phone = Phone {
            sock,
            heard: Arc::default(),
            peer: Arc::default(),
            stop: Arc::default(),
            seq: 1000,
            ts: 160_000,
        };
        let (sock, heard, peer, stop) = (
            phone.sock.try_clone().expect("clone"),
            phone.heard.clone(),
            phone.peer.clone(),
            phone.stop.clone(),
        );
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                peer.lock().expect("lock").get_or_insert(from);
                if let Ok(p) = RtpPacket::parse(&buf[..n]) {
                    if p.payload_type() == 8 {
                        let pcm = p.payload().iter().map(|&c| g711::alaw_decode_sample(c));
                        heard
                            .lock()
                            .expect("lock")
                            .push((p.sequence(), pcm.collect()));
                    }
                }
            }
        });
        phone
    }

    fn port(&self) -> String {
        self.sock.local_addr().expect("addr").port().to_string()
    }

    /// Waits until the media server sends audio (the call is answered).
    fn wait_media(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(p) = *self.peer.lock().expect("lock") {
                return p;
            }
            assert!(Instant::now() < deadline, "no RTP from the media server");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Presses `keys` (`0-9`, `#`), 300 ms apart.
    fn press(&mut self, keys: &str) {
        let to = self.wait_media();
        for k in keys.chars() {
            let name = if k == '#' {
                "pound".to_owned()
            } else {
                k.to_string()
            };
            let packets = pcap_rtp(&Path::new(PCAPS).join(format!("dtmf_2833_{name}.pcap")));
            assert!(!packets.is_empty(), "dtmf pcap for {k}");
            self.ts = self.ts.wrapping_add(8000);
            for mut p in packets {
                p[2..4].copy_from_slice(&self.seq.to_be_bytes());
                p[4..8].copy_from_slice(&self.ts.to_be_bytes());
                self.seq = self.seq.wrapping_add(1);
                self.sock.send_to(&p, to).expect("send");
                thread::sleep(Duration::from_millis(20));
            }
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// Speaks the A-law audio of `pcap` (its RTP packets, renumbered, 20 ms apart).
    fn speak(&mut self, pcap: &Path) {
        let to = self.wait_media();
        let mut first_ts = None;
        for mut p in pcap_rtp(pcap) {
            let Ok(rtp) = RtpPacket::parse(&p) else {
                continue;
            };
            let ts = rtp.timestamp();
            let base = *first_ts.get_or_insert(ts);
            let at = self.ts.wrapping_add(ts.wrapping_sub(base));
            p[2..4].copy_from_slice(&self.seq.to_be_bytes());
            p[4..8].copy_from_slice(&at.to_be_bytes());
            self.seq = self.seq.wrapping_add(1);
            self.sock.send_to(&p, to).expect("send");
            // The pcap's packets are 30 ms each.
            thread::sleep(Duration::from_millis(30));
        }
        self.ts = self.ts.wrapping_add(160_000);
    }

    /// Everything heard so far, in sequence order.
    fn heard(&self) -> Vec<i16> {
        let mut packets = self.heard.lock().expect("lock").clone();
        packets.sort_by_key(|(s, _)| *s);
        packets.into_iter().flat_map(|(_, s)| s).collect()
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts the access call from 1001 to 7000 with its media at `phone`.
fn access_call(sb: &Switchboard, phone: &Phone) -> thread::JoinHandle<SippOutcome> {
    access_call_from(sb, "1001", phone)
}

fn access_call_from(
    sb: &Switchboard,
    from: &str,
    phone: &Phone,
) -> thread::JoinHandle<SippOutcome> {
    let sipp = call(sb, from, "7000", &phone.port(), "");
    thread::spawn(move || sipp.run().expect("sipp"))
}

fn until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn bus_events(dir: &Path) -> Vec<Event> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let bus = EmbeddedBus::open(&dir.join("bus.db")).expect("bus file");
        bus.read_range("events:demo", None, 1000)
            .await
            .expect("read")
            .into_iter()
            .filter_map(|e| Event::from_json(&String::from_utf8_lossy(&e.payload)).ok())
            .collect()
    })
}

#[test]
fn a_message_is_deposited_notified_played_back_and_deleted() {
    let Some(mut vm) = Vm::start(10) else { return };
    // 1001 (an agent of group "sales", which owns mailbox 8100) has a phone registered.
    let phone_port = free_udp_port().expect("port");
    register(&vm.sb, "1001", phone_port);
    let mwi_xml = scenario("vm_mwi_phone", &[("COUNTS", "1/0 \\(0/0\\)")]);
    let mwi = sipp(&mwi_xml, edge(&vm.sb), phone_port);
    let mwi = thread::spawn(move || mwi.run().expect("sipp"));
    thread::sleep(Duration::from_millis(400));

    let out = deposit(&vm.sb);
    assert!(
        out.success(),
        "deposit:\n{}\n{}",
        out.report(),
        vm.sb.logs()
    );
    let notified = mwi.join().expect("mwi phone");
    assert!(
        notified.success(),
        "MWI NOTIFY:\n{}\n{}",
        notified.report(),
        vm.sb.logs()
    );

    let list = vm.messages();
    assert_eq!(list.len(), 1, "{list:?}");
    let msg = &list[0];
    assert_eq!(msg["state"], "new");
    assert_eq!(msg["caller"], CARRIER);
    let duration = msg["duration_ms"].as_u64().unwrap_or(0);
    assert!((7_000..10_000).contains(&duration), "{duration} ms");
    let id = msg["id"].as_str().expect("id").to_owned();
    // The stored audio is the caller's voice, sample for sample.
    let audio_path = format!("/v1/tenants/demo/mailboxes/8100/messages/{id}/audio");
    let r = vm.sb.get(&audio_path).expect("GET audio");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("audio/wav"));
    let stored_path = vm.dir.path().join(format!("voicemail/demo/8100/{id}.wav"));
    let stored = switchboard_media::Audio::from_wav(&std::fs::read(&stored_path).expect("wav"))
        .expect("a WAV");
    let voice = pcap_alaw_samples(&Path::new(PCAPS).join("g711a.pcap"));
    let window = &voice[24_000..25_000];
    assert!(
        contains(stored.samples(), window),
        "the recording holds the pcap's voice"
    );

    // The access call: PIN, 1 to listen, the message plays, 3 deletes it, 9 hangs up.
    let mut phone = Phone::new();
    let caller = access_call(&vm.sb, &phone);
    phone.wait_media();
    thread::sleep(Duration::from_millis(1500));
    phone.press("1234#");
    thread::sleep(Duration::from_millis(2500));
    phone.press("1");
    until("the message played back", 25, || {
        contains(&phone.heard(), window)
    });
    let heard = vm.messages();
    assert_eq!(heard[0]["state"], "saved", "{heard:?}");
    assert_eq!(heard[0]["heard_by"][0]["by"], "a1001", "{heard:?}");
    phone.press("3");
    until("the message deleted", 10, || vm.messages().is_empty());
    thread::sleep(Duration::from_millis(2000));
    phone.press("9");
    let out = caller.join().expect("access call");
    assert!(
        out.success(),
        "access call:\n{}\n{}",
        out.report(),
        vm.sb.logs()
    );
    assert!(
        !stored_path.exists(),
        "the audio file is deleted with the message"
    );
    let (status, _) = vm.json("GET", &audio_path);
    assert_eq!(status, 404);

    // The events: 1002 diverted to its mailbox, the message deposited.
    vm.sb.terminate().expect("SIGTERM");
    vm.sb.wait_exit(Duration::from_secs(15)).expect("exit");
    let events = bus_events(vm.dir.path());
    assert!(
        events.iter().any(|e| matches!(e, Event::EventDiverted(c)
            if c.this_dn == "1002" && c.third_party_dn.as_deref() == Some("8100")
                && c.reason.as_deref() == Some("voicemail"))),
        "{events:?}"
    );
    let deposited = events
        .iter()
        .find_map(|e| match e {
            Event::EventMessageDeposited(m) => Some(m.clone()),
            _ => None,
        })
        .expect("EventMessageDeposited");
    assert_eq!(deposited.this_dn, "8100");
    assert_eq!(deposited.message_id, id);
    assert_eq!(deposited.other_dn.as_deref(), Some(CARRIER));
    assert_eq!(deposited.owner_group.as_deref(), Some("sales"));
    assert_eq!((deposited.new_messages, deposited.old_messages), (1, 0));
    assert!(deposited.conn_id.is_some());
}

/// VoiceXML 2.0 §2.3.6: the most common way to end a message is to hang up. The caller speaks
/// (g711a.pcap) and hangs up without `#`: the recording so far is the message.
#[test]
fn a_caller_who_hangs_up_while_recording_leaves_the_message() {
    let Some(vm) = Vm::start(10) else { return };
    let voice = Path::new(PCAPS).join("g711a.pcap");
    let during = pause(1500) + &pcap_action(&voice) + &pause(7400);
    let xml = scenario(
        "vm_caller_hangup",
        &[
            ("FROM", CARRIER),
            ("CALLEE", "1002"),
            ("SDP_PORT", "[media_port]"),
            ("DURING", &during),
        ],
    );
    let out = sipp(&xml, edge(&vm.sb), free_udp_port().expect("port"))
        .run()
        .expect("sipp");
    assert!(out.success(), "{}\n{}", out.report(), vm.sb.logs());
    // The media server posts the recording from the hangup handler, after the BYE.
    let deadline = Instant::now() + Duration::from_secs(15);
    let list = loop {
        let list = vm.messages();
        if !list.is_empty() || Instant::now() > deadline {
            break list;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(list.len(), 1, "{list:?}\n{}", vm.sb.logs());
    let msg = &list[0];
    assert_eq!(msg["caller"], CARRIER);
    assert_eq!(msg["state"], "new");
    let duration = msg["duration_ms"].as_u64().unwrap_or(0);
    assert!((3_000..10_000).contains(&duration), "{duration} ms");
    let id = msg["id"].as_str().expect("id");
    let stored_path = vm.dir.path().join(format!("voicemail/demo/8100/{id}.wav"));
    let stored = switchboard_media::Audio::from_wav(&std::fs::read(&stored_path).expect("wav"))
        .expect("a WAV");
    let samples = pcap_alaw_samples(&voice);
    assert!(
        contains(stored.samples(), &samples[24_000..25_000]),
        "the recording holds the pcap's voice"
    );
    assert_eq!(vm.metric("voicemail_messages_deposited_total"), 1.0);
}

#[test]
fn three_wrong_pins_end_the_access_call() {
    let Some(vm) = Vm::start(10) else { return };
    let mut phone = Phone::new();
    let started = Instant::now();
    let caller = access_call(&vm.sb, &phone);
    phone.wait_media();
    thread::sleep(Duration::from_millis(1500));
    for _ in 0..3 {
        phone.press("9999#");
        thread::sleep(Duration::from_millis(2500));
    }
    let out = caller.join().expect("access call");
    assert!(out.success(), "{}\n{}", out.report(), vm.sb.logs());
    assert_eq!(
        vm.metric("voicemail_lockouts_total"),
        1.0,
        "ended by the lockout"
    );
    assert_eq!(vm.metric("voicemail_pin_failures_total"), 3.0);
    assert_eq!(vm.metric("voicemail_logins_total"), 0.0);
    assert!(started.elapsed() < Duration::from_secs(40));
}

#[test]
fn a_full_mailbox_says_so_and_records_nothing() {
    let Some(vm) = Vm::start(1) else { return };
    let out = deposit(&vm.sb);
    assert!(out.success(), "{}\n{}", out.report(), vm.sb.logs());
    assert_eq!(vm.messages().len(), 1);
    // The second caller talks too, but hears the mailbox is full and is hung up on.
    let voice = Path::new(PCAPS).join("g711a.pcap");
    let out = call(
        &vm.sb,
        CARRIER,
        "1002",
        "[media_port]",
        &(pause(500) + &pcap_action(&voice)),
    )
    .run()
    .expect("sipp");
    assert!(out.success(), "{}\n{}", out.report(), vm.sb.logs());
    assert_eq!(vm.messages().len(), 1, "still one message");
    assert_eq!(vm.wav_files(), 1, "no second recording kept");
    let recordings = std::fs::read_dir(vm.dir.path().join("recordings"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        recordings, 1,
        "the media server recorded the first caller only"
    );
    assert!(vm.metric("voicemail_deposits_refused_total") >= 1.0);
    assert_eq!(vm.metric("voicemail_messages_deposited_total"), 1.0);
}

#[test]
fn a_crash_right_after_the_deposit_loses_no_acknowledged_message() {
    let Some(mut vm) = Vm::start(10) else { return };
    let caller = {
        let voice = Path::new(PCAPS).join("g711a.pcap");
        let pound = Path::new(PCAPS).join("dtmf_2833_pound.pcap");
        let during = pause(1500) + &pcap_action(&voice) + &pause(7400) + &pcap_action(&pound);
        // The process dies under the caller: it waits for a BYE that never comes.
        let sipp = call_waiting(&vm.sb, CARRIER, "1002", "[media_port]", &during, 3_000);
        thread::spawn(move || sipp.run())
    };
    // The deposit is acknowledged when the log says so (the submit is answered right after):
    // kill the process at once, before the caller even hears "saved".
    vm.sb
        .wait_for_log("voicemail message deposited", Duration::from_secs(30))
        .expect("a deposit");
    send_signal(vm.sb.pid(), 9).expect("SIGKILL");
    vm.sb.wait_exit(Duration::from_secs(10)).expect("exit");
    let _ = caller.join();

    let sb = spawn(vm.dir.path(), 10);
    let r = sb
        .get("/v1/tenants/demo/mailboxes/8100/messages")
        .expect("GET");
    let list: Value = serde_json::from_str(&r.body).expect("JSON");
    let messages = list["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 1, "{list}");
    let id = messages[0]["id"].as_str().expect("id");
    let r = sb
        .get(&format!(
            "/v1/tenants/demo/mailboxes/8100/messages/{id}/audio"
        ))
        .expect("GET audio");
    assert_eq!(r.status, 200);
    let path = vm.dir.path().join(format!("voicemail/demo/8100/{id}.wav"));
    let audio =
        switchboard_media::Audio::from_wav(&std::fs::read(path).expect("wav")).expect("WAV");
    assert!(
        audio.len() > 7 * 8000,
        "the whole message: {} samples",
        audio.len()
    );
}

#[test]
fn the_rest_api_and_a_message_summary_subscription() {
    let Some(vm) = Vm::start(10) else { return };
    let (s, v) = vm.json("GET", "/v1/tenants/demo/mailboxes/9999/messages");
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["status"], 404);
    let (s, _) = vm.json("GET", "/v1/tenants/nope/mailboxes/8100/messages");
    assert_eq!(s, 404);
    let (s, _) = vm.json("DELETE", "/v1/tenants/demo/mailboxes/8100/messages/../../x");
    assert_eq!(s, 404);
    let out = deposit(&vm.sb);
    assert!(out.success(), "{}\n{}", out.report(), vm.sb.logs());
    // A phone subscribing to its message summary through the edge hears of the message.
    let xml = scenario(
        "vm_subscribe",
        &[("USER", "1001"), ("COUNTS", "1/0 \\(0/0\\)")],
    );
    let out = sipp(&xml, edge(&vm.sb), free_udp_port().expect("port"))
        .run()
        .expect("sipp");
    assert!(
        out.success(),
        "SUBSCRIBE:\n{}\n{}",
        out.report(),
        vm.sb.logs()
    );
    let id = vm.messages()[0]["id"].as_str().expect("id").to_owned();
    let base = format!("/v1/tenants/demo/mailboxes/8100/messages/{id}");
    let (s, v) = vm.json("POST", &format!("{base}/read"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "saved");
    let (s, _) = vm.json("DELETE", &base);
    assert_eq!(s, 204);
    let (s, v) = vm.json("DELETE", &base);
    assert_eq!(s, 404, "{v}");
    assert!(vm.messages().is_empty());
    assert_eq!(vm.wav_files(), 0);
}

#[test]
fn the_owner_records_a_greeting_that_callers_then_hear() {
    let Some(vm) = Vm::start(10) else { return };
    let greeting = vm.dir.path().join("voicemail/demo/8100/greeting.wav");
    let before = std::fs::read(&greeting).expect("the test's greeting");
    let mut phone = Phone::new();
    let caller = access_call(&vm.sb, &phone);
    phone.wait_media();
    thread::sleep(Duration::from_millis(1500));
    phone.press("1234#");
    thread::sleep(Duration::from_millis(2500));
    phone.press("5");
    // The prompt, the beep, then the owner speaks and ends with #.
    thread::sleep(Duration::from_millis(2500));
    let voice = Path::new(PCAPS).join("g711a.pcap");
    phone.speak(&voice);
    phone.press("#");
    until("the greeting saved", 15, || {
        std::fs::read(&greeting).is_ok_and(|g| g != before)
    });
    thread::sleep(Duration::from_millis(3000));
    phone.press("9");
    let out = caller.join().expect("access call");
    assert!(
        out.success(),
        "access call:\n{}\n{}",
        out.report(),
        vm.sb.logs()
    );
    let recorded =
        switchboard_media::Audio::from_wav(&std::fs::read(&greeting).expect("wav")).expect("a WAV");
    let samples = pcap_alaw_samples(&voice);
    let window = &samples[24_000..25_000];
    assert!(
        contains(recorded.samples(), window),
        "the greeting is the owner's voice"
    );

    // A caller hears it before the beep.
    let mut carrier = Phone::new();
    let deposit = call(&vm.sb, CARRIER, "1002", &carrier.port(), "");
    let deposit = thread::spawn(move || deposit.run().expect("sipp"));
    until("the greeting played", 20, || {
        contains(&carrier.heard(), window)
    });
    carrier.press("#");
    let _ = deposit.join();
}

#[test]
fn a_caller_without_a_mailbox_of_its_own_names_the_mailbox_first() {
    let Some(vm) = Vm::start(10) else { return };
    let mut phone = Phone::new();
    // 1002 is no agent: the menu asks for the mailbox number, then the PIN.
    let caller = access_call_from(&vm.sb, "1002", &phone);
    phone.wait_media();
    thread::sleep(Duration::from_millis(1500));
    phone.press("8100#");
    thread::sleep(Duration::from_millis(1500));
    phone.press("1234#");
    until("the login", 15, || {
        vm.metric("voicemail_logins_total") == 1.0
    });
    thread::sleep(Duration::from_millis(1500));
    phone.press("9");
    let out = caller.join().expect("access call");
    assert!(out.success(), "{}\n{}", out.report(), vm.sb.logs());
    assert_eq!(vm.metric("voicemail_pin_failures_total"), 0.0);
}

#[test]
fn with_api_keys_the_menus_still_work_and_agents_reach_their_groups_mailbox() {
    if !require_program("sipp") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sb = spawn_with(dir.path(), 10, true);
    // The media server fetches the menus without a key: they are outside /v1/.
    let out = deposit(&sb);
    assert!(out.success(), "deposit:\n{}\n{}", out.report(), sb.logs());
    let path = "/v1/tenants/demo/mailboxes/8100/messages";
    let get = |key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http_request_with(sb.http_addr(), "GET", path, &headers, None).expect("GET")
    };
    assert_eq!(get(None).status, 401);
    assert_eq!(
        get(Some("agent-a1002-key-0123")).status,
        403,
        "not in the owning group"
    );
    let r = get(Some("agent-a1001-key-0123"));
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(1), "{v}");
}
