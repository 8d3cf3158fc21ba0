//! Real processes: an arbiter and two `filerep segment` processes on
//! loopback, killed with SIGKILL and cut off by fault-injecting proxies.
//! Each test asserts the catalog's mode, roles and generation afterwards
//! (brief section 3), and what clients saw.

mod common;

use common::pair::{arbiter_args, exe, free_addr, spawn_ready, READY_ARBITER, READY_SEGMENT};
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
        let args = vec!["segment".into(), "--config".into(), self.cfg_path.display().to_string()];
        let (child, addr) = spawn_ready(&args, READY_SEGMENT);
        assert_eq!(addr, self.cfg.control_listen);
        self.child = Some(child);
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
        Cluster::start_with(links, false)
    }

    /// The same, with `/metrics` served by each segment when `metrics` is set.
    fn start_with(links: Links, metrics: bool) -> Cluster {
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
            s.start();
        }
        let args = arbiter_args(&catalog_path, &key_file, &arbiter_listen);
        let (arbiter, addr) = spawn_ready(&args, READY_ARBITER);
        let c = Cluster { _dir: dir, key, key_file, arbiter_addr: addr, arbiter: Some(arbiter), segs, proxies };
        c.wait_for("the pair to stream", Duration::from_secs(20), || {
            c.seg(2).status(&c.key).is_some_and(|s| s.acting == Acting::Primary && s.mode == 's')
        });
        c
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
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (serde_json::json!({"block_size": 1000}), "block size"),
        (serde_json::json!({"filespaces": ["no-equals-sign"]}), "NAME=DIRECTORY"),
        (serde_json::json!({"sync_level": "sometimes"}), "sometimes"),
        (serde_json::json!({"heartbeat_ms": 5000, "ack_timeout_ms": 1000}), "heartbeat_ms"),
        (serde_json::json!({"activity_limit": 2}), "activity_limit = 2: use 4 to 65536"),
        (serde_json::json!({"surprise": 1}), "surprise"),
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

#[test]
fn recover_after_a_mirror_loss_returns_the_pair_to_synchronized_and_identical() {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.mkdir(0, "base").unwrap();
    cl.create(0, "base/rel").unwrap();
    for i in 0..32 {
        cl.extend(0, "base/rel", i, &block(1, i)).unwrap();
    }
    cl.create(1, "gone").unwrap();
    c.seg_mut(3).kill();
    c.wait_for("change tracking", Duration::from_secs(20), || c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'c'));
    // Every kind of change while the mirror is down.
    for i in 0..8 {
        cl.write_block(0, "base/rel", i * 3, &block(2, i)).unwrap();
    }
    cl.truncate(0, "base/rel", 20).unwrap();
    cl.unlink(1, "gone").unwrap();
    cl.mkdir(1, "new").unwrap();
    cl.create(1, "new/file").unwrap();
    cl.write_at(1, "new/file", 0, b"written while the mirror was down").unwrap();
    cl.rename(0, "base", "moved").unwrap();
    c.seg_mut(3).start();
    c.wait_mirror_serving(3, 1);
    let (code, out, err) = c.recover(&[]);
    assert_eq!(code, 0, "{out}{err}");
    let s = summary(&out);
    assert_eq!(s["result"], "synchronized", "{s}");
    assert!(s["blocks"].as_u64().unwrap() > 0, "{s}");
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::Synchronized, 1));
    assert!(c.catalog().history.iter().any(|h| h.reason.contains("resync completed")));
    // Streaming again: a new write reaches the mirror; then both sides match.
    cl.write_block(0, "moved/rel", 0, &block(3, 0)).unwrap();
    cl.sync(0, "moved/rel").unwrap();
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
    // Nothing left to recover: refused, with the reason.
    let (code, _, err) = c.recover(&["--content", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("already synchronized"), "{err}");
}

#[test]
fn after_a_failover_one_recover_makes_the_returning_old_primary_identical() {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.create(0, "rel").unwrap();
    for i in 0..40 {
        cl.extend(0, "rel", i, &block(4, i)).unwrap();
    }
    c.seg_mut(2).kill();
    c.wait_for("the promotion", Duration::from_secs(20), || {
        c.seg(3).status(&c.key).is_some_and(|s| s.acting == Acting::Primary && s.mode == 'c')
    });
    let mut nl = c.seg(3).client();
    for i in 0..10 {
        nl.write_block(0, "rel", i * 2, &block(5, i)).unwrap();
    }
    nl.create(1, "made-after-failover").unwrap();
    c.seg_mut(2).start();
    c.wait_for("the old primary to serve as mirror, its activity log handed over", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.acting == Acting::Mirror && s.generation == 2 && !s.changes_pending)
    });
    let (code, out, err) = c.recover(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(summary(&out)["result"], "synchronized");
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::Synchronized, 2));
    assert_eq!(role_of(&p, 3), (Role::Primary, true));
    assert_eq!(role_of(&p, 2), (Role::Mirror, true));
    nl.sync(0, "rel").unwrap();
    assert_trees_equal(&c.seg(3).roots(), &c.seg(2).roots());
    // Rebalance: back to the preferred roles, in order, at a new generation,
    // with a client writing to the old primary throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut w, stop) = (c.seg(3).client(), stop.clone());
        std::thread::spawn(move || {
            let (mut acked, mut refused) = (BTreeMap::new(), Vec::new());
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let b = 5 + i % 35;
                let t = Instant::now();
                match w.write_block(0, "rel", b, &block(100 + i, b)) {
                    Ok(()) => {
                        acked.insert(b, i);
                    }
                    Err(e) => refused.push((e.class(), e.to_string())),
                }
                assert!(t.elapsed() < Duration::from_secs(10), "a call hung for {:?}", t.elapsed());
                i += 1;
            }
            (acked, refused)
        })
    };
    let (code, out, err) = c.recover(&["-r"]);
    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = writer.join().unwrap();
    assert!(!acked.is_empty(), "the writer got some calls through before the switch");
    for (class, msg) in &refused {
        assert_eq!(*class, Some(ErrorClass::NotPrimary), "a call failed unclearly during the switch: {msg}");
    }
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(summary(&out)["result"], "rebalanced", "{out}");
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::Synchronized, 3));
    assert_eq!(role_of(&p, 2), (Role::Primary, true));
    assert_eq!(role_of(&p, 3), (Role::Mirror, true));
    // The old mirror's clients are told to go elsewhere; the preferred primary serves.
    let e = c.seg(3).client().write_block(0, "rel", 0, &block(6, 0)).unwrap_err();
    assert_eq!(e.class(), Some(ErrorClass::NotPrimary), "{e}");
    let mut back = c.seg(2).client();
    for i in 0..5 {
        back.write_block(0, "rel", i, &block(7, i)).unwrap();
    }
    back.sync(0, "rel").unwrap();
    // Every write acknowledged before the switch is on the preferred primary.
    for (b, i) in &acked {
        assert_eq!(back.read_block(0, "rel", *b).unwrap(), block(100 + i, *b), "acknowledged block {b} lost");
    }
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
}

/// Start `filerep recover` in the background, slowed down, and wait until the pair is resynchronizing.
fn slow_recover(c: &Cluster) -> std::process::Child {
    let key = c.key_file.display().to_string();
    let child = Command::new(exe())
        .args(["recover", "--arbiter", &c.arbiter_addr, "--key-file", &key, "--json", "--max-rate", "1"])
        .env("FILEREP_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recover");
    c.wait_for("the resync to run", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'r') && c.pair().mode == PairMode::Resynchronizing
    });
    child
}

/// A pair in change tracking with 16 MiB to resync (16 s at 1 MB/s).
fn diverged_cluster() -> Cluster {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.create(0, "big").unwrap();
    c.seg_mut(3).kill();
    c.wait_for("change tracking", Duration::from_secs(20), || c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'c'));
    for i in 0..2048 {
        cl.extend(0, "big", i, &block(11, i)).unwrap();
    }
    c.seg_mut(3).start();
    c.wait_mirror_serving(3, 1);
    c
}

#[test]
fn losing_the_mirror_during_a_resync_returns_the_pair_to_change_tracking() {
    let mut c = diverged_cluster();
    let tool = slow_recover(&c);
    c.seg_mut(3).kill();
    c.wait_for("change tracking again", Duration::from_secs(20), || c.pair().mode == PairMode::ChangeTracking);
    let out = tool.wait_with_output().unwrap();
    assert!(!out.status.success(), "the tool reports that the resync did not finish");
    let p = c.pair();
    assert_eq!(p.generation, 1);
    assert_eq!(role_of(&p, 2), (Role::Primary, true));
    // The primary goes on alone.
    c.wait_for("the primary to track changes", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'c')
    });
    c.seg(2).client().write_block(0, "big", 0, &block(12, 0)).unwrap();
}

#[test]
fn losing_the_primary_during_a_resync_takes_the_segment_down_without_a_promotion() {
    let mut c = diverged_cluster();
    let tool = slow_recover(&c);
    c.seg_mut(2).kill();
    c.wait_for("the segment to be down", Duration::from_secs(20), || c.pair().down);
    let out = tool.wait_with_output().unwrap();
    assert!(!out.status.success());
    let p = c.pair();
    assert_eq!(p.generation, 1, "a mirror that is not yet consistent is never promoted");
    assert_eq!(role_of(&p, 3).0, Role::Mirror);
    assert_ne!(c.seg(3).status(&c.key).unwrap().acting, Acting::Primary);
    assert!(c.catalog().history.iter().any(|h| h.reason.contains("during resync")), "{:#?}", c.catalog().history);
}

// ---- a crash at each step of a resync -----------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Primary,
    Mirror,
    /// `filerep recover` itself: the resync runs in the primary and goes on.
    Tool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Moment {
    /// Shipping the namespace (new directories and files, copied whole).
    Namespace,
    /// Copying changed blocks, before the first durable progress record.
    Copying,
    /// Copying, after several progress records.
    AfterCheckpoints,
}

/// Blocks of `hot` the writers hammer during the resync.
const HOT_BLOCKS: u64 = 64;
/// Files whose blocks change while the mirror is down, and their blocks.
const RELS: u64 = 16;
const REL_BLOCKS: u64 = 64;
/// New directories (each with one file of `DIR_FILE_BLOCKS`), shipped first.
const DIRS: u64 = 8;
const DIR_FILE_BLOCKS: u64 = 8;

/// Writer `w` of two hammering its half of `hot` until stopped or refused:
/// per block, the last tag acknowledged and the tag of a call that failed
/// (which may or may not have landed).
fn hammer(seg: &Seg, w: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<BTreeMap<u64, (u64, Option<u64>)>> {
    let mut cl = seg.client();
    std::thread::spawn(move || {
        let mut seen = BTreeMap::new();
        let mut tag = 1000;
        while !stop.load(Ordering::SeqCst) {
            let b = (tag * 7) % (HOT_BLOCKS / 2) * 2 + w;
            tag += 1;
            if cl.write_block(0, "hot", b, &block(tag, b)).is_err() {
                // A block not yet written by this writer holds what the setup wrote.
                seen.entry(b).or_insert((hot_setup_tag(b), None)).1 = Some(tag);
                break;
            }
            seen.insert(b, (tag, None));
        }
        seen
    })
}

/// The tag of what `crash_during_resync` leaves in block `b` of `hot`
/// before the writers start (the last blocks truncated and written again).
fn hot_setup_tag(b: u64) -> u64 {
    if b >= HOT_BLOCKS - 4 {
        2
    } else {
        1
    }
}

fn crash_during_resync(victim: Victim, moment: Moment) {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.create(0, "hot").unwrap();
    for i in 0..HOT_BLOCKS {
        cl.extend(0, "hot", i, &block(1, i)).unwrap();
    }
    for r in 0..RELS {
        cl.create(0, &format!("r{r:02}")).unwrap();
        cl.extend(0, &format!("r{r:02}"), 0, &block(5, r)).unwrap();
    }
    cl.create(1, "gone").unwrap();
    c.seg_mut(3).kill();
    c.wait_for("change tracking", Duration::from_secs(20), || c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'c'));
    // Every kind of change. The namespace ships first ("a.." sorts before
    // the rest), then the files' blocks: progress is recorded between files.
    for d in 0..DIRS {
        let dir = format!("a{d:02}");
        cl.mkdir(0, &dir).unwrap();
        cl.create(0, &format!("{dir}/f")).unwrap();
        for i in 0..DIR_FILE_BLOCKS {
            cl.extend(0, &format!("{dir}/f"), i, &block(20 + d, i)).unwrap();
        }
    }
    cl.rename(0, "a00", "z00").unwrap();
    cl.unlink(1, "gone").unwrap();
    for r in 0..RELS {
        for i in 0..REL_BLOCKS {
            let rel = format!("r{r:02}");
            if i == 0 {
                cl.write_block(0, &rel, 0, &block(6, r)).unwrap();
            } else {
                cl.extend(0, &rel, i, &block(7 + r, i)).unwrap();
            }
        }
    }
    cl.truncate(0, "hot", HOT_BLOCKS - 4).unwrap();
    for i in HOT_BLOCKS - 4..HOT_BLOCKS {
        cl.extend(0, "hot", i, &block(2, i)).unwrap();
    }
    c.seg_mut(3).start();
    c.wait_mirror_serving(3, 1);

    // A slow resync (1 MB/s, progress recorded every 1 MiB) with writers hammering `hot`.
    let key = c.key_file.display().to_string();
    let mut tool = Command::new(exe())
        .args(["recover", "--arbiter", &c.arbiter_addr, "--key-file", &key, "--json"])
        .args(["--max-rate", "1", "--checkpoint-mib", "1"])
        .env("FILEREP_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recover");
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2).map(|w| hammer(c.seg(2), w, stop.clone())).collect();
    let progress = || c.seg(2).status(&c.key).and_then(|s| s.resync);
    let per_mib = (1 << 20) / BS as u64;
    c.wait_for(&format!("{moment:?} in the resync"), Duration::from_secs(60), || {
        progress().is_some_and(|p| match moment {
            Moment::Namespace => p.paths_done >= 2,
            Moment::Copying => p.blocks_done >= DIRS * DIR_FILE_BLOCKS + 16,
            Moment::AfterCheckpoints => p.blocks_done >= 4 * per_mib,
        })
    });
    let at = progress().unwrap_or_default();
    match moment {
        Moment::Namespace => assert!(at.blocks_done < DIRS * DIR_FILE_BLOCKS, "still early: {at:?}"),
        Moment::Copying => assert!(at.blocks_done < per_mib, "before the first progress record: {at:?}"),
        Moment::AfterCheckpoints => {}
    }
    match victim {
        Victim::Primary => {
            c.seg_mut(2).kill();
            c.wait_for("the segment to be down", Duration::from_secs(20), || c.pair().down);
        }
        Victim::Mirror => {
            c.seg_mut(3).kill();
            c.wait_for("change tracking", Duration::from_secs(20), || c.pair().mode == PairMode::ChangeTracking);
        }
        Victim::Tool => {
            let _ = tool.kill();
            assert_eq!(c.pair().mode, PairMode::Resynchronizing, "the resync goes on without its tool");
        }
    }
    let _ = tool.kill();
    let _ = tool.wait();
    stop.store(true, Ordering::SeqCst);
    let hot: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    match victim {
        Victim::Primary => c.seg_mut(2).start(),
        Victim::Mirror => c.seg_mut(3).start(),
        Victim::Tool => {}
    }
    c.wait_for("both segments up", Duration::from_secs(20), || c.pair().segments.iter().all(|s| s.up));

    // One `filerep recover` (the restore of a down segment included) finishes the job.
    let (code, out, err) = c.recover(&["--checkpoint-mib", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    let s = summary(&out);
    assert_eq!(s["result"], "synchronized", "{s}");
    // What the resync shipped and how many extra passes it made are reported.
    assert!(s["bytes"].is_u64() && s["passes"].is_u64(), "{s}");
    let p = c.pair();
    let generation = if victim == Victim::Primary { 2 } else { 1 };
    assert_eq!((p.mode, p.generation, p.acting_primary().dbid), (PairMode::Synchronized, generation, 2), "{p:?}");
    if moment == Moment::AfterCheckpoints && victim != Victim::Tool {
        // Progress was kept: the second resync did not ship everything again.
        let all = (RELS * REL_BLOCKS + DIRS * DIR_FILE_BLOCKS + HOT_BLOCKS) * BS as u64;
        assert!(s["bytes"].as_u64().unwrap() < all, "{s}");
    }
    // Every acknowledged write is on the primary (a failed one may have landed or not).
    let mut cl = c.seg(2).client();
    for seen in &hot {
        for (b, (acked, failed)) in seen {
            let now = cl.read_block(0, "hot", *b).unwrap();
            let ok = now == block(*acked, *b) || failed.is_some_and(|t| now == block(t, *b));
            assert!(ok, "acknowledged write {acked} of hot block {b} lost");
        }
    }
    cl.write_block(0, "r00", 0, &block(3, 0)).unwrap();
    cl.sync(0, "r00").unwrap();
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
}

#[test]
fn primary_killed_while_the_resync_ships_the_namespace() {
    crash_during_resync(Victim::Primary, Moment::Namespace);
}

#[test]
fn primary_killed_while_the_resync_copies_blocks() {
    crash_during_resync(Victim::Primary, Moment::Copying);
}

#[test]
fn primary_killed_after_resync_progress_records() {
    crash_during_resync(Victim::Primary, Moment::AfterCheckpoints);
}

#[test]
fn mirror_killed_while_the_resync_ships_the_namespace() {
    crash_during_resync(Victim::Mirror, Moment::Namespace);
}

#[test]
fn mirror_killed_while_the_resync_copies_blocks() {
    crash_during_resync(Victim::Mirror, Moment::Copying);
}

#[test]
fn mirror_killed_after_resync_progress_records() {
    crash_during_resync(Victim::Mirror, Moment::AfterCheckpoints);
}

#[test]
fn recover_tool_killed_while_the_resync_ships_the_namespace() {
    crash_during_resync(Victim::Tool, Moment::Namespace);
}

#[test]
fn recover_tool_killed_while_the_resync_copies_blocks() {
    crash_during_resync(Victim::Tool, Moment::Copying);
}

#[test]
fn recover_tool_killed_after_resync_progress_records() {
    crash_during_resync(Victim::Tool, Moment::AfterCheckpoints);
}

// ---- filerep verify and /metrics -------------------------------------------

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
    let c = Cluster::start_with(Links::Direct, true);
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
