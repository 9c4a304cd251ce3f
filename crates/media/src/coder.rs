//! Per-stream codec state. The engine's audio is 8 kHz everywhere (players, recorder, DTMF
//! detector, conference mixer); G.722 streams carry 16 kHz audio, so their frames are
//! upsampled before encoding and decoded audio is downsampled (half-band filters), keeping the
//! telephone band. The ADPCM state of G.722 makes decoding order matter: packets reach
//! [`Coder::decode`] in sequence order (through the stream's reorder buffer).

use switchboard_rtp::codec::g722::{G722Decoder, G722Encoder};
use switchboard_rtp::codec::halfband::{Downsampler2, Upsampler2};
use switchboard_rtp::codec::{g711, l16};

use crate::audio::FRAME;
use crate::engine::{Codec, Encoding};

/// G.722's encoder and decoder with the rate converters around them.
#[derive(Debug, Default)]
struct Wideband {
    enc: G722Encoder,
    dec: G722Decoder,
    up: Upsampler2,
    down: Downsampler2,
}

/// Encodes and decodes one stream's audio; holds the state of stateful codecs.
#[derive(Debug)]
pub(crate) struct Coder {
    codec: Codec,
    /// Allocated once when the stream starts using G.722.
    wideband: Option<Box<Wideband>>,
}

/// 16 kHz samples decoded per step (from 256 G.722 octets).
const WIDE_CHUNK: usize = 512;

impl Coder {
    pub(crate) fn new(codec: Codec) -> Coder {
        let mut c = Coder {
            codec,
            wideband: None,
        };
        c.set_codec(codec);
        c
    }

    /// Decoding depends on the packets before (G.722's ADPCM): feed packets in order.
    pub(crate) fn is_stateful(&self) -> bool {
        self.codec.encoding == Encoding::G722
    }

    /// Switches codec (re-INVITE); a new G.722 stream starts from the reset state.
    pub(crate) fn set_codec(&mut self, codec: Codec) {
        let was = self.codec.encoding;
        self.codec = codec;
        if codec.encoding == Encoding::G722 && (was != Encoding::G722 || self.wideband.is_none()) {
            self.wideband = Some(Box::default());
        }
    }

    /// Encodes a 20 ms frame of 8 kHz audio; returns the payload length.
    pub(crate) fn encode(&mut self, pcm: &[i16; FRAME], out: &mut [u8]) -> usize {
        match (self.codec.encoding, self.wideband.as_mut()) {
            (Encoding::Pcmu, _) => g711::encode_ulaw(pcm, out),
            (Encoding::Pcma, _) => g711::encode_alaw(pcm, out),
            (Encoding::L16, _) => l16::encode(pcm, out),
            (Encoding::G722, Some(w)) => {
                let mut wide = [0i16; 2 * FRAME];
                let n = w.up.process(pcm, &mut wide);
                w.enc.encode(&wide[..n], out)
            }
            (Encoding::G722, None) => 0,
        }
    }

    /// Decodes a payload into 8 kHz samples; returns how many were written.
    pub(crate) fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        match (self.codec.encoding, self.wideband.as_mut()) {
            (Encoding::Pcmu, _) => g711::decode_ulaw(payload, out),
            (Encoding::Pcma, _) => g711::decode_alaw(payload, out),
            (Encoding::L16, _) => l16::decode(payload, out),
            (Encoding::G722, Some(w)) => {
                let mut wide = [0i16; WIDE_CHUNK];
                let mut n = 0;
                for chunk in payload.chunks(WIDE_CHUNK / 2) {
                    let k = w.dec.decode(chunk, &mut wide);
                    n += w.down.process(&wide[..k], &mut out[n..]);
                }
                n
            }
            (Encoding::G722, None) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn g722_frames_are_160_octets_and_decode_to_the_same_tone() {
        let input = tone(1000.0, 8000);
        let mut tx = Coder::new(Codec::G722);
        let mut rx = Coder::new(Codec::G722);
        let mut payload = [0u8; 400];
        let mut out = Vec::new();
        let mut pcm = [0i16; 400];
        for frame in input.chunks_exact(FRAME) {
            let f: &[i16; FRAME] = frame.try_into().expect("frame");
            let n = tx.encode(f, &mut payload);
            assert_eq!(n, 160, "one octet per 8 kHz tick");
            let k = rx.decode(&payload[..n], &mut pcm);
            assert_eq!(k, FRAME);
            out.extend_from_slice(&pcm[..k]);
        }
        // Past the start-up, the output is the input delayed (filters and QMF) at unity gain.
        let (d, err) = (0..80)
            .map(|d| {
                let e: f64 = (1000..7000)
                    .map(|i| (out[i + d] as f64 - input[i] as f64).powi(2))
                    .sum::<f64>();
                (d, e / 6000.0)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("delays");
        let snr = 10.0 * (8000.0f64.powi(2) / 2.0 / err).log10();
        assert!(snr > 25.0, "delay {d}: SNR {snr:.1} dB");
    }

    #[test]
    fn switching_codec_keeps_working_and_odd_payloads_do_not_panic() {
        let mut c = Coder::new(Codec::PCMU);
        let mut pcm = [0i16; 2048];
        c.set_codec(Codec::G722);
        assert_eq!(c.decode(&[0x55; 1499], &mut pcm), 1499);
        assert_eq!(c.decode(&[0x55; 3], &mut pcm[..2]), 2);
        c.set_codec(Codec::PCMA);
        assert_eq!(c.decode(&[0xd5; 160], &mut pcm), 160);
    }
}
