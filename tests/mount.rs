//! `filerep mount` against real processes: an arbiter and two `filerep
//! segment` processes on loopback, the primary's filespace mounted with
//! FUSE, files changed through the mount with std::fs, and both segments'
//! directories compared afterwards. Skipped, with the reason printed, where
//! FUSE cannot be mounted (no /dev/fuse, or neither root nor fusermount3),
//! unless FILEREP_REQUIRE_FUSE=1 (CI), which makes that a failure.

#[macro_use]
mod common;

use common::pair::{exe, fast_mount, kill, mounted, wait_for, Mount, Pair};
use common::tree::{assert_matches, errno, walk, Model};
use filerep::cluster::client::Client;
use filerep::cluster::segment::{Acting, SegmentConfig};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn random_bytes(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

const BS: u64 = 8192;

#[test]
fn a_mixed_workload_through_the_mount_matches_its_model_and_the_mirror() {
    skip_without_fuse!("a_mixed_workload_through_the_mount_matches_its_model_and_the_mirror");
    let pair = Pair::start(BS as u32);
    let mut mnt = pair.mount(2, "pg_system");
    mixed_workload(&pair, &mnt, false);
    mnt.stop();
}

/// The same workload through the file system the primary segment serves
/// itself (`filerep segment --mount`): no mount process, no client socket.
#[test]
fn a_mixed_workload_through_the_segments_own_mount_matches_its_model_and_the_mirror() {
    skip_without_fuse!("a_mixed_workload_through_the_segments_own_mount_matches_its_model_and_the_mirror");
    let mut pair = Pair::start_with(BS as u32, |seg| seg.try_start_mounting("pg_system", &[]));
    let mnt = Mount { child: None, path: pair.seg(2).own_mountpoint("pg_system") };
    assert!(mounted(&mnt.path), "the segment did not mount {}", mnt.path.display());
    mixed_workload(&pair, &mnt, true);
    // SIGTERM: the segment stops, unmounts and exits 0.
    pair.seg_mut(2).terminate();
    assert!(!mounted(&mnt.path), "{} is still mounted after the segment stopped", mnt.path.display());
}

/// `write_back`: the mount uses the kernel's write-back cache (the
/// segment's own), so a refused write may be reported by the next fsync
/// instead of by the write (docs/mount.md).
fn mixed_workload(pair: &Pair, mnt: &Mount, write_back: bool) {
    let seed: u64 = std::env::var("FILEREP_MOUNT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6d6f_756e);
    let ops: usize = std::env::var("FILEREP_MOUNT_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut m = Model::default();
    let mut done: BTreeMap<&str, usize> = BTreeMap::new();

    // Fixed cases first: a handle follows its file through a rename; a
    // handle on a file replaced by rename-over refuses writes (ESTALE).
    std::fs::write(mnt.p("a"), b"first").unwrap();
    std::fs::write(mnt.p("b"), b"second").unwrap();
    let follows = OpenOptions::new().write(true).open(mnt.p("a")).unwrap();
    let replaced = OpenOptions::new().write(true).open(mnt.p("b")).unwrap();
    std::fs::rename(mnt.p("a"), mnt.p("b")).unwrap();
    follows.write_all_at(b"FI", 0).unwrap();
    // The write lands in the kernel's write-back cache and is refused once
    // sent: the file's next fsync reports it, as a failed write-back on a
    // local disk (or the write itself, if the kernel sent it at once).
    // Either way nothing of it lands in `b`.
    match replaced.write_all_at(b"lost", 0) {
        Err(e) => assert_eq!(errno(&e), libc::ESTALE, "a write to a replaced file: {e}"),
        Ok(()) => {
            assert!(write_back, "a mount that writes through accepted a write to a replaced file");
            let e = replaced.sync_all().unwrap_err();
            assert_eq!(errno(&e), libc::ESTALE, "the fsync after a write to a replaced file: {e}");
        }
    }
    // Reported once: the next fsync of the replaced file has nothing to do.
    replaced.sync_all().unwrap();
    drop((follows, replaced));
    assert_eq!(std::fs::read(mnt.p("b")).unwrap(), b"FIrst");
    m.files.insert("b".into(), b"FIrst".to_vec());

    for step in 0..ops {
        let ctx = |what: &str| format!("step {step} ({what}), seed {seed}");
        let files: Vec<String> = m.files.keys().cloned().collect();
        let dirs: Vec<String> = m.dirs.iter().cloned().collect();
        let pick_file = |rng: &mut rand_chacha::ChaCha8Rng| files[rng.gen_range(0..files.len())].clone();
        let parent = |rng: &mut rand_chacha::ChaCha8Rng| -> String {
            if dirs.is_empty() || rng.gen_bool(0.4) {
                String::new()
            } else {
                format!("{}/", dirs[rng.gen_range(0..dirs.len())])
            }
        };
        let roll = rng.gen_range(0..100);
        match roll {
            // create (sometimes File::create over an existing file: truncation)
            0..=15 => {
                if !files.is_empty() && rng.gen_bool(0.2) {
                    let f = pick_file(&mut rng);
                    File::create(mnt.p(&f)).unwrap_or_else(|e| panic!("{}: {e}", ctx("create over")));
                    m.files.insert(f, Vec::new());
                    *done.entry("create over (truncate)").or_default() += 1;
                } else {
                    let p = format!("{}f{}", parent(&mut rng), rng.gen_range(0..1000));
                    if m.files.contains_key(&p) || m.dirs.contains(&p) {
                        continue;
                    }
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(mnt.p(&p))
                        .unwrap_or_else(|e| panic!("{} {p}: {e}", ctx("create")));
                    m.files.insert(p, Vec::new());
                    *done.entry("create").or_default() += 1;
                }
            }
            // writes: whole aligned blocks (in place, appended, past the end)
            // or any offset and size
            16..=46 if !files.is_empty() => {
                let f = pick_file(&mut rng);
                let len = m.files[&f].len() as u64;
                let (kind, offset, size) = match rng.gen_range(0..4) {
                    0 => ("write: aligned blocks at the end", len.div_ceil(BS) * BS, BS * rng.gen_range(1..=3)),
                    1 => ("write: aligned blocks", rng.gen_range(0..=len / BS + 1) * BS, BS * rng.gen_range(1..=4)),
                    2 => ("write: any offset and size", rng.gen_range(0..=len + BS), rng.gen_range(1..=3 * BS)),
                    _ => ("write: small", rng.gen_range(0..=len), rng.gen_range(1..=600)),
                };
                *done.entry(kind).or_default() += 1;
                let data = random_bytes(&mut rng, size as usize);
                let h = OpenOptions::new().write(true).open(mnt.p(&f)).unwrap();
                h.write_all_at(&data, offset).unwrap_or_else(|e| panic!("{} {f}@{offset}+{size}: {e}", ctx("write")));
                m.write(&f, offset, &data);
            }
            // truncate shorter or longer
            45..=52 if !files.is_empty() => {
                let f = pick_file(&mut rng);
                let len = m.files[&f].len() as u64;
                let new = rng.gen_range(0..=len + 2 * BS);
                OpenOptions::new().write(true).open(mnt.p(&f)).unwrap().set_len(new).unwrap();
                m.files.get_mut(&f).unwrap().resize(new as usize, 0);
                *done.entry(if new < len { "truncate shorter" } else { "truncate longer" }).or_default() += 1;
            }
            // rename a file: to a new name, or over an existing file, with a
            // handle opened before it that must follow
            53..=61 if !files.is_empty() => {
                let from = pick_file(&mut rng);
                let to = if files.len() > 1 && rng.gen_bool(0.3) {
                    pick_file(&mut rng)
                } else {
                    format!("{}r{}", parent(&mut rng), rng.gen_range(0..1000))
                };
                if to == from || m.dirs.contains(&to) {
                    continue;
                }
                let h = OpenOptions::new().write(true).open(mnt.p(&from)).unwrap();
                std::fs::rename(mnt.p(&from), mnt.p(&to))
                    .unwrap_or_else(|e| panic!("{} {from}->{to}: {e}", ctx("rename")));
                *done.entry(if m.files.contains_key(&to) { "rename over a file" } else { "rename" }).or_default() += 1;
                m.rename(&from, &to);
                let data = random_bytes(&mut rng, 100);
                h.write_all_at(&data, 0).unwrap_or_else(|e| panic!("{} {to}: {e}", ctx("write after rename")));
                m.write(&to, 0, &data);
            }
            // rename a directory (its files move with it)
            62..=64 if !dirs.is_empty() => {
                let from = dirs[rng.gen_range(0..dirs.len())].clone();
                let to = format!("dr{}", rng.gen_range(0..1000));
                if m.dirs.contains(&to) || m.files.contains_key(&to) {
                    continue;
                }
                std::fs::rename(mnt.p(&from), mnt.p(&to))
                    .unwrap_or_else(|e| panic!("{} {from}->{to}: {e}", ctx("rename dir")));
                m.rename(&from, &to);
                *done.entry("rename a directory").or_default() += 1;
            }
            // mkdir
            65..=71 => {
                let p = format!("{}d{}", parent(&mut rng), rng.gen_range(0..100));
                if p.matches('/').count() > 2 || m.dirs.contains(&p) || m.files.contains_key(&p) {
                    continue;
                }
                std::fs::create_dir(mnt.p(&p)).unwrap_or_else(|e| panic!("{} {p}: {e}", ctx("mkdir")));
                m.dirs.insert(p);
                *done.entry("mkdir").or_default() += 1;
            }
            // rmdir: an empty one goes, a full one is refused with ENOTEMPTY
            72..=76 if !dirs.is_empty() => {
                let d = dirs[rng.gen_range(0..dirs.len())].clone();
                let r = std::fs::remove_dir(mnt.p(&d));
                if m.is_empty_dir(&d) {
                    r.unwrap_or_else(|e| panic!("{} {d}: {e}", ctx("rmdir")));
                    m.dirs.remove(&d);
                    *done.entry("rmdir").or_default() += 1;
                } else {
                    let e = r.expect_err("rmdir of a directory with entries");
                    assert_eq!(errno(&e), libc::ENOTEMPTY, "{}: {e}", ctx("rmdir non-empty"));
                    *done.entry("rmdir refused: not empty").or_default() += 1;
                }
            }
            // unlink
            77..=80 if !files.is_empty() => {
                let f = pick_file(&mut rng);
                std::fs::remove_file(mnt.p(&f)).unwrap_or_else(|e| panic!("{} {f}: {e}", ctx("unlink")));
                m.files.remove(&f);
                *done.entry("unlink").or_default() += 1;
            }
            // fsync a file / a directory
            81..=86 if !files.is_empty() => {
                let f = pick_file(&mut rng);
                let h = OpenOptions::new().write(true).open(mnt.p(&f)).unwrap();
                if rng.gen_bool(0.5) { h.sync_all() } else { h.sync_data() }
                    .unwrap_or_else(|e| panic!("{} {f}: {e}", ctx("fsync")));
                *done.entry("fsync a file").or_default() += 1;
            }
            87..=89 => {
                let d = if dirs.is_empty() || rng.gen_bool(0.3) {
                    String::new()
                } else {
                    dirs[rng.gen_range(0..dirs.len())].clone()
                };
                File::open(mnt.p(&d)).unwrap().sync_all().unwrap_or_else(|e| panic!("{} {d:?}: {e}", ctx("fsync dir")));
                *done.entry("fsync a directory").or_default() += 1;
            }
            // read back through the mount
            90..=96 if !files.is_empty() => {
                let f = pick_file(&mut rng);
                let got = std::fs::read(mnt.p(&f)).unwrap();
                assert!(got == m.files[&f], "{}: {f} differs from the model", ctx("read"));
                *done.entry("read back").or_default() += 1;
            }
            // errors that must surface as their errnos
            97..=99 if !files.is_empty() => {
                let f = pick_file(&mut rng);
                let e = OpenOptions::new().write(true).create_new(true).open(mnt.p(&f)).unwrap_err();
                assert_eq!(errno(&e), libc::EEXIST, "{}: {e}", ctx("create existing"));
                let e = std::fs::remove_file(mnt.p("no-such-file")).unwrap_err();
                assert_eq!(errno(&e), libc::ENOENT, "{}: {e}", ctx("unlink missing"));
                let e = std::fs::create_dir(mnt.p(&f)).unwrap_err();
                assert_eq!(errno(&e), libc::EEXIST, "{}: {e}", ctx("mkdir over a file"));
                *done.entry("errno checks").or_default() += 1;
            }
            _ => {}
        }
    }

    // Concurrent requests: writers on their own files beside a thread
    // churning the namespace, all at once through the mount's threads.
    std::fs::create_dir(mnt.p("conc")).unwrap();
    std::fs::create_dir(mnt.p("churn")).unwrap();
    m.dirs.extend(["conc".to_string(), "churn".to_string()]);
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let path = mnt.p(&format!("conc/t{t}"));
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (t + 1));
                let f = OpenOptions::new().write(true).create_new(true).open(&path).unwrap();
                let mut model = Vec::new();
                for i in 0..150 {
                    let (offset, data) = if rng.gen_bool(0.6) {
                        (rng.gen_range(0..32) * BS, random_bytes(&mut rng, BS as usize))
                    } else {
                        let n = rng.gen_range(1..=2 * BS as usize);
                        (rng.gen_range(0..32 * BS), random_bytes(&mut rng, n))
                    };
                    f.write_all_at(&data, offset).unwrap();
                    let end = offset as usize + data.len();
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].copy_from_slice(&data);
                    if i % 20 == 19 {
                        f.sync_data().unwrap();
                    }
                }
                (format!("conc/t{t}"), model)
            })
        })
        .collect();
    let churn = {
        let dir = mnt.p("churn");
        std::thread::spawn(move || {
            for i in 0..60 {
                let (a, b) = (dir.join(format!("a{i}")), dir.join(format!("b{i}")));
                std::fs::write(&a, format!("file {i}")).unwrap();
                std::fs::rename(&a, &b).unwrap();
                std::fs::create_dir(dir.join(format!("d{i}"))).unwrap();
                File::open(&dir).unwrap().sync_all().unwrap();
                if i % 2 == 0 {
                    std::fs::remove_file(&b).unwrap();
                    std::fs::remove_dir(dir.join(format!("d{i}"))).unwrap();
                }
            }
        })
    };
    for w in writers {
        let (path, contents) = w.join().expect("writer");
        m.files.insert(path, contents);
    }
    churn.join().expect("namespace churn");
    for i in (1..60).step_by(2) {
        m.files.insert(format!("churn/b{i}"), format!("file {i}").into_bytes());
        m.dirs.insert(format!("churn/d{i}"));
    }

    // Everything read back through the mount is what the model says.
    let through_mount = walk(&mnt.path);
    assert_matches("through the mount", &through_mount, &m, seed);
    // Durable on both sides, then the two segments' directories match.
    for f in m.files.keys() {
        File::open(mnt.p(f)).unwrap().sync_all().unwrap();
    }
    File::open(&mnt.path).unwrap().sync_all().unwrap();
    let primary = pair.seg(2).root(0);
    let mirror = pair.seg(3).root(0);
    assert_matches("on the primary", &walk(&primary), &m, seed);
    assert_matches("on the mirror", &walk(&mirror), &m, seed);
    assert_eq!(filerep::verify::scan(&primary).unwrap(), filerep::verify::scan(&mirror).unwrap());
    let (nf, nd) = (m.files.len(), m.dirs.len());
    let bytes: usize = m.files.values().map(Vec::len).sum();
    let _ = writeln!(
        std::io::stderr(),
        "mount workload, seed {seed}: {done:?}; {nf} files ({bytes} bytes) in {nd} directories identical through the mount, on the primary and on the mirror"
    );
    for kind in
        ["write: aligned blocks", "write: any offset and size", "rename over a file", "rmdir", "fsync a directory"]
    {
        assert!(done.get(kind).is_some_and(|n| *n > 0), "the workload never did {kind:?} (seed {seed}): {done:?}");
    }
}

#[test]
fn a_database_user_owns_what_it_sees_and_chmod_chown_do_not_fail() {
    skip_without_fuse!("a_database_user_owns_what_it_sees_and_chmod_chown_do_not_fail");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let _ =
            writeln!(std::io::stderr(), "SKIPPED a_database_user_owns_what_it_sees: needs root to act as another user");
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    const DB_UID: u32 = 4711;
    const DB_GID: u32 = 4712;
    let pair = Pair::start(8192);
    // The database user must be able to reach the mount point.
    std::fs::set_permissions(pair.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mnt = pair.mount_with(2, "pg_system", &["--uid", "4711", "--gid", "4712", "-o", "allow_other"]);
    std::fs::create_dir(mnt.p("data")).unwrap();
    std::fs::write(mnt.p("data/PG_VERSION"), b"16\n").unwrap();
    for (p, mode) in [("", 0o700), ("data", 0o700), ("data/PG_VERSION", 0o600)] {
        let md = std::fs::metadata(mnt.p(p)).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (DB_UID, DB_GID, mode), "{p:?}");
    }
    // initdb and the postmaster chmod their data directory; root chowns.
    std::fs::set_permissions(mnt.p("data"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(mnt.p("data/PG_VERSION"), Some(DB_UID), Some(DB_GID)).unwrap();
    // Another user entirely is kept out by the presented modes; the
    // database user gets in and its changes are replicated.
    let as_user = |uid: u32, script: &str| {
        Command::new("/bin/sh").arg("-c").arg(script).current_dir("/").uid(uid).gid(uid).output().expect("sh")
    };
    let d = mnt.p("data");
    let out = as_user(DB_UID, &format!("echo hello > {0}/by-user && mkdir {0}/sub && cat {0}/PG_VERSION", d.display()));
    assert!(out.status.success(), "the database user: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"16\n");
    let out = as_user(4999, &format!("ls {}", d.display()));
    assert!(!out.status.success(), "another user listed the data directory");
    File::open(&d).unwrap().sync_all().unwrap();
    assert_eq!(std::fs::read(pair.seg(3).root(0).join("data/by-user")).unwrap(), b"hello\n");
    assert!(pair.seg(3).root(0).join("data/sub").is_dir());
}

#[test]
fn bad_arguments_are_refused_naming_the_field() {
    // No FUSE needed: everything here is refused before mounting.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let cfg = SegmentConfig {
        dbid: 2,
        content: 0,
        cluster_id: 1,
        block_size: 8192,
        filespaces: vec![format!("pg_system={}", root.display())],
        key_file: dir.path().join("key"),
        control_listen: "127.0.0.1:0".into(),
        data_listen: "127.0.0.1:0".into(),
        socket: dir.path().join("no.sock"),
        state_dir: dir.path().join("state"),
        arbiter: "127.0.0.1:1".into(),
        sync_level: "applied".into(),
        decision_timeout_ms: 1000,
        ack_timeout_ms: 1000,
        heartbeat_ms: 100,
        handshake_timeout_ms: 2000,
        prefer_uring: false,
        direct: false,
        metrics_listen: None,
        activity_limit: filerep::core::primary::ACTIVITY_LIMIT,
        mounts: Vec::new(),
    };
    let cfg_path = dir.path().join("segment.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(exe()).arg("mount").args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (c, m) = (cfg_path.to_str().unwrap(), mnt.to_str().unwrap());
    let inside = root.join("sub");
    std::fs::create_dir(&inside).unwrap();
    for (args, expect) in [
        (vec!["--config", c, "--filespace", "nope", m], "--filespace nope"),
        (vec!["--config", c, "--filespace", "pg_system", "/no/such/dir"], "mountpoint /no/such/dir"),
        (vec!["--config", c, "--filespace", "pg_system", inside.to_str().unwrap()], "overlaps filespace pg_system"),
        (vec!["--config", c, "--filespace", "pg_system", "-o", "bogus", m], "-o bogus"),
        (vec!["--config", c, "--filespace", "pg_system", "--threads", "0", m], "--threads 0"),
        (vec!["--config", c, "--filespace", "pg_system", "--uid", "x", m], "--uid"),
        (vec!["--config", "/no/such.json", "--filespace", "pg_system", m], "--config"),
        (vec!["--config", c, "--filespace", "pg_system", m], "cannot reach the segment"),
    ] {
        let err = run(&args);
        assert!(err.contains(expect), "{args:?}: expected {expect:?} in {err:?}");
    }
    assert!(!mounted(&mnt));
    // The segment's own mounts: each checked before the segment opens, so
    // a bad one starts nothing (no state directory is made).
    let in_segment = |args: &[&str]| {
        let out = Command::new(exe()).args(["segment", "--config", c]).args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let inside_spec = format!("pg_system={}", inside.display());
    let good_spec = format!("pg_system={m}");
    for (args, expect) in [
        (vec!["--mount", "pg_system"], "--mount pg_system: give NAME=MOUNTPOINT"),
        (vec!["--mount", "=x"], "--mount =x: give NAME=MOUNTPOINT"),
        (vec!["--mount", &format!("nope={m}")], "--filespace nope: the segment config"),
        (vec!["--mount", "pg_system=/no/such/dir"], "mountpoint /no/such/dir"),
        (vec!["--mount", &inside_spec], "overlaps filespace pg_system"),
        (vec!["--mount", &good_spec, "--mount-threads", "0"], "--threads 0"),
        (vec!["--mount-uid", "7"], "--mount"),
        (
            vec!["--mount", &good_spec, "--mount-log-files", "logs/[x"],
            "--mount-log-files: log file pattern \"logs/[x\"",
        ),
        (vec!["--mount", &good_spec, "--mount-log-files", "/abs/*"], "relative to the filespace root"),
        (vec!["--mount", &good_spec, "--mount-log-files", ""], "an empty log file pattern"),
        (vec!["--mount", &good_spec, "--mount-log-files", "a", "--mount-no-log-files"], "cannot be used with"),
    ] {
        let err = in_segment(&args);
        assert!(err.contains(expect), "segment {args:?}: expected {expect:?} in {err:?}");
    }
    assert!(!dir.path().join("state").exists(), "a refused mount left the segment's state directory behind");
    assert!(!mounted(&mnt));
}

/// Not a test: the mount's throughput against the client API on the same
/// pair. `cargo test --release --test mount -- --ignored --nocapture`
#[test]
#[ignore]
fn perf_sequential_32k_writes_fsync_every_64() {
    skip_without_fuse!("perf_sequential_32k_writes_fsync_every_64");
    const BS: usize = 32768;
    let blocks: u64 = std::env::var("FILEREP_MOUNT_PERF_BLOCKS").ok().and_then(|s| s.parse().ok()).unwrap_or(4096);
    let pair = Pair::start(BS as u32);
    let mnt = pair.mount(2, "pg_system");
    let block = vec![0x5au8; BS];
    let mb = (blocks as usize * BS) as f64 / 1e6;
    let mut results = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        let mut f = File::create(mnt.p(&format!("through-mount-{round}"))).unwrap();
        for i in 0..blocks {
            f.write_all(&block).unwrap();
            if (i + 1) % 64 == 0 {
                f.sync_data().unwrap();
            }
        }
        f.sync_data().unwrap();
        let mount_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut c = Client::connect(&pair.seg(2).cfg.socket).unwrap();
        let path = format!("direct-{round}");
        c.create(0, &path).unwrap();
        for i in 0..blocks {
            c.extend(0, &path, i, &block).unwrap();
            if (i + 1) % 64 == 0 {
                c.sync(0, &path).unwrap();
            }
        }
        c.sync(0, &path).unwrap();
        let direct_s = t.elapsed().as_secs_f64();
        println!(
            "round {round}: through the mount {:.1} MB/s, client API {:.1} MB/s, ratio {:.2}",
            mb / mount_s,
            mb / direct_s,
            direct_s / mount_s
        );
        results.push(direct_s / mount_s);
    }
    results.sort_by(f64::total_cmp);
    println!("{blocks} writes of 32 KiB, fsync every 64: median ratio mount/direct {:.2}", results[1]);
}

/// `filerep mount` with its log (warnings and errors only) captured.
fn spawn_logged_mount(pair: &Pair, path: &Path, extra: &[&str]) -> (std::process::Child, std::path::PathBuf) {
    use std::io::BufRead;
    let log = pair.dir.path().join(format!("mount-{}.log", rand::random::<u32>()));
    let mut cmd = Command::new(exe());
    cmd.arg("mount")
        .args(["--config", pair.seg(2).cfg_path.to_str().unwrap(), "--filespace", "pg_system"])
        .arg(path)
        .args(extra)
        .env("FILEREP_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(File::create(&log).unwrap());
    let mut child = cmd.spawn().expect("mount");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("ready line");
    assert!(line.starts_with(common::pair::READY_MOUNT), "{line:?}: {}", std::fs::read_to_string(&log).unwrap());
    (child, log)
}

/// SIGTERM to a mount started by [`spawn_logged_mount`]; it must exit 0
/// (else its log says why).
fn sigterm_and_wait(child: &mut std::process::Child, log: &Path) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let status = child.wait().expect("wait");
    let said = || std::fs::read_to_string(log).unwrap_or_else(|e| format!("(its log {}: {e})", log.display()));
    assert!(status.success(), "filerep mount exited with {status}; its log:\n{}", said());
}

/// After kill -9 of a mount, a new `filerep mount` on the same mountpoint
/// names the dead mount and the command that clears it; with --force it
/// clears it and mounts. Nothing else is touched.
#[test]
fn a_dead_mountpoint_is_named_with_its_remedy_and_force_clears_it() {
    let pair = Pair::start(8192);
    let path = pair.dir.path().join("mnt-dead");
    std::fs::create_dir(&path).unwrap();
    let (mut first, _) = spawn_logged_mount(&pair, &path, &[]);
    std::fs::write(path.join("kept"), b"written before the crash").unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert!(mounted(&path), "a killed mount stays behind, dead");
    let err = std::fs::metadata(&path).unwrap_err();
    assert_eq!(errno(&err), libc::ENOTCONN, "{err}");
    let out = Command::new(exe())
        .args(["mount", "--config", pair.seg(2).cfg_path.to_str().unwrap(), "--filespace", "pg_system"])
        .arg(&path)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted over a dead mount: {text}");
    let clear = filerep::mount::clear_command(&path);
    assert!(text.contains("dead FUSE mount") && text.contains(&clear) && text.contains("--force"), "{text}");
    let (mut second, log) = spawn_logged_mount(&pair, &path, &["--force"]);
    assert_eq!(std::fs::read(path.join("kept")).unwrap(), b"written before the crash");
    std::fs::write(path.join("after"), b"through the new mount").unwrap();
    sigterm_and_wait(&mut second, &log);
    assert!(!mounted(&path), "--force left one live mount, now gone");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("dead mount was cleared"), "{log}");
    assert_eq!(std::fs::read(pair.seg(2).root(0).join("after")).unwrap(), b"through the new mount");
}

/// What clients do all the time (probe a file with terminal and file
/// system ioctls, ask for extended attributes, seek for data, preallocate,
/// lock, get signals in the middle of a write) logs no warning and no
/// error; what the mount does not offer is refused with the usual errno.
#[test]
fn normal_client_behaviour_leaves_the_log_quiet() {
    let pair = Pair::start(8192);
    let path = pair.dir.path().join("mnt-quiet");
    std::fs::create_dir(&path).unwrap();
    let (mut m, log) = spawn_logged_mount(&pair, &path, &[]);
    let file = path.join("f");
    std::fs::write(&file, vec![7u8; 16384]).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&file).unwrap();
    {
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: TCGETS writes one termios into the buffer it is given.
        let r = unsafe { libc::ioctl(fd, libc::TCGETS, termios.as_mut_ptr()) };
        assert_eq!((r, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::ENOTTY)));
        let mut flags: libc::c_long = 0;
        // SAFETY: FS_IOC_GETFLAGS writes one long into the buffer it is given.
        let r = unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS as _, &mut flags) };
        assert_eq!(r, -1, "file flags are not offered");
        // SAFETY: the name is NUL-terminated and the buffer 64 bytes long.
        let r = unsafe { libc::fgetxattr(fd, c"user.x".as_ptr(), [0u8; 64].as_mut_ptr().cast(), 64) };
        assert_eq!(r, -1);
        // SAFETY: plain calls on an open descriptor.
        unsafe {
            libc::lseek(fd, 0, libc::SEEK_DATA);
            libc::posix_fallocate(fd, 0, 8192);
            libc::flock(fd, libc::LOCK_EX);
            libc::flock(fd, libc::LOCK_UN);
        }
    }
    // Writers get a signal now and then in the middle of a write: the
    // kernel sends the mount an INTERRUPT (a handler is set, so the signal
    // is delivered, not ignored).
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(libc::SIGURG, flag.clone()).unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let file = path.join(format!("w{w}"));
            std::thread::spawn(move || {
                let f = File::create(&file).unwrap();
                (0..300u64).all(|i| f.write_at(&[i as u8; 8192], (i % 16) * 8192).is_ok())
            })
        })
        .collect();
    let started = Instant::now();
    while writers.iter().any(|w| !w.is_finished()) && started.elapsed() < std::time::Duration::from_secs(60) {
        // SAFETY: sends a signal to this process; its handler only sets a flag.
        unsafe { libc::kill(libc::getpid(), libc::SIGURG) };
        std::thread::yield_now();
    }
    for w in writers {
        assert!(w.join().unwrap(), "a write failed under signals");
    }
    drop(f);
    sigterm_and_wait(&mut m, &log);
    let log = std::fs::read_to_string(log).unwrap();
    let loud: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    assert!(loud.is_empty(), "normal client behaviour was logged as a problem:\n{}", loud.join("\n"));
}

/// The client socket's queued flag (`Client::set_queued`: what the separate
/// `filerep mount` sends, docs/protocol.md § 13). With the mirror's process
/// stopped, a plain create waits for it; queued creates and writes return,
/// made on the primary and on their way, while the plain one still waits
/// and the pair still streams; once the mirror runs again, a queued sync
/// returns only with everything before it on the mirror, byte for byte.
/// (No FUSE needed.)
#[test]
fn queued_calls_on_the_client_socket_return_on_their_way_and_a_sync_waits() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::sync::mpsc;
    // Silence from the stopped mirror is not taken for its loss meanwhile.
    let pair = Pair::start_tuned(BS as u32, &|c| c.ack_timeout_ms = 120_000);
    let socket = pair.seg(2).cfg.socket.clone();
    let key = pair.key.clone();
    let mut queued = Client::connect(&socket).unwrap();
    queued.set_queued(true);
    let mut plain = Client::connect(&socket).unwrap();
    // Both connections in use before the mirror stops.
    queued.create(0, "warm-q").unwrap();
    plain.create(0, "warm-p").unwrap();
    let mirror = Pid::from_raw(pair.seg(3).child.as_ref().unwrap().id() as i32);
    kill(mirror, Signal::SIGSTOP).unwrap();
    // Resumed whatever happens below.
    struct Resume(Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let resume = Resume(mirror);
    let (plain_done, plain_rx) = mpsc::channel();
    let plain_call = std::thread::spawn(move || {
        let r = plain.create(0, "plain");
        let _ = plain_done.send(r.is_ok());
    });
    let (queued_done, queued_rx) = mpsc::channel();
    let queued_calls = std::thread::spawn(move || {
        let r = (0..8).try_for_each(|i| {
            let f = format!("q{i}");
            queued.create(0, &f)?;
            queued.write_block(0, &f, 0, &vec![i as u8 + 1; BS as usize])
        });
        let _ = queued_done.send(r.map_err(|e| e.to_string()));
        queued
    });
    // A bound for a defect (the flag ignored: the calls wait for the mirror), not a pause.
    match queued_rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(r) => r.expect("queued calls"),
        Err(_) => panic!("queued calls waited for the stopped mirror"),
    }
    assert!(plain_rx.try_recv().is_err(), "a plain create returned while the mirror was stopped");
    let s = pair.seg(2).status(&key).expect("the primary answers");
    assert_eq!(s.mode, 's', "the pair still streams: {s:?}");
    drop(resume);
    assert!(plain_rx.recv().unwrap(), "the plain create, once the mirror runs again");
    plain_call.join().unwrap();
    let mut queued = queued_calls.join().unwrap();
    queued.sync(0, "q7").unwrap();
    queued.sync_dir(0, "").unwrap();
    let roots = |d: u32| vec![pair.seg(d).root(0)];
    common::pair::assert_trees_equal(&roots(2), &roots(3), BS as u32);
    assert_eq!(std::fs::read(pair.seg(3).root(0).join("q7")).unwrap(), vec![8u8; BS as usize]);
}

/// The segment's own mount uses the kernel's write-back cache, so the
/// kernel keeps its own length of a file once it holds an inode for it.
/// The mirror's applier changes the mirror's files under its mount; once
/// the mirror is promoted, its mount must not serve the length the kernel
/// learned before: a new term as primary renumbers the inodes
/// (src/mount/inodes.rs), and the file reads whole. With the renumbering
/// left out the read stays at the old length (tried).
#[test]
fn a_file_seen_through_the_mirrors_mount_reads_whole_once_the_mirror_is_promoted() {
    skip_without_fuse!("a_file_seen_through_the_mirrors_mount_reads_whole_once_the_mirror_is_promoted");
    // Both segments serve their filespace (the configuration's mounts).
    let mut pair = Pair::start_tuned(8192, &|c| {
        let base = c.socket.parent().expect("the segment's directory").to_path_buf();
        c.mounts = vec![fast_mount(base.join("mnt"), None)];
    });
    let mount_of = |dbid: u32| pair.seg(dbid).cfg.mounts[0].mountpoint.clone();
    let (mut primary, mirror) = (Mount { child: None, path: mount_of(2) }, Mount { child: None, path: mount_of(3) });
    for m in [&primary, &mirror] {
        wait_for("the segment's mount", Duration::from_secs(10), || mounted(&m.path));
    }

    let mut f = File::create(primary.p("f")).unwrap();
    f.write_all(b"tiny").unwrap();
    f.sync_all().unwrap();
    // Durable on both hosts: the mirror's mount learns the file at 4 bytes.
    assert_eq!(std::fs::metadata(mirror.p("f")).unwrap().len(), 4);
    assert_eq!(std::fs::read(mirror.p("f")).unwrap(), b"tiny");

    // The primary grows it, durably: the mirror's copy is 64 KiB now.
    let mut whole = b"tiny".to_vec();
    whole.extend((0..65_532u32).map(|i| (i % 251) as u8));
    f.write_all_at(&whole[4..], 4).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(std::fs::read(pair.seg(3).root(1).join("f")).unwrap(), whole, "the mirror's copy");

    // The primary's host dies; the arbiter promotes the mirror.
    kill(&mut pair.seg_mut(2).child);
    primary.crash();
    wait_for("the mirror's promotion", Duration::from_secs(30), || {
        pair.seg(3).status(&pair.key).is_some_and(|s| s.acting == Acting::Primary)
    });
    // Through the promoted side's own mount the file reads whole (once the
    // kernel asks again for the entry it kept, within a second: until then
    // the old inode answers ESTALE).
    wait_for("the whole file through the promoted side's mount", Duration::from_secs(10), || {
        std::fs::read(mirror.p("f")).is_ok_and(|d| d == whole)
    });
    assert_eq!(std::fs::metadata(mirror.p("f")).unwrap().len(), whole.len() as u64);
    // And it takes changes: the new primary's mount writes and syncs.
    let mut g = OpenOptions::new().append(true).open(mirror.p("f")).unwrap();
    g.write_all(b"more").unwrap();
    g.sync_all().unwrap();
    whole.extend_from_slice(b"more");
    assert_eq!(std::fs::read(mirror.p("f")).unwrap(), whole);
}
