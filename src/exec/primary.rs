//! The primary engine's commands performed on this host's disk and
//! change-log: opens through a cache of handles, local writes and
//! namespace changes, fsyncs, change-log records, reads that become resync
//! and verification frames. Sending, closing and asking the arbiter belong
//! to the driver (they are about the connection and the cluster).

use crate::core::primary::{Command, Event, Failure, LocalStep, LogOp, Opened};
pub use crate::core::resync::LocalEntry;
use crate::durable::changelog::{ChangeLog, ChangeLogError};
use crate::error::{Error, Result};
use crate::io::disk::{Disk, DiskErrorKind, DiskFile, EntryKind, FsPath, OpenMode};
use crate::protocol::path::RelPath;
use crate::protocol::{body_hash, Header, Kind};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

const CACHE_SHARDS: usize = 64;
const MAX_CACHED_PER_SHARD: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard_of(p: &FsPath) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    p.hash(&mut h);
    (h.finish() as usize) % CACHE_SHARDS
}

/// What a directory held here: its kind and its children.
pub type Listed = (Option<EntryKind>, Vec<(String, EntryKind)>);
/// Chooses a hash request's blocks from the file's size in blocks.
pub type Pick = Box<dyn FnOnce(u64) -> (u64, u32) + Send>;

/// What a call's own commands leave for its caller beyond the engine's reply.
#[derive(Default)]
pub struct Extras {
    pub local_error: Option<Error>,
    pub changelog_error: Option<ChangeLogError>,
    pub entry: Option<LocalEntry>,
    /// Local hashes of a hash request, with the file's size in blocks and
    /// the bytes of the range inside the file.
    pub hashes: Option<(u64, Vec<u64>, u64, u64)>,
    pub pick: Option<Pick>,
    pub listing: Option<Listed>,
    /// The rename journal's position while a resync's read held its claims
    /// (exact for every rename of what it read).
    pub renames_at: Option<u64>,
}

/// What performing a command came to.
pub enum Performed {
    /// Done; the event to feed the engine, if any.
    Done(Option<Event>),
    /// The driver's to carry out (send, close, ask the arbiter).
    Driver(Command),
}

/// The primary's executor: its disk, its change-log (with change tracking), an open-file cache.
pub struct PrimaryExec {
    pub disk: Arc<dyn Disk>,
    pub changelog: Option<Arc<ChangeLog>>,
    pub block_size: u32,
    cache: Vec<Mutex<HashMap<FsPath, Arc<dyn DiskFile>>>>,
}

impl PrimaryExec {
    pub fn new(disk: Arc<dyn Disk>, changelog: Option<Arc<ChangeLog>>, block_size: u32) -> PrimaryExec {
        PrimaryExec {
            disk,
            changelog,
            block_size,
            cache: (0..CACHE_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    // ---- the open-file cache --------------------------------------------

    pub fn file(&self, p: &FsPath) -> Result<Arc<dyn DiskFile>> {
        let shard = &self.cache[shard_of(p)];
        if let Some(f) = lock(shard).get(p) {
            return Ok(f.clone());
        }
        let f = self.disk.open(p, OpenMode::Existing)?;
        self.cache_put(p, f.clone());
        Ok(f)
    }

    /// The file's handle, or `None` if it is gone.
    pub fn file_if_present(&self, p: &FsPath) -> Result<Option<Arc<dyn DiskFile>>> {
        match self.file(p) {
            Ok(f) => Ok(Some(f)),
            Err(Error::Disk(e)) if e.kind == DiskErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn cache_put(&self, p: &FsPath, f: Arc<dyn DiskFile>) {
        let mut shard = lock(&self.cache[shard_of(p)]);
        if shard.len() >= MAX_CACHED_PER_SHARD {
            shard.clear();
        }
        shard.insert(p.clone(), f);
    }

    /// Forget cached handles at or under `p` (after an unlink, a rename, a directory removed).
    fn cache_remove_under(&self, p: &FsPath) {
        for shard in &self.cache {
            lock(shard).retain(|k, _| !(k.filespace == p.filespace && k.path.is_within(&p.path)));
        }
    }

    fn changelog(&self) -> std::result::Result<&ChangeLog, String> {
        self.changelog.as_deref().ok_or_else(|| "no change tracking configured".to_string())
    }

    // ---- carrying out commands --------------------------------------------

    /// Carry out one command: the event it leads to, or the command back
    /// when it is the driver's.
    pub fn perform(&self, cmd: Command, x: &mut Extras) -> Performed {
        Performed::Done(match cmd {
            Command::Open { call, file, want_len, absent_ok } => {
                let opened = match self.file(&file) {
                    Ok(f) => match want_len.then(|| f.len()).transpose() {
                        Ok(len) => Ok(Opened { present: true, len }),
                        Err(e) => Err(Error::from(e)),
                    },
                    Err(Error::Disk(e)) if absent_ok && e.kind == DiskErrorKind::NotFound => {
                        Ok(Opened { present: false, len: None })
                    }
                    Err(e) => Err(e),
                };
                Some(Event::Opened { call, result: opened.map_err(|e| keep(x, e)) })
            }
            Command::Record { call, blocks, touched } => {
                let r = self.changelog().and_then(|log| {
                    let r = match (blocks.as_slice(), touched.is_empty()) {
                        ([(f, b)], true) => log.record_block(f, *b),
                        _ => log.record_batch(blocks, touched),
                    };
                    r.map_err(|e| keep_log(x, e))
                });
                Some(Event::Recorded { call, result: r })
            }
            Command::CoverBlocks { call, file, first, last } => {
                let r = self.changelog().and_then(|l| l.record_extents(&file, first, last).map_err(|e| keep_log(x, e)));
                Some(Event::Recorded { call, result: r })
            }
            Command::CoverPath { call, path, subtree } => {
                let r = self.changelog().and_then(|l| l.record_touched(&path, subtree).map_err(|e| keep_log(x, e)));
                Some(Event::Recorded { call, result: r })
            }
            Command::RenameOwed { call, from, to, all } => {
                let r = self
                    .changelog()
                    .and_then(|l| l.rename_owed(&from, &to, all).map(|_| ()).map_err(|e| keep_log(x, e)));
                Some(Event::Recorded { call, result: r })
            }
            Command::Local { call, step } => Some(Event::LocalDone { call, result: self.local(step, x) }),
            Command::ReadCopy { call, file, first, count } => {
                x.renames_at = self.changelog.as_ref().map(|l| l.rename_position());
                let r = self
                    .file_if_present(&file)
                    .and_then(|f| match f {
                        None => Ok(None),
                        Some(f) => crate::exec::read_copy(f.as_ref(), first, count, self.block_size as u64),
                    })
                    .map(|c| {
                        c.map(|(offset, buf)| {
                            let hash = body_hash(&buf);
                            (offset, Bytes::from(buf), hash)
                        })
                    });
                Some(Event::CopyRead { call, result: r.map_err(|e| keep(x, e)) })
            }
            Command::ReadReconcile { call, fs, path, prune } => {
                x.renames_at = self.changelog.as_ref().map(|l| l.rename_position());
                let r = reconcile_frame(self.disk.as_ref(), fs, path.as_ref(), prune).map(|(h, body, local)| {
                    x.entry = Some(local);
                    (h, body)
                });
                Some(Event::ReconcileRead { call, result: r.map_err(|e| keep(x, e)) })
            }
            Command::HashLocal { call, file } => {
                let r = self.hash_local(&file, x);
                Some(Event::HashedLocal { call, result: r.map_err(|e| keep(x, e)) })
            }
            Command::ListLocal { call, fs, dir } => {
                let r = self.list_local(fs, dir.as_ref()).map(|l| {
                    x.listing = Some(l);
                });
                Some(Event::ListedLocal { call, result: r.map_err(|e| keep(x, e)) })
            }
            Command::TakeRedo { call } => {
                let set = self.changelog.as_ref().map(|l| l.take_redo()).unwrap_or_default();
                Some(Event::RedoTaken { call, set })
            }
            Command::Log { call, op } => {
                let r = self.log_op(op);
                if let (Some(_), Err(e)) = (call, &r) {
                    x.changelog_error = Some(ChangeLogError::Failed(e.clone()));
                }
                Some(Event::Logged { result: r })
            }
            Command::RetireSync { files, dirs } => {
                let r = self.retire_sync(&files, &dirs);
                if let Err(e) = &r {
                    self.note_fault(e);
                }
                Some(Event::RetireSynced { result: r })
            }
            cmd @ (Command::Send { .. } | Command::Close | Command::AskArbiter { .. } | Command::Complete { .. }) => {
                return Performed::Driver(cmd)
            }
        })
    }

    fn local(&self, step: LocalStep, x: &mut Extras) -> std::result::Result<(), String> {
        let in_doubt_if_failed = step.faults_when_failed();
        let r: Result<()> = match step {
            LocalStep::Write { file, offset, data } => self.file(&file).and_then(|f| Ok(f.write_at(offset, &data)?)),
            LocalStep::Create { file } => {
                self.disk.open(&file, OpenMode::CreateNew).map(|f| self.cache_put(&file, f)).map_err(Error::from)
            }
            LocalStep::SetLen { file, len } => self.file(&file).and_then(|f| Ok(f.set_len(len)?)),
            LocalStep::Unlink { file } => {
                let r = self.disk.remove_file(&file);
                self.cache_remove_under(&file);
                r.map_err(Error::from)
            }
            LocalStep::Mkdir { dir } => self.disk.create_dir(&dir).map_err(Error::from),
            LocalStep::Rmdir { dir } => {
                let r = self.disk.remove_dir(&dir);
                self.cache_remove_under(&dir);
                r.map_err(Error::from)
            }
            LocalStep::Rename { from, to } => {
                let r = self.disk.rename(&from, &to);
                self.cache_remove_under(&from);
                self.cache_remove_under(&to);
                r.map_err(Error::from)
            }
            LocalStep::SyncFiles { files } => files.iter().try_for_each(|f| match self.file_if_present(f)? {
                Some(h) => Ok(h.sync_data()?),
                None => Ok(()),
            }),
            LocalStep::SyncDirs { dirs } => {
                dirs.iter().try_for_each(|(fs, d)| match self.disk.sync_dir(*fs, d.as_ref()) {
                    // A directory removed since: its removal is its parent's entry, synced too.
                    Err(e) if e.kind == DiskErrorKind::NotFound => Ok(()),
                    r => r.map_err(Error::from),
                })
            }
        };
        if let (true, Err(e)) = (in_doubt_if_failed, &r) {
            self.note_fault(&e.to_string());
        }
        r.map_err(|e| keep(x, e))
    }

    /// Rule 8's record across restarts: a failed write, truncate or sync
    /// leaves this host's files in doubt. Noted durably beside the
    /// change-log before the engine hears of the failure, so a process
    /// killed right after still knows at its next start
    /// ([`crate::exec::doubt::settle_in_doubt`]).
    fn note_fault(&self, what: &str) {
        let Some(log) = &self.changelog else { return };
        if let Err(e) = log.note_fault(what) {
            tracing::error!(
                error = %e,
                fault = what,
                "cannot note the fault beside the change-log: power-cycle this host before the segment serves again"
            );
        }
    }

    fn hash_local(&self, file: &FsPath, x: &mut Extras) -> Result<Option<(u64, u32)>> {
        let Some(f) = self.file_if_present(file)? else { return Ok(None) };
        let bs = self.block_size as u64;
        let len = f.len()?;
        let blocks = len.div_ceil(bs);
        let (first, count) = match x.pick.take() {
            Some(pick) => pick(blocks),
            None => return Err(Error::InvalidArgument("a hash request with no blocks chosen".into())),
        };
        if count == 0 || count > crate::protocol::MAX_HASH_BLOCKS {
            return Err(Error::InvalidArgument(format!("{count} blocks do not fit one hash request")));
        }
        let local = crate::exec::hash_blocks(Some(f.as_ref()), first, count, self.block_size)?;
        let end = (first + count as u64).saturating_mul(bs).min(len);
        let bytes = end.saturating_sub(first.saturating_mul(bs));
        x.hashes = Some((first, local, blocks, bytes));
        Ok(Some((first, count)))
    }

    fn list_local(&self, fs: u16, dir: Option<&crate::protocol::path::RelPath>) -> Result<Listed> {
        let kind = match dir {
            Some(d) => self.disk.entry_kind(&FsPath::new(fs, d.clone()))?,
            None => Some(EntryKind::Dir),
        };
        let children = match kind {
            Some(EntryKind::Dir) => self.disk.list_dir(fs, dir)?,
            _ => Vec::new(),
        };
        Ok((kind, children))
    }

    fn log_op(&self, op: LogOp) -> std::result::Result<bool, String> {
        let log = self.changelog()?;
        let r = match op {
            LogOp::RecordWindow { blocks, touched } => log.record_batch(blocks, touched).map(|_| true),
            LogOp::PinDown => {
                log.pin_extents();
                log.pin_touched();
                Ok(true)
            }
            LogOp::PinAttach => {
                log.pin_touched();
                // A stopped resync's passes owed are in its plan now.
                log.start_resync();
                Ok(true)
            }
            LogOp::ClearEntries { blocks, paths, keep_extents, keep_paths, as_of } => {
                log.clear_entries_as_of(&blocks, &paths, &keep_extents, &keep_paths, as_of).map(|_| true)
            }
            LogOp::ClearKeeping { extents, paths } => log.clear_keeping(&extents, &paths),
            LogOp::Retire { extents, paths } => log.retire_active(&extents, &paths).map(|_| true),
        };
        r.map_err(|e| e.to_string())
    }

    /// fdatasync every file with entries, and the directory holding each
    /// path with entries. A file or directory that is gone needs nothing:
    /// its removal is a path entry of its own.
    fn retire_sync(&self, files: &[FsPath], paths: &[FsPath]) -> std::result::Result<(), String> {
        let gone = |e: &crate::io::disk::DiskError| e.kind == DiskErrorKind::NotFound;
        for f in files {
            match self.disk.open(f, OpenMode::Existing) {
                Ok(h) => h.sync_data().map_err(|e| e.to_string())?,
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        for p in paths {
            // A file's own entry may stand for its length (a truncate):
            // its data is made durable too, not only its name.
            if let Ok(Some(crate::protocol::path::EntryKind::File)) = self.disk.entry_kind(p) {
                match self.disk.open(p, OpenMode::Existing) {
                    Ok(h) => h.sync_data().map_err(|e| e.to_string())?,
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            match self.disk.sync_parent_dir(p) {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

/// Keep a local error for the caller; the engine gets its text.
pub fn keep(x: &mut Extras, e: impl Into<Error>) -> String {
    let e = e.into();
    let text = e.to_string();
    x.local_error = Some(e);
    text
}

pub fn keep_log(x: &mut Extras, e: ChangeLogError) -> String {
    let text = e.to_string();
    x.changelog_error = Some(e);
    text
}

/// What one path (`None`: the filespace root) is on `disk`, as the
/// Reconcile frame a resync ships for it (header without a sequence
/// number) and as the engine sees it. With `prune`, a directory's children
/// are listed and the mirror keeps only those. Shared by the runtime and
/// the fault simulator, so both ship exactly the same frame.
pub(crate) fn reconcile_frame(
    disk: &dyn Disk,
    fs: u16,
    path: Option<&RelPath>,
    prune: bool,
) -> Result<(Header, Bytes, LocalEntry)> {
    use crate::io::disk::EntryKind;
    use crate::protocol::{ChildKind, ReconcileBody, ReconcileEntry};
    let here = path.map(|p| FsPath::new(fs, p.clone()));
    let kind = match &here {
        Some(p) => disk.entry_kind(p)?,
        None => Some(EntryKind::Dir),
    };
    let (entry, local, len) = match kind {
        None | Some(EntryKind::Other) => (ReconcileEntry::Absent, LocalEntry::Absent, 0),
        Some(EntryKind::File) => {
            let p = here.as_ref().ok_or_else(|| Error::InvalidArgument("a root is a directory".into()))?;
            let len = disk.open(p, OpenMode::Existing)?.len()?;
            (ReconcileEntry::File, LocalEntry::File { len }, len)
        }
        Some(EntryKind::Dir) => {
            let children: Vec<(String, EntryKind)> =
                disk.list_dir(fs, path)?.into_iter().filter(|(_, k)| *k != EntryKind::Other).collect();
            let keep = prune.then(|| {
                children
                    .iter()
                    .map(|(n, k)| (n.clone(), if *k == EntryKind::Dir { ChildKind::Dir } else { ChildKind::File }))
                    .collect()
            });
            (ReconcileEntry::Dir { keep }, LocalEntry::Dir { children }, 0)
        }
    };
    let body = ReconcileBody { entry, path: path.map(|p| p.as_str().as_bytes().to_vec()).unwrap_or_default() };
    let body = Bytes::from(body.encode());
    if body.len() > crate::protocol::MAX_BODY {
        return Err(Error::InvalidArgument(format!(
            "directory fs{fs}:{} has too many entries to reconcile in one frame",
            path.map(|p| p.as_str()).unwrap_or("")
        )));
    }
    let mut h = Header::new(Kind::Reconcile);
    h.filespace = fs;
    h.offset = len;
    Ok((h, body, local))
}

/// An engine's failure as the library's error; `x` holds what the call's
/// own steps reported.
pub(crate) fn error_of(f: Failure, x: &mut Extras) -> Error {
    match f {
        Failure::InvalidArgument(s) => Error::InvalidArgument(s),
        Failure::MirrorLost(s) => Error::MirrorLost(s),
        Failure::Faulted(s) => Error::Faulted(s),
        Failure::Closed(s) => Error::Closed(s),
        Failure::Rejected(s) => Error::Rejected(s),
        Failure::ChangeLog(s) => Error::ChangeLog(x.changelog_error.take().unwrap_or(ChangeLogError::Failed(s))),
        Failure::Local => x.local_error.take().unwrap_or_else(|| Error::Rejected("a local step failed".into())),
    }
}
