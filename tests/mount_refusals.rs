//! What the mount refuses: engine refusals surface as errnos, never as
//! success, through a separate `filerep mount` and through the file system
//! the primary segment serves itself, once the pair cannot take changes.
//! Skipped, with the reason printed, where FUSE cannot be mounted, unless
//! FILEREP_REQUIRE_FUSE=1 (CI), which makes that a failure.

#[macro_use]
mod common;

use common::pair::{kill, Mount, Pair};
use common::tree::{errno, walk};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

#[test]
fn engine_refusals_surface_as_errnos_never_as_success() {
    skip_without_fuse!("engine_refusals_surface_as_errnos_never_as_success");
    let mut pair = Pair::start(8192);

    // The mirror's filespace: readable, but it is not the primary (EIO).
    let mut on_mirror = pair.mount(3, "fs_fast");
    let e = std::fs::write(on_mirror.p("x"), b"x").unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "create on the mirror: {e}");
    let e = std::fs::create_dir(on_mirror.p("d")).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "mkdir on the mirror: {e}");
    on_mirror.stop();

    let mnt = pair.mount(2, "fs_fast");
    // Directory fsyncs in a filespace without a single regular file (the
    // engine's directory sync; nothing is created to carry it), and of a
    // directory removed while open.
    std::fs::create_dir(mnt.p("empty")).unwrap();
    File::open(mnt.p("empty")).unwrap().sync_all().unwrap();
    std::fs::create_dir(mnt.p("removed")).unwrap();
    let removed = File::open(mnt.p("removed")).unwrap();
    std::fs::remove_dir(mnt.p("removed")).unwrap();
    removed.sync_all().unwrap();
    let on_mirror = walk(&pair.seg(3).root(1));
    assert_eq!(on_mirror.dirs, BTreeSet::from(["empty".to_string()]));
    assert!(on_mirror.files.is_empty(), "{:?}", on_mirror.files.keys());
    std::fs::create_dir(mnt.p("d")).unwrap();
    std::fs::write(mnt.p("d/f"), b"kept").unwrap();
    let e = std::fs::remove_dir(mnt.p("d")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTEMPTY, "{e}");
    let e = std::fs::rename(mnt.p("d"), mnt.p("d/f")).unwrap_err();
    assert!(matches!(errno(&e), libc::EINVAL | libc::ENOTDIR), "{e}");
    let e = std::fs::hard_link(mnt.p("d/f"), mnt.p("link")).unwrap_err();
    assert_eq!(errno(&e), libc::EPERM, "hard links are not replicated: {e}");
    let e = std::os::unix::fs::symlink("d/f", mnt.p("sym")).unwrap_err();
    assert_eq!(errno(&e), libc::EPERM, "symlinks are not replicated: {e}");
    let f = OpenOptions::new().write(true).open(mnt.p("d/f")).unwrap();
    f.sync_all().unwrap();

    refused_once_the_pair_cannot_take_changes(Kind::Separate, &mut pair, &mnt, &f);

    // The primary is gone altogether: its socket is closed, still EIO.
    kill(&mut pair.seg_mut(2).child);
    refused_now_or_by_the_next_fsync(Kind::Separate, &f, &vec![b'L'; 128 * 1024], 0, "a write with the segment gone");
    refused_now_or_by_the_next_fsync(Kind::Separate, &f, &[b'L'; 8192], 0, "a small write with the segment gone");
    drop(mnt);
}

/// Which mount a test goes through: a separate `filerep mount` writes
/// through (each write a request), the segment's own mount uses the
/// kernel's write-back cache (docs/mount.md).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Separate,
    SegmentsOwn,
}

/// A write the segment refuses: the write fails at once with EIO, or
/// (landed in the kernel's write-back cache, or held by the mount a
/// moment: docs/mount.md) the file's next fsync fails; never a success.
/// Through a separate mount a write too large to hold (`data` of 64 KiB
/// or more) must fail at once.
fn refused_now_or_by_the_next_fsync(kind: Kind, f: &File, data: &[u8], offset: u64, what: &str) {
    match f.write_all_at(data, offset) {
        Err(e) => assert_eq!(errno(&e), libc::EIO, "{what}: {e}"),
        Ok(()) => {
            assert!(
                kind == Kind::SegmentsOwn || data.len() < 64 * 1024,
                "{what}: {} bytes accepted by a mount that writes through",
                data.len()
            );
            let e = f.sync_all().unwrap_err();
            assert_eq!(errno(&e), libc::EIO, "the fsync after {what}: {e}");
        }
    }
}

/// With `f` open on `d/f` (holding "kept") through `mnt`: the arbiter and
/// then the mirror are killed, and every change through the mount fails
/// with EIO (rule 3: no silent continuation) while reads go on.
fn refused_once_the_pair_cannot_take_changes(kind: Kind, pair: &mut Pair, mnt: &Mount, f: &File) {
    // The pair can take no more changes: the arbiter is gone, then the
    // mirror. The primary cannot hear "mirror down", so its calls fail.
    kill(&mut pair.arbiter);
    kill(&mut pair.seg_mut(3).child);
    // The first write may already be on its way when the loss is seen (its
    // local write overlaps the send): it fails, and may or may not have
    // changed the primary's copy, as a failed write may. The mount may hold
    // it a moment (docs/mount.md, "Held writes"): it fails at once, or its
    // failure is the file's next fsync's, never a success.
    let block = vec![b'L'; 8192];
    refused_now_or_by_the_next_fsync(kind, f, &block, 0, "a write the pair cannot take");
    // From then on the loss is known: every call is refused before it
    // changes anything.
    refused_now_or_by_the_next_fsync(kind, f, &vec![b'G'; 128 * 1024], 0, "a write after the loss");
    refused_now_or_by_the_next_fsync(kind, f, b"GONE", 0, "a small write after the loss");
    let e = f.sync_all().unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "fsync: {e}");
    // The same through a close: a held write's failure is the close's.
    let g = OpenOptions::new().write(true).open(mnt.p("d/f")).unwrap();
    match g.write_all_at(b"GONE", 4) {
        Err(e) => assert_eq!(errno(&e), libc::EIO, "a small write after the loss: {e}"),
        Ok(()) => {
            let e = nix::unistd::close(std::os::fd::IntoRawFd::into_raw_fd(g)).unwrap_err();
            assert_eq!(e, nix::errno::Errno::EIO, "the close after a held small write that failed");
        }
    }
    let e = std::fs::write(mnt.p("new"), b"x").unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "create: {e}");
    assert!(!mnt.p("new").exists(), "a refused create made nothing");
    // Reads are local and still work. What the file holds is the
    // primary's copy: through a mount with the kernel's write-back cache a
    // refused write stays in the kernel's view of the file until it is
    // dropped, as a failed write-back does on a local disk (docs/mount.md),
    // while nothing of it reached the copy.
    let through_mount = std::fs::read(mnt.p("d/f")).unwrap();
    let now = std::fs::read(pair.seg(2).root(1).join("d/f")).unwrap();
    assert!(now == b"kept" || now == block, "a refused write after the loss changed nothing: {now:?}");
    if kind == Kind::Separate {
        assert_eq!(through_mount, now, "a mount that writes through shows the primary's copy");
    } else {
        assert!(through_mount.len() >= 4, "the file reads through the mount: {} bytes", through_mount.len());
    }
}

/// The same refusals through the file system the primary segment serves
/// itself: its errors come from the storage API in the process, not over
/// the client socket.
#[test]
fn the_segments_own_mount_refuses_what_the_pair_cannot_take() {
    skip_without_fuse!("the_segments_own_mount_refuses_what_the_pair_cannot_take");
    let mut pair = Pair::start_with(8192, |seg| seg.try_start_mounting("fs_fast", &[]));
    let mnt = Mount { child: None, path: pair.seg(2).own_mountpoint("fs_fast") };
    std::fs::create_dir(mnt.p("d")).unwrap();
    std::fs::write(mnt.p("d/f"), b"kept").unwrap();
    let e = std::fs::remove_dir(mnt.p("d")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTEMPTY, "{e}");
    let f = OpenOptions::new().write(true).open(mnt.p("d/f")).unwrap();
    f.sync_all().unwrap();
    refused_once_the_pair_cannot_take_changes(Kind::SegmentsOwn, &mut pair, &mnt, &f);
}
