//! Fault schedules: one seed runs a pair (two segments) and its arbiter
//! through a random workload and injects faults at random moments, then
//! heals everything, checks the invariants and repairs the pair: with the
//! real resync engine, under writers and possibly one more fault, unless the
//! segment is down.
//!
//! What runs is real library code: the stream state machines
//! ([`PrimaryStream`], [`MirrorSession`]), the codec, the mirror's executor
//! ([`Applier`], [`SyncJob`]), the change-log ([`ChangeLog`]: activity-log
//! extents, exact records, group commit, compaction, replay, merge, resync
//! progress records), the resync engine ([`crate::runtime::resync::run_on`]) and the
//! arbiter's pair transitions ([`Pair`], checked with [`Pair::check`] after
//! every event). The primary's runtime rules (`src/primary.rs`: cover before
//! ship or write, the window, decide, change tracking, the resync's steps)
//! are modelled here, single-threaded, on a virtual clock; each segment has
//! a data disk and a change-log disk ([`SimDisk`]s behind [`FaultyDisk`]s).
//!
//! Faults ([`FaultKind`]): a crash of the primary, the mirror or the arbiter
//! at each point of an operation (before/after the local write, the send,
//! the acknowledgement; inside a change-log append; inside a compaction),
//! disconnects, two partitions, torn writes, fsync errors and a full disk on
//! either side's data or on the change-log; and, armed at a random step of
//! the resync ([`ResyncFault`]), a crash of the primary (also inside the
//! change-log write that clears entries), of the mirror, of the arbiter and
//! the recover tool, a disconnect, an fsync error or a full disk on the
//! mirror's data.
//!
//! Invariants, checked after healing and before repair, and again after a
//! resync's fault:
//! 1. every call that returned success is present on the acting primary
//!    (after a double fault, the segment is down: only changes a successful
//!    `sync` made durable are owed);
//! 2. never two writers in one generation (checked at every local write);
//! 3. every block and path that differs between the two segments, any of
//!    their live and durable images, is named by the acting primary's
//!    change set (merged with the old primary's after a failover); while a
//!    resync streams (after its checkpoints and its finish), by the
//!    change-log for the primary's durable image and by the change-log and
//!    the window for its live one: a checkpoint never clears what is not
//!    durable on both sides;
//! 4. after repair (a resync that completed, or a full copy of a segment
//!    that is down) both segments are byte-identical, live and durable.
//!
//! Layout: this file holds the types, the calls on the primary and the main
//! loop; [`workload`] the random calls, [`stream`] the replication stream,
//! [`segments`] crashes, the armed faults, the arbiter and change-log
//! upkeep, [`checks`] healing, the invariants and the full-copy repair,
//! [`resync`] the resync engine's link, its faults and what follows them,
//! and [`faulty`] the disk that fails on purpose.

mod checks;
mod faulty;
mod resync;
mod segments;
mod stream;
mod workload;

use super::{first_difference, FileKind, Link, Model, SimFailure};
use crate::core::mirror::{MirrorSession, Step};
use crate::core::pair::{Event, Outcome, Pair, PairMode, Verdict};
use crate::core::primary::{PrimaryStream, TimerAction};
use crate::durable::changelog::{ChangeLog, ChangeLogError, ChangeSet, EXTENT_BLOCKS};
use crate::io::disk::{Disk, DiskErrorKind, DiskFile, DiskResult, FsPath, OpenMode, SimDisk, SimEntry};
use crate::protocol::path::RelPath;
use crate::protocol::{body_hash, Ack, Decoder, Frame, Header, Kind, FLAG_DURABLE, MAX_WRITE_AT};
use crate::runtime::apply::{Applier, Sequenced, SyncJob};
use bytes::Bytes;
use faulty::{FaultyDisk, Fired};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use workload::{CallState, Done, Issued, OpSpec, Waiting};

/// Virtual milliseconds (one per step).
const HEARTBEAT_MS: u64 = 20;
const ACK_TIMEOUT_MS: u64 = 150;
const DECISION_TIMEOUT_MS: u64 = 100;
const PROBE_EVERY_MS: u64 = 25;
/// The mirror daemon's periodic checkpoint, in virtual time.
const MIRROR_CHECKPOINT_MS: u64 = 100;
/// An armed fault whose moment never came is dropped after this long.
const FAULT_EXPIRES_MS: u64 = 600;

type Image = BTreeMap<(u16, String), SimEntry>;

/// Who a crash hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Victim {
    Primary,
    Mirror,
    Arbiter,
}

/// When a crash hits, in the life of one operation (or of the change-log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Point {
    BeforeLocalWrite,
    AfterLocalWrite,
    BeforeSend,
    AfterSend,
    /// The mirror applied a batch and has not acknowledged it yet.
    BeforeAck,
    /// The primary accepted an acknowledgement (callers return).
    AfterAck,
    /// Inside a change-log append (a primary crash tears it or skips its fsync).
    ChangeLogWrite,
    /// Inside a change-log compaction (a primary crash lands between its steps).
    Compaction,
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

/// What can hit a resync (after the fault phase has healed): armed at a
/// random call of the engine on the link, it fires a few virtual
/// milliseconds later, wherever the resync then is.
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
                Point::Compaction,
            ] {
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
                    Point::BeforeLocalWrite => "before the local write",
                    Point::AfterLocalWrite => "after the local write",
                    Point::BeforeSend => "before the send",
                    Point::AfterSend => "after the send",
                    Point::BeforeAck => "before the ack",
                    Point::AfterAck => "after the ack",
                    Point::ChangeLogWrite => "during a change-log write",
                    Point::Compaction => "during compaction",
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

/// A deliberate defect, for tests that the invariant checks catch it. Two
/// are rules of the runtime as it stands, which the simulator found wanting
/// (the simulator itself follows the corrected rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// In change tracking, block writes are not recorded (`record_block` skipped).
    SkipRecordBlock,
    /// While streaming, changes are not covered in the activity log first.
    SkipActivityCover,
    /// A data write returns once written locally, without waiting for the mirror.
    AckWithoutMirror,
    /// A mirror whose primary went away starts taking writes itself, in the same generation.
    SelfPromote,
    /// Activity-log entries are dropped without first making the primary's
    /// own writes durable: `ActivityLog` retiring entries once the mirror
    /// has them durably (`src/activity.rs` today), or `ChangeLog::compact`
    /// after streaming (it keeps only extents recovered from a crash).
    DropActivityWithoutLocalSync,
    /// A local `sync`/`flush` fdatasyncs the file but no directory, so a file
    /// created or renamed since loses its name in a power loss: what
    /// `src/primary.rs` does today.
    SyncWithoutDirectory,
    /// The repair copy is never made durable on the peer.
    RepairWithoutSync,
    /// A resync copy is read, then the file is let go before the copy is
    /// queued: a write in between is queued before the older copy, and the
    /// mirror goes back in time (rule 6).
    ResyncCopyWithoutLock,
    /// A resync checkpoint clears its entries once the mirror has applied
    /// the flush, not synced it: a mirror crash then loses copies no log names.
    ResyncCheckpointBeforeSynced,
    /// Calls during a resync are not flagged as catching up (what the
    /// runtime did): the mirror lacks a path the resync has still to
    /// reconcile (or has another kind of entry there), refuses the call
    /// and ends the session, so the resync cannot finish while writers
    /// touch such paths.
    ResyncWithoutCatchingUp,
    /// A rename during a resync of a path it still owes is not recorded for
    /// another pass (what the runtime did): the mirror's stale copy moves to
    /// a name the resync never visits, and the final clear forgets it.
    ResyncRenameWithoutAnotherPass,
    /// A resync's checkpoint and its final clear also drop the activity
    /// log's entries (what the runtime did): writes streamed meanwhile,
    /// not yet durable on both sides, are then named nowhere.
    ResyncClearDropsActivity,
    /// A resync clears entries once the mirror has them durably, without
    /// first making the primary's own copy durable (what the runtime did):
    /// a change made in change tracking, still in the primary's page cache,
    /// is lost in a crash and named nowhere.
    ResyncClearWithoutLocalSync,
    /// Taking the mirror back pins nothing and keeps the activity table
    /// (what the runtime did): an entry hot before the loss retires against
    /// the new stream's acknowledgements, and takes with it the exact record
    /// change tracking made of the same path.
    RetireDropsTrackedPaths,
}

impl PlantedBug {
    /// Every defect with its name on the command line (`filerep sim --faults --bug NAME`).
    pub const ALL: [(PlantedBug, &'static str); 14] = [
        (PlantedBug::SkipRecordBlock, "skip-record-block"),
        (PlantedBug::SkipActivityCover, "skip-activity-cover"),
        (PlantedBug::AckWithoutMirror, "ack-without-mirror"),
        (PlantedBug::SelfPromote, "self-promote"),
        (PlantedBug::DropActivityWithoutLocalSync, "drop-activity-without-local-sync"),
        (PlantedBug::SyncWithoutDirectory, "sync-without-directory"),
        (PlantedBug::RepairWithoutSync, "repair-without-sync"),
        (PlantedBug::ResyncCopyWithoutLock, "resync-copy-without-lock"),
        (PlantedBug::ResyncCheckpointBeforeSynced, "resync-checkpoint-before-synced"),
        (PlantedBug::ResyncWithoutCatchingUp, "resync-without-catching-up"),
        (PlantedBug::ResyncRenameWithoutAnotherPass, "resync-rename-without-another-pass"),
        (PlantedBug::ResyncClearDropsActivity, "resync-clear-drops-activity"),
        (PlantedBug::ResyncClearWithoutLocalSync, "resync-clear-without-local-sync"),
        (PlantedBug::RetireDropsTrackedPaths, "retire-drops-tracked-paths"),
    ];
}

impl std::str::FromStr for PlantedBug {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().find(|(_, name)| *name == s).map(|(b, _)| *b).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|(_, n)| *n).collect();
            format!("unknown defect {s:?}; one of {}", names.join(", "))
        })
    }
}

/// Knobs of one fault schedule.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    pub operations: usize,
    pub writers: usize,
    pub filespaces: u16,
    pub block_size: u32,
    /// Faults per schedule: 1..=this.
    pub max_faults: usize,
    pub bug: Option<PlantedBug>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig { operations: 300, writers: 6, filespaces: 2, block_size: 8192, max_faults: 3, bug: None }
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
}

/// What the resync engine did in a schedule (or, summed, over many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncTotals {
    /// Runs of the engine, and how they ended.
    pub runs: u64,
    pub completed: u64,
    pub interrupted: u64,
    /// As the engine reports them (`ResyncReport`), over completed runs.
    pub paths: u64,
    pub blocks: u64,
    pub bytes: u64,
    /// Blocks compare mode found equal on both sides (not shipped).
    pub compared_equal: u64,
    /// Extra passes over paths renamed while a resync still owed them.
    pub extra_passes: u64,
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
        self.concurrent_calls += o.concurrent_calls;
    }
}

// ---- the state of a schedule -----------------------------------------------

/// What a shipped operation changed (the window; `src/primary.rs` keeps the same).
#[derive(Clone, Debug)]
enum Change {
    Blocks { path: FsPath, first: u64, last: u64 },
    Touched { path: FsPath, subtree: bool },
}

/// An activity-log entry of a streaming primary.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Hot {
    Extent(FsPath, u64),
    Path(FsPath),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    Streaming,
    Deciding {
        answer_at: u64,
        verdict: Option<Verdict>,
    },
    Tracking,
    /// Calls fail: demoted, no answer, or the change-log cannot be written.
    Failed(String),
    /// A local write or fsync failed (rule 8): calls fail.
    Faulted(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    Down {
        restart_at: u64,
    },
    /// Back after a crash; writes nothing until the arbiter has heard of the restart (rule 7).
    Restarted,
    Mirror {
        gen: u64,
        faulted: bool,
        /// The mirror the primary streamed to; only it may be promoted.
        in_sync: bool,
    },
    Primary {
        gen: u64,
        mode: Mode,
    },
    /// The segment is down (double fault): nothing is written anywhere.
    Halted,
}

struct Node {
    dbid: u32,
    data_sim: Arc<SimDisk>,
    data: Arc<FaultyDisk>,
    log_sim: Arc<SimDisk>,
    log_io: Arc<FaultyDisk>,
    log: Option<ChangeLog>,
    role: Role,
    reaches_arbiter: bool,
    /// Activity-log entries: last sequence number shipped under each (0: none yet).
    hot: BTreeMap<Hot, u64>,
    /// Directories whose entries changed since the last local sync, as
    /// handles (they follow renames), like the mirror's `Applier` keeps.
    dirty_dirs: Vec<Arc<dyn DiskFile>>,
}

struct Session {
    primary: usize,
    mirror: usize,
    stream: PrimaryStream,
    /// Shipped, not yet durable on the mirror.
    window: VecDeque<(u64, Change)>,
    to_mirror: Link,
    to_primary: Link,
    mirror_dec: Decoder,
    primary_dec: Decoder,
    session: MirrorSession,
    applier: Applier,
    sync_jobs: VecDeque<SyncJob>,
    /// The mirror's real watermarks (acknowledgements may not claim more).
    received: u64,
    synced: u64,
    durable: u64,
    primary_on: bool,
    mirror_on: bool,
    /// Each side closed the connection: the other sees it after the bytes in flight.
    primary_closed: bool,
    mirror_closed: bool,
    /// Partitioned: everything sent is lost.
    cut: bool,
    mirror_heard: u64,
    shutdown_seen: bool,
    /// Which session this is (a resync run is bound to the one it started on).
    id: u64,
    /// Hash requests shipped and not yet answered (sequence number, blocks),
    /// and the answers that came.
    hash_wanted: BTreeMap<u64, u32>,
    hash_answers: BTreeMap<u64, Vec<u64>>,
    /// When the mirror last asked for a full checkpoint (the daemon's periodic one).
    last_full: u64,
    /// A resync's stream: the mirror is not in sync yet.
    resync: bool,
}

impl Session {
    /// A new stream from `primary` to `mirror`, sequence numbers from 1.
    fn new(primary: usize, mirror: usize, mirror_disk: Arc<dyn Disk>, cfg: &FaultConfig, now: u64, id: u64) -> Session {
        Session {
            primary,
            mirror,
            stream: PrimaryStream::new(1, now, HEARTBEAT_MS, ACK_TIMEOUT_MS),
            window: VecDeque::new(),
            to_mirror: Link::new(),
            to_primary: Link::new(),
            mirror_dec: Decoder::new(),
            primary_dec: Decoder::new(),
            session: MirrorSession::new(cfg.block_size, cfg.filespaces, 1),
            applier: Applier::new(mirror_disk, 1),
            sync_jobs: VecDeque::new(),
            received: 0,
            synced: 0,
            durable: 0,
            primary_on: true,
            mirror_on: true,
            primary_closed: false,
            mirror_closed: false,
            cut: false,
            mirror_heard: now,
            shutdown_seen: false,
            id,
            hash_wanted: BTreeMap::new(),
            hash_answers: BTreeMap::new(),
            last_full: now,
            resync: id > 1,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Armed {
    kind: FaultKind,
    node: usize,
    until: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DiskOf {
    Data,
    Log,
}

struct FaultSim {
    seed: u64,
    cfg: FaultConfig,
    bs: u64,
    log_path: FsPath,
    rng: ChaCha8Rng,
    now: u64,
    step: u64,
    nodes: Vec<Node>,
    session: Option<Session>,
    pair: Pair,
    arbiter_up: bool,
    arbiter_back_at: u64,
    partition_heal_at: Option<u64>,
    model: Model,
    /// The segment whose namespace `model` describes.
    model_node: Option<usize>,
    kind_hints: BTreeMap<FsPath, FileKind>,
    writers: Vec<Option<Waiting>>,
    ops: Vec<Issued>,
    writer_of_gen: BTreeMap<u64, u32>,
    schedule: VecDeque<(usize, FaultKind)>,
    armed: Option<Armed>,
    report: FaultReport,
    /// Writers issue calls until this many were issued (raised while a resync runs).
    op_limit: usize,
    /// The last session id handed out.
    sessions: u64,
    /// The old primary's change set was handed over (once per schedule).
    handed_over: bool,
    /// The fault armed for the resync, if any, and where the resync is.
    resync_fault: Option<resync::Pending>,
    resync_step: Option<resync::Step>,
    /// While a resync runs: what it set out to ship (writers keep off its paths).
    resync_plan: Option<ChangeSet>,
    /// The running resync is a full one (`Primary::resync_full`).
    resync_full: bool,
    /// The plan's blocks, for writers to aim at.
    resync_targets: Vec<(FsPath, u64)>,
    /// Why a resync's mirror refused an operation, if it did.
    mirror_refusal: Option<String>,
}

impl FaultSim {
    fn fail(&self, message: impl Into<String>) -> SimFailure {
        SimFailure { seed: self.seed, step: self.step, message: message.into(), faults: true }
    }

    fn outcome(&mut self, what: &'static str) {
        tracing::debug!(seed = self.seed, step = self.step, now = self.now, what, "sim: outcome");
        *self.report.outcomes.entry(what).or_default() += 1;
    }

    fn count(&mut self, kind: FaultKind) {
        tracing::debug!(seed = self.seed, step = self.step, now = self.now, fault = %kind, "sim: fault fired");
        *self.report.faults.entry(kind).or_default() += 1;
        if let FaultKind::Resync(_) = kind {
            self.resync_fault_fired();
        }
    }

    fn rel(&self, s: &str) -> Result<RelPath, SimFailure> {
        RelPath::new(s).map_err(|e| self.fail(format!("path {s:?}: {e}")))
    }

    fn accepting(&self, n: usize) -> bool {
        match &self.nodes[n].role {
            Role::Primary { mode: Mode::Tracking, .. } => true,
            Role::Primary { mode: Mode::Streaming, .. } => {
                self.session.as_ref().is_some_and(|s| s.primary == n && s.primary_on)
            }
            _ => false,
        }
    }

    fn is_primary(&self, n: usize) -> bool {
        matches!(self.nodes[n].role, Role::Primary { .. })
    }

    fn gen_of(&self, n: usize) -> u64 {
        match &self.nodes[n].role {
            Role::Primary { gen, .. } | Role::Mirror { gen, .. } => *gen,
            _ => 0,
        }
    }

    fn set_mode(&mut self, n: usize, mode: Mode) {
        if let Role::Primary { mode: m, .. } = &mut self.nodes[n].role {
            *m = mode;
        }
    }

    fn node_of(&self, dbid: u32) -> Result<usize, SimFailure> {
        self.nodes.iter().position(|x| x.dbid == dbid).ok_or_else(|| self.fail(format!("no segment {dbid}")))
    }

    fn seg_up(&self, n: usize) -> bool {
        let dbid = self.nodes[n].dbid;
        self.pair.segments.iter().any(|s| s.dbid == dbid && s.up)
    }

    // ---- writers and their calls ------------------------------------------

    fn ack_op(&mut self, op: usize) {
        if self.ops[op].state == CallState::Pending {
            self.ops[op].state = CallState::Acked;
            self.report.acked += 1;
        }
    }

    /// Every call waiting on segment `n` returns: `ok` or an error.
    fn finish_writers(&mut self, n: usize, ok: bool) {
        for w in 0..self.writers.len() {
            if let Some(wt) = self.writers[w] {
                if wt.node == n {
                    self.writers[w] = None;
                    if ok {
                        self.ack_op(wt.op);
                    } else {
                        self.ops[wt.op].state = CallState::Failed;
                    }
                }
            }
        }
    }

    fn writers_step(&mut self) -> Result<(), SimFailure> {
        for w in 0..self.writers.len() {
            if self.ops.len() >= self.op_limit {
                break;
            }
            if self.writers[w].is_some() || !self.rng.gen_bool(0.5) {
                continue;
            }
            self.arm_due()?;
            let open: Vec<usize> = (0..self.nodes.len()).filter(|&n| self.accepting(n)).collect();
            if open.is_empty() {
                break;
            }
            let n = open[self.rng.gen_range(0..open.len())];
            self.issue(w, n)?;
        }
        Ok(())
    }

    fn issue(&mut self, w: usize, n: usize) -> Result<(), SimFailure> {
        if self.model_node != Some(n) {
            self.rebuild_model(n)?;
        }
        let spec = match self.hammer() {
            Some(spec) => Some(spec),
            None => self.generate(n)?,
        };
        let Some(spec) = spec else { return Ok(()) };
        let idx = self.ops.len();
        self.ops.push(Issued { spec: spec.clone(), state: CallState::Pending });
        let streaming = matches!(self.nodes[n].role, Role::Primary { mode: Mode::Streaming, .. });
        let done = if streaming {
            let strict = self.rng.gen_bool(0.1);
            self.exec_streaming(n, &spec, strict)?
        } else {
            self.exec_tracking(n, &spec)?
        };
        let (seed, step, segment) = (self.seed, self.step, self.nodes[n].dbid);
        tracing::trace!(seed, step, call = idx, segment, streaming, op = ?spec, ?done, "sim: call");
        match done {
            Done::Acked => self.ack_op(idx),
            Done::Wait { seq, synced } => self.writers[w] = Some(Waiting { op: idx, node: n, seq, synced }),
            Done::Failed => self.ops[idx].state = CallState::Failed,
        }
        Ok(())
    }

    // ---- executing a call on the primary ----------------------------------

    fn blocks_of(&self, offset: u64, len: u64) -> (u64, u64) {
        (offset / self.bs, (offset + len.max(1) - 1) / self.bs)
    }

    /// While streaming (rule 5): cover, ship, write locally, wait for the level.
    fn exec_streaming(&mut self, n: usize, spec: &OpSpec, strict: bool) -> Result<Done, SimFailure> {
        if self.cfg.bug != Some(PlantedBug::SkipActivityCover) {
            let covered = match spec {
                OpSpec::Block { p, block, .. } => self.cover_blocks(n, p, *block, *block)?,
                OpSpec::WriteAt { p, offset, data } => {
                    let (first, last) = self.blocks_of(*offset, data.len() as u64);
                    self.cover_blocks(n, p, first, last)?
                }
                OpSpec::Sync { .. } => true,
                OpSpec::Create(p) | OpSpec::Truncate { p, .. } | OpSpec::Unlink(p) => self.cover_path(n, p, false)?,
                OpSpec::Mkdir(p) | OpSpec::Rmdir(p) => self.cover_path(n, p, true)?,
                OpSpec::Rename { from, to } => self.cover_path(n, from, true)? && self.cover_path(n, to, true)?,
            };
            if !covered {
                return Ok(Done::Failed);
            }
        }
        // `Primary::rename` during a resync: a path it still owes moves
        // where it may never look, so the target is owed another pass.
        if let OpSpec::Rename { from, to } = spec {
            let resyncing = self.session.as_ref().is_some_and(|s| s.resync && s.primary == n);
            if resyncing && self.cfg.bug != Some(PlantedBug::ResyncRenameWithoutAnotherPass) {
                let all = self.resync_full;
                if !self.log_call(n, |log| log.redo_if_owed(from, to, all).map(|_| ()))? {
                    return Ok(Done::Failed);
                }
            }
        }
        match spec {
            // Data writes ship first and write locally while the frame travels.
            OpSpec::Block { .. } | OpSpec::WriteAt { .. } => {
                if !self.hook(Point::BeforeSend, n)? {
                    return Ok(Done::Failed);
                }
                let seq = self.ship_data(n, spec, strict)?;
                if !self.hook(Point::AfterSend, n)? || !self.hook(Point::BeforeLocalWrite, n)? {
                    return Ok(Done::Failed);
                }
                if !self.local(n, spec)? || !self.hook(Point::AfterLocalWrite, n)? {
                    return Ok(Done::Failed);
                }
                if self.cfg.bug == Some(PlantedBug::AckWithoutMirror) {
                    return Ok(Done::Acked);
                }
                Ok(Done::Wait { seq, synced: strict })
            }
            OpSpec::Sync { p, flat } => {
                if !self.hook(Point::BeforeSend, n)? {
                    return Ok(Done::Failed);
                }
                let seq =
                    self.ship_op(p, Header::new(if *flat { Kind::Flush } else { Kind::Sync }), Bytes::new(), false)?;
                if !self.hook(Point::AfterSend, n)? || !self.local(n, spec)? {
                    return Ok(Done::Failed);
                }
                Ok(Done::Wait { seq, synced: true })
            }
            // Namespace operations change locally first, then ship.
            _ => {
                if !self.hook(Point::BeforeLocalWrite, n)? {
                    return Ok(Done::Failed);
                }
                if !self.local(n, spec)?
                    || !self.hook(Point::AfterLocalWrite, n)?
                    || !self.hook(Point::BeforeSend, n)?
                {
                    return Ok(Done::Failed);
                }
                let seq = self.ship_namespace(n, spec, strict)?;
                if !self.hook(Point::AfterSend, n)? {
                    return Ok(Done::Failed);
                }
                Ok(Done::Wait { seq, synced: strict })
            }
        }
    }

    /// In change tracking (rule 4): record durably, then change locally; nothing waits for a mirror.
    fn exec_tracking(&mut self, n: usize, spec: &OpSpec) -> Result<Done, SimFailure> {
        let skip = self.cfg.bug == Some(PlantedBug::SkipRecordBlock);
        let recorded = match spec {
            OpSpec::Block { .. } | OpSpec::WriteAt { .. } if skip => true,
            OpSpec::Block { p, block, .. } => self.log_call(n, |log| log.record_block(p, *block))?,
            OpSpec::WriteAt { p, offset, data } => {
                let (first, last) = self.blocks_of(*offset, data.len() as u64);
                let blocks: Vec<(FsPath, u64)> = (first..=last).map(|b| (p.clone(), b)).collect();
                self.log_call(n, |log| log.record_batch(blocks, std::iter::empty()))?
            }
            OpSpec::Sync { .. } => true,
            OpSpec::Create(p) | OpSpec::Truncate { p, .. } | OpSpec::Unlink(p) => {
                self.log_call(n, |log| log.record_touched(p, false))?
            }
            OpSpec::Mkdir(p) | OpSpec::Rmdir(p) => self.log_call(n, |log| log.record_touched(p, true))?,
            OpSpec::Rename { from, to } => {
                let touched = [(from.clone(), true), (to.clone(), true)];
                self.log_call(n, |log| log.record_batch(std::iter::empty(), touched))?
            }
        };
        if !recorded {
            return Ok(Done::Failed);
        }
        if matches!(spec, OpSpec::Sync { .. }) {
            return Ok(if self.local(n, spec)? { Done::Acked } else { Done::Failed });
        }
        if !self.hook(Point::BeforeLocalWrite, n)? || !self.local(n, spec)? || !self.hook(Point::AfterLocalWrite, n)? {
            return Ok(Done::Failed);
        }
        Ok(Done::Acked)
    }

    /// Activity log: a newly hot extent is recorded durably before anything is shipped or written.
    fn cover_blocks(&mut self, n: usize, p: &FsPath, first: u64, last: u64) -> Result<bool, SimFailure> {
        let mut new = false;
        for e in first / EXTENT_BLOCKS..=last / EXTENT_BLOCKS {
            self.nodes[n].hot.entry(Hot::Extent(p.clone(), e)).or_insert_with(|| {
                new = true;
                0
            });
        }
        if !new {
            return Ok(true);
        }
        self.log_call(n, |log| log.record_extents(p, first, last))
    }

    fn cover_path(&mut self, n: usize, p: &FsPath, subtree: bool) -> Result<bool, SimFailure> {
        self.nodes[n].hot.entry(Hot::Path(p.clone())).or_insert(0);
        self.log_call(n, |log| log.record_touched(p, subtree))
    }

    /// A change-log call on segment `n`. `Ok(false)`: the call must fail
    /// (the log cannot be written, or the segment lost power inside it).
    fn log_call<F>(&mut self, n: usize, f: F) -> Result<bool, SimFailure>
    where
        F: FnOnce(&ChangeLog) -> Result<(), ChangeLogError>,
    {
        let Some(log) = self.nodes[n].log.as_ref() else {
            return Err(self.fail(format!("segment {} has no change-log", self.nodes[n].dbid)));
        };
        let before = self.nodes[n].log_io.mutations();
        let r = f(log);
        if self.nodes[n].log_io.power_lost() {
            self.crash_node(n)?;
            return Ok(false);
        }
        let wrote = self.nodes[n].log_io.mutations() > before;
        if let Err(e) = r {
            // Rule 8: after a failed append the change-log claims nothing
            // more, or a record could be reported durable that is not.
            let probe = FsPath::new(0, self.rel("rule-8-probe")?);
            if self.nodes[n].log.as_ref().is_some_and(|log| log.record_touched(&probe, false).is_ok()) {
                return Err(self.fail(format!("rule 8: the change-log recorded durably after a failure ({e})")));
            }
            // Never retried: the segment needs a full resync.
            self.outcome("change-log failed");
            self.stop_primary(
                n,
                Mode::Failed(format!("the change-log cannot be written ({e}); the segment needs a full resync")),
            );
            return Ok(false);
        }
        if wrote && !self.hook(Point::ChangeLogWrite, n)? {
            return Ok(false);
        }
        Ok(true)
    }

    /// The local change on segment `n`'s data. `Ok(false)`: the call fails.
    fn local(&mut self, n: usize, spec: &OpSpec) -> Result<bool, SimFailure> {
        let disk = self.nodes[n].data.clone();
        let fired = disk.fired_total();
        let bs = self.bs;
        let r: DiskResult<()> = (|| match spec {
            OpSpec::Create(p) => disk.open(p, OpenMode::CreateNew).map(drop),
            OpSpec::Block { p, block, fill, .. } => {
                disk.open(p, OpenMode::Existing)?.write_at(block * bs, &vec![*fill; bs as usize])
            }
            OpSpec::WriteAt { p, offset, data } => disk.open(p, OpenMode::Existing)?.write_at(*offset, data),
            OpSpec::Sync { p, .. } => {
                disk.open(p, OpenMode::Existing)?.sync_data()?;
                if self.cfg.bug == Some(PlantedBug::SyncWithoutDirectory) {
                    return Ok(());
                }
                // The names must survive too: a file created or renamed
                // since the last directory fsync would otherwise vanish (or
                // revert to an older file) in a power loss, synced data and
                // all. A rename needs both directories.
                for d in &self.nodes[n].dirty_dirs {
                    d.sync_data()?;
                }
                Ok(())
            }
            OpSpec::Truncate { p, len } => disk.open(p, OpenMode::Existing)?.set_len(*len),
            OpSpec::Unlink(p) => disk.remove_file(p),
            OpSpec::Mkdir(p) => disk.create_dir(p),
            OpSpec::Rmdir(p) => disk.remove_dir(p),
            OpSpec::Rename { from, to } => disk.rename(from, to),
        })();
        match r {
            Ok(()) => {
                if matches!(spec, OpSpec::Sync { .. }) {
                    if self.cfg.bug != Some(PlantedBug::SyncWithoutDirectory) {
                        self.nodes[n].dirty_dirs.clear();
                    }
                } else {
                    self.record_writer(n)?;
                    self.model_apply(spec);
                }
                let changed: Vec<&FsPath> = match spec {
                    OpSpec::Create(p) | OpSpec::Unlink(p) | OpSpec::Mkdir(p) | OpSpec::Rmdir(p) => vec![p],
                    OpSpec::Rename { from, to } => vec![from, to],
                    _ => Vec::new(),
                };
                for p in changed {
                    let h = disk.parent_dir_handle(p).map_err(|e| self.fail(format!("directory of {p}: {e}")))?;
                    self.nodes[n].dirty_dirs.push(h);
                }
                Ok(true)
            }
            Err(e) if disk.fired_total() > fired => {
                // Rule 8: a failed local write or fsync faults the segment.
                self.outcome("primary faulted");
                self.stop_primary(n, Mode::Faulted(format!("local {}: {e}", spec.name())));
                Ok(false)
            }
            Err(e) if matches!(spec, OpSpec::Rename { .. }) && e.kind == DiskErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.fail(format!("segment {} {}: {e}", self.nodes[n].dbid, spec.name()))),
        }
    }

    /// Invariant 2: one writer per generation.
    fn record_writer(&mut self, n: usize) -> Result<(), SimFailure> {
        let (gen, dbid) = (self.gen_of(n), self.nodes[n].dbid);
        match self.writer_of_gen.get(&gen) {
            Some(&other) if other != dbid => {
                Err(self
                    .fail(format!("invariant 2: generation {gen} has two writers: segment {other} and segment {dbid}")))
            }
            _ => {
                self.writer_of_gen.insert(gen, dbid);
                Ok(())
            }
        }
    }

    /// Stop a primary: calls fail, nothing more is shipped.
    fn stop_primary(&mut self, n: usize, mode: Mode) {
        tracing::debug!(seed = self.seed, step = self.step, segment = self.nodes[n].dbid, ?mode, "sim: primary stops");
        self.set_mode(n, mode);
        self.finish_writers(n, false);
        if let Some(s) = self.session.as_mut() {
            if s.primary == n && s.primary_on {
                s.primary_on = false;
                s.primary_closed = true;
                s.to_primary.queue.clear();
            }
        }
        self.drop_session_if_done();
    }

    // ---- the main loop -------------------------------------------------------

    /// Everything but the writers, for one virtual millisecond.
    fn tick(&mut self) -> Result<(), SimFailure> {
        if self.partition_heal_at.is_some_and(|t| self.now >= t) {
            self.partition_heal_at = None;
            for node in &mut self.nodes {
                node.reaches_arbiter = true;
            }
        }
        if let Some(a) = self.armed {
            if self.now >= a.until {
                self.nodes[a.node].data.disarm();
                self.nodes[a.node].log_io.disarm();
                self.armed = None;
            }
        }
        for n in 0..self.nodes.len() {
            if let Role::Down { restart_at } = self.nodes[n].role {
                if self.now >= restart_at {
                    self.nodes[n].role = Role::Restarted;
                }
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
        self.timers()?;
        self.decisions();
        self.arbiter_step()?;
        self.compaction_step()?;
        for n in 0..self.nodes.len() {
            self.drain_fired(n);
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), SimFailure> {
        let limit = self.cfg.operations as u64 * 200 + 20_000;
        while self.ops.len() < self.cfg.operations && !self.pair.down {
            self.step += 1;
            if self.step > limit {
                return Err(self.fail(format!(
                    "no progress: {} of {} calls issued",
                    self.ops.len(),
                    self.cfg.operations
                )));
            }
            self.writers_step()?;
            self.tick()?;
            self.now += 1;
        }
        self.settle()?;
        self.check_and_repair()?;
        self.report.operations = self.ops.len();
        self.report.virtual_ms = self.now;
        Ok(())
    }
}

/// Run one fault schedule.
pub fn run_faults(seed: u64, cfg: &FaultConfig) -> Result<FaultReport, SimFailure> {
    let failure = |message: String| SimFailure { seed, step: 0, message, faults: true };
    let log_path = FsPath::new(0, RelPath::new("changelog").map_err(|e| failure(e.to_string()))?);
    let node = |dbid: u32, role: Role| {
        let data_sim = Arc::new(SimDisk::new(cfg.filespaces));
        let log_sim = Arc::new(SimDisk::new(1));
        Node {
            dbid,
            data: FaultyDisk::new(data_sim.clone()),
            data_sim,
            log_io: FaultyDisk::new(log_sim.clone()),
            log_sim,
            log: None,
            role,
            reaches_arbiter: true,
            hot: BTreeMap::new(),
            dirty_dirs: Vec::new(),
        }
    };
    let mut nodes = vec![
        node(1, Role::Primary { gen: 1, mode: Mode::Streaming }),
        node(2, Role::Mirror { gen: 1, faulted: false, in_sync: true }),
    ];
    let io: Arc<dyn Disk> = nodes[0].log_io.clone();
    nodes[0].log = Some(ChangeLog::create(io, log_path.clone(), cfg.block_size).map_err(|e| failure(e.to_string()))?);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kinds = FaultKind::scheduled();
    let ops = cfg.operations.max(8);
    let mut schedule: Vec<(usize, FaultKind)> = (0..rng.gen_range(1..=cfg.max_faults.max(1)))
        .map(|_| (rng.gen_range(ops / 8..ops * 7 / 8), kinds[rng.gen_range(0..kinds.len())]))
        .collect();
    schedule.sort_by_key(|(at, _)| *at);
    let session = Session::new(0, 1, nodes[1].data.clone(), cfg, 0, 1);
    let mut sim = FaultSim {
        seed,
        cfg: cfg.clone(),
        bs: cfg.block_size as u64,
        log_path,
        rng,
        now: 0,
        step: 0,
        nodes,
        session: Some(session),
        pair: Pair::new(0, 1, 2),
        arbiter_up: true,
        arbiter_back_at: 0,
        partition_heal_at: None,
        model: Model::default(),
        model_node: None,
        kind_hints: BTreeMap::new(),
        writers: vec![None; cfg.writers.max(1)],
        ops: Vec::new(),
        writer_of_gen: BTreeMap::new(),
        schedule: schedule.into(),
        armed: None,
        report: FaultReport::default(),
        op_limit: cfg.operations,
        sessions: 1,
        handed_over: false,
        resync_fault: None,
        resync_step: None,
        resync_plan: None,
        resync_full: false,
        resync_targets: Vec::new(),
        mirror_refusal: None,
    };
    sim.run()?;
    Ok(sim.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first seed in `0..limit` on which `bug` breaks `invariant`; that
    /// seed must pass without the bug, so the failure is the bug's doing.
    fn caught(bug: PlantedBug, invariant: &str, limit: u64) -> u64 {
        let cfg = FaultConfig { bug: Some(bug), ..FaultConfig::default() };
        for seed in 0..limit {
            if let Err(f) = run_faults(seed, &cfg) {
                assert!(f.message.starts_with(invariant), "{bug:?} broke something else first: {f}");
                assert!(
                    f.faults && f.to_string().contains("--faults --seed"),
                    "the replay names the fault simulation: {f}"
                );
                if let Err(clean) = run_faults(seed, &FaultConfig::default()) {
                    panic!("seed {seed} fails without {bug:?} too: {clean}");
                }
                return seed;
            }
        }
        panic!("{bug:?} went unnoticed over {limit} seeds");
    }

    #[test]
    fn a_primary_that_skips_record_block_breaks_invariant_3() {
        caught(PlantedBug::SkipRecordBlock, "invariant 3", 300);
    }

    #[test]
    fn a_primary_that_skips_the_activity_log_breaks_invariant_3() {
        caught(PlantedBug::SkipActivityCover, "invariant 3", 300);
    }

    #[test]
    fn dropping_activity_entries_before_local_durability_breaks_invariant_3() {
        caught(PlantedBug::DropActivityWithoutLocalSync, "invariant 3", 300);
    }

    #[test]
    fn acknowledging_before_the_mirror_applied_breaks_invariant_1() {
        caught(PlantedBug::AckWithoutMirror, "invariant 1", 300);
    }

    #[test]
    fn a_local_sync_without_the_directory_breaks_invariant_1() {
        caught(PlantedBug::SyncWithoutDirectory, "invariant 1", 2000);
    }

    #[test]
    fn a_self_promoting_mirror_breaks_invariant_2() {
        caught(PlantedBug::SelfPromote, "invariant 2", 300);
    }

    #[test]
    fn a_repair_that_is_not_made_durable_breaks_invariant_4() {
        caught(PlantedBug::RepairWithoutSync, "invariant 4", 50);
    }

    /// The older copy lands after the newer write, whose entry has retired:
    /// a difference nothing names, seen at the next checkpoint's check.
    #[test]
    fn a_resync_copy_queued_after_a_newer_write_breaks_invariant_3() {
        caught(PlantedBug::ResyncCopyWithoutLock, "invariant 3", 300);
    }

    #[test]
    fn a_resync_checkpoint_before_the_mirror_synced_breaks_invariant_3() {
        caught(PlantedBug::ResyncCheckpointBeforeSynced, "invariant 3", 300);
    }

    #[test]
    fn a_resync_clear_that_drops_the_activity_log_breaks_invariant_3() {
        caught(PlantedBug::ResyncClearDropsActivity, "invariant 3", 300);
    }

    #[test]
    fn a_resync_clear_before_the_primary_synced_breaks_invariant_3() {
        caught(PlantedBug::ResyncClearWithoutLocalSync, "invariant 3", 300);
    }

    #[test]
    fn retiring_an_activity_entry_with_a_tracked_path_breaks_invariant_3() {
        caught(PlantedBug::RetireDropsTrackedPaths, "invariant 3", 300);
    }

    /// Calls on paths the resync has not reached yet: without the
    /// catching-up flag the mirror refuses them; without another pass a
    /// rename hides a stale copy.
    #[test]
    fn calls_on_paths_the_resync_has_not_reached_need_the_flag_and_another_pass() {
        caught(PlantedBug::ResyncWithoutCatchingUp, "resync liveness", 100);
        caught(PlantedBug::ResyncRenameWithoutAnotherPass, "invariant", 300);
    }

    #[test]
    fn defects_are_named() {
        for (bug, name) in PlantedBug::ALL {
            assert_eq!(name.parse::<PlantedBug>(), Ok(bug));
        }
        assert!("no-such-bug".parse::<PlantedBug>().is_err());
    }

    #[test]
    fn seeds_replay_identically() {
        let cfg = FaultConfig { operations: 150, ..FaultConfig::default() };
        for seed in 0..20 {
            let a = run_faults(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
            let b = run_faults(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
            assert_eq!((a.operations, a.acked, a.virtual_ms), (b.operations, b.acked, b.virtual_ms));
            assert_eq!((&a.faults, &a.outcomes), (&b.faults, &b.outcomes));
        }
    }

    /// The injecting disk: each fault fires once, where it was aimed.
    #[test]
    fn the_faulty_disk_fires_each_fault_once() {
        let sim = Arc::new(SimDisk::new(1));
        let disk = FaultyDisk::new(sim.clone());
        let p = FsPath::new(0, RelPath::new("f").unwrap());
        let f = disk.open(&p, OpenMode::CreateNew).unwrap();
        f.write_at(0, b"durable").unwrap();
        f.sync_data().unwrap();
        disk.sync_parent_dir(&p).unwrap();
        disk.fail_next_sync();
        f.write_at(0, b"lost").unwrap();
        assert!(f.sync_data().is_err());
        assert_eq!(sim.durable_snapshot().get(&(0, "f".into())), Some(&SimEntry::File(b"durable".to_vec())));
        // Not retried into a success here: a later sync covers the write afresh.
        f.sync_data().unwrap();
        disk.no_space_next();
        assert_eq!(f.write_at(100, b"x").unwrap_err().kind, DiskErrorKind::NoSpace);
        f.write_at(100, b"x").unwrap();
        // Power goes at the second mutating call from now: the write lands, then nothing works.
        disk.lose_power_in(1);
        f.write_at(0, b"a").unwrap();
        assert!(f.write_at(0, b"torn").is_err());
        assert!(disk.power_lost());
        assert!(f.len().is_err() && disk.create_dir(&FsPath::new(0, RelPath::new("d").unwrap())).is_err());
        assert_eq!(disk.take_fired(), vec![Fired::Fsync, Fired::NoSpace, Fired::PowerLoss]);
        sim.crash(Some(2));
        disk.reset();
        let g = disk.open(&p, OpenMode::Existing).unwrap();
        let mut b = [0u8; 4];
        g.read_at(0, &mut b).unwrap();
        // Durable was "lostble"; the write in flight ("torn") kept two bytes.
        assert_eq!(&b, b"tost");
    }
}
