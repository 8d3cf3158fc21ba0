//! The simulator's own tests: each planted defect in the shipped rules is
//! caught by an invariant, seeds replay identically, the failing disk fails
//! as aimed.

use super::faulty::{FaultyDisk, Fired};
use super::*;
use crate::io::disk::{Disk, DiskErrorKind, OpenMode, SimDisk};

/// The first seed in `0..limit` on which `bug` breaks `invariant` (one of
/// them, `|`-separated: a lost durability shows as a divergence while the
/// pair runs or after its repair, whichever the schedule reaches first);
/// that seed must pass without the bug, so the failure is the bug's doing.
pub(super) fn caught(bug: PlantedBug, invariant: &str, limit: u64) -> u64 {
    caught_in(bug, invariant, 0..limit)
}

/// The same, over `seeds`.
pub(super) fn caught_in(bug: PlantedBug, invariant: &str, seeds: std::ops::Range<u64>) -> u64 {
    caught_with(bug, invariant, seeds, FaultConfig::default())
}

/// The same, with schedules shaped by `base` (its defect is `bug`).
pub(super) fn caught_with(bug: PlantedBug, invariant: &str, seeds: std::ops::Range<u64>, base: FaultConfig) -> u64 {
    let clean_cfg = FaultConfig { bug: None, ..base.clone() };
    let cfg = FaultConfig { bug: Some(bug), ..base };
    for seed in seeds.clone() {
        if let Err(f) = run_faults(seed, &cfg) {
            assert!(invariant.split('|').any(|i| f.message.starts_with(i)), "{bug:?} broke something else first: {f}");
            assert!(
                f.faults && f.to_string().contains("sim --faults --bug"),
                "the replay names the fault simulation: {f}"
            );
            if let Err(clean) = run_faults(seed, &clean_cfg) {
                panic!("seed {seed} fails without {bug:?} too: {clean}");
            }
            return seed;
        }
    }
    panic!("{bug:?} went unnoticed over seeds {seeds:?}");
}

/// Every planted defect the random schedules reach is caught within the
/// first 500 seeds (a copy let go before it is queued: 1,000; it is caught
/// about once in 250 seeds), by the invariant it breaks. (The three races that need
/// one exact interleaving have scripted schedules in `core::primary::tests`
/// and `core::resync::tests`.)
#[test]
fn planted_defects_are_caught_by_the_invariant_they_break() {
    use PlantedBug::*;
    for (bug, invariant, seeds) in [
        (SkipRecordBlock, "invariant 3", 500),
        (SkipActivityCover, "invariant 3", 500),
        (AckWithoutMirror, "invariant 1", 500),
        (DropActivityWithoutLocalSync, "invariant 3|invariant 4", 500),
        (SyncWithoutDirectory, "invariant 1", 500),
        (ResyncCopyWithoutLock, "invariant 3|invariant 4", 1000),
        (ResyncCheckpointBeforeSynced, "invariant 3", 500),
        (ResyncWithoutCatchingUp, "resync liveness", 500),
        (ResyncRenameWithoutAnotherPass, "invariant 3|invariant 4", 500),
        (ResyncClearDropsActivity, "invariant 3", 500),
        (ResyncClearWithoutLocalSync, "invariant 3", 500),
        (RetireDropsTrackedPaths, "invariant 3|invariant 4", 500),
        (DecisionDrainsCalls, "the pair did not settle", 500),
        (MirrorSkipsDirectorySync, "invariant 3", 500),
        (FlushAckBeforeSync, "invariant 3", 500),
        (RoundsOverlap, "invariant", 500),
        (ApplyPastRounds, "invariant", 500),
        (RoundsRetireOutOfOrder, "invariant 5", 500),
        (FaultNoteIgnored, "invariant 3", 500),
        (RebuildFaultedIncrementally, "invariant 3|invariant 4", 500),
    ] {
        caught(bug, invariant, seeds);
    }
    // At seed 0 a restore starts the old primary again, told an older
    // generation than the pair's, and the pair does not settle; invariant 2
    // catches it from seed 2.
    caught_in(PromoteInSameGeneration, "invariant 2", 1..500);
}

/// A block written before its change-log record matters only when the
/// writer's host loses power alone in change tracking between the two and
/// the torn write keeps part of a block written for the first time since
/// the mirror left; then the restore's incremental resync misses it. Rare
/// in random schedules: first caught at seed 9919 (2139 before one write in
/// eight carried its flush and the schedules shifted).
#[test]
fn a_record_after_the_local_write_is_caught_by_invariant_3() {
    // Caught about once in several thousand seeds (seed 9919 is the first
    // today): the search starts near it, so the test stays short. Whatever
    // seed it finds must pass without the defect (`caught_in`).
    caught_in(PlantedBug::RecordAfterLocalWrite, "invariant 3", 9800..10300);
}

/// Rule 8 at the primary: a failed fsync lets the file's pages go (the
/// simulated disk, as Linux, never writes them), so a primary that goes on
/// after its sync before retiring activity entries failed keeps serving
/// data its disk does not hold. Found by the steady schedules (the first
/// seed is 1481 today); the search starts near it to keep the test short.
#[test]
fn a_primary_that_forgives_a_failed_sync_is_caught_by_invariant_4() {
    let steady = FaultConfig { steady: true, ..FaultConfig::default() };
    caught_with(PlantedBug::RetireSyncFailureForgiven, "invariant 4", 1400..1600, steady);
}

/// A host that queues its changes (the mount) is promised a change only by
/// a later sync: a sync that returned queued too breaks invariant 1 in the
/// queued schedules. It needs the acting primary lost while the mirror
/// lags behind a sync that returned, on a stream at the default level (a
/// durable stream never returns queued): the first seed is 478 today.
#[test]
fn a_sync_that_returns_queued_is_caught_by_invariant_1() {
    let queued = FaultConfig { queued: true, ..FaultConfig::default() };
    caught_with(PlantedBug::SyncQueued, "invariant 1", 0..700, queued);
}

#[test]
fn defects_are_named() {
    for (bug, name) in PlantedBug::ALL {
        assert_eq!(name.parse::<PlantedBug>(), Ok(bug));
        assert_eq!(bug.name(), name);
    }
    assert!("no-such-bug".parse::<PlantedBug>().is_err());
}

#[test]
fn seeds_replay_identically() {
    let cfg = FaultConfig { operations: 150, ..FaultConfig::default() };
    for seed in 0..20 {
        let a = run_faults(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
        let b = run_faults(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!((a.operations, a.acked, a.virtual_ms), (b.operations, b.acked, b.virtual_ms));
        assert_eq!((&a.faults, &a.outcomes, &a.commands), (&b.faults, &b.outcomes, &b.commands));
    }
}

/// The injecting disk: each fault fires once, where it was aimed.
#[test]
fn the_faulty_disk_fires_each_fault_once() {
    let sim = Arc::new(SimDisk::new(1));
    let disk = FaultyDisk::new(sim.clone());
    let p = FsPath::new(0, RelPath::new("f").unwrap());
    let f = disk.open(&p, OpenMode::CreateNew).unwrap();
    f.write_at(0, b"durable").unwrap();
    f.sync_data().unwrap();
    disk.sync_parent_dir(&p).unwrap();
    disk.fail_next_sync();
    f.write_at(0, b"lost").unwrap();
    assert!(f.sync_data().is_err());
    assert_eq!(sim.durable_snapshot().get(&(0, "f".into())), Some(&SimEntry::File(b"durable".to_vec())));
    // Never retried into a success: as on Linux, the pages the failed sync
    // let go are not written by a later one (the live image still has them).
    f.sync_data().unwrap();
    assert_eq!(sim.durable_snapshot().get(&(0, "f".into())), Some(&SimEntry::File(b"durable".to_vec())));
    assert_eq!(sim.snapshot().get(&(0, "f".into())), Some(&SimEntry::File(b"lostble".to_vec())));
    disk.no_space_next();
    assert_eq!(f.write_at(100, b"x").unwrap_err().kind, DiskErrorKind::NoSpace);
    f.write_at(100, b"x").unwrap();
    // Power goes at the second mutating call from now: the write lands, then nothing works.
    disk.lose_power_in(1);
    f.write_at(0, b"a").unwrap();
    assert!(f.write_at(0, b"torn").is_err());
    assert!(disk.power_lost());
    assert!(f.len().is_err() && disk.create_dir(&FsPath::new(0, RelPath::new("d").unwrap())).is_err());
    assert_eq!(disk.take_fired(), vec![Fired::Fsync, Fired::NoSpace, Fired::PowerLoss]);
    sim.crash(Some(2));
    disk.reset();
    let g = disk.open(&p, OpenMode::Existing).unwrap();
    let mut b = [0u8; 4];
    g.read_at(0, &mut b).unwrap();
    // Durable was "durable" (the failed sync let "lost" go); the write in
    // flight ("torn") kept two bytes.
    assert_eq!(&b, b"tora");
}
