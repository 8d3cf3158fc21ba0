//! Write rounds on the session's own ring: the session thread submits
//! each round to a [`WriteRing`] and, before every receive, polls the
//! socket and the ring together, settling what lands (docs/architecture.md
//! section 4.2). No thread is woken between the socket and the device.

use super::super::syncer::AckSender;
use super::{
    guarded, lock, round_error, settle, staged_ranges, take_failure, write_round, Failure, Rounds, Shared, Writers,
};
use crate::exec::apply::{ApplyError, FaultClass, StagedWrite};
use crate::io::disk::{Disk, RingWrite, WriteRing};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Rounds on the session's own ring.
pub(super) struct RingRounds {
    /// Each round tagged with its last sequence number and its staged writes.
    pub(super) ring: WriteRing<(u64, Vec<StagedWrite>)>,
    pub(super) disk: Arc<dyn Disk>,
    pub(super) acks: Arc<AckSender>,
}

impl RingRounds {
    /// Settle the rounds that landed; with `wait`, wait for one first.
    fn reap(&mut self, shared: &Shared, wait: bool) {
        for ((last_seq, staged), results) in self.ring.reap(wait) {
            let failed = results.into_iter().enumerate().find_map(|(i, r)| r.err().map(|e| (i, e)));
            let result = match failed {
                None => Ok(()),
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
    /// [`Rounds::submit`] on the session's ring. Room first: rounds that
    /// land meanwhile are settled, and one that fails stops this one.
    pub(super) fn submit_on_ring(
        &self,
        ring: &Mutex<RingRounds>,
        writes: Vec<StagedWrite>,
        last_seq: u64,
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
            st.rounds.push(last_seq, staged_ranges(&writes));
        }
        let on_ring: Vec<RingWrite> =
            writes.iter().map(|w| RingWrite { file: w.file.clone(), offset: w.offset, data: w.data.clone() }).collect();
        // Not for the ring (an unaligned write, two writes of the round
        // over one range, a broken ring): written here, now; it overlaps
        // nothing in flight.
        if let Err((_, writes)) = rr.ring.submit((last_seq, writes), on_ring) {
            let result = guarded(last_seq, || write_round(rr.disk.as_ref(), &writes));
            settle(&self.shared, &rr.acks, last_seq, result);
        }
        Ok(())
    }

    /// [`Rounds::drain`] on the session's ring.
    pub(super) fn drain_ring(&self, ring: &Mutex<RingRounds>) -> Result<u64, ApplyError> {
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
        if !st.rounds.is_empty() {
            // Cannot happen: a round not retired is on the ring.
            st.failure = Failure::Reported;
            return Err(round_error(st.rounds.applied() + 1, "a round was lost from the ring"));
        }
        Ok(st.rounds.applied())
    }

    /// Before every receive on the session's ring: wait for `socket` to be
    /// readable (or closed), settling (and acknowledging) the rounds that
    /// land meanwhile, so a receive never blocks with rounds in flight.
    /// `Ok(false)`: the socket stayed silent for `timeout` (the session's
    /// silence rule, as a receive's timeout is elsewhere). Without a ring,
    /// returns at once.
    pub(in crate::runtime::mirror) fn await_readable(
        &self,
        socket: BorrowedFd<'_>,
        timeout: Duration,
    ) -> std::io::Result<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout};
        let Writers::Ring(ring) = &self.writers else { return Ok(true) };
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

pub(super) fn lock_ring(m: &Mutex<RingRounds>) -> MutexGuard<'_, RingRounds> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::super::syncer::{AckSender, Marks};
    use super::*;
    use crate::io::disk::{FsPath, OpenMode, StdDisk, UringDisk, MAX_RING_ROUNDS};
    use crate::io::net::mem_pair;
    use crate::protocol::path::RelPath;
    use crate::protocol::{Ack, Decoder, Kind};
    use std::os::fd::AsFd;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;

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
        assert!(
            matches!(rounds.writers, Writers::Ring(_)),
            "a direct io_uring disk with a pollable connection uses the ring"
        );
        (dir, disk, rounds, acks, primary, primary_writer)
    }

    /// A write the kernel refuses on the ring (past the largest offset a
    /// file may have) fails its round: nothing after the round before
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
        // A block ending at 2^63, past the largest offset any file may have
        // (2^63 - 1), aligned: refused whatever the file system.
        rounds.submit(vec![at(2, (1 << 63) - 4096), at(3, 8192)], 3).expect("submitted");
        rounds.submit(vec![at(4, 16384)], 4).expect("a round after it, before its failure is known");
        let failed = rounds.drain().expect_err("the round past the largest offset fails");
        let on_ring = match &rounds.writers {
            Writers::Ring(r) => Some(lock_ring(r).ring.in_flight()),
            Writers::Threads { .. } => None,
        };
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
