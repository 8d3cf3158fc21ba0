//! `filerep bench --cluster N`: what the cluster tools and the arbiter cost
//! as the cluster grows. A loopback cluster of N primary segments over
//! several host addresses (127.0.0.2, 127.0.0.3, …) is made with the
//! `filerep` command itself, each primary given some data, and then timed,
//! step by step, as an operator would run it:
//!
//! 1. `addmirrors` (group placement; every mirror built by a full resync);
//! 2. `verify` of every pair;
//! 3. idle: the CPU of every segment process and of the arbiter over a
//!    quiet window (from /proc);
//! 4. SIGKILL of one host's segments: until every pair serves again, then
//!    `start` of that host and one `recover`;
//! 5. `recover -r` back to the preferred roles;
//! 6. SIGSTOP of another host's segments (a hung host): until every pair
//!    with a hung primary is taken over, and one `state --json` timed
//!    while it hangs; then SIGCONT, `recover` and `recover -r`.
//!
//! Every step must succeed: a step that fails ends the run with its output.

use crate::cluster::ClusterDir;
use filerep::cluster::client::Client;
use filerep::cluster::segment::Acting;
use filerep::core::pair::PairMode;
use filerep::durable::catalog::Catalog;
use filerep::error::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ClusterBenchConfig {
    /// Primary segments (a multiple of `hosts`).
    pub segments: u32,
    /// Host addresses (127.0.0.2 onwards).
    pub hosts: u32,
    /// Data written to each primary before its mirror is added.
    pub mib_per_segment: u32,
    pub dir: PathBuf,
    pub base_port: u16,
    pub exe: PathBuf,
    /// `-B` given to the cluster tools (None: their default).
    pub batch: Option<u32>,
    /// History entries put in the catalog before the cluster starts (the
    /// arbiter's idle cost must not grow with its history).
    pub history: u32,
    /// The `filerep` whose cluster tools and processes are timed, when not
    /// this one (to compare two versions on one machine).
    pub tools: Option<PathBuf>,
    /// Print a line per step on stderr.
    pub verbose: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterBenchReport {
    pub segments: u32,
    pub hosts: u32,
    pub mib_per_segment: u32,
    /// History entries in the catalog when the cluster started.
    pub history_entries: u32,
    pub addmirrors_s: f64,
    pub verify_s: f64,
    /// CPU of all segment processes together over the idle window, in % of one core.
    pub idle_segments_cpu_pct: f64,
    /// The arbiter's CPU over the same window, in % of one core.
    pub idle_arbiter_cpu_pct: f64,
    /// SIGKILL of one host's segments until every pair serves again.
    pub killed_host_serving_s: f64,
    /// `recover` after the killed host is started again.
    pub recover_s: f64,
    /// `recover -r` back to the preferred roles.
    pub recover_rebalance_s: f64,
    /// SIGSTOP of one host's segments until every pair with a hung primary is taken over.
    pub hung_host_takeover_s: f64,
    /// One `filerep state --json` while that host hangs.
    pub state_json_hung_s: f64,
    /// Unauthenticated connections opened to the arbiter (and held until
    /// it closed them) from the kill to the end of `recover`.
    pub idle_connections_opened: u64,
}

const BLOCK: usize = 32768;
/// Connections held open to the arbiter, saying nothing, from a host kill
/// to the end of its recovery: the cluster's own segments must get through.
const IDLE_CONNECTIONS: usize = 64;

/// A peer that holds `count` idle connections to an address, opening new
/// ones as the server closes them.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Flood {
    fn start(addr: &str, count: usize) -> Result<Flood> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let target: std::net::SocketAddr =
            addr.parse().map_err(|e| Error::InvalidArgument(format!("the arbiter's address {addr}: {e}")))?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held: Vec<std::net::TcpStream> = Vec::new();
            let mut opened = 0u64;
            while !st.load(Ordering::SeqCst) {
                // Drop what the server closed (a read sees its end; the hello
                // it sent is read and ignored), then open up to `count`.
                held.retain(|s| {
                    let mut b = [0u8; 64];
                    loop {
                        match std::io::Read::read(&mut &*s, &mut b) {
                            Ok(0) => return false,
                            Ok(_) => continue,
                            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
                        }
                    }
                });
                while held.len() < count {
                    match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                        Ok(s) => {
                            if s.set_nonblocking(true).is_ok() {
                                held.push(s);
                                opened += 1;
                            }
                        }
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(100)); // the flood's own pace
            }
            opened
        });
        Ok(Flood { stop, thread })
    }

    /// Stop; how many connections it opened.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap_or(0)
    }
}
/// The longest any one step may take before the run is given up.
const STEP_LIMIT: Duration = Duration::from_secs(600);

struct Bench<'a> {
    cfg: &'a ClusterBenchConfig,
    root: PathBuf,
    dir: ClusterDir,
    started: bool,
}

impl Drop for Bench<'_> {
    fn drop(&mut self) {
        if self.started {
            // Hung processes cannot stop in order.
            for pid in self.segment_pids() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGCONT);
            }
            let _ = self.filerep(&["stop"]);
        }
    }
}

impl Bench<'_> {
    /// The `filerep` being timed.
    fn exe(&self) -> &std::path::Path {
        self.cfg.tools.as_deref().unwrap_or(&self.cfg.exe)
    }

    fn say(&self, what: &str) {
        if self.cfg.verbose {
            eprintln!("bench --cluster {}: {what}", self.cfg.segments);
        }
    }

    /// Run `filerep ARGS --cluster-dir DIR`; its stdout, or an error with its output.
    fn filerep(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(self.exe())
            .args(args)
            .arg("--cluster-dir")
            .arg(&self.root)
            .env("FILEREP_LOG", "warn")
            .output()
            .map_err(|e| Error::io(format!("running filerep {}", args.join(" ")), e))?;
        if !out.status.success() {
            return Err(Error::NotDone(format!(
                "filerep {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Seconds `filerep ARGS` takes (with `-B` where the tool has it).
    fn timed(&self, args: &[&str]) -> Result<f64> {
        let batch = self.cfg.batch.map(|b| b.to_string());
        let mut all: Vec<&str> = args.to_vec();
        if let Some(b) = &batch {
            all.extend(["-B", b]);
        }
        let t = Instant::now();
        self.filerep(&all)?;
        Ok(t.elapsed().as_secs_f64())
    }

    fn catalog(&self) -> Result<Catalog> {
        let file = self.dir.load()?;
        let key = self.dir.key()?;
        filerep::cluster::probe::fetch_catalog(&file.arbiter, &key, Duration::from_secs(10))
    }

    fn host(&self, i: u32) -> String {
        format!("127.0.0.{}", 2 + i)
    }

    fn pid(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.pid(name)).ok()?.trim().parse().ok()
    }

    fn segment_pids(&self) -> Vec<i32> {
        let Ok(cat) = self.dir.load().and_then(|f| self.dir.load_catalog(&f)) else { return Vec::new() };
        cat.addresses().filter_map(|(_, a)| self.pid(&format!("dbid{}", a.dbid))).collect()
    }

    /// The segment processes of host `i`.
    fn host_pids(&self, cat: &Catalog, i: u32) -> Vec<i32> {
        let host = self.host(i);
        cat.addresses()
            .filter(|(_, a)| a.host == host)
            .filter_map(|(_, a)| self.pid(&format!("dbid{}", a.dbid)))
            .collect()
    }

    /// Wait until `ready` holds of the arbiter's catalog.
    fn wait_catalog(&self, what: &str, ready: impl Fn(&Catalog) -> bool) -> Result<f64> {
        let t = Instant::now();
        loop {
            if let Ok(cat) = self.catalog() {
                if ready(&cat) {
                    return Ok(t.elapsed().as_secs_f64());
                }
            }
            if t.elapsed() > STEP_LIMIT {
                return Err(Error::NotDone(format!("{what}: not within {} s", STEP_LIMIT.as_secs())));
            }
            std::thread::sleep(Duration::from_millis(20)); // polling another process
        }
    }

    /// Every pair whose acting primary was one of `dbids` has another acting
    /// primary, serving at the pair's generation.
    fn taken_over(&self, cat: &Catalog, dbids: &[u32]) -> bool {
        let Ok(key) = self.dir.key() else { return false };
        cat.pairs.iter().filter(|p| p.addresses.iter().any(|a| dbids.contains(&a.dbid))).all(|p| {
            let acting = p.pair.acting_primary().dbid;
            !dbids.contains(&acting)
                && p.address(acting).is_some_and(|a| {
                    crate::cluster::probe(&a.control, &key, Duration::from_secs(1))
                        .is_some_and(|s| s.acting == Acting::Primary && s.generation == p.pair.generation)
                })
        })
    }

    /// Every pair serves: its acting primary is none of `dead`, and
    /// answers as the primary of the pair's generation, not failed.
    fn all_serving(&self, cat: &Catalog, dead: &[u32]) -> bool {
        let Ok(key) = self.dir.key() else { return false };
        let controls: Vec<(String, u64)> = cat
            .pairs
            .iter()
            .filter_map(|p| {
                let acting = p.pair.acting_primary().dbid;
                (!dead.contains(&acting) && !p.pair.down)
                    .then(|| p.address(acting).map(|a| (a.control.clone(), p.pair.generation)))
                    .flatten()
            })
            .collect();
        if controls.len() != cat.pairs.len() {
            return false;
        }
        let addrs: Vec<String> = controls.iter().map(|(a, _)| a.clone()).collect();
        let statuses = crate::cluster::probe_many(&addrs, &key, Duration::from_secs(1));
        controls.iter().zip(statuses).all(|((_, generation), s)| {
            s.is_some_and(|s| s.acting == Acting::Primary && s.generation == *generation && s.mode != 'f')
        })
    }

    /// The primaries' dbids on host `i`, acting now.
    fn acting_primaries_on(&self, cat: &Catalog, i: u32) -> Vec<u32> {
        let host = self.host(i);
        cat.pairs
            .iter()
            .map(|p| p.pair.acting_primary().dbid)
            .filter(|d| cat.addresses().any(|(_, a)| a.dbid == *d && a.host == host))
            .collect()
    }

    /// Write `mib_per_segment` MiB to every primary, the primaries at once.
    fn fill(&self, cat: &Catalog) -> Result<()> {
        let sockets: Vec<PathBuf> =
            cat.unmirrored.iter().map(|s| self.dir.segment_dir(s.address.dbid).join("segment.sock")).collect();
        let blocks = (self.cfg.mib_per_segment as u64) << 20 >> 15;
        let errors = filerep::cluster::probe::at_once(&sockets, 16, |socket| -> Option<String> {
            let write = || -> std::result::Result<(), String> {
                let mut c = Client::connect(socket).map_err(|e| e.to_string())?;
                for f in 0..4u64 {
                    let file = format!("bench{f}");
                    c.create(0, &file).map_err(|e| e.to_string())?;
                    for b in 0..blocks / 4 {
                        let data = vec![(b + f) as u8; BLOCK];
                        c.extend(0, &file, b, &data).map_err(|e| e.to_string())?;
                    }
                    c.sync(0, &file).map_err(|e| e.to_string())?;
                }
                Ok(())
            };
            write().err().map(|e| format!("{}: {e}", socket.display()))
        });
        match errors.into_iter().flatten().next() {
            Some(e) => Err(Error::NotDone(format!("writing the data: {e}"))),
            None => Ok(()),
        }
    }
}

/// CPU of `pids` together over `window`, in % of one core.
fn cpu_pct(pids: &[i32], window: Duration) -> f64 {
    let sum = |pids: &[i32]| pids.iter().filter_map(|p| crate::cpu::process_seconds(*p as u32)).sum::<f64>();
    let before = sum(pids);
    std::thread::sleep(window); // the measurement window itself
    (sum(pids) - before) / window.as_secs_f64() * 100.0
}

pub fn run(cfg: &ClusterBenchConfig) -> Result<ClusterBenchReport> {
    if cfg.hosts < 2 || cfg.hosts > 200 {
        return Err(Error::InvalidArgument(format!("--cluster-hosts {}: give 2 to 200", cfg.hosts)));
    }
    if cfg.segments == 0 || cfg.segments % cfg.hosts != 0 || cfg.segments > 2000 {
        return Err(Error::InvalidArgument(format!(
            "--cluster {}: give a multiple of the {} hosts, at most 2000",
            cfg.segments, cfg.hosts
        )));
    }
    if cfg.history > filerep::durable::catalog::MAX_HISTORY as u32 {
        return Err(Error::InvalidArgument(format!(
            "--cluster-history {}: at most {}",
            cfg.history,
            filerep::durable::catalog::MAX_HISTORY
        )));
    }
    if cfg.mib_per_segment == 0 || cfg.mib_per_segment > 4096 {
        return Err(Error::InvalidArgument(format!("--cluster-mib {}: give 1 to 4096", cfg.mib_per_segment)));
    }
    let per_host = cfg.segments / cfg.hosts;
    // Ports: primaries from BASE, mirrors at + OFFSET, replication at + 2 and + 3 OFFSET.
    let offset = per_host.max(16) as u16 + 4;
    if cfg.base_port < 1025 || cfg.base_port as u32 + 4 * offset as u32 > 65000 {
        return Err(Error::InvalidArgument(format!("--base-port {}: too high for this cluster", cfg.base_port)));
    }
    let root = cfg.dir.join("cluster");
    let mut b = Bench { cfg, root: root.clone(), dir: ClusterDir::new(&root), started: false };
    let hosts: Vec<String> = (0..cfg.hosts).map(|i| b.host(i)).collect();
    let data = |what: &str| format!("pg_system={}", cfg.dir.join(what).display());
    b.say("init and start");
    let root_s = root.display().to_string();
    let init = Command::new(b.exe())
        .args(["init", "--cluster-dir", &root_s, "--hosts", &hosts.join(",")])
        .args(["--segments-per-host", &per_host.to_string(), "--base-port", &cfg.base_port.to_string()])
        .args(["--data-dir", &data("primary"), "--allow-one-machine"])
        .env("FILEREP_LOG", "warn")
        .output()
        .map_err(|e| Error::io("running filerep init", e))?;
    if !init.status.success() {
        return Err(Error::NotDone(format!("filerep init failed: {}", String::from_utf8_lossy(&init.stderr))));
    }
    if cfg.history > 0 {
        b.say(&format!("{} entries of history in the catalog", cfg.history));
        let mut cat = Catalog::load(&b.dir.catalog())?;
        for i in 0..cfg.history {
            cat.note(0, format!("bench entry {i}"), format!("bench entry {}", i + 1), "a bench's history entry".into());
        }
        cat.store(&b.dir.catalog())?;
    }
    b.started = true;
    b.filerep(&["start"])?;
    let cat = b.catalog()?;
    b.say(&format!("writing {} MiB to each of {} primaries", cfg.mib_per_segment, cat.unmirrored.len()));
    b.fill(&cat)?;

    b.say("addmirrors");
    let off = offset.to_string();
    let addmirrors_s =
        b.timed(&["addmirrors", "-p", &off, "--mirror-data-dir", &data("mirror"), "--allow-one-machine"])?;
    let synchronized = |c: &Catalog| {
        c.unmirrored.is_empty() && c.pairs.iter().all(|p| p.pair.mode == PairMode::Synchronized && !p.pair.down)
    };
    b.wait_catalog("every pair synchronized after addmirrors", synchronized)?;
    b.say("verify");
    let verify_s = b.timed(&["verify"])?;

    b.say("idle");
    // Let the last orders and checkpoints settle before measuring.
    std::thread::sleep(Duration::from_secs(2)); // a settling time, not a synchronisation
    let seg_pids = b.segment_pids();
    let arbiter = b.pid("arbiter").into_iter().collect::<Vec<_>>();
    let window = Duration::from_secs(5);
    let (idle_segments_cpu_pct, idle_arbiter_cpu_pct) = std::thread::scope(|s| {
        let a = s.spawn(|| cpu_pct(&arbiter, window));
        let seg = cpu_pct(&seg_pids, window);
        (seg, a.join().unwrap_or(f64::NAN))
    });

    b.say("SIGKILL of one host");
    let cat = b.catalog()?;
    let killed_host = 1;
    let victims = b.host_pids(&cat, killed_host);
    let killed_host_name = b.host(killed_host);
    let killed: Vec<u32> = cat.addresses().filter(|(_, a)| a.host == killed_host_name).map(|(_, a)| a.dbid).collect();
    b.say(&format!(
        "killing {} processes while {IDLE_CONNECTIONS} idle connections are held to the arbiter",
        victims.len()
    ));
    let flood = Flood::start(&b.dir.load()?.arbiter, IDLE_CONNECTIONS)?;
    let t = Instant::now();
    for pid in &victims {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
    }
    b.wait_catalog("every pair serving after the kill", |c| b.all_serving(c, &killed))?;
    let killed_host_serving_s = t.elapsed().as_secs_f64();
    b.filerep(&["start", "--host", &killed_host_name])?;
    b.say("recover");
    let recover_s = b.timed(&["recover"])?;
    b.wait_catalog("every pair synchronized after recover", synchronized)?;
    let idle_connections_held = flood.stop();
    b.say("recover -r");
    let recover_rebalance_s = b.timed(&["recover", "-r"])?;

    b.say("SIGSTOP of one host");
    let cat = b.catalog()?;
    let hung_host = 2 % cfg.hosts;
    let hung = b.host_pids(&cat, hung_host);
    let hung_primaries = b.acting_primaries_on(&cat, hung_host);
    b.say(&format!("stopping {} processes, acting primaries {hung_primaries:?}", hung.len()));
    let t = Instant::now();
    for pid in &hung {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGSTOP);
    }
    let state_t = Instant::now();
    let state = b.filerep(&["state", "--json"]);
    let state_json_hung_s = state_t.elapsed().as_secs_f64();
    state?;
    b.wait_catalog("every pair with a hung primary taken over", |c| b.taken_over(c, &hung_primaries))?;
    let hung_host_takeover_s = t.elapsed().as_secs_f64();
    for pid in &hung {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGCONT);
    }
    b.say("back from the hang: recover and recover -r");
    b.wait_catalog("every segment up after the hang", |c| {
        c.pairs.iter().all(|p| p.pair.segments.iter().all(|s| s.up))
    })?;
    b.filerep(&["recover"])?;
    b.wait_catalog("every pair synchronized after the hang", synchronized)?;
    b.filerep(&["recover", "-r"])?;
    b.say("stop");
    b.filerep(&["stop"])?;
    b.started = false;
    Ok(ClusterBenchReport {
        segments: cfg.segments,
        hosts: cfg.hosts,
        mib_per_segment: cfg.mib_per_segment,
        history_entries: cfg.history,
        addmirrors_s,
        verify_s,
        idle_segments_cpu_pct,
        idle_arbiter_cpu_pct,
        killed_host_serving_s,
        recover_s,
        recover_rebalance_s,
        hung_host_takeover_s,
        state_json_hung_s,
        idle_connections_opened: idle_connections_held,
    })
}
