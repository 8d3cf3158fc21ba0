//! From the kernel's inode numbers to the engine's paths, in the files'
//! current term (`inodes.rs`): every request that names a file goes
//! through here first.

use super::{lock, FilerepFs};
use crate::mount::errno::{io_errno, path_errno};
use crate::mount::inodes::{Inodes, Resolved, Term};
use crate::protocol::path::RelPath;
use fuser::{Errno, FileAttr, FopenFlags, INodeNo};
use std::ffi::OsStr;
use std::sync::MutexGuard;

impl FilerepFs {
    /// The path an inode names now. A detached inode (unlinked or replaced
    /// since it was opened) names none: ESTALE, as NFS reports it.
    pub(super) fn path_of(&self, ino: INodeNo) -> Result<String, Errno> {
        match self.inodes().resolve(ino.0) {
            Resolved::Path(p) => Ok(p.to_string()),
            Resolved::Detached | Resolved::OldTerm | Resolved::Unknown => Err(Errno::ESTALE),
        }
    }

    /// The path of `name` in directory `parent`, checked as the engine checks paths.
    pub(super) fn child_of(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name.contains('/') {
            return Err(Errno::EINVAL);
        }
        let dir = self.path_of(parent)?;
        let path = if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
        RelPath::new(&path).map_err(|e| path_errno(&e))?;
        Ok(path)
    }

    /// What an `fsync` of inode `ino` syncs: its path; None when it names
    /// nothing (unlinked or replaced while open: no name is left whose data
    /// could be lost, and every write to it was refused; a directory's
    /// caller syncs the root instead); EIO when it was learned before a
    /// role change (what was sent of it then may not be durable on both
    /// hosts, and nothing can make it so now).
    pub(super) fn to_sync(&self, ino: INodeNo) -> Result<Option<String>, Errno> {
        match self.inodes().resolve(ino.0) {
            Resolved::Path(p) => Ok(Some(p.to_string())),
            Resolved::OldTerm => Err(Errno::EIO),
            Resolved::Detached | Resolved::Unknown => Ok(None),
        }
    }

    /// Stat `path` locally and hand the kernel a reference to its inode.
    /// Callers hold the namespace lock (shared or exclusive).
    pub(super) fn entry(&self, path: &str) -> Result<FileAttr, Errno> {
        loop {
            // The length handed out must be of the term the inode number
            // is: with the write-back cache the kernel keeps it for the
            // whole term. A role change during the stat: stat again.
            let term = self.changes.term();
            let md = self.root.metadata(path).map_err(|e| io_errno(&e))?;
            let mut t = self.inodes();
            if !self.write_back || t.term() == term {
                let ino = t.lookup(path);
                return Ok(self.attr(ino, &md));
            }
        }
    }

    /// How inode `ino` is opened: with the kernel's cached pages of it kept
    /// (`FOPEN_KEEP_CACHE`) while the segment acts as primary — its inodes
    /// are of this term (`inodes.rs`), in which only this mount changed the
    /// files — so a database's reads after reopening a file it wrote (a
    /// vacuum, an index build) come from memory, not one request each, and
    /// dirty pages are not written back at every open. Otherwise the kernel
    /// drops them and reads the file afresh. A log file (`log_files.rs`)
    /// whose directory's logs were lately synced a commit at a time is
    /// opened without the write-back cache: each write is a request at
    /// once, and there is nothing cached to keep.
    pub(super) fn open_flags(&self, ino: u64, sync_writes: bool) -> FopenFlags {
        let t = self.inodes();
        let resolved = t.resolve(ino);
        // Every open is counted where log files may go without the cache
        // (one file is never open both ways at once: `LogHistory::opened`).
        let direct = self.direct_logs && {
            let (path, log) = match resolved {
                Resolved::Path(p) => (p, self.log_files.is_log(p)),
                _ => ("", false),
            };
            lock(&self.log_history).opened(ino, path, log, sync_writes)
        };
        match resolved {
            _ if direct => FopenFlags::FOPEN_DIRECT_IO,
            Resolved::Path(_) if matches!(t.term(), Term::In(_)) => FopenFlags::FOPEN_KEEP_CACHE,
            _ => FopenFlags::empty(),
        }
    }

    /// The inode table, in the files' current term: a new term (a role
    /// change) renumbers it first (`inodes.rs`).
    pub(super) fn inodes(&self) -> MutexGuard<'_, Inodes> {
        let mut t = lock(&self.inodes);
        if self.write_back {
            t.enter(self.changes.term());
        }
        t
    }
}
