//! The runtime's side of a resync: the engine ([`crate::core::resync`]) over
//! a [`Primary`] that has taken its mirror back.

pub use crate::core::resync::{
    run_on, ChangeSet, LocalEntry, Progress, ProgressSnapshot, Renamed, ResyncLink, ResyncOptions, ResyncReport,
    MAX_EXTRA_PASSES,
};
use crate::error::Result;
use crate::io::disk::{EntryKind, FsPath};
use crate::protocol::path::RelPath;
use crate::runtime::primary::Primary;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The runtime's link: a [`Primary`] that has taken its mirror back, and
/// which taking-back this resync works for.
pub struct PrimaryLink<'a>(&'a Primary, u64, Instant, Option<u64>);

impl<'a> PrimaryLink<'a> {
    /// The link for the mirror `p` has taken back last (tests wrap it to
    /// act at a chosen step of a resync).
    pub fn new(p: &'a Primary) -> Self {
        PrimaryLink(p, p.attachment(), Instant::now(), None)
    }
}

impl ResyncLink for PrimaryLink<'_> {
    fn now_ms(&self) -> u64 {
        self.2.elapsed().as_millis() as u64
    }
    fn pause(&mut self, ms: u64) {
        // Sleeping is the point here: the resync keeps under its rate.
        std::thread::sleep(Duration::from_millis(ms));
    }
    fn block_size(&self) -> u32 {
        self.0.block_size()
    }
    fn filespace_count(&self) -> u16 {
        self.0.filespaces().len() as u16
    }
    fn change_set(&mut self, full: bool) -> Result<ChangeSet> {
        self.0.resync_plan(self.1, full)
    }
    fn redo(&mut self) -> Result<ChangeSet> {
        self.0.resync_redo(self.1)
    }
    fn renames_at(&mut self) -> u64 {
        self.0.resync_renames_at()
    }
    fn renames_since(&mut self, pos: u64) -> Option<Vec<crate::core::resync::Renamed>> {
        self.0.resync_renames_since(pos)
    }
    fn owe(&mut self, children: &[(FsPath, EntryKind)]) -> Result<()> {
        self.0.resync_owe(self.1, children)
    }
    fn hold(&mut self, ms: u64) -> Result<()> {
        self.0.resync_hold(self.1, ms)
    }
    fn walked(&mut self) {
        if let Err(e) = self.0.resync_walked(self.1) {
            tracing::debug!(error = %e, "resync: the walk's end was not recorded");
        }
    }
    fn entry_kind(&mut self, p: &FsPath) -> Result<Option<EntryKind>> {
        self.0.resync_check(self.1)?;
        Ok(self.0.disk().entry_kind(p)?)
    }
    fn reconcile(&mut self, fs: u16, path: Option<&RelPath>, prune: bool) -> Result<LocalEntry> {
        self.3 = None;
        let (entry, at) = self.0.reconcile_at(Some(self.1), fs, path, prune)?;
        self.3 = at;
        Ok(entry)
    }
    fn copy(&mut self, p: &FsPath, first: u64, count: u64, ahead: u64) -> Result<u64> {
        self.3 = None;
        let (n, at) = self.0.copy_at(Some(self.1), p, first, count, ahead)?;
        self.3 = at;
        Ok(n)
    }
    fn step_renames_at(&mut self) -> Option<u64> {
        self.3.take()
    }
    fn hashes(
        &mut self,
        p: &FsPath,
        first: u64,
        count: u32,
        timeout: Duration,
    ) -> Result<Option<(Vec<u64>, Vec<u64>)>> {
        self.0.resync_hashes(Some(self.1), p, first, count, timeout)
    }
    fn send(&mut self) {
        self.0.resync_send()
    }
    fn check(&mut self) -> Result<()> {
        self.0.resync_check(self.1)
    }
    fn flush(&mut self, p: &FsPath) -> Result<Option<u64>> {
        self.0.flush_bound(Some(self.1), p)
    }
    fn checkpoint(
        &mut self,
        synced: u64,
        flushed: &BTreeSet<FsPath>,
        blocks: &BTreeMap<FsPath, BTreeSet<u64>>,
        paths: &[FsPath],
        as_of: u64,
        timeout: Duration,
    ) -> Result<()> {
        let step = crate::core::primary::ResyncStep::Checkpoint {
            synced,
            flushed: flushed.clone(),
            blocks: blocks.clone(),
            paths: paths.to_vec(),
            as_of,
        };
        self.0.resync_checkpoint(self.1, step, timeout)
    }
    fn finish(&mut self, synced: Option<u64>, flushed: &BTreeSet<FsPath>, timeout: Duration) -> Result<bool> {
        self.0.resync_finish(self.1, synced, flushed, timeout)
    }
}

/// Run a resync on a primary that has taken its mirror back.
pub fn run(p: &Primary, opts: &ResyncOptions, progress: &Progress) -> Result<ResyncReport> {
    let unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    progress.started_unix_ms.store(unix_ms, Ordering::Relaxed);
    run_on(&mut PrimaryLink::new(p), opts, progress)
}
