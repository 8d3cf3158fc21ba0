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

use crate::durable::changelog::{ChangeLog, ChangeLogError, EXTENT_BLOCKS};
use crate::io::disk::{Disk, DiskError, DiskErrorKind, FsPath, OpenMode};
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

/// xxh3 rather than SipHash: these maps are looked up twice per write, and
/// their keys come from the host, not from the network.
type Fast = xxhash_rust::xxh3::Xxh3DefaultBuilder;

#[derive(Default)]
struct Shard {
    extents: HashMap<FsPath, HashMap<u64, Heat, Fast>, Fast>,
    paths: HashMap<FsPath, Heat, Fast>,
}

pub struct ActivityLog {
    log: Arc<ChangeLog>,
    /// The primary's own filespaces: what an entry covers is made durable
    /// here before the entry is retired.
    data: Arc<dyn Disk>,
    shards: Vec<Mutex<Shard>>,
    /// Entries in all shards (approximate between locks; exact under all).
    entries: AtomicUsize,
    /// Entries at which retiring is tried next: after an attempt that could
    /// retire too little (the mirror's durable mark lags), not before more
    /// entries came, so a scan does not run on every newly hot extent.
    next_try: AtomicUsize,
    limit: usize,
    /// Set by [`ActivityLog::shared`]: retiring then runs on a thread of its
    /// own; without it (unit tests) it runs inline.
    me: std::sync::OnceLock<std::sync::Weak<ActivityLog>>,
    retiring: std::sync::atomic::AtomicBool,
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
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    p.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl ActivityLog {
    pub fn new(log: Arc<ChangeLog>, data: Arc<dyn Disk>, limit: usize) -> ActivityLog {
        ActivityLog {
            log,
            data,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            entries: AtomicUsize::new(0),
            next_try: AtomicUsize::new(limit.max(1) + 1),
            limit: limit.max(1),
            me: std::sync::OnceLock::new(),
            retiring: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// An activity log that retires in the background (the primary's).
    pub fn shared(log: Arc<ChangeLog>, data: Arc<dyn Disk>, limit: usize) -> Arc<ActivityLog> {
        let al = Arc::new(ActivityLog::new(log, data, limit));
        let _ = al.me.set(Arc::downgrade(&al));
        al
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
                sh.extents.insert(file.clone(), HashMap::default());
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
        if now < self.next_try.load(Ordering::Acquire) {
            return Ok(());
        }
        // Retiring syncs files and rewrites the log: not on a writer's path
        // (it holds its file's lock, which a mirror-loss decision waits for).
        if let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) {
            if !self.retiring.swap(true, Ordering::AcqRel) {
                let spawned = std::thread::Builder::new().name("filerep-al-retire".into()).spawn(move || {
                    if let Err(e) = me.retire_and_schedule(now, durable) {
                        tracing::error!(error = %e, "activity log: retiring failed; entries stay");
                    }
                    me.retiring.store(false, Ordering::Release);
                });
                if spawned.is_err() {
                    self.retiring.store(false, Ordering::Release);
                }
            }
            return Ok(());
        }
        self.retire_and_schedule(now, durable)
    }

    fn retire_and_schedule(&self, now: usize, durable: u64) -> Result<(), ChangeLogError> {
        let retired = self.retire(durable, self.limit / 4)?;
        let next = if retired > 0 { self.limit + 1 } else { now + (self.limit / 8).max(1) };
        self.next_try.store(next, Ordering::Release);
        Ok(())
    }

    /// Retire every entry with nothing in flight whose changes the mirror
    /// has durably, once they are durable here too: a write the mirror has
    /// may still sit in this host's page cache, and a crash that loses it
    /// leaves a difference only this entry names. Skipped when fewer than
    /// `least` would go (a rewrite costs the same for one entry or a
    /// thousand). Returns how many were retired.
    fn retire(&self, durable: u64, least: usize) -> Result<usize, ChangeLogError> {
        // 1. Candidates, with the sequence number each was last shipped with.
        let idle = |h: &Heat| h.in_flight == 0 && h.last_seq <= durable;
        let mut extents: BTreeMap<FsPath, BTreeMap<u64, u64>> = BTreeMap::new();
        let mut paths: BTreeMap<FsPath, u64> = BTreeMap::new();
        for shard in &self.shards {
            let sh = lock(shard);
            for (p, es) in &sh.extents {
                let done: BTreeMap<u64, u64> =
                    es.iter().filter(|(_, h)| idle(h)).map(|(e, h)| (*e, h.last_seq)).collect();
                if !done.is_empty() {
                    extents.insert(p.clone(), done);
                }
            }
            paths.extend(sh.paths.iter().filter(|(_, h)| idle(h)).map(|(p, h)| (p.clone(), h.last_seq)));
        }
        let n = extents.values().map(|e| e.len()).sum::<usize>() + paths.len();
        if n == 0 || n < least {
            return Ok(0);
        }
        // 2. Make them durable here, without holding the table: writers go on.
        self.sync_local(extents.keys(), paths.keys())?;
        // 3. Retire those untouched since step 1 (a later write may be only
        // in the page cache), with every shard locked so none is covered anew
        // while the file is rewritten.
        let mut all: Vec<_> = self.shards.iter().map(lock).collect();
        let same = |h: Option<&Heat>, seq: u64| h.is_some_and(|h| h.in_flight == 0 && h.last_seq == seq);
        let mut gone_extents: BTreeMap<FsPath, BTreeSet<u64>> = BTreeMap::new();
        let mut gone_paths = BTreeSet::new();
        for sh in all.iter() {
            for (p, es) in &extents {
                if let Some(hot) = sh.extents.get(p) {
                    let keep: BTreeSet<u64> =
                        es.iter().filter(|(e, seq)| same(hot.get(e), **seq)).map(|(e, _)| *e).collect();
                    if !keep.is_empty() {
                        gone_extents.entry(p.clone()).or_default().extend(keep);
                    }
                }
            }
            for (p, seq) in &paths {
                if same(sh.paths.get(p), *seq) {
                    gone_paths.insert(p.clone());
                }
            }
        }
        let n = gone_extents.values().map(|e| e.len()).sum::<usize>() + gone_paths.len();
        if n == 0 {
            return Ok(0);
        }
        self.log.retire_active(&gone_extents, &gone_paths)?;
        for sh in all.iter_mut() {
            for (p, done) in &gone_extents {
                if let Some(es) = sh.extents.get_mut(p) {
                    es.retain(|e, _| !done.contains(e));
                    if es.is_empty() {
                        sh.extents.remove(p);
                    }
                }
            }
            sh.paths.retain(|p, _| !gone_paths.contains(p));
        }
        self.entries.fetch_sub(n, Ordering::AcqRel);
        tracing::debug!(retired = n, hot = self.len(), "activity log: retired entries durable on both sides");
        Ok(n)
    }

    /// fdatasync every file with entries, and the directory holding each
    /// path with entries (its name, created, removed or renamed). A file or
    /// directory that is gone needs nothing: its removal is a path entry of
    /// its own. Any other failure keeps the entries (rule 8).
    fn sync_local<'a>(
        &self,
        files: impl Iterator<Item = &'a FsPath>,
        paths: impl Iterator<Item = &'a FsPath>,
    ) -> Result<(), ChangeLogError> {
        let gone = |e: &DiskError| e.kind == DiskErrorKind::NotFound;
        let failed = |source| ChangeLogError::Disk { op: "sync the primary's data before retiring", source };
        for f in files {
            match self.data.open(f, OpenMode::Existing) {
                Ok(h) => h.sync_data().map_err(failed)?,
                Err(e) if gone(&e) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        for p in paths {
            match self.data.sync_parent_dir(p) {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        Ok(())
    }

    /// A new stream (a mirror taken back from change tracking): the table
    /// starts empty. Its entries' sequence numbers belong to the old stream,
    /// and what they covered stays in the change-log, pinned (extents when
    /// the mirror was marked down, paths when it is taken back), for the
    /// resync to ship and clear once it is durable on both sides. Kept here,
    /// they would retire against the new stream's acknowledgements, or be
    /// kept through every resync checkpoint.
    pub fn restart_stream(&self) {
        let mut all: Vec<_> = self.shards.iter().map(lock).collect();
        for sh in all.iter_mut() {
            sh.extents.clear();
            sh.paths.clear();
        }
        self.entries.store(0, Ordering::Release);
        self.next_try.store(self.limit + 1, Ordering::Release);
    }

    /// Clear the change-log (a finished resync) but this table's entries,
    /// which stay recorded and are retired as usual: they cover writes
    /// streamed during the resync that may not be durable on both sides yet
    /// (found by the fault simulator: forgetting them left such a write
    /// named nowhere). Settled entries go (see
    /// [`ActivityLog::clear_entries`]). One step with every shard locked,
    /// so no cover makes an entry hot in between. `false` if a rename owes
    /// the resync another pass ([`ChangeLog::clear_keeping`]): nothing cleared.
    pub fn clear_with_log(&self, flushes: &BTreeMap<FsPath, u64>) -> Result<bool, ChangeLogError> {
        let mut all: Vec<_> = self.shards.iter().map(lock).collect();
        self.drop_settled(&mut all, flushes);
        let (extents, paths) = Self::entries_of(&all);
        self.log.clear_keeping(&extents, &paths)
    }

    /// A resync's progress ([`ChangeLog::clear_entries`]), keeping this
    /// table's entries recorded: a write streamed meanwhile into a cleared
    /// extent or path is covered by nothing else until it is durable on
    /// both sides. Except the settled ones: extents of a file in `flushes`
    /// (synced on the mirror through that file's flush, and on this host by
    /// the caller) with nothing in flight and nothing shipped after that
    /// flush; kept, a later loss would pin them and the next resync would
    /// compare them again. With every shard locked, as
    /// [`ActivityLog::clear_with_log`].
    pub fn clear_entries(
        &self,
        blocks: &BTreeMap<FsPath, BTreeSet<u64>>,
        paths: &[FsPath],
        flushes: &BTreeMap<FsPath, u64>,
    ) -> Result<(), ChangeLogError> {
        let mut all: Vec<_> = self.shards.iter().map(lock).collect();
        self.drop_settled(&mut all, flushes);
        let (keep_extents, keep_paths) = Self::entries_of(&all);
        self.log.clear_entries_keeping(blocks, paths, &keep_extents, &keep_paths)
    }

    fn drop_settled(&self, shards: &mut [std::sync::MutexGuard<'_, Shard>], flushes: &BTreeMap<FsPath, u64>) {
        let mut gone = 0;
        for (f, synced) in flushes {
            let sh = &mut shards[shard_of(f)];
            if let Some(es) = sh.extents.get_mut(f) {
                let before = es.len();
                es.retain(|_, h| h.in_flight > 0 || h.last_seq > *synced);
                gone += before - es.len();
                if es.is_empty() {
                    sh.extents.remove(f);
                }
            }
        }
        self.entries.fetch_sub(gone, Ordering::AcqRel);
    }

    fn entries_of(shards: &[std::sync::MutexGuard<'_, Shard>]) -> (BTreeMap<FsPath, BTreeSet<u64>>, BTreeSet<FsPath>) {
        let mut extents: BTreeMap<FsPath, BTreeSet<u64>> = BTreeMap::new();
        let mut paths = BTreeSet::new();
        for sh in shards {
            for (p, es) in &sh.extents {
                if !es.is_empty() {
                    extents.entry(p.clone()).or_default().extend(es.keys().copied());
                }
            }
            paths.extend(sh.paths.keys().cloned());
        }
        (extents, paths)
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
    use crate::io::disk::SimDisk;
    use crate::protocol::path::RelPath;

    fn p(s: &str) -> FsPath {
        FsPath::new(0, RelPath::new(s).unwrap())
    }

    fn setup(limit: usize) -> (Arc<SimDisk>, Arc<ChangeLog>, ActivityLog) {
        let disk = Arc::new(SimDisk::new(1));
        let log = Arc::new(ChangeLog::create(disk.clone(), p("changelog"), 8192).unwrap());
        let al = ActivityLog::new(log.clone(), disk.clone(), limit);
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
        let (log, _) = ChangeLog::open(disk.clone(), p("changelog")).unwrap();
        let log = Arc::new(log);
        let al = ActivityLog::new(log.clone(), disk, 4);
        al.cover_blocks(&old, 0, 0, 0).map(drop).unwrap();
        al.retire_all(u64::MAX).unwrap();
        assert!(log.change_set().covers_block(&old, 5), "a crash's extent stays until the resync clears it");
    }

    #[test]
    fn an_entry_is_retired_only_once_the_primarys_own_write_is_durable() {
        // The hazard the fault simulator found: the mirror has the write
        // durably, this host only in its page cache. Retiring first would
        // leave a crash's difference unnamed.
        let (disk, _log, al) = setup(64);
        let rel = p("rel");
        let f = disk.open(&rel, OpenMode::CreateNew).unwrap();
        disk.sync_parent_dir(&rel).unwrap();
        {
            let mut c = al.cover_blocks(&rel, 3, 3, 0).unwrap();
            f.write_at(3 * 8192, &[7u8; 8192]).unwrap();
            c.shipped(1);
        }
        assert_eq!(al.retire_all(1).unwrap(), 1);
        disk.crash(None);
        let f = disk.open(&rel, OpenMode::Existing).unwrap();
        let mut buf = vec![0u8; 8192];
        assert_eq!(f.read_at(3 * 8192, &mut buf).unwrap(), 8192, "the write was made durable before its entry went");
        assert_eq!(buf, vec![7u8; 8192]);
    }

    #[test]
    fn a_write_after_the_local_sync_keeps_its_entry() {
        let (_disk, log, al) = setup(64);
        let rel = p("rel");
        drop(al.cover_blocks(&rel, 0, 0, 0).unwrap());
        // Shipped again with a newer number before the retire commits: the
        // snapshot's number no longer matches, so the entry stays.
        let mut c = al.cover_blocks(&rel, 1, 1, 0).unwrap();
        c.shipped(9);
        assert_eq!(al.retire_all(5).unwrap(), 0, "in flight or newer than the mirror's durable mark");
        drop(c);
        assert!(log.change_set().covers_block(&rel, 1));
    }

    /// Across a crash too: a checkpoint keeps the extents covering a write
    /// the mirror may lack (in flight, or shipped after the file's synced
    /// flush) and records every exact block done.
    #[test]
    fn a_resync_checkpoint_never_clears_an_extent_with_a_write_the_mirror_may_lack() {
        let (disk, log, al) = setup(16);
        let rel = p("rel");
        // Extent 0: a copy shipped as #5; extent 1: a write shipped as #7.
        for (b, seq) in [(3, 5), (33, 7)] {
            let mut c = al.cover_blocks(&rel, b, b, 0).unwrap();
            c.shipped(seq);
        }
        log.record_batch((0..96).map(|b| (rel.clone(), b)), std::iter::empty()).unwrap();
        let done: BTreeMap<FsPath, BTreeSet<u64>> = [(rel.clone(), (0..96).collect())].into_iter().collect();
        {
            // Extent 2: a write in flight; the mirror synced rel through #6.
            let _in_flight = al.cover_blocks(&rel, 70, 70, 0).unwrap();
            al.clear_entries(&done, &[], &BTreeMap::from([(rel.clone(), 6u64)])).unwrap();
        }
        for set in [log.change_set(), {
            disk.crash(None);
            ChangeLog::open(disk.clone(), p("changelog")).unwrap().0.change_set()
        }] {
            assert_eq!(set.distinct_blocks(), 0, "every exact block is recorded done");
            assert!((32..96).all(|b| set.covers_block(&rel, b)), "the live extents survive the checkpoint and a crash");
            assert!(!set.covers_block(&rel, 0), "the settled one goes");
        }
    }

    /// A resync checkpoint keeps a live entry (a write after the file's
    /// flush) and lets a settled one go (nothing after the flush); the
    /// final clear does the same; a new stream starts with an empty table.
    #[test]
    fn resync_clears_keep_live_entries_and_drop_settled_ones() {
        let (_disk, log, al) = setup(64);
        let (a, b) = (p("a"), p("b"));
        for (f, seq) in [(&a, 5), (&b, 9)] {
            let mut c = al.cover_blocks(f, 0, 0, 0).unwrap();
            c.shipped(seq);
        }
        // Both files flushed at #7: `a` is settled, `b` was written after.
        let flushes = BTreeMap::from([(a.clone(), 7u64), (b.clone(), 7u64)]);
        let done = BTreeMap::from([(a.clone(), (0..32).collect()), (b.clone(), (0..32).collect())]);
        al.clear_entries(&done, &[], &flushes).unwrap();
        let set = log.change_set();
        assert!(!set.covers_block(&a, 0) && set.covers_block(&b, 0), "{set:?}");
        assert_eq!(al.len(), 1);
        assert!(al.clear_with_log(&BTreeMap::from([(b.clone(), 12u64)])).unwrap());
        assert!(log.change_set().is_empty() && al.is_empty());
        let mut c = al.cover_blocks(&a, 40, 40, 0).unwrap();
        c.shipped(3);
        drop(c);
        al.restart_stream();
        assert!(al.is_empty());
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
