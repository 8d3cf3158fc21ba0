//! forgetfs mounted for real: programs use it through the kernel with
//! std::fs, and a power cut over the control socket leaves exactly what
//! their fsync calls made durable. Skipped, with the reason, where FUSE
//! cannot be mounted, unless FILEREP_REQUIRE_FUSE=1 (CI), which makes that a
//! failure.

use forgetfs::control::{self, Request, Response, REQUEST_LEN};
use forgetfs::process::{mounted, ForgetFs};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

fn fs(name: &str) -> Option<(ForgetFs, tempfile::TempDir)> {
    if let Some(why) = forgetfs::fuse_unavailable() {
        if std::env::var_os("FILEREP_REQUIRE_FUSE").is_some_and(|v| v == "1") {
            panic!("{name}: FILEREP_REQUIRE_FUSE=1 but {why}");
        }
        let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = ForgetFs::spawn(Path::new(env!("CARGO_BIN_EXE_forgetfs")), dir.path(), name).unwrap();
    Some((f, dir))
}

fn sync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

#[test]
fn what_a_cut_keeps_through_the_kernel() {
    let Some((f, _dir)) = fs("what_a_cut_keeps_through_the_kernel") else { return };
    let m = &f.mountpoint;
    // Synced file and name; then more written, never synced.
    let mut kept = File::create(m.join("kept")).unwrap();
    kept.write_all(b"durable").unwrap();
    kept.sync_data().unwrap();
    sync_dir(m);
    kept.write_all(b" and then some").unwrap();
    // The write-sync-rename-sync pattern: kept whole.
    std::fs::create_dir(m.join("d")).unwrap();
    sync_dir(m);
    let mut tmp = File::create(m.join("d/cfg.tmp")).unwrap();
    tmp.write_all(b"version 2").unwrap();
    tmp.sync_all().unwrap();
    std::fs::rename(m.join("d/cfg.tmp"), m.join("d/cfg")).unwrap();
    sync_dir(&m.join("d"));
    // Written with O_SYNC: durable when the write returns.
    let mut o_sync =
        OpenOptions::new().write(true).create(true).custom_flags(libc::O_SYNC).open(m.join("o_sync")).unwrap();
    sync_dir(m);
    o_sync.write_all(b"synchronous").unwrap();
    // A new name never synced, though its data was.
    let mut lost = File::create(m.join("lost")).unwrap();
    lost.write_all(b"data").unwrap();
    lost.sync_all().unwrap();
    let st = f.status().unwrap();
    assert!(st.files == 1 && st.entries == 1, "kept's tail, lost's name: {st:?}");

    let r = f.cut(false, 0).unwrap();
    assert!(r.text.contains("/lost: created or renamed here, never synced: gone"), "{}", r.text);
    assert_eq!(r.cuts, 1);
    assert_eq!(std::fs::read(m.join("kept")).unwrap(), b"durable");
    assert!(!m.join("lost").exists());
    assert_eq!(std::fs::read(m.join("d/cfg")).unwrap(), b"version 2");
    assert!(!m.join("d/cfg.tmp").exists());
    assert_eq!(std::fs::read(m.join("o_sync")).unwrap(), b"synchronous");
    // A descriptor opened before the cut belongs to the lost power: EIO.
    let e = kept.write_all(b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = kept.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // And it keeps serving.
    std::fs::write(m.join("after"), b"after the cut").unwrap();
    assert_eq!(std::fs::read(m.join("after")).unwrap(), b"after the cut");
    let log = std::fs::read_to_string(&f.log).unwrap();
    assert!(log.contains("power cut") && log.contains("lost"), "{log}");
}

/// Rule 14 through the kernel: an armed failure makes the next fsync of a
/// changed file return EIO; the bytes stay readable, a second fsync
/// succeeds, and a cut still shows the file's durable content.
#[test]
fn a_failed_fsync_answers_eio_and_its_pages_never_become_durable() {
    let Some((f, _dir)) = fs("a_failed_fsync_answers_eio_and_its_pages_never_become_durable") else { return };
    let m = &f.mountpoint;
    let mut file = File::create(m.join("f")).unwrap();
    file.write_all(b"durable").unwrap();
    file.sync_data().unwrap();
    sync_dir(m);
    file.write_all_at(b"LOST", 0).unwrap();
    assert_eq!(f.fail_next_sync().unwrap().failed_syncs, 0, "armed, not fired");
    let e = file.sync_data().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(f.status().unwrap().failed_syncs, 1);
    assert_eq!(std::fs::read(m.join("f")).unwrap(), b"LOSTble", "still read");
    file.sync_data().unwrap();
    let r = f.cut(false, 0).unwrap();
    assert_eq!(r.files, 1, "{}", r.text);
    assert_eq!(std::fs::read(m.join("f")).unwrap(), b"durable");
}

#[test]
fn a_torn_write_keeps_whole_sectors_through_the_kernel() {
    let Some((f, _dir)) = fs("a_torn_write_keeps_whole_sectors_through_the_kernel") else { return };
    let m = &f.mountpoint;
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..24u64 {
        let p = m.join(format!("log{seed}"));
        let file = File::create(&p).unwrap();
        file.write_all_at(&[1u8; 1000], 0).unwrap();
        file.sync_all().unwrap();
        sync_dir(m);
        file.write_all_at(&[2u8; 4000], 1000).unwrap();
        drop(file);
        f.cut(true, seed).unwrap();
        let c = std::fs::read(&p).unwrap();
        assert_eq!(&c[..1000], &[1u8; 1000][..]);
        assert!(c[1000..].iter().all(|b| *b == 2));
        assert!(c.len() == 1000 || c.len() % 512 == 0 || c.len() == 5000, "seed {seed}: length {}", c.len());
        seen.insert(c.len());
    }
    assert!(seen.len() >= 4, "the seeds tear at several sectors: {seen:?}");
}

#[test]
fn unlinks_renames_truncates_and_directories_are_undone_until_synced() {
    let Some((f, _dir)) = fs("unlinks_renames_truncates_and_directories_are_undone_until_synced") else { return };
    let m = &f.mountpoint;
    std::fs::create_dir_all(m.join("a/b")).unwrap();
    std::fs::write(m.join("a/b/f"), vec![9u8; 20_000]).unwrap();
    File::open(m.join("a/b/f")).unwrap().sync_all().unwrap();
    for d in ["a/b", "a", ""] {
        sync_dir(&m.join(d));
    }
    OpenOptions::new().write(true).open(m.join("a/b/f")).unwrap().set_len(10).unwrap();
    std::fs::rename(m.join("a/b/f"), m.join("a/g")).unwrap();
    std::fs::remove_dir(m.join("a/b")).unwrap();
    std::fs::create_dir(m.join("new")).unwrap();
    f.cut(false, 0).unwrap();
    assert_eq!(std::fs::read(m.join("a/b/f")).unwrap(), vec![9u8; 20_000]);
    assert!(!m.join("a/g").exists() && !m.join("new").exists());
    let mut names: Vec<_> = std::fs::read_dir(m).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["a"]);
}

#[test]
fn bad_control_requests_are_refused_with_the_reason_and_change_nothing() {
    let Some((f, _dir)) = fs("bad_control_requests_are_refused_with_the_reason_and_change_nothing") else { return };
    std::fs::write(f.mountpoint.join("x"), b"unsynced").unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(&f.control).unwrap();
    let mut bad = Request { op: control::Op::Cut, tear: false, seed: 0 }.encode();
    bad[6] = 77;
    s.write_all(&bad).unwrap();
    let r = Response::read_from(&mut s).unwrap();
    assert_eq!(r.status, 1);
    assert!(r.text.contains("unknown op 77"), "{}", r.text);
    // The connection still serves a good request.
    s.write_all(&Request { op: control::Op::Status, tear: false, seed: 0 }.encode()).unwrap();
    let r = Response::read_from(&mut s).unwrap();
    assert_eq!((r.status, r.cuts), (0, 0));
    assert!(f.mountpoint.join("x").exists(), "nothing was cut");
    // A short request and a hang-up: the server goes on.
    s.write_all(&[0u8; REQUEST_LEN - 1]).unwrap();
    drop(s);
    let mut quiet = std::os::unix::net::UnixStream::connect(&f.control).unwrap();
    quiet.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = Vec::new();
    quiet.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty(), "no request, no answer");
    assert_eq!(f.status().unwrap().cuts, 0);
}

#[test]
fn sigterm_unmounts() {
    let Some((mut f, _dir)) = fs("sigterm_unmounts") else { return };
    assert!(mounted(&f.mountpoint));
    f.stop();
    assert!(!mounted(&f.mountpoint));
}
