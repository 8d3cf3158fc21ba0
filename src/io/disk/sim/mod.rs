//! An in-memory disk for the seeded simulator, with a live and a durable image.
//!
//! The namespace is a tree of directory inodes. Each directory keeps a *live*
//! map of its children (what the running process sees) and a *durable* map
//! (what survives a crash); [`Disk::sync_parent_dir`] copies a directory's
//! live map to its durable map, as `fsync` on a directory does. Because the
//! maps hold inodes rather than paths, a renamed directory takes its whole
//! subtree (live and durable) along, as on a real file system.
//!
//! Each file inode holds its live and its durable content; [`DiskFile::sync_data`]
//! copies live to durable. An open [`SimFile`] refers to the inode, so it
//! stays valid across renames and unlinks, like a descriptor.
//!
//! [`SimDisk::crash`] replaces the live image with the durable one (optionally
//! keeping a prefix of the most recent un-synced write: a torn write), and
//! invalidates every handle opened before it. Errors mirror what the std
//! backend reports for the same calls on Linux.

mod handles;

pub use handles::{SimDirHandle, SimFile};

use super::{Disk, DiskError, DiskErrorKind, DiskFile, DiskResult, FsPath, OpenMode};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The largest file the simulator holds (a write past it fails with NoSpace).
const MAX_SIM_FILE_BYTES: u64 = 1 << 30;

/// A fault to inject; each one fires once, on the next matching call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimFault {
    /// The next sync (`sync_data` or `sync_parent_dir`) fails with `Io` and makes nothing durable;
    /// a file's bytes not yet durable then never are (see `SimFileData::lost`).
    FailNextSync,
    /// The next `write_at` fails with `Io` and writes nothing.
    FailNextWrite,
    /// The next `write_at` or growing `set_len` fails with `NoSpace` and changes nothing.
    NoSpace,
}

/// One entry of a [`SimDisk::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimEntry {
    Dir,
    File(Vec<u8>),
}

/// The last write to a file since it was last synced (for torn writes).
struct PendingWrite {
    seq: u64,
    offset: u64,
    data: Vec<u8>,
}

#[derive(Default)]
struct SimFileData {
    live: Vec<u8>,
    durable: Vec<u8>,
    last_write: Option<PendingWrite>,
    /// Bytes a failed sync let go, by offset, with what the durable image
    /// holds there: as Linux marks the pages of a failed writeback clean,
    /// no later sync writes them (the live image keeps them until a
    /// crash). A write over one makes it dirty again.
    lost: BTreeMap<u64, u8>,
}

impl SimFileData {
    /// A sync failed: every byte not yet durable is let go (see `lost`).
    fn lose_unsynced(&mut self) {
        for (i, &b) in self.live.iter().enumerate() {
            let old = self.durable.get(i).copied().unwrap_or(0);
            if b != old || i >= self.durable.len() {
                self.lost.entry(i as u64).or_insert(old);
            }
        }
    }

    /// A sync succeeded: the live image is durable, except what a failed
    /// sync let go.
    fn make_durable(&mut self) {
        if self.durable != self.live {
            self.durable.clone_from(&self.live);
        }
        for (&i, &old) in &self.lost {
            if let Some(b) = self.durable.get_mut(i as usize) {
                *b = old;
            }
        }
    }

    /// `[start, end)` was written (or cut off): dirty again, not lost.
    fn rewritten(&mut self, start: u64, end: u64) {
        if self.lost.is_empty() || start >= end {
            return;
        }
        let mut tail = self.lost.split_off(&start);
        let mut after = tail.split_off(&end);
        self.lost.append(&mut after);
    }
}

type FileRef = Arc<Mutex<SimFileData>>;
type DirId = u64;

#[derive(Clone)]
enum Node {
    Dir(DirId),
    File(FileRef),
}

#[derive(Default)]
struct DirInode {
    live: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
}

/// Directory inodes live in an arena keyed by id; a directory stays in it
/// while any durable map may still name it (until the next crash compacts it).
#[derive(Default)]
struct Namespace {
    roots: Vec<DirId>,
    dirs: BTreeMap<DirId, DirInode>,
    next_id: DirId,
    /// Renames not yet made durable, in the order they were made, with the
    /// entry each moved: a journaling file system commits a rename whole,
    /// and in order, so syncing a directory one took part in makes it
    /// durable, and every rename before it (never a file under two names:
    /// renamed within one directory, then out of it, it once came back
    /// after a crash under its first name and its last).
    renames: Vec<PendingRename>,
}

struct PendingRename {
    from_dir: DirId,
    from_name: String,
    to_dir: DirId,
    to_name: String,
    node: Node,
}

impl Namespace {
    /// `fsync` of directory `id`: every rename up to the last one it took
    /// part in, replayed in order on the durable entries, then its own
    /// entries as they are now.
    fn sync_dir(&mut self, id: DirId) {
        let last = self.renames.iter().rposition(|r| r.from_dir == id || r.to_dir == id);
        let done: Vec<PendingRename> = match last {
            Some(i) => self.renames.drain(..=i).collect(),
            None => Vec::new(),
        };
        for r in done {
            if let Some(dir) = self.dirs.get_mut(&r.from_dir) {
                dir.durable.remove(&r.from_name);
            }
            if let Some(dir) = self.dirs.get_mut(&r.to_dir) {
                dir.durable.insert(r.to_name, r.node);
            }
        }
        if let Some(dir) = self.dirs.get_mut(&id) {
            dir.durable = dir.live.clone();
        }
    }
}

#[derive(Default)]
struct Faults {
    fail_syncs: u32,
    fail_writes: u32,
    no_space: u32,
}

struct Shared {
    ns: Mutex<Namespace>,
    faults: Mutex<Faults>,
    /// Bumped by every crash; handles from an older epoch are dead.
    epoch: AtomicU64,
    /// Orders writes across files, to find the most recent one at a crash.
    write_seq: AtomicU64,
    /// Writeback hints received ([`DiskFile::start_writeback`]): they change
    /// nothing here, but tests check who sends them.
    writebacks_started: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Consume one pending fault counter; whether it fired.
fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

/// Why a lookup failed: the kind plus the errno the kernel would report.
type LookupErr = (DiskErrorKind, &'static str);

impl Namespace {
    fn alloc_dir(&mut self) -> DirId {
        let id = self.next_id;
        self.next_id += 1;
        self.dirs.insert(id, DirInode::default());
        id
    }

    fn dir(&self, id: DirId) -> Result<&DirInode, LookupErr> {
        self.dirs.get(&id).ok_or((DiskErrorKind::Io, "simulator: dangling directory inode"))
    }

    fn dir_mut(&mut self, id: DirId) -> Result<&mut DirInode, LookupErr> {
        self.dirs.get_mut(&id).ok_or((DiskErrorKind::Io, "simulator: dangling directory inode"))
    }

    /// The live directory that holds `path`'s final component.
    fn parent_dir(&self, path: &FsPath) -> Result<DirId, LookupErr> {
        let mut cur = *self.roots.get(usize::from(path.filespace)).ok_or((DiskErrorKind::Io, "no such filespace"))?;
        if let Some(parent) = path.path.parent() {
            for comp in parent.as_str().split('/') {
                cur = match self.dir(cur)?.live.get(comp) {
                    Some(Node::Dir(id)) => *id,
                    Some(Node::File(_)) => return Err((DiskErrorKind::Io, "ENOTDIR")),
                    None => return Err((DiskErrorKind::NotFound, "ENOENT")),
                };
            }
        }
        Ok(cur)
    }

    /// Every file inode reachable through live or durable maps.
    fn all_files(&self) -> Vec<FileRef> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for dir in self.dirs.values() {
            for node in dir.live.values().chain(dir.durable.values()) {
                if let Node::File(f) = node {
                    if seen.insert(Arc::as_ptr(f) as usize) {
                        out.push(Arc::clone(f));
                    }
                }
            }
        }
        out
    }

    /// Walk the live (or durable) tree into `out`, file contents from the
    /// same image. `visited` guards against a cycle that partial directory
    /// syncs after renames can create in the durable maps.
    fn walk(&self, durable: bool, out: &mut BTreeMap<(u16, String), SimEntry>) {
        let mut visited: HashSet<DirId> = self.roots.iter().copied().collect();
        for (fs, &root) in self.roots.iter().enumerate() {
            let fs = u16::try_from(fs).unwrap_or(u16::MAX);
            let mut stack = vec![(root, String::new())];
            while let Some((id, prefix)) = stack.pop() {
                let Some(dir) = self.dirs.get(&id) else {
                    continue;
                };
                let children = if durable { &dir.durable } else { &dir.live };
                for (name, node) in children {
                    let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
                    match node {
                        Node::Dir(child) => {
                            if visited.insert(*child) {
                                out.insert((fs, path.clone()), SimEntry::Dir);
                                stack.push((*child, path));
                            }
                        }
                        Node::File(f) => {
                            let data = lock(f);
                            let bytes = if durable { data.durable.clone() } else { data.live.clone() };
                            out.insert((fs, path), SimEntry::File(bytes));
                        }
                    }
                }
            }
        }
    }
}

/// The simulated disk. Cheap to share: clones of the `Arc` it is usually
/// held in see the same state.
pub struct SimDisk {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDisk")
            .field("filespaces", &lock(&self.shared.ns).roots.len())
            .field("epoch", &self.shared.epoch.load(Ordering::SeqCst))
            .finish()
    }
}

fn err(op: &'static str, path: impl ToString, (kind, detail): LookupErr) -> DiskError {
    let e = DiskError::new(op, path, kind, detail);
    // What a kernel would say, so the simulated mirror sorts it as the real one does.
    match detail {
        "ENOTDIR" => e.with_errno(libc::ENOTDIR),
        "EISDIR" => e.with_errno(libc::EISDIR),
        "rename across filespaces" => e.with_errno(libc::EXDEV),
        _ => e,
    }
}

impl SimDisk {
    /// A disk with `filespaces` roots, each an empty (durable) directory.
    pub fn new(filespaces: u16) -> SimDisk {
        let mut ns = Namespace::default();
        for _ in 0..filespaces {
            let id = ns.alloc_dir();
            ns.roots.push(id);
        }
        SimDisk {
            shared: Arc::new(Shared {
                ns: Mutex::new(ns),
                faults: Mutex::new(Faults::default()),
                epoch: AtomicU64::new(0),
                write_seq: AtomicU64::new(0),
                writebacks_started: AtomicU64::new(0),
            }),
        }
    }

    /// Writeback hints its files received so far.
    pub fn writebacks_started(&self) -> u64 {
        self.shared.writebacks_started.load(Ordering::Relaxed)
    }

    /// Arm a fault; it fires once, on the next matching call (several
    /// injections of one kind queue up).
    pub fn inject(&self, fault: SimFault) {
        let mut f = lock(&self.shared.faults);
        match fault {
            SimFault::FailNextSync => f.fail_syncs += 1,
            SimFault::FailNextWrite => f.fail_writes += 1,
            SimFault::NoSpace => f.no_space += 1,
        }
    }

    /// Disarm the sync failures still pending.
    pub fn disarm_sync_faults(&self) {
        lock(&self.shared.faults).fail_syncs = 0;
    }

    /// Disarm every pending fault.
    pub fn clear_faults(&self) {
        *lock(&self.shared.faults) = Faults::default();
    }

    /// Lose power: the live image becomes the durable image (namespace and
    /// contents), and every handle opened before now fails from now on.
    /// With `Some(n)`, the most recent un-synced write (of any file) is torn:
    /// its first `n` bytes survive on top of that file's durable content.
    pub fn crash(&self, rng_torn_bytes: Option<usize>) {
        let mut ns = lock(&self.shared.ns);

        // The torn write: (file inode, offset, surviving bytes).
        let torn = rng_torn_bytes.and_then(|n| {
            let mut best: Option<(u64, usize, u64, Vec<u8>)> = None;
            for f in ns.all_files() {
                let data = lock(&f);
                if let Some(w) = &data.last_write {
                    if best.as_ref().is_none_or(|b| w.seq > b.0) {
                        let keep = w.data[..n.min(w.data.len())].to_vec();
                        best = Some((w.seq, Arc::as_ptr(&f) as usize, w.offset, keep));
                    }
                }
            }
            best.map(|(_, ptr, offset, keep)| (ptr, offset, keep))
        });

        let mut new = Namespace::default();
        let mut files: HashMap<usize, FileRef> = HashMap::new();
        let mut visited: HashSet<DirId> = ns.roots.iter().copied().collect();
        let old_roots = ns.roots.clone();
        for old_root in old_roots {
            let root = new.alloc_dir();
            new.roots.push(root);
            // (old directory, its new id) still to copy.
            let mut stack = vec![(old_root, root)];
            while let Some((old_id, new_id)) = stack.pop() {
                let Some(old_dir) = ns.dirs.get(&old_id) else {
                    continue;
                };
                let mut children = BTreeMap::new();
                for (name, node) in &old_dir.durable {
                    match node {
                        Node::Dir(child) => {
                            if visited.insert(*child) {
                                let id = new.alloc_dir();
                                children.insert(name.clone(), Node::Dir(id));
                                stack.push((*child, id));
                            }
                        }
                        Node::File(f) => {
                            let ptr = Arc::as_ptr(f) as usize;
                            let file = files.entry(ptr).or_insert_with(|| {
                                let mut durable = lock(f).durable.clone();
                                if let Some((_, offset, keep)) = torn.as_ref().filter(|t| t.0 == ptr) {
                                    apply_write(&mut durable, *offset, keep);
                                }
                                Arc::new(Mutex::new(SimFileData {
                                    live: durable.clone(),
                                    durable,
                                    ..SimFileData::default()
                                }))
                            });
                            children.insert(name.clone(), Node::File(Arc::clone(file)));
                        }
                    }
                }
                if let Some(dir) = new.dirs.get_mut(&new_id) {
                    dir.live = children.clone();
                    dir.durable = children;
                }
            }
        }
        *ns = new;
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The live image: every directory and file (with its live content) by
    /// (filespace, path). Filespace roots are not listed.
    pub fn snapshot(&self) -> BTreeMap<(u16, String), SimEntry> {
        let mut out = BTreeMap::new();
        lock(&self.shared.ns).walk(false, &mut out);
        out
    }

    /// The durable image: what [`SimDisk::crash`] (without a torn write) would leave.
    pub fn durable_snapshot(&self) -> BTreeMap<(u16, String), SimEntry> {
        let mut out = BTreeMap::new();
        lock(&self.shared.ns).walk(true, &mut out);
        out
    }

    fn take_sync_fault(&self) -> bool {
        take(&mut lock(&self.shared.faults).fail_syncs)
    }
}

/// Write `buf` at `offset` into `content`, zero-filling any gap.
fn apply_write(content: &mut Vec<u8>, offset: u64, buf: &[u8]) {
    if buf.is_empty() {
        return;
    }
    // Callers keep offset + len within MAX_SIM_FILE_BYTES, so this fits usize.
    let start = offset as usize;
    let end = start + buf.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[start..end].copy_from_slice(buf);
}

impl Disk for SimDisk {
    fn open(&self, path: &FsPath, mode: OpenMode) -> DiskResult<Arc<dyn DiskFile>> {
        const OP: &str = "open";
        let mut ns = lock(&self.shared.ns);
        let dir_id = ns.parent_dir(path).map_err(|e| err(OP, path, e))?;
        let name = path.path.file_name();
        let dir = ns.dir_mut(dir_id).map_err(|e| err(OP, path, e))?;
        let data = match (dir.live.get(name), mode) {
            (Some(_), OpenMode::CreateNew) => return Err(err(OP, path, (DiskErrorKind::AlreadyExists, "EEXIST"))),
            (Some(Node::Dir(_)), _) => return Err(err(OP, path, (DiskErrorKind::Io, "EISDIR"))),
            (Some(Node::File(f)), OpenMode::Existing | OpenMode::Create) => Arc::clone(f),
            (Some(Node::File(f)), OpenMode::CreateTruncate) => {
                let mut data = lock(f);
                data.live.clear();
                data.rewritten(0, u64::MAX);
                drop(data);
                Arc::clone(f)
            }
            (None, OpenMode::Existing) => return Err(err(OP, path, (DiskErrorKind::NotFound, "ENOENT"))),
            (None, OpenMode::CreateNew | OpenMode::CreateTruncate | OpenMode::Create) => {
                let f: FileRef = Arc::default();
                dir.live.insert(name.to_string(), Node::File(Arc::clone(&f)));
                f
            }
        };
        Ok(Arc::new(SimFile {
            shared: Arc::clone(&self.shared),
            data,
            path: path.to_string(),
            epoch: self.shared.epoch.load(Ordering::SeqCst),
        }))
    }

    fn remove_file(&self, path: &FsPath) -> DiskResult<()> {
        const OP: &str = "remove_file";
        let mut ns = lock(&self.shared.ns);
        let dir_id = ns.parent_dir(path).map_err(|e| err(OP, path, e))?;
        let dir = ns.dir_mut(dir_id).map_err(|e| err(OP, path, e))?;
        match dir.live.get(path.path.file_name()) {
            None => Err(err(OP, path, (DiskErrorKind::NotFound, "ENOENT"))),
            Some(Node::Dir(_)) => Err(err(OP, path, (DiskErrorKind::Io, "EISDIR"))),
            Some(Node::File(_)) => {
                dir.live.remove(path.path.file_name());
                Ok(())
            }
        }
    }

    fn rename(&self, from: &FsPath, to: &FsPath) -> DiskResult<()> {
        const OP: &str = "rename";
        let label = format!("{from} -> {to}");
        if from.filespace != to.filespace {
            return Err(err(OP, label, (DiskErrorKind::Io, "rename across filespaces")));
        }
        let mut ns = lock(&self.shared.ns);
        let from_dir = ns.parent_dir(from).map_err(|e| err(OP, &label, e))?;
        let to_dir = ns.parent_dir(to).map_err(|e| err(OP, &label, e))?;
        let (from_name, to_name) = (from.path.file_name(), to.path.file_name());
        let src = match ns.dir(from_dir).map_err(|e| err(OP, &label, e))?.live.get(from_name) {
            Some(node) => node.clone(),
            None => return Err(err(OP, label, (DiskErrorKind::NotFound, "ENOENT"))),
        };
        if from.path == to.path {
            return Ok(());
        }
        if matches!(src, Node::Dir(_)) && to.path.is_within(&from.path) {
            return Err(err(OP, label, (DiskErrorKind::Io, "EINVAL: directory into itself")));
        }
        match (&src, ns.dir(to_dir).map_err(|e| err(OP, &label, e))?.live.get(to_name)) {
            (_, None) | (Node::File(_), Some(Node::File(_))) => {}
            (Node::File(_), Some(Node::Dir(_))) => return Err(err(OP, label, (DiskErrorKind::Io, "EISDIR"))),
            (Node::Dir(_), Some(Node::File(_))) => return Err(err(OP, label, (DiskErrorKind::Io, "ENOTDIR"))),
            (Node::Dir(_), Some(Node::Dir(d))) => {
                if !ns.dir(*d).map_err(|e| err(OP, &label, e))?.live.is_empty() {
                    return Err(err(OP, label, (DiskErrorKind::NotEmpty, "ENOTEMPTY")));
                }
            }
        }
        ns.dir_mut(from_dir).map_err(|e| err(OP, &label, e))?.live.remove(from_name);
        ns.dir_mut(to_dir).map_err(|e| err(OP, &label, e))?.live.insert(to_name.to_string(), src.clone());
        ns.renames.push(PendingRename {
            from_dir,
            from_name: from_name.to_string(),
            to_dir,
            to_name: to_name.to_string(),
            node: src,
        });
        Ok(())
    }

    fn create_dir(&self, path: &FsPath) -> DiskResult<()> {
        const OP: &str = "create_dir";
        let mut ns = lock(&self.shared.ns);
        let dir_id = ns.parent_dir(path).map_err(|e| err(OP, path, e))?;
        let name = path.path.file_name();
        if ns.dir(dir_id).map_err(|e| err(OP, path, e))?.live.contains_key(name) {
            return Err(err(OP, path, (DiskErrorKind::AlreadyExists, "EEXIST")));
        }
        let id = ns.alloc_dir();
        ns.dir_mut(dir_id).map_err(|e| err(OP, path, e))?.live.insert(name.to_string(), Node::Dir(id));
        Ok(())
    }

    fn remove_dir(&self, path: &FsPath) -> DiskResult<()> {
        const OP: &str = "remove_dir";
        let mut ns = lock(&self.shared.ns);
        let dir_id = ns.parent_dir(path).map_err(|e| err(OP, path, e))?;
        let name = path.path.file_name();
        match ns.dir(dir_id).map_err(|e| err(OP, path, e))?.live.get(name) {
            None => return Err(err(OP, path, (DiskErrorKind::NotFound, "ENOENT"))),
            Some(Node::File(_)) => return Err(err(OP, path, (DiskErrorKind::Io, "ENOTDIR"))),
            Some(Node::Dir(d)) => {
                if !ns.dir(*d).map_err(|e| err(OP, path, e))?.live.is_empty() {
                    return Err(err(OP, path, (DiskErrorKind::NotEmpty, "ENOTEMPTY")));
                }
            }
        }
        ns.dir_mut(dir_id).map_err(|e| err(OP, path, e))?.live.remove(name);
        Ok(())
    }

    fn sync_parent_dir(&self, path: &FsPath) -> DiskResult<()> {
        const OP: &str = "sync_parent_dir";
        let mut ns = lock(&self.shared.ns);
        let dir_id = ns.parent_dir(path).map_err(|e| err(OP, path, e))?;
        if self.take_sync_fault() {
            return Err(err(OP, path, (DiskErrorKind::Io, "injected sync failure")));
        }
        ns.dir_mut(dir_id).map_err(|e| err(OP, path, e))?;
        ns.sync_dir(dir_id);
        Ok(())
    }

    fn parent_dir_handle(&self, path: &FsPath) -> DiskResult<Arc<dyn DiskFile>> {
        const OP: &str = "open_parent_dir";
        let ns = lock(&self.shared.ns);
        let dir_id = ns.parent_dir(path).map_err(|e| err(OP, path, e))?;
        Ok(Arc::new(SimDirHandle {
            shared: Arc::clone(&self.shared),
            dir_id,
            path: path.to_string(),
            epoch: self.shared.epoch.load(Ordering::SeqCst),
        }))
    }

    fn exists(&self, path: &FsPath) -> DiskResult<bool> {
        const OP: &str = "exists";
        let ns = lock(&self.shared.ns);
        let dir_id = match ns.parent_dir(path) {
            Ok(id) => id,
            Err((DiskErrorKind::NotFound, _)) | Err((_, "ENOTDIR")) => return Ok(false),
            Err(e) => return Err(err(OP, path, e)),
        };
        Ok(ns.dir(dir_id).map_err(|e| err(OP, path, e))?.live.contains_key(path.path.file_name()))
    }

    fn entry_kind(&self, path: &FsPath) -> DiskResult<Option<super::EntryKind>> {
        const OP: &str = "entry_kind";
        let ns = lock(&self.shared.ns);
        let dir_id = match ns.parent_dir(path) {
            Ok(id) => id,
            Err((DiskErrorKind::NotFound, _)) | Err((_, "ENOTDIR")) => return Ok(None),
            Err(e) => return Err(err(OP, path, e)),
        };
        Ok(ns.dir(dir_id).map_err(|e| err(OP, path, e))?.live.get(path.path.file_name()).map(|n| match n {
            Node::Dir(_) => super::EntryKind::Dir,
            Node::File(_) => super::EntryKind::File,
        }))
    }

    fn list_dir(
        &self,
        filespace: u16,
        dir: Option<&crate::protocol::path::RelPath>,
    ) -> DiskResult<Vec<(String, super::EntryKind)>> {
        const OP: &str = "list_dir";
        let ns = lock(&self.shared.ns);
        let shown = format!("fs{filespace}:{}", dir.map(|d| d.as_str()).unwrap_or(""));
        let fail = |e: LookupErr| DiskError::new(OP, &shown, e.0, e.1);
        let mut cur =
            *ns.roots.get(usize::from(filespace)).ok_or_else(|| fail((DiskErrorKind::Io, "no such filespace")))?;
        if let Some(d) = dir {
            for comp in d.as_str().split('/') {
                cur = match ns.dir(cur).map_err(fail)?.live.get(comp) {
                    Some(Node::Dir(id)) => *id,
                    Some(Node::File(_)) => return Err(fail((DiskErrorKind::Io, "ENOTDIR"))),
                    None => return Err(fail((DiskErrorKind::NotFound, "ENOENT"))),
                };
            }
        }
        Ok(ns
            .dir(cur)
            .map_err(fail)?
            .live
            .iter()
            .map(|(name, n)| {
                let kind = match n {
                    Node::Dir(_) => super::EntryKind::Dir,
                    Node::File(_) => super::EntryKind::File,
                };
                (name.clone(), kind)
            })
            .collect())
    }

    fn name(&self) -> &'static str {
        "sim"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::path::RelPath;

    fn p(s: &str) -> FsPath {
        FsPath::new(0, RelPath::new(s).unwrap())
    }

    /// A failed sync lets the file's dirty bytes go for good, as Linux marks
    /// the pages of a failed writeback clean: a later sync does not write
    /// them, a crash shows the old bytes. Only writing them again (or a
    /// truncate over them) makes them durable again.
    #[test]
    fn a_failed_sync_lets_unsynced_bytes_go_until_they_are_written_again() {
        let d = SimDisk::new(1);
        let f = d.open(&p("f"), OpenMode::CreateNew).unwrap();
        f.write_at(0, b"aaaa").unwrap();
        f.sync_data().unwrap();
        d.sync_parent_dir(&p("f")).unwrap();
        f.write_at(0, b"bbbbcc").unwrap();
        d.inject(SimFault::FailNextSync);
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        let durable = |d: &SimDisk| d.durable_snapshot().get(&(0, "f".to_string())).cloned();
        // The grown tail reads as a hole: its length is durable, its bytes are not.
        assert_eq!(durable(&d), Some(SimEntry::File(b"aaaa\0\0".to_vec())));
        assert_eq!(d.snapshot().get(&(0, "f".to_string())), Some(&SimEntry::File(b"bbbbcc".to_vec())));
        // Written again: dirty, and the next sync makes it durable.
        f.write_at(1, b"B").unwrap();
        f.sync_data().unwrap();
        assert_eq!(durable(&d), Some(SimEntry::File(b"aBaa\0\0".to_vec())));
        // A crash shows the durable bytes and forgets what was let go.
        d.crash(None);
        let g = d.open(&p("f"), OpenMode::Existing).unwrap();
        g.write_at(4, b"dd").unwrap();
        g.sync_data().unwrap();
        assert_eq!(durable(&d), Some(SimEntry::File(b"aBaadd".to_vec())));
        // Truncated to nothing and written afresh: nothing let go remains.
        g.write_at(0, b"eeeeee").unwrap();
        d.inject(SimFault::FailNextSync);
        assert!(g.sync_data().is_err());
        let h = d.open(&p("f"), OpenMode::CreateTruncate).unwrap();
        h.write_at(0, b"ffffff").unwrap();
        h.sync_data().unwrap();
        assert_eq!(durable(&d), Some(SimEntry::File(b"ffffff".to_vec())));
    }

    /// A rename between two directories is durable whole once either is
    /// synced, as a journaling file system commits it: a crash never
    /// leaves the file under both names (nor under neither).
    #[test]
    fn a_rename_between_directories_is_made_durable_whole() {
        let disk = SimDisk::new(1);
        disk.create_dir(&p("a")).unwrap();
        disk.open(&p("a/f"), OpenMode::CreateNew).unwrap().sync_data().unwrap();
        disk.sync_parent_dir(&p("a/f")).unwrap();
        disk.sync_parent_dir(&p("a")).unwrap();
        disk.rename(&p("a/f"), &p("g")).unwrap();
        // Only the target's directory is synced.
        disk.sync_parent_dir(&p("g")).unwrap();
        disk.crash(None);
        let image = disk.snapshot();
        assert!(image.contains_key(&(0, "g".to_string())), "{:?}", image.keys());
        assert!(!image.contains_key(&(0, "a/f".to_string())), "{:?}", image.keys());
    }

    /// Renames are made durable in the order they were made: a file
    /// renamed within its directory and then out of it, with only the
    /// target's directory synced, comes back under its last name alone
    /// (found by the fault simulator: it came back under its first name
    /// too, one file under two names, and a write through one changed the
    /// other, which no mirror can follow).
    #[test]
    fn renames_are_made_durable_in_order() {
        let disk = SimDisk::new(1);
        disk.create_dir(&p("a")).unwrap();
        disk.open(&p("a/f"), OpenMode::CreateNew).unwrap().sync_data().unwrap();
        disk.sync_parent_dir(&p("a/f")).unwrap();
        disk.sync_parent_dir(&p("a")).unwrap();
        disk.rename(&p("a/f"), &p("a/f2")).unwrap();
        disk.rename(&p("a/f2"), &p("g")).unwrap();
        disk.sync_parent_dir(&p("g")).unwrap();
        disk.crash(None);
        let names: Vec<String> = disk.snapshot().into_keys().map(|(_, n)| n).collect();
        assert_eq!(names, vec!["a".to_string(), "g".to_string()]);
    }
}
