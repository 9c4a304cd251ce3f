//! Audio codecs. All work on caller-provided slices and never allocate.
//!
//! Linear audio is `i16` (16-bit two's complement, host order). Encoders return the number of
//! bytes written, decoders the number of samples written; when the output is shorter than needed
//! they stop at the end of the output (the return value says how far they got).

pub mod g711;
pub mod g722;
pub mod halfband;
pub mod l16;

/// The codecs this crate implements, with their RTP facts (RFC 3551 static payload types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecKind {
    /// G.711 µ-law, `PCMU/8000`, static payload type 0.
    Pcmu,
    /// G.711 A-law, `PCMA/8000`, static payload type 8.
    Pcma,
    /// G.722 at 64 kbit/s, `G722/8000` in SDP (RFC 3551 §4.5.2), 16 kHz audio, payload type 9.
    G722,
    /// 16-bit linear big-endian, `L16/<rate>`; static types 10 (stereo) and 11 (mono) at 44.1 kHz.
    L16,
}

impl CodecKind {
    /// The encoding name as written in `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            CodecKind::Pcmu => "PCMU",
            CodecKind::Pcma => "PCMA",
            CodecKind::G722 => "G722",
            CodecKind::L16 => "L16",
        }
    }

    /// Looks up an `a=rtpmap` encoding name (case-insensitive).
    pub fn from_encoding_name(name: &str) -> Option<CodecKind> {
        [
            CodecKind::Pcmu,
            CodecKind::Pcma,
            CodecKind::G722,
            CodecKind::L16,
        ]
        .into_iter()
        .find(|c| c.encoding_name().eq_ignore_ascii_case(name))
    }

    /// The RTP timestamp units per audio sample. G.722 is the exception: its RTP clock is 8000 Hz
    /// while it carries 16 kHz audio (RFC 3551 §4.5.2), so one sample is half a tick.
    /// Returned as (ticks, samples): RTP ticks advance by `samples * ticks / per`.
    pub fn rtp_ticks_per_sample(self) -> (u32, u32) {
        match self {
            CodecKind::G722 => (1, 2),
            _ => (1, 1),
        }
    }

    /// Audio samples per second of the linear audio this codec carries (mono L16 at the given
    /// clock rate).
    pub fn audio_rate(self, rtp_clock_rate: u32) -> u32 {
        match self {
            CodecKind::G722 => 16_000,
            _ => rtp_clock_rate,
        }
    }

    /// Encoded bytes for `samples` mono samples.
    pub fn encoded_len(self, samples: usize) -> usize {
        match self {
            CodecKind::Pcmu | CodecKind::Pcma => samples,
            CodecKind::G722 => samples / 2,
            CodecKind::L16 => samples * 2,
        }
    }
}
