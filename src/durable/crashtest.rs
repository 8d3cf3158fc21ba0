//! Our durable formats under their own power cut, at every step.
//!
//! In the style of redb's crash-consistency backend: [`CrashDisk`] counts
//! every mutating call an update makes (creates, writes, truncates, syncs,
//! renames, removes, directory syncs) and loses power after the k-th: the
//! calls after it fail, and the simulated disk keeps only what was synced,
//! with the k-th call, if it was a write, torn at each 512-byte sector
//! boundary of the file in turn (none of it, every sector prefix, all of
//! it). Each format is then opened as the engine opens it after a restart,
//! and must open (no error that would stop the cluster) to the state before
//! the update or after it: for an update made of several calls, the state
//! after any whole call. The open itself is cut at every step too (a
//! change-log with a torn tail is repaired on open) and opened once more.
//! Then one more change is made and read back: the file goes on working.
//!
//! Covered: [`files::replace`] itself (every state and configuration file
//! goes through it), the change-log (create, group commits of every record
//! kind, compaction, clearing, resync progress, retiring, merging), the
//! activity log in it (cover, retire), the mirror's state file and the
//! catalog.

use super::catalog::{Catalog, SegmentAddress};
use super::changelog::{ChangeLog, ChangeSet};
use super::files;
use super::mirror_state::MirrorState;
use crate::io::disk::{Disk, DiskError, DiskErrorKind, DiskFile, DiskResult, EntryKind, FsPath, OpenMode, SimDisk};
use crate::protocol::path::RelPath;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex};

const SECTOR: u64 = 512;

/// What the calls so far did, and when the power goes.
#[derive(Debug, Default)]
struct Meter {
    /// Mutating calls performed.
    done: u64,
    /// Lose power after this many.
    limit: Option<u64>,
    lost: bool,
    /// (call number, offset, length) of every write performed.
    writes: Vec<(u64, u64, u64)>,
}

type Shared = Arc<Mutex<Meter>>;

fn lock(m: &Mutex<Meter>) -> std::sync::MutexGuard<'_, Meter> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn power(op: &'static str, path: impl ToString) -> DiskError {
    DiskError::new(op, path, DiskErrorKind::Io, "the power is gone")
}

/// Before a mutating call: may it happen?
fn gate(m: &Shared, op: &'static str, path: &str) -> DiskResult<u64> {
    let mut g = lock(m);
    if g.lost || g.limit.is_some_and(|l| g.done >= l) {
        g.lost = true;
        return Err(power(op, path));
    }
    g.done += 1;
    Ok(g.done)
}

fn alive(m: &Shared, op: &'static str, path: &str) -> DiskResult<()> {
    if lock(m).lost {
        Err(power(op, path))
    } else {
        Ok(())
    }
}

/// A [`SimDisk`] that loses power after a given number of mutating calls.
struct CrashDisk {
    sim: Arc<SimDisk>,
    m: Shared,
}

impl CrashDisk {
    fn new(sim: Arc<SimDisk>, limit: Option<u64>) -> Arc<CrashDisk> {
        Arc::new(CrashDisk { sim, m: Arc::new(Mutex::new(Meter { limit, ..Meter::default() })) })
    }

    fn done(&self) -> u64 {
        lock(&self.m).done
    }

    fn writes(&self) -> Vec<(u64, u64, u64)> {
        lock(&self.m).writes.clone()
    }
}

#[derive(Debug)]
struct CrashFile {
    inner: Arc<dyn DiskFile>,
    m: Shared,
    path: String,
}

impl DiskFile for CrashFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> DiskResult<()> {
        let n = gate(&self.m, "write", &self.path)?;
        lock(&self.m).writes.push((n, offset, buf.len() as u64));
        self.inner.write_at(offset, buf)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> DiskResult<usize> {
        alive(&self.m, "read", &self.path)?;
        self.inner.read_at(offset, buf)
    }
    fn sync_data(&self) -> DiskResult<()> {
        gate(&self.m, "sync", &self.path)?;
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> DiskResult<()> {
        gate(&self.m, "set_len", &self.path)?;
        self.inner.set_len(len)
    }
    fn len(&self) -> DiskResult<u64> {
        alive(&self.m, "len", &self.path)?;
        self.inner.len()
    }
}

impl Disk for CrashDisk {
    fn open(&self, path: &FsPath, mode: OpenMode) -> DiskResult<Arc<dyn DiskFile>> {
        if mode == OpenMode::Existing {
            alive(&self.m, "open", &path.to_string())?;
        } else {
            gate(&self.m, "open", &path.to_string())?;
        }
        let inner = self.sim.open(path, mode)?;
        Ok(Arc::new(CrashFile { inner, m: self.m.clone(), path: path.to_string() }))
    }
    fn remove_file(&self, path: &FsPath) -> DiskResult<()> {
        gate(&self.m, "remove_file", &path.to_string())?;
        self.sim.remove_file(path)
    }
    fn rename(&self, from: &FsPath, to: &FsPath) -> DiskResult<()> {
        gate(&self.m, "rename", &from.to_string())?;
        self.sim.rename(from, to)
    }
    fn create_dir(&self, path: &FsPath) -> DiskResult<()> {
        gate(&self.m, "create_dir", &path.to_string())?;
        self.sim.create_dir(path)
    }
    fn remove_dir(&self, path: &FsPath) -> DiskResult<()> {
        gate(&self.m, "remove_dir", &path.to_string())?;
        self.sim.remove_dir(path)
    }
    fn sync_parent_dir(&self, path: &FsPath) -> DiskResult<()> {
        gate(&self.m, "sync_dir", &path.to_string())?;
        self.sim.sync_parent_dir(path)
    }
    fn parent_dir_handle(&self, path: &FsPath) -> DiskResult<Arc<dyn DiskFile>> {
        alive(&self.m, "open_dir", &path.to_string())?;
        let inner = self.sim.parent_dir_handle(path)?;
        Ok(Arc::new(CrashFile { inner, m: self.m.clone(), path: path.to_string() }))
    }
    fn exists(&self, path: &FsPath) -> DiskResult<bool> {
        alive(&self.m, "exists", &path.to_string())?;
        self.sim.exists(path)
    }
    fn entry_kind(&self, path: &FsPath) -> DiskResult<Option<EntryKind>> {
        alive(&self.m, "entry_kind", &path.to_string())?;
        self.sim.entry_kind(path)
    }
    fn list_dir(&self, filespace: u16, dir: Option<&RelPath>) -> DiskResult<Vec<(String, EntryKind)>> {
        alive(&self.m, "list_dir", "")?;
        self.sim.list_dir(filespace, dir)
    }
    fn name(&self) -> &'static str {
        "crash"
    }
}

/// How much of a write survives: nothing, each prefix ending on a sector
/// boundary of the file, all of it.
fn tears(writes: &[(u64, u64, u64)], call: u64) -> Vec<Option<usize>> {
    let mut out = vec![None];
    if let Some(&(_, off, len)) = writes.iter().find(|w| w.0 == call) {
        let mut b = (off / SECTOR + 1) * SECTOR;
        while b < off + len {
            out.push(Some((b - off) as usize));
            b += SECTOR;
        }
        out.push(Some(len as usize));
    }
    out
}

/// One format's power-cut cases.
struct Case<S> {
    name: &'static str,
    /// Write the state before the update (everything synced).
    setup: fn(Arc<dyn Disk>),
    /// The update, as `steps` whole calls; performs the first `upto`.
    run: fn(Arc<dyn Disk>, usize) -> Result<(), String>,
    steps: usize,
    /// Open as the engine does after a restart.
    open: fn(Arc<dyn Disk>) -> Result<S, String>,
    /// One more change after the restart, and what opening then shows.
    after: fn(Arc<dyn Disk>, &S) -> Result<S, String>,
}

/// What one case covered.
#[derive(Debug, Default)]
struct Covered {
    cuts: u64,
    torn: u64,
    open_cuts: u64,
}

impl<S: PartialEq + Debug> Case<S> {
    fn fresh(&self) -> Arc<SimDisk> {
        let sim = Arc::new(SimDisk::new(1));
        (self.setup)(sim.clone());
        sim.crash(None);
        sim
    }

    /// The state after `k` mutating calls of the update, the `tear`-th
    /// tear, and (with `open_limit`) an open cut after that many calls.
    fn cut(&self, k: u64, tear: Option<usize>, open_limit: Option<u64>) -> (Arc<SimDisk>, Result<u64, String>) {
        let sim = self.fresh();
        let _ = (self.run)(CrashDisk::new(sim.clone(), Some(k)), self.steps);
        sim.crash(tear);
        let opened = match open_limit {
            None => Ok(0),
            Some(j) => {
                let d = CrashDisk::new(sim.clone(), Some(j));
                let _ = (self.open)(d.clone());
                sim.crash(None);
                Ok(d.done())
            }
        };
        (sim, opened)
    }

    fn check(&self) -> Covered {
        let name = self.name;
        // The states a cut may leave: after each whole call.
        let allowed: Vec<S> = (0..=self.steps)
            .map(|i| {
                let sim = self.fresh();
                (self.run)(sim.clone(), i).unwrap_or_else(|e| panic!("{name}: step {i} without a cut: {e}"));
                sim.crash(None);
                (self.open)(sim).unwrap_or_else(|e| panic!("{name}: open after {i} steps: {e}"))
            })
            .collect();
        let probe = CrashDisk::new(self.fresh(), None);
        (self.run)(probe.clone(), self.steps).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (total, writes) = (probe.done(), probe.writes());
        assert!(total > 0, "{name}: the update wrote nothing");
        let mut covered = Covered::default();
        for k in 0..=total {
            for tear in tears(&writes, k) {
                covered.cuts += 1;
                covered.torn += u64::from(tear.is_some());
                let at = format!("{name}: power cut after call {k} of {total} (tear {tear:?})");
                // The open after the cut, counted, then cut at each of its calls.
                let (sim, _) = self.cut(k, tear, None);
                let counter = CrashDisk::new(sim.clone(), None);
                let state = (self.open)(counter.clone()).unwrap_or_else(|e| panic!("{at}: does not open: {e}"));
                assert!(
                    allowed.contains(&state),
                    "{at}: opens to a state no whole call left: {state:?}\nallowed: {allowed:?}"
                );
                let open_calls = counter.done();
                for j in 0..open_calls {
                    covered.open_cuts += 1;
                    let (sim, _) = self.cut(k, tear, Some(j));
                    let again = (self.open)(sim.clone())
                        .unwrap_or_else(|e| panic!("{at}, and again after call {j} of the open: does not open: {e}"));
                    assert!(allowed.contains(&again), "{at}, then after call {j} of the open: {again:?}");
                }
                // And it goes on working.
                let after = (self.after)(sim.clone(), &state).unwrap_or_else(|e| panic!("{at}: then: {e}"));
                sim.crash(None);
                let reopened = (self.open)(sim).unwrap_or_else(|e| panic!("{at}: reopened: {e}"));
                assert_eq!(reopened, after, "{at}: a change after the restart is lost");
            }
        }
        eprintln!(
            "{name}: {total} calls, {} cuts ({} torn), {} cuts inside the open after them",
            covered.cuts, covered.torn, covered.open_cuts
        );
        covered
    }
}

fn p(s: &str) -> FsPath {
    FsPath::new(0, RelPath::new(s).unwrap())
}

// ---- files::replace -----------------------------------------------------

fn replaced() -> FsPath {
    p("state.json")
}

fn replace_setup(d: Arc<dyn Disk>) {
    files::replace(d.as_ref(), &replaced(), &vec![b'o'; 700]).unwrap();
}

fn replace_run(d: Arc<dyn Disk>, upto: usize) -> Result<(), String> {
    if upto > 0 {
        files::replace(d.as_ref(), &replaced(), &vec![b'n'; 1300]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn replace_open(d: Arc<dyn Disk>) -> Result<Option<Vec<u8>>, String> {
    files::read(d.as_ref(), &replaced()).map_err(|e| e.to_string())
}

fn replace_after(d: Arc<dyn Disk>, _: &Option<Vec<u8>>) -> Result<Option<Vec<u8>>, String> {
    files::replace(d.as_ref(), &replaced(), b"third").map_err(|e| e.to_string())?;
    Ok(Some(b"third".to_vec()))
}

#[test]
fn a_replaced_file_is_old_or_new_at_every_cut() {
    let case = Case {
        name: "files::replace",
        setup: replace_setup,
        run: replace_run,
        steps: 1,
        open: replace_open,
        after: replace_after,
    };
    let c = case.check();
    // Six cut points (after the create, write, sync, rename, directory sync,
    // or before all); the 1300-byte write torn at 512, 1024 and 1300.
    assert_eq!((c.cuts, c.torn), (9, 3), "{c:?}");
}

// ---- the change-log and the activity log in it -----------------------------

fn log_path() -> FsPath {
    p("changelog")
}

/// As `filerep segment` opens it: replayed if there is one, created if not.
fn log_open_handle(d: Arc<dyn Disk>) -> Result<ChangeLog, String> {
    if d.exists(&log_path()).map_err(|e| e.to_string())? {
        ChangeLog::open(d, log_path()).map(|(l, _)| l).map_err(|e| e.to_string())
    } else {
        ChangeLog::create(d, log_path(), 8192).map_err(|e| e.to_string())
    }
}

fn log_open(d: Arc<dyn Disk>) -> Result<ChangeSet, String> {
    Ok(log_open_handle(d)?.change_set())
}

fn log_after(d: Arc<dyn Disk>, before: &ChangeSet) -> Result<ChangeSet, String> {
    let log = log_open_handle(d)?;
    log.record_touched(&p("after-the-restart"), false).map_err(|e| e.to_string())?;
    let mut want = before.clone();
    want.touched.insert(p("after-the-restart"), false);
    Ok(want)
}

/// A log with a bit of everything in it, synced.
fn log_setup(d: Arc<dyn Disk>) {
    let log = ChangeLog::create(d, log_path(), 8192).unwrap();
    for b in [0, 1, 2, 40, 41] {
        log.record_block(&p("base/rel"), b).unwrap();
    }
    log.record_touched(&p("dir"), true).unwrap();
    log.record_extents(&p("base/other"), 0, 70).unwrap();
    log.record_batch([(p("base/rel"), 3)], [(p("gone"), false)]).unwrap();
}

fn empty_setup(_: Arc<dyn Disk>) {}

/// Each step one call of the change-log's API, as the engine makes them.
fn log_run(d: Arc<dyn Disk>, upto: usize) -> Result<(), String> {
    let log = log_open_handle(d)?;
    let e = |e: super::changelog::ChangeLogError| e.to_string();
    let steps: [&dyn Fn() -> Result<(), String>; 9] = [
        // A group commit per call: blocks (their extent's record), paths, a window.
        &|| log.record_block(&p("base/rel"), 100).map_err(e),
        &|| log.record_touched(&p("new/file"), false).map_err(e),
        &|| log.record_batch((0..300).map(|b| (p("big"), b)), [(p("x"), true)]).map_err(e),
        // Resync progress.
        &|| {
            let blocks = BTreeMap::from([(p("base/rel"), BTreeSet::from([0, 1, 2]))]);
            log.clear_entries(&blocks, &[p("dir")]).map_err(e)
        },
        // Rewrites: compaction, retiring activity entries.
        &|| log.compact().map_err(e),
        &|| {
            let extents = BTreeMap::from([(p("base/other"), BTreeSet::from([0, 1]))]);
            log.retire_active(&extents, &BTreeSet::from([p("gone")])).map_err(e)
        },
        // A returning old primary's set merged in.
        &|| {
            let mut set = ChangeSet::default();
            set.blocks.insert(p("peer"), BTreeSet::from([7, 8]));
            set.extents.insert(p("peer"), BTreeSet::from([3]));
            set.touched.insert(p("peer-dir"), true);
            log.merge(&set).map_err(e)
        },
        // The end of a resync, keeping live entries; then everything.
        &|| {
            log.clear_keeping(&BTreeMap::from([(p("big"), BTreeSet::from([0]))]), &BTreeSet::new()).map(drop).map_err(e)
        },
        &|| log.clear().map_err(e),
    ];
    for step in steps.iter().take(upto) {
        step()?;
    }
    Ok(())
}

#[test]
fn the_change_log_opens_to_a_whole_call_at_every_cut() {
    let case = Case { name: "change-log", setup: log_setup, run: log_run, steps: 9, open: log_open, after: log_after };
    let c = case.check();
    assert!(c.cuts > 40 && c.torn > 10, "{c:?}");
    assert!(c.open_cuts > 0, "some cut left a torn tail for the open to repair: {c:?}");
}

fn create_run(d: Arc<dyn Disk>, upto: usize) -> Result<(), String> {
    if upto > 0 {
        log_open_handle(d)?;
    }
    Ok(())
}

#[test]
fn a_change_log_being_created_is_absent_or_empty_at_every_cut() {
    let case = Case {
        name: "change-log create",
        setup: empty_setup,
        run: create_run,
        steps: 1,
        open: log_open,
        after: log_after,
    };
    case.check();
}

/// The activity log's records as the primary's executor writes them
/// (`exec::primary`): newly hot extents and paths recorded durably before
/// the write, then retired once the mirror has them (a rewrite).
fn activity_run(d: Arc<dyn Disk>, upto: usize) -> Result<(), String> {
    let log = log_open_handle(d)?;
    let e = |e: super::changelog::ChangeLogError| e.to_string();
    if upto > 0 {
        log.record_extents(&p("base/hot"), 0, 1).map_err(e)?;
    }
    if upto > 1 {
        log.record_touched(&p("base/new"), false).map_err(e)?;
    }
    if upto > 2 {
        let extents = BTreeMap::from([(p("base/hot"), BTreeSet::from([0, 1]))]);
        log.retire_active(&extents, &BTreeSet::from([p("base/new")])).map_err(e)?;
    }
    Ok(())
}

#[test]
fn the_activity_log_opens_to_a_whole_call_at_every_cut() {
    let case =
        Case { name: "activity log", setup: log_setup, run: activity_run, steps: 3, open: log_open, after: log_after };
    let c = case.check();
    assert!(c.cuts > 10, "{c:?}");
}

// ---- the mirror's state file ---------------------------------------------

fn mirror_state() -> FsPath {
    p("mirror-state.json")
}

fn mirror_setup(d: Arc<dyn Disk>) {
    MirrorState { generation: 3, fault: None, streaming_boot: None }
        .store_to(d.as_ref(), &mirror_state(), Path::new("m"))
        .unwrap();
}

fn mirror_run(d: Arc<dyn Disk>, upto: usize) -> Result<(), String> {
    let states = [
        MirrorState { generation: 4, fault: None, streaming_boot: None },
        MirrorState { generation: 4, fault: Some("fdatasync failed: EIO".into()), streaming_boot: None },
    ];
    for s in states.iter().take(upto) {
        s.store_to(d.as_ref(), &mirror_state(), Path::new("m")).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn mirror_open(d: Arc<dyn Disk>) -> Result<MirrorState, String> {
    MirrorState::load_from(d.as_ref(), &mirror_state(), Path::new("m")).map_err(|e| e.to_string())
}

fn mirror_after(d: Arc<dyn Disk>, s: &MirrorState) -> Result<MirrorState, String> {
    let next = MirrorState { generation: s.generation + 1, fault: s.fault.clone(), streaming_boot: None };
    next.store_to(d.as_ref(), &mirror_state(), Path::new("m")).map_err(|e| e.to_string())?;
    Ok(next)
}

#[test]
fn the_mirror_state_file_is_old_or_new_at_every_cut() {
    let case = Case {
        name: "mirror state",
        setup: mirror_setup,
        run: mirror_run,
        steps: 2,
        open: mirror_open,
        after: mirror_after,
    };
    case.check();
}

// ---- the catalog ---------------------------------------------------------------

fn catalog() -> FsPath {
    p("catalog.json")
}

fn catalog_v1() -> Catalog {
    let a = |dbid: u32| SegmentAddress {
        dbid,
        host: format!("h{dbid}"),
        control: format!("127.0.0.1:{}", 20000 + dbid),
        data: format!("127.0.0.1:{}", 21000 + dbid),
        filespaces: Vec::new(),
    };
    Catalog::new(7, 8192, vec![(0, a(2), a(3))])
}

fn catalog_setup(d: Arc<dyn Disk>) {
    catalog_v1().store_to(d.as_ref(), &catalog(), Path::new("c")).unwrap();
}

fn catalog_run(d: Arc<dyn Disk>, upto: usize) -> Result<(), String> {
    let mut c = catalog_v1();
    for _ in 0..upto.min(2) {
        // A promotion, then the old primary back: two stores.
        let dbid = c.pairs[0].pair.acting_primary().dbid;
        c.apply(0, &crate::core::pair::Event::ProbeFailed { dbid });
        c.apply(0, &crate::core::pair::Event::SegmentUp { dbid });
        c.store_to(d.as_ref(), &catalog(), Path::new("c")).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn catalog_open(d: Arc<dyn Disk>) -> Result<Catalog, String> {
    // The history's times differ between runs: compare what decides roles.
    let mut c = Catalog::load_from(d.as_ref(), &catalog(), Path::new("c")).map_err(|e| e.to_string())?;
    for h in &mut c.history {
        h.unix_ms = 0;
    }
    Ok(c)
}

fn catalog_after(d: Arc<dyn Disk>, c: &Catalog) -> Result<Catalog, String> {
    let mut next = c.clone();
    next.note(0, "before".into(), "after".into(), "a note after the restart".into());
    next.store_to(d.as_ref(), &catalog(), Path::new("c")).map_err(|e| e.to_string())?;
    for h in &mut next.history {
        h.unix_ms = 0;
    }
    Ok(next)
}

#[test]
fn the_catalog_is_old_or_new_at_every_cut() {
    let case = Case {
        name: "catalog",
        setup: catalog_setup,
        run: catalog_run,
        steps: 2,
        open: catalog_open,
        after: catalog_after,
    };
    case.check();
}

// ---- every other sealed state file ---------------------------------------------
// The cluster file, the segments' configurations and role records are sealed
// documents replaced through `sealed::replace`, as below: one case covers them.

fn sealed_path() -> FsPath {
    p("segment.json")
}

fn sealed_write(d: &dyn Disk, n: u64) -> Result<(), String> {
    let body = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(700 + n as usize * 300));
    super::sealed::replace_on(
        d,
        &sealed_path(),
        &super::sealed::seal(super::sealed::Kind::SegmentConfig, 1, body.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

fn sealed_setup(d: Arc<dyn Disk>) {
    sealed_write(d.as_ref(), 1).unwrap();
}

fn sealed_run(d: Arc<dyn Disk>, upto: usize) -> Result<(), String> {
    for n in 2..2 + upto as u64 {
        sealed_write(d.as_ref(), n)?;
    }
    Ok(())
}

fn sealed_open(d: Arc<dyn Disk>) -> Result<u64, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        n: u64,
    }
    let doc: Option<Doc> = super::sealed::read_state_on(
        d.as_ref(),
        &sealed_path(),
        Path::new("segment.json"),
        super::sealed::Kind::SegmentConfig,
        1,
        false,
        "restore it",
    )
    .map_err(|e| e.to_string())?;
    doc.map(|d| d.n).ok_or_else(|| "the sealed file is gone".to_string())
}

fn sealed_after(d: Arc<dyn Disk>, n: &u64) -> Result<u64, String> {
    sealed_write(d.as_ref(), n + 1)?;
    sealed_open(d)
}

#[test]
fn a_sealed_state_file_is_old_or_new_at_every_cut() {
    let case = Case {
        name: "sealed state file",
        setup: sealed_setup,
        run: sealed_run,
        steps: 2,
        open: sealed_open,
        after: sealed_after,
    };
    case.check();
}
