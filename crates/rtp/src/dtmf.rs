//! In-band DTMF detection (Goertzel), for calls whose DTMF arrives as audio rather than RFC 4733.
//!
//! 8 kHz linear audio is analysed in 102-sample windows (12.75 ms, a resolution fine enough to
//! separate the DTMF frequencies, which are 73 Hz apart at the closest) every 51 samples
//! (50 % overlap). A window is two 51-sample blocks, each shared with the window before or
//! after it: the filters run once over each block (a complex Goertzel result per frequency),
//! and a window's spectrum is its first block's plus its second's, phase-shifted by a block.
//! A window is a *hit* for a digit when
//!
//! * the strongest row and strongest column tone each exceed the minimum level (-36 dBm0),
//! * the twist is within limits: a high-group tone up to 8 dB above the low-group tone
//!   (forward twist) and up to 4 dB below it (reverse twist) is accepted; the thresholds sit
//!   1 dB further out (9 and 5 dB) because a 12.75 ms window measures each tone with about
//!   ±0.6 dB of interference from the other; 11 dB forward or 7 dB reverse is rejected,
//! * each peak stands at least 6 dB above the other tones of its group,
//! * the two tones carry at least half of the window's energy (rejects speech, music and noise,
//!   and windows less than about half covered by the tone),
//! * neither tone has a strong second harmonic (voiced speech does; DTMF generators do not).
//!
//! ITU-T Q.24 timing: a digit is reported after 5 hit windows in a row (a single stray miss
//! between hits is bridged but not counted). A tone of 40 ms or
//! more always yields at least 6 hits whatever its alignment; one of 23 ms or less at most 4. The
//! digit is reported once per tone; after 3 consecutive non-hit windows (about 20 ms of pause)
//! the same digit can be reported again, so a brief drop-out (≤ 10 ms) inside a tone does not
//! produce a second digit.

/// Sample rate the detector works at.
pub const SAMPLE_RATE: u32 = 8000;
/// Analysis window in samples.
pub const WINDOW: usize = 102;
/// Hop between windows.
pub const HOP: usize = 51;

const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Peak amplitude of a 0 dBm0 sine on the 16-bit scale (G.711: overload is +3.17 dBm0).
pub const DBM0_PEAK: f32 = 22_300.0;

/// Detector thresholds; the defaults implement the limits described in the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DtmfConfig {
    /// Minimum level of each tone, dBm0.
    pub min_level_dbm0: f32,
    /// Maximum high-group-over-low-group level difference, dB.
    pub max_forward_twist_db: f32,
    /// Maximum low-group-over-high-group level difference, dB.
    pub max_reverse_twist_db: f32,
    /// Minimum margin of each peak over the other tones of its group, dB.
    pub min_peak_margin_db: f32,
    /// Minimum share of window energy in the two tones (0..1).
    pub min_energy_ratio: f32,
    /// Maximum second-harmonic level relative to its fundamental, dB.
    pub max_harmonic_db: f32,
    /// Consecutive hit windows needed to report a digit.
    pub hits_to_report: u32,
    /// Consecutive non-hit windows that end a digit.
    pub misses_to_end: u32,
}

impl Default for DtmfConfig {
    fn default() -> Self {
        DtmfConfig {
            min_level_dbm0: -36.0,
            max_forward_twist_db: 9.0,
            max_reverse_twist_db: 5.0,
            min_peak_margin_db: 6.0,
            min_energy_ratio: 0.5,
            max_harmonic_db: -12.0,
            hits_to_report: 5,
            misses_to_end: 3,
        }
    }
}

fn db(x: f32) -> f32 {
    10f32.powf(x / 10.0)
}

/// The eight DTMF frequencies, rows then columns.
const BANK: [f32; 8] = [
    ROWS[0], ROWS[1], ROWS[2], ROWS[3], COLS[0], COLS[1], COLS[2], COLS[3],
];

/// A block's spectrum at the eight DTMF frequencies (complex, as (re, im)).
type Spectrum = [(f32, f32); 8];

/// `e^-jwn` at the eight DTMF frequencies (re, im interleaved) for each sample of a block.
static BLOCK_DFT: std::sync::LazyLock<[[f32; 16]; HOP]> = std::sync::LazyLock::new(|| {
    std::array::from_fn(|n| {
        std::array::from_fn(|i| {
            let (re, im) = phase(BANK[i / 2], n);
            if i % 2 == 0 {
                re
            } else {
                im
            }
        })
    })
});

/// `e^(-j w n)` for frequency `f`.
fn phase(f: f32, n: usize) -> (f32, f32) {
    let w = 2.0 * std::f64::consts::PI * f64::from(f) / f64::from(SAMPLE_RATE);
    let a = -w * n as f64;
    (a.cos() as f32, a.sin() as f32)
}

/// Goertzel filter coefficient for frequency `f`.
fn coeff(f: f32) -> f32 {
    2.0 * (2.0 * std::f32::consts::PI * f / SAMPLE_RATE as f32).cos()
}

/// Power leaking into a Goertzel filter from a sinusoid `delta` Hz away (Dirichlet kernel).
fn leakage(delta: f32) -> f32 {
    let x = std::f32::consts::PI * delta / SAMPLE_RATE as f32;
    if x.abs() < 1e-6 {
        return 1.0;
    }
    let d = (WINDOW as f32 * x).sin() / (WINDOW as f32 * x.sin());
    d * d
}

/// Why a window is not a DTMF hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    Quiet,
    Twist,
    PeakMargin,
    EnergyRatio,
    Harmonic,
}

/// A detected digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfDetection {
    pub digit: char,
    /// Stream position (samples since the detector started) of the window that confirmed it.
    pub position: u64,
}

#[derive(Debug, Clone, Copy)]
struct Ratios {
    forward_twist: f32,
    reverse_twist: f32,
    peak_margin: f32,
    harmonic: f32,
}

/// The Goertzel DTMF detector. One per audio stream; feed it every sample, in any chunk size.
#[derive(Debug, Clone)]
pub struct DtmfDetector {
    cfg: DtmfConfig,
    row_h_coeff: [f32; 4],
    col_h_coeff: [f32; 4],
    /// Leakage of column c into the second-harmonic filter of row r.
    row_h_leak: [[f32; 4]; 4],
    min_power: f32,
    /// The configuration's dB limits as power ratios (twist forward and reverse, peak margin,
    /// harmonic), worked out once.
    ratios: Ratios,
    /// The window's two blocks: `blocks[newest]` is being filled, the other holds the block
    /// before it. A full block becomes the older one by flipping `newest`: no sample is
    /// copied twice.
    blocks: [[f32; HOP]; 2],
    newest: usize,
    /// Samples in `blocks[newest]`, and their sum of squares (taken as they are stored).
    filled: usize,
    filled_power: f32,
    total: u64,
    /// Power (sum of squares) and, once computed, the eight filter outputs of the older
    /// block (the second block of the previous window is the first of the next).
    prev_block: (f32, Option<Spectrum>),
    /// Per filter: the phase factor `e^-jw HOP` that shifts a block's spectrum by a block.
    bank_c2: [(f32, f32); 8],
    /// Row, column and their powers in the previous window.
    last_pair: Option<(usize, usize, f32, f32)>,
    candidate: Option<char>,
    hits: u32,
    misses: u32,
    reported: Option<char>,
}

impl Default for DtmfDetector {
    fn default() -> Self {
        Self::new(DtmfConfig::default())
    }
}

impl DtmfDetector {
    pub fn new(cfg: DtmfConfig) -> DtmfDetector {
        let mut row_h_leak = [[0.0; 4]; 4];
        for (r, row) in row_h_leak.iter_mut().enumerate() {
            for (c, l) in row.iter_mut().enumerate() {
                *l = leakage(2.0 * ROWS[r] - COLS[c]);
            }
        }
        let amp = DBM0_PEAK * 10f32.powf(cfg.min_level_dbm0 / 20.0);
        DtmfDetector {
            cfg,
            row_h_coeff: ROWS.map(|f| coeff(2.0 * f)),
            col_h_coeff: COLS.map(|f| coeff(2.0 * f)),
            row_h_leak,
            min_power: amp * amp / 2.0,
            ratios: Ratios {
                forward_twist: db(cfg.max_forward_twist_db),
                reverse_twist: db(cfg.max_reverse_twist_db),
                peak_margin: db(cfg.min_peak_margin_db),
                harmonic: db(cfg.max_harmonic_db),
            },
            blocks: [[0.0; HOP]; 2],
            newest: 0,
            filled: 0,
            filled_power: 0.0,
            prev_block: (0.0, None),
            bank_c2: BANK.map(|f| phase(f, HOP)),
            total: 0,
            last_pair: None,
            candidate: None,
            hits: 0,
            misses: 0,
            reported: None,
        }
    }

    /// Forgets all state (e.g. when the stream restarts).
    pub fn reset(&mut self) {
        *self = DtmfDetector::new(self.cfg);
    }

    /// Feeds 8 kHz samples; `on_digit` is called once per detected digit.
    pub fn process(&mut self, mut samples: &[i16], mut on_digit: impl FnMut(DtmfDetection)) {
        while !samples.is_empty() {
            let (chunk, rest) = samples.split_at((HOP - self.filled).min(samples.len()));
            samples = rest;
            self.store(chunk);
            if self.filled < HOP {
                break;
            }
            // A block is complete: with the one before it, a window (every hop once the
            // first window is full).
            let block_power = std::mem::take(&mut self.filled_power);
            self.filled = 0;
            if self.total < WINDOW as u64 {
                // The first block: the older half of the first window.
                self.prev_block = (block_power, None);
                self.newest ^= 1;
                continue;
            }
            let hit = self.analyse(block_power).ok();
            self.newest ^= 1;
            if let Some(d) = self.update(hit) {
                on_digit(DtmfDetection {
                    digit: d,
                    position: self.total,
                });
            }
        }
    }

    /// Appends samples to the block being filled, adding up their squares on the way.
    fn store(&mut self, samples: &[i16]) {
        let at = self.filled;
        let block = &mut self.blocks[self.newest][at..at + samples.len()];
        // Eight partial sums: a single running sum is a chain the compiler cannot vectorise.
        let mut sums = [0f32; 8];
        let mut out = block.chunks_exact_mut(8);
        let mut inp = samples.chunks_exact(8);
        for (b, x) in (&mut out).zip(&mut inp) {
            for k in 0..8 {
                let v = f32::from(x[k]);
                b[k] = v;
                sums[k] += v * v;
            }
        }
        for (b, &x) in out.into_remainder().iter_mut().zip(inp.remainder()) {
            let v = f32::from(x);
            *b = v;
            sums[0] += v * v;
        }
        self.filled_power += sums.iter().sum::<f32>();
        self.filled += samples.len();
        self.total += samples.len() as u64;
    }

    /// Convenience: feeds a frame and returns the first digit detected in it (a 20 ms frame
    /// cannot hold two).
    pub fn process_frame(&mut self, samples: &[i16]) -> Option<char> {
        let mut out = None;
        self.process(samples, |d| {
            out.get_or_insert(d.digit);
        });
        out
    }

    /// The analysis window, oldest sample first (valid when the newest block is full).
    fn window(&self) -> impl Iterator<Item = &f32> {
        self.blocks[self.newest ^ 1]
            .iter()
            .chain(self.blocks[self.newest].iter())
    }

    /// The spectrum of one block (HOP samples) at the eight DTMF frequencies, as the plain
    /// sums `X = sum x[n] e^-jwn`. Sixteen independent multiply-adds per sample: unlike eight
    /// Goertzel recurrences, whose every step waits for the one before, they fill the vector
    /// units (the block's two halves of a window make the same numbers either way).
    fn block_spectrum(&self, block: &[f32; HOP]) -> Spectrum {
        let table = &*BLOCK_DFT;
        let mut acc = [0f32; 16];
        for (&x, row) in block.iter().zip(table.iter()) {
            for k in 0..16 {
                acc[k] += x * row[k];
            }
        }
        std::array::from_fn(|k| (acc[2 * k], acc[2 * k + 1]))
    }

    /// The mean tone power at the eight DTMF frequencies over a window of two blocks.
    fn bank(&self, first: &Spectrum, second: &Spectrum) -> [f32; 8] {
        let scale = 2.0 / (WINDOW * WINDOW) as f32;
        let mut out = [0f32; 8];
        for k in 0..8 {
            let ((ar, ai), (br, bi), (cr, ci)) = (first[k], second[k], self.bank_c2[k]);
            let re = ar + cr * br - ci * bi;
            let im = ai + cr * bi + ci * br;
            out[k] = (re * re + im * im) * scale;
        }
        out
    }

    fn goertzel(&self, c: f32) -> f32 {
        let (mut s1, mut s2) = (0f32, 0f32);
        for &x in self.window() {
            let s0 = x + c * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        // |X|^2, then as mean tone power (A^2 / 2 for amplitude A)
        let mag2 = s1 * s1 + s2 * s2 - c * s1 * s2;
        2.0 * mag2 / (WINDOW * WINDOW) as f32
    }

    /// Judges the window that ends with the block just filled (`new_power` its sum of
    /// squares).
    fn analyse(&mut self, new_power: f32) -> Result<char, Reject> {
        let cfg = &self.cfg;
        // Silence and quiet speech, most windows of a call, cost nothing more than the squares
        // taken while storing.
        let (first, second) = (&self.blocks[self.newest ^ 1], &self.blocks[self.newest]);
        let (old_power, old_spectrum) = std::mem::take(&mut self.prev_block);
        let energy = (old_power + new_power) / WINDOW as f32;
        if energy < self.min_power {
            self.prev_block = (new_power, None);
            self.last_pair = None;
            return Err(Reject::Quiet);
        }
        let old_spectrum = old_spectrum.unwrap_or_else(|| self.block_spectrum(first));
        let new_spectrum = self.block_spectrum(second);
        self.prev_block = (new_power, Some(new_spectrum));
        let bank = self.bank(&old_spectrum, &new_spectrum);
        let rows = [bank[0], bank[1], bank[2], bank[3]];
        let cols = [bank[4], bank[5], bank[6], bank[7]];
        let argmax = |v: &[f32; 4]| (0..4).fold(0, |best, i| if v[i] > v[best] { i } else { best });
        let (r, c) = (argmax(&rows), argmax(&cols));
        let (pr, pc) = (rows[r], cols[c]);
        if pr < self.min_power || pc < self.min_power {
            self.last_pair = None;
            return Err(Reject::Quiet);
        }
        // Twist is judged on this window plus the previous one when both saw the same pair: the
        // other tone's leakage moves a single window's estimate by up to ±1 dB.
        let (tr, tc) = match self.last_pair.replace((r, c, pr, pc)) {
            Some((lr, lc, lpr, lpc)) if (lr, lc) == (r, c) => (pr + lpr, pc + lpc),
            _ => (pr, pc),
        };
        let ratios = self.ratios;
        if tc > tr * ratios.forward_twist || tr > tc * ratios.reverse_twist {
            return Err(Reject::Twist);
        }
        let margin = ratios.peak_margin;
        if (0..4).any(|i| (i != r && rows[i] * margin > pr) || (i != c && cols[i] * margin > pc)) {
            return Err(Reject::PeakMargin);
        }
        if pr + pc < cfg.min_energy_ratio * energy {
            return Err(Reject::EnergyRatio);
        }
        let h = ratios.harmonic;
        let row_h = self.goertzel(self.row_h_coeff[r]);
        // the column tone leaks into the row's harmonic filter (2 x 697 Hz is 58 Hz from 1336 Hz)
        if row_h > pr * h + 2.0 * pc * self.row_h_leak[r][c] {
            return Err(Reject::Harmonic);
        }
        let col_h = self.goertzel(self.col_h_coeff[c]);
        if col_h > pc * h {
            return Err(Reject::Harmonic);
        }
        Ok(KEYS[r][c])
    }

    fn update(&mut self, hit: Option<char>) -> Option<char> {
        match hit {
            Some(d) => {
                self.misses = 0;
                if self.candidate == Some(d) {
                    self.hits += 1;
                } else {
                    self.candidate = Some(d);
                    self.hits = 1;
                }
                if self.hits >= self.cfg.hits_to_report && self.reported != Some(d) {
                    self.reported = Some(d);
                    return Some(d);
                }
            }
            None => {
                self.misses += 1;
                // one stray miss inside a tone is bridged (it does not count as a hit)
                if self.misses >= 2 {
                    self.candidate = None;
                    self.hits = 0;
                }
                if self.misses >= self.cfg.misses_to_end {
                    self.reported = None;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::g711;

    /// Deterministic noise.
    struct Rng(u64);
    impl Rng {
        fn gauss(&mut self) -> f32 {
            // sum of uniforms, variance 1
            let mut s = 0.0;
            for _ in 0..12 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                s += (self.0 >> 40) as f32 / (1u64 << 24) as f32;
            }
            s - 6.0
        }
    }

    fn amp(dbm0: f32) -> f32 {
        DBM0_PEAK * 10f32.powf(dbm0 / 20.0)
    }

    fn index(d: char) -> (usize, usize) {
        for (r, row) in KEYS.iter().enumerate() {
            if let Some(c) = row.iter().position(|&k| k == d) {
                return (r, c);
            }
        }
        panic!("{d}")
    }

    /// Appends a tone for `d` of `ms` (low group at `low` dBm0, high group at `high` dBm0).
    fn tone(out: &mut Vec<f32>, d: char, ms: usize, low: f32, high: f32) {
        let (r, c) = index(d);
        let n0 = out.len();
        for n in 0..ms * 8 {
            let t = (n0 + n) as f32 / 8000.0;
            let w = 2.0 * std::f32::consts::PI;
            out.push(amp(low) * (w * ROWS[r] * t).sin() + amp(high) * (w * COLS[c] * t).sin());
        }
    }

    fn silence(out: &mut Vec<f32>, samples: usize) {
        out.resize(out.len() + samples, 0.0);
    }

    fn detect(signal: &[f32], noise_dbm0: Option<f32>) -> String {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let sigma = noise_dbm0.map(|n| amp(n) / 2f32.sqrt());
        let pcm: Vec<i16> = signal
            .iter()
            .map(|&x| {
                let x = x + sigma.map_or(0.0, |s| s * rng.gauss());
                x.clamp(-32768.0, 32767.0) as i16
            })
            .collect();
        let mut det = DtmfDetector::default();
        let mut digits = String::new();
        for frame in pcm.chunks(160) {
            det.process(frame, |d| digits.push(d.digit));
        }
        digits
    }

    #[test]
    fn two_block_spectra_give_the_window_goertzel_power() {
        let mut det = DtmfDetector::default();
        let mut rng = Rng(42);
        let mut s = Vec::new();
        tone(&mut s, '6', 20, -9.0, -7.0);
        let pcm: Vec<i16> = s[..WINDOW]
            .iter()
            .map(|&x| (x + 2000.0 * rng.gauss()) as i16)
            .collect();
        det.store(&pcm[..HOP]);
        det.newest ^= 1;
        det.filled = 0;
        det.store(&pcm[HOP..]);
        let (first, second) = (&det.blocks[det.newest ^ 1], &det.blocks[det.newest]);
        let bank = det.bank(&det.block_spectrum(first), &det.block_spectrum(second));
        for (k, &f) in BANK.iter().enumerate() {
            let direct = det.goertzel(coeff(f));
            assert!(
                (bank[k] - direct).abs() <= 1e-3 * direct.max(1.0),
                "{f} Hz: {} vs {direct}",
                bank[k]
            );
        }
    }

    #[test]
    fn all_sixteen_digits() {
        let mut s = Vec::new();
        for d in "123456789*0#ABCD".chars() {
            tone(&mut s, d, 50, -7.0, -5.0);
            silence(&mut s, 400);
        }
        assert_eq!(detect(&s, None), "123456789*0#ABCD");
    }

    #[test]
    fn finds_123_hash_in_noise_with_twist_within_limits() {
        let mut s = Vec::new();
        silence(&mut s, 800);
        // forward twist 8 dB, reverse twist 4 dB (the Q.24 limits), no twist, low levels
        for (d, low, high) in [
            ('1', -15.0, -7.0),
            ('2', -6.0, -10.0),
            ('3', -20.0, -20.0),
            ('#', -9.0, -4.0),
        ] {
            tone(&mut s, d, 60, low, high);
            silence(&mut s, 480);
        }
        let mut one = Vec::new();
        silence(&mut one, 800);
        tone(&mut one, '1', 60, -15.0, -7.0);
        silence(&mut one, 480);
        assert_eq!(detect(&one, None), "1");
        assert_eq!(detect(&one, Some(-40.0)), "1");
        // noise at -40 dBm0: > 15 dB below the weakest tone
        assert_eq!(detect(&s, Some(-40.0)), "123#");
        assert_eq!(detect(&s, None), "123#");
    }

    #[test]
    fn q24_timing_accepts_40ms_and_rejects_23ms_at_every_alignment() {
        for offset in (0..WINDOW).step_by(3) {
            for (ms, expect) in [(40, "5"), (45, "5"), (23, ""), (20, ""), (15, "")] {
                let mut s = Vec::new();
                silence(&mut s, 200 + offset);
                tone(&mut s, '5', ms, -7.0, -5.0);
                silence(&mut s, 400);
                assert_eq!(detect(&s, None), expect, "{ms} ms at offset {offset}");
                assert_eq!(
                    detect(&s, Some(-35.0)),
                    expect,
                    "{ms} ms at offset {offset}, noise"
                );
            }
        }
    }

    #[test]
    fn excessive_twist_is_rejected() {
        let mut s = Vec::new();
        tone(&mut s, '8', 100, -16.0, -5.0); // forward twist 11 dB
        silence(&mut s, 400);
        tone(&mut s, '9', 100, -5.0, -12.0); // reverse twist 7 dB
        silence(&mut s, 400);
        assert_eq!(detect(&s, None), "");
    }

    #[test]
    fn too_quiet_and_single_tones_are_rejected() {
        let mut s = Vec::new();
        tone(&mut s, '1', 100, -42.0, -42.0);
        silence(&mut s, 400);
        tone(&mut s, '1', 100, -7.0, -80.0);
        silence(&mut s, 400);
        assert_eq!(detect(&s, None), "");
    }

    #[test]
    fn reported_once_per_tone_even_with_a_short_dropout() {
        let mut s = Vec::new();
        tone(&mut s, '7', 1000, -7.0, -5.0);
        silence(&mut s, 80); // 10 ms interruption
        tone(&mut s, '7', 500, -7.0, -5.0);
        silence(&mut s, 400);
        tone(&mut s, '7', 60, -7.0, -5.0); // a real second press
        silence(&mut s, 400);
        assert_eq!(detect(&s, None), "77");
    }

    #[test]
    fn speech_like_harmonic_signals_are_rejected() {
        // a voiced "vowel": a gliding pitch with many harmonics, formants near DTMF frequencies
        let mut s = Vec::new();
        let mut phase = 0f32;
        for n in 0..16000 {
            let f0 = 110.0 + 60.0 * (n as f32 / 3000.0).sin();
            phase += 2.0 * std::f32::consts::PI * f0 / 8000.0;
            let mut x = 0.0;
            for k in 1..30 {
                let f = k as f32 * f0;
                // formants at 700 and 1300 Hz
                let g = (-((f - 700.0) / 150.0).powi(2)).exp()
                    + (-((f - 1300.0) / 200.0).powi(2)).exp()
                    + 0.05;
                x += g * (k as f32 * phase).sin();
            }
            s.push(x * 3000.0);
        }
        assert_eq!(detect(&s, None), "");
        // a DTMF pair with strong second harmonics (a distorted tone) is not DTMF
        let mut s = Vec::new();
        tone(&mut s, '4', 100, -7.0, -5.0);
        let mut h = Vec::new();
        let (r, c) = index('4');
        for (n, &x) in s.iter().enumerate() {
            let t = n as f32 / 8000.0;
            let w = 2.0 * std::f32::consts::PI;
            h.push(
                x + amp(-11.0) * (w * 2.0 * ROWS[r] * t).sin()
                    + amp(-9.0) * (w * 2.0 * COLS[c] * t).sin(),
            );
        }
        assert_eq!(detect(&h, None), "");
    }

    #[test]
    fn detects_through_g711() {
        let mut s = Vec::new();
        for d in "0815".chars() {
            tone(&mut s, d, 60, -7.0, -5.0);
            silence(&mut s, 480);
        }
        let pcm: Vec<i16> = s.iter().map(|&x| x as i16).collect();
        let mut det = DtmfDetector::default();
        let mut digits = String::new();
        let mut enc = [0u8; 160];
        let mut dec = [0i16; 160];
        for frame in pcm.chunks(160) {
            let n = g711::encode_alaw(frame, &mut enc);
            g711::decode_alaw(&enc[..n], &mut dec[..n]);
            if let Some(d) = det.process_frame(&dec[..n]) {
                digits.push(d);
            }
        }
        assert_eq!(digits, "0815");
    }
}
