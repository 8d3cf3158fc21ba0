//! `filerep verify` under writers and churn, a flipped byte found and
//! repaired, and the segments' `/metrics`.

use super::*;

impl Cluster {
    /// Run `filerep verify --json` to the end: its exit code, one JSON object per pair, stderr.
    fn verify(&self, extra: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
        let key = self.key_file.display().to_string();
        let mut args =
            vec!["verify", "--arbiter", &self.arbiter_addr, "--json", "--timeout", "120", "--key-file", &key];
        args.extend(extra);
        let out = Command::new(exe()).args(&args).env("FILEREP_LOG", "warn").output().expect("verify");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let pairs =
            stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))).collect();
        (out.status.code().unwrap_or(-1), pairs, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Flip one byte of a file behind the engine's back.
fn flip_byte(path: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

/// Namespace churn on the primary until `stop`: files created, extended,
/// written at offsets, truncated, renamed and removed, directories made and
/// removed. Returns (calls, failures).
fn churn(seg: &Seg, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    let mut cl = seg.client();
    cl.mkdir(0, "churn").unwrap();
    std::thread::spawn(move || {
        let (mut calls, mut failures) = (0u64, Vec::new());
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let (f, g, d) = (format!("churn/f{i}"), format!("churn/g{i}"), format!("churn/d{}", i % 4));
            let mut steps: Vec<Result<(), ClientError>> = vec![
                cl.create(0, &f),
                cl.extend(0, &f, 0, &block(50, i)),
                cl.extend(0, &f, 1, &block(51, i)),
                cl.write_at(0, &f, 100, b"a few bytes into block 0"),
                cl.truncate(0, &f, 1),
                cl.rename(0, &f, &g),
            ];
            if i >= 3 {
                steps.push(cl.unlink(0, &format!("churn/g{}", i - 3)));
            }
            steps.push(if i % 8 < 4 { cl.mkdir(0, &d) } else { cl.rmdir(0, &d) });
            calls += steps.len() as u64;
            failures.extend(steps.into_iter().filter_map(|r| r.err().map(|e| e.to_string())));
            i += 1;
        }
        (calls, failures)
    })
}

#[test]
fn verify_under_concurrent_writes_finds_no_false_mismatches() {
    let c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.mkdir(1, "base").unwrap();
    for f in 0..16u64 {
        let path = format!("base/rel{f}");
        cl.create(1, &path).unwrap();
        for b in 0..64 {
            cl.extend(1, &path, b, &block(f, b)).unwrap();
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let handles = writers(c.seg(2), 3, stop.clone());
    let churner = churn(c.seg(2), stop.clone());
    // Also rewrite the big files while they are compared.
    let rewriter = {
        let (mut w, stop) = (c.seg(2).client(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                w.write_block(1, &format!("base/rel{}", i % 16), (i * 7) % 64, &block(900 + i, i)).unwrap();
                i += 1;
            }
            i
        })
    };
    let sent = |c: &Cluster| c.seg(2).status(&c.key).and_then(|s| s.replication).map_or(0, |r| r.ops_sent);
    for round in 0..3 {
        let before = sent(&c);
        let (code, pairs, err) = c.verify(&[]);
        assert_eq!(code, 0, "round {round}: {pairs:?} {err}");
        let v = &pairs[0];
        assert_eq!(v["result"], "identical", "round {round}: {v}");
        assert_eq!(v["mismatches"], 0, "{v}");
        assert!(v["files"].as_u64().unwrap() >= 19 && v["blocks"].as_u64().unwrap() >= 16 * 65, "{v}");
        assert!(sent(&c) > before, "round {round}: the writers made no progress during the verification");
    }
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        let (calls, failures, _) = h.join().unwrap();
        assert!(calls > 0 && failures.is_empty(), "{failures:?}");
    }
    let (calls, failures) = churner.join().unwrap();
    assert!(calls > 0 && failures.is_empty(), "{failures:?}");
    assert!(rewriter.join().unwrap() > 0);
    let (code, pairs, err) = c.verify(&["--content", "0"]);
    assert_eq!(code, 0, "{pairs:?} {err}");
    assert_eq!(c.pair().mode, PairMode::Synchronized, "verification never disturbs the pair");
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
}

#[test]
fn verify_finds_a_flipped_byte_on_the_mirror_and_repair_fixes_exactly_that_block() {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.mkdir(1, "base").unwrap();
    cl.create(1, "base/rel").unwrap();
    for i in 0..32 {
        cl.extend(1, "base/rel", i, &block(7, i)).unwrap();
    }
    cl.create(0, "other").unwrap();
    for i in 0..8 {
        cl.extend(0, "other", i, &block(8, i)).unwrap();
    }
    cl.sync(1, "base/rel").unwrap();
    cl.sync(0, "other").unwrap();
    let (code, pairs, err) = c.verify(&[]);
    assert_eq!((code, &pairs[0]["mismatches"]), (0, &serde_json::json!(0)), "{pairs:?} {err}");
    // One byte of block 17 changes on the mirror's disk, behind the engine's back.
    flip_byte(&c.seg(3).roots()[1].join("base/rel"), 17 * BS as u64 + 123);
    let (code, pairs, err) = c.verify(&[]);
    assert_eq!(code, 1, "{pairs:?} {err}");
    let v = &pairs[0];
    assert_eq!(
        (v["result"].as_str(), v["mismatches"].as_u64(), v["mismatching_blocks"].as_u64()),
        (Some("differences"), Some(1), Some(1)),
        "{v}"
    );
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["filespace"], "fs_fast");
    assert_eq!(rows[0]["path"], "base/rel");
    assert_eq!(rows[0]["kind"], "blocks");
    assert_eq!(rows[0]["blocks"], serde_json::json!([[17, 1]]));
    assert_eq!(rows[0]["repaired"], false);
    // The same as a table and a summary line.
    let key = c.key_file.display().to_string();
    let out = Command::new(exe())
        .args(["verify", "--arbiter", &c.arbiter_addr, "--key-file", &key])
        .env("FILEREP_LOG", "off")
        .output()
        .expect("verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let row = text.lines().find(|l| l.contains("base/rel")).unwrap_or_else(|| panic!("no row: {text}"));
    assert!(row.contains("fs_fast") && row.contains("blocks") && row.trim_end().ends_with("17"), "{row}");
    assert!(text.contains("content 0: differences") && text.contains("1 mismatches (1 blocks)"), "{text}");
    // Repair: exactly that block is shipped, and made durable.
    let (code, pairs, err) = c.verify(&["--repair"]);
    assert_eq!(code, 1, "differences were found: {pairs:?} {err}");
    let v = &pairs[0];
    assert_eq!(v["result"], "repaired", "{v}");
    assert_eq!((v["repaired"].as_u64(), v["repaired_blocks"].as_u64()), (Some(1), Some(1)), "{v}");
    assert_eq!(v["rows"][0]["blocks"], serde_json::json!([[17, 1]]));
    assert_eq!(v["rows"][0]["repaired"], true);
    let (code, pairs, err) = c.verify(&[]);
    assert_eq!(code, 0, "{pairs:?} {err}");
    assert_eq!(pairs[0]["result"], "identical");
    assert_eq!(cl.read_block(1, "base/rel", 17).unwrap(), block(7, 17), "the primary's copy is untouched");
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
    // A pair that is not synchronized is refused, with the reason.
    c.seg_mut(3).kill();
    c.wait_for("change tracking", Duration::from_secs(20), || c.pair().mode == PairMode::ChangeTracking);
    let (code, pairs, err) = c.verify(&[]);
    assert_eq!(code, 2, "{pairs:?} {err}");
    assert_eq!(pairs[0]["result"], "error");
    assert!(pairs[0]["error"].as_str().unwrap().contains("not synchronized"), "{}", pairs[0]);
}

#[test]
fn verify_catches_what_the_mirror_has_extra_longer_or_missing_and_repair_removes_it() {
    let c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.create(0, "a").unwrap();
    for i in 0..4 {
        cl.extend(0, "a", i, &block(9, i)).unwrap();
    }
    cl.mkdir(0, "dir").unwrap();
    cl.create(0, "dir/b").unwrap();
    cl.extend(0, "dir/b", 0, &block(10, 0)).unwrap();
    cl.create(0, "empty").unwrap();
    cl.mkdir(1, "gone").unwrap();
    cl.sync(0, "a").unwrap();
    let m = &c.seg(3).roots();
    // Behind the engine's back: a longer copy, a stray file and directory,
    // a file and a directory missing, a file where a directory should be.
    std::fs::OpenOptions::new().append(true).open(m[0].join("a")).unwrap().write_all(&[1; 100]).unwrap();
    std::fs::write(m[0].join("stray"), b"not from the primary").unwrap();
    std::fs::create_dir_all(m[0].join("straydir/deeper")).unwrap();
    std::fs::remove_file(m[0].join("empty")).unwrap();
    std::fs::remove_dir(m[1].join("gone")).unwrap();
    std::fs::write(m[1].join("gone"), b"a file").unwrap();
    let (code, pairs, err) = c.verify(&[]);
    assert_eq!(code, 1, "{pairs:?} {err}");
    let rows: BTreeMap<(String, String), serde_json::Value> = pairs[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ((r["filespace"].as_str().unwrap().to_string(), r["path"].as_str().unwrap().to_string()), r.clone()))
        .collect();
    let kind =
        |fs: &str, p: &str| rows.get(&(fs.to_string(), p.to_string())).map(|r| r["kind"].as_str().unwrap().to_string());
    assert_eq!(kind("pg_system", "a").as_deref(), Some("blocks"), "{rows:#?}");
    assert_eq!(
        rows[&("pg_system".to_string(), "a".to_string())]["blocks"],
        serde_json::json!([[4, 1]]),
        "the block past the end"
    );
    assert_eq!(kind("pg_system", "stray").as_deref(), Some("extra_on_mirror"));
    assert_eq!(kind("pg_system", "straydir").as_deref(), Some("extra_on_mirror"));
    assert_eq!(kind("pg_system", "empty").as_deref(), Some("missing_on_mirror"));
    assert_eq!(kind("fs_fast", "gone").as_deref(), Some("type_differs"));
    assert_eq!(rows.len(), 5, "{rows:#?}");
    let (code, pairs, err) = c.verify(&["--repair"]);
    assert_eq!(code, 1, "{pairs:?} {err}");
    assert_eq!(pairs[0]["result"], "repaired", "{}", pairs[0]);
    assert_eq!(pairs[0]["repaired"], 5, "{}", pairs[0]);
    let (code, pairs, err) = c.verify(&[]);
    assert_eq!(code, 0, "{pairs:?} {err}");
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
}

/// GET a path over loopback HTTP/1.1: status code, content type, body.
fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    (code, ctype, body.to_string())
}

/// Parse the text format: every sample as `name{labels}` -> value, checking
/// that each family has HELP and TYPE lines before its samples.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let (mut help, mut typed, mut out) = (Vec::new(), Vec::new(), BTreeMap::new());
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("# HELP ") {
            help.push(r.split(' ').next().unwrap().to_string());
        } else if let Some(r) = line.strip_prefix("# TYPE ") {
            let (name, kind) = r.split_once(' ').unwrap();
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            typed.push(name.to_string());
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("filerep_"), "{line}");
            assert!(help.iter().any(|h| h == name) && typed.iter().any(|t| t == name), "no HELP/TYPE for {line}");
            out.insert(series.to_string(), value.parse::<f64>().unwrap_or_else(|e| panic!("{line}: {e}")));
        }
    }
    out
}

#[test]
fn metrics_show_operations_moving_and_the_lag_draining_after_a_sync() {
    let c = Cluster::start_with(Links::Direct, true, false);
    let addr = c.seg(2).cfg.metrics_listen.clone().unwrap();
    let scrape = || {
        let (code, ctype, body) = http_get(&addr, "/metrics");
        assert_eq!(code, 200, "{body}");
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        parse_metrics(&body)
    };
    let l = r#"content="0",dbid="2",role="primary""#;
    let get = |m: &BTreeMap<String, f64>, name: &str, extra: &str| {
        let sep = if extra.is_empty() { "" } else { "," };
        let key = format!("{name}{{{l}{sep}{extra}}}");
        *m.get(&key).unwrap_or_else(|| panic!("no {key} in {m:#?}"))
    };
    let before = scrape();
    let mut cl = c.seg(2).client();
    cl.create(0, "rel").unwrap();
    for i in 0..100 {
        cl.extend(0, "rel", i, &block(12, i)).unwrap();
    }
    cl.sync(0, "rel").unwrap();
    let after = scrape();
    let sent = get(&after, "filerep_operations_sent_total", "");
    assert!(sent >= get(&before, "filerep_operations_sent_total", "") + 102.0, "{after:#?}");
    assert!(
        get(&after, "filerep_bytes_sent_total", "") >= get(&before, "filerep_bytes_sent_total", "") + 100.0 * BS as f64
    );
    assert_eq!(get(&after, "filerep_lag_operations", r#"level="applied""#), 0.0, "applied lag after a sync");
    assert_eq!(get(&after, "filerep_lag_bytes", r#"level="applied""#), 0.0);
    assert_eq!(get(&after, "filerep_operations_acked_total", r#"level="applied""#), sent);
    assert_eq!(get(&after, "filerep_in_flight_operations", ""), 0.0);
    assert_eq!(get(&after, "filerep_segment_info", r#"mode="s""#), 1.0);
    assert!(get(&after, "filerep_seconds_since_ack", "") < 5.0);
    // The mirror's checkpoint makes everything durable within about a second.
    c.wait_for("the durable lag to drain", Duration::from_secs(10), || {
        let m = scrape();
        get(&m, "filerep_lag_operations", r#"level="durable""#) == 0.0
            && get(&m, "filerep_lag_bytes", r#"level="durable""#) == 0.0
            && get(&m, "filerep_operations_acked_total", r#"level="durable""#) >= sent
    });
    // The mirror serves its own, without the primary's figures; other paths are 404.
    let (code, _, body) = http_get(c.seg(3).cfg.metrics_listen.as_ref().unwrap(), "/metrics");
    assert_eq!(code, 200);
    let m = parse_metrics(&body);
    assert!(m.keys().any(|k| k.contains(r#"role="mirror""#)), "{body}");
    assert!(!m.keys().any(|k| k.starts_with("filerep_operations_sent_total")), "{body}");
    assert_eq!(http_get(&addr, "/other").0, 404);
    // The same figures in the status a probe returns.
    let r = c.seg(2).status(&c.key).unwrap().replication.unwrap();
    assert!(r.ops_sent as f64 >= sent && r.lag_ops == 0, "{r:?}");
}
