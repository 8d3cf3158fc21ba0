//! The simulated network: in-order byte delivery with random chunking and
//! delay, as TCP delivers a stream.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;

pub(super) struct Link {
    pub(super) queue: VecDeque<(u64, Vec<u8>)>,
    last_due: u64,
}

impl Link {
    pub(super) fn new() -> Link {
        Link { queue: VecDeque::new(), last_due: 0 }
    }

    pub(super) fn send(&mut self, rng: &mut ChaCha8Rng, now: u64, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            let n = rng.gen_range(1..=bytes.len() - at).min(rng.gen_range(1..=70_000));
            let due = (now + rng.gen_range(0..4)).max(self.last_due);
            self.last_due = due;
            self.queue.push_back((due, bytes[at..at + n].to_vec()));
            at += n;
        }
    }

    pub(super) fn deliver(&mut self, now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((due, _)) = self.queue.front() {
            if *due > now {
                break;
            }
            if let Some((_, b)) = self.queue.pop_front() {
                out.extend_from_slice(&b);
            }
        }
        out
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
