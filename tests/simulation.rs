//! The seeded deterministic simulation over many seeds.
//!
//! `FILEREP_SIM_SEEDS=N` runs N seeds (default 500); `FILEREP_SIM_SEED=S`
//! replays one. A failure prints its seed and the command that replays it.

use filerep::sim::{run, SimConfig};

#[test]
fn simulated_pairs_end_byte_identical() {
    let cfg = SimConfig::default();
    let seeds: Vec<u64> = match std::env::var("FILEREP_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("FILEREP_SIM_SEED must be a number")],
        Err(_) => {
            let n = std::env::var("FILEREP_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(500u64);
            (0..n).collect()
        }
    };
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
