//! A randomized, seeded workload that drives every storage-layer operation
//! from several writer threads at once. Used by `filerep demo` and by the
//! integration tests.
//!
//! Each writer works in its own directory of every filespace, so writers
//! never race on one file (a host's buffer manager serializes those), but
//! all of them share the stream, the sender and the mirror's applier.

use filerep::error::{Error, Result};
use filerep::runtime::primary::Primary;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub writers: usize,
    pub ops_per_writer: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkloadReport {
    pub operations: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub payload_bytes: u64,
    #[serde(skip)]
    pub elapsed: Duration,
}

struct Writer {
    id: usize,
    rng: ChaCha8Rng,
    filespaces: u16,
    block_size: usize,
    relations: Vec<(u16, String)>,
    logs: Vec<(u16, String)>,
    dirs: Vec<(u16, String)>,
    next: u64,
    counts: BTreeMap<String, u64>,
    bytes: u64,
}

impl Writer {
    fn count(&mut self, kind: &str) {
        *self.counts.entry(kind.to_string()).or_default() += 1;
    }

    fn name(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn home(&self, _fs: u16) -> String {
        format!("writer{}", self.id)
    }

    fn pick_dir(&mut self, fs: u16) -> String {
        let mine: Vec<&(u16, String)> = self.dirs.iter().filter(|d| d.0 == fs).collect();
        if mine.is_empty() || self.rng.gen_bool(0.5) {
            return self.home(fs);
        }
        mine[self.rng.gen_range(0..mine.len())].1.clone()
    }

    fn block(&mut self) -> Vec<u8> {
        let mut b = vec![0u8; self.block_size];
        self.rng.fill(&mut b[..]);
        b
    }

    fn create_relation(&mut self, p: &Primary) -> Result<()> {
        let fs = self.rng.gen_range(0..self.filespaces);
        let dir = self.pick_dir(fs);
        let path = format!("{dir}/{}", self.name("rel"));
        p.create(fs, &path)?;
        self.count("create");
        for b in 0..self.rng.gen_range(1..4u64) {
            let data = self.block();
            p.extend(fs, &path, b, &data)?;
            self.bytes += data.len() as u64;
            self.count("extend");
        }
        self.relations.push((fs, path));
        Ok(())
    }

    fn create_log(&mut self, p: &Primary) -> Result<()> {
        let fs = self.rng.gen_range(0..self.filespaces);
        let dir = self.home(fs);
        let path = format!("{dir}/{}", self.name("log"));
        p.create(fs, &path)?;
        self.count("create");
        self.logs.push((fs, path));
        Ok(())
    }

    fn step(&mut self, p: &Primary) -> Result<()> {
        let roll = self.rng.gen_range(0..100);
        if self.relations.is_empty() {
            return self.create_relation(p);
        }
        if self.logs.is_empty() {
            return self.create_log(p);
        }
        match roll {
            0..=4 => self.create_relation(p)?,
            5..=44 => {
                let i = self.rng.gen_range(0..self.relations.len());
                let (fs, path) = self.relations[i].clone();
                let n = p.nblocks(fs, &path)?;
                let data = self.block();
                if n == 0 || self.rng.gen_bool(0.3) {
                    p.extend(fs, &path, n, &data)?;
                    self.count("extend");
                } else {
                    let b = self.rng.gen_range(0..n);
                    p.write_block(fs, &path, b, &data)?;
                    self.count("write_block");
                    if self.rng.gen_bool(0.2) {
                        let mut back = vec![0u8; self.block_size];
                        p.read_block(fs, &path, b, &mut back)?;
                        if back != data {
                            return Err(Error::InvalidArgument(format!(
                                "read_block of {path} block {b} returned other data"
                            )));
                        }
                        self.count("read_block");
                    }
                }
                self.bytes += data.len() as u64;
            }
            45..=64 => {
                let i = self.rng.gen_range(0..self.logs.len());
                let (fs, path) = self.logs[i].clone();
                let len = p.len(fs, &path)?;
                let n = self.rng.gen_range(1..20_000);
                let mut data = vec![0u8; n];
                self.rng.fill(&mut data[..]);
                p.write_at(fs, &path, len, &data)?;
                self.bytes += n as u64;
                self.count("write_at");
                if self.rng.gen_bool(0.3) {
                    p.flush(fs, &path)?;
                    self.count("flush");
                }
            }
            65..=71 => {
                let i = self.rng.gen_range(0..self.relations.len());
                let (fs, path) = self.relations[i].clone();
                p.sync(fs, &path)?;
                self.count("sync");
            }
            72..=77 => {
                let i = self.rng.gen_range(0..self.relations.len());
                let (fs, path) = self.relations[i].clone();
                let n = p.nblocks(fs, &path)?;
                p.truncate(fs, &path, self.rng.gen_range(0..=n))?;
                self.count("truncate");
            }
            78..=82 => {
                let i = self.rng.gen_range(0..self.relations.len());
                let (fs, path) = self.relations.swap_remove(i);
                p.unlink(fs, &path)?;
                self.count("unlink");
            }
            83..=87 => {
                let i = self.rng.gen_range(0..self.relations.len());
                let (fs, path) = self.relations[i].clone();
                let dir = self.pick_dir(fs);
                let to = format!("{dir}/{}", self.name("moved"));
                p.rename(fs, &path, &to)?;
                self.relations[i] = (fs, to);
                self.count("rename");
            }
            88..=93 => {
                let fs = self.rng.gen_range(0..self.filespaces);
                let dir = format!("{}/{}", self.home(fs), self.name("dir"));
                p.mkdir(fs, &dir)?;
                self.dirs.push((fs, dir));
                self.count("mkdir");
            }
            _ => {
                // Remove a directory: move its files home first, then rmdir.
                if self.dirs.is_empty() {
                    return Ok(());
                }
                let i = self.rng.gen_range(0..self.dirs.len());
                let (fs, dir) = self.dirs.swap_remove(i);
                let prefix = format!("{dir}/");
                for j in 0..self.relations.len() {
                    if self.relations[j].0 == fs && self.relations[j].1.starts_with(&prefix) {
                        let to = format!("{}/{}", self.home(fs), self.name("home"));
                        p.rename(fs, &self.relations[j].1.clone(), &to)?;
                        self.relations[j].1 = to;
                        self.count("rename");
                    }
                }
                p.rmdir(fs, &dir)?;
                self.count("rmdir");
            }
        }
        Ok(())
    }
}

/// Run the workload to completion. Any failed call fails the run.
pub fn run(primary: &Arc<Primary>, cfg: &WorkloadConfig) -> Result<WorkloadReport> {
    let started = Instant::now();
    let nfs = primary.filespaces().len() as u16;
    let block_size = primary.block_size() as usize;
    for fs in 0..nfs {
        for w in 0..cfg.writers {
            primary.mkdir(fs, &format!("writer{w}"))?;
        }
    }
    let results = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for w in 0..cfg.writers {
            let primary = primary.clone();
            let results = results.clone();
            let ops = cfg.ops_per_writer;
            let seed = cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(w as u64);
            s.spawn(move || {
                let mut wr = Writer {
                    id: w,
                    rng: ChaCha8Rng::seed_from_u64(seed),
                    filespaces: nfs,
                    block_size,
                    relations: Vec::new(),
                    logs: Vec::new(),
                    dirs: Vec::new(),
                    next: 0,
                    counts: BTreeMap::new(),
                    bytes: 0,
                };
                let mut r = Ok(());
                for _ in 0..ops {
                    if let Err(e) = wr.step(&primary) {
                        r = Err(e);
                        break;
                    }
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push((r, wr.counts, wr.bytes));
            });
        }
    });
    let mut report = WorkloadReport::default();
    *report.by_kind.entry("mkdir".into()).or_default() += (nfs as u64) * cfg.writers as u64;
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    for (r, counts, bytes) in results {
        r?;
        for (k, v) in counts {
            *report.by_kind.entry(k).or_default() += v;
        }
        report.payload_bytes += bytes;
    }
    report.operations = report.by_kind.values().sum();
    report.elapsed = started.elapsed();
    let missing: Vec<&str> = ALL_KINDS.iter().copied().filter(|k| !report.by_kind.contains_key(*k)).collect();
    if !missing.is_empty() && cfg.writers * cfg.ops_per_writer >= 400 {
        return Err(Error::InvalidArgument(format!("workload never exercised: {missing:?}")));
    }
    Ok(report)
}

/// Every operation type of the storage API.
pub const ALL_KINDS: [&str; 12] = [
    "create",
    "extend",
    "write_block",
    "read_block",
    "write_at",
    "flush",
    "sync",
    "truncate",
    "unlink",
    "rename",
    "mkdir",
    "rmdir",
];
