//! The media server (`mcp` role) against real SIPp over UDP on loopback.
//!
//! Each test starts its own `switchboard run --roles mcp` on port 0. SIPp does the signalling
//! and, where the check is on what mcp *received*, the media too (`play_pcap_audio` with the
//! pcaps of the `sip-tester` package, or one this file writes from a `sox` WAV). Where the
//! check is on what mcp *sent*, the SDP offer points at a UDP socket of the test, which reads
//! the RTP.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use switchboard_rtp::codec::g711;
use switchboard_rtp::{RtpHeader, RtpPacket};
use switchboard_testkit::{
    free_udp_port, http_request, require_program, Sipp, SippOutcome, Switchboard,
};

mod common;
use common::scenario;

const PCAPS: &str = "/usr/share/sip-tester";
const PCMU: (&str, &str) = ("0", "a=rtpmap:0 PCMU/8000");
const PCMA_TE: (&str, &str) = (
    "8 101",
    "a=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16",
);

struct Mcp {
    sb: Switchboard,
    dir: tempfile::TempDir,
}

impl Mcp {
    fn addr(&self) -> SocketAddr {
        self.sb
            .addr("mcp_udp")
            .expect("mcp_udp in the listening line")
    }

    fn media_dir(&self) -> PathBuf {
        self.dir.path().join("media")
    }

    fn calls(&self) -> serde_json::Value {
        let r = self.sb.get("/v1/mcp/calls").expect("GET /v1/mcp/calls");
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("JSON")
    }

    /// The ended call whose field `key` is set, waiting up to 3 s for it (the media engine
    /// reports the last events of a call just after the BYE).
    fn ended_with(&self, key: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let calls = self.calls();
            if let Some(c) = calls["ended"]
                .as_array()
                .and_then(|a| a.iter().find(|c| !c[key].is_null() && c[key] != ""))
            {
                return c.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no ended call with {key}: {calls}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `switchboard run --roles mcp` with its data under a temporary directory, or `None` (and a
/// loud SKIPPED line) without SIPp.
fn mcp(extra: &str) -> Option<Mcp> {
    if !require_program("sipp") {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("media")).expect("media dir");
    let config = format!(
        "data_dir = {:?}\n[mcp]\nfallback_prompt = \"tone:440/500\"\n{extra}",
        dir.path().display().to_string()
    );
    let sb = Switchboard::builder()
        .config(&config)
        .roles(&["mcp"])
        .log("info,switchboard_services=debug")
        .spawn()
        .expect("switchboard starts");
    Some(Mcp { sb, dir })
}

/// Runs a scenario against mcp with its own SIP and media ports.
fn sipp(m: &Mcp, name: &str, vars: &[(&str, &str)]) -> SippOutcome {
    let sip_port = free_udp_port().expect("free port");
    let media_port = free_udp_port().expect("free port");
    Sipp::scenario(&scenario(name, vars))
        .remote(m.addr())
        .arg("-p")
        .arg(&sip_port.to_string())
        .arg("-mp")
        .arg(&media_port.to_string())
        .timeout(Duration::from_secs(25))
        .run()
        .expect("sipp runs")
}

/// A call from SIPp to `sip:{ruri}` offering `codecs` with audio to `sdp_port`, doing `during`
/// after the ACK; `scenario` is `mcp_call` (SIPp hangs up) or `mcp_call_wait_bye` (mcp does).
fn call(
    m: &Mcp,
    scenario: &str,
    ruri: &str,
    sdp_port: &str,
    codecs: (&str, &str),
    during: &str,
) -> SippOutcome {
    sipp(
        m,
        scenario,
        &[
            ("RURI", ruri),
            ("SDP_PORT", sdp_port),
            ("PTS", codecs.0),
            ("RTPMAPS", codecs.1),
            ("DURING", during),
        ],
    )
}

/// The pcaps come with SIPp (package `sip-tester`), which `mcp()` required.
fn require_pcap(path: &Path) {
    assert!(
        path.exists(),
        "{} is missing although sipp is installed (package sip-tester ships it)",
        path.display()
    );
}

fn pause(ms: u64) -> String {
    format!("  <pause milliseconds=\"{ms}\"/>\n")
}

fn play_pcap(path: &Path) -> String {
    format!(
        "  <nop><action><exec play_pcap_audio=\"{}\"/></action></nop>\n",
        path.display()
    )
}

fn sine(freq: f64, n: usize, amp: f64, offset: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = (offset + i) as f64 / 8000.0;
            ((2.0 * std::f64::consts::PI * freq * t).sin() * amp) as i16
        })
        .collect()
}

fn mean_abs(s: &[i16]) -> f64 {
    s.iter().map(|&x| (x as f64).abs()).sum::<f64>() / s.len().max(1) as f64
}

fn goertzel(s: &[i16], f: f64) -> f64 {
    let c = 2.0 * (2.0 * std::f64::consts::PI * f / 8000.0).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in s {
        let s0 = x as f64 + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2).sqrt() / s.len().max(1) as f64
}

/// The value of the metric line starting with `name` in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{page}"))
}

/// An RTP packet as received: payload type, marker, timestamp, payload.
type Packet = (u8, bool, u32, Vec<u8>);

/// Collects every RTP packet arriving at `sock` until `stop` is set.
fn collect_packets(sock: UdpSocket, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Packet>> {
    thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut out = Vec::new();
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if let Ok(p) = RtpPacket::parse(&buf[..n]) {
                let payload = p.payload().to_vec();
                out.push((p.payload_type(), p.marker(), p.timestamp(), payload));
            }
        }
        out
    })
}

/// A µ-law RTP packet arriving at the test's socket.
struct Arrival {
    at: Instant,
    seq: u16,
    loud: bool,
}

/// Collects the PCMU packets arriving at `sock` until `stop` is set.
fn collect_rtp(sock: UdpSocket, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Arrival>> {
    thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut out = Vec::new();
        let mut buf = [0u8; 1500];
        let mut pcm = [0i16; 1500];
        let mut poked = false;
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if !poked {
                // Bad input on the RTP port: version 1 and a truncated header. Dropped and
                // counted; the call goes on.
                let _ = sock.send_to(&[0x40; 20], from);
                let _ = sock.send_to(&[0x80, 0, 0], from);
                poked = true;
            }
            let Ok(p) = RtpPacket::parse(&buf[..n]) else {
                continue;
            };
            let k = g711::decode_ulaw(p.payload(), &mut pcm);
            out.push(Arrival {
                at: Instant::now(),
                seq: p.sequence(),
                loud: mean_abs(&pcm[..k]) > 1000.0,
            });
        }
        out
    })
}

/// Plays an announcement into the test's socket; returns the loud packets (in order) and mcp.
fn announcement(play: &str, extra_params: &str) -> Option<(Vec<Arrival>, Mcp, SippOutcome)> {
    let m = mcp("")?;
    let wav = switchboard_media::audio::write_wav(&sine(1000.0, 8000, 8000.0, 0), 8000);
    std::fs::write(m.media_dir().join("tone.wav"), wav).expect("write wav");
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = rtp.local_addr().expect("addr").port().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let collector = collect_rtp(rtp, stop.clone());
    let ruri = format!("annc@{};play={play}{extra_params}", m.addr());
    let out = call(&m, "mcp_call_wait_bye", &ruri, &port, PCMU, "");
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let arrivals = collector.join().expect("collector");
    let loud = arrivals.into_iter().filter(|a| a.loud).collect();
    Some((loud, m, out))
}

#[test]
fn announcement_plays_paced_rtp_then_hangs_up() {
    let Some((loud, m, out)) = announcement("file:tone.wav", ";repeat=2") else {
        return;
    };
    assert!(
        out.success(),
        "mcp hangs up after the announcement:\n{}",
        out.report()
    );
    // 2 x 1 s of audio = 100 packets of 20 ms.
    assert_eq!(loud.len(), 100, "loud packets received");
    for w in loud.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "no gap in the sequence");
    }
    // Paced, not burst: 99 intervals of 20 ms. Loose bounds (a loaded CI machine delays the
    // receiving test thread too); the precise figures come from bench/mcp-announcements.
    let span = loud[99].at - loud[0].at;
    assert!(
        span > Duration::from_millis(1800) && span < Duration::from_millis(3000),
        "99 intervals of 20 ms: {span:?}"
    );
    let mut gaps: Vec<Duration> = loud.windows(2).map(|w| w[1].at - w[0].at).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median > Duration::from_millis(12) && median < Duration::from_millis(28),
        "median spacing {median:?}"
    );
    assert!(
        gaps[gaps.len() - 1] < Duration::from_millis(300),
        "max gap {gaps:?}"
    );
    let calls = m.calls();
    assert_eq!(calls["ended"][0]["service"], "annc", "{calls}");
    assert_eq!(calls["ended"][0]["fallback"], false, "{calls}");
    let metrics = m.sb.get("/metrics").expect("metrics").body;
    let value = |name: &str| metric(&metrics, name);
    assert!(value("rtp_packets_out_total") >= 100.0);
    assert_eq!(value("rtp_malformed_total"), 2.0, "malformed RTP counted");
    assert!(
        metrics.contains("mcp_calls_total{service=\"annc\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("mcp_sessions 0"), "{metrics}");
}

#[test]
fn announcement_over_tcp_hangs_up_on_the_same_connection() {
    let Some(m) = mcp("tcp = \"127.0.0.1:0\"\n") else {
        return;
    };
    let tcp = m.sb.addr("mcp_tcp").expect("mcp_tcp in the listening line");
    let wav = switchboard_media::audio::write_wav(&sine(1000.0, 4000, 8000.0, 0), 8000);
    std::fs::write(m.media_dir().join("tone.wav"), wav).expect("write wav");
    let ruri = format!("annc@{tcp};play=file:tone.wav;transport=tcp");
    let xml = scenario(
        "mcp_call_wait_bye",
        &[
            ("RURI", &ruri),
            ("SDP_PORT", "[media_port]"),
            ("PTS", PCMU.0),
            ("RTPMAPS", PCMU.1),
            ("DURING", ""),
        ],
    );
    let out = Sipp::scenario(&xml)
        .remote(tcp)
        .tcp()
        .arg("-mp")
        .arg(&free_udp_port().expect("port").to_string())
        .timeout(Duration::from_secs(15))
        .run()
        .expect("sipp runs");
    assert!(out.success(), "{}\nmcp:\n{}", out.report(), m.sb.logs());
    assert_eq!(m.ended_with("service")["end"], "hangup");
}

#[test]
fn tts_announcement_is_spoken_by_espeak_ng() {
    if !require_program("espeak-ng") {
        return;
    }
    let Some((loud, _m, out)) = announcement("tts:Welcome%20to%20switchboard", "") else {
        return;
    };
    assert!(out.success(), "{}", out.report());
    // About a second of speech (pauses between words are quiet).
    assert!(loud.len() > 15, "loud packets of speech: {}", loud.len());
}

#[test]
fn unreachable_prompt_plays_the_fallback_and_the_call_goes_on() {
    // A port nobody listens on: the fetch is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let play = format!("http://127.0.0.1:{closed}/missing.wav");
    let Some((loud, m, out)) = announcement(&play, "") else {
        return;
    };
    assert!(
        out.success(),
        "the call goes on and ends with BYE:\n{}",
        out.report()
    );
    // The fallback: tone:440/500 = 25 packets.
    assert!(
        (24..=26).contains(&loud.len()),
        "fallback packets: {}",
        loud.len()
    );
    let call = m.ended_with("service");
    assert_eq!(call["fallback"], true, "{call}");
    assert!(
        m.sb.logs().contains("prompt unavailable"),
        "{}",
        m.sb.logs()
    );
}

#[test]
fn refusals_no_common_codec_dialog_without_url_unknown_service() {
    let Some(m) = mcp("") else { return };
    let a = m.addr();
    let cases = [
        (
            format!("annc@{a};play=file:x.wav"),
            "18",
            "a=rtpmap:18 G729/8000",
            "488",
        ),
        (format!("dialog@{a}"), "0", PCMU.1, "400"),
        (format!("nobody@{a}"), "0", PCMU.1, "404"),
    ];
    for (ruri, pts, maps, status) in &cases {
        let out = sipp(
            &m,
            "mcp_refused",
            &[
                ("RURI", ruri),
                ("PTS", pts),
                ("RTPMAPS", maps),
                ("STATUS", status),
            ],
        );
        assert!(out.success(), "{ruri} -> {status}:\n{}", out.report());
    }
    assert!(m.calls()["active"].as_array().is_some_and(|a| a.is_empty()));
}

#[test]
fn rfc4733_pcaps_are_detected_exactly() {
    let Some(m) = mcp("") else { return };
    require_pcap(&Path::new(PCAPS).join("dtmf_2833_1.pcap"));
    let mut during = String::new();
    for d in ["1", "5", "9", "pound"] {
        during += &play_pcap(&Path::new(PCAPS).join(format!("dtmf_2833_{d}.pcap")));
        during += &pause(400);
    }
    let ruri = format!("record@{}", m.addr());
    let out = call(&m, "mcp_call", &ruri, "[media_port]", PCMA_TE, &during);
    assert!(out.success(), "{}", out.report());
    let call = m.ended_with("digits");
    assert_eq!(call["digits"], "159#", "{call}");
    let metrics = m.sb.get("/metrics").expect("metrics").body;
    assert_eq!(metric(&metrics, "dtmf_detected_total"), 4.0);
}

#[test]
fn recording_ended_by_a_digit_hangs_the_call_up() {
    let pcap = Path::new(PCAPS).join("dtmf_2833_5.pcap");
    let Some(m) = mcp("") else { return };
    require_pcap(&pcap);
    let ruri = format!("record@{};dtmfterm", m.addr());
    let during = pause(300) + &play_pcap(&pcap);
    let out = call(
        &m,
        "mcp_call_wait_bye",
        &ruri,
        "[media_port]",
        PCMA_TE,
        &during,
    );
    assert!(
        out.success(),
        "mcp hangs up on the digit:\n{}",
        out.report()
    );
    let call = m.ended_with("recording");
    assert_eq!(call["digits"], "5", "{call}");
    assert_eq!(call["end"], "hangup", "{call}");
}

/// The A-law payloads of an Ethernet/IPv4/UDP/RTP pcap, placed by RTP timestamp.
fn pcap_alaw_samples(path: &Path) -> Vec<i16> {
    let b = std::fs::read(path).expect("pcap");
    let mut off = 24;
    let mut out: Vec<i16> = Vec::new();
    let mut base = None;
    while off + 16 <= b.len() {
        let caplen =
            u32::from_le_bytes([b[off + 8], b[off + 9], b[off + 10], b[off + 11]]) as usize;
        let frame = &b[off + 16..off + 16 + caplen];
        off += 16 + caplen;
        let ihl = (frame[14] & 0x0f) as usize * 4;
        let rtp = RtpPacket::parse(&frame[14 + ihl + 8..]).expect("rtp in pcap");
        let ts = rtp.timestamp();
        let at = ts.wrapping_sub(*base.get_or_insert(ts)) as usize;
        let pcm: Vec<i16> = rtp
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

#[test]
fn recording_matches_the_g711a_pcap_sample_for_sample() {
    let pcap = Path::new(PCAPS).join("g711a.pcap");
    let Some(m) = mcp("") else { return };
    require_pcap(&pcap);
    let ruri = format!("record@{}", m.addr());
    // g711a.pcap lasts 7.05 s.
    let during = play_pcap(&pcap) + &pause(7600);
    let out = call(&m, "mcp_call", &ruri, "[media_port]", PCMA_TE, &during);
    assert!(out.success(), "{}", out.report());
    let call = m.ended_with("recording");
    let path = call["recording"].as_str().expect("recording path");
    let bytes = std::fs::read(path).expect("recording file");
    let recorded = switchboard_media::Audio::from_wav(&bytes).expect("wav");
    let sent = pcap_alaw_samples(&pcap);
    assert_eq!(sent.len(), 56_640, "236 packets of 30 ms");
    assert_eq!(recorded.len(), sent.len(), "recording length");
    let differing = recorded
        .samples()
        .iter()
        .zip(&sent)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 0, "samples differ from what was sent");
    assert!(mean_abs(recorded.samples()) > 100.0, "speech, not silence");
}

/// A pcap of µ-law RTP packets (20 ms) carrying `samples`, for SIPp's `play_pcap_audio`.
fn write_ulaw_pcap(path: &Path, samples: &[i16]) {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&0i32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    for (i, chunk) in samples.chunks(160).enumerate() {
        let mut payload = [0u8; 160];
        let n = g711::encode_ulaw(chunk, &mut payload);
        let h = RtpHeader {
            marker: i == 0,
            payload_type: 0,
            sequence: 1000 + i as u16,
            timestamp: 160 * i as u32,
            ssrc: 0x5eed,
        };
        let mut rtp = [0u8; 200];
        let rtp_len = h.write_with_payload(&payload[..n], &mut rtp).expect("rtp");
        let udp_len = 8 + rtp_len;
        let ip_len = 20 + udp_len;
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&[
            0x45,
            0,
            (ip_len >> 8) as u8,
            ip_len as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ]);
        frame.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        frame.extend_from_slice(&6000u16.to_be_bytes());
        frame.extend_from_slice(&6002u16.to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&rtp[..rtp_len]);
        let t_us = i as u64 * 20_000;
        f.extend_from_slice(&((t_us / 1_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&((t_us % 1_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&frame);
    }
    std::fs::write(path, f).expect("write pcap");
}

#[test]
fn inband_dtmf_from_a_sox_wav_is_detected() {
    if !require_program("sox") {
        return;
    }
    let Some(m) = mcp("") else { return };
    let dir = m.dir.path();
    let digits = "2580";
    let mut parts = Vec::new();
    for (i, d) in digits.chars().enumerate() {
        let (lo, hi) = match d {
            '2' => (697, 1336),
            '5' => (770, 1336),
            '8' => (852, 1336),
            _ => (941, 1336),
        };
        let tone = dir.join(format!("t{i}.wav"));
        let st = std::process::Command::new("sox")
            .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
            .arg(&tone)
            .args([
                "synth",
                "0.1",
                "sine",
                &lo.to_string(),
                "sine",
                &hi.to_string(),
            ])
            .args(["channels", "1", "gain", "-n", "-6", "pad", "0", "0.1"])
            .status()
            .expect("sox runs");
        assert!(st.success(), "sox tone");
        parts.push(tone);
    }
    let wav = dir.join("digits.wav");
    let st = std::process::Command::new("sox")
        .args(&parts)
        .arg(&wav)
        .status()
        .expect("sox runs");
    assert!(st.success(), "sox concatenation");
    let audio =
        switchboard_media::Audio::from_wav(&std::fs::read(&wav).expect("wav")).expect("wav");
    let pcap = dir.join("digits.pcap");
    write_ulaw_pcap(&pcap, audio.samples());
    let ruri = format!("record@{}", m.addr());
    let during = play_pcap(&pcap) + &pause(1200);
    let out = call(&m, "mcp_call", &ruri, "[media_port]", PCMU, &during);
    assert!(out.success(), "{}", out.report());
    let call = m.ended_with("digits");
    assert_eq!(call["digits"], digits, "{call}");
}

#[test]
fn three_party_conference_each_hears_the_others_and_mute_works() {
    let Some(m) = mcp("") else { return };
    let freqs = [500.0, 1000.0, 1500.0];
    let socks: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let ruri = format!("conf=room1@{}", m.addr());
    let callers: Vec<thread::JoinHandle<SippOutcome>> = socks
        .iter()
        .map(|s| {
            let port = s.local_addr().expect("addr").port().to_string();
            let ruri = ruri.clone();
            let sip_port = free_udp_port().expect("port");
            let xml = scenario(
                "mcp_call",
                &[
                    ("RURI", &ruri),
                    ("SDP_PORT", &port),
                    ("PTS", PCMU.0),
                    ("RTPMAPS", PCMU.1),
                    ("DURING", &pause(4500)),
                ],
            );
            let remote = m.addr();
            thread::spawn(move || {
                Sipp::scenario(&xml)
                    .remote(remote)
                    .arg("-p")
                    .arg(&sip_port.to_string())
                    .timeout(Duration::from_secs(20))
                    .run()
                    .expect("sipp runs")
            })
        })
        .collect();
    for s in &socks {
        s.set_nonblocking(true).expect("nonblocking");
    }
    // Each party talks (its own tone) to wherever mcp's RTP comes from, and keeps what it hears.
    let mut mcp_rtp: Vec<Option<SocketAddr>> = vec![None; 3];
    let mut heard: Vec<Vec<(Instant, Vec<i16>)>> = vec![Vec::new(); 3];
    let mut buf = [0u8; 1500];
    let mut seq = [0u16; 3];
    let start = Instant::now();
    let mut muted_at = None;
    let mut frame = 0usize;
    while start.elapsed() < Duration::from_millis(3000) {
        for (i, s) in socks.iter().enumerate() {
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                mcp_rtp[i].get_or_insert(from);
                if let Ok(p) = RtpPacket::parse(&buf[..n]) {
                    let pcm = p
                        .payload()
                        .iter()
                        .map(|&c| g711::ulaw_decode_sample(c))
                        .collect();
                    heard[i].push((Instant::now(), pcm));
                }
            }
            if let Some(to) = mcp_rtp[i] {
                let pcm = sine(freqs[i], 160, 6000.0, frame * 160);
                let mut enc = [0u8; 160];
                g711::encode_ulaw(&pcm, &mut enc);
                let h = RtpHeader {
                    marker: false,
                    payload_type: 0,
                    sequence: seq[i],
                    timestamp: (frame * 160) as u32,
                    ssrc: 100 + i as u32,
                };
                seq[i] = seq[i].wrapping_add(1);
                let mut out = [0u8; 200];
                let len = h.write_with_payload(&enc, &mut out).expect("rtp");
                let _ = s.send_to(&out[..len], to);
            }
        }
        frame += 1;
        if muted_at.is_none() && start.elapsed() > Duration::from_millis(1800) {
            let conf = m.sb.get("/v1/conferences/room1").expect("GET conference");
            assert_eq!(conf.status, 200, "{}", conf.body);
            let v: serde_json::Value = serde_json::from_str(&conf.body).expect("json");
            let parts = v["participants"].as_array().expect("participants");
            assert_eq!(parts.len(), 3, "{v}");
            // Mute the first participant listed; which tone it sends shows in the audio.
            let call_id = parts[0]["call_id"].as_str().expect("call id").to_owned();
            let r = http_request(
                m.sb.http_addr(),
                "POST",
                &format!("/v1/conferences/room1/participants/{call_id}/mute"),
                None,
            )
            .expect("POST mute");
            assert_eq!(r.status, 200, "{}", r.body);
            let again = m.sb.get("/v1/conferences/room1").expect("GET");
            assert!(again.body.contains("\"muted\":true"), "{}", again.body);
            muted_at = Some((Instant::now(), call_id));
        }
        let next = start + Duration::from_millis(20 * frame as u64);
        if let Some(w) = next.checked_duration_since(Instant::now()) {
            thread::sleep(w);
        }
    }
    // Supervisor modes through REST (the mixing itself is covered by the media engine's tests).
    let conf: serde_json::Value =
        serde_json::from_str(&m.sb.get("/v1/conferences/room1").expect("GET").body).expect("json");
    let ids: Vec<String> = conf["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| p["call_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{conf}");
    let mode = |who: &str, body: &str| {
        http_request(
            m.sb.http_addr(),
            "POST",
            &format!("/v1/conferences/room1/participants/{who}/mode"),
            Some(body),
        )
        .expect("POST mode")
    };
    let r = mode(
        &ids[1],
        &format!(r#"{{"mode":"whisper","to":"{}"}}"#, ids[2]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for (body, status) in [
        ("not json", 400),
        (r#"{"mode":"whisper"}"#, 400),
        (r#"{"mode":"whisper","to":"nobody"}"#, 404),
        (r#"{"mode":"shout"}"#, 400),
    ] {
        let r = mode(&ids[2], body);
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    assert_eq!(mode("nobody", r#"{"mode":"listen"}"#).status, 404);
    let conf = m.sb.get("/v1/conferences/room1").expect("GET").body;
    assert!(conf.contains(r#""mode":"whisper""#), "{conf}");
    assert_eq!(m.sb.get("/v1/conferences/nosuch").expect("GET").status, 404);
    for c in callers {
        let out = c.join().expect("sipp thread");
        assert!(out.success(), "{}", out.report());
    }
    let (muted_time, _) = muted_at.expect("muted");
    // Before the mute (the last 600 ms of it): everyone hears the two others and not itself.
    let levels = |i: usize, from: Instant, to: Instant| -> Vec<f64> {
        let pcm: Vec<i16> = heard[i]
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        assert!(pcm.len() > 2000, "party {i} heard {} samples", pcm.len());
        freqs.iter().map(|&f| goertzel(&pcm, f)).collect()
    };
    for i in 0..3 {
        let l = levels(i, muted_time - Duration::from_millis(600), muted_time);
        for (j, level) in l.iter().enumerate() {
            if i == j {
                assert!(*level < 100.0, "party {i} hears itself: {l:?}");
            } else {
                assert!(*level > 500.0, "party {i} does not hear party {j}: {l:?}");
            }
        }
    }
    // After the mute (allowing the 60 ms playout delay): exactly one of the tones is gone
    // for everyone, the others stay.
    let after = muted_time + Duration::from_millis(300);
    let gone: Vec<usize> = (0..3)
        .filter(|&j| {
            (0..3)
                .filter(|&i| i != j)
                .all(|i| levels(i, after, after + Duration::from_millis(500))[j] < 100.0)
        })
        .collect();
    assert_eq!(gone.len(), 1, "one party is muted for everyone: {gone:?}");
}

/// A real softphone: baresip (no sound card: a WAV file source, a null player, and the `sndfile`
/// module dumping what it decodes) calls an announcement; what it heard is not silent.
#[test]
fn baresip_calls_an_announcement_and_hears_it() {
    if !require_program("baresip") {
        return;
    }
    let Some(m) = mcp("") else { return };
    let wav = switchboard_media::audio::write_wav(&sine(700.0, 8000, 8000.0, 0), 8000);
    std::fs::write(m.media_dir().join("tone.wav"), wav).expect("write wav");
    let home = m.dir.path().join("baresip");
    let dumps = m.dir.path().join("dumps");
    std::fs::create_dir_all(&home).expect("dir");
    std::fs::create_dir_all(&dumps).expect("dir");
    let sip_port = free_udp_port().expect("port");
    // What the phone says: 5 s of 440 Hz (baresip's aufile source).
    let talk = m.dir.path().join("talk.wav");
    std::fs::write(
        &talk,
        switchboard_media::audio::write_wav(&sine(440.0, 40_000, 4000.0, 0), 8000),
    )
    .expect("talk wav");
    let config = format!(
        "poll_method epoll\n\
         sip_listen 127.0.0.1:{sip_port}\n\
         audio_player aubridge,nil\n\
         audio_source aufile,{}\n\
         audio_alert aubridge,nil\n\
         module_path /usr/lib/baresip/modules\n\
         module g711.so\n\
         module aubridge.so\n\
         module aufile.so\n\
         module sndfile.so\n\
         module_app account.so\n\
         module_app menu.so\n\
         snd_path {}\n\
         rtp_ports 40000-49999\n",
        talk.display(),
        dumps.display()
    );
    std::fs::write(home.join("config"), config).expect("config");
    std::fs::write(
        home.join("accounts"),
        "<sip:phone@127.0.0.1>;regint=0;audio_codecs=PCMU\n",
    )
    .expect("accounts");
    let target = format!("sip:annc@{};play=file:tone.wav;repeat=2", m.addr());
    let out = std::process::Command::new("baresip")
        .arg("-f")
        .arg(&home)
        .arg("-e")
        .arg(format!("/dial {target}"))
        .arg("-t")
        .arg("5")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("baresip runs");
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let heard: Vec<PathBuf> = std::fs::read_dir(&dumps)
        .expect("dumps")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("dec"))
        .collect();
    assert_eq!(
        heard.len(),
        1,
        "one decoded-audio dump: {heard:?}\nbaresip:\n{log}\nmcp:\n{}",
        m.sb.logs()
    );
    let audio =
        switchboard_media::Audio::from_wav(&std::fs::read(&heard[0]).expect("dump")).expect("wav");
    let level = goertzel(audio.samples(), 700.0);
    assert!(
        audio.len() > 8000 && level > 500.0,
        "baresip heard {} samples, 700 Hz level {level}\nbaresip:\n{log}",
        audio.len()
    );
    let calls = m.calls();
    assert_eq!(calls["ended"][0]["service"], "annc", "{calls}");
}

fn goertzel16(s: &[i16], f: f64) -> f64 {
    let c = 2.0 * (2.0 * std::f64::consts::PI * f / 16000.0).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in s {
        let s0 = x as f64 + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2).sqrt() / s.len().max(1) as f64
}

#[test]
fn an_offer_of_g722_alone_gets_g722_and_the_prompt_decodes() {
    let Some(m) = mcp("") else { return };
    let wav = switchboard_media::audio::write_wav(&sine(1000.0, 8000, 8000.0, 0), 8000);
    std::fs::write(m.media_dir().join("tone.wav"), wav).expect("write wav");
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = rtp.local_addr().expect("addr").port().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let collector = collect_packets(rtp, stop.clone());
    let ruri = format!("annc@{};play=file:tone.wav", m.addr());
    let g722 = ("9", "a=rtpmap:9 G722/8000");
    let out = call(&m, "mcp_call_wait_bye", &ruri, &port, g722, "");
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let packets = collector.join().expect("collector");
    assert!(out.success(), "{}", out.report());
    let mut dec = switchboard_rtp::codec::g722::G722Decoder::new();
    let mut loud = Vec::new();
    for (pt, _, _, payload) in &packets {
        assert_eq!(*pt, 9, "G.722 was answered and is sent");
        assert_eq!(payload.len(), 160, "20 ms: one octet per 8 kHz tick");
        let mut wide = [0i16; 320];
        let n = dec.decode(payload, &mut wide);
        if mean_abs(&wide[..n]) > 1000.0 {
            loud.extend_from_slice(&wide[..n]);
        }
    }
    // 1 s of prompt at 16 kHz, give or take the filters' start and end.
    assert!(
        (15000..=16640).contains(&loud.len()),
        "{} loud samples",
        loud.len()
    );
    let tone = goertzel16(&loud, 1000.0);
    assert!(tone > 2000.0, "1 kHz at {tone:.0}");
    for other in [500.0, 2000.0, 3000.0, 7000.0] {
        assert!(tone > 20.0 * goertzel16(&loud, other), "{other} Hz");
    }
}

/// Events received, one string per event: its packets as `[M]digit:duration[E]`.
fn rfc4733_events(packets: &[Packet]) -> Vec<String> {
    let mut by_ts: Vec<(u32, Vec<String>)> = Vec::new();
    for (_, marker, ts, payload) in packets.iter().filter(|p| p.0 == 101) {
        let e = switchboard_rtp::telephone_event::TelephoneEvent::parse(payload).expect("event");
        let s = format!(
            "{}{}:{}{}",
            if *marker { "M" } else { "" },
            e.digit().expect("a digit"),
            e.duration,
            if e.end { "E" } else { "" }
        );
        match by_ts.last_mut() {
            Some((t, v)) if t == ts => v.push(s),
            _ => by_ts.push((*ts, vec![s])),
        }
    }
    by_ts.into_iter().map(|(_, v)| v.join(" ")).collect()
}

/// The digits a Goertzel detector hears in the µ-law packets.
fn inband_digits(packets: &[Packet]) -> String {
    let mut det = switchboard_rtp::dtmf::DtmfDetector::default();
    let mut heard = String::new();
    let mut pcm = [0i16; 1500];
    for (_, _, _, payload) in packets.iter().filter(|p| p.0 == 0) {
        let n = g711::decode_ulaw(payload, &mut pcm);
        det.process(&pcm[..n], |d| heard.push(d.digit));
    }
    heard
}

#[test]
fn dtmf_sent_over_rest_as_rfc4733_events_or_in_band() {
    let Some(m) = mcp("") else { return };
    let post = |path: &str, body: &str| {
        http_request(m.sb.http_addr(), "POST", path, Some(body)).expect("POST")
    };
    for (i, codecs) in [PCMA_TE, PCMU].into_iter().enumerate() {
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = rtp.local_addr().expect("addr").port().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let collector = collect_packets(rtp, stop.clone());
        let ruri = format!("conf=dtmf{i}@{}", m.addr());
        let out = thread::scope(|scope| {
            let caller = scope.spawn(|| call(&m, "mcp_call", &ruri, &port, codecs, &pause(2500)));
            let deadline = Instant::now() + Duration::from_secs(5);
            let call_id = loop {
                let calls = m.calls();
                if let Some(id) = calls["active"][0]["call_id"].as_str() {
                    break id.to_owned();
                }
                assert!(Instant::now() < deadline, "no active call: {calls}");
                thread::sleep(Duration::from_millis(50));
            };
            let path = format!("/v1/mcp/sessions/{call_id}/dtmf");
            for (body, status) in [
                ("not json", 400),
                (r#"{"digits":"12x"}"#, 400),
                (r#"{"digits":""}"#, 400),
                (r#"{"digits":5}"#, 400),
            ] {
                let r = post(&path, body);
                assert_eq!(r.status, status, "{body}: {}", r.body);
                assert_eq!(r.header("content-type"), Some("application/problem+json"));
            }
            let r = post("/v1/mcp/sessions/nosuch/dtmf", r#"{"digits":"1"}"#);
            assert_eq!(r.status, 404, "{}", r.body);
            let r = post(&path, r#"{"digits":"1#9"}"#);
            assert_eq!(r.status, 202, "{}", r.body);
            caller.join().expect("sipp thread")
        });
        assert!(out.success(), "{}", out.report());
        thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        let packets = collector.join().expect("collector");
        if i == 0 {
            let one =
                |d: char| format!("M{d}:160 {d}:320 {d}:480 {d}:640 {d}:800E {d}:800E {d}:800E");
            assert_eq!(rfc4733_events(&packets), vec![one('1'), one('#'), one('9')]);
        } else {
            assert!(packets.iter().all(|p| p.0 == 0), "audio only");
            assert_eq!(inband_digits(&packets), "1#9");
        }
    }
}
