//! The sans-I/O SIP core of the SIP Server (B2BUA): the transaction layer, one [`Dialog`] per
//! leg, SDP relay, and the [`Model`] reducer. SIP messages and timer expiries become model
//! inputs; model actions become SIP messages and [`NodeOutput`]s. Commands are call-control
//! requests (from REST) with a request id; their result is an event.
//!
//! Legs to DNs go to the SIP edge (`sip:<dn>@<domain>`, the edge forks to the registered
//! contacts); legs to external numbers go to the first trunk gateway. Incoming calls are
//! classified by the From user: a DN of the tenant is an internal caller, anything else comes
//! from outside.

use super::model::{
    Action, Dest, Direction, DnDirectory, DnInfo, Input, LegId, MediaService, Model, ModelSettings,
    QueueInfo, Request, Resolved, RoutePointInfo,
};
use super::sdp::{answer_direction, direction_of, LegSdp};
use super::treatment::exit_results;
use crate::dialplan::role::DialplanCell;
use crate::dialplan::{Dialplan, Ingress, Query, ResolveError, Target};
use crate::sip::target::uri_peer;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchboard_config::{Dn, DnKind, Tenant};
use switchboard_events::{ConnId, Event};
use switchboard_sip::build::{cancel_for, response_to, Builder};
use switchboard_sip::transaction::{
    ClientTxId, IdGen, Incoming, ServerTxId, Timers, Transactions, TxEvent,
};
use switchboard_sip::{Dialog, DialogState, HeaderName, Message, Method, Peer, Transmit, Uri};
use switchboard_sip_net::{Controlled, Core};

use crate::agent_state::logins::SharedLogins;

/// Tenants, DNs, trunks and number translation, for classifying calls and resolving
/// destinations: a view of the dial plan (`crate::dialplan`), which the `dialplan` role keeps
/// current as the configuration changes. Lookups read memory only.
#[derive(Clone)]
pub struct Directory {
    cell: Arc<DialplanCell>,
    /// Who is logged in where, when agent-state runs somewhere (see [`Directory::with_logins`]).
    logins: Option<SharedLogins>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("logins", &self.logins.is_some())
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// A fixed directory: `(tenant, domain, DNs)`, every DN an extension, no rules or trunks;
    /// the first tenant is the default for requests addressed to an IP address.
    pub fn new(tenants: impl IntoIterator<Item = (String, String, Vec<String>)>) -> Directory {
        let tenants: Vec<Tenant> = tenants
            .into_iter()
            .map(|(name, domain, dns)| {
                let mut t = Tenant::new(name, domain);
                t.dns = dns
                    .into_iter()
                    .map(|d| Dn::new(d, DnKind::Extension))
                    .collect();
                t
            })
            .collect();
        Directory::live(Arc::new(DialplanCell::new(Dialplan::build(&tenants))))
    }

    /// The dial plan in `cell`, as it is at each lookup.
    pub fn live(cell: Arc<DialplanCell>) -> Directory {
        Directory { cell, logins: None }
    }

    /// Events name the agent logged in on a DN (`logins`) rather than the DN's configured
    /// agent, for tenants where agent-state runs.
    pub fn with_logins(mut self, logins: SharedLogins) -> Directory {
        self.logins = Some(logins);
        self
    }

    /// The agent on DN `dn`: the one logged in there, else (no agent-state for the tenant)
    /// the one the configuration puts there.
    pub fn agent(&self, tenant: &str, dn: &str) -> Option<String> {
        if let Some(logins) = &self.logins {
            let l = logins.read().unwrap_or_else(|e| e.into_inner());
            if let Some(on_dn) = l.agent(tenant, dn) {
                return on_dn.map(str::to_owned);
            }
        }
        self.plan().agent(tenant, dn).map(str::to_owned)
    }

    /// The plan in force.
    pub fn plan(&self) -> Arc<Dialplan> {
        self.cell.current()
    }

    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.plan().has_tenant(tenant)
    }

    pub fn is_dn(&self, tenant: &str, dn: &str) -> bool {
        self.plan().is_dn(tenant, dn)
    }

    pub fn domain(&self, tenant: &str) -> Option<String> {
        self.plan().domain(tenant).map(str::to_owned)
    }

    /// The tenant of a Request-URI host: by domain, else the default tenant.
    pub fn tenant_for_host(&self, host: &str) -> Option<String> {
        self.plan().tenant_for_host(host).map(str::to_owned)
    }

    /// A number dialled for DN `from` of `tenant` (a call-control request): a DN, or an
    /// external number by a dial-plan rule, or, when the node has a default gateway
    /// (`have_trunk`), any number of five or more digits; else invalid.
    pub fn resolve(&self, tenant: &str, from: &str, number: &str, have_trunk: bool) -> Resolved {
        let q = Query {
            tenant: Some(tenant),
            called: number,
            calling: from,
            ingress: Ingress::Device,
            default_gateway: have_trunk,
        };
        match self.plan().resolve(&q) {
            Ok(r) => Resolved::Ok(dest_of(r.target, r.number)),
            Err(e) => Resolved::Invalid(e.to_string()),
        }
    }
}

/// The model's view of the configuration ([`DnDirectory`]) over the live dial plan: a DN's
/// ring timeout, forwards and route-point settings, its targets resolved as if the DN dialled
/// them, and the agent on it.
#[derive(Clone, Debug)]
pub struct NodeDirectory {
    pub directory: Directory,
    /// Whether the node has a default gateway for external numbers (`sip_node.trunks`).
    pub have_trunk: bool,
}

impl NodeDirectory {
    /// A forward or default-route target: `None` (and a warning) when it goes nowhere.
    fn target(&self, tenant: &str, dn: &str, number: &str, what: &str) -> Option<Dest> {
        match self.directory.resolve(tenant, dn, number, self.have_trunk) {
            Resolved::Ok(d) => Some(d),
            Resolved::Invalid(why) => {
                tracing::warn!(
                    tenant,
                    dn,
                    number,
                    what,
                    why,
                    "the configured target has no route"
                );
                None
            }
        }
    }
}

impl DnDirectory for NodeDirectory {
    fn dn_info(&self, tenant: &str, dn: &str) -> Option<DnInfo> {
        let plan = self.directory.plan();
        let d = plan.dn(tenant, dn)?;
        let route_point = (d.kind == DnKind::RoutePoint).then(|| {
            let rp = plan.route_point(tenant, dn);
            RoutePointInfo {
                timeout_ms: rp.and_then(|r| r.timeout_s).map(|s| u64::from(s) * 1000),
                default_route: rp
                    .and_then(|r| r.default_route.as_deref())
                    .and_then(|n| self.target(tenant, dn, n, "default_route")),
            }
        });
        // An ACD queue: its `no_answer_timeout_s` bounds the wait, its `forward_no_answer`
        // is where the call goes then.
        // The DN's mailbox takes what no forward does (a mailbox the plan does not know is
        // ignored: the configuration store refuses such references).
        let voicemail = d
            .mailbox
            .as_deref()
            .filter(|m| plan.mailbox(tenant, m).is_some())
            .map(|m| Dest::Dn(m.to_owned()));
        let queue = (d.kind == DnKind::Queue).then(|| QueueInfo {
            timeout_ms: d.no_answer_timeout_s.map(|s| u64::from(s) * 1000),
            default_route: d
                .forward_no_answer
                .as_deref()
                .and_then(|n| self.target(tenant, dn, n, "forward_no_answer"))
                .or_else(|| voicemail.clone()),
        });
        Some(DnInfo {
            ring_timeout_ms: d.no_answer_timeout_s.map(|s| u64::from(s) * 1000),
            forward_no_answer: d
                .forward_no_answer
                .as_deref()
                .and_then(|n| self.target(tenant, dn, n, "forward_no_answer")),
            forward_busy: d
                .forward_busy
                .as_deref()
                .and_then(|n| self.target(tenant, dn, n, "forward_busy")),
            route_point,
            queue,
            voicemail,
        })
    }

    fn agent(&self, tenant: &str, dn: &str) -> Option<String> {
        self.directory.agent(tenant, dn)
    }
}

/// Whether a leg to `dest` is a deposit in a mailbox or a call to the voicemail access menu.
fn voicemail_leg(plan: &Dialplan, tenant: &str, dest: &Dest) -> Option<VoicemailLeg> {
    let Dest::Dn(n) = dest else { return None };
    match plan.dn(tenant, n) {
        Some(d) if d.kind == DnKind::VoicemailAccess => Some(VoicemailLeg::Access),
        Some(_) => None,
        None => plan.mailbox(tenant, n).map(|_| VoicemailLeg::Deposit),
    }
}

/// The model's destination for a dial-plan target.
pub fn dest_of(target: Target, number: String) -> Dest {
    match target {
        Target::External { trunk: Some(trunk) } => Dest::Trunk { number, trunk },
        Target::External { trunk: None } => Dest::External(number),
        // Mailboxes and the voicemail access DN are parties like DNs (they get events); the
        // core sends their legs to the media server (see [`VoicemailRoute`]).
        Target::Extension
        | Target::RoutePoint
        | Target::Queue
        | Target::Voicemail
        | Target::Mailbox => Dest::Dn(number),
    }
}

#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// Our SIP address (Via, Contact).
    pub local: SocketAddr,
    /// The SIP edge: legs to DNs go there.
    pub edge: SocketAddr,
    /// Trunk gateways: external numbers go to the first.
    pub trunks: Vec<SocketAddr>,
    /// The media server treatments are played on (`sip_node.mcp`); `None`: treatments fail.
    pub mcp: Option<SocketAddr>,
    pub timers: Timers,
    pub model: ModelSettings,
    /// Where legs to mailboxes and voicemail access DNs go.
    pub voicemail: VoicemailRoute,
}

/// The media server and the base URL of the `voicemail` role's menus: legs to a mailbox
/// become `sip:dialog@MCP;voicexml=BASE/voicemail/v1/tenants/{tenant}/deposit/{mailbox}?...`, legs to
/// a `voicemail_access` DN `...;voicexml=BASE/voicemail/v1/tenants/{tenant}/access?caller=...`.
/// A live setting like the directory: the `voicemail` role sets it when it starts after
/// `sip-node` in the same process (the media server's port is known only then); until it
/// is set such legs fail with 503.
#[derive(Clone, Debug, Default)]
pub struct VoicemailRoute(Arc<std::sync::RwLock<Option<VoicemailTarget>>>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoicemailTarget {
    pub mcp: SocketAddr,
    /// `http://host:port`, no trailing slash.
    pub base_url: String,
}

impl VoicemailRoute {
    pub fn set(&self, target: VoicemailTarget) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(target);
    }

    pub fn get(&self) -> Option<VoicemailTarget> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a DN destination is for voicemail.
enum VoicemailLeg {
    Deposit,
    Access,
}

/// `%XX` for every byte that is not unreserved in `s` (a URL query value).
pub fn query_escape(s: &str) -> String {
    escape_except(s, b"-_.~")
}

/// `%XX` for every byte that may not stand in a SIP URI parameter value (RFC 3261 `paramchar`).
fn param_escape(s: &str) -> String {
    escape_except(s, b"-_.!~*'()[]/:&+$")
}

fn escape_except(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Attached data longer than this (as JSON) is not passed to the deposit menu: the
/// Request-URI would grow too long.
const MAX_USER_DATA_IN_URL: usize = 1024;

/// An INVITE for a new leg.
struct Invite {
    ruri: String,
    peer: Peer,
    /// The users of the From and To URIs (in the tenant's `domain`).
    from: String,
    to: String,
    domain: String,
    sdp: Option<Bytes>,
    auto_answer: bool,
}

/// A call-control request from REST: already validated and resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeCommand {
    pub id: u64,
    pub tenant: String,
    pub request: Request,
}

/// What the core gives the rest of the process.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeOutput {
    Event(Box<Event>),
    CallStarted { conn: ConnId, tenant: String },
    CallEnded { conn: ConnId },
}

/// Why a client transaction was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Invite,
    Reinvite,
    Bye,
    Other,
}

struct Leg {
    tenant: String,
    call_id: String,
    /// Our tag in the dialog.
    local_tag: String,
    /// Incoming: the INVITE's server transaction and request, until answered or rejected.
    server: Option<(ServerTxId, Message)>,
    /// Outgoing: the INVITE's client transaction, while it is pending.
    client: Option<ClientTxId>,
    got_provisional: bool,
    /// Hang up once the INVITE can be cancelled (no provisional yet) or answered.
    hangup_pending: bool,
    dialog: Option<Dialog>,
    sdp: LegSdp,
    /// The ACK we sent for the 2xx (re-sent on 2xx retransmissions), and where.
    last_ack: Option<(Bytes, Peer)>,
    /// Our 2xx to an incoming INVITE, retransmitted until the ACK (RFC 3261 §13.3.1.4).
    unacked_2xx: Option<(Bytes, Peer, Duration, Instant)>,
    /// Our pending re-INVITE.
    reinvite: Option<ClientTxId>,
    /// The device's re-INVITE waiting for the other party's answer.
    pending_reinvite: Option<(ServerTxId, Message)>,
    /// The model hung the leg up; responses that still arrive only finish it off.
    gone: bool,
}

pub struct SipNode {
    tx: Transactions,
    ids: IdGen,
    model: Model,
    settings: NodeSettings,
    directory: Directory,
    legs: HashMap<LegId, Leg>,
    by_dialog: HashMap<(String, String), LegId>,
    /// Call-IDs of the legs dropped since the model's last input was applied: the model
    /// hangs a party up before it publishes the party's EventReleased, and that event still
    /// names the DN's leg. Cleared after every input.
    dropped_call_ids: HashMap<LegId, String>,
    clients: HashMap<ClientTxId, (LegId, Purpose)>,
    incoming_invites: HashMap<ServerTxId, LegId>,
    ring_timers: BTreeSet<(Instant, LegId)>,
    ring_deadline: HashMap<LegId, Instant>,
    retransmits: BTreeSet<(Instant, LegId)>,
    outputs: VecDeque<NodeOutput>,
    inputs: VecDeque<Input>,
    next_incoming: u64,
    draining: bool,
    /// Wall clock at `base` (for event timestamps without reading the clock in the core).
    epoch: Option<(Instant, u64)>,
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn user_of(uri: &Uri<'_>) -> Option<String> {
    uri.as_sip()
        .and_then(|u| u.user_unescaped())
        .or_else(|| uri.user().map(str::to_string))
}

impl SipNode {
    /// `epoch_ms` is the Unix time in milliseconds at `now` (event timestamps are derived
    /// from it, so the core reads no clock).
    pub fn new(
        settings: NodeSettings,
        directory: Directory,
        seed: u64,
        now: Instant,
        epoch_ms: u64,
    ) -> SipNode {
        SipNode {
            tx: Transactions::new(settings.timers),
            ids: IdGen::new(seed),
            model: Model::with_directory(
                settings.model.clone(),
                Arc::new(NodeDirectory {
                    directory: directory.clone(),
                    have_trunk: !settings.trunks.is_empty(),
                }),
            ),
            directory,
            legs: HashMap::new(),
            by_dialog: HashMap::new(),
            dropped_call_ids: HashMap::new(),
            clients: HashMap::new(),
            incoming_invites: HashMap::new(),
            ring_timers: BTreeSet::new(),
            ring_deadline: HashMap::new(),
            retransmits: BTreeSet::new(),
            outputs: VecDeque::new(),
            inputs: VecDeque::new(),
            next_incoming: 1,
            draining: false,
            epoch: Some((now, epoch_ms)),
            settings,
        }
    }

    /// The configuration directory (for REST validation).
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Live legs (for tests and metrics).
    pub fn leg_count(&self) -> usize {
        self.legs.len()
    }

    /// Whether the core still has SIP state for `leg` (for consistency checks in tests).
    pub fn has_leg(&self, leg: LegId) -> bool {
        self.legs.contains_key(&leg)
    }

    fn now_ms(&self, now: Instant) -> u64 {
        match self.epoch {
            Some((base, ms)) => ms + now.saturating_duration_since(base).as_millis() as u64,
            None => unix_ms_now(),
        }
    }

    fn via(&mut self) -> String {
        format!(
            "SIP/2.0/UDP {};branch={}",
            self.settings.local,
            self.ids.branch()
        )
    }

    fn contact(&self) -> String {
        format!("<sip:sipnode@{}>", self.settings.local)
    }

    fn reply(&mut self, stx: ServerTxId, req: &Message, code: u16, now: Instant) {
        let tag = self.ids.tag();
        let b = response_to(req, code, Some(&tag));
        if let Err(e) = self.tx.send_response_bytes(stx, code, b.finish(), now) {
            tracing::debug!(error = %e, code, "response not sent");
        }
    }

    // ---- model plumbing ----

    fn feed(&mut self, input: Input, now: Instant) {
        self.inputs.push_back(input);
        let mut actions = Vec::new();
        while let Some(i) = self.inputs.pop_front() {
            actions.clear();
            let ms = self.now_ms(now);
            self.model.handle(i, ms, &mut actions);
            for a in actions.drain(..) {
                self.apply(a, now);
            }
        }
        self.dropped_call_ids.clear();
    }

    fn apply(&mut self, a: Action, now: Instant) {
        match a {
            Action::Publish { mut event, leg } => {
                if let (Some(leg), Some(c)) = (leg, event.call_mut()) {
                    c.call_id = self
                        .legs
                        .get(&leg)
                        .map(|l| &l.call_id)
                        .or_else(|| self.dropped_call_ids.get(&leg))
                        .cloned();
                }
                metrics::counter!("sipnode_events_total", "event" => event.name()).increment(1);
                if let Event::EventDiverted(c) = &event {
                    let reason = match c.reason.as_deref() {
                        Some("route_timeout") => "route_timeout",
                        Some("queue_timeout") => "queue_timeout",
                        Some("forward_no_answer") => "forward_no_answer",
                        Some("forward_busy") => "forward_busy",
                        _ => "route_call",
                    };
                    metrics::counter!("sipnode_diversions_total", "reason" => reason).increment(1);
                }
                self.outputs.push_back(NodeOutput::Event(Box::new(event)));
            }
            Action::CallStarted { conn, tenant } => {
                metrics::counter!("sipnode_calls_total").increment(1);
                metrics::gauge!("sipnode_calls_active").increment(1.0);
                self.outputs
                    .push_back(NodeOutput::CallStarted { conn, tenant });
            }
            Action::CallEnded { conn } => {
                metrics::gauge!("sipnode_calls_active").decrement(1.0);
                self.outputs.push_back(NodeOutput::CallEnded { conn });
            }
            Action::PlaceLeg {
                leg,
                tenant,
                dest,
                from,
                sdp,
                auto_answer,
            } => self.place(leg, tenant, dest, from, sdp, auto_answer, now),
            Action::PlaceMediaLeg {
                leg,
                tenant,
                service,
                from,
                to,
                sdp,
            } => self.place_media(leg, tenant, service, from, to, sdp, now),
            Action::Ring { leg } => self.respond(leg, 180, None, now),
            Action::Answer { leg, sdp } => self.respond(leg, 200, sdp, now),
            Action::Reject { leg, code } => self.respond(leg, code, None, now),
            Action::Hangup { leg } => self.hangup(leg, now),
            Action::Reoffer {
                leg,
                sdp,
                direction,
            } => self.reoffer(leg, sdp, direction, now),
            Action::AnswerReoffer { leg, code, sdp } => self.answer_reoffer(leg, code, sdp, now),
            Action::AnswerRemote { leg } => {
                self.in_dialog(leg, Method::Notify, &[("Event", "talk".into())], None, now)
            }
            Action::SendDtmf { leg, digits } => {
                for d in digits.chars() {
                    let body = format!("Signal={d}\r\nDuration=160\r\n");
                    self.in_dialog(
                        leg,
                        Method::Info,
                        &[],
                        Some(("application/dtmf-relay", Bytes::from(body))),
                        now,
                    );
                }
            }
            Action::StartRingTimer { leg, ms } => {
                let at = now + Duration::from_millis(ms);
                if let Some(old) = self.ring_deadline.insert(leg, at) {
                    self.ring_timers.remove(&(old, leg));
                }
                self.ring_timers.insert((at, leg));
            }
            Action::CancelRingTimer { leg } => {
                if let Some(old) = self.ring_deadline.remove(&leg) {
                    self.ring_timers.remove(&(old, leg));
                }
            }
        }
    }

    // ---- SIP out ----

    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        id: LegId,
        tenant: String,
        dest: Dest,
        from: String,
        sdp: Option<Bytes>,
        auto_answer: bool,
        now: Instant,
    ) {
        let plan = self.directory.plan();
        let domain = plan.domain(&tenant).unwrap_or("switchboard").to_string();
        if let Some(kind) = voicemail_leg(&plan, &tenant, &dest) {
            drop(plan);
            let Some(ruri) = self.voicemail_uri(id, &tenant, &dest, &from, kind) else {
                tracing::warn!(
                    tenant,
                    dest = dest.number(),
                    "no media server for voicemail"
                );
                self.inputs.push_back(Input::Failed { leg: id, code: 503 });
                return;
            };
            let (ruri, peer) = ruri;
            let invite = Invite {
                ruri,
                peer,
                from,
                to: dest.number().to_string(),
                domain,
                sdp,
                auto_answer: false,
            };
            return self.send_invite(id, tenant, invite, now);
        }
        let gateway = match &dest {
            Dest::Dn(_) => Some(self.settings.edge),
            Dest::External(_) => self.settings.trunks.first().copied(),
            Dest::Trunk { trunk, .. } => plan.trunk_gateway(&tenant, trunk),
        };
        drop(plan);
        let (ruri, peer) = match (&dest, gateway) {
            (Dest::Dn(dn), Some(edge)) => (format!("sip:{dn}@{domain}"), Peer::udp(edge)),
            (_, Some(gw)) => (format!("sip:{}@{gw}", dest.number()), Peer::udp(gw)),
            (_, None) => {
                tracing::warn!(tenant, dest = dest.number(), trunk = ?dest.trunk(), "no gateway for an external leg");
                self.inputs.push_back(Input::Failed { leg: id, code: 503 });
                return;
            }
        };
        let invite = Invite {
            ruri,
            peer,
            from,
            to: dest.number().to_string(),
            domain,
            sdp,
            auto_answer,
        };
        self.send_invite(id, tenant, invite, now);
    }

    /// `sip:dialog@MCP;voicexml=URL` for a voicemail leg, and the media server.
    fn voicemail_uri(
        &self,
        id: LegId,
        tenant: &str,
        dest: &Dest,
        from: &str,
        kind: VoicemailLeg,
    ) -> Option<(String, Peer)> {
        let target = self.settings.voicemail.get()?;
        let base = &target.base_url;
        let caller = query_escape(from);
        let url = match kind {
            VoicemailLeg::Access => {
                format!("{base}/voicemail/v1/tenants/{tenant}/access?caller={caller}")
            }
            VoicemailLeg::Deposit => {
                let mailbox = query_escape(dest.number());
                let mut url = format!(
                    "{base}/voicemail/v1/tenants/{tenant}/deposit/{mailbox}?caller={caller}"
                );
                let call = self.model.call_of_leg(id).and_then(|c| self.model.call(c));
                if let Some(call) = call {
                    url.push_str(&format!("&conn={}", call.conn));
                    let data = serde_json::to_string(&call.user_data).unwrap_or_default();
                    if !call.user_data.is_empty() && data.len() <= MAX_USER_DATA_IN_URL {
                        url.push_str(&format!("&ud={}", query_escape(&data)));
                    }
                }
                url
            }
        };
        let ruri = format!("sip:dialog@{};voicexml={}", target.mcp, param_escape(&url));
        Some((ruri, Peer::udp(target.mcp)))
    }

    /// A treatment leg: an INVITE to the media server for `service`.
    #[allow(clippy::too_many_arguments)]
    fn place_media(
        &mut self,
        id: LegId,
        tenant: String,
        service: MediaService,
        from: String,
        to: String,
        sdp: Bytes,
        now: Instant,
    ) {
        let Some(mcp) = self.settings.mcp else {
            tracing::warn!(tenant, "no media server (sip_node.mcp) for a treatment");
            self.inputs.push_back(Input::Failed { leg: id, code: 503 });
            return;
        };
        let domain = self
            .directory
            .domain(&tenant)
            .unwrap_or_else(|| "switchboard".to_string());
        let invite = Invite {
            ruri: format!("sip:{}@{mcp}{}", service.user, service.params),
            peer: Peer::udp(mcp),
            from,
            to,
            domain,
            sdp: Some(sdp),
            auto_answer: false,
        };
        self.send_invite(id, tenant, invite, now);
    }

    fn send_invite(&mut self, id: LegId, tenant: String, invite: Invite, now: Instant) {
        let Invite {
            ruri,
            peer,
            from,
            to,
            domain,
            sdp,
            auto_answer,
        } = invite;
        let call_id = format!("{}@sipnode", self.ids.call_id());
        let tag = self.ids.tag();
        let mut leg_sdp = LegSdp::new(self.ids.next_u64() >> 1);
        let via = self.via();
        let mut b = Builder::request(&Method::Invite, &ruri)
            .header("Via", &via)
            .header("Max-Forwards", 70)
            .header("From", format_args!("<sip:{from}@{domain}>;tag={tag}"))
            .header("To", format_args!("<sip:{to}@{domain}>"))
            .header("Call-ID", &call_id)
            .header("CSeq", "1 INVITE")
            .header("Contact", self.contact())
            .header(
                "Allow",
                "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY, UPDATE",
            );
        if auto_answer {
            b = b
                .header("Call-Info", format_args!("<sip:{domain}>;answer-after=0"))
                .header(
                    "Alert-Info",
                    "<http://www.notused.com>;info=alert-autoanswer",
                );
        }
        let bytes = match &sdp {
            Some(s) => {
                let body = leg_sdp.prepare(s, None);
                b.body("application/sdp", &body)
            }
            None => b.finish(),
        };
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "could not build INVITE");
                self.inputs.push_back(Input::Failed { leg: id, code: 500 });
                return;
            }
        };
        let client = match self.tx.send_request(msg, peer, now) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not send INVITE");
                self.inputs.push_back(Input::Failed { leg: id, code: 500 });
                return;
            }
        };
        tracing::debug!(leg = id.0, %call_id, tenant, %ruri, "placing leg");
        self.clients.insert(client, (id, Purpose::Invite));
        self.by_dialog.insert((call_id.clone(), tag.clone()), id);
        self.legs.insert(
            id,
            Leg {
                tenant,
                call_id,
                local_tag: tag,
                server: None,
                client: Some(client),
                got_provisional: false,
                hangup_pending: false,
                dialog: None,
                sdp: leg_sdp,
                last_ack: None,
                unacked_2xx: None,
                reinvite: None,
                pending_reinvite: None,
                gone: false,
            },
        );
    }

    /// A response on an incoming leg's INVITE.
    fn respond(&mut self, id: LegId, code: u16, sdp: Option<Bytes>, now: Instant) {
        let contact = self.contact();
        let Some(leg) = self.legs.get_mut(&id) else {
            return;
        };
        let Some((stx, req)) = leg.server.clone() else {
            return;
        };
        let mut b = response_to(&req, code, Some(&leg.local_tag));
        if code > 100 && code < 300 {
            b = b
                .copy_lines(&req, HeaderName::RecordRoute)
                .header("Contact", &contact);
        }
        let bytes = match (code, sdp) {
            (200..=299, Some(s)) => {
                let body = leg.sdp.prepare(&s, None);
                b.body("application/sdp", &body)
            }
            _ => b.finish(),
        };
        if code >= 200 {
            leg.server = None;
            self.incoming_invites.remove(&stx);
        }
        if (200..300).contains(&code) {
            match Message::parse(bytes.clone())
                .map_err(|e| e.to_string())
                .and_then(|m| Dialog::uas(&req, &m).map_err(|e| e.to_string()))
            {
                Ok(d) => leg.dialog = Some(d),
                Err(e) => tracing::warn!(error = %e, "no dialog for our 2xx"),
            }
            let peer = self
                .tx
                .server_peer(stx)
                .unwrap_or(Peer::udp(self.settings.edge));
            let t1 = self.settings.timers.t1;
            leg.unacked_2xx = Some((bytes.clone(), peer, t1, now + t1 * 64));
            self.retransmits.insert((now + t1, id));
        }
        if let Err(e) = self.tx.send_response_bytes(stx, code, bytes, now) {
            tracing::debug!(error = %e, code, "response not sent");
        }
        if code >= 300 {
            self.drop_leg(id);
        }
    }

    fn drop_leg(&mut self, id: LegId) {
        if let Some(leg) = self.legs.remove(&id) {
            tracing::debug!(leg = id.0, call_id = %leg.call_id, tenant = %leg.tenant, "leg ended");
            self.by_dialog.remove(&(leg.call_id.clone(), leg.local_tag));
            self.dropped_call_ids.insert(id, leg.call_id);
        }
        if let Some(at) = self.ring_deadline.remove(&id) {
            self.ring_timers.remove(&(at, id));
        }
    }

    fn send_in_dialog(
        &mut self,
        id: LegId,
        method: Method,
        headers: &[(&str, String)],
        body: Option<(&str, Bytes)>,
        purpose: Purpose,
        now: Instant,
    ) -> Option<ClientTxId> {
        let via = self.via();
        let leg = self.legs.get_mut(&id)?;
        let dialog = leg.dialog.as_mut()?;
        let mut b = match dialog.request(&method, &via) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "in-dialog request not built");
                return None;
            }
        };
        for (n, v) in headers {
            b = b.header(n, v);
        }
        let bytes = match body {
            Some((ct, body)) => b.body(ct, &body),
            None => b.finish(),
        };
        let peer = Uri::parse(dialog.next_hop())
            .ok()
            .and_then(|u| u.as_sip().and_then(uri_peer))
            .unwrap_or(Peer::udp(self.settings.edge));
        let msg = Message::parse(bytes).ok()?;
        match self.tx.send_request(msg, peer, now) {
            Ok(c) => {
                self.clients.insert(c, (id, purpose));
                Some(c)
            }
            Err(e) => {
                tracing::debug!(error = %e, "in-dialog request not sent");
                None
            }
        }
    }

    fn in_dialog(
        &mut self,
        id: LegId,
        method: Method,
        headers: &[(&str, String)],
        body: Option<(&str, Bytes)>,
        now: Instant,
    ) {
        self.send_in_dialog(id, method, headers, body, Purpose::Other, now);
    }

    fn hangup(&mut self, id: LegId, now: Instant) {
        let Some(leg) = self.legs.get_mut(&id) else {
            return;
        };
        leg.gone = true;
        if leg.server.is_some() {
            // An incoming call we never answered.
            self.respond(id, 487, None, now);
            return;
        }
        let confirmed = leg
            .dialog
            .as_ref()
            .is_some_and(|d| d.state() == DialogState::Confirmed);
        if confirmed && leg.client.is_none() {
            self.send_in_dialog(id, Method::Bye, &[], None, Purpose::Bye, now);
            self.drop_leg(id);
            return;
        }
        if let Some(client) = leg.client {
            if leg.got_provisional {
                self.cancel(client, now);
            } else {
                leg.hangup_pending = true;
            }
            return;
        }
        self.drop_leg(id);
    }

    fn cancel(&mut self, client: ClientTxId, now: Instant) {
        let (Some(req), Some(peer)) = (self.tx.client_request(client), self.tx.client_peer(client))
        else {
            return;
        };
        if let Ok(m) = Message::parse(cancel_for(req)) {
            if let Err(e) = self.tx.send_request(m, peer, now) {
                tracing::debug!(error = %e, "CANCEL not sent");
            }
        }
    }

    fn reoffer(&mut self, id: LegId, sdp: Option<Bytes>, direction: Direction, now: Instant) {
        let Some(leg) = self.legs.get_mut(&id) else {
            self.inputs.push_back(Input::ReofferDone {
                leg: id,
                ok: false,
                sdp: None,
            });
            return;
        };
        let Some(base) = sdp.or_else(|| leg.sdp.last.clone()) else {
            self.inputs.push_back(Input::ReofferDone {
                leg: id,
                ok: false,
                sdp: None,
            });
            return;
        };
        let body = leg.sdp.prepare(&base, Some(direction));
        let c = self.send_in_dialog(
            id,
            Method::Invite,
            &[],
            Some(("application/sdp", body)),
            Purpose::Reinvite,
            now,
        );
        match (c, self.legs.get_mut(&id)) {
            (Some(c), Some(leg)) => leg.reinvite = Some(c),
            _ => self.inputs.push_back(Input::ReofferDone {
                leg: id,
                ok: false,
                sdp: None,
            }),
        }
    }

    fn send_ack(&mut self, id: LegId, seq: u32, body: Option<Bytes>) {
        let via = self.via();
        let Some(leg) = self.legs.get_mut(&id) else {
            return;
        };
        let Some(d) = leg.dialog.as_ref() else { return };
        let b = d.ack(seq, &via);
        let bytes = match body {
            Some(s) => b.body("application/sdp", &s),
            None => b.finish(),
        };
        let peer = Uri::parse(d.next_hop())
            .ok()
            .and_then(|u| u.as_sip().and_then(uri_peer))
            .unwrap_or(Peer::udp(self.settings.edge));
        leg.last_ack = Some((bytes.clone(), peer));
        self.tx.send_stateless(bytes, peer);
    }

    // ---- SIP in ----

    fn on_request(&mut self, stx: ServerTxId, req: Message, from: Peer, now: Instant) {
        if let Err(e) = req.validate() {
            metrics::counter!("sipnode_bad_requests_total").increment(1);
            tracing::debug!(peer = %from, error = %e, "refusing malformed request");
            return self.reply(stx, &req, e.status(), now);
        }
        let method = req.method().cloned().unwrap_or(Method::Ack);
        if method == Method::Cancel {
            return self.on_cancel(stx, &req, now);
        }
        if let Some(local_tag) = req.to().ok().and_then(|t| t.tag().map(str::to_string)) {
            let key = (req.call_id().unwrap_or("").to_string(), local_tag);
            let Some(&id) = self.by_dialog.get(&key) else {
                return self.reply(stx, &req, 481, now);
            };
            return self.in_dialog_request(id, stx, req, method, now);
        }
        match method {
            Method::Invite => self.new_call(stx, req, from, now),
            Method::Options => {
                let b = response_to(&req, 200, Some(&self.ids.tag()))
                    .header("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY");
                let _ = self.tx.send_response_bytes(stx, 200, b.finish(), now);
            }
            _ => self.reply(stx, &req, 405, now),
        }
    }

    fn new_call(&mut self, stx: ServerTxId, req: Message, from: Peer, now: Instant) {
        if self.draining {
            return self.reply(stx, &req, 503, now);
        }
        let (called, host) = match req.request_uri() {
            Ok(u) => (
                user_of(&u),
                u.as_sip()
                    .map(|s| s.host.as_str().to_string())
                    .unwrap_or_default(),
            ),
            Err(_) => return self.reply(stx, &req, 416, now),
        };
        let Some(called) = called else {
            return self.reply(stx, &req, 404, now);
        };
        let plan = self.directory.plan();
        let Some(host_tenant) = plan.tenant_for_host(&host) else {
            return self.reply(stx, &req, 404, now);
        };
        let caller = req
            .from()
            .ok()
            .and_then(|f| user_of(&f.uri))
            .unwrap_or_else(|| "anonymous".to_string());
        // The node's unnamed gateways first, then the edge (its calls come from devices),
        // then the tenants' named trunks by address.
        let ingress = if self.settings.trunks.contains(&from.addr) {
            Ingress::Gateway
        } else if from.addr == self.settings.edge {
            Ingress::Device
        } else {
            match plan.trunk_at(from.addr) {
                Some((_, trunk)) => Ingress::Trunk(trunk),
                None => Ingress::Device,
            }
        };
        let query = Query {
            tenant: Some(host_tenant),
            called: &called,
            calling: &caller,
            ingress,
            default_gateway: !self.settings.trunks.is_empty(),
        };
        let (tenant, caller_internal, to) = match plan.resolve(&query) {
            Ok(r) => {
                metrics::counter!("sipnode_dialplan_total", "result" => "routed").increment(1);
                tracing::debug!(tenant = %r.tenant, called, number = %r.number, rule = ?r.rule, target = ?r.target, "dial plan");
                let internal = r.caller_internal;
                (
                    r.tenant,
                    internal,
                    Resolved::Ok(dest_of(r.target, r.number)),
                )
            }
            Err(e) => {
                let tenant = match &e {
                    ResolveError::NoRoute { tenant, .. } => tenant.clone(),
                    _ => host_tenant.to_string(),
                };
                metrics::counter!("sipnode_dialplan_total", "result" => "no_route").increment(1);
                tracing::info!(tenant, called, caller, reason = %e, "no route for an incoming call");
                let internal = plan.is_dn(&tenant, &caller)
                    && !matches!(ingress, Ingress::Trunk(_) | Ingress::Gateway);
                (tenant, internal, Resolved::Invalid(e.to_string()))
            }
        };
        drop(plan);
        let id = LegId::incoming(self.next_incoming);
        self.next_incoming += 1;
        let call_id = req.call_id().unwrap_or("").to_string();
        let tag = self.ids.tag();
        let sdp = (!req.body().is_empty()).then(|| req.body_bytes());
        let mut leg_sdp = LegSdp::new(self.ids.next_u64() >> 1);
        leg_sdp.last = None;
        tracing::info!(%call_id, tenant, caller, called, "incoming call");
        self.reply_trying(stx, &req, now);
        self.by_dialog.insert((call_id.clone(), tag.clone()), id);
        self.incoming_invites.insert(stx, id);
        self.legs.insert(
            id,
            Leg {
                tenant: tenant.clone(),
                call_id,
                local_tag: tag,
                server: Some((stx, req)),
                client: None,
                got_provisional: false,
                hangup_pending: false,
                dialog: None,
                sdp: leg_sdp,
                last_ack: None,
                unacked_2xx: None,
                reinvite: None,
                pending_reinvite: None,
                gone: false,
            },
        );
        self.feed(
            Input::Incoming {
                leg: id,
                tenant,
                caller,
                caller_internal,
                dialed: called,
                to,
                sdp,
            },
            now,
        );
    }

    fn reply_trying(&mut self, stx: ServerTxId, req: &Message, now: Instant) {
        let b = response_to(req, 100, None);
        let _ = self.tx.send_response_bytes(stx, 100, b.finish(), now);
    }

    fn on_cancel(&mut self, stx: ServerTxId, cancel: &Message, now: Instant) {
        let Some(invite) = self.tx.find_invite_for_cancel(cancel) else {
            return self.reply(stx, cancel, 481, now);
        };
        self.reply(stx, cancel, 200, now);
        let Some(&id) = self.incoming_invites.get(&invite) else {
            return;
        };
        // 487 for the INVITE, then the model releases the call.
        self.respond(id, 487, None, now);
        self.feed(Input::HungUp { leg: id }, now);
    }

    fn in_dialog_request(
        &mut self,
        id: LegId,
        stx: ServerTxId,
        req: Message,
        method: Method,
        now: Instant,
    ) {
        let Some(leg) = self.legs.get_mut(&id) else {
            return self.reply(stx, &req, 481, now);
        };
        let Some(dialog) = leg.dialog.as_mut() else {
            return self.reply(stx, &req, 481, now);
        };
        if let Err(e) = dialog.on_request(&req) {
            let code = e.status();
            return self.reply(stx, &req, code, now);
        }
        match method {
            Method::Bye => {
                self.reply(stx, &req, 200, now);
                self.drop_leg(id);
                let input = if self.model.is_treatment_leg(id) {
                    // The media server's application exited: its results are in the body.
                    let ct = req.content_type().unwrap_or_default();
                    let results = exit_results(ct, req.body());
                    Input::TreatmentExit { leg: id, results }
                } else {
                    Input::HungUp { leg: id }
                };
                self.feed(input, now);
            }
            Method::Invite => {
                // A re-INVITE from the device (its own hold, a media change): with an offer
                // the model relays it to the other party; an offerless one (a session
                // refresh) gets the media we last sent.
                if leg.pending_reinvite.is_some() {
                    return self.reply(stx, &req, 491, now);
                }
                if req.body().is_empty() || self.model.call_of_leg(id).is_none() {
                    return self.reinvite_ok(id, stx, &req, None, now);
                }
                let sdp = req.body_bytes();
                leg.pending_reinvite = Some((stx, req));
                self.feed(Input::DeviceReoffer { leg: id, sdp }, now);
            }
            _ => self.reply(stx, &req, 200, now),
        }
    }

    /// The model's answer to a device's re-INVITE.
    fn answer_reoffer(&mut self, id: LegId, code: u16, sdp: Option<Bytes>, now: Instant) {
        let Some((stx, req)) = self
            .legs
            .get_mut(&id)
            .and_then(|l| l.pending_reinvite.take())
        else {
            return;
        };
        if code != 200 {
            return self.reply(stx, &req, code, now);
        }
        self.reinvite_ok(id, stx, &req, sdp, now);
    }

    /// 200 to a device's re-INVITE with `sdp` (the other party's answer), or, without it, the
    /// media we last sent the device in the direction that mirrors its offer.
    fn reinvite_ok(
        &mut self,
        id: LegId,
        stx: ServerTxId,
        req: &Message,
        sdp: Option<Bytes>,
        now: Instant,
    ) {
        let contact = self.contact();
        let Some(leg) = self.legs.get_mut(&id) else {
            return;
        };
        let body = match sdp {
            Some(s) => Some(leg.sdp.prepare(&s, None)),
            None => {
                let offer = req.body();
                let dir = (!offer.is_empty()).then(|| answer_direction(direction_of(offer)));
                match (leg.sdp.last.clone(), dir) {
                    (Some(last), Some(d)) => Some(leg.sdp.prepare(&last, Some(d))),
                    (last, _) => last,
                }
            }
        };
        let b = response_to(req, 200, None)
            .header("Contact", &contact)
            .copy_lines(req, HeaderName::RecordRoute);
        let bytes = match body {
            Some(s) => b.body("application/sdp", &s),
            None => b.finish(),
        };
        if let Err(e) = self.tx.send_response_bytes(stx, 200, bytes, now) {
            tracing::debug!(error = %e, "200 to a re-INVITE not sent");
        }
    }

    fn on_ack(&mut self, msg: &Message) {
        let Some(tag) = msg.to().ok().and_then(|t| t.tag().map(str::to_string)) else {
            return;
        };
        let key = (msg.call_id().unwrap_or("").to_string(), tag);
        if let Some(id) = self.by_dialog.get(&key) {
            if let Some(leg) = self.legs.get_mut(id) {
                leg.unacked_2xx = None;
            }
        }
    }

    fn on_response(&mut self, client: ClientTxId, resp: Message, now: Instant) {
        let Some(&(id, purpose)) = self.clients.get(&client) else {
            return;
        };
        let code = resp.status().unwrap_or(500);
        match purpose {
            Purpose::Invite => self.invite_response(id, client, resp, code, now),
            Purpose::Reinvite => {
                if code < 200 {
                    return;
                }
                let seq = resp.cseq().map(|c| c.seq).unwrap_or(0);
                let sdp = (!resp.body().is_empty()).then(|| resp.body_bytes());
                if let Some(leg) = self.legs.get_mut(&id) {
                    leg.reinvite = None;
                    if (200..300).contains(&code) {
                        if let Some(d) = leg.dialog.as_mut() {
                            let _ = d.on_response(&Method::Invite, &resp);
                        }
                        self.send_ack(id, seq, None);
                    }
                }
                self.feed(
                    Input::ReofferDone {
                        leg: id,
                        ok: (200..300).contains(&code),
                        sdp,
                    },
                    now,
                );
            }
            Purpose::Bye | Purpose::Other => {}
        }
    }

    fn invite_response(
        &mut self,
        id: LegId,
        client: ClientTxId,
        resp: Message,
        code: u16,
        now: Instant,
    ) {
        let Some(leg) = self.legs.get_mut(&id) else {
            // The leg is gone: a late 2xx still gets its ACK and a BYE.
            if (200..300).contains(&code) {
                self.ack_and_bye(client, &resp, now);
            }
            return;
        };
        if code < 200 {
            leg.got_provisional = true;
            if leg.dialog.is_none() && code > 100 {
                if let Some(req) = self.tx.client_request(client) {
                    // An early dialog: NOTIFY (answer request) can be sent in it.
                    leg.dialog = Dialog::uac(req, &resp).ok();
                }
            }
            if leg.hangup_pending {
                leg.hangup_pending = false;
                self.cancel(client, now);
                return;
            }
            if code > 100 && !leg.gone {
                self.feed(Input::Ringing { leg: id }, now);
            }
            return;
        }
        if code >= 300 {
            return self.leg_failed(id, code, now);
        }
        // 2xx
        if leg
            .dialog
            .as_ref()
            .is_some_and(|d| d.state() == DialogState::Confirmed)
        {
            // A retransmission: re-send our ACK.
            if let Some((b, p)) = leg.last_ack.clone() {
                self.tx.send_stateless(b, p);
            }
            return;
        }
        let Some(req) = self.tx.client_request(client).cloned() else {
            return;
        };
        match Dialog::uac(&req, &resp) {
            Ok(d) => leg.dialog = Some(d),
            Err(e) => {
                // Nothing to ACK or BYE in: the leg failed (the far end times out itself).
                tracing::warn!(leg = id.0, error = %e, "2xx without a usable dialog");
                return self.leg_failed(id, 502, now);
            }
        }
        leg.client = None;
        let sdp = (!resp.body().is_empty()).then(|| resp.body_bytes());
        let offerless = req.body().is_empty();
        let gone = leg.gone || leg.hangup_pending;
        // An offerless INVITE got the offer in the 2xx: answer in the ACK with the same
        // media, inactive, until the other party's SDP comes with a re-INVITE.
        let ack_body = match (&sdp, offerless) {
            (Some(s), true) => Some(leg.sdp.prepare(s, Some(Direction::Inactive))),
            _ => None,
        };
        self.send_ack(id, 1, ack_body);
        if gone {
            self.send_in_dialog(id, Method::Bye, &[], None, Purpose::Bye, now);
            self.drop_leg(id);
            return;
        }
        self.feed(Input::Answered { leg: id, sdp }, now);
    }

    /// An outgoing leg failed with `code`: dropped, and the model told unless it had hung
    /// the leg up already.
    fn leg_failed(&mut self, id: LegId, code: u16, now: Instant) {
        let gone = self.legs.get(&id).is_none_or(|l| l.gone);
        self.drop_leg(id);
        if !gone {
            self.feed(Input::Failed { leg: id, code }, now);
        }
    }

    fn ack_and_bye(&mut self, client: ClientTxId, resp: &Message, now: Instant) {
        let Some(req) = self.tx.client_request(client).cloned() else {
            return;
        };
        let Ok(mut d) = Dialog::uac(&req, resp) else {
            return;
        };
        let via = self.via();
        let peer = Uri::parse(d.next_hop())
            .ok()
            .and_then(|u| u.as_sip().and_then(uri_peer))
            .unwrap_or(Peer::udp(self.settings.edge));
        self.tx.send_stateless(d.ack(1, &via).finish(), peer);
        let via = self.via();
        if let Ok(b) = d.request(&Method::Bye, &via) {
            if let Ok(m) = Message::parse(b.finish()) {
                let _ = self.tx.send_request(m, peer, now);
            }
        }
    }

    fn on_tx_event(&mut self, ev: TxEvent, now: Instant) {
        match ev {
            TxEvent::Timeout(c) | TxEvent::TransportError(c) => {
                let Some(&(id, purpose)) = self.clients.get(&c) else {
                    return;
                };
                let code = if matches!(ev, TxEvent::Timeout(_)) {
                    408
                } else {
                    503
                };
                match purpose {
                    Purpose::Invite => self.leg_failed(id, code, now),
                    Purpose::Reinvite => self.feed(
                        Input::ReofferDone {
                            leg: id,
                            ok: false,
                            sdp: None,
                        },
                        now,
                    ),
                    _ => {}
                }
            }
            TxEvent::ProceedingTimeout(c) => self.cancel(c, now),
            TxEvent::ClientTerminated(c) => {
                // An INVITE that ended without a 2xx we could use and without a final
                // response that ended the leg: the leg must not wait forever.
                if let Some((id, Purpose::Invite)) = self.clients.remove(&c) {
                    if self.legs.get(&id).is_some_and(|l| l.client == Some(c)) {
                        self.leg_failed(id, 408, now);
                    }
                }
            }
            TxEvent::ServerTerminated(s) => {
                self.incoming_invites.remove(&s);
            }
            TxEvent::NoAck(_) | TxEvent::ServerTransportError(_) => {}
        }
    }

    fn fire_ring_timers(&mut self, now: Instant) {
        while let Some(&(at, leg)) = self.ring_timers.first() {
            if at > now {
                break;
            }
            self.ring_timers.remove(&(at, leg));
            self.ring_deadline.remove(&leg);
            tracing::debug!(leg = leg.0, "ring-no-answer timeout");
            self.feed(Input::RingTimeout { leg }, now);
        }
    }

    /// Our 2xx to an incoming INVITE goes out again, T1 doubling up to T2, until its ACK
    /// (RFC 3261 §13.3.1.4).
    fn retransmit_2xx(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.retransmits.first() {
            if at > now {
                break;
            }
            self.retransmits.remove(&(at, id));
            let t2 = self.settings.timers.t2;
            let Some(leg) = self.legs.get_mut(&id) else {
                continue;
            };
            let Some((bytes, peer, interval, until)) = leg.unacked_2xx.clone() else {
                continue;
            };
            if now >= until {
                // No ACK within 64*T1: the session is not up; end it (RFC 3261 §13.3.1.4).
                leg.unacked_2xx = None;
                tracing::info!(leg = id.0, call_id = %leg.call_id, "no ACK for our 2xx: hanging up");
                self.send_in_dialog(id, Method::Bye, &[], None, Purpose::Bye, now);
                self.drop_leg(id);
                self.feed(Input::HungUp { leg: id }, now);
                continue;
            }
            self.tx.send_stateless(bytes.clone(), peer);
            let next = (interval * 2).min(t2);
            if let Some(leg) = self.legs.get_mut(&id) {
                leg.unacked_2xx = Some((bytes, peer, next, until));
            }
            self.retransmits.insert((now + next, id));
        }
    }

    fn drain_tx_events(&mut self, now: Instant) {
        while let Some(ev) = self.tx.poll_event() {
            self.on_tx_event(ev, now);
        }
    }
}

impl Core for SipNode {
    fn handle_message(&mut self, msg: Message, from: Peer, now: Instant) {
        match self.tx.handle_incoming(msg, from, now) {
            Incoming::Request { tx, msg } => self.on_request(tx, msg, from, now),
            Incoming::Response { tx, msg } => self.on_response(tx, msg, now),
            Incoming::Ack { msg } => self.on_ack(&msg),
            Incoming::StrayResponse { msg } => {
                // A 2xx retransmission after the INVITE transaction ended: re-ACK.
                if msg.status().is_some_and(|c| (200..300).contains(&c)) {
                    let key = (
                        msg.call_id().unwrap_or("").to_string(),
                        msg.from()
                            .ok()
                            .and_then(|f| f.tag().map(str::to_string))
                            .unwrap_or_default(),
                    );
                    if let Some(leg) = self.by_dialog.get(&key).and_then(|id| self.legs.get(id)) {
                        if let Some((b, p)) = leg.last_ack.clone() {
                            self.tx.send_stateless(b, p);
                        }
                    }
                }
            }
            Incoming::Absorbed => {}
            Incoming::Malformed { msg, error } => {
                if msg.is_request() && msg.method() != Some(&Method::Ack) {
                    let b = response_to(&msg, error.status(), Some("sb"));
                    self.tx.send_stateless(b.finish(), from);
                }
            }
        }
        self.drain_tx_events(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        self.drain_tx_events(now);
        self.fire_ring_timers(now);
        self.retransmit_2xx(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.tx.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.tx.poll_timeout(),
            self.ring_timers.first().map(|(t, _)| *t),
            self.retransmits.first().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn start_drain(&mut self, _now: Instant) {
        self.draining = true;
    }

    fn is_idle(&self, _now: Instant) -> bool {
        self.model.is_empty() && self.tx.is_empty()
    }
}

impl Controlled for SipNode {
    type Command = NodeCommand;
    type Output = NodeOutput;

    fn handle_command(&mut self, cmd: NodeCommand, now: Instant) {
        tracing::debug!(request_id = cmd.id, tenant = %cmd.tenant, request = ?cmd.request, "call-control request");
        metrics::counter!("sipnode_requests_total").increment(1);
        self.feed(
            Input::Request {
                id: cmd.id,
                tenant: cmd.tenant,
                req: cmd.request,
            },
            now,
        );
        self.drain_tx_events(now);
    }

    fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }
}
