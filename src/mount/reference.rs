//! Reference mounts, for benchmarks only (`benches/db.rs --references`):
//! the mount's own FUSE layer over changes that are not the engine's, so a
//! database on the real mount can be compared in one run with
//!
//! - [`Reference::FuseOnly`]: every change made in the local root and
//!   nowhere else (an `fsync` is one `fdatasync`): what the FUSE layer
//!   costs by itself;
//! - [`Reference::Bare`]: every change also sent over loopback TCP to a
//!   thread of this process that makes it in another directory and
//!   answers once it is made (synced, for a sync): the least a synchronous
//!   replication adds, with no engine, checksum, change-log or activity log.
//!
//! Neither is replication that keeps anything safe: no failover, no
//! resync, no recovery of any kind. The wire between the two sides of
//! `Bare` (docs/performance.md) never leaves the process.

use super::changes::Changes;
use super::{MountError, MountOptions, MountSession};
use crate::cluster::client::{ClientError, ErrorClass};
use crate::protocol::path::RelPath;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Which reference to mount.
#[derive(Clone, Debug)]
pub enum Reference {
    /// Changes made in the mount's root only.
    FuseOnly,
    /// Changes made in the root and, by a thread over loopback TCP, in
    /// `mirror_root` (an existing directory) before they return.
    Bare { mirror_root: PathBuf },
}

/// Mount `opts.root` at `opts.mountpoint` with `reference`'s changes
/// (`opts.socket` is not used). Serve it with [`MountSession::run`].
pub fn mount_reference(opts: &MountOptions, reference: Reference) -> Result<MountSession, MountError> {
    opts.check()?;
    let local = Local { root: opts.root.clone(), block_size: u64::from(opts.block_size) };
    let changes: Arc<dyn Changes> = match reference {
        Reference::FuseOnly => Arc::new(local),
        Reference::Bare { mirror_root } => {
            let mirror = Local { root: mirror_root, block_size: local.block_size };
            Arc::new(Bare::start(local, mirror).map_err(|e| MountError::io("starting the bare mirror", e))?)
        }
    };
    super::mount_with(opts, changes)
}

fn failed(class: ErrorClass, message: impl Into<String>) -> ClientError {
    ClientError::Call { class, message: message.into() }
}

fn io_failed(what: &str, path: &str, e: std::io::Error) -> ClientError {
    let class = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorClass::NotFound,
        std::io::ErrorKind::AlreadyExists => ErrorClass::Exists,
        std::io::ErrorKind::DirectoryNotEmpty => ErrorClass::NotEmpty,
        std::io::ErrorKind::StorageFull => ErrorClass::NoSpace,
        _ => ErrorClass::Other,
    };
    failed(class, format!("{what} {path}: {e}"))
}

/// Changes made in one directory with plain file calls.
struct Local {
    root: PathBuf,
    block_size: u64,
}

impl Local {
    fn path(&self, path: &str) -> Result<PathBuf, ClientError> {
        let rel = RelPath::new(path).map_err(|e| failed(ErrorClass::Invalid, format!("{path}: {e}")))?;
        Ok(self.root.join(rel.as_str()))
    }

    fn write(&self, path: &str, offset: u64, data: &[u8], sync: bool) -> Result<(), ClientError> {
        let f =
            std::fs::OpenOptions::new().write(true).open(self.path(path)?).map_err(|e| io_failed("open", path, e))?;
        f.write_all_at(data, offset).map_err(|e| io_failed("write", path, e))?;
        if sync {
            f.sync_data().map_err(|e| io_failed("fdatasync", path, e))?;
        }
        Ok(())
    }

    fn block_offset(&self, block: u64) -> Result<u64, ClientError> {
        block.checked_mul(self.block_size).ok_or_else(|| failed(ErrorClass::Invalid, format!("block {block}")))
    }

    fn fsync(&self, path: &str, data_only: bool) -> Result<(), ClientError> {
        let f = std::fs::File::open(self.path(path)?).map_err(|e| io_failed("open", path, e))?;
        let r = if data_only { f.sync_data() } else { f.sync_all() };
        r.map_err(|e| io_failed("sync", path, e))
    }
}

impl Changes for Local {
    fn create(&self, _fs: u16, path: &str) -> Result<(), ClientError> {
        let p = self.path(path)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .map(drop)
            .map_err(|e| io_failed("create", path, e))
    }
    fn write_block(&self, _fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError> {
        self.write(path, self.block_offset(block)?, data, false)
    }
    fn extend(&self, _fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError> {
        self.write(path, self.block_offset(block)?, data, false)
    }
    fn write_at(&self, _fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.write(path, offset, data, false)
    }
    fn write_at_and_sync(&self, _fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.write(path, offset, data, true)
    }
    fn set_len(&self, _fs: u16, path: &str, len: u64) -> Result<(), ClientError> {
        let f =
            std::fs::OpenOptions::new().write(true).open(self.path(path)?).map_err(|e| io_failed("open", path, e))?;
        f.set_len(len).map_err(|e| io_failed("set length of", path, e))
    }
    fn mkdir(&self, _fs: u16, path: &str) -> Result<(), ClientError> {
        std::fs::create_dir(self.path(path)?).map_err(|e| io_failed("mkdir", path, e))
    }
    fn unlink(&self, _fs: u16, path: &str) -> Result<(), ClientError> {
        std::fs::remove_file(self.path(path)?).map_err(|e| io_failed("unlink", path, e))
    }
    fn rmdir(&self, _fs: u16, path: &str) -> Result<(), ClientError> {
        std::fs::remove_dir(self.path(path)?).map_err(|e| io_failed("rmdir", path, e))
    }
    fn rename(&self, _fs: u16, from: &str, to: &str) -> Result<(), ClientError> {
        std::fs::rename(self.path(from)?, self.path(to)?).map_err(|e| io_failed("rename", from, e))
    }
    fn sync(&self, _fs: u16, path: &str) -> Result<(), ClientError> {
        self.fsync(path, true)
    }
    fn sync_dir(&self, _fs: u16, dir: &str) -> Result<(), ClientError> {
        self.fsync(dir, false)
    }
    /// Only the mount changes a reference's root, as only the mount
    /// changes a primary's in one term: the same caching as the mount's.
    fn term(&self) -> super::inodes::Term {
        super::inodes::Term::In(0)
    }
}

/// A change's kind on the bare wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Op {
    Create = 1,
    Write = 2,
    WriteAndSync = 3,
    SetLen = 4,
    Mkdir = 5,
    Unlink = 6,
    Rmdir = 7,
    Rename = 8,
    Sync = 9,
    SyncDir = 10,
}

impl Op {
    fn from_u32(v: u32) -> Option<Op> {
        use Op::*;
        [Create, Write, WriteAndSync, SetLen, Mkdir, Unlink, Rmdir, Rename, Sync, SyncDir]
            .into_iter()
            .find(|o| *o as u32 == v)
    }
}

/// Request header: op u32, first path's length u32, second path's length
/// u32, data length u32, offset (or length) u64; little-endian.
const HEADER: usize = 24;
/// The longest path and the largest write a request may carry.
const MAX_PATH: usize = 4096;
const MAX_DATA: usize = 64 << 20;

/// The FUSE side of [`Reference::Bare`]: each change is sent, made here,
/// then waited for on the mirror thread (one status byte: 0, or the
/// failure's [`ErrorClass`]).
struct Bare {
    local: Local,
    conn: Mutex<TcpStream>,
    mirror: Option<std::thread::JoinHandle<()>>,
}

impl Bare {
    fn start(local: Local, mirror: Local) -> std::io::Result<Bare> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let conn = TcpStream::connect(listener.local_addr()?)?;
        let (theirs, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        theirs.set_nodelay(true)?;
        let handle = std::thread::Builder::new().name("filerep-bare-mirror".into()).spawn(move || {
            if let Err(e) = serve_mirror(theirs, &mirror) {
                tracing::warn!(error = %e, "the bare reference mirror stopped");
            }
        })?;
        Ok(Bare { local, conn: Mutex::new(conn), mirror: Some(handle) })
    }

    /// Send `op`, run `here`, then wait for the mirror's answer.
    fn ship(
        &self,
        op: Op,
        (a, b): (&str, &str),
        offset: u64,
        data: &[u8],
        here: impl FnOnce(&Local) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        if a.len() > MAX_PATH || b.len() > MAX_PATH || data.len() > MAX_DATA {
            return Err(failed(ErrorClass::Invalid, "a path or write too large for the bare reference"));
        }
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(&(op as u32).to_le_bytes());
        h[4..8].copy_from_slice(&(a.len() as u32).to_le_bytes());
        h[8..12].copy_from_slice(&(b.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[16..24].copy_from_slice(&offset.to_le_bytes());
        let lost = |e: std::io::Error| failed(ErrorClass::Other, format!("the bare reference mirror: {e}"));
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut request = Vec::with_capacity(HEADER + a.len() + b.len());
        request.extend_from_slice(&h);
        request.extend_from_slice(a.as_bytes());
        request.extend_from_slice(b.as_bytes());
        conn.write_all(&request).and_then(|_| conn.write_all(data)).map_err(lost)?;
        let local = here(&self.local);
        let mut status = [0u8; 1];
        conn.read_exact(&mut status).map_err(lost)?;
        local?;
        match status[0] {
            0 => Ok(()),
            c => Err(failed(ErrorClass::Other, format!("the bare reference mirror failed {op:?} of {a} (class {c})"))),
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = conn.shutdown(std::net::Shutdown::Both);
        if let Some(h) = self.mirror.take() {
            let _ = h.join();
        }
    }
}

/// The mirror thread of [`Reference::Bare`]: make each change in
/// `mirror`'s root and answer it, until the connection closes.
fn serve_mirror(mut conn: TcpStream, mirror: &Local) -> std::io::Result<()> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    loop {
        let mut h = [0u8; HEADER];
        match conn.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (a_len, b_len, data_len) = (word(4) as usize, word(8) as usize, word(12) as usize);
        let offset = u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
        let op = Op::from_u32(word(0)).ok_or_else(|| bad(format!("unknown op {}", word(0))))?;
        if a_len > MAX_PATH || b_len > MAX_PATH || data_len > MAX_DATA {
            return Err(bad(format!("lengths {a_len}, {b_len}, {data_len} over the bounds")));
        }
        let mut body = vec![0u8; a_len + b_len + data_len];
        conn.read_exact(&mut body)?;
        let text = |r: std::ops::Range<usize>| std::str::from_utf8(&body[r]).map_err(|e| bad(e.to_string()));
        let (a, b) = (text(0..a_len)?, text(a_len..a_len + b_len)?);
        let data = &body[a_len + b_len..];
        let r = match op {
            Op::Create => mirror.create(0, a),
            Op::Write => mirror.write_at(0, a, offset, data),
            Op::WriteAndSync => mirror.write_at_and_sync(0, a, offset, data),
            Op::SetLen => mirror.set_len(0, a, offset),
            Op::Mkdir => mirror.mkdir(0, a),
            Op::Unlink => mirror.unlink(0, a),
            Op::Rmdir => mirror.rmdir(0, a),
            Op::Rename => mirror.rename(0, a, b),
            Op::Sync => mirror.sync(0, a),
            Op::SyncDir => mirror.sync_dir(0, a),
        };
        let status = match &r {
            Ok(()) => 0,
            Err(e) => {
                tracing::debug!(error = %e, "the bare reference mirror could not make a change");
                e.class().map_or(ErrorClass::Other as u8, |c| c as u8)
            }
        };
        conn.write_all(&[status])?;
    }
}

impl Changes for Bare {
    fn create(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.ship(Op::Create, (path, ""), 0, &[], |l| l.create(fs, path))
    }
    fn write_block(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError> {
        let offset = self.local.block_offset(block)?;
        self.ship(Op::Write, (path, ""), offset, data, |l| l.write_at(fs, path, offset, data))
    }
    fn extend(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError> {
        self.write_block(fs, path, block, data)
    }
    fn write_at(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.ship(Op::Write, (path, ""), offset, data, |l| l.write_at(fs, path, offset, data))
    }
    fn write_at_and_sync(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.ship(Op::WriteAndSync, (path, ""), offset, data, |l| l.write_at_and_sync(fs, path, offset, data))
    }
    fn set_len(&self, fs: u16, path: &str, len: u64) -> Result<(), ClientError> {
        self.ship(Op::SetLen, (path, ""), len, &[], |l| l.set_len(fs, path, len))
    }
    fn mkdir(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.ship(Op::Mkdir, (path, ""), 0, &[], |l| l.mkdir(fs, path))
    }
    fn unlink(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.ship(Op::Unlink, (path, ""), 0, &[], |l| l.unlink(fs, path))
    }
    fn rmdir(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.ship(Op::Rmdir, (path, ""), 0, &[], |l| l.rmdir(fs, path))
    }
    fn rename(&self, fs: u16, from: &str, to: &str) -> Result<(), ClientError> {
        self.ship(Op::Rename, (from, to), 0, &[], |l| l.rename(fs, from, to))
    }
    fn sync(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.ship(Op::Sync, (path, ""), 0, &[], |l| l.sync(fs, path))
    }
    fn sync_dir(&self, fs: u16, dir: &str) -> Result<(), ClientError> {
        self.ship(Op::SyncDir, (dir, ""), 0, &[], |l| l.sync_dir(fs, dir))
    }
    fn term(&self) -> super::inodes::Term {
        super::inodes::Term::In(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether two directories hold the same names and file contents.
    fn same_tree(a: &std::path::Path, b: &std::path::Path) -> bool {
        let list = |d: &std::path::Path| {
            let mut v: Vec<_> =
                std::fs::read_dir(d).map(|r| r.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
            v.sort();
            v
        };
        let (la, lb) = (list(a), list(b));
        la == lb
            && la.iter().all(|n| {
                let (pa, pb) = (a.join(n), b.join(n));
                match (pa.is_dir(), pb.is_dir()) {
                    (true, true) => same_tree(&pa, &pb),
                    (false, false) => std::fs::read(&pa).ok() == std::fs::read(&pb).ok(),
                    _ => false,
                }
            })
    }

    fn bare() -> (tempfile::TempDir, tempfile::TempDir, Bare) {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let local = Local { root: a.path().to_path_buf(), block_size: 8192 };
        let mirror = Local { root: b.path().to_path_buf(), block_size: 8192 };
        let bare = Bare::start(local, mirror).unwrap();
        (a, b, bare)
    }

    #[test]
    fn the_bare_reference_makes_every_change_on_both_sides() {
        let (a, b, c) = bare();
        c.mkdir(0, "d").unwrap();
        c.create(0, "d/f").unwrap();
        c.write_block(0, "d/f", 1, &[7u8; 8192]).unwrap();
        c.write_at_and_sync(0, "d/f", 3, b"abc").unwrap();
        c.create(0, "d/g").unwrap();
        c.write_at(0, "d/g", 0, b"journal").unwrap();
        c.set_len(0, "d/g", 4).unwrap();
        c.rename(0, "d/g", "h").unwrap();
        c.sync(0, "h").unwrap();
        c.sync_dir(0, "d").unwrap();
        c.create(0, "gone").unwrap();
        c.unlink(0, "gone").unwrap();
        c.mkdir(0, "e").unwrap();
        c.rmdir(0, "e").unwrap();
        let f = std::fs::read(b.path().join("d/f")).unwrap();
        assert_eq!(f.len(), 16384);
        assert_eq!(&f[3..6], b"abc");
        assert_eq!(std::fs::read(b.path().join("h")).unwrap(), b"jour");
        assert!(same_tree(a.path(), b.path()), "both sides hold the same tree");
    }

    #[test]
    fn refusals_carry_their_class_and_bad_paths_change_nothing() {
        let (a, b, c) = bare();
        let class = |r: Result<(), ClientError>| r.unwrap_err().class();
        assert_eq!(class(c.unlink(0, "missing")), Some(ErrorClass::NotFound));
        c.create(0, "x").unwrap();
        assert_eq!(class(c.create(0, "x")), Some(ErrorClass::Exists));
        c.mkdir(0, "d").unwrap();
        c.create(0, "d/y").unwrap();
        assert_eq!(class(c.rmdir(0, "d")), Some(ErrorClass::NotEmpty));
        assert_eq!(class(c.create(0, "../escape")), Some(ErrorClass::Invalid));
        assert!(!a.path().parent().unwrap().join("escape").exists());
        assert_eq!(class(c.write_block(0, "x", u64::MAX, b"z")), Some(ErrorClass::Invalid));
        assert!(same_tree(a.path(), b.path()));
        // A change the mirror cannot make (its copy is gone) fails the call.
        std::fs::remove_file(b.path().join("x")).unwrap();
        let e = c.write_at(0, "x", 0, b"q").unwrap_err();
        assert_eq!(e.class(), Some(ErrorClass::Other), "{e}");
        assert!(e.to_string().contains("bare reference mirror failed"), "{e}");
    }

    #[test]
    fn the_mirror_thread_refuses_a_request_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (theirs, _) = l.accept().unwrap();
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(&99u32.to_le_bytes());
        c.write_all(&h).unwrap();
        let e = serve_mirror(theirs, &Local { root: dir.path().to_path_buf(), block_size: 8192 }).unwrap_err();
        assert!(e.to_string().contains("unknown op 99"), "{e}");
    }
}
