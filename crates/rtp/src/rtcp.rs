//! RTCP (RFC 3550 §6): sender and receiver reports, SDES, BYE; compound packet parse and build.
//!
//! Parsing is zero-copy: [`parse_compound`] yields views into the datagram, and each view was
//! length-checked when it was produced, so its accessors cannot fail. Building writes into a
//! caller-provided buffer.

use std::time::Duration;
use thiserror::Error;

/// RTCP packet types (RFC 3550 §12.1).
pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;

/// SDES item types (RFC 3550 §6.5).
pub const SDES_END: u8 = 0;
pub const SDES_CNAME: u8 = 1;

/// The most report blocks one SR/RR carries (5-bit count).
pub const MAX_REPORT_BLOCKS: usize = 31;

/// Why an RTCP datagram was rejected, or why a packet could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtcpError {
    #[error("RTCP packet at offset {offset} truncated: need {need} bytes, have {have}")]
    Truncated {
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("RTCP version {version} at offset {offset}, expected 2")]
    BadVersion { offset: usize, version: u8 },
    #[error("RTCP packet type {packet_type} at offset {offset}: {what}")]
    Malformed {
        offset: usize,
        packet_type: u8,
        what: &'static str,
    },
    #[error("compound RTCP packet must start with SR or RR, starts with {0}")]
    FirstNotReport(u8),
    #[error("padding only allowed in the last packet of a compound (offset {0})")]
    PaddingNotLast(usize),
    #[error("empty RTCP datagram")]
    Empty,
    #[error("output buffer too small for RTCP packet")]
    BufferTooSmall,
    #[error("too many report blocks ({0}, at most 31)")]
    TooManyReportBlocks(usize),
    #[error("SDES/BYE text longer than 255 bytes")]
    TextTooLong,
    #[error("too many sources ({0}, at most 31)")]
    TooManySources(usize),
}

/// A 64-bit NTP timestamp (seconds since 1900 in the high 32 bits, fraction in the low 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
    pub const UNIX_OFFSET_SECS: u64 = 2_208_988_800;

    /// From a time since the Unix epoch (the caller reads the wall clock, e.g.
    /// `SystemTime::now().duration_since(UNIX_EPOCH)`).
    pub fn from_unix(since_epoch: Duration) -> NtpTime {
        let secs = since_epoch.as_secs().wrapping_add(Self::UNIX_OFFSET_SECS) & 0xffff_ffff;
        let frac = ((since_epoch.subsec_nanos() as u64) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    /// The middle 32 bits, as carried in LSR and used for round-trip time.
    pub fn middle32(self) -> u32 {
        (self.0 >> 16) as u32
    }
}

/// Converts a duration to the 1/65536 s units of DLSR (saturating).
pub fn duration_to_short(d: Duration) -> u32 {
    let units = (d.as_nanos() << 16) / 1_000_000_000;
    units.min(u32::MAX as u128) as u32
}

/// Converts 1/65536 s units to a duration.
pub fn short_to_duration(units: u32) -> Duration {
    Duration::from_nanos(((units as u64) * 1_000_000_000) >> 16)
}

/// Round-trip time from a report block about our stream (RFC 3550 §6.4.1), given the NTP time
/// the report arrived. `None` when the peer has not received an SR from us yet, or when the
/// arithmetic goes negative (clock skew).
pub fn round_trip_time(block: &ReportBlock, arrival: NtpTime) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let a = arrival.middle32();
    let rtt = a
        .checked_sub(block.last_sr)?
        .checked_sub(block.delay_since_last_sr)?;
    Some(short_to_duration(rtt))
}

/// The sender information of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    pub ntp_time: NtpTime,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// A reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative number of packets lost (24-bit signed on the wire; duplicates can make it
    /// negative).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles << 16 | highest).
    pub extended_highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the last SR's NTP timestamp from this source, 0 if none.
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

const REPORT_BLOCK_LEN: usize = 24;

impl ReportBlock {
    fn read(b: &[u8]) -> ReportBlock {
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let lost24 = u32::from_be_bytes([0, b[5], b[6], b[7]]);
        // sign-extend 24 bits
        let cumulative_lost = ((lost24 << 8) as i32) >> 8;
        ReportBlock {
            ssrc: u32_at(0),
            fraction_lost: b[4],
            cumulative_lost,
            extended_highest_seq: u32_at(8),
            jitter: u32_at(12),
            last_sr: u32_at(16),
            delay_since_last_sr: u32_at(20),
        }
    }

    fn write(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        b[4] = self.fraction_lost;
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32;
        b[5..8].copy_from_slice(&lost.to_be_bytes()[1..]);
        b[8..12].copy_from_slice(&self.extended_highest_seq.to_be_bytes());
        b[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        b[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        b[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// Report blocks of an SR or RR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlocks<'a>(&'a [u8]);

impl<'a> ReportBlocks<'a> {
    pub fn len(&self) -> usize {
        self.0.len() / REPORT_BLOCK_LEN
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = ReportBlock> + 'a {
        self.0.chunks_exact(REPORT_BLOCK_LEN).map(ReportBlock::read)
    }
}

/// A sender report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport<'a> {
    pub ssrc: u32,
    pub sender_info: SenderInfo,
    pub reports: ReportBlocks<'a>,
}

/// A receiver report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    pub ssrc: u32,
    pub reports: ReportBlocks<'a>,
}

/// A source description packet (validated; iterate with [`Sdes::chunks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sdes<'a> {
    count: u8,
    body: &'a [u8],
}

/// One SDES chunk: a source and its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdesChunk<'a> {
    pub ssrc: u32,
    items: &'a [u8],
}

impl<'a> SdesChunk<'a> {
    /// The items as (type, value).
    pub fn items(&self) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
        let mut rest = self.items;
        std::iter::from_fn(move || {
            if rest.len() < 2 || rest[0] == SDES_END {
                return None;
            }
            let (kind, len) = (rest[0], rest[1] as usize);
            let value = rest.get(2..2 + len)?;
            rest = &rest[2 + len..];
            Some((kind, value))
        })
    }

    /// The CNAME item, if present and UTF-8.
    pub fn cname(&self) -> Option<&'a str> {
        self.items()
            .find(|(k, _)| *k == SDES_CNAME)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Walks one SDES chunk; returns (items slice, total chunk length) or None when malformed.
fn sdes_chunk_len(b: &[u8]) -> Option<(u32, usize, usize)> {
    let ssrc = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?);
    let mut pos = 4;
    loop {
        let kind = *b.get(pos)?;
        if kind == SDES_END {
            let items_end = pos;
            // null terminator plus padding up to the next 32-bit boundary
            let end = (pos + 4) & !3;
            if end > b.len() {
                return None;
            }
            return Some((ssrc, items_end, end));
        }
        let len = *b.get(pos + 1)? as usize;
        pos += 2 + len;
        if pos > b.len() {
            return None;
        }
    }
}

impl<'a> Sdes<'a> {
    fn validate(count: u8, body: &[u8]) -> bool {
        let mut rest = body;
        for _ in 0..count {
            match sdes_chunk_len(rest) {
                Some((_, _, len)) => rest = &rest[len..],
                None => return false,
            }
        }
        true
    }

    /// The chunks.
    pub fn chunks(&self) -> impl Iterator<Item = SdesChunk<'a>> + 'a {
        let mut rest = self.body;
        let mut left = self.count;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let (ssrc, items_end, len) = sdes_chunk_len(rest)?;
            let chunk = SdesChunk {
                ssrc,
                items: &rest[4..items_end],
            };
            rest = &rest[len..];
            Some(chunk)
        })
    }
}

/// A BYE packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye<'a> {
    ssrcs: &'a [u8],
    /// The reason for leaving, as sent.
    pub reason: Option<&'a [u8]>,
}

impl<'a> Bye<'a> {
    pub fn ssrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.ssrcs
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    SenderReport(SenderReport<'a>),
    ReceiverReport(ReceiverReport<'a>),
    Sdes(Sdes<'a>),
    Bye(Bye<'a>),
    /// APP, feedback (RFC 4585), XR (RFC 3611) and anything else: kept raw.
    Other {
        packet_type: u8,
        count: u8,
        body: &'a [u8],
    },
}

impl RtcpPacket<'_> {
    pub fn packet_type(&self) -> u8 {
        match self {
            RtcpPacket::SenderReport(_) => PT_SR,
            RtcpPacket::ReceiverReport(_) => PT_RR,
            RtcpPacket::Sdes(_) => PT_SDES,
            RtcpPacket::Bye(_) => PT_BYE,
            RtcpPacket::Other { packet_type, .. } => *packet_type,
        }
    }
}

/// Iterates the packets of a compound RTCP datagram. After the first error it stops.
#[derive(Debug, Clone)]
pub struct RtcpIter<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of the packet most recently returned.
    last: usize,
    failed: bool,
}

/// Parses a (compound) RTCP datagram lazily.
pub fn parse_compound(buf: &[u8]) -> RtcpIter<'_> {
    RtcpIter {
        buf,
        pos: 0,
        last: 0,
        failed: false,
    }
}

/// RFC 3550 Appendix A.2 validity checks for a compound packet: every packet well formed, the
/// first an SR or RR without padding, padding only in the last, lengths adding up.
pub fn validate_compound(buf: &[u8]) -> Result<(), RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::Empty);
    }
    let mut it = parse_compound(buf);
    let mut first = true;
    while let Some(p) = it.next() {
        let start = it.last;
        let p = p?;
        if first {
            if !matches!(p.packet_type(), PT_SR | PT_RR) {
                return Err(RtcpError::FirstNotReport(p.packet_type()));
            }
            first = false;
        }
        if buf[start] & 0x20 != 0 && it.pos != buf.len() {
            return Err(RtcpError::PaddingNotLast(start));
        }
    }
    Ok(())
}

impl<'a> RtcpIter<'a> {
    fn parse_one(&mut self) -> Result<RtcpPacket<'a>, RtcpError> {
        let offset = self.pos;
        let rest = &self.buf[offset..];
        if rest.len() < 4 {
            return Err(RtcpError::Truncated {
                offset,
                need: 4,
                have: rest.len(),
            });
        }
        let version = rest[0] >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion { offset, version });
        }
        let padding = rest[0] & 0x20 != 0;
        let count = rest[0] & 0x1f;
        let packet_type = rest[1];
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
        if rest.len() < len {
            return Err(RtcpError::Truncated {
                offset,
                need: len,
                have: rest.len(),
            });
        }
        let mut body = &rest[4..len];
        if padding {
            let pad = *body.last().unwrap_or(&0) as usize;
            if pad == 0 || pad > body.len() {
                return Err(RtcpError::Malformed {
                    offset,
                    packet_type,
                    what: "bad padding length",
                });
            }
            body = &body[..body.len() - pad];
        }
        self.pos += len;
        let malformed = |what| RtcpError::Malformed {
            offset,
            packet_type,
            what,
        };
        let u32_at = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        match packet_type {
            PT_SR => {
                let need = 24 + count as usize * REPORT_BLOCK_LEN;
                if body.len() < need {
                    return Err(malformed("sender report shorter than its report count"));
                }
                let ntp = ((u32_at(body, 4) as u64) << 32) | u32_at(body, 8) as u64;
                Ok(RtcpPacket::SenderReport(SenderReport {
                    ssrc: u32_at(body, 0),
                    sender_info: SenderInfo {
                        ntp_time: NtpTime(ntp),
                        rtp_timestamp: u32_at(body, 12),
                        packet_count: u32_at(body, 16),
                        octet_count: u32_at(body, 20),
                    },
                    reports: ReportBlocks(&body[24..need]),
                }))
            }
            PT_RR => {
                let need = 4 + count as usize * REPORT_BLOCK_LEN;
                if body.len() < need {
                    return Err(malformed("receiver report shorter than its report count"));
                }
                Ok(RtcpPacket::ReceiverReport(ReceiverReport {
                    ssrc: u32_at(body, 0),
                    reports: ReportBlocks(&body[4..need]),
                }))
            }
            PT_SDES => {
                if !Sdes::validate(count, body) {
                    return Err(malformed("SDES chunk overruns the packet"));
                }
                Ok(RtcpPacket::Sdes(Sdes { count, body }))
            }
            PT_BYE => {
                let n = count as usize * 4;
                if body.len() < n {
                    return Err(malformed("BYE shorter than its source count"));
                }
                let reason = match body.get(n) {
                    Some(&rlen) if rlen > 0 => Some(
                        body.get(n + 1..n + 1 + rlen as usize)
                            .ok_or(malformed("BYE reason overruns the packet"))?,
                    ),
                    _ => None,
                };
                Ok(RtcpPacket::Bye(Bye {
                    ssrcs: &body[..n],
                    reason,
                }))
            }
            _ => Ok(RtcpPacket::Other {
                packet_type,
                count,
                body,
            }),
        }
    }
}

impl<'a> Iterator for RtcpIter<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        self.last = self.pos;
        let r = self.parse_one();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

/// Writes a compound RTCP packet into a caller-provided buffer.
#[derive(Debug)]
pub struct RtcpWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> RtcpWriter<'a> {
    pub fn new(buf: &'a mut [u8]) -> RtcpWriter<'a> {
        RtcpWriter { buf, len: 0 }
    }

    /// Reserves `n` bytes (a multiple of 4) and writes the common header.
    fn begin(&mut self, count: u8, packet_type: u8, n: usize) -> Result<&mut [u8], RtcpError> {
        debug_assert!(n & 3 == 0 && n >= 4);
        if self.buf.len() - self.len < n {
            return Err(RtcpError::BufferTooSmall);
        }
        let p = &mut self.buf[self.len..self.len + n];
        p[0] = 0x80 | (count & 0x1f);
        p[1] = packet_type;
        p[2..4].copy_from_slice(&((n / 4 - 1) as u16).to_be_bytes());
        self.len += n;
        Ok(p)
    }

    /// Appends a sender report.
    pub fn sender_report(
        &mut self,
        ssrc: u32,
        info: &SenderInfo,
        reports: &[ReportBlock],
    ) -> Result<&mut Self, RtcpError> {
        if reports.len() > MAX_REPORT_BLOCKS {
            return Err(RtcpError::TooManyReportBlocks(reports.len()));
        }
        let p = self.begin(
            reports.len() as u8,
            PT_SR,
            28 + reports.len() * REPORT_BLOCK_LEN,
        )?;
        p[4..8].copy_from_slice(&ssrc.to_be_bytes());
        p[8..16].copy_from_slice(&info.ntp_time.0.to_be_bytes());
        p[16..20].copy_from_slice(&info.rtp_timestamp.to_be_bytes());
        p[20..24].copy_from_slice(&info.packet_count.to_be_bytes());
        p[24..28].copy_from_slice(&info.octet_count.to_be_bytes());
        for (r, b) in reports
            .iter()
            .zip(p[28..].chunks_exact_mut(REPORT_BLOCK_LEN))
        {
            r.write(b);
        }
        Ok(self)
    }

    /// Appends a receiver report.
    pub fn receiver_report(
        &mut self,
        ssrc: u32,
        reports: &[ReportBlock],
    ) -> Result<&mut Self, RtcpError> {
        if reports.len() > MAX_REPORT_BLOCKS {
            return Err(RtcpError::TooManyReportBlocks(reports.len()));
        }
        let p = self.begin(
            reports.len() as u8,
            PT_RR,
            8 + reports.len() * REPORT_BLOCK_LEN,
        )?;
        p[4..8].copy_from_slice(&ssrc.to_be_bytes());
        for (r, b) in reports
            .iter()
            .zip(p[8..].chunks_exact_mut(REPORT_BLOCK_LEN))
        {
            r.write(b);
        }
        Ok(self)
    }

    /// Appends an SDES packet with one chunk carrying a CNAME.
    pub fn sdes_cname(&mut self, ssrc: u32, cname: &str) -> Result<&mut Self, RtcpError> {
        let text = cname.as_bytes();
        if text.len() > 255 {
            return Err(RtcpError::TextTooLong);
        }
        // ssrc + type + len + text + at least one null, padded to 4
        let chunk = (4 + 2 + text.len() + 1 + 3) & !3;
        let p = self.begin(1, PT_SDES, 4 + chunk)?;
        p[4..8].copy_from_slice(&ssrc.to_be_bytes());
        p[8] = SDES_CNAME;
        p[9] = text.len() as u8;
        p[10..10 + text.len()].copy_from_slice(text);
        p[10 + text.len()..].fill(0);
        Ok(self)
    }

    /// Appends a BYE.
    pub fn bye(&mut self, ssrcs: &[u32], reason: Option<&str>) -> Result<&mut Self, RtcpError> {
        if ssrcs.len() > 31 {
            return Err(RtcpError::TooManySources(ssrcs.len()));
        }
        let reason = reason.map(str::as_bytes).unwrap_or(&[]);
        if reason.len() > 255 {
            return Err(RtcpError::TextTooLong);
        }
        let mut n = 4 + ssrcs.len() * 4;
        if !reason.is_empty() {
            n += (1 + reason.len() + 3) & !3;
        }
        let p = self.begin(ssrcs.len() as u8, PT_BYE, n)?;
        for (s, b) in ssrcs.iter().zip(p[4..].chunks_exact_mut(4)) {
            b.copy_from_slice(&s.to_be_bytes());
        }
        if !reason.is_empty() {
            let at = 4 + ssrcs.len() * 4;
            p[at] = reason.len() as u8;
            p[at + 1..at + 1 + reason.len()].copy_from_slice(reason);
            p[at + 1 + reason.len()..].fill(0);
        }
        Ok(self)
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ends the compound packet; returns its length.
    pub fn finish(self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32, lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: lost,
            extended_highest_seq: 0x0001_0005,
            jitter: 80,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65536,
        }
    }

    #[test]
    fn compound_sr_sdes_bye_round_trip() {
        let info = SenderInfo {
            ntp_time: NtpTime::from_unix(Duration::new(1_700_000_000, 500_000_000)),
            rtp_timestamp: 160_000,
            packet_count: 1000,
            octet_count: 160_000,
        };
        let mut buf = [0u8; 256];
        let mut w = RtcpWriter::new(&mut buf);
        w.sender_report(0xaaaa, &info, &[block(0xbbbb, 3), block(0xcccc, -2)])
            .unwrap()
            .sdes_cname(0xaaaa, "mcp-1@example.com")
            .unwrap()
            .bye(&[0xaaaa], Some("teardown"))
            .unwrap();
        let n = w.finish();
        assert_eq!(n % 4, 0);
        validate_compound(&buf[..n]).unwrap();
        let packets: Vec<_> = parse_compound(&buf[..n]).collect::<Result<_, _>>().unwrap();
        assert_eq!(packets.len(), 3);
        let RtcpPacket::SenderReport(sr) = packets[0] else {
            panic!("{:?}", packets[0])
        };
        assert_eq!(sr.ssrc, 0xaaaa);
        assert_eq!(sr.sender_info, info);
        let blocks: Vec<_> = sr.reports.iter().collect();
        assert_eq!(blocks, vec![block(0xbbbb, 3), block(0xcccc, -2)]);
        let RtcpPacket::Sdes(sdes) = packets[1] else {
            panic!()
        };
        let chunk = sdes.chunks().next().unwrap();
        assert_eq!(chunk.ssrc, 0xaaaa);
        assert_eq!(chunk.cname(), Some("mcp-1@example.com"));
        let RtcpPacket::Bye(bye) = packets[2] else {
            panic!()
        };
        assert_eq!(bye.ssrcs().collect::<Vec<_>>(), vec![0xaaaa]);
        assert_eq!(bye.reason, Some(&b"teardown"[..]));
    }

    #[test]
    fn receiver_report_and_lost_clamping() {
        let mut buf = [0u8; 64];
        let mut w = RtcpWriter::new(&mut buf);
        w.receiver_report(7, &[block(9, 10_000_000)]).unwrap();
        let n = w.finish();
        assert_eq!(n, 32);
        let p = parse_compound(&buf[..n]).next().unwrap().unwrap();
        let RtcpPacket::ReceiverReport(rr) = p else {
            panic!()
        };
        assert_eq!(rr.ssrc, 7);
        assert_eq!(rr.reports.iter().next().unwrap().cumulative_lost, 0x7f_ffff);
        // no room
        let mut small = [0u8; 20];
        assert_eq!(
            RtcpWriter::new(&mut small)
                .receiver_report(7, &[block(9, 0)])
                .unwrap_err(),
            RtcpError::BufferTooSmall
        );
    }

    #[test]
    fn rtt_from_lsr_and_dlsr() {
        let sent = NtpTime::from_unix(Duration::from_secs(1000));
        let b = ReportBlock {
            last_sr: sent.middle32(),
            delay_since_last_sr: duration_to_short(Duration::from_millis(250)),
            ..Default::default()
        };
        let arrival = NtpTime::from_unix(Duration::from_millis(1_000_330));
        let rtt = round_trip_time(&b, arrival).unwrap();
        assert!((rtt.as_secs_f64() - 0.080).abs() < 0.001, "{rtt:?}");
        assert_eq!(round_trip_time(&ReportBlock::default(), arrival), None);
    }

    #[test]
    fn malformed_compounds_are_rejected() {
        assert_eq!(validate_compound(&[]), Err(RtcpError::Empty));
        // length says 2 words, only 1 present
        let p = [0x80, PT_RR, 0, 2, 0, 0, 0, 1];
        assert!(matches!(
            validate_compound(&p),
            Err(RtcpError::Truncated { .. })
        ));
        // RR announcing one block but carrying none
        let p = [0x81, PT_RR, 0, 1, 0, 0, 0, 1];
        assert!(matches!(
            validate_compound(&p),
            Err(RtcpError::Malformed { .. })
        ));
        // starts with SDES
        let mut buf = [0u8; 64];
        let mut w = RtcpWriter::new(&mut buf);
        w.sdes_cname(1, "x").unwrap();
        let n = w.finish();
        assert_eq!(
            validate_compound(&buf[..n]),
            Err(RtcpError::FirstNotReport(PT_SDES))
        );
        // SDES whose item length overruns
        let p = [
            0x80, PT_RR, 0, 1, 0, 0, 0, 1, 0x81, PT_SDES, 0, 2, 0, 0, 0, 1, 1, 200, 0, 0,
        ];
        assert!(validate_compound(&p).is_err());
        // version 1
        assert!(matches!(
            validate_compound(&[0x40, PT_RR, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::BadVersion { .. })
        ));
    }
}
