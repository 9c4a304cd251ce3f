//! G.711 µ-law and A-law (ITU-T G.711), with table-based fast paths.
//!
//! The quantisers follow the ITU definition: µ-law works on the 14 most significant bits of the
//! 16-bit sample, A-law on the 13 most significant bits, negative values are taken in one's
//! complement (so the characteristic is symmetric), and µ-law code words are sent inverted, A-law
//! code words with the even bits inverted (XOR 0x55). Encoding is a single table lookup indexed by
//! the truncated sample (16 KiB for µ-law, 8 KiB for A-law); decoding is a 256-entry table.
//! All tables are computed at compile time from the segment formulas below.

/// µ-law magnitude clip on the 14-bit scale (the largest value the 8 segments represent).
const ULAW_CLIP_14: i32 = 8158;
/// µ-law bias on the 14-bit scale.
const ULAW_BIAS_14: i32 = 33;

/// The reference µ-law quantiser on a 14-bit two's complement value (-8192..=8191).
const fn ulaw_from_14(v: i32) -> u8 {
    let (sign, mut mag) = if v < 0 { (0x80, !v) } else { (0, v) };
    if mag > ULAW_CLIP_14 {
        mag = ULAW_CLIP_14;
    }
    let biased = mag + ULAW_BIAS_14; // 33..=8191
    let mut exp = 0;
    let mut t = biased >> 6;
    while t > 0 {
        exp += 1;
        t >>= 1;
    }
    let mant = (biased >> (exp + 1)) & 0x0f;
    !((sign | (exp << 4) | mant) as u8)
}

/// The µ-law expander, returning the 16-bit linear value.
const fn ulaw_to_16(code: u8) -> i16 {
    let c = !code;
    let exp = ((c >> 4) & 0x07) as i32;
    let mant = (c & 0x0f) as i32;
    let mag14 = ((2 * mant + ULAW_BIAS_14) << exp) - ULAW_BIAS_14;
    let v = mag14 << 2;
    if c & 0x80 != 0 {
        -v as i16
    } else {
        v as i16
    }
}

/// The reference A-law quantiser on a 13-bit two's complement value (-4096..=4095).
const fn alaw_from_13(v: i32) -> u8 {
    let (sign, mag) = if v >= 0 { (0x80, v) } else { (0, !v) };
    let code = if mag < 32 {
        mag >> 1
    } else {
        // exponent = floor(log2(mag)) - 4, in 1..=7
        let mut exp = 0;
        let mut t = mag >> 5;
        while t > 0 {
            exp += 1;
            t >>= 1;
        }
        (exp << 4) | ((mag >> exp) & 0x0f)
    };
    ((sign | code) as u8) ^ 0x55
}

/// The A-law expander, returning the 16-bit linear value.
const fn alaw_to_16(code: u8) -> i16 {
    let c = code ^ 0x55;
    let exp = ((c >> 4) & 0x07) as i32;
    let mant = (c & 0x0f) as i32;
    let mag13 = if exp == 0 {
        2 * mant + 1
    } else {
        (2 * mant + 33) << (exp - 1)
    };
    let v = mag13 << 3;
    if c & 0x80 != 0 {
        v as i16
    } else {
        -v as i16
    }
}

static ULAW_ENCODE: [u8; 16384] = {
    let mut t = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        // index is the 14-bit two's complement pattern
        let v = if i >= 8192 {
            i as i32 - 16384
        } else {
            i as i32
        };
        t[i] = ulaw_from_14(v);
        i += 1;
    }
    t
};

static ALAW_ENCODE: [u8; 8192] = {
    let mut t = [0u8; 8192];
    let mut i = 0;
    while i < 8192 {
        let v = if i >= 4096 { i as i32 - 8192 } else { i as i32 };
        t[i] = alaw_from_13(v);
        i += 1;
    }
    t
};

static ULAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_to_16(i as u8);
        i += 1;
    }
    t
};

static ALAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_to_16(i as u8);
        i += 1;
    }
    t
};

static ULAW_TO_ALAW: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_from_13((ulaw_to_16(i as u8) >> 3) as i32);
        i += 1;
    }
    t
};

static ALAW_TO_ULAW: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_from_14((alaw_to_16(i as u8) >> 2) as i32);
        i += 1;
    }
    t
};

/// Encodes one sample to µ-law.
#[inline]
pub fn ulaw_encode_sample(s: i16) -> u8 {
    ULAW_ENCODE[((s >> 2) as u16 & 0x3fff) as usize]
}

/// Decodes one µ-law code word.
#[inline]
pub fn ulaw_decode_sample(c: u8) -> i16 {
    ULAW_DECODE[c as usize]
}

/// Encodes one sample to A-law.
#[inline]
pub fn alaw_encode_sample(s: i16) -> u8 {
    ALAW_ENCODE[((s >> 3) as u16 & 0x1fff) as usize]
}

/// Decodes one A-law code word.
#[inline]
pub fn alaw_decode_sample(c: u8) -> i16 {
    ALAW_DECODE[c as usize]
}

/// Transcodes a µ-law code word to A-law through the linear domain.
#[inline]
pub fn ulaw_to_alaw(c: u8) -> u8 {
    ULAW_TO_ALAW[c as usize]
}

/// Transcodes an A-law code word to µ-law through the linear domain.
#[inline]
pub fn alaw_to_ulaw(c: u8) -> u8 {
    ALAW_TO_ULAW[c as usize]
}

/// Encodes samples to µ-law. Returns the bytes written (`min(samples.len(), out.len())`).
pub fn encode_ulaw(samples: &[i16], out: &mut [u8]) -> usize {
    let n = samples.len().min(out.len());
    for (o, &s) in out[..n].iter_mut().zip(&samples[..n]) {
        *o = ulaw_encode_sample(s);
    }
    n
}

/// Decodes µ-law. Returns the samples written (`min(payload.len(), out.len())`).
pub fn decode_ulaw(payload: &[u8], out: &mut [i16]) -> usize {
    let n = payload.len().min(out.len());
    for (o, &c) in out[..n].iter_mut().zip(&payload[..n]) {
        *o = ulaw_decode_sample(c);
    }
    n
}

/// Encodes samples to A-law. Returns the bytes written.
pub fn encode_alaw(samples: &[i16], out: &mut [u8]) -> usize {
    let n = samples.len().min(out.len());
    for (o, &s) in out[..n].iter_mut().zip(&samples[..n]) {
        *o = alaw_encode_sample(s);
    }
    n
}

/// Decodes A-law. Returns the samples written.
pub fn decode_alaw(payload: &[u8], out: &mut [i16]) -> usize {
    let n = payload.len().min(out.len());
    for (o, &c) in out[..n].iter_mut().zip(&payload[..n]) {
        *o = alaw_decode_sample(c);
    }
    n
}

/// The µ-law code for silence (linear 0).
pub const ULAW_SILENCE: u8 = 0xff;
/// The A-law code for silence (linear +8, the smallest positive level).
pub const ALAW_SILENCE: u8 = 0xd5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itu_reference_values() {
        assert_eq!(ulaw_decode_sample(0xff), 0);
        assert_eq!(ulaw_decode_sample(0x7f), 0);
        assert_eq!(ulaw_decode_sample(0x80), 32124);
        assert_eq!(ulaw_decode_sample(0x00), -32124);
        assert_eq!(ulaw_encode_sample(0), 0xff);
        assert_eq!(ulaw_encode_sample(i16::MAX), 0x80);
        assert_eq!(ulaw_encode_sample(i16::MIN), 0x00);
        assert_eq!(alaw_decode_sample(0xd5), 8);
        assert_eq!(alaw_decode_sample(0x55), -8);
        assert_eq!(alaw_decode_sample(0xaa), 32256);
        assert_eq!(alaw_decode_sample(0x2a), -32256);
        assert_eq!(alaw_encode_sample(0), 0xd5);
        assert_eq!(alaw_encode_sample(-1), 0x55);
        assert_eq!(alaw_encode_sample(i16::MAX), 0xaa);
        assert_eq!(alaw_encode_sample(i16::MIN), 0x2a);
        // segment end points: first µ-law segment step is 8 (16-bit scale)
        assert_eq!(ulaw_decode_sample(0xfe), 8);
        assert_eq!(ulaw_decode_sample(0xf0), 120);
        // second segment starts at 132 with a step of 16
        assert_eq!(ulaw_decode_sample(0xef), 132);
        assert_eq!(ulaw_decode_sample(0xee), 148);
    }

    #[test]
    fn every_code_word_survives_decode_encode() {
        for c in 0..=255u8 {
            let l = ulaw_decode_sample(c);
            if c != 0x7f {
                // 0x7f is "negative zero"; it decodes to 0, which encodes as 0xff
                assert_eq!(ulaw_encode_sample(l), c, "µ-law {c:#04x} -> {l}");
            }
            let l = alaw_decode_sample(c);
            assert_eq!(alaw_encode_sample(l), c, "A-law {c:#04x} -> {l}");
        }
    }

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        for x in i16::MIN..=i16::MAX {
            let xi = x as i32;
            // µ-law: step 2^(seg+3) on the 16-bit scale; error <= half a step plus the 2 bits
            // dropped before quantising. Outside the last segment the output clips at 32124.
            let y = ulaw_decode_sample(ulaw_encode_sample(x)) as i32;
            if xi.abs() <= 32124 {
                let bound = (xi.abs() / 32) + 8;
                assert!((y - xi).abs() <= bound, "µ-law {x} -> {y}");
            }
            let y = alaw_decode_sample(alaw_encode_sample(x)) as i32;
            if xi.abs() <= 32256 {
                let bound = (xi.abs() / 32).max(16) + 8;
                assert!((y - xi).abs() <= bound, "A-law {x} -> {y}");
            }
            assert!(y.signum() * xi.signum() >= 0, "A-law sign {x}");
        }
    }

    #[test]
    fn digital_milliwatt_is_a_zero_dbm0_sine() {
        // G.711 Table 5: the µ-law digital milliwatt, a 1 kHz tone at 0 dBm0.
        let dmw = [0x1e, 0x0b, 0x0b, 0x1e, 0x9e, 0x8b, 0x8b, 0x9e];
        let mut pcm = [0i16; 8];
        decode_ulaw(&dmw, &mut pcm);
        // symmetric half-waves
        for i in 0..4 {
            assert_eq!(pcm[i], -pcm[i + 4]);
        }
        let rms = (pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / 8.0).sqrt();
        // 0 dBm0 is 3.17 dB below µ-law overload (32124 * sqrt(2)/2 * 10^(-3.17/20) ~= 15_700)
        assert!((rms - 15_700.0).abs() < 400.0, "rms {rms}");
    }

    #[test]
    fn sine_snr_is_toll_quality() {
        for (enc, dec) in [
            (
                ulaw_encode_sample as fn(i16) -> u8,
                ulaw_decode_sample as fn(u8) -> i16,
            ),
            (alaw_encode_sample, alaw_decode_sample),
        ] {
            // 1020 Hz at about -10 dBm0
            let (mut sig, mut err) = (0f64, 0f64);
            for n in 0..8000 {
                let x = (7000.0 * (2.0 * std::f64::consts::PI * 1020.0 * n as f64 / 8000.0).sin())
                    as i16;
                let y = dec(enc(x));
                sig += (x as f64).powi(2);
                err += (x as f64 - y as f64).powi(2);
            }
            let snr = 10.0 * (sig / err).log10();
            assert!(snr > 35.0, "snr {snr}");
        }
    }

    #[test]
    fn transcoding_matches_linear_path() {
        for c in 0..=255u8 {
            assert_eq!(
                ulaw_to_alaw(c),
                alaw_encode_sample(ulaw_decode_sample(c)),
                "{c:#04x}"
            );
            assert_eq!(alaw_to_ulaw(c), ulaw_encode_sample(alaw_decode_sample(c)));
        }
    }

    #[test]
    fn slices_respect_short_outputs() {
        let s = [0i16; 160];
        let mut out = [0u8; 80];
        assert_eq!(encode_ulaw(&s, &mut out), 80);
        assert!(out.iter().all(|&b| b == ULAW_SILENCE));
        assert_eq!(encode_alaw(&s, &mut out), 80);
        assert!(out.iter().all(|&b| b == ALAW_SILENCE));
        let mut pcm = [1i16; 40];
        assert_eq!(decode_ulaw(&out, &mut pcm), 40);
        assert_eq!(decode_alaw(&out, &mut pcm), 40);
        assert!(pcm.iter().all(|&x| x == 8));
    }
}
