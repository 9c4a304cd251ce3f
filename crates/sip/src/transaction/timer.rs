//! One deadline queue for every transaction. Transactions remember the deadline each of their
//! two timer slots is armed for; a popped entry whose deadline no longer matches its slot was
//! cancelled or re-armed since and is dropped (lazy cancellation), so cancelling costs nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

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

#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<Due>>,
    seq: u64,
}

impl TimerQueue {
    pub fn arm(&mut self, at: Instant, side: Side, id: u64, slot: Slot) {
        self.seq += 1;
        self.heap.push(Reverse(Due {
            at,
            seq: self.seq,
            side,
            id,
            slot,
        }));
    }

    pub fn peek(&self) -> Option<&Due> {
        self.heap.peek().map(|Reverse(d)| d)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.peek().map(|d| d.at)
    }

    pub fn pop(&mut self) -> Option<Due> {
        self.heap.pop().map(|Reverse(d)| d)
    }

    /// The earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        if self.peek()?.at <= now {
            self.pop()
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries `live` accepts: O(n), for when cancelled entries pile up.
    pub fn retain(&mut self, mut live: impl FnMut(&Due) -> bool) {
        self.heap.retain(|Reverse(d)| live(d));
    }
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
}
