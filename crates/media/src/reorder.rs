//! A stream's received audio put back in sequence order before it is decoded and heard by the
//! DTMF detector, the recorder and the conference mixer: the thin runtime side of
//! [`JitterBuffer::pop_in_order`]. Packets that arrive in order pass at once; a missing one is
//! waited for until 60 ms of later audio is here, then reported lost. A new SSRC, or a run of
//! packets the buffer calls late (the sender jumped back), starts it afresh.

use switchboard_rtp::jitter::{JitterBuffer, JitterConfig, Playout, PushOutcome};

/// Timestamp units (8 kHz) of later audio to collect before a missing packet is given up.
pub(crate) const REORDER_SPAN: u32 = 480;
/// Largest payload held (80 ms of G.711 or G.722, 40 ms of L16); larger ones bypass it.
const MAX_PAYLOAD: usize = 640;
/// Packets held at most.
const CAPACITY: usize = 8;
/// This many "late" packets in a row mean the sender's sequence jumped back: start again.
const LATE_RUN_RESET: u32 = 4;

/// What comes out next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// A packet, its payload copied to the caller's buffer.
    Packet {
        ssrc: u32,
        timestamp: u32,
        len: usize,
    },
    /// A packet that never came.
    Lost,
}

#[derive(Debug)]
pub(crate) struct Reorder {
    jb: JitterBuffer,
    ssrc: Option<u32>,
    late_run: u32,
}

impl Reorder {
    pub(crate) fn new() -> Reorder {
        Reorder {
            jb: Self::buffer(),
            ssrc: None,
            late_run: 0,
        }
    }

    fn buffer() -> JitterBuffer {
        JitterBuffer::new(JitterConfig {
            capacity: CAPACITY,
            max_payload: MAX_PAYLOAD,
            playout_delay: 0,
        })
    }

    /// True when the packet is the next in order with nothing held before it: the caller
    /// uses it at once, as if pushed and popped, without copying it through the buffer.
    pub(crate) fn pass(&mut self, ssrc: u32, seq: u16, len: usize) -> bool {
        if len > MAX_PAYLOAD || self.ssrc != Some(ssrc) || !self.jb.pass_in_order(seq) {
            return false;
        }
        self.late_run = 0;
        true
    }

    /// Stores a packet, unless it is too large to hold (use it directly) or the first of a new
    /// source while the old one still has packets here (flush those, then push again).
    pub(crate) fn push(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
    ) -> PushResult {
        if payload.len() > MAX_PAYLOAD {
            return PushResult::Bypass;
        }
        if self.ssrc != Some(ssrc) {
            if !self.jb.is_empty() {
                return PushResult::NewSource;
            }
            self.restart(ssrc);
        }
        match self.jb.push(seq, timestamp, false, payload) {
            PushOutcome::Late => {
                self.late_run += 1;
                if self.late_run >= LATE_RUN_RESET && self.jb.is_empty() {
                    self.restart(ssrc);
                    self.jb.push(seq, timestamp, false, payload);
                }
            }
            PushOutcome::Stored => self.late_run = 0,
            PushOutcome::Duplicate | PushOutcome::TooLarge => {}
        }
        PushResult::Held
    }

    fn restart(&mut self, ssrc: u32) {
        if self.ssrc.is_some() {
            self.jb = Self::buffer();
        }
        self.ssrc = Some(ssrc);
        self.late_run = 0;
    }

    /// The next packet in order, if it is due (see the module docs); its payload goes to
    /// `out`. With `flush`, missing packets are not waited for (the stream or the recording
    /// ends, or a new source starts).
    pub(crate) fn pop(&mut self, out: &mut [u8], flush: bool) -> Option<Next> {
        let span = if flush { 0 } else { REORDER_SPAN };
        match self.jb.pop_in_order(out, span) {
            Playout::Packet { timestamp, len, .. } => Some(Next::Packet {
                ssrc: self.ssrc.unwrap_or(0),
                timestamp,
                len,
            }),
            Playout::Lost { .. } => Some(Next::Lost),
            Playout::Buffering => None,
        }
    }
}

/// What [`Reorder::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushResult {
    Held,
    /// Too large: use the packet directly.
    Bypass,
    /// A new SSRC: flush, then push again.
    NewSource,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut Reorder, flush: bool) -> Vec<String> {
        let mut v = Vec::new();
        let mut out = [0u8; MAX_PAYLOAD];
        loop {
            match r.pop(&mut out, flush) {
                Some(Next::Packet { timestamp, len, .. }) => {
                    assert_eq!(len, 160);
                    v.push(format!("{}", out[0] as u32 * 1000 + timestamp / 160))
                }
                Some(Next::Lost) => v.push("lost".into()),
                None => return v,
            }
        }
    }

    #[test]
    fn reorders_flushes_and_follows_a_new_source() {
        let mut r = Reorder::new();
        // 0 2 1 3 4 5: 1 and 2 swapped
        for s in [0u16, 2, 1, 3, 4, 5] {
            assert_eq!(r.push(9, s, s as u32 * 160, &[1; 160]), PushResult::Held);
        }
        assert_eq!(
            drain(&mut r, false),
            vec!["1000", "1001", "1002", "1003", "1004", "1005"]
        );
        // 7 arrives without 6: held, then flushed at the end
        r.push(9, 7, 7 * 160, &[1; 160]);
        assert!(drain(&mut r, false).is_empty());
        assert_eq!(drain(&mut r, true), vec!["lost", "1007"]);
        // a new SSRC starting with a lower sequence number is not "late"
        r.push(9, 8, 8 * 160, &[1; 160]);
        assert_eq!(r.push(5, 100, 0, &[2; 160]), PushResult::NewSource);
        assert_eq!(drain(&mut r, true), vec!["1008"]);
        for s in 100..104u16 {
            assert_eq!(
                r.push(5, s, (s as u32 - 100) * 160, &[2; 160]),
                PushResult::Held
            );
        }
        assert_eq!(drain(&mut r, false), vec!["2000", "2001", "2002", "2003"]);
        assert_eq!(r.push(5, 1, 0, &[0; 641]), PushResult::Bypass);
    }

    #[test]
    fn a_sender_that_jumps_back_is_followed() {
        let mut r = Reorder::new();
        let mut out = Vec::new();
        for s in 1000..1010u16 {
            r.push(1, s, s as u32 * 160, &[1; 160]);
            out.extend(drain(&mut r, false));
        }
        assert_eq!(
            out.len(),
            10,
            "in order: out as they come, once 60 ms are in"
        );
        let mut out = Vec::new();
        for s in 0..10u16 {
            r.push(1, s, s as u32 * 160, &[3; 160]);
            out.extend(drain(&mut r, false));
        }
        assert!(
            out.len() >= 5 && out.iter().all(|s| s.starts_with('3')),
            "{out:?}"
        );
    }
}
