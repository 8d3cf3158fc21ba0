//! The primary's side of a resync (rule 6) and of a verification: each
//! step reads what it ships with the paths it names claimed, so a later
//! call's change is queued after it and the mirror never goes back in
//! time; checkpoints and the finish clear the change-log only once the
//! mirror (and this host) has what they clear durably, keeping the
//! activity entries that cover writes still in flight.

use super::calls::step;
use super::link::{LogJob, Shipped};
use super::*;
use crate::protocol::Kind;

/// Extents one resync copy's activity cover may take ahead of itself (64
/// MiB of 32 KiB blocks): one change-log sync per that many, where a cover
/// per copy would cost one per extent (docs/performance.md, "Full resync").
pub(super) const COVER_AHEAD_EXTENTS: u64 = 64;

/// Resync steps past the generic ones.
mod rstep {
    /// Waiting for, then running, the local fdatasyncs of a checkpoint or finish.
    pub const SYNC: u8 = 20;
    pub const SYNC_FILES: u8 = 21;
    pub const SYNC_DIRS: u8 = 22;
    pub const READ: u8 = 23;
}

/// A frame a resync or verification step has built and not yet shipped
/// (kept while it waits for room or for its cover).
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub file: Option<FsPath>,
    pub header: Header,
    pub body: Bytes,
    pub payload: usize,
    pub changes: Vec<Change>,
}

impl Engine {
    /// A resync step's claims are granted (or it needs none).
    pub(super) fn resync_claimed(&mut self, id: CallId, s: ResyncStep, st: u8) {
        match (s, st) {
            (ResyncStep::Plan { full }, _) => {
                self.resync.full = full;
                self.complete(id, Ok(Reply::Done))
            }
            (ResyncStep::Hold { ms }, _) => {
                if ms == 0 {
                    self.release_renames();
                } else {
                    self.resync.hold_until = self.now.saturating_add(ms);
                    tracing::info!(ms, "resync: holding new renames while it finishes what renames kept moving");
                }
                self.complete(id, Ok(Reply::Done))
            }
            (ResyncStep::Walked, _) => {
                self.resync.full = false;
                self.complete(id, Ok(Reply::Done))
            }
            (ResyncStep::Redo, _) => {
                self.set_step(id, rstep::READ);
                self.emit(Command::TakeRedo { call: id });
            }
            (ResyncStep::Reconcile { fs, path, prune }, _) => {
                self.set_step(id, rstep::READ);
                self.emit(Command::ReadReconcile { call: id, fs, path, prune });
            }
            (ResyncStep::Copy { file, first, count, .. }, _) => {
                self.set_step(id, rstep::READ);
                self.emit(Command::ReadCopy { call: id, file, first, count });
            }
            (ResyncStep::Flush { file }, _) => {
                self.set_step(id, step::OPENED);
                self.emit(Command::Open { call: id, file, want_len: false, absent_ok: true });
            }
            (ResyncStep::Checkpoint { flushed, blocks, .. }, step::START) => {
                let files = flushed.iter().chain(blocks.keys()).cloned().collect();
                self.sync_resynced(id, files)
            }
            (ResyncStep::Finish { flushed, .. }, step::START) => self.sync_resynced(id, flushed.into_iter().collect()),
            (ResyncStep::Checkpoint { flushed, blocks, .. }, rstep::SYNC) => {
                let files: BTreeSet<FsPath> = flushed.iter().chain(blocks.keys()).cloned().collect();
                self.set_step(id, rstep::SYNC_FILES);
                self.emit(Command::Local {
                    call: id,
                    step: LocalStep::SyncFiles { files: files.into_iter().collect() },
                });
            }
            (ResyncStep::Finish { flushed, .. }, rstep::SYNC) => {
                self.set_step(id, rstep::SYNC_FILES);
                self.emit(Command::Local {
                    call: id,
                    step: LocalStep::SyncFiles { files: flushed.into_iter().collect() },
                });
            }
            _ => self.fail(id, Failure::Rejected("internal: resync step in an unexpected state".into())),
        }
    }

    /// Whether a new rename waits: a resync holds renames (for a bounded
    /// time, and only while it streams to its mirror).
    pub(super) fn renames_held(&self) -> bool {
        self.resync.active
            && !self.closing
            && self.mode == Mode::Streaming
            && self.lost.is_none()
            && self.now < self.resync.hold_until
    }

    /// Let held renames go, in the order they came.
    pub(super) fn release_renames(&mut self) {
        self.resync.hold_until = 0;
        for id in std::mem::take(&mut self.resync.held) {
            self.admit(id);
        }
    }

    /// A hold ends when its time is up or its resync is over, whatever the
    /// resync does (checked on every tick).
    pub(super) fn check_hold(&mut self) {
        if (self.resync.hold_until != 0 || !self.resync.held.is_empty()) && !self.renames_held() {
            self.release_renames();
        }
    }

    /// Before entries are cleared, this side's copy of what they name is
    /// made durable too: the files, and every directory changed since the
    /// last local sync. The mirror having a change durably says nothing of
    /// this host's page cache, where changes made in change tracking may
    /// still sit.
    fn sync_resynced(&mut self, id: CallId, files: Vec<FsPath>) {
        if self.planted(PlantedBug::ResyncClearWithoutLocalSync) {
            return self.resync_synced_here(id);
        }
        let mut claims: Vec<Claim> = files
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|f| Claim::exclusive(Target::SyncOf(f)))
            .collect();
        claims.push(Claim::exclusive(Target::DirSync));
        if let Some(c) = self.calls.get_mut(&id) {
            c.step = rstep::SYNC;
            c.stage = Stage::Claiming;
        }
        if self.claims.request(id, claims) {
            self.claimed(id);
        }
    }

    pub(super) fn resync_local_done(&mut self, id: CallId, st: u8, op: Op, result: Result<(), String>) {
        if st == rstep::SYNC_DIRS {
            self.dirty_dirs.end(result.is_ok());
        }
        if let Err(e) = result {
            let f = self.fault(format!("local sync before a resync checkpoint failed: {e}"));
            return self.fail(id, f);
        }
        match st {
            rstep::SYNC_FILES => {
                // A path cleared must exist here durably as it does on the
                // mirror: this host may have it only from its mirror days,
                // never synced since (a directory the resync walked).
                let cleared = match &op {
                    Op::Resync { step: ResyncStep::Checkpoint { paths, .. }, .. } => {
                        paths.iter().map(|p| (p.filespace, p.path.parent())).collect()
                    }
                    _ => Vec::new(),
                };
                let dirs = self.dirty_dirs.begin(cleared);
                self.set_step(id, rstep::SYNC_DIRS);
                self.emit(Command::Local { call: id, step: LocalStep::SyncDirs { dirs } });
            }
            rstep::SYNC_DIRS => {
                self.release_claims(id);
                self.resync_synced_here(id)
            }
            _ => self.fail(id, Failure::Rejected("internal: unexpected local step".into())),
        }
    }

    /// This side is durable: wait for the mirror's mark.
    pub(super) fn resync_synced_here(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        let (mark, seq) = match &c.op {
            Op::Resync { step: ResyncStep::Checkpoint { synced, .. }, .. } => {
                let mark =
                    if self.planted(PlantedBug::ResyncCheckpointBeforeSynced) { Mark::Applied } else { Mark::Synced };
                (mark, *synced)
            }
            Op::Resync { step: ResyncStep::Finish { synced: Some(s), .. }, .. } => (Mark::Synced, *s),
            // The mirror's checkpoint makes everything durable at least once a second.
            Op::Resync { step: ResyncStep::Finish { synced: None, .. }, .. } => (Mark::Durable, self.stream.last_seq()),
            _ => return,
        };
        self.kick();
        self.set_step(id, step::MARK);
        self.wait_mark(id, mark, seq)
    }

    /// The mirror has the checkpoint's or the finish's changes: clear, in
    /// the change-log's turn, unless the pair left streaming meanwhile.
    pub(super) fn resync_mark_reached(&mut self, id: CallId) {
        if let Some(f) = self.resync_gone() {
            return self.fail(id, f);
        }
        self.set_step(id, step::LOG);
        self.log(Some(id), LogJob::Clear);
    }

    fn resync_gone(&self) -> Option<Failure> {
        // Rule 8: a checkpoint's sync after a fault proves nothing; what it
        // would clear must stay named for the fault note's settle.
        if let Some(f) = &self.faulted {
            return Some(Failure::Faulted(f.clone()));
        }
        if let Some(l) = &self.lost {
            return Some(Failure::MirrorLost(l.clone()));
        }
        if self.mode != Mode::Streaming || !self.resync.active {
            return Some(Failure::MirrorLost("the pair left streaming during the resync".into()));
        }
        None
    }

    /// The clear for a checkpoint or finish, built when its turn comes: a
    /// loss either came before (nothing is cleared) or comes after (its
    /// window is recorded after this).
    pub(super) fn build_clear(&mut self, id: CallId) -> Option<LogOp> {
        if let Some(f) = self.resync_gone() {
            self.fail(id, f);
            return None;
        }
        let (flushed, keep_extents_only) = match self.calls.get(&id).map(|c| &c.op) {
            Some(Op::Resync { step: ResyncStep::Checkpoint { flushed, .. }, .. }) => (flushed.clone(), false),
            Some(Op::Resync { step: ResyncStep::Finish { flushed, .. }, .. }) => (flushed.clone(), true),
            _ => return None,
        };
        let flushes: BTreeMap<FsPath, u64> =
            flushed.iter().filter_map(|f| self.resync.flushes.remove(f).map(|s| (f.clone(), s))).collect();
        let (mut keep_extents, mut keep_paths) = self.activity.settle(&flushes);
        if self.planted(PlantedBug::ResyncClearDropsActivity) {
            keep_extents.clear();
            keep_paths.clear();
        }
        if keep_extents_only {
            return Some(LogOp::ClearKeeping { extents: keep_extents, paths: keep_paths });
        }
        let Some(Op::Resync { step: ResyncStep::Checkpoint { blocks, paths, as_of, .. }, .. }) =
            self.calls.get(&id).map(|c| &c.op)
        else {
            return None;
        };
        Some(LogOp::ClearEntries {
            blocks: blocks.clone(),
            paths: paths.clone(),
            keep_extents,
            keep_paths,
            as_of: *as_of,
        })
    }

    pub(super) fn resync_logged(&mut self, id: CallId, result: Result<bool, String>) {
        let cleared = match result {
            Ok(c) => c,
            Err(e) => {
                let f = self.tracking_failed(&e);
                return self.fail(id, f);
            }
        };
        let Some(op) = self.calls.get(&id).map(|c| c.op.clone()) else { return };
        match op {
            Op::Resync { step: ResyncStep::Checkpoint { synced, flushed, .. }, .. } => {
                self.prune_window(synced, &flushed);
                self.complete(id, Ok(Reply::Done))
            }
            Op::Resync { step: ResyncStep::Finish { synced, flushed }, .. } => {
                if !cleared {
                    tracing::info!("resync: renames during the pass owe the mirror another one");
                    return self.complete(id, Ok(Reply::Cleared(false)));
                }
                if let Some(seq) = synced {
                    self.prune_window(seq, &flushed);
                }
                self.resync.active = false;
                self.check_hold();
                tracing::warn!("resync complete: the change-log is drained, the pair is synchronized");
                // What the table kept and is settled goes once durable here too.
                self.set_step(id, calls_retire());
                if !self.retire_all(Some(id)) {
                    self.complete(id, Ok(Reply::Cleared(true)));
                }
            }
            _ => {}
        }
    }

    /// What the resync shipped up to `seq` is durable on the mirror (its
    /// files were flushed; directory entries and lengths go with every
    /// sync): no later loss needs to record it again.
    fn prune_window(&mut self, seq: u64, flushed: &BTreeSet<FsPath>) {
        self.window.retain(|(s, c)| {
            *s > seq
                || match c {
                    Change::Touched { path, subtree } => !(*subtree || flushed.contains(path)),
                    Change::Blocks { path, .. } => !flushed.contains(path),
                }
        });
    }

    // ---- reads that become frames ---------------------------------------

    pub(super) fn copy_read(&mut self, id: CallId, result: Result<Option<(u64, Bytes, u64)>, String>) {
        let (offset, data, hash) = match result {
            Err(_) => return self.fail(id, Failure::Local),
            Ok(None) => return self.complete(id, Ok(Reply::Bytes(0))),
            Ok(Some(x)) => x,
        };
        let Some(Op::Resync { step: ResyncStep::Copy { file, first, .. }, .. }) =
            self.calls.get(&id).map(|c| c.op.clone())
        else {
            return;
        };
        let bs = self.cfg.block_size as u64;
        let last = first + (data.len() as u64).div_ceil(bs) - 1;
        let mut h = Header::new(Kind::WriteAt);
        h.offset = offset;
        h.body_hash = hash;
        let payload = data.len();
        let held = Held {
            file: Some(file.clone()),
            header: h,
            body: data,
            payload,
            changes: vec![Change::Blocks { path: file, first, last }],
        };
        if let Some(c) = self.calls.get_mut(&id) {
            c.held = Some(held);
        }
        if self.planted(PlantedBug::ResyncCopyWithoutLock) {
            // The defect: the file is let go between the read and the queueing.
            self.release_claims(id);
        }
        self.resync_cover(id)
    }

    /// A copy is covered in the activity log before it ships, like any write.
    pub(super) fn resync_cover(&mut self, id: CallId) {
        let Some((file, first, last)) = self.calls.get(&id).and_then(|c| match &c.held {
            Some(Held { changes, .. }) => match changes.first() {
                Some(Change::Blocks { path, first, last }) => Some((path.clone(), *first, *last)),
                _ => None,
            },
            None => None,
        }) else {
            return self.ship_held(id);
        };
        if !self.cfg.tracking || self.mode != Mode::Streaming || self.planted(PlantedBug::SkipActivityCover) {
            return self.ship_held(id);
        }
        let rewriting = self.rewriting();
        let mut need = self.activity.blocks_need(&file, first, last, rewriting);
        // A new record: take the blocks the resync copies next with it (up
        // to COVER_AHEAD_EXTENTS), so a long run costs one change-log sync
        // per that many extents rather than one per extent. Covering more
        // than is shipped is safe: after a crash it only counts as changed.
        let ahead = match self.calls.get(&id).map(|c| &c.op) {
            Some(Op::Resync { step: ResyncStep::Copy { ahead, .. }, .. }) => *ahead,
            _ => 0,
        };
        let mut last = last;
        if need == activity::CoverNeed::Record && ahead > 0 {
            let cap = (first / EXTENT_BLOCKS + COVER_AHEAD_EXTENTS) * EXTENT_BLOCKS - 1;
            let reach = last.saturating_add(ahead).min(cap).max(last);
            if reach > last && self.activity.blocks_need(&file, first, reach, rewriting) == activity::CoverNeed::Record
            {
                last = reach;
                need = activity::CoverNeed::Record;
            }
        }
        match need {
            activity::CoverNeed::Wait => {
                self.set_stage(id, Stage::CoverWait);
                self.log_waiters.push(id);
            }
            activity::CoverNeed::Ready => {
                self.cover(id, Covered::Blocks(file, first, last));
                self.ship_held(id)
            }
            activity::CoverNeed::Record => {
                self.cover(id, Covered::Blocks(file.clone(), first, last));
                self.set_step(id, step::COVERING);
                if let Some(c) = self.calls.get_mut(&id) {
                    c.records_out = 1;
                }
                self.emit(Command::CoverBlocks { call: id, file, first, last });
            }
        }
    }

    pub(super) fn ship_copy(&mut self, id: CallId) {
        if let Some(Some((f, a, b))) = self.calls.get(&id).map(|c| match &c.covered {
            Some(Covered::Blocks(f, a, b)) => Some((f.clone(), *a, *b)),
            _ => None,
        }) {
            self.activity.blocks_recorded(&f, a, b);
        }
        self.ship_held(id)
    }

    pub(super) fn resync_recorded(&mut self, id: CallId, _st: u8, _op: Op) {
        self.fail(id, Failure::Rejected("internal: unexpected change-log record".into()))
    }

    pub(super) fn reconcile_read(&mut self, id: CallId, result: Result<(Header, Bytes), String>) {
        let (h, body) = match result {
            Ok(x) => x,
            Err(_) => return self.fail(id, Failure::Local),
        };
        let Some(Op::Resync { step: ResyncStep::Reconcile { fs, path, .. }, .. }) =
            self.calls.get(&id).map(|c| c.op.clone())
        else {
            return;
        };
        let changes = path.map(|p| Change::Touched { path: FsPath::new(fs, p), subtree: true }).into_iter().collect();
        let mut h = h;
        h.filespace = fs;
        if let Some(c) = self.calls.get_mut(&id) {
            c.held = Some(Held { file: None, header: h, body, payload: 0, changes });
        }
        self.ship_held(id)
    }

    pub(super) fn resync_flush_opened(&mut self, id: CallId, file: &FsPath, present: bool) {
        if !present {
            return self.complete(id, Ok(Reply::MaybeSeq(None)));
        }
        let held = Held {
            file: Some(file.clone()),
            header: Header::new(Kind::Flush),
            body: Bytes::new(),
            payload: 0,
            changes: Vec::new(),
        };
        if let Some(c) = self.calls.get_mut(&id) {
            c.held = Some(held);
        }
        self.ship_held(id)
    }

    pub(super) fn hashed_local(&mut self, id: CallId, result: Result<Option<(u64, u32)>, String>) {
        let (first, count) = match result {
            Err(_) => return self.fail(id, Failure::Local),
            Ok(None) => return self.complete(id, Ok(Reply::MaybeSeq(None))),
            Ok(Some(x)) => x,
        };
        if count == 0 || count > crate::protocol::MAX_HASH_BLOCKS {
            let why = format!("{count} blocks do not fit one hash request");
            return self.fail(id, Failure::InvalidArgument(why));
        }
        let Some(Op::QueueHashes { file, .. }) = self.calls.get(&id).map(|c| c.op.clone()) else { return };
        let mut h = Header::new(Kind::HashRequest);
        h.offset = first;
        h.aux = count;
        if let Some(c) = self.calls.get_mut(&id) {
            c.held = Some(Held { file: Some(file), header: h, body: Bytes::new(), payload: 0, changes: Vec::new() });
        }
        self.ship_held(id)
    }

    pub(super) fn listed_local(&mut self, id: CallId, result: Result<(), String>) {
        if result.is_err() {
            return self.fail(id, Failure::Local);
        }
        let Some(Op::QueueListing { fs, dir, .. }) = self.calls.get(&id).map(|c| c.op.clone()) else { return };
        let mut h = Header::new(Kind::ListRequest);
        h.filespace = fs;
        let body = Bytes::copy_from_slice(dir.as_ref().map(|d| d.as_str().as_bytes()).unwrap_or_default());
        if let Some(c) = self.calls.get_mut(&id) {
            c.held = Some(Held { file: None, header: h, body, payload: 0, changes: Vec::new() });
        }
        self.ship_held(id)
    }

    /// Ship the frame a step built (or wait for room, holding its claims).
    pub(super) fn ship_held(&mut self, id: CallId) {
        let Some(held) = self.calls.get_mut(&id).and_then(|c| c.held.take()) else { return };
        let keep = held.clone();
        match self.ship_op(held.file.as_ref(), held.header, held.body, held.payload, held.changes) {
            Shipped::Seq(seq) => self.after_held(id, seq, &keep),
            Shipped::NoRoom => {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.held = Some(keep);
                }
                self.wait_room(id)
            }
            Shipped::Failed(f) => self.fail(id, f),
        }
    }

    fn after_held(&mut self, id: CallId, seq: u64, held: &Held) {
        let Some(op) = self.calls.get(&id).map(|c| c.op.clone()) else { return };
        if let Some(c) = self.calls.get_mut(&id) {
            c.seq = seq;
        }
        self.end_cover(id);
        match op {
            Op::Resync { step: ResyncStep::Copy { .. }, .. } => {
                // Queued only: the resync sends copies in batches.
                self.complete(id, Ok(Reply::Bytes(held.payload as u64)))
            }
            Op::Resync { step: ResyncStep::Flush { file }, .. } => {
                self.resync.flushes.insert(file, seq);
                self.release_claims(id);
                self.kick();
                self.complete(id, Ok(Reply::MaybeSeq(Some(seq))))
            }
            Op::QueueHashes { .. } => {
                self.replies.hashes_wanted.insert(seq, held.header.aux);
                self.complete(id, Ok(Reply::Seq(seq)))
            }
            Op::QueueListing { .. } => {
                self.replies.lists_wanted.insert(seq);
                self.complete(id, Ok(Reply::Seq(seq)))
            }
            _ => self.complete(id, Ok(Reply::Done)),
        }
    }

    /// Room again for a step waiting to ship.
    pub(super) fn resync_room(&mut self, id: CallId) {
        self.ship_held(id)
    }

    // ---- answers from the mirror ------------------------------------------

    /// A Hashes frame: accepted only as the answer to a request we made,
    /// with exactly the hashes asked for.
    pub(super) fn hashes_arrived(&mut self, seq: u64, body: &[u8]) -> Result<(), String> {
        let want = self.replies.hashes_wanted.remove(&seq).ok_or_else(|| format!("unasked-for hashes for #{seq}"))?;
        if body.len() != want as usize * 8 {
            return Err(format!("hashes for #{seq}: {} bytes for {want} blocks", body.len()));
        }
        let hashes = body
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect();
        self.answer(seq, Reply::Hashes(hashes));
        Ok(())
    }

    /// A Listing frame: accepted only as the answer to a list request we
    /// made, and only well formed.
    pub(super) fn listing_arrived(&mut self, seq: u64, body: &[u8]) -> Result<(), String> {
        if !self.replies.lists_wanted.remove(&seq) {
            return Err(format!("unasked-for listing for #{seq}"));
        }
        let listing = ListingBody::decode(body).map_err(|e| format!("listing for #{seq}: {e}"))?;
        self.answer(seq, Reply::Listing(listing));
        Ok(())
    }

    fn answer(&mut self, seq: u64, reply: Reply) {
        match self.replies.waiting.remove(&seq) {
            Some(id) => self.complete(id, Ok(reply)),
            None => {
                self.replies.answers.insert(seq, reply);
            }
        }
    }

    pub(super) fn await_reply(&mut self, id: CallId, seq: u64) {
        if let Some(r) = self.replies.answers.remove(&seq) {
            return self.complete(id, Ok(r));
        }
        if !self.link_up {
            let why = self.lost.clone().unwrap_or_else(|| "no mirror".into());
            return self.complete(id, Err(Failure::MirrorLost(why)));
        }
        if !self.replies.hashes_wanted.contains_key(&seq) && !self.replies.lists_wanted.contains(&seq) {
            return self.complete(id, Err(Failure::Rejected(format!("no request #{seq} is waiting for an answer"))));
        }
        self.set_stage(id, Stage::Reply);
        self.replies.waiting.insert(seq, id);
    }
}

/// The step a finished resync's call is in while what it settled retires.
fn calls_retire() -> u8 {
    step::RETIRE
}
