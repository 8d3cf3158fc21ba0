//! What a resync ships: the change-log's set of changed blocks and
//! touched paths, and its blocks as runs of consecutive ones.

use crate::core::primary::EXTENT_BLOCKS;
use crate::protocol::path::FsPath;
use std::collections::{BTreeMap, BTreeSet};

/// What the change-log knows: the changed blocks of each file and the paths
/// whose namespace state changed (created, dropped, truncated, renamed,
/// directories; `subtree` when everything under the path may differ).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    pub blocks: BTreeMap<FsPath, BTreeSet<u64>>,
    pub touched: BTreeMap<FsPath, bool>,
    /// Extents (of [`EXTENT_BLOCKS`] blocks) every block of which may have
    /// changed: their exact records may not have reached the disk.
    pub extents: BTreeMap<FsPath, BTreeSet<u64>>,
}

impl ChangeSet {
    /// Whether `block` of `file` is named, exactly or by its extent.
    pub fn covers_block(&self, file: &FsPath, block: u64) -> bool {
        self.blocks.get(file).is_some_and(|b| b.contains(&block))
            || self.extents.get(file).is_some_and(|e| e.contains(&(block / EXTENT_BLOCKS)))
    }

    /// Forget blocks `first..end` of `file`, and its extents wholly inside.
    pub(crate) fn remove_blocks(&mut self, file: &FsPath, first: u64, end: u64) {
        if let Some(b) = self.blocks.get_mut(file) {
            let gone: Vec<u64> = b.range(first..end).copied().collect();
            for x in gone {
                b.remove(&x);
            }
            if b.is_empty() {
                self.blocks.remove(file);
            }
        }
        if let Some(es) = self.extents.get_mut(file) {
            es.retain(|e| !(e * EXTENT_BLOCKS >= first && (e + 1) * EXTENT_BLOCKS <= end));
            if es.is_empty() {
                self.extents.remove(file);
            }
        }
    }

    pub fn distinct_blocks(&self) -> u64 {
        self.blocks.values().map(|b| b.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.touched.is_empty() && self.extents.is_empty()
    }

    /// Everything `other` names too.
    pub fn merge(&mut self, other: ChangeSet) {
        for (f, b) in other.blocks {
            self.blocks.entry(f).or_default().extend(b);
        }
        for (p, t) in other.touched {
            *self.touched.entry(p).or_insert(false) |= t;
        }
        for (f, e) in other.extents {
            self.extents.entry(f).or_default().extend(e);
        }
    }

    /// Per file, the blocks its extents name (each extent all of its
    /// [`EXTENT_BLOCKS`] blocks).
    pub fn blocks_named_by_extents(&self) -> BTreeMap<FsPath, BTreeSet<u64>> {
        self.extents
            .iter()
            .map(|(f, es)| (f.clone(), es.iter().flat_map(|e| e * EXTENT_BLOCKS..(e + 1) * EXTENT_BLOCKS).collect()))
            .collect()
    }

    /// Per file, the blocks named exactly or by their extent.
    pub fn all_named_blocks(&self) -> BTreeMap<FsPath, BTreeSet<u64>> {
        let mut all = self.blocks.clone();
        for (f, b) in self.blocks_named_by_extents() {
            all.entry(f).or_default().extend(b);
        }
        all
    }

    /// Blocks named, exactly or by their extent (not what a touched
    /// directory holds: unknown until walked).
    pub fn named_blocks(&self) -> u64 {
        self.distinct_blocks() + self.extents.values().map(|e| e.len() as u64 * EXTENT_BLOCKS).sum::<u64>()
    }
}

/// A sorted set of blocks as runs of consecutive ones, `(first, count)`,
/// each at most `max` long (one record, one copy, one hash request).
pub(crate) fn runs(blocks: impl IntoIterator<Item = u64>, max: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in blocks {
        match out.last_mut() {
            Some((first, count)) if *count < max && *first + *count == b => *count += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

/// For each run of `runs`, the blocks of the runs right after it that
/// continue it without a gap (what a copy may cover ahead of itself).
pub(crate) fn contiguous_after(runs: &[(u64, u64)]) -> Vec<u64> {
    let mut out = vec![0u64; runs.len()];
    for i in (0..runs.len().saturating_sub(1)).rev() {
        let (first, count) = runs[i];
        let (next, next_count) = runs[i + 1];
        if first + count == next {
            out[i] = next_count + out[i + 1];
        }
    }
    out
}
