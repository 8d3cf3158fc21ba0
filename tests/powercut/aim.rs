//! Aimed cuts: after a round's delay, some cuts wait for the moment a
//! defect would show, then come at once.

use super::plan::Plan;
use super::Cluster;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Activity entries an aimed cut of the mirror's host waits to see retired.
const RETIRED_AT_CUT: u64 = 6;

/// Wait for the moment this round's cut is aimed at, if it is aimed: what
/// the wait saw, for the round's story (`None`: not aimed, cut when due).
pub fn wait(c: &Cluster, plan: &Plan, primary: u32) -> Option<String> {
    if plan.aimed_at_retire() {
        let hit = at_retire(c, primary);
        return Some(if hit { ", just after a retire" } else { ", no retire in 1.5 s" }.into());
    }
    if plan.aimed_at_first_write() {
        let lag = plan.first_write_lag_us(c.sync_latency_us[(primary - 2) as usize]);
        let hit = at_first_write(c, lag);
        return Some(if hit { format!(", {lag} µs into a first write") } else { ", no first write in 1.5 s".into() });
    }
    None
}

/// Wait, at most 1.5 s (the mirror checkpoints every second), until the
/// mirror's durable mark moves on the primary and the primary then retires
/// activity entries: from then on it trusts that checkpoint. Whether it came.
fn at_retire(c: &Cluster, primary: u32) -> bool {
    let figures = |c: &Cluster| {
        c.status(primary)
            .map(|s| (s.replication.map(|r| r.ops_durable).unwrap_or(0), s.changelog.map(|l| l.extents).unwrap_or(0)))
    };
    let Some((durable, _)) = figures(c) else { return false };
    let until = Instant::now() + Duration::from_millis(1500);
    let mut extents_then = None;
    let mut first_retire: Option<Instant> = None;
    while Instant::now() < until {
        match (figures(c), extents_then, first_retire) {
            (Some((d, e)), None, _) if d > durable => extents_then = Some(e),
            // Retiring goes on a few entries at a time: the cut comes once
            // it has retired several, or 100 ms after the first, while a
            // checkpoint of a slow device (20 ms a file) is still syncing.
            (Some((_, e)), Some(then), Some(at)) if e + RETIRED_AT_CUT <= then || at.elapsed().as_millis() >= 100 => {
                return true
            }
            (Some((_, e)), Some(then), None) if e < then => first_retire = Some(Instant::now()),
            (None, _, _) => return first_retire.is_some(),
            _ => {}
        }
    }
    first_retire.is_some()
}

/// Wait, at most 1.5 s, until a writer sends a write into its sparse
/// file, then `lag_us` more: the primary in change tracking records the
/// block and writes it then. Whether it came.
fn at_first_write(c: &Cluster, lag_us: u64) -> bool {
    let counts = |c: &Cluster| c.sparse_sent.iter().map(|n| n.load(Ordering::SeqCst)).collect::<Vec<_>>();
    let then = counts(c);
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if counts(c) != then {
            // Spun, not slept: a sleep's granularity is the whole window.
            let at = Instant::now() + Duration::from_micros(lag_us);
            while Instant::now() < at {
                std::hint::spin_loop();
            }
            return true;
        }
        std::hint::spin_loop();
    }
    false
}
