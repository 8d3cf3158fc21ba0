//! The fault note: a primary whose local write, truncate or fsync failed
//! (rule 8) leaves its data files in doubt. Linux marks the pages of a
//! failed write-back clean and keeps them readable: a process started
//! later reads what never reached the disk, and no fsync of its will ever
//! write it. The note, a file beside the change-log, says so across
//! restarts until a primary start rewrites what the change-log names
//! ([`crate::exec::doubt::settle_in_doubt`]). Its presence is what
//! counts; its text is the fault, for people (`docs/changelog.md`).

use super::{disk_err, ChangeLog, ChangeLogError, Result};
use crate::durable::files;
use crate::io::disk::{DiskErrorKind, FsPath};
use crate::protocol::path::RelPath;

/// The most of a note's text read back (a note is one fault's reason).
const MAX_NOTE: usize = 4096;

impl ChangeLog {
    /// Where the fault note lives: beside the change-log, named after it.
    fn fault_note_path(&self) -> Result<FsPath> {
        let log = self.path();
        let name = format!("{}.fault", log.path);
        let rel = RelPath::new(&name).map_err(|e| ChangeLogError::Corrupt(format!("fault note {name}: {e}")))?;
        Ok(FsPath::new(log.filespace, rel))
    }

    /// Record durably that this segment's data files are in doubt (a local
    /// write, truncate or fsync failed), with why. A note already there
    /// is kept: the first fault is the one to tell. This process remembers
    /// it even if the file cannot be written (then the error says so).
    pub fn note_fault(&self, reason: &str) -> Result<()> {
        let mut mine = self.fault_note.lock().unwrap_or_else(|e| e.into_inner());
        if mine.is_none() {
            *mine = Some(reason.to_string());
        }
        let path = self.fault_note_path()?;
        if files::read(self.disk().as_ref(), &path).map_err(disk_err("fault note read"))?.is_some() {
            return Ok(());
        }
        let mut text = reason.as_bytes().to_vec();
        text.truncate(MAX_NOTE);
        files::replace(self.disk().as_ref(), &path, &text).map(drop).map_err(disk_err("fault note"))
    }

    /// The fault noted and not yet settled, if any: this process's, or the
    /// note an earlier one left.
    pub fn fault_noted(&self) -> Result<Option<String>> {
        let mine = self.fault_note.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = mine.as_ref() {
            return Ok(Some(f.clone()));
        }
        let path = self.fault_note_path()?;
        let bytes = files::read(self.disk().as_ref(), &path).map_err(disk_err("fault note read"))?;
        Ok(bytes.map(|mut b| {
            b.truncate(MAX_NOTE);
            String::from_utf8_lossy(&b).into_owned()
        }))
    }

    /// Remove the note durably, once what it covered was rewritten and synced.
    pub fn clear_fault_note(&self) -> Result<()> {
        let mut mine = self.fault_note.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.fault_note_path()?;
        let disk = self.disk();
        match disk.remove_file(&path) {
            Ok(()) => disk.sync_parent_dir(&path).map_err(disk_err("fault note removal"))?,
            Err(e) if e.kind == DiskErrorKind::NotFound => {}
            Err(e) => return Err(ChangeLogError::Disk { op: "fault note removal", source: e }),
        }
        *mine = None;
        Ok(())
    }
}
