//! The end of a schedule: healing, the invariants, and the repair.

use super::*;

impl FaultSim {
    /// [`FaultSim::heal`], then a healthy stream ends in order.
    pub(super) fn settle(&mut self) -> Result<(), SimFailure> {
        self.heal()?;
        if self.session.is_some() {
            self.orderly_shutdown()?;
        }
        Ok(())
    }

    /// Faults stop, every partition heals, the arbiter comes back, failed
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
                let roles: Vec<&Role> = self.nodes.iter().map(|n| &n.role).collect();
                return Err(self.fail(format!("the pair did not settle: {roles:?}, {:?}", self.pair)));
            }
            for n in 0..self.nodes.len() {
                match &self.nodes[n].role {
                    Role::Down { .. } => self.nodes[n].role = Role::Restarted,
                    Role::Primary { mode: Mode::Failed(_), .. } => self.restart_process(n),
                    // After an I/O error the page cache is not to be trusted: a power cycle.
                    Role::Primary { mode: Mode::Faulted(_), .. } | Role::Mirror { faulted: true, .. } => {
                        self.crash_node(n)?;
                        self.nodes[n].role = Role::Restarted;
                    }
                    _ => {}
                }
            }
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
        let pending = self.writers.iter().any(|w| w.is_some());
        let roles_known = self.nodes.iter().all(|node| match &node.role {
            Role::Primary { gen, mode } => {
                !self.pair.down
                    && self.pair.acting_primary().dbid == node.dbid
                    && *gen == self.pair.generation
                    && matches!(mode, Mode::Streaming | Mode::Tracking)
            }
            // Not faulted, and not a promotion still to deliver (or a halt).
            Role::Mirror { faulted, .. } => !faulted && !self.pair.down && self.pair.acting_primary().dbid != node.dbid,
            Role::Halted => self.pair.down,
            Role::Down { .. } | Role::Restarted => false,
        });
        let primary = self.nodes.iter().any(|n| matches!(n.role, Role::Primary { .. }));
        healthy && !pending && roles_known && (primary || self.pair.down)
    }

    /// A healthy stream ends in order: the mirror makes everything durable.
    pub(super) fn orderly_shutdown(&mut self) -> Result<(), SimFailure> {
        let last = self.stream()?.stream.last_seq();
        let mut h = Header::new(Kind::Shutdown);
        h.offset = last;
        self.ship(h, Bytes::new(), false);
        let deadline = self.step + 10_000;
        while self.session.as_ref().is_some_and(|s| {
            !s.to_mirror.is_empty() || !s.to_primary.is_empty() || !s.sync_jobs.is_empty() || !s.shutdown_seen
        }) {
            self.step += 1;
            if self.step > deadline {
                return Err(self.fail("the orderly shutdown did not finish"));
            }
            self.now += 1;
            self.mirror_step()?;
            self.primary_step()?;
            self.syncer_step()?;
        }
        let Some(s) = self.session.as_ref() else { return Ok(()) };
        let (p, acked) = (s.primary, s.stream.acked());
        if acked.applied != last || acked.durable != last {
            return Err(self.fail(format!("{acked:?} at the end of a stream through {last}")));
        }
        self.end_mirror_side(false)?;
        if let Some(s) = self.session.as_mut() {
            s.primary_on = false;
        }
        self.drop_session_if_done();
        // The mirror has everything durably, so the runtime retires the
        // whole activity log; the primary's own writes must be durable first.
        if self.cfg.bug != Some(PlantedBug::DropActivityWithoutLocalSync) && !self.checkpoint(p)? {
            return Ok(());
        }
        let (mut extents, mut touched) = (BTreeMap::<FsPath, BTreeSet<u64>>::new(), BTreeSet::new());
        for k in self.nodes[p].hot.keys() {
            match k {
                Hot::Extent(f, e) => {
                    extents.entry(f.clone()).or_default().insert(*e);
                }
                Hot::Path(f) => {
                    touched.insert(f.clone());
                }
            }
        }
        if self.log_call(p, |log| log.retire_active(&extents, &touched))? {
            self.nodes[p].hot.clear();
            self.outcome("activity log retired after an orderly shutdown");
        }
        Ok(())
    }

    // ---- invariants and repair ---------------------------------------------

    /// Replay segment `n`'s change-log from its disk (a restarted process).
    pub(super) fn replay(&mut self, n: usize) -> Result<Option<ChangeLog>, SimFailure> {
        self.nodes[n].log = None;
        let io: Arc<dyn Disk> = self.nodes[n].log_io.clone();
        match ChangeLog::open(io, self.log_path.clone()) {
            Ok((log, _)) => Ok(Some(log)),
            Err(ChangeLogError::Disk { source, .. }) if source.kind == DiskErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(self
                    .fail(format!("invariant 3: segment {}'s change-log cannot be replayed: {e}", self.nodes[n].dbid)))
            }
        }
    }

    /// The acting primary and its peer, with the change-log the checks
    /// read: a segment that is not a working primary (down, halted) is
    /// restarted for recovery, its change-log replayed from disk. After a
    /// failover the old primary hands over what its change-log (its
    /// activity log) names, once: blocks it wrote that may never have
    /// reached the new primary (rule 5); it then forgets them.
    fn recovery_logs(&mut self) -> Result<(usize, usize), SimFailure> {
        let a = self.node_of(self.pair.acting_primary().dbid)?;
        let b = 1 - a;
        let working = matches!(self.nodes[a].role, Role::Primary { mode: Mode::Streaming | Mode::Tracking, .. });
        if self.nodes[a].log.is_none() || !working {
            self.nodes[a].log = self.replay(a)?;
        }
        if self.nodes[a].log.is_none() {
            // Named primary but never took a write (promoted, then the
            // segment went down): recovery starts it an empty change-log.
            let io: Arc<dyn Disk> = self.nodes[a].log_io.clone();
            let log = ChangeLog::create(io, self.log_path.clone(), self.cfg.block_size)
                .map_err(|e| self.fail(format!("recovery: creating a change-log: {e}")))?;
            self.nodes[a].log = Some(log);
        }
        if self.pair.generation > 1 && !self.handed_over {
            self.handed_over = true;
            let old = self.replay(b)?;
            let set = old.as_ref().map(|l| l.change_set()).unwrap_or_default();
            let merged = match self.nodes[a].log.as_ref() {
                Some(log) => log.merge(&set).map_err(|e| e.to_string()),
                None => Ok(()),
            };
            if let Err(e) = merged {
                return Err(self.fail(format!("invariant 3: the old primary's change set cannot be merged: {e}")));
            }
            // `ClearChanges`: handed over durably, the old primary forgets them.
            if let Some(old) = old {
                old.clear().map_err(|e| self.fail(format!("recovery: clearing the old primary's change-log: {e}")))?;
            }
            self.outcome("change set handed over");
        }
        Ok((a, b))
    }

    /// Invariants 1 and 3 on the healed pair, then the repair and invariant
    /// 4: the resync engine, or a full copy when the segment is down.
    pub(super) fn check_and_repair(&mut self) -> Result<(), SimFailure> {
        let (a, b) = self.recovery_logs()?;
        let set = self.nodes[a].log.as_ref().map(|l| l.change_set()).unwrap_or_default();
        self.check_acked(a)?;
        self.check_tracked(&set, a, b)?;
        if !self.pair.down {
            return self.resync_repair(a);
        }
        self.repair(a, b)?;
        self.check_identical(a, b)
    }

    /// Whether write `i` was followed by a successful sync of its file, before any rename or unlink of it.
    pub(super) fn durably_acked(&self, i: usize) -> bool {
        let p = match &self.ops[i].spec {
            OpSpec::Block { p, .. } | OpSpec::WriteAt { p, .. } => p,
            _ => return false,
        };
        for op in &self.ops[i + 1..] {
            if op.spec.changes_existence(p) {
                return false;
            }
            if matches!(&op.spec, OpSpec::Sync { p: q, .. } if q == p) && op.state == CallState::Acked {
                return true;
            }
        }
        false
    }

    /// Invariant 1: every call that returned success is on the acting primary,
    /// unless a later call (whatever became of it) may have changed the same thing.
    pub(super) fn check_acked(&mut self, a: usize) -> Result<(), SimFailure> {
        let image = self.nodes[a].data_sim.snapshot();
        let down = self.pair.down;
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
                OpSpec::Sync { .. } => {}
                _ => namespace.push(j),
            }
        }
        let none = Vec::new();
        for i in 0..self.ops.len() {
            if self.ops[i].state != CallState::Acked || (down && !self.durably_acked(i)) {
                continue;
            }
            let spec = &self.ops[i].spec;
            fn after(v: &[usize], i: usize) -> &[usize] {
                &v[v.partition_point(|j| *j <= i)..]
            }
            let same_file = match spec {
                OpSpec::Block { p, .. } | OpSpec::WriteAt { p, .. } | OpSpec::Truncate { p, .. } => {
                    after(on_file.get(p).unwrap_or(&none), i)
                }
                _ => &[],
            };
            let later = || same_file.iter().chain(after(&namespace, i)).map(|j| &self.ops[*j]);
            let bad = |what: String| {
                Err(self.fail(format!("invariant 1: call #{i} ({}) returned success but {what}", spec.name())))
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
                                "block {block} of {p} does not hold it (fill {fill}; its blocks start with {have:?})"
                            ));
                        }
                    }
                }
                OpSpec::WriteAt { p, offset, data } => {
                    let (start, end) = (*offset, offset + data.len() as u64);
                    if later().any(|l| l.spec.changes_content(p, start, end, bs)) {
                        continue;
                    }
                    match image.get(&key(p)) {
                        Some(SimEntry::File(b)) if b.get(start as usize..end as usize) == Some(data.as_slice()) => {}
                        _ => return bad(format!("bytes {start}..{end} of {p} do not hold it")),
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
                OpSpec::Sync { .. } => {}
            }
        }
        Ok(())
    }

    /// Invariant 3: whatever differs between the segments, whichever of
    /// their live and durable images survives, is named by `set`.
    pub(super) fn check_tracked(&self, set: &ChangeSet, a: usize, b: usize) -> Result<(), SimFailure> {
        let images = |n: usize| {
            [("live", self.nodes[n].data_sim.snapshot()), ("durable", self.nodes[n].data_sim.durable_snapshot())]
        };
        let (ia, ib) = (images(a), images(b));
        for (na, x) in &ia {
            for (nb, y) in &ib {
                if let Some(what) = self.uncovered(set, x, y)? {
                    return Err(self.fail(format!(
                        "invariant 3: segment {}'s {na} image and segment {}'s {nb} image differ in {what}, \
                         which the acting primary's change set does not name",
                        self.nodes[a].dbid, self.nodes[b].dbid
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
                            return Ok(Some(format!("block {blk} of {p}")));
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

    /// A segment that is down (a double fault) is not resynchronized by
    /// `filerep recover`: it is rebuilt from the acting primary by a full
    /// copy through the stream, then the change-log is cleared.
    pub(super) fn repair(&mut self, a: usize, b: usize) -> Result<(), SimFailure> {
        self.full_copy(a, b)?;
        if let Some(log) = self.nodes[a].log.as_ref() {
            if let Err(e) = log.clear() {
                return Err(self.fail(format!("repair: clearing the change-log: {e}")));
            }
        }
        Ok(())
    }

    pub(super) fn full_copy(&mut self, a: usize, b: usize) -> Result<(), SimFailure> {
        // The copy starts from a durable base on the primary.
        if !self.checkpoint(a)? {
            return Err(self.fail("repair: the acting primary's checkpoint failed"));
        }
        // The peer starts empty.
        let peer = self.nodes[b].data.clone();
        let mut dirs = Vec::new();
        for ((fs, path), e) in self.nodes[b].data_sim.snapshot() {
            let p = FsPath::new(fs, self.rel(&path)?);
            match e {
                SimEntry::File(_) => peer.remove_file(&p).map_err(|e| self.fail(format!("repair: {e}")))?,
                SimEntry::Dir => dirs.push(p),
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.path.as_str().matches('/').count()));
        for d in &dirs {
            peer.remove_dir(d).map_err(|e| self.fail(format!("repair: {e}")))?;
        }
        if !self.checkpoint(b)? {
            return Err(self.fail("repair: the peer's checkpoint failed"));
        }
        // Everything goes through the stream: mkdir, bind, create, write_at.
        let mut stream = PrimaryStream::new(1, self.now, HEARTBEAT_MS, u64::MAX / 4);
        let mut wire = Vec::new();
        let mut frame = |h: Header, body: Vec<u8>| wire.extend(Frame::new(h, Bytes::from(body)).to_vec());
        for ((fs, path), e) in self.nodes[a].data_sim.snapshot() {
            let p = FsPath::new(fs, self.rel(&path)?);
            match e {
                SimEntry::Dir => {
                    let mut h = Header::new(Kind::Mkdir);
                    h.filespace = fs;
                    frame(stream.operation(h), path.into_bytes());
                }
                SimEntry::File(data) => {
                    let (id, bind) = stream.bind(&p).map_err(|e| self.fail(format!("repair: {e}")))?;
                    if let Some((bh, body)) = bind {
                        frame(bh, body);
                    }
                    let mut h = Header::new(Kind::Create);
                    h.file_id = id;
                    h.filespace = fs;
                    frame(stream.operation(h), Vec::new());
                    for (i, chunk) in data.chunks(MAX_WRITE_AT).enumerate() {
                        let mut h = Header::new(Kind::WriteAt);
                        h.file_id = id;
                        h.filespace = fs;
                        h.offset = (i * MAX_WRITE_AT) as u64;
                        frame(stream.operation(h), chunk.to_vec());
                    }
                }
            }
        }
        let mut h = Header::new(Kind::Shutdown);
        h.offset = stream.last_seq();
        frame(h, Vec::new());
        let mut session = MirrorSession::new(self.cfg.block_size, self.cfg.filespaces, 1);
        let mut applier = Applier::new(self.nodes[b].data.clone(), 1);
        let mut dec = Decoder::new();
        dec.feed(&wire);
        let mut ops = Vec::new();
        let mut shutdown = false;
        while let Some(f) = dec.next_frame().map_err(|e| self.fail(format!("repair decode: {e}")))? {
            match session.on_frame(&f).map_err(|e| self.fail(format!("repair: mirror refused a frame: {e}")))? {
                Step::Apply { seq, op, durable, catching_up } => ops.push(Sequenced { seq, op, durable, catching_up }),
                Step::Heartbeat => {}
                Step::Shutdown => shutdown = true,
            }
        }
        let mut at = 0;
        while at < ops.len() {
            let k = self.rng.gen_range(1..=ops.len() - at);
            applier.apply(&ops[at..at + k]).map_err(|e| self.fail(format!("repair apply: {e}")))?;
            at += k;
        }
        if !shutdown || applier.applied() != stream.last_seq() {
            return Err(self.fail(format!("repair: applied {} of {}", applier.applied(), stream.last_seq())));
        }
        if self.cfg.bug != Some(PlantedBug::RepairWithoutSync) {
            applier.request_full();
            let job = applier.take_sync_job();
            job.run(self.nodes[b].data.as_ref()).map_err(|e| self.fail(format!("repair sync: {e}")))?;
        }
        self.outcome("repaired by a full copy");
        Ok(())
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
