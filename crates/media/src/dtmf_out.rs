//! Sending DTMF digits on a stream, one 20 ms tick at a time: as RFC 4733 events when the peer
//! negotiated telephone-event, else as in-band tones in place of the stream's audio.
//!
//! Each digit lasts [`DIGIT_MS`] and is followed by [`GAP_MS`] of the stream's own audio (ITU-T
//! Q.23 asks for at least 40 ms of each). An RFC 4733 digit is sent by the sans-I/O
//! [`DtmfSender`] with one update per packet: durations 160, 320, ... up to the full length,
//! then the end packet three times, all with the event's start timestamp; no audio packet goes
//! out meanwhile. The sender is driven by the tick count, not the wall clock, so the durations
//! are exact whatever the scheduling.

use std::time::{Duration, Instant};

use switchboard_rtp::telephone_event::{digit_to_event, DtmfSender, EventPacket};
use switchboard_rtp::tone::{ToneGenerator, ToneSpec};

use crate::audio::{FRAME, RATE};
use crate::engine::PTIME;

/// How long each digit sounds, ms.
pub const DIGIT_MS: u32 = 100;
/// Pause after each digit, ms.
pub const GAP_MS: u32 = 100;
/// The volume of our events (RFC 4733: -10 dBm0).
const VOLUME: u8 = 10;
/// Most digits one command may send.
pub const MAX_DIGITS: usize = 64;

/// What a tick's packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DtmfTick {
    /// Send this event packet instead of audio.
    Event(EventPacket),
    /// The frame was overwritten with the tone: send it as audio.
    Tone,
    /// Nothing to do this tick: send the stream's audio.
    Audio,
}

#[derive(Debug)]
enum State {
    /// Between digits: ticks of the stream's audio left.
    Gap(u32),
    Event {
        sender: DtmfSender,
        base: Instant,
        ticks: u32,
    },
    Tone(ToneGenerator),
}

#[derive(Debug)]
pub(crate) struct DtmfOut {
    digits: Vec<char>,
    next: usize,
    rfc4733: bool,
    state: State,
}

/// Checks a digit string: 1 to [`MAX_DIGITS`] of `0-9 * # A-D`.
pub fn valid_digits(digits: &str) -> Result<(), String> {
    if digits.is_empty() {
        return Err("no digits".into());
    }
    if digits.chars().count() > MAX_DIGITS {
        return Err(format!("more than {MAX_DIGITS} digits"));
    }
    match digits.chars().find(|&c| digit_to_event(c).is_none()) {
        Some(c) => Err(format!("{c:?} is not a DTMF digit (0-9 * # A-D)")),
        None => Ok(()),
    }
}

impl DtmfOut {
    /// Digits that are not DTMF are skipped (callers check with [`valid_digits`] first).
    pub(crate) fn new(digits: &str, rfc4733: bool) -> DtmfOut {
        DtmfOut {
            digits: digits
                .chars()
                .filter(|&c| digit_to_event(c).is_some())
                .take(MAX_DIGITS)
                .collect(),
            next: 0,
            rfc4733,
            state: State::Gap(0),
        }
    }

    /// Queues more digits after those still to send (up to [`MAX_DIGITS`] waiting).
    pub(crate) fn append(&mut self, digits: &str) {
        self.digits.drain(..self.next);
        self.next = 0;
        let room = MAX_DIGITS.saturating_sub(self.digits.len());
        let more = digits.chars().filter(|&c| digit_to_event(c).is_some());
        self.digits.extend(more.take(room));
    }

    /// All digits and their pauses are out.
    pub(crate) fn is_done(&self) -> bool {
        self.next >= self.digits.len() && matches!(self.state, State::Gap(0))
    }

    /// One tick. `timestamp` is the RTP timestamp this tick's packet would carry; `frame` is
    /// the tick's audio, overwritten with the tone when sending in-band.
    pub(crate) fn tick(&mut self, timestamp: u32, frame: &mut [i16; FRAME]) -> DtmfTick {
        if let State::Gap(0) = self.state {
            let Some(&digit) = self.digits.get(self.next) else {
                return DtmfTick::Audio;
            };
            self.next += 1;
            self.state = self.start(digit, timestamp);
        }
        match &mut self.state {
            State::Gap(n) => {
                *n -= 1;
                DtmfTick::Audio
            }
            State::Event {
                sender,
                base,
                ticks,
            } => {
                // Each packet reports the media time up to the end of its own 20 ms.
                *ticks += 1;
                let packet = sender.poll_packet(*base + PTIME * *ticks);
                if !sender.is_active() {
                    self.state = State::Gap(GAP_MS / 20);
                }
                packet.map_or(DtmfTick::Audio, DtmfTick::Event)
            }
            State::Tone(g) => {
                let n = g.fill(&mut frame[..]);
                frame[n..].fill(0);
                if g.is_done() {
                    self.state = State::Gap(0);
                }
                DtmfTick::Tone
            }
        }
    }

    fn start(&self, digit: char, timestamp: u32) -> State {
        if !self.rfc4733 {
            return match ToneSpec::dtmf(digit, DIGIT_MS, GAP_MS) {
                Some(spec) => State::Tone(ToneGenerator::new(spec, RATE)),
                None => State::Gap(0),
            };
        }
        let mut sender = DtmfSender::with_timing(RATE, PTIME, 3, PTIME);
        let base = Instant::now();
        let length = Duration::from_millis(u64::from(DIGIT_MS));
        let event = digit_to_event(digit).unwrap_or(0);
        match sender.start(event, length, VOLUME, timestamp, base) {
            Ok(()) => State::Event {
                sender,
                base,
                ticks: 0,
            },
            Err(_) => State::Gap(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4733_digits_grow_end_three_times_then_pause() {
        let mut d = DtmfOut::new("1#", true);
        let mut frame = [7i16; FRAME];
        let mut ts = 1000u32;
        let mut got = Vec::new();
        while !d.is_done() {
            got.push(match d.tick(ts, &mut frame) {
                DtmfTick::Event(p) => format!(
                    "{}{}@{}:{}{}",
                    if p.marker { "M" } else { "" },
                    p.event.event,
                    p.timestamp,
                    p.event.duration,
                    if p.event.end { "E" } else { "" }
                ),
                DtmfTick::Audio => "a".into(),
                DtmfTick::Tone => "t".into(),
            });
            ts += 160;
            assert!(got.len() < 100);
        }
        assert_eq!(frame, [7; FRAME], "the audio is left alone");
        let first =
            "M1@1000:160 1@1000:320 1@1000:480 1@1000:640 1@1000:800E 1@1000:800E 1@1000:800E";
        let second = "M11@2920:160 11@2920:320 11@2920:480 11@2920:640 11@2920:800E 11@2920:800E 11@2920:800E";
        assert_eq!(
            got.join(" "),
            format!("{first} a a a a a {second} a a a a a")
        );
        assert_eq!(d.tick(ts, &mut frame), DtmfTick::Audio);
    }

    #[test]
    fn inband_digits_are_tones_then_silence() {
        let mut d = DtmfOut::new("5", false);
        let mut frame = [0i16; FRAME];
        let mut ticks = Vec::new();
        while !d.is_done() {
            assert_eq!(d.tick(0, &mut frame), DtmfTick::Tone);
            ticks.push(frame.iter().map(|&s| (s as i32).abs()).max().unwrap_or(0));
        }
        assert_eq!(ticks.len(), 10, "100 ms of tone and 100 ms of silence");
        assert!(ticks[..5].iter().all(|&m| m > 5000), "{ticks:?}");
        assert!(ticks[5..].iter().all(|&m| m == 0), "{ticks:?}");
        let mut det = switchboard_rtp::dtmf::DtmfDetector::default();
        let mut d = DtmfOut::new("*9", false);
        let mut heard = String::new();
        while !d.is_done() {
            d.tick(0, &mut frame);
            det.process(&frame, |x| heard.push(x.digit));
        }
        assert_eq!(heard, "*9");
    }

    #[test]
    fn bad_digit_strings_are_refused() {
        assert!(valid_digits("0123456789*#ABCDabcd").is_ok());
        assert!(valid_digits("").is_err());
        assert!(valid_digits("12x").unwrap_err().contains("'x'"));
        assert!(valid_digits(&"1".repeat(65)).is_err());
    }
}
