//! RFC 4733 telephone-event (DTMF over RTP): payload codec, sender and receiver state machines.
//!
//! The sender follows RFC 4733 §2.5.1: the first packet has the marker bit, every packet of one
//! event carries the event's start timestamp, the duration grows with each update (every 50 ms by
//! default), and the end is sent three times with the final duration. The receiver reports each
//! digit exactly once however many of those packets arrive, are duplicated or lost, and reports
//! the end once (from the first end packet, or after a timeout when all end packets were lost).

use std::time::{Duration, Instant};
use thiserror::Error;

/// Payload length of one event.
pub const EVENT_LEN: usize = 4;

/// A malformed telephone-event payload or an invalid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EventError {
    #[error("telephone-event payload of {0} bytes, need 4")]
    TooShort(usize),
    #[error("an event is already being sent")]
    Busy,
    #[error("event code {0} is not a DTMF event (0-16)")]
    NotDtmf(u8),
}

/// One telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code: 0-9, 10 = `*`, 11 = `#`, 12-15 = A-D, 16 = flash.
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Power level in -dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far, in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the first event of a payload (extra bytes, as in RFC 2198 redundancy blocks
    /// stripped by the caller, are ignored).
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, EventError> {
        if payload.len() < EVENT_LEN {
            return Err(EventError::TooShort(payload.len()));
        }
        Ok(TelephoneEvent {
            event: payload[0],
            end: payload[1] & 0x80 != 0,
            volume: payload[1] & 0x3f,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }

    /// The 4 payload bytes.
    pub fn to_bytes(&self) -> [u8; EVENT_LEN] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }

    /// The DTMF character for this event, if it is one.
    pub fn digit(&self) -> Option<char> {
        event_to_digit(self.event)
    }
}

/// Maps a DTMF character (`0-9 * # A-D`, case-insensitive) to its event code.
pub fn digit_to_event(c: char) -> Option<u8> {
    Some(match c {
        '0'..='9' => c as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => c as u8 - b'A' + 12,
        'a'..='d' => c as u8 - b'a' + 12,
        _ => return None,
    })
}

/// Maps an event code to its DTMF character (16, flash, has none).
pub fn event_to_digit(e: u8) -> Option<char> {
    Some(match e {
        0..=9 => (b'0' + e) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + e - 12) as char,
        _ => return None,
    })
}

/// An event packet to send: the caller puts it in an RTP packet with the negotiated
/// telephone-event payload type (see `RtpSender::write_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    /// Set on the first packet of the event.
    pub marker: bool,
    /// The event's start timestamp (the same for all its packets).
    pub timestamp: u32,
    pub event: TelephoneEvent,
}

impl EventPacket {
    pub fn payload(&self) -> [u8; EVENT_LEN] {
        self.event.to_bytes()
    }
}

#[derive(Debug, Clone)]
struct Sending {
    event: u8,
    volume: u8,
    timestamp: u32,
    started: Instant,
    /// Planned length in timestamp units.
    length: u16,
    next_at: Instant,
    first_sent: bool,
    /// End packets still to send.
    ends_left: u8,
}

/// Sends one event at a time as RFC 4733 packets. Drive it with [`DtmfSender::poll_packet`]
/// at or after [`DtmfSender::poll_timeout`].
#[derive(Debug, Clone)]
pub struct DtmfSender {
    clock_rate: u32,
    update_interval: Duration,
    end_spacing: Duration,
    end_repeats: u8,
    sending: Option<Sending>,
}

impl DtmfSender {
    /// A sender with the usual timing: updates every 50 ms, three end packets 20 ms apart.
    pub fn new(clock_rate: u32) -> DtmfSender {
        DtmfSender::with_timing(
            clock_rate,
            Duration::from_millis(50),
            3,
            Duration::from_millis(20),
        )
    }

    /// A sender with explicit timing.
    pub fn with_timing(
        clock_rate: u32,
        update_interval: Duration,
        end_repeats: u8,
        end_spacing: Duration,
    ) -> DtmfSender {
        DtmfSender {
            clock_rate: clock_rate.max(1),
            update_interval: update_interval.max(Duration::from_millis(1)),
            end_spacing,
            end_repeats: end_repeats.max(1),
            sending: None,
        }
    }

    fn ticks(&self, d: Duration) -> u16 {
        ((d.as_nanos() * self.clock_rate as u128) / 1_000_000_000).min(u16::MAX as u128) as u16
    }

    /// Starts an event of `length` (capped at 65535 timestamp units, about 8 s at 8 kHz) at
    /// RTP timestamp `timestamp`. The first packet is due immediately.
    pub fn start(
        &mut self,
        event: u8,
        length: Duration,
        volume: u8,
        timestamp: u32,
        now: Instant,
    ) -> Result<(), EventError> {
        if self.sending.is_some() {
            return Err(EventError::Busy);
        }
        if event > 16 {
            return Err(EventError::NotDtmf(event));
        }
        self.sending = Some(Sending {
            event,
            volume: volume.min(63),
            timestamp,
            started: now,
            length: self.ticks(length).max(1),
            next_at: now,
            first_sent: false,
            ends_left: self.end_repeats,
        });
        Ok(())
    }

    /// Ends the current event early (key released): the end packets follow at once.
    pub fn stop(&mut self, now: Instant) {
        let elapsed = self
            .sending
            .as_ref()
            .map(|s| self.ticks(now.saturating_duration_since(s.started)));
        if let (Some(s), Some(elapsed)) = (self.sending.as_mut(), elapsed) {
            if elapsed < s.length {
                s.length = elapsed.max(1);
                s.next_at = now;
            }
        }
    }

    /// True while an event (including its end packets) is being sent.
    pub fn is_active(&self) -> bool {
        self.sending.is_some()
    }

    /// When the next packet is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sending.as_ref().map(|s| s.next_at)
    }

    /// The next packet, if one is due at `now`.
    pub fn poll_packet(&mut self, now: Instant) -> Option<EventPacket> {
        let update = self.update_interval;
        let spacing = self.end_spacing;
        let elapsed = self
            .sending
            .as_ref()
            .map(|s| self.ticks(now.saturating_duration_since(s.started)))?;
        let s = self.sending.as_mut()?;
        if now < s.next_at {
            return None;
        }
        let marker = !s.first_sent;
        s.first_sent = true;
        let end = elapsed >= s.length || s.ends_left < self.end_repeats;
        let duration = if end { s.length } else { elapsed };
        let packet = EventPacket {
            marker,
            timestamp: s.timestamp,
            event: TelephoneEvent {
                event: s.event,
                end,
                volume: s.volume,
                duration,
            },
        };
        if end {
            s.ends_left -= 1;
            if s.ends_left == 0 {
                self.sending = None;
            } else {
                s.next_at = now + spacing;
            }
        } else {
            // next update, but no later than the planned end
            let end_at = s.started
                + Duration::from_nanos(
                    (s.length as u64 * 1_000_000_000).div_ceil(self.clock_rate as u64),
                );
            s.next_at = (now + update).min(end_at);
        }
        Some(packet)
    }
}

/// What the receiver makes of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// A new event started (its first packet seen).
    Begin,
    /// The event that began earlier ended, with its final duration in timestamp units.
    End { duration: u16 },
    /// A new event seen only through its end packets (everything before was lost).
    BeginAndEnd { duration: u16 },
}

/// An event report from [`DtmfReceiver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventReport {
    pub event: u8,
    /// The event's RTP timestamp.
    pub timestamp: u32,
    pub kind: ReportKind,
}

impl EventReport {
    /// True for the one report per event that announces it (count digits with this).
    pub fn is_new_digit(&self) -> bool {
        matches!(
            self.kind,
            ReportKind::Begin | ReportKind::BeginAndEnd { .. }
        )
    }

    pub fn digit(&self) -> Option<char> {
        event_to_digit(self.event)
    }
}

#[derive(Debug, Clone, Copy)]
struct Receiving {
    event: u8,
    timestamp: u32,
    duration: u16,
    last_seen: Instant,
}

/// Turns received telephone-event packets into one report per digit.
#[derive(Debug, Clone)]
pub struct DtmfReceiver {
    current: Option<Receiving>,
    /// Timestamps of recently finished events: their late or retransmitted packets are ignored.
    finished: [Option<u32>; 8],
    next_finished: usize,
    timeout: Duration,
}

impl Default for DtmfReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl DtmfReceiver {
    /// A receiver that ends an event 300 ms after its last packet if no end packet arrives.
    pub fn new() -> DtmfReceiver {
        DtmfReceiver::with_timeout(Duration::from_millis(300))
    }

    pub fn with_timeout(timeout: Duration) -> DtmfReceiver {
        DtmfReceiver {
            current: None,
            finished: [None; 8],
            next_finished: 0,
            timeout,
        }
    }

    fn finish(&mut self, timestamp: u32) {
        self.finished[self.next_finished] = Some(timestamp);
        self.next_finished = (self.next_finished + 1) % self.finished.len();
    }

    /// Handles the payload of a telephone-event RTP packet with RTP timestamp `timestamp`.
    pub fn on_packet(
        &mut self,
        timestamp: u32,
        payload: &[u8],
        now: Instant,
    ) -> Result<Option<EventReport>, EventError> {
        let ev = TelephoneEvent::parse(payload)?;
        if self.finished.contains(&Some(timestamp)) {
            return Ok(None);
        }
        if let Some(cur) = self.current.as_mut() {
            if cur.timestamp == timestamp {
                cur.last_seen = now;
                cur.duration = cur.duration.max(ev.duration);
                if ev.end {
                    let (event, duration) = (cur.event, cur.duration);
                    self.current = None;
                    self.finish(timestamp);
                    return Ok(Some(EventReport {
                        event,
                        timestamp,
                        kind: ReportKind::End { duration },
                    }));
                }
                return Ok(None);
            }
            // A new event while the previous never ended: its end packets were lost.
            let old = cur.timestamp;
            self.current = None;
            self.finish(old);
        }
        if ev.end {
            self.finish(timestamp);
            return Ok(Some(EventReport {
                event: ev.event,
                timestamp,
                kind: ReportKind::BeginAndEnd {
                    duration: ev.duration,
                },
            }));
        }
        self.current = Some(Receiving {
            event: ev.event,
            timestamp,
            duration: ev.duration,
            last_seen: now,
        });
        Ok(Some(EventReport {
            event: ev.event,
            timestamp,
            kind: ReportKind::Begin,
        }))
    }

    /// When an unfinished event times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current.map(|c| c.last_seen + self.timeout)
    }

    /// Ends an event whose end packets never came.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<EventReport> {
        let cur = self.current?;
        if now < cur.last_seen + self.timeout {
            return None;
        }
        self.current = None;
        self.finish(cur.timestamp);
        Some(EventReport {
            event: cur.event,
            timestamp: cur.timestamp,
            kind: ReportKind::End {
                duration: cur.duration,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_sender(s: &mut DtmfSender, t0: Instant) -> Vec<(u64, EventPacket)> {
        let mut out = Vec::new();
        // drive in 5 ms steps like a timer wheel would
        for ms in 0..2000u64 {
            let now = t0 + Duration::from_millis(ms);
            while let Some(p) = s.poll_packet(now) {
                out.push((ms, p));
            }
            if !s.is_active() {
                break;
            }
        }
        out
    }

    #[test]
    fn payload_round_trip_and_digits() {
        let e = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(e.to_bytes(), [11, 0x8a, 0x03, 0x20]);
        assert_eq!(TelephoneEvent::parse(&e.to_bytes()).unwrap(), e);
        assert_eq!(e.digit(), Some('#'));
        assert_eq!(TelephoneEvent::parse(&[1, 2]), Err(EventError::TooShort(2)));
        for c in "0123456789*#ABCD".chars() {
            assert_eq!(event_to_digit(digit_to_event(c).unwrap()), Some(c));
        }
        assert_eq!(digit_to_event('x'), None);
        assert_eq!(event_to_digit(16), None);
    }

    #[test]
    fn sender_marks_first_updates_every_50ms_and_ends_three_times() {
        let t0 = Instant::now();
        let mut s = DtmfSender::new(8000);
        s.start(5, Duration::from_millis(120), 10, 48_000, t0)
            .unwrap();
        assert_eq!(
            s.start(6, Duration::from_millis(100), 10, 0, t0),
            Err(EventError::Busy)
        );
        let pkts = run_sender(&mut s, t0);
        let summary: Vec<_> = pkts
            .iter()
            .map(|(ms, p)| (*ms, p.marker, p.event.end, p.event.duration))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, true, false, 0),
                (50, false, false, 400),
                (100, false, false, 800),
                (120, false, true, 960),
                (140, false, true, 960),
                (160, false, true, 960),
            ]
        );
        assert!(pkts
            .iter()
            .all(|(_, p)| p.timestamp == 48_000 && p.event.event == 5));
        assert!(!s.is_active());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn sender_stop_ends_early() {
        let t0 = Instant::now();
        let mut s = DtmfSender::new(8000);
        s.start(1, Duration::from_secs(2), 10, 0, t0).unwrap();
        assert!(s.poll_packet(t0).unwrap().marker);
        s.stop(t0 + Duration::from_millis(70));
        let p = s.poll_packet(t0 + Duration::from_millis(70)).unwrap();
        assert!(p.event.end);
        assert_eq!(p.event.duration, 560);
    }

    #[test]
    fn receiver_reports_each_digit_once_despite_redundancy() {
        let t0 = Instant::now();
        let mut tx = DtmfSender::new(8000);
        let mut rx = DtmfReceiver::new();
        let mut reports = Vec::new();
        let mut ts = 0u32;
        let mut at = t0;
        for d in "123#".chars() {
            tx.start(
                digit_to_event(d).unwrap(),
                Duration::from_millis(100),
                10,
                ts,
                at,
            )
            .unwrap();
            for (ms, p) in run_sender(&mut tx, at) {
                let now = at + Duration::from_millis(ms);
                // every packet delivered twice (network duplication)
                for _ in 0..2 {
                    if let Some(r) = rx.on_packet(p.timestamp, &p.payload(), now).unwrap() {
                        reports.push(r);
                    }
                }
            }
            at += Duration::from_millis(300);
            ts += 2400;
        }
        let digits: String = reports
            .iter()
            .filter(|r| r.is_new_digit())
            .filter_map(|r| r.digit())
            .collect();
        assert_eq!(digits, "123#");
        let ends = reports
            .iter()
            .filter(|r| r.kind == ReportKind::End { duration: 800 })
            .count();
        assert_eq!(ends, 4);
    }

    #[test]
    fn receiver_handles_loss_of_start_or_of_all_ends() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new();
        let ev = |e, end, d| {
            TelephoneEvent {
                event: e,
                end,
                volume: 10,
                duration: d,
            }
            .to_bytes()
        };
        // only the end packets of '7' arrive
        let r = rx.on_packet(1000, &ev(7, true, 800), t0).unwrap().unwrap();
        assert_eq!(r.kind, ReportKind::BeginAndEnd { duration: 800 });
        assert!(r.is_new_digit());
        assert_eq!(rx.on_packet(1000, &ev(7, true, 800), t0).unwrap(), None);
        // '8' starts, its ends are lost: the timeout ends it once
        let r = rx.on_packet(5000, &ev(8, false, 400), t0).unwrap().unwrap();
        assert_eq!(r.kind, ReportKind::Begin);
        assert_eq!(rx.handle_timeout(t0 + Duration::from_millis(100)), None);
        let r = rx.handle_timeout(t0 + Duration::from_millis(300)).unwrap();
        assert_eq!(r.kind, ReportKind::End { duration: 400 });
        // a late end retransmission for '8' is ignored
        assert_eq!(rx.on_packet(5000, &ev(8, true, 800), t0).unwrap(), None);
        // '9' starts, ends lost, then '0' starts: '0' is still a new digit
        rx.on_packet(9000, &ev(9, false, 0), t0).unwrap();
        let r = rx.on_packet(12000, &ev(0, false, 0), t0).unwrap().unwrap();
        assert_eq!((r.digit(), r.kind), (Some('0'), ReportKind::Begin));
        // same digit pressed again has a new timestamp: reported again
        rx.on_packet(12000, &ev(0, true, 800), t0).unwrap();
        let r = rx.on_packet(15000, &ev(0, false, 0), t0).unwrap().unwrap();
        assert!(r.is_new_digit());
    }
}
