//! The primary's rules as one state machine: calls and events in, commands
//! out. It holds everything that decides what may happen and in which
//! order: sequence numbers and file bindings, the mode (streaming, deciding,
//! change tracking, failed), the window of changes not yet durable on the
//! mirror, the activity log's table, which calls may run at once (the
//! claims on files, blocks and trees that keep local order and stream
//! order the same), who waits for which watermark, the loss decision, and
//! the primary's side of a resync and of a verification.
//!
//! It does no I/O: no threads, files, sockets, clocks or locks. Whoever
//! drives it (the threaded runtime, the simulator) feeds it
//! [`Engine::submit`] and [`Engine::on`], takes the [`Command`]s it queues,
//! carries each out and reports the result as an [`Event`]. Every command
//! names who carries it out ([`Command::owner`]): the call's own thread for
//! its local steps, whichever thread fed the event for sending, a
//! background worker for the loss decision and retiring.

mod activity;
mod calls;
mod claims;
mod link;
mod resync;
mod stream;
#[cfg(test)]
mod tests;

pub use activity::{RetireSet, DEFAULT_LIMIT as ACTIVITY_LIMIT, EXTENT_BLOCKS};
pub use claims::{Claim, Target};
pub use stream::{BindFrame, PrimaryStream, StreamViolation, TimerAction, MAX_BOUND_FILES};

use crate::config::SyncLevel;
use crate::protocol::path::{FsPath, RelPath};
use crate::protocol::{Ack, Header, ListingBody, HEADER_LEN};
use activity::ActivityTable;
use bytes::Bytes;
use claims::Claims;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// A call's number, chosen by the driver (unique while the call runs).
pub type CallId = u64;

/// Changes shipped but not yet durable on the mirror, before callers wait
/// (the mirror's checkpoint makes them durable at least once a second).
pub const MAX_WINDOW: usize = 1 << 20;
/// Changed directories remembered for the next sync before a namespace
/// call syncs them itself.
pub const MAX_DIRTY_DIRS: usize = 4096;
/// Operations whose cumulative byte count is remembered by sequence number:
/// the byte lag is exact while fewer operations than this are unacknowledged.
const LAG_RING: usize = 1 << 16;

/// The arbiter's answer to "my mirror is gone".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The mirror is marked down: go on alone and track every change.
    MirrorDown,
    /// This segment is no longer the primary: fail every call.
    Demoted,
}

/// Where the pair stands, as the primary sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Shipping every change to the mirror.
    Streaming,
    /// The mirror was lost; mutating calls wait for the arbiter.
    Deciding,
    /// The mirror is down: changes are recorded in the change-log.
    ChangeTracking,
    /// Calls fail: demoted, no answer from the arbiter, or no change tracking.
    Failed(String),
}

pub use crate::core::PlantedBug;

/// Limits and settings of one engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub block_size: u32,
    pub filespaces: u16,
    pub level: SyncLevel,
    /// Change tracking is configured: a lost mirror is decided by the
    /// arbiter, and the activity log covers changes while streaming.
    pub tracking: bool,
    pub heartbeat_ms: u64,
    pub ack_timeout_ms: u64,
    /// Bytes queued for the socket before callers wait (backpressure).
    pub max_pending_bytes: usize,
    pub activity_limit: usize,
    /// Only the simulator sets this.
    pub planted: Option<PlantedBug>,
}

/// What a host call, or a resync or verification step, asks for. Paths and
/// bounds are already checked by the caller.
#[derive(Clone, Debug)]
pub enum Op {
    Create {
        file: FsPath,
    },
    /// One block (`extend`: appended, `block` must be the file's block count).
    WriteBlock {
        file: FsPath,
        block: u64,
        data: Bytes,
        hash: u64,
        extend: bool,
    },
    WriteAt {
        file: FsPath,
        offset: u64,
        data: Bytes,
        hash: u64,
    },
    SetLen {
        file: FsPath,
        len: u64,
    },
    Unlink {
        file: FsPath,
    },
    /// A relation file's sync (`flush: false`) or a flat file's flush.
    Sync {
        file: FsPath,
        flush: bool,
    },
    /// Every directory change so far durable on both sides.
    SyncDir {
        fs: u16,
    },
    Mkdir {
        dir: FsPath,
    },
    Rmdir {
        dir: FsPath,
    },
    Rename {
        from: FsPath,
        to: FsPath,
    },
    /// Send whatever is queued.
    Send,
    /// Everything queued so far durable on the mirror (verification).
    WaitDurable,
    /// Orderly end: the mirror makes everything durable, then both close.
    Shutdown,
    /// A repaired mirror taken back (the driver has done the handshake and
    /// installed the connection): stream again, resync pending.
    Attach,
    /// Resync steps (and the repairs of a verification).
    Resync {
        bound: Bound,
        step: ResyncStep,
    },
    /// List a directory here and ask the mirror for its listing.
    QueueListing {
        bound: Bound,
        fs: u16,
        dir: Option<RelPath>,
    },
    /// Hash blocks of a file here (the driver picks which) and ask the
    /// mirror for its hashes of the same blocks.
    QueueHashes {
        bound: Bound,
        file: FsPath,
    },
    /// The mirror's answer to a hash or list request.
    AwaitReply {
        seq: u64,
    },
}

/// What a resync or verification step is bound to: it goes on only while
/// the mirror it started with streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// A resync of the mirror taken back as this attachment.
    Resync(u64),
    /// A verification of a pair streaming with this attachment, no resync running.
    Verify(u64),
    /// Nothing beyond the pair's mode.
    Free,
}

/// The primary's steps of a resync ([`crate::core::resync`] drives them).
#[derive(Clone, Debug)]
pub enum ResyncStep {
    /// The resync starts; `full`: it owes the mirror every path.
    Plan { full: bool },
    /// A full resync has walked everything: renames owe only what is named.
    Walked,
    /// Take the paths renamed meanwhile that are owed another pass.
    Redo,
    /// Ship what one path is here (`None`: the filespace root), with no
    /// call changing it meanwhile; `prune`: the mirror keeps only its children.
    Reconcile { fs: u16, path: Option<RelPath>, prune: bool },
    /// Queue a copy of blocks `first..first + count` of a file.
    Copy { file: FsPath, first: u64, count: u64 },
    /// Ask the mirror to make a file durable.
    Flush { file: FsPath },
    /// Once `synced` is synced on the mirror, record that `blocks` and
    /// `paths` no longer differ.
    Checkpoint { synced: u64, flushed: BTreeSet<FsPath>, blocks: BTreeMap<FsPath, BTreeSet<u64>>, paths: Vec<FsPath> },
    /// Everything shipped durable on the mirror: clear the change-log.
    Finish { synced: Option<u64>, flushed: BTreeSet<FsPath> },
}

/// What a successful call returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Done,
    /// A sequence number (a queued request; the last one shipped at shutdown).
    Seq(u64),
    /// `None`: the file is gone here.
    MaybeSeq(Option<u64>),
    /// Bytes a copy queued.
    Bytes(u64),
    Hashes(Vec<u64>),
    Listing(ListingBody),
    /// Whether a resync's finish cleared the change-log.
    Cleared(bool),
    Paths(BTreeSet<FsPath>),
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    InvalidArgument(String),
    /// The mirror is gone and the call cannot be made safe.
    MirrorLost(String),
    /// A local write or sync failed (rule 8).
    Faulted(String),
    /// The primary is shutting down.
    Closed(String),
    /// The request does not fit the pair's state.
    Rejected(String),
    /// The change-log cannot be written: a full resync is needed.
    ChangeLog(String),
    /// The call's local step failed as the driver reported it (a namespace
    /// error such as "not found"): the driver returns its own error.
    Local,
}

/// A frame waiting for the socket: encoded header, body, sequence number
/// (0 for control frames).
#[derive(Clone, Debug)]
pub struct OutFrame {
    pub header: [u8; HEADER_LEN],
    pub body: Bytes,
    pub seq: u64,
}

impl OutFrame {
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }
}

/// A local step a call's thread carries out.
#[derive(Clone, Debug)]
pub enum LocalStep {
    Write {
        file: FsPath,
        offset: u64,
        data: Bytes,
    },
    Create {
        file: FsPath,
    },
    SetLen {
        file: FsPath,
        len: u64,
    },
    Unlink {
        file: FsPath,
    },
    Mkdir {
        dir: FsPath,
    },
    Rmdir {
        dir: FsPath,
    },
    Rename {
        from: FsPath,
        to: FsPath,
    },
    /// fdatasync each file that exists (a resync checkpoint skips gone ones).
    SyncFiles {
        files: Vec<FsPath>,
    },
    /// fsync each of these directories (`(filespace, directory)`, `None`: the root).
    SyncDirs {
        dirs: Vec<(u16, Option<RelPath>)>,
    },
}

/// Who carries a command out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The call's own thread.
    Call(CallId),
    /// Whichever thread fed the event that queued it.
    Current,
    /// A background worker, in the order queued.
    Background,
}

/// Something to do, and who does it.
#[derive(Debug)]
pub enum Command {
    /// Open (or look up) the file; `want_len`: report its length;
    /// `absent_ok`: a missing file is an answer, not an error.
    Open {
        call: CallId,
        file: FsPath,
        want_len: bool,
        absent_ok: bool,
    },
    /// Change tracking: record these blocks and paths durably (rule 4).
    Record {
        call: CallId,
        blocks: Vec<(FsPath, u64)>,
        touched: Vec<(FsPath, bool)>,
    },
    /// Activity log: record the extents of blocks `first..=last` durably (rule 5).
    CoverBlocks {
        call: CallId,
        file: FsPath,
        first: u64,
        last: u64,
    },
    /// Activity log: record a namespace change of `path` durably.
    CoverPath {
        call: CallId,
        path: FsPath,
        subtree: bool,
    },
    /// A rename during a resync: record `to` for another pass if the resync still owes `from`.
    RedoIfOwed {
        call: CallId,
        from: FsPath,
        to: FsPath,
        all: bool,
    },
    Local {
        call: CallId,
        step: LocalStep,
    },
    /// Read a resync copy: blocks `first..first + count`, as far as the file reaches.
    ReadCopy {
        call: CallId,
        file: FsPath,
        first: u64,
        count: u64,
    },
    /// Look at one path and build its Reconcile frame (a resync, a verification repair).
    ReadReconcile {
        call: CallId,
        fs: u16,
        path: Option<RelPath>,
        prune: bool,
    },
    /// Verification: hash this file's blocks here (the driver picks which).
    HashLocal {
        call: CallId,
        file: FsPath,
    },
    /// Verification: list this directory here.
    ListLocal {
        call: CallId,
        fs: u16,
        dir: Option<RelPath>,
    },
    /// Resync: take the change-log's paths owed another pass.
    TakeRedo {
        call: CallId,
    },
    Complete {
        call: CallId,
        result: Result<Reply, Failure>,
    },
    /// Write these frames to the connection of `epoch`, in order.
    Send {
        epoch: u64,
        frames: Vec<OutFrame>,
    },
    /// Close the connection (the receiver then sees it end).
    Close,
    /// Ask the arbiter what to do about the lost mirror.
    AskArbiter {
        reason: String,
    },
    /// The change-log, one operation at a time (see [`LogOp`]).
    Log {
        call: Option<CallId>,
        op: LogOp,
    },
    /// Before retiring: make this host's copies of these durable.
    RetireSync {
        files: Vec<FsPath>,
        dirs: Vec<FsPath>,
    },
}

/// Change-log operations that must not overlap each other (nor a new
/// activity record, for the rewrites).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOp {
    /// Record changes the mirror may lack (the window, at a loss).
    RecordWindow { blocks: Vec<(FsPath, u64)>, touched: Vec<(FsPath, bool)> },
    /// The mirror is marked down: keep every extent and path recorded so
    /// far through later compactions, until a resync clears them.
    PinDown,
    /// A mirror taken back: pin the paths recorded so far and start the redo set afresh.
    PinAttach,
    /// A resync's progress: these no longer differ; keep the live entries.
    ClearEntries {
        blocks: BTreeMap<FsPath, BTreeSet<u64>>,
        paths: Vec<FsPath>,
        keep_extents: BTreeMap<FsPath, BTreeSet<u64>>,
        keep_paths: BTreeSet<FsPath>,
    },
    /// A resync's end: forget all but the live entries, unless a pass is owed.
    ClearKeeping { extents: BTreeMap<FsPath, BTreeSet<u64>>, paths: BTreeSet<FsPath> },
    /// Retire activity entries (rewrites the log).
    Retire { extents: BTreeMap<FsPath, BTreeSet<u64>>, paths: BTreeSet<FsPath> },
}

impl LogOp {
    /// Rewrites or clears: no new activity record may go in meanwhile.
    fn rewrites(&self) -> bool {
        matches!(self, LogOp::ClearEntries { .. } | LogOp::ClearKeeping { .. } | LogOp::Retire { .. })
    }
}

impl Command {
    pub fn owner(&self) -> Owner {
        match self {
            Command::Open { call, .. }
            | Command::Record { call, .. }
            | Command::CoverBlocks { call, .. }
            | Command::CoverPath { call, .. }
            | Command::RedoIfOwed { call, .. }
            | Command::Local { call, .. }
            | Command::ReadCopy { call, .. }
            | Command::ReadReconcile { call, .. }
            | Command::HashLocal { call, .. }
            | Command::ListLocal { call, .. }
            | Command::TakeRedo { call }
            | Command::Complete { call, .. }
            | Command::Log { call: Some(call), .. } => Owner::Call(*call),
            Command::Send { .. } | Command::Close => Owner::Current,
            Command::AskArbiter { .. } | Command::Log { call: None, .. } | Command::RetireSync { .. } => {
                Owner::Background
            }
        }
    }

    /// A short name, for counting what a run exercised.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Open { .. } => "open",
            Command::Record { .. } => "record",
            Command::CoverBlocks { .. } => "cover-blocks",
            Command::CoverPath { .. } => "cover-path",
            Command::RedoIfOwed { .. } => "redo-if-owed",
            Command::Local { step, .. } => match step {
                LocalStep::Write { .. } => "local-write",
                LocalStep::Create { .. } => "local-create",
                LocalStep::SetLen { .. } => "local-set-len",
                LocalStep::Unlink { .. } => "local-unlink",
                LocalStep::Mkdir { .. } => "local-mkdir",
                LocalStep::Rmdir { .. } => "local-rmdir",
                LocalStep::Rename { .. } => "local-rename",
                LocalStep::SyncFiles { .. } => "local-sync-files",
                LocalStep::SyncDirs { .. } => "local-sync-dirs",
            },
            Command::ReadCopy { .. } => "read-copy",
            Command::ReadReconcile { .. } => "read-reconcile",
            Command::HashLocal { .. } => "hash-local",
            Command::ListLocal { .. } => "list-local",
            Command::TakeRedo { .. } => "take-redo",
            Command::Complete { result: Ok(_), .. } => "complete-ok",
            Command::Complete { result: Err(_), .. } => "complete-err",
            Command::Send { .. } => "send",
            Command::Close => "close",
            Command::AskArbiter { .. } => "ask-arbiter",
            Command::Log { op, .. } => match op {
                LogOp::RecordWindow { .. } => "log-record-window",
                LogOp::PinDown => "log-pin-down",
                LogOp::PinAttach => "log-pin-attach",
                LogOp::ClearEntries { .. } => "log-clear-entries",
                LogOp::ClearKeeping { .. } => "log-clear-keeping",
                LogOp::Retire { .. } => "log-retire",
            },
            Command::RetireSync { .. } => "retire-sync",
        }
    }
}

/// What a file open found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub present: bool,
    /// The length, when asked for.
    pub len: Option<u64>,
}

/// What happened: the result of a command, or news from outside.
#[derive(Debug)]
pub enum Event {
    /// `Err`: the open failed (its error goes back to the caller as is).
    Opened {
        call: CallId,
        result: Result<Opened, String>,
    },
    /// A change-log record (change tracking, a cover, a redo check); `Err`: it cannot be written.
    Recorded {
        call: CallId,
        result: Result<(), String>,
    },
    /// A local step; `Err(why)`.
    LocalDone {
        call: CallId,
        result: Result<(), String>,
    },
    /// A copy read: `(offset, bytes, body hash)`, `None` past the end or if the file is gone.
    CopyRead {
        call: CallId,
        result: Result<Option<(u64, Bytes, u64)>, String>,
    },
    /// A Reconcile frame built: header (no sequence number yet) and body.
    ReconcileRead {
        call: CallId,
        result: Result<(Header, Bytes), String>,
    },
    /// Local hashes taken of blocks `first..first + count`; `None`: the file is gone.
    HashedLocal {
        call: CallId,
        result: Result<Option<(u64, u32)>, String>,
    },
    ListedLocal {
        call: CallId,
        result: Result<(), String>,
    },
    RedoTaken {
        call: CallId,
        paths: BTreeSet<FsPath>,
    },
    /// A [`Command::Log`] finished; `Ok(false)` only from `ClearKeeping` with a pass owed.
    Logged {
        result: Result<bool, String>,
    },
    /// Frames written (`Ok(wire bytes)`), or the connection failed.
    Sent {
        epoch: u64,
        result: Result<u64, String>,
    },
    /// A whole, checksum-verified frame from the mirror on the connection of `epoch`.
    Received {
        epoch: u64,
        frame: crate::protocol::Frame,
    },
    /// The connection of `epoch` ended (closed, a receive error, a bad frame).
    Disconnected {
        epoch: u64,
        reason: String,
    },
    /// Time passed (heartbeats, the mirror's silence).
    Tick,
    ArbiterAnswered {
        result: Result<Decision, String>,
    },
    RetireSynced {
        result: Result<(), String>,
    },
    /// A call's deadline passed.
    Expired {
        call: CallId,
    },
}

/// Counters for reports and monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub operations: u64,
    pub payload_bytes: u64,
    pub frames_sent: u64,
    pub wire_bytes_sent: u64,
    pub batches_sent: u64,
}

/// Replication figures of one primary (`filerep segment` status, `/metrics`).
/// Operations are sequence-numbered changes shipped to the mirror; bytes are
/// wire bytes (headers included). Totals count every session of this
/// primary; lags, in-flight and queue figures are zero unless streaming.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ReplicationStats {
    /// Operations queued for the mirror.
    pub ops_sent: u64,
    /// Operations the mirror acknowledged applied, synced, durable.
    pub ops_applied: u64,
    pub ops_synced: u64,
    pub ops_durable: u64,
    /// Bytes queued for the mirror, and written to the socket.
    pub bytes_queued: u64,
    pub bytes_sent: u64,
    /// Bytes of the operations acknowledged applied and durable.
    pub bytes_applied: u64,
    pub bytes_durable: u64,
    pub frames_sent: u64,
    pub batches_sent: u64,
    /// Written to the socket, not yet acknowledged applied.
    pub in_flight_ops: u64,
    /// Queued, not yet applied on the mirror (operations, bytes).
    pub lag_ops: u64,
    pub lag_bytes: u64,
    /// Queued, not yet durable on the mirror.
    pub durable_lag_ops: u64,
    pub durable_lag_bytes: u64,
    /// Frames and bytes waiting to be written to the socket.
    pub queue_frames: u64,
    pub queue_bytes: u64,
    /// Changes shipped but not yet durable on the mirror (what a loss records).
    pub window_changes: u64,
    /// Milliseconds since the last acknowledgement (`None`: none this session).
    pub since_ack_ms: Option<u64>,
    /// Streaming sessions so far (1, plus each mirror taken back).
    pub sessions: u64,
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Create { .. } => "create",
        Op::WriteBlock { extend: false, .. } => "write_block",
        Op::WriteBlock { extend: true, .. } => "extend",
        Op::WriteAt { .. } => "write_at",
        Op::SetLen { .. } => "set_len",
        Op::Unlink { .. } => "unlink",
        Op::Sync { flush: false, .. } => "sync",
        Op::Sync { flush: true, .. } => "flush",
        Op::SyncDir { .. } => "sync_dir",
        Op::Mkdir { .. } => "mkdir",
        Op::Rmdir { .. } => "rmdir",
        Op::Rename { .. } => "rename",
        Op::Send => "send",
        Op::WaitDurable => "wait_durable",
        Op::Shutdown => "shutdown",
        Op::Attach => "attach",
        Op::Resync { step, .. } => match step {
            ResyncStep::Plan { .. } => "resync_plan",
            ResyncStep::Walked => "resync_walked",
            ResyncStep::Redo => "resync_redo",
            ResyncStep::Reconcile { .. } => "resync_reconcile",
            ResyncStep::Copy { .. } => "resync_copy",
            ResyncStep::Flush { .. } => "resync_flush",
            ResyncStep::Checkpoint { .. } => "resync_checkpoint",
            ResyncStep::Finish { .. } => "resync_finish",
        },
        Op::QueueListing { .. } => "queue_listing",
        Op::QueueHashes { .. } => "queue_hashes",
        Op::AwaitReply { .. } => "await_reply",
    }
}

/// Which acknowledgement watermark a call waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Applied,
    Synced,
    Durable,
}

impl Mark {
    fn of(self, a: &Ack) -> u64 {
        match self {
            Mark::Applied => a.applied,
            Mark::Synced => a.synced,
            Mark::Durable => a.durable,
        }
    }
}

/// Blocks and paths as the change-log records them.
pub type Records = (Vec<(FsPath, u64)>, Vec<(FsPath, bool)>);

/// What one shipped operation changed, kept until the mirror makes it durable.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    Blocks { path: FsPath, first: u64, last: u64 },
    Touched { path: FsPath, subtree: bool },
}

/// Activity entries a call holds in flight (ended with its local step).
#[derive(Clone, Debug)]
enum Covered {
    Blocks(FsPath, u64, u64),
    Paths(Vec<FsPath>),
}

/// Where a call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for its claims.
    Claiming,
    /// Parked until the arbiter decides (before or after its claims).
    Deciding,
    /// A command of its own is out.
    Busy,
    /// Waiting for a change-log rewrite to end before it covers.
    CoverWait,
    /// Waiting for room in the queue to ship.
    Room,
    /// Waiting for a watermark.
    Acked,
    /// Waiting for the mirror's answer to a request.
    Reply,
    /// Waiting for its turn at the change-log.
    Log,
}

/// One call in progress.
#[derive(Debug)]
struct Call {
    op: Op,
    stage: Stage,
    /// The step within its operation (see `calls.rs`).
    step: u8,
    /// Sequence number it shipped with (0: nothing shipped).
    seq: u64,
    covered: Option<Covered>,
    /// Change-log records still out for it.
    records_out: u8,
    /// Waiting for this watermark to reach this number.
    wait: Option<(Mark, u64)>,
    /// Recorded in change tracking instead of shipped.
    tracked: bool,
    /// A frame built and not yet shipped (resync and verification steps).
    held: Option<resync::Held>,
}

/// The loss decision in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Deciding {
    /// Recording the window before asking.
    First,
    /// Asking the arbiter.
    Asking,
    /// Recording what was shipped meanwhile, then applying the answer.
    Second(Result<Decision, String>),
}

/// Retiring activity entries, one attempt at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Retiring {
    Idle,
    /// This host's copies of the picked entries are being made durable.
    Syncing {
        picked: RetireSet,
        then_complete: Option<CallId>,
    },
    /// The change-log is being rewritten without them.
    Writing {
        set: RetireSet,
        then_complete: Option<CallId>,
    },
}

/// The resync's side of the state.
#[derive(Debug, Default)]
struct ResyncState {
    /// A mirror taken back is being resynchronized.
    active: bool,
    /// It owes the mirror every path (renames included).
    full: bool,
    /// Mirrors taken back so far.
    attachments: u64,
    /// The last flush queued for each file, until a checkpoint settles it.
    flushes: HashMap<FsPath, u64>,
}

/// Requests to the mirror awaiting answers.
#[derive(Debug, Default)]
struct Replies {
    hashes_wanted: HashMap<u64, u32>,
    lists_wanted: HashSet<u64>,
    answers: HashMap<u64, Reply>,
    waiting: HashMap<u64, CallId>,
}

/// The lag ring and the session bases of the replication figures.
#[derive(Debug)]
struct Figures {
    counters: Counters,
    bytes_queued: u64,
    bytes_at: Box<[u64]>,
    last_sent: u64,
    ops_base: u64,
    bytes_base: u64,
    last_ack_ms: Option<u64>,
}

/// The primary's state machine.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    now: u64,
    stream: PrimaryStream,
    mode: Mode,
    /// Why the current stream ended, if it did.
    lost: Option<String>,
    /// The connection can take frames.
    link_up: bool,
    closing: bool,
    /// The Shutdown frame is out: nothing may follow it (the mirror closes
    /// after its last acknowledgement, and a frame behind it could meet a
    /// reset connection before that acknowledgement is read).
    shutdown_sent: bool,
    faulted: Option<String>,
    calls: HashMap<CallId, Call>,
    claims: Claims,
    activity: ActivityTable,
    pending: Vec<OutFrame>,
    pending_bytes: usize,
    sending: bool,
    window: VecDeque<(u64, Change)>,
    waiters: Vec<CallId>,
    /// Calls waiting for queue room, for the decision, for a rewrite to end.
    room_waiters: VecDeque<CallId>,
    decision_waiters: Vec<CallId>,
    log_waiters: Vec<CallId>,
    deciding: Option<Deciding>,
    /// Change-log operations: whether one is out (and rewrites), which, and those queued behind it.
    log_busy: Option<bool>,
    log_current: Option<(Option<CallId>, link::LogKind)>,
    log_queue: VecDeque<(Option<CallId>, link::LogJob)>,
    /// The connection's number: frames and news of an older one are ignored.
    epoch: u64,
    /// Frames and highest sequence number of the send that is out.
    in_send: (u64, u64),
    /// Why an orderly shutdown failed, while its window is recorded.
    shutdown_error: Option<String>,
    retiring: Retiring,
    /// Directories whose entries changed since they were last synced here.
    dirty_dirs: BTreeSet<(u16, Option<RelPath>)>,
    /// Those the directory sync out now covers (one at a time).
    dirs_syncing: Vec<(u16, Option<RelPath>)>,
    resync: ResyncState,
    replies: Replies,
    figures: Figures,
    out: VecDeque<Command>,
}

impl Engine {
    /// An engine streaming to a mirror whose handshake is done (or, with
    /// `alone`, a primary with no mirror, in change tracking from the start).
    pub fn new(cfg: EngineConfig, now: u64, alone: Option<String>) -> Engine {
        let stream = PrimaryStream::new(1, now, cfg.heartbeat_ms, cfg.ack_timeout_ms);
        let activity = ActivityTable::new(cfg.activity_limit);
        let mut e = Engine {
            cfg,
            now,
            stream,
            mode: Mode::Streaming,
            lost: None,
            link_up: true,
            closing: false,
            shutdown_sent: false,
            faulted: None,
            calls: HashMap::new(),
            claims: Claims::default(),
            activity,
            pending: Vec::new(),
            pending_bytes: 0,
            sending: false,
            window: VecDeque::new(),
            waiters: Vec::new(),
            room_waiters: VecDeque::new(),
            decision_waiters: Vec::new(),
            log_waiters: Vec::new(),
            deciding: None,
            log_busy: None,
            log_current: None,
            log_queue: VecDeque::new(),
            epoch: 0,
            in_send: (0, 0),
            shutdown_error: None,
            retiring: Retiring::Idle,
            dirty_dirs: BTreeSet::new(),
            dirs_syncing: Vec::new(),
            resync: ResyncState::default(),
            replies: Replies::default(),
            figures: Figures {
                counters: Counters::default(),
                bytes_queued: 0,
                bytes_at: vec![0; LAG_RING].into_boxed_slice(),
                last_sent: 0,
                ops_base: 0,
                bytes_base: 0,
                last_ack_ms: None,
            },
            out: VecDeque::new(),
        };
        if let Some(why) = alone {
            e.lost = Some(format!("no mirror: {why}"));
            e.link_up = false;
            e.mode = Mode::ChangeTracking;
        }
        e
    }

    /// The next command to carry out, if any.
    pub fn next_command(&mut self) -> Option<Command> {
        self.out.pop_front()
    }

    /// Every command queued so far.
    pub fn take_commands(&mut self) -> impl Iterator<Item = Command> + '_ {
        self.out.drain(..)
    }

    pub fn mode(&self) -> Mode {
        self.mode.clone()
    }

    /// Why the mirror was lost, if it was.
    pub fn mirror_lost(&self) -> Option<String> {
        self.lost.clone()
    }

    pub fn faulted(&self) -> Option<String> {
        self.faulted.clone()
    }

    pub fn resyncing(&self) -> bool {
        self.resync.active
    }

    /// Mirrors taken back so far (a resync or verification is bound to one).
    pub fn attachment(&self) -> u64 {
        self.resync.attachments
    }

    /// The current connection's number (see [`Command::Send`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn last_seq(&self) -> u64 {
        self.stream.last_seq()
    }

    pub fn acked(&self) -> Ack {
        self.stream.acked()
    }

    pub fn counters(&self) -> Counters {
        self.figures.counters
    }

    pub fn activity_entries(&self) -> usize {
        self.activity.len()
    }

    /// What the window holds (shipped, not yet durable on the mirror), as
    /// change-log records: what a loss would record now.
    pub fn window_records(&self) -> Records {
        let mut blocks = Vec::new();
        let mut touched = Vec::new();
        for (_, c) in &self.window {
            match c {
                Change::Blocks { path, first, last } => blocks.extend((*first..=*last).map(|b| (path.clone(), b))),
                Change::Touched { path, subtree } => touched.push((path.clone(), *subtree)),
            }
        }
        (blocks, touched)
    }

    /// The state of every call and queue, for a diagnosis of a stall.
    pub fn describe(&self) -> String {
        let mut calls: Vec<String> = self
            .calls
            .iter()
            .map(|(id, c)| {
                format!("#{id} {} step {} {:?} seq {} wait {:?}", op_name(&c.op), c.step, c.stage, c.seq, c.wait)
            })
            .collect();
        calls.sort();
        format!(
            "faulted {:?} closing {} mode {:?} lost {:?} link_up {} deciding {:?} log_busy {:?} log_queue {} retiring {} {:?} sending {} pending {} window {} acked {:?} last {} claims held by {} waiting {}; waiters {:?} room {:?} decision {:?} log {:?}; calls: {}",
            self.faulted,
            self.closing,
            self.mode,
            self.lost,
            self.link_up,
            self.deciding,
            self.log_busy,
            self.log_queue.len(),
            !matches!(self.retiring, Retiring::Idle),
            self.activity.describe_retiring(),
            self.sending,
            self.pending.len(),
            self.window.len(),
            self.stream.acked(),
            self.stream.last_seq(),
            self.claims.holders(),
            self.claims.waiting(),
            self.waiters,
            self.room_waiters,
            self.decision_waiters,
            self.log_waiters,
            calls.join("; ")
        )
    }

    /// Calls in progress.
    pub fn calls_in_progress(&self) -> usize {
        self.calls.len()
    }

    /// A new call. Its commands (and others it leads to) are queued.
    pub fn submit(&mut self, id: CallId, op: Op, now: u64) {
        self.now = self.now.max(now);
        debug_assert!(!self.calls.contains_key(&id), "call {id} submitted twice");
        if matches!(op, Op::Shutdown) {
            // New calls are refused from here on; calls already admitted finish.
            self.closing = true;
        }
        let call = Call {
            op,
            stage: Stage::Claiming,
            step: 0,
            seq: 0,
            covered: None,
            records_out: 0,
            wait: None,
            tracked: false,
            held: None,
        };
        self.calls.insert(id, call);
        self.admit(id);
    }

    /// Something happened.
    pub fn on(&mut self, ev: Event, now: u64) {
        self.now = self.now.max(now);
        match ev {
            Event::Opened { call, result } => self.opened(call, result),
            Event::Recorded { call, result } => self.recorded(call, result),
            Event::LocalDone { call, result } => self.local_done(call, result),
            Event::CopyRead { call, result } => self.copy_read(call, result),
            Event::ReconcileRead { call, result } => self.reconcile_read(call, result),
            Event::HashedLocal { call, result } => self.hashed_local(call, result),
            Event::ListedLocal { call, result } => self.listed_local(call, result),
            Event::RedoTaken { call, paths } => {
                self.release_claims(call);
                self.complete(call, Ok(Reply::Paths(paths)));
            }
            Event::Logged { result } => self.logged(result),
            Event::Sent { epoch, result } => self.sent(epoch, result),
            Event::Received { epoch, frame } => self.received(epoch, frame),
            Event::Disconnected { epoch, reason } => {
                if epoch == self.epoch {
                    self.lose(reason)
                }
            }
            Event::Tick => self.tick(),
            Event::ArbiterAnswered { result } => self.answered(result),
            Event::RetireSynced { result } => self.retire_synced(result),
            Event::Expired { call } => self.expired(call),
        }
    }

    /// End the stream on purpose (the primary is dropped): no decision is
    /// asked for, later calls are refused.
    pub fn stop(&mut self, why: &str) {
        self.closing = true;
        self.lose(why.to_string());
    }

    fn planted(&self, bug: PlantedBug) -> bool {
        self.cfg.planted == Some(bug)
    }

    fn emit(&mut self, c: Command) {
        self.out.push_back(c);
    }

    /// End a call: its claims are released and its result goes out.
    fn complete(&mut self, id: CallId, result: Result<Reply, Failure>) {
        self.release_claims(id);
        if self.calls.remove(&id).is_some() {
            self.emit(Command::Complete { call: id, result });
        }
    }

    fn fail(&mut self, id: CallId, f: Failure) {
        self.end_cover(id);
        self.complete(id, Err(f));
    }

    /// Release a call's claims and admit the calls waiting for them.
    fn release_claims(&mut self, id: CallId) {
        for next in self.claims.release(id) {
            self.claimed(next);
        }
    }

    /// Release one of a call's claims, keeping the others.
    fn release_target(&mut self, id: CallId, target: &Target) {
        for next in self.claims.release_target(id, target) {
            self.claimed(next);
        }
    }

    /// Rule 8: after a local write or fsync failure nothing is reported durable.
    fn fault(&mut self, reason: String) -> Failure {
        tracing::error!(%reason, "segment faulted");
        if self.faulted.is_none() {
            self.faulted = Some(reason.clone());
        }
        Failure::Faulted(reason)
    }

    fn set_mode(&mut self, m: Mode) {
        if self.mode != m {
            tracing::info!(from = ?self.mode, to = ?m, "pair mode");
        }
        if m != Mode::Streaming {
            // A resync ends with the stream: the change-log still names everything.
            self.resync.active = false;
        }
        self.mode = m;
    }

    /// The change-log cannot be written: say so, and stop claiming anything.
    fn tracking_failed(&mut self, e: &str) -> Failure {
        let why = format!("the change-log cannot be written ({e}); the segment needs a full resync");
        tracing::error!(%why, "change tracking failed");
        self.set_mode(Mode::Failed(why));
        self.fail_parked();
        Failure::ChangeLog(e.to_string())
    }

    /// Replication figures.
    pub fn replication(&self) -> ReplicationStats {
        let f = &self.figures;
        let last = self.stream.last_seq();
        let sent = f.last_sent.min(last);
        let total = f.bytes_queued;
        let ack = self.stream.acked();
        let (applied, synced, durable) = (ack.applied.min(last), ack.synced.min(last), ack.durable.min(last));
        let streaming = self.mode == Mode::Streaming && self.lost.is_none();
        let through = |seq: u64| self.bytes_through(seq, last, total);
        let (bytes_applied, bytes_durable) = (through(applied), through(durable));
        let live = |x: u64| if streaming { x } else { 0 };
        ReplicationStats {
            ops_sent: f.ops_base + last,
            ops_applied: f.ops_base + applied,
            ops_synced: f.ops_base + synced,
            ops_durable: f.ops_base + durable,
            bytes_queued: total,
            bytes_sent: f.counters.wire_bytes_sent,
            bytes_applied,
            bytes_durable,
            frames_sent: f.counters.frames_sent,
            batches_sent: f.counters.batches_sent,
            in_flight_ops: live(sent.saturating_sub(applied)),
            lag_ops: live(last - applied),
            lag_bytes: live(total.saturating_sub(bytes_applied)),
            durable_lag_ops: live(last - durable),
            durable_lag_bytes: live(total.saturating_sub(bytes_durable)),
            queue_frames: live(self.pending.len() as u64),
            queue_bytes: live(self.pending_bytes as u64),
            window_changes: self.window.len() as u64,
            since_ack_ms: f.last_ack_ms.filter(|_| streaming).map(|t| self.now.saturating_sub(t)),
            sessions: self.resync.attachments + 1,
        }
    }

    /// Bytes queued up to and including operation `seq` of this session:
    /// exact from the ring while `seq` is recent, else prorated.
    fn bytes_through(&self, seq: u64, last: u64, total: u64) -> u64 {
        let f = &self.figures;
        let base = f.bytes_base;
        if seq == 0 {
            return base;
        }
        if seq >= last {
            return total;
        }
        if last - seq < LAG_RING as u64 {
            return f.bytes_at[(seq % LAG_RING as u64) as usize].clamp(base, total);
        }
        base + ((total - base) as u128 * seq as u128 / last as u128) as u64
    }
}
