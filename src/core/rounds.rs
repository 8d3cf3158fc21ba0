//! The mirror's write rounds in flight (the NVMe path), as rules without
//! I/O: which batch may go on its way while others are on the device, and
//! how far "applied" moves as they land. The mirror daemon
//! (`runtime::mirror::rounds`) and the simulator both run these.
//!
//! - A round never overlaps one in flight (judged by whole pages): two
//!   writes to one range on their way at once could land in either order.
//! - Rounds retire in sequence order: one that lands early waits for the
//!   ones before it, so "applied" never passes a write still on its way.
//! - Everything else (namespace operations, durable writes, every sync
//!   job, the end of a session) waits until no round is in flight; the
//!   caller drains before it. [`RoundQueue::is_empty`] says when.

use super::PlantedBug;
use crate::protocol::path::FsPath;
use std::collections::{HashMap, VecDeque};

/// Rounds in flight at once, at most, wherever they are written (the
/// session's ring bounds itself further, `MAX_RING_ROUNDS`).
pub const MAX_ROUNDS_IN_FLIGHT: usize = 64;

/// A round handed over and not yet retired.
#[derive(Debug)]
struct InFlight {
    last_seq: u64,
    landed: bool,
    /// Byte ranges it writes (widened to whole pages), by file.
    ranges: HashMap<FsPath, Vec<(u64, u64)>>,
}

/// The rounds in flight, oldest first, and the applied mark they leave.
#[derive(Debug)]
pub struct RoundQueue {
    /// Overlaps are judged by whole pages: a buffered write (an unaligned
    /// one goes through the page cache) and a direct write to the same page
    /// must not be on their way at once.
    page: u64,
    queue: VecDeque<InFlight>,
    /// Every round through this sequence number has landed.
    applied: u64,
    bug: Option<PlantedBug>,
}

impl RoundQueue {
    /// No round in flight; everything through `applied` is applied.
    /// `page` is rounded up to a power of two (4096 if zero).
    pub fn new(page: u64, applied: u64) -> RoundQueue {
        let page = if page == 0 { 4096 } else { page.checked_next_power_of_two().unwrap_or(4096) };
        RoundQueue { page, queue: VecDeque::new(), applied, bug: None }
    }

    /// The simulator's planted defect, if any.
    pub fn with_bug(mut self, bug: Option<PlantedBug>) -> RoundQueue {
        self.bug = bug;
        self
    }

    /// `start..end` widened to whole pages.
    fn pages(&self, start: u64, end: u64) -> (u64, u64) {
        let mask = self.page - 1;
        (start & !mask, end.checked_add(mask).map_or(u64::MAX, |e| e & !mask))
    }

    /// Whether a round writing `writes` (path, start, end) may go on its
    /// way now: it overlaps no round in flight, and there is room.
    pub fn admits<'a>(&self, mut writes: impl Iterator<Item = (&'a FsPath, u64, u64)>) -> bool {
        if self.queue.len() >= MAX_ROUNDS_IN_FLIGHT {
            return false;
        }
        if self.queue.is_empty() || self.bug == Some(PlantedBug::RoundsOverlap) {
            return true;
        }
        !writes.any(|(path, start, end)| {
            let (start, end) = self.pages(start, end);
            self.queue
                .iter()
                .any(|r| r.ranges.get(path).is_some_and(|rs| rs.iter().any(|&(s, e)| start < e && s < end)))
        })
    }

    /// A round of `writes` through `last_seq` is on its way (after
    /// [`RoundQueue::admits`]). Sequence numbers only grow.
    pub fn push<'a>(&mut self, last_seq: u64, writes: impl Iterator<Item = (&'a FsPath, u64, u64)>) {
        let mut ranges: HashMap<FsPath, Vec<(u64, u64)>> = HashMap::new();
        for (path, start, end) in writes {
            let range = self.pages(start, end);
            ranges.entry(path.clone()).or_default().push(range);
        }
        self.queue.push_back(InFlight { last_seq, landed: false, ranges });
    }

    /// The newest round could not be handed over after all: forget it.
    pub fn pop_newest(&mut self) {
        self.queue.pop_back();
    }

    /// The round through `last_seq` landed. With `retire`, the rounds
    /// landed from the oldest on retire and move the applied mark; returns
    /// whether it moved. (Without `retire`, after a failure, nothing more
    /// is counted applied.)
    pub fn landed(&mut self, last_seq: u64, retire: bool) -> bool {
        // Batches never share a sequence number.
        if let Some(r) = self.queue.iter_mut().find(|r| r.last_seq == last_seq) {
            r.landed = true;
        }
        if !retire {
            return false;
        }
        if self.bug == Some(PlantedBug::RoundsRetireOutOfOrder) && self.applied < last_seq {
            // The defect: a round counts applied when it lands, older ones or not.
            self.applied = last_seq;
            return true;
        }
        let mut moved = false;
        while self.queue.front().is_some_and(|r| r.landed) {
            if let Some(r) = self.queue.pop_front() {
                self.applied = self.applied.max(r.last_seq);
                moved = true;
            }
        }
        moved
    }

    /// Whether the round through `last_seq` landed and waits to retire.
    pub fn landed_early(&self, last_seq: u64) -> bool {
        self.queue.iter().any(|r| r.last_seq == last_seq && r.landed)
    }

    /// Through what every round has landed.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// No round in flight (landed ones not yet retired count as in flight).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::path::RelPath;

    fn p(name: &str) -> FsPath {
        FsPath::new(0, RelPath::new(name).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn rounds_retire_in_sequence_order_whatever_order_they_land_in() {
        let (a, b, c) = (p("a"), p("b"), p("c"));
        let mut q = RoundQueue::new(4096, 10);
        q.push(12, [(&a, 0, 8192)].into_iter());
        q.push(15, [(&b, 0, 8192)].into_iter());
        q.push(20, [(&c, 0, 8192)].into_iter());
        assert!(!q.landed(20, true), "the newest landed first: nothing retires");
        assert_eq!(q.applied(), 10);
        assert!(!q.landed(15, true));
        assert_eq!(q.applied(), 10);
        assert!(q.landed_early(15) && q.landed_early(20) && !q.landed_early(12));
        assert!(q.landed(12, true), "the oldest landed: all three retire");
        assert_eq!(q.applied(), 20);
        assert!(q.is_empty());
    }

    #[test]
    fn after_a_failure_landed_rounds_do_not_retire() {
        let a = p("a");
        let mut q = RoundQueue::new(4096, 0);
        q.push(3, [(&a, 0, 4096)].into_iter());
        assert!(!q.landed(3, false));
        assert_eq!(q.applied(), 0);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn overlaps_are_judged_by_whole_pages_and_per_file() {
        let (a, b) = (p("a"), p("b"));
        let mut q = RoundQueue::new(4096, 0);
        assert!(q.admits([(&a, 0, 100)].into_iter()), "nothing in flight");
        q.push(1, [(&a, 100, 200)].into_iter());
        assert!(!q.admits([(&a, 4000, 4001)].into_iter()), "the same page");
        assert!(q.admits([(&a, 4096, 8192)].into_iter()), "the next page");
        assert!(q.admits([(&b, 0, 4096)].into_iter()), "another file");
        assert!(!q.admits([(&b, 0, 4096), (&a, 0, 1)].into_iter()), "any write of the round");
        q.landed(1, true);
        assert!(q.admits([(&a, 0, 4096)].into_iter()), "retired rounds overlap nothing");
    }

    #[test]
    fn a_landed_round_not_yet_retired_still_counts_for_overlaps() {
        let a = p("a");
        let mut q = RoundQueue::new(4096, 0);
        q.push(1, [(&a, 0, 4096)].into_iter());
        q.push(2, [(&a, 8192, 12288)].into_iter());
        q.landed(2, true);
        assert!(!q.admits([(&a, 8192, 8193)].into_iter()));
    }

    #[test]
    fn the_number_in_flight_is_bounded_and_ranges_at_the_end_do_not_wrap() {
        let a = p("a");
        let mut q = RoundQueue::new(0, 0);
        for i in 0..MAX_ROUNDS_IN_FLIGHT as u64 {
            assert!(q.admits([(&a, i * 4096, i * 4096 + 1)].into_iter()));
            q.push(i + 1, [(&a, i * 4096, i * 4096 + 1)].into_iter());
        }
        assert!(!q.admits([(&a, 1 << 40, (1 << 40) + 1)].into_iter()), "full");
        let mut q = RoundQueue::new(4096, 0);
        q.push(1, [(&a, u64::MAX - 10, u64::MAX)].into_iter());
        assert!(!q.admits([(&a, u64::MAX - 1, u64::MAX)].into_iter()));
        q.pop_newest();
        assert!(q.is_empty());
    }

    #[test]
    fn the_planted_defect_breaks_exactly_its_rule() {
        let a = p("a");
        let mut q = RoundQueue::new(4096, 0).with_bug(Some(PlantedBug::RoundsOverlap));
        q.push(1, [(&a, 0, 4096)].into_iter());
        assert!(q.admits([(&a, 0, 4096)].into_iter()));
        q.landed(1, true);
        assert_eq!(q.applied(), 1, "the rest of the rules hold");

        let (a, b) = (p("a"), p("b"));
        let mut q = RoundQueue::new(4096, 0).with_bug(Some(PlantedBug::RoundsRetireOutOfOrder));
        q.push(1, [(&a, 0, 4096)].into_iter());
        q.push(2, [(&b, 0, 4096)].into_iter());
        assert!(q.landed(2, true));
        assert_eq!(q.applied(), 2, "applied passed round 1, still on its way");
        assert!(!q.admits([(&a, 0, 4096)].into_iter()), "overlaps are still refused");
    }
}
