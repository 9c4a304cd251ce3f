//! The one event model (ARCHITECTURE.md, principle 3): call and agent events after the TLib
//! model, published on the bus and streamed to desktops with the same JSON.
//!
//! JSON shape: an object with `"event": "EventRinging"` (the TLib name) and the attributes in
//! snake_case; absent optional attributes are omitted. Example:
//!
//! ```json
//! {"event":"EventRinging","tenant":"demo","conn_id":"00a1b2c3d4e5f601","call_id":"abc@host",
//!  "this_dn":"1002","other_dn":"+15551234567","this_role":"destination","other_role":"origination",
//!  "call_type":"inbound","user_data":{},"ts_ms":1795311466916}
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod requests;

/// A call's connection id: 64 bits shown as 16 hex digits, unique per tenant and process run
/// (the high bits carry the node, the low bits a counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(#[serde(with = "hex16")] pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for ConnId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(format!("connection id {s:?} is not 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .map(ConnId)
            .map_err(|_| format!("connection id {s:?} is not 16 hex digits"))
    }
}

mod hex16 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// The role of a party in a call (TLib `ThisPartyRole`/`OtherPartyRole`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartyRole {
    Origination,
    Destination,
    ConferenceMember,
    AddedBy,
    DeletedBy,
    TransferredBy,
    NewParty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallType {
    Inbound,
    Internal,
    Outbound,
    Consult,
}

/// Attached data of a call: a JSON object (TLib KVList).
pub type UserData = serde_json::Map<String, serde_json::Value>;

/// The event, by TLib name. Call events carry [`CallAttrs`], agent events [`AgentAttrs`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum Event {
    EventDialing(CallAttrs),
    EventRinging(CallAttrs),
    EventEstablished(CallAttrs),
    EventReleased(CallAttrs),
    EventHeld(CallAttrs),
    EventRetrieved(CallAttrs),
    /// A party's call was replaced by another (transfer completion): `previous_conn_id` is set.
    EventPartyChanged(CallAttrs),
    /// A party joined a conference (`third_party_dn`): to every party, `parties` all of them.
    EventPartyAdded(CallAttrs),
    /// A party left a conference (`third_party_dn`): to the parties that remain, `parties`
    /// those.
    EventPartyDeleted(CallAttrs),
    EventAttachedDataChanged(CallAttrs),
    /// A call reached a route point (`this_dn`) and waits, unanswered, for a routing decision
    /// (RouteCall) or the route point's timeout.
    EventRouteRequest(CallAttrs),
    EventQueued(CallAttrs),
    /// A call left a route point, queue or forwarding DN (`this_dn`) for another destination
    /// (`third_party_dn`); `reason` says why when no request (`request_id`) did it.
    EventDiverted(CallAttrs),
    /// The caller hung up while the call was queued or at a route point.
    EventAbandoned(CallAttrs),
    /// A request was refused: `request_id` names it and `reason` says why.
    EventError(ErrorAttrs),
    EventAgentLogin(AgentAttrs),
    EventAgentLogout(AgentAttrs),
    EventAgentReady(AgentAttrs),
    EventAgentNotReady(AgentAttrs),
    EventAgentAfterCallWork(AgentAttrs),
    EventAgentReserved(AgentAttrs),
    EventDNOutOfService(DnAttrs),
    EventDNBackInService(DnAttrs),
    /// The media server started playing a treatment (ApplyTreatment `request_id`) to the call
    /// at route point or queue `this_dn`.
    EventTreatmentApplied(CallAttrs),
    /// A treatment ended: `reason` is `completed` (the application exited or the announcement
    /// finished), `cancelled`, `routed`, `caller_hangup` or an `error.*` name;
    /// `treatment_results` holds its results (a VoiceXML exit namelist, collected `digits`).
    EventTreatmentEnd(CallAttrs),
    /// A voicemail message was stored in mailbox `this_dn` (durably: audio and metadata).
    EventMessageDeposited(MessageAttrs),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallAttrs {
    pub tenant: String,
    pub conn_id: Option<ConnId>,
    /// The SIP Call-ID of this DN's leg.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    pub this_dn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_dn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub this_role: Option<PartyRole>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_role: Option<PartyRole>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub third_party_dn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_type: Option<CallType>,
    /// The calling number of the call as it arrived (TLib `ANI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ani: Option<String>,
    /// The number the caller dialled, before the dial plan translated it (TLib `DNIS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnis: Option<String>,
    /// The login id of the agent on `this_dn`, when the configuration names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_conn_id: Option<ConnId>,
    /// The request this event confirms, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub user_data: UserData,
    /// What a treatment returned (EventTreatmentEnd only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub treatment_results: Option<UserData>,
    /// The DNs (and numbers) of every party of a conference (EventPartyAdded and
    /// EventPartyDeleted only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parties: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorAttrs {
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<ConnId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub this_dn: Option<String>,
    pub request_id: u64,
    /// A stable code (`no_such_call`, `invalid_destination`, `bad_state`...) and a sentence.
    pub error_code: String,
    pub reason: String,
    pub ts_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentAttrs {
    pub tenant: String,
    pub agent_id: String,
    pub this_dn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<ConnId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
    pub ts_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DnAttrs {
    pub tenant: String,
    pub this_dn: String,
    pub ts_ms: u64,
}

/// A voicemail message (`EventMessageDeposited`). `this_dn` is the mailbox number, so that
/// per-DN streams see it; `new_messages`/`old_messages` are the mailbox's counts after it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageAttrs {
    pub tenant: String,
    pub this_dn: String,
    pub message_id: String,
    /// The agent or the agent group owning the mailbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_group: Option<String>,
    /// The caller (ANI) who left the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_dn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<ConnId>,
    pub duration_ms: u64,
    pub new_messages: u32,
    pub old_messages: u32,
    #[serde(default)]
    pub user_data: UserData,
    pub ts_ms: u64,
}

/// The `CallAttrs` of every call event, by reference or by mutable reference.
macro_rules! call_attrs {
    ($e:expr) => {
        match $e {
            Event::EventDialing(c)
            | Event::EventRinging(c)
            | Event::EventEstablished(c)
            | Event::EventReleased(c)
            | Event::EventHeld(c)
            | Event::EventRetrieved(c)
            | Event::EventPartyChanged(c)
            | Event::EventPartyAdded(c)
            | Event::EventPartyDeleted(c)
            | Event::EventAttachedDataChanged(c)
            | Event::EventRouteRequest(c)
            | Event::EventQueued(c)
            | Event::EventDiverted(c)
            | Event::EventAbandoned(c)
            | Event::EventTreatmentApplied(c)
            | Event::EventTreatmentEnd(c) => Some(c),
            _ => None,
        }
    };
}

impl Event {
    /// The TLib name, e.g. `EventRinging`.
    pub fn name(&self) -> &'static str {
        macro_rules! names {
            ($($v:ident),*) => { match self { $(Event::$v(_) => stringify!($v),)* } };
        }
        names!(
            EventDialing,
            EventRinging,
            EventEstablished,
            EventReleased,
            EventHeld,
            EventRetrieved,
            EventPartyChanged,
            EventPartyAdded,
            EventPartyDeleted,
            EventAttachedDataChanged,
            EventRouteRequest,
            EventQueued,
            EventDiverted,
            EventAbandoned,
            EventError,
            EventAgentLogin,
            EventAgentLogout,
            EventAgentReady,
            EventAgentNotReady,
            EventAgentAfterCallWork,
            EventAgentReserved,
            EventDNOutOfService,
            EventDNBackInService,
            EventTreatmentApplied,
            EventTreatmentEnd,
            EventMessageDeposited
        )
    }

    pub fn tenant(&self) -> &str {
        match self {
            Event::EventError(e) => &e.tenant,
            Event::EventAgentLogin(a)
            | Event::EventAgentLogout(a)
            | Event::EventAgentReady(a)
            | Event::EventAgentNotReady(a)
            | Event::EventAgentAfterCallWork(a)
            | Event::EventAgentReserved(a) => &a.tenant,
            Event::EventDNOutOfService(d) | Event::EventDNBackInService(d) => &d.tenant,
            Event::EventMessageDeposited(m) => &m.tenant,
            other => other.call().map(|c| c.tenant.as_str()).unwrap_or(""),
        }
    }

    /// The call attributes of a call event.
    pub fn call(&self) -> Option<&CallAttrs> {
        call_attrs!(self)
    }

    /// The call attributes of a call event, to fill in (e.g. the SIP Call-ID of the leg).
    pub fn call_mut(&mut self) -> Option<&mut CallAttrs> {
        call_attrs!(self)
    }

    /// The DN the event is about (its `ThisDN`), for per-DN and per-agent streams.
    pub fn this_dn(&self) -> Option<&str> {
        match self {
            Event::EventError(e) => e.this_dn.as_deref(),
            Event::EventAgentLogin(a)
            | Event::EventAgentLogout(a)
            | Event::EventAgentReady(a)
            | Event::EventAgentNotReady(a)
            | Event::EventAgentAfterCallWork(a)
            | Event::EventAgentReserved(a) => Some(&a.this_dn),
            Event::EventDNOutOfService(d) | Event::EventDNBackInService(d) => Some(&d.this_dn),
            Event::EventMessageDeposited(m) => Some(&m.this_dn),
            other => other.call().map(|c| c.this_dn.as_str()),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"event\":\"unserializable\",\"error\":\"{e}\"}}"))
    }

    pub fn from_json(s: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_round_trip() {
        let e = Event::EventRinging(CallAttrs {
            tenant: "demo".into(),
            conn_id: Some(ConnId(0x00a1_b2c3_d4e5_f601)),
            call_id: Some("abc@host".into()),
            this_dn: "1002".into(),
            other_dn: Some("+15551234567".into()),
            this_role: Some(PartyRole::Destination),
            other_role: Some(PartyRole::Origination),
            call_type: Some(CallType::Inbound),
            ts_ms: 1,
            ..Default::default()
        });
        let j = e.to_json();
        assert!(
            j.starts_with(
                r#"{"event":"EventRinging","tenant":"demo","conn_id":"00a1b2c3d4e5f601""#
            ),
            "{j}"
        );
        assert!(j.contains(r#""this_role":"destination""#));
        assert!(
            !j.contains("agent_id"),
            "absent attributes are omitted: {j}"
        );
        assert_eq!(Event::from_json(&j).unwrap(), e);
        assert_eq!(e.name(), "EventRinging");
        assert_eq!(e.this_dn(), Some("1002"));
    }

    #[test]
    fn route_request_attributes_round_trip() {
        let e = Event::EventRouteRequest(CallAttrs {
            tenant: "demo".into(),
            conn_id: Some(ConnId(7)),
            this_dn: "5000".into(),
            other_dn: Some("+15551234567".into()),
            ani: Some("+15551234567".into()),
            dnis: Some("+15550001000".into()),
            agent_id: None,
            ts_ms: 1,
            ..Default::default()
        });
        let j = e.to_json();
        assert!(
            j.contains(r#""ani":"+15551234567","dnis":"+15550001000""#),
            "{j}"
        );
        assert_eq!(Event::from_json(&j).unwrap(), e);
        // Events written before ANI and DNIS existed still parse.
        let old = r#"{"event":"EventDiverted","tenant":"demo","conn_id":"0000000000000007","this_dn":"5000","third_party_dn":"1002","agent_id":"a1","ts_ms":2}"#;
        let e = Event::from_json(old).unwrap();
        let c = e.call().unwrap();
        assert_eq!(
            (c.ani.as_deref(), c.agent_id.as_deref()),
            (None, Some("a1"))
        );
        assert_eq!(c.third_party_dn.as_deref(), Some("1002"));
    }

    #[test]
    fn conn_id_text() {
        assert_eq!(
            "00a1b2c3d4e5f601".parse::<ConnId>().unwrap(),
            ConnId(0x00a1_b2c3_d4e5_f601)
        );
        assert!("xyz".parse::<ConnId>().is_err());
        assert!(Event::from_json(r#"{"event":"EventNope"}"#).is_err());
    }

    #[test]
    fn message_deposited_round_trip() {
        let mut user_data = UserData::new();
        user_data.insert("case".into(), serde_json::json!("42"));
        let e = Event::EventMessageDeposited(MessageAttrs {
            tenant: "demo".into(),
            this_dn: "8100".into(),
            message_id: "m1".into(),
            owner_agent: None,
            owner_group: Some("sales".into()),
            other_dn: Some("+15551234567".into()),
            conn_id: Some(ConnId(7)),
            duration_ms: 5_000,
            new_messages: 1,
            old_messages: 2,
            user_data,
            ts_ms: 1,
        });
        let j = e.to_json();
        assert!(
            j.starts_with(r#"{"event":"EventMessageDeposited","tenant":"demo","this_dn":"8100""#),
            "{j}"
        );
        assert!(!j.contains("owner_agent"), "{j}");
        assert_eq!(Event::from_json(&j).unwrap(), e);
        assert_eq!(e.name(), "EventMessageDeposited");
        assert_eq!((e.tenant(), e.this_dn()), ("demo", Some("8100")));
        assert!(e.call().is_none());
    }
}
