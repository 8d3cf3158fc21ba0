//! Unit tests of the engine: scripted sequences of calls and events, no I/O.
//!
//! Each schedule below pins one interleaving the random simulator reaches
//! only rarely: a command of one call is held (its I/O "still running")
//! while another call is submitted, and the test asserts what the engine
//! may and may not do meanwhile. Each was once a defect found by review;
//! each fails with its fix removed (the planted switch restores the old
//! behaviour) and passes with it.

use super::*;
use crate::config::SyncLevel;
use crate::protocol::path::RelPath;

fn p(s: &str) -> FsPath {
    FsPath::new(0, RelPath::new(s).unwrap_or_else(|e| panic!("{s}: {e}")))
}

fn config(planted: Option<PlantedBug>) -> EngineConfig {
    EngineConfig {
        block_size: 8192,
        filespaces: 1,
        level: SyncLevel::Applied,
        tracking: true,
        heartbeat_ms: 20,
        ack_timeout_ms: 1000,
        max_pending_bytes: 1 << 20,
        activity_limit: 64,
        planted,
    }
}

/// An engine and the commands it asked for that the script holds back.
struct Script {
    e: Engine,
    next: CallId,
    held: Vec<Command>,
    done: BTreeMap<CallId, Result<Reply, Failure>>,
    sent: Vec<u64>,
    /// The flags byte of each frame sent, and the connection's number.
    sent_flags: Vec<u8>,
    epoch: u64,
}

impl Script {
    fn new(planted: Option<PlantedBug>, alone: bool) -> Script {
        Script::with_config(config(planted), alone)
    }

    fn with_config(cfg: EngineConfig, alone: bool) -> Script {
        let e = Engine::new(cfg, 0, alone.then(|| "the mirror is down".to_string()));
        let mut s = Script {
            e,
            next: 1,
            held: Vec::new(),
            done: BTreeMap::new(),
            sent: Vec::new(),
            sent_flags: Vec::new(),
            epoch: 0,
        };
        s.pump(&|_| false);
        s
    }

    /// A mirror taken back in change tracking: streaming with a resync bound.
    fn resyncing(planted: Option<PlantedBug>) -> Script {
        let mut s = Script::new(planted, true);
        let id = s.submit(Op::Attach, &|_| false);
        assert_eq!(s.done.get(&id), Some(&Ok(Reply::Done)), "attach: {}", s.e.describe());
        assert!(s.e.resyncing(), "{}", s.e.describe());
        s
    }

    fn submit(&mut self, op: Op, hold: &dyn Fn(&Command) -> bool) -> CallId {
        self.submit_waiting(op, Wait::Level, hold)
    }

    fn submit_queued(&mut self, op: Op) -> CallId {
        self.submit_waiting(op, Wait::Queued, &|_| false)
    }

    fn submit_waiting(&mut self, op: Op, wait: Wait, hold: &dyn Fn(&Command) -> bool) -> CallId {
        let id = self.next;
        self.next += 1;
        self.e.submit_with(id, op, wait, 0);
        self.pump(hold);
        id
    }

    /// Carry out every command as a disk and a network that always succeed
    /// would, except those `hold` keeps back; until nothing is left.
    fn pump(&mut self, hold: &dyn Fn(&Command) -> bool) {
        while let Some(cmd) = self.e.next_command() {
            if hold(&cmd) {
                self.held.push(cmd);
                continue;
            }
            self.answer(cmd);
        }
    }

    /// Let a held command finish, and everything it leads to.
    fn release(&mut self, pick: &dyn Fn(&Command) -> bool, hold: &dyn Fn(&Command) -> bool) {
        let at = self.held.iter().position(pick).unwrap_or_else(|| panic!("nothing held like that: {:?}", self.held));
        let cmd = self.held.remove(at);
        self.answer(cmd);
        self.pump(hold);
    }

    fn answer(&mut self, cmd: Command) {
        let ev = match cmd {
            Command::Open { call, .. } => Event::Opened { call, result: Ok(Opened { present: true, len: Some(0) }) },
            Command::Record { call, .. } | Command::CoverBlocks { call, .. } | Command::CoverPath { call, .. } => {
                Event::Recorded { call, result: Ok(()) }
            }
            Command::RenameOwed { call, .. } => Event::Recorded { call, result: Ok(()) },
            Command::Local { call, .. } => Event::LocalDone { call, result: Ok(()) },
            Command::TakeRedo { call } => Event::RedoTaken { call, set: Default::default() },
            Command::ReadCopy { call, first, count, .. } => {
                let data = Bytes::from(vec![5u8; count as usize * 8192]);
                let hash = crate::protocol::body_hash(&data);
                Event::CopyRead { call, result: Ok(Some((first * 8192, data, hash))) }
            }
            Command::Complete { call, result } => {
                self.done.insert(call, result);
                return;
            }
            Command::Send { epoch, frames } => {
                self.sent.extend(frames.iter().map(|f| f.seq));
                self.sent_flags.extend(frames.iter().map(|f| f.header[1]));
                self.epoch = epoch;
                let bytes = frames.iter().map(|f| (f.header.len() + f.body.len()) as u64).sum();
                Event::Sent { epoch, result: Ok(bytes) }
            }
            Command::Log { .. } => Event::Logged { result: Ok(true) },
            Command::RetireSync { .. } => Event::RetireSynced { result: Ok(()) },
            Command::Close => return,
            other => panic!("the script does not answer {}", other.name()),
        };
        self.e.on(ev, 0);
    }

    /// The mirror's acknowledgement, as it arrives on the connection.
    fn ack(&mut self, applied: u64, synced: u64) {
        let ack = crate::protocol::Ack { received: applied, applied, synced, durable: 0 };
        self.e.on(Event::Received { epoch: self.epoch, frame: ack.to_frame() }, 0);
        self.pump(&|_| false);
    }

    fn holds_local_of(&self, id: CallId) -> bool {
        self.held.iter().any(|c| matches!(c, Command::Local { call, .. } if *call == id))
    }
}

fn local_of(id: CallId) -> impl Fn(&Command) -> bool {
    move |c| matches!(c, Command::Local { call, .. } if *call == id)
}

fn write(file: &FsPath, block: u64) -> Op {
    let data = Bytes::from(vec![7u8; 8192]);
    let hash = crate::protocol::body_hash(&data);
    Op::WriteBlock { file: file.clone(), block, data, hash, extend: false }
}

/// A resync's flush of a file waits for writes of it still in their local
/// step: it takes the file exclusively (it once took it shared, so a write
/// in flight could land after the flush that was to cover it).
fn flush_waits_for_a_write_in_flight(planted: Option<PlantedBug>) -> Result<(), String> {
    let mut s = Script::resyncing(planted);
    let f = p("rel1");
    let w = s.submit(write(&f, 0), &|c| matches!(c, Command::Local { .. }));
    if !s.holds_local_of(w) {
        return Err(format!("the write's local step is not in flight: {}", s.e.describe()));
    }
    let flush =
        s.submit(Op::Resync { bound: Bound::Resync(1), step: ResyncStep::Flush { file: f.clone() } }, &|_| false);
    if s.done.contains_key(&flush) {
        return Err("the flush went through while a write of its file was in its local step".into());
    }
    s.release(&local_of(w), &|_| false);
    match s.done.get(&flush) {
        Some(Ok(Reply::MaybeSeq(Some(seq)))) if s.sent.iter().any(|x| x < seq) => Ok(()),
        other => Err(format!("after the write, the flush answered {other:?} (sent {:?})", s.sent)),
    }
}

#[test]
fn a_resync_flush_waits_for_writes_of_its_file_in_flight() {
    flush_waits_for_a_write_in_flight(None).unwrap_or_else(|e| panic!("{e}"));
    let planted = flush_waits_for_a_write_in_flight(Some(PlantedBug::ResyncFlushWithWritesInFlight));
    assert!(planted.is_err(), "the schedule must fail with the fix removed");
}

/// The resync takes its redo set only when no rename is between recording
/// its target and renaming (the set was once taken without the namespace
/// lock, so a rename recorded just after the take was never redone).
fn redo_waits_for_a_rename_in_flight(planted: Option<PlantedBug>) -> Result<(), String> {
    let mut s = Script::resyncing(planted);
    let r = s.submit(Op::Rename { from: p("d1"), to: p("d2") }, &|c| matches!(c, Command::Local { .. }));
    if !s.holds_local_of(r) {
        return Err(format!("the rename's local step is not in flight: {}", s.e.describe()));
    }
    let redo = s.submit(Op::Resync { bound: Bound::Resync(1), step: ResyncStep::Redo }, &|_| false);
    if s.done.contains_key(&redo) {
        return Err("the redo set was taken while a rename was under way".into());
    }
    s.release(&local_of(r), &|_| false);
    match s.done.get(&redo) {
        Some(Ok(Reply::Redo(_))) => Ok(()),
        other => Err(format!("after the rename, the redo answered {other:?}")),
    }
}

#[test]
fn the_redo_set_is_taken_between_renames_only() {
    redo_waits_for_a_rename_in_flight(None).unwrap_or_else(|e| panic!("{e}"));
    let planted = redo_waits_for_a_rename_in_flight(Some(PlantedBug::RedoWhileRenaming));
    assert!(planted.is_err(), "the schedule must fail with the fix removed");
}

/// The arbiter's answer takes effect while calls still hold their claims
/// (the decision once waited for every call to let go, while calls parked
/// for that decision held theirs: no decision in time, every call stuck).
fn decision_applies_with_calls_holding_claims(planted: Option<PlantedBug>) -> Result<(), String> {
    let mut s = Script::new(planted, false);
    let w = s.submit(write(&p("rel1"), 0), &|c| matches!(c, Command::Local { .. }));
    if !s.holds_local_of(w) {
        return Err(format!("the write's local step is not in flight: {}", s.e.describe()));
    }
    let epoch = s.e.epoch;
    s.e.on(Event::Disconnected { epoch, reason: "the mirror went away".into() }, 0);
    s.pump(&|c| matches!(c, Command::AskArbiter { .. } | Command::Local { .. }));
    if !s.held.iter().any(|c| matches!(c, Command::AskArbiter { .. })) {
        return Err(format!("the arbiter was not asked: {}", s.e.describe()));
    }
    s.held.retain(|c| !matches!(c, Command::AskArbiter { .. }));
    s.e.on(Event::ArbiterAnswered { result: Ok(Decision::MirrorDown) }, 0);
    s.pump(&|c| matches!(c, Command::Local { .. }));
    if s.e.mode() != Mode::ChangeTracking {
        return Err(format!("the answer did not apply: {}", s.e.describe()));
    }
    s.release(&local_of(w), &|_| false);
    if !s.done.contains_key(&w) {
        return Err(format!("the write never returned: {}", s.e.describe()));
    }
    Ok(())
}

#[test]
fn the_loss_decision_does_not_wait_for_calls_to_let_go() {
    decision_applies_with_calls_holding_claims(None).unwrap_or_else(|e| panic!("{e}"));
    let planted = decision_applies_with_calls_holding_claims(Some(PlantedBug::DecisionDrainsCalls));
    assert!(planted.is_err(), "the schedule must fail with the fix removed");
}

/// A resync's hold keeps new renames waiting (before their claims: they
/// hold nothing), not writes, and lets them go when the resync says so or,
/// whatever the resync does, when the hold runs out.
#[test]
fn a_resync_hold_keeps_new_renames_waiting_for_a_bounded_time() {
    for released_by_the_clock in [false, true] {
        let mut s = Script::resyncing(None);
        let hold = Op::Resync { bound: Bound::Resync(1), step: ResyncStep::Hold { ms: 500 } };
        let h = s.submit(hold, &|_| false);
        assert_eq!(s.done.get(&h), Some(&Ok(Reply::Done)), "{}", s.e.describe());
        let r = s.submit(Op::Rename { from: p("d1"), to: p("d2") }, &|_| false);
        let w = s.submit(write(&p("rel1"), 0), &|_| false);
        assert_eq!(s.e.resync.held, vec![r], "only the rename waits: {}", s.e.describe());
        assert!(!s.e.resync.held.contains(&w));
        let sent = s.sent.len();
        if released_by_the_clock {
            s.e.on(Event::Tick, 499);
            s.pump(&|_| false);
            assert_eq!(s.e.resync.held, vec![r], "let go before its time");
            s.e.on(Event::Tick, 500);
        } else {
            let release = Op::Resync { bound: Bound::Resync(1), step: ResyncStep::Hold { ms: 0 } };
            s.submit(release, &|_| false);
        }
        s.pump(&|_| false);
        assert!(s.e.resync.held.is_empty(), "still held: {}", s.e.describe());
        assert!(s.sent.len() > sent, "the rename went out once let go");
    }
}

fn is_dir_sync(c: &Command) -> bool {
    matches!(c, Command::Local { step: LocalStep::SyncDirs { .. }, .. })
}

fn dir_syncs_of(s: &Script) -> Vec<Vec<(u16, Option<RelPath>)>> {
    s.held
        .iter()
        .filter_map(|c| match c {
            Command::Local { step: LocalStep::SyncDirs { dirs }, .. } => Some(dirs.clone()),
            _ => None,
        })
        .collect()
}

/// A directory changed again while a sync of it is in flight stays owed:
/// the fsync may have run before the change (on another thread), so the
/// next directory sync covers it again. (A sync once cleared every
/// directory it covered at its end, the changed one too: simulator seed
/// 54704 lost an unlink that way, with a rename storm during a resync.)
#[test]
fn a_directory_changed_during_its_sync_is_synced_again() {
    let mut s = Script::new(None, true);
    let a = Some(RelPath::new("a").unwrap_or_else(|e| panic!("{e}")));
    s.submit(Op::Create { file: p("a/x") }, &|_| false);
    let first = s.submit(Op::SyncDir { fs: 0 }, &is_dir_sync);
    assert_eq!(dir_syncs_of(&s), vec![vec![(0, a.clone())]], "{}", s.e.describe());
    // Changed while the fsync is out.
    s.submit(Op::Create { file: p("a/y") }, &|_| false);
    s.release(&|c| is_dir_sync(c), &|_| false);
    assert!(s.done.get(&first).is_some_and(|r| r.is_ok()), "{}", s.e.describe());
    // The next sync covers it again.
    s.submit(Op::SyncDir { fs: 0 }, &is_dir_sync);
    assert_eq!(dir_syncs_of(&s), vec![vec![(0, a)]], "the change after the fsync is owed: {}", s.e.describe());
}

/// A sync that finishes while the next caller's waits does not take the
/// next caller's list as its own: each sync's end clears exactly what it
/// covered, and a directory dirtied after the next one began stays owed.
#[test]
fn each_directory_sync_clears_what_it_covered() {
    let mut s = Script::new(None, true);
    let dir = |d: &str| (0u16, Some(RelPath::new(d).unwrap_or_else(|e| panic!("{e}"))));
    s.submit(Op::Create { file: p("a/x") }, &|_| false);
    let first = s.submit(Op::SyncDir { fs: 0 }, &is_dir_sync);
    s.submit(Op::Create { file: p("b/y") }, &|_| false);
    let second = s.submit(Op::SyncDir { fs: 0 }, &is_dir_sync);
    assert_eq!(dir_syncs_of(&s).len(), 1, "the second waits for the first: {}", s.e.describe());
    // The first ends; the second starts at once (held), covering b.
    let first_sync =
        |c: &Command| matches!(c, Command::Local { call, step: LocalStep::SyncDirs { .. } } if *call == first);
    s.release(&first_sync, &is_dir_sync);
    assert!(s.done.get(&first).is_some_and(|r| r.is_ok()));
    assert_eq!(dir_syncs_of(&s), vec![vec![dir("b")]], "{}", s.e.describe());
    // c is dirtied while the second's fsync is out; the second's end must not clear it.
    s.submit(Op::Create { file: p("c/z") }, &|_| false);
    s.release(&|c| is_dir_sync(c), &|_| false);
    assert!(s.done.get(&second).is_some_and(|r| r.is_ok()));
    s.submit(Op::SyncDir { fs: 0 }, &is_dir_sync);
    assert_eq!(dir_syncs_of(&s), vec![vec![dir("c")]], "{}", s.e.describe());
}

/// A resync copy's activity cover takes the blocks the resync copies next
/// (`ahead`, up to COVER_AHEAD_EXTENTS extents) in its one record, so the
/// copies after it record nothing; without `ahead` it covers only itself.
#[test]
fn a_resync_copy_covers_the_run_ahead_of_it_in_one_record() {
    use super::resync::COVER_AHEAD_EXTENTS;
    use std::cell::RefCell;
    let mut s = Script::resyncing(None);
    let f = p("big");
    let covers = RefCell::new(Vec::new());
    let seen = |c: &Command| {
        if let Command::CoverBlocks { first, last, .. } = c {
            covers.borrow_mut().push((*first, *last));
        }
        false
    };
    let reach = COVER_AHEAD_EXTENTS * EXTENT_BLOCKS;
    let total = reach + 3 * EXTENT_BLOCKS;
    let mut first = 0;
    while first < total {
        let count = 8.min(total - first);
        let ahead = total - first - count;
        let copy = ResyncStep::Copy { file: f.clone(), first, count, ahead };
        let id = s.submit(Op::Resync { bound: Bound::Resync(1), step: copy }, &seen);
        assert_eq!(s.done.get(&id), Some(&Ok(Reply::Bytes(count * 8192))), "{}", s.e.describe());
        first += count;
    }
    // The first copy covered COVER_AHEAD_EXTENTS extents, the first past
    // them the three left; none in between recorded anything.
    assert_eq!(*covers.borrow(), vec![(0, reach - 1), (reach, total - 1)]);

    // Without `ahead`, a copy covers its own blocks only.
    covers.borrow_mut().clear();
    let g = p("small");
    let copy = ResyncStep::Copy { file: g.clone(), first: 40, count: 8, ahead: 0 };
    s.submit(Op::Resync { bound: Bound::Resync(1), step: copy }, &seen);
    assert_eq!(*covers.borrow(), vec![(40, 47)]);
}

/// A write that carries its flush (a held write and the fsync after it):
/// one frame, flagged durable so the mirror syncs before it acknowledges;
/// the local write, then the file's local fdatasync; and the call returns
/// only when the mirror's synced mark reaches it, not at applied.
#[test]
fn a_write_with_its_flush_returns_when_both_sides_are_durable() {
    let mut s = Script::new(None, false);
    let file = p("log");
    let data = Bytes::from_static(b"a wal frame");
    let hash = crate::protocol::body_hash(&data);
    let is_file_sync = |c: &Command| matches!(c, Command::Local { step: LocalStep::SyncFiles { .. }, .. });
    let op = Op::WriteAt { file: file.clone(), offset: 24, data, hash, flush: true };
    let id = s.submit(op, &is_file_sync);
    // The file's binding, then the write: one frame for write and flush.
    assert_eq!(s.sent, vec![1, 2], "{}", s.e.describe());
    assert_ne!(s.sent_flags[1] & crate::protocol::FLAG_DURABLE, 0, "the frame asks the mirror to sync");
    let synced: Vec<_> = s
        .held
        .iter()
        .filter_map(|c| match c {
            Command::Local { step: LocalStep::SyncFiles { files }, .. } => Some(files.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(synced, vec![vec![file]], "the local fdatasync of the file, after its write");
    s.release(&is_file_sync, &|_| false);
    assert!(!s.done.contains_key(&id), "durable here only: {}", s.e.describe());
    s.ack(2, 1);
    assert!(!s.done.contains_key(&id), "applied on the mirror is not durable there: {}", s.e.describe());
    s.ack(2, 2);
    assert_eq!(s.done.get(&id), Some(&Ok(Reply::Done)), "{}", s.e.describe());

    // Without the flush: no flag, no fdatasync, done at applied.
    let data = Bytes::from_static(b"another");
    let hash = crate::protocol::body_hash(&data);
    let plain = Op::WriteAt { file: p("log"), offset: 35, data, hash, flush: false };
    let id = s.submit(plain, &is_file_sync);
    assert_eq!(s.sent, vec![1, 2, 3]);
    assert_eq!(s.sent_flags[2] & crate::protocol::FLAG_DURABLE, 0);
    assert!(s.held.is_empty(), "no fdatasync: {:?}", s.held);
    s.ack(3, 2);
    assert_eq!(s.done.get(&id), Some(&Ok(Reply::Done)), "{}", s.e.describe());
}

/// Rule 8 at an orderly shutdown: the mirror has a file's writes durably,
/// but this host failed a write since, so no sync here proves anything
/// (the next fsync of a file succeeds without writing what a failed one
/// let go): the activity entries stay for the fault note's settle, where
/// a healthy engine retires them.
#[test]
fn a_faulted_primary_retires_nothing_at_its_shutdown() {
    let is_retire = |c: &Command| matches!(c, Command::RetireSync { .. });
    for faulted in [false, true] {
        let mut s = Script::new(None, false);
        let good = s.submit(write(&p("a"), 0), &|_| false);
        let ack = crate::protocol::Ack { received: 2, applied: 2, synced: 2, durable: 2 };
        s.e.on(Event::Received { epoch: s.epoch, frame: ack.to_frame() }, 0);
        s.pump(&is_retire);
        assert_eq!(s.done.get(&good), Some(&Ok(Reply::Done)), "{}", s.e.describe());
        if faulted {
            // A write of another file whose local step fails: the engine faults.
            s.e.submit(99, write(&p("b"), 0), 0);
            s.pump(&local_of(99));
            let at = s.held.iter().position(local_of(99)).unwrap_or_else(|| panic!("{}", s.e.describe()));
            s.held.remove(at);
            s.e.on(Event::LocalDone { call: 99, result: Err("injected EIO".into()) }, 0);
            s.pump(&is_retire);
            assert!(s.e.faulted().is_some(), "{}", s.e.describe());
        }
        s.submit(Op::Shutdown, &is_retire);
        // The mirror confirms everything, the Shutdown frame included.
        let last = s.e.last_seq();
        let ack = crate::protocol::Ack { received: last, applied: last, synced: last, durable: last };
        s.e.on(Event::Received { epoch: s.epoch, frame: ack.to_frame() }, 0);
        s.pump(&is_retire);
        let retires = s.held.iter().filter(|c| is_retire(c)).count();
        if faulted {
            assert_eq!(retires, 0, "a faulted engine asked to retire: {}", s.e.describe());
        } else {
            assert!(retires > 0, "a healthy engine retires at its shutdown: {}", s.e.describe());
        }
    }
}

/// A queued change (`Wait::Queued`, the mount's) returns once made here and
/// on its way, at most `QUEUED_WINDOW` changes ahead of what the mirror has
/// applied; a sync submitted queued still waits until the mirror has
/// everything before it durably (with the planted defect it does not).
fn queued_changes_and_a_sync(planted: Option<PlantedBug>) -> Result<(), String> {
    let mut s = Script::new(planted, false);
    let c = s.submit_queued(Op::Create { file: p("a") });
    let w = s.submit_queued(write(&p("a"), 0));
    if s.done.get(&c) != Some(&Ok(Reply::Done)) || s.done.get(&w) != Some(&Ok(Reply::Done)) {
        return Err(format!("queued changes waited for the mirror: {}", s.e.describe()));
    }
    let level = s.submit(Op::Create { file: p("b") }, &|_| false);
    if s.done.contains_key(&level) {
        return Err("a create at the pair's level returned before the mirror applied it".into());
    }
    let sync = s.submit_queued(Op::Sync { file: p("a"), flush: false });
    let last = s.sent.iter().copied().max().unwrap_or(0);
    s.ack(last, 0);
    if !s.done.contains_key(&level) {
        return Err("the create at the pair's level did not return once applied".into());
    }
    if s.done.contains_key(&sync) {
        return Err("a sync submitted queued returned before the mirror synced".into());
    }
    s.ack(last, last);
    if s.done.get(&sync) != Some(&Ok(Reply::Done)) {
        return Err(format!("the sync answered {:?} once synced", s.done.get(&sync)));
    }
    // Past the window, a queued change waits for room.
    let first = s.next;
    for i in 0..QUEUED_WINDOW + 2 {
        s.submit_queued(Op::Create { file: p(&format!("w{i}")) });
    }
    let waiting: Vec<CallId> = (first..s.next).filter(|id| !s.done.contains_key(id)).collect();
    if waiting.is_empty() {
        return Err(format!("{} queued creates with none applied all returned", QUEUED_WINDOW + 2));
    }
    let last = s.sent.iter().copied().max().unwrap_or(0);
    s.ack(last, last);
    match waiting.iter().find(|id| !s.done.contains_key(id)) {
        Some(id) => Err(format!("queued call {id} still waits once everything is applied")),
        None => Ok(()),
    }
}

#[test]
fn queued_changes_return_on_their_way_and_a_sync_still_waits() {
    queued_changes_and_a_sync(None).unwrap_or_else(|e| panic!("{e}"));
    let planted = queued_changes_and_a_sync(Some(PlantedBug::SyncQueued));
    assert!(planted.is_err(), "the schedule must fail with the rule removed");
}

/// A queued change is never looser than the pair's level: at `durable` it
/// returns once the mirror synced it, at `async:2` with at most 2 sequence
/// numbers unapplied before it (not 64).
#[test]
fn a_queued_change_waits_as_a_stricter_level_says() {
    let mut durable = Script::with_config(EngineConfig { level: SyncLevel::Durable, ..config(None) }, false);
    let c = durable.submit_queued(Op::Create { file: p("a") });
    assert!(!durable.done.contains_key(&c), "a queued create returned on a durable pair before the mirror had it");
    let last = durable.sent.iter().copied().max().unwrap_or(0);
    durable.ack(last, 0);
    assert!(!durable.done.contains_key(&c), "a queued create returned on a durable pair once applied, not synced");
    durable.ack(last, last);
    assert_eq!(durable.done.get(&c), Some(&Ok(Reply::Done)), "{}", durable.e.describe());

    let mut async2 = Script::with_config(EngineConfig { level: SyncLevel::Async { window: 2 }, ..config(None) }, false);
    let first = async2.next;
    for i in 0..8 {
        async2.submit_queued(Op::Create { file: p(&format!("f{i}")) });
    }
    let returned = (first..async2.next).filter(|id| async2.done.contains_key(id)).count();
    assert!((1..8).contains(&returned), "{returned} of 8 queued creates returned with none applied at async:2");
}
