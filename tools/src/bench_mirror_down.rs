//! `filerep bench --mirror-down`: writes in change tracking beside
//! local-only writes, with the harness of [`crate::bench`].

use crate::bench::{
    fresh_dir, hist, mb_s, p50, q, random_blocks, run_phase, start_local_pair, tracking_in, BenchConfig, PhaseResult,
};
use filerep::error::{Error, Result};
use filerep::io::disk::{FsPath, OpenMode};
use filerep::protocol::path::RelPath;
use indicatif::ProgressBar;
use serde::Serialize;
use std::time::{Duration, Instant};

/// `filerep bench --mirror-down`: writes in change tracking beside
/// local-only writes, the same harness on the same disk, sides alternating.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorDownReport {
    pub writers: usize,
    pub block_size: u32,
    pub io_backend: String,
    pub rounds: u32,
    pub phase_seconds: f64,
    pub local_mb_s: f64,
    pub local_write_p50_us: f64,
    pub change_tracking_mb_s: f64,
    pub change_tracking_write_p50_us: f64,
    pub change_tracking_write_p99_us: f64,
    pub ratio: f64,
    pub changelog_distinct_blocks: u64,
    pub changelog_bytes: u64,
    pub changelog_bytes_after_compaction: u64,
}

pub fn run_mirror_down(cfg: &BenchConfig) -> Result<MirrorDownReport> {
    if cfg.writers == 0 || cfg.writers > 1024 || cfg.file_blocks == 0 || cfg.rounds == 0 || cfg.rounds > 100 {
        return Err(Error::InvalidArgument("writers 1..=1024, file blocks >= 1, rounds 1..=100".into()));
    }
    filerep::config::check_block_size(cfg.block_size)?;
    let bs = cfg.block_size;
    let blocks = random_blocks(bs, 11);
    let name = |w: usize| format!("bench{w}");
    let round_cfg = BenchConfig {
        phase: cfg.phase / cfg.rounds,
        count: cfg.count.map(|c| c.div_ceil(cfg.rounds as u64)),
        ..cfg.clone()
    };

    // Local-only: each block written once, each sync one fdatasync.
    let local_dir = cfg.dir.join("local");
    fresh_dir(&local_dir)?;
    let disk = filerep::io::disk::open_local(std::slice::from_ref(&local_dir), cfg.prefer_uring)?;
    let backend = disk.name().to_string();
    let mut files = Vec::new();
    for w in 0..cfg.writers {
        files.push(disk.open(&FsPath::new(0, RelPath::new(&name(w)).map_err(Error::from)?), OpenMode::CreateNew)?);
    }

    // A real pair whose mirror is then killed: the primary goes on in change tracking.
    let rep = cfg.dir.join("tracked");
    let tracking = tracking_in(&rep.join("state"), bs)?;
    let log = tracking.changelog.clone();
    let (mut mirror, primary) = start_local_pair(cfg, &rep, Some(tracking))?;
    for w in 0..cfg.writers {
        primary.create(0, &name(w))?;
    }
    mirror.kill();
    // The next call waits for the arbiter's decision, then goes on alone.
    primary.write_block(0, &name(0), 0, &blocks[0])?;
    if primary.mode() != filerep::runtime::primary::Mode::ChangeTracking {
        return Err(Error::MirrorLost(format!("expected change tracking, the pair is {:?}", primary.mode())));
    }

    let bar = ProgressBar::hidden();
    let mut local = PhaseResult { blocks: 0, elapsed: Duration::ZERO, writes: hist(), flushes: hist() };
    let mut tracked = PhaseResult { blocks: 0, elapsed: Duration::ZERO, writes: hist(), flushes: hist() };
    for _ in 0..cfg.rounds {
        let l = run_phase(&round_cfg, &bar, |w, n| {
            let data = &blocks[(n % 16) as usize];
            let t = Instant::now();
            files[w].write_at((n % cfg.file_blocks) * bs as u64, data)?;
            let wd = t.elapsed();
            let mut fd = None;
            if cfg.flush_every > 0 && (n + 1) % cfg.flush_every == 0 {
                let t = Instant::now();
                files[w].sync_data()?;
                fd = Some(t.elapsed());
            }
            Ok((wd, fd))
        })?;
        local.merge(&l);
        let t = run_phase(&round_cfg, &bar, |w, n| {
            let data = &blocks[(n % 16) as usize];
            let t = Instant::now();
            primary.write_block(0, &name(w), n % cfg.file_blocks, data)?;
            let wd = t.elapsed();
            let mut fd = None;
            if cfg.flush_every > 0 && (n + 1) % cfg.flush_every == 0 {
                let t = Instant::now();
                primary.sync(0, &name(w))?;
                fd = Some(t.elapsed());
            }
            Ok((wd, fd))
        })?;
        tracked.merge(&t);
    }
    let before = log.stats();
    log.compact()?;
    let after = log.stats();
    drop(primary);
    drop(files);
    let _ = std::fs::remove_dir_all(&local_dir);
    let _ = std::fs::remove_dir_all(&rep);
    let local_mb = mb_s(local.blocks, bs, local.elapsed);
    let tracked_mb = mb_s(tracked.blocks, bs, tracked.elapsed);
    Ok(MirrorDownReport {
        writers: cfg.writers,
        block_size: bs,
        io_backend: backend,
        rounds: cfg.rounds,
        phase_seconds: tracked.elapsed.as_secs_f64(),
        local_mb_s: local_mb,
        local_write_p50_us: p50(&local.writes),
        change_tracking_mb_s: tracked_mb,
        change_tracking_write_p50_us: p50(&tracked.writes),
        change_tracking_write_p99_us: q(&tracked.writes, 0.99),
        ratio: tracked_mb / local_mb.max(1e-9),
        changelog_distinct_blocks: after.distinct_blocks,
        changelog_bytes: before.bytes_on_disk,
        changelog_bytes_after_compaction: after.bytes_on_disk,
    })
}
