//! Sustained load in simulated time: the deadline queue stays proportional to the live
//! transactions. The hot path's throughput is measured in `benches/transactions.rs`.

use bytes::Bytes;
use std::time::{Duration, Instant};
use switchboard_sip::build::response_to;
use switchboard_sip::transaction::{Incoming, Timers, Transactions};
use switchboard_sip::{Message, Peer};

fn invite(branch: &str, call: u64) -> Message {
    Message::parse(Bytes::from(format!(
        "INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=f{call}\r\n\
To: <sip:bob@b.example>\r\n\
Call-ID: load-{call}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@192.0.2.1>\r\n\
Content-Length: 0\r\n\r\n"
    )))
    .expect("parses")
}

fn reply(req: &Message, code: u16) -> Message {
    Message::parse(response_to(req, code, Some("t")).finish()).expect("parses")
}

#[test]
fn timer_queue_stays_proportional_to_live_transactions() {
    let t0 = Instant::now();
    let mut txs = Transactions::new(Timers::default());
    let peer = Peer::udp("192.0.2.2:5060".parse().unwrap());
    let mut worst_ratio: f64 = 0.0;
    // 50 calls/s for 300 s: every answered call leaves a 181 s Timer C entry behind.
    for call in 0..15_000u64 {
        let now = t0 + Duration::from_millis(call * 20);
        txs.handle_timeout(now);
        let req = invite(&format!("z9hG4bKload{call}"), call);
        txs.send_request(req.clone(), peer, now).unwrap();
        assert!(matches!(
            txs.handle_incoming(reply(&req, 180), peer, now),
            Incoming::Response { .. }
        ));
        assert!(matches!(
            txs.handle_incoming(reply(&req, 200), peer, now),
            Incoming::Response { .. }
        ));
        while txs.poll_transmit().is_some() {}
        while txs.poll_event().is_some() {}
        let live = txs.len().1;
        if call > 5_000 {
            let ratio = txs.queued_timers() as f64 / live as f64;
            worst_ratio = worst_ratio.max(ratio);
        }
    }
    // Timer M keeps each call for 32 s: about 1600 live.
    let live = txs.len().1;
    assert!((1_500..=1_650).contains(&live), "live = {live}");
    assert!(
        txs.queued_timers() <= 4 * live + 1024,
        "queue {} for {live} live",
        txs.queued_timers()
    );
    assert!(worst_ratio < 5.0, "worst queue/live ratio {worst_ratio}");
    // Everything drains.
    txs.handle_timeout(t0 + Duration::from_secs(1_000));
    assert!(txs.is_empty());
    assert_eq!(txs.poll_timeout(), None);
}
