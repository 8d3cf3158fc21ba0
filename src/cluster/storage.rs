//! The storage API of a running segment, in the process that runs it: each
//! call goes to the acting primary this segment hosts, or fails with
//! [`Error::NotPrimary`] when the segment is not the acting primary (the
//! mirror, no role yet, handing its role over, stopping). The local client
//! socket serves its requests through [`Storage::request`], and the C ABI
//! calls the same methods, so both see the same checks and the same errors.
//!
//! Arguments are checked before the role is looked at: a bad filespace, a
//! path that is not a relative filespace path (`..`, absolute, empty
//! components, NUL), or a buffer of the wrong length fails with
//! `InvalidArgument` or `Path` whatever the role, and changes nothing.

use crate::cluster::client::{Op, Request};
use crate::cluster::segment::Shared;
use crate::core::primary::Wait;
use crate::error::{Error, Result};
use crate::protocol::path::RelPath;
use crate::runtime::primary::{check_write_at_len, Primary};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A segment's storage API; cheap to clone, shared by any number of threads.
#[derive(Clone)]
pub struct Storage {
    pub(crate) shared: Arc<Shared>,
    /// When its changing calls return ([`Storage::queued`]).
    pub(crate) wait: Wait,
}

impl Storage {
    /// The storage API of a segment, its changing calls at the pair's level.
    pub(crate) fn new(shared: Arc<Shared>) -> Storage {
        Storage { shared, wait: Wait::Level }
    }

    /// The same storage, whose changing calls (create, writes, lengths,
    /// unlink, directories, renames) return once made on the acting
    /// primary and on their way to the mirror, at most
    /// [`crate::core::primary::QUEUED_WINDOW`] sequence numbers ahead of
    /// it (never looser than the pair's sync level), instead of once the
    /// mirror applied them: for a host whose own contract promises nothing
    /// of a change before a sync, as a file system's (the mount). A sync or
    /// flush of a file still returns only when that file's changes and
    /// every namespace change before it are durable on both hosts, and a
    /// directory sync when every namespace change before it is.
    pub fn queued(&self) -> Storage {
        Storage { shared: self.shared.clone(), wait: Wait::Queued }
    }

    /// The cluster's block size: the length of every block buffer.
    pub fn block_size(&self) -> u32 {
        self.shared.cfg.block_size
    }

    /// Filespace names, in index order (the `fs` argument of every call).
    pub fn filespaces(&self) -> Vec<String> {
        self.shared.filespaces.iter().map(|f| f.name.clone()).collect()
    }

    /// Wait until this segment acts as the primary; `NotPrimary`, saying
    /// what it is instead, once `timeout` has passed or at once when the
    /// segment is stopping (it never will be).
    pub fn wait_primary(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.acting() {
                Ok(_) => return Ok(()),
                Err(e @ Error::Faulted(_)) => return Err(e),
                Err(e) if Instant::now() >= deadline || self.shared.stopping() => return Err(e),
                // The role is set by the arbiter's order on another thread;
                // the storage process has nothing to do until then.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Which term as the acting primary this segment is in, None when it
    /// is not the acting primary. Between two calls that return the same
    /// term, only this segment's own changes (the storage API's) touched
    /// its files: a mirror's applier or a resync writes them only between
    /// terms. The mount keeps the kernel's cached pages across opens by it.
    pub fn primary_term(&self) -> Option<u64> {
        self.shared.primary_term()
    }

    fn acting(&self) -> Result<Arc<Primary>> {
        self.shared.acting_primary()
    }

    /// Run one call on the acting primary. A primary shut down under the
    /// call (a role change, or the segment stopping) changed nothing here:
    /// the call belongs on the acting primary.
    fn on_primary<T>(&self, f: impl FnOnce(&Primary) -> Result<T>) -> Result<T> {
        let p = self.acting()?;
        f(&p).map_err(|e| match e {
            Error::Closed(why) => Error::NotPrimary(format!(
                "segment {} is handing over its role or stopping ({why}): retry on the acting primary",
                self.shared.cfg.dbid
            )),
            e => e,
        })
    }

    fn check_fs(&self, fs: u16) -> Result<()> {
        let n = self.shared.filespaces.len();
        if fs as usize >= n {
            return Err(Error::InvalidArgument(format!("filespace {fs} does not exist (this segment has {n})")));
        }
        Ok(())
    }

    fn check(&self, fs: u16, path: &str) -> Result<()> {
        self.check_fs(fs)?;
        RelPath::new(path)?;
        Ok(())
    }

    fn check_block(&self, fs: u16, path: &str, len: usize) -> Result<()> {
        self.check(fs, path)?;
        let bs = self.block_size() as usize;
        if len != bs {
            return Err(Error::InvalidArgument(format!("a block is {bs} bytes; a buffer of {len} was given")));
        }
        Ok(())
    }

    // ---- relation files ------------------------------------------------

    pub fn create(&self, fs: u16, path: &str) -> Result<()> {
        self.check(fs, path)?;
        self.on_primary(|p| p.changing(self.wait).create(fs, path))
    }

    pub fn write_block(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<()> {
        self.check_block(fs, path, data.len())?;
        self.on_primary(|p| p.changing(self.wait).write_block(fs, path, block, data))
    }

    pub fn extend(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<()> {
        self.check_block(fs, path, data.len())?;
        self.on_primary(|p| p.changing(self.wait).extend(fs, path, block, data))
    }

    pub fn read_block(&self, fs: u16, path: &str, block: u64, buf: &mut [u8]) -> Result<()> {
        self.check_block(fs, path, buf.len())?;
        self.on_primary(|p| p.read_block(fs, path, block, buf))
    }

    pub fn nblocks(&self, fs: u16, path: &str) -> Result<u64> {
        self.check(fs, path)?;
        self.on_primary(|p| p.nblocks(fs, path))
    }

    pub fn truncate(&self, fs: u16, path: &str, nblocks: u64) -> Result<()> {
        self.check(fs, path)?;
        self.on_primary(|p| p.changing(self.wait).truncate(fs, path, nblocks))
    }

    pub fn unlink(&self, fs: u16, path: &str) -> Result<()> {
        self.check(fs, path)?;
        self.on_primary(|p| p.changing(self.wait).unlink(fs, path))
    }

    pub fn sync(&self, fs: u16, path: &str) -> Result<()> {
        self.check(fs, path)?;
        self.on_primary(|p| p.sync(fs, path))
    }

    // ---- flat and log files --------------------------------------------

    pub fn write_at(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.check(fs, path)?;
        check_write_at_len(data.len())?;
        self.on_primary(|p| p.changing(self.wait).write_at(fs, path, offset, data))
    }

    /// `write_at` then `flush`, as one call (one round trip to the mirror).
    pub fn write_at_and_flush(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.check(fs, path)?;
        check_write_at_len(data.len())?;
        self.on_primary(|p| p.write_at_and_flush(fs, path, offset, data))
    }

    pub fn flush(&self, fs: u16, path: &str) -> Result<()> {
        self.check(fs, path)?;
        self.on_primary(|p| p.flush(fs, path))
    }

    pub fn set_len(&self, fs: u16, path: &str, len: u64) -> Result<()> {
        self.check(fs, path)?;
        self.on_primary(|p| p.changing(self.wait).set_len(fs, path, len))
    }

    pub fn len(&self, fs: u16, path: &str) -> Result<u64> {
        self.check(fs, path)?;
        self.on_primary(|p| p.len(fs, path))
    }

    // ---- filespace operations ------------------------------------------

    pub fn mkdir(&self, fs: u16, path: &str) -> Result<()> {
        self.check(fs, path)?;
        self.on_primary(|p| p.changing(self.wait).mkdir(fs, path))
    }

    pub fn rmdir(&self, fs: u16, path: &str) -> Result<()> {
        self.check(fs, path)?;
        self.on_primary(|p| p.changing(self.wait).rmdir(fs, path))
    }

    pub fn rename(&self, fs: u16, from: &str, to: &str) -> Result<()> {
        self.check(fs, from)?;
        RelPath::new(to)?;
        self.on_primary(|p| p.changing(self.wait).rename(fs, from, to))
    }

    /// A directory fsync; `dir` "" is the filespace's root.
    pub fn sync_dir(&self, fs: u16, dir: &str) -> Result<()> {
        if dir.is_empty() {
            self.check_fs(fs)?;
        } else {
            self.check(fs, dir)?;
        }
        self.on_primary(|p| p.sync_dir(fs, dir))
    }

    pub fn exists(&self, fs: u16, path: &str) -> Result<bool> {
        self.check(fs, path)?;
        self.on_primary(|p| p.exists(fs, path))
    }

    /// One request of the local client socket: its value and data.
    pub fn request(&self, r: &Request) -> Result<(u64, Vec<u8>)> {
        let (fs, path) = (r.filespace, r.path.as_str());
        let none = |x: Result<()>| x.map(|_| (0, Vec::new()));
        match r.op {
            Op::Create => none(self.create(fs, path)),
            Op::WriteBlock => none(self.write_block(fs, path, r.a, &r.data)),
            Op::Extend => none(self.extend(fs, path, r.a, &r.data)),
            Op::ReadBlock => {
                let mut buf = vec![0u8; self.block_size() as usize];
                self.read_block(fs, path, r.a, &mut buf).map(|_| (0, buf))
            }
            Op::Nblocks => self.nblocks(fs, path).map(|n| (n, Vec::new())),
            Op::Truncate => none(self.truncate(fs, path, r.a)),
            Op::Unlink => none(self.unlink(fs, path)),
            Op::Sync => none(self.sync(fs, path)),
            Op::WriteAt => none(self.write_at(fs, path, r.a, &r.data)),
            Op::Flush => none(self.flush(fs, path)),
            Op::Len => self.len(fs, path).map(|n| (n, Vec::new())),
            Op::SetLen => none(self.set_len(fs, path, r.a)),
            Op::Mkdir => none(self.mkdir(fs, path)),
            Op::Rmdir => none(self.rmdir(fs, path)),
            Op::Rename => none(self.rename(fs, path, &r.path2)),
            Op::Exists => self.exists(fs, path).map(|e| (e as u64, Vec::new())),
            Op::SyncDir => none(self.sync_dir(fs, path)),
        }
    }
}
