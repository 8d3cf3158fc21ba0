//! Faults: what a schedule arms, where it fires (at a command boundary, or
//! inside a change-log write), and what a power loss leaves.

use super::faulty::Fired;
use super::world::{Armed, Role, World, FAULT_EXPIRES_MS};
use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum DiskOf {
    Data,
    Log,
}

impl World {
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
                            FaultKind::Crash(Victim::Primary, Point::ChangeLogWrite | Point::Rewrite),
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
        let alone = !self.pair.down
            && self.pair.acting_primary().dbid == self.nodes[n].dbid
            && self.pair.mode != crate::core::pair::PairMode::Synchronized
            && self.nodes[n].primary.is_some();
        if alone {
            // The only copy lost its page cache: as after a double fault,
            // only what a successful sync made durable is owed.
            self.double_fault = true;
            self.outcome("the primary lost power while alone");
        }
        self.lost_power[n] = true;
        self.moments += 1;
        self.power_losses.push(self.moments);
        if self.lost_power.iter().all(|l| *l) && !self.double_fault {
            // Both copies lost their page caches since the pair was last
            // made whole: what was acknowledged and not synced may be gone.
            self.double_fault = true;
            self.outcome("both segments lost power");
        }
        self.rounds_cut_off(n);
        self.nodes[n].boot += 1;
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
        if self.nodes[n].primary.is_some() {
            self.drop_engine(n);
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
        let restart_at = self.now + self.rng.gen_range(20..200);
        self.process_gone(n, restart_at);
        Ok(())
    }

    /// The segment's process is killed (`kill -9`), its host stays up: the
    /// page cache keeps what it wrote, so nothing it applied is lost; a
    /// write round in flight reached the disk or did not; queued sync jobs
    /// never run; its connections reset or fall silent. It restarts after
    /// 20-200 ms, in the same boot. (Draws from the rounds' stream: the
    /// schedule's own is left as a power loss would leave it.)
    pub(super) fn kill_process(&mut self, n: usize) -> Result<(), SimFailure> {
        tracing::debug!(seed = self.seed, step = self.step, segment = self.nodes[n].dbid, "sim: process killed");
        self.drain_fired(n);
        self.outcome("a segment's process killed, its host up");
        self.rounds_cut_off(n);
        if self.nodes[n].primary.is_some() {
            self.drop_engine(n);
        }
        let closed = self.rounds_rng.gen_bool(0.5);
        if let Some(s) = self.session.as_mut() {
            if s.primary == n && s.primary_on {
                s.primary_on = false;
                s.to_primary.queue.clear();
                s.primary_closed = closed;
            }
            if s.mirror == n && s.mirror_on {
                s.mirror_on = false;
                s.sync_jobs.clear();
                s.to_mirror.queue.clear();
                s.mirror_closed = closed;
            }
        }
        let restart_at = self.now + self.rounds_rng.gen_range(20..200);
        self.process_gone(n, restart_at);
        Ok(())
    }

    /// What a power loss and a kill both leave of segment `n`'s process
    /// (its session sides already cut): nothing, until it restarts at
    /// `restart_at`; a fault armed on its disks goes with it.
    fn process_gone(&mut self, n: usize, restart_at: u64) {
        self.drop_session_if_done();
        let node = &mut self.nodes[n];
        node.data.reset();
        node.log_io.reset();
        node.log = None;
        node.role = Role::Down { restart_at };
        if self.model_node == Some(n) {
            self.model_node = None;
        }
        if self.armed.is_some_and(|a| a.node == n && !matches!(a.kind, FaultKind::Crash(..))) {
            self.armed = None;
        }
    }

    /// A process restart without a power loss (an operator restarts a
    /// failed segment): memory is gone, the disks are not.
    pub(super) fn restart_process(&mut self, n: usize) -> Result<(), SimFailure> {
        if self.nodes[n].primary.is_some() {
            self.drop_engine(n);
        }
        if self.session.as_ref().is_some_and(|s| s.mirror == n && s.mirror_on) {
            self.end_mirror_side("process restart")?;
        }
        self.nodes[n].log = None;
        if self.model_node == Some(n) {
            self.model_node = None;
        }
        self.restart(n)
    }

    /// A crash armed for this command boundary. Returns whether `primary`
    /// is still a primary that can go on.
    pub(super) fn hook(&mut self, point: Point, primary: usize) -> Result<bool, SimFailure> {
        if let Some(a) = self.armed {
            if let FaultKind::Crash(victim, p) = a.kind {
                if p == point && self.rng.gen_bool(0.5) {
                    match victim {
                        // A primary crash inside the change-log is armed on its disk instead.
                        Victim::Primary if matches!(point, Point::ChangeLogWrite | Point::Rewrite) => {}
                        Victim::Primary => {
                            if self.nodes[primary].primary.is_some() {
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
                                // Half the time its process is killed and the host stays up.
                                if self.rounds_rng.gen_bool(0.5) {
                                    self.kill_process(m)?;
                                } else {
                                    self.crash_node(m)?;
                                }
                            }
                        }
                        Victim::Arbiter => {
                            if self.arbiter_up {
                                self.armed = None;
                                self.count(a.kind);
                                let back = self.rng.gen_range(30..300);
                                self.arbiter_crash(back);
                            }
                        }
                    }
                }
            }
        }
        Ok(self.nodes[primary].primary.is_some())
    }

    /// A crash of the primary armed inside a change-log rewrite: the power
    /// goes between two of its writes, syncs and renames.
    pub(super) fn arm_rewrite_crash(&mut self, n: usize) -> bool {
        let armed = matches!(
            self.armed,
            Some(Armed { kind: FaultKind::Crash(Victim::Primary, Point::Rewrite), node, .. }) if node == n
        );
        if armed {
            // A rewrite is five mutating calls: create, write, fsync, rename, fsync.
            let at = self.rng.gen_range(0..5);
            self.nodes[n].log_io.lose_power_in(at);
        }
        armed
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

    fn arm(&mut self, kind: FaultKind) -> Result<(), SimFailure> {
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
                self.end_mirror_side("disconnect")?;
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
}
