//! The storage layer on the primary: the API the host calls for every file
//! change. Each call does its local I/O and ships the change to the mirror
//! in one ordered stream, then returns when its sync level is met.
//!
//! Threads: callers (any number) and one receiver. A caller queues its
//! frame and, if no other caller is sending, drains the queue into one
//! vectored socket write (so frames of many callers leave together with no
//! thread hop); the receiver reads the mirror's cumulative acknowledgements
//! and wakes exactly the callers they cover. The only lock every mutating call takes is the queue lock, held
//! for a sequence number and a push; per-file and per-block stripes order
//! calls that touch the same file or block, so local and mirror order agree.

use crate::config::{check_block_size, check_filespaces, Filespace, PairIdentity, StreamTuning, SyncLevel};
use crate::core::primary::{PrimaryStream, TimerAction};
use crate::durable::activity::{ActivityLog, Cover};
use crate::durable::changelog::ChangeLog;
use crate::error::{Error, Result};
use crate::io::disk::{Disk, DiskError, DiskErrorKind, DiskFile, EntryKind, FsPath, OpenMode};
use crate::io::net::{is_timeout, recv_exact_until, Conn, ConnReader, ConnWriter};
use crate::protocol::handshake::{self, ClusterKey, Hello, Status};
use crate::protocol::path::RelPath;
use crate::protocol::{body_hash, Ack, Decoder, Header, Kind, FLAG_DURABLE, HEADER_LEN, MAX_WRITE_AT};
use crate::runtime::arbiter::{Arbiter, Decision};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const FILE_STRIPES: usize = 256;
const BLOCK_STRIPES: usize = 4096;
const CACHE_SHARDS: usize = 64;
/// Changes shipped but not yet durable on the mirror, before callers wait
/// (the mirror's checkpoint makes them durable at least once a second).
const MAX_WINDOW: usize = 1 << 20;
/// How long a caller polls for its acknowledgement before it parks.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);
const MAX_CACHED_PER_SHARD: usize = 64;
/// Changed directories remembered for the next sync before a namespace
/// call syncs them itself.
const MAX_DIRTY_DIRS: usize = 4096;

/// Everything the primary needs to start.
#[derive(Clone, Debug)]
pub struct PrimaryConfig {
    pub identity: PairIdentity,
    pub filespaces: Vec<Filespace>,
    pub key: ClusterKey,
    pub sync_level: SyncLevel,
    pub tuning: StreamTuning,
    /// Use io_uring for local I/O when the kernel offers it.
    pub prefer_uring: bool,
    /// What to do when the mirror is lost. `None`: calls fail (`MirrorLost`).
    pub change_tracking: Option<ChangeTracking>,
}

/// Change tracking: when the mirror is lost, ask the arbiter; if it marks
/// the mirror down, record every change the mirror has not durably
/// acknowledged in the change-log and go on alone (brief rules 3 and 4).
#[derive(Clone)]
pub struct ChangeTracking {
    pub changelog: Arc<ChangeLog>,
    pub arbiter: Arc<dyn Arbiter>,
    /// How long to wait for the arbiter before failing calls.
    pub decision_timeout: Duration,
}

impl std::fmt::Debug for ChangeTracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeTracking").field("decision_timeout", &self.decision_timeout).finish()
    }
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

/// What one operation changed, kept until the mirror makes it durable.
#[derive(Clone, Debug)]
enum Change {
    Blocks { path: FsPath, first: u64, last: u64 },
    Touched { path: FsPath, subtree: bool },
}

impl Change {
    fn touched(path: &FsPath, subtree: bool) -> Option<Change> {
        Some(Change::Touched { path: path.clone(), subtree })
    }
}

/// Counters for reports and monitoring.
#[derive(Debug, Default)]
pub struct Stats {
    pub operations: AtomicU64,
    pub payload_bytes: AtomicU64,
    pub frames_sent: AtomicU64,
    pub wire_bytes_sent: AtomicU64,
    pub batches_sent: AtomicU64,
}

/// A file stripe held shared or exclusive (held for its drop).
#[allow(dead_code)]
enum StripeGuard<'a> {
    Read(std::sync::RwLockReadGuard<'a, ()>),
    Write(std::sync::RwLockWriteGuard<'a, ()>),
}

/// A plain copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StatsSnapshot {
    pub operations: u64,
    pub payload_bytes: u64,
    pub frames_sent: u64,
    pub wire_bytes_sent: u64,
    pub batches_sent: u64,
    pub acked_applied: u64,
    pub acked_durable: u64,
}

/// A frame waiting to be sent: encoded header and body, and its sequence
/// number (0 for control frames and binds) for the "sent through" counter.
struct Out {
    header: [u8; HEADER_LEN],
    body: Bytes,
    seq: u64,
}

struct Queue {
    stream: PrimaryStream,
    /// Changes shipped but not yet durable on the mirror, by sequence number.
    window: std::collections::VecDeque<(u64, Change)>,
    pending: Vec<Out>,
    pending_bytes: usize,
    /// A caller is draining `pending` into the socket; others leave it to them.
    sending: bool,
    /// Wire bytes of every frame ever queued (all sessions), for the lag figures.
    bytes_queued: u64,
}

/// Operations whose cumulative byte count is remembered by sequence number:
/// the byte lag is exact while fewer operations than this are unacknowledged.
const LAG_RING: usize = 1 << 16;

/// Replication counters for status probes and `/metrics`. The write path
/// pays a few relaxed stores into them under the queue lock it already
/// holds; everything else is derived when they are read.
struct Counters {
    /// Last sequence number assigned, and last one written to the socket (this session).
    last_assigned: AtomicU64,
    last_sent: AtomicU64,
    /// `Queue::bytes_queued`, readable without the lock.
    bytes_queued: AtomicU64,
    /// `bytes_queued` just after operation `seq` was queued, at `seq % LAG_RING`.
    bytes_at: Box<[AtomicU64]>,
    /// Operations assigned in earlier sessions (a mirror taken back restarts at 1),
    /// and `bytes_queued` when this session began.
    ops_base: AtomicU64,
    bytes_base: AtomicU64,
    /// When the last acknowledgement arrived (ms since the epoch + 1; 0: none yet).
    last_ack_ms: AtomicU64,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            last_assigned: AtomicU64::new(0),
            last_sent: AtomicU64::new(0),
            bytes_queued: AtomicU64::new(0),
            bytes_at: (0..LAG_RING).map(|_| AtomicU64::new(0)).collect(),
            ops_base: AtomicU64::new(0),
            bytes_base: AtomicU64::new(0),
            last_ack_ms: AtomicU64::new(0),
        }
    }

    /// Bytes queued up to and including operation `seq` of this session:
    /// exact from the ring while `seq` is recent, else prorated.
    fn bytes_through(&self, seq: u64, last: u64, total: u64) -> u64 {
        let base = self.bytes_base.load(Ordering::Relaxed);
        if seq == 0 {
            return base;
        }
        if seq >= last {
            return total;
        }
        if last - seq < LAG_RING as u64 {
            return self.bytes_at[(seq % LAG_RING as u64) as usize].load(Ordering::Relaxed).clamp(base, total);
        }
        base + ((total - base) as u128 * seq as u128 / last as u128) as u64
    }
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

/// Which acknowledgement watermark a caller waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Applied = 0,
    Synced = 1,
    Durable = 2,
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

/// A caller parked until a watermark reaches its sequence number.
struct Waiter {
    seq: u64,
    mark: Mark,
    thread: std::thread::Thread,
}

struct Marks {
    ack: Ack,
    lost: Option<String>,
    waiters: Vec<Waiter>,
}

struct Inner {
    identity: PairIdentity,
    level: SyncLevel,
    disk: Arc<dyn Disk>,
    filespaces: Vec<Filespace>,
    queue: Mutex<Queue>,
    /// Signalled when `pending` drains below the bound (backpressure).
    queue_cv: Condvar,
    max_pending_bytes: usize,
    /// The socket; held only by the caller that is sending.
    sock: Mutex<Box<dyn ConnWriter>>,
    /// A second handle to close the connection from any thread.
    closer: Mutex<Box<dyn ConnWriter>>,
    marks: Mutex<Marks>,
    /// Copies of the watermarks (by [`Mark`]), for lock-free polling.
    mark_copies: [AtomicU64; 3],
    file_stripes: Vec<RwLock<()>>,
    block_stripes: Vec<Mutex<()>>,
    /// Serialize local fdatasync calls per file (rule 8).
    sync_stripes: Vec<Mutex<()>>,
    /// Set by `shutdown`: new calls are refused.
    closing: AtomicBool,
    mode: Mutex<Mode>,
    mode_cv: Condvar,
    tracking: Option<ChangeTracking>,
    /// Present with change tracking: covers changes while streaming (rule 5).
    activity: Option<Arc<ActivityLog>>,
    /// Mirrors `mode == ChangeTracking`, for the write path's check.
    tracking_on: AtomicBool,
    /// Mirrors `mode == Failed`, checked by every call under its locks.
    pair_failed: AtomicBool,
    /// Ourselves, for the thread that takes the arbiter's decision.
    me: std::sync::OnceLock<std::sync::Weak<Inner>>,
    /// Taken for writing by directory operations and renames, for reading
    /// when a file is opened: the open-file cache never serves a stale path.
    namespace: RwLock<()>,
    cache: Vec<Mutex<HashMap<FsPath, Arc<dyn DiskFile>>>>,
    faulted: Mutex<Option<String>>,
    /// Directories whose entries changed since the last `sync`/`flush`
    /// (a create, unlink, rename or directory operation): made durable by
    /// the next one, so a synced file keeps its name through a crash.
    dirty_dirs: Mutex<HashMap<String, Arc<dyn DiskFile>>>,
    stats: Stats,
    epoch: Instant,
    /// The configuration, for handshakes with a mirror taken back (resync).
    config: PrimaryConfig,
    /// Held while the window is recorded into the change-log and while a
    /// finished resync clears it, so a clear never wipes a window recorded
    /// after the mirror was lost.
    record_lock: Mutex<()>,
    /// A resync is shipping the change-log's contents.
    resyncing: AtomicBool,
    /// The resync running is a full one: it owes the mirror every path.
    resync_full: AtomicBool,
    /// Mirrors taken back so far: a resync stops when its mirror is gone,
    /// even if another is taken back meanwhile.
    attachments: AtomicU64,
    /// Compare mode: hash requests awaiting the mirror's answer (by
    /// sequence number: the count asked), and answers not yet taken.
    hash_wanted: Mutex<HashMap<u64, u32>>,
    hash_answers: Mutex<HashMap<u64, Vec<u64>>>,
    /// Verification: list requests awaiting the mirror's listing, and
    /// listings not yet taken (signalled on `hash_cv` too).
    list_wanted: Mutex<std::collections::HashSet<u64>>,
    list_answers: Mutex<HashMap<u64, crate::protocol::ListingBody>>,
    hash_cv: Condvar,
    /// Resync: the last flush queued for each file (this stream), until a
    /// checkpoint or the finish settles it: what the mirror has durably of
    /// that file once the flush is synced.
    resync_flushes: Mutex<HashMap<FsPath, u64>>,
    counters: Counters,
}

/// The primary side of a pair. Cheap to share: wrap it in an `Arc` and call
/// from as many threads as you like.
pub struct Primary {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn stripe_of<H: Hash>(h: &H, n: usize) -> usize {
    let mut s = std::collections::hash_map::DefaultHasher::new();
    h.hash(&mut s);
    (s.finish() as usize) % n
}

impl Primary {
    /// Open the local filespaces, handshake with the mirror over `conn`, and
    /// start the sender and receiver threads.
    pub fn start(cfg: PrimaryConfig, conn: Conn, peer: &str) -> Result<Primary> {
        check_block_size(cfg.identity.block_size)?;
        check_filespaces(&cfg.filespaces)?;
        let roots: Vec<_> = cfg.filespaces.iter().map(|f| f.root.clone()).collect();
        let disk = crate::io::disk::open_local(&roots, cfg.prefer_uring)?;
        Self::start_with_disk(cfg, disk, conn, peer)
    }

    pub fn start_with_disk(cfg: PrimaryConfig, disk: Arc<dyn Disk>, conn: Conn, peer: &str) -> Result<Primary> {
        let (mut reader, mut writer) = conn;
        let start_seq = 1;
        client_handshake(&cfg, start_seq, reader.as_mut(), writer.as_mut(), peer)?;
        let closer = writer.clone_writer().map_err(|e| Error::io("cloning the connection", e))?;
        // A mirror that stops reading must not hold a sending caller (or the
        // heartbeat) forever: a send that cannot finish in time loses the mirror.
        writer.set_send_timeout(Some(cfg.tuning.ack_timeout)).map_err(|e| Error::io("setting the send timeout", e))?;
        tracing::info!(peer, content = cfg.identity.content_id, generation = cfg.identity.generation,
            level = %cfg.sync_level.name(), "primary streaming to mirror");
        Self::launch(cfg, disk, writer, closer, Some(reader))
    }

    /// Start with no mirror, in change tracking from the first call: a
    /// mirror promoted by the arbiter, or a primary whose mirror the
    /// arbiter has marked down. Every change goes to the change-log.
    pub fn start_alone(cfg: PrimaryConfig, disk: Arc<dyn Disk>, why: &str) -> Result<Primary> {
        if cfg.change_tracking.is_none() {
            return Err(Error::InvalidArgument("a primary without a mirror needs change tracking".into()));
        }
        // A pipe nobody reads: nothing is ever sent on it.
        let ((_r, writer), _other) = crate::io::net::mem_pair(1, 1);
        let closer = writer.clone_writer().map_err(|e| Error::io("cloning the connection", e))?;
        tracing::warn!(
            content = cfg.identity.content_id,
            generation = cfg.identity.generation,
            why,
            "primary starting alone: change tracking"
        );
        let p = Self::launch(cfg, disk, writer, closer, None)?;
        lock(&p.inner.marks).lost = Some(format!("no mirror: {why}"));
        p.inner.set_mode(Mode::ChangeTracking);
        Ok(p)
    }

    fn launch(
        cfg: PrimaryConfig,
        disk: Arc<dyn Disk>,
        writer: Box<dyn ConnWriter>,
        closer: Box<dyn ConnWriter>,
        reader: Option<Box<dyn ConnReader>>,
    ) -> Result<Primary> {
        let start_seq = 1;
        let tuning = cfg.tuning.clone();
        let epoch = Instant::now();
        let activity = cfg
            .change_tracking
            .as_ref()
            .map(|t| ActivityLog::shared(t.changelog.clone(), disk.clone(), crate::durable::activity::DEFAULT_LIMIT));
        let inner = Arc::new(Inner {
            identity: cfg.identity.clone(),
            level: cfg.sync_level,
            disk,
            filespaces: cfg.filespaces.clone(),
            queue: Mutex::new(Queue {
                stream: PrimaryStream::new(
                    start_seq,
                    0,
                    tuning.heartbeat.as_millis() as u64,
                    tuning.ack_timeout.as_millis() as u64,
                ),
                pending: Vec::new(),
                pending_bytes: 0,
                sending: false,
                window: std::collections::VecDeque::new(),
                bytes_queued: 0,
            }),
            mode: Mutex::new(Mode::Streaming),
            mode_cv: Condvar::new(),
            activity,
            tracking: cfg.change_tracking.clone(),
            me: std::sync::OnceLock::new(),
            tracking_on: AtomicBool::new(false),
            pair_failed: AtomicBool::new(false),
            queue_cv: Condvar::new(),
            max_pending_bytes: tuning.queue_frames.max(1) * (HEADER_LEN + 32 * 1024),
            sock: Mutex::new(writer),
            closer: Mutex::new(closer),
            marks: Mutex::new(Marks { ack: Ack::default(), lost: None, waiters: Vec::new() }),
            mark_copies: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            file_stripes: (0..FILE_STRIPES).map(|_| RwLock::new(())).collect(),
            block_stripes: (0..BLOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            sync_stripes: (0..FILE_STRIPES).map(|_| Mutex::new(())).collect(),
            closing: AtomicBool::new(false),
            namespace: RwLock::new(()),
            cache: (0..CACHE_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            faulted: Mutex::new(None),
            dirty_dirs: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            epoch,
            config: cfg.clone(),
            record_lock: Mutex::new(()),
            resyncing: AtomicBool::new(false),
            resync_full: AtomicBool::new(false),
            attachments: AtomicU64::new(0),
            hash_wanted: Mutex::new(HashMap::new()),
            hash_answers: Mutex::new(HashMap::new()),
            list_wanted: Mutex::new(std::collections::HashSet::new()),
            list_answers: Mutex::new(HashMap::new()),
            resync_flushes: Mutex::new(HashMap::new()),
            hash_cv: Condvar::new(),
            counters: Counters::new(),
        });
        tracing::debug!(backend = inner.disk.name(), "primary local I/O");
        let _ = inner.me.set(Arc::downgrade(&inner));
        let mut threads = Vec::new();
        if let Some(mut reader) = reader {
            let r_inner = inner.clone();
            reader.set_timeout(Some(tuning.heartbeat)).map_err(|e| Error::io("setting the receive timeout", e))?;
            let receiver = std::thread::Builder::new()
                .name("filerep-receiver".into())
                .spawn(move || receiver_loop(r_inner, reader))
                .map_err(|e| Error::io("spawning the receiver thread", e))?;
            threads.push(receiver);
        }
        Ok(Primary { inner, threads: Mutex::new(threads) })
    }

    /// The generation this primary streams in.
    pub fn generation(&self) -> u64 {
        self.inner.identity.generation
    }

    pub fn block_size(&self) -> u32 {
        self.inner.identity.block_size
    }

    pub fn filespaces(&self) -> &[Filespace] {
        &self.inner.filespaces
    }

    pub fn sync_level(&self) -> SyncLevel {
        self.inner.level
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        let ack = lock(&self.inner.marks).ack;
        StatsSnapshot {
            operations: s.operations.load(Ordering::Relaxed),
            payload_bytes: s.payload_bytes.load(Ordering::Relaxed),
            frames_sent: s.frames_sent.load(Ordering::Relaxed),
            wire_bytes_sent: s.wire_bytes_sent.load(Ordering::Relaxed),
            batches_sent: s.batches_sent.load(Ordering::Relaxed),
            acked_applied: ack.applied,
            acked_durable: ack.durable,
        }
    }

    /// Replication figures (cheap: atomics, and the queue lock for a moment).
    pub fn replication(&self) -> ReplicationStats {
        let inner = &self.inner;
        let c = &inner.counters;
        let (queue_frames, queue_bytes, window_changes) = {
            let q = lock(&inner.queue);
            (q.pending.len() as u64, q.pending_bytes as u64, q.window.len() as u64)
        };
        let last = c.last_assigned.load(Ordering::Relaxed);
        let sent = c.last_sent.load(Ordering::Relaxed).min(last);
        let total = c.bytes_queued.load(Ordering::Relaxed);
        let base = c.ops_base.load(Ordering::Relaxed);
        let mark = |m: Mark| inner.mark_copies[m as usize].load(Ordering::Acquire).min(last);
        let (applied, synced, durable) = (mark(Mark::Applied), mark(Mark::Synced), mark(Mark::Durable));
        let streaming = self.mode() == Mode::Streaming && lock(&inner.marks).lost.is_none();
        let (bytes_applied, bytes_durable) =
            (c.bytes_through(applied, last, total), c.bytes_through(durable, last, total));
        let live = |x: u64| if streaming { x } else { 0 };
        let ack = c.last_ack_ms.load(Ordering::Relaxed);
        ReplicationStats {
            ops_sent: base + last,
            ops_applied: base + applied,
            ops_synced: base + synced,
            ops_durable: base + durable,
            bytes_queued: total,
            bytes_sent: inner.stats.wire_bytes_sent.load(Ordering::Relaxed),
            bytes_applied,
            bytes_durable,
            frames_sent: inner.stats.frames_sent.load(Ordering::Relaxed),
            batches_sent: inner.stats.batches_sent.load(Ordering::Relaxed),
            in_flight_ops: live(sent.saturating_sub(applied)),
            lag_ops: live(last - applied),
            lag_bytes: live(total.saturating_sub(bytes_applied)),
            durable_lag_ops: live(last - durable),
            durable_lag_bytes: live(total.saturating_sub(bytes_durable)),
            queue_frames: live(queue_frames),
            queue_bytes: live(queue_bytes),
            window_changes,
            since_ack_ms: (ack > 0 && streaming).then(|| inner.now_ms().saturating_sub(ack - 1)),
            sessions: inner.attachments.load(Ordering::SeqCst) + 1,
        }
    }

    /// Where the pair stands.
    pub fn mode(&self) -> Mode {
        self.inner.mode.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why the mirror was lost, if it was.
    pub fn mirror_lost(&self) -> Option<String> {
        self.inner.lost()
    }

    fn fspath(&self, fs: u16, path: &str) -> Result<FsPath> {
        if fs as usize >= self.inner.filespaces.len() {
            return Err(Error::InvalidArgument(format!(
                "filespace {fs} does not exist (this segment has {})",
                self.inner.filespaces.len()
            )));
        }
        Ok(FsPath::new(fs, RelPath::new(path)?))
    }

    fn check_block(&self, data_len: usize) -> Result<()> {
        let bs = self.inner.identity.block_size as usize;
        if data_len != bs {
            return Err(Error::InvalidArgument(format!("a block is {bs} bytes; {data_len} given")));
        }
        Ok(())
    }

    // ---- relation files -------------------------------------------------
    //
    // Locking, for every mutating call: the file's stripe (shared for block
    // and byte writes, exclusive for create, truncate, unlink and byte-range
    // writes), then the block's stripe for block writes, held from the
    // handle lookup through queueing the frame and the local I/O, so local
    // order and sequence order agree for any one file or block. Renames and
    // shutdown take every file stripe. Callers never wait for the mirror's
    // acknowledgement while holding a stripe, but a data write sends its
    // frame before its local I/O: a mirror that stops reading holds that
    // send, and the stripe, for at most the send timeout (`ack_timeout`),
    // which the decision's deadline leaves room for.

    /// Create a relation (or flat) file. Fails if it exists.
    pub fn create(&self, fs: u16, path: &str) -> Result<()> {
        let p = self.fspath(fs, path)?;
        let inner = &self.inner;
        inner.usable()?;
        let seq = {
            let _f = inner.file_stripe(&p).write().unwrap_or_else(|e| e.into_inner());
            let _ns = inner.namespace.read().unwrap_or_else(|e| e.into_inner());
            inner.check_open()?;
            let tracking = inner.tracking_now();
            let mut cover = inner.note_namespace_change(&p, false, tracking)?;
            let file = inner.disk.open(&p, OpenMode::CreateNew)?;
            inner.cache_put(&p, file);
            inner.dirty_dir(&p)?;
            match tracking {
                Some(_) => None,
                None => {
                    let seq = inner.ship(&p, Header::new(Kind::Create), Bytes::new(), 0, Change::touched(&p, false))?;
                    Some(Inner::shipped(&mut cover, seq))
                }
            }
        };
        inner.finish_namespace(seq)
    }

    /// Write one block (an evicted dirty buffer).
    pub fn write_block(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.check_block(data.len())?;
        self.write_block_at(&p, Kind::WriteBlock, block, data, false)
    }

    /// Append one block: `block` must equal the current number of blocks.
    pub fn extend(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.check_block(data.len())?;
        self.write_block_at(&p, Kind::Extend, block, data, true)
    }

    fn write_block_at(&self, p: &FsPath, kind: Kind, block: u64, data: &[u8], extend: bool) -> Result<()> {
        let inner = &self.inner;
        inner.usable()?;
        let bs = inner.identity.block_size as u64;
        let offset = block
            .checked_mul(bs)
            .filter(|o| o.checked_add(bs).is_some_and(|end| end <= crate::protocol::MAX_FILE_BYTES))
            .ok_or_else(|| Error::InvalidArgument(format!("block {block} is beyond the largest file")))?;
        let seq = {
            // Extends of one file serialize on its stripe so that "block == nblocks" holds.
            let _file = inner.file_guard(p, extend);
            let _b = lock(&inner.block_stripes[stripe_of(&(p, block), BLOCK_STRIPES)]);
            inner.check_open()?;
            let file = inner.file(p)?;
            if extend {
                let n = file.len()? / bs;
                if block != n {
                    return Err(Error::InvalidArgument(format!(
                        "extend of {p} at block {block}: the file has {n} blocks"
                    )));
                }
            }
            let seq = match inner.tracking_now() {
                // Rule 4: the block is recorded durably before it is written.
                Some(t) => {
                    t.changelog.record_block(p, block).map_err(|e| inner.tracking_failed(e))?;
                    None
                }
                None => {
                    let mut cover = inner.cover_blocks(p, block, block)?;
                    let mut h = Header::new(kind);
                    h.offset = block;
                    let seq =
                        inner.ship_data(p, h, data, Change::Blocks { path: p.clone(), first: block, last: block })?;
                    Some((Inner::shipped(&mut cover, seq), cover))
                }
            };
            inner.write_local(file.as_ref(), p, offset, data)?;
            seq.map(|(seq, _cover)| seq)
        };
        inner.wait_level_opt(seq)
    }

    /// Read one block. A block past the end of the file is an error.
    pub fn read_block(&self, fs: u16, path: &str, block: u64, buf: &mut [u8]) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.check_block(buf.len())?;
        let offset = block
            .checked_mul(self.inner.identity.block_size as u64)
            .ok_or_else(|| Error::InvalidArgument(format!("block {block} is beyond the largest file")))?;
        let file = self.inner.file_shared(&p)?;
        let n = file.read_at(offset, buf)?;
        if n != buf.len() {
            return Err(Error::InvalidArgument(format!("block {block} of {p} is past the end of the file")));
        }
        Ok(())
    }

    /// Number of whole blocks in a relation file.
    pub fn nblocks(&self, fs: u16, path: &str) -> Result<u64> {
        let p = self.fspath(fs, path)?;
        Ok(self.inner.file_shared(&p)?.len()? / self.inner.identity.block_size as u64)
    }

    /// Truncate a relation file to `nblocks` blocks.
    pub fn truncate(&self, fs: u16, path: &str, nblocks: u64) -> Result<()> {
        let len = nblocks
            .checked_mul(self.inner.identity.block_size as u64)
            .filter(|l| *l <= crate::protocol::MAX_FILE_BYTES)
            .ok_or_else(|| Error::InvalidArgument(format!("{nblocks} blocks is beyond the largest file")))?;
        self.set_len(fs, path, len)
    }

    /// Set a flat file's length in bytes.
    pub fn set_len(&self, fs: u16, path: &str, len: u64) -> Result<()> {
        let p = self.fspath(fs, path)?;
        if len > crate::protocol::MAX_FILE_BYTES {
            return Err(Error::InvalidArgument(format!("length {len} is beyond the largest file")));
        }
        let inner = &self.inner;
        inner.usable()?;
        let seq = {
            let _f = inner.file_stripe(&p).write().unwrap_or_else(|e| e.into_inner());
            inner.check_open()?;
            let file = inner.file(&p)?;
            let tracking = inner.tracking_now();
            let mut cover = inner.note_namespace_change(&p, false, tracking)?;
            if let Err(e) = file.set_len(len) {
                return Err(inner.fault(format!("local truncate of {p} failed: {e}")));
            }
            match tracking {
                Some(_) => None,
                None => {
                    let mut h = Header::new(Kind::Truncate);
                    h.offset = len;
                    let seq = inner.ship(&p, h, Bytes::new(), 0, Change::touched(&p, false))?;
                    Some(Inner::shipped(&mut cover, seq))
                }
            }
        };
        inner.finish_namespace(seq)
    }

    /// Remove a file.
    pub fn unlink(&self, fs: u16, path: &str) -> Result<()> {
        let p = self.fspath(fs, path)?;
        let inner = &self.inner;
        inner.usable()?;
        let seq = {
            let _f = inner.file_stripe(&p).write().unwrap_or_else(|e| e.into_inner());
            let _ns = inner.namespace.read().unwrap_or_else(|e| e.into_inner());
            inner.check_open()?;
            let tracking = inner.tracking_now();
            let mut cover = inner.note_namespace_change(&p, false, tracking)?;
            inner.disk.remove_file(&p)?;
            inner.cache_remove_under(&p);
            inner.dirty_dir(&p)?;
            match tracking {
                Some(_) => None,
                None => {
                    let seq = inner.ship(&p, Header::new(Kind::Unlink), Bytes::new(), 0, Change::touched(&p, false))?;
                    lock(&inner.queue).stream.unbind(&p);
                    Some(Inner::shipped(&mut cover, seq))
                }
            }
        };
        inner.finish_namespace(seq)
    }

    /// Make a relation file durable on both sides.
    pub fn sync(&self, fs: u16, path: &str) -> Result<()> {
        self.durable_point(fs, path, Kind::Sync)
    }

    // ---- flat and log files ---------------------------------------------

    /// Write bytes at an offset of a flat or log file (at most 256 KiB a call).
    pub fn write_at(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        let p = self.fspath(fs, path)?;
        if data.is_empty() || data.len() > MAX_WRITE_AT {
            return Err(Error::InvalidArgument(format!(
                "write_at takes 1 to {MAX_WRITE_AT} bytes; {} given",
                data.len()
            )));
        }
        if offset.checked_add(data.len() as u64).is_none_or(|e| e > crate::protocol::MAX_FILE_BYTES) {
            return Err(Error::InvalidArgument(format!("offset {offset} is beyond the largest file")));
        }
        let inner = &self.inner;
        inner.usable()?;
        let bs = inner.identity.block_size as u64;
        let (first, last) = (offset / bs, (offset + data.len() as u64 - 1) / bs);
        let seq = {
            // Byte ranges may overlap each other and any block: exclusive per file.
            let _f = inner.file_stripe(&p).write().unwrap_or_else(|e| e.into_inner());
            inner.check_open()?;
            let file = inner.file(&p)?;
            let seq = match inner.tracking_now() {
                Some(t) => {
                    let blocks = (first..=last).map(|b| (p.clone(), b));
                    t.changelog.record_batch(blocks, std::iter::empty()).map_err(|e| inner.tracking_failed(e))?;
                    None
                }
                None => {
                    let mut cover = inner.cover_blocks(&p, first, last)?;
                    let mut h = Header::new(Kind::WriteAt);
                    h.offset = offset;
                    let seq = inner.ship_data(&p, h, data, Change::Blocks { path: p.clone(), first, last })?;
                    Some((Inner::shipped(&mut cover, seq), cover))
                }
            };
            inner.write_local(file.as_ref(), &p, offset, data)?;
            seq.map(|(seq, _cover)| seq)
        };
        inner.wait_level_opt(seq)
    }

    /// Make a flat or log file durable on both sides.
    pub fn flush(&self, fs: u16, path: &str) -> Result<()> {
        self.durable_point(fs, path, Kind::Flush)
    }

    /// Make every directory change made before this call (creates,
    /// unlinks, renames, mkdir, rmdir, anywhere in any filespace) durable on
    /// both sides: a directory fsync. `dir` names an existing directory of
    /// filespace `fs` ("" for its root); the engine tracks which directories
    /// changed and syncs all of them, here and on the mirror.
    pub fn sync_dir(&self, fs: u16, dir: &str) -> Result<()> {
        if dir.is_empty() {
            if fs as usize >= self.inner.filespaces.len() {
                return Err(Error::InvalidArgument(format!("filespace {fs} does not exist")));
            }
        } else {
            let p = self.fspath(fs, dir)?;
            match self.inner.disk.entry_kind(&p)? {
                Some(EntryKind::Dir) => {}
                Some(_) => return Err(Error::InvalidArgument(format!("{p} is not a directory"))),
                None => {
                    return Err(Error::Disk(DiskError::new(
                        "sync_dir",
                        &p,
                        DiskErrorKind::NotFound,
                        "no such directory",
                    )))
                }
            }
        }
        let inner = &self.inner;
        inner.usable()?;
        inner.check_open()?;
        let seq = match inner.tracking_now() {
            // Alone, durable means durable here; the changes are tracked.
            Some(_) => None,
            None => {
                let mut h = Header::new(Kind::SyncDirs);
                h.filespace = fs;
                let seq = inner.ship_unbound(h, Bytes::new(), None)?;
                inner.flush();
                Some(seq)
            }
        };
        // The mirror syncs its changed directories while we sync ours.
        inner.sync_dirty_dirs()?;
        match seq {
            Some(seq) => inner.wait_mark(seq, Mark::Synced, None),
            None => Ok(()),
        }
    }

    /// Length of a flat file in bytes.
    pub fn len(&self, fs: u16, path: &str) -> Result<u64> {
        let p = self.fspath(fs, path)?;
        Ok(self.inner.file_shared(&p)?.len()?)
    }

    fn durable_point(&self, fs: u16, path: &str, kind: Kind) -> Result<()> {
        let p = self.fspath(fs, path)?;
        let inner = &self.inner;
        inner.usable()?;
        let (seq, file) = {
            let _f = inner.file_stripe(&p).read().unwrap_or_else(|e| e.into_inner());
            inner.check_open()?;
            let file = inner.file(&p)?;
            match inner.tracking_now() {
                // Alone, durable means durable here; the changes are tracked.
                Some(_) => (None, file),
                None => (Some(inner.ship(&p, Header::new(kind), Bytes::new(), 0, None)?), file),
            }
        };
        if seq.is_some() {
            inner.flush();
        }
        // The mirror syncs while we do: the caller waits for the slower.
        // Syncs of one file are serialized: a write-back error is reported
        // to one fdatasync only, and the others must not miss it (rule 8).
        {
            let _s = lock(&inner.sync_stripes[stripe_of(&p, FILE_STRIPES)]);
            inner.usable_locally()?;
            if let Err(e) = file.sync_data() {
                return Err(
                    inner.fault(format!("local fdatasync of {p} failed: {e}; nothing written to it is durable"))
                );
            }
        }
        inner.sync_dirty_dirs()?;
        match seq {
            Some(seq) => inner.wait_mark(seq, Mark::Synced, None),
            None => Ok(()),
        }
    }

    // ---- filespace operations -------------------------------------------

    pub fn mkdir(&self, fs: u16, path: &str) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.dir_op(&p, Kind::Mkdir, |d| d.create_dir(&p))
    }

    pub fn rmdir(&self, fs: u16, path: &str) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.dir_op(&p, Kind::Rmdir, |d| d.remove_dir(&p))
    }

    fn dir_op(&self, p: &FsPath, kind: Kind, local: impl FnOnce(&dyn Disk) -> Result<(), DiskError>) -> Result<()> {
        let inner = &self.inner;
        inner.usable()?;
        let seq = {
            let _ns = inner.namespace.write().unwrap_or_else(|e| e.into_inner());
            inner.check_open()?;
            let tracking = inner.tracking_now();
            let mut cover = inner.note_namespace_change(p, true, tracking)?;
            local(inner.disk.as_ref())?;
            inner.dirty_dir(p)?;
            match tracking {
                Some(_) => None,
                None => {
                    let mut h = Header::new(kind);
                    h.filespace = p.filespace;
                    let body = Bytes::copy_from_slice(p.path.as_str().as_bytes());
                    let seq = inner.ship_unbound(h, body, Change::touched(p, true))?;
                    Some(Inner::shipped(&mut cover, seq))
                }
            }
        };
        inner.finish_namespace(seq)
    }

    /// Rename a file or directory within a filespace (atomic, replaces a file at `to`).
    pub fn rename(&self, fs: u16, from: &str, to: &str) -> Result<()> {
        let from = self.fspath(fs, from)?;
        let to = self.fspath(fs, to)?;
        if to.path.is_within(&from.path) {
            return Err(Error::InvalidArgument(format!("cannot move {from} into itself ({to})")));
        }
        let inner = &self.inner;
        inner.usable()?;
        let seq = {
            // A directory rename moves files under any stripe: quiesce them all.
            let _all = inner.all_file_stripes();
            let _ns = inner.namespace.write().unwrap_or_else(|e| e.into_inner());
            inner.check_open()?;
            let tracking = inner.tracking_now();
            let mut cover_from = inner.cover_path(&from, true)?;
            let mut cover_to = inner.cover_path(&to, true)?;
            if let Some(t) = &tracking {
                let touched = [(from.clone(), true), (to.clone(), true)];
                t.changelog.record_batch(std::iter::empty(), touched).map_err(|e| inner.tracking_failed(e))?;
            } else if inner.resyncing.load(Ordering::SeqCst) {
                // The mirror's copy of `from` may still be stale; the rename
                // moves it where the resync may never look: `to` is owed
                // another pass (found by the fault simulator).
                if let Some(t) = &inner.tracking {
                    let all = inner.resync_full.load(Ordering::SeqCst);
                    t.changelog.redo_if_owed(&from, &to, all).map_err(|e| inner.tracking_failed(e))?;
                }
            }
            inner.disk.rename(&from, &to)?;
            inner.cache_remove_under(&from);
            inner.cache_remove_under(&to);
            inner.dirty_dir(&from)?;
            inner.dirty_dir(&to)?;
            match tracking {
                Some(_) => None,
                None => {
                    let mut h = Header::new(Kind::Rename);
                    h.filespace = fs;
                    h.aux = from.path.as_str().len() as u32;
                    h.flags |= inner.level_flags();
                    let mut body = Vec::with_capacity(from.path.as_str().len() + to.path.as_str().len());
                    body.extend_from_slice(from.path.as_str().as_bytes());
                    body.extend_from_slice(to.path.as_str().as_bytes());
                    let body = Bytes::from(body);
                    h.body_len = body.len() as u32;
                    h.body_hash = body_hash(&body);
                    let mut q = inner.queue_space()?;
                    let changes = [
                        Change::Touched { path: from.clone(), subtree: true },
                        Change::Touched { path: to.clone(), subtree: true },
                    ];
                    let seq = inner.push_locked(&mut q, h, body, changes);
                    q.stream.rebind(&from, &to);
                    Inner::shipped(&mut cover_from, seq);
                    Some(Inner::shipped(&mut cover_to, seq))
                }
            }
        };
        inner.finish_namespace(seq)
    }

    /// Whether a file or directory exists on the primary.
    pub fn exists(&self, fs: u16, path: &str) -> Result<bool> {
        let p = self.fspath(fs, path)?;
        Ok(self.inner.disk.exists(&p)?)
    }

    /// Orderly end: new calls are refused, calls already past their local
    /// step finish, the mirror makes everything durable and acknowledges,
    /// then both sides close. Returns the last sequence number shipped.
    pub fn shutdown(&self, timeout: Duration) -> Result<u64> {
        let inner = &self.inner;
        inner.closing.store(true, Ordering::SeqCst);
        if *inner.mode.lock().unwrap_or_else(|e| e.into_inner()) != Mode::Streaming {
            // No stream to end: let calls past their checks finish, then stop.
            let _all = inner.all_file_stripes();
            let _ns = inner.namespace.write().unwrap_or_else(|e| e.into_inner());
            inner.stop("shut down");
            return Ok(lock(&inner.queue).stream.last_seq());
        }
        let last = {
            let _all = inner.all_file_stripes();
            let _ns = inner.namespace.write().unwrap_or_else(|e| e.into_inner());
            let mut q = lock(&inner.queue);
            let last = q.stream.last_seq();
            let mut h = Header::new(Kind::Shutdown);
            h.offset = last;
            Inner::push_out(&mut q, h, Bytes::new());
            last
        };
        inner.flush();
        let result = inner.wait_mark(last, Mark::Durable, Some(Instant::now() + timeout));
        inner.stop("shut down");
        if let (Err(e), Some(t)) = (&result, &inner.tracking) {
            // The mirror did not confirm everything: what it lacks must not
            // be forgotten once this process is gone.
            tracing::warn!(error = %e, "orderly shutdown unconfirmed: recording the window in the change-log");
            if let Err(e) = inner.record_window(t) {
                tracing::error!(error = %e, "cannot record the window; the segment needs a full resync");
            }
        }
        if let (Ok(()), Some(al)) = (&result, &inner.activity) {
            // The mirror has everything durably: nothing is in doubt after a restart.
            if let Err(e) = al.retire_all(last) {
                tracing::warn!(error = %e, "cannot retire the activity log after an orderly shutdown");
            }
        }
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        result.map(|_| last)
    }
}

/// A hash request queued with [`Primary::queue_hashes`]: blocks
/// `first..first + local.len()`, their hashes here, the request's sequence
/// number, and the file's size when they were read (blocks, and the bytes
/// of the range that lay inside the file).
pub(crate) struct HashTicket {
    pub first: u64,
    pub local: Vec<u64>,
    pub seq: u64,
    pub blocks: u64,
    pub bytes: u64,
}

/// A list request queued with [`Primary::queue_listing`]: what the path is
/// here, its children here (sorted by name), and the request's sequence number.
pub(crate) struct ListTicket {
    pub kind: Option<crate::io::disk::EntryKind>,
    pub children: Vec<(String, crate::io::disk::EntryKind)>,
    pub seq: u64,
}

/// What a path is on the primary, as a resync found it and shipped it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalEntry {
    Absent,
    File { len: u64 },
    Dir { children: Vec<(String, crate::io::disk::EntryKind)> },
}

impl Primary {
    /// Take a repaired mirror back (resync): from change tracking, hand-
    /// shake over `conn` and stream again. New calls ship from here on; the
    /// change-log keeps what the mirror lacks until [`crate::runtime::resync`] has
    /// shipped it and [`Primary::resync_finish`] clears it.
    pub fn attach_mirror(&self, conn: Conn, peer: &str) -> Result<()> {
        let inner = &self.inner;
        if inner.tracking.is_none() || self.mode() != Mode::ChangeTracking {
            return Err(Error::InvalidArgument(format!(
                "only a primary in change tracking takes a mirror back (this one is {:?})",
                self.mode()
            )));
        }
        let (mut reader, mut writer) = conn;
        client_handshake(&inner.config, 1, reader.as_mut(), writer.as_mut(), peer)?;
        let tuning = &inner.config.tuning;
        let closer = writer.clone_writer().map_err(|e| Error::io("cloning the connection", e))?;
        writer.set_send_timeout(Some(tuning.ack_timeout)).map_err(|e| Error::io("setting the send timeout", e))?;
        reader.set_timeout(Some(tuning.heartbeat)).map_err(|e| Error::io("setting the receive timeout", e))?;
        {
            // Quiesce every call: none is between its mode check and its push.
            let _all = inner.all_file_stripes();
            let _ns = inner.namespace.write().unwrap_or_else(|e| e.into_inner());
            let _r = lock(&inner.record_lock);
            *lock(&inner.sock) = writer;
            *lock(&inner.closer) = closer;
            {
                let mut q = lock(&inner.queue);
                q.stream = PrimaryStream::new(
                    1,
                    inner.now_ms(),
                    tuning.heartbeat.as_millis() as u64,
                    tuning.ack_timeout.as_millis() as u64,
                );
                // Queued after the loss and never sent: in the change-log already.
                q.pending.clear();
                q.pending_bytes = 0;
                q.window.clear();
                let c = &inner.counters;
                c.ops_base.fetch_add(c.last_assigned.swap(0, Ordering::Relaxed), Ordering::Relaxed);
                c.last_sent.store(0, Ordering::Relaxed);
                c.bytes_base.store(q.bytes_queued, Ordering::Relaxed);
                c.last_ack_ms.store(0, Ordering::Relaxed);
            }
            // Sequence numbers restart with the new stream.
            lock(&inner.resync_flushes).clear();
            for m in &inner.mark_copies {
                m.store(0, Ordering::Release);
            }
            *lock(&inner.marks) = Marks { ack: Ack::default(), lost: None, waiters: Vec::new() };
            inner.attachments.fetch_add(1, Ordering::SeqCst);
            // The paths change tracking recorded are owed to the resync, as
            // the extents pinned when the mirror was marked down: an
            // activity entry of the same path (hot before the loss, its
            // sequence number from the old stream) must not take the record
            // with it when it retires (found by the fault simulator). The
            // activity table starts afresh with the stream.
            if let Some(t) = &inner.tracking {
                t.changelog.pin_touched();
                // A stopped resync's passes owed are in its plan now.
                t.changelog.take_redo();
            }
            if let Some(al) = &inner.activity {
                al.restart_stream();
            }
            inner.resyncing.store(true, Ordering::SeqCst);
            inner.set_mode(Mode::Streaming);
        }
        let r_inner = inner.clone();
        let receiver = std::thread::Builder::new()
            .name("filerep-receiver".into())
            .spawn(move || receiver_loop(r_inner, reader))
            .map_err(|e| Error::io("spawning the receiver thread", e))?;
        lock(&self.threads).push(receiver);
        tracing::warn!(peer, generation = inner.identity.generation, "mirror taken back: streaming, resync pending");
        Ok(())
    }

    /// Whether a resync is in progress (the stream runs, the change-log is not yet drained).
    pub fn resyncing(&self) -> bool {
        self.inner.resyncing.load(Ordering::SeqCst)
    }

    /// Which mirror taken back a resync works for (see [`Primary::resync_check`]).
    pub(crate) fn attachment(&self) -> u64 {
        self.inner.attachments.load(Ordering::SeqCst)
    }

    /// A resync step goes on only while the mirror it was started for
    /// streams: once that mirror is lost, every later step fails (the
    /// change-log still names everything not yet recorded as done).
    pub(crate) fn resync_check(&self, attachment: u64) -> Result<()> {
        if !self.resyncing() || self.attachment() != attachment {
            return Err(Error::MirrorLost("the mirror was lost during the resync".into()));
        }
        Ok(())
    }

    /// What a resync must ship (all of it, and every rename meanwhile,
    /// with `full`), from the change-log.
    pub(crate) fn resync_plan(&self, full: bool) -> Result<crate::durable::changelog::ChangeSet> {
        let t = self.inner.resync_tracking()?;
        if !self.resyncing() {
            return Err(Error::InvalidArgument("no mirror taken back: attach one first".into()));
        }
        self.inner.resync_full.store(full, Ordering::SeqCst);
        Ok(t.changelog.resync_set())
    }

    /// Paths renamed during the resync that it owes another pass
    /// ([`ChangeLog::redo_if_owed`]).
    pub(crate) fn resync_redo(&self) -> Result<std::collections::BTreeSet<FsPath>> {
        let t = self.inner.resync_tracking()?;
        // A rename records its target before it renames (holding the
        // namespace lock throughout): taken under the lock, every target
        // is already what the pass will look at.
        let _ns = self.inner.namespace.read().unwrap_or_else(|e| e.into_inner());
        Ok(t.changelog.take_redo())
    }

    /// A full resync has walked everything: from now on a rename owes
    /// another pass only what the change-log still names.
    pub(crate) fn resync_walked(&self) {
        self.inner.resync_full.store(false, Ordering::SeqCst);
    }

    pub(crate) fn disk(&self) -> &Arc<dyn Disk> {
        &self.inner.disk
    }

    /// Resync: look at one path (`None`: the filespace root) and ship what
    /// it is, with no call changing it meanwhile. With `prune`, a directory's
    /// children are listed and the mirror keeps only those.
    pub(crate) fn resync_reconcile(&self, fs: u16, path: Option<&RelPath>, prune: bool) -> Result<LocalEntry> {
        let inner = &self.inner;
        inner.usable()?;
        let here = path.map(|p| FsPath::new(fs, p.clone()));
        // File stripe, then the namespace: the order every call takes them in.
        let _f = here.as_ref().map(|p| inner.file_stripe(p).write().unwrap_or_else(|e| e.into_inner()));
        let _ns = inner.namespace.write().unwrap_or_else(|e| e.into_inner());
        inner.check_open()?;
        // Not through the handle cache: it takes the namespace lock we hold.
        let (h, body, local) = reconcile_frame(inner.disk.as_ref(), fs, path, prune)?;
        let change = here.map(|p| Change::Touched { path: p, subtree: true });
        inner.ship_unbound(h, body, change)?;
        Ok(local)
    }

    /// Resync: copy blocks `first..first + count` of `p` (as far as the file
    /// reaches) to the mirror, read and queued with the file locked against
    /// writes, so any later write of them is queued after (rule 6). At most
    /// 256 KiB a call. Returns the bytes shipped (0 if the file is gone).
    pub(crate) fn resync_copy(&self, p: &FsPath, first: u64, count: u64) -> Result<u64> {
        let inner = &self.inner;
        inner.usable()?;
        let bs = inner.identity.block_size as u64;
        let shipped = {
            let _f = inner.file_stripe(p).write().unwrap_or_else(|e| e.into_inner());
            inner.check_open()?;
            let Some(file) = inner.file_if_present(p)? else { return Ok(0) };
            let Some((offset, buf)) = crate::runtime::resync::read_copy(file.as_ref(), first, count, bs)? else {
                return Ok(0);
            };
            let n = buf.len();
            let last = first + (n as u64).div_ceil(bs) - 1;
            let mut cover = inner.cover_blocks(p, first, last)?;
            let mut h = Header::new(Kind::WriteAt);
            h.offset = offset;
            // Queued only: the engine sends copies in batches (`resync_send`).
            let seq = inner.ship(p, h, Bytes::from(buf), n, Some(Change::Blocks { path: p.clone(), first, last }))?;
            Inner::shipped(&mut cover, seq);
            n as u64
        };
        Ok(shipped)
    }

    /// Resync, compare mode: hashes of `count` blocks of `p` from `first`,
    /// here and on the mirror at the same point of the stream (the local
    /// ones read, and the request queued, with the file locked against
    /// writes). `None` if the file is gone here.
    pub(crate) fn resync_hashes(
        &self,
        p: &FsPath,
        first: u64,
        count: u32,
        timeout: Duration,
    ) -> Result<Option<(Vec<u64>, Vec<u64>)>> {
        let Some(t) = self.queue_hashes(p, |_| (first, count))? else { return Ok(None) };
        self.inner.flush();
        let remote = self.await_hashes(t.seq, timeout)?;
        Ok(Some((t.local, remote)))
    }

    /// Queue a hash request for blocks of `p` chosen by `pick` from the
    /// file's current size in blocks (a partial last block counts): the
    /// local hashes are read and the request queued with the file locked
    /// against writes, so both sides hash the same point of the stream.
    /// `None` if the file is gone here. Not sent yet (see `flush_queue`).
    pub(crate) fn queue_hashes(&self, p: &FsPath, pick: impl FnOnce(u64) -> (u64, u32)) -> Result<Option<HashTicket>> {
        let inner = &self.inner;
        inner.usable()?;
        let bs = inner.identity.block_size as u64;
        let _f = inner.file_stripe(p).write().unwrap_or_else(|e| e.into_inner());
        inner.check_open()?;
        let Some(file) = inner.file_if_present(p)? else { return Ok(None) };
        let len = file.len()?;
        let blocks = len.div_ceil(bs);
        let (first, count) = pick(blocks);
        if count == 0 || count > crate::protocol::MAX_HASH_BLOCKS {
            return Err(Error::InvalidArgument(format!("{count} blocks do not fit one hash request")));
        }
        let local = crate::runtime::resync::hash_blocks(Some(file.as_ref()), first, count, inner.identity.block_size)?;
        let end = (first + count as u64).saturating_mul(bs).min(len);
        let bytes = end.saturating_sub(first.saturating_mul(bs));
        let mut h = Header::new(Kind::HashRequest);
        h.offset = first;
        h.aux = count;
        // Registered before it can be answered.
        let mut wanted = lock(&inner.hash_wanted);
        let seq = inner.ship(p, h, Bytes::new(), 0, None)?;
        wanted.insert(seq, count);
        Ok(Some(HashTicket { first, local, seq, blocks, bytes }))
    }

    /// The mirror's answer to the hash request `seq`.
    pub(crate) fn await_hashes(&self, seq: u64, timeout: Duration) -> Result<Vec<u64>> {
        let inner = &self.inner;
        let deadline = Instant::now() + timeout;
        let mut answers = lock(&inner.hash_answers);
        loop {
            if let Some(remote) = answers.remove(&seq) {
                return Ok(remote);
            }
            if let Some(l) = inner.lost() {
                lock(&inner.hash_wanted).remove(&seq);
                return Err(Error::MirrorLost(l));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                lock(&inner.hash_wanted).remove(&seq);
                return Err(Error::MirrorLost(format!("no hashes for #{seq} in time")));
            }
            answers = inner
                .hash_cv
                .wait_timeout(answers, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Verification: list directory `dir` of filespace `fs` (`None`: its
    /// root) here, and queue a request for the mirror's listing, with the
    /// namespace locked: every create, unlink, rename and directory change
    /// is then either in both listings or in neither.
    pub(crate) fn queue_listing(&self, fs: u16, dir: Option<&RelPath>) -> Result<ListTicket> {
        use crate::io::disk::EntryKind;
        let inner = &self.inner;
        inner.usable()?;
        if fs as usize >= inner.filespaces.len() {
            return Err(Error::InvalidArgument(format!("filespace {fs} does not exist")));
        }
        let _ns = inner.namespace.write().unwrap_or_else(|e| e.into_inner());
        inner.check_open()?;
        let kind = match dir {
            Some(d) => inner.disk.entry_kind(&FsPath::new(fs, d.clone()))?,
            None => Some(EntryKind::Dir),
        };
        let children = match kind {
            Some(EntryKind::Dir) => inner.disk.list_dir(fs, dir)?,
            _ => Vec::new(),
        };
        let mut h = Header::new(Kind::ListRequest);
        h.filespace = fs;
        let body = Bytes::copy_from_slice(dir.map(|d| d.as_str().as_bytes()).unwrap_or_default());
        let mut wanted = lock(&inner.list_wanted);
        let seq = inner.ship_unbound(h, body, None)?;
        wanted.insert(seq);
        Ok(ListTicket { kind, children, seq })
    }

    /// The mirror's answer to the list request `seq`.
    pub(crate) fn await_listing(&self, seq: u64, timeout: Duration) -> Result<crate::protocol::ListingBody> {
        let inner = &self.inner;
        let deadline = Instant::now() + timeout;
        loop {
            let answer = lock(&inner.list_answers).remove(&seq);
            if let Some(l) = answer {
                return Ok(l);
            }
            if let Some(l) = inner.lost() {
                lock(&inner.list_wanted).remove(&seq);
                return Err(Error::MirrorLost(l));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                lock(&inner.list_wanted).remove(&seq);
                return Err(Error::MirrorLost(format!("no listing for #{seq} in time")));
            }
            // Answers are signalled on the hash condvar, under the hash answers' lock.
            let answers = lock(&inner.hash_answers);
            if lock(&inner.list_answers).contains_key(&seq) {
                continue;
            }
            drop(inner.hash_cv.wait_timeout(answers, left.min(Duration::from_millis(50))));
        }
    }

    /// Send whatever is queued (verification and resync requests).
    pub(crate) fn flush_queue(&self) {
        self.inner.flush();
    }

    /// Verification goes on only while the pair streams with the mirror
    /// it started with, and no resync runs.
    pub(crate) fn verify_check(&self, attachment: u64) -> Result<()> {
        if let Some(l) = self.mirror_lost() {
            return Err(Error::MirrorLost(l));
        }
        if self.attachment() != attachment {
            return Err(Error::MirrorLost("the mirror was lost and taken back during the verification".into()));
        }
        match self.mode() {
            Mode::Streaming if self.resyncing() => {
                Err(Error::Rejected("the mirror is being resynchronized: nothing to verify until it is done".into()))
            }
            Mode::Streaming => Ok(()),
            m => Err(Error::Rejected(format!("the pair is not streaming ({m:?})"))),
        }
    }

    /// Wait until everything queued so far is durable on the mirror, files
    /// and directory entries (its checkpoint runs at least once a second).
    pub(crate) fn wait_all_durable(&self, timeout: Duration) -> Result<()> {
        let last = lock(&self.inner.queue).stream.last_seq();
        self.inner.flush();
        self.inner.wait_mark(last, Mark::Durable, Some(Instant::now() + timeout))
    }

    /// Resync: send whatever copies are queued.
    pub(crate) fn resync_send(&self) {
        self.inner.flush();
    }

    /// Resync: ask the mirror to make `p` durable (a flush frame); returns
    /// its sequence number, or `None` if the file is gone here.
    pub(crate) fn resync_flush(&self, p: &FsPath) -> Result<Option<u64>> {
        let inner = &self.inner;
        inner.usable()?;
        // Exclusive: every write queued before this flush has done its
        // local write too, so the local fsync that follows covers it before
        // its activity entry counts as settled (a write still in flight
        // here would be dropped while only in this host's page cache).
        let _f = inner.file_stripe(p).write().unwrap_or_else(|e| e.into_inner());
        inner.check_open()?;
        if inner.file_if_present(p)?.is_none() {
            return Ok(None);
        }
        let seq = inner.ship(p, Header::new(Kind::Flush), Bytes::new(), 0, None)?;
        lock(&inner.resync_flushes).insert(p.clone(), seq);
        inner.flush();
        Ok(Some(seq))
    }

    /// Resync progress: once the flush `synced` is synced on the mirror,
    /// record durably that `blocks` and `paths` no longer differ (unless the
    /// mirror was lost meanwhile), so a resync that stops later continues
    /// with what is left.
    pub(crate) fn resync_checkpoint(
        &self,
        synced: u64,
        flushed: &std::collections::BTreeSet<FsPath>,
        blocks: &std::collections::BTreeMap<FsPath, std::collections::BTreeSet<u64>>,
        paths: &[FsPath],
        timeout: Duration,
    ) -> Result<()> {
        let inner = &self.inner;
        let deadline = Some(Instant::now() + timeout);
        let t = inner.resync_tracking()?;
        // This side's fsyncs while the mirror runs its own (the flushes are sent).
        inner.sync_resynced(flushed.iter().chain(blocks.keys()))?;
        inner.wait_mark(synced, Mark::Synced, deadline)?;
        // With the record lock: a loss either comes after (its window, with
        // any newer write of these blocks, is recorded after this) or before
        // (then nothing is cleared).
        let _r = lock(&inner.record_lock);
        if let Some(l) = inner.lost() {
            return Err(Error::MirrorLost(l));
        }
        let flushes = inner.take_resync_flushes(flushed);
        match &inner.activity {
            Some(al) => al.clear_entries(blocks, paths, &flushes),
            None => t.changelog.clear_entries(blocks, paths),
        }
        .map_err(|e| inner.tracking_failed(e))?;
        inner.prune_window(synced, flushed);
        Ok(())
    }

    /// Resync done shipping: wait until the mirror has everything durably,
    /// then clear the change-log, unless the mirror was lost meanwhile (then
    /// the window goes to the change-log instead and the resync is over).
    /// `synced`: the last flush of every file the resync wrote; the mirror
    /// syncs changed directories and resynced lengths with every sync, so
    /// once that flush is synced, everything the resync shipped is durable.
    /// Without it, the next full checkpoint is waited for. `false` (nothing
    /// cleared, still resyncing) if a rename owes the resync another pass.
    pub(crate) fn resync_finish(
        &self,
        synced: Option<u64>,
        flushed: &std::collections::BTreeSet<FsPath>,
        timeout: Duration,
    ) -> Result<bool> {
        let inner = &self.inner;
        let deadline = Some(Instant::now() + timeout);
        let t = inner.resync_tracking()?;
        // This side's fsyncs while the mirror runs its own (the flushes are sent).
        inner.sync_resynced(flushed.iter())?;
        match synced {
            Some(seq) => inner.wait_mark(seq, Mark::Synced, deadline)?,
            None => {
                // The mirror's checkpoint makes everything durable at least once a second.
                let last = lock(&inner.queue).stream.last_seq();
                inner.wait_mark(last, Mark::Durable, deadline)?;
            }
        }
        let _r = lock(&inner.record_lock);
        if let Some(l) = inner.lost() {
            return Err(Error::MirrorLost(l));
        }
        if *inner.mode.lock().unwrap_or_else(|e| e.into_inner()) != Mode::Streaming {
            return Err(Error::MirrorLost("the pair left streaming during the resync".into()));
        }
        let flushes = inner.take_resync_flushes(flushed);
        let cleared = match &inner.activity {
            Some(al) => al.clear_with_log(&flushes),
            None => t.changelog.clear_keeping(&Default::default(), &Default::default()),
        }
        .map_err(|e| inner.tracking_failed(e))?;
        if !cleared {
            tracing::info!("resync: renames during the pass owe the mirror another one");
            return Ok(false);
        }
        if let Some(seq) = synced {
            inner.prune_window(seq, flushed);
        }
        inner.resyncing.store(false, Ordering::SeqCst);
        drop(_r);
        // What the activity log kept and is settled (durable on the mirror,
        // nothing in flight) goes once durable here too; a failure only
        // keeps entries, which is safe.
        if let Some(al) = &inner.activity {
            let durable = inner.mark_copies[Mark::Durable as usize].load(Ordering::Acquire);
            if let Err(e) = al.retire_all(durable) {
                tracing::warn!(error = %e, "activity log: retiring after the resync failed; entries stay");
            }
        }
        tracing::warn!("resync complete: the change-log is drained, the pair is synchronized");
        Ok(true)
    }
}

/// What one path (`None`: the filespace root) is on `disk`, as the
/// Reconcile frame a resync ships for it (header without a sequence
/// number) and as the engine sees it. With `prune`, a directory's children
/// are listed and the mirror keeps only those. Shared by the runtime and
/// the fault simulator, so both ship exactly the same frame.
pub(crate) fn reconcile_frame(
    disk: &dyn Disk,
    fs: u16,
    path: Option<&RelPath>,
    prune: bool,
) -> Result<(Header, Bytes, LocalEntry)> {
    use crate::io::disk::EntryKind;
    use crate::protocol::{ChildKind, ReconcileBody, ReconcileEntry};
    let here = path.map(|p| FsPath::new(fs, p.clone()));
    let kind = match &here {
        Some(p) => disk.entry_kind(p)?,
        None => Some(EntryKind::Dir),
    };
    let (entry, local, len) = match kind {
        None | Some(EntryKind::Other) => (ReconcileEntry::Absent, LocalEntry::Absent, 0),
        Some(EntryKind::File) => {
            let p = here.as_ref().ok_or_else(|| Error::InvalidArgument("a root is a directory".into()))?;
            let len = disk.open(p, OpenMode::Existing)?.len()?;
            (ReconcileEntry::File, LocalEntry::File { len }, len)
        }
        Some(EntryKind::Dir) => {
            let children: Vec<(String, EntryKind)> =
                disk.list_dir(fs, path)?.into_iter().filter(|(_, k)| *k != EntryKind::Other).collect();
            let keep = prune.then(|| {
                children
                    .iter()
                    .map(|(n, k)| (n.clone(), if *k == EntryKind::Dir { ChildKind::Dir } else { ChildKind::File }))
                    .collect()
            });
            (ReconcileEntry::Dir { keep }, LocalEntry::Dir { children }, 0)
        }
    };
    let body = ReconcileBody { entry, path: path.map(|p| p.as_str().as_bytes().to_vec()).unwrap_or_default() };
    let body = Bytes::from(body.encode());
    if body.len() > crate::protocol::MAX_BODY {
        return Err(Error::InvalidArgument(format!(
            "directory fs{fs}:{} has too many entries to reconcile in one frame",
            path.map(|p| p.as_str()).unwrap_or("")
        )));
    }
    let mut h = Header::new(Kind::Reconcile);
    h.filespace = fs;
    h.offset = len;
    Ok((h, body, local))
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.inner.stop("primary dropped");
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

impl Inner {
    /// Rule 5: while streaming, the activity log covers a change before it
    /// is shipped or written (a crash then finds it). In change tracking
    /// the change-log records it exactly instead; without change tracking
    /// there is nothing to record into.
    fn cover_blocks<'a>(&'a self, p: &'a FsPath, first: u64, last: u64) -> Result<Option<Cover<'a>>> {
        match &self.activity {
            Some(al) if !self.tracking_on.load(Ordering::Acquire) => {
                let durable = self.mark_copies[Mark::Durable as usize].load(Ordering::Acquire);
                al.cover_blocks(p, first, last, durable).map(Some).map_err(|e| self.tracking_failed(e))
            }
            _ => Ok(None),
        }
    }

    fn cover_path<'a>(&'a self, p: &'a FsPath, subtree: bool) -> Result<Option<Cover<'a>>> {
        match &self.activity {
            Some(al) if !self.tracking_on.load(Ordering::Acquire) => {
                let durable = self.mark_copies[Mark::Durable as usize].load(Ordering::Acquire);
                al.cover_path(p, subtree, durable).map(Some).map_err(|e| self.tracking_failed(e))
            }
            _ => Ok(None),
        }
    }

    /// Note that the directory holding `p` changed (after the local change).
    fn dirty_dir(&self, p: &FsPath) -> Result<()> {
        let key = format!("{}:{}", p.filespace, p.path.parent().map(|d| d.as_str().to_string()).unwrap_or_default());
        let mut dirs = lock(&self.dirty_dirs);
        if dirs.contains_key(&key) {
            return Ok(());
        }
        let handle = self
            .disk
            .parent_dir_handle(p)
            .map_err(|e| self.fault(format!("cannot open the directory of {p} to sync it later: {e}")))?;
        dirs.insert(key, handle);
        let over = dirs.len() > MAX_DIRTY_DIRS;
        drop(dirs);
        if over {
            // Bounded: past the limit, the namespace call pays for the syncs.
            self.sync_dirty_dirs()?;
        }
        Ok(())
    }

    /// fsync every directory changed since the last call. Held locked
    /// throughout, so a caller never returns before the syncs it relies on.
    fn sync_dirty_dirs(&self) -> Result<()> {
        let mut dirs = lock(&self.dirty_dirs);
        for (key, handle) in dirs.iter() {
            if let Err(e) = handle.sync_data() {
                let why = format!("local fsync of directory {key} failed: {e}; its entries are not durable");
                return Err(self.fault(why));
            }
        }
        dirs.clear();
        Ok(())
    }

    /// Resync: the flush queued last for each of `files`, now synced on the
    /// mirror (its file is durable there through that flush; a write after
    /// it is not, even if a later flush of another file is synced).
    fn take_resync_flushes(&self, files: &std::collections::BTreeSet<FsPath>) -> BTreeMap<FsPath, u64> {
        let mut all = lock(&self.resync_flushes);
        files.iter().filter_map(|f| all.remove(f).map(|seq| (f.clone(), seq))).collect()
    }

    /// Resync: before entries are cleared, make this side's copy of what
    /// they name durable too: the files (`files`), and every directory
    /// changed since the last local sync. The mirror having a change
    /// durably says nothing of this host's page cache, where changes made
    /// in change tracking may still sit (found by the fault simulator: a
    /// crash then lost a change no log named any more). A failure faults
    /// the segment (rule 8).
    fn sync_resynced<'a>(&self, files: impl Iterator<Item = &'a FsPath>) -> Result<()> {
        let files: std::collections::BTreeSet<&FsPath> = files.collect();
        for p in files {
            if let Some(f) = self.file_if_present(p)? {
                let _s = lock(&self.sync_stripes[stripe_of(p, FILE_STRIPES)]);
                self.usable_locally()?;
                if let Err(e) = f.sync_data() {
                    return Err(self.fault(format!("local fdatasync of {p} before a resync checkpoint failed: {e}")));
                }
            }
        }
        self.sync_dirty_dirs()
    }

    /// What the resync shipped up to `seq` is durable on the mirror (its
    /// files were flushed; directory entries and lengths go with every
    /// sync): no later loss needs to record it again.
    fn prune_window(&self, seq: u64, flushed: &std::collections::BTreeSet<FsPath>) {
        let mut q = lock(&self.queue);
        q.window.retain(|(s, c)| {
            *s > seq
                || match c {
                    // Directory entries go with every sync; a file's length
                    // (a truncate) only with a sync of that file.
                    Change::Touched { path, subtree } => !(*subtree || flushed.contains(path)),
                    Change::Blocks { path, .. } => !flushed.contains(path),
                }
        });
    }

    /// A Hashes frame: accepted only as the answer to a request we made,
    /// with exactly the hashes asked for.
    fn hashes_arrived(&self, seq: u64, body: &[u8]) -> std::result::Result<(), String> {
        let want = lock(&self.hash_wanted).remove(&seq).ok_or_else(|| format!("unasked-for hashes for #{seq}"))?;
        if body.len() != want as usize * 8 {
            return Err(format!("hashes for #{seq}: {} bytes for {want} blocks", body.len()));
        }
        let hashes = body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        lock(&self.hash_answers).insert(seq, hashes);
        self.hash_cv.notify_all();
        Ok(())
    }

    /// A Listing frame: accepted only as the answer to a list request we
    /// made, and only well formed.
    fn listing_arrived(&self, seq: u64, body: &[u8]) -> std::result::Result<(), String> {
        if !lock(&self.list_wanted).remove(&seq) {
            return Err(format!("unasked-for listing for #{seq}"));
        }
        let listing = crate::protocol::ListingBody::decode(body).map_err(|e| format!("listing for #{seq}: {e}"))?;
        lock(&self.list_answers).insert(seq, listing);
        // Under the lock a waiter checks before it sleeps: no wake-up is lost.
        let _answers = lock(&self.hash_answers);
        self.hash_cv.notify_all();
        Ok(())
    }

    /// Before a namespace change of `p` is made locally: in change tracking
    /// the change-log records it (rule 4); while streaming the activity log
    /// covers it (rule 5). Either way durably, and first.
    fn note_namespace_change<'a>(
        &'a self,
        p: &'a FsPath,
        subtree: bool,
        tracking: Option<&ChangeTracking>,
    ) -> Result<Option<Cover<'a>>> {
        match tracking {
            Some(t) => {
                t.changelog.record_touched(p, subtree).map_err(|e| self.tracking_failed(e))?;
                Ok(None)
            }
            None => self.cover_path(p, subtree),
        }
    }

    /// Tell a cover the sequence number its change went out with.
    fn shipped(cover: &mut Option<Cover<'_>>, seq: u64) -> u64 {
        if let Some(c) = cover {
            c.shipped(seq);
        }
        seq
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn file_stripe(&self, p: &FsPath) -> &RwLock<()> {
        &self.file_stripes[stripe_of(p, FILE_STRIPES)]
    }

    fn usable(&self) -> Result<()> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::Closed("the stream is shutting down".into()));
        }
        self.usable_locally()?;
        if self.tracking_on.load(Ordering::Acquire) {
            return Ok(());
        }
        // Through `lost()`, never `if let Some(l) = lock(&self.marks).lost.clone()`:
        // a guard in an `if let` scrutinee is a temporary that lives through
        // the body (Rust 2024 only ends it before an `else`), so the marks
        // lock would be held while `after_loss` waits for the decision. A
        // call already inside its file stripe then blocks on the marks lock
        // (its send, `queue_space`, `lose`), the decision's second phase
        // waits for that stripe, and nothing moves until this call's
        // deadline: it fails with "no decision in time" and the pair goes to
        // change tracking a moment later (found as a flaky mirror-crash test).
        if let Some(l) = self.lost() {
            // Rule 3: no mutating call goes on until the arbiter has decided.
            return self.after_loss(l);
        }
        Ok(())
    }

    /// The change tracking a resync works from (its change-log).
    fn resync_tracking(&self) -> Result<&ChangeTracking> {
        self.tracking.as_ref().ok_or_else(|| Error::InvalidArgument("a resync needs change tracking".into()))
    }

    /// Why the mirror was lost, if it was. The marks lock is released
    /// before this returns, so the answer can be acted on (waited on) with
    /// no lock held.
    fn lost(&self) -> Option<String> {
        lock(&self.marks).lost.clone()
    }

    /// The mirror is gone: with change tracking, wait for the arbiter's
    /// decision and go on if the mirror was marked down.
    ///
    /// Called with no lock held: the decision's second phase takes every
    /// file stripe and the namespace lock, and calls holding those take the
    /// marks, queue and mode locks; waiting here with any of them held
    /// stalls the decision until this call's deadline.
    fn after_loss(&self, lost: String) -> Result<()> {
        let Some(t) = &self.tracking else {
            return Err(Error::MirrorLost(lost));
        };
        let deadline = Instant::now() + t.decision_timeout + Duration::from_secs(5);
        let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        let mut waiting = false;
        loop {
            match &*mode {
                Mode::ChangeTracking => return Ok(()),
                Mode::Failed(why) => return Err(Error::MirrorLost(format!("{lost}; {why}"))),
                Mode::Streaming | Mode::Deciding => {
                    if !waiting {
                        waiting = true;
                        tracing::debug!(%lost, "waiting for the arbiter's decision");
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        tracing::error!(%lost, mode = ?*mode, "no decision from the arbiter in time: the call fails");
                        return Err(Error::MirrorLost(format!("{lost}; no decision in time")));
                    }
                    mode = self.mode_cv.wait_timeout(mode, left).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
    }

    /// The change tracking in force, if the pair is in change tracking now.
    fn tracking_now(&self) -> Option<&ChangeTracking> {
        if self.tracking_on.load(Ordering::Acquire) {
            self.tracking.as_ref()
        } else {
            None
        }
    }

    /// The change-log cannot be written: say so, and stop claiming anything.
    fn tracking_failed(&self, e: crate::durable::changelog::ChangeLogError) -> Error {
        let why = format!("the change-log cannot be written ({e}); the segment needs a full resync");
        tracing::error!(%why, "change tracking failed");
        self.set_mode(Mode::Failed(why));
        Error::ChangeLog(e)
    }

    fn set_mode(&self, m: Mode) {
        let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        tracing::info!(from = ?*mode, to = ?m, "pair mode");
        self.tracking_on.store(m == Mode::ChangeTracking, Ordering::Release);
        if m != Mode::Streaming {
            // A resync ends with the stream: the change-log still names everything.
            self.resyncing.store(false, Ordering::SeqCst);
        }
        self.pair_failed.store(matches!(m, Mode::Failed(_)), Ordering::Release);
        *mode = m;
        drop(mode);
        self.mode_cv.notify_all();
    }

    /// After a namespace operation: wait for the mirror when one was shipped.
    fn finish_namespace(&self, seq: Option<u64>) -> Result<()> {
        match seq {
            Some(seq) => {
                self.flush();
                self.wait_namespace(seq)
            }
            None => Ok(()),
        }
    }

    /// The arbiter's decision, taken on a thread of its own (callers may be
    /// holding locks the recording needs).
    fn decide(self: Arc<Inner>, lost: String) {
        let Some(t) = self.tracking.clone() else { return };
        // Phase 1: record what the mirror has not durably acknowledged before
        // asking, so a crash after the arbiter's answer finds it recorded.
        if let Err(e) = self.record_window(&t) {
            let _ = self.tracking_failed(e);
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let arbiter = t.arbiter.clone();
        let (content, generation) = (self.identity.content_id, self.identity.generation);
        let why = lost.clone();
        let asked = std::thread::Builder::new().name("filerep-arbiter-ask".into()).spawn(move || {
            let _ = tx.send(arbiter.mirror_lost(content, generation, &why));
        });
        let decision = match asked {
            Err(e) => Err(format!("cannot ask the arbiter: {e}")),
            Ok(_) => match rx.recv_timeout(t.decision_timeout) {
                Ok(r) => r,
                Err(_) => Err(format!("no answer from the arbiter within {:?}", t.decision_timeout)),
            },
        };
        // Phase 2, with every call quiesced: record what calls already past
        // their first check shipped meanwhile, and set the mode before any
        // call runs again. A demoted primary records too: its unshipped
        // local writes are what must be overwritten when it returns (rule 5).
        let _all = self.all_file_stripes();
        let _ns = self.namespace.write().unwrap_or_else(|e| e.into_inner());
        match (decision, self.record_window(&t)) {
            (_, Err(e)) => {
                let _ = self.tracking_failed(e);
            }
            (Ok(Decision::MirrorDown), Ok(())) => {
                tracing::warn!("mirror marked down: change tracking");
                // Activity-log entries may cover writes still only in this
                // host's page cache: they stay until the resync clears them.
                t.changelog.pin_extents();
                // And the paths: a retire already under way (it picked a
                // path while streaming) must not drop one that change
                // tracking records again meanwhile.
                t.changelog.pin_touched();
                self.set_mode(Mode::ChangeTracking);
            }
            (Ok(Decision::Demoted), Ok(())) => self.set_mode(Mode::Failed("demoted by the arbiter".into())),
            (Err(e), Ok(())) => self.set_mode(Mode::Failed(e)),
        }
    }

    /// Move the window into the change-log (one group commit). Whether calls
    /// are quiesced meanwhile is the caller's choice.
    fn record_window(&self, t: &ChangeTracking) -> std::result::Result<(), crate::durable::changelog::ChangeLogError> {
        let _r = lock(&self.record_lock);
        let window = std::mem::take(&mut lock(&self.queue).window);
        let mut blocks = Vec::new();
        let mut touched = Vec::new();
        for (_, c) in window {
            match c {
                Change::Blocks { path, first, last } => blocks.extend((first..=last).map(|b| (path.clone(), b))),
                Change::Touched { path, subtree } => touched.push((path, subtree)),
            }
        }
        tracing::info!(blocks = blocks.len(), paths = touched.len(), "recording the unacknowledged window");
        t.changelog.record_batch(blocks, touched)
    }

    /// Checked again once a call holds its locks: `shutdown` sets the flag
    /// before it takes every lock, so a call that gets its locks after the
    /// Shutdown frame was queued never changes anything locally.
    fn check_open(&self) -> Result<()> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::Closed("the stream is shutting down".into()));
        }
        // A call that passed its first check before the pair failed must not
        // change anything now: it would be neither shipped nor recorded.
        if self.pair_failed.load(Ordering::Acquire) {
            let why = match &*self.mode.lock().unwrap_or_else(|e| e.into_inner()) {
                Mode::Failed(w) => w.clone(),
                _ => "the pair failed".to_string(),
            };
            return Err(Error::MirrorLost(why));
        }
        Ok(())
    }

    /// Whether the local side has faulted (rule 8).
    fn usable_locally(&self) -> Result<()> {
        let faulted = lock(&self.faulted).clone();
        match faulted {
            Some(f) => Err(Error::Faulted(f)),
            None => Ok(()),
        }
    }

    fn file_guard(&self, p: &FsPath, exclusive: bool) -> StripeGuard<'_> {
        let l = self.file_stripe(p);
        if exclusive {
            StripeGuard::Write(l.write().unwrap_or_else(|e| e.into_inner()))
        } else {
            StripeGuard::Read(l.read().unwrap_or_else(|e| e.into_inner()))
        }
    }

    /// Every file stripe, exclusively, in index order (no deadlock).
    fn all_file_stripes(&self) -> Vec<std::sync::RwLockWriteGuard<'_, ()>> {
        self.file_stripes.iter().map(|l| l.write().unwrap_or_else(|e| e.into_inner())).collect()
    }

    /// A handle for reading, looked up under the file's stripe so that an
    /// unlink in progress cannot leave a stale handle in the cache.
    fn file_shared(&self, p: &FsPath) -> Result<Arc<dyn DiskFile>> {
        let _f = self.file_stripe(p).read().unwrap_or_else(|e| e.into_inner());
        self.file(p)
    }

    /// Rule 8: after a local write or fsync failure nothing is reported durable.
    fn fault(&self, reason: String) -> Error {
        tracing::error!(%reason, "segment faulted");
        let mut f = lock(&self.faulted);
        if f.is_none() {
            *f = Some(reason.clone());
        }
        Error::Faulted(reason)
    }

    fn file(&self, p: &FsPath) -> Result<Arc<dyn DiskFile>> {
        let shard = &self.cache[stripe_of(p, CACHE_SHARDS)];
        if let Some(f) = lock(shard).get(p) {
            return Ok(f.clone());
        }
        let _ns = self.namespace.read().unwrap_or_else(|e| e.into_inner());
        let f = self.disk.open(p, OpenMode::Existing)?;
        self.cache_put(p, f.clone());
        Ok(f)
    }

    /// The file's handle, or `None` if it is gone (a resync finds files
    /// removed since the change-log named them; their removal streams too).
    fn file_if_present(&self, p: &FsPath) -> Result<Option<Arc<dyn DiskFile>>> {
        match self.file(p) {
            Ok(f) => Ok(Some(f)),
            Err(Error::Disk(e)) if e.kind == crate::io::disk::DiskErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn cache_put(&self, p: &FsPath, f: Arc<dyn DiskFile>) {
        let mut shard = lock(&self.cache[stripe_of(p, CACHE_SHARDS)]);
        if shard.len() >= MAX_CACHED_PER_SHARD {
            shard.clear();
        }
        shard.insert(p.clone(), f);
    }

    /// Forget cached handles at or under `p` (after unlink or rename).
    fn cache_remove_under(&self, p: &FsPath) {
        for shard in &self.cache {
            lock(shard).retain(|k, _| !(k.filespace == p.filespace && k.path.is_within(&p.path)));
        }
    }

    /// Assign a sequence number (binding the file first if needed) and queue
    /// the frame. The body checksum is computed before the lock is taken.
    fn ship(&self, p: &FsPath, mut h: Header, body: Bytes, payload: usize, change: Option<Change>) -> Result<u64> {
        h.filespace = p.filespace;
        h.body_len = body.len() as u32;
        h.body_hash = body_hash(&body);
        h.flags |= self.level_flags();
        let mut q = self.queue_space()?;
        let (id, bind) = q.stream.bind(p).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if let Some((bh, path)) = bind {
            // A path is a few bytes: hashing it under the lock costs little.
            let path = Bytes::from(path);
            let mut bh = bh;
            bh.body_len = path.len() as u32;
            bh.body_hash = body_hash(&path);
            Self::push_out(&mut q, bh, path);
        }
        h.file_id = id;
        let seq = self.push_locked(&mut q, h, body, change);
        drop(q);
        self.stats.operations.fetch_add(1, Ordering::Relaxed);
        self.stats.payload_bytes.fetch_add(payload as u64, Ordering::Relaxed);
        Ok(seq)
    }

    /// Queue a data frame and send it at once: the caller's local write then
    /// overlaps the network.
    fn ship_data(&self, p: &FsPath, h: Header, data: &[u8], change: Change) -> Result<u64> {
        let seq = self.ship(p, h, Bytes::copy_from_slice(data), data.len(), Some(change))?;
        self.flush();
        Ok(seq)
    }

    /// The local half of a data write; a failure faults the segment (rule 8).
    fn write_local(&self, file: &dyn DiskFile, p: &FsPath, offset: u64, data: &[u8]) -> Result<()> {
        file.write_at(offset, data).map_err(|e| {
            self.fault(format!("local write of {} bytes of {p} at offset {offset} failed: {e}", data.len()))
        })
    }

    /// The strict level asks the mirror to make every operation durable.
    fn level_flags(&self) -> u8 {
        let level = if self.level == SyncLevel::Durable { FLAG_DURABLE } else { 0 };
        // While a resync catches the mirror up, a live change may name what
        // it does not have yet; the flag lets it make that so.
        if self.resyncing.load(Ordering::Relaxed) {
            level | crate::protocol::FLAG_CATCHING_UP
        } else {
            level
        }
    }

    fn ship_unbound(&self, mut h: Header, body: Bytes, change: Option<Change>) -> Result<u64> {
        h.flags |= self.level_flags();
        h.body_len = body.len() as u32;
        h.body_hash = body_hash(&body);
        let mut q = self.queue_space()?;
        let seq = self.push_locked(&mut q, h, body, change);
        drop(q);
        Ok(seq)
    }

    /// The queue lock, once there is room (backpressure: a full queue makes
    /// callers wait for the sender to drain it).
    fn queue_space(&self) -> Result<MutexGuard<'_, Queue>> {
        let mut q = lock(&self.queue);
        while q.pending_bytes >= self.max_pending_bytes || q.window.len() >= MAX_WINDOW {
            if let Some(l) = self.lost() {
                if self.tracking.is_some() {
                    // Nothing more is sent or acknowledged: queue it anyway,
                    // so the window still records it for the change-log.
                    break;
                }
                return Err(Error::MirrorLost(l));
            }
            if !q.sending && !q.pending.is_empty() {
                // Nobody is draining: do it ourselves rather than wait.
                drop(q);
                self.flush();
                q = lock(&self.queue);
                continue;
            }
            q = self.queue_cv.wait_timeout(q, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(q)
    }

    /// `h` must already carry the body's length and checksum.
    fn push_locked(&self, q: &mut Queue, h: Header, body: Bytes, changes: impl IntoIterator<Item = Change>) -> u64 {
        let h = q.stream.operation(h);
        // Kept until the mirror acknowledges it durable: if the mirror is
        // lost first, these go into the change-log.
        if self.tracking.is_some() {
            q.window.extend(changes.into_iter().map(|c| (h.seq, c)));
        }
        q.stream.on_sent(self.now_ms());
        Self::push_out(q, h, body);
        let c = &self.counters;
        c.bytes_at[(h.seq % LAG_RING as u64) as usize].store(q.bytes_queued, Ordering::Relaxed);
        c.bytes_queued.store(q.bytes_queued, Ordering::Relaxed);
        c.last_assigned.store(h.seq, Ordering::Relaxed);
        h.seq
    }

    fn push_out(q: &mut Queue, h: Header, body: Bytes) {
        let n = HEADER_LEN + body.len();
        q.pending_bytes += n;
        q.bytes_queued += n as u64;
        q.pending.push(Out { header: h.encode(), body, seq: h.seq });
    }

    /// Send what is queued, unless another caller already is: that one
    /// takes ours too. No sender thread means no wake-up between a caller
    /// and the socket; whoever finds the queue idle drains it in batches.
    fn flush(&self) {
        let mut q = lock(&self.queue);
        if q.sending {
            return;
        }
        q.sending = true;
        loop {
            let batch = std::mem::take(&mut q.pending);
            q.pending_bytes = 0;
            if batch.is_empty() {
                q.sending = false;
                return;
            }
            drop(q);
            self.queue_cv.notify_all();
            self.send_batch(&batch);
            q = lock(&self.queue);
        }
    }

    fn send_batch(&self, batch: &[Out]) {
        if lock(&self.marks).lost.is_some() {
            return;
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
        let mut wire = 0u64;
        for out in batch {
            slices.push(IoSlice::new(&out.header));
            wire += HEADER_LEN as u64;
            if !out.body.is_empty() {
                slices.push(IoSlice::new(&out.body));
                wire += out.body.len() as u64;
            }
        }
        let r = lock(&self.sock).send_all(&slices);
        match r {
            Ok(()) => {
                let top = batch.iter().map(|o| o.seq).max().unwrap_or(0);
                self.counters.last_sent.fetch_max(top, Ordering::Relaxed);
                self.stats.frames_sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.stats.wire_bytes_sent.fetch_add(wire, Ordering::Relaxed);
                self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.lose(format!("send failed: {e}")),
        }
    }

    /// Wait for the sync level when something was shipped (not in change tracking).
    fn wait_level_opt(&self, seq: Option<u64>) -> Result<()> {
        match seq {
            Some(seq) => self.wait_level(seq),
            None => Ok(()),
        }
    }

    fn wait_level(&self, seq: u64) -> Result<()> {
        match self.level {
            SyncLevel::Applied => self.wait_mark(seq, Mark::Applied, None),
            SyncLevel::Durable => self.wait_mark(seq, Mark::Synced, None),
            SyncLevel::Async { window } => self.wait_mark(seq.saturating_sub(window), Mark::Applied, None),
        }
    }

    /// File operations wait for the mirror to apply them at every level:
    /// they are rare and a later write depends on them.
    fn wait_namespace(&self, seq: u64) -> Result<()> {
        match self.level {
            SyncLevel::Durable => self.wait_mark(seq, Mark::Synced, None),
            _ => self.wait_mark(seq, Mark::Applied, None),
        }
    }

    /// Park until watermark `mark` reaches `seq`. Only the acknowledgement
    /// that covers a caller wakes it.
    fn wait_mark(&self, seq: u64, mark: Mark, deadline: Option<Instant>) -> Result<()> {
        // An acknowledgement usually arrives within tens of microseconds:
        // poll briefly before parking, which saves a futex wake-up per call.
        let polled = &self.mark_copies[mark as usize];
        let spin_until = Instant::now() + SPIN_BEFORE_PARK;
        while Instant::now() < spin_until {
            if polled.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            std::thread::yield_now();
        }
        let mut m = lock(&self.marks);
        if mark.of(&m.ack) >= seq {
            return Ok(());
        }
        m.waiters.push(Waiter { seq, mark, thread: std::thread::current() });
        loop {
            if let Some(l) = &m.lost {
                let l = l.clone();
                drop(m);
                // With change tracking, an operation the mirror never
                // confirmed is in the window and lands in the change-log.
                return self.after_loss(l);
            }
            drop(m);
            match deadline {
                None => std::thread::park(),
                Some(d) => std::thread::park_timeout(d.saturating_duration_since(Instant::now())),
            }
            m = lock(&self.marks);
            if mark.of(&m.ack) >= seq {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::MirrorLost(format!("no acknowledgement of {seq} in time")));
            }
        }
    }

    /// A new acknowledgement: record it and wake exactly the callers it covers.
    fn acknowledge(&self, ack: Ack) {
        self.counters.last_ack_ms.store(self.now_ms() + 1, Ordering::Relaxed);
        for mark in [Mark::Applied, Mark::Synced, Mark::Durable] {
            self.mark_copies[mark as usize].store(mark.of(&ack), Ordering::Release);
        }
        let mut m = lock(&self.marks);
        m.ack = ack;
        m.waiters.retain(|w| {
            let done = w.mark.of(&ack) >= w.seq;
            if done {
                w.thread.unpark();
            }
            !done
        });
    }

    fn lose(&self, reason: String) {
        // During an orderly shutdown the mirror closes its side once it has
        // everything: no loss of the mirror, and the arbiter is not asked
        // (`shutdown` records the window itself if the mirror fell short).
        if self.closing.load(Ordering::SeqCst) {
            let _ = self.end_stream(reason, false);
            return;
        }
        // A drop already ended the stream: likewise.
        if !self.end_stream(reason.clone(), true) {
            return;
        }
        if self.tracking.is_some() {
            let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
            if *mode == Mode::Streaming {
                *mode = Mode::Deciding;
                drop(mode);
                if let Some(me) = self.me.get().and_then(|w| w.upgrade()) {
                    let spawned =
                        std::thread::Builder::new().name("filerep-decide".into()).spawn(move || me.decide(reason));
                    if let Err(e) = spawned {
                        self.set_mode(Mode::Failed(format!("cannot ask the arbiter: {e}")));
                    }
                }
            }
        }
    }

    /// End the stream; whether this call was the one that ended it.
    fn end_stream(&self, reason: String, unexpected: bool) -> bool {
        let mut m = lock(&self.marks);
        let first = m.lost.is_none();
        if first {
            if unexpected {
                tracing::warn!(%reason, "mirror lost");
            } else {
                tracing::info!(%reason, "stream closed");
            }
            m.lost = Some(reason);
        }
        for w in m.waiters.drain(..) {
            w.thread.unpark();
        }
        drop(m);
        self.queue_cv.notify_all();
        lock(&self.closer).close();
        first
    }

    /// End the stream on purpose: the threads see it and close the connection.
    fn stop(&self, why: &str) {
        let _ = self.end_stream(why.to_string(), false);
    }
}

fn receiver_loop(inner: Arc<Inner>, mut reader: Box<dyn ConnReader>) {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let reason = loop {
        if let Some(l) = inner.lost() {
            break l;
        }
        let n = match reader.recv(&mut buf) {
            Ok(0) => break "the mirror closed the connection".to_string(),
            Ok(n) => n,
            Err(e) if is_timeout(&e) => 0,
            Err(e) => break format!("receive failed: {e}"),
        };
        dec.feed(&buf[..n]);
        let mut stop = None;
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => match f.header.kind {
                    Kind::Ack => {
                        let Some(ack) = Ack::from_body(&f.body) else {
                            stop = Some("malformed acknowledgement".to_string());
                            break;
                        };
                        let now = inner.now_ms();
                        let r = {
                            let mut q = lock(&inner.queue);
                            let r = q.stream.on_ack(ack, now);
                            if let Ok(a) = &r {
                                while q.window.front().is_some_and(|(s, _)| *s <= a.durable) {
                                    q.window.pop_front();
                                }
                            }
                            r
                        };
                        match r {
                            Ok(a) => inner.acknowledge(a),
                            Err(e) => {
                                stop = Some(format!("protocol violation: {e}"));
                                break;
                            }
                        }
                    }
                    Kind::Hashes => {
                        if let Err(why) = inner.hashes_arrived(f.header.seq, &f.body) {
                            stop = Some(why);
                            break;
                        }
                    }
                    Kind::Listing => {
                        if let Err(why) = inner.listing_arrived(f.header.seq, &f.body) {
                            stop = Some(why);
                            break;
                        }
                    }
                    Kind::Fault => {
                        stop = Some(format!(
                            "the mirror could not apply #{}: {}",
                            f.header.seq,
                            String::from_utf8_lossy(&f.body)
                        ));
                        break;
                    }
                    other => {
                        stop = Some(format!("unexpected {} frame from the mirror", other.name()));
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    stop = Some(format!("bad frame from the mirror: {e}"));
                    break;
                }
            }
        }
        if let Some(s) = stop {
            break s;
        }
        let now = inner.now_ms();
        let action = {
            let mut q = lock(&inner.queue);
            let a = q.stream.on_tick(now);
            if a == TimerAction::SendHeartbeat {
                let mut h = Header::new(Kind::Heartbeat);
                h.offset = q.stream.last_seq();
                Inner::push_out(&mut q, h, Bytes::new());
            }
            a
        };
        if action == TimerAction::SendHeartbeat {
            inner.flush();
        }
        if let TimerAction::MirrorSilent { silent_ms } = action {
            break format!("no acknowledgement for {silent_ms} ms");
        }
    };
    inner.lose(reason);
}

/// Run the primary's side of the handshake (public for tools and tests
/// that speak the protocol directly).
pub fn client_handshake(
    cfg: &PrimaryConfig,
    start_seq: u64,
    reader: &mut dyn ConnReader,
    writer: &mut dyn ConnWriter,
    peer: &str,
) -> Result<()> {
    let hs_err = |source| Error::Handshake { peer: peer.to_string(), source };
    let io_err = |e: std::io::Error| Error::io(format!("handshake with {peer}"), e);
    let deadline = Some(Instant::now() + cfg.tuning.handshake_timeout);
    let mut client_nonce = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut client_nonce);
    let hello = Hello {
        cluster_id: cfg.identity.cluster_id,
        content_id: cfg.identity.content_id,
        block_size: cfg.identity.block_size,
        generation: cfg.identity.generation,
        start_seq,
        client_nonce,
        filespaces: cfg.filespaces.iter().map(|f| f.name.clone()).collect(),
    };
    let hello_bytes = hello.encode();
    writer.send_all(&[IoSlice::new(&hello_bytes)]).map_err(io_err)?;
    let challenge = read_message(reader, deadline).map_err(io_err)?;
    let challenge = handshake::Challenge::decode(&challenge).map_err(hs_err)?;
    let proof = cfg.key.primary_proof(handshake::payload(&hello_bytes), &client_nonce, &challenge.server_nonce);
    writer.send_all(&[IoSlice::new(&handshake::Proof { proof }.encode())]).map_err(io_err)?;
    let verdict = read_message(reader, deadline).map_err(io_err)?;
    let verdict = handshake::Verdict::decode(&verdict).map_err(hs_err)?;
    if verdict.status != Status::Accepted {
        return Err(Error::Refused { peer: peer.to_string(), status: verdict.status, reason: verdict.reason });
    }
    let expect = cfg.key.mirror_proof(handshake::payload(&hello_bytes), &client_nonce, &challenge.server_nonce);
    if !handshake::proofs_equal(&expect, &verdict.mirror_proof) {
        return Err(hs_err(handshake::HandshakeError::Malformed(
            "the mirror did not prove it holds the cluster key".into(),
        )));
    }
    Ok(())
}

/// Read one length-prefixed handshake message; returns it without the prefix.
/// With a deadline, the whole message must arrive before it.
pub fn read_message(reader: &mut dyn ConnReader, deadline: Option<Instant>) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv_exact_until(reader, &mut len, deadline)?;
    let n = u32::from_le_bytes(len) as usize;
    if n > handshake::MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("handshake message of {n} bytes is over the limit of {}", handshake::MAX_MESSAGE),
        ));
    }
    let mut msg = vec![0u8; n];
    recv_exact_until(reader, &mut msg, deadline)?;
    Ok(msg)
}
