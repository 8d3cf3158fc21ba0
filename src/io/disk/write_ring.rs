//! A ring of O_DIRECT writes that one thread both submits to and reaps
//! from, with rounds in flight while that thread does other work: the
//! mirror's session thread on a direct disk (docs/architecture.md § 4.2).
//! A round goes from the thread that received it straight to the device,
//! with no thread to wake in between, and the thread learns of its
//! completion by polling the ring's descriptor beside its socket.
//!
//! Memory safety: the ring owns each round's aligned copies and holds its
//! files (so their descriptors) open until every entry of the round is off
//! the kernel; nothing is released while an entry may still be there, and
//! dropping the ring first waits for all of them (as
//! [`super::uring::submit_and_reap`] does, aborting the process rather than
//! returning while the kernel may still read freed memory).

use super::direct::{aligned, is_aligned_ptr, AlignedBuf};
use super::uring::{aligned_sources, complete_write, file_key, submit_and_reap};
use super::{DiskFile, DiskResult};
use io_uring::{opcode, types, IoUring};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

/// Submission entries of the ring.
const RING_ENTRIES: u32 = 512;
/// Entries in the kernel at once, at most: the completion queue's size
/// (twice the submission queue's), so no completion ever overflows it.
const MAX_IN_KERNEL: usize = 2 * RING_ENTRIES as usize;
/// The most writes of one round: a receive's worth of 4 KiB blocks
/// (the mirror reads up to 1 MiB at once, plus the rest of a frame).
pub const MAX_RING_ROUND_WRITES: usize = RING_ENTRIES as usize;
/// The most bytes of one round (its aligned copies).
pub const MAX_RING_ROUND_BYTES: usize = 16 << 20;
/// Rounds in flight at once, at most.
pub const MAX_RING_ROUNDS: usize = 8;
/// Copies kept for reuse.
const SPARE_ARENAS: usize = 4;

/// One write of a round: the ring holds the file and the data until it lands.
pub struct RingWrite {
    pub file: Arc<dyn DiskFile>,
    pub offset: u64,
    pub data: bytes::Bytes,
}

/// A round whose writes are (or were) in the kernel.
struct InFlight<T> {
    tag: T,
    /// Submission order: rounds landed together come back in it.
    order: u64,
    writes: Vec<RingWrite>,
    /// Aligned copies of the writes whose data is not aligned in memory.
    arena: AlignedBuf,
    /// The kernel's result of each write, as it comes.
    results: Vec<Option<i32>>,
    left: usize,
}

/// A round that landed: its tag and each write's result.
pub type Landed<T> = (T, Vec<DiskResult<()>>);

/// Rounds are tagged with a `T` the caller gets back when they land.
pub struct WriteRing<T> {
    /// `None` once the ring broke: every round left was finished without it.
    ring: Option<IoUring>,
    rounds: HashMap<u32, InFlight<T>>,
    next_id: u32,
    submitted: u64,
    /// Entries pushed and not yet reaped.
    unreaped: usize,
    spare: Vec<AlignedBuf>,
}

impl<T> WriteRing<T> {
    pub fn new() -> io::Result<WriteRing<T>> {
        Ok(WriteRing {
            ring: Some(IoUring::new(RING_ENTRIES)?),
            rounds: HashMap::new(),
            next_id: 0,
            submitted: 0,
            unreaped: 0,
            spare: Vec::new(),
        })
    }

    /// The ring's descriptor, readable while a completion waits: poll it
    /// beside a socket. `None` once the ring broke.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        self.ring.as_ref().map(|r| r.as_fd())
    }

    /// Rounds submitted and not yet handed back by [`WriteRing::reap`].
    pub fn in_flight(&self) -> usize {
        self.rounds.len()
    }

    /// Whether a round of `writes` waits for room: it could go on the
    /// ring, but rounds in flight hold the room it needs. Reap with `wait`
    /// until it does not.
    pub fn full_for(&mut self, writes: usize) -> bool {
        let queued = self.ring.as_mut().map_or(0, |r| r.submission().len());
        self.ring.is_some()
            && !self.rounds.is_empty()
            && (self.rounds.len() >= MAX_RING_ROUNDS
                || self.unreaped + writes > MAX_IN_KERNEL
                || queued + writes > RING_ENTRIES as usize)
    }

    /// Whether entries wait in the submission queue (a submit failed):
    /// the ring's descriptor will not poll readable for them until a
    /// reap with `wait` submits them.
    pub fn has_queued(&mut self) -> bool {
        self.ring.as_mut().is_some_and(|r| !r.submission().is_empty())
    }

    /// Whether `writes` can go as one round: each aligned in offset and
    /// length, to a file with a direct descriptor, none overlapping another
    /// write of the round (the ring orders nothing), within the round's
    /// bounds; and the ring works. (Room is [`WriteRing::full_for`].)
    pub fn takes(&self, writes: &[RingWrite]) -> bool {
        if self.ring.is_none() {
            return false;
        }
        if writes.is_empty() || writes.len() > MAX_RING_ROUND_WRITES {
            return false;
        }
        let mut bytes = 0usize;
        let (mut keys, mut ranges) = (HashMap::new(), HashMap::new());
        for w in writes {
            let Some(fd) = w.file.direct_fd() else { return false };
            if !aligned(w.offset, w.data.len()) || w.offset > i64::MAX as u64 {
                return false;
            }
            bytes += w.data.len();
            if bytes > MAX_RING_ROUND_BYTES {
                return false;
            }
            if writes.len() == 1 {
                break;
            }
            let end = w.offset + w.data.len() as u64;
            let file: &mut Vec<(u64, u64)> = ranges.entry(file_key(fd, &mut keys)).or_default();
            if file.iter().any(|&(s, e)| w.offset < e && s < end) {
                return false;
            }
            file.push((w.offset, end));
        }
        true
    }

    /// Put a round on the device under `tag`; it comes back from
    /// [`WriteRing::reap`] when every write of it has landed. `Err`: the
    /// round is handed back untouched (the caller writes it another way):
    /// a round [`WriteRing::takes`] refuses, or one for which the ring is
    /// [full](WriteRing::full_for).
    pub fn submit(&mut self, tag: T, writes: Vec<RingWrite>) -> Result<(), T> {
        if !self.takes(&writes) || self.full_for(writes.len()) {
            return Err(tag);
        }
        let Some(ring) = self.ring.as_mut() else { return Err(tag) };
        let free = {
            let sq = ring.submission();
            sq.capacity() - sq.len()
        };
        if free < writes.len() {
            return Err(tag);
        }
        let mut arena = match writes.iter().all(|w| is_aligned_ptr(&w.data)) {
            true => AlignedBuf::default(),
            false => self.spare.pop().unwrap_or_default(),
        };
        let sources = aligned_sources(&mut arena, writes.iter().map(|w| &w.data[..]));
        // An id no round in flight has (it would take 2^32 rounds to wrap).
        while self.rounds.contains_key(&self.next_id) {
            self.next_id = self.next_id.wrapping_add(1);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut entries = Vec::with_capacity(writes.len());
        for (i, (w, from)) in writes.iter().zip(sources).enumerate() {
            let fd = w.file.direct_fd().unwrap_or(-1);
            let user_data = (u64::from(id) << 32) | i as u64;
            entries.push(
                opcode::Write::new(types::Fd(fd), from, w.data.len() as u32)
                    .offset(w.offset)
                    .build()
                    .user_data(user_data),
            );
        }
        let n = writes.len();
        // The round is kept before its entries are pushed: from here on, its
        // arena and files live until every entry is reaped.
        self.submitted += 1;
        let order = self.submitted;
        self.rounds.insert(id, InFlight { tag, order, writes, arena, results: vec![None; n], left: n });
        {
            let mut sq = ring.submission();
            for e in &entries {
                // SAFETY: each entry points into the round's arena or the
                // round's own `Bytes` (heap memory that moving the round
                // into `self.rounds` does not move), and names the direct
                // descriptor of a file the round holds open; the round stays
                // in `self.rounds` until all its entries are reaped, and
                // Drop waits for every entry in the kernel.
                if unsafe { sq.push(e) }.is_err() {
                    // Room was checked above, on this thread; a round
                    // counted but not all pushed would be waited for forever.
                    lost_room();
                }
            }
        }
        self.unreaped += n;
        if let Err(e) = ring.submit() {
            // The entries stay queued; the next reap submits them.
            tracing::debug!(error = %e, "io_uring submit of a write round failed; it is retried when reaping");
        }
        Ok(())
    }

    /// Rounds that have landed, in submission order; with `wait`, after waiting for at
    /// least one completion (unless nothing is in flight). A write that came
    /// back short or for a passing reason is finished here with the file's
    /// own write.
    pub fn reap(&mut self, wait: bool) -> Vec<Landed<T>> {
        let mut cqes = Vec::new();
        if self.unreaped > 0 {
            if let Some(ring) = self.ring.as_mut() {
                if !wait && !ring.submission().is_empty() {
                    // A submit that failed left entries queued: they go now,
                    // or the ring's descriptor would never poll readable.
                    let _ = ring.submit();
                }
                let wait_for = usize::from(wait);
                match submit_and_reap(ring, self.unreaped, wait_for, |ud, res| cqes.push((ud, res))) {
                    Ok(n) => self.unreaped -= n,
                    Err(e) => {
                        // None of ours is in the kernel: the rest were never
                        // submitted. Drop the ring with them (the kernel
                        // never sees them) and finish them below.
                        tracing::warn!(error = %e, "the write ring broke; finishing its rounds without it");
                        for (ud, res) in cqes.drain(..) {
                            self.record(ud, res);
                        }
                        self.ring = None;
                        self.unreaped = 0;
                        for r in self.rounds.values_mut() {
                            r.left = 0;
                        }
                    }
                }
            }
        }
        for (ud, res) in cqes {
            self.record(ud, res);
        }
        let done: Vec<u32> = self.rounds.iter().filter(|(_, r)| r.left == 0).map(|(&id, _)| id).collect();
        let mut landed = Vec::with_capacity(done.len());
        for id in done {
            let Some(r) = self.rounds.remove(&id) else { continue };
            let results = r
                .writes
                .iter()
                .zip(&r.results)
                .map(|(w, &res)| complete_write(w.file.as_ref(), w.offset, &w.data, res))
                .collect();
            if self.spare.len() < SPARE_ARENAS && !r.arena.is_empty() {
                self.spare.push(r.arena);
            }
            landed.push((r.order, r.tag, results));
        }
        landed.sort_unstable_by_key(|l| l.0);
        landed.into_iter().map(|(_, tag, results)| (tag, results)).collect()
    }

    fn record(&mut self, user_data: u64, res: i32) {
        let (id, i) = ((user_data >> 32) as u32, (user_data & 0xffff_ffff) as usize);
        if let Some(r) = self.rounds.get_mut(&id) {
            if let Some(slot) = r.results.get_mut(i) {
                if slot.replace(res).is_none() {
                    r.left = r.left.saturating_sub(1);
                }
            }
        }
    }
}

/// The submission queue had no room after its room was checked on this
/// thread: entries of the round may be in the kernel and the rest can
/// never be, so neither waiting nor releasing is safe.
#[cold]
fn lost_room() -> ! {
    eprintln!("filerep: the write ring's submission queue lost room it was checked to have; aborting");
    std::process::abort();
}

impl<T> Drop for WriteRing<T> {
    fn drop(&mut self) {
        // Nothing is released while the kernel may still use it.
        while self.unreaped > 0 && self.ring.is_some() {
            drop(self.reap(true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::disk::direct::DIRECT_ALIGN;
    use crate::io::disk::{Disk, FsPath, OpenMode, StdDisk};
    use crate::protocol::path::RelPath;

    fn direct_disk() -> (tempfile::TempDir, StdDisk) {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = StdDisk::open(&[dir.path().to_path_buf()]).and_then(|d| d.with_direct(true)).expect("direct disk");
        (dir, disk)
    }

    fn block(byte: u8) -> bytes::Bytes {
        // One byte in front: the data is not aligned in memory, so the ring copies it.
        bytes::Bytes::from([vec![0u8], vec![byte; 8192]].concat()).slice(1..)
    }

    #[test]
    fn rounds_in_flight_land_with_their_tags_and_write_what_they_were_given() {
        let (_dir, disk) = direct_disk();
        let file = disk.open(&FsPath::new(0, RelPath::top("f").expect("name")), OpenMode::Create).expect("open");
        let mut ring = WriteRing::<u64>::new().expect("ring");
        for tag in 0..MAX_RING_ROUNDS as u64 {
            let writes = (0..4u64)
                .map(|i| RingWrite {
                    file: file.clone(),
                    offset: (tag * 4 + i) * 8192,
                    data: block(tag as u8 * 4 + i as u8),
                })
                .collect();
            assert!(ring.submit(tag, writes).is_ok(), "round {tag} taken");
        }
        let refused = vec![RingWrite { file: file.clone(), offset: 1 << 20, data: block(0xee) }];
        assert!(ring.full_for(1), "the ring is full at its bound on rounds");
        assert!(ring.submit(99, refused).is_err(), "a round past the bound is refused");
        let mut tags = Vec::new();
        while ring.in_flight() > 0 {
            let landed = ring.reap(true);
            assert!(landed.windows(2).all(|w| w[0].0 < w[1].0), "one reap's rounds come by tag");
            for (tag, results) in landed {
                assert_eq!(results.len(), 4);
                assert!(results.iter().all(|r| r.is_ok()), "round {tag}: {results:?}");
                tags.push(tag);
            }
        }
        tags.sort_unstable();
        assert_eq!(tags, (0..MAX_RING_ROUNDS as u64).collect::<Vec<_>>());
        let mut back = vec![0u8; 8192];
        for k in 0..(MAX_RING_ROUNDS * 4) as u64 {
            file.read_at(k * 8192, &mut back).expect("read");
            assert!(back.iter().all(|&b| b == k as u8), "block {k}");
        }
    }

    /// Data already aligned in memory goes to the kernel as it is (no
    /// copy, no arena), beside data that is copied.
    #[test]
    fn aligned_data_is_written_from_where_it_is() {
        let (_dir, disk) = direct_disk();
        let file = disk.open(&FsPath::new(0, RelPath::top("f").expect("name")), OpenMode::Create).expect("open");
        let backing = bytes::Bytes::from(vec![9u8; 3 * 8192]);
        let at = backing.as_ptr().align_offset(DIRECT_ALIGN);
        let aligned = backing.slice(at..at + 8192);
        assert!(is_aligned_ptr(&aligned));
        let mut ring = WriteRing::<u64>::new().expect("ring");
        let writes = vec![RingWrite { file: file.clone(), offset: 0, data: aligned.clone() }];
        assert!(ring.submit(1, writes).is_ok());
        assert!(ring.rounds.values().all(|r| r.arena.is_empty()), "nothing copied");
        let mixed = vec![
            RingWrite { file: file.clone(), offset: 8192, data: aligned },
            RingWrite { file: file.clone(), offset: 16384, data: block(4) },
        ];
        assert!(ring.submit(2, mixed).is_ok());
        let mut tags = Vec::new();
        while ring.in_flight() > 0 {
            for (tag, results) in ring.reap(true) {
                assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
                tags.push(tag);
            }
        }
        assert_eq!(tags, [1, 2]);
        let mut back = vec![0u8; 3 * 8192];
        file.read_at(0, &mut back).expect("read");
        assert!(back[..16384].iter().all(|&b| b == 9) && back[16384..].iter().all(|&b| b == 4));
    }

    #[test]
    fn a_round_the_ring_cannot_take_is_handed_back() {
        let (_dir, disk) = direct_disk();
        let file = disk.open(&FsPath::new(0, RelPath::top("f").expect("name")), OpenMode::Create).expect("open");
        let mut ring = WriteRing::<u64>::new().expect("ring");
        let w = |offset: u64, data: bytes::Bytes| RingWrite { file: file.clone(), offset, data };
        let unaligned = vec![w(100, block(1))];
        let overlapping = vec![w(0, block(1)), w(4096, block(2))];
        let short = vec![w(0, bytes::Bytes::from_static(b"tail"))];
        for (what, round) in [("unaligned", unaligned), ("overlapping", overlapping), ("short", short)] {
            assert!(ring.submit(0, round).is_err(), "{what} refused");
        }
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn a_write_the_kernel_refuses_comes_back_as_its_error() {
        let (_dir, disk) = direct_disk();
        let file = disk.open(&FsPath::new(0, RelPath::top("f").expect("name")), OpenMode::Create).expect("open");
        let mut ring = WriteRing::<u64>::new().expect("ring");
        let w = |offset: u64| RingWrite { file: file.clone(), offset, data: block(3) };
        // A block ending at 2^63, past the largest offset any file may have
        // (2^63 - 1): refused (EINVAL) whatever the file system under the
        // test's temporary directory.
        assert!(ring.submit(5, vec![w(0), w((1 << 63) - 4096)]).is_ok());
        let mut landed = Vec::new();
        while ring.in_flight() > 0 {
            landed.extend(ring.reap(true));
        }
        let [(tag, results)] = &landed[..] else { panic!("one round: {}", landed.len()) };
        assert_eq!(*tag, 5);
        assert!(results[0].is_ok());
        let e = results[1].as_ref().expect_err("past the largest offset");
        assert_eq!(e.errno, Some(libc::EINVAL), "{e}");
    }
}
