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
mod api;
mod calls;
mod claims;
mod link;
mod resync;
mod stream;
mod sync;
#[cfg(test)]
mod tests;

pub use activity::{RetireSet, DEFAULT_LIMIT as ACTIVITY_LIMIT, EXTENT_BLOCKS};
pub use api::*;
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
    /// A rename waiting while a resync holds renames.
    Held,
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
    /// Planted defect `RecordAfterLocalWrite` only: the record is still
    /// owed after the local write (`Some(false)`), or out (`Some(true)`).
    late_record: Option<bool>,
    /// When it returns ([`Wait`]).
    wait_for: Wait,
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
    /// New renames wait until this time (ms; 0: none held), and these are waiting.
    hold_until: u64,
    held: Vec<CallId>,
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
    /// Failed only because the arbiter could not be asked about a lost
    /// mirror: the change-log holds everything the mirror may lack, so the
    /// arbiter may still tell it to go on alone (not so for a primary the
    /// arbiter demoted or whose change-log failed).
    unheard: bool,
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
    /// Directories whose entries changed since they were last synced here,
    /// and what the directory sync out now covers.
    dirty_dirs: sync::DirtyDirs,
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
            unheard: false,
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
            dirty_dirs: sync::DirtyDirs::default(),
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

    /// Failed because the arbiter could not be asked about a lost mirror
    /// (and for no other reason): the change-log names everything the
    /// mirror may lack, so the pair can go on in change tracking on the
    /// arbiter's word.
    pub fn failed_unheard(&self) -> bool {
        self.unheard && matches!(self.mode, Mode::Failed(_))
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
        self.submit_with(id, op, Wait::Level, now)
    }

    /// [`Engine::submit`], returning when `wait_for` says.
    pub fn submit_with(&mut self, id: CallId, op: Op, wait_for: Wait, now: u64) {
        self.now = self.now.max(now);
        debug_assert!(!self.calls.contains_key(&id), "call {id} submitted twice");
        if matches!(op, Op::Shutdown) {
            // New calls are refused from here on; calls already admitted finish.
            self.closing = true;
            self.check_hold();
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
            late_record: None,
            wait_for,
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
            Event::RedoTaken { call, set } => {
                self.release_claims(call);
                self.complete(call, Ok(Reply::Redo(set)));
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
        self.check_hold();
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
        self.unheard = false;
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
