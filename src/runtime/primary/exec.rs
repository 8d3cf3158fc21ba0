//! The executor: it holds the engine under one short lock per event and
//! carries out its commands outside it. A caller's own thread runs its call
//! (its local I/O, its change-log records) and, when the engine hands it
//! the queue, the send; the receiver thread feeds acknowledgements and the
//! clock; a background worker runs the loss decision and retiring. No lock
//! is held across I/O.

use super::{ChangeTracking, LocalEntry};
use crate::core::primary::{CallId, Command, Engine, Event, Failure, LocalStep, LogOp, Opened, OutFrame, Owner, Reply};
use crate::durable::changelog::ChangeLogError;
use crate::error::{Error, Result};
use crate::io::disk::{Disk, DiskErrorKind, DiskFile, EntryKind, FsPath, OpenMode};
use crate::io::net::{is_timeout, ConnReader, ConnWriter};
use crate::protocol::{body_hash, Decoder};
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const CACHE_SHARDS: usize = 64;
const MAX_CACHED_PER_SHARD: usize = 64;
/// How long a caller polls for its next command before it parks: an
/// acknowledgement usually arrives within tens of microseconds, and polling
/// saves a futex wake-up per call.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);
/// A call that waits this long with no deadline has its engine's state logged.
const STALL_REPORT: Duration = Duration::from_secs(30);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard_of(p: &FsPath) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    p.hash(&mut h);
    (h.finish() as usize) % CACHE_SHARDS
}

/// A call's mailbox: commands other threads route to it, and its result.
pub(super) struct Slot {
    inbox: Mutex<Inbox>,
    ready: AtomicBool,
    thread: std::thread::Thread,
}

/// A call's result as the engine gives it.
type Outcome = std::result::Result<Reply, Failure>;
/// What a directory held here: its kind and its children.
pub(super) type Listed = (Option<EntryKind>, Vec<(String, EntryKind)>);
/// Chooses a hash request's blocks from the file's size in blocks.
pub(super) type Pick = Box<dyn FnOnce(u64) -> (u64, u32) + Send>;

#[derive(Default)]
struct Inbox {
    commands: VecDeque<Command>,
    result: Option<Outcome>,
}

impl Slot {
    fn new() -> Slot {
        Slot { inbox: Mutex::new(Inbox::default()), ready: AtomicBool::new(false), thread: std::thread::current() }
    }

    fn take(&self) -> (VecDeque<Command>, Option<Outcome>) {
        let mut i = lock(&self.inbox);
        self.ready.store(false, Ordering::Release);
        (std::mem::take(&mut i.commands), i.result.take())
    }

    /// Wait until something arrives or the deadline passes (`None`: it passed).
    fn wait(&self, deadline: Option<Instant>) -> Option<(VecDeque<Command>, Option<Outcome>)> {
        let started = Instant::now();
        let spin_until = Instant::now() + SPIN_BEFORE_PARK;
        while Instant::now() < spin_until {
            if self.ready.load(Ordering::Acquire) {
                return Some(self.take());
            }
            std::thread::yield_now();
        }
        loop {
            if self.ready.load(Ordering::Acquire) || (deadline.is_none() && started.elapsed() >= STALL_REPORT) {
                return Some(self.take());
            }
            match deadline {
                None => std::thread::park_timeout(STALL_REPORT),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    std::thread::park_timeout(left);
                }
            }
        }
    }
}

/// What a call's own commands leave for its caller beyond the engine's reply.
#[derive(Default)]
pub(super) struct Extras {
    pub local_error: Option<Error>,
    pub changelog_error: Option<ChangeLogError>,
    pub entry: Option<LocalEntry>,
    /// Local hashes of a hash request, with the file's size in blocks and
    /// the bytes of the range inside the file.
    pub hashes: Option<(u64, Vec<u64>, u64, u64)>,
    pub pick: Option<Pick>,
    pub listing: Option<Listed>,
}

/// The engine and the mailboxes of the calls in progress.
pub(super) struct Core {
    pub engine: Engine,
    slots: HashMap<CallId, Arc<Slot>>,
}

impl Core {
    pub fn new(engine: Engine) -> Core {
        Core { engine, slots: HashMap::new() }
    }
}

/// What routing an engine's commands leaves for the current thread, and
/// the threads to wake once the lock is released.
struct Routed {
    mine: VecDeque<Command>,
    wake: Vec<Arc<Slot>>,
}

impl Routed {
    fn wake(self) -> VecDeque<Command> {
        for s in &self.wake {
            s.thread.unpark();
        }
        self.mine
    }
}

/// The connection the engine's sends go to, with its number.
pub(super) struct Conn {
    pub epoch: u64,
    pub writer: Box<dyn ConnWriter>,
}

pub(super) struct Runtime {
    pub core: Mutex<Core>,
    pub disk: Arc<dyn Disk>,
    pub tracking: Option<ChangeTracking>,
    pub identity: crate::config::PairIdentity,
    pub block_size: u32,
    pub conn: Mutex<Conn>,
    /// A second handle on the connection, to close it from any thread.
    pub closer: Mutex<Box<dyn ConnWriter>>,
    cache: Vec<Mutex<HashMap<FsPath, Arc<dyn DiskFile>>>>,
    background: Mutex<Option<crossbeam_channel::Sender<Command>>>,
    next_call: AtomicU64,
    clock: Instant,
}

impl Runtime {
    pub fn new(
        engine: Engine,
        disk: Arc<dyn Disk>,
        tracking: Option<ChangeTracking>,
        identity: crate::config::PairIdentity,
        conn: Conn,
        closer: Box<dyn ConnWriter>,
    ) -> Runtime {
        Runtime {
            core: Mutex::new(Core::new(engine)),
            disk,
            tracking,
            block_size: identity.block_size,
            identity,
            conn: Mutex::new(conn),
            closer: Mutex::new(closer),
            cache: (0..CACHE_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            background: Mutex::new(None),
            next_call: AtomicU64::new(1),
            clock: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Start the background worker (loss decisions, retiring).
    pub fn start_background(self: &Arc<Self>) -> Result<std::thread::JoinHandle<()>> {
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        *lock(&self.background) = Some(tx);
        let rt = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("filerep-primary-bg".into())
            .spawn(move || {
                while let Ok(cmd) = rx.recv() {
                    let Some(rt) = rt.upgrade() else { return };
                    let mut x = Extras::default();
                    let ev = rt.execute(cmd, &mut x);
                    rt.feed_and_run(ev);
                }
            })
            .map_err(|e| Error::io("spawning the primary's background thread", e))
    }

    /// Stop the background worker once its queue is drained.
    pub fn stop_background(&self) {
        lock(&self.background).take();
    }

    /// Route what the engine queued: this thread's commands are returned,
    /// the others go to their calls' mailboxes or the background worker.
    fn route(&self, core: &mut Core, me: Option<CallId>) -> Routed {
        let mut routed = Routed { mine: VecDeque::new(), wake: Vec::new() };
        while let Some(cmd) = core.engine.next_command() {
            match cmd.owner() {
                Owner::Current => routed.mine.push_back(cmd),
                Owner::Call(c) if Some(c) == me => {
                    if let Command::Complete { .. } = cmd {
                        core.slots.remove(&c);
                    }
                    routed.mine.push_back(cmd)
                }
                Owner::Call(c) => {
                    let slot = match &cmd {
                        Command::Complete { .. } => core.slots.remove(&c),
                        _ => core.slots.get(&c).cloned(),
                    };
                    match slot {
                        Some(slot) => {
                            let mut inbox = lock(&slot.inbox);
                            match cmd {
                                Command::Complete { result, .. } => inbox.result = Some(result),
                                cmd => inbox.commands.push_back(cmd),
                            }
                            slot.ready.store(true, Ordering::Release);
                            drop(inbox);
                            routed.wake.push(slot);
                        }
                        None => tracing::error!(call = c, command = cmd.name(), "a command for a call that is gone"),
                    }
                }
                Owner::Background => match lock(&self.background).as_ref() {
                    Some(tx) => {
                        let _ = tx.send(cmd);
                    }
                    None => tracing::debug!(command = cmd.name(), "background command after the primary stopped"),
                },
            }
        }
        routed
    }

    /// Feed an event with no call of its own (receiver, background) and
    /// carry out the commands left for this thread.
    pub fn feed_and_run(&self, ev: Option<Event>) {
        let mut mine = match ev {
            Some(ev) => self.feed(ev, None),
            None => return,
        };
        while let Some(cmd) = mine.pop_front() {
            let mut x = Extras::default();
            if let Some(ev) = self.execute(cmd, &mut x) {
                mine.extend(self.feed(ev, None));
            }
        }
    }

    fn feed(&self, ev: Event, me: Option<CallId>) -> VecDeque<Command> {
        let routed = {
            let mut core = lock(&self.core);
            core.engine.on(ev, self.now_ms());
            self.route(&mut core, me)
        };
        routed.wake()
    }

    /// Run one call to its end on this thread.
    pub fn call(
        &self,
        op: crate::core::primary::Op,
        deadline: Option<Instant>,
        x: &mut Extras,
    ) -> std::result::Result<Reply, Failure> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot::new());
        let mut mine = {
            let routed = {
                let mut core = lock(&self.core);
                core.slots.insert(id, slot.clone());
                core.engine.submit(id, op, self.now_ms());
                self.route(&mut core, Some(id))
            };
            routed.wake()
        };
        let mut deadline = deadline;
        let mut result = None;
        loop {
            while let Some(cmd) = mine.pop_front() {
                match cmd {
                    Command::Complete { call, result: r } if call == id => result = Some(r),
                    cmd => {
                        if let Some(ev) = self.execute(cmd, x) {
                            mine.extend(self.feed(ev, Some(id)));
                        }
                    }
                }
            }
            if let Some(r) = result {
                return r;
            }
            match slot.wait(deadline) {
                Some((cmds, r)) => {
                    if cmds.is_empty() && r.is_none() {
                        // A call waiting this long without a deadline is
                        // stuck on something: say what the engine holds.
                        let state = lock(&self.core).engine.describe();
                        tracing::warn!(call = id, waited_s = STALL_REPORT.as_secs(), %state, "a call is still waiting");
                    }
                    mine = cmds;
                    result = r;
                }
                None => {
                    deadline = None;
                    mine = self.feed(Event::Expired { call: id }, Some(id));
                }
            }
        }
    }

    // ---- the open-file cache --------------------------------------------

    pub fn file(&self, p: &FsPath) -> Result<Arc<dyn DiskFile>> {
        let shard = &self.cache[shard_of(p)];
        if let Some(f) = lock(shard).get(p) {
            return Ok(f.clone());
        }
        let f = self.disk.open(p, OpenMode::Existing)?;
        self.cache_put(p, f.clone());
        Ok(f)
    }

    /// The file's handle, or `None` if it is gone.
    pub fn file_if_present(&self, p: &FsPath) -> Result<Option<Arc<dyn DiskFile>>> {
        match self.file(p) {
            Ok(f) => Ok(Some(f)),
            Err(Error::Disk(e)) if e.kind == DiskErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn cache_put(&self, p: &FsPath, f: Arc<dyn DiskFile>) {
        let mut shard = lock(&self.cache[shard_of(p)]);
        if shard.len() >= MAX_CACHED_PER_SHARD {
            shard.clear();
        }
        shard.insert(p.clone(), f);
    }

    /// Forget cached handles at or under `p` (after an unlink, a rename, a directory removed).
    fn cache_remove_under(&self, p: &FsPath) {
        for shard in &self.cache {
            lock(shard).retain(|k, _| !(k.filespace == p.filespace && k.path.is_within(&p.path)));
        }
    }

    fn changelog(&self) -> std::result::Result<&crate::durable::changelog::ChangeLog, String> {
        self.tracking.as_ref().map(|t| t.changelog.as_ref()).ok_or_else(|| "no change tracking configured".to_string())
    }

    // ---- carrying out commands --------------------------------------------

    /// Carry out one command; the event it leads to.
    pub fn execute(&self, cmd: Command, x: &mut Extras) -> Option<Event> {
        match cmd {
            Command::Open { call, file, want_len, absent_ok } => {
                let opened = match self.file(&file) {
                    Ok(f) => match want_len.then(|| f.len()).transpose() {
                        Ok(len) => Ok(Opened { present: true, len }),
                        Err(e) => Err(Error::from(e)),
                    },
                    Err(Error::Disk(e)) if absent_ok && e.kind == DiskErrorKind::NotFound => {
                        Ok(Opened { present: false, len: None })
                    }
                    Err(e) => Err(e),
                };
                Some(Event::Opened { call, result: opened.map_err(|e| keep(x, e)) })
            }
            Command::Record { call, blocks, touched } => {
                let r = self.changelog().and_then(|log| {
                    let r = match (blocks.as_slice(), touched.is_empty()) {
                        ([(f, b)], true) => log.record_block(f, *b),
                        _ => log.record_batch(blocks, touched),
                    };
                    r.map_err(|e| keep_log(x, e))
                });
                Some(Event::Recorded { call, result: r })
            }
            Command::CoverBlocks { call, file, first, last } => {
                let r = self.changelog().and_then(|l| l.record_extents(&file, first, last).map_err(|e| keep_log(x, e)));
                Some(Event::Recorded { call, result: r })
            }
            Command::CoverPath { call, path, subtree } => {
                let r = self.changelog().and_then(|l| l.record_touched(&path, subtree).map_err(|e| keep_log(x, e)));
                Some(Event::Recorded { call, result: r })
            }
            Command::RedoIfOwed { call, from, to, all } => {
                let r = self
                    .changelog()
                    .and_then(|l| l.redo_if_owed(&from, &to, all).map(|_| ()).map_err(|e| keep_log(x, e)));
                Some(Event::Recorded { call, result: r })
            }
            Command::Local { call, step } => Some(Event::LocalDone { call, result: self.local(step, x) }),
            Command::ReadCopy { call, file, first, count } => {
                let r = self
                    .file_if_present(&file)
                    .and_then(|f| match f {
                        None => Ok(None),
                        Some(f) => crate::runtime::resync::read_copy(f.as_ref(), first, count, self.block_size as u64),
                    })
                    .map(|c| {
                        c.map(|(offset, buf)| {
                            let hash = body_hash(&buf);
                            (offset, bytes::Bytes::from(buf), hash)
                        })
                    });
                Some(Event::CopyRead { call, result: r.map_err(|e| keep(x, e)) })
            }
            Command::ReadReconcile { call, fs, path, prune } => {
                let r = super::reconcile_frame(self.disk.as_ref(), fs, path.as_ref(), prune).map(|(h, body, local)| {
                    x.entry = Some(local);
                    (h, body)
                });
                Some(Event::ReconcileRead { call, result: r.map_err(|e| keep(x, e)) })
            }
            Command::HashLocal { call, file } => {
                let r = self.hash_local(&file, x);
                Some(Event::HashedLocal { call, result: r.map_err(|e| keep(x, e)) })
            }
            Command::ListLocal { call, fs, dir } => {
                let r = self.list_local(fs, dir.as_ref()).map(|l| {
                    x.listing = Some(l);
                });
                Some(Event::ListedLocal { call, result: r.map_err(|e| keep(x, e)) })
            }
            Command::TakeRedo { call } => {
                let paths = self.tracking.as_ref().map(|t| t.changelog.take_redo()).unwrap_or_default();
                Some(Event::RedoTaken { call, paths })
            }
            Command::Log { call, op } => {
                let r = self.log_op(op);
                if let (Some(_), Err(e)) = (call, &r) {
                    x.changelog_error = Some(ChangeLogError::Failed(e.clone()));
                }
                Some(Event::Logged { result: r })
            }
            Command::Send { epoch, frames } => Some(Event::Sent { epoch, result: self.send(epoch, &frames) }),
            Command::Close => {
                lock(&self.closer).close();
                None
            }
            Command::AskArbiter { reason } => Some(Event::ArbiterAnswered { result: self.ask_arbiter(reason) }),
            Command::RetireSync { files, dirs } => {
                Some(Event::RetireSynced { result: self.retire_sync(&files, &dirs) })
            }
            Command::Complete { call, .. } => {
                tracing::error!(call, "a completion reached the wrong thread");
                None
            }
        }
    }

    fn local(&self, step: LocalStep, x: &mut Extras) -> std::result::Result<(), String> {
        let r: Result<()> = match step {
            LocalStep::Write { file, offset, data } => self.file(&file).and_then(|f| Ok(f.write_at(offset, &data)?)),
            LocalStep::Create { file } => {
                self.disk.open(&file, OpenMode::CreateNew).map(|f| self.cache_put(&file, f)).map_err(Error::from)
            }
            LocalStep::SetLen { file, len } => self.file(&file).and_then(|f| Ok(f.set_len(len)?)),
            LocalStep::Unlink { file } => {
                let r = self.disk.remove_file(&file);
                self.cache_remove_under(&file);
                r.map_err(Error::from)
            }
            LocalStep::Mkdir { dir } => self.disk.create_dir(&dir).map_err(Error::from),
            LocalStep::Rmdir { dir } => {
                let r = self.disk.remove_dir(&dir);
                self.cache_remove_under(&dir);
                r.map_err(Error::from)
            }
            LocalStep::Rename { from, to } => {
                let r = self.disk.rename(&from, &to);
                self.cache_remove_under(&from);
                self.cache_remove_under(&to);
                r.map_err(Error::from)
            }
            LocalStep::SyncFiles { files } => files.iter().try_for_each(|f| match self.file_if_present(f)? {
                Some(h) => Ok(h.sync_data()?),
                None => Ok(()),
            }),
            LocalStep::SyncDirs { dirs } => {
                dirs.iter().try_for_each(|(fs, d)| match self.disk.sync_dir(*fs, d.as_ref()) {
                    // A directory removed since: its removal is its parent's entry, synced too.
                    Err(e) if e.kind == DiskErrorKind::NotFound => Ok(()),
                    r => r.map_err(Error::from),
                })
            }
        };
        r.map_err(|e| keep(x, e))
    }

    fn hash_local(&self, file: &FsPath, x: &mut Extras) -> Result<Option<(u64, u32)>> {
        let Some(f) = self.file_if_present(file)? else { return Ok(None) };
        let bs = self.block_size as u64;
        let len = f.len()?;
        let blocks = len.div_ceil(bs);
        let (first, count) = match x.pick.take() {
            Some(pick) => pick(blocks),
            None => return Err(Error::InvalidArgument("a hash request with no blocks chosen".into())),
        };
        if count == 0 || count > crate::protocol::MAX_HASH_BLOCKS {
            return Err(Error::InvalidArgument(format!("{count} blocks do not fit one hash request")));
        }
        let local = crate::runtime::resync::hash_blocks(Some(f.as_ref()), first, count, self.block_size)?;
        let end = (first + count as u64).saturating_mul(bs).min(len);
        let bytes = end.saturating_sub(first.saturating_mul(bs));
        x.hashes = Some((first, local, blocks, bytes));
        Ok(Some((first, count)))
    }

    fn list_local(&self, fs: u16, dir: Option<&crate::protocol::path::RelPath>) -> Result<Listed> {
        let kind = match dir {
            Some(d) => self.disk.entry_kind(&FsPath::new(fs, d.clone()))?,
            None => Some(EntryKind::Dir),
        };
        let children = match kind {
            Some(EntryKind::Dir) => self.disk.list_dir(fs, dir)?,
            _ => Vec::new(),
        };
        Ok((kind, children))
    }

    fn log_op(&self, op: LogOp) -> std::result::Result<bool, String> {
        let log = self.changelog()?;
        let r = match op {
            LogOp::RecordWindow { blocks, touched } => log.record_batch(blocks, touched).map(|_| true),
            LogOp::PinDown => {
                log.pin_extents();
                log.pin_touched();
                Ok(true)
            }
            LogOp::PinAttach => {
                log.pin_touched();
                // A stopped resync's passes owed are in its plan now.
                log.take_redo();
                Ok(true)
            }
            LogOp::ClearEntries { blocks, paths, keep_extents, keep_paths } => {
                log.clear_entries_keeping(&blocks, &paths, &keep_extents, &keep_paths).map(|_| true)
            }
            LogOp::ClearKeeping { extents, paths } => log.clear_keeping(&extents, &paths),
            LogOp::Retire { extents, paths } => log.retire_active(&extents, &paths).map(|_| true),
        };
        r.map_err(|e| e.to_string())
    }

    fn send(&self, epoch: u64, frames: &[OutFrame]) -> std::result::Result<u64, String> {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 2);
        let mut wire = 0u64;
        for f in frames {
            slices.push(IoSlice::new(&f.header));
            if !f.body.is_empty() {
                slices.push(IoSlice::new(&f.body));
            }
            wire += f.wire_len() as u64;
        }
        let mut conn = lock(&self.conn);
        if conn.epoch != epoch {
            return Err("the connection was replaced".into());
        }
        conn.writer.send_all(&slices).map(|_| wire).map_err(|e| e.to_string())
    }

    fn ask_arbiter(&self, reason: String) -> std::result::Result<crate::core::primary::Decision, String> {
        let Some(t) = &self.tracking else { return Err("no arbiter configured".into()) };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let arbiter = t.arbiter.clone();
        let (content, generation) = (self.identity.content_id, self.identity.generation);
        let asked = std::thread::Builder::new().name("filerep-arbiter-ask".into()).spawn(move || {
            let _ = tx.send(arbiter.mirror_lost(content, generation, &reason));
        });
        match asked {
            Err(e) => Err(format!("cannot ask the arbiter: {e}")),
            Ok(_) => match rx.recv_timeout(t.decision_timeout) {
                Ok(r) => r,
                Err(_) => Err(format!("no answer from the arbiter within {:?}", t.decision_timeout)),
            },
        }
    }

    /// fdatasync every file with entries, and the directory holding each
    /// path with entries. A file or directory that is gone needs nothing:
    /// its removal is a path entry of its own.
    fn retire_sync(&self, files: &[FsPath], paths: &[FsPath]) -> std::result::Result<(), String> {
        let gone = |e: &crate::io::disk::DiskError| e.kind == DiskErrorKind::NotFound;
        for f in files {
            match self.disk.open(f, OpenMode::Existing) {
                Ok(h) => h.sync_data().map_err(|e| e.to_string())?,
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        for p in paths {
            match self.disk.sync_parent_dir(p) {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }
}

/// Keep a local error for the caller; the engine gets its text.
fn keep(x: &mut Extras, e: impl Into<Error>) -> String {
    let e = e.into();
    let text = e.to_string();
    x.local_error = Some(e);
    text
}

fn keep_log(x: &mut Extras, e: ChangeLogError) -> String {
    let text = e.to_string();
    x.changelog_error = Some(e);
    text
}

/// The receiver: reads the mirror's frames and feeds them with the clock.
pub(super) fn receiver_loop(rt: Arc<Runtime>, mut reader: Box<dyn ConnReader>, epoch: u64) {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let reason = loop {
        {
            let core = lock(&rt.core);
            if core.engine.epoch() != epoch || core.engine.mirror_lost().is_some() {
                return;
            }
        }
        let n = match reader.recv(&mut buf) {
            Ok(0) => break "the mirror closed the connection".to_string(),
            Ok(n) => n,
            Err(e) if is_timeout(&e) => 0,
            Err(e) => break format!("receive failed: {e}"),
        };
        dec.feed(&buf[..n]);
        let mut bad = None;
        let mut frames = Vec::new();
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    bad = Some(format!("bad frame from the mirror: {e}"));
                    break;
                }
            }
        }
        let mut mine = {
            let routed = {
                let mut core = lock(&rt.core);
                let now = rt.now_ms();
                for frame in frames {
                    core.engine.on(Event::Received { epoch, frame }, now);
                }
                core.engine.on(Event::Tick, now);
                rt.route(&mut core, None)
            };
            routed.wake()
        };
        while let Some(cmd) = mine.pop_front() {
            let mut x = Extras::default();
            if let Some(ev) = rt.execute(cmd, &mut x) {
                mine.extend(rt.feed(ev, None));
            }
        }
        if let Some(b) = bad {
            break b;
        }
    };
    rt.feed_and_run(Some(Event::Disconnected { epoch, reason }));
}
