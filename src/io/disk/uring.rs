//! The io_uring backend: namespace handling, `open` and every single
//! operation exactly as the std backend (it wraps a [`StdDisk`]);
//! [`Disk::sync_batch`] of several files through io_uring, so their
//! `fdatasync`s run in parallel and share journal commits.
//!
//! Why single operations are plain syscalls: a buffered write, read or
//! sync submitted alone and waited for is handed by the kernel to an
//! io_uring worker thread, which costs a second thread's wake-up and about
//! twice the CPU of `pwrite` for a 32 KiB block (docs/performance.md,
//! "A leaner write path"). Batches of buffered writes measured the same way:
//! a `pwrite` loop costs less CPU than the ring, so they go by `pwrite`.
//! On a direct disk, a batch's aligned block writes go through the ring
//! together, from aligned copies: O_DIRECT writes wait for the device, and
//! the ring keeps many in flight where a loop would wait for each in turn.
//!
//! Memory safety: a submission entry carries a file descriptor, so no
//! function here returns while the kernel may still use one.
//! [`submit_and_drain`] waits for the completion of every entry it was asked
//! about and gives up only when none of them is left in the kernel (all
//! remaining ones are still unsubmitted in the queue); the ring is then
//! dropped with those entries unsubmitted, so the kernel never sees them.
//! If a ring can not be created, or breaks, the operation falls back to the
//! std syscalls, so a ring problem is never reported as an I/O error.

use super::direct::AlignedBuf;
use super::std_backend::StdDisk;
use super::{BatchWrite, Disk, DiskError, DiskErrorKind, DiskFile, DiskResult, FsPath, OpenMode};
use io_uring::{opcode, squeue, types, IoUring, Probe};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::LocalKey;

/// Entries of the per-thread batch ring; also the most SQEs one batch round submits.
const BATCH_RING_ENTRIES: u32 = 256;
/// Consecutive failed `io_uring_enter` calls, while operations are in the
/// kernel, after which we give up: we can neither wait for them nor return
/// while they may still write into a caller's buffer.
const MAX_ENTER_FAILURES: u32 = 10_000;

thread_local! {
    /// Aligned copies of a direct batch's blocks (grown to the largest round, kept).
    static ARENA: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
    static BATCH_RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// Take this thread's ring out of `key` (creating it on first use); `None`
/// if it can not be created. Give it back with [`put_ring`] when it is idle.
/// Taking it out (rather than borrowing) keeps re-entrancy trivially safe.
fn take_ring(key: &'static LocalKey<RefCell<Option<IoUring>>>, entries: u32) -> Option<IoUring> {
    let cached = key.try_with(|slot| slot.borrow_mut().take()).ok().flatten();
    match cached {
        Some(ring) => Some(ring),
        None => match IoUring::new(entries) {
            Ok(ring) => Some(ring),
            Err(e) => {
                tracing::debug!(error = %e, "io_uring setup failed on this thread; using std syscalls");
                None
            }
        },
    }
}

/// Return an idle ring (no queued or in-flight entries) to `key`.
fn put_ring(key: &'static LocalKey<RefCell<Option<IoUring>>>, ring: IoUring) {
    // During thread teardown the slot may be gone; the ring is then just dropped.
    let _ = key.try_with(move |slot| *slot.borrow_mut() = Some(ring));
}

/// Submit everything queued on `ring` and reap completions until `expected`
/// have arrived, handing each to `on_cqe(user_data, result)`.
///
/// Returns `Err` only when none of the `expected` operations is still in the
/// kernel: those not completed are still unsubmitted in the queue, so the
/// caller must drop the ring (never submitting them) and may then release
/// the buffers. While operations are in flight it keeps waiting (and, after
/// [`MAX_ENTER_FAILURES`] consecutive failures, aborts the process rather
/// than return while the kernel may still write into freed memory).
fn submit_and_drain(ring: &mut IoUring, expected: usize, on_cqe: impl FnMut(u64, i32)) -> io::Result<()> {
    submit_and_reap(ring, expected, expected, on_cqe).map(|_| ())
}

/// [`submit_and_drain`] for a ring that keeps operations in flight: of the
/// `expected` pushed and not yet reaped, return once at least `wait_for`
/// have completed (every completion already there is reaped too); how
/// many were. `Err` under the same condition: none of the `expected` is
/// left in the kernel.
pub(super) fn submit_and_reap(
    ring: &mut IoUring,
    expected: usize,
    wait_for: usize,
    mut on_cqe: impl FnMut(u64, i32),
) -> io::Result<usize> {
    let mut reaped = 0usize;
    let mut failures = 0u32;
    loop {
        for cqe in ring.completion() {
            on_cqe(cqe.user_data(), cqe.result());
            reaped += 1;
        }
        if reaped >= wait_for.min(expected) {
            return Ok(reaped);
        }
        match ring.submit_and_wait(1) {
            Ok(_) => failures = 0,
            Err(e) => {
                let queued = ring.submission().len();
                let in_kernel = expected.saturating_sub(reaped).saturating_sub(queued);
                if in_kernel == 0 {
                    return Err(e);
                }
                if e.raw_os_error() != Some(libc::EINTR) {
                    failures += 1;
                    if failures >= MAX_ENTER_FAILURES {
                        eprintln!(
                            "filerep: io_uring_enter keeps failing ({e}) with {in_kernel} operations in flight; aborting"
                        );
                        std::process::abort();
                    }
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Names a descriptor in an error from a batch (the batch only has `&dyn DiskFile`).
fn fd_label(fd: RawFd) -> String {
    match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        Ok(p) => format!("fd {fd} ({})", p.display()),
        Err(_) => format!("fd {fd}"),
    }
}

/// The local file system with file data through io_uring.
#[derive(Debug)]
pub struct UringDisk {
    std: StdDisk,
}

impl UringDisk {
    /// Open the filespace roots (as [`StdDisk::open`]) after checking that
    /// io_uring works here and supports the operations we use; fails with
    /// [`DiskErrorKind::Io`] otherwise, so the caller can fall back to std.
    pub fn open(roots: &[PathBuf]) -> DiskResult<UringDisk> {
        UringDisk::over(StdDisk::open(roots)?)
    }

    /// The io_uring backend over an opened std disk (direct or not).
    pub fn over(std: StdDisk) -> DiskResult<UringDisk> {
        probe().map(|()| UringDisk { std })
    }
}

/// Whether io_uring works here and supports the operations we use
/// ([`DiskErrorKind::Io`] if not: the caller falls back to std).
pub fn probe() -> DiskResult<()> {
    probe_io_uring().map_err(|e| DiskError::new("io_uring_probe", "", DiskErrorKind::Io, e))
}

fn probe_io_uring() -> io::Result<()> {
    let mut ring = IoUring::new(8)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (name, code) in [("write", opcode::Write::CODE), ("fsync", opcode::Fsync::CODE)] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, format!("io_uring lacks the {name} opcode")));
        }
    }
    // One round trip, in case setup works but submission is blocked.
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP entry points to no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| io::Error::other("io_uring queue full"))?;
    let mut seen = None;
    submit_and_drain(&mut ring, 1, |ud, res| seen = Some((ud, res)))?;
    match seen {
        Some((7, 0)) => Ok(()),
        other => Err(io::Error::other(format!("io_uring NOP completed unexpectedly: {other:?}"))),
    }
}

impl Disk for UringDisk {
    fn open(&self, path: &FsPath, mode: OpenMode) -> DiskResult<Arc<dyn DiskFile>> {
        self.std.open(path, mode)
    }

    fn remove_file(&self, path: &FsPath) -> DiskResult<()> {
        self.std.remove_file(path)
    }

    fn rename(&self, from: &FsPath, to: &FsPath) -> DiskResult<()> {
        self.std.rename(from, to)
    }

    fn create_dir(&self, path: &FsPath) -> DiskResult<()> {
        self.std.create_dir(path)
    }

    fn remove_dir(&self, path: &FsPath) -> DiskResult<()> {
        self.std.remove_dir(path)
    }

    fn sync_parent_dir(&self, path: &FsPath) -> DiskResult<()> {
        self.std.sync_parent_dir(path)
    }

    fn parent_dir_handle(&self, path: &FsPath) -> DiskResult<Arc<dyn DiskFile>> {
        self.std.parent_dir_handle(path)
    }

    fn exists(&self, path: &FsPath) -> DiskResult<bool> {
        self.std.exists(path)
    }

    fn entry_kind(&self, path: &FsPath) -> DiskResult<Option<super::EntryKind>> {
        self.std.entry_kind(path)
    }

    fn list_dir(
        &self,
        filespace: u16,
        dir: Option<&crate::protocol::path::RelPath>,
    ) -> DiskResult<Vec<(String, super::EntryKind)>> {
        self.std.list_dir(filespace, dir)
    }

    fn takes_write_ring(&self) -> bool {
        self.std.direct()
    }
    fn writes_direct(&self) -> bool {
        self.std.direct()
    }
    fn name(&self) -> &'static str {
        if self.std.direct() {
            "io_uring, O_DIRECT"
        } else {
            "io_uring"
        }
    }

    /// On a direct disk: the aligned writes to direct files through the
    /// ring (up to [`BATCH_RING_ENTRIES`] at a time), the others by the
    /// file's own `write_at`; in batch order where they overlap. Otherwise
    /// a `pwrite` loop.
    fn write_batch(&self, writes: &[BatchWrite<'_>]) -> Vec<DiskResult<()>> {
        if !self.std.direct() {
            return self.std.write_batch(writes);
        }
        let mut results: Vec<Option<DiskResult<()>>> = writes.iter().map(|_| None).collect();
        let mut round: Vec<usize> = Vec::with_capacity(BATCH_RING_ENTRIES as usize);
        let mut ranges: HashMap<FileKey, Vec<(u64, u64)>> = HashMap::new();
        let mut keys: HashMap<RawFd, FileKey> = HashMap::new();
        let mut bytes = 0usize;
        for (i, w) in writes.iter().enumerate() {
            let end = w.offset.saturating_add(w.data.len() as u64);
            let mut overlaps = |fd: RawFd| {
                let key = file_key(fd, &mut keys);
                (key, ranges.get(&key).is_some_and(|rs| rs.iter().any(|&(s, e)| w.offset < e && s < end)))
            };
            let fd = match w.file.direct_fd() {
                Some(fd)
                    if super::direct::aligned(w.offset, w.data.len())
                        && w.data.len() <= MAX_ROUND_BYTES
                        && w.offset <= i64::MAX as u64 =>
                {
                    fd
                }
                // Not for the ring: on its own, after the round so far if
                // it overlaps a write there (the same inode, by either descriptor).
                _ => {
                    if w.file.raw_fd().is_none_or(|fd| overlaps(fd).1) {
                        direct_round(writes, &round, &mut results);
                        round.clear();
                        ranges.clear();
                        bytes = 0;
                    }
                    results[i] = Some(w.file.write_at(w.offset, w.data));
                    continue;
                }
            };
            let (key, overlaps) = overlaps(fd);
            if overlaps || round.len() == BATCH_RING_ENTRIES as usize || bytes + w.data.len() > MAX_ROUND_BYTES {
                direct_round(writes, &round, &mut results);
                round.clear();
                ranges.clear();
                bytes = 0;
            }
            bytes += w.data.len();
            round.push(i);
            ranges.entry(key).or_default().push((w.offset, end));
        }
        direct_round(writes, &round, &mut results);
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(DiskError::new("write_batch", "", DiskErrorKind::Io, "write not performed")))
            })
            .collect()
    }

    /// Pushes an `fdatasync` for every file (up to [`BATCH_RING_ENTRIES`] at a
    /// time) and waits for all of them. One file is synced by the syscall:
    /// alone, the ring's worker hand-off buys nothing.
    fn sync_batch(&self, files: &[&dyn DiskFile]) -> Vec<DiskResult<()>> {
        if let [one] = files {
            return vec![one.sync_data()];
        }
        let mut results: Vec<Option<DiskResult<()>>> = files.iter().map(|_| None).collect();
        let mut round: Vec<(usize, RawFd)> = Vec::with_capacity(BATCH_RING_ENTRIES as usize);
        for (i, f) in files.iter().enumerate() {
            match f.raw_fd() {
                Some(fd) => round.push((i, fd)),
                None => results[i] = Some(f.sync_data()),
            }
            if round.len() == BATCH_RING_ENTRIES as usize {
                sync_round(files, &round, &mut results);
                round.clear();
            }
        }
        sync_round(files, &round, &mut results);

        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(DiskError::new("sync_batch", "", DiskErrorKind::Io, "sync not performed")))
            })
            .collect()
    }
}

/// Whether a negative CQE result is worth simply retrying.
fn retryable(errno: i32) -> bool {
    errno == libc::EINTR || errno == libc::EAGAIN
}

/// The most bytes of one direct round (its aligned copies in the arena);
/// a larger single write goes by the file's own `write_at`.
const MAX_ROUND_BYTES: usize = 16 << 20;

/// Push `entries` (at most [`BATCH_RING_ENTRIES`]) onto this thread's batch
/// ring together and wait for every one: their results by user data. One
/// that is absent was never submitted (no ring, or it broke): the caller
/// does it without the ring.
///
/// # Safety
///
/// Every buffer and descriptor an entry refers to must stay valid until
/// this returns. It returns only when none of the pushed entries is in the
/// kernel: submit_and_drain waits for them all, or fails only when none is
/// left there, and the ring is then dropped with the rest unsubmitted.
unsafe fn run_round(entries: impl Iterator<Item = squeue::Entry>) -> HashMap<usize, i32> {
    let mut cqe_res = HashMap::new();
    let Some(mut ring) = take_ring(&BATCH_RING, BATCH_RING_ENTRIES) else { return cqe_res };
    let mut pushed = 0usize;
    for entry in entries {
        // SAFETY: the caller keeps what the entry refers to valid until we return.
        if unsafe { ring.submission().push(&entry) }.is_err() {
            break; // Cannot happen (a round fits the ring, which is idle); the rest go without it.
        }
        pushed += 1;
    }
    match submit_and_drain(&mut ring, pushed, |ud, res| {
        cqe_res.insert(ud as usize, res);
    }) {
        Ok(()) => put_ring(&BATCH_RING, ring),
        Err(e) => {
            tracing::debug!(error = %e, "io_uring batch submission failed; finishing without the ring");
            drop(ring);
        }
    }
    cqe_res
}

/// Identifies the file behind a descriptor, so two handles on one file count
/// as the same file when ordering a batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum FileKey {
    Inode(u64, u64),
    Fd(RawFd),
}

pub(super) fn file_key(fd: RawFd, cache: &mut HashMap<RawFd, FileKey>) -> FileKey {
    *cache.entry(fd).or_insert_with(|| match nix::sys::stat::fstat(fd) {
        Ok(st) => FileKey::Inode(st.st_dev, st.st_ino),
        Err(_) => FileKey::Fd(fd),
    })
}

/// Submit the aligned direct writes `round` (indexes into `writes`, each
/// with a direct descriptor, pairwise non-overlapping per file) together
/// from aligned copies in this thread's arena, and wait for all. Short or
/// retryable results are finished with the file's own `write_at`.
fn direct_round(writes: &[BatchWrite<'_>], round: &[usize], results: &mut [Option<DiskResult<()>>]) {
    if round.is_empty() {
        return;
    }
    let cqe_res = ARENA.with(|cell| {
        let mut arena = cell.borrow_mut();
        let direct: Vec<(usize, RawFd)> =
            round.iter().filter_map(|&i| writes[i].file.direct_fd().map(|fd| (i, fd))).collect();
        let sources = aligned_sources(&mut arena, direct.iter().map(|&(i, _)| writes[i].data));
        let entries = direct.iter().zip(sources).map(|(&(i, fd), from)| {
            let w = &writes[i];
            opcode::Write::new(types::Fd(fd), from, w.data.len() as u32).offset(w.offset).build().user_data(i as u64)
        });
        // SAFETY: each entry points into `arena`, borrowed (neither resized
        // nor dropped) until this closure returns, or into a buffer borrowed
        // from `writes`, and its descriptor belongs to a file borrowed from
        // `writes`; run_round returns only when no entry is left in the kernel.
        unsafe { run_round(entries) }
    });
    for &i in round {
        let w = &writes[i];
        results[i] = Some(complete_write(w.file, w.offset, w.data, cqe_res.get(&i).copied()));
    }
}

/// Where each of `blocks` (lengths multiples of [`super::direct::DIRECT_ALIGN`]) is
/// written from with O_DIRECT: the block itself when it is aligned in
/// memory, else an aligned copy in `arena` (grown to fit; what it held
/// before is overwritten). The pointers into `arena` stay valid while it is
/// neither resized nor dropped.
pub(super) fn aligned_sources<'a>(
    arena: &mut AlignedBuf,
    blocks: impl Iterator<Item = &'a [u8]> + Clone,
) -> Vec<*const u8> {
    let copied: usize = blocks.clone().filter(|b| !super::direct::is_aligned_ptr(b)).map(|b| b.len()).sum();
    if copied > arena.len() {
        arena.set_len(copied);
    }
    // Every length is a multiple of DIRECT_ALIGN, so each copy starts aligned.
    let mut at = 0;
    let arena = arena.as_mut_slice();
    blocks
        .map(|b| {
            if super::direct::is_aligned_ptr(b) {
                return b.as_ptr();
            }
            arena[at..at + b.len()].copy_from_slice(b);
            let from = arena[at..].as_ptr();
            at += b.len();
            from
        })
        .collect()
}

/// What the kernel's result `res` for a direct write of `data` at `offset`
/// means: a short write is finished, and a write that failed for a passing
/// reason or never went to the kernel (`None`) is done, by the file's own
/// `write_at`.
pub(super) fn complete_write(file: &dyn DiskFile, offset: u64, data: &[u8], res: Option<i32>) -> DiskResult<()> {
    match res {
        Some(res) if res >= 0 && res as usize >= data.len() => Ok(()),
        // Short write: finish the remainder (a zero-byte write reports WriteZero there).
        Some(res) if res >= 0 => {
            let n = res as usize;
            file.write_at(offset + n as u64, &data[n..])
        }
        Some(res) if retryable(-res) => file.write_at(offset, data),
        Some(res) => {
            let err = io::Error::from_raw_os_error(-res);
            let label = file.raw_fd().map(fd_label).unwrap_or_default();
            Err(DiskError::from_io("write", label, &err))
        }
        None => file.write_at(offset, data),
    }
}

/// Submit an `fdatasync` for every `(index, fd)` of `round` together and wait for all.
fn sync_round(files: &[&dyn DiskFile], round: &[(usize, RawFd)], results: &mut [Option<DiskResult<()>>]) {
    if round.is_empty() {
        return;
    }
    let entries = round.iter().map(|&(i, fd)| {
        opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build().user_data(i as u64)
    });
    // SAFETY: an fsync entry points to no buffer; the descriptors belong to
    // files borrowed in `files`, open until we return, and run_round returns
    // only when no entry is left in the kernel.
    let cqe_res = unsafe { run_round(entries) };
    for &(i, fd) in round {
        results[i] = Some(match cqe_res.get(&i).copied() {
            Some(res) if res >= 0 => Ok(()),
            Some(res) if res == -libc::EINTR => files[i].sync_data(),
            Some(res) => Err(DiskError::from_io("sync_data", fd_label(fd), &io::Error::from_raw_os_error(-res))),
            // Never submitted: sync it on its own.
            None => files[i].sync_data(),
        });
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` of the whole file behind `fd`
/// (through the ring: std has no wrapper, and unsafe code stays at this
/// boundary): writeback of its dirty pages starts, nothing waits for it to
/// end. A hint: if the ring or the call fails, nothing else changes.
pub(crate) fn start_writeback(fd: RawFd, label: &str) {
    let entry =
        opcode::SyncFileRange::new(types::Fd(fd), 0).offset(0).flags(libc::SYNC_FILE_RANGE_WRITE).build().user_data(0);
    // SAFETY: the entry points to no buffer; `fd` belongs to a file the
    // caller borrows until we return, and run_round returns only when the
    // entry is no longer in the kernel.
    let res = unsafe { run_round(std::iter::once(entry)) };
    if let Some(&r) = res.get(&0) {
        if r < 0 {
            tracing::debug!(file = label, errno = -r, "starting writeback failed (a hint: ignored)");
        }
    }
}

/// Writes in flight of [`sequential_write_rate`] (the queue depth).
pub const SEQ_WRITE_DEPTH: u32 = 32;
/// Bytes of each write of [`sequential_write_rate`].
pub const SEQ_WRITE_BLOCK: usize = 1 << 20;

/// The device's own sequential write rate, what a full resync is compared
/// with: `bytes` (rounded up to [`SEQ_WRITE_BLOCK`]) written to the new
/// file `path` with O_DIRECT in [`SEQ_WRITE_BLOCK`] writes, with
/// [`SEQ_WRITE_DEPTH`] of them in flight, then `fdatasync`. Bytes per
/// second, from the open to the end of the sync. The file is removed.
pub fn sequential_write_rate(path: &std::path::Path, bytes: u64) -> DiskResult<f64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let label = path.display().to_string();
    let start = std::time::Instant::now();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| DiskError::from_io("open (O_DIRECT)", &label, &e))?;
    let result = (|| {
        // One aligned block of data (not zeros, which a device might elide),
        // written at every offset: writes only read it. Made before the
        // ring, so it is dropped after it.
        let mut backing = AlignedBuf::new(SEQ_WRITE_BLOCK);
        for (i, b) in backing.as_mut_slice().iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3];
        }
        let block = backing.as_slice();
        let mut ring = IoUring::new(SEQ_WRITE_DEPTH).map_err(|e| DiskError::from_io("io_uring setup", &label, &e))?;
        let total = bytes.div_ceil(SEQ_WRITE_BLOCK as u64) * SEQ_WRITE_BLOCK as u64;
        let fd = file.as_raw_fd();
        let (mut next, mut in_flight) = (0u64, 0usize);
        let mut failed: Option<DiskError> = None;
        loop {
            while failed.is_none() && in_flight < SEQ_WRITE_DEPTH as usize && next < total {
                let entry = opcode::Write::new(types::Fd(fd), block.as_ptr(), SEQ_WRITE_BLOCK as u32)
                    .offset(next)
                    .build()
                    .user_data(next);
                // SAFETY: the entry points into `block` and at `file`'s
                // descriptor, both alive until this closure returns; it
                // returns only once `in_flight` is 0 (or submit_and_reap
                // says none is left in the kernel), and the ring, created
                // here, is dropped before them.
                if unsafe { ring.submission().push(&entry) }.is_err() {
                    break;
                }
                in_flight += 1;
                next += SEQ_WRITE_BLOCK as u64;
            }
            if in_flight == 0 {
                break;
            }
            let reaped = submit_and_reap(&mut ring, in_flight, 1, |off, res| {
                if failed.is_none() {
                    if res < 0 {
                        let e = io::Error::from_raw_os_error(-res);
                        failed = Some(DiskError::from_io("write (O_DIRECT)", format!("{label} at {off}"), &e));
                    } else if res as usize != SEQ_WRITE_BLOCK {
                        failed = Some(DiskError::new(
                            "write (O_DIRECT)",
                            format!("{label} at {off}"),
                            DiskErrorKind::Io,
                            format!("short write: {res} of {SEQ_WRITE_BLOCK} bytes"),
                        ));
                    }
                }
            });
            match reaped {
                Ok(n) => in_flight -= n,
                // None of ours is left in the kernel: nothing can touch `block` any more.
                Err(e) => return Err(DiskError::from_io("io_uring_enter", &label, &e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if next < total {
            return Err(DiskError::new("write (O_DIRECT)", &label, DiskErrorKind::Io, "the ring took no more writes"));
        }
        file.sync_data().map_err(|e| DiskError::from_io("fdatasync", &label, &e))?;
        Ok(total as f64 / start.elapsed().as_secs_f64().max(1e-9))
    })();
    let _ = std::fs::remove_file(path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequential_write_rate_writes_syncs_and_removes_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seq");
        // 5 MiB and a byte: rounded up to whole writes, more than one ring's worth is not needed.
        let rate = sequential_write_rate(&path, (5 << 20) + 1).expect("O_DIRECT writes on the test's file system");
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
        assert!(!path.exists(), "the measurement's file is removed");
        // It never writes over a file that is there: refused, and left as it was.
        std::fs::write(&path, b"keep me").unwrap();
        let e = sequential_write_rate(&path, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("seq"), "the message names the file: {e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        // A directory that is not there: a clear error, nothing made.
        let missing = dir.path().join("no/such/dir/seq");
        assert!(sequential_write_rate(&missing, 1 << 20).is_err());
        assert!(!dir.path().join("no").exists());
    }
}
