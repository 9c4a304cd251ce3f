//! A jitter buffer for audio that is recorded or recognised: reorders by sequence number, holds
//! a playout delay, and reports each missing packet so the caller can conceal it.
//!
//! Storage is allocated once (`capacity` slots of `max_payload` bytes); pushing and popping
//! copy into it and out to the caller's buffer, with no allocation per packet.

/// Jitter buffer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Packets held at most (the reorder window).
    pub capacity: usize,
    /// Largest payload stored; longer payloads are refused.
    pub max_payload: usize,
    /// Media time (timestamp units) to collect before playout starts, and again after an
    /// underrun.
    pub playout_delay: u32,
}

impl Default for JitterConfig {
    /// 64 packets of up to 1500 bytes, 60 ms at 8 kHz.
    fn default() -> Self {
        JitterConfig {
            capacity: 64,
            max_payload: 1500,
            playout_delay: 480,
        }
    }
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Stored,
    /// Already held.
    Duplicate,
    /// Its turn has passed.
    Late,
    /// Larger than `max_payload`.
    TooLarge,
}

/// One step of playout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout {
    /// The next packet, copied into the output buffer.
    Packet {
        seq: u16,
        timestamp: u32,
        marker: bool,
        len: usize,
    },
    /// The next packet is missing while later ones are here: conceal one packet's worth of
    /// audio (see [`Concealer`]) and call again next tick.
    Lost { seq: u16 },
    /// Still collecting the playout delay (at the start, or after an underrun).
    Buffering,
}

#[derive(Debug, Clone)]
struct Slot {
    ext_seq: Option<u64>,
    timestamp: u32,
    marker: bool,
    len: usize,
    data: Box<[u8]>,
}

/// The jitter buffer.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    slots: Vec<Slot>,
    /// Extended sequence number of the next packet to play.
    next: Option<u64>,
    /// Highest extended sequence number seen.
    highest: Option<u64>,
    playing: bool,
    /// Playout has started at least once.
    started: bool,
    held: usize,
    lost: u64,
    late: u64,
}

impl JitterBuffer {
    pub fn new(cfg: JitterConfig) -> JitterBuffer {
        let cfg = JitterConfig {
            capacity: cfg.capacity.max(2),
            ..cfg
        };
        JitterBuffer {
            slots: (0..cfg.capacity)
                .map(|_| Slot {
                    ext_seq: None,
                    timestamp: 0,
                    marker: false,
                    len: 0,
                    data: vec![0u8; cfg.max_payload].into_boxed_slice(),
                })
                .collect(),
            cfg,
            next: None,
            highest: None,
            playing: false,
            started: false,
            held: 0,
            lost: 0,
            late: 0,
        }
    }

    /// Packets currently held.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Packets played out as lost, and packets refused as late, so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.lost, self.late)
    }

    fn extend(&self, seq: u16) -> u64 {
        match self.highest {
            None => (1u64 << 16) + seq as u64,
            Some(h) => {
                let delta = seq.wrapping_sub(h as u16) as i16 as i64;
                (h as i64 + delta).max(0) as u64
            }
        }
    }

    fn slot(&self, ext: u64) -> usize {
        (ext % self.cfg.capacity as u64) as usize
    }

    /// Stores a packet.
    pub fn push(&mut self, seq: u16, timestamp: u32, marker: bool, payload: &[u8]) -> PushOutcome {
        if payload.len() > self.cfg.max_payload {
            return PushOutcome::TooLarge;
        }
        let ext = self.extend(seq);
        if let Some(next) = self.next {
            // before playout has ever started, an earlier packet simply becomes the first
            if ext < next && (self.started || next - ext >= self.cfg.capacity as u64) {
                self.late += 1;
                return PushOutcome::Late;
            }
        }
        // too far ahead: drop (play out as lost) what falls out of the window
        let cap = self.cfg.capacity as u64;
        if let Some(next) = self.next {
            if ext >= next + cap {
                let new_next = ext + 1 - cap;
                for e in next..new_next.min(next + cap) {
                    let i = self.slot(e);
                    if self.slots[i].ext_seq == Some(e) {
                        self.slots[i].ext_seq = None;
                        self.held -= 1;
                    }
                }
                self.lost += new_next - next;
                self.next = Some(new_next);
            }
        }
        let i = self.slot(ext);
        let slot = &mut self.slots[i];
        if slot.ext_seq == Some(ext) {
            return PushOutcome::Duplicate;
        }
        if slot.ext_seq.is_none() {
            self.held += 1;
        }
        slot.ext_seq = Some(ext);
        slot.timestamp = timestamp;
        slot.marker = marker;
        slot.len = payload.len();
        slot.data[..payload.len()].copy_from_slice(payload);
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        match self.next {
            Some(n) if n <= ext => {}
            _ => self.next = Some(ext),
        }
        PushOutcome::Stored
    }

    /// Media time buffered from the next packet to the newest.
    fn buffered_span(&self) -> u32 {
        let (Some(next), Some(high)) = (self.next, self.highest) else {
            return 0;
        };
        let first = (next..=high).find_map(|e| {
            let s = &self.slots[self.slot(e)];
            (s.ext_seq == Some(e)).then_some(s.timestamp)
        });
        let last = &self.slots[self.slot(high)];
        match (first, last.ext_seq == Some(high)) {
            (Some(f), true) => last.timestamp.wrapping_sub(f),
            _ => 0,
        }
    }

    /// Takes the next packet for playout (call once per packet time).
    pub fn pop(&mut self, out: &mut [u8]) -> Playout {
        let Some(next) = self.next else {
            return Playout::Buffering;
        };
        if !self.playing {
            if self.held == 0 || self.buffered_span() < self.cfg.playout_delay {
                return Playout::Buffering;
            }
            self.playing = true;
            self.started = true;
        }
        if self.held == 0 {
            // underrun: collect the delay again
            self.playing = false;
            return Playout::Buffering;
        }
        let i = self.slot(next);
        if self.slots[i].ext_seq != Some(next) {
            self.next = Some(next + 1);
            self.lost += 1;
            return Playout::Lost { seq: next as u16 };
        }
        self.take(next, out)
    }

    /// Copies out the held packet `next` (which must be there) and moves on.
    fn take(&mut self, next: u64, out: &mut [u8]) -> Playout {
        let i = self.slot(next);
        self.next = Some(next + 1);
        let slot = &mut self.slots[i];
        slot.ext_seq = None;
        self.held -= 1;
        let len = slot.len.min(out.len());
        out[..len].copy_from_slice(&slot.data[..len]);
        Playout::Packet {
            seq: next as u16,
            timestamp: slot.timestamp,
            marker: slot.marker,
            len,
        }
    }
}

impl JitterBuffer {
    /// Takes the next packet as soon as it is in order, for consumers that need audio in
    /// timestamp order but not at a steady pace (DTMF detection, recognition): packets that
    /// arrive in order come out at once, however fast they arrive. A missing packet is waited
    /// for until the packets after it span `reorder_span` timestamp units (or the buffer is
    /// full), then reported [`Playout::Lost`]. Before the first packet comes out, the same span
    /// is collected, so that a stream whose first packets are swapped starts with the earliest.
    /// Call until it returns [`Playout::Buffering`].
    pub fn pop_in_order(&mut self, out: &mut [u8], reorder_span: u32) -> Playout {
        let Some(next) = self.next else {
            return Playout::Buffering;
        };
        if self.held == 0 || (!self.started && self.buffered_span() < reorder_span) {
            return Playout::Buffering;
        }
        self.started = true;
        let i = self.slot(next);
        if self.slots[i].ext_seq != Some(next) {
            let full = self.held + 1 >= self.cfg.capacity;
            if !full && self.buffered_span() < reorder_span {
                return Playout::Buffering;
            }
            self.next = Some(next + 1);
            self.lost += 1;
            return Playout::Lost { seq: next as u16 };
        }
        self.take(next, out)
    }
}

impl JitterBuffer {
    /// For [`pop_in_order`](Self::pop_in_order) consumers: when `seq` is the very packet that
    /// would come out next and nothing is held, accounts for it as pushed and popped at once
    /// (the caller uses its payload directly, nothing is copied) and returns true; otherwise
    /// changes nothing and returns false (push it).
    pub fn pass_in_order(&mut self, seq: u16) -> bool {
        if self.held != 0 || !self.started {
            return false;
        }
        let Some(next) = self.next else {
            return false;
        };
        let ext = self.extend(seq);
        if ext != next {
            return false;
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.next = Some(next + 1);
        true
    }
}

/// The loss-concealment hook: produce audio for a lost packet.
pub trait Concealer {
    /// Fills `out` (one packet's worth of decoded audio) in place of a lost packet.
    fn conceal(&mut self, out: &mut [i16]);
    /// Sees each good decoded frame (to learn from).
    fn observe(&mut self, frame: &[i16]);
}

/// Simple concealment: repeat the last good frame, 6 dB quieter each time, silence after 4.
#[derive(Debug, Clone)]
pub struct RepeatLast {
    last: Vec<i16>,
    repeats: u32,
}

impl RepeatLast {
    /// `frame_len` samples per packet (allocated once).
    pub fn new(frame_len: usize) -> RepeatLast {
        RepeatLast {
            last: vec![0; frame_len],
            repeats: 0,
        }
    }
}

impl Concealer for RepeatLast {
    fn conceal(&mut self, out: &mut [i16]) {
        self.repeats += 1;
        let shift = self.repeats.min(15);
        for (i, o) in out.iter_mut().enumerate() {
            *o = if self.repeats > 4 {
                0
            } else {
                self.last.get(i).copied().unwrap_or(0) >> shift
            };
        }
    }

    fn observe(&mut self, frame: &[i16]) {
        let n = frame.len().min(self.last.len());
        self.last[..n].copy_from_slice(&frame[..n]);
        self.repeats = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jb() -> JitterBuffer {
        JitterBuffer::new(JitterConfig {
            capacity: 16,
            max_payload: 160,
            playout_delay: 320,
        })
    }

    fn drain(j: &mut JitterBuffer) -> Vec<String> {
        let mut out = [0u8; 160];
        let mut v = Vec::new();
        for _ in 0..20 {
            match j.pop(&mut out) {
                Playout::Packet { seq, len, .. } => {
                    assert_eq!(out[0], seq as u8);
                    v.push(format!("{seq}:{len}"));
                }
                Playout::Lost { seq } => v.push(format!("{seq}:lost")),
                Playout::Buffering => break,
            }
        }
        v
    }

    #[test]
    fn reorders_and_reports_losses() {
        let mut j = jb();
        // 65534, 65535, 0, 1, 2, 3 sent; 1 lost; arrival order scrambled
        for seq in [65535u16, 65534, 2, 0, 3] {
            let ts = seq.wrapping_sub(65534) as u32 * 160;
            assert_eq!(
                j.push(seq, ts, false, &[seq as u8; 160]),
                PushOutcome::Stored
            );
        }
        assert_eq!(j.push(0, 320, false, &[0; 160]), PushOutcome::Duplicate);
        assert_eq!(
            drain(&mut j),
            vec![
                "65534:160",
                "65535:160",
                "0:160",
                "1:lost",
                "2:160",
                "3:160"
            ]
        );
        // after the underrun it buffers again; a packet for a played slot is late
        assert_eq!(j.push(1, 480, false, &[1; 160]), PushOutcome::Late);
        assert_eq!(j.counters(), (1, 1));
    }

    #[test]
    fn holds_the_playout_delay() {
        let mut j = jb();
        let mut out = [0u8; 160];
        j.push(10, 0, true, &[10; 160]);
        assert_eq!(j.pop(&mut out), Playout::Buffering);
        j.push(11, 160, false, &[11; 160]);
        assert_eq!(j.pop(&mut out), Playout::Buffering);
        j.push(12, 320, false, &[12; 160]);
        assert!(matches!(
            j.pop(&mut out),
            Playout::Packet {
                seq: 10,
                marker: true,
                ..
            }
        ));
        // an earlier packet arriving before playout started would have been taken first
        let mut j = jb();
        j.push(20, 160, false, &[20; 160]);
        j.push(19, 0, false, &[19; 160]);
        j.push(21, 320, false, &[21; 160]);
        assert_eq!(drain(&mut j), vec!["19:160", "20:160", "21:160"]);
    }

    #[test]
    fn in_order_pops_at_once_and_waits_for_a_gap() {
        let mut j = jb();
        let mut out = [0u8; 160];
        let mut pop = |j: &mut JitterBuffer| match j.pop_in_order(&mut out, 320) {
            Playout::Packet { seq, .. } => format!("{seq}"),
            Playout::Lost { seq } => format!("{seq}:lost"),
            Playout::Buffering => "-".into(),
        };
        // the first packets arrive swapped: the earliest still comes first
        j.push(11, 160, false, &[11; 160]);
        assert_eq!(pop(&mut j), "-");
        j.push(10, 0, false, &[10; 160]);
        j.push(12, 320, false, &[12; 160]);
        assert_eq!(pop(&mut j), "10");
        assert_eq!(pop(&mut j), "11");
        assert_eq!(pop(&mut j), "12");
        assert_eq!(pop(&mut j), "-");
        // a burst in order comes out at once
        for s in 13..20u16 {
            j.push(s, (s as u32 - 10) * 160, false, &[s as u8; 160]);
        }
        for s in 13..20 {
            assert_eq!(pop(&mut j), s.to_string());
        }
        // 20 comes late: waited for while what follows spans less than 320 ...
        j.push(21, 11 * 160, false, &[21; 160]);
        assert_eq!(pop(&mut j), "-");
        j.push(20, 10 * 160, false, &[20; 160]);
        assert_eq!(pop(&mut j), "20");
        assert_eq!(pop(&mut j), "21");
        // ... 22 never comes: given up once 23..=25 span 320
        for s in 23..26u16 {
            j.push(s, (s as u32 - 10) * 160, false, &[s as u8; 160]);
            let expect = if s < 25 { "-" } else { "22:lost" };
            assert_eq!(pop(&mut j), expect);
        }
        assert_eq!(j.push(22, 12 * 160, false, &[22; 160]), PushOutcome::Late);
        assert_eq!(pop(&mut j), "23");
    }

    #[test]
    fn the_next_packet_passes_straight_through_when_nothing_is_held() {
        let mut j = jb();
        let mut out = [0u8; 160];
        // not before the first packet has come out
        assert!(!j.pass_in_order(10));
        j.push(10, 0, false, &[10; 160]);
        j.push(11, 160, false, &[11; 160]);
        j.push(12, 320, false, &[12; 160]);
        for _ in 0..3 {
            assert!(matches!(
                j.pop_in_order(&mut out, 320),
                Playout::Packet { .. }
            ));
        }
        assert!(j.pass_in_order(13));
        assert!(j.pass_in_order(14));
        // a gap: 16 is not next, so it is pushed; once held, nothing passes
        assert!(!j.pass_in_order(16));
        j.push(16, 6 * 160, false, &[16; 160]);
        assert!(!j.pass_in_order(15));
        j.push(15, 5 * 160, false, &[15; 160]);
        for expect in [15u16, 16] {
            match j.pop_in_order(&mut out, 320) {
                Playout::Packet { seq, .. } => assert_eq!(seq, expect),
                other => panic!("{other:?}"),
            }
        }
        assert!(j.pass_in_order(17));
        // an old packet is late as before
        assert_eq!(j.push(14, 4 * 160, false, &[14; 160]), PushOutcome::Late);
        assert_eq!(j.counters(), (0, 1));
    }

    #[test]
    fn far_jump_skips_ahead() {
        let mut j = jb();
        for s in 0..3u16 {
            j.push(s, s as u32 * 160, false, &[s as u8; 10]);
        }
        // 40 packets later (beyond the 16-slot window)
        assert_eq!(j.push(40, 6400, false, &[40; 10]), PushOutcome::Stored);
        assert!(j.len() <= 16);
        assert_eq!(j.push(0, 0, false, &[0; 161]), PushOutcome::TooLarge);
    }

    #[test]
    fn repeat_last_fades_out() {
        let mut c = RepeatLast::new(4);
        c.observe(&[1000, -1000, 1000, -1000]);
        let mut out = [0i16; 4];
        c.conceal(&mut out);
        assert_eq!(out, [500, -500, 500, -500]);
        c.conceal(&mut out);
        assert_eq!(out[0], 250);
        for _ in 0..3 {
            c.conceal(&mut out);
        }
        assert_eq!(out, [0; 4]);
    }
}
