//! The engine's interface: the calls it takes ([`Op`]), what it asks its
//! driver to do ([`Command`], each with its [`Owner`]), what the driver
//! tells it ([`Event`]), and what a call returns ([`Reply`], [`Failure`]).

use super::CallId;
use crate::config::SyncLevel;
use crate::protocol::path::{FsPath, RelPath};
use crate::protocol::{Header, ListingBody, HEADER_LEN};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

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

/// When a call that changes something returns (rule 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wait {
    /// At the pair's sync level: applied on the mirror by default.
    #[default]
    Level,
    /// Once made here and on its way to the mirror, at most
    /// [`QUEUED_WINDOW`] sequence numbers ahead of what the mirror applied
    /// (never looser than the pair's level: at `durable` it waits as the
    /// level says, at `async:W` the smaller window holds). For a host whose
    /// own contract promises nothing of a change before a sync (a file
    /// system: `write`, `creat`, `rename` are durable only after an
    /// `fsync`): the later sync of its file covers its data and length, and
    /// any later sync or directory sync covers a namespace change (every
    /// changed directory is synced on both), as `fsync` does. A sync never returns queued. A change queued when the
    /// mirror is lost is in the window, which the loss decision records
    /// (rule 3), as at the `async` level.
    Queued,
}

/// Sequence numbers (Bind frames count) before a queued change that may
/// still be unapplied on the mirror when it returns: the bound on what a
/// host that queues its changes has in flight.
pub const QUEUED_WINDOW: u64 = 64;

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
    /// Bytes at an offset; with `flush`, the file's flush too, as one call:
    /// one frame (flagged durable, so the mirror syncs it before it
    /// acknowledges), the local write then the local fdatasync, and the
    /// call returns when both sides are durable, as a write and the flush
    /// after it would (a held write and the `fsync` that sends it).
    WriteAt {
        file: FsPath,
        offset: u64,
        data: Bytes,
        hash: u64,
        flush: bool,
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
    /// Take what renames moved meanwhile that is owed another pass.
    Redo,
    /// Hold new renames for `ms` (0: let them go again): the resync is
    /// finishing what renames kept moving.
    Hold { ms: u64 },
    /// Ship what one path is here (`None`: the filespace root), with no
    /// call changing it meanwhile; `prune`: the mirror keeps only its children.
    Reconcile { fs: u16, path: Option<RelPath>, prune: bool },
    /// Queue a copy of blocks `first..first + count` of a file; `ahead`
    /// blocks right after them are copied next (its activity cover may
    /// take them too: one change-log record for many copies).
    Copy { file: FsPath, first: u64, count: u64, ahead: u64 },
    /// Ask the mirror to make a file durable.
    Flush { file: FsPath },
    /// Once `synced` is synced on the mirror, record that `blocks` and
    /// `paths` no longer differ.
    /// `blocks` and `paths` are named as they were at rename journal
    /// position `as_of`: one renamed over since is not cleared.
    Checkpoint {
        synced: u64,
        flushed: BTreeSet<FsPath>,
        blocks: BTreeMap<FsPath, BTreeSet<u64>>,
        paths: Vec<FsPath>,
        as_of: u64,
    },
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
    /// What renames moved while the resync still owed it: another pass.
    Redo(crate::core::resync::ChangeSet),
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

impl LocalStep {
    /// Whether this step's failure faults the engine (rule 8): a write,
    /// truncate or sync that failed may have let pages go that still read
    /// back here. A namespace change that fails (exists, not found, not
    /// empty) changed nothing and fails only its call.
    pub fn faults_when_failed(&self) -> bool {
        matches!(
            self,
            LocalStep::Write { .. }
                | LocalStep::SetLen { .. }
                | LocalStep::SyncFiles { .. }
                | LocalStep::SyncDirs { .. }
        )
    }
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
    /// A rename during a resync, made here: what the resync still owes
    /// under `from` moves to `to` ([`crate::durable::changelog::ChangeLog::rename_owed`]).
    RenameOwed {
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
        /// Rename journal position the names are as of.
        as_of: u64,
    },
    /// A resync's end: forget all but the live entries, unless a pass is owed.
    ClearKeeping { extents: BTreeMap<FsPath, BTreeSet<u64>>, paths: BTreeSet<FsPath> },
    /// Retire activity entries (rewrites the log).
    Retire { extents: BTreeMap<FsPath, BTreeSet<u64>>, paths: BTreeSet<FsPath> },
}

impl LogOp {
    /// Rewrites or clears: no new activity record may go in meanwhile.
    pub(super) fn rewrites(&self) -> bool {
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
            | Command::RenameOwed { call, .. }
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
            Command::RenameOwed { .. } => "rename-owed",
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
        set: crate::core::resync::ChangeSet,
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

pub(super) fn op_name(op: &Op) -> &'static str {
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
            ResyncStep::Hold { .. } => "resync_hold",
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
