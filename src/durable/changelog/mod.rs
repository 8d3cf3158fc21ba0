//! The change-log: a durable record of every block and namespace change the
//! peer has not durably received (change tracking, brief rule 4).
//!
//! It lives in a file of its own (behind the [`Disk`] trait, so the simulator
//! can crash it and tear its tail). The file is a header followed by groups;
//! a group is one append, made durable by one `fdatasync`, holding any number
//! of records. Every group carries the xxh3 of its payload: replay stops at
//! the first group that is short or does not match (a torn tail), and the
//! file is cut back to the last good group. Compaction rewrites the file
//! with one record per run of consecutive changed blocks, so its size grows
//! with the distinct blocks changed, not with the writes.
//! `docs/changelog.md` describes the format byte by byte.
//!
//! Concurrency is group commit: any number of threads record changes; one of
//! them (the leader) writes and syncs everything pending while the others
//! wait for it; a block already recorded durably needs no wait at all.

use crate::durable::files;
use crate::io::disk::{Disk, DiskError, DiskFile, FsPath, OpenMode};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

mod doubt;
mod format;
mod replay;

use format::{file_header, Encoder};
pub use format::{FILE_MAGIC, GROUP_HEADER_LEN, GROUP_MAGIC, HEADER_LEN, MAX_GROUP, VERSION};

/// Most files one change-log can name.
pub const MAX_FILES: usize = 1 << 22;
pub use crate::core::resync::MAX_JOURNAL;

/// Blocks per extent. The first write into an extent waits for a durable
/// extent record; later writes into it record their block exactly, lazily
/// (with the next group commit). After a crash every block of a recorded
/// extent counts as changed (the activity-log design of brief rule 4).
pub const EXTENT_BLOCKS: u64 = crate::core::primary::EXTENT_BLOCKS;

#[derive(Debug, thiserror::Error)]
pub enum ChangeLogError {
    #[error("change-log {op}: {source}")]
    Disk {
        op: &'static str,
        #[source]
        source: DiskError,
    },
    #[error("change-log is not usable: {0}")]
    Corrupt(String),
    #[error("change-log is full: more than {MAX_FILES} files")]
    TooManyFiles,
    /// An earlier append failed: nothing more is claimed durable (rule 8).
    #[error("change-log failed earlier ({0}); a full resync is required")]
    Failed(String),
}

type Result<T> = std::result::Result<T, ChangeLogError>;

fn disk_err(op: &'static str) -> impl FnOnce(DiskError) -> ChangeLogError {
    move |source| ChangeLogError::Disk { op, source }
}

use crate::core::resync::runs;
pub use crate::core::resync::ChangeSet;

/// Blocks one record names at most (its count is a u32).
const MAX_RUN: u64 = u32::MAX as u64;

/// What replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub groups: u64,
    /// Bytes cut from the end: a group torn by a crash.
    pub torn_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeLogStats {
    /// Blocks named exactly.
    pub distinct_blocks: u64,
    /// Extents of [`EXTENT_BLOCKS`] blocks named as "may differ" (activity log, crash recovery).
    #[serde(default)]
    pub extents: u64,
    pub touched_paths: u64,
    pub bytes_on_disk: u64,
    pub groups_written: u64,
}

/// The single-threaded core: state, encoding, replay, compaction.
struct Inner {
    disk: Arc<dyn Disk>,
    path: FsPath,
    file: Arc<dyn DiskFile>,
    block_size: u32,
    set: ChangeSet,
    file_nos: HashMap<FsPath, u32>,
    /// Records not yet durable, and which blocks they add (for waiters).
    pending: Encoder,
    pending_blocks: Vec<(FsPath, u64)>,
    len: u64,
    next_group: u64,
    groups_written: u64,
    /// Extents found by replay: their lazy exact records may have been lost
    /// in the crash, so they stay (through compactions) until `clear`.
    recovered: BTreeMap<FsPath, BTreeSet<u64>>,
    /// Paths found by replay: kept when active entries are retired.
    recovered_touched: BTreeMap<FsPath, bool>,
    /// Resync: files whose exact blocks were recorded before the mirror was
    /// taken back (change tracking, replay, a peer's set), until a resync
    /// checkpoint clears them: their copies on the mirror may be stale.
    /// Exact records the activity log adds while streaming are not owed.
    owed_files: BTreeSet<FsPath>,
    /// Resync: where renames moved records still owed since the engine
    /// last took them ([`ChangeLog::rename_owed`]); in memory only, the
    /// records they name are durable and owed.
    redo: BTreeSet<FsPath>,
    /// Resync: every rename made since the mirror was taken back, in
    /// order, the first at position `journal_base` (the engine names what
    /// it shipped by position and translates it through later renames).
    journal: std::collections::VecDeque<crate::core::resync::Renamed>,
    journal_base: u64,
}

impl Inner {
    /// Files in snapshot order: with exact blocks or recovered extents.
    fn snapshot_files(&self, extents: &BTreeMap<FsPath, BTreeSet<u64>>) -> Vec<FsPath> {
        let mut files: BTreeSet<&FsPath> = self.set.blocks.keys().collect();
        files.extend(extents.keys());
        files.into_iter().cloned().collect()
    }

    fn file_no(&mut self, p: &FsPath) -> Result<u32> {
        if let Some(&n) = self.file_nos.get(p) {
            return Ok(n);
        }
        if self.file_nos.len() >= MAX_FILES {
            return Err(ChangeLogError::TooManyFiles);
        }
        // One past the highest number in use: numbers are never reused.
        let n = self.file_nos.values().copied().max().map_or(0, |m| m + 1);
        self.file_nos.insert(p.clone(), n);
        self.pending.file(n, p);
        Ok(n)
    }

    /// A change-log holding nothing yet, `len` bytes long.
    fn empty(disk: Arc<dyn Disk>, path: FsPath, file: Arc<dyn DiskFile>, block_size: u32, len: u64) -> Inner {
        Inner {
            disk,
            path,
            file,
            block_size,
            set: ChangeSet::default(),
            file_nos: HashMap::new(),
            pending: Encoder::default(),
            pending_blocks: Vec::new(),
            len,
            next_group: 1,
            groups_written: 0,
            recovered: BTreeMap::new(),
            recovered_touched: BTreeMap::new(),
            owed_files: BTreeSet::new(),
            redo: BTreeSet::new(),
            journal: Default::default(),
            journal_base: 0,
        }
    }

    /// The current set as one payload: runs of consecutive blocks, touched
    /// paths, and `extents` (recovered from a crash, or still active).
    fn snapshot_payload(&self, extents: &BTreeMap<FsPath, BTreeSet<u64>>) -> Encoder {
        let mut enc = Encoder::default();
        let empty = BTreeSet::new();
        for (no, p) in self.snapshot_files(extents).iter().enumerate() {
            let no = no as u32;
            enc.file(no, p);
            for e in extents.get(p).unwrap_or(&empty) {
                enc.extent(no, *e);
            }
            for (first, count) in runs(self.set.blocks.get(p).unwrap_or(&empty).iter().copied(), MAX_RUN) {
                enc.blocks(no, first, count as u32);
            }
        }
        for (p, subtree) in &self.set.touched {
            enc.touched(p, *subtree);
        }
        enc
    }
}

struct Shared {
    inner: Inner,
    /// Pending records have numbers up to `recorded`; durable up to `durable`.
    recorded: u64,
    durable: u64,
    leader: bool,
    failed: Option<String>,
    /// Blocks whose record is pending, with the number that makes them durable.
    pending_index: HashMap<(FsPath, u64), u64>,
    /// Extents whose record is pending, likewise.
    extent_pending: HashMap<(FsPath, u64), u64>,
}

impl Shared {
    /// An earlier append failed: nothing more is claimed durable (rule 8).
    fn usable(&self) -> Result<()> {
        match &self.failed {
            Some(f) => Err(ChangeLogError::Failed(f.clone())),
            None => Ok(()),
        }
    }

    /// Queue the exact record of a block not yet known; whether it was new.
    fn add_block(&mut self, file: &FsPath, block: u64) -> Result<bool> {
        if self.inner.set.blocks.get(file).is_some_and(|b| b.contains(&block)) {
            return Ok(false);
        }
        let no = self.inner.file_no(file)?;
        self.inner.pending.blocks(no, block, 1);
        self.inner.set.blocks.entry(file.clone()).or_default().insert(block);
        self.recorded += 1;
        self.pending_index.insert((file.clone(), block), self.recorded);
        self.inner.pending_blocks.push((file.clone(), block));
        Ok(true)
    }

    /// Queue exact records of `blocks` of `file`, one per run.
    fn add_blocks(&mut self, file: &FsPath, blocks: &BTreeSet<u64>) -> Result<()> {
        let no = self.inner.file_no(file)?;
        for (first, count) in runs(blocks.iter().copied(), MAX_RUN) {
            self.inner.pending.blocks(no, first, count as u32);
            self.recorded += 1;
        }
        self.inner.set.blocks.entry(file.clone()).or_default().extend(blocks.iter().copied());
        Ok(())
    }

    /// Queue an extent record unless the extent is recorded; the record
    /// number to wait for (0: already durable).
    fn add_extent(&mut self, file: &FsPath, extent: u64) -> Result<u64> {
        let key = (file.clone(), extent);
        if self.inner.set.extents.get(file).is_some_and(|e| e.contains(&extent)) {
            return Ok(self.extent_pending.get(&key).copied().unwrap_or(0));
        }
        let no = self.inner.file_no(file)?;
        self.inner.pending.extent(no, extent);
        self.inner.set.extents.entry(file.clone()).or_default().insert(extent);
        self.recorded += 1;
        self.extent_pending.insert(key, self.recorded);
        Ok(self.recorded)
    }

    /// Queue a touched record unless the path is recorded at least as broadly.
    fn add_touched(&mut self, path: &FsPath, subtree: bool) {
        if self.inner.set.touched.get(path).is_some_and(|t| *t || !subtree) {
            return;
        }
        self.inner.pending.touched(path, subtree);
        *self.inner.set.touched.entry(path.clone()).or_insert(false) |= subtree;
        self.recorded += 1;
    }
}

/// A change-log shared by any number of threads.
pub struct ChangeLog {
    shared: Mutex<Shared>,
    committed: Condvar,
    /// The fault noted in this process (`doubt.rs`), kept even when its
    /// file could not be written; the lock also keeps two notes apart.
    fault_note: Mutex<Option<String>>,
}

mod resync;

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChangeLog {
    /// Create an empty change-log at `path` (replacing any file there).
    pub fn create(disk: Arc<dyn Disk>, path: FsPath, block_size: u32) -> Result<ChangeLog> {
        let (file, _, _) = Self::write_fresh(&disk, &path, block_size, &Encoder::default())?;
        Ok(Self::wrap(Inner::empty(disk, path, file, block_size, HEADER_LEN as u64)))
    }

    /// Open and replay an existing change-log, cutting a torn tail.
    pub fn open(disk: Arc<dyn Disk>, path: FsPath) -> Result<(ChangeLog, Recovery)> {
        let file = disk.open(&path, OpenMode::Existing).map_err(disk_err("open"))?;
        // The block size and length come from the file's header and groups.
        let mut inner = Inner::empty(disk, path, file, 0, 0);
        let rec = inner.replay()?;
        let log = Self::wrap(inner);
        // Rule 8 across a restart: what the replay read may be pages that a
        // failed fdatasync let go before this process started (Linux keeps
        // them readable but never writes them). Groups appended after them
        // would leave damage in the middle at the next power cut. A fresh,
        // durable copy of what was read is the file from here on.
        log.compact()?;
        Ok((log, rec))
    }

    fn wrap(inner: Inner) -> ChangeLog {
        ChangeLog {
            shared: Mutex::new(Shared {
                inner,
                recorded: 0,
                durable: 0,
                leader: false,
                failed: None,
                pending_index: HashMap::new(),
                extent_pending: HashMap::new(),
            }),
            committed: Condvar::new(),
            fault_note: Mutex::new(None),
        }
    }

    /// Write header + groups to `path` atomically ([`files::replace`]: a
    /// temporary file, fdatasync, rename, fsync of the directory).
    fn write_fresh(
        disk: &Arc<dyn Disk>,
        path: &FsPath,
        block_size: u32,
        payload: &Encoder,
    ) -> Result<(Arc<dyn DiskFile>, u64, u64)> {
        let mut bytes = file_header(block_size).to_vec();
        let (groups, n) = payload.groups(1);
        bytes.extend(groups);
        let f = files::replace(disk.as_ref(), path, &bytes).map_err(disk_err("rewrite"))?;
        Ok((f, bytes.len() as u64, n))
    }

    /// Record that `block` of `file` changed, and return once that record is
    /// durable. A block already recorded durably returns at once; one whose
    /// record is pending waits for the same group commit.
    pub fn record_block(&self, file: &FsPath, block: u64) -> Result<()> {
        let mut s = lock(&self.shared);
        s.usable()?;
        // The exact record goes out with the next group commit; nobody waits for it.
        if !s.add_block(file, block)? && !s.pending_index.contains_key(&(file.clone(), block)) {
            return Ok(());
        }
        // Covered once its extent's record is durable.
        match s.add_extent(file, block / EXTENT_BLOCKS)? {
            0 => Ok(()),
            n => self.wait_durable(s, n),
        }
    }

    /// Record a namespace change of `path` (and, with `subtree`, of
    /// everything under it), durably.
    pub fn record_touched(&self, path: &FsPath, subtree: bool) -> Result<()> {
        let mut s = lock(&self.shared);
        s.usable()?;
        s.add_touched(path, subtree);
        // Already recorded at least as broadly or not, it must be durable.
        let n = s.recorded;
        self.wait_durable(s, n)
    }

    /// Record many changes with one group commit (a whole in-flight window
    /// when the mirror is lost).
    pub fn record_batch(
        &self,
        blocks: impl IntoIterator<Item = (FsPath, u64)>,
        touched: impl IntoIterator<Item = (FsPath, bool)>,
    ) -> Result<()> {
        let mut s = lock(&self.shared);
        s.usable()?;
        for (file, block) in blocks {
            s.add_block(&file, block)?;
        }
        for (path, subtree) in touched {
            s.add_touched(&path, subtree);
        }
        // Everything recorded so far, ours included, must be durable.
        let n = s.recorded;
        self.wait_durable(s, n)
    }

    /// Wait until record `n` is durable, leading the group commit if nobody is.
    fn wait_durable<'a>(&'a self, mut s: MutexGuard<'a, Shared>, n: u64) -> Result<()> {
        loop {
            if s.durable >= n {
                return Ok(());
            }
            if let Some(f) = &s.failed {
                return Err(ChangeLogError::Failed(f.clone()));
            }
            if !s.leader {
                // Lead: take everything pending, write it with the lock released.
                s.leader = true;
                let payload = std::mem::take(&mut s.inner.pending);
                let blocks = std::mem::take(&mut s.inner.pending_blocks);
                let upto = s.recorded;
                let Shared { inner, .. } = &mut *s;
                let file = inner.file.clone();
                let (g, ngroups) = payload.groups(inner.next_group);
                let at = inner.len;
                drop(s);
                let r = file.write_at(at, &g).and_then(|_| file.sync_data());
                s = lock(&self.shared);
                s.leader = false;
                match r {
                    Ok(()) => {
                        s.inner.len += g.len() as u64;
                        s.inner.next_group += ngroups;
                        s.inner.groups_written += ngroups;
                        s.durable = upto;
                        for b in blocks {
                            s.pending_index.remove(&b);
                        }
                        s.extent_pending.retain(|_, n| *n > upto);
                    }
                    Err(e) => {
                        // Rule 8: never retried into a success.
                        tracing::error!(error = %e, "change-log append failed");
                        s.failed = Some(e.to_string());
                    }
                }
                self.committed.notify_all();
                continue;
            }
            s = self.committed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether `block` of `file` is recorded (durably or pending).
    pub fn contains_block(&self, file: &FsPath, block: u64) -> bool {
        lock(&self.shared).inner.set.blocks.get(file).is_some_and(|b| b.contains(&block))
    }

    /// A copy of everything recorded.
    pub fn change_set(&self) -> ChangeSet {
        lock(&self.shared).inner.set.clone()
    }

    pub fn stats(&self) -> ChangeLogStats {
        let s = lock(&self.shared);
        ChangeLogStats {
            distinct_blocks: s.inner.set.distinct_blocks(),
            extents: s.inner.set.extents.values().map(|e| e.len() as u64).sum(),
            touched_paths: s.inner.set.touched.len() as u64,
            bytes_on_disk: s.inner.len,
            groups_written: s.inner.groups_written,
        }
    }

    pub fn block_size(&self) -> u32 {
        lock(&self.shared).inner.block_size
    }

    /// Rewrite the file with one record per run of consecutive blocks
    /// (atomically: a crash leaves the old file or the new one).
    pub fn compact(&self) -> Result<()> {
        let mut s = lock(&self.shared);
        // Let a running group commit finish first: it appends to the old file.
        while s.leader {
            s = self.committed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        let extents = s.inner.recovered.clone();
        self.compact_locked(&mut s, extents)
    }

    /// Rewrite the file keeping `extents` (and every exact block and touched
    /// path); afterwards the in-memory extents are exactly those.
    fn compact_locked(&self, s: &mut MutexGuard<'_, Shared>, extents: BTreeMap<FsPath, BTreeSet<u64>>) -> Result<()> {
        s.usable()?;
        let payload = s.inner.snapshot_payload(&extents);
        let disk = s.inner.disk.clone();
        let path = s.inner.path.clone();
        let (file, len, groups) = match Self::write_fresh(&disk, &path, s.inner.block_size, &payload) {
            Ok(x) => x,
            Err(e) => {
                // The directory may now name the new file or the old one:
                // nothing appended from here on could be trusted (rule 8).
                s.failed = Some(e.to_string());
                self.committed.notify_all();
                return Err(e);
            }
        };
        let inner = &mut s.inner;
        inner.file = file;
        inner.len = len;
        inner.next_group = 1 + groups;
        // File numbers restart with the snapshot's numbering.
        inner.file_nos = inner.snapshot_files(&extents).into_iter().enumerate().map(|(n, p)| (p, n as u32)).collect();
        inner.pending = Encoder::default();
        inner.pending_blocks.clear();
        // Every block written since start is now recorded exactly and
        // durably; only the extents kept still stand.
        s.inner.set.extents = extents;
        s.extent_pending.clear();
        s.durable = s.recorded;
        s.pending_index.clear();
        self.committed.notify_all();
        Ok(())
    }

    /// Forget everything (after a completed resync), durably.
    pub fn clear(&self) -> Result<()> {
        // One lock hold: no commit can slip in between forgetting and rewriting.
        let mut s = lock(&self.shared);
        while s.leader {
            s = self.committed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.inner.set = ChangeSet::default();
        s.inner.recovered.clear();
        s.inner.recovered_touched.clear();
        s.inner.owed_files.clear();
        s.inner.file_nos.clear();
        self.compact_locked(&mut s, BTreeMap::new())
    }

    /// Activity log (brief rule 5): make sure every extent holding blocks
    /// `first..=last` of `file` is recorded durably, without recording the
    /// blocks themselves. An extent already durable costs nothing; one whose
    /// record is pending waits for the same group commit.
    pub fn record_extents(&self, file: &FsPath, first: u64, last: u64) -> Result<()> {
        let mut s = lock(&self.shared);
        s.usable()?;
        let mut wait_for = 0;
        for extent in first / EXTENT_BLOCKS..=last / EXTENT_BLOCKS {
            wait_for = wait_for.max(s.add_extent(file, extent)?);
        }
        if wait_for == 0 {
            return Ok(());
        }
        self.wait_durable(s, wait_for)
    }

    /// Retire activity-log entries the peer now has durably: rewrite the
    /// file without the extents in `extents` and the paths in `touched`
    /// (anything recovered from a crash, and every exact block, stays).
    pub fn retire_active(&self, extents: &BTreeMap<FsPath, BTreeSet<u64>>, touched: &BTreeSet<FsPath>) -> Result<()> {
        let mut s = lock(&self.shared);
        while s.leader {
            s = self.committed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        let mut keep = s.inner.set.extents.clone();
        for (p, es) in extents {
            if let Some(k) = keep.get_mut(p) {
                let recovered = s.inner.recovered.get(p);
                k.retain(|e| !es.contains(e) || recovered.is_some_and(|r| r.contains(e)));
                if k.is_empty() {
                    keep.remove(p);
                }
            }
        }
        let Inner { set, recovered_touched, .. } = &mut s.inner;
        set.touched.retain(|p, _| !touched.contains(p) || recovered_touched.contains_key(p));
        self.compact_locked(&mut s, keep)
    }

    /// Add a peer's change set (an old primary's activity log handed over
    /// when it returns as the mirror), durably, as exact blocks and paths.
    pub fn merge(&self, set: &ChangeSet) -> Result<()> {
        let mut s = lock(&self.shared);
        s.usable()?;
        for (p, bs) in &set.blocks {
            for b in bs {
                s.add_block(p, *b)?;
            }
            s.inner.owed_files.insert(p.clone());
        }
        // A peer's extents stay extents ("may differ"), kept like recovered
        // ones: the resync compares their blocks rather than shipping them all.
        for (p, es) in &set.extents {
            for e in es {
                s.add_extent(p, *e)?;
                s.inner.recovered.entry(p.clone()).or_default().insert(*e);
            }
        }
        for (p, t) in &set.touched {
            s.add_touched(p, *t);
            // Owed to the resync: retiring an activity entry of the same
            // path must not drop it.
            let e = s.inner.recovered_touched.entry(p.clone()).or_insert(false);
            *e |= *t;
        }
        let n = s.recorded;
        self.wait_durable(s, n)
    }

    /// Keep every extent recorded so far through later compactions, as if
    /// recovered from a crash (until `clear`): entering change tracking,
    /// the activity log's extents may cover writes not yet durable locally.
    pub fn pin_extents(&self) {
        let mut s = lock(&self.shared);
        let Inner { set, recovered, .. } = &mut s.inner;
        for (p, es) in &set.extents {
            recovered.entry(p.clone()).or_default().extend(es.iter().copied());
        }
    }

    /// Keep these recorded extents through compactions and retiring, as if
    /// recovered from a crash (until a resync clears them): the activity
    /// log's entries when a mirror is taken back ([`ChangeLog::pin_extents`]
    /// pins them all when the mirror is marked down).
    pub fn pin_extents_of(&self, extents: &BTreeMap<FsPath, BTreeSet<u64>>) {
        let mut s = lock(&self.shared);
        let Inner { set, recovered, .. } = &mut s.inner;
        for (p, es) in extents {
            let pinned: Vec<u64> =
                set.extents.get(p).map(|have| es.intersection(have).copied().collect()).unwrap_or_default();
            if !pinned.is_empty() {
                recovered.entry(p.clone()).or_default().extend(pinned);
            }
        }
    }

    /// Keep every touched path recorded so far through retiring, as if
    /// recovered from a crash (until a resync clears it): taking a mirror
    /// back, the paths change tracking recorded are owed to the resync, and
    /// an activity-log entry of the same path (hot before the loss, or
    /// covered anew) must not take the record with it when it retires.
    /// The files with exact blocks are owed likewise ([`ChangeLog::rename_owed`]).
    pub fn pin_touched(&self) {
        let mut s = lock(&self.shared);
        let Inner { set, recovered_touched, owed_files, .. } = &mut s.inner;
        for (p, t) in &set.touched {
            *recovered_touched.entry(p.clone()).or_insert(false) |= *t;
        }
        owed_files.extend(set.blocks.keys().cloned());
    }

    /// What a resync must ship: every exact block and path, and only the
    /// extents that stand for blocks not known exactly (recovered from a
    /// crash, or pinned from the activity log). Extents this process
    /// recorded in change tracking have all their written blocks exactly.
    pub fn resync_set(&self) -> ChangeSet {
        let s = lock(&self.shared);
        ChangeSet {
            blocks: s.inner.set.blocks.clone(),
            touched: s.inner.set.touched.clone(),
            extents: s.inner.recovered.clone(),
        }
    }

    /// A resync's progress, durably: `blocks` of each file and `paths` no
    /// longer differ from the peer (extents wholly inside a cleared run go
    /// too, recovered or not). Appended as records, so a resync that stops
    /// continues with what is left.
    pub fn clear_entries(&self, blocks: &BTreeMap<FsPath, BTreeSet<u64>>, paths: &[FsPath]) -> Result<()> {
        self.clear_entries_keeping(blocks, paths, &BTreeMap::new(), &BTreeSet::new())
    }

    /// [`ChangeLog::clear_entries`], except that the extents and paths in
    /// `keep_extents` and `keep_paths` stay recorded (no longer as
    /// recovered): the activity log's live entries, which cover writes
    /// streamed meanwhile that are not yet durable on both sides. An extent
    /// inside a cleared run is recorded again after the run's Cleared
    /// record, in the same group, so a replay finds it.
    pub fn clear_entries_keeping(
        &self,
        blocks: &BTreeMap<FsPath, BTreeSet<u64>>,
        paths: &[FsPath],
        keep_extents: &BTreeMap<FsPath, BTreeSet<u64>>,
        keep_paths: &BTreeSet<FsPath>,
    ) -> Result<()> {
        let s = lock(&self.shared);
        self.clear_locked(s, blocks, paths, keep_extents, keep_paths)
    }

    fn clear_locked(
        &self,
        mut s: MutexGuard<'_, Shared>,
        blocks: &BTreeMap<FsPath, BTreeSet<u64>>,
        paths: &[FsPath],
        keep_extents: &BTreeMap<FsPath, BTreeSet<u64>>,
        keep_paths: &BTreeSet<FsPath>,
    ) -> Result<()> {
        s.usable()?;
        let none = BTreeSet::new();
        for (file, set) in blocks {
            if set.is_empty() {
                continue;
            }
            let no = s.inner.file_no(file)?;
            let kept = keep_extents.get(file).unwrap_or(&none);
            for (first, count) in runs(set.iter().copied(), MAX_RUN) {
                let (end, count) = (first + count, count as u32);
                let inside = |e: &u64| *e * EXTENT_BLOCKS >= first && (*e + 1) * EXTENT_BLOCKS <= end;
                s.inner.pending.cleared(no, first, count);
                s.inner.set.remove_blocks(file, first, end);
                let Inner { recovered, .. } = &mut s.inner;
                if let Some(es) = recovered.get_mut(file) {
                    es.retain(|e| !inside(e));
                    if es.is_empty() {
                        recovered.remove(file);
                    }
                }
                s.recorded += 1;
                for e in kept.iter().filter(|e| inside(e)) {
                    s.inner.pending.extent(no, *e);
                    s.inner.set.extents.entry(file.clone()).or_default().insert(*e);
                    s.recorded += 1;
                }
            }
            // Owed while any of its blocks is: a rename may have moved
            // more owed blocks here than the resync listed for it.
            if !s.inner.set.blocks.contains_key(file) {
                s.inner.owed_files.remove(file);
            }
        }
        for p in paths {
            s.inner.recovered_touched.remove(p);
            if keep_paths.contains(p) {
                continue;
            }
            s.inner.pending.cleared_path(p);
            s.inner.set.touched.remove(p);
            s.recorded += 1;
        }
        let n = s.recorded;
        self.wait_durable(s, n)
    }

    /// Forget everything but the activity log's live entries (a finished
    /// resync while calls stream on), durably, in one rewrite: `extents`
    /// and the touched `paths` stay, as active entries (no longer recovered).
    /// Unless a rename recorded a path for another pass since the resync
    /// last took them ([`ChangeLog::take_redo`]): then nothing is cleared
    /// and the answer is `false`.
    pub fn clear_keeping(&self, extents: &BTreeMap<FsPath, BTreeSet<u64>>, paths: &BTreeSet<FsPath>) -> Result<bool> {
        let mut s = lock(&self.shared);
        while s.leader {
            s = self.committed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if !s.inner.redo.is_empty() {
            return Ok(false);
        }
        // A kept path keeps its subtree flag; one never recorded (its record
        // failed) counts as a whole subtree.
        let touched: BTreeMap<FsPath, bool> =
            paths.iter().map(|p| (p.clone(), s.inner.set.touched.get(p).copied().unwrap_or(true))).collect();
        s.inner.set = ChangeSet { touched, ..ChangeSet::default() };
        s.inner.recovered.clear();
        s.inner.recovered_touched.clear();
        s.inner.owed_files.clear();
        s.inner.file_nos.clear();
        self.compact_locked(&mut s, extents.clone())?;
        Ok(true)
    }

    fn disk(&self) -> Arc<dyn Disk> {
        lock(&self.shared).inner.disk.clone()
    }

    fn path(&self) -> FsPath {
        lock(&self.shared).inner.path.clone()
    }

    /// Whether nothing at all is recorded.
    pub fn is_empty(&self) -> bool {
        lock(&self.shared).inner.set.is_empty()
    }
}

#[cfg(test)]
mod tests;
