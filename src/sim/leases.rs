//! A model of several arbiters on a coordinator, checked seed by seed:
//! two arbiters campaign for one leader key with a lease, renew it, read
//! and commit one pair (compare-and-swap on its revision and on the
//! leadership, as the etcd store does), and order two segments, which fence
//! by epoch ([`crate::core::fence`]). The store's messages are delayed,
//! reordered, refused, and answered or not; arbiters crash and come back;
//! their clocks run up to 5 % apart. What each arbiter decides is the real
//! pair state machine ([`crate::core::pair`]), its orders are the real
//! [`crate::core::arbiter::orders`], and whether it may order at all is the
//! real leadership state machine ([`crate::core::lease`]).
//!
//! Checked: at no instant do two arbiters act; one generation is never
//! entered by two commits; within one generation every segment that
//! accepted an order was told the same roles (whoever gave it), so one
//! primary per generation; and no segment accepts an order of an epoch
//! below one it obeyed.

use crate::core::arbiter::{orders, Acting, Order, Seen};
use crate::core::lease::{Lead, LEASE_TTL, RENEW_EVERY};
use crate::core::pair::{Event, Pair};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BinaryHeap};

/// Lease TTL and renewal period in model milliseconds: the leadership's own.
const TTL: u64 = LEASE_TTL.as_millis() as u64;
const RENEW: u64 = RENEW_EVERY.as_millis() as u64;
const TICK: u64 = 100;
/// Longest one-way delay of a message (orders are sometimes held far longer).
const MAX_DELAY: u64 = 200;
const RUN_FOR: u64 = 60_000;

/// A defect to plant: the model must catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseBug {
    /// Commits check neither the leadership nor the pair's revision: a
    /// deposed arbiter's stale catalog overwrites the acting one's.
    BlindCommit,
    /// Segments obey any epoch.
    NoFence,
    /// An arbiter acts until its lease would end, with no safety margin,
    /// counted from when the renewal was answered (not sent).
    NoSafetyMargin,
}

#[derive(Clone, Debug)]
enum Req {
    Campaign,
    Renew { epoch: u64, sent: u64 },
    Read,
    Commit { epoch: u64, base: u64, pair: Pair },
}

#[derive(Clone, Debug)]
enum Reply {
    Elected {
        epoch: u64,
        sent: u64,
    },
    /// A renewal of `epoch` sent at `sent`: the lease lives, or not.
    Renewed {
        epoch: u64,
        sent: u64,
        alive: bool,
    },
    /// A campaign lost: another leads.
    Lost,
    Snapshot {
        pair: Pair,
        rev: u64,
    },
    Committed {
        pair: Pair,
        rev: u64,
    },
    Refused,
}

#[derive(Clone, Debug)]
enum Msg {
    ToStore { from: usize, incarnation: u32, req: Req, sent: u64 },
    ToArbiter { to: usize, incarnation: u32, reply: Reply },
    ToSegment { dbid: u32, epoch: u64, order: Order },
    Tick { arbiter: usize },
}

struct Store {
    rev: u64,
    /// (owner, epoch = create revision, lease expiry).
    leader: Option<(usize, u64, u64)>,
    pair: Pair,
    pair_rev: u64,
    /// (epoch, generation before, generation after) of every commit.
    log: Vec<(u64, u64, u64)>,
}

struct Arbiter {
    incarnation: u32,
    up: bool,
    lead: Lead,
    snapshot: Option<(Pair, u64)>,
    busy_until: u64,
    last_renew: u64,
    /// Its clock's rate, in parts per thousand.
    rate: u64,
}

impl Arbiter {
    fn new(rate: u64) -> Arbiter {
        Arbiter {
            incarnation: 0,
            up: true,
            lead: Lead::Unreachable("not elected yet".into()),
            snapshot: None,
            busy_until: 0,
            last_renew: 0,
            rate,
        }
    }

    /// Its own clock at model time `now`.
    fn clock(&self, now: u64) -> std::time::Duration {
        ms(now * self.rate / 1000)
    }
}

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    dbid: u32,
    acting: Acting,
    generation: u64,
    obeyed: u64,
}

/// What one run saw.
#[derive(Debug, Default)]
pub struct LeaseReport {
    pub commits: usize,
    pub leaders: usize,
    pub orders_accepted: usize,
    pub orders_refused: usize,
}

/// Run the model from `seed`; `Err` names the broken rule and the instant.
pub fn run(seed: u64, bug: Option<LeaseBug>) -> Result<LeaseReport, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut queue: BinaryHeap<std::cmp::Reverse<(u64, u64, usize)>> = BinaryHeap::new();
    let mut msgs: Vec<Msg> = Vec::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<_>, msgs: &mut Vec<Msg>, at: u64, m: Msg| {
        msgs.push(m);
        seq += 1;
        q.push(std::cmp::Reverse((at, seq, msgs.len() - 1)));
    };
    let mut store = Store { rev: 1, leader: None, pair: Pair::new(0, 2, 3), pair_rev: 1, log: Vec::new() };
    let mut arbiters: Vec<Arbiter> = (0..2).map(|_| Arbiter::new(rng.gen_range(950..=1050))).collect();
    let mut segs = [2u32, 3].map(|dbid| Seg { dbid, acting: Acting::Idle, generation: 0, obeyed: 0 });
    // Per generation: the roles accepted (dbid → primary?).
    let mut told: BTreeMap<u64, BTreeMap<u32, bool>> = BTreeMap::new();
    let mut report = LeaseReport::default();
    for a in 0..2 {
        push(&mut queue, &mut msgs, rng.gen_range(0..TICK), Msg::Tick { arbiter: a });
    }
    let refuse_p = rng.gen_range(0.0..0.2);
    while let Some(std::cmp::Reverse((now, _, i))) = queue.pop() {
        if now > RUN_FOR {
            break;
        }
        // At most one arbiter acts at any instant (each by its own clock).
        let acting: Vec<usize> = (0..2)
            .filter(|a| arbiters[*a].up && arbiters[*a].lead.acting_epoch(arbiters[*a].clock(now)).is_some())
            .collect();
        if acting.len() > 1 {
            return Err(format!("seed {seed}: at {now} ms arbiters {acting:?} both act"));
        }
        let delay = |rng: &mut ChaCha8Rng| rng.gen_range(1..MAX_DELAY);
        match msgs[i].clone() {
            Msg::Tick { arbiter: a } => {
                push(&mut queue, &mut msgs, now + TICK, Msg::Tick { arbiter: a });
                let ar = &mut arbiters[a];
                let local = now * ar.rate / 1000;
                // Crash and come back now and then.
                if ar.up && rng.gen_bool(0.004) {
                    ar.up = false;
                    ar.lead = Lead::Unreachable("crashed".into());
                    ar.snapshot = None;
                    ar.incarnation += 1;
                    continue;
                }
                if !ar.up {
                    ar.up = rng.gen_bool(0.05);
                    continue;
                }
                let acting = ar.lead.acting_epoch(ar.clock(now));
                ar.lead.at(ar.clock(now));
                let inc = ar.incarnation;
                // Renewals go on beside everything else (the store's own task).
                if let Some(epoch) = acting.filter(|_| local >= ar.last_renew + RENEW) {
                    ar.last_renew = local;
                    let m =
                        Msg::ToStore { from: a, incarnation: inc, req: Req::Renew { epoch, sent: local }, sent: local };
                    push(&mut queue, &mut msgs, now + delay(&mut rng), m);
                }
                if now < ar.busy_until {
                    continue;
                }
                let req = match (acting, &ar.snapshot) {
                    (None, _) => Req::Campaign,
                    (Some(_), None) => Req::Read,
                    (Some(epoch), Some((pair, rev))) => {
                        // What the probes saw: a segment fails now and then, and returns.
                        let mut next = pair.clone();
                        let dbid = if rng.gen_bool(0.5) { 2 } else { 3 };
                        let event = if pair.down && rng.gen_bool(0.5) {
                            // The operator restores a content that went down.
                            Event::Restore
                        } else if rng.gen_bool(0.15) {
                            Event::ProbeFailed { dbid }
                        } else {
                            Event::SegmentUp { dbid }
                        };
                        let changed = next.apply(&event).changed;
                        if changed {
                            Req::Commit { epoch, base: *rev, pair: next }
                        } else {
                            let probes: Vec<(u32, Option<Seen>)> =
                                segs.iter().map(|s| (s.dbid, Some(seen(s)))).collect();
                            for order in orders(pair, &probes, None) {
                                let dbid = match &order {
                                    Order::BecomeMirror { dbid, .. } | Order::BecomePrimary { dbid, .. } => *dbid,
                                    Order::HandOver { .. } => continue,
                                };
                                // Now and then an order is held up in the network far
                                // longer than a change of leader takes.
                                let late = if rng.gen_bool(0.05) { rng.gen_range(0..5 * TTL) } else { 0 };
                                let m = Msg::ToSegment { dbid, epoch, order };
                                push(&mut queue, &mut msgs, now + delay(&mut rng) + late, m);
                            }
                            continue;
                        }
                    }
                };
                ar.busy_until = now + 2 * MAX_DELAY;
                // A request too may arrive long after it was sent (the
                // arbiter has given up on it by then).
                let late = if rng.gen_bool(0.02) { rng.gen_range(0..5 * TTL) } else { 0 };
                let m = Msg::ToStore { from: a, incarnation: inc, req, sent: local };
                push(&mut queue, &mut msgs, now + delay(&mut rng) + late, m);
            }
            Msg::ToStore { from, incarnation, req, sent } => {
                if rng.gen_bool(refuse_p) {
                    continue; // refused, or lost on the way: no answer
                }
                if store.leader.is_some_and(|(_, _, expiry)| expiry <= now) {
                    store.leader = None;
                }
                let ours = |store: &Store, epoch: u64| store.leader.is_some_and(|(o, e, _)| o == from && e == epoch);
                let reply = match req {
                    Req::Campaign => match store.leader {
                        None => {
                            store.rev += 1;
                            store.leader = Some((from, store.rev, now + TTL));
                            report.leaders += 1;
                            Reply::Elected { epoch: store.rev, sent }
                        }
                        Some(_) => Reply::Lost,
                    },
                    Req::Renew { epoch, sent } if ours(&store, epoch) => {
                        store.leader = Some((from, epoch, now + TTL));
                        Reply::Renewed { epoch, sent, alive: true }
                    }
                    Req::Renew { epoch, sent } => Reply::Renewed { epoch, sent, alive: false },
                    Req::Read => Reply::Snapshot { pair: store.pair.clone(), rev: store.pair_rev },
                    Req::Commit { epoch, base, pair } => {
                        let blind = bug == Some(LeaseBug::BlindCommit);
                        if blind || (ours(&store, epoch) && base == store.pair_rev) {
                            // The catalog never goes back, and a generation has one primary.
                            if pair.generation < store.pair.generation {
                                return Err(format!(
                                    "seed {seed}: at {now} ms epoch {epoch} took the catalog back from generation {} to {}",
                                    store.pair.generation, pair.generation
                                ));
                            }
                            let p = pair.acting_primary().dbid;
                            if pair.generation == store.pair.generation && p != store.pair.acting_primary().dbid {
                                return Err(format!(
                                    "seed {seed}: at {now} ms epoch {epoch} made {p} primary in generation {} of another",
                                    pair.generation
                                ));
                            }
                            store.rev += 1;
                            store.log.push((epoch, store.pair.generation, pair.generation));
                            store.pair = pair.clone();
                            store.pair_rev = store.rev;
                            report.commits += 1;
                            Reply::Committed { pair, rev: store.rev }
                        } else {
                            Reply::Refused
                        }
                    }
                };
                // The answer may be lost after the store acted.
                if !rng.gen_bool(refuse_p / 2.0) {
                    let m = Msg::ToArbiter { to: from, incarnation, reply };
                    push(&mut queue, &mut msgs, now + delay(&mut rng), m);
                }
            }
            Msg::ToArbiter { to, incarnation, reply } => {
                let ar = &mut arbiters[to];
                if !ar.up || ar.incarnation != incarnation {
                    continue;
                }
                if !matches!(reply, Reply::Renewed { .. }) {
                    ar.busy_until = 0;
                }
                let local = ms(now * ar.rate / 1000);
                let lease_granted = matches!(reply, Reply::Elected { .. } | Reply::Renewed { alive: true, .. });
                match reply {
                    Reply::Elected { epoch, sent } => {
                        ar.lead = Lead::elected(epoch, 0, ms(sent));
                        ar.last_renew = sent;
                        ar.snapshot = None;
                    }
                    Reply::Renewed { epoch, sent, alive } => {
                        ar.lead.renewal_answered(epoch, ms(sent), alive);
                    }
                    Reply::Lost => ar.lead = Lead::Standby { leader: None },
                    Reply::Snapshot { pair, rev } | Reply::Committed { pair, rev } => ar.snapshot = Some((pair, rev)),
                    // Read again, apply again.
                    Reply::Refused => ar.snapshot = None,
                }
                // The defect: acting until the lease's full TTL from the
                // answer, not from the request less the margin.
                if let (true, Some(LeaseBug::NoSafetyMargin), Lead::Acting { until, .. }) =
                    (lease_granted, bug, &mut ar.lead)
                {
                    *until = local + LEASE_TTL;
                }
            }
            Msg::ToSegment { dbid, epoch, order } => {
                let Some(seg) = segs.iter_mut().find(|s| s.dbid == dbid) else { continue };
                let admitted = match bug {
                    Some(LeaseBug::NoFence) => Ok((epoch > seg.obeyed).then_some(epoch)),
                    _ => crate::core::fence::admit(seg.obeyed, epoch),
                };
                let Ok(newer) = admitted else {
                    report.orders_refused += 1;
                    continue;
                };
                if epoch < seg.obeyed {
                    return Err(format!(
                        "seed {seed}: at {now} ms dbid {dbid} obeyed epoch {epoch} after {}",
                        seg.obeyed
                    ));
                }
                seg.obeyed = newer.unwrap_or(seg.obeyed);
                let (primary, generation) = match order {
                    Order::BecomePrimary { generation, .. } => (true, generation),
                    Order::BecomeMirror { generation, .. } => (false, generation),
                    Order::HandOver { .. } => continue,
                };
                report.orders_accepted += 1;
                seg.acting = if primary { Acting::Primary } else { Acting::Mirror };
                seg.generation = generation;
                let roles = told.entry(generation).or_default();
                if roles.insert(dbid, primary).is_some_and(|was| was != primary) {
                    return Err(format!(
                        "seed {seed}: at {now} ms dbid {dbid} told both roles in generation {generation}"
                    ));
                }
                if roles.values().filter(|p| **p).count() > 1 {
                    return Err(format!(
                        "seed {seed}: at {now} ms two primaries in generation {generation}: {roles:?}"
                    ));
                }
            }
        }
    }
    // One commit enters each generation.
    let mut entered: BTreeMap<u64, u64> = BTreeMap::new();
    for (epoch, before, after) in &store.log {
        if after > before {
            if let Some(other) = entered.insert(*after, *epoch) {
                return Err(format!("seed {seed}: generation {after} entered twice (epochs {other} and {epoch})"));
            }
        }
    }
    Ok(report)
}

fn seen(s: &Seg) -> Seen {
    Seen {
        dbid: s.dbid,
        acting: s.acting,
        generation: s.generation,
        mode: if s.acting == Acting::Primary { 's' } else { '-' },
        changes_pending: false,
        faulted: false,
        unheard: false,
        lost_power_streaming: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every schedule keeps the rules; a failure prints its seed
    /// (`cargo test -p filerep --lib sim::leases` reruns them all).
    #[test]
    fn two_arbiters_on_a_faulty_store_never_decide_one_generation_twice() {
        let mut total = LeaseReport::default();
        for seed in 0..2000 {
            let r = run(seed, None).unwrap_or_else(|e| panic!("{e} (rerun: sim::leases::run({seed}, None))"));
            total.commits += r.commits;
            total.leaders += r.leaders;
            total.orders_accepted += r.orders_accepted;
            total.orders_refused += r.orders_refused;
        }
        eprintln!("2000 schedules: {total:?}");
        // The schedules did what they are for: leaders changed, stale orders came.
        assert!(total.leaders > 2000 && total.commits > 20_000, "{total:?}");
        assert!(total.orders_refused > 0 && total.orders_accepted > 0, "{total:?}");
    }

    #[test]
    fn each_planted_defect_is_caught() {
        for bug in [LeaseBug::BlindCommit, LeaseBug::NoFence, LeaseBug::NoSafetyMargin] {
            let caught = (0..300).find(|seed| run(*seed, Some(bug)).is_err());
            assert!(caught.is_some(), "{bug:?} not caught in 300 seeds");
        }
    }
}
