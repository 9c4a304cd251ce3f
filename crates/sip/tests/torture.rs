//! RFC 4475 and RFC 5118 torture messages from `../shared/conformance/sip-torture`, each checked
//! against the RFC's verdict: valid messages frame and validate with the right values, invalid
//! ones are refused with an error that names the fault.

use bytes::Bytes;
use std::path::PathBuf;
use switchboard_sip::{Contacts, Error, Message, Method, Uri};

fn corpus() -> Option<PathBuf> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/sip-torture");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "!!!!! SKIPPED: {} is absent; SIP torture tests did not run !!!!!",
            dir.display()
        );
        None
    }
}

fn load(dir: &std::path::Path, rel: &str) -> Vec<u8> {
    let raw = std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    if !rel.starts_with("rfc5118") {
        return raw;
    }
    // RFC 5118 files use bare LF and some lack the final blank line (INDEX.md).
    let text = String::from_utf8(raw).expect("rfc5118 files are text");
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => (text.trim_end_matches('\n'), ""),
    };
    let body = body.replace('\n', "\r\n");
    // The RFC's examples were written with Content-Length values that match neither line ending
    // (ipv6-in-sdp says 268 for a 242/251-octet body); RFC 5118 tests IPv6 syntax, not framing,
    // so the length is set to the body actually sent.
    let head: Vec<String> = head
        .lines()
        .map(
            |l| match l.to_ascii_lowercase().starts_with("content-length:") {
                true => format!("Content-Length: {}", body.len()),
                false => l.to_string(),
            },
        )
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n")).into_bytes()
}

fn check(bytes: Vec<u8>) -> Result<Message, Error> {
    let m = Message::parse(Bytes::from(bytes))?;
    m.validate()?;
    Ok(m)
}

/// Messages that must be refused, with a word the error must contain.
const INVALID: &[(&str, &str)] = &[
    ("rfc4475/badinv01.dat", "Via"),
    ("rfc4475/clerr.dat", "Content-Length"),
    ("rfc4475/ncl.dat", "Content-Length"),
    ("rfc4475/scalar02.dat", "CSeq"),
    ("rfc4475/scalarlg.dat", "CSeq"),
    ("rfc4475/quotbal.dat", "To"),
    ("rfc4475/ltgtruri.dat", "Request-URI"),
    ("rfc4475/lwsruri.dat", "start line"),
    ("rfc4475/lwsstart.dat", "start line"),
    ("rfc4475/trws.dat", "start line"),
    ("rfc4475/escruri.dat", "Request-URI"),
    ("rfc4475/baddate.dat", "Date"),
    ("rfc4475/regbadct.dat", "Contact"),
    ("rfc4475/badaspec.dat", "To"),
    ("rfc4475/baddn.dat", "blank line"),
    ("rfc4475/badvers.dat", "version"),
    ("rfc4475/mismatch01.dat", "CSeq"),
    ("rfc4475/mismatch02.dat", "CSeq"),
    ("rfc4475/bigcode.dat", "status code"),
    ("rfc4475/insuf.dat", "missing"),
    ("rfc4475/multi01.dat", "more than once"),
    ("rfc4475/mcl01.dat", "Content-Length"),
    ("rfc4475/test.dat", "start line"),
    ("rfc5118/ipv6-bad", "Request-URI"),
];

/// Messages that must frame and validate (some are refused later by policy, see `check.rs`).
const VALID: &[&str] = &[
    "rfc4475/wsinv.dat",
    "rfc4475/intmeth.dat",
    "rfc4475/esc01.dat",
    "rfc4475/escnull.dat",
    "rfc4475/esc02.dat",
    "rfc4475/lwsdisp.dat",
    "rfc4475/longreq.dat",
    "rfc4475/dblreq.dat",
    "rfc4475/semiuri.dat",
    "rfc4475/transports.dat",
    "rfc4475/mpart01.dat",
    "rfc4475/unreason.dat",
    "rfc4475/noreason.dat",
    "rfc4475/badbranch.dat",
    "rfc4475/unkscm.dat",
    "rfc4475/novelsc.dat",
    "rfc4475/unksm2.dat",
    "rfc4475/bext01.dat",
    "rfc4475/invut.dat",
    "rfc4475/regaut01.dat",
    "rfc4475/bcast.dat",
    "rfc4475/zeromf.dat",
    "rfc4475/cparam01.dat",
    "rfc4475/cparam02.dat",
    "rfc4475/regescrt.dat",
    "rfc4475/sdp01.dat",
    "rfc4475/inv2543.dat",
    "rfc5118/ipv6-good",
    "rfc5118/port-ambiguous",
    "rfc5118/port-unambiguous",
    "rfc5118/via-received-param-with-delim",
    "rfc5118/via-received-param-no-delim",
    "rfc5118/ipv6-in-sdp",
    "rfc5118/mult-ip-in-header",
    "rfc5118/mult-ip-in-sdp",
    "rfc5118/ipv4-mapped-ipv6",
    "rfc5118/ipv6-bug-abnf-3-colons",
    "rfc5118/ipv6-correct-abnf-2-colons",
];

#[test]
fn every_corpus_file_has_a_verdict() {
    let Some(dir) = corpus() else { return };
    let mut listed: Vec<String> = INVALID.iter().map(|(f, _)| f.to_string()).collect();
    listed.extend(VALID.iter().map(|f| f.to_string()));
    for sub in ["rfc4475", "rfc5118"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".md") {
                continue;
            }
            let rel = format!("{sub}/{name}");
            assert!(listed.contains(&rel), "{rel} has no verdict in this test");
        }
    }
}

#[test]
fn invalid_messages_are_refused_naming_the_fault() {
    let Some(dir) = corpus() else { return };
    let mut passed = 0;
    for (file, word) in INVALID {
        match check(load(&dir, file)) {
            Ok(_) => panic!("{file}: accepted, but the RFC says it is invalid"),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains(word),
                    "{file}: error {text:?} does not name {word:?}"
                );
                passed += 1;
            }
        }
    }
    eprintln!(
        "torture: {passed}/{} invalid messages refused with the right fault",
        INVALID.len()
    );
}

#[test]
fn valid_messages_are_accepted() {
    let Some(dir) = corpus() else { return };
    for file in VALID {
        if let Err(e) = check(load(&dir, file)) {
            panic!("{file}: refused ({e}), but the RFC says it is valid");
        }
    }
    eprintln!(
        "torture: {}/{} valid messages accepted",
        VALID.len(),
        VALID.len()
    );
}

fn valid(file: &str) -> Message {
    let dir = corpus().expect("corpus present");
    check(load(&dir, file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn wsinv_values() {
    if corpus().is_none() {
        return;
    }
    let m = valid("rfc4475/wsinv.dat");
    assert_eq!(m.to().unwrap().tag(), Some("1918181833n"));
    assert_eq!(m.from().unwrap().tag(), Some("98asjd8"));
    assert_eq!(
        m.from().unwrap().display_name().as_deref(),
        Some("J Rosenberg \\\"")
    );
    assert_eq!(m.max_forwards().unwrap(), Some(68));
    assert_eq!(m.cseq().unwrap().seq, 9);
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[0].branch(), Some("390skdjuw"));
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(m.body().len(), 150);
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("star")
    };
    assert_eq!(c[0].params.get("newparam"), Some("newvalue"));
    assert_eq!(c[0].params.get("q"), Some("0.33"));
    assert_eq!(
        m.get_by_name("NewFangledHeader"),
        Some("newfangled value\r\n continued newfangled value")
    );
}

#[test]
fn escapes_and_methods() {
    if corpus().is_none() {
        return;
    }
    let m = valid("rfc4475/esc01.dat");
    let Uri::Sip(u) = m.request_uri().unwrap() else {
        panic!()
    };
    assert_eq!(u.user_unescaped().as_deref(), Some("sips:user@example.com"));
    assert_eq!(u.host.as_str(), "example.net");

    let m = valid("rfc4475/esc02.dat");
    assert_eq!(m.method(), Some(&Method::Other("RE%47IST%45R".into())));
    // C%6Fntact is not Contact.
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(c.len(), 2);

    let m = valid("rfc4475/escnull.dat");
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!()
    };
    let aors: Vec<String> = c.iter().map(|n| n.uri.as_sip().unwrap().aor()).collect();
    assert_ne!(aors[0], aors[1]);

    let m = valid("rfc4475/intmeth.dat");
    assert_eq!(m.cseq().unwrap().method, *m.method().unwrap());
}

#[test]
fn framing_values() {
    if corpus().is_none() {
        return;
    }
    let m = valid("rfc4475/dblreq.dat");
    assert!(m.body().is_empty());
    assert!(m.as_bytes().ends_with(b"\r\n\r\n"));
    let m = valid("rfc4475/longreq.dat");
    assert!(m.via_count().unwrap() >= 30);
    let m = valid("rfc4475/mpart01.dat");
    assert_eq!(
        m.body().len(),
        m.get(switchboard_sip::HeaderName::ContentLength)
            .unwrap()
            .parse::<usize>()
            .unwrap()
    );
    let m = valid("rfc4475/badbranch.dat");
    assert!(!m.top_via().unwrap().is_rfc3261());
}

#[test]
fn ipv6_references() {
    if corpus().is_none() {
        return;
    }
    let m = valid("rfc5118/port-ambiguous");
    let Uri::Sip(u) = m.request_uri().unwrap() else {
        panic!()
    };
    assert_eq!(u.port, None);
    assert_eq!(u.host.as_str(), "[2001:db8::10:5070]");
    let m = valid("rfc5118/port-unambiguous");
    let Uri::Sip(u) = m.request_uri().unwrap() else {
        panic!()
    };
    assert_eq!(u.port, Some(5070));
    let m = valid("rfc5118/via-received-param-with-delim");
    assert_eq!(m.top_via().unwrap().received(), Some("[2001:db8::9:255]"));
    let m = valid("rfc5118/via-received-param-no-delim");
    assert_eq!(m.top_via().unwrap().received(), Some("2001:db8::9:255"));
}
