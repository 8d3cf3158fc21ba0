//! The stream to the mirror: frames queued and handed to whoever sends,
//! acknowledgements checked and waiters woken, heartbeats and silence,
//! losing the mirror and the decision that follows (rule 3), the
//! change-log's operations one at a time, and retiring activity entries.

use super::calls::step;
use super::*;
use crate::protocol::{body_hash, Frame, Kind, FLAG_CATCHING_UP, FLAG_DURABLE};

/// What shipping one operation came to.
pub(super) enum Shipped {
    Seq(u64),
    /// The queue is full: wait for room.
    NoRoom,
    Failed(Failure),
}

/// A change-log operation waiting for its turn; built when it starts, so
/// what it keeps is what the table holds at that moment.
#[derive(Debug)]
pub(super) enum LogJob {
    Ready(LogOp),
    /// A resync checkpoint or finish of this call: built from its step.
    Clear,
}

impl Engine {
    /// The strict level asks the mirror to make every operation durable;
    /// while a resync catches the mirror up, a live change may name what it
    /// does not have yet, and the flag lets it make that so.
    fn level_flags(&self) -> u8 {
        let level = if self.cfg.level == SyncLevel::Durable { FLAG_DURABLE } else { 0 };
        if self.resync.active && !self.planted(PlantedBug::ResyncWithoutCatchingUp) {
            level | FLAG_CATCHING_UP
        } else {
            level
        }
    }

    /// Room to queue another operation (backpressure). With the link down
    /// nothing is sent and everything goes to the window.
    pub(super) fn has_room(&self) -> bool {
        !self.link_up
            || (self.pending_bytes < self.cfg.max_pending_bytes
                && (!self.cfg.tracking || self.window.len() < MAX_WINDOW))
    }

    /// Assign a sequence number (binding `file` first if needed), keep what
    /// it changes in the window, and queue the frame. `h.body_hash` must
    /// describe `body` for data bodies (the caller hashed them outside the
    /// engine); other bodies are hashed here.
    pub(super) fn ship_op(
        &mut self,
        file: Option<&FsPath>,
        mut h: Header,
        body: Bytes,
        payload: usize,
        changes: Vec<Change>,
    ) -> Shipped {
        if !self.has_room() {
            return Shipped::NoRoom;
        }
        h.flags |= self.level_flags();
        h.body_len = body.len() as u32;
        if payload == 0 {
            h.body_hash = body_hash(&body);
        }
        if let Some(file) = file {
            h.filespace = file.filespace;
            match self.stream.bind(file) {
                Ok((id, bind)) => {
                    if let Some((mut bh, path)) = bind {
                        let path = Bytes::from(path);
                        bh.body_len = path.len() as u32;
                        bh.body_hash = body_hash(&path);
                        self.push_out(bh, path);
                    }
                    h.file_id = id;
                }
                Err(e) => return Shipped::Failed(Failure::InvalidArgument(e.to_string())),
            }
            self.figures.counters.operations += 1;
            self.figures.counters.payload_bytes += payload as u64;
        }
        let h = self.stream.operation(h);
        if self.cfg.tracking {
            // Kept until the mirror acknowledges it durable: if the mirror
            // is lost first, these go into the change-log.
            self.window.extend(changes.into_iter().map(|c| (h.seq, c)));
        }
        self.stream.on_sent(self.now);
        self.push_out(h, body);
        let f = &mut self.figures;
        f.bytes_at[(h.seq % LAG_RING as u64) as usize] = f.bytes_queued;
        Shipped::Seq(h.seq)
    }

    /// Queue a frame (with the link down it is dropped: the window has its change).
    pub(super) fn push_out(&mut self, h: Header, body: Bytes) {
        let n = HEADER_LEN + body.len();
        self.figures.bytes_queued += n as u64;
        if !self.link_up {
            return;
        }
        self.pending_bytes += n;
        self.pending.push(OutFrame { header: h.encode(), body, seq: h.seq });
    }

    /// Hand what is queued to a sender, unless one is sending already
    /// (that one takes it next): no sender thread, no hand-off.
    pub(super) fn kick(&mut self) {
        if !self.link_up || self.sending || self.pending.is_empty() {
            return;
        }
        self.sending = true;
        let frames = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.in_send = (frames.len() as u64, frames.iter().map(|f| f.seq).max().unwrap_or(0));
        self.emit(Command::Send { epoch: self.epoch, frames });
        self.room_freed();
    }

    pub(super) fn sent(&mut self, epoch: u64, result: Result<u64, String>) {
        if epoch != self.epoch {
            return;
        }
        self.sending = false;
        match result {
            Ok(bytes) => {
                let (frames, top) = self.in_send;
                let c = &mut self.figures.counters;
                c.frames_sent += frames;
                c.wire_bytes_sent += bytes;
                c.batches_sent += 1;
                self.figures.last_sent = self.figures.last_sent.max(top);
                self.kick();
            }
            Err(e) => self.lose(format!("send failed: {e}")),
        }
    }

    /// A frame from the mirror.
    pub(super) fn received(&mut self, epoch: u64, f: Frame) {
        if epoch != self.epoch || !self.link_up {
            return;
        }
        match f.header.kind {
            Kind::Ack => match Ack::from_body(&f.body) {
                Some(ack) => self.on_ack(ack),
                None => self.lose("malformed acknowledgement".into()),
            },
            Kind::Hashes => {
                if let Err(why) = self.hashes_arrived(f.header.seq, &f.body) {
                    self.lose(why);
                }
            }
            Kind::Listing => {
                if let Err(why) = self.listing_arrived(f.header.seq, &f.body) {
                    self.lose(why);
                }
            }
            Kind::Fault => {
                self.lose(format!("the mirror could not apply #{}: {}", f.header.seq, String::from_utf8_lossy(&f.body)))
            }
            // Every other kind goes from primary to mirror.
            other => self.lose(format!("the mirror sent a {} frame, which only a primary sends", other.name())),
        }
    }

    fn on_ack(&mut self, ack: Ack) {
        let a = match self.stream.on_ack(ack, self.now) {
            Ok(a) => a,
            Err(v) => return self.lose(format!("protocol violation: {v}")),
        };
        self.figures.last_ack_ms = Some(self.now);
        while self.window.front().is_some_and(|(s, _)| *s <= a.durable) {
            self.window.pop_front();
        }
        let calls = &self.calls;
        let (ready, rest): (Vec<CallId>, Vec<CallId>) = self
            .waiters
            .iter()
            .partition(|id| calls.get(id).and_then(|c| c.wait).is_none_or(|(mark, seq)| mark.of(&a) >= seq));
        self.waiters = rest;
        for id in ready {
            self.mark_reached(id);
        }
        self.room_freed();
        self.maybe_retire();
    }

    /// Time passed: a heartbeat when nothing was sent for a while, the
    /// mirror lost when nothing was heard for too long.
    pub(super) fn tick(&mut self) {
        self.check_hold();
        if !self.link_up {
            return;
        }
        // Frames a resync queued to send in batches go out at the latest
        // now: the stream counts them as sent, so no heartbeat would.
        self.kick();
        if self.shutdown_sent {
            if let TimerAction::MirrorSilent { silent_ms } = self.stream.on_tick(self.now) {
                self.lose(format!("no acknowledgement for {silent_ms} ms"));
            }
            return;
        }
        match self.stream.on_tick(self.now) {
            TimerAction::Nothing => {}
            TimerAction::SendHeartbeat => {
                let mut h = Header::new(Kind::Heartbeat);
                h.offset = self.stream.last_seq();
                self.push_out(h, Bytes::new());
                self.kick();
            }
            TimerAction::MirrorSilent { silent_ms } => self.lose(format!("no acknowledgement for {silent_ms} ms")),
        }
    }

    /// The stream ended. Without change tracking every call waiting for the
    /// mirror fails, and so does every later mutating call: the primary
    /// stops accepting changes rather than continue silently. With it, the
    /// arbiter decides (rule 3).
    pub(super) fn lose(&mut self, reason: String) {
        if !self.link_up {
            return;
        }
        self.link_up = false;
        self.pending.clear();
        self.pending_bytes = 0;
        self.emit(Command::Close);
        let orderly = self.closing;
        if orderly {
            tracing::info!(%reason, "stream closed");
        } else {
            tracing::warn!(%reason, "mirror lost");
        }
        self.lost = Some(reason.clone());
        for (_, id) in std::mem::take(&mut self.replies.waiting) {
            self.fail(id, Failure::MirrorLost(reason.clone()));
        }
        self.replies.hashes_wanted.clear();
        self.replies.lists_wanted.clear();
        // Steps of a resync or a verification, and a shutdown, end here.
        let (host, other): (Vec<CallId>, Vec<CallId>) = std::mem::take(&mut self.waiters).into_iter().partition(|id| {
            self.calls.get(id).is_some_and(|c| {
                !matches!(
                    c.op,
                    Op::Resync { .. }
                        | Op::WaitDurable
                        | Op::Shutdown
                        | Op::QueueHashes { .. }
                        | Op::QueueListing { .. }
                )
            })
        });
        self.waiters = host;
        for id in other {
            match self.calls.get(&id).map(|c| matches!(c.op, Op::Shutdown)) {
                Some(true) => self.shutdown_failed(id, reason.clone()),
                _ => self.fail(id, Failure::MirrorLost(reason.clone())),
            }
        }
        if orderly || !self.cfg.tracking {
            for id in std::mem::take(&mut self.waiters) {
                self.fail(id, Failure::MirrorLost(reason.clone()));
            }
            for id in std::mem::take(&mut self.room_waiters) {
                self.fail(id, Failure::MirrorLost(reason.clone()));
            }
            return;
        }
        if self.mode == Mode::Streaming {
            self.set_mode(Mode::Deciding);
            self.deciding = Some(Deciding::First);
            // Recorded before asking: a crash after the answer finds it.
            let (blocks, touched) = self.take_window();
            self.log(None, LogJob::Ready(LogOp::RecordWindow { blocks, touched }));
        }
        // Calls waiting for room ship into the window now (nothing is sent).
        self.room_freed();
    }

    /// Everything shipped and not yet durable on the mirror, as change-log records.
    pub(super) fn take_window(&mut self) -> Records {
        let mut blocks = Vec::new();
        let mut touched = Vec::new();
        for (_, c) in std::mem::take(&mut self.window) {
            match c {
                Change::Blocks { path, first, last } => blocks.extend((first..=last).map(|b| (path.clone(), b))),
                Change::Touched { path, subtree } => touched.push((path, subtree)),
            }
        }
        tracing::info!(blocks = blocks.len(), paths = touched.len(), "recording the unacknowledged window");
        (blocks, touched)
    }

    pub(super) fn answered(&mut self, result: Result<Decision, String>) {
        if self.deciding != Some(Deciding::Asking) {
            return;
        }
        tracing::info!(answer = ?result, "the arbiter answered");
        self.deciding = Some(Deciding::Second(result));
        if self.planted(PlantedBug::DecisionDrainsCalls) && self.claims.holders() > 0 {
            // The defect: wait for every call to leave its claims, while
            // calls parked for this decision hold theirs.
            return;
        }
        // What was shipped since the first record goes in too, before the
        // answer applies (a demoted primary records as well: its unshipped
        // local writes are what must be overwritten when it returns).
        let (blocks, touched) = self.take_window();
        self.log(None, LogJob::Ready(LogOp::RecordWindow { blocks, touched }));
    }

    fn decided(&mut self, answer: Result<Decision, String>) {
        match answer {
            Ok(Decision::MirrorDown) => {
                tracing::warn!("mirror marked down: change tracking");
                // Activity entries may cover writes only in this host's page
                // cache, and a retire under way must not drop a path change
                // tracking records again: they stay until a resync clears them.
                self.log(None, LogJob::Ready(LogOp::PinDown));
            }
            Ok(Decision::Demoted) => {
                self.deciding = None;
                self.set_mode(Mode::Failed("demoted by the arbiter".into()));
                self.fail_parked();
            }
            Err(e) => {
                self.deciding = None;
                self.set_mode(Mode::Failed(e));
                // The window is in the change-log (recorded before this
                // answer applied): on the arbiter's word, it may go on alone.
                self.unheard = true;
                self.fail_parked();
            }
        }
    }

    /// The mirror is down: calls waiting for it return (their changes are
    /// recorded), parked calls go on in change tracking.
    fn tracking_now(&mut self) {
        self.deciding = None;
        self.set_mode(Mode::ChangeTracking);
        for id in std::mem::take(&mut self.waiters) {
            self.complete(id, Ok(Reply::Done));
        }
        for id in std::mem::take(&mut self.decision_waiters) {
            match self.calls.get(&id).map(|c| c.step) {
                Some(step::START) => self.admit(id),
                Some(_) => self.route_data(id),
                None => {}
            }
        }
        self.room_freed();
    }

    /// The pair failed: every parked or waiting call fails.
    pub(super) fn fail_parked(&mut self) {
        let why = match &self.mode {
            Mode::Failed(w) => match &self.lost {
                Some(l) => format!("{l}; {w}"),
                None => w.clone(),
            },
            _ => self.lost.clone().unwrap_or_else(|| "the pair failed".into()),
        };
        let parked: Vec<CallId> = std::mem::take(&mut self.waiters)
            .into_iter()
            .chain(std::mem::take(&mut self.decision_waiters))
            .chain(std::mem::take(&mut self.room_waiters))
            .chain(std::mem::take(&mut self.log_waiters))
            .collect();
        for id in parked {
            self.fail(id, Failure::MirrorLost(why.clone()));
        }
    }

    // ---- the change-log's operations, one at a time ---------------------

    pub(super) fn log(&mut self, call: Option<CallId>, job: LogJob) {
        if let Some(id) = call {
            self.set_stage(id, Stage::Log);
        }
        self.log_queue.push_back((call, job));
        if self.log_busy.is_none() {
            self.next_log();
        }
    }

    fn next_log(&mut self) {
        while let Some((call, job)) = self.log_queue.pop_front() {
            let op = match job {
                LogJob::Ready(op) => Some(op),
                LogJob::Clear => call.and_then(|id| self.build_clear(id)),
            };
            let Some(op) = op else { continue };
            self.log_busy = Some(op.rewrites());
            self.log_current = Some((call, log_kind(&op)));
            self.emit(Command::Log { call, op });
            return;
        }
    }

    /// Whether a change-log rewrite or clear is out: no new activity record may go in.
    pub(super) fn rewriting(&self) -> bool {
        self.log_busy == Some(true)
    }

    pub(super) fn logged(&mut self, result: Result<bool, String>) {
        let Some((call, kind)) = self.log_current.take() else { return };
        let rewrote = self.log_busy.take() == Some(true);
        match (kind, call) {
            (LogKind::RecordWindow, None) => self.window_recorded(result),
            (LogKind::RecordWindow, Some(id)) => self.shutdown_recorded(id, result),
            (LogKind::PinDown, _) => match result {
                Ok(_) => self.tracking_now(),
                Err(e) => {
                    self.deciding = None;
                    let _ = self.tracking_failed(&e);
                }
            },
            (LogKind::PinAttach, Some(id)) => self.attach_logged(id, result),
            (LogKind::Retire, _) => self.retire_written(result),
            (LogKind::ClearEntries | LogKind::ClearKeeping, Some(id)) => self.resync_logged(id, result),
            _ => {}
        }
        if self.log_busy.is_none() {
            self.next_log();
        }
        if rewrote {
            self.log_freed();
        }
    }

    fn window_recorded(&mut self, result: Result<bool, String>) {
        if let Err(e) = result {
            self.deciding = None;
            let _ = self.tracking_failed(&e);
            return;
        }
        match self.deciding.clone() {
            Some(Deciding::First) => {
                self.deciding = Some(Deciding::Asking);
                let reason = self.lost.clone().unwrap_or_default();
                self.emit(Command::AskArbiter { reason });
            }
            Some(Deciding::Second(answer)) => {
                if self.window.is_empty() {
                    self.decided(answer);
                } else {
                    // Shipped while the last record was written: record it too.
                    let (blocks, touched) = self.take_window();
                    self.log(None, LogJob::Ready(LogOp::RecordWindow { blocks, touched }));
                }
            }
            _ => {}
        }
    }

    // ---- retiring activity entries --------------------------------------

    /// Past the limit, retire what the mirror has durably (not on a
    /// writer's path: the driver runs the syncs and the rewrite elsewhere).
    pub(super) fn maybe_retire(&mut self) {
        // Rule 8: after a fault no sync of this host proves anything (a
        // failed fsync's pages are gone and the next one succeeds): the
        // entries stay, and name what the fault note's settle rewrites.
        if !self.cfg.tracking
            || self.retiring != Retiring::Idle
            || self.mode != Mode::Streaming
            || self.faulted.is_some()
        {
            return;
        }
        if !self.activity.retire_due() {
            return;
        }
        let durable = self.stream.acked().durable;
        match self.activity.candidates(durable, self.cfg.activity_limit / 4) {
            None => self.activity.retire_later(),
            Some(picked) => self.start_retire(picked, None),
        }
    }

    /// Retire whatever can be retired now, whatever the limit (the mirror
    /// has everything: an orderly shutdown, a finished resync); `then`: a
    /// call to complete once done.
    pub(super) fn retire_all(&mut self, then: Option<CallId>) -> bool {
        if !self.cfg.tracking || self.retiring != Retiring::Idle || self.faulted.is_some() {
            return false;
        }
        let durable = self.stream.acked().durable;
        match self.activity.candidates(durable, 1) {
            Some(picked) => {
                self.start_retire(picked, then);
                true
            }
            None => false,
        }
    }

    fn start_retire(&mut self, picked: RetireSet, then: Option<CallId>) {
        if self.planted(PlantedBug::DropActivityWithoutLocalSync) {
            let sure = self.activity.still_idle(&picked);
            return self.write_retire(sure, then);
        }
        // This host's copies first: the mirror having a change durably says
        // nothing of this host's page cache.
        let (files, dirs) = (picked.files(), picked.path_list());
        self.retiring = Retiring::Syncing { picked, then_complete: then };
        self.emit(Command::RetireSync { files, dirs });
    }

    pub(super) fn retire_synced(&mut self, result: Result<(), String>) {
        let Retiring::Syncing { picked, then_complete } = std::mem::replace(&mut self.retiring, Retiring::Idle) else {
            return;
        };
        match result {
            // A fault since the sync was asked for (another call's failed
            // fsync of the same file): this success proves nothing.
            Ok(()) if self.faulted.is_some() => {
                self.activity.retire_later();
                if let Some(id) = then_complete {
                    self.retire_finished(id);
                }
            }
            Ok(()) => {
                let sure = self.activity.still_idle(&picked);
                self.write_retire(sure, then_complete);
            }
            Err(e) => {
                // Rule 8: the failed fsync may have let the pages go; no
                // later sync of these files may be trusted. Entries stay.
                if self.planted(PlantedBug::RetireSyncFailureForgiven) {
                    tracing::warn!(error = %e, "activity log: syncing before retiring failed; entries stay");
                } else {
                    self.fault(format!(
                        "local sync before retiring activity entries failed: {e}; nothing written to those files is durable"
                    ));
                }
                self.activity.retire_later();
                if let Some(id) = then_complete {
                    self.retire_finished(id);
                }
            }
        }
    }

    fn write_retire(&mut self, set: RetireSet, then: Option<CallId>) {
        if set.is_empty() {
            self.activity.retire_later();
            if let Some(id) = then {
                self.retire_finished(id);
            }
            return;
        }
        let (extents, paths) = set.as_records();
        self.retiring = Retiring::Writing { set, then_complete: then };
        self.log(None, LogJob::Ready(LogOp::Retire { extents, paths }));
    }

    fn retire_written(&mut self, result: Result<bool, String>) {
        let Retiring::Writing { set, then_complete } = std::mem::replace(&mut self.retiring, Retiring::Idle) else {
            return;
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "activity log: retiring failed; entries stay");
        }
        self.activity.retired(&set, result.is_ok());
        if let Some(id) = then_complete {
            self.retire_finished(id);
        }
    }

    /// The retire a call waited for is over (a failure only keeps entries, which is safe).
    fn retire_finished(&mut self, id: CallId) {
        let Some(c) = self.calls.get(&id) else { return };
        match &c.op {
            Op::Shutdown => {
                let last = self.stream.last_seq();
                self.complete(id, Ok(Reply::Seq(last)))
            }
            _ => self.complete(id, Ok(Reply::Cleared(true))),
        }
    }

    // ---- shutdown and taking a mirror back ------------------------------

    pub(super) fn shutdown_granted(&mut self, id: CallId) {
        let last = self.stream.last_seq();
        if self.mode != Mode::Streaming || !self.link_up {
            // No stream to end: calls past their checks have finished.
            self.lose("shut down".into());
            return self.complete(id, Ok(Reply::Seq(last)));
        }
        let mut h = Header::new(Kind::Shutdown);
        h.offset = last;
        self.push_out(h, Bytes::new());
        self.shutdown_sent = true;
        self.kick();
        self.release_claims(id);
        self.set_step(id, step::MARK);
        self.wait_mark(id, Mark::Durable, last);
    }

    /// The mirror has everything durably: nothing is in doubt after a restart.
    pub(super) fn shutdown_durable(&mut self, id: CallId) {
        self.lose("shut down".into());
        self.set_step(id, step::RETIRE);
        if !self.retire_all(Some(id)) {
            self.retire_finished(id);
        }
    }

    /// The mirror did not confirm everything: what it lacks must not be
    /// forgotten once this process is gone.
    pub(super) fn shutdown_failed(&mut self, id: CallId, why: String) {
        self.waiters.retain(|w| *w != id);
        self.lose("shut down".into());
        if !self.cfg.tracking {
            return self.complete(id, Err(Failure::MirrorLost(why)));
        }
        tracing::warn!(error = %why, "orderly shutdown unconfirmed: recording the window in the change-log");
        self.shutdown_error = Some(why);
        let (blocks, touched) = self.take_window();
        self.log(Some(id), LogJob::Ready(LogOp::RecordWindow { blocks, touched }));
    }

    fn shutdown_recorded(&mut self, id: CallId, result: Result<bool, String>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot record the window; the segment needs a full resync");
        }
        let why = self.shutdown_error.take().unwrap_or_else(|| "the mirror did not confirm".into());
        self.complete(id, Err(Failure::MirrorLost(why)));
    }

    /// A mirror taken back: a new stream from sequence number 1.
    pub(super) fn attach_granted(&mut self, id: CallId) {
        self.epoch += 1;
        self.shutdown_sent = false;
        self.stream = PrimaryStream::new(1, self.now, self.cfg.heartbeat_ms, self.cfg.ack_timeout_ms);
        // Queued after the loss and never sent: in the change-log already.
        self.pending.clear();
        self.pending_bytes = 0;
        self.sending = false;
        self.window.clear();
        let f = &mut self.figures;
        f.ops_base += f.last_sent.max(self.stream.last_seq());
        f.last_sent = 0;
        f.bytes_base = f.bytes_queued;
        f.last_ack_ms = None;
        self.lost = None;
        self.link_up = true;
        self.replies = Replies::default();
        self.resync.attachments += 1;
        self.resync.flushes.clear();
        self.resync.full = false;
        if self.planted(PlantedBug::RetireDropsTrackedPaths) {
            return self.attach_logged(id, Ok(true));
        }
        // The table's sequence numbers belong to the old stream, and what
        // it covered is owed to the resync: the paths change tracking
        // recorded are pinned, the table starts afresh.
        self.activity.restart();
        self.log(Some(id), LogJob::Ready(LogOp::PinAttach));
    }

    fn attach_logged(&mut self, id: CallId, result: Result<bool, String>) {
        if let Err(e) = result {
            let f = self.tracking_failed(&e);
            self.link_up = false;
            self.emit(Command::Close);
            return self.complete(id, Err(f));
        }
        self.resync.active = true;
        self.set_mode(Mode::Streaming);
        self.resync.active = true;
        tracing::warn!("mirror taken back: streaming, resync pending");
        self.complete(id, Ok(Reply::Done));
    }
}

/// Which change-log operation is out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LogKind {
    RecordWindow,
    PinDown,
    PinAttach,
    ClearEntries,
    ClearKeeping,
    Retire,
}

fn log_kind(op: &LogOp) -> LogKind {
    match op {
        LogOp::RecordWindow { .. } => LogKind::RecordWindow,
        LogOp::PinDown => LogKind::PinDown,
        LogOp::PinAttach => LogKind::PinAttach,
        LogOp::ClearEntries { .. } => LogKind::ClearEntries,
        LogOp::ClearKeeping { .. } => LogKind::ClearKeeping,
        LogOp::Retire { .. } => LogKind::Retire,
    }
}
