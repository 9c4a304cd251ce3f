//! Transaction layer state machines under simulated time: every path of RFC 3261 §17 and
//! RFC 6026, retransmission schedules, absorption, ACK generation, RFC 2543 matching.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchboard_sip::build::{cancel_for, response_to};
use switchboard_sip::transaction::{
    ClientTxId, Incoming, ServerTxId, State, Timers, Transactions, TxError, TxEvent,
};
use switchboard_sip::{Message, Method, Peer, Transmit, Transport};

const T1: Duration = Duration::from_millis(500);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn parse(s: &str) -> Message {
    Message::parse(Bytes::copy_from_slice(s.as_bytes())).expect("test message parses")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn udp(a: &str) -> Peer {
    Peer::udp(addr(a))
}

fn tcp(a: &str) -> Peer {
    Peer {
        addr: addr(a),
        transport: Transport::Tcp,
    }
}

fn request(method: &str, via: &str, to_tag: Option<&str>, seq: u32) -> Message {
    let to = match to_tag {
        Some(t) => format!("<sip:bob@b.example>;tag={t}"),
        None => "<sip:bob@b.example>".to_string(),
    };
    parse(&format!(
        "{method} sip:bob@b.example SIP/2.0\r\n\
Via: {via}\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=fromtag\r\n\
To: {to}\r\n\
Call-ID: call-1@a.example\r\n\
CSeq: {seq} {method}\r\n\
Contact: <sip:alice@192.0.2.1>\r\n\
Content-Length: 0\r\n\r\n"
    ))
}

fn invite(branch: &str) -> Message {
    request(
        "INVITE",
        &format!("SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"),
        None,
        1,
    )
}

fn options(branch: &str) -> Message {
    request(
        "OPTIONS",
        &format!("SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"),
        None,
        1,
    )
}

fn reply(req: &Message, code: u16, tag: &str) -> Message {
    Message::parse(response_to(req, code, Some(tag)).finish()).expect("response parses")
}

/// A transaction layer with a simulated clock.
struct Sim {
    txs: Transactions,
    t0: Instant,
    now: Instant,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(Timers::default())
    }

    fn with(timers: Timers) -> Sim {
        let t0 = Instant::now();
        Sim {
            txs: Transactions::new(timers),
            t0,
            now: t0,
        }
    }

    fn at(&mut self, d: Duration) {
        self.now = self.t0 + d;
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.txs.poll_transmit()).collect()
    }

    fn events(&mut self) -> Vec<TxEvent> {
        std::iter::from_fn(|| self.txs.poll_event()).collect()
    }

    /// Runs timers up to `until`; returns when each transmit went out.
    fn run(&mut self, until: Duration) -> Vec<(Duration, Transmit)> {
        let mut out: Vec<(Duration, Transmit)> = Vec::new();
        let end = self.t0 + until;
        while let Some(next) = self.txs.poll_timeout() {
            if next > end {
                break;
            }
            assert!(next >= self.now, "deadline in the past");
            self.now = next;
            self.txs.handle_timeout(next);
            let when = self.elapsed();
            out.extend(self.transmits().into_iter().map(|t| (when, t)));
        }
        self.now = end;
        out
    }

    fn recv(&mut self, msg: Message, from: Peer) -> Incoming {
        let now = self.now;
        self.txs.handle_incoming(msg, from, now)
    }

    fn send(&mut self, msg: Message, to: Peer) -> ClientTxId {
        let now = self.now;
        self.txs.send_request(msg, to, now).expect("send_request")
    }

    fn respond(&mut self, tx: ServerTxId, msg: Message) -> Result<(), TxError> {
        let now = self.now;
        self.txs.send_response(tx, msg, now)
    }

    fn new_request(&mut self, msg: Message, from: Peer) -> (ServerTxId, Message) {
        match self.recv(msg, from) {
            Incoming::Request { tx, msg } => (tx, msg),
            other => panic!("expected a new request, got {other:?}"),
        }
    }
}

fn times(sent: &[(Duration, Transmit)]) -> Vec<Duration> {
    sent.iter().map(|(d, _)| *d).collect()
}

fn first_line(t: &Transmit) -> String {
    let s = String::from_utf8_lossy(&t.payload);
    s.lines().next().unwrap_or("").to_string()
}

fn as_msg(t: &Transmit) -> Message {
    Message::parse(t.payload.clone()).expect("transmit parses")
}

/// Cumulative send times for retransmission intervals starting at T1, doubling, capped.
fn schedule(first: Duration, cap: Option<Duration>, until: Duration) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut at = first;
    let mut interval = T1;
    loop {
        at += interval;
        if at >= until {
            return out;
        }
        out.push(at);
        interval *= 2;
        if let Some(c) = cap {
            interval = interval.min(c);
        }
    }
}

// ---------------------------------------------------------------- INVITE client

#[test]
fn invite_client_timer_a_doubles_until_timer_b() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let tx = s.send(invite("z9hG4bKa1"), ua);
    let first = s.transmits();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].peer, ua);
    assert_eq!(s.txs.client_state(tx), Some(State::Calling));
    let sent = s.run(ms(64 * 500));
    // Timer A: 0.5, 1, 2, 4, 8, 16 s apart; never capped by T2 (RFC 3261 §17.1.1.2).
    assert_eq!(times(&sent), schedule(Duration::ZERO, None, ms(32_000)));
    assert_eq!(times(&sent).last(), Some(&ms(31_500)));
    assert!(sent.iter().all(|(_, t)| t.payload == first[0].payload));
    assert_eq!(
        s.events(),
        vec![TxEvent::Timeout(tx), TxEvent::ClientTerminated(tx)]
    );
    assert_eq!(s.txs.client_state(tx), None);
    assert_eq!(s.txs.len(), (0, 0));
    assert_eq!(s.txs.poll_timeout(), None);
}

#[test]
fn invite_client_provisional_stops_retransmissions_and_starts_timer_c() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let req = invite("z9hG4bKa2");
    let tx = s.send(req.clone(), ua);
    s.transmits();
    let sent = s.run(ms(700));
    assert_eq!(times(&sent), vec![ms(500)]);
    match s.recv(reply(&req, 180, "b1"), ua) {
        Incoming::Response { tx: t, msg } => {
            assert_eq!(t, tx);
            assert_eq!(msg.status(), Some(180));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.txs.client_state(tx), Some(State::Proceeding));
    // No retransmissions and no Timer B in Proceeding.
    assert!(s.run(ms(100_000)).is_empty());
    assert!(s.events().is_empty());
    // Another provisional restarts Timer C.
    assert!(matches!(
        s.recv(reply(&req, 183, "b1"), ua),
        Incoming::Response { .. }
    ));
    let c = Timers::default().timer_c.expect("timer C on by default");
    s.run(ms(100_000) + c - ms(1));
    assert!(s.events().is_empty());
    s.run(ms(100_000) + c);
    assert_eq!(s.events(), vec![TxEvent::ProceedingTimeout(tx)]);
    // The TU's CANCEL gets 64*T1; a 487 would complete the transaction, silence ends it.
    s.run(ms(100_000) + c + ms(32_000));
    assert_eq!(
        s.events(),
        vec![TxEvent::Timeout(tx), TxEvent::ClientTerminated(tx)]
    );
}

#[test]
fn invite_client_without_timer_c_waits_in_proceeding() {
    let mut s = Sim::with(Timers {
        timer_c: None,
        ..Timers::default()
    });
    let ua = udp("192.0.2.9:5060");
    let req = invite("z9hG4bKnc");
    let tx = s.send(req.clone(), ua);
    s.recv(reply(&req, 180, "b1"), ua);
    s.run(ms(3_600_000));
    assert!(s.events().is_empty());
    assert_eq!(s.txs.client_state(tx), Some(State::Proceeding));
    assert_eq!(s.txs.poll_timeout(), None);
}

#[test]
fn invite_client_non_2xx_final_generates_ack_and_absorbs_retransmissions() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let req = invite("z9hG4bKa3");
    let tx = s.send(req.clone(), ua);
    s.transmits();
    s.at(ms(100));
    s.recv(reply(&req, 180, "b1"), ua);
    s.at(ms(2_000));
    let busy = reply(&req, 486, "b1");
    match s.recv(busy.clone(), ua) {
        Incoming::Response { tx: t, msg } => {
            assert_eq!(t, tx);
            assert_eq!(msg.status(), Some(486));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.txs.client_state(tx), Some(State::Completed));
    let acks = s.transmits();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].peer, ua);
    let ack = as_msg(&acks[0]);
    ack.validate().expect("ACK is valid");
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.request_uri_str(), req.request_uri_str());
    assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bKa3"));
    assert_eq!(ack.cseq().unwrap().seq, 1);
    assert_eq!(ack.cseq().unwrap().method, Method::Ack);
    assert_eq!(ack.to().unwrap().tag(), Some("b1"));
    // A retransmitted 486 is absorbed and re-ACKed.
    s.at(ms(2_500));
    assert!(matches!(s.recv(busy.clone(), ua), Incoming::Absorbed));
    let again = s.transmits();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, acks[0].payload);
    // Provisional after final: dropped.
    assert!(matches!(
        s.recv(reply(&req, 180, "b1"), ua),
        Incoming::Absorbed
    ));
    // Timer D: 32 s after the final response.
    s.run(ms(2_000 + 32_000 - 1));
    assert!(s.events().is_empty());
    s.run(ms(2_000 + 32_000));
    assert_eq!(s.events(), vec![TxEvent::ClientTerminated(tx)]);
    // Now a retransmission matches nothing.
    assert!(matches!(s.recv(busy, ua), Incoming::StrayResponse { .. }));
}

#[test]
fn invite_client_late_2xx_after_non_2xx_is_stray() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let req = invite("z9hG4bKa4");
    s.send(req.clone(), ua);
    s.recv(reply(&req, 603, "b1"), ua);
    s.transmits();
    assert!(matches!(
        s.recv(reply(&req, 200, "b2"), ua),
        Incoming::StrayResponse { .. }
    ));
    assert!(s.transmits().is_empty(), "no ACK for a 2xx from the layer");
}

#[test]
fn invite_client_2xx_accepted_passes_every_2xx_until_timer_m() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let req = invite("z9hG4bKa5");
    let tx = s.send(req.clone(), ua);
    s.transmits();
    s.at(ms(300));
    let ok = reply(&req, 200, "b1");
    assert!(matches!(s.recv(ok.clone(), ua), Incoming::Response { tx: t, .. } if t == tx));
    assert_eq!(s.txs.client_state(tx), Some(State::Accepted));
    assert!(s.transmits().is_empty(), "the TU ACKs a 2xx");
    // Retransmission of the 2xx and a 2xx from another fork both reach the TU (RFC 6026).
    s.at(ms(800));
    assert!(matches!(s.recv(ok, ua), Incoming::Response { .. }));
    assert!(matches!(
        s.recv(reply(&req, 200, "fork2"), ua),
        Incoming::Response { msg, .. } if msg.to().unwrap().tag() == Some("fork2")
    ));
    assert!(matches!(
        s.recv(reply(&req, 180, "b1"), ua),
        Incoming::Absorbed
    ));
    assert!(matches!(
        s.recv(reply(&req, 486, "b3"), ua),
        Incoming::Absorbed
    ));
    // No retransmissions of the INVITE after the 2xx.
    let sent = s.run(ms(300 + 32_000 - 1));
    assert!(sent.is_empty());
    assert!(s.events().is_empty());
    s.run(ms(300 + 32_000));
    assert_eq!(s.events(), vec![TxEvent::ClientTerminated(tx)]);
}

#[test]
fn invite_client_over_tcp_never_retransmits_and_ends_at_once_after_ack() {
    let mut s = Sim::new();
    let ua = tcp("192.0.2.9:5060");
    let req = request("INVITE", "SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKt1", None, 1);
    let tx = s.send(req, ua);
    assert_eq!(s.transmits().len(), 1);
    // Timer B still runs over TCP; Timer A does not.
    assert!(s.run(ms(31_999)).is_empty());
    let tx2 = s.send(
        request("INVITE", "SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKt2", None, 2),
        ua,
    );
    s.transmits();
    s.run(ms(32_000));
    assert_eq!(
        s.events(),
        vec![TxEvent::Timeout(tx), TxEvent::ClientTerminated(tx)]
    );
    let req2 = s.txs.client_request(tx2).expect("live").clone();
    assert!(matches!(
        s.recv(reply(&req2, 480, "x"), ua),
        Incoming::Response { .. }
    ));
    let ack = s.transmits();
    assert_eq!(ack.len(), 1, "the ACK is still sent");
    assert_eq!(ack[0].peer, ua);
    // Timer D = 0 over reliable transports.
    assert_eq!(s.events(), vec![TxEvent::ClientTerminated(tx2)]);
    assert_eq!(s.txs.len(), (0, 0));
}

// ---------------------------------------------------------------- non-INVITE client

#[test]
fn non_invite_client_timer_e_doubles_to_t2_until_timer_f() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let tx = s.send(options("z9hG4bKn1"), ua);
    assert_eq!(s.txs.client_state(tx), Some(State::Trying));
    s.transmits();
    let sent = s.run(ms(40_000));
    let expect = schedule(Duration::ZERO, Some(ms(4_000)), ms(32_000));
    assert_eq!(times(&sent), expect);
    // 0.5, 1.5, 3.5, 7.5, then every 4 s.
    assert_eq!(
        &expect[..6],
        &[
            ms(500),
            ms(1_500),
            ms(3_500),
            ms(7_500),
            ms(11_500),
            ms(15_500)
        ]
    );
    assert_eq!(
        s.events(),
        vec![TxEvent::Timeout(tx), TxEvent::ClientTerminated(tx)]
    );
}

#[test]
fn non_invite_client_proceeding_retransmits_every_t2() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let req = options("z9hG4bKn2");
    let tx = s.send(req.clone(), ua);
    s.transmits();
    assert_eq!(times(&s.run(ms(600))), vec![ms(500)]);
    assert!(matches!(
        s.recv(reply(&req, 100, "x"), ua),
        Incoming::Response { .. }
    ));
    assert_eq!(s.txs.client_state(tx), Some(State::Proceeding));
    // The pending E (due at 1.5 s) fires, then every T2 (RFC 3261 §17.1.2.2).
    let sent = s.run(ms(14_000));
    assert_eq!(
        times(&sent),
        vec![ms(1_500), ms(5_500), ms(9_500), ms(13_500)]
    );
    // Timer F still bounds the transaction.
    s.run(ms(32_000));
    assert_eq!(
        s.events(),
        vec![TxEvent::Timeout(tx), TxEvent::ClientTerminated(tx)]
    );
}

#[test]
fn non_invite_client_final_response_then_timer_k() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let req = options("z9hG4bKn3");
    let tx = s.send(req.clone(), ua);
    s.transmits();
    s.at(ms(200));
    let ok = reply(&req, 200, "x");
    assert!(matches!(s.recv(ok.clone(), ua), Incoming::Response { .. }));
    assert_eq!(s.txs.client_state(tx), Some(State::Completed));
    assert!(matches!(s.recv(ok.clone(), ua), Incoming::Absorbed));
    assert!(s.transmits().is_empty(), "no ACK for non-INVITE");
    // No more retransmissions; Timer K = T4.
    assert!(s.run(ms(5_199)).is_empty());
    assert!(s.events().is_empty());
    s.run(ms(5_200));
    assert_eq!(s.events(), vec![TxEvent::ClientTerminated(tx)]);
    assert!(matches!(s.recv(ok, ua), Incoming::StrayResponse { .. }));
}

#[test]
fn non_invite_client_over_tcp_ends_on_final_response() {
    let mut s = Sim::new();
    let ua = tcp("192.0.2.9:5060");
    let req = request(
        "BYE",
        "SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKn4",
        Some("b"),
        2,
    );
    let tx = s.send(req.clone(), ua);
    s.transmits();
    assert!(s.run(ms(10_000)).is_empty());
    assert!(matches!(
        s.recv(reply(&req, 200, "b"), ua),
        Incoming::Response { .. }
    ));
    assert_eq!(s.events(), vec![TxEvent::ClientTerminated(tx)]);
}

#[test]
fn client_matching_uses_branch_and_cseq_method() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let req = invite("z9hG4bKm1");
    let inv = s.send(req.clone(), ua);
    s.recv(reply(&req, 180, "b"), ua);
    // The CANCEL shares the INVITE's branch but is its own transaction.
    let cancel = Message::parse(cancel_for(&req)).unwrap();
    let can = s.send(cancel.clone(), ua);
    assert_ne!(inv, can);
    assert_eq!(s.txs.len(), (0, 2));
    match s.recv(reply(&cancel, 200, "b"), ua) {
        Incoming::Response { tx, .. } => assert_eq!(tx, can),
        other => panic!("{other:?}"),
    }
    match s.recv(reply(&req, 487, "b"), ua) {
        Incoming::Response { tx, .. } => assert_eq!(tx, inv),
        other => panic!("{other:?}"),
    }
    // Another branch matches nothing.
    assert!(matches!(
        s.recv(reply(&invite("z9hG4bKother"), 200, "b"), ua),
        Incoming::StrayResponse { .. }
    ));
    // Re-using a live branch is refused.
    let dup = Message::parse(cancel_for(&req)).unwrap();
    assert_eq!(
        s.txs.send_request(dup, ua, s.now),
        Err(TxError::DuplicateBranch)
    );
}

#[test]
fn send_request_refuses_what_is_not_a_transaction() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let ack = request("ACK", "SIP/2.0/UDP h;branch=z9hG4bKack", Some("b"), 1);
    assert_eq!(s.txs.send_request(ack, ua, s.now), Err(TxError::Ack));
    let legacy = request("OPTIONS", "SIP/2.0/UDP h", None, 1);
    assert_eq!(
        s.txs.send_request(legacy, ua, s.now),
        Err(TxError::NoBranch)
    );
    let bare = request("OPTIONS", "SIP/2.0/UDP h;branch=z9hG4bK", None, 1);
    assert_eq!(s.txs.send_request(bare, ua, s.now), Err(TxError::NoBranch));
    let resp = reply(&options("z9hG4bKr"), 200, "x");
    assert_eq!(
        s.txs.send_request(resp, ua, s.now),
        Err(TxError::NotRequest)
    );
    assert!(s.txs.is_empty());
    assert!(s.transmits().is_empty());
}

#[test]
fn transport_error_ends_the_peers_transactions() {
    let mut s = Sim::new();
    let a = tcp("192.0.2.9:5060");
    let b = tcp("192.0.2.10:5060");
    let t1 = s.send(
        request("INVITE", "SIP/2.0/TCP h;branch=z9hG4bKe1", None, 1),
        a,
    );
    let t2 = s.send(
        request("OPTIONS", "SIP/2.0/TCP h;branch=z9hG4bKe2", None, 1),
        a,
    );
    let t3 = s.send(
        request("OPTIONS", "SIP/2.0/TCP h;branch=z9hG4bKe3", None, 1),
        b,
    );
    let (srv, _) = s.new_request(
        request("OPTIONS", "SIP/2.0/TCP 192.0.2.9;branch=z9hG4bKe4", None, 1),
        a,
    );
    s.txs.transport_error(a);
    assert_eq!(
        s.events(),
        vec![
            TxEvent::TransportError(t1),
            TxEvent::ClientTerminated(t1),
            TxEvent::TransportError(t2),
            TxEvent::ClientTerminated(t2),
            TxEvent::ServerTransportError(srv),
            TxEvent::ServerTerminated(srv),
        ]
    );
    assert_eq!(s.txs.client_state(t3), Some(State::Trying));
    assert_eq!(s.txs.len(), (0, 1));
}

// ---------------------------------------------------------------- INVITE server

#[test]
fn invite_server_sends_100_when_the_tu_is_slow() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (tx, msg) = s.new_request(invite("z9hG4bKs1"), ua);
    assert_eq!(msg.method(), Some(&Method::Invite));
    assert_eq!(s.txs.server_state(tx), Some(State::Proceeding));
    let sent = s.run(ms(1_000));
    assert_eq!(times(&sent), vec![ms(200)]);
    let trying = as_msg(&sent[0].1);
    assert_eq!(trying.status(), Some(100));
    assert_eq!(trying.top_via().unwrap().branch(), Some("z9hG4bKs1"));
    assert_eq!(sent[0].1.peer, ua);
    // The retransmitted INVITE is absorbed and answered with the 100 again.
    assert!(matches!(
        s.recv(invite("z9hG4bKs1"), ua),
        Incoming::Absorbed
    ));
    let again = s.transmits();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, sent[0].1.payload);
}

#[test]
fn invite_server_tu_provisional_replaces_the_automatic_100() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (tx, req) = s.new_request(invite("z9hG4bKs2"), ua);
    s.at(ms(50));
    s.respond(tx, reply(&req, 180, "u1")).unwrap();
    let ringing = s.transmits();
    assert_eq!(first_line(&ringing[0]), "SIP/2.0 180 Ringing");
    assert!(s.run(ms(1_000)).is_empty(), "no automatic 100 after a 180");
    assert!(matches!(
        s.recv(invite("z9hG4bKs2"), ua),
        Incoming::Absorbed
    ));
    let again = s.transmits();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, ringing[0].payload);
}

#[test]
fn invite_server_retransmission_before_any_response_gets_an_immediate_100() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    s.new_request(invite("z9hG4bKs3"), ua);
    s.at(ms(100));
    assert!(matches!(
        s.recv(invite("z9hG4bKs3"), ua),
        Incoming::Absorbed
    ));
    let sent = s.transmits();
    assert_eq!(sent.len(), 1);
    assert_eq!(first_line(&sent[0]), "SIP/2.0 100 Trying");
    assert!(s.run(ms(1_000)).is_empty(), "only one 100");
}

#[test]
fn invite_server_without_automatic_100_stays_quiet() {
    let mut s = Sim::with(Timers {
        trying: None,
        ..Timers::default()
    });
    let ua = udp("192.0.2.1:5060");
    s.new_request(invite("z9hG4bKs4"), ua);
    assert!(s.run(ms(1_000)).is_empty());
    assert!(matches!(
        s.recv(invite("z9hG4bKs4"), ua),
        Incoming::Absorbed
    ));
    assert!(s.transmits().is_empty());
}

#[test]
fn invite_server_non_2xx_timer_g_until_timer_h() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (tx, req) = s.new_request(invite("z9hG4bKs5"), ua);
    let busy = reply(&req, 486, "u1");
    s.respond(tx, busy.clone()).unwrap();
    assert_eq!(s.txs.server_state(tx), Some(State::Completed));
    assert_eq!(s.transmits().len(), 1);
    let sent = s.run(ms(40_000));
    assert_eq!(
        times(&sent),
        schedule(Duration::ZERO, Some(ms(4_000)), ms(32_000))
    );
    assert!(sent.iter().all(|(_, t)| t.payload == busy.bytes()));
    assert_eq!(
        s.events(),
        vec![TxEvent::NoAck(tx), TxEvent::ServerTerminated(tx)]
    );
}

#[test]
fn invite_server_ack_confirms_then_timer_i() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (tx, req) = s.new_request(invite("z9hG4bKs6"), ua);
    s.respond(tx, reply(&req, 404, "u1")).unwrap();
    s.transmits();
    // One G retransmission, then the ACK.
    assert_eq!(times(&s.run(ms(700))), vec![ms(500)]);
    let ack = request(
        "ACK",
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKs6",
        Some("u1"),
        1,
    );
    assert!(matches!(s.recv(ack.clone(), ua), Incoming::Absorbed));
    assert_eq!(s.txs.server_state(tx), Some(State::Confirmed));
    // ACK and INVITE retransmissions absorbed silently; G stopped.
    assert!(matches!(s.recv(ack, ua), Incoming::Absorbed));
    assert!(matches!(
        s.recv(invite("z9hG4bKs6"), ua),
        Incoming::Absorbed
    ));
    assert!(s.transmits().is_empty());
    assert!(s.run(ms(700 + 4_999)).is_empty());
    assert!(s.events().is_empty());
    s.run(ms(700 + 5_000));
    assert_eq!(s.events(), vec![TxEvent::ServerTerminated(tx)]);
}

#[test]
fn invite_server_2xx_accepted_state_rfc6026() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (tx, req) = s.new_request(invite("z9hG4bKs7"), ua);
    let ok = reply(&req, 200, "u1");
    s.at(ms(100));
    s.respond(tx, ok.clone()).unwrap();
    assert_eq!(s.txs.server_state(tx), Some(State::Accepted));
    assert_eq!(s.transmits().len(), 1);
    // The transaction does not retransmit the 2xx, and absorbs INVITE retransmissions
    // without answering them.
    assert!(s.run(ms(10_000)).is_empty());
    assert!(matches!(
        s.recv(invite("z9hG4bKs7"), ua),
        Incoming::Absorbed
    ));
    assert!(s.transmits().is_empty());
    // The TU's own 2xx retransmissions and a forked 2xx go through.
    s.respond(tx, ok.clone()).unwrap();
    s.respond(tx, reply(&req, 200, "u2")).unwrap();
    assert_eq!(s.transmits().len(), 2);
    // Non-2xx after a 2xx is refused.
    assert_eq!(
        s.respond(tx, reply(&req, 500, "u1")),
        Err(TxError::AlreadyFinal)
    );
    assert_eq!(
        s.respond(tx, reply(&req, 180, "u1")),
        Err(TxError::AlreadyFinal)
    );
    // The ACK for the 2xx has its own branch: the TU gets it.
    let ack = request(
        "ACK",
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKs7ack",
        Some("u1"),
        1,
    );
    assert!(matches!(s.recv(ack, ua), Incoming::Ack { .. }));
    // One that reuses the INVITE's branch reaches the TU too.
    let ack = request(
        "ACK",
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKs7",
        Some("u1"),
        1,
    );
    assert!(matches!(s.recv(ack, ua), Incoming::Ack { .. }));
    // Timer L: 64*T1 after the first 2xx.
    s.run(ms(100 + 32_000 - 1));
    assert!(s.events().is_empty());
    s.run(ms(100 + 32_000));
    assert_eq!(s.events(), vec![TxEvent::ServerTerminated(tx)]);
    assert_eq!(
        s.respond(tx, ok),
        Err(TxError::NoTransaction),
        "after L the TU forwards 2xx statelessly"
    );
}

#[test]
fn invite_server_over_tcp_no_g_and_ack_ends_it() {
    let mut s = Sim::new();
    let ua = tcp("192.0.2.1:40000");
    let req = request("INVITE", "SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKs8", None, 1);
    let (tx, req) = s.new_request(req, ua);
    s.respond(tx, reply(&req, 486, "u1")).unwrap();
    let sent = s.transmits();
    assert_eq!(sent[0].peer, ua, "responses go back on the connection");
    assert!(s.run(ms(10_000)).is_empty(), "no Timer G over TCP");
    let ack = request(
        "ACK",
        "SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKs8",
        Some("u1"),
        1,
    );
    assert!(matches!(s.recv(ack, ua), Incoming::Absorbed));
    // Timer I = 0.
    assert_eq!(s.events(), vec![TxEvent::ServerTerminated(tx)]);
}

#[test]
fn invite_server_over_tcp_timer_h_still_runs() {
    let mut s = Sim::new();
    let ua = tcp("192.0.2.1:40000");
    let req = request("INVITE", "SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKs9", None, 1);
    let (tx, req) = s.new_request(req, ua);
    s.respond(tx, reply(&req, 486, "u1")).unwrap();
    s.run(ms(32_000));
    assert_eq!(
        s.events(),
        vec![TxEvent::NoAck(tx), TxEvent::ServerTerminated(tx)]
    );
}

#[test]
fn server_response_target_follows_via_and_rport() {
    let mut s = Sim::new();
    let src = udp("203.0.113.5:34567");
    let plain = request(
        "OPTIONS",
        "SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKr1",
        None,
        1,
    );
    let (a, _) = s.new_request(plain, src);
    assert_eq!(s.txs.server_peer(a), Some(udp("203.0.113.5:5070")));
    let no_port = request("OPTIONS", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKr2", None, 1);
    let (b, _) = s.new_request(no_port, src);
    assert_eq!(s.txs.server_peer(b), Some(udp("203.0.113.5:5060")));
    let rport = request(
        "OPTIONS",
        "SIP/2.0/UDP 10.0.0.1:5070;rport;branch=z9hG4bKr3",
        None,
        1,
    );
    let (c, _) = s.new_request(rport, src);
    assert_eq!(s.txs.server_peer(c), Some(src));
}

// ---------------------------------------------------------------- non-INVITE server

#[test]
fn non_invite_server_full_path_over_udp() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (tx, req) = s.new_request(options("z9hG4bKq1"), ua);
    assert_eq!(s.txs.server_state(tx), Some(State::Trying));
    // No automatic 100 for non-INVITE; retransmissions in Trying are absorbed silently.
    assert!(s.run(ms(1_000)).is_empty());
    assert!(matches!(
        s.recv(options("z9hG4bKq1"), ua),
        Incoming::Absorbed
    ));
    assert!(s.transmits().is_empty());
    s.respond(tx, reply(&req, 100, "x")).unwrap();
    assert_eq!(s.txs.server_state(tx), Some(State::Proceeding));
    s.transmits();
    assert!(matches!(
        s.recv(options("z9hG4bKq1"), ua),
        Incoming::Absorbed
    ));
    assert_eq!(first_line(&s.transmits()[0]), "SIP/2.0 100 Trying");
    s.at(ms(2_000));
    s.respond(tx, reply(&req, 200, "x")).unwrap();
    assert_eq!(s.txs.server_state(tx), Some(State::Completed));
    s.transmits();
    assert!(matches!(
        s.recv(options("z9hG4bKq1"), ua),
        Incoming::Absorbed
    ));
    assert_eq!(first_line(&s.transmits()[0]), "SIP/2.0 200 OK");
    assert_eq!(
        s.respond(tx, reply(&req, 500, "x")),
        Err(TxError::AlreadyFinal)
    );
    // The server never retransmits a non-INVITE final response on its own; Timer J ends it.
    assert!(s.run(ms(2_000 + 32_000 - 1)).is_empty());
    assert!(s.events().is_empty());
    s.run(ms(2_000 + 32_000));
    assert_eq!(s.events(), vec![TxEvent::ServerTerminated(tx)]);
    // A late retransmission is a new request now.
    assert!(matches!(
        s.recv(options("z9hG4bKq1"), ua),
        Incoming::Request { .. }
    ));
}

#[test]
fn non_invite_server_over_tcp_ends_with_the_final_response() {
    let mut s = Sim::new();
    let ua = tcp("192.0.2.1:40000");
    let req = request(
        "REGISTER",
        "SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKq2",
        None,
        1,
    );
    let (tx, req) = s.new_request(req, ua);
    s.respond(tx, reply(&req, 200, "x")).unwrap();
    assert_eq!(s.transmits().len(), 1);
    assert_eq!(s.events(), vec![TxEvent::ServerTerminated(tx)]);
    assert_eq!(s.txs.len(), (0, 0));
}

#[test]
fn send_response_bytes_skips_the_parse() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (tx, req) = s.new_request(options("z9hG4bKq3"), ua);
    let bytes = response_to(&req, 202, Some("x")).finish();
    s.txs
        .send_response_bytes(tx, 202, bytes.clone(), s.now)
        .unwrap();
    assert_eq!(s.transmits()[0].payload, bytes);
    assert_eq!(s.txs.server_state(tx), Some(State::Completed));
    assert_eq!(
        s.txs.send_response_bytes(tx, 99, bytes, s.now),
        Err(TxError::BadStatus)
    );
    assert_eq!(
        s.txs.send_response(tx, req.clone(), s.now),
        Err(TxError::NotResponse)
    );
}

// ---------------------------------------------------------------- matching

#[test]
fn server_matching_uses_branch_sent_by_and_method() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (inv, req) = s.new_request(invite("z9hG4bKx1"), ua);
    // Same branch, other sent-by: another transaction.
    let other_host = request(
        "INVITE",
        "SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKx1",
        None,
        1,
    );
    assert!(matches!(
        s.recv(other_host, ua),
        Incoming::Request { tx, .. } if tx != inv
    ));
    // Same branch, other port: another transaction.
    let other_port = request(
        "INVITE",
        "SIP/2.0/UDP 192.0.2.1:5061;branch=z9hG4bKx1",
        None,
        1,
    );
    assert!(matches!(s.recv(other_port, ua), Incoming::Request { .. }));
    // Host case does not matter.
    let upper = request(
        "INVITE",
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx1",
        None,
        1,
    );
    assert!(matches!(s.recv(upper, ua), Incoming::Absorbed));
    // A CANCEL with the INVITE's branch is its own transaction and finds the INVITE.
    let cancel = Message::parse(cancel_for(&req)).unwrap();
    assert_eq!(s.txs.find_invite_for_cancel(&cancel), Some(inv));
    let (can, _) = s.new_request(cancel.clone(), ua);
    assert_ne!(can, inv);
    assert!(matches!(s.recv(cancel, ua), Incoming::Absorbed));
    // A CANCEL for an unknown INVITE finds nothing (the TU answers 481).
    let stray = Message::parse(cancel_for(&invite("z9hG4bKnope"))).unwrap();
    assert_eq!(s.txs.find_invite_for_cancel(&stray), None);
    assert_eq!(s.txs.len().0, 4);
}

#[test]
fn host_names_in_sent_by_compare_case_insensitively() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let a = request(
        "OPTIONS",
        "SIP/2.0/UDP PC33.Example.com;branch=z9hG4bKh1",
        None,
        1,
    );
    let b = request(
        "OPTIONS",
        "SIP/2.0/UDP pc33.example.COM;branch=z9hG4bKh1",
        None,
        1,
    );
    s.new_request(a, ua);
    assert!(matches!(s.recv(b, ua), Incoming::Absorbed));
}

#[test]
fn rfc2543_invite_matching_retransmission_ack_and_cancel() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let old = || request("INVITE", "SIP/2.0/UDP 192.0.2.1:5060", None, 5);
    let (tx, req) = s.new_request(old(), ua);
    assert!(matches!(s.recv(old(), ua), Incoming::Absorbed));
    // CANCEL: same R-URI, From tag, Call-ID, CSeq number, top Via and To tag.
    let cancel = Message::parse(cancel_for(&req)).unwrap();
    assert_eq!(s.txs.find_invite_for_cancel(&cancel), Some(tx));
    // Another CSeq number is another transaction.
    assert!(matches!(
        s.recv(request("INVITE", "SIP/2.0/UDP 192.0.2.1:5060", None, 6), ua),
        Incoming::Request { .. }
    ));
    s.respond(tx, reply(&req, 486, "srv")).unwrap();
    s.transmits();
    // An ACK with another To tag does not match...
    let wrong = request("ACK", "SIP/2.0/UDP 192.0.2.1:5060", Some("other"), 5);
    assert!(matches!(s.recv(wrong, ua), Incoming::Ack { .. }));
    assert_eq!(s.txs.server_state(tx), Some(State::Completed));
    // ...the one carrying our response's To tag does.
    let ack = request("ACK", "SIP/2.0/UDP 192.0.2.1:5060", Some("srv"), 5);
    assert!(matches!(s.recv(ack.clone(), ua), Incoming::Absorbed));
    assert_eq!(s.txs.server_state(tx), Some(State::Confirmed));
    assert!(matches!(s.recv(ack.clone(), ua), Incoming::Absorbed));
    // Both keys go with the transaction.
    s.run(ms(5_000));
    assert!(s.events().contains(&TxEvent::ServerTerminated(tx)));
    assert!(matches!(s.recv(ack, ua), Incoming::Ack { .. }));
}

#[test]
fn rfc2543_ack_for_a_reinvite_keeps_the_same_to_tag() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let reinvite = request("INVITE", "SIP/2.0/UDP 192.0.2.1", Some("dlg"), 9);
    let (tx, req) = s.new_request(reinvite, ua);
    s.respond(tx, reply(&req, 488, "ignored")).unwrap();
    let ack = request("ACK", "SIP/2.0/UDP 192.0.2.1", Some("dlg"), 9);
    assert!(matches!(s.recv(ack, ua), Incoming::Absorbed));
    assert_eq!(s.txs.server_state(tx), Some(State::Confirmed));
}

const BADBRANCH: &str = "OPTIONS sip:user@example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.org;tag=33242\r\n\
Max-Forwards: 3\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK\r\n\
Accept: application/sdp\r\n\
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n\r\n\
CSeq: 8 OPTIONS\r\n\
l: 0\r\n\r\n";

/// RFC 4475 §3.2.1 badbranch.dat, from the shared corpus when present (the text above is the
/// same message).
fn badbranch() -> Message {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/sip-torture/rfc4475/badbranch.dat");
    match std::fs::read(&path) {
        Ok(b) => Message::parse(Bytes::from(b)).expect("badbranch.dat parses"),
        Err(_) => parse(BADBRANCH),
    }
}

#[test]
fn rfc4475_badbranch_takes_the_rfc2543_path() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let m = badbranch();
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK"));
    assert!(!m.top_via().unwrap().is_rfc3261());
    let (tx, _) = s.new_request(m.clone(), ua);
    assert!(matches!(s.recv(m, ua), Incoming::Absorbed));
    // Same bare cookie and sent-by, other CSeq / Call-ID: branch matching would have merged
    // these with the first; RFC 2543 matching keeps them apart.
    let next = parse(&BADBRANCH.replace("CSeq: 8", "CSeq: 9"));
    assert!(matches!(s.recv(next, ua), Incoming::Request { tx: t, .. } if t != tx));
    let other = parse(&BADBRANCH.replace("badbranch.sado", "other.sado"));
    assert!(matches!(s.recv(other, ua), Incoming::Request { .. }));
    assert_eq!(s.txs.len(), (3, 0));
}

#[test]
fn malformed_messages_are_reported_not_matched() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let no_via = parse(
        "OPTIONS sip:a@b SIP/2.0\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    );
    match s.recv(no_via, ua) {
        Incoming::Malformed { error, .. } => assert_eq!(error.status(), 400),
        other => panic!("{other:?}"),
    }
    let mismatch = parse(&BADBRANCH.replace("CSeq: 8 OPTIONS", "CSeq: 8 INVITE"));
    assert!(matches!(s.recv(mismatch, ua), Incoming::Malformed { .. }));
    // RFC 2543 matching needs From/To/Call-ID.
    let legacy_no_call_id = parse(
        "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCSeq: 1 OPTIONS\r\n\r\n",
    );
    assert!(matches!(
        s.recv(legacy_no_call_id, ua),
        Incoming::Malformed { .. }
    ));
    let resp_no_cseq = parse(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\n\r\n",
    );
    assert!(matches!(
        s.recv(resp_no_cseq, ua),
        Incoming::Malformed { .. }
    ));
    assert!(s.txs.is_empty());
}

#[test]
fn send_stateless_shares_the_output_queue() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    s.send(options("z9hG4bKo1"), ua);
    s.txs.send_stateless(Bytes::from_static(b"ACK"), ua);
    let out = s.transmits();
    assert_eq!(out.len(), 2);
    assert_eq!(&out[1].payload[..], b"ACK");
}

// ---------------------------------------------------------------- whole exchanges

/// A UAC layer and a UAS layer talking over a lossy simulated link: every message of the
/// first flight is lost, and both sides still complete.
#[test]
fn uac_and_uas_complete_over_a_lossy_link() {
    let timers = Timers::default();
    let t0 = Instant::now();
    let mut uac = Transactions::new(timers);
    let mut uas = Transactions::new(timers);
    let uac_addr = udp("192.0.2.1:5060");
    let uas_addr = udp("192.0.2.2:5060");
    let req = invite("z9hG4bKw1");
    let ctx = uac.send_request(req, uas_addr, t0).unwrap();
    let mut now = t0;
    let mut dropped = 0;
    let mut final_seen = false;
    let mut server_tx = None;
    for _ in 0..200 {
        // Deliver UAC -> UAS, dropping the first two messages.
        while let Some(t) = uac.poll_transmit() {
            if dropped < 2 {
                dropped += 1;
                continue;
            }
            let m = Message::parse(t.payload).unwrap();
            if let Incoming::Request { tx, msg } = uas.handle_incoming(m, uac_addr, now) {
                server_tx = Some(tx);
                let busy = reply(&msg, 486, "uas");
                uas.send_response(tx, busy, now).unwrap();
            }
        }
        while let Some(t) = uas.poll_transmit() {
            let m = Message::parse(t.payload).unwrap();
            if let Incoming::Response { tx, msg } = uac.handle_incoming(m, uas_addr, now) {
                assert_eq!(tx, ctx);
                final_seen |= msg.status() == Some(486);
            }
        }
        let next = [uac.poll_timeout(), uas.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { break };
        now = next;
        uac.handle_timeout(now);
        uas.handle_timeout(now);
    }
    assert!(final_seen);
    let stx = server_tx.expect("the INVITE got through");
    assert!(uas
        .poll_event()
        .into_iter()
        .chain(std::iter::from_fn(|| uas.poll_event()))
        .any(|e| e == TxEvent::ServerTerminated(stx)));
    assert!(uac.is_empty() && uas.is_empty());
    assert_eq!(uac.poll_timeout(), None);
}

// ---------------------------------------------------------------- configuration and edges

#[test]
fn timers_are_configurable() {
    let timers = Timers {
        t1: ms(100),
        t2: ms(400),
        t4: ms(1_000),
        d: ms(2_000),
        trying: Some(ms(50)),
        timer_c: None,
    };
    let mut s = Sim::with(timers);
    let ua = udp("192.0.2.9:5060");
    let tx = s.send(options("z9hG4bKc1"), ua);
    s.transmits();
    let sent = s.run(ms(6_400));
    // E: 100, 200, 400, 400... ms apart until F = 64 * 100 ms.
    let mut expect = Vec::new();
    let (mut at, mut iv) = (ms(0), ms(100));
    while at + iv < ms(6_400) {
        at += iv;
        expect.push(at);
        iv = (iv * 2).min(ms(400));
    }
    assert_eq!(times(&sent), expect);
    assert_eq!(
        s.events(),
        vec![TxEvent::Timeout(tx), TxEvent::ClientTerminated(tx)]
    );
    // D and K follow the settings too.
    let req = invite("z9hG4bKc2");
    let inv = s.send(req.clone(), ua);
    s.recv(reply(&req, 404, "x"), ua);
    let start = s.elapsed();
    s.run(start + ms(1_999));
    assert!(!s.events().contains(&TxEvent::ClientTerminated(inv)));
    s.run(start + ms(2_000));
    assert_eq!(s.events(), vec![TxEvent::ClientTerminated(inv)]);
    let req = options("z9hG4bKc3");
    let opt = s.send(req.clone(), ua);
    s.recv(reply(&req, 200, "x"), ua);
    let start = s.elapsed();
    s.run(start + ms(1_000));
    assert_eq!(s.events(), vec![TxEvent::ClientTerminated(opt)]);
}

#[test]
fn final_response_during_timer_c_grace_completes_normally() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.9:5060");
    let req = invite("z9hG4bKg1");
    let tx = s.send(req.clone(), ua);
    s.recv(reply(&req, 180, "b"), ua);
    let c = Timers::default().timer_c.unwrap();
    s.run(c);
    assert_eq!(s.events(), vec![TxEvent::ProceedingTimeout(tx)]);
    // The TU's CANCEL worked: 487 arrives, is ACKed, and no Timeout follows.
    s.at(c + ms(300));
    assert!(matches!(
        s.recv(reply(&req, 487, "b"), ua),
        Incoming::Response { .. }
    ));
    assert_eq!(
        s.transmits()
            .iter()
            .filter(|t| first_line(t).starts_with("ACK"))
            .count(),
        1
    );
    s.run(c + ms(300) + ms(64 * 500 + 32_000));
    assert_eq!(s.events(), vec![TxEvent::ClientTerminated(tx)]);
}

#[test]
fn ack_before_any_final_response_goes_to_the_tu() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (tx, _) = s.new_request(invite("z9hG4bKk1"), ua);
    let ack = request(
        "ACK",
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKk1",
        Some("x"),
        1,
    );
    assert!(matches!(s.recv(ack, ua), Incoming::Ack { .. }));
    assert_eq!(s.txs.server_state(tx), Some(State::Proceeding));
}

#[test]
fn tu_100_then_2xx_on_an_invite_server_transaction() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (tx, req) = s.new_request(invite("z9hG4bKk2"), ua);
    s.respond(tx, reply(&req, 100, "x")).unwrap();
    assert_eq!(s.txs.server_state(tx), Some(State::Proceeding));
    assert!(s.run(ms(1_000)).is_empty(), "no second, automatic 100");
    s.transmits();
    s.respond(tx, reply(&req, 200, "x")).unwrap();
    assert_eq!(s.txs.server_state(tx), Some(State::Accepted));
    assert_eq!(first_line(&s.transmits()[0]), "SIP/2.0 200 OK");
}

#[test]
fn ids_are_not_reused_and_poll_timeout_is_never_late() {
    let mut s = Sim::new();
    let ua = udp("192.0.2.1:5060");
    let (a, req) = s.new_request(options("z9hG4bKi1"), ua);
    s.respond(a, reply(&req, 200, "x")).unwrap();
    s.run(ms(40_000));
    let (b, _) = s.new_request(options("z9hG4bKi1"), ua);
    assert_ne!(a, b);
    assert!(b.as_u64() > a.as_u64());
    // Every armed timer is at or after the reported deadline.
    let c = s.send(invite("z9hG4bKi2"), udp("192.0.2.9:5060"));
    let next = s.txs.poll_timeout().unwrap();
    s.txs.handle_timeout(next - ms(1));
    assert!(s
        .transmits()
        .iter()
        .all(|t| first_line(t).starts_with("INVITE")));
    assert_eq!(s.txs.client_state(c), Some(State::Calling));
}
