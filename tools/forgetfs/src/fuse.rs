//! The FUSE side: every request becomes one call on the [`Model`], under
//! one lock, so a power cut (also under it) falls between two requests.
//!
//! The kernel must not remember anything the model might forget: entries
//! and attributes are never cached (TTL 0) and every open is direct I/O
//! (no page cache), so after a cut the next access asks the model.

use crate::model::{Attr, Errno as ModelErrno, Kind, Model, Owner};
use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::ZERO;
/// Largest write request asked of the kernel.
const MAX_WRITE: u32 = 1 << 20;

pub(crate) struct ForgetFs {
    pub model: Arc<Mutex<Model>>,
    /// For statfs: the store directory's file system.
    pub store: std::path::PathBuf,
    /// How long an fsync takes before it makes anything durable (a
    /// device's flush latency): a power cut meanwhile loses what it syncs.
    pub sync_latency: Duration,
}

pub(crate) fn lock(m: &Mutex<Model>) -> MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn errno(e: ModelErrno) -> Errno {
    Errno::from_i32(e)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: UNIX_EPOCH,
        kind: match a.kind {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
        },
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn owner(req: &Request, mode: u32, umask: u32) -> Owner {
    Owner { perm: mode & !umask & 0o7777, uid: req.uid(), gid: req.gid() }
}

/// O_SYNC includes O_DSYNC's bit: either makes every write durable.
fn sync_flag(flags: i32) -> bool {
    flags & libc::O_DSYNC != 0
}

fn reply_attr(reply: ReplyAttr, r: Result<Attr, ModelErrno>) {
    match r {
        Ok(a) => reply.attr(&TTL, &file_attr(&a)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), ModelErrno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

impl ForgetFs {
    fn m(&self) -> MutexGuard<'_, Model> {
        lock(&self.model)
    }

    /// fsync and fdatasync of a file, fsync of a directory: through a live handle.
    fn sync(&self, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty) {
        if !self.sync_latency.is_zero() {
            // The device's flush, before anything is durable (no lock held:
            // other requests, and a power cut, go on meanwhile).
            std::thread::sleep(self.sync_latency);
        }
        let mut m = self.m();
        let r = m.handle(fh.0).map(|_| ()).and_then(|()| m.fsync(ino.0));
        reply_empty(reply, r);
    }

    /// A new or existing entry handed to the kernel (one more reference).
    fn entry_of(&self, m: &mut Model, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        m.lookup(parent.0, name).map(|a| file_attr(&a)).map_err(errno)
    }
}

impl fuser::Filesystem for ForgetFs {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        lock(&self.model).set_root_owner(req.uid(), req.gid());
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            tracing::debug!(max, "the kernel takes smaller writes");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut m = self.m();
        reply_entry(reply, self.entry_of(&mut m, parent, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.m().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.m().attr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
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
        let mut m = self.m();
        let r = (|| {
            let sync = match fh {
                Some(fh) => m.handle(fh.0)?.sync,
                None => false,
            };
            if let Some(len) = size {
                m.set_len(ino.0, len)?;
                if sync {
                    m.fsync(ino.0)?;
                }
            }
            if mode.is_some() || uid.is_some() || gid.is_some() {
                m.chmod_chown(ino.0, mode, uid, gid)?;
            }
            m.attr(ino.0)
        })();
        reply_attr(reply, r);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only: nothing the engine writes is anything else.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let mut m = self.m();
        let r = m
            .create(parent.0, name, owner(req, mode, umask), true)
            .map_err(errno)
            .and_then(|_| self.entry_of(&mut m, parent, name));
        reply_entry(reply, r);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut m = self.m();
        let r = m
            .mkdir(parent.0, name, owner(req, mode, umask))
            .map_err(errno)
            .and_then(|_| self.entry_of(&mut m, parent, name));
        reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.m().unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.m().rmdir(parent.0, name));
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _target: &std::path::Path, reply: ReplyEntry) {
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
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        reply_empty(reply, self.m().rename(parent.0, name, newparent.0, newname, noreplace));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut m = self.m();
        let r = m.attr(ino.0).and_then(|a| {
            if a.kind == Kind::Dir {
                return Err(libc::EISDIR);
            }
            m.open(ino.0, flags.0 & libc::O_APPEND != 0, sync_flag(flags.0))
        });
        match r {
            // No page cache: every read and write comes here.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(e)),
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
        let mut m = self.m();
        match m.handle(fh.0).map(|_| ()).and_then(|()| m.read(ino.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut m = self.m();
        let r = (|| {
            let h = m.handle(fh.0)?.clone();
            let at = if h.append { m.live_len(ino.0)? } else { offset };
            let n = m.write(ino.0, at, data)?;
            if h.sync {
                m.fsync(ino.0)?;
            }
            Ok(n)
        })();
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.m().release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.sync(ino, fh, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut m = self.m();
        let r =
            m.attr(ino.0)
                .and_then(|a| if a.kind == Kind::Dir { m.open(ino.0, false, false) } else { Err(libc::ENOTDIR) });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let m = self.m();
        let r = m.handle(fh.0).cloned().and_then(|h| Ok((h, m.entries(ino.0)?.0)));
        let (h, parent) = match r {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        drop(m);
        let dots = [(".".into(), ino.0, Kind::Dir), ("..".into(), parent, Kind::Dir)].into_iter().collect::<Vec<_>>();
        let rest = h.entries.unwrap_or_default();
        for (i, (name, child, kind)) in dots.into_iter().chain(rest).enumerate().skip(offset as usize) {
            let kind = if kind == Kind::Dir { FileType::Directory } else { FileType::RegularFile };
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.m().release(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.sync(ino, fh, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match nix::sys::statvfs::statvfs(&self.store) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                crate::model::MAX_NAME as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut m = self.m();
        let r = (|| {
            let (ino, new) = m.create(parent.0, name, owner(req, mode, umask), flags & libc::O_EXCL != 0)?;
            if !new && flags & libc::O_TRUNC != 0 {
                m.set_len(ino, 0)?;
            }
            let attr = m.lookup(parent.0, name)?;
            let fh = m.open(ino, flags & libc::O_APPEND != 0, sync_flag(flags))?;
            Ok((attr, fh))
        })();
        match r {
            Ok((a, fh)) => {
                reply.created(&TTL, &file_attr(&a), Generation(0), FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}
