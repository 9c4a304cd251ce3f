//! Per-frame costs of the media hot paths.
//!
//! `CARGO_TARGET_DIR=target-media cargo bench -p switchboard-rtp`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::time::Instant;
use switchboard_rtp::codec::{g711, g722};
use switchboard_rtp::dtmf::DtmfDetector;
use switchboard_rtp::session::{Latch, RtpReceiver, RtpSender};

fn frame_8k() -> [i16; 160] {
    let mut f = [0i16; 160];
    for (n, s) in f.iter_mut().enumerate() {
        let t = n as f32 / 8000.0;
        *s = (8000.0 * (2.0 * std::f32::consts::PI * 697.0 * t).sin()
            + 9000.0 * (2.0 * std::f32::consts::PI * 1209.0 * t).sin()) as i16;
    }
    f
}

fn g711_benches(c: &mut Criterion) {
    let pcm = frame_8k();
    let mut enc = [0u8; 160];
    let mut dec = [0i16; 160];
    c.bench_function("g711 ulaw encode 20ms", |b| {
        b.iter(|| g711::encode_ulaw(black_box(&pcm), &mut enc))
    });
    g711::encode_ulaw(&pcm, &mut enc);
    c.bench_function("g711 ulaw decode 20ms", |b| {
        b.iter(|| g711::decode_ulaw(black_box(&enc), &mut dec))
    });
    c.bench_function("g711 alaw encode 20ms", |b| {
        b.iter(|| g711::encode_alaw(black_box(&pcm), &mut enc))
    });
    c.bench_function("g711 alaw decode 20ms", |b| {
        b.iter(|| g711::decode_alaw(black_box(&enc), &mut dec))
    });
}

fn g722_benches(c: &mut Criterion) {
    let mut wide = [0i16; 320];
    for (n, s) in wide.iter_mut().enumerate() {
        *s = (8000.0 * (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / 16000.0).sin()) as i16;
    }
    let mut enc = g722::G722Encoder::new();
    let mut dec = g722::G722Decoder::new();
    let mut bits = [0u8; 160];
    let mut out = [0i16; 320];
    c.bench_function("g722 encode 20ms", |b| {
        b.iter(|| enc.encode(black_box(&wide), &mut bits))
    });
    c.bench_function("g722 decode 20ms", |b| {
        b.iter(|| dec.decode(black_box(&bits), &mut out))
    });
}

fn dtmf_bench(c: &mut Criterion) {
    let pcm = frame_8k();
    let mut det = DtmfDetector::default();
    c.bench_function("dtmf detector 20ms", |b| {
        b.iter(|| {
            det.process(black_box(&pcm), |d| {
                black_box(d);
            })
        })
    });
    // Audio that is not DTMF (a 1 kHz tone at -9 dBm0, what the load benchmark's calls send):
    // every window is analysed and rejected.
    let tone: [i16; 160] = std::array::from_fn(|n| {
        (8000.0 * (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / 8000.0).sin()) as i16
    });
    let mut det = DtmfDetector::default();
    c.bench_function("dtmf detector 20ms not dtmf", |b| {
        b.iter(|| {
            det.process(black_box(&tone), |d| {
                black_box(d);
            })
        })
    });
    // Most of a call's windows: quiet (line noise at about -60 dBm0).
    let quiet: [i16; 160] = std::array::from_fn(|n| ((n * 7919) % 13) as i16 - 6);
    let mut det = DtmfDetector::default();
    c.bench_function("dtmf detector 20ms quiet", |b| {
        b.iter(|| {
            det.process(black_box(&quiet), |d| {
                black_box(d);
            })
        })
    });
}

fn rtp_bench(c: &mut Criterion) {
    let now = Instant::now();
    let mut tx = RtpSender::new(1, 0, 0, 8000);
    let mut rx = RtpReceiver::new(8000, &[0], None, Latch::new(None, 0));
    let from = "192.0.2.1:4000".parse().unwrap();
    let pcm = frame_8k();
    let mut buf = [0u8; 200];
    c.bench_function("rtp send (ulaw encode into packet) + receive", |b| {
        b.iter(|| {
            let n = tx
                .write_audio_with(0, 160, &mut buf, now, |o| g711::encode_ulaw(&pcm, o))
                .unwrap_or(0);
            let r = rx.handle_datagram(black_box(&buf[..n]), from, now);
            black_box(r.is_ok())
        })
    });
}

criterion_group!(benches, g711_benches, g722_benches, dtmf_bench, rtp_bench);
criterion_main!(benches);
