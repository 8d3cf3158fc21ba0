//! What only the simulator's disk must do: crashes that keep what was
//! synced, torn writes, faults that fire once.

use super::*;

fn sim_file(snap: &std::collections::BTreeMap<(u16, String), SimEntry>, fs: u16, path: &str) -> Option<Vec<u8>> {
    match snap.get(&(fs, path.to_string())) {
        Some(SimEntry::File(b)) => Some(b.clone()),
        Some(SimEntry::Dir) => panic!("{path} is a directory"),
        None => None,
    }
}

#[test]
fn sim_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SimDisk>();
    assert_send_sync::<sim::SimFile>();
}

#[test]
fn sim_crash_drops_unsynced_keeps_synced() {
    let d = SimDisk::new(2);
    d.create_dir(&p(0, "d")).unwrap();
    d.sync_parent_dir(&p(0, "d")).unwrap();
    let f = new_file(&d, &p(0, "d/f"), b"synced");
    f.sync_data().unwrap();
    d.sync_parent_dir(&p(0, "d/f")).unwrap();
    // Not synced: more data in f, a file whose entry was never synced, a new
    // directory, a rename and a removal.
    f.write_at(6, b"+lost").unwrap();
    let g = new_file(&d, &p(0, "d/g"), b"data synced, entry not");
    g.sync_data().unwrap();
    let h = new_file(&d, &p(1, "h"), b"h");
    h.sync_data().unwrap();
    d.sync_parent_dir(&p(1, "h")).unwrap();
    d.create_dir(&p(1, "e")).unwrap();
    d.rename(&p(1, "h"), &p(1, "h2")).unwrap();
    d.remove_file(&p(0, "d/f")).unwrap();
    assert_ne!(d.snapshot(), d.durable_snapshot());

    d.crash(None);
    let snap = d.snapshot();
    assert_eq!(snap, d.durable_snapshot());
    assert_eq!(snap.get(&(0, "d".to_string())), Some(&SimEntry::Dir));
    assert_eq!(sim_file(&snap, 0, "d/f").as_deref(), Some(&b"synced"[..]));
    assert_eq!(sim_file(&snap, 0, "d/g"), None);
    assert_eq!(sim_file(&snap, 1, "h").as_deref(), Some(&b"h"[..]));
    assert_eq!(sim_file(&snap, 1, "h2"), None);
    assert!(!snap.contains_key(&(1, "e".to_string())));
    assert_eq!(snap.len(), 3, "{snap:?}");
    // Handles from before the crash are dead; the disk itself works on.
    assert!(f.write_at(0, b"x").is_err());
    assert!(f.read_at(0, &mut [0u8; 1]).is_err());
    assert!(f.sync_data().is_err());
    assert_eq!(read_path(&d, &p(0, "d/f")), b"synced");
    d.open(&p(0, "d/g"), OpenMode::CreateNew).unwrap();
}

#[test]
fn sim_directory_rename_is_durable_with_its_subtree() {
    let d = SimDisk::new(1);
    d.create_dir(&p(0, "a")).unwrap();
    d.sync_parent_dir(&p(0, "a")).unwrap();
    new_file(&d, &p(0, "a/f"), b"payload").sync_data().unwrap();
    d.sync_parent_dir(&p(0, "a/f")).unwrap();
    d.rename(&p(0, "a"), &p(0, "b")).unwrap();
    d.sync_parent_dir(&p(0, "b")).unwrap();
    d.crash(None);
    let snap = d.snapshot();
    assert_eq!(sim_file(&snap, 0, "b/f").as_deref(), Some(&b"payload"[..]));
    assert!(!snap.contains_key(&(0, "a".to_string())));
    // A directory whose entry was synced but whose parent was not: gone.
    d.create_dir(&p(0, "c")).unwrap();
    new_file(&d, &p(0, "c/f"), b"x").sync_data().unwrap();
    d.sync_parent_dir(&p(0, "c/f")).unwrap();
    d.crash(None);
    assert!(!d.snapshot().contains_key(&(0, "c".to_string())));
}

#[test]
fn sim_torn_write_keeps_a_prefix() {
    let d = SimDisk::new(1);
    let f = new_file(&d, &p(0, "f"), b"01234567");
    f.sync_data().unwrap();
    d.sync_parent_dir(&p(0, "f")).unwrap();
    let g = new_file(&d, &p(0, "g"), b"gggg");
    g.sync_data().unwrap();
    d.sync_parent_dir(&p(0, "g")).unwrap();
    g.write_at(0, b"older unsynced write").unwrap();
    f.write_at(6, b"ABCDEFGH").unwrap();
    d.crash(Some(3));
    let snap = d.snapshot();
    assert_eq!(sim_file(&snap, 0, "f").as_deref(), Some(&b"012345ABC"[..]));
    assert_eq!(sim_file(&snap, 0, "g").as_deref(), Some(&b"gggg"[..]));

    // A tear longer than the write keeps all of it; a synced file is not torn.
    let f = d.open(&p(0, "f"), OpenMode::Existing).unwrap();
    f.write_at(0, b"zz").unwrap();
    d.crash(Some(100));
    assert_eq!(read_path(&d, &p(0, "f")), b"zz2345ABC");
    let f = d.open(&p(0, "f"), OpenMode::Existing).unwrap();
    f.write_at(0, b"yy").unwrap();
    f.sync_data().unwrap();
    d.crash(Some(1));
    assert_eq!(read_path(&d, &p(0, "f")), b"yy2345ABC");
}

#[test]
fn sim_injected_faults_fire_once() {
    let d = SimDisk::new(1);
    let f = new_file(&d, &p(0, "f"), b"abc");
    d.sync_parent_dir(&p(0, "f")).unwrap();
    d.inject(SimFault::FailNextSync);
    assert_eq!(kind(f.sync_data()), DiskErrorKind::Io);
    assert_eq!(sim_file(&d.durable_snapshot(), 0, "f").as_deref(), Some(&b""[..]));
    // A later sync does not write what the failed one let go (rule 8):
    // the length is durable, the bytes are not; written again, they are.
    f.sync_data().unwrap();
    assert_eq!(sim_file(&d.durable_snapshot(), 0, "f").as_deref(), Some(&b"\0\0\0"[..]));
    f.write_at(0, b"abc").unwrap();
    f.sync_data().unwrap();
    assert_eq!(sim_file(&d.durable_snapshot(), 0, "f").as_deref(), Some(&b"abc"[..]));

    d.inject(SimFault::FailNextWrite);
    assert_eq!(kind(f.write_at(0, b"X")), DiskErrorKind::Io);
    assert_eq!(read_all(&*f), b"abc");
    d.inject(SimFault::NoSpace);
    assert_eq!(kind(f.write_at(3, b"d")), DiskErrorKind::NoSpace);
    f.write_at(3, b"d").unwrap();
    assert_eq!(read_all(&*f), b"abcd");

    d.inject(SimFault::FailNextSync);
    assert_eq!(kind(d.sync_parent_dir(&p(0, "f"))), DiskErrorKind::Io);
    d.sync_parent_dir(&p(0, "f")).unwrap();

    d.inject(SimFault::FailNextWrite);
    d.clear_faults();
    f.write_at(0, b"A").unwrap();
}

#[test]
fn sim_same_operations_same_snapshot() {
    let run = || {
        let d = SimDisk::new(2);
        d.create_dir(&p(1, "dir")).unwrap();
        new_file(&d, &p(1, "dir/x"), b"xyz");
        new_file(&d, &p(0, "y"), &[5u8; 40]).set_len(20).unwrap();
        d.snapshot()
    };
    let a = run();
    assert_eq!(a, run());
    assert_eq!(a.get(&(1, "dir".to_string())), Some(&SimEntry::Dir));
    assert_eq!(a.get(&(0, "y".to_string())), Some(&SimEntry::File(vec![5u8; 20])));
}

#[test]
fn sim_dir_handle_makes_entries_durable_after_a_rename() {
    let d = SimDisk::new(1);
    d.create_dir(&p(0, "a")).unwrap();
    d.sync_parent_dir(&p(0, "a")).unwrap();
    let h = d.parent_dir_handle(&p(0, "a/f")).unwrap();
    new_file(&d, &p(0, "a/f"), b"f").sync_data().unwrap();
    d.rename(&p(0, "a"), &p(0, "b")).unwrap();
    d.sync_parent_dir(&p(0, "b")).unwrap();
    h.sync_data().unwrap();
    d.crash(None);
    assert_eq!(sim_file(&d.snapshot(), 0, "b/f").as_deref(), Some(&b"f"[..]));
}
