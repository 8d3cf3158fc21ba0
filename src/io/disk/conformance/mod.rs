//! One conformance suite that every [`Disk`] backend must pass, so the
//! simulator's disk behaves like the real ones, plus backend-specific tests
//! (`backends.rs`: symlink confinement and direct I/O for the real
//! backends; `simulator.rs`: crashes and faults for the simulator).

use super::*;
use std::any::Any;

mod backends;
mod simulator;

/// Makes a fresh disk with two empty filespaces; the box keeps whatever
/// backs it (temporary directories) alive.
pub type MakeDisk<'a> = &'a dyn Fn() -> (Arc<dyn Disk>, Box<dyn Any>);

/// A named check; each gets a fresh disk.
type Check = (&'static str, fn(&dyn Disk));

const CHECKS: &[Check] = &[
    ("write_read_round_trip", check_write_read_round_trip),
    ("short_read_at_eof", check_short_read_at_eof),
    ("set_len_shrink_and_grow", check_set_len),
    ("create_new_twice", check_create_new_twice),
    ("existing_on_missing", check_existing_on_missing),
    ("create_truncate", check_create_truncate),
    ("create_in_missing_dir", check_create_in_missing_dir),
    ("dirs", check_dirs),
    ("rename_file", check_rename_file),
    ("rename_over_existing", check_rename_over_existing),
    ("rename_dir_moves_children", check_rename_dir),
    ("rename_errors", check_rename_errors),
    ("remove_file", check_remove_file),
    ("exists", check_exists),
    ("handle_survives_unlink", check_handle_survives_unlink),
    ("filespaces_are_separate", check_filespaces_separate),
    ("write_batch", check_write_batch),
    ("sync", check_sync),
    ("sync_parent_dir", check_sync_parent_dir),
    ("parent_dir_handle", check_parent_dir_handle),
    ("create_keeps_contents", check_create_keeps_contents),
    ("entry_kind_and_list_dir", check_entry_kind_and_list_dir),
    ("remove_tree", check_remove_tree),
];

/// Run every check against fresh disks from `make`.
pub fn run_all(make: MakeDisk<'_>) {
    for (name, check) in CHECKS {
        let (disk, _keep) = make();
        eprintln!("conformance [{}]: {name}", disk.name());
        check(&*disk);
    }
}

pub fn p(fs: u16, s: &str) -> FsPath {
    FsPath::new(fs, RelPath::new(s).expect("valid test path"))
}

/// The error kind of a result that must be an error.
pub fn kind<T: std::fmt::Debug>(r: DiskResult<T>) -> DiskErrorKind {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.kind,
    }
}

fn read_all(f: &dyn DiskFile) -> Vec<u8> {
    let len = f.len().expect("len") as usize;
    let mut buf = vec![0u8; len + 16];
    let n = f.read_at(0, &mut buf).expect("read");
    assert_eq!(n, len, "read_at returned {n} bytes of a {len}-byte file");
    buf.truncate(n);
    buf
}

fn read_path(d: &dyn Disk, path: &FsPath) -> Vec<u8> {
    read_all(&*d.open(path, OpenMode::Existing).expect("open existing"))
}

fn new_file(d: &dyn Disk, path: &FsPath, content: &[u8]) -> Arc<dyn DiskFile> {
    let f = d.open(path, OpenMode::CreateNew).expect("create");
    f.write_at(0, content).expect("write");
    f
}

fn check_create_keeps_contents(d: &dyn Disk) {
    new_file(d, &p(0, "f"), b"kept");
    let f = d.open(&p(0, "f"), OpenMode::Create).unwrap();
    assert_eq!(read_all(&*f), b"kept");
    let g = d.open(&p(0, "g"), OpenMode::Create).unwrap();
    assert_eq!(g.len().unwrap(), 0, "created when missing");
    d.create_dir(&p(0, "d")).unwrap();
    assert!(d.open(&p(0, "d"), OpenMode::Create).is_err(), "a directory is not a file");
}

fn check_entry_kind_and_list_dir(d: &dyn Disk) {
    d.create_dir(&p(0, "d")).unwrap();
    new_file(d, &p(0, "d/b"), b"1");
    d.create_dir(&p(0, "d/a")).unwrap();
    new_file(d, &p(0, "top"), b"2");
    assert_eq!(d.entry_kind(&p(0, "d")).unwrap(), Some(EntryKind::Dir));
    assert_eq!(d.entry_kind(&p(0, "d/b")).unwrap(), Some(EntryKind::File));
    assert_eq!(d.entry_kind(&p(0, "d/missing")).unwrap(), None);
    assert_eq!(d.entry_kind(&p(0, "top/under")).unwrap(), None, "beneath a file");
    assert_eq!(d.entry_kind(&p(0, "nodir/x")).unwrap(), None);
    let d_path = RelPath::new("d").unwrap();
    assert_eq!(
        d.list_dir(0, Some(&d_path)).unwrap(),
        vec![("a".to_string(), EntryKind::Dir), ("b".to_string(), EntryKind::File)]
    );
    assert_eq!(
        d.list_dir(0, None).unwrap(),
        vec![("d".to_string(), EntryKind::Dir), ("top".to_string(), EntryKind::File)]
    );
    assert!(d.list_dir(1, None).unwrap().is_empty(), "filespaces are separate");
    assert_eq!(kind(d.list_dir(0, Some(&RelPath::new("missing").unwrap()))), DiskErrorKind::NotFound);
    assert!(d.list_dir(9, None).is_err());
}

fn check_remove_tree(d: &dyn Disk) {
    d.create_dir(&p(0, "t")).unwrap();
    d.create_dir(&p(0, "t/u")).unwrap();
    new_file(d, &p(0, "t/u/f"), b"x");
    new_file(d, &p(0, "t/g"), b"y");
    new_file(d, &p(0, "keep"), b"z");
    remove_tree(d, &p(0, "t")).unwrap();
    assert!(!d.exists(&p(0, "t")).unwrap());
    remove_tree(d, &p(0, "t")).unwrap();
    remove_tree(d, &p(0, "keep")).unwrap();
    assert!(d.list_dir(0, None).unwrap().is_empty());
}

fn check_write_read_round_trip(d: &dyn Disk) {
    let f = d.open(&p(0, "f"), OpenMode::CreateNew).unwrap();
    assert_eq!(f.len().unwrap(), 0);
    f.write_at(0, b"hello").unwrap();
    // Sparse extension: the gap reads as zeros.
    f.write_at(100, b"world").unwrap();
    assert_eq!(f.len().unwrap(), 105);
    let mut buf = vec![0xAAu8; 105];
    assert_eq!(f.read_at(0, &mut buf).unwrap(), 105);
    assert_eq!(&buf[..5], b"hello");
    assert!(buf[5..100].iter().all(|&b| b == 0));
    assert_eq!(&buf[100..], b"world");
    // Overwrite in the middle, then read at an offset.
    f.write_at(3, b"LOWO").unwrap();
    let mut mid = [0u8; 6];
    assert_eq!(f.read_at(2, &mut mid).unwrap(), 6);
    assert_eq!(&mid, b"lLOWO\0");
    // A far sparse write, and a large one.
    f.write_at(1 << 20, &[7u8; 3]).unwrap();
    assert_eq!(f.len().unwrap(), (1 << 20) + 3);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    f.write_at(4096, &big).unwrap();
    let mut back = vec![0u8; big.len()];
    assert_eq!(f.read_at(4096, &mut back).unwrap(), big.len());
    assert_eq!(back, big);
    // An empty write is a no-op.
    f.write_at(10 << 20, &[]).unwrap();
    assert_eq!(f.len().unwrap(), (1 << 20) + 3);
    // A second handle sees the same content.
    let g = d.open(&p(0, "f"), OpenMode::Existing).unwrap();
    let mut head = [0u8; 3];
    assert_eq!(g.read_at(0, &mut head).unwrap(), 3);
    assert_eq!(&head, b"hel");
}

fn check_short_read_at_eof(d: &dyn Disk) {
    let f = new_file(d, &p(0, "f"), b"0123456789");
    let mut buf = [0u8; 20];
    assert_eq!(f.read_at(5, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"56789");
    assert_eq!(f.read_at(10, &mut buf).unwrap(), 0);
    assert_eq!(f.read_at(1000, &mut buf).unwrap(), 0);
    assert_eq!(f.read_at(0, &mut []).unwrap(), 0);
}

fn check_set_len(d: &dyn Disk) {
    let f = new_file(d, &p(0, "f"), &[9u8; 100]);
    f.set_len(10).unwrap();
    assert_eq!(f.len().unwrap(), 10);
    let mut buf = [0u8; 100];
    assert_eq!(f.read_at(0, &mut buf).unwrap(), 10);
    // Growing again: the old bytes past 10 are gone, the new region is zeros.
    f.set_len(50).unwrap();
    assert_eq!(f.len().unwrap(), 50);
    assert_eq!(f.read_at(0, &mut buf).unwrap(), 50);
    assert_eq!(&buf[..10], &[9u8; 10]);
    assert!(buf[10..50].iter().all(|&b| b == 0));
    f.set_len(0).unwrap();
    assert_eq!(read_all(&*f), Vec::<u8>::new());
}

fn check_create_new_twice(d: &dyn Disk) {
    let _f = d.open(&p(0, "f"), OpenMode::CreateNew).unwrap();
    assert_eq!(kind(d.open(&p(0, "f"), OpenMode::CreateNew)), DiskErrorKind::AlreadyExists);
    d.create_dir(&p(0, "d")).unwrap();
    assert_eq!(kind(d.open(&p(0, "d"), OpenMode::CreateNew)), DiskErrorKind::AlreadyExists);
    // Opening a directory as a file fails.
    assert_eq!(kind(d.open(&p(0, "d"), OpenMode::Existing)), DiskErrorKind::Io);
}

fn check_existing_on_missing(d: &dyn Disk) {
    assert_eq!(kind(d.open(&p(0, "missing"), OpenMode::Existing)), DiskErrorKind::NotFound);
    assert!(!d.exists(&p(0, "missing")).unwrap());
}

fn check_create_truncate(d: &dyn Disk) {
    new_file(d, &p(0, "f"), b"0123456789");
    let f = d.open(&p(0, "f"), OpenMode::CreateTruncate).unwrap();
    assert_eq!(f.len().unwrap(), 0);
    assert_eq!(read_path(d, &p(0, "f")), b"");
    // On a missing file it creates.
    let g = d.open(&p(0, "g"), OpenMode::CreateTruncate).unwrap();
    g.write_at(0, b"x").unwrap();
    assert_eq!(read_path(d, &p(0, "g")), b"x");
}

fn check_create_in_missing_dir(d: &dyn Disk) {
    for mode in [OpenMode::CreateNew, OpenMode::CreateTruncate, OpenMode::Existing] {
        assert_eq!(kind(d.open(&p(0, "nope/f"), mode)), DiskErrorKind::NotFound, "{mode:?}");
    }
    assert_eq!(kind(d.create_dir(&p(0, "nope/sub"))), DiskErrorKind::NotFound);
    assert_eq!(kind(d.create_dir(&p(0, "nope/deeper/sub"))), DiskErrorKind::NotFound);
    assert!(!d.exists(&p(0, "nope")).unwrap());
}

fn check_dirs(d: &dyn Disk) {
    d.create_dir(&p(0, "a")).unwrap();
    d.create_dir(&p(0, "a/b")).unwrap();
    assert_eq!(kind(d.create_dir(&p(0, "a"))), DiskErrorKind::AlreadyExists);
    assert!(d.exists(&p(0, "a/b")).unwrap());
    new_file(d, &p(0, "a/b/f"), b"x");
    assert_eq!(kind(d.create_dir(&p(0, "a/b/f"))), DiskErrorKind::AlreadyExists);
    assert_eq!(kind(d.remove_dir(&p(0, "a/b"))), DiskErrorKind::NotEmpty);
    assert_eq!(kind(d.remove_dir(&p(0, "a"))), DiskErrorKind::NotEmpty);
    // remove_dir on a file fails.
    assert_eq!(kind(d.remove_dir(&p(0, "a/b/f"))), DiskErrorKind::Io);
    d.remove_file(&p(0, "a/b/f")).unwrap();
    d.remove_dir(&p(0, "a/b")).unwrap();
    assert!(!d.exists(&p(0, "a/b")).unwrap());
    d.remove_dir(&p(0, "a")).unwrap();
    assert!(!d.exists(&p(0, "a")).unwrap());
    assert_eq!(kind(d.remove_dir(&p(0, "a"))), DiskErrorKind::NotFound);
    // Creating beneath a file fails.
    new_file(d, &p(0, "plain"), b"");
    assert!(d.create_dir(&p(0, "plain/sub")).is_err());
    assert!(d.open(&p(0, "plain/f"), OpenMode::CreateNew).is_err());
}

fn check_rename_file(d: &dyn Disk) {
    let f = new_file(d, &p(0, "f"), b"before");
    d.rename(&p(0, "f"), &p(0, "g")).unwrap();
    assert!(!d.exists(&p(0, "f")).unwrap());
    assert!(d.exists(&p(0, "g")).unwrap());
    // The handle still refers to the file, now named g.
    f.write_at(6, b"+after").unwrap();
    assert_eq!(read_path(d, &p(0, "g")), b"before+after");
    assert_eq!(kind(d.open(&p(0, "f"), OpenMode::Existing)), DiskErrorKind::NotFound);
    // Into a subdirectory and back out.
    d.create_dir(&p(0, "sub")).unwrap();
    d.rename(&p(0, "g"), &p(0, "sub/h")).unwrap();
    assert_eq!(read_path(d, &p(0, "sub/h")), b"before+after");
    d.rename(&p(0, "sub/h"), &p(0, "top")).unwrap();
    assert_eq!(read_all(&*f), b"before+after");
    assert_eq!(read_path(d, &p(0, "top")), b"before+after");
    // Renaming onto itself is a no-op.
    d.rename(&p(0, "top"), &p(0, "top")).unwrap();
    assert_eq!(read_path(d, &p(0, "top")), b"before+after");
}

fn check_rename_over_existing(d: &dyn Disk) {
    let a = new_file(d, &p(0, "a"), b"AAAA");
    let b = new_file(d, &p(0, "b"), b"BB");
    d.rename(&p(0, "a"), &p(0, "b")).unwrap();
    assert!(!d.exists(&p(0, "a")).unwrap());
    assert_eq!(read_path(d, &p(0, "b")), b"AAAA");
    // The replaced file lives on through its handle, unnamed.
    assert_eq!(read_all(&*b), b"BB");
    a.write_at(4, b"!").unwrap();
    assert_eq!(read_path(d, &p(0, "b")), b"AAAA!");
}

fn check_rename_dir(d: &dyn Disk) {
    d.create_dir(&p(0, "d")).unwrap();
    d.create_dir(&p(0, "d/e")).unwrap();
    let f = new_file(d, &p(0, "d/e/f"), b"deep");
    new_file(d, &p(0, "d/top"), b"top");
    d.rename(&p(0, "d"), &p(0, "z")).unwrap();
    assert!(!d.exists(&p(0, "d")).unwrap());
    assert!(!d.exists(&p(0, "d/e/f")).unwrap());
    assert_eq!(read_path(d, &p(0, "z/e/f")), b"deep");
    assert_eq!(read_path(d, &p(0, "z/top")), b"top");
    // Move it beneath another directory.
    d.create_dir(&p(0, "y")).unwrap();
    d.rename(&p(0, "z"), &p(0, "y/z")).unwrap();
    f.write_at(4, b"er").unwrap();
    assert_eq!(read_path(d, &p(0, "y/z/e/f")), b"deeper");
    // Over an empty directory: replaces it.
    d.create_dir(&p(0, "empty")).unwrap();
    d.rename(&p(0, "y/z"), &p(0, "empty")).unwrap();
    assert_eq!(read_path(d, &p(0, "empty/e/f")), b"deeper");
    assert!(!d.exists(&p(0, "y/z")).unwrap());
}

fn check_rename_errors(d: &dyn Disk) {
    assert_eq!(kind(d.rename(&p(0, "missing"), &p(0, "x"))), DiskErrorKind::NotFound);
    new_file(d, &p(0, "f"), b"f");
    assert_eq!(kind(d.rename(&p(0, "f"), &p(0, "nodir/f"))), DiskErrorKind::NotFound);
    d.create_dir(&p(0, "full")).unwrap();
    new_file(d, &p(0, "full/x"), b"x");
    d.create_dir(&p(0, "other")).unwrap();
    // A directory over a non-empty directory.
    assert_eq!(kind(d.rename(&p(0, "other"), &p(0, "full"))), DiskErrorKind::NotEmpty);
    // A file over a directory, a directory over a file, a directory into itself.
    assert!(d.rename(&p(0, "f"), &p(0, "other")).is_err());
    assert!(d.rename(&p(0, "other"), &p(0, "f")).is_err());
    assert!(d.rename(&p(0, "full"), &p(0, "full/inside")).is_err());
    // Across filespaces.
    assert!(d.rename(&p(0, "f"), &p(1, "f")).is_err());
    // Nothing moved.
    assert_eq!(read_path(d, &p(0, "f")), b"f");
    assert_eq!(read_path(d, &p(0, "full/x")), b"x");
    assert!(d.exists(&p(0, "other")).unwrap());
}

fn check_remove_file(d: &dyn Disk) {
    new_file(d, &p(0, "f"), b"x");
    d.remove_file(&p(0, "f")).unwrap();
    assert!(!d.exists(&p(0, "f")).unwrap());
    assert_eq!(kind(d.remove_file(&p(0, "f"))), DiskErrorKind::NotFound);
    assert_eq!(kind(d.remove_file(&p(0, "nodir/f"))), DiskErrorKind::NotFound);
    d.create_dir(&p(0, "d")).unwrap();
    assert_eq!(kind(d.remove_file(&p(0, "d"))), DiskErrorKind::Io);
    assert!(d.exists(&p(0, "d")).unwrap());
    // The name can be reused.
    new_file(d, &p(0, "f"), b"y");
    assert_eq!(read_path(d, &p(0, "f")), b"y");
}

fn check_exists(d: &dyn Disk) {
    assert!(!d.exists(&p(0, "x")).unwrap());
    assert!(!d.exists(&p(0, "x/y/z")).unwrap());
    d.create_dir(&p(0, "x")).unwrap();
    assert!(d.exists(&p(0, "x")).unwrap());
    assert!(!d.exists(&p(0, "x/y")).unwrap());
    new_file(d, &p(0, "x/y"), b"");
    assert!(d.exists(&p(0, "x/y")).unwrap());
    // Through a file: not a directory, so nothing there.
    assert!(!d.exists(&p(0, "x/y/z")).unwrap());
    assert!(!d.exists(&p(1, "x")).unwrap());
}

fn check_handle_survives_unlink(d: &dyn Disk) {
    let f = new_file(d, &p(0, "f"), b"abc");
    d.remove_file(&p(0, "f")).unwrap();
    f.write_at(3, b"def").unwrap();
    assert_eq!(read_all(&*f), b"abcdef");
    f.sync_data().unwrap();
    assert!(!d.exists(&p(0, "f")).unwrap());
}

fn check_filespaces_separate(d: &dyn Disk) {
    new_file(d, &p(0, "f"), b"zero");
    new_file(d, &p(1, "f"), b"one");
    assert_eq!(read_path(d, &p(0, "f")), b"zero");
    assert_eq!(read_path(d, &p(1, "f")), b"one");
    d.create_dir(&p(1, "d")).unwrap();
    assert!(!d.exists(&p(0, "d")).unwrap());
    // A filespace that does not exist.
    assert!(d.open(&p(9, "f"), OpenMode::CreateNew).is_err());
    assert!(d.create_dir(&p(9, "d")).is_err());
    assert!(d.exists(&p(9, "f")).is_err());
}

/// A tiny deterministic generator for test data.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn check_write_batch(d: &dyn Disk) {
    let files: Vec<Arc<dyn DiskFile>> =
        (0..3).map(|i| d.open(&p(i % 2, &format!("batch{i}")), OpenMode::CreateNew).unwrap()).collect();
    // A second handle on batch0: writes through it order with the others too.
    let handles: Vec<Arc<dyn DiskFile>> =
        files.iter().cloned().chain([d.open(&p(0, "batch0"), OpenMode::Existing).unwrap()]).collect();
    let model_of = |h: usize| if h == 3 { 0 } else { h };
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    // (handle, offset, data): mostly disjoint blocks, some overlapping earlier
    // ones (later writes must win, as if written in turn), some odd sizes.
    let mut plan: Vec<(usize, u64, Vec<u8>)> = Vec::new();
    for i in 0..300u64 {
        let file = if i % 20 == 19 { 3 } else { (i % 3) as usize };
        let (offset, len) = if i % 10 == 9 {
            (rng.next() % (100 * 4096), 1 + (rng.next() % 9000) as usize)
        } else {
            ((i / 3) * 4096 + rng.next() % 64, 1 + (rng.next() % 4000) as usize)
        };
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        plan.push((file, offset, data));
    }
    // The same range written twice in a row.
    plan.push((0, 0, vec![1u8; 100]));
    plan.push((0, 50, vec![2u8; 100]));
    plan.push((3, 25, vec![3u8; 50]));

    let writes: Vec<BatchWrite<'_>> =
        plan.iter().map(|(f, offset, data)| BatchWrite { file: &*handles[*f], offset: *offset, data }).collect();
    let results = d.write_batch(&writes);
    assert_eq!(results.len(), writes.len());
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "write {i}: {r:?}");
    }

    let mut model: Vec<Vec<u8>> = vec![Vec::new(); 3];
    for (f, offset, data) in &plan {
        let m = &mut model[model_of(*f)];
        let end = *offset as usize + data.len();
        if m.len() < end {
            m.resize(end, 0);
        }
        m[*offset as usize..end].copy_from_slice(data);
    }
    for (i, f) in files.iter().enumerate() {
        assert_eq!(read_all(&**f), model[i], "file {i} after the batch");
    }
    assert!(d.write_batch(&[]).is_empty());
}

fn check_sync(d: &dyn Disk) {
    let files: Vec<Arc<dyn DiskFile>> =
        (0..3).map(|i| new_file(d, &p(0, &format!("s{i}")), format!("data{i}").as_bytes())).collect();
    files[0].sync_data().unwrap();
    let refs: Vec<&dyn DiskFile> = files.iter().map(|f| &**f).chain([&*files[1]]).collect();
    let results = d.sync_batch(&refs);
    assert_eq!(results.len(), 4);
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    assert!(d.sync_batch(&[]).is_empty());
    assert_eq!(read_path(d, &p(0, "s2")), b"data2");
}

fn check_sync_parent_dir(d: &dyn Disk) {
    new_file(d, &p(0, "top"), b"t").sync_data().unwrap();
    d.sync_parent_dir(&p(0, "top")).unwrap();
    d.create_dir(&p(1, "a")).unwrap();
    d.create_dir(&p(1, "a/b")).unwrap();
    new_file(d, &p(1, "a/b/f"), b"f").sync_data().unwrap();
    d.sync_parent_dir(&p(1, "a/b/f")).unwrap();
    d.sync_parent_dir(&p(1, "a/b")).unwrap();
    d.sync_parent_dir(&p(1, "a")).unwrap();
    // The final component need not exist; its directory must.
    d.sync_parent_dir(&p(1, "a/b/not-yet")).unwrap();
    assert_eq!(kind(d.sync_parent_dir(&p(1, "a/missing/f"))), DiskErrorKind::NotFound);
}

fn check_parent_dir_handle(d: &dyn Disk) {
    d.create_dir(&p(0, "a")).unwrap();
    let h = d.parent_dir_handle(&p(0, "a/f")).unwrap();
    new_file(d, &p(0, "a/f"), b"f");
    // The handle follows its directory through a rename.
    d.rename(&p(0, "a"), &p(0, "b")).unwrap();
    h.sync_data().unwrap();
    assert!(h.write_at(0, b"x").is_err(), "a directory handle takes no data");
    let top = d.parent_dir_handle(&p(1, "top")).unwrap();
    top.sync_data().unwrap();
    assert_eq!(kind(d.parent_dir_handle(&p(0, "missing/f"))), DiskErrorKind::NotFound);
}
