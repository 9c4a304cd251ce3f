//! Tone generators: ringback, busy, beep and DTMF, with cadences. 16-bit linear output at any
//! sample rate; no allocation.

use crate::dtmf::DBM0_PEAK;

/// Up to four on/off cadence steps.
pub const MAX_CADENCE: usize = 4;

/// A tone: one or two frequencies at a level, with an on/off cadence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToneSpec {
    /// Frequencies in Hz; 0 means unused.
    pub freqs: [f32; 2],
    /// Level of each frequency component, dBm0.
    pub levels_dbm0: [f32; 2],
    /// (on ms, off ms) steps.
    pub cadence: [(u32, u32); MAX_CADENCE],
    pub cadence_len: usize,
    /// Repeat the cadence forever, or play it once.
    pub repeat: bool,
}

impl ToneSpec {
    const fn new(f: [f32; 2], l: [f32; 2], on: u32, off: u32, repeat: bool) -> ToneSpec {
        ToneSpec {
            freqs: f,
            levels_dbm0: l,
            cadence: [(on, off), (0, 0), (0, 0), (0, 0)],
            cadence_len: 1,
            repeat,
        }
    }

    /// North American ringback: 440 + 480 Hz, 2 s on, 4 s off.
    pub const RINGBACK_US: ToneSpec =
        ToneSpec::new([440.0, 480.0], [-19.0, -19.0], 2000, 4000, true);
    /// ETSI ringback: 425 Hz, 1 s on, 4 s off.
    pub const RINGBACK_EU: ToneSpec = ToneSpec::new([425.0, 0.0], [-13.0, 0.0], 1000, 4000, true);
    /// UK ringback: 400 + 450 Hz, 0.4 on 0.2 off 0.4 on 2 s off.
    pub const RINGBACK_UK: ToneSpec = ToneSpec {
        freqs: [400.0, 450.0],
        levels_dbm0: [-19.0, -19.0],
        cadence: [(400, 200), (400, 2000), (0, 0), (0, 0)],
        cadence_len: 2,
        repeat: true,
    };
    /// North American busy: 480 + 620 Hz, 0.5 s on, 0.5 s off.
    pub const BUSY_US: ToneSpec = ToneSpec::new([480.0, 620.0], [-24.0, -24.0], 500, 500, true);
    /// ETSI busy: 425 Hz, 0.5 s on, 0.5 s off.
    pub const BUSY_EU: ToneSpec = ToneSpec::new([425.0, 0.0], [-13.0, 0.0], 500, 500, true);
    /// The recording beep: 1 kHz for 200 ms, once.
    pub const BEEP: ToneSpec = ToneSpec::new([1000.0, 0.0], [-10.0, 0.0], 200, 0, false);

    /// A DTMF digit (`0-9 * # A-D`): low group at -7 dBm0, high group at -5 dBm0, played once.
    pub fn dtmf(digit: char, on_ms: u32, off_ms: u32) -> Option<ToneSpec> {
        let (r, c) = match digit.to_ascii_uppercase() {
            '1' => (0, 0),
            '2' => (0, 1),
            '3' => (0, 2),
            'A' => (0, 3),
            '4' => (1, 0),
            '5' => (1, 1),
            '6' => (1, 2),
            'B' => (1, 3),
            '7' => (2, 0),
            '8' => (2, 1),
            '9' => (2, 2),
            'C' => (2, 3),
            '*' => (3, 0),
            '0' => (3, 1),
            '#' => (3, 2),
            'D' => (3, 3),
            _ => return None,
        };
        const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
        const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
        Some(ToneSpec::new(
            [ROWS[r], COLS[c]],
            [-7.0, -5.0],
            on_ms,
            off_ms,
            false,
        ))
    }
}

/// Plays a [`ToneSpec`].
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    spec: ToneSpec,
    sample_rate: u32,
    phase: [f64; 2],
    step: [f64; 2],
    amp: [f64; 2],
    step_index: usize,
    /// Sample position inside the current cadence step.
    pos: u64,
    done: bool,
}

impl ToneGenerator {
    pub fn new(spec: ToneSpec, sample_rate: u32) -> ToneGenerator {
        let sr = sample_rate.max(1) as f64;
        let tau = std::f64::consts::TAU;
        ToneGenerator {
            spec,
            sample_rate: sample_rate.max(1),
            phase: [0.0; 2],
            step: spec.freqs.map(|f| tau * f as f64 / sr),
            amp: [0, 1].map(|i| {
                if spec.freqs[i] > 0.0 {
                    DBM0_PEAK as f64 * 10f64.powf(spec.levels_dbm0[i] as f64 / 20.0)
                } else {
                    0.0
                }
            }),
            step_index: 0,
            pos: 0,
            done: spec.cadence_len == 0,
        }
    }

    /// True when a non-repeating tone has finished.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Fills `out`; returns how many samples were written (less than `out.len()` only when a
    /// non-repeating tone ends).
    pub fn fill(&mut self, out: &mut [i16]) -> usize {
        let ms = |m: u32| m as u64 * self.sample_rate as u64 / 1000;
        let len = self.spec.cadence_len.min(MAX_CADENCE);
        for (n, o) in out.iter_mut().enumerate() {
            if self.done {
                return n;
            }
            let (on, off) = self.spec.cadence[self.step_index];
            let (on, off) = (ms(on), ms(off));
            *o = if self.pos < on {
                let mut v = 0.0;
                for i in 0..2 {
                    v += self.amp[i] * self.phase[i].sin();
                    self.phase[i] = (self.phase[i] + self.step[i]) % std::f64::consts::TAU;
                }
                v.clamp(-32768.0, 32767.0) as i16
            } else {
                0
            };
            self.pos += 1;
            if self.pos >= on + off {
                self.pos = 0;
                self.phase = [0.0; 2];
                self.step_index += 1;
                if self.step_index >= len {
                    self.step_index = 0;
                    if !self.spec.repeat {
                        self.done = true;
                    }
                }
            }
        }
        out.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::DtmfDetector;

    fn rms(s: &[i16]) -> f64 {
        (s.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / s.len() as f64).sqrt()
    }

    #[test]
    fn ringback_cadence_and_level() {
        let mut g = ToneGenerator::new(ToneSpec::RINGBACK_US, 8000);
        let mut buf = vec![0i16; 8000 * 6];
        assert_eq!(g.fill(&mut buf), buf.len());
        // 2 s on, 4 s off
        assert!(rms(&buf[..16000]) > 1000.0);
        assert!(buf[16000..].iter().all(|&s| s == 0));
        // two components at -19 dBm0 each: total power -16 dBm0
        let expect = DBM0_PEAK as f64 * 10f64.powf(-16.0 / 20.0) / 2f64.sqrt();
        let got = rms(&buf[..16000]);
        assert!((got / expect - 1.0).abs() < 0.05, "{got} vs {expect}");
        // and it repeats
        let mut more = vec![0i16; 800];
        g.fill(&mut more);
        assert!(rms(&more) > 1000.0);
        assert!(!g.is_done());
    }

    #[test]
    fn uk_double_ring_and_busy() {
        let mut g = ToneGenerator::new(ToneSpec::RINGBACK_UK, 8000);
        let mut buf = vec![0i16; 8000 * 3];
        g.fill(&mut buf);
        assert!(rms(&buf[..3200]) > 500.0);
        assert!(buf[3200..4800].iter().all(|&s| s == 0));
        assert!(rms(&buf[4800..8000]) > 500.0);
        assert!(buf[8000..24000].iter().all(|&s| s == 0));
        let mut g = ToneGenerator::new(ToneSpec::BUSY_EU, 8000);
        let mut buf = vec![0i16; 8000];
        g.fill(&mut buf);
        assert!(rms(&buf[..4000]) > 1000.0 && rms(&buf[4000..]) == 0.0);
    }

    #[test]
    fn beep_plays_once_at_16khz() {
        let mut g = ToneGenerator::new(ToneSpec::BEEP, 16000);
        let mut buf = vec![0i16; 4000];
        assert_eq!(g.fill(&mut buf), 3200);
        assert!(g.is_done());
        assert_eq!(g.fill(&mut buf), 0);
    }

    #[test]
    fn generated_dtmf_is_detected() {
        let mut det = DtmfDetector::default();
        let mut digits = String::new();
        for d in "0123456789*#ABCD".chars() {
            let mut g = ToneGenerator::new(ToneSpec::dtmf(d, 60, 60).unwrap(), 8000);
            let mut frame = [0i16; 160];
            while !g.is_done() {
                let n = g.fill(&mut frame);
                if let Some(x) = det.process_frame(&frame[..n]) {
                    digits.push(x);
                }
            }
        }
        assert_eq!(digits, "0123456789*#ABCD");
        assert!(ToneSpec::dtmf('x', 1, 1).is_none());
    }
}
