//! The cluster tools at scale, as `filerep bench --cluster N` runs them:
//! a loopback cluster of 8 mirrored segments over 4 host addresses;
//! `addmirrors`, `verify`, a host killed (while idle connections are held
//! to the arbiter) and recovered, `recover -r`, a host hung (SIGSTOP) and
//! taken over, all through the real commands. The figures belong in
//! docs/performance.md; here every step must succeed and report.

mod common;
use common::pair::run_filerep as filerep;

#[test]
fn a_cluster_of_8_runs_every_step_of_the_scale_bench() {
    let tmp = tempfile::tempdir().unwrap();
    // Ports from the process id (tests of other runs on this machine keep
    // clear), below the ephemeral range (no outgoing connection holds one).
    let base = 21000 + (std::process::id() % 100) as u16 * 100;
    let dir = tmp.path().display().to_string();
    let (code, out, err) =
        filerep(&["bench", "--cluster", "8", "--dir", &dir, "--base-port", &base.to_string(), "-B", "4", "--json"]);
    assert_eq!(code, 0, "bench --cluster 8 failed:\n{out}\n{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((r["segments"].as_u64(), r["hosts"].as_u64()), (Some(8), Some(4)), "{r}");
    for step in [
        "addmirrors_s",
        "verify_s",
        "killed_host_serving_s",
        "recover_s",
        "recover_rebalance_s",
        "hung_host_takeover_s",
        "state_json_hung_s",
    ] {
        let s = r[step].as_f64().unwrap_or(-1.0);
        assert!(s > 0.0, "{step}: {s} in {r}");
    }
    for cpu in ["idle_segments_cpu_pct", "idle_arbiter_cpu_pct"] {
        assert!(r[cpu].as_f64().is_some_and(|c| c >= 0.0), "{cpu} in {r}");
    }
    assert!(r["idle_connections_opened"].as_u64().is_some_and(|n| n >= 64), "{r}");
}

#[test]
fn batch_sizes_out_of_range_are_refused_with_the_range() {
    for cmd in [&["recover"][..], &["verify"], &["addmirrors"]] {
        for bad in ["0", "257"] {
            let mut args = cmd.to_vec();
            args.extend(["--cluster-dir", "/nonexistent", "-B", bad]);
            let (code, _, err) = filerep(&args);
            assert_ne!(code, 0, "{args:?}");
            assert!(err.contains(bad) && err.contains("1..=256"), "{args:?}: {err}");
        }
    }
}
