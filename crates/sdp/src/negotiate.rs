//! RFC 3264 offer/answer as a pure state machine.
//!
//! [`OfferAnswer`] holds our side of one session: our address, port and codecs, the `o=` line
//! (session id and version) and whether we hold the call. It creates offers and answers, takes
//! the peer's offers and answers, and yields the [`Negotiated`] media the runtime should apply.
//! It never does I/O; the session id is given by the caller.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::model::*;

/// A codec we support, in our order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    /// Encoding name as in `a=rtpmap` (`PCMU`, `PCMA`, `G722`, `L16`, ...).
    pub name: String,
    /// RTP clock rate (8000 for G.722, as RFC 3551 says).
    pub clock_rate: u32,
    pub channels: u8,
    /// The static payload type (RFC 3551), if the codec has one.
    pub static_payload_type: Option<u8>,
    /// `a=fmtp` parameters to offer.
    pub fmtp: Option<String>,
}

impl Codec {
    pub fn pcmu() -> Codec {
        Codec::new_static("PCMU", 8000, 0)
    }
    pub fn pcma() -> Codec {
        Codec::new_static("PCMA", 8000, 8)
    }
    pub fn g722() -> Codec {
        Codec::new_static("G722", 8000, 9)
    }
    /// Mono L16 at `rate` (dynamic payload type).
    pub fn l16(rate: u32) -> Codec {
        Codec {
            name: "L16".into(),
            clock_rate: rate,
            channels: 1,
            static_payload_type: None,
            fmtp: None,
        }
    }
    fn new_static(name: &str, clock_rate: u32, pt: u8) -> Codec {
        Codec {
            name: name.into(),
            clock_rate,
            channels: 1,
            static_payload_type: Some(pt),
            fmtp: None,
        }
    }

    /// Does the offered format `pt` (with its rtpmap, if any) denote this codec?
    fn matches(&self, pt: u8, map: Option<&RtpMap>) -> bool {
        match map {
            Some(m) => {
                m.encoding.eq_ignore_ascii_case(&self.name)
                    && m.clock_rate == self.clock_rate
                    && m.channels.unwrap_or(1) == self.channels
            }
            // no rtpmap: only static payload types are defined
            None => self.static_payload_type == Some(pt),
        }
    }
}

/// Our media setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// `o=` username.
    pub username: String,
    /// Our media address (also used in `o=`).
    pub address: IpAddr,
    /// Our RTP port for audio.
    pub port: u16,
    /// Supported codecs in preference order.
    pub codecs: Vec<Codec>,
    /// The payload type we offer for telephone-event/8000, or `None` not to offer RFC 4733.
    pub telephone_event: Option<u8>,
    /// Packetisation time to ask for, ms.
    pub ptime: Option<u32>,
}

/// The codec chosen for a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedCodec {
    pub payload_type: u8,
    pub name: String,
    pub clock_rate: u32,
    pub channels: u8,
    pub fmtp: Option<String>,
}

/// The outcome of a completed offer/answer exchange for the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the audio `m=` line.
    pub media_index: usize,
    /// Where to send RTP (`None` when the peer gave a host name or the RFC 2543 hold address
    /// 0.0.0.0). Symmetric-RTP latching may override it.
    pub remote: Option<SocketAddr>,
    pub codec: NegotiatedCodec,
    /// Payload type of telephone-event, when both sides use RFC 4733.
    pub telephone_event: Option<u8>,
    /// The peer's requested packetisation time, ms.
    pub ptime: Option<u32>,
    /// What *we* do on this stream: `SendRecv`, or on hold `SendOnly`/`RecvOnly`/`Inactive`.
    pub direction: Direction,
}

/// Why an offer or answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NegotiationError {
    /// No offered audio codec is one we support (answer the INVITE with 488).
    #[error("no common codec (offered: {offered})")]
    NoCommonCodec { offered: String },
    /// The offer has no usable audio stream (answer with 488).
    #[error("no audio stream in the offer")]
    NoAudio,
    /// We have an offer outstanding and received an offer (glare: answer 491).
    #[error("offer received while our offer is pending")]
    Glare,
    /// An answer arrived when no offer was pending.
    #[error("answer received without a pending offer")]
    NoOfferPending,
    /// We were asked to offer while our previous offer is unanswered.
    #[error("an offer is already pending")]
    OfferPending,
    /// The answer does not fit the offer.
    #[error("invalid answer: {0}")]
    InvalidAnswer(&'static str),
}

impl NegotiationError {
    /// The SIP status to answer an INVITE / re-INVITE with.
    pub fn sip_status(&self) -> u16 {
        match self {
            NegotiationError::Glare => 491,
            NegotiationError::NoCommonCodec { .. } | NegotiationError::NoAudio => 488,
            _ => 500,
        }
    }
}

/// Our hold mode (RFC 3264 §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    /// We keep sending (music on hold), do not receive: `a=sendonly`.
    SendOnly,
    /// No media either way: `a=inactive`.
    Inactive,
}

/// Where the exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferAnswerState {
    /// No exchange in progress.
    Stable,
    /// We sent this offer and wait for the answer.
    LocalOfferSent(Box<SessionDescription>),
}

/// Our side of the offer/answer exchanges of one session.
#[derive(Debug, Clone)]
pub struct OfferAnswer {
    local: LocalMedia,
    session_id: u64,
    version: u64,
    /// The last SDP we sent (its version is `version`).
    last_sent: Option<SessionDescription>,
    hold: Option<HoldMode>,
    state: OfferAnswerState,
    negotiated: Option<Negotiated>,
}

impl OfferAnswer {
    /// `session_id` should be unique (e.g. random or NTP-time based); the caller supplies it.
    pub fn new(local: LocalMedia, session_id: u64) -> OfferAnswer {
        OfferAnswer {
            local,
            session_id,
            version: session_id,
            last_sent: None,
            hold: None,
            state: OfferAnswerState::Stable,
            negotiated: None,
        }
    }

    pub fn state(&self) -> &OfferAnswerState {
        &self.state
    }

    /// The media agreed by the last completed exchange.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    pub fn local(&self) -> &LocalMedia {
        &self.local
    }

    /// Changes our media (e.g. a new port); takes effect in the next offer or answer.
    pub fn set_local(&mut self, local: LocalMedia) {
        self.local = local;
    }

    /// Puts the call on hold (or takes it off with `None`); send [`OfferAnswer::create_offer`]
    /// to tell the peer.
    pub fn set_hold(&mut self, hold: Option<HoldMode>) {
        self.hold = hold;
    }

    pub fn hold(&self) -> Option<HoldMode> {
        self.hold
    }

    fn our_direction(&self) -> Direction {
        match self.hold {
            None => Direction::SendRecv,
            Some(HoldMode::SendOnly) => Direction::SendOnly,
            Some(HoldMode::Inactive) => Direction::Inactive,
        }
    }

    /// Payload types for our codecs: static ones, then dynamic from 96 avoiding telephone-event.
    fn our_payload_types(&self) -> Vec<(u8, &Codec)> {
        let mut next = 96u8;
        let mut out = Vec::new();
        for c in &self.local.codecs {
            let pt = match c.static_payload_type {
                Some(pt) => pt,
                None => {
                    while Some(next) == self.local.telephone_event && next < 127 {
                        next += 1;
                    }
                    let pt = next;
                    next = next.saturating_add(1).min(127);
                    pt
                }
            };
            out.push((pt, c));
        }
        out
    }

    /// Stamps `o=` and decides the version: unchanged content keeps the version, any change
    /// increments it (RFC 3264 §8).
    fn stamp(&mut self, mut sdp: SessionDescription) -> SessionDescription {
        if let Some(last) = &self.last_sent {
            let mut probe = sdp.clone();
            probe.origin.session_version = last.origin.session_version;
            if &probe != last {
                self.version += 1;
            }
        }
        sdp.origin.session_version = self.version;
        self.last_sent = Some(sdp.clone());
        sdp
    }

    fn skeleton(&self) -> SessionDescription {
        let ip = self.local.address;
        let conn = Connection::ip(ip);
        SessionDescription {
            origin: Origin {
                username: self.local.username.clone(),
                session_id: self.session_id,
                session_version: self.version,
                addr_type: conn.addr_type,
                address: Host::Ip(ip),
            },
            session_name: "switchboard".into(),
            connection: Some(conn),
            timing: (0, 0),
            direction: None,
            attributes: Vec::new(),
            other_lines: Vec::new(),
            media: Vec::new(),
        }
    }

    /// Creates an offer (initial, re-offer, hold or resume, per the current hold mode).
    pub fn create_offer(&mut self) -> Result<SessionDescription, NegotiationError> {
        if matches!(self.state, OfferAnswerState::LocalOfferSent(_)) {
            return Err(NegotiationError::OfferPending);
        }
        let mut sdp = self.skeleton();
        let mut m = MediaDescription::new("audio", self.local.port, "RTP/AVP");
        for (pt, c) in self.our_payload_types() {
            m.formats.push(pt.to_string());
            m.rtpmaps.push(RtpMap {
                payload_type: pt,
                encoding: c.name.clone(),
                clock_rate: c.clock_rate,
                channels: (c.channels != 1).then_some(c.channels),
            });
            if let Some(f) = &c.fmtp {
                m.fmtps.push(Fmtp {
                    format: pt.to_string(),
                    params: f.clone(),
                });
            }
        }
        if let Some(te) = self.local.telephone_event {
            m.formats.push(te.to_string());
            m.rtpmaps.push(RtpMap {
                payload_type: te,
                encoding: "telephone-event".into(),
                clock_rate: 8000,
                channels: None,
            });
            m.fmtps.push(Fmtp {
                format: te.to_string(),
                params: "0-16".into(),
            });
        }
        m.ptime = self.local.ptime;
        m.direction = Some(self.our_direction());
        sdp.media.push(m);
        let sdp = self.stamp(sdp);
        self.state = OfferAnswerState::LocalOfferSent(Box::new(sdp.clone()));
        Ok(sdp)
    }

    /// Withdraws a pending offer (the request failed, e.g. 491 or 488); the previous
    /// negotiated state stays.
    pub fn rollback(&mut self) {
        self.state = OfferAnswerState::Stable;
    }

    /// Answers a peer's offer (initial or re-offer). On error the caller rejects the request
    /// (see [`NegotiationError::sip_status`]) and nothing changes.
    pub fn handle_offer(
        &mut self,
        offer: &SessionDescription,
    ) -> Result<(SessionDescription, Negotiated), NegotiationError> {
        if matches!(self.state, OfferAnswerState::LocalOfferSent(_)) {
            return Err(NegotiationError::Glare);
        }
        let ours = self.our_direction();
        let mut answer = self.skeleton();
        let mut chosen: Option<Negotiated> = None;
        let mut offered_names: Vec<String> = Vec::new();
        for (i, om) in offer.media.iter().enumerate() {
            let mut am = MediaDescription::new(&om.media, 0, &om.protocol);
            // a rejected stream still lists a format (RFC 3264 §6)
            am.formats = om.formats.first().cloned().into_iter().collect();
            let usable = chosen.is_none()
                && om.media == "audio"
                && om.port != 0
                && (om.protocol == "RTP/AVP" || om.protocol == "RTP/AVPF");
            if usable {
                let mut pick = None;
                for pt in om.payload_types() {
                    let map = om.rtpmap(pt);
                    if let Some(m) = map {
                        if !m.encoding.eq_ignore_ascii_case("telephone-event") {
                            offered_names.push(format!("{}/{}", m.encoding, m.clock_rate));
                        }
                    } else {
                        offered_names.push(pt.to_string());
                    }
                    if pick.is_none() {
                        if let Some(c) = self.local.codecs.iter().find(|c| c.matches(pt, map)) {
                            pick = Some((pt, c.clone()));
                        }
                    }
                }
                if let Some((pt, codec)) = pick {
                    let te = om.payload_types().find(|&p| {
                        om.rtpmap(p).is_some_and(|m| {
                            m.encoding.eq_ignore_ascii_case("telephone-event")
                                && m.clock_rate == codec.clock_rate
                        })
                    });
                    let te = te.filter(|_| self.local.telephone_event.is_some());
                    let offered_dir = offer.direction_for(i);
                    let conn = offer.connection_for(i);
                    // RFC 2543 hold: c=0.0.0.0 means "do not send to me"
                    let peer_dir = if conn.is_some_and(|c| c.address.is_unspecified()) {
                        offered_dir.intersect(Direction::SendOnly)
                    } else {
                        offered_dir
                    };
                    let our_dir = ours.intersect(peer_dir.reverse());
                    am.port = self.local.port;
                    am.formats = vec![pt.to_string()];
                    am.rtpmaps.push(RtpMap {
                        payload_type: pt,
                        encoding: codec.name.clone(),
                        clock_rate: codec.clock_rate,
                        channels: (codec.channels != 1).then_some(codec.channels),
                    });
                    let fmtp = om.fmtp(pt).map(str::to_string);
                    if let Some(f) = &fmtp {
                        am.fmtps.push(Fmtp {
                            format: pt.to_string(),
                            params: f.clone(),
                        });
                    }
                    if let Some(te) = te {
                        am.formats.push(te.to_string());
                        am.rtpmaps.push(RtpMap {
                            payload_type: te,
                            encoding: "telephone-event".into(),
                            clock_rate: codec.clock_rate,
                            channels: None,
                        });
                        am.fmtps.push(Fmtp {
                            format: te.to_string(),
                            params: om.fmtp(te).unwrap_or("0-15").to_string(),
                        });
                    }
                    // Our ptime, not the offer's: it is what we send (a=ptime describes the
                    // packets its sender wants to receive, and we packetise at our own rate).
                    am.ptime = self.local.ptime.or(om.ptime);
                    am.direction = Some(our_dir);
                    chosen = Some(Negotiated {
                        media_index: i,
                        remote: remote_addr(conn, om.port),
                        codec: NegotiatedCodec {
                            payload_type: pt,
                            name: codec.name.clone(),
                            clock_rate: codec.clock_rate,
                            channels: codec.channels,
                            fmtp,
                        },
                        telephone_event: te,
                        ptime: om.ptime,
                        direction: our_dir,
                    });
                }
            }
            answer.media.push(am);
        }
        let Some(negotiated) = chosen else {
            return Err(if offered_names.is_empty() {
                NegotiationError::NoAudio
            } else {
                NegotiationError::NoCommonCodec {
                    offered: offered_names.join(" "),
                }
            });
        };
        let answer = self.stamp(answer);
        self.negotiated = Some(negotiated.clone());
        self.state = OfferAnswerState::Stable;
        Ok((answer, negotiated))
    }

    /// Takes the peer's answer to our pending offer.
    pub fn handle_answer(
        &mut self,
        answer: &SessionDescription,
    ) -> Result<Negotiated, NegotiationError> {
        let OfferAnswerState::LocalOfferSent(offer) = &self.state else {
            return Err(NegotiationError::NoOfferPending);
        };
        if answer.media.len() != offer.media.len() {
            return Err(NegotiationError::InvalidAnswer(
                "answer has a different number of m= lines than the offer",
            ));
        }
        let offered_dir = offer.direction_for(0);
        let offered_pts: Vec<u8> = offer.media[0].payload_types().collect();
        let am = &answer.media[0];
        if am.port == 0 {
            // the peer rejected our audio stream
            self.state = OfferAnswerState::Stable;
            return Err(NegotiationError::NoCommonCodec {
                offered: offered_pts
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            });
        }
        let ours = self.our_payload_types();
        let mut pick = None;
        for pt in am.payload_types() {
            let map = am.rtpmap(pt);
            if map.is_some_and(|m| m.encoding.eq_ignore_ascii_case("telephone-event")) {
                continue;
            }
            if let Some((_, c)) = ours.iter().find(|(_, c)| c.matches(pt, map)) {
                pick = Some((pt, (*c).clone()));
                break;
            }
        }
        let Some((pt, codec)) = pick else {
            return Err(NegotiationError::InvalidAnswer(
                "answer selects no codec we offered",
            ));
        };
        let te = am.payload_types().find(|&p| {
            am.rtpmap(p)
                .is_some_and(|m| m.encoding.eq_ignore_ascii_case("telephone-event"))
        });
        let te = te.filter(|_| self.local.telephone_event.is_some());
        let conn = answer.connection_for(0);
        let answered = answer.direction_for(0);
        let peer_dir = if conn.is_some_and(|c| c.address.is_unspecified()) {
            answered.intersect(Direction::SendOnly)
        } else {
            answered
        };
        let negotiated = Negotiated {
            media_index: 0,
            remote: remote_addr(conn, am.port),
            codec: NegotiatedCodec {
                payload_type: pt,
                name: codec.name.clone(),
                clock_rate: codec.clock_rate,
                channels: codec.channels,
                fmtp: am.fmtp(pt).map(str::to_string),
            },
            telephone_event: te,
            ptime: am.ptime,
            direction: offered_dir.intersect(peer_dir.reverse()),
        };
        self.negotiated = Some(negotiated.clone());
        self.state = OfferAnswerState::Stable;
        Ok(negotiated)
    }
}

fn remote_addr(conn: Option<&Connection>, port: u16) -> Option<SocketAddr> {
    let ip = conn?.address.ip()?;
    if ip.is_unspecified() || port == 0 {
        return None;
    }
    Some(SocketAddr::new(ip, port))
}
