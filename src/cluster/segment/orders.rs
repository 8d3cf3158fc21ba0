//! The control requests a segment carries out ([`Shared::order`]): an
//! order of the acting arbiter comes fenced by its epoch and is checked
//! against the highest epoch obeyed ([`crate::core::fence`]) before it
//! runs; probes, reports and inspection need none.

use super::*;

impl Shared {
    /// Carry out one control request: an order of the acting arbiter comes
    /// fenced by its epoch; the rest as they are.
    pub(super) fn order(self: &Arc<Self>, req: SegmentRequest) -> SegmentResponse {
        match req {
            SegmentRequest::Fenced { epoch, order } => self.obey(Some(epoch), *order),
            other => self.obey(None, other),
        }
    }

    /// An order of the arbiter of `epoch` (`None`: none given). One that
    /// needs an epoch is checked ([`crate::core::fence`]) and carried out
    /// under the fence: refused if a newer epoch was obeyed (or, without
    /// one, if any was); a newer epoch is recorded durably first.
    fn obey(self: &Arc<Self>, epoch: Option<u64>, order: SegmentRequest) -> SegmentResponse {
        use std::sync::atomic::Ordering;
        if matches!(order, SegmentRequest::Fenced { .. }) {
            return refused("a fenced order inside a fenced order".into());
        }
        let _fence = (epoch.is_some() || order.needs_epoch()).then(|| lock(&self.fence));
        let obeyed = self.epoch.load(Ordering::SeqCst);
        let newer = match epoch {
            Some(e) => crate::core::fence::admit(obeyed, e),
            None if order.needs_epoch() => crate::core::fence::admit_unfenced(obeyed).map(|()| None),
            None => Ok(None),
        };
        match newer {
            Err(why) => return refused(why),
            Ok(Some(e)) => {
                if let Err(err) = RoleRecord::note_epoch(&self.cfg.state_dir, e) {
                    return refused(format!("cannot record arbiter epoch {e}: {err}"));
                }
                tracing::warn!(epoch = e, previous = obeyed, "orders of a new arbiter epoch");
                self.epoch.store(e, Ordering::SeqCst);
            }
            Ok(None) => {}
        }
        self.carry_out(order)
    }

    /// Carry out one control request whose epoch was checked.
    fn carry_out(self: &Arc<Self>, req: SegmentRequest) -> SegmentResponse {
        match req {
            SegmentRequest::Fenced { .. } => refused("a fenced order inside a fenced order".into()),
            SegmentRequest::Probe => SegmentResponse::Status(self.status()),
            SegmentRequest::BecomeMirror { generation } => match self.become_mirror(generation) {
                Ok(()) => SegmentResponse::Done,
                Err(e) => refused(e.to_string()),
            },
            SegmentRequest::BecomePrimary { generation, mirror } => {
                // Connecting (and maybe asking the arbiter) takes time, and
                // the arbiter may be waiting on this reply: answer now.
                {
                    let mut role = lock(&self.role);
                    // A primary of this generation that failed its calls
                    // (it could not reach the arbiter when it lost its
                    // mirror) starts again, as the arbiter now says.
                    if matches!(&*role, Role::Primary(p) if p.generation() == generation && !matches!(p.mode(), Mode::Failed(_)))
                    {
                        return SegmentResponse::Done;
                    }
                    if matches!(&*role, Role::Starting) {
                        return refused("already carrying out an order".into());
                    }
                    let old = std::mem::replace(&mut *role, Role::Starting);
                    drop(role);
                    self.end_role(old);
                    // The mirror's session ends with a sync of all it
                    // applied; if that failed (rule 8), what it had only
                    // applied may be gone: it must not serve. Its status says
                    // faulted, and the arbiter counts it lost (a double fault
                    // when its old primary is gone too). Ending the role
                    // recorded how it ended; idle, the record is the state
                    // file's.
                    let record = self.mirror_record();
                    let refusal =
                        crate::core::mirror::promotion_refusal(record.fault.as_deref(), record.lost_power_streaming);
                    if let Some(why) = refusal {
                        tracing::error!(generation, reason = %why, "role: promotion refused");
                        *lock(&self.fault) = Some(why.clone());
                        *lock(&self.role) = Role::Stopped(why.clone());
                        return refused(why);
                    }
                }
                let me = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("filerep-promote".into())
                    .spawn(move || me.become_primary(generation, mirror));
                match spawned {
                    Ok(_) => SegmentResponse::Done,
                    Err(e) => refused(format!("cannot start: {e}")),
                }
            }
            SegmentRequest::TakeChanges => {
                if matches!(&*lock(&self.role), Role::Primary(_) | Role::Starting) {
                    return refused("the acting primary keeps its change-log".into());
                }
                // What an earlier fault left in doubt here is rewritten
                // before the set naming it leaves (and is cleared).
                if let Err(e) = self.settle_in_doubt() {
                    return refused(format!("files in doubt since a fault: {e}"));
                }
                SegmentResponse::Changes(WireChangeSet::from_set(&self.changelog.change_set()))
            }
            SegmentRequest::AddChanges { set } => {
                if !matches!(&*lock(&self.role), Role::Primary(_)) {
                    return refused("only the acting primary takes a peer's changes".into());
                }
                let set = match set.to_set(self.filespaces.len()) {
                    Ok(s) => s,
                    Err(e) => return refused(format!("bad change set: {e}")),
                };
                match self.changelog.merge(&set) {
                    Ok(()) => {
                        tracing::info!(
                            blocks = set.distinct_blocks(),
                            paths = set.touched.len(),
                            "a peer's changes added to the change-log"
                        );
                        SegmentResponse::Done
                    }
                    Err(e) => refused(e.to_string()),
                }
            }
            SegmentRequest::ClearChanges => {
                if matches!(&*lock(&self.role), Role::Primary(_) | Role::Starting) {
                    return refused("the acting primary keeps its change-log".into());
                }
                match self.changelog.clear() {
                    Ok(()) => SegmentResponse::Done,
                    Err(e) => refused(e.to_string()),
                }
            }
            SegmentRequest::StartResync { generation, mirror, full, max_rate, compare, checkpoint_bytes } => {
                let p = match &*lock(&self.role) {
                    Role::Primary(p) if p.generation() == generation => p.clone(),
                    _ => return refused(format!("not the acting primary of generation {generation}")),
                };
                {
                    let mut rs = lock(&self.resync);
                    // One that lost its mirror stops at its next step: let it end.
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while rs.running && !p.resyncing() {
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            return refused("the previous resync is still stopping; run filerep recover again".into());
                        }
                        rs = self.resync_ended.wait_timeout(rs, left).unwrap_or_else(|e| e.into_inner()).0;
                    }
                    if rs.running {
                        // A mirror that owes a full resync is not repaired by one that is not.
                        if full && !rs.full {
                            return refused(
                                "a resync that is not full is running; a full one was asked for: run filerep recover -F again once it ends"
                                    .into(),
                            );
                        }
                        // A rate given to a later recover reaches the running resync.
                        if let (Some(rate), Some(progress)) = (max_rate, rs.progress.as_ref()) {
                            progress.max_rate.store(rate, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(bytes_per_second = rate, "the running resync's rate changed");
                        }
                        return SegmentResponse::Done;
                    }
                    rs.running = true;
                    rs.full = full;
                    rs.error = None;
                    rs.progress = Some(Arc::new(crate::runtime::resync::Progress::default()));
                }
                let me = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("filerep-resync".into())
                    .spawn(move || me.run_resync(p, generation, mirror, (full, compare), (max_rate, checkpoint_bytes)));
                match spawned {
                    Ok(_) => SegmentResponse::Done,
                    Err(e) => {
                        lock(&self.resync).running = false;
                        refused(format!("cannot start the resync: {e}"))
                    }
                }
            }
            SegmentRequest::RebuildMirror => {
                let _order = lock(&self.orders);
                let forgotten = match &*lock(&self.role) {
                    Role::Mirror { server, .. } => server.forget_fault_for_rebuild().map(drop),
                    // Restarted, not yet given its role: its state file says.
                    Role::Idle => self.forget_recorded_mirror_fault(),
                    _ => return refused("not acting as mirror: nothing to rebuild".into()),
                };
                match forgotten {
                    Ok(()) => {
                        lock(&self.mirror_record).fault = None;
                        SegmentResponse::Done
                    }
                    Err(e) => refused(format!("cannot forget the fault: {e}")),
                }
            }
            SegmentRequest::Rebind { data_listen } => {
                let _order = lock(&self.orders);
                if matches!(&*lock(&self.role), Role::Mirror { .. }) {
                    return refused("acting as mirror: its replication address cannot change now".into());
                }
                let mut current = lock(&self.data_listener);
                let same = current.local_addr().ok().map(|a| a.to_string()) == Some(data_listen.clone());
                if !same {
                    match TcpListener::bind(&data_listen) {
                        Ok(l) => {
                            tracing::warn!(%data_listen, "replication address changed");
                            *current = l;
                        }
                        Err(e) => return refused(format!("cannot listen on {data_listen}: {e}")),
                    }
                }
                SegmentResponse::Done
            }
            SegmentRequest::StartVerify { generation, repair } => match self.start_verify(generation, repair) {
                Ok(id) => SegmentResponse::Verifying { id },
                Err(e) => refused(e.to_string()),
            },
            SegmentRequest::VerifyReport { id } => {
                let v = lock(&self.verify);
                match &v.report {
                    Some(r) if v.id == id => SegmentResponse::VerifyReport(Box::new(r.clone())),
                    _ if v.id == id && v.running => refused(format!("verification {id} is still running")),
                    _ if v.id == id => {
                        refused(format!("verification {id} stopped short: {}", v.error.clone().unwrap_or_default()))
                    }
                    _ => refused(format!("no report for verification {id} (the last one is {})", v.id)),
                }
            }
            SegmentRequest::Inspect { paths, ports } => {
                if paths.len() > MAX_INSPECT || ports.len() > MAX_INSPECT {
                    return refused(format!(
                        "{} paths and {} ports asked; at most {MAX_INSPECT} of each",
                        paths.len(),
                        ports.len()
                    ));
                }
                if let Some((p, _)) = paths.iter().find(|(p, _)| p.as_os_str().len() > 4096) {
                    return refused(format!("a path of {} bytes asked; at most 4096", p.as_os_str().len()));
                }
                let paths = crate::cluster::hosts::inspect_paths(&paths)
                    .into_iter()
                    .map(|r| r.map_err(|e| e.to_string()))
                    .collect();
                let ports = ports.iter().map(|(a, p)| crate::cluster::hosts::port_free(a, *p)).collect();
                SegmentResponse::Inspected { paths, ports }
            }
            SegmentRequest::Stop => {
                tracing::info!("stop ordered");
                self.stop.stop();
                SegmentResponse::Done
            }
        }
    }

    /// Forget, durably, the disk fault an idle segment's mirror state file
    /// records (what `MirrorServer::forget_fault_for_rebuild` does for a
    /// serving mirror): the full resync the arbiter starts next writes
    /// every block of its files again.
    fn forget_recorded_mirror_fault(&self) -> Result<()> {
        let mut state = crate::runtime::mirror::MirrorState::load(&self.cfg.state_dir)?;
        if let Some(old) = state.fault.take() {
            state.store(&self.cfg.state_dir)?;
            tracing::warn!(fault = %old, "mirror fault forgotten: a full resync rebuilds its files");
        }
        Ok(())
    }

    /// Start a verification on this acting primary (or join the one that
    /// runs, if it was started the same way); its id.
    fn start_verify(self: &Arc<Self>, generation: u64, repair: bool) -> Result<u64> {
        let p = match &*lock(&self.role) {
            Role::Primary(p) if p.generation() == generation => p.clone(),
            _ => return Err(Error::Rejected(format!("not the acting primary of generation {generation}"))),
        };
        p.verify_check(p.attachment())
            .map_err(|e| Error::Rejected(format!("only a synchronized pair can be verified: {e}")))?;
        let mut v = lock(&self.verify);
        if v.running {
            if v.repair == repair {
                return Ok(v.id);
            }
            return Err(Error::Rejected(format!(
                "verification {} ({}) is running: wait for it to end",
                v.id,
                if v.repair { "with repair" } else { "without repair" }
            )));
        }
        let progress = Arc::new(crate::verify::online::VerifyProgress::default());
        *v = VerifyJob {
            id: v.id + 1,
            repair,
            running: true,
            progress: Some(progress.clone()),
            report: None,
            error: None,
        };
        let id = v.id;
        drop(v);
        let me = self.clone();
        let spawned = std::thread::Builder::new().name("filerep-verify".into()).spawn(move || {
            let span = tracing::info_span!("verify", id, generation, repair);
            let _e = span.enter();
            let opts = crate::verify::online::VerifyOptions { repair, ..Default::default() };
            let result = crate::verify::online::run(&p, &opts, &progress);
            let mut v = lock(&me.verify);
            v.running = false;
            match result {
                Ok(r) => v.report = Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "verification stopped short");
                    v.error = Some(e.to_string());
                }
            }
        });
        match spawned {
            Ok(_) => Ok(id),
            Err(e) => {
                let mut v = lock(&self.verify);
                v.running = false;
                v.error = Some(format!("cannot start: {e}"));
                Err(Error::io("spawning the verification thread", e))
            }
        }
    }

    /// Take the mirror back (unless it already is) and resync it.
    fn run_resync(
        &self,
        p: Arc<Primary>,
        generation: u64,
        mirror: String,
        how: (bool, bool),
        limits: (Option<u64>, Option<u64>),
    ) {
        let (full, compare) = how;
        let (max_rate, checkpoint_bytes) = limits;
        let span = tracing::info_span!("resync", generation, full);
        let _e = span.enter();
        let progress = lock(&self.resync).progress.clone().unwrap_or_default();
        let result = (|| {
            if p.mode() == Mode::ChangeTracking {
                let attached = self.connect(&mirror).and_then(|conn| p.attach_mirror(conn, &mirror));
                if let Err(e) = attached {
                    // Still alone: the arbiter hears the mirror is not back.
                    let why = format!("the mirror could not be taken back: {e}");
                    let _ = self.remote_arbiter().mirror_lost(self.cfg.content, generation, &why);
                    return Err(e);
                }
            } else if !p.resyncing() {
                return Err(Error::InvalidArgument(format!("the pair is {:?}: nothing to resync", p.mode())));
            }
            let opts = crate::runtime::resync::ResyncOptions {
                full,
                max_rate,
                finish_timeout: None,
                checkpoint_bytes,
                compare,
                planted: None,
            };
            crate::runtime::resync::run(&p, &opts, &progress)
        })();
        let mut rs = lock(&self.resync);
        rs.running = false;
        self.resync_ended.notify_all();
        match result {
            Ok(r) => {
                tracing::warn!(paths = r.paths, blocks = r.blocks, bytes = r.bytes, seconds = r.seconds, "resync done");
            }
            Err(e) => {
                tracing::error!(error = %e, "resync stopped short");
                rs.error = Some(e.cause());
            }
        }
    }
}
