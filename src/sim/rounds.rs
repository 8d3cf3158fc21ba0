//! The mirror's write rounds (a mirror on a direct disk): a batch of plain
//! writes goes on its way while the session reads on, by the rules of
//! [`RoundQueue`] as the daemon runs them (`runtime::mirror::rounds`);
//! rounds land in any order the seed picks, and "applied" moves as the
//! oldest land. What waits until every round has landed (a batch that is
//! not plain writes or overlaps a round in flight, every sync job and
//! checkpoint, the end of the session) is the session's policy
//! (`core::mirror::policy`), which the daemon follows too.
//!
//! The choices here come from a stream of their own, so a schedule whose
//! mirror writes in place (no rounds) is the same as before rounds existed.

use super::world::World;
use super::*;
use crate::core::rounds::RoundQueue;
use crate::exec::apply::{Applier, FaultClass, Sequenced, StagedWrite};

/// The rounds of one session.
pub(super) struct SimRounds {
    pub(super) queue: RoundQueue,
    /// Each round in flight: its last sequence number and its writes.
    pub(super) in_flight: Vec<(u64, Vec<StagedWrite>)>,
}

impl SimRounds {
    pub(super) fn new(applied: u64, bug: Option<crate::core::PlantedBug>) -> SimRounds {
        SimRounds { queue: RoundQueue::new(4096, applied).with_bug(bug), in_flight: Vec::new() }
    }
}

/// The stream that rounds draw from: the seed's, apart from the schedule's.
pub(super) fn rounds_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ 0x726f_756e_6473)
}

impl World {
    /// Whether this session's mirror writes rounds (half the sessions).
    pub(super) fn session_rounds(&mut self, applied: u64) -> Option<SimRounds> {
        self.rounds_rng.gen_bool(0.5).then(|| SimRounds::new(applied, self.cfg.bug))
    }

    /// Stage `batch` and put it on its way as a round (the session's policy
    /// found that a round takes it). False: the mirror stopped.
    pub(super) fn stage_round(&mut self, batch: &[Sequenced]) -> Result<bool, SimFailure> {
        let last_seq = batch.last().map_or(0, |o| o.seq);
        let Some(s) = self.session.as_mut() else { return Ok(false) };
        let m = s.mirror;
        let fired = self.nodes[m].data.fired_total();
        let Some(s) = self.session.as_mut() else { return Ok(false) };
        let Some(r) = s.rounds.as_mut() else {
            return Err(self.fail("a round took a batch of a session without rounds"));
        };
        match s.applier.stage_writes(batch) {
            Ok(writes) => {
                r.queue.push(last_seq, Applier::write_ranges(batch));
                r.in_flight.push((last_seq, writes));
                if r.in_flight.len() > 1 {
                    self.outcome("mirror write rounds in flight together");
                }
                Ok(true)
            }
            // Staging opens files, as applying does: the same outcome.
            Err(e) => self.mirror_apply_failed(m, fired, e).map(|()| false),
        }
    }

    /// A round the seed picks lands (its writes reach the disk, in order),
    /// and the rounds landed from the oldest retire: "applied" moves and
    /// the mirror acknowledges.
    pub(super) fn rounds_step(&mut self) -> Result<(), SimFailure> {
        let Some(n) = self.session.as_ref().and_then(|s| s.rounds.as_ref()).map(|r| r.in_flight.len()) else {
            return Ok(());
        };
        if n == 0 || !self.mirror_alive() {
            return Ok(());
        }
        let i = self.rounds_rng.gen_range(0..n);
        if self.land_round(i)? {
            self.mirror_ack()?;
        }
        Ok(())
    }

    /// Land every round in flight, in an order the seed picks. False: the
    /// mirror faulted meanwhile.
    pub(super) fn drain_rounds(&mut self) -> Result<bool, SimFailure> {
        loop {
            let n = match self.session.as_ref().and_then(|s| s.rounds.as_ref()) {
                Some(r) if !r.in_flight.is_empty() => r.in_flight.len(),
                _ => return Ok(self.mirror_alive()),
            };
            if !self.mirror_alive() {
                return Ok(false);
            }
            let i = self.rounds_rng.gen_range(0..n);
            self.land_round(i)?;
        }
    }

    /// Write round `i`; true if "applied" moved. A write the disk fails
    /// faults the mirror, as a failed round does in the daemon (a passing
    /// failure, tried again there, is not injected here).
    fn land_round(&mut self, i: usize) -> Result<bool, SimFailure> {
        let Some(s) = self.session.as_mut() else { return Ok(false) };
        let Some(r) = s.rounds.as_mut() else { return Ok(false) };
        let (last_seq, writes) = r.in_flight.remove(i);
        let m = s.mirror;
        if i > 0 {
            self.outcome("mirror write round landed before an older one");
        }
        let fired = self.nodes[m].data.fired_total();
        for w in &writes {
            if let Err(e) = w.file.write_at(w.offset, &w.data) {
                if self.nodes[m].data.fired_total() > fired {
                    self.mirror_fault(m);
                    return Ok(false);
                }
                return Err(self.fail(format!("mirror write round through {last_seq}: {e}")));
            }
        }
        let Some(s) = self.session.as_mut() else { return Ok(false) };
        let Some(r) = s.rounds.as_mut() else { return Ok(false) };
        let moved = r.queue.landed(last_seq, true);
        if moved {
            s.applier.landed(r.queue.applied());
        }
        Ok(moved)
    }

    /// The mirror's process ends without draining (a power loss, a kill):
    /// each round in flight reached the disk or did not (none was
    /// acknowledged); the rest are gone with the process.
    pub(super) fn rounds_cut_off(&mut self, m: usize) {
        let Some(s) = self.session.as_mut() else { return };
        if s.mirror != m {
            return;
        }
        let Some(r) = s.rounds.as_mut() else { return };
        if r.in_flight.is_empty() {
            return;
        }
        let in_flight: Vec<_> = r.in_flight.drain(..).collect();
        self.outcome("mirror ended with write rounds in flight");
        for (_, writes) in in_flight {
            if self.rounds_rng.gen_bool(0.5) {
                for w in &writes {
                    let _ = w.file.write_at(w.offset, &w.data);
                }
            }
        }
    }

    /// The mirror could not apply (or stage) an operation: a failure its
    /// disk was told to inject faults the mirror; otherwise, during a
    /// resync, the mirror refuses it; a stream in sync never gets here.
    pub(super) fn mirror_apply_failed(
        &mut self,
        m: usize,
        fired: u64,
        e: crate::exec::apply::ApplyError,
    ) -> Result<(), SimFailure> {
        if self.nodes[m].data.fired_total() > fired || e.class() == FaultClass::DiskFailing {
            self.mirror_fault(m);
            return Ok(());
        }
        // A stream in sync never refuses an operation: the primary
        // ships what it did. A resync's mirror may lack what a call
        // changes: the daemon sends a Fault and ends the session.
        if self.resync.running {
            return self.mirror_refused(e.seq, &e.to_string());
        }
        Err(self.fail(format!("the mirror could not apply an operation of a stream in sync: {e}")))
    }
}
