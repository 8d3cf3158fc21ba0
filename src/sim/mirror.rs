//! The stream's mirror end: the real session checks ([`MirrorSession`]),
//! executor ([`Applier`]) and session policy ([`SessionPolicy`]: what each
//! batch does, in order, and what the end tells) as the mirror daemon runs
//! them, with sync jobs run by a simulated syncer.

use super::net::Link;
use super::rounds::SimRounds;
use super::world::{Role, World, ACK_TIMEOUT_MS};
use super::*;
use crate::core::mirror::policy::{self, Action, Batch};
use crate::core::mirror::{Checkpoints, MirrorSession, SessionPolicy, Step};
use crate::exec::apply::{Applier, Sequenced, SyncJob};
use crate::protocol::{Ack, Decoder, Frame, Header, Kind};

/// One stream from a primary to its mirror.
pub(super) struct Session {
    pub(super) primary: usize,
    pub(super) mirror: usize,
    /// The primary engine's number for this connection.
    pub(super) epoch: u64,
    pub(super) to_mirror: Link,
    pub(super) to_primary: Link,
    pub(super) mirror_dec: Decoder,
    pub(super) primary_dec: Decoder,
    pub(super) session: MirrorSession,
    pub(super) applier: Applier,
    /// What the mirror does with each batch, as the daemon does it.
    pub(super) policy: SessionPolicy,
    pub(super) sync_jobs: VecDeque<SyncJob>,
    /// The mirror's real watermarks (acknowledgements may not claim more).
    pub(super) synced: u64,
    pub(super) durable: u64,
    pub(super) primary_on: bool,
    pub(super) mirror_on: bool,
    /// Each side closed the connection: the other sees it after the bytes in flight.
    pub(super) primary_closed: bool,
    pub(super) mirror_closed: bool,
    /// Partitioned: everything sent is lost.
    pub(super) cut: bool,
    pub(super) mirror_heard: u64,
    pub(super) shutdown_seen: bool,
    /// The mirror's write rounds in flight, if it writes rounds.
    pub(super) rounds: Option<SimRounds>,
}

impl World {
    /// The primary `p` of `gen` connects to `m`: the mirror daemon's
    /// handshake checks (not faulted, not a stale generation, not busy),
    /// then a new session whose connection is the engine's `epoch`.
    pub(super) fn open_session(&mut self, p: usize, m: usize, gen: u64, epoch: u64) -> Result<(), String> {
        let mg = match self.nodes[m].role {
            Role::Mirror { faulted: true, .. } => return Err("the mirror faulted: its files are in doubt".into()),
            Role::Mirror { gen, .. } => gen,
            ref other => return Err(format!("no mirror listening ({other:?})")),
        };
        if gen < mg {
            return Err(format!("generation {gen} is older than the mirror's {mg}"));
        }
        if !self.nodes[m].reaches_arbiter && !self.nodes[p].reaches_arbiter {
            return Err("unreachable".into());
        }
        if self.session.as_ref().is_some_and(|s| s.mirror_on) {
            return Err("another primary is streaming to this mirror".into());
        }
        self.session = None;
        let rounds = self.session_rounds(0);
        // The daemon records the session durably before it acknowledges anything.
        self.nodes[m].streaming_boot = Some(self.nodes[m].boot);
        // The mirror adopts a newer generation before it accepts (persisted).
        self.nodes[m].role = Role::Mirror { gen, faulted: false };
        let (bs, fs) = (self.cfg.block_size, self.cfg.filespaces);
        self.session = Some(Session {
            primary: p,
            mirror: m,
            epoch,
            to_mirror: Link::new(),
            to_primary: Link::new(),
            mirror_dec: Decoder::new(),
            primary_dec: Decoder::new(),
            session: MirrorSession::new(bs, fs, 1),
            applier: {
                let mut a = Applier::new(self.nodes[m].data.clone(), 1);
                a.plant(self.cfg.bug);
                a
            },
            // Some mirrors checkpoint often: "durable through" keeps up,
            // and the primary's activity entries retire while it streams.
            policy: SessionPolicy::new(Checkpoints::every(
                self.now,
                if self.rng.gen_bool(0.5) { self.rng.gen_range(10..100) } else { 1000 },
            ))
            .with_bug(self.cfg.bug),
            sync_jobs: VecDeque::new(),
            synced: 0,
            durable: 0,
            primary_on: true,
            mirror_on: true,
            primary_closed: false,
            mirror_closed: false,
            cut: false,
            mirror_heard: self.now,
            shutdown_seen: false,
            rounds,
        });
        Ok(())
    }

    pub(super) fn drop_session_if_done(&mut self) {
        if self.session.as_ref().is_some_and(|s| !s.primary_on && !s.mirror_on) {
            self.session = None;
        }
    }

    /// The mirror sends its marks. Invariant 5: they tell the truth about
    /// what is applied: no write round through "applied" is still on its way.
    pub(super) fn mirror_ack(&mut self) -> Result<(), SimFailure> {
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if !s.mirror_on || s.mirror_closed || s.cut {
            return Ok(());
        }
        let ack =
            Ack { received: s.session.received(), applied: s.applier.applied(), synced: s.synced, durable: s.durable };
        if let Some((seq, _)) = s.rounds.as_ref().and_then(|r| r.in_flight.iter().find(|(seq, _)| *seq <= ack.applied))
        {
            let seq = *seq;
            return Err(self.fail(format!(
                "invariant 5: the mirror acknowledged applied through {} while its write round through {seq} was \
                 still on its way",
                ack.applied
            )));
        }
        s.to_primary.send(&mut self.rng, now, &ack.to_frame().to_vec());
        Ok(())
    }

    /// The mirror: take delivered bytes, validate, apply in random batches, acknowledge.
    pub(super) fn mirror_step(&mut self) -> Result<(), SimFailure> {
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if !s.mirror_on {
            return Ok(());
        }
        let bytes = s.to_mirror.deliver(now);
        if bytes.is_empty() {
            return Ok(());
        }
        s.mirror_heard = now;
        s.mirror_dec.feed(&bytes);
        let (mut ops, mut wake, mut shutdown, mut err) = (Vec::new(), false, false, None);
        loop {
            match s.mirror_dec.next_frame() {
                Ok(Some(f)) => match s.session.on_frame(&f) {
                    Ok(Step::Apply { seq, op, durable, catching_up }) => {
                        ops.push(Sequenced { seq, op, durable, catching_up })
                    }
                    Ok(Step::Heartbeat) => wake = true,
                    Ok(Step::Shutdown) => {
                        wake = true;
                        shutdown = true;
                    }
                    Err(e) => {
                        err = Some(format!("the mirror refused a frame: {e}"));
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    err = Some(format!("the mirror could not decode the primary's frames: {e}"));
                    break;
                }
            }
        }
        if let Some(e) = err {
            // The primary is the real engine: anything it sends must pass.
            return Err(self.fail(e));
        }
        // The receive's operations go in slices the seed picks (the daemon
        // takes whatever one receive brings); a heartbeat and the end of
        // the stream come with the last.
        let mut at = 0;
        loop {
            let k = if at < ops.len() { self.rng.gen_range(1..=ops.len() - at) } else { 0 };
            let last = at + k == ops.len();
            let slice = &ops[at..at + k];
            at += k;
            let takes = self
                .session
                .as_ref()
                .and_then(|s| s.rounds.as_ref())
                .is_some_and(|r| Applier::takes_round(&r.queue, slice));
            let batch =
                Batch { operations: k, round_takes_it: takes, heartbeat: last && wake, shutdown: last && shutdown };
            let something = k > 0 || batch.heartbeat || batch.shutdown;
            if something && !self.mirror_batch(now, slice, &batch)? {
                return Ok(());
            }
            if last {
                return Ok(());
            }
        }
    }

    /// One batch, by the session's policy as the daemon carries it out.
    /// False: the mirror stopped (it faulted, refused or crashed).
    fn mirror_batch(&mut self, now: u64, batch: &[Sequenced], b: &Batch) -> Result<bool, SimFailure> {
        let Some(s) = self.session.as_ref() else { return Ok(false) };
        let m = s.mirror;
        let placed = s.policy.place(b);
        for action in placed.iter() {
            let carried_on = match action {
                Action::DrainRounds => {
                    if self.session.as_ref().and_then(|s| s.rounds.as_ref()).is_some_and(|r| !r.in_flight.is_empty()) {
                        self.outcome(match Applier::stageable(batch) {
                            true => "mirror writes waited for a write round they overlap",
                            false => "mirror operation waited for the write rounds",
                        });
                    }
                    self.drain_rounds()?
                }
                Action::StageRound => self.stage_round(batch)?,
                Action::Apply => {
                    let fired = self.nodes[m].data.fired_total();
                    let Some(s) = self.session.as_mut() else { return Ok(false) };
                    match s.applier.apply(batch) {
                        Ok(_) => true,
                        Err(e) => {
                            self.mirror_apply_failed(m, fired, e)?;
                            false
                        }
                    }
                }
                Action::RequestFull | Action::QueueSync | Action::SendReplies | Action::Ack | Action::EndStream => true,
            };
            if !carried_on || !self.mirror_alive() {
                return Ok(false);
            }
        }
        let Some(s) = self.session.as_mut() else { return Ok(false) };
        let state = s.applier.state(s.durable);
        let after = s.policy.after(now, b, &placed, state);
        let mut hooked = false;
        for action in after.iter() {
            match action {
                Action::RequestFull => {
                    if let Some(s) = self.session.as_mut() {
                        s.applier.request_full();
                    }
                }
                Action::DrainRounds => {
                    if self.session.as_ref().and_then(|s| s.rounds.as_ref()).is_some_and(|r| !r.in_flight.is_empty()) {
                        self.outcome("mirror sync job waited for the write rounds");
                    }
                    if !self.drain_rounds()? {
                        return Ok(false);
                    }
                }
                Action::QueueSync => {
                    let Some(s) = self.session.as_mut() else { return Ok(false) };
                    let job = s.applier.take_sync_job();
                    if crate::core::mirror::acks_before_sync(self.cfg.bug) {
                        // The defect: acknowledged as durable before the syncer runs it.
                        s.synced = s.synced.max(job.through);
                        if let Some(d) = job.durable_through {
                            s.durable = s.durable.max(d);
                        }
                    }
                    s.sync_jobs.push_back(job);
                }
                Action::SendReplies => {
                    let Some(s) = self.session.as_mut() else { return Ok(false) };
                    let replies = s.applier.take_replies();
                    if !replies.is_empty() && s.primary_on && !s.cut {
                        for reply in replies {
                            s.to_primary.send(&mut self.rng, now, &reply.into_frame().to_vec());
                        }
                    }
                    if crate::core::mirror::acks_before_sync(self.cfg.bug) {
                        self.mirror_ack()?;
                    }
                }
                Action::Ack => {
                    hooked = true;
                    if !self.before_ack(m)? {
                        return Ok(false);
                    }
                    self.mirror_ack()?;
                }
                Action::EndStream => {
                    if let Some(s) = self.session.as_mut() {
                        s.shutdown_seen = true;
                    }
                }
                // Placements only.
                Action::StageRound | Action::Apply => {}
            }
        }
        if !hooked && !self.before_ack(m)? {
            return Ok(false);
        }
        Ok(true)
    }

    /// The crash point before the mirror acknowledges a batch (whether or
    /// not it does). False: the mirror is gone.
    fn before_ack(&mut self, m: usize) -> Result<bool, SimFailure> {
        // The hook names the pair by its primary.
        let primary = self.session.as_ref().map_or(1 - m, |s| s.primary);
        self.hook(Point::BeforeAck, primary)?;
        Ok(self.mirror_alive())
    }

    /// The mirror's syncer: run queued jobs, merged as the daemon merges them.
    pub(super) fn syncer_step(&mut self) -> Result<(), SimFailure> {
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if !s.mirror_on {
            return Ok(());
        }
        let Some(mut job) = s.sync_jobs.pop_front() else { return Ok(()) };
        while self.rng.gen_bool(0.5) {
            match s.sync_jobs.pop_front() {
                Some(more) => job.merge(more),
                None => break,
            }
        }
        let m = s.mirror;
        let disk = self.nodes[m].data.clone();
        let fired = disk.fired_total();
        match job.run(disk.as_ref()) {
            Err(e) => {
                if disk.fired_total() > fired {
                    // Rule 8: a failed fsync is never retried into a success.
                    self.mirror_fault(m);
                    return Ok(());
                }
                Err(self.fail(format!("mirror sync: {e}")))
            }
            Ok(through) => {
                let Some(s) = self.session.as_mut() else { return Ok(()) };
                let acked_early = crate::core::mirror::acks_before_sync(self.cfg.bug);
                if through < s.synced && !acked_early {
                    let had = s.synced;
                    return Err(self.fail(format!("synced went backwards: {through} < {had}")));
                }
                s.synced = s.synced.max(through);
                if let Some(d) = job.durable_through {
                    s.durable = s.durable.max(d);
                }
                self.mirror_ack()?;
                Ok(())
            }
        }
    }

    pub(super) fn mirror_alive(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.mirror_on)
    }

    /// The mirror's disk failed (rule 8): Fault, the session ends, the mirror refuses primaries.
    pub(super) fn mirror_fault(&mut self, m: usize) {
        self.outcome("mirror faulted");
        self.nodes[m].mirror_fault = true;
        if let Role::Mirror { faulted, .. } = &mut self.nodes[m].role {
            *faulted = true;
        }
        if let Some(s) = self.session.as_mut() {
            if s.mirror == m {
                s.mirror_on = false;
                s.mirror_closed = true;
                s.sync_jobs.clear();
                s.to_mirror.queue.clear();
                // Its files are in doubt: what rounds were on their way no longer matters.
                if let Some(r) = s.rounds.as_mut() {
                    r.in_flight.clear();
                }
            }
        }
        self.drop_session_if_done();
    }

    /// The mirror could not apply an operation (not its disk's fault): as
    /// the daemon does, it runs the sync jobs already queued, sends a Fault
    /// naming the operation and closes; the mirror stays in service.
    pub(super) fn mirror_refused(&mut self, seq: u64, why: &str) -> Result<(), SimFailure> {
        tracing::debug!(seed = self.seed, step = self.step, why, "sim: the mirror refused an operation");
        self.outcome("resync: the mirror refused an operation");
        self.resync.refusal.get_or_insert_with(|| why.to_string());
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if s.primary_on && !s.cut {
            let mut h = Header::new(Kind::Fault);
            h.seq = seq;
            let f = Frame::new(h, bytes::Bytes::from(why.as_bytes().to_vec()));
            s.to_primary.send(&mut self.rng, now, &f.to_vec());
        }
        self.end_mirror_side("refused an operation")
    }

    /// The mirror ends its session (not by a crash), as the daemon does:
    /// its rounds land, its syncer drains, what it applied is made durable;
    /// then what the policy says the end tells (`orderly`: the primary
    /// ended the stream and every sync job has run).
    pub(super) fn end_mirror_side(&mut self, why: &str) -> Result<(), SimFailure> {
        self.close_mirror_side(why, false)
    }

    fn close_mirror_side(&mut self, why: &str, orderly: bool) -> Result<(), SimFailure> {
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if !s.mirror_on {
            return Ok(());
        }
        tracing::debug!(seed = self.seed, step = self.step, why, "sim: the mirror ends its session");
        // Rounds in flight land before anything else.
        if s.rounds.as_ref().is_some_and(|r| !r.in_flight.is_empty()) {
            self.outcome("mirror session ended after its write rounds landed");
        }
        if !self.drain_rounds()? {
            return Ok(());
        }
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        s.to_mirror.queue.clear();
        let m = s.mirror;
        let jobs: Vec<SyncJob> = s.sync_jobs.drain(..).collect();
        let disk = self.nodes[m].data.clone();
        let fired = disk.fired_total();
        let mut r = jobs.iter().try_for_each(|j| j.run(disk.as_ref()).map(drop));
        if r.is_ok() {
            if let Some(s) = self.session.as_mut() {
                if policy::final_sync_due(false, s.applier.has_unsynced()) {
                    r = s.applier.sync_all();
                    if r.is_ok() {
                        // The final sync's marks, as the daemon's syncer sets them.
                        let applied = s.applier.applied();
                        s.synced = s.synced.max(applied);
                        s.durable = s.durable.max(applied);
                    }
                }
            }
        }
        let sync_failed = match r {
            Ok(()) => false,
            Err(_) if disk.fired_total() > fired => {
                self.outcome("mirror final sync failed");
                true
            }
            Err(e) => return Err(self.fail(format!("mirror final sync: {e}"))),
        };
        // What the end tells is the policy's, as in the daemon: after a
        // failed sync nothing is reported durable (rule 8).
        let closing = policy::closing(orderly, false, sync_failed);
        if closing.final_ack {
            self.mirror_ack()?;
        }
        if closing.clear_record {
            // Everything the session applied is durable.
            self.nodes[m].streaming_boot = None;
        }
        if sync_failed {
            self.mirror_fault(m);
            return Ok(());
        }
        if let Some(s) = self.session.as_mut() {
            s.mirror_on = false;
            s.mirror_closed = true;
        }
        self.drop_session_if_done();
        Ok(())
    }

    /// The mirror's side of silence and closing.
    pub(super) fn mirror_timers(&mut self) -> Result<(), SimFailure> {
        let now = self.now;
        let Some(s) = self.session.as_ref() else { return Ok(()) };
        if s.mirror_on && !s.shutdown_seen {
            let silent = now.saturating_sub(s.mirror_heard) > ACK_TIMEOUT_MS;
            let closed = s.primary_closed && s.to_mirror.is_empty();
            if silent || closed {
                self.end_mirror_side("silence or the primary closed")?;
            }
        } else if s.mirror_on && s.shutdown_seen && s.sync_jobs.is_empty() && s.to_mirror.is_empty() {
            // The stream's end, once its sync jobs have run.
            self.close_mirror_side("orderly end", true)?;
        }
        Ok(())
    }
}
