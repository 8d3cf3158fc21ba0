//! Carrying out a primary engine's commands in the world: its local steps
//! and change-log records through the shared executor on the segment's
//! failing disks, its sends onto the simulated network, its questions to
//! the arbiter. A crash armed at a command boundary fires here.

use super::world::{Answer, CallOwner, Role, World, DECISION_TIMEOUT_MS};
use super::*;
use crate::core::pair::{Event as PairEvent, Verdict};
use crate::core::primary::{CallId, Command, Decision, Event, LocalStep, OutFrame};
use crate::exec::primary::{Extras, Performed};

impl World {
    /// Carry out one command of segment `n`'s engine (`call`: whose it is).
    pub(super) fn execute(&mut self, n: usize, cmd: Command, call: Option<CallId>) -> Result<(), SimFailure> {
        match cmd {
            Command::Send { epoch, frames } => {
                if !self.hook(Point::BeforeSend, n)? {
                    return Ok(());
                }
                let result = self.send_frames(n, epoch, &frames);
                self.feed(n, Event::Sent { epoch, result });
                self.hook(Point::AfterSend, n)?;
                Ok(())
            }
            Command::AskArbiter { reason } => {
                self.ask_arbiter(n, &reason);
                Ok(())
            }
            Command::Complete { .. } | Command::Close => Ok(()),
            cmd => self.perform(n, cmd, call),
        }
    }

    /// A local step, a change-log record or read: through the executor the
    /// runtime uses, on this segment's disks.
    fn perform(&mut self, n: usize, cmd: Command, call: Option<CallId>) -> Result<(), SimFailure> {
        let local = match &cmd {
            Command::Local { step, .. } => Some(step.clone()),
            _ => None,
        };
        if local.as_ref().is_some_and(mutates) && !self.hook(Point::BeforeLocalWrite, n)? {
            return Ok(());
        }
        use crate::core::primary::LogOp;
        let (rewrite, clear) = match &cmd {
            Command::Log { op, .. } => (
                matches!(op, LogOp::Retire { .. } | LogOp::ClearKeeping { .. }),
                matches!(op, LogOp::ClearEntries { .. } | LogOp::ClearKeeping { .. }),
            ),
            _ => (false, false),
        };
        let armed_rewrite = (rewrite && self.arm_rewrite_crash(n)) | (clear && self.arm_clearing_crash(n));
        let Some(side) = self.nodes[n].primary.as_mut() else { return Ok(()) };
        let mut scratch = Extras::default();
        let x = match call {
            Some(c) => side.extras.entry(c).or_default(),
            None => &mut scratch,
        };
        let performed = side.exec.perform(cmd, x);
        if self.nodes[n].log_io.power_lost() {
            // The power went inside a change-log write: the process is gone.
            self.drain_fired(n);
            return self.crash_node(n);
        }
        if armed_rewrite {
            self.nodes[n].log_io.disarm_power();
        }
        let ev = match performed {
            Performed::Done(ev) => ev,
            Performed::Driver(c) => return Err(self.fail(format!("the executor handed back a {}", c.name()))),
        };
        if matches!(&ev, Some(Event::Recorded { result: Err(_), .. } | Event::Logged { result: Err(_) })) {
            self.outcome("change-log failed");
        }
        if let (Some(step), Some(Event::LocalDone { result: Ok(()), call: c })) = (&local, &ev) {
            self.local_happened(n, *c, step)?;
        }
        let faulted_before = self.nodes[n].primary.as_ref().is_some_and(|s| s.engine.faulted().is_some());
        if let Some(ev) = ev {
            self.feed(n, ev);
        }
        let faulted_after = self.nodes[n].primary.as_ref().is_some_and(|s| s.engine.faulted().is_some());
        if faulted_after && !faulted_before {
            self.outcome("primary faulted");
        }
        if local.as_ref().is_some_and(mutates) {
            self.hook(Point::AfterLocalWrite, n)?;
        }
        Ok(())
    }

    /// A local change was made on segment `n`: invariant 2, and the model.
    fn local_happened(&mut self, n: usize, call: CallId, step: &LocalStep) -> Result<(), SimFailure> {
        if !mutates(step) {
            return Ok(());
        }
        self.record_writer(n)?;
        if let Some((_, CallOwner::Writer { op, .. })) = self.calls.get(&call) {
            let spec = self.ops[*op].spec.clone();
            tracing::trace!(seed = self.seed, step = self.step, op, segment = self.nodes[n].dbid, what = %spec.brief(), "sim: local change");
            if self.model_node == Some(n) {
                self.model_apply(&spec);
            }
        }
        Ok(())
    }

    /// Invariant 2: one writer per generation.
    pub(super) fn record_writer(&mut self, n: usize) -> Result<(), SimFailure> {
        let (gen, dbid) = (self.gen_of(n), self.nodes[n].dbid);
        match self.writer_of_gen.get(&gen) {
            Some(&other) if other != dbid => {
                Err(self
                    .fail(format!("invariant 2: generation {gen} has two writers: segment {other} and segment {dbid}")))
            }
            _ => {
                self.writer_of_gen.insert(gen, dbid);
                Ok(())
            }
        }
    }

    /// Frames onto the wire of the session on `epoch`.
    fn send_frames(&mut self, n: usize, epoch: u64, frames: &[OutFrame]) -> Result<u64, String> {
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return Err("connection closed".into()) };
        if s.primary != n || s.epoch != epoch || !s.primary_on {
            return Err("connection closed".into());
        }
        let mut bytes = Vec::new();
        for f in frames {
            bytes.extend_from_slice(&f.header);
            bytes.extend_from_slice(&f.body);
        }
        self.report.frames += frames.len() as u64;
        self.report.wire_bytes += bytes.len() as u64;
        for f in frames {
            *self
                .report
                .frame_kinds
                .entry(crate::protocol::Kind::from_u8(f.header[0]).map_or("?", |k| k.name()))
                .or_default() += 1;
        }
        if s.mirror_closed && self.rng.gen_bool(0.5) {
            return Err("connection reset by peer".into());
        }
        if !s.cut && s.mirror_on {
            s.to_mirror.send(&mut self.rng, now, &bytes);
        }
        Ok(bytes.len() as u64)
    }

    /// The engine closed its connection: the mirror sees it end after what is in flight.
    pub(super) fn close_primary_side(&mut self, n: usize) {
        if let Some(s) = self.session.as_mut() {
            if s.primary == n && s.primary_on {
                s.primary_on = false;
                s.primary_closed = true;
                s.to_primary.queue.clear();
            }
        }
        self.drop_session_if_done();
    }

    /// The primary reads what the mirror sent and feeds it to its engine.
    pub(super) fn primary_receive(&mut self) -> Result<(), SimFailure> {
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        if !s.primary_on {
            return Ok(());
        }
        let (n, epoch) = (s.primary, s.epoch);
        let bytes = s.to_primary.deliver(now);
        let mut frames = Vec::new();
        if !bytes.is_empty() {
            s.primary_dec.feed(&bytes);
            loop {
                match s.primary_dec.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => return Err(self.fail(format!("the primary could not decode the mirror's frames: {e}"))),
                }
            }
        }
        for f in frames {
            let Some(s) = self.session.as_ref() else { return Ok(()) };
            if !s.primary_on {
                return Ok(());
            }
            let is_ack = f.header.kind == crate::protocol::Kind::Ack;
            if is_ack {
                // Acknowledgements may only claim what the mirror really did.
                if let Some(ack) = crate::protocol::Ack::from_body(&f.body) {
                    if ack.applied > s.applier.applied() || ack.synced > s.synced || ack.durable > s.durable {
                        let real = (s.applier.applied(), s.synced, s.durable);
                        return Err(self.fail(format!(
                            "ack {ack:?} runs ahead of the mirror (applied, synced, durable) {real:?}"
                        )));
                    }
                }
            }
            self.feed(n, Event::Received { epoch, frame: f });
            if is_ack && !self.hook(Point::AfterAck, n)? {
                return Ok(());
            }
        }
        let ended = self.session.as_ref().is_some_and(|s| s.primary_on && s.mirror_closed && s.to_primary.is_empty());
        if ended {
            if let Some(s) = self.session.as_mut() {
                s.primary_on = false;
                s.primary_closed = true;
            }
            self.feed(n, Event::Disconnected { epoch, reason: "the mirror closed the connection".into() });
            self.drop_session_if_done();
        }
        Ok(())
    }

    /// "My mirror is gone": the arbiter decides (rule 3), unless it cannot be reached.
    fn ask_arbiter(&mut self, n: usize, reason: &str) {
        tracing::debug!(seed = self.seed, step = self.step, reason, "sim: the primary asks the arbiter");
        self.outcome("mirror lost");
        let Role::Primary { gen } = self.nodes[n].role else { return };
        if self.arbiter_up && self.nodes[n].reaches_arbiter {
            let reporter = self.nodes[n].dbid;
            match self.arbiter_apply(PairEvent::MirrorLost { reporter, generation: gen }) {
                Ok(out) => {
                    let result = match out.verdict {
                        Verdict::MirrorDown => Ok(Decision::MirrorDown),
                        Verdict::Demoted | Verdict::None => Ok(Decision::Demoted),
                    };
                    let at = self.now + self.rng.gen_range(1..5);
                    self.answers.push(Answer { at, node: n, result });
                    return;
                }
                Err(f) => {
                    // An arbiter invariant failed: reported when the world next checks.
                    self.report.arbiter_failure.get_or_insert(f.message);
                }
            }
        }
        let at = self.now + DECISION_TIMEOUT_MS;
        self.answers.push(Answer { at, node: n, result: Err("no answer from the arbiter in time".into()) });
    }

    /// Answers whose time has come reach their primary.
    pub(super) fn answers_due(&mut self) {
        let now = self.now;
        let (due, rest): (Vec<Answer>, Vec<Answer>) =
            std::mem::take(&mut self.answers).into_iter().partition(|a| a.at <= now);
        self.answers = rest;
        for a in due {
            let what = match &a.result {
                Ok(Decision::MirrorDown) => "change tracking",
                Ok(Decision::Demoted) => "primary told it was demoted",
                Err(_) => "no answer from the arbiter",
            };
            self.outcome(what);
            self.feed(a.node, Event::ArbiterAnswered { result: a.result });
        }
    }
}

/// Whether a local step changes the segment's files.
fn mutates(step: &LocalStep) -> bool {
    !matches!(step, LocalStep::SyncFiles { .. } | LocalStep::SyncDirs { .. })
}
