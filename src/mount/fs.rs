//! The FUSE request handlers: changes go to the segment (`changes.rs`),
//! reads come from the local root (see `docs/mount.md` for why that is safe).

use super::changes::Changes;
use super::errno::{errno_of, io_errno};
use super::held::{Held, Taken};
use super::inodes::{Inodes, Term, ROOT};
use super::local::{LocalEntry, Root};
use super::log_files::{LogFiles, LogHistory};
use crate::cluster::client::ClientError;
use crate::protocol::MAX_WRITE_AT;
use fuser::{
    BsdFileFlags, Errno, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

/// How long the kernel may keep attributes and entries. Every change goes
/// through this mount, so the kernel's caches only go stale if something
/// else changes the filespace (see `docs/mount.md`).
const TTL: Duration = Duration::from_secs(1);

enum Handle {
    File(File),
    Dir(Vec<LocalEntry>),
}

mod attrs;
mod names;

pub(crate) struct FilerepFs {
    pub(super) fs: u16,
    pub(super) bs: u64,
    root: Root,
    pub(super) changes: Arc<dyn Changes>,
    /// A small write held back until the next request (`held.rs`).
    held: Arc<Held>,
    inodes: Mutex<Inodes>,
    /// Shared by every request that turns an inode into a path and hands
    /// it to the segment; exclusive for unlink, rmdir and rename, which
    /// change what paths name. So a path sent to the segment always names
    /// the inode the kernel meant, never a file renamed into its place.
    ns: RwLock<()>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    uid: Option<u32>,
    gid: Option<u32>,
    /// The kernel's write-back cache is asked for: only where the mount
    /// knows the files' terms (the segment in this process), since the
    /// kernel then trusts its own lengths (`inodes.rs`).
    write_back: bool,
    /// A database's log files (`log_files.rs`), opened without the
    /// write-back cache while their syncs are a commit's worth...
    log_files: LogFiles,
    /// ...as the last syncs of logs in their directory tell.
    log_history: Mutex<LogHistory>,
    /// The write-back cache is on and the kernel writes a file's cached
    /// pages before a write that bypasses them (it granted
    /// `FUSE_DIRECT_IO_ALLOW_MMAP`, Linux 6.6 and later): only then may a
    /// log be opened without the cache while another open uses it.
    direct_logs: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct FsParams {
    pub filespace: u16,
    pub block_size: u32,
    pub root: Root,
    pub changes: Arc<dyn Changes>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub log_files: LogFiles,
}

impl FilerepFs {
    pub fn new(p: FsParams) -> std::io::Result<FilerepFs> {
        let held = Held::start(p.filespace, p.changes.clone())?;
        let write_back = p.changes.term() != Term::Unknown;
        Ok(FilerepFs {
            fs: p.filespace,
            bs: u64::from(p.block_size),
            root: p.root,
            changes: p.changes,
            held,
            inodes: Mutex::new(Inodes::new()),
            ns: RwLock::new(()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid: p.uid,
            gid: p.gid,
            write_back,
            log_files: p.log_files,
            log_history: Mutex::new(LogHistory::default()),
            direct_logs: false,
        })
    }

    fn ns_shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.ns.read().unwrap_or_else(|e| e.into_inner())
    }

    fn ns_exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.ns.write().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        lock(&self.handles).get(&fh.0).cloned()
    }

    fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(h));
        FileHandle(fh)
    }

    /// Map a failed call to its errno, logging what callers must not miss.
    pub(super) fn failed(&self, op: &'static str, path: &str, e: &ClientError) -> Errno {
        let errno = errno_of(e);
        if errno == Errno::EIO {
            tracing::warn!(op, path, error = %e, "the segment refused or failed a change: EIO");
        } else {
            tracing::debug!(op, path, error = %e, errno = errno.code(), "refused");
        }
        errno
    }

    /// Make file `ino` durable on both hosts: its own held write goes with
    /// the sync, as one call; another file's stays held (this sync does not
    /// cover it).
    fn sync_file(&self, ino: INodeNo) -> Result<(), Errno> {
        let sent_with_sync = self.held.sync_held(ino.0);
        // A held write that failed once sent fails the sync that follows it.
        if let Some(e) = self.held.take_failure(ino.0) {
            return Err(e);
        }
        if let Some(r) = sent_with_sync {
            return r;
        }
        let _ns = self.ns_shared();
        let Some(path) = self.to_sync(ino)? else { return Ok(()) };
        self.changes.sync(self.fs, &path).map_err(|e| self.failed("sync", &path, &e))
    }
}

impl Drop for FilerepFs {
    fn drop(&mut self) {
        self.held.stop();
    }
}

impl fuser::Filesystem for FilerepFs {
    fn destroy(&mut self) {
        // Unmounting: what is held goes now, while the segment still runs.
        self.held.stop();
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // One write request is at most one write_at call (larger ones
        // would be split anyway).
        if let Err(max) = config.set_max_write(MAX_WRITE_AT as u32) {
            tracing::warn!(max, "the kernel refused {MAX_WRITE_AT}-byte writes");
        }
        // Lookups and readdirs in one directory may run in parallel: the
        // namespace lock keeps them consistent with changes.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        // The kernel's write-back cache: a write(2) lands in the page
        // cache and returns, and the kernel sends dirty pages in large
        // writes (on its own, on close, before an fsync), as a local file
        // system does. An fsync or an O_SYNC/O_DSYNC write still returns
        // only once the kernel has sent every dirty page of the file and
        // the segment has made them durable on both hosts; a write that
        // fails once sent fails the file's next fsync and close, as a
        // failed write-back does on a local disk (docs/mount.md).
        if self.write_back {
            if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE) {
                tracing::warn!(?missing, "the kernel offers no write-back cache: each write is a request");
            }
            // Log files may bypass the cache (`log_files.rs`): where the
            // kernel writes the cached pages first (and a program may still
            // map such a file shared, as it could with the cache).
            if !self.log_files.patterns().is_empty() {
                self.direct_logs = config.add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP).is_ok();
                if !self.direct_logs {
                    tracing::info!("the kernel cannot mix cached and direct opens safely: log files use the cache too");
                }
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _ns = self.ns_shared();
        let r = self.child_of(parent, name).and_then(|p| {
            // Its length as the client wrote it, held writes included
            // (without sending them: a database looks up the length of
            // the file it appends to before every page it adds).
            let held_end = self.held.held_end_of(&p);
            Ok(attrs::with_held_length(self.entry(&p)?, held_end))
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let gone = self.inodes().forget(ino.0, nlookup);
        if gone && self.direct_logs {
            lock(&self.log_history).forgot(ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_now(ino, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Modes, owners and times are accepted and not stored: the engine
        // replicates contents and names only (docs/mount.md). So only a
        // length change sends the file's held writes; any other change
        // answers as getattr does. With the write-back cache the kernel
        // sends the times it keeps between a commit's write and its fsync:
        // settling there would part the write from the sync it goes with.
        if let Some(size) = size {
            self.held.settle_file(ino.0);
            let _ns = self.ns_shared();
            let path = match self.path_of(ino) {
                Ok(p) => p,
                Err(e) => return reply.error(e),
            };
            let fs = self.fs;
            if let Err(e) = self.changes.set_len(fs, &path, size) {
                return reply.error(self.failed("set_len", &path, &e));
            }
        }
        match self.attr_now(ino, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Only regular files are replicated.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let _ns = self.ns_shared();
        let r = self.child_of(parent, name).and_then(|p| {
            self.create_file(&p, true, false)?;
            self.entry(&p)
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let _ns = self.ns_shared();
        let fs = self.fs;
        let r = self.child_of(parent, name).and_then(|p| {
            self.changes.mkdir(fs, &p).map_err(|e| self.failed("mkdir", &p, &e))?;
            self.entry(&p)
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _ns = self.ns_exclusive();
        // Under the exclusive lock: the held write's path names its file.
        self.held.settle();
        let fs = self.fs;
        let r = self.child_of(parent, name).and_then(|p| {
            self.changes.unlink(fs, &p).map_err(|e| self.failed("unlink", &p, &e))?;
            self.inodes().detach(&p, false);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _ns = self.ns_exclusive();
        // Under the exclusive lock: the held write's path names its file.
        self.held.settle();
        let fs = self.fs;
        let r = self.child_of(parent, name).and_then(|p| {
            self.changes.rmdir(fs, &p).map_err(|e| self.failed("rmdir", &p, &e))?;
            self.inodes().detach(&p, true);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _target: &std::path::Path, reply: ReplyEntry) {
        // The engine replicates regular files and directories only.
        reply.error(Errno::EPERM);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let _ns = self.ns_exclusive();
        // Under the exclusive lock: the held write's path names its file.
        self.held.settle();
        let r = (|| {
            let from = self.child_of(parent, name)?;
            let to = self.child_of(newparent, newname)?;
            let src = self.root.metadata(&from).map_err(|e| io_errno(&e))?;
            if from == to {
                return Ok(());
            }
            // POSIX rename's checks, before the engine is asked (the kernel
            // makes most of them too). Exclusive: nothing changes meanwhile.
            match self.root.metadata(&to) {
                Ok(dst) => {
                    if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                        return Err(Errno::EEXIST);
                    }
                    match (src.is_dir(), dst.is_dir()) {
                        (true, false) => return Err(Errno::ENOTDIR),
                        (false, true) => return Err(Errno::EISDIR),
                        _ => {}
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_errno(&e)),
            }
            if src.is_dir() && to.starts_with(&format!("{from}/")) {
                return Err(Errno::EINVAL);
            }
            let fs = self.fs;
            self.changes.rename(fs, &from, &to).map_err(|e| self.failed("rename", &from, &e))?;
            self.inodes().rename(&from, &to, src.is_dir());
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Reads and fstat use a local read-only descriptor; writes go by
        // path to the segment. O_TRUNC arrives as a setattr.
        let r = self.path_of(ino).and_then(|p| self.root.open_read(&p).map_err(|e| io_errno(&e)));
        match r {
            Ok(f) => {
                let open = self.open_flags(ino.0, flags.0 & libc::O_DSYNC != 0);
                reply.opened(self.add_handle(Handle::File(f)), open)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.held.settle_file(ino.0);
        let Some(h) = self.handle(fh) else { return reply.error(Errno::EBADF) };
        let Handle::File(f) = h.as_ref() else { return reply.error(Errno::EISDIR) };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0usize;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(io_errno(&e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if data.is_empty() {
            return reply.written(0);
        }
        if self.direct_logs {
            lock(&self.log_history).wrote(ino.0, data.len() as u64);
        }
        let ns = self.ns_shared();
        let path = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => {
                // A client's own doing (it unlinked or replaced the file it
                // writes), answered as NFS does.
                tracing::debug!(ino = ino.0, "a write to a file unlinked or replaced while open: ESTALE");
                return reply.error(e);
            }
        };
        let written = match self.held.write(ino.0, &path, offset, data) {
            Taken::Done(r) => r,
            _ => {
                let len = || match self.handle(fh).as_deref() {
                    // The segment writes the same inode: its length here is current.
                    Some(Handle::File(f)) => f.metadata().map(|m| m.len()),
                    _ => self.root.metadata(&path).map(|m| m.len()),
                };
                self.write_through(&path, offset, data, len)
            }
        };
        drop(ns);
        // A synchronous write (O_SYNC, O_DSYNC, RWF_DSYNC) to a file open
        // without the cache: the kernel sends no fsync after it, as it does
        // after a cached one, so it is made durable here before it returns.
        let written = written.and_then(|n| {
            let sync_write = flags.0 & libc::O_DSYNC != 0 && !write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
            if sync_write && self.direct_logs && lock(&self.log_history).is_direct(ino.0) {
                self.sync_file(ino)?;
            }
            Ok(n)
        });
        match written {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // A close sends what is held, and reports a held write that failed.
        self.held.settle_file(ino.0);
        match self.held.failure_at_close(ino.0) {
            Some(e) => reply.error(e),
            None => reply.ok(),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if lock(&self.handles).remove(&fh.0).is_some() && self.direct_logs {
            lock(&self.log_history).released(ino.0);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if self.direct_logs {
            lock(&self.log_history).synced(ino.0);
        }
        match self.sync_file(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _ns = self.ns_shared();
        // A snapshot: offsets stay meaningful while the directory changes.
        let r = self.path_of(ino).and_then(|p| self.root.list(&p).map_err(|e| io_errno(&e)));
        match r {
            Ok(entries) => reply.opened(self.add_handle(Handle::Dir(entries)), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(h) = self.handle(fh) else { return reply.error(Errno::EBADF) };
        let Handle::Dir(entries) = h.as_ref() else { return reply.error(Errno::ENOTDIR) };
        let dir = match self.path_of(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let inodes = self.inodes();
        let parent = match dir.rsplit_once('/') {
            Some((p, _)) => inodes.peek(p).unwrap_or(ROOT),
            None => ROOT,
        };
        let dots = [(".".to_string(), ino.0, FileType::Directory), ("..".to_string(), parent, FileType::Directory)];
        let rest = entries.iter().map(|e| {
            let path = if dir.is_empty() { e.name.clone() } else { format!("{dir}/{}", e.name) };
            // d_ino is informational: the kernel's inode if it holds one.
            (e.name.clone(), inodes.peek(&path).unwrap_or(e.ino), e.kind)
        });
        for (i, (name, ino, kind)) in dots.into_iter().chain(rest).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, &name) {
                break;
            }
        }
        drop(inodes);
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // The engine syncs every changed directory, here and on the mirror.
        // A directory removed while open names none: what its removal
        // changed (its parent) is synced with the rest, from the root.
        self.held.settle();
        let _ns = self.ns_shared();
        let dir = match self.to_sync(ino) {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => return reply.error(e),
        };
        let fs = self.fs;
        match self.changes.sync_dir(fs, &dir) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.failed("sync_dir", &dir, &e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.root.statvfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max().min(crate::protocol::path::MAX_COMPONENT_BYTES as u64) as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _ns = self.ns_shared();
        let r = self.child_of(parent, name).and_then(|p| {
            // An O_TRUNC of an existing file goes after what it was written.
            self.held.settle_path(&p);
            self.create_file(&p, flags & libc::O_EXCL != 0, flags & libc::O_TRUNC != 0)?;
            let f = self.root.open_read(&p).map_err(|e| io_errno(&e))?;
            let attr = self.entry(&p)?;
            Ok((attr, f))
        });
        match r {
            Ok((attr, f)) => {
                // A file truncated by this create (not by the kernel's own
                // setattr) keeps no page the kernel had of it.
                let mut open = self.open_flags(attr.ino.0, flags & libc::O_DSYNC != 0);
                if flags & libc::O_TRUNC != 0 {
                    open.remove(FopenFlags::FOPEN_KEEP_CACHE);
                }
                let fh = self.add_handle(Handle::File(f));
                reply.created(&TTL, &attr, Generation(0), fh, open)
            }
            Err(e) => reply.error(e),
        }
    }

    // What the mount does not offer is refused quietly, with the errno the
    // kernel and C libraries expect, so probing clients fill no log. For
    // ENOSYS the kernel remembers and stops asking (xattrs, access, locks,
    // poll, fallocate, lseek, copy_file_range then take their generic or
    // local paths).

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Terminal and file-system ioctls probed by tools: not a terminal.
        reply.error(Errno::ENOTTY);
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        // Symlinks are not replicated, so none is made here.
        reply.error(Errno::EINVAL);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks access itself.
        reply.error(Errno::ENOSYS);
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: fuser::ReplyLock,
    ) {
        // The kernel keeps POSIX locks locally.
        reply.error(Errno::ENOSYS);
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: fuser::ReplyBmap) {
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // Callers fall back to writing (posix_fallocate in C libraries).
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The kernel copies by reads and writes, which come through here.
        reply.error(Errno::ENOSYS);
    }
}
