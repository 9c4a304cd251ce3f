//! Rate conversion by two (8 kHz <-> 16 kHz) with a 47-tap half-band FIR filter, for carrying
//! 8 kHz audio over G.722 (whose codec runs at 16 kHz) and back.
//!
//! The filter is a Kaiser-windowed (β = 7) half-band low-pass: flat to 3.4 kHz (-0.1 dB), -6 dB
//! at 4 kHz, below -37 dB from 4.6 kHz and below -76 dB from 5 kHz, which removes the images of
//! upsampling and the aliases of downsampling for telephone-band audio. Half of its taps are
//! zero, so each output costs 13 multiplications. State lives in fixed arrays: no allocation,
//! any chunk size. Each direction delays the signal by 23 samples at 16 kHz (11.5 at 8 kHz).

/// The non-zero off-centre taps: `h[23 ± (2k + 1)] = C[k]`; the centre tap `h[23]` is 1/2.
const C: [f32; 12] = [
    0.316_364_8,
    -0.100_391_9,
    0.054_532_766,
    -0.033_461_816,
    0.021_137_268,
    -0.013_204_805,
    0.007_952_764,
    -0.004_513_225,
    0.002_347_405,
    -0.001_070_852,
    0.000_390_511,
    -0.000_082_088,
];

#[inline]
fn to_i16(x: f32) -> i16 {
    x.round().clamp(-32768.0, 32767.0) as i16
}

/// A sample history kept twice in a row, so the last `N` samples are always one contiguous
/// slice without shifting.
#[derive(Debug, Clone)]
struct History<const N2: usize> {
    buf: [f32; N2],
    pos: usize,
}

impl<const N2: usize> History<N2> {
    const N: usize = N2 / 2;

    fn new() -> Self {
        History {
            buf: [0.0; N2],
            pos: 0,
        }
    }

    fn push(&mut self, x: f32) {
        self.buf[self.pos] = x;
        self.buf[self.pos + Self::N] = x;
        self.pos = (self.pos + 1) % Self::N;
    }

    /// The last `N` samples, oldest first.
    fn window(&self) -> &[f32] {
        &self.buf[self.pos..self.pos + Self::N]
    }
}

/// 8 kHz to 16 kHz.
#[derive(Debug, Clone)]
pub struct Upsampler2 {
    /// The last 24 input samples.
    hist: History<48>,
}

impl Default for Upsampler2 {
    fn default() -> Self {
        Upsampler2::new()
    }
}

impl Upsampler2 {
    pub fn new() -> Upsampler2 {
        Upsampler2 {
            hist: History::new(),
        }
    }

    /// Writes two output samples per input sample; returns how many were written (stops at the
    /// end of `out`).
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) -> usize {
        let mut n = 0;
        for (&x, pair) in input.iter().zip(out.chunks_exact_mut(2)) {
            self.hist.push(f32::from(x));
            // w[23] is the newest sample x[p]; the even output is 2·Σ C[k]·(x[p-11+k] +
            // x[p-12-k]), the odd one falls on the centre tap: 2·½·x[p-11].
            let w = self.hist.window();
            let mut acc = 0.0f32;
            for (k, c) in C.iter().enumerate() {
                acc += c * (w[12 + k] + w[11 - k]);
            }
            pair[0] = to_i16(2.0 * acc);
            pair[1] = to_i16(w[12]);
            n += 2;
        }
        n
    }
}

/// 16 kHz to 8 kHz.
#[derive(Debug, Clone)]
pub struct Downsampler2 {
    /// The last 47 input samples.
    hist: History<94>,
    /// The next sample completes a pair (and makes an output sample).
    odd: bool,
}

impl Default for Downsampler2 {
    fn default() -> Self {
        Downsampler2::new()
    }
}

impl Downsampler2 {
    pub fn new() -> Downsampler2 {
        // The first sample is output at once: that puts the outputs on the samples of an 8 kHz
        // signal that [`Upsampler2`] made 16 kHz (a round trip is a pure delay).
        Downsampler2 {
            hist: History::new(),
            odd: true,
        }
    }

    /// Writes one output sample per two input samples; returns how many were written (stops
    /// at the end of `out`). A sample left over (the first of a pair) is kept for the next call.
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) -> usize {
        let mut n = 0;
        for &x in input {
            if n == out.len() {
                break;
            }
            self.hist.push(f32::from(x));
            let completes = self.odd;
            self.odd = !completes;
            if !completes {
                continue;
            }
            // w[46] is the newest sample x[2m]; y[m] = ½·x[2m-23] + Σ C[k]·(x[2m-22+2k] +
            // x[2m-24-2k]).
            let w = self.hist.window();
            let mut acc = 0.5 * w[23];
            for (k, c) in C.iter().enumerate() {
                acc += c * (w[24 + 2 * k] + w[22 - 2 * k]);
            }
            out[n] = to_i16(acc);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: f64, n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin()) as i16)
            .collect()
    }

    /// Amplitude of `freq` in `s` (Goertzel), skipping the filter's start-up; the tests'
    /// lengths hold whole cycles of every frequency measured (no leakage between them).
    fn amplitude(s: &[i16], freq: f64, rate: f64) -> f64 {
        let s = &s[160..];
        let c = 2.0 * (2.0 * std::f64::consts::PI * freq / rate).cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in s {
            let s0 = x as f64 + c * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        2.0 * (s1 * s1 + s2 * s2 - c * s1 * s2).sqrt() / s.len() as f64
    }

    #[test]
    fn upsampling_keeps_the_tone_and_removes_the_image() {
        let input = sine(1000.0, 8000.0, 1600, 10000.0);
        let mut up = Upsampler2::new();
        let mut out = vec![0i16; 3200];
        // odd chunk sizes: the state carries over
        let mut n = 0;
        for chunk in input.chunks(77) {
            n += up.process(chunk, &mut out[n..]);
        }
        assert_eq!(n, 3200);
        let a = amplitude(&out, 1000.0, 16000.0);
        assert!((a - 10000.0).abs() < 200.0, "{a}");
        // the image of 1 kHz at 8 kHz sampling sits at 7 kHz
        assert!(amplitude(&out, 7000.0, 16000.0) < 10.0);
    }

    #[test]
    fn downsampling_keeps_the_band_and_rejects_aliases() {
        let tone = sine(1000.0, 16000.0, 3200, 8000.0);
        let high = sine(6000.0, 16000.0, 3200, 8000.0); // would alias to 2 kHz
        let input: Vec<i16> = tone.iter().zip(&high).map(|(a, b)| a + b).collect();
        let mut down = Downsampler2::new();
        let mut out = vec![0i16; 1600];
        let mut n = 0;
        for chunk in input.chunks(33) {
            n += down.process(chunk, &mut out[n..]);
        }
        assert_eq!(n, 1600);
        let a = amplitude(&out, 1000.0, 8000.0);
        assert!((a - 8000.0).abs() < 200.0, "{a}");
        assert!(amplitude(&out, 2000.0, 8000.0) < 10.0);
    }

    #[test]
    fn round_trip_is_the_input_delayed() {
        let input = sine(700.0, 8000.0, 800, 12000.0);
        let mut wide = vec![0i16; 1600];
        let mut back = vec![0i16; 800];
        Upsampler2::new().process(&input, &mut wide);
        assert_eq!(Downsampler2::new().process(&wide, &mut back), 800);
        // 11.5 + 11.5 samples at 8 kHz = 23
        let err: f64 = (100..777)
            .map(|i| (back[i + 23] as f64 - input[i] as f64).abs())
            .fold(0.0, f64::max);
        assert!(err < 120.0, "{err}");
    }

    #[test]
    fn short_outputs_stop_and_extremes_saturate() {
        let mut up = Upsampler2::new();
        let mut out = [0i16; 5];
        assert_eq!(up.process(&[i16::MAX; 10], &mut out), 4);
        let mut down = Downsampler2::new();
        assert_eq!(down.process(&[i16::MIN; 10], &mut out[..2]), 2);
        assert_eq!(down.process(&[], &mut out), 0);
        let loud: Vec<i16> = (0..400)
            .map(|i| if i % 2 == 0 { 32767 } else { -32768 })
            .collect();
        let mut wide = [0i16; 800];
        Upsampler2::new().process(&loud, &mut wide);
    }
}
