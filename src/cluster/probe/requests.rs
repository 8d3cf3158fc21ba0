//! What the acting arbiter answers ([`State::answer`]): a primary's
//! "my mirror is gone", and the operators' requests (recover, rebalance,
//! add mirrors, verify, the catalog). Every change is committed before
//! the answer goes out ([`State::transact`]).

use super::*;

impl State {
    /// Answer a request; one that may have changed the catalog wakes the
    /// round loop, so the orders it calls for go out now. An arbiter that
    /// does not act answers only who it is.
    pub(super) fn answer(&self, req: ArbiterRequest) -> ArbiterResponse {
        if matches!(req, ArbiterRequest::Leadership) {
            return self.leadership();
        }
        let me = &self.me;
        match self.store.leadership() {
            Leadership::Acting { .. } => {}
            Leadership::Standby { leader } => {
                return ArbiterResponse::NotActing { leader, why: format!("arbiter {me} stands by") }
            }
            Leadership::Unreachable(why) => {
                let why = format!("arbiter {me} cannot reach its coordinator: {why}");
                return ArbiterResponse::NotActing { leader: None, why };
            }
        }
        if !self.sure() {
            return ArbiterResponse::Refused(format!(
                "the arbiter could not store its catalog nor read it back ({}): it decides nothing until it can",
                self.store.describe()
            ));
        }
        let may_change = !matches!(req, ArbiterRequest::Catalog | ArbiterRequest::Verify { .. });
        let r = self.answer_now(req);
        if may_change && !matches!(r, ArbiterResponse::Refused(_)) {
            self.nudge.nudge();
        }
        r
    }

    fn answer_now(&self, req: ArbiterRequest) -> ArbiterResponse {
        let refused = |r: std::result::Result<ArbiterResponse, String>| r.unwrap_or_else(ArbiterResponse::Refused);
        match req {
            // Answered before leadership is weighed ([`State::answer`]).
            ArbiterRequest::Leadership => self.leadership(),
            ArbiterRequest::Catalog => ArbiterResponse::Catalog(Box::new(lock(&self.catalog).catalog.clone())),
            ArbiterRequest::StoreCatalog => {
                tracing::warn!(catalog = %self.store.describe(), "catalog written again on request");
                refused(self.transact(&mut lock(&self.catalog), |_| Ok((true, ArbiterResponse::Started))))
            }
            ArbiterRequest::Recover { content, full, max_rate, compare, checkpoint_bytes } => {
                self.recover(content, (full, compare), (max_rate, checkpoint_bytes))
            }
            ArbiterRequest::AddMirrors { mirrors } => self.add_mirrors(mirrors),
            ArbiterRequest::Verify { content, repair } => self.verify(content, repair),
            ArbiterRequest::Rebalance { content } => {
                // Committed first; the next rounds give the orders (mirror first:
                // the old primary shuts down in order, then the other streams to it).
                let r = self.transact(&mut lock(&self.catalog), |cat| match cat.apply(content, &Event::Rebalance) {
                    None => Err(format!("no content {content} in the catalog")),
                    Some(o) if !o.changed => Err(format!("content {content}: {}", o.reason)),
                    Some(_) => Ok((true, ArbiterResponse::Started)),
                });
                refused(r)
            }
            ArbiterRequest::MirrorLost { dbid, content, generation, reason } => {
                let span = tracing::info_span!("mirror_lost", dbid, content, generation);
                let _e = span.enter();
                tracing::warn!(%reason, "a primary reports its mirror lost");
                // Committed before the primary hears it (it then goes on alone).
                let r = self.transact(&mut lock(&self.catalog), |cat| {
                    if cat.content_of(dbid) != Some(content) {
                        return Err(format!("dbid {dbid} is not a segment of content {content}"));
                    }
                    let o = cat
                        .apply(content, &Event::MirrorLost { reporter: dbid, generation })
                        .ok_or_else(|| format!("no content {content}"))?;
                    let answer = match o.verdict {
                        Verdict::MirrorDown => ArbiterResponse::MirrorDown,
                        Verdict::Demoted | Verdict::None => ArbiterResponse::Demoted,
                    };
                    Ok((o.changed, answer))
                });
                refused(r)
            }
        }
    }

    /// `filerep recover`: the core's [`arbiter::recover`] says each step,
    /// asked again after each one this carries out with a fresh probe of
    /// the acting mirror, until it restores a down pair, starts a resync
    /// (the pair goes to `r` in the stored catalog, then the acting primary
    /// is told to take its mirror back), or refuses.
    fn recover(&self, content: u32, how: (bool, bool), limits: (Option<u64>, Option<u64>)) -> ArbiterResponse {
        let (full, compare) = how;
        let (max_rate, checkpoint_bytes) = limits;
        let span = tracing::info_span!("recover", content, full);
        let _e = span.enter();
        // Each step at most once: a rebuild or a hand-over that did not take
        // is refused rather than tried again.
        let mut done: Vec<arbiter::Recover> = Vec::new();
        loop {
            let (pair, mirror_control) = {
                let snap = lock(&self.catalog);
                let Some(cp) = snap.catalog.pair(content) else {
                    return ArbiterResponse::Refused(format!("no content {content} in the catalog"));
                };
                let m = cp.pair.acting_mirror().dbid;
                (cp.pair.clone(), cp.address(m).map(|a| a.control.clone()))
            };
            let mirror = match (&mirror_control, pair.down) {
                (Some(mc), false) => self.probe(mc).map(|s| s.seen()),
                _ => None,
            };
            let step = arbiter::recover(&pair, mirror.as_ref(), full, crate::core::planted_in_process());
            if done.contains(&step) {
                return ArbiterResponse::Refused(match step {
                    arbiter::Recover::HandOver { .. } => format!(
                        "content {content}: the returning old primary's activity log is not handed over yet; \
                         run filerep recover again"
                    ),
                    _ => format!("content {content}: the mirror still says it faulted after it was told to forget it"),
                });
            }
            tracing::debug!(?step, "recover step");
            match &step {
                arbiter::Recover::Refused(why) => {
                    return ArbiterResponse::Refused(self.faulted_primary(&pair).unwrap_or_else(|| why.clone()))
                }
                arbiter::Recover::Restore => return self.restore(content),
                arbiter::Recover::RebuildMirror { dbid } => {
                    let Some(mc) = &mirror_control else {
                        return ArbiterResponse::Refused(format!("content {content}: addresses missing"));
                    };
                    // Stored first: should the resync not start after the
                    // mirror forgot its fault, the next recover is full too.
                    let owed = self.transact(&mut lock(&self.catalog), |cat| {
                        match cat.apply(content, &Event::MirrorRebuilt) {
                            None => Err(format!("no content {content} in the catalog")),
                            Some(o) => Ok((o.changed, ())),
                        }
                    });
                    if let Err(why) = owed {
                        return ArbiterResponse::Refused(why);
                    }
                    match self.order(mc, SegmentRequest::RebuildMirror) {
                        Some(SegmentResponse::Done) => {
                            tracing::warn!(content, mirror = dbid, "a faulted mirror is rebuilt")
                        }
                        Some(SegmentResponse::Refused(why)) => {
                            return ArbiterResponse::Refused(format!("content {content}: mirror {dbid} refused: {why}"))
                        }
                        _ => {
                            return ArbiterResponse::Refused(format!("content {content}: mirror {dbid} did not answer"))
                        }
                    }
                }
                arbiter::Recover::HandOver { from, to } => {
                    let snap = lock(&self.catalog);
                    let addr =
                        |d: u32| snap.catalog.pair(content).and_then(|cp| cp.address(d)).map(|a| a.control.clone());
                    let (Some(fc), Some(tc)) = (addr(*from), addr(*to)) else {
                        return ArbiterResponse::Refused(format!("content {content}: addresses missing"));
                    };
                    drop(snap);
                    self.hand_over(&fc, &tc, self.probe(&tc).as_ref());
                }
                arbiter::Recover::Resync { full } => {
                    return self.start_resync(content, *full, compare, (max_rate, checkpoint_bytes))
                }
            }
            done.push(step);
        }
    }

    /// Why a down pair cannot be restored when its acting primary answers
    /// and says it faulted (the catalog counts it lost, as if it did not
    /// answer): its files are in doubt, and which copy to restore from is
    /// the operator's decision (docs/operations.md).
    fn faulted_primary(&self, pair: &crate::core::pair::Pair) -> Option<String> {
        if !pair.down {
            return None;
        }
        let p = pair.acting_primary().dbid;
        let control = lock(&self.catalog).catalog.pair(pair.content)?.address(p)?.control.clone();
        let status = self.probe(&control).filter(|s| s.dbid == p && s.faulted)?;
        Some(format!(
            "content {} is down, and its acting primary {p} answers but faulted ({}): its files are in doubt, so it \
             is not restored; which copy to bring back is the operator's decision (docs/operations.md, What \
             happens when: a mirror's disk fails as it is promoted)",
            pair.content, status.detail
        ))
    }

    /// `filerep recover` on a down pair: back from its acting primary's own
    /// data and change-log, once that primary answers again (the rounds
    /// then order it to serve alone at the new generation).
    fn restore(&self, content: u32) -> ArbiterResponse {
        let mut snap = lock(&self.catalog);
        let restored = self.transact(&mut snap, |cat| match cat.apply(content, &Event::Restore) {
            None => Err(format!("no content {content} in the catalog")),
            Some(o) => Ok((o.changed, o.reason)),
        });
        match restored {
            Ok(reason) => {
                tracing::warn!(content, %reason, "restored a down segment");
                let generation = snap.catalog.pair(content).map(|c| c.pair.generation).unwrap_or(0);
                ArbiterResponse::Restored { generation }
            }
            Err(why) => ArbiterResponse::Refused(why),
        }
    }

    /// The pair goes to `r` in the stored catalog, then its acting primary
    /// is told to take its mirror back.
    fn start_resync(
        &self,
        content: u32,
        full: bool,
        compare: bool,
        (max_rate, checkpoint_bytes): (Option<u64>, Option<u64>),
    ) -> ArbiterResponse {
        let (order, primary_addr) = {
            let mut snap = lock(&self.catalog);
            let Some(cp) = snap.catalog.pair(content).cloned() else {
                return ArbiterResponse::Refused(format!("no content {content} in the catalog"));
            };
            let (p, m) = (cp.pair.acting_primary().dbid, cp.pair.acting_mirror().dbid);
            let (Some(pa), Some(ma)) = (cp.address(p), cp.address(m)) else {
                return ArbiterResponse::Refused(format!("content {content}: addresses missing"));
            };
            let started = self.transact(&mut snap, |cat| match cat.pair(content).map(|c| c.pair.mode) {
                None => Err(format!("no content {content} in the catalog")),
                Some(PairMode::Resynchronizing) => Ok((false, ())),
                Some(_) => Ok((cat.apply(content, &Event::ResyncStarted).is_some_and(|o| o.changed), ())),
            });
            if let Err(why) = started {
                return ArbiterResponse::Refused(why);
            }
            let generation = snap.catalog.pair(content).map(|c| c.pair.generation).unwrap_or(0);
            let mirror = ma.data.clone();
            (
                SegmentRequest::StartResync { generation, mirror, full, max_rate, compare, checkpoint_bytes },
                pa.control.clone(),
            )
        };
        match self.order(&primary_addr, order) {
            Some(SegmentResponse::Done) => ArbiterResponse::Started,
            Some(SegmentResponse::Refused(why)) => ArbiterResponse::Refused(format!("the primary refused: {why}")),
            _ => ArbiterResponse::Refused("the primary did not answer; the resync did not start".into()),
        }
    }

    /// Start a verification: only a synchronized pair with both segments
    /// up; the acting primary runs it (and refuses if it is not streaming).
    fn verify(&self, content: u32, repair: bool) -> ArbiterResponse {
        let span = tracing::info_span!("verify", content, repair);
        let _e = span.enter();
        let (dbid, generation, addr) = {
            let snap = lock(&self.catalog);
            let Some(cp) = snap.catalog.pair(content) else {
                return ArbiterResponse::Refused(format!("no content {content} in the catalog"));
            };
            let pair = &cp.pair;
            if pair.down {
                return ArbiterResponse::Refused(format!("content {content} is down: recover it first"));
            }
            if pair.mode != PairMode::Synchronized || !pair.segments.iter().all(|s| s.up) {
                return ArbiterResponse::Refused(format!(
                    "content {content} is not synchronized (mode {}{}): only a synchronized pair can be verified; \
                     run filerep recover first",
                    pair.mode.letter(),
                    if pair.segments.iter().all(|s| s.up) { "" } else { ", a segment is down" }
                ));
            }
            let p = pair.acting_primary().dbid;
            let Some(a) = cp.address(p) else {
                return ArbiterResponse::Refused(format!("content {content}: addresses missing"));
            };
            (p, pair.generation, a.control.clone())
        };
        match self.order(&addr, SegmentRequest::StartVerify { generation, repair }) {
            Some(SegmentResponse::Verifying { id }) => {
                tracing::info!(dbid, id, "verification started");
                ArbiterResponse::Verifying { dbid, generation, id }
            }
            Some(SegmentResponse::Refused(why)) => ArbiterResponse::Refused(format!("the primary refused: {why}")),
            _ => ArbiterResponse::Refused("the primary did not answer; the verification did not start".into()),
        }
    }

    /// `filerep addmirrors`: every new mirror is checked against the whole
    /// catalog before any is added; then all are added in one store, each
    /// pair not in sync (`n`) until a full resync builds its mirror.
    fn add_mirrors(&self, mirrors: Vec<NewMirror>) -> ArbiterResponse {
        let span = tracing::info_span!("add_mirrors", count = mirrors.len());
        let _e = span.enter();
        let added = self.transact(&mut lock(&self.catalog), |cat| {
            let mut next = cat.clone();
            for m in &mirrors {
                next.add_mirror(m.content, m.address.clone(), m.primary_data.clone()).map_err(|why| {
                    tracing::error!(content = m.content, %why, "mirror refused");
                    format!("content {}: {why}", m.content)
                })?;
            }
            next.check().map_err(|why| format!("the catalog would be invalid: {why}"))?;
            *cat = next;
            Ok((true, ()))
        });
        match added {
            Ok(()) => ArbiterResponse::Started,
            Err(why) => ArbiterResponse::Refused(format!("{why}; nothing was added")),
        }
    }
}
