//! The arbiter's view of one pair, as a plain state machine: what each
//! fault means for roles, modes, status and generation (brief section 3).
//! Only the arbiter applies these transitions; segments never decide.
//!
//! Letters as in Greenplum's `gp_segment_configuration`: role `p`/`m`, mode
//! `s` (synchronized), `c` (change tracking), `r` (resynchronizing), `n`
//! (not in sync), status `u`/`d`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Primary,
    Mirror,
}

impl Role {
    pub fn letter(self) -> char {
        match self {
            Role::Primary => 'p',
            Role::Mirror => 'm',
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairMode {
    Synchronized,
    ChangeTracking,
    Resynchronizing,
    NotInSync,
}

impl PairMode {
    pub fn letter(self) -> char {
        match self {
            PairMode::Synchronized => 's',
            PairMode::ChangeTracking => 'c',
            PairMode::Resynchronizing => 'r',
            PairMode::NotInSync => 'n',
        }
    }
}

/// One segment of the pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub dbid: u32,
    pub role: Role,
    pub preferred_role: Role,
    pub up: bool,
}

/// A pair as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub content: u32,
    pub generation: u64,
    pub mode: PairMode,
    pub segments: [Segment; 2],
    /// The whole content is unavailable (a double fault, or the primary lost
    /// while the mirror was not consistent).
    pub down: bool,
    /// The acting mirror forgot its disk fault for a rebuild
    /// ([`Event::MirrorRebuilt`]): its files stay in doubt, and only a full
    /// resync may repair it, until one completes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_resync_owed: bool,
}

/// What the arbiter learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The acting primary `reporter` (at `generation`) lost its mirror.
    MirrorLost { reporter: u32, generation: u64 },
    /// The probe could not reach segment `dbid`.
    ProbeFailed { dbid: u32 },
    /// Segment `dbid` answers probes again (it will not write until told its role).
    SegmentUp { dbid: u32 },
    /// The operator started a resync of the pair.
    ResyncStarted,
    /// The resync drained the change-log, durably on both sides.
    ResyncCompleted,
    /// The operator asked every segment back to its preferred role
    /// (`filerep recover -r`): only a synchronized pair switches.
    Rebalance,
    /// The operator recovers a segment that is down (a double fault, or
    /// its primary lost during a resync) from its acting primary, which
    /// answers again with its data and change-log intact: the pair comes
    /// back in change tracking at a new generation (fencing any earlier
    /// incarnation of that primary), and a resync repairs the mirror.
    Restore,
    /// `filerep recover -F` tells the acting mirror, whose disk failed, to
    /// forget its fault: recorded first, so that until a resync completes
    /// only a full one is started (a plain one would trust pages its failed
    /// fsync let go).
    MirrorRebuilt,
}

/// What the reporter of a lost mirror is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on alone and track changes.
    MirrorDown,
    /// You are not the acting primary of this generation: fail every call.
    Demoted,
    /// Nothing for a segment to do.
    None,
}

/// The result of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Whether the pair changed (then it must be recorded, with `reason`).
    pub changed: bool,
    pub reason: String,
}

impl Pair {
    /// A new pair: `primary` and `mirror` dbids, synchronized, generation 1.
    pub fn new(content: u32, primary: u32, mirror: u32) -> Pair {
        Pair {
            content,
            generation: 1,
            mode: PairMode::Synchronized,
            segments: [
                Segment { dbid: primary, role: Role::Primary, preferred_role: Role::Primary, up: true },
                Segment { dbid: mirror, role: Role::Mirror, preferred_role: Role::Mirror, up: true },
            ],
            down: false,
            full_resync_owed: false,
        }
    }

    fn index(&self, dbid: u32) -> Option<usize> {
        self.segments.iter().position(|s| s.dbid == dbid)
    }

    /// The acting primary's index.
    pub fn primary(&self) -> usize {
        if self.segments[0].role == Role::Primary {
            0
        } else {
            1
        }
    }

    pub fn acting_primary(&self) -> &Segment {
        &self.segments[self.primary()]
    }

    pub fn acting_mirror(&self) -> &Segment {
        &self.segments[1 - self.primary()]
    }

    /// Apply an event. Never more than one primary per generation: a
    /// promotion always increments the generation.
    pub fn apply(&mut self, event: &Event) -> Outcome {
        let unchanged = |verdict, reason: &str| Outcome { verdict, changed: false, reason: reason.into() };
        let p = self.primary();
        let m = 1 - p;
        match *event {
            Event::MirrorLost { reporter, generation } => {
                if self.down {
                    return unchanged(Verdict::Demoted, "the segment is down");
                }
                if generation != self.generation || self.segments[p].dbid != reporter {
                    // A stale primary: someone else was promoted (rule 7).
                    return unchanged(Verdict::Demoted, "not the acting primary of this generation");
                }
                match self.mode {
                    PairMode::ChangeTracking | PairMode::NotInSync if !self.segments[m].up => {
                        unchanged(Verdict::MirrorDown, "the mirror is already down")
                    }
                    PairMode::Synchronized
                    | PairMode::Resynchronizing
                    | PairMode::ChangeTracking
                    | PairMode::NotInSync => {
                        let from = self.mode;
                        self.segments[m].up = false;
                        // Not in sync stays so: the change-log never covered
                        // the differences, only a full resync can.
                        if from != PairMode::NotInSync {
                            self.mode = PairMode::ChangeTracking;
                        }
                        Outcome {
                            verdict: Verdict::MirrorDown,
                            changed: true,
                            reason: format!(
                                "mirror {} lost ({} -> {}): the primary goes on alone",
                                self.segments[m].dbid,
                                from.letter(),
                                self.mode.letter()
                            ),
                        }
                    }
                }
            }
            Event::ProbeFailed { dbid } => {
                let Some(i) = self.index(dbid) else { return unchanged(Verdict::None, "unknown segment") };
                if !self.segments[i].up || self.down {
                    return unchanged(Verdict::None, "already down");
                }
                if i == m {
                    // The primary reports its own loss of the mirror; a failed
                    // probe of the mirror alone changes the same things.
                    self.segments[m].up = false;
                    let from = self.mode;
                    if from != PairMode::NotInSync {
                        self.mode = PairMode::ChangeTracking;
                    }
                    return Outcome {
                        verdict: Verdict::None,
                        changed: true,
                        reason: format!("mirror {dbid} failed its probe ({} -> {})", from.letter(), self.mode.letter()),
                    };
                }
                // The acting primary is gone.
                self.segments[p].up = false;
                match self.mode {
                    PairMode::Synchronized if self.segments[m].up => {
                        self.segments[p].role = Role::Mirror;
                        self.segments[m].role = Role::Primary;
                        self.generation += 1;
                        self.mode = PairMode::ChangeTracking;
                        Outcome {
                            verdict: Verdict::None,
                            changed: true,
                            reason: format!(
                                "primary {dbid} lost: mirror {} promoted at generation {}, tracking changes",
                                self.segments[m].dbid, self.generation
                            ),
                        }
                    }
                    PairMode::Resynchronizing => {
                        self.down = true;
                        Outcome {
                            verdict: Verdict::None,
                            changed: true,
                            reason: format!(
                                "primary {dbid} lost during resync: the mirror is not consistent, the segment is down"
                            ),
                        }
                    }
                    _ => {
                        self.down = true;
                        Outcome {
                            verdict: Verdict::None,
                            changed: true,
                            reason: format!(
                                "double fault: primary {dbid} lost while its mirror was down; the segment is down"
                            ),
                        }
                    }
                }
            }
            Event::SegmentUp { dbid } => {
                let Some(i) = self.index(dbid) else { return unchanged(Verdict::None, "unknown segment") };
                if self.segments[i].up {
                    return unchanged(Verdict::None, "already up");
                }
                self.segments[i].up = true;
                Outcome {
                    verdict: Verdict::None,
                    changed: true,
                    reason: format!(
                        "segment {dbid} is back as {} (not in sync until recovered)",
                        if self.segments[i].role == Role::Primary { "primary" } else { "mirror" }
                    ),
                }
            }
            Event::ResyncStarted => {
                if self.down || !self.segments[m].up || !self.segments[p].up {
                    return unchanged(Verdict::None, "both segments must be up to resync");
                }
                if self.mode == PairMode::Synchronized {
                    return unchanged(Verdict::None, "already synchronized");
                }
                let from = self.mode;
                self.mode = PairMode::Resynchronizing;
                Outcome {
                    verdict: Verdict::None,
                    changed: true,
                    reason: format!("resync started ({} -> r)", from.letter()),
                }
            }
            Event::ResyncCompleted => {
                if self.mode != PairMode::Resynchronizing {
                    return unchanged(Verdict::None, "no resync in progress");
                }
                self.mode = PairMode::Synchronized;
                self.full_resync_owed = false;
                Outcome { verdict: Verdict::None, changed: true, reason: "resync completed (r -> s)".into() }
            }
            Event::Rebalance => {
                if self.segments[p].preferred_role == Role::Primary {
                    return unchanged(Verdict::None, "already in the preferred roles");
                }
                if self.down || self.mode != PairMode::Synchronized || !self.segments.iter().all(|s| s.up) {
                    return unchanged(Verdict::None, "only a synchronized pair with both segments up switches");
                }
                // An orderly switch is a promotion too: a new generation fences the old one.
                self.segments[p].role = Role::Mirror;
                self.segments[m].role = Role::Primary;
                self.generation += 1;
                Outcome {
                    verdict: Verdict::None,
                    changed: true,
                    reason: format!(
                        "rebalance: {} back to primary, {} to mirror, generation {}",
                        self.segments[m].dbid, self.segments[p].dbid, self.generation
                    ),
                }
            }
            Event::MirrorRebuilt => {
                if self.down || self.mode == PairMode::Synchronized {
                    return unchanged(Verdict::None, "only the mirror of a pair out of sync is rebuilt");
                }
                if self.full_resync_owed {
                    return unchanged(Verdict::None, "a full resync is already owed");
                }
                self.full_resync_owed = true;
                Outcome {
                    verdict: Verdict::None,
                    changed: true,
                    reason: format!(
                        "mirror {} forgets its disk fault for a rebuild: only a full resync repairs it",
                        self.segments[m].dbid
                    ),
                }
            }
            Event::Restore => {
                if !self.down {
                    return unchanged(Verdict::None, "the segment is not down");
                }
                if !self.segments[p].up {
                    return unchanged(Verdict::None, "the acting primary does not answer");
                }
                self.down = false;
                self.generation += 1;
                // Whatever the mirror has, only a resync makes it consistent.
                if self.mode != PairMode::NotInSync {
                    self.mode = PairMode::ChangeTracking;
                }
                Outcome {
                    verdict: Verdict::None,
                    changed: true,
                    reason: format!(
                        "restored from primary {} at generation {} ({}): resync the mirror",
                        self.segments[p].dbid,
                        self.generation,
                        self.mode.letter()
                    ),
                }
            }
        }
    }

    /// The invariants every reachable state keeps.
    pub fn check(&self) -> Result<(), String> {
        let primaries = self.segments.iter().filter(|s| s.role == Role::Primary).count();
        if primaries != 1 {
            return Err(format!("{primaries} segments have the primary role"));
        }
        if self.mode == PairMode::Synchronized && !self.segments.iter().all(|s| s.up) && !self.down {
            return Err("synchronized with a segment down".into());
        }
        if !self.down && !self.acting_primary().up {
            return Err("the acting primary is down but the segment is not".into());
        }
        if self.mode == PairMode::Synchronized && self.full_resync_owed {
            return Err("synchronized while its mirror owes a full resync".into());
        }
        Ok(())
    }
}

/// One recorded change of a pair: when, what it was, what it became, why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    pub unix_ms: u64,
    pub content: u32,
    pub before: String,
    pub after: String,
    pub reason: String,
}

/// A pair as one line: generation, mode, and each segment's dbid, role, status.
pub fn describe(p: &Pair) -> String {
    let seg = |s: &Segment| format!("{}:{}{}", s.dbid, s.role.letter(), if s.up { 'u' } else { 'd' });
    format!(
        "gen {} mode {} {} {}{}{}",
        p.generation,
        p.mode.letter(),
        seg(&p.segments[0]),
        seg(&p.segments[1]),
        if p.down { " (segment down)" } else { "" },
        if p.full_resync_owed { " (full resync owed)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Pair {
        Pair::new(0, 2, 4)
    }

    #[test]
    fn in_sync_mirror_lost_primary_tracks_changes() {
        let mut p = pair();
        let o = p.apply(&Event::MirrorLost { reporter: 2, generation: 1 });
        assert_eq!(o.verdict, Verdict::MirrorDown);
        assert!(o.changed);
        assert_eq!((p.mode, p.generation, p.acting_primary().dbid), (PairMode::ChangeTracking, 1, 2));
        assert!(!p.acting_mirror().up);
        p.check().unwrap();
    }

    #[test]
    fn in_sync_primary_lost_mirror_promoted_with_a_new_generation() {
        let mut p = pair();
        let o = p.apply(&Event::ProbeFailed { dbid: 2 });
        assert!(o.changed, "{o:?}");
        assert_eq!((p.mode, p.generation, p.acting_primary().dbid), (PairMode::ChangeTracking, 2, 4));
        assert_eq!(p.segments[0].role, Role::Mirror);
        assert!(!p.segments[0].up);
        // The old primary, reporting with the old generation, is demoted.
        let o = p.apply(&Event::MirrorLost { reporter: 2, generation: 1 });
        assert_eq!(o.verdict, Verdict::Demoted);
        p.check().unwrap();
    }

    #[test]
    fn resync_mirror_lost_back_to_change_tracking() {
        let mut p = pair();
        p.apply(&Event::MirrorLost { reporter: 2, generation: 1 });
        p.apply(&Event::SegmentUp { dbid: 4 });
        assert!(p.apply(&Event::ResyncStarted).changed);
        assert_eq!(p.mode, PairMode::Resynchronizing);
        let o = p.apply(&Event::MirrorLost { reporter: 2, generation: 1 });
        assert_eq!(o.verdict, Verdict::MirrorDown);
        assert_eq!((p.mode, p.generation), (PairMode::ChangeTracking, 1));
        p.check().unwrap();
    }

    #[test]
    fn resync_primary_lost_segment_down_without_promotion() {
        let mut p = pair();
        p.apply(&Event::MirrorLost { reporter: 2, generation: 1 });
        p.apply(&Event::SegmentUp { dbid: 4 });
        p.apply(&Event::ResyncStarted);
        let o = p.apply(&Event::ProbeFailed { dbid: 2 });
        assert!(o.changed);
        assert!(p.down, "{o:?}");
        assert_eq!((p.generation, p.acting_primary().dbid), (1, 2), "no promotion of an inconsistent mirror");
        p.check().unwrap();
    }

    #[test]
    fn change_tracking_primary_lost_is_a_double_fault() {
        let mut p = pair();
        p.apply(&Event::MirrorLost { reporter: 2, generation: 1 });
        let o = p.apply(&Event::ProbeFailed { dbid: 2 });
        assert!(p.down);
        assert!(o.reason.contains("double fault"), "{}", o.reason);
        assert_eq!(p.generation, 1);
        let o = p.apply(&Event::MirrorLost { reporter: 2, generation: 1 });
        assert_eq!(o.verdict, Verdict::Demoted, "nothing further is written anywhere");
        p.check().unwrap();
    }

    #[test]
    fn resync_completes_to_synchronized() {
        let mut p = pair();
        assert!(!p.apply(&Event::ResyncCompleted).changed);
        p.apply(&Event::MirrorLost { reporter: 2, generation: 1 });
        assert!(!p.apply(&Event::ResyncStarted).changed, "the mirror must be up");
        p.apply(&Event::SegmentUp { dbid: 4 });
        p.apply(&Event::ResyncStarted);
        assert!(p.apply(&Event::ResyncCompleted).changed);
        assert_eq!(p.mode, PairMode::Synchronized);
        p.check().unwrap();
    }

    #[test]
    fn rebalance_switches_only_a_synchronized_pair_out_of_its_preferred_roles() {
        let mut p = pair();
        assert!(!p.apply(&Event::Rebalance).changed, "already preferred");
        p.apply(&Event::ProbeFailed { dbid: 2 });
        assert!(!p.apply(&Event::Rebalance).changed, "not synchronized");
        p.apply(&Event::SegmentUp { dbid: 2 });
        p.apply(&Event::ResyncStarted);
        p.apply(&Event::ResyncCompleted);
        let o = p.apply(&Event::Rebalance);
        assert!(o.changed, "{o:?}");
        assert_eq!((p.acting_primary().dbid, p.generation, p.mode), (2, 3, PairMode::Synchronized));
        p.check().unwrap();
    }

    #[test]
    fn a_down_segment_is_restored_from_its_primary_at_a_new_generation() {
        let mut p = pair();
        assert!(!p.apply(&Event::Restore).changed, "not down");
        p.apply(&Event::MirrorLost { reporter: 2, generation: 1 });
        p.apply(&Event::SegmentUp { dbid: 4 });
        p.apply(&Event::ResyncStarted);
        p.apply(&Event::ProbeFailed { dbid: 2 });
        assert!(p.down);
        assert!(!p.apply(&Event::Restore).changed, "the primary must answer first");
        p.apply(&Event::SegmentUp { dbid: 2 });
        let o = p.apply(&Event::Restore);
        assert!(o.changed, "{o:?}");
        assert!(!p.down);
        assert_eq!((p.acting_primary().dbid, p.generation, p.mode), (2, 2, PairMode::ChangeTracking));
        // The earlier incarnation, at generation 1, is fenced.
        assert_eq!(p.apply(&Event::MirrorLost { reporter: 2, generation: 1 }).verdict, Verdict::Demoted);
        p.check().unwrap();
    }

    /// Every sequence of up to six events from every reachable state keeps
    /// the invariants, and no generation ever has two primaries.
    #[test]
    fn exhaustive_sequences_keep_the_invariants() {
        let events = [
            Event::MirrorLost { reporter: 2, generation: 1 },
            Event::MirrorLost { reporter: 4, generation: 2 },
            Event::MirrorLost { reporter: 4, generation: 3 },
            Event::ProbeFailed { dbid: 2 },
            Event::ProbeFailed { dbid: 4 },
            Event::SegmentUp { dbid: 2 },
            Event::SegmentUp { dbid: 4 },
            Event::ResyncStarted,
            Event::ResyncCompleted,
            Event::Rebalance,
            Event::Restore,
            Event::MirrorRebuilt,
        ];
        let mut frontier = vec![pair()];
        let mut seen = std::collections::HashSet::new();
        for _depth in 0..6 {
            let mut next = Vec::new();
            for state in &frontier {
                for e in &events {
                    let mut s = state.clone();
                    let before = s.generation;
                    let o = s.apply(e);
                    s.check().unwrap_or_else(|err| panic!("{state:?} + {e:?} -> {s:?}: {err}"));
                    assert!(s.generation >= before, "generations never go back");
                    if s.generation > before && *e != Event::Restore {
                        assert_ne!(
                            s.acting_primary().dbid,
                            state.acting_primary().dbid,
                            "a new generation, a new primary"
                        );
                    }
                    if *e == Event::Restore && o.changed {
                        assert!(state.down && !s.down, "only a down segment is restored");
                        assert_eq!(s.acting_primary().dbid, state.acting_primary().dbid, "from its own primary");
                    }
                    if o.verdict == Verdict::MirrorDown {
                        if let Event::MirrorLost { reporter, generation } = e {
                            assert_eq!((*reporter, *generation), (s.acting_primary().dbid, s.generation));
                        }
                    }
                    if seen.insert(format!("{s:?}")) {
                        next.push(s);
                    }
                }
            }
            frontier = next;
        }
        assert!(seen.len() > 10, "the search reached {} states", seen.len());
    }
}
