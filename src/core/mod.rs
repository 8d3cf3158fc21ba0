//! I/O-free state machines: events in, decisions out. No threads, files,
//! sockets or clocks inside, so they are tested exhaustively without any.

pub mod arbiter;
pub mod fence;
pub mod lease;
pub mod mirror;
pub mod pair;
pub mod primary;
pub mod resync;
pub mod rounds;

/// A deliberate defect in the rules, switched on only by the simulator (a
/// field no runtime sets), to show that its checks catch a broken rule of
/// the code that ships, not of a model. Each names the rule it breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlantedBug {
    /// Rule 4: in change tracking, block writes are not recorded first.
    SkipRecordBlock,
    /// Rule 5: while streaming, changes are not covered in the activity log first.
    SkipActivityCover,
    /// Rule 2: a data write returns once written locally, without the mirror.
    AckWithoutMirror,
    /// Rule 5: activity entries are retired without first making this
    /// host's own writes durable.
    DropActivityWithoutLocalSync,
    /// A local sync fdatasyncs the file but no changed directory: a file
    /// created or renamed since loses its name in a power loss.
    SyncWithoutDirectory,
    /// Rule 6: a resync copy is read, then the file let go before the copy
    /// is queued: a write in between is queued before the older copy.
    ResyncCopyWithoutLock,
    /// A resync checkpoint clears its entries once the mirror has applied
    /// the flush, not synced it.
    ResyncCheckpointBeforeSynced,
    /// Calls during a resync are not flagged as catching up.
    ResyncWithoutCatchingUp,
    /// A rename during a resync of a path it still owes is not recorded for
    /// another pass.
    ResyncRenameWithoutAnotherPass,
    /// A resync's checkpoint and final clear also drop the activity table's entries.
    ResyncClearDropsActivity,
    /// A resync clears entries without first making this host's copy durable.
    ResyncClearWithoutLocalSync,
    /// Taking the mirror back pins nothing and keeps the activity table.
    RetireDropsTrackedPaths,
    /// The resync takes its redo set while a rename is between recording
    /// its target and renaming (the set was once taken without the
    /// namespace lock).
    RedoWhileRenaming,
    /// A resync flush lets writes of its file still in their local step
    /// through (the flush once took its file's lock shared).
    ResyncFlushWithWritesInFlight,
    /// The loss decision waits for every call to leave its claims, while
    /// calls parked for the decision hold theirs (the "no decision in time"
    /// deadlock, once through the marks lock).
    DecisionDrainsCalls,
    /// Rule 7: the arbiter orders a promoted mirror to serve in the
    /// generation it was promoted from, so a primary cut off from the
    /// arbiter and the new one both write in one generation.
    PromoteInSameGeneration,
    /// A full resync does not record what its walk covered once the walk
    /// is done, so every rename until its end owes another pass.
    FullResyncWithoutWalkCheckpoint,
    /// The mirror's applier makes files and names durable without the
    /// fsync of a directory whose entries changed (a create or a rename):
    /// after a power cut the name is gone although the flush was acknowledged.
    MirrorSkipsDirectorySync,
    /// The mirror acknowledges a flush (its synced and durable marks)
    /// before the fdatasync that makes it so.
    FlushAckBeforeSync,
    /// Rule 4 out of order: in change tracking a block is written locally
    /// first and recorded in the change-log after.
    RecordAfterLocalWrite,
    /// The mirror puts a write round on its way over a range that a round
    /// still in flight writes: the two can land in either order.
    RoundsOverlap,
    /// The mirror applies an operation in place while write rounds sent
    /// before it are still on their way: it can pass them.
    ApplyPastRounds,
    /// The mirror counts a write round applied when it lands, though a round
    /// sent before it is still on its way: "applied" passes a write.
    RoundsRetireOutOfOrder,
    /// Rule 8 broken: the primary's local sync before it retires
    /// activity-log entries fails, and it goes on serving instead of
    /// faulting (as if a later sync could make those files durable).
    RetireSyncFailureForgiven,
    /// Rule 8 across a restart broken: a segment whose primary faulted
    /// takes its next role (or hands its change set over) with the fault
    /// note cleared but nothing rewritten, so pages a failed fsync let go
    /// stay readable here and absent from its disk.
    FaultNoteIgnored,
    /// Rule 2 broken for a host whose changes are queued ([`primary::Wait`]):
    /// its syncs return queued too, before the mirror has them durably.
    SyncQueued,
    /// Rule 8 broken for a mirror: `filerep recover` has a mirror whose disk
    /// failed forget its fault for an incremental resync (which may
    /// compare), so pages its failed fsync let go, readable there and
    /// absent from its disk, are never shipped again.
    RebuildFaultedIncrementally,
}

/// The environment variable that plants a defect in a real process
/// ([`PlantedBug::from_env`]).
pub const PLANTED_BUG_ENV: &str = "FILEREP_PLANTED_BUG";

/// The defect planted in this process by [`PLANTED_BUG_ENV`], read once
/// (the runtime's engines, applier and syncer; the simulator sets its own).
pub fn planted_in_process() -> Option<PlantedBug> {
    static PLANTED: std::sync::OnceLock<Option<PlantedBug>> = std::sync::OnceLock::new();
    *PLANTED.get_or_init(|| PlantedBug::from_env().ok().flatten())
}

impl PlantedBug {
    /// Every defect with its name on the command line (`filerep sim --faults --bug NAME`).
    pub const ALL: [(PlantedBug, &'static str); 27] = [
        (PlantedBug::SkipRecordBlock, "skip-record-block"),
        (PlantedBug::SkipActivityCover, "skip-activity-cover"),
        (PlantedBug::AckWithoutMirror, "ack-without-mirror"),
        (PlantedBug::DropActivityWithoutLocalSync, "drop-activity-without-local-sync"),
        (PlantedBug::SyncWithoutDirectory, "sync-without-directory"),
        (PlantedBug::ResyncCopyWithoutLock, "resync-copy-without-lock"),
        (PlantedBug::ResyncCheckpointBeforeSynced, "resync-checkpoint-before-synced"),
        (PlantedBug::ResyncWithoutCatchingUp, "resync-without-catching-up"),
        (PlantedBug::ResyncRenameWithoutAnotherPass, "resync-rename-without-another-pass"),
        (PlantedBug::ResyncClearDropsActivity, "resync-clear-drops-activity"),
        (PlantedBug::ResyncClearWithoutLocalSync, "resync-clear-without-local-sync"),
        (PlantedBug::RetireDropsTrackedPaths, "retire-drops-tracked-paths"),
        (PlantedBug::RedoWhileRenaming, "redo-while-renaming"),
        (PlantedBug::ResyncFlushWithWritesInFlight, "resync-flush-with-writes-in-flight"),
        (PlantedBug::DecisionDrainsCalls, "decision-drains-calls"),
        (PlantedBug::PromoteInSameGeneration, "promote-in-same-generation"),
        (PlantedBug::FullResyncWithoutWalkCheckpoint, "full-resync-without-walk-checkpoint"),
        (PlantedBug::MirrorSkipsDirectorySync, "mirror-skips-directory-sync"),
        (PlantedBug::FlushAckBeforeSync, "flush-ack-before-sync"),
        (PlantedBug::RecordAfterLocalWrite, "record-after-local-write"),
        (PlantedBug::RoundsOverlap, "rounds-overlap"),
        (PlantedBug::ApplyPastRounds, "apply-past-rounds"),
        (PlantedBug::RoundsRetireOutOfOrder, "rounds-retire-out-of-order"),
        (PlantedBug::RetireSyncFailureForgiven, "retire-sync-failure-forgiven"),
        (PlantedBug::FaultNoteIgnored, "fault-note-ignored"),
        (PlantedBug::SyncQueued, "sync-queued"),
        (PlantedBug::RebuildFaultedIncrementally, "rebuild-faulted-incrementally"),
    ];

    /// The defect a real `filerep` process plants, named by the
    /// `FILEREP_PLANTED_BUG` environment variable (for the power-cut tests
    /// only; read once, and said loudly in the log). An unknown name is
    /// refused at start rather than ignored.
    pub fn from_env() -> Result<Option<PlantedBug>, String> {
        match std::env::var(PLANTED_BUG_ENV) {
            Ok(v) if !v.is_empty() => v.parse().map(Some).map_err(|e| format!("{PLANTED_BUG_ENV}: {e}")),
            _ => Ok(None),
        }
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(b, _)| *b == self).map(|(_, n)| *n).unwrap_or("unknown")
    }
}

impl std::str::FromStr for PlantedBug {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().find(|(_, name)| *name == s).map(|(b, _)| *b).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|(_, n)| *n).collect();
            format!("unknown defect {s:?}; one of {}", names.join(", "))
        })
    }
}
