//! The seeded deterministic simulation over many seeds.
//!
//! `FILEREP_SIM_SEEDS=N` runs N seeds (default 500); `FILEREP_SIM_SEED=S`
//! replays one. A failure prints its seed and the command that replays it.

use filerep::sim::{run, run_faults, FaultConfig, FaultKind, SimConfig};
use std::collections::BTreeMap;

fn seeds() -> Vec<u64> {
    match std::env::var("FILEREP_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("FILEREP_SIM_SEED must be a number")],
        Err(_) => {
            let n = std::env::var("FILEREP_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(500u64);
            (0..n).collect()
        }
    }
}

#[test]
fn simulated_pairs_end_byte_identical() {
    let cfg = SimConfig::default();
    let seeds = seeds();
    let mut frames = 0;
    for seed in &seeds {
        match run(*seed, &cfg) {
            Ok(r) => {
                assert!(r.operations > 0);
                frames += r.frames;
            }
            Err(f) => panic!("{f}"),
        }
    }
    assert!(frames > seeds.len() as u64, "every seed shipped frames");
}

#[test]
fn different_seeds_explore_different_histories() {
    let cfg = SimConfig { operations: 200, ..SimConfig::default() };
    let a = run(1, &cfg).unwrap_or_else(|f| panic!("{f}"));
    let b = run(2, &cfg).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!((a.frames, a.wire_bytes), (b.frames, b.wire_bytes));
    assert!(a.kinds.len() >= 10, "the workload reaches most operation kinds: {:?}", a.kinds);
}

/// Crashes, disconnects, partitions, torn writes, fsync errors and a full
/// disk: after each schedule no acknowledged change is lost, no generation
/// had two writers, every difference is in the change set, and the repaired
/// pair is byte-identical.
#[test]
fn fault_schedules_keep_the_invariants() {
    let cfg = FaultConfig::default();
    let seeds = seeds();
    let (mut calls, mut acked, mut faulted) = (0, 0, 0);
    for seed in &seeds {
        match run_faults(*seed, &cfg) {
            Ok(r) => {
                calls += r.operations;
                acked += r.acked;
                faulted += usize::from(!r.faults.is_empty());
            }
            Err(f) => panic!("{f}"),
        }
    }
    assert!(acked > calls / 2, "most calls succeed ({acked} of {calls}): the checks have something to check");
    if seeds.len() >= 100 {
        assert!(faulted * 10 >= seeds.len() * 9, "only {faulted} of {} schedules hit a fault", seeds.len());
    }
}

/// Over 500 seeds the schedules really reach every fault kind, and the
/// states the invariants are about (a failover, a double fault, change
/// tracking, an arbiter that does not answer, failed disks on both sides).
#[test]
fn fault_schedules_reach_every_fault_kind() {
    // A fixed range whatever FILEREP_SIM_SEED says: this is a claim about the schedules.
    let cfg = FaultConfig::default();
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in 0..500 {
        let r = run_faults(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
        for (k, v) in r.faults {
            *faults.entry(k).or_default() += v;
        }
        for (k, v) in r.outcomes {
            *outcomes.entry(k).or_default() += v;
        }
    }
    let missing: Vec<String> =
        FaultKind::all().into_iter().filter(|k| !faults.contains_key(k)).map(|k| k.to_string()).collect();
    assert!(missing.is_empty(), "never fired in 500 schedules: {missing:?} (fired: {faults:?})");
    for want in [
        "failover: mirror promoted",
        "change set handed over",
        "segment down (double fault)",
        "change tracking",
        "no answer from the arbiter",
        "old primary demoted",
        "change-log failed",
        "mirror faulted",
        "primary faulted",
    ] {
        assert!(outcomes.contains_key(want), "no schedule led to {want:?}: {outcomes:?}");
    }
}
