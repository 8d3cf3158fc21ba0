//! Block-shipping benchmark: the same harness on the same disk in one
//! process, alternating in rounds between a local baseline that writes every
//! block twice (a primary copy and a mirror copy, no network) and a real
//! primary shipping to a real mirror daemon over loopback TCP. Ratios
//! between the two are what the project's performance targets are stated in.
//! (`--mirror-down`: `bench_mirror_down.rs`; `--bare`: `bench_bare.rs`.)

use crate::process::{MirrorArgs, MirrorProcess};
use filerep::config::{Filespace, PairIdentity, StreamTuning, SyncLevel};
use filerep::error::{Error, Result};
use filerep::io::disk::{DiskFile, FsPath, OpenMode};
use filerep::protocol::handshake::{ClusterKey, MAX_NET_CHECK_BYTES};
use filerep::protocol::path::RelPath;
use filerep::runtime::primary::{Primary, PrimaryConfig};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{RngCore, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub writers: usize,
    pub block_size: u32,
    pub sync_level: SyncLevel,
    /// Total time of each side (baseline, replicated) unless `count` is set.
    pub phase: Duration,
    /// The two sides alternate this many times, each round getting an equal
    /// share of `phase` (or `count`).
    pub rounds: u32,
    /// Blocks written per phase (all writers together), instead of a duration.
    pub count: Option<u64>,
    /// Where the files go (put it on the disk under test).
    pub dir: PathBuf,
    /// Blocks per writer's file; writes wrap around this working set.
    pub file_blocks: u64,
    /// Each writer syncs its file after this many writes (0: never).
    pub flush_every: u64,
    pub prefer_uring: bool,
    /// The `filerep` executable that runs the mirror daemon.
    pub exe: PathBuf,
    /// Show a progress bar with ETA on stderr when it is a terminal.
    pub progress: bool,
    /// Run the replicated side as a segment runs: with change tracking
    /// configured, so the activity log covers every write (rule 5).
    pub activity_log: bool,
    /// Two hosts emulated on one machine: this process (the primary and its
    /// writers) on CPU 0, the mirror daemon on CPU 1, and the baseline
    /// writing each block once, on CPU 0.
    pub pin: bool,
    /// A mirror daemon on another host instead of one started here; the
    /// baseline then writes each block once (this host's local disk).
    pub remote: Option<RemoteMirror>,
    /// O_DIRECT for aligned block writes on every side: the baseline, the
    /// primary and the mirror daemon (a remote one is started with
    /// `--direct` by its operator).
    pub direct: bool,
    /// Each round also runs the bare pair ([`crate::bench_bare`]): the same
    /// writes with nothing but the copies, the sends and the waits.
    pub bare: bool,
}

/// `filerep bench --mirror HOST:PORT --key-file F`: a `filerep mirror`
/// started on the other host with a filespace named [`REMOTE_FILESPACE`],
/// this cluster id, this key and the bench's block size.
#[derive(Clone, Debug)]
pub struct RemoteMirror {
    pub addr: String,
    pub key: ClusterKey,
    pub cluster_id: u64,
}

/// The filespace name a remote mirror for the bench must have.
pub const REMOTE_FILESPACE: &str = "bench";
/// The cluster id the bench's pairs use unless told otherwise.
pub const BENCH_CLUSTER_ID: u64 = 0xbe4c;
/// The least a network check sends in a round.
const MIN_NET_CHECK_BYTES: u64 = 64 << 20;

impl BenchConfig {
    /// Whether the baseline writes each block once (one host's writes):
    /// pinned, or with the mirror on another host.
    fn single_copy(&self) -> bool {
        self.pin || self.remote.is_some()
    }
}

/// Run on these CPUs only: this thread, and every thread and process it
/// starts from now on (they inherit it).
fn pin_to(cpus: &[usize]) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c).map_err(|e| Error::InvalidArgument(format!("CPU {c}: {e}")))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| Error::InvalidArgument(format!("cannot run on CPU {cpus:?} only: {e}")))
}

/// The CPUs this thread may run on now.
fn allowed_cpus() -> Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(|e| Error::InvalidArgument(format!("cannot read this process's CPUs: {e}")))?;
    Ok((0..nix::sched::CpuSet::count()).filter(|c| set.is_set(*c).unwrap_or(false)).collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub writers: usize,
    pub block_size: u32,
    pub sync_level: String,
    pub io_backend: String,
    pub activity_log: bool,
    pub rounds: u32,
    pub phase_seconds: f64,
    pub baseline_double_write_mb_s: f64,
    pub baseline_blocks_s: f64,
    pub baseline_write_p50_us: f64,
    pub baseline_write_p99_us: f64,
    pub local_fdatasync_p50_us: f64,
    pub local_fdatasync_p99_us: f64,
    pub replicated_mb_s: f64,
    pub replicated_blocks_s: f64,
    pub write_p50_us: f64,
    pub write_p99_us: f64,
    pub write_p999_us: f64,
    pub flush_p50_us: f64,
    pub flush_p99_us: f64,
    pub wire_bytes_per_block: f64,
    pub wire_overhead_pct: f64,
    pub throughput_ratio: f64,
    pub flush_ratio: f64,
    /// The machine's CPU time (every process and the kernel: user + system
    /// from /proc/stat) per block written, writing each block twice locally.
    pub baseline_cpu_us_per_block: f64,
    /// The same, replicating each block to the mirror daemon.
    pub replicated_cpu_us_per_block: f64,
    /// Replicated over baseline CPU per block.
    pub cpu_ratio: f64,
    /// Copies the baseline writes of each block: 2 (both hosts' writes on
    /// one), or 1 with `--pin` (one host's).
    pub baseline_copies: u32,
    /// With `--pin`: replicated MB/s over one host's single-copy MB/s, the
    /// primary's side and the mirror's each on a CPU of its own.
    pub pinned_ratio: Option<f64>,
    /// Of the replicated CPU per block: this process (the primary and its writers).
    pub replicated_primary_cpu_us_per_block: f64,
    /// Of the replicated CPU per block: the mirror daemon's process (null
    /// with `--mirror`: it runs on the other host).
    pub replicated_mirror_cpu_us_per_block: Option<f64>,
    /// With `--mirror`: the mirror's address.
    pub mirror: Option<String>,
    /// With `--mirror`: the network's own rate to the mirror's host, a raw
    /// stream timed by the same tool in the same rounds (MB/s).
    pub network_mb_s: Option<f64>,
    /// With `--mirror`: replicated MB/s over min(this host's one-copy
    /// local writes, the network), what the hardware allows.
    pub remote_ratio: Option<f64>,
    /// Aligned block writes with O_DIRECT on every side (`--direct`).
    pub direct: bool,
    /// With `--direct`: replicated MB/s over the baseline's, both direct.
    pub direct_ratio: Option<f64>,
    /// With `--bare`: the bare pair's MB/s, its ratio over the baseline (an
    /// upper bound for a pair's ratio here), its CPU per block (the
    /// machine's) and that over the baseline's, and the real pair's MB/s
    /// over the bare pair's.
    pub bare_mb_s: Option<f64>,
    pub bare_ratio: Option<f64>,
    pub bare_write_p50_us: Option<f64>,
    pub bare_cpu_us_per_block: Option<f64>,
    pub bare_cpu_ratio: Option<f64>,
    pub replicated_over_bare: Option<f64>,
}

/// CPU ticks of a side over its phases: the machine's, then each process's.
#[derive(Default)]
struct CpuTicks {
    machine: u64,
    processes: Vec<u64>,
}

impl CpuTicks {
    fn add(&mut self, (machine, processes): (u64, Vec<u64>)) {
        self.machine += machine;
        self.processes.resize(processes.len().max(self.processes.len()), 0);
        for (t, p) in self.processes.iter_mut().zip(processes) {
            *t += p;
        }
    }

    /// µs per block of `ticks`.
    fn per_block(ticks: u64, blocks: u64) -> f64 {
        ticks as f64 / crate::cpu::ticks_per_second() * 1e6 / blocks.max(1) as f64
    }
}

pub(crate) fn hist() -> Histogram<u64> {
    // 1 µs to 60 s at three significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn us(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

pub(crate) struct PhaseResult {
    pub(crate) blocks: u64,
    pub(crate) elapsed: Duration,
    pub(crate) writes: Histogram<u64>,
    pub(crate) flushes: Histogram<u64>,
}

impl PhaseResult {
    pub(crate) fn merge(&mut self, other: &PhaseResult) {
        self.blocks += other.blocks;
        self.elapsed += other.elapsed;
        let _ = self.writes.add(&other.writes);
        let _ = self.flushes.add(&other.flushes);
    }
}

pub(crate) fn mb_s(blocks: u64, bs: u32, d: Duration) -> f64 {
    blocks as f64 * bs as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

pub(crate) fn random_blocks(bs: u32, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..16)
        .map(|_| {
            let mut b = vec![0u8; bs as usize];
            rng.fill_bytes(&mut b);
            b
        })
        .collect()
}

/// Run `body(writer, block_index)` on every writer until the phase ends;
/// `body` returns (write latency, optional flush latency).
pub(crate) fn run_phase<F>(cfg: &BenchConfig, bar: &ProgressBar, body: F) -> Result<PhaseResult>
where
    F: Fn(usize, u64) -> Result<(Duration, Option<Duration>)> + Sync,
{
    let stop = AtomicBool::new(false);
    let per_writer = cfg.count.map(|c| c.div_ceil(cfg.writers as u64));
    let results = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..cfg.writers {
            let (stop, results, body) = (&stop, &results, &body);
            s.spawn(move || {
                let (mut wh, mut fh) = (hist(), hist());
                let mut n = 0u64;
                let r = loop {
                    if stop.load(Ordering::Relaxed) || per_writer.is_some_and(|p| n >= p) {
                        break Ok(());
                    }
                    match body(w, n) {
                        Ok((wd, fd)) => {
                            let _ = wh.record(us(wd));
                            if let Some(fd) = fd {
                                let _ = fh.record(us(fd));
                            }
                            n += 1;
                        }
                        Err(e) => break Err(e),
                    }
                };
                results.lock().unwrap_or_else(|e| e.into_inner()).push((r, n, wh, fh));
            });
        }
        if cfg.count.is_none() {
            // The coordinator's timer: writers check the flag between writes.
            let until = Instant::now() + cfg.phase;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                std::thread::sleep(left.min(Duration::from_millis(100)));
                bar.set_position(bar.position() + 100.min(left.as_millis() as u64));
            }
            stop.store(true, Ordering::Relaxed);
        }
    });
    let elapsed = start.elapsed();
    let (mut writes, mut flushes, mut blocks) = (hist(), hist(), 0);
    for (r, n, wh, fh) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        r?;
        blocks += n;
        let _ = writes.add(&wh);
        let _ = flushes.add(&fh);
    }
    Ok(PhaseResult { blocks, elapsed, writes, flushes })
}

pub(crate) fn fresh_dir(p: &Path) -> Result<()> {
    if p.exists() {
        std::fs::remove_dir_all(p).map_err(|e| Error::io(format!("clearing {}", p.display()), e))?;
    }
    std::fs::create_dir_all(p).map_err(|e| Error::io(format!("creating {}", p.display()), e))
}

pub(crate) fn p50(h: &Histogram<u64>) -> f64 {
    h.value_at_quantile(0.5) as f64
}

pub(crate) fn q(h: &Histogram<u64>, x: f64) -> f64 {
    h.value_at_quantile(x) as f64
}

/// The whole benchmark: baseline, then replicated, then the report.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    if cfg.writers == 0 || cfg.writers > 1024 {
        return Err(Error::InvalidArgument(format!("writers must be 1..=1024, got {}", cfg.writers)));
    }
    if cfg.file_blocks == 0 {
        return Err(Error::InvalidArgument("file blocks must be at least 1".into()));
    }
    if cfg.rounds == 0 || cfg.rounds > 100 {
        return Err(Error::InvalidArgument(format!("rounds must be 1..=100, got {}", cfg.rounds)));
    }
    filerep::config::check_block_size(cfg.block_size)?;
    let bs = cfg.block_size;
    let blocks = random_blocks(bs, 7);
    // Pinned: everything of this process on CPU 0 from here on, put back as it was after.
    let unpinned = allowed_cpus()?;
    if cfg.pin {
        if !(unpinned.contains(&0) && unpinned.contains(&1)) {
            return Err(Error::InvalidArgument(format!(
                "--pin needs CPUs 0 and 1; this process may run on {unpinned:?}"
            )));
        }
        pin_to(&[0])?;
    }
    let report = run_sides(cfg, &blocks);
    if cfg.pin {
        pin_to(&unpinned)?;
    }
    report
}

/// [`run`]'s two sides, and the report.
fn run_sides(cfg: &BenchConfig, blocks: &[Vec<u8>]) -> Result<BenchReport> {
    let bs = cfg.block_size;
    let name = |w: usize| FsPath::new(0, RelPath::new(&format!("bench{w}")).unwrap_or_else(|_| unreachable!()));
    // Each round runs the baseline, then the pair, for an equal share of
    // the time: drift of a shared machine (other tenants, write-back of
    // earlier data) falls on both sides alike.
    let round_cfg = BenchConfig {
        phase: cfg.phase / cfg.rounds,
        count: cfg.count.map(|c| c.div_ceil(cfg.rounds as u64)),
        ..cfg.clone()
    };

    // ---- baseline: every block written twice, locally ----
    let base = cfg.dir.join("baseline");
    let (bp, bm) = (base.join("primary"), base.join("mirror"));
    fresh_dir(&bp)?;
    fresh_dir(&bm)?;
    let disk = filerep::io::disk::open_local_with(&[bp.clone(), bm.clone()], cfg.prefer_uring, cfg.direct)?;
    let backend = disk.name().to_string();
    let mut files: Vec<(Arc<dyn DiskFile>, Arc<dyn DiskFile>)> = Vec::new();
    for w in 0..cfg.writers {
        let p = name(w);
        let a = disk.open(&p, OpenMode::CreateNew)?;
        let b = disk.open(&FsPath::new(1, p.path.clone()), OpenMode::CreateNew)?;
        files.push((a, b));
    }
    let fsync_hist = Mutex::new(hist());

    // ---- replicated: a real primary and a real mirror daemon ----
    let rep = cfg.dir.join("replicated");
    let tracking = if cfg.activity_log { Some(tracking_in(&cfg.dir.join("replicated-state"), bs)?) } else { None };
    let (mirror, primary) = start_pair(cfg, &rep, tracking)?;
    // A remote mirror's CPU is the other host's: only this process is counted.
    let pids: Vec<u32> = std::iter::once(std::process::id()).chain(mirror.as_ref().map(|m| m.pid)).collect();
    for w in 0..cfg.writers {
        primary.create(0, name(w).path.as_str())?;
    }

    // Time-based runs show a bar with ETA on a terminal (hidden otherwise).
    let bar = if cfg.progress && cfg.count.is_none() {
        let sides = if cfg.bare { 3 } else { 2 };
        let b = ProgressBar::new(sides * cfg.phase.as_millis() as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {percent}% ETA {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut baseline = PhaseResult { blocks: 0, elapsed: Duration::ZERO, writes: hist(), flushes: hist() };
    let mut replicated = PhaseResult { blocks: 0, elapsed: Duration::ZERO, writes: hist(), flushes: hist() };
    let mut wire = 0u64;
    // Every phase continues where the last one of its kind stopped in the
    // working set, so both sides allocate and overwrite alike.
    let base_offset = std::sync::atomic::AtomicU64::new(0);
    let rep_offset = std::sync::atomic::AtomicU64::new(0);
    let mut net = (0u64, 0f64);
    let (mut base_cpu, mut rep_cpu) = (CpuTicks::default(), CpuTicks::default());
    // The bare pair: its mirror threads on CPU 1 when pinned, as the daemon is.
    let bare = match cfg.bare {
        true => Some(crate::bench_bare::BarePair::start(
            &cfg.dir.join("bare"),
            cfg.writers,
            bs,
            cfg.direct,
            cfg.pin.then_some(1),
        )?),
        false => None,
    };
    let mut bare_result = PhaseResult { blocks: 0, elapsed: Duration::ZERO, writes: hist(), flushes: hist() };
    let (mut bare_cpu, bare_offset) = (CpuTicks::default(), std::sync::atomic::AtomicU64::new(0));
    for _round in 0..cfg.rounds {
        let start = base_offset.load(Ordering::Relaxed);
        bar.set_message(format!("round {} of {}: baseline", _round + 1, cfg.rounds));
        let cpu = crate::cpu::Sample::now(&pids);
        let b = run_phase(&round_cfg, &bar, |w, n| {
            let (a, b) = &files[w];
            let k = start + n;
            let data = &blocks[(k % 16) as usize];
            let off = (k % cfg.file_blocks) * bs as u64;
            let t = Instant::now();
            a.write_at(off, data)?;
            if !cfg.single_copy() {
                b.write_at(off, data)?;
            }
            let wd = t.elapsed();
            let mut fd = None;
            if cfg.flush_every > 0 && (n + 1) % cfg.flush_every == 0 {
                let t = Instant::now();
                a.sync_data()?;
                let one = t.elapsed();
                if !cfg.single_copy() {
                    b.sync_data()?;
                }
                fd = Some(t.elapsed());
                let _ = fsync_hist.lock().unwrap_or_else(|e| e.into_inner()).record(us(one));
            }
            Ok((wd, fd))
        })?;
        base_cpu.add(crate::cpu::Sample::now(&pids).since(&cpu));
        base_offset.fetch_add(b.blocks / cfg.writers as u64 + 1, Ordering::Relaxed);
        baseline.merge(&b);

        let before = primary.stats();
        let start = rep_offset.load(Ordering::Relaxed);
        bar.set_message(format!("round {} of {}: replicated", _round + 1, cfg.rounds));
        let cpu = crate::cpu::Sample::now(&pids);
        let r = run_phase(&round_cfg, &bar, |w, n| {
            let p = name(w);
            let k = start + n;
            let data = &blocks[(k % 16) as usize];
            let t = Instant::now();
            primary.write_block(0, p.path.as_str(), k % cfg.file_blocks, data)?;
            let wd = t.elapsed();
            let mut fd = None;
            if cfg.flush_every > 0 && (n + 1) % cfg.flush_every == 0 {
                let t = Instant::now();
                primary.sync(0, p.path.as_str())?;
                fd = Some(t.elapsed());
            }
            Ok((wd, fd))
        })?;
        rep_cpu.add(crate::cpu::Sample::now(&pids).since(&cpu));
        // Figures of a pair that lost its mirror would be of local writes.
        if primary.mode() != filerep::runtime::primary::Mode::Streaming {
            return Err(Error::MirrorLost(format!(
                "the mirror was lost during round {} (the pair is {:?}): no figures; see the log for why",
                _round + 1,
                primary.mode()
            )));
        }
        wire += primary.stats().wire_bytes_sent - before.wire_bytes_sent;
        rep_offset.fetch_add(r.blocks / cfg.writers as u64 + 1, Ordering::Relaxed);
        if let Some(remote) = &cfg.remote {
            // The network's own rate, in the same round: as many bytes as
            // the pair just shipped.
            bar.set_message(format!("round {} of {}: network", _round + 1, cfg.rounds));
            let bytes = (r.blocks * bs as u64).clamp(MIN_NET_CHECK_BYTES, MAX_NET_CHECK_BYTES);
            let check = net_check(remote, bytes)?;
            net.0 += check.bytes;
            net.1 += check.seconds;
        }
        replicated.merge(&r);
        if let Some(pair) = &bare {
            bar.set_message(format!("round {} of {}: bare pair", _round + 1, cfg.rounds));
            let start = bare_offset.load(Ordering::Relaxed);
            let cpu = crate::cpu::Sample::now(&pids);
            let b = run_phase(&round_cfg, &bar, |w, n| {
                let k = start + n;
                let t = Instant::now();
                pair.write(w, (k % cfg.file_blocks) * bs as u64, &blocks[(k % 16) as usize])?;
                let wd = t.elapsed();
                let mut fd = None;
                if cfg.flush_every > 0 && (n + 1) % cfg.flush_every == 0 {
                    let t = Instant::now();
                    pair.sync(w)?;
                    fd = Some(t.elapsed());
                }
                Ok((wd, fd))
            })?;
            bare_cpu.add(crate::cpu::Sample::now(&pids).since(&cpu));
            bare_offset.fetch_add(b.blocks / cfg.writers as u64 + 1, Ordering::Relaxed);
            bare_result.merge(&b);
        }
    }
    bar.finish_and_clear();
    if let Some(pair) = bare {
        pair.stop()?;
    }
    primary.shutdown(Duration::from_secs(30))?;
    drop(primary);
    if let Some(m) = mirror {
        let _ = m.stop();
    }
    drop(files);
    drop(disk);
    let fsync_hist = fsync_hist.into_inner().unwrap_or_else(|e| e.into_inner());
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&rep);
    let _ = std::fs::remove_dir_all(cfg.dir.join("replicated-state"));

    let wire_per_block = wire as f64 / replicated.blocks.max(1) as f64;
    let net_mb_s = net.0 as f64 / 1e6 / net.1.max(1e-9);
    let base_mb = mb_s(baseline.blocks, bs, baseline.elapsed);
    let rep_mb = mb_s(replicated.blocks, bs, replicated.elapsed);
    let base_cpu_us = CpuTicks::per_block(base_cpu.machine, baseline.blocks);
    let rep_cpu_us = CpuTicks::per_block(rep_cpu.machine, replicated.blocks);
    let bare_mb = mb_s(bare_result.blocks, bs, bare_result.elapsed);
    let bare_cpu_us = CpuTicks::per_block(bare_cpu.machine, bare_result.blocks);
    let rep_process_us =
        |i: usize| CpuTicks::per_block(rep_cpu.processes.get(i).copied().unwrap_or(0), replicated.blocks);
    Ok(BenchReport {
        writers: cfg.writers,
        block_size: bs,
        sync_level: cfg.sync_level.name(),
        io_backend: backend,
        activity_log: cfg.activity_log,
        rounds: cfg.rounds,
        phase_seconds: replicated.elapsed.as_secs_f64(),
        baseline_double_write_mb_s: base_mb,
        baseline_blocks_s: baseline.blocks as f64 / baseline.elapsed.as_secs_f64(),
        baseline_write_p50_us: p50(&baseline.writes),
        baseline_write_p99_us: q(&baseline.writes, 0.99),
        local_fdatasync_p50_us: p50(&fsync_hist),
        local_fdatasync_p99_us: q(&fsync_hist, 0.99),
        replicated_mb_s: rep_mb,
        replicated_blocks_s: replicated.blocks as f64 / replicated.elapsed.as_secs_f64(),
        write_p50_us: p50(&replicated.writes),
        write_p99_us: q(&replicated.writes, 0.99),
        write_p999_us: q(&replicated.writes, 0.999),
        flush_p50_us: p50(&replicated.flushes),
        flush_p99_us: q(&replicated.flushes, 0.99),
        wire_bytes_per_block: wire_per_block,
        wire_overhead_pct: (wire_per_block - bs as f64) / bs as f64 * 100.0,
        throughput_ratio: rep_mb / base_mb.max(1e-9),
        flush_ratio: p50(&replicated.flushes) / p50(&fsync_hist).max(1.0),
        baseline_cpu_us_per_block: base_cpu_us,
        replicated_cpu_us_per_block: rep_cpu_us,
        cpu_ratio: rep_cpu_us / base_cpu_us.max(1e-9),
        baseline_copies: if cfg.single_copy() { 1 } else { 2 },
        pinned_ratio: cfg.pin.then_some(rep_mb / base_mb.max(1e-9)),
        replicated_primary_cpu_us_per_block: rep_process_us(0),
        replicated_mirror_cpu_us_per_block: (pids.len() > 1).then(|| rep_process_us(1)),
        mirror: cfg.remote.as_ref().map(|r| r.addr.clone()),
        network_mb_s: cfg.remote.as_ref().map(|_| net_mb_s),
        remote_ratio: cfg.remote.as_ref().map(|_| rep_mb / base_mb.min(net_mb_s).max(1e-9)),
        direct: cfg.direct,
        direct_ratio: cfg.direct.then_some(rep_mb / base_mb.max(1e-9)),
        bare_mb_s: cfg.bare.then_some(bare_mb),
        bare_ratio: cfg.bare.then_some(bare_mb / base_mb.max(1e-9)),
        bare_write_p50_us: cfg.bare.then(|| p50(&bare_result.writes)),
        bare_cpu_us_per_block: cfg.bare.then_some(bare_cpu_us),
        bare_cpu_ratio: cfg.bare.then_some(bare_cpu_us / base_cpu_us.max(1e-9)),
        replicated_over_bare: cfg.bare.then_some(rep_mb / bare_mb.max(1e-9)),
    })
}

/// Change tracking with a change-log in `state` and an arbiter that marks
/// a lost mirror down.
pub(crate) fn tracking_in(state: &Path, bs: u32) -> Result<filerep::runtime::primary::ChangeTracking> {
    fresh_dir(state)?;
    let state_disk: Arc<dyn filerep::io::disk::Disk> =
        Arc::new(filerep::io::disk::StdDisk::open(&[state.to_path_buf()])?);
    let log_path = FsPath::new(0, RelPath::new("changelog").map_err(Error::from)?);
    let log = Arc::new(filerep::durable::changelog::ChangeLog::create(state_disk, log_path, bs)?);
    Ok(filerep::runtime::primary::ChangeTracking {
        changelog: log,
        arbiter: Arc::new(filerep::runtime::arbiter::FixedArbiter(filerep::runtime::arbiter::Decision::MirrorDown)),
        decision_timeout: Duration::from_secs(10),
    })
}

/// How long the bench waits to connect to a remote mirror and for each
/// handshake message or network check answer.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP connection to a remote mirror's address.
fn connect_remote(addr: &str) -> Result<std::net::TcpStream> {
    use std::net::ToSocketAddrs;
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| Error::InvalidArgument(format!("--mirror {addr}: not a HOST:PORT this host can resolve: {e}")))?;
    let mut last = None;
    for a in resolved {
        match std::net::TcpStream::connect_timeout(&a, REMOTE_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => Error::io(format!("connecting to the mirror at {addr}"), e),
        None => Error::InvalidArgument(format!("--mirror {addr}: resolves to no address")),
    })
}

/// Time `bytes` bytes of a raw stream to the remote mirror's host.
fn net_check(remote: &RemoteMirror, bytes: u64) -> Result<filerep::runtime::netcheck::NetCheck> {
    let stream = connect_remote(&remote.addr)?;
    let (mut reader, mut writer) =
        filerep::io::net::tcp(stream).map_err(|e| Error::io("configuring the connection", e))?;
    let check = filerep::runtime::netcheck::run(
        reader.as_mut(),
        writer.as_mut(),
        &remote.key,
        bytes,
        &remote.addr,
        REMOTE_TIMEOUT,
    );
    writer.close();
    check
}

/// The primary's configuration for a bench pair: filespace `name` at `root`.
fn bench_primary(
    cfg: &BenchConfig,
    root: PathBuf,
    cluster_id: u64,
    name: &str,
    key: ClusterKey,
    change_tracking: Option<filerep::runtime::primary::ChangeTracking>,
) -> PrimaryConfig {
    PrimaryConfig {
        identity: PairIdentity { cluster_id, content_id: 0, block_size: cfg.block_size, generation: 1 },
        filespaces: vec![Filespace { name: name.into(), root }],
        key,
        sync_level: cfg.sync_level,
        tuning: StreamTuning::default(),
        prefer_uring: cfg.prefer_uring,
        direct: cfg.direct,
        change_tracking,
    }
}

/// A primary under `dir` (`primary/`) connected to the mirror on the
/// other host (`cfg.remote`), or to a mirror daemon started here
/// ([`start_local_pair`]).
fn start_pair(
    cfg: &BenchConfig,
    dir: &Path,
    change_tracking: Option<filerep::runtime::primary::ChangeTracking>,
) -> Result<(Option<MirrorProcess>, Primary)> {
    let Some(remote) = &cfg.remote else {
        return start_local_pair(cfg, dir, change_tracking).map(|(m, p)| (Some(m), p));
    };
    let rp = dir.join("primary");
    fresh_dir(&rp)?;
    let stream = connect_remote(&remote.addr)?;
    let conn = filerep::io::net::tcp(stream).map_err(|e| Error::io("configuring the connection", e))?;
    let config = bench_primary(cfg, rp, remote.cluster_id, REMOTE_FILESPACE, remote.key.clone(), change_tracking);
    Ok((None, Primary::start(config, conn, &remote.addr)?))
}

/// A real mirror daemon and a primary connected to it, under `dir`
/// (`primary/`, `mirror/`, a fresh cluster key).
pub(crate) fn start_local_pair(
    cfg: &BenchConfig,
    dir: &Path,
    change_tracking: Option<filerep::runtime::primary::ChangeTracking>,
) -> Result<(MirrorProcess, Primary)> {
    let (rp, rm) = (dir.join("primary"), dir.join("mirror"));
    fresh_dir(&rp)?;
    fresh_dir(&rm)?;
    let key_file = dir.join("cluster.key");
    let mut material = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut material);
    let hex: String = material.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key_file, &hex).map_err(|e| Error::io("writing the key file", e))?;
    // Pinned: the daemon inherits CPU 1 from this thread, which goes back to CPU 0.
    if cfg.pin {
        pin_to(&[1])?;
    }
    let mirror = MirrorProcess::spawn(
        &cfg.exe,
        &MirrorArgs {
            filespaces: vec![Filespace { name: "pg_system".into(), root: rm }],
            key_file,
            cluster_id: BENCH_CLUSTER_ID,
            content_id: 0,
            block_size: cfg.block_size,
            generation: 1,
            listen: "127.0.0.1:0".into(),
            extra: [(!cfg.prefer_uring, "--std-io"), (cfg.direct, "--direct")]
                .into_iter()
                .filter(|&(on, _)| on)
                .map(|(_, flag)| flag.to_string())
                .collect(),
        },
    );
    if cfg.pin {
        pin_to(&[0])?;
    }
    let mirror = mirror?;
    let stream = std::net::TcpStream::connect(mirror.addr).map_err(|e| Error::io("connecting to the mirror", e))?;
    let conn = filerep::io::net::tcp(stream).map_err(|e| Error::io("configuring the connection", e))?;
    let key = ClusterKey::from_material(hex.as_bytes()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let config = bench_primary(cfg, rp, BENCH_CLUSTER_ID, "pg_system", key, change_tracking);
    let primary = Primary::start(config, conn, &mirror.addr.to_string())?;
    Ok((mirror, primary))
}
