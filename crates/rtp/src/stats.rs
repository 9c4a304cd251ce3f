//! Receiver statistics per RFC 3550 Appendix A.1 (sequence validation), A.3 (loss) and A.8
//! (interarrival jitter), producing report blocks for RTCP.

use std::time::Instant;

use crate::rtcp::{duration_to_short, NtpTime, ReportBlock};

const RTP_SEQ_MOD: u32 = 1 << 16;
/// A forward jump up to this many packets is taken as loss.
pub const MAX_DROPOUT: u32 = 3000;
/// A backward jump up to this many packets is taken as reordering or duplication.
pub const MAX_MISORDER: u32 = 100;

/// What the sequence check made of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// In sequence, or a forward jump within [`MAX_DROPOUT`] (the gap counts as loss).
    InOrder,
    /// Older than the highest received (reordered or duplicate, within [`MAX_MISORDER`]).
    Late,
    /// Still proving itself (probation): not counted, caller should drop it.
    Probation,
    /// A large jump: dropped unless the next packet confirms it (then the source is restarted).
    BadJump,
    /// A confirmed large jump: statistics restarted (the peer restarted its stream).
    Restarted,
}

impl SeqCheck {
    /// True when the packet should be passed on.
    pub fn accepted(self) -> bool {
        matches!(
            self,
            SeqCheck::InOrder | SeqCheck::Late | SeqCheck::Restarted
        )
    }
}

/// Reception statistics for one remote source.
#[derive(Debug, Clone)]
pub struct ReceiverStats {
    ssrc: u32,
    clock_rate: u32,
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Reference instant for arrival times in timestamp units.
    epoch: Option<Instant>,
    last_transit: Option<u32>,
    /// Jitter scaled by 16 (RFC 3550 A.8).
    jitter_q4: u32,
    last_sr: Option<(NtpTime, Instant)>,
}

impl ReceiverStats {
    /// Starts statistics for `ssrc` at its first packet's sequence number. `probation` is the
    /// number of further in-sequence packets required before packets are accepted (RFC 3550
    /// uses 2 for unknown sources; 0 when the source is already trusted, e.g. by latching).
    /// The first packet itself must then be passed to [`ReceiverStats::on_packet`] like any other.
    pub fn new(ssrc: u32, first_seq: u16, clock_rate: u32, probation: u32) -> ReceiverStats {
        let mut s = ReceiverStats {
            ssrc,
            clock_rate: clock_rate.max(1),
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: RTP_SEQ_MOD + 1,
            probation,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            epoch: None,
            last_transit: None,
            jitter_q4: 0,
            last_sr: None,
        };
        s.init_seq(first_seq);
        if probation > 0 {
            s.max_seq = first_seq.wrapping_sub(1);
        }
        s
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq as u32;
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// The source these statistics are about.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Accounts for a packet: sequence validation, counts, jitter. `arrival` is when the packet
    /// was received, `timestamp` its RTP timestamp.
    pub fn on_packet(&mut self, seq: u16, timestamp: u32, arrival: Instant) -> SeqCheck {
        let check = self.update_seq(seq);
        if check.accepted() {
            self.update_jitter(timestamp, arrival);
        }
        check
    }

    fn update_seq(&mut self, seq: u16) -> SeqCheck {
        let udelta = seq.wrapping_sub(self.max_seq) as u32;
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return SeqCheck::InOrder;
                }
            } else {
                self.probation = 1;
                self.max_seq = seq;
            }
            return SeqCheck::Probation;
        }
        let check = if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
            SeqCheck::InOrder
        } else if udelta <= RTP_SEQ_MOD - MAX_MISORDER {
            if seq as u32 == self.bad_seq {
                // two sequential packets after a jump: the other side restarted
                self.init_seq(seq);
                self.last_transit = None;
                SeqCheck::Restarted
            } else {
                self.bad_seq = (seq as u32 + 1) & (RTP_SEQ_MOD - 1);
                return SeqCheck::BadJump;
            }
        } else {
            SeqCheck::Late
        };
        self.received += 1;
        check
    }

    fn update_jitter(&mut self, timestamp: u32, arrival: Instant) {
        let epoch = *self.epoch.get_or_insert(arrival);
        let since = arrival.saturating_duration_since(epoch);
        let arrival_ts = ((since.as_nanos() * self.clock_rate as u128) / 1_000_000_000) as u32;
        let transit = arrival_ts.wrapping_sub(timestamp);
        if let Some(last) = self.last_transit {
            let d = (transit.wrapping_sub(last) as i32).unsigned_abs();
            // J += (|D| - J) / 16, kept scaled by 16
            self.jitter_q4 = self
                .jitter_q4
                .wrapping_add(d)
                .wrapping_sub((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// Records an SR from this source (for LSR/DLSR in our reports).
    pub fn on_sender_report(&mut self, ntp: NtpTime, arrival: Instant) {
        self.last_sr = Some((ntp, arrival));
    }

    /// Extended highest sequence number received.
    pub fn extended_highest_seq(&self) -> u32 {
        self.cycles.wrapping_add(self.max_seq as u32)
    }

    /// Packets expected since the start (from the sequence numbers).
    pub fn expected(&self) -> u64 {
        (self.cycles as u64 + self.max_seq as u64 + 1).saturating_sub(self.base_seq as u64)
    }

    /// Packets received (duplicates included, as RFC 3550 counts them).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Cumulative packets lost (negative with duplicates).
    pub fn cumulative_lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// Builds the report block for this source and starts a new reporting interval (the
    /// fraction lost is about the interval since the previous call).
    pub fn report_block(&mut self, now: Instant) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((ntp, at)) => (
                ntp.middle32(),
                duration_to_short(now.saturating_duration_since(at)),
            ),
            None => (0, 0),
        };
        ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            extended_highest_seq: self.extended_highest_seq(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn loss_fraction_and_extended_seq_across_wrap() {
        let t0 = Instant::now();
        let mut s = ReceiverStats::new(1, 65530, 8000, 0);
        let mut ts = 0u32;
        let mut at = t0;
        // 65530 ..= 65535, 0 ..= 13 but lose 2 and 5
        for i in 0..20u16 {
            let seq = 65530u16.wrapping_add(i);
            if seq != 2 && seq != 5 {
                assert_eq!(s.on_packet(seq, ts, at), SeqCheck::InOrder);
            }
            ts += 160;
            at += Duration::from_millis(20);
        }
        assert_eq!(s.extended_highest_seq(), 65536 + 13);
        assert_eq!(s.expected(), 20);
        assert_eq!(s.cumulative_lost(), 2);
        let rb = s.report_block(at);
        assert_eq!(rb.fraction_lost, (2 * 256 / 20) as u8);
        assert_eq!(rb.cumulative_lost, 2);
        assert_eq!(rb.jitter, 0, "perfectly paced packets have no jitter");
        // next interval: no loss
        for i in 20..30u16 {
            s.on_packet(65530u16.wrapping_add(i), ts, at);
            ts += 160;
            at += Duration::from_millis(20);
        }
        let rb = s.report_block(at);
        assert_eq!(rb.fraction_lost, 0);
        assert_eq!(rb.cumulative_lost, 2);
    }

    #[test]
    fn jitter_converges_to_the_arrival_variation() {
        let t0 = Instant::now();
        let mut s = ReceiverStats::new(1, 0, 8000, 0);
        // alternate 10 ms early / late: |D| = 20 ms = 160 ticks every packet
        for i in 0..2000u32 {
            let wobble = if i % 2 == 0 { 0 } else { 20 };
            let at = t0 + Duration::from_millis(20 * i as u64 + wobble);
            s.on_packet(i as u16, i * 160, at);
        }
        assert!((s.jitter() as i32 - 160).abs() <= 2, "{}", s.jitter());
    }

    #[test]
    fn duplicates_reordering_and_restarts() {
        let t = Instant::now();
        let mut s = ReceiverStats::new(1, 100, 8000, 0);
        assert_eq!(s.on_packet(100, 0, t), SeqCheck::InOrder);
        assert_eq!(s.on_packet(102, 0, t), SeqCheck::InOrder);
        assert_eq!(s.on_packet(101, 0, t), SeqCheck::Late);
        assert_eq!(s.on_packet(101, 0, t), SeqCheck::Late);
        assert_eq!(s.cumulative_lost(), -1, "a duplicate makes loss negative");
        // a jump of 10000 is dropped once, then accepted as a restart
        assert_eq!(s.on_packet(10_102, 0, t), SeqCheck::BadJump);
        assert_eq!(s.on_packet(10_103, 0, t), SeqCheck::Restarted);
        assert_eq!(s.expected(), 1);
    }

    #[test]
    fn probation_requires_sequential_packets() {
        let t = Instant::now();
        let mut s = ReceiverStats::new(1, 500, 8000, 2);
        assert_eq!(s.on_packet(500, 0, t), SeqCheck::Probation);
        assert_eq!(s.on_packet(501, 0, t), SeqCheck::InOrder);
        assert_eq!(s.on_packet(502, 0, t), SeqCheck::InOrder);
        assert_eq!(s.received(), 2);
    }

    #[test]
    fn lsr_and_dlsr() {
        let t = Instant::now();
        let mut s = ReceiverStats::new(1, 0, 8000, 0);
        let ntp = NtpTime(0x1122_3344_5566_7788);
        s.on_sender_report(ntp, t);
        let rb = s.report_block(t + Duration::from_millis(500));
        assert_eq!(rb.last_sr, 0x3344_5566);
        assert_eq!(rb.delay_since_last_sr, 32768);
    }
}
