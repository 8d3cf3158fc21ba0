//! What the mirror's session does with each batch of frames it takes from a
//! receive, and at its end, in order, as actions without I/O. The mirror
//! daemon (`runtime::mirror`) and the simulator's mirror carry out exactly
//! these, so the simulator checks the daemon's order rather than a copy.
//!
//! - A batch of plain writes that a write round takes goes on its way
//!   ([`super::super::rounds`]); the round acknowledges it when it lands.
//! - Anything else waits until every round in flight has landed, then is
//!   applied in place: an operation never passes a write sent before it.
//! - A sync job covers landed writes only: the rounds drain before one is
//!   queued.
//! - A full sync job (a checkpoint) when the stream ends, when too many
//!   files are dirty, and at least every interval while anything applied is
//!   not durable.
//! - The primary hears back after each batch applied in place and after a
//!   heartbeat; not after the batch that ends the stream, whose answer is
//!   the final acknowledgement, once everything is durable.
//! - However the session ends: the rounds land (or fail), then everything
//!   applied is made durable unless applying failed ([`final_sync_due`],
//!   [`closing`]).

use crate::core::PlantedBug;

/// How often a mirror makes everything durable (its checkpoint), at least:
/// it bounds how far "durable through" lags what was applied.
pub const CHECKPOINT_MS: u64 = 1000;

/// One thing the session does, in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Wait until every write round in flight has landed; count them applied.
    DrainRounds,
    /// Stage the batch's writes and hand them to a write round.
    StageRound,
    /// Apply the batch on the session's thread.
    Apply,
    /// Make the next sync job a full one (a checkpoint).
    RequestFull,
    /// Queue the applier's sync job for the syncer.
    QueueSync,
    /// Send the answers the batch asked for (hashes, listings).
    SendReplies,
    /// Send the primary the marks.
    Ack,
    /// The stream ended in order: the session ends ([`closing`]).
    EndStream,
}

/// Actions in order; a batch never needs more than this holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    list: [Option<Action>; 6],
}

impl Actions {
    fn of(actions: &[Action]) -> Actions {
        let mut a = Actions::default();
        for &x in actions {
            a.push(x);
        }
        a
    }

    fn push(&mut self, action: Action) {
        // The lists below are at most five long: a sixth would be a bug here.
        debug_assert!(self.list.iter().any(Option::is_none), "more actions than a batch takes");
        if let Some(slot) = self.list.iter_mut().find(|s| s.is_none()) {
            *slot = Some(action);
        }
    }

    pub fn contains(&self, action: Action) -> bool {
        self.list.contains(&Some(action))
    }

    pub fn iter(&self) -> impl Iterator<Item = Action> + '_ {
        self.list.iter().map_while(|a| *a)
    }
}

/// One batch: the operations of a receive (or the simulator's slice of
/// one) and what came with them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Batch {
    /// Operations to apply; none for a heartbeat alone.
    pub operations: usize,
    /// A write round would take them (`Applier::takes_round`); false for a
    /// session that writes no rounds.
    pub round_takes_it: bool,
    /// A heartbeat came with them: the primary waits to hear back.
    pub heartbeat: bool,
    /// They end the stream (a Shutdown frame).
    pub shutdown: bool,
}

/// What the executor reports about itself after a batch
/// (`Applier::state`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyState {
    /// Something applied asked for a sync job (a flush, a durable operation).
    pub wants_sync: bool,
    /// As many files are dirty as a sync job may hold open.
    pub too_many_dirty: bool,
    /// Something applied is not durable yet.
    pub unsynced: bool,
    /// "Durable through" is behind "applied through" (an empty checkpoint
    /// still moves it up, after operations that changed nothing).
    pub durable_behind: bool,
}

/// The session's rules for its batches, with its checkpoint clock.
#[derive(Clone, Debug)]
pub struct SessionPolicy {
    checkpoints: Checkpoints,
    bug: Option<PlantedBug>,
}

impl SessionPolicy {
    pub fn new(checkpoints: Checkpoints) -> SessionPolicy {
        SessionPolicy { checkpoints, bug: None }
    }

    /// The simulator's planted defect, if any.
    pub fn with_bug(mut self, bug: Option<PlantedBug>) -> SessionPolicy {
        self.bug = bug;
        self
    }

    /// Where the batch goes: on its way as a round, or applied here once the
    /// rounds in flight have landed. Nothing for a heartbeat alone.
    pub fn place(&self, b: &Batch) -> Actions {
        if b.operations == 0 {
            Actions::default()
        } else if b.round_takes_it && !b.shutdown {
            Actions::of(&[Action::StageRound])
        } else if self.bug == Some(PlantedBug::ApplyPastRounds) {
            Actions::of(&[Action::Apply])
        } else {
            Actions::of(&[Action::DrainRounds, Action::Apply])
        }
    }

    /// After the batch is placed: the checkpoint, the sync job the batch or
    /// the checkpoint asks for, the answers, and the primary's
    /// acknowledgement or the end of the stream.
    pub fn after(&mut self, now_ms: u64, b: &Batch, placed: &Actions, state: ApplyState) -> Actions {
        let mut a = Actions::default();
        let full = self.checkpoints.full_due(now_ms, b.shutdown, state);
        if full {
            a.push(Action::RequestFull);
        }
        if full || state.wants_sync {
            a.push(Action::DrainRounds);
            a.push(Action::QueueSync);
        }
        a.push(Action::SendReplies);
        if b.shutdown {
            a.push(Action::EndStream);
        } else if !placed.contains(Action::StageRound) || b.heartbeat {
            // A staged batch is acknowledged by its round when it lands.
            a.push(Action::Ack);
        }
        a
    }
}

/// At the end of a session, whatever ended it, once its rounds have landed
/// or failed: whether a final full sync of what it applied is due. Not when
/// applying failed (the files are in doubt, rule 8) or nothing is unsynced.
pub fn final_sync_due(apply_failed: bool, unsynced: bool) -> bool {
    !apply_failed && unsynced
}

/// What the end of a session tells, after its final sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closing {
    /// Everything the session applied is durable: its record ("streaming in
    /// this boot") is cleared, so a power loss now keeps the mirror promotable.
    pub clear_record: bool,
    /// The primary gets the final acknowledgement (an orderly end only).
    pub final_ack: bool,
}

pub fn closing(orderly: bool, apply_failed: bool, sync_failed: bool) -> Closing {
    let durable = !apply_failed && !sync_failed;
    Closing { clear_record: durable, final_ack: durable && orderly }
}

/// Whether the mirror's syncer acknowledges a sync job's marks before it
/// runs the job. Never: synced and durable mean on the mirror's disk (rule
/// 2); only the planted defect `FlushAckBeforeSync` does. The daemon's
/// syncer and the simulator's both ask here.
pub fn acks_before_sync(bug: Option<PlantedBug>) -> bool {
    bug == Some(PlantedBug::FlushAckBeforeSync)
}

/// The mirror's durability policy after each batch it applied: whether to
/// make everything durable now (a full checkpoint) rather than only what
/// the batch asked for.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    last_full_ms: u64,
    interval_ms: u64,
}

impl Checkpoints {
    pub fn new(now_ms: u64) -> Checkpoints {
        Checkpoints::every(now_ms, CHECKPOINT_MS)
    }

    /// A checkpoint at least every `interval_ms` (the simulator varies it).
    pub fn every(now_ms: u64, interval_ms: u64) -> Checkpoints {
        Checkpoints { last_full_ms: now_ms, interval_ms: interval_ms.max(1) }
    }

    /// Whether the next sync job must be a full one (`shutdown`: the batch
    /// ended the stream).
    pub fn full_due(&mut self, now_ms: u64, shutdown: bool, s: ApplyState) -> bool {
        let due = shutdown
            || s.too_many_dirty
            || ((s.unsynced || s.durable_behind) && now_ms.saturating_sub(self.last_full_ms) >= self.interval_ms);
        if due {
            self.last_full_ms = now_ms;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(round_takes_it: bool) -> Batch {
        Batch { operations: 3, round_takes_it, ..Batch::default() }
    }

    fn list(a: Actions) -> Vec<Action> {
        a.iter().collect()
    }

    #[test]
    fn a_batch_a_round_takes_goes_on_its_way_and_its_round_acknowledges_it() {
        let mut p = SessionPolicy::new(Checkpoints::every(0, 1000));
        let b = writes(true);
        let placed = p.place(&b);
        assert_eq!(list(placed), [Action::StageRound]);
        assert_eq!(list(p.after(1, &b, &placed, ApplyState::default())), [Action::SendReplies]);
        // A heartbeat with it waits for an answer now.
        let b = Batch { heartbeat: true, ..b };
        assert_eq!(list(p.after(1, &b, &placed, ApplyState::default())), [Action::SendReplies, Action::Ack]);
    }

    #[test]
    fn anything_else_waits_for_the_rounds_in_flight_then_applies_here() {
        let p = SessionPolicy::new(Checkpoints::every(0, 1000));
        assert_eq!(list(p.place(&writes(false))), [Action::DrainRounds, Action::Apply]);
        // The batch that ends the stream is applied here, rounds or not.
        let end = Batch { shutdown: true, ..writes(true) };
        assert_eq!(list(p.place(&end)), [Action::DrainRounds, Action::Apply]);
        // A heartbeat alone places nothing.
        assert_eq!(list(p.place(&Batch { heartbeat: true, ..Batch::default() })), []);
        let planted = p.clone().with_bug(Some(PlantedBug::ApplyPastRounds));
        assert_eq!(list(planted.place(&writes(false))), [Action::Apply]);
    }

    #[test]
    fn a_sync_job_waits_for_the_rounds_and_a_checkpoint_makes_it_full() {
        let mut p = SessionPolicy::new(Checkpoints::every(0, 1000));
        let b = writes(false);
        let placed = p.place(&b);
        let unsynced = ApplyState { unsynced: true, ..ApplyState::default() };
        assert_eq!(
            list(p.after(10, &b, &placed, ApplyState { wants_sync: true, ..unsynced })),
            [Action::DrainRounds, Action::QueueSync, Action::SendReplies, Action::Ack]
        );
        // The interval passed with something not durable: a full job.
        assert_eq!(
            list(p.after(1000, &b, &placed, unsynced)),
            [Action::RequestFull, Action::DrainRounds, Action::QueueSync, Action::SendReplies, Action::Ack]
        );
        // Just after a checkpoint, nothing asked: no job.
        assert_eq!(list(p.after(1001, &b, &placed, unsynced)), [Action::SendReplies, Action::Ack]);
    }

    #[test]
    fn the_end_of_the_stream_syncs_everything_and_answers_only_after() {
        let mut p = SessionPolicy::new(Checkpoints::every(0, 1000));
        let b = Batch { shutdown: true, ..writes(false) };
        let placed = p.place(&b);
        // A full job at once, whatever the interval; no acknowledgement yet.
        assert_eq!(
            list(p.after(1, &b, &placed, ApplyState::default())),
            [Action::RequestFull, Action::DrainRounds, Action::QueueSync, Action::SendReplies, Action::EndStream]
        );
        assert!(final_sync_due(false, true));
        assert!(!final_sync_due(true, true), "applying failed: nothing is made to look durable");
        assert!(!final_sync_due(false, false));
        assert_eq!(closing(true, false, false), Closing { clear_record: true, final_ack: true });
        assert_eq!(closing(false, false, false), Closing { clear_record: true, final_ack: false });
        assert_eq!(closing(true, false, true), Closing { clear_record: false, final_ack: false });
        assert_eq!(closing(false, true, false), Closing { clear_record: false, final_ack: false });
    }
}
