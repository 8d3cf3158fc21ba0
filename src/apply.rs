//! The mirror's executor: performs validated operations on a [`Disk`], in
//! sequence order, a batch at a time. The daemon and the simulator run this
//! same code.
//!
//! Consecutive writes go to the backend as one batch (one io_uring
//! submission). Durability is grouped: a batch that holds a sync, a flush or
//! a write flagged durable ends with one round of `fdatasync` over every
//! file written since the last round, and `fsync` of every directory whose
//! entries changed, after which everything applied is durable.

use crate::core::mirror::Op;
use crate::disk::{BatchWrite, Disk, DiskError, DiskErrorKind, DiskFile, FsPath, OpenMode};
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

pub struct Applier {
    disk: Arc<dyn Disk>,
    open: HashMap<u32, Arc<dyn DiskFile>>,
    dirty_files: HashMap<u32, Arc<dyn DiskFile>>,
    /// Directories whose entries changed, each with one child path to name it by.
    dirty_dirs: BTreeMap<DirKey, FsPath>,
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
            applied: base,
            durable: base,
        }
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn durable(&self) -> u64 {
        self.durable
    }

    fn file(&mut self, seq: u64, id: u32, path: &FsPath) -> Result<Arc<dyn DiskFile>, ApplyError> {
        if let Some(f) = self.open.get(&id) {
            return Ok(f.clone());
        }
        let f = self
            .disk
            .open(path, OpenMode::Existing)
            .map_err(|error| ApplyError { seq, op: "open", error })?;
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

    fn dirty_dir(&mut self, child: &FsPath) {
        self.dirty_dirs.insert((child.filespace, child.path.parent()), child.clone());
    }

    /// Apply a batch in order. On error, everything before the failing
    /// operation has been applied and `applied()` says through which one.
    pub fn apply(&mut self, batch: &[Sequenced]) -> Result<(), ApplyError> {
        let mut pending: Vec<(u64, Arc<dyn DiskFile>, u64, &[u8])> = Vec::new();
        let mut wants_durable = false;
        for s in batch {
            if let Op::Write { id, path, offset, data } = &s.op {
                let f = self.file(s.seq, *id, path)?;
                self.dirty_files.insert(*id, f.clone());
                pending.push((s.seq, f, *offset, data));
            } else {
                self.flush_writes(&mut pending)?;
                self.apply_one(s)?;
            }
            wants_durable |= s.durable || matches!(s.op, Op::Sync);
        }
        self.flush_writes(&mut pending)?;
        if let Some(last) = batch.last() {
            self.applied = last.seq;
        }
        if wants_durable {
            self.sync_all()?;
        }
        Ok(())
    }

    fn flush_writes(&mut self, pending: &mut Vec<(u64, Arc<dyn DiskFile>, u64, &[u8])>) -> Result<(), ApplyError> {
        if pending.is_empty() {
            return Ok(());
        }
        let writes: Vec<BatchWrite<'_>> = pending
            .iter()
            .map(|(_, f, offset, data)| BatchWrite { file: f.as_ref(), offset: *offset, data })
            .collect();
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
            Op::Bind | Op::Sync | Op::Write { .. } => {}
            Op::Create { id, path } => {
                let f = self.disk.open(path, OpenMode::CreateTruncate).map_err(err("create"))?;
                self.dirty_files.insert(*id, f.clone());
                self.cache(*id, f);
                self.dirty_dir(path);
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
                self.dirty_dir(path);
            }
            Op::Mkdir { path } => {
                self.disk.create_dir(path).map_err(err("mkdir"))?;
                self.dirty_dir(path);
            }
            Op::Rmdir { path } => {
                self.disk.remove_dir(path).map_err(err("rmdir"))?;
                let gone = (path.filespace, Some(path.path.clone()));
                self.dirty_dirs.remove(&gone);
                self.dirty_dir(path);
            }
            Op::Rename { from, to } => {
                self.disk.rename(from, to).map_err(err("rename"))?;
                // Dirty directories inside a moved directory now live under `to`.
                let moved: Vec<DirKey> = self
                    .dirty_dirs
                    .iter()
                    .filter(|(_, child)| child.filespace == from.filespace && child.path.is_within(&from.path))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in moved {
                    if let Some(child) = self.dirty_dirs.remove(&k) {
                        if let Some(np) = child.path.rebase(&from.path, &to.path) {
                            self.dirty_dir(&FsPath::new(child.filespace, np));
                        }
                    }
                }
                self.dirty_dir(from);
                self.dirty_dir(to);
            }
        }
        self.applied = seq;
        Ok(())
    }

    /// Make everything applied durable: fdatasync dirty files, fsync
    /// directories whose entries changed. Then `durable() == applied()`.
    pub fn sync_all(&mut self) -> Result<(), ApplyError> {
        let seq = self.applied;
        let files: Vec<Arc<dyn DiskFile>> = self.dirty_files.values().cloned().collect();
        let refs: Vec<&dyn DiskFile> = files.iter().map(|f| f.as_ref()).collect();
        for r in self.disk.sync_batch(&refs) {
            r.map_err(|error| ApplyError { seq, op: "fdatasync", error })?;
        }
        self.dirty_files.clear();
        let dirs = std::mem::take(&mut self.dirty_dirs);
        for child in dirs.values() {
            match self.disk.sync_parent_dir(child) {
                // A directory removed since is recorded in its parent, which is dirty too.
                Err(e) if e.kind == DiskErrorKind::NotFound => {}
                r => r.map_err(|error| ApplyError { seq, op: "fsync directory", error })?,
            }
        }
        self.durable = self.applied;
        Ok(())
    }
}
