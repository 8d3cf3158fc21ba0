//! Operating a cluster with the real commands: `filerep init` (2 hosts on
//! loopback addresses, 2 segments each, no mirrors), `start`, a workload,
//! `addmirrors -p` while the workload goes on, every pair synchronized and
//! identical, `state`, bad mirror configurations refused, `stop`. And a
//! cluster whose segments serve a filespace as file systems (`init
//! --mount`), started and stopped by the same commands.

#[macro_use]
mod common;
use common::pair::run_filerep as filerep;

use filerep::cluster::client::Client;
use filerep::core::pair::PairMode;
use filerep::durable::catalog::Catalog;
use filerep_tools::cluster::ClusterDir;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BS: u64 = 8192;

/// The cluster's log directory, shown when a command fails.
static LOGS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn ok(args: &[&str]) -> String {
    let (code, out, err) = filerep(args);
    if code != 0 {
        let mut logs = String::new();
        for e in LOGS.get().and_then(|d| std::fs::read_dir(d).ok()).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            logs += &format!("--- {}\n{}\n", e.path().display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        panic!("filerep {} exited {code}: {out}{err}\n{logs}", args.join(" "));
    }
    out
}

/// Stops the cluster whatever happens to the test.
struct Running(PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = filerep(&["stop", "--cluster-dir", &self.0.display().to_string()]);
    }
}

/// Per file, the xxh3 of each block.
fn blocks(root: &Path) -> BTreeMap<String, Vec<u64>> {
    let mut out = BTreeMap::new();
    for (p, e) in filerep::verify::scan(root).unwrap() {
        let h = match e {
            filerep::verify::Entry::File { .. } => {
                std::fs::read(root.join(&p)).unwrap().chunks(BS as usize).map(xxhash_rust::xxh3::xxh3_64).collect()
            }
            _ => Vec::new(),
        };
        out.insert(p, h);
    }
    out
}

fn block(tag: u64, i: u64) -> Vec<u8> {
    (0..BS).map(|j| (tag.wrapping_mul(31).wrapping_add(i * 7 + j) % 251) as u8).collect()
}

#[test]
fn init_start_addmirrors_under_load_state_and_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let cdir = tmp.path().join("cluster");
    let cd = cdir.display().to_string();
    LOGS.get_or_init(|| cdir.join("logs"));
    // Ports from the process id: tests of other runs on this machine keep clear.
    let base = 20000 + (std::process::id() % 400) as u16 * 20;
    let offset = "3000";
    let fs0 = format!("pg_system={}", tmp.path().join("primary").display());
    let fs1 = format!("fs_fast={}", tmp.path().join("fast").display());
    ok(&[
        "init",
        "--cluster-dir",
        &cd,
        "--hosts",
        "127.0.0.2,127.0.0.3",
        "--segments-per-host",
        "2",
        "--base-port",
        &base.to_string(),
        "--data-dir",
        &fs0,
        "--data-dir",
        &fs1,
        "--block-size",
        &BS.to_string(),
        "--allow-one-machine",
    ]);
    // A second init into the same directory changes nothing.
    let (code, _, err) = filerep(&["init", "--cluster-dir", &cd, "--hosts", "127.0.0.2", "--data-dir", &fs0]);
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");
    ok(&["start", "--cluster-dir", &cd]);
    let _running = Running(cdir.clone());
    let dir = ClusterDir::new(&cdir);
    let catalog = || Catalog::load(&dir.catalog()).unwrap();
    let cat = catalog();
    assert_eq!((cat.unmirrored.len(), cat.pairs.len()), (4, 0));

    // A segment answers for its machine what the tools cannot see from
    // another one: a path through a link, resolved there; a busy port.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(tmp.path().join("primary"), &link).unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let ask = filerep::cluster::segment::SegmentRequest::Inspect {
        paths: vec![(link.join("new"), true), ("relative".into(), false)],
        ports: vec![("127.0.0.2".into(), busy_port)],
    };
    let key = dir.key().unwrap();
    match filerep::cluster::control::call::<_, filerep::cluster::segment::SegmentResponse>(
        &cat.unmirrored[0].address.control,
        &key,
        &ask,
        Duration::from_secs(10),
    ) {
        Ok(filerep::cluster::segment::SegmentResponse::Inspected { paths, ports }) => {
            let real = std::fs::canonicalize(tmp.path().join("primary")).unwrap().join("new");
            let first = paths[0].as_ref().unwrap();
            assert_eq!((first.resolved.clone(), first.unwritable.clone()), (real, None));
            assert!(paths[1].is_err(), "a relative path is not answered: {paths:?}");
            assert!(ports[0].as_ref().unwrap_err().contains("in use"), "{ports:?}");
        }
        other => panic!("{other:?}"),
    }
    drop(busy);

    // A workload on every content, going on while the mirrors are added.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = cat
        .unmirrored
        .iter()
        .map(|s| {
            let socket = dir.segment_dir(s.address.dbid).join("segment.sock");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut cl = loop {
                    match Client::connect(&socket) {
                        Ok(c) => break c,
                        Err(e) => assert!(Instant::now() < deadline, "{}: {e}", socket.display()),
                    }
                    std::thread::sleep(Duration::from_millis(20)); // the primary starting
                };
                let mut acked = BTreeMap::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) || i < 64 {
                    let file = format!("rel{}", i % 3);
                    if i < 3 {
                        cl.create(0, &file).unwrap();
                    }
                    let b = (i / 3) % 48;
                    let r = if i / 3 < 48 {
                        cl.extend(0, &file, b, &block(i, b))
                    } else {
                        cl.write_block(0, &file, b, &block(i, b))
                    };
                    r.unwrap_or_else(|e| panic!("write {i}: {e}"));
                    acked.insert((file, b), i);
                    i += 1;
                }
                (i, acked)
            })
        })
        .collect();

    // Bad configurations are refused with file, line and column, changing nothing.
    let before = std::fs::read(dir.catalog()).unwrap();
    let bad = tmp.path().join("bad.cfg");
    std::fs::write(&bad, "filespaceOrder=fs_fast\nmirror0=0:127.0.0.3:x:1:2:/a:/b\n").unwrap();
    let (code, _, err) = filerep(&["addmirrors", "--cluster-dir", &cd, "-i", &bad.display().to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains("bad.cfg:2:"), "{err}");
    assert!(std::fs::read(dir.catalog()).unwrap() == before, "a refused configuration changes nothing");

    // -o writes the computed configuration, -i reads it back: the same mirrors.
    let mdir = |n: &str| format!("{n}={}", tmp.path().join(format!("mirror_{n}")).display());
    let cfg = tmp.path().join("mirrors.cfg");
    let (m0, m1) = (mdir("pg_system"), mdir("fs_fast"));
    let cf = cfg.display().to_string();
    ok(&[
        "addmirrors",
        "--cluster-dir",
        &cd,
        "-p",
        offset,
        "--mirror-data-dir",
        &m0,
        "--mirror-data-dir",
        &m1,
        "-o",
        &cf,
    ]);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let parsed = filerep::cluster::layout::MirrorConfig::parse(&text, "mirrors.cfg").unwrap();
    assert_eq!(parsed.mirrors.len(), 4);
    for m in &parsed.mirrors {
        let p = cat.unmirrored.iter().find(|s| s.content == m.content).unwrap();
        assert_ne!(p.address.host, m.address, "content {}: a mirror never shares its primary's host", m.content);
        assert_eq!(m.port as u32, p.address.port().unwrap() as u32 + 3000, "mirror port = primary port + offset");
    }
    assert!(std::fs::read(dir.catalog()).unwrap() == before, "-o changes nothing");

    // Add them, with the workload running: each pair goes n -> r -> s.
    let out = ok(&["addmirrors", "--cluster-dir", &cd, "-i", &cf, "--json"]);
    assert_eq!(out.lines().filter(|l| l.contains("\"synchronized\"")).count(), 4, "{out}");
    stop.store(true, Ordering::SeqCst);
    let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(results.iter().all(|(n, _)| *n >= 64));
    let cat = catalog();
    assert!(cat.unmirrored.is_empty());
    assert_eq!(cat.pairs.len(), 4);
    for p in &cat.pairs {
        assert_eq!((p.pair.mode, p.pair.generation), (PairMode::Synchronized, 1), "content {}", p.pair.content);
        assert!(cat.history.iter().any(|h| h.content == p.pair.content && h.reason.contains("resync completed")));
    }

    // Every acknowledged write is there, and each mirror is identical to its primary, block by block.
    for (p, (_, acked)) in cat.pairs.iter().zip(&results) {
        let mut cl = Client::connect(&dir.segment_dir(p.addresses[0].dbid).join("segment.sock")).unwrap();
        for ((file, b), i) in acked.iter().take(8) {
            assert_eq!(cl.read_block(0, file, *b).unwrap(), block(*i, *b));
        }
        cl.sync(0, "rel0").unwrap();
    }
    let out = ok(&["state", "--cluster-dir", &cd, "-m"]);
    assert_eq!(out.matches("Passive").count(), 4, "{out}");
    assert_eq!(out.matches("Synchronized").count(), 4, "{out}");
    ok(&["stop", "--cluster-dir", &cd]);
    for p in &cat.pairs {
        for i in 0..2 {
            let dirs = |a: &filerep::durable::catalog::SegmentAddress| {
                PathBuf::from(a.filespaces[i].split_once('=').unwrap().1)
            };
            let (a, b) = (dirs(&p.addresses[0]), dirs(&p.addresses[1]));
            assert_eq!(blocks(&a), blocks(&b), "content {} filespace {i}", p.pair.content);
        }
    }
    let out = ok(&["state", "--cluster-dir", &cd, "--catalog"]);
    assert!(out.contains("(8 rows)"), "{out}");
}

/// `filerep init --mount NAME=BASE`: `filerep start` starts each segment
/// serving the filespace at `BASE/segD` (made when it starts); a file
/// written and fsynced through the acting primary's mount is in the
/// mirror's directory, byte for byte; `filerep stop` unmounts both. A base
/// that overlaps a data directory, or names no filespace, is refused and
/// nothing is made.
#[test]
fn init_with_mounts_start_serves_them_and_stop_unmounts() {
    skip_without_fuse!("init_with_mounts_start_serves_them_and_stop_unmounts");
    let tmp = tempfile::tempdir().unwrap();
    let cdir = tmp.path().join("cluster");
    let cd = cdir.display().to_string();
    LOGS.get_or_init(|| cdir.join("logs"));
    // Ports from the process id, apart from the other test's (20000 and
    // up) and below the kernel's ephemeral ports: with offset 5, this
    // cluster's lie within BASE-1..BASE+20.
    let base = 10000 + (std::process::id() % 400) as u16 * 25;
    let data = format!("pg_system={}", tmp.path().join("primary").display());
    let mirror = format!("pg_system={}", tmp.path().join("mirror").display());
    let init = |mount: &str| -> (i32, String, String) {
        filerep(&[
            "init",
            "--cluster-dir",
            &cd,
            "--hosts",
            "127.0.0.2,127.0.0.3",
            "--segments-per-host",
            "1",
            "--base-port",
            &base.to_string(),
            "--data-dir",
            &data,
            "--mirrors",
            "group",
            "-p",
            "5",
            "--mirror-data-dir",
            &mirror,
            "--block-size",
            &BS.to_string(),
            "--allow-one-machine",
            "--mount",
            mount,
        ])
    };
    // A base through a symbolic link into content 0's (empty) data directory.
    std::fs::create_dir_all(tmp.path().join("primary/gpseg0")).unwrap();
    let link = tmp.path().join("mntlink");
    std::os::unix::fs::symlink(tmp.path().join("primary/gpseg0"), &link).unwrap();
    for (bad, says) in [
        (format!("pg_system={}", link.display()), "mountpoint"),
        (format!("pg_system={}", tmp.path().join("mirror").join("mnt").display()), "overlaps"),
        (format!("fs_other={}", tmp.path().join("mnt").display()), "no filespace fs_other"),
        ("pg_system=relative/mnt".to_string(), "absolute"),
    ] {
        let (code, _, err) = init(&bad);
        assert_ne!(code, 0, "--mount {bad} was accepted");
        assert!(err.contains(says), "--mount {bad}: {err}");
        assert!(!cdir.join("cluster.json").exists(), "a refused init made the cluster file");
    }
    let mounts = tmp.path().join("mnt");
    let (code, out, err) = init(&format!("pg_system={}", mounts.display()));
    assert_eq!(code, 0, "{out}{err}");
    ok(&["start", "--cluster-dir", &cd]);
    let _running = Running(cdir.clone());
    let dir = ClusterDir::new(&cdir);
    let cat = Catalog::load(&dir.catalog()).unwrap();
    let pair = &cat.pairs[0];
    let (p, m) = (pair.pair.acting_primary().dbid, pair.pair.acting_mirror().dbid);
    let at = |dbid: u32| filerep_tools::cluster::mountpoint(&mounts, dbid);
    for d in [p, m] {
        assert!(common::pair::mounted(&at(d)), "segment {d} does not serve {}", at(d).display());
    }
    // The primary serves once the arbiter's first round gave it its role.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = std::fs::create_dir(at(p).join("base")) {
        assert!(Instant::now() < deadline, "mkdir through {}: {e}", at(p).display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let bytes: Vec<u8> = (0..3).flat_map(|i| block(7, i)).collect();
    let file = at(p).join("base").join("t1");
    let mut f = std::fs::File::create(&file).unwrap();
    std::io::Write::write_all(&mut f, &bytes).unwrap();
    f.sync_all().unwrap();
    std::fs::File::open(at(p).join("base")).unwrap().sync_all().unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    let root =
        |a: &filerep::durable::catalog::SegmentAddress| PathBuf::from(a.filespaces[0].split_once('=').unwrap().1);
    let mirror_root = root(pair.address(m).unwrap());
    assert_eq!(std::fs::read(mirror_root.join("base/t1")).unwrap(), bytes, "the mirror's copy after the fsync");
    // A mirror killed leaves a dead mount; `filerep start` starts it again,
    // clearing the dead mount and serving its mountpoint once more.
    let pid: i32 = std::fs::read_to_string(dir.pid(&format!("dbid{m}"))).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(at(m)).err().and_then(|e| e.raw_os_error()) != Some(libc::ENOTCONN) {
        assert!(Instant::now() < deadline, "no dead mount at {} after kill -9", at(m).display());
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&["start", "--cluster-dir", &cd]);
    assert!(std::fs::metadata(at(m)).is_ok_and(|md| md.is_dir()), "{} after the restart", at(m).display());
    assert!(common::pair::mounted(&at(m)), "segment {m} does not serve {} again", at(m).display());
    ok(&["stop", "--cluster-dir", &cd]);
    for d in [p, m] {
        assert!(!common::pair::mounted(&at(d)), "{} is still mounted after filerep stop", at(d).display());
    }
    assert_eq!(blocks(&root(pair.address(p).unwrap())), blocks(&mirror_root));
    // The cluster file and its copy lost: rebuilt from the segments'
    // configurations, the mounts' base with them.
    let made = dir.load().unwrap();
    assert_eq!(made.mounts.len(), 1);
    std::fs::remove_file(dir.cluster_file()).unwrap();
    std::fs::remove_file(cdir.join("cluster.json.good")).unwrap();
    let out = ok(&["catalog", "restore", "--cluster-dir", &cd]);
    assert!(out.contains("rebuilt from the catalog"), "{out}");
    assert_eq!(dir.load().unwrap().mounts, made.mounts);
    // A mount moved by hand off BASE/segD: the rebuilt file keeps the
    // other segment's base and its report names the one it cannot describe.
    let mut moved = dir.segment(m).unwrap();
    let elsewhere = cdir.join("elsewhere");
    moved.mounts[0].mountpoint = elsewhere.clone();
    dir.write_segment(&moved).unwrap();
    std::fs::remove_file(dir.cluster_file()).unwrap();
    std::fs::remove_file(cdir.join("cluster.json.good")).unwrap();
    let out = ok(&["catalog", "restore", "--cluster-dir", &cd]);
    let said = format!("segment {m} serves filespace pg_system at {}", elsewhere.display());
    assert!(out.contains(&said), "{out}");
    assert!(!out.contains(&format!("segment {p} serves")), "{out}");
    assert_eq!(dir.load().unwrap().mounts, made.mounts);
}
