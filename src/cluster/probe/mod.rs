//! `filerep arbiter`: the cluster's fault probe. It owns the catalog,
//! probes every segment at an interval (with a timeout and retries),
//! applies the pair transitions of [`crate::core::pair`] and nothing else,
//! records each change with its history durably *before* acting on it, and
//! then gives the segments their orders. It also answers a primary's "my
//! mirror is gone" (brief rule 3).
//!
//! One round: probe everyone (without holding the catalog), feed failures
//! and recoveries to the pair state machine, store the catalog if it
//! changed, then bring each segment to the role the catalog gives it:
//! mirrors first (so a primary finds its mirror listening), then primaries;
//! and hand a returning old primary's activity log to the acting primary.

mod ask;
mod requests;
mod workers;

pub use ask::{arbiter_addresses, ask, fetch_catalog};

pub use workers::at_once;
use workers::Workers;

use crate::cluster::control;
use crate::cluster::segment::{
    Acting, ArbiterRequest, ArbiterResponse, NewMirror, SegmentRequest, SegmentResponse, SegmentStatus,
};
use crate::core::arbiter::{self, Order};
use crate::core::pair::{Event, PairMode, Role, Verdict};
use crate::durable::catalog::{
    Catalog, CatalogPair, CatalogSolo, CatalogStore, Committed, FileStore, Leadership, Snapshot,
};
use crate::error::{Error, Result};
use crate::io::admission::{Limits, Nudge, Stop};
use crate::protocol::handshake::ClusterKey;
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub catalog: PathBuf,
    pub key: ClusterKey,
    pub listen: String,
    /// Time between probe rounds.
    pub interval: Duration,
    /// One probe's time limit.
    pub timeout: Duration,
    /// Probes retried before a segment is declared down.
    pub retries: u32,
    /// How long a new control connection may take to send its request.
    pub handshake_timeout: Duration,
    /// Probes in flight at once (Greenplum's probe thread count): a hung
    /// segment costs its own timeout, not everyone's.
    pub probe_threads: usize,
    /// Where the catalog and the leadership are: `None`, the catalog file
    /// alone (one arbiter); `etcd://HOST:PORT[,HOST:PORT…]`, etcd (several
    /// arbiters, one acting; [`crate::cluster::coordinator`]).
    pub coordinator: Option<String>,
}

/// Times a change is applied again after its commit met another's.
pub const MAX_COMMIT_ATTEMPTS: u32 = 5;

/// Most probes in flight at once.
pub const MAX_PROBE_THREADS: usize = 1024;
/// Probes in flight at once by default: a host of 128 primaries and 128
/// mirrors that hangs is seen in one probe timeout (a waiting probe costs
/// a blocked thread, no CPU).
pub const DEFAULT_PROBE_THREADS: usize = 256;

impl ProbeConfig {
    pub fn check(&self) -> Result<()> {
        let ms = |d: Duration| d.as_millis();
        if !(10..=600_000).contains(&ms(self.interval)) || !(10..=600_000).contains(&ms(self.timeout)) {
            return Err(Error::InvalidArgument("probe interval and timeout: use 10 ms to 10 minutes".into()));
        }
        Limits::new(1).with_deadline(self.handshake_timeout).check().map_err(Error::InvalidArgument)?;
        if !(1..=MAX_PROBE_THREADS).contains(&self.probe_threads) {
            return Err(Error::InvalidArgument(format!(
                "{} probe threads: use 1 to {MAX_PROBE_THREADS}",
                self.probe_threads
            )));
        }
        if self.retries > 100 {
            return Err(Error::InvalidArgument(format!("{} probe retries: at most 100", self.retries)));
        }
        Ok(())
    }
}

/// A pair as the round stored it, the orders it gives its segments, and
/// what they answered (by dbid).
struct Ordered {
    pair: CatalogPair,
    orders: Vec<Order>,
    statuses: Vec<(u32, Option<SegmentStatus>)>,
}

/// One pair as a round's probes saw it: its content, what the state
/// machine weighs, and the segments' whole answers (by dbid).
type Observed = (u32, Vec<(u32, Option<arbiter::Seen>)>, Vec<(u32, Option<SegmentStatus>)>);

/// What one round's probes found, by control address.
struct Probed(HashMap<String, Option<SegmentStatus>>);

impl Probed {
    fn get(&self, addr: &str) -> Option<SegmentStatus> {
        self.0.get(addr).cloned().flatten()
    }
}

struct State {
    cfg: ProbeConfig,
    store: Box<dyn CatalogStore>,
    /// The catalog as committed, with what the store needs for the next commit.
    catalog: Mutex<Snapshot>,
    /// This arbiter's address, as the others and the segments know it.
    me: String,
    /// Segments whose last probe failed, by control address.
    down: Arc<Mutex<HashMap<String, Down>>>,
    /// Connections to the segments kept between probes.
    kept: control::Kept,
    workers: Workers,
    /// Wakes the round loop when a request changed the catalog, so its
    /// orders go out now, not at the next interval.
    nudge: Arc<Nudge>,
    /// A store failed and the stored catalog could not be read back: the
    /// one in memory may hold what was never stored.
    unsure: std::sync::atomic::AtomicBool,
}

/// A segment that did not answer its last probe: probed again off the
/// round (one attempt, no retries: it is down already), each time after a
/// longer pause, so a hung host costs the rounds nothing once it is seen.
#[derive(Debug)]
struct Down {
    /// Probes failed in a row.
    failures: u32,
    /// When the next probe is due.
    next: Instant,
    /// A probe is under way.
    probing: bool,
    /// What the last probe off the round found, if it answered.
    answered: Option<SegmentStatus>,
}

/// The longest pause between probes of a segment that is down.
pub const MAX_DOWN_BACKOFF: Duration = Duration::from_secs(2);

pub struct ArbiterProcess {
    state: Arc<State>,
    listener: TcpListener,
    stop: Arc<Stop>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ArbiterProcess {
    pub fn open(cfg: ProbeConfig) -> Result<ArbiterProcess> {
        cfg.check()?;
        let listener = TcpListener::bind(&cfg.listen).map_err(|e| Error::io(format!("binding {}", cfg.listen), e))?;
        let me = listener.local_addr().map_err(|e| Error::io("arbiter address", e))?.to_string();
        let store: Box<dyn CatalogStore> = match &cfg.coordinator {
            // Held for the arbiter's life: one writer per catalog.
            None => Box::new(FileStore::for_arbiter(&cfg.catalog)?),
            Some(spec) => crate::cluster::coordinator::open(spec, &me)?,
        };
        // A coordinator that cannot be reached yet does not keep an arbiter
        // from starting: it answers who it is, decides nothing, and reads
        // the catalog once it can ([`State::sure`]). A damaged catalog, or
        // the file's, still stops it here.
        let (catalog, unsure) = match store.load() {
            Ok(c) => (c, false),
            Err(e @ Error::Coordinator(_)) => {
                tracing::error!(error = %e, coordinator = %store.describe(), "the catalog cannot be read yet: nothing is decided until it can");
                (Snapshot::plain(Catalog::new(0, 0, Vec::new())), true)
            }
            Err(e) => return Err(e),
        };
        let workers = Workers::new(cfg.probe_threads)?;
        let nudge = Arc::new(Nudge::new().map_err(|e| Error::io("making the round's wake-up", e))?);
        Ok(ArbiterProcess {
            state: Arc::new(State {
                cfg,
                store,
                catalog: Mutex::new(catalog),
                me,
                down: Default::default(),
                kept: control::Kept::new(),
                workers,
                nudge,
                unsure: std::sync::atomic::AtomicBool::new(unsure),
            }),
            listener,
            stop: Stop::new().map_err(|e| Error::io("making the stop signal", e))?,
        })
    }

    pub fn local_addr(&self) -> Result<std::net::SocketAddr> {
        self.listener.local_addr().map_err(|e| Error::io("arbiter address", e))
    }

    /// One probe round now, as [`ArbiterProcess::run`] does at each
    /// interval (benchmarks: `filerep bench --probe-round`).
    pub fn probe_round(&self) {
        self.state.round();
    }

    /// Segments whose last probe failed.
    pub fn segments_down(&self) -> usize {
        lock(&self.state.down).len()
    }

    /// Stops [`ArbiterProcess::run`] (wire it to signals with [`Stop::on_signals`]).
    pub fn stop_signal(&self) -> Arc<Stop> {
        self.stop.clone()
    }

    /// Serve segments' questions and probe until stopped.
    pub fn run(self) -> Result<()> {
        let ArbiterProcess { state, listener, stop } = self;
        let s = state.clone();
        let st = stop.clone();
        let server = std::thread::Builder::new()
            .name("filerep-arbiter-control".into())
            .spawn(move || {
                let limits = control::arbiter_limits(s.cfg.handshake_timeout);
                let limits = (limits, control::ARBITER_MAX_REQUEST);
                control::serve(listener, s.cfg.key.clone(), st, limits, Duration::from_secs(10), {
                    let s = s.clone();
                    move |r| s.answer(r)
                })
            })
            .map_err(|e| Error::io("spawning the control thread", e))?;
        tracing::info!(catalog = %state.store.describe(), "arbiter probing");
        while !stop.is_stopped() {
            let started = Instant::now();
            state.round();
            // The rest of the interval, woken at once to stop or by a
            // request that changed the catalog.
            stop.wait_or(Some(&state.nudge), state.cfg.interval.saturating_sub(started.elapsed()));
        }
        let _ = server.join();
        Ok(())
    }
}

impl State {
    /// Apply `change` (a pure function of the catalog: whether it changed
    /// anything and its answer, or why it is refused, having changed
    /// nothing) to the catalog and commit it, before anyone hears the
    /// answer. A commit that met another's (the store
    /// changed since it was read) reads the store again and applies the
    /// change again, up to [`MAX_COMMIT_ATTEMPTS`] times. `Err`: nothing
    /// was committed (the catalog in memory is the stored one again), and
    /// the caller refuses with the reason.
    fn transact<T>(
        &self,
        snap: &mut Snapshot,
        mut change: impl FnMut(&mut Catalog) -> std::result::Result<(bool, T), String>,
    ) -> std::result::Result<T, String> {
        for attempt in 1..=MAX_COMMIT_ATTEMPTS {
            let (changed, answer) = change(&mut snap.catalog)?;
            if !changed {
                return Ok(answer);
            }
            match self.store.commit(snap) {
                Ok(Committed::Done) => return Ok(answer),
                Ok(Committed::Conflict(why)) => {
                    tracing::warn!(attempt, reason = %why, "the catalog changed in the store since it was read: reading it again");
                    if !self.reload(snap) {
                        return Err("the catalog changed in its store and cannot be read back".into());
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot store the catalog: nothing is decided");
                    self.reload(snap);
                    return Err(format!("the catalog cannot be written ({})", e.cause()));
                }
            }
        }
        Err(format!("the catalog kept changing in its store ({MAX_COMMIT_ATTEMPTS} attempts): nothing was decided"))
    }

    /// Read the stored catalog into `snap`; if it cannot be read, what is
    /// in memory may hold what was never stored, and nothing is decided
    /// from it until the stored one is read back ([`State::sure`]).
    fn reload(&self, snap: &mut Snapshot) -> bool {
        match self.store.load() {
            Ok(stored) => {
                *snap = stored;
                true
            }
            Err(e) => {
                self.unsure.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::error!(error = %e, "cannot read the catalog back either: no decision until it can");
                false
            }
        }
    }

    /// Whether the catalog in memory is the stored one: after a store and
    /// its read-back both failed it is not, and is read back first.
    fn sure(&self) -> bool {
        use std::sync::atomic::Ordering;
        if !self.unsure.load(Ordering::SeqCst) {
            return true;
        }
        match self.store.load() {
            Ok(c) => {
                *lock(&self.catalog) = c;
                self.unsure.store(false, Ordering::SeqCst);
                tracing::warn!(catalog = %self.store.describe(), "the stored catalog read back: deciding again");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "the stored catalog still cannot be read: nothing is decided");
                false
            }
        }
    }

    /// This arbiter's epoch while it acts; `None` when it must not order.
    fn epoch(&self) -> Option<u64> {
        match self.store.leadership() {
            Leadership::Acting { epoch } => Some(epoch),
            _ => None,
        }
    }

    /// What this arbiter is, for `filerep state` (any arbiter answers).
    fn leadership(&self) -> ArbiterResponse {
        ArbiterResponse::Leadership {
            arbiter: self.me.clone(),
            coordinator: self.store.describe(),
            leadership: self.store.leadership(),
        }
    }

    /// A segment's status, on the connection kept to it (a probe is then
    /// one round trip), tried `retries` more times before it counts as down.
    fn probe(&self, addr: &str) -> Option<SegmentStatus> {
        for attempt in 0..=self.cfg.retries {
            match self.kept.call::<_, SegmentResponse>(addr, &self.cfg.key, &SegmentRequest::Probe, self.cfg.timeout) {
                Ok(SegmentResponse::Status(s)) => return Some(s),
                Ok(other) => tracing::warn!(addr, ?other, "unexpected probe answer"),
                Err(e) => tracing::debug!(addr, attempt, error = %e, "probe failed"),
            }
        }
        self.kept.forget(addr);
        None
    }

    /// Send an order, fenced with this arbiter's epoch; none is sent while
    /// it does not act (its lease lapsed since the round began).
    fn order(&self, addr: &str, req: SegmentRequest) -> Option<SegmentResponse> {
        let what = format!("{req:?}");
        let Some(epoch) = self.epoch() else {
            tracing::warn!(addr, order = %what, "not sent: this arbiter no longer acts");
            return None;
        };
        let req = SegmentRequest::Fenced { epoch, order: Box::new(req) };
        match control::call::<_, SegmentResponse>(addr, &self.cfg.key, &req, self.cfg.timeout) {
            Ok(r) => {
                if let SegmentResponse::Refused(why) = &r {
                    tracing::warn!(addr, order = %what, %why, "order refused");
                }
                Some(r)
            }
            Err(e) => {
                tracing::warn!(addr, order = %what, error = %e, "order not delivered");
                None
            }
        }
    }

    /// Contents without a mirror: record each primary up or down as its
    /// probe found it (under the round's lock); whether anything changed.
    fn solo_events(cat: &mut Catalog, probed: &Probed) -> bool {
        let mut changed = false;
        for i in 0..cat.unmirrored.len() {
            let solo = cat.unmirrored[i].clone();
            let up = probed.get(&solo.address.control).is_some_and(|s| s.dbid == solo.address.dbid);
            if up == solo.up {
                continue;
            }
            cat.unmirrored[i].up = up;
            let word = |u: bool| if u { "up" } else { "down" };
            cat.note(
                solo.content,
                format!("gen {} primary {} {}", solo.generation, solo.address.dbid, word(solo.up)),
                format!("gen {} primary {} {}", solo.generation, solo.address.dbid, word(up)),
                format!(
                    "primary {} (no mirror) is {}{}",
                    solo.address.dbid,
                    word(up),
                    if up { "" } else { ": the content is unavailable until it returns" }
                ),
            );
            changed = true;
        }
        changed
    }

    /// A content without a mirror whose primary answers and does not serve
    /// is told to serve alone.
    fn solo_orders(&self, solo: &CatalogSolo, probed: &Probed) {
        let Some(s) = probed.get(&solo.address.control).filter(|s| solo.up && s.dbid == solo.address.dbid) else {
            return;
        };
        let serving = s.acting == Acting::Primary && s.generation == solo.generation;
        if !serving && s.acting != Acting::Starting {
            tracing::info!(
                dbid = solo.address.dbid,
                generation = solo.generation,
                "ordering: become primary (no mirror)"
            );
            self.order(
                &solo.address.control,
                SegmentRequest::BecomePrimary { generation: solo.generation, mirror: None },
            );
        }
    }

    /// Every address probed at once, at most `probe_threads` in flight:
    /// the round waits for its slowest probe, not for the sum of them.
    /// A segment that failed its last probe is not waited for: it is
    /// probed off the round with backoff ([`Down`]), and counts as down
    /// until such a probe finds it answering.
    fn probe_all(self: &Arc<Self>, addrs: Vec<String>) -> Probed {
        let now = Instant::now();
        let mut found: HashMap<String, Option<SegmentStatus>> = HashMap::new();
        let mut live = Vec::new();
        {
            let mut down = lock(&self.down);
            for a in addrs {
                let Some(d) = down.get_mut(&a) else {
                    live.push(a);
                    continue;
                };
                if let Some(s) = d.answered.take() {
                    down.remove(&a);
                    found.insert(a, Some(s));
                    continue;
                }
                if !d.probing && now >= d.next {
                    d.probing = self.probe_off_round(a.clone());
                }
                found.insert(a, None);
            }
        }
        let me = self.clone();
        let answers = self.workers.map(live.clone(), move |a: String| me.probe(&a));
        let mut down = lock(&self.down);
        for (a, s) in live.into_iter().zip(answers.into_iter().map(Option::flatten)) {
            if s.is_none() {
                // The next round probes it off the round at once.
                down.insert(a.clone(), Down { failures: 1, next: now, probing: false, answered: None });
            }
            found.insert(a, s);
        }
        Probed(found)
    }

    /// One probe attempt of a segment that is down, on a thread of its own
    /// (at most one per segment), recorded in [`State::down`]; whether it
    /// started (the caller holds that lock).
    fn probe_off_round(&self, addr: String) -> bool {
        let (down, key, timeout, interval) =
            (self.down.clone(), self.cfg.key.clone(), self.cfg.timeout, self.cfg.interval);
        let nudge = self.nudge.clone();
        let spawned = std::thread::Builder::new().name("filerep-probe-down".into()).spawn(move || {
            let status = match control::call::<_, SegmentResponse>(&addr, &key, &SegmentRequest::Probe, timeout) {
                Ok(SegmentResponse::Status(s)) => Some(s),
                _ => None,
            };
            let mut down = lock(&down);
            if let Some(d) = down.get_mut(&addr) {
                d.probing = false;
                match status {
                    Some(s) => {
                        d.answered = Some(s);
                        // Back: a round now sees it, not at the next interval.
                        nudge.nudge();
                    }
                    None => {
                        // Pauses of one interval, then two, four … up to MAX_DOWN_BACKOFF.
                        d.failures = d.failures.saturating_add(1);
                        let doublings = d.failures.saturating_sub(2).min(6);
                        let pause = interval.saturating_mul(1 << doublings).min(MAX_DOWN_BACKOFF);
                        d.next = Instant::now() + pause;
                    }
                }
            }
        });
        match spawned {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot spawn a probe thread");
                false
            }
        }
    }

    /// One round: probe every segment; feed what the probes saw to every
    /// pair's state machine under one lock; store the catalog once if
    /// anything changed (nothing is acted on if that fails); then give
    /// every pair its orders, pairs at once.
    fn round(self: &Arc<Self>) {
        if !self.sure() {
            return;
        }
        // A standby probes nothing: the acting arbiter does.
        let Some(epoch) = self.epoch() else { return };
        let addrs = {
            let snap = lock(&self.catalog);
            let mut addrs: Vec<String> = snap.catalog.addresses().map(|(_, a)| a.control.clone()).collect();
            addrs.sort();
            addrs.dedup();
            addrs
        };
        self.kept.keep_only(&addrs);
        lock(&self.down).retain(|a, _| addrs.binary_search(a).is_ok());
        let probed = self.probe_all(addrs);
        if let Some(seen) = probed.0.values().flatten().map(|s| s.epoch).max().filter(|e| *e > epoch) {
            if let Err(e) = self.store.raise_epoch(seen) {
                tracing::error!(error = %e, "cannot raise the arbiter's epoch");
            }
        }
        let (solos, ordered): (Vec<CatalogSolo>, Vec<Ordered>) = {
            let mut snap = lock(&self.catalog);
            // What the probes saw, per pair, from the catalog as it is now
            // (and again if a commit meets another's).
            let observe = |cat: &Catalog| -> Vec<Observed> {
                cat.pairs
                    .iter()
                    .map(|cp| {
                        let statuses: Vec<(u32, Option<SegmentStatus>)> =
                            cp.addresses.iter().map(|a| (a.dbid, probed.get(&a.control))).collect();
                        let seen = statuses.iter().map(|(d, s)| (*d, s.as_ref().map(SegmentStatus::seen))).collect();
                        (cp.pair.content, seen, statuses)
                    })
                    .collect()
            };
            for (_, _, statuses) in observe(&snap.catalog) {
                for (dbid, st) in &statuses {
                    if let Some(s) = st.as_ref().filter(|s| s.dbid != *dbid) {
                        tracing::error!(expected = dbid, answered = s.dbid, "a different segment answers there");
                    }
                }
            }
            // Committed before any order that depends on it.
            let committed = self.transact(&mut snap, |cat| {
                let mut changed = Self::solo_events(cat, &probed);
                for (content, seen, _) in observe(cat) {
                    let Some(cp) = cat.pair(content) else { continue };
                    for event in arbiter::round_events(&cp.pair, &seen) {
                        changed |= cat.apply(content, &event).is_some_and(|o| o.changed);
                    }
                }
                Ok((changed, ()))
            });
            if let Err(why) = committed {
                tracing::error!(%why, "the round's changes are not committed: no orders");
                return;
            }
            // The orders of the catalog as committed; only pairs with orders.
            let cat = &snap.catalog;
            let ordered = observe(cat)
                .into_iter()
                .filter_map(|(content, seen, statuses)| {
                    let pair = cat.pair(content)?;
                    let orders = arbiter::orders(&pair.pair, &seen, None);
                    (!orders.is_empty()).then(|| Ordered { pair: pair.clone(), orders, statuses })
                })
                .collect();
            (cat.unmirrored.clone(), ordered)
        };
        for solo in &solos {
            self.solo_orders(solo, &probed);
        }
        // Each pair's orders in their order (mirrors first); pairs at once.
        if !ordered.is_empty() {
            let me = self.clone();
            self.workers.map(ordered, move |o| me.pair_orders(&o));
        }
    }

    /// Bring one pair's segments to the roles the catalog gives them.
    fn pair_orders(&self, Ordered { pair, orders, statuses }: &Ordered) {
        let status = |dbid: u32| statuses.iter().find(|(d, _)| *d == dbid).and_then(|(_, s)| s.clone());
        for order in orders.iter().cloned() {
            match order {
                Order::BecomeMirror { dbid, generation } => {
                    let Some(a) = pair.address(dbid) else { continue };
                    tracing::info!(dbid, generation, "ordering: become mirror");
                    self.order(&a.control, SegmentRequest::BecomeMirror { generation });
                }
                Order::BecomePrimary { dbid, generation, mirror } => {
                    let Some(a) = pair.address(dbid) else { continue };
                    let mirror = match mirror {
                        Some(m) => match pair.address(m) {
                            Some(ma) => Some(ma.data.clone()),
                            None => continue,
                        },
                        None => None,
                    };
                    tracing::info!(dbid, generation, streaming = mirror.is_some(), "ordering: become primary");
                    self.order(&a.control, SegmentRequest::BecomePrimary { generation, mirror });
                }
                Order::HandOver { from, to } => {
                    let (Some(f), Some(t)) = (pair.address(from), pair.address(to)) else { continue };
                    self.hand_over(&f.control, &t.control, status(to).as_ref());
                }
            }
        }
        debug_assert!(pair.pair.segments.iter().filter(|s| s.role == Role::Primary).count() == 1);
    }

    /// A returning old primary's activity log goes to the acting primary's
    /// change-log, then is cleared (brief rule 5). A crash in between
    /// leaves it in place; adding it twice changes nothing.
    fn hand_over(&self, from: &str, to: &str, primary: Option<&SegmentStatus>) {
        if !primary.is_some_and(|p| p.acting == Acting::Primary) {
            return; // Next round: the primary is not serving yet.
        }
        let Some(SegmentResponse::Changes(set)) = self.order(from, SegmentRequest::TakeChanges) else { return };
        let files = set.files.len();
        if !matches!(self.order(to, SegmentRequest::AddChanges { set }), Some(SegmentResponse::Done)) {
            return;
        }
        if matches!(self.order(from, SegmentRequest::ClearChanges), Some(SegmentResponse::Done)) {
            tracing::warn!(files, "an old primary's activity log handed to the acting primary");
        }
    }
}

#[cfg(test)]
mod tests;
