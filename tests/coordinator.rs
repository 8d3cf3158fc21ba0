//! The coordinator on etcd, with a real three-member etcd cluster on
//! loopback and two arbiters: the acting arbiter killed (the other takes
//! over, then promotes a mirror), cut off from etcd by a proxy while it
//! still reaches the segments (it stops ordering, the other acts, no
//! segment obeys both), etcd members lost one then two then restored, and
//! a stale order of an old epoch refused. Each checks the catalog after,
//! and that every acknowledged write is on the acting primary.

mod common;
use common::etcd::{Etcd, Proxy};
use common::pair::{free_addr, run_filerep as filerep, spawn_ready, wait_for};

use filerep::cluster::client::Client;
use filerep::cluster::segment::{Acting, SegmentRequest, SegmentResponse, SegmentStatus};
use filerep::core::pair::{PairMode, Role};
use filerep::durable::catalog::{Catalog, Leadership};
use filerep::protocol::handshake::ClusterKey;
use filerep_tools::cluster::ClusterDir;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

const BS: usize = 8192;

/// One test of this file at a time: each runs a three-member etcd cluster,
/// two arbiters and four segments, with ports from a fixed base per test;
/// side by side on two cores, elections flap under the load and one
/// test's picked-free port can be another's segment port.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Cluster {
    tmp: tempfile::TempDir,
    dir: ClusterDir,
    key: ClusterKey,
    arbiters: Vec<String>,
    /// Arbiters this test started itself (not through `filerep start`).
    own: Vec<Child>,
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = filerep(args);
    assert_eq!(code, 0, "filerep {} exited {code}: {out}{err}", args.join(" "));
    out
}

impl Cluster {
    /// Two contents on two loopback hosts, mirrored (group), two arbiters,
    /// the catalog on `etcd`; started.
    fn start(etcd: &Etcd, index: u16) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let cdir = tmp.path().join("cluster");
        // Ports from the process id, apart per test of this file.
        let base = 24000 + (std::process::id() % 100) as u16 * 40 + index * 8;
        let arbiters = vec![free_addr(), free_addr()];
        ok(&[
            "init",
            "--cluster-dir",
            &cdir.display().to_string(),
            "--hosts",
            "127.0.0.2,127.0.0.3",
            "--segments-per-host",
            "1",
            "--base-port",
            &base.to_string(),
            "-p",
            "2000",
            "--data-dir",
            &format!("pg_system={}", tmp.path().join("p").display()),
            "--mirrors",
            "group",
            "--mirror-data-dir",
            &format!("pg_system={}", tmp.path().join("m").display()),
            "--block-size",
            &BS.to_string(),
            "--allow-one-machine",
            "--arbiter",
            &arbiters.join(","),
            "--coordinator",
            &format!("etcd://{}", etcd.endpoints()),
        ]);
        let dir = ClusterDir::new(&cdir);
        let key = dir.key().unwrap();
        let c = Cluster { tmp, dir, key, arbiters, own: Vec::new() };
        ok(&["start", "--cluster-dir", &c.cd()]);
        c
    }

    fn cd(&self) -> String {
        self.dir.root.display().to_string()
    }

    fn coordinator(&self) -> String {
        self.dir.load().unwrap().coordinator.expect("a coordinator")
    }

    fn leadership(&self, arbiter: &str) -> Option<Leadership> {
        filerep_tools::cluster::leadership(arbiter, &self.key, Duration::from_secs(2)).ok().map(|l| l.leadership)
    }

    /// The acting arbiter and its epoch, if one acts.
    fn acting(&self) -> Option<(String, u64)> {
        self.arbiters.iter().find_map(|a| match self.leadership(a) {
            Some(Leadership::Acting { epoch }) => Some((a.clone(), epoch)),
            _ => None,
        })
    }

    fn wait_acting(&self, limit: Duration) -> (String, u64) {
        let start = Instant::now();
        loop {
            if let Some(a) = self.acting() {
                return a;
            }
            assert!(start.elapsed() < limit, "no arbiter acts after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The catalog from the acting arbiter; while none acts (a leadership
    /// changing hands takes up to the lease's TTL and a campaign pause),
    /// asked again, for 10 s at most.
    fn catalog(&self) -> Catalog {
        let start = Instant::now();
        loop {
            match filerep::cluster::probe::fetch_catalog(&self.arbiters.join(","), &self.key, Duration::from_secs(5)) {
                Ok(c) => return c,
                Err(e) if e.to_string().contains("no arbiter acts") && start.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("catalog: {e:?}"),
            }
        }
    }

    fn status(&self, dbid: u32) -> Option<SegmentStatus> {
        let cfg = self.dir.segment(dbid).unwrap();
        match filerep::cluster::control::call::<_, SegmentResponse>(
            &cfg.control_listen,
            &self.key,
            &SegmentRequest::Probe,
            Duration::from_secs(2),
        ) {
            Ok(SegmentResponse::Status(s)) => Some(s),
            _ => None,
        }
    }

    fn pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.dir.pid(name)).unwrap().trim().parse().unwrap()
    }

    /// kill -9 a process `filerep start` started (`arbiter`, `arbiter2`, `dbidN`).
    fn kill(&self, name: &str) {
        let pid = nix::unistd::Pid::from_raw(self.pid(name));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        // Reaped by init (started detached): gone once its /proc entry is.
        wait_for(&format!("{name} gone"), Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
        });
    }

    /// The process name of an arbiter address.
    fn arbiter_name(&self, addr: &str) -> &'static str {
        if self.arbiters[0] == addr {
            "arbiter"
        } else {
            "arbiter2"
        }
    }

    /// Start an arbiter of this cluster here on `coordinator` at `listen`.
    fn own_arbiter(&mut self, coordinator: &str, listen: &str) {
        let args: Vec<String> = [
            "arbiter",
            "--coordinator",
            coordinator,
            "--key-file",
            &self.dir.key_file().display().to_string(),
            "--listen",
            listen,
            "--interval-ms",
            "200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A killed arbiter's main thread shows as a zombie before its other
        // threads have closed its sockets: its address may still be taken
        // for a moment (a clean-clone CI run failed on it).
        wait_for(&format!("{listen} free"), Duration::from_secs(10), || std::net::TcpListener::bind(listen).is_ok());
        let (child, _) = spawn_ready(&args, "filerep arbiter ready on ");
        self.own.push(child);
    }

    fn socket(&self, dbid: u32) -> PathBuf {
        self.dir.segment_dir(dbid).join("segment.sock")
    }

    /// The acting primary of `content` in the catalog.
    fn primary_of(&self, content: u32) -> u32 {
        self.catalog().pair(content).unwrap().pair.acting_primary().dbid
    }

    /// Write and sync `n` blocks of `file` through the acting primary of
    /// `content`: the acknowledged writes.
    fn write(&self, content: u32, file: &str, n: u64) -> Result<(), String> {
        self.write_on(self.primary_of(content), content, file, n)
    }

    /// The same through segment `dbid` (when no arbiter answers to say
    /// which acts).
    fn write_on(&self, dbid: u32, content: u32, file: &str, n: u64) -> Result<(), String> {
        let mut c = Client::connect(&self.socket(dbid)).map_err(|e| e.to_string())?;
        c.create(0, file).map_err(|e| e.to_string())?;
        for b in 0..n {
            c.write_block(0, file, b, &block(content, b)).map_err(|e| e.to_string())?;
        }
        c.sync(0, file).map_err(|e| e.to_string())
    }

    /// Every acknowledged block of `file` is on the acting primary.
    fn assert_written(&self, content: u32, file: &str, n: u64) {
        let dbid = self.primary_of(content);
        let mut c = Client::connect(&self.socket(dbid)).unwrap();
        for b in 0..n {
            assert_eq!(c.read_block(0, file, b).unwrap(), block(content, b), "{file} block {b} on dbid {dbid}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.own {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = filerep(&["stop", "--cluster-dir", &self.cd()]);
        // Whatever is left (a stop that could not read the catalog).
        for e in std::fs::read_dir(self.dir.root.join("run")).into_iter().flatten().flatten() {
            if let Some(pid) = std::fs::read_to_string(e.path()).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = &self.tmp;
    }
}

fn block(content: u32, b: u64) -> Vec<u8> {
    (0..BS).map(|j| ((content as u64 * 131 + b * 7 + j as u64) % 251) as u8).collect()
}

/// Wait until the mirror of `content` was promoted: the catalog says so,
/// and it serves as primary at the new generation.
fn wait_promoted(c: &Cluster, content: u32, old_primary: u32) -> u32 {
    let start = Instant::now();
    loop {
        if let Ok(cat) = filerep::cluster::probe::fetch_catalog(&c.arbiters.join(","), &c.key, Duration::from_secs(2)) {
            let p = &cat.pair(content).unwrap().pair;
            let now = p.acting_primary().dbid;
            if now != old_primary
                && c.status(now).is_some_and(|s| s.acting == Acting::Primary && s.generation == p.generation)
            {
                return now;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(30), "content {content}'s mirror not promoted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An arbiter started while its coordinator cannot be reached starts all
/// the same: it says so when asked who it is, and decides nothing.
#[test]
fn an_arbiter_starts_while_etcd_cannot_be_reached_and_decides_nothing() {
    let _serial = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, b"coordinator test key material!!!").unwrap();
    let key = ClusterKey::from_file(&key_file).unwrap();
    // Nothing listens there.
    let nowhere = free_addr();
    let listen = free_addr();
    let args: Vec<String> = [
        "arbiter",
        "--coordinator",
        &format!("etcd://{nowhere}/filerep/1"),
        "--key-file",
        &key_file.display().to_string(),
        "--listen",
        &listen,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (mut child, _) = spawn_ready(&args, "filerep arbiter ready on ");
    let who = filerep_tools::cluster::leadership(&listen, &key, Duration::from_secs(5)).expect("it answers");
    assert!(matches!(who.leadership, Leadership::Unreachable(_)), "{who:?}");
    match filerep::cluster::control::call::<_, filerep::cluster::segment::ArbiterResponse>(
        &listen,
        &key,
        &filerep::cluster::segment::ArbiterRequest::Catalog,
        Duration::from_secs(5),
    ) {
        Ok(filerep::cluster::segment::ArbiterResponse::NotActing { why, .. }) => {
            assert!(why.contains("cannot reach its coordinator"), "{why}")
        }
        other => panic!("answered {other:?}"),
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_acting_arbiter_killed_the_other_takes_over_and_promotes_a_mirror() {
    skip_without_etcd!("the_acting_arbiter_killed_the_other_takes_over_and_promotes_a_mirror");
    let _serial = one_at_a_time();
    let etcd = Etcd::start();
    let c = Cluster::start(&etcd, 0);
    let (first, e1) = c.wait_acting(Duration::from_secs(10));
    c.write(0, "before", 16).unwrap();
    // The catalog commands read it from etcd: there is no catalog file.
    let shown: Catalog = serde_json::from_str(&ok(&["catalog", "show", "--cluster-dir", &c.cd()])).unwrap();
    assert_eq!(shown.pairs, c.catalog().pairs);
    let checked = ok(&["catalog", "check", "--cluster-dir", &c.cd()]);
    assert!(checked.contains(&format!("the catalog on {}: whole, 2 pairs", c.coordinator())), "{checked}");
    assert!(!c.dir.catalog().exists());

    c.kill(c.arbiter_name(&first));
    let killed = Instant::now();
    let (second, e2) = c.wait_acting(Duration::from_secs(15));
    let took = killed.elapsed();
    assert_ne!(second, first);
    assert!(e2 > e1, "a new leader's epoch is above the old one's: {e1} then {e2}");
    // Within the lease TTL plus a campaign pause and a probe interval, with
    // room for a loaded machine; well inside a primary's decision timeout.
    eprintln!("takeover after the acting arbiter was killed: {} ms", took.as_millis());
    assert!(took < Duration::from_secs(5), "took {took:?}");

    let old = c.primary_of(0);
    c.write(0, "after-takeover", 8).unwrap();
    c.kill(&format!("dbid{old}"));
    let promoted = wait_promoted(&c, 0, old);
    let cat = c.catalog();
    let p = &cat.pair(0).unwrap().pair;
    assert_eq!((p.mode, p.generation), (PairMode::ChangeTracking, 2), "{p:?}");
    assert!(p.segments.iter().any(|s| s.dbid == old && s.role == Role::Mirror && !s.up), "{p:?}");
    assert!(cat.history.iter().any(|h| h.content == 0 && h.reason.contains("promoted")), "{:?}", cat.history);
    // The promotion was the new arbiter's: the segment obeyed its epoch.
    assert_eq!(c.status(promoted).unwrap().epoch, e2);
    c.assert_written(0, "before", 16);
    c.assert_written(0, "after-takeover", 8);
    // The other content never noticed.
    c.write(1, "other", 4).unwrap();
    c.assert_written(1, "other", 4);
}

#[test]
fn an_arbiter_cut_off_from_etcd_stops_ordering_and_no_segment_obeys_both() {
    skip_without_etcd!("an_arbiter_cut_off_from_etcd_stops_ordering_and_no_segment_obeys_both");
    let _serial = one_at_a_time();
    let etcd = Etcd::start();
    let mut c = Cluster::start(&etcd, 1);
    c.wait_acting(Duration::from_secs(10));
    // The arbiters `start` made are replaced by two of the test's: A reaches
    // etcd only through proxies the test cuts; B directly.
    c.kill("arbiter");
    c.kill("arbiter2");
    let proxies: Vec<Proxy> = etcd.members.iter().map(|m| Proxy::new(&m.client)).collect();
    let coordinator = c.coordinator();
    let rest = coordinator.strip_prefix("etcd://").unwrap();
    let prefix = &rest[rest.find('/').unwrap()..];
    let through = format!("etcd://{}{prefix}", proxies.iter().map(|p| p.addr.clone()).collect::<Vec<_>>().join(","));
    let (a, b) = (c.arbiters[0].clone(), c.arbiters[1].clone());
    c.own_arbiter(&through, &a);
    let (acting, ea) = c.wait_acting(Duration::from_secs(15));
    assert_eq!(acting, a, "A starts first, and leads");
    c.own_arbiter(&coordinator, &b);
    wait_for(
        "B standing by",
        Duration::from_secs(10),
        || matches!(c.leadership(&b), Some(Leadership::Standby { leader: Some(l) }) if l == a),
    );
    c.write(0, "before", 8).unwrap();

    for p in &proxies {
        p.cut();
    }
    // A stops by its own clock; B takes over once A's lease expires in etcd.
    wait_for("A cut off", Duration::from_secs(10), || matches!(c.leadership(&a), Some(Leadership::Unreachable(_))));
    let (now, eb) = c.wait_acting(Duration::from_secs(15));
    assert_eq!(now, b);
    assert!(eb > ea, "B's epoch {eb} is above A's {ea}");
    // A answers nothing but who it is.
    match filerep::cluster::control::call::<_, filerep::cluster::segment::ArbiterResponse>(
        &a,
        &c.key,
        &filerep::cluster::segment::ArbiterRequest::Catalog,
        Duration::from_secs(2),
    ) {
        Ok(filerep::cluster::segment::ArbiterResponse::NotActing { .. }) => {}
        other => panic!("a cut-off arbiter answered {other:?}"),
    }

    let old = c.primary_of(0);
    c.kill(&format!("dbid{old}"));
    let promoted = wait_promoted(&c, 0, old);
    // Every segment that obeyed an order since obeyed B's epoch, none A's after.
    let s = c.status(promoted).unwrap();
    assert_eq!(s.epoch, eb, "{s:?}");
    // A's epoch, replayed, is refused.
    let stale = SegmentRequest::Fenced { epoch: ea, order: Box::new(SegmentRequest::BecomeMirror { generation: 9 }) };
    let cfg = c.dir.segment(promoted).unwrap();
    match filerep::cluster::control::call::<_, SegmentResponse>(
        &cfg.control_listen,
        &c.key,
        &stale,
        Duration::from_secs(5),
    ) {
        Ok(SegmentResponse::Refused(why)) => assert!(why.contains(&format!("epoch {ea}")), "{why}"),
        other => panic!("a stale order was answered {other:?}"),
    }
    assert_eq!(c.status(promoted).unwrap().acting, Acting::Primary, "the stale order changed nothing");
    c.assert_written(0, "before", 8);

    // Healed, A stands by: B acts on.
    for p in &proxies {
        p.heal();
    }
    wait_for(
        "A standing by",
        Duration::from_secs(15),
        || matches!(c.leadership(&a), Some(Leadership::Standby { leader: Some(l) }) if l == b),
    );
    assert_eq!(c.acting().map(|(x, _)| x), Some(b));
}

#[test]
fn etcd_members_lost_one_then_two_then_restored() {
    skip_without_etcd!("etcd_members_lost_one_then_two_then_restored");
    let _serial = one_at_a_time();
    let mut etcd = Etcd::start();
    let c = Cluster::start(&etcd, 2);
    c.wait_acting(Duration::from_secs(10));

    // One member lost: everything goes on, a failover included.
    etcd.kill(0);
    c.write(1, "one-lost", 4).unwrap();
    let old = c.primary_of(0);
    c.kill(&format!("dbid{old}"));
    wait_promoted(&c, 0, old);
    c.write(0, "promoted", 4).unwrap();

    // Two lost: no arbiter acts, nothing is decided.
    let before = c.catalog();
    etcd.kill(1);
    let outage = std::time::SystemTime::now();
    wait_for("no arbiter acting", Duration::from_secs(10), || c.acting().is_none());
    let (code, out, err) = filerep(&["state", "--cluster-dir", &c.cd()]);
    assert_ne!(code, 0);
    assert!(out.contains("NO arbiter acts") && out.contains("cut off"), "{out}{err}");
    // Writes on a synchronized pair go on.
    let p1 = before.pair(1).unwrap().pair.acting_primary().dbid;
    let m1 = before.pair(1).unwrap().pair.acting_mirror().dbid;
    c.write_on(p1, 1, "two-lost", 4).unwrap();
    // A mirror lost now cannot be ruled on: its primary's calls fail
    // rather than go on untracked.
    c.kill(&format!("dbid{m1}"));
    let mut client = Client::connect(&c.socket(p1)).unwrap();
    client.create(0, "unruled").unwrap_or(());
    let failed = (0..64).any(|b| client.write_block(0, "unruled", b, &block(1, b)).is_err());
    assert!(failed, "a primary wrote on without its mirror and without an arbiter's answer");

    // Restored: the cluster goes on from the stored state.
    let restart_at = std::time::SystemTime::now();
    etcd.restart(1);
    etcd.restart(0);
    c.wait_acting(Duration::from_secs(30));
    let start = Instant::now();
    while c.write(1, "after", 4).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "content 1 never served again");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cat = c.catalog();
    let p = &cat.pair(1).unwrap().pair;
    assert_eq!((p.acting_primary().dbid, p.mode), (p1, PairMode::ChangeTracking), "{p:?}");
    // Nothing was decided while no arbiter could act: no history entry
    // from the outage until etcd came back.
    let ms = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let during: Vec<_> = cat.history.iter().filter(|h| h.unix_ms > ms(outage) && h.unix_ms < ms(restart_at)).collect();
    assert!(during.is_empty(), "changes recorded while etcd had no majority: {during:?}");
    assert!(cat.history.len() > before.history.len());
    c.assert_written(0, "promoted", 4);
    c.assert_written(1, "one-lost", 4);
    c.assert_written(1, "two-lost", 4);
    c.assert_written(1, "after", 4);
}
