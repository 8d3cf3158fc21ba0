//! The workload: random calls over a model of the primary's namespace,
//! what each call may change (for invariant 1), and the engine call each is.

use super::world::World;
use super::*;
use crate::core::primary::Op;
use crate::io::disk::{Disk, OpenMode};
use crate::protocol::body_hash;

#[derive(Clone, Debug)]
pub(super) enum OpSpec {
    Create(FsPath),
    Block {
        p: FsPath,
        block: u64,
        extend: bool,
        fill: u8,
    },
    /// `flush`: the file's flush with it, as one call.
    WriteAt {
        p: FsPath,
        offset: u64,
        data: Vec<u8>,
        flush: bool,
    },
    Sync {
        p: FsPath,
        flat: bool,
    },
    /// A directory fsync of a filespace (`sync_dir`): every namespace change
    /// before it durable on both. Queued schedules only (the others replay
    /// as before).
    SyncDir {
        fs: u16,
    },
    Truncate {
        p: FsPath,
        len: u64,
    },
    Unlink(FsPath),
    Mkdir(FsPath),
    Rmdir(FsPath),
    Rename {
        from: FsPath,
        to: FsPath,
    },
}

impl OpSpec {
    /// A byte write; one in eight carries its flush (a held write and the
    /// fsync after it), chosen by its length, so the seeds' random streams
    /// are what they were before such writes existed.
    pub(super) fn write_at(p: FsPath, offset: u64, data: Vec<u8>) -> OpSpec {
        let flush = data.len() % 8 == 0;
        OpSpec::WriteAt { p, offset, data, flush }
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            OpSpec::Create(_) => "create",
            OpSpec::Block { extend: true, .. } => "extend",
            OpSpec::Block { .. } => "write_block",
            OpSpec::WriteAt { .. } => "write_at",
            OpSpec::Sync { flat: true, .. } => "flush",
            OpSpec::Sync { .. } => "sync",
            OpSpec::SyncDir { .. } => "sync_dir",
            OpSpec::Truncate { .. } => "truncate",
            OpSpec::Unlink(_) => "unlink",
            OpSpec::Mkdir(_) => "mkdir",
            OpSpec::Rmdir(_) => "rmdir",
            OpSpec::Rename { .. } => "rename",
        }
    }

    /// One line for a failure's message (no data bytes).
    pub(super) fn brief(&self) -> String {
        match self {
            OpSpec::Create(p) | OpSpec::Unlink(p) | OpSpec::Mkdir(p) | OpSpec::Rmdir(p) => {
                format!("{} {p}", self.name())
            }
            OpSpec::Block { p, block, fill, .. } => format!("{} {p} block {block} fill {fill}", self.name()),
            OpSpec::WriteAt { p, offset, data, flush } => {
                format!("write_at{} {p} {offset}+{}", if *flush { "+flush" } else { "" }, data.len())
            }
            OpSpec::Sync { p, .. } | OpSpec::Truncate { p, .. } => format!("{} {p}", self.name()),
            OpSpec::Rename { from, to } => format!("rename {from} -> {to}"),
            OpSpec::SyncDir { fs } => format!("sync_dir fs{fs}"),
        }
    }

    /// Whether it may create, remove or move `p` (or what holds or lies under it).
    pub(super) fn changes_existence(&self, p: &FsPath) -> bool {
        // Not through `namespace_paths`: this runs quadratically often in the checks.
        match self {
            OpSpec::Create(q) | OpSpec::Unlink(q) | OpSpec::Mkdir(q) | OpSpec::Rmdir(q) => q.related(p),
            OpSpec::Rename { from, to } => from.related(p) || to.related(p),
            _ => false,
        }
    }

    /// Whether it may change bytes `start..end` of the file at `p`.
    pub(super) fn changes_content(&self, p: &FsPath, start: u64, end: u64, bs: u64) -> bool {
        let overlaps = |s: u64, e: u64| s < end && start < e;
        match self {
            OpSpec::Block { p: q, block, .. } => q == p && overlaps(block * bs, block * bs + bs),
            OpSpec::WriteAt { p: q, offset, data, .. } => q == p && overlaps(*offset, offset + data.len() as u64),
            OpSpec::Truncate { p: q, len } => q == p && *len < end,
            OpSpec::Sync { .. } | OpSpec::SyncDir { .. } => false,
            _ => self.changes_existence(p),
        }
    }

    pub(super) fn changes_length(&self, p: &FsPath) -> bool {
        match self {
            OpSpec::Block { p: q, .. } | OpSpec::WriteAt { p: q, .. } | OpSpec::Truncate { p: q, .. } => q == p,
            _ => self.changes_existence(p),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CallState {
    Pending,
    Acked,
    Failed,
}

pub(super) struct Issued {
    pub(super) spec: OpSpec,
    pub(super) state: CallState,
    /// When it was issued and when it returned, on one counter of both.
    pub(super) issued: u64,
    pub(super) returned: Option<u64>,
    /// Submitted queued (`FaultConfig::queued`): promised only by a later
    /// sync in the same term.
    pub(super) queued: bool,
    /// The segment it was submitted to, and that segment's generation as
    /// primary then: a sync covers a queued call only in the same term (a
    /// sync on another segment, or on this one after it lost its role,
    /// never saw it).
    pub(super) term: (usize, u64),
}

/// A writer's call in progress on a segment.
#[derive(Clone, Copy, Debug)]
pub(super) struct Waiting {
    pub(super) op: usize,
    pub(super) node: usize,
}

impl OpSpec {
    /// The engine call this is.
    pub(super) fn to_op(&self, bs: u64) -> Op {
        match self.clone() {
            OpSpec::Create(file) => Op::Create { file },
            OpSpec::Block { p, block, extend, fill } => {
                let data = Bytes::from(vec![fill; bs as usize]);
                let hash = body_hash(&data);
                Op::WriteBlock { file: p, block, data, hash, extend }
            }
            OpSpec::WriteAt { p, offset, data, flush } => {
                let data = Bytes::from(data);
                let hash = body_hash(&data);
                Op::WriteAt { file: p, offset, data, hash, flush }
            }
            OpSpec::Sync { p, flat } => Op::Sync { file: p, flush: flat },
            OpSpec::SyncDir { fs } => Op::SyncDir { fs },
            OpSpec::Truncate { p, len } => Op::SetLen { file: p, len },
            OpSpec::Unlink(file) => Op::Unlink { file },
            OpSpec::Mkdir(dir) => Op::Mkdir { dir },
            OpSpec::Rmdir(dir) => Op::Rmdir { dir },
            OpSpec::Rename { from, to } => Op::Rename { from, to },
        }
    }
}

impl World {
    /// The model of segment `n`'s namespace, from its live image.
    pub(super) fn rebuild_model(&mut self, n: usize) -> Result<(), SimFailure> {
        let mut files = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        for ((fs, path), e) in self.nodes[n].data_sim.snapshot() {
            let p = FsPath::new(fs, self.rel(&path)?);
            match e {
                SimEntry::Dir => {
                    dirs.insert(p);
                }
                SimEntry::File(_) => {
                    let k = self.kind_hints.get(&p).copied().unwrap_or(FileKind::Flat);
                    files.insert(p, k);
                }
            }
        }
        self.model.files = files;
        self.model.dirs = dirs;
        self.model_node = Some(n);
        Ok(())
    }

    pub(super) fn model_apply(&mut self, spec: &OpSpec) {
        match spec {
            OpSpec::Create(p) => {
                let k = self.kind_hints.get(p).copied().unwrap_or(FileKind::Flat);
                self.model.files.insert(p.clone(), k);
            }
            OpSpec::Unlink(p) => {
                self.model.files.remove(p);
            }
            OpSpec::Mkdir(p) => {
                self.model.dirs.insert(p.clone());
            }
            OpSpec::Rmdir(p) => {
                self.model.dirs.remove(p);
            }
            OpSpec::Rename { from, to } => {
                let fs = from.filespace;
                let moved: Vec<(FsPath, FileKind)> = self
                    .model
                    .files
                    .iter()
                    .filter(|(p, _)| p.filespace == fs && p.path.is_within(&from.path))
                    .map(|(p, k)| (p.clone(), *k))
                    .collect();
                self.model.files.remove(to);
                for (p, k) in moved {
                    self.model.files.remove(&p);
                    if let Some(np) = p.path.rebase(&from.path, &to.path) {
                        let np = FsPath::new(fs, np);
                        self.kind_hints.insert(np.clone(), k);
                        self.model.files.insert(np, k);
                    }
                }
                let dirs: Vec<FsPath> = self
                    .model
                    .dirs
                    .iter()
                    .filter(|p| p.filespace == fs && p.path.is_within(&from.path))
                    .cloned()
                    .collect();
                for p in dirs {
                    self.model.dirs.remove(&p);
                    if let Some(np) = p.path.rebase(&from.path, &to.path) {
                        self.model.dirs.insert(FsPath::new(fs, np));
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn fresh_name(&mut self, prefix: &str) -> String {
        self.model.next_name += 1;
        format!("{prefix}{}", self.model.next_name)
    }

    pub(super) fn random_parent(&mut self, fs: u16) -> Option<RelPath> {
        let dirs: Vec<&FsPath> = self.model.dirs.iter().filter(|d| d.filespace == fs).collect();
        if dirs.is_empty() || self.rng.gen_bool(0.3) {
            return None;
        }
        Some(dirs[self.rng.gen_range(0..dirs.len())].path.clone())
    }

    pub(super) fn child(parent: Option<RelPath>, name: &str) -> Option<RelPath> {
        let s = match parent {
            Some(p) => format!("{p}/{name}"),
            None => name.to_string(),
        };
        RelPath::new(&s).ok()
    }

    pub(super) fn pick_file(&mut self, kind: Option<FileKind>) -> Option<FsPath> {
        let v: Vec<&FsPath> =
            self.model.files.iter().filter(|(_, k)| kind.is_none_or(|want| **k == want)).map(|(p, _)| p).collect();
        if v.is_empty() {
            return None;
        }
        Some(v[self.rng.gen_range(0..v.len())].clone())
    }

    pub(super) fn file_len(&self, n: usize, p: &FsPath) -> Result<u64, SimFailure> {
        let f = self.nodes[n].data_sim.open(p, OpenMode::Existing).map_err(|e| self.fail(format!("model: {e}")))?;
        f.len().map_err(|e| self.fail(format!("model: {e}")))
    }

    /// A random operation on segment `n`'s namespace (the mix of the happy-path simulator).
    pub(super) fn generate(&mut self, n: usize) -> Result<Option<OpSpec>, SimFailure> {
        let bs = self.bs;
        let fs = self.rng.gen_range(0..self.cfg.filespaces);
        // A steady workload: after its first third, data calls only (files
        // written in place, the change-log naming no path over them).
        let steady = self.cfg.steady && self.ops.len() > self.cfg.operations / 3;
        Ok(match self.rng.gen_range(0..if steady { 69 } else { 100 }) {
            0..=7 => {
                let parent = self.random_parent(fs);
                let name = self.fresh_name("rel");
                let Some(child) = Self::child(parent, &name) else { return Ok(None) };
                let p = FsPath::new(fs, child);
                let kind = if self.rng.gen_bool(0.7) { FileKind::Relation } else { FileKind::Flat };
                self.kind_hints.insert(p.clone(), kind);
                Some(OpSpec::Create(p))
            }
            8..=45 => {
                let Some(p) = self.pick_file(Some(FileKind::Relation)) else { return Ok(None) };
                let nblocks = self.file_len(n, &p)? / bs;
                let extend = self.rng.gen_bool(0.4);
                // Now and then a block of the next extent (a sparse write, as
                // a database's relation grows in segments): what the
                // activity log covered of the first extent says nothing of it.
                let far = crate::durable::changelog::EXTENT_BLOCKS;
                let block = match (extend, self.rng.gen_range(0..100)) {
                    (true, _) => nblocks,
                    (false, 0..=3) => far + self.rng.gen_range(0..4),
                    _ => self.rng.gen_range(0..nblocks + 2),
                };
                Some(OpSpec::Block { p, block, extend, fill: self.rng.gen() })
            }
            46..=60 => {
                let Some(p) = self.pick_file(Some(FileKind::Flat)) else { return Ok(None) };
                let len = self.file_len(n, &p)?;
                let offset = if self.rng.gen_bool(0.7) { len } else { self.rng.gen_range(0..len + 100) };
                let count = self.rng.gen_range(1..3000);
                let data: Vec<u8> = (0..count).map(|_| self.rng.gen()).collect();
                Some(OpSpec::write_at(p, offset, data))
            }
            61..=68 => {
                // Queued schedules also sync directories, as the mount's
                // fsyncdir does (drawn only there: the others replay as before).
                if self.cfg.queued && self.rng.gen_bool(0.25) {
                    return Ok(Some(OpSpec::SyncDir { fs }));
                }
                let Some(p) = self.pick_file(None) else { return Ok(None) };
                let flat = self.model.files.get(&p) == Some(&FileKind::Flat);
                Some(OpSpec::Sync { p, flat })
            }
            69..=74 => {
                let Some(p) = self.pick_file(Some(FileKind::Relation)) else { return Ok(None) };
                let nblocks = self.file_len(n, &p)? / bs;
                Some(OpSpec::Truncate { len: self.rng.gen_range(0..=nblocks) * bs, p })
            }
            75..=79 => self.pick_file(None).map(OpSpec::Unlink),
            80..=86 => {
                let parent = self.random_parent(fs);
                let name = self.fresh_name("dir");
                Self::child(parent, &name).map(|c| OpSpec::Mkdir(FsPath::new(fs, c)))
            }
            87..=90 => {
                let m = &self.model;
                let empty: Vec<FsPath> = m
                    .dirs
                    .iter()
                    .filter(|d| {
                        !m.files.keys().any(|f| f.related(d))
                            && !m
                                .dirs
                                .iter()
                                .any(|e| e != *d && e.filespace == d.filespace && e.path.is_within(&d.path))
                    })
                    .cloned()
                    .collect();
                if empty.is_empty() {
                    return Ok(None);
                }
                Some(OpSpec::Rmdir(empty[self.rng.gen_range(0..empty.len())].clone()))
            }
            _ => self.generate_rename(fs),
        })
    }

    pub(super) fn generate_rename(&mut self, fs: u16) -> Option<OpSpec> {
        let move_dir = self.rng.gen_bool(0.3);
        let from = if move_dir {
            let v: Vec<FsPath> = self.model.dirs.iter().filter(|d| d.filespace == fs).cloned().collect();
            if v.is_empty() {
                return None;
            }
            v[self.rng.gen_range(0..v.len())].clone()
        } else {
            let v: Vec<FsPath> = self.model.files.keys().filter(|d| d.filespace == fs).cloned().collect();
            if v.is_empty() {
                return None;
            }
            v[self.rng.gen_range(0..v.len())].clone()
        };
        // Sometimes replace an existing file of the same kind; otherwise a fresh name.
        let to = if !move_dir && self.rng.gen_bool(0.3) {
            let kind = self.model.files.get(&from).copied();
            match self.pick_file(kind) {
                Some(t) if t != from && t.filespace == fs => t,
                _ => return None,
            }
        } else {
            let parent = self.random_parent(fs);
            if parent.as_ref().is_some_and(|p| p.is_within(&from.path)) {
                return None;
            }
            let name = self.fresh_name("mv");
            FsPath::new(fs, Self::child(parent, &name)?)
        };
        Some(OpSpec::Rename { from, to })
    }
}
