//! Renames made while a resync runs: the journal's entries, and what
//! each fact the resync established (a block shipped, a path made) names
//! after them.

use crate::protocol::path::FsPath;
use std::collections::BTreeSet;

/// A rename made while a resync ran, as the primary's journal keeps it:
/// `whole` when it made everything under `to` owed again (what the resync
/// shipped under `from` counts for nothing there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renamed {
    pub from: FsPath,
    pub to: FsPath,
    pub whole: bool,
}

/// Where the rename journal stood before the first step that established
/// a fact and after the last: the fact holds only if no rename touched its
/// path in between, and names its path as it was then; renames after move
/// it (or, renamed over, end it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) since: u64,
    pub(super) at: u64,
}

/// What the resync has shipped since its last checkpoint, by window.
#[derive(Default)]
pub(super) struct Facts {
    pub(super) blocks: Vec<(Window, FsPath, BTreeSet<u64>)>,
    /// One per copy: blocks `first..end` (kept as a range: a copy is one
    /// step of the hot loop).
    pub(super) copies: Vec<(Window, FsPath, u64, u64)>,
    pub(super) paths: Vec<(Window, FsPath)>,
    /// Files a copy or a length went to (flushed before the checkpoint).
    pub(super) written: Vec<(Window, FsPath)>,
}

impl Facts {
    pub(super) fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.copies.is_empty() && self.paths.is_empty()
    }

    pub(super) fn oldest(&self) -> Option<u64> {
        let b = self.blocks.iter().map(|(w, _, _)| w.since);
        let c = self.copies.iter().map(|(w, _, _, _)| w.since);
        let p = self.paths.iter().chain(&self.written).map(|(w, _)| w.since);
        b.chain(c).chain(p).min()
    }
}

/// `name` after the renames of `journal` (all made after it was named):
/// `None` if one renamed something else over it.
pub(crate) fn renamed_since(journal: &[Renamed], name: &FsPath) -> Option<FsPath> {
    translate(journal, 0, Window { since: 0, at: 0 }, name)
}

/// `name`, as a fact established within `w` named it, as it is named now
/// after the renames of `journal` (the first at position `base`): `None`
/// when a rename touched it within the window (the fact may not hold), or
/// renamed something else over it later (what it described is gone).
pub(super) fn translate(journal: &[Renamed], base: u64, w: Window, name: &FsPath) -> Option<FsPath> {
    let mut name = name.clone();
    for (i, Renamed { from, to, whole }) in journal.iter().enumerate() {
        let at = base + i as u64;
        if at < w.since {
            continue;
        }
        if at < w.at {
            if name.related(from) || name.related(to) {
                return None;
            }
            continue;
        }
        if name.filespace == from.filespace && name.path.is_within(&from.path) {
            if *whole {
                return None;
            }
            name = FsPath::new(to.filespace, name.path.rebase(&from.path, &to.path)?);
        } else if name.filespace == to.filespace && name.path.is_within(&to.path) {
            return None;
        }
    }
    Some(name)
}
