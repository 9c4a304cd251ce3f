//! The recorder: collects a stream's received audio at the place its RTP timestamps say (so
//! reordered packets land right and lost ones leave silence), with an optional beep first, a
//! maximum length, final-silence detection and DTMF termination. Time limits run on the pacing
//! clock (one call per 20 ms tick), not on the amount of audio received.

use crate::audio::{FRAME, RATE};

/// How to record.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordParams {
    /// Play a 200 ms 1 kHz beep before recording starts.
    pub beep: bool,
    /// Stop after this long, ms.
    pub max_time_ms: u32,
    /// Stop after this much silence, ms (`None`: never). Counted from the start until the
    /// caller speaks, so it also ends a recording where nothing is said.
    pub final_silence_ms: Option<u32>,
    /// A DTMF digit stops the recording.
    pub dtmf_term: bool,
    /// Mean absolute sample value above which a frame counts as speech.
    pub silence_threshold: u16,
}

impl Default for RecordParams {
    fn default() -> Self {
        RecordParams {
            beep: false,
            max_time_ms: 60_000,
            final_silence_ms: None,
            dtmf_term: true,
            silence_threshold: 300,
        }
    }
}

/// Why a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordEnd {
    MaxTime,
    FinalSilence,
    Dtmf(char),
    /// Stopped by a command or because the stream went away.
    Stopped,
}

/// A finished recording: 8 kHz mono samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub samples: Vec<i16>,
    pub end: RecordEnd,
    /// Whether anything above the silence threshold was heard.
    pub heard_speech: bool,
}

#[derive(Debug)]
pub(crate) struct Recorder {
    params: RecordParams,
    samples: Vec<i16>,
    /// (SSRC, RTP timestamp of sample 0) of the current audio source.
    base: Option<(u32, u32)>,
    /// Ticks since recording started.
    ticks: u32,
    silent_ticks: u32,
    voiced_this_tick: bool,
    heard_speech: bool,
    /// Still beeping: audio is not recorded yet.
    pub(crate) beeping: bool,
}

fn ms_to_ticks(ms: u32) -> u32 {
    ms.div_ceil(20)
}

impl Recorder {
    pub(crate) fn new(params: RecordParams) -> Recorder {
        let cap = (params.max_time_ms as usize * RATE as usize / 1000).min(RATE as usize * 3600);
        Recorder {
            beeping: params.beep,
            params,
            samples: Vec::with_capacity(cap + FRAME),
            base: None,
            ticks: 0,
            silent_ticks: 0,
            voiced_this_tick: false,
            heard_speech: false,
        }
    }

    fn max_samples(&self) -> usize {
        self.params.max_time_ms as usize * RATE as usize / 1000
    }

    /// Received audio with its RTP timestamp (8 kHz clock) and SSRC.
    pub(crate) fn on_audio(&mut self, ssrc: u32, timestamp: u32, pcm: &[i16]) {
        if self.beeping {
            return;
        }
        let base = match self.base {
            Some((s, b)) if s == ssrc => b,
            _ => {
                // First audio, or a new source: continue where the recording is.
                let b = timestamp.wrapping_sub(self.samples.len() as u32);
                self.base = Some((ssrc, b));
                b
            }
        };
        let offset = timestamp.wrapping_sub(base) as i32;
        if offset < 0 {
            return; // older than the first packet
        }
        let at = offset as usize;
        let max = self.max_samples();
        if at >= max {
            return;
        }
        let end = (at + pcm.len()).min(max);
        if self.samples.len() < end {
            self.samples.resize(end, 0);
        }
        self.samples[at..end].copy_from_slice(&pcm[..end - at]);
        let energy: u64 =
            pcm.iter().map(|&s| s.unsigned_abs() as u64).sum::<u64>() / pcm.len().max(1) as u64;
        if energy > self.params.silence_threshold as u64 {
            self.voiced_this_tick = true;
            self.heard_speech = true;
        }
    }

    /// A DTMF digit arrived; returns the end if it stops the recording.
    pub(crate) fn on_dtmf(&mut self, digit: char) -> Option<RecordEnd> {
        (self.params.dtmf_term && !self.beeping).then_some(RecordEnd::Dtmf(digit))
    }

    /// One pacing tick; returns the end when a limit is reached.
    pub(crate) fn on_tick(&mut self) -> Option<RecordEnd> {
        if self.beeping {
            return None;
        }
        self.ticks += 1;
        if self.voiced_this_tick {
            self.silent_ticks = 0;
        } else {
            self.silent_ticks += 1;
        }
        self.voiced_this_tick = false;
        if let Some(fs) = self.params.final_silence_ms {
            if self.silent_ticks >= ms_to_ticks(fs) {
                return Some(RecordEnd::FinalSilence);
            }
        }
        if self.ticks >= ms_to_ticks(self.params.max_time_ms) {
            return Some(RecordEnd::MaxTime);
        }
        None
    }

    pub(crate) fn finish(self, end: RecordEnd) -> Recording {
        Recording {
            samples: self.samples,
            end,
            heard_speech: self.heard_speech,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_audio_by_timestamp() {
        let mut r = Recorder::new(RecordParams::default());
        r.on_audio(1, 1000, &[1; 160]);
        r.on_audio(1, 1320, &[3; 160]); // 1160 lost
        r.on_audio(1, 1160, &[2; 160]); // arrives late
        r.on_audio(1, 900, &[9; 160]); // before the start: dropped
        let rec = r.finish(RecordEnd::Stopped);
        assert_eq!(rec.samples.len(), 480);
        assert_eq!(rec.samples[0], 1);
        assert_eq!(rec.samples[200], 2);
        assert_eq!(rec.samples[479], 3);
    }

    #[test]
    fn new_source_continues() {
        let mut r = Recorder::new(RecordParams::default());
        r.on_audio(1, 5000, &[1; 160]);
        r.on_audio(2, 77, &[2; 160]);
        let rec = r.finish(RecordEnd::Stopped);
        assert_eq!(rec.samples.len(), 320);
        assert_eq!(rec.samples[160], 2);
    }

    #[test]
    fn max_time_and_final_silence() {
        let mut r = Recorder::new(RecordParams {
            max_time_ms: 100,
            ..RecordParams::default()
        });
        let ends: Vec<_> = (0..5).map(|_| r.on_tick()).collect();
        assert_eq!(ends[4], Some(RecordEnd::MaxTime));
        assert!(ends[..4].iter().all(Option::is_none));

        let mut r = Recorder::new(RecordParams {
            final_silence_ms: Some(60),
            ..RecordParams::default()
        });
        let mut ts = 0;
        for _ in 0..10 {
            r.on_audio(1, ts, &[5000; 160]);
            ts += 160;
            assert_eq!(r.on_tick(), None);
        }
        for i in 0..3 {
            r.on_audio(1, ts, &[0; 160]);
            ts += 160;
            let end = r.on_tick();
            assert_eq!(end.is_some(), i == 2);
        }
        let rec = r.finish(RecordEnd::FinalSilence);
        assert!(rec.heard_speech);
        assert_eq!(rec.samples.len(), 13 * 160);
    }

    #[test]
    fn beep_delays_recording_and_dtmf_ends_it() {
        let mut r = Recorder::new(RecordParams {
            beep: true,
            ..RecordParams::default()
        });
        r.on_audio(1, 0, &[1; 160]);
        assert_eq!(r.on_dtmf('1'), None);
        assert_eq!(r.on_tick(), None);
        r.beeping = false;
        r.on_audio(1, 160, &[1; 160]);
        assert_eq!(r.on_dtmf('#'), Some(RecordEnd::Dtmf('#')));
        assert_eq!(r.finish(RecordEnd::Dtmf('#')).samples.len(), 160);
    }
}
