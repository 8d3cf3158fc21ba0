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
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Entries held before retiring is tried (1024 extents of 32 blocks of
/// 32 KiB: 1 GiB of hot data; the file stays a few tens of KiB).
pub const DEFAULT_LIMIT: usize = 1024;
/// The table is split by file so writers of different files do not meet
/// on one lock: this sits on every write's path.
const SHARDS: usize = 64;

#[derive(Clone, Copy, Debug, Default)]
struct Heat {
    /// Calls between `cover` and the end of their guard.
    in_flight: u32,
    /// Highest sequence number shipped under this entry.
    last_seq: u64,
}

#[derive(Default)]
struct Shard {
    extents: HashMap<FsPath, HashMap<u64, Heat>>,
    paths: HashMap<FsPath, Heat>,
}

pub struct ActivityLog {
    log: Arc<ChangeLog>,
    shards: Vec<Mutex<Shard>>,
    /// Entries in all shards (approximate between locks; exact under all).
    entries: AtomicUsize,
    /// Entries at which retiring is tried next: after an attempt that could
    /// retire too little (the mirror's durable mark lags), not before more
    /// entries came, so a scan does not run on every newly hot extent.
    next_try: AtomicUsize,
    limit: usize,
}

/// What a cover holds.
enum Covered {
    Extents(u64, u64),
    Path,
}

/// Keeps its entries from being retired until dropped; `shipped` tells them
/// the sequence number the change went out with.
pub struct Cover<'a> {
    al: &'a ActivityLog,
    shard: usize,
    file: &'a FsPath,
    what: Covered,
    seq: u64,
}

impl Cover<'_> {
    pub fn shipped(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }
}

impl Drop for Cover<'_> {
    fn drop(&mut self) {
        let mut shard = lock(&self.al.shards[self.shard]);
        let done = |h: &mut Heat| {
            h.in_flight = h.in_flight.saturating_sub(1);
            h.last_seq = h.last_seq.max(self.seq);
        };
        match self.what {
            Covered::Extents(first, last) => {
                if let Some(es) = shard.extents.get_mut(self.file) {
                    for e in first..=last {
                        if let Some(h) = es.get_mut(&e) {
                            done(h);
                        }
                    }
                }
            }
            Covered::Path => {
                if let Some(h) = shard.paths.get_mut(self.file) {
                    done(h);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard_of(p: &FsPath) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl ActivityLog {
    pub fn new(log: Arc<ChangeLog>, limit: usize) -> ActivityLog {
        ActivityLog {
            log,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            entries: AtomicUsize::new(0),
            next_try: AtomicUsize::new(limit.max(1) + 1),
            limit: limit.max(1),
        }
    }

    /// Entries currently hot.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cover blocks `first..=last` of `file` before they are shipped or
    /// written. `durable` is the mirror's durable mark, for retiring.
    pub fn cover_blocks<'a>(
        &'a self,
        file: &'a FsPath,
        first: u64,
        last: u64,
        durable: u64,
    ) -> Result<Cover<'a>, ChangeLogError> {
        let (first_e, last_e) = (first / EXTENT_BLOCKS, last / EXTENT_BLOCKS);
        let shard = shard_of(file);
        let mut new = 0;
        {
            let mut sh = lock(&self.shards[shard]);
            // Only a file not seen before costs a clone of its name.
            if !sh.extents.contains_key(file) {
                sh.extents.insert(file.clone(), HashMap::new());
            }
            if let Some(es) = sh.extents.get_mut(file) {
                for e in first_e..=last_e {
                    let h = es.entry(e).or_insert_with(|| {
                        new += 1;
                        Heat::default()
                    });
                    h.in_flight += 1;
                }
            }
        }
        let cover = Cover { al: self, shard, file, what: Covered::Extents(first_e, last_e), seq: 0 };
        if new > 0 {
            self.grown(new, durable)?;
            self.log.record_extents(file, first, last)?;
        }
        Ok(cover)
    }

    /// Cover a namespace change of `path` (create, drop, truncate, rename,
    /// directories): recorded as touched, with `subtree` for directories.
    pub fn cover_path<'a>(
        &'a self,
        path: &'a FsPath,
        subtree: bool,
        durable: u64,
    ) -> Result<Cover<'a>, ChangeLogError> {
        let shard = shard_of(path);
        let new = {
            let mut sh = lock(&self.shards[shard]);
            let new = !sh.paths.contains_key(path);
            sh.paths.entry(path.clone()).or_default().in_flight += 1;
            new
        };
        let cover = Cover { al: self, shard, file: path, what: Covered::Path, seq: 0 };
        if new {
            self.grown(1, durable)?;
        }
        // A path is recorded on every namespace change (they are rare), so
        // the subtree flag is never lost to an earlier plain record.
        self.log.record_touched(path, subtree)?;
        Ok(cover)
    }

    /// Count new entries; past the limit, retire what the mirror has.
    fn grown(&self, n: usize, durable: u64) -> Result<(), ChangeLogError> {
        let now = self.entries.fetch_add(n, Ordering::AcqRel) + n;
        if now >= self.next_try.load(Ordering::Acquire) {
            let retired = self.retire(durable, self.limit / 4)?;
            let next = if retired > 0 { self.limit + 1 } else { now + (self.limit / 8).max(1) };
            self.next_try.store(next, Ordering::Release);
        }
        Ok(())
    }

    /// Retire every entry with nothing in flight whose changes the mirror
    /// has durably. Every shard is locked meanwhile, so no entry is covered
    /// anew while the file is rewritten. Skipped when fewer than `least`
    /// would go (a rewrite costs the same for one entry or a thousand).
    fn retire(&self, durable: u64, least: usize) -> Result<usize, ChangeLogError> {
        let mut all: Vec<_> = self.shards.iter().map(lock).collect();
        let idle = |h: &Heat| h.in_flight == 0 && h.last_seq <= durable;
        let mut extents: BTreeMap<FsPath, BTreeSet<u64>> = BTreeMap::new();
        let mut touched = BTreeSet::new();
        for sh in all.iter() {
            for (p, es) in &sh.extents {
                let done: BTreeSet<u64> = es.iter().filter(|(_, h)| idle(h)).map(|(e, _)| *e).collect();
                if !done.is_empty() {
                    extents.insert(p.clone(), done);
                }
            }
            touched.extend(sh.paths.iter().filter(|(_, h)| idle(h)).map(|(p, _)| p.clone()));
        }
        let n = extents.values().map(|e| e.len()).sum::<usize>() + touched.len();
        if n == 0 || n < least {
            return Ok(0);
        }
        self.log.retire_active(&extents, &touched)?;
        for sh in all.iter_mut() {
            for (p, done) in &extents {
                if let Some(es) = sh.extents.get_mut(p) {
                    es.retain(|e, _| !done.contains(e));
                    if es.is_empty() {
                        sh.extents.remove(p);
                    }
                }
            }
            sh.paths.retain(|p, _| !touched.contains(p));
        }
        self.entries.fetch_sub(n, Ordering::AcqRel);
        tracing::debug!(retired = n, hot = self.len(), "activity log: retired entries the mirror has durably");
        Ok(n)
    }

    /// Retire whatever can be retired now, regardless of the limit (when
    /// the mirror has everything, say after an orderly shutdown).
    pub fn retire_all(&self, durable: u64) -> Result<usize, ChangeLogError> {
        self.retire(durable, 1)
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
        let (rel, dir) = (p("rel"), p("dir"));
        {
            let mut c = al.cover_blocks(&rel, 33, 33, 0).unwrap();
            c.shipped(5);
        }
        let _c = al.cover_path(&dir, true, 0).unwrap();
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
        let rel = p("rel");
        drop(al.cover_blocks(&rel, 0, 0, 0).unwrap());
        let groups = log.stats().groups_written;
        for b in 1..EXTENT_BLOCKS {
            drop(al.cover_blocks(&rel, b, b, 0).unwrap());
        }
        assert_eq!(log.stats().groups_written, groups, "one record per newly hot extent, none per write");
    }

    #[test]
    fn entries_are_retired_only_once_durable_on_the_mirror_and_idle() {
        let (disk, log, al) = setup(8);
        let (rel, busy_file) = (p("rel"), p("busy"));
        for e in 0..8u64 {
            let mut c = al.cover_blocks(&rel, e * EXTENT_BLOCKS, e * EXTENT_BLOCKS, 0).unwrap();
            c.shipped(e + 1);
        }
        // One still in flight: never retired.
        let busy = al.cover_blocks(&busy_file, 0, 0, 0).unwrap();
        // The mirror has everything through 4 durably: extents 0..4 may go.
        drop(al.cover_blocks(&rel, 100 * EXTENT_BLOCKS, 100 * EXTENT_BLOCKS, 4).unwrap());
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
        let old = p("old");
        drop(al.cover_blocks(&old, 0, 0, 0).unwrap());
        drop(al);
        disk.crash(None);
        let (log, _) = ChangeLog::open(disk, p("changelog")).unwrap();
        let log = Arc::new(log);
        let al = ActivityLog::new(log.clone(), 4);
        al.cover_blocks(&old, 0, 0, 0).map(drop).unwrap();
        al.retire_all(u64::MAX).unwrap();
        assert!(log.change_set().covers_block(&old, 5), "a crash's extent stays until the resync clears it");
    }

    #[test]
    fn an_orderly_shutdown_leaves_nothing_in_doubt() {
        let (disk, _log, al) = setup(64);
        let rel = p("rel");
        for b in 0..100 {
            let mut c = al.cover_blocks(&rel, b, b, 0).unwrap();
            c.shipped(b + 1);
        }
        assert_eq!(al.retire_all(100).unwrap(), 4, "four extents, all durable on the mirror");
        disk.crash(None);
        let (log, _) = ChangeLog::open(disk, p("changelog")).unwrap();
        assert!(log.change_set().is_empty());
    }
}
