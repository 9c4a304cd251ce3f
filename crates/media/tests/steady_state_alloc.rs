//! The pacing workers allocate nothing per packet once streams are running (ARCHITECTURE.md,
//! principle 5): a counting global allocator watches the engine's `media-*` threads while 40
//! streams play a looping clip and receive one packet every 20 ms each, RTCP included.
//!
//! This file holds one test on purpose: the allocator counts for the whole test binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_media::{
    Audio, Codec, EngineConfig, MediaEngine, PlayItem, Playlist, StreamParams, PTIME,
};
use switchboard_rtp::RtpHeader;

struct Counting;

static MEDIA_ALLOCS: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Unknown,
    Asking,
    Media,
    Other,
}

thread_local! {
    static KIND: Cell<Kind> = const { Cell::new(Kind::Unknown) };
}

/// Whether the current thread is a media worker. The name look-up may allocate itself, so the
/// thread counts as `Other` while it is being asked.
fn on_media_thread() -> bool {
    KIND.try_with(|k| match k.get() {
        Kind::Media => true,
        Kind::Other | Kind::Asking => false,
        Kind::Unknown => {
            k.set(Kind::Asking);
            let media = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("media-"));
            k.set(if media { Kind::Media } else { Kind::Other });
            media
        }
    })
    .unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_media_thread() {
            MEDIA_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_media_thread() {
            MEDIA_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const STREAMS: usize = 40;

/// One G.711 packet to every stream per 20 ms until `stop`.
fn peer_sender(sock: UdpSocket, to: Vec<SocketAddr>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 200];
    let payload = [0xffu8; 160];
    let mut next = Instant::now();
    let mut k: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        for (i, addr) in to.iter().enumerate() {
            let h = RtpHeader {
                marker: false,
                payload_type: 0,
                sequence: k as u16,
                timestamp: k.wrapping_mul(160),
                ssrc: i as u32 + 1,
            };
            if let Ok(len) = h.write_with_payload(&payload, &mut buf) {
                let _ = sock.send_to(&buf[..len], addr);
            }
        }
        k = k.wrapping_add(1);
        next += PTIME;
        if let Some(w) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
    }
}

/// Receives what the engine sends until `until`; returns the packet count.
fn drain_until(peer: &UdpSocket, until: Instant) -> u64 {
    let mut buf = [0u8; 1500];
    let mut n = 0;
    while Instant::now() < until {
        if peer.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    n
}

#[test]
fn media_workers_do_not_allocate_in_steady_state() {
    // A port range of its own, from a free ephemeral port (ports in use are skipped).
    let base = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(40000)
        .clamp(20000, 60000);
    let (engine, _events) = MediaEngine::start(EngineConfig {
        port_min: base,
        port_max: base + 400,
        workers: 1,
        rtp_timeout: None,
        ..EngineConfig::default()
    })
    .expect("engine starts");
    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
    peer.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let clip = Audio::from_samples((0..4000).map(|i| ((i % 40) * 400) as i16).collect());
    let mut locals = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let (id, local) = engine
            .create_stream(StreamParams::new(
                Some(peer.local_addr().expect("addr")),
                Codec::PCMU,
            ))
            .expect("stream");
        let mut list = Playlist::once(vec![PlayItem::Audio(clip.clone())]);
        list.repeat = None; // loop for ever: prompt changes happen inside the window
        engine.play(id, 1, list).expect("play");
        locals.push(local);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (sock, stop) = (peer.try_clone().expect("clone"), stop.clone());
        std::thread::spawn(move || peer_sender(sock, locals, stop))
    };

    // Warm-up: latching, buffers growing to their working size, the first RTCP reports.
    drain_until(&peer, Instant::now() + Duration::from_secs(7));
    let before = MEDIA_ALLOCS.load(Ordering::Relaxed);
    // Setting the streams up allocates on the worker: proof that the counter sees it.
    assert!(before > 0, "no allocation seen on a media-* thread at all");
    let received = drain_until(&peer, Instant::now() + Duration::from_secs(6));
    let allocs = MEDIA_ALLOCS.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();

    // 40 streams x 50 packets/s x 6 s = 12,000 packets each way when nothing is lost.
    assert!(
        received > 6_000,
        "the engine sent too little to judge: {received} packets"
    );
    assert_eq!(
        allocs, 0,
        "media worker threads allocated {allocs} times while {received} packets went out"
    );
}
