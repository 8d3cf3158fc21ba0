use super::*;
use crate::io::disk::{SimDisk, SimFault};
use crate::protocol::path::RelPath;
use std::sync::Arc;

const BS: u32 = 8192;

fn p(s: &str) -> FsPath {
    FsPath::new(0, RelPath::new(s).unwrap())
}

/// A data disk whose file `a` holds two blocks the page cache shows and
/// the disk lacks (their fdatasync failed), and a change-log naming them.
fn after_a_failed_sync() -> (Arc<SimDisk>, ChangeLog) {
    let data = Arc::new(SimDisk::new(1));
    let state = Arc::new(SimDisk::new(1));
    let log = ChangeLog::create(state, FsPath::new(0, RelPath::new("changelog").unwrap()), BS).unwrap();
    let f = data.open(&p("a"), OpenMode::CreateNew).unwrap();
    f.write_at(0, &vec![1u8; 4 * BS as usize]).unwrap();
    f.sync_data().unwrap();
    data.sync_parent_dir(&p("a")).unwrap();
    f.write_at(u64::from(BS), &vec![7u8; 2 * BS as usize]).unwrap();
    log.record_block(&p("a"), 1).unwrap();
    log.record_block(&p("a"), 2).unwrap();
    data.inject(SimFault::FailNextSync);
    assert!(f.sync_data().is_err());
    // Linux: the failed pages stay readable and a later sync succeeds
    // without writing them.
    f.sync_data().unwrap();
    assert_ne!(data.snapshot(), data.durable_snapshot(), "the live image shows what the disk lacks");
    (data, log)
}

#[test]
fn settling_a_fault_note_makes_the_live_image_durable_and_clears_the_note() {
    let (data, log) = after_a_failed_sync();
    log.note_fault("fdatasync of a failed").unwrap();
    let settled = settle_in_doubt(data.as_ref(), &log, None).unwrap().expect("a note to settle");
    // The records name blocks 1 and 2 and their extent: the extent reaches
    // past the file's 4 blocks, so all of it is written back.
    assert_eq!((settled.files, settled.bytes, settled.fault.as_str()), (1, 4 * u64::from(BS), "fdatasync of a failed"));
    assert_eq!(data.snapshot(), data.durable_snapshot());
    assert_eq!(log.fault_noted().unwrap(), None);
    assert_eq!(settle_in_doubt(data.as_ref(), &log, None).unwrap(), None, "nothing noted: nothing to do");
}

#[test]
fn without_a_note_nothing_is_rewritten() {
    let (data, log) = after_a_failed_sync();
    assert_eq!(settle_in_doubt(data.as_ref(), &log, None).unwrap(), None);
    assert_ne!(data.snapshot(), data.durable_snapshot());
}

#[test]
fn a_path_the_change_log_names_is_rewritten_whole() {
    let (data, log) = after_a_failed_sync();
    // The blocks' own records gone (a resync cleared them), the path's kept.
    log.clear().unwrap();
    log.record_touched(&p("a"), false).unwrap();
    log.note_fault("fdatasync of a failed").unwrap();
    let settled = settle_in_doubt(data.as_ref(), &log, None).unwrap().expect("a note to settle");
    assert_eq!(settled.bytes, 4 * u64::from(BS));
    assert_eq!(data.snapshot(), data.durable_snapshot());
}

#[test]
fn a_sync_that_fails_again_keeps_the_note() {
    let (data, log) = after_a_failed_sync();
    log.note_fault("fdatasync of a failed").unwrap();
    data.inject(SimFault::FailNextSync);
    let e = settle_in_doubt(data.as_ref(), &log, None).unwrap_err();
    assert!(e.to_string().contains("in doubt since a fault"), "{e}");
    assert!(log.fault_noted().unwrap().is_some());
}

#[test]
fn the_planted_defect_clears_the_note_and_rewrites_nothing() {
    let (data, log) = after_a_failed_sync();
    log.note_fault("fdatasync of a failed").unwrap();
    assert_eq!(settle_in_doubt(data.as_ref(), &log, Some(PlantedBug::FaultNoteIgnored)).unwrap(), None);
    assert_eq!(log.fault_noted().unwrap(), None);
    assert_ne!(data.snapshot(), data.durable_snapshot());
}

/// The executor notes a failed write, truncate or sync before the engine
/// hears of it; a refused namespace change (nothing lost) is not noted.
#[test]
fn the_executor_notes_a_failed_sync_and_not_a_refused_create() {
    use crate::core::primary::{Command, LocalStep};
    use crate::exec::primary::{Extras, PrimaryExec};
    let (data, log) = after_a_failed_sync();
    let log = Arc::new(log);
    let exec = PrimaryExec::new(data.clone(), Some(log.clone()), BS);
    let create = LocalStep::Create { file: p("a") };
    exec.perform(Command::Local { call: 1, step: create }, &mut Extras::default());
    assert_eq!(log.fault_noted().unwrap(), None, "an existing file refused: nothing in doubt");
    data.inject(SimFault::FailNextSync);
    exec.perform(
        Command::Local { call: 2, step: LocalStep::SyncFiles { files: vec![p("a")] } },
        &mut Extras::default(),
    );
    assert!(log.fault_noted().unwrap().is_some_and(|f| f.contains("injected")), "{:?}", log.fault_noted());
}
