//! The repair of a pair that is not down: the real resync engine
//! ([`crate::runtime::resync::run_on`]) drives the acting primary through
//! [`SimLink`], the simulator's [`ResyncLink`], on the virtual clock and
//! through the schedule's own stream (the same `PrimaryStream`, links,
//! `MirrorSession`, `Applier`, sync jobs, acknowledgements, window and
//! activity-log entries as the writers' calls), while the writers keep
//! issuing calls on the same files. Each step of the engine lets the world
//! run a few virtual milliseconds, so copies and writes interleave as the
//! stream orders them; waiting for the mirror (hashes, checkpoints, the
//! finish) runs the world until the answer comes, or the mirror is lost.
//!
//! Half the schedules arm one [`ResyncFault`] at a random call of the
//! engine; it fires a few milliseconds later, wherever the resync then is.
//! After it: heal, check invariants 1 and 3 again (with the stream still up
//! when only the recover tool went away), resync again, then invariant 4.

use super::*;
use crate::error::{Error, Result as EResult};
use crate::io::disk::EntryKind;
use crate::runtime::primary::LocalEntry;
use crate::runtime::resync::{ResyncLink, ResyncOptions, ResyncReport};
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
    /// Armed at this call of the engine on the link (0: not chosen yet)...
    at_call: u64,
    /// ...to fire this many virtual ms later.
    delay: u64,
    fire_at: Option<u64>,
    /// A disk fault set on its disk, waiting for the I/O that trips it.
    on_disk: bool,
    fired: bool,
}

/// The simulator's end of the resync: the acting primary `a` streaming to
/// `b` in session `session`, modelled after `Primary`'s resync methods.
struct SimLink<'a> {
    sim: &'a mut FaultSim,
    a: usize,
    b: usize,
    session: u64,
    /// An invariant or model failure met while the engine ran; the engine
    /// sees an error and stops, and the schedule fails with this.
    failure: Option<SimFailure>,
    calls: u64,
    /// The recover tool went away: every later step fails.
    abandoned: bool,
    /// Steps (virtual ms) the whole run may take.
    deadline: u64,
    /// The last flush queued for each file, until a checkpoint settles it.
    flushes: BTreeMap<FsPath, u64>,
}

impl SimLink<'_> {
    fn stash(&mut self, f: SimFailure) -> Error {
        let m = f.message.clone();
        self.failure.get_or_insert(f);
        Error::Rejected(format!("simulator: {m}"))
    }

    /// The runtime's `usable()` and `check_open()`, and the stream's loss:
    /// the engine's calls fail once the pair left streaming or the session
    /// it started on ended (`Primary` would have lost its mirror).
    fn usable(&self) -> EResult<()> {
        if self.abandoned {
            return Err(Error::Closed("the recover tool driving the resync went away".into()));
        }
        match &self.sim.nodes[self.a].role {
            Role::Primary { mode: Mode::Streaming, .. } => {}
            Role::Primary { mode, .. } => return Err(Error::MirrorLost(format!("the pair left streaming: {mode:?}"))),
            other => return Err(Error::Closed(format!("the primary is gone: {other:?}"))),
        }
        match &self.sim.session {
            Some(s) if s.id == self.session && s.primary == self.a && s.primary_on => Ok(()),
            _ => Err(Error::MirrorLost("the stream to the mirror ended".into())),
        }
    }

    /// Let the world run `ticks` virtual ms: writers, stream, mirror,
    /// arbiter, and the armed fault when its moment comes.
    fn advance(&mut self, ticks: u64) -> Result<(), SimFailure> {
        for _ in 0..ticks {
            self.sim.step += 1;
            if self.sim.step > self.deadline {
                return Err(self.sim.fail("the resync made no progress"));
            }
            self.fire_due()?;
            let before = self.sim.ops.len();
            self.sim.writers_step()?;
            self.sim.report.resync.concurrent_calls += (self.sim.ops.len() - before) as u64;
            self.sim.tick()?;
            self.sim.now += 1;
        }
        self.fire_due()
    }

    /// Every engine call: count it, arm the fault at its call, let the world run a little.
    fn enter(&mut self, step: Step) -> EResult<()> {
        self.sim.resync_step = Some(step);
        self.calls += 1;
        let now = self.sim.now;
        if let Some(p) = self.sim.resync_fault.as_mut() {
            if p.fire_at.is_none() && p.at_call > 0 && self.calls >= p.at_call {
                p.fire_at = Some(now + p.delay);
            }
        }
        let ticks = self.sim.rng.gen_range(0..3);
        self.advance(ticks).map_err(|f| self.stash(f))?;
        tracing::trace!(seed = self.sim.seed, step = self.sim.step, call = self.calls, ?step, "sim: resync step");
        self.usable()
    }

    /// Run the world until `done` holds for the session, or the stream is
    /// lost (the runtime's `wait_mark`, then its check of `lost`).
    fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&Session) -> bool) -> EResult<()> {
        let until = self.sim.now + (timeout.as_millis() as u64).min(RESYNC_WAIT_MS);
        loop {
            self.usable()?;
            if self.sim.session.as_ref().is_some_and(&done) {
                return Ok(());
            }
            if self.sim.now >= until {
                return Err(Error::MirrorLost(format!("no {what} in time")));
            }
            self.advance(1).map_err(|f| self.stash(f))?;
        }
    }

    fn fire_due(&mut self) -> Result<(), SimFailure> {
        let Some(p) = self.sim.resync_fault else { return Ok(()) };
        if p.fired || p.on_disk || p.fire_at.is_none_or(|t| self.sim.now < t) {
            return Ok(());
        }
        let (a, b) = (self.a, self.b);
        let kind = FaultKind::Resync(p.fault);
        tracing::debug!(seed = self.sim.seed, step = self.sim.step, fault = %kind, "sim: resync fault due");
        let sim = &mut *self.sim;
        let on_disk = |sim: &mut FaultSim, node: usize| {
            sim.armed = Some(Armed { kind, node, until: sim.now + FAULT_EXPIRES_MS });
            if let Some(p) = sim.resync_fault.as_mut() {
                p.on_disk = true;
            }
        };
        match p.fault {
            ResyncFault::CrashPrimary => {
                sim.count(kind);
                sim.crash_node(a)?;
            }
            ResyncFault::CrashMirror => {
                sim.count(kind);
                sim.crash_node(b)?;
            }
            ResyncFault::CrashArbiter => {
                sim.count(kind);
                sim.arbiter_up = false;
                sim.arbiter_back_at = sim.now + sim.rng.gen_range(30..300);
                self.abandoned = true;
            }
            ResyncFault::Disconnect => {
                sim.count(kind);
                if let Some(s) = sim.session.as_mut() {
                    s.to_mirror.queue.clear();
                    s.to_primary.queue.clear();
                }
                sim.end_mirror_side(true)?;
            }
            ResyncFault::MirrorFsyncError => {
                sim.nodes[b].data.fail_next_sync();
                on_disk(sim, b);
            }
            ResyncFault::MirrorDiskFull => {
                sim.nodes[b].data.no_space_next();
                on_disk(sim, b);
            }
            // The next change-log write that clears entries loses power.
            ResyncFault::CrashPrimaryClearing => on_disk(sim, a),
        }
        Ok(())
    }

    /// Arm a power loss inside the change-log write about to clear entries
    /// (`mutations`: how many mutating disk calls it makes), if that fault is due.
    fn arm_clearing_crash(&mut self, mutations: u32) -> bool {
        let due = self
            .sim
            .resync_fault
            .is_some_and(|p| p.fault == ResyncFault::CrashPrimaryClearing && p.on_disk && !p.fired);
        if due {
            let n = self.sim.rng.gen_range(0..mutations);
            self.sim.nodes[self.a].log_io.lose_power_in(n);
        }
        due
    }

    fn disarm_clearing_crash(&mut self, armed: bool) {
        if armed && !matches!(self.sim.nodes[self.a].role, Role::Down { .. }) {
            // Nothing was written (nothing to clear): the next clear gets it.
            self.sim.nodes[self.a].log_io.disarm_power();
        }
    }

    /// A change-log call on the primary; an error if it failed or the primary crashed in it.
    fn log_call<F>(&mut self, f: F) -> EResult<()>
    where
        F: FnOnce(&ChangeLog) -> Result<(), ChangeLogError>,
    {
        match self.sim.log_call(self.a, f) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Closed("the primary's change-log write failed".into())),
            Err(f) => Err(self.stash(f)),
        }
    }

    /// `Inner::prune_window`: what the resync made durable up to `seq`
    /// (its files flushed; directory entries go with every sync).
    fn prune_window(&mut self, seq: u64, flushed: &BTreeSet<FsPath>) {
        if let Some(s) = self.sim.session.as_mut() {
            s.window.retain(|(s, c)| {
                *s > seq
                    || match c {
                        Change::Touched { path, subtree } => !(*subtree || flushed.contains(path)),
                        Change::Blocks { path, .. } => !flushed.contains(path),
                    }
            });
        }
    }

    /// `Inner::sync_resynced`: before entries are cleared, this side's copy
    /// of what they name is made durable too (the files, and every
    /// directory changed since the last local sync): the mirror having it
    /// durably says nothing of this host's page cache, where changes made
    /// in change tracking may still sit.
    fn sync_local<'p>(&mut self, files: impl Iterator<Item = &'p FsPath>) -> EResult<()> {
        if self.sim.cfg.bug == Some(PlantedBug::ResyncClearWithoutLocalSync) {
            return Ok(());
        }
        let a = self.a;
        let disk = self.sim.nodes[a].data.clone();
        let fired = disk.fired_total();
        let files: BTreeSet<&FsPath> = files.collect();
        let r: DiskResult<()> = (|| {
            for p in files {
                match disk.open(p, OpenMode::Existing) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind == DiskErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            for d in &self.sim.nodes[a].dirty_dirs {
                d.sync_data()?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.sim.nodes[a].dirty_dirs.clear();
                Ok(())
            }
            Err(e) if disk.fired_total() > fired => {
                // Rule 8: the segment faults.
                self.sim.outcome("primary faulted");
                self.sim.stop_primary(a, Mode::Faulted(format!("local sync before a resync checkpoint: {e}")));
                Err(Error::Faulted(e.to_string()))
            }
            Err(e) => Err(self.stash(self.sim.fail(format!("resync: local sync on the primary: {e}")))),
        }
    }

    /// `ActivityLog::drop_settled`: extents of a flushed file with nothing
    /// shipped after that file's own flush are durable on both sides (the
    /// caller synced them here; the mirror synced that flush).
    fn drop_settled(&mut self, flushed: &BTreeSet<FsPath>) {
        let flushes: BTreeMap<FsPath, u64> =
            flushed.iter().filter_map(|f| self.flushes.remove(f).map(|seq| (f.clone(), seq))).collect();
        if self.sim.cfg.bug == Some(PlantedBug::ResyncClearWithoutLocalSync) {
            return;
        }
        self.sim.nodes[self.a].hot.retain(|k, s| match k {
            Hot::Extent(f, _) => flushes.get(f).is_none_or(|seq| *s > *seq),
            Hot::Path(_) => true,
        });
    }

    /// `ActivityLog::retire_all` after the final clear: entries the mirror
    /// has durably go, once this host has made its own writes durable.
    fn retire_settled(&mut self) -> EResult<()> {
        let a = self.a;
        let durable = self.sim.session.as_ref().map_or(0, |s| s.stream.acked().durable);
        let done: Vec<Hot> =
            self.sim.nodes[a].hot.iter().filter(|(_, s)| **s <= durable).map(|(k, _)| k.clone()).collect();
        if done.is_empty() {
            return Ok(());
        }
        if self.sim.cfg.bug != Some(PlantedBug::DropActivityWithoutLocalSync) {
            match self.sim.checkpoint(a) {
                Ok(true) => {}
                Ok(false) => return Err(Error::Faulted("the primary's checkpoint failed".into())),
                Err(f) => return Err(self.stash(f)),
            }
        }
        let (mut extents, mut touched) = (BTreeMap::<FsPath, BTreeSet<u64>>::new(), BTreeSet::new());
        for k in &done {
            match k {
                Hot::Extent(f, e) => {
                    extents.entry(f.clone()).or_default().insert(*e);
                }
                Hot::Path(p) => {
                    touched.insert(p.clone());
                }
            }
        }
        self.log_call(|log| log.retire_active(&extents, &touched))?;
        for k in &done {
            self.sim.nodes[a].hot.remove(k);
        }
        Ok(())
    }

    /// The activity log's live entries, to keep when entries are cleared
    /// (none with [`PlantedBug::ResyncClearDropsActivity`]: then the table
    /// forgets them too, as the runtime did).
    fn hot_entries(&mut self) -> (BTreeMap<FsPath, BTreeSet<u64>>, BTreeSet<FsPath>) {
        let (mut extents, mut touched) = (BTreeMap::<FsPath, BTreeSet<u64>>::new(), BTreeSet::new());
        if self.sim.cfg.bug == Some(PlantedBug::ResyncClearDropsActivity) {
            return (extents, touched);
        }
        for k in self.sim.nodes[self.a].hot.keys() {
            match k {
                Hot::Extent(f, e) => {
                    extents.entry(f.clone()).or_default().insert(*e);
                }
                Hot::Path(p) => {
                    touched.insert(p.clone());
                }
            }
        }
        (extents, touched)
    }

    fn open_if_present(&self, p: &FsPath) -> EResult<Option<Arc<dyn DiskFile>>> {
        match self.sim.nodes[self.a].data.open(p, OpenMode::Existing) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind == DiskErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn ship_op(&mut self, p: &FsPath, h: Header, body: Bytes) -> EResult<u64> {
        self.sim.ship_op(p, h, body, false).map_err(|f| self.stash(f))
    }
}

impl ResyncLink for SimLink<'_> {
    fn block_size(&self) -> u32 {
        self.sim.cfg.block_size
    }

    fn filespace_count(&self) -> u16 {
        self.sim.cfg.filespaces
    }

    fn change_set(&mut self, full: bool) -> EResult<ChangeSet> {
        self.sim.resync_step = Some(Step::ChangeSet);
        self.usable()?;
        self.sim.resync_full = full;
        let set = match self.sim.nodes[self.a].log.as_ref() {
            Some(log) => log.resync_set(),
            None => return Err(Error::InvalidArgument("a resync needs change tracking".into())),
        };
        // The fault's call: somewhere in the run, which makes about one call
        // per two paths or files (many lie in trees walked whole) and one
        // per 64 blocks (copies are batched).
        if let Some(p) = self.sim.resync_fault {
            if p.at_call == 0 {
                let blocks: usize = set.blocks.values().map(|b| b.len()).sum::<usize>()
                    + set.extents.values().map(|e| e.len() * EXTENT_BLOCKS as usize).sum::<usize>();
                let files = set.blocks.len() + set.extents.len();
                let calls = ((set.touched.len() + files) / 2 + blocks / 64 + 1) as u64;
                let at = self.sim.rng.gen_range(1..=calls);
                if let Some(p) = self.sim.resync_fault.as_mut() {
                    p.at_call = at;
                }
            }
        }
        Ok(set)
    }

    fn entry_kind(&mut self, p: &FsPath) -> EResult<Option<EntryKind>> {
        Ok(self.sim.nodes[self.a].data.entry_kind(p)?)
    }

    fn reconcile(&mut self, fs: u16, path: Option<&RelPath>, prune: bool) -> EResult<LocalEntry> {
        self.enter(Step::Reconcile)?;
        // Looked at and queued in one step: no call runs in between (the
        // runtime holds the path's stripe and the namespace lock).
        let disk = self.sim.nodes[self.a].data.clone();
        let (h, body, local) = crate::runtime::primary::reconcile_frame(disk.as_ref(), fs, path, prune)?;
        let h = match self.sim.stream() {
            Ok(s) => s.stream.operation(h),
            Err(f) => return Err(self.stash(f)),
        };
        self.sim.ship(h, body, false);
        tracing::trace!(seed = self.sim.seed, seq = h.seq, fs, ?path, ?local, "sim: resync reconcile");
        // In the window like the runtime's, not in the activity log: the
        // change-log names the path until a checkpoint clears it.
        if let (Some(p), Some(s)) = (path, self.sim.session.as_mut()) {
            s.window.push_back((h.seq, Change::Touched { path: FsPath::new(fs, p.clone()), subtree: true }));
        }
        Ok(local)
    }

    fn copy(&mut self, p: &FsPath, first: u64, count: u64) -> EResult<u64> {
        self.enter(Step::Copy)?;
        let bs = self.sim.bs;
        let Some(file) = self.open_if_present(p)? else { return Ok(0) };
        let Some((offset, buf)) = crate::runtime::resync::read_copy(file.as_ref(), first, count, bs)? else {
            return Ok(0);
        };
        let n = buf.len();
        if self.sim.cfg.bug == Some(PlantedBug::ResyncCopyWithoutLock) {
            // The file is let go between the read and the queueing: writes
            // of the same blocks may be queued before this older copy.
            let ticks = self.sim.rng.gen_range(2..12);
            self.advance(ticks).map_err(|f| self.stash(f))?;
            self.usable()?;
            if self.open_if_present(p)?.is_none() {
                return Ok(0);
            }
        }
        let last = first + (n as u64).div_ceil(bs) - 1;
        // Rule 5: covered before it is shipped, like every streamed write.
        if self.sim.cfg.bug != Some(PlantedBug::SkipActivityCover) {
            match self.sim.cover_blocks(self.a, p, first, last) {
                Ok(true) => {}
                Ok(false) => return Err(Error::Closed("the activity log could not be written".into())),
                Err(f) => return Err(self.stash(f)),
            }
            self.usable()?;
        }
        let mut h = Header::new(Kind::WriteAt);
        h.offset = offset;
        let seq = self.ship_op(p, h, Bytes::from(buf))?;
        if let Err(f) = self.sim.track(self.a, seq, Change::Blocks { path: p.clone(), first, last }) {
            return Err(self.stash(f));
        }
        Ok(n as u64)
    }

    fn hashes(
        &mut self,
        p: &FsPath,
        first: u64,
        count: u32,
        timeout: Duration,
    ) -> EResult<Option<(Vec<u64>, Vec<u64>)>> {
        self.enter(Step::Hashes)?;
        if count == 0 || count > crate::protocol::MAX_HASH_BLOCKS {
            return Err(Error::InvalidArgument(format!("{count} blocks do not fit one hash request")));
        }
        let Some(file) = self.open_if_present(p)? else { return Ok(None) };
        // Read and queued in one step, so both hashes describe the same point of the stream.
        let local = crate::runtime::resync::hash_blocks(Some(file.as_ref()), first, count, self.sim.cfg.block_size)?;
        let mut h = Header::new(Kind::HashRequest);
        h.offset = first;
        h.aux = count;
        let seq = self.ship_op(p, h, Bytes::new())?;
        if let Some(s) = self.sim.session.as_mut() {
            s.hash_wanted.insert(seq, count);
        }
        self.wait_for("hashes", timeout, |s| s.hash_answers.contains_key(&seq))?;
        let remote = self.sim.session.as_mut().and_then(|s| s.hash_answers.remove(&seq)).unwrap_or_default();
        Ok(Some((local, remote)))
    }

    /// Copies are shipped as they are queued.
    fn send(&mut self) {}

    fn check(&mut self) -> EResult<()> {
        self.usable()
    }

    fn walked(&mut self) {
        self.sim.resync_full = false;
    }

    fn redo(&mut self) -> EResult<BTreeSet<FsPath>> {
        self.usable()?;
        match self.sim.nodes[self.a].log.as_ref() {
            Some(log) => Ok(log.take_redo()),
            None => Err(Error::InvalidArgument("a resync needs change tracking".into())),
        }
    }

    fn flush(&mut self, p: &FsPath) -> EResult<Option<u64>> {
        self.enter(Step::Flush)?;
        if self.open_if_present(p)?.is_none() {
            return Ok(None);
        }
        let seq = self.ship_op(p, Header::new(Kind::Flush), Bytes::new())?;
        self.flushes.insert(p.clone(), seq);
        tracing::trace!(seed = self.sim.seed, seq, %p, "sim: resync flush");
        Ok(Some(seq))
    }

    fn checkpoint(
        &mut self,
        synced: u64,
        flushed: &BTreeSet<FsPath>,
        blocks: &BTreeMap<FsPath, BTreeSet<u64>>,
        paths: &[FsPath],
        timeout: Duration,
    ) -> EResult<()> {
        self.enter(Step::Checkpoint)?;
        // This side's copy first, while the mirror syncs (as the runtime).
        self.sync_local(flushed.iter().chain(blocks.keys()))?;
        if self.sim.cfg.bug == Some(PlantedBug::ResyncCheckpointBeforeSynced) {
            self.wait_for("applied flush", timeout, |s| s.stream.acked().applied >= synced)?;
        } else {
            self.wait_for("synced flush", timeout, |s| s.stream.acked().synced >= synced)?;
        }
        // Single-threaded, so nothing is lost between that check and this
        // clear: a loss comes after it, and records its window (newer
        // writes of these blocks included) after the Cleared records.
        // The activity log's entries stay: they cover writes streamed
        // meanwhile, which the mirror may not have durably yet. Settled
        // ones (a flushed file, nothing shipped after its flush) go.
        self.drop_settled(flushed);
        let (extents, touched) = self.hot_entries();
        tracing::trace!(
            seed = self.sim.seed,
            step = self.sim.step,
            synced,
            ?paths,
            ?blocks,
            "sim: resync checkpoint clears"
        );
        let armed = self.arm_clearing_crash(2);
        let r = self.log_call(|log| log.clear_entries_keeping(blocks, paths, &extents, &touched));
        self.disarm_clearing_crash(armed);
        r?;
        self.prune_window(synced, flushed);
        // The crucial property: what was cleared is durable on both sides,
        // so every difference is still named (by the log, or the window).
        // Checked after one checkpoint in three (and after every finish):
        // four images are copied each time.
        if !self.sim.rng.gen_bool(0.35) {
            return Ok(());
        }
        let (a, b) = (self.a, self.b);
        self.sim.check_live(a, b).map_err(|f| self.stash(f))
    }

    fn finish(&mut self, synced: Option<u64>, flushed: &BTreeSet<FsPath>, timeout: Duration) -> EResult<bool> {
        self.enter(Step::Finish)?;
        self.sync_local(flushed.iter())?;
        match synced {
            Some(seq) => self.wait_for("synced flush", timeout, |s| s.stream.acked().synced >= seq)?,
            None => {
                let last = self.sim.session.as_ref().map_or(0, |s| s.stream.last_seq());
                self.wait_for("durable stream", timeout, |s| s.stream.acked().durable >= last)?;
            }
        }
        // `ActivityLog::clear_with_log`: everything goes but the activity
        // log's live entries, which are retired later as usual.
        self.drop_settled(flushed);
        let (extents, touched) = self.hot_entries();
        let armed = self.arm_clearing_crash(5);
        let mut cleared = false;
        let r = self.log_call(|log| log.clear_keeping(&extents, &touched).map(|c| cleared = c));
        self.disarm_clearing_crash(armed);
        r?;
        if !cleared {
            // A rename owes another pass (`Primary::resync_finish`).
            return Ok(false);
        }
        // Calls are no longer flagged as catching up (`resyncing` cleared).
        if let Some(s) = self.sim.session.as_mut() {
            s.resync = false;
        }
        if self.sim.cfg.bug == Some(PlantedBug::ResyncClearDropsActivity) {
            self.sim.nodes[self.a].hot.clear();
        }
        if let Some(seq) = synced {
            self.prune_window(seq, flushed);
        }
        self.retire_settled()?;
        let (a, b) = (self.a, self.b);
        self.sim.check_live(a, b).map_err(|f| self.stash(f))?;
        Ok(true)
    }
}

impl FaultSim {
    /// While a resync runs, writers aim at the blocks it copies about one
    /// call in three, so a copy and a newer write of the same block really
    /// meet in the stream (rule 6).
    pub(super) fn hammer(&mut self) -> Option<OpSpec> {
        if self.resync_targets.is_empty() || !self.rng.gen_bool(0.3) {
            return None;
        }
        let (p, block) = self.resync_targets[self.rng.gen_range(0..self.resync_targets.len())].clone();
        Some(match self.model.files.get(&p) {
            None => return None,
            Some(FileKind::Relation) => OpSpec::Block { p, block, extend: false, fill: self.rng.gen() },
            _ => {
                let offset = block * self.bs + self.rng.gen_range(0..self.bs);
                let count = self.rng.gen_range(1..3000);
                OpSpec::WriteAt { p, offset, data: (0..count).map(|_| self.rng.gen()).collect() }
            }
        })
    }

    /// The resync's fault fired (counted by [`FaultSim::count`]).
    pub(super) fn resync_fault_fired(&mut self) {
        if let Some(p) = self.resync_fault.as_mut() {
            p.fired = true;
        }
        if let Some(step) = self.resync_step {
            self.outcome(step.outcome());
        }
    }

    /// The acting primary `a` takes its peer back as mirror
    /// (`Primary::attach_mirror`): a new stream from sequence 1, the window
    /// empty, calls streaming again (covered by the activity log) while the
    /// change-log keeps what the mirror lacks.
    fn attach(&mut self, a: usize) -> Result<(), SimFailure> {
        let b = 1 - a;
        if !matches!(self.nodes[b].role, Role::Mirror { faulted: false, .. }) {
            return Err(self.fail(format!("resync: segment {} is no mirror to take back", self.nodes[b].dbid)));
        }
        match &self.nodes[a].role {
            Role::Primary { mode: Mode::Tracking, .. } => {}
            // The stream ended in order (the mirror confirmed everything
            // durable, the window is empty): the primary goes on alone,
            // as `Primary::start_alone` would.
            Role::Primary { mode: Mode::Streaming, .. } if self.session.is_none() => self.set_mode(a, Mode::Tracking),
            other => return Err(self.fail(format!("resync: the acting primary cannot take a mirror back ({other:?})"))),
        }
        // What change tracking recorded, and what the activity log covered
        // before the loss, is owed to the resync: pinned, it survives
        // retiring until the resync clears it. The activity table starts
        // empty with the new stream (`ActivityLog::restart_stream`).
        let mut extents: BTreeMap<FsPath, BTreeSet<u64>> = BTreeMap::new();
        for k in self.nodes[a].hot.keys() {
            if let Hot::Extent(f, e) = k {
                extents.entry(f.clone()).or_default().insert(*e);
            }
        }
        match self.nodes[a].log.as_ref() {
            Some(log) if self.cfg.bug == Some(PlantedBug::RetireDropsTrackedPaths) => {
                // What the runtime did: the table keeps its entries and
                // their old sequence numbers, nothing is pinned.
                let _ = log;
            }
            Some(log) => {
                log.pin_extents_of(&extents);
                log.pin_touched();
                // A stopped resync's passes owed are in its plan now.
                log.take_redo();
                self.nodes[a].hot.clear();
            }
            None => return Err(self.fail("resync: the acting primary has no change-log")),
        }
        // A pair still synchronized (its stream ended in order) needs no
        // recover: the stream just starts again, and the mirror stays
        // promotable. Otherwise `filerep recover`: the arbiter stores `r` first.
        let in_sync = self.pair.mode == PairMode::Synchronized;
        let dbid = self.nodes[b].dbid;
        if !self.seg_up(b) {
            self.arbiter_apply(Event::SegmentUp { dbid })?;
        }
        self.arbiter_apply(Event::ResyncStarted)?;
        let gen = self.pair.generation;
        let node = &mut self.nodes[b];
        node.role = Role::Mirror { gen, faulted: false, in_sync };
        node.log = None;
        node.hot.clear();
        node.dirty_dirs.clear();
        self.sessions += 1;
        let session = Session::new(a, b, self.nodes[b].data.clone(), &self.cfg, self.now, self.sessions);
        self.session = Some(session);
        self.set_mode(a, Mode::Streaming);
        self.outcome("mirror taken back for a resync");
        Ok(())
    }

    /// Repair a pair that is not down with the resync engine: take the
    /// mirror back (unless the stream is still up: a resync resumed), run
    /// the engine, and go on from how it ended.
    pub(super) fn resync_repair(&mut self, a: usize) -> Result<(), SimFailure> {
        if self.report.resync.runs == 0 && self.rng.gen_bool(0.5) {
            let fault = ResyncFault::ALL[self.rng.gen_range(0..ResyncFault::ALL.len())];
            let delay = self.rng.gen_range(0..8);
            self.resync_fault = Some(Pending { fault, at_call: 0, delay, fire_at: None, on_disk: false, fired: false });
        }
        let resumed = self.session.as_ref().is_some_and(|s| s.primary == a && s.primary_on);
        if !resumed {
            self.attach(a)?;
        }
        let result = self.run_engine(a)?;
        let pending = self.resync_fault.take();
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
        match (result, fired) {
            (Ok(r), false) => {
                self.count_report(&r);
                self.resync_completed(a)
            }
            (Ok(r), true) => {
                self.count_report(&r);
                self.outcome("resync completed, then its fault hit the pair");
                self.after_interruption()
            }
            (Err(e), true) => {
                tracing::debug!(seed = self.seed, step = self.step, error = %e, "sim: resync interrupted");
                self.report.resync.interrupted += 1;
                self.outcome("resync interrupted by its fault");
                self.after_interruption()
            }
            (Err(e), false) => match self.mirror_refusal.take() {
                Some(why) => Err(self.fail(format!(
                    "resync liveness: the mirror refused a call made during the resync ({why}); the resync \
                     cannot finish: {e}"
                ))),
                None => Err(self.fail(format!("the resync failed without a fault: {e}"))),
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
    }

    /// One run of the engine on the stream from `a`, with writers going on.
    fn run_engine(&mut self, a: usize) -> Result<EResult<ResyncReport>, SimFailure> {
        let opts = ResyncOptions {
            // A full resync now and then: every path owed, renames included.
            full: self.rng.gen_bool(0.1),
            max_rate: None,
            finish_timeout: Some(Duration::from_millis(RESYNC_WAIT_MS)),
            // Small, so checkpoints (Cleared records) happen within a run.
            checkpoint_bytes: Some(self.rng.gen_range(1..=16) * 16 * 1024),
            compare: self.rng.gen_bool(0.25),
        };
        let extra = self.rng.gen_range(10..=80);
        self.op_limit = self.ops.len() + extra;
        let session = match &self.session {
            Some(s) if s.primary == a && s.primary_on => s.id,
            _ => return Err(self.fail("resync: no stream to run on")),
        };
        tracing::debug!(seed = self.seed, step = self.step, ?opts, fault = ?self.resync_fault, "sim: resync starts");
        self.resync_plan = self.nodes[a].log.as_ref().map(|l| l.resync_set());
        self.resync_targets = self
            .resync_plan
            .iter()
            .flat_map(|plan| {
                let exact = plan.blocks.iter().flat_map(|(f, bs)| bs.iter().map(move |b| (f.clone(), *b)));
                let extents =
                    plan.extents.iter().flat_map(|(f, es)| es.iter().map(move |e| (f.clone(), e * EXTENT_BLOCKS)));
                exact.chain(extents)
            })
            .collect();
        let deadline = self.step + 500_000;
        let mut link = SimLink {
            sim: self,
            a,
            b: 1 - a,
            session,
            failure: None,
            calls: 0,
            abandoned: false,
            deadline,
            flushes: BTreeMap::new(),
        };
        let progress = crate::runtime::resync::Progress::default();
        let result = crate::runtime::resync::run_on(&mut link, &opts, &progress);
        let failure = link.failure.take();
        self.resync_step = None;
        self.resync_plan = None;
        self.resync_targets.clear();
        // Writers finish what they started and issue nothing new.
        self.op_limit = self.ops.len();
        match failure {
            Some(f) => Err(f),
            None => Ok(result),
        }
    }

    /// The engine completed (its finish checked invariant 3 with the stream
    /// up): the pair is synchronized; the stream ends in order, and both
    /// segments must be identical (invariant 4).
    fn resync_completed(&mut self, a: usize) -> Result<(), SimFailure> {
        let b = 1 - a;
        match self.pair.mode {
            // The arbiter's next round hears the primary streams, not resyncing.
            PairMode::Resynchronizing if !self.pair.down => {
                self.arbiter_apply(Event::ResyncCompleted)?;
            }
            PairMode::Synchronized if matches!(self.nodes[b].role, Role::Mirror { in_sync: true, .. }) => {}
            _ => return Err(self.fail(format!("resync: the pair left resync without a fault: {:?}", self.pair))),
        }
        if let Role::Mirror { in_sync, .. } = &mut self.nodes[b].role {
            *in_sync = true;
        }
        self.outcome("resync completed");
        self.settle()?;
        if self.node_of(self.pair.acting_primary().dbid)? != a {
            return Err(self.fail("resync: the acting primary changed without a fault"));
        }
        self.check_acked(a)?;
        self.check_identical(a, b)
    }

    /// After the resync's fault: heal, check invariants 1 and 3 again, and
    /// repair again (the engine, or a full copy if the pair went down).
    fn after_interruption(&mut self) -> Result<(), SimFailure> {
        self.heal()?;
        let live = self.session.as_ref().filter(|s| s.primary_on && s.mirror_on).map(|s| s.primary);
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

    /// Invariant 3 with the stream up. A primary crash loses the window
    /// and keeps the durable image: what differs from it must be named by
    /// the change-log alone. A loss of the mirror records the window first:
    /// what differs from the live image may be named by either.
    fn check_live(&self, a: usize, b: usize) -> Result<(), SimFailure> {
        let log = self.nodes[a].log.as_ref().map(|l| l.change_set()).unwrap_or_default();
        let mut with_window = log.clone();
        for (_, c) in self.session.iter().flat_map(|s| s.window.iter()) {
            match c {
                Change::Blocks { path, first, last } => {
                    with_window.blocks.entry(path.clone()).or_default().extend(*first..=*last)
                }
                Change::Touched { path, subtree } => {
                    *with_window.touched.entry(path.clone()).or_insert(false) |= *subtree
                }
            }
        }
        let ia = [
            ("live", self.nodes[a].data_sim.snapshot(), &with_window),
            ("durable", self.nodes[a].data_sim.durable_snapshot(), &log),
        ];
        let ib = [("live", self.nodes[b].data_sim.snapshot()), ("durable", self.nodes[b].data_sim.durable_snapshot())];
        for (na, x, set) in &ia {
            for (nb, y) in &ib {
                if let Some(what) = self.uncovered(set, x, y)? {
                    return Err(self.fail(format!(
                        "invariant 3: with the stream up, segment {}'s {na} image and segment {}'s {nb} image \
                         differ in {what}, which the acting primary's change-log{} does not name",
                        self.nodes[a].dbid,
                        self.nodes[b].dbid,
                        if *na == "live" { " and window" } else { "" }
                    )));
                }
            }
        }
        Ok(())
    }
}
