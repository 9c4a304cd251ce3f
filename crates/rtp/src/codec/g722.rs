//! G.722 at 64 kbit/s (ITU-T G.722 sub-band ADPCM), encoder and decoder.
//!
//! 16 kHz linear audio is split by a 24-tap quadrature mirror filter into a lower band (coded with
//! 6-bit adaptive ADPCM) and a higher band (2-bit ADPCM); each pair of input samples becomes one
//! octet `(high << 6) | low`, which is also the RTP payload format (RFC 3551 §4.5.2: one octet per
//! 8 kHz RTP tick, 160 octets per 20 ms). The ADPCM blocks follow the Recommendation's block
//! structure (quantiser, inverse quantiser, log scale factor adaptation, pole/zero predictor);
//! the decoder implements mode 1 (64 kbit/s, all 6 low-band bits are audio).
//!
//! The band signals are carried at half the 16-bit input scale (15-bit), the Recommendation's
//! working range; encoder plus decoder have unity gain and a group delay of 22 samples.

/// Half of the 24 QMF coefficients; the filter is symmetric: h(2i) = QMF[i], h(2i+1) = QMF[11-i].
const QMF: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];

/// Lower-band quantiser decision levels (scaled by the step size `det`).
const Q6: [i32; 31] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0,
];
/// Lower-band code for a negative / positive error in quantiser interval `mil`.
const ILN: [i32; 31] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4,
];
const ILP: [i32; 31] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32,
];
/// Lower-band log scale factor multipliers, indexed through `RL42`.
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
const RL42: [i32; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Inverse log table: 2048 * 2^(i/32).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// Lower-band 4-bit inverse quantiser (used for predictor and scale adaptation on both sides).
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// Lower-band 6-bit inverse quantiser output levels for the positive codes 32..=61.
const QM6_POS: [i32; 30] = [
    24808, 21904, 19008, 16704, 14984, 13512, 12280, 11192, 10232, 9360, 8576, 7856, 7192, 6576,
    6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776, 2400, 2032, 1688, 1360, 1040, 728, 432, 136,
];
/// The full 6-bit inverse quantiser: codes 0..=3 are unused (smallest negative level),
/// 4..=31 mirror 32..=59, 62 and 63 are the two smallest negative levels.
const QM6: [i32; 64] = {
    let mut t = [0i32; 64];
    let mut k = 0;
    while k < 64 {
        t[k] = if k < 4 {
            -136
        } else if k < 32 {
            -QM6_POS[k - 4]
        } else if k < 62 {
            QM6_POS[k - 32]
        } else if k == 62 {
            -432
        } else {
            -136
        };
        k += 1;
    }
    t
};
/// Higher-band tables: codes for negative / positive error, inverse quantiser, scale factor.
const IHN: [i32; 3] = [0, 1, 0];
const IHP: [i32; 3] = [0, 3, 2];
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
const WH: [i32; 3] = [0, -214, 798];
const RH2: [i32; 4] = [2, 1, 2, 1];

#[inline]
fn sat16(x: i32) -> i32 {
    x.clamp(-32768, 32767)
}

/// State of one sub-band ADPCM coder (the same on both sides of the link).
#[derive(Debug, Clone)]
struct Band {
    /// Predictor output (signal estimate), pole and zero sections.
    s: i32,
    sp: i32,
    sz: i32,
    /// Reconstructed signal, pole coefficients, partial reconstructed signal (delay lines).
    r: [i32; 3],
    a: [i32; 3],
    ap: [i32; 3],
    p: [i32; 3],
    /// Quantised difference signal and zero coefficients (delay lines).
    d: [i32; 7],
    b: [i32; 7],
    bp: [i32; 7],
    /// Log scale factor and quantiser step size.
    nb: i32,
    det: i32,
}

impl Band {
    fn new(det: i32) -> Band {
        Band {
            s: 0,
            sp: 0,
            sz: 0,
            r: [0; 3],
            a: [0; 3],
            ap: [0; 3],
            p: [0; 3],
            d: [0; 7],
            b: [0; 7],
            bp: [0; 7],
            nb: 0,
            det,
        }
    }

    /// Lower-band scale factor adaptation (LOGSCL + SCALEL) from the 4-bit code.
    fn adapt_low(&mut self, ril: usize) {
        let nb = ((self.nb * 127) >> 7) + WL[RL42[ril] as usize];
        self.nb = nb.clamp(0, 18432);
        self.det = scale(self.nb, 8);
    }

    /// Higher-band scale factor adaptation (LOGSCH + SCALEH).
    fn adapt_high(&mut self, ih: usize) {
        let nb = ((self.nb * 127) >> 7) + WH[RH2[ih] as usize];
        self.nb = nb.clamp(0, 22528);
        self.det = scale(self.nb, 10);
    }

    /// Block 4: reconstruction, pole and zero predictor adaptation, prediction of the next value.
    fn predict(&mut self, d: i32) {
        self.d[0] = d;
        self.r[0] = sat16(self.s + d);
        self.p[0] = sat16(self.sz + d);

        // signs (0 for non-negative, -1 for negative)
        let sg0 = self.p[0] >> 15;
        let sg1 = self.p[1] >> 15;
        let sg2 = self.p[2] >> 15;

        // UPPOL2: second pole coefficient
        let wd1 = sat16(self.a[1] << 2);
        let wd2 = if sg0 == sg1 { -wd1 } else { wd1 }.min(32767);
        let mut wd3 = (wd2 >> 7) + if sg0 == sg2 { 128 } else { -128 };
        wd3 += (self.a[2] * 32512) >> 15;
        self.ap[2] = wd3.clamp(-12288, 12288);

        // UPPOL1: first pole coefficient, limited for stability
        let wd1 = if sg0 == sg1 { 192 } else { -192 };
        let wd2 = (self.a[1] * 32640) >> 15;
        let lim = sat16(15360 - self.ap[2]);
        self.ap[1] = sat16(wd1 + wd2).clamp(-lim, lim);

        // UPZERO: sixth-order zero section
        let step = if d == 0 { 0 } else { 128 };
        let sgd = d >> 15;
        for i in 1..7 {
            let wd2 = if (self.d[i] >> 15) == sgd {
                step
            } else {
                -step
            };
            let wd3 = (self.b[i] * 32640) >> 15;
            self.bp[i] = sat16(wd2 + wd3);
        }

        // DELAYA
        for i in (1..7).rev() {
            self.d[i] = self.d[i - 1];
            self.b[i] = self.bp[i];
        }
        for i in (1..3).rev() {
            self.r[i] = self.r[i - 1];
            self.p[i] = self.p[i - 1];
            self.a[i] = self.ap[i];
        }

        // FILTEP
        let wd1 = (self.a[1] * sat16(self.r[1] + self.r[1])) >> 15;
        let wd2 = (self.a[2] * sat16(self.r[2] + self.r[2])) >> 15;
        self.sp = sat16(wd1 + wd2);

        // FILTEZ
        let mut sz = 0;
        for i in (1..7).rev() {
            sz += (self.b[i] * sat16(self.d[i] + self.d[i])) >> 15;
        }
        self.sz = sat16(sz);

        // PREDIC
        self.s = sat16(self.sp + self.sz);
    }
}

/// SCALEL / SCALEH: step size from the log scale factor.
#[inline]
fn scale(nb: i32, bias: i32) -> i32 {
    let wd1 = ((nb >> 6) & 31) as usize;
    let wd2 = bias - (nb >> 11);
    let wd3 = if wd2 < 0 {
        ILB[wd1] << -wd2
    } else {
        ILB[wd1] >> wd2
    };
    wd3 << 2
}

/// G.722 encoder state. One per direction of a call; not shareable between streams.
#[derive(Debug, Clone)]
pub struct G722Encoder {
    /// Transmit QMF delay line, newest sample first.
    x: [i32; 24],
    low: Band,
    high: Band,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// A fresh encoder (the Recommendation's reset state).
    pub fn new() -> G722Encoder {
        G722Encoder {
            x: [0; 24],
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Resets to the initial state.
    pub fn reset(&mut self) {
        *self = G722Encoder::new();
    }

    /// Encodes 16 kHz samples, two per output octet. Returns the octets written; a trailing odd
    /// sample is ignored (feed frames of even length, e.g. 320 samples per 20 ms).
    pub fn encode(&mut self, samples: &[i16], out: &mut [u8]) -> usize {
        let n = (samples.len() / 2).min(out.len());
        for (o, pair) in out[..n].iter_mut().zip(samples.chunks_exact(2)) {
            *o = self.encode_pair(pair[0], pair[1]);
        }
        n
    }

    fn encode_pair(&mut self, first: i16, second: i16) -> u8 {
        // Transmit QMF
        self.x.copy_within(0..22, 2);
        self.x[1] = first as i32;
        self.x[0] = second as i32;
        let mut sum_a = 0i32;
        let mut sum_b = 0i32;
        for i in 0..12 {
            sum_a += QMF[i] * self.x[2 * i];
            sum_b += QMF[11 - i] * self.x[2 * i + 1];
        }
        let xl = (sum_a + sum_b) >> 14;
        let xh = (sum_a - sum_b) >> 14;

        // Lower band: 6-bit quantiser
        let el = sat16(xl - self.low.s);
        let wd = if el >= 0 { el } else { -(el + 1) };
        let mut mil = 1;
        while mil < 30 {
            if wd < (Q6[mil] * self.low.det) >> 12 {
                break;
            }
            mil += 1;
        }
        let ilow = if el < 0 { ILN[mil] } else { ILP[mil] };
        let ril = (ilow >> 2) as usize;
        let dlow = (self.low.det * QM4[ril]) >> 15;
        self.low.adapt_low(ril);
        self.low.predict(dlow);

        // Higher band: 2-bit quantiser
        let eh = sat16(xh - self.high.s);
        let wd = if eh >= 0 { eh } else { -(eh + 1) };
        let mih = if wd >= (564 * self.high.det) >> 12 {
            2
        } else {
            1
        };
        let ih = if eh < 0 { IHN[mih] } else { IHP[mih] } as usize;
        let dhigh = (self.high.det * QM2[ih]) >> 15;
        self.high.adapt_high(ih);
        self.high.predict(dhigh);

        ((ih as u8) << 6) | (ilow as u8)
    }
}

/// G.722 decoder state (64 kbit/s mode).
#[derive(Debug, Clone)]
pub struct G722Decoder {
    /// Receive QMF delay lines (difference and sum signals), newest first.
    xd: [i32; 12],
    xs: [i32; 12],
    low: Band,
    high: Band,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A fresh decoder.
    pub fn new() -> G722Decoder {
        G722Decoder {
            xd: [0; 12],
            xs: [0; 12],
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Resets to the initial state.
    pub fn reset(&mut self) {
        *self = G722Decoder::new();
    }

    /// Decodes octets into 16 kHz samples, two per octet. Returns the samples written (stops
    /// when `out` cannot take another pair).
    pub fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        let n = payload.len().min(out.len() / 2);
        for (&code, o) in payload[..n].iter().zip(out.chunks_exact_mut(2)) {
            let (a, b) = self.decode_octet(code);
            o[0] = a;
            o[1] = b;
        }
        n * 2
    }

    fn decode_octet(&mut self, code: u8) -> (i16, i16) {
        let ilow = (code & 0x3f) as usize;
        let ih = (code >> 6) as usize;

        // Lower band: the 6-bit reconstruction is the output; the 4-bit one drives adaptation.
        let rlow = (self.low.s + ((self.low.det * QM6[ilow]) >> 15)).clamp(-16384, 16383);
        let ril = ilow >> 2;
        let dlow = (self.low.det * QM4[ril]) >> 15;
        self.low.adapt_low(ril);
        self.low.predict(dlow);

        // Higher band
        let dhigh = (self.high.det * QM2[ih]) >> 15;
        let rhigh = (dhigh + self.high.s).clamp(-16384, 16383);
        self.high.adapt_high(ih);
        self.high.predict(dhigh);

        // Receive QMF
        self.xd.copy_within(0..11, 1);
        self.xs.copy_within(0..11, 1);
        self.xd[0] = rlow - rhigh;
        self.xs[0] = rlow + rhigh;
        let mut even = 0i32;
        let mut odd = 0i32;
        for i in 0..12 {
            even += QMF[i] * self.xd[i];
            odd += QMF[11 - i] * self.xs[i];
        }
        (sat16(even >> 11) as i16, sat16(odd >> 11) as i16)
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    pub fn sine(freq: f64, amp: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / 16000.0).sin()) as i16)
            .collect()
    }

    pub fn round_trip(input: &[i16]) -> Vec<i16> {
        let mut enc = G722Encoder::new();
        let mut dec = G722Decoder::new();
        let mut out = Vec::new();
        for frame in input.chunks(320) {
            let mut bits = [0u8; 160];
            let n = enc.encode(frame, &mut bits);
            let mut pcm = [0i16; 320];
            let m = dec.decode(&bits[..n], &mut pcm);
            out.extend_from_slice(&pcm[..m]);
        }
        out
    }

    /// SNR in dB after the codec delay, skipping the adaptation start-up.
    pub fn snr(input: &[i16], output: &[i16], delay: usize) -> f64 {
        let (mut sig, mut err) = (0f64, 0f64);
        for i in 4000..input.len() - delay {
            let x = input[i] as f64;
            let y = output[i + delay] as f64;
            sig += x * x;
            err += (x - y) * (x - y);
        }
        10.0 * (sig / err).log10()
    }

    pub fn best_delay(input: &[i16], output: &[i16]) -> (usize, f64) {
        (0..40)
            .map(|d| (d, snr(input, output, d)))
            .fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a })
    }
}
#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    #[test]
    fn inverse_quantiser_levels_sit_in_the_middle_of_the_decision_intervals() {
        // the 6-bit output level for interval [Q6[m-1], Q6[m]) is ~8x its midpoint
        for m in 2..30 {
            let code = ILP[m] as usize;
            let mid8 = 4 * (Q6[m - 1] + Q6[m]);
            assert!(
                (QM6[code] - mid8).abs() <= 8,
                "m {m}: {} vs {mid8}",
                QM6[code]
            );
            assert_eq!(
                QM6[ILN[m] as usize],
                if m < 3 {
                    QM6[ILN[m] as usize]
                } else {
                    -QM6[code]
                }
            );
        }
        assert_eq!(QMF.iter().sum::<i32>(), 4096);
    }

    #[test]
    fn speech_band_tones_round_trip_with_high_snr_and_22_sample_delay() {
        for freq in [300.0, 1000.0, 2500.0, 3400.0] {
            let input = sine(freq, 10000.0, 16000);
            let output = round_trip(&input);
            assert_eq!(output.len(), input.len());
            let s = snr(&input, &output, 22);
            if freq == 300.0 {
                // a long period makes the delay unambiguous
                assert_eq!(best_delay(&input, &output).0, 22);
            }
            assert!(s > 30.0, "{freq} Hz: SNR {s:.1} dB");
        }
    }

    #[test]
    fn wideband_tones_pass() {
        // the higher band (4-8 kHz) only has 2 bits; it still carries the tone
        for freq in [5000.0, 6500.0] {
            let input = sine(freq, 8000.0, 16000);
            let output = round_trip(&input);
            let s = snr(&input, &output, 22);
            assert!(s > 18.0, "{freq} Hz: SNR {s:.1} dB");
        }
    }

    #[test]
    fn quiet_signals_keep_their_level() {
        // -50 dBFS: the adaptive step size follows the signal down
        let input = sine(1000.0, 100.0, 16000);
        let output = round_trip(&input);
        assert!(snr(&input, &output, 22) > 20.0);
    }

    #[test]
    fn silence_stays_silent_and_full_scale_does_not_wrap() {
        let out = round_trip(&[0i16; 3200]);
        assert!(out.iter().all(|&s| s.abs() < 16), "{:?}", &out[..40]);
        let input = sine(1000.0, 32767.0, 16000);
        let output = round_trip(&input);
        let s = snr(&input, &output, 22);
        assert!(s > 40.0, "SNR {s:.1} dB");
    }

    #[test]
    fn any_octets_decode_without_panicking() {
        let mut dec = G722Decoder::new();
        let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let mut pcm = vec![0i16; 8192];
        assert_eq!(dec.decode(&bytes, &mut pcm), 8192);
        // odd output length: only whole pairs
        assert_eq!(dec.decode(&bytes[..10], &mut pcm[..7]), 6);
    }
}
