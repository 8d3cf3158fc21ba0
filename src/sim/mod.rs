//! The deterministic simulator. One seed drives everything: the workload,
//! how the network chunks and delays bytes, how the mirror groups frames
//! into batches. Primary and mirror run the real state machines
//! ([`PrimaryStream`], [`MirrorSession`]), the real codec and the real
//! executor ([`Applier`]) over [`SimDisk`]s, on a virtual clock.
//!
//! Invariants checked:
//! - acknowledgements never run ahead of what the mirror really applied or
//!   made durable;
//! - every acknowledged operation is on the mirror (live image) and every
//!   durably acknowledged one survives a mirror crash (durable image);
//! - at the end, the mirror's live and durable images equal the primary's.
//!
//! A failure names its seed and the command that replays it.
//!
//! [`faults`] runs a pair and an arbiter through fault schedules (crashes,
//! disconnects, partitions, torn writes, fsync errors, a full disk), checks
//! the change-tracking invariants, and repairs the pair with the real resync
//! engine while writers call and one more fault may strike.

mod faults;

pub use faults::{
    run_faults, FaultConfig, FaultKind, FaultReport, PlantedBug, Point, ResyncFault, ResyncTotals, Side, Victim,
};

use crate::core::mirror::{MirrorSession, Step};
use crate::core::primary::PrimaryStream;
use crate::io::disk::{Disk, DiskErrorKind, FsPath, OpenMode, SimDisk};
use crate::protocol::path::RelPath;
use crate::protocol::{body_hash, Ack, Decoder, Frame, Header, Kind};
use crate::runtime::apply::{Applier, Sequenced};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Knobs of one run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub operations: usize,
    pub writers: usize,
    pub filespaces: u16,
    pub block_size: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { operations: 400, writers: 6, filespaces: 2, block_size: 8192 }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub operations: usize,
    pub frames: u64,
    pub wire_bytes: u64,
    pub virtual_ms: u64,
    pub kinds: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone)]
pub struct SimFailure {
    pub seed: u64,
    pub step: u64,
    pub message: String,
    /// A fault-schedule run ([`run_faults`]) rather than the happy path.
    pub faults: bool,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (flag, test) = if self.faults { (" --faults", " fault") } else { ("", "") };
        write!(
            f,
            "simulation seed {} failed at step {}: {}\n  replay: cargo run --release -- sim{flag} --seed {}\n  or:     FILEREP_SIM_SEED={} cargo test --release --test simulation{test}",
            self.seed, self.step, self.message, self.seed, self.seed
        )
    }
}

/// In-order byte delivery with random chunking and delay (TCP-like).
struct Link {
    queue: VecDeque<(u64, Vec<u8>)>,
    last_due: u64,
}

impl Link {
    fn new() -> Link {
        Link { queue: VecDeque::new(), last_due: 0 }
    }

    fn send(&mut self, rng: &mut ChaCha8Rng, now: u64, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            let n = rng.gen_range(1..=bytes.len() - at).min(rng.gen_range(1..=70_000));
            let due = (now + rng.gen_range(0..4)).max(self.last_due);
            self.last_due = due;
            self.queue.push_back((due, bytes[at..at + n].to_vec()));
            at += n;
        }
    }

    fn deliver(&mut self, now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((due, _)) = self.queue.front() {
            if *due > now {
                break;
            }
            if let Some((_, b)) = self.queue.pop_front() {
                out.extend_from_slice(&b);
            }
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FileKind {
    Relation,
    Flat,
}

/// What the workload knows of the primary's namespace.
#[derive(Default)]
struct Model {
    files: BTreeMap<FsPath, FileKind>,
    dirs: BTreeSet<FsPath>,
    next_name: u64,
}

/// What a writer waits for before it issues its next operation.
#[derive(Clone, Copy, Debug)]
enum Wait {
    Idle,
    Applied(u64),
    Synced(u64),
}

struct Sim {
    seed: u64,
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    step: u64,
    primary_disk: Arc<SimDisk>,
    mirror_disk: Arc<SimDisk>,
    stream: PrimaryStream,
    to_mirror: Link,
    to_primary: Link,
    mirror_dec: Decoder,
    primary_dec: Decoder,
    session: MirrorSession,
    applier: Applier,
    model: Model,
    writers: Vec<Wait>,
    report: SimReport,
    /// Mirror-side "received" for acknowledgements.
    received: u64,
    /// Sync jobs waiting for the simulated syncer thread.
    sync_jobs: VecDeque<crate::runtime::apply::SyncJob>,
    /// The operation being issued carries `FLAG_DURABLE`.
    strict_next: bool,
    mirror_synced: u64,
    mirror_durable: u64,
}

impl Sim {
    fn fail(&self, message: impl Into<String>) -> SimFailure {
        SimFailure { seed: self.seed, step: self.step, message: message.into(), faults: false }
    }

    fn ship(&mut self, h: Header, body: Bytes) {
        let mut h = h;
        if self.strict_next && h.kind.is_operation() && h.kind != Kind::Bind {
            h.flags |= crate::protocol::FLAG_DURABLE;
        }
        h.body_len = body.len() as u32;
        h.body_hash = body_hash(&body);
        let f = Frame { header: h, body };
        let bytes = f.to_vec();
        self.report.frames += 1;
        self.report.wire_bytes += bytes.len() as u64;
        *self.report.kinds.entry(h.kind.name()).or_default() += 1;
        self.to_mirror.send(&mut self.rng, self.now, &bytes);
    }

    fn ship_op(&mut self, p: &FsPath, mut h: Header, body: Bytes) -> Result<u64, SimFailure> {
        let (id, bind) = self.stream.bind(p).map_err(|e| self.fail(e.to_string()))?;
        if let Some((bh, path)) = bind {
            self.ship(bh, Bytes::from(path));
        }
        h.file_id = id;
        h.filespace = p.filespace;
        let h = self.stream.operation(h);
        self.ship(h, body);
        Ok(h.seq)
    }

    fn ship_path_op(&mut self, kind: Kind, p: &FsPath, aux: u32, body: Vec<u8>) -> u64 {
        let mut h = Header::new(kind);
        h.filespace = p.filespace;
        h.aux = aux;
        let h = self.stream.operation(h);
        self.ship(h, Bytes::from(body));
        h.seq
    }

    fn fresh_name(&mut self, prefix: &str) -> String {
        self.model.next_name += 1;
        format!("{prefix}{}", self.model.next_name)
    }

    fn random_parent(&mut self, fs: u16) -> Option<RelPath> {
        let dirs: Vec<&FsPath> = self.model.dirs.iter().filter(|d| d.filespace == fs).collect();
        if dirs.is_empty() || self.rng.gen_bool(0.3) {
            return None;
        }
        Some(dirs[self.rng.gen_range(0..dirs.len())].path.clone())
    }

    /// `None` when nesting has made the path too long: the operation is skipped.
    fn child(parent: Option<RelPath>, name: &str) -> Option<RelPath> {
        let s = match parent {
            Some(p) => format!("{p}/{name}"),
            None => name.to_string(),
        };
        RelPath::new(&s).ok()
    }

    fn pick_file(&mut self, kind: FileKind) -> Option<FsPath> {
        let v: Vec<&FsPath> = self.model.files.iter().filter(|(_, k)| **k == kind).map(|(p, _)| p).collect();
        if v.is_empty() {
            return None;
        }
        Some(v[self.rng.gen_range(0..v.len())].clone())
    }

    /// Issue one random operation on the primary; returns what the writer waits for.
    fn issue(&mut self) -> Result<Wait, SimFailure> {
        let bs = self.cfg.block_size as u64;
        let fs = self.rng.gen_range(0..self.cfg.filespaces);
        let choice = self.rng.gen_range(0..100);
        let disk = self.primary_disk.clone();
        let dfail = |s: &Sim, what: &str, e: crate::io::disk::DiskError| s.fail(format!("primary {what}: {e}"));
        let wait =
            match choice {
                0..=7 => {
                    let parent = self.random_parent(fs);
                    let name = self.fresh_name("rel");
                    let Some(child) = Self::child(parent, &name) else { return Ok(Wait::Idle) };
                    let p = FsPath::new(fs, child);
                    disk.open(&p, OpenMode::CreateNew).map_err(|e| dfail(self, "create", e))?;
                    let kind = if self.rng.gen_bool(0.7) { FileKind::Relation } else { FileKind::Flat };
                    self.model.files.insert(p.clone(), kind);
                    Wait::Applied(self.ship_op(&p, Header::new(Kind::Create), Bytes::new())?)
                }
                8..=45 => {
                    let Some(p) = self.pick_file(FileKind::Relation) else { return Ok(Wait::Idle) };
                    let f = disk.open(&p, OpenMode::Existing).map_err(|e| dfail(self, "open", e))?;
                    let n = f.len().map_err(|e| dfail(self, "len", e))? / bs;
                    let extend = self.rng.gen_bool(0.4);
                    let block = if extend { n } else { self.rng.gen_range(0..n + 2) };
                    let fill: u8 = self.rng.gen();
                    let data = vec![fill; bs as usize];
                    let mut h = Header::new(if extend { Kind::Extend } else { Kind::WriteBlock });
                    h.offset = block;
                    let seq = self.ship_op(&p, h, Bytes::from(data.clone()))?;
                    f.write_at(block * bs, &data).map_err(|e| dfail(self, "write", e))?;
                    Wait::Applied(seq)
                }
                46..=60 => {
                    let Some(p) = self.pick_file(FileKind::Flat) else { return Ok(Wait::Idle) };
                    let f = disk.open(&p, OpenMode::Existing).map_err(|e| dfail(self, "open", e))?;
                    let len = f.len().map_err(|e| dfail(self, "len", e))?;
                    let offset = if self.rng.gen_bool(0.7) { len } else { self.rng.gen_range(0..len + 100) };
                    let n = self.rng.gen_range(1..3000);
                    let data: Vec<u8> = (0..n).map(|_| self.rng.gen()).collect();
                    let mut h = Header::new(Kind::WriteAt);
                    h.offset = offset;
                    let seq = self.ship_op(&p, h, Bytes::from(data.clone()))?;
                    f.write_at(offset, &data).map_err(|e| dfail(self, "write_at", e))?;
                    Wait::Applied(seq)
                }
                61..=68 => {
                    let kind = if self.rng.gen_bool(0.5) { FileKind::Flat } else { FileKind::Relation };
                    let Some(p) = self.pick_file(kind) else { return Ok(Wait::Idle) };
                    let f = disk.open(&p, OpenMode::Existing).map_err(|e| dfail(self, "open", e))?;
                    let seq = self.ship_op(
                        &p,
                        Header::new(if kind == FileKind::Flat { Kind::Flush } else { Kind::Sync }),
                        Bytes::new(),
                    )?;
                    f.sync_data().map_err(|e| dfail(self, "sync", e))?;
                    Wait::Synced(seq)
                }
                69..=74 => {
                    let Some(p) = self.pick_file(FileKind::Relation) else { return Ok(Wait::Idle) };
                    let f = disk.open(&p, OpenMode::Existing).map_err(|e| dfail(self, "open", e))?;
                    let n = f.len().map_err(|e| dfail(self, "len", e))? / bs;
                    let len = self.rng.gen_range(0..=n) * bs;
                    f.set_len(len).map_err(|e| dfail(self, "truncate", e))?;
                    let mut h = Header::new(Kind::Truncate);
                    h.offset = len;
                    Wait::Applied(self.ship_op(&p, h, Bytes::new())?)
                }
                75..=79 => {
                    let kind = if self.rng.gen_bool(0.5) { FileKind::Flat } else { FileKind::Relation };
                    let Some(p) = self.pick_file(kind) else { return Ok(Wait::Idle) };
                    disk.remove_file(&p).map_err(|e| dfail(self, "unlink", e))?;
                    self.model.files.remove(&p);
                    let seq = self.ship_op(&p, Header::new(Kind::Unlink), Bytes::new())?;
                    self.stream.unbind(&p);
                    Wait::Applied(seq)
                }
                80..=86 => {
                    let parent = self.random_parent(fs);
                    let name = self.fresh_name("dir");
                    let Some(child) = Self::child(parent, &name) else { return Ok(Wait::Idle) };
                    let p = FsPath::new(fs, child);
                    disk.create_dir(&p).map_err(|e| dfail(self, "mkdir", e))?;
                    self.model.dirs.insert(p.clone());
                    Wait::Applied(self.ship_path_op(Kind::Mkdir, &p, 0, p.path.as_str().as_bytes().to_vec()))
                }
                87..=90 => {
                    let empty: Vec<FsPath> =
                        self.model
                            .dirs
                            .iter()
                            .filter(|d| {
                                !self.model.files.keys().any(|f| {
                                    f.filespace == d.filespace && f.path != d.path && f.path.is_within(&d.path)
                                }) && !self.model.dirs.iter().any(|e| {
                                    e.filespace == d.filespace && e.path != d.path && e.path.is_within(&d.path)
                                })
                            })
                            .cloned()
                            .collect();
                    if empty.is_empty() {
                        return Ok(Wait::Idle);
                    }
                    let p = empty[self.rng.gen_range(0..empty.len())].clone();
                    disk.remove_dir(&p).map_err(|e| dfail(self, "rmdir", e))?;
                    self.model.dirs.remove(&p);
                    Wait::Applied(self.ship_path_op(Kind::Rmdir, &p, 0, p.path.as_str().as_bytes().to_vec()))
                }
                _ => self.issue_rename(fs)?,
            };
        Ok(wait)
    }

    fn issue_rename(&mut self, fs: u16) -> Result<Wait, SimFailure> {
        let move_dir = self.rng.gen_bool(0.3);
        let from = if move_dir {
            let v: Vec<FsPath> = self.model.dirs.iter().filter(|d| d.filespace == fs).cloned().collect();
            if v.is_empty() {
                return Ok(Wait::Idle);
            }
            v[self.rng.gen_range(0..v.len())].clone()
        } else {
            let v: Vec<FsPath> = self.model.files.keys().filter(|d| d.filespace == fs).cloned().collect();
            if v.is_empty() {
                return Ok(Wait::Idle);
            }
            v[self.rng.gen_range(0..v.len())].clone()
        };
        // Sometimes replace an existing file; otherwise a fresh name.
        let to = if !move_dir && self.rng.gen_bool(0.3) {
            match self.pick_file(*self.model.files.get(&from).unwrap_or(&FileKind::Flat)) {
                Some(t) if t != from && t.filespace == fs => t,
                _ => return Ok(Wait::Idle),
            }
        } else {
            let parent = self.random_parent(fs);
            if parent.as_ref().is_some_and(|p| p.is_within(&from.path)) {
                return Ok(Wait::Idle);
            }
            let name = self.fresh_name("mv");
            let Some(child) = Self::child(parent, &name) else { return Ok(Wait::Idle) };
            FsPath::new(fs, child)
        };
        match self.primary_disk.rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind == DiskErrorKind::NotFound => return Ok(Wait::Idle),
            Err(e) => return Err(self.fail(format!("primary rename {from} -> {to}: {e}"))),
        }
        // Keep the model in step: everything at or under `from` moves.
        let moved_files: Vec<(FsPath, FileKind)> = self
            .model
            .files
            .iter()
            .filter(|(p, _)| p.filespace == fs && p.path.is_within(&from.path))
            .map(|(p, k)| (p.clone(), *k))
            .collect();
        self.model.files.remove(&to);
        for (p, k) in moved_files {
            self.model.files.remove(&p);
            if let Some(np) = p.path.rebase(&from.path, &to.path) {
                self.model.files.insert(FsPath::new(fs, np), k);
            }
        }
        let moved_dirs: Vec<FsPath> =
            self.model.dirs.iter().filter(|p| p.filespace == fs && p.path.is_within(&from.path)).cloned().collect();
        for p in moved_dirs {
            self.model.dirs.remove(&p);
            if let Some(np) = p.path.rebase(&from.path, &to.path) {
                self.model.dirs.insert(FsPath::new(fs, np));
            }
        }
        let mut body = from.path.as_str().as_bytes().to_vec();
        body.extend_from_slice(to.path.as_str().as_bytes());
        let seq = self.ship_path_op(Kind::Rename, &from, from.path.as_str().len() as u32, body);
        self.stream.rebind(&from, &to);
        Ok(Wait::Applied(seq))
    }

    /// Mirror: take delivered bytes, validate, apply in a random number of batches, acknowledge.
    fn mirror_step(&mut self) -> Result<(), SimFailure> {
        let bytes = self.to_mirror.deliver(self.now);
        if bytes.is_empty() {
            return Ok(());
        }
        self.mirror_dec.feed(&bytes);
        let mut ops = Vec::new();
        let mut wake = false;
        let mut shutdown = false;
        while let Some(f) = self.mirror_dec.next_frame().map_err(|e| self.fail(format!("mirror decode: {e}")))? {
            match self.session.on_frame(&f).map_err(|e| self.fail(format!("mirror refused frame: {e}")))? {
                Step::Apply { seq, op, durable, catching_up } => ops.push(Sequenced { seq, op, durable, catching_up }),
                Step::Heartbeat => wake = true,
                Step::Shutdown => {
                    wake = true;
                    shutdown = true;
                }
            }
        }
        self.received = self.session.received();
        if ops.is_empty() && !wake {
            return Ok(());
        }
        let mut rest: &[Sequenced] = &ops;
        while !rest.is_empty() {
            let n = self.rng.gen_range(1..=rest.len());
            let (batch, tail) = rest.split_at(n);
            self.applier.apply(batch).map_err(|e| self.fail(format!("mirror apply: {e}")))?;
            // The daemon's periodic checkpoint, at random moments.
            if self.rng.gen_bool(0.05) {
                self.applier.request_full();
            }
            if self.applier.wants_sync() {
                // As the daemon's syncer thread: the job runs later, while
                // later batches are applied.
                self.sync_jobs.push_back(self.applier.take_sync_job());
            }
            rest = tail;
            self.mirror_ack();
        }
        if shutdown {
            self.applier.request_full();
            self.sync_jobs.push_back(self.applier.take_sync_job());
        }
        if ops.is_empty() {
            self.mirror_ack();
        }
        Ok(())
    }

    fn mirror_ack(&mut self) {
        let ack = Ack {
            received: self.received,
            applied: self.applier.applied(),
            synced: self.mirror_synced,
            durable: self.mirror_durable,
        };
        let bytes = ack.to_frame().to_vec();
        self.to_primary.send(&mut self.rng, self.now, &bytes);
    }

    /// The syncer: run queued jobs, merged as the daemon merges them.
    fn syncer_step(&mut self) -> Result<(), SimFailure> {
        let Some(mut job) = self.sync_jobs.pop_front() else { return Ok(()) };
        while self.rng.gen_bool(0.5) {
            match self.sync_jobs.pop_front() {
                Some(more) => job.merge(more),
                None => break,
            }
        }
        let through = job.run(self.mirror_disk.as_ref()).map_err(|e| self.fail(format!("mirror sync: {e}")))?;
        if through < self.mirror_synced {
            return Err(self.fail(format!("synced went backwards: {through} < {}", self.mirror_synced)));
        }
        self.mirror_synced = through;
        if let Some(d) = job.durable_through {
            self.mirror_durable = self.mirror_durable.max(d);
        }
        self.mirror_ack();
        Ok(())
    }

    fn primary_step(&mut self) -> Result<(), SimFailure> {
        let bytes = self.to_primary.deliver(self.now);
        if bytes.is_empty() {
            return Ok(());
        }
        self.primary_dec.feed(&bytes);
        while let Some(f) = self.primary_dec.next_frame().map_err(|e| self.fail(format!("primary decode: {e}")))? {
            if f.header.kind != Kind::Ack {
                return Err(self.fail(format!("primary got a {} frame", f.header.kind.name())));
            }
            let ack = Ack::from_body(&f.body).ok_or_else(|| self.fail("malformed ack"))?;
            // Acknowledgements may only claim what the mirror really did.
            if ack.applied > self.applier.applied()
                || ack.synced > self.mirror_synced
                || ack.durable > self.mirror_durable
            {
                return Err(self.fail(format!("ack {ack:?} runs ahead of the mirror")));
            }
            self.stream.on_ack(ack, self.now).map_err(|e| self.fail(format!("primary refused ack: {e}")))?;
        }
        Ok(())
    }

    fn satisfied(&self, w: Wait) -> bool {
        let a = self.stream.acked();
        match w {
            Wait::Idle => true,
            Wait::Applied(s) => a.applied >= s,
            Wait::Synced(s) => a.synced >= s,
        }
    }

    fn run(&mut self) -> Result<(), SimFailure> {
        let mut issued = 0;
        let limit = (self.cfg.operations as u64) * 200 + 10_000;
        while issued < self.cfg.operations || !self.to_mirror.is_empty() || !self.to_primary.is_empty() {
            self.step += 1;
            if self.step > limit {
                return Err(self.fail("no progress: the stream stalled"));
            }
            // Each ready writer may issue its next operation.
            for w in 0..self.writers.len() {
                if issued < self.cfg.operations && self.satisfied(self.writers[w]) && self.rng.gen_bool(0.5) {
                    // Now and then an operation at the strict level: it waits until synced.
                    self.strict_next = self.rng.gen_bool(0.1);
                    self.writers[w] = match self.issue()? {
                        Wait::Applied(s) if self.strict_next => Wait::Synced(s),
                        other => other,
                    };
                    issued += 1;
                }
            }
            if self.rng.gen_bool(0.8) {
                self.mirror_step()?;
            }
            if self.rng.gen_bool(0.8) {
                self.primary_step()?;
            }
            if self.rng.gen_bool(0.3) {
                self.syncer_step()?;
            }
            self.now += 1;
        }
        // Orderly end: the mirror makes everything durable.
        let mut h = Header::new(Kind::Shutdown);
        h.offset = self.stream.last_seq();
        self.ship(h, Bytes::new());
        while !self.to_mirror.is_empty() || !self.to_primary.is_empty() || !self.sync_jobs.is_empty() {
            self.now += 1;
            self.mirror_step()?;
            self.primary_step()?;
            self.syncer_step()?;
        }
        self.applier.sync_all().map_err(|e| self.fail(format!("final sync: {e}")))?;
        let last = self.stream.last_seq();
        if self.stream.acked().applied != last {
            return Err(self.fail(format!("applied {} of {last} at the end", self.stream.acked().applied)));
        }
        let primary = self.primary_disk.snapshot();
        let mirror_live = self.mirror_disk.snapshot();
        if let Some(diff) = first_difference(&primary, &mirror_live) {
            return Err(self.fail(format!("mirror live image differs: {diff}")));
        }
        let mirror_durable = self.mirror_disk.durable_snapshot();
        if let Some(diff) = first_difference(&primary, &mirror_durable) {
            return Err(self.fail(format!("mirror durable image differs after shutdown: {diff}")));
        }
        self.report.operations = issued;
        self.report.virtual_ms = self.now;
        Ok(())
    }
}

fn first_difference(
    a: &BTreeMap<(u16, String), crate::io::disk::SimEntry>,
    b: &BTreeMap<(u16, String), crate::io::disk::SimEntry>,
) -> Option<String> {
    for (k, v) in a {
        match b.get(k) {
            None => return Some(format!("fs{}:{} missing on the mirror", k.0, k.1)),
            Some(w) if w != v => return Some(format!("fs{}:{} has different contents", k.0, k.1)),
            _ => {}
        }
    }
    b.keys().find(|k| !a.contains_key(*k)).map(|k| format!("fs{}:{} exists only on the mirror", k.0, k.1))
}

/// Run one seed.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<SimReport, SimFailure> {
    let primary_disk = Arc::new(SimDisk::new(cfg.filespaces));
    let mirror_disk = Arc::new(SimDisk::new(cfg.filespaces));
    let mut sim = Sim {
        seed,
        cfg: cfg.clone(),
        rng: ChaCha8Rng::seed_from_u64(seed),
        now: 0,
        step: 0,
        primary_disk,
        mirror_disk: mirror_disk.clone(),
        stream: PrimaryStream::new(1, 0, 100, u64::MAX / 4),
        to_mirror: Link::new(),
        to_primary: Link::new(),
        mirror_dec: Decoder::new(),
        primary_dec: Decoder::new(),
        session: MirrorSession::new(cfg.block_size, cfg.filespaces, 1),
        applier: Applier::new(mirror_disk, 1),
        model: Model::default(),
        writers: vec![Wait::Idle; cfg.writers.max(1)],
        report: SimReport::default(),
        received: 0,
        sync_jobs: VecDeque::new(),
        strict_next: false,
        mirror_synced: 0,
        mirror_durable: 0,
    };
    sim.run()?;
    Ok(sim.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_seeds_pass_and_replay_identically() {
        let cfg = SimConfig { operations: 150, ..SimConfig::default() };
        for seed in 0..5 {
            let a = run(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
            let b = run(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
            assert_eq!((a.frames, a.wire_bytes, a.virtual_ms), (b.frames, b.wire_bytes, b.virtual_ms));
            assert!(a.frames > 0);
        }
    }
}
