//! The durability rules of `docs/forgetfs.md`, one test each, on the model
//! itself (no FUSE): what a cut keeps and what it throws away.

use crate::model::{Ino, Model, Owner, PAGE, ROOT};
use std::ffi::OsStr;

const ME: Owner = Owner { perm: 0o644, uid: 0, gid: 0 };

struct T {
    m: Model,
    _store: tempfile::TempDir,
}

fn model() -> T {
    let store = tempfile::tempdir().unwrap();
    T { m: Model::new(store.path().to_path_buf(), 64 << 20).unwrap(), _store: store }
}

fn n(s: &str) -> &OsStr {
    OsStr::new(s)
}

impl T {
    fn file(&mut self, parent: Ino, name: &str) -> Ino {
        self.m.create(parent, n(name), ME, true).unwrap().0
    }
    fn dir(&mut self, parent: Ino, name: &str) -> Ino {
        self.m.mkdir(parent, n(name), ME).unwrap()
    }
    fn content(&mut self, parent: Ino, name: &str) -> Option<Vec<u8>> {
        let ino = self.m.child(parent, n(name)).ok()?;
        Some(self.m.read(ino, 0, u32::MAX).unwrap())
    }
    fn names(&self, dir: Ino) -> Vec<String> {
        self.m.entries(dir).unwrap().1.into_iter().map(|(n, _, _)| n.to_string_lossy().into_owned()).collect()
    }
}

#[test]
fn a_write_without_fsync_is_gone_after_a_cut() {
    let mut t = model();
    let f = t.file(ROOT, "f");
    t.m.fsync(ROOT).unwrap();
    t.m.write(f, 0, b"never synced").unwrap();
    assert_eq!(t.content(ROOT, "f").unwrap(), b"never synced", "live until the cut");
    let r = t.m.cut(None);
    assert_eq!((r.files, r.entries, r.removed), (1, 0, 0), "{r:?}");
    assert_eq!(t.content(ROOT, "f").unwrap(), b"", "the name was synced, the data was not");
}

/// A failed fsync (armed on the control socket) answers EIO and lets the
/// file's dirty pages go, as Linux does: reads still show them, a later
/// fsync succeeds without writing them, a cut shows the durable bytes.
/// Written again, a page is dirty again and the next fsync keeps it.
#[test]
fn a_failed_fsync_lets_its_pages_go_until_they_are_written_again() {
    let mut t = model();
    let f = t.file(ROOT, "f");
    t.m.fsync(ROOT).unwrap();
    let page = PAGE as usize;
    t.m.write(f, 0, &vec![b'a'; 2 * page]).unwrap();
    t.m.fsync(f).unwrap();
    t.m.write(f, 0, &vec![b'b'; 2 * page]).unwrap();
    t.m.fail_next_sync();
    assert_eq!(t.m.fsync(ROOT), Ok(()), "armed for a file with unsynced changes, not a directory");
    assert_eq!(t.m.fsync(f), Err(libc::EIO));
    assert_eq!(t.m.failed_syncs(), 1);
    assert_eq!(t.content(ROOT, "f").unwrap(), vec![b'b'; 2 * page], "still read");
    assert_eq!(t.m.fsync(f), Ok(()), "a later fsync succeeds");
    // The second page is written again: dirty, then synced.
    t.m.write(f, PAGE, b"c").unwrap();
    t.m.fsync(f).unwrap();
    assert_eq!(t.m.pending().files, 1, "the page let go is still not durable");
    let r = t.m.cut(None);
    assert_eq!((r.files, r.bytes), (1, PAGE), "{r:?}");
    let mut want = vec![b'a'; page];
    want.extend_from_slice(b"c");
    want.extend(vec![b'b'; page - 1]);
    assert_eq!(t.content(ROOT, "f").unwrap(), want, "the page let go is back to its durable bytes");
    assert_eq!(t.m.pending(), Default::default());
}

#[test]
fn a_write_then_fsync_is_kept() {
    let mut t = model();
    let f = t.file(ROOT, "f");
    t.m.fsync(ROOT).unwrap();
    t.m.write(f, 0, b"synced").unwrap();
    t.m.fsync(f).unwrap();
    t.m.write(f, 6, b" but not this").unwrap();
    let r = t.m.cut(None);
    assert_eq!(r.files, 1);
    assert_eq!(t.content(ROOT, "f").unwrap(), b"synced");
    assert_eq!(t.m.pending(), Default::default(), "nothing unsynced after a cut");
}

#[test]
fn a_create_without_a_directory_fsync_loses_its_name_even_with_its_data_synced() {
    let mut t = model();
    let f = t.file(ROOT, "new");
    t.m.write(f, 0, b"data").unwrap();
    t.m.fsync(f).unwrap();
    let r = t.m.cut(None);
    assert_eq!((r.entries, r.removed), (1, 1), "{r:?}");
    assert_eq!(t.content(ROOT, "new"), None);
    assert!(t.names(ROOT).is_empty());
}

#[test]
fn a_create_with_its_directory_synced_survives_with_the_data_synced_before_the_cut() {
    let mut t = model();
    let f = t.file(ROOT, "new");
    t.m.fsync(ROOT).unwrap();
    t.m.write(f, 0, b"data").unwrap();
    t.m.fsync(f).unwrap();
    t.m.cut(None);
    assert_eq!(t.content(ROOT, "new").unwrap(), b"data");
}

#[test]
fn a_rename_then_a_directory_fsync_is_kept_and_atomic() {
    let mut t = model();
    let old = t.file(ROOT, "final");
    t.m.write(old, 0, b"old").unwrap();
    t.m.fsync(old).unwrap();
    let tmp = t.file(ROOT, "final.tmp");
    t.m.write(tmp, 0, b"new").unwrap();
    t.m.fsync(tmp).unwrap();
    t.m.fsync(ROOT).unwrap();
    // Not synced yet: the rename is undone as a whole.
    t.m.rename(ROOT, n("final.tmp"), ROOT, n("final"), false).unwrap();
    let mut before = model();
    std::mem::swap(&mut before, &mut t);
    let r = before.m.cut(None);
    assert_eq!(r.entries, 2, "{r:?}");
    assert_eq!(before.content(ROOT, "final").unwrap(), b"old");
    assert_eq!(before.content(ROOT, "final.tmp").unwrap(), b"new");
    // The same, synced: the new file under the old name, the temporary name gone.
    let mut t = before;
    t.m.rename(ROOT, n("final.tmp"), ROOT, n("final"), false).unwrap();
    t.m.fsync(ROOT).unwrap();
    let r = t.m.cut(None);
    assert_eq!((r.entries, r.removed), (0, 0), "nothing unsynced; the replaced file went at the fsync: {r:?}");
    assert_eq!(t.content(ROOT, "final").unwrap(), b"new");
    assert_eq!(t.names(ROOT), ["final"]);
}

#[test]
fn a_rename_across_directories_needs_both_directories_synced() {
    let mut t = model();
    let (a, b) = (t.dir(ROOT, "a"), t.dir(ROOT, "b"));
    let f = t.file(a, "f");
    t.m.write(f, 0, b"x").unwrap();
    t.m.fsync(f).unwrap();
    for d in [a, b, ROOT] {
        t.m.fsync(d).unwrap();
    }
    t.m.rename(a, n("f"), b, n("f"), false).unwrap();
    // Only the target directory synced: both names survive (one inode).
    t.m.fsync(b).unwrap();
    t.m.cut(None);
    assert_eq!(t.content(a, "f").unwrap(), b"x");
    assert_eq!(t.content(b, "f").unwrap(), b"x");
    assert_eq!(t.m.attr(t.m.child(a, n("f")).unwrap()).unwrap().nlink, 2);
    // Only the source directory synced: no name survives.
    t.m.unlink(b, n("f")).unwrap();
    t.m.fsync(b).unwrap();
    t.m.rename(a, n("f"), b, n("f"), false).unwrap();
    t.m.fsync(a).unwrap();
    let r = t.m.cut(None);
    assert_eq!(r.removed, 1, "{r:?}");
    assert!(t.names(a).is_empty() && t.names(b).is_empty());
}

#[test]
fn an_unsynced_unlink_comes_back_with_its_durable_content() {
    let mut t = model();
    let f = t.file(ROOT, "f");
    t.m.write(f, 0, b"durable").unwrap();
    t.m.fsync(f).unwrap();
    t.m.fsync(ROOT).unwrap();
    t.m.write(f, 0, b"DURABLE but unsynced").unwrap();
    t.m.unlink(ROOT, n("f")).unwrap();
    assert_eq!(t.content(ROOT, "f"), None);
    t.m.cut(None);
    assert_eq!(t.content(ROOT, "f").unwrap(), b"durable");
    // Synced, it stays gone, and its store file with it.
    t.m.unlink(ROOT, n("f")).unwrap();
    t.m.fsync(ROOT).unwrap();
    let r = t.m.cut(None);
    assert_eq!(t.content(ROOT, "f"), None);
    assert_eq!((r.entries, r.removed), (0, 0), "{r:?}");
}

#[test]
fn truncates_are_undone_and_bytes_past_a_truncate_read_as_zero() {
    let mut t = model();
    let f = t.file(ROOT, "f");
    t.m.fsync(ROOT).unwrap();
    let data: Vec<u8> = (0..3 * PAGE).map(|i| (i % 251) as u8 + 1).collect();
    t.m.write(f, 0, &data).unwrap();
    t.m.fsync(f).unwrap();
    t.m.set_len(f, 100).unwrap();
    t.m.set_len(f, 2 * PAGE).unwrap();
    let live = t.content(ROOT, "f").unwrap();
    assert_eq!(&live[..100], &data[..100]);
    assert!(live[100..].iter().all(|b| *b == 0), "extended after a truncate: zeros");
    // A write in the zeroed region keeps the zeros around it.
    t.m.write(f, PAGE + 10, b"ab").unwrap();
    let live = t.content(ROOT, "f").unwrap();
    assert_eq!(&live[PAGE as usize + 10..PAGE as usize + 12], b"ab");
    assert!(live[PAGE as usize..PAGE as usize + 10].iter().all(|b| *b == 0));
    t.m.cut(None);
    assert_eq!(t.content(ROOT, "f").unwrap(), data, "the truncates were never synced");
    // Synced, the truncate holds.
    t.m.set_len(f, 5).unwrap();
    t.m.fsync(f).unwrap();
    t.m.cut(None);
    assert_eq!(t.content(ROOT, "f").unwrap(), &data[..5]);
}

#[test]
fn a_new_directory_needs_every_parent_synced() {
    let mut t = model();
    let a = t.dir(ROOT, "a");
    let b = t.dir(a, "b");
    let f = t.file(b, "f");
    t.m.fsync(f).unwrap();
    t.m.fsync(b).unwrap();
    t.m.fsync(a).unwrap();
    // The root not synced: all of it gone.
    let r = t.m.cut(None);
    assert_eq!(r.removed, 3, "{r:?}");
    assert!(t.names(ROOT).is_empty());
    let a = t.dir(ROOT, "a");
    let b = t.dir(a, "b");
    t.file(b, "f");
    for d in [b, a, ROOT] {
        t.m.fsync(d).unwrap();
    }
    t.m.cut(None);
    let a = t.m.child(ROOT, n("a")).unwrap();
    let b = t.m.child(a, n("b")).unwrap();
    assert_eq!(t.names(b), ["f"]);
}

#[test]
fn an_unsynced_rmdir_brings_the_directory_back_with_its_durable_entries() {
    let mut t = model();
    let d = t.dir(ROOT, "d");
    t.file(d, "f");
    t.m.fsync(d).unwrap();
    t.m.fsync(ROOT).unwrap();
    t.m.unlink(d, n("f")).unwrap();
    t.m.rmdir(ROOT, n("d")).unwrap();
    t.m.cut(None);
    let d = t.m.child(ROOT, n("d")).unwrap();
    assert_eq!(t.names(d), ["f"]);
}

#[test]
fn a_directory_named_twice_in_the_durable_image_keeps_one_name() {
    let mut t = model();
    let (a, b) = (t.dir(ROOT, "a"), t.dir(ROOT, "b"));
    let d = t.dir(a, "d");
    t.file(d, "f");
    for x in [d, a, b, ROOT] {
        t.m.fsync(x).unwrap();
    }
    t.m.rename(a, n("d"), b, n("d"), false).unwrap();
    t.m.fsync(b).unwrap();
    let r = t.m.cut(None);
    assert!(r.lines.iter().any(|l| l.contains("named twice")), "{r:?}");
    let named: usize = [a, b].iter().map(|p| t.names(*p).len()).sum();
    assert_eq!(named, 1, "one name left");
}

#[test]
fn a_torn_write_keeps_a_seeded_prefix_of_whole_sectors() {
    let mut kept = std::collections::BTreeSet::new();
    for seed in 0..64 {
        let mut t = model();
        let f = t.file(ROOT, "log");
        t.m.fsync(ROOT).unwrap();
        t.m.write(f, 0, &[1u8; 700]).unwrap();
        t.m.fsync(f).unwrap();
        // Unsynced: an earlier write (dropped whole) and the last one (torn).
        t.m.write(f, 2000, &[3u8; 100]).unwrap();
        t.m.write(f, 700, &[2u8; 1400]).unwrap();
        let r = t.m.cut(Some(seed));
        assert_eq!(r.torn, 1);
        let c = t.content(ROOT, "log").unwrap();
        assert_eq!(&c[..700], &[1u8; 700][..], "synced bytes are never torn");
        let end = c.len().max(700);
        // Sector boundaries in file offsets: 700 (the write's start), 1024, 1536, 2048, 2100.
        assert!([700, 1024, 1536, 2048, 2100].contains(&end), "seed {seed}: ended at {end}");
        assert!(c[700..].iter().all(|b| *b == 2), "seed {seed}: only the last write's prefix");
        // The same seed tears the same way.
        let mut again = model();
        let f = again.file(ROOT, "log");
        again.m.fsync(ROOT).unwrap();
        again.m.write(f, 0, &[1u8; 700]).unwrap();
        again.m.fsync(f).unwrap();
        again.m.write(f, 2000, &[3u8; 100]).unwrap();
        again.m.write(f, 700, &[2u8; 1400]).unwrap();
        again.m.cut(Some(seed));
        assert_eq!(again.content(ROOT, "log").unwrap(), c, "seed {seed} replays");
        kept.insert(end);
    }
    assert_eq!(kept.len(), 5, "every cut point is reached: {kept:?}");
}

#[test]
fn a_torn_sector_holds_all_the_page_cache_held_in_it() {
    for seed in 0..32 {
        let mut t = model();
        let f = t.file(ROOT, "log");
        t.m.fsync(ROOT).unwrap();
        t.m.write(f, 0, &[1u8; 100]).unwrap();
        t.m.fsync(f).unwrap();
        // Two unsynced appends sharing the sector 512..1024; the second torn.
        t.m.write(f, 100, &[b'a'; 600]).unwrap();
        t.m.write(f, 700, &[b'b'; 800]).unwrap();
        t.m.cut(Some(seed));
        let c = t.content(ROOT, "log").unwrap();
        assert!([100, 1024, 1500].contains(&c.len()), "seed {seed}: {}", c.len());
        if c.len() > 100 {
            assert!(c[100..512].iter().all(|b| *b == 0), "seed {seed}: that sector was not written back");
            assert!(c[512..700].iter().all(|b| *b == b'a'), "seed {seed}: the sector as the page cache held it");
            assert!(c[700..].iter().all(|b| *b == b'b'));
        }
    }
}

#[test]
fn no_tear_after_a_truncate_or_a_sync() {
    let mut t = model();
    let f = t.file(ROOT, "f");
    t.m.fsync(ROOT).unwrap();
    t.m.write(f, 0, &[7u8; 1024]).unwrap();
    t.m.set_len(f, 10).unwrap();
    let r = t.m.cut(Some(1));
    assert_eq!(r.torn, 0);
    assert_eq!(t.content(ROOT, "f").unwrap(), b"");
}

#[test]
fn handles_from_before_a_cut_are_dead() {
    let mut t = model();
    let f = t.file(ROOT, "f");
    t.m.fsync(ROOT).unwrap();
    let fh = t.m.open(f, false, false).unwrap();
    assert!(t.m.handle(fh).is_ok());
    t.m.cut(None);
    assert_eq!(t.m.handle(fh).unwrap_err(), libc::EIO);
    t.m.release(fh);
}

#[test]
fn writes_across_pages_read_back_merged_with_the_durable_content() {
    let mut t = model();
    let f = t.file(ROOT, "f");
    t.m.fsync(ROOT).unwrap();
    let base: Vec<u8> = (0..5 * PAGE).map(|i| (i % 200) as u8).collect();
    t.m.write(f, 0, &base).unwrap();
    t.m.fsync(f).unwrap();
    let mut want = base.clone();
    for (off, len) in [(PAGE - 3, 10u64), (3 * PAGE + 100, PAGE), (6 * PAGE + 5, 3)] {
        let data = vec![0xeeu8; len as usize];
        t.m.write(f, off, &data).unwrap();
        let end = (off + len) as usize;
        if want.len() < end {
            want.resize(end, 0);
        }
        want[off as usize..end].copy_from_slice(&data);
    }
    assert_eq!(t.content(ROOT, "f").unwrap(), want);
    assert_eq!(t.m.read(f, PAGE - 5, 9).unwrap(), want[PAGE as usize - 5..PAGE as usize + 4]);
    t.m.fsync(f).unwrap();
    t.m.cut(None);
    assert_eq!(t.content(ROOT, "f").unwrap(), want, "synced: all of it");
}

#[test]
fn pending_counts_what_a_cut_would_drop() {
    let mut t = model();
    let f = t.file(ROOT, "f");
    t.m.write(f, 0, b"x").unwrap();
    let p = t.m.pending();
    assert_eq!((p.files, p.bytes, p.entries), (1, PAGE, 1));
    t.m.fsync(f).unwrap();
    t.m.fsync(ROOT).unwrap();
    assert_eq!(t.m.pending(), Default::default());
}

#[test]
fn too_much_unsynced_data_fails_with_enospc() {
    let store = tempfile::tempdir().unwrap();
    let mut m = Model::new(store.path().to_path_buf(), 2 * PAGE).unwrap();
    let f = m.create(ROOT, n("f"), ME, true).unwrap().0;
    m.write(f, 0, &[1u8; 2 * PAGE as usize]).unwrap();
    assert_eq!(m.write(f, 2 * PAGE, b"x").unwrap_err(), libc::ENOSPC);
    m.fsync(f).unwrap();
    m.write(f, 2 * PAGE, b"x").unwrap();
}

#[test]
fn namespace_errors_are_those_of_posix() {
    let mut t = model();
    let d = t.dir(ROOT, "d");
    t.file(d, "f");
    t.file(ROOT, "g");
    assert_eq!(t.m.rmdir(ROOT, n("d")).unwrap_err(), libc::ENOTEMPTY);
    assert_eq!(t.m.unlink(ROOT, n("d")).unwrap_err(), libc::EISDIR);
    assert_eq!(t.m.rmdir(ROOT, n("g")).unwrap_err(), libc::ENOTDIR);
    assert_eq!(t.m.rename(ROOT, n("d"), d, n("x"), false).unwrap_err(), libc::EINVAL);
    assert_eq!(t.m.rename(ROOT, n("g"), ROOT, n("d"), false).unwrap_err(), libc::EISDIR);
    assert_eq!(t.m.rename(d, n("f"), ROOT, n("g"), true).unwrap_err(), libc::EEXIST);
    assert_eq!(t.m.mkdir(ROOT, n("g"), ME).unwrap_err(), libc::EEXIST);
    assert_eq!(t.m.create(ROOT, n("g"), ME, true).unwrap_err(), libc::EEXIST);
    assert_eq!(t.m.create(ROOT, n(&"x".repeat(256)), ME, true).unwrap_err(), libc::ENAMETOOLONG);
    assert_eq!(t.m.child(ROOT, n("missing")).unwrap_err(), libc::ENOENT);
}

#[test]
fn a_store_directory_with_files_in_it_is_refused() {
    let store = tempfile::tempdir().unwrap();
    std::fs::write(store.path().join("x"), b"").unwrap();
    let e = Model::new(store.path().to_path_buf(), PAGE).err().unwrap();
    assert!(e.to_string().contains("not empty"), "{e}");
}
