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
use crate::disk::{BatchWrite, Disk, DiskError, DiskFile, FsPath, OpenMode};
use crate::path::RelPath;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Open files kept between batches; dirty files stay open until synced.
const MAX_CACHED_FILES: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[error("applying {op} #{seq}: {error}")]
pub struct ApplyError {
    pub seq: u64,
    pub op: &'static str,
    #[source]
    pub error: DiskError,
}

/// One validated operation with its sequence number.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub seq: u64,
    pub op: Op,
    /// The primary asked for this one to be durable before acknowledgement.
    pub durable: bool,
}

type DirKey = (u16, Option<RelPath>);

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
    dirty_files: HashMap<u32, Arc<dyn DiskFile>>,
    /// Directories whose entries changed since the last sync job.
    dirty_dirs: BTreeMap<DirKey, Arc<dyn DiskFile>>,
    /// Files whose sync or flush frames wait for the next job.
    sync_requests: HashMap<u32, Arc<dyn DiskFile>>,
    /// A durable-flagged namespace operation waits for the next job.
    dirs_requested: bool,
    full_requested: bool,
    applied: u64,
    durable: u64,
}

impl Applier {
    /// `start_seq` is the session's first sequence number.
    pub fn new(disk: Arc<dyn Disk>, start_seq: u64) -> Applier {
        let base = start_seq.max(1) - 1;
        Applier {
            disk,
            open: HashMap::new(),
            dirty_files: HashMap::new(),
            dirty_dirs: BTreeMap::new(),
            sync_requests: HashMap::new(),
            dirs_requested: false,
            full_requested: false,
            applied: base,
            durable: base,
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

    fn cache(&mut self, id: u32, f: Arc<dyn DiskFile>) {
        if self.open.len() >= MAX_CACHED_FILES {
            let dirty = &self.dirty_files;
            self.open.retain(|k, _| dirty.contains_key(k));
        }
        self.open.insert(id, f);
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
                let f = self.file(s.seq, *id, path)?;
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

    /// Ask for a full job (shutdown, periodic checkpoint).
    pub fn request_full(&mut self) {
        self.full_requested = true;
    }

    /// Whether anything applied is not yet known durable by a full job.
    pub fn has_unsynced(&self) -> bool {
        !self.dirty_files.is_empty() || !self.dirty_dirs.is_empty()
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
        pending.clear();
        Ok(())
    }

    fn apply_one(&mut self, s: &Sequenced) -> Result<(), ApplyError> {
        let seq = s.seq;
        let err = |op: &'static str| move |error: DiskError| ApplyError { seq, op, error };
        match &s.op {
            Op::Bind | Op::Write { .. } => {}
            Op::Sync { id, path } => {
                let f = self.file(seq, *id, path)?;
                // Its data up to here is covered by the next job.
                self.dirty_files.remove(id);
                self.sync_requests.insert(*id, f);
            }
            Op::Create { id, path } => {
                let f = self.disk.open(path, OpenMode::CreateTruncate).map_err(err("create"))?;
                self.dirty_files.insert(*id, f.clone());
                self.cache(*id, f);
                self.dirty_dir(seq, path)?;
            }
            Op::Truncate { id, path, len } => {
                let f = self.file(seq, *id, path)?;
                f.set_len(*len).map_err(err("truncate"))?;
                self.dirty_files.insert(*id, f);
            }
            Op::Unlink { id, path } => {
                self.open.remove(id);
                self.dirty_files.remove(id);
                self.disk.remove_file(path).map_err(err("unlink"))?;
                self.dirty_dir(seq, path)?;
            }
            Op::Mkdir { path } => {
                self.disk.create_dir(path).map_err(err("mkdir"))?;
                self.dirty_dir(seq, path)?;
            }
            Op::Rmdir { path } => {
                self.disk.remove_dir(path).map_err(err("rmdir"))?;
                self.dirty_dir(seq, path)?;
            }
            Op::Rename { from, to } => {
                self.disk.rename(from, to).map_err(err("rename"))?;
                self.dirty_dir(seq, from)?;
                self.dirty_dir(seq, to)?;
            }
        }
        self.applied = seq;
        Ok(())
    }

    /// The files that asked for a sync (all dirty files when a full job
    /// was requested) and every dirty directory, as a job.
    pub fn take_sync_job(&mut self) -> SyncJob {
        let full = std::mem::take(&mut self.full_requested);
        self.dirs_requested = false;
        let mut files: Vec<Arc<dyn DiskFile>> = self.sync_requests.drain().map(|(_, f)| f).collect();
        if full {
            files.extend(self.dirty_files.drain().map(|(_, f)| f));
        }
        SyncJob {
            through: self.applied,
            durable_through: full.then_some(self.applied),
            files,
            dirs: std::mem::take(&mut self.dirty_dirs).into_values().collect(),
        }
    }

    /// Make everything applied durable here and now.
    pub fn sync_all(&mut self) -> Result<(), ApplyError> {
        self.request_full();
        let job = self.take_sync_job();
        self.durable = job.run(self.disk.as_ref())?;
        Ok(())
    }
}
