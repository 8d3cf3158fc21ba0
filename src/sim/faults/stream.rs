//! The stream between the two segments: shipping, the mirror's apply
//! and sync, acknowledgements, heartbeats, silence, losing the mirror.

use super::*;

impl FaultSim {
    pub(super) fn ship(&mut self, mut h: Header, body: Bytes, strict: bool) {
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return };
        if strict && h.kind.is_operation() && h.kind != Kind::Bind {
            h.flags |= FLAG_DURABLE;
        }
        // `Inner::level_flags`: while a resync catches the mirror up.
        if s.resync
            && h.kind.is_operation()
            && h.kind != Kind::Bind
            && self.cfg.bug != Some(PlantedBug::ResyncWithoutCatchingUp)
        {
            h.flags |= crate::protocol::FLAG_CATCHING_UP;
        }
        h.body_len = body.len() as u32;
        h.body_hash = body_hash(&body);
        let bytes = Frame { header: h, body }.to_vec();
        s.stream.on_sent(now);
        if !s.cut && s.mirror_on {
            s.to_mirror.send(&mut self.rng, now, &bytes);
        }
    }

    pub(super) fn stream(&mut self) -> Result<&mut Session, SimFailure> {
        let (seed, step) = (self.seed, self.step);
        self.session.as_mut().ok_or_else(|| SimFailure {
            seed,
            step,
            message: "a streaming primary has no stream".into(),
            faults: true,
        })
    }

    pub(super) fn ship_op(&mut self, p: &FsPath, mut h: Header, body: Bytes, strict: bool) -> Result<u64, SimFailure> {
        let bound = self.stream()?.stream.bind(p);
        let (id, bind) = bound.map_err(|e| self.fail(e.to_string()))?;
        if let Some((bh, path)) = bind {
            self.ship(bh, Bytes::from(path), false);
        }
        h.file_id = id;
        h.filespace = p.filespace;
        let h = self.stream()?.stream.operation(h);
        self.ship(h, body, strict);
        Ok(h.seq)
    }

    pub(super) fn ship_path_op(
        &mut self,
        kind: Kind,
        p: &FsPath,
        aux: u32,
        body: Vec<u8>,
        strict: bool,
    ) -> Result<u64, SimFailure> {
        let mut h = Header::new(kind);
        h.filespace = p.filespace;
        h.aux = aux;
        let h = self.stream()?.stream.operation(h);
        self.ship(h, Bytes::from(body), strict);
        Ok(h.seq)
    }

    /// Keep what a shipped change touched: the window and the activity entries.
    pub(super) fn track(&mut self, n: usize, seq: u64, change: Change) -> Result<(), SimFailure> {
        let keys: Vec<Hot> = match &change {
            Change::Blocks { path, first, last } => {
                (first / EXTENT_BLOCKS..=last / EXTENT_BLOCKS).map(|e| Hot::Extent(path.clone(), e)).collect()
            }
            Change::Touched { path, .. } => vec![Hot::Path(path.clone())],
        };
        for k in keys {
            let e = self.nodes[n].hot.entry(k).or_insert(0);
            *e = (*e).max(seq);
        }
        self.stream()?.window.push_back((seq, change));
        Ok(())
    }

    pub(super) fn ship_data(&mut self, n: usize, spec: &OpSpec, strict: bool) -> Result<u64, SimFailure> {
        let (p, kind, offset, body, first, last) = match spec {
            OpSpec::Block { p, block, extend, fill } => (
                p,
                if *extend { Kind::Extend } else { Kind::WriteBlock },
                *block,
                vec![*fill; self.bs as usize],
                *block,
                *block,
            ),
            OpSpec::WriteAt { p, offset, data } => {
                let (first, last) = self.blocks_of(*offset, data.len() as u64);
                (p, Kind::WriteAt, *offset, data.clone(), first, last)
            }
            _ => return Err(self.fail("ship_data of a namespace operation")),
        };
        let mut h = Header::new(kind);
        h.offset = offset;
        let seq = self.ship_op(p, h, Bytes::from(body), strict)?;
        self.track(n, seq, Change::Blocks { path: p.clone(), first, last })?;
        Ok(seq)
    }

    pub(super) fn ship_namespace(&mut self, n: usize, spec: &OpSpec, strict: bool) -> Result<u64, SimFailure> {
        let touched = |path: &FsPath, subtree| Change::Touched { path: path.clone(), subtree };
        match spec {
            OpSpec::Create(p) => {
                let seq = self.ship_op(p, Header::new(Kind::Create), Bytes::new(), strict)?;
                self.track(n, seq, touched(p, false))?;
                Ok(seq)
            }
            OpSpec::Truncate { p, len } => {
                let mut h = Header::new(Kind::Truncate);
                h.offset = *len;
                let seq = self.ship_op(p, h, Bytes::new(), strict)?;
                self.track(n, seq, touched(p, false))?;
                Ok(seq)
            }
            OpSpec::Unlink(p) => {
                let seq = self.ship_op(p, Header::new(Kind::Unlink), Bytes::new(), strict)?;
                self.stream()?.stream.unbind(p);
                self.track(n, seq, touched(p, false))?;
                Ok(seq)
            }
            OpSpec::Mkdir(p) | OpSpec::Rmdir(p) => {
                let kind = if matches!(spec, OpSpec::Mkdir(_)) { Kind::Mkdir } else { Kind::Rmdir };
                let seq = self.ship_path_op(kind, p, 0, p.path.as_str().as_bytes().to_vec(), strict)?;
                self.track(n, seq, touched(p, true))?;
                Ok(seq)
            }
            OpSpec::Rename { from, to } => {
                let mut body = from.path.as_str().as_bytes().to_vec();
                body.extend_from_slice(to.path.as_str().as_bytes());
                let seq = self.ship_path_op(Kind::Rename, from, from.path.as_str().len() as u32, body, strict)?;
                self.stream()?.stream.rebind(from, to);
                self.track(n, seq, touched(from, true))?;
                self.track(n, seq, touched(to, true))?;
                Ok(seq)
            }
            _ => Err(self.fail("ship_namespace of a data operation")),
        }
    }

    pub(super) fn drop_session_if_done(&mut self) {
        if self.session.as_ref().is_some_and(|s| !s.primary_on && !s.mirror_on) {
            self.session = None;
        }
    }

    pub(super) fn mirror_alive(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.mirror_on)
    }

    pub(super) fn mirror_ack(&mut self) {
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return };
        if !s.mirror_on || !s.primary_on || s.cut {
            return;
        }
        let ack = Ack { received: s.received, applied: s.applier.applied(), synced: s.synced, durable: s.durable };
        s.to_primary.send(&mut self.rng, now, &ack.to_frame().to_vec());
    }

    /// The mirror: take delivered bytes, validate, apply in random batches, acknowledge.
    pub(super) fn mirror_step(&mut self) -> Result<(), SimFailure> {
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if !s.mirror_on {
            return Ok(());
        }
        let bytes = s.to_mirror.deliver(now);
        if bytes.is_empty() {
            return Ok(());
        }
        s.mirror_heard = now;
        s.mirror_dec.feed(&bytes);
        let (mut ops, mut wake, mut shutdown, mut err) = (Vec::new(), false, false, None);
        loop {
            match s.mirror_dec.next_frame() {
                Ok(Some(f)) => match s.session.on_frame(&f) {
                    Ok(Step::Apply { seq, op, durable, catching_up }) => {
                        ops.push(Sequenced { seq, op, durable, catching_up })
                    }
                    Ok(Step::Heartbeat) => wake = true,
                    Ok(Step::Shutdown) => {
                        wake = true;
                        shutdown = true;
                    }
                    Err(e) => {
                        err = Some(format!("mirror refused a frame: {e}"));
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    err = Some(format!("mirror decode: {e}"));
                    break;
                }
            }
        }
        s.received = s.session.received();
        let (m, p) = (s.mirror, s.primary);
        if let Some(e) = err {
            return Err(self.fail(e));
        }
        let mut at = 0;
        while at < ops.len() {
            let k = self.rng.gen_range(1..=ops.len() - at);
            let batch = &ops[at..at + k];
            at += k;
            let fired = self.nodes[m].data.fired_total();
            let Some(s) = self.session.as_mut() else { return Ok(()) };
            if let Err(e) = s.applier.apply(batch) {
                if self.nodes[m].data.fired_total() > fired {
                    self.mirror_fault(m);
                    return Ok(());
                }
                // A stream in sync never refuses an operation. A resync's
                // mirror may lack what a call changes: the daemon sends a
                // Fault and ends the session (a missing file does not fault it).
                if s.resync {
                    return self.mirror_refused(m, &e.to_string());
                }
                return Err(self.fail(format!("mirror apply: {e}")));
            }
            // The daemon's periodic checkpoint, at random moments.
            if self.rng.gen_bool(0.05) {
                s.applier.request_full();
                s.last_full = now;
            }
            if s.applier.wants_sync() {
                let job = s.applier.take_sync_job();
                s.sync_jobs.push_back(job);
            }
            // Answers to hash requests go out after their batch, before its
            // acknowledgement, as the daemon sends them.
            let replies = s.applier.take_replies();
            if !replies.is_empty() && s.primary_on && !s.cut {
                for reply in replies {
                    s.to_primary.send(&mut self.rng, now, &reply.into_frame().to_vec());
                }
            }
            self.hook(Point::BeforeAck, p)?;
            if !self.mirror_alive() {
                return Ok(());
            }
            self.mirror_ack();
        }
        if shutdown {
            if let Some(s) = self.session.as_mut() {
                s.applier.request_full();
                let job = s.applier.take_sync_job();
                s.sync_jobs.push_back(job);
                s.shutdown_seen = true;
            }
        }
        if ops.is_empty() && wake {
            // A heartbeat also runs the daemon's periodic checkpoint: an idle
            // stream's "durable through" catches up with what was applied.
            if let Some(s) = self.session.as_mut() {
                let lagging = s.applier.has_unsynced() || s.durable < s.applier.applied();
                if lagging && now.saturating_sub(s.last_full) >= MIRROR_CHECKPOINT_MS {
                    s.applier.request_full();
                    s.last_full = now;
                    let job = s.applier.take_sync_job();
                    s.sync_jobs.push_back(job);
                }
            }
            self.mirror_ack();
        }
        Ok(())
    }

    /// The mirror's syncer: run queued jobs, merged as the daemon merges them.
    pub(super) fn syncer_step(&mut self) -> Result<(), SimFailure> {
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if !s.mirror_on {
            return Ok(());
        }
        let Some(mut job) = s.sync_jobs.pop_front() else { return Ok(()) };
        while self.rng.gen_bool(0.5) {
            match s.sync_jobs.pop_front() {
                Some(more) => job.merge(more),
                None => break,
            }
        }
        let m = s.mirror;
        let disk = self.nodes[m].data.clone();
        let fired = disk.fired_total();
        match job.run(disk.as_ref()) {
            Err(e) => {
                if disk.fired_total() > fired {
                    self.mirror_fault(m);
                    return Ok(());
                }
                Err(self.fail(format!("mirror sync: {e}")))
            }
            Ok(through) => {
                let Some(s) = self.session.as_mut() else { return Ok(()) };
                if through < s.synced {
                    let had = s.synced;
                    return Err(self.fail(format!("synced went backwards: {through} < {had}")));
                }
                s.synced = through;
                if let Some(d) = job.durable_through {
                    s.durable = s.durable.max(d);
                }
                self.mirror_ack();
                Ok(())
            }
        }
    }

    /// The mirror's disk failed (rule 8): Fault, the session ends, the mirror refuses primaries.
    pub(super) fn mirror_fault(&mut self, m: usize) {
        self.outcome("mirror faulted");
        if let Role::Mirror { faulted, .. } = &mut self.nodes[m].role {
            *faulted = true;
        }
        if let Some(s) = self.session.as_mut() {
            if s.mirror == m {
                s.mirror_on = false;
                s.mirror_closed = true;
                s.sync_jobs.clear();
                s.to_mirror.queue.clear();
            }
        }
        self.drop_session_if_done();
    }

    /// The mirror could not apply an operation (not an I/O error): as the
    /// daemon does, it runs the sync jobs already queued and closes; the
    /// primary loses it once the bytes in flight are read.
    pub(super) fn mirror_refused(&mut self, m: usize, why: &str) -> Result<(), SimFailure> {
        tracing::debug!(seed = self.seed, step = self.step, why, "sim: the mirror refused an operation");
        self.outcome("resync: the mirror refused an operation");
        self.mirror_refusal.get_or_insert_with(|| why.to_string());
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        s.mirror_on = false;
        s.mirror_closed = true;
        s.to_mirror.queue.clear();
        let jobs: Vec<SyncJob> = s.sync_jobs.drain(..).collect();
        let disk = self.nodes[m].data.clone();
        let fired = disk.fired_total();
        if let Err(e) = jobs.iter().try_for_each(|j| j.run(disk.as_ref()).map(drop)) {
            if disk.fired_total() > fired {
                self.mirror_fault(m);
                return Ok(());
            }
            return Err(self.fail(format!("mirror sync: {e}")));
        }
        self.drop_session_if_done();
        Ok(())
    }

    /// The mirror ends its session (not by a crash): it drains its syncer
    /// and makes what it applied durable, as the daemon does.
    pub(super) fn end_mirror_side(&mut self, may_self_promote: bool) -> Result<(), SimFailure> {
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if !s.mirror_on {
            return Ok(());
        }
        s.mirror_on = false;
        s.mirror_closed = true;
        s.to_mirror.queue.clear();
        let m = s.mirror;
        let jobs: Vec<SyncJob> = s.sync_jobs.drain(..).collect();
        let disk = self.nodes[m].data.clone();
        let fired = disk.fired_total();
        let mut r = jobs.iter().try_for_each(|j| j.run(disk.as_ref()).map(drop));
        if r.is_ok() {
            if let Some(s) = self.session.as_mut() {
                r = s.applier.sync_all();
            }
        }
        if let Err(e) = r {
            if disk.fired_total() > fired {
                self.mirror_fault(m);
                return Ok(());
            }
            return Err(self.fail(format!("mirror final sync: {e}")));
        }
        self.drop_session_if_done();
        if may_self_promote && self.cfg.bug == Some(PlantedBug::SelfPromote) {
            if let Role::Mirror { gen, faulted: false, .. } = self.nodes[m].role {
                self.open_log(m, gen)?;
            }
        }
        Ok(())
    }

    /// The primary: read acknowledgements, check them, wake callers.
    pub(super) fn primary_step(&mut self) -> Result<(), SimFailure> {
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if !s.primary_on {
            return Ok(());
        }
        let n = s.primary;
        let bytes = s.to_primary.deliver(now);
        let mut frames = Vec::new();
        let mut err = None;
        if !bytes.is_empty() {
            s.primary_dec.feed(&bytes);
            loop {
                match s.primary_dec.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(format!("primary decode: {e}"));
                        break;
                    }
                }
            }
        }
        if let Some(e) = err {
            return Err(self.fail(e));
        }
        for f in frames {
            if f.header.kind == Kind::Hashes {
                self.hashes_arrived(f.header.seq, &f.body)?;
                continue;
            }
            if f.header.kind != Kind::Ack {
                return Err(self.fail(format!("primary got a {} frame", f.header.kind.name())));
            }
            let ack = Ack::from_body(&f.body).ok_or_else(|| self.fail("malformed ack"))?;
            let Some(s) = self.session.as_mut() else { return Ok(()) };
            if !s.primary_on {
                return Ok(());
            }
            // Acknowledgements may only claim what the mirror really did.
            if ack.applied > s.applier.applied() || ack.synced > s.synced || ack.durable > s.durable {
                let real = (s.applier.applied(), s.synced, s.durable);
                return Err(
                    self.fail(format!("ack {ack:?} runs ahead of the mirror (applied, synced, durable) {real:?}"))
                );
            }
            if let Err(e) = s.stream.on_ack(ack, now) {
                return Err(self.fail(format!("primary refused ack: {e}")));
            }
            while s.window.front().is_some_and(|(seq, _)| *seq <= ack.durable) {
                s.window.pop_front();
            }
            for w in 0..self.writers.len() {
                if let Some(wt) = self.writers[w] {
                    if wt.node == n && (if wt.synced { ack.synced } else { ack.applied }) >= wt.seq {
                        self.writers[w] = None;
                        self.ack_op(wt.op);
                    }
                }
            }
            if !self.hook(Point::AfterAck, n)? {
                return Ok(());
            }
        }
        if self.session.as_ref().is_some_and(|s| s.primary_on && s.mirror_closed && s.to_primary.is_empty()) {
            self.lose(n, "the mirror closed the stream")?;
        }
        Ok(())
    }

    /// A Hashes frame: accepted only as the answer to a request the primary
    /// made, with exactly the hashes asked for (as `Primary` checks them).
    /// The mirror is the real `Applier`, so anything else is a bug.
    fn hashes_arrived(&mut self, seq: u64, body: &[u8]) -> Result<(), SimFailure> {
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if !s.primary_on {
            return Ok(());
        }
        let Some(want) = s.hash_wanted.remove(&seq) else {
            return Err(self.fail(format!("the mirror sent unasked-for hashes for #{seq}")));
        };
        if body.len() != want as usize * 8 {
            return Err(self.fail(format!("hashes for #{seq}: {} bytes for {want} blocks", body.len())));
        }
        let hashes = body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
        s.hash_answers.insert(seq, hashes);
        Ok(())
    }

    /// Heartbeats and silence, on both ends.
    pub(super) fn timers(&mut self) -> Result<(), SimFailure> {
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        let n = s.primary;
        if s.primary_on {
            match s.stream.on_tick(now) {
                TimerAction::SendHeartbeat => self.ship(Header::new(Kind::Heartbeat), Bytes::new(), false),
                TimerAction::MirrorSilent { .. } => self.lose(n, "the mirror went silent")?,
                TimerAction::Nothing => {}
            }
        }
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if s.mirror_on && !s.shutdown_seen {
            let silent = now.saturating_sub(s.mirror_heard) > ACK_TIMEOUT_MS;
            let closed = s.primary_closed && s.to_mirror.is_empty();
            if silent || closed {
                self.end_mirror_side(true)?;
            }
        }
        Ok(())
    }

    /// The primary lost its mirror (rule 3): suspend calls, record the
    /// window, ask the arbiter.
    pub(super) fn lose(&mut self, n: usize, why: &str) -> Result<(), SimFailure> {
        tracing::debug!(seed = self.seed, step = self.step, why, "sim: mirror lost");
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if s.primary != n || !s.primary_on {
            return Ok(());
        }
        s.primary_on = false;
        s.primary_closed = true;
        s.to_primary.queue.clear();
        let window: Vec<Change> = s.window.drain(..).map(|(_, c)| c).collect();
        self.drop_session_if_done();
        self.outcome("mirror lost");
        let gen = self.gen_of(n);
        self.set_mode(n, Mode::Deciding { answer_at: self.now + DECISION_TIMEOUT_MS, verdict: None });
        // Phase 1: the window goes to the change-log before the arbiter is asked.
        let mut blocks = Vec::new();
        let mut touched = Vec::new();
        for c in window {
            match c {
                Change::Blocks { path, first, last } => blocks.extend((first..=last).map(|b| (path.clone(), b))),
                Change::Touched { path, subtree } => touched.push((path, subtree)),
            }
        }
        if !self.log_call(n, |log| log.record_batch(blocks, touched))? {
            return Ok(());
        }
        if self.arbiter_up && self.nodes[n].reaches_arbiter {
            let reporter = self.nodes[n].dbid;
            let out = self.arbiter_apply(Event::MirrorLost { reporter, generation: gen })?;
            let answer_at = self.now + self.rng.gen_range(1..5);
            self.set_mode(n, Mode::Deciding { answer_at, verdict: Some(out.verdict) });
        }
        Ok(())
    }

    /// Deciding primaries whose answer (or timeout) is due.
    pub(super) fn decisions(&mut self) {
        for n in 0..self.nodes.len() {
            let Role::Primary { mode: Mode::Deciding { answer_at, verdict }, .. } = &self.nodes[n].role else {
                continue;
            };
            let (answer_at, verdict) = (*answer_at, *verdict);
            if answer_at > self.now {
                continue;
            }
            match verdict {
                Some(Verdict::MirrorDown) => {
                    self.outcome("change tracking");
                    self.set_mode(n, Mode::Tracking);
                    // Waiting calls return: their changes are in the change-log.
                    self.finish_writers(n, true);
                }
                Some(Verdict::Demoted) => {
                    self.outcome("primary told it was demoted");
                    self.stop_primary(n, Mode::Failed("demoted by the arbiter".into()));
                }
                _ => {
                    self.outcome("no answer from the arbiter");
                    self.stop_primary(n, Mode::Failed("no answer from the arbiter".into()));
                }
            }
        }
    }
}
