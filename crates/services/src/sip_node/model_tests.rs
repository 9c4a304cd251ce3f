//! The call model without a network: inputs in, actions and TLib events out.

use super::model::*;
use bytes::Bytes;
use switchboard_events::{CallType, ConnId, Event, PartyRole};

const T: &str = "demo";
const CARRIER: &str = "+15551234567";

fn sdp(tag: &str) -> Option<Bytes> {
    Some(Bytes::from(format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns={tag}\r\n"
    )))
}

struct Sim {
    m: Model,
    now: u64,
    next_req: u64,
}

/// An event as a user of the event stream sees it.
#[derive(Debug, PartialEq)]
struct Seen {
    name: &'static str,
    this: String,
    other: Option<String>,
    roles: (Option<PartyRole>, Option<PartyRole>),
}

fn seen(name: &'static str, this: &str, other: &str, r: (PartyRole, PartyRole)) -> Seen {
    Seen {
        name,
        this: this.into(),
        other: Some(other.into()),
        roles: (Some(r.0), Some(r.1)),
    }
}

use PartyRole::{Destination as D, Origination as O};

impl Sim {
    fn new() -> Sim {
        Sim {
            m: Model::new(ModelSettings {
                ring_timeout_ms: 20_000,
                node: 7,
                route_timeout_ms: 10_000,
            }),
            now: 1_000,
            next_req: 1,
        }
    }

    fn step(&mut self, input: Input) -> Vec<Action> {
        self.now += 10;
        let mut out = Vec::new();
        self.m.handle(input, self.now, &mut out);
        out
    }

    fn request(&mut self, req: Request) -> (u64, Vec<Action>) {
        let id = self.next_req;
        self.next_req += 1;
        let out = self.step(Input::Request {
            id,
            tenant: T.into(),
            req,
        });
        (id, out)
    }

    /// An incoming INVITE on leg `n`; returns the leg, the ConnId and the leg placed.
    fn incoming(
        &mut self,
        n: u64,
        caller: &str,
        internal: bool,
        to: Dest,
    ) -> (LegId, ConnId, LegId, Vec<Action>) {
        let a = LegId::incoming(n);
        let out = self.step(Input::Incoming {
            leg: a,
            tenant: T.into(),
            caller: caller.into(),
            caller_internal: internal,
            dialed: to.number().to_string(),
            to: Resolved::Ok(to),
            sdp: sdp("caller"),
        });
        let conn = self.m.call_of_leg(a).expect("a call");
        let b = placed(&out).first().expect("a leg placed").0;
        (a, conn, b, out)
    }

    /// An inbound call from the carrier to `dn`, answered.
    fn established_inbound(&mut self, dn: &str) -> (LegId, ConnId, LegId) {
        let (a, conn, b, _) = self.incoming(1, CARRIER, false, Dest::Dn(dn.into()));
        self.step(Input::Ringing { leg: b });
        self.step(Input::Answered {
            leg: b,
            sdp: sdp(dn),
        });
        (a, conn, b)
    }
}

fn events(out: &[Action]) -> Vec<Seen> {
    out.iter()
        .filter_map(|a| match a {
            Action::Publish { event, .. } => Some(event),
            _ => None,
        })
        .map(|e| match e.call() {
            Some(c) => Seen {
                name: e.name(),
                this: c.this_dn.clone(),
                other: c.other_dn.clone(),
                roles: (c.this_role, c.other_role),
            },
            None => Seen {
                name: e.name(),
                this: e.this_dn().unwrap_or("").into(),
                other: None,
                roles: (None, None),
            },
        })
        .collect()
}

fn names(out: &[Action]) -> Vec<(&'static str, String)> {
    events(out).into_iter().map(|s| (s.name, s.this)).collect()
}

fn event_list(out: &[Action]) -> Vec<&Event> {
    out.iter()
        .filter_map(|a| match a {
            Action::Publish { event, .. } => Some(event),
            _ => None,
        })
        .collect()
}

fn placed(out: &[Action]) -> Vec<(LegId, Dest, Option<Bytes>, bool)> {
    out.iter()
        .filter_map(|a| match a {
            Action::PlaceLeg {
                leg,
                dest,
                sdp,
                auto_answer,
                ..
            } => Some((*leg, dest.clone(), sdp.clone(), *auto_answer)),
            _ => None,
        })
        .collect()
}

fn has(out: &[Action], a: &Action) -> bool {
    out.contains(a)
}

fn error_of(out: &[Action]) -> (String, u64, String) {
    let e = event_list(out)
        .into_iter()
        .find_map(|e| match e {
            Event::EventError(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no EventError in {out:?}"));
    (e.error_code, e.request_id, e.reason)
}

#[test]
fn inbound_call_from_a_trunk_to_a_dn() {
    let mut s = Sim::new();
    let (a, conn, b, out) = s.incoming(1, CARRIER, false, Dest::Dn("1001".into()));
    assert_eq!(conn.0 >> 48, 7, "the node number is in the ConnId");
    assert!(has(
        &out,
        &Action::CallStarted {
            conn,
            tenant: T.into()
        }
    ));
    let p = placed(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1, Dest::Dn("1001".into()));
    assert_eq!(p[0].2, sdp("caller"), "the caller's offer is relayed");
    assert!(!p[0].3, "no auto-answer for an inbound call");
    assert!(has(&out, &Action::StartRingTimer { leg: b, ms: 20_000 }));
    // The carrier is no DN: only 1001 gets events.
    assert_eq!(
        events(&out),
        vec![seen("EventRinging", "1001", CARRIER, (D, O))]
    );
    let ringing = event_list(&out)[0].call().unwrap().clone();
    assert_eq!(ringing.conn_id, Some(conn));
    assert_eq!(ringing.call_type, Some(CallType::Inbound));
    assert_eq!(ringing.tenant, T);

    let out = s.step(Input::Ringing { leg: b });
    assert_eq!(
        out,
        vec![Action::Ring { leg: a }],
        "180 relayed to the caller"
    );

    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1001"),
    });
    assert!(has(&out, &Action::CancelRingTimer { leg: b }));
    assert!(
        has(
            &out,
            &Action::Answer {
                leg: a,
                sdp: sdp("1001")
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        events(&out),
        vec![seen("EventEstablished", "1001", CARRIER, (D, O))]
    );

    // The carrier hangs up.
    let out = s.step(Input::HungUp { leg: a });
    assert!(has(&out, &Action::Hangup { leg: b }));
    assert!(has(&out, &Action::CallEnded { conn }));
    assert_eq!(
        events(&out),
        vec![seen("EventReleased", "1001", CARRIER, (D, O))]
    );
    assert!(s.m.is_empty());
    assert_eq!(s.m.call_of_leg(a), None);
}

#[test]
fn internal_call_dn_to_dn_released_by_the_callee() {
    let mut s = Sim::new();
    let (a, conn, b, out) = s.incoming(1, "1001", true, Dest::Dn("1002".into()));
    assert_eq!(
        events(&out),
        vec![
            seen("EventDialing", "1001", "1002", (O, D)),
            seen("EventRinging", "1002", "1001", (D, O)),
        ]
    );
    assert_eq!(
        event_list(&out)[0].call().unwrap().call_type,
        Some(CallType::Internal)
    );
    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1002"),
    });
    assert_eq!(
        events(&out),
        vec![
            seen("EventEstablished", "1002", "1001", (D, O)),
            seen("EventEstablished", "1001", "1002", (O, D)),
        ]
    );
    let out = s.step(Input::HungUp { leg: b });
    assert_eq!(
        events(&out),
        vec![
            seen("EventReleased", "1002", "1001", (D, O)),
            seen("EventReleased", "1001", "1002", (O, D)),
        ]
    );
    assert!(has(&out, &Action::Hangup { leg: a }), "BYE to the caller");
    assert!(has(&out, &Action::CallEnded { conn }));
    assert!(s.m.is_empty());
}

#[test]
fn busy_callee_gives_the_caller_486() {
    let mut s = Sim::new();
    let (a, conn, b, _) = s.incoming(1, "1001", true, Dest::Dn("1002".into()));
    let out = s.step(Input::Failed { leg: b, code: 486 });
    assert!(has(&out, &Action::Reject { leg: a, code: 486 }), "{out:?}");
    assert_eq!(
        names(&out),
        vec![
            ("EventReleased", "1002".into()),
            ("EventReleased", "1001".into())
        ]
    );
    let reason = event_list(&out)[0].call().unwrap().reason.clone();
    assert_eq!(reason.as_deref(), Some("sip 486"));
    assert!(has(&out, &Action::CallEnded { conn }));
    assert!(
        !out.iter()
            .any(|x| matches!(x, Action::Hangup { leg } if *leg == a)),
        "rejected, not hung up"
    );
    assert!(s.m.is_empty());
}

#[test]
fn ring_no_answer_times_out_with_480_to_the_caller() {
    let mut s = Sim::new();
    let (a, conn, b, _) = s.incoming(1, CARRIER, false, Dest::Dn("1002".into()));
    s.step(Input::Ringing { leg: b });
    let out = s.step(Input::RingTimeout { leg: b });
    assert!(
        has(&out, &Action::Hangup { leg: b }),
        "the ringing leg is cancelled"
    );
    assert!(has(&out, &Action::Reject { leg: a, code: 480 }), "{out:?}");
    assert_eq!(names(&out), vec![("EventReleased", "1002".into())]);
    assert!(has(&out, &Action::CallEnded { conn }));
    // A late timer for a gone leg does nothing.
    assert!(s.step(Input::RingTimeout { leg: b }).is_empty());
}

#[test]
fn ring_timeout_after_answer_is_ignored() {
    let mut s = Sim::new();
    let (_, _, b) = s.established_inbound("1001");
    assert!(s.step(Input::RingTimeout { leg: b }).is_empty());
    assert_eq!(s.m.len(), 1);
}

#[test]
fn invalid_destination_is_rejected_without_a_call() {
    let mut s = Sim::new();
    let a = LegId::incoming(1);
    let out = s.step(Input::Incoming {
        leg: a,
        tenant: T.into(),
        caller: CARRIER.into(),
        caller_internal: false,
        dialed: "9".into(),
        to: Resolved::Invalid("9 is not a DN".into()),
        sdp: None,
    });
    assert_eq!(out, vec![Action::Reject { leg: a, code: 404 }]);
    assert!(s.m.is_empty());
}

#[test]
fn hold_and_retrieve() {
    let mut s = Sim::new();
    let (a, conn, _) = s.established_inbound("1001");
    let (id, out) = s.request(Request::Hold {
        conn,
        dn: "1001".into(),
    });
    assert_eq!(
        out,
        vec![Action::Reoffer {
            leg: a,
            sdp: None,
            direction: Direction::SendOnly
        }],
        "the carrier gets a sendonly re-INVITE; no event before its answer"
    );
    // A second media change while the first is pending is refused.
    let (id2, out) = s.request(Request::Retrieve {
        conn,
        dn: "1001".into(),
    });
    assert_eq!(error_of(&out).0, codes::BAD_STATE);
    assert_eq!(error_of(&out).1, id2);
    let out = s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: sdp("carrier held"),
    });
    assert_eq!(
        events(&out),
        vec![seen("EventHeld", "1001", CARRIER, (D, O))]
    );
    assert_eq!(event_list(&out)[0].call().unwrap().request_id, Some(id));
    assert_eq!(s.m.call(conn).unwrap().parties[1].state, PartyState::Held);
    // Holding again is a state error.
    let (_, out) = s.request(Request::Hold {
        conn,
        dn: "1001".into(),
    });
    assert_eq!(error_of(&out).0, codes::BAD_STATE);

    let (id, out) = s.request(Request::Retrieve {
        conn,
        dn: "1001".into(),
    });
    assert_eq!(
        out,
        vec![Action::Reoffer {
            leg: a,
            sdp: None,
            direction: Direction::SendRecv
        }]
    );
    let out = s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: None,
    });
    assert_eq!(
        events(&out),
        vec![seen("EventRetrieved", "1001", CARRIER, (D, O))]
    );
    assert_eq!(event_list(&out)[0].call().unwrap().request_id, Some(id));
}

#[test]
fn hold_refused_by_the_other_device_is_an_error_event() {
    let mut s = Sim::new();
    let (a, conn, _) = s.established_inbound("1001");
    let (id, _) = s.request(Request::Hold {
        conn,
        dn: "1001".into(),
    });
    let out = s.step(Input::ReofferDone {
        leg: a,
        ok: false,
        sdp: None,
    });
    let (code, req, _) = error_of(&out);
    assert_eq!((code.as_str(), req), (codes::REFUSED, id));
    assert_eq!(
        s.m.call(conn).unwrap().parties[1].state,
        PartyState::Established
    );
}

#[test]
fn single_step_transfer_to_another_dn() {
    let mut s = Sim::new();
    let (a, conn, b) = s.established_inbound("1001");
    let (id, out) = s.request(Request::SingleStepTransfer {
        conn,
        dn: "1001".into(),
        to: Resolved::Ok(Dest::Dn("1002".into())),
    });
    assert!(
        has(&out, &Action::Hangup { leg: b }),
        "1001 leaves: BYE to its phone"
    );
    let p = placed(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].1, Dest::Dn("1002".into()));
    assert_eq!(p[0].2, sdp("caller"), "1002 gets the caller's media");
    let c = p[0].0;
    let ev = event_list(&out);
    assert_eq!(
        names(&out),
        vec![
            ("EventReleased", "1001".into()),
            ("EventRinging", "1002".into())
        ]
    );
    let rel = ev[0].call().unwrap();
    assert_eq!(rel.this_role, Some(PartyRole::TransferredBy));
    assert_eq!(rel.request_id, Some(id));
    assert_eq!(rel.third_party_dn.as_deref(), Some("1002"));
    let ring = ev[1].call().unwrap();
    assert_eq!(
        (ring.other_dn.as_deref(), ring.third_party_dn.as_deref()),
        (Some(CARRIER), Some("1001"))
    );
    assert_eq!(ring.conn_id, Some(conn), "the same call");

    let out = s.step(Input::Answered {
        leg: c,
        sdp: sdp("1002"),
    });
    assert!(
        has(
            &out,
            &Action::Reoffer {
                leg: a,
                sdp: sdp("1002"),
                direction: Direction::SendRecv
            }
        ),
        "the carrier is re-INVITEd with 1002's media: {out:?}"
    );
    assert_eq!(
        events(&out),
        vec![seen("EventEstablished", "1002", CARRIER, (D, O))]
    );
    // The media re-bridge confirms without an event.
    assert!(events(&s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: sdp("c2")
    }))
    .is_empty());
    let out = s.step(Input::HungUp { leg: a });
    assert_eq!(names(&out), vec![("EventReleased", "1002".into())]);
    assert!(s.m.is_empty());
}

#[test]
fn single_step_transfer_to_the_transferring_dn_or_nowhere_is_refused() {
    let mut s = Sim::new();
    let (_, conn, _) = s.established_inbound("1001");
    for to in [
        Resolved::Ok(Dest::Dn("1001".into())),
        Resolved::Invalid("12 is not a DN".into()),
    ] {
        let (id, out) = s.request(Request::SingleStepTransfer {
            conn,
            dn: "1001".into(),
            to,
        });
        let (code, req, _) = error_of(&out);
        assert_eq!((code.as_str(), req), (codes::INVALID_DESTINATION, id));
        assert!(placed(&out).is_empty());
    }
    assert_eq!(s.m.call(conn).unwrap().parties.len(), 2);
}

#[test]
fn consult_then_complete_transfer() {
    let mut s = Sim::new();
    let (a, conn, b) = s.established_inbound("1001");
    s.request(Request::AttachUserData {
        conn,
        dn: "1001".into(),
        data: [("case".to_string(), serde_json::json!("42"))]
            .into_iter()
            .collect(),
    });
    let (id, out) = s.request(Request::InitiateTransfer {
        conn,
        dn: "1001".into(),
        to: Resolved::Ok(Dest::Dn("1002".into())),
    });
    assert!(has(
        &out,
        &Action::Reoffer {
            leg: a,
            sdp: None,
            direction: Direction::SendOnly
        }
    ));
    let p = placed(&out);
    assert_eq!(p.len(), 1, "first 1001's own phone, with auto-answer");
    assert_eq!(
        (p[0].1.clone(), p[0].2.clone(), p[0].3),
        (Dest::Dn("1001".into()), None, true)
    );
    let a2 = p[0].0;
    let consult = s.m.call_of_leg(a2).unwrap();
    assert_ne!(consult, conn);
    let dialing = event_list(&out)[0].call().unwrap().clone();
    assert_eq!(dialing.call_type, Some(CallType::Consult));
    assert_eq!(dialing.request_id, Some(id));
    assert_eq!(
        dialing.user_data.get("case"),
        Some(&serde_json::json!("42")),
        "user data travels"
    );
    assert_eq!(names(&out), vec![("EventDialing", "1001".into())]);

    let out = s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: None,
    });
    assert_eq!(
        events(&out),
        vec![seen("EventHeld", "1001", CARRIER, (D, O))]
    );

    // 1001's phone answers the consult leg with its offer; 1002 is called with it.
    let out = s.step(Input::Answered {
        leg: a2,
        sdp: sdp("1001 consult"),
    });
    let p = placed(&out);
    assert_eq!(
        (p[0].1.clone(), p[0].2.clone()),
        (Dest::Dn("1002".into()), sdp("1001 consult"))
    );
    let b2 = p[0].0;
    assert_eq!(
        events(&out),
        vec![seen("EventRinging", "1002", "1001", (D, O))]
    );
    let out = s.step(Input::Answered {
        leg: b2,
        sdp: sdp("1002"),
    });
    assert!(has(
        &out,
        &Action::Reoffer {
            leg: a2,
            sdp: sdp("1002"),
            direction: Direction::SendRecv
        }
    ));
    assert_eq!(
        events(&out),
        vec![
            seen("EventEstablished", "1002", "1001", (D, O)),
            seen("EventEstablished", "1001", "1002", (O, D)),
        ]
    );

    let (id, out) = s.request(Request::CompleteTransfer {
        conn,
        dn: "1001".into(),
    });
    assert!(has(&out, &Action::Hangup { leg: a2 }) && has(&out, &Action::Hangup { leg: b }));
    assert!(has(&out, &Action::CallEnded { conn: consult }));
    assert!(has(
        &out,
        &Action::Reoffer {
            leg: a,
            sdp: sdp("1002"),
            direction: Direction::SendRecv
        }
    ));
    assert!(has(
        &out,
        &Action::Reoffer {
            leg: b2,
            sdp: sdp("caller"),
            direction: Direction::SendRecv
        }
    ));
    assert_eq!(
        names(&out),
        vec![
            ("EventReleased", "1001".into()),
            ("EventReleased", "1001".into()),
            ("EventPartyChanged", "1002".into()),
        ]
    );
    let ev = event_list(&out);
    assert_eq!(ev[0].call().unwrap().conn_id, Some(consult));
    assert_eq!(ev[1].call().unwrap().conn_id, Some(conn));
    assert_eq!(ev[1].call().unwrap().request_id, Some(id));
    let changed = ev[2].call().unwrap();
    assert_eq!(changed.conn_id, Some(conn));
    assert_eq!(changed.previous_conn_id, Some(consult));
    assert_eq!(changed.other_dn.as_deref(), Some(CARRIER));
    assert_eq!(changed.third_party_dn.as_deref(), Some("1001"));
    assert_eq!(s.m.len(), 1);
    let call = s.m.call(conn).unwrap();
    let dns: Vec<_> = call
        .parties
        .iter()
        .map(|p| (p.dn.as_str(), p.state))
        .collect();
    assert_eq!(
        dns,
        vec![
            (CARRIER, PartyState::Established),
            ("1002", PartyState::Established)
        ]
    );

    // The carrier and 1002 talk; the carrier hangs up.
    s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: None,
    });
    s.step(Input::ReofferDone {
        leg: b2,
        ok: true,
        sdp: None,
    });
    let out = s.step(Input::HungUp { leg: a });
    assert!(has(&out, &Action::Hangup { leg: b2 }));
    assert_eq!(
        events(&out),
        vec![seen("EventReleased", "1002", CARRIER, (D, O))]
    );
    assert!(s.m.is_empty());
}

#[test]
fn complete_without_consult_is_an_error() {
    let mut s = Sim::new();
    let (_, conn, _) = s.established_inbound("1001");
    let (id, out) = s.request(Request::CompleteTransfer {
        conn,
        dn: "1001".into(),
    });
    assert_eq!(
        error_of(&out),
        (
            codes::BAD_STATE.into(),
            id,
            "no consult call to complete".into()
        )
    );
}

#[test]
fn make_call_rings_the_origin_first_then_the_destination() {
    let mut s = Sim::new();
    let (id, out) = s.request(Request::MakeCall {
        dn: "1001".into(),
        to: Resolved::Ok(Dest::Dn("1002".into())),
    });
    let p = placed(&out);
    assert_eq!(
        (p[0].1.clone(), p[0].2.clone(), p[0].3),
        (Dest::Dn("1001".into()), None, true)
    );
    let a = p[0].0;
    assert_eq!(
        events(&out),
        vec![seen("EventDialing", "1001", "1002", (O, D))]
    );
    assert_eq!(event_list(&out)[0].call().unwrap().request_id, Some(id));
    let out = s.step(Input::Answered {
        leg: a,
        sdp: sdp("1001"),
    });
    let p = placed(&out);
    assert_eq!(
        (p[0].1.clone(), p[0].2.clone(), p[0].3),
        (Dest::Dn("1002".into()), sdp("1001"), false)
    );
    let b = p[0].0;
    assert_eq!(
        events(&out),
        vec![seen("EventRinging", "1002", "1001", (D, O))]
    );
    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("1002"),
    });
    assert!(has(
        &out,
        &Action::Reoffer {
            leg: a,
            sdp: sdp("1002"),
            direction: Direction::SendRecv
        }
    ));
    assert_eq!(
        names(&out),
        vec![
            ("EventEstablished", "1002".into()),
            ("EventEstablished", "1001".into())
        ]
    );
}

#[test]
fn make_call_whose_origin_never_answers_releases_only_the_origin() {
    let mut s = Sim::new();
    let (_, out) = s.request(Request::MakeCall {
        dn: "1001".into(),
        to: Resolved::Ok(Dest::Dn("1002".into())),
    });
    let a = placed(&out)[0].0;
    let out = s.step(Input::RingTimeout { leg: a });
    assert_eq!(
        names(&out),
        vec![("EventReleased", "1001".into())],
        "1002 never rang: {out:?}"
    );
    assert!(!out.iter().any(|x| matches!(x, Action::Reject { .. })));
    assert_eq!(
        out.iter()
            .filter(|x| matches!(x, Action::Hangup { .. }))
            .count(),
        1
    );
    assert!(s.m.is_empty());
}

#[test]
fn make_call_to_an_invalid_number_is_an_error() {
    let mut s = Sim::new();
    let (id, out) = s.request(Request::MakeCall {
        dn: "1001".into(),
        to: Resolved::Invalid("\"x\" is not a DN".into()),
    });
    assert_eq!(error_of(&out).0, codes::INVALID_DESTINATION);
    assert_eq!(error_of(&out).1, id);
    assert!(s.m.is_empty());
}

#[test]
fn attach_update_and_delete_user_data() {
    let mut s = Sim::new();
    let (_, conn, _) = s.established_inbound("1001");
    let data = |k: &str, v: i64| -> switchboard_events::UserData {
        [(k.to_string(), serde_json::json!(v))]
            .into_iter()
            .collect()
    };
    let ud = |out: &[Action]| event_list(out)[0].call().unwrap().user_data.clone();
    let (id, out) = s.request(Request::AttachUserData {
        conn,
        dn: "1001".into(),
        data: data("a", 1),
    });
    assert_eq!(
        names(&out),
        vec![("EventAttachedDataChanged", "1001".into())]
    );
    assert_eq!(event_list(&out)[0].call().unwrap().request_id, Some(id));
    assert_eq!(
        serde_json::Value::Object(ud(&out)),
        serde_json::json!({"a": 1})
    );
    let (_, out) = s.request(Request::UpdateUserData {
        conn,
        dn: "1001".into(),
        data: data("a", 2),
    });
    assert_eq!(
        serde_json::Value::Object(ud(&out)),
        serde_json::json!({"a": 2})
    );
    let (_, out) = s.request(Request::AttachUserData {
        conn,
        dn: "1001".into(),
        data: data("b", 3),
    });
    assert_eq!(
        serde_json::Value::Object(ud(&out)),
        serde_json::json!({"a": 2, "b": 3})
    );
    let (_, out) = s.request(Request::DeleteUserData {
        conn,
        dn: "1001".into(),
        keys: vec!["a".into()],
    });
    assert_eq!(
        serde_json::Value::Object(ud(&out)),
        serde_json::json!({"b": 3})
    );
    let (_, out) = s.request(Request::DeleteUserData {
        conn,
        dn: "1001".into(),
        keys: vec![],
    });
    assert!(ud(&out).is_empty());
    let (_, out) = s.request(Request::AttachUserData {
        conn,
        dn: "1001".into(),
        data: Default::default(),
    });
    assert_eq!(error_of(&out).0, codes::BAD_ARGUMENT);
    // Later events carry the data.
    s.request(Request::AttachUserData {
        conn,
        dn: "1001".into(),
        data: data("c", 4),
    });
    let out = s.step(Input::HungUp {
        leg: LegId::incoming(1),
    });
    assert_eq!(
        serde_json::Value::Object(ud(&out)),
        serde_json::json!({"c": 4})
    );
}

#[test]
fn requests_on_unknown_calls_parties_or_tenants_are_error_events() {
    let mut s = Sim::new();
    let (_, conn, _) = s.established_inbound("1001");
    let (id, out) = s.request(Request::Release {
        conn: ConnId(0xdead),
        dn: "1001".into(),
    });
    assert_eq!(
        error_of(&out),
        (codes::NO_SUCH_CALL.into(), id, "no such call".into())
    );
    let Event::EventError(e) = event_list(&out)[0] else {
        unreachable!()
    };
    assert_eq!(
        (e.tenant.as_str(), e.this_dn.as_deref(), e.conn_id),
        (T, Some("1001"), Some(ConnId(0xdead)))
    );
    let (_, out) = s.request(Request::Hold {
        conn,
        dn: "1005".into(),
    });
    assert_eq!(error_of(&out).0, codes::NO_SUCH_PARTY);
    // Another tenant does not see the call.
    let mut out = Vec::new();
    s.m.handle(
        Input::Request {
            id: 99,
            tenant: "other".into(),
            req: Request::Release {
                conn,
                dn: "1001".into(),
            },
        },
        5,
        &mut out,
    );
    assert_eq!(error_of(&out).0, codes::NO_SUCH_CALL);
    assert_eq!(s.m.len(), 1, "nothing changed");
    let (_, out) = s.request(Request::SendDtmf {
        conn,
        dn: "1001".into(),
        digits: "12x".into(),
    });
    assert_eq!(error_of(&out).0, codes::BAD_ARGUMENT);
    let (_, out) = s.request(Request::Answer {
        conn,
        dn: "1001".into(),
    });
    assert_eq!(error_of(&out).0, codes::BAD_STATE);
}

#[test]
fn release_request_and_dtmf() {
    let mut s = Sim::new();
    let (a, conn, b) = s.established_inbound("1001");
    let (_, out) = s.request(Request::SendDtmf {
        conn,
        dn: "1001".into(),
        digits: "12#".into(),
    });
    assert_eq!(
        out,
        vec![Action::SendDtmf {
            leg: a,
            digits: "12#".into()
        }],
        "to the other party"
    );
    let (id, out) = s.request(Request::Release {
        conn,
        dn: "1001".into(),
    });
    assert!(has(&out, &Action::Hangup { leg: b }) && has(&out, &Action::Hangup { leg: a }));
    assert_eq!(
        events(&out),
        vec![seen("EventReleased", "1001", CARRIER, (D, O))]
    );
    assert_eq!(event_list(&out)[0].call().unwrap().request_id, Some(id));
    assert!(has(&out, &Action::CallEnded { conn }));
    assert!(s.m.is_empty());
}

#[test]
fn answer_request_asks_the_ringing_phone_to_answer() {
    let mut s = Sim::new();
    let (_, conn, b, _) = s.incoming(1, CARRIER, false, Dest::Dn("1001".into()));
    let (_, out) = s.request(Request::Answer {
        conn,
        dn: "1001".into(),
    });
    assert_eq!(out, vec![Action::AnswerRemote { leg: b }]);
}

#[test]
fn outbound_call_to_an_external_number() {
    let mut s = Sim::new();
    let (_, _, b, out) = s.incoming(1, "1001", true, Dest::External("+15550001111".into()));
    assert_eq!(placed(&out)[0].1, Dest::External("+15550001111".into()));
    assert_eq!(
        event_list(&out)[0].call().unwrap().call_type,
        Some(CallType::Outbound)
    );
    assert_eq!(
        names(&out),
        vec![("EventDialing", "1001".into())],
        "no events for the external party"
    );
    let out = s.step(Input::Answered {
        leg: b,
        sdp: sdp("far"),
    });
    assert_eq!(names(&out), vec![("EventEstablished", "1001".into())]);
}

#[test]
fn caller_abandons_while_the_dn_rings() {
    let mut s = Sim::new();
    let (a, conn, b, _) = s.incoming(1, "1001", true, Dest::Dn("1002".into()));
    s.step(Input::Ringing { leg: b });
    let out = s.step(Input::HungUp { leg: a });
    assert!(
        has(&out, &Action::Hangup { leg: b }),
        "the ringing leg is cancelled"
    );
    assert!(has(&out, &Action::CancelRingTimer { leg: b }));
    assert_eq!(
        events(&out),
        vec![
            seen("EventReleased", "1001", "1002", (O, D)),
            seen("EventReleased", "1002", "1001", (D, O)),
        ]
    );
    assert!(has(&out, &Action::CallEnded { conn }));
    assert!(s.m.is_empty());
}

#[test]
fn release_of_a_held_call_and_a_late_reinvite_answer() {
    let mut s = Sim::new();
    let (a, conn, _) = s.established_inbound("1001");
    s.request(Request::Hold {
        conn,
        dn: "1001".into(),
    });
    let (_, out) = s.request(Request::Release {
        conn,
        dn: "1001".into(),
    });
    assert!(has(&out, &Action::CallEnded { conn }));
    // The carrier's answer to the hold re-INVITE arrives after the call ended: nothing.
    assert!(s
        .step(Input::ReofferDone {
            leg: a,
            ok: true,
            sdp: None
        })
        .is_empty());
    assert!(s.m.is_empty());
}

#[test]
fn a_phone_hold_is_relayed_and_reported() {
    let mut s = Sim::new();
    let (a, conn, b) = s.established_inbound("1001");
    let held = Bytes::from_static(b"v=0\r\nm=audio 5000 RTP/AVP 0\r\na=sendonly\r\n");
    let out = s.step(Input::DeviceReoffer {
        leg: b,
        sdp: held.clone(),
    });
    assert_eq!(
        out,
        vec![Action::Reoffer {
            leg: a,
            sdp: Some(held.clone()),
            direction: Direction::SendOnly
        }]
    );
    // A second offer from either side while the first is out: 491.
    let out = s.step(Input::DeviceReoffer { leg: a, sdp: held });
    assert_eq!(
        out,
        vec![Action::AnswerReoffer {
            leg: a,
            code: 491,
            sdp: None
        }]
    );
    let out = s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: sdp("carrier recvonly"),
    });
    assert!(has(
        &out,
        &Action::AnswerReoffer {
            leg: b,
            code: 200,
            sdp: sdp("carrier recvonly")
        }
    ));
    assert_eq!(
        events(&out),
        vec![seen("EventHeld", "1001", CARRIER, (D, O))]
    );
    assert_eq!(s.m.call(conn).unwrap().parties[1].state, PartyState::Held);
    // Retrieve from the phone.
    let back = Bytes::from_static(b"v=0\r\nm=audio 5000 RTP/AVP 0\r\na=sendrecv\r\n");
    s.step(Input::DeviceReoffer { leg: b, sdp: back });
    let out = s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: sdp("carrier"),
    });
    assert_eq!(
        events(&out),
        vec![seen("EventRetrieved", "1001", CARRIER, (D, O))]
    );
    // Refused by the other side: the phone gets 488 and the state stays.
    s.step(Input::DeviceReoffer {
        leg: b,
        sdp: Bytes::from_static(b"v=0\r\na=inactive\r\n"),
    });
    let out = s.step(Input::ReofferDone {
        leg: a,
        ok: false,
        sdp: None,
    });
    assert_eq!(
        out,
        vec![Action::AnswerReoffer {
            leg: b,
            code: 488,
            sdp: None
        }]
    );
    assert_eq!(
        s.m.call(conn).unwrap().parties[1].state,
        PartyState::Established
    );
}

#[test]
fn a_re_invite_before_the_other_party_answered_is_answered_locally() {
    let mut s = Sim::new();
    let (a, _, _, _) = s.incoming(1, CARRIER, false, Dest::Dn("1001".into()));
    let out = s.step(Input::DeviceReoffer {
        leg: a,
        sdp: Bytes::from_static(b"v=0\r\n"),
    });
    assert_eq!(
        out,
        vec![Action::AnswerReoffer {
            leg: a,
            code: 200,
            sdp: None
        }]
    );
}

#[test]
fn a_transfer_after_hold_offers_the_callers_full_media() {
    let mut s = Sim::new();
    let (a, conn, _) = s.established_inbound("1001");
    s.request(Request::Hold {
        conn,
        dn: "1001".into(),
    });
    s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: sdp("carrier recvonly"),
    });
    let (_, out) = s.request(Request::SingleStepTransfer {
        conn,
        dn: "1001".into(),
        to: Resolved::Ok(Dest::Dn("1002".into())),
    });
    assert_eq!(placed(&out)[0].2, sdp("caller"), "not the hold answer");
}

#[test]
fn calls_on_a_named_trunk_keep_their_trunk() {
    let mut s = Sim::new();
    let trunk = Dest::Trunk {
        number: "+12125551234".into(),
        trunk: "sbc".into(),
    };
    let (_, conn, _, out) = s.incoming(1, "1001", true, trunk.clone());
    assert_eq!(placed(&out)[0].1, trunk);
    assert_eq!(
        event_list(&out)[0].call().unwrap().call_type,
        Some(CallType::Outbound)
    );
    let party = &s.m.call(conn).unwrap().parties[1];
    assert_eq!(
        (party.internal, party.trunk.as_deref()),
        (false, Some("sbc"))
    );

    // A transfer of an inbound call to a number on a named trunk places the leg there.
    let mut s = Sim::new();
    let (_, conn, _) = s.established_inbound("1002");
    let (_, out) = s.request(Request::SingleStepTransfer {
        conn,
        dn: "1002".into(),
        to: Resolved::Ok(trunk.clone()),
    });
    let p = placed(&out);
    assert_eq!(p.len(), 1, "{out:?}");
    assert_eq!(p[0].1, trunk);
    // And a MakeCall to it rings the origin first, then calls out on the trunk.
    let mut s = Sim::new();
    let (_, out) = s.request(Request::MakeCall {
        dn: "1001".into(),
        to: Resolved::Ok(trunk.clone()),
    });
    let origin = placed(&out)[0].0;
    let out = s.step(Input::Answered {
        leg: origin,
        sdp: sdp("1001"),
    });
    assert_eq!(placed(&out)[0].1, trunk, "{out:?}");
}

// ---- conferences ----

use PartyRole::{AddedBy, ConferenceMember, DeletedBy, NewParty};

/// The legs to the mixer the actions place: (media leg, party's DN, SDP offered).
fn mixer_legs(out: &[Action], conn: ConnId) -> Vec<(LegId, String, Bytes)> {
    out.iter()
        .filter_map(|a| match a {
            Action::PlaceMediaLeg {
                leg,
                service,
                from,
                sdp,
                ..
            } => {
                assert_eq!(service.user, format!("conf={conn}"));
                assert_eq!(service.params, "");
                Some((*leg, from.clone(), sdp.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The mixer answers every leg: each party is re-offered the mixer's SDP for its own leg.
fn mixer_answers(s: &mut Sim, legs: &[(LegId, String, Bytes)], party_leg: impl Fn(&str) -> LegId) {
    for (media, dn, _) in legs {
        let mix = sdp(&format!("mixer for {dn}"));
        let out = s.step(Input::Answered {
            leg: *media,
            sdp: mix.clone(),
        });
        let leg = party_leg(dn);
        assert_eq!(
            out,
            vec![Action::Reoffer {
                leg,
                sdp: mix,
                direction: Direction::SendRecv
            }],
            "{dn}"
        );
        s.step(Input::ReofferDone {
            leg,
            ok: true,
            sdp: sdp(&format!("{dn} again")),
        });
    }
}

fn party_added(out: &[Action]) -> Vec<&switchboard_events::CallAttrs> {
    event_list(out)
        .into_iter()
        .filter(|e| e.name() == "EventPartyAdded")
        .filter_map(Event::call)
        .collect()
}

/// The carrier calls 1001, which adds 1002 with SingleStepConference; 1002 answers and the
/// mixer answers all three. Returns the call, the legs (carrier, 1001, 1002) and the mixer's.
fn single_step_conference(s: &mut Sim) -> (ConnId, [LegId; 3], Vec<LegId>) {
    let (a, conn, b) = s.established_inbound("1001");
    let (id, out) = s.request(Request::SingleStepConference {
        conn,
        dn: "1001".into(),
        to: Resolved::Ok(Dest::Dn("1002".into())),
    });
    let p = placed(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].1.clone(), p[0].2.clone()),
        (Dest::Dn("1002".into()), sdp("1001"))
    );
    let c = p[0].0;
    assert_eq!(names(&out), vec![("EventRinging", "1002".into())]);
    let ringing = event_list(&out)[0].call().unwrap().clone();
    assert_eq!(
        (ringing.request_id, ringing.third_party_dn.as_deref()),
        (Some(id), Some("1001"))
    );
    let out = s.step(Input::Answered {
        leg: c,
        sdp: sdp("1002"),
    });
    assert_eq!(
        events(&out),
        vec![
            seen("EventEstablished", "1002", CARRIER, (ConferenceMember, O)),
            seen("EventPartyAdded", "1001", "1002", (AddedBy, NewParty)),
            seen("EventPartyAdded", "1002", "1001", (NewParty, AddedBy)),
        ]
    );
    for added in party_added(&out) {
        assert_eq!(added.third_party_dn.as_deref(), Some("1002"));
        assert_eq!(added.parties, vec![CARRIER, "1001", "1002"]);
        assert_eq!(added.request_id, Some(id));
        assert_eq!(added.conn_id, Some(conn));
    }
    assert!(
        !out.iter().any(|a| matches!(a, Action::Reoffer { .. })),
        "no two-party re-bridge"
    );
    let legs = mixer_legs(&out, conn);
    let offered: Vec<_> = legs
        .iter()
        .map(|(_, dn, sdp)| (dn.as_str(), Some(sdp.clone())))
        .collect();
    assert_eq!(
        offered,
        vec![
            (CARRIER, sdp("caller")),
            ("1001", sdp("1001")),
            ("1002", sdp("1002"))
        ],
        "each party's own media goes to its own mixer leg"
    );
    let by_dn = |dn: &str| match dn {
        CARRIER => a,
        "1001" => b,
        _ => c,
    };
    mixer_answers(s, &legs, by_dn);
    (conn, [a, b, c], legs.iter().map(|l| l.0).collect())
}

#[test]
fn single_step_conference_then_delete_from_conference() {
    let mut s = Sim::new();
    let (conn, [a, b, c], media) = single_step_conference(&mut s);
    assert_eq!(s.m.call(conn).unwrap().parties.len(), 3);

    // Two-party requests make no sense in a conference.
    let (id, out) = s.request(Request::Hold {
        conn,
        dn: "1001".into(),
    });
    assert_eq!(
        error_of(&out),
        (
            codes::BAD_STATE.into(),
            id,
            "not possible in a conference".into()
        )
    );

    let (id, out) = s.request(Request::DeleteFromConference {
        conn,
        dn: "1001".into(),
        party: "1002".into(),
    });
    assert!(has(&out, &Action::Hangup { leg: c }));
    assert!(
        has(&out, &Action::Hangup { leg: media[2] }),
        "1002's mixer leg goes too"
    );
    assert!(!has(&out, &Action::Hangup { leg: a }) && !has(&out, &Action::Hangup { leg: b }));
    assert_eq!(
        names(&out),
        vec![
            ("EventReleased", "1002".into()),
            ("EventPartyDeleted", "1001".into())
        ]
    );
    let ev = event_list(&out);
    let released = ev[0].call().unwrap();
    assert_eq!(
        (released.request_id, released.third_party_dn.as_deref()),
        (Some(id), Some("1001"))
    );
    let deleted = ev[1].call().unwrap();
    assert_eq!(deleted.third_party_dn.as_deref(), Some("1002"));
    assert_eq!(
        (deleted.other_dn.as_deref(), deleted.other_role),
        (Some("1001"), Some(DeletedBy))
    );
    assert_eq!(deleted.parties, vec![CARRIER, "1001"]);
    assert_eq!(
        s.m.call(conn).unwrap().parties.len(),
        2,
        "the two stay on the mixer"
    );

    let (id, out) = s.request(Request::DeleteFromConference {
        conn,
        dn: "1001".into(),
        party: "1002".into(),
    });
    assert_eq!(error_of(&out).0, codes::NO_SUCH_PARTY);
    assert_eq!(error_of(&out).1, id);

    // The carrier hangs up: the call ends, and with it the mixer's legs.
    let out = s.step(Input::HungUp { leg: a });
    assert!(has(&out, &Action::Hangup { leg: b }));
    assert!(
        has(&out, &Action::Hangup { leg: media[0] })
            && has(&out, &Action::Hangup { leg: media[1] })
    );
    assert_eq!(names(&out), vec![("EventReleased", "1001".into())]);
    assert!(has(&out, &Action::CallEnded { conn }));
    assert!(s.m.is_empty());
}

#[test]
fn a_party_that_leaves_a_conference_of_three_leaves_the_others_connected() {
    for who in [CARRIER, "1001", "1002"] {
        let mut s = Sim::new();
        let (conn, legs, media) = single_step_conference(&mut s);
        let k = [CARRIER, "1001", "1002"]
            .iter()
            .position(|d| *d == who)
            .unwrap();
        let out = if who == "1001" {
            s.request(Request::Release {
                conn,
                dn: who.into(),
            })
            .1
        } else {
            s.step(Input::HungUp { leg: legs[k] })
        };
        assert!(has(&out, &Action::Hangup { leg: media[k] }), "{who}");
        let stay: Vec<&str> = ["1001", "1002"].into_iter().filter(|d| *d != who).collect();
        let mut want: Vec<(&str, String)> = Vec::new();
        if who != CARRIER {
            want.push(("EventReleased", who.into()));
        }
        want.extend(stay.iter().map(|d| ("EventPartyDeleted", d.to_string())));
        assert_eq!(names(&out), want, "{who}");
        for e in event_list(&out)
            .iter()
            .filter(|e| e.name() == "EventPartyDeleted")
        {
            let d = e.call().unwrap();
            assert_eq!(
                (d.third_party_dn.as_deref(), d.other_role),
                (Some(who), None),
                "{who}"
            );
        }
        for (j, leg) in legs.iter().enumerate().filter(|(j, _)| *j != k) {
            assert!(
                !has(&out, &Action::Hangup { leg: *leg }),
                "{who}: party {j} stays"
            );
            assert!(
                !has(&out, &Action::Hangup { leg: media[j] }),
                "{who}: mixer leg {j} stays"
            );
        }
        let call = s.m.call(conn).expect("the call goes on");
        assert_eq!(call.parties.len(), 2);
        assert_eq!(call.conference.as_ref().unwrap().legs.len(), 2);
    }
}

#[test]
fn initiate_then_complete_conference() {
    let mut s = Sim::new();
    let (a, conn, b) = s.established_inbound("1001");
    let (init, out) = s.request(Request::InitiateConference {
        conn,
        dn: "1001".into(),
        to: Resolved::Ok(Dest::Dn("1002".into())),
    });
    assert!(has(
        &out,
        &Action::Reoffer {
            leg: a,
            sdp: None,
            direction: Direction::SendOnly
        }
    ));
    let a2 = placed(&out)[0].0;
    let consult = s.m.call_of_leg(a2).unwrap();
    assert_eq!(s.m.call(consult).unwrap().call_type, CallType::Consult);
    let out = s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: None,
    });
    assert_eq!(names(&out), vec![("EventHeld", "1001".into())]);
    let out = s.step(Input::Answered {
        leg: a2,
        sdp: sdp("1001 consult"),
    });
    let c = placed(&out)[0].0;
    s.step(Input::Answered {
        leg: c,
        sdp: sdp("1002"),
    });
    s.step(Input::ReofferDone {
        leg: a2,
        ok: true,
        sdp: None,
    });

    let (id, out) = s.request(Request::CompleteConference {
        conn: consult,
        dn: "1001".into(),
    });
    assert!(
        has(&out, &Action::Hangup { leg: a2 }),
        "1001's consult leg ends"
    );
    assert!(!has(&out, &Action::Hangup { leg: b }) && !has(&out, &Action::Hangup { leg: c }));
    assert!(has(&out, &Action::CallEnded { conn: consult }));
    assert_eq!(
        names(&out),
        vec![
            ("EventReleased", "1001".into()),
            ("EventRetrieved", "1001".into()),
            ("EventPartyChanged", "1002".into()),
            ("EventPartyAdded", "1001".into()),
            ("EventPartyAdded", "1002".into()),
        ]
    );
    let ev = event_list(&out);
    let conn_of = |i: usize| ev[i].call().unwrap().conn_id;
    assert_eq!(
        (0..5).map(conn_of).collect::<Vec<_>>(),
        vec![
            Some(consult),
            Some(conn),
            Some(conn),
            Some(conn),
            Some(conn)
        ]
    );
    assert_eq!(ev[1].call().unwrap().request_id, Some(id));
    let changed = ev[2].call().unwrap();
    assert_eq!(changed.previous_conn_id, Some(consult));
    for added in party_added(&out) {
        assert_eq!(added.third_party_dn.as_deref(), Some("1002"));
        assert_eq!(added.parties, vec![CARRIER, "1001", "1002"]);
    }
    assert_ne!(init, id);
    let legs = mixer_legs(&out, conn);
    let offered: Vec<_> = legs
        .iter()
        .map(|(_, dn, sdp)| (dn.as_str(), Some(sdp.clone())))
        .collect();
    assert_eq!(
        offered,
        vec![
            (CARRIER, sdp("caller")),
            ("1001", sdp("1001")),
            ("1002", sdp("1002"))
        ]
    );
    mixer_answers(&mut s, &legs, |dn| match dn {
        CARRIER => a,
        "1001" => b,
        _ => c,
    });
    let call = s.m.call(conn).unwrap();
    assert!(call
        .parties
        .iter()
        .all(|p| p.state == PartyState::Established));
    assert_eq!(s.m.len(), 1);

    // The party that made the conference leaves; the carrier and 1002 stay.
    let (_, out) = s.request(Request::Release {
        conn,
        dn: "1001".into(),
    });
    assert_eq!(
        names(&out),
        vec![
            ("EventReleased", "1001".into()),
            ("EventPartyDeleted", "1002".into())
        ]
    );
    assert_eq!(s.m.call(conn).unwrap().parties.len(), 2);
}

#[test]
fn a_busy_conference_party_leaves_the_call_as_it_was() {
    let mut s = Sim::new();
    let (a, conn, b) = s.established_inbound("1001");
    let (init, out) = s.request(Request::InitiateConference {
        conn,
        dn: "1001".into(),
        to: Resolved::Ok(Dest::Dn("1002".into())),
    });
    let a2 = placed(&out)[0].0;
    let consult = s.m.call_of_leg(a2).unwrap();
    s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: None,
    });
    let out = s.step(Input::Answered {
        leg: a2,
        sdp: sdp("1001 consult"),
    });
    let c = placed(&out)[0].0;
    let out = s.step(Input::Failed { leg: c, code: 486 });
    assert_eq!(
        names(&out),
        vec![
            ("EventReleased", "1002".into()),
            ("EventReleased", "1001".into())
        ]
    );
    assert!(has(&out, &Action::Hangup { leg: a2 }) && !has(&out, &Action::Hangup { leg: b }));
    assert!(has(&out, &Action::CallEnded { conn: consult }));
    assert!(
        has(
            &out,
            &Action::Reoffer {
                leg: a,
                sdp: None,
                direction: Direction::SendRecv
            }
        ),
        "the held carrier is taken back"
    );
    let out = s.step(Input::ReofferDone {
        leg: a,
        ok: true,
        sdp: None,
    });
    assert_eq!(
        events(&out),
        vec![seen("EventRetrieved", "1001", CARRIER, (D, O))]
    );
    assert_eq!(event_list(&out)[0].call().unwrap().request_id, Some(init));
    let call = s.m.call(conn).unwrap();
    assert_eq!(call.parties.len(), 2);
    assert!(call
        .parties
        .iter()
        .all(|p| p.state == PartyState::Established));
    assert!(call.conference.is_none());

    // The same with SingleStepConference: nothing was held, the adding DN learns why.
    let (id, out) = s.request(Request::SingleStepConference {
        conn,
        dn: "1001".into(),
        to: Resolved::Ok(Dest::Dn("1002".into())),
    });
    let c = placed(&out)[0].0;
    let out = s.step(Input::Failed { leg: c, code: 486 });
    assert_eq!(
        names(&out),
        vec![
            ("EventReleased", "1002".into()),
            ("EventError", "1001".into())
        ]
    );
    assert_eq!(error_of(&out).0, codes::REFUSED);
    assert_eq!(error_of(&out).1, id);
    assert!(!out
        .iter()
        .any(|a| matches!(a, Action::PlaceMediaLeg { .. } | Action::Hangup { .. })));
    let call = s.m.call(conn).unwrap();
    assert_eq!(call.parties.len(), 2);
    assert!(call.adding.is_none() && call.conference.is_none());
    // The two-party call works as before.
    let (_, out) = s.request(Request::Hold {
        conn,
        dn: "1001".into(),
    });
    assert!(has(
        &out,
        &Action::Reoffer {
            leg: a,
            sdp: None,
            direction: Direction::SendOnly
        }
    ));
}

#[test]
fn conference_requests_refused_in_the_wrong_state() {
    let mut s = Sim::new();
    let (_, conn, _) = s.established_inbound("1001");
    let (id, out) = s.request(Request::CompleteConference {
        conn,
        dn: "1001".into(),
    });
    assert_eq!(
        error_of(&out),
        (
            codes::BAD_STATE.into(),
            id,
            "no consult call to complete".into()
        )
    );
    let (_, out) = s.request(Request::DeleteFromConference {
        conn,
        dn: "1001".into(),
        party: CARRIER.into(),
    });
    assert_eq!(error_of(&out).2, "the call is not a conference");
    let (_, out) = s.request(Request::SingleStepConference {
        conn,
        dn: "1001".into(),
        to: Resolved::Ok(Dest::External(CARRIER.into())),
    });
    assert_eq!(
        error_of(&out).0,
        codes::INVALID_DESTINATION,
        "already a party"
    );
}
