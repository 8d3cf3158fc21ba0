//! Segments and the arbiter: crashes and restarts, the armed faults, the
//! arbiter's probes and decisions, promotion, change-log upkeep.

use super::*;
use crate::io::disk::EntryKind;

impl FaultSim {
    // ---- crashes, restarts -------------------------------------------------

    /// Count a disk fault that fired where one was armed.
    pub(super) fn drain_fired(&mut self, n: usize) {
        let fired = [(DiskOf::Data, self.nodes[n].data.take_fired()), (DiskOf::Log, self.nodes[n].log_io.take_fired())];
        for (which, events) in fired {
            for f in events {
                let Some(a) = self.armed else { continue };
                if a.node != n {
                    continue;
                }
                let hit = matches!(
                    (a.kind, which, f),
                    (FaultKind::FsyncError(Side::Primary | Side::Mirror), DiskOf::Data, Fired::Fsync)
                        | (FaultKind::DiskFull(Side::Primary | Side::Mirror), DiskOf::Data, Fired::NoSpace)
                        | (FaultKind::FsyncError(Side::ChangeLog), DiskOf::Log, Fired::Fsync)
                        | (FaultKind::DiskFull(Side::ChangeLog), DiskOf::Log, Fired::NoSpace)
                        | (
                            FaultKind::Crash(Victim::Primary, Point::ChangeLogWrite | Point::Compaction),
                            DiskOf::Log,
                            Fired::PowerLoss
                        )
                        | (FaultKind::Resync(ResyncFault::MirrorFsyncError), DiskOf::Data, Fired::Fsync)
                        | (FaultKind::Resync(ResyncFault::MirrorDiskFull), DiskOf::Data, Fired::NoSpace)
                        | (FaultKind::Resync(ResyncFault::CrashPrimaryClearing), DiskOf::Log, Fired::PowerLoss)
                );
                if hit {
                    self.count(a.kind);
                    self.armed = None;
                }
            }
        }
    }

    /// Power loss on segment `n`: only durable data survives (a write in
    /// flight may be torn), the process and its connections are gone.
    pub(super) fn crash_node(&mut self, n: usize) -> Result<(), SimFailure> {
        tracing::debug!(seed = self.seed, step = self.step, segment = self.nodes[n].dbid, "sim: power loss");
        self.drain_fired(n);
        let mut torn = false;
        for sim in [self.nodes[n].data_sim.clone(), self.nodes[n].log_sim.clone()] {
            let bytes = self.rng.gen_bool(0.7).then(|| self.rng.gen_range(1..self.bs as usize));
            let before = bytes.map(|_| sim.durable_snapshot());
            sim.crash(bytes);
            torn |= before.is_some_and(|b| b != sim.snapshot());
        }
        if torn {
            self.count(FaultKind::TornWrite);
        }

        let node = &mut self.nodes[n];
        node.data.reset();
        node.log_io.reset();
        node.log = None;
        node.hot.clear();
        node.dirty_dirs.clear();
        node.role = Role::Down { restart_at: self.now + self.rng.gen_range(20..200) };
        self.finish_writers(n, false);
        if self.model_node == Some(n) {
            self.model_node = None;
        }
        if self.armed.is_some_and(|a| a.node == n && !matches!(a.kind, FaultKind::Crash(..))) {
            self.armed = None;
        }
        if let Some(s) = self.session.as_mut() {
            if s.primary == n && s.primary_on {
                s.primary_on = false;
                s.to_primary.queue.clear();
                // Bytes already on the wire may or may not arrive; the
                // mirror sees a reset, or only silence.
                if self.rng.gen_bool(0.5) {
                    s.to_mirror.queue.clear();
                }
                s.primary_closed = self.rng.gen_bool(0.5);
            }
            if s.mirror == n && s.mirror_on {
                s.mirror_on = false;
                s.sync_jobs.clear();
                s.to_mirror.queue.clear();
                s.mirror_closed = self.rng.gen_bool(0.5);
            }
        }
        self.drop_session_if_done();
        Ok(())
    }

    /// A process restart without a power loss (after a failure): memory is gone, the disks are not.
    pub(super) fn restart_process(&mut self, n: usize) {
        self.finish_writers(n, false);
        if let Some(s) = self.session.as_mut() {
            if s.primary == n {
                s.primary_on = false;
                s.primary_closed = true;
            }
            if s.mirror == n {
                s.mirror_on = false;
                s.mirror_closed = true;
            }
        }
        self.drop_session_if_done();
        let node = &mut self.nodes[n];
        node.log = None;
        node.hot.clear();
        node.dirty_dirs.clear();
        node.role = Role::Restarted;
        if self.model_node == Some(n) {
            self.model_node = None;
        }
    }

    /// A crash armed for this moment of an operation. Returns whether
    /// `primary` is still a primary that can go on.
    pub(super) fn hook(&mut self, point: Point, primary: usize) -> Result<bool, SimFailure> {
        if let Some(a) = self.armed {
            if let FaultKind::Crash(victim, p) = a.kind {
                if p == point {
                    match victim {
                        // A primary crash inside the change-log is armed on its disk instead.
                        Victim::Primary if matches!(point, Point::ChangeLogWrite | Point::Compaction) => {}
                        Victim::Primary => {
                            if self.is_primary(primary) {
                                self.armed = None;
                                self.count(a.kind);
                                self.crash_node(primary)?;
                            }
                        }
                        Victim::Mirror => {
                            let m = 1 - primary;
                            if !matches!(self.nodes[m].role, Role::Down { .. }) {
                                self.armed = None;
                                self.count(a.kind);
                                self.crash_node(m)?;
                            }
                        }
                        Victim::Arbiter => {
                            if self.arbiter_up {
                                self.armed = None;
                                self.count(a.kind);
                                self.arbiter_up = false;
                                self.arbiter_back_at = self.now + self.rng.gen_range(30..300);
                            }
                        }
                    }
                }
            }
        }
        Ok(self.is_primary(primary))
    }

    /// Arm the faults whose operation count has come.
    pub(super) fn arm_due(&mut self) -> Result<(), SimFailure> {
        while let Some(&(at, kind)) = self.schedule.front() {
            if at > self.ops.len() || self.armed.is_some() {
                break;
            }
            self.schedule.pop_front();
            self.arm(kind)?;
        }
        Ok(())
    }

    pub(super) fn arm(&mut self, kind: FaultKind) -> Result<(), SimFailure> {
        let Some(p) = (0..self.nodes.len()).find(|&n| self.accepting(n)) else { return Ok(()) };
        tracing::debug!(seed = self.seed, step = self.step, fault = %kind, primary = self.nodes[p].dbid, "sim: armed");
        let m = 1 - p;
        let until = self.now + FAULT_EXPIRES_MS;
        let session = self.session.as_ref().is_some_and(|s| s.primary == p && s.primary_on && s.mirror_on && !s.cut);
        let mirror_up = matches!(self.nodes[m].role, Role::Mirror { faulted: false, .. });
        let armed = |node| Some(Armed { kind, node, until });
        match kind {
            FaultKind::Crash(Victim::Primary, Point::ChangeLogWrite) => {
                let n = self.rng.gen_range(0..=1);
                self.nodes[p].log_io.lose_power_in(n);
                self.armed = armed(p);
            }
            FaultKind::Crash(..) => self.armed = armed(p),
            FaultKind::Disconnect if session => {
                self.count(kind);
                if let Some(s) = self.session.as_mut() {
                    s.to_mirror.queue.clear();
                    s.to_primary.queue.clear();
                }
                self.end_mirror_side(true)?;
            }
            FaultKind::PartitionPair | FaultKind::PartitionPrimary => {
                let whole = kind == FaultKind::PartitionPrimary;
                if !session && !whole {
                    return Ok(());
                }
                self.count(kind);
                if let Some(s) = self.session.as_mut() {
                    s.cut = true;
                    s.to_mirror.queue.clear();
                    s.to_primary.queue.clear();
                }
                if whole {
                    self.nodes[p].reaches_arbiter = false;
                }
                self.partition_heal_at = Some(self.now + self.rng.gen_range(50..400));
            }
            FaultKind::FsyncError(Side::Primary) => {
                self.nodes[p].data.fail_next_sync();
                self.armed = armed(p);
            }
            FaultKind::FsyncError(Side::ChangeLog) => {
                self.nodes[p].log_io.fail_next_sync();
                self.armed = armed(p);
            }
            FaultKind::DiskFull(Side::Primary) => {
                self.nodes[p].data.no_space_next();
                self.armed = armed(p);
            }
            FaultKind::DiskFull(Side::ChangeLog) => {
                self.nodes[p].log_io.no_space_next();
                self.armed = armed(p);
            }
            FaultKind::FsyncError(Side::Mirror) if mirror_up => {
                self.nodes[m].data.fail_next_sync();
                self.armed = armed(m);
            }
            FaultKind::DiskFull(Side::Mirror) if mirror_up => {
                self.nodes[m].data.no_space_next();
                self.armed = armed(m);
            }
            _ => {}
        }
        Ok(())
    }

    // ---- the arbiter -------------------------------------------------------

    pub(super) fn arbiter_apply(&mut self, e: Event) -> Result<Outcome, SimFailure> {
        let (gen, down) = (self.pair.generation, self.pair.down);
        let out = self.pair.apply(&e);
        let (verdict, reason) = (out.verdict, &out.reason);
        tracing::debug!(seed = self.seed, step = self.step, event = ?e, ?verdict, %reason, "sim: arbiter");
        if let Err(why) = self.pair.check() {
            return Err(self.fail(format!("arbiter: Pair::check after {e:?}: {why} ({:?})", self.pair)));
        }
        if self.pair.generation > gen {
            self.outcome("failover: mirror promoted");
        }
        if self.pair.down && !down {
            self.outcome("segment down (double fault)");
        }
        Ok(out)
    }

    pub(super) fn answers_probe(&self, n: usize) -> bool {
        self.nodes[n].reaches_arbiter
            && !matches!(
                self.nodes[n].role,
                Role::Down { .. }
                    | Role::Restarted
                    | Role::Primary { mode: Mode::Failed(_) | Mode::Faulted(_), .. }
                    | Role::Mirror { faulted: true, .. }
            )
    }

    pub(super) fn arbiter_step(&mut self) -> Result<(), SimFailure> {
        if !self.arbiter_up {
            if self.now < self.arbiter_back_at {
                return Ok(());
            }
            self.arbiter_up = true;
        }
        if self.now % PROBE_EVERY_MS != 0 {
            return Ok(());
        }
        for n in 0..self.nodes.len() {
            if self.nodes[n].role == Role::Restarted && self.nodes[n].reaches_arbiter {
                // A restarted segment tells the arbiter its process died and
                // is back; it learns its role before it writes anything.
                let dbid = self.nodes[n].dbid;
                self.arbiter_apply(Event::ProbeFailed { dbid })?;
                self.arbiter_apply(Event::SegmentUp { dbid })?;
                if !self.pair.down && self.pair.acting_primary().dbid == dbid {
                    return Err(self.fail(format!("the arbiter kept restarted segment {dbid} as the acting primary")));
                }
                self.nodes[n].role = if self.pair.down {
                    Role::Halted
                } else {
                    Role::Mirror { gen: self.pair.generation, faulted: false, in_sync: false }
                };
            }
        }
        for n in 0..self.nodes.len() {
            let dbid = self.nodes[n].dbid;
            let (ok, up) = (self.answers_probe(n), self.seg_up(n));
            if !ok && up {
                self.arbiter_apply(Event::ProbeFailed { dbid })?;
            } else if ok && !up && !self.pair.down {
                self.arbiter_apply(Event::SegmentUp { dbid })?;
            }
        }
        for n in 0..self.nodes.len() {
            if self.nodes[n].reaches_arbiter {
                self.deliver_role(n)?;
            }
        }
        Ok(())
    }

    /// A reachable segment learns what the catalog says of it.
    pub(super) fn deliver_role(&mut self, n: usize) -> Result<(), SimFailure> {
        let acting = self.pair.acting_primary().dbid == self.nodes[n].dbid;
        let gen = self.pair.generation;
        match self.nodes[n].role.clone() {
            Role::Primary { gen: g, .. } => {
                if self.pair.down {
                    self.stop_primary(n, Mode::Failed("the segment is down".into()));
                    self.nodes[n].role = Role::Halted;
                } else if !acting || g != gen {
                    self.outcome("old primary demoted");
                    self.stop_primary(n, Mode::Failed("demoted".into()));
                    self.nodes[n].role = Role::Mirror { gen, faulted: false, in_sync: false };
                }
            }
            Role::Mirror { gen: g, faulted, in_sync } => {
                if self.pair.down {
                    if self.session.as_ref().is_some_and(|s| s.mirror == n) {
                        self.end_mirror_side(false)?;
                    }
                    self.nodes[n].role = Role::Halted;
                } else if acting && gen > g && !faulted && in_sync {
                    self.promote(n, gen)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The mirror becomes the primary of a new generation, in change tracking.
    pub(super) fn promote(&mut self, n: usize, gen: u64) -> Result<(), SimFailure> {
        // It refuses the old generation's stream from now on (rule 7).
        if self.session.as_ref().is_some_and(|s| s.mirror == n && s.mirror_on) {
            self.end_mirror_side(false)?;
            if matches!(self.nodes[n].role, Role::Mirror { faulted: true, .. }) {
                return Ok(());
            }
        }
        self.open_log(n, gen)
    }

    /// Segment `n` starts as primary of `gen` in change tracking with a fresh change-log.
    pub(super) fn open_log(&mut self, n: usize, gen: u64) -> Result<(), SimFailure> {
        let io: Arc<dyn Disk> = self.nodes[n].log_io.clone();
        let mode = match ChangeLog::create(io, self.log_path.clone(), self.cfg.block_size) {
            Ok(log) => {
                self.nodes[n].log = Some(log);
                Mode::Tracking
            }
            Err(e) => Mode::Failed(format!("cannot create the change-log: {e}")),
        };
        self.nodes[n].hot.clear();
        self.nodes[n].role = Role::Primary { gen, mode };
        if self.nodes[n].log_io.power_lost() {
            self.crash_node(n)?;
        }
        Ok(())
    }

    // ---- change-log upkeep ---------------------------------------------------

    /// fsync every file and directory of segment `n` (a checkpoint).
    /// `Ok(false)`: an fsync failed and the segment faulted (rule 8).
    pub(super) fn checkpoint(&mut self, n: usize) -> Result<bool, SimFailure> {
        let disk = self.nodes[n].data.clone();
        let fired = disk.fired_total();
        let mut dirs: Vec<FsPath> = Vec::new();
        let mut files: Vec<FsPath> = Vec::new();
        // Listed, not snapshotted: a snapshot copies every file's contents.
        let sim = self.nodes[n].data_sim.clone();
        for fs in 0..self.cfg.filespaces {
            let mut todo: Vec<Option<RelPath>> = vec![None];
            while let Some(dir) = todo.pop() {
                let probe = match &dir {
                    Some(d) => d.join("x"),
                    None => RelPath::top("x"),
                };
                dirs.push(FsPath::new(fs, probe.map_err(|e| self.fail(format!("checkpoint: {e}")))?));
                let children = sim.list_dir(fs, dir.as_ref()).map_err(|e| self.fail(format!("checkpoint: {e}")))?;
                for (name, kind) in children {
                    let child = match &dir {
                        Some(d) => d.join(&name),
                        None => RelPath::top(&name),
                    };
                    let child = child.map_err(|e| self.fail(format!("checkpoint: {e}")))?;
                    match kind {
                        EntryKind::Dir => todo.push(Some(child)),
                        _ => files.push(FsPath::new(fs, child)),
                    }
                }
            }
        }
        let r: DiskResult<()> = (|| {
            for f in &files {
                disk.open(f, OpenMode::Existing)?.sync_data()?;
            }
            // A handle on the parent of `dir/x` syncs `dir` itself.
            for d in &dirs {
                disk.parent_dir_handle(d)?.sync_data()?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.nodes[n].dirty_dirs.clear();
                Ok(true)
            }
            Err(e) if disk.fired_total() > fired => {
                self.outcome("primary faulted");
                self.stop_primary(n, Mode::Faulted(format!("checkpoint: {e}")));
                Ok(false)
            }
            Err(e) => Err(self.fail(format!("checkpoint of segment {}: {e}", self.nodes[n].dbid))),
        }
    }

    /// Now and then the acting primary compacts its change-log: while
    /// streaming by retiring activity entries the mirror has durably, in
    /// change tracking with `compact`.
    pub(super) fn compaction_step(&mut self) -> Result<(), SimFailure> {
        for n in 0..self.nodes.len() {
            let streaming = match &self.nodes[n].role {
                Role::Primary { mode: Mode::Streaming, .. } => true,
                Role::Primary { mode: Mode::Tracking, .. } => false,
                _ => continue,
            };
            if !self.rng.gen_bool(0.03) || !self.hook(Point::Compaction, n)? {
                continue;
            }
            let durable = match &self.session {
                Some(s) if s.primary == n && s.primary_on => s.stream.acked().durable,
                _ => 0,
            };
            let done: Vec<Hot> =
                self.nodes[n].hot.iter().filter(|(_, s)| **s != 0 && **s <= durable).map(|(k, _)| k.clone()).collect();
            // The mirror has these durably, but the primary's own writes may
            // still be in its page cache: a crash would lose them while no
            // entry names them any more. Make them durable first (as DRBD
            // flushes before an activity-log transaction).
            if (!done.is_empty() || !streaming)
                && self.cfg.bug != Some(PlantedBug::DropActivityWithoutLocalSync)
                && !self.checkpoint(n)?
            {
                continue;
            }
            let armed_here = matches!(
                self.armed,
                Some(Armed { kind: FaultKind::Crash(Victim::Primary, Point::Compaction), node, .. }) if node == n
            );
            if armed_here {
                // A rewrite is five mutating calls: create, write, fsync, rename, fsync.
                let at = self.rng.gen_range(0..5);
                self.nodes[n].log_io.lose_power_in(at);
            }
            let ok = if streaming {
                let mut extents: BTreeMap<FsPath, BTreeSet<u64>> = BTreeMap::new();
                let mut touched = BTreeSet::new();
                for k in &done {
                    match k {
                        Hot::Extent(p, e) => {
                            extents.entry(p.clone()).or_default().insert(*e);
                        }
                        Hot::Path(p) => {
                            touched.insert(p.clone());
                        }
                    }
                }
                self.log_call(n, |log| log.retire_active(&extents, &touched))?
            } else {
                self.log_call(n, |log| log.compact())?
            };
            if ok {
                for k in &done {
                    self.nodes[n].hot.remove(k);
                }
                if !streaming {
                    // `compact` kept no extent but recovered ones (the files
                    // were synced first): the table forgets them too, so a
                    // write after a resync takes the mirror back records its
                    // extent again.
                    self.nodes[n].hot.retain(|k, _| matches!(k, Hot::Path(_)));
                }
            }

            if armed_here && !matches!(self.nodes[n].role, Role::Down { .. }) {
                self.nodes[n].log_io.disarm_power();
            }
        }
        Ok(())
    }
}
