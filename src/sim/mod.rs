//! The deterministic simulator: one seed drives everything. Two segments,
//! their arbiter and a set of writers run on a virtual clock over simulated
//! disks that keep a live and a durable image (a crash keeps only the
//! durable one and may tear the write in flight) and a simulated network.
//!
//! What runs is the code that ships, not a model of it: the primary's
//! engine ([`crate::core::primary::Engine`]) with its commands carried out
//! by the runtime's own executor ([`crate::exec::primary`]) on the
//! segment's disks and real change-log; the mirror's session checks,
//! executor and checkpoint policy; the arbiter's pair transitions and probe
//! round decisions ([`crate::core::arbiter`]); the resync engine
//! ([`crate::core::resync`]). Every command the engine issues is a pending
//! completion, and the seed chooses which completes next, so local writes,
//! sends, acknowledgements, change-log appends and other callers' calls
//! interleave inside a call; a crash can land at any command boundary.
//!
//! Faults ([`FaultKind`]): power loss of the primary, the mirror or the
//! arbiter at command boundaries and inside change-log writes and
//! rewrites, disconnects, two partitions, torn writes, fsync errors and a
//! full disk on either side's data or on the change-log; and, armed at a
//! random step of the resync that repairs the pair ([`ResyncFault`]), a
//! crash of either segment (also inside the change-log write that clears
//! entries), of the arbiter and the recover tool, a disconnect, an fsync
//! error or a full disk on the mirror's data.
//!
//! Invariants, checked after healing and before repair, and again after a
//! resync's fault and at every resync checkpoint:
//! 1. every call that returned success is present on the acting primary
//!    (after a double fault, only changes a successful `sync` made durable
//!    are owed);
//! 2. never two writers in one generation (checked at every local change);
//! 3. every block and path that differs between the two segments, any of
//!    their live and durable images, is named by the acting primary's
//!    change-log (and, for its live image, its window);
//! 4. after repair both segments are byte-identical, live and durable.
//!
//! Liveness: every call returns, every resync finishes. A failure names
//! its seed and the command that replays it.

mod arbiter;
mod checks;
mod faults;
mod faulty;
pub mod leases;
mod mirror;
mod net;
mod primary;
mod resync;
mod rounds;
mod workload;
mod world;

pub use crate::core::PlantedBug;

use crate::io::disk::SimEntry;
use crate::protocol::path::{FsPath, RelPath};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

type Image = BTreeMap<(u16, String), SimEntry>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FileKind {
    Relation,
    Flat,
}

/// What the workload knows of the acting primary's namespace.
#[derive(Default)]
struct Model {
    files: BTreeMap<FsPath, FileKind>,
    dirs: BTreeSet<FsPath>,
    next_name: u64,
}

#[derive(Debug, Clone)]
pub struct SimFailure {
    pub seed: u64,
    pub step: u64,
    pub message: String,
    /// A fault-schedule run ([`run_faults`]) rather than the happy path.
    pub faults: bool,
    /// Further command-line flags the replay needs (a planted defect, a steady workload).
    pub flags: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (flag, test) = if self.faults { (" --faults", " fault") } else { ("", "") };
        write!(
            f,
            "simulation seed {} failed at step {}: {}\n  replay: cargo run --release --bin filerep -- sim{flag}{} --seed {}",
            self.seed, self.step, self.message, self.flags, self.seed
        )?;
        // The test replays the default schedules only.
        if self.flags.is_empty() {
            write!(f, "\n  or:     FILEREP_SIM_SEED={} cargo test --release --test simulation{test}", self.seed)?;
        }
        Ok(())
    }
}

/// Who a crash hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Victim {
    Primary,
    Mirror,
    Arbiter,
}

/// Where a crash lands: at a boundary between two commands of the
/// primary's engine, or inside a change-log write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Point {
    BeforeLocalWrite,
    AfterLocalWrite,
    BeforeSend,
    AfterSend,
    /// The mirror applied a batch and has not acknowledged it yet.
    BeforeAck,
    /// The primary took an acknowledgement (callers return).
    AfterAck,
    /// Inside a change-log append (a primary crash tears it or skips its fsync).
    ChangeLogWrite,
    /// Inside a change-log rewrite (retiring activity entries, a resync's final clear).
    Rewrite,
}

/// Where a disk fault is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The acting primary's data.
    Primary,
    /// The mirror's data.
    Mirror,
    /// The acting primary's change-log.
    ChangeLog,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    Crash(Victim, Point),
    /// The connection resets: both sides see it at once.
    Disconnect,
    /// Primary and mirror cannot reach each other; both reach the arbiter.
    PartitionPair,
    /// The primary reaches neither the mirror nor the arbiter.
    PartitionPrimary,
    /// A crash tore a write in flight (counted when a crash really tore one).
    TornWrite,
    FsyncError(Side),
    DiskFull(Side),
    /// A fault armed at a random step of the resync that repairs the pair.
    Resync(ResyncFault),
}

/// What can hit a resync (after the fault phase has healed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResyncFault {
    /// Power loss on the acting primary: the pair (resynchronizing) goes down.
    CrashPrimary,
    /// Power loss on the acting primary inside the change-log write of a
    /// checkpoint (Cleared records) or of the final clear.
    CrashPrimaryClearing,
    /// Power loss on the mirror being resynchronized.
    CrashMirror,
    /// The arbiter crashes, and with it the recover tool driving the
    /// resync: the resync is abandoned where it stands (the stream stays);
    /// the next `filerep recover` runs it again.
    CrashArbiter,
    Disconnect,
    /// The mirror's next fsync fails (rule 8: it faults).
    MirrorFsyncError,
    /// The mirror's next write finds its disk full.
    MirrorDiskFull,
}

impl ResyncFault {
    pub const ALL: [ResyncFault; 7] = [
        ResyncFault::CrashPrimary,
        ResyncFault::CrashPrimaryClearing,
        ResyncFault::CrashMirror,
        ResyncFault::CrashArbiter,
        ResyncFault::Disconnect,
        ResyncFault::MirrorFsyncError,
        ResyncFault::MirrorDiskFull,
    ];
}

impl FaultKind {
    /// Every kind the schedules can reach.
    pub fn all() -> Vec<FaultKind> {
        let mut v = Self::scheduled();
        v.push(FaultKind::TornWrite);
        v.extend(ResyncFault::ALL.map(FaultKind::Resync));
        v
    }

    /// The kinds a schedule picks from (a torn write comes with crashes).
    fn scheduled() -> Vec<FaultKind> {
        let mut v = Vec::new();
        for victim in [Victim::Primary, Victim::Mirror, Victim::Arbiter] {
            for point in [
                Point::BeforeLocalWrite,
                Point::AfterLocalWrite,
                Point::BeforeSend,
                Point::AfterSend,
                Point::BeforeAck,
                Point::AfterAck,
                Point::ChangeLogWrite,
                Point::Rewrite,
            ] {
                // The change-log is the primary's: a crash inside its writes is the primary's.
                if victim != Victim::Primary && matches!(point, Point::ChangeLogWrite | Point::Rewrite) {
                    continue;
                }
                v.push(FaultKind::Crash(victim, point));
            }
        }
        v.extend([FaultKind::Disconnect, FaultKind::PartitionPair, FaultKind::PartitionPrimary]);
        for side in [Side::Primary, Side::Mirror, Side::ChangeLog] {
            v.push(FaultKind::FsyncError(side));
            v.push(FaultKind::DiskFull(side));
        }
        v
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |s: &Side| match s {
            Side::Primary => "primary data",
            Side::Mirror => "mirror data",
            Side::ChangeLog => "change-log",
        };
        match self {
            FaultKind::Crash(v, p) => {
                let who = match v {
                    Victim::Primary => "primary",
                    Victim::Mirror => "mirror",
                    Victim::Arbiter => "arbiter",
                };
                let when = match p {
                    Point::BeforeLocalWrite => "before a local write",
                    Point::AfterLocalWrite => "after a local write",
                    Point::BeforeSend => "before a send",
                    Point::AfterSend => "after a send",
                    Point::BeforeAck => "before the mirror acknowledges",
                    Point::AfterAck => "after an acknowledgement",
                    Point::ChangeLogWrite => "during a change-log write",
                    Point::Rewrite => "during a change-log rewrite",
                };
                write!(f, "crash {who} {when}")
            }
            FaultKind::Disconnect => f.write_str("disconnect"),
            FaultKind::PartitionPair => f.write_str("partition: primary | mirror"),
            FaultKind::PartitionPrimary => f.write_str("partition: primary | mirror, arbiter"),
            FaultKind::TornWrite => f.write_str("torn write"),
            FaultKind::FsyncError(s) => write!(f, "fsync error on {}", side(s)),
            FaultKind::DiskFull(s) => write!(f, "full disk on {}", side(s)),
            FaultKind::Resync(r) => f.write_str(match r {
                ResyncFault::CrashPrimary => "resync: crash primary",
                ResyncFault::CrashPrimaryClearing => "resync: crash primary clearing the change-log",
                ResyncFault::CrashMirror => "resync: crash mirror",
                ResyncFault::CrashArbiter => "resync: crash arbiter (recover abandoned)",
                ResyncFault::Disconnect => "resync: disconnect",
                ResyncFault::MirrorFsyncError => "resync: fsync error on mirror data",
                ResyncFault::MirrorDiskFull => "resync: full disk on mirror data",
            }),
        }
    }
}

/// Knobs of one schedule.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    pub operations: usize,
    pub writers: usize,
    pub filespaces: u16,
    pub block_size: u32,
    /// Faults per schedule: 1..=this (0: none, the happy path).
    pub max_faults: usize,
    pub bug: Option<PlantedBug>,
    /// Namespace calls only in the first third of the schedule, data calls
    /// after (an OLTP-like steady state).
    pub steady: bool,
    /// While a resync runs, half the writers' calls rename files and
    /// directories (what the resync owes among them).
    pub rename_storm: bool,
    /// Half the writers' calls are queued ([`crate::core::primary::Wait::Queued`],
    /// as the mount makes them): they return once made and on their way,
    /// and only a later sync promises them.
    pub queued: bool,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            operations: 300,
            writers: 6,
            filespaces: 2,
            block_size: 8192,
            max_faults: 3,
            bug: None,
            steady: false,
            rename_storm: false,
            queued: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct FaultReport {
    /// Calls issued, and how many returned success.
    pub operations: usize,
    pub acked: usize,
    /// Faults that really fired.
    pub faults: BTreeMap<FaultKind, u64>,
    /// What the faults led to (failover, double fault, change tracking, ...).
    pub outcomes: BTreeMap<&'static str, u64>,
    pub virtual_ms: u64,
    /// What the resync engine did repairing the pair.
    pub resync: ResyncTotals,
    /// Commands the engine issued and events it was fed, by kind: what a
    /// run exercised.
    pub commands: BTreeMap<&'static str, u64>,
    pub events: BTreeMap<&'static str, u64>,
    /// Frames and bytes the primary sent, and frames by kind.
    pub frames: u64,
    pub wire_bytes: u64,
    pub frame_kinds: BTreeMap<&'static str, u64>,
    /// An arbiter invariant that failed while a primary asked it.
    arbiter_failure: Option<String>,
}

/// What the resync engine did in a schedule (or, summed, over many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncTotals {
    /// Runs of the engine, and how they ended.
    pub runs: u64,
    pub completed: u64,
    pub interrupted: u64,
    /// As the engine reports them, over completed runs.
    pub paths: u64,
    pub blocks: u64,
    pub bytes: u64,
    /// Blocks compare mode found equal on both sides (not shipped).
    pub compared_equal: u64,
    /// Extra passes over what renames moved while a resync still owed it.
    pub extra_passes: u64,
    /// Of which with new renames held.
    pub held_passes: u64,
    /// Calls the writers issued while a resync ran.
    pub concurrent_calls: u64,
}

impl ResyncTotals {
    pub fn add(&mut self, o: &ResyncTotals) {
        self.runs += o.runs;
        self.completed += o.completed;
        self.interrupted += o.interrupted;
        self.paths += o.paths;
        self.blocks += o.blocks;
        self.bytes += o.bytes;
        self.compared_equal += o.compared_equal;
        self.extra_passes += o.extra_passes;
        self.held_passes += o.held_passes;
        self.concurrent_calls += o.concurrent_calls;
    }
}

impl FaultReport {
    /// Add another run's counts (for a survey over many seeds).
    pub fn add(&mut self, o: &FaultReport) {
        self.operations += o.operations;
        self.acked += o.acked;
        for (k, v) in &o.faults {
            *self.faults.entry(*k).or_default() += v;
        }
        for (k, v) in &o.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in &o.commands {
            *self.commands.entry(k).or_default() += v;
        }
        for (k, v) in &o.events {
            *self.events.entry(k).or_default() += v;
        }
        for (k, v) in &o.frame_kinds {
            *self.frame_kinds.entry(k).or_default() += v;
        }
        self.frames += o.frames;
        self.wire_bytes += o.wire_bytes;
        self.virtual_ms += o.virtual_ms;
        self.resync.add(&o.resync);
    }
}

/// Run one fault schedule.
pub fn run_faults(seed: u64, cfg: &FaultConfig) -> Result<FaultReport, SimFailure> {
    let mut w = world::World::new(seed, cfg)?;
    w.run()?;
    Ok(w.report)
}

/// Knobs of a run with no faults.
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
    /// Frames shipped, by kind.
    pub kinds: BTreeMap<&'static str, u64>,
}

/// Run one seed with no faults: the pair must end byte-identical.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<SimReport, SimFailure> {
    let fc = FaultConfig {
        operations: cfg.operations,
        writers: cfg.writers,
        filespaces: cfg.filespaces,
        block_size: cfg.block_size,
        max_faults: 0,
        bug: None,
        steady: false,
        rename_storm: false,
        queued: false,
    };
    let r = run_faults(seed, &fc).map_err(|f| SimFailure { faults: false, ..f })?;
    Ok(SimReport {
        operations: r.operations,
        frames: r.frames,
        wire_bytes: r.wire_bytes,
        virtual_ms: r.virtual_ms,
        kinds: r.frame_kinds,
    })
}

/// The first difference between two images, said for a reader.
fn first_difference(a: &Image, b: &Image) -> Option<String> {
    for (k, v) in a {
        match b.get(k) {
            None => return Some(format!("fs{}:{} missing on the other", k.0, k.1)),
            Some(w) if w != v => return Some(format!("fs{}:{} has different contents", k.0, k.1)),
            _ => {}
        }
    }
    b.keys().find(|k| !a.contains_key(*k)).map(|k| format!("fs{}:{} exists only on the other", k.0, k.1))
}

#[cfg(test)]
mod tests;
