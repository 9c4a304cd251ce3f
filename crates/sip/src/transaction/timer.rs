//! One deadline queue for every transaction. Transactions remember the deadline each of their
//! two timer slots is armed for; an entry whose deadline no longer matches its slot was
//! cancelled or re-armed since and is dropped when it comes up (lazy cancellation), so
//! cancelling costs nothing.
//!
//! The queue is a timing wheel: a proxy at a few hundred calls per second holds some 100,000
//! armed timers (Timer B, F, J, L and M run 32 s), and a binary heap of that size spent most of
//! its time in cache misses on every pop. Here arming is a push onto the vector of its
//! [`TICK`]-wide slot; when a slot's time comes its entries move to a small heap (`ready`) that
//! orders them exactly, so timers still fire in deadline order, equal deadlines in arming order.
//! Deadlines beyond the wheel's reach (`SLOTS` * `TICK`, 65.5 s: Timer C runs 3 minutes) wait in a heap of their own.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Side {
    Server,
    Client,
}

/// Each transaction has at most one retransmission timer (A, E, G, or the automatic 100) and
/// one lifetime timer (B, C, D, F, H, I, J, K, L, M) running at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Slot {
    Retransmit,
    Lifetime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Due {
    pub at: Instant,
    /// Arming order: equal deadlines fire in the order they were set, keeping runs repeatable.
    seq: u64,
    pub side: Side,
    pub id: u64,
    pub slot: Slot,
}

/// The width of a wheel slot.
const TICK: Duration = Duration::from_millis(4);
/// Wheel slots: 16384 * 4 ms = 65.5 s, more than 64*T1 with T1 up to 1 s.
const SLOTS: usize = 16_384;
const HORIZON_TICKS: u64 = SLOTS as u64;
const WORDS: usize = SLOTS / 64;

pub(crate) struct TimerQueue {
    /// Tick 0 starts here (the first deadline ever armed).
    base: Option<Instant>,
    /// Every tick before this one has been moved to `ready`.
    cursor: u64,
    /// Entries of ticks `cursor .. cursor + SLOTS`, at `tick % SLOTS`, unordered.
    slots: Vec<Vec<Due>>,
    /// The earliest deadline in each non-empty slot.
    slot_min: Vec<Option<Instant>>,
    /// Which slots are non-empty.
    occupied: Vec<u64>,
    /// Entries of ticks before `cursor`, in exact order.
    ready: BinaryHeap<Reverse<Due>>,
    /// Entries beyond the wheel when they were armed.
    far: BinaryHeap<Reverse<Due>>,
    seq: u64,
    len: usize,
}

impl Default for TimerQueue {
    fn default() -> Self {
        TimerQueue {
            base: None,
            cursor: 0,
            slots: Vec::new(),
            slot_min: Vec::new(),
            occupied: vec![0; WORDS],
            ready: BinaryHeap::new(),
            far: BinaryHeap::new(),
            seq: 0,
            len: 0,
        }
    }
}

impl TimerQueue {
    pub fn arm(&mut self, at: Instant, side: Side, id: u64, slot: Slot) {
        self.seq += 1;
        self.len += 1;
        let due = Due {
            at,
            seq: self.seq,
            side,
            id,
            slot,
        };
        self.place(due);
    }

    /// The earliest deadline queued (possibly a cancelled entry's).
    pub fn next_deadline(&self) -> Option<Instant> {
        let ready = self.ready.peek().map(|Reverse(d)| d.at);
        let wheel = self
            .first_occupied()
            .and_then(|t| self.slot_min[self.index(t)]);
        let far = self.far.peek().map(|Reverse(d)| d.at);
        [ready, wheel, far].into_iter().flatten().min()
    }

    /// The earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        // No base: nothing was ever armed.
        let base = self.base?;
        loop {
            if let Some(Reverse(d)) = self.ready.peek() {
                if d.at <= now {
                    return self.take_ready();
                }
            }
            let wheel_empty = self.len == self.ready.len() + self.far.len();
            if wheel_empty {
                // Nothing is queued before `now`'s tick: move the wheel up to it, or after an
                // idle minute every new deadline would be beyond its reach.
                self.cursor = self.cursor.max(ticks_since(base, now));
            }
            self.pull_far();
            match self.first_occupied() {
                Some(tick) if tick_start(base, tick) <= now => self.advance_to(tick),
                // Far entries are later than anything in the wheel.
                Some(_) => return None,
                None => {
                    let Reverse(d) = self.far.peek()?;
                    if d.at > now {
                        return None;
                    }
                    let Reverse(d) = self.far.pop()?;
                    self.len -= 1;
                    return Some(d);
                }
            }
        }
    }

    /// Removes entries `live` rejects from the front of the queue until the earliest one left
    /// is live, so that [`TimerQueue::next_deadline`] does not wake anyone for nothing.
    pub fn drop_stale_head(&mut self, live: impl Fn(&Due) -> bool) {
        loop {
            if let Some(Reverse(d)) = self.ready.peek() {
                if live(d) {
                    return;
                }
                self.take_ready();
                continue;
            }
            self.pull_far();
            let Some(tick) = self.first_occupied() else {
                return;
            };
            let i = self.index(tick);
            let before = self.slots[i].len();
            self.slots[i].retain(|d| live(d));
            self.len -= before - self.slots[i].len();
            if self.slots[i].is_empty() {
                self.clear_slot(i);
            } else {
                self.slot_min[i] = self.slots[i].iter().map(|d| d.at).min();
                return;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Keeps only the entries `live` accepts: O(n), for when cancelled entries pile up.
    pub fn retain(&mut self, mut live: impl FnMut(&Due) -> bool) {
        self.ready.retain(|Reverse(d)| live(d));
        self.far.retain(|Reverse(d)| live(d));
        let mut len = self.ready.len() + self.far.len();
        for i in 0..self.slots.len() {
            if self.slots[i].is_empty() {
                continue;
            }
            self.slots[i].retain(|d| live(d));
            if self.slots[i].is_empty() {
                self.clear_slot(i);
            } else {
                self.slot_min[i] = self.slots[i].iter().map(|d| d.at).min();
                len += self.slots[i].len();
            }
        }
        self.len = len;
    }

    fn take_ready(&mut self) -> Option<Due> {
        let Reverse(d) = self.ready.pop()?;
        self.len -= 1;
        Some(d)
    }

    /// Puts an entry where its deadline belongs (does not count it).
    fn place(&mut self, due: Due) {
        let base = *self.base.get_or_insert(due.at);
        let tick = ticks_since(base, due.at);
        // Before the cursor's tick, or before `base` (a deadline earlier than the first one).
        if tick < self.cursor || due.at < base {
            self.ready.push(Reverse(due));
        } else if tick >= self.cursor + HORIZON_TICKS {
            self.far.push(Reverse(due));
        } else {
            if self.slots.is_empty() {
                self.slots = (0..SLOTS).map(|_| Vec::new()).collect();
                self.slot_min = vec![None; SLOTS];
            }
            let i = self.index(tick);
            self.slots[i].push(due);
            self.slot_min[i] = Some(self.slot_min[i].map_or(due.at, |m| m.min(due.at)));
            self.occupied[i / 64] |= 1 << (i % 64);
        }
    }

    /// Moves far entries that now fall within the wheel into it.
    fn pull_far(&mut self) {
        let Some(base) = self.base else { return };
        while let Some(Reverse(d)) = self.far.peek() {
            if ticks_since(base, d.at) >= self.cursor + HORIZON_TICKS {
                break;
            }
            if let Some(Reverse(d)) = self.far.pop() {
                self.place(d);
            }
        }
    }

    /// Moves the entries of every tick up to `tick` (the first occupied one) to `ready`.
    fn advance_to(&mut self, tick: u64) {
        let i = self.index(tick);
        // Draining keeps the slot's allocation for the next time round.
        self.ready.extend(self.slots[i].drain(..).map(Reverse));
        self.clear_slot(i);
        self.cursor = tick + 1;
    }

    fn clear_slot(&mut self, i: usize) {
        self.slot_min[i] = None;
        self.occupied[i / 64] &= !(1 << (i % 64));
    }

    fn index(&self, tick: u64) -> usize {
        (tick % HORIZON_TICKS) as usize
    }

    /// The first tick at or after the cursor whose slot holds entries.
    fn first_occupied(&self) -> Option<u64> {
        let start = self.index(self.cursor);
        let (word, bit) = (start / 64, start % 64);
        // The rest of the cursor's word, the other words in circular order, then the start of
        // the cursor's word (which holds the wheel's last ticks).
        let first = self.occupied[word] & (!0u64 << bit);
        if first != 0 {
            return Some(self.tick_at(word * 64 + first.trailing_zeros() as usize));
        }
        for k in 1..=WORDS {
            let w = (word + k) % WORDS;
            let mut bits = self.occupied[w];
            if k == WORDS {
                bits &= (1u64 << bit).wrapping_sub(1);
            }
            if bits != 0 {
                return Some(self.tick_at(w * 64 + bits.trailing_zeros() as usize));
            }
        }
        None
    }

    /// The tick in `cursor .. cursor + SLOTS` that slot `i` stands for.
    fn tick_at(&self, i: usize) -> u64 {
        let start = self.index(self.cursor) as u64;
        let offset = (i as u64 + HORIZON_TICKS - start) % HORIZON_TICKS;
        self.cursor + offset
    }
}

/// When `tick` begins.
fn tick_start(base: Instant, tick: u64) -> Instant {
    base + Duration::from_nanos(tick.saturating_mul(TICK.as_nanos() as u64))
}

fn ticks_since(base: Instant, at: Instant) -> u64 {
    (at.saturating_duration_since(base).as_nanos() / TICK.as_nanos()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_first_and_ties_in_arming_order() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.arm(t0 + Duration::from_secs(2), Side::Client, 1, Slot::Lifetime);
        q.arm(
            t0 + Duration::from_secs(1),
            Side::Server,
            7,
            Slot::Retransmit,
        );
        q.arm(
            t0 + Duration::from_secs(1),
            Side::Client,
            3,
            Slot::Retransmit,
        );
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(q.pop_due(t0).is_none());
        let a = q.pop_due(t0 + Duration::from_secs(5)).unwrap();
        let b = q.pop_due(t0 + Duration::from_secs(5)).unwrap();
        assert_eq!((a.side, a.id), (Side::Server, 7));
        assert_eq!((b.side, b.id), (Side::Client, 3));
        assert_eq!(q.len(), 1);
    }

    /// A tiny deterministic generator, so the test needs no dependency.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    /// Against a sorted reference: random deadlines from now to beyond the wheel's reach,
    /// armed while time moves on, pop in exactly (deadline, arming order).
    #[test]
    fn wheel_pops_in_the_same_order_as_a_sorted_list() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let mut reference: Vec<(Instant, u64)> = Vec::new();
        let mut rng = 7u64;
        let mut now = t0;
        let mut popped = Vec::new();
        let mut expected = Vec::new();
        for id in 0..20_000u64 {
            let ahead = match lcg(&mut rng) % 10 {
                0 => Duration::from_millis(lcg(&mut rng) % 200_000),
                1 => Duration::ZERO,
                _ => Duration::from_millis(lcg(&mut rng) % 40_000),
            };
            q.arm(now + ahead, Side::Client, id, Slot::Lifetime);
            reference.push((now + ahead, id));
            now += Duration::from_micros(lcg(&mut rng) % 20_000);
            if id % 7 == 0 {
                while let Some(d) = q.pop_due(now) {
                    assert!(d.at <= now);
                    popped.push(d.id);
                }
                reference.sort();
                let due = reference.partition_point(|(at, _)| *at <= now);
                expected.extend(reference.drain(..due).map(|(_, id)| id));
                assert_eq!(popped, expected);
                assert_eq!(q.len(), reference.len());
                assert_eq!(q.next_deadline(), reference.first().map(|(at, _)| *at));
            }
        }
        now += Duration::from_secs(300);
        while let Some(d) = q.pop_due(now) {
            popped.push(d.id);
        }
        reference.sort();
        expected.extend(reference.drain(..).map(|(_, id)| id));
        assert_eq!(popped, expected);
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn after_an_idle_hour_new_timers_still_fire_on_time() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.arm(
            t0 + Duration::from_millis(500),
            Side::Server,
            1,
            Slot::Retransmit,
        );
        assert_eq!(
            q.pop_due(t0 + Duration::from_secs(1)).map(|d| d.id),
            Some(1)
        );
        let later = t0 + Duration::from_secs(3600);
        assert!(q.pop_due(later).is_none());
        q.arm(
            later + Duration::from_millis(500),
            Side::Server,
            2,
            Slot::Retransmit,
        );
        q.arm(
            later + Duration::from_secs(180),
            Side::Server,
            3,
            Slot::Lifetime,
        );
        assert_eq!(q.next_deadline(), Some(later + Duration::from_millis(500)));
        assert!(q.pop_due(later + Duration::from_millis(499)).is_none());
        assert_eq!(
            q.pop_due(later + Duration::from_millis(500)).map(|d| d.id),
            Some(2)
        );
        assert_eq!(q.next_deadline(), Some(later + Duration::from_secs(180)));
        assert_eq!(
            q.pop_due(later + Duration::from_secs(180)).map(|d| d.id),
            Some(3)
        );
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn stale_entries_at_the_head_are_dropped() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        for id in 0..10 {
            q.arm(
                t0 + Duration::from_millis(100 * id),
                Side::Client,
                id,
                Slot::Lifetime,
            );
        }
        q.drop_stale_head(|d| d.id >= 4);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(400)));
        assert_eq!(q.len(), 6);
        q.retain(|d| d.id % 2 == 0);
        assert_eq!(q.len(), 3);
        let ids: Vec<u64> = std::iter::from_fn(|| q.pop_due(t0 + Duration::from_secs(2)))
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, vec![4, 6, 8]);
    }
}
