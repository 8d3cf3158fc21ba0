//! The mirror's executor: performs validated operations on a [`Disk`], in
//! sequence order, a batch at a time. The daemon and the simulator run this
//! same code.
//!
//! Consecutive writes go to the backend as one batch (one io_uring
//! submission). Durability is grouped into [`SyncJob`]s that the daemon runs
//! on a syncer thread, so writes keep being applied while earlier ones are
//! made durable:
//! - a sync or flush frame, or an operation flagged durable, asks for its
//!   own file (`fdatasync`) and every directory whose entries changed
//!   (`fsync`): then "synced through" moves;
//! - a shutdown or the periodic checkpoint asks for everything written since
//!   the last full job: then "durable through" moves too.

use crate::core::mirror::Op;
use crate::io::disk::{
    remove_tree, BatchWrite, Disk, DiskError, DiskErrorKind, DiskFile, DiskResult, EntryKind, FsPath, OpenMode,
};
use crate::protocol::path::RelPath;
use crate::protocol::{ChildKind, ListedKind, ListingBody, ReconcileEntry};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Open files kept between batches; dirty files stay open until synced.
const MAX_CACHED_FILES: usize = 1024;
/// Dirty files (open descriptors) before a full sync job is asked for.
pub const MAX_DIRTY_FILES: usize = 512;
/// Bytes written to one file after which its writeback is started
/// ([`DiskFile::start_writeback`]): a resync or a bulk load then keeps the
/// device busy while it streams, instead of leaving everything to the
/// sync at the file's end (measured: docs/performance.md, "Full resync").
const WRITEBACK_AFTER: u64 = 8 << 20;
/// Files whose written bytes are counted for [`WRITEBACK_AFTER`], at most.
const MAX_WRITEBACK_COUNTS: usize = 4096;

pub use super::fault::{fault_class, ApplyError, FaultClass, ERRNO_CLASSES};

/// An answer the mirror owes the primary once the batch is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// To a HashRequest: one xxh3 per block.
    Hashes { seq: u64, hashes: Vec<u64> },
    /// To a ListRequest.
    Listing { seq: u64, body: ListingBody },
}

impl Reply {
    /// The frame the mirror sends for it (the daemon and the simulator alike).
    pub fn into_frame(self) -> crate::protocol::Frame {
        use crate::protocol::{Header, Kind};
        let (kind, seq, body) = match self {
            Reply::Hashes { seq, hashes } => (Kind::Hashes, seq, hashes.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Reply::Listing { seq, body } => (Kind::Listing, seq, body.encode()),
        };
        let mut h = Header::new(kind);
        h.seq = seq;
        crate::protocol::Frame::new(h, bytes::Bytes::from(body))
    }
}

fn listed(k: EntryKind) -> ListedKind {
    match k {
        EntryKind::File => ListedKind::File,
        EntryKind::Dir => ListedKind::Dir,
        EntryKind::Other => ListedKind::Other,
    }
}

/// One validated operation with its sequence number.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub seq: u64,
    pub op: Op,
    /// The primary asked for this one to be durable before acknowledgement.
    pub durable: bool,
    /// Shipped while a resync catches this mirror up: what it names may be
    /// missing here (or still here), and is made so rather than refused.
    pub catching_up: bool,
}

type DirKey = (u16, Option<RelPath>);

/// A write staged to be written elsewhere ([`Applier::stage_writes`]).
pub struct StagedWrite {
    pub seq: u64,
    pub path: FsPath,
    pub file: Arc<dyn DiskFile>,
    pub offset: u64,
    pub data: bytes::Bytes,
}

/// A write waiting for its batch: (sequence number, file, offset, data).
type PendingWrite<'a> = (u64, Arc<dyn DiskFile>, u64, &'a [u8]);

/// Handles to make durable, as open descriptors (they follow renames).
/// Run it on any thread; consecutive jobs merge (group commit).
pub struct SyncJob {
    /// Every sync/flush frame up to here is covered.
    pub through: u64,
    /// Set when everything applied up to this point is covered, not only
    /// the files that asked: completing the job moves "durable through".
    pub durable_through: Option<u64>,
    files: Vec<Arc<dyn DiskFile>>,
    dirs: Vec<Arc<dyn DiskFile>>,
}

impl SyncJob {
    /// Fold a later job into this one.
    pub fn merge(&mut self, later: SyncJob) {
        self.through = self.through.max(later.through);
        self.durable_through = self.durable_through.max(later.durable_through);
        self.files.extend(later.files);
        self.dirs.extend(later.dirs);
    }

    /// fdatasync every file, then fsync every directory. On success,
    /// everything through `through` is durable.
    pub fn run(&self, disk: &dyn Disk) -> Result<u64, ApplyError> {
        let seq = self.through;
        let files: Vec<&dyn DiskFile> = self.files.iter().map(|f| f.as_ref()).collect();
        for r in disk.sync_batch(&files) {
            r.map_err(|error| ApplyError { seq, op: "fdatasync", error })?;
        }
        let dirs: Vec<&dyn DiskFile> = self.dirs.iter().map(|f| f.as_ref()).collect();
        for r in disk.sync_batch(&dirs) {
            r.map_err(|error| ApplyError { seq, op: "fsync directory", error })?;
        }
        Ok(seq)
    }
}

pub struct Applier {
    disk: Arc<dyn Disk>,
    open: HashMap<u32, Arc<dyn DiskFile>>,
    /// Ordered: files are synced in id order, so a simulated fsync error or
    /// power loss part way through hits the same file in every run.
    dirty_files: BTreeMap<u32, Arc<dyn DiskFile>>,
    /// Directories whose entries changed since the last sync job.
    dirty_dirs: BTreeMap<DirKey, Arc<dyn DiskFile>>,
    /// Dirty directories that were renamed or removed since: no longer
    /// reachable by their old name, still synced by the next job.
    moved_dirs: Vec<Arc<dyn DiskFile>>,
    /// Answers to hash and list requests, for the session to send after the batch.
    replies: Vec<Reply>,
    /// Files whose length a resync set, until the next sync job.
    reconciled: Vec<Arc<dyn DiskFile>>,
    /// Files whose sync or flush frames wait for the next job.
    sync_requests: BTreeMap<u32, Arc<dyn DiskFile>>,
    /// A durable-flagged namespace operation waits for the next job.
    dirs_requested: bool,
    full_requested: bool,
    applied: u64,
    durable: u64,
    /// A defect planted for a test (the simulator's, or a power-cut test's).
    planted: Option<crate::core::PlantedBug>,
    /// Bytes written to each file (by the address of its open handle) since
    /// its writeback was last started. An address reused by another handle
    /// only moves a hint.
    unhinted: HashMap<usize, u64>,
}

impl Applier {
    /// Plant a defect (tests only: [`crate::core::PlantedBug`]).
    pub fn plant(&mut self, bug: Option<crate::core::PlantedBug>) {
        self.planted = bug;
    }

    /// `start_seq` is the session's first sequence number.
    pub fn new(disk: Arc<dyn Disk>, start_seq: u64) -> Applier {
        let base = start_seq.max(1) - 1;
        Applier {
            disk,
            open: HashMap::new(),
            dirty_files: BTreeMap::new(),
            dirty_dirs: BTreeMap::new(),
            moved_dirs: Vec::new(),
            reconciled: Vec::new(),
            replies: Vec::new(),
            sync_requests: BTreeMap::new(),
            dirs_requested: false,
            full_requested: false,
            applied: base,
            durable: base,
            planted: None,
            unhinted: HashMap::new(),
        }
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Durable through, as far as [`Applier::sync_all`] knows (jobs run
    /// elsewhere report through their own channel).
    pub fn durable(&self) -> u64 {
        self.durable
    }

    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }

    fn file(&mut self, seq: u64, id: u32, path: &FsPath) -> Result<Arc<dyn DiskFile>, ApplyError> {
        if let Some(f) = self.open.get(&id) {
            return Ok(f.clone());
        }
        let f = self.disk.open(path, OpenMode::Existing).map_err(|error| ApplyError { seq, op: "open", error })?;
        self.cache(id, f.clone());
        Ok(f)
    }

    /// The file a write names; while catching up, created (with its
    /// directories) if this mirror does not have it yet: the resync ships
    /// its length and contents later, ordered after this write.
    fn file_for_write(&mut self, s: &Sequenced, id: u32, path: &FsPath) -> Result<Arc<dyn DiskFile>, ApplyError> {
        match self.file(s.seq, id, path) {
            Err(e) if s.catching_up && e.error.kind == DiskErrorKind::NotFound => {
                self.make_parents(s.seq, path)?;
                let f = self.disk.open(path, OpenMode::Create).map_err(|error| ApplyError {
                    seq: s.seq,
                    op: "create",
                    error,
                })?;
                self.dirty_dir(s.seq, path)?;
                self.cache(id, f.clone());
                Ok(f)
            }
            r => r,
        }
    }

    /// Catching up: create `path`'s missing ancestors.
    fn make_parents(&mut self, seq: u64, path: &FsPath) -> Result<(), ApplyError> {
        let mut missing = Vec::new();
        let mut at = path.path.parent();
        while let Some(dir) = at {
            let p = FsPath::new(path.filespace, dir.clone());
            match self.disk.entry_kind(&p) {
                Ok(Some(_)) => break,
                Ok(None) => missing.push(p),
                Err(error) => return Err(ApplyError { seq, op: "look up", error }),
            }
            at = dir.parent();
        }
        for p in missing.into_iter().rev() {
            match self.disk.create_dir(&p) {
                Ok(()) => self.dirty_dir(seq, &p)?,
                Err(e) if e.kind == DiskErrorKind::AlreadyExists => {}
                Err(error) => return Err(ApplyError { seq, op: "mkdir", error }),
            }
        }
        Ok(())
    }

    fn cache(&mut self, id: u32, f: Arc<dyn DiskFile>) {
        if self.open.len() >= MAX_CACHED_FILES {
            let dirty = &self.dirty_files;
            self.open.retain(|k, _| dirty.contains_key(k));
        }
        self.open.insert(id, f);
    }

    /// Move dirty directory handles whose key lies at or under `path` out
    /// of the keyed map: they are still synced by the next job, but a new
    /// directory created at that name gets a handle of its own.
    fn unkey_dirs_under(&mut self, path: &FsPath) {
        let stale: Vec<DirKey> = self
            .dirty_dirs
            .keys()
            .filter(|(fs, dir)| *fs == path.filespace && dir.as_ref().is_some_and(|d| d.is_within(&path.path)))
            .cloned()
            .collect();
        for k in stale {
            if let Some(h) = self.dirty_dirs.remove(&k) {
                self.moved_dirs.push(h);
            }
        }
    }

    fn dirty_dir(&mut self, seq: u64, child: &FsPath) -> Result<(), ApplyError> {
        let key = (child.filespace, child.path.parent());
        if !self.dirty_dirs.contains_key(&key) {
            let h =
                self.disk.parent_dir_handle(child).map_err(|error| ApplyError { seq, op: "open directory", error })?;
            self.dirty_dirs.insert(key, h);
        }
        Ok(())
    }

    /// Apply a batch in order. Returns whether anything in it asked for
    /// durability (then take a [`SyncJob`]). On error, everything before
    /// the failing operation has been applied and `applied()` says so.
    pub fn apply(&mut self, batch: &[Sequenced]) -> Result<bool, ApplyError> {
        let mut pending: Vec<PendingWrite<'_>> = Vec::new();
        for s in batch {
            if let Op::Write { id, path, offset, data } = &s.op {
                let f = self.file_for_write(s, *id, path)?;
                self.dirty_files.insert(*id, f.clone());
                pending.push((s.seq, f, *offset, data));
            } else {
                self.flush_writes(&mut pending)?;
                self.apply_one(s)?;
            }
            if s.durable {
                self.request_durable(s)?;
            }
        }
        self.flush_writes(&mut pending)?;
        if let Some(last) = batch.last() {
            self.applied = last.seq;
        }
        Ok(self.wants_sync())
    }

    /// Whether [`Applier::stage_writes`] takes `batch`: writes (and
    /// bindings) only, none asked durable, at least one write.
    pub fn stageable(batch: &[Sequenced]) -> bool {
        batch.iter().any(|s| matches!(s.op, Op::Write { .. }))
            && batch.iter().all(|s| !s.durable && matches!(s.op, Op::Write { .. } | Op::Bind))
    }

    /// The byte ranges (path, start, end) the writes of `batch` cover: what
    /// a write round of it would have on its way ([`crate::core::rounds`]).
    pub fn write_ranges(batch: &[Sequenced]) -> impl Iterator<Item = (&FsPath, u64, u64)> {
        batch.iter().filter_map(|s| match &s.op {
            Op::Write { path, offset, data, .. } => Some((path, *offset, offset.saturating_add(data.len() as u64))),
            _ => None,
        })
    }

    /// Whether `batch` goes on its way as a write round beside the rounds
    /// of `rounds` in flight: plain writes, none over a range in flight.
    /// The daemon's session and the simulator both ask here.
    pub fn takes_round(rounds: &crate::core::rounds::RoundQueue, batch: &[Sequenced]) -> bool {
        Self::stageable(batch) && rounds.admits(Self::write_ranges(batch))
    }

    /// Stage a [`Applier::stageable`] batch for the caller to write: open
    /// (while catching up, create) its files and count them dirty, without
    /// writing. `applied` does not move: the caller reports what landed
    /// with [`Applier::landed`], and takes no sync job before then.
    pub fn stage_writes(&mut self, batch: &[Sequenced]) -> Result<Vec<StagedWrite>, ApplyError> {
        let mut staged = Vec::with_capacity(batch.len());
        for s in batch {
            if let Op::Write { id, path, offset, data } = &s.op {
                let file = self.file_for_write(s, *id, path)?;
                self.dirty_files.insert(*id, file.clone());
                staged.push(StagedWrite { seq: s.seq, path: path.clone(), file, offset: *offset, data: data.clone() });
            }
        }
        Ok(staged)
    }

    /// Staged writes through `through` have landed (and every operation before them).
    pub fn landed(&mut self, through: u64) {
        self.applied = self.applied.max(through);
    }

    /// The strict level: this operation must be durable before it is
    /// acknowledged. Its file is synced by the next job; directory entries
    /// are synced by every job.
    fn request_durable(&mut self, s: &Sequenced) -> Result<(), ApplyError> {
        match &s.op {
            Op::Write { id, path, .. } | Op::Truncate { id, path, .. } | Op::Create { id, path } => {
                let f = self.file(s.seq, *id, path)?;
                self.dirty_files.remove(id);
                self.sync_requests.insert(*id, f);
            }
            _ => self.dirs_requested = true,
        }
        Ok(())
    }

    /// Whether a sync job is wanted.
    pub fn wants_sync(&self) -> bool {
        self.full_requested || self.dirs_requested || !self.sync_requests.is_empty()
    }

    /// What the session's policy weighs after a batch
    /// (`core::mirror::SessionPolicy::after`), with `durable_through` the
    /// mark the session's acknowledgements carry.
    pub fn state(&self, durable_through: u64) -> crate::core::mirror::ApplyState {
        crate::core::mirror::ApplyState {
            wants_sync: self.wants_sync(),
            too_many_dirty: self.too_many_dirty(),
            unsynced: self.has_unsynced(),
            durable_behind: durable_through < self.applied(),
        }
    }

    /// Ask for a full job (shutdown, periodic checkpoint).
    pub fn request_full(&mut self) {
        self.full_requested = true;
    }

    /// Whether anything applied is not yet known durable by a full job.
    pub fn has_unsynced(&self) -> bool {
        !self.dirty_files.is_empty()
            || !self.dirty_dirs.is_empty()
            || !self.moved_dirs.is_empty()
            || !self.reconciled.is_empty()
    }

    /// Dirty files stay open until synced: past this many, the caller
    /// should ask for a full job so descriptors are released.
    pub fn too_many_dirty(&self) -> bool {
        self.dirty_files.len() + self.sync_requests.len() >= MAX_DIRTY_FILES
    }

    fn flush_writes(&mut self, pending: &mut Vec<PendingWrite<'_>>) -> Result<(), ApplyError> {
        if pending.is_empty() {
            return Ok(());
        }
        let writes: Vec<BatchWrite<'_>> =
            pending.iter().map(|(_, f, offset, data)| BatchWrite { file: f.as_ref(), offset: *offset, data }).collect();
        let results = self.disk.write_batch(&writes);
        drop(writes);
        for ((seq, ..), r) in pending.iter().zip(results) {
            if let Err(error) = r {
                return Err(ApplyError { seq: *seq, op: "write", error });
            }
            self.applied = *seq;
        }
        for (_, f, _, data) in pending.iter() {
            let handle = Arc::as_ptr(f) as *const () as usize;
            if self.unhinted.len() >= MAX_WRITEBACK_COUNTS && !self.unhinted.contains_key(&handle) {
                self.unhinted.clear();
            }
            let n = self.unhinted.entry(handle).or_insert(0);
            *n += data.len() as u64;
            if *n >= WRITEBACK_AFTER {
                *n = 0;
                f.start_writeback();
            }
        }
        pending.clear();
        Ok(())
    }

    fn apply_one(&mut self, s: &Sequenced) -> Result<(), ApplyError> {
        let seq = s.seq;
        let err = |op: &'static str| move |error: DiskError| ApplyError { seq, op, error };
        // While catching up, what is already as asked (absent, present) is fine.
        let lenient = |r: DiskResult<()>, ok: &[DiskErrorKind]| match r {
            Err(e) if s.catching_up && ok.contains(&e.kind) => Ok(()),
            r => r,
        };
        match &s.op {
            Op::Bind | Op::Write { .. } => {}
            Op::Sync { id, path } => match self.file(seq, *id, path) {
                Ok(f) => {
                    // Its data up to here is covered by the next job.
                    self.dirty_files.remove(id);
                    self.sync_requests.insert(*id, f);
                }
                Err(e) if s.catching_up && e.error.kind == DiskErrorKind::NotFound => {}
                Err(e) => return Err(e),
            },
            // Every sync job syncs every changed directory: ask for one.
            Op::SyncDirs => self.dirs_requested = true,
            Op::Create { id, path } => {
                if s.catching_up {
                    self.make_parents(seq, path)?;
                }
                let f = self.disk.open(path, OpenMode::CreateTruncate).map_err(err("create"))?;
                self.dirty_files.insert(*id, f.clone());
                self.cache(*id, f);
                self.dirty_dir(seq, path)?;
            }
            Op::Truncate { id, path, len } => {
                let f = self.file_for_write(s, *id, path)?;
                f.set_len(*len).map_err(err("truncate"))?;
                self.dirty_files.insert(*id, f);
            }
            Op::Unlink { id, path } => {
                self.open.remove(id);
                self.dirty_files.remove(id);
                lenient(self.disk.remove_file(path), &[DiskErrorKind::NotFound]).map_err(err("unlink"))?;
                // Catching up, its directory may be missing too: nothing to sync then.
                self.dirty_dir(seq, path).or_else(|e| if s.catching_up { Ok(()) } else { Err(e) })?;
            }
            Op::Mkdir { path } => {
                if s.catching_up {
                    self.make_parents(seq, path)?;
                }
                lenient(self.disk.create_dir(path), &[DiskErrorKind::AlreadyExists]).map_err(err("mkdir"))?;
                self.dirty_dir(seq, path)?;
            }
            Op::Rmdir { path } => {
                match self.disk.remove_dir(path) {
                    // The primary has no such directory: neither will this mirror.
                    Err(e) if s.catching_up && e.kind == DiskErrorKind::NotEmpty => {
                        crate::io::disk::remove_tree(self.disk.as_ref(), path).map_err(err("rmdir"))?
                    }
                    r => lenient(r, &[DiskErrorKind::NotFound]).map_err(err("rmdir"))?,
                }
                self.unkey_dirs_under(path);
                self.dirty_dir(seq, path).or_else(|e| if s.catching_up { Ok(()) } else { Err(e) })?;
            }
            Op::Rename { from, to } => {
                if s.catching_up {
                    if self.disk.entry_kind(from).map_err(err("look up"))?.is_none() {
                        // Not here yet: the resync reconciles `from`, and
                        // what it owed there moves to `to` (`ChangeLog::rename_owed`).
                        self.applied = seq;
                        return Ok(());
                    }
                    self.make_parents(seq, to)?;
                    if self.disk.entry_kind(to).map_err(err("look up"))? == Some(crate::io::disk::EntryKind::Dir) {
                        crate::io::disk::remove_tree(self.disk.as_ref(), to).map_err(err("rename"))?;
                    }
                }
                self.disk.rename(from, to).map_err(err("rename"))?;
                // Handles follow their directories; the names they were
                // keyed by may now name other directories.
                self.unkey_dirs_under(from);
                self.unkey_dirs_under(to);
                self.dirty_dir(seq, from)?;
                self.dirty_dir(seq, to)?;
            }
            Op::Reconcile { filespace, path, entry, len } => {
                self.reconcile(seq, *filespace, path.as_ref(), entry, *len)?
            }
            Op::Hash { id, path, first, count, block_size } => {
                let file = match self.file(seq, *id, path) {
                    Ok(f) => Some(f),
                    // Not a regular file here (missing, a directory, a symlink):
                    // it hashes as empty, and the primary sees the difference.
                    Err(e) if matches!(e.error.kind, DiskErrorKind::NotFound | DiskErrorKind::Escapes) => None,
                    Err(_) if self.disk.entry_kind(path).is_ok_and(|k| k != Some(EntryKind::File)) => None,
                    Err(e) => return Err(e),
                };
                let hashes =
                    crate::exec::hash_blocks(file.as_deref(), *first, *count, *block_size).map_err(err("hash"))?;
                self.replies.push(Reply::Hashes { seq, hashes });
            }
            Op::List { filespace, path } => {
                let body = self.listing(*filespace, path.as_ref()).map_err(err("list"))?;
                self.replies.push(Reply::Listing { seq, body });
            }
        }
        self.applied = seq;
        Ok(())
    }

    /// What a directory holds here, for a verification's list request. A
    /// path that is not a directory lists as what it is, with no children.
    fn listing(&self, fs: u16, path: Option<&RelPath>) -> Result<ListingBody, DiskError> {
        let kind = match path {
            None => Some(EntryKind::Dir),
            Some(p) => match self.disk.entry_kind(&FsPath::new(fs, p.clone())) {
                Ok(k) => k,
                // A symlink on the way: nothing the primary could have made.
                Err(e) if e.kind == DiskErrorKind::Escapes => Some(EntryKind::Other),
                Err(e) => return Err(e),
            },
        };
        Ok(match kind {
            None => ListingBody::build(ListedKind::Absent, &[]),
            Some(EntryKind::File) => ListingBody::build(ListedKind::File, &[]),
            Some(EntryKind::Other) => ListingBody::build(ListedKind::Other, &[]),
            Some(EntryKind::Dir) => {
                let children: Vec<(String, ListedKind)> =
                    self.disk.list_dir(fs, path)?.into_iter().map(|(n, k)| (n, listed(k))).collect();
                ListingBody::build(ListedKind::Dir, &children)
            }
        })
    }

    /// Answers to hash and list requests applied since the last call, in order.
    pub fn take_replies(&mut self) -> Vec<Reply> {
        std::mem::take(&mut self.replies)
    }

    /// Resync: make one path what the primary has. Removed files may have
    /// open handles cached by id: the cache is dropped (dirty handles stay
    /// to be synced), so a later write reopens by path.
    fn reconcile(
        &mut self,
        seq: u64,
        fs: u16,
        path: Option<&RelPath>,
        entry: &ReconcileEntry,
        len: u64,
    ) -> Result<(), ApplyError> {
        let err = |op: &'static str| move |error: DiskError| ApplyError { seq, op, error };
        let disk = self.disk.clone();
        let here = path.map(|p| FsPath::new(fs, p.clone()));
        let kind = match &here {
            Some(p) => disk.entry_kind(p).map_err(err("reconcile"))?,
            None => Some(EntryKind::Dir),
        };
        // Whatever the path was, its directory entry is synced by the next
        // job even when nothing changed here: what this host has may itself
        // not be durable (a demoted primary's page cache), and the primary
        // counts the path as equal once that job is done.
        match (entry, &here) {
            (ReconcileEntry::Absent, Some(p)) => {
                if kind.is_some() {
                    self.open.clear();
                    remove_tree(disk.as_ref(), p).map_err(err("reconcile: remove"))?;
                    self.unkey_dirs_under(p);
                }
                // A missing parent is absent itself: its own reconcile syncs it.
                match self.dirty_dir(seq, p) {
                    Err(e) if e.error.kind == crate::io::disk::DiskErrorKind::NotFound => {}
                    r => r?,
                }
            }
            (ReconcileEntry::File, Some(p)) => {
                if matches!(kind, Some(EntryKind::Dir) | Some(EntryKind::Other)) {
                    self.open.clear();
                    remove_tree(disk.as_ref(), p).map_err(err("reconcile: remove"))?;
                    self.unkey_dirs_under(p);
                }
                let f = disk.open(p, OpenMode::Create).map_err(err("reconcile: open"))?;
                f.set_len(len).map_err(err("reconcile: set length"))?;
                // Not cached by id (a later write opens it by path); its new
                // length is made durable by the next full job.
                self.reconciled.push(f);
                self.dirty_dir(seq, p)?;
            }
            (ReconcileEntry::Dir { keep }, _) => {
                if let Some(p) = &here {
                    if matches!(kind, Some(EntryKind::File) | Some(EntryKind::Other)) {
                        self.open.clear();
                        disk.remove_file(p).map_err(err("reconcile: remove"))?;
                    }
                    if kind != Some(EntryKind::Dir) {
                        disk.create_dir(p).map_err(err("reconcile: mkdir"))?;
                    }
                    self.dirty_dir(seq, p)?;
                }
                if let Some(keep) = keep {
                    let keep: std::collections::BTreeMap<&str, ChildKind> =
                        keep.iter().map(|(n, k)| (n.as_str(), *k)).collect();
                    for (name, have) in disk.list_dir(fs, path).map_err(err("reconcile: list"))? {
                        let wanted = match keep.get(name.as_str()) {
                            Some(ChildKind::File) => have == EntryKind::File,
                            Some(ChildKind::Dir) => have == EntryKind::Dir,
                            None => false,
                        };
                        if wanted {
                            continue;
                        }
                        let child = match path {
                            Some(p) => p.join(&name),
                            None => RelPath::top(&name),
                        };
                        // A name the path rules refuse cannot have come from a primary.
                        let child = child.map_err(|e| ApplyError {
                            seq,
                            op: "reconcile: list",
                            error: DiskError::new("reconcile", &name, crate::io::disk::DiskErrorKind::Io, e),
                        })?;
                        let child = FsPath::new(fs, child);
                        self.open.clear();
                        remove_tree(disk.as_ref(), &child).map_err(err("reconcile: prune"))?;
                        self.unkey_dirs_under(&child);
                    }
                    // Its list of children, pruned or not, is synced too.
                    let probe = match path {
                        Some(p) => p.join("x"),
                        None => RelPath::top("x"),
                    };
                    let probe = probe.map_err(|e| ApplyError {
                        seq,
                        op: "reconcile",
                        error: DiskError::new("reconcile", "", crate::io::disk::DiskErrorKind::Io, e),
                    })?;
                    self.dirty_dir(seq, &FsPath::new(fs, probe))?;
                }
            }
            (_, None) => {
                // Refused by the session before it gets here.
                return Err(ApplyError {
                    seq,
                    op: "reconcile",
                    error: DiskError::new(
                        "reconcile",
                        "",
                        crate::io::disk::DiskErrorKind::Io,
                        "only a directory is a root",
                    ),
                });
            }
        }
        Ok(())
    }

    /// The files that asked for a sync (all dirty files when a full job
    /// was requested) and every dirty directory, as a job.
    pub fn take_sync_job(&mut self) -> SyncJob {
        let full = std::mem::take(&mut self.full_requested);
        self.dirs_requested = false;
        let mut files: Vec<Arc<dyn DiskFile>> = std::mem::take(&mut self.sync_requests).into_values().collect();
        if full {
            files.extend(std::mem::take(&mut self.dirty_files).into_values());
        }
        // Lengths a resync set, like directory entries, go with every job.
        files.append(&mut self.reconciled);
        let mut dirs: Vec<Arc<dyn DiskFile>> = std::mem::take(&mut self.moved_dirs);
        dirs.extend(std::mem::take(&mut self.dirty_dirs).into_values());
        if self.planted == Some(crate::core::PlantedBug::MirrorSkipsDirectorySync) {
            // The defect: changed directory entries are never made durable.
            dirs.clear();
        }
        SyncJob { through: self.applied, durable_through: full.then_some(self.applied), files, dirs }
    }

    /// Make everything applied durable here and now.
    pub fn sync_all(&mut self) -> Result<(), ApplyError> {
        self.request_full();
        let job = self.take_sync_job();
        self.durable = job.run(self.disk.as_ref())?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
