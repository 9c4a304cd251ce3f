//! Parser benches. `parse_invite` frames a 785-byte INVITE with SDP and extracts what a
//! transaction layer needs first (top Via branch, Call-ID, CSeq number and method, From tag,
//! To tag), once with this crate and once with rsipstack 0.7 on the same bytes in the same run.
//! `validate` and `forward_edit` measure the rest of a proxy's per-request parsing work.
//!
//! Run: `cargo bench -p switchboard-sip --bench parse -- --warm-up-time 1 --measurement-time 3`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rsipstack::sip::prelude::*;
use switchboard_sip::Message;

/// A first INVITE from a phone to the platform: one Via with rport, From with a display name
/// and tag, To without a tag, and a G.711 + telephone-event SDP offer.
const INVITE: &str = concat!(
    "INVITE sip:+14155550123@pbx.switchboard.example;user=phone SIP/2.0\r\n",
    "Via: SIP/2.0/UDP 198.51.100.17:5060;rport;branch=z9hG4bK-524287-1-5a3b1f2c7d\r\n",
    "Max-Forwards: 70\r\n",
    "From: \"Alice Agent\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n",
    "To: <sip:+14155550123@pbx.switchboard.example;user=phone>\r\n",
    "Call-ID: 3848276298220188511@atlanta.example.com\r\n",
    "CSeq: 314159 INVITE\r\n",
    "Contact: <sip:alice@198.51.100.17:5060;transport=udp>\r\n",
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n",
    "User-Agent: Acme-Phone/4.2\r\n",
    "Content-Type: application/sdp\r\n",
    "Content-Length: 244\r\n",
    "\r\n",
    "v=0\r\n",
    "o=alice 2890844526 2890844526 IN IP4 198.51.100.17\r\n",
    "s=-\r\n",
    "c=IN IP4 198.51.100.17\r\n",
    "t=0 0\r\n",
    "m=audio 49170 RTP/AVP 0 8 101\r\n",
    "a=rtpmap:0 PCMU/8000\r\n",
    "a=rtpmap:8 PCMA/8000\r\n",
    "a=rtpmap:101 telephone-event/8000\r\n",
    "a=fmtp:101 0-16\r\n",
    "a=ptime:20\r\n",
    "a=sendrecv\r\n",
);

const BRANCH: &str = "z9hG4bK-524287-1-5a3b1f2c7d";
const CALL_ID: &str = "3848276298220188511@atlanta.example.com";
const FROM_TAG: &str = "9fxced76sl";

/// The five values, as each library's typed accessors hand them out.
fn switchboard(buf: Bytes) {
    let m = Message::parse(buf).expect("parse");
    let via = m.top_via().expect("Via");
    black_box(via.branch());
    black_box(m.call_id().expect("Call-ID"));
    let cseq = m.cseq().expect("CSeq");
    black_box(cseq.seq);
    black_box(&cseq.method);
    black_box(m.from().expect("From").tag());
    black_box(m.to().expect("To").tag());
}

fn rsipstack(buf: &[u8]) {
    let m = rsipstack::sip::SipMessage::try_from(buf).expect("parse");
    let via = m.top_via_header().expect("Via").typed().expect("Via");
    black_box(via.branch());
    black_box(m.call_id_header().expect("Call-ID").value());
    let cseq = m.cseq_header().expect("CSeq").typed().expect("CSeq");
    black_box(cseq.seq);
    black_box(&cseq.method);
    black_box(m.from_header().expect("From").tag().expect("From"));
    black_box(m.to_header().expect("To").tag().expect("To"));
}

/// Both parsers must read the same values before their times mean anything.
fn check_both_agree() {
    assert_eq!(INVITE.len(), 785, "the bench message must be 785 bytes");
    let m = Message::parse(Bytes::from_static(INVITE.as_bytes())).unwrap();
    m.validate().unwrap();
    assert_eq!(m.body().len(), 244);
    assert_eq!(m.top_via().unwrap().branch(), Some(BRANCH));
    assert_eq!(m.call_id().unwrap(), CALL_ID);
    assert_eq!(m.cseq().unwrap().seq, 314159);
    assert_eq!(m.from().unwrap().tag(), Some(FROM_TAG));
    assert_eq!(m.to().unwrap().tag(), None);

    let r = rsipstack::sip::SipMessage::try_from(INVITE.as_bytes()).unwrap();
    let via = r.top_via_header().unwrap().typed().unwrap();
    assert_eq!(
        via.branch().map(|b| b.to_string()),
        Some(BRANCH.to_string())
    );
    assert_eq!(r.call_id_header().unwrap().value(), CALL_ID);
    let cseq = r.cseq_header().unwrap().typed().unwrap();
    assert_eq!(cseq.seq, 314159);
    assert_eq!(cseq.method, rsipstack::sip::Method::Invite);
    let from_tag = r.from_header().unwrap().tag().unwrap();
    assert_eq!(from_tag.map(|t| t.to_string()), Some(FROM_TAG.to_string()));
    assert_eq!(r.to_header().unwrap().tag().unwrap(), None);
}

fn parse_invite(c: &mut Criterion) {
    check_both_agree();
    let buf = Bytes::from_static(INVITE.as_bytes());
    let mut g = c.benchmark_group("parse_invite");
    g.bench_function("switchboard", |b| {
        b.iter(|| switchboard(black_box(buf.clone())))
    });
    g.bench_function("rsipstack", |b| {
        b.iter(|| rsipstack(black_box(INVITE.as_bytes())))
    });
    g.finish();
}

fn validate(c: &mut Criterion) {
    let m = Message::parse(Bytes::from_static(INVITE.as_bytes())).unwrap();
    c.bench_function("validate", |b| b.iter(|| black_box(&m).validate().unwrap()));
}

/// What a record-routing proxy does to every request it forwards: parse, validate, its own Via
/// on top, Max-Forwards minus one, a Record-Route, and the new bytes.
fn forward_edit(c: &mut Criterion) {
    let buf = Bytes::from_static(INVITE.as_bytes());
    c.bench_function("forward_edit", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(buf.clone())).unwrap();
            m.validate().unwrap();
            let out = m
                .edit()
                .prepend_via("SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-sb-1a2b3c4d")
                .decrement_max_forwards()
                .unwrap()
                .add_record_route("<sip:203.0.113.5:5060;lr>")
                .finish();
            black_box(out)
        })
    });
}

criterion_group!(benches, parse_invite, validate, forward_edit);
criterion_main!(benches);
