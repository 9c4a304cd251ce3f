//! Random bytes never panic any parser, and what we write parses back.

use std::time::Instant;

use proptest::prelude::*;
use switchboard_rtp::codec::g722::G722Decoder;
use switchboard_rtp::jitter::{JitterBuffer, JitterConfig};
use switchboard_rtp::rtcp::{parse_compound, validate_compound};
use switchboard_rtp::session::{Latch, RtpReceiver, RtpSender, RtpSession};
use switchboard_rtp::telephone_event::{DtmfReceiver, TelephoneEvent};
use switchboard_rtp::{RtpHeader, RtpPacket};

proptest! {
    #[test]
    fn rtp_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = RtpPacket::parse(&bytes) {
            prop_assert!(p.header_len() + p.payload().len() <= bytes.len());
            let _ = (p.csrcs().count(), p.extension(), p.header());
        }
    }

    #[test]
    fn rtp_with_version_2_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 12..300)) {
        bytes[0] = 0x80 | (bytes[0] & 0x3f);
        let _ = RtpPacket::parse(&bytes);
        let mut rx = RtpReceiver::new(8000, &[0, 8, 101], None, Latch::new(None, 2));
        let from = "192.0.2.1:4000".parse().unwrap();
        let _ = rx.handle_datagram(&bytes, from, Instant::now());
    }

    #[test]
    fn rtcp_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = validate_compound(&bytes);
        for p in parse_compound(&bytes).flatten() {
            if let switchboard_rtp::rtcp::RtcpPacket::Sdes(s) = p {
                for c in s.chunks() {
                    let _ = c.items().count();
                }
            }
        }
        if !bytes.is_empty() {
            bytes[0] = 0x80 | (bytes[0] & 0x3f);
        }
        let mut s = RtpSession::new(
            RtpSender::new(1, 0, 0, 8000),
            RtpReceiver::new(8000, &[0], None, Latch::new(None, 0)),
        );
        let _ = s.handle_rtcp(&bytes, Instant::now());
    }

    #[test]
    fn rtp_header_round_trip(m in any::<bool>(), pt in 0u8..128, seq in any::<u16>(), ts in any::<u32>(), ssrc in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        prop_assume!(!(m && (72..=76).contains(&pt)));
        let h = RtpHeader { marker: m, payload_type: pt, sequence: seq, timestamp: ts, ssrc };
        let mut buf = [0u8; 256];
        let n = h.write_with_payload(&payload, &mut buf).unwrap();
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        prop_assert_eq!(p.header(), h);
        prop_assert_eq!(p.payload(), &payload[..]);
    }

    #[test]
    fn events_jitter_and_g722_never_panic(
        packets in proptest::collection::vec((any::<u16>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..40)
    ) {
        let now = Instant::now();
        let mut rx = DtmfReceiver::new();
        let mut jb = JitterBuffer::new(JitterConfig { capacity: 8, max_payload: 32, playout_delay: 0 });
        let mut dec = G722Decoder::new();
        let mut out = [0u8; 32];
        let mut pcm = [0i16; 80];
        for (seq, ts, payload) in &packets {
            let _ = TelephoneEvent::parse(payload);
            let _ = rx.on_packet(*ts, payload, now);
            let _ = jb.push(*seq, *ts, false, payload);
            let _ = jb.pop(&mut out);
            dec.decode(payload, &mut pcm);
        }
        let _ = rx.handle_timeout(now + std::time::Duration::from_secs(1));
    }
}
