//! The primary's steps of a resync and of a verification, as the resync
//! engine ([`crate::runtime::resync`]) and the verifier
//! ([`crate::verify::online`]) call them: each is one engine call.

use super::exec::{lock, Extras};
use super::Primary;
use crate::core::primary::{Bound, Mode, Op, Reply, ResyncStep};
use crate::error::{Error, Result};
use crate::exec::primary::LocalEntry;
use crate::io::disk::FsPath;
use crate::protocol::path::RelPath;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A hash request queued with [`Primary::queue_hashes`]: blocks
/// `first..first + local.len()`, their hashes here, the request's sequence
/// number, and the file's size when they were read (blocks, and the bytes
/// of the range that lay inside the file).
pub(crate) struct HashTicket {
    pub first: u64,
    pub local: Vec<u64>,
    pub seq: u64,
    pub blocks: u64,
    pub bytes: u64,
}

/// A list request queued with [`Primary::queue_listing`]: what the path is
/// here, its children here (sorted by name), and the request's sequence number.
pub(crate) struct ListTicket {
    pub kind: Option<crate::io::disk::EntryKind>,
    pub children: Vec<(String, crate::io::disk::EntryKind)>,
    pub seq: u64,
}

impl Primary {
    /// Which mirror taken back a resync works for (see [`Primary::resync_check`]).
    pub(crate) fn attachment(&self) -> u64 {
        lock(&self.rt.core).engine.attachment()
    }

    /// A resync step goes on only while the mirror it was started for
    /// streams: once that mirror is lost, every later step fails (the
    /// change-log still names everything not yet recorded as done).
    pub(crate) fn resync_check(&self, attachment: u64) -> Result<()> {
        let core = lock(&self.rt.core);
        if !core.engine.resyncing() || core.engine.attachment() != attachment {
            return Err(Error::MirrorLost("the mirror was lost during the resync".into()));
        }
        Ok(())
    }

    fn resync_step(
        &self,
        attachment: Option<u64>,
        step: ResyncStep,
        deadline: Option<Instant>,
        x: &mut Extras,
    ) -> Result<Reply> {
        let bound = attachment.map_or(Bound::Free, Bound::Resync);
        self.run(Op::Resync { bound, step }, deadline, x)
    }

    /// What a resync must ship (all of it, and every rename meanwhile,
    /// with `full`), from the change-log.
    pub(crate) fn resync_plan(&self, attachment: u64, full: bool) -> Result<crate::durable::changelog::ChangeSet> {
        let t = self.resync_tracking()?;
        if !self.resyncing() {
            return Err(Error::InvalidArgument("no mirror taken back: attach one first".into()));
        }
        self.resync_step(Some(attachment), ResyncStep::Plan { full }, None, &mut Extras::default())?;
        Ok(t.changelog.resync_set())
    }

    fn resync_tracking(&self) -> Result<&super::ChangeTracking> {
        self.config
            .change_tracking
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("a resync needs change tracking".into()))
    }

    /// What renames moved while the resync still owed it: another pass.
    pub(crate) fn resync_redo(&self, attachment: u64) -> Result<crate::durable::changelog::ChangeSet> {
        self.resync_tracking()?;
        match self.resync_step(Some(attachment), ResyncStep::Redo, None, &mut Extras::default())? {
            Reply::Redo(set) => Ok(set),
            other => Err(Error::Rejected(format!("internal: redo answered {other:?}"))),
        }
    }

    /// The change-log's rename journal position (see [`crate::core::resync::ResyncLink::renames_at`]).
    pub(crate) fn resync_renames_at(&self) -> u64 {
        self.resync_tracking().map_or(0, |t| t.changelog.rename_position())
    }

    /// The renames since `pos`; `None` when the journal no longer reaches back that far.
    pub(crate) fn resync_renames_since(&self, pos: u64) -> Option<Vec<crate::core::resync::Renamed>> {
        self.resync_tracking().ok().and_then(|t| t.changelog.renames_since(pos))
    }

    /// Hold new renames for `ms` (0: let them go).
    pub(crate) fn resync_hold(&self, attachment: u64, ms: u64) -> Result<()> {
        self.resync_step(Some(attachment), ResyncStep::Hold { ms }, None, &mut Extras::default()).map(|_| ())
    }

    /// Record the children of a directory the resync walks as owed, durably.
    pub(crate) fn resync_owe(&self, attachment: u64, children: &[(FsPath, crate::io::disk::EntryKind)]) -> Result<()> {
        self.resync_check(attachment)?;
        let t = self.resync_tracking()?;
        Ok(t.changelog.owe_children(self.disk().as_ref(), children)?)
    }

    /// A full resync has walked everything: from now on a rename owes
    /// another pass only what the change-log still names.
    pub(crate) fn resync_walked(&self, attachment: u64) -> Result<()> {
        self.resync_step(Some(attachment), ResyncStep::Walked, None, &mut Extras::default()).map(|_| ())
    }

    /// Resync: look at one path (`None`: the filespace root) and ship what
    /// it is, with no call changing it meanwhile. With `prune`, a directory's
    /// children are listed and the mirror keeps only those.
    pub(crate) fn resync_reconcile(&self, fs: u16, path: Option<&RelPath>, prune: bool) -> Result<LocalEntry> {
        self.reconcile_bound(None, fs, path, prune)
    }

    pub(crate) fn reconcile_bound(
        &self,
        attachment: Option<u64>,
        fs: u16,
        path: Option<&RelPath>,
        prune: bool,
    ) -> Result<LocalEntry> {
        self.reconcile_at(attachment, fs, path, prune).map(|(e, _)| e)
    }

    /// [`Primary::reconcile_bound`], and the rename journal's position while it read.
    pub(crate) fn reconcile_at(
        &self,
        attachment: Option<u64>,
        fs: u16,
        path: Option<&RelPath>,
        prune: bool,
    ) -> Result<(LocalEntry, Option<u64>)> {
        let mut x = Extras::default();
        let step = ResyncStep::Reconcile { fs, path: path.cloned(), prune };
        self.resync_step(attachment, step, None, &mut x)?;
        let entry = x.entry.take().ok_or_else(|| Error::Rejected("internal: a reconcile left no entry".into()))?;
        Ok((entry, x.renames_at))
    }

    /// Resync: copy blocks `first..first + count` of `p` (as far as the file
    /// reaches) to the mirror, read and queued with the file claimed against
    /// writes, so any later write of them is queued after (rule 6). At most
    /// 256 KiB a call. Returns the bytes queued (0 if the file is gone).
    pub(crate) fn resync_copy(&self, p: &FsPath, first: u64, count: u64) -> Result<u64> {
        self.copy_bound(None, p, first, count)
    }

    pub(crate) fn copy_bound(&self, attachment: Option<u64>, p: &FsPath, first: u64, count: u64) -> Result<u64> {
        self.copy_at(attachment, p, first, count, 0).map(|(n, _)| n)
    }

    /// [`Primary::copy_bound`], and the rename journal's position while it read.
    pub(crate) fn copy_at(
        &self,
        attachment: Option<u64>,
        p: &FsPath,
        first: u64,
        count: u64,
        ahead: u64,
    ) -> Result<(u64, Option<u64>)> {
        let step = ResyncStep::Copy { file: p.clone(), first, count, ahead };
        let mut x = Extras::default();
        match self.resync_step(attachment, step, None, &mut x)? {
            Reply::Bytes(n) => Ok((n, x.renames_at)),
            other => Err(Error::Rejected(format!("internal: a copy answered {other:?}"))),
        }
    }

    /// Resync, compare mode: hashes of `count` blocks of `p` from `first`,
    /// here and on the mirror at the same point of the stream. `None` if
    /// the file is gone here.
    pub(crate) fn resync_hashes(
        &self,
        attachment: Option<u64>,
        p: &FsPath,
        first: u64,
        count: u32,
        timeout: Duration,
    ) -> Result<Option<(Vec<u64>, Vec<u64>)>> {
        let bound = attachment.map_or(Bound::Free, Bound::Resync);
        let Some(t) = self.queue_hashes_bound(bound, p, Box::new(move |_| (first, count)))? else { return Ok(None) };
        self.flush_queue();
        let remote = self.await_hashes(t.seq, timeout)?;
        Ok(Some((t.local, remote)))
    }

    /// Queue a hash request for blocks of `p` chosen by `pick` from the
    /// file's current size in blocks (a partial last block counts): the
    /// local hashes are read and the request queued with the file claimed
    /// against writes, so both sides hash the same point of the stream.
    /// `None` if the file is gone here. Not sent yet (see `flush_queue`).
    pub(crate) fn queue_hashes(
        &self,
        p: &FsPath,
        pick: impl FnOnce(u64) -> (u64, u32) + Send + 'static,
    ) -> Result<Option<HashTicket>> {
        self.queue_hashes_bound(Bound::Free, p, Box::new(pick))
    }

    fn queue_hashes_bound(&self, bound: Bound, p: &FsPath, pick: super::exec::Pick) -> Result<Option<HashTicket>> {
        let mut x = Extras { pick: Some(pick), ..Extras::default() };
        match self.run(Op::QueueHashes { bound, file: p.clone() }, None, &mut x)? {
            Reply::MaybeSeq(None) => Ok(None),
            Reply::Seq(seq) => {
                let (first, local, blocks, bytes) =
                    x.hashes.take().ok_or_else(|| Error::Rejected("internal: no local hashes".into()))?;
                Ok(Some(HashTicket { first, local, seq, blocks, bytes }))
            }
            other => Err(Error::Rejected(format!("internal: a hash request answered {other:?}"))),
        }
    }

    /// The mirror's answer to the hash request `seq`.
    pub(crate) fn await_hashes(&self, seq: u64, timeout: Duration) -> Result<Vec<u64>> {
        match self.run(Op::AwaitReply { seq }, Some(Instant::now() + timeout), &mut Extras::default())? {
            Reply::Hashes(h) => Ok(h),
            other => Err(Error::Rejected(format!("internal: #{seq} answered {other:?} for hashes"))),
        }
    }

    /// Verification: list directory `dir` of filespace `fs` (`None`: its
    /// root) here, and queue a request for the mirror's listing, with the
    /// directory claimed: every create, unlink, rename and directory change
    /// under it is then either in both listings or in neither.
    pub(crate) fn queue_listing(&self, fs: u16, dir: Option<&RelPath>) -> Result<ListTicket> {
        if fs as usize >= self.config.filespaces.len() {
            return Err(Error::InvalidArgument(format!("filespace {fs} does not exist")));
        }
        let mut x = Extras::default();
        match self.run(Op::QueueListing { bound: Bound::Free, fs, dir: dir.cloned() }, None, &mut x)? {
            Reply::Seq(seq) => {
                let (kind, children) = x.listing.take().unwrap_or_default();
                Ok(ListTicket { kind, children, seq })
            }
            other => Err(Error::Rejected(format!("internal: a list request answered {other:?}"))),
        }
    }

    /// The mirror's answer to the list request `seq`.
    pub(crate) fn await_listing(&self, seq: u64, timeout: Duration) -> Result<crate::protocol::ListingBody> {
        match self.run(Op::AwaitReply { seq }, Some(Instant::now() + timeout), &mut Extras::default())? {
            Reply::Listing(l) => Ok(l),
            other => Err(Error::Rejected(format!("internal: #{seq} answered {other:?} for a listing"))),
        }
    }

    /// Send whatever is queued (verification and resync requests).
    pub(crate) fn flush_queue(&self) {
        let _ = self.run(Op::Send, None, &mut Extras::default());
    }

    /// Verification goes on only while the pair streams with the mirror
    /// it started with, and no resync runs.
    pub(crate) fn verify_check(&self, attachment: u64) -> Result<()> {
        let core = lock(&self.rt.core);
        let e = &core.engine;
        if let Some(l) = e.mirror_lost() {
            return Err(Error::MirrorLost(l));
        }
        if e.attachment() != attachment {
            return Err(Error::MirrorLost("the mirror was lost and taken back during the verification".into()));
        }
        match e.mode() {
            Mode::Streaming if e.resyncing() => {
                Err(Error::Rejected("the mirror is being resynchronized: nothing to verify until it is done".into()))
            }
            Mode::Streaming => Ok(()),
            m => Err(Error::Rejected(format!("the pair is not streaming ({m:?})"))),
        }
    }

    /// Wait until everything queued so far is durable on the mirror, files
    /// and directory entries (its checkpoint runs at least once a second).
    pub(crate) fn wait_all_durable(&self, timeout: Duration) -> Result<()> {
        self.run(Op::WaitDurable, Some(Instant::now() + timeout), &mut Extras::default()).map(|_| ())
    }

    /// Resync: send whatever copies are queued.
    pub(crate) fn resync_send(&self) {
        self.flush_queue()
    }

    /// Resync: ask the mirror to make `p` durable (a flush frame); returns
    /// its sequence number, or `None` if the file is gone here. Its file
    /// is claimed exclusively: every write queued before the flush has done
    /// its local write too, so the local fsync that follows covers it
    /// before its activity entry counts as settled.
    pub(crate) fn resync_flush(&self, p: &FsPath) -> Result<Option<u64>> {
        self.flush_bound(None, p)
    }

    pub(crate) fn flush_bound(&self, attachment: Option<u64>, p: &FsPath) -> Result<Option<u64>> {
        match self.resync_step(attachment, ResyncStep::Flush { file: p.clone() }, None, &mut Extras::default())? {
            Reply::MaybeSeq(s) => Ok(s),
            other => Err(Error::Rejected(format!("internal: a flush answered {other:?}"))),
        }
    }

    /// Resync progress: once the flush `synced` is synced on the mirror,
    /// record durably that `blocks` and `paths` no longer differ (unless the
    /// mirror was lost meanwhile), so a resync that stops later continues
    /// with what is left.
    pub(crate) fn resync_checkpoint(&self, attachment: u64, step: ResyncStep, timeout: Duration) -> Result<()> {
        self.resync_tracking()?;
        self.resync_step(Some(attachment), step, Some(Instant::now() + timeout), &mut Extras::default()).map(|_| ())
    }

    /// Resync done shipping: wait until the mirror has everything durably,
    /// then clear the change-log, unless the mirror was lost meanwhile.
    /// `synced`: the last flush of every file the resync wrote. `false`
    /// (nothing cleared, still resyncing) if a rename owes the resync
    /// another pass.
    pub(crate) fn resync_finish(
        &self,
        attachment: u64,
        synced: Option<u64>,
        flushed: &BTreeSet<FsPath>,
        timeout: Duration,
    ) -> Result<bool> {
        self.resync_tracking()?;
        let step = ResyncStep::Finish { synced, flushed: flushed.clone() };
        match self.resync_step(Some(attachment), step, Some(Instant::now() + timeout), &mut Extras::default())? {
            Reply::Cleared(c) => Ok(c),
            other => Err(Error::Rejected(format!("internal: a finish answered {other:?}"))),
        }
    }
}
