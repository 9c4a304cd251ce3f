//! The SIP Server core (B2BUA) without a network: SIP messages, commands and the clock go
//! in; the SIP it sends and the events it reports come out. Virtual time drives the timers.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchboard_events::{ConnId, Event};
use switchboard_services::sip_node::core::{
    Directory, NodeCommand, NodeOutput, NodeSettings, SipNode,
};
use switchboard_services::sip_node::model::{Dest, ModelSettings, PartyState, Request, Resolved};
use switchboard_sip::transaction::Timers;
use switchboard_sip::{response_to, HeaderName, Message, Method, Peer, Transmit};
use switchboard_sip_net::{Controlled, Core};

const NODE: &str = "127.0.0.1:5070";
const EDGE: &str = "127.0.0.1:5060";
const TRUNK: &str = "127.0.0.1:5090";
/// The phone's contact behind the edge.
const PHONE: &str = "127.0.0.1:6001";
const RING_MS: u64 = 20_000;

const OFFER: &str = "v=0\r\no=carrier 111 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
const ANSWER: &str = "v=0\r\no=phone 222 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Net {
    node: SipNode,
    now: Instant,
}

type Out = Vec<(Peer, Message)>;

fn parse(b: Bytes) -> Message {
    let m = Message::parse(b).expect("the node writes parseable messages");
    if let Err(e) = m.validate() {
        panic!(
            "invalid message sent: {e}\n{}",
            String::from_utf8_lossy(m.as_bytes())
        );
    }
    m
}

fn body(m: &Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

impl Net {
    fn new() -> Net {
        let now = Instant::now();
        let settings = NodeSettings {
            local: addr(NODE),
            edge: addr(EDGE),
            trunks: vec![addr(TRUNK)],
            mcp: None,
            timers: Timers::default(),
            model: ModelSettings {
                ring_timeout_ms: RING_MS,
                node: 1,
                route_timeout_ms: 10_000,
            },
            voicemail: Default::default(),
        };
        let dir = Directory::new([(
            "demo".to_string(),
            "switchboard".to_string(),
            vec!["1001".to_string(), "1002".to_string()],
        )]);
        Net {
            node: SipNode::new(settings, dir, 7, now, 1_800_000_000_000),
            now,
        }
    }

    fn sent(&mut self) -> Out {
        std::iter::from_fn(|| self.node.poll_transmit())
            .map(|Transmit { peer, payload }| (peer, parse(payload)))
            .collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.node.poll_output())
            .filter_map(|o| match o {
                NodeOutput::Event(e) => Some(*e),
                _ => None,
            })
            .collect()
    }

    fn feed(&mut self, text: &str, from: &str) -> Out {
        self.feed_bytes(Bytes::copy_from_slice(text.as_bytes()), from)
    }

    fn feed_bytes(&mut self, b: Bytes, from: &str) -> Out {
        let msg = Message::parse(b).expect("test messages parse");
        self.node
            .handle_message(msg, Peer::udp(addr(from)), self.now);
        self.sent()
    }

    fn advance(&mut self, ms: u64) -> Out {
        let until = self.now + Duration::from_millis(ms);
        let mut out = Vec::new();
        while let Some(t) = self.node.poll_timeout().filter(|t| *t <= until) {
            self.now = t.max(self.now);
            self.node.handle_timeout(self.now);
            out.extend(self.sent());
        }
        self.now = until;
        out
    }

    /// The phone (behind the edge) answers the node's INVITE `inv`.
    fn phone_reply(&mut self, inv: &Message, code: u16, sdp: Option<&str>) -> Out {
        let b = response_to(inv, code, Some("phonetag"))
            .header("Record-Route", format_args!("<sip:{EDGE};lr>"))
            .header("Contact", format_args!("<sip:1001@{PHONE}>"));
        let bytes = match sdp {
            Some(s) => b.body("application/sdp", s.as_bytes()),
            None => b.finish(),
        };
        self.feed_bytes(bytes, EDGE)
    }
}

fn to(out: &Out, port: u16) -> Vec<&Message> {
    out.iter()
        .filter(|(p, _)| p.addr.port() == port)
        .map(|(_, m)| m)
        .collect()
}

fn one<'a>(out: &'a Out, port: u16, what: &str) -> &'a Message {
    let v: Vec<_> = to(out, port)
        .into_iter()
        .filter(|m| {
            m.method().map(|x| x.as_str()) == Some(what)
                || m.status().map(|s| s.to_string()).as_deref() == Some(what)
        })
        .collect();
    assert_eq!(v.len(), 1, "one {what} to port {port} in {out:#?}");
    v[0]
}

fn names(ev: &[Event]) -> Vec<(&'static str, String)> {
    ev.iter()
        .map(|e| (e.name(), e.this_dn().unwrap_or("").to_string()))
        .collect()
}

fn carrier_invite(call_id: &str) -> String {
    format!(
        "INVITE sip:1001@{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:+15551234567@carrier>;tag=c1\r\nTo: <sip:1001@switchboard>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:carrier@{TRUNK}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    )
}

fn carrier_in_dialog(method: &str, call_id: &str, cseq: u32, to_tag: &str, branch: &str) -> String {
    format!(
        "{method} sip:sipnode@{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:+15551234567@carrier>;tag=c1\r\nTo: <sip:1001@switchboard>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A carrier call answered by 1001's phone: returns the node's INVITE to the edge and its
/// 200 to the carrier.
fn answered_call(n: &mut Net, call_id: &str) -> (Message, Message) {
    let out = n.feed(&carrier_invite(call_id), TRUNK);
    one(&out, 5090, "100");
    let inv = one(&out, 5060, "INVITE").clone();
    n.phone_reply(&inv, 180, None);
    let out = n.phone_reply(&inv, 200, Some(ANSWER));
    let ok = one(&out, 5090, "200").clone();
    let tag = ok.to().unwrap().tag().unwrap().to_string();
    let out = n.feed(&carrier_in_dialog("ACK", call_id, 1, &tag, "ack1"), TRUNK);
    assert!(out.is_empty(), "{out:?}");
    (inv, ok)
}

#[test]
fn inbound_call_is_bridged_to_the_dn_through_the_edge() {
    let mut n = Net::new();
    let out = n.feed(&carrier_invite("in-1"), TRUNK);
    one(&out, 5090, "100");
    let inv = one(&out, 5060, "INVITE");
    assert_eq!(inv.request_uri_str(), Some("sip:1001@switchboard"));
    assert_ne!(
        inv.call_id().unwrap(),
        "in-1",
        "a B2BUA leg has its own Call-ID"
    );
    assert!(inv.from().unwrap().uri.to_string().contains("+15551234567"));
    let offer = body(inv);
    assert!(
        offer.contains("c=IN IP4 10.0.0.1") && offer.contains("m=audio 4000"),
        "{offer}"
    );
    assert!(
        !offer.contains("o=carrier 111 "),
        "our own origin on the leg: {offer}"
    );
    let inv = inv.clone();
    let ev = n.events();
    assert_eq!(names(&ev), vec![("EventRinging", "1001".into())]);
    let ringing = ev[0].call().unwrap();
    assert_eq!(
        ringing.call_id.as_deref(),
        Some(inv.call_id().unwrap()),
        "the DN leg's Call-ID"
    );
    assert_eq!(ringing.ts_ms, 1_800_000_000_000);

    // 180 is relayed.
    let out = n.phone_reply(&inv, 180, None);
    one(&out, 5090, "180");
    // 200 with the phone's SDP: ACK to the phone through the edge's Record-Route, 200 to the
    // carrier with that SDP.
    let out = n.phone_reply(&inv, 200, Some(ANSWER));
    let ack = one(&out, 5060, "ACK");
    assert_eq!(
        ack.request_uri_str(),
        Some(format!("sip:1001@{PHONE}").as_str())
    );
    assert!(ack.get(HeaderName::Route).unwrap().contains(EDGE));
    let ok = one(&out, 5090, "200").clone();
    let answer = body(&ok);
    assert!(
        answer.contains("m=audio 5000") && answer.contains("c=IN IP4 10.0.0.2"),
        "{answer}"
    );
    assert!(ok.get(HeaderName::Contact).unwrap().contains(NODE));
    assert_eq!(
        names(&n.events()),
        vec![("EventEstablished", "1001".into())]
    );

    // Without the carrier's ACK the 200 is retransmitted; the ACK stops that.
    let out = n.advance(600);
    one(&out, 5090, "200");
    let tag = ok.to().unwrap().tag().unwrap().to_string();
    assert!(n
        .feed(&carrier_in_dialog("ACK", "in-1", 1, &tag, "ack1"), TRUNK)
        .is_empty());
    assert!(to(&n.advance(5_000), 5090).is_empty(), "no more 200s");

    // The carrier hangs up: 200 to it, BYE to the phone through the edge.
    let out = n.feed(&carrier_in_dialog("BYE", "in-1", 2, &tag, "bye1"), TRUNK);
    one(&out, 5090, "200");
    let bye = one(&out, 5060, "BYE").clone();
    assert_eq!(bye.call_id().unwrap(), inv.call_id().unwrap());
    let ev = n.events();
    assert_eq!(names(&ev), vec![("EventReleased", "1001".into())]);
    assert_eq!(
        ev[0].call().unwrap().call_id.as_deref(),
        Some(inv.call_id().unwrap()),
        "the leg the SIP Server hung up is still named on its EventReleased"
    );
    let out = n.feed_bytes(response_to(&bye, 200, None).finish(), EDGE);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(n.node.leg_count(), 0);
    assert!(n.node.model().is_empty());
    n.advance(40_000);
    assert!(n.node.is_idle(n.now));
}

#[test]
fn the_phone_hangs_up_first() {
    let mut n = Net::new();
    let (inv, _) = answered_call(&mut n, "in-2");
    n.events();
    let bye = format!(
        "BYE sip:sipnode@{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {EDGE};branch=z9hG4bKpb\r\nMax-Forwards: 69\r\nFrom: <sip:1001@switchboard>;tag=phonetag\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n",
        inv.get(HeaderName::From).unwrap(),
        inv.call_id().unwrap()
    );
    let out = n.feed(&bye, EDGE);
    one(&out, 5060, "200");
    let bye = one(&out, 5090, "BYE");
    assert_eq!(bye.call_id().unwrap(), "in-2");
    assert_eq!(
        bye.request_uri_str(),
        Some(format!("sip:carrier@{TRUNK}").as_str())
    );
    let ev = n.events();
    assert_eq!(names(&ev), vec![("EventReleased", "1001".into())]);
    assert_eq!(
        ev[0].call().unwrap().call_id.as_deref(),
        Some(inv.call_id().unwrap())
    );
}

#[test]
fn cancel_before_answer_cancels_the_dn_leg() {
    let mut n = Net::new();
    let out = n.feed(&carrier_invite("in-3"), TRUNK);
    let inv = one(&out, 5060, "INVITE").clone();
    n.phone_reply(&inv, 180, None);
    n.events();
    let cancel = carrier_invite("in-3")
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let cancel = format!(
        "{}\r\n\r\n",
        cancel.split("\r\nContent-Type").next().unwrap()
    )
    .replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n");
    let out = n.feed(&cancel, TRUNK);
    assert_eq!(
        to(&out, 5090)
            .iter()
            .filter_map(|m| m.status())
            .collect::<Vec<_>>(),
        vec![200, 487]
    );
    let c = one(&out, 5060, "CANCEL");
    assert_eq!(c.call_id().unwrap(), inv.call_id().unwrap());
    assert_eq!(names(&n.events()), vec![("EventReleased", "1001".into())]);
    // The phone's 487 is ACKed by the transaction layer; nothing reaches the carrier.
    let out = n.phone_reply(&inv, 487, None);
    one(&out, 5060, "ACK");
    assert!(to(&out, 5090).is_empty());
    assert_eq!(n.node.leg_count(), 0);
}

#[test]
fn busy_phone_gives_the_carrier_486() {
    let mut n = Net::new();
    let out = n.feed(&carrier_invite("in-4"), TRUNK);
    let inv = one(&out, 5060, "INVITE").clone();
    let out = n.phone_reply(&inv, 486, None);
    one(&out, 5060, "ACK");
    one(&out, 5090, "486");
    assert_eq!(
        names(&n.events()),
        vec![
            ("EventRinging", "1001".into()),
            ("EventReleased", "1001".into())
        ]
    );
    assert_eq!(n.node.leg_count(), 0);
}

#[test]
fn ring_no_answer_cancels_and_gives_480() {
    let mut n = Net::new();
    let out = n.feed(&carrier_invite("in-5"), TRUNK);
    let inv = one(&out, 5060, "INVITE").clone();
    n.phone_reply(&inv, 180, None);
    n.events();
    let out = n.advance(RING_MS - 100);
    assert!(
        to(&out, 5090).is_empty()
            && to(&out, 5060)
                .iter()
                .all(|m| m.method() != Some(&Method::Cancel))
    );
    let out = n.advance(200);
    one(&out, 5060, "CANCEL");
    one(&out, 5090, "480");
    assert_eq!(names(&n.events()), vec![("EventReleased", "1001".into())]);
}

#[test]
fn hold_and_retrieve_reinvite_the_carrier() {
    let mut n = Net::new();
    let (_, ok) = answered_call(&mut n, "in-6");
    let ev = n.events();
    let conn = ev.last().unwrap().call().unwrap().conn_id.unwrap();
    n.node.handle_command(
        NodeCommand {
            id: 41,
            tenant: "demo".into(),
            request: Request::Hold {
                conn,
                dn: "1001".into(),
            },
        },
        n.now,
    );
    let out = n.sent();
    let re = one(&out, 5090, "INVITE").clone();
    assert_eq!(re.call_id().unwrap(), "in-6");
    assert_eq!(
        re.to().unwrap().tag(),
        Some("c1"),
        "in the carrier's dialog"
    );
    let offer = body(&re);
    assert!(
        offer.contains("a=sendonly") && offer.contains("m=audio 5000"),
        "{offer}"
    );
    let sess = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("o="))
            .unwrap()
            .split(' ')
            .nth(2)
            .unwrap()
            .to_string()
    };
    assert_eq!(
        sess(&offer).parse::<u64>().unwrap(),
        sess(&body(&ok)).parse::<u64>().unwrap() + 1,
        "the o= version rises"
    );
    assert!(n.events().is_empty(), "EventHeld waits for the answer");
    let held = OFFER.replace("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n");
    let resp = response_to(&re, 200, None)
        .header("Contact", format_args!("<sip:carrier@{TRUNK}>"))
        .body("application/sdp", held.as_bytes());
    let out = n.feed_bytes(resp, TRUNK);
    one(&out, 5090, "ACK");
    let ev = n.events();
    assert_eq!(names(&ev), vec![("EventHeld", "1001".into())]);
    assert_eq!(ev[0].call().unwrap().request_id, Some(41));

    n.node.handle_command(
        NodeCommand {
            id: 42,
            tenant: "demo".into(),
            request: Request::Retrieve {
                conn,
                dn: "1001".into(),
            },
        },
        n.now,
    );
    let out = n.sent();
    let re = one(&out, 5090, "INVITE").clone();
    assert!(body(&re).contains("a=sendrecv"));
    let out = n.feed_bytes(
        response_to(&re, 200, None)
            .header("Contact", format_args!("<sip:carrier@{TRUNK}>"))
            .body("application/sdp", OFFER.as_bytes()),
        TRUNK,
    );
    one(&out, 5090, "ACK");
    assert_eq!(names(&n.events()), vec![("EventRetrieved", "1001".into())]);
}

#[test]
fn release_request_byes_both_legs_and_unknown_call_is_an_error_event() {
    let mut n = Net::new();
    answered_call(&mut n, "in-7");
    let conn = n.events().last().unwrap().call().unwrap().conn_id.unwrap();
    n.node.handle_command(
        NodeCommand {
            id: 7,
            tenant: "demo".into(),
            request: Request::Release {
                conn: ConnId(conn.0 + 100),
                dn: "1001".into(),
            },
        },
        n.now,
    );
    assert!(n.sent().is_empty());
    match n.events().as_slice() {
        [Event::EventError(e)] => {
            assert_eq!((e.request_id, e.error_code.as_str()), (7, "no_such_call"))
        }
        other => panic!("{other:?}"),
    }
    n.node.handle_command(
        NodeCommand {
            id: 8,
            tenant: "demo".into(),
            request: Request::Release {
                conn,
                dn: "1001".into(),
            },
        },
        n.now,
    );
    let out = n.sent();
    one(&out, 5060, "BYE");
    one(&out, 5090, "BYE");
    assert_eq!(names(&n.events()), vec![("EventReleased", "1001".into())]);
}

#[test]
fn make_call_auto_answers_the_origin_then_calls_the_destination_with_its_offer() {
    let mut n = Net::new();
    n.node.handle_command(
        NodeCommand {
            id: 1,
            tenant: "demo".into(),
            request: Request::MakeCall {
                dn: "1001".into(),
                to: Resolved::Ok(Dest::External("+15550001111".into())),
            },
        },
        n.now,
    );
    let out = n.sent();
    let inv = one(&out, 5060, "INVITE").clone();
    assert_eq!(inv.request_uri_str(), Some("sip:1001@switchboard"));
    assert!(inv.body().is_empty(), "offerless INVITE to the origin");
    assert!(inv
        .get_by_name("Call-Info")
        .unwrap()
        .contains("answer-after=0"));
    let out = n.phone_reply(&inv, 200, Some(ANSWER));
    let ack = one(&out, 5060, "ACK");
    assert!(
        body(ack).contains("a=inactive"),
        "the ACK answers the phone's offer: {}",
        body(ack)
    );
    let ext = one(&out, 5090, "INVITE");
    assert_eq!(
        ext.request_uri_str(),
        Some(format!("sip:+15550001111@{TRUNK}").as_str())
    );
    assert!(
        body(ext).contains("m=audio 5000"),
        "the phone's offer goes to the trunk"
    );
    assert_eq!(names(&n.events()), vec![("EventDialing", "1001".into())]);
}

#[test]
fn malformed_and_unknown_requests_get_errors_not_panics() {
    let mut n = Net::new();
    // The CSeq method is not the request's.
    let bad = carrier_invite("x").replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
    let out = n.feed(&bad, TRUNK);
    assert_eq!(
        to(&out, 5090).first().and_then(|m| m.status()),
        Some(400),
        "{out:?}"
    );
    // BYE for a dialog we do not know.
    let out = n.feed(&carrier_in_dialog("BYE", "nope", 2, "zz", "b9"), TRUNK);
    one(&out, 5090, "481");
    // A number that is not a DN.
    let out = n.feed(
        &carrier_invite("in-8").replacen("sip:1001@", "sip:12@", 1),
        TRUNK,
    );
    one(&out, 5090, "404");
    assert_eq!(n.node.leg_count(), 0);
    // OPTIONS is answered.
    let out = n.feed(
        &carrier_in_dialog("OPTIONS", "o1", 1, "", "o1").replace(";tag=\r\n", "\r\n"),
        TRUNK,
    );
    one(&out, 5090, "200");
}

#[test]
fn a_carrier_re_invite_is_relayed_to_the_phone() {
    let mut n = Net::new();
    let (inv, ok) = answered_call(&mut n, "in-9");
    n.events();
    let tag = ok.to().unwrap().tag().unwrap().to_string();
    let held = OFFER.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
    let reinvite = carrier_in_dialog("INVITE", "in-9", 2, &tag, "re9").replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{held}",
            held.len()
        ),
    );
    let out = n.feed(&reinvite, TRUNK);
    assert!(
        to(&out, 5090).iter().all(|m| m.status() != Some(200)),
        "no answer before the phone's"
    );
    let re = one(&out, 5060, "INVITE").clone();
    assert_eq!(
        re.call_id().unwrap(),
        inv.call_id().unwrap(),
        "in the phone's dialog"
    );
    assert!(
        body(&re).contains("a=sendonly") && body(&re).contains("m=audio 4000"),
        "{}",
        body(&re)
    );
    // The phone answers recvonly; the carrier gets that answer.
    let answer = ANSWER.replace("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n");
    let resp = response_to(&re, 200, None)
        .header("Contact", format_args!("<sip:1001@{PHONE}>"))
        .body("application/sdp", answer.as_bytes());
    let out = n.feed_bytes(resp, EDGE);
    one(&out, 5060, "ACK");
    let ok = one(&out, 5090, "200");
    assert!(
        body(ok).contains("a=recvonly") && body(ok).contains("m=audio 5000"),
        "{}",
        body(ok)
    );
    assert!(n.events().is_empty(), "the carrier is no DN: no event");
    // An offerless re-INVITE (a refresh) is answered on the spot with our last SDP.
    let out = n.feed(&carrier_in_dialog("INVITE", "in-9", 3, &tag, "re10"), TRUNK);
    assert!(body(one(&out, 5090, "200")).contains("m=audio 5000"));
    assert!(to(&out, 5060).is_empty());
}

#[test]
fn a_phone_that_holds_the_call_gives_event_held() {
    let mut n = Net::new();
    let (inv, _) = answered_call(&mut n, "in-11");
    n.events();
    let phone_reinvite = |cseq: u32, dir: &str| {
        let sdp = ANSWER.replace("t=0 0\r\n", &format!("t=0 0\r\na={dir}\r\n"));
        format!(
            "INVITE sip:sipnode@{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {EDGE};branch=z9hG4bKph{cseq}\r\nMax-Forwards: 69\r\nFrom: <sip:1001@switchboard>;tag=phonetag\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:1001@{PHONE}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            inv.get(HeaderName::From).unwrap(),
            inv.call_id().unwrap(),
            sdp.len()
        )
    };
    let carrier_answers = |n: &mut Net, re: &Message, dir: &str| {
        let sdp = OFFER.replace("t=0 0\r\n", &format!("t=0 0\r\na={dir}\r\n"));
        let resp = response_to(re, 200, None)
            .header("Contact", format_args!("<sip:carrier@{TRUNK}>"))
            .body("application/sdp", sdp.as_bytes());
        n.feed_bytes(resp, TRUNK)
    };
    let out = n.feed(&phone_reinvite(5, "sendonly"), EDGE);
    let re = one(&out, 5090, "INVITE").clone();
    assert!(body(&re).contains("a=sendonly"));
    // Another re-INVITE from the phone meanwhile: 491.
    let out = n.feed(&phone_reinvite(6, "sendonly"), EDGE);
    one(&out, 5060, "491");
    let out = carrier_answers(&mut n, &re, "recvonly");
    one(&out, 5090, "ACK");
    assert!(body(one(&out, 5060, "200")).contains("a=recvonly"));
    let ev = n.events();
    assert_eq!(names(&ev), vec![("EventHeld", "1001".into())]);
    assert_eq!(
        ev[0].call().unwrap().request_id,
        None,
        "held from the phone, not by a request"
    );

    let out = n.feed(&phone_reinvite(7, "sendrecv"), EDGE);
    let re = one(&out, 5090, "INVITE").clone();
    carrier_answers(&mut n, &re, "sendrecv");
    assert_eq!(names(&n.events()), vec![("EventRetrieved", "1001".into())]);
}

#[test]
fn a_2xx_never_acked_ends_the_call() {
    let mut n = Net::new();
    let out = n.feed(&carrier_invite("in-10"), TRUNK);
    let inv = one(&out, 5060, "INVITE").clone();
    n.phone_reply(&inv, 200, Some(ANSWER));
    n.events();
    // No ACK from the carrier: 200s are retransmitted, then both legs get a BYE.
    let out = n.advance(40_000);
    assert!(
        to(&out, 5090)
            .iter()
            .filter(|m| m.status() == Some(200))
            .count()
            >= 5,
        "{out:#?}"
    );
    // (retransmitted, as nobody answers them)
    let byes = |port| {
        to(&out, port)
            .iter()
            .filter(|m| m.method() == Some(&Method::Bye))
            .count()
    };
    assert!(byes(5090) >= 1 && byes(5060) >= 1, "{out:#?}");
    assert_eq!(names(&n.events()), vec![("EventReleased", "1001".into())]);
    assert!(n.node.model().is_empty());
}

/// Every party the model has is a leg the core has (a MakeCall destination not placed yet
/// and a route point or queue excepted).
fn consistent(node: &SipNode) {
    for c in node.model().calls() {
        for p in &c.parties {
            let placed = (p.auto || p.leg.is_incoming() || p.state != PartyState::Dialing)
                && !p.state.parked();
            assert!(
                !placed || node.has_leg(p.leg),
                "{p:?} of {c:?} has no SIP leg"
            );
        }
    }
}

/// Bad input never takes the core down: mutated carrier INVITEs, CANCELs, in-dialog
/// requests, phone responses and BYEs, interleaved with call-control requests on live and
/// dead calls and timer runs, in a fixed pseudo-random order. Nothing may panic, and once
/// every DN releases, no call with a DN is left.
#[test]
fn mutated_messages_and_requests_never_panic() {
    fuzz(Net::new(), &["1001"]);
}

/// The same with route point 5000 (default route after 2 s), queue 6000 (default route after
/// 3 s) and 1001 forwarding on busy: carriers call 1001, 5000 and 6000, requests include
/// RouteCall.
#[test]
fn mutated_messages_and_requests_with_route_points_never_panic() {
    fuzz(net_with_routing(), &["1001", "5000", "6000"]);
}

/// Carriers call the numbers in `called`.
fn fuzz(mut n: Net, called: &[&str]) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // What the node sent lately: INVITEs to the edge (for phone answers) and the carrier's
    // dialog tags (for in-dialog requests), and the calls it reported.
    let mut node_invites: Vec<Message> = Vec::new();
    let mut carrier_tags: Vec<(String, String)> = Vec::new();
    let mut conns: Vec<ConnId> = Vec::new();
    let (mut oks, mut events, mut calls) = (0, 0, 0);
    for i in 0..20_000u32 {
        let mut text: Option<Vec<u8>> = None;
        let mut from = TRUNK;
        match rnd() % 12 {
            0..=2 => {
                calls += 1;
                let cid = format!("fz-{}", rnd() % 64);
                let number = called[(rnd() % called.len() as u64) as usize];
                text = Some(
                    carrier_invite(&cid)
                        .replacen("INVITE sip:1001@", &format!("INVITE sip:{number}@"), 1)
                        .into_bytes(),
                );
            }
            3 => {
                let cid = format!("fz-{}", rnd() % 64);
                let c = carrier_invite(&cid)
                    .replacen("INVITE sip", "CANCEL sip", 1)
                    .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
                text = Some(c.into_bytes());
            }
            4 | 5 => {
                if let Some((cid, tag)) = carrier_tags.get((rnd() % 8) as usize).cloned() {
                    let m = ["BYE", "ACK", "INVITE", "INFO"][(rnd() % 4) as usize];
                    text = Some(
                        carrier_in_dialog(m, &cid, 2 + i, &tag, &format!("d{i}")).into_bytes(),
                    );
                }
            }
            6 | 7 => {
                if let Some(inv) = node_invites.get((rnd() % 6) as usize).cloned() {
                    let code = [180, 200, 200, 486, 487, 603][(rnd() % 6) as usize];
                    let b = response_to(&inv, code, Some("phonetag"))
                        .header("Contact", format_args!("<sip:1001@{PHONE}>"));
                    let b = if code == 200 {
                        b.body("application/sdp", ANSWER.as_bytes())
                    } else {
                        b.finish()
                    };
                    text = Some(b.to_vec());
                    from = EDGE;
                }
            }
            8 | 9 => {
                let conn = conns
                    .get((rnd() % 4) as usize)
                    .copied()
                    .unwrap_or(ConnId(rnd()));
                let dn = ["1001", "1002", "5000", "6000"][(rnd() % 4) as usize].to_string();
                let to = Resolved::Ok(match rnd() % 5 {
                    0 => Dest::Dn("1002".into()),
                    1 => Dest::Dn("1001".into()),
                    2 => Dest::Dn("6000".into()),
                    3 => Dest::Dn("5000".into()),
                    _ => Dest::External("+15550001111".into()),
                });
                let request = match rnd() % 10 {
                    0 => Request::Hold { conn, dn },
                    1 => Request::Retrieve { conn, dn },
                    2 => Request::Release { conn, dn },
                    3 => Request::SingleStepTransfer { conn, dn, to },
                    4 => Request::InitiateTransfer { conn, dn, to },
                    5 => Request::CompleteTransfer { conn, dn },
                    6 => Request::Answer { conn, dn },
                    7 => Request::SendDtmf {
                        conn,
                        dn,
                        digits: "1#".into(),
                    },
                    8 => Request::RouteCall { conn, dn, to },
                    _ => Request::MakeCall { dn, to },
                };
                n.node.handle_command(
                    NodeCommand {
                        id: i as u64,
                        tenant: "demo".into(),
                        request,
                    },
                    n.now,
                );
            }
            _ => {
                n.now += Duration::from_millis(rnd() % 4000);
                n.node.handle_timeout(n.now);
            }
        }
        if let Some(mut m) = text {
            for _ in 0..(rnd() % 4).saturating_sub(1) {
                let at = (rnd() % m.len() as u64) as usize;
                match rnd() % 3 {
                    0 => m[at] = rnd() as u8,
                    1 => {
                        m.remove(at);
                    }
                    _ => m.insert(at, b"\r\n:;<>@=0 "[(rnd() % 10) as usize]),
                }
            }
            if let Ok(msg) = Message::parse(Bytes::from(m)) {
                n.node.handle_message(msg, Peer::udp(addr(from)), n.now);
            }
        }
        while let Some(t) = n.node.poll_transmit() {
            let Ok(m) = Message::parse(t.payload) else {
                panic!("the node sent something unparseable");
            };
            if t.peer.addr.port() == 5060 && m.method() == Some(&Method::Invite) {
                node_invites.insert(0, m);
                node_invites.truncate(6);
            } else if t.peer.addr.port() == 5090 && m.status() == Some(200) {
                oks += 1;
                if let (Ok(cid), Some(tag)) = (
                    m.call_id(),
                    m.to().ok().and_then(|t| t.tag().map(str::to_string)),
                ) {
                    carrier_tags.insert(0, (cid.to_string(), tag));
                    carrier_tags.truncate(8);
                }
            }
        }
        if i % 97 == 0 {
            consistent(&n.node);
        }
        while let Some(o) = n.node.poll_output() {
            match o {
                NodeOutput::CallStarted { conn, .. } => {
                    conns.insert(0, conn);
                    conns.truncate(4);
                }
                NodeOutput::Event(_) => events += 1,
                NodeOutput::CallEnded { .. } => {}
            }
        }
    }
    eprintln!("exercised: {calls} INVITEs, {oks} 200s to the carrier, {events} events");
    assert!(
        oks > 50 && events > 500,
        "exercised: {oks} 200s, {events} events"
    );
    consistent(&n.node);
    // Every DN hangs up: no call with a DN is left.
    let live: Vec<(ConnId, Vec<String>)> = n
        .node
        .model()
        .calls()
        .map(|c| (c.conn, c.parties.iter().map(|p| p.dn.clone()).collect()))
        .collect();
    for (conn, dns) in live {
        for dn in dns {
            n.node.handle_command(
                NodeCommand {
                    id: 0,
                    tenant: "demo".into(),
                    request: Request::Release { conn, dn },
                },
                n.now,
            );
        }
    }
    // Timers run out (responses to malformed requests echo them, so no validation here).
    let until = n.now + Duration::from_secs(600);
    while let Some(t) = n.node.poll_timeout().filter(|t| *t <= until) {
        n.now = t.max(n.now);
        n.node.handle_timeout(n.now);
        while n.node.poll_transmit().is_some() {}
    }
    let parties: usize = n.node.model().calls().map(|c| c.parties.len()).sum();
    assert!(
        n.node.leg_count() <= parties,
        "legs without a party leak: {} legs, {parties} parties",
        n.node.leg_count()
    );
    assert!(
        n.node
            .model()
            .calls()
            .all(|c| c.parties.iter().all(|p| !p.internal)),
        "{:?}",
        n.node.model().calls().collect::<Vec<_>>()
    );
}

#[test]
fn answer_request_notifies_the_ringing_phone_and_dtmf_goes_as_info() {
    let mut n = Net::new();
    let out = n.feed(&carrier_invite("in-12"), TRUNK);
    let inv = one(&out, 5060, "INVITE").clone();
    n.phone_reply(&inv, 180, None);
    let conn = n.events()[0].call().unwrap().conn_id.unwrap();
    let cmd = |id, request| NodeCommand {
        id,
        tenant: "demo".into(),
        request,
    };
    n.node.handle_command(
        cmd(
            1,
            Request::Answer {
                conn,
                dn: "1001".into(),
            },
        ),
        n.now,
    );
    let out = n.sent();
    let notify = one(&out, 5060, "NOTIFY");
    assert_eq!(notify.get_by_name("Event"), Some("talk"));
    assert_eq!(
        notify.call_id().unwrap(),
        inv.call_id().unwrap(),
        "in the early dialog"
    );
    assert_eq!(notify.to().unwrap().tag(), Some("phonetag"));
    n.phone_reply(&inv, 200, Some(ANSWER));
    n.events();
    // 1001 sends DTMF to the carrier: one INFO per digit in the carrier's dialog.
    n.node.handle_command(
        cmd(
            2,
            Request::SendDtmf {
                conn,
                dn: "1001".into(),
                digits: "4#".into(),
            },
        ),
        n.now,
    );
    let out = n.sent();
    let infos: Vec<_> = to(&out, 5090)
        .into_iter()
        .filter(|m| m.method() == Some(&Method::Info))
        .collect();
    assert_eq!(infos.len(), 2, "{out:#?}");
    assert_eq!(infos[0].call_id().unwrap(), "in-12");
    assert_eq!(infos[0].content_type(), Some("application/dtmf-relay"));
    assert!(body(infos[0]).starts_with("Signal=4\r\n"));
    assert!(body(infos[1]).starts_with("Signal=#\r\n"));
    assert!(infos[1].cseq().unwrap().seq > infos[0].cseq().unwrap().seq);
}

// ---- the dial plan decides where calls go ----

const SBC: &str = "127.0.0.1:5091";

/// A node whose directory is a dial plan with a named trunk `sbc` (DIDs +1555010xxxx reach
/// 1002) and a rule sending `9` + number out on it as `+1` + number.
fn net_with_plan() -> Net {
    let mut n = Net::new();
    let mut t = switchboard_config::Tenant::new("demo", "switchboard");
    t.dns = ["1001", "1002"]
        .iter()
        .map(|d| switchboard_config::Dn::new(*d, switchboard_config::DnKind::Extension))
        .collect();
    t.trunks = vec![switchboard_config::Trunk {
        name: "sbc".into(),
        addresses: vec![SBC.into()],
        dids: vec![switchboard_config::DidRange {
            first: "+15550100000".into(),
            last: "+15550100099".into(),
            target: Some("1002".into()),
        }],
    }];
    t.dialplan = vec![switchboard_config::DialRule {
        name: "out".into(),
        priority: 1,
        applies_to: switchboard_config::RuleScope::Internal,
        exact: None,
        prefix: Some("9".into()),
        range: None,
        regex: None,
        strip: 1,
        replace: None,
        add_prefix: "+1".into(),
        route: switchboard_config::RuleRoute::External,
        trunk: Some("sbc".into()),
    }];
    assert!(t.entity_problems().is_empty(), "{:?}", t.entity_problems());
    let cell = std::sync::Arc::new(switchboard_services::dialplan::role::DialplanCell::new(
        switchboard_services::dialplan::Dialplan::build([&t]),
    ));
    let settings = NodeSettings {
        local: addr(NODE),
        edge: addr(EDGE),
        trunks: vec![addr(TRUNK)],
        mcp: None,
        timers: Timers::default(),
        model: ModelSettings {
            ring_timeout_ms: RING_MS,
            node: 1,
            route_timeout_ms: 10_000,
        },
        voicemail: Default::default(),
    };
    n.node = SipNode::new(settings, Directory::live(cell), 7, n.now, 1_800_000_000_000);
    n
}

fn invite_from(src: &str, from: &str, called: &str, call_id: &str) -> String {
    format!(
        "INVITE sip:{called}@{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:{from}@switchboard>;tag=f1\r\nTo: <sip:{called}@switchboard>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from}@{src}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    )
}

#[test]
fn a_did_on_a_named_trunk_reaches_its_target_dn() {
    let mut n = net_with_plan();
    let out = n.feed(
        &invite_from(SBC, "+447700900123", "+15550100042", "did-1"),
        SBC,
    );
    one(&out, 5091, "100");
    let inv = one(&out, 5060, "INVITE");
    assert_eq!(inv.request_uri_str(), Some("sip:1002@switchboard"));
    let ev = n.events();
    assert_eq!(names(&ev), vec![("EventRinging", "1002".into())]);
    let c = ev[0].call().unwrap();
    assert_eq!(c.other_dn.as_deref(), Some("+447700900123"));
    assert_eq!(c.call_type, Some(switchboard_events::CallType::Inbound));

    // Outside the DID ranges and no inbound rule: 404, no leg.
    let out = n.feed(
        &invite_from(SBC, "+447700900123", "+15559990000", "did-2"),
        SBC,
    );
    one(&out, 5091, "404");
    assert!(to(&out, 5060).is_empty());
}

#[test]
fn a_rule_sends_an_internal_call_out_on_its_trunk_translated() {
    let mut n = net_with_plan();
    // 1001's phone, through the edge, dials 9 + a national number.
    let out = n.feed(&invite_from(EDGE, "1001", "92125551234", "out-1"), EDGE);
    one(&out, 5060, "100");
    let inv = one(&out, 5091, "INVITE");
    assert_eq!(
        inv.request_uri_str(),
        Some(format!("sip:+12125551234@{SBC}").as_str())
    );
    assert!(to(&out, 5090).is_empty(), "not the default gateway");
    let ev = n.events();
    assert_eq!(names(&ev), vec![("EventDialing", "1001".into())]);
    let c = ev[0].call().unwrap();
    assert_eq!(c.other_dn.as_deref(), Some("+12125551234"));
    assert_eq!(c.call_type, Some(switchboard_events::CallType::Outbound));

    // Without the rule's prefix a long number still goes to the default gateway.
    let out = n.feed(&invite_from(EDGE, "1001", "+442079460000", "out-2"), EDGE);
    let inv = one(&out, 5090, "INVITE");
    assert_eq!(
        inv.request_uri_str(),
        Some(format!("sip:+442079460000@{TRUNK}").as_str())
    );
    // And DN to DN stays internal through the edge.
    let out = n.feed(&invite_from(EDGE, "1001", "1002", "int-1"), EDGE);
    let inv = one(&out, 5060, "INVITE");
    assert_eq!(inv.request_uri_str(), Some("sip:1002@switchboard"));
}

#[test]
fn a_rest_transfer_to_a_rule_number_goes_out_on_the_trunk() {
    let mut n = net_with_plan();
    let dir = n.node.directory().clone();
    match dir.resolve("demo", "1001", "92125551234", true) {
        Resolved::Ok(Dest::Trunk { number, trunk }) => {
            assert_eq!((number.as_str(), trunk.as_str()), ("+12125551234", "sbc"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        dir.resolve("demo", "1001", "77", true),
        Resolved::Invalid(_)
    ));
    // A MakeCall to it: the origin's phone first, then the destination on the trunk.
    n.node.handle_command(
        NodeCommand {
            id: 9,
            tenant: "demo".into(),
            request: Request::MakeCall {
                dn: "1001".into(),
                to: dir.resolve("demo", "1001", "92125551234", true),
            },
        },
        n.now,
    );
    let out = n.sent();
    let inv = one(&out, 5060, "INVITE").clone();
    n.phone_reply(&inv, 180, None);
    let out = n.phone_reply(&inv, 200, Some(ANSWER));
    let leg = one(&out, 5091, "INVITE");
    assert_eq!(
        leg.request_uri_str(),
        Some(format!("sip:+12125551234@{SBC}").as_str())
    );
}

// ---- route points and forwarding, with DN options from the dial plan ----

/// A node whose plan has route point 5000 (default route 1002 after 2 s), queue 6000 (default
/// route 1002 after 3 s), DN 1001 forwarding on busy to 1002, and agent `a1002` on 1002.
fn net_with_routing() -> Net {
    use switchboard_config::{Agent, Dn, DnKind, RoutePoint, Tenant};
    let mut n = Net::new();
    let mut t = Tenant::new("demo", "switchboard");
    let mut d1001 = Dn::new("1001", DnKind::Extension);
    d1001.forward_busy = Some("1002".into());
    let mut queue = Dn::new("6000", DnKind::Queue);
    queue.no_answer_timeout_s = Some(3);
    queue.forward_no_answer = Some("1002".into());
    t.dns = vec![
        d1001,
        Dn::new("1002", DnKind::Extension),
        Dn::new("5000", DnKind::RoutePoint),
        queue,
    ];
    t.route_points = vec![RoutePoint {
        number: "5000".into(),
        strategy_url: "builtin:test".into(),
        description: String::new(),
        default_route: Some("1002".into()),
        timeout_s: Some(2),
    }];
    t.agents = vec![Agent {
        login_id: "a1002".into(),
        name: String::new(),
        dn: Some("1002".into()),
        skills: Default::default(),
        groups: Vec::new(),
    }];
    assert!(t.entity_problems().is_empty(), "{:?}", t.entity_problems());
    let cell = std::sync::Arc::new(switchboard_services::dialplan::role::DialplanCell::new(
        switchboard_services::dialplan::Dialplan::build([&t]),
    ));
    let settings = NodeSettings {
        local: addr(NODE),
        edge: addr(EDGE),
        trunks: vec![addr(TRUNK)],
        mcp: None,
        timers: Timers::default(),
        model: ModelSettings {
            ring_timeout_ms: RING_MS,
            node: 1,
            route_timeout_ms: 10_000,
        },
        voicemail: Default::default(),
    };
    n.node = SipNode::new(settings, Directory::live(cell), 7, n.now, 1_800_000_000_000);
    n
}

#[test]
fn a_route_point_parks_the_call_with_ringback_then_takes_its_default_route() {
    let mut n = net_with_routing();
    let out = n.feed(&invite_from(TRUNK, "+15551234567", "5000", "rp-1"), TRUNK);
    one(&out, 5090, "180");
    assert!(
        to(&out, 5060).is_empty(),
        "no leg to a route point: {out:#?}"
    );
    assert!(
        to(&out, 5090).iter().all(|m| m.status() != Some(200)),
        "not answered"
    );
    let ev = n.events();
    assert_eq!(names(&ev), vec![("EventRouteRequest", "5000".into())]);
    let rr = ev[0].call().unwrap();
    assert_eq!(
        (
            rr.ani.as_deref(),
            rr.dnis.as_deref(),
            rr.other_dn.as_deref()
        ),
        (Some("+15551234567"), Some("5000"), Some("+15551234567"))
    );

    // Nobody routes it: after the route point's 2 s it rings the default route.
    assert!(to(&n.advance(1_900), 5060).is_empty());
    let out = n.advance(200);
    let inv = one(&out, 5060, "INVITE").clone();
    assert_eq!(inv.request_uri_str(), Some("sip:1002@switchboard"));
    assert!(body(&inv).contains("m=audio 4000"), "the caller's offer");
    let ev = n.events();
    assert_eq!(
        names(&ev),
        vec![
            ("EventDiverted", "5000".into()),
            ("EventRinging", "1002".into())
        ]
    );
    assert_eq!(
        ev[0].call().unwrap().reason.as_deref(),
        Some("route_timeout")
    );
    assert_eq!(ev[1].call().unwrap().agent_id.as_deref(), Some("a1002"));
    let out = n.phone_reply(&inv, 200, Some(ANSWER));
    one(&out, 5090, "200");
    assert_eq!(
        names(&n.events()),
        vec![("EventEstablished", "1002".into())]
    );
}

#[test]
fn a_queue_parks_the_call_with_ringback_then_takes_its_default_route() {
    let mut n = net_with_routing();
    let out = n.feed(&invite_from(TRUNK, "+15551234567", "6000", "q-1"), TRUNK);
    one(&out, 5090, "180");
    assert!(to(&out, 5060).is_empty(), "no leg to a queue: {out:#?}");
    assert!(
        to(&out, 5090).iter().all(|m| m.status() != Some(200)),
        "not answered"
    );
    let ev = n.events();
    assert_eq!(names(&ev), vec![("EventQueued", "6000".into())]);
    let q = ev[0].call().unwrap();
    assert_eq!(
        (q.ani.as_deref(), q.dnis.as_deref(), q.other_dn.as_deref()),
        (Some("+15551234567"), Some("6000"), Some("+15551234567"))
    );

    // Nobody distributes it: after the queue's 3 s it rings the queue's forward target.
    assert!(to(&n.advance(2_900), 5060).is_empty());
    let out = n.advance(200);
    let inv = one(&out, 5060, "INVITE").clone();
    assert_eq!(inv.request_uri_str(), Some("sip:1002@switchboard"));
    assert!(body(&inv).contains("m=audio 4000"), "the caller's offer");
    let ev = n.events();
    assert_eq!(
        names(&ev),
        vec![
            ("EventDiverted", "6000".into()),
            ("EventRinging", "1002".into())
        ]
    );
    assert_eq!(
        ev[0].call().unwrap().reason.as_deref(),
        Some("queue_timeout")
    );
    let out = n.phone_reply(&inv, 200, Some(ANSWER));
    one(&out, 5090, "200");
    assert_eq!(
        names(&n.events()),
        vec![("EventEstablished", "1002".into())]
    );
}

#[test]
fn a_busy_dn_forwards_to_its_busy_target() {
    let mut n = net_with_routing();
    let out = n.feed(&carrier_invite("fb-1"), TRUNK);
    let inv = one(&out, 5060, "INVITE").clone();
    assert_eq!(inv.request_uri_str(), Some("sip:1001@switchboard"));
    let out = n.phone_reply(&inv, 486, None);
    assert!(
        to(&out, 5090).iter().all(|m| m.status() != Some(486)),
        "the carrier does not hear busy: {out:#?}"
    );
    let fwd = to(&out, 5060)
        .into_iter()
        .find(|m| m.method() == Some(&Method::Invite))
        .expect("an INVITE for the busy target")
        .clone();
    assert_eq!(fwd.request_uri_str(), Some("sip:1002@switchboard"));
    let ev = n.events();
    assert_eq!(
        names(&ev),
        vec![
            ("EventRinging", "1001".into()),
            ("EventDiverted", "1001".into()),
            ("EventRinging", "1002".into())
        ]
    );
    let diverted = ev[1].call().unwrap();
    assert_eq!(diverted.reason.as_deref(), Some("forward_busy"));
    assert_eq!(diverted.third_party_dn.as_deref(), Some("1002"));
}

// ---- treatments ----

const MCP: &str = "127.0.0.1:5080";
const MCP_SDP: &str = "v=0\r\no=mcp 333 1 IN IP4 10.0.0.3\r\ns=-\r\nc=IN IP4 10.0.0.3\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// A node with route point 5000 and the media server at `mcp`.
fn net_with_route_point(mcp: Option<SocketAddr>) -> Net {
    let mut n = Net::new();
    let mut t = switchboard_config::Tenant::new("demo", "switchboard");
    t.dns = vec![
        switchboard_config::Dn::new("1001", switchboard_config::DnKind::Extension),
        switchboard_config::Dn::new("5000", switchboard_config::DnKind::RoutePoint),
    ];
    t.route_points = vec![switchboard_config::RoutePoint {
        number: "5000".into(),
        strategy_url: "builtin:test".into(),
        description: String::new(),
        default_route: None,
        timeout_s: None,
    }];
    let cell = std::sync::Arc::new(switchboard_services::dialplan::role::DialplanCell::new(
        switchboard_services::dialplan::Dialplan::build([&t]),
    ));
    let settings = NodeSettings {
        local: addr(NODE),
        edge: addr(EDGE),
        trunks: vec![addr(TRUNK)],
        mcp,
        timers: Timers::default(),
        model: ModelSettings {
            ring_timeout_ms: RING_MS,
            node: 1,
            route_timeout_ms: 10_000,
        },
        voicemail: Default::default(),
    };
    n.node = SipNode::new(settings, Directory::live(cell), 7, n.now, 1_800_000_000_000);
    n
}

#[test]
fn a_treatment_invites_the_media_server_answers_the_caller_and_reads_the_exit_namelist() {
    use switchboard_events::requests::Treatment;
    use switchboard_services::sip_node::treatment::media_service;
    let mut n = net_with_route_point(Some(addr(MCP)));
    let out = n.feed(&invite_from(TRUNK, "+15551234567", "5000", "rp-1"), TRUNK);
    one(&out, 5090, "180");
    let rr = n.events();
    assert_eq!(names(&rr), vec![("EventRouteRequest", "5000".to_string())]);
    let conn = rr[0].call().and_then(|c| c.conn_id).expect("conn");
    let mut params = switchboard_events::UserData::new();
    params.insert("lang".into(), "en".into());
    let service = media_service(&Treatment::PlayApplication {
        url: "http://as/menu.vxml".into(),
        params,
    })
    .expect("a service");
    n.node.handle_command(
        NodeCommand {
            id: 9,
            tenant: "demo".into(),
            request: Request::ApplyTreatment {
                conn,
                dn: "5000".into(),
                service,
            },
        },
        n.now,
    );
    let out = n.sent();
    let inv = one(&out, 5080, "INVITE").clone();
    assert_eq!(
        inv.request_uri_str(),
        Some("sip:dialog@127.0.0.1:5080;voicexml=http://as/menu.vxml%3Flang%3Den")
    );
    assert!(body(&inv).contains("m=audio 4000"), "the caller's offer");
    assert!(inv.to().unwrap().uri.to_string().contains("5000"));

    let ok = response_to(&inv, 200, Some("mcptag"))
        .header("Contact", format_args!("<sip:mcp@{MCP}>"))
        .body("application/sdp", MCP_SDP.as_bytes());
    let out = n.feed_bytes(ok, MCP);
    one(&out, 5080, "ACK");
    let answer = one(&out, 5090, "200");
    assert!(body(answer).contains("m=audio 7000"), "{}", body(answer));
    let applied = n.events();
    assert_eq!(
        names(&applied),
        vec![("EventTreatmentApplied", "5000".to_string())]
    );
    assert_eq!(applied[0].call().unwrap().request_id, Some(9));

    // The application exits: mcp's BYE carries the namelist.
    let exit = "--b\r\nContent-Disposition: form-data; name=\"choice\"\r\n\r\n2\r\n--b--\r\n";
    let from_tag = inv.from().unwrap().tag().unwrap().to_string();
    let bye = format!(
        "BYE sip:sipnode@{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {MCP};branch=z9hG4bKmcpbye\r\nMax-Forwards: 70\r\nFrom: <sip:5000@switchboard>;tag=mcptag\r\nTo: <sip:+15551234567@switchboard>;tag={from_tag}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n{exit}",
        inv.call_id().unwrap(),
        exit.len()
    );
    let out = n.feed(&bye, MCP);
    one(&out, 5080, "200");
    assert!(to(&out, 5090).is_empty(), "the caller stays: {out:?}");
    let end = n.events();
    assert_eq!(names(&end), vec![("EventTreatmentEnd", "5000".to_string())]);
    let c = end[0].call().unwrap();
    assert_eq!(c.reason.as_deref(), Some("completed"));
    assert_eq!(
        c.treatment_results.as_ref().and_then(|r| r.get("choice")),
        Some(&"2".into())
    );
}

#[test]
fn without_a_media_server_a_treatment_is_an_error() {
    let mut n = net_with_route_point(None);
    n.feed(&invite_from(TRUNK, "+15551234567", "5000", "rp-2"), TRUNK);
    let conn = n.events()[0].call().and_then(|c| c.conn_id).expect("conn");
    n.node.handle_command(
        NodeCommand {
            id: 4,
            tenant: "demo".into(),
            request: Request::ApplyTreatment {
                conn,
                dn: "5000".into(),
                service: switchboard_services::sip_node::model::MediaService {
                    user: "annc".into(),
                    params: ";play=tone:440".into(),
                },
            },
        },
        n.now,
    );
    assert!(n.sent().is_empty(), "nothing to send");
    match n.events().as_slice() {
        [Event::EventError(e)] => {
            assert_eq!(
                (e.request_id, e.error_code.as_str()),
                (4, "media_server_failed")
            )
        }
        other => panic!("{other:?}"),
    }
}

// ---- voicemail ----

/// Tenant demo: 1001 with mailbox 8100 (agent a1001's), access DN 7000; the voicemail route
/// set when `route` is.
fn voicemail_net(route: bool) -> Net {
    let mut n = Net::new();
    let mut t = switchboard_config::Tenant::new("demo", "switchboard");
    let mut d1001 = switchboard_config::Dn::new("1001", switchboard_config::DnKind::Extension);
    d1001.mailbox = Some("8100".into());
    // A queue whose callers go to the mailbox after 1 s.
    let mut queue = switchboard_config::Dn::new("6000", switchboard_config::DnKind::Queue);
    queue.mailbox = Some("8100".into());
    queue.no_answer_timeout_s = Some(1);
    t.dns = vec![
        d1001,
        switchboard_config::Dn::new("1002", switchboard_config::DnKind::Extension),
        switchboard_config::Dn::new("7000", switchboard_config::DnKind::VoicemailAccess),
        queue,
    ];
    let mut mailbox = switchboard_config::Mailbox::new("8100", "1234");
    mailbox.owner_agent = Some("a1001".into());
    t.mailboxes = vec![mailbox];
    t.agents = vec![switchboard_config::Agent {
        login_id: "a1001".into(),
        name: String::new(),
        dn: Some("1001".into()),
        skills: Default::default(),
        groups: Vec::new(),
    }];
    assert!(t.entity_problems().is_empty(), "{:?}", t.entity_problems());
    let cell = std::sync::Arc::new(switchboard_services::dialplan::role::DialplanCell::new(
        switchboard_services::dialplan::Dialplan::build([&t]),
    ));
    let voicemail = switchboard_services::sip_node::core::VoicemailRoute::default();
    if route {
        voicemail.set(switchboard_services::sip_node::core::VoicemailTarget {
            mcp: addr(MCP),
            base_url: "http://127.0.0.1:8080".into(),
        });
    }
    let settings = NodeSettings {
        local: addr(NODE),
        edge: addr(EDGE),
        trunks: vec![addr(TRUNK)],
        mcp: None,
        timers: Timers::default(),
        model: ModelSettings {
            ring_timeout_ms: RING_MS,
            node: 1,
            route_timeout_ms: 10_000,
        },
        voicemail,
    };
    n.node = SipNode::new(settings, Directory::live(cell), 7, n.now, 1_800_000_000_000);
    n
}

#[test]
fn an_unreachable_dn_with_a_mailbox_sends_the_caller_to_the_deposit_menu() {
    let mut n = voicemail_net(true);
    let out = n.feed(&carrier_invite("vm-1"), TRUNK);
    let inv = one(&out, 5060, "INVITE").clone();
    let out = n.phone_reply(&inv, 480, None);
    let vm = one(&out, 5080, "INVITE");
    let ruri = vm.request_uri_str().unwrap_or("");
    let conn = n
        .node
        .model()
        .calls()
        .next()
        .map(|c| c.conn)
        .expect("a call");
    assert_eq!(
        ruri,
        format!(
            "sip:dialog@{MCP};voicexml=http://127.0.0.1:8080/voicemail/v1/tenants/demo/deposit/8100%3Fcaller%3D%252B15551234567&conn%3D{conn}"
        )
    );
    assert!(body(vm).contains("m=audio 4000"), "the caller's offer");
    let ev = n.events();
    let diverted = ev
        .iter()
        .find_map(|e| match e {
            Event::EventDiverted(c) => Some(c.clone()),
            _ => None,
        })
        .expect("EventDiverted");
    assert_eq!(diverted.this_dn, "1001");
    assert_eq!(diverted.third_party_dn.as_deref(), Some("8100"));
    assert_eq!(diverted.reason.as_deref(), Some("voicemail"));
}

#[test]
fn the_access_dn_goes_to_the_access_menu_and_fails_without_a_media_server() {
    let mut n = voicemail_net(true);
    let out = n.feed(&invite_from(PHONE, "1002", "7000", "acc-1"), PHONE);
    let vm = one(&out, 5080, "INVITE");
    assert_eq!(
        vm.request_uri_str(),
        Some("sip:dialog@127.0.0.1:5080;voicexml=http://127.0.0.1:8080/voicemail/v1/tenants/demo/access%3Fcaller%3D1002")
    );
    // Until the voicemail role says where the media server is, such calls fail.
    let mut n = voicemail_net(false);
    let out = n.feed(&invite_from(PHONE, "1002", "7000", "acc-2"), PHONE);
    assert!(to(&out, 5080).is_empty(), "{out:?}");
    one(&out, 6001, "503");
}

#[test]
fn a_queue_with_a_mailbox_sends_timed_out_callers_to_it() {
    let mut n = voicemail_net(true);
    let out = n.feed(&invite_from(TRUNK, "+15557654321", "6000", "q-1"), TRUNK);
    assert!(to(&out, 5080).is_empty(), "queued first: {out:?}");
    let out = n.advance(1_100);
    let vm = one(&out, 5080, "INVITE");
    let ruri = vm.request_uri_str().unwrap_or("");
    assert!(
        ruri.starts_with("sip:dialog@127.0.0.1:5080;voicexml=http://127.0.0.1:8080/voicemail/v1/tenants/demo/deposit/8100%3Fcaller%3D%252B15557654321"),
        "{ruri}"
    );
    let ev = n.events();
    assert!(
        ev.iter().any(|e| matches!(e, Event::EventDiverted(c)
            if c.this_dn == "6000" && c.reason.as_deref() == Some("queue_timeout")
                && c.third_party_dn.as_deref() == Some("8100"))),
        "{ev:?}"
    );
}
