//! A [`Disk`] over a [`SimDisk`] that fails on purpose: an fsync error, a
//! full disk, or a power loss at the n-th mutating call from now. The last
//! one lets a crash land inside a change-log append or compaction, between
//! any two of its writes, syncs and renames, which a crash between two
//! library calls cannot reach. Every fault fires once and is reported, so
//! the simulator counts what its schedules really hit.
//!
//! The wrapper only decides when to fail; the simulator performs the power
//! loss itself ([`SimDisk::crash`], which may tear the write that was in
//! progress) as soon as it sees [`FaultyDisk::power_lost`].

use crate::io::disk::{Disk, DiskError, DiskErrorKind, DiskFile, DiskResult, FsPath, OpenMode, SimDisk, SimFault};
use std::sync::{Arc, Mutex, MutexGuard};

/// A fault that fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fired {
    Fsync,
    NoSpace,
    PowerLoss,
}

#[derive(Default)]
struct Arms {
    fail_sync: bool,
    no_space: bool,
    /// Mutating calls still allowed before the power goes.
    crash_in: Option<u32>,
    power_lost: bool,
    mutations: u64,
    fired: Vec<Fired>,
    fired_total: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mutation {
    Write,
    Grow,
    Sync,
    Other,
}

fn lock(m: &Mutex<Arms>) -> MutexGuard<'_, Arms> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn power_err(op: &'static str, path: &str) -> DiskError {
    DiskError::new(op, path, DiskErrorKind::Io, "simulated power loss")
}

fn fire(a: &mut Arms, f: Fired) {
    a.fired.push(f);
    a.fired_total += 1;
}

/// What a mutating call does, once the gate let it through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Go,
    /// Perform the write, then lose power (the crash may tear it).
    WriteThenLosePower,
    /// The sync fails: the simulated disk fails it, so it makes nothing
    /// durable and a file's bytes not yet durable are let go for good
    /// ([`failing_sync`]).
    FailSync,
}

/// Before a mutating call: how it goes on, or the error.
fn gate(arms: &Mutex<Arms>, op: &'static str, path: &str, m: Mutation) -> DiskResult<Pass> {
    let mut a = lock(arms);
    if a.power_lost {
        return Err(power_err(op, path));
    }
    a.mutations += 1;
    if let Some(n) = a.crash_in {
        if n == 0 {
            a.crash_in = None;
            a.power_lost = true;
            fire(&mut a, Fired::PowerLoss);
            return if m == Mutation::Write { Ok(Pass::WriteThenLosePower) } else { Err(power_err(op, path)) };
        }
        a.crash_in = Some(n - 1);
    }
    if m == Mutation::Sync && a.fail_sync {
        a.fail_sync = false;
        fire(&mut a, Fired::Fsync);
        return Ok(Pass::FailSync);
    }
    if matches!(m, Mutation::Write | Mutation::Grow) && a.no_space {
        a.no_space = false;
        fire(&mut a, Fired::NoSpace);
        return Err(DiskError::new(op, path, DiskErrorKind::NoSpace, "injected ENOSPC"));
    }
    Ok(Pass::Go)
}

/// Run `sync` with the simulated disk's own sync failure armed: nothing is
/// made durable, and a file's bytes not yet durable are let go as Linux
/// lets them go (rule 8: a sync retried after this one succeeds without
/// them). Always an error.
fn failing_sync(sim: &SimDisk, op: &'static str, path: &str, sync: impl FnOnce() -> DiskResult<()>) -> DiskResult<()> {
    sim.inject(SimFault::FailNextSync);
    let r = sync();
    // A stale handle fails before it takes the fault: no other sync may.
    sim.disarm_sync_faults();
    r.and(Err(DiskError::new(op, path, DiskErrorKind::Io, "injected fsync failure")))
}

fn alive(arms: &Mutex<Arms>, op: &'static str, path: &str) -> DiskResult<()> {
    if lock(arms).power_lost {
        Err(power_err(op, path))
    } else {
        Ok(())
    }
}

pub(super) struct FaultyDisk {
    sim: Arc<SimDisk>,
    arms: Arc<Mutex<Arms>>,
}

impl FaultyDisk {
    pub(super) fn new(sim: Arc<SimDisk>) -> Arc<FaultyDisk> {
        Arc::new(FaultyDisk { sim, arms: Arc::default() })
    }

    /// The next sync of any file or directory fails and makes nothing durable.
    pub(super) fn fail_next_sync(&self) {
        lock(&self.arms).fail_sync = true;
    }

    /// The next write or growing truncate fails with `NoSpace`.
    pub(super) fn no_space_next(&self) {
        lock(&self.arms).no_space = true;
    }

    /// Lose power at the mutating call `n` calls from now (0: the next one).
    pub(super) fn lose_power_in(&self, n: u32) {
        lock(&self.arms).crash_in = Some(n);
    }

    /// Disarm every pending fault (power stays as it is).
    pub(super) fn disarm(&self) {
        let mut a = lock(&self.arms);
        a.fail_sync = false;
        a.no_space = false;
        a.crash_in = None;
    }

    /// Cancel a pending power loss that did not fire.
    pub(super) fn disarm_power(&self) {
        lock(&self.arms).crash_in = None;
    }

    /// Power back on, nothing armed (after the simulator crashed the disk).
    pub(super) fn reset(&self) {
        let mut a = lock(&self.arms);
        a.fail_sync = false;
        a.no_space = false;
        a.crash_in = None;
        a.power_lost = false;
    }

    pub(super) fn power_lost(&self) -> bool {
        lock(&self.arms).power_lost
    }

    /// Faults fired so far (to tell whether an error was injected).
    pub(super) fn fired_total(&self) -> u64 {
        lock(&self.arms).fired_total
    }

    pub(super) fn take_fired(&self) -> Vec<Fired> {
        std::mem::take(&mut lock(&self.arms).fired)
    }

    fn wrap(&self, inner: Arc<dyn DiskFile>, path: &FsPath) -> Arc<dyn DiskFile> {
        Arc::new(FaultyFile { inner, arms: self.arms.clone(), sim: self.sim.clone(), path: path.to_string() })
    }
}

impl Disk for FaultyDisk {
    fn open(&self, path: &FsPath, mode: OpenMode) -> DiskResult<Arc<dyn DiskFile>> {
        let label = path.to_string();
        if mode == OpenMode::Existing {
            alive(&self.arms, "open", &label)?;
        } else {
            gate(&self.arms, "open", &label, Mutation::Other)?;
        }
        let f = self.sim.open(path, mode)?;
        Ok(self.wrap(f, path))
    }

    fn remove_file(&self, path: &FsPath) -> DiskResult<()> {
        gate(&self.arms, "remove_file", &path.to_string(), Mutation::Other)?;
        self.sim.remove_file(path)
    }

    fn rename(&self, from: &FsPath, to: &FsPath) -> DiskResult<()> {
        gate(&self.arms, "rename", &from.to_string(), Mutation::Other)?;
        self.sim.rename(from, to)
    }

    fn create_dir(&self, path: &FsPath) -> DiskResult<()> {
        gate(&self.arms, "create_dir", &path.to_string(), Mutation::Other)?;
        self.sim.create_dir(path)
    }

    fn remove_dir(&self, path: &FsPath) -> DiskResult<()> {
        gate(&self.arms, "remove_dir", &path.to_string(), Mutation::Other)?;
        self.sim.remove_dir(path)
    }

    fn sync_parent_dir(&self, path: &FsPath) -> DiskResult<()> {
        let label = path.to_string();
        match gate(&self.arms, "sync_parent_dir", &label, Mutation::Sync)? {
            Pass::FailSync => failing_sync(&self.sim, "sync_parent_dir", &label, || self.sim.sync_parent_dir(path)),
            _ => self.sim.sync_parent_dir(path),
        }
    }

    fn parent_dir_handle(&self, path: &FsPath) -> DiskResult<Arc<dyn DiskFile>> {
        alive(&self.arms, "open_parent_dir", &path.to_string())?;
        let h = self.sim.parent_dir_handle(path)?;
        Ok(self.wrap(h, path))
    }

    fn exists(&self, path: &FsPath) -> DiskResult<bool> {
        alive(&self.arms, "exists", &path.to_string())?;
        self.sim.exists(path)
    }

    fn entry_kind(&self, path: &FsPath) -> DiskResult<Option<crate::io::disk::EntryKind>> {
        alive(&self.arms, "entry_kind", &path.to_string())?;
        self.sim.entry_kind(path)
    }

    fn list_dir(
        &self,
        filespace: u16,
        dir: Option<&crate::protocol::path::RelPath>,
    ) -> DiskResult<Vec<(String, crate::io::disk::EntryKind)>> {
        alive(&self.arms, "list_dir", &format!("fs{filespace}"))?;
        self.sim.list_dir(filespace, dir)
    }

    fn name(&self) -> &'static str {
        "sim-faulty"
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn DiskFile>,
    arms: Arc<Mutex<Arms>>,
    sim: Arc<SimDisk>,
    path: String,
}

impl std::fmt::Debug for Arms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arms").field("power_lost", &self.power_lost).field("mutations", &self.mutations).finish()
    }
}

impl DiskFile for FaultyFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> DiskResult<()> {
        if gate(&self.arms, "write", &self.path, Mutation::Write)? == Pass::WriteThenLosePower {
            // The power goes while this write is in flight: it reaches the
            // page cache, and the crash that follows may tear it.
            let _ = self.inner.write_at(offset, buf);
            return Err(power_err("write", &self.path));
        }
        self.inner.write_at(offset, buf)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> DiskResult<usize> {
        alive(&self.arms, "read", &self.path)?;
        self.inner.read_at(offset, buf)
    }

    fn sync_data(&self) -> DiskResult<()> {
        match gate(&self.arms, "sync_data", &self.path, Mutation::Sync)? {
            Pass::FailSync => failing_sync(&self.sim, "sync_data", &self.path, || self.inner.sync_data()),
            _ => self.inner.sync_data(),
        }
    }

    fn set_len(&self, len: u64) -> DiskResult<()> {
        let grows = self.inner.len().map_or(true, |l| len > l);
        gate(&self.arms, "set_len", &self.path, if grows { Mutation::Grow } else { Mutation::Other })?;
        self.inner.set_len(len)
    }

    fn len(&self) -> DiskResult<u64> {
        alive(&self.arms, "len", &self.path)?;
        self.inner.len()
    }
}
