//! The call-state reducer: folds TLib events into call threads, one [`CallBook`] per tenant.
//! Pure (ARCHITECTURE.md, principle 2): no bus, no clock; time is the events' `ts_ms` (and the
//! `now_ms` given to [`CallBook::prune`]).
//!
//! Events are per-DN views (ThisDN's): the SIP Server publishes them only for internal DNs. A
//! call thread is keyed by ConnID and holds:
//!
//! * the parties: each DN that reported an event (`reported: true`) with the state its last
//!   event gives, and the DNs named only as OtherDN or ThirdPartyDN (external numbers, or DNs
//!   whose own events have not arrived yet), whose state mirrors what the reporting party saw;
//! * the user data: every call event carries the call's whole attached data, so the last event
//!   wins (EventAttachedDataChanged after an attach, update or delete);
//! * timestamps: first event, last event, release; per party the time of its last change.
//!
//! A call is released when no reporting party is live any more (released, diverted, abandoned,
//! or moved to another call by EventPartyChanged); the parties that never reported are then
//! marked released too. A later live event (e.g. EventRinging at an agent after EventDiverted
//! from a route point) makes it active again.
//!
//! Released calls are kept for [`Limits::released_ttl_ms`] and at most
//! [`Limits::max_released`] per tenant (oldest dropped first); at most [`Limits::max_calls`]
//! calls are kept in all (an active call that stopped getting events is dropped when that is
//! exceeded, the one updated longest ago first).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use switchboard_events::{CallAttrs, CallType, ConnId, Event, PartyRole, UserData};

/// How much a [`CallBook`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Released calls kept at most this long after their release, ms.
    pub released_ttl_ms: u64,
    /// Released calls kept at most, per tenant.
    pub max_released: usize,
    /// Calls kept at most (active and released), per tenant.
    pub max_calls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            released_ttl_ms: 15 * 60 * 1000,
            max_released: 1000,
            max_calls: 100_000,
        }
    }
}

/// A party's state as the events tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartyState {
    /// Named in the call, nothing known of its own state yet.
    Unknown,
    Dialing,
    Ringing,
    Established,
    Held,
    /// At a route point, waiting for a routing decision (EventRouteRequest).
    AtRoutePoint,
    Queued,
    Released,
    /// Left the route point or queue for another destination (EventDiverted).
    Diverted,
    /// Hung up while queued or at a route point (EventAbandoned).
    Abandoned,
    /// Moved into another call (EventPartyChanged on that call names this one as previous).
    Transferred,
}

impl PartyState {
    /// Still part of the call.
    pub fn is_live(self) -> bool {
        !matches!(
            self,
            PartyState::Released
                | PartyState::Diverted
                | PartyState::Abandoned
                | PartyState::Transferred
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Party {
    /// DN or external number.
    pub dn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<PartyRole>,
    pub state: PartyState,
    /// Whether this DN reported events of its own (an internal DN).
    pub reported: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The SIP Call-ID of this DN's leg, when an event said it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// When the party got its current state, ms since the Unix epoch.
    pub since_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Active,
    Released,
}

/// A call thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub conn_id: ConnId,
    pub tenant: String,
    pub state: CallStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_type: Option<CallType>,
    /// In the order they appeared.
    pub parties: Vec<Party>,
    pub user_data: UserData,
    /// The call a party came from (EventPartyChanged, transfer completion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_conn_id: Option<ConnId>,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_ms: Option<u64>,
    /// The TLib name of the last event folded in.
    pub last_event: String,
    /// Events folded in.
    pub events: u64,
}

impl Call {
    fn new(conn_id: ConnId, tenant: &str, ts: u64) -> Call {
        Call {
            conn_id,
            tenant: tenant.to_string(),
            state: CallStatus::Active,
            call_type: None,
            parties: Vec::new(),
            user_data: UserData::new(),
            previous_conn_id: None,
            created_ms: ts,
            updated_ms: ts,
            released_ms: None,
            last_event: String::new(),
            events: 0,
        }
    }

    pub fn party(&self, dn: &str) -> Option<&Party> {
        self.parties.iter().find(|p| p.dn == dn)
    }

    fn party_mut(&mut self, dn: &str, ts: u64) -> &mut Party {
        let i = match self.parties.iter().position(|p| p.dn == dn) {
            Some(i) => i,
            None => {
                self.parties.push(Party {
                    dn: dn.to_string(),
                    role: None,
                    state: PartyState::Unknown,
                    reported: false,
                    agent_id: None,
                    call_id: None,
                    since_ms: ts,
                });
                self.parties.len() - 1
            }
        };
        &mut self.parties[i]
    }
}

fn set_state(p: &mut Party, state: PartyState, ts: u64) {
    if p.state != state {
        p.state = state;
        p.since_ms = ts;
    }
}

/// What folding one event did, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The call was created by this event.
    Created,
    Updated,
    /// This event released the call.
    Released,
    /// Not a call event, or one without a ConnID: nothing to fold.
    Ignored,
}

/// The calls of one tenant.
#[derive(Clone, Debug, Default)]
pub struct CallBook {
    calls: HashMap<ConnId, Call>,
    /// `(released_ms, conn)` in release order; entries of calls that became active again or
    /// were dropped are skipped when they come up.
    released: VecDeque<(u64, ConnId)>,
    released_count: usize,
    limits: Limits,
    /// The latest event time seen: the reducer's "now" for pruning.
    latest_ms: u64,
}

impl CallBook {
    pub fn new(limits: Limits) -> CallBook {
        CallBook {
            limits,
            ..CallBook::default()
        }
    }

    /// Rebuilds a book from calls (a snapshot).
    pub fn from_calls(limits: Limits, calls: Vec<Call>) -> CallBook {
        let mut book = CallBook::new(limits);
        let mut released: Vec<(u64, ConnId)> = Vec::new();
        for call in calls {
            book.latest_ms = book.latest_ms.max(call.updated_ms);
            if let (CallStatus::Released, Some(at)) = (call.state, call.released_ms) {
                released.push((at, call.conn_id));
            }
            book.calls.insert(call.conn_id, call);
        }
        released.sort();
        book.released_count = released.len();
        book.released = released.into();
        book
    }

    pub fn get(&self, conn: ConnId) -> Option<&Call> {
        self.calls.get(&conn)
    }

    /// Every call, oldest first.
    pub fn calls(&self) -> Vec<&Call> {
        let mut v: Vec<&Call> = self.calls.values().collect();
        v.sort_by_key(|c| (c.created_ms, c.conn_id));
        v
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub fn active(&self) -> usize {
        self.calls.len() - self.released_count
    }

    /// Folds one event in. Events of other tenants are the caller's business (it reads one
    /// tenant's stream); this does not look at the tenant.
    pub fn apply(&mut self, event: &Event) -> Applied {
        let Some(attrs) = event.call() else {
            return Applied::Ignored;
        };
        let Some(conn) = attrs.conn_id else {
            return Applied::Ignored;
        };
        let ts = attrs.ts_ms;
        self.latest_ms = self.latest_ms.max(ts);
        // A party moving here from another call leaves that one.
        if let (Event::EventPartyChanged(_), Some(prev)) = (event, attrs.previous_conn_id) {
            if prev != conn {
                if let Some(old) = self.calls.get_mut(&prev) {
                    if let Some(p) = old.parties.iter_mut().find(|p| p.dn == attrs.this_dn) {
                        set_state(p, PartyState::Transferred, ts);
                    }
                    old.updated_ms = old.updated_ms.max(ts);
                }
                self.settle(prev, ts);
            }
        }
        let created = !self.calls.contains_key(&conn);
        if created {
            self.make_room();
        }
        let call = self
            .calls
            .entry(conn)
            .or_insert_with(|| Call::new(conn, &attrs.tenant, ts));
        fold(call, event, attrs);
        let was_released = call.state == CallStatus::Released;
        let now_released = self.settle(conn, ts);
        self.prune(self.latest_ms);
        match (created, was_released, now_released) {
            (_, false, true) => Applied::Released,
            (true, _, _) => Applied::Created,
            _ => Applied::Updated,
        }
    }

    /// Recomputes the call's status from its parties; true when it is released now.
    fn settle(&mut self, conn: ConnId, ts: u64) -> bool {
        let Some(call) = self.calls.get_mut(&conn) else {
            return false;
        };
        let live = call.parties.iter().any(|p| p.reported && p.state.is_live());
        match (call.state, live) {
            (CallStatus::Active, false) => {
                call.state = CallStatus::Released;
                call.released_ms = Some(ts);
                for p in call.parties.iter_mut().filter(|p| !p.reported) {
                    if p.state.is_live() {
                        set_state(p, PartyState::Released, ts);
                    }
                }
                self.released.push_back((ts, conn));
                self.released_count += 1;
                true
            }
            (CallStatus::Released, true) => {
                call.state = CallStatus::Active;
                call.released_ms = None;
                self.released_count -= 1;
                false
            }
            (CallStatus::Released, false) => true,
            (CallStatus::Active, true) => false,
        }
    }

    /// Drops released calls past their time or over the count (`now_ms`: the clock, or the
    /// latest event time when replaying). Returns how many were dropped.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let mut dropped = 0;
        while let Some(&(at, conn)) = self.released.front() {
            let expired = at.saturating_add(self.limits.released_ttl_ms) <= now_ms;
            if !expired && self.released_count <= self.limits.max_released {
                break;
            }
            self.released.pop_front();
            let current = self
                .calls
                .get(&conn)
                .is_some_and(|c| c.state == CallStatus::Released && c.released_ms == Some(at));
            if current {
                self.calls.remove(&conn);
                self.released_count -= 1;
                dropped += 1;
            }
        }
        dropped
    }

    /// Before a call is added: keeps the book under `max_calls`.
    fn make_room(&mut self) {
        while self.calls.len() >= self.limits.max_calls.max(1) {
            // Released calls go first, then the active call updated longest ago.
            let victim = self
                .calls
                .values()
                .min_by_key(|c| (c.state == CallStatus::Active, c.updated_ms, c.conn_id))
                .map(|c| (c.conn_id, c.state));
            let Some((conn, state)) = victim else { return };
            if state == CallStatus::Released {
                self.released_count -= 1;
            } else {
                tracing::warn!(conn_id = %conn, "call-state full: dropping a stale active call");
            }
            self.calls.remove(&conn);
        }
    }
}

/// Applies `event` to `call` (this DN's party, the other party, the attributes).
fn fold(call: &mut Call, event: &Event, a: &CallAttrs) {
    let ts = a.ts_ms;
    call.events += 1;
    call.updated_ms = call.updated_ms.max(ts);
    call.last_event = event.name().to_string();
    if a.call_type.is_some() {
        call.call_type = a.call_type;
    }
    // Every call event carries the call's whole attached data.
    call.user_data = a.user_data.clone();
    if let (Event::EventPartyChanged(_), Some(prev)) = (event, a.previous_conn_id) {
        if prev != call.conn_id {
            call.previous_conn_id = Some(prev);
        }
    }

    let this = call.party_mut(&a.this_dn, ts);
    this.reported = true;
    if a.this_role.is_some() {
        this.role = a.this_role;
    }
    if a.agent_id.is_some() {
        this.agent_id.clone_from(&a.agent_id);
    }
    if a.call_id.is_some() {
        this.call_id.clone_from(&a.call_id);
    }
    let before = this.state;
    let state = match event {
        Event::EventDialing(_) => PartyState::Dialing,
        Event::EventRinging(_) => PartyState::Ringing,
        Event::EventEstablished(_) | Event::EventRetrieved(_) | Event::EventPartyChanged(_) => {
            PartyState::Established
        }
        Event::EventHeld(_) => PartyState::Held,
        Event::EventReleased(_) => PartyState::Released,
        Event::EventRouteRequest(_) => PartyState::AtRoutePoint,
        Event::EventQueued(_) => PartyState::Queued,
        Event::EventDiverted(_) => PartyState::Diverted,
        Event::EventAbandoned(_) => PartyState::Abandoned,
        // These tell about another party; this one keeps its state (a DN first seen in them
        // is in the call).
        Event::EventPartyAdded(_)
        | Event::EventPartyDeleted(_)
        | Event::EventAttachedDataChanged(_) => match before {
            PartyState::Unknown => PartyState::Established,
            s => s,
        },
        _ => before,
    };
    set_state(this, state, ts);

    // The party this DN talks to: external numbers never report, so mirror what this DN saw.
    if let Some(other) = a.other_dn.as_deref().filter(|o| *o != a.this_dn) {
        let p = call.party_mut(other, ts);
        if !p.reported {
            if a.other_role.is_some() {
                p.role = a.other_role;
            }
            let mirrored = match state {
                PartyState::Ringing => Some(PartyState::Dialing),
                PartyState::Dialing => Some(PartyState::Ringing),
                PartyState::Established | PartyState::Held => Some(PartyState::Established),
                _ => None,
            };
            // Unreported parties only ever get their state from here (and from the release of
            // the whole call, which a later live event undoes).
            if let Some(m) = mirrored {
                set_state(p, m, ts);
            }
        }
    }
    // The party added or deleted.
    if let Some(third) = a.third_party_dn.as_deref().filter(|t| *t != a.this_dn) {
        match event {
            Event::EventPartyAdded(_) => {
                let p = call.party_mut(third, ts);
                if !p.reported || !p.state.is_live() {
                    set_state(p, PartyState::Established, ts);
                }
            }
            Event::EventPartyDeleted(_) => {
                let p = call.party_mut(third, ts);
                set_state(p, PartyState::Released, ts);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_events::ErrorAttrs;

    const C1: ConnId = ConnId(0x1);
    const C2: ConnId = ConnId(0x2);

    fn attrs(conn: ConnId, this: &str, other: Option<&str>, ts: u64) -> CallAttrs {
        CallAttrs {
            tenant: "demo".into(),
            conn_id: Some(conn),
            this_dn: this.into(),
            other_dn: other.map(str::to_string),
            call_type: Some(CallType::Inbound),
            ts_ms: ts,
            ..Default::default()
        }
    }

    fn state(book: &CallBook, conn: ConnId, dn: &str) -> PartyState {
        book.get(conn)
            .and_then(|c| c.party(dn))
            .map(|p| p.state)
            .unwrap_or_else(|| panic!("no party {dn} in {conn}"))
    }

    #[test]
    fn inbound_call_answered_held_retrieved_released() {
        let mut book = CallBook::new(Limits::default());
        let mut ring = attrs(C1, "1002", Some("+15551234567"), 100);
        ring.this_role = Some(PartyRole::Destination);
        ring.other_role = Some(PartyRole::Origination);
        ring.call_id = Some("abc@carrier".into());
        assert_eq!(book.apply(&Event::EventRinging(ring)), Applied::Created);
        let call = book.get(C1).unwrap();
        assert_eq!(call.state, CallStatus::Active);
        assert_eq!(call.created_ms, 100);
        assert_eq!(call.call_type, Some(CallType::Inbound));
        assert_eq!(state(&book, C1, "1002"), PartyState::Ringing);
        assert_eq!(state(&book, C1, "+15551234567"), PartyState::Dialing);
        let caller = call.party("+15551234567").unwrap();
        assert!(!caller.reported);
        assert_eq!(caller.role, Some(PartyRole::Origination));
        assert_eq!(
            call.party("1002").unwrap().call_id.as_deref(),
            Some("abc@carrier")
        );

        let est = attrs(C1, "1002", Some("+15551234567"), 200);
        assert_eq!(book.apply(&Event::EventEstablished(est)), Applied::Updated);
        assert_eq!(state(&book, C1, "1002"), PartyState::Established);
        assert_eq!(state(&book, C1, "+15551234567"), PartyState::Established);
        let p = book.get(C1).unwrap().party("1002").unwrap();
        assert_eq!(p.since_ms, 200);

        book.apply(&Event::EventHeld(attrs(
            C1,
            "1002",
            Some("+15551234567"),
            300,
        )));
        assert_eq!(state(&book, C1, "1002"), PartyState::Held);
        assert_eq!(state(&book, C1, "+15551234567"), PartyState::Established);
        book.apply(&Event::EventRetrieved(attrs(
            C1,
            "1002",
            Some("+15551234567"),
            400,
        )));
        assert_eq!(state(&book, C1, "1002"), PartyState::Established);

        let rel = attrs(C1, "1002", Some("+15551234567"), 500);
        assert_eq!(book.apply(&Event::EventReleased(rel)), Applied::Released);
        let call = book.get(C1).unwrap();
        assert_eq!(call.state, CallStatus::Released);
        assert_eq!(call.released_ms, Some(500));
        assert_eq!(call.updated_ms, 500);
        assert_eq!(call.events, 5);
        assert_eq!(call.last_event, "EventReleased");
        assert_eq!(state(&book, C1, "+15551234567"), PartyState::Released);
        assert_eq!(book.active(), 0);
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn internal_call_is_released_when_both_dns_released() {
        let mut book = CallBook::new(Limits::default());
        let mut a = attrs(C1, "1001", Some("1002"), 10);
        a.call_type = Some(CallType::Internal);
        book.apply(&Event::EventDialing(a.clone()));
        book.apply(&Event::EventRinging(attrs(C1, "1002", Some("1001"), 11)));
        // 1002 reported, so 1001's Dialing does not overwrite it and vice versa.
        assert_eq!(state(&book, C1, "1001"), PartyState::Dialing);
        assert_eq!(state(&book, C1, "1002"), PartyState::Ringing);
        book.apply(&Event::EventEstablished(attrs(
            C1,
            "1002",
            Some("1001"),
            12,
        )));
        book.apply(&Event::EventEstablished(attrs(
            C1,
            "1001",
            Some("1002"),
            12,
        )));
        assert_eq!(book.get(C1).unwrap().call_type, Some(CallType::Inbound));
        assert_eq!(
            book.apply(&Event::EventReleased(attrs(C1, "1001", Some("1002"), 20))),
            Applied::Updated
        );
        assert_eq!(book.get(C1).unwrap().state, CallStatus::Active);
        assert_eq!(
            book.apply(&Event::EventReleased(attrs(C1, "1002", Some("1001"), 21))),
            Applied::Released
        );
        assert_eq!(book.get(C1).unwrap().released_ms, Some(21));
    }

    #[test]
    fn user_data_follows_the_last_event() {
        let mut book = CallBook::new(Limits::default());
        book.apply(&Event::EventEstablished(attrs(C1, "1002", Some("9"), 1)));
        let mut ud = attrs(C1, "1002", Some("9"), 2);
        ud.user_data
            .insert("account".into(), serde_json::json!("42"));
        ud.user_data.insert("vip".into(), serde_json::json!(true));
        book.apply(&Event::EventAttachedDataChanged(ud));
        let call = book.get(C1).unwrap();
        assert_eq!(call.user_data["account"], "42");
        assert_eq!(state(&book, C1, "1002"), PartyState::Established);
        // A delete of every key empties it.
        book.apply(&Event::EventAttachedDataChanged(attrs(
            C1,
            "1002",
            Some("9"),
            3,
        )));
        assert!(book.get(C1).unwrap().user_data.is_empty());
    }

    #[test]
    fn route_point_diverted_to_agent_stays_one_active_call() {
        let mut book = CallBook::new(Limits::default());
        book.apply(&Event::EventRouteRequest(attrs(
            C1,
            "5000",
            Some("+1555"),
            1,
        )));
        assert_eq!(state(&book, C1, "5000"), PartyState::AtRoutePoint);
        book.apply(&Event::EventQueued(attrs(C1, "5000", Some("+1555"), 2)));
        assert_eq!(state(&book, C1, "5000"), PartyState::Queued);
        // Diverted before the agent's ringing: released for a moment, then active again.
        book.apply(&Event::EventDiverted(attrs(C1, "5000", Some("+1555"), 3)));
        assert_eq!(book.get(C1).unwrap().state, CallStatus::Released);
        book.apply(&Event::EventRinging(attrs(C1, "1003", Some("+1555"), 4)));
        let call = book.get(C1).unwrap();
        assert_eq!(call.state, CallStatus::Active);
        assert_eq!(call.released_ms, None);
        assert_eq!(book.active(), 1);
        assert_eq!(state(&book, C1, "5000"), PartyState::Diverted);
        // The caller, marked released while the call looked over, is back with the ringing.
        assert_eq!(state(&book, C1, "+1555"), PartyState::Dialing);
        book.apply(&Event::EventReleased(attrs(C1, "1003", Some("+1555"), 9)));
        assert_eq!(book.get(C1).unwrap().state, CallStatus::Released);
        assert_eq!(book.active(), 0);
    }

    #[test]
    fn abandoned_in_queue_releases() {
        let mut book = CallBook::new(Limits::default());
        book.apply(&Event::EventQueued(attrs(C1, "7000", Some("+1555"), 1)));
        assert_eq!(
            book.apply(&Event::EventAbandoned(attrs(C1, "7000", Some("+1555"), 2))),
            Applied::Released
        );
        assert_eq!(state(&book, C1, "7000"), PartyState::Abandoned);
    }

    #[test]
    fn consult_transfer_moves_the_target_and_releases_the_consult_call() {
        let mut book = CallBook::new(Limits::default());
        // C1: caller +1555 with agent 1002.
        book.apply(&Event::EventEstablished(attrs(
            C1,
            "1002",
            Some("+1555"),
            1,
        )));
        book.apply(&Event::EventHeld(attrs(C1, "1002", Some("+1555"), 2)));
        // C2: 1002 consults 1003.
        let mut d = attrs(C2, "1002", Some("1003"), 3);
        d.call_type = Some(CallType::Consult);
        book.apply(&Event::EventDialing(d));
        book.apply(&Event::EventRinging(attrs(C2, "1003", Some("1002"), 4)));
        book.apply(&Event::EventEstablished(attrs(C2, "1003", Some("1002"), 5)));
        book.apply(&Event::EventEstablished(attrs(C2, "1002", Some("1003"), 5)));
        assert_eq!(book.active(), 2);
        // Complete: 1002 leaves both calls, 1003 moves into C1.
        let mut rel = attrs(C2, "1002", Some("1003"), 6);
        rel.this_role = Some(PartyRole::TransferredBy);
        book.apply(&Event::EventReleased(rel));
        let mut rel = attrs(C1, "1002", Some("+1555"), 6);
        rel.third_party_dn = Some("1003".into());
        book.apply(&Event::EventReleased(rel));
        let mut changed = attrs(C1, "1003", Some("+1555"), 6);
        changed.previous_conn_id = Some(C2);
        changed.third_party_dn = Some("1002".into());
        assert_eq!(
            book.apply(&Event::EventPartyChanged(changed)),
            Applied::Updated
        );
        let c1 = book.get(C1).unwrap();
        assert_eq!(c1.state, CallStatus::Active);
        assert_eq!(c1.previous_conn_id, Some(C2));
        assert_eq!(state(&book, C1, "1003"), PartyState::Established);
        assert_eq!(state(&book, C1, "1002"), PartyState::Released);
        let c2 = book.get(C2).unwrap();
        assert_eq!(c2.state, CallStatus::Released);
        assert_eq!(state(&book, C2, "1003"), PartyState::Transferred);
        assert_eq!(book.active(), 1);
    }

    #[test]
    fn party_added_and_deleted() {
        let mut book = CallBook::new(Limits::default());
        book.apply(&Event::EventEstablished(attrs(
            C1,
            "1002",
            Some("+1555"),
            1,
        )));
        let mut added = attrs(C1, "1002", Some("+1555"), 2);
        added.third_party_dn = Some("1004".into());
        book.apply(&Event::EventPartyAdded(added));
        assert_eq!(state(&book, C1, "1004"), PartyState::Established);
        let mut deleted = attrs(C1, "1002", Some("+1555"), 3);
        deleted.third_party_dn = Some("1004".into());
        book.apply(&Event::EventPartyDeleted(deleted));
        assert_eq!(state(&book, C1, "1004"), PartyState::Released);
        assert_eq!(state(&book, C1, "1002"), PartyState::Established);
        assert_eq!(book.get(C1).unwrap().parties.len(), 3);
    }

    #[test]
    fn non_call_events_and_missing_conn_ids_are_ignored() {
        let mut book = CallBook::new(Limits::default());
        let mut no_conn = attrs(C1, "1002", None, 1);
        no_conn.conn_id = None;
        assert_eq!(book.apply(&Event::EventRinging(no_conn)), Applied::Ignored);
        let err = Event::EventError(ErrorAttrs {
            tenant: "demo".into(),
            conn_id: Some(C1),
            request_id: 7,
            error_code: "no_such_call".into(),
            reason: "no call".into(),
            ..Default::default()
        });
        assert_eq!(book.apply(&err), Applied::Ignored);
        assert!(book.is_empty());
    }

    #[test]
    fn duplicate_delivery_is_harmless_for_state() {
        // At-least-once: an event folded twice gives the same call state (the consumer also
        // skips ids it already applied; this is the second line of defence).
        let mut once = CallBook::new(Limits::default());
        let mut twice = CallBook::new(Limits::default());
        let events = [
            Event::EventRinging(attrs(C1, "1002", Some("+1"), 1)),
            Event::EventEstablished(attrs(C1, "1002", Some("+1"), 2)),
            Event::EventReleased(attrs(C1, "1002", Some("+1"), 3)),
        ];
        for e in &events {
            once.apply(e);
            twice.apply(e);
            twice.apply(e);
        }
        let (a, b) = (once.get(C1).unwrap(), twice.get(C1).unwrap());
        assert_eq!(a.state, b.state);
        assert_eq!(a.parties, b.parties);
        assert_eq!(a.released_ms, b.released_ms);
        assert_eq!(once.active(), twice.active());
        assert_eq!(twice.len(), 1);
    }

    fn call_and_release(book: &mut CallBook, conn: u64, ts: u64) {
        book.apply(&Event::EventRinging(attrs(
            ConnId(conn),
            "1002",
            Some("+1"),
            ts,
        )));
        book.apply(&Event::EventReleased(attrs(
            ConnId(conn),
            "1002",
            Some("+1"),
            ts + 1,
        )));
    }

    #[test]
    fn released_calls_are_bounded_in_number_and_time() {
        let limits = Limits {
            released_ttl_ms: 1000,
            max_released: 3,
            max_calls: 100,
        };
        let mut book = CallBook::new(limits);
        for n in 1..=5 {
            call_and_release(&mut book, n, n * 10);
        }
        // Only the 3 latest released calls are kept.
        assert_eq!(book.len(), 3);
        assert!(book.get(ConnId(1)).is_none() && book.get(ConnId(2)).is_none());
        assert!(book.get(ConnId(5)).is_some());
        // An active call is never pruned by time.
        book.apply(&Event::EventRinging(attrs(ConnId(9), "1003", None, 60)));
        assert_eq!(book.prune(10_000), 3);
        assert_eq!(book.len(), 1);
        assert_eq!(book.active(), 1);
        // By time: released at 10_001, kept until 11_001.
        call_and_release(&mut book, 10, 10_000);
        assert_eq!(book.prune(10_500), 0);
        assert_eq!(book.prune(11_001), 1);
        assert!(book.get(ConnId(10)).is_none());
    }

    #[test]
    fn total_calls_are_bounded() {
        let limits = Limits {
            released_ttl_ms: 1_000_000,
            max_released: 1000,
            max_calls: 3,
        };
        let mut book = CallBook::new(limits);
        call_and_release(&mut book, 1, 1);
        for n in 2..=4 {
            book.apply(&Event::EventRinging(attrs(ConnId(n), "1002", None, n * 10)));
        }
        // The released call made room first.
        assert_eq!(book.len(), 3);
        assert!(book.get(ConnId(1)).is_none());
        // Then the active call updated longest ago.
        book.apply(&Event::EventRinging(attrs(ConnId(5), "1002", None, 100)));
        assert_eq!(book.len(), 3);
        assert!(book.get(ConnId(2)).is_none());
        assert_eq!(book.active(), 3);
    }

    /// A consult transfer, a route point, attached data, a conference party and releases:
    /// most transitions in one sequence.
    fn busy_day() -> Vec<Event> {
        let c3 = ConnId(3);
        let mut ud = attrs(C1, "1002", Some("+1555"), 3);
        ud.user_data.insert("k".into(), serde_json::json!(1));
        let mut added = attrs(C1, "1002", Some("+1555"), 4);
        added.third_party_dn = Some("1004".into());
        let mut deleted = attrs(C1, "1002", Some("+1555"), 5);
        deleted.third_party_dn = Some("1004".into());
        let mut changed = attrs(C1, "1003", Some("+1555"), 9);
        changed.previous_conn_id = Some(C2);
        vec![
            Event::EventRouteRequest(attrs(c3, "5000", Some("+1666"), 1)),
            Event::EventRinging(attrs(C1, "1002", Some("+1555"), 1)),
            Event::EventEstablished(attrs(C1, "1002", Some("+1555"), 2)),
            Event::EventAttachedDataChanged(ud),
            Event::EventPartyAdded(added),
            Event::EventPartyDeleted(deleted),
            Event::EventDiverted(attrs(c3, "5000", Some("+1666"), 5)),
            Event::EventRinging(attrs(c3, "1005", Some("+1666"), 6)),
            Event::EventHeld(attrs(C1, "1002", Some("+1555"), 6)),
            Event::EventDialing(attrs(C2, "1002", Some("1003"), 7)),
            Event::EventRinging(attrs(C2, "1003", Some("1002"), 7)),
            Event::EventEstablished(attrs(C2, "1003", Some("1002"), 8)),
            Event::EventReleased(attrs(C2, "1002", Some("1003"), 9)),
            Event::EventReleased(attrs(C1, "1002", Some("+1555"), 9)),
            Event::EventPartyChanged(changed),
            Event::EventAbandoned(attrs(c3, "1005", Some("+1666"), 10)),
            Event::EventReleased(attrs(C1, "1003", Some("+1555"), 11)),
        ]
    }

    fn same(a: &CallBook, b: &CallBook) {
        assert_eq!(a.calls(), b.calls());
        assert_eq!(a.active(), b.active());
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn rebuild_from_any_snapshot_equals_folding_everything() {
        let events = busy_day();
        let limits = Limits {
            released_ttl_ms: 5,
            max_released: 2,
            max_calls: 100,
        };
        let mut whole = CallBook::new(limits);
        for e in &events {
            whole.apply(e);
        }
        assert_eq!(whole.active(), 0);
        for k in 0..=events.len() {
            let mut first = CallBook::new(limits);
            for e in &events[..k] {
                first.apply(e);
            }
            // Through JSON, as the role stores it.
            let json = serde_json::to_vec(&first.calls()).unwrap();
            let calls: Vec<Call> = serde_json::from_slice(&json).unwrap();
            let mut rebuilt = CallBook::from_calls(limits, calls);
            same(&first, &rebuilt);
            for e in &events[k..] {
                rebuilt.apply(e);
            }
            same(&whole, &rebuilt);
        }
    }

    #[test]
    fn snapshot_round_trip() {
        let mut book = CallBook::new(Limits::default());
        call_and_release(&mut book, 1, 10);
        book.apply(&Event::EventRinging(attrs(
            ConnId(2),
            "1002",
            Some("+1"),
            20,
        )));
        let json = serde_json::to_string(&book.calls()).unwrap();
        let calls: Vec<Call> = serde_json::from_str(&json).unwrap();
        let back = CallBook::from_calls(Limits::default(), calls);
        assert_eq!(back.len(), 2);
        assert_eq!(back.active(), 1);
        assert_eq!(back.get(ConnId(1)), book.get(ConnId(1)));
        assert_eq!(back.get(ConnId(2)), book.get(ConnId(2)));
        // The JSON names states in snake_case.
        assert!(json.contains(r#""state":"released""#), "{json}");
        assert!(json.contains(r#""conn_id":"0000000000000001""#), "{json}");
    }
}
