//! The change-log's own tests: replay, torn tails, compaction, clearing,
//! group commit, and the resync's rename bookkeeping.

use super::*;
use crate::io::disk::{SimDisk, SimFault};
use crate::protocol::path::RelPath;
use rand::{Rng, SeedableRng};

fn p(s: &str) -> FsPath {
    FsPath::new(0, RelPath::new(s).unwrap())
}

/// Power lost (everything not synced gone), then the change-log opened again.
fn crash_and_reopen(disk: &Arc<SimDisk>) -> ChangeLog {
    disk.crash(None);
    ChangeLog::open(disk.clone(), log_path()).unwrap().0
}

fn log_path() -> FsPath {
    p("changelog")
}

#[test]
fn cleared_entries_stay_cleared_after_replay_and_compaction() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    log.record_batch((0..64).map(|b| (p("f"), b)), [(p("d"), true), (p("e"), false)]).unwrap();
    let mut done = BTreeMap::new();
    done.insert(p("f"), (0..40).collect::<BTreeSet<u64>>());
    log.clear_entries(&done, &[p("d")]).unwrap();
    let log = crash_and_reopen(&disk);
    let set = log.change_set();
    assert_eq!(set.blocks.get(&p("f")).map(|b| b.len()), Some(24));
    assert!(!set.covers_block(&p("f"), 39) && set.covers_block(&p("f"), 40));
    assert_eq!(set.touched.keys().cloned().collect::<Vec<_>>(), vec![p("e")]);
    log.compact().unwrap();
    let (log, _) = ChangeLog::open(disk, log_path()).unwrap();
    assert_eq!(log.change_set(), set, "compaction keeps exactly what is left");
}

/// A rename during a resync moves what is still owed under its source
/// to its target (blocks, paths, through a replay too) and keeps the
/// target for another pass; what a checkpoint names as of a position
/// is cleared where renames since moved it, and not at all where
/// something else was renamed over it.
#[test]
fn a_rename_moves_what_is_owed_and_a_checkpoint_follows_it() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    log.record_batch((0..8).map(|b| (p("d/f"), b)), [(p("d/g"), false)]).unwrap();
    log.pin_touched();
    log.start_resync();
    let at = log.rename_position();
    assert!(!log.rename_owed(&p("x"), &p("y"), false).unwrap(), "nothing owed under x");
    assert!(log.rename_owed(&p("d"), &p("e"), false).unwrap());
    let redo = log.take_redo();
    assert_eq!(redo.blocks.get(&p("e/f")).map(|b| b.len()), Some(8), "{redo:?}");
    assert_eq!(redo.touched.keys().cloned().collect::<Vec<_>>(), vec![p("e/g")]);
    assert!(log.take_redo().is_empty(), "taken once");
    // Shipped as d/f and d/g before the rename: cleared as e/f and e/g.
    let shipped = BTreeMap::from([(p("d/f"), (0..4).collect::<BTreeSet<u64>>())]);
    log.clear_entries_as_of(&shipped, &[p("d/g")], &BTreeMap::new(), &BTreeSet::new(), at).unwrap();
    let set = log.resync_set();
    assert_eq!(set.blocks.get(&p("e/f")).map(|b| b.len()), Some(4), "{set:?}");
    assert!(!set.touched.contains_key(&p("e/g")));
    // Something renamed over e/f: what was shipped as d/f says nothing of it.
    let at = log.rename_position();
    log.rename_owed(&p("z"), &p("e/f"), false).unwrap();
    let shipped = BTreeMap::from([(p("e/f"), (4..8).collect::<BTreeSet<u64>>())]);
    log.clear_entries_as_of(&shipped, &[], &BTreeMap::new(), &BTreeSet::new(), at).unwrap();
    assert_eq!(log.resync_set().blocks.get(&p("e/f")).map(|b| b.len()), Some(4));
    // The move is durable: a replay names e/f.
    let log = crash_and_reopen(&disk);
    assert!(log.change_set().covers_block(&p("e/f"), 7));
}

/// A resync clearing a run that holds a live activity-log extent and
/// path: both stay recorded, through a crash too (the extent is written
/// again after the run's Cleared record), and are no longer pinned.
#[test]
fn clearing_keeps_the_activity_logs_live_entries_across_a_crash() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    log.record_batch((0..64).map(|b| (p("f"), b)), [(p("d"), true)]).unwrap();
    log.record_extents(&p("f"), 0, 63).unwrap();
    let mut live = BTreeMap::new();
    live.insert(p("f"), BTreeSet::from([1u64]));
    log.pin_extents_of(&live);
    log.pin_touched();
    let mut done = BTreeMap::new();
    done.insert(p("f"), (0..64).collect::<BTreeSet<u64>>());
    log.clear_entries_keeping(&done, &[p("d")], &live, &BTreeSet::from([p("d")])).unwrap();
    let set = log.change_set();
    assert!(set.blocks.is_empty());
    assert!(!set.covers_block(&p("f"), 0) && set.covers_block(&p("f"), 32), "{set:?}");
    assert_eq!(set.touched.get(&p("d")), Some(&true));
    assert!(log.resync_set().extents.is_empty(), "no longer pinned: {:?}", log.resync_set());
    let log = crash_and_reopen(&disk);
    assert_eq!(log.change_set(), set);
    // The final clear keeps them likewise, in one rewrite.
    assert!(log.clear_keeping(&live, &BTreeSet::from([p("d")])).unwrap());
    let log = crash_and_reopen(&disk);
    assert_eq!(log.change_set(), set);
}

/// Paths owed to a resync (pinned when the mirror is taken back, or
/// handed over by an old primary) survive retiring an activity entry of
/// the same path.
#[test]
fn pinned_and_handed_over_paths_survive_retiring() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    log.record_touched(&p("tracked"), false).unwrap();
    log.record_touched(&p("activity"), false).unwrap();
    log.pin_touched();
    let mut peer = ChangeSet::default();
    peer.touched.insert(p("handed"), true);
    log.merge(&peer).unwrap();
    log.record_touched(&p("later"), false).unwrap();
    let all = BTreeSet::from([p("tracked"), p("activity"), p("handed"), p("later")]);
    log.retire_active(&BTreeMap::new(), &all).unwrap();
    let left: Vec<FsPath> = log.change_set().touched.keys().cloned().collect();
    assert_eq!(left, vec![p("activity"), p("handed"), p("tracked")]);
}

#[test]
fn records_survive_reopen() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    log.record_block(&p("base/1"), 7).unwrap();
    log.record_block(&p("base/1"), 8).unwrap();
    log.record_block(&p("base/2"), 0).unwrap();
    log.record_touched(&p("base/3"), false).unwrap();
    log.record_touched(&p("dir"), true).unwrap();
    let want = log.change_set();
    drop(log);
    disk.crash(None);
    let (log, rec) = ChangeLog::open(disk.clone(), log_path()).unwrap();
    assert_eq!(rec.torn_bytes, 0);
    assert_eq!(log.change_set(), want);
    assert_eq!(log.block_size(), 8192);
    assert!(log.contains_block(&p("base/1"), 8));
    assert!(!log.contains_block(&p("base/1"), 9));
}

#[test]
fn a_torn_tail_is_cut_and_earlier_groups_kept() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    log.record_block(&p("f"), 1).unwrap();
    let before = log.change_set();
    // The next append is torn by a crash before its fdatasync completes.
    disk.inject(SimFault::FailNextSync);
    assert!(log.record_block(&p("f"), 2 * EXTENT_BLOCKS).is_err(), "a new extent waits for its record");
    assert!(matches!(log.record_block(&p("f"), 3), Err(ChangeLogError::Failed(_))), "no retry into success");
    drop(log);
    disk.crash(Some(10));
    let (log, rec) = ChangeLog::open(disk.clone(), log_path()).unwrap();
    assert!(rec.torn_bytes > 0, "{rec:?}");
    assert_eq!(log.change_set(), before);
    // And it goes on working.
    log.record_block(&p("f"), 5 * EXTENT_BLOCKS).unwrap();
    drop(log);
    let (log, rec) = ChangeLog::open(disk, log_path()).unwrap();
    assert_eq!(rec.torn_bytes, 0);
    assert!(log.change_set().covers_block(&p("f"), 5 * EXTENT_BLOCKS));
}

#[test]
fn corrupt_header_is_refused() {
    let disk = Arc::new(SimDisk::new(1));
    drop(ChangeLog::create(disk.clone(), log_path(), 8192).unwrap());
    let f = disk.open(&log_path(), OpenMode::Existing).unwrap();
    f.write_at(0, b"XXXX").unwrap();
    assert!(matches!(ChangeLog::open(disk, log_path()), Err(ChangeLogError::Corrupt(_))));
}

/// A million writes over ten thousand blocks: after compaction the log
/// costs at most 32 bytes per distinct block, whatever the write count.
#[test]
fn compaction_bounds_size_by_distinct_blocks() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    // 10,000 scattered blocks (no two adjacent, the worst case for runs)
    // over ten files, then a million writes among them.
    let files: Vec<FsPath> = (0..10).map(|i| p(&format!("base/16384/{}", 16000 + i))).collect();
    let blocks: Vec<(usize, u64)> = (0..10_000u64).map(|i| ((i % 10) as usize, (i / 10) * 2 * 131 + 1)).collect();
    for _ in 0..1_000_000 {
        let (f, b) = blocks[rng.gen_range(0..blocks.len())];
        log.record_block(&files[f], b).unwrap();
    }
    let before = log.stats();
    assert_eq!(before.distinct_blocks, 10_000, "{before:?}");
    log.compact().unwrap();
    let st = log.stats();
    eprintln!(
        "change-log: {} distinct blocks, {} bytes before compaction, {} after ({:.1} bytes a block)",
        st.distinct_blocks,
        before.bytes_on_disk,
        st.bytes_on_disk,
        st.bytes_on_disk as f64 / st.distinct_blocks as f64
    );
    assert!(st.bytes_on_disk <= 32 * st.distinct_blocks, "{st:?}");
    let want = log.change_set();
    drop(log);
    let log = crash_and_reopen(&disk);
    assert_eq!(log.change_set(), want);
}

#[test]
fn group_commit_from_many_threads() {
    let disk = Arc::new(SimDisk::new(1));
    let log = Arc::new(ChangeLog::create(disk.clone(), log_path(), 8192).unwrap());
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let log = log.clone();
            s.spawn(move || {
                for b in 0..200 {
                    log.record_block(&p(&format!("f{}", t % 3)), b * 8 + t).unwrap();
                }
            });
        }
    });
    let st = log.stats();
    assert_eq!(st.distinct_blocks, 1600);
    assert!(st.groups_written <= 1600 + 3);
    log.compact().unwrap();
    let want = log.change_set();
    drop(log);
    let log = crash_and_reopen(&disk);
    assert_eq!(log.change_set(), want);
}

/// Exact records after the first write into an extent are lazy: a
/// crash may lose them, and the durable extent record covers them.
#[test]
fn a_crash_loses_lazy_records_and_their_extent_covers_them() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    let f = p("rel");
    for b in 0..10 {
        log.record_block(&f, b).unwrap();
    }
    assert_eq!(log.stats().groups_written, 1, "only the first block of the extent waited");
    drop(log);
    let log = crash_and_reopen(&disk);
    let set = log.change_set();
    assert!(set.blocks.get(&f).map_or(0, |b| b.len()) < 10, "later exact records were lazy");
    for b in 0..10 {
        assert!(set.covers_block(&f, b), "block {b} is covered");
    }
    assert!(!set.covers_block(&f, EXTENT_BLOCKS), "the next extent is not");
    // Compaction after the crash keeps the recovered extent: its lost
    // exact records are unknown.
    log.compact().unwrap();
    let after = log.change_set();
    for b in 0..10 {
        assert!(after.covers_block(&f, b), "block {b} is still covered after compaction");
    }
    log.clear().unwrap();
    assert!(log.change_set().is_empty());
}

/// A payload over the group limit is split at record boundaries.
#[test]
fn large_payloads_split_into_groups() {
    let mut enc = Encoder::default();
    let f = p("f");
    enc.file(0, &f);
    for b in 0..(MAX_GROUP as u64 / 17 + 1000) {
        enc.blocks(0, b * 2, 1);
    }
    let (bytes, n) = enc.groups(7);
    assert!(n >= 2, "{n} groups");
    let mut at = 0;
    let mut payload = Vec::new();
    for i in 0..n {
        assert_eq!(&bytes[at..at + 4], &GROUP_MAGIC);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        assert!(len <= MAX_GROUP);
        assert_eq!(u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap()), 7 + i);
        payload.extend_from_slice(&bytes[at + GROUP_HEADER_LEN..at + GROUP_HEADER_LEN + len]);
        at += GROUP_HEADER_LEN + len;
    }
    assert_eq!(at, bytes.len());
    assert_eq!(payload, enc.buf);
}

/// Damage in the middle of the file is corruption, not a torn tail: it
/// is refused rather than cut (which would drop durable records after it).
#[test]
fn damage_before_good_groups_is_refused() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    for e in 0..4 {
        log.record_block(&p("f"), e * EXTENT_BLOCKS).unwrap();
    }
    assert!(log.stats().groups_written >= 4);
    drop(log);
    let f = disk.open(&log_path(), OpenMode::Existing).unwrap();
    let mut b = [0u8; 1];
    let at = (HEADER_LEN + GROUP_HEADER_LEN + 3) as u64;
    f.read_at(at, &mut b).unwrap();
    f.write_at(at, &[b[0] ^ 0xff]).unwrap();
    match ChangeLog::open(disk, log_path()) {
        Err(ChangeLogError::Corrupt(why)) => assert!(why.contains("followed by a good one"), "{why}"),
        other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
    }
}

#[test]
fn clear_empties_durably() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    log.record_block(&p("f"), 1).unwrap();
    log.clear().unwrap();
    assert!(log.change_set().is_empty());
    drop(log);
    let log = crash_and_reopen(&disk);
    assert!(log.change_set().is_empty());
}

/// Rule 8 across a restart: a group commit whose fdatasync failed leaves
/// its bytes readable (the page cache) but never written. The process
/// that opens the change-log next reads them, so it rewrites what it read
/// into a fresh file before it appends: a power cut afterwards leaves a
/// file that replays (no damaged group before good ones), and the blocks
/// of the failed commit still count as changed.
#[test]
fn a_reopened_change_log_is_durable_although_a_sync_before_failed() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    log.record_block(&p("a"), 1).unwrap();
    disk.inject(SimFault::FailNextSync);
    assert!(log.record_block(&p("b"), 2).is_err());
    drop(log);
    // The process restarts (no power cut): the failed group is readable.
    let (log, _) = ChangeLog::open(disk.clone(), log_path()).unwrap();
    assert!(log.contains_block(&p("b"), 2));
    log.record_block(&p("c"), 3).unwrap();
    let log = crash_and_reopen(&disk);
    for (f, b) in [("a", 1), ("b", 2), ("c", 3)] {
        assert!(log.change_set().covers_block(&p(f), b), "block {b} of {f}");
    }
}

/// The fault note survives a power cut once written, keeps the first
/// fault, and is gone for good once cleared.
#[test]
fn a_fault_note_is_durable_keeps_the_first_fault_and_clears() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    assert_eq!(log.fault_noted().unwrap(), None);
    log.note_fault("fdatasync of a failed").unwrap();
    log.note_fault("a later failure").unwrap();
    let log = crash_and_reopen(&disk);
    assert_eq!(log.fault_noted().unwrap().as_deref(), Some("fdatasync of a failed"));
    log.clear_fault_note().unwrap();
    log.clear_fault_note().unwrap();
    let log = crash_and_reopen(&disk);
    assert_eq!(log.fault_noted().unwrap(), None);
}

/// A note whose file cannot be written is still known to this process.
#[test]
fn a_fault_note_that_cannot_be_written_is_kept_in_memory() {
    let disk = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).unwrap();
    disk.inject(SimFault::FailNextSync);
    assert!(log.note_fault("a write failed").is_err());
    assert_eq!(log.fault_noted().unwrap().as_deref(), Some("a write failed"));
    log.clear_fault_note().unwrap();
    assert_eq!(log.fault_noted().unwrap(), None);
}
