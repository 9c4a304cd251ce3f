//! Players: a playlist of clips, tones and silences, repeated, producing one 20 ms frame per
//! tick into a caller-provided buffer (no allocation while playing).

use crate::audio::{Audio, FRAME, RATE};
use switchboard_rtp::tone::{ToneGenerator, ToneSpec};

/// One thing to play.
#[derive(Debug, Clone)]
pub enum PlayItem {
    /// A decoded clip (file, HTTP, TTS).
    Audio(Audio),
    /// A tone for `ms` milliseconds (a non-repeating spec may end earlier).
    Tone { spec: ToneSpec, ms: u32 },
    /// Silence.
    Silence { ms: u32 },
}

impl PlayItem {
    fn samples(&self) -> u64 {
        match self {
            PlayItem::Audio(a) => a.len() as u64,
            PlayItem::Tone { ms, .. } | PlayItem::Silence { ms } => *ms as u64 * RATE as u64 / 1000,
        }
    }
}

/// What to play and how often (RFC 4240 `repeat`, `delay`, `duration`).
#[derive(Debug, Clone)]
pub struct Playlist {
    pub items: Vec<PlayItem>,
    /// How many times the list is played; `None` plays it until stopped.
    pub repeat: Option<u32>,
    /// Silence between repetitions, ms.
    pub delay_ms: u32,
    /// Upper bound on the whole play, ms.
    pub max_duration_ms: Option<u32>,
}

impl Playlist {
    /// Plays `items` once.
    pub fn once(items: Vec<PlayItem>) -> Playlist {
        Playlist {
            items,
            repeat: Some(1),
            delay_ms: 0,
            max_duration_ms: None,
        }
    }
}

/// Plays a [`Playlist`].
#[derive(Debug)]
pub struct Player {
    list: Playlist,
    item: usize,
    /// Position inside the current item, in samples.
    pos: u64,
    tone: Option<ToneGenerator>,
    round: u32,
    /// Samples of inter-repetition silence left.
    gap: u64,
    played: u64,
    done: bool,
}

impl Player {
    pub fn new(list: Playlist) -> Player {
        let done = list.items.iter().all(|i| i.samples() == 0) || list.repeat == Some(0);
        let mut p = Player {
            list,
            item: 0,
            pos: 0,
            tone: None,
            round: 0,
            gap: 0,
            played: 0,
            done,
        };
        p.start_item();
        p
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    fn start_item(&mut self) {
        self.pos = 0;
        self.tone = match self.list.items.get(self.item) {
            Some(PlayItem::Tone { spec, .. }) => Some(ToneGenerator::new(*spec, RATE)),
            _ => None,
        };
    }

    /// Advances to the next item, repetition or the end.
    fn next_item(&mut self) {
        self.item += 1;
        if self.item >= self.list.items.len() {
            self.item = 0;
            self.round += 1;
            if self.list.repeat.is_some_and(|r| self.round >= r) {
                self.done = true;
                return;
            }
            self.gap = self.list.delay_ms as u64 * RATE as u64 / 1000;
        }
        self.start_item();
    }

    /// Fills `out` (one frame) and returns how many samples are audio; the rest is zeroed.
    /// When the playlist ends mid-frame the tail is silence and [`Player::is_done`] turns true.
    pub fn fill(&mut self, out: &mut [i16; FRAME]) -> usize {
        let mut n = 0;
        let limit = self
            .list
            .max_duration_ms
            .map(|ms| ms as u64 * RATE as u64 / 1000);
        while n < FRAME && !self.done {
            if limit.is_some_and(|l| self.played >= l) {
                self.done = true;
                break;
            }
            let mut room = FRAME - n;
            if let Some(l) = limit {
                room = room.min((l - self.played) as usize);
            }
            if self.gap > 0 {
                let k = room.min(self.gap as usize);
                out[n..n + k].fill(0);
                self.gap -= k as u64;
                n += k;
                self.played += k as u64;
                continue;
            }
            let Some(item) = self.list.items.get(self.item) else {
                self.done = true;
                break;
            };
            let total = item.samples();
            let left = total.saturating_sub(self.pos) as usize;
            if left == 0 {
                self.next_item();
                continue;
            }
            let k = room.min(left);
            let written = match item {
                PlayItem::Audio(a) => {
                    let p = self.pos as usize;
                    out[n..n + k].copy_from_slice(&a.samples()[p..p + k]);
                    k
                }
                PlayItem::Silence { .. } => {
                    out[n..n + k].fill(0);
                    k
                }
                PlayItem::Tone { .. } => match self.tone.as_mut() {
                    Some(t) => {
                        let w = t.fill(&mut out[n..n + k]);
                        if w < k {
                            // A one-shot tone ended before its duration: skip the rest.
                            self.pos = total;
                        }
                        w
                    }
                    None => 0,
                },
            };
            if written < k && matches!(item, PlayItem::Tone { .. }) {
                n += written;
                self.played += written as u64;
                continue;
            }
            self.pos += k as u64;
            n += k;
            self.played += k as u64;
        }
        out[n..].fill(0);
        self.settle(limit);
        n
    }

    /// Moves past finished items so that the end is known as soon as the last sample is out.
    fn settle(&mut self, limit: Option<u64>) {
        if limit.is_some_and(|l| self.played >= l) {
            self.done = true;
        }
        // Bounded: a full round of empty items ends the list or finds a non-empty one.
        for _ in 0..=self.list.items.len() {
            if self.done || self.gap > 0 {
                return;
            }
            match self.list.items.get(self.item) {
                Some(item) if self.pos >= item.samples() => self.next_item(),
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(n: usize, v: i16) -> PlayItem {
        PlayItem::Audio(Audio::from_samples(vec![v; n]))
    }

    fn frames(p: &mut Player) -> Vec<[i16; FRAME]> {
        let mut v = Vec::new();
        for _ in 0..10_000 {
            if p.is_done() {
                break;
            }
            let mut f = [0; FRAME];
            p.fill(&mut f);
            v.push(f);
        }
        v
    }

    #[test]
    fn clip_plays_in_frames_then_ends() {
        let mut p = Player::new(Playlist::once(vec![clip(400, 7)]));
        let f = frames(&mut p);
        assert_eq!(f.len(), 3);
        assert!(f[1].iter().all(|&x| x == 7));
        assert_eq!(f[2][79], 7);
        assert_eq!(f[2][80], 0);
    }

    #[test]
    fn repeat_with_delay_and_duration_cap() {
        let mut list = Playlist::once(vec![clip(160, 1), PlayItem::Silence { ms: 20 }]);
        list.repeat = Some(3);
        list.delay_ms = 20;
        let mut p = Player::new(list.clone());
        // 3 x (clip + silence) + 2 gaps = 8 frames
        assert_eq!(frames(&mut p).len(), 8);
        list.repeat = None;
        list.max_duration_ms = Some(1000);
        let mut p = Player::new(list);
        assert_eq!(frames(&mut p).len(), 50);
    }

    #[test]
    fn tone_item_plays_its_duration() {
        let spec = ToneSpec::dtmf('5', 100, 0).expect("digit");
        let mut p = Player::new(Playlist::once(vec![
            PlayItem::Tone { spec, ms: 100 },
            clip(160, 3),
        ]));
        let f = frames(&mut p);
        // 100 ms of tone (800 samples) then the clip: 960 samples = 6 frames.
        assert_eq!(f.len(), 6);
        assert!(f[0].iter().any(|&x| x.abs() > 1000));
        assert!(f[5].iter().all(|&x| x == 3));
    }

    #[test]
    fn empty_playlist_is_done() {
        assert!(Player::new(Playlist::once(vec![])).is_done());
        assert!(Player::new(Playlist::once(vec![PlayItem::Silence { ms: 0 }])).is_done());
    }
}
