//! A database's log files through the segment's own mount, opened without
//! the kernel's write-back cache while their syncs are a commit's worth
//! (docs/mount.md, "Log files").

#[macro_use]
mod common;

use common::pair::{fast_mount, mounted, wait_for, Mount, Pair};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Duration;

/// A database's log file (here `logs/*`) opens without the kernel's
/// write-back cache once the logs of its directory have been synced a
/// commit at a time: a write then reaches the segment at once, with no
/// sync (with the cache it would wait in the kernel for its write-back,
/// about 30 s), and a sync still makes it durable on the mirror.
#[test]
fn a_log_file_synced_a_commit_at_a_time_is_written_through_at_once() {
    skip_without_fuse!("a_log_file_synced_a_commit_at_a_time_is_written_through_at_once");
    let pair = Pair::start_tuned(8192, &|c| {
        if c.dbid != 2 {
            return;
        }
        let base = c.socket.parent().expect("the segment's directory").to_path_buf();
        c.mounts = vec![fast_mount(base.join("mnt"), Some(vec!["logs/*".into()]))];
    });
    let mnt = Mount { child: None, path: pair.seg(2).cfg.mounts[0].mountpoint.clone() };
    wait_for("the segment's mount", Duration::from_secs(10), || mounted(&mnt.path));
    std::fs::create_dir(mnt.p("logs")).unwrap();
    // A log synced after each small write, as a database commits.
    let mut first = File::create(mnt.p("logs/1")).unwrap();
    for i in 0..16u8 {
        first.write_all(&[i; 100]).unwrap();
        first.sync_data().unwrap();
    }
    drop(first);
    // The directory's next log: its write reaches the primary's copy unsynced.
    let mut second = File::create(mnt.p("logs/2")).unwrap();
    second.write_all(b"a commit record").unwrap();
    let primary_copy = pair.seg(2).root(1).join("logs/2");
    wait_for("the log's unsynced write in the primary's copy", Duration::from_secs(10), || {
        std::fs::read(&primary_copy).is_ok_and(|d| d == b"a commit record")
    });
    // A sync makes it durable on the mirror, as for every file.
    second.sync_data().unwrap();
    let mirror_copy = |name: &str| std::fs::read(pair.seg(3).root(1).join("logs").join(name)).unwrap();
    assert_eq!(mirror_copy("2"), b"a commit record");
    assert_eq!(std::fs::read(mnt.p("logs/2")).unwrap(), b"a commit record");
    // Another handle of that file, opened for synchronous writes, is open
    // as the first (one file is never open both ways): the kernel follows
    // none of its writes with an fsync, so each is durable when it returns.
    let dsync = OpenOptions::new().write(true).custom_flags(libc::O_DSYNC).open(mnt.p("logs/2")).unwrap();
    dsync.write_all_at(b"COMMIT", 2).unwrap();
    assert_eq!(mirror_copy("2"), b"a COMMIT record");
    // A log first opened for synchronous writes keeps the cache, where the
    // kernel syncs after every write.
    let mut third =
        OpenOptions::new().write(true).create(true).custom_flags(libc::O_DSYNC).open(mnt.p("logs/3")).unwrap();
    third.write_all(b"synchronous").unwrap();
    assert_eq!(mirror_copy("3"), b"synchronous");
}
