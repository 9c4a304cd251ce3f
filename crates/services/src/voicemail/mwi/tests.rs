use super::*;
use std::net::SocketAddr;

const LOCAL: &str = "127.0.0.1:5090";
const PHONE: &str = "127.0.0.1:5072";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn core() -> (MwiCore, Instant) {
    (
        MwiCore::new(addr(LOCAL), Timers::default(), 1),
        Instant::now(),
    )
}

fn sent(c: &mut MwiCore) -> Vec<(Peer, String)> {
    std::iter::from_fn(|| c.poll_transmit())
        .map(|t| (t.peer, String::from_utf8_lossy(&t.payload).into_owned()))
        .collect()
}

fn subscribe(event: &str, expires: u32) -> Message {
    let text = format!(
        "SUBSCRIBE sip:1001@switchboard SIP/2.0\r\n\
         Via: SIP/2.0/UDP {PHONE};branch=z9hG4bK-{event}-{expires}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1001@switchboard>;tag=ph1\r\n\
         To: <sip:1001@switchboard>\r\n\
         Call-ID: sub-1\r\n\
         CSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:1001@{PHONE}>\r\n\
         Event: {event}\r\n\
         Expires: {expires}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    Message::parse(bytes::Bytes::from(text)).unwrap()
}

#[test]
fn summary_bodies_follow_rfc_3842() {
    let b = summary_body("sip:1001@switchboard", Counts { new: 2, saved: 1 });
    assert_eq!(
        b,
        "Messages-Waiting: yes\r\nMessage-Account: sip:1001@switchboard\r\nVoice-Message: 2/1 (0/0)\r\n"
    );
    assert!(summary_body("a", Counts { new: 0, saved: 4 }).starts_with("Messages-Waiting: no\r\n"));
}

#[test]
fn a_dn_shows_the_sum_of_its_mailboxes() {
    let per: BTreeMap<String, Counts> = [
        ("8001".to_string(), Counts { new: 1, saved: 2 }),
        ("8100".to_string(), Counts { new: 3, saved: 0 }),
        ("8200".to_string(), Counts { new: 9, saved: 9 }),
    ]
    .into();
    let boxes = ["8001".to_string(), "8100".to_string(), "9999".to_string()];
    assert_eq!(dn_counts(&per, &boxes), Counts { new: 4, saved: 2 });
    assert_eq!(dn_counts(&per, &[]), Counts::default());
}

#[test]
fn update_notifies_each_registered_contact() {
    let (mut c, now) = core();
    c.handle_command(
        MwiCommand::Update {
            user: "1001".into(),
            domain: "switchboard".into(),
            counts: Counts { new: 1, saved: 0 },
            contacts: vec![("sip:1001@127.0.0.1:5072".into(), Peer::udp(addr(PHONE)))],
        },
        now,
    );
    let out = sent(&mut c);
    assert_eq!(out.len(), 1, "{out:?}");
    let (peer, text) = &out[0];
    assert_eq!(peer.addr, addr(PHONE));
    assert!(
        text.starts_with("NOTIFY sip:1001@127.0.0.1:5072 SIP/2.0\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nEvent: message-summary\r\n"), "{text}");
    assert!(
        text.contains("Content-Type: application/simple-message-summary\r\n"),
        "{text}"
    );
    assert!(text.ends_with("Voice-Message: 1/0 (0/0)\r\n"), "{text}");
}

#[test]
fn subscribe_gets_200_and_a_notify_with_the_counts() {
    let (mut c, now) = core();
    c.handle_command(
        MwiCommand::Update {
            user: "1001".into(),
            domain: "switchboard".into(),
            counts: Counts { new: 2, saved: 3 },
            contacts: Vec::new(),
        },
        now,
    );
    assert!(sent(&mut c).is_empty());
    c.handle_message(
        subscribe("message-summary", 600),
        Peer::udp(addr(PHONE)),
        now,
    );
    let out = sent(&mut c);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].1.starts_with("SIP/2.0 200 OK\r\n"), "{}", out[0].1);
    assert!(out[0].1.contains("Expires: 600\r\n"), "{}", out[0].1);
    let notify = &out[1].1;
    assert!(
        notify.starts_with("NOTIFY sip:1001@127.0.0.1:5072 SIP/2.0\r\n"),
        "{notify}"
    );
    assert!(notify.contains("Call-ID: sub-1\r\n"), "{notify}");
    assert!(
        notify.contains("To: <sip:1001@switchboard>;tag=ph1\r\n"),
        "{notify}"
    );
    assert!(
        notify.contains("Subscription-State: active;expires=600\r\n"),
        "{notify}"
    );
    assert!(notify.ends_with("Voice-Message: 2/3 (0/0)\r\n"), "{notify}");
    assert_eq!(c.subscriptions(), 1);
    // A change reaches the subscription in its dialog, CSeq growing.
    c.handle_command(
        MwiCommand::Update {
            user: "1001".into(),
            domain: "switchboard".into(),
            counts: Counts { new: 0, saved: 5 },
            contacts: Vec::new(),
        },
        now,
    );
    let out = sent(&mut c);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].1.contains("CSeq: 2 NOTIFY\r\n"), "{}", out[0].1);
    assert!(
        out[0].1.contains("Messages-Waiting: no\r\n"),
        "{}",
        out[0].1
    );
}

#[test]
fn unsubscribe_other_events_and_methods() {
    let (mut c, now) = core();
    c.handle_message(subscribe("presence", 600), Peer::udp(addr(PHONE)), now);
    let out = sent(&mut c);
    assert!(out[0].1.starts_with("SIP/2.0 489 "), "{}", out[0].1);
    c.handle_message(subscribe("message-summary", 0), Peer::udp(addr(PHONE)), now);
    let out = sent(&mut c);
    assert!(out[0].1.starts_with("SIP/2.0 200 OK\r\n"), "{}", out[0].1);
    assert!(
        out[1].1.contains("Subscription-State: terminated"),
        "{}",
        out[1].1
    );
    assert_eq!(c.subscriptions(), 0);
}

#[test]
fn a_subscriber_with_an_ip_host_gets_its_users_counts() {
    let (mut c, now) = core();
    for (user, new) in [("1001", 4), ("1002", 7)] {
        c.handle_command(
            MwiCommand::Update {
                user: user.into(),
                domain: "switchboard".into(),
                counts: Counts { new, saved: 0 },
                contacts: Vec::new(),
            },
            now,
        );
    }
    assert_eq!(c.counts_of("1001@127.0.0.1"), Counts { new: 4, saved: 0 });
    assert_eq!(c.counts_of("1002@switchboard"), Counts { new: 7, saved: 0 });
    assert_eq!(c.counts_of("1003@switchboard"), Counts::default());
}
