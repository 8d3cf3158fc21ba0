//! The activity log (brief rule 5): while the pair is synchronized, the
//! extents and paths with changes in flight, recorded durably before the
//! first change into them is written or shipped. A write into an extent
//! that is already hot costs nothing; a newly hot extent costs one record
//! (a few bytes, group-committed with any others). After a crash of the
//! primary every entry counts as changed, so the old primary's local writes
//! that never reached the mirror are found and overwritten when it returns.
//!
//! Entries live in the change-log file (as its extent and touched records),
//! so one replay after a crash yields everything that may differ. An entry
//! is retired once every change covered by it is durable on the mirror and
//! none is in flight; retiring rewrites the file, so it happens only when
//! the log has grown past its limit, and then retires many entries at once.

use crate::changelog::{ChangeLog, ChangeLogError, EXTENT_BLOCKS};
use crate::disk::FsPath;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Entries held before retiring is tried (1024 extents of 32 blocks of
/// 32 KiB: 1 GiB of hot data; the file stays a few tens of KiB).
pub const DEFAULT_LIMIT: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Extent(FsPath, u64),
    Path(FsPath),
}

#[derive(Clone, Copy, Debug, Default)]
struct Heat {
    /// Calls between `cover` and the end of their guard.
    in_flight: u32,
    /// Highest sequence number shipped under this entry.
    last_seq: u64,
}

pub struct ActivityLog {
    log: Arc<ChangeLog>,
    hot: Mutex<HashMap<Key, Heat>>,
    limit: usize,
}

/// Keeps its entries from being retired until dropped; `shipped` tells them
/// the sequence number the change went out with.
pub struct Cover<'a> {
    al: &'a ActivityLog,
    keys: Vec<Key>,
    seq: u64,
}

impl Cover<'_> {
    pub fn shipped(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }
}

impl Drop for Cover<'_> {
    fn drop(&mut self) {
        let mut hot = self.al.hot.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(h) = hot.get_mut(k) {
                h.in_flight = h.in_flight.saturating_sub(1);
                h.last_seq = h.last_seq.max(self.seq);
            }
        }
    }
}

impl ActivityLog {
    pub fn new(log: Arc<ChangeLog>, limit: usize) -> ActivityLog {
        ActivityLog { log, hot: Mutex::new(HashMap::new()), limit: limit.max(1) }
    }

    /// Entries currently hot.
    pub fn len(&self) -> usize {
        self.hot.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cover blocks `first..=last` of `file` before they are shipped or
    /// written. `durable` is the mirror's durable mark, for retiring.
    pub fn cover_blocks(
        &self,
        file: &FsPath,
        first: u64,
        last: u64,
        durable: u64,
    ) -> Result<Cover<'_>, ChangeLogError> {
        let keys: Vec<Key> =
            (first / EXTENT_BLOCKS..=last / EXTENT_BLOCKS).map(|e| Key::Extent(file.clone(), e)).collect();
        let cover = self.enter(keys, durable)?;
        if cover.1 {
            self.log.record_extents(file, first, last)?;
        }
        Ok(cover.0)
    }

    /// Cover a namespace change of `path` (create, drop, truncate, rename,
    /// directories): recorded as touched, with `subtree` for directories.
    pub fn cover_path(&self, path: &FsPath, subtree: bool, durable: u64) -> Result<Cover<'_>, ChangeLogError> {
        let (cover, _) = self.enter(vec![Key::Path(path.clone())], durable)?;
        // A path is recorded on every namespace change (they are rare), so
        // the subtree flag is never lost to an earlier plain record.
        self.log.record_touched(path, subtree)?;
        Ok(cover)
    }

    /// Mark `keys` in flight; whether any of them was new.
    fn enter(&self, keys: Vec<Key>, durable: u64) -> Result<(Cover<'_>, bool), ChangeLogError> {
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        let mut new = false;
        for k in &keys {
            let h = hot.entry(k.clone()).or_insert_with(|| {
                new = true;
                Heat::default()
            });
            h.in_flight += 1;
        }
        if new && hot.len() > self.limit {
            self.retire(&mut hot, durable, self.limit / 4)?;
        }
        Ok((Cover { al: self, keys, seq: 0 }, new))
    }

    /// Retire every entry with nothing in flight whose changes the mirror
    /// has durably. Called with the table locked, so no entry is covered
    /// anew while the file is rewritten. Skipped when fewer than `least`
    /// would go (a rewrite costs the same for one entry or a thousand).
    fn retire(&self, hot: &mut HashMap<Key, Heat>, durable: u64, least: usize) -> Result<(), ChangeLogError> {
        let done: Vec<Key> =
            hot.iter().filter(|(_, h)| h.in_flight == 0 && h.last_seq <= durable).map(|(k, _)| k.clone()).collect();
        if done.is_empty() || done.len() < least {
            return Ok(());
        }
        let mut extents: BTreeMap<FsPath, BTreeSet<u64>> = BTreeMap::new();
        let mut touched = BTreeSet::new();
        for k in &done {
            match k {
                Key::Extent(p, e) => {
                    extents.entry(p.clone()).or_default().insert(*e);
                }
                Key::Path(p) => {
                    touched.insert(p.clone());
                }
            }
        }
        self.log.retire_active(&extents, &touched)?;
        for k in done {
            hot.remove(&k);
        }
        tracing::debug!(hot = hot.len(), "activity log: retired entries the mirror has durably");
        Ok(())
    }

    /// Retire whatever can be retired now, regardless of the limit (when
    /// the mirror has everything, say after an orderly shutdown).
    pub fn retire_all(&self, durable: u64) -> Result<(), ChangeLogError> {
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        self.retire(&mut hot, durable, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::SimDisk;
    use crate::path::RelPath;

    fn p(s: &str) -> FsPath {
        FsPath::new(0, RelPath::new(s).unwrap())
    }

    fn setup(limit: usize) -> (Arc<SimDisk>, Arc<ChangeLog>, ActivityLog) {
        let disk = Arc::new(SimDisk::new(1));
        let log = Arc::new(ChangeLog::create(disk.clone(), p("changelog"), 8192).unwrap());
        let al = ActivityLog::new(log.clone(), limit);
        (disk, log, al)
    }

    #[test]
    fn a_hot_extent_survives_a_crash_and_covers_every_block_in_it() {
        let (disk, _log, al) = setup(16);
        {
            let mut c = al.cover_blocks(&p("rel"), 33, 33, 0).unwrap();
            c.shipped(5);
        }
        let _c = al.cover_path(&p("dir"), true, 0).unwrap();
        disk.crash(None);
        let (log, _) = ChangeLog::open(disk.clone(), p("changelog")).unwrap();
        let set = log.change_set();
        for b in 32..64 {
            assert!(set.covers_block(&p("rel"), b), "block {b} of the hot extent");
        }
        assert!(!set.covers_block(&p("rel"), 31));
        assert_eq!(set.touched.get(&p("dir")), Some(&true));
    }

    #[test]
    fn writes_into_a_hot_extent_add_no_records() {
        let (_disk, log, al) = setup(16);
        drop(al.cover_blocks(&p("rel"), 0, 0, 0).unwrap());
        let groups = log.stats().groups_written;
        for b in 1..EXTENT_BLOCKS {
            drop(al.cover_blocks(&p("rel"), b, b, 0).unwrap());
        }
        assert_eq!(log.stats().groups_written, groups, "one record per newly hot extent, none per write");
    }

    #[test]
    fn entries_are_retired_only_once_durable_on_the_mirror_and_idle() {
        let (disk, log, al) = setup(8);
        for e in 0..8u64 {
            let mut c = al.cover_blocks(&p("rel"), e * EXTENT_BLOCKS, e * EXTENT_BLOCKS, 0).unwrap();
            c.shipped(e + 1);
        }
        // One still in flight: never retired.
        let busy = al.cover_blocks(&p("busy"), 0, 0, 0).unwrap();
        // The mirror has everything through 4 durably: extents 0..4 may go.
        drop(al.cover_blocks(&p("rel"), 100 * EXTENT_BLOCKS, 100 * EXTENT_BLOCKS, 4).unwrap());
        assert_eq!(al.len(), 10 - 4, "four retired");
        let set = log.change_set();
        assert!(!set.covers_block(&p("rel"), 0));
        assert!(set.covers_block(&p("rel"), 4 * EXTENT_BLOCKS), "not yet durable on the mirror");
        assert!(set.covers_block(&p("busy"), 0), "in flight");
        drop(busy);
        disk.crash(None);
        let (log, _) = ChangeLog::open(disk, p("changelog")).unwrap();
        let set = log.change_set();
        assert!(!set.covers_block(&p("rel"), 0), "retired for good");
        assert!(set.covers_block(&p("rel"), 7 * EXTENT_BLOCKS));
        assert!(set.covers_block(&p("busy"), 0));
        assert!(set.covers_block(&p("rel"), 100 * EXTENT_BLOCKS));
    }

    #[test]
    fn recovered_entries_are_never_retired() {
        let (disk, _log, al) = setup(4);
        drop(al.cover_blocks(&p("old"), 0, 0, 0).unwrap());
        drop(al);
        disk.crash(None);
        let (log, _) = ChangeLog::open(disk, p("changelog")).unwrap();
        let log = Arc::new(log);
        let al = ActivityLog::new(log.clone(), 4);
        al.cover_blocks(&p("old"), 0, 0, 0).map(drop).unwrap();
        al.retire_all(u64::MAX).unwrap();
        assert!(log.change_set().covers_block(&p("old"), 5), "a crash's extent stays until the resync clears it");
    }
}
