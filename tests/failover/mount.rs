//! The primary's own mount across a role change (docs/mount.md).

use super::{common, Cluster, Links};
use filerep::cluster::segment::Acting;
use std::io::Write;
use std::time::Duration;

/// The segment's own mount keeps the kernel's write-back cache, and its
/// inodes belong to the segment's term as primary (src/mount/inodes.rs).
/// Pages the kernel sent in one term but no fsync covered may be lost in a
/// role change; an fsync asked after the change, through a descriptor
/// opened before it, must fail, never succeed over them.
#[test]
fn an_fsync_through_the_mount_after_the_primary_lost_its_role_fails() {
    skip_without_fuse!("an_fsync_through_the_mount_after_the_primary_lost_its_role_fails");
    let mut c = Cluster::start_with(Links::PrimaryProxied, false, true);
    let mnt = c.seg(2).cfg.mounts[0].mountpoint.clone();
    assert!(common::pair::mounted(&mnt), "the primary serves {}", mnt.display());
    let path = mnt.join("f");
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path).unwrap();
    f.write_all(&[1u8; 8192]).unwrap();
    f.sync_all().unwrap();
    // More, sent by the kernel (a close of the file writes its dirty pages
    // back) but synced by no one.
    f.write_all(&[2u8; 8192]).unwrap();
    drop(std::fs::File::open(&path).unwrap());
    // The primary is cut off, the mirror promoted, and the old primary,
    // healed, told it is the mirror.
    for p in &c.proxies {
        p.cut();
    }
    c.wait_for("the mirror to be promoted", Duration::from_secs(20), || {
        c.seg(3).status(&c.key).is_some_and(|s| s.acting == Acting::Primary)
    });
    for p in &c.proxies {
        p.heal();
    }
    c.wait_for("the old primary to become the mirror", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.acting == Acting::Mirror)
    });
    let e = f.sync_all().expect_err("an fsync after the role change succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // SIGKILL leaves a dead mount: detach it before the directory goes.
    c.seg_mut(2).kill();
    common::pair::detach(&mnt);
}
