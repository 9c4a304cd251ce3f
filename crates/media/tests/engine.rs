//! The media engine over real UDP sockets on loopback: announcement pacing, RFC 4733 and
//! in-band DTMF, recording, conferences, bad packets.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use switchboard_media::audio::write_wav;
use switchboard_media::{
    Audio, Codec, DtmfSource, EngineConfig, MediaEngine, MediaEvent, MediaEventKind,
    ParticipantMode, PlayItem, Playlist, RecordEnd, RecordParams, StreamParams,
};
use switchboard_rtp::codec::g711;
use switchboard_rtp::telephone_event::TelephoneEvent;
use switchboard_rtp::tone::{ToneGenerator, ToneSpec};
use switchboard_rtp::{RtpHeader, RtpPacket};
use tokio::sync::mpsc::UnboundedReceiver;

fn engine() -> (MediaEngine, UnboundedReceiver<MediaEvent>) {
    // A port range of its own per test binary run, picked from a free ephemeral port.
    let base = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(40000)
        .clamp(20000, 60000);
    MediaEngine::start(EngineConfig {
        port_min: base,
        port_max: base + 400,
        ..EngineConfig::default()
    })
    .expect("engine starts")
}

fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s
}

fn next_event(rx: &mut UnboundedReceiver<MediaEvent>, timeout: Duration) -> Option<MediaEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(e) = rx.try_recv() {
            return Some(e);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Sender {
    seq: u16,
    ts: u32,
    ssrc: u32,
}

impl Sender {
    fn new(ssrc: u32) -> Sender {
        Sender {
            seq: 100,
            ts: 1000,
            ssrc,
        }
    }

    fn audio(&mut self, sock: &UdpSocket, to: SocketAddr, pt: u8, payload: &[u8]) {
        let h = RtpHeader {
            marker: false,
            payload_type: pt,
            sequence: self.seq,
            timestamp: self.ts,
            ssrc: self.ssrc,
        };
        let mut buf = [0u8; 1500];
        let n = h.write_with_payload(payload, &mut buf).expect("write");
        sock.send_to(&buf[..n], to).expect("send");
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(payload.len() as u32);
    }

    /// One RFC 4733 digit: 5 updates and 3 end packets, timestamp kept.
    fn digit(&mut self, sock: &UdpSocket, to: SocketAddr, pt: u8, event: u8) {
        for i in 0..8u16 {
            let ev = TelephoneEvent {
                event,
                end: i >= 5,
                volume: 10,
                duration: (i.min(5) + 1) * 160,
            };
            let h = RtpHeader {
                marker: i == 0,
                payload_type: pt,
                sequence: self.seq,
                timestamp: self.ts,
                ssrc: self.ssrc,
            };
            let mut buf = [0u8; 64];
            let n = h
                .write_with_payload(&ev.to_bytes(), &mut buf)
                .expect("write");
            sock.send_to(&buf[..n], to).expect("send");
            self.seq = self.seq.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(5));
        }
        self.ts = self.ts.wrapping_add(8 * 160);
    }
}

#[test]
fn announcement_is_paced_at_20ms_and_ends() {
    let (engine, mut events) = engine();
    let sink = peer();
    let (id, local) = engine
        .create_stream(StreamParams::new(
            Some(sink.local_addr().expect("addr")),
            Codec::PCMU,
        ))
        .expect("stream");
    assert!(local.port() % 2 == 0);
    let clip = Audio::from_samples(vec![1000; 8000]); // 1 s
    let mut list = Playlist::once(vec![PlayItem::Audio(clip)]);
    list.repeat = Some(2);
    engine.play(id, 7, list).expect("play");
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut done = None;
    while Instant::now() < deadline && done.is_none() {
        if let Ok((n, from)) = sink.recv_from(&mut buf) {
            assert_eq!(from, local, "RTP comes from the advertised port");
            let p = RtpPacket::parse(&buf[..n]).expect("valid RTP");
            assert_eq!(p.payload().len(), 160);
            if p.payload()[0] == g711::ulaw_encode_sample(1000) {
                arrivals.push((Instant::now(), p.sequence(), p.timestamp()));
            }
        }
        if let Ok(e) = events.try_recv() {
            done = Some(e);
        }
    }
    assert_eq!(
        done.map(|e| e.kind),
        Some(MediaEventKind::PlayDone {
            play: 7,
            completed: true
        })
    );
    // Stop the stream (it sends silence after the play), then drain what is still queued;
    // bounded, since a live stream would keep the socket busy forever.
    engine.remove_stream(id).expect("remove");
    sink.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let drain_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < drain_until {
        let Ok((n, _)) = sink.recv_from(&mut buf) else {
            break;
        };
        let p = RtpPacket::parse(&buf[..n]).expect("valid RTP");
        if p.payload()[0] == g711::ulaw_encode_sample(1000) {
            arrivals.push((Instant::now(), p.sequence(), p.timestamp()));
        }
    }
    assert_eq!(arrivals.len(), 100, "2 x 1 s = 100 packets of 20 ms");
    for w in arrivals.windows(2) {
        assert_eq!(w[1].1, w[0].1.wrapping_add(1));
        assert_eq!(w[1].2, w[0].2.wrapping_add(160));
    }
    let span = arrivals[99].0 - arrivals[0].0;
    assert!(
        span > Duration::from_millis(1800) && span < Duration::from_millis(3000),
        "{span:?}"
    );
}

#[test]
fn rfc4733_digits_and_bad_packets() {
    let (engine, mut events) = engine();
    let phone = peer();
    let mut params = StreamParams::new(Some(phone.local_addr().expect("addr")), Codec::PCMA);
    params.telephone_event = Some(101);
    let (id, local) = engine.create_stream(params).expect("stream");
    let mut tx = Sender::new(0x1234);
    // A malformed packet (version 1) and a short one: dropped and counted.
    phone.send_to(&[0x40; 20], local).expect("send");
    phone.send_to(&[0x80, 8, 0], local).expect("send");
    for &d in &[1u8, 2, 3, 10, 11] {
        tx.audio(&phone, local, 8, &[0xd5; 160]);
        tx.digit(&phone, local, 101, d);
    }
    let mut digits = String::new();
    while let Some(e) = next_event(&mut events, Duration::from_secs(1)) {
        if let MediaEventKind::Dtmf { digit, source } = e.kind {
            assert_eq!(source, DtmfSource::Rfc4733);
            assert_eq!(e.stream, id);
            digits.push(digit);
        }
        if digits.len() == 5 {
            break;
        }
    }
    assert_eq!(digits, "123*#");
    let st = engine.stats();
    assert!(st.malformed_in >= 2, "{st:?}");
    assert!(st.dtmf >= 5);
}

#[test]
fn a_stream_idle_for_a_while_still_hears_its_peer() {
    // Silent for 0.8 s (its RTP socket goes to the poller after 0.5 s), then RFC 4733 digits,
    // twice over with a pause between.
    let (engine, mut events) = engine();
    let phone = peer();
    let mut params = StreamParams::new(Some(phone.local_addr().expect("addr")), Codec::PCMU);
    params.telephone_event = Some(101);
    let (id, local) = engine.create_stream(params).expect("stream");
    let mut tx = Sender::new(0x4321);
    let mut digits = String::new();
    for d in [7u8, 9] {
        std::thread::sleep(Duration::from_millis(800));
        tx.digit(&phone, local, 101, d);
        while let Some(e) = next_event(&mut events, Duration::from_secs(1)) {
            if let MediaEventKind::Dtmf { digit, .. } = e.kind {
                assert_eq!(e.stream, id);
                digits.push(digit);
                break;
            }
        }
    }
    assert_eq!(digits, "79");
    let deadline = Instant::now() + Duration::from_secs(1);
    while engine.stats().packets_in < 16 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(engine.stats().packets_in, 16);
}

/// Whether `sock` receives the stream's RTP within a second.
fn gets_rtp(sock: &UdpSocket) -> bool {
    // Whatever was sent before now does not count.
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 1500];
    while sock.recv_from(&mut buf).is_ok() {}
    sock.set_nonblocking(false).expect("blocking");
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if sock.recv_from(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

#[test]
fn latching_follows_the_peer_behind_a_nat_and_drops_strays() {
    // SDP names `signalled`, but the phone's media comes from `nat`; later its NAT binding
    // moves to `moved`. Another source sending meanwhile is dropped.
    let (engine, mut events) = engine();
    let (signalled, nat, moved, stray) = (peer(), peer(), peer(), peer());
    let mut params = StreamParams::new(Some(signalled.local_addr().expect("addr")), Codec::PCMU);
    params.telephone_event = Some(101);
    let (id, local) = engine.create_stream(params).expect("stream");
    assert!(gets_rtp(&signalled), "sends to the SDP address first");
    let mut tx = Sender::new(0x5151);
    for _ in 0..3 {
        tx.audio(&nat, local, 0, &[0xff; 160]);
    }
    assert!(gets_rtp(&nat), "latched to where the media comes from");
    assert!(!gets_rtp(&signalled));
    let dropped = engine.stats().dropped_in;
    let mut other = Sender::new(0x7777);
    for _ in 0..3 {
        other.audio(&stray, local, 0, &[0xff; 160]);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while engine.stats().dropped_in < dropped + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(engine.stats().dropped_in, dropped + 3, "strays are counted");
    assert!(gets_rtp(&nat), "strays do not move the stream");
    // Six packets of the same source from the new address move it (re-latch after 5).
    for _ in 0..6 {
        tx.audio(&moved, local, 0, &[0xff; 160]);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(gets_rtp(&moved), "re-latched to the new address");
    assert!(!gets_rtp(&nat));
    tx.digit(&moved, local, 101, 5);
    let mut digit = None;
    while let Some(e) = next_event(&mut events, Duration::from_secs(1)) {
        if let MediaEventKind::Dtmf { digit: d, .. } = e.kind {
            assert_eq!(e.stream, id);
            digit = Some(d);
            break;
        }
    }
    assert_eq!(digit, Some('5'), "hears the peer at its new address");
}

#[test]
fn a_burst_after_steady_packets_is_read_at_once() {
    // A steady 20 ms peer (the engine reads one packet a tick from it), then 40 packets at
    // once, as after a network stall: they are all taken within a few ticks, not one a tick.
    let (engine, _events) = engine();
    let phone = peer();
    let params = StreamParams::new(Some(phone.local_addr().expect("addr")), Codec::PCMU);
    let (_id, local) = engine.create_stream(params).expect("stream");
    let mut tx = Sender::new(0x2468);
    for _ in 0..25 {
        tx.audio(&phone, local, 0, &[0xff; 160]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = engine.stats().packets_in;
    assert_eq!(before, 25);
    let sent = Instant::now();
    for _ in 0..40 {
        tx.audio(&phone, local, 0, &[0xff; 160]);
    }
    while engine.stats().packets_in < 65 && sent.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(engine.stats().packets_in, 65);
    // One a tick would take 800 ms.
    assert!(
        sent.elapsed() < Duration::from_millis(400),
        "{:?}",
        sent.elapsed()
    );
}

#[test]
fn inband_dtmf_from_a_sox_wav() {
    if !switchboard_testkit::require_program("sox") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let mut parts = Vec::new();
    for (i, d) in "159#".chars().enumerate() {
        let (lo, hi) = match d {
            '1' => (697, 1209),
            '5' => (770, 1336),
            '9' => (852, 1477),
            _ => (941, 1477),
        };
        let tone = dir.path().join(format!("t{i}.wav"));
        let gap = dir.path().join(format!("g{i}.wav"));
        let st = std::process::Command::new("sox")
            .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
            .arg(&tone)
            .args([
                "synth",
                "0.12",
                "sine",
                &lo.to_string(),
                "sine",
                &hi.to_string(),
            ])
            .args(["channels", "1", "gain", "-n", "-8"])
            .status()
            .expect("sox runs");
        assert!(st.success());
        let st = std::process::Command::new("sox")
            .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
            .arg(&gap)
            .args(["trim", "0", "0.1"])
            .status()
            .expect("sox runs");
        assert!(st.success());
        parts.push(tone);
        parts.push(gap);
    }
    let out = dir.path().join("dtmf.wav");
    let st = std::process::Command::new("sox")
        .args(&parts)
        .arg(&out)
        .status()
        .expect("sox runs");
    assert!(st.success());
    let audio = Audio::from_wav(&std::fs::read(&out).expect("read")).expect("wav");

    let (engine, mut events) = engine();
    let phone = peer();
    let mut params = StreamParams::new(Some(phone.local_addr().expect("addr")), Codec::PCMU);
    params.inband_dtmf = true;
    let (_id, local) = engine.create_stream(params).expect("stream");
    let mut tx = Sender::new(77);
    let mut payload = [0u8; 160];
    for chunk in audio.samples().chunks(160) {
        let n = g711::encode_ulaw(chunk, &mut payload);
        tx.audio(&phone, local, 0, &payload[..n]);
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut digits = String::new();
    while let Some(e) = next_event(&mut events, Duration::from_secs(1)) {
        if let MediaEventKind::Dtmf { digit, source } = e.kind {
            assert_eq!(source, DtmfSource::InBand);
            digits.push(digit);
        }
    }
    assert_eq!(digits, "159#");
}

#[test]
fn records_what_was_sent_and_stops_on_dtmf() {
    let (engine, mut events) = engine();
    let phone = peer();
    let mut params = StreamParams::new(Some(phone.local_addr().expect("addr")), Codec::PCMA);
    params.telephone_event = Some(101);
    let (id, local) = engine.create_stream(params).expect("stream");
    engine
        .record(
            id,
            RecordParams {
                beep: true,
                ..RecordParams::default()
            },
        )
        .expect("record");
    // Wait for the beep to go out (200 ms) before talking.
    let mut buf = [0u8; 1500];
    let mut beeped = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while beeped < 10 && Instant::now() < deadline {
        if let Ok((n, _)) = phone.recv_from(&mut buf) {
            let p = RtpPacket::parse(&buf[..n]).expect("rtp");
            let loud = p
                .payload()
                .iter()
                .any(|&c| g711::alaw_decode_sample(c).abs() > 3000);
            if loud {
                beeped += 1;
            }
        }
    }
    assert_eq!(beeped, 10, "a 200 ms beep is 10 loud packets");
    std::thread::sleep(Duration::from_millis(60));
    let mut tx = Sender::new(9);
    let mut sent = Vec::new();
    for i in 0..50 {
        let pcm: Vec<i16> = (0..160)
            .map(|k| (((i * 160 + k) as f64 * 0.05).sin() * 8000.0) as i16)
            .collect();
        let mut enc = [0u8; 160];
        g711::encode_alaw(&pcm, &mut enc);
        sent.extend(enc.iter().map(|&c| g711::alaw_decode_sample(c)));
        tx.audio(&phone, local, 8, &enc);
        std::thread::sleep(Duration::from_millis(3));
    }
    tx.digit(&phone, local, 101, 11);
    let rec = loop {
        match next_event(&mut events, Duration::from_secs(3)).map(|e| e.kind) {
            Some(MediaEventKind::RecordDone(r)) => break r,
            Some(_) => continue,
            None => panic!("no RecordDone"),
        }
    };
    assert_eq!(rec.end, RecordEnd::Dtmf('#'));
    assert!(rec.heard_speech);
    assert_eq!(rec.samples, sent);
    // Round trip through WAV.
    let wav = write_wav(&rec.samples, 8000);
    assert_eq!(
        Audio::from_wav(&wav).expect("wav").samples(),
        &rec.samples[..]
    );
}

fn goertzel(s: &[i16], f: f64) -> f64 {
    let c = 2.0 * (2.0 * std::f64::consts::PI * f / 8000.0).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in s {
        let s0 = x as f64 + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2).sqrt() / s.len() as f64
}

#[test]
fn three_party_conference_each_hears_the_others() {
    let (engine, _events) = engine();
    let freqs = [500.0, 1000.0, 1500.0];
    let phones: Vec<UdpSocket> = (0..3).map(|_| peer()).collect();
    let mut locals = Vec::new();
    for p in &phones {
        let mut params = StreamParams::new(Some(p.local_addr().expect("addr")), Codec::PCMU);
        params.affinity = Some(42);
        let (id, local) = engine.create_stream(params).expect("stream");
        engine
            .join(id, "room", ParticipantMode::Normal)
            .expect("join");
        locals.push(local);
    }
    let mut senders: Vec<Sender> = (0..3).map(|i| Sender::new(100 + i)).collect();
    let mut received: Vec<Vec<i16>> = vec![Vec::new(); 3];
    let mut buf = [0u8; 1500];
    for p in &phones {
        p.set_nonblocking(true).expect("nonblocking");
    }
    let start = Instant::now();
    for frame in 0..75u32 {
        for (i, p) in phones.iter().enumerate() {
            let pcm: Vec<i16> = (0..160)
                .map(|k| {
                    let t = (frame * 160 + k) as f64 / 8000.0;
                    ((2.0 * std::f64::consts::PI * freqs[i] * t).sin() * 6000.0) as i16
                })
                .collect();
            let mut enc = [0u8; 160];
            g711::encode_ulaw(&pcm, &mut enc);
            senders[i].audio(p, locals[i], 0, &enc);
        }
        let until = start + Duration::from_millis(20 * (frame as u64 + 1));
        while Instant::now() < until {
            for (i, p) in phones.iter().enumerate() {
                while let Ok((n, _)) = p.recv_from(&mut buf) {
                    if let Ok(pkt) = RtpPacket::parse(&buf[..n]) {
                        received[i]
                            .extend(pkt.payload().iter().map(|&c| g711::ulaw_decode_sample(c)));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for (i, r) in received.iter().enumerate() {
        assert!(r.len() > 8000, "party {i} got {} samples", r.len());
        let tail = &r[r.len() - 4000..];
        let levels: Vec<f64> = freqs.iter().map(|&f| goertzel(tail, f)).collect();
        for (j, l) in levels.iter().enumerate() {
            if j == i {
                assert!(*l < 100.0, "party {i} hears itself: {levels:?}");
            } else {
                assert!(*l > 1000.0, "party {i} does not hear {j}: {levels:?}");
            }
        }
    }
}

#[test]
fn rtcp_reports_go_to_the_rtp_port_plus_one_and_bye_ends_the_stream() {
    use switchboard_rtp::rtcp::{parse_compound, RtcpPacket, RtcpWriter};
    let base = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(40000)
        .clamp(20000, 60000);
    let (engine, _events) = MediaEngine::start(EngineConfig {
        port_min: base,
        port_max: base + 400,
        rtcp_interval: Duration::from_millis(300),
        ..EngineConfig::default()
    })
    .expect("engine starts");
    // The peer's RTP and RTCP sockets on adjacent ports.
    let (rtp, rtcp) = (0..50)
        .find_map(|_| {
            let rtp = UdpSocket::bind("127.0.0.1:0").ok()?;
            let port = rtp.local_addr().ok()?.port();
            let rtcp = UdpSocket::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
            Some((rtp, rtcp))
        })
        .expect("adjacent ports");
    rtcp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let (id, local) = engine
        .create_stream(StreamParams::new(
            Some(rtp.local_addr().expect("addr")),
            Codec::PCMU,
        ))
        .expect("stream");
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(3);
    let (n, from) = loop {
        assert!(Instant::now() < deadline, "no RTCP report");
        if let Ok(r) = rtcp.recv_from(&mut buf) {
            break r;
        }
    };
    assert_eq!(
        from.port(),
        local.port() + 1,
        "RTCP comes from the RTP port + 1"
    );
    let first = parse_compound(&buf[..n])
        .next()
        .expect("a packet")
        .expect("valid");
    assert!(
        matches!(first, RtcpPacket::SenderReport(_)),
        "we send media, so an SR: {first:?}"
    );
    // The peer's receiver report is taken in.
    let mut rr = [0u8; 64];
    let len = {
        let mut w = RtcpWriter::new(&mut rr);
        w.receiver_report(0x77, &[]).expect("rr");
        w.finish()
    };
    rtcp.send_to(&rr[..len], from).expect("send");
    let deadline = Instant::now() + Duration::from_secs(2);
    while engine.stats().rtcp_in == 0 {
        assert!(Instant::now() < deadline, "RTCP from the peer not read");
        std::thread::sleep(Duration::from_millis(20));
    }
    engine.remove_stream(id).expect("remove");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        assert!(Instant::now() < deadline, "no RTCP BYE");
        let Ok((n, _)) = rtcp.recv_from(&mut buf) else {
            continue;
        };
        if parse_compound(&buf[..n]).any(|p| matches!(p, Ok(RtcpPacket::Bye(_)))) {
            break;
        }
    }
}

fn goertzel_at(s: &[i16], f: f64, rate: f64) -> f64 {
    let c = 2.0 * (2.0 * std::f64::consts::PI * f / rate).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in s {
        let s0 = x as f64 + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2).sqrt() / s.len().max(1) as f64
}

/// Receives RTP at `sock` for `dur`: (payload type, marker, timestamp, payload) of each packet.
fn receive_rtp(sock: &UdpSocket, dur: Duration) -> Vec<(u8, bool, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + dur;
    while Instant::now() < deadline {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let p = RtpPacket::parse(&buf[..n]).expect("valid RTP");
            out.push((
                p.payload_type(),
                p.marker(),
                p.timestamp(),
                p.payload().to_vec(),
            ));
        }
    }
    out
}

#[test]
fn g722_stream_plays_and_records_8khz_audio() {
    let (engine, mut events) = engine();
    let phone = peer();
    let params = StreamParams::new(Some(phone.local_addr().expect("addr")), Codec::G722);
    let (id, local) = engine.create_stream(params).expect("stream");
    let clip: Vec<i16> = (0..8000)
        .map(|i| ((i as f64 * 2.0 * std::f64::consts::PI / 8.0).sin() * 8000.0) as i16)
        .collect(); // 1 kHz
    engine
        .play(
            id,
            1,
            Playlist::once(vec![PlayItem::Audio(Audio::from_samples(clip))]),
        )
        .expect("play");
    engine.record(id, RecordParams::default()).expect("record");
    // The phone talks G.722 too: a 1 kHz tone at 16 kHz, 20 ms (160 octets) per packet.
    let mut enc = switchboard_rtp::codec::g722::G722Encoder::new();
    let mut tx = Sender::new(5);
    for i in 0..50 {
        let wide: Vec<i16> = (0..320)
            .map(|k| {
                (((i * 320 + k) as f64 * 2.0 * std::f64::consts::PI / 16.0).sin() * 8000.0) as i16
            })
            .collect();
        let mut payload = [0u8; 160];
        assert_eq!(enc.encode(&wide, &mut payload), 160);
        tx.audio(&phone, local, 9, &payload);
        std::thread::sleep(Duration::from_millis(4));
    }
    let got = receive_rtp(&phone, Duration::from_millis(600));
    assert!(got.len() >= 20, "{} packets", got.len());
    let mut dec = switchboard_rtp::codec::g722::G722Decoder::new();
    let mut wide = Vec::new();
    for (pt, _, _, payload) in &got {
        assert_eq!(*pt, 9, "G.722's static payload type");
        assert_eq!(payload.len(), 160, "one octet per 8 kHz tick");
        let mut out = [0i16; 320];
        let n = dec.decode(payload, &mut out);
        wide.extend_from_slice(&out[..n]);
    }
    let heard = &wide[1600..];
    let tone = goertzel_at(heard, 1000.0, 16000.0);
    assert!(tone > 2000.0, "1 kHz at {tone:.0}");
    assert!(tone > 20.0 * goertzel_at(heard, 3000.0, 16000.0));
    assert!(
        tone > 20.0 * goertzel_at(heard, 7000.0, 16000.0),
        "no image"
    );
    engine.stop_record(id).expect("stop");
    let rec = loop {
        match next_event(&mut events, Duration::from_secs(3)).map(|e| e.kind) {
            Some(MediaEventKind::RecordDone(r)) => break r,
            Some(_) => continue,
            None => panic!("no RecordDone"),
        }
    };
    // 50 packets of 20 ms, recorded at 8 kHz.
    assert_eq!(rec.samples.len(), 8000);
    let body = &rec.samples[400..7600];
    let tone = goertzel(body, 1000.0);
    assert!(tone > 2000.0, "1 kHz at {tone:.0}");
    assert!(tone > 20.0 * goertzel(body, 2500.0));
}

#[test]
fn sends_rfc4733_digits_with_three_end_packets() {
    let (engine, _events) = engine();
    let phone = peer();
    let mut params = StreamParams::new(Some(phone.local_addr().expect("addr")), Codec::PCMA);
    params.telephone_event = Some(101);
    let (id, _local) = engine.create_stream(params).expect("stream");
    assert!(engine.send_dtmf(id, "12x").is_err(), "not a digit");
    assert!(engine.send_dtmf(id, "").is_err());
    engine.send_dtmf(id, "1#").expect("send");
    engine.send_dtmf(id, "*").expect("queued after");
    let got = receive_rtp(&phone, Duration::from_millis(1200));
    let events: Vec<_> = got.iter().filter(|p| p.0 == 101).collect();
    let mut by_ts: Vec<(u32, Vec<String>)> = Vec::new();
    for (_, marker, ts, payload) in &events {
        let e = TelephoneEvent::parse(payload).expect("event");
        let s = format!(
            "{}{}:{}{}",
            if *marker { "M" } else { "" },
            e.digit().expect("digit"),
            e.duration,
            if e.end { "E" } else { "" }
        );
        match by_ts.last_mut() {
            Some((t, v)) if t == ts => v.push(s),
            _ => by_ts.push((*ts, vec![s])),
        }
    }
    let digits: Vec<String> = by_ts.iter().map(|(_, v)| v.join(" ")).collect();
    let one = |d: char| format!("M{d}:160 {d}:320 {d}:480 {d}:640 {d}:800E {d}:800E {d}:800E");
    assert_eq!(digits, vec![one('1'), one('#'), one('*')]);
    // 100 ms of tone and 100 ms of pause (plus the two end repeats) from one to the next.
    assert_eq!(by_ts[1].0.wrapping_sub(by_ts[0].0), 12 * 160);
    // Audio goes on around the events, with a timestamp that kept running.
    let audio: Vec<_> = got.iter().filter(|p| p.0 == 8).collect();
    assert!(audio.len() >= 10);
    assert!(audio
        .windows(2)
        .all(|w| w[1].2.wrapping_sub(w[0].2) % 160 == 0));
}

/// DTMF tones: `tone_ms` of each digit then `gap_ms` of silence, 8 kHz.
fn dtmf_audio(digits: &str, tone_ms: u32, gap_ms: u32) -> Vec<i16> {
    let mut out = Vec::new();
    for d in digits.chars() {
        let spec = ToneSpec::dtmf(d, tone_ms, gap_ms).expect("digit");
        let mut g = ToneGenerator::new(spec, 8000);
        let mut buf = vec![0i16; ((tone_ms + gap_ms) * 8) as usize];
        let n = g.fill(&mut buf);
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn sends_inband_digits_without_telephone_event() {
    let (engine, _events) = engine();
    let phone = peer();
    let params = StreamParams::new(Some(phone.local_addr().expect("addr")), Codec::PCMU);
    let (id, _local) = engine.create_stream(params).expect("stream");
    engine.send_dtmf(id, "159D").expect("send");
    let got = receive_rtp(&phone, Duration::from_millis(1200));
    let mut det = switchboard_rtp::dtmf::DtmfDetector::default();
    let mut heard = String::new();
    let mut pcm = [0i16; 160];
    for (pt, _, _, payload) in &got {
        assert_eq!(*pt, 0, "audio only");
        let n = g711::decode_ulaw(payload, &mut pcm);
        det.process(&pcm[..n], |d| heard.push(d.digit));
    }
    assert_eq!(heard, "159D");
}

#[test]
fn inband_dtmf_from_reordered_packets() {
    let (engine, mut events) = engine();
    let phone = peer();
    let mut params = StreamParams::new(Some(phone.local_addr().expect("addr")), Codec::PCMU);
    params.inband_dtmf = true;
    let (_id, local) = engine.create_stream(params).expect("stream");
    // 60 ms of tone, 60 ms of silence per digit: 3 + 3 packets. Each group of six goes out
    // tone/silence interleaved (t0 g0 t1 g1 t2 g2): heard in arrival order, no tone would
    // last longer than 20 ms and no digit would be found. All of it goes out in one burst,
    // as a worker whose tick is late finds it: more packets than the reorder buffer holds.
    let audio = dtmf_audio("2580", 60, 60);
    let packets: Vec<[u8; 160]> = audio
        .chunks_exact(160)
        .map(|c| {
            let mut p = [0u8; 160];
            g711::encode_ulaw(c, &mut p);
            p
        })
        .collect();
    let order: Vec<usize> = (0..packets.len() / 6)
        .flat_map(|g| [0, 3, 1, 4, 2, 5].map(|i| g * 6 + i))
        .collect();
    let mut buf = [0u8; 200];
    for &i in &order {
        let h = RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: 500 + i as u16,
            timestamp: 9000 + i as u32 * 160,
            ssrc: 31,
        };
        let n = h.write_with_payload(&packets[i], &mut buf).expect("write");
        phone.send_to(&buf[..n], local).expect("send");
    }
    let mut digits = String::new();
    while let Some(e) = next_event(&mut events, Duration::from_secs(1)) {
        if let MediaEventKind::Dtmf { digit, source } = e.kind {
            assert_eq!(source, DtmfSource::InBand);
            digits.push(digit);
        }
    }
    assert_eq!(digits, "2580");
}

/// 20 ms of 16 kHz audio for frame `frame` of what the G.722 party says: 1 kHz for 0.8 s, then
/// DTMF 7 and 3 (100 ms each, 100 ms apart), then silence.
fn wideband_talk(frame: u32, dtmf: &mut ToneGenerator, second: &mut ToneGenerator) -> Vec<i16> {
    let mut out = vec![0i16; 320];
    if frame < 40 {
        for (k, o) in out.iter_mut().enumerate() {
            let t = (frame as usize * 320 + k) as f64 / 16000.0;
            *o = ((2.0 * std::f64::consts::PI * 1000.0 * t).sin() * 6000.0) as i16;
        }
    } else if !dtmf.is_done() {
        dtmf.fill(&mut out);
    } else {
        second.fill(&mut out);
    }
    out
}

#[test]
fn g722_and_pcmu_parties_hear_each_other_and_g722_dtmf_is_detected() {
    let (engine, mut events) = engine();
    let (a, b) = (peer(), peer());
    let mut pa = StreamParams::new(Some(a.local_addr().expect("addr")), Codec::G722);
    pa.affinity = Some(7);
    pa.inband_dtmf = true;
    let mut pb = StreamParams::new(Some(b.local_addr().expect("addr")), Codec::PCMU);
    pb.affinity = Some(7);
    let (ida, la) = engine.create_stream(pa).expect("stream");
    let (idb, lb) = engine.create_stream(pb).expect("stream");
    for id in [ida, idb] {
        engine
            .join(id, "wb", ParticipantMode::Normal)
            .expect("join");
    }
    a.set_nonblocking(true).expect("nonblocking");
    b.set_nonblocking(true).expect("nonblocking");
    let spec = |d| ToneSpec::dtmf(d, 100, 100).expect("digit");
    let (mut d7, mut d3) = (
        ToneGenerator::new(spec('7'), 16000),
        ToneGenerator::new(spec('3'), 16000),
    );
    let mut enc = switchboard_rtp::codec::g722::G722Encoder::new();
    let mut dec = switchboard_rtp::codec::g722::G722Decoder::new();
    let (mut ta, mut tb) = (Sender::new(1), Sender::new(2));
    // What each party heard in the middle of the 1 kHz talk (0.3 to 0.7 s).
    let (mut heard_a, mut heard_b) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    for frame in 0..75u32 {
        let mut payload = [0u8; 160];
        enc.encode(&wideband_talk(frame, &mut d7, &mut d3), &mut payload);
        ta.audio(&a, la, 9, &payload);
        let narrow: Vec<i16> = (0..160)
            .map(|k| {
                let t = (frame * 160 + k) as f64 / 8000.0;
                ((2.0 * std::f64::consts::PI * 500.0 * t).sin() * 6000.0) as i16
            })
            .collect();
        g711::encode_ulaw(&narrow, &mut payload);
        tb.audio(&b, lb, 0, &payload);
        let keep = (15..35).contains(&frame);
        let until = start + Duration::from_millis(20 * (frame as u64 + 1));
        while Instant::now() < until {
            while let Ok((n, _)) = a.recv_from(&mut buf) {
                let pkt = RtpPacket::parse(&buf[..n]).expect("rtp");
                assert_eq!(pkt.payload_type(), 9);
                let mut wide = [0i16; 320];
                let k = dec.decode(pkt.payload(), &mut wide);
                if keep {
                    heard_a.extend_from_slice(&wide[..k]);
                }
            }
            while let Ok((n, _)) = b.recv_from(&mut buf) {
                let pkt = RtpPacket::parse(&buf[..n]).expect("rtp");
                if keep {
                    heard_b.extend(pkt.payload().iter().map(|&c| g711::ulaw_decode_sample(c)));
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // The mix is 8 kHz: the G.722 party hears the other at 500 Hz (and not itself) ...
    assert!(heard_a.len() > 5000, "{}", heard_a.len());
    let (five, one) = (
        goertzel_at(&heard_a, 500.0, 16000.0),
        goertzel_at(&heard_a, 1000.0, 16000.0),
    );
    assert!(
        five > 1000.0 && one < 100.0,
        "500 Hz {five:.0}, 1 kHz {one:.0}"
    );
    // ... and the G.711 party hears the G.722 party's 1 kHz.
    assert!(heard_b.len() > 2500, "{}", heard_b.len());
    let (five, one) = (goertzel(&heard_b, 500.0), goertzel(&heard_b, 1000.0));
    assert!(
        one > 1000.0 && five < 100.0,
        "500 Hz {five:.0}, 1 kHz {one:.0}"
    );
    // The detector hears the G.722 party's digits (decoded and brought to 8 kHz).
    let mut digits = String::new();
    while let Some(e) = next_event(&mut events, Duration::from_millis(500)) {
        if let MediaEventKind::Dtmf { digit, source } = e.kind {
            assert_eq!((e.stream, source), (ida, DtmfSource::InBand));
            digits.push(digit);
        }
    }
    assert_eq!(digits, "73");
}
