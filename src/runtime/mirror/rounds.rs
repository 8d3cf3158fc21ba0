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
use crate::exec::apply::{ApplyError, FaultClass, StagedWrite};
use crate::io::disk::{BatchWrite, Disk, DiskError, DiskErrorKind, FsPath, RingWrite, WriteRing};
use std::collections::{HashMap, VecDeque};
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// A round handed over and not yet retired.
struct InFlight {
    last_seq: u64,
    landed: bool,
    /// Byte ranges it writes, by file.
    ranges: HashMap<FsPath, Vec<(u64, u64)>>,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    queue: VecDeque<InFlight>,
    /// Every round through this sequence number has landed.
    applied: u64,
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
    /// Overlaps are judged by whole pages: a buffered write (an unaligned
    /// one goes through the page cache) and a direct write to the same page
    /// must not be on their way at once.
    page: u64,
    tx: Option<crossbeam_channel::Sender<Round>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// With io_uring: the session's own thread puts rounds on the ring and
    /// reaps them (no round threads, so no wake-up between the socket and
    /// the device); see [`Rounds::await_readable`].
    ring: Option<Mutex<RingRounds>>,
}

/// Rounds on the session's own ring.
struct RingRounds {
    ring: WriteRing,
    /// The staged writes of each round on the ring, by its last sequence number.
    staged: HashMap<u64, Vec<StagedWrite>>,
    disk: Arc<dyn Disk>,
    acks: Arc<AckSender>,
}

impl RingRounds {
    /// Settle the rounds that landed; with `wait`, wait for one first.
    fn reap(&mut self, shared: &Shared, wait: bool) {
        for (last_seq, _, results) in self.ring.reap(wait) {
            let staged = self.staged.remove(&last_seq).unwrap_or_default();
            let failed = results.into_iter().enumerate().find_map(|(i, r)| r.err().map(|e| (i, e)));
            let result = match failed {
                None => Ok(()),
                Some((i, _)) if i >= staged.len() => Err(round_error(last_seq, "a ring round came back unknown")),
                Some((i, error)) => {
                    // A failure for a passing reason is tried again with the
                    // writes after it, as a round thread does; any other ends here.
                    let failed = ApplyError { seq: staged[i].seq, op: "write", error };
                    match failed.class() {
                        FaultClass::Retry => guarded(last_seq, || write_round(self.disk.as_ref(), &staged[i..])),
                        _ => Err(failed),
                    }
                }
            };
            settle(shared, &self.acks, last_seq, result);
        }
    }
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
        let shared =
            Arc::new(Shared { state: Mutex::new(State { applied, ..State::default() }), changed: Condvar::new() });
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        if let Some(ring) = pollable.then(|| disk.write_ring()).flatten() {
            let ring = RingRounds { ring, staged: HashMap::new(), disk, acks };
            return Ok(Rounds { page, tx: None, threads: Vec::new(), shared, ring: Some(Mutex::new(ring)) });
        }
        // A rendezvous: a round is handed over only to a thread free to write it.
        let (tx, rx) = crossbeam_channel::bounded::<Round>(0);
        let mut rounds = Rounds { page, tx: Some(tx), threads: Vec::new(), shared: shared.clone(), ring: None };
        for i in 0..ROUND_THREADS {
            let (rx, disk, acks, shared) = (rx.clone(), disk.clone(), acks.clone(), shared.clone());
            let t = std::thread::Builder::new()
                .name(format!("filerep-round-{i}"))
                .spawn(move || run(rx, disk.as_ref(), &acks, &shared))?;
            rounds.threads.push(t);
        }
        Ok(rounds)
    }

    /// Whether a write of `writes` overlaps a round in flight.
    pub(super) fn overlaps<'a>(&self, mut writes: impl Iterator<Item = (&'a FsPath, u64, u64)>) -> bool {
        let st = lock(&self.shared);
        if st.queue.is_empty() {
            return false;
        }
        writes.any(|(path, start, end)| {
            let (start, end) = self.pages(start, end);
            st.queue.iter().any(|r| r.ranges.get(path).is_some_and(|rs| rs.iter().any(|&(s, e)| start < e && s < end)))
        })
    }

    /// Put `writes` (in sequence order; the batch ends at `last_seq`) on
    /// their way: on the session's ring, waiting for room there, or to a
    /// round thread, waiting for one to be free. Err: a round failed, and
    /// the session ends.
    pub(super) fn submit(&self, writes: Vec<StagedWrite>, last_seq: u64) -> Result<(), ApplyError> {
        let mut ranges: HashMap<FsPath, Vec<(u64, u64)>> = HashMap::new();
        for w in &writes {
            let range = self.pages(w.offset, w.offset.saturating_add(w.data.len() as u64));
            ranges.entry(w.path.clone()).or_default().push(range);
        }
        if let Some(ring) = &self.ring {
            return self.submit_on_ring(ring, writes, last_seq, ranges);
        }
        {
            let mut st = lock(&self.shared);
            if st.stopped() {
                return Err(take_failure(&mut st));
            }
            st.queue.push_back(InFlight { last_seq, landed: false, ranges });
        }
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(Round { writes, last_seq }).is_ok());
        if !sent {
            // Every round thread is gone: only after a panic in one.
            let mut st = lock(&self.shared);
            st.queue.pop_back();
            st.failure = Failure::Reported;
            return Err(round_error(last_seq, "the round threads are gone"));
        }
        Ok(())
    }

    /// [`Rounds::submit`] on the session's ring. Room first: rounds that
    /// land meanwhile are settled, and one that fails stops this one.
    fn submit_on_ring(
        &self,
        ring: &Mutex<RingRounds>,
        writes: Vec<StagedWrite>,
        last_seq: u64,
        ranges: HashMap<FsPath, Vec<(u64, u64)>>,
    ) -> Result<(), ApplyError> {
        let mut rr = lock_ring(ring);
        while rr.ring.full_for(writes.len()) {
            rr.reap(&self.shared, true);
        }
        {
            let mut st = lock(&self.shared);
            if st.stopped() {
                return Err(take_failure(&mut st));
            }
            st.queue.push_back(InFlight { last_seq, landed: false, ranges });
        }
        let on_ring: Vec<RingWrite> =
            writes.iter().map(|w| RingWrite { file: w.file.clone(), offset: w.offset, data: w.data.clone() }).collect();
        match rr.ring.submit(last_seq, on_ring) {
            Ok(()) => {
                rr.staged.insert(last_seq, writes);
            }
            // Not for the ring (an unaligned write, two writes of the round
            // over one range, a broken ring): written here, now; it overlaps
            // nothing in flight.
            Err(_) => {
                let result = guarded(last_seq, || write_round(rr.disk.as_ref(), &writes));
                settle(&self.shared, &rr.acks, last_seq, result);
            }
        }
        Ok(())
    }

    /// `start..end` widened to whole pages.
    fn pages(&self, start: u64, end: u64) -> (u64, u64) {
        let mask = self.page - 1;
        (start & !mask, end.checked_add(mask).map_or(u64::MAX, |e| e & !mask))
    }

    /// Wait until every round handed over has landed: through what the
    /// writes are applied, or the failure that ended them.
    pub(super) fn drain(&self) -> Result<u64, ApplyError> {
        if let Some(ring) = &self.ring {
            // Every round on the ring is settled first, after a failure too:
            // a later round that finds the disk failing must still fault the
            // mirror, and nothing is written after the session ends.
            let mut rr = lock_ring(ring);
            while rr.ring.in_flight() > 0 {
                rr.reap(&self.shared, true);
            }
            let mut st = lock(&self.shared);
            if st.stopped() {
                return Err(take_failure(&mut st));
            }
            if !st.queue.is_empty() {
                // Cannot happen: a round not retired is on the ring.
                st.failure = Failure::Reported;
                return Err(round_error(st.applied + 1, "a round was lost from the ring"));
            }
            return Ok(st.applied);
        }
        let mut st = lock(&self.shared);
        loop {
            if st.stopped() {
                return Err(take_failure(&mut st));
            }
            if st.queue.is_empty() {
                return Ok(st.applied);
            }
            st = self.shared.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Why the disk is failing, if a round found it so (kept for good).
    pub(super) fn disk_failing(&self) -> Option<String> {
        lock(&self.shared).disk_failing.clone()
    }

    /// Before every receive on the session's ring: wait for `socket` to be
    /// readable (or closed), settling (and acknowledging) the rounds that
    /// land meanwhile, so a receive never blocks with rounds in flight.
    /// `Ok(false)`: the socket stayed silent for `timeout` (the session's
    /// silence rule, as a receive's timeout is elsewhere). Without a ring,
    /// returns at once.
    pub(super) fn await_readable(&self, socket: BorrowedFd<'_>, timeout: Duration) -> std::io::Result<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let Some(ring) = &self.ring else { return Ok(true) };
        let mut rr = lock_ring(ring);
        let deadline = Instant::now() + timeout;
        loop {
            if rr.ring.has_queued() {
                // A submit failed: the ring's descriptor would not poll
                // readable for those entries; a waiting reap submits them
                // (or finds the ring broken and writes them without it).
                rr.reap(&self.shared, true);
            }
            rr.reap(&self.shared, false);
            let left = deadline.saturating_duration_since(Instant::now());
            let in_flight = rr.ring.in_flight() > 0;
            let ring_fd = rr.ring.poll_fd().filter(|_| in_flight);
            let mut fds = [PollFd::new(socket, PollFlags::POLLIN), PollFd::new(socket, PollFlags::empty())];
            let watched = match ring_fd {
                Some(fd) => {
                    fds[1] = PollFd::new(fd, PollFlags::POLLIN);
                    2
                }
                None => 1,
            };
            let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            match nix::poll::poll(&mut fds[..watched], wait) {
                Ok(_) if fds[0].revents().is_some_and(|r| !r.is_empty()) => return Ok(true),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            // The socket was polled at least once after the deadline passed.
            if left.is_zero() {
                return Ok(false);
            }
        }
    }
}

fn lock_ring(m: &Mutex<RingRounds>) -> MutexGuard<'_, RingRounds> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        _ => round_error(st.applied + 1, "a write round failed before"),
    }
}

fn round_error(seq: u64, why: &str) -> ApplyError {
    ApplyError { seq, op: "write", error: DiskError::new("write_batch", "", DiskErrorKind::Io, why) }
}

impl Drop for Rounds {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
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
            // Batches never share a sequence number.
            if let Some(r) = st.queue.iter_mut().find(|r| r.last_seq == last_seq) {
                r.landed = true;
            }
            if !st.stopped() {
                while st.queue.front().is_some_and(|r| r.landed) {
                    if let Some(r) = st.queue.pop_front() {
                        st.applied = r.last_seq;
                        retired = true;
                    }
                }
            }
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
        acks.marks.applied.fetch_max(st.applied, Ordering::SeqCst);
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
mod tests {
    use super::super::syncer::{AckSender, Marks};
    use super::*;
    use crate::io::disk::{DiskFile, DiskResult};
    use crate::io::net::{mem_pair, ConnReader};
    use crate::protocol::path::RelPath;
    use crate::protocol::{Ack, Decoder, Kind};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    /// In `fail_with`: the write panics.
    const PANIC: i32 = -1;

    /// A file in memory whose writes can be held at a gate or failed.
    #[derive(Debug, Default)]
    struct TestFile {
        data: Mutex<Vec<u8>>,
        gated: Mutex<bool>,
        gate: Condvar,
        /// Errnos the next writes fail with, in turn.
        fail_with: Mutex<Vec<i32>>,
    }

    impl TestFile {
        fn open_gate(&self) {
            *self.gated.lock().unwrap() = false;
            self.gate.notify_all();
        }
    }

    impl DiskFile for TestFile {
        fn write_at(&self, offset: u64, buf: &[u8]) -> DiskResult<()> {
            // Bounded: a test that fails with a write still held must end.
            let g = self.gated.lock().unwrap();
            drop(self.gate.wait_timeout_while(g, Duration::from_secs(10), |gated| *gated).unwrap());
            let injected = self.fail_with.lock().unwrap().pop();
            if injected == Some(PANIC) {
                panic!("injected panic in a write");
            }
            if let Some(errno) = injected {
                return Err(DiskError::new("write", "test", DiskErrorKind::Io, "injected").with_errno(errno));
            }
            let mut d = self.data.lock().unwrap();
            let end = offset as usize + buf.len();
            if d.len() < end {
                d.resize(end, 0);
            }
            d[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
        fn read_at(&self, _: u64, _: &mut [u8]) -> DiskResult<usize> {
            Ok(0)
        }
        fn sync_data(&self) -> DiskResult<()> {
            Ok(())
        }
        fn set_len(&self, _: u64) -> DiskResult<()> {
            Ok(())
        }
        fn len(&self) -> DiskResult<u64> {
            Ok(self.data.lock().unwrap().len() as u64)
        }
    }

    struct Fixture {
        rounds: Rounds,
        acks: Arc<AckSender>,
        /// The primary's end: acknowledgements and faults arrive here.
        primary: Box<dyn ConnReader>,
        /// Kept open: a closed end closes the whole connection.
        _unused: (Box<dyn crate::io::net::ConnWriter>, Box<dyn ConnReader>),
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        // Its default write_batch writes each file in turn: the test files decide.
        let disk = crate::io::disk::open_local(&[dir.path().to_path_buf()], false).expect("disk");
        let ((primary, primary_writer), (mirror_reader, writer)) = mem_pair(1 << 16, 64);
        let acks =
            Arc::new(AckSender { marks: Marks::default(), writer: Mutex::new(writer), failed: AtomicBool::new(false) });
        acks.marks.received.store(100, Ordering::SeqCst);
        let rounds = Rounds::start(disk, acks.clone(), 0, false).expect("rounds");
        Fixture { rounds, acks, primary, _unused: (primary_writer, mirror_reader), _dir: dir }
    }

    fn path(name: &str) -> FsPath {
        FsPath::new(0, RelPath::new(name).expect("path"))
    }

    fn write(seq: u64, name: &str, file: &Arc<TestFile>, offset: u64, byte: u8) -> StagedWrite {
        StagedWrite { seq, path: path(name), file: file.clone(), offset, data: bytes::Bytes::from(vec![byte; 4096]) }
    }

    /// Frames the primary got, up to and including the first of `kind`.
    fn frames_until(r: &mut dyn ConnReader, kind: Kind) -> Vec<crate::protocol::Frame> {
        let mut dec = Decoder::new();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        r.set_timeout(Some(Duration::from_secs(10))).expect("timeout");
        loop {
            while let Some(f) = dec.next_frame().expect("frame") {
                let done = f.header.kind == kind;
                got.push(f);
                if done {
                    return got;
                }
            }
            let n = r.recv(&mut buf).expect("a frame within 10 s");
            assert!(n > 0, "the connection ended before a {kind:?} frame: {got:?}");
            dec.feed(&buf[..n]);
        }
    }

    #[test]
    fn a_round_that_lands_early_is_counted_after_the_ones_before_it() {
        let mut fx = fixture();
        let (a, b) = (Arc::new(TestFile::default()), Arc::new(TestFile::default()));
        *a.gated.lock().unwrap() = true;
        fx.rounds.submit(vec![write(1, "a", &a, 0, 1)], 1).expect("first round");
        let short = StagedWrite { data: bytes::Bytes::from_static(b"0123456789"), ..write(3, "b", &b, 8292, 3) };
        fx.rounds.submit(vec![write(2, "b", &b, 0, 2), short], 3).expect("second round");
        // The second round lands while the first waits at its gate.
        let st = wait_for(&fx.rounds, |st| st.queue.get(1).is_some_and(|r| r.landed));
        assert_eq!(st, 0, "nothing counts applied while an earlier round is on its way");
        assert_eq!(b.data.lock().unwrap().len(), 8302);
        assert_eq!(fx.acks.marks.applied.load(Ordering::SeqCst), 0);
        // A write over the first round's range waits for it; one beside it does not.
        assert!(fx.rounds.overlaps([(&path("a"), 100, 200)].into_iter()));
        assert!(!fx.rounds.overlaps([(&path("a"), 4096, 8192), (&path("c"), 0, 10)].into_iter()));
        // Judged by pages: a write beside the short one, in its page, overlaps too.
        assert!(fx.rounds.overlaps([(&path("b"), 8192, 8242)].into_iter()));
        assert!(!fx.rounds.overlaps([(&path("b"), 4096, 8192)].into_iter()));
        a.open_gate();
        assert_eq!(fx.rounds.drain().expect("landed"), 3);
        assert_eq!(fx.acks.marks.applied.load(Ordering::SeqCst), 3);
        let acks = frames_until(fx.primary.as_mut(), Kind::Ack);
        let ack = Ack::from_body(&acks[0].body).expect("ack");
        assert_eq!((ack.received, ack.applied), (100, 3), "the first acknowledgement covers both rounds");
        assert!(!fx.rounds.overlaps([(&path("a"), 100, 200)].into_iter()), "nothing is in flight");
    }

    #[test]
    fn a_failed_round_ends_the_session_and_counts_nothing_after_it() {
        let mut fx = fixture();
        let (a, b) = (Arc::new(TestFile::default()), Arc::new(TestFile::default()));
        *a.gated.lock().unwrap() = true;
        a.fail_with.lock().unwrap().push(libc::EIO);
        fx.rounds.submit(vec![write(1, "a", &a, 0, 1)], 1).expect("first round");
        fx.rounds.submit(vec![write(2, "b", &b, 0, 2)], 2).expect("second round");
        a.open_gate();
        let e = fx.rounds.drain().expect_err("the first round failed");
        assert_eq!((e.seq, e.class()), (1, FaultClass::DiskFailing), "{e}");
        assert_eq!(fx.acks.marks.applied.load(Ordering::SeqCst), 0, "the round after it lands but is not counted");
        let frames = frames_until(fx.primary.as_mut(), Kind::Fault);
        assert_eq!(frames.last().map(|f| f.header.seq), Some(1), "the primary is told which write failed");
        assert!(fx.rounds.submit(vec![write(3, "b", &b, 0, 3)], 3).is_err(), "no round after a failure");
        assert!(fx.rounds.drain().is_err(), "and the session stays failed");
    }

    #[test]
    fn a_write_that_fails_for_a_passing_reason_is_tried_again_with_the_ones_after_it() {
        let fx = fixture();
        let a = Arc::new(TestFile::default());
        // Pushed in reverse: the first write fails with EINTR, then all succeed.
        a.fail_with.lock().unwrap().push(libc::EINTR);
        fx.rounds.submit(vec![write(1, "a", &a, 0, 1), write(2, "a", &a, 0, 2)], 2).expect("round");
        assert_eq!(fx.rounds.drain().expect("landed after a retry"), 2);
        // Tried again in order: the later write over the same range wins.
        assert_eq!(a.data.lock().unwrap()[..4096], [2u8; 4096]);
    }

    /// Wait (bounded) until `pred` holds of the rounds' state; their applied mark then.
    fn wait_for(rounds: &Rounds, pred: impl Fn(&State) -> bool) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut st = lock(&rounds.shared);
        while !pred(&st) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "the rounds never got there");
            st = rounds.shared.changed.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        st.applied
    }

    #[test]
    fn a_round_thread_that_panics_fails_the_session_instead_of_hanging_it() {
        let fx = fixture();
        let a = Arc::new(TestFile::default());
        a.fail_with.lock().unwrap().push(PANIC);
        fx.rounds.submit(vec![write(1, "a", &a, 0, 1)], 1).expect("round");
        let e = fx.rounds.drain().expect_err("the round panicked");
        assert_eq!(e.seq, 1, "{e}");
        assert!(e.to_string().contains("panicked"), "{e}");
    }

    #[test]
    fn a_failing_disk_is_kept_even_when_another_failure_came_first() {
        let fx = fixture();
        let (a, b) = (Arc::new(TestFile::default()), Arc::new(TestFile::default()));
        *a.gated.lock().unwrap() = true;
        // The first round keeps failing for a passing reason (four tries), the second finds the disk failing.
        a.fail_with.lock().unwrap().extend([libc::EINTR; 4]);
        b.fail_with.lock().unwrap().push(libc::EIO);
        fx.rounds.submit(vec![write(1, "a", &a, 0, 1)], 1).expect("first round");
        fx.rounds.submit(vec![write(2, "b", &b, 0, 2)], 2).expect("second round");
        wait_for(&fx.rounds, |st| st.disk_failing.is_some());
        a.open_gate();
        let e = fx.rounds.drain().expect_err("failed");
        assert!(e.seq == 1 || e.seq == 2, "{e}");
        assert!(fx.rounds.disk_failing().is_some_and(|why| why.contains("#2")), "{:?}", fx.rounds.disk_failing());
    }
}

#[cfg(test)]
mod ring_tests {
    use super::super::syncer::{AckSender, Marks};
    use super::*;
    use crate::io::disk::{OpenMode, StdDisk, UringDisk, MAX_RING_ROUNDS};
    use crate::io::net::mem_pair;
    use crate::protocol::path::RelPath;
    use crate::protocol::{Ack, Decoder, Kind};
    use std::os::fd::AsFd;
    use std::sync::atomic::AtomicBool;

    /// What a ring test holds: the data directory, the disk, the rounds,
    /// their acknowledgements, and the primary's ends of the connection.
    type RingFixture = (
        tempfile::TempDir,
        Arc<dyn Disk>,
        Rounds,
        Arc<AckSender>,
        Box<dyn crate::io::net::ConnReader>,
        Box<dyn crate::io::net::ConnWriter>,
    );

    fn ring_fixture() -> RingFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let std = StdDisk::open(&[dir.path().to_path_buf()]).and_then(|d| d.with_direct(true)).expect("direct disk");
        let disk: Arc<dyn Disk> = Arc::new(UringDisk::over(std).expect("io_uring"));
        let ((primary, primary_writer), (_mirror_reader, writer)) = mem_pair(1 << 20, 1024);
        let acks =
            Arc::new(AckSender { marks: Marks::default(), writer: Mutex::new(writer), failed: AtomicBool::new(false) });
        acks.marks.received.store(1000, Ordering::SeqCst);
        let rounds = Rounds::start(disk.clone(), acks.clone(), 0, true).expect("rounds");
        assert!(rounds.ring.is_some(), "a direct io_uring disk with a pollable connection uses the ring");
        (dir, disk, rounds, acks, primary, primary_writer)
    }

    /// A write the kernel refuses on the ring (past the largest file the
    /// file system holds) fails its round: nothing after the round before
    /// it counts applied, the primary gets a Fault naming it, and the
    /// session's next drain fails.
    #[test]
    fn a_write_the_ring_fails_fails_its_round_and_tells_the_primary() {
        let (_dir, disk, rounds, acks, mut primary, _w) = ring_fixture();
        let path = FsPath::new(0, RelPath::top("data").expect("name"));
        let file = disk.open(&path, OpenMode::Create).expect("open");
        let at = |seq: u64, offset: u64| StagedWrite {
            seq,
            path: path.clone(),
            file: file.clone(),
            offset,
            data: bytes::Bytes::from(vec![7u8; 4096]),
        };
        rounds.submit(vec![at(1, 0)], 1).expect("a good round");
        assert_eq!(rounds.drain().expect("the good round lands"), 1);
        // 2^50 bytes: past ext4's largest file (16 TiB; the tests' temporary
        // directories are on ext4), aligned, below i64::MAX.
        rounds.submit(vec![at(2, 1 << 50), at(3, 8192)], 3).expect("submitted");
        rounds.submit(vec![at(4, 16384)], 4).expect("a round after it, before its failure is known");
        let failed = rounds.drain().expect_err("the round past the largest file fails");
        let on_ring = rounds.ring.as_ref().map(|r| lock_ring(r).ring.in_flight());
        assert_eq!(on_ring, Some(0), "a failed drain first settles every round on the ring");
        assert_eq!(failed.seq, 2, "the failed write is named: {failed}");
        assert_eq!(acks.marks.applied.load(Ordering::SeqCst), 1, "only the round before it counts");
        primary.set_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut dec = Decoder::new();
        let mut buf = vec![0u8; 1 << 16];
        let fault = 'read: loop {
            let n = primary.recv(&mut buf).expect("a frame");
            assert!(n > 0, "the connection ended before the Fault");
            dec.feed(&buf[..n]);
            while let Some(f) = dec.next_frame().expect("frame") {
                if f.header.kind == Kind::Fault {
                    break 'read f;
                }
            }
        };
        assert_eq!(fault.header.seq, 2);
        assert!(rounds.drain().is_err(), "later drains fail too");
    }

    /// On a direct io_uring disk with a pollable connection, rounds go on
    /// the session's own ring: waiting to receive settles them, in
    /// sequence order, and acknowledges them; a round the ring cannot take
    /// (an unaligned write) is written at once; drain finds all applied;
    /// and the files hold exactly what the rounds wrote.
    #[test]
    fn rounds_on_the_sessions_ring_land_in_order_while_the_session_waits_to_receive() {
        let (_dir, disk, rounds, acks, mut primary, _w) = ring_fixture();
        let path = FsPath::new(0, RelPath::top("data").expect("name"));
        let file = disk.open(&path, OpenMode::Create).expect("open");
        // A socket that stays silent: waiting on it ends when nothing is in flight.
        let (socket, peer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let block = |seq: u64, k: u64| StagedWrite {
            seq,
            path: path.clone(),
            file: file.clone(),
            offset: k * 8192,
            data: bytes::Bytes::from(vec![seq as u8; 8192]),
        };
        let mut seq = 0;
        for round in 0..3 * MAX_RING_ROUNDS as u64 {
            let writes: Vec<StagedWrite> = (0..3)
                .map(|i| {
                    seq += 1;
                    block(seq, round * 3 + i)
                })
                .collect();
            rounds.submit(writes, seq).expect("submit");
        }
        // Not for the ring: a tail after the last block.
        seq += 1;
        let tail = StagedWrite {
            offset: 3 * 3 * MAX_RING_ROUNDS as u64 * 8192,
            data: bytes::Bytes::from_static(b"tail"),
            ..block(seq, 0)
        };
        rounds.submit(vec![tail], seq).expect("submit the tail");
        // The socket stays silent: each wait ends at its timeout, settling
        // what landed meanwhile; every round settles within 10 s of waits.
        let started = Instant::now();
        while acks.marks.applied.load(Ordering::SeqCst) < seq && started.elapsed() < Duration::from_secs(10) {
            let readable = rounds.await_readable(socket.as_fd(), Duration::from_millis(50)).expect("wait");
            assert!(!readable, "a silent socket is reported silent");
        }
        assert_eq!(acks.marks.applied.load(Ordering::SeqCst), seq, "every round settled while waiting");
        assert_eq!(rounds.drain().expect("drain"), seq);
        // A socket with something to read ends the wait at once.
        std::io::Write::write_all(&mut &peer, b"x").expect("write to the socket");
        assert!(rounds.await_readable(socket.as_fd(), Duration::from_secs(10)).expect("wait"));
        // The last acknowledgement says all of it.
        let mut dec = Decoder::new();
        let mut last = None;
        // Every Ack has been sent by now; reading ends when none is left.
        primary.set_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = primary.recv(&mut buf) {
            if n == 0 {
                break;
            }
            dec.feed(&buf[..n]);
            while let Some(f) = dec.next_frame().expect("frame") {
                assert_eq!(f.header.kind, Kind::Ack);
                last = Some(Ack::from_body(&f.body).expect("ack").applied);
            }
        }
        assert_eq!(last, Some(seq));
        let mut back = vec![0u8; 8192];
        for k in 0..3 * 3 * MAX_RING_ROUNDS as u64 {
            file.read_at(k * 8192, &mut back).expect("read");
            assert!(back.iter().all(|&b| u64::from(b) == k + 1), "block {k}");
        }
        let mut tail = [0u8; 4];
        file.read_at(3 * 3 * MAX_RING_ROUNDS as u64 * 8192, &mut tail).expect("read the tail");
        assert_eq!(&tail, b"tail");
    }
}
