//! The activity log's table (rule 5): while the pair streams, the extents
//! and paths with changes in flight. A change is covered before it is
//! shipped or written: a newly hot extent (or any namespace change) is
//! recorded durably in the change-log first, and a write into an extent
//! whose record is already durable costs nothing. After a crash every
//! recorded entry counts as changed. An entry is retired once nothing is in
//! flight under it, the mirror has its last change durably, and this host's
//! copy has been made durable too; retiring rewrites the change-log, so it
//! happens only past a limit, many entries at once.
//!
//! The records live in the change-log file; this table decides when they
//! are written and dropped. The runtime and the simulator execute the
//! commands it leads to.

use crate::protocol::path::FsPath;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Blocks per extent (the change-log's extent size).
pub const EXTENT_BLOCKS: u64 = 32;
/// Entries held before retiring is tried (1024 extents of 32 blocks of
/// 32 KiB: 1 GiB of hot data; the log stays a few tens of KiB).
pub const DEFAULT_LIMIT: usize = 1024;

#[derive(Clone, Debug, Default)]
struct Heat {
    /// Calls between their cover and the end of their local step.
    in_flight: u32,
    /// Highest sequence number shipped under this entry.
    last_seq: u64,
    /// The entry's record is durable in the change-log.
    durable: bool,
    /// Part of a retire being written: a new cover waits until it is gone.
    retiring: bool,
    /// Paths the change-log may hold its records under besides its own,
    /// when a rename has moved the entry since.
    logged: Vec<FsPath>,
    /// Moved by a rename and not recorded under its new path since.
    renamed: bool,
}

impl Heat {
    /// The entry under its new path: its records are under the old one, so
    /// the next cover records it again where it is now (a crash must find
    /// the file by its current name).
    fn moved(mut self, old: &FsPath) -> Heat {
        self.renamed = true;
        self.logged.push(old.clone());
        self
    }

    /// Join the entry of a file renamed over this one's path.
    fn absorb(&mut self, other: Heat, old: &FsPath) {
        self.in_flight += other.in_flight;
        self.last_seq = self.last_seq.max(other.last_seq);
        self.durable &= other.durable;
        self.renamed = true;
        self.retiring |= other.retiring;
        self.logged.push(old.clone());
        self.logged.extend(other.logged);
    }
}

/// Entries to retire: each with the sequence number it was last shipped
/// with when picked (retired only if still so), and the paths its records
/// are under in the change-log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetireSet {
    pub extents: BTreeMap<FsPath, BTreeMap<u64, (u64, Vec<FsPath>)>>,
    pub paths: BTreeMap<FsPath, (u64, Vec<FsPath>)>,
}

impl RetireSet {
    pub fn len(&self) -> usize {
        self.extents.values().map(BTreeMap::len).sum::<usize>() + self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The files and paths (where they are now) whose local copies must be
    /// durable first.
    pub fn files(&self) -> Vec<FsPath> {
        self.extents.keys().cloned().collect()
    }

    pub fn path_list(&self) -> Vec<FsPath> {
        self.paths.keys().cloned().collect()
    }

    /// As the change-log's retire takes them: under the paths they were recorded under.
    pub fn as_records(&self) -> (BTreeMap<FsPath, BTreeSet<u64>>, BTreeSet<FsPath>) {
        let mut extents: BTreeMap<FsPath, BTreeSet<u64>> = BTreeMap::new();
        for (p, es) in &self.extents {
            for (e, (_, logged)) in es {
                for q in logged_or(p, logged) {
                    extents.entry(q.clone()).or_default().insert(*e);
                }
            }
        }
        let mut paths = BTreeSet::new();
        for (p, (_, logged)) in &self.paths {
            paths.extend(logged_or(p, logged).cloned());
        }
        (extents, paths)
    }
}

/// An entry's record paths: its own and those it had before renames.
fn logged_or<'a>(own: &'a FsPath, logged: &'a [FsPath]) -> impl Iterator<Item = &'a FsPath> {
    std::iter::once(own).chain(logged.iter())
}

/// What a cover needs before its change may go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoverNeed {
    /// Every entry is recorded durably: go on.
    Ready,
    /// Record the entries first (a change-log append), then go on.
    Record,
    /// An entry is being retired or the log rewritten: try again after.
    Wait,
}

#[derive(Default, Debug)]
pub struct ActivityTable {
    extents: HashMap<FsPath, HashMap<u64, Heat>>,
    paths: HashMap<FsPath, Heat>,
    entries: usize,
    limit: usize,
    /// Entries at which retiring is tried next.
    next_try: usize,
}

impl ActivityTable {
    pub fn new(limit: usize) -> ActivityTable {
        let limit = limit.max(1);
        ActivityTable { limit, next_try: limit + 1, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether blocks `first..=last` of `file` may be covered now, and what
    /// it takes; `rewriting`: the change-log is being rewritten or cleared,
    /// so no new record may go in (it could be wiped).
    pub fn blocks_need(&self, file: &FsPath, first: u64, last: u64, rewriting: bool) -> CoverNeed {
        let hot = self.extents.get(file);
        let mut need = CoverNeed::Ready;
        for e in first / EXTENT_BLOCKS..=last / EXTENT_BLOCKS {
            match hot.and_then(|es| es.get(&e)) {
                Some(h) if h.retiring => return CoverNeed::Wait,
                Some(h) if h.durable && !h.renamed => {}
                _ if rewriting => return CoverNeed::Wait,
                _ => need = CoverNeed::Record,
            }
        }
        need
    }

    /// A namespace change is recorded every time (they are rare, and the
    /// subtree flag must never be lost to an earlier plain record).
    pub fn path_need(&self, path: &FsPath, rewriting: bool) -> CoverNeed {
        match self.paths.get(path) {
            Some(h) if h.retiring => CoverNeed::Wait,
            _ if rewriting => CoverNeed::Wait,
            _ => CoverNeed::Record,
        }
    }

    /// Mark blocks `first..=last` of `file` in flight (after
    /// [`ActivityTable::blocks_need`] said they may be). Returns the number
    /// of new entries.
    pub fn cover_blocks(&mut self, file: &FsPath, first: u64, last: u64) -> usize {
        let mut new = 0;
        if !self.extents.contains_key(file) {
            self.extents.insert(file.clone(), HashMap::new());
        }
        if let Some(es) = self.extents.get_mut(file) {
            for e in first / EXTENT_BLOCKS..=last / EXTENT_BLOCKS {
                es.entry(e)
                    .or_insert_with(|| {
                        new += 1;
                        Heat::default()
                    })
                    .in_flight += 1;
            }
        }
        self.entries += new;
        new
    }

    pub fn cover_path(&mut self, path: &FsPath) -> usize {
        let new = !self.paths.contains_key(path);
        self.paths.entry(path.clone()).or_default().in_flight += 1;
        if new {
            self.entries += 1;
        }
        usize::from(new)
    }

    /// Their record is durable (a cover's change-log append completed).
    pub fn blocks_recorded(&mut self, file: &FsPath, first: u64, last: u64) {
        if let Some(es) = self.extents.get_mut(file) {
            for e in first / EXTENT_BLOCKS..=last / EXTENT_BLOCKS {
                if let Some(h) = es.get_mut(&e) {
                    h.durable = true;
                    h.renamed = false;
                }
            }
        }
    }

    pub fn path_recorded(&mut self, path: &FsPath) {
        if let Some(h) = self.paths.get_mut(path) {
            h.durable = true;
            h.renamed = false;
        }
    }

    /// A covered call's local step is over; `seq` is what it shipped with (0: nothing).
    pub fn end_blocks(&mut self, file: &FsPath, first: u64, last: u64, seq: u64) {
        if let Some(es) = self.extents.get_mut(file) {
            for e in first / EXTENT_BLOCKS..=last / EXTENT_BLOCKS {
                if let Some(h) = es.get_mut(&e) {
                    h.in_flight = h.in_flight.saturating_sub(1);
                    h.last_seq = h.last_seq.max(seq);
                }
            }
        }
    }

    pub fn end_path(&mut self, path: &FsPath, seq: u64) {
        if let Some(h) = self.paths.get_mut(path) {
            h.in_flight = h.in_flight.saturating_sub(1);
            h.last_seq = h.last_seq.max(seq);
        }
    }

    /// Whether retiring is due (enough entries since the last attempt).
    pub fn retire_due(&self) -> bool {
        self.entries >= self.next_try
    }

    /// Entries with nothing in flight whose last change the mirror has
    /// durably (`durable`), if at least `least` of them.
    pub fn candidates(&self, durable: u64, least: usize) -> Option<RetireSet> {
        let idle = |h: &Heat| h.in_flight == 0 && h.last_seq <= durable && h.durable && !h.retiring;
        let mut set = RetireSet::default();
        for (p, es) in &self.extents {
            let done: BTreeMap<u64, (u64, Vec<FsPath>)> =
                es.iter().filter(|(_, h)| idle(h)).map(|(e, h)| (*e, (h.last_seq, h.logged.clone()))).collect();
            if !done.is_empty() {
                set.extents.insert(p.clone(), done);
            }
        }
        set.paths.extend(
            self.paths.iter().filter(|(_, h)| idle(h)).map(|(p, h)| (p.clone(), (h.last_seq, h.logged.clone()))),
        );
        (set.len() >= least.max(1)).then_some(set)
    }

    /// An attempt found too little to retire: wait for an eighth more entries.
    pub fn retire_later(&mut self) {
        self.next_try = self.entries + (self.limit / 8).max(1);
    }

    /// Of `picked` (made durable here meanwhile), those untouched since,
    /// now marked retiring: new covers of them wait until they are gone.
    pub fn still_idle(&mut self, picked: &RetireSet) -> RetireSet {
        let mut out = RetireSet::default();
        for (p, es) in &picked.extents {
            if let Some(hot) = self.extents.get_mut(p) {
                for (e, (seq, logged)) in es {
                    let same = |h: &&mut Heat| h.in_flight == 0 && h.last_seq == *seq && h.logged == *logged;
                    if let Some(h) = hot.get_mut(e).filter(same) {
                        h.retiring = true;
                        out.extents.entry(p.clone()).or_default().insert(*e, (*seq, logged.clone()));
                    }
                }
            }
        }
        for (p, (seq, logged)) in &picked.paths {
            let same = |h: &&mut Heat| h.in_flight == 0 && h.last_seq == *seq && h.logged == *logged;
            if let Some(h) = self.paths.get_mut(p).filter(same) {
                h.retiring = true;
                out.paths.insert(p.clone(), (*seq, logged.clone()));
            }
        }
        // A record under an old path that a live entry (a file created
        // there since) also stands on stays in the log.
        for (p, es) in out.extents.iter_mut() {
            for (e, (_, logged)) in es.iter_mut() {
                logged
                    .retain(|q| q == p || self.extents.get(q).is_none_or(|hot| hot.get(e).is_none_or(|h| h.retiring)));
            }
        }
        for (p, (_, logged)) in out.paths.iter_mut() {
            logged.retain(|q| q == p || self.paths.get(q).is_none_or(|h| h.retiring));
        }
        out
    }

    /// The retire was written (`ok`) or failed (entries stay).
    pub fn retired(&mut self, set: &RetireSet, ok: bool) {
        for (p, es) in &set.extents {
            if let Some(hot) = self.extents.get_mut(p) {
                for e in es.keys() {
                    // Not retiring: one a rename moved over it since, not picked.
                    let Some(h) = hot.get_mut(e).filter(|h| h.retiring) else { continue };
                    if ok {
                        hot.remove(e);
                        self.entries -= 1;
                    } else {
                        h.retiring = false;
                    }
                }
                if hot.is_empty() {
                    self.extents.remove(p);
                }
            }
        }
        for p in set.paths.keys() {
            let Some(h) = self.paths.get_mut(p).filter(|h| h.retiring) else { continue };
            if ok {
                self.paths.remove(p);
                self.entries -= 1;
            } else {
                h.retiring = false;
            }
        }
        self.next_try = if ok { self.limit + 1 } else { self.entries + (self.limit / 8).max(1) };
    }

    /// The entries being retired, for a diagnosis.
    pub fn describe_retiring(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .extents
            .iter()
            .flat_map(|(p, es)| es.iter().filter(|(_, h)| h.retiring).map(move |(e, _)| format!("{p} extent {e}")))
            .chain(self.paths.iter().filter(|(_, h)| h.retiring).map(|(p, _)| p.to_string()))
            .collect();
        out.sort();
        out
    }

    /// A rename moved `from` (and what lies under it) to `to`: the entries
    /// follow, so retiring makes the files durable where they are now (and
    /// the directories their names are in), and clears their records under
    /// the paths they were written under. An entry of a file `to` replaced
    /// joins the moved one's. (Retiring by the old path found nothing there
    /// and dropped a record of data only in the page cache: found by the
    /// simulator once it ran the engine.)
    pub fn rebase(&mut self, from: &FsPath, to: &FsPath) {
        let moved = |p: &FsPath| p.filespace == from.filespace && p.path.is_within(&from.path);
        let dest = |p: &FsPath| p.path.rebase(&from.path, &to.path).map(|np| FsPath::new(to.filespace, np));
        let extents: Vec<FsPath> = self.extents.keys().filter(|p| moved(p)).cloned().collect();
        for old in extents {
            let Some(new) = dest(&old) else { continue };
            let Some(es) = self.extents.get_mut(&old) else { continue };
            // An entry being retired stays where it was picked: the retire
            // removes it there (its data is durable on both sides already).
            let going: Vec<u64> = es.iter().filter(|(_, h)| !h.retiring).map(|(e, _)| *e).collect();
            let mut taken = Vec::new();
            for e in going {
                if let Some(h) = es.remove(&e) {
                    taken.push((e, h));
                }
            }
            if es.is_empty() {
                self.extents.remove(&old);
            }
            let target = self.extents.entry(new).or_default();
            for (e, h) in taken {
                if let Some(t) = target.get_mut(&e) {
                    self.entries -= 1;
                    if !t.retiring {
                        t.absorb(h, &old);
                        continue;
                    }
                }
                // New here, or over one being retired (the replaced file's):
                // that retire leaves an entry it did not pick alone.
                target.insert(e, Heat::moved(h, &old));
            }
        }
        // The rename's own entry for `from` stays: it names the removal,
        // whose directory is `from`'s parent.
        let paths: Vec<FsPath> =
            self.paths.iter().filter(|(p, h)| moved(p) && *p != from && !h.retiring).map(|(p, _)| p.clone()).collect();
        for old in paths {
            let Some(new) = dest(&old) else { continue };
            let Some(h) = self.paths.remove(&old) else { continue };
            if let Some(t) = self.paths.get_mut(&new) {
                self.entries -= 1;
                if !t.retiring {
                    t.absorb(h, &old);
                    continue;
                }
            }
            self.paths.insert(new, Heat::moved(h, &old));
        }
    }

    /// A new stream (a mirror taken back): the table starts empty. What its
    /// entries covered stays in the change-log, pinned, for the resync.
    pub fn restart(&mut self) {
        self.extents.clear();
        self.paths.clear();
        self.entries = 0;
        self.next_try = self.limit + 1;
    }

    /// A resync checkpoint: extents of a file in `flushes` (synced on the
    /// mirror through that flush, and here) with nothing in flight and
    /// nothing shipped after it are settled and go; the rest is returned,
    /// to stay recorded through the change-log's clear.
    pub fn settle(&mut self, flushes: &BTreeMap<FsPath, u64>) -> (BTreeMap<FsPath, BTreeSet<u64>>, BTreeSet<FsPath>) {
        for (f, synced) in flushes {
            if let Some(es) = self.extents.get_mut(f) {
                let before = es.len();
                es.retain(|_, h| h.in_flight > 0 || h.last_seq > *synced || h.retiring);
                self.entries -= before - es.len();
                if es.is_empty() {
                    self.extents.remove(f);
                }
            }
        }
        let extents = self
            .extents
            .iter()
            .filter(|(_, es)| !es.is_empty())
            .map(|(p, es)| (p.clone(), es.keys().copied().collect()))
            .collect();
        (extents, self.paths.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::path::RelPath;

    fn p(s: &str) -> FsPath {
        FsPath::new(0, RelPath::new(s).unwrap())
    }

    #[test]
    fn an_extent_needs_one_record_then_costs_nothing() {
        let mut t = ActivityTable::new(16);
        let f = p("rel");
        assert_eq!(t.blocks_need(&f, 33, 33, false), CoverNeed::Record);
        assert_eq!(t.cover_blocks(&f, 33, 33), 1);
        // A second writer before the record is durable records too (the
        // change-log joins it to the same group commit).
        assert_eq!(t.blocks_need(&f, 40, 40, false), CoverNeed::Record);
        t.blocks_recorded(&f, 33, 33);
        assert_eq!(t.blocks_need(&f, 40, 40, false), CoverNeed::Ready);
        assert_eq!(t.blocks_need(&f, 40, 70, false), CoverNeed::Record);
        assert_eq!(t.blocks_need(&f, 64, 64, true), CoverNeed::Wait);
    }

    #[test]
    fn only_idle_entries_the_mirror_has_durably_retire() {
        let mut t = ActivityTable::new(1);
        let (a, b) = (p("a"), p("b"));
        t.cover_blocks(&a, 0, 0);
        t.blocks_recorded(&a, 0, 0);
        t.end_blocks(&a, 0, 0, 5);
        t.cover_blocks(&b, 0, 0);
        t.blocks_recorded(&b, 0, 0);
        assert!(t.retire_due());
        assert_eq!(t.candidates(4, 1), None);
        let picked = t.candidates(5, 1).unwrap();
        assert_eq!(picked.files(), vec![a.clone()]);
        let sure = t.still_idle(&picked);
        assert_eq!(sure, picked);
        // Retiring: a new write into it waits until it is gone.
        assert_eq!(t.blocks_need(&a, 1, 1, false), CoverNeed::Wait);
        t.retired(&sure, true);
        assert_eq!(t.len(), 1);
        assert_eq!(t.blocks_need(&a, 1, 1, false), CoverNeed::Record);
    }

    #[test]
    fn an_entry_written_again_after_it_was_picked_is_not_retired() {
        let mut t = ActivityTable::new(1);
        let a = p("a");
        t.cover_blocks(&a, 0, 0);
        t.blocks_recorded(&a, 0, 0);
        t.end_blocks(&a, 0, 0, 3);
        let picked = t.candidates(3, 1).unwrap();
        t.cover_blocks(&a, 0, 0);
        t.end_blocks(&a, 0, 0, 9);
        assert!(t.still_idle(&picked).is_empty());
    }

    #[test]
    fn entries_follow_a_rename_and_retire_under_the_paths_they_were_recorded_under() {
        let mut t = ActivityTable::new(1);
        let (d_x, d, e, e_x) = (p("d/x"), p("d"), p("e"), p("e/x"));
        t.cover_blocks(&d_x, 0, 0);
        t.blocks_recorded(&d_x, 0, 0);
        t.end_blocks(&d_x, 0, 0, 2);
        t.cover_path(&d_x);
        t.path_recorded(&d_x);
        t.end_path(&d_x, 1);
        t.cover_path(&d);
        t.path_recorded(&d);
        t.end_path(&d, 3);
        t.rebase(&d, &e);
        let picked = t.candidates(3, 1).unwrap();
        // The data is synced where it is now, its record retired where it was written.
        assert_eq!(picked.files(), vec![e_x.clone()]);
        assert_eq!(picked.path_list(), vec![d.clone(), e_x.clone()]);
        let (extents, paths) = picked.as_records();
        assert_eq!(extents.keys().cloned().collect::<Vec<_>>(), vec![d_x.clone(), e_x.clone()]);
        assert_eq!(paths, BTreeSet::from([d, d_x.clone(), e_x.clone()]));
        let _ = e;
        // A write after the rename records the file under its new name first.
        assert_eq!(t.blocks_need(&e_x, 0, 0, false), CoverNeed::Record);
        // A file made at the old name since keeps its own record.
        t.cover_blocks(&d_x, 0, 0);
        t.blocks_recorded(&d_x, 0, 0);
        let retiring = t.still_idle(&picked);
        let (extents, _) = retiring.as_records();
        assert_eq!(extents.keys().cloned().collect::<Vec<_>>(), vec![e_x.clone()]);
    }

    #[test]
    fn settling_keeps_what_was_shipped_after_the_flush() {
        let mut t = ActivityTable::new(8);
        let (a, b) = (p("a"), p("b"));
        for (f, seq) in [(&a, 4), (&b, 9)] {
            t.cover_blocks(f, 0, 0);
            t.blocks_recorded(f, 0, 0);
            t.end_blocks(f, 0, 0, seq);
        }
        let flushes = BTreeMap::from([(a.clone(), 5), (b.clone(), 5)]);
        let (keep, _) = t.settle(&flushes);
        assert_eq!(keep.keys().cloned().collect::<Vec<_>>(), vec![b]);
        assert_eq!(t.len(), 1);
    }
}
