//! The arbiter and the segments' processes: probe rounds decided by the
//! arbiter's own rules ([`crate::core::arbiter`]) over the pair's state
//! machine ([`crate::core::pair`]), and the orders carried out as a segment
//! process does: become the mirror, become the primary (streaming or
//! alone), hand a returning old primary's change set over.

use super::world::{Role, World, PROBE_EVERY_MS};
use super::*;
use crate::core::arbiter::{self, Acting, Order, Seen};
use crate::core::pair::{Event, Outcome, Verdict};
use crate::core::primary::Mode;

impl World {
    /// An event for the pair's state machine, checked after it applies.
    pub(super) fn arbiter_apply(&mut self, e: Event) -> Result<Outcome, SimFailure> {
        let (gen, down) = (self.pair.generation, self.pair.down);
        let out = self.pair.apply(&e);
        tracing::debug!(seed = self.seed, step = self.step, event = ?e, verdict = ?out.verdict, reason = %out.reason, "sim: arbiter");
        if let Err(why) = self.pair.check() {
            return Err(self.fail(format!("arbiter: Pair::check after {e:?}: {why} ({:?})", self.pair)));
        }
        if self.pair.generation > gen {
            self.outcome("failover: mirror promoted");
        }
        if self.pair.down && !down {
            self.double_fault = true;
            self.outcome("segment down (double fault)");
        }
        // Stored before any order or answer that depends on it, as the
        // arbiter process does.
        self.store_catalog()?;
        Ok(out)
    }

    fn catalog_path() -> Result<FsPath, String> {
        crate::protocol::path::RelPath::new("catalog.json").map(|p| FsPath::new(0, p)).map_err(|e| e.to_string())
    }

    /// The catalog of this one pair, on the arbiter's disk, through the
    /// arbiter's own store (sealed, with its good copy).
    pub(super) fn store_catalog(&mut self) -> Result<(), SimFailure> {
        let address = |dbid: u32| crate::durable::catalog::SegmentAddress {
            dbid,
            host: format!("sim{dbid}"),
            control: format!("127.0.0.1:{}", 20000 + dbid),
            data: format!("127.0.0.1:{}", 21000 + dbid),
            filespaces: Vec::new(),
        };
        let mut catalog = crate::durable::catalog::Catalog::new(
            0x51,
            self.cfg.block_size,
            vec![(self.pair.content, address(self.pair.segments[0].dbid), address(self.pair.segments[1].dbid))],
        );
        catalog.pairs[0].pair = self.pair.clone();
        let stored = Self::catalog_path().and_then(|path| {
            catalog
                .store_to(self.catalog_disk.as_ref(), &path, std::path::Path::new("the simulated catalog"))
                .map_err(|e| e.to_string())
        });
        stored.map_err(|e| self.fail(format!("arbiter: storing the catalog: {e}")))
    }

    /// The arbiter's host loses power: its catalog disk keeps what was synced
    /// (a write in flight may be torn); it returns at `arbiter_back_at`.
    pub(super) fn arbiter_crash(&mut self, back_in_ms: u64) {
        // From the clock, not the seed's generator: the schedules stay as they were.
        let torn = (self.now % 2 == 0).then_some((self.now % 4096) as usize + 1);
        self.catalog_disk.crash(torn);
        self.arbiter_up = false;
        self.arbiter_back_at = self.now + back_in_ms;
    }

    /// The arbiter starts again from its stored catalog, which must be the
    /// pair it last decided (stores are durable before anything depends on them).
    fn arbiter_restart(&mut self) -> Result<(), SimFailure> {
        let loaded = Self::catalog_path().and_then(|path| {
            crate::durable::catalog::Catalog::load_from(
                self.catalog_disk.as_ref(),
                &path,
                std::path::Path::new("the simulated catalog"),
            )
            .map_err(|e| e.to_string())
        });
        let pair = match loaded {
            Ok(c) => c.pairs.into_iter().next().map(|p| p.pair),
            Err(e) => return Err(self.fail(format!("arbiter: its catalog does not open after a crash: {e}"))),
        };
        match pair {
            Some(p) if p == self.pair => Ok(()),
            other => Err(self.fail(format!(
                "arbiter: the catalog read after a crash ({other:?}) is not the pair it last stored ({:?})",
                self.pair
            ))),
        }
    }

    /// What a probe of segment `n` sees (`None`: no answer).
    pub(super) fn seen(&self, n: usize) -> Option<Seen> {
        let node = &self.nodes[n];
        if !node.reaches_arbiter {
            return None;
        }
        let pending = node.log.as_ref().is_some_and(|l| !l.is_empty());
        // As the segment process says it: a mirror's fault is in its state
        // file, so a restarted (idle) or halted one still says it.
        let faulted = matches!(node.role, Role::Mirror { faulted: true, .. })
            || (matches!(node.role, Role::Idle | Role::Halted) && node.mirror_fault)
            || (matches!(node.role, Role::Primary { .. })
                && node.primary.as_ref().is_some_and(|s| s.engine.faulted().is_some()));
        let unheard = node.primary.as_ref().is_some_and(|s| s.engine.failed_unheard());
        // As the segment process says it: not as a primary.
        let lost_power_streaming = !matches!(node.role, Role::Primary { .. }) && node.lost_power_streaming();
        let seen = |acting, generation, mode| {
            Some(Seen {
                dbid: node.dbid,
                acting,
                generation,
                mode,
                changes_pending: pending,
                faulted,
                unheard,
                lost_power_streaming,
            })
        };
        match &node.role {
            Role::Down { .. } => None,
            Role::Idle => seen(Acting::Idle, 0, '-'),
            Role::Halted => seen(Acting::Stopped, 0, '-'),
            Role::Mirror { gen, .. } => seen(Acting::Mirror, *gen, '-'),
            Role::Primary { gen } => {
                let engine = node.primary.as_ref().map(|s| (s.engine.mode(), s.engine.resyncing()));
                let mode = match engine {
                    Some((Mode::Streaming, true)) => 'r',
                    Some((Mode::Streaming, false)) => 's',
                    Some((Mode::Deciding, _)) => 'd',
                    Some((Mode::ChangeTracking, _)) => 'c',
                    Some((Mode::Failed(_), _)) | None => 'f',
                };
                seen(Acting::Primary, *gen, mode)
            }
        }
    }

    /// The first round, before any call.
    pub(super) fn arbiter_step_now(&mut self) -> Result<(), SimFailure> {
        self.store_catalog()?;
        for _ in 0..4 {
            self.round()?;
        }
        Ok(())
    }

    pub(super) fn arbiter_step(&mut self) -> Result<(), SimFailure> {
        if !self.arbiter_up {
            if self.now < self.arbiter_back_at {
                return Ok(());
            }
            self.arbiter_restart()?;
            self.arbiter_up = true;
        }
        if self.now % PROBE_EVERY_MS != 0 {
            return Ok(());
        }
        self.round()
    }

    /// One probe round: events, then orders.
    fn round(&mut self) -> Result<(), SimFailure> {
        if let Some(m) = self.report.arbiter_failure.take() {
            return Err(self.fail(m));
        }
        let probes: Vec<(u32, Option<Seen>)> =
            (0..self.nodes.len()).map(|n| (self.nodes[n].dbid, self.seen(n))).collect();
        for e in arbiter::round_events(&self.pair, &probes) {
            self.arbiter_apply(e)?;
        }
        if self.pair.down {
            for n in 0..self.nodes.len() {
                if self.nodes[n].reaches_arbiter && !matches!(self.nodes[n].role, Role::Down { .. }) {
                    self.halt(n)?;
                }
            }
            return Ok(());
        }
        let orders = arbiter::orders(&self.pair, &probes, self.cfg.bug);
        for order in orders {
            self.carry_out(order)?;
        }
        Ok(())
    }

    /// A segment carries out an order as its process does.
    fn carry_out(&mut self, order: Order) -> Result<(), SimFailure> {
        match order {
            Order::BecomeMirror { dbid, generation } => {
                let n = self.node_of(dbid)?;
                self.become_mirror(n, generation)
            }
            Order::BecomePrimary { dbid, generation, mirror } => {
                let n = self.node_of(dbid)?;
                let m = mirror.map(|m| self.node_of(m)).transpose()?;
                self.become_primary(n, generation, m)
            }
            Order::HandOver { from, to } => {
                let (f, t) = (self.node_of(from)?, self.node_of(to)?);
                self.hand_over(f, t)
            }
        }
    }

    fn become_mirror(&mut self, n: usize, gen: u64) -> Result<(), SimFailure> {
        match self.nodes[n].role {
            Role::Mirror { faulted: true, .. } | Role::Down { .. } | Role::Halted => return Ok(()),
            Role::Primary { .. } => {
                self.outcome("old primary demoted");
                self.drop_engine(n);
            }
            _ => {}
        }
        if self.session.as_ref().is_some_and(|s| s.mirror == n && s.mirror_on) {
            self.end_mirror_side("the arbiter restarted it")?;
        }
        if !self.settle(n)? {
            return Ok(());
        }
        // A mirror that faulted before still refuses every primary.
        self.nodes[n].role = Role::Mirror { gen, faulted: self.nodes[n].mirror_fault };
        Ok(())
    }

    /// Whether node `n`, a mirror whose disk faulted or whose host lost
    /// power while it streamed, must refuse to be promoted: the core's
    /// rule, as the segment process asks it. A refusal for a power loss
    /// faults the segment (its status says so, and the arbiter counts it
    /// lost), as in the segment process.
    fn promotion_refused(&mut self, n: usize) -> bool {
        let node = &self.nodes[n];
        // Idle: restarted, its state file still records the fault.
        let faulted = matches!(node.role, Role::Mirror { faulted: true, .. })
            || (matches!(node.role, Role::Idle) && node.mirror_fault);
        let lost_power = node.lost_power_streaming();
        let refused =
            crate::core::mirror::promotion_refusal(faulted.then_some("a simulated disk fault"), lost_power).is_some();
        if refused && !faulted {
            self.outcome("promotion refused: the mirror lost power while it streamed");
            if let Role::Mirror { faulted, .. } = &mut self.nodes[n].role {
                *faulted = true;
            }
        }
        refused
    }

    /// Start serving as primary of `gen`: streaming to `mirror`, or alone.
    fn become_primary(&mut self, n: usize, gen: u64, mirror: Option<usize>) -> Result<(), SimFailure> {
        if self.promotion_refused(n) {
            return Ok(());
        }
        match self.nodes[n].role {
            Role::Down { .. } | Role::Halted => return Ok(()),
            Role::Primary { .. } => {
                // Serving another generation (or not at all): start afresh.
                self.drop_engine(n);
            }
            Role::Mirror { .. } => {
                // A promoted mirror refuses the old generation's stream from now on (rule 7).
                if self.session.as_ref().is_some_and(|s| s.mirror == n && s.mirror_on) {
                    self.end_mirror_side("promoted")?;
                }
                // Its session's final sync may have failed just now.
                if self.promotion_refused(n) {
                    return Ok(());
                }
            }
            Role::Idle => {}
        }
        if self.nodes[n].log.is_none() {
            self.open_log(n)?;
            if self.nodes[n].log.is_none() {
                return Ok(());
            }
        }
        if !self.sync_at_start(n)? {
            return Ok(());
        }
        match mirror {
            None => {
                self.start_engine(n, gen, Some("the arbiter marked the mirror down"));
            }
            Some(m) => match self.open_session(n, m, gen, 0) {
                Ok(()) => self.start_engine(n, gen, None),
                Err(why) => {
                    // Rule 3: never on alone without the arbiter's word.
                    tracing::debug!(seed = self.seed, why, "sim: the mirror refused the new primary");
                    if !self.arbiter_up || !self.nodes[n].reaches_arbiter {
                        return Ok(());
                    }
                    let reporter = self.nodes[n].dbid;
                    let out = self.arbiter_apply(Event::MirrorLost { reporter, generation: gen })?;
                    if out.verdict == Verdict::MirrorDown {
                        self.start_engine(n, gen, Some("mirror unreachable at start"));
                    }
                }
            },
        }
        Ok(())
    }

    /// Before segment `n` takes a role or hands its change set over, the
    /// files an earlier fault of its left in doubt are rewritten and
    /// synced, as the segment process does. False: a fault fired meanwhile
    /// and the segment is down (or lost power).
    fn settle(&mut self, n: usize) -> Result<bool, SimFailure> {
        let Some(log) = self.nodes[n].log.clone() else { return Ok(true) };
        let disk = self.nodes[n].data.clone();
        let fired = disk.fired_total() + self.nodes[n].log_io.fired_total();
        let settled = crate::exec::doubt::settle_in_doubt(disk.as_ref(), &log, self.cfg.bug).map(|s| s.is_some());
        if self.nodes[n].log_io.power_lost() {
            // The power went inside the note's removal.
            self.crash_node(n)?;
            return Ok(false);
        }
        match settled {
            Ok(true) => self.outcome("a segment rewrote the files a fault left in doubt"),
            Ok(false) => {}
            Err(_) if disk.fired_total() + self.nodes[n].log_io.fired_total() > fired => {
                self.outcome("a segment could not settle the files in doubt");
                if self.session.as_ref().is_some_and(|s| s.mirror == n && s.mirror_on) {
                    self.end_mirror_side("its files in doubt could not be settled")?;
                }
                if self.nodes[n].primary.is_some() {
                    self.drop_engine(n);
                }
                self.nodes[n].role = Role::Down { restart_at: self.now + self.rng.gen_range(20..200) };
                return Ok(false);
            }
            Err(e) => return Err(self.fail(format!("segment {} settling its files in doubt: {e}", self.nodes[n].dbid))),
        }
        Ok(true)
    }

    /// A process starting as primary makes its data directories durable
    /// first, as the runtime does; a disk that fails it stops the start
    /// (the process exits and is restarted later).
    fn sync_at_start(&mut self, n: usize) -> Result<bool, SimFailure> {
        let disk = self.nodes[n].data.clone();
        if !self.settle(n)? {
            return Ok(false);
        }
        let fired = disk.fired_total();
        match crate::io::disk::sync_tree(disk.as_ref(), self.cfg.filespaces) {
            Ok(_) => Ok(true),
            Err(_) if disk.fired_total() > fired => {
                self.outcome("a primary could not sync its data at start");
                self.nodes[n].role = Role::Down { restart_at: self.now + self.rng.gen_range(20..200) };
                Ok(false)
            }
            Err(e) => Err(self.fail(format!("syncing segment {}'s data at start: {e}", self.nodes[n].dbid))),
        }
    }

    /// A returning old primary's change set goes to the acting primary's
    /// change-log, durably, then it forgets it (rule 5).
    pub(super) fn hand_over(&mut self, from: usize, to: usize) -> Result<(), SimFailure> {
        let (Some(old), Some(new)) = (self.nodes[from].log.clone(), self.nodes[to].log.clone()) else { return Ok(()) };
        if !self.settle(from)? {
            return Ok(());
        }
        let set = old.change_set();
        let merged = new.merge(&set);
        if self.nodes[to].log_io.power_lost() {
            return self.crash_node(to);
        }
        if let Err(e) = merged {
            tracing::debug!(seed = self.seed, error = %e, "sim: hand-over failed");
            return Ok(());
        }
        let cleared = old.clear();
        if self.nodes[from].log_io.power_lost() {
            return self.crash_node(from);
        }
        if cleared.is_ok() {
            self.outcome("change set handed over");
        }
        Ok(())
    }

    /// The segment is down: nothing is written anywhere.
    fn halt(&mut self, n: usize) -> Result<(), SimFailure> {
        if matches!(self.nodes[n].role, Role::Halted) {
            return Ok(());
        }
        if self.nodes[n].primary.is_some() {
            self.drop_engine(n);
        }
        if self.session.as_ref().is_some_and(|s| s.mirror == n && s.mirror_on) {
            self.end_mirror_side("halted or restarted")?;
        }
        self.nodes[n].role = Role::Halted;
        Ok(())
    }

    /// A crashed segment's process starts again: it replays its change-log
    /// and waits for the arbiter.
    pub(super) fn restart(&mut self, n: usize) -> Result<(), SimFailure> {
        self.nodes[n].role = Role::Idle;
        self.open_log(n)
    }
}
