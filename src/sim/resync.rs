//! The repair of a pair that is not down: `filerep recover` as the
//! arbiter and the segment carry it out (the pair to `r`, the mirror taken
//! back by the acting primary's engine), then the real resync engine
//! ([`crate::core::resync::run_on`]) drives that engine through
//! [`SimLink`], each of its steps one engine call, while the writers keep
//! calling on the same files and the world runs between and inside steps.
//!
//! Half the schedules arm one [`ResyncFault`] at a random step of the
//! engine; it fires a few milliseconds later, wherever the resync then is.
//! After it: heal, check invariants 1 and 3 again, resync again, then
//! invariant 4.

use super::world::{CallOwner, Role, World, FAULT_EXPIRES_MS};
use super::*;
use crate::core::arbiter::Recover;
use crate::core::pair::{Event, PairMode};
use crate::core::primary::{Bound, Failure, Mode, Op, Reply, ResyncStep, EXTENT_BLOCKS};
use crate::core::resync::{ChangeSet, LocalEntry, ResyncLink, ResyncOptions, ResyncReport};
use crate::error::{Error, Result as EResult};
use crate::exec::primary::Extras;
use crate::io::disk::Disk;
use crate::protocol::path::EntryKind;
use std::time::Duration;

/// How long a step of the engine waits for the mirror, in virtual ms.
const RESYNC_WAIT_MS: u64 = 5_000;

/// Where the resync is (for the report: where its fault fired).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    ChangeSet,
    Reconcile,
    Copy,
    Hashes,
    Flush,
    Checkpoint,
    Finish,
}

impl Step {
    fn outcome(self) -> &'static str {
        match self {
            Step::ChangeSet => "resync fault fired reading the change set",
            Step::Reconcile => "resync fault fired during a reconcile",
            Step::Copy => "resync fault fired during a block copy",
            Step::Hashes => "resync fault fired during a hash comparison",
            Step::Flush => "resync fault fired during a flush",
            Step::Checkpoint => "resync fault fired during a checkpoint",
            Step::Finish => "resync fault fired during the finish",
        }
    }
}

/// The fault armed for a resync.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    fault: ResyncFault,
    /// Armed at this step of the engine (0: not chosen yet)...
    at_call: u64,
    /// ...to fire this many virtual ms later.
    delay: u64,
    fire_at: Option<u64>,
    /// A disk fault set on its disk, waiting for the I/O that trips it.
    on_disk: bool,
    fired: bool,
}

#[derive(Default)]
pub(super) struct ResyncState {
    pub(super) running: bool,
    pub(super) fault: Option<Pending>,
    pub(super) step: Option<Step>,
    /// The plan's blocks, for writers to aim at.
    pub(super) targets: Vec<(FsPath, u64)>,
    /// Why the mirror refused an operation during the resync, if it did.
    pub(super) refusal: Option<String>,
    /// The next resync is a full one (after a restore).
    pub(super) full: bool,
}

/// The simulator's end of the resync: the acting primary `a`'s engine,
/// for the mirror it took back as `attachment`.
struct SimLink<'a> {
    w: &'a mut World,
    a: usize,
    b: usize,
    attachment: u64,
    /// The rename journal's position the last reconcile or copy read at.
    step_at: Option<u64>,
    /// An invariant or model failure met while the engine ran; the engine
    /// sees an error and stops, and the schedule fails with this.
    failure: Option<SimFailure>,
    calls: u64,
    /// The recover tool went away: every later step fails.
    abandoned: bool,
    /// Steps (virtual ms) the whole run may take.
    deadline: u64,
}

impl SimLink<'_> {
    fn stash(&mut self, f: SimFailure) -> Error {
        let m = f.message.clone();
        self.failure.get_or_insert(f);
        Error::Rejected(format!("simulator: {m}"))
    }

    /// Let the world run `ticks` virtual ms: writers, stream, mirror,
    /// arbiter, and the armed fault when its moment comes.
    fn advance(&mut self, ticks: u64) -> Result<(), SimFailure> {
        for _ in 0..ticks {
            self.w.step += 1;
            if self.w.step > self.deadline {
                return Err(self.w.fail(format!("the resync made no progress: {}", self.w.describe())));
            }
            self.fire_due()?;
            self.w.writers_step()?;
            self.w.tick()?;
            self.w.now += 1;
        }
        self.fire_due()
    }

    fn gone(&self) -> EResult<()> {
        if self.abandoned {
            return Err(Error::Closed("the recover tool driving the resync went away".into()));
        }
        if self.w.nodes[self.a].primary.is_none() {
            return Err(Error::Closed("the primary is gone".into()));
        }
        Ok(())
    }

    /// Every engine step: count it, arm the fault at its step, let the world run a little.
    fn enter(&mut self, step: Step) -> EResult<()> {
        self.w.resync.step = Some(step);
        self.calls += 1;
        let now = self.w.now;
        if let Some(p) = self.w.resync.fault.as_mut() {
            if p.fire_at.is_none() && p.at_call > 0 && self.calls >= p.at_call {
                p.fire_at = Some(now + p.delay);
            }
        }
        let ticks = self.w.rng.gen_range(0..3);
        self.advance(ticks).map_err(|f| self.stash(f))?;
        self.gone()
    }

    /// One engine call of the acting primary, run until it returns (the
    /// world goes on meanwhile); `wait`: its deadline in virtual ms.
    fn call(&mut self, op: Op, extras: Extras, wait: Option<u64>) -> EResult<(Reply, Extras)> {
        self.gone()?;
        let Some(id) = self.w.submit(self.a, op, CallOwner::Link, extras) else {
            return Err(Error::Closed("the primary is gone".into()));
        };
        let expire_at = wait.map(|ms| self.w.now + ms.min(RESYNC_WAIT_MS));
        loop {
            if let Some((r, x)) = self.w.results.remove(&id) {
                return match r {
                    Ok(reply) => Ok((reply, x)),
                    Err(f) => Err(error_of(f)),
                };
            }
            if !self.w.calls.contains_key(&id) {
                return Err(Error::Closed("the primary went away during the step".into()));
            }
            if expire_at.is_some_and(|t| self.w.now >= t) {
                self.w.feed(self.a, crate::core::primary::Event::Expired { call: id });
                continue;
            }
            self.advance(1).map_err(|f| self.stash(f))?;
        }
    }

    fn step(&mut self, s: ResyncStep, wait: Option<u64>) -> EResult<Reply> {
        let op = Op::Resync { bound: Bound::Resync(self.attachment), step: s };
        self.call(op, Extras::default(), wait).map(|(r, _)| r)
    }

    fn fire_due(&mut self) -> Result<(), SimFailure> {
        let Some(p) = self.w.resync.fault else { return Ok(()) };
        if p.fired || p.on_disk || p.fire_at.is_none_or(|t| self.w.now < t) {
            return Ok(());
        }
        let (a, b) = (self.a, self.b);
        let kind = FaultKind::Resync(p.fault);
        tracing::debug!(seed = self.w.seed, step = self.w.step, fault = %kind, "sim: resync fault due");
        let w = &mut *self.w;
        let on_disk = |w: &mut World, node: usize| {
            w.armed = Some(super::world::Armed { kind, node, until: w.now + FAULT_EXPIRES_MS });
            if let Some(p) = w.resync.fault.as_mut() {
                p.on_disk = true;
            }
        };
        match p.fault {
            ResyncFault::CrashPrimary => {
                w.count(kind);
                w.crash_node(a)?;
            }
            ResyncFault::CrashMirror => {
                w.count(kind);
                w.crash_node(b)?;
            }
            ResyncFault::CrashArbiter => {
                w.count(kind);
                let back = w.rng.gen_range(30..300);
                w.arbiter_crash(back);
                self.abandoned = true;
            }
            ResyncFault::Disconnect => {
                w.count(kind);
                if let Some(s) = w.session.as_mut() {
                    s.to_mirror.queue.clear();
                    s.to_primary.queue.clear();
                }
                w.end_mirror_side("disconnect during a resync")?;
            }
            ResyncFault::MirrorFsyncError => {
                w.nodes[b].data.fail_next_sync();
                on_disk(w, b);
            }
            ResyncFault::MirrorDiskFull => {
                w.nodes[b].data.no_space_next();
                on_disk(w, b);
            }
            // The next change-log write that clears entries loses power.
            ResyncFault::CrashPrimaryClearing => on_disk(w, a),
        }
        Ok(())
    }
}

/// As the runtime maps it (the simulator keeps no local error to hand back).
fn error_of(f: Failure) -> Error {
    crate::exec::primary::error_of(f, &mut Extras::default())
}

impl ResyncLink for SimLink<'_> {
    fn now_ms(&self) -> u64 {
        self.w.now
    }
    fn pause(&mut self, ms: u64) {
        if let Err(f) = self.advance(ms) {
            self.failure.get_or_insert(f);
        }
    }
    fn block_size(&self) -> u32 {
        self.w.cfg.block_size
    }
    fn filespace_count(&self) -> u16 {
        self.w.cfg.filespaces
    }
    fn change_set(&mut self, full: bool) -> EResult<ChangeSet> {
        self.enter(Step::ChangeSet)?;
        self.step(ResyncStep::Plan { full }, None)?;
        Ok(self.w.nodes[self.a].log.as_ref().map(|l| l.resync_set()).unwrap_or_default())
    }
    fn redo(&mut self) -> EResult<ChangeSet> {
        match self.step(ResyncStep::Redo, None)? {
            Reply::Redo(set) => Ok(set),
            other => Err(Error::Rejected(format!("redo answered {other:?}"))),
        }
    }
    fn renames_at(&mut self) -> u64 {
        self.w.nodes[self.a].log.as_ref().map_or(0, |l| l.rename_position())
    }
    fn renames_since(&mut self, pos: u64) -> Option<Vec<crate::core::resync::Renamed>> {
        self.w.nodes[self.a].log.as_ref().and_then(|l| l.renames_since(pos))
    }
    fn owe(&mut self, children: &[(FsPath, EntryKind)]) -> EResult<()> {
        self.gone()?;
        let Some(log) = self.w.nodes[self.a].log.clone() else {
            return Err(Error::Rejected("no change-log".into()));
        };
        let data = self.w.nodes[self.a].data.clone();
        let r = log.owe_children(data.as_ref(), children);
        if self.w.nodes[self.a].log_io.power_lost() {
            self.w.drain_fired(self.a);
            if let Err(f) = self.w.crash_node(self.a) {
                return Err(self.stash(f));
            }
            return Err(Error::Closed("the primary lost power recording a walk".into()));
        }
        Ok(r?)
    }
    fn hold(&mut self, ms: u64) -> EResult<()> {
        self.step(ResyncStep::Hold { ms }, None).map(|_| ())
    }
    fn walked(&mut self) {
        let _ = self.step(ResyncStep::Walked, None);
    }
    fn entry_kind(&mut self, p: &FsPath) -> EResult<Option<EntryKind>> {
        self.gone()?;
        Ok(self.w.nodes[self.a].data.entry_kind(p)?)
    }
    fn reconcile(&mut self, fs: u16, path: Option<&RelPath>, prune: bool) -> EResult<LocalEntry> {
        self.enter(Step::Reconcile)?;
        let op = Op::Resync {
            bound: Bound::Resync(self.attachment),
            step: ResyncStep::Reconcile { fs, path: path.cloned(), prune },
        };
        self.step_at = None;
        let (_, x) = self.call(op, Extras::default(), None)?;
        self.step_at = x.renames_at;
        x.entry.ok_or_else(|| Error::Rejected("a reconcile left no entry".into()))
    }
    fn copy(&mut self, p: &FsPath, first: u64, count: u64, ahead: u64) -> EResult<u64> {
        self.enter(Step::Copy)?;
        self.step_at = None;
        let op = Op::Resync {
            bound: Bound::Resync(self.attachment),
            step: ResyncStep::Copy { file: p.clone(), first, count, ahead },
        };
        match self.call(op, Extras::default(), None)? {
            (Reply::Bytes(n), x) => {
                self.step_at = x.renames_at;
                Ok(n)
            }
            (other, _) => Err(Error::Rejected(format!("a copy answered {other:?}"))),
        }
    }
    fn step_renames_at(&mut self) -> Option<u64> {
        self.step_at.take()
    }
    fn hashes(
        &mut self,
        p: &FsPath,
        first: u64,
        count: u32,
        timeout: Duration,
    ) -> EResult<Option<(Vec<u64>, Vec<u64>)>> {
        self.enter(Step::Hashes)?;
        let extras = Extras { pick: Some(Box::new(move |_| (first, count))), ..Extras::default() };
        let op = Op::QueueHashes { bound: Bound::Resync(self.attachment), file: p.clone() };
        let (reply, mut x) = self.call(op, extras, None)?;
        let seq = match reply {
            Reply::MaybeSeq(None) => return Ok(None),
            Reply::Seq(s) => s,
            other => return Err(Error::Rejected(format!("a hash request answered {other:?}"))),
        };
        let local = x.hashes.take().map(|(_, l, _, _)| l).unwrap_or_default();
        self.call(Op::Send, Extras::default(), None)?;
        match self.call(Op::AwaitReply { seq }, Extras::default(), Some(timeout.as_millis() as u64))? {
            (Reply::Hashes(remote), _) => Ok(Some((local, remote))),
            (other, _) => Err(Error::Rejected(format!("#{seq} answered {other:?}"))),
        }
    }
    fn send(&mut self) {
        let _ = self.call(Op::Send, Extras::default(), None);
    }
    fn check(&mut self) -> EResult<()> {
        self.gone()?;
        let ok = self.w.nodes[self.a]
            .primary
            .as_ref()
            .is_some_and(|s| s.engine.resyncing() && s.engine.attachment() == self.attachment);
        if ok {
            Ok(())
        } else {
            Err(Error::MirrorLost("the mirror was lost during the resync".into()))
        }
    }
    fn flush(&mut self, p: &FsPath) -> EResult<Option<u64>> {
        self.enter(Step::Flush)?;
        match self.step(ResyncStep::Flush { file: p.clone() }, None)? {
            Reply::MaybeSeq(s) => Ok(s),
            other => Err(Error::Rejected(format!("a flush answered {other:?}"))),
        }
    }
    fn checkpoint(
        &mut self,
        synced: u64,
        flushed: &BTreeSet<FsPath>,
        blocks: &BTreeMap<FsPath, BTreeSet<u64>>,
        paths: &[FsPath],
        as_of: u64,
        timeout: Duration,
    ) -> EResult<()> {
        self.enter(Step::Checkpoint)?;
        let step = ResyncStep::Checkpoint {
            synced,
            flushed: flushed.clone(),
            blocks: blocks.clone(),
            paths: paths.to_vec(),
            as_of,
        };
        self.step(step, Some(timeout.as_millis() as u64))?;
        // What a checkpoint cleared is durable on both sides: check it.
        if let Err(f) = self.w.check_live(self.a, self.b) {
            return Err(self.stash(f));
        }
        Ok(())
    }
    fn finish(&mut self, synced: Option<u64>, flushed: &BTreeSet<FsPath>, timeout: Duration) -> EResult<bool> {
        self.enter(Step::Finish)?;
        match self.step(ResyncStep::Finish { synced, flushed: flushed.clone() }, Some(timeout.as_millis() as u64))? {
            Reply::Cleared(c) => {
                if let Err(f) = self.w.check_live(self.a, self.b) {
                    return Err(self.stash(f));
                }
                Ok(c)
            }
            other => Err(Error::Rejected(format!("a finish answered {other:?}"))),
        }
    }
}

impl World {
    /// While a resync runs, writers aim at the blocks it copies about one
    /// call in three, so a copy and a newer write of the same block really
    /// meet in the stream (rule 6).
    pub(super) fn hammer(&mut self) -> Option<super::workload::OpSpec> {
        use super::workload::OpSpec;
        if self.cfg.rename_storm && self.rng.gen_bool(0.5) {
            // Renames of what the resync still owes, while it runs.
            let fs = self.rng.gen_range(0..self.cfg.filespaces);
            return self.generate_rename(fs);
        }
        if self.resync.targets.is_empty() || !self.rng.gen_bool(0.3) {
            return None;
        }
        let (p, block) = self.resync.targets[self.rng.gen_range(0..self.resync.targets.len())].clone();
        Some(match self.model.files.get(&p) {
            None => return None,
            Some(FileKind::Relation) => OpSpec::Block { p, block, extend: false, fill: self.rng.gen() },
            _ => {
                let offset = block * self.bs + self.rng.gen_range(0..self.bs);
                let count = self.rng.gen_range(1..3000);
                OpSpec::write_at(p, offset, (0..count).map(|_| self.rng.gen()).collect())
            }
        })
    }

    /// The resync's fault fired (counted by [`World::count`]).
    pub(super) fn resync_fault_fired(&mut self) {
        if let Some(p) = self.resync.fault.as_mut() {
            p.fired = true;
        }
        if let Some(step) = self.resync.step {
            self.outcome(step.outcome());
        }
    }

    /// A power loss armed inside the change-log write that clears entries.
    pub(super) fn arm_clearing_crash(&mut self, n: usize) -> bool {
        let kind = FaultKind::Resync(ResyncFault::CrashPrimaryClearing);
        // Only while it is armed: an armed fault expires like any other.
        let due =
            self.resync.fault.is_some_and(|p| p.fault == ResyncFault::CrashPrimaryClearing && p.on_disk && !p.fired)
                && self.armed.is_some_and(|a| a.kind == kind && a.node == n);
        if due {
            let at = self.rng.gen_range(0..5);
            self.nodes[n].log_io.lose_power_in(at);
        }
        due
    }

    /// `filerep recover`: the pair to `r` (the arbiter stores it first),
    /// the acting primary `a` connects to its mirror and takes it back.
    /// `Ok(None)`: it could not (the caller heals and tries again).
    fn take_back(&mut self, a: usize) -> Result<Option<u64>, SimFailure> {
        let b = 1 - a;
        if !matches!(self.nodes[b].role, Role::Mirror { .. }) {
            return Ok(None);
        }
        let Some(side) = self.nodes[a].primary.as_ref() else { return Ok(None) };
        if side.engine.mode() != Mode::ChangeTracking {
            return Ok(None);
        }
        let epoch = side.engine.epoch() + 1;
        let dbid = self.nodes[b].dbid;
        if !self.pair.segments.iter().any(|s| s.dbid == dbid && s.up) {
            self.arbiter_apply(Event::SegmentUp { dbid })?;
        }
        if !self.recover_steps(b)? {
            return Ok(None);
        }
        self.arbiter_apply(Event::ResyncStarted)?;
        let gen = self.pair.generation;
        if let Err(why) = self.open_session(a, b, gen, epoch) {
            tracing::debug!(seed = self.seed, why, "sim: the mirror refused to be taken back");
            return Ok(None);
        }
        let Some(id) = self.submit(a, Op::Attach, CallOwner::Link, Extras::default()) else { return Ok(None) };
        match self.run_call(id, 10_000)? {
            Some((Ok(_), _)) => {
                self.outcome("mirror taken back for a resync");
                Ok(Some(self.nodes[a].primary.as_ref().map_or(0, |s| s.engine.attachment())))
            }
            _ => Ok(None),
        }
    }

    /// The steps of `filerep recover` as the core's [`crate::core::arbiter::recover`]
    /// says them, with mirror `b` probed before each, up to the resync:
    /// the operator asks for an incremental resync, and asks again with
    /// `-F` when refused because the mirror faulted, as the refusal says.
    /// `false`: refused (the caller heals and tries again).
    fn recover_steps(&mut self, b: usize) -> Result<bool, SimFailure> {
        let mut full = false;
        let mut done = Vec::new();
        loop {
            let seen = self.seen(b);
            let step = crate::core::arbiter::recover(&self.pair, seen.as_ref(), full, self.cfg.bug);
            if done.contains(&step) {
                // As the arbiter: refused, the next recover tries again.
                tracing::debug!(
                    seed = self.seed,
                    ?step,
                    "sim: recover asked for a step it already took or was refused"
                );
                return Ok(false);
            }
            match &step {
                Recover::Refused(_) if !full && (seen.is_some_and(|s| s.faulted) || self.pair.full_resync_owed) => {
                    full = true
                }
                Recover::Refused(why) => {
                    tracing::debug!(seed = self.seed, why, "sim: recover refused");
                    return Ok(false);
                }
                Recover::Restore => return Ok(false),
                Recover::RebuildMirror { .. } => {
                    // It forgets its fault; every block is shipped again,
                    // whatever its page cache shows (nothing is compared).
                    // The catalog owes the full resync until one completes.
                    self.arbiter_apply(Event::MirrorRebuilt)?;
                    self.outcome("an operator rebuilt a faulted mirror (full resync)");
                    self.nodes[b].mirror_fault = false;
                    if let Role::Mirror { faulted, .. } = &mut self.nodes[b].role {
                        *faulted = false;
                    }
                }
                Recover::HandOver { from, to } => {
                    let (f, t) = (self.node_of(*from)?, self.node_of(*to)?);
                    self.hand_over(f, t)?;
                }
                Recover::Resync { full } => {
                    self.resync.full |= *full;
                    return Ok(true);
                }
            }
            done.push(step);
        }
    }

    /// Repair a pair that is not down with the resync engine, and go on
    /// from how it ended.
    pub(super) fn resync_repair(&mut self, a: usize) -> Result<(), SimFailure> {
        if self.report.resync.runs == 0 && self.rng.gen_bool(0.5) {
            let fault = ResyncFault::ALL[self.rng.gen_range(0..ResyncFault::ALL.len())];
            let delay = self.rng.gen_range(0..8);
            let at_call = self.rng.gen_range(1..40);
            self.resync.fault = Some(Pending { fault, at_call, delay, fire_at: None, on_disk: false, fired: false });
        }
        let resumed = self.nodes[a].primary.as_ref().filter(|s| s.engine.resyncing()).map(|s| s.engine.attachment());
        let attachment = match resumed {
            Some(att) => Some(att),
            None => self.take_back(a)?,
        };
        let Some(attachment) = attachment else {
            self.report.resync.runs += 1;
            if self.report.resync.runs > 20 {
                return Err(
                    self.fail(format!("resync liveness: the mirror could not be taken back: {}", self.describe()))
                );
            }
            return self.check_and_repair();
        };
        let result = self.run_engine(a, attachment)?;
        let pending = self.resync.fault.take();
        // Whatever did not fire goes: the repair after it runs without faults.
        self.armed = None;
        for node in &self.nodes {
            node.data.disarm();
            node.log_io.disarm();
        }
        let fired = pending.is_some_and(|p| p.fired);
        if pending.is_some() && !fired {
            self.outcome("resync fault armed, the resync ended first");
        }
        self.report.resync.runs += 1;
        if self.report.resync.runs > 20 {
            return Err(
                self.fail(format!("resync liveness: 20 resync runs did not repair the pair: {}", self.describe()))
            );
        }
        match (result, fired) {
            (Ok(r), false) => {
                self.count_report(&r);
                self.resync_completed(a)
            }
            (Ok(r), true) => {
                self.count_report(&r);
                let streaming = self.nodes[a]
                    .primary
                    .as_ref()
                    .is_some_and(|s| s.engine.mode() == Mode::Streaming && !s.engine.resyncing());
                if streaming {
                    // Its fault missed the stream (the recover tool went
                    // away as it finished): the arbiter hears it drained.
                    self.outcome("resync completed, its fault left the stream up");
                    return self.resync_completed(a);
                }
                self.outcome("resync completed, then its fault hit the pair");
                self.after_interruption()
            }
            (Err(e), true) => {
                tracing::debug!(seed = self.seed, step = self.step, error = %e, "sim: resync interrupted");
                self.report.resync.interrupted += 1;
                self.outcome("resync interrupted by its fault");
                self.after_interruption()
            }
            (Err(e), false) => match self.resync.refusal.take() {
                Some(why) => Err(self.fail(format!(
                    "resync liveness: the mirror refused a call made during the resync ({why}); the resync \
                     cannot finish: {e}"
                ))),
                None => Err(self.fail(format!("the resync failed without a fault: {e} ({})", self.describe()))),
            },
        }
    }

    fn count_report(&mut self, r: &ResyncReport) {
        let t = &mut self.report.resync;
        t.completed += 1;
        t.paths += r.paths;
        t.blocks += r.blocks;
        t.bytes += r.bytes;
        t.compared_equal += r.compared_equal;
        t.extra_passes += r.extra_passes;
        t.held_passes += r.held_passes;
    }

    /// One run of the engine on `a`'s stream, with writers going on.
    fn run_engine(&mut self, a: usize, attachment: u64) -> Result<EResult<ResyncReport>, SimFailure> {
        // A full resync now and then, and after an operator's rebuild of a
        // faulted mirror: every path owed, renames included.
        let full = std::mem::take(&mut self.resync.full) || self.rng.gen_bool(0.1);
        // Small, so checkpoints (Cleared records) happen within a run.
        let checkpoint_bytes = Some(self.rng.gen_range(1..=16) * 16 * 1024);
        // As `filerep recover`, which takes -F or --compare, not both: a
        // rebuild ships every block, whatever the mirror's page cache shows.
        let compare = self.rng.gen_bool(0.25) && !full;
        let opts = ResyncOptions {
            full,
            max_rate: None,
            finish_timeout: Some(Duration::from_millis(RESYNC_WAIT_MS)),
            checkpoint_bytes,
            compare,
            planted: self.cfg.bug,
        };
        let extra = self.rng.gen_range(10..=80);
        self.op_limit = self.ops.len() + extra;
        self.writers_paused = false;
        tracing::debug!(seed = self.seed, step = self.step, ?opts, fault = ?self.resync.fault, "sim: resync starts");
        self.resync.targets = self.nodes[a]
            .log
            .as_ref()
            .map(|l| l.resync_set())
            .iter()
            .flat_map(|plan| {
                let exact = plan.blocks.iter().flat_map(|(f, bs)| bs.iter().map(move |b| (f.clone(), *b)));
                let extents =
                    plan.extents.iter().flat_map(|(f, es)| es.iter().map(move |e| (f.clone(), e * EXTENT_BLOCKS)));
                exact.chain(extents).collect::<Vec<_>>()
            })
            .collect();
        self.resync.running = true;
        let deadline = self.step + 500_000;
        let mut link = SimLink {
            w: self,
            a,
            b: 1 - a,
            attachment,
            step_at: None,
            failure: None,
            calls: 0,
            abandoned: false,
            deadline,
        };
        let progress = crate::core::resync::Progress::default();
        let result = crate::core::resync::run_on(&mut link, &opts, &progress);
        let failure = link.failure.take();
        self.resync.running = false;
        self.resync.step = None;
        self.resync.targets.clear();
        // Writers finish what they started and issue nothing new.
        self.op_limit = self.ops.len();
        match failure {
            Some(f) => Err(f),
            None => Ok(result),
        }
    }

    /// The engine completed: the arbiter hears the primary streams, the
    /// pair is synchronized; the stream ends in order and both segments
    /// must be identical (invariant 4).
    fn resync_completed(&mut self, a: usize) -> Result<(), SimFailure> {
        let b = 1 - a;
        self.outcome("resync completed");
        self.heal()?;
        // The arbiter's next round hears the primary streams with its change-log drained.
        let until = self.now + 4 * super::world::PROBE_EVERY_MS;
        while self.pair.mode != PairMode::Synchronized && self.now < until {
            self.step += 1;
            self.tick()?;
            self.now += 1;
        }
        if self.pair.mode != PairMode::Synchronized {
            return Err(self.fail(format!("resync: the pair is not synchronized after it: {:?}", self.pair)));
        }
        if self.node_of(self.pair.acting_primary().dbid)? != a {
            return Err(self.fail("resync: the acting primary changed without a fault"));
        }
        self.check_acked(a)?;
        self.orderly_shutdown(a)?;
        self.check_identical(a, b)?;
        self.lost_power = [false; 2];
        Ok(())
    }

    /// After the resync's fault: heal, check invariants 1 and 3 again, and
    /// repair again.
    fn after_interruption(&mut self) -> Result<(), SimFailure> {
        self.heal()?;
        let live = self.nodes.iter().position(|n| n.primary.as_ref().is_some_and(|s| s.engine.resyncing()));
        match live {
            // Only the recover tool went away: the stream is up, the next
            // recover runs the resync again on it.
            Some(a) => {
                self.check_acked(a)?;
                self.check_live(a, 1 - a)?;
                self.outcome("resync resumed on the same stream");
                self.resync_repair(a)
            }
            None => {
                if !self.pair.down {
                    self.outcome("resync restarted after change tracking");
                }
                self.check_and_repair()
            }
        }
    }

    /// Invariant 3 with the stream up: the primary's durable image against
    /// its change-log alone (a crash loses the window), its live image
    /// against the change-log and the window.
    pub(super) fn check_live(&mut self, a: usize, b: usize) -> Result<(), SimFailure> {
        let (log, with_window) = self.change_set_of(a)?;
        self.check_tracked(&log, &with_window, a, b)
    }
}
