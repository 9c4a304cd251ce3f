//! One RTP stream pair: the sending side (sequence and timestamp continuity whatever the audio
//! source), the receiving side (validation, symmetric-RTP latching, statistics, drop counters)
//! and RTCP reports.

use std::net::SocketAddr;
use std::time::Instant;

use crate::packet::{RtpError, RtpHeader, RtpPacket, RTP_HEADER_LEN};
use crate::rtcp::{
    parse_compound, NtpTime, ReportBlock, RtcpError, RtcpPacket, RtcpWriter, SenderInfo,
};
use crate::stats::{ReceiverStats, SeqCheck};
use crate::telephone_event::EventPacket;

/// The sending half of an RTP stream.
///
/// Sequence numbers go up by one per packet and the timestamp by the media duration of each
/// packet, across prompt changes, silence and DTMF: the runtime just reports how much media time
/// passed ([`RtpSender::write_audio`] or [`RtpSender::skip`]), never restarts the counters.
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    seq: u16,
    /// Timestamp of the next audio packet.
    timestamp: u32,
    clock_rate: u32,
    marker_next: bool,
    packets: u32,
    octets: u32,
    /// (timestamp, instant) of the last packet sent, for SR timestamp extrapolation.
    last_sent: Option<(u32, Instant)>,
    sent_since_report: bool,
}

impl RtpSender {
    /// `initial_seq` and `initial_timestamp` should be random (RFC 3550 §5.1); the caller draws
    /// them, as it draws the SSRC.
    pub fn new(ssrc: u32, initial_seq: u16, initial_timestamp: u32, clock_rate: u32) -> RtpSender {
        RtpSender {
            ssrc,
            seq: initial_seq,
            timestamp: initial_timestamp,
            clock_rate: clock_rate.max(1),
            marker_next: true,
            packets: 0,
            octets: 0,
            last_sent: None,
            sent_since_report: false,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Changes the SSRC (after a collision, RFC 3550 §8.2). Sequence and timestamp continue.
    pub fn set_ssrc(&mut self, ssrc: u32) {
        self.ssrc = ssrc;
        self.packets = 0;
        self.octets = 0;
    }

    /// The sequence number the next packet will carry.
    pub fn next_sequence(&self) -> u16 {
        self.seq
    }

    /// The timestamp the next audio packet will carry; also the timestamp to start a
    /// telephone-event with.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// Packets and payload octets sent so far (for the SR).
    pub fn counts(&self) -> (u32, u32) {
        (self.packets, self.octets)
    }

    /// Lets `ticks` of media time pass without sending (silence suppression, hold, a gap
    /// between prompts). The next packet starts a talkspurt and carries the marker bit.
    pub fn skip(&mut self, ticks: u32) {
        self.timestamp = self.timestamp.wrapping_add(ticks);
        self.marker_next = true;
    }

    /// Sets the marker bit on the next audio packet (start of a talkspurt).
    pub fn mark_next(&mut self) {
        self.marker_next = true;
    }

    fn header(&mut self, payload_type: u8, marker: bool, timestamp: u32) -> RtpHeader {
        RtpHeader {
            marker,
            payload_type,
            sequence: self.seq,
            timestamp,
            ssrc: self.ssrc,
        }
    }

    fn sent(&mut self, timestamp: u32, payload_len: usize, now: Instant) {
        self.seq = self.seq.wrapping_add(1);
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        self.last_sent = Some((timestamp, now));
        self.sent_since_report = true;
    }

    /// Writes an audio packet whose payload is produced in place by `encode` (given the space
    /// after the header, returning the payload length, e.g. `|b| g711::encode_ulaw(&pcm, b)`),
    /// then advances the timestamp by `ticks`. Returns the datagram length.
    pub fn write_audio_with(
        &mut self,
        payload_type: u8,
        ticks: u32,
        out: &mut [u8],
        now: Instant,
        encode: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<usize, RtpError> {
        let ts = self.timestamp;
        let h = self.header(payload_type, self.marker_next, ts);
        h.write(out)?;
        let body = &mut out[RTP_HEADER_LEN..];
        let n = encode(body).min(body.len());
        self.marker_next = false;
        self.timestamp = ts.wrapping_add(ticks);
        self.sent(ts, n, now);
        Ok(RTP_HEADER_LEN + n)
    }

    /// Writes an audio packet with an already encoded payload.
    pub fn write_audio(
        &mut self,
        payload_type: u8,
        payload: &[u8],
        ticks: u32,
        out: &mut [u8],
        now: Instant,
    ) -> Result<usize, RtpError> {
        if out.len() < RTP_HEADER_LEN + payload.len() {
            return Err(RtpError::BufferTooSmall {
                need: RTP_HEADER_LEN + payload.len(),
                have: out.len(),
            });
        }
        self.write_audio_with(payload_type, ticks, out, now, |b| {
            b[..payload.len()].copy_from_slice(payload);
            payload.len()
        })
    }

    /// Writes a telephone-event packet (RFC 4733). It takes the next sequence number but keeps
    /// the event's own timestamp; the audio timestamp is not advanced (the runtime keeps calling
    /// [`RtpSender::skip`] for the media time the event covers).
    pub fn write_event(
        &mut self,
        payload_type: u8,
        event: &EventPacket,
        out: &mut [u8],
        now: Instant,
    ) -> Result<usize, RtpError> {
        let h = self.header(payload_type, event.marker, event.timestamp);
        let n = h.write_with_payload(&event.payload(), out)?;
        self.sent(event.timestamp, n - RTP_HEADER_LEN, now);
        Ok(n)
    }

    /// Sender info for an SR at wall-clock `ntp_now` / monotonic `now`: the RTP timestamp is
    /// extrapolated from the last packet sent.
    pub fn sender_info(&self, ntp_now: NtpTime, now: Instant) -> SenderInfo {
        let rtp_timestamp = match self.last_sent {
            Some((ts, at)) => {
                let ticks = (now.saturating_duration_since(at).as_nanos() * self.clock_rate as u128
                    / 1_000_000_000) as u32;
                ts.wrapping_add(ticks)
            }
            None => self.timestamp,
        };
        SenderInfo {
            ntp_time: ntp_now,
            rtp_timestamp,
            packet_count: self.packets,
            octet_count: self.octets,
        }
    }
}

/// Symmetric RTP (RFC 4961 / the "latching" of SBCs and media servers): send to where the
/// peer's media comes from, learned from the first valid packet.
#[derive(Debug, Clone)]
pub struct Latch {
    signalled: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    /// A different address sending the latched SSRC, and how many packets in a row it sent.
    candidate: Option<(SocketAddr, u32)>,
    relatch_after: u32,
}

/// The latching verdict for a valid packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatchDecision {
    /// From the latched address.
    Accept,
    /// Accepted, and the remote address is now this one (first packet, or a re-latch after the
    /// peer's NAT binding changed).
    Latched(SocketAddr),
    /// From another address: drop.
    Reject,
}

impl Latch {
    /// `signalled` is the address from SDP (used until latched). A latched stream moves to a
    /// new address after `relatch_after` consecutive packets of the same SSRC from it (0: never).
    pub fn new(signalled: Option<SocketAddr>, relatch_after: u32) -> Latch {
        Latch {
            signalled,
            latched: None,
            candidate: None,
            relatch_after,
        }
    }

    /// Where to send: the latched address, else the signalled one.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.latched.or(self.signalled)
    }

    pub fn is_latched(&self) -> bool {
        self.latched.is_some()
    }

    /// New signalling (re-INVITE): the new address applies and latching starts over.
    pub fn reset(&mut self, signalled: Option<SocketAddr>) {
        self.signalled = signalled;
        self.latched = None;
        self.candidate = None;
    }

    /// Judges a packet that already passed payload-type and SSRC checks. `same_source` says
    /// whether it carries the SSRC of the stream already received.
    pub fn on_packet(&mut self, from: SocketAddr, same_source: bool) -> LatchDecision {
        match self.latched {
            None => {
                self.latched = Some(from);
                LatchDecision::Latched(from)
            }
            Some(addr) if addr == from => {
                self.candidate = None;
                LatchDecision::Accept
            }
            Some(_) => {
                if self.relatch_after == 0 || !same_source {
                    return LatchDecision::Reject;
                }
                let count = match self.candidate {
                    Some((a, n)) if a == from => n + 1,
                    _ => 1,
                };
                if count >= self.relatch_after {
                    self.latched = Some(from);
                    self.candidate = None;
                    LatchDecision::Latched(from)
                } else {
                    self.candidate = Some((from, count));
                    LatchDecision::Reject
                }
            }
        }
    }
}

/// Counters of dropped datagrams, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub malformed: u64,
    pub unexpected_payload_type: u64,
    pub unexpected_ssrc: u64,
    pub unexpected_source: u64,
    pub bad_sequence: u64,
    pub malformed_rtcp: u64,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Malformed(RtpError),
    UnexpectedPayloadType(u8),
    UnexpectedSsrc(u32),
    UnexpectedSource(SocketAddr),
    /// Sequence probation or an unconfirmed large jump.
    BadSequence(u16),
}

/// An accepted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    pub packet: RtpPacket<'a>,
    /// Set when this packet latched (or re-latched) the remote address.
    pub latched: Option<SocketAddr>,
    /// Set when this packet started a new remote source (first packet or SSRC change).
    pub new_source: bool,
    /// The packet is older than one already received.
    pub late: bool,
}

/// The receiving half of an RTP stream.
#[derive(Debug, Clone)]
pub struct RtpReceiver {
    clock_rate: u32,
    accepted_pts: [bool; 128],
    expected_ssrc: Option<u32>,
    latch: Latch,
    stats: Option<ReceiverStats>,
    drops: DropCounters,
}

impl RtpReceiver {
    /// `payload_types` are the negotiated types (audio codec, telephone-event, comfort noise);
    /// anything else is dropped. `expected_ssrc` pins the source (e.g. from `a=ssrc`);
    /// otherwise the first valid packet's SSRC is taken, and a later SSRC change from the latched
    /// address starts a new source (SBCs do that on re-INVITE).
    pub fn new(
        clock_rate: u32,
        payload_types: &[u8],
        expected_ssrc: Option<u32>,
        latch: Latch,
    ) -> RtpReceiver {
        let mut r = RtpReceiver {
            clock_rate,
            accepted_pts: [false; 128],
            expected_ssrc,
            latch,
            stats: None,
            drops: DropCounters::default(),
        };
        r.set_payload_types(payload_types);
        r
    }

    /// Replaces the accepted payload types (after a re-negotiation).
    pub fn set_payload_types(&mut self, payload_types: &[u8]) {
        self.accepted_pts = [false; 128];
        for &pt in payload_types {
            if let Some(slot) = self.accepted_pts.get_mut(pt as usize) {
                *slot = true;
            }
        }
    }

    pub fn latch(&self) -> &Latch {
        &self.latch
    }

    pub fn latch_mut(&mut self) -> &mut Latch {
        &mut self.latch
    }

    pub fn stats(&self) -> Option<&ReceiverStats> {
        self.stats.as_ref()
    }

    pub fn drops(&self) -> DropCounters {
        self.drops
    }

    /// Validates an incoming datagram from `from`. Accepted packets update the statistics.
    /// Dropped ones are counted; the caller just discards them.
    pub fn handle_datagram<'a>(
        &mut self,
        datagram: &'a [u8],
        from: SocketAddr,
        now: Instant,
    ) -> Result<Received<'a>, Dropped> {
        let packet = match RtpPacket::parse(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.drops.malformed += 1;
                return Err(Dropped::Malformed(e));
            }
        };
        let pt = packet.payload_type();
        if !self.accepted_pts[pt as usize] {
            self.drops.unexpected_payload_type += 1;
            return Err(Dropped::UnexpectedPayloadType(pt));
        }
        let ssrc = packet.ssrc();
        if let Some(expected) = self.expected_ssrc {
            if ssrc != expected {
                self.drops.unexpected_ssrc += 1;
                return Err(Dropped::UnexpectedSsrc(ssrc));
            }
        }
        let same_source = self.stats.as_ref().is_some_and(|s| s.ssrc() == ssrc);
        let latched = match self.latch.on_packet(from, same_source) {
            LatchDecision::Reject => {
                self.drops.unexpected_source += 1;
                return Err(Dropped::UnexpectedSource(from));
            }
            LatchDecision::Accept => None,
            LatchDecision::Latched(a) => Some(a),
        };
        let new_source = !same_source;
        if new_source {
            self.stats = Some(ReceiverStats::new(
                ssrc,
                packet.sequence(),
                self.clock_rate,
                0,
            ));
        }
        let check = match self.stats.as_mut() {
            Some(s) => s.on_packet(packet.sequence(), packet.timestamp(), now),
            None => SeqCheck::InOrder,
        };
        if !check.accepted() {
            self.drops.bad_sequence += 1;
            return Err(Dropped::BadSequence(packet.sequence()));
        }
        Ok(Received {
            packet,
            latched,
            new_source,
            late: check == SeqCheck::Late,
        })
    }
}

/// What an incoming RTCP datagram told us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcpSummary {
    /// The peer's report about our stream, if it sent one.
    pub report_about_us: Option<ReportBlock>,
    /// The peer said goodbye.
    pub bye: bool,
    /// An SR was received.
    pub sender_report: bool,
}

/// An RTP session: our sender, the peer's stream and RTCP.
#[derive(Debug, Clone)]
pub struct RtpSession {
    pub sender: RtpSender,
    pub receiver: RtpReceiver,
    last_report_about_us: Option<ReportBlock>,
}

impl RtpSession {
    pub fn new(sender: RtpSender, receiver: RtpReceiver) -> RtpSession {
        RtpSession {
            sender,
            receiver,
            last_report_about_us: None,
        }
    }

    /// The peer's latest report about our stream.
    pub fn last_report_about_us(&self) -> Option<ReportBlock> {
        self.last_report_about_us
    }

    /// Handles an RTCP datagram: records SRs from the peer (for LSR/DLSR) and reports about
    /// our SSRC. Malformed datagrams are counted and returned as errors.
    pub fn handle_rtcp(&mut self, datagram: &[u8], now: Instant) -> Result<RtcpSummary, RtcpError> {
        let mut summary = RtcpSummary::default();
        let ours = self.sender.ssrc();
        for p in parse_compound(datagram) {
            let p = match p {
                Ok(p) => p,
                Err(e) => {
                    self.receiver.drops.malformed_rtcp += 1;
                    return Err(e);
                }
            };
            let blocks = match p {
                RtcpPacket::SenderReport(sr) => {
                    summary.sender_report = true;
                    if let Some(stats) = self.receiver.stats.as_mut() {
                        if stats.ssrc() == sr.ssrc {
                            stats.on_sender_report(sr.sender_info.ntp_time, now);
                        }
                    }
                    Some(sr.reports)
                }
                RtcpPacket::ReceiverReport(rr) => Some(rr.reports),
                RtcpPacket::Bye(_) => {
                    summary.bye = true;
                    None
                }
                _ => None,
            };
            if let Some(b) = blocks.and_then(|b| b.iter().find(|b| b.ssrc == ours)) {
                summary.report_about_us = Some(b);
                self.last_report_about_us = Some(b);
            }
        }
        Ok(summary)
    }

    /// Builds our periodic compound report: an SR if we sent media since the last report,
    /// otherwise an RR; a report block about the peer if we receive it; SDES CNAME.
    pub fn write_report(
        &mut self,
        cname: &str,
        ntp_now: NtpTime,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, RtcpError> {
        let block = self.receiver.stats.as_mut().map(|s| s.report_block(now));
        let blocks = block.as_slice();
        let ssrc = self.sender.ssrc();
        let mut w = RtcpWriter::new(out);
        if self.sender.sent_since_report {
            let info = self.sender.sender_info(ntp_now, now);
            w.sender_report(ssrc, &info, blocks)?;
        } else {
            w.receiver_report(ssrc, blocks)?;
        }
        w.sdes_cname(ssrc, cname)?;
        self.sender.sent_since_report = false;
        Ok(w.finish())
    }

    /// Builds a BYE (with an RR and SDES first, as a compound packet must start with a report).
    pub fn write_bye(
        &mut self,
        cname: &str,
        reason: Option<&str>,
        out: &mut [u8],
    ) -> Result<usize, RtcpError> {
        let ssrc = self.sender.ssrc();
        let mut w = RtcpWriter::new(out);
        w.receiver_report(ssrc, &[])?
            .sdes_cname(ssrc, cname)?
            .bye(&[ssrc], reason)?;
        Ok(w.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::g711;
    use crate::rtcp::validate_compound;
    use crate::telephone_event::DtmfSender;
    use std::time::Duration;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sequence_and_timestamp_continue_across_prompt_changes_and_dtmf() {
        let t0 = Instant::now();
        let mut tx = RtpSender::new(0x1234, 65534, 4_294_967_000, 8000);
        let mut buf = [0u8; 200];
        let pcm = [0i16; 160];
        let mut seen = Vec::new();
        // prompt A: 2 packets
        for i in 0..2 {
            let n = tx
                .write_audio_with(0, 160, &mut buf, t0 + Duration::from_millis(20 * i), |b| {
                    g711::encode_ulaw(&pcm, b)
                })
                .unwrap();
            seen.push(RtpPacket::parse(&buf[..n]).unwrap().header());
        }
        // prompt B starts: nothing restarts
        let n = tx.write_audio(0, &[0xff; 160], 160, &mut buf, t0).unwrap();
        seen.push(RtpPacket::parse(&buf[..n]).unwrap().header());
        // a DTMF event at the current timestamp, while audio time runs on
        let ev_ts = tx.timestamp();
        let mut dtmf = DtmfSender::new(8000);
        dtmf.start(1, Duration::from_millis(40), 10, ev_ts, t0)
            .unwrap();
        for ms in 0..200 {
            if let Some(p) = dtmf.poll_packet(t0 + Duration::from_millis(ms)) {
                let n = tx.write_event(101, &p, &mut buf, t0).unwrap();
                seen.push(RtpPacket::parse(&buf[..n]).unwrap().header());
            }
        }
        tx.skip(320);
        let n = tx.write_audio(0, &[0xff; 160], 160, &mut buf, t0).unwrap();
        seen.push(RtpPacket::parse(&buf[..n]).unwrap().header());

        let seqs: Vec<u16> = seen.iter().map(|h| h.sequence).collect();
        // 3 audio, start + 3 ends of a 40 ms event, audio
        assert_eq!(seqs, vec![65534, 65535, 0, 1, 2, 3, 4, 5]);
        let ts: Vec<u32> = seen.iter().map(|h| h.timestamp).collect();
        assert_eq!(ts[0], 4_294_967_000);
        assert_eq!(ts[1], ts[0].wrapping_add(160));
        assert_eq!(ts[2], ts[0].wrapping_add(320));
        assert_eq!(
            ts[3],
            ts[0].wrapping_add(480),
            "event carries its start timestamp"
        );
        assert!(ts[3..7].iter().all(|&t| t == ts[3]));
        assert_eq!(
            ts[7],
            ts[0].wrapping_add(480 + 320),
            "audio resumes after the gap"
        );
        assert!(seen[0].marker && !seen[1].marker && !seen[2].marker);
        assert!(seen[3].marker, "first event packet is marked");
        assert!(!seen[4].marker);
        assert!(seen[7].marker, "talkspurt after a gap is marked");
        assert_eq!(seen.iter().filter(|h| h.payload_type == 101).count(), 4);
    }

    fn packet(seq: u16, ts: u32, ssrc: u32, pt: u8) -> Vec<u8> {
        let mut b = vec![0u8; 172];
        RtpHeader {
            marker: false,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc,
        }
        .write_with_payload(&[0xff; 160], &mut b)
        .unwrap();
        b
    }

    #[test]
    fn latching_learns_from_the_first_valid_packet() {
        let t = Instant::now();
        let sdp = addr("192.0.2.10:4000");
        let nat = addr("198.51.100.7:61000");
        let other = addr("203.0.113.9:5000");
        let mut rx = RtpReceiver::new(8000, &[0, 101], None, Latch::new(Some(sdp), 3));
        assert_eq!(rx.latch().remote(), Some(sdp));
        // wrong payload type from another address: dropped, does not latch
        assert_eq!(
            rx.handle_datagram(&packet(1, 0, 7, 8), other, t),
            Err(Dropped::UnexpectedPayloadType(8))
        );
        // garbage: dropped and counted
        assert!(matches!(
            rx.handle_datagram(&[1, 2, 3], other, t),
            Err(Dropped::Malformed(_))
        ));
        let p = packet(1, 0, 7, 0);
        let r = rx.handle_datagram(&p, nat, t).unwrap();
        assert_eq!(r.latched, Some(nat));
        assert!(r.new_source);
        assert_eq!(rx.latch().remote(), Some(nat));
        // another source from a third address is rejected
        assert_eq!(
            rx.handle_datagram(&packet(2, 160, 99, 0), other, t),
            Err(Dropped::UnexpectedSource(other))
        );
        let p = packet(2, 160, 7, 0);
        let r = rx.handle_datagram(&p, nat, t).unwrap();
        assert_eq!((r.latched, r.new_source), (None, false));
        // the same SSRC moves (NAT rebinding): re-latch after 3 packets
        let moved = addr("198.51.100.7:61002");
        assert!(rx.handle_datagram(&packet(3, 320, 7, 0), moved, t).is_err());
        assert!(rx.handle_datagram(&packet(4, 480, 7, 0), moved, t).is_err());
        let p = packet(5, 640, 7, 0);
        let r = rx.handle_datagram(&p, moved, t).unwrap();
        assert_eq!(r.latched, Some(moved));
        let d = rx.drops();
        assert_eq!(
            (d.malformed, d.unexpected_payload_type, d.unexpected_source),
            (1, 1, 3)
        );
    }

    #[test]
    fn pinned_ssrc_and_ssrc_change() {
        let t = Instant::now();
        let a = addr("192.0.2.1:4000");
        let mut rx = RtpReceiver::new(8000, &[0], Some(5), Latch::new(None, 0));
        assert_eq!(
            rx.handle_datagram(&packet(1, 0, 6, 0), a, t),
            Err(Dropped::UnexpectedSsrc(6))
        );
        assert!(rx.handle_datagram(&packet(1, 0, 5, 0), a, t).is_ok());
        // unpinned: an SSRC change from the latched address is a new source
        let mut rx = RtpReceiver::new(8000, &[0], None, Latch::new(None, 0));
        rx.handle_datagram(&packet(100, 0, 5, 0), a, t).unwrap();
        let p = packet(9000, 0, 6, 0);
        let r = rx.handle_datagram(&p, a, t).unwrap();
        assert!(r.new_source);
        assert_eq!(rx.stats().unwrap().ssrc(), 6);
    }

    #[test]
    fn rtcp_report_round_trip_between_two_sessions() {
        let t0 = Instant::now();
        let a_addr = addr("192.0.2.1:4000");
        let b_addr = addr("192.0.2.2:4000");
        let mut a = RtpSession::new(
            RtpSender::new(0xa, 0, 0, 8000),
            RtpReceiver::new(8000, &[0], None, Latch::new(Some(b_addr), 0)),
        );
        let mut b = RtpSession::new(
            RtpSender::new(0xb, 0, 0, 8000),
            RtpReceiver::new(8000, &[0], None, Latch::new(Some(a_addr), 0)),
        );
        let mut buf = [0u8; 200];
        // a sends 50 packets, b loses 5 of them
        for i in 0..50u64 {
            let now = t0 + Duration::from_millis(20 * i);
            let n = a
                .sender
                .write_audio(0, &[0xff; 160], 160, &mut buf, now)
                .unwrap();
            if i % 10 != 3 {
                b.receiver.handle_datagram(&buf[..n], a_addr, now).unwrap();
            }
        }
        let now = t0 + Duration::from_secs(1);
        let wall = NtpTime::from_unix(Duration::from_secs(1_700_000_000));
        let mut rtcp = [0u8; 512];
        let n = a.write_report("a@mcp", wall, now, &mut rtcp).unwrap();
        validate_compound(&rtcp[..n]).unwrap();
        let s = b.handle_rtcp(&rtcp[..n], now).unwrap();
        assert!(s.sender_report);
        // b answers 100 ms later with an RR about a's stream
        let later = now + Duration::from_millis(100);
        let n = b
            .write_report(
                "b@peer",
                NtpTime::from_unix(Duration::from_millis(1_700_000_000_100)),
                later,
                &mut rtcp,
            )
            .unwrap();
        assert_eq!(rtcp[1], crate::rtcp::PT_RR, "b sent no media: RR");
        let s = a.handle_rtcp(&rtcp[..n], later).unwrap();
        let rb = s.report_about_us.unwrap();
        assert_eq!(rb.ssrc, 0xa);
        assert_eq!(rb.cumulative_lost, 5);
        assert_eq!(rb.fraction_lost, (5 * 256 / 50) as u8);
        assert_eq!(rb.extended_highest_seq, 49);
        assert_eq!(rb.last_sr, wall.middle32());
        let dlsr = crate::rtcp::short_to_duration(rb.delay_since_last_sr);
        assert!((dlsr.as_millis() as i64 - 100).abs() <= 1);
        let rtt = crate::rtcp::round_trip_time(
            &rb,
            NtpTime::from_unix(Duration::from_millis(1_700_000_000_100)),
        )
        .unwrap();
        assert!(rtt < Duration::from_millis(2), "{rtt:?}");
        let n = a.write_bye("a@mcp", Some("bye"), &mut rtcp).unwrap();
        validate_compound(&rtcp[..n]).unwrap();
        assert!(b.handle_rtcp(&rtcp[..n], later).unwrap().bye);
    }
}
