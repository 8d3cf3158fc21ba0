//! How each host call goes: admitted when its claims are free, then its
//! steps in order. While streaming a change is covered in the activity log,
//! then shipped, and its local I/O overlaps the network (data writes), or
//! made locally first and shipped after (namespace changes, so a failing
//! local change ships nothing). In change tracking it is recorded in the
//! change-log before it is made. A call returns when its sync level is met.

use super::claims::{Claim, Target};
use super::link::Shipped;
use super::*;
use crate::protocol::{Kind, FLAG_DURABLE};

/// Steps of the calls that take more than one (see each flow).
pub(super) mod step {
    pub const START: u8 = 0;
    pub const OPENED: u8 = 1;
    pub const RECORDING: u8 = 2;
    pub const COVERING: u8 = 3;
    pub const RENAME_OWED: u8 = 4;
    pub const LOCAL: u8 = 5;
    /// Sync: waiting for, then running, the file's local fdatasync.
    pub const SYNC_FILE: u8 = 6;
    /// Sync: waiting for, then running, the changed directories' fsyncs.
    pub const SYNC_DIRS: u8 = 7;
    /// Waiting for the mirror's watermark.
    pub const MARK: u8 = 8;
    /// The change-log step (resync checkpoints and finish, shutdown).
    pub const LOG: u8 = 9;
    /// Shutdown: retiring what the mirror has durably.
    pub const RETIRE: u8 = 10;
}

/// What the gate says about a call now.
pub(super) enum Gate {
    Go,
    /// Wait for the arbiter's decision.
    Park,
    Fail(Failure),
}

fn parent_dir(p: &FsPath) -> (u16, Option<RelPath>) {
    (p.filespace, p.path.parent())
}

impl Engine {
    /// Whether `op` may proceed in the pair's state.
    pub(super) fn gate(&self, op: &Op) -> Gate {
        if self.closing && !matches!(op, Op::Shutdown | Op::AwaitReply { .. }) {
            return Gate::Fail(Failure::Closed("the stream is shutting down".into()));
        }
        if let Op::Shutdown = op {
            return Gate::Go;
        }
        if let Some(f) = &self.faulted {
            return Gate::Fail(Failure::Faulted(f.clone()));
        }
        if let Op::Attach = op {
            if !self.cfg.tracking || self.mode != Mode::ChangeTracking {
                return Gate::Fail(Failure::InvalidArgument(format!(
                    "only a primary in change tracking takes a mirror back (this one is {:?})",
                    self.mode
                )));
            }
        }
        let bound = match op {
            Op::Resync { bound, .. } | Op::QueueListing { bound, .. } | Op::QueueHashes { bound, .. } => *bound,
            _ => Bound::Free,
        };
        match bound {
            Bound::Resync(a) if !self.resync.active || a != self.resync.attachments => {
                return Gate::Fail(Failure::MirrorLost("the mirror was lost during the resync".into()));
            }
            Bound::Verify(a) => {
                if let Some(l) = &self.lost {
                    return Gate::Fail(Failure::MirrorLost(l.clone()));
                }
                if a != self.resync.attachments {
                    return Gate::Fail(Failure::MirrorLost(
                        "the mirror was lost and taken back during the verification".into(),
                    ));
                }
                if self.resync.active {
                    return Gate::Fail(Failure::Rejected(
                        "the mirror is being resynchronized: nothing to verify until it is done".into(),
                    ));
                }
            }
            _ => {}
        }
        if let Op::AwaitReply { .. } | Op::Send = op {
            return Gate::Go;
        }
        match &self.mode {
            Mode::Failed(why) => Gate::Fail(Failure::MirrorLost(match &self.lost {
                Some(l) => format!("{l}; {why}"),
                None => why.clone(),
            })),
            Mode::Deciding => Gate::Park,
            Mode::ChangeTracking => Gate::Go,
            Mode::Streaming => match &self.lost {
                Some(l) if !self.cfg.tracking => Gate::Fail(Failure::MirrorLost(l.clone())),
                _ => Gate::Go,
            },
        }
    }

    /// What `op` claims at its admission.
    pub(super) fn claims_of(&self, op: &Op) -> Vec<Claim> {
        use Target::*;
        let planted_flush = self.planted(PlantedBug::ResyncFlushWithWritesInFlight);
        let planted_redo = self.planted(PlantedBug::RedoWhileRenaming);
        let g = Claim::shared(Global);
        match op {
            Op::Create { file } | Op::SetLen { file, .. } | Op::Unlink { file } | Op::WriteAt { file, .. } => {
                vec![g, Claim::exclusive(Path(file.clone()))]
            }
            Op::WriteBlock { file, block, extend: false, .. } => {
                vec![g, Claim::shared(Path(file.clone())), Claim::exclusive(Block(file.clone(), *block))]
            }
            Op::WriteBlock { file, extend: true, .. } => vec![g, Claim::exclusive(Path(file.clone()))],
            Op::Sync { file, .. } => vec![g, Claim::shared(Path(file.clone()))],
            Op::Mkdir { dir } | Op::Rmdir { dir } => {
                vec![g, Claim::exclusive(Tree(dir.filespace, Some(dir.path.clone())))]
            }
            Op::Rename { from, to } => vec![
                g,
                Claim::shared(Renames),
                Claim::exclusive(Tree(from.filespace, Some(from.path.clone()))),
                Claim::exclusive(Tree(to.filespace, Some(to.path.clone()))),
            ],
            Op::SyncDir { .. } => vec![g],
            Op::Shutdown | Op::Attach => vec![Claim::exclusive(Global)],
            Op::Send | Op::WaitDurable | Op::AwaitReply { .. } => Vec::new(),
            Op::QueueListing { fs, dir, .. } => vec![g, Claim::shared(Tree(*fs, dir.clone()))],
            Op::QueueHashes { file, .. } => vec![g, Claim::exclusive(Path(file.clone()))],
            Op::Resync { step, .. } => match step {
                ResyncStep::Plan { .. } | ResyncStep::Walked | ResyncStep::Hold { .. } => Vec::new(),
                ResyncStep::Redo if planted_redo => vec![g],
                ResyncStep::Redo => vec![g, Claim::exclusive(Renames)],
                ResyncStep::Reconcile { fs, path, .. } => vec![g, Claim::exclusive(Tree(*fs, path.clone()))],
                ResyncStep::Copy { file, .. } => vec![g, Claim::exclusive(Path(file.clone()))],
                ResyncStep::Flush { file } if planted_flush => vec![g, Claim::shared(Path(file.clone()))],
                ResyncStep::Flush { file } => vec![g, Claim::exclusive(Path(file.clone()))],
                ResyncStep::Checkpoint { .. } | ResyncStep::Finish { .. } => Vec::new(),
            },
        }
    }

    /// Admit a new call (or one the decision released): the gate, then its claims.
    pub(super) fn admit(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        if matches!(c.op, Op::Rename { .. }) && self.renames_held() {
            // Before its claims: it holds nothing while it waits.
            self.set_stage(id, Stage::Held);
            self.resync.held.push(id);
            return;
        }
        match self.gate(&c.op) {
            Gate::Fail(f) => self.complete(id, Err(f)),
            Gate::Park => {
                self.park_for_decision(id);
            }
            Gate::Go => {
                let claims = self.claims_of(&c.op);
                self.set_stage(id, Stage::Claiming);
                if claims.is_empty() || self.claims.request(id, claims) {
                    self.claimed(id);
                }
            }
        }
    }

    /// Rule 3: no mutating call goes on until the arbiter has decided.
    pub(super) fn park_for_decision(&mut self, id: CallId) {
        tracing::debug!(call = id, "waiting for the arbiter's decision");
        self.set_stage(id, Stage::Deciding);
        self.decision_waiters.push(id);
    }

    pub(super) fn set_stage(&mut self, id: CallId, stage: Stage) {
        if let Some(c) = self.calls.get_mut(&id) {
            c.stage = stage;
        }
    }

    pub(super) fn set_step(&mut self, id: CallId, step: u8) {
        if let Some(c) = self.calls.get_mut(&id) {
            c.step = step;
            c.stage = Stage::Busy;
        }
    }

    pub(super) fn step_of(&self, id: CallId) -> Option<(u8, &Op)> {
        self.calls.get(&id).map(|c| (c.step, &c.op))
    }

    /// Claims granted: the call's next step.
    pub(super) fn claimed(&mut self, id: CallId) {
        let Some((step_now, op)) = self.step_of(id) else { return };
        if step_now == step::START {
            // The pair may have changed while the call waited for its claims.
            match self.gate(op) {
                Gate::Go => {}
                Gate::Park => {
                    self.release_claims(id);
                    self.park_for_decision(id);
                    return;
                }
                Gate::Fail(f) => return self.complete(id, Err(f)),
            }
        }
        let op = op.clone();
        match (&op, step_now) {
            (Op::Resync { .. }, st) if st != step::SYNC_DIRS => {
                let Op::Resync { step: s, .. } = op else { return };
                self.resync_claimed(id, s, st)
            }
            (_, step::SYNC_FILE) => self.sync_file(id),
            (_, step::SYNC_DIRS) => self.sync_dirs(id),
            (Op::WriteBlock { file, extend, .. }, step::START) => {
                self.set_step(id, step::OPENED);
                self.emit(Command::Open { call: id, file: file.clone(), want_len: *extend, absent_ok: false });
            }
            (Op::WriteAt { file, .. } | Op::SetLen { file, .. } | Op::Sync { file, .. }, step::START) => {
                self.set_step(id, step::OPENED);
                self.emit(Command::Open { call: id, file: file.clone(), want_len: false, absent_ok: false });
            }
            (Op::Create { .. } | Op::Unlink { .. } | Op::Mkdir { .. } | Op::Rmdir { .. } | Op::Rename { .. }, _) => {
                self.route_namespace(id)
            }
            (Op::SyncDir { fs }, step::START) => self.sync_dir_start(id, *fs),
            (Op::Send, _) => {
                self.kick();
                self.complete(id, Ok(Reply::Done));
            }
            (Op::WaitDurable, _) => {
                let last = self.stream.last_seq();
                if !self.link_up {
                    let why = self.lost.clone().unwrap_or_else(|| "no mirror".into());
                    return self.complete(id, Err(Failure::MirrorLost(why)));
                }
                self.kick();
                self.wait_mark(id, Mark::Durable, last);
            }
            (Op::AwaitReply { seq }, _) => self.await_reply(id, *seq),
            (Op::Shutdown, _) => self.shutdown_granted(id),
            (Op::Attach, _) => self.attach_granted(id),
            (Op::QueueListing { fs, dir, .. }, _) => {
                self.set_step(id, step::OPENED);
                self.emit(Command::ListLocal { call: id, fs: *fs, dir: dir.clone() });
            }
            (Op::QueueHashes { file, .. }, _) => {
                self.set_step(id, step::OPENED);
                self.emit(Command::HashLocal { call: id, file: file.clone() });
            }
            _ => {
                tracing::error!(call = id, step = step_now, "call in an unexpected step");
                self.complete(id, Err(Failure::Rejected("internal: call in an unexpected step".into())));
            }
        }
    }

    /// A file was opened for a call.
    pub(super) fn opened(&mut self, id: CallId, result: Result<Opened, String>) {
        let Some((_, op)) = self.step_of(id) else { return };
        let op = op.clone();
        let opened = match result {
            Ok(o) => o,
            Err(_) => return self.fail(id, Failure::Local),
        };
        match op {
            Op::WriteBlock { file, block, extend: true, .. } => {
                let n = opened.len.unwrap_or(0) / self.cfg.block_size as u64;
                if block != n {
                    let why = format!("extend of {file} at block {block}: the file has {n} blocks");
                    return self.fail(id, Failure::InvalidArgument(why));
                }
                self.route_data(id)
            }
            Op::WriteBlock { .. } | Op::WriteAt { .. } => self.route_data(id),
            Op::SetLen { .. } => self.route_namespace(id),
            Op::Sync { file, flush } => self.sync_opened(id, &file, flush),
            Op::Resync { step: ResyncStep::Flush { file }, .. } => self.resync_flush_opened(id, &file, opened.present),
            _ => self.fail(id, Failure::Rejected("internal: unexpected open".into())),
        }
    }

    /// The blocks a data write touches.
    pub(super) fn data_range(&self, op: &Op) -> Option<(FsPath, u64, u64)> {
        let bs = self.cfg.block_size as u64;
        match op {
            Op::WriteBlock { file, block, .. } => Some((file.clone(), *block, *block)),
            Op::WriteAt { file, offset, data, .. } => {
                let end = offset + (data.len().max(1) as u64) - 1;
                Some((file.clone(), offset / bs, end / bs))
            }
            _ => None,
        }
    }

    /// A data write, its file open: record (change tracking), or cover and ship.
    pub(super) fn route_data(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        let Some((file, first, last)) = self.data_range(&c.op) else { return };
        match self.mode.clone() {
            Mode::Deciding => {
                self.park_for_decision(id);
            }
            Mode::Failed(why) => self.fail(id, Failure::MirrorLost(why)),
            Mode::ChangeTracking => {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.tracked = true;
                }
                if self.planted(PlantedBug::SkipRecordBlock) {
                    return self.write_local(id);
                }
                if self.planted(PlantedBug::RecordAfterLocalWrite) {
                    // The defect: written first, recorded after (data_written).
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.late_record = Some(false);
                    }
                    return self.write_local(id);
                }
                self.set_step(id, step::RECORDING);
                let blocks = (first..=last).map(|b| (file.clone(), b)).collect();
                self.emit(Command::Record { call: id, blocks, touched: Vec::new() });
            }
            Mode::Streaming => {
                if !self.cfg.tracking || self.planted(PlantedBug::SkipActivityCover) {
                    return self.ship_data(id);
                }
                if self.calls.get(&id).is_some_and(|c| c.covered.is_some()) {
                    // Covered before a decision parked it.
                    return self.ship_data(id);
                }
                let need = self.activity.blocks_need(&file, first, last, self.rewriting());
                match need {
                    activity::CoverNeed::Wait => {
                        self.set_stage(id, Stage::CoverWait);
                        self.log_waiters.push(id);
                    }
                    activity::CoverNeed::Ready => {
                        self.cover(id, Covered::Blocks(file.clone(), first, last));
                        self.ship_data(id)
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
        }
    }

    /// Mark the call's entries in flight in the activity table.
    pub(super) fn cover(&mut self, id: CallId, what: Covered) {
        let new = match &what {
            Covered::Blocks(f, a, b) => self.activity.cover_blocks(f, *a, *b),
            Covered::Paths(ps) => ps.iter().map(|p| self.activity.cover_path(p)).sum(),
        };
        if let Some(c) = self.calls.get_mut(&id) {
            c.covered = Some(what);
        }
        if new > 0 {
            self.maybe_retire();
        }
    }

    /// The call's local step is over: its entries are no longer in flight.
    pub(super) fn end_cover(&mut self, id: CallId) {
        let Some(c) = self.calls.get_mut(&id) else { return };
        let seq = c.seq;
        match c.covered.take() {
            Some(Covered::Blocks(f, a, b)) => self.activity.end_blocks(&f, a, b, seq),
            Some(Covered::Paths(ps)) => {
                for p in ps {
                    self.activity.end_path(&p, seq);
                }
            }
            None => {}
        }
    }

    /// Ship a data write (its frame, to the queue) and start its local write.
    pub(super) fn ship_data(&mut self, id: CallId) {
        if self.mode == Mode::Deciding {
            // Lost while covering: the decision says whether it ships or is recorded.
            self.park_for_decision(id);
            return;
        }
        let Some(c) = self.calls.get(&id) else { return };
        let (file, h, body, payload, change) = match &c.op {
            Op::WriteBlock { file, block, data, hash, extend } => {
                let mut h = Header::new(if *extend { Kind::Extend } else { Kind::WriteBlock });
                h.offset = *block;
                h.body_hash = *hash;
                let ch = Change::Blocks { path: file.clone(), first: *block, last: *block };
                (file.clone(), h, data.clone(), data.len(), ch)
            }
            Op::WriteAt { file, offset, data, hash, flush } => {
                let mut h = Header::new(Kind::WriteAt);
                h.offset = *offset;
                h.body_hash = *hash;
                if *flush {
                    h.flags |= FLAG_DURABLE;
                }
                let bs = self.cfg.block_size as u64;
                let ch = Change::Blocks {
                    path: file.clone(),
                    first: offset / bs,
                    last: (offset + data.len() as u64 - 1) / bs,
                };
                (file.clone(), h, data.clone(), data.len(), ch)
            }
            _ => return,
        };
        match self.ship_op(Some(&file), h, body, payload, vec![change]) {
            Shipped::Seq(seq) => {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.seq = seq;
                }
                // The frame goes out before the local write: the two overlap.
                self.kick();
                self.write_local(id);
            }
            Shipped::NoRoom => self.wait_room(id),
            Shipped::Failed(f) => self.fail(id, f),
        }
    }

    pub(super) fn write_local(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        let step = match &c.op {
            Op::WriteBlock { file, block, data, .. } => {
                LocalStep::Write { file: file.clone(), offset: block * self.cfg.block_size as u64, data: data.clone() }
            }
            Op::WriteAt { file, offset, data, .. } => {
                LocalStep::Write { file: file.clone(), offset: *offset, data: data.clone() }
            }
            _ => return,
        };
        self.set_step(id, step::LOCAL);
        self.emit(Command::Local { call: id, step });
    }

    /// A namespace change: record (change tracking) or cover, then make it locally.
    pub(super) fn route_namespace(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        let touched: Vec<(FsPath, bool)> = match &c.op {
            Op::Create { file } | Op::SetLen { file, .. } | Op::Unlink { file } => vec![(file.clone(), false)],
            Op::Mkdir { dir } | Op::Rmdir { dir } => vec![(dir.clone(), true)],
            Op::Rename { from, to } => vec![(from.clone(), true), (to.clone(), true)],
            _ => return,
        };
        match self.mode.clone() {
            Mode::Deciding => {
                self.release_claims(id);
                self.set_step(id, step::START);
                self.park_for_decision(id);
            }
            Mode::Failed(why) => self.fail(id, Failure::MirrorLost(why)),
            Mode::ChangeTracking => {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.tracked = true;
                }
                self.set_step(id, step::RECORDING);
                self.emit(Command::Record { call: id, blocks: Vec::new(), touched });
            }
            Mode::Streaming if !self.cfg.tracking || self.planted(PlantedBug::SkipActivityCover) => {
                self.local_namespace(id)
            }
            Mode::Streaming => {
                let rewriting = self.rewriting();
                if touched.iter().any(|(p, _)| self.activity.path_need(p, rewriting) == activity::CoverNeed::Wait) {
                    self.set_stage(id, Stage::CoverWait);
                    self.log_waiters.push(id);
                    return;
                }
                self.cover(id, Covered::Paths(touched.iter().map(|(p, _)| p.clone()).collect()));
                self.set_step(id, step::COVERING);
                if let Some(c) = self.calls.get_mut(&id) {
                    c.records_out = touched.len() as u8;
                }
                for (path, subtree) in touched {
                    self.emit(Command::CoverPath { call: id, path, subtree });
                }
            }
        }
    }

    /// A change-log record for a call is durable (or failed).
    pub(super) fn recorded(&mut self, id: CallId, result: Result<(), String>) {
        let Some((st, op)) = self.step_of(id) else { return };
        let op = op.clone();
        if let Err(e) = result {
            let f = self.tracking_failed(&e);
            return self.fail(id, f);
        }
        match st {
            step::RECORDING if self.calls.get(&id).is_some_and(|c| c.late_record == Some(true)) => self.written(id),
            step::RECORDING => match op {
                Op::WriteBlock { .. } | Op::WriteAt { .. } => self.write_local(id),
                _ => self.local_namespace(id),
            },
            step::COVERING => {
                let out = self.calls.get_mut(&id).map(|c| {
                    c.records_out = c.records_out.saturating_sub(1);
                    c.records_out
                });
                if out != Some(0) {
                    return;
                }
                match &op {
                    Op::WriteBlock { .. } | Op::WriteAt { .. } => {
                        if let Some((f, a, b)) = self.data_range(&op) {
                            self.activity.blocks_recorded(&f, a, b);
                        }
                        self.ship_data(id)
                    }
                    Op::Resync { step: ResyncStep::Copy { .. }, .. } => self.ship_copy(id),
                    _ => {
                        if let Some(Covered::Paths(ps)) = self.calls.get(&id).and_then(|c| c.covered.clone()) {
                            for p in &ps {
                                self.activity.path_recorded(p);
                            }
                        }
                        self.local_namespace(id)
                    }
                }
            }
            step::RENAME_OWED => self.ship_namespace(id),
            _ => self.resync_recorded(id, st, op),
        }
    }

    pub(super) fn local_namespace(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        let step = match &c.op {
            Op::Create { file } => LocalStep::Create { file: file.clone() },
            Op::SetLen { file, len } => LocalStep::SetLen { file: file.clone(), len: *len },
            Op::Unlink { file } => LocalStep::Unlink { file: file.clone() },
            Op::Mkdir { dir } => LocalStep::Mkdir { dir: dir.clone() },
            Op::Rmdir { dir } => LocalStep::Rmdir { dir: dir.clone() },
            Op::Rename { from, to } => LocalStep::Rename { from: from.clone(), to: to.clone() },
            _ => return,
        };
        self.set_step(id, step::LOCAL);
        self.emit(Command::Local { call: id, step });
    }

    /// A local step is over.
    pub(super) fn local_done(&mut self, id: CallId, result: Result<(), String>) {
        let Some((st, op)) = self.step_of(id) else { return };
        let op = op.clone();
        match (st, &op) {
            (step::LOCAL, Op::WriteBlock { file, block, data, .. }) => {
                let offset = block * self.cfg.block_size as u64;
                self.data_written(
                    id,
                    result.map_err(|e| {
                        format!("local write of {} bytes of {file} at offset {offset} failed: {e}", data.len())
                    }),
                )
            }
            (step::LOCAL, Op::WriteAt { file, offset, data, .. }) => self.data_written(
                id,
                result.map_err(|e| {
                    format!("local write of {} bytes of {file} at offset {offset} failed: {e}", data.len())
                }),
            ),
            (step::LOCAL, Op::SetLen { file, .. }) if result.is_err() => {
                let why = format!("local truncate of {file} failed: {}", result.err().unwrap_or_default());
                let f = self.fault(why);
                self.fail(id, f)
            }
            (step::LOCAL, _) if result.is_err() => {
                // A namespace error (not found, exists...): nothing was changed
                // or shipped; the caller gets the driver's own error.
                self.fail(id, Failure::Local)
            }
            (step::LOCAL, _) => self.namespace_done(id),
            (step::SYNC_FILE, _) => self.sync_file_done(id, result),
            (step::SYNC_DIRS, _) => self.sync_dirs_done(id, result),
            _ => self.resync_local_done(id, st, op, result),
        }
    }

    pub(super) fn data_written(&mut self, id: CallId, result: Result<(), String>) {
        self.end_cover(id);
        self.release_claims(id);
        if let Err(why) = result {
            let f = self.fault(why);
            return self.complete(id, Err(f));
        }
        let late = self.calls.get_mut(&id).filter(|c| c.late_record == Some(false)).map(|c| {
            c.late_record = Some(true);
            c.op.clone()
        });
        if let Some(op) = late {
            if let Some((file, first, last)) = self.data_range(&op) {
                self.set_step(id, step::RECORDING);
                let blocks = (first..=last).map(|b| (file.clone(), b)).collect();
                return self.emit(Command::Record { call: id, blocks, touched: Vec::new() });
            }
        }
        self.written(id)
    }

    /// A data write is made here (and recorded, in change tracking): its
    /// flush, if it carries one, or wait for its sync level.
    fn written(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        if let Op::WriteAt { file, flush: true, .. } = &c.op {
            // The flush it carries: this side's fdatasync, then the
            // changed directories, then the mirror (`sync.rs`).
            let file = file.clone();
            return self.claim_file_sync(id, file);
        }
        if c.tracked || c.seq == 0 || self.planted(PlantedBug::AckWithoutMirror) {
            return self.complete(id, Ok(Reply::Done));
        }
        let seq = c.seq;
        if let Some(lag) = self.queued_lag(c.wait_for) {
            return self.wait_mark(id, Mark::Applied, seq.saturating_sub(lag));
        }
        match self.cfg.level {
            SyncLevel::Applied => self.wait_mark(id, Mark::Applied, seq),
            SyncLevel::Durable => self.wait_mark(id, Mark::Synced, seq),
            SyncLevel::Async { window } => self.wait_mark(id, Mark::Applied, seq.saturating_sub(window)),
        }
    }

    /// Note that the directories holding these paths changed (synced by the next sync).
    pub(super) fn dirty(&mut self, paths: &[&FsPath]) {
        for p in paths {
            self.dirty_dirs.mark(parent_dir(p));
        }
    }

    /// A namespace change made locally: ship it (streaming) and wait, or
    /// done (change tracking). Its claims are held until it is queued, so
    /// no other change of the same paths comes between.
    pub(super) fn namespace_done(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        let op = c.op.clone();
        let tracked = c.tracked;
        match &op {
            Op::Rename { from, to } => {
                self.rebase_dirty(from, to);
                self.activity.rebase(from, to);
                self.dirty(&[from, to])
            }
            Op::Create { file } | Op::Unlink { file } => self.dirty(&[file]),
            Op::Mkdir { dir } | Op::Rmdir { dir } => self.dirty(&[dir]),
            _ => {}
        }
        if tracked {
            self.end_cover(id);
            self.release_claims(id);
            return self.after_namespace(id);
        }
        if let Op::Rename { from, to } = op {
            if self.resync.active && !self.planted(PlantedBug::ResyncRenameWithoutAnotherPass) {
                // Made here, and next on the mirror: the mirror's stale copy
                // of what the resync still owes under `from` moves to `to`,
                // and so must what the change-log owes (only now: a rename
                // refused here moves nothing).
                self.set_step(id, step::RENAME_OWED);
                let all = self.resync.full;
                return self.emit(Command::RenameOwed { call: id, from, to, all });
            }
        }
        self.ship_namespace(id)
    }

    /// Directories dirty under a renamed one are dirty under its new name.
    pub(super) fn rebase_dirty(&mut self, from: &FsPath, to: &FsPath) {
        self.dirty_dirs.rebase(from, to);
    }

    /// After a namespace change is queued (or recorded): past the dirty
    /// directories' limit the call syncs them itself (bounded memory),
    /// then waits for the mirror.
    pub(super) fn after_namespace(&mut self, id: CallId) {
        if self.dirty_dirs.len() > MAX_DIRTY_DIRS {
            self.set_step(id, step::SYNC_DIRS);
            return self.request_dir_sync(id);
        }
        self.synced_here(id)
    }

    pub(super) fn ship_namespace(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        let op = c.op.clone();
        let touched = |p: &FsPath, subtree| Change::Touched { path: p.clone(), subtree };
        let seq = match &op {
            Op::Create { file } => {
                self.ship_op(Some(file), Header::new(Kind::Create), Bytes::new(), 0, vec![touched(file, false)])
            }
            Op::SetLen { file, len } => {
                let mut h = Header::new(Kind::Truncate);
                h.offset = *len;
                self.ship_op(Some(file), h, Bytes::new(), 0, vec![touched(file, false)])
            }
            Op::Unlink { file } => {
                let s =
                    self.ship_op(Some(file), Header::new(Kind::Unlink), Bytes::new(), 0, vec![touched(file, false)]);
                if let Shipped::Seq(_) = s {
                    self.stream.unbind(file);
                }
                s
            }
            Op::Mkdir { dir } | Op::Rmdir { dir } => {
                let mut h = Header::new(if matches!(op, Op::Mkdir { .. }) { Kind::Mkdir } else { Kind::Rmdir });
                h.filespace = dir.filespace;
                let body = Bytes::copy_from_slice(dir.path.as_str().as_bytes());
                self.ship_op(None, h, body, 0, vec![touched(dir, true)])
            }
            Op::Rename { from, to } => {
                let mut h = Header::new(Kind::Rename);
                h.filespace = from.filespace;
                h.aux = from.path.as_str().len() as u32;
                let mut body = Vec::with_capacity(from.path.as_str().len() + to.path.as_str().len());
                body.extend_from_slice(from.path.as_str().as_bytes());
                body.extend_from_slice(to.path.as_str().as_bytes());
                let s = self.ship_op(None, h, Bytes::from(body), 0, vec![touched(from, true), touched(to, true)]);
                if let Shipped::Seq(_) = s {
                    self.stream.rebind(from, to);
                }
                s
            }
            _ => return,
        };
        let seq = match seq {
            Shipped::Seq(s) => s,
            Shipped::NoRoom => return self.wait_room(id),
            Shipped::Failed(f) => return self.fail(id, f),
        };
        if let Some(c) = self.calls.get_mut(&id) {
            c.seq = seq;
        }
        self.end_cover(id);
        self.release_claims(id);
        self.kick();
        self.after_namespace(id)
    }
}
