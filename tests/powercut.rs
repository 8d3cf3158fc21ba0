//! Power cuts of real processes. An arbiter and two `filerep segment`
//! processes on loopback, every file they write on a forgetfs file system
//! (each segment host's data directory and its state directory: change-log,
//! activity log, mirror state; the arbiter host's catalog). A host's power
//! cut is SIGKILL of its processes (the arbiter host's include `filerep
//! recover`) and then the forgetfs cut of its file systems: every write,
//! create, rename, unlink and truncate that no fsync made durable is gone,
//! and half the cuts tear the last write of each file at a 512-byte sector.
//! The host then comes back in another boot (its segment reads its boot id
//! from `FILEREP_BOOT_ID_FILE`), so a mirror cut while it streamed knows
//! that what it had only applied may be gone, and refuses promotion.
//!
//! Each round, seeded: writers that sync (`powercut/writer.rs`) run on the
//! acting primary; the cluster is brought into a phase (synchronized,
//! change tracking, an incremental or a full resync, a failover, the return
//! of an old primary) and power is cut to the primary's host, the mirror's,
//! the arbiter's, or two of them, at a random moment. Then what was cut is
//! restarted, `filerep recover` runs until the pair is synchronized, and
//! the round checks: no process refused to start (or stopped serving)
//! because of its own files, every write whose sync returned is on the
//! acting primary, and `filerep verify` finds both copies identical.
//!
//! `FILEREP_POWERCUT_ROUNDS` (default 21) and `FILEREP_POWERCUT_SEED` (the
//! first round's seed, default 1; round r uses seed + r) choose the rounds;
//! the sync level is the seed's (seed % 3: applied, durable, async), and
//! rounds of one level share a cluster. A failure prints its seed and the
//! command that replays that round alone. `FILEREP_POWERCUT_PLANT=NAME`
//! passes `FILEREP_PLANTED_BUG=NAME` to every filerep process and turns the
//! test around: it passes when a round fails (the bug is caught) and says
//! after how many rounds. Where FUSE cannot be mounted the test is skipped
//! with the reason, unless `FILEREP_REQUIRE_FUSE=1` (CI), which fails it.

#[path = "powercut/aim.rs"]
mod aim;
mod common;
#[path = "powercut/plan.rs"]
mod plan;
#[path = "powercut/writer.rs"]
mod writer;

use common::pair::{arbiter_args, exe, free_addr, store_config, try_spawn_ready_with, READY_ARBITER, READY_SEGMENT};
use filerep::cluster::client::{Client, ErrorClass};
use filerep::cluster::segment::{Acting, SegmentConfig, SegmentRequest, SegmentResponse, SegmentStatus};
use filerep::core::pair::{PairMode, Role};
use filerep::durable::catalog::Catalog;
use filerep::protocol::handshake::ClusterKey;
use forgetfs::process::ForgetFs;
use plan::{Host, Phase, Plan};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use writer::Model;

const KEY: &[u8] = b"power cut test cluster key material";
const FS: [&str; 2] = ["pg_system", "fs_fast"];
const LEVELS: [&str; 3] = ["applied", "durable", "async:64"];
/// Each level's cluster has file systems whose fsyncs take this long, in
/// microseconds (forgetfs --sync-latency-us), on the host of dbid 2 (and the
/// arbiter's) and on the host of dbid 3: a device's flush, during which a
/// power cut loses what it syncs, so steps that must wait for a sync are
/// seen when they do not. In one cluster both devices are slow and dbid
/// 3's much slower, as when one disk is busy or older: a mirror's
/// checkpoint there takes long enough (20 ms a file) for its primary to
/// act on an acknowledgement that came too early.
const SYNC_LATENCY_US: [[u64; 2]; 3] = [[2000, 2000], [0, 0], [5000, 20_000]];
const WRITERS: u32 = 2;
/// Activity-log entries a streaming primary holds before retiring (the
/// segment's `activity_limit`): small, so the writers' few files make it
/// retire all through a round (rule 5's retiring is then under the cuts
/// too; with the default 1024 it would wait for a resync's end).
const ACTIVITY_LIMIT: usize = 8;
/// How long the cluster has to settle after a cut (restarts, recover).
const SETTLE: Duration = Duration::from_secs(90);

/// A progress line, in one write (the processes' logs go to files).
fn say(msg: impl AsRef<str>) {
    let _ = std::io::stderr().write_all(format!("[powercut] {}\n", msg.as_ref()).as_bytes());
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

// ---- hosts ------------------------------------------------------------------

/// A segment host: its process, its data and state file systems.
struct SegHost {
    dbid: u32,
    cfg: SegmentConfig,
    cfg_path: PathBuf,
    data: ForgetFs,
    state: ForgetFs,
    child: Option<Child>,
    log: PathBuf,
    /// The host's boot id (`FILEREP_BOOT_ID_FILE`), changed by every power
    /// cut of the host: a cut is a reboot.
    boot_id: PathBuf,
    boots: u64,
}

/// The arbiter's host: the arbiter, `filerep recover` when it runs, the catalog.
struct ArbiterHost {
    listen: String,
    catalog: PathBuf,
    fs: ForgetFs,
    child: Option<Child>,
    tool: Option<Child>,
    log: PathBuf,
}

fn kill(c: &mut Option<Child>) {
    if let Some(mut c) = c.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn log_file(path: &Path) -> Stdio {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log file");
    Stdio::from(f)
}

/// The last lines of a log, for a failure message.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- the cluster ------------------------------------------------------------

struct Cluster {
    segs: Vec<SegHost>,
    arb: ArbiterHost,
    key: ClusterKey,
    key_file: PathBuf,
    writers: Vec<Model>,
    /// Each writer's count of writes sent into its sparse file (its model
    /// is away in its thread while it runs).
    sparse_sent: Vec<Arc<std::sync::atomic::AtomicU64>>,
    /// Each host's fsync latency, microseconds (dbid 2's, dbid 3's).
    sync_latency_us: [u64; 2],
    /// `FILEREP_PLANTED_BUG` for every filerep process, if set.
    env: Vec<(String, String)>,
    /// Last: removed once every file system in it is unmounted.
    dir: tempfile::TempDir,
}

/// A writer thread: its model comes back with how it ended.
type Running = std::thread::JoinHandle<(Model, Result<(), String>)>;

impl Drop for Cluster {
    fn drop(&mut self) {
        kill(&mut self.arb.tool);
        kill(&mut self.arb.child);
        for s in &mut self.segs {
            kill(&mut s.child);
        }
    }
}

impl Cluster {
    fn start(level: &str, sync_latency_us: [u64; 2], env: Vec<(String, String)>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("cluster.key");
        std::fs::write(&key_file, KEY).unwrap();
        let key = ClusterKey::from_material(KEY).unwrap();
        let forgetfs_exe = Path::new(env!("CARGO_BIN_EXE_filerep")).with_file_name("forgetfs");
        assert!(
            forgetfs_exe.exists(),
            "{} is missing: build it (cargo build --release -p forgetfs, or run the whole suite)",
            forgetfs_exe.display()
        );
        let mount = |name: &str, latency: u64| {
            ForgetFs::spawn_with_latency(&forgetfs_exe, &dir.path().join(name), name, latency).unwrap()
        };
        let arb_fs = mount("arbiter-catalog", sync_latency_us[0]);
        let listen = free_addr();
        let mut segs = Vec::new();
        let mut addrs = Vec::new();
        for dbid in [2u32, 3] {
            let base = dir.path().join(format!("seg{dbid}"));
            std::fs::create_dir_all(&base).unwrap();
            let latency = sync_latency_us[(dbid - 2) as usize];
            let (data, state) =
                (mount(&format!("seg{dbid}-data"), latency), mount(&format!("seg{dbid}-state"), latency));
            let filespaces = FS
                .iter()
                .map(|n| {
                    // Made and synced before the cluster runs, like an operator's data directories.
                    let root = data.mountpoint.join(n);
                    std::fs::create_dir(&root).unwrap();
                    format!("{n}={}", root.display())
                })
                .collect();
            std::fs::File::open(&data.mountpoint).unwrap().sync_all().unwrap();
            let cfg = SegmentConfig {
                dbid,
                content: 0,
                cluster_id: 0x9c,
                block_size: writer::BS as u32,
                filespaces,
                key_file: key_file.clone(),
                control_listen: free_addr(),
                data_listen: free_addr(),
                socket: base.join("segment.sock"),
                // The segment makes it, as on a fresh host.
                state_dir: state.mountpoint.join("state"),
                arbiter: listen.clone(),
                sync_level: level.into(),
                decision_timeout_ms: 2000,
                ack_timeout_ms: 1000,
                heartbeat_ms: 100,
                handshake_timeout_ms: 2000,
                prefer_uring: true,
                direct: false,
                metrics_listen: None,
                activity_limit: ACTIVITY_LIMIT,
            };
            let cfg_path = base.join("segment.json");
            addrs.push(store_config(&cfg, &cfg_path, &format!("host{dbid}")));
            let log = base.join("segment.log");
            let boot_id = base.join("boot_id");
            std::fs::write(&boot_id, format!("host{dbid}-boot0\n")).unwrap();
            segs.push(SegHost { dbid, cfg, cfg_path, data, state, child: None, log, boot_id, boots: 0 });
        }
        let catalog = arb_fs.mountpoint.join("catalog.json");
        Catalog::new(0x9c, writer::BS as u32, vec![(0, addrs[0].clone(), addrs[1].clone())]).store(&catalog).unwrap();
        let arb =
            ArbiterHost { listen, catalog, fs: arb_fs, child: None, tool: None, log: dir.path().join("arbiter.log") };
        let mut c = Cluster {
            segs,
            arb,
            key,
            key_file,
            writers: Vec::new(),
            sparse_sent: Vec::new(),
            sync_latency_us,
            env,
            dir,
        };
        for dbid in [2, 3] {
            c.start_seg(dbid).unwrap();
        }
        c.start_arbiter().unwrap();
        c.settle(Duration::from_secs(30)).unwrap_or_else(|e| panic!("the first synchronization: {e}"));
        let mut cl = c.client().unwrap();
        for w in 0..WRITERS {
            let mut m = Model::new(w);
            m.setup(&mut cl).unwrap();
            c.sparse_sent.push(m.sparse_sent.clone());
            c.writers.push(m);
        }
        c
    }

    fn seg(&self, dbid: u32) -> &SegHost {
        self.segs.iter().find(|s| s.dbid == dbid).expect("dbid")
    }

    fn seg_mut(&mut self, dbid: u32) -> &mut SegHost {
        self.segs.iter_mut().find(|s| s.dbid == dbid).expect("dbid")
    }

    fn start_seg(&mut self, dbid: u32) -> Result<(), String> {
        let mut env = self.env.clone();
        let s = self.seg_mut(dbid);
        env.push((filerep::runtime::mirror::BOOT_ID_FILE_ENV.into(), s.boot_id.display().to_string()));
        let args = vec!["segment".into(), "--config".into(), s.cfg_path.display().to_string()];
        match try_spawn_ready_with(&args, READY_SEGMENT, &env, log_file(&s.log)) {
            Ok((child, _)) => {
                s.child = Some(child);
                Ok(())
            }
            Err(e) => Err(format!("segment {dbid} refused to start: {e}\n{}", tail(&s.log, 20))),
        }
    }

    fn start_arbiter(&mut self) -> Result<(), String> {
        let args = arbiter_args(&self.arb.catalog, &self.key_file, &self.arb.listen);
        match try_spawn_ready_with(&args, READY_ARBITER, &self.env, log_file(&self.arb.log)) {
            Ok((child, _)) => {
                self.arb.child = Some(child);
                Ok(())
            }
            Err(e) => Err(format!("the arbiter refused to start: {e}\n{}", tail(&self.arb.log, 20))),
        }
    }

    fn status(&self, dbid: u32) -> Option<SegmentStatus> {
        match filerep::cluster::control::call::<_, SegmentResponse>(
            &self.seg(dbid).cfg.control_listen,
            &self.key,
            &SegmentRequest::Probe,
            Duration::from_secs(2),
        ) {
            Ok(SegmentResponse::Status(s)) => Some(s),
            _ => None,
        }
    }

    fn catalog(&self) -> Option<Catalog> {
        filerep::cluster::probe::fetch_catalog(&self.arb.listen, &self.key, Duration::from_secs(2)).ok()
    }

    /// (acting primary, mirror) as the catalog has them.
    fn roles(&self) -> Option<(u32, u32)> {
        let p = self.catalog()?.pairs[0].pair.clone();
        let primary = p.segments.iter().find(|s| s.role == Role::Primary)?.dbid;
        Some((primary, if primary == 2 { 3 } else { 2 }))
    }

    fn client(&self) -> Result<Client, String> {
        let (p, _) = self.roles().ok_or("no catalog")?;
        Client::connect(&self.seg(p).cfg.socket).map_err(|e| format!("client of segment {p}: {e}"))
    }

    fn wait(&self, what: &str, limit: Duration, cond: impl Fn(&Cluster) -> bool) -> Result<(), String> {
        let start = Instant::now();
        while !cond(self) {
            if start.elapsed() > limit {
                return Err(format!("timed out after {limit:?} waiting for {what}; catalog: {:?}", self.catalog()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn tool_args(&self, name: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> =
            [name, "--arbiter", &self.arb.listen, "--key-file"].iter().map(|s| s.to_string()).collect();
        a.push(self.key_file.display().to_string());
        a.extend(["--json", "--timeout", "30"].iter().map(|s| s.to_string()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Run `filerep recover`/`verify` to the end: exit code and output.
    fn tool(&self, name: &str, extra: &[&str]) -> (i32, String) {
        let out = Command::new(exe())
            .args(self.tool_args(name, extra))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("FILEREP_LOG", "warn")
            .output()
            .expect("tool");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// `filerep recover` in the background (on the arbiter's host), slowed
    /// so a cut can land in it.
    fn start_tool(&mut self, extra: &[&str]) {
        let mut args = self.tool_args("recover", &["--max-rate", "0.25", "--checkpoint-mib", "1"]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(exe())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("FILEREP_LOG", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("recover");
        self.arb.tool = Some(child);
    }

    /// A host's file systems.
    fn file_systems(&self, h: Host) -> Vec<&ForgetFs> {
        match h {
            Host::Seg(d) => vec![&self.seg(d).data, &self.seg(d).state],
            Host::Arbiter => vec![&self.arb.fs],
        }
    }

    /// Power cut: SIGKILL every process of each host, then the forgetfs
    /// cut of its file systems. What was dropped, for the round's log.
    fn cut(&mut self, hosts: &[Host], tear: bool, seed: u64) -> Result<String, String> {
        // The processes stop and the file systems forget at once: killed,
        // then cut, then reaped. Reaped first, a process's fsync under way
        // would finish (its device's wait included) before the cut, and a
        // power cut never lets one finish; after the cut its file handles
        // are gone (EIO), so nothing it had under way lands afterwards.
        let mut dying = Vec::new();
        for h in hosts {
            match h {
                Host::Seg(d) => dying.extend(self.seg_mut(*d).child.take()),
                Host::Arbiter => {
                    dying.extend(self.arb.tool.take());
                    dying.extend(self.arb.child.take());
                }
            }
        }
        for c in &mut dying {
            let _ = c.kill();
        }
        let first: Result<Vec<String>, String> = (|| {
            let mut shown = Vec::new();
            for (i, h) in hosts.iter().enumerate() {
                for (j, f) in self.file_systems(*h).into_iter().enumerate() {
                    let r = f.cut(tear, seed ^ ((i * 4 + j) as u64) << 56)?;
                    shown.push(format!(
                        "{}: {} files, {} bytes, {} entries dropped, {} torn",
                        f.label, r.files, r.bytes, r.entries, r.torn
                    ));
                }
            }
            Ok(shown)
        })();
        for mut c in dying {
            let _ = c.wait();
        }
        // The host comes back in another boot.
        for h in hosts {
            if let Host::Seg(d) = *h {
                let s = self.seg_mut(d);
                s.boots += 1;
                std::fs::write(&s.boot_id, format!("host{d}-boot{}\n", s.boots))
                    .map_err(|e| format!("writing {}: {e}", s.boot_id.display()))?;
            }
        }
        let mut shown = first?;
        // A namespace request under way (no file handle) may have landed
        // after the cut: cut again, without a tear, so nothing it did stays.
        for h in hosts {
            for f in self.file_systems(*h) {
                let r = f.cut(false, 0)?;
                if r.files + r.entries > 0 {
                    shown.push(format!(
                        "{} after the processes died: {} files, {} entries dropped",
                        f.label, r.files, r.entries
                    ));
                }
            }
        }
        Ok(shown.join("; "))
    }

    /// Restart every process that is not running.
    fn restart(&mut self) -> Result<(), String> {
        kill(&mut self.arb.tool);
        for dbid in [2, 3] {
            if self.seg(dbid).child.is_none() {
                self.start_seg(dbid)?;
            }
        }
        if self.arb.child.is_none() {
            self.start_arbiter()?;
        }
        Ok(())
    }

    /// A process that exited on its own is a failure (a segment that cannot
    /// serve its role shows in its status, which `settle` reports).
    fn check_alive(&mut self) -> Result<(), String> {
        for s in &mut self.segs {
            if let Some(c) = &mut s.child {
                if let Ok(Some(st)) = c.try_wait() {
                    s.child = None;
                    return Err(format!("segment {} exited ({st}):\n{}", s.dbid, tail(&s.log, 30)));
                }
            }
        }
        if let Some(c) = &mut self.arb.child {
            if let Ok(Some(st)) = c.try_wait() {
                self.arb.child = None;
                return Err(format!("the arbiter exited ({st}):\n{}", tail(&self.arb.log, 30)));
            }
        }
        Ok(())
    }

    /// Run `filerep recover` until the pair is synchronized and streaming.
    fn settle(&mut self, limit: Duration) -> Result<usize, String> {
        let start = Instant::now();
        let mut runs = 0;
        let mut last = String::new();
        loop {
            self.check_alive()?;
            if start.elapsed() > limit {
                return Err(format!(
                    "not synchronized after {limit:?} ({runs} recover runs); last recover said: {last}\ncatalog: {:#?}\nsegment 2: {:?}\nsegment 3: {:?}",
                    self.catalog().map(|c| c.pairs[0].pair.clone()),
                    self.status(2),
                    self.status(3)
                ));
            }
            let Some(cat) = self.catalog() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let p = &cat.pairs[0].pair;
            let pd = p.acting_primary().dbid;
            let md = if pd == 2 { 3 } else { 2 };
            let (ps, ms) = (self.status(pd), self.status(md));
            let streaming = ps.as_ref().is_some_and(|s| s.acting == Acting::Primary && s.mode == 's');
            let serving = ms.as_ref().is_some_and(|s| s.acting == Acting::Mirror && !s.changes_pending);
            if p.mode == PairMode::Synchronized && !p.down && streaming && serving {
                return Ok(runs);
            }
            let up = p.segments.iter().all(|s| s.up) || (p.down && p.acting_primary().up);
            if up && ps.is_some() && ms.is_some() && p.mode != PairMode::Synchronized {
                runs += 1;
                let (code, out) = self.tool("recover", &[]);
                if code != 0 {
                    last = out;
                    std::thread::sleep(Duration::from_millis(200));
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn roots(&self, dbid: u32) -> Vec<PathBuf> {
        FS.iter().map(|n| self.seg(dbid).data.mountpoint.join(n)).collect()
    }

    fn start_writers(&mut self, seed: u64, stop: &Arc<AtomicBool>) -> Result<Vec<Running>, String> {
        let mut out = Vec::new();
        for mut m in std::mem::take(&mut self.writers) {
            let mut cl = self.client()?;
            let stop = stop.clone();
            out.push(std::thread::spawn(move || {
                let r = m.run(&mut cl, seed, &stop);
                (m, r)
            }));
        }
        Ok(out)
    }

    fn stop_writers(&mut self, running: Vec<Running>, stop: &AtomicBool) -> Vec<String> {
        stop.store(true, Ordering::SeqCst);
        let mut ends = Vec::new();
        for h in running {
            let (m, r) = h.join().expect("writer thread");
            ends.push(format!("w{}: {}", m.w, r.err().unwrap_or_else(|| "stopped".into())));
            self.writers.push(m);
        }
        self.writers.sort_by_key(|m| m.w);
        ends
    }
}

// ---- a round ------------------------------------------------------------------

/// Bring the cluster into the round's phase, with writers running; the
/// writers that run when the cut comes.
fn prepare(c: &mut Cluster, plan: &Plan, stop: &Arc<AtomicBool>) -> Result<Vec<Running>, String> {
    let mut running = c.start_writers(plan.workload, stop)?;
    let (p, m) = c.roles().ok_or("no catalog")?;
    let tracking = |c: &Cluster| c.status(p).is_some_and(|s| s.mode == 'c');
    match plan.phase {
        Phase::Synchronized | Phase::Failover => {}
        Phase::ChangeTracking => {
            kill(&mut c.seg_mut(m).child);
            c.wait("change tracking", Duration::from_secs(20), tracking)?;
        }
        Phase::IncrementalResync | Phase::FullResync => {
            kill(&mut c.seg_mut(m).child);
            c.wait("change tracking", Duration::from_secs(20), tracking)?;
            std::thread::sleep(Duration::from_millis(300)); // writes to resync
            c.start_seg(m)?;
            c.wait("the mirror to serve", Duration::from_secs(20), |c| {
                c.status(m).is_some_and(|s| s.acting == Acting::Mirror)
            })?;
            c.start_tool(if plan.phase == Phase::FullResync { &["-F"] } else { &[] });
        }
        Phase::Return => {
            // The writers follow the promotion onto the new primary.
            let ends = c.stop_writers(running, stop);
            stop.store(false, Ordering::SeqCst);
            kill(&mut c.seg_mut(p).child);
            c.wait("the promotion", Duration::from_secs(20), |c| {
                c.status(m).is_some_and(|s| s.acting == Acting::Primary && s.mode == 'c')
            })?;
            // A call that failed at the kill may have landed or not: the model keeps both.
            drop(ends);
            running = c.start_writers(plan.workload ^ 1, stop)?;
            std::thread::sleep(Duration::from_millis(200));
            c.start_seg(p)?;
            c.wait("the old primary to serve as mirror", Duration::from_secs(20), |c| {
                c.status(p).is_some_and(|s| s.acting == Acting::Mirror)
            })?;
            c.start_tool(&[]);
        }
    }
    Ok(running)
}

/// Where the round's cut landed: the acting primary's mode (`s`, `c`, `r`,
/// `d` deciding, `f` failed), or for a failover whether the promotion was
/// still under way.
fn landed(c: &Cluster, plan: &Plan, primary: u32, mirror: u32) -> String {
    if plan.phase == Phase::Failover {
        let promoted = c.status(mirror).is_some_and(|s| s.acting == Acting::Primary && s.mode == 'c');
        return if promoted { "after the promotion".into() } else { "during the promotion".into() };
    }
    c.status(primary).map(|s| format!("mode {}", s.mode)).unwrap_or_else(|| "no answer".into())
}

/// What the round looked like when the power went (for the summary).
fn moment(c: &Cluster, primary: u32) -> String {
    let s = c.status(primary);
    match s {
        Some(s) => format!(
            "primary {primary} mode {}{}",
            s.mode,
            s.resync
                .filter(|_| s.mode == 'r')
                .map(|r| format!(" ({} of {} blocks shipped)", r.blocks_done, r.blocks_total))
                .unwrap_or_default()
        ),
        None => format!("primary {primary} not answering"),
    }
}

/// One round: its story, and where its cut landed.
fn round(c: &mut Cluster, plan: &Plan) -> Result<(String, String), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let running = prepare(c, plan, &stop)?;
    let (p, m) = c.roles().ok_or("no catalog")?;
    let (seen, at, dropped) = if plan.phase == Phase::Failover {
        let first = c.cut(&[Host::Seg(p)], plan.tear, plan.seed)?;
        std::thread::sleep(Duration::from_millis(plan.delay_ms));
        let seen = format!("mirror {m}: {:?}", c.status(m).map(|s| (s.acting, s.mode)));
        let at = landed(c, plan, p, m);
        let second = c.cut(&plan.victims.hosts(p, m), plan.tear, plan.seed ^ 1)?;
        (seen, at, format!("{first}; {second}"))
    } else {
        std::thread::sleep(Duration::from_millis(plan.delay_ms));
        // Aimed: cut at once, and look after (the primary, not cut, tells).
        let (seen, at, dropped) = match aim::wait(c, plan, p) {
            Some(aimed) => {
                let dropped = c.cut(&plan.victims.hosts(p, m), plan.tear, plan.seed)?;
                (moment(c, p) + &aimed, landed(c, plan, p, m), dropped)
            }
            None => {
                let (seen, at) = (moment(c, p), landed(c, plan, p, m));
                (seen, at, c.cut(&plan.victims.hosts(p, m), plan.tear, plan.seed)?)
            }
        };
        (seen, at, dropped)
    };
    let ends = c.stop_writers(running, &stop);
    let runs = restart_and_check(c, &dropped)?;
    Ok((format!("at the cut: {seen}; writers: {}; {runs} recover runs; {dropped}", ends.join(", ")), at))
}

/// After a cut: every process back, `filerep recover` until the pair is
/// synchronized, then every promise kept on the acting primary and the
/// copies identical; the writers' models start again from what is there.
/// The recover runs it took.
fn restart_and_check(c: &mut Cluster, dropped: &str) -> Result<usize, String> {
    c.restart()?;
    let runs = c.settle(SETTLE)?;
    let (p, _) = c.roles().ok_or("no catalog after settling")?;
    let roots = c.roots(p);
    let roots: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
    let bad: Vec<String> = c.writers.iter().flat_map(|w| w.check(&roots)).collect();
    if !bad.is_empty() {
        return Err(format!(
            "acknowledged syncs lost on the acting primary {p}:\n  {}\nwhat the cut dropped: {dropped}",
            bad.join("\n  ")
        ));
    }
    let (code, out) = c.tool("verify", &[]);
    if code != 0 {
        return Err(format!("filerep verify does not find the copies identical (exit {code}):\n{out}"));
    }
    let mut cl = c.client()?;
    for w in &mut c.writers {
        w.rebase(&mut cl, &roots)?;
    }
    Ok(runs)
}

/// Rule 8 on real processes: the acting primary's data file system fails
/// one fdatasync with EIO and lets that file's dirty pages go, as Linux
/// does after a failed writeback (a later fsync succeeds without writing
/// them). The primary must fault (its status says so, and no call it
/// answers after reports anything durable), then its host loses power: after
/// the restart and `filerep recover`, every promise the writers were given
/// is on the acting primary and the copies are identical. A primary that
/// retried the fsync, or went on, would have promised pages the cut takes.
#[test]
fn a_failed_fdatasync_faults_the_primary_and_breaks_no_promise() {
    if !fuse_here("a_failed_fdatasync_faults_the_primary_and_breaks_no_promise") {
        return;
    }
    let mut c = Cluster::start(LEVELS[0], SYNC_LATENCY_US[0], Vec::new());
    for round in 1..=2u64 {
        let r = (|| -> Result<String, String> {
            let stop = Arc::new(AtomicBool::new(false));
            let running = c.start_writers(0xf5_0000 + round, &stop)?;
            let (p, _) = c.roles().ok_or("no catalog")?;
            let before = c.seg(p).data.status()?.failed_syncs;
            // Into a stream of writes and syncs.
            std::thread::sleep(Duration::from_millis(300));
            c.seg(p).data.fail_next_sync()?;
            c.wait("the primary's fdatasync to fail", Duration::from_secs(30), |c| {
                c.seg(p).data.status().is_ok_and(|r| r.failed_syncs > before)
            })?;
            let ends = c.stop_writers(running, &stop);
            // Faulted: it takes no more changes.
            let refused = match c.client()?.create(0, &format!("after-the-failed-fsync-{round}")) {
                Ok(()) => return Err(format!("primary {p} took a change after its fdatasync failed")),
                Err(e) if e.class() == Some(ErrorClass::Faulted) => e.to_string(),
                Err(e) => return Err(format!("primary {p} refused a change, but not as faulted: {e}")),
            };
            let dropped = c.cut(&[Host::Seg(p)], false, round)?;
            let runs = restart_and_check(&mut c, &dropped)?;
            Ok(format!(
                "primary {p} refused a change ({refused}); writers: {}; {runs} recover runs; {dropped}",
                ends.join(", ")
            ))
        })();
        match r {
            Ok(story) => say(format!("failed fdatasync round {round}: ok; {story}")),
            Err(e) => {
                let kept = std::mem::replace(&mut c.dir, tempfile::tempdir().unwrap()).keep();
                panic!("failed fdatasync round {round}: {e}\nlogs kept under {}", kept.display());
            }
        }
    }
}

// ---- the test -------------------------------------------------------------------

/// Whether FUSE can be mounted here. Where it cannot, test `name` is
/// skipped with the reason, unless `FILEREP_REQUIRE_FUSE=1` (CI), which
/// makes that a failure.
fn fuse_here(name: &str) -> bool {
    let Some(why) = forgetfs::fuse_unavailable() else { return true };
    if std::env::var_os("FILEREP_REQUIRE_FUSE").is_some_and(|v| v == "1") {
        panic!("{name}: FILEREP_REQUIRE_FUSE=1 but {why}");
    }
    say(format!("SKIPPED {name}: {why}"));
    false
}

#[test]
fn power_cuts_of_real_processes() {
    if !fuse_here("power_cuts_of_real_processes") {
        return;
    }
    let rounds = env_u64("FILEREP_POWERCUT_ROUNDS", 21);
    let first = env_u64("FILEREP_POWERCUT_SEED", 1);
    let plant = std::env::var("FILEREP_POWERCUT_PLANT").ok().filter(|p| !p.is_empty());
    let env: Vec<(String, String)> = plant.iter().map(|p| ("FILEREP_PLANTED_BUG".to_string(), p.clone())).collect();
    let started = Instant::now();
    say(format!(
        "{rounds} rounds, seeds {first}..{}{}",
        first + rounds,
        plant.as_ref().map(|p| format!(", planted bug {p}")).unwrap_or_default()
    ));
    let mut done = 0u64;
    let (mut calls, mut syncs) = (0u64, 0u64);
    let mut landings: std::collections::BTreeMap<(String, String), u64> = Default::default();
    // Rounds of one sync level share a cluster.
    for level in 0..3u64 {
        let seeds: Vec<u64> = (first..first + rounds).filter(|s| s % 3 == level).collect();
        if seeds.is_empty() {
            continue;
        }
        let t = Instant::now();
        let (name, latency) = (LEVELS[level as usize], SYNC_LATENCY_US[level as usize]);
        let mut c = Cluster::start(name, latency, env.clone());
        say(format!(
            "cluster at sync level {name}, fsyncs taking {} µs on dbid 2's host and {} µs on dbid 3's, ready in {:?}",
            latency[0],
            latency[1],
            t.elapsed()
        ));
        for seed in seeds {
            let plan = Plan::new(seed);
            let t = Instant::now();
            match round(&mut c, &plan) {
                Ok((story, at)) => {
                    done += 1;
                    *landings.entry((format!("{:?}", plan.phase), at)).or_insert(0) += 1;
                    say(format!("round {done}/{rounds} {} ({:?}): ok; {story}", plan.describe(), t.elapsed()));
                }
                Err(e) => {
                    let replay = format!(
                        "FILEREP_POWERCUT_SEED={seed} FILEREP_POWERCUT_ROUNDS=1{} cargo test --release --test powercut -- --nocapture",
                        plant.as_ref().map(|p| format!(" FILEREP_POWERCUT_PLANT={p}")).unwrap_or_default()
                    );
                    let logs = format!(
                        "logs under {} (segment.log, arbiter.log, forgetfs.log per file system)",
                        c.dir.path().display()
                    );
                    if let Some(p) = &plant {
                        say(format!(
                            "planted bug {p} caught in round {} of {rounds} ({}): {e}",
                            done + 1,
                            plan.describe()
                        ));
                        return;
                    }
                    // Keep the directory for a look.
                    let kept = std::mem::replace(&mut c.dir, tempfile::tempdir().unwrap()).keep();
                    panic!(
                        "round {} {} failed: {e}\nreplay: {replay}\n{logs} (kept: {})",
                        done + 1,
                        plan.describe(),
                        kept.display()
                    );
                }
            }
        }
        if std::env::var_os("FILEREP_POWERCUT_KEEP").is_some() {
            let kept = std::mem::replace(&mut c.dir, tempfile::tempdir().unwrap()).keep();
            say(format!("kept {} (FILEREP_POWERCUT_KEEP)", kept.display()));
        }
        calls += c.writers.iter().map(|w| w.calls).sum::<u64>();
        syncs += c.writers.iter().map(|w| w.syncs).sum::<u64>();
    }
    if let Some(p) = &plant {
        panic!("planted bug {p} not caught in {rounds} rounds");
    }
    for ((phase, at), n) in &landings {
        say(format!("  {phase}: {n} cut(s) landed {at}"));
    }
    say(format!(
        "{done} rounds (seeds {first}..{}) passed in {:.1} s: {calls} writer calls, {syncs} of them syncs, flushes and directory syncs that returned",
        first + rounds,
        started.elapsed().as_secs_f64()
    ));
}
