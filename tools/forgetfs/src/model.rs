//! The file system that forgets, without FUSE: a namespace of inodes, each
//! with a *live* state (what programs see) and a *durable* state (what a
//! power cut leaves), and the rules that move one to the other.
//!
//! - A file's durable content lives in a file of the store directory (one
//!   per inode); what was written since its last `fsync`/`fdatasync` is
//!   kept in memory as dirty pages over it, with its live length.
//! - A directory has a live map (name → inode) and a durable map; `fsync`
//!   of the directory copies the live map to the durable one. A name is
//!   durable only in its parent's durable map, so a new file, directory or
//!   rename survives a cut only once its directory (both directories, for
//!   a rename across two) was synced.
//! - [`Model::cut`] is the power cut: the namespace becomes the durable
//!   maps walked from the root, every dirty page is thrown away, and,
//!   optionally, the last unsynced write of each file is torn at a sector
//!   boundary (a seeded prefix of its 512-byte sectors survives).
//!
//! The rules, one by one, are in `docs/forgetfs.md`; the unit tests at the
//! bottom check each.

use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::SystemTime;

mod durability;

pub type Ino = u64;
/// The root directory's inode number (FUSE's).
pub const ROOT: Ino = 1;
/// Dirty data is kept in pages of this size.
pub const PAGE: u64 = 4096;
/// A torn write keeps a prefix of whole sectors of this size (file offsets).
pub const SECTOR: u64 = 512;
/// Longest name in a directory.
pub const MAX_NAME: usize = 255;
/// Largest file (a write or truncate past it fails with EFBIG): the largest
/// a pair holds (4 TiB), which a segment checks its filespaces can hold.
pub const MAX_FILE: u64 = 1 << 42;

/// An errno (`libc::E*`): what a refused call returns.
pub type Errno = i32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// A directory entry: name, inode, kind.
pub type Entry = (OsString, Ino, Kind);

/// What `stat` shows of an inode.
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    /// Live length (a directory: its live entries × 32, for tools that look).
    pub size: u64,
    /// Permission bits only (no file type).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// Who creates an inode, and with which permission bits.
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
}

struct Meta {
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
}

#[derive(Default)]
struct FileData {
    /// Length of the durable content (= the store file's length).
    durable_len: u64,
    live_len: u64,
    /// The smallest length the file had since its last sync: store bytes at
    /// or past it are not live any more (a truncate cut them).
    floor: u64,
    /// Live content of every page changed since the last sync (bytes past
    /// the live length are zero).
    pages: BTreeMap<u64, Box<[u8]>>,
    /// Pages a failed fsync let go, as Linux marks the pages of a failed
    /// writeback clean: still read (the page cache keeps them), never
    /// written by a later fsync, gone at a cut. A write makes one dirty
    /// again (it moves to `pages`).
    lost: BTreeMap<u64, Box<[u8]>>,
    /// The last write since the last sync (offset, length), if nothing but
    /// writes followed it: a torn cut keeps a prefix of its sectors.
    last_write: Option<(u64, u64)>,
    store: Option<File>,
}

impl FileData {
    fn dirty(&self) -> bool {
        !self.pages.is_empty() || self.live_len != self.durable_len || self.floor != self.durable_len
    }

    /// Whether a cut now would change what reads show: dirty, or holding
    /// pages a failed fsync let go.
    fn unsynced(&self) -> bool {
        self.dirty() || !self.lost.is_empty()
    }

    /// Pages held in memory, dirty or let go.
    fn held_pages(&self) -> u64 {
        (self.pages.len() + self.lost.len()) as u64
    }
}

struct DirData {
    live: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
    /// The live parent (for `..` and the rename-into-itself check).
    parent: Ino,
}

enum Body {
    File(FileData),
    Dir(DirData),
}

struct Node {
    body: Body,
    meta: Meta,
    /// Live map entries naming this inode.
    live_links: u32,
    /// Durable map entries (of existing directories) naming this inode.
    durable_links: u32,
    /// Open handles.
    open: u32,
    /// References the kernel holds (entries handed out minus forgets).
    lookups: u64,
}

/// An open file or directory. Handles from before a cut are dead.
#[derive(Clone, Debug)]
pub struct Handle {
    pub ino: Ino,
    epoch: u64,
    /// Opened with O_APPEND: every write goes to the live end.
    pub append: bool,
    /// Opened with O_SYNC or O_DSYNC: every write is durable when it returns.
    pub sync: bool,
    /// A directory's entries when it was opened (readdir offsets stay valid).
    pub entries: Option<Vec<Entry>>,
}

/// What a power cut threw away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose live content or length differed from the durable one.
    pub files: u64,
    /// Bytes of dirty pages thrown away.
    pub bytes: u64,
    /// Directory entries whose live state was not durable (created, removed,
    /// replaced or renamed since their directory's last sync).
    pub entries: u64,
    /// Last writes torn (a prefix of their sectors kept, possibly all or none).
    pub torn: u64,
    /// Inodes gone: no durable name leads to them.
    pub removed: u64,
    /// One line per item, for the log.
    pub lines: Vec<String>,
}

/// What a cut now would throw away (counts only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub files: u64,
    pub bytes: u64,
    pub entries: u64,
}

/// Errors of the store directory itself (not of a call).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store directory {0} is not empty: give forgetfs an empty directory of its own")]
    NotEmpty(PathBuf),
}

pub struct Model {
    store: PathBuf,
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    epoch: u64,
    cuts: u64,
    /// Bytes of dirty pages held, and the most allowed (a write past it: ENOSPC).
    dirty_bytes: u64,
    max_dirty: u64,
    /// Fsyncs of a file with unsynced changes still to fail (armed by the
    /// control socket), and how many failed so far.
    fail_syncs: u64,
    failed_syncs: u64,
}

fn eio(e: std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn check_name(name: &OsStr) -> Result<(), Errno> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(libc::EINVAL);
    }
    if b.len() > MAX_NAME {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

impl Model {
    /// A model with an empty root directory, its file contents kept in
    /// `store` (an existing, empty directory).
    pub fn new(store: PathBuf, max_dirty: u64) -> Result<Model, StoreError> {
        let io = |source| StoreError::Io { path: store.clone(), source };
        if std::fs::read_dir(&store).map_err(io)?.next().is_some() {
            return Err(StoreError::NotEmpty(store));
        }
        let now = SystemTime::now();
        let root = Node {
            body: Body::Dir(DirData { live: BTreeMap::new(), durable: BTreeMap::new(), parent: ROOT }),
            meta: Meta { perm: 0o755, uid: 0, gid: 0, mtime: now, ctime: now },
            live_links: 1,
            durable_links: 1,
            open: 0,
            lookups: 1,
        };
        Ok(Model {
            store,
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            epoch: 0,
            cuts: 0,
            dirty_bytes: 0,
            max_dirty: max_dirty.max(PAGE),
            fail_syncs: 0,
            failed_syncs: 0,
        })
    }

    pub fn set_root_owner(&mut self, uid: u32, gid: u32) {
        if let Some(n) = self.nodes.get_mut(&ROOT) {
            n.meta.uid = uid;
            n.meta.gid = gid;
        }
    }

    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    /// The next fsync of a file with unsynced changes fails with EIO (one
    /// more each time this is called).
    pub fn fail_next_sync(&mut self) {
        self.fail_syncs += 1;
    }

    /// Fsyncs that failed on purpose so far.
    pub fn failed_syncs(&self) -> u64 {
        self.failed_syncs
    }

    fn node(&self, ino: Ino) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&DirData, Errno> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirData, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut FileData, Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    fn kind(&self, ino: Ino) -> Result<Kind, Errno> {
        Ok(match self.node(ino)?.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
        })
    }

    pub fn attr(&self, ino: Ino) -> Result<Attr, Errno> {
        let n = self.node(ino)?;
        let (kind, size, nlink) = match &n.body {
            Body::File(f) => (Kind::File, f.live_len, n.live_links),
            Body::Dir(d) => {
                let subdirs = d.live.values().filter(|c| self.kind(**c) == Ok(Kind::Dir)).count() as u32;
                (Kind::Dir, d.live.len() as u64 * 32, 2 + subdirs)
            }
        };
        Ok(Attr {
            ino,
            kind,
            size,
            perm: n.meta.perm,
            uid: n.meta.uid,
            gid: n.meta.gid,
            nlink,
            mtime: n.meta.mtime,
            ctime: n.meta.ctime,
        })
    }

    fn touch(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            let now = SystemTime::now();
            n.meta.mtime = now;
            n.meta.ctime = now;
        }
    }

    /// The inode `name` names in `parent` now.
    pub fn child(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        check_name(name)?;
        self.dir(parent)?.live.get(name).copied().ok_or(libc::ENOENT)
    }

    /// A lookup by the kernel: the kernel holds one more reference.
    pub fn lookup(&mut self, parent: Ino, name: &OsStr) -> Result<Attr, Errno> {
        let ino = self.child(parent, name)?;
        self.node_mut(ino)?.lookups += 1;
        self.attr(ino)
    }

    /// The kernel drops `n` references.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            self.collect(ino);
        }
    }

    fn new_node(&mut self, body: Body, owner: Owner) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        let now = SystemTime::now();
        let meta = Meta { perm: owner.perm & 0o7777, uid: owner.uid, gid: owner.gid, mtime: now, ctime: now };
        self.nodes.insert(ino, Node { body, meta, live_links: 1, durable_links: 0, open: 0, lookups: 0 });
        ino
    }

    /// Create a regular file `name` in `parent`. An existing file is
    /// returned unless `exclusive` (EEXIST); the bool says whether it is new.
    pub fn create(&mut self, parent: Ino, name: &OsStr, owner: Owner, exclusive: bool) -> Result<(Ino, bool), Errno> {
        check_name(name)?;
        if let Some(&ino) = self.dir(parent)?.live.get(name) {
            if exclusive {
                return Err(libc::EEXIST);
            }
            return match self.kind(ino)? {
                Kind::File => Ok((ino, false)),
                Kind::Dir => Err(libc::EISDIR),
            };
        }
        let ino = self.new_node(Body::File(FileData::default()), owner);
        self.dir_mut(parent)?.live.insert(name.to_os_string(), ino);
        self.touch(parent);
        Ok((ino, true))
    }

    pub fn mkdir(&mut self, parent: Ino, name: &OsStr, owner: Owner) -> Result<Ino, Errno> {
        check_name(name)?;
        if self.dir(parent)?.live.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let body = Body::Dir(DirData { live: BTreeMap::new(), durable: BTreeMap::new(), parent });
        let ino = self.new_node(body, owner);
        self.dir_mut(parent)?.live.insert(name.to_os_string(), ino);
        self.touch(parent);
        Ok(ino)
    }

    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        if self.kind(ino)? == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.dir_mut(parent)?.live.remove(name);
        self.unlink_node(ino);
        self.touch(parent);
        Ok(())
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        if !self.dir(ino)?.live.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.dir_mut(parent)?.live.remove(name);
        self.unlink_node(ino);
        self.touch(parent);
        Ok(())
    }

    fn unlink_node(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.live_links = n.live_links.saturating_sub(1);
            n.meta.ctime = SystemTime::now();
        }
        self.collect(ino);
    }

    /// Rename `name` in `parent` to `new_name` in `new_parent`, replacing a
    /// file (or an empty directory) there unless `noreplace` (EEXIST).
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        check_name(new_name)?;
        let src = self.child(parent, name)?;
        self.dir(new_parent)?;
        if parent == new_parent && name == new_name {
            return Ok(());
        }
        let dst = self.dir(new_parent)?.live.get(new_name).copied();
        if dst == Some(src) {
            // Two names of one inode: POSIX says rename does nothing.
            return Ok(());
        }
        if noreplace && dst.is_some() {
            return Err(libc::EEXIST);
        }
        let src_kind = self.kind(src)?;
        if let Some(d) = dst {
            match (src_kind, self.kind(d)?) {
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::Dir) if !self.dir(d)?.live.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        if src_kind == Kind::Dir {
            // Not into itself or anything under it.
            let mut at = new_parent;
            loop {
                if at == src {
                    return Err(libc::EINVAL);
                }
                if at == ROOT {
                    break;
                }
                at = self.dir(at)?.parent;
            }
        }
        self.dir_mut(parent)?.live.remove(name);
        self.dir_mut(new_parent)?.live.insert(new_name.to_os_string(), src);
        if let Body::Dir(d) = &mut self.node_mut(src)?.body {
            d.parent = new_parent;
        }
        if let Some(d) = dst {
            self.unlink_node(d);
        }
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }

    /// The live entries of a directory and its parent.
    pub fn entries(&self, ino: Ino) -> Result<(Ino, Vec<Entry>), Errno> {
        let d = self.dir(ino)?;
        let list = d.live.iter().map(|(n, c)| (n.clone(), *c, self.kind(*c).unwrap_or(Kind::File))).collect();
        Ok((d.parent, list))
    }

    fn store_file(&mut self, ino: Ino) -> Result<&File, Errno> {
        let path = self.store.join(ino.to_string());
        let f = self.file_mut(ino)?;
        if f.store.is_none() {
            let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path);
            f.store = Some(file.map_err(eio)?);
        }
        f.store.as_ref().ok_or(libc::EIO)
    }

    /// The live bytes of `ino` in `off..end` (`end` at most its live length).
    fn read_live(&self, f: &FileData, off: u64, end: u64) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; end.saturating_sub(off) as usize];
        if buf.is_empty() {
            return Ok(buf);
        }
        // Store bytes below the floor; zero above it (a truncate cut them).
        let base_end = end.min(f.floor);
        if base_end > off {
            let store = f.store.as_ref().ok_or(libc::EIO)?;
            store.read_exact_at(&mut buf[..(base_end - off) as usize], off).map_err(eio)?;
        }
        // Pages let go first: a page is in one of the two maps, never both.
        for (&p, page) in
            f.lost.range(off / PAGE..=(end - 1) / PAGE).chain(f.pages.range(off / PAGE..=(end - 1) / PAGE))
        {
            let (ps, pe) = (p * PAGE, p * PAGE + PAGE);
            let (s, e) = (ps.max(off), pe.min(end));
            buf[(s - off) as usize..(e - off) as usize].copy_from_slice(&page[(s - ps) as usize..(e - ps) as usize]);
        }
        Ok(buf)
    }

    /// Make sure the store file is open when its content is needed.
    fn open_store_if_needed(&mut self, ino: Ino) -> Result<(), Errno> {
        let needs = match &self.node(ino)?.body {
            Body::File(f) => f.store.is_none() && f.floor > 0,
            Body::Dir(_) => return Err(libc::EISDIR),
        };
        if needs {
            self.store_file(ino)?;
        }
        Ok(())
    }

    pub fn read(&mut self, ino: Ino, off: u64, size: u32) -> Result<Vec<u8>, Errno> {
        self.open_store_if_needed(ino)?;
        let Body::File(f) = &self.node(ino)?.body else { return Err(libc::EISDIR) };
        let end = off.saturating_add(u64::from(size)).min(f.live_len);
        if off >= end {
            return Ok(Vec::new());
        }
        self.read_live(f, off, end)
    }

    /// Write `data` at `off` (in memory until the file is synced).
    pub fn write(&mut self, ino: Ino, off: u64, data: &[u8]) -> Result<usize, Errno> {
        if data.is_empty() {
            return Ok(0);
        }
        let end = off.checked_add(data.len() as u64).filter(|e| *e <= MAX_FILE).ok_or(libc::EFBIG)?;
        self.open_store_if_needed(ino)?;
        let (first, last) = (off / PAGE, (end - 1) / PAGE);
        let new_pages = {
            let Body::File(f) = &self.node(ino)?.body else { return Err(libc::EISDIR) };
            // A page let go is held already: dirty again, it costs nothing more.
            (first..=last).filter(|p| !f.pages.contains_key(p) && !f.lost.contains_key(p)).count() as u64
        };
        if self.dirty_bytes + new_pages * PAGE > self.max_dirty {
            tracing::error!(ino, held = self.dirty_bytes, "too much unsynced data held in memory: ENOSPC");
            return Err(libc::ENOSPC);
        }
        // Pages not yet dirty start from their live content.
        let mut fresh = Vec::new();
        {
            let Body::File(f) = &self.node(ino)?.body else { return Err(libc::EISDIR) };
            for p in first..=last {
                if !f.pages.contains_key(&p) {
                    let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
                    let live_end = (p * PAGE + PAGE).min(f.live_len);
                    if live_end > p * PAGE {
                        let bytes = self.read_live(f, p * PAGE, live_end)?;
                        page[..bytes.len()].copy_from_slice(&bytes);
                    }
                    fresh.push((p, page));
                }
            }
        }
        self.dirty_bytes += new_pages * PAGE;
        let f = self.file_mut(ino)?;
        for (p, _) in &fresh {
            f.lost.remove(p);
        }
        f.pages.extend(fresh);
        for p in first..=last {
            let (ps, pe) = (p * PAGE, p * PAGE + PAGE);
            let (s, e) = (ps.max(off), pe.min(end));
            if let Some(page) = f.pages.get_mut(&p) {
                page[(s - ps) as usize..(e - ps) as usize]
                    .copy_from_slice(&data[(s - off) as usize..(e - off) as usize]);
            }
        }
        f.live_len = f.live_len.max(end);
        f.last_write = Some((off, data.len() as u64));
        self.touch(ino);
        Ok(data.len())
    }

    /// Append: write at the live end.
    pub fn live_len(&self, ino: Ino) -> Result<u64, Errno> {
        match &self.node(ino)?.body {
            Body::File(f) => Ok(f.live_len),
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    pub fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), Errno> {
        if len > MAX_FILE {
            return Err(libc::EFBIG);
        }
        let f = self.file_mut(ino)?;
        let mut freed = 0;
        if len < f.live_len {
            let keep = len.div_ceil(PAGE);
            for map in [&mut f.pages, &mut f.lost] {
                let gone: Vec<u64> = map.range(keep..).map(|(p, _)| *p).collect();
                for p in gone {
                    map.remove(&p);
                    freed += PAGE;
                }
                if len % PAGE != 0 {
                    if let Some(page) = map.get_mut(&(len / PAGE)) {
                        page[(len % PAGE) as usize..].fill(0);
                    }
                }
            }
            f.floor = f.floor.min(len);
        }
        f.live_len = len;
        f.last_write = None;
        self.dirty_bytes = self.dirty_bytes.saturating_sub(freed);
        self.touch(ino);
        Ok(())
    }

    /// Set an inode's permission bits and owner.
    pub fn chmod_chown(
        &mut self,
        ino: Ino,
        perm: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        let n = self.node_mut(ino)?;
        if let Some(p) = perm {
            n.meta.perm = p & 0o7777;
        }
        if let Some(u) = uid {
            n.meta.uid = u;
        }
        if let Some(g) = gid {
            n.meta.gid = g;
        }
        n.meta.ctime = SystemTime::now();
        Ok(())
    }

    /// Open `ino`; the handle's number.
    pub fn open(&mut self, ino: Ino, append: bool, sync: bool) -> Result<u64, Errno> {
        let entries = match self.kind(ino)? {
            Kind::Dir => Some(self.entries(ino)?.1),
            Kind::File => None,
        };
        self.node_mut(ino)?.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, epoch: self.epoch, append, sync, entries });
        Ok(fh)
    }

    /// A live handle (EIO for one from before a cut: that power is gone).
    pub fn handle(&self, fh: u64) -> Result<&Handle, Errno> {
        match self.handles.get(&fh) {
            Some(h) if h.epoch == self.epoch => Ok(h),
            _ => Err(libc::EIO),
        }
    }

    pub fn release(&mut self, fh: u64) {
        if let Some(h) = self.handles.remove(&fh) {
            if h.epoch == self.epoch {
                if let Some(n) = self.nodes.get_mut(&h.ino) {
                    n.open = n.open.saturating_sub(1);
                }
                self.collect(h.ino);
            }
        }
    }

    /// Drop `ino` (and what only it kept) once nothing refers to it.
    fn collect(&mut self, ino: Ino) {
        let mut queue = VecDeque::from([ino]);
        while let Some(ino) = queue.pop_front() {
            let gone = ino != ROOT
                && self
                    .nodes
                    .get(&ino)
                    .is_some_and(|n| n.live_links == 0 && n.durable_links == 0 && n.open == 0 && n.lookups == 0);
            if !gone {
                continue;
            }
            let Some(node) = self.nodes.remove(&ino) else { continue };
            match node.body {
                Body::File(f) => {
                    self.dirty_bytes = self.dirty_bytes.saturating_sub(f.held_pages() * PAGE);
                    drop(f.store);
                    let _ = std::fs::remove_file(self.store.join(ino.to_string()));
                }
                Body::Dir(d) => {
                    for child in d.durable.values() {
                        if let Some(n) = self.nodes.get_mut(child) {
                            n.durable_links = n.durable_links.saturating_sub(1);
                        }
                        queue.push_back(*child);
                    }
                }
            }
        }
    }
}
