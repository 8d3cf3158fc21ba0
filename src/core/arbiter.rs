//! The arbiter's probe round as decisions: what the probes saw becomes
//! events for the pair's state machine ([`crate::core::pair`]), and the
//! pair's state becomes orders for its segments. The arbiter process
//! probes, stores the catalog and sends the orders; the simulator does the
//! same with its segments. Neither decides anything of its own.

use super::pair::{Event, Pair, PairMode};
use super::PlantedBug;
use serde::{Deserialize, Serialize};

/// What a segment process is doing, as its status reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acting {
    /// Waiting for the arbiter; writes nothing.
    Idle,
    /// Carrying out an order.
    Starting,
    Mirror,
    Primary,
    /// Refusing all work (a failed order, or stopping).
    Stopped,
}

/// What one probe saw of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Who answered at the segment's address.
    pub dbid: u32,
    pub acting: Acting,
    pub generation: u64,
    /// The primary's mode (`s` streaming, `c` change tracking, `d`
    /// deciding, `f` failed; `-` for other roles).
    pub mode: char,
    /// Its change-log holds changes: for a segment that is not serving,
    /// what it wrote before it stopped (its activity log after a crash).
    pub changes_pending: bool,
    /// A mirror that faulted (its disk failed, rule 8): its files are in
    /// doubt, so it is never promoted and no longer counts as in sync.
    pub faulted: bool,
    /// A primary failed (`f`) only because it could not ask the arbiter
    /// about its lost mirror: its change-log holds what the mirror may
    /// lack. (A primary the arbiter demoted, or whose change-log failed,
    /// is failed for good.)
    pub unheard: bool,
    /// A mirror (serving, or back and idle) whose host went down while it
    /// streamed: writes it acknowledged as applied and had not made
    /// durable may be gone, so it no longer counts as in sync and is never
    /// promoted (`core::mirror::promotion_refusal`).
    pub lost_power_streaming: bool,
}

impl Seen {
    /// A mirror, serving or restarted and idle (its state file speaks
    /// then), whose disk failed: its files are in doubt (rule 8).
    pub fn mirror_disk_failed(&self) -> bool {
        self.faulted && self.as_mirror()
    }

    /// A mirror, serving or restarted and idle, whose host went down while
    /// it streamed.
    pub fn mirror_lost_power(&self) -> bool {
        self.lost_power_streaming && self.as_mirror()
    }

    /// Serving as mirror, or idle: what a mirror's state file says counts.
    fn as_mirror(&self) -> bool {
        matches!(self.acting, Acting::Mirror | Acting::Idle)
    }
}

/// An order for a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    BecomeMirror {
        dbid: u32,
        generation: u64,
    },
    /// Serve as primary; `mirror`: stream to that segment (else alone, in change tracking).
    BecomePrimary {
        dbid: u32,
        generation: u64,
        mirror: Option<u32>,
    },
    /// Move a returning old primary's change set to the acting primary, then clear it.
    HandOver {
        from: u32,
        to: u32,
    },
}

/// What the probes of one pair say happened. A segment that does not
/// answer (or where another answers) failed its probe. The acting primary
/// found idle with changes in its log, in a synchronized pair, restarted
/// after a crash: what it wrote last may not be on the mirror, nor what the
/// mirror applied on it. If its mirror is serving, the mirror has what was
/// acknowledged and is promoted (the old primary returns as the mirror and
/// hands its activity log over, rule 5); if the mirror restarted too, it
/// counts as lost instead, and the primary's log names what may differ for
/// the resync.
pub fn events(pair: &Pair, probes: &[(u32, Option<Seen>)]) -> Vec<Event> {
    let seen = |dbid: u32| probes.iter().find(|(d, _)| *d == dbid).and_then(|(_, s)| *s).filter(|s| s.dbid == dbid);
    let mut out = Vec::new();
    if !pair.down && pair.mode == PairMode::Synchronized {
        let (p, m) = (pair.acting_primary(), pair.acting_mirror());
        let restarted = seen(p.dbid).is_some_and(|s| s.acting == Acting::Idle && s.changes_pending);
        let mirror_serving = seen(m.dbid)
            .is_some_and(|s| s.acting == Acting::Mirror && s.generation >= pair.generation && !s.lost_power_streaming);
        // A mirror found idle beside a primary that serves restarted on
        // its own: what it had only applied may be gone, so it is no longer
        // in sync (its primary may not have been able to say so).
        let mirror_restarted = seen(m.dbid).is_some_and(|s| s.acting == Acting::Idle)
            && seen(p.dbid).is_some_and(|s| s.acting == Acting::Primary && s.generation == pair.generation);
        // A faulted mirror whose primary could not tell the arbiter (cut
        // off from it) must not be promoted: it leaves the pair's sync
        // now, so a later loss of the primary is a double fault.
        // (Idle: restarted, its state file still says its disk failed.)
        let mirror_faulted = seen(m.dbid).is_some_and(|s| s.mirror_disk_failed());
        // A mirror whose host went down while it streamed says so once
        // back (idle, or serving again before its primary reconnected):
        // what it acknowledged as applied may be gone, so it leaves the
        // pair's sync now, and a loss of the primary is a double fault
        // (found by the simulator, seed 605 of --steady: the arbiter, down
        // itself meanwhile, promoted such a mirror while the primary was
        // cut off, and writes the primary had acknowledged were lost).
        let mirror_cut = seen(m.dbid).is_some_and(|s| s.mirror_lost_power());
        if restarted {
            out.push(Event::ProbeFailed { dbid: if mirror_serving { p.dbid } else { m.dbid } });
        } else if mirror_restarted || mirror_faulted || mirror_cut {
            out.push(Event::ProbeFailed { dbid: m.dbid });
        }
    }
    if !pair.down && matches!(pair.mode, PairMode::Synchronized | PairMode::Resynchronizing) {
        // The acting primary failed its calls after losing its mirror: it
        // could not reach this arbiter then (rule 3). What it could not hear
        // is decided now: the mirror is down, it goes on alone and its
        // change-log holds what the mirror may lack. Left so, the pair stays
        // stuck; told to stream as synchronized, that difference would be
        // recorded nowhere.
        let p = pair.acting_primary();
        if seen(p.dbid).is_some_and(|s| failed_unheard(pair, &s)) {
            out.push(Event::MirrorLost { reporter: p.dbid, generation: pair.generation });
        }
    }
    // The acting primary's probe applies last: a mirror that failed its
    // probe in this same round is down before the primary's failure is
    // weighed, so it is never promoted (both gone is a double fault that
    // keeps the primary, whose data `filerep recover` restores from).
    let acting = (!pair.down).then(|| pair.acting_primary().dbid);
    let others = probes.iter().filter(|(d, _)| Some(*d) != acting);
    for (dbid, _) in others.chain(probes.iter().filter(|(d, _)| Some(*d) == acting)) {
        match seen(*dbid) {
            // An acting primary whose files are in doubt (a mirror whose
            // disk failed as it was promoted, rule 8) cannot serve: it counts
            // as lost. With its mirror already down, a double fault.
            Some(s) if Some(*dbid) == acting && s.faulted => out.push(Event::ProbeFailed { dbid: *dbid }),
            Some(_) => out.push(Event::SegmentUp { dbid: *dbid }),
            None => out.push(Event::ProbeFailed { dbid: *dbid }),
        }
    }
    out
}

/// The acting primary of this generation, failed (`f`) only because it
/// could not ask the arbiter about its lost mirror.
fn failed_unheard(pair: &Pair, s: &Seen) -> bool {
    s.acting == Acting::Primary && s.generation == pair.generation && s.mode == 'f' && s.unheard
}

/// A resync is done when the acting primary streams with its change-log
/// drained (it clears it only once the mirror has everything durably).
pub fn resync_completed(pair: &Pair, probes: &[(u32, Option<Seen>)]) -> bool {
    if pair.down || pair.mode != PairMode::Resynchronizing {
        return false;
    }
    let acting = pair.acting_primary().dbid;
    probes.iter().any(|(d, s)| *d == acting && s.is_some_and(|s| s.acting == Acting::Primary && s.mode == 's'))
}

/// Everything one probe round applies to a pair, in order: what the probes
/// say happened ([`events`]), then, if the pair it leaves is done
/// resynchronizing, [`Event::ResyncCompleted`]. The arbiter process and
/// the simulator both apply exactly these.
pub fn round_events(pair: &Pair, probes: &[(u32, Option<Seen>)]) -> Vec<Event> {
    let mut out = events(pair, probes);
    let mut after = pair.clone();
    for e in &out {
        after.apply(e);
    }
    if resync_completed(&after, probes) {
        out.push(Event::ResyncCompleted);
    }
    out
}

/// What each segment of the pair must be told, given what its probe saw.
/// Mirrors first, so a primary told to stream finds its mirror listening;
/// a down pair gets no order (the catalog says why).
pub fn orders(pair: &Pair, probes: &[(u32, Option<Seen>)], bug: Option<PlantedBug>) -> Vec<Order> {
    let mut out = Vec::new();
    if pair.down {
        return out;
    }
    let seen = |dbid: u32| probes.iter().find(|(d, _)| *d == dbid).and_then(|(_, s)| *s).filter(|s| s.dbid == dbid);
    let (p, m, gen) = (pair.acting_primary(), pair.acting_mirror(), pair.generation);
    let (ps, ms) = (seen(p.dbid), seen(m.dbid));
    if let (true, Some(ms)) = (m.up, ms) {
        let stale = ms.acting != Acting::Mirror || ms.generation < gen;
        if stale && ms.acting != Acting::Starting {
            out.push(Order::BecomeMirror { dbid: m.dbid, generation: gen });
        } else if ms.acting == Acting::Mirror && ms.changes_pending && ps.is_some_and(|p| p.acting == Acting::Primary) {
            out.push(Order::HandOver { from: m.dbid, to: p.dbid });
        }
    }
    if let (true, Some(ps)) = (p.up, ps) {
        // Failed only for want of an answer, in a pair that left sync (its
        // mirror marked down, perhaps back since): told to go on alone, on
        // which the segment starts its role again.
        let failed_alone =
            failed_unheard(pair, &ps) && matches!(pair.mode, PairMode::ChangeTracking | PairMode::NotInSync);
        let serving = ps.acting == Acting::Primary && ps.generation == gen && !failed_alone;
        if !serving && ps.acting != Acting::Starting {
            let mirror = match pair.mode {
                // Stream only to a mirror that is ready; until then, wait.
                PairMode::Synchronized => match ms {
                    Some(ms) if m.up && ms.acting == Acting::Mirror && ms.generation >= gen => Some(Some(m.dbid)),
                    _ => None,
                },
                _ => Some(None),
            };
            if let Some(mirror) = mirror {
                let generation = match bug {
                    // The defect: a promoted mirror serves in the old generation.
                    Some(PlantedBug::PromoteInSameGeneration) if gen > 1 => gen - 1,
                    _ => gen,
                };
                out.push(Order::BecomePrimary { dbid: p.dbid, generation, mirror });
            }
        }
    }
    out
}

/// What `filerep recover` does next for a pair. The arbiter asks again
/// after each step it carries out (a rebuild, a hand-over), with a fresh
/// probe of the acting mirror, until the answer is to restore, to resync or
/// a refusal; the simulator's operator asks the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recover {
    /// Nothing is started; the operator is told why.
    Refused(String),
    /// The pair is down and its acting primary answers: it serves alone
    /// again at a new generation ([`Event::Restore`]), and a later
    /// `recover` repairs its mirror.
    Restore,
    /// The acting mirror's disk failed (rule 8): it forgets its fault, and
    /// the full resync that follows ships every block again, whatever its
    /// page cache shows.
    RebuildMirror { dbid: u32 },
    /// The acting mirror is a returning old primary whose activity log is
    /// not handed over yet: it joins the acting primary's change-log first,
    /// or the resync's plan misses its blocks and the clear wipes them.
    HandOver { from: u32, to: u32 },
    /// The pair goes to resynchronizing, and its acting primary takes its
    /// mirror back and repairs it (`full`: every block).
    Resync { full: bool },
}

/// Why a resync of `pair` (`full`: a full one) cannot start as the catalog
/// stands, before any segment is asked; `None` when it can (a pair that is
/// down is restored from its acting primary first).
pub fn recover_refusal(pair: &Pair, full: bool) -> Option<String> {
    let content = pair.content;
    if pair.down {
        let p = pair.acting_primary();
        return (!p.up).then(|| {
            format!(
                "content {content} is down and its acting primary {} does not answer: start that segment \
                 (its data and change-log are the pair's), then run filerep recover again",
                p.dbid
            )
        });
    }
    if let Some(s) = pair.segments.iter().find(|s| !s.up) {
        return Some(format!(
            "content {content}: both segments must be up to resync, and dbid {} is down: start it (filerep start), \
             then run filerep recover again",
            s.dbid
        ));
    }
    match pair.mode {
        PairMode::Synchronized => Some(format!("content {content} is already synchronized")),
        PairMode::NotInSync if !full => Some(format!(
            "content {content} is not in sync and no change-log covers the differences: use a full resync (-F)"
        )),
        _ => None,
    }
}

/// The next step of `filerep recover` (`full`: the operator asked for a
/// full resync) for `pair`, given what a probe of its acting mirror sees
/// now (`None`: no answer, or not asked because the pair is down).
pub fn recover(pair: &Pair, mirror: Option<&Seen>, full: bool, bug: Option<PlantedBug>) -> Recover {
    if let Some(why) = recover_refusal(pair, full) {
        return Recover::Refused(why);
    }
    if pair.down {
        return Recover::Restore;
    }
    let (p, m) = (pair.acting_primary().dbid, pair.acting_mirror().dbid);
    // What it holds decides the steps (a fault, a returning old primary's
    // log): unknown, nothing is started. Its log joining the change-log
    // after the resync read its plan would be missed, and wiped by the clear.
    let Some(mirror) = mirror.filter(|s| s.dbid == m) else {
        return Recover::Refused(format!(
            "content {}: mirror {m} does not answer its probe (or another segment answers at its address): \
             start it, then run filerep recover again",
            pair.content
        ));
    };
    if pair.full_resync_owed && !full && bug != Some(PlantedBug::RebuildFaultedIncrementally) {
        return Recover::Refused(format!(
            "content {}: mirror {m} was told to forget its disk fault for a rebuild that has not finished; \
             only a full resync repairs it: filerep recover -F --content {}",
            pair.content, pair.content
        ));
    }
    // Rule 8: a mirror whose disk failed holds pages a failed fsync let go
    // (readable here, absent from its disk). An incremental resync would
    // ship only what the change-log names, and a comparison would find
    // those pages equal; only a full resync that ships every block again
    // rebuilds it.
    if mirror.mirror_disk_failed() {
        if !full && bug != Some(PlantedBug::RebuildFaultedIncrementally) {
            return Recover::Refused(format!(
                "content {}: mirror {m} faulted (its disk failed) and its files are in doubt; rebuild it with a full \
                 resync: filerep recover -F --content {}",
                pair.content, pair.content
            ));
        }
        return Recover::RebuildMirror { dbid: m };
    }
    if mirror.changes_pending {
        return Recover::HandOver { from: m, to: p };
    }
    Recover::Resync { full }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(dbid: u32, acting: Acting, generation: u64) -> Option<Seen> {
        Some(Seen {
            dbid,
            acting,
            generation,
            mode: '-',
            changes_pending: false,
            faulted: false,
            unheard: false,
            lost_power_streaming: false,
        })
    }

    fn apply(pair: &mut Pair, events: Vec<Event>) {
        for e in events {
            pair.apply(&e);
        }
    }

    /// A round completes a resync only from the pair its own events leave:
    /// a mirror lost in the same round ends the resync instead.
    #[test]
    fn a_round_completes_a_resync_only_after_its_own_events() {
        let mut pair = Pair::new(0, 1, 2);
        apply(&mut pair, vec![Event::MirrorLost { reporter: 1, generation: 1 }, Event::SegmentUp { dbid: 2 }]);
        assert!(pair.apply(&Event::ResyncStarted).changed);
        let streaming = Some(Seen { mode: 's', ..seen(1, Acting::Primary, 1).unwrap() });
        let probes = [(1, streaming), (2, seen(2, Acting::Mirror, 1))];
        assert_eq!(round_events(&pair, &probes).last(), Some(&Event::ResyncCompleted));
        let probes = [(1, streaming), (2, None)];
        let e = round_events(&pair, &probes);
        assert!(!e.is_empty() && !e.contains(&Event::ResyncCompleted), "{e:?}");
    }

    /// `filerep recover`, step by step: a faulted mirror is refused an
    /// incremental resync (the answer names -F), rebuilt first for a full
    /// one; a returning old primary hands its log over first; a down pair
    /// is restored, and only once its acting primary answers.
    #[test]
    fn recover_rebuilds_a_faulted_mirror_only_for_a_full_resync() {
        let mut pair = Pair::new(7, 1, 2);
        let sync = recover(&pair, seen(2, Acting::Mirror, 1).as_ref(), false, None);
        assert!(matches!(&sync, Recover::Refused(why) if why.contains("already synchronized")), "{sync:?}");
        apply(&mut pair, vec![Event::MirrorLost { reporter: 1, generation: 1 }, Event::SegmentUp { dbid: 2 }]);
        let faulted = Seen { faulted: true, ..seen(2, Acting::Mirror, 1).unwrap() };
        let step = recover(&pair, Some(&faulted), false, None);
        assert!(matches!(&step, Recover::Refused(why) if why.contains("recover -F --content 7")), "{step:?}");
        assert_eq!(recover(&pair, Some(&faulted), true, None), Recover::RebuildMirror { dbid: 2 });
        // Restarted and not yet given its role, it says so from its state
        // file: the same answers, not an incremental resync it would refuse.
        let idle = Seen { faulted: true, ..seen(2, Acting::Idle, 0).unwrap() };
        let step = recover(&pair, Some(&idle), false, None);
        assert!(matches!(&step, Recover::Refused(why) if why.contains("recover -F --content 7")), "{step:?}");
        assert_eq!(recover(&pair, Some(&idle), true, None), Recover::RebuildMirror { dbid: 2 });
        // Rebuilt (it no longer says it faulted): the full resync.
        assert_eq!(recover(&pair, seen(2, Acting::Mirror, 1).as_ref(), true, None), Recover::Resync { full: true });
        assert_eq!(recover(&pair, seen(2, Acting::Mirror, 1).as_ref(), false, None), Recover::Resync { full: false });
        // No answer, or another segment answering at the mirror's address:
        // what it holds is unknown, nothing starts.
        let stranger = Seen { faulted: true, ..seen(3, Acting::Mirror, 1).unwrap() };
        for probe in [None, Some(&stranger)] {
            let step = recover(&pair, probe, true, None);
            assert!(matches!(&step, Recover::Refused(why) if why.contains("does not answer its probe")), "{step:?}");
        }
        // Told to forget its fault, it owes a full resync until one completes.
        assert!(pair.apply(&Event::MirrorRebuilt).changed);
        let step = recover(&pair, seen(2, Acting::Mirror, 1).as_ref(), false, None);
        assert!(matches!(&step, Recover::Refused(why) if why.contains("recover -F --content 7")), "{step:?}");
        assert_eq!(recover(&pair, seen(2, Acting::Mirror, 1).as_ref(), true, None), Recover::Resync { full: true });
        apply(&mut pair, vec![Event::ResyncStarted, Event::MirrorLost { reporter: 1, generation: 1 }]);
        assert!(pair.full_resync_owed, "an interrupted rebuild still owes the full resync: {pair:?}");
        apply(&mut pair, vec![Event::SegmentUp { dbid: 2 }, Event::ResyncStarted, Event::ResyncCompleted]);
        assert!(!pair.full_resync_owed && pair.mode == PairMode::Synchronized, "{pair:?}");
        apply(&mut pair, vec![Event::MirrorLost { reporter: 1, generation: 1 }, Event::SegmentUp { dbid: 2 }]);
        let pending = Seen { changes_pending: true, ..seen(2, Acting::Mirror, 1).unwrap() };
        assert_eq!(recover(&pair, Some(&pending), false, None), Recover::HandOver { from: 2, to: 1 });
        // The planted defect: the fault forgotten for an incremental resync.
        let bug = Some(PlantedBug::RebuildFaultedIncrementally);
        assert_eq!(recover(&pair, Some(&faulted), false, bug), Recover::RebuildMirror { dbid: 2 });
    }

    #[test]
    fn recover_restores_a_down_pair_once_its_acting_primary_answers() {
        let mut pair = Pair::new(0, 1, 2);
        apply(&mut pair, vec![Event::MirrorLost { reporter: 1, generation: 1 }, Event::ProbeFailed { dbid: 1 }]);
        assert!(pair.down, "{pair:?}");
        let step = recover(&pair, None, false, None);
        assert!(matches!(&step, Recover::Refused(why) if why.contains("does not answer")), "{step:?}");
        apply(&mut pair, vec![Event::SegmentUp { dbid: 1 }]);
        assert_eq!(recover(&pair, None, false, None), Recover::Restore);
        apply(&mut pair, vec![Event::Restore]);
        // Back in change tracking with its mirror still down: start that first.
        let step = recover(&pair, None, false, None);
        assert!(matches!(&step, Recover::Refused(why) if why.contains("dbid 2 is down")), "{step:?}");
    }

    #[test]
    fn a_fresh_pair_gets_its_mirror_first_then_its_primary() {
        let pair = Pair::new(0, 1, 2);
        let probes = [(1, seen(1, Acting::Idle, 0)), (2, seen(2, Acting::Idle, 0))];
        assert_eq!(orders(&pair, &probes, None), vec![Order::BecomeMirror { dbid: 2, generation: 1 }]);
        let probes = [(1, seen(1, Acting::Idle, 0)), (2, seen(2, Acting::Mirror, 1))];
        assert_eq!(
            orders(&pair, &probes, None),
            vec![Order::BecomePrimary { dbid: 1, generation: 1, mirror: Some(2) }]
        );
        let probes = [(1, seen(1, Acting::Primary, 1)), (2, seen(2, Acting::Mirror, 1))];
        assert!(orders(&pair, &probes, None).is_empty());
    }

    #[test]
    fn a_failed_primary_probe_promotes_the_mirror_alone() {
        let mut pair = Pair::new(0, 1, 2);
        let probes = [(1, None), (2, seen(2, Acting::Mirror, 1))];
        let e = events(&pair, &probes);
        apply(&mut pair, e);
        assert_eq!((pair.acting_primary().dbid, pair.generation, pair.mode), (2, 2, PairMode::ChangeTracking));
        assert_eq!(orders(&pair, &probes, None), vec![Order::BecomePrimary { dbid: 2, generation: 2, mirror: None }]);
    }

    #[test]
    fn a_mirror_that_failed_its_probe_in_the_same_round_is_never_promoted() {
        for probes in [[(1, None), (2, None)], [(2, None), (1, None)]] {
            let mut pair = Pair::new(0, 1, 2);
            let e = events(&pair, &probes);
            apply(&mut pair, e);
            assert!(pair.down, "{pair:?}");
            assert_eq!((pair.acting_primary().dbid, pair.generation), (1, 1), "the primary keeps its role: {pair:?}");
            assert!(pair.segments.iter().all(|s| !s.up));
            assert!(orders(&pair, &probes, None).is_empty());
        }
    }

    #[test]
    fn a_primary_restarted_with_its_activity_log_is_replaced_and_hands_it_over() {
        let mut pair = Pair::new(0, 1, 2);
        let back = Some(Seen {
            dbid: 1,
            acting: Acting::Idle,
            generation: 1,
            mode: '-',
            changes_pending: true,
            faulted: false,
            lost_power_streaming: false,
            unheard: false,
        });
        let probes = [(1, back), (2, seen(2, Acting::Mirror, 1))];
        let e = events(&pair, &probes);
        apply(&mut pair, e);
        assert_eq!(pair.acting_primary().dbid, 2, "the mirror is promoted: the old primary's last writes are in doubt");
        assert!(pair.segments.iter().all(|s| s.up));
        // It becomes the mirror, then hands its log to the new primary.
        let o = orders(&pair, &probes, None);
        assert!(o.contains(&Order::BecomeMirror { dbid: 1, generation: 2 }), "{o:?}");
        let probes = [
            (
                1,
                Some(Seen {
                    dbid: 1,
                    acting: Acting::Mirror,
                    generation: 2,
                    mode: '-',
                    changes_pending: true,
                    faulted: false,
                    lost_power_streaming: false,
                    unheard: false,
                }),
            ),
            (2, seen(2, Acting::Primary, 2)),
        ];
        assert_eq!(orders(&pair, &probes, None), vec![Order::HandOver { from: 1, to: 2 }]);
    }

    #[test]
    fn a_primary_restarted_with_its_log_beside_a_restarted_mirror_keeps_its_role_alone() {
        let mut pair = Pair::new(0, 1, 2);
        let back = Some(Seen {
            dbid: 1,
            acting: Acting::Idle,
            generation: 0,
            mode: '-',
            changes_pending: true,
            faulted: false,
            lost_power_streaming: false,
            unheard: false,
        });
        let probes = [(1, back), (2, seen(2, Acting::Idle, 0))];
        let e = events(&pair, &probes);
        apply(&mut pair, e);
        assert_eq!((pair.acting_primary().dbid, pair.generation, pair.mode), (1, 1, PairMode::ChangeTracking));
        assert_eq!(
            orders(&pair, &probes, None),
            vec![
                Order::BecomeMirror { dbid: 2, generation: 1 },
                Order::BecomePrimary { dbid: 1, generation: 1, mirror: None }
            ]
        );
    }

    #[test]
    fn a_mirror_restarted_beside_its_serving_primary_is_out_of_sync() {
        let mut pair = Pair::new(0, 1, 2);
        let probes = [(1, seen(1, Acting::Primary, 1)), (2, seen(2, Acting::Idle, 0))];
        let e = events(&pair, &probes);
        apply(&mut pair, e);
        assert_eq!((pair.acting_primary().dbid, pair.mode), (1, PairMode::ChangeTracking));
    }

    #[test]
    fn a_faulted_mirror_leaves_the_sync_and_is_never_promoted() {
        let mut pair = Pair::new(0, 1, 2);
        let faulted = Some(Seen { faulted: true, ..seen(2, Acting::Mirror, 1).unwrap() });
        // Its primary is cut off from the arbiter and cannot say so.
        let probes = [(1, seen(1, Acting::Primary, 1)), (2, faulted)];
        let e = events(&pair, &probes);
        apply(&mut pair, e);
        assert_eq!((pair.acting_primary().dbid, pair.mode), (1, PairMode::ChangeTracking));
        // The primary is lost next: a double fault, not a failover.
        let e = events(&pair, &[(1, None), (2, faulted)]);
        apply(&mut pair, e);
        assert!(pair.down && pair.acting_primary().dbid == 1, "{pair:?}");
    }

    /// The mirror's host lost power while it streamed and came back while
    /// its primary was cut off from the arbiter (which was down itself
    /// meanwhile): seen back, idle or serving, it leaves the sync in the
    /// round its primary fails the probe, before that failure is weighed:
    /// a double fault, never a promotion. A mirror that says nothing of the
    /// kind is promoted as before.
    #[test]
    fn a_mirror_whose_host_went_down_while_it_streamed_is_never_promoted() {
        for acting in [Acting::Idle, Acting::Mirror] {
            let mut pair = Pair::new(0, 1, 2);
            let cut = Some(Seen { lost_power_streaming: true, ..seen(2, acting, 1).unwrap() });
            let e = events(&pair, &[(1, None), (2, cut)]);
            apply(&mut pair, e);
            assert!(pair.down && pair.acting_primary().dbid == 1, "{acting:?}: {pair:?}");
            assert!(orders(&pair, &[(1, None), (2, cut)], None)
                .iter()
                .all(|o| !matches!(o, Order::BecomePrimary { dbid: 2, .. })));
        }
        // Beside its serving primary, it is out of sync (no failover at all).
        let mut pair = Pair::new(0, 1, 2);
        let cut = Some(Seen { lost_power_streaming: true, ..seen(2, Acting::Mirror, 1).unwrap() });
        let e = events(&pair, &[(1, seen(1, Acting::Primary, 1)), (2, cut)]);
        apply(&mut pair, e);
        assert_eq!((pair.acting_primary().dbid, pair.mode), (1, PairMode::ChangeTracking));
        // Its primary back idle with changes after a crash: the primary stays.
        let mut pair = Pair::new(0, 1, 2);
        let back = Some(Seen { changes_pending: true, ..seen(1, Acting::Idle, 0).unwrap() });
        let e = events(&pair, &[(1, back), (2, cut)]);
        apply(&mut pair, e);
        assert_eq!(pair.acting_primary().dbid, 1, "{pair:?}");
        // Without the record, the same probes promote it.
        let mut pair = Pair::new(0, 1, 2);
        let e = events(&pair, &[(1, None), (2, seen(2, Acting::Mirror, 1))]);
        apply(&mut pair, e);
        assert_eq!((pair.acting_primary().dbid, pair.down), (2, false), "{pair:?}");
    }

    /// The mirror's disk fails as it is promoted (its final sync at the end
    /// of its mirror session): what it had only applied may be gone, so it
    /// must not serve. Seen faulted as the acting primary, it counts as
    /// lost; its mirror (the old primary) is down: a double fault.
    #[test]
    fn a_mirror_that_faults_as_it_is_promoted_is_a_double_fault() {
        let mut pair = Pair::new(0, 1, 2);
        let e = events(&pair, &[(1, None), (2, seen(2, Acting::Mirror, 1))]);
        apply(&mut pair, e);
        assert_eq!((pair.acting_primary().dbid, pair.generation, pair.down), (2, 2, false), "{pair:?}");
        let faulted = Some(Seen { faulted: true, ..seen(2, Acting::Mirror, 1).unwrap() });
        let e = events(&pair, &[(1, None), (2, faulted)]);
        assert!(e.contains(&Event::ProbeFailed { dbid: 2 }), "{e:?}");
        apply(&mut pair, e);
        assert!(pair.down, "{pair:?}");
        assert!(orders(&pair, &[(1, seen(1, Acting::Idle, 1)), (2, faulted)], None).is_empty());
    }

    #[test]
    fn a_clean_restart_of_the_whole_pair_keeps_the_roles() {
        let mut pair = Pair::new(0, 1, 2);
        let probes = [(1, seen(1, Acting::Idle, 1)), (2, seen(2, Acting::Idle, 1))];
        let e = events(&pair, &probes);
        apply(&mut pair, e);
        assert_eq!((pair.acting_primary().dbid, pair.generation), (1, 1));
    }

    #[test]
    fn a_primary_that_failed_its_calls_unheard_after_losing_its_mirror_goes_on_alone() {
        for mode in [PairMode::Synchronized, PairMode::Resynchronizing] {
            let mut pair = Pair::new(0, 1, 2);
            pair.mode = mode;
            let failed = Some(Seen { mode: 'f', unheard: true, ..seen(1, Acting::Primary, 1).unwrap() });
            let probes = [(1, failed), (2, None)];
            let e = events(&pair, &probes);
            assert_eq!(e[0], Event::MirrorLost { reporter: 1, generation: 1 }, "{mode:?}");
            apply(&mut pair, e);
            assert_eq!((pair.acting_primary().dbid, pair.generation, pair.mode), (1, 1, PairMode::ChangeTracking));
            assert_eq!(
                orders(&pair, &probes, None),
                vec![Order::BecomePrimary { dbid: 1, generation: 1, mirror: None }],
                "{mode:?}"
            );
            // Its mirror back before the next round: still alone, the mirror told first.
            let probes = [(1, failed), (2, seen(2, Acting::Idle, 0))];
            let e = events(&pair, &probes);
            apply(&mut pair, e);
            assert_eq!(
                orders(&pair, &probes, None),
                vec![
                    Order::BecomeMirror { dbid: 2, generation: 1 },
                    Order::BecomePrimary { dbid: 1, generation: 1, mirror: None }
                ],
                "{mode:?}"
            );
        }
    }

    #[test]
    fn a_primary_failed_by_its_change_log_or_demoted_is_never_told_to_go_on_alone() {
        for mode in [PairMode::Synchronized, PairMode::ChangeTracking] {
            let mut pair = Pair::new(0, 1, 2);
            pair.mode = mode;
            // Failed, but not for want of an answer: its change-log may not
            // name what the mirror lacks.
            let failed = Some(Seen { mode: 'f', ..seen(1, Acting::Primary, 1).unwrap() });
            let probes = [(1, failed), (2, seen(2, Acting::Mirror, 1))];
            let e = events(&pair, &probes);
            assert!(e.iter().all(|e| matches!(e, Event::SegmentUp { .. })), "{mode:?}: {e:?}");
            apply(&mut pair, e);
            assert_eq!((pair.acting_primary().dbid, pair.mode), (1, mode));
            assert!(orders(&pair, &probes, None).is_empty(), "{mode:?}");
        }
        // A primary serving beside its mirror gets no order.
        let pair = Pair::new(0, 1, 2);
        let probes = [(1, seen(1, Acting::Primary, 1)), (2, seen(2, Acting::Mirror, 1))];
        assert!(events(&pair, &probes).iter().all(|e| matches!(e, Event::SegmentUp { .. })));
        assert!(orders(&pair, &probes, None).is_empty());
    }

    #[test]
    fn another_segment_answering_counts_as_a_failed_probe() {
        let pair = Pair::new(0, 1, 2);
        let probes = [(1, seen(9, Acting::Primary, 1)), (2, seen(2, Acting::Mirror, 1))];
        assert!(events(&pair, &probes).contains(&Event::ProbeFailed { dbid: 1 }));
    }
}
