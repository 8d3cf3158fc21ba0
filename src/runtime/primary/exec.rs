//! The executor: it holds the engine under one short lock per event and
//! carries out its commands outside it. A caller's own thread runs its call
//! (its local I/O, its change-log records) and, when the engine hands it
//! the queue, the send; the receiver thread feeds acknowledgements and the
//! clock; a background worker runs the loss decision and retiring. No lock
//! is held across I/O.

use super::ChangeTracking;
use crate::core::primary::{CallId, Command, Engine, Event, Failure, OutFrame, Owner, Reply};
use crate::error::{Error, Result};
pub(super) use crate::exec::primary::{Extras, Pick};
use crate::exec::primary::{Performed, PrimaryExec};
use crate::io::disk::Disk;
use crate::io::net::ConnWriter;
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a caller that waits alone polls for its next command before it
/// parks: an acknowledgement usually arrives within tens of microseconds,
/// and polling saves a futex wake-up per call. A caller that waits beside
/// others parks at once: their polling would only take turns on the CPU
/// (measured: 10-15 % less CPU per block with 8 writers, docs/performance.md).
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);
/// On a direct disk, sends a call runs before its own next command, at most.
const MAX_SENDS_IN_A_ROW: usize = 4;
/// A call that waits this long with no deadline has its engine's state logged.
const STALL_REPORT: Duration = Duration::from_secs(30);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a call out of [`Runtime::call`] however it leaves.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A call's mailbox: commands other threads route to it, and its result.
pub(super) struct Slot {
    inbox: Mutex<Inbox>,
    ready: AtomicBool,
    thread: std::thread::Thread,
}

/// A call's result as the engine gives it.
type Outcome = std::result::Result<Reply, Failure>;

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

    /// Wait until something arrives or the deadline passes (`None`: it
    /// passed); poll a moment first if `spin`.
    fn wait(&self, deadline: Option<Instant>, spin: bool) -> Option<(VecDeque<Command>, Option<Outcome>)> {
        let started = Instant::now();
        let spin_until = if spin { started + SPIN_BEFORE_PARK } else { started };
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

/// Move the commands for whichever thread runs them (sends, a close) from
/// `cmds` to the end of `to`, in order.
fn take_sends(cmds: &mut VecDeque<Command>, to: &mut VecDeque<Command>) {
    if cmds.iter().any(|c| c.owner() == Owner::Current) {
        let (current, own): (VecDeque<Command>, VecDeque<Command>) =
            cmds.drain(..).partition(|c| c.owner() == Owner::Current);
        to.extend(current);
        *cmds = own;
    }
}

/// The connection the engine's sends go to, with its number.
pub(super) struct Conn {
    pub epoch: u64,
    pub writer: Box<dyn ConnWriter>,
}

pub(super) struct Runtime {
    pub core: Mutex<Core>,
    pub exec: PrimaryExec,
    pub tracking: Option<ChangeTracking>,
    pub identity: crate::config::PairIdentity,
    pub conn: Mutex<Conn>,
    /// The current connection's read side (`None` before the first).
    pub link: Mutex<Option<Arc<super::reader::Link>>>,
    /// A second handle on the connection, to close it from any thread.
    pub closer: Mutex<Box<dyn ConnWriter>>,
    background: Mutex<Option<crossbeam_channel::Sender<Command>>>,
    next_call: AtomicU64,
    /// Calls waiting for their next command (they poll only when alone).
    waiting: AtomicUsize,
    /// Calls in progress (a call that is the only one reads its own answer).
    active: AtomicUsize,
    /// A call runs the sends it is handed before its own work (see `call`).
    sends_first: bool,
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
        let changelog = tracking.as_ref().map(|t| t.changelog.clone());
        let sends_first = disk.writes_direct();
        Runtime {
            core: Mutex::new(Core::new(engine)),
            exec: PrimaryExec::new(disk, changelog, identity.block_size),
            tracking,
            identity,
            conn: Mutex::new(conn),
            link: Mutex::new(None),
            closer: Mutex::new(closer),
            background: Mutex::new(None),
            next_call: AtomicU64::new(1),
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sends_first,
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
        if let Some(ev) = ev {
            self.run_left(self.feed(ev, None));
        }
    }

    /// Carry out the commands an event left for this thread (no call of
    /// its own), and those their events leave in turn.
    pub(super) fn run_left(&self, mut mine: VecDeque<Command>) {
        while let Some(cmd) = mine.pop_front() {
            let mut x = Extras::default();
            if let Some(ev) = self.execute(cmd, &mut x) {
                mine.extend(self.feed(ev, None));
            }
        }
    }

    pub(super) fn feed(&self, ev: Event, me: Option<CallId>) -> VecDeque<Command> {
        self.feed_all([ev], me)
    }

    /// Feed events in order under one hold of the core's lock (at one
    /// clock reading), then route and wake as [`Runtime::feed`] does.
    pub(super) fn feed_all(&self, evs: impl IntoIterator<Item = Event>, me: Option<CallId>) -> VecDeque<Command> {
        let routed = {
            let mut core = lock(&self.core);
            let now = self.now_ms();
            for ev in evs {
                core.engine.on(ev, now);
            }
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
        self.call_with(op, crate::core::primary::Wait::Level, deadline, x)
    }

    /// [`Runtime::call`], returning when `wait_for` says.
    pub fn call_with(
        &self,
        op: crate::core::primary::Op,
        wait_for: crate::core::primary::Wait,
        deadline: Option<Instant>,
        x: &mut Extras,
    ) -> std::result::Result<Reply, Failure> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        let _active = Active(&self.active);
        let slot = Arc::new(Slot::new());
        let mut mine = {
            let routed = {
                let mut core = lock(&self.core);
                core.slots.insert(id, slot.clone());
                core.engine.submit_with(id, op, wait_for, self.now_ms());
                self.route(&mut core, Some(id))
            };
            routed.wake()
        };
        let mut deadline = deadline;
        let mut result = None;
        // On a direct disk, sends this thread was handed (other calls'
        // frames too) go before its own work: frames queued while it
        // writes its own block would wait for that write (the device's
        // latency), and their callers with them. Each queue keeps its
        // order; the engine does not order one against the other (the
        // simulator runs them in either order). With the page cache a
        // local write is a copy, and its own fdatasync starting later
        // only delays a flush (measured: docs/performance.md).
        let mut sends = VecDeque::new();
        loop {
            if self.sends_first {
                take_sends(&mut mine, &mut sends);
            }
            let mut sends_in_a_row = 0;
            loop {
                // Bounded: while others keep queueing frames, the sends
                // would otherwise keep this call's own write waiting.
                let cmd = match sends_in_a_row < MAX_SENDS_IN_A_ROW {
                    true => sends.pop_front().or_else(|| mine.pop_front()),
                    false => mine.pop_front().or_else(|| sends.pop_front()),
                };
                let Some(cmd) = cmd else { break };
                sends_in_a_row = match cmd.owner() == Owner::Current {
                    true => sends_in_a_row + 1,
                    false => 0,
                };
                match cmd {
                    Command::Complete { call, result: r } if call == id => result = Some(r),
                    cmd => {
                        if let Some(ev) = self.execute(cmd, x) {
                            let mut more = self.feed(ev, Some(id));
                            if self.sends_first {
                                take_sends(&mut more, &mut sends);
                            }
                            mine.extend(more);
                        }
                    }
                }
            }
            if let Some(r) = result {
                return r;
            }
            let alone = self.waiting.fetch_add(1, Ordering::Relaxed) == 0;
            // The only call in progress (a database committing) reads its
            // answer itself where it can (`reader.rs`): one wake-up fewer
            // between the mirror and it. Beside other calls the receiver
            // reads for all (measured: docs/performance.md).
            let only = alone && self.active.load(Ordering::Relaxed) == 1;
            let link = lock(&self.link).clone();
            let waited = match link {
                Some(link) if only && link.takes_a_reader() => {
                    let ready = || slot.ready.load(Ordering::Acquire);
                    match super::reader::lead(self, &link, ready, deadline, Instant::now() + STALL_REPORT) {
                        super::reader::Led::Ready => Some(slot.take()),
                        super::reader::Led::Expired => None,
                        super::reader::Led::Gave => {
                            let _passive = link.wait_passively();
                            slot.wait(deadline, false)
                        }
                    }
                }
                Some(link) => {
                    // The receiver reads for this call (back from aside if it was).
                    let _passive = link.wait_passively();
                    slot.wait(deadline, alone)
                }
                None => slot.wait(deadline, alone),
            };
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            match waited {
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

    /// Carry out one command; the event it leads to.
    pub fn execute(&self, cmd: Command, x: &mut Extras) -> Option<Event> {
        match self.exec.perform(cmd, x) {
            Performed::Done(ev) => ev,
            Performed::Driver(Command::Send { epoch, frames }) => {
                Some(Event::Sent { epoch, result: self.send(epoch, &frames) })
            }
            Performed::Driver(Command::Close) => {
                lock(&self.closer).close();
                None
            }
            Performed::Driver(Command::AskArbiter { reason }) => {
                Some(Event::ArbiterAnswered { result: self.ask_arbiter(reason) })
            }
            Performed::Driver(other) => {
                tracing::error!(command = other.name(), "a command reached the wrong thread");
                None
            }
        }
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
}
