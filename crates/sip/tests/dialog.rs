//! Dialog state (RFC 3261 §12): creation at the UAC and the UAS, in-dialog request building
//! with loose and strict routing, ACK for 2xx, target refresh, CSeq checks, and a whole call
//! through the transaction layer.

use bytes::Bytes;
use std::time::Instant;
use switchboard_sip::build::response_to;
use switchboard_sip::dialog::{Dialog, DialogError, DialogId, DialogState, Role};
use switchboard_sip::transaction::{Incoming, Timers, Transactions};
use switchboard_sip::{Message, Method, Peer};

fn parse(s: &str) -> Message {
    Message::parse(Bytes::copy_from_slice(s.as_bytes())).expect("test message parses")
}

fn msg(b: Bytes) -> Message {
    let m = Message::parse(b).expect("built message parses");
    m.validate().expect("built message is valid");
    m
}

/// Alice's INVITE as Bob receives it, through two record-routing proxies.
const INVITE: &str = "INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP p2.example;branch=z9hG4bKp2\r\n\
Via: SIP/2.0/UDP p1.example;branch=z9hG4bKp1\r\n\
Via: SIP/2.0/UDP alice.a.example;branch=z9hG4bKa\r\n\
Record-Route: <sip:p2.example;lr>\r\n\
Record-Route: <sip:p1.example;lr>\r\n\
Max-Forwards: 68\r\n\
From: \"Alice\" <sip:alice@a.example>;tag=atag\r\n\
To: <sip:bob@b.example>\r\n\
Call-ID: call-7@a.example\r\n\
CSeq: 10 INVITE\r\n\
Contact: <sip:alice@192.0.2.1:5060;transport=udp>\r\n\
Content-Length: 0\r\n\r\n";

/// Bob's answer: To tag, Contact, Record-Route copied back.
fn answer(req: &Message, code: u16) -> Message {
    msg(response_to(req, code, Some("btag"))
        .copy_lines(req, switchboard_sip::HeaderName::RecordRoute)
        .header("Contact", "<sip:bob@192.0.2.2:5062>")
        .finish())
}

fn bob_side() -> (Message, Dialog) {
    let req = parse(INVITE);
    let ok = answer(&req, 200);
    let d = Dialog::uas(&req, &ok).expect("UAS dialog");
    (req, d)
}

fn alice_side() -> Dialog {
    let req = parse(INVITE);
    Dialog::uac(&req, &answer(&req, 200)).expect("UAC dialog")
}

fn route_values(m: &Message) -> Vec<String> {
    m.routes()
        .unwrap()
        .iter()
        .map(|r| r.uri.to_string())
        .collect()
}

#[test]
fn uas_dialog_from_request_and_our_response() {
    let (_, d) = bob_side();
    assert_eq!(d.role(), Role::Uas);
    assert_eq!(d.state(), DialogState::Confirmed);
    assert_eq!(
        d.id(),
        &DialogId {
            call_id: "call-7@a.example".into(),
            local_tag: "btag".into(),
            remote_tag: "atag".into(),
        }
    );
    assert_eq!(d.remote_seq(), Some(10));
    assert_eq!(d.local_seq(), None);
    assert_eq!(d.remote_target(), "sip:alice@192.0.2.1:5060;transport=udp");
    // The UAS keeps Record-Route order.
    assert_eq!(d.route_set(), ["sip:p2.example;lr", "sip:p1.example;lr"]);
    assert_eq!(d.local_party(), "<sip:bob@b.example>;tag=btag");
    assert_eq!(d.remote_party(), "\"Alice\" <sip:alice@a.example>;tag=atag");
    assert!(!d.secure());
    assert_eq!(d.next_hop(), "sip:p2.example;lr");
}

#[test]
fn uac_dialog_from_2xx_reverses_the_route_set() {
    let d = alice_side();
    assert_eq!(d.role(), Role::Uac);
    assert_eq!(d.state(), DialogState::Confirmed);
    assert_eq!(d.id().local_tag, "atag");
    assert_eq!(d.id().remote_tag, "btag");
    assert_eq!(d.local_seq(), Some(10));
    assert_eq!(d.remote_seq(), None);
    assert_eq!(d.remote_target(), "sip:bob@192.0.2.2:5062");
    assert_eq!(d.route_set(), ["sip:p1.example;lr", "sip:p2.example;lr"]);
    assert_eq!(d.local_party(), "\"Alice\" <sip:alice@a.example>;tag=atag");
    assert_eq!(d.remote_party(), "<sip:bob@b.example>;tag=btag");
}

#[test]
fn uac_early_dialog_confirmed_by_2xx_recomputes_route_set_and_target() {
    let req = parse(INVITE);
    let ringing = msg(response_to(&req, 180, Some("btag"))
        .header("Record-Route", "<sip:only-in-180.example;lr>")
        .header("Contact", "<sip:bob-early@192.0.2.2>")
        .finish());
    let mut d = Dialog::uac(&req, &ringing).unwrap();
    assert_eq!(d.state(), DialogState::Early);
    assert_eq!(d.route_set(), ["sip:only-in-180.example;lr"]);
    assert_eq!(d.remote_target(), "sip:bob-early@192.0.2.2");
    d.on_response(&Method::Invite, &answer(&req, 200)).unwrap();
    assert_eq!(d.state(), DialogState::Confirmed);
    assert_eq!(d.route_set(), ["sip:p1.example;lr", "sip:p2.example;lr"]);
    assert_eq!(d.remote_target(), "sip:bob@192.0.2.2:5062");
}

#[test]
fn provisional_without_contact_still_makes_an_early_dialog() {
    let req = parse(INVITE);
    let ringing = msg(response_to(&req, 180, Some("btag")).finish());
    let d = Dialog::uac(&req, &ringing).unwrap();
    assert_eq!(d.state(), DialogState::Early);
    assert_eq!(d.remote_target(), "sip:bob@b.example");
}

#[test]
fn what_does_not_create_a_dialog() {
    let req = parse(INVITE);
    let busy = answer(&req, 486);
    assert_eq!(
        Dialog::uac(&req, &busy),
        Err(DialogError::NotDialogCreating(486))
    );
    let trying = msg(response_to(&req, 100, None).finish());
    assert_eq!(
        Dialog::uac(&req, &trying),
        Err(DialogError::NotDialogCreating(100))
    );
    let untagged = msg(response_to(&req, 180, None).finish());
    assert_eq!(
        Dialog::uac(&req, &untagged),
        Err(DialogError::MissingTag("To"))
    );
    let ok_no_contact = msg(response_to(&req, 200, Some("b")).finish());
    assert!(matches!(
        Dialog::uac(&req, &ok_no_contact),
        Err(DialogError::Contact(_))
    ));
    let no_contact_req =
        parse(&INVITE.replace("Contact: <sip:alice@192.0.2.1:5060;transport=udp>\r\n", ""));
    assert!(matches!(
        Dialog::uas(&no_contact_req, &answer(&no_contact_req, 200)),
        Err(DialogError::Contact(_))
    ));
    let untagged_ok = msg(response_to(&req, 200, None)
        .header("Contact", "<sip:b@h>")
        .finish());
    assert_eq!(
        Dialog::uas(&req, &untagged_ok),
        Err(DialogError::MissingTag("To"))
    );
}

#[test]
fn sips_request_uri_makes_the_dialog_secure() {
    let req = parse(&INVITE.replace("INVITE sip:bob@b.example", "INVITE sips:bob@b.example"));
    let d = Dialog::uas(&req, &answer(&req, 200)).unwrap();
    assert!(d.secure());
}

#[test]
fn bye_with_loose_routing() {
    let mut d = alice_side();
    let bye = msg(d
        .request(
            &Method::Bye,
            "SIP/2.0/UDP alice.a.example;branch=z9hG4bKbye",
        )
        .unwrap()
        .finish());
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(bye.request_uri_str(), Some("sip:bob@192.0.2.2:5062"));
    assert_eq!(
        route_values(&bye),
        ["sip:p1.example;lr", "sip:p2.example;lr"]
    );
    assert_eq!(bye.cseq().unwrap().seq, 11);
    assert_eq!(bye.cseq().unwrap().method, Method::Bye);
    assert_eq!(bye.call_id().unwrap(), "call-7@a.example");
    assert_eq!(bye.from().unwrap().tag(), Some("atag"));
    assert_eq!(bye.from().unwrap().display, Some("Alice"));
    assert_eq!(bye.to().unwrap().tag(), Some("btag"));
    assert_eq!(bye.top_via().unwrap().branch(), Some("z9hG4bKbye"));
    assert!(bye.get(switchboard_sip::HeaderName::Contact).is_none());
    assert_eq!(d.local_seq(), Some(11));
    assert_eq!(d.next_hop(), "sip:p1.example;lr");
}

#[test]
fn target_refresh_requests_carry_our_contact_and_cseq_increments() {
    let mut d = alice_side();
    let via = "SIP/2.0/UDP alice.a.example;branch=z9hG4bKr";
    let reinvite = msg(d
        .request(&Method::Invite, via)
        .unwrap()
        .body("application/sdp", b"v=0\r\n"));
    assert_eq!(reinvite.cseq().unwrap().seq, 11);
    assert_eq!(
        reinvite.get(switchboard_sip::HeaderName::Contact),
        Some("<sip:alice@192.0.2.1:5060;transport=udp>")
    );
    assert_eq!(reinvite.body(), b"v=0\r\n");
    let info = msg(d.request(&Method::Info, via).unwrap().finish());
    assert_eq!(info.cseq().unwrap().seq, 12);
    assert!(info.get(switchboard_sip::HeaderName::Contact).is_none());
    d.set_local_target("<sip:alice@198.51.100.7:5060>");
    let update = msg(d.request(&Method::Update, via).unwrap().finish());
    assert_eq!(update.cseq().unwrap().seq, 13);
    assert_eq!(
        update.get(switchboard_sip::HeaderName::Contact),
        Some("<sip:alice@198.51.100.7:5060>")
    );
    let notify = msg(d.request(&Method::Notify, via).unwrap().finish());
    assert!(notify.get(switchboard_sip::HeaderName::Contact).is_some());
}

#[test]
fn uas_dialog_first_request_starts_its_own_cseq() {
    let (_, mut d) = bob_side();
    let bye = msg(d
        .request(&Method::Bye, "SIP/2.0/UDP 192.0.2.2:5062;branch=z9hG4bKb")
        .unwrap()
        .finish());
    assert_eq!(bye.cseq().unwrap().seq, 1);
    assert_eq!(
        bye.request_uri_str(),
        Some("sip:alice@192.0.2.1:5060;transport=udp")
    );
    assert_eq!(
        route_values(&bye),
        ["sip:p2.example;lr", "sip:p1.example;lr"]
    );
    assert_eq!(bye.from().unwrap().tag(), Some("btag"));
    assert_eq!(bye.to().unwrap().tag(), Some("atag"));
    assert_eq!(bye.to().unwrap().display, Some("Alice"));
    let mut d2 = d.clone();
    d2.set_local_seq(500);
    let info = msg(d2
        .request(&Method::Info, "SIP/2.0/UDP h;branch=z9hG4bKc")
        .unwrap()
        .finish());
    assert_eq!(info.cseq().unwrap().seq, 501);
}

#[test]
fn strict_router_first_in_route_set() {
    let req = parse(&INVITE.replace(
        "Record-Route: <sip:p1.example;lr>",
        "Record-Route: <sip:p1.example;transport=udp>",
    ));
    // Alice's side: route set is p1 (strict), p2 (loose).
    let mut d = Dialog::uac(&req, &answer(&req, 200)).unwrap();
    assert_eq!(
        d.route_set(),
        ["sip:p1.example;transport=udp", "sip:p2.example;lr"]
    );
    let bye = msg(d
        .request(&Method::Bye, "SIP/2.0/UDP alice.a.example;branch=z9hG4bKs")
        .unwrap()
        .finish());
    // RFC 3261 §12.2.1.1: R-URI = first route, Route = the rest + the remote target.
    assert_eq!(bye.request_uri_str(), Some("sip:p1.example;transport=udp"));
    assert_eq!(
        route_values(&bye),
        ["sip:p2.example;lr", "sip:bob@192.0.2.2:5062"]
    );
    assert_eq!(d.next_hop(), "sip:p1.example;transport=udp");
}

#[test]
fn no_route_set_goes_straight_to_the_target() {
    let req = parse(
        &INVITE
            .replace("Record-Route: <sip:p2.example;lr>\r\n", "")
            .replace("Record-Route: <sip:p1.example;lr>\r\n", ""),
    );
    let mut d = Dialog::uac(&req, &answer(&req, 200)).unwrap();
    assert!(d.route_set().is_empty());
    assert_eq!(d.next_hop(), "sip:bob@192.0.2.2:5062");
    let bye = msg(d
        .request(&Method::Bye, "SIP/2.0/UDP h;branch=z9hG4bKn")
        .unwrap()
        .finish());
    assert!(bye.routes().unwrap().is_empty());
}

#[test]
fn ack_for_2xx_keeps_the_invite_cseq() {
    let mut d = alice_side();
    let ack = msg(d
        .ack(10, "SIP/2.0/UDP alice.a.example;branch=z9hG4bKack")
        .finish());
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.cseq().unwrap().seq, 10);
    assert_eq!(ack.cseq().unwrap().method, Method::Ack);
    assert_eq!(ack.request_uri_str(), Some("sip:bob@192.0.2.2:5062"));
    assert_eq!(
        route_values(&ack),
        ["sip:p1.example;lr", "sip:p2.example;lr"]
    );
    assert_eq!(ack.to().unwrap().tag(), Some("btag"));
    assert_eq!(d.local_seq(), Some(10), "ACK does not use up a CSeq");
    assert_eq!(
        d.request(&Method::Ack, "SIP/2.0/UDP h;branch=z9hG4bKx")
            .err(),
        Some(DialogError::Method("ACK"))
    );
    assert_eq!(
        d.request(&Method::Cancel, "SIP/2.0/UDP h;branch=z9hG4bKx")
            .err(),
        Some(DialogError::Method("CANCEL"))
    );
    assert_eq!(d.local_seq(), Some(10));
}

#[test]
fn incoming_requests_are_checked_and_ordered() {
    let mut alice = alice_side();
    let (_, mut bob) = bob_side();
    // Alice's BYE arrives at Bob.
    let bye = msg(alice
        .request(&Method::Bye, "SIP/2.0/UDP alice.a.example;branch=z9hG4bK1")
        .unwrap()
        .finish());
    assert!(bob.matches_request(&bye));
    bob.on_request(&bye).unwrap();
    assert_eq!(bob.remote_seq(), Some(11));
    // A request numbered below the last one is out of order: 500.
    let mut stale = alice.clone();
    stale.set_local_seq(4);
    let old = msg(stale
        .request(&Method::Info, "SIP/2.0/UDP h;branch=z9hG4bK2")
        .unwrap()
        .finish());
    let err = bob.on_request(&old).unwrap_err();
    assert_eq!(err, DialogError::OutOfOrder { got: 5, last: 11 });
    assert_eq!(err.status(), 500);
    assert_eq!(bob.remote_seq(), Some(11));
    // ACK and CANCEL reuse an older number and pass.
    let ack = msg(alice.ack(10, "SIP/2.0/UDP h;branch=z9hG4bK3").finish());
    bob.on_request(&ack).unwrap();
    assert_eq!(bob.remote_seq(), Some(11));
    // Another dialog's request: 481.
    let other = parse(&INVITE.replace("call-7", "call-8"));
    let alien = msg(Dialog::uac(&other, &answer(&other, 200))
        .unwrap()
        .request(&Method::Bye, "SIP/2.0/UDP h;branch=z9hG4bK4")
        .unwrap()
        .finish());
    let err = bob.on_request(&alien).unwrap_err();
    assert_eq!(err, DialogError::NotThisDialog);
    assert_eq!(err.status(), 481);
}

#[test]
fn re_invite_refreshes_the_remote_target_at_the_uas() {
    let mut alice = alice_side();
    let (_, mut bob) = bob_side();
    alice.set_local_target("<sip:alice@198.51.100.9:5070>");
    let reinvite = msg(alice
        .request(&Method::Invite, "SIP/2.0/UDP h;branch=z9hG4bK5")
        .unwrap()
        .finish());
    bob.on_request(&reinvite).unwrap();
    assert_eq!(bob.remote_target(), "sip:alice@198.51.100.9:5070");
    // INFO is not a target refresh even with a Contact.
    let info = msg(alice
        .request(&Method::Info, "SIP/2.0/UDP h;branch=z9hG4bK6")
        .unwrap()
        .header("Contact", "<sip:elsewhere@203.0.113.1>")
        .finish());
    bob.on_request(&info).unwrap();
    assert_eq!(bob.remote_target(), "sip:alice@198.51.100.9:5070");
}

#[test]
fn responses_to_target_refreshes_update_the_uac() {
    let mut alice = alice_side();
    let update = msg(alice
        .request(&Method::Update, "SIP/2.0/UDP h;branch=z9hG4bK7")
        .unwrap()
        .finish());
    let ok = msg(response_to(&update, 200, None)
        .header("Contact", "<sip:bob@203.0.113.50>")
        .finish());
    alice.on_response(&Method::Update, &ok).unwrap();
    assert_eq!(alice.remote_target(), "sip:bob@203.0.113.50");
    // Error responses and non-refresh methods leave it alone.
    let bad = msg(response_to(&update, 491, None)
        .header("Contact", "<sip:bob@203.0.113.51>")
        .finish());
    alice.on_response(&Method::Update, &bad).unwrap();
    let info_ok = msg(response_to(&update, 200, None)
        .header("Contact", "<sip:bob@203.0.113.52>")
        .finish());
    alice.on_response(&Method::Info, &info_ok).unwrap();
    assert_eq!(alice.remote_target(), "sip:bob@203.0.113.50");
    // A 2xx from another fork is another dialog.
    let req = parse(INVITE);
    let fork = msg(response_to(&req, 200, Some("fork2"))
        .header("Contact", "<sip:carol@192.0.2.3>")
        .finish());
    assert_eq!(
        alice.on_response(&Method::Invite, &fork),
        Err(DialogError::NotThisDialog)
    );
    let forked = Dialog::uac(&req, &fork).unwrap();
    assert_eq!(forked.id().remote_tag, "fork2");
    assert_ne!(forked.id(), alice.id());
}

#[test]
fn dialog_ids_from_both_sides_agree() {
    let req = parse(INVITE);
    let ok = answer(&req, 200);
    let alice = Dialog::uac(&req, &ok).unwrap();
    let bob = Dialog::uas(&req, &ok).unwrap();
    assert_eq!(DialogId::of_response(&ok).as_ref(), Some(alice.id()));
    assert_eq!(alice.id().local_tag, bob.id().remote_tag);
    assert_eq!(alice.id().remote_tag, bob.id().local_tag);
    assert_eq!(
        DialogId::of_request(&req),
        None,
        "no To tag: not in a dialog"
    );
}

/// Alice calls Bob through both layers: INVITE / 200 / ACK / BYE / 200, dialogs on both
/// sides, the ACK for the 2xx sent outside any transaction.
#[test]
fn a_whole_call_through_transactions_and_dialogs() {
    let now = Instant::now();
    let alice_peer = Peer::udp("192.0.2.1:5060".parse().unwrap());
    let bob_peer = Peer::udp("192.0.2.2:5062".parse().unwrap());
    let mut alice_tx = Transactions::new(Timers::default());
    let mut bob_tx = Transactions::new(Timers::default());

    let invite = parse(
        "INVITE sip:bob@192.0.2.2:5062 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKinv\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=atag\r\n\
To: <sip:bob@b.example>\r\n\
Call-ID: whole-call\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@192.0.2.1:5060>\r\n\
Content-Length: 0\r\n\r\n",
    );
    let ctx = alice_tx.send_request(invite, bob_peer, now).unwrap();
    let wire = alice_tx.poll_transmit().unwrap();
    let Incoming::Request { tx: stx, msg: req } =
        bob_tx.handle_incoming(Message::parse(wire.payload).unwrap(), alice_peer, now)
    else {
        panic!("INVITE not delivered");
    };
    let ok = msg(response_to(&req, 200, Some("btag"))
        .header("Contact", "<sip:bob@192.0.2.2:5062>")
        .finish());
    let mut bob = Dialog::uas(&req, &ok).unwrap();
    bob_tx.send_response(stx, ok, now).unwrap();
    let wire = bob_tx.poll_transmit().unwrap();
    assert_eq!(wire.peer, alice_peer);
    let Incoming::Response { tx, msg: ok } =
        alice_tx.handle_incoming(Message::parse(wire.payload).unwrap(), bob_peer, now)
    else {
        panic!("200 not delivered");
    };
    assert_eq!(tx, ctx);
    let sent_invite = alice_tx.client_request(ctx).unwrap().clone();
    let mut alice = Dialog::uac(&sent_invite, &ok).unwrap();

    // ACK for the 2xx: built by the dialog, sent statelessly, reaches Bob's TU.
    let ack = alice
        .ack(1, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKack")
        .finish();
    alice_tx.send_stateless(ack, bob_peer);
    let wire = alice_tx.poll_transmit().unwrap();
    let Incoming::Ack { msg: ack } =
        bob_tx.handle_incoming(Message::parse(wire.payload).unwrap(), alice_peer, now)
    else {
        panic!("ACK not given to the TU");
    };
    bob.on_request(&ack).unwrap();

    // BYE from Bob.
    let bye = msg(bob
        .request(&Method::Bye, "SIP/2.0/UDP 192.0.2.2:5062;branch=z9hG4bKbye")
        .unwrap()
        .finish());
    let btx = bob_tx.send_request(bye, alice_peer, now).unwrap();
    let wire = bob_tx.poll_transmit().unwrap();
    assert_eq!(wire.peer, alice_peer);
    let Incoming::Request { tx: abye, msg: bye } =
        alice_tx.handle_incoming(Message::parse(wire.payload).unwrap(), bob_peer, now)
    else {
        panic!("BYE not delivered");
    };
    assert!(alice.matches_request(&bye));
    alice.on_request(&bye).unwrap();
    alice_tx
        .send_response(abye, msg(response_to(&bye, 200, None).finish()), now)
        .unwrap();
    let wire = alice_tx.poll_transmit().unwrap();
    assert_eq!(
        wire.peer.addr.port(),
        5062,
        "response to the Via sent-by port"
    );
    assert!(matches!(
        bob_tx.handle_incoming(Message::parse(wire.payload).unwrap(), alice_peer, now),
        Incoming::Response { tx, .. } if tx == btx
    ));
}

#[test]
fn uas_early_dialog_is_confirmed_by_our_2xx() {
    let req = parse(INVITE);
    let ringing = answer(&req, 183);
    let mut d = Dialog::uas(&req, &ringing).unwrap();
    assert_eq!(d.state(), DialogState::Early);
    assert_eq!(d.id().local_tag, "btag");
    d.confirm();
    assert_eq!(d.state(), DialogState::Confirmed);
    assert_eq!(
        Dialog::uas(&req, &answer(&req, 486)),
        Err(DialogError::NotDialogCreating(486))
    );
}

#[test]
fn remote_target_with_uri_headers_is_stripped_in_the_request_uri() {
    let req = parse(INVITE);
    let ok = msg(response_to(&req, 200, Some("btag"))
        .header("Contact", "<sip:bob@192.0.2.2;transport=tcp?Subject=x>")
        .finish());
    let mut d = Dialog::uac(&req, &ok).unwrap();
    let bye = msg(d
        .request(&Method::Bye, "SIP/2.0/UDP h;branch=z9hG4bKu")
        .unwrap()
        .finish());
    assert_eq!(
        bye.request_uri_str(),
        Some("sip:bob@192.0.2.2;transport=tcp")
    );
}
