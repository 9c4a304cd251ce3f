//! The SIP edge core without a network: messages and the clock go in, transmits come out.
//! Whole call flows run deterministically, timers included (virtual time).

use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_services::sip::edge::EdgeCommand;
use switchboard_services::sip::edge::{EdgeSettings, SipEdge};
use switchboard_services::sip::location::Location;
use switchboard_services::sip::registrar::{Registrar, RegistrarSettings, Tenant};
use switchboard_services::sip::routes::Routes;
use switchboard_services::sip::target::Identity;
use switchboard_sip::auth::{Algorithm, Challenge};
use switchboard_sip::transaction::Timers;
use switchboard_sip::{response_to, HeaderName, Message, Method, Peer, Transmit};
use switchboard_sip_net::{Controlled, Core};

const PROXY: &str = "127.0.0.1:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn edge(now: Instant) -> SipEdge {
    let settings = EdgeSettings {
        identity: Identity {
            udp: Some(addr(PROXY)),
            tcp: None,
            domains: vec!["switchboard".into()],
        },
        record_route: true,
        health_interval: Duration::from_secs(3600),
        node_timeout: Duration::from_secs(2),
        timers: Timers::default(),
    };
    let users: HashMap<String, String> = ["1001", "1002"]
        .iter()
        .map(|u| (u.to_string(), "secret".to_string()))
        .collect();
    let tenant = Tenant {
        name: "demo".into(),
        domain: "switchboard".into(),
        users,
    };
    let reg = RegistrarSettings {
        min_expires: 60,
        max_expires: 3600,
        default_expires: 3600,
        nonce_ttl_s: 300,
        algorithms: vec![Algorithm::Md5],
    };
    let registrar = Registrar::new(
        reg,
        vec![tenant],
        [9; 32],
        Arc::new(Mutex::new(Location::default())),
    );
    let routes = Routes::new(&[(
        "5".into(),
        vec![addr("127.0.0.1:7001"), addr("127.0.0.1:7002")],
    )]);
    SipEdge::new(settings, registrar, routes, 42, now)
}

fn parse(b: Bytes) -> Message {
    let m = Message::parse(b).expect("the edge writes parseable messages");
    m.validate().expect("and valid ones");
    m
}

fn sent(edge: &mut SipEdge) -> Vec<(Peer, Message)> {
    std::iter::from_fn(|| edge.poll_transmit())
        .map(|Transmit { peer, payload }| (peer, parse(payload)))
        .collect()
}

fn feed(edge: &mut SipEdge, text: &str, from: &str, now: Instant) -> Vec<(Peer, Message)> {
    edge.handle_message(
        parse(Bytes::copy_from_slice(text.as_bytes())),
        Peer::udp(addr(from)),
        now,
    );
    sent(edge)
}

fn reply(
    edge: &mut SipEdge,
    req: &Message,
    code: u16,
    from: &str,
    now: Instant,
) -> Vec<(Peer, Message)> {
    let resp = response_to(
        req,
        code,
        Some(&format!("tag{}", from.len() + code as usize)),
    )
    .copy_lines(req, HeaderName::RecordRoute)
    .header("Contact", format_args!("<sip:{from}>"))
    .finish();
    edge.handle_message(parse(resp), Peer::udp(addr(from)), now);
    sent(edge)
}

fn register(edge: &mut SipEdge, user: &str, contact: &str, now: Instant) {
    let req = |cseq: u32, auth: &str| {
        format!("REGISTER sip:switchboard SIP/2.0\r\nVia: SIP/2.0/UDP {contact};branch=z9hG4bKreg{cseq}{contact}\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@switchboard>;tag=r\r\nTo: <sip:{user}@switchboard>\r\nCall-ID: reg-{contact}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{contact}>\r\n{auth}Content-Length: 0\r\n\r\n")
    };
    let out = feed(edge, &req(1, ""), contact, now);
    assert_eq!(out[0].1.status(), Some(401));
    let ch = Challenge::parse(out[0].1.get(HeaderName::WwwAuthenticate).unwrap()).unwrap();
    let auth = format!(
        "Authorization: {}\r\n",
        ch.answer(user, "secret", "REGISTER", "sip:switchboard", "c", 1)
    );
    let out = feed(edge, &req(2, &auth), contact, now);
    assert_eq!(out[0].1.status(), Some(200), "{:?}", out[0].1);
}

fn invite(to: &str, call_id: &str) -> String {
    format!("INVITE sip:{to}@{PROXY} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;rport;branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:1001@switchboard>;tag=caller\r\nTo: <sip:{to}@switchboard>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@127.0.0.1:6000>\r\nContent-Length: 0\r\n\r\n")
}

fn to(out: &[(Peer, Message)], port: u16) -> Vec<&Message> {
    out.iter()
        .filter(|(p, _)| p.addr.port() == port)
        .map(|(_, m)| m)
        .collect()
}

#[test]
fn forked_call_first_answer_wins_and_the_other_branch_is_cancelled() {
    let t0 = Instant::now();
    let mut e = edge(t0);
    register(&mut e, "1002", "127.0.0.1:6001", t0);
    register(&mut e, "1002", "127.0.0.1:6002", t0);
    let out = feed(&mut e, &invite("1002", "fork"), "127.0.0.1:6000", t0);
    assert_eq!(to(&out, 6000)[0].status(), Some(100));
    let (a, b) = (to(&out, 6001)[0].clone(), to(&out, 6002)[0].clone());
    for leg in [&a, &b] {
        assert_eq!(leg.method(), Some(&Method::Invite));
        assert_eq!(leg.via_count().unwrap(), 2);
        assert_eq!(leg.max_forwards().unwrap(), Some(69));
        assert_eq!(
            leg.record_routes().unwrap()[0].uri.to_string(),
            format!("sip:{PROXY};lr")
        );
        assert_eq!(leg.top_via().unwrap().transport, "UDP");
    }
    assert_eq!(a.request_uri_str(), Some("sip:1002@127.0.0.1:6001"));
    // The caller's Via got received/rport filled in for the way back (RFC 3581).
    assert_eq!(a.vias().unwrap()[1].rport(), Some(Some(6000)));

    let out = reply(&mut e, &b, 180, "127.0.0.1:6002", t0);
    let ringing = to(&out, 6000);
    assert_eq!(ringing[0].status(), Some(180));
    assert_eq!(
        ringing[0].via_count().unwrap(),
        1,
        "our Via is removed upstream"
    );

    let out = reply(&mut e, &a, 200, "127.0.0.1:6001", t0);
    assert_eq!(to(&out, 6000)[0].status(), Some(200));
    let cancel = to(&out, 6002);
    assert_eq!(cancel[0].method(), Some(&Method::Cancel));
    assert_eq!(
        cancel[0].top_via().unwrap().branch(),
        b.top_via().unwrap().branch()
    );
    assert!(cancel[0]
        .get(HeaderName::Reason)
        .unwrap()
        .contains("cause=200"));
}

#[test]
fn failover_to_the_next_node_after_the_node_timeout_in_virtual_time() {
    let t0 = Instant::now();
    let mut e = edge(t0);
    let out = feed(&mut e, &invite("5000", "failover"), "127.0.0.1:6000", t0);
    let first: Vec<u16> = out
        .iter()
        .filter(|(_, m)| m.is_request())
        .map(|(p, _)| p.addr.port())
        .collect();
    assert_eq!(first.len(), 1);
    assert!(first[0] == 7001 || first[0] == 7002);
    // Timer A retransmits to the same node; no failover before the node timeout.
    e.handle_timeout(t0 + Duration::from_millis(1900));
    assert!(sent(&mut e).iter().all(|(p, _)| p.addr.port() == first[0]));
    e.handle_timeout(t0 + Duration::from_millis(2100));
    let out = sent(&mut e);
    let other = if first[0] == 7001 { 7002 } else { 7001 };
    let next = to(&out, other);
    assert_eq!(next[0].method(), Some(&Method::Invite), "{out:?}");
    let out = reply(
        &mut e,
        next[0],
        200,
        &format!("127.0.0.1:{other}"),
        t0 + Duration::from_millis(2200),
    );
    assert_eq!(to(&out, 6000)[0].status(), Some(200));
    // The timed-out node is down now: the next call goes straight to the live one.
    let out = feed(
        &mut e,
        &invite("5000", "after"),
        "127.0.0.1:6000",
        t0 + Duration::from_secs(3),
    );
    assert_eq!(to(&out, other).len(), 1);
}

#[test]
fn a_request_that_loops_back_gets_482_and_a_spiral_does_not() {
    let t0 = Instant::now();
    let mut e = edge(t0);
    let out = feed(&mut e, &invite("5000", "loop"), "127.0.0.1:6000", t0);
    let (node, fwd) = out.iter().find(|(_, m)| m.is_request()).cloned().unwrap();
    // The node sends the very same request back to us: a loop.
    e.handle_message(fwd.clone(), node, t0);
    let out = sent(&mut e);
    // (Answered per the top Via, which is ours: RFC 3261 §18.2.2.)
    assert!(out.iter().any(|(_, m)| m.status() == Some(482)), "{out:?}");
    // The node retargets it and sends it back through us (its own Via on top): a spiral, allowed.
    let spiral = String::from_utf8_lossy(fwd.as_bytes())
        .replacen("sip:5000@", "sip:5001@", 1)
        .replacen(
            "Via: ",
            &format!(
                "Via: SIP/2.0/UDP {};branch=z9hG4bKnode1\r\nVia: ",
                node.addr
            ),
            1,
        );
    let out = feed(&mut e, &spiral, &node.addr.to_string(), t0);
    assert!(out.iter().all(|(_, m)| m.status() != Some(482)));
}

#[test]
fn max_forwards_zero_and_unknown_scheme_and_proxy_require() {
    let t0 = Instant::now();
    let mut e = edge(t0);
    let base = invite("5000", "mf");
    let out = feed(
        &mut e,
        &base.replace("Max-Forwards: 70", "Max-Forwards: 0"),
        "127.0.0.1:6000",
        t0,
    );
    assert_eq!(out[0].1.status(), Some(483));
    let out = feed(
        &mut e,
        &invite("5000", "scheme").replace(
            "INVITE sip:5000@127.0.0.1:5060",
            "INVITE im:5000@example.com",
        ),
        "127.0.0.1:6000",
        t0,
    );
    assert_eq!(out[0].1.status(), Some(416));
    let out = feed(
        &mut e,
        &invite("5000", "req").replace("Max-Forwards", "Proxy-Require: foo\r\nMax-Forwards"),
        "127.0.0.1:6000",
        t0,
    );
    assert_eq!(out[0].1.status(), Some(420));
    assert_eq!(out[0].1.get(HeaderName::Unsupported), Some("foo"));
}

#[test]
fn with_call_control_new_calls_go_to_the_sip_server_and_its_legs_reach_the_phones() {
    let t0 = Instant::now();
    let mut e = edge(t0);
    register(&mut e, "1002", "127.0.0.1:6001", t0);
    e.handle_command(
        EdgeCommand::SetCallControl(vec![addr("127.0.0.1:7100")]),
        t0,
    );
    // A caller's INVITE goes to the SIP Server, not straight to the phone.
    let out = feed(&mut e, &invite("1002", "cc-a"), "127.0.0.1:6000", t0);
    assert_eq!(
        to(&out, 7100).first().and_then(|m| m.method()),
        Some(&Method::Invite),
        "{out:?}"
    );
    assert!(to(&out, 6001).is_empty());
    // The SIP Server's B-leg for the same user reaches the registered phone.
    let b_leg = invite("1002", "cc-b").replace("127.0.0.1:6000", "127.0.0.1:7100");
    let out = feed(&mut e, &b_leg, "127.0.0.1:7100", t0);
    assert_eq!(to(&out, 6001)[0].method(), Some(&Method::Invite));
}

#[test]
fn with_call_control_a_number_with_a_configured_route_still_goes_to_its_nodes() {
    let t0 = Instant::now();
    let mut e = edge(t0);
    e.handle_command(
        EdgeCommand::SetCallControl(vec![addr("127.0.0.1:7100")]),
        t0,
    );
    // 5xxx has a route of its own (to 7001/7002): call control is not asked.
    let out = feed(&mut e, &invite("5000", "cc-route"), "127.0.0.1:6000", t0);
    let to_nodes = to(&out, 7001).len() + to(&out, 7002).len();
    assert_eq!(to_nodes, 1, "{out:?}");
    assert!(to(&out, 7100).is_empty(), "{out:?}");
    // Without a route, a new call still goes to the SIP Server.
    let out = feed(&mut e, &invite("1002", "cc-user"), "127.0.0.1:6000", t0);
    assert_eq!(to(&out, 7100).len(), 1, "{out:?}");
}
