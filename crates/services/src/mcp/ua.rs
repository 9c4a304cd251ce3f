//! The media server's SIP user agent, sans-I/O: it answers INVITEs with SDP (RFC 3264 through
//! `switchboard-sdp`), handles ACK, re-INVITE, BYE and CANCEL with `switchboard-sip`
//! transactions and dialogs, and hangs up when told to. It owns no sockets and no media: it asks
//! for an RTP stream with [`McpOutput::Allocate`] and gets it back as
//! [`McpCommand::Allocated`] (the SDP answer needs the port), and says when a call's service
//! starts ([`McpOutput::Start`]) and ends ([`McpOutput::Release`]). The async glue in
//! [`super::role`] turns those into media-engine calls.
//!
//! It also places calls itself ([`McpCommand::Dial`]): the far leg of a VoiceXML bridge or
//! consultation transfer, an INVITE with our offer on a stream that shares the caller's media
//! worker, cancelled at its ring timeout, reported as [`McpOutput::Leg`] events.
//!
//! A 2xx to an INVITE is retransmitted by this core (RFC 3261 §13.3.1.4: the transaction layer
//! stops at the 2xx) until its ACK arrives; without an ACK after 64*T1 the call is hung up.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_media::{Codec as MediaCodec, StreamId};
use switchboard_sdp::{
    Codec as SdpCodec, LocalMedia, Negotiated, NegotiationError, OfferAnswer, SessionDescription,
};
use switchboard_sip::build::{cancel_for, response_to, Builder};
use switchboard_sip::transaction::{
    ClientTxId, IdGen, Incoming, ServerTxId, Timers, Transactions, TxEvent,
};
use switchboard_sip::{Dialog, DialogId, Message, Method, Peer, Transmit, Transport, Uri};
use switchboard_sip_net::{Controlled, Core};

use super::service::{self, Service};
use crate::sip::target::uri_peer;

/// What the UA needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct UaSettings {
    /// Bound SIP addresses (for Via and Contact).
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// The RTP address put in SDP (also used in Contact when SIP is bound to a wildcard).
    pub rtp_ip: IpAddr,
    pub timers: Timers,
    /// Whether a VoiceXML dialog runner is configured; without one `sip:dialog@` gets 488.
    pub dialog_runner: bool,
    /// Where outgoing calls to `tel:` numbers go (`mcp.transfer_gateway`); without one they
    /// fail (a `sip:` URI is called at its own host).
    pub transfer_gateway: Option<SocketAddr>,
}

/// An outgoing call's id, chosen by the glue ([`McpCommand::Dial`]).
pub type LegId = u64;

/// What happens to an outgoing call ([`McpOutput::Leg`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEvent {
    /// A provisional response (180, 183): the far end rings.
    Ringing,
    /// A 2xx: the call is up and `stream` carries its media (already set to the answer).
    Answered { stream: StreamId },
    /// The call ended before it was answered, with the final status (408 when nothing or
    /// the ring timeout ended it, 487 when it was hung up first, 503 without a stream or
    /// while draining, 488 when the answer's SDP was unusable).
    Failed { status: u16 },
    /// The call ended after the answer: by the far end's BYE, or by us.
    Ended { by_far_end: bool },
    /// Nothing was sent: the destination is no `sip:` URI with an IP host or `tel:`
    /// number, or a `tel:` number has no gateway to go to.
    BadDestination,
}

/// Why an outgoing call cannot be placed to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// Not a `sip:` URI with an IP host or a `tel:` number.
    BadDestination(String),
    /// A `tel:` number and no `mcp.transfer_gateway`.
    NoGateway,
}

/// Where an outgoing call to `dest` goes: its Request-URI and first hop. `sip:` URIs go to
/// their host (an IP address or `localhost`; `maddr` and `transport` honoured), `tel:`
/// numbers (global or local, visual separators dropped) to `gateway` as `sip:NUMBER@gateway`.
pub fn dial_target(dest: &str, gateway: Option<SocketAddr>) -> Result<(String, Peer), DialError> {
    let dest = dest.trim();
    let bad = || DialError::BadDestination(dest.chars().take(200).collect());
    if dest.is_empty() || dest.len() > 1024 || dest.contains(['\r', '\n', '<', '>', '"', ' ']) {
        return Err(bad());
    }
    let lower = dest.to_ascii_lowercase();
    if let Some(tel) = lower.strip_prefix("tel:") {
        let number: String = tel
            .split(';')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
            .collect();
        let plus = number.strip_prefix('+').unwrap_or(&number);
        let ok = !plus.is_empty()
            && plus.len() <= 32
            && plus
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#' | 'a'..='d'));
        if !ok {
            return Err(bad());
        }
        let gw = gateway.ok_or(DialError::NoGateway)?;
        let user = number.replace('#', "%23");
        return Ok((format!("sip:{user}@{gw}"), Peer::udp(gw)));
    }
    let uri = Uri::parse(dest).map_err(|_| bad())?;
    let sip = uri.as_sip().ok_or_else(bad)?;
    let peer = uri_peer(sip).ok_or_else(bad)?;
    if peer.transport != Transport::Udp && peer.transport != Transport::Tcp {
        return Err(bad());
    }
    Ok((dest.to_owned(), peer))
}

/// A call's id inside the core.
pub type SessionId = u64;

/// How the RTP stream of a call is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSetup {
    pub remote: Option<SocketAddr>,
    pub codec: MediaCodec,
    pub telephone_event: Option<u8>,
    pub send: bool,
    pub receive: bool,
}

/// What the core asks of the rest of the process.
#[derive(Debug, Clone, PartialEq)]
pub enum McpOutput {
    /// Create the call's RTP stream; answer with [`McpCommand::Allocated`]. Streams with the
    /// same `affinity` must be mixable together (conference members).
    Allocate {
        session: SessionId,
        setup: StreamSetup,
        affinity: Option<u64>,
    },
    /// New remote address, codec or direction (re-INVITE, or the answer in an ACK).
    Update {
        stream: StreamId,
        setup: StreamSetup,
    },
    /// The call is established (ACK received): run its service on the stream.
    Start {
        session: SessionId,
        stream: StreamId,
        service: Service,
        call_id: String,
        caller: String,
        /// For dialogs: the RFC 5552 `session` variables read from the INVITE (else null).
        session_vars: serde_json::Value,
    },
    /// The final answer to a [`McpCommand::Refer`] or [`McpCommand::ReferToLeg`]: its
    /// status (408 when none came, 481 when the call was gone).
    ReferResult { stream: StreamId, status: u16 },
    /// Progress of an outgoing call placed with [`McpCommand::Dial`]. After `Failed` or
    /// `Ended` nothing more comes for the leg (its stream is released with
    /// [`McpOutput::Release`]).
    Leg { leg: LegId, event: LegEvent },
    /// The call is over (BYE either way, CANCEL, no ACK, failure): free its stream.
    Release {
        session: SessionId,
        stream: Option<StreamId>,
        reason: &'static str,
    },
}

/// What the rest of the process tells the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpCommand {
    /// The stream asked for with [`McpOutput::Allocate`] (its id and local RTP address).
    Allocated {
        session: SessionId,
        result: Result<(StreamId, SocketAddr), String>,
    },
    /// Hang up the call of this stream (announcement over, dialog finished, RTP timeout);
    /// `body` (content type, bytes) goes in the BYE (RFC 5552 `<exit namelist>` results).
    Hangup {
        stream: StreamId,
        reason: String,
        body: Option<(String, Vec<u8>)>,
    },
    /// Ask the caller to call `target` instead (blind transfer, RFC 3515 REFER in the call's
    /// dialog); answered with [`McpOutput::ReferResult`].
    Refer { stream: StreamId, target: String },
    /// Place an outgoing call (the far leg of a bridge or consultation transfer) to `dest`
    /// (see [`dial_target`]) with our SDP offer on a new stream that shares a worker with
    /// `affinity`; `caller` (a SIP URI) goes in the From. Progress comes as
    /// [`McpOutput::Leg`]; the call is cancelled when `ring_timeout` passes without an
    /// answer (`Failed { status: 408 }`). `aai` goes in a `User-to-User` header (RFC 7433,
    /// hex).
    Dial {
        leg: LegId,
        dest: String,
        caller: String,
        affinity: u64,
        ring_timeout: Duration,
        aai: Option<String>,
    },
    /// End an outgoing call: CANCEL while it rings, BYE once answered.
    HangupLeg { leg: LegId },
    /// Hand the caller of `stream` over to the far end of `leg` (consultation transfer):
    /// REFER with `Refer-To: <leg's remote target?Replaces=leg's dialog>` (RFC 3515, RFC
    /// 3891), answered with [`McpOutput::ReferResult`].
    ReferToLeg { stream: StreamId, leg: LegId },
}

const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, NOTIFY";
const TELEPHONE_EVENT_PT: u8 = 101;

#[derive(Debug)]
enum Phase {
    /// INVITE received (or, for an outgoing call, to be sent), stream requested; no final
    /// response yet.
    Allocating { cancelled: bool },
    /// An outgoing call's INVITE is out; no final response yet.
    Dialing,
    /// 2xx sent (or being retransmitted) and the call runs; see `pending_2xx`.
    Established,
    /// We sent BYE; waiting for its response.
    Ending,
}

#[derive(Debug)]
struct Pending2xx {
    payload: Bytes,
    cseq: u32,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

struct Session {
    phase: Phase,
    service: Service,
    /// The dialog-creating INVITE and its transaction, until the final response.
    invite: Option<(ServerTxId, Message)>,
    local_tag: String,
    dialog_id: DialogId,
    dialog: Option<Dialog>,
    /// Where the INVITE came from: responses, and requests when the Contact is unusable.
    peer: Peer,
    offer: Option<SessionDescription>,
    oa: Option<OfferAnswer>,
    stream: Option<StreamId>,
    local_rtp: Option<SocketAddr>,
    pending_2xx: Option<Pending2xx>,
    /// Our offer went in a 2xx (INVITE without SDP); the answer comes in the ACK.
    answer_in_ack: bool,
    started: bool,
    caller: String,
    session_vars: serde_json::Value,
    /// Set for an outgoing call.
    leg: Option<Outgoing>,
}

/// The state of an outgoing call (a session we placed).
#[derive(Debug)]
struct Outgoing {
    id: LegId,
    ruri: String,
    aai: Option<String>,
    ring_timeout: Duration,
    client: Option<ClientTxId>,
    got_provisional: bool,
    /// We hung up (or the ring timeout did) before a final response: CANCEL sent or owed.
    cancelled: bool,
    /// Why the call failed, when we know better than the final response (408: no answer).
    cause: Option<u16>,
    answered: bool,
    /// Our ACK of the 2xx and where it went (sent again for retransmitted 2xx).
    last_ack: Option<(Bytes, Peer)>,
    /// `Failed` or `Ended` was reported.
    reported: bool,
}

/// The media server's SIP UA core.
pub struct McpUa {
    tx: Transactions,
    ids: IdGen,
    settings: UaSettings,
    sessions: HashMap<SessionId, Session>,
    by_dialog: HashMap<DialogId, SessionId>,
    by_invite: HashMap<ServerTxId, SessionId>,
    by_stream: HashMap<StreamId, SessionId>,
    byes: HashMap<ClientTxId, SessionId>,
    /// REFERs sent, by transaction: the stream to answer for.
    refers: HashMap<ClientTxId, StreamId>,
    retransmits: BTreeSet<(Instant, SessionId)>,
    outputs: std::collections::VecDeque<McpOutput>,
    next_session: SessionId,
    draining: bool,
    /// Calls to hang up once the current message or command is handled.
    hangup_queue: Vec<(SessionId, &'static str)>,
    /// Outgoing calls by leg id, and their INVITE transactions.
    legs: HashMap<LegId, SessionId>,
    leg_invites: HashMap<ClientTxId, SessionId>,
    /// Ring timeouts of outgoing calls, and the last chance of cancelled ones.
    leg_timers: BTreeSet<(Instant, SessionId)>,
}

fn setup_of(n: &Negotiated) -> Option<StreamSetup> {
    let c = &n.codec;
    let codec = MediaCodec::from_sdp(&c.name, c.clock_rate, c.channels, c.payload_type)?;
    Some(StreamSetup {
        remote: n.remote,
        codec,
        telephone_event: n.telephone_event,
        send: n.direction.sends(),
        receive: n.direction.receives(),
    })
}

fn warning(text: &str) -> String {
    format!("399 switchboard \"{}\"", text.replace('"', "'"))
}

fn sdp_body(msg: &Message) -> Result<Option<SessionDescription>, String> {
    if msg.body().is_empty() {
        return Ok(None);
    }
    let is_sdp = msg
        .content_type()
        .is_some_and(|c| c.trim().to_ascii_lowercase().starts_with("application/sdp"));
    if !is_sdp {
        return Err("the body is not application/sdp".into());
    }
    let text = std::str::from_utf8(msg.body()).map_err(|_| "the SDP is not UTF-8".to_string())?;
    SessionDescription::parse(text)
        .map(Some)
        .map_err(|e| format!("bad SDP: {e}"))
}

/// `remote-target?Replaces=call-id;to-tag=REMOTE;from-tag=LOCAL`, %-escaped as a URI header
/// (RFC 3891 §3, RFC 3261 §19.1.1), or `None` when the remote target cannot carry it.
fn replaces_target(d: &Dialog) -> Option<String> {
    let target = d.remote_target().trim();
    let target = target
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(target);
    if target.is_empty() || target.contains(['?', '<', '>', '\r', '\n', '"']) {
        return None;
    }
    let id = d.id();
    let value = format!(
        "{};to-tag={};from-tag={}",
        id.call_id, id.remote_tag, id.local_tag
    );
    let escaped: String = value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
                )
            {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    Some(format!("{target}?Replaces={escaped}"))
}

/// FNV-1a of a conference id: the stream affinity of its members.
fn affinity_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl McpUa {
    pub fn new(settings: UaSettings, seed: u64) -> McpUa {
        McpUa {
            tx: Transactions::new(settings.timers),
            ids: IdGen::new(seed),
            settings,
            sessions: HashMap::new(),
            by_dialog: HashMap::new(),
            by_invite: HashMap::new(),
            by_stream: HashMap::new(),
            byes: HashMap::new(),
            refers: HashMap::new(),
            retransmits: BTreeSet::new(),
            outputs: std::collections::VecDeque::new(),
            next_session: 1,
            draining: false,
            hangup_queue: Vec::new(),
            legs: HashMap::new(),
            leg_invites: HashMap::new(),
            leg_timers: BTreeSet::new(),
        }
    }

    /// Calls in progress (any phase).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn local_media(&self, port: u16) -> LocalMedia {
        LocalMedia {
            username: "switchboard".into(),
            address: self.settings.rtp_ip,
            port,
            // G.722 after G.711 in our own offers: the engine's audio is 8 kHz either way, and
            // G.711 costs less; an offer that prefers G.722 gets it.
            codecs: vec![
                SdpCodec::pcmu(),
                SdpCodec::pcma(),
                SdpCodec::g722(),
                SdpCodec::l16(8000),
            ],
            telephone_event: Some(TELEPHONE_EVENT_PT),
            ptime: Some(20),
        }
    }

    fn local_addr(&self, t: Transport) -> Option<SocketAddr> {
        let a = match t {
            Transport::Udp => self.settings.udp,
            _ => self.settings.tcp,
        }?;
        Some(if a.ip().is_unspecified() {
            SocketAddr::new(self.settings.rtp_ip, a.port())
        } else {
            a
        })
    }

    fn contact(&self, t: Transport) -> String {
        match self.local_addr(t) {
            Some(a) if t == Transport::Udp => format!("<sip:mcp@{a}>"),
            Some(a) => format!("<sip:mcp@{a};transport={}>", t.via_token().to_lowercase()),
            None => format!("<sip:mcp@{}>", self.settings.rtp_ip),
        }
    }

    fn update_gauge(&self) {
        metrics::gauge!("mcp_sessions").set(self.sessions.len() as f64);
    }

    /// A final (non-2xx) or provisional response with our tag.
    fn reply(
        &mut self,
        stx: ServerTxId,
        req: &Message,
        code: u16,
        tag: Option<&str>,
        extra: &[(&str, String)],
        now: Instant,
    ) {
        let fresh;
        let tag = match tag {
            Some(t) => t,
            None => {
                fresh = self.ids.tag();
                &fresh
            }
        };
        let mut b = response_to(req, code, Some(tag));
        for (n, v) in extra {
            b = b.header(n, v);
        }
        if let Err(e) = self.tx.send_response_bytes(stx, code, b.finish(), now) {
            tracing::debug!(error = %e, code, "response not sent");
        }
        if code >= 400 {
            metrics::counter!("mcp_rejected_total", "status" => code.to_string()).increment(1);
        }
    }

    fn on_request(&mut self, stx: ServerTxId, req: Message, from: Peer, now: Instant) {
        if let Err(e) = req.validate() {
            tracing::debug!(peer = %from, error = %e, "refusing malformed request");
            let w = warning(&e.to_string());
            return self.reply(stx, &req, e.status(), None, &[("Warning", w)], now);
        }
        let Some(method) = req.method().cloned() else {
            return;
        };
        let in_dialog = req.to().is_ok_and(|t| t.tag().is_some());
        match method {
            Method::Cancel => self.on_cancel(stx, &req, now),
            Method::Options if !in_dialog => {
                let allow = ALLOW.to_string();
                self.reply(stx, &req, 200, None, &[("Allow", allow)], now)
            }
            Method::Invite if !in_dialog => self.on_invite(stx, req, from, now),
            _ if in_dialog => self.on_in_dialog(stx, req, method, now),
            _ => {
                let allow = ALLOW.to_string();
                self.reply(stx, &req, 405, None, &[("Allow", allow)], now)
            }
        }
    }

    fn on_invite(&mut self, stx: ServerTxId, req: Message, from: Peer, now: Instant) {
        if self.draining {
            return self.reply(stx, &req, 503, None, &[("Retry-After", "5".into())], now);
        }
        let service = match req.request_uri() {
            Ok(uri) => service::parse(&uri),
            Err(_) => Err(service::ServiceError {
                status: 400,
                reason: "bad Request-URI".into(),
            }),
        };
        let service = match service {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(peer = %from, status = e.status, reason = %e.reason, "INVITE refused");
                let w = warning(&e.reason);
                return self.reply(stx, &req, e.status, None, &[("Warning", w)], now);
            }
        };
        if matches!(service, Service::Dialog { .. }) && !self.settings.dialog_runner {
            tracing::info!(peer = %from, "VoiceXML dialog requested but no dialog runner is configured");
            let w = warning("no VoiceXML dialog runner is configured");
            return self.reply(stx, &req, 488, None, &[("Warning", w)], now);
        }
        let offer = match sdp_body(&req) {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(peer = %from, error = %e, "INVITE with unusable body");
                let w = warning(&e);
                return self.reply(stx, &req, 488, None, &[("Warning", w)], now);
            }
        };
        // Negotiate once to know the stream setup (and refuse with 488 at once); the answer
        // with the real port is made when the stream exists.
        let setup = match &offer {
            Some(offer) => {
                let mut probe = OfferAnswer::new(self.local_media(9), 1);
                match probe.handle_offer(offer) {
                    Ok((_, n)) => match setup_of(&n) {
                        Some(s) => s,
                        None => {
                            let e = NegotiationError::NoCommonCodec {
                                offered: n.codec.name.clone(),
                            };
                            return self.refuse_offer(stx, &req, &e, from, now);
                        }
                    },
                    Err(e) => return self.refuse_offer(stx, &req, &e, from, now),
                }
            }
            // No offer: we offer in the 2xx; the peer answers in the ACK.
            None => StreamSetup {
                remote: None,
                codec: MediaCodec::PCMU,
                telephone_event: Some(TELEPHONE_EVENT_PT),
                send: true,
                receive: true,
            },
        };
        let (Ok(call_id), Ok(from_hdr)) = (req.call_id(), req.from()) else {
            return;
        };
        let local_tag = self.ids.tag();
        let dialog_id = DialogId {
            call_id: call_id.to_owned(),
            local_tag: local_tag.clone(),
            remote_tag: from_hdr.tag().unwrap_or("").to_owned(),
        };
        let caller = from_hdr.uri.to_string();
        let session_vars = match &service {
            Service::Dialog { .. } => {
                let mut v = super::rfc5552::session_variables(&req);
                v["connection"]["protocol"]["sip"]["media"] = super::rfc5552::media_variable(
                    setup.codec.encoding,
                    setup.send,
                    setup.receive,
                    setup.telephone_event.is_some(),
                );
                v
            }
            _ => serde_json::Value::Null,
        };
        let id = self.next_session;
        self.next_session += 1;
        let affinity = match &service {
            Service::Conference(c) => Some(affinity_of(c)),
            _ => None,
        };
        tracing::info!(session = id, call_id, %caller, service = service.kind(), peer = %from, "call offered");
        metrics::counter!("mcp_calls_total", "service" => service.kind()).increment(1);
        self.by_dialog.insert(dialog_id.clone(), id);
        self.by_invite.insert(stx, id);
        self.sessions.insert(
            id,
            Session {
                phase: Phase::Allocating { cancelled: false },
                service,
                invite: Some((stx, req)),
                local_tag,
                dialog_id,
                dialog: None,
                peer: from,
                offer,
                oa: None,
                stream: None,
                local_rtp: None,
                pending_2xx: None,
                answer_in_ack: false,
                started: false,
                caller,
                session_vars,
                leg: None,
            },
        );
        self.update_gauge();
        self.outputs.push_back(McpOutput::Allocate {
            session: id,
            setup,
            affinity,
        });
    }

    fn refuse_offer(
        &mut self,
        stx: ServerTxId,
        req: &Message,
        e: &NegotiationError,
        from: Peer,
        now: Instant,
    ) {
        tracing::info!(peer = %from, error = %e, "offer refused");
        let code = e.sip_status();
        let w = match e {
            NegotiationError::NoCommonCodec { .. } => {
                format!("305 switchboard \"{}\"", e.to_string().replace('"', "'"))
            }
            _ => warning(&e.to_string()),
        };
        self.reply(stx, req, code, None, &[("Warning", w)], now);
    }

    fn on_allocated(
        &mut self,
        id: SessionId,
        result: Result<(StreamId, SocketAddr), String>,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(&id) else {
            // The call went away meanwhile: give the stream back.
            if let Ok((stream, _)) = result {
                self.outputs.push_back(McpOutput::Release {
                    session: id,
                    stream: Some(stream),
                    reason: "gone",
                });
            }
            return;
        };
        let cancelled = matches!(s.phase, Phase::Allocating { cancelled: true });
        if s.leg.is_some() {
            return self.leg_allocated(id, result, cancelled, now);
        }
        let (stream, local) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(session = id, error = %e, "no RTP stream for the call");
                if let Some((stx, req)) = s.invite.take() {
                    let tag = s.local_tag.clone();
                    let w = warning(&e);
                    self.reply(
                        stx,
                        &req,
                        503,
                        Some(&tag),
                        &[("Warning", w), ("Retry-After", "5".into())],
                        now,
                    );
                }
                self.remove(id);
                return;
            }
        };
        s.stream = Some(stream);
        s.local_rtp = Some(local);
        self.by_stream.insert(stream, id);
        if cancelled {
            self.release(id, "cancelled");
            return;
        }
        let media = self.local_media_for(local);
        let Some(transport) = self.sessions.get(&id).map(|s| s.peer.transport) else {
            return;
        };
        let contact = self.contact(transport);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let mut oa = OfferAnswer::new(media, (u64::from(local.port()) << 16) | (id & 0xffff));
        let offer = s.offer.clone();
        let sdp = match &offer {
            Some(offer) => match oa.handle_offer(offer) {
                Ok((answer, _)) => answer,
                Err(e) => {
                    // Cannot happen (the same offer was accepted before); refuse anyway.
                    tracing::warn!(session = id, error = %e, "offer no longer acceptable");
                    if let Some((stx, req)) = s.invite.take() {
                        let tag = s.local_tag.clone();
                        self.reply(stx, &req, e.sip_status(), Some(&tag), &[], now);
                    }
                    self.release(id, "negotiation failed");
                    return;
                }
            },
            None => match oa.create_offer() {
                Ok(offer) => {
                    s.answer_in_ack = true;
                    offer
                }
                Err(e) => {
                    tracing::warn!(session = id, error = %e, "cannot make an offer");
                    self.release(id, "negotiation failed");
                    return;
                }
            },
        };
        s.oa = Some(oa);
        let Some((stx, req)) = s.invite.take() else {
            return;
        };
        let resp = response_to(&req, 200, Some(&s.local_tag))
            .header("Contact", &contact)
            .header("Allow", ALLOW)
            .body("application/sdp", sdp.to_string().as_bytes());
        let parsed = match Message::parse(resp.clone()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(session = id, error = %e, "our 200 OK does not parse");
                self.release(id, "internal error");
                return;
            }
        };
        match Dialog::uas(&req, &parsed) {
            Ok(d) => s.dialog = Some(d),
            Err(e) => {
                // No usable Contact in the INVITE: answer, but requests go to the source.
                tracing::debug!(session = id, error = %e, "no dialog state from the INVITE");
            }
        }
        if let Err(e) = self.tx.send_response_bytes(stx, 200, resp.clone(), now) {
            tracing::debug!(session = id, error = %e, "200 OK not sent");
            self.release(id, "transaction gone");
            return;
        }
        s.phase = Phase::Established;
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        self.arm_2xx(id, resp, cseq, now);
        tracing::info!(session = id, stream = %stream, rtp = %local, "call answered");
    }

    fn local_media_for(&self, local: SocketAddr) -> LocalMedia {
        self.local_media(local.port())
    }

    fn arm_2xx(&mut self, id: SessionId, payload: Bytes, cseq: u32, now: Instant) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let t = self.settings.timers;
        if let Some(old) = s.pending_2xx.take() {
            self.retransmits.remove(&(old.next, id));
        }
        // Over reliable transports the 2xx is not retransmitted, but the ACK is still awaited.
        let next = if s.peer.transport.reliable() {
            now + t.t1x64()
        } else {
            now + t.t1
        };
        s.pending_2xx = Some(Pending2xx {
            payload,
            cseq,
            next,
            interval: t.t1,
            give_up: now + t.t1x64(),
        });
        self.retransmits.insert((next, id));
    }

    fn on_cancel(&mut self, stx: ServerTxId, req: &Message, now: Instant) {
        let Some(invite_tx) = self.tx.find_invite_for_cancel(req) else {
            return self.reply(stx, req, 481, None, &[], now);
        };
        self.reply(stx, req, 200, None, &[], now);
        let Some(&id) = self.by_invite.get(&invite_tx) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !matches!(s.phase, Phase::Allocating { .. }) {
            return; // already answered: the CANCEL has no effect
        }
        s.phase = Phase::Allocating { cancelled: true };
        let tag = s.local_tag.clone();
        let stream = s.stream;
        if let Some((stx, invite)) = s.invite.take() {
            self.reply(stx, &invite, 487, Some(&tag), &[], now);
        }
        tracing::info!(session = id, "call cancelled");
        // Without a stream yet the session waits for `Allocated` to free it.
        if stream.is_some() {
            self.release(id, "cancelled");
        }
    }

    fn on_in_dialog(&mut self, stx: ServerTxId, req: Message, method: Method, now: Instant) {
        let Some(did) = DialogId::of_request(&req) else {
            return self.reply(stx, &req, 481, None, &[], now);
        };
        let Some(&id) = self.by_dialog.get(&did) else {
            return self.reply(stx, &req, 481, None, &[], now);
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return self.reply(stx, &req, 481, None, &[], now);
        };
        let tag = s.local_tag.clone();
        if let Some(d) = s.dialog.as_mut() {
            if let Err(e) = d.on_request(&req) {
                let w = warning(&e.to_string());
                return self.reply(stx, &req, e.status(), Some(&tag), &[("Warning", w)], now);
            }
        }
        match method {
            Method::Bye => {
                self.reply(stx, &req, 200, Some(&tag), &[], now);
                tracing::info!(session = id, "caller hung up");
                self.release(id, "bye");
            }
            Method::Invite => self.on_reinvite(id, stx, req, now),
            Method::Options | Method::Info => self.reply(stx, &req, 200, Some(&tag), &[], now),
            Method::Notify => {
                // The progress of a REFER we sent (RFC 3515 §2.4.5): a message/sipfrag status
                // line; the transfer's outcome is the REFER's own answer.
                let frag = std::str::from_utf8(req.body())
                    .ok()
                    .and_then(|b| b.lines().next())
                    .unwrap_or("")
                    .chars()
                    .take(100)
                    .collect::<String>();
                tracing::info!(session = id, progress = %frag, "transfer progress");
                self.reply(stx, &req, 200, Some(&tag), &[], now)
            }
            _ => {
                let allow = ALLOW.to_string();
                self.reply(stx, &req, 405, Some(&tag), &[("Allow", allow)], now)
            }
        }
    }

    fn on_reinvite(&mut self, id: SessionId, stx: ServerTxId, req: Message, now: Instant) {
        let Some(transport) = self.sessions.get(&id).map(|s| s.peer.transport) else {
            return;
        };
        let contact = self.contact(transport);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let tag = s.local_tag.clone();
        if !matches!(s.phase, Phase::Established) || s.pending_2xx.is_some() {
            // RFC 3261 §14.2: a re-INVITE while one is pending gets 500 with Retry-After.
            let retry = ("Retry-After", "1".to_string());
            return self.reply(stx, &req, 500, Some(&tag), &[retry], now);
        }
        let offer = match sdp_body(&req) {
            Ok(o) => o,
            Err(e) => {
                let w = warning(&e);
                return self.reply(stx, &req, 488, Some(&tag), &[("Warning", w)], now);
            }
        };
        let Some(oa) = s.oa.as_mut() else {
            return self.reply(stx, &req, 500, Some(&tag), &[], now);
        };
        let (sdp, setup) = match &offer {
            Some(offer) => match oa.handle_offer(offer) {
                Ok((answer, n)) => match setup_of(&n) {
                    Some(setup) => (answer, Some(setup)),
                    None => {
                        let w = warning("no common codec");
                        return self.reply(stx, &req, 488, Some(&tag), &[("Warning", w)], now);
                    }
                },
                Err(e) => {
                    let w = warning(&e.to_string());
                    let code = e.sip_status();
                    return self.reply(stx, &req, code, Some(&tag), &[("Warning", w)], now);
                }
            },
            None => match oa.create_offer() {
                Ok(o) => {
                    s.answer_in_ack = true;
                    (o, None)
                }
                Err(e) => {
                    let code = e.sip_status();
                    return self.reply(stx, &req, code, Some(&tag), &[], now);
                }
            },
        };
        let resp = response_to(&req, 200, Some(&tag))
            .header("Contact", &contact)
            .header("Allow", ALLOW)
            .body("application/sdp", sdp.to_string().as_bytes());
        if let Err(e) = self.tx.send_response_bytes(stx, 200, resp.clone(), now) {
            tracing::debug!(session = id, error = %e, "re-INVITE 200 not sent");
            return;
        }
        if let (Some(setup), Some(stream)) = (setup, s.stream) {
            tracing::info!(session = id, remote = ?setup.remote, send = setup.send, receive = setup.receive, "media updated by re-INVITE");
            self.outputs.push_back(McpOutput::Update { stream, setup });
        }
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        self.arm_2xx(id, resp, cseq, now);
    }

    fn on_ack(&mut self, msg: Message) {
        let Some(did) = DialogId::of_request(&msg) else {
            tracing::debug!("ACK without dialog identifiers dropped");
            return;
        };
        let Some(&id) = self.by_dialog.get(&did) else {
            tracing::debug!(call_id = %did.call_id, "ACK for no known dialog dropped");
            return;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let seq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        match &s.pending_2xx {
            Some(p) if p.cseq == seq => {
                let next = p.next;
                s.pending_2xx = None;
                self.retransmits.remove(&(next, id));
            }
            other => {
                // A retransmitted ACK, or one for another INVITE.
                tracing::debug!(session = id, seq, pending = ?other.as_ref().map(|p| p.cseq), "ACK ignored");
                return;
            }
        }
        if let Some(d) = s.dialog.as_mut() {
            d.confirm();
        }
        if s.answer_in_ack {
            s.answer_in_ack = false;
            let answer = match sdp_body(&msg) {
                Ok(Some(a)) => a,
                Ok(None) | Err(_) => {
                    tracing::info!(session = id, "ACK without a usable SDP answer: hanging up");
                    return self.pending_hangup(id, "no SDP answer in ACK");
                }
            };
            let setup =
                s.oa.as_mut()
                    .map(|oa| oa.handle_answer(&answer).map(|n| setup_of(&n)));
            match (setup, s.stream) {
                (Some(Ok(Some(setup))), Some(stream)) => {
                    self.outputs.push_back(McpOutput::Update { stream, setup });
                }
                _ => {
                    tracing::info!(session = id, "unusable SDP answer in ACK: hanging up");
                    return self.pending_hangup(id, "bad SDP answer");
                }
            }
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !s.started {
            if let Some(stream) = s.stream {
                s.started = true;
                self.outputs.push_back(McpOutput::Start {
                    session: id,
                    stream,
                    service: s.service.clone(),
                    call_id: s.dialog_id.call_id.clone(),
                    caller: s.caller.clone(),
                    session_vars: std::mem::take(&mut s.session_vars),
                });
            }
        }
    }

    /// Hang up at the next chance (we may be inside a handler that holds `now` implicitly).
    fn pending_hangup(&mut self, id: SessionId, reason: &'static str) {
        self.hangup_queue.push((id, reason));
    }

    /// Sends BYE for an established call and frees its media.
    fn hangup(&mut self, id: SessionId, reason: &str, now: Instant) {
        self.hangup_with(id, reason, None, now)
    }

    /// Sends BYE (with `body`, content type and bytes, when given) and frees the media.
    fn hangup_with(
        &mut self,
        id: SessionId,
        reason: &str,
        body: Option<(String, Vec<u8>)>,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !matches!(s.phase, Phase::Established) {
            return;
        }
        if let Some(p) = s.pending_2xx.take() {
            self.retransmits.remove(&(p.next, id));
        }
        let transport = s.peer.transport;
        let Some(local) = self.local_addr(transport) else {
            self.release(id, "no transport");
            return;
        };
        let via = format!(
            "SIP/2.0/{} {local};branch={};rport",
            transport.via_token(),
            self.ids.branch()
        );
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let fallback = s.peer;
        let Some(dialog) = s.dialog.as_mut() else {
            self.release(id, "no dialog");
            return;
        };
        let target = Uri::parse(dialog.next_hop())
            .ok()
            .and_then(|u| u.as_sip().and_then(uri_peer))
            .filter(|p| p.transport == transport)
            .unwrap_or(fallback);
        let bye = match dialog.request(&Method::Bye, &via) {
            Ok(b) => {
                let text = reason.replace(['"', '\\', '\r', '\n'], "'");
                let b = b.header("Reason", format_args!("SIP;cause=200;text=\"{text}\""));
                match &body {
                    Some((content_type, bytes)) => b.body(content_type, bytes),
                    None => b.finish(),
                }
            }
            Err(e) => {
                tracing::debug!(session = id, error = %e, "cannot build BYE");
                self.release(id, "no dialog");
                return;
            }
        };
        s.phase = Phase::Ending;
        let stream = s.stream.take();
        match Message::parse(bye).map(|m| self.tx.send_request(m, target, now)) {
            Ok(Ok(ctx)) => {
                self.byes.insert(ctx, id);
            }
            other => {
                tracing::debug!(session = id, result = ?other.map(|r| r.map(|_| ())), "BYE not sent");
            }
        }
        tracing::info!(session = id, reason, peer = %target, "hanging up");
        if let Some(st) = stream {
            self.by_stream.remove(&st);
        }
        self.report_leg_end(id);
        self.outputs.push_back(McpOutput::Release {
            session: id,
            stream,
            reason: "hangup",
        });
        if !self.byes.values().any(|&v| v == id) {
            self.remove(id);
        }
    }

    /// Frees the call's media and forgets it.
    fn release(&mut self, id: SessionId, reason: &'static str) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        self.outputs.push_back(McpOutput::Release {
            session: id,
            stream: s.stream,
            reason,
        });
        self.remove(id);
    }

    fn remove(&mut self, id: SessionId) {
        self.report_leg_end(id);
        if let Some(s) = self.sessions.remove(&id) {
            if let Some(leg) = &s.leg {
                self.legs.remove(&leg.id);
                if let Some(c) = leg.client {
                    self.leg_invites.remove(&c);
                }
            }
            self.by_dialog.remove(&s.dialog_id);
            self.by_invite.retain(|_, v| *v != id);
            if let Some(st) = s.stream {
                self.by_stream.remove(&st);
            }
            if let Some(p) = s.pending_2xx {
                self.retransmits.remove(&(p.next, id));
            }
            tracing::debug!(session = id, "session removed");
        }
        self.update_gauge();
    }

    fn on_response(&mut self, ctx: ClientTxId, msg: Message, now: Instant) {
        if self.leg_invites.contains_key(&ctx) {
            return self.leg_response(ctx, msg, now);
        }
        if let Some(status) = msg.status().filter(|&c| c >= 200) {
            if let Some(id) = self.byes.remove(&ctx) {
                self.remove(id);
            }
            if let Some(stream) = self.refers.remove(&ctx) {
                self.outputs
                    .push_back(McpOutput::ReferResult { stream, status });
            }
        }
    }

    /// Sends REFER with `Refer-To: target` in the call's dialog.
    fn refer(&mut self, stream: StreamId, target: &str, now: Instant) {
        let fail = |ua: &mut McpUa, status| {
            ua.outputs
                .push_back(McpOutput::ReferResult { stream, status });
        };
        let Some(&id) = self.by_stream.get(&stream) else {
            return fail(self, 481);
        };
        let Some(s) = self.sessions.get(&id) else {
            return fail(self, 481);
        };
        if !matches!(s.phase, Phase::Established) {
            return fail(self, 481);
        }
        // The target must be a URI that fits in a header: no line breaks, no angle brackets.
        let target = target.trim();
        if target.is_empty()
            || target.contains(['\r', '\n', '<', '>'])
            || Uri::parse(target).is_err()
        {
            return fail(self, 400);
        }
        self.send_refer(id, stream, target, now);
    }

    /// Sends REFER with `Refer-To: <target>` in session `id`'s dialog (the caller's, on
    /// `stream`); its answer comes as [`McpOutput::ReferResult`].
    fn send_refer(&mut self, id: SessionId, stream: StreamId, target: &str, now: Instant) {
        let fail = |ua: &mut McpUa, status| {
            ua.outputs
                .push_back(McpOutput::ReferResult { stream, status });
        };
        let Some(s) = self.sessions.get(&id) else {
            return fail(self, 481);
        };
        let transport = s.peer.transport;
        let Some(local) = self.local_addr(transport) else {
            return fail(self, 503);
        };
        let via = format!(
            "SIP/2.0/{} {local};branch={};rport",
            transport.via_token(),
            self.ids.branch()
        );
        let Some(s) = self.sessions.get_mut(&id) else {
            return fail(self, 481);
        };
        let fallback = s.peer;
        let Some(dialog) = s.dialog.as_mut() else {
            return fail(self, 481);
        };
        let peer = Uri::parse(dialog.next_hop())
            .ok()
            .and_then(|u| u.as_sip().and_then(uri_peer))
            .filter(|p| p.transport == transport)
            .unwrap_or(fallback);
        let req = match dialog.request(&Method::Refer, &via) {
            Ok(b) => b.header("Refer-To", format_args!("<{target}>")).finish(),
            Err(e) => {
                tracing::debug!(session = id, error = %e, "cannot build REFER");
                return fail(self, 500);
            }
        };
        match Message::parse(req).map(|m| self.tx.send_request(m, peer, now)) {
            Ok(Ok(ctx)) => {
                tracing::info!(session = id, %target, %peer, "transfer: REFER sent");
                self.refers.insert(ctx, stream);
            }
            other => {
                tracing::debug!(session = id, result = ?other.map(|r| r.map(|_| ())), "REFER not sent");
                fail(self, 500);
            }
        }
    }

    // ---- outgoing calls (the far leg of bridge and consultation transfers) ----

    fn dial(
        &mut self,
        leg: LegId,
        dest: &str,
        caller: &str,
        affinity: u64,
        ring_timeout: Duration,
        aai: Option<String>,
    ) {
        let fail = |ua: &mut McpUa, status| {
            ua.outputs.push_back(McpOutput::Leg {
                leg,
                event: LegEvent::Failed { status },
            });
        };
        if self.draining || self.legs.contains_key(&leg) {
            return fail(self, 503);
        }
        let (ruri, peer) = match dial_target(dest, self.settings.transfer_gateway) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(leg, dest, error = ?e, "cannot place the outgoing call");
                metrics::counter!("mcp_outgoing_calls_total", "result" => "bad_destination")
                    .increment(1);
                self.outputs.push_back(McpOutput::Leg {
                    leg,
                    event: LegEvent::BadDestination,
                });
                return;
            }
        };
        if self.local_addr(peer.transport).is_none() {
            return fail(self, 503);
        }
        let id = self.next_session;
        self.next_session += 1;
        let call_id = format!("{}@mcp", self.ids.call_id());
        let local_tag = self.ids.tag();
        // From: the caller's address when it is a usable SIP URI (the far end sees who is
        // calling), else ours.
        let caller = caller.trim();
        let caller = if !caller.is_empty()
            && !caller.contains(['\r', '\n', '<', '>', '"'])
            && Uri::parse(caller).is_ok_and(|u| u.as_sip().is_some())
        {
            caller.to_owned()
        } else {
            format!("sip:mcp@{}", self.settings.rtp_ip)
        };
        let aai = aai.filter(|a| !a.is_empty()).map(|a| {
            a.bytes()
                .take(128)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
        tracing::info!(session = id, leg, %call_id, %ruri, %peer, "placing an outgoing call");
        metrics::counter!("mcp_outgoing_calls_total", "result" => "placed").increment(1);
        self.legs.insert(leg, id);
        self.sessions.insert(
            id,
            Session {
                phase: Phase::Allocating { cancelled: false },
                service: Service::Outgoing,
                invite: None,
                local_tag: local_tag.clone(),
                dialog_id: DialogId {
                    call_id,
                    local_tag,
                    remote_tag: String::new(),
                },
                dialog: None,
                peer,
                offer: None,
                oa: None,
                stream: None,
                local_rtp: None,
                pending_2xx: None,
                answer_in_ack: false,
                started: true,
                caller,
                session_vars: serde_json::Value::Null,
                leg: Some(Outgoing {
                    id: leg,
                    ruri,
                    aai,
                    ring_timeout,
                    client: None,
                    got_provisional: false,
                    cancelled: false,
                    cause: None,
                    answered: false,
                    last_ack: None,
                    reported: false,
                }),
            },
        );
        self.update_gauge();
        self.outputs.push_back(McpOutput::Allocate {
            session: id,
            setup: StreamSetup {
                remote: None,
                codec: MediaCodec::PCMU,
                telephone_event: Some(TELEPHONE_EVENT_PT),
                send: true,
                receive: true,
            },
            affinity: Some(affinity),
        });
    }

    /// The stream of an outgoing call exists: send the INVITE with our offer.
    fn leg_allocated(
        &mut self,
        id: SessionId,
        result: Result<(StreamId, SocketAddr), String>,
        cancelled: bool,
        now: Instant,
    ) {
        let (stream, local) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(session = id, error = %e, "no RTP stream for the outgoing call");
                return self.leg_failed(id, 503);
            }
        };
        let media = self.local_media_for(local);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        s.stream = Some(stream);
        s.local_rtp = Some(local);
        self.by_stream.insert(stream, id);
        if cancelled {
            return self.leg_failed(id, 487);
        }
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        let transport = s.peer.transport;
        let contact = self.contact(transport);
        let Some(local_sip) = self.local_addr(transport) else {
            return self.leg_failed(id, 503);
        };
        let via = format!(
            "SIP/2.0/{} {local_sip};branch={};rport",
            transport.via_token(),
            self.ids.branch()
        );
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(leg) = s.leg.as_ref() else {
            return;
        };
        let mut oa = OfferAnswer::new(media, (u64::from(local.port()) << 16) | (id & 0xffff));
        let offer = match oa.create_offer() {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(session = id, error = %e, "cannot make an offer");
                return self.leg_failed(id, 500);
            }
        };
        s.oa = Some(oa);
        let mut b = Builder::request(&Method::Invite, &leg.ruri)
            .header("Via", &via)
            .header("Max-Forwards", 70)
            .header("From", format_args!("<{}>;tag={}", s.caller, s.local_tag))
            .header("To", format_args!("<{}>", leg.ruri))
            .header("Call-ID", &s.dialog_id.call_id)
            .header("CSeq", "1 INVITE")
            .header("Contact", &contact)
            .header("Allow", ALLOW);
        if let Some(hex) = &leg.aai {
            b = b.header("User-to-User", format_args!("{hex};encoding=hex"));
        }
        let bytes = b.body("application/sdp", offer.to_string().as_bytes());
        let peer = s.peer;
        let ring_timeout = leg.ring_timeout;
        let sent = Message::parse(bytes)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                self.tx
                    .send_request(m, peer, now)
                    .map_err(|e| e.to_string())
            });
        let client = match sent {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(session = id, error = %e, "INVITE not sent");
                return self.leg_failed(id, 500);
            }
        };
        self.leg_invites.insert(client, id);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.phase = Phase::Dialing;
            if let Some(leg) = s.leg.as_mut() {
                leg.client = Some(client);
            }
        }
        self.leg_timers.insert((now + ring_timeout, id));
        tracing::info!(session = id, %stream, rtp = %local, %peer, "INVITE sent");
    }

    fn leg_response(&mut self, client: ClientTxId, resp: Message, now: Instant) {
        let Some(&id) = self.leg_invites.get(&client) else {
            return;
        };
        let code = resp.status().unwrap_or(500);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(leg) = s.leg.as_mut() else {
            return;
        };
        if code < 200 {
            if code > 100 && !leg.got_provisional && !leg.cancelled {
                leg.got_provisional = true;
                let leg_id = leg.id;
                tracing::info!(session = id, code, "outgoing call rings");
                self.outputs.push_back(McpOutput::Leg {
                    leg: leg_id,
                    event: LegEvent::Ringing,
                });
            } else {
                leg.got_provisional = true;
            }
            if leg.cancelled && leg.client.is_some() {
                // A CANCEL owed since before any provisional response (RFC 3261 §9.1).
                self.send_cancel(id, now);
            }
            return;
        }
        if code >= 300 {
            self.leg_invites.remove(&client);
            tracing::info!(session = id, code, "outgoing call failed");
            return self.leg_failed(id, code);
        }
        if leg.answered {
            // A retransmitted 2xx: our ACK again.
            if let Some((b, p)) = leg.last_ack.clone() {
                self.tx.send_stateless(b, p);
            }
            return;
        }
        let Some(req) = self.tx.client_request(client).cloned() else {
            return;
        };
        let mut dialog = match Dialog::uac(&req, &resp) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(session = id, error = %e, "2xx without a usable dialog");
                self.leg_invites.remove(&client);
                return self.leg_failed(id, 502);
            }
        };
        dialog.confirm();
        let transport = s.peer.transport;
        let next_hop = Uri::parse(dialog.next_hop())
            .ok()
            .and_then(|u| u.as_sip().and_then(uri_peer))
            .filter(|p| p.transport == transport)
            .unwrap_or(s.peer);
        let via = format!(
            "SIP/2.0/{} {};branch={};rport",
            transport.via_token(),
            self.local_addr(transport)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            self.ids.branch()
        );
        let ack = dialog.ack(1, &via).finish();
        self.tx.send_stateless(ack.clone(), next_hop);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(leg) = s.leg.as_mut() else {
            return;
        };
        leg.answered = true;
        leg.last_ack = Some((ack, next_hop));
        leg.client = None;
        let cancelled = leg.cancelled;
        let leg_id = leg.id;
        self.leg_invites.remove(&client);
        let did = dialog.id().clone();
        s.dialog_id = DialogId {
            call_id: did.call_id.clone(),
            local_tag: did.local_tag.clone(),
            remote_tag: did.remote_tag.clone(),
        };
        s.dialog = Some(dialog);
        s.phase = Phase::Established;
        self.by_dialog.insert(did, id);
        if cancelled {
            // Answered while our CANCEL was on its way: end it at once.
            if let Some(leg) = s.leg.as_mut() {
                leg.answered = false;
                leg.cause.get_or_insert(487);
            }
            return self.hangup(id, "cancelled", now);
        }
        let setup = match sdp_body(&resp) {
            Ok(Some(answer)) => {
                s.oa.as_mut()
                    .and_then(|oa| oa.handle_answer(&answer).ok())
                    .and_then(|n| setup_of(&n))
            }
            _ => None,
        };
        let (Some(setup), Some(stream)) = (setup, s.stream) else {
            tracing::info!(session = id, "no usable SDP answer in the 2xx: hanging up");
            if let Some(leg) = s.leg.as_mut() {
                leg.answered = false;
                leg.cause = Some(488);
            }
            return self.hangup(id, "no usable SDP answer", now);
        };
        tracing::info!(session = id, remote = ?setup.remote, codec = ?setup.codec.encoding, "outgoing call answered");
        metrics::counter!("mcp_outgoing_calls_total", "result" => "answered").increment(1);
        self.outputs.push_back(McpOutput::Update { stream, setup });
        self.outputs.push_back(McpOutput::Leg {
            leg: leg_id,
            event: LegEvent::Answered { stream },
        });
    }

    /// A 2xx after the INVITE transaction ended: our ACK again (RFC 3261 §13.2.2.4).
    fn stray_response(&mut self, msg: &Message) {
        if !msg.status().is_some_and(|c| (200..300).contains(&c)) {
            return;
        }
        let Some(did) = DialogId::of_response(msg) else {
            return;
        };
        let Some(s) = self
            .by_dialog
            .get(&did)
            .and_then(|id| self.sessions.get(id))
        else {
            return;
        };
        if let Some((b, p)) = s.leg.as_ref().and_then(|l| l.last_ack.clone()) {
            self.tx.send_stateless(b, p);
        }
    }

    fn send_cancel(&mut self, id: SessionId, now: Instant) {
        let Some(client) = self
            .sessions
            .get_mut(&id)
            .and_then(|s| s.leg.as_mut())
            .and_then(|l| l.client.take())
        else {
            return;
        };
        // The INVITE transaction stays known (its final response ends the call).
        self.leg_invites.insert(client, id);
        let (Some(req), Some(peer)) = (self.tx.client_request(client), self.tx.client_peer(client))
        else {
            return;
        };
        match Message::parse(cancel_for(req)).map(|m| self.tx.send_request(m, peer, now)) {
            Ok(Ok(_)) => tracing::info!(session = id, "CANCEL sent"),
            other => {
                tracing::debug!(session = id, result = ?other.map(|r| r.map(|_| ())), "CANCEL not sent")
            }
        }
    }

    /// Ends an outgoing call that is not answered yet: CANCEL once it has a provisional
    /// response (owed until then), and give up on it 64*T1 later whatever comes.
    fn cancel_leg(&mut self, id: SessionId, cause: Option<u16>, now: Instant) {
        let t1x64 = self.settings.timers.t1x64();
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        match s.phase {
            Phase::Allocating { .. } => {
                s.phase = Phase::Allocating { cancelled: true };
                if let Some(leg) = s.leg.as_mut() {
                    leg.cancelled = true;
                    leg.cause = leg.cause.or(cause);
                }
            }
            Phase::Dialing => {
                let Some(leg) = s.leg.as_mut() else {
                    return;
                };
                if leg.cancelled {
                    return;
                }
                leg.cancelled = true;
                leg.cause = leg.cause.or(cause);
                if leg.got_provisional {
                    self.send_cancel(id, now);
                }
                self.leg_timers.insert((now + t1x64, id));
            }
            _ => {}
        }
    }

    fn fire_leg_timers(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.leg_timers.first() {
            if at > now {
                break;
            }
            self.leg_timers.remove(&(at, id));
            let Some(leg) = self.sessions.get(&id).and_then(|s| {
                matches!(s.phase, Phase::Dialing)
                    .then_some(s.leg.as_ref())
                    .flatten()
            }) else {
                continue;
            };
            if leg.cancelled {
                // The CANCEL took no effect in 64*T1: forget the call (a late 2xx gets its
                // ACK and a BYE from the stray-response path of the transaction's owner).
                tracing::info!(session = id, "no final response after CANCEL: giving up");
                let client = leg.client;
                if let Some(c) = client {
                    self.leg_invites.remove(&c);
                }
                self.leg_invites.retain(|_, v| *v != id);
                self.leg_failed(id, 408);
            } else {
                tracing::info!(
                    session = id,
                    "outgoing call not answered in time: cancelling"
                );
                self.cancel_leg(id, Some(408), now);
            }
        }
    }

    /// An outgoing call that was never answered is over: report it and free its stream.
    fn leg_failed(&mut self, id: SessionId, status: u16) {
        if let Some(leg) = self.sessions.get_mut(&id).and_then(|s| s.leg.as_mut()) {
            leg.answered = false;
            leg.cause = Some(leg.cause.unwrap_or(status));
        }
        self.release(id, "outgoing call failed");
    }

    /// Reports the end of an outgoing call once (`Failed` or `Ended`).
    fn report_leg_end(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let by_far_end = !matches!(s.phase, Phase::Ending);
        let Some(leg) = s.leg.as_mut() else {
            return;
        };
        if leg.reported {
            return;
        }
        leg.reported = true;
        let event = if leg.answered {
            LegEvent::Ended { by_far_end }
        } else {
            let status = leg.cause.unwrap_or(487);
            let label = switchboard_vxml::transfer_failure(status);
            metrics::counter!("mcp_outgoing_calls_total", "result" => label).increment(1);
            LegEvent::Failed { status }
        };
        tracing::info!(session = id, leg = leg.id, ?event, "outgoing call over");
        let leg = leg.id;
        self.legs.remove(&leg);
        self.leg_timers.retain(|&(_, s)| s != id);
        self.outputs.push_back(McpOutput::Leg { leg, event });
    }

    /// Consultation transfer: REFER the caller of `stream` to the far end of `leg` with
    /// Replaces of our dialog with it (RFC 3891 §3: to-tag the far end's, from-tag ours).
    fn refer_to_leg(&mut self, stream: StreamId, leg: LegId, now: Instant) {
        let fail = |ua: &mut McpUa, status| {
            ua.outputs
                .push_back(McpOutput::ReferResult { stream, status });
        };
        let Some(&caller) = self.by_stream.get(&stream) else {
            return fail(self, 481);
        };
        let Some(target) = self
            .legs
            .get(&leg)
            .and_then(|id| self.sessions.get(id))
            .filter(|s| matches!(s.phase, Phase::Established))
            .and_then(|s| s.dialog.as_ref())
            .map(replaces_target)
        else {
            return fail(self, 481);
        };
        let Some(target) = target else {
            return fail(self, 400);
        };
        if !self
            .sessions
            .get(&caller)
            .is_some_and(|s| matches!(s.phase, Phase::Established))
        {
            return fail(self, 481);
        }
        self.send_refer(caller, stream, &target, now);
    }

    fn run_hangups(&mut self, now: Instant) {
        while let Some((id, reason)) = self.hangup_queue.pop() {
            self.hangup(id, reason, now);
        }
    }

    fn on_tx_events(&mut self, now: Instant) {
        while let Some(ev) = self.tx.poll_event() {
            match ev {
                TxEvent::Timeout(c) | TxEvent::TransportError(c)
                    if self.leg_invites.contains_key(&c) =>
                {
                    let status = if matches!(ev, TxEvent::Timeout(_)) {
                        408
                    } else {
                        503
                    };
                    if let Some(id) = self.leg_invites.remove(&c) {
                        self.leg_failed(id, status);
                    }
                }
                TxEvent::ProceedingTimeout(c) => {
                    if let Some(&id) = self.leg_invites.get(&c) {
                        self.cancel_leg(id, Some(408), now);
                    }
                }
                TxEvent::ClientTerminated(c) if self.leg_invites.contains_key(&c) => {
                    // Ended without a final response we acted on: the call cannot go on.
                    if let Some(id) = self.leg_invites.remove(&c) {
                        let waiting = self
                            .sessions
                            .get(&id)
                            .is_some_and(|s| matches!(s.phase, Phase::Dialing));
                        if waiting {
                            self.leg_failed(id, 408);
                        }
                    }
                }
                TxEvent::Timeout(c) | TxEvent::TransportError(c) => {
                    if let Some(stream) = self.refers.remove(&c) {
                        self.outputs.push_back(McpOutput::ReferResult {
                            stream,
                            status: 408,
                        });
                    }
                    if let Some(id) = self.byes.remove(&c) {
                        tracing::debug!(session = id, "BYE got no answer");
                        self.remove(id);
                    }
                }
                TxEvent::ServerTerminated(s) => {
                    self.by_invite.remove(&s);
                }
                TxEvent::ClientTerminated(c) => {
                    if let Some(stream) = self.refers.remove(&c) {
                        self.outputs.push_back(McpOutput::ReferResult {
                            stream,
                            status: 408,
                        });
                    }
                    if let Some(id) = self.byes.remove(&c) {
                        self.remove(id);
                    }
                }
                _ => {}
            }
        }
    }

    fn retransmit_2xx(&mut self, now: Instant) {
        let t2 = self.settings.timers.t2;
        while let Some(&(at, id)) = self.retransmits.first() {
            if at > now {
                break;
            }
            self.retransmits.remove(&(at, id));
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            let Some(p) = s.pending_2xx.as_mut() else {
                continue;
            };
            if now >= p.give_up {
                s.pending_2xx = None;
                tracing::info!(session = id, "no ACK for our 2xx: hanging up");
                self.hangup_queue.push((id, "no ACK"));
                continue;
            }
            if !s.peer.transport.reliable() {
                self.tx.send_stateless(p.payload.clone(), s.peer);
            }
            p.interval = (p.interval * 2).min(t2);
            p.next = (now + p.interval).min(p.give_up);
            self.retransmits.insert((p.next, id));
        }
    }
}

impl Core for McpUa {
    fn handle_message(&mut self, msg: Message, from: Peer, now: Instant) {
        match self.tx.handle_incoming(msg, from, now) {
            Incoming::Request { tx, msg } => self.on_request(tx, msg, from, now),
            Incoming::Response { tx, msg } => self.on_response(tx, msg, now),
            Incoming::Ack { msg } => self.on_ack(msg),
            Incoming::StrayResponse { msg } => self.stray_response(&msg),
            Incoming::Absorbed => {}
            Incoming::Malformed { msg, error } => {
                let error = msg.validate().err().unwrap_or(error);
                metrics::counter!("sip_malformed_total").increment(1);
                tracing::debug!(peer = %from, %error, "malformed message");
                if msg.is_request() && msg.method() != Some(&Method::Ack) {
                    let resp = response_to(&msg, error.status(), Some(&self.ids.tag()))
                        .header("Warning", warning(&error.to_string()))
                        .finish();
                    self.tx.send_stateless(resp, from);
                }
            }
        }
        self.on_tx_events(now);
        self.run_hangups(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
        self.retransmit_2xx(now);
        self.fire_leg_timers(now);
        self.on_tx_events(now);
        self.run_hangups(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.tx.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let ours = [
            self.retransmits.first().map(|&(at, _)| at),
            self.leg_timers.first().map(|&(at, _)| at),
        ]
        .into_iter()
        .flatten()
        .min();
        match (self.tx.poll_timeout(), ours) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn start_drain(&mut self, now: Instant) {
        self.draining = true;
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            match self.sessions.get(&id).map(|s| &s.phase) {
                Some(Phase::Established) => self.hangup(id, "shutting down", now),
                Some(Phase::Dialing) => self.cancel_leg(id, None, now),
                Some(Phase::Allocating { .. }) => {
                    let Some(s) = self.sessions.get_mut(&id) else {
                        continue;
                    };
                    s.phase = Phase::Allocating { cancelled: true };
                    let tag = s.local_tag.clone();
                    if let Some((stx, req)) = s.invite.take() {
                        let retry = ("Retry-After", "5".to_string());
                        self.reply(stx, &req, 503, Some(&tag), &[retry], now);
                    }
                }
                _ => {}
            }
        }
    }

    fn is_idle(&self, _now: Instant) -> bool {
        self.byes.is_empty() && self.sessions.is_empty()
    }
}

impl Controlled for McpUa {
    type Command = McpCommand;
    type Output = McpOutput;

    fn handle_command(&mut self, cmd: McpCommand, now: Instant) {
        match cmd {
            McpCommand::Allocated { session, result } => self.on_allocated(session, result, now),
            McpCommand::Hangup {
                stream,
                reason,
                body,
            } => {
                if let Some(&id) = self.by_stream.get(&stream) {
                    self.hangup_with(id, &reason, body, now);
                }
            }
            McpCommand::Refer { stream, target } => self.refer(stream, &target, now),
            McpCommand::Dial {
                leg,
                dest,
                caller,
                affinity,
                ring_timeout,
                aai,
            } => self.dial(leg, &dest, &caller, affinity, ring_timeout, aai),
            McpCommand::HangupLeg { leg } => {
                if let Some(&id) = self.legs.get(&leg) {
                    match self.sessions.get(&id).map(|s| &s.phase) {
                        Some(Phase::Established) => self.hangup(id, "transfer ended", now),
                        Some(_) => self.cancel_leg(id, None, now),
                        None => {}
                    }
                }
            }
            McpCommand::ReferToLeg { stream, leg } => self.refer_to_leg(stream, leg, now),
        }
        self.on_tx_events(now);
        self.run_hangups(now);
    }

    fn poll_output(&mut self) -> Option<McpOutput> {
        self.outputs.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: &str = "127.0.0.1:5080";
    const PHONE: &str = "127.0.0.1:5062";
    const GATEWAY: &str = "127.0.0.1:5090";
    const AGENT: &str = "127.0.0.1:5070";

    fn ua(dialog_runner: bool) -> McpUa {
        McpUa::new(
            UaSettings {
                udp: Some(US.parse().unwrap()),
                tcp: None,
                rtp_ip: "127.0.0.1".parse().unwrap(),
                timers: Timers::default(),
                dialog_runner,
                transfer_gateway: Some(GATEWAY.parse().unwrap()),
            },
            7,
        )
    }

    fn phone() -> Peer {
        Peer::udp(PHONE.parse().unwrap())
    }

    fn branch_of(ruri: &str) -> String {
        format!("z9hG4bK-{:x}", affinity_of(ruri))
    }

    fn invite(ruri: &str, pts: &str, maps: &str) -> Message {
        let branch = branch_of(ruri);
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP {pts}\r\n{maps}"
        );
        let text = format!(
            "INVITE sip:{ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch={branch}\r\nFrom: <sip:alice@{PHONE}>;tag=a1\r\nTo: <sip:{ruri}>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{PHONE}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        Message::parse(Bytes::from(text)).unwrap()
    }

    fn request(method: &str, to: &str, seq: u32, branch: &str) -> Message {
        let text = format!(
            "{method} sip:mcp@{US} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch={branch}\r\nFrom: <sip:alice@{PHONE}>;tag=a1\r\nTo: {to}\r\nCall-ID: c1\r\nCSeq: {seq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(text)).unwrap()
    }

    fn sent(ua: &mut McpUa) -> Vec<Message> {
        std::iter::from_fn(|| ua.poll_transmit())
            .map(|t| Message::parse(t.payload).unwrap())
            .collect()
    }

    fn outputs(ua: &mut McpUa) -> Vec<McpOutput> {
        std::iter::from_fn(|| ua.poll_output()).collect()
    }

    /// INVITE, stream, 200 OK; returns the 200's To header (with our tag).
    fn answered(ua: &mut McpUa, ruri: &str, now: Instant) -> (String, StreamId) {
        ua.handle_message(
            invite(
                ruri,
                "8 101",
                "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
            ),
            phone(),
            now,
        );
        let out = outputs(ua);
        let McpOutput::Allocate { session, setup, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(setup.codec, MediaCodec::PCMA);
        assert_eq!(setup.telephone_event, Some(101));
        assert_eq!(setup.remote, Some("127.0.0.1:7000".parse().unwrap()));
        let stream = StreamId(256);
        ua.handle_command(
            McpCommand::Allocated {
                session: *session,
                result: Ok((stream, "127.0.0.1:20000".parse().unwrap())),
            },
            now,
        );
        let msgs = sent(ua);
        let ok = msgs
            .iter()
            .find(|m| m.status() == Some(200))
            .expect("200 OK");
        let body = std::str::from_utf8(ok.body()).unwrap();
        assert!(body.contains("m=audio 20000 RTP/AVP 8 101"), "{body}");
        (ok.get(HeaderName::To).unwrap().to_owned(), stream)
    }

    use switchboard_sip::HeaderName;

    #[test]
    fn invite_ack_starts_the_service_and_bye_releases() {
        let mut ua = ua(false);
        let now = Instant::now();
        let (to, stream) = answered(&mut ua, "annc@mcp;play=tone:440", now);
        ua.handle_message(request("ACK", &to, 1, "z9hG4bK-ack1"), phone(), now);
        let out = outputs(&mut ua);
        assert!(
            matches!(&out[..], [McpOutput::Start { stream: s, service: Service::Announcement(_), .. }] if *s == stream),
            "{out:?}"
        );
        // The 2xx is no longer retransmitted.
        ua.handle_timeout(now + Duration::from_secs(1));
        assert!(sent(&mut ua).iter().all(|m| m.status() != Some(200)));
        ua.handle_message(request("BYE", &to, 2, "z9hG4bK-bye1"), phone(), now);
        assert_eq!(sent(&mut ua)[0].status(), Some(200));
        assert!(matches!(
            &outputs(&mut ua)[..],
            [McpOutput::Release { stream: Some(s), reason: "bye", .. }] if *s == stream
        ));
        assert_eq!(ua.session_count(), 0);
    }

    #[test]
    fn hangup_sends_bye_to_the_contact() {
        let mut ua = ua(false);
        let now = Instant::now();
        let (to, stream) = answered(&mut ua, "annc@mcp;play=tone:440", now);
        ua.handle_message(request("ACK", &to, 1, "z9hG4bK-ack1"), phone(), now);
        outputs(&mut ua);
        ua.handle_command(
            McpCommand::Hangup {
                stream,
                reason: "done".into(),
                body: None,
            },
            now,
        );
        let t = ua.poll_transmit().expect("BYE");
        assert_eq!(t.peer, phone());
        let bye = Message::parse(t.payload).unwrap();
        assert_eq!(bye.method(), Some(&Method::Bye));
        assert_eq!(bye.cseq().unwrap().seq, 1);
        assert!(matches!(&outputs(&mut ua)[..], [McpOutput::Release { .. }]));
    }

    #[test]
    fn a_dialog_gets_its_session_variables_and_its_results_go_in_the_bye() {
        let mut ua = ua(true);
        let now = Instant::now();
        let (to, stream) = answered(&mut ua, "dialog@mcp;voicexml=http://as/a.vxml;aai=x1", now);
        ua.handle_message(request("ACK", &to, 1, "z9hG4bK-ack1"), phone(), now);
        let out = outputs(&mut ua);
        let [McpOutput::Start { session_vars, .. }] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(session_vars["connection"]["aai"], "x1");
        assert_eq!(
            session_vars["connection"]["protocol"]["sip"]["media"][0]["format"],
            "audio/PCMA audio/telephone-event"
        );
        assert_eq!(
            session_vars["connection"]["protocol"]["sip"]["headers"]["call-id"],
            "c1"
        );
        let (ct, body) =
            super::super::rfc5552::bye_body(&serde_json::json!({"pin": "42"})).unwrap();
        ua.handle_command(
            McpCommand::Hangup {
                stream,
                reason: "dialog \"exit\"".into(),
                body: Some((ct.clone(), body.clone())),
            },
            now,
        );
        let bye = Message::parse(ua.poll_transmit().expect("BYE").payload).unwrap();
        assert_eq!(bye.method(), Some(&Method::Bye));
        assert_eq!(bye.content_type(), Some(ct.as_str()));
        assert_eq!(bye.body(), &body[..]);
        assert_eq!(
            bye.get_by_name("Reason"),
            Some("SIP;cause=200;text=\"dialog 'exit'\"")
        );
    }

    #[test]
    fn refer_goes_in_the_dialog_and_its_answer_comes_back() {
        let mut ua = ua(true);
        let now = Instant::now();
        let (to, stream) = answered(&mut ua, "dialog@mcp;voicexml=http://as/a.vxml", now);
        ua.handle_message(request("ACK", &to, 1, "z9hG4bK-ack1"), phone(), now);
        outputs(&mut ua);
        // A bad target is refused without a REFER.
        ua.handle_command(
            McpCommand::Refer {
                stream,
                target: "sip:a@b>\r\nX: y".into(),
            },
            now,
        );
        assert!(ua.poll_transmit().is_none());
        assert!(matches!(
            &outputs(&mut ua)[..],
            [McpOutput::ReferResult { status: 400, .. }]
        ));
        ua.handle_command(
            McpCommand::Refer {
                stream,
                target: "sip:agent@example.com".into(),
            },
            now,
        );
        let t = ua.poll_transmit().expect("REFER");
        assert_eq!(t.peer, phone());
        let refer = Message::parse(t.payload).unwrap();
        assert_eq!(refer.method(), Some(&Method::Refer));
        assert_eq!(
            refer.get_by_name("Refer-To"),
            Some("<sip:agent@example.com>")
        );
        assert!(refer.get_by_name("Contact").is_some());
        let via = refer.get_by_name("Via").unwrap().to_owned();
        let resp = format!(
            "SIP/2.0 202 Accepted\r\nVia: {via}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: c1\r\nCSeq: {} REFER\r\nContent-Length: 0\r\n\r\n",
            refer.get_by_name("From").unwrap(),
            refer.get_by_name("To").unwrap(),
            refer.cseq().unwrap().seq
        );
        ua.handle_message(Message::parse(Bytes::from(resp)).unwrap(), phone(), now);
        assert!(matches!(
            &outputs(&mut ua)[..],
            [McpOutput::ReferResult { status: 202, stream: s }] if *s == stream
        ));
        // The transfer's NOTIFY is answered 200.
        let mut notify = request("NOTIFY", &to, 2, "z9hG4bK-n1");
        notify = Message::parse(Bytes::from(
            String::from_utf8_lossy(notify.as_bytes()).replace(
                "Content-Length: 0\r\n\r\n",
                "Content-Type: message/sipfrag\r\nContent-Length: 16\r\n\r\nSIP/2.0 200 OK\r\n",
            ),
        ))
        .unwrap();
        ua.handle_message(notify, phone(), now);
        assert_eq!(sent(&mut ua)[0].status(), Some(200));
        // A REFER for a call that is gone is answered 481 at once.
        ua.handle_command(
            McpCommand::Refer {
                stream: StreamId(9999),
                target: "sip:x@y".into(),
            },
            now,
        );
        assert!(matches!(
            &outputs(&mut ua)[..],
            [McpOutput::ReferResult { status: 481, .. }]
        ));
    }

    #[test]
    fn unanswered_2xx_is_retransmitted_then_the_call_hung_up() {
        let mut ua = ua(false);
        let now = Instant::now();
        answered(&mut ua, "conf=r1@mcp", now);
        let mut resent = 0;
        let mut t = now;
        for _ in 0..200 {
            t += Duration::from_millis(250);
            ua.handle_timeout(t);
            for m in sent(&mut ua) {
                if m.status() == Some(200) {
                    resent += 1;
                }
                if m.method() == Some(&Method::Bye) {
                    assert!(resent >= 6, "{resent}");
                    return;
                }
            }
        }
        panic!("no BYE after 64*T1 without ACK ({resent} retransmissions)");
    }

    #[test]
    fn refusals() {
        let mut ua = ua(false);
        let now = Instant::now();
        ua.handle_message(
            invite("annc@mcp;play=x.wav", "18", "a=rtpmap:18 G729/8000\r\n"),
            phone(),
            now,
        );
        let r = sent(&mut ua);
        assert_eq!(r[0].status(), Some(488), "{r:?}");
        ua.handle_message(
            invite("dialog@mcp;voicexml=http://x/a.vxml", "0", ""),
            phone(),
            now,
        );
        assert_eq!(sent(&mut ua)[0].status(), Some(488));
        ua.handle_message(invite("someone@mcp", "0", ""), phone(), now);
        assert_eq!(sent(&mut ua)[0].status(), Some(404));
        assert!(outputs(&mut ua).is_empty());
    }

    #[test]
    fn cancel_before_the_stream_exists_gets_487_and_frees_it_later() {
        let mut ua = ua(false);
        let now = Instant::now();
        ua.handle_message(invite("conf=r1@mcp", "0", ""), phone(), now);
        let McpOutput::Allocate { session, .. } = outputs(&mut ua)[0].clone() else {
            panic!()
        };
        ua.handle_message(
            request("CANCEL", "<sip:conf=r1@mcp>", 1, &branch_of("conf=r1@mcp")),
            phone(),
            now,
        );
        let codes: Vec<_> = sent(&mut ua).iter().filter_map(|m| m.status()).collect();
        assert!(codes.contains(&200) && codes.contains(&487), "{codes:?}");
        ua.handle_command(
            McpCommand::Allocated {
                session,
                result: Ok((StreamId(512), "127.0.0.1:20002".parse().unwrap())),
            },
            now,
        );
        assert!(matches!(
            &outputs(&mut ua)[..],
            [McpOutput::Release {
                stream: Some(StreamId(512)),
                ..
            }]
        ));
        assert_eq!(ua.session_count(), 0);
    }

    fn reinvite(to: &str, seq: u32, port: u16, direction: &str) -> Message {
        let sdp = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na={direction}\r\n"
        );
        let text = format!(
            "INVITE sip:mcp@{US} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-re{seq}\r\nFrom: <sip:alice@{PHONE}>;tag=a1\r\nTo: {to}\r\nCall-ID: c1\r\nCSeq: {seq} INVITE\r\nContact: <sip:alice@{PHONE}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        Message::parse(Bytes::from(text)).unwrap()
    }

    #[test]
    fn reinvite_moves_and_holds_the_stream() {
        let mut ua = ua(false);
        let now = Instant::now();
        let (to, stream) = answered(&mut ua, "conf=r1@mcp", now);
        ua.handle_message(request("ACK", &to, 1, "z9hG4bK-ack1"), phone(), now);
        assert_eq!(outputs(&mut ua).len(), 1); // Start
                                               // Hold: the peer will only send (a=sendonly) from a new port; we keep our port.
        ua.handle_message(reinvite(&to, 2, 7002, "sendonly"), phone(), now);
        let msgs = sent(&mut ua);
        let ok = msgs.iter().find(|m| m.status() == Some(200)).expect("200");
        let body = std::str::from_utf8(ok.body()).unwrap();
        assert!(body.contains("m=audio 20000 RTP/AVP 0"), "{body}");
        assert!(body.contains("a=recvonly"), "{body}");
        let out = outputs(&mut ua);
        let [McpOutput::Update { stream: s, setup }] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(*s, stream);
        assert_eq!(setup.remote, Some("127.0.0.1:7002".parse().unwrap()));
        assert_eq!(setup.codec, MediaCodec::PCMU);
        assert!(!setup.send && setup.receive);
        // A second re-INVITE before the ACK of the first: 500 with Retry-After.
        ua.handle_message(reinvite(&to, 3, 7004, "sendrecv"), phone(), now);
        assert_eq!(sent(&mut ua)[0].status(), Some(500));
        ua.handle_message(request("ACK", &to, 2, "z9hG4bK-ack2"), phone(), now);
        assert!(outputs(&mut ua).is_empty(), "no second Start");
        // Off hold.
        ua.handle_message(reinvite(&to, 4, 7002, "sendrecv"), phone(), now);
        let out = outputs(&mut ua);
        assert!(
            matches!(&out[..], [McpOutput::Update { setup, .. }] if setup.send && setup.receive),
            "{out:?}"
        );
    }

    #[test]
    fn in_dialog_request_for_an_unknown_dialog_gets_481() {
        let mut ua = ua(false);
        let now = Instant::now();
        ua.handle_message(
            request("BYE", "<sip:mcp@x>;tag=nope", 2, "z9hG4bK-b"),
            phone(),
            now,
        );
        assert_eq!(sent(&mut ua)[0].status(), Some(481));
    }

    #[test]
    fn invite_without_sdp_gets_our_offer_and_the_answer_comes_in_the_ack() {
        let mut ua = ua(false);
        let now = Instant::now();
        let text = format!(
            "INVITE sip:record@mcp SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-late\r\nFrom: <sip:alice@{PHONE}>;tag=a1\r\nTo: <sip:record@mcp>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{PHONE}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        ua.handle_message(Message::parse(Bytes::from(text)).unwrap(), phone(), now);
        let McpOutput::Allocate { session, setup, .. } = outputs(&mut ua)[0].clone() else {
            panic!()
        };
        assert_eq!(setup.remote, None, "nowhere to send before the answer");
        let stream = StreamId(256);
        ua.handle_command(
            McpCommand::Allocated {
                session,
                result: Ok((stream, "127.0.0.1:20000".parse().unwrap())),
            },
            now,
        );
        let ok = sent(&mut ua)
            .into_iter()
            .find(|m| m.status() == Some(200))
            .expect("200");
        let offer = std::str::from_utf8(ok.body()).unwrap().to_owned();
        assert!(
            offer.contains("m=audio 20000 RTP/AVP 0 8 9 96 101"),
            "{offer}"
        );
        let to = ok.get(HeaderName::To).unwrap().to_owned();
        let answer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7010 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";
        let ack = format!(
            "ACK sip:mcp@{US} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-lack\r\nFrom: <sip:alice@{PHONE}>;tag=a1\r\nTo: {to}\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        ua.handle_message(Message::parse(Bytes::from(ack)).unwrap(), phone(), now);
        let out = outputs(&mut ua);
        let [McpOutput::Update { setup, .. }, McpOutput::Start { .. }] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(setup.codec, MediaCodec::PCMA);
        assert_eq!(setup.remote, Some("127.0.0.1:7010".parse().unwrap()));
    }

    #[test]
    fn an_offer_of_g722_alone_is_answered_with_g722_and_our_ptime() {
        let mut ua = ua(false);
        let now = Instant::now();
        ua.handle_message(
            invite(
                "annc@mcp;play=x.wav",
                "9",
                "a=rtpmap:9 G722/8000\r\na=ptime:30\r\n",
            ),
            phone(),
            now,
        );
        let out = outputs(&mut ua);
        let McpOutput::Allocate { session, setup, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(setup.codec, MediaCodec::G722);
        ua.handle_command(
            McpCommand::Allocated {
                session: *session,
                result: Ok((StreamId(256), "127.0.0.1:20000".parse().unwrap())),
            },
            now,
        );
        let ok = sent(&mut ua)
            .into_iter()
            .find(|m| m.status() == Some(200))
            .expect("200");
        let body = std::str::from_utf8(ok.body()).unwrap().to_owned();
        assert!(body.contains("m=audio 20000 RTP/AVP 9\r\n"), "{body}");
        assert!(body.contains("a=rtpmap:9 G722/8000"), "{body}");
        assert!(body.contains("a=ptime:20"), "we send 20 ms packets: {body}");
    }

    #[test]
    fn drain_refuses_new_calls_and_hangs_up_running_ones() {
        let mut ua = ua(false);
        let now = Instant::now();
        let (to, _) = answered(&mut ua, "conf=r1@mcp", now);
        ua.handle_message(request("ACK", &to, 1, "z9hG4bK-ack1"), phone(), now);
        outputs(&mut ua);
        ua.start_drain(now);
        let bye = sent(&mut ua);
        assert!(
            bye.iter().any(|m| m.method() == Some(&Method::Bye)),
            "{bye:?}"
        );
        assert!(!ua.is_idle(now), "waiting for the BYE's answer");
        ua.handle_message(invite("conf=r2@mcp", "0", ""), phone(), now);
        assert_eq!(sent(&mut ua)[0].status(), Some(503));
    }

    // ---- outgoing calls ----

    #[test]
    fn dial_targets() {
        let gw: SocketAddr = GATEWAY.parse().unwrap();
        assert_eq!(
            dial_target("sip:agent@127.0.0.1:5070", None).unwrap(),
            (
                "sip:agent@127.0.0.1:5070".to_owned(),
                Peer::udp(AGENT.parse().unwrap())
            )
        );
        assert_eq!(
            dial_target("tel:+1-800-555-1212", Some(gw)).unwrap(),
            (format!("sip:+18005551212@{gw}"), Peer::udp(gw))
        );
        assert_eq!(
            dial_target("tel:+18005551212", None),
            Err(DialError::NoGateway)
        );
        for bad in [
            "",
            "tel:",
            "tel:+1x",
            "mailto:a@b",
            "sip:agent@example.com",
            "sip:a@1.2.3.4\r\nX: y",
            "sip:a@<1.2.3.4>",
        ] {
            assert!(
                matches!(
                    dial_target(bad, Some(gw)),
                    Err(DialError::BadDestination(_))
                ),
                "{bad:?}"
            );
        }
    }

    /// A message from the far end of an outgoing call, answering `invite`.
    fn far_response(invite: &Message, code: u16, sdp: Option<&str>) -> Message {
        let mut b = response_to(invite, code, Some("far1"));
        if code < 300 && code > 100 {
            b = b.header("Contact", format_args!("<sip:agent@{AGENT}>"));
        }
        let bytes = match sdp {
            Some(sdp) => b.body("application/sdp", sdp.as_bytes()),
            None => b.finish(),
        };
        Message::parse(bytes).unwrap()
    }

    const FAR_SDP: &str = "v=0\r\no=- 5 5 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7100 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

    /// Dials leg 9 from the call on `near`; returns the INVITE sent and the leg's stream.
    fn dialed(ua: &mut McpUa, near: StreamId, dest: &str, now: Instant) -> (Message, StreamId) {
        ua.handle_command(
            McpCommand::Dial {
                leg: 9,
                dest: dest.into(),
                caller: format!("sip:alice@{PHONE}"),
                affinity: near.0 & 0xff,
                ring_timeout: Duration::from_secs(5),
                aai: Some("case=1".into()),
            },
            now,
        );
        let out = outputs(ua);
        let [McpOutput::Allocate {
            session,
            affinity: Some(a),
            setup,
        }] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(*a, near.0 & 0xff);
        assert_eq!(setup.remote, None);
        let stream = StreamId(1024);
        ua.handle_command(
            McpCommand::Allocated {
                session: *session,
                result: Ok((stream, "127.0.0.1:20010".parse().unwrap())),
            },
            now,
        );
        let msgs = sent(ua);
        let inv = msgs
            .into_iter()
            .find(|m| m.method() == Some(&Method::Invite))
            .expect("INVITE");
        (inv, stream)
    }

    #[test]
    fn an_outgoing_call_rings_is_answered_bridged_and_ended_by_the_far_end() {
        let mut ua = ua(true);
        let now = Instant::now();
        let (_, near) = answered(&mut ua, "dialog@mcp;voicexml=http://x/a.vxml", now);
        outputs(&mut ua);
        sent(&mut ua);
        let (inv, stream) = dialed(&mut ua, near, &format!("sip:agent@{AGENT}"), now);
        assert_eq!(
            inv.request_uri().unwrap().to_string(),
            format!("sip:agent@{AGENT}")
        );
        let text = String::from_utf8_lossy(inv.as_bytes()).to_string();
        assert!(
            text.contains(&format!("From: <sip:alice@{PHONE}>;tag=")),
            "{text}"
        );
        assert!(
            text.contains("User-to-User: 636173653d31;encoding=hex"),
            "{text}"
        );
        let body = std::str::from_utf8(inv.body()).unwrap();
        assert!(
            body.contains("m=audio 20010 RTP/AVP 0 8 9 96 101"),
            "{body}"
        );

        ua.handle_message(
            far_response(&inv, 180, None),
            Peer::udp(AGENT.parse().unwrap()),
            now,
        );
        assert_eq!(
            outputs(&mut ua),
            vec![McpOutput::Leg {
                leg: 9,
                event: LegEvent::Ringing
            }]
        );
        ua.handle_message(
            far_response(&inv, 200, Some(FAR_SDP)),
            Peer::udp(AGENT.parse().unwrap()),
            now,
        );
        let acks: Vec<_> = sent(&mut ua)
            .into_iter()
            .filter(|m| m.method() == Some(&Method::Ack))
            .collect();
        assert_eq!(acks.len(), 1);
        assert_eq!(
            acks[0].request_uri().unwrap().to_string(),
            format!("sip:agent@{AGENT}")
        );
        let out = outputs(&mut ua);
        let [McpOutput::Update { stream: s, setup }, McpOutput::Leg {
            leg: 9,
            event: LegEvent::Answered { stream: s2 },
        }] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!((*s, *s2), (stream, stream));
        assert_eq!(setup.remote, Some("127.0.0.1:7100".parse().unwrap()));
        assert_eq!(setup.codec, MediaCodec::PCMU);

        // The far end hangs up: 200, the leg ends, its stream is released.
        let bye = format!(
            "BYE sip:mcp@{US} SIP/2.0\r\nVia: SIP/2.0/UDP {AGENT};branch=z9hG4bK-farbye\r\nFrom: <sip:agent@{AGENT}>;tag=far1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            inv.get(HeaderName::From).unwrap(),
            inv.call_id().unwrap()
        );
        ua.handle_message(
            Message::parse(Bytes::from(bye)).unwrap(),
            Peer::udp(AGENT.parse().unwrap()),
            now,
        );
        assert_eq!(sent(&mut ua)[0].status(), Some(200));
        let out = outputs(&mut ua);
        assert!(
            out.contains(&McpOutput::Leg {
                leg: 9,
                event: LegEvent::Ended { by_far_end: true }
            }),
            "{out:?}"
        );
        assert!(
            out.iter()
                .any(|o| matches!(o, McpOutput::Release { stream: Some(s), .. } if *s == stream)),
            "{out:?}"
        );
        // The caller's call goes on.
        assert_eq!(ua.session_count(), 1);
    }

    #[test]
    fn a_busy_far_end_fails_the_leg_with_its_status() {
        let mut ua = ua(true);
        let now = Instant::now();
        let (inv, stream) = dialed(&mut ua, StreamId(256), "tel:+18005551212", now);
        assert_eq!(
            inv.request_uri().unwrap().to_string(),
            format!("sip:+18005551212@{GATEWAY}")
        );
        ua.handle_message(
            far_response(&inv, 486, None),
            Peer::udp(GATEWAY.parse().unwrap()),
            now,
        );
        let out = outputs(&mut ua);
        assert!(out.contains(&McpOutput::Leg {
            leg: 9,
            event: LegEvent::Failed { status: 486 }
        }));
        assert!(out
            .iter()
            .any(|o| matches!(o, McpOutput::Release { stream: Some(s), .. } if *s == stream)));
        assert!(
            sent(&mut ua)
                .iter()
                .any(|m| m.method() == Some(&Method::Ack)),
            "the 486 is ACKed"
        );
        assert_eq!(ua.session_count(), 0);
    }

    #[test]
    fn an_unanswered_leg_is_cancelled_at_its_ring_timeout_as_no_answer() {
        let mut ua = ua(true);
        let now = Instant::now();
        let (inv, _) = dialed(&mut ua, StreamId(256), &format!("sip:agent@{AGENT}"), now);
        ua.handle_message(
            far_response(&inv, 180, None),
            Peer::udp(AGENT.parse().unwrap()),
            now,
        );
        outputs(&mut ua);
        let later = now + Duration::from_secs(5);
        assert!(ua.poll_timeout().is_some_and(|t| t <= later));
        ua.handle_timeout(later);
        let cancel = sent(&mut ua);
        assert!(
            cancel.iter().any(|m| m.method() == Some(&Method::Cancel)),
            "{cancel:?}"
        );
        ua.handle_message(
            far_response(&inv, 487, None),
            Peer::udp(AGENT.parse().unwrap()),
            later,
        );
        assert!(outputs(&mut ua).contains(&McpOutput::Leg {
            leg: 9,
            event: LegEvent::Failed { status: 408 }
        }));
        assert_eq!(switchboard_vxml::transfer_failure(408), "noanswer");
    }

    #[test]
    fn hanging_up_an_answered_leg_sends_bye_and_a_bad_destination_sends_nothing() {
        let mut ua = ua(true);
        let now = Instant::now();
        let (inv, _) = dialed(&mut ua, StreamId(256), &format!("sip:agent@{AGENT}"), now);
        ua.handle_message(
            far_response(&inv, 200, Some(FAR_SDP)),
            Peer::udp(AGENT.parse().unwrap()),
            now,
        );
        sent(&mut ua);
        outputs(&mut ua);
        ua.handle_command(McpCommand::HangupLeg { leg: 9 }, now);
        let bye = sent(&mut ua);
        assert!(
            bye.iter().any(|m| m.method() == Some(&Method::Bye)),
            "{bye:?}"
        );
        assert!(outputs(&mut ua).contains(&McpOutput::Leg {
            leg: 9,
            event: LegEvent::Ended { by_far_end: false }
        }));

        ua.handle_command(
            McpCommand::Dial {
                leg: 10,
                dest: "sip:agent@example.com".into(),
                caller: String::new(),
                affinity: 0,
                ring_timeout: Duration::from_secs(5),
                aai: None,
            },
            now,
        );
        assert_eq!(
            outputs(&mut ua),
            vec![McpOutput::Leg {
                leg: 10,
                event: LegEvent::BadDestination
            }]
        );
        assert!(sent(&mut ua).is_empty());
    }

    #[test]
    fn hanging_up_before_any_answer_cancels_after_the_first_provisional() {
        let mut ua = ua(true);
        let now = Instant::now();
        let (inv, _) = dialed(&mut ua, StreamId(256), &format!("sip:agent@{AGENT}"), now);
        ua.handle_command(McpCommand::HangupLeg { leg: 9 }, now);
        assert!(
            !sent(&mut ua)
                .iter()
                .any(|m| m.method() == Some(&Method::Cancel)),
            "no CANCEL before a provisional response"
        );
        ua.handle_message(
            far_response(&inv, 180, None),
            Peer::udp(AGENT.parse().unwrap()),
            now,
        );
        assert!(sent(&mut ua)
            .iter()
            .any(|m| m.method() == Some(&Method::Cancel)));
        assert!(!outputs(&mut ua).contains(&McpOutput::Leg {
            leg: 9,
            event: LegEvent::Ringing
        }));
        // A 2xx that crossed the CANCEL: ACK and BYE, reported as a failure.
        ua.handle_message(
            far_response(&inv, 200, Some(FAR_SDP)),
            Peer::udp(AGENT.parse().unwrap()),
            now,
        );
        let msgs = sent(&mut ua);
        assert!(
            msgs.iter().any(|m| m.method() == Some(&Method::Ack)),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.method() == Some(&Method::Bye)),
            "{msgs:?}"
        );
        assert!(outputs(&mut ua).contains(&McpOutput::Leg {
            leg: 9,
            event: LegEvent::Failed { status: 487 }
        }));
    }

    #[test]
    fn consultation_refers_the_caller_to_the_far_end_with_replaces() {
        let mut ua = ua(true);
        let now = Instant::now();
        let (to, near) = answered(&mut ua, "dialog@mcp;voicexml=http://x/a.vxml", now);
        ua.handle_message(request("ACK", &to, 1, "z9hG4bK-ack1"), phone(), now);
        outputs(&mut ua);
        sent(&mut ua);
        let (inv, _) = dialed(&mut ua, near, &format!("sip:agent@{AGENT}"), now);
        ua.handle_message(
            far_response(&inv, 200, Some(FAR_SDP)),
            Peer::udp(AGENT.parse().unwrap()),
            now,
        );
        sent(&mut ua);
        outputs(&mut ua);
        ua.handle_command(
            McpCommand::ReferToLeg {
                stream: near,
                leg: 9,
            },
            now,
        );
        let refer = sent(&mut ua)
            .into_iter()
            .find(|m| m.method() == Some(&Method::Refer))
            .expect("REFER");
        let from_tag = inv.from().unwrap().tag().unwrap().to_owned();
        let text = String::from_utf8_lossy(refer.as_bytes()).to_string();
        let expected = format!(
            "Refer-To: <sip:agent@{AGENT}?Replaces={}%3Bto-tag%3Dfar1%3Bfrom-tag%3D{from_tag}>",
            inv.call_id().unwrap().replace('@', "%40")
        );
        assert!(text.contains(&expected), "{text}");
        // The REFER goes to the caller, in its dialog.
        assert_eq!(refer.call_id().unwrap(), "c1");
        ua.handle_command(
            McpCommand::ReferToLeg {
                stream: near,
                leg: 77,
            },
            now,
        );
        assert!(outputs(&mut ua).contains(&McpOutput::ReferResult {
            stream: near,
            status: 481
        }));
    }

    /// Bad input never takes the core down: mutated INVITE/ACK/BYE/CANCEL/re-INVITE bytes,
    /// interleaved with stream allocations, hangups and timer runs, in a fixed pseudo-random
    /// order. Nothing may panic, and every session ends once the timers have run out.
    #[test]
    fn mutated_messages_and_commands_never_panic() {
        let mut ua = ua(false);
        let t0 = Instant::now();
        let mut now = t0;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let fixed: Vec<Vec<u8>> = vec![
            invite(
                "annc@mcp;play=tone:440",
                "0 8 101",
                "a=rtpmap:101 telephone-event/8000\r\n",
            )
            .as_bytes()
            .to_vec(),
            invite("conf=r@mcp", "8", "").as_bytes().to_vec(),
            request("CANCEL", "<sip:conf=r@mcp>", 1, &branch_of("conf=r@mcp"))
                .as_bytes()
                .to_vec(),
        ];
        // In-dialog requests use the To (with our tag) of the latest 200 OK we sent.
        let mut to = "<sip:annc@mcp>;tag=zz".to_string();
        let (mut starts, mut oks, mut byes) = (0, 0, 0);
        let mut seq = 1u32;
        let mut streams = 0u64;
        for _ in 0..20_000 {
            match rnd() % 10 {
                0..=5 => {
                    seq += 1;
                    let mut m = match rnd() % 6 {
                        0..=2 => fixed[(rnd() % fixed.len() as u64) as usize].clone(),
                        3 => request("ACK", &to, 1, "z9hG4bK-a").as_bytes().to_vec(),
                        4 => request("BYE", &to, seq, "z9hG4bK-b").as_bytes().to_vec(),
                        _ => reinvite(&to, seq, 7002, "sendonly").as_bytes().to_vec(),
                    };
                    for _ in 0..(rnd() % 4).saturating_sub(1) {
                        let i = (rnd() % m.len() as u64) as usize;
                        match rnd() % 3 {
                            0 => m[i] = rnd() as u8,
                            1 => {
                                m.remove(i);
                            }
                            _ => m.insert(i, b"\r\n:;<>@=0 "[(rnd() % 10) as usize]),
                        }
                    }
                    if let Ok(msg) = Message::parse(Bytes::from(m)) {
                        ua.handle_message(msg, phone(), now);
                    }
                }
                6 | 7 => {
                    // Mostly the latest calls, sometimes one long gone or never offered.
                    let session = ua.next_session.saturating_sub(1 + rnd() % 4);
                    streams += 1;
                    let result = if rnd() % 5 == 0 {
                        Err("no port".to_string())
                    } else {
                        Ok((StreamId(streams << 8), "127.0.0.1:20000".parse().unwrap()))
                    };
                    ua.handle_command(McpCommand::Allocated { session, result }, now);
                }
                8 => {
                    let cmd = match rnd() % 5 {
                        0 => McpCommand::Dial {
                            leg: rnd() % 6,
                            dest: ["sip:a@127.0.0.1:5070", "tel:+1555", "tel:", "sip:x@host"]
                                [(rnd() % 4) as usize]
                                .into(),
                            caller: "sip:alice@127.0.0.1".into(),
                            affinity: rnd() % 4,
                            ring_timeout: Duration::from_millis(rnd() % 4000),
                            aai: None,
                        },
                        1 => McpCommand::HangupLeg { leg: rnd() % 6 },
                        2 => McpCommand::ReferToLeg {
                            stream: StreamId((rnd() % (streams + 1)) << 8),
                            leg: rnd() % 6,
                        },
                        _ => McpCommand::Hangup {
                            stream: StreamId((rnd() % (streams + 1)) << 8),
                            reason: "test".into(),
                            body: None,
                        },
                    };
                    ua.handle_command(cmd, now)
                }
                _ => {
                    now += Duration::from_millis(rnd() % 3000);
                    ua.handle_timeout(now);
                }
            }
            while let Some(t) = ua.poll_transmit() {
                if let Ok(m) = Message::parse(t.payload) {
                    if m.status() == Some(200) && m.cseq().is_ok_and(|c| c.method == Method::Invite)
                    {
                        oks += 1;
                        if let Some(v) = m.get(HeaderName::To) {
                            to = v.to_owned();
                        }
                    }
                    if m.method() == Some(&Method::Bye) {
                        byes += 1;
                    }
                }
            }
            while let Some(o) = ua.poll_output() {
                if matches!(o, McpOutput::Start { .. }) {
                    starts += 1;
                }
            }
        }
        eprintln!("exercised: {oks} 200s, {starts} starts, {byes} BYEs");
        assert!(
            oks > 50 && starts > 10 && byes > 5,
            "exercised: {oks} 200s, {starts} starts, {byes} BYEs"
        );
        // Whatever was left half-open: answered calls time out without ACK, pending
        // allocations are freed, BYEs time out.
        for _ in 0..8 {
            ua.handle_command(
                McpCommand::Allocated {
                    session: rnd() % 8,
                    result: Err("late".into()),
                },
                now,
            );
        }
        for s in 0..ua.next_session {
            ua.handle_command(
                McpCommand::Allocated {
                    session: s,
                    result: Err("drain".into()),
                },
                now,
            );
        }
        for _ in 0..200 {
            now += Duration::from_secs(1);
            ua.handle_timeout(now);
            while ua.poll_transmit().is_some() {}
            while ua.poll_output().is_some() {}
        }
        let stuck: Vec<_> = ua
            .sessions
            .iter()
            .map(|(id, s)| (*id, format!("{:?}", s.phase)))
            .collect();
        assert!(stuck.is_empty(), "sessions left: {stuck:?}");
    }
}
