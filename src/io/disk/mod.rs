//! The `disk` layer: a narrow storage trait with real and simulated backends.
//!
//! Every path handed to a [`Disk`] is a [`FsPath`]: a filespace index plus a
//! validated relative path. Backends resolve it beneath that filespace's root
//! and never follow a symlink, so a hostile path can not leave its filespace
//! even if the validation in [`crate::protocol::path`] were bypassed.
//!
//! Backends:
//! - [`StdDisk`]: `pread`/`pwrite`/`fdatasync` on file descriptors opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.
//! - [`UringDisk`]: the std backend, with [`Disk::sync_batch`] of several
//!   files through io_uring (one ring per thread).
//!
//! Either real backend can be *direct* ([`StdDisk::with_direct`]): aligned
//! block writes then go to the device with O_DIRECT ([`direct`]).
//! - [`SimDisk`]: in memory, with a live and a durable image, for the simulator.

pub mod direct;
mod sim;
mod std_backend;
mod uring;
mod write_ring;

pub use sim::{SimDisk, SimEntry, SimFault};
pub use std_backend::StdDisk;
pub use uring::{sequential_write_rate, UringDisk, SEQ_WRITE_BLOCK, SEQ_WRITE_DEPTH};
pub use write_ring::{RingWrite, WriteRing, MAX_RING_ROUNDS};

use crate::protocol::path::RelPath;
pub use crate::protocol::path::{EntryKind, FsPath};
use std::sync::Arc;

/// How [`Disk::open`] treats a missing or existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// Create the file; fail with [`DiskErrorKind::AlreadyExists`] if it exists.
    CreateNew,
    /// Create the file if missing, truncate it to zero length if present.
    CreateTruncate,
    /// Create the file if missing; keep its contents if present.
    Create,
}

/// What went wrong in a disk operation, reduced to what callers act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskErrorKind {
    NotFound,
    AlreadyExists,
    /// The path would resolve outside its filespace root or through a symlink.
    Escapes,
    NotEmpty,
    NoSpace,
    /// Anything else the kernel (or the simulator) reported.
    Io,
}

/// A disk error with the operation and the path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {kind:?}: {detail}")]
pub struct DiskError {
    pub op: &'static str,
    pub path: String,
    pub kind: DiskErrorKind,
    pub detail: String,
    /// The kernel's error number, when the kernel reported it (the
    /// mirror sorts errors by it: `crate::exec::apply::ERRNO_CLASSES`).
    pub errno: Option<i32>,
}

impl DiskError {
    pub fn new(op: &'static str, path: impl ToString, kind: DiskErrorKind, detail: impl ToString) -> Self {
        DiskError { op, path: path.to_string(), kind, detail: detail.to_string(), errno: None }
    }

    /// The same error, with another explanation.
    pub fn with_detail(mut self, detail: String) -> Self {
        self.detail = detail;
        self
    }

    /// The same error, with the errno it stands for.
    pub fn with_errno(mut self, errno: i32) -> Self {
        self.errno = Some(errno);
        self
    }

    pub fn from_io(op: &'static str, path: impl ToString, err: &std::io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(libc::ENOENT) => DiskErrorKind::NotFound,
            Some(libc::EEXIST) => DiskErrorKind::AlreadyExists,
            Some(libc::EXDEV) | Some(libc::ELOOP) => DiskErrorKind::Escapes,
            Some(libc::ENOTEMPTY) => DiskErrorKind::NotEmpty,
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => DiskErrorKind::NoSpace,
            _ => DiskErrorKind::Io,
        };
        let e = DiskError::new(op, path, kind, err);
        match err.raw_os_error() {
            Some(n) => e.with_errno(n),
            None => e,
        }
    }

    pub fn from_errno(op: &'static str, path: impl ToString, errno: nix::errno::Errno) -> Self {
        Self::from_io(op, path, &std::io::Error::from_raw_os_error(errno as i32))
    }
}

pub type DiskResult<T> = Result<T, DiskError>;

/// An open file. Offsets are absolute; writes never move a cursor.
pub trait DiskFile: Send + Sync + std::fmt::Debug {
    /// Write all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, offset: u64, buf: &[u8]) -> DiskResult<()>;
    /// Read up to `buf.len()` bytes at `offset`; returns the count (short at end of file).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> DiskResult<usize>;
    /// Make the file's data (and the size) durable: `fdatasync`.
    fn sync_data(&self) -> DiskResult<()>;
    fn set_len(&self, len: u64) -> DiskResult<()>;
    fn len(&self) -> DiskResult<u64>;
    fn is_empty(&self) -> DiskResult<bool> {
        Ok(self.len()? == 0)
    }
    /// The descriptor, for backends that batch by fd (io_uring); `None` in simulation.
    fn raw_fd(&self) -> Option<i32> {
        None
    }
    /// The file's O_DIRECT descriptor on a direct disk ([`direct`]): a
    /// batch may write aligned blocks through it.
    fn direct_fd(&self) -> Option<i32> {
        None
    }
    /// Start writing the file's dirty pages to the device, without waiting
    /// for them: a hint, so a later sync finds less to do and the device
    /// works while more is written. It makes nothing durable.
    fn start_writeback(&self) {}
}

/// One write of a batch handed to [`Disk::write_batch`].
pub struct BatchWrite<'a> {
    pub file: &'a dyn DiskFile,
    pub offset: u64,
    pub data: &'a [u8],
}

/// The namespace side of a backend. Directory entries become durable only
/// after [`Disk::sync_dir`] on their parent.
pub trait Disk: Send + Sync {
    fn open(&self, path: &FsPath, mode: OpenMode) -> DiskResult<Arc<dyn DiskFile>>;
    fn remove_file(&self, path: &FsPath) -> DiskResult<()>;
    /// Rename a file or directory within one filespace; replaces a file at `to`.
    fn rename(&self, from: &FsPath, to: &FsPath) -> DiskResult<()>;
    fn create_dir(&self, path: &FsPath) -> DiskResult<()>;
    fn remove_dir(&self, path: &FsPath) -> DiskResult<()>;
    /// fsync the directory that contains `path` (the filespace root for a top-level name).
    fn sync_parent_dir(&self, path: &FsPath) -> DiskResult<()>;
    /// A handle on the directory that contains `path`; its `sync_data`
    /// fsyncs that directory. The handle follows the directory through
    /// renames, so a deferred directory sync never loses its target.
    fn parent_dir_handle(&self, path: &FsPath) -> DiskResult<Arc<dyn DiskFile>>;
    /// Whether `path` exists (without following a final symlink).
    fn exists(&self, path: &FsPath) -> DiskResult<bool>;
    /// What is at `path` (without following a final symlink), if anything.
    fn entry_kind(&self, path: &FsPath) -> DiskResult<Option<EntryKind>>;
    /// The entries of a directory (`None`: the filespace's root), sorted by name.
    fn list_dir(&self, filespace: u16, dir: Option<&RelPath>) -> DiskResult<Vec<(String, EntryKind)>>;
    /// The backend's name, for logs and benchmark reports.
    fn name(&self) -> &'static str;
    /// Whether aligned block writes skip the page cache (O_DIRECT): each
    /// then costs the device's latency rather than a copy.
    fn writes_direct(&self) -> bool {
        false
    }

    /// Whether a [`WriteRing`] (O_DIRECT writes one thread submits to and
    /// reaps from) writes this disk's files: a direct disk with io_uring.
    fn takes_write_ring(&self) -> bool {
        false
    }

    /// Write every entry; results in the same order. Backends that can,
    /// submit the whole batch at once (io_uring); the default writes in turn.
    /// fsync directory `dir` of filespace `fs` (`None`: its root), so the
    /// entries made in it so far survive a crash.
    fn sync_dir(&self, fs: u16, dir: Option<&RelPath>) -> DiskResult<()> {
        const PROBE: &str = ".filerep-dir";
        let child = match dir {
            Some(d) => d.join(PROBE),
            None => RelPath::top(PROBE),
        }
        .map_err(|e| DiskError::new("sync_dir", format!("fs{fs}"), DiskErrorKind::Io, e))?;
        self.sync_parent_dir(&FsPath::new(fs, child))
    }

    fn write_batch(&self, writes: &[BatchWrite<'_>]) -> Vec<DiskResult<()>> {
        writes.iter().map(|w| w.file.write_at(w.offset, w.data)).collect()
    }

    /// `fdatasync` every file; the default syncs in turn.
    fn sync_batch(&self, files: &[&dyn DiskFile]) -> Vec<DiskResult<()>> {
        files.iter().map(|f| f.sync_data()).collect()
    }
}

/// Make every file and directory of filespaces `0..filespaces` durable,
/// children before the directories that name them; returns how many
/// entries were synced. A process that starts as primary does this first
/// (as PostgreSQL syncs its data directory at crash recovery): a previous
/// process may have died with changes in the page cache that its change
/// records no longer name, and this one cannot know which directories they
/// are in.
pub fn sync_tree(disk: &dyn Disk, filespaces: u16) -> DiskResult<u64> {
    fn walk(disk: &dyn Disk, fs: u16, dir: Option<&RelPath>, count: &mut u64) -> DiskResult<()> {
        for (name, kind) in disk.list_dir(fs, dir)? {
            let child = match dir {
                Some(d) => d.join(&name),
                None => RelPath::top(&name),
            }
            .map_err(|e| DiskError::new("sync_tree", format!("fs{fs}"), DiskErrorKind::Io, e))?;
            match kind {
                EntryKind::Dir => walk(disk, fs, Some(&child), count)?,
                EntryKind::File => {
                    disk.open(&FsPath::new(fs, child), OpenMode::Existing)?.sync_data()?;
                    *count += 1;
                }
                EntryKind::Other => {}
            }
        }
        disk.sync_dir(fs, dir)?;
        *count += 1;
        Ok(())
    }
    let mut count = 0;
    for fs in 0..filespaces {
        walk(disk, fs, None, &mut count)?;
    }
    Ok(count)
}

/// Remove `path` and everything beneath it; nothing there is no error.
/// Entries that are neither files nor directories (symlinks) are removed as files.
pub fn remove_tree(disk: &dyn Disk, path: &FsPath) -> DiskResult<()> {
    match disk.entry_kind(path)? {
        None => Ok(()),
        Some(EntryKind::Dir) => {
            for (name, _) in disk.list_dir(path.filespace, Some(&path.path))? {
                let child =
                    path.path.join(&name).map_err(|e| DiskError::new("remove_tree", path, DiskErrorKind::Io, e))?;
                remove_tree(disk, &FsPath::new(path.filespace, child))?;
            }
            disk.remove_dir(path)
        }
        Some(_) => disk.remove_file(path),
    }
}

/// Check that the file system of every root holds a file of the largest
/// size a pair holds ([`crate::protocol::MAX_FILE_BYTES`]): a sparse
/// unnamed file is set to that length and dropped (no block is written).
/// A write the protocol allows must never fail for its size alone: the
/// mirror would count a request as a failing disk.
pub fn check_largest_file(roots: &[std::path::PathBuf]) -> DiskResult<()> {
    const OP: &str = "check the largest file";
    let max = crate::protocol::MAX_FILE_BYTES;
    for root in roots {
        let f = unnamed_file_in(root).map_err(|e| DiskError::from_io(OP, root.display(), &e))?;
        if let Err(e) = f.set_len(max) {
            return Err(DiskError::from_io(OP, root.display(), &e).with_detail(format!(
                "this file system cannot hold a file of {max} bytes (4 TiB), the largest a pair holds \
                 (docs/protocol.md § 3.4): {e}; put the filespace on one that can (ext4 with 4 KiB blocks, XFS, btrfs)"
            )));
        }
    }
    tracing::info!(
        max_file_bytes = max,
        roots = roots.len(),
        "every filespace holds the largest file a pair holds (4 TiB)"
    );
    Ok(())
}

/// A file in `dir` with no name (O_TMPFILE): nothing is left behind, even
/// after a crash. A file system without O_TMPFILE gets a named file,
/// removed at once.
pub(crate) fn unnamed_file_in(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |path: &std::path::Path, flags| {
        std::fs::OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(flags).open(path)
    };
    match open(dir, libc::O_TMPFILE) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)) => {
            let path = dir.join(format!(".filerep-size-check-{}", std::process::id()));
            let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
        r => r,
    }
}

/// Choose the local backend at start: io_uring when the kernel offers it,
/// the std backend otherwise (old kernels, io_uring disabled by sysctl or seccomp).
pub fn open_local(roots: &[std::path::PathBuf], prefer_uring: bool) -> DiskResult<Arc<dyn Disk>> {
    open_local_with(roots, prefer_uring, false)
}

/// [`open_local`], with aligned block writes made with O_DIRECT if `direct`
/// (refused, naming the root, where the file system cannot).
pub fn open_local_with(roots: &[std::path::PathBuf], prefer_uring: bool, direct: bool) -> DiskResult<Arc<dyn Disk>> {
    let std = StdDisk::open(roots)?.with_direct(direct)?;
    if prefer_uring {
        match uring::probe() {
            Ok(()) => return Ok(Arc::new(UringDisk::over(std)?)),
            Err(e) => tracing::warn!(error = %e, "io_uring unavailable; using the std backend"),
        }
    }
    Ok(Arc::new(std))
}

#[cfg(test)]
pub(crate) mod conformance;
