//! Property tests: messages written from random parts parse back to the same values, forwarding
//! edits touch only what they must, and no input (random or a mutated real message) panics.

use bytes::Bytes;
use proptest::prelude::*;
use switchboard_sip::{fuzzing, Builder, HeaderName, Message, Method};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,15}"
}

/// RFC 3261 `user`: unreserved and user-unreserved characters (no escapes).
fn user() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._!~*'()&=+$,-]{0,15}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,2}",
        (any::<[u8; 4]>()).prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        (any::<[u16; 8]>()).prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
    ]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("INVITE".to_string()),
        Just("REGISTER".to_string()),
        Just("OPTIONS".to_string()),
        Just("BYE".to_string()),
        "[A-Z]{3,12}",
    ]
}

#[derive(Debug, Clone)]
struct Parts {
    method: String,
    user: String,
    host: String,
    port: Option<u16>,
    branch: String,
    from_tag: String,
    to_tag: Option<String>,
    call_id: String,
    cseq: u32,
    max_forwards: u8,
    extra: Vec<(String, String)>,
    body: Vec<u8>,
    compact: bool,
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        (method(), user(), host(), proptest::option::of(1u16..)),
        (token(), token(), proptest::option::of(token())),
        (
            "[A-Za-z0-9.!%*_+`'~()<>:\\\\\"/\\[\\]?{}-]{1,30}(@[a-z0-9.]{1,20})?",
            0u32..=u32::MAX / 2,
            any::<u8>(),
        ),
        proptest::collection::vec(("X-[A-Za-z0-9-]{1,12}", "[ -~]{0,40}"), 0..4),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(
            |(
                (method, user, host, port),
                (branch, from_tag, to_tag),
                (call_id, cseq, max_forwards),
                extra,
                body,
                compact,
            )| Parts {
                method,
                user,
                host,
                port,
                branch: format!("z9hG4bK{branch}"),
                from_tag,
                to_tag,
                call_id,
                cseq,
                max_forwards,
                // One header per name (case-insensitive, as SIP compares them): the check
                // below looks a value up by its name.
                extra: extra
                    .into_iter()
                    .fold(Vec::<(String, String)>::new(), |mut acc, (n, v)| {
                        if !acc.iter().any(|(m, _)| m.eq_ignore_ascii_case(&n)) {
                            acc.push((n, v.trim().to_string()));
                        }
                        acc
                    }),
                body,
                compact,
            },
        )
}

fn write(p: &Parts) -> Bytes {
    let port = p.port.map(|n| format!(":{n}")).unwrap_or_default();
    let method = Method::parse(&p.method).expect("a token is a method");
    let (via, from, to, call_id, cseq) = match p.compact {
        true => ("v", "f", "t", "i", "CSeq"),
        false => ("Via", "From", "To", "Call-ID", "CSeq"),
    };
    let to_value = match &p.to_tag {
        Some(t) => format!("<sip:{}@{}>;tag={t}", p.user, p.host),
        None => format!("<sip:{}@{}>", p.user, p.host),
    };
    let mut b = Builder::request(&method, &format!("sip:{}@{}{port}", p.user, p.host))
        .header(
            via,
            format!("SIP/2.0/UDP 192.0.2.1:5060;branch={}", p.branch),
        )
        .header("Max-Forwards", p.max_forwards)
        .header(
            from,
            format!("\"Caller\" <sip:caller@example.com>;tag={}", p.from_tag),
        )
        .header(to, to_value)
        .header(call_id, &p.call_id)
        .header(cseq, format!("{} {}", p.cseq, p.method));
    for (n, v) in &p.extra {
        b = b.header(n, v);
    }
    match p.body.is_empty() {
        true => b.finish(),
        false => b.body("application/octet-stream", &p.body),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn written_requests_parse_back_to_their_parts(p in parts()) {
        let bytes = write(&p);
        let m = Message::parse(bytes.clone()).expect("a written request parses");
        m.validate().expect("a written request is valid");
        prop_assert_eq!(m.as_bytes(), &bytes[..]);
        prop_assert_eq!(m.method().map(|x| x.as_str()), Some(p.method.as_str()));
        let uri = m.request_uri().expect("request URI");
        prop_assert_eq!(uri.user(), Some(p.user.as_str()));
        prop_assert_eq!(m.top_via().unwrap().branch(), Some(p.branch.as_str()));
        prop_assert_eq!(m.call_id().unwrap(), p.call_id.as_str());
        let cseq = m.cseq().unwrap();
        prop_assert_eq!(cseq.seq, p.cseq);
        prop_assert_eq!(cseq.method.as_str(), p.method.as_str());
        prop_assert_eq!(m.from().unwrap().tag(), Some(p.from_tag.as_str()));
        prop_assert_eq!(m.to().unwrap().tag(), p.to_tag.as_deref());
        prop_assert_eq!(m.max_forwards().unwrap(), Some(p.max_forwards));
        for (n, v) in &p.extra {
            prop_assert_eq!(m.get_by_name(n), Some(v.as_str()));
        }
        prop_assert_eq!(m.body(), &p.body[..]);
    }

    #[test]
    fn forwarding_edits_touch_only_their_lines(p in parts(), port in 1u16..) {
        prop_assume!(p.max_forwards > 0);
        let original = write(&p);
        let m = Message::parse(original.clone()).unwrap();
        let ours = format!("SIP/2.0/UDP 203.0.113.5:{port};branch=z9hG4bKsb1");
        let out = Message::parse(
            m.edit()
                .prepend_via(&ours)
                .decrement_max_forwards()
                .unwrap()
                .add_record_route("<sip:203.0.113.5;lr>")
                .finish(),
        )
        .expect("the forwarded request parses");
        out.validate().expect("the forwarded request is valid");
        prop_assert_eq!(out.via_count().unwrap(), 2);
        prop_assert_eq!(out.top_via().unwrap().branch(), Some("z9hG4bKsb1"));
        prop_assert_eq!(out.max_forwards().unwrap(), Some(p.max_forwards - 1));
        prop_assert_eq!(out.record_routes().unwrap().len(), 1);
        prop_assert_eq!(out.body(), m.body());
        // Every line the edits did not name is there, byte for byte, in the same order.
        let edited = [HeaderName::Via, HeaderName::MaxForwards, HeaderName::RecordRoute];
        let kept = |msg: &Message| -> Vec<Vec<u8>> {
            msg.fields()
                .iter()
                .filter(|h| !edited.contains(&h.name))
                .map(|h| msg.as_bytes()[h.line_span.range()].to_vec())
                .collect()
        };
        prop_assert_eq!(kept(&out), kept(&m));
        // Removing the Via we added gives the Vias we received.
        let back = Message::parse(out.edit().remove_top_via().unwrap().finish()).unwrap();
        prop_assert_eq!(back.top_via().unwrap().branch(), Some(p.branch.as_str()));
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        fuzzing::datagram(&data);
    }

    #[test]
    fn mutated_messages_never_panic(
        p in parts(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        chunk in 1usize..64,
    ) {
        let mut data = write(&p).to_vec();
        for (at, byte, op) in edits {
            let i = at.index(data.len() + 1);
            match op {
                0 if i < data.len() => data[i] = byte,
                1 => data.insert(i, byte),
                _ if i < data.len() => { data.remove(i); }
                _ => {}
            }
        }
        fuzzing::datagram(&data);
        fuzzing::stream(&data, chunk);
    }
}

/// Every RFC 4475/5118 torture message, cut at every length, goes through the fuzz entry points.
#[test]
fn truncated_torture_messages_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/sip-torture");
    if !dir.is_dir() {
        eprintln!(
            "!!! SKIPPED: {} is absent; the torture corpus did not run",
            dir.display()
        );
        return;
    }
    let mut files = 0;
    for suite in ["rfc4475", "rfc5118"] {
        for entry in std::fs::read_dir(dir.join(suite))
            .expect("suite folder")
            .flatten()
        {
            let data = std::fs::read(entry.path()).expect("readable");
            for end in 0..=data.len() {
                fuzzing::datagram(&data[..end]);
            }
            fuzzing::stream(&data, 7);
            files += 1;
        }
    }
    assert!(files > 0, "no messages in {}", dir.display());
}
