//! Losing the mirror under load: the arbiter decides, the primary goes on
//! alone, and the change-log names every block that differs from the mirror.

mod common;

use common::*;
use filerep::config::SyncLevel;
use filerep::durable::changelog::{ChangeLog, ChangeSet};
use filerep::io::disk::{FsPath, StdDisk};
use filerep::protocol::path::RelPath;
use filerep::runtime::arbiter::{Arbiter, Decision, FixedArbiter};
use filerep::runtime::primary::{ChangeTracking, Mode};
use filerep::verify::Entry;
use filerep_tools::workload::{self, WorkloadConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: u32 = 8192;

fn changelog(dir: &Path) -> Arc<ChangeLog> {
    let disk = Arc::new(StdDisk::open(&[dir.to_path_buf()]).expect("state disk"));
    Arc::new(ChangeLog::create(disk, FsPath::new(0, RelPath::new("changelog").unwrap()), BS).expect("change-log"))
}

fn tracking(log: &Arc<ChangeLog>, arbiter: Arc<dyn Arbiter>) -> ChangeTracking {
    // Generous: tests run side by side on two cores.
    ChangeTracking { changelog: log.clone(), arbiter, decision_timeout: Duration::from_secs(10) }
}

/// A primary with change tracking (`arbiter`) streaming to a real daemon.
struct Tracked {
    _dirs_state: tempfile::TempDir,
    log: Arc<ChangeLog>,
    daemon: filerep_tools::process::MirrorProcess,
    primary: filerep::runtime::primary::Primary,
}

fn tracked_pair(
    dirs: &Dirs,
    arbiter: Arc<dyn Arbiter>,
    tune: impl FnOnce(&mut filerep::runtime::primary::PrimaryConfig),
) -> Tracked {
    let state = tempfile::tempdir().expect("state dir");
    let log = changelog(state.path());
    let daemon = spawn_daemon(dirs, BS);
    let mut cfg = primary_config(dirs, BS, SyncLevel::Applied);
    cfg.change_tracking = Some(tracking(&log, arbiter));
    tune(&mut cfg);
    let primary = connect_primary(cfg, daemon.addr).expect("primary");
    Tracked { _dirs_state: state, log, daemon, primary }
}

/// Whether a path, or a directory above it recorded as a subtree, is touched.
fn path_covered(set: &ChangeSet, fs: u16, path: &str) -> bool {
    let mut cur = Some(path.to_string());
    let mut first = true;
    while let Some(p) = cur {
        if let Some(&subtree) = set.touched.get(&FsPath::new(fs, RelPath::new(&p).unwrap())) {
            if first || subtree {
                return true;
            }
        }
        first = false;
        cur = p.rfind('/').map(|i| p[..i].to_string());
    }
    false
}

fn read_blocks(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_default();
    data.chunks(BS as usize).map(|c| c.to_vec()).collect()
}

/// Rule 4: everything that differs between primary and mirror is named by
/// the change set (a block, the file, or a directory above it).
fn assert_covered(dirs: &Dirs, set: &ChangeSet) -> usize {
    let mut differing = 0;
    for (fs, (p, m)) in dirs.primary.iter().zip(&dirs.mirror).enumerate() {
        let fs = fs as u16;
        let pe = filerep::verify::scan(&p.root).expect("scan primary");
        let me = filerep::verify::scan(&m.root).expect("scan mirror");
        let mut paths: Vec<&String> = pe.keys().chain(me.keys()).collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            let (a, b) = (pe.get(path), me.get(path));
            if a == b {
                continue;
            }
            differing += 1;
            if path_covered(set, fs, path) {
                continue;
            }
            match (a, b) {
                (Some(Entry::File { .. }), Some(Entry::File { .. })) => {
                    let (pb, mb) = (read_blocks(&p.root.join(path)), read_blocks(&m.root.join(path)));
                    let key = FsPath::new(fs, RelPath::new(path).unwrap());
                    for i in 0..pb.len().max(mb.len()) {
                        if pb.get(i) != mb.get(i) {
                            assert!(
                                set.covers_block(&key, i as u64),
                                "block {i} of fs{fs}:{path} differs but the change-log does not name it"
                            );
                        }
                    }
                }
                _ => panic!("fs{fs}:{path} differs ({a:?} vs {b:?}) but the change-log does not name it"),
            }
        }
    }
    differing
}

#[test]
fn mirror_killed_under_load_the_primary_goes_on_and_tracks_every_change() {
    let dirs = Dirs::new();
    let state = tempfile::tempdir().expect("state dir");
    let log = changelog(state.path());
    let mut daemon = spawn_daemon(&dirs, BS);
    let mut cfg = primary_config(&dirs, BS, SyncLevel::Applied);
    cfg.change_tracking = Some(tracking(&log, Arc::new(FixedArbiter(Decision::MirrorDown))));
    let primary = Arc::new(connect_primary(cfg, daemon.addr).expect("primary"));
    let load = {
        let primary = primary.clone();
        std::thread::spawn(move || {
            workload::run(&primary, &WorkloadConfig { writers: 8, ops_per_writer: 250, seed: 77 })
        })
    };
    // Kill the mirror once the load is well under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while primary.stats().operations < 300 {
        assert!(Instant::now() < deadline, "the workload did not start");
        std::thread::yield_now();
    }
    daemon.kill();
    let report = load.join().expect("workload thread").expect("no call failed: the primary went on alone");
    assert!(report.operations >= 2000);
    assert_eq!(primary.mode(), Mode::ChangeTracking);
    let set = log.change_set();
    assert!(!set.is_empty(), "changes after the loss were tracked");
    let differing = assert_covered(&dirs, &set);
    assert!(differing > 0, "the mirror missed the changes made after it died");
    // The change-log is durable: reopened (as after a crash of the primary),
    // it names every block and path, exactly or by a recorded extent.
    drop(primary);
    let disk = Arc::new(StdDisk::open(&[state.path().to_path_buf()]).expect("state disk"));
    let (reopened, _) =
        ChangeLog::open(disk, FsPath::new(0, RelPath::new("changelog").unwrap())).expect("reopen change-log");
    let durable = reopened.change_set();
    for (file, blocks) in &set.blocks {
        for b in blocks {
            assert!(durable.covers_block(file, *b), "block {b} of {file} survives a reopen");
        }
    }
    assert_eq!(durable.touched, set.touched);
    // Compaction after the reopen keeps everything covered.
    reopened.compact().expect("compact");
    let compacted = reopened.change_set();
    for (file, blocks) in &set.blocks {
        for b in blocks {
            assert!(compacted.covers_block(file, *b), "block {b} of {file} survives compaction");
        }
    }
}

#[test]
fn a_demoted_primary_fails_its_calls() {
    let dirs = Dirs::new();
    let Tracked { _dirs_state, log, mut daemon, primary } =
        tracked_pair(&dirs, Arc::new(FixedArbiter(Decision::Demoted)), |_| {});
    primary.create(0, "f").expect("create");
    daemon.kill();
    let e = first_failing_write(&primary, "f", BS as usize);
    assert!(e.to_string().contains("demoted"), "{e}");
    assert!(matches!(primary.mode(), Mode::Failed(_)));
    assert!(primary.create(0, "g").is_err());
    assert!(log.change_set().touched.is_empty() || !dirs.primary[0].root.join("g").exists());
}

/// An arbiter that never answers.
struct Silent(std::sync::Mutex<Option<crossbeam_channel::Receiver<()>>>);

impl Arbiter for Silent {
    fn mirror_lost(&self, _: u32, _: u64, _: &str) -> Result<Decision, String> {
        let rx = self.0.lock().unwrap().take();
        if let Some(rx) = rx {
            let _ = rx.recv();
        }
        Err("gone".into())
    }
}

#[test]
fn no_answer_from_the_arbiter_fails_calls_rather_than_diverging() {
    let dirs = Dirs::new();
    let state = tempfile::tempdir().expect("state dir");
    let log = changelog(state.path());
    let mut daemon = spawn_daemon(&dirs, BS);
    let (_keep, rx) = crossbeam_channel::bounded::<()>(1);
    let mut cfg = primary_config(&dirs, BS, SyncLevel::Applied);
    let mut t = tracking(&log, Arc::new(Silent(std::sync::Mutex::new(Some(rx)))));
    t.decision_timeout = Duration::from_secs(2);
    cfg.change_tracking = Some(t);
    let primary = connect_primary(cfg, daemon.addr).expect("primary");
    primary.create(0, "f").expect("create");
    daemon.kill();
    let started = Instant::now();
    let e = first_failing_write(&primary, "f", BS as usize);
    assert!(e.to_string().contains("no answer from the arbiter"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30), "calls do not hang beyond the decision timeout");
}

/// A mirror that freezes (SIGSTOP) stops acknowledging: the primary notices
/// the silence, and the operations the mirror never applied, still waiting
/// for their acknowledgement, land in the change-log before their callers
/// return.
#[test]
fn a_frozen_mirror_is_noticed_and_unapplied_operations_are_tracked() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dirs = Dirs::new();
    let state = tempfile::tempdir().expect("state dir");
    let log = changelog(state.path());
    let mut daemon = spawn_daemon(&dirs, BS);
    let mut cfg = primary_config(&dirs, BS, SyncLevel::Applied);
    cfg.tuning.ack_timeout = Duration::from_millis(800);
    cfg.change_tracking = Some(tracking(&log, Arc::new(FixedArbiter(Decision::MirrorDown))));
    let primary = Arc::new(connect_primary(cfg, daemon.addr).expect("primary"));
    for w in 0..8 {
        primary.create(0, &format!("f{w}")).expect("create");
    }
    let pid = Pid::from_raw(daemon.pid as i32);
    kill(pid, Signal::SIGSTOP).expect("freeze the mirror");
    // Each writer's first write is shipped but never applied.
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let primary = primary.clone();
            std::thread::spawn(move || {
                for b in 0..20u64 {
                    primary.write_block(0, &format!("f{w}"), b, &[(w * 20 + b) as u8; BS as usize])?;
                }
                Ok::<(), filerep::Error>(())
            })
        })
        .collect();
    for t in writers {
        t.join().expect("writer").expect("every call succeeds: the primary went on alone");
    }
    assert_eq!(primary.mode(), Mode::ChangeTracking);
    kill(pid, Signal::SIGKILL).expect("kill the mirror");
    daemon.kill();
    let set = log.change_set();
    for w in 0..8 {
        let f = FsPath::new(0, RelPath::new(&format!("f{w}")).unwrap());
        assert_eq!(set.blocks.get(&f).map(|b| b.len()), Some(20), "every block of f{w} is tracked");
    }
    assert!(assert_covered(&dirs, &set) >= 8);
}

/// Holds the change-log's next append once closed: the commit says it got
/// there and waits until the test opens the gate again.
struct Gate {
    closed: std::sync::atomic::AtomicBool,
    reached: crossbeam_channel::Sender<()>,
    open: crossbeam_channel::Receiver<()>,
}

impl Gate {
    fn pass(&self) {
        if self.closed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let _ = self.reached.send(());
            let _ = self.open.recv();
        }
    }
}

/// A disk whose files' writes pass through a [`Gate`].
struct GatedDisk {
    inner: Arc<dyn filerep::io::disk::Disk>,
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn filerep::io::disk::DiskFile>,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

impl filerep::io::disk::DiskFile for GatedFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> filerep::io::disk::DiskResult<()> {
        self.gate.pass();
        self.inner.write_at(offset, buf)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> filerep::io::disk::DiskResult<usize> {
        self.inner.read_at(offset, buf)
    }
    fn sync_data(&self) -> filerep::io::disk::DiskResult<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> filerep::io::disk::DiskResult<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> filerep::io::disk::DiskResult<u64> {
        self.inner.len()
    }
}

impl filerep::io::disk::Disk for GatedDisk {
    fn open(
        &self,
        path: &FsPath,
        mode: filerep::io::disk::OpenMode,
    ) -> filerep::io::disk::DiskResult<Arc<dyn filerep::io::disk::DiskFile>> {
        let inner = self.inner.open(path, mode)?;
        Ok(Arc::new(GatedFile { inner, gate: self.gate.clone() }))
    }
    fn remove_file(&self, path: &FsPath) -> filerep::io::disk::DiskResult<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &FsPath, to: &FsPath) -> filerep::io::disk::DiskResult<()> {
        self.inner.rename(from, to)
    }
    fn create_dir(&self, path: &FsPath) -> filerep::io::disk::DiskResult<()> {
        self.inner.create_dir(path)
    }
    fn remove_dir(&self, path: &FsPath) -> filerep::io::disk::DiskResult<()> {
        self.inner.remove_dir(path)
    }
    fn sync_parent_dir(&self, path: &FsPath) -> filerep::io::disk::DiskResult<()> {
        self.inner.sync_parent_dir(path)
    }
    fn parent_dir_handle(&self, path: &FsPath) -> filerep::io::disk::DiskResult<Arc<dyn filerep::io::disk::DiskFile>> {
        self.inner.parent_dir_handle(path)
    }
    fn exists(&self, path: &FsPath) -> filerep::io::disk::DiskResult<bool> {
        self.inner.exists(path)
    }
    fn entry_kind(&self, path: &FsPath) -> filerep::io::disk::DiskResult<Option<filerep::io::disk::EntryKind>> {
        self.inner.entry_kind(path)
    }
    fn list_dir(
        &self,
        filespace: u16,
        dir: Option<&RelPath>,
    ) -> filerep::io::disk::DiskResult<Vec<(String, filerep::io::disk::EntryKind)>> {
        self.inner.list_dir(filespace, dir)
    }
    fn name(&self) -> &'static str {
        "gated"
    }
}

/// Signals each event with the given message, on the thread it is installed on.
struct OnMessage {
    message: &'static str,
    seen: crossbeam_channel::Sender<()>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for OnMessage {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(Option<String>);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        let mut m = Message(None);
        event.record(&mut m);
        if m.0.as_deref() == Some(self.message) {
            let _ = self.seen.send(());
        }
    }
}

/// A call that waits for the arbiter's decision holds up no other call.
/// The interleaving that once stalled the decision until the waiting call's
/// deadline ("no decision in time", then change tracking anyway): call B is
/// in flight on its file when the mirror is lost (here held at the
/// change-log's gate); call A starts after the loss and waits for the
/// decision; B goes on. The decision once waited for every call to leave
/// its file (then its stripe) while A held what B needed; the engine's
/// decision now takes no claim (`core::primary::tests` scripts it).
#[test]
fn a_call_waiting_for_the_decision_holds_up_no_call_inside_its_stripe() {
    use tracing_subscriber::layer::SubscriberExt;
    let limit = Duration::from_secs(60);
    let dirs = Dirs::new();
    let (reached_tx, reached) = crossbeam_channel::unbounded();
    let (open, open_rx) = crossbeam_channel::unbounded();
    let gate = Arc::new(Gate { closed: false.into(), reached: reached_tx, open: open_rx });
    let log_disk: Arc<dyn filerep::io::disk::Disk> =
        Arc::new(GatedDisk { inner: Arc::new(filerep::io::disk::SimDisk::new(1)), gate: gate.clone() });
    let log = Arc::new(
        ChangeLog::create(log_disk, FsPath::new(0, RelPath::new("changelog").unwrap()), BS).expect("change-log"),
    );
    let mut daemon = spawn_daemon(&dirs, BS);
    let mut cfg = primary_config(&dirs, BS, SyncLevel::Applied);
    cfg.change_tracking = Some(tracking(&log, Arc::new(FixedArbiter(Decision::MirrorDown))));
    let primary = connect_primary(cfg, daemon.addr).expect("primary");
    primary.create(0, "b").expect("create");
    primary.create(0, "a").expect("create");
    let (waiting_tx, waiting) = crossbeam_channel::unbounded();
    std::thread::scope(|s| {
        // B: the first write into an extent records it in the change-log
        // (activity log), inside the file's stripe; it stops at the gate.
        gate.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let b = s.spawn(|| primary.write_block(0, "b", 0, &[1u8; BS as usize]));
        reached.recv_timeout(limit).expect("B reaches the change-log inside its stripe");
        daemon.kill();
        let deadline = Instant::now() + limit;
        while primary.mirror_lost().is_none() {
            assert!(Instant::now() < deadline, "the loss of the mirror is noticed");
            std::thread::yield_now();
        }
        // A: a call after the loss waits for the decision.
        let a = s.spawn(|| {
            let signal = OnMessage { message: "waiting for the arbiter's decision", seen: waiting_tx };
            tracing::subscriber::with_default(tracing_subscriber::registry().with(signal), || {
                primary.write_block(0, "a", 0, &[2u8; BS as usize])
            })
        });
        waiting.recv_timeout(limit).expect("A waits for the decision");
        // B goes on: it sends (reading the loss) and waits for the decision too.
        open.send(()).expect("open the gate");
        a.join().expect("A").expect("A goes on once the mirror is marked down");
        b.join().expect("B").expect("B goes on once the mirror is marked down");
    });
    assert_eq!(primary.mode(), Mode::ChangeTracking);
    let set = log.change_set();
    for f in ["a", "b"] {
        assert!(set.covers_block(&FsPath::new(0, RelPath::new(f).unwrap()), 0), "block 0 of {f} is tracked");
    }
}

/// The mirror's host crashes mid-stream: its disk keeps only what was
/// durable (with the last write torn), and its session fails. Everything
/// the mirror acknowledged as applied but had not made durable is lost
/// there, so it must be in the change-log. In memory, over many seeds.
#[test]
fn a_mirror_crash_loses_unsynced_data_and_the_change_log_names_all_of_it() {
    use filerep::io::disk::{Disk, SimDisk, SimEntry};
    use filerep::runtime::mirror::MirrorServer;
    use std::collections::BTreeMap;
    for seed in 0..12u64 {
        let dirs = Dirs::new();
        let primary_disk = Arc::new(SimDisk::new(2));
        let mirror_disk = Arc::new(SimDisk::new(2));
        let log_disk: Arc<dyn Disk> = Arc::new(SimDisk::new(1));
        let log = Arc::new(
            ChangeLog::create(log_disk, FsPath::new(0, RelPath::new("changelog").unwrap()), BS).expect("change-log"),
        );
        let server = Arc::new(
            MirrorServer::with_disk(mirror_config(&dirs, BS), mirror_disk.clone() as Arc<dyn Disk>).expect("mirror"),
        );
        let (p_conn, m_conn) = filerep::io::net::mem_pair(64 * 1024, 1024);
        let session = {
            let server = server.clone();
            std::thread::spawn(move || server.serve_conn(m_conn, "mem"))
        };
        let mut cfg = primary_config(&dirs, BS, SyncLevel::Applied);
        cfg.change_tracking = Some(tracking(&log, Arc::new(FixedArbiter(Decision::MirrorDown))));
        let primary = Arc::new(
            filerep::runtime::primary::Primary::start_with_disk(
                cfg,
                primary_disk.clone() as Arc<dyn Disk>,
                p_conn,
                "mem",
            )
            .expect("primary"),
        );
        let load = {
            let primary = primary.clone();
            std::thread::spawn(move || {
                workload::run(&primary, &WorkloadConfig { writers: 4, ops_per_writer: 150, seed })
            })
        };
        let crash_at = 100 + seed * 30;
        let deadline = Instant::now() + Duration::from_secs(60);
        while primary.stats().operations < crash_at {
            assert!(Instant::now() < deadline, "seed {seed}: the workload did not start");
            std::thread::yield_now();
        }
        mirror_disk.crash(Some((seed as usize * 7919) % 4096));
        load.join()
            .expect("workload thread")
            .unwrap_or_else(|e| panic!("seed {seed}: a call failed: {e} (pair {:?})", primary.mode()));
        let _ = session.join();
        assert_eq!(primary.mode(), Mode::ChangeTracking, "seed {seed}");
        // Compare the primary's image with what the mirror has after its crash.
        let set = log.change_set();
        let p: BTreeMap<(u16, String), SimEntry> = primary_disk.snapshot();
        let m: BTreeMap<(u16, String), SimEntry> = mirror_disk.snapshot();
        let mut keys: Vec<&(u16, String)> = p.keys().chain(m.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let (a, b) = (p.get(key), m.get(key));
            if a == b || path_covered(&set, key.0, &key.1) {
                continue;
            }
            match (a, b) {
                (Some(SimEntry::File(x)), Some(SimEntry::File(y))) => {
                    let file = FsPath::new(key.0, RelPath::new(&key.1).unwrap());
                    let (xb, yb): (Vec<_>, Vec<_>) = (x.chunks(BS as usize).collect(), y.chunks(BS as usize).collect());
                    for i in 0..xb.len().max(yb.len()) {
                        if xb.get(i) != yb.get(i) {
                            assert!(
                                set.covers_block(&file, i as u64),
                                "seed {seed}: block {i} of fs{}:{} differs after the mirror's crash but is not tracked",
                                key.0,
                                key.1
                            );
                        }
                    }
                }
                _ => panic!("seed {seed}: fs{}:{} differs ({a:?} vs {b:?}) and is not tracked", key.0, key.1),
            }
        }
    }
}

/// The pair arbiter applies the transitions: the loss of the mirror moves
/// the pair to change tracking with the mirror down, recorded with a reason.
#[test]
fn the_pair_arbiter_records_the_transition() {
    use filerep::core::pair::{Pair, PairMode};
    use filerep::runtime::arbiter::PairArbiter;
    let dirs = Dirs::new();
    let arbiter = Arc::new(PairArbiter::new(Pair::new(0, 2, 4)));
    let Tracked { _dirs_state, mut daemon, primary, .. } = tracked_pair(&dirs, arbiter.clone(), |_| {});
    primary.create(0, "f").expect("create");
    daemon.kill();
    for b in 0..50u64 {
        primary.write_block(0, "f", b, &[b as u8; BS as usize]).expect("writes go on");
    }
    let pair = arbiter.pair();
    assert_eq!((pair.mode, pair.generation), (PairMode::ChangeTracking, 1));
    assert!(pair.acting_primary().up && !pair.acting_mirror().up);
    let history = arbiter.history();
    assert_eq!(history.len(), 1, "{history:?}");
    assert!(history[0].reason.contains("lost"), "{:?}", history[0]);
    assert!(history[0].before.contains("mode s") && history[0].after.contains("mode c"), "{:?}", history[0]);
}

/// Fencing: the arbiter already promoted the mirror (the primary missed its
/// probes); when the old primary reports its mirror lost, it is demoted and
/// its calls fail: two writers never serve one generation.
#[test]
fn a_primary_replaced_by_a_promotion_is_demoted() {
    use filerep::core::pair::{Event, Pair};
    use filerep::runtime::arbiter::PairArbiter;
    let dirs = Dirs::new();
    let arbiter = Arc::new(PairArbiter::new(Pair::new(0, 2, 4)));
    let Tracked { _dirs_state, mut daemon, primary, .. } = tracked_pair(&dirs, arbiter.clone(), |_| {});
    primary.create(0, "f").expect("create");
    arbiter.apply(&Event::ProbeFailed { dbid: 2 });
    assert_eq!(arbiter.pair().generation, 2);
    daemon.kill();
    let e = first_failing_write(&primary, "f", BS as usize);
    assert!(e.to_string().contains("demoted"), "{e}");
    assert!(matches!(primary.mode(), Mode::Failed(_)));
}

/// The change-log cannot be written (an fsync fails): the primary says so,
/// claims nothing more, and every later call fails (a full resync is needed).
#[test]
fn a_change_log_that_cannot_be_written_stops_the_primary() {
    use filerep::io::disk::{Disk, SimDisk, SimFault};
    let dirs = Dirs::new();
    let log_disk = Arc::new(SimDisk::new(1));
    let log = Arc::new(
        ChangeLog::create(log_disk.clone() as Arc<dyn Disk>, FsPath::new(0, RelPath::new("changelog").unwrap()), BS)
            .expect("change-log"),
    );
    let mut daemon = spawn_daemon(&dirs, BS);
    let mut cfg = primary_config(&dirs, BS, SyncLevel::Applied);
    cfg.change_tracking = Some(tracking(&log, Arc::new(FixedArbiter(Decision::MirrorDown))));
    let primary = connect_primary(cfg, daemon.addr).expect("primary");
    primary.create(0, "f").expect("create");
    daemon.kill();
    primary.write_block(0, "f", 0, &[1u8; BS as usize]).expect("change tracking");
    assert_eq!(primary.mode(), Mode::ChangeTracking);
    log_disk.inject(SimFault::FailNextSync);
    // A block in a new extent needs a durable record: the append fails.
    let e = primary
        .write_block(0, "f", 5 * filerep::durable::changelog::EXTENT_BLOCKS, &[2u8; BS as usize])
        .expect_err("fails");
    assert!(matches!(e, filerep::Error::ChangeLog(_)), "{e}");
    assert!(e.to_string().contains("full resync"), "{e}");
    match primary.mode() {
        Mode::Failed(why) => assert!(why.contains("full resync"), "{why}"),
        other => panic!("expected a failed pair, got {other:?}"),
    }
    assert!(primary.write_block(0, "f", 0, &[3u8; BS as usize]).is_err(), "nothing more is accepted");
    assert_eq!(primary.nblocks(0, "f").expect("nblocks"), 1, "the refused write changed nothing");
}

/// An orderly shutdown (and dropping the primary) is no loss of the mirror:
/// the arbiter is not asked and the pair stays synchronized.
#[test]
fn an_orderly_shutdown_does_not_report_a_lost_mirror() {
    use filerep::core::pair::{Pair, PairMode};
    use filerep::runtime::arbiter::PairArbiter;
    let dirs = Dirs::new();
    let arbiter = Arc::new(PairArbiter::new(Pair::new(0, 2, 4)));
    let Tracked { _dirs_state, mut daemon, primary, .. } = tracked_pair(&dirs, arbiter.clone(), |_| {});
    primary.create(0, "f").expect("create");
    primary.write_block(0, "f", 0, &[1u8; BS as usize]).expect("write");
    primary.shutdown(Duration::from_secs(10)).expect("shutdown");
    drop(primary);
    daemon.kill();
    assert_eq!(arbiter.pair().mode, PairMode::Synchronized);
    assert!(arbiter.history().is_empty(), "{:?}", arbiter.history());
}

/// Found by the fault simulator: alone, `sync` must make the file's name
/// durable too (its directory entries), not only its data.
#[test]
fn in_change_tracking_a_synced_file_keeps_its_name_through_a_crash() {
    use filerep::io::disk::{Disk, OpenMode, SimDisk};
    let dirs = Dirs::new();
    let state = tempfile::tempdir().expect("state dir");
    let log = changelog(state.path());
    let disk = Arc::new(SimDisk::new(2));
    let mut cfg = primary_config(&dirs, BS, SyncLevel::Applied);
    cfg.change_tracking = Some(tracking(&log, Arc::new(FixedArbiter(Decision::MirrorDown))));
    let p = filerep::runtime::primary::Primary::start_alone(cfg, disk.clone(), "test").expect("start alone");
    assert_eq!(p.mode(), Mode::ChangeTracking);
    p.mkdir(0, "d").unwrap();
    p.create(0, "d/f").unwrap();
    p.extend(0, "d/f", 0, &[5u8; BS as usize]).unwrap();
    p.sync(0, "d/f").unwrap();
    p.create(0, "unsynced").unwrap();
    drop(p);
    disk.crash(None);
    let f = FsPath::new(0, RelPath::new("d/f").unwrap());
    assert!(disk.exists(&f).unwrap(), "a synced file lost its name in the crash");
    let mut buf = vec![0u8; BS as usize];
    disk.open(&f, OpenMode::Existing).unwrap().read_at(0, &mut buf).unwrap();
    assert_eq!(buf, vec![5u8; BS as usize]);
    let blocks = log.change_set();
    assert!(blocks.covers_block(&f, 0), "and the change-log names the block");
}
