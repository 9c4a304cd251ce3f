//! The transaction layer's hot path: one call's INVITE server transaction (request in, 180 and
//! 200 out, a retransmission absorbed) and its client transaction (request out, 180 and 200 in),
//! seven messages and two response parses per iteration.
//!
//! Run: `cargo bench -p switchboard-sip --bench transactions -- --warm-up-time 1 --measurement-time 3`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};
use switchboard_sip::build::response_to;
use switchboard_sip::transaction::{Incoming, Timers, Transactions};
use switchboard_sip::{Message, Peer};

fn invite(call: u64) -> Message {
    Message::parse(Bytes::from(format!(
        "INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKperf{call}\r\n\
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

fn invite_call(c: &mut Criterion) {
    let t0 = Instant::now();
    let peer = Peer::udp("192.0.2.2:5060".parse().expect("address"));
    let mut server = Transactions::new(Timers::default());
    let mut client = Transactions::new(Timers::default());
    let mut call = 0u64;
    let mut g = c.benchmark_group("transactions");
    g.throughput(Throughput::Elements(1));
    g.bench_function("invite_call", |b| {
        b.iter_batched(
            || {
                call += 1;
                let req = invite(call);
                let ringing = response_to(&req, 180, Some("t")).finish();
                let ok = response_to(&req, 200, Some("t")).finish();
                (call, req, ringing, ok)
            },
            |(call, req, ringing, ok)| {
                let now = t0 + Duration::from_micros(call * 100);
                let Incoming::Request { tx, .. } = server.handle_incoming(req.clone(), peer, now)
                else {
                    panic!("a new INVITE is a new server transaction");
                };
                server
                    .send_response_bytes(tx, 180, ringing.clone(), now)
                    .expect("180");
                server
                    .send_response_bytes(tx, 200, ok.clone(), now)
                    .expect("200");
                server.handle_incoming(req.clone(), peer, now);
                client.send_request(req, peer, now).expect("INVITE");
                client.handle_incoming(Message::parse(ringing).expect("180"), peer, now);
                client.handle_incoming(Message::parse(ok).expect("200"), peer, now);
                for txs in [&mut server, &mut client] {
                    txs.handle_timeout(now);
                    while txs.poll_transmit().is_some() {}
                    while txs.poll_event().is_some() {}
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, invite_call);
criterion_main!(benches);
