//! Syncs and waits: a file's sync or flush (its local fdatasync, then the
//! directories changed since the last one, then the mirror), a directory
//! sync, waiting for the mirror's watermarks and for room in the queue.

use super::calls::step;
use super::claims::{Claim, Target};
use super::link::Shipped;
use super::*;
use crate::protocol::Kind;

impl Engine {
    /// A sync's or a directory sync's frame, by mode: parked for the
    /// decision, failed, tracked (alone, durable means durable here) or
    /// shipped. Whether the call goes on to its local step.
    fn ship_sync_frame(&mut self, id: CallId, file: Option<&FsPath>, h: Header) -> bool {
        match self.mode.clone() {
            Mode::Deciding => {
                self.release_claims(id);
                self.set_step(id, step::START);
                self.park_for_decision(id);
                false
            }
            Mode::Failed(why) => {
                self.fail(id, Failure::MirrorLost(why));
                false
            }
            Mode::ChangeTracking => {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.tracked = true;
                }
                true
            }
            Mode::Streaming => match self.ship_op(file, h, Bytes::new(), 0, Vec::new()) {
                Shipped::Seq(seq) => {
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.seq = seq;
                    }
                    true
                }
                Shipped::NoRoom => {
                    self.wait_room(id);
                    false
                }
                Shipped::Failed(f) => {
                    self.fail(id, f);
                    false
                }
            },
        }
    }

    pub(super) fn sync_opened(&mut self, id: CallId, file: &FsPath, flush: bool) {
        if !self.ship_sync_frame(id, Some(file), Header::new(if flush { Kind::Flush } else { Kind::Sync })) {
            return;
        }
        self.release_claims(id);
        // The mirror syncs while this side does: the caller waits for the slower.
        self.kick();
        self.claim_file_sync(id, file.clone());
    }

    /// Take the file's sync claim (one local fdatasync of a file at a
    /// time), then run it: a sync's, or a write's that carries its flush.
    pub(super) fn claim_file_sync(&mut self, id: CallId, file: FsPath) {
        self.set_step(id, step::SYNC_FILE);
        self.set_stage(id, Stage::Claiming);
        if self.claims.request(id, vec![Claim::exclusive(Target::SyncOf(file))]) {
            self.sync_file(id);
        }
    }

    pub(super) fn sync_file(&mut self, id: CallId) {
        let file = match self.calls.get(&id).map(|c| &c.op) {
            Some(Op::Sync { file, .. } | Op::WriteAt { file, flush: true, .. }) => file.clone(),
            _ => return,
        };
        // Rule 8: a failure reported to one fdatasync of a file is seen
        // before another may succeed.
        if let Some(f) = self.faulted.clone() {
            return self.complete(id, Err(Failure::Faulted(f)));
        }
        self.set_step(id, step::SYNC_FILE);
        self.emit(Command::Local { call: id, step: LocalStep::SyncFiles { files: vec![file] } });
    }

    pub(super) fn sync_file_done(&mut self, id: CallId, result: Result<(), String>) {
        self.release_claims(id);
        if let Err(e) = result {
            let file = match self.calls.get(&id).map(|c| &c.op) {
                Some(Op::Sync { file, .. } | Op::WriteAt { file, flush: true, .. }) => file.to_string(),
                _ => String::new(),
            };
            let f = self.fault(format!("local fdatasync of {file} failed: {e}; nothing written to it is durable"));
            return self.complete(id, Err(f));
        }
        self.set_step(id, step::SYNC_DIRS);
        self.request_dir_sync(id)
    }

    pub(super) fn sync_dir_start(&mut self, id: CallId, fs: u16) {
        let mut h = Header::new(Kind::SyncDirs);
        h.filespace = fs;
        if !self.ship_sync_frame(id, None, h) {
            return;
        }
        self.kick();
        self.release_claims(id);
        self.set_step(id, step::SYNC_DIRS);
        self.request_dir_sync(id)
    }

    /// Sync the changed directories, one caller at a time, unless none changed.
    pub(super) fn request_dir_sync(&mut self, id: CallId) {
        if self.dirty_dirs.is_empty() || self.planted(PlantedBug::SyncWithoutDirectory) {
            return self.synced_here(id);
        }
        self.set_stage(id, Stage::Claiming);
        if self.claims.request(id, vec![Claim::exclusive(Target::DirSync)]) {
            self.sync_dirs(id);
        }
    }

    pub(super) fn sync_dirs(&mut self, id: CallId) {
        if let Some(f) = self.faulted.clone() {
            return self.complete(id, Err(Failure::Faulted(f)));
        }
        if self.dirty_dirs.is_empty() {
            // Another caller synced them meanwhile.
            self.release_target(id, &Target::DirSync);
            return self.synced_here(id);
        }
        let dirs = self.dirty_dirs.begin([]);
        self.set_step(id, step::SYNC_DIRS);
        self.emit(Command::Local { call: id, step: LocalStep::SyncDirs { dirs } });
    }

    pub(super) fn sync_dirs_done(&mut self, id: CallId, result: Result<(), String>) {
        // Settled before the claim goes: releasing it may start the next
        // caller's sync at once, which should not cover again what this one
        // made durable.
        self.dirty_dirs.end(result.is_ok());
        self.release_target(id, &Target::DirSync);
        if let Err(e) = result {
            let f = self.fault(format!("local fsync of a changed directory failed: {e}; its entries are not durable"));
            return self.fail(id, f);
        }
        self.synced_here(id)
    }

    /// This side is durable: wait for the mirror (if shipped).
    pub(super) fn synced_here(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        let (seq, tracked) = (c.seq, c.tracked);
        let is_sync = matches!(c.op, Op::Sync { .. } | Op::SyncDir { .. } | Op::WriteAt { flush: true, .. });
        // A queued change waits only for room in the window; a sync never
        // returns queued (rule 2: what it covers is durable on both).
        let lag = self.queued_lag(c.wait_for).filter(|_| !is_sync || self.planted(PlantedBug::SyncQueued));
        if let Some(lag) = lag.filter(|_| !tracked && seq != 0 && !matches!(c.op, Op::Resync { .. })) {
            return self.wait_mark(id, Mark::Applied, seq.saturating_sub(lag));
        }
        let mark = match &c.op {
            Op::Resync { .. } => return self.resync_synced_here(id),
            Op::Sync { .. } | Op::SyncDir { .. } | Op::WriteAt { flush: true, .. } => Mark::Synced,
            // File operations wait for their own application at every level:
            // they are rare and later writes depend on them.
            _ if self.cfg.level == SyncLevel::Durable => Mark::Synced,
            _ => Mark::Applied,
        };
        if tracked || seq == 0 {
            return self.complete(id, Ok(Reply::Done));
        }
        self.wait_mark(id, mark, seq)
    }

    /// How many sequence numbers a queued change may return ahead of the
    /// mirror's applied mark: [`QUEUED_WINDOW`], never looser than the
    /// pair's level (at `async:W` the smaller of the two; at `durable`
    /// none: the call waits as its level says). `None` for a call that
    /// waits at its level.
    pub(super) fn queued_lag(&self, wait_for: Wait) -> Option<u64> {
        match (wait_for, self.cfg.level) {
            (Wait::Level, _) | (Wait::Queued, SyncLevel::Durable) => None,
            (Wait::Queued, SyncLevel::Async { window }) => Some(window.min(QUEUED_WINDOW)),
            (Wait::Queued, SyncLevel::Applied) => Some(QUEUED_WINDOW),
        }
    }

    /// Park until watermark `mark` reaches `seq`. With the mirror gone, a
    /// host call's change is in the window: while deciding it waits for the
    /// decision, in change tracking it is recorded already and returns;
    /// anything else fails.
    pub(super) fn wait_mark(&mut self, id: CallId, mark: Mark, seq: u64) {
        if mark.of(&self.stream.acked()) >= seq {
            return self.mark_reached(id);
        }
        if !self.link_up {
            let host = self.calls.get(&id).is_some_and(|c| {
                !matches!(
                    c.op,
                    Op::Resync { .. }
                        | Op::WaitDurable
                        | Op::Shutdown
                        | Op::QueueHashes { .. }
                        | Op::QueueListing { .. }
                )
            });
            match (&self.mode, host) {
                (Mode::ChangeTracking, true) => return self.complete(id, Ok(Reply::Done)),
                (Mode::Deciding, true) => {}
                _ => {
                    let why = self.lost.clone().unwrap_or_else(|| "the mirror was lost".into());
                    return self.fail(id, Failure::MirrorLost(why));
                }
            }
        }
        if let Some(c) = self.calls.get_mut(&id) {
            c.wait = Some((mark, seq));
            c.stage = Stage::Acked;
        }
        self.waiters.push(id);
    }

    /// A call's watermark is reached.
    pub(super) fn mark_reached(&mut self, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else { return };
        c.wait = None;
        match c.op.clone() {
            Op::Shutdown => self.shutdown_durable(id),
            Op::Resync { step: ResyncStep::Checkpoint { .. } | ResyncStep::Finish { .. }, .. } => {
                self.resync_mark_reached(id)
            }
            _ => self.complete(id, Ok(Reply::Done)),
        }
    }

    /// Wait for room in the queue (backpressure), holding its claims.
    pub(super) fn wait_room(&mut self, id: CallId) {
        self.set_stage(id, Stage::Room);
        self.room_waiters.push_back(id);
        self.kick();
    }

    /// Room again: calls waiting for it ship, in order.
    pub(super) fn room_freed(&mut self) {
        while self.has_room() {
            let Some(id) = self.room_waiters.pop_front() else { break };
            let Some(c) = self.calls.get(&id) else { continue };
            match &c.op {
                Op::WriteBlock { .. } | Op::WriteAt { .. } => self.ship_data(id),
                Op::Sync { file, flush } => {
                    let (file, flush) = (file.clone(), *flush);
                    self.sync_opened(id, &file, flush)
                }
                Op::SyncDir { fs } => {
                    let fs = *fs;
                    self.sync_dir_start(id, fs)
                }
                Op::Resync { .. } | Op::QueueHashes { .. } | Op::QueueListing { .. } => self.resync_room(id),
                _ => self.ship_namespace(id),
            }
        }
    }

    /// A log rewrite ended: calls waiting to cover go on.
    pub(super) fn log_freed(&mut self) {
        for id in std::mem::take(&mut self.log_waiters) {
            let Some(c) = self.calls.get(&id) else { continue };
            match &c.op {
                Op::WriteBlock { .. } | Op::WriteAt { .. } => self.route_data(id),
                Op::Resync { .. } => self.resync_cover(id),
                _ => self.route_namespace(id),
            }
        }
    }

    /// A deadline passed: a call still waiting for the mirror gives up.
    pub(super) fn expired(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        let why = match (c.stage, &c.op, c.wait) {
            (Stage::Acked, _, Some((_, seq))) => format!("no acknowledgement of {seq} in time"),
            (Stage::Reply, Op::AwaitReply { seq }, _) => format!("no answer to request #{seq} in time"),
            _ => return,
        };
        self.waiters.retain(|w| *w != id);
        if let Op::AwaitReply { seq } = c.op {
            self.replies.waiting.remove(&seq);
            self.replies.hashes_wanted.remove(&seq);
            self.replies.lists_wanted.remove(&seq);
        }
        match c.op {
            Op::Shutdown => self.shutdown_failed(id, why),
            _ => self.fail(id, Failure::MirrorLost(why)),
        }
    }
}

/// A directory: its filespace and its path (`None`: the root).
pub(super) type Dir = (u16, Option<RelPath>);

/// Directories whose entries changed since they were last synced here,
/// each with the number of its latest change, and what the directory sync
/// out now (one at a time: the `DirSync` claim) covers. A sync clears only
/// the directories not changed again since it began: a change made while
/// the fsync ran (on another thread) may have come after it, and stays owed.
#[derive(Debug, Default)]
pub(super) struct DirtyDirs {
    dirs: BTreeMap<Dir, u64>,
    changes: u64,
    /// The sync out now: each directory with its number when it began.
    syncing: Vec<(Dir, u64)>,
}

impl DirtyDirs {
    /// `dir`'s entries changed.
    pub(super) fn mark(&mut self, dir: Dir) {
        self.changes += 1;
        self.dirs.insert(dir, self.changes);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.dirs.len()
    }

    /// A sync begins: the directories to fsync, every dirty one and
    /// `extra`, in order.
    pub(super) fn begin(&mut self, extra: impl IntoIterator<Item = Dir>) -> Vec<Dir> {
        self.syncing = self.dirs.iter().map(|(d, n)| (d.clone(), *n)).collect();
        let mut dirs: BTreeSet<Dir> = self.syncing.iter().map(|(d, _)| d.clone()).collect();
        dirs.extend(extra);
        dirs.into_iter().collect()
    }

    /// The sync that began is over; if it succeeded, each directory it
    /// covered is clean unless it changed (or moved) since.
    pub(super) fn end(&mut self, ok: bool) {
        for (d, n) in std::mem::take(&mut self.syncing) {
            if ok && self.dirs.get(&d) == Some(&n) {
                self.dirs.remove(&d);
            }
        }
    }

    /// Directories under a renamed one are dirty under its new name, as a
    /// new change: a sync that began before the move covered the old name,
    /// which it may not have found.
    pub(super) fn rebase(&mut self, from: &FsPath, to: &FsPath) {
        let moved: Vec<Dir> = self
            .dirs
            .keys()
            .filter(|(fs, d)| *fs == from.filespace && d.as_ref().is_some_and(|d| d.is_within(&from.path)))
            .cloned()
            .collect();
        for (fs, d) in moved {
            self.dirs.remove(&(fs, d.clone()));
            if let Some(nd) = d.and_then(|d| d.rebase(&from.path, &to.path)) {
                self.mark((fs, Some(nd)));
            }
        }
    }
}
