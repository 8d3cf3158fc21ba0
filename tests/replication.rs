//! A real primary against a real `filerep mirror` daemon process over TCP.

mod common;

use common::*;
use filerep::config::SyncLevel;
use filerep_tools::workload::{self, WorkloadConfig, ALL_KINDS};
use std::sync::Arc;
use std::time::Duration;

fn run_pair(block_size: u32, level: SyncLevel, writers: usize, ops: usize, seed: u64) {
    let dirs = Dirs::new();
    let daemon = spawn_daemon(&dirs, block_size);
    let primary = Arc::new(connect_primary(primary_config(&dirs, block_size, level), daemon.addr).expect("primary"));
    let report = workload::run(&primary, &WorkloadConfig { writers, ops_per_writer: ops, seed }).expect("workload");
    let last = primary.shutdown(Duration::from_secs(30)).expect("orderly shutdown");
    assert_eq!(primary.stats().acked_durable, last, "everything durable on the mirror after shutdown");
    drop(primary);
    let status = daemon.stop().expect("daemon stops");
    assert!(status.success(), "daemon exit: {status}");
    let cmp = dirs.assert_identical();
    assert!(cmp.files > 0 && cmp.dirs > 0, "the workload left files and directories: {cmp:?}");
    if writers * ops >= 400 {
        for k in ALL_KINDS {
            assert!(report.by_kind.get(k).copied().unwrap_or(0) > 0, "{k} never exercised: {:?}", report.by_kind);
        }
    }
}

#[test]
fn eight_writers_two_filespaces_every_operation_byte_identical() {
    run_pair(32 * 1024, SyncLevel::Applied, 8, 150, 11);
}

#[test]
fn strict_durable_level_with_8k_blocks() {
    run_pair(8 * 1024, SyncLevel::Durable, 4, 120, 12);
}

#[test]
fn loose_async_window_with_16k_blocks() {
    run_pair(16 * 1024, SyncLevel::Async { window: 16 }, 8, 100, 13);
}

#[test]
fn calls_fail_cleanly_when_the_mirror_dies() {
    let dirs = Dirs::new();
    let mut daemon = spawn_daemon(&dirs, 8192);
    let primary = connect_primary(primary_config(&dirs, 8192, SyncLevel::Applied), daemon.addr).expect("primary");
    primary.create(0, "f").expect("create");
    primary.write_block(0, "f", 0, &[1u8; 8192]).expect("write");
    daemon.kill();
    // Until change tracking exists, a lost mirror fails calls rather than
    // letting the pair silently diverge (brief rule 3).
    let e = first_failing_write(&primary, "f", 8192);
    assert!(matches!(e, filerep::Error::MirrorLost(_)), "{e}");
    assert!(primary.mirror_lost().is_some());
    assert!(matches!(primary.create(0, "g"), Err(filerep::Error::MirrorLost(_))));
}

#[test]
fn bad_arguments_are_refused_without_shipping_anything() {
    let dirs = Dirs::new();
    let mirror = InProcessMirror::start(&dirs, 8192, 1);
    let primary = connect_primary(primary_config(&dirs, 8192, SyncLevel::Applied), mirror.addr).expect("primary");
    primary.create(0, "rel").expect("create");
    let before = primary.stats().operations;
    assert!(matches!(primary.write_block(0, "rel", 0, &[0u8; 100]), Err(filerep::Error::InvalidArgument(_))));
    assert!(matches!(primary.write_block(0, "../x", 0, &[0u8; 8192]), Err(filerep::Error::Path(_))));
    assert!(matches!(primary.write_block(9, "rel", 0, &[0u8; 8192]), Err(filerep::Error::InvalidArgument(_))));
    assert!(matches!(primary.extend(0, "rel", 5, &[0u8; 8192]), Err(filerep::Error::InvalidArgument(_))));
    assert!(matches!(primary.write_at(0, "rel", 0, &[]), Err(filerep::Error::InvalidArgument(_))));
    assert!(matches!(primary.rename(0, "d", "d/e"), Err(filerep::Error::InvalidArgument(_))));
    assert!(matches!(primary.create(0, "rel"), Err(filerep::Error::Disk(_))));
    assert_eq!(primary.stats().operations, before, "nothing was shipped for refused calls");
    let mut buf = vec![0u8; 8192];
    assert!(primary.read_block(0, "rel", 0, &mut buf).is_err(), "reading past the end fails");
    primary.shutdown(Duration::from_secs(10)).expect("shutdown");
    dirs.assert_identical();
}

#[test]
fn demo_command_exits_zero_and_proves_identity() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filerep"))
        .args(["demo", "--pair", "--writers", "4", "--ops", "60", "--seed", "5", "--rows", "5"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("the mirror is byte-identical"), "{stdout}");
}

#[test]
fn the_cluster_demo_tells_the_whole_story_and_ends_identical() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filerep"))
        .args(["demo", "--seed", "6", "--block-size", "8192"])
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for step in ["$ filerep addmirrors", "Acting as Primary", "Change Tracking", "rebalanced", "$ filerep verify"] {
        assert!(stdout.contains(step), "no {step:?} in {stdout}");
    }
    assert_eq!(stdout.matches("compared: identical").count(), 4, "{stdout}");
    assert!(!stdout.contains("DIFFERENCES"), "{stdout}");
}

#[test]
fn a_silent_peer_does_not_hold_up_the_primary_and_a_second_primary_is_refused() {
    let dirs = Dirs::new();
    let daemon = spawn_daemon(&dirs, 8192);
    // Connects and says nothing: the daemon handshakes it on its own thread.
    let _silent = std::net::TcpStream::connect(daemon.addr).expect("connect");
    let started = std::time::Instant::now();
    let first = connect_primary(primary_config(&dirs, 8192, SyncLevel::Applied), daemon.addr).expect("primary");
    first.mkdir(0, "d").expect("mkdir");
    assert!(
        started.elapsed() < filerep::config::StreamTuning::default().handshake_timeout,
        "the silent peer did not block the primary"
    );
    match connect_primary(primary_config(&dirs, 8192, SyncLevel::Applied), daemon.addr) {
        Err(filerep::Error::Refused { status, .. }) => {
            assert_eq!(status, filerep::protocol::handshake::Status::Busy)
        }
        other => panic!("a second primary must be refused, got {:?}", other.map(|_| ())),
    }
    first.shutdown(Duration::from_secs(10)).expect("shutdown");
    drop(first);
    // Once the first session has ended, a new one is served.
    let mut again = None;
    for _ in 0..200 {
        match connect_primary(primary_config(&dirs, 8192, SyncLevel::Applied), daemon.addr) {
            Ok(p) => {
                again = Some(p);
                break;
            }
            Err(filerep::Error::Refused { status: filerep::protocol::handshake::Status::Busy, .. }) => {
                std::thread::yield_now()
            }
            Err(e) => panic!("{e}"),
        }
    }
    let again = again.expect("served after the first session ended");
    again.rmdir(0, "d").expect("rmdir");
    again.shutdown(Duration::from_secs(10)).expect("shutdown");
    dirs.assert_identical();
}

/// Writers keep writing files inside directories that another thread keeps
/// renaming away and re-creating under the same names. Calls may fail with
/// "not found" (the directory moved), but the pair never diverges and the
/// mirror never faults.
#[test]
fn renames_of_parent_directories_under_concurrent_writes_keep_the_pair_identical() {
    let dirs = Dirs::new();
    let daemon = spawn_daemon(&dirs, 8192);
    let primary = Arc::new(connect_primary(primary_config(&dirs, 8192, SyncLevel::Applied), daemon.addr).expect("p"));
    for d in 0..3 {
        primary.mkdir(0, &format!("d{d}")).expect("mkdir");
        primary.create(0, &format!("d{d}/f")).expect("create");
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (primary, stop) = (primary.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let path = format!("d{}/f", (n + w) % 3);
                    match primary.write_block(0, &path, n % 8, &[(n % 251) as u8; 8192]) {
                        Ok(()) | Err(filerep::Error::Disk(_)) => {}
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    for round in 0..1500 {
        let d = round % 3;
        let moved = format!("moved{round}");
        primary.rename(0, &format!("d{d}"), &moved).expect("rename away");
        primary.mkdir(0, &format!("d{d}")).expect("re-create");
        primary.create(0, &format!("d{d}/f")).expect("create");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes: u64 = writers.into_iter().map(|t| t.join().expect("writer")).sum();
    assert!(writes > 0);
    primary.shutdown(Duration::from_secs(30)).expect("shutdown: the mirror never faulted");
    drop(primary);
    daemon.stop().expect("daemon");
    dirs.assert_identical();
}

#[test]
fn calls_after_shutdown_are_refused() {
    let dirs = Dirs::new();
    let mirror = InProcessMirror::start(&dirs, 8192, 1);
    let primary = connect_primary(primary_config(&dirs, 8192, SyncLevel::Applied), mirror.addr).expect("primary");
    primary.create(0, "f").expect("create");
    primary.shutdown(Duration::from_secs(10)).expect("shutdown");
    assert!(matches!(primary.write_block(0, "f", 0, &[1u8; 8192]), Err(filerep::Error::Closed(_))));
    assert!(matches!(primary.mkdir(0, "d"), Err(filerep::Error::Closed(_))));
    assert_eq!(mirror.next_report().end, filerep::runtime::mirror::SessionEnd::Shutdown);
    dirs.assert_identical();
}

/// Rule 8 on the mirror: once an fsync failed, it refuses every primary,
/// whichever thread ran the fsync: the session's own (a commit: little
/// arrived since the last sync) or the syncer (after more than 256 KiB).
#[test]
fn a_failed_mirror_fsync_on_the_session_thread_faults_the_mirror_for_good() {
    let syncs = failed_mirror_fsync_faults_the_mirror_for_good(1);
    assert_eq!((syncs.on_session, syncs.on_syncer), (1, 0), "the sync ran on the session's thread");
}

#[test]
fn a_failed_mirror_fsync_on_the_syncer_thread_faults_the_mirror_for_good() {
    // 40 blocks of 8 KiB: 320 KiB since the last sync job.
    let syncs = failed_mirror_fsync_faults_the_mirror_for_good(40);
    assert_eq!(syncs.on_session, 0, "no sync ran on the session's thread");
    assert!(syncs.on_syncer >= 1, "the sync went to the syncer thread");
}

/// Write `blocks` blocks, fail the mirror's next fsync under a sync, and
/// check the mirror refuses a new primary; where the failed session's syncs ran.
fn failed_mirror_fsync_faults_the_mirror_for_good(blocks: u64) -> filerep::runtime::mirror::SyncCounts {
    use filerep::io::disk::{Disk, SimDisk, SimFault};
    use filerep::runtime::mirror::{MirrorConfig, MirrorServer, SessionEnd};
    let dirs = Dirs::new();
    let mirror_disk = Arc::new(SimDisk::new(2));
    let primary_disk = Arc::new(SimDisk::new(2));
    let server = Arc::new(
        MirrorServer::with_disk(
            MirrorConfig {
                cluster_id: CLUSTER,
                content_id: 0,
                block_size: 8192,
                filespaces: dirs.mirror.clone(),
                key: filerep::protocol::handshake::ClusterKey::from_material(KEY).expect("key"),
                generation: 1,
                tuning: filerep::config::StreamTuning::default(),
                prefer_uring: false,
                direct: false,
                state_dir: None,
            },
            mirror_disk.clone() as Arc<dyn Disk>,
        )
        .expect("mirror"),
    );
    let session = |server: Arc<MirrorServer>| {
        let (p_conn, m_conn) = filerep::io::net::mem_pair(64 * 1024, 256);
        let t = std::thread::spawn(move || server.serve_conn(m_conn, "mem"));
        (p_conn, t)
    };
    let (conn, t) = session(server.clone());
    let primary = filerep::runtime::primary::Primary::start_with_disk(
        primary_config(&dirs, 8192, SyncLevel::Applied),
        primary_disk.clone() as Arc<dyn Disk>,
        conn,
        "mem",
    )
    .expect("primary");
    primary.create(0, "f").expect("create");
    for b in 0..blocks {
        primary.write_block(0, "f", b, &[9u8; 8192]).expect("write");
    }
    mirror_disk.inject(SimFault::FailNextSync);
    let err = primary.sync(0, "f").expect_err("the mirror's fsync failed");
    assert!(matches!(err, filerep::Error::MirrorLost(_)), "{err}");
    let report = t.join().expect("session");
    assert!(matches!(report.end, SessionEnd::ApplyFailed(_)), "{:?}", report.end);
    assert!(server.fault().is_some());
    drop(primary);
    let (conn, t) = session(server.clone());
    match filerep::runtime::primary::Primary::start_with_disk(
        primary_config(&dirs, 8192, SyncLevel::Applied),
        primary_disk as Arc<dyn Disk>,
        conn,
        "mem",
    ) {
        Err(filerep::Error::Refused { status, .. }) => {
            assert_eq!(status, filerep::protocol::handshake::Status::Faulted)
        }
        other => panic!("a faulted mirror must refuse, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(t.join().expect("session").end, SessionEnd::Refused(..)));
    report.syncs
}

/// A one-frame send queue: callers constantly wait for room, and whoever
/// finds nobody sending drains the queue. Nothing is lost or reordered.
#[test]
fn a_tiny_send_queue_applies_backpressure_without_losing_anything() {
    let dirs = Dirs::new();
    let mirror = InProcessMirror::start(&dirs, 8192, 1);
    let mut cfg = primary_config(&dirs, 8192, SyncLevel::Async { window: 64 });
    cfg.tuning.queue_frames = 1;
    let primary = Arc::new(connect_primary(cfg, mirror.addr).expect("primary"));
    workload::run(&primary, &WorkloadConfig { writers: 8, ops_per_writer: 60, seed: 21 }).expect("workload");
    primary.shutdown(Duration::from_secs(30)).expect("shutdown");
    dirs.assert_identical();
}

/// Rule 7 across restarts: a mirror that has seen generation 3 refuses a
/// generation-2 primary even after it was restarted with `--generation 1`.
/// The state file also records a session while it streams (the host's boot
/// id, before the first acknowledgement), cleared by its orderly end.
#[test]
fn a_restarted_mirror_remembers_its_generation() {
    let dirs = Dirs::new();
    let state = tempfile::tempdir().expect("state dir");
    let args = mirror_args(&dirs, 8192, vec!["--state-dir".into(), state.path().display().to_string()]);
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_filerep"));
    let daemon = filerep_tools::process::MirrorProcess::spawn(exe, &args).expect("daemon");
    let mut cfg = primary_config(&dirs, 8192, SyncLevel::Applied);
    cfg.identity.generation = 3;
    let p = connect_primary(cfg, daemon.addr).expect("generation 3 accepted");
    p.mkdir(0, "g3").expect("mkdir");
    p.shutdown(Duration::from_secs(10)).expect("shutdown");
    drop(p);
    daemon.stop().expect("stop");
    let saved = filerep::runtime::mirror::MirrorState::load(state.path()).expect("state file");
    assert_eq!(saved.generation, 3);
    let daemon = filerep_tools::process::MirrorProcess::spawn(exe, &args).expect("restarted daemon");
    let mut cfg = primary_config(&dirs, 8192, SyncLevel::Applied);
    cfg.identity.generation = 2;
    match connect_primary(cfg, daemon.addr) {
        Err(filerep::Error::Refused { status, .. }) => {
            assert_eq!(status, filerep::protocol::handshake::Status::StaleGeneration)
        }
        other => panic!("a stale primary must be refused after a restart, got {:?}", other.map(|_| ())),
    }
    // The session was recorded as it streamed (this boot), and cleared by
    // its orderly end: a power loss now takes nothing it acknowledged.
    assert_eq!(saved.streaming_boot, None, "cleared by the orderly end");
    let mut cfg = primary_config(&dirs, 8192, SyncLevel::Applied);
    cfg.identity.generation = 3;
    let p = connect_primary(cfg, daemon.addr).expect("generation 3 accepted again");
    p.mkdir(0, "g3-again").expect("mkdir");
    let streaming = filerep::runtime::mirror::MirrorState::load(state.path()).expect("state file");
    assert_eq!(streaming.streaming_boot, filerep::runtime::mirror::boot_id(), "recorded before the first ack");
    p.shutdown(Duration::from_secs(10)).expect("shutdown");
    drop(p);
    daemon.stop().expect("stop");
    let saved = filerep::runtime::mirror::MirrorState::load(state.path()).expect("state file");
    assert_eq!(saved.streaming_boot, None);
    // A corrupt state file is refused with a message naming it.
    std::fs::write(state.path().join("mirror-state.json"), b"{ not json").expect("write");
    let err = filerep::runtime::mirror::MirrorState::load(state.path()).expect_err("corrupt state");
    assert!(err.to_string().contains("mirror-state.json"), "{err}");
}

/// A primary and a mirror on simulated disks (whose durable images the
/// test can read), joined by an in-memory connection.
struct SimPair {
    primary_disk: Arc<filerep::io::disk::SimDisk>,
    mirror_disk: Arc<filerep::io::disk::SimDisk>,
    primary: filerep::runtime::primary::Primary,
    session: std::thread::JoinHandle<filerep::runtime::mirror::SessionReport>,
}

impl SimPair {
    fn start(dirs: &Dirs) -> SimPair {
        use filerep::io::disk::{Disk, SimDisk};
        let primary_disk = Arc::new(SimDisk::new(2));
        let mirror_disk = Arc::new(SimDisk::new(2));
        let mirror = filerep::runtime::mirror::MirrorServer::with_disk(
            mirror_config(dirs, 8192),
            mirror_disk.clone() as Arc<dyn Disk>,
        );
        let server = Arc::new(mirror.expect("mirror"));
        let (p_conn, m_conn) = filerep::io::net::mem_pair(64 * 1024, 256);
        let session = std::thread::spawn(move || server.serve_conn(m_conn, "mem"));
        let primary = filerep::runtime::primary::Primary::start_with_disk(
            primary_config(dirs, 8192, SyncLevel::Applied),
            primary_disk.clone() as Arc<dyn Disk>,
            p_conn,
            "mem",
        )
        .expect("primary");
        SimPair { primary_disk, mirror_disk, primary, session }
    }
}

/// `sync_dir`, a directory fsync: every namespace change made before it is
/// in the durable image of both disks afterwards, none of the file data it
/// was not asked for needs to be; bad targets are refused.
#[test]
fn sync_dir_makes_every_namespace_change_durable_on_both_sides() {
    use filerep::io::disk::{SimDisk, SimEntry};
    let dirs = Dirs::new();
    let SimPair { primary_disk, mirror_disk, primary, session } = SimPair::start(&dirs);
    primary.mkdir(0, "base").unwrap();
    primary.mkdir(0, "base/1").unwrap();
    primary.create(0, "base/1/tmp").unwrap();
    primary.rename(0, "base/1/tmp", "base/1/rel").unwrap();
    primary.mkdir(0, "gone").unwrap();
    primary.rmdir(0, "gone").unwrap();
    primary.mkdir(1, "other").unwrap();
    let entries = |disk: &SimDisk| -> Vec<(u16, String, bool)> {
        disk.durable_snapshot().into_iter().map(|((fs, p), e)| (fs, p, matches!(e, SimEntry::Dir))).collect()
    };
    assert!(entries(&primary_disk).is_empty(), "nothing durable before the directory sync");
    primary.sync_dir(0, "base/1").expect("sync_dir");
    let want = vec![
        (0, "base".to_string(), true),
        (0, "base/1".to_string(), true),
        (0, "base/1/rel".to_string(), false),
        (1, "other".to_string(), true),
    ];
    assert_eq!(entries(&primary_disk), want, "the primary's durable namespace");
    assert_eq!(entries(&mirror_disk), want, "the mirror's durable namespace");
    // The root, again (nothing left to sync), and what is refused.
    primary.sync_dir(1, "").expect("sync_dir of a root");
    let e = primary.sync_dir(0, "base/1/rel").unwrap_err();
    assert!(matches!(e, filerep::Error::InvalidArgument(_)), "{e}");
    let e = primary.sync_dir(0, "nowhere").unwrap_err();
    assert!(matches!(e, filerep::Error::Disk(ref d) if d.kind == filerep::io::disk::DiskErrorKind::NotFound), "{e}");
    assert!(primary.sync_dir(0, "../x").is_err());
    assert!(primary.sync_dir(9, "").is_err());
    primary.shutdown(Duration::from_secs(10)).expect("shutdown");
    assert_eq!(session.join().unwrap().end, filerep::runtime::mirror::SessionEnd::Shutdown);
}

/// `write_at_and_flush` (a held write and the fsync that sends it): when
/// it returns, its bytes are durable on both disks, with the file's
/// directory entry; a plain `write_at` after it is not, until a flush.
#[test]
fn a_write_with_its_flush_is_durable_on_both_sides_when_it_returns() {
    use filerep::io::disk::{SimDisk, SimEntry};
    let dirs = Dirs::new();
    let SimPair { primary_disk, mirror_disk, primary, session } = SimPair::start(&dirs);
    primary.mkdir(0, "wal").unwrap();
    primary.create(0, "wal/log").unwrap();
    primary.write_at(0, "wal/log", 0, b"header:").unwrap();
    let durable = |disk: &SimDisk| match disk.durable_snapshot().get(&(0, "wal/log".to_string())) {
        Some(SimEntry::File(b)) => Some(b.clone()),
        _ => None,
    };
    assert_eq!(durable(&mirror_disk), None, "nothing durable before the flush");
    primary.write_at_and_flush(0, "wal/log", 7, b"frame one").expect("write and flush");
    for (side, disk) in [("primary", &primary_disk), ("mirror", &mirror_disk)] {
        assert_eq!(durable(disk).as_deref(), Some(&b"header:frame one"[..]), "{side}: the write before it and its own");
    }
    primary.write_at(0, "wal/log", 16, b", two").unwrap();
    // (The primary's disk: the mirror's own checkpoint, once a second,
    // could make it durable there on a slow machine.)
    assert_eq!(durable(&primary_disk).as_deref(), Some(&b"header:frame one"[..]), "a plain write is not durable yet");
    primary.flush(0, "wal/log").unwrap();
    assert_eq!(durable(&mirror_disk).as_deref(), Some(&b"header:frame one, two"[..]));
    // Refused as write_at refuses: nothing shipped.
    assert!(primary.write_at_and_flush(0, "wal/log", 0, b"").is_err());
    assert!(primary.write_at_and_flush(0, "../x", 0, b"x").is_err());
    primary.shutdown(Duration::from_secs(10)).expect("shutdown");
    assert_eq!(session.join().unwrap().end, filerep::runtime::mirror::SessionEnd::Shutdown);
}

/// `filerep bench` with a fixed count: both sides write every block, and
/// the report counts the CPU each spent (the machine's, and of the
/// replicated side, the primary's process and the mirror daemon's).
#[test]
fn the_block_bench_reports_cpu_per_block() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let args = ["bench", "--count", "4096", "--writers", "2", "--rounds", "1", "--dir", &d, "--json"];
    let (code, out, err) = common::pair::run_filerep(&args);
    assert_eq!(code, 0, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    for field in [
        "baseline_cpu_us_per_block",
        "replicated_cpu_us_per_block",
        "cpu_ratio",
        "replicated_primary_cpu_us_per_block",
        "replicated_mirror_cpu_us_per_block",
    ] {
        let v = r[field].as_f64().unwrap_or(-1.0);
        assert!(v.is_finite() && v > 0.0, "{field}: {v} in {r}");
    }
}

/// `filerep bench FLAGS --count COUNT` with 2 writers and 1 round, in a
/// directory of its own: its JSON report.
fn bench_json(flags: &[&str], count: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let mut args = vec!["bench"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--count", count, "--writers", "2", "--rounds", "1", "--dir", &d, "--json"]);
    let (code, out, err) = common::pair::run_filerep(&args);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `filerep bench --pin`: the baseline writes each block once, and the
/// report gives the replicated throughput over it.
#[test]
fn the_pinned_block_bench_reports_its_ratio() {
    let r = bench_json(&["--pin"], "4096");
    assert_eq!(r["baseline_copies"].as_u64(), Some(1), "{r}");
    let ratio = r["pinned_ratio"].as_f64().unwrap_or(-1.0);
    assert!(ratio.is_finite() && ratio > 0.0, "pinned_ratio {ratio} in {r}");
    let (code, _, err) = common::pair::run_filerep(&["bench", "--pin", "--mirror-down"]);
    assert_ne!(code, 0);
    assert!(err.contains("--pin") && err.contains("--mirror-down"), "{err}");
}

/// Segments configured with `direct: true` (O_DIRECT for aligned blocks on
/// both): blocks written and extended through the client socket, an
/// unaligned write into one of them (buffered, on the same file), a
/// truncate, syncs; both data directories then hold the same blocks, and
/// reads see every write.
#[test]
fn direct_segments_replicate_byte_for_byte() {
    use common::pair::{assert_trees_equal, Pair};
    let pair = Pair::start_direct(8192);
    let mut c = filerep::cluster::client::Client::connect(&pair.seg(2).cfg.socket).expect("client");
    c.mkdir(0, "base").expect("mkdir");
    c.create(0, "base/rel").expect("create");
    for b in 0..64u64 {
        c.extend(0, "base/rel", b, &vec![(b % 251) as u8 + 1; 8192]).expect("extend");
    }
    for b in (0..64u64).step_by(3) {
        c.write_block(0, "base/rel", b, &vec![0xa5; 8192]).expect("overwrite");
    }
    c.write_at(0, "base/rel", 5 * 8192 + 100, b"an unaligned write into a direct block").expect("write_at");
    c.truncate(0, "base/rel", 60).expect("truncate");
    c.create(1, "log").expect("create");
    c.write_at(1, "log", 0, &[7u8; 5000]).expect("log");
    // Four clients overwrite eight blocks at once: on the mirror their
    // writes go to write rounds side by side, often to a block a round on
    // its way writes (the batch then waits for it), and a short unaligned
    // write lands inside a block now and then; every block must end as it
    // did on the primary.
    c.create(0, "base/hot").expect("create");
    for b in 0..8u64 {
        c.extend(0, "base/hot", b, &vec![0u8; 8192]).expect("extend");
    }
    let socket = pair.seg(2).cfg.socket.clone();
    std::thread::scope(|s| {
        for w in 0..4u8 {
            let socket = &socket;
            s.spawn(move || {
                let mut c = filerep::cluster::client::Client::connect(socket).expect("client");
                for i in 0..200u64 {
                    let b = (i * 3 + w as u64 * 5) % 8;
                    c.write_block(0, "base/hot", b, &vec![w * 64 + (i % 64) as u8; 8192]).expect("hot write");
                    if i % 16 == w as u64 {
                        c.write_at(0, "base/hot", b * 8192 + 1000, &[w; 100]).expect("unaligned hot write");
                    }
                }
            });
        }
    });
    c.sync(0, "base/hot").expect("sync");
    c.sync(0, "base/rel").expect("sync");
    c.sync(1, "log").expect("sync");
    let block5 = c.read_block(0, "base/rel", 5).expect("read");
    assert_eq!(&block5[100..138], b"an unaligned write into a direct block");
    assert_eq!(block5[0], 6);
    assert_eq!(c.read_block(0, "base/rel", 3).expect("read"), vec![0xa5; 8192]);
    assert_eq!(c.nblocks(0, "base/rel").expect("nblocks"), 60);
    let roots = |dbid| vec![pair.seg(dbid).root(0), pair.seg(dbid).root(1)];
    assert_trees_equal(&roots(2), &roots(3), 8192);
    // Each segment holds the relation open with O_DIRECT (its fdinfo flags).
    for dbid in [2, 3] {
        let pid = pair.seg(dbid).child.as_ref().expect("running").id();
        let rel = pair.seg(dbid).root(0).join("base/rel");
        let direct = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fds").flatten().any(|fd| {
            let to = std::fs::read_link(fd.path()).unwrap_or_default();
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
                .unwrap_or_default();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).map(str::trim).unwrap_or("0");
            to == rel && u32::from_str_radix(flags, 8).is_ok_and(|f| f & libc::O_DIRECT as u32 != 0)
        });
        assert!(direct, "segment {dbid} has no O_DIRECT descriptor on {}", rel.display());
    }
}

/// `filerep bench --direct`: O_DIRECT on every side, said in the report,
/// with the replicated throughput over the baseline's.
#[test]
fn the_direct_block_bench_reports_its_ratio() {
    let r = bench_json(&["--direct"], "2048");
    assert_eq!(r["direct"].as_bool(), Some(true), "{r}");
    assert!(r["io_backend"].as_str().is_some_and(|b| b.contains("O_DIRECT")), "{r}");
    let ratio = r["direct_ratio"].as_f64().unwrap_or(-1.0);
    assert!(ratio.is_finite() && ratio > 0.0, "direct_ratio {ratio} in {r}");
    let (code, _, err) = common::pair::run_filerep(&["bench", "--direct", "--mirror-down"]);
    assert_ne!(code, 0);
    assert!(err.contains("--direct") && err.contains("--mirror-down"), "{err}");
}

/// `filerep bench --bare`: each round also runs the bare pair (the same
/// writes with only the copies, the sends and the waits), and the report
/// gives its throughput over the baseline's and the real pair's over it.
#[test]
fn the_bare_pair_bench_reports_its_ratios() {
    let r = bench_json(&["--bare", "--direct"], "2048");
    for field in ["bare_mb_s", "bare_ratio", "bare_write_p50_us", "bare_cpu_us_per_block", "replicated_over_bare"] {
        let v = r[field].as_f64().unwrap_or(-1.0);
        assert!(v.is_finite() && v > 0.0, "{field}: {v} in {r}");
    }
    let (direct, bare, rep) =
        (r["direct_ratio"].as_f64(), r["bare_ratio"].as_f64(), r["replicated_over_bare"].as_f64());
    let (Some(direct), Some(bare), Some(rep)) = (direct, bare, rep) else { panic!("{r}") };
    assert!((direct / bare - rep).abs() < 1e-6 * rep, "the three ratios agree: {r}");
    let (code, _, err) = common::pair::run_filerep(&["bench", "--bare", "--mirror-down"]);
    assert_ne!(code, 0);
    assert!(err.contains("--bare") && err.contains("--mirror-down"), "{err}");
    // Without --bare the fields are null.
    let r = bench_json(&[], "512");
    assert!(r["bare_ratio"].is_null() && r["replicated_over_bare"].is_null(), "{r}");
}

/// The only call in progress reads the mirror's answer itself (one wake-up
/// fewer); calls beside others leave it to the receiver. Both ways every
/// write lands on both sides, and the receiver comes back for the calls
/// that do not read.
#[test]
fn a_call_alone_reads_its_own_answer_and_calls_together_leave_it_to_the_receiver() {
    let dirs = Dirs::new();
    let daemon = spawn_daemon(&dirs, 8192);
    let primary =
        Arc::new(connect_primary(primary_config(&dirs, 8192, SyncLevel::Applied), daemon.addr).expect("primary"));
    primary.create(0, "alone").unwrap();
    for b in 0..40u64 {
        primary.write_block(0, "alone", b, &[b as u8 + 1; 8192]).unwrap();
    }
    primary.sync(0, "alone").unwrap();
    let alone = primary.stats().answers_read_by_callers;
    assert!(alone >= 20, "40 writes and a sync one at a time: {alone} answers read by their callers");
    // Four writers at once, then one alone again: nothing waits forever.
    std::thread::scope(|s| {
        for w in 0..4u8 {
            let primary = &primary;
            s.spawn(move || {
                let name = format!("together{w}");
                primary.create(0, &name).unwrap();
                for b in 0..200u64 {
                    primary.write_block(0, &name, b, &[w + 1; 8192]).unwrap();
                }
                primary.sync(0, &name).unwrap();
            });
        }
    });
    primary.write_block(0, "alone", 40, &[9; 8192]).unwrap();
    primary.sync(0, "alone").unwrap();
    let last = primary.shutdown(Duration::from_secs(30)).expect("orderly shutdown");
    assert_eq!(primary.stats().acked_durable, last, "everything durable on the mirror");
    drop(primary);
    assert!(daemon.stop().expect("daemon stops").success());
    dirs.assert_identical();
}
