//! `filerep bench --resync`: resync cost against the changed set, beside
//! rsync on the same directories in the same run.
//!
//! One data set (default 2 GiB in 64 MiB files) is written to a primary
//! directory and copied to a mirror directory. A primary in change tracking
//! then overwrites 1 %, 10 % and 100 % of the blocks in turn; after each, a
//! mirror daemon is started on the mirror directory, taken back, and resynced
//! incrementally (timed from the connection to the durable end); for 1 % a
//! copy of the diverged mirror is brought up to date with `rsync -a
//! --inplace --no-whole-file` instead (timed). Finally a full resync builds
//! an empty mirror directory, beside `rsync -a -W` into another empty one.
//! The resync times include making everything durable on the mirror; plain
//! rsync does not sync, so `rsync -W` is timed a second time followed by a
//! `syncfs` of its target. The disk's own sequential write rate (O_DIRECT,
//! 1 MiB writes, 32 in flight) is measured in the same run: what a full
//! resync could reach at best.

use crate::process::{MirrorArgs, MirrorProcess};
use filerep::config::{Filespace, PairIdentity, StreamTuning, SyncLevel};
use filerep::durable::changelog::ChangeLog;
use filerep::error::{Error, Result};
use filerep::io::disk::{FsPath, StdDisk};
use filerep::protocol::handshake::ClusterKey;
use filerep::protocol::path::RelPath;
use filerep::runtime::arbiter::{Decision, FixedArbiter};
use filerep::runtime::primary::{ChangeTracking, Mode, Primary, PrimaryConfig};
use filerep::runtime::resync::{self, Progress, ResyncOptions};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ResyncBenchConfig {
    pub dir: PathBuf,
    pub data_bytes: u64,
    pub block_size: u32,
    pub prefer_uring: bool,
    pub exe: PathBuf,
    /// Print a line per step on stderr.
    pub verbose: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResyncBenchReport {
    pub data_bytes: u64,
    pub block_size: u32,
    pub files: u64,
    pub incremental_1pct_s: f64,
    pub incremental_10pct_s: f64,
    pub incremental_100pct_s: f64,
    pub full_s: f64,
    /// Bytes of the data set over `full_s`, MB/s (10^6 bytes).
    pub full_resync_mb_s: f64,
    /// CPU seconds the full resync took: the machine's, this process's, the mirror daemon's.
    pub full_cpu: StepCpu,
    /// The disk's sequential write rate, MB/s: O_DIRECT, 1 MiB writes, 32
    /// in flight, the data set's size, then fdatasync.
    pub disk_seq_write_mb_s: f64,
    /// `full_resync_mb_s` over `disk_seq_write_mb_s` (target ≥ 0.8).
    pub full_over_disk: f64,
    pub rsync_inplace_1pct_s: f64,
    pub rsync_whole_s: f64,
    /// `rsync -a -W` into an empty directory and a `syncfs` of it: durable,
    /// as the full resync's end is.
    pub rsync_whole_sync_s: f64,
    /// rsync --inplace at 1 % over the incremental resync at 1 % (target ≥ 20).
    pub speedup_1pct: f64,
    /// rsync -W over the full resync.
    pub speedup_full: f64,
    /// rsync -W with its sync over the full resync (target ≥ 1.5).
    pub speedup_full_sync: f64,
}

const FILE_BYTES: u64 = 64 << 20;
const CLUSTER: u64 = 0x5e5c;

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(what.to_string(), e)
}

fn fresh(p: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(p);
    std::fs::create_dir_all(p).map_err(io("creating a benchmark directory"))
}

/// Every step starts with nothing dirty in the page cache: write-back of an
/// earlier step (or of a copy made for rsync) must not slow the next.
fn quiet_disk() {
    nix::unistd::sync();
}

/// Seconds of `rsync args`, and of a `syncfs` of `sync_target` after it when given.
fn rsync(args: &[&str], sync_target: Option<&Path>) -> Result<f64> {
    quiet_disk();
    let t = Instant::now();
    let out = Command::new("rsync")
        .args(args)
        .output()
        .map_err(|e| Error::io("running rsync (install it to compare: apt-get install rsync)".to_string(), e))?;
    if !out.status.success() {
        return Err(Error::InvalidArgument(format!("rsync failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    if let Some(dir) = sync_target {
        let d = std::fs::File::open(dir).map_err(io("opening rsync's target"))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d))
            .map_err(|e| Error::io("syncfs of rsync's target".to_string(), e.into()))?;
    }
    Ok(t.elapsed().as_secs_f64())
}

struct Bench<'a> {
    cfg: &'a ResyncBenchConfig,
    key_file: PathBuf,
    key: ClusterKey,
    mirror_dir: PathBuf,
    primary: Primary,
    files: u64,
    blocks_per_file: u64,
    /// The CPU time of the last resync step.
    last_cpu: std::cell::Cell<StepCpu>,
}

/// CPU seconds of one resync step: the machine's (every process and the
/// kernel's own work), this process's (the primary) and the mirror daemon's.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StepCpu {
    pub machine_s: f64,
    pub primary_s: f64,
    pub mirror_s: f64,
}

impl Bench<'_> {
    fn say(&self, msg: &str) {
        if self.cfg.verbose {
            eprintln!("bench --resync: {msg}");
        }
    }

    /// Overwrite `pct` % of all blocks (distinct, random) in change tracking.
    fn diverge(&self, pct: u64, seed: u64) -> Result<()> {
        let total = self.files * self.blocks_per_file;
        let n = (total * pct / 100).max(1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut block = vec![0u8; self.cfg.block_size as usize];
        let picks: Vec<u64> = if pct >= 100 {
            (0..total).collect()
        } else {
            let mut set = std::collections::BTreeSet::new();
            while (set.len() as u64) < n {
                set.insert(rng.gen_range(0..total));
            }
            set.into_iter().collect()
        };
        for b in picks {
            rng.fill(&mut block[..]);
            let (f, i) = (b / self.blocks_per_file, b % self.blocks_per_file);
            self.primary.write_block(0, &format!("data/f{f:04}"), i, &block)?;
        }
        if self.primary.mode() != Mode::ChangeTracking {
            return Err(Error::InvalidArgument("the primary should be alone here".into()));
        }
        Ok(())
    }

    /// Start a mirror daemon on `dir`, take it back, resync; seconds from
    /// the connection to the durable end. The daemon is then stopped and
    /// the primary goes back to change tracking.
    fn resync_into(&self, dir: &Path, full: bool) -> Result<f64> {
        quiet_disk();
        let mut daemon = MirrorProcess::spawn(
            &self.cfg.exe,
            &MirrorArgs {
                filespaces: vec![Filespace { name: "pg_system".into(), root: dir.to_path_buf() }],
                key_file: self.key_file.clone(),
                cluster_id: CLUSTER,
                content_id: 0,
                block_size: self.cfg.block_size,
                generation: 1,
                listen: "127.0.0.1:0".into(),
                extra: if self.cfg.prefer_uring { vec![] } else { vec!["--std-io".into()] },
            },
        )?;
        let pids = [std::process::id(), daemon.pid];
        let cpu0 = crate::cpu::Sample::now(&pids);
        let t = Instant::now();
        let stream = std::net::TcpStream::connect(daemon.addr).map_err(io("connecting to the mirror"))?;
        let conn = filerep::io::net::tcp(stream).map_err(io("configuring the connection"))?;
        self.primary.attach_mirror(conn, &daemon.addr.to_string())?;
        let opts = ResyncOptions {
            full,
            max_rate: None,
            finish_timeout: Some(Duration::from_secs(600)),
            checkpoint_bytes: None,
            compare: false,
            planted: None,
        };
        let r = resync::run(&self.primary, &opts, &Progress::default())?;
        let secs = t.elapsed().as_secs_f64();
        let (machine, procs) = crate::cpu::Sample::now(&pids).since(&cpu0);
        let tick = crate::cpu::ticks_per_second();
        let cpu = StepCpu {
            machine_s: machine as f64 / tick,
            primary_s: procs[0] as f64 / tick,
            mirror_s: procs[1] as f64 / tick,
        };
        self.say(&format!(
            "{:.3} s: {:.3} s to connect and take the mirror back, {:.3} s to ship {} blocks, {:.3} s until durable; \
             CPU {:.2} s (this process {:.2} s, mirror daemon {:.2} s)",
            secs,
            secs - r.seconds,
            r.seconds - r.durable_wait_seconds,
            r.blocks,
            r.durable_wait_seconds,
            cpu.machine_s,
            cpu.primary_s,
            cpu.mirror_s
        ));
        self.last_cpu.set(cpu);
        // Back to change tracking for the next step: the mirror goes away.
        daemon.kill();
        for _ in 0..100 {
            if self.primary.write_block(0, "data/f0000", 0, &vec![0u8; self.cfg.block_size as usize]).is_ok()
                && self.primary.mode() == Mode::ChangeTracking
            {
                return Ok(secs);
            }
        }
        let _ = &self.key;
        Err(Error::InvalidArgument(format!(
            "the primary did not go back to change tracking: {:?}",
            self.primary.mode()
        )))
    }
}

pub fn run(cfg: &ResyncBenchConfig) -> Result<ResyncBenchReport> {
    filerep::config::check_block_size(cfg.block_size)?;
    if cfg.data_bytes < FILE_BYTES || cfg.data_bytes > 1 << 40 {
        return Err(Error::InvalidArgument(format!("data size {}: give 64 MiB to 1 TiB", cfg.data_bytes)));
    }
    let root = cfg.dir.join("resync-bench");
    let (pdir, mdir, state) = (root.join("primary"), root.join("mirror"), root.join("state"));
    for d in [&pdir, &mdir, &state] {
        fresh(d)?;
    }
    let bs = cfg.block_size as u64;
    let files = cfg.data_bytes / FILE_BYTES;
    let blocks_per_file = FILE_BYTES / bs;
    // The data set, then an identical mirror copy.
    std::fs::create_dir_all(pdir.join("data")).map_err(io("creating the data set"))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut chunk = vec![0u8; 4 << 20];
    for f in 0..files {
        let path = pdir.join(format!("data/f{f:04}"));
        let mut out = std::fs::File::create(&path).map_err(io("writing the data set"))?;
        for _ in 0..FILE_BYTES / chunk.len() as u64 {
            rng.fill(&mut chunk[..]);
            std::io::Write::write_all(&mut out, &chunk).map_err(io("writing the data set"))?;
        }
    }
    let copy = |to: &Path| -> Result<()> {
        fresh(to)?;
        std::fs::create_dir_all(to.join("data")).map_err(io("copying the data set"))?;
        for f in 0..files {
            let name = format!("data/f{f:04}");
            std::fs::copy(pdir.join(&name), to.join(&name)).map_err(io("copying the data set"))?;
            // An old time: rsync's quick check (size and time) must see every
            // file the primary changes later, even within the same second.
            let f = std::fs::File::options().write(true).open(to.join(&name)).map_err(io("copying the data set"))?;
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
                .map_err(io("setting the copy's time"))?;
            // Written back now, so a resync's syncs pay only for its own writes.
            f.sync_all().map_err(io("syncing the copy"))?;
        }
        Ok(())
    };
    copy(&mdir)?;
    // The data set on disk too: each step starts from a quiet disk.
    for f in 0..files {
        let name = pdir.join(format!("data/f{f:04}"));
        std::fs::File::open(&name).and_then(|f| f.sync_all()).map_err(io("syncing the data set"))?;
    }
    // A primary alone (change tracking), recording the divergence.
    let key_file = root.join("cluster.key");
    std::fs::write(&key_file, b"resync benchmark cluster key, not secret").map_err(io("writing the key"))?;
    let key = ClusterKey::from_file(&key_file).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let state_disk = Arc::new(StdDisk::open(std::slice::from_ref(&state))?);
    let log = Arc::new(ChangeLog::create(state_disk, FsPath::new(0, RelPath::new("changelog")?), cfg.block_size)?);
    let pcfg = PrimaryConfig {
        identity: PairIdentity { cluster_id: CLUSTER, content_id: 0, block_size: cfg.block_size, generation: 1 },
        filespaces: vec![Filespace { name: "pg_system".into(), root: pdir.clone() }],
        key: key.clone(),
        sync_level: SyncLevel::Applied,
        tuning: StreamTuning::default(),
        prefer_uring: cfg.prefer_uring,
        direct: false,
        change_tracking: Some(ChangeTracking {
            changelog: log,
            arbiter: Arc::new(FixedArbiter(Decision::MirrorDown)),
            decision_timeout: Duration::from_secs(10),
        }),
    };
    let disk = filerep::io::disk::open_local(std::slice::from_ref(&pdir), cfg.prefer_uring)?;
    let primary = Primary::start_alone(pcfg, disk, "benchmark: the mirror starts down")?;
    let b = Bench {
        cfg,
        key_file,
        key,
        mirror_dir: mdir.clone(),
        primary,
        files,
        blocks_per_file,
        last_cpu: Default::default(),
    };
    let rsync_copy = root.join("rsync-inplace");

    b.say("1 %: diverge, copy the diverged mirror for rsync, resync");
    b.diverge(1, 11)?;
    copy_tree(&mdir, &rsync_copy)?;
    let incremental_1pct_s = b.resync_into(&b.mirror_dir, false)?;
    let p = format!("{}/", pdir.display());
    let rsync_inplace_1pct_s =
        rsync(&["-a", "--inplace", "--no-whole-file", &p, &format!("{}/", rsync_copy.display())], None)?;
    let _ = std::fs::remove_dir_all(&rsync_copy);
    b.say("10 %");
    b.diverge(10, 12)?;
    let incremental_10pct_s = b.resync_into(&b.mirror_dir, false)?;
    b.say("100 %");
    b.diverge(100, 13)?;
    let incremental_100pct_s = b.resync_into(&b.mirror_dir, false)?;
    b.say("full resync into an empty directory, and rsync -W into another");
    fresh(&mdir)?;
    let full_s = b.resync_into(&mdir, true)?;
    let full_cpu = b.last_cpu.get();
    let whole = root.join("rsync-whole");
    fresh(&whole)?;
    let rsync_whole_s = rsync(&["-a", "-W", &p, &format!("{}/", whole.display())], None)?;
    fresh(&whole)?;
    let rsync_whole_sync_s = rsync(&["-a", "-W", &p, &format!("{}/", whole.display())], Some(&whole))?;
    let _ = std::fs::remove_dir_all(&whole);
    b.say("the disk's sequential write rate (O_DIRECT, 1 MiB writes, 32 in flight)");
    quiet_disk();
    let data_bytes = files * FILE_BYTES;
    let disk_seq = filerep::io::disk::sequential_write_rate(&root.join("sequential-write"), data_bytes)?;
    b.primary.shutdown(Duration::from_secs(30))?;
    drop(b);
    let _ = std::fs::remove_dir_all(&root);
    let full_resync_mb_s = data_bytes as f64 / full_s.max(1e-9) / 1e6;
    let disk_seq_write_mb_s = disk_seq / 1e6;
    Ok(ResyncBenchReport {
        data_bytes,
        block_size: cfg.block_size,
        files,
        incremental_1pct_s,
        incremental_10pct_s,
        incremental_100pct_s,
        full_s,
        full_resync_mb_s,
        full_cpu,
        disk_seq_write_mb_s,
        full_over_disk: full_resync_mb_s / disk_seq_write_mb_s.max(1e-9),
        rsync_inplace_1pct_s,
        rsync_whole_s,
        rsync_whole_sync_s,
        speedup_1pct: rsync_inplace_1pct_s / incremental_1pct_s.max(1e-9),
        speedup_full: rsync_whole_s / full_s.max(1e-9),
        speedup_full_sync: rsync_whole_sync_s / full_s.max(1e-9),
    })
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fresh(to)?;
    let out =
        Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).output().map_err(io("cp -a"))?;
    if !out.status.success() {
        return Err(Error::InvalidArgument(format!("cp -a failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}
