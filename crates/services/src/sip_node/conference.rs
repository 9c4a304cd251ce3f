//! Conferences in the call model (TLib TInitiateConference, TCompleteConference,
//! TSingleStepConference, TDeleteFromConference), still a pure reducer.
//!
//! A B2BUA relays one SDP per pair of legs, which cannot carry three parties; so once a call
//! has a third party, every party's media moves to the media server's mixer: for each party a
//! leg `sip:conf={ConnID}@mcp` is offered that party's own SDP ([`Action::PlaceMediaLeg`], the
//! same mechanism as treatments), and the media server's answer is re-offered to the party
//! ([`Action::Reoffer`]). One media-server leg per party: the mixer sends each the others.
//!
//! A party that leaves (hang-up, Release, DeleteFromConference) takes its media-server leg
//! with it; the others get EventPartyDeleted and stay in the mixer while two remain.

use super::*;

/// What CompleteConference merges: the consulted party `target` of call `consult` joins call
/// `orig`, where the consulting DN is party `oi`.
struct Merge {
    orig: ConnId,
    consult: ConnId,
    oi: usize,
    target: Party,
}

impl Model {
    /// The call whose conference (media-server) leg `leg` is.
    pub(super) fn conf_call(&self, leg: LegId) -> Option<ConnId> {
        let conn = self.legs.get(&leg)?;
        let call = self.calls.get(conn)?;
        let conf = call.conference.as_ref()?;
        conf.legs.iter().any(|l| l.media == leg).then_some(*conn)
    }

    /// Whether a request may act on a call that is (or is becoming) a conference: the
    /// two-party requests (hold, transfer, DTMF to "the other party") have no meaning there.
    pub(super) fn allowed_in_conference(req: &Request) -> bool {
        matches!(
            req,
            Request::Answer { .. }
                | Request::Release { .. }
                | Request::AttachUserData { .. }
                | Request::UpdateUserData { .. }
                | Request::DeleteUserData { .. }
                | Request::SingleStepConference { .. }
                | Request::DeleteFromConference { .. }
        )
    }

    /// InitiateConference: the consult call of InitiateTransfer, remembered as a
    /// conference's so that its failure gives the held party back.
    pub(super) fn initiate_conference(&mut self, c: &ReqCtx, to: Resolved, out: &mut Out) {
        let key = Some((c.conn, c.dn.clone()));
        if self.calls.values().any(|x| x.consult_of == key) {
            return c.bad_state(out, "a consult call is already in progress");
        }
        self.consult(c, to, out);
        if let Some(cc) = self.calls.values_mut().find(|x| x.consult_of == key) {
            cc.conference_req = Some(c.id);
        }
    }

    /// CompleteConference, from either call: the consulting DN leaves the consult call, the
    /// consulted party moves into the original call (EventPartyChanged), the consulting DN
    /// takes its call back (EventRetrieved) and all three meet in the mixer.
    pub(super) fn complete_conference(
        &mut self,
        conn: ConnId,
        dn: &str,
        req: u64,
        now: u64,
        out: &mut Out,
    ) {
        let Merge {
            orig,
            consult,
            oi,
            target,
        } = match self.mergeable(conn, dn) {
            Ok(m) => m,
            Err((code, reason)) => {
                let tenant = self.calls[&conn].tenant.clone();
                return error(out, &tenant, Some(conn), dn, req, code, reason, now);
            }
        };
        self.end_consult(consult, dn, &target.dn, now, out);
        let Some(call) = self.calls.get_mut(&orig) else {
            return;
        };
        call.parties[oi].state = PartyState::Established;
        call.parties.push(Party {
            role: PartyRole::ConferenceMember,
            ..target.clone()
        });
        self.legs.insert(target.leg, orig);
        let call = &self.calls[&orig];
        ev(out, call, oi, Event::EventRetrieved, now, Some(req), None);
        if target.internal {
            let mut a = attrs(call, call.parties.len() - 1, now, None, None);
            a.previous_conn_id = Some(consult);
            a.third_party_dn = Some(dn.to_string());
            out.push(Action::Publish {
                event: Event::EventPartyChanged(a),
                leg: Some(target.leg),
            });
        }
        self.party_added(orig, &target.dn, dn, Some(req), now, out);
    }

    /// The checks of CompleteConference by `dn` on call `conn`: what merges, or the code and
    /// reason of the EventError.
    fn mergeable(&self, conn: ConnId, dn: &str) -> Result<Merge, (&'static str, &'static str)> {
        let Some((orig, consult)) = self.consult_pair(conn, dn) else {
            return Err((codes::BAD_STATE, "no consult call to complete"));
        };
        let (Some(oc), Some(cc)) = (self.calls.get(&orig), self.calls.get(&consult)) else {
            return Err((codes::NO_SUCH_CALL, "the other call has ended"));
        };
        let (Some(oi), Some(ci)) = (oc.party(dn), cc.party(dn)) else {
            return Err((codes::NO_SUCH_PARTY, "the DN left one of the calls"));
        };
        let Some(target) = cc.other(ci).map(|t| cc.parties[t].clone()) else {
            return Err((codes::BAD_STATE, "nobody to add"));
        };
        if target.state != PartyState::Established {
            return Err((codes::BAD_STATE, "the consulted party has not answered"));
        }
        if oc.party(&target.dn).is_some() {
            return Err((codes::BAD_STATE, "the consulted party is in the call"));
        }
        // Media changes still under way would cross the mixer's re-INVITEs.
        let ready = |p: &Party| {
            matches!(p.state, PartyState::Established | PartyState::Held)
                && !self.ops.contains_key(&p.leg)
        };
        if oc.parties.len() < 2 || !oc.parties.iter().all(ready) || !ready(&target) {
            return Err((codes::BAD_STATE, "another media change is in progress"));
        }
        Ok(Merge {
            orig,
            consult,
            oi,
            target,
        })
    }

    /// The consult call ends for CompleteConference: the consulting DN `dn` is released and
    /// hung up; the consulted party's leg stays up (it moves to the original call).
    fn end_consult(&mut self, consult: ConnId, dn: &str, target: &str, now: u64, out: &mut Out) {
        let Some(cc) = self.calls.remove(&consult) else {
            return;
        };
        if let Some(ci) = cc.party(dn) {
            ev_third(out, &cc, ci, Event::EventReleased, now, None, Some(target));
            let leg = cc.parties[ci].leg;
            out.push(Action::Hangup { leg });
            out.push(Action::CancelRingTimer { leg });
            self.legs.remove(&leg);
            self.ops.remove(&leg);
        }
        out.push(Action::CallEnded { conn: consult });
    }

    /// SingleStepConference: `to` rings (offered the adding DN's media until the mixer takes
    /// over) and joins the call when it answers.
    pub(super) fn single_step_conference(&mut self, c: &ReqCtx, to: Resolved, out: &mut Out) {
        let Some(dest) = c.destination(to, out) else {
            return;
        };
        let Some(call) = self.calls.get(&c.conn) else {
            return;
        };
        if call.adding.is_some() {
            return c.bad_state(out, "a party is already being added");
        }
        if call
            .parties
            .iter()
            .any(|p| p.state != PartyState::Established)
        {
            return c.bad_state(out, "every party must be established to add one");
        }
        if call.party(dest.number()).is_some() {
            return c.err(
                out,
                codes::INVALID_DESTINATION,
                "already a party of the call",
            );
        }
        let info = match &dest {
            Dest::Dn(dn) => self.dir.0.dn_info(&call.tenant, dn),
            _ => None,
        }
        .unwrap_or_default();
        if info.route_point.is_some() || info.queue.is_some() {
            return c.err(
                out,
                codes::INVALID_DESTINATION,
                "a route point or queue cannot join a conference",
            );
        }
        let ring_ms = info
            .ring_timeout_ms
            .unwrap_or(self.settings.ring_timeout_ms);
        self.ring_new_party(c, dest, ring_ms, out);
    }

    fn ring_new_party(&mut self, c: &ReqCtx, dest: Dest, ring_ms: u64, out: &mut Out) {
        let leg = self.new_leg();
        let Some(call) = self.calls.get_mut(&c.conn) else {
            return;
        };
        call.parties.push(Party {
            dn: dest.number().to_string(),
            internal: dest.is_dn(),
            trunk: dest.trunk().map(str::to_owned),
            role: PartyRole::ConferenceMember,
            state: PartyState::Ringing,
            leg,
            sdp: None,
            auto: false,
        });
        call.adding = Some(Adding {
            leg,
            by: c.dn.clone(),
            req: c.id,
        });
        self.legs.insert(leg, c.conn);
        tracing::info!(conn_id = %c.conn, tenant = %c.tenant, dn = %c.dn, to = dest.number(), "adding a party to the call");
        out.push(Action::PlaceLeg {
            leg,
            tenant: c.tenant.clone(),
            from: c.dn.clone(),
            sdp: c.party.sdp.clone(),
            dest,
            auto_answer: false,
        });
        out.push(Action::StartRingTimer { leg, ms: ring_ms });
        let call = &self.calls[&c.conn];
        let i = call.parties.len() - 1;
        ev_third(
            out,
            call,
            i,
            Event::EventRinging,
            c.now,
            Some(c.id),
            Some(&c.dn),
        );
    }

    /// Whether `leg` rings for a SingleStepConference (not to be forwarded or re-bridged).
    pub(super) fn is_adding(&self, leg: LegId) -> bool {
        self.party_of(leg)
            .is_some_and(|(call, _)| call.adding.as_ref().is_some_and(|a| a.leg == leg))
    }

    /// The party of a SingleStepConference answered: it is established and joins.
    pub(super) fn added_answered(&mut self, conn: ConnId, leg: LegId, now: u64, out: &mut Out) {
        let Some(call) = self.calls.get_mut(&conn) else {
            return;
        };
        let (Some(a), Some(i)) = (call.adding.take(), call.by_leg(leg)) else {
            return;
        };
        let call = &self.calls[&conn];
        ev(out, call, i, Event::EventEstablished, now, None, None);
        let dn = call.parties[i].dn.clone();
        self.party_added(conn, &dn, &a.by, Some(a.req), now, out);
    }

    /// EventPartyAdded for every party of call `conn` (`added` joined, `by` added it), then
    /// the media of those not yet in the mixer moves there.
    fn party_added(
        &mut self,
        conn: ConnId,
        added: &str,
        by: &str,
        req: Option<u64>,
        now: u64,
        out: &mut Out,
    ) {
        let Some(call) = self.calls.get(&conn) else {
            return;
        };
        tracing::info!(conn_id = %conn, tenant = %call.tenant, added, by, parties = call.parties.len(), "party added");
        let parties: Vec<String> = call.parties.iter().map(|p| p.dn.clone()).collect();
        for (j, p) in call.parties.iter().enumerate().filter(|(_, p)| p.internal) {
            let mut a = attrs(call, j, now, req, None);
            let (this_role, other, other_role) = match p.dn.as_str() {
                d if d == by => (PartyRole::AddedBy, added, PartyRole::NewParty),
                d if d == added => (PartyRole::NewParty, by, PartyRole::AddedBy),
                _ => (PartyRole::ConferenceMember, by, PartyRole::AddedBy),
            };
            a.this_role = Some(this_role);
            a.other_dn = Some(other.to_string());
            a.other_role = Some(other_role);
            a.third_party_dn = Some(added.to_string());
            a.parties = parties.clone();
            out.push(Action::Publish {
                event: Event::EventPartyAdded(a),
                leg: Some(p.leg),
            });
        }
        self.start_conference(conn, out);
    }

    /// A media-server leg for every party of `conn` that has none yet, offered the party's
    /// own SDP; each answer is re-offered to its party ([`Model::conf_answered`]).
    fn start_conference(&mut self, conn: ConnId, out: &mut Out) {
        let Some(call) = self.calls.get(&conn) else {
            return;
        };
        let joined: Vec<LegId> = call
            .conference
            .iter()
            .flat_map(|c| c.legs.iter().map(|l| l.party))
            .collect();
        let to_join: Vec<(LegId, String, Option<Bytes>)> = call
            .parties
            .iter()
            .filter(|p| !joined.contains(&p.leg) && !p.state.parked())
            .map(|p| (p.leg, p.dn.clone(), p.sdp.clone()))
            .collect();
        let tenant = call.tenant.clone();
        for (party, dn, sdp) in to_join {
            let Some(sdp) = sdp else {
                tracing::warn!(conn_id = %conn, dn, "a party without media cannot join the mixer");
                continue;
            };
            let media = self.new_leg();
            self.legs.insert(media, conn);
            out.push(Action::PlaceMediaLeg {
                leg: media,
                tenant: tenant.clone(),
                service: MediaService {
                    user: format!("conf={conn}"),
                    params: String::new(),
                },
                from: dn,
                to: conn.to_string(),
                sdp,
            });
            if let Some(call) = self.calls.get_mut(&conn) {
                let conf = call.conference.get_or_insert_with(Conference::default);
                conf.legs.push(ConfLeg { party, media });
            }
        }
    }

    /// The mixer answered a party's leg: the party gets the mixer's media (a re-INVITE).
    pub(super) fn conf_answered(&mut self, leg: LegId, sdp: Option<Bytes>, out: &mut Out) {
        let Some(conn) = self.conf_call(leg) else {
            return;
        };
        let Some(party) = self.conf_party(conn, leg) else {
            return;
        };
        let Some(sdp) = sdp else {
            tracing::warn!(conn_id = %conn, "the media server answered a conference leg without SDP");
            out.push(Action::Hangup { leg });
            return self.drop_conf_leg(conn, leg);
        };
        out.push(Action::Reoffer {
            leg: party,
            sdp: Some(sdp),
            direction: Direction::SendRecv,
        });
        self.ops.insert(party, LegOp::Bridge);
    }

    /// A media-server leg failed or was hung up by the media server: that party's media is
    /// no longer mixed (the call goes on; the failure is in the log).
    pub(super) fn conf_leg_gone(&mut self, leg: LegId, code: Option<u16>) {
        let Some(conn) = self.conf_call(leg) else {
            return;
        };
        tracing::warn!(conn_id = %conn, ?code, "a conference leg of the media server ended");
        self.drop_conf_leg(conn, leg);
    }

    fn conf_party(&self, conn: ConnId, media: LegId) -> Option<LegId> {
        let conf = self.calls.get(&conn)?.conference.as_ref()?;
        conf.legs.iter().find(|l| l.media == media).map(|l| l.party)
    }

    fn drop_conf_leg(&mut self, conn: ConnId, media: LegId) {
        self.legs.remove(&media);
        if let Some(conf) = self
            .calls
            .get_mut(&conn)
            .and_then(|c| c.conference.as_mut())
        {
            conf.legs.retain(|l| l.media != media);
        }
    }

    /// Party `gone` left `call` (taken out of the map), which goes on with two or more: a
    /// party that was being added failed (EventError for the request); a conference member
    /// left (its mixer leg hung up, EventPartyDeleted for the others, `by` the DN that
    /// deleted it).
    pub(super) fn party_left(
        &mut self,
        call: &mut Call,
        gone: &Party,
        by: Option<&str>,
        req: Option<u64>,
        now: u64,
        out: &mut Out,
    ) {
        if let Some(a) = call.adding.take() {
            if a.leg != gone.leg {
                call.adding = Some(a);
            } else {
                let reason = format!("{} did not join the call", gone.dn);
                let (t, conn) = (call.tenant.clone(), Some(call.conn));
                return error(out, &t, conn, &a.by, a.req, codes::REFUSED, &reason, now);
            }
        }
        let Some(conf) = call.conference.as_mut() else {
            return;
        };
        if let Some(k) = conf.legs.iter().position(|l| l.party == gone.leg) {
            let media = conf.legs.remove(k).media;
            self.legs.remove(&media);
            out.push(Action::Hangup { leg: media });
        }
        let parties: Vec<String> = call.parties.iter().map(|p| p.dn.clone()).collect();
        for (j, p) in call.parties.iter().enumerate().filter(|(_, p)| p.internal) {
            let mut a = attrs(call, j, now, req, None);
            a.other_dn = Some(by.unwrap_or(&gone.dn).to_string());
            a.other_role = by.map(|_| PartyRole::DeletedBy);
            a.third_party_dn = Some(gone.dn.clone());
            a.parties = parties.clone();
            out.push(Action::Publish {
                event: Event::EventPartyDeleted(a),
                leg: Some(p.leg),
            });
        }
    }

    /// The call ends: its media-server legs are hung up.
    pub(super) fn end_conference(&mut self, call: &mut Call, out: &mut Out) {
        call.adding = None;
        for l in call.conference.take().into_iter().flat_map(|c| c.legs) {
            self.legs.remove(&l.media);
            self.ops.remove(&l.media);
            out.push(Action::Hangup { leg: l.media });
        }
    }

    /// The consult call of an InitiateConference ended without being merged: the consulting
    /// DN gets its call back (re-offer of the held party; EventRetrieved with `req`).
    pub(super) fn retrieve_after_consult(&mut self, consult: &Call, req: u64, out: &mut Out) {
        let Some((orig, by)) = consult.consult_of.clone() else {
            return;
        };
        let Some(call) = self.calls.get(&orig) else {
            return;
        };
        let Some(i) = call
            .party(&by)
            .filter(|&i| call.parties[i].state == PartyState::Held)
        else {
            return;
        };
        let Some(other) = call
            .other(i)
            .map(|o| &call.parties[o])
            .filter(|o| o.state == PartyState::Established && !self.ops.contains_key(&o.leg))
        else {
            return;
        };
        tracing::info!(conn_id = %orig, dn = %by, "the conference consult call ended: retrieving");
        let leg = other.leg;
        out.push(Action::Reoffer {
            leg,
            sdp: None,
            direction: Direction::SendRecv,
        });
        let (conn, dn) = (orig, by);
        self.ops.insert(leg, LegOp::Retrieve { conn, dn, req });
    }

    /// DeleteFromConference: `party` is hung up and leaves; the conference goes on.
    pub(super) fn delete_from_conference(&mut self, c: &ReqCtx, party: &str, out: &mut Out) {
        let Some(call) = self.calls.get(&c.conn) else {
            return;
        };
        if call.conference.is_none() {
            return c.err(out, codes::BAD_STATE, "the call is not a conference");
        }
        let Some(leg) = call.party(party).map(|t| call.parties[t].leg) else {
            return c.err(out, codes::NO_SUCH_PARTY, "not a party of the conference");
        };
        out.push(Action::Hangup { leg });
        self.release_party(c.conn, leg, Some(c.id), Some(&c.dn), c.now, out);
    }
}
