//! The suite run against each real backend (std, io_uring, both made
//! direct) and the simulator, and what only the real backends must do:
//! direct and buffered writes kept coherent, symlinks that do not escape,
//! bad roots refused, batches from many threads.

use super::*;
use std::path::Path;

fn tempdirs() -> (tempfile::TempDir, tempfile::TempDir) {
    (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"))
}

fn make_std() -> (Arc<dyn Disk>, Box<dyn Any>) {
    let (a, b) = tempdirs();
    let disk = StdDisk::open(&[a.path().to_path_buf(), b.path().to_path_buf()]).expect("open std disk");
    (Arc::new(disk), Box::new((a, b)))
}

/// `None` (after saying so) when io_uring is unavailable here.
fn try_make_uring() -> Option<(Arc<dyn Disk>, Box<dyn Any>)> {
    let (a, b) = tempdirs();
    match UringDisk::open(&[a.path().to_path_buf(), b.path().to_path_buf()]) {
        Ok(disk) => Some((Arc::new(disk), Box::new((a, b)))),
        Err(e) => {
            eprintln!("io_uring unavailable, skipping: {e}");
            None
        }
    }
}

fn make_std_direct() -> (Arc<dyn Disk>, Box<dyn Any>) {
    let (a, b) = tempdirs();
    let disk = StdDisk::open(&[a.path().to_path_buf(), b.path().to_path_buf()])
        .and_then(|d| d.with_direct(true))
        .expect("a direct std disk (O_DIRECT on the test's file system)");
    (Arc::new(disk), Box::new((a, b)))
}

fn make_uring_direct() -> (Arc<dyn Disk>, Box<dyn Any>) {
    let (a, b) = tempdirs();
    let std = StdDisk::open(&[a.path().to_path_buf(), b.path().to_path_buf()])
        .and_then(|d| d.with_direct(true))
        .expect("a direct std disk (O_DIRECT on the test's file system)");
    match UringDisk::over(std) {
        Ok(disk) => (Arc::new(disk), Box::new((a, b))),
        Err(_) => make_std_direct(),
    }
}

fn make_sim() -> (Arc<dyn Disk>, Box<dyn Any>) {
    (Arc::new(SimDisk::new(2)), Box::new(()))
}

#[test]
fn conformance_std() {
    run_all(&make_std);
}

#[test]
fn conformance_uring() {
    if try_make_uring().is_none() {
        return;
    }
    run_all(&|| try_make_uring().expect("io_uring worked a moment ago"));
}

#[test]
fn conformance_std_direct() {
    run_all(&make_std_direct);
}

#[test]
fn conformance_uring_direct() {
    run_all(&make_uring_direct);
}

/// On a direct disk, aligned block writes (O_DIRECT) and unaligned ones
/// (buffered) on the same file, in every order, read back as written, by
/// the file's own reads and by a fresh descriptor; the name says direct.
#[test]
fn direct_and_buffered_writes_to_one_file_stay_coherent() {
    for make in [make_std_direct as fn() -> (Arc<dyn Disk>, Box<dyn Any>), make_uring_direct] {
        let (d, _keep) = make();
        assert!(d.name().contains("O_DIRECT"), "{}", d.name());
        let f = d.open(&p(0, "blocks"), OpenMode::CreateNew).unwrap();
        let block = |b: u8| vec![b; 8192];
        let mut expect = vec![0u8; 4 * 8192];
        // Buffered first (unaligned), then a direct block over it.
        f.write_at(100, &[1u8; 300]).unwrap();
        expect[100..400].fill(1);
        f.write_at(0, &block(2)).unwrap();
        expect[..8192].fill(2);
        // Direct first, then a buffered write into its middle.
        f.write_at(8192, &block(3)).unwrap();
        expect[8192..16384].fill(3);
        f.write_at(8192 + 1000, &[4u8; 10]).unwrap();
        expect[9192..9202].fill(4);
        // A block from an unaligned buffer (bounced), past the end: extends the file.
        let backing = [vec![9u8], block(5)].concat();
        f.write_at(3 * 8192, &backing[1..]).unwrap();
        expect[3 * 8192..].fill(5);
        f.sync_data().unwrap();
        let mut back = vec![0u8; expect.len()];
        assert_eq!(f.read_at(0, &mut back).unwrap(), expect.len());
        assert_eq!(back, expect);
        assert_eq!(f.len().unwrap(), expect.len() as u64);
        let g = d.open(&p(0, "blocks"), OpenMode::Existing).unwrap();
        let mut again = vec![0u8; expect.len()];
        g.read_at(0, &mut again).unwrap();
        assert_eq!(again, expect);
    }
}

/// A direct disk's batch: aligned blocks from unaligned buffers go through
/// the ring together, a block written twice lands in batch order, an
/// unaligned write between them keeps its place, and files of a batch
/// stay apart; every byte reads back as a plain loop would have left it.
#[test]
fn direct_batches_land_in_batch_order() {
    for make in [make_std_direct as fn() -> (Arc<dyn Disk>, Box<dyn Any>), make_uring_direct] {
        let (d, _keep) = make();
        let a = d.open(&p(0, "a"), OpenMode::CreateNew).unwrap();
        let b = d.open(&p(1, "b"), OpenMode::CreateNew).unwrap();
        // Each buffer one byte into its vector: never aligned, always bounced.
        let bufs: Vec<Vec<u8>> = (0..300u32).map(|i| [vec![0u8], vec![(i % 251) as u8 + 1; 8192]].concat()).collect();
        let mut plan: Vec<(&dyn DiskFile, u64, &[u8])> = Vec::new();
        for (i, buf) in bufs.iter().enumerate() {
            let f: &dyn DiskFile = if i % 3 == 0 { &*b } else { &*a };
            // Blocks 0..40 of each file, over and over: later writes win.
            plan.push((f, (i as u64 % 40) * 8192, &buf[1..]));
            if i % 50 == 7 {
                plan.push((f, (i as u64 % 40) * 8192 + 10, b"unaligned, in its place"));
            }
        }
        let writes: Vec<BatchWrite<'_>> =
            plan.iter().map(|&(file, offset, data)| BatchWrite { file, offset, data }).collect();
        for r in d.write_batch(&writes) {
            r.unwrap();
        }
        // The expected images: the same writes applied in order to memory.
        let mut image = [vec![0u8; 40 * 8192], vec![0u8; 40 * 8192]];
        for &(file, offset, data) in &plan {
            let which = usize::from(std::ptr::addr_eq(file, &*b));
            image[which][offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
        for (f, want) in [(&a, &image[0]), (&b, &image[1])] {
            let mut got = vec![0u8; want.len()];
            assert_eq!(f.read_at(0, &mut got).unwrap(), want.len());
            assert!(got == *want, "{}: a direct batch left other bytes than a loop would", d.name());
        }
    }
}

#[test]
fn conformance_sim() {
    run_all(&make_sim);
}

#[test]
fn std_open_rejects_bad_roots() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("missing");
    assert_eq!(StdDisk::open(&[missing]).unwrap_err().kind, DiskErrorKind::NotFound);
    let file = t.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(StdDisk::open(&[t.path().to_path_buf(), file]).is_err());
}

#[test]
fn open_local_picks_a_backend() {
    let (a, _b) = tempdirs();
    let roots = [a.path().to_path_buf()];
    assert_eq!(open_local(&roots, false).unwrap().name(), "std");
    let name = open_local(&roots, true).unwrap().name();
    assert!(name == "io_uring" || name == "std", "{name}");
}

/// Symlinks inside root 0 of `d` (at `root`) lead to `outside`: nothing may
/// pass through them, and a symlink as the final component does not open.
fn escape_checks(d: &dyn Disk, root: &Path, outside: &Path) {
    use std::os::unix::fs::symlink;
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::fs::create_dir(outside.join("sub")).unwrap();
    symlink(outside, root.join("link")).unwrap();
    symlink(outside.join("secret"), root.join("flink")).unwrap();
    std::fs::create_dir(root.join("a")).unwrap();
    symlink(outside, root.join("a/link")).unwrap();
    // Even a symlink that stays inside the root is refused.
    std::fs::create_dir(root.join("real")).unwrap();
    symlink("real", root.join("inner")).unwrap();

    let esc = DiskErrorKind::Escapes;
    for path in ["link/secret", "a/link/secret", "inner/x"] {
        for mode in [OpenMode::Existing, OpenMode::CreateNew, OpenMode::CreateTruncate] {
            assert_eq!(kind(d.open(&p(0, path), mode)), esc, "open {path} {mode:?}");
        }
    }
    assert_eq!(kind(d.open(&p(0, "link/new"), OpenMode::CreateNew)), esc);
    assert_eq!(kind(d.create_dir(&p(0, "link/d"))), esc);
    // Listing, probing and removing trees do not pass through symlinks either.
    for dir in ["link", "a/link", "inner"] {
        assert!(d.list_dir(0, Some(&RelPath::new(dir).unwrap())).is_err(), "list {dir}");
    }
    assert_eq!(d.entry_kind(&p(0, "link")).unwrap(), Some(EntryKind::Other), "a symlink is not followed");
    assert!(d.entry_kind(&p(0, "link/secret")).is_err());
    assert_eq!(kind(d.create_dir(&p(0, "a/link/d"))), esc);
    assert_eq!(kind(d.remove_file(&p(0, "link/secret"))), esc);
    assert_eq!(kind(d.remove_dir(&p(0, "link/sub"))), esc);
    assert_eq!(kind(d.rename(&p(0, "link/secret"), &p(0, "stolen"))), esc);
    assert_eq!(kind(d.rename(&p(0, "a"), &p(0, "link/a"))), esc);
    assert_eq!(kind(d.exists(&p(0, "link/secret"))), esc);
    assert_eq!(kind(d.sync_parent_dir(&p(0, "link/secret"))), esc);

    // A symlink as the final component: not opened, not followed.
    for path in ["link", "flink", "inner"] {
        for mode in [OpenMode::Existing, OpenMode::CreateTruncate] {
            assert_eq!(kind(d.open(&p(0, path), mode)), esc, "open {path} {mode:?}");
        }
        assert_eq!(kind(d.open(&p(0, path), OpenMode::CreateNew)), DiskErrorKind::AlreadyExists);
        assert!(d.exists(&p(0, path)).unwrap(), "the link itself exists");
    }
    assert!(d.create_dir(&p(0, "link")).is_err());
    // Removing the link removes the link, never its target.
    d.remove_file(&p(0, "flink")).unwrap();
    assert!(!root.join("flink").exists());

    // Outside is untouched.
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    assert!(outside.join("sub").is_dir());
    let mut names: Vec<_> = std::fs::read_dir(outside).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["secret", "sub"]);
    // Removing a tree with a symlink in it removes the link, not its target.
    remove_tree(d, &p(0, "a")).unwrap();
    assert!(!d.exists(&p(0, "a")).unwrap());
    assert!(outside.join("secret").exists() && outside.join("sub").exists(), "removal stayed inside");
}

#[test]
fn std_symlinks_do_not_escape() {
    let (root, other) = tempdirs();
    let outside = tempfile::tempdir().unwrap();
    let d = StdDisk::open(&[root.path().to_path_buf(), other.path().to_path_buf()]).unwrap();
    escape_checks(&d, root.path(), outside.path());
}

#[test]
fn uring_symlinks_do_not_escape() {
    let (root, other) = tempdirs();
    let outside = tempfile::tempdir().unwrap();
    let d = match UringDisk::open(&[root.path().to_path_buf(), other.path().to_path_buf()]) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("io_uring unavailable, skipping: {e}");
            return;
        }
    };
    escape_checks(&d, root.path(), outside.path());
}

#[test]
fn uring_batches_from_many_threads() {
    let Some((d, _keep)) = try_make_uring() else {
        return;
    };
    std::thread::scope(|s| {
        for t in 0..4u16 {
            let d = &d;
            s.spawn(move || {
                let f = d.open(&p(t % 2, &format!("t{t}")), OpenMode::CreateNew).unwrap();
                let bufs: Vec<Vec<u8>> = (0..600u32).map(|i| vec![(i % 256) as u8 ^ t as u8; 512]).collect();
                let writes: Vec<BatchWrite<'_>> = bufs
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BatchWrite { file: &*f, offset: i as u64 * 512, data: b })
                    .collect();
                assert!(d.write_batch(&writes).iter().all(|r| r.is_ok()));
                assert!(d.sync_batch(&[&*f]).iter().all(|r| r.is_ok()));
                assert_eq!(read_all(&*f), bufs.concat());
            });
        }
    });
}
