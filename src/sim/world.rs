//! The simulated world: two segments with their disks and change-logs, the
//! stream between them, the arbiter, the writers, a virtual clock, and one
//! seeded random number generator that decides everything. Each virtual
//! millisecond the world runs some of the primary's pending commands (in
//! an order the seed picks), moves bytes, lets the mirror apply and sync,
//! ticks the engine, and lets the arbiter probe.

use super::faulty::FaultyDisk;
use super::mirror::Session;
use super::workload::{CallState, Issued, Waiting};
use super::*;
use crate::core::pair::Pair;
use crate::core::primary::{CallId, Command, Engine, EngineConfig, Event, Failure, Op, Owner, Reply, Wait};
use crate::durable::changelog::ChangeLog;
use crate::exec::primary::{Extras, PrimaryExec};
use crate::io::disk::SimDisk;

/// Virtual milliseconds.
pub(super) const HEARTBEAT_MS: u64 = 20;
pub(super) const ACK_TIMEOUT_MS: u64 = 150;
pub(super) const DECISION_TIMEOUT_MS: u64 = 100;
pub(super) const PROBE_EVERY_MS: u64 = 25;
/// No segment took calls for this long: the fault phase ends, the pair heals.
const STUCK_MS: u64 = 2_000;
/// An armed fault whose moment never came is dropped after this long.
pub(super) const FAULT_EXPIRES_MS: u64 = 600;

/// What a segment is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Down {
        restart_at: u64,
    },
    /// Back after a crash or a restart: waits for the arbiter's order.
    Idle,
    Mirror {
        gen: u64,
        faulted: bool,
    },
    Primary {
        gen: u64,
    },
    /// The segment is down (double fault): nothing is written anywhere.
    Halted,
}

/// A primary's engine and what it has asked for and not had done yet.
pub(super) struct PrimarySide {
    pub(super) engine: Engine,
    pub(super) exec: PrimaryExec,
    /// Each call's commands, in order (a call has at most one out at a time).
    pub(super) by_call: BTreeMap<CallId, VecDeque<Command>>,
    /// Sends and closes, for whichever thread fed the event.
    pub(super) current: VecDeque<Command>,
    /// The background worker's queue, run in order.
    pub(super) background: VecDeque<Command>,
    pub(super) extras: BTreeMap<CallId, Extras>,
}

pub(super) struct Node {
    pub(super) dbid: u32,
    pub(super) data_sim: Arc<SimDisk>,
    pub(super) data: Arc<FaultyDisk>,
    pub(super) log_sim: Arc<SimDisk>,
    pub(super) log_io: Arc<FaultyDisk>,
    pub(super) log: Option<Arc<ChangeLog>>,
    pub(super) role: Role,
    pub(super) reaches_arbiter: bool,
    pub(super) primary: Option<PrimarySide>,
    /// Power losses so far: the boot this segment's host is in.
    pub(super) boot: u64,
    /// The mirror's state file's record of a session streaming (the boot
    /// it started in), cleared once its end made everything durable.
    pub(super) streaming_boot: Option<u64>,
    /// The mirror's state file's sticky fault (rule 8): its mirror role's
    /// disk failed, so whatever restarts it, it refuses primaries until an
    /// operator rebuilds it (`World::rebuild_mirror`).
    pub(super) mirror_fault: bool,
}

impl Node {
    /// Its mirror role's record says a session was cut by a power loss
    /// (the core's rule, on boot counts).
    pub(super) fn lost_power_streaming(&self) -> bool {
        crate::core::mirror::lost_power_streaming(self.streaming_boot.as_ref(), Some(&self.boot))
    }
}

/// Who is waiting for a call of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CallOwner {
    Writer {
        w: usize,
        op: usize,
    },
    /// The resync engine (or the orderly shutdown): its result is kept.
    Link,
}

/// An arbiter's answer on its way to a deciding primary.
pub(super) struct Answer {
    pub(super) at: u64,
    pub(super) node: usize,
    pub(super) result: Result<crate::core::primary::Decision, String>,
}

/// A fault armed to fire at its moment.
#[derive(Clone, Copy, Debug)]
pub(super) struct Armed {
    pub(super) kind: FaultKind,
    pub(super) node: usize,
    pub(super) until: u64,
}

pub(super) struct World {
    pub(super) seed: u64,
    pub(super) cfg: FaultConfig,
    pub(super) bs: u64,
    pub(super) log_path: FsPath,
    pub(super) rng: ChaCha8Rng,
    /// The mirror's write rounds draw from this one ([`super::rounds`]).
    pub(super) rounds_rng: ChaCha8Rng,
    pub(super) now: u64,
    pub(super) step: u64,
    pub(super) nodes: Vec<Node>,
    pub(super) session: Option<Session>,
    pub(super) pair: Pair,
    /// The arbiter's disk: the catalog, stored before any order that
    /// depends on it, read back when the arbiter returns from a crash.
    pub(super) catalog_disk: Arc<SimDisk>,
    pub(super) arbiter_up: bool,
    pub(super) arbiter_back_at: u64,
    pub(super) partition_heal_at: Option<u64>,
    pub(super) answers: Vec<Answer>,
    pub(super) model: Model,
    pub(super) model_node: Option<usize>,
    pub(super) kind_hints: BTreeMap<FsPath, FileKind>,
    pub(super) writers: Vec<Option<Waiting>>,
    pub(super) ops: Vec<Issued>,
    pub(super) calls: BTreeMap<CallId, (usize, CallOwner)>,
    pub(super) results: BTreeMap<CallId, (Result<Reply, Failure>, Extras)>,
    pub(super) next_call: CallId,
    pub(super) writer_of_gen: BTreeMap<u64, u32>,
    pub(super) schedule: VecDeque<(usize, FaultKind)>,
    pub(super) armed: Option<Armed>,
    pub(super) report: FaultReport,
    /// Writers issue calls until this many were issued (raised while a resync runs).
    pub(super) op_limit: usize,
    /// Writers stop (a settling pair).
    pub(super) writers_paused: bool,
    /// The pair went down at some point (only durably acknowledged writes are owed).
    pub(super) double_fault: bool,
    /// Counts issues and returns of calls, to order them.
    pub(super) moments: u64,
    /// Which segments lost power since the pair was last made whole.
    pub(super) lost_power: [bool; 2],
    /// The moments at which a segment lost power: a sync after one does
    /// not make durable what was written before it.
    pub(super) power_losses: Vec<u64>,
    pub(super) resync: resync::ResyncState,
}

impl World {
    pub(super) fn new(seed: u64, cfg: &FaultConfig) -> Result<World, SimFailure> {
        let failure = |message: String| SimFailure { seed, step: 0, message, faults: true, flags: String::new() };
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
                primary: None,
                boot: 0,
                streaming_boot: None,
                mirror_fault: false,
            }
        };
        let nodes = vec![node(1, Role::Idle), node(2, Role::Idle)];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let kinds = FaultKind::scheduled();
        let ops = cfg.operations.max(8);
        let faults = if cfg.max_faults == 0 { 0 } else { rng.gen_range(1..=cfg.max_faults) };
        let mut schedule: Vec<(usize, FaultKind)> =
            (0..faults).map(|_| (rng.gen_range(ops / 8..ops * 7 / 8), kinds[rng.gen_range(0..kinds.len())])).collect();
        if cfg.steady {
            // Faults meet the steady part: a pair in sync whose files are
            // written in place.
            for (at, _) in &mut schedule {
                *at = (*at).max(ops / 2);
            }
        }
        schedule.sort_by_key(|(at, _)| *at);
        let mut w = World {
            seed,
            cfg: cfg.clone(),
            bs: cfg.block_size as u64,
            log_path,
            rng,
            rounds_rng: super::rounds::rounds_rng(seed),
            now: 0,
            step: 0,
            nodes,
            session: None,
            pair: Pair::new(0, 1, 2),
            catalog_disk: Arc::new(SimDisk::new(1)),
            arbiter_up: true,
            arbiter_back_at: 0,
            partition_heal_at: None,
            answers: Vec::new(),
            model: Model::default(),
            model_node: None,
            kind_hints: BTreeMap::new(),
            writers: vec![None; cfg.writers.max(1)],
            ops: Vec::new(),
            calls: BTreeMap::new(),
            results: BTreeMap::new(),
            next_call: 1,
            writer_of_gen: BTreeMap::new(),
            schedule: schedule.into(),
            armed: None,
            report: FaultReport::default(),
            op_limit: cfg.operations,
            writers_paused: false,
            double_fault: false,
            moments: 0,
            lost_power: [false; 2],
            power_losses: Vec::new(),
            resync: resync::ResyncState::default(),
        };
        for n in 0..w.nodes.len() {
            w.open_log(n)?;
        }
        Ok(w)
    }

    pub(super) fn fail(&self, message: impl Into<String>) -> SimFailure {
        let mut flags = String::new();
        if let Some(bug) = self.cfg.bug {
            flags.push_str(&format!(" --bug {}", bug.name()));
        }
        if self.cfg.steady {
            flags.push_str(" --steady");
        }
        if self.cfg.rename_storm {
            flags.push_str(" --rename-storm");
        }
        if self.cfg.queued {
            flags.push_str(" --queued");
        }
        SimFailure { seed: self.seed, step: self.step, message: message.into(), faults: true, flags }
    }

    pub(super) fn outcome(&mut self, what: &'static str) {
        tracing::debug!(seed = self.seed, step = self.step, now = self.now, what, "sim: outcome");
        *self.report.outcomes.entry(what).or_default() += 1;
    }

    pub(super) fn count(&mut self, kind: FaultKind) {
        tracing::debug!(seed = self.seed, step = self.step, now = self.now, fault = %kind, "sim: fault fired");
        *self.report.faults.entry(kind).or_default() += 1;
        if let FaultKind::Resync(_) = kind {
            self.resync_fault_fired();
        }
    }

    pub(super) fn rel(&self, s: &str) -> Result<RelPath, SimFailure> {
        RelPath::new(s).map_err(|e| self.fail(format!("path {s:?}: {e}")))
    }

    pub(super) fn node_of(&self, dbid: u32) -> Result<usize, SimFailure> {
        self.nodes.iter().position(|x| x.dbid == dbid).ok_or_else(|| self.fail(format!("no segment {dbid}")))
    }

    pub(super) fn gen_of(&self, n: usize) -> u64 {
        match &self.nodes[n].role {
            Role::Primary { gen } | Role::Mirror { gen, .. } => *gen,
            _ => 0,
        }
    }

    /// Open segment `n`'s change-log as its process does at start: replay
    /// the file if there is one, else create it.
    pub(super) fn open_log(&mut self, n: usize) -> Result<(), SimFailure> {
        let io: Arc<dyn crate::io::disk::Disk> = self.nodes[n].log_io.clone();
        let fired = self.nodes[n].log_io.fired_total();
        let log = match ChangeLog::open(io.clone(), self.log_path.clone()) {
            Ok((log, _)) => Some(log),
            Err(crate::durable::changelog::ChangeLogError::Disk { source, .. })
                if source.kind == crate::io::disk::DiskErrorKind::NotFound =>
            {
                ChangeLog::create(io, self.log_path.clone(), self.cfg.block_size).ok()
            }
            // A fault fired while the replay made what it read durable:
            // the segment starts without a change-log, as one whose
            // change-log cannot be created.
            Err(crate::durable::changelog::ChangeLogError::Disk { .. })
                if self.nodes[n].log_io.fired_total() > fired =>
            {
                if self.nodes[n].log_io.power_lost() {
                    return self.crash_node(n);
                }
                None
            }
            Err(e) => {
                return Err(self
                    .fail(format!("invariant 3: segment {}'s change-log cannot be replayed: {e}", self.nodes[n].dbid)))
            }
        };
        if self.nodes[n].log_io.power_lost() {
            return self.crash_node(n);
        }
        self.nodes[n].log = log.map(Arc::new);
        Ok(())
    }

    // ---- the primary's engine --------------------------------------------

    pub(super) fn engine_config(&mut self) -> EngineConfig {
        // Most streams at the default level; some strict, every operation
        // durable on the mirror before it returns.
        let level =
            if self.rng.gen_bool(0.2) { crate::config::SyncLevel::Durable } else { crate::config::SyncLevel::Applied };
        EngineConfig {
            block_size: self.cfg.block_size,
            filespaces: self.cfg.filespaces,
            level,
            tracking: true,
            heartbeat_ms: HEARTBEAT_MS,
            ack_timeout_ms: ACK_TIMEOUT_MS,
            max_pending_bytes: self.rng.gen_range(4..64) * 8192,
            // Now and then a tiny table: entries retire all the time, so
            // change tracking meets files the change-log no longer names.
            activity_limit: if self.rng.gen_bool(0.25) { self.rng.gen_range(1..4) } else { self.rng.gen_range(4..64) },
            planted: self.cfg.bug,
        }
    }

    /// Segment `n` starts an engine (`alone`: in change tracking).
    pub(super) fn start_engine(&mut self, n: usize, gen: u64, alone: Option<&str>) {
        let cfg = self.engine_config();
        let engine = Engine::new(cfg, self.now, alone.map(str::to_string));
        let exec = PrimaryExec::new(self.nodes[n].data.clone(), self.nodes[n].log.clone(), self.cfg.block_size);
        self.nodes[n].primary = Some(PrimarySide {
            engine,
            exec,
            by_call: BTreeMap::new(),
            current: VecDeque::new(),
            background: VecDeque::new(),
            extras: BTreeMap::new(),
        });
        self.nodes[n].role = Role::Primary { gen };
    }

    /// The engine of segment `n` is gone (a crash, a demotion): its calls never return.
    pub(super) fn drop_engine(&mut self, n: usize) {
        self.nodes[n].primary = None;
        self.finish_writers(n);
        let gone: Vec<CallId> = self.calls.iter().filter(|(_, (node, _))| *node == n).map(|(c, _)| *c).collect();
        for c in gone {
            self.calls.remove(&c);
        }
        self.answers.retain(|a| a.node != n);
        self.close_primary_side(n);
    }

    /// A call to segment `n`'s engine.
    pub(super) fn submit(&mut self, n: usize, op: Op, owner: CallOwner, extras: Extras) -> Option<CallId> {
        self.submit_with(n, op, Wait::Level, owner, extras)
    }

    pub(super) fn submit_with(
        &mut self,
        n: usize,
        op: Op,
        wait: Wait,
        owner: CallOwner,
        extras: Extras,
    ) -> Option<CallId> {
        let now = self.now;
        let id = self.next_call;
        let side = self.nodes[n].primary.as_mut()?;
        self.next_call += 1;
        side.extras.insert(id, extras);
        self.calls.insert(id, (n, owner));
        side.engine.submit_with(id, op, wait, now);
        self.route(n);
        Some(id)
    }

    /// Feed an event to segment `n`'s engine.
    pub(super) fn feed(&mut self, n: usize, ev: Event) {
        let now = self.now;
        *self.report.events.entry(event_name(&ev)).or_default() += 1;
        let Some(side) = self.nodes[n].primary.as_mut() else { return };
        side.engine.on(ev, now);
        self.route(n);
    }

    /// Sort what the engine asked for into its queues; completions are delivered at once.
    fn route(&mut self, n: usize) {
        let mut done = Vec::new();
        let mut close = false;
        let Some(side) = self.nodes[n].primary.as_mut() else { return };
        while let Some(cmd) = side.engine.next_command() {
            *self.report.commands.entry(cmd.name()).or_default() += 1;
            match (cmd.owner(), cmd) {
                (_, Command::Complete { call, result }) => done.push((call, result)),
                (_, Command::Close) => close = true,
                (Owner::Call(c), cmd) => side.by_call.entry(c).or_default().push_back(cmd),
                (Owner::Current, cmd) => side.current.push_back(cmd),
                (Owner::Background, cmd) => side.background.push_back(cmd),
            }
        }
        if close {
            self.close_primary_side(n);
        }
        for (call, result) in done {
            self.call_done(n, call, result);
        }
    }

    fn call_done(&mut self, n: usize, call: CallId, result: Result<Reply, Failure>) {
        let extras = self.nodes[n].primary.as_mut().and_then(|s| {
            s.by_call.remove(&call);
            s.extras.remove(&call)
        });
        match self.calls.remove(&call) {
            Some((_, CallOwner::Writer { w, op })) => {
                self.writers[w] = None;
                let ok = result.is_ok();
                tracing::trace!(seed = self.seed, call, op, ok, ?result, "sim: call returned");
                self.moments += 1;
                self.ops[op].returned = Some(self.moments);
                if self.ops[op].state == CallState::Pending {
                    self.ops[op].state = if ok { CallState::Acked } else { CallState::Failed };
                    if ok {
                        self.report.acked += 1;
                    }
                }
            }
            Some((_, CallOwner::Link)) => {
                self.results.insert(call, (result, extras.unwrap_or_default()));
            }
            None => {}
        }
    }

    /// Every writer's call on segment `n` is gone with it.
    pub(super) fn finish_writers(&mut self, n: usize) {
        for w in 0..self.writers.len() {
            if let Some(wt) = self.writers[w] {
                if wt.node == n {
                    self.writers[w] = None;
                    if self.ops[wt.op].state == CallState::Pending {
                        self.ops[wt.op].state = CallState::Failed;
                    }
                }
            }
        }
    }

    /// Run one of segment `n`'s pending commands, picked by the seed.
    pub(super) fn primary_command(&mut self, n: usize) -> Result<(), SimFailure> {
        let Some(side) = self.nodes[n].primary.as_mut() else { return Ok(()) };
        let mut choices: Vec<u8> = Vec::new();
        let heads: Vec<CallId> = side.by_call.iter().filter(|(_, q)| !q.is_empty()).map(|(c, _)| *c).collect();
        choices.extend(std::iter::repeat_n(0, heads.len()));
        if !side.current.is_empty() {
            choices.push(1);
        }
        if !side.background.is_empty() {
            choices.push(2);
        }
        if choices.is_empty() {
            return Ok(());
        }
        let pick = self.rng.gen_range(0..choices.len());
        let side = match self.nodes[n].primary.as_mut() {
            Some(s) => s,
            None => return Ok(()),
        };
        let (cmd, call) = match choices[pick] {
            0 => {
                let c = heads[pick];
                (side.by_call.get_mut(&c).and_then(VecDeque::pop_front), Some(c))
            }
            1 => (side.current.pop_front(), None),
            _ => (side.background.pop_front(), None),
        };
        match cmd {
            Some(cmd) => self.execute(n, cmd, call),
            None => Ok(()),
        }
    }

    // ---- the main loop -------------------------------------------------------

    /// One virtual millisecond of everything but the writers.
    pub(super) fn tick(&mut self) -> Result<(), SimFailure> {
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
                    self.restart(n)?;
                }
            }
        }
        for n in 0..self.nodes.len() {
            let k = self.rng.gen_range(0..=4);
            for _ in 0..k {
                self.primary_command(n)?;
            }
        }
        if self.rng.gen_bool(0.8) {
            self.mirror_step()?;
        }
        if self.rng.gen_bool(0.8) {
            self.primary_receive()?;
        }
        if self.rng.gen_bool(0.3) {
            self.syncer_step()?;
        }
        if self.rounds_rng.gen_bool(0.7) {
            self.rounds_step()?;
        }
        for n in 0..self.nodes.len() {
            if self.nodes[n].primary.is_some() {
                self.feed(n, Event::Tick);
            }
        }
        self.answers_due();
        self.mirror_timers()?;
        self.arbiter_step()?;
        for n in 0..self.nodes.len() {
            self.drain_fired(n);
        }
        Ok(())
    }

    /// Writers issue calls on the acting primary while it takes them.
    pub(super) fn writers_step(&mut self) -> Result<(), SimFailure> {
        if self.writers_paused {
            return Ok(());
        }
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

    /// Whether segment `n` is a primary whose engine takes calls.
    pub(super) fn accepting(&self, n: usize) -> bool {
        self.nodes[n].primary.as_ref().is_some_and(|s| {
            s.engine.faulted().is_none()
                && matches!(
                    s.engine.mode(),
                    crate::core::primary::Mode::Streaming | crate::core::primary::Mode::ChangeTracking
                )
        })
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
        let op = self.ops.len();
        self.moments += 1;
        // Drawn only in queued schedules: the others replay as before.
        let queued = self.cfg.queued && self.rng.gen_bool(0.5);
        let gen = match self.nodes[n].role {
            Role::Primary { gen } => gen,
            _ => 0,
        };
        self.ops.push(Issued {
            spec: spec.clone(),
            state: CallState::Pending,
            issued: self.moments,
            returned: None,
            queued,
            term: (n, gen),
        });
        self.writers[w] = Some(Waiting { op, node: n });
        let engine_op = spec.to_op(self.bs);
        tracing::trace!(
            seed = self.seed,
            step = self.step,
            call = op,
            segment = self.nodes[n].dbid,
            ?spec,
            "sim: call"
        );
        if self.resync.running {
            self.report.resync.concurrent_calls += 1;
        }
        let wait = if queued { Wait::Queued } else { Wait::Level };
        if self.submit_with(n, engine_op, wait, CallOwner::Writer { w, op }, Extras::default()).is_none() {
            self.writers[w] = None;
            self.ops[op].state = CallState::Failed;
        }
        Ok(())
    }

    /// Run until `ops` calls were issued, then heal, check and repair.
    pub(super) fn run(&mut self) -> Result<(), SimFailure> {
        self.arbiter_step_now()?;
        let limit = self.cfg.operations as u64 * 200 + 20_000;
        let mut stuck_since = None;
        while self.ops.len() < self.cfg.operations && !self.pair.down {
            // No segment takes calls (a faulted or failed primary the
            // arbiter still counts as serving): an operator restarts it.
            let open = (0..self.nodes.len()).any(|n| self.accepting(n));
            match (open, stuck_since) {
                (true, _) => stuck_since = None,
                (false, None) => stuck_since = Some(self.now),
                (false, Some(t)) if self.now - t > STUCK_MS => {
                    self.outcome("no segment took calls until an operator restarted one");
                    break;
                }
                _ => {}
            }
            self.step += 1;
            if self.step > limit {
                return Err(self.fail(format!(
                    "no progress: {} of {} calls issued ({})",
                    self.ops.len(),
                    self.cfg.operations,
                    self.describe()
                )));
            }
            self.writers_step()?;
            self.tick()?;
            self.now += 1;
        }
        self.check_and_repair()?;
        self.report.operations = self.ops.len();
        self.report.virtual_ms = self.now;
        Ok(())
    }

    /// The state of both segments, for a failure message.
    pub(super) fn describe(&self) -> String {
        let mut out = Vec::new();
        for node in &self.nodes {
            let engine = node.primary.as_ref().map(|s| s.engine.describe()).unwrap_or_default();
            out.push(format!("segment {} {:?} {engine}", node.dbid, node.role));
        }
        out.push(format!("pair {:?}", self.pair));
        let waiting: Vec<String> =
            self.writers.iter().flatten().map(|w| format!("op {} on {}", w.op, w.node)).collect();
        out.push(format!("writers waiting: {waiting:?}; calls {:?}", self.calls));
        out.join("; ")
    }
}

fn event_name(ev: &Event) -> &'static str {
    match ev {
        Event::Opened { .. } => "opened",
        Event::Recorded { .. } => "recorded",
        Event::LocalDone { .. } => "local-done",
        Event::CopyRead { .. } => "copy-read",
        Event::ReconcileRead { .. } => "reconcile-read",
        Event::HashedLocal { .. } => "hashed-local",
        Event::ListedLocal { .. } => "listed-local",
        Event::RedoTaken { .. } => "redo-taken",
        Event::Logged { .. } => "logged",
        Event::Sent { .. } => "sent",
        Event::Received { .. } => "received",
        Event::Disconnected { .. } => "disconnected",
        Event::Tick => "tick",
        Event::ArbiterAnswered { .. } => "arbiter-answered",
        Event::RetireSynced { .. } => "retire-synced",
        Event::Expired { .. } => "expired",
    }
}
