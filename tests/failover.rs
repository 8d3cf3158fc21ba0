//! Real processes: an arbiter and two `filerep segment` processes on
//! loopback, killed with SIGKILL and cut off by fault-injecting proxies.
//! Each test asserts the catalog's mode, roles and generation afterwards
//! (brief section 3), and what clients saw. `failover/resync.rs`: recover
//! after a loss, and a crash of each process at each step of a resync;
//! `failover/verify.rs`: `filerep verify` and `/metrics`;
//! `failover/mount.rs`: the primary's own mount across a role change.

#[macro_use]
mod common;
#[path = "failover/mount.rs"]
mod mount;
#[path = "failover/resync.rs"]
mod resync;
#[path = "failover/verify.rs"]
mod verify;

use common::pair::{arbiter_args, exe, free_addr, spawn_ready, try_spawn_ready, READY_ARBITER, READY_SEGMENT};
use filerep::cluster::client::{Client, ClientError, ErrorClass};
use filerep::cluster::segment::{Acting, SegmentConfig, SegmentRequest, SegmentResponse, SegmentStatus};
use filerep::core::pair::{PairMode, Role};
use filerep::durable::catalog::{Catalog, SegmentAddress};
use filerep::protocol::handshake::ClusterKey;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &[u8] = b"failover test cluster key material";
const BS: u32 = 8192;
const FS: [&str; 2] = ["pg_system", "fs_fast"];
/// Configured on both segments; client calls must never stall beyond them.
const ACK_TIMEOUT_MS: u64 = 1000;
const DECISION_TIMEOUT_MS: u64 = 3000;

/// A TCP proxy that can cut every connection through it and refuse new ones.
struct Proxy {
    addr: String,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: String) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (c, cs) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the peer sees a reset or EOF
                }
                let Ok(t) = TcpStream::connect(&target) else { continue };
                let mut list = cs.lock().unwrap();
                for x in [&s, &t] {
                    list.push(x.try_clone().unwrap());
                }
                drop(list);
                for (mut from, mut to) in [(s.try_clone().unwrap(), t.try_clone().unwrap()), (t, s)] {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

struct Seg {
    dbid: u32,
    cfg: SegmentConfig,
    cfg_path: PathBuf,
    child: Option<Child>,
}

impl Seg {
    fn start(&mut self) {
        self.try_start().unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_start(&mut self) -> Result<(), String> {
        let args = vec!["segment".into(), "--config".into(), self.cfg_path.display().to_string()];
        let (child, addr) = try_spawn_ready(&args, READY_SEGMENT)?;
        assert_eq!(addr, self.cfg.control_listen);
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.cfg.socket).expect("client socket")
    }

    fn roots(&self) -> Vec<PathBuf> {
        self.cfg.filespaces.iter().map(|s| PathBuf::from(s.split_once('=').unwrap().1)).collect()
    }

    fn status(&self, key: &ClusterKey) -> Option<SegmentStatus> {
        match filerep::cluster::control::call::<_, SegmentResponse>(
            &self.cfg.control_listen,
            key,
            &SegmentRequest::Probe,
            Duration::from_secs(2),
        ) {
            Ok(SegmentResponse::Status(s)) => Some(s),
            _ => None,
        }
    }
}

impl Drop for Seg {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    key: ClusterKey,
    key_file: PathBuf,
    arbiter_addr: String,
    arbiter: Option<Child>,
    segs: Vec<Seg>,
    proxies: Vec<Proxy>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut a) = self.arbiter.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// Which of the primary's links go through proxies that a test can cut.
#[derive(Clone, Copy, PartialEq)]
enum Links {
    Direct,
    PrimaryProxied,
}

impl Cluster {
    /// An arbiter and two segments (dbid 2 preferred primary, dbid 3
    /// preferred mirror), started and synchronized.
    fn start(links: Links) -> Cluster {
        Cluster::start_with(links, false, false)
    }

    /// The same, with `/metrics` served by each segment when `metrics` is set.
    /// Ports are picked free and bound by the children a moment later:
    /// another test may take one in between, so a start that fails is
    /// made again afresh.
    /// `mount`: the preferred primary also serves its first filespace as a
    /// file system, at `seg2/mnt` (docs/mount.md).
    fn start_with(links: Links, metrics: bool, mount: bool) -> Cluster {
        let mut errors = Vec::new();
        for _ in 0..5 {
            match Cluster::try_start_with(links, metrics, mount) {
                Ok(c) => return c,
                Err(e) => errors.push(e),
            }
        }
        panic!("cannot start a cluster: {errors:#?}");
    }

    fn try_start_with(links: Links, metrics: bool, mount: bool) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("cluster.key");
        std::fs::write(&key_file, KEY).unwrap();
        let key = ClusterKey::from_material(KEY).unwrap();
        let arbiter_listen = free_addr();
        let mut proxies = Vec::new();
        let mut segs = Vec::new();
        let mut addrs = Vec::new();
        for dbid in [2u32, 3] {
            let base = dir.path().join(format!("seg{dbid}"));
            let filespaces: Vec<String> = FS
                .iter()
                .map(|n| {
                    let root = base.join(n);
                    std::fs::create_dir_all(&root).unwrap();
                    format!("{n}={}", root.display())
                })
                .collect();
            let control_listen = free_addr();
            let data_listen = free_addr();
            let mut arbiter = arbiter_listen.clone();
            let mut control_in_catalog = control_listen.clone();
            let mut data_in_catalog = data_listen.clone();
            if links == Links::PrimaryProxied {
                if dbid == 2 {
                    // The arbiter reaches the primary, and the primary the arbiter, through proxies.
                    let c = Proxy::start(control_listen.clone());
                    control_in_catalog = c.addr.clone();
                    let a = Proxy::start(arbiter_listen.clone());
                    arbiter = a.addr.clone();
                    proxies.push(c);
                    proxies.push(a);
                } else {
                    // The primary reaches its mirror through a proxy.
                    let d = Proxy::start(data_listen.clone());
                    data_in_catalog = d.addr.clone();
                    proxies.push(d);
                }
            }
            let cfg = SegmentConfig {
                dbid,
                content: 0,
                cluster_id: 0xfa,
                block_size: BS,
                filespaces,
                key_file: key_file.clone(),
                control_listen: control_listen.clone(),
                data_listen,
                socket: base.join("segment.sock"),
                state_dir: base.join("state"),
                arbiter,
                sync_level: "applied".into(),
                decision_timeout_ms: DECISION_TIMEOUT_MS,
                ack_timeout_ms: ACK_TIMEOUT_MS,
                heartbeat_ms: 100,
                handshake_timeout_ms: 2000,
                prefer_uring: true,
                direct: false,
                metrics_listen: metrics.then(free_addr),
                activity_limit: filerep::core::primary::ACTIVITY_LIMIT,
                mounts: if mount && dbid == 2 {
                    vec![filerep::cluster::segment::MountEntry {
                        filespace: FS[0].into(),
                        mountpoint: base.join("mnt"),
                        uid: None,
                        gid: None,
                        allow_other: false,
                        threads: 8,
                        log_files: None,
                    }]
                } else {
                    Vec::new()
                },
            };
            let cfg_path = base.join("segment.json");
            std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
            addrs.push(SegmentAddress {
                dbid,
                host: "localhost".into(),
                control: control_in_catalog.clone(),
                data: data_in_catalog,
                filespaces: Vec::new(),
            });
            segs.push(Seg { dbid, cfg, cfg_path, child: None });
        }
        let catalog_path = dir.path().join("catalog.json");
        Catalog::new(0xfa, BS, vec![(0, addrs[0].clone(), addrs[1].clone())]).store(&catalog_path).unwrap();
        for s in &mut segs {
            s.try_start()?;
        }
        let args = arbiter_args(&catalog_path, &key_file, &arbiter_listen);
        let (arbiter, addr) = try_spawn_ready(&args, READY_ARBITER)?;
        let c = Cluster { _dir: dir, key, key_file, arbiter_addr: addr, arbiter: Some(arbiter), segs, proxies };
        c.wait_for("the pair to stream", Duration::from_secs(20), || {
            c.seg(2).status(&c.key).is_some_and(|s| s.acting == Acting::Primary && s.mode == 's')
        });
        Ok(c)
    }

    fn seg(&self, dbid: u32) -> &Seg {
        self.segs.iter().find(|s| s.dbid == dbid).unwrap()
    }

    fn seg_mut(&mut self, dbid: u32) -> &mut Seg {
        self.segs.iter_mut().find(|s| s.dbid == dbid).unwrap()
    }

    fn catalog(&self) -> Catalog {
        filerep::cluster::probe::fetch_catalog(&self.arbiter_addr, &self.key, Duration::from_secs(5)).expect("catalog")
    }

    /// Poll a condition until it holds (a deadline, not a sleep: the test
    /// fails with what it was waiting for).
    fn wait_for(&self, what: &str, limit: Duration, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; catalog: {:#?}",
                self.catalog()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pair(&self) -> filerep::core::pair::Pair {
        self.catalog().pairs[0].pair.clone()
    }
}

fn block(tag: u64, i: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    for (j, c) in b.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i ^ (j as u64) << 32).to_le_bytes());
    }
    b
}

fn role_of(p: &filerep::core::pair::Pair, dbid: u32) -> (Role, bool) {
    let s = p.segments.iter().find(|s| s.dbid == dbid).unwrap();
    (s.role, s.up)
}

/// Every file under the roots, block by block (see `common::pair::block_tree`).
fn tree(roots: &[PathBuf]) -> BTreeMap<String, Vec<u64>> {
    common::pair::block_tree(roots, BS)
}

fn assert_trees_equal(a: &[PathBuf], b: &[PathBuf]) {
    common::pair::assert_trees_equal(a, b, BS)
}

#[test]
fn the_arbiter_starts_a_synchronized_pair_and_the_mirror_is_identical() {
    let c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.mkdir(1, "base").unwrap();
    cl.create(1, "base/rel").unwrap();
    for i in 0..64 {
        cl.extend(1, "base/rel", i, &block(1, i)).unwrap();
    }
    cl.create(0, "wal").unwrap();
    cl.write_at(0, "wal", 0, b"log record").unwrap();
    cl.flush(0, "wal").unwrap();
    cl.sync(1, "base/rel").unwrap();
    assert_eq!(cl.read_block(1, "base/rel", 5).unwrap(), block(1, 5));
    // The mirror refuses clients: it is not the primary.
    let e = c.seg(3).client().create(0, "x").unwrap_err();
    assert_eq!(e.class(), Some(ErrorClass::NotPrimary), "{e}");
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::Synchronized, 1));
    assert_eq!(role_of(&p, 2), (Role::Primary, true));
    assert_eq!(role_of(&p, 3), (Role::Mirror, true));
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
}

/// Run writers against a segment until `stop`; returns (calls, failures, slowest call).
fn writers(seg: &Seg, n: usize, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<(u64, Vec<String>, Duration)>> {
    let mut setup = seg.client();
    (0..n)
        .map(|w| {
            let path = format!("w{w}");
            setup.create(0, &path).unwrap();
            let mut cl = seg.client();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut calls, mut failures, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    let r = cl.write_block(0, &path, i % 256, &block(w as u64, i));
                    slowest = slowest.max(t.elapsed());
                    calls += 1;
                    if let Err(e) = r {
                        failures.push(e.to_string());
                    }
                    i += 1;
                }
                (calls, failures, slowest)
            })
        })
        .collect()
}

#[test]
fn kill_9_of_the_mirror_under_load_the_primary_goes_on_tracking_changes() {
    let mut c = Cluster::start(Links::Direct);
    let stop = Arc::new(AtomicBool::new(false));
    let handles = writers(c.seg(2), 4, stop.clone());
    c.wait_for("writes to flow", Duration::from_secs(10), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.acting == Acting::Primary)
    });
    c.seg_mut(3).kill();
    c.wait_for("the primary to track changes", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'c')
    });
    // Keep writing in change tracking for a moment, measured in calls.
    let mut cl = c.seg(2).client();
    for i in 0..50 {
        cl.write_block(0, "w0", 300 + i, &block(9, i)).unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let bound = Duration::from_millis(ACK_TIMEOUT_MS + DECISION_TIMEOUT_MS + 2000);
    for h in handles {
        let (calls, failures, slowest) = h.join().unwrap();
        assert!(calls > 0);
        assert!(failures.is_empty(), "client calls failed: {failures:?}");
        assert!(slowest < bound, "a call stalled {slowest:?}, beyond the configured timeouts ({bound:?})");
    }
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::ChangeTracking, 1));
    assert_eq!(role_of(&p, 2), (Role::Primary, true));
    assert_eq!(role_of(&p, 3), (Role::Mirror, false));
    assert!(c.catalog().history.iter().any(|h| h.after.contains("mode c")), "the transition is in the history");
    // The mirror returns: up again as mirror, still not in sync until recovered.
    c.seg_mut(3).start();
    c.wait_for("the mirror to be back", Duration::from_secs(20), || {
        c.seg(3).status(&c.key).is_some_and(|s| s.acting == Acting::Mirror)
    });
    let p = c.pair();
    assert_eq!(role_of(&p, 3), (Role::Mirror, true));
    assert_eq!(p.mode, PairMode::ChangeTracking);
    assert_eq!(c.seg(2).status(&c.key).unwrap().mode, 'c', "the primary keeps tracking");
}

#[test]
fn kill_9_of_the_primary_promotes_the_mirror_and_the_old_primary_returns_as_mirror() {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.create(0, "rel").unwrap();
    for i in 0..40 {
        cl.extend(0, "rel", i, &block(2, i)).unwrap();
    }
    c.seg_mut(2).kill();
    c.wait_for("the mirror to be promoted", Duration::from_secs(20), || {
        c.seg(3).status(&c.key).is_some_and(|s| s.acting == Acting::Primary && s.mode == 'c')
    });
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::ChangeTracking, 2), "a promotion increments the generation");
    assert_eq!(role_of(&p, 3), (Role::Primary, true));
    assert_eq!(role_of(&p, 2), (Role::Mirror, false));
    // Every acknowledged write is on the new primary, which serves writes.
    let mut nl = c.seg(3).client();
    for i in 0..40 {
        assert_eq!(nl.read_block(0, "rel", i).unwrap(), block(2, i), "acknowledged block {i} lost");
    }
    for i in 0..10 {
        nl.write_block(0, "rel", i, &block(3, i)).unwrap();
    }
    nl.create(0, "after-failover").unwrap();
    // Rule 5: the dead primary's activity log names what it may have
    // written without the mirror: every block of "rel" it wrote.
    {
        let state = c.seg(2).cfg.state_dir.clone();
        let disk = std::sync::Arc::new(filerep::io::disk::StdDisk::open(&[state]).unwrap());
        let log_path = filerep::io::disk::FsPath::new(0, filerep::protocol::path::RelPath::new("changelog").unwrap());
        let (log, _) = filerep::durable::changelog::ChangeLog::open(disk, log_path).unwrap();
        let rel = filerep::io::disk::FsPath::new(0, filerep::protocol::path::RelPath::new("rel").unwrap());
        let set = log.change_set();
        assert!((0..40).all(|b| set.covers_block(&rel, b)), "the activity log misses blocks: {set:?}");
    }
    // The old primary restarts: it learns it is the mirror and writes nothing as primary.
    let before = tree(&c.seg(2).roots());
    c.seg_mut(2).start();
    c.wait_for("the old primary to serve as mirror with its activity log handed over", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.acting == Acting::Mirror && s.generation == 2 && !s.changes_pending)
    });
    let e = c.seg(2).client().write_block(0, "rel", 0, &block(4, 0)).unwrap_err();
    assert_eq!(e.class(), Some(ErrorClass::NotPrimary), "{e}");
    assert_eq!(tree(&c.seg(2).roots()), before, "the old primary changed its files after it returned");
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::ChangeTracking, 2));
    assert_eq!(role_of(&p, 2), (Role::Mirror, true));
    assert!(c.catalog().history.iter().any(|h| h.reason.contains("promoted")), "{:#?}", c.catalog().history);
}

/// A primary killed and started again at once, maybe before any probe
/// fails: its activity log names blocks its mirror may lack, so it is lost
/// all the same (it used to be told to stream on as synchronized, and
/// those blocks were never resynced).
#[test]
fn a_primary_restarted_at_once_is_still_counted_as_lost() {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.create(0, "rel").unwrap();
    for i in 0..40 {
        cl.extend(0, "rel", i, &block(8, i)).unwrap();
    }
    c.seg_mut(2).kill();
    c.seg_mut(2).start();
    c.wait_for("the mirror promoted, the old primary its mirror", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.acting == Acting::Mirror && s.generation == 2 && !s.changes_pending)
    });
    let p = c.pair();
    assert_eq!((p.mode, p.generation, p.acting_primary().dbid), (PairMode::ChangeTracking, 2, 3));
    let (code, out, err) = c.recover(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(c.pair().mode, PairMode::Synchronized);
    c.seg(3).client().sync(0, "rel").unwrap();
    assert_trees_equal(&c.seg(3).roots(), &c.seg(2).roots());
}

/// The mirror lost while the arbiter is away: the primary cannot ask, so
/// its calls fail (rule 3). Once the arbiter is back it is told what it
/// could not hear, goes on alone, and one recover makes the pair identical
/// (it used to stay failed, every recover refused).
#[test]
fn a_primary_that_loses_its_mirror_while_the_arbiter_is_away_recovers_once_it_is_back() {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.create(0, "rel").unwrap();
    for i in 0..8 {
        cl.extend(0, "rel", i, &block(9, i)).unwrap();
    }
    if let Some(mut a) = c.arbiter.take() {
        let _ = a.kill();
        let _ = a.wait();
    }
    c.seg_mut(3).kill();
    let mut refused = None;
    for i in 0..10_000u64 {
        if let Err(e) = cl.write_block(0, "rel", i % 8, &block(10 + i, i % 8)) {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("writes went on without the arbiter's word");
    assert_eq!(e.class(), Some(ErrorClass::Unavailable), "{e}");
    common::pair::wait_for("the primary to fail its calls", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'f')
    });
    let catalog = c._dir.path().join("catalog.json");
    let (arbiter, _) = spawn_ready(&arbiter_args(&catalog, &c.key_file, &c.arbiter_addr), READY_ARBITER);
    c.arbiter = Some(arbiter);
    c.seg_mut(3).start();
    c.wait_for("the primary to go on alone", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.acting == Acting::Primary && s.mode == 'c')
    });
    let p = c.pair();
    assert_eq!((p.mode, p.generation, p.acting_primary().dbid), (PairMode::ChangeTracking, 1, 2));
    c.seg(2).client().write_block(0, "rel", 0, &block(11, 0)).unwrap();
    c.wait_mirror_serving(3, 1);
    let (code, out, err) = c.recover(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(c.pair().mode, PairMode::Synchronized);
    c.seg(2).client().sync(0, "rel").unwrap();
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
}

#[test]
fn an_isolated_primary_fails_its_calls_and_the_mirror_is_promoted() {
    let c = Cluster::start(Links::PrimaryProxied);
    let mut cl = c.seg(2).client();
    cl.create(0, "rel").unwrap();
    cl.extend(0, "rel", 0, &block(5, 0)).unwrap();
    // Cut the primary off from the arbiter and from its mirror.
    for p in &c.proxies {
        p.cut();
    }
    let started = Instant::now();
    let mut failed = None;
    for i in 1..1000 {
        match cl.extend(0, "rel", i, &block(5, i)) {
            Ok(()) => {}
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e: ClientError = failed.expect("the isolated primary kept accepting writes");
    assert_eq!(e.class(), Some(ErrorClass::Unavailable), "{e}");
    assert!(
        started.elapsed() < Duration::from_millis(ACK_TIMEOUT_MS + DECISION_TIMEOUT_MS + 3000),
        "the isolated primary took {:?} to fail",
        started.elapsed()
    );
    c.wait_for("the mirror to be promoted", Duration::from_secs(20), || {
        c.seg(3).status(&c.key).is_some_and(|s| s.acting == Acting::Primary)
    });
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::ChangeTracking, 2));
    assert_eq!(role_of(&p, 3), (Role::Primary, true));
    // The old primary still fails every call: never two writers.
    assert!(cl.write_block(0, "rel", 0, &block(6, 0)).is_err());
    c.seg(3).client().write_block(0, "rel", 0, &block(7, 0)).unwrap();
    // Healed, the old primary is told it is the mirror.
    for p in &c.proxies {
        p.heal();
    }
    c.wait_for("the old primary to become the mirror", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.acting == Acting::Mirror && s.generation == 2)
    });
    assert_eq!(role_of(&c.pair(), 2), (Role::Mirror, true));
}

#[test]
fn a_cut_between_primary_and_mirror_alone_leads_to_change_tracking() {
    let c = Cluster::start(Links::PrimaryProxied);
    let mut cl = c.seg(2).client();
    cl.create(0, "rel").unwrap();
    // Only the replication link: both still reach the arbiter.
    c.proxies.iter().find(|p| p.addr == c.catalog().pairs[0].addresses[1].data).unwrap().cut();
    for i in 0..20 {
        cl.extend(0, "rel", i, &block(8, i)).unwrap();
    }
    c.wait_for("change tracking", Duration::from_secs(20), || c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'c'));
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::ChangeTracking, 1));
    assert_eq!(role_of(&p, 2).0, Role::Primary);
    assert_eq!(c.seg(3).status(&c.key).unwrap().acting, Acting::Mirror, "the mirror is not promoted");
}

#[test]
fn losing_the_primary_in_change_tracking_is_a_double_fault_and_nothing_is_promoted() {
    let mut c = Cluster::start(Links::Direct);
    c.seg_mut(3).kill();
    let mut cl = c.seg(2).client();
    cl.create(0, "rel").unwrap();
    c.wait_for("change tracking", Duration::from_secs(20), || c.pair().mode == PairMode::ChangeTracking);
    c.seg_mut(2).kill();
    c.wait_for("the segment to be down", Duration::from_secs(20), || c.pair().down);
    c.seg_mut(3).start();
    // The old mirror answers probes again, but a mirror that missed changes is never promoted.
    c.wait_for("the old mirror to answer", Duration::from_secs(20), || c.seg(3).status(&c.key).is_some());
    let roots = c.seg(3).roots();
    let files = tree(&roots);
    // Watch it through many probe rounds (100 ms apart): never promoted.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_ne!(c.seg(3).status(&c.key).unwrap().acting, Acting::Primary, "a stale mirror was promoted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = c.pair();
    assert!(p.down);
    assert_eq!(p.generation, 1, "no promotion");
    assert_eq!(role_of(&p, 3).0, Role::Mirror);
    assert_eq!(tree(&roots), files, "nothing written after the double fault");
    assert!(c.catalog().history.iter().any(|h| h.reason.contains("double fault")), "{:#?}", c.catalog().history);
}

/// Run the command to completion; its exit code and stderr.
fn run_fails(args: &[&str]) -> (i32, String) {
    let out = Command::new(exe()).args(args).env("FILEREP_LOG", "off").output().expect("run");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_configurations_and_catalogs_are_refused_with_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("segment.json");
    let key = dir.path().join("k");
    std::fs::write(&key, KEY).unwrap();
    let base = serde_json::json!({
        "dbid": 2, "content": 0, "cluster_id": 1, "block_size": 8192,
        "filespaces": [format!("pg_system={}", dir.path().join("fs").display())],
        "key_file": key, "control_listen": "127.0.0.1:0", "data_listen": "127.0.0.1:0",
        "socket": dir.path().join("s.sock"), "state_dir": dir.path().join("state"), "arbiter": "127.0.0.1:1"
    });
    // A mountpoint through a symbolic link into the filespace root.
    std::fs::create_dir_all(dir.path().join("fs")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("fs"), dir.path().join("into-fs")).unwrap();
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (serde_json::json!({"block_size": 1000}), "block size"),
        (
            serde_json::json!({"mounts": [{"filespace": "pg_system", "mountpoint": dir.path().join("into-fs").join("m")}]}),
            "once symbolic links are resolved) overlaps filespace pg_system",
        ),
        (serde_json::json!({"filespaces": ["no-equals-sign"]}), "NAME=DIRECTORY"),
        (serde_json::json!({"sync_level": "sometimes"}), "sometimes"),
        (serde_json::json!({"heartbeat_ms": 5000, "ack_timeout_ms": 1000}), "heartbeat_ms"),
        (serde_json::json!({"activity_limit": 2}), "activity_limit = 2: use 4 to 65536"),
        (serde_json::json!({"surprise": 1}), "surprise"),
        (
            serde_json::json!({"mounts": [{"filespace": "nosuch", "mountpoint": "/mnt/x"}]}),
            "mounts[0]: filespace \"nosuch\"",
        ),
        (
            serde_json::json!({"mounts": [{"filespace": "pg_system", "mountpoint": "mnt"}]}),
            "mounts[0]: mountpoint mnt: give an absolute path",
        ),
        (
            serde_json::json!({"mounts": [{"filespace": "pg_system", "mountpoint": dir.path().join("new").join("..").join("fs").join("m")}]}),
            "give an absolute path without . or ..",
        ),
        (
            serde_json::json!({"mounts": [{"filespace": "pg_system", "mountpoint": dir.path().join("fs").join("m")}]}),
            "overlaps filespace pg_system",
        ),
        (
            serde_json::json!({"mounts": [{"filespace": "pg_system", "mountpoint": "/mnt/x", "threads": 0}]}),
            "threads = 0: use 1 to 64",
        ),
        (
            serde_json::json!({"mounts": [{"filespace": "pg_system", "mountpoint": "/mnt/x"}, {"filespace": "pg_system", "mountpoint": "/mnt/y"}]}),
            "mounts[1]",
        ),
        (
            serde_json::json!({"mounts": [{"filespace": "pg_system", "mountpoint": "/mnt/x", "read_only": true}]}),
            "read_only",
        ),
    ];
    for (patch, expect) in cases {
        let mut v = base.clone();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
        let (code, err) = run_fails(&["segment", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("segment.json") && err.contains(expect), "{expect}: {err}");
    }
    std::fs::write(&cfg, b"{ truncated").unwrap();
    let (code, err) = run_fails(&["segment", "--config", cfg.to_str().unwrap()]);
    assert!(code == 2 && err.contains("segment.json"), "{err}");
    // A catalog naming one dbid twice.
    let cat = dir.path().join("catalog.json");
    let a = |dbid| SegmentAddress {
        dbid,
        host: "h".into(),
        control: "127.0.0.1:1".into(),
        data: "127.0.0.1:2".into(),
        filespaces: Vec::new(),
    };
    let mut c = Catalog::new(1, 8192, vec![(0, a(2), a(3))]);
    c.pairs.push(c.pairs[0].clone());
    c.pairs[1].pair.content = 1;
    // Sealed as a writer would (its checksums hold): the rules are what refuse it.
    let json = serde_json::to_vec(&c).unwrap();
    let sealed = filerep::durable::sealed::seal(
        filerep::durable::sealed::Kind::Catalog,
        filerep::durable::catalog::FORMAT_VERSION,
        &json,
    );
    std::fs::write(&cat, sealed).unwrap();
    let (code, err) = run_fails(&["arbiter", "--catalog", cat.to_str().unwrap(), "--key-file", key.to_str().unwrap()]);
    assert!(code == 2 && err.contains("catalog.json") && err.contains("appears twice"), "{err}");
    assert!(!dir.path().join("state").exists(), "nothing was created for a refused configuration");
    assert!(!dir.path().join("fs").join("m").exists(), "no mountpoint was made inside the filespace");
}

impl Cluster {
    /// Run `filerep recover` to the end; its exit code, stdout and stderr.
    fn recover(&self, extra: &[&str]) -> (i32, String, String) {
        let key = self.key_file.display().to_string();
        let mut args =
            vec!["recover", "--arbiter", &self.arbiter_addr, "--json", "--timeout", "60", "--key-file", &key];
        args.extend(extra);
        let out = Command::new(exe()).args(&args).env("FILEREP_LOG", "warn").output().expect("recover");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    fn wait_mirror_serving(&self, dbid: u32, generation: u64) {
        self.wait_for("the mirror to serve", Duration::from_secs(20), || {
            self.seg(dbid).status(&self.key).is_some_and(|s| s.acting == Acting::Mirror && s.generation == generation)
        });
    }
}

fn summary(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}
