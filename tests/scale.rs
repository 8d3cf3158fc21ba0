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

/// `filerep bench --probe-round`: the arbiter's round over cheap segments,
/// reported for each size (the figures against the interval belong in
/// docs/performance.md; here every size must be probed whole and reported).
#[test]
fn the_probe_round_is_reported_against_the_number_of_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let (code, out, err) = filerep(&["bench", "--probe-round", "200", "--dir", &dir, "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let rows = r["probe_rounds"].as_array().unwrap_or_else(|| panic!("{r}"));
    let sizes: Vec<u64> = rows.iter().filter_map(|row| row["segments"].as_u64()).collect();
    assert_eq!(sizes, vec![10, 100, 200], "{r}");
    for row in rows {
        for f in ["first_round_ms", "round_ms_median", "round_ms_max"] {
            assert!(row[f].as_f64().is_some_and(|v| v > 0.0), "{f} in {row}");
        }
        assert_eq!(row["interval_ms"].as_u64(), Some(1000), "{row}");
        assert!(row["within_interval"].is_boolean(), "{row}");
    }
    // The exit code says whether every round fit its interval.
    let all_within = rows.iter().all(|row| row["within_interval"] == serde_json::Value::Bool(true));
    assert_eq!(code == 0, all_within, "{out}{err}");
    // Bad sizes are refused with the range.
    let (code, _, err) = filerep(&["bench", "--probe-round", "1", "--dir", &dir]);
    assert_ne!(code, 0);
    assert!(err.contains("2 to 4096"), "{err}");
}
