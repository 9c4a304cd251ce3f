//! Switchboard's media engine (the runtime below the `mcp` role).
//!
//! * [`engine`]: [`MediaEngine`] runs RTP endpoints on UDP. One pacing loop per worker thread
//!   (20 ms ticks) drives all of its streams: it drains the sockets that received something,
//!   mixes the conferences and sends one frame per stream from buffers the worker owns, so the
//!   steady state allocates nothing per packet and there is no task or timer per stream.
//!   Commands go in over a channel; [`MediaEvent`]s (DTMF, play done, record done, RTP
//!   timeout) come out.
//! * [`player`]: playlists of clips, tones and silence with RFC 4240 repeat/delay/duration.
//! * [`prompt`]: prompt URLs to playable items: WAV files (any PCM rate, resampled), HTTP
//!   fetches with caching, TTS through an external program (espeak-ng) cached by text and
//!   voice, tones, DTMF, silence.
//! * [`recorder`]: WAV recording with beep, max time, final silence and DTMF termination.
//! * [`mixer`]: N-party conferences (each hears the others), listen and whisper modes, and the
//!   two-leg bridge.
//! * [`audio`]: 8 kHz linear audio, WAV read/write, resampling.
//! * [`dtmf_out`]: sending DTMF digits (RFC 4733 events or in-band tones).
//! * `coder` (codec state per stream: G.711, L16, G.722 with its 8 <-> 16 kHz conversion) and
//!   `reorder` (received audio back in sequence order for decoding, DTMF detection and
//!   recording), `poller` (which quiet sockets have input: one epoll instance per worker).

pub mod audio;
mod coder;
pub mod dtmf_out;
pub mod engine;
pub mod mixer;
mod peer;
pub mod player;
mod poller;
pub mod prompt;
pub mod recorder;
mod reorder;

pub use audio::{Audio, FRAME, RATE};
pub use dtmf_out::{valid_digits, MAX_DIGITS};
pub use engine::{
    Codec, DtmfSource, Encoding, EngineConfig, EngineError, MediaEngine, MediaEvent,
    MediaEventKind, StatsSnapshot, StreamId, StreamParams, PTIME,
};
pub use mixer::ParticipantMode;
pub use player::{PlayItem, Playlist};
pub use prompt::{
    HttpRequest, HttpResponse, PromptCache, PromptError, PromptSettings, PromptSource,
};
pub use recorder::{RecordEnd, RecordParams, Recording};
