//! Settling a fault note (rule 8 across a restart): before a segment whose
//! local write, truncate or fsync failed serves as primary again, every
//! block its change-log names is read and written back, then synced.
//!
//! Why: Linux marks the pages of a failed write-back clean and keeps them
//! readable. A process started later (no power cut in between) reads data
//! the disk never got, and no fsync writes it: serving from it, a resync
//! would copy it to the mirror, and the next power cut would take it from
//! this copy alone, a difference nothing records. Writing the bytes back
//! makes the pages dirty again, so the sync after it either makes the live
//! image durable or fails (and the segment stays faulted). The change-log
//! names every page that can be in that state: a block written since its
//! file's last successful sync still has its activity or change record
//! (entries retire only after such a sync).

use crate::core::PlantedBug;
use crate::durable::changelog::ChangeLog;
use crate::error::{Error, Result};
use crate::io::disk::{Disk, DiskFile, EntryKind, FsPath, OpenMode};
use std::collections::{BTreeMap, BTreeSet};

/// Largest read and write-back in one piece.
const CHUNK: u64 = 1 << 20;

/// What a settled note covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// The fault the note told.
    pub fault: String,
    pub files: u64,
    pub bytes: u64,
}

/// Rewrite and sync what the change-log names if a fault is noted beside
/// it, then remove the note. `Ok(None)`: nothing was noted. An error
/// leaves the note: the segment must not serve from these files yet.
pub fn settle_in_doubt(disk: &dyn Disk, log: &ChangeLog, planted: Option<PlantedBug>) -> Result<Option<Settled>> {
    let Some(fault) = log.fault_noted().map_err(|e| Error::Faulted(e.to_string()))? else { return Ok(None) };
    if planted == Some(PlantedBug::FaultNoteIgnored) {
        log.clear_fault_note().map_err(|e| Error::Faulted(e.to_string()))?;
        return Ok(None);
    }
    let span = tracing::warn_span!("settle_in_doubt", %fault);
    let _e = span.enter();
    let bs = u64::from(log.block_size());
    let mut settled = Settled { fault, ..Settled::default() };
    for (file, blocks) in targets(disk, log)? {
        let f = match disk.open(&file, OpenMode::Existing) {
            Ok(f) => f,
            // Removed since its record: its removal is a record of its own.
            Err(e) if e.kind == crate::io::disk::DiskErrorKind::NotFound => continue,
            Err(e) => return Err(in_doubt(&file, e.into())),
        };
        let len = f.len().map_err(|e| in_doubt(&file, e.into()))?;
        let runs: Vec<(u64, u64)> = match blocks {
            None => vec![(0, len)],
            Some(b) => crate::core::resync::runs(b, u64::MAX)
                .into_iter()
                .map(|(first, n)| (first.saturating_mul(bs), first.saturating_add(n).saturating_mul(bs).min(len)))
                .filter(|(start, end)| start < end)
                .collect(),
        };
        let mut wrote = 0;
        for (start, end) in runs {
            wrote += write_back(f.as_ref(), start, end).map_err(|e| in_doubt(&file, e))?;
        }
        f.sync_data().map_err(|e| in_doubt(&file, e.into()))?;
        settled.files += 1;
        settled.bytes += wrote;
    }
    log.clear_fault_note().map_err(|e| Error::Faulted(e.to_string()))?;
    tracing::warn!(
        files = settled.files,
        bytes = settled.bytes,
        "files in doubt rewritten and synced: the fault note is cleared"
    );
    Ok(Some(settled))
}

fn in_doubt(file: &FsPath, e: Error) -> Error {
    Error::Faulted(format!("rewriting {file}, in doubt since a fault: {e}"))
}

/// The files the change-log names, each with its blocks (`None`: all of it,
/// for a path whose namespace changed, or everything under a directory).
fn targets(disk: &dyn Disk, log: &ChangeLog) -> Result<BTreeMap<FsPath, Option<BTreeSet<u64>>>> {
    let set = log.change_set();
    let mut out: BTreeMap<FsPath, Option<BTreeSet<u64>>> = BTreeMap::new();
    for (path, subtree) in &set.touched {
        match disk.entry_kind(path)? {
            Some(EntryKind::File) => {
                out.insert(path.clone(), None);
            }
            Some(EntryKind::Dir) if *subtree => files_under(disk, path, &mut out)?,
            _ => {}
        }
    }
    for (file, blocks) in set.all_named_blocks() {
        // A whole file (`None`) already covers these.
        if let Some(mine) = out.entry(file).or_insert_with(|| Some(BTreeSet::new())) {
            mine.extend(blocks);
        }
    }
    Ok(out)
}

fn files_under(disk: &dyn Disk, dir: &FsPath, out: &mut BTreeMap<FsPath, Option<BTreeSet<u64>>>) -> Result<()> {
    for (name, kind) in disk.list_dir(dir.filespace, Some(&dir.path))? {
        let child =
            FsPath::new(dir.filespace, dir.path.join(&name).map_err(|e| Error::InvalidArgument(e.to_string()))?);
        match kind {
            EntryKind::File => {
                out.insert(child, None);
            }
            EntryKind::Dir => files_under(disk, &child, out)?,
            EntryKind::Other => {}
        }
    }
    Ok(())
}

/// Read `start..end` and write the same bytes back, a chunk at a time.
fn write_back(f: &dyn DiskFile, start: u64, end: u64) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK.min(end - start) as usize];
    let mut at = start;
    while at < end {
        let want = (end - at).min(CHUNK) as usize;
        let mut got = 0;
        while got < want {
            match f.read_at(at + got as u64, &mut buf[got..want])? {
                0 => break,
                n => got += n,
            }
        }
        if got == 0 {
            break;
        }
        f.write_at(at, &buf[..got])?;
        at += got as u64;
    }
    Ok(at - start)
}

#[cfg(test)]
#[path = "doubt_tests.rs"]
mod tests;
