//! The end of a schedule: healing, the invariants, and the repair.

use super::workload::{CallState, OpSpec};
use super::world::{CallOwner, Role, World};
use super::*;
use crate::core::pair::PairMode;
use crate::core::primary::{Mode, Op, Reply};
use crate::durable::changelog::ChangeSet;
use crate::exec::primary::Extras;

/// What a call returned, and what its executor kept for the caller.
type CallResult = (Result<Reply, crate::core::primary::Failure>, Extras);

impl World {
    /// Faults stop, partitions heal, the arbiter comes back, failed
    /// segments restart; run until every segment knows its role and no
    /// call is pending. A healthy stream stays up.
    pub(super) fn heal(&mut self) -> Result<(), SimFailure> {
        self.schedule.clear();
        self.armed = None;
        for node in &mut self.nodes {
            node.data.disarm();
            node.log_io.disarm();
            node.reaches_arbiter = true;
        }
        self.partition_heal_at = None;
        self.arbiter_up = true;
        let deadline = self.step + 20_000;
        loop {
            self.step += 1;
            if self.step > deadline {
                return Err(self.fail(format!("the pair did not settle: {}", self.describe())));
            }
            for n in 0..self.nodes.len() {
                let engine = self.nodes[n].primary.as_ref().map(|s| (s.engine.mode(), s.engine.faulted()));
                match (&self.nodes[n].role, engine) {
                    (Role::Down { .. }, _) => self.restart(n)?,
                    // After an I/O error the page cache is not to be trusted:
                    // an operator power-cycles the host, or restarts the
                    // segment (which settles its files in doubt first).
                    (Role::Primary { .. }, Some((_, Some(_)))) => {
                        if self.rng.gen_bool(0.5) {
                            self.outcome("an operator restarted a faulted primary's process");
                            self.restart_process(n)?;
                        } else {
                            self.crash_node(n)?;
                            self.restart(n)?;
                        }
                    }
                    // A mirror whose disk failed stays up and refuses every
                    // primary, its page cache as the failed fsync left it:
                    // only `filerep recover -F` rebuilds it (take_back).
                    (Role::Mirror { faulted: true, .. }, _) => {}
                    // An operator restarts a primary that failed (demoted, no answer, no change-log).
                    (Role::Primary { .. }, Some((Mode::Failed(_), _))) | (Role::Primary { .. }, None) => {
                        self.restart_process(n)?
                    }
                    _ => {}
                }
            }
            self.writers_step()?;
            self.tick()?;
            self.now += 1;
            if self.settled() {
                break;
            }
        }
        Ok(())
    }

    pub(super) fn settled(&self) -> bool {
        let healthy = self
            .session
            .as_ref()
            .is_none_or(|s| s.primary_on && s.mirror_on && !s.cut && !s.primary_closed && !s.mirror_closed);
        let pending = self.writers.iter().any(|w| w.is_some()) || !self.answers.is_empty();
        let roles_known = self.nodes.iter().all(|node| match &node.role {
            Role::Primary { gen } => {
                !self.pair.down
                    && self.pair.acting_primary().dbid == node.dbid
                    && *gen == self.pair.generation
                    && node.primary.as_ref().is_some_and(|s| {
                        s.engine.faulted().is_none()
                            && s.engine.calls_in_progress() == 0
                            && matches!(s.engine.mode(), Mode::Streaming | Mode::ChangeTracking)
                    })
            }
            // Not faulted (or faulted and out of the pair's sync, for the
            // recover to rebuild), and a returning old primary has handed
            // its change set over.
            Role::Mirror { faulted, .. } => {
                (!faulted || matches!(self.pair.mode, PairMode::ChangeTracking | PairMode::NotInSync))
                    && !self.pair.down
                    && self.pair.acting_primary().dbid != node.dbid
                    && node.log.as_ref().is_none_or(|l| l.is_empty())
            }
            Role::Halted => self.pair.down,
            Role::Down { .. } | Role::Idle => false,
        });
        let primary = self.nodes.iter().any(|n| matches!(n.role, Role::Primary { .. }));
        healthy && !pending && roles_known && (primary || self.pair.down)
    }

    /// Run the world until the call `id` of the engine returns (or `limit` ms pass).
    pub(super) fn run_call(&mut self, id: u64, limit: u64) -> Result<Option<CallResult>, SimFailure> {
        let until = self.now + limit;
        loop {
            if let Some(r) = self.results.remove(&id) {
                return Ok(Some(r));
            }
            if !self.calls.contains_key(&id) {
                // Its segment went away (a crash): it never returns.
                return Ok(None);
            }
            if self.now >= until {
                return Err(self.fail(format!("call {id} did not return in {limit} ms: {}", self.describe())));
            }
            self.step += 1;
            self.writers_step()?;
            self.tick()?;
            self.now += 1;
        }
    }

    /// A healthy stream ends in order: the mirror makes everything durable.
    pub(super) fn orderly_shutdown(&mut self, a: usize) -> Result<(), SimFailure> {
        self.writers_paused = true;
        let Some(id) = self.submit(a, Op::Shutdown, CallOwner::Link, Extras::default()) else { return Ok(()) };
        let r = self.run_call(id, 20_000)?;
        let last = match r {
            Some((Ok(Reply::Seq(last)), _)) => last,
            other => {
                let r = other.map(|(r, _)| r);
                return Err(self.fail(format!("the orderly shutdown did not finish: {r:?}")));
            }
        };
        let acked = self.nodes[a].primary.as_ref().map(|s| s.engine.acked()).unwrap_or_default();
        if acked.applied != last || acked.durable != last {
            return Err(self.fail(format!("{acked:?} at the end of a stream through {last}")));
        }
        // Let the mirror finish its side.
        for _ in 0..50 {
            self.tick()?;
            self.now += 1;
        }
        if self.nodes[a].primary.as_ref().is_some_and(|s| s.engine.activity_entries() > 0) {
            self.outcome("activity entries kept after an orderly shutdown");
        } else {
            self.outcome("activity log retired after an orderly shutdown");
        }
        Ok(())
    }

    /// The acting primary and its peer, after healing.
    fn acting(&self) -> Result<(usize, usize), SimFailure> {
        let a = self.node_of(self.pair.acting_primary().dbid)?;
        Ok((a, 1 - a))
    }

    /// The change set the checks read: the acting primary's change-log
    /// (replayed from disk if its process is not serving) and, with a
    /// stream up, its window.
    pub(super) fn change_set_of(&mut self, a: usize) -> Result<(ChangeSet, ChangeSet), SimFailure> {
        let log = match &self.nodes[a].log {
            Some(l) => l.change_set(),
            None => {
                self.open_log(a)?;
                self.nodes[a].log.as_ref().map(|l| l.change_set()).unwrap_or_default()
            }
        };
        let mut with_window = log.clone();
        if let Some(side) = self.nodes[a].primary.as_ref() {
            let (blocks, touched) = side.engine.window_records();
            for (p, b) in blocks {
                with_window.blocks.entry(p).or_default().insert(b);
            }
            for (p, sub) in touched {
                *with_window.touched.entry(p).or_insert(false) |= sub;
            }
        }
        Ok((log, with_window))
    }

    /// Invariants 1 and 3 on the healed pair, then the repair and invariant 4.
    pub(super) fn check_and_repair(&mut self) -> Result<(), SimFailure> {
        self.heal()?;
        let (a, b) = self.acting()?;
        self.check_acked(a)?;
        if self.pair.down {
            // Both copies failed: the restore serves from the acting
            // primary, then the checks below hold as after any loss.
            return self.restore();
        }
        let (log, with_window) = self.change_set_of(a)?;
        self.check_tracked(&log, &with_window, a, b)?;
        match self.pair.mode {
            crate::core::pair::PairMode::Synchronized => {
                self.orderly_shutdown(a)?;
                self.check_identical(a, b)
            }
            _ => self.resync_repair(a),
        }
    }

    /// `filerep recover` on a down content: the acting primary serves alone
    /// again (a new generation fences any earlier incarnation of it), the
    /// other segment restarts, and an incremental resync from the acting
    /// primary's change-log repairs it, as `filerep recover` does (rule 4:
    /// every durable change has a durable record, so what the change-log
    /// names is enough; invariant 3 is checked first).
    fn restore(&mut self) -> Result<(), SimFailure> {
        // The operator runs it once the probes see the primary back.
        self.arbiter_step_now()?;
        match crate::core::arbiter::recover(&self.pair, None, false, self.cfg.bug) {
            crate::core::arbiter::Recover::Restore => {}
            other => return Err(self.fail(format!("recover of a down pair answered {other:?}: {:?}", self.pair))),
        }
        self.arbiter_apply(crate::core::pair::Event::Restore)?;
        if self.pair.down {
            return Err(self.fail(format!("restore left the pair down: {:?}", self.pair)));
        }
        self.outcome("segment restored from its primary");
        for n in 0..self.nodes.len() {
            if matches!(self.nodes[n].role, Role::Halted) {
                self.restart_process(n)?;
            }
        }
        self.check_and_repair()
    }

    /// Whether write `i` was followed by a successful sync of its file, before any rename or unlink of it.
    /// A sync covers the writes that returned before it was issued (as
    /// fsync covers the writes completed before it is called); calls run
    /// concurrently, so a sync issued while the write was still going on
    /// may not.
    pub(super) fn durably_acked(&self, i: usize) -> bool {
        match &self.ops[i].spec {
            OpSpec::Block { p, .. } | OpSpec::WriteAt { p, .. } => self.synced_after(i, Some(p), None),
            _ => false,
        }
    }

    /// Whether queued call `i` ([`FaultConfig::queued`]) was promised: by
    /// a later sync in the same term (on the same segment, in the same
    /// generation: only there was the change made) of its file, for a data
    /// call or a length change, or of any file, for a namespace call (a
    /// sync makes every changed directory durable on both hosts). Before
    /// that it promised nothing: it returned once made here and on its way.
    pub(super) fn queued_promised(&self, i: usize) -> bool {
        let file = match &self.ops[i].spec {
            OpSpec::Block { p, .. } | OpSpec::WriteAt { p, .. } | OpSpec::Truncate { p, .. } => Some(p),
            // A sync never returns queued: it is checked as any call.
            OpSpec::Sync { .. } | OpSpec::SyncDir { .. } => return true,
            OpSpec::Create(_) | OpSpec::Unlink(_) | OpSpec::Mkdir(_) | OpSpec::Rmdir(_) | OpSpec::Rename { .. } => None,
        };
        self.synced_after(i, file, Some(self.ops[i].term))
    }

    /// Whether call `i` was followed, before the next power loss, by a
    /// successful sync issued after it returned: of `file` (before any
    /// change to its existence), or of any file or a directory sync with
    /// none; in `term` only, if given. A write that carried its flush is
    /// its own sync.
    fn synced_after(&self, i: usize, file: Option<&FsPath>, term: Option<(usize, u64)>) -> bool {
        let Some(done) = self.ops[i].returned else { return false };
        // A sync must end before the next power loss to count.
        let cut = self.power_losses.iter().copied().find(|m| *m > done).unwrap_or(u64::MAX);
        if matches!(self.ops[i].spec, OpSpec::WriteAt { flush: true, .. }) && self.ops[i].state == CallState::Acked {
            return done < cut;
        }
        for op in &self.ops[i + 1..] {
            if file.is_some_and(|p| op.spec.changes_existence(p)) {
                return false;
            }
            let syncs = match &op.spec {
                OpSpec::Sync { p, .. } | OpSpec::WriteAt { p, flush: true, .. } => file.is_none_or(|f| f == p),
                // A directory sync covers namespace changes, not data.
                OpSpec::SyncDir { .. } => file.is_none(),
                _ => false,
            };
            if syncs
                && term.is_none_or(|t| op.term == t)
                && op.issued > done
                && op.state == CallState::Acked
                && op.returned.is_some_and(|r| r < cut)
            {
                return true;
            }
        }
        false
    }

    /// The calls that touched `p` or what holds it, for a failure's message.
    fn history_of(&self, p: &FsPath) -> String {
        let calls: Vec<String> = self
            .ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.spec.changes_length(p) || matches!(&o.spec, OpSpec::Sync { p: q, .. } if q == p))
            .map(|(j, o)| {
                format!("#{j} {:?} {:?} issued {} returned {:?}", o.spec.brief(), o.state, o.issued, o.returned)
            })
            .collect();
        format!("; calls on {p}: [{}]", calls.join(", "))
    }

    /// Invariant 1: every call that returned success is on the acting primary,
    /// unless a later call (whatever became of it) may have changed the same thing.
    pub(super) fn check_acked(&mut self, a: usize) -> Result<(), SimFailure> {
        let image = self.nodes[a].data_sim.snapshot();
        let down = self.pair.down || self.double_fault;
        let bs = self.bs;
        let key = |p: &FsPath| (p.filespace, p.path.as_str().to_string());
        // Which later calls may have changed what call `i` did: the calls on
        // the same file, and every namespace call (they reach by ancestry).
        // Indexed once: asking every later call is quadratic.
        let mut on_file: BTreeMap<&FsPath, Vec<usize>> = BTreeMap::new();
        let mut namespace: Vec<usize> = Vec::new();
        for (j, op) in self.ops.iter().enumerate() {
            match &op.spec {
                OpSpec::Block { p, .. } | OpSpec::WriteAt { p, .. } | OpSpec::Truncate { p, .. } => {
                    on_file.entry(p).or_default().push(j)
                }
                OpSpec::Sync { .. } | OpSpec::SyncDir { .. } => {}
                _ => namespace.push(j),
            }
        }
        let none = Vec::new();
        for i in 0..self.ops.len() {
            if self.ops[i].state != CallState::Acked
                || (down && !self.durably_acked(i))
                || (self.ops[i].queued && !self.queued_promised(i))
            {
                continue;
            }
            let spec = &self.ops[i].spec;
            // Calls that may have taken effect after this one: those issued
            // later, and those issued earlier that had not returned when it
            // was issued (concurrent calls take effect in either order).
            let issued = self.ops[i].issued;
            let ops = &self.ops;
            let around = |v: &[usize]| -> Vec<usize> {
                let split = v.partition_point(|j| *j <= i);
                let earlier = v[..split].iter().filter(|j| **j != i && ops[**j].returned.is_none_or(|r| r > issued));
                earlier.chain(&v[split..]).copied().collect()
            };
            let same_file = match spec {
                OpSpec::Block { p, .. } | OpSpec::WriteAt { p, .. } | OpSpec::Truncate { p, .. } => {
                    around(on_file.get(p).unwrap_or(&none))
                }
                _ => Vec::new(),
            };
            let namespace_around = around(&namespace);
            let later = || same_file.iter().chain(&namespace_around).map(|j| &self.ops[*j]);
            let bad = |what: String| {
                let history = match spec {
                    OpSpec::Create(p) | OpSpec::Mkdir(p) | OpSpec::Unlink(p) | OpSpec::Rmdir(p) => self.history_of(p),
                    OpSpec::Rename { from, to } => format!("{}; {}", self.history_of(from), self.history_of(to)),
                    _ => String::new(),
                };
                Err(self.fail(format!("invariant 1: call #{i} ({}) returned success but {what}{history}", spec.name())))
            };
            match spec {
                OpSpec::Block { p, block, fill, .. } => {
                    let (start, end) = (block * bs, block * bs + bs);
                    if later().any(|l| l.spec.changes_content(p, start, end, bs)) {
                        continue;
                    }
                    match image.get(&key(p)) {
                        Some(SimEntry::File(b))
                            if b.get(start as usize..end as usize).is_some_and(|s| s.iter().all(|x| x == fill)) => {}
                        other => {
                            let have = match other {
                                Some(SimEntry::File(b)) => b.chunks(bs as usize).map(|c| c[0]).collect::<Vec<u8>>(),
                                _ => Vec::new(),
                            };
                            return bad(format!(
                                "block {block} of {p} does not hold it (fill {fill}; its blocks start with {have:?}){}",
                                self.history_of(p)
                            ));
                        }
                    }
                }
                OpSpec::WriteAt { p, offset, data, .. } => {
                    let (start, end) = (*offset, offset + data.len() as u64);
                    if later().any(|l| l.spec.changes_content(p, start, end, bs)) {
                        continue;
                    }
                    match image.get(&key(p)) {
                        Some(SimEntry::File(b)) if b.get(start as usize..end as usize) == Some(data.as_slice()) => {}
                        other => {
                            let holds: Vec<usize> = match other {
                                Some(SimEntry::File(b)) => (0..self.ops.len())
                                    .filter(|j| matches!(&self.ops[*j].spec, OpSpec::WriteAt { p: q, offset: o, data: d, .. } if q == p
                                        && b.get(*o as usize..*o as usize + d.len()) == Some(d.as_slice())))
                                    .collect(),
                                _ => Vec::new(),
                            };
                            return bad(format!(
                                "bytes {start}..{end} of {p} do not hold it (calls whose bytes it holds: {holds:?}){}",
                                self.history_of(p)
                            ));
                        }
                    }
                }
                _ if down => {}
                OpSpec::Truncate { p, len } => {
                    if !later().any(|l| l.spec.changes_length(p)) {
                        match image.get(&key(p)) {
                            Some(SimEntry::File(b)) if b.len() as u64 == *len => {}
                            _ => return bad(format!("{p} is not {len} bytes long")),
                        }
                    }
                }
                OpSpec::Create(p) | OpSpec::Mkdir(p) => {
                    let want_dir = matches!(spec, OpSpec::Mkdir(_));
                    if !later().any(|l| l.spec.changes_existence(p)) {
                        match image.get(&key(p)) {
                            Some(SimEntry::Dir) if want_dir => {}
                            Some(SimEntry::File(_)) if !want_dir => {}
                            _ => return bad(format!("{p} is missing")),
                        }
                    }
                }
                OpSpec::Unlink(p) | OpSpec::Rmdir(p) => {
                    if !later().any(|l| l.spec.changes_existence(p)) && image.contains_key(&key(p)) {
                        return bad(format!("{p} still exists"));
                    }
                }
                OpSpec::Rename { from, to } => {
                    if !later().any(|l| l.spec.changes_existence(to)) && !image.contains_key(&key(to)) {
                        return bad(format!("{to} is missing"));
                    }
                    if !later().any(|l| l.spec.changes_existence(from)) && image.contains_key(&key(from)) {
                        return bad(format!("{from} still exists"));
                    }
                }
                OpSpec::Sync { .. } | OpSpec::SyncDir { .. } => {}
            }
        }
        Ok(())
    }

    /// Invariant 3: whatever differs between the segments, whichever of
    /// their live and durable images survives, is named by the acting
    /// primary's change set: its change-log for its durable image (a crash
    /// loses the window), its change-log and window for its live one.
    pub(super) fn check_tracked(
        &self,
        log: &ChangeSet,
        with_window: &ChangeSet,
        a: usize,
        b: usize,
    ) -> Result<(), SimFailure> {
        let ia = [
            ("live", self.nodes[a].data_sim.snapshot(), with_window),
            ("durable", self.nodes[a].data_sim.durable_snapshot(), log),
        ];
        let ib = [("live", self.nodes[b].data_sim.snapshot()), ("durable", self.nodes[b].data_sim.durable_snapshot())];
        for (na, x, set) in &ia {
            for (nb, y) in &ib {
                if let Some(what) = self.uncovered(set, x, y)? {
                    return Err(self.fail(format!(
                        "invariant 3: segment {}'s {na} image and segment {}'s {nb} image differ in {what}, \
                         which the acting primary's change-log{} does not name",
                        self.nodes[a].dbid,
                        self.nodes[b].dbid,
                        if *na == "live" { " and window" } else { "" }
                    )));
                }
            }
        }
        Ok(())
    }

    /// The first difference between two images that `set` does not cover.
    pub(super) fn uncovered(&self, set: &ChangeSet, x: &Image, y: &Image) -> Result<Option<String>, SimFailure> {
        let keys: BTreeSet<&(u16, String)> = x.keys().chain(y.keys()).collect();
        let bs = self.bs as usize;
        for k in keys {
            let p = FsPath::new(k.0, self.rel(&k.1)?);
            let path_covered = set.touched.contains_key(&p)
                || std::iter::successors(p.path.parent(), |q| q.parent())
                    .any(|anc| set.touched.get(&FsPath::new(p.filespace, anc)) == Some(&true));
            match (x.get(k), y.get(k)) {
                (Some(SimEntry::Dir), Some(SimEntry::Dir)) => {}
                (Some(SimEntry::File(u)), Some(SimEntry::File(v))) => {
                    if u == v || path_covered {
                        continue;
                    }
                    let blocks = u.len().max(v.len()).div_ceil(bs);
                    let (short, long) = if u.len() <= v.len() { (u, v) } else { (v, u) };
                    for blk in 0..blocks {
                        let range = |d: &Vec<u8>| blk * bs..((blk + 1) * bs).min(d.len());
                        let part = |d: &Vec<u8>| d.get(range(d)).unwrap_or(&[]).to_vec();
                        if part(u) == part(v) || set.covers_block(&p, blk as u64) {
                            continue;
                        }
                        // A hole: writing a later block zero-fills up to it,
                        // so copying that (covered) block recreates it.
                        let start = (blk * bs).max(short.len());
                        let hole = part(short) == long[blk * bs..start.min(long.len())]
                            && long.get(start..range(long).end).is_some_and(|t| t.iter().all(|x| *x == 0))
                            && (blk as u64 + 1..blocks as u64).any(|c| set.covers_block(&p, c));
                        if !hole {
                            let (x0, y0) = (part(u).first().copied(), part(v).first().copied());
                            return Ok(Some(format!(
                                "block {blk} of {p} (fills {x0:?} vs {y0:?}){}",
                                self.history_of(&p)
                            )));
                        }
                    }
                }
                _ if path_covered => {}
                (u, v) => {
                    let what = |e: Option<&SimEntry>| match e {
                        None => "absent",
                        Some(SimEntry::Dir) => "a directory",
                        Some(SimEntry::File(_)) => "a file",
                    };
                    return Ok(Some(format!("{p} ({} vs {})", what(u), what(v))));
                }
            }
        }
        Ok(None)
    }

    /// Invariant 4: after repair, live and durable images of both segments are equal.
    pub(super) fn check_identical(&self, a: usize, b: usize) -> Result<(), SimFailure> {
        let al = self.nodes[a].data_sim.snapshot();
        let images = [
            ("the acting primary's durable image", self.nodes[a].data_sim.durable_snapshot()),
            ("the peer's live image", self.nodes[b].data_sim.snapshot()),
            ("the peer's durable image", self.nodes[b].data_sim.durable_snapshot()),
        ];
        for (what, img) in &images {
            if let Some(d) = first_difference(&al, img) {
                return Err(self.fail(format!(
                    "invariant 4: after repair {what} differs from the acting primary's live image: {d}"
                )));
            }
        }
        Ok(())
    }
}
