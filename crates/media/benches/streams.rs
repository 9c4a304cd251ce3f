//! How many announcement streams one pacing worker holds: N streams play a looping clip to one
//! loopback peer, which sends one G.711 packet back to every stream every 20 ms (RTP both
//! ways). Reports the media worker's CPU time per stream and the error of the outgoing packet
//! spacing as the peer sees it (|gap - 20 ms| per stream; p50, p99, max).
//!
//! ```text
//! cargo bench -p switchboard-media --bench streams                 # 500 streams, 5 s
//! BENCH_STREAMS=2000 BENCH_SECS=10 cargo bench -p switchboard-media --bench streams
//! BENCH_REALTIME=10 ...      # the pacing thread under SCHED_FIFO at priority 10
//! ```
//!
//! The peer (a receiving and a sending thread) runs in the same process on the same cores, so
//! on a small machine the spacing figures include the peer's own scheduling delays: they are
//! an upper bound of the engine's error.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_media::{
    Audio, Codec, EngineConfig, MediaEngine, PlayItem, Playlist, StreamParams, PTIME,
};
use switchboard_rtp::{RtpHeader, RtpPacket};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of the threads whose name starts with `prefix`, in clock ticks (1/100 s).
fn thread_cpu_ticks(prefix: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += num(11) + num(12);
    }
    total
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = env_num("BENCH_STREAMS", if quick { 20 } else { 500 }) as usize;
    let secs = env_num("BENCH_SECS", if quick { 1 } else { 5 });
    let workers = env_num("BENCH_WORKERS", 1) as usize;
    let realtime = env_num("BENCH_REALTIME", 0).min(99) as u8;
    let base = 30000u16;
    let (engine, _events) = MediaEngine::start(EngineConfig {
        port_min: base,
        port_max: base
            .saturating_add((n as u16).saturating_mul(2))
            .saturating_add(400),
        workers,
        rtp_timeout: None,
        realtime_priority: (realtime > 0).then_some(realtime),
        ..EngineConfig::default()
    })
    .expect("engine starts");
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
    let peer_addr = peer.local_addr().expect("addr");
    // Every stream sends to this one socket, a tick's packets within a few ms: with the
    // default buffer it overflows (the kernel caps the size at net.core.rmem_max).
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(&peer).set_recv_buffer_size(8 << 20);
    peer.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let clip = Audio::from_samples(
        (0..8000)
            .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
            .collect(),
    );
    let mut locals: Vec<SocketAddr> = Vec::with_capacity(n);
    for _ in 0..n {
        let (id, local) = engine
            .create_stream(StreamParams::new(Some(peer_addr), Codec::PCMU))
            .expect("stream");
        let mut list = Playlist::once(vec![PlayItem::Audio(clip.clone())]);
        list.repeat = None;
        engine.play(id, 1, list).expect("play");
        locals.push(local);
    }

    let stop = Arc::new(AtomicBool::new(false));
    // The peer's sending half: one packet to every stream per 20 ms.
    let sender = {
        let sock = peer.try_clone().expect("clone");
        let stop = stop.clone();
        let locals = locals.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 200];
            let payload = [0xffu8; 160];
            let mut next = Instant::now();
            let mut k: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                for (i, to) in locals.iter().enumerate() {
                    let h = RtpHeader {
                        marker: false,
                        payload_type: 0,
                        sequence: k as u16,
                        timestamp: k.wrapping_mul(160),
                        ssrc: i as u32 + 1,
                    };
                    if let Ok(len) = h.write_with_payload(&payload, &mut buf) {
                        let _ = sock.send_to(&buf[..len], to);
                    }
                }
                k = k.wrapping_add(1);
                next += PTIME;
                if let Some(w) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
            }
        })
    };

    // Warm up (latching, first ticks), then measure.
    let warm = Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 1500];
    while Instant::now() < warm {
        let _ = peer.recv_from(&mut buf);
    }
    let cpu0 = thread_cpu_ticks("media-");
    let stats0 = engine.stats();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    // Per stream: arrival time and sequence number of the last packet. Only gaps between
    // consecutive sequence numbers count (a packet the peer's socket dropped is not a gap).
    let mut last: HashMap<SocketAddr, (Instant, u16)> = HashMap::with_capacity(n);
    let mut errors: Vec<f64> = Vec::with_capacity(n * secs as usize * 50);
    let mut received = 0u64;
    while Instant::now() < end {
        let Ok((len, from)) = peer.recv_from(&mut buf) else {
            continue;
        };
        let now = Instant::now();
        let Ok(packet) = RtpPacket::parse(&buf[..len]) else {
            continue;
        };
        received += 1;
        let seq = packet.sequence();
        if let Some((prev, prev_seq)) = last.insert(from, (now, seq)) {
            if seq == prev_seq.wrapping_add(1) {
                let gap = now.duration_since(prev).as_secs_f64() * 1000.0;
                errors.push((gap - 20.0).abs());
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (thread_cpu_ticks("media-") - cpu0) as f64 / 100.0;
    let stats = engine.stats();
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    errors.sort_by(|a, b| a.total_cmp(b));

    let cpu_share = cpu / wall;
    println!(
        "streams                  {n} (workers {workers}, {secs} s measured, SCHED_FIFO {})",
        if realtime > 0 { "on" } else { "off" }
    );
    println!(
        "packets out / in         {} / {} ({} received by the peer; the rest overflowed its socket)",
        stats.packets_out - stats0.packets_out,
        stats.packets_in - stats0.packets_in,
        received
    );
    println!(
        "media worker CPU         {:.1}% of one core; {:.1} us per stream per second",
        cpu_share * 100.0,
        cpu_share * 1e6 / n as f64
    );
    println!(
        "streams per core (est.)  {:.0}",
        if cpu_share > 0.0 {
            n as f64 / cpu_share
        } else {
            f64::INFINITY
        }
    );
    println!(
        "spacing error, ms        p50 {:.3}  p99 {:.3}  max {:.3}  ({} gaps)",
        percentile(&errors, 0.5),
        percentile(&errors, 0.99),
        errors.last().copied().unwrap_or(f64::NAN),
        errors.len()
    );
    println!(
        "late sends / skipped     {} / {}",
        stats.late_out - stats0.late_out,
        stats.skipped_ticks - stats0.skipped_ticks
    );
}
