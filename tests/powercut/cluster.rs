//! The power-cut tests' cluster: two segment hosts and the arbiter's, each
//! process on forgetfs file systems; starting, cutting and restarting them,
//! settling the pair with `filerep recover`, and the writers that run on it.

use super::common::pair::{
    arbiter_args, exe, free_addr, store_config, try_spawn_ready_with, READY_ARBITER, READY_SEGMENT,
};
use super::plan::Host;
use super::writer::{self, Model};
use super::{ACTIVITY_LIMIT, FS, KEY, WRITERS};
use filerep::cluster::client::Client;
use filerep::cluster::segment::{Acting, SegmentConfig, SegmentRequest, SegmentResponse, SegmentStatus};
use filerep::core::pair::{PairMode, Role};
use filerep::durable::catalog::Catalog;
use filerep::protocol::handshake::ClusterKey;
use forgetfs::process::ForgetFs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---- hosts ------------------------------------------------------------------

/// A segment host: its process, its data and state file systems.
pub(crate) struct SegHost {
    pub(crate) dbid: u32,
    pub(crate) cfg: SegmentConfig,
    pub(crate) cfg_path: PathBuf,
    pub(crate) data: ForgetFs,
    pub(crate) state: ForgetFs,
    pub(crate) child: Option<Child>,
    pub(crate) log: PathBuf,
    /// The host's boot id (`FILEREP_BOOT_ID_FILE`), changed by every power
    /// cut of the host: a cut is a reboot.
    pub(crate) boot_id: PathBuf,
    pub(crate) boots: u64,
}

/// The arbiter's host: the arbiter, `filerep recover` when it runs, the catalog.
pub(crate) struct ArbiterHost {
    pub(crate) listen: String,
    pub(crate) catalog: PathBuf,
    pub(crate) fs: ForgetFs,
    pub(crate) child: Option<Child>,
    pub(crate) tool: Option<Child>,
    pub(crate) log: PathBuf,
}

pub(crate) fn kill(c: &mut Option<Child>) {
    if let Some(mut c) = c.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub(crate) fn log_file(path: &Path) -> Stdio {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log file");
    Stdio::from(f)
}

/// The last lines of a log, for a failure message.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- the cluster ------------------------------------------------------------

pub(crate) struct Cluster {
    pub(crate) segs: Vec<SegHost>,
    pub(crate) arb: ArbiterHost,
    pub(crate) key: ClusterKey,
    pub(crate) key_file: PathBuf,
    pub(crate) writers: Vec<Model>,
    /// Each writer's count of writes sent into its sparse file (its model
    /// is away in its thread while it runs).
    pub(crate) sparse_sent: Vec<Arc<std::sync::atomic::AtomicU64>>,
    /// Each host's fsync latency, microseconds (dbid 2's, dbid 3's).
    pub(crate) sync_latency_us: [u64; 2],
    /// `FILEREP_PLANTED_BUG` for every filerep process, if set.
    pub(crate) env: Vec<(String, String)>,
    /// Last: removed once every file system in it is unmounted.
    pub(crate) dir: tempfile::TempDir,
}

/// A writer thread: its model comes back with how it ended.
pub(crate) type Running = std::thread::JoinHandle<(Model, Result<(), String>)>;

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
    pub(crate) fn start(level: &str, sync_latency_us: [u64; 2], env: Vec<(String, String)>) -> Cluster {
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
                mounts: Vec::new(),
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

    pub(crate) fn seg(&self, dbid: u32) -> &SegHost {
        self.segs.iter().find(|s| s.dbid == dbid).expect("dbid")
    }

    pub(crate) fn seg_mut(&mut self, dbid: u32) -> &mut SegHost {
        self.segs.iter_mut().find(|s| s.dbid == dbid).expect("dbid")
    }

    pub(crate) fn start_seg(&mut self, dbid: u32) -> Result<(), String> {
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

    pub(crate) fn start_arbiter(&mut self) -> Result<(), String> {
        let args = arbiter_args(&self.arb.catalog, &self.key_file, &self.arb.listen);
        match try_spawn_ready_with(&args, READY_ARBITER, &self.env, log_file(&self.arb.log)) {
            Ok((child, _)) => {
                self.arb.child = Some(child);
                Ok(())
            }
            Err(e) => Err(format!("the arbiter refused to start: {e}\n{}", tail(&self.arb.log, 20))),
        }
    }

    pub(crate) fn status(&self, dbid: u32) -> Option<SegmentStatus> {
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

    pub(crate) fn catalog(&self) -> Option<Catalog> {
        filerep::cluster::probe::fetch_catalog(&self.arb.listen, &self.key, Duration::from_secs(2)).ok()
    }

    /// (acting primary, mirror) as the catalog has them.
    pub(crate) fn roles(&self) -> Option<(u32, u32)> {
        let p = self.catalog()?.pairs[0].pair.clone();
        let primary = p.segments.iter().find(|s| s.role == Role::Primary)?.dbid;
        Some((primary, if primary == 2 { 3 } else { 2 }))
    }

    pub(crate) fn client(&self) -> Result<Client, String> {
        let (p, _) = self.roles().ok_or("no catalog")?;
        Client::connect(&self.seg(p).cfg.socket).map_err(|e| format!("client of segment {p}: {e}"))
    }

    pub(crate) fn wait(&self, what: &str, limit: Duration, cond: impl Fn(&Cluster) -> bool) -> Result<(), String> {
        let start = Instant::now();
        while !cond(self) {
            if start.elapsed() > limit {
                return Err(format!("timed out after {limit:?} waiting for {what}; catalog: {:?}", self.catalog()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub(crate) fn tool_args(&self, name: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> =
            [name, "--arbiter", &self.arb.listen, "--key-file"].iter().map(|s| s.to_string()).collect();
        a.push(self.key_file.display().to_string());
        a.extend(["--json", "--timeout", "30"].iter().map(|s| s.to_string()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// Run `filerep recover`/`verify` to the end: exit code and output.
    pub(crate) fn tool(&self, name: &str, extra: &[&str]) -> (i32, String) {
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
    pub(crate) fn start_tool(&mut self, extra: &[&str]) {
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
    pub(crate) fn file_systems(&self, h: Host) -> Vec<&ForgetFs> {
        match h {
            Host::Seg(d) => vec![&self.seg(d).data, &self.seg(d).state],
            Host::Arbiter => vec![&self.arb.fs],
        }
    }

    /// Power cut: SIGKILL every process of each host, then the forgetfs
    /// cut of its file systems. What was dropped, for the round's log.
    pub(crate) fn cut(&mut self, hosts: &[Host], tear: bool, seed: u64) -> Result<String, String> {
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
    pub(crate) fn restart(&mut self) -> Result<(), String> {
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
    pub(crate) fn check_alive(&mut self) -> Result<(), String> {
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
    pub(crate) fn settle(&mut self, limit: Duration) -> Result<usize, String> {
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

    pub(crate) fn roots(&self, dbid: u32) -> Vec<PathBuf> {
        FS.iter().map(|n| self.seg(dbid).data.mountpoint.join(n)).collect()
    }

    pub(crate) fn start_writers(&mut self, seed: u64, stop: &Arc<AtomicBool>) -> Result<Vec<Running>, String> {
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

    pub(crate) fn stop_writers(&mut self, running: Vec<Running>, stop: &AtomicBool) -> Vec<String> {
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
