//! Write rounds in flight while the session reads on: the mirror's side of
//! the NVMe path (`direct` disks).
//!
//! With O_DIRECT a round of writes takes the device's latency. Applied on
//! the session's thread, a frame that arrives while a round is on the
//! device waits for that round, then for its own: a block's write cost the
//! primary about three local writes (docs/performance.md, "The NVMe path").
//! Here the session hands a batch of plain writes to a round thread and
//! reads on, so several rounds are on the device at once; the applied mark
//! moves, and an acknowledgement goes out, as the oldest rounds land, in
//! sequence order (a round that lands early waits for the ones before it).
//!
//! What keeps this the same as applying in order:
//! - a round never overlaps one in flight: a batch with a write to a range
//!   a round in flight writes is applied the ordinary way, after all land;
//! - everything else (namespace operations, writes asked durable, hash and
//!   list requests, every sync job and checkpoint) waits for every round to
//!   land ([`Rounds::drain`]): a sync job covers only landed writes, and a
//!   rename never moves a file under a write on its way;
//! - a write that fails for a passing reason is tried again with the ones
//!   after it, as on the session's thread; any other failure stops the
//!   session: the applied mark stays before the failed round, and the
//!   primary gets a Fault frame at once.

use super::retrying;
use super::syncer::AckSender;
use crate::core::rounds::RoundQueue;
use crate::exec::apply::{ApplyError, FaultClass, StagedWrite};
use crate::io::disk::{BatchWrite, Disk, DiskError, DiskErrorKind, FsPath, WriteRing};
use ring::RingRounds;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

mod ring;

/// Without a session ring: rounds on the device at once, at most (one
/// thread each, each with its own ring). More would only queue at the
/// device; the session waits to hand over a round while all are busy, and
/// what arrives meanwhile joins the next round. (On the session's ring
/// the bound is `MAX_RING_ROUNDS`.)
pub(super) const ROUND_THREADS: usize = 4;

struct Round {
    writes: Vec<StagedWrite>,
    /// The batch's last sequence number (bindings may follow its last write).
    last_seq: u64,
}

struct State {
    /// The rounds in flight and the applied mark (the rules: [`RoundQueue`]).
    rounds: RoundQueue,
    /// Once a round failed, nothing more is retired.
    failure: Failure,
    /// A round failed because the disk is failing (the first such): the
    /// mirror faults, whatever failure ended the session first.
    disk_failing: Option<String>,
}

/// Where the rounds stand after their first failure.
#[derive(Default)]
enum Failure {
    #[default]
    None,
    /// Not yet handed to the session.
    Waiting(ApplyError),
    /// Handed to the session; later calls fail too.
    Reported,
}

impl State {
    fn stopped(&self) -> bool {
        !matches!(self.failure, Failure::None)
    }
}

struct Shared {
    state: Mutex<State>,
    /// A round landed or failed.
    changed: Condvar,
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.state.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) struct Rounds {
    shared: Arc<Shared>,
    writers: Writers,
}

/// What writes the rounds.
enum Writers {
    /// With io_uring: the session's own thread puts rounds on the ring and
    /// reaps them (no round threads, so no wake-up between the socket and
    /// the device); see [`Rounds::await_readable`].
    Ring(Box<Mutex<RingRounds>>),
    /// Round threads, each taking a round from `tx` when it is free
    /// (`None` once the rounds are dropped: the threads end).
    Threads { tx: Option<crossbeam_channel::Sender<Round>>, threads: Vec<JoinHandle<()>> },
}

impl Rounds {
    /// Rounds writing to `disk`, acknowledged through `acks`; everything
    /// through `applied` is already applied. On the session's own ring if
    /// the disk offers one and the connection can be polled (the session
    /// then calls [`Rounds::await_readable`] before every receive), else
    /// on round threads.
    pub(super) fn start(
        disk: Arc<dyn Disk>,
        acks: Arc<AckSender>,
        applied: u64,
        pollable: bool,
    ) -> std::io::Result<Rounds> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .unwrap_or(4096);
        let rounds = RoundQueue::new(page, applied).with_bug(crate::core::planted_in_process());
        let state = State { rounds, failure: Failure::None, disk_failing: None };
        let shared = Arc::new(Shared { state: Mutex::new(state), changed: Condvar::new() });
        if pollable && disk.takes_write_ring() {
            match WriteRing::new() {
                Ok(ring) => {
                    let ring = RingRounds { ring, disk, acks };
                    return Ok(Rounds { shared, writers: Writers::Ring(Box::new(Mutex::new(ring))) });
                }
                Err(e) => tracing::warn!(error = %e, "cannot set up a write ring; write rounds go through threads"),
            }
        }
        // A rendezvous: a round is handed over only to a thread free to write it.
        let (tx, rx) = crossbeam_channel::bounded::<Round>(0);
        let mut threads = Vec::with_capacity(ROUND_THREADS);
        for i in 0..ROUND_THREADS {
            let (rx, disk, acks, shared) = (rx.clone(), disk.clone(), acks.clone(), shared.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("filerep-round-{i}"))
                .spawn(move || run(rx, disk.as_ref(), &acks, &shared));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The ones started end once the channel closes.
                    drop(tx);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Rounds { shared, writers: Writers::Threads { tx: Some(tx), threads } })
    }

    /// Whether a batch writing `writes` (path, start, end) may go on its
    /// way now ([`RoundQueue::admits`]).
    #[cfg(test)]
    pub(super) fn admits<'a>(&self, writes: impl Iterator<Item = (&'a FsPath, u64, u64)>) -> bool {
        lock(&self.shared).rounds.admits(writes)
    }

    /// Whether `batch` goes on its way as a round now (`Applier::takes_round`).
    pub(super) fn takes(&self, batch: &[crate::exec::apply::Sequenced]) -> bool {
        crate::exec::apply::Applier::takes_round(&lock(&self.shared).rounds, batch)
    }

    /// Put `writes` (in sequence order; the batch ends at `last_seq`) on
    /// their way: on the session's ring, waiting for room there, or to a
    /// round thread, waiting for one to be free. Err: a round failed, and
    /// the session ends.
    pub(super) fn submit(&self, writes: Vec<StagedWrite>, last_seq: u64) -> Result<(), ApplyError> {
        let tx = match &self.writers {
            Writers::Ring(ring) => return self.submit_on_ring(ring, writes, last_seq),
            Writers::Threads { tx, .. } => tx,
        };
        {
            let mut st = lock(&self.shared);
            if st.stopped() {
                return Err(take_failure(&mut st));
            }
            st.rounds.push(last_seq, staged_ranges(&writes));
        }
        let sent = tx.as_ref().is_some_and(|tx| tx.send(Round { writes, last_seq }).is_ok());
        if !sent {
            // Every round thread is gone: only after a panic in one.
            let mut st = lock(&self.shared);
            st.rounds.pop_newest();
            st.failure = Failure::Reported;
            return Err(round_error(last_seq, "the round threads are gone"));
        }
        Ok(())
    }

    /// Wait until every round handed over has landed: through what the
    /// writes are applied, or the failure that ended them.
    pub(super) fn drain(&self) -> Result<u64, ApplyError> {
        if let Writers::Ring(ring) = &self.writers {
            return self.drain_ring(ring);
        }
        let mut st = lock(&self.shared);
        loop {
            if st.stopped() {
                return Err(take_failure(&mut st));
            }
            if st.rounds.is_empty() {
                return Ok(st.rounds.applied());
            }
            st = self.shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Why the disk is failing, if a round found it so (kept for good).
    pub(super) fn disk_failing(&self) -> Option<String> {
        lock(&self.shared).disk_failing.clone()
    }
}

/// A panic while writing is a failed round: the session must not wait for it forever.
fn guarded(last_seq: u64, write: impl FnOnce() -> Result<(), ApplyError>) -> Result<(), ApplyError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(write))
        .unwrap_or_else(|_| Err(round_error(last_seq, "writing a round panicked")))
}

/// The failure that stopped the rounds: the first time with its cause.
fn take_failure(st: &mut State) -> ApplyError {
    match std::mem::replace(&mut st.failure, Failure::Reported) {
        Failure::Waiting(e) => e,
        _ => round_error(st.rounds.applied() + 1, "a write round failed before"),
    }
}

fn round_error(seq: u64, why: &str) -> ApplyError {
    ApplyError { seq, op: "write", error: DiskError::new("write_batch", "", DiskErrorKind::Io, why) }
}

impl Drop for Rounds {
    fn drop(&mut self) {
        if let Writers::Threads { tx, threads } = &mut self.writers {
            *tx = None;
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

fn run(rx: crossbeam_channel::Receiver<Round>, disk: &dyn Disk, acks: &AckSender, shared: &Shared) {
    while let Ok(round) = rx.recv() {
        let last_seq = round.last_seq;
        let result = guarded(last_seq, || write_round(disk, &round.writes));
        drop(round);
        settle(shared, acks, last_seq, result);
    }
}

/// A round landed (or failed): retire the rounds landed in sequence order,
/// move the applied mark and acknowledge, or stop the rounds and tell the
/// primary at once.
fn settle(shared: &Shared, acks: &AckSender, last_seq: u64, result: Result<(), ApplyError>) {
    let mut st = lock(shared);
    let mut retired = false;
    let mut fault = None;
    match result {
        Ok(()) => {
            let retire = !st.stopped();
            retired = st.rounds.landed(last_seq, retire);
        }
        Err(e) => {
            tracing::error!(seq = e.seq, error = %e, "a write round failed; ending the session");
            fault = Some((e.seq, e.to_string()));
            if e.class() == FaultClass::DiskFailing && st.disk_failing.is_none() {
                st.disk_failing = Some(e.to_string());
            }
            if !st.stopped() {
                st.failure = Failure::Waiting(e);
            }
        }
    }
    if retired {
        // Under the lock: whoever sees these rounds retired (a drain, then
        // a sync job and its Ack) sees the applied mark there too, so no
        // Ack says synced past applied.
        acks.marks.applied.fetch_max(st.rounds.applied(), Ordering::SeqCst);
    }
    drop(st);
    shared.changed.notify_all();
    if let Some((seq, why)) = fault {
        // The primary learns at once; closing the connection ends the session's reads.
        acks.fault(seq, &why);
    }
    if retired && !acks.send() {
        // The session's reads end too: it then finds nothing more to do.
        acks.close();
    }
}

/// The byte ranges a round of staged writes covers, by file.
fn staged_ranges(writes: &[StagedWrite]) -> impl Iterator<Item = (&FsPath, u64, u64)> {
    writes.iter().map(|w| (&w.path, w.offset, w.offset.saturating_add(w.data.len() as u64)))
}

/// Write a round in order (the disk keeps overlapping writes in order);
/// a write that fails for a passing reason is tried again after a pause,
/// with every write after it.
fn write_round(disk: &dyn Disk, writes: &[StagedWrite]) -> Result<(), ApplyError> {
    let mut rest = writes;
    retrying("write round", || {
        let batch: Vec<BatchWrite<'_>> =
            rest.iter().map(|w| BatchWrite { file: w.file.as_ref(), offset: w.offset, data: &w.data }).collect();
        let results = disk.write_batch(&batch);
        drop(batch);
        match results.into_iter().enumerate().find_map(|(i, r)| r.err().map(|e| (i, e))) {
            None => Ok(()),
            Some((i, error)) => {
                let e = ApplyError { seq: rest[i].seq, op: "write", error };
                rest = &rest[i..];
                Err(e)
            }
        }
    })
}

#[cfg(test)]
mod tests;
