//! The call model of the SIP Server: a pure reducer `(state, input) -> (state, actions)`
//! (ARCHITECTURE.md, principle 2). No SIP, no sockets, no clock: the SIP core turns messages
//! into [`Input`]s (leg events) and REST requests into [`Input::Request`]s, passes the time in
//! milliseconds, and applies the [`Action`]s (place a leg, answer, re-offer, hang up, publish an
//! event, arm a timer).
//!
//! A call has a [`ConnId`] and parties; each party is one SIP leg ([`LegId`]) of the B2BUA. Only
//! parties on internal DNs get TLib events (the carrier side of an inbound call is a party
//! without events). Media is relayed: the model keeps each leg's last SDP and tells the core
//! which SDP to offer or answer on which leg.
//!
//! DN options come from a [`DnDirectory`] (configuration, read when a call reaches a DN): a
//! route point parks the call without a leg (EventRouteRequest) until [`Request::RouteCall`]
//! or its timeout (default route, else release); an ACD queue parks it the same way
//! (EventQueued) until it is distributed with RouteCall or its optional timeout; a DN that forwards on no answer or busy hands
//! the call on (EventDiverted); events of a DN with an agent carry its AgentID.
//!
//! A call parked at a route point or queue can be given treatments ([`Request::ApplyTreatment`]):
//! a leg to the media server that is not a party ([`TreatmentLeg`]), offered the caller's SDP;
//! its answer answers the caller, or re-offers an answered caller (EventTreatmentApplied); its
//! BYE, cancellation, RouteCall or the caller's hang-up end it (EventTreatmentEnd). The
//! routing timer stops while a treatment plays and every request restarts it.
//!
//! A call that gets a third party (CompleteConference, SingleStepConference) becomes a
//! conference: every party's media moves to the media server's mixer, one leg there per party
//! ([`conference`]).
//!
//! Event sequences (this DN's view) are documented in the README ("The SIP Server").

use bytes::Bytes;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use switchboard_events::{CallAttrs, CallType, ConnId, ErrorAttrs, Event, PartyRole, UserData};

#[path = "conference.rs"]
pub mod conference;

/// One SIP leg of the B2BUA (one dialog, incoming or outgoing). Allocated by the model for the
/// legs it places and by the core for incoming calls (odd/even halves, see [`LegId::incoming`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

impl LegId {
    /// Ids for incoming legs have the top bit set so that they never collide with the ids the
    /// model allocates for outgoing legs.
    pub fn incoming(n: u64) -> LegId {
        LegId(n | 1 << 63)
    }

    pub fn is_incoming(self) -> bool {
        self.0 & 1 << 63 != 0
    }
}

/// Where a new leg goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// An internal DN of the tenant (a registered device, through the SIP edge).
    Dn(String),
    /// An external number, through the node's default gateway (`sip_node.trunks`).
    External(String),
    /// An external number, out on a named trunk of the tenant (chosen by the dial plan).
    Trunk { number: String, trunk: String },
}

impl Dest {
    pub fn number(&self) -> &str {
        match self {
            Dest::Dn(n) | Dest::External(n) | Dest::Trunk { number: n, .. } => n,
        }
    }

    /// The named trunk of an external destination, if it has one.
    pub fn trunk(&self) -> Option<&str> {
        match self {
            Dest::Trunk { trunk, .. } => Some(trunk),
            _ => None,
        }
    }

    /// Whether the destination is a DN of the tenant.
    pub fn is_dn(&self) -> bool {
        matches!(self, Dest::Dn(_))
    }
}

/// A request destination as the core resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Ok(Dest),
    /// Not a number this tenant can reach; the text says why.
    Invalid(String),
}

/// SDP direction for re-offers (hold/retrieve).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartyState {
    Dialing,
    Ringing,
    Established,
    Held,
    /// A route point holding the call until RouteCall or its timeout. Its leg id is the
    /// model's own: no SIP leg is placed (the caller is not answered; it hears ringback).
    AtRoutePoint,
    /// An ACD queue holding the call until RouteCall distributes it or its timeout. Like a
    /// route point it has no SIP leg and the caller is not answered.
    Queued,
}

impl PartyState {
    /// Whether the party is a route point or a queue holding the call (no SIP leg).
    pub fn parked(self) -> bool {
        matches!(self, PartyState::AtRoutePoint | PartyState::Queued)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Party {
    /// DN (internal) or number (external).
    pub dn: String,
    pub internal: bool,
    pub role: PartyRole,
    pub state: PartyState,
    pub leg: LegId,
    /// The last SDP the leg's user agent sent us (offer or answer).
    pub sdp: Option<Bytes>,
    /// Placed by us with auto-answer (the origin of a MakeCall or consult call).
    pub auto: bool,
    /// The named trunk an external party is reached on (`None`: the default gateway).
    pub trunk: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub conn: ConnId,
    pub tenant: String,
    pub call_type: CallType,
    pub parties: Vec<Party>,
    pub user_data: UserData,
    /// The call this consult call was made from, and the DN that made it.
    pub consult_of: Option<(ConnId, String)>,
    /// The calling and the dialled number as the call arrived (TLib ANI and DNIS).
    pub ani: Option<String>,
    pub dnis: Option<String>,
    /// How many times the call was diverted (forwards, routing); bounded by
    /// [`MAX_DIVERSIONS`] so that forwarding loops end.
    pub diversions: u8,
    /// The treatment the media server plays to the call while it waits at a route point or
    /// queue (its leg is not a party: it gets no TLib events of its own).
    pub treatment: Option<TreatmentLeg>,
    /// The leg that a RouteCall from a route point or queue rings, and that route point or
    /// queue: when that leg fails before it answered, the call goes back there (a strategy
    /// routes it again) instead of ending.
    pub routed_from: Option<(LegId, String)>,
    /// The media server's mixer, once the call has had three parties.
    pub conference: Option<Conference>,
    /// A party ringing to join the call (SingleStepConference).
    pub adding: Option<Adding>,
    /// For the consult call of an InitiateConference, that request's id: when the consult
    /// call ends without being merged, the held party of the original call is retrieved.
    pub conference_req: Option<u64>,
    /// Set by a strategy (SetRouteTimeout): how long the call waits while parked at that
    /// route point or queue (also when it comes back there), instead of the DN's timeout.
    pub park_timeout: Option<(String, u64)>,
}

/// The media of a conference: one media-server leg per party, all in the mixer's
/// conference `sip:conf={conn}@mcp` (see [`conference`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conference {
    pub legs: Vec<ConfLeg>,
}

/// A party's leg to the conference: the media server was offered the party's SDP on
/// `media`; its answer is re-offered to the party on `party`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfLeg {
    pub party: LegId,
    pub media: LegId,
}

/// A SingleStepConference in progress: `leg` rings for the new party, added by `by`.
#[derive(Clone, Debug, PartialEq)]
pub struct Adding {
    pub leg: LegId,
    pub by: String,
    pub req: u64,
}

/// A treatment leg: the media server playing to a call parked at a route point or queue.
#[derive(Clone, Debug, PartialEq)]
pub struct TreatmentLeg {
    pub leg: LegId,
    /// The route point or queue the call waits at (ThisDN of the treatment events).
    pub dn: String,
    /// The ApplyTreatment request (`request_id` of EventTreatmentApplied).
    pub req: u64,
    /// The media server answered: EventTreatmentApplied was published.
    pub playing: bool,
}

/// A media-server service: the leg's Request-URI is `sip:{user}@{mcp}{params}` (e.g. user
/// `dialog`, params `;voicexml=...`). Built from a contract treatment by
/// [`super::treatment::media_service`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaService {
    pub user: String,
    pub params: String,
}

/// The most diversions (forward on no answer or busy, RouteCall, a route point's default
/// route) a call takes; one more is refused (a forward is then not taken).
pub const MAX_DIVERSIONS: u8 = 10;

/// What the model needs to know about a DN: read-only configuration the glue looks up in the
/// dial plan when a call reaches the DN. Destinations in it are already resolved.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DnInfo {
    /// Ring-no-answer timeout of legs to the DN; `None`: [`ModelSettings::ring_timeout_ms`].
    pub ring_timeout_ms: Option<u64>,
    /// Where a call goes that rang unanswered for the timeout (EventDiverted).
    pub forward_no_answer: Option<Dest>,
    /// Where a call goes when the DN's phone is busy (486 or 600).
    pub forward_busy: Option<Dest>,
    /// Set for a route point: calls park there instead of ringing.
    pub route_point: Option<RoutePointInfo>,
    /// Set for an ACD queue: calls park there (EventQueued) instead of ringing.
    pub queue: Option<QueueInfo>,
    /// The DN's mailbox: where a call goes that no forward takes when the DN does not
    /// answer, is busy or is not reachable (404, 408, 480); EventDiverted `voicemail`.
    pub voicemail: Option<Dest>,
}

/// How a route point treats a call nobody routes.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePointInfo {
    /// How long the call waits for RouteCall; `None`: [`ModelSettings::route_timeout_ms`].
    pub timeout_ms: Option<u64>,
    /// Where the call goes then; `None`: it is released (the caller gets 480).
    pub default_route: Option<Dest>,
}

/// How an ACD queue treats a call nobody distributes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueInfo {
    /// How long the call waits in the queue; `None`: until it is distributed or abandoned.
    pub timeout_ms: Option<u64>,
    /// Where the call goes then; `None`: it is released (the caller gets 480).
    pub default_route: Option<Dest>,
}

/// The configuration the model reads: DN options and agents. Implemented over the dial plan
/// by the SIP core (`core::NodeDirectory`) and by a table in the reducer's tests.
pub trait DnDirectory: Send + Sync {
    /// The options of DN `dn` of `tenant`; `None` for a number that is not a DN.
    fn dn_info(&self, tenant: &str, dn: &str) -> Option<DnInfo>;
    /// The login id of the agent on DN `dn` of `tenant` (events' AgentID).
    fn agent(&self, tenant: &str, dn: &str) -> Option<String>;
}

/// A directory that knows no DN options and no agents.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDirectory;

impl DnDirectory for NoDirectory {
    fn dn_info(&self, _: &str, _: &str) -> Option<DnInfo> {
        None
    }
    fn agent(&self, _: &str, _: &str) -> Option<String> {
        None
    }
}

/// The model's handle on the directory (configuration, not state: equal when shared).
#[derive(Clone)]
struct Dir(Arc<dyn DnDirectory>);

impl fmt::Debug for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dir")
    }
}

impl PartialEq for Dir {
    fn eq(&self, other: &Dir) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The routing timeout a strategy set for `call` while it waits at `dn`.
fn strategy_timeout(call: &Call, dn: &str) -> Option<u64> {
    call.park_timeout
        .as_ref()
        .filter(|(d, _)| d == dn)
        .map(|(_, ms)| *ms)
}

impl Party {
    /// False for the destination of a MakeCall or consult call while its origin has not
    /// answered yet: no INVITE went out and no event named it.
    fn placed(&self) -> bool {
        self.auto || self.leg.is_incoming() || self.state != PartyState::Dialing
    }

    /// Where a new leg to this party goes.
    fn dest(&self) -> Dest {
        match (self.internal, &self.trunk) {
            (true, _) => Dest::Dn(self.dn.clone()),
            (false, Some(trunk)) => Dest::Trunk {
                number: self.dn.clone(),
                trunk: trunk.clone(),
            },
            (false, None) => Dest::External(self.dn.clone()),
        }
    }
}

impl Call {
    fn party(&self, dn: &str) -> Option<usize> {
        self.parties.iter().position(|p| p.dn == dn)
    }

    fn by_leg(&self, leg: LegId) -> Option<usize> {
        self.parties.iter().position(|p| p.leg == leg)
    }

    /// The other party of a two-party view: the first party that is not `i`.
    fn other(&self, i: usize) -> Option<usize> {
        (0..self.parties.len()).find(|&j| j != i)
    }
}

/// Call-control requests (TLib requests), each with a request id chosen by the caller.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    MakeCall {
        dn: String,
        to: Resolved,
    },
    Answer {
        conn: ConnId,
        dn: String,
    },
    Release {
        conn: ConnId,
        dn: String,
    },
    Hold {
        conn: ConnId,
        dn: String,
    },
    Retrieve {
        conn: ConnId,
        dn: String,
    },
    SingleStepTransfer {
        conn: ConnId,
        dn: String,
        to: Resolved,
    },
    InitiateTransfer {
        conn: ConnId,
        dn: String,
        to: Resolved,
    },
    CompleteTransfer {
        conn: ConnId,
        dn: String,
    },
    /// A consult call like InitiateTransfer, to be merged by CompleteConference.
    InitiateConference {
        conn: ConnId,
        dn: String,
        to: Resolved,
    },
    CompleteConference {
        conn: ConnId,
        dn: String,
    },
    SingleStepConference {
        conn: ConnId,
        dn: String,
        to: Resolved,
    },
    /// Party `party` leaves the conference (DeleteFromConference).
    DeleteFromConference {
        conn: ConnId,
        dn: String,
        party: String,
    },
    AttachUserData {
        conn: ConnId,
        dn: String,
        data: UserData,
    },
    UpdateUserData {
        conn: ConnId,
        dn: String,
        data: UserData,
    },
    /// Deletes the keys listed; all keys when empty.
    DeleteUserData {
        conn: ConnId,
        dn: String,
        keys: Vec<String>,
    },
    SendDtmf {
        conn: ConnId,
        dn: String,
        digits: String,
    },
    /// RouteCall (TLib TRouteCall, route type default): the call waiting at route point `dn`
    /// goes to `to`.
    RouteCall {
        conn: ConnId,
        dn: String,
        to: Resolved,
    },
    /// ApplyTreatment: the media server plays `service` to the call waiting at route point or
    /// queue `dn` (the caller is answered with the media server's SDP if it was not).
    ApplyTreatment {
        conn: ConnId,
        dn: String,
        service: MediaService,
    },
    /// CancelTreatment: the treatment playing to the call at `dn` stops.
    CancelTreatment {
        conn: ConnId,
        dn: String,
    },
    /// SetRouteTimeout: the call parked at `dn` waits `ms` from now (`None`: the DN's own
    /// timeout).
    SetRouteTimeout {
        conn: ConnId,
        dn: String,
        ms: Option<u64>,
    },
}

impl Request {
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Request::MakeCall { .. } => None,
            Request::Answer { conn, .. }
            | Request::Release { conn, .. }
            | Request::Hold { conn, .. }
            | Request::Retrieve { conn, .. }
            | Request::SingleStepTransfer { conn, .. }
            | Request::InitiateTransfer { conn, .. }
            | Request::CompleteTransfer { conn, .. }
            | Request::InitiateConference { conn, .. }
            | Request::CompleteConference { conn, .. }
            | Request::SingleStepConference { conn, .. }
            | Request::DeleteFromConference { conn, .. }
            | Request::AttachUserData { conn, .. }
            | Request::UpdateUserData { conn, .. }
            | Request::DeleteUserData { conn, .. }
            | Request::SendDtmf { conn, .. }
            | Request::RouteCall { conn, .. }
            | Request::ApplyTreatment { conn, .. }
            | Request::CancelTreatment { conn, .. }
            | Request::SetRouteTimeout { conn, .. } => Some(*conn),
        }
    }

    pub fn dn(&self) -> &str {
        match self {
            Request::MakeCall { dn, .. }
            | Request::Answer { dn, .. }
            | Request::Release { dn, .. }
            | Request::Hold { dn, .. }
            | Request::Retrieve { dn, .. }
            | Request::SingleStepTransfer { dn, .. }
            | Request::InitiateTransfer { dn, .. }
            | Request::CompleteTransfer { dn, .. }
            | Request::InitiateConference { dn, .. }
            | Request::CompleteConference { dn, .. }
            | Request::SingleStepConference { dn, .. }
            | Request::DeleteFromConference { dn, .. }
            | Request::AttachUserData { dn, .. }
            | Request::UpdateUserData { dn, .. }
            | Request::DeleteUserData { dn, .. }
            | Request::SendDtmf { dn, .. }
            | Request::RouteCall { dn, .. }
            | Request::ApplyTreatment { dn, .. }
            | Request::CancelTreatment { dn, .. }
            | Request::SetRouteTimeout { dn, .. } => dn,
        }
    }
}

/// What the model is told.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A new INVITE, resolved by the core: from an internal DN (`caller_internal`) or from
    /// outside, to `to`.
    Incoming {
        leg: LegId,
        tenant: String,
        caller: String,
        caller_internal: bool,
        /// The number the caller dialled (before translation; DNIS).
        dialed: String,
        to: Resolved,
        sdp: Option<Bytes>,
    },
    /// 180/183 on a leg we placed.
    Ringing { leg: LegId },
    /// 2xx on a leg we placed (with the SDP in it).
    Answered { leg: LegId, sdp: Option<Bytes> },
    /// A final non-2xx on a leg we placed (408 for a timeout, 503 for a transport error).
    Failed { leg: LegId, code: u16 },
    /// The far end hung up (BYE, or CANCEL of an incoming leg).
    HungUp { leg: LegId },
    /// The media server hung up a treatment leg (the application exited): `results` from the
    /// BYE's body ([`super::treatment::exit_results`]).
    TreatmentExit { leg: LegId, results: UserData },
    /// The answer to a re-offer ([`Action::Reoffer`]) arrived (`ok`) or it was refused.
    ReofferDone {
        leg: LegId,
        ok: bool,
        sdp: Option<Bytes>,
    },
    /// The ring-no-answer timer of a leg fired (for a route point: its routing timeout).
    RingTimeout { leg: LegId },
    /// A device sent a re-INVITE with an offer on an established leg (its own hold or
    /// retrieve, a media change): relayed to the other party, answered with
    /// [`Action::AnswerReoffer`].
    DeviceReoffer { leg: LegId, sdp: Bytes },
    Request {
        id: u64,
        tenant: String,
        req: Request,
    },
}

/// What the core must do.
// Events are the common action; boxing them would allocate for each one.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Publish an event; `leg` names the DN's leg (the core fills the SIP Call-ID).
    Publish {
        event: Event,
        leg: Option<LegId>,
    },
    /// Send an INVITE for a new leg. `sdp: None` is an offerless INVITE. `from` is the calling
    /// number shown to the callee. `auto_answer` adds Call-Info/Alert-Info auto-answer headers.
    PlaceLeg {
        leg: LegId,
        tenant: String,
        dest: Dest,
        from: String,
        sdp: Option<Bytes>,
        auto_answer: bool,
    },
    /// Send an INVITE to the media server (`sip_node.mcp`) for a treatment: Request-URI
    /// from `service`, From the caller `from`, To the route point or queue `to`, offering
    /// `sdp`.
    PlaceMediaLeg {
        leg: LegId,
        tenant: String,
        service: MediaService,
        from: String,
        to: String,
        sdp: Bytes,
    },
    /// 180 Ringing on an incoming leg.
    Ring {
        leg: LegId,
    },
    /// 200 OK on an incoming leg, with this SDP.
    Answer {
        leg: LegId,
        sdp: Option<Bytes>,
    },
    /// A final error response on an incoming leg.
    Reject {
        leg: LegId,
        code: u16,
    },
    /// End a leg: BYE when established, CANCEL when ours and ringing, 487 when incoming and
    /// unanswered.
    Hangup {
        leg: LegId,
    },
    /// Re-INVITE a leg: offer `sdp` (or, when `None`, the last SDP we sent on the leg) with
    /// the direction changed.
    Reoffer {
        leg: LegId,
        sdp: Option<Bytes>,
        direction: Direction,
    },
    /// Answer a device's re-INVITE ([`Input::DeviceReoffer`]): `200` with `sdp`, or, when
    /// `sdp` is `None`, with the media last sent on the leg in the mirrored direction; any
    /// other code refuses it (`491` while another media change is in progress).
    AnswerReoffer {
        leg: LegId,
        code: u16,
        sdp: Option<Bytes>,
    },
    /// Ask a ringing phone to answer (NOTIFY Event: talk).
    AnswerRemote {
        leg: LegId,
    },
    /// Send DTMF on a leg (SIP INFO application/dtmf-relay).
    SendDtmf {
        leg: LegId,
        digits: String,
    },
    StartRingTimer {
        leg: LegId,
        ms: u64,
    },
    CancelRingTimer {
        leg: LegId,
    },
    /// A call was created / ended (the glue keeps an index for REST look-ups).
    CallStarted {
        conn: ConnId,
        tenant: String,
    },
    CallEnded {
        conn: ConnId,
    },
}

/// What an in-flight re-offer is for.
#[derive(Clone, Debug, PartialEq)]
enum LegOp {
    Hold {
        conn: ConnId,
        dn: String,
        req: u64,
    },
    Retrieve {
        conn: ConnId,
        dn: String,
        req: u64,
    },
    /// Media re-bridging after a transfer or 3pcc answer: no event.
    Bridge,
    /// A device's re-INVITE on `from`, relayed to this leg; `direction` is what it offered.
    Relay {
        from: LegId,
        direction: Direction,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSettings {
    /// Ring-no-answer timeout for legs to DNs and external numbers.
    pub ring_timeout_ms: u64,
    /// High 16 bits of every ConnId (the node number).
    pub node: u16,
    /// How long a call waits at a route point without its own timeout.
    pub route_timeout_ms: u64,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            ring_timeout_ms: 30_000,
            node: 1,
            route_timeout_ms: 10_000,
        }
    }
}

/// The state: every call of the node.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    settings: ModelSettings,
    dir: Dir,
    calls: HashMap<ConnId, Call>,
    legs: HashMap<LegId, ConnId>,
    ops: HashMap<LegId, LegOp>,
    next_conn: u64,
    next_leg: u64,
}

/// Stable error codes of EventError.
pub mod codes {
    pub const NO_SUCH_CALL: &str = "no_such_call";
    pub const NO_SUCH_PARTY: &str = "no_such_party";
    pub const BAD_STATE: &str = "bad_state";
    pub const INVALID_DESTINATION: &str = "invalid_destination";
    pub const REFUSED: &str = "refused_by_device";
    pub const BAD_ARGUMENT: &str = "bad_argument";
    /// The media server refused or did not answer a treatment leg.
    pub const MEDIA_SERVER_FAILED: &str = "media_server_failed";
}

type Out = Vec<Action>;

/// Why a ringing leg to a DN may be forwarded.
#[derive(Clone, Copy, Debug)]
enum Forward {
    NoAnswer,
    /// The leg failed with this code (486 and 600 are busy).
    Failed(u16),
}

/// A validated request on an existing call: who asks (`party`, index `i`) and the other
/// party, for the request's own checks and its EventError.
struct ReqCtx {
    id: u64,
    tenant: String,
    dn: String,
    conn: ConnId,
    i: usize,
    party: Party,
    other: Option<Party>,
    now: u64,
}

impl ReqCtx {
    fn err(&self, out: &mut Out, code: &str, reason: &str) {
        error(
            out,
            &self.tenant,
            Some(self.conn),
            &self.dn,
            self.id,
            code,
            reason,
            self.now,
        )
    }

    fn bad_state(&self, out: &mut Out, what: &str) {
        let reason = format!("{what} (the party is {:?})", self.party.state).to_lowercase();
        self.err(out, codes::BAD_STATE, &reason)
    }

    /// A transfer destination: a resolved number other than the acting DN.
    fn destination(&self, to: Resolved, out: &mut Out) -> Option<Dest> {
        match to {
            Resolved::Invalid(why) => {
                self.err(out, codes::INVALID_DESTINATION, &why);
                None
            }
            Resolved::Ok(d) if d.number() == self.dn => {
                self.err(
                    out,
                    codes::INVALID_DESTINATION,
                    "cannot transfer a call to the transferring DN",
                );
                None
            }
            Resolved::Ok(d) => Some(d),
        }
    }
}

impl Model {
    /// A model that knows no DN options or agents (see [`Model::with_directory`]).
    pub fn new(settings: ModelSettings) -> Model {
        Model::with_directory(settings, Arc::new(NoDirectory))
    }

    /// A model that reads DN options (route points, forwarding, ring timeouts) and agents
    /// from `dir`.
    pub fn with_directory(settings: ModelSettings, dir: Arc<dyn DnDirectory>) -> Model {
        Model {
            settings,
            dir: Dir(dir),
            calls: HashMap::new(),
            legs: HashMap::new(),
            ops: HashMap::new(),
            next_conn: 1,
            next_leg: 1,
        }
    }

    pub fn call(&self, conn: ConnId) -> Option<&Call> {
        self.calls.get(&conn)
    }

    pub fn calls(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }

    pub fn call_of_leg(&self, leg: LegId) -> Option<ConnId> {
        self.legs.get(&leg).copied()
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    fn new_conn(&mut self) -> ConnId {
        let c = ConnId((self.settings.node as u64) << 48 | self.next_conn);
        self.next_conn += 1;
        c
    }

    fn new_leg(&mut self) -> LegId {
        let l = LegId(self.next_leg);
        self.next_leg += 1;
        l
    }

    /// The reducer: applies `input` at `now_ms` (Unix milliseconds, for event timestamps) and
    /// appends what to do to `out`.
    pub fn handle(&mut self, input: Input, now_ms: u64, out: &mut Out) {
        let first = out.len();
        match input {
            Input::Incoming {
                leg,
                tenant,
                caller,
                caller_internal,
                dialed,
                to,
                sdp,
            } => self.incoming(
                leg,
                tenant,
                caller,
                caller_internal,
                dialed,
                to,
                sdp,
                now_ms,
                out,
            ),
            // The media server's legs are not parties: their own transitions.
            Input::Answered { leg, sdp } if self.treatment_call(leg).is_some() => {
                self.treatment_answered(leg, sdp, now_ms, out)
            }
            Input::Failed { leg, code } if self.treatment_call(leg).is_some() => {
                self.treatment_failed(leg, code, now_ms, out)
            }
            Input::HungUp { leg } if self.treatment_call(leg).is_some() => {
                self.treatment_exit(leg, UserData::new(), now_ms, out)
            }
            Input::TreatmentExit { leg, results } => self.treatment_exit(leg, results, now_ms, out),
            // So are its legs to a conference's mixer.
            Input::Answered { leg, sdp } if self.conf_call(leg).is_some() => {
                self.conf_answered(leg, sdp, out)
            }
            Input::Failed { leg, code } if self.conf_call(leg).is_some() => {
                self.conf_leg_gone(leg, Some(code))
            }
            Input::HungUp { leg } if self.conf_call(leg).is_some() => self.conf_leg_gone(leg, None),
            Input::Ringing { leg } => self.ringing(leg, now_ms, out),
            Input::Answered { leg, sdp } => self.answered(leg, sdp, now_ms, out),
            Input::Failed { leg, code } => {
                if !self.forward(leg, Forward::Failed(code), now_ms, out) {
                    self.leg_gone(leg, Some(code), now_ms, out)
                }
            }
            Input::HungUp { leg } => self.leg_gone(leg, None, now_ms, out),
            Input::RingTimeout { leg } => self.ring_timeout(leg, now_ms, out),
            Input::ReofferDone { leg, ok, sdp } => self.reoffer_done(leg, ok, sdp, now_ms, out),
            Input::DeviceReoffer { leg, sdp } => self.device_reoffer(leg, sdp, out),
            Input::Request { id, tenant, req } => self.request(id, tenant, req, now_ms, out),
        }
        self.fill_agents(&mut out[first..]);
    }

    /// AgentID of every call event for a DN with an agent.
    fn fill_agents(&self, actions: &mut [Action]) {
        for a in actions {
            if let Action::Publish { event, .. } = a {
                if let Some(c) = event.call_mut().filter(|c| c.agent_id.is_none()) {
                    c.agent_id = self.dir.0.agent(&c.tenant, &c.this_dn);
                }
            }
        }
    }

    /// The ring timer of a leg fired: a ringing leg is given up (forwarded when its DN
    /// forwards on no answer); a route point's call takes the default route or is released.
    fn ring_timeout(&mut self, leg: LegId, now: u64, out: &mut Out) {
        let Some((call, p)) = self.party_of(leg) else {
            return;
        };
        match p.state {
            PartyState::Ringing | PartyState::Dialing => {
                out.push(Action::Hangup { leg });
                if !self.forward(leg, Forward::NoAnswer, now, out) {
                    self.leg_gone(leg, Some(408), now, out);
                }
            }
            PartyState::AtRoutePoint | PartyState::Queued => {
                if call.treatment.as_ref().is_some_and(|t| t.dn == p.dn) {
                    // A strategy is treating the call: its timer restarts when it ends.
                    return;
                }
                let (conn, dn, state) = (call.conn, p.dn.clone(), p.state);
                let Some(i) = call.by_leg(leg) else { return };
                let info = self.dir.0.dn_info(&call.tenant, &dn);
                let (default, reason) = if state == PartyState::Queued {
                    let d = info.and_then(|d| d.queue?.default_route);
                    (d, "queue_timeout")
                } else {
                    let d = info.and_then(|d| d.route_point?.default_route);
                    (d, "route_timeout")
                };
                let default = default.filter(|d| d.number() != dn);
                tracing::info!(conn_id = %conn, tenant = %call.tenant, dn = %dn, reason,
                    default_route = default.as_ref().map(Dest::number), "nobody routed the call in time");
                if let Some(dest) = default {
                    if self.divert(conn, i, dest, Some(reason), None, now, out) {
                        return;
                    }
                }
                self.leg_gone_why(leg, Some(480), Some(reason.into()), now, out);
            }
            PartyState::Established | PartyState::Held => {}
        }
    }

    /// A DN destination that rang unanswered or was busy, with a forward for that: the call
    /// is diverted to the forward target. False when no forward applies.
    fn forward(&mut self, leg: LegId, why: Forward, now: u64, out: &mut Out) -> bool {
        let Some((call, p)) = self.party_of(leg) else {
            return false;
        };
        let candidate = p.internal
            && !self.is_adding(leg)
            && !p.auto
            && !p.leg.is_incoming()
            && p.role == PartyRole::Destination
            && matches!(p.state, PartyState::Ringing | PartyState::Dialing);
        if !candidate {
            return false;
        }
        let Some(info) = self.dir.0.dn_info(&call.tenant, &p.dn) else {
            return false;
        };
        let (reason, target) = match why {
            Forward::NoAnswer if info.forward_no_answer.is_some() => {
                ("forward_no_answer", info.forward_no_answer)
            }
            Forward::Failed(486 | 600) if info.forward_busy.is_some() => {
                ("forward_busy", info.forward_busy)
            }
            Forward::NoAnswer | Forward::Failed(404 | 408 | 480 | 486 | 600) => {
                ("voicemail", info.voicemail)
            }
            Forward::Failed(_) => return false,
        };
        let Some(dest) = target.filter(|d| d.number() != p.dn) else {
            return false;
        };
        let (conn, Some(i)) = (call.conn, call.by_leg(leg)) else {
            return false;
        };
        tracing::info!(conn_id = %conn, tenant = %call.tenant, dn = %p.dn, to = dest.number(), reason, "forwarding");
        self.divert(conn, i, dest, Some(reason), None, now, out)
    }

    /// Party `i` of call `conn` (a route point, or a DN that forwards) hands the call to
    /// `dest`: EventDiverted for it (`third_party_dn` the destination), then the destination
    /// rings or parks ([`Model::start_party`]). False, with nothing done, once the call was
    /// diverted [`MAX_DIVERSIONS`] times.
    #[allow(clippy::too_many_arguments)]
    fn divert(
        &mut self,
        conn: ConnId,
        i: usize,
        dest: Dest,
        reason: Option<&str>,
        req: Option<u64>,
        now: u64,
        out: &mut Out,
    ) -> bool {
        let Some(call) = self.calls.get(&conn) else {
            return false;
        };
        if call.diversions >= MAX_DIVERSIONS || i >= call.parties.len() {
            tracing::warn!(conn_id = %conn, tenant = %call.tenant, "too many diversions: not diverting");
            return false;
        }
        // A treatment playing at the DN the call leaves ends first.
        if call
            .treatment
            .as_ref()
            .is_some_and(|t| t.dn == call.parties[i].dn)
        {
            self.with_call(conn, |m, call| {
                m.end_treatment(call, "routed", req, now, out)
            });
        }
        let Some(call) = self.calls.get_mut(&conn) else {
            return false;
        };
        call.diversions += 1;
        let old = call.parties[i].clone();
        self.legs.remove(&old.leg);
        self.ops.remove(&old.leg);
        out.push(Action::CancelRingTimer { leg: old.leg });
        if old.internal {
            let mut a = attrs(call, i, now, req, reason.map(str::to_owned));
            a.third_party_dn = Some(dest.number().to_string());
            out.push(Action::Publish {
                event: Event::EventDiverted(a),
                leg: Some(old.leg),
            });
        }
        self.start_party(conn, i, dest, Some(old.dn.clone()), now, out);
        // A RouteCall's destination that fails before answering sends the call back.
        if let Some(call) = self.calls.get_mut(&conn) {
            call.routed_from = call
                .parties
                .get(i)
                .filter(|p| req.is_some() && old.state.parked() && !p.state.parked())
                .map(|p| (p.leg, old.dn));
        }
        true
    }

    /// Party `i` of call `conn` (replaced, or appended when `i` is the number of parties)
    /// becomes `dest`: a route point parks the call (EventRouteRequest; the routing timer;
    /// an unanswered incoming caller gets 180 and waits), anything else gets a new leg
    /// offered the other party's SDP and rung for the DN's ring timeout (EventRinging).
    /// `third` is the DN the call came from (ThirdPartyDN).
    fn start_party(
        &mut self,
        conn: ConnId,
        i: usize,
        dest: Dest,
        third: Option<String>,
        now: u64,
        out: &mut Out,
    ) {
        let leg = self.new_leg();
        let Some(call) = self.calls.get_mut(&conn) else {
            return;
        };
        let info = match &dest {
            Dest::Dn(dn) => self.dir.0.dn_info(&call.tenant, dn),
            _ => None,
        }
        .unwrap_or_default();
        let other = call.other(i).map(|o| call.parties[o].clone());
        let party = Party {
            dn: dest.number().to_string(),
            internal: dest.is_dn(),
            trunk: dest.trunk().map(str::to_owned),
            role: PartyRole::Destination,
            state: match (&info.route_point, &info.queue) {
                (Some(_), _) => PartyState::AtRoutePoint,
                (None, Some(_)) => PartyState::Queued,
                (None, None) => PartyState::Ringing,
            },
            leg,
            sdp: None,
            auto: false,
        };
        match call.parties.get_mut(i) {
            Some(p) => {
                let old = std::mem::replace(p, party);
                self.legs.remove(&old.leg);
                self.ops.remove(&old.leg);
            }
            None => call.parties.push(party),
        }
        self.legs.insert(leg, conn);
        // A route point or a queue parks the call: no leg, an unanswered incoming caller
        // hears ringback.
        let ringback = other
            .as_ref()
            .filter(|o| o.state == PartyState::Dialing && o.leg.is_incoming() && !o.auto)
            .map(|o| Action::Ring { leg: o.leg });
        let mk: fn(CallAttrs) -> Event = match (info.route_point, info.queue) {
            (Some(rp), _) => {
                let ms = rp.timeout_ms.unwrap_or(self.settings.route_timeout_ms);
                out.push(Action::StartRingTimer {
                    leg,
                    ms: strategy_timeout(call, dest.number()).unwrap_or(ms),
                });
                out.extend(ringback);
                tracing::info!(conn_id = %conn, tenant = %call.tenant, route_point = dest.number(), "call waits at a route point");
                Event::EventRouteRequest
            }
            (None, Some(q)) => {
                if let Some(ms) = strategy_timeout(call, dest.number()).or(q.timeout_ms) {
                    out.push(Action::StartRingTimer { leg, ms });
                }
                out.extend(ringback);
                tracing::info!(conn_id = %conn, tenant = %call.tenant, queue = dest.number(), "call waits in a queue");
                Event::EventQueued
            }
            (None, None) => {
                out.push(Action::PlaceLeg {
                    leg,
                    tenant: call.tenant.clone(),
                    from: other
                        .as_ref()
                        .map_or_else(|| "anonymous".to_string(), |o| o.dn.clone()),
                    sdp: other.and_then(|o| o.sdp),
                    dest,
                    auto_answer: false,
                });
                out.push(Action::StartRingTimer {
                    leg,
                    ms: info
                        .ring_timeout_ms
                        .unwrap_or(self.settings.ring_timeout_ms),
                });
                Event::EventRinging
            }
        };
        let call = &self.calls[&conn];
        ev_third(out, call, i, mk, now, None, third.as_deref());
    }

    fn party_of(&self, leg: LegId) -> Option<(&Call, &Party)> {
        let call = self.calls.get(self.legs.get(&leg)?)?;
        let p = &call.parties[call.by_leg(leg)?];
        Some((call, p))
    }

    #[allow(clippy::too_many_arguments)]
    fn incoming(
        &mut self,
        leg: LegId,
        tenant: String,
        caller: String,
        caller_internal: bool,
        dialed: String,
        to: Resolved,
        sdp: Option<Bytes>,
        now: u64,
        out: &mut Out,
    ) {
        let dest = match to {
            Resolved::Ok(d) => d,
            Resolved::Invalid(_) => {
                out.push(Action::Reject { leg, code: 404 });
                return;
            }
        };
        let conn = self.new_conn();
        let call_type = match (caller_internal, &dest) {
            (true, Dest::Dn(_)) => CallType::Internal,
            (true, _) => CallType::Outbound,
            (false, _) => CallType::Inbound,
        };
        let b = self.new_leg();
        let call = Call {
            conn,
            tenant: tenant.clone(),
            call_type,
            parties: vec![
                Party {
                    dn: caller.clone(),
                    internal: caller_internal,
                    trunk: None,
                    role: PartyRole::Origination,
                    state: PartyState::Dialing,
                    leg,
                    sdp,
                    auto: false,
                },
                // Stands for the destination in the caller's EventDialing; replaced by
                // `start_party` below.
                Party {
                    dn: dest.number().to_string(),
                    internal: dest.is_dn(),
                    trunk: dest.trunk().map(str::to_owned),
                    role: PartyRole::Destination,
                    state: PartyState::Ringing,
                    leg: b,
                    sdp: None,
                    auto: false,
                },
            ],
            user_data: UserData::new(),
            consult_of: None,
            ani: Some(caller),
            dnis: Some(dialed),
            diversions: 0,
            routed_from: None,
            park_timeout: None,
            treatment: None,
            conference: None,
            adding: None,
            conference_req: None,
        };
        self.legs.insert(leg, conn);
        out.push(Action::CallStarted { conn, tenant });
        ev(out, &call, 0, Event::EventDialing, now, None, None);
        self.calls.insert(conn, call);
        // The destination rings, or the call waits at a route point.
        self.start_party(conn, 1, dest, None, now, out);
    }

    fn ringing(&mut self, leg: LegId, _now: u64, out: &mut Out) {
        let Some(conn) = self.legs.get(&leg).copied() else {
            return;
        };
        let Some(call) = self.calls.get(&conn) else {
            return;
        };
        let Some(i) = call.by_leg(leg) else { return };
        // Tell an incoming caller waiting on this leg that it rings.
        if let Some(o) = call.other(i) {
            let op = &call.parties[o];
            if op.state == PartyState::Dialing && !op.auto && op.role == PartyRole::Origination {
                out.push(Action::Ring { leg: op.leg });
            }
        }
    }

    fn answered(&mut self, leg: LegId, sdp: Option<Bytes>, now: u64, out: &mut Out) {
        let Some(conn) = self.legs.get(&leg).copied() else {
            out.push(Action::Hangup { leg });
            return;
        };
        let Some(call) = self.calls.get_mut(&conn) else {
            return;
        };
        let Some(i) = call.by_leg(leg) else { return };
        out.push(Action::CancelRingTimer { leg });
        call.parties[i].sdp = sdp.clone();
        let was = call.parties[i].state;
        call.parties[i].state = PartyState::Established;
        if call.adding.as_ref().is_some_and(|a| a.leg == leg) {
            return self.added_answered(conn, leg, now, out);
        }
        if call.parties[i].auto {
            // The origin of a MakeCall / consult call answered: now call the destination
            // with its SDP (RFC 3725 style; the core ACKed the 2xx already).
            let Some(dest) = call.parties.get(i + 1).map(Party::dest) else {
                return;
            };
            // The destination rings (or the call parks at a route point).
            return self.start_party(conn, i + 1, dest, None, now, out);
        }
        if was != PartyState::Ringing && was != PartyState::Dialing {
            return;
        }
        let Some(o) = call.other(i) else { return };
        let other = call.parties[o].clone();
        if other.auto || other.state == PartyState::Established {
            // The other side is a leg we already answered (3pcc origin, or a transfer): give
            // it the new party's media with a re-offer.
            if other.state == PartyState::Established {
                out.push(Action::Reoffer {
                    leg: other.leg,
                    sdp,
                    direction: Direction::SendRecv,
                });
                self.ops.insert(other.leg, LegOp::Bridge);
            }
        } else {
            out.push(Action::Answer {
                leg: other.leg,
                sdp,
            });
            call.parties[o].state = PartyState::Established;
        }
        let call = &self.calls[&conn];
        ev(out, call, i, Event::EventEstablished, now, None, None);
        if other.state != PartyState::Established || other.auto {
            ev(out, call, o, Event::EventEstablished, now, None, None);
        }
    }

    /// A leg ended: by failure (`code`) or hang-up. The call ends when fewer than two parties
    /// remain (or the remaining one has nobody to talk to).
    fn leg_gone(&mut self, leg: LegId, code: Option<u16>, now: u64, out: &mut Out) {
        self.leg_gone_why(leg, code, code.map(|c| format!("sip {c}")), now, out)
    }

    /// [`Model::leg_gone`] with the `reason` of the events.
    fn leg_gone_why(
        &mut self,
        leg: LegId,
        code: Option<u16>,
        reason: Option<String>,
        now: u64,
        out: &mut Out,
    ) {
        let Some(conn) = self.legs.remove(&leg) else {
            return;
        };
        self.ops.remove(&leg);
        let Some(mut call) = self.calls.remove(&conn) else {
            return;
        };
        let Some(i) = call.by_leg(leg) else {
            self.calls.insert(conn, call);
            return;
        };
        out.push(Action::CancelRingTimer { leg });
        if call.treatment.is_some() {
            let why = if call.parties[i].state.parked() {
                reason.clone().unwrap_or_else(|| "released".into())
            } else {
                "caller_hangup".into()
            };
            self.end_treatment(&mut call, &why, None, now, out);
        }
        let gone_state = call.parties[i].state;
        let caller_waiting = call
            .other(i)
            .map(|o| call.parties[o].clone())
            .filter(|o| o.state == PartyState::Dialing && o.leg.is_incoming());
        ev(
            out,
            &call,
            i,
            Event::EventReleased,
            now,
            None,
            reason.clone(),
        );
        // The destination of a RouteCall failed before answering (busy, no answer, refused):
        // the call goes back to the route point or queue it came from, the caller keeps
        // waiting there for the next routing decision.
        let back = call
            .routed_from
            .as_ref()
            .filter(|(l, _)| *l == leg)
            .filter(|_| matches!(gone_state, PartyState::Ringing | PartyState::Dialing))
            .filter(|_| call.diversions < MAX_DIVERSIONS && call.other(i).is_some())
            .map(|(_, dn)| dn.clone());
        if let Some(dn) = back {
            call.routed_from = None;
            call.diversions += 1;
            let failed = call.parties[i].dn.clone();
            tracing::info!(conn_id = %conn, tenant = %call.tenant, dn = %failed, back_to = %dn, "the routed call was not answered: back to where it was routed from");
            self.calls.insert(conn, call);
            self.start_party(conn, i, Dest::Dn(dn), Some(failed), now, out);
            return;
        }
        // An incoming caller still waiting for an answer gets the failure code.
        if let Some(c) = caller_waiting.filter(|_| gone_state != PartyState::Established) {
            let code = match code {
                Some(c @ 400..=699) if c != 408 && c != 487 => c,
                _ => 480,
            };
            out.push(Action::Reject { leg: c.leg, code });
            self.legs.remove(&c.leg);
            if let Some(ci) = call.by_leg(c.leg) {
                ev(out, &call, ci, Event::EventReleased, now, None, reason);
                call.parties.remove(ci);
            }
        }
        let Some(i) = call.by_leg(leg) else { return };
        let gone = call.parties.remove(i);
        if call.parties.len() >= 2 {
            self.party_left(&mut call, &gone, None, None, now, out);
            self.calls.insert(conn, call);
            return;
        }
        self.end_call(call, Some(gone), now, out);
    }

    /// A call with fewer than two parties ends: the ones left are hung up and released (with
    /// `gone`, the party that left, as their OtherDN). A destination of a MakeCall that was
    /// never placed gets neither a hang-up nor an event: nobody saw it.
    fn end_call(&mut self, mut call: Call, gone: Option<Party>, now: u64, out: &mut Out) {
        self.end_treatment(&mut call, "released", None, now, out);
        self.end_conference(&mut call, out);
        for p in std::mem::take(&mut call.parties) {
            self.legs.remove(&p.leg);
            self.ops.remove(&p.leg);
            out.push(Action::CancelRingTimer { leg: p.leg });
            if !p.placed() {
                continue;
            }
            // A route point or a queue has no leg to hang up; its caller left: EventAbandoned.
            let parked = p.state.parked();
            if !parked {
                out.push(Action::Hangup { leg: p.leg });
            }
            let tmp = Call {
                parties: std::iter::once(p).chain(gone.clone()).collect(),
                ..call.clone()
            };
            let mk = if parked {
                Event::EventAbandoned
            } else {
                Event::EventReleased
            };
            ev(out, &tmp, 0, mk, now, None, None);
        }
        out.push(Action::CallEnded { conn: call.conn });
        if let Some(req) = call.conference_req {
            self.retrieve_after_consult(&call, req, out);
        }
    }

    fn reoffer_done(&mut self, leg: LegId, ok: bool, sdp: Option<Bytes>, now: u64, out: &mut Out) {
        let op = self.ops.remove(&leg);
        // An answer to a hold (recvonly or inactive) is not the party's media for later
        // offers: a transfer would offer a new party one-way media.
        let holding = matches!(
            op,
            Some(LegOp::Hold { .. })
                | Some(LegOp::Relay {
                    direction: Direction::SendOnly | Direction::Inactive,
                    ..
                })
        );
        let answer = sdp.clone();
        let sdp = sdp.filter(|_| !holding);
        if let (Some(sdp), Some(conn)) = (sdp, self.legs.get(&leg)) {
            if let Some(call) = self.calls.get_mut(conn) {
                if let Some(i) = call.by_leg(leg) {
                    call.parties[i].sdp = Some(sdp);
                }
            }
        }
        let (conn, dn, req, held) = match op {
            Some(LegOp::Hold { conn, dn, req }) => (conn, dn, req, true),
            Some(LegOp::Retrieve { conn, dn, req }) => (conn, dn, req, false),
            Some(LegOp::Relay { from, direction }) => {
                return self.relay_done(from, direction, ok, answer, now, out)
            }
            _ => return,
        };
        let Some(call) = self.calls.get_mut(&conn) else {
            return;
        };
        let tenant = call.tenant.clone();
        let Some(i) = call.party(&dn) else { return };
        if !ok {
            return error(
                out,
                &tenant,
                Some(conn),
                &dn,
                req,
                codes::REFUSED,
                "the other party refused the re-INVITE",
                now,
            );
        }
        call.parties[i].state = if held {
            PartyState::Held
        } else {
            PartyState::Established
        };
        let e = if held {
            Event::EventHeld
        } else {
            Event::EventRetrieved
        };
        let call = &self.calls[&conn];
        ev(out, call, i, e, now, Some(req), None);
    }

    /// A device's re-INVITE goes to the other party when that one is up and not busy with
    /// another media change; otherwise it is answered on the spot.
    fn device_reoffer(&mut self, leg: LegId, sdp: Bytes, out: &mut Out) {
        let local = Action::AnswerReoffer {
            leg,
            code: 200,
            sdp: None,
        };
        let Some((call, _)) = self.party_of(leg) else {
            return out.push(local);
        };
        // In a conference the device talks to the mixer, which keeps its media as it is.
        if call.conference.is_some() {
            return out.push(local);
        }
        let other = call
            .other(call.by_leg(leg).unwrap_or(0))
            .map(|o| &call.parties[o]);
        let Some(other) = other
            .filter(|o| matches!(o.state, PartyState::Established | PartyState::Held) && !o.auto)
        else {
            return out.push(local);
        };
        let other = other.leg;
        if self.ops.contains_key(&other) || self.ops.contains_key(&leg) {
            return out.push(Action::AnswerReoffer {
                leg,
                code: 491,
                sdp: None,
            });
        }
        let direction = super::sdp::direction_of(&sdp);
        let conn = call.conn;
        // Only full-duplex media is kept for later offers (see `reoffer_done`).
        if let Some(call) = self
            .calls
            .get_mut(&conn)
            .filter(|_| direction == Direction::SendRecv)
        {
            if let Some(i) = call.by_leg(leg) {
                call.parties[i].sdp = Some(sdp.clone());
            }
        }
        out.push(Action::Reoffer {
            leg: other,
            sdp: Some(sdp),
            direction,
        });
        self.ops.insert(
            other,
            LegOp::Relay {
                from: leg,
                direction,
            },
        );
    }

    /// The other party answered a relayed re-INVITE: the device gets that answer, and a DN
    /// that put the call on hold (or took it back) from its phone gets EventHeld
    /// (EventRetrieved).
    fn relay_done(
        &mut self,
        from: LegId,
        direction: Direction,
        ok: bool,
        answer: Option<Bytes>,
        now: u64,
        out: &mut Out,
    ) {
        if !ok {
            return out.push(Action::AnswerReoffer {
                leg: from,
                code: 488,
                sdp: None,
            });
        }
        out.push(Action::AnswerReoffer {
            leg: from,
            code: 200,
            sdp: answer,
        });
        let Some(conn) = self.legs.get(&from).copied() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&conn) else {
            return;
        };
        let Some(i) = call.by_leg(from) else { return };
        let held = matches!(direction, Direction::SendOnly | Direction::Inactive);
        let (state, event): (_, fn(CallAttrs) -> Event) = match (held, call.parties[i].state) {
            (true, PartyState::Established) => (PartyState::Held, Event::EventHeld),
            (false, PartyState::Held) => (PartyState::Established, Event::EventRetrieved),
            _ => return,
        };
        call.parties[i].state = state;
        let call = &self.calls[&conn];
        ev(out, call, i, event, now, None, None);
    }

    fn request(&mut self, id: u64, tenant: String, req: Request, now: u64, out: &mut Out) {
        let dn = req.dn().to_string();
        if let Request::MakeCall { to, .. } = &req {
            return match to {
                Resolved::Ok(d) => self.three_pcc(
                    &tenant,
                    &dn,
                    d.clone(),
                    CallType::Internal,
                    None,
                    id,
                    now,
                    out,
                ),
                Resolved::Invalid(why) => error(
                    out,
                    &tenant,
                    None,
                    &dn,
                    id,
                    codes::INVALID_DESTINATION,
                    why,
                    now,
                ),
            };
        }
        let Some(conn) = req.conn() else { return };
        let Some(c) = self.context(id, tenant, dn, conn, now, out) else {
            return;
        };
        // A strategy working on a parked call keeps it from timing out (see README).
        let moves_on = matches!(
            req,
            Request::RouteCall { .. } | Request::Release { .. } | Request::SetRouteTimeout { .. }
        );
        if c.party.state.parked() && !moves_on {
            self.restart_park_timer(conn, &c.dn, out);
        }
        let conferencing = self
            .calls
            .get(&conn)
            .is_some_and(|x| x.conference.is_some() || x.adding.is_some());
        if conferencing && !Self::allowed_in_conference(&req) {
            return c.err(out, codes::BAD_STATE, "not possible in a conference");
        }
        match req {
            Request::MakeCall { .. } => {}
            Request::Answer { .. } => {
                if c.party.state != PartyState::Ringing || c.party.role == PartyRole::Origination {
                    return c.bad_state(out, "only a ringing destination can answer");
                }
                out.push(Action::AnswerRemote { leg: c.party.leg });
            }
            Request::Release { .. } => {
                if !c.party.state.parked() {
                    out.push(Action::Hangup { leg: c.party.leg });
                }
                self.release_party(conn, c.party.leg, Some(id), None, now, out);
            }
            Request::Hold { .. } => self.hold(&c, true, out),
            Request::Retrieve { .. } => self.hold(&c, false, out),
            Request::SingleStepTransfer { to, .. } => self.transfer(&c, to, out),
            Request::InitiateTransfer { to, .. } => self.consult(&c, to, out),
            Request::CompleteTransfer { .. } => self.complete(conn, &c.dn, id, now, out),
            Request::InitiateConference { to, .. } => self.initiate_conference(&c, to, out),
            Request::CompleteConference { .. } => {
                self.complete_conference(conn, &c.dn, id, now, out)
            }
            Request::SingleStepConference { to, .. } => self.single_step_conference(&c, to, out),
            Request::DeleteFromConference { party, .. } => {
                self.delete_from_conference(&c, &party, out)
            }
            Request::AttachUserData { data, .. } | Request::UpdateUserData { data, .. } => {
                if data.is_empty() {
                    return c.err(out, codes::BAD_ARGUMENT, "no user data given");
                }
                self.change_user_data(&c, out, |u| u.extend(data));
            }
            Request::DeleteUserData { keys, .. } => {
                self.change_user_data(&c, out, |u| {
                    if keys.is_empty() {
                        u.clear();
                    }
                    for k in &keys {
                        u.remove(k);
                    }
                });
            }
            Request::SendDtmf { digits, .. } => Self::dtmf(&c, digits, out),
            Request::ApplyTreatment { service, .. } => self.apply_treatment(&c, service, out),
            Request::CancelTreatment { .. } => self.cancel_treatment(&c, out),
            Request::SetRouteTimeout { ms, .. } => self.set_route_timeout(&c, ms, out),
            Request::RouteCall { to, .. } => {
                if !c.party.state.parked() {
                    return c.bad_state(
                        out,
                        "only a call waiting at a route point or in a queue can be routed",
                    );
                }
                let dest = match to {
                    Resolved::Invalid(why) => {
                        return c.err(out, codes::INVALID_DESTINATION, &why);
                    }
                    Resolved::Ok(d) if d.number() == c.dn => {
                        return c.err(
                            out,
                            codes::INVALID_DESTINATION,
                            "cannot route a call to the route point or queue it waits at",
                        );
                    }
                    Resolved::Ok(d) => d,
                };
                tracing::info!(conn_id = %conn, tenant = %c.tenant, dn = %c.dn, to = dest.number(), request_id = id, "RouteCall");
                if !self.divert(conn, c.i, dest, None, Some(id), now, out) {
                    c.err(
                        out,
                        codes::BAD_STATE,
                        "the call was diverted too many times",
                    );
                }
            }
        }
    }

    /// The call and the acting party of a request, or EventError when there is none.
    fn context(
        &self,
        id: u64,
        tenant: String,
        dn: String,
        conn: ConnId,
        now: u64,
        out: &mut Out,
    ) -> Option<ReqCtx> {
        let fail = |out: &mut Out, code: &str, reason: &str| {
            error(out, &tenant, Some(conn), &dn, id, code, reason, now)
        };
        let Some(call) = self.calls.get(&conn).filter(|c| c.tenant == tenant) else {
            fail(out, codes::NO_SUCH_CALL, "no such call");
            return None;
        };
        let Some(i) = call.party(&dn) else {
            fail(
                out,
                codes::NO_SUCH_PARTY,
                "the DN is not a party of the call",
            );
            return None;
        };
        Some(ReqCtx {
            party: call.parties[i].clone(),
            other: call.other(i).map(|o| call.parties[o].clone()),
            i,
            id,
            tenant,
            dn,
            conn,
            now,
        })
    }

    /// HoldCall / RetrieveCall: a re-INVITE of the other party; the event comes with its
    /// answer.
    fn hold(&mut self, c: &ReqCtx, hold: bool, out: &mut Out) {
        let (want, what) = if hold {
            (
                PartyState::Established,
                "only an established party can hold",
            )
        } else {
            (PartyState::Held, "only a held party can retrieve")
        };
        if c.party.state != want {
            return c.bad_state(out, what);
        }
        let Some(other) = c
            .other
            .as_ref()
            .filter(|o| o.state != PartyState::Ringing && !o.state.parked())
        else {
            return c.bad_state(out, "nobody to hold");
        };
        if self.ops.contains_key(&other.leg) {
            return c.bad_state(out, "another media change is in progress");
        }
        out.push(Action::Reoffer {
            leg: other.leg,
            sdp: None,
            direction: if hold {
                Direction::SendOnly
            } else {
                Direction::SendRecv
            },
        });
        let (conn, dn, req) = (c.conn, c.dn.clone(), c.id);
        let op = if hold {
            LegOp::Hold { conn, dn, req }
        } else {
            LegOp::Retrieve { conn, dn, req }
        };
        self.ops.insert(other.leg, op);
    }

    fn transfer(&mut self, c: &ReqCtx, to: Resolved, out: &mut Out) {
        let Some(dest) = c.destination(to, out) else {
            return;
        };
        if !matches!(c.party.state, PartyState::Established | PartyState::Held) {
            return c.bad_state(out, "only an established or held party can transfer");
        }
        let Some(other) = c
            .other
            .clone()
            .filter(|o| o.state == PartyState::Established)
        else {
            return c.bad_state(out, "no established party to transfer");
        };
        self.single_step(c.conn, c.i, other, dest, c.id, c.now, out);
    }

    /// InitiateTransfer: hold the other party, then call the destination from the DN's phone.
    fn consult(&mut self, c: &ReqCtx, to: Resolved, out: &mut Out) {
        let Some(dest) = c.destination(to, out) else {
            return;
        };
        if c.party.state != PartyState::Established {
            return c.bad_state(out, "only an established party can consult");
        }
        let Some(other) = c
            .other
            .as_ref()
            .filter(|o| o.state == PartyState::Established)
        else {
            return c.bad_state(out, "no established party to hold");
        };
        if self.ops.contains_key(&other.leg) {
            return c.bad_state(out, "another media change is in progress");
        }
        let key = Some((c.conn, c.dn.clone()));
        if self.calls.values().any(|x| x.consult_of == key) {
            return c.bad_state(out, "a consult call is already in progress");
        }
        out.push(Action::Reoffer {
            leg: other.leg,
            sdp: None,
            direction: Direction::SendOnly,
        });
        self.ops.insert(
            other.leg,
            LegOp::Hold {
                conn: c.conn,
                dn: c.dn.clone(),
                req: c.id,
            },
        );
        self.three_pcc(
            &c.tenant,
            &c.dn,
            dest,
            CallType::Consult,
            Some(c.conn),
            c.id,
            c.now,
            out,
        );
    }

    fn change_user_data(&mut self, c: &ReqCtx, out: &mut Out, change: impl FnOnce(&mut UserData)) {
        let Some(call) = self.calls.get_mut(&c.conn) else {
            return;
        };
        change(&mut call.user_data);
        let call = &self.calls[&c.conn];
        ev(
            out,
            call,
            c.i,
            Event::EventAttachedDataChanged,
            c.now,
            Some(c.id),
            None,
        );
    }

    fn dtmf(c: &ReqCtx, digits: String, out: &mut Out) {
        let valid = |ch: char| ch.is_ascii_digit() || matches!(ch, '*' | '#' | 'A'..='D');
        if digits.is_empty() || !digits.chars().all(valid) {
            return c.err(out, codes::BAD_ARGUMENT, "digits must be 0-9, *, #, A-D");
        }
        if c.party.state != PartyState::Established {
            return c.bad_state(out, "only an established party can send DTMF");
        }
        let Some(other) = c.other.as_ref().filter(|o| !o.state.parked()) else {
            return c.bad_state(out, "nobody to send DTMF to");
        };
        out.push(Action::SendDtmf {
            leg: other.leg,
            digits,
        });
    }

    /// A party leaves on request (its own, or DeleteFromConference by DN `by`): events for
    /// it, and the call ends if one party is left.
    fn release_party(
        &mut self,
        conn: ConnId,
        leg: LegId,
        req: Option<u64>,
        by: Option<&str>,
        now: u64,
        out: &mut Out,
    ) {
        self.legs.remove(&leg);
        self.ops.remove(&leg);
        out.push(Action::CancelRingTimer { leg });
        let Some(mut call) = self.calls.remove(&conn) else {
            return;
        };
        let Some(i) = call.by_leg(leg) else {
            self.calls.insert(conn, call);
            return;
        };
        if call
            .treatment
            .as_ref()
            .is_some_and(|t| t.dn == call.parties[i].dn)
        {
            self.end_treatment(&mut call, "released", req, now, out);
        }
        ev_third(out, &call, i, Event::EventReleased, now, req, by);
        let gone = call.parties.remove(i);
        if call.parties.len() >= 2 {
            self.party_left(&mut call, &gone, by, req, now, out);
            self.calls.insert(conn, call);
            return;
        }
        self.end_call(call, Some(gone), now, out);
    }

    /// MakeCall and the consult leg of InitiateTransfer: ring the DN's phone with auto-answer
    /// (offerless INVITE); when it answers, call the destination with its SDP.
    #[allow(clippy::too_many_arguments)]
    fn three_pcc(
        &mut self,
        tenant: &str,
        dn: &str,
        dest: Dest,
        call_type: CallType,
        consult_of: Option<ConnId>,
        req: u64,
        now: u64,
        out: &mut Out,
    ) {
        let conn = self.new_conn();
        let (a, b) = (self.new_leg(), self.new_leg());
        let call_type = match (&dest, call_type) {
            (Dest::External(_) | Dest::Trunk { .. }, CallType::Internal) => CallType::Outbound,
            (_, t) => t,
        };
        let call = Call {
            conn,
            tenant: tenant.to_string(),
            call_type,
            parties: vec![
                Party {
                    dn: dn.to_string(),
                    internal: true,
                    trunk: None,
                    role: PartyRole::Origination,
                    state: PartyState::Dialing,
                    leg: a,
                    sdp: None,
                    auto: true,
                },
                Party {
                    dn: dest.number().to_string(),
                    internal: dest.is_dn(),
                    trunk: dest.trunk().map(str::to_owned),
                    role: PartyRole::Destination,
                    state: PartyState::Dialing,
                    leg: b,
                    sdp: None,
                    auto: false,
                },
            ],
            user_data: match consult_of.and_then(|c| self.calls.get(&c)) {
                Some(orig) => orig.user_data.clone(),
                None => UserData::new(),
            },
            consult_of: consult_of.map(|c| (c, dn.to_string())),
            ani: Some(dn.to_string()),
            dnis: Some(dest.number().to_string()),
            diversions: 0,
            routed_from: None,
            park_timeout: None,
            treatment: None,
            conference: None,
            adding: None,
            conference_req: None,
        };
        self.legs.insert(a, conn);
        self.legs.insert(b, conn);
        out.push(Action::CallStarted {
            conn,
            tenant: tenant.to_string(),
        });
        out.push(Action::PlaceLeg {
            leg: a,
            tenant: tenant.to_string(),
            dest: Dest::Dn(dn.to_string()),
            from: dest.number().to_string(),
            sdp: None,
            auto_answer: true,
        });
        out.push(Action::StartRingTimer {
            leg: a,
            ms: self.settings.ring_timeout_ms,
        });
        ev(out, &call, 0, Event::EventDialing, now, Some(req), None);
        self.calls.insert(conn, call);
    }

    #[allow(clippy::too_many_arguments)]
    fn single_step(
        &mut self,
        conn: ConnId,
        i: usize,
        other: Party,
        dest: Dest,
        req: u64,
        now: u64,
        out: &mut Out,
    ) {
        let Some(call) = self.calls.get_mut(&conn) else {
            return;
        };
        let transferring = call.parties[i].clone();
        out.push(Action::Hangup {
            leg: transferring.leg,
        });
        self.legs.remove(&transferring.leg);
        self.ops.remove(&transferring.leg);
        let mut released = call.clone();
        released.parties[i].role = PartyRole::TransferredBy;
        ev_third(
            out,
            &released,
            i,
            Event::EventReleased,
            now,
            Some(req),
            Some(dest.number()),
        );
        // The destination takes the transferring party's place: it rings (offered the other
        // party's media) or, for a route point, the call waits there.
        debug_assert_eq!(call.other(i).map(|o| call.parties[o].leg), Some(other.leg));
        self.start_party(conn, i, dest, Some(transferring.dn), now, out);
    }

    /// (original, consult) for a request of `dn` on either of the two calls.
    fn consult_pair(&self, conn: ConnId, dn: &str) -> Option<(ConnId, ConnId)> {
        if let Some((orig, by)) = self.calls.get(&conn)?.consult_of.clone() {
            return (by == dn).then_some((orig, conn));
        }
        self.calls
            .values()
            .find(|c| c.consult_of == Some((conn, dn.to_string())))
            .map(|c| (conn, c.conn))
    }

    /// CompleteTransfer, from either call: the consulting DN leaves both calls; the consulted
    /// party takes its place in the original call (EventPartyChanged).
    fn complete(&mut self, conn: ConnId, dn: &str, req: u64, now: u64, out: &mut Out) {
        let tenant = self.calls[&conn].tenant.clone();
        let err = |out: &mut Out, code: &str, reason: &str| {
            error(out, &tenant, Some(conn), dn, req, code, reason, now)
        };
        let Some((orig, consult)) = self.consult_pair(conn, dn) else {
            return err(out, codes::BAD_STATE, "no consult call to complete");
        };
        let (Some(oc), Some(cc)) = (self.calls.get(&orig), self.calls.get(&consult)) else {
            return err(out, codes::NO_SUCH_CALL, "the other call has ended");
        };
        let (Some(oi), Some(ci)) = (oc.party(dn), cc.party(dn)) else {
            return err(out, codes::NO_SUCH_PARTY, "the DN left one of the calls");
        };
        let Some(ti) = cc.other(ci) else {
            return err(out, codes::BAD_STATE, "nobody to transfer to");
        };
        let target = cc.parties[ti].clone();
        if target.state != PartyState::Established {
            return err(
                out,
                codes::BAD_STATE,
                "the consulted party has not answered (use SingleStepTransfer)",
            );
        }
        let Some(rem) = oc.other(oi).map(|r| oc.parties[r].clone()) else {
            return err(out, codes::BAD_STATE, "nobody left in the original call");
        };
        // The consulting DN leaves both calls.
        let my_consult_leg = cc.parties[ci].leg;
        let my_orig_leg = oc.parties[oi].leg;
        let Some(mut consult_call) = self.calls.remove(&consult) else {
            return;
        };
        ev_third(
            out,
            &consult_call,
            ci,
            Event::EventReleased,
            now,
            None,
            Some(&target.dn),
        );
        consult_call.parties.clear();
        out.push(Action::Hangup {
            leg: my_consult_leg,
        });
        self.legs.remove(&my_consult_leg);
        self.ops.remove(&my_consult_leg);
        out.push(Action::Hangup { leg: my_orig_leg });
        self.legs.remove(&my_orig_leg);
        self.ops.remove(&my_orig_leg);
        out.push(Action::CallEnded { conn: consult });
        let Some(call) = self.calls.get_mut(&orig) else {
            return;
        };
        let mut released = call.clone();
        released.parties[oi].role = PartyRole::TransferredBy;
        ev_third(
            out,
            &released,
            oi,
            Event::EventReleased,
            now,
            Some(req),
            Some(&target.dn),
        );
        call.parties[oi] = Party {
            role: PartyRole::Destination,
            ..target.clone()
        };
        if let Some(r) = call.party(&rem.dn) {
            call.parties[r].state = PartyState::Established;
        }
        self.legs.insert(target.leg, orig);
        // Re-bridge media: the remaining party gets the target's SDP and the target the
        // remaining party's.
        out.push(Action::Reoffer {
            leg: rem.leg,
            sdp: target.sdp.clone(),
            direction: Direction::SendRecv,
        });
        self.ops.insert(rem.leg, LegOp::Bridge);
        out.push(Action::Reoffer {
            leg: target.leg,
            sdp: rem.sdp.clone(),
            direction: Direction::SendRecv,
        });
        self.ops.insert(target.leg, LegOp::Bridge);
        let call = &self.calls[&orig];
        let mut a = attrs(call, oi, now, None, None);
        a.previous_conn_id = Some(consult);
        a.third_party_dn = Some(dn.to_string());
        if target.internal {
            out.push(Action::Publish {
                event: Event::EventPartyChanged(a),
                leg: Some(target.leg),
            });
        }
    }
}

/// Treatments: the media server playing to a call parked at a route point or queue. The
/// treatment leg is placed with the caller's SDP; its answer answers the caller (or, once the
/// caller is answered, re-offers it: the transfer flow of [`Model::answered`]).
impl Model {
    /// Runs `f` on call `conn` taken out of the map (so that `f` may use the model too).
    fn with_call(&mut self, conn: ConnId, f: impl FnOnce(&mut Model, &mut Call)) {
        if let Some(mut call) = self.calls.remove(&conn) {
            f(self, &mut call);
            self.calls.insert(conn, call);
        }
    }

    /// The call whose treatment leg `leg` is.
    fn treatment_call(&self, leg: LegId) -> Option<ConnId> {
        let conn = self.legs.get(&leg)?;
        let call = self.calls.get(conn)?;
        call.treatment
            .as_ref()
            .filter(|t| t.leg == leg)
            .map(|_| *conn)
    }

    /// Whether `leg` is a treatment leg (the core reads results from its BYE).
    pub fn is_treatment_leg(&self, leg: LegId) -> bool {
        self.treatment_call(leg).is_some()
    }

    /// SetRouteTimeout: the parked call's timer restarts with the strategy's timeout (or
    /// the DN's own); while a treatment plays it only takes effect when the treatment ends.
    fn set_route_timeout(&mut self, c: &ReqCtx, ms: Option<u64>, out: &mut Out) {
        if !c.party.state.parked() {
            return c.bad_state(out, "the call is not waiting at a route point or queue");
        }
        if let Some(call) = self.calls.get_mut(&c.conn) {
            call.park_timeout = ms.map(|ms| (c.dn.clone(), ms));
        }
        tracing::debug!(conn_id = %c.conn, tenant = %c.tenant, dn = %c.dn, timeout_ms = ?ms,
            "the strategy sets the routing timeout");
        out.push(Action::CancelRingTimer { leg: c.party.leg });
        self.restart_park_timer(c.conn, &c.dn, out);
    }

    /// The routing timeout of call `call` parked at `dn` (route point or queue), if it has
    /// one: the strategy's, else the DN's.
    fn park_timeout(&self, call: &Call, dn: &str) -> Option<u64> {
        if let Some(ms) = strategy_timeout(call, dn) {
            return Some(ms);
        }
        let info = self.dir.0.dn_info(&call.tenant, dn)?;
        match (info.route_point, info.queue) {
            (Some(rp), _) => Some(rp.timeout_ms.unwrap_or(self.settings.route_timeout_ms)),
            (None, Some(q)) => q.timeout_ms,
            (None, None) => None,
        }
    }

    /// The parked party `dn` of call `conn` waits its full routing timeout again, unless a
    /// treatment plays to it (the timer then restarts when the treatment ends).
    fn restart_park_timer(&self, conn: ConnId, dn: &str, out: &mut Out) {
        let Some(call) = self.calls.get(&conn) else {
            return;
        };
        let Some(p) = call.party(dn).map(|i| &call.parties[i]) else {
            return;
        };
        if !p.state.parked() || call.treatment.as_ref().is_some_and(|t| t.dn == dn) {
            return;
        }
        if let Some(ms) = self.park_timeout(call, dn) {
            out.push(Action::StartRingTimer { leg: p.leg, ms });
        }
    }

    /// ApplyTreatment: a leg to the media server, offered the caller's media; a treatment
    /// already playing ends first (`cancelled`). The routing timer stops while it plays.
    fn apply_treatment(&mut self, c: &ReqCtx, service: MediaService, out: &mut Out) {
        if !c.party.state.parked() {
            return c.bad_state(
                out,
                "only a call waiting at a route point or in a queue gets treatments",
            );
        }
        let Some(caller) = c
            .other
            .clone()
            .filter(|o| matches!(o.state, PartyState::Dialing | PartyState::Established))
        else {
            return c.bad_state(out, "no caller waiting for media");
        };
        let Some(sdp) = caller.sdp.clone() else {
            return c.err(out, codes::BAD_STATE, "the caller offered no media");
        };
        if self.ops.contains_key(&caller.leg) {
            return c.bad_state(out, "another media change is in progress");
        }
        let leg = self.new_leg();
        let (conn, now) = (c.conn, c.now);
        self.with_call(conn, |m, call| {
            m.end_treatment(call, "cancelled", Some(c.id), now, out);
            call.treatment = Some(TreatmentLeg {
                leg,
                dn: c.dn.clone(),
                req: c.id,
                playing: false,
            });
        });
        self.legs.insert(leg, conn);
        out.push(Action::CancelRingTimer { leg: c.party.leg });
        tracing::info!(conn_id = %conn, tenant = %c.tenant, dn = %c.dn, request_id = c.id,
            service = %service.user, "applying a treatment");
        out.push(Action::PlaceMediaLeg {
            leg,
            tenant: c.tenant.clone(),
            service,
            from: caller.dn,
            to: c.dn.clone(),
            sdp,
        });
    }

    fn cancel_treatment(&mut self, c: &ReqCtx, out: &mut Out) {
        let playing = self
            .calls
            .get(&c.conn)
            .and_then(|call| call.treatment.as_ref())
            .is_some_and(|t| t.dn == c.dn);
        if !playing {
            return c.bad_state(out, "no treatment is playing to the call");
        }
        let now = c.now;
        self.with_call(c.conn, |m, call| {
            m.end_treatment(call, "cancelled", Some(c.id), now, out)
        });
        self.restart_park_timer(c.conn, &c.dn, out);
    }

    /// The media server answered: the caller gets its media (200 to a caller not yet
    /// answered, a re-INVITE otherwise); EventTreatmentApplied.
    fn treatment_answered(&mut self, leg: LegId, sdp: Option<Bytes>, now: u64, out: &mut Out) {
        let Some(conn) = self.treatment_call(leg) else {
            return;
        };
        let Some(sdp) = sdp else {
            tracing::warn!(conn_id = %conn, "the media server answered without SDP");
            out.push(Action::Hangup { leg });
            return self.treatment_failed(leg, 488, now, out);
        };
        let mut reoffer = None;
        self.with_call(conn, |_, call| {
            let Some(t) = call.treatment.as_mut() else {
                return;
            };
            t.playing = true;
            let dn = t.dn.clone();
            let Some(rp) = call.party(&dn) else { return };
            let Some(o) = call.other(rp) else { return };
            let caller = &mut call.parties[o];
            if caller.state == PartyState::Dialing && caller.leg.is_incoming() {
                out.push(Action::Answer {
                    leg: caller.leg,
                    sdp: Some(sdp),
                });
                caller.state = PartyState::Established;
            } else {
                out.push(Action::Reoffer {
                    leg: caller.leg,
                    sdp: Some(sdp),
                    direction: Direction::SendRecv,
                });
                reoffer = Some(caller.leg);
            }
        });
        if let Some(l) = reoffer {
            self.ops.insert(l, LegOp::Bridge);
        }
        self.treatment_event(conn, Event::EventTreatmentApplied, None, None, now, out);
    }

    /// The media server refused the leg or did not answer: EventError for the request; the
    /// call keeps waiting (its routing timer restarts).
    fn treatment_failed(&mut self, leg: LegId, code: u16, now: u64, out: &mut Out) {
        let Some(conn) = self.treatment_call(leg) else {
            return;
        };
        self.legs.remove(&leg);
        let Some(call) = self.calls.get_mut(&conn) else {
            return;
        };
        let Some(t) = call.treatment.take() else {
            return;
        };
        tracing::warn!(conn_id = %conn, tenant = %call.tenant, dn = %t.dn, code, "the media server failed a treatment");
        let reason = format!("the media server answered {code}");
        let tenant = call.tenant.clone();
        error(
            out,
            &tenant,
            Some(conn),
            &t.dn,
            t.req,
            codes::MEDIA_SERVER_FAILED,
            &reason,
            now,
        );
        self.restart_park_timer(conn, &t.dn, out);
    }

    /// The media server hung up: the treatment completed (`results` from its BYE). The
    /// caller stays at the route point, answered, for the strategy's next request.
    fn treatment_exit(&mut self, leg: LegId, results: UserData, now: u64, out: &mut Out) {
        let Some(conn) = self.treatment_call(leg) else {
            return self.leg_gone(leg, None, now, out);
        };
        self.legs.remove(&leg);
        let dn = self.calls[&conn].treatment.as_ref().map(|t| t.dn.clone());
        self.treatment_event(
            conn,
            Event::EventTreatmentEnd,
            Some("completed"),
            Some(results),
            now,
            out,
        );
        if let Some(call) = self.calls.get_mut(&conn) {
            call.treatment = None;
        }
        if let Some(dn) = dn {
            self.restart_park_timer(conn, &dn, out);
        }
    }

    /// Ends the treatment of `call` (taken out of the map) if it has one: the media server's
    /// leg is hung up, EventTreatmentEnd with `reason`.
    fn end_treatment(
        &mut self,
        call: &mut Call,
        reason: &str,
        req: Option<u64>,
        now: u64,
        out: &mut Out,
    ) {
        let Some(t) = call.treatment.take() else {
            return;
        };
        self.legs.remove(&t.leg);
        out.push(Action::Hangup { leg: t.leg });
        tracing::info!(conn_id = %call.conn, tenant = %call.tenant, dn = %t.dn, reason, "treatment ended");
        if let Some(i) = call.party(&t.dn) {
            let mut a = attrs(call, i, now, req, Some(reason.to_string()));
            a.treatment_results = Some(UserData::new());
            out.push(Action::Publish {
                event: Event::EventTreatmentEnd(a),
                leg: Some(call.parties[i].leg),
            });
        }
    }

    /// A treatment event for the treated DN of call `conn` (`request_id` the ApplyTreatment
    /// for EventTreatmentApplied).
    fn treatment_event(
        &self,
        conn: ConnId,
        mk: fn(CallAttrs) -> Event,
        reason: Option<&str>,
        results: Option<UserData>,
        now: u64,
        out: &mut Out,
    ) {
        let Some(call) = self.calls.get(&conn) else {
            return;
        };
        let Some(t) = call.treatment.as_ref() else {
            return;
        };
        let Some(i) = call.party(&t.dn) else { return };
        let mut a = attrs(call, i, now, Some(t.req), reason.map(str::to_owned));
        a.treatment_results = results;
        out.push(Action::Publish {
            event: mk(a),
            leg: Some(call.parties[i].leg),
        });
    }
}

/// Call attributes for party `i` of `call`.
fn attrs(call: &Call, i: usize, now: u64, req: Option<u64>, reason: Option<String>) -> CallAttrs {
    let p = &call.parties[i];
    let o = call.other(i).map(|o| &call.parties[o]);
    CallAttrs {
        tenant: call.tenant.clone(),
        conn_id: Some(call.conn),
        call_id: None,
        this_dn: p.dn.clone(),
        other_dn: o.map(|o| o.dn.clone()),
        this_role: Some(p.role),
        other_role: o.map(|o| o.role),
        third_party_dn: None,
        call_type: Some(call.call_type),
        ani: call.ani.clone(),
        dnis: call.dnis.clone(),
        agent_id: None,
        previous_conn_id: None,
        request_id: req,
        reason,
        user_data: call.user_data.clone(),
        treatment_results: None,
        parties: Vec::new(),
        ts_ms: now,
    }
}

/// Publishes `mk(attrs)` for party `i` if it is an internal DN.
fn ev(
    out: &mut Out,
    call: &Call,
    i: usize,
    mk: fn(CallAttrs) -> Event,
    now: u64,
    req: Option<u64>,
    reason: Option<String>,
) {
    let p = &call.parties[i];
    if !p.internal {
        return;
    }
    out.push(Action::Publish {
        event: mk(attrs(call, i, now, req, reason)),
        leg: Some(p.leg),
    });
}

fn ev_third(
    out: &mut Out,
    call: &Call,
    i: usize,
    mk: fn(CallAttrs) -> Event,
    now: u64,
    req: Option<u64>,
    third: Option<&str>,
) {
    let p = &call.parties[i];
    if !p.internal {
        return;
    }
    let mut a = attrs(call, i, now, req, None);
    a.third_party_dn = third.map(str::to_string);
    out.push(Action::Publish {
        event: mk(a),
        leg: Some(p.leg),
    });
}

#[allow(clippy::too_many_arguments)]
fn error(
    out: &mut Out,
    tenant: &str,
    conn: Option<ConnId>,
    dn: &str,
    req: u64,
    code: &str,
    reason: &str,
    now: u64,
) {
    out.push(Action::Publish {
        event: Event::EventError(ErrorAttrs {
            tenant: tenant.to_string(),
            conn_id: conn,
            this_dn: Some(dn.to_string()),
            request_id: req,
            error_code: code.to_string(),
            reason: reason.to_string(),
            ts_ms: now,
        }),
        leg: None,
    });
}
