//! Conference mixing: every participant hears the sum of the others; supervisors can listen
//! (hear everyone, heard by nobody) or whisper (heard by one participant only). A two-leg
//! bridge is a conference of two.
//!
//! Received audio goes into a per-participant [`Playout`] ring at the place its RTP timestamp
//! says, and the pacing tick reads one frame from every ring, so packetisation (20 or 30 ms),
//! reordering and jitter up to the playout delay do not matter.

use crate::audio::FRAME;

/// How a participant takes part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParticipantMode {
    /// Hears everyone, heard by everyone.
    Normal,
    /// Hears everyone, heard by nobody (a muted party).
    Muted,
    /// Supervisor listening in: hears everyone, heard by nobody.
    Listen,
    /// Supervisor coaching: hears everyone, heard only by the participant with this stream id.
    Whisper { to: u64 },
}

impl ParticipantMode {
    pub fn is_heard(self) -> bool {
        matches!(self, ParticipantMode::Normal)
    }
}

const RING: usize = 8192; // ~1 s at 8 kHz, a power of two
const MASK: u32 = RING as u32 - 1;

/// A timestamp-indexed ring of received audio, read one frame per tick.
#[derive(Debug)]
pub(crate) struct Playout {
    buf: Box<[i16; RING]>,
    /// RTP timestamp of the next sample to read.
    read: u32,
    /// SSRC the ring is aligned to.
    ssrc: Option<u32>,
    delay: u32,
}

impl Playout {
    /// `delay_samples`: how far behind the first packet reading starts (absorbs jitter).
    pub(crate) fn new(delay_samples: u32) -> Playout {
        Playout {
            buf: Box::new([0; RING]),
            read: 0,
            ssrc: None,
            delay: delay_samples.min(RING as u32 / 2),
        }
    }

    pub(crate) fn write(&mut self, ssrc: u32, timestamp: u32, pcm: &[i16]) {
        let ahead = timestamp.wrapping_sub(self.read) as i32;
        let usable =
            self.ssrc == Some(ssrc) && ahead >= 0 && (ahead as usize) + pcm.len() <= RING - FRAME;
        if !usable {
            if self.ssrc == Some(ssrc) && ahead < 0 && ahead > -(RING as i32) {
                return; // too late for playout
            }
            // New source, or out of the window: realign.
            self.buf.fill(0);
            self.ssrc = Some(ssrc);
            self.read = timestamp.wrapping_sub(self.delay);
        }
        for (i, &s) in pcm.iter().enumerate().take(RING - FRAME) {
            self.buf[(timestamp.wrapping_add(i as u32) & MASK) as usize] = s;
        }
    }

    /// The next frame (silence where nothing arrived); the slots read are cleared.
    pub(crate) fn read(&mut self, out: &mut [i16; FRAME]) {
        if self.ssrc.is_none() {
            out.fill(0);
            return;
        }
        for (i, o) in out.iter_mut().enumerate() {
            let at = (self.read.wrapping_add(i as u32) & MASK) as usize;
            *o = self.buf[at];
            self.buf[at] = 0;
        }
        self.read = self.read.wrapping_add(FRAME as u32);
    }
}

/// One participant's slot in the mix.
#[derive(Debug, Clone)]
pub(crate) struct MixSlot {
    pub(crate) stream: u64,
    pub(crate) mode: ParticipantMode,
    pub(crate) input: [i16; FRAME],
    pub(crate) output: [i16; FRAME],
}

impl MixSlot {
    pub(crate) fn new(stream: u64, mode: ParticipantMode) -> MixSlot {
        MixSlot {
            stream,
            mode,
            input: [0; FRAME],
            output: [0; FRAME],
        }
    }
}

/// Mixes one frame for every slot (inputs already filled).
pub(crate) fn mix(slots: &mut [MixSlot]) {
    let mut sum = [0i32; FRAME];
    for s in slots.iter().filter(|s| s.mode.is_heard()) {
        for (acc, &x) in sum.iter_mut().zip(&s.input) {
            *acc += x as i32;
        }
    }
    for j in 0..slots.len() {
        let mut out = sum;
        if slots[j].mode.is_heard() {
            for (acc, &x) in out.iter_mut().zip(&slots[j].input) {
                *acc -= x as i32;
            }
        }
        let me = slots[j].stream;
        for other in slots.iter() {
            if other.mode == (ParticipantMode::Whisper { to: me }) {
                for (acc, &x) in out.iter_mut().zip(&other.input) {
                    *acc += x as i32;
                }
            }
        }
        for (o, &v) in slots[j].output.iter_mut().zip(&out) {
            *o = v.clamp(i16::MIN as i32, i16::MAX as i32) as i16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: u64, mode: ParticipantMode, v: i16) -> MixSlot {
        let mut s = MixSlot::new(id, mode);
        s.input = [v; FRAME];
        s
    }

    #[test]
    fn everyone_hears_the_others() {
        let mut s = vec![
            slot(1, ParticipantMode::Normal, 1),
            slot(2, ParticipantMode::Normal, 10),
            slot(3, ParticipantMode::Normal, 100),
        ];
        mix(&mut s);
        assert_eq!(s[0].output[0], 110);
        assert_eq!(s[1].output[0], 101);
        assert_eq!(s[2].output[0], 11);
    }

    #[test]
    fn listen_whisper_and_mute() {
        let mut s = vec![
            slot(1, ParticipantMode::Normal, 1),              // agent
            slot(2, ParticipantMode::Normal, 10),             // customer
            slot(3, ParticipantMode::Whisper { to: 1 }, 100), // supervisor coaching
            slot(4, ParticipantMode::Listen, 1000),           // silent monitor
            slot(5, ParticipantMode::Muted, 5000),
        ];
        mix(&mut s);
        assert_eq!(s[0].output[0], 110); // customer + whisper
        assert_eq!(s[1].output[0], 1); // agent only
        assert_eq!(s[2].output[0], 11);
        assert_eq!(s[3].output[0], 11);
        assert_eq!(s[4].output[0], 11);
    }

    #[test]
    fn mix_clamps() {
        let mut s = vec![
            slot(1, ParticipantMode::Normal, 30000),
            slot(2, ParticipantMode::Normal, 30000),
            slot(3, ParticipantMode::Normal, 0),
        ];
        mix(&mut s);
        assert_eq!(s[2].output[0], i16::MAX);
    }

    #[test]
    fn playout_handles_30ms_packets_reordering_and_gaps() {
        let mut p = Playout::new(320);
        // 30 ms packets from ts 1000: 1000, 1240, (1480 lost), 1720; 1240 arrives first.
        p.write(7, 1240, &[2; 240]);
        // 1240 aligned the ring (first packet); 1000 still fits before it.
        p.write(7, 1000, &[1; 240]);
        p.write(7, 100, &[5; 240]); // too late: dropped
        p.write(7, 1720, &[4; 240]);
        let mut f = [0; FRAME];
        let mut got = Vec::new();
        for _ in 0..6 {
            p.read(&mut f);
            got.extend_from_slice(&f);
        }
        // Reading starts 320 samples before 1240.
        assert!(got[..80].iter().all(|&x| x == 0));
        assert!(got[80..320].iter().all(|&x| x == 1));
        assert!(got[320..560].iter().all(|&x| x == 2));
        assert!(got[560..800].iter().all(|&x| x == 0));
        assert!(got[800..960].iter().all(|&x| x == 4));
        // New SSRC realigns.
        p.write(8, 5, &[9; 160]);
        let mut f = [0; FRAME];
        p.read(&mut f);
        p.read(&mut f);
        p.read(&mut f);
        assert_eq!(f[0], 9);
    }
}
