//! SDP parsing, writing and RFC 3264 offer/answer, as a SIP engineer would check them.

use std::net::{IpAddr, SocketAddr};

use switchboard_sdp::*;

const PHONE_OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=Talk\r\n\
i=A phone call\r\n\
c=IN IP4 192.0.2.10\r\n\
b=AS:84\r\n\
t=0 0\r\n\
a=tool:baresip\r\n\
m=audio 49170 RTP/AVP 9 0 8 101\r\n\
b=TIAS:64000\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=rtcp:49171\r\n\
a=sendrecv\r\n";

fn local(codecs: Vec<Codec>) -> LocalMedia {
    LocalMedia {
        username: "switchboard".into(),
        address: "198.51.100.5".parse().unwrap(),
        port: 30000,
        codecs,
        telephone_event: Some(101),
        ptime: Some(20),
    }
}

fn pcm() -> Vec<Codec> {
    vec![Codec::pcmu(), Codec::pcma()]
}

#[test]
fn parses_a_phone_offer_into_typed_values() {
    let sdp = SessionDescription::parse(PHONE_OFFER).unwrap();
    assert_eq!(sdp.origin.username, "alice");
    assert_eq!(sdp.origin.session_version, 2890844526);
    assert_eq!(
        sdp.connection.as_ref().unwrap().address,
        Host::Ip("192.0.2.10".parse().unwrap())
    );
    let m = &sdp.media[0];
    assert_eq!(
        (m.media.as_str(), m.port, m.protocol.as_str()),
        ("audio", 49170, "RTP/AVP")
    );
    assert_eq!(m.payload_types().collect::<Vec<_>>(), vec![9, 0, 8, 101]);
    assert_eq!(m.rtpmap(9).unwrap().encoding, "G722");
    assert_eq!(m.rtpmap(101).unwrap().clock_rate, 8000);
    assert_eq!(m.fmtp(101), Some("0-16"));
    assert_eq!(m.ptime, Some(20));
    assert_eq!(m.direction, Some(Direction::SendRecv));
    assert_eq!(m.attribute("rtcp").unwrap().value.as_deref(), Some("49171"));
    assert_eq!(
        sdp.attribute("tool").unwrap().value.as_deref(),
        Some("baresip")
    );
    // unknown lines kept in place
    let out = sdp.to_string();
    assert_eq!(out, PHONE_OFFER, "written back byte for byte");
    assert_eq!(SessionDescription::parse(&out).unwrap(), sdp);
}

fn corpus_body(name: &str) -> Option<String> {
    let dir = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR"))
        .ok()?
        .join("../../../shared/conformance/sip-torture/rfc5118");
    let Ok(text) = std::fs::read_to_string(dir.join(name)) else {
        eprintln!("!!!!! SKIPPED: {} is absent !!!!!", dir.display());
        return None;
    };
    let body = text.split_once("\n\n").map(|(_, b)| b.to_string());
    assert!(body.is_some(), "{name} has no body");
    body
}

#[test]
fn rfc5118_ipv6_in_sdp() {
    let Some(body) = corpus_body("ipv6-in-sdp") else {
        return;
    };
    let sdp = SessionDescription::parse(&body).unwrap();
    let v6: IpAddr = "2001:db8::20".parse().unwrap();
    assert_eq!(sdp.origin.addr_type, AddrType::Ip6);
    assert_eq!(sdp.origin.address, Host::Ip(v6));
    assert_eq!(sdp.connection.as_ref().unwrap().address, Host::Ip(v6));
    assert_eq!(sdp.timing, (3338481189, 3370017201));
    assert_eq!(sdp.media.len(), 2);
    assert_eq!(sdp.media[1].rtpmap(107).unwrap().encoding, "H263-1998");
    // we answer it: G726 is not ours, video is rejected: no common codec
    let mut oa = OfferAnswer::new(local(pcm()), 1);
    let err = oa.handle_offer(&sdp).unwrap_err();
    assert!(
        matches!(err, NegotiationError::NoCommonCodec { .. }),
        "{err}"
    );
    assert_eq!(err.sip_status(), 488);
    // with PCMU offered too, the answer goes to the IPv6 address
    let mut sdp2 = sdp.clone();
    sdp2.media[0].formats.push("0".into());
    let (answer, neg) = oa.handle_offer(&sdp2).unwrap();
    assert_eq!(neg.remote, Some(SocketAddr::new(v6, 6000)));
    assert_eq!(answer.media[1].port, 0);
}

#[test]
fn rfc5118_multiple_addresses_in_sdp() {
    let Some(body) = corpus_body("mult-ip-in-sdp") else {
        return;
    };
    let sdp = SessionDescription::parse(&body).unwrap();
    assert_eq!(sdp.origin.address, Host::Name("host.example.com".into()));
    assert_eq!(sdp.session_name, "");
    assert_eq!(
        sdp.connection_for(0).unwrap().address,
        Host::Ip("192.0.2.1".parse().unwrap())
    );
    assert_eq!(
        sdp.connection_for(1).unwrap().address,
        Host::Ip("2001:db8::1".parse().unwrap())
    );
    let mut oa = OfferAnswer::new(local(pcm()), 7);
    let (answer, neg) = oa.handle_offer(&sdp).unwrap();
    assert_eq!(neg.remote, Some("192.0.2.1:22334".parse().unwrap()));
    assert_eq!(neg.codec.payload_type, 0);
    assert_eq!(neg.telephone_event, None, "not offered, not answered");
    assert_eq!(answer.media.len(), 2);
    assert_eq!(answer.media[1].port, 0);
    assert_eq!(answer.media[1].media, "video");
}

#[test]
fn parse_errors_name_the_line_and_the_fault() {
    let cases = [
        ("", 1, "v=0"),
        ("o=x 1 1 IN IP4 1.2.3.4\r\n", 1, "first line must be v=0"),
        (
            "v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\nm=audio abc RTP/AVP 0\r\n",
            3,
            "port \"abc\"",
        ),
        ("v=0\r\no=x 1 IN IP4 1.2.3.4\r\n", 2, "expected 6 fields"),
        (
            "v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 2001:db8::1\r\n",
            3,
            "does not match",
        ),
        (
            "v=0\r\no=x 1 1 IN IP6 ::1\r\nc=IN IP6 1.2.3.4.5\r\n",
            3,
            "not a valid IP6",
        ),
        (
            "v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
            4,
            "no clock rate",
        ),
        (
            "v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 200\r\n",
            3,
            "not 0-127",
        ),
        (
            "v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\ngarbage\r\n",
            3,
            "<type>=<value>",
        ),
        ("v=0\r\ns=x\r\n", 2, "missing o="),
        (
            "v=0\r\no=x 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\na=ptime:x\r\n",
            4,
            "ptime",
        ),
    ];
    for (text, line, what) in cases {
        let e = SessionDescription::parse(text).unwrap_err();
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.to_string().contains(what), "{text:?}: {e}");
    }
}

#[test]
fn answer_picks_the_first_offered_codec_we_support_and_echoes_payload_types() {
    let offer = SessionDescription::parse(PHONE_OFFER).unwrap();
    // we support PCMU and PCMA: the offer lists G722 first, then PCMU
    let mut oa = OfferAnswer::new(local(pcm()), 42);
    let (answer, neg) = oa.handle_offer(&offer).unwrap();
    assert_eq!(neg.codec.name, "PCMU");
    assert_eq!(neg.codec.payload_type, 0);
    assert_eq!(neg.telephone_event, Some(101));
    assert_eq!(neg.remote, Some("192.0.2.10:49170".parse().unwrap()));
    assert_eq!(neg.direction, Direction::SendRecv);
    assert_eq!(neg.ptime, Some(20));
    let m = &answer.media[0];
    assert_eq!(m.formats, vec!["0", "101"]);
    assert_eq!(m.port, 30000);
    assert_eq!(m.fmtp(101), Some("0-16"));
    assert_eq!(m.direction, Some(Direction::SendRecv));
    assert_eq!(answer.origin.session_id, 42);
    assert_eq!(
        answer.connection.as_ref().unwrap().address,
        Host::Ip("198.51.100.5".parse().unwrap())
    );
    // the answer text parses back
    assert_eq!(
        SessionDescription::parse(&answer.to_string()).unwrap(),
        answer
    );

    // a dynamic payload type number is echoed, matched by name
    let offer = SessionDescription::parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
         m=audio 4000 RTP/AVP 112 97\r\na=rtpmap:112 L16/16000\r\na=rtpmap:97 telephone-event/16000\r\n",
    )
    .unwrap();
    let mut oa = OfferAnswer::new(local(vec![Codec::pcmu(), Codec::l16(16000)]), 1);
    let (answer, neg) = oa.handle_offer(&offer).unwrap();
    assert_eq!((neg.codec.payload_type, neg.codec.clock_rate), (112, 16000));
    assert_eq!(neg.telephone_event, Some(97));
    assert_eq!(answer.media[0].formats, vec!["112", "97"]);
}

#[test]
fn answer_direction_follows_the_rfc3264_table() {
    for (offered, answered) in [
        ("sendrecv", Direction::SendRecv),
        ("sendonly", Direction::RecvOnly),
        ("recvonly", Direction::SendOnly),
        ("inactive", Direction::Inactive),
    ] {
        let text = PHONE_OFFER.replace("a=sendrecv", &format!("a={offered}"));
        let offer = SessionDescription::parse(&text).unwrap();
        let mut oa = OfferAnswer::new(local(pcm()), 1);
        let (answer, neg) = oa.handle_offer(&offer).unwrap();
        assert_eq!(answer.media[0].direction, Some(answered), "{offered}");
        assert_eq!(neg.direction, answered);
    }
    // session-level direction applies when the media has none
    let text = PHONE_OFFER
        .replace("a=sendrecv\r\n", "")
        .replace("a=tool:baresip\r\n", "a=sendonly\r\n");
    let (answer, _) = OfferAnswer::new(local(pcm()), 1)
        .handle_offer(&SessionDescription::parse(&text).unwrap())
        .unwrap();
    assert_eq!(answer.media[0].direction, Some(Direction::RecvOnly));
    // RFC 2543 hold (c=0.0.0.0): we must not send
    let text = PHONE_OFFER.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0");
    let (_, neg) = OfferAnswer::new(local(pcm()), 1)
        .handle_offer(&SessionDescription::parse(&text).unwrap())
        .unwrap();
    assert_eq!(neg.direction, Direction::RecvOnly);
    assert_eq!(neg.remote, None);
}

#[test]
fn no_common_codec_is_a_488_and_changes_nothing() {
    let text = PHONE_OFFER.replace(
        "m=audio 49170 RTP/AVP 9 0 8 101",
        "m=audio 49170 RTP/AVP 9 101",
    );
    let offer = SessionDescription::parse(&text).unwrap();
    let mut oa = OfferAnswer::new(local(pcm()), 1);
    let e = oa.handle_offer(&offer).unwrap_err();
    assert_eq!(
        e,
        NegotiationError::NoCommonCodec {
            offered: "G722/8000".into()
        }
    );
    assert_eq!(e.sip_status(), 488);
    assert!(oa.negotiated().is_none());
    // video only
    let video = SessionDescription::parse(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n",
    )
    .unwrap();
    assert_eq!(
        oa.handle_offer(&video).unwrap_err(),
        NegotiationError::NoAudio
    );
}

#[test]
fn offer_answer_hold_resume_and_version_increments() {
    let mut us = OfferAnswer::new(
        local(vec![Codec::pcmu(), Codec::pcma(), Codec::l16(16000)]),
        1000,
    );
    let mut peer = OfferAnswer::new(
        LocalMedia {
            username: "peer".into(),
            address: "2001:db8::5".parse().unwrap(),
            port: 40000,
            codecs: vec![Codec::pcma()],
            telephone_event: Some(101),
            ptime: None,
        },
        2000,
    );
    let offer = us.create_offer().unwrap();
    assert_eq!(
        us.create_offer().unwrap_err(),
        NegotiationError::OfferPending
    );
    let m = &offer.media[0];
    assert_eq!(m.formats, vec!["0", "8", "96", "101"]);
    assert_eq!(m.rtpmap(96).unwrap().encoding, "L16");
    assert_eq!(m.fmtp(101), Some("0-16"));
    assert_eq!(offer.origin.session_version, 1000);
    // the text goes over the wire
    let offer = SessionDescription::parse(&offer.to_string()).unwrap();
    let (answer, peer_neg) = peer.handle_offer(&offer).unwrap();
    assert_eq!(peer_neg.codec.payload_type, 8);
    let answer = SessionDescription::parse(&answer.to_string()).unwrap();
    let neg = us.handle_answer(&answer).unwrap();
    assert_eq!(neg.codec.name, "PCMA");
    assert_eq!(neg.telephone_event, Some(101));
    assert_eq!(neg.remote, Some("[2001:db8::5]:40000".parse().unwrap()));
    assert_eq!(neg.direction, Direction::SendRecv);
    assert_eq!(
        us.handle_answer(&answer).unwrap_err(),
        NegotiationError::NoOfferPending
    );

    // an unchanged re-offer (session refresh) keeps the version
    let same = us.create_offer().unwrap();
    assert_eq!(same.origin.session_version, 1000);
    us.handle_answer(&answer).unwrap();

    // hold: sendonly; the peer answers recvonly
    us.set_hold(Some(HoldMode::SendOnly));
    let hold = us.create_offer().unwrap();
    assert_eq!(hold.origin.session_version, 1001);
    assert_eq!(hold.media[0].direction, Some(Direction::SendOnly));
    let (hold_answer, peer_neg) = peer.handle_offer(&hold).unwrap();
    assert_eq!(hold_answer.media[0].direction, Some(Direction::RecvOnly));
    assert_eq!(peer_neg.direction, Direction::RecvOnly);
    assert_eq!(
        hold_answer.origin.session_version, 2001,
        "peer's answer changed: version up"
    );
    assert_eq!(
        us.handle_answer(&hold_answer).unwrap().direction,
        Direction::SendOnly
    );

    // inactive hold
    us.set_hold(Some(HoldMode::Inactive));
    let off = us.create_offer().unwrap();
    assert_eq!(off.origin.session_version, 1002);
    let (a, _) = peer.handle_offer(&off).unwrap();
    assert_eq!(a.media[0].direction, Some(Direction::Inactive));
    assert_eq!(us.handle_answer(&a).unwrap().direction, Direction::Inactive);

    // resume
    us.set_hold(None);
    let on = us.create_offer().unwrap();
    assert_eq!(on.origin.session_version, 1003);
    let (a, _) = peer.handle_offer(&on).unwrap();
    assert_eq!(us.handle_answer(&a).unwrap().direction, Direction::SendRecv);

    // while on hold ourselves, a peer's sendrecv re-offer is answered sendonly
    us.set_hold(Some(HoldMode::SendOnly));
    let peer_offer = peer.create_offer().unwrap();
    let (a, n) = us.handle_offer(&peer_offer).unwrap();
    assert_eq!(a.media[0].direction, Some(Direction::SendOnly));
    assert_eq!(n.direction, Direction::SendOnly);
}

#[test]
fn glare_and_rollback() {
    let mut us = OfferAnswer::new(local(pcm()), 1);
    let mut peer = OfferAnswer::new(local(pcm()), 2);
    us.create_offer().unwrap();
    let theirs = peer.create_offer().unwrap();
    let e = us.handle_offer(&theirs).unwrap_err();
    assert_eq!(e.sip_status(), 491);
    us.rollback();
    assert!(us.handle_offer(&theirs).is_ok());
}

#[test]
fn rejected_audio_in_answer_is_no_common_codec() {
    let mut us = OfferAnswer::new(local(pcm()), 1);
    let offer = us.create_offer().unwrap();
    let mut answer = offer.clone();
    answer.media[0].port = 0;
    assert!(matches!(
        us.handle_answer(&answer),
        Err(NegotiationError::NoCommonCodec { .. })
    ));
    let offer = us.create_offer().unwrap();
    let mut answer = offer.clone();
    answer
        .media
        .push(MediaDescription::new("video", 0, "RTP/AVP"));
    assert!(matches!(
        us.handle_answer(&answer),
        Err(NegotiationError::InvalidAnswer(_))
    ));
}

#[test]
fn answer_states_our_ptime_not_the_offers() {
    let text = PHONE_OFFER.replace("a=ptime:20", "a=ptime:30");
    let offer = SessionDescription::parse(&text).unwrap();
    let mut oa = OfferAnswer::new(local(pcm()), 1);
    let (answer, neg) = oa.handle_offer(&offer).unwrap();
    assert_eq!(answer.media[0].ptime, Some(20), "we send 20 ms packets");
    assert_eq!(
        neg.ptime,
        Some(30),
        "what the peer asked for is still reported"
    );
    // without a ptime of our own, the answer leaves the offer's
    let mut l = local(pcm());
    l.ptime = None;
    let (answer, _) = OfferAnswer::new(l, 1).handle_offer(&offer).unwrap();
    assert_eq!(answer.media[0].ptime, Some(30));
}
