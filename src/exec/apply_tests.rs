//! Tests of the mirror's executor.

use super::*;
use crate::io::disk::{SimDisk, SimEntry};

fn p(s: &str) -> FsPath {
    FsPath::new(0, RelPath::new(s).unwrap())
}

fn op(seq: u64, op: Op) -> Sequenced {
    Sequenced { seq, op, durable: false, catching_up: false }
}

/// A real file on this host's disk, through the std backend.
fn real_file(dir: &std::path::Path) -> (Arc<dyn Disk>, Arc<dyn DiskFile>) {
    let disk: Arc<dyn Disk> = Arc::new(crate::io::disk::StdDisk::open(&[dir.to_path_buf()]).unwrap());
    let f = disk.open(&p("f"), OpenMode::CreateTruncate).unwrap();
    (disk, f)
}

fn kernel(op: &'static str, errno: i32) -> DiskError {
    DiskError::from_io(op, "fs0:f", &std::io::Error::from_raw_os_error(errno))
}

#[test]
fn a_write_past_what_the_file_system_holds_is_a_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, _f) = real_file(dir.path());
    // EFBIG is what ext4 answers for a write ending past 16 TiB.
    let e = kernel("write", libc::EFBIG);
    assert_eq!((e.errno, e.kind), (Some(libc::EFBIG), DiskErrorKind::Io));
    assert_eq!(fault_class(&e), FaultClass::BadRequest);
    disk.create_dir(&p("d")).unwrap();
    let e = disk.open(&p("d"), OpenMode::Existing).unwrap_err();
    assert_eq!((e.errno, fault_class(&e)), (Some(libc::EISDIR), FaultClass::BadRequest), "{e}");
    let e = disk.open(&p("missing"), OpenMode::Existing).unwrap_err();
    assert_eq!((e.errno, fault_class(&e)), (Some(libc::ENOENT), FaultClass::BadRequest));
    let e = disk.remove_dir(&p("f")).unwrap_err();
    assert_eq!((e.errno, fault_class(&e)), (Some(libc::ENOTDIR), FaultClass::BadRequest));
    for errno in [libc::EINVAL, libc::ENAMETOOLONG, libc::EEXIST, libc::ENOTEMPTY, libc::EISDIR, libc::EXDEV] {
        assert_eq!(fault_class(&kernel("write", errno)), FaultClass::BadRequest, "errno {errno}");
    }
    // The simulator's refusals carry no errno: sorted by kind.
    let sim = DiskError::new("open", "fs0:f", DiskErrorKind::NotFound, "no such file");
    assert_eq!(fault_class(&sim), FaultClass::BadRequest);
}

#[test]
fn an_io_error_or_a_read_only_or_full_disk_is_a_failing_disk() {
    for errno in [libc::EIO, libc::EROFS, libc::EUCLEAN, libc::EACCES, libc::ENOSPC, libc::EDQUOT] {
        assert_eq!(fault_class(&kernel("write", errno)), FaultClass::DiskFailing, "errno {errno}");
    }
    // An errno nobody sorted counts as a failing disk: the safe side.
    assert_eq!(fault_class(&kernel("write", libc::EHWPOISON)), FaultClass::DiskFailing);
    let injected = DiskError::new("fdatasync", "fs0:f", DiskErrorKind::Io, "injected fsync failure");
    assert_eq!(fault_class(&injected), FaultClass::DiskFailing);
    let full = DiskError::new("write", "fs0:f", DiskErrorKind::NoSpace, "injected ENOSPC");
    assert_eq!(fault_class(&full), FaultClass::DiskFailing, "as the simulator faults a full mirror");
}

#[test]
fn a_passing_shortage_is_retried() {
    for errno in [libc::EINTR, libc::EAGAIN, libc::ENOMEM, libc::ENOBUFS, libc::EMFILE, libc::ENFILE, libc::EBUSY] {
        let e = ApplyError { seq: 7, op: "write", error: kernel("write", errno) };
        assert_eq!(e.class(), FaultClass::Retry, "errno {errno}");
    }
}

#[test]
fn the_errno_table_names_each_errno_once_and_by_its_name() {
    let mut seen = std::collections::BTreeSet::new();
    for (errno, name, _) in ERRNO_CLASSES {
        assert!(seen.insert(*errno), "{name} twice");
        let text = std::io::Error::from_raw_os_error(*errno).to_string();
        assert!(!text.contains("Unknown error"), "{name} ({errno}): {text}");
    }
    assert!(ERRNO_CLASSES.iter().any(|(.., c)| *c == FaultClass::Retry));
}

#[test]
fn sync_dirs_asks_for_a_job_that_makes_changed_directories_durable() {
    let disk = Arc::new(SimDisk::new(1));
    let mut a = Applier::new(disk.clone(), 1);
    let wants = a.apply(&[op(1, Op::Mkdir { path: p("d") }), op(2, Op::Create { id: 1, path: p("d/f") })]).unwrap();
    assert!(!wants, "namespace changes alone wait for a sync");
    assert!(disk.durable_snapshot().is_empty());
    assert!(a.apply(&[op(3, Op::SyncDirs)]).unwrap(), "a directory sync asks for a job");
    let job = a.take_sync_job();
    assert_eq!(job.run(disk.as_ref()).unwrap(), 3, "synced through the directory sync");
    let names: Vec<String> = disk.durable_snapshot().into_keys().map(|(_, n)| n).collect();
    assert_eq!(names, ["d", "d/f"]);
}

#[test]
fn catching_up_a_mirror_makes_what_live_changes_name_instead_of_failing() {
    let disk = Arc::new(SimDisk::new(1));
    let mut a = Applier::new(disk.clone(), 1);
    let data = bytes::Bytes::from_static(b"new");
    let write = |seq, path: &str| Op::Write { id: seq as u32, path: p(path), offset: 4, data: data.clone() };
    // Strict, a write to a file this mirror lacks is refused.
    assert!(a.apply(&[op(1, write(1, "d/e/f"))]).is_err());
    let mut a = Applier::new(disk.clone(), 1);
    let up = |seq, o| Sequenced { seq, op: o, durable: false, catching_up: true };
    a.apply(&[
        up(1, write(1, "d/e/f")),
        up(2, Op::Unlink { id: 9, path: p("x/missing") }),
        up(3, Op::Rmdir { path: p("gone") }),
        up(4, Op::Mkdir { path: p("m/n") }),
        up(5, Op::Mkdir { path: p("m/n") }),
        up(6, Op::Rename { from: p("not/here"), to: p("there") }),
        up(7, Op::Create { id: 7, path: p("q/r") }),
        up(8, Op::Sync { id: 10, path: p("nowhere") }),
        up(9, Op::Truncate { id: 11, path: p("t/u"), len: 8192 }),
    ])
    .unwrap();
    assert_eq!(a.applied(), 9);
    a.sync_all().unwrap();
    let snap = disk.snapshot();
    let file = |x: &str| match snap.get(&(0, x.to_string())) {
        Some(SimEntry::File(d)) => d.clone(),
        other => panic!("{x}: {other:?}"),
    };
    assert_eq!(file("d/e/f"), b"\0\0\0\0new");
    assert!(file("q/r").is_empty());
    assert_eq!(file("t/u").len(), 8192);
    assert!(matches!(snap.get(&(0, "m/n".to_string())), Some(SimEntry::Dir)));
    assert!(!snap.contains_key(&(0, "there".to_string())));
    // A directory the primary removed goes with whatever this mirror still has in it.
    a.apply(&[up(10, Op::Create { id: 12, path: p("m/n/stale") }), up(11, Op::Rmdir { path: p("m/n") })]).unwrap();
    assert!(!disk.snapshot().contains_key(&(0, "m/n".to_string())));
}

#[test]
fn list_requests_answer_what_is_there_and_hashes_of_a_directory_do_not_fail() {
    let disk = Arc::new(SimDisk::new(1));
    let mut a = Applier::new(disk.clone(), 1);
    a.apply(&[op(1, Op::Mkdir { path: p("d") }), op(2, Op::Create { id: 1, path: p("d/f") })]).unwrap();
    let list =
        |seq, path: Option<&str>| op(seq, Op::List { filespace: 0, path: path.map(|x| RelPath::new(x).unwrap()) });
    a.apply(&[
        list(3, None),
        list(4, Some("d")),
        list(5, Some("d/f")),
        list(6, Some("missing")),
        op(7, Op::Hash { id: 2, path: p("d"), first: 0, count: 2, block_size: 8192 }),
    ])
    .unwrap();
    let empty = xxhash_rust::xxh3::xxh3_64(b"");
    let r = a.take_replies();
    let dir = |kids: &[(&str, ListedKind)]| {
        ListingBody::build(ListedKind::Dir, &kids.iter().map(|(n, k)| (n.to_string(), *k)).collect::<Vec<_>>())
    };
    assert_eq!(
        r,
        vec![
            Reply::Listing { seq: 3, body: dir(&[("d", ListedKind::Dir)]) },
            Reply::Listing { seq: 4, body: dir(&[("f", ListedKind::File)]) },
            Reply::Listing { seq: 5, body: ListingBody::build(ListedKind::File, &[]) },
            Reply::Listing { seq: 6, body: ListingBody::build(ListedKind::Absent, &[]) },
            Reply::Hashes { seq: 7, hashes: vec![empty, empty] },
        ]
    );
    assert_eq!(a.applied(), 7);
}

#[test]
fn reconcile_makes_paths_what_the_primary_has_and_prunes_the_rest() {
    use crate::protocol::{ChildKind, ReconcileEntry};
    let disk = Arc::new(SimDisk::new(1));
    let mut a = Applier::new(disk.clone(), 1);
    let rec = |seq, path: Option<&str>, entry, len| {
        op(seq, Op::Reconcile { filespace: 0, path: path.map(|x| RelPath::new(x).unwrap()), entry, len })
    };
    // The mirror's tree: a file where the primary has a directory, extra
    // files, a directory where the primary has a file.
    a.apply(&[
        op(1, Op::Mkdir { path: p("d") }),
        op(2, Op::Create { id: 1, path: p("d/stale") }),
        op(3, Op::Create { id: 2, path: p("x") }),
        op(4, Op::Mkdir { path: p("y") }),
        op(5, Op::Create { id: 3, path: p("y/z") }),
        op(6, Op::Create { id: 4, path: p("keep") }),
        op(7, Op::Write { id: 4, path: p("keep"), offset: 0, data: bytes::Bytes::from_static(b"abcdef") }),
    ])
    .unwrap();
    let keep = vec![("d".to_string(), ChildKind::Dir), ("keep".into(), ChildKind::File), ("x".into(), ChildKind::Dir)];
    a.apply(&[
        rec(8, None, ReconcileEntry::Dir { keep: Some(keep) }, 0),
        rec(9, Some("d"), ReconcileEntry::Dir { keep: Some(vec![]) }, 0),
        rec(10, Some("x"), ReconcileEntry::Dir { keep: None }, 0),
        rec(11, Some("keep"), ReconcileEntry::File, 3),
        rec(12, Some("gone"), ReconcileEntry::Absent, 0),
        rec(13, Some("new"), ReconcileEntry::File, 4),
    ])
    .unwrap();
    // Running it again changes nothing.
    let before = disk.snapshot();
    a.apply(&[rec(14, Some("keep"), ReconcileEntry::File, 3), rec(15, Some("gone"), ReconcileEntry::Absent, 0)])
        .unwrap();
    assert_eq!(disk.snapshot(), before);
    a.sync_all().unwrap();
    let snap = disk.durable_snapshot();
    let names: Vec<&str> = snap.keys().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, vec!["d", "keep", "new", "x"], "{snap:?}");
    assert_eq!(snap.get(&(0, "keep".to_string())), Some(&SimEntry::File(b"abc".to_vec())));
    assert_eq!(snap.get(&(0, "new".to_string())), Some(&SimEntry::File(vec![0; 4])));
    assert_eq!(snap.get(&(0, "x".to_string())), Some(&SimEntry::Dir));
}

/// A reconcile that finds the path already as the primary has it still
/// makes that durable with the next job: this host's state may only be
/// in its page cache (a demoted primary's unsynced rmdir, found by the
/// fault simulator).
#[test]
fn a_reconcile_that_changes_nothing_still_makes_the_path_durable() {
    use crate::protocol::ReconcileEntry;
    let disk = Arc::new(SimDisk::new(1));
    disk.create_dir(&p("gone")).unwrap();
    disk.sync_parent_dir(&p("gone")).unwrap();
    disk.remove_dir(&p("gone")).unwrap();
    disk.create_dir(&p("new")).unwrap();
    let mut a = Applier::new(disk.clone(), 1);
    let rec = |seq, path: &str, entry| {
        op(seq, Op::Reconcile { filespace: 0, path: Some(RelPath::new(path).unwrap()), entry, len: 0 })
    };
    a.apply(&[rec(1, "gone", ReconcileEntry::Absent), rec(2, "new", ReconcileEntry::Dir { keep: None })]).unwrap();
    assert!(a.has_unsynced());
    a.take_sync_job().run(disk.as_ref()).unwrap();
    let durable = disk.durable_snapshot();
    assert!(!durable.contains_key(&(0, "gone".to_string())), "{durable:?}");
    assert_eq!(durable.get(&(0, "new".to_string())), Some(&SimEntry::Dir));
}

/// A directory renamed away and re-created under its old name: a sync
/// must still make the new directory's entries durable.
#[test]
fn recreated_directory_gets_its_own_handle() {
    let disk = Arc::new(SimDisk::new(1));
    let mut a = Applier::new(disk.clone(), 1);
    a.apply(&[op(1, Op::Mkdir { path: p("d") }), op(2, Op::Create { id: 1, path: p("d/x") })]).unwrap();
    a.sync_all().unwrap();
    a.apply(&[
        op(3, Op::Create { id: 2, path: p("d/w") }),
        op(4, Op::Rename { from: p("d"), to: p("e") }),
        op(5, Op::Mkdir { path: p("d") }),
        op(6, Op::Create { id: 3, path: p("d/y") }),
        op(7, Op::Sync { id: 3, path: p("d/y") }),
    ])
    .unwrap();
    assert!(a.wants_sync());
    let job = a.take_sync_job();
    assert_eq!(job.through, 7);
    assert_eq!(job.durable_through, None, "a sync job is not a full checkpoint");
    job.run(disk.as_ref()).unwrap();
    disk.crash(None);
    let snap = disk.snapshot();
    assert_eq!(snap.get(&(0, "d/y".to_string())), Some(&SimEntry::File(vec![])), "{snap:?}");
    assert_eq!(snap.get(&(0, "e/w".to_string())), Some(&SimEntry::File(vec![])), "{snap:?}");
}

#[test]
fn durable_flag_syncs_its_file_and_full_jobs_cover_everything() {
    let disk = Arc::new(SimDisk::new(1));
    let mut a = Applier::new(disk.clone(), 1);
    a.apply(&[op(1, Op::Create { id: 1, path: p("a") }), op(2, Op::Create { id: 2, path: p("b") })]).unwrap();
    a.sync_all().unwrap();
    let w = |seq, id, path: &str, durable| Sequenced {
        catching_up: false,
        seq,
        op: Op::Write { id, path: p(path), offset: 0, data: bytes::Bytes::from_static(b"data") },
        durable,
    };
    assert!(!a.apply(&[w(3, 2, "b", false)]).unwrap(), "a plain write asks for no sync");
    assert!(a.apply(&[w(4, 1, "a", true)]).unwrap(), "a durable write asks for a sync");
    a.take_sync_job().run(disk.as_ref()).unwrap();
    let durable = disk.durable_snapshot();
    assert_eq!(durable.get(&(0, "a".to_string())), Some(&SimEntry::File(b"data".to_vec())));
    assert_eq!(durable.get(&(0, "b".to_string())), Some(&SimEntry::File(vec![])), "b was not asked for");
    assert!(a.has_unsynced());
    a.sync_all().unwrap();
    assert_eq!(a.durable(), 4);
    assert_eq!(disk.durable_snapshot(), disk.snapshot());
}

#[test]
fn writeback_starts_once_a_file_has_taken_enough_writes() {
    let disk = Arc::new(SimDisk::new(1));
    let mut a = Applier::new(disk.clone(), 1);
    a.apply(&[op(1, Op::Create { id: 1, path: p("big") }), op(2, Op::Create { id: 2, path: p("small") })]).unwrap();
    let block = bytes::Bytes::from(vec![7u8; 256 << 10]);
    let write = |seq: u64, id: u32, path: &str, i: u64| {
        op(seq, Op::Write { id, path: p(path), offset: i * block.len() as u64, data: block.clone() })
    };
    // 20 MiB to one file in batches of 1 MiB, 1 MiB to another.
    let mut seq = 3;
    for batch in 0..20 {
        let ops: Vec<_> = (0..4).map(|i| write(seq + i, 1, "big", batch * 4 + i)).collect();
        a.apply(&ops).unwrap();
        seq += 4;
    }
    a.apply(&(0..4).map(|i| write(seq + i, 2, "small", i)).collect::<Vec<_>>()).unwrap();
    assert_eq!(a.applied(), seq + 3);
    // Every WRITEBACK_AFTER bytes of one file: twice for 20 MiB, never for 1 MiB.
    assert_eq!(WRITEBACK_AFTER, 8 << 20);
    assert_eq!(disk.writebacks_started(), 2);
}
