//! What the kernel is told of a file: its attributes from the local copy,
//! with the length its held writes make, and the permissions presented.

use super::{FilerepFs, Handle};
use crate::mount::errno::io_errno;
use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Permission bits presented: owner only, what PostgreSQL insists on for
/// its data directory (nothing is stored: the engine replicates contents,
/// not modes).
const DIR_PERM: u16 = 0o700;
const FILE_PERM: u16 = 0o600;

/// `attr` with the length its held writes make (`held_end`, read before
/// the stat, so a write that lands in between is counted either way).
pub(super) fn with_held_length(mut attr: FileAttr, held_end: Option<u64>) -> FileAttr {
    attr.size = attr.size.max(held_end.unwrap_or(0));
    attr
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::new(secs as u64, nsecs.clamp(0, 999_999_999) as u32)
}

impl FilerepFs {
    pub(super) fn attr(&self, ino: u64, md: &Metadata) -> FileAttr {
        let kind = crate::mount::local::kind_of_mode(md.mode());
        FileAttr {
            ino: INodeNo(ino),
            size: md.size(),
            blocks: md.blocks(),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: if kind == FileType::Directory { DIR_PERM } else { FILE_PERM },
            nlink: md.nlink().try_into().unwrap_or(u32::MAX),
            uid: self.uid.unwrap_or(md.uid()),
            gid: self.gid.unwrap_or(md.gid()),
            rdev: 0,
            // Applications size their I/O by st_blksize: whole blocks
            // become block writes.
            blksize: self.bs as u32,
            flags: 0,
        }
    }

    pub(super) fn stat(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        // An open file answers from its descriptor, even once unlinked.
        if let Some(h) = fh.and_then(|fh| self.handle(fh)) {
            if let Handle::File(f) = h.as_ref() {
                return f.metadata().map(|md| self.attr(ino.0, &md)).map_err(|e| io_errno(&e));
            }
        }
        let path = self.path_of(ino)?;
        let md = self.root.metadata(&path).map_err(|e| io_errno(&e))?;
        Ok(self.attr(ino.0, &md))
    }

    /// Its attributes now, with its length as the client wrote it, held
    /// writes included, without sending them (`lseek(SEEK_END)` asks for it
    /// before every page a database appends; the write-back cache sends
    /// the kernel's times between a commit's write and its fsync).
    pub(super) fn attr_now(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        let held_end = self.held.held_end(ino.0);
        Ok(with_held_length(self.stat(ino, fh)?, held_end))
    }
}
