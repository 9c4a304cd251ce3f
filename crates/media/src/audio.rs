//! Linear audio at the engine's rate (8 kHz mono, 16-bit), WAV reading and writing, and
//! resampling. Prompts are decoded and resampled once, when loaded; the pacing loop only copies.

use std::sync::Arc;

/// The engine's audio rate: everything is mixed and played at 8 kHz.
pub const RATE: u32 = 8000;
/// Samples per 20 ms frame at [`RATE`].
pub const FRAME: usize = 160;

/// An immutable clip of 8 kHz mono audio, cheap to clone (shared).
#[derive(Clone, PartialEq, Eq)]
pub struct Audio {
    samples: Arc<[i16]>,
}

impl std::fmt::Debug for Audio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Audio({} samples)", self.samples.len())
    }
}

impl Audio {
    /// Wraps 8 kHz samples.
    pub fn from_samples(samples: Vec<i16>) -> Audio {
        Audio {
            samples: samples.into(),
        }
    }

    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / RATE as u64
    }

    /// Decodes a WAV file's bytes (PCM 8/16/24/32-bit, IEEE float, A-law or µ-law; any rate;
    /// any channel count, averaged to mono) and resamples it to 8 kHz.
    pub fn from_wav(bytes: &[u8]) -> Result<Audio, WavError> {
        let wav = Wav::parse(bytes)?;
        let mono = wav.to_mono_i16()?;
        Ok(Audio::from_samples(resample(&mono, wav.rate, RATE)))
    }
}

/// Why a WAV file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("truncated WAV file")]
    Truncated,
    #[error("no {0} chunk")]
    MissingChunk(&'static str),
    #[error("unsupported WAV encoding (format tag {format}, {bits} bits)")]
    Unsupported { format: u16, bits: u16 },
    #[error("bad WAV header: {0}")]
    BadHeader(&'static str),
}

struct Wav<'a> {
    format: u16,
    channels: u16,
    rate: u32,
    bits: u16,
    data: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, WavError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(WavError::Truncated)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, WavError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(WavError::Truncated)
}

impl<'a> Wav<'a> {
    fn parse(b: &'a [u8]) -> Result<Wav<'a>, WavError> {
        if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
            return Err(WavError::NotWave);
        }
        let mut at = 12;
        let mut fmt: Option<(u16, u16, u32, u16)> = None;
        let mut data: Option<&[u8]> = None;
        while at + 8 <= b.len() {
            let id = &b[at..at + 4];
            let len = u32_at(b, at + 4)? as usize;
            let body_start = at + 8;
            // Streams written without knowing their length put 0 or 0xFFFFFFFF in data.
            let body_end = body_start.saturating_add(len).min(b.len());
            let body = &b[body_start..body_end];
            match id {
                b"fmt " => {
                    if body.len() < 16 {
                        return Err(WavError::BadHeader("fmt chunk shorter than 16 bytes"));
                    }
                    let mut format = u16_at(body, 0)?;
                    let channels = u16_at(body, 2)?;
                    let rate = u32_at(body, 4)?;
                    let bits = u16_at(body, 14)?;
                    if format == 0xFFFE && body.len() >= 26 {
                        // WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with the tag.
                        format = u16_at(body, 24)?;
                    }
                    fmt = Some((format, channels, rate, bits));
                }
                b"data" => {
                    let end = if len == 0 || len == u32::MAX as usize {
                        b.len()
                    } else {
                        body_end
                    };
                    data = Some(&b[body_start..end]);
                    break;
                }
                _ => {}
            }
            // Chunks are padded to an even length.
            at = body_start.saturating_add(len).saturating_add(len & 1);
        }
        let (format, channels, rate, bits) = fmt.ok_or(WavError::MissingChunk("fmt"))?;
        let data = data.ok_or(WavError::MissingChunk("data"))?;
        if channels == 0 {
            return Err(WavError::BadHeader("zero channels"));
        }
        if !(1000..=384_000).contains(&rate) {
            return Err(WavError::BadHeader("sample rate out of range"));
        }
        Ok(Wav {
            format,
            channels,
            rate,
            bits,
            data,
        })
    }

    fn to_mono_i16(&self) -> Result<Vec<i16>, WavError> {
        let unsupported = WavError::Unsupported {
            format: self.format,
            bits: self.bits,
        };
        let width = match (self.format, self.bits) {
            (1, 8) | (6, 8) | (7, 8) => 1,
            (1, 16) => 2,
            (1, 24) => 3,
            (1, 32) | (3, 32) => 4,
            _ => return Err(unsupported),
        };
        let decode = |s: &[u8]| -> i32 {
            match (self.format, width) {
                (1, 1) => (s[0] as i32 - 128) << 8,
                (6, _) => switchboard_rtp::codec::g711::alaw_decode_sample(s[0]) as i32,
                (7, _) => switchboard_rtp::codec::g711::ulaw_decode_sample(s[0]) as i32,
                (1, 2) => i16::from_le_bytes([s[0], s[1]]) as i32,
                (1, 3) => (i32::from_le_bytes([0, s[0], s[1], s[2]])) >> 16,
                (1, 4) => i32::from_le_bytes([s[0], s[1], s[2], s[3]]) >> 16,
                (3, 4) => {
                    let f = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    (f.clamp(-1.0, 1.0) * 32767.0) as i32
                }
                _ => 0,
            }
        };
        let ch = self.channels as usize;
        let frame = width * ch;
        let frames = self.data.len() / frame;
        let mut out = Vec::with_capacity(frames);
        for f in self.data.chunks_exact(frame) {
            let sum: i32 = f.chunks_exact(width).map(decode).sum();
            out.push((sum / ch as i32).clamp(-32768, 32767) as i16);
        }
        Ok(out)
    }
}

/// Writes 16-bit mono PCM as a WAV file.
pub fn write_wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Reads a 16-bit mono WAV (as written by [`write_wav`]) back: (rate, samples).
pub fn read_wav_i16(bytes: &[u8]) -> Result<(u32, Vec<i16>), WavError> {
    let wav = Wav::parse(bytes)?;
    Ok((wav.rate, wav.to_mono_i16()?))
}

/// Band-limited resampling (windowed sinc, Blackman window, cutoff at 0.95 of the lower
/// Nyquist frequency). Meant for loading prompts, not for the real-time path.
pub fn resample(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let ratio = to as f64 / from as f64;
    let out_len = ((input.len() as f64) * ratio).round() as usize;
    // Cutoff relative to the input rate.
    let fc = 0.5 * ratio.min(1.0) * 0.95;
    const ZEROS: f64 = 12.0;
    let half = (ZEROS / (2.0 * fc)).ceil() as i64;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let t = n as f64 / ratio;
        let center = t.floor() as i64;
        let mut acc = 0.0f64;
        let mut norm = 0.0f64;
        for k in (center - half + 1)..=(center + half) {
            let x = t - k as f64;
            let arg = 2.0 * fc * x;
            let sinc = if arg.abs() < 1e-9 {
                1.0
            } else {
                (std::f64::consts::PI * arg).sin() / (std::f64::consts::PI * arg)
            };
            // Blackman window over [-half, half].
            let w = x / half as f64;
            if w.abs() >= 1.0 {
                continue;
            }
            let p = std::f64::consts::PI * (w + 1.0);
            let win = 0.42 - 0.5 * p.cos() + 0.08 * (2.0 * p).cos();
            let h = sinc * win;
            norm += h;
            if k >= 0 && (k as usize) < input.len() {
                acc += input[k as usize] as f64 * h;
            }
        }
        let v = if norm.abs() > 1e-12 { acc / norm } else { 0.0 };
        out.push(v.round().clamp(-32768.0, 32767.0) as i16);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as i16
            })
            .collect()
    }

    fn goertzel_power(s: &[i16], freq: f64, rate: u32) -> f64 {
        let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &x in s {
            let s0 = x as f64 + c * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - c * s1 * s2) / (s.len() as f64).powi(2)
    }

    #[test]
    fn wav_round_trip() {
        let s = sine(440.0, 8000, 800, 10000.0);
        let bytes = write_wav(&s, 8000);
        let a = Audio::from_wav(&bytes).expect("wav");
        assert_eq!(a.samples(), &s[..]);
        assert_eq!(a.duration_ms(), 100);
        assert_eq!(read_wav_i16(&bytes).expect("read"), (8000, s));
    }

    #[test]
    fn stereo_44k_is_resampled_to_8k_mono() {
        let s = sine(1000.0, 44100, 44100, 12000.0);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"RIFF\0\0\0\0WAVEfmt ");
        bytes.extend_from_slice(&16u32.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&44100u32.to_le_bytes());
        bytes.extend_from_slice(&(44100u32 * 4).to_le_bytes());
        bytes.extend_from_slice(&4u16.to_le_bytes());
        bytes.extend_from_slice(&16u16.to_le_bytes());
        bytes.extend_from_slice(b"LIST\x03\0\0\0abc\0"); // odd chunk, padded
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&((s.len() * 4) as u32).to_le_bytes());
        for x in &s {
            bytes.extend_from_slice(&x.to_le_bytes());
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let a = Audio::from_wav(&bytes).expect("wav");
        assert_eq!(a.len(), 8000);
        let mid = &a.samples()[1000..7000];
        let p1k = goertzel_power(mid, 1000.0, 8000);
        let p2k = goertzel_power(mid, 2000.0, 8000);
        assert!(p1k > 1000.0 * p2k, "{p1k} {p2k}");
        let peak = mid.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
        assert!((11000..13000).contains(&peak), "{peak}");
    }

    #[test]
    fn downsampling_removes_aliases() {
        // 6 kHz at 16 kHz would alias to 2 kHz at 8 kHz without the low-pass.
        let s = sine(6000.0, 16000, 16000, 12000.0);
        let out = resample(&s, 16000, 8000);
        let rms = (out[200..7800]
            .iter()
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            / 7600.0)
            .sqrt();
        assert!(rms < 200.0, "{rms}");
    }

    #[test]
    fn bad_files_are_errors() {
        assert_eq!(Audio::from_wav(b"hello"), Err(WavError::NotWave));
        assert_eq!(
            Audio::from_wav(b"RIFF\0\0\0\0WAVEdata\0\0\0\0"),
            Err(WavError::MissingChunk("fmt"))
        );
        let mut b = write_wav(&[1, 2, 3], 8000);
        b[20] = 2; // format tag 2 (ADPCM)
        assert!(matches!(
            Audio::from_wav(&b),
            Err(WavError::Unsupported { .. })
        ));
    }
}
