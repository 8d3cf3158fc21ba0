//! The io_uring backend: namespace handling and `open` exactly as the std
//! backend (it wraps a [`StdDisk`]), file data through io_uring.
//!
//! Each thread has two rings, created on first use: a small one for single
//! operations (`write_at`, `read_at`, `sync_data`) and a larger one for
//! [`Disk::write_batch`] / [`Disk::sync_batch`], which push a whole batch
//! (up to the ring's size at a time) and wait for every completion.
//!
//! Memory safety: a submission entry carries raw pointers into the caller's
//! buffers, so no function here returns while the kernel may still use one.
//! [`submit_and_drain`] waits for the completion of every entry it was asked
//! about and gives up only when none of them is left in the kernel (all
//! remaining ones are still unsubmitted in the queue); the ring is then
//! dropped with those entries unsubmitted, so the kernel never reads them.
//! If a ring can not be created, or breaks, the operation falls back to the
//! std syscalls, so a ring problem is never reported as an I/O error.

use super::std_backend::{StdDisk, StdFile};
use super::{BatchWrite, Disk, DiskError, DiskErrorKind, DiskFile, DiskResult, FsPath, OpenMode};
use io_uring::{opcode, squeue, types, IoUring, Probe};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::LocalKey;

/// Entries of the per-thread ring for single operations.
const SINGLE_RING_ENTRIES: u32 = 64;
/// Entries of the per-thread batch ring; also the most SQEs one batch round submits.
const BATCH_RING_ENTRIES: u32 = 256;
/// The most bytes one read or write SQE asks for (the SQE length is a u32,
/// and Linux caps a single transfer just below 2 GiB anyway).
const MAX_RW: usize = 1 << 30;
/// Consecutive failed `io_uring_enter` calls, while operations are in the
/// kernel, after which we give up: we can neither wait for them nor return
/// while they may still write into a caller's buffer.
const MAX_ENTER_FAILURES: u32 = 10_000;

thread_local! {
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
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
fn submit_and_drain(ring: &mut IoUring, expected: usize, mut on_cqe: impl FnMut(u64, i32)) -> io::Result<()> {
    let mut reaped = 0usize;
    let mut failures = 0u32;
    loop {
        for cqe in ring.completion() {
            on_cqe(cqe.user_data(), cqe.result());
            reaped += 1;
        }
        if reaped >= expected {
            return Ok(());
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

/// Run one operation on this thread's single-op ring and return its CQE
/// result; `None` if no ring is usable (the caller then uses std syscalls).
///
/// # Safety
///
/// Every buffer `entry` points to must stay valid (and, for a read, not be
/// accessed otherwise) until this function returns, and the file descriptor
/// must stay open until then.
unsafe fn run_one(entry: &squeue::Entry) -> Option<i32> {
    let mut ring = take_ring(&RING, SINGLE_RING_ENTRIES)?;
    // SAFETY: the caller keeps the entry's buffers valid until we return, and
    // we do not return while the kernel may still use them: submit_and_drain
    // waits for the completion, or fails only while the entry is still
    // unsubmitted, in which case the ring is dropped below without ever
    // submitting it.
    if unsafe { ring.submission().push(entry) }.is_err() {
        // The ring is idle between calls, so a full queue means it is in an
        // unknown state: drop it (nothing of ours was queued).
        return None;
    }
    let mut result = None;
    match submit_and_drain(&mut ring, 1, |_, res| result = Some(res)) {
        Ok(()) => {
            put_ring(&RING, ring);
            result
        }
        Err(e) => {
            tracing::debug!(error = %e, "io_uring submission failed; dropping the ring and using std syscalls");
            drop(ring);
            None
        }
    }
}

/// Whether a negative CQE result is worth simply retrying.
fn retryable(errno: i32) -> bool {
    errno == libc::EINTR || errno == libc::EAGAIN
}

fn check_offset(offset: u64) -> io::Result<()> {
    // An offset of -1 (u64::MAX) would mean "the file position" to io_uring;
    // anything past i64::MAX is invalid for pwrite/pread anyway.
    if offset > i64::MAX as u64 {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    } else {
        Ok(())
    }
}

/// `pwrite` all of `buf` at `offset` through the single-op ring.
fn uring_write_all(file: &File, mut offset: u64, mut buf: &[u8]) -> io::Result<()> {
    let fd = file.as_raw_fd();
    while !buf.is_empty() {
        check_offset(offset)?;
        let len = buf.len().min(MAX_RW);
        let entry = opcode::Write::new(types::Fd(fd), buf.as_ptr(), len as u32).offset(offset).build();
        // SAFETY: `buf` is borrowed for this whole call and `file` (hence
        // `fd`) is borrowed too, so both outlive the operation, which
        // run_one waits for before returning.
        let res = match unsafe { run_one(&entry) } {
            Some(res) => res,
            None => return file.write_all_at(buf, offset),
        };
        if res < 0 {
            if retryable(-res) {
                continue;
            }
            return Err(io::Error::from_raw_os_error(-res));
        }
        let n = (res as usize).min(len);
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes"));
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// `pread` into `buf` at `offset` through the single-op ring, until `buf`
/// is full or end of file; returns the count.
fn uring_read(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let fd = file.as_raw_fd();
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset.checked_add(done as u64).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        check_offset(at)?;
        let rest = &mut buf[done..];
        let len = rest.len().min(MAX_RW);
        let entry = opcode::Read::new(types::Fd(fd), rest.as_mut_ptr(), len as u32).offset(at).build();
        // SAFETY: `rest` is an exclusive borrow of the caller's buffer for
        // this whole call, not touched until run_one returns, which it does
        // only after the read completed (or was never submitted).
        let res = match unsafe { run_one(&entry) } {
            Some(res) => res,
            None => return std_read(file, offset, buf, done),
        };
        if res < 0 {
            if retryable(-res) {
                continue;
            }
            return Err(io::Error::from_raw_os_error(-res));
        }
        if res == 0 {
            break;
        }
        done += (res as usize).min(len);
    }
    Ok(done)
}

/// Finish a read with std `pread` (no ring): fill `buf[done..]` until full or end of file.
fn std_read(file: &File, offset: u64, buf: &mut [u8], mut done: usize) -> io::Result<usize> {
    while done < buf.len() {
        let at = offset.checked_add(done as u64).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `fdatasync` through the single-op ring.
fn uring_sync_data(file: &File) -> io::Result<()> {
    let entry = opcode::Fsync::new(types::Fd(file.as_raw_fd())).flags(types::FsyncFlags::DATASYNC).build();
    loop {
        // SAFETY: an fsync entry points to no buffer; `file` is borrowed for
        // the whole call, so its descriptor stays open until completion.
        match unsafe { run_one(&entry) } {
            None => return file.sync_data(),
            Some(res) if res == -libc::EINTR => continue,
            Some(res) if res < 0 => return Err(io::Error::from_raw_os_error(-res)),
            Some(_) => return Ok(()),
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

/// Identifies the file behind a descriptor, so two handles on one file count
/// as the same file when ordering a batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum FileKey {
    Inode(u64, u64),
    Fd(RawFd),
}

fn file_key(fd: RawFd, cache: &mut HashMap<RawFd, FileKey>) -> FileKey {
    *cache.entry(fd).or_insert_with(|| match nix::sys::stat::fstat(fd) {
        Ok(st) => FileKey::Inode(st.st_dev, st.st_ino),
        Err(_) => FileKey::Fd(fd),
    })
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
        probe_io_uring().map_err(|e| DiskError::new("io_uring_probe", "", DiskErrorKind::Io, e))?;
        Ok(UringDisk { std: StdDisk::open(roots)? })
    }
}

fn probe_io_uring() -> io::Result<()> {
    let mut ring = IoUring::new(8)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (name, code) in [("read", opcode::Read::CODE), ("write", opcode::Write::CODE), ("fsync", opcode::Fsync::CODE)] {
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
        Ok(Arc::new(UringFile { inner: self.std.open_file(path, mode)? }))
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

    fn name(&self) -> &'static str {
        "io_uring"
    }

    /// Pushes the writes (up to [`BATCH_RING_ENTRIES`] at a time) and waits
    /// for all of them. Writes to overlapping ranges of one file never share
    /// a submission round, so they land in batch order as with the default.
    fn write_batch(&self, writes: &[BatchWrite<'_>]) -> Vec<DiskResult<()>> {
        let mut results: Vec<Option<DiskResult<()>>> = writes.iter().map(|_| None).collect();
        let mut round: Vec<usize> = Vec::with_capacity(BATCH_RING_ENTRIES as usize);
        let mut ranges: HashMap<FileKey, Vec<(u64, u64)>> = HashMap::new();
        let mut keys: HashMap<RawFd, FileKey> = HashMap::new();

        for (i, w) in writes.iter().enumerate() {
            let fd = match w.file.raw_fd() {
                Some(fd) if !w.data.is_empty() && w.offset <= i64::MAX as u64 => fd,
                // No descriptor (or nothing to submit, or an offset io_uring would
                // misread): the file's own write_at, which orders fine as this
                // file shares no descriptor with the round.
                _ => {
                    results[i] = Some(w.file.write_at(w.offset, w.data));
                    continue;
                }
            };
            let key = file_key(fd, &mut keys);
            let end = w.offset.saturating_add(w.data.len() as u64);
            let overlaps = ranges.get(&key).is_some_and(|rs| rs.iter().any(|&(s, e)| w.offset < e && s < end));
            if overlaps || round.len() == BATCH_RING_ENTRIES as usize {
                write_round(writes, &round, &mut results);
                round.clear();
                ranges.clear();
            }
            round.push(i);
            ranges.entry(key).or_default().push((w.offset, end));
        }
        write_round(writes, &round, &mut results);

        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(DiskError::new("write_batch", "", DiskErrorKind::Io, "write not performed")))
            })
            .collect()
    }

    /// Pushes an `fdatasync` for every file (up to [`BATCH_RING_ENTRIES`] at a
    /// time) and waits for all of them.
    fn sync_batch(&self, files: &[&dyn DiskFile]) -> Vec<DiskResult<()>> {
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

/// Submit the writes `round` (indexes into `writes`, each with a descriptor,
/// non-empty, pairwise non-overlapping per file) together and wait for all.
/// Short or retryable results are finished with the file's own `write_at`.
fn write_round(writes: &[BatchWrite<'_>], round: &[usize], results: &mut [Option<DiskResult<()>>]) {
    if round.is_empty() {
        return;
    }
    let mut cqe_res: HashMap<usize, i32> = HashMap::with_capacity(round.len());
    if let Some(mut ring) = take_ring(&BATCH_RING, BATCH_RING_ENTRIES) {
        let mut pushed = 0usize;
        for &i in round {
            let w = &writes[i];
            let Some(fd) = w.file.raw_fd() else { continue };
            let len = w.data.len().min(MAX_RW) as u32;
            let entry =
                opcode::Write::new(types::Fd(fd), w.data.as_ptr(), len).offset(w.offset).build().user_data(i as u64);
            // SAFETY: `w.data` and `w.file` are borrowed from `writes`, which
            // outlives this function, and we do not return before the kernel
            // is done with every pushed entry: submit_and_drain waits for all
            // their completions, and if it fails none is left in the kernel
            // and the ring (with any still-unsubmitted entries) is dropped.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                break; // Cannot happen (round ≤ ring size, ring idle); the rest go the slow way.
            }
            pushed += 1;
        }
        match submit_and_drain(&mut ring, pushed, |ud, res| {
            cqe_res.insert(ud as usize, res);
        }) {
            Ok(()) => put_ring(&BATCH_RING, ring),
            Err(e) => {
                tracing::debug!(error = %e, "io_uring batch submission failed; finishing with single writes");
                drop(ring);
            }
        }
    }
    for &i in round {
        let w = &writes[i];
        results[i] = Some(match cqe_res.get(&i).copied() {
            Some(res) if res >= 0 && res as usize >= w.data.len() => Ok(()),
            // Short write: finish the remainder (a zero-byte write reports WriteZero there).
            Some(res) if res >= 0 => {
                let n = res as usize;
                w.file.write_at(w.offset + n as u64, &w.data[n..])
            }
            Some(res) if retryable(-res) => w.file.write_at(w.offset, w.data),
            Some(res) => {
                let err = io::Error::from_raw_os_error(-res);
                let label = w.file.raw_fd().map(fd_label).unwrap_or_default();
                Err(DiskError::from_io("write", label, &err))
            }
            // Never submitted (no ring, or the ring broke): the single-op path.
            None => w.file.write_at(w.offset, w.data),
        });
    }
}

/// Submit an `fdatasync` for every `(index, fd)` of `round` together and wait for all.
fn sync_round(files: &[&dyn DiskFile], round: &[(usize, RawFd)], results: &mut [Option<DiskResult<()>>]) {
    if round.is_empty() {
        return;
    }
    let mut cqe_res: HashMap<usize, i32> = HashMap::with_capacity(round.len());
    if let Some(mut ring) = take_ring(&BATCH_RING, BATCH_RING_ENTRIES) {
        let mut pushed = 0usize;
        for &(i, fd) in round {
            let entry =
                opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build().user_data(i as u64);
            // SAFETY: an fsync entry points to no buffer; the descriptors
            // belong to files borrowed in `files`, which stay open until we
            // return, and we return only after every pushed entry completed
            // (or, if submission failed, was dropped unsubmitted with the ring).
            if unsafe { ring.submission().push(&entry) }.is_err() {
                break;
            }
            pushed += 1;
        }
        match submit_and_drain(&mut ring, pushed, |ud, res| {
            cqe_res.insert(ud as usize, res);
        }) {
            Ok(()) => put_ring(&BATCH_RING, ring),
            Err(e) => {
                tracing::debug!(error = %e, "io_uring batch submission failed; finishing with single syncs");
                drop(ring);
            }
        }
    }
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

/// A regular file whose data goes through io_uring.
#[derive(Debug)]
pub struct UringFile {
    inner: StdFile,
}

impl DiskFile for UringFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> DiskResult<()> {
        uring_write_all(self.inner.file(), offset, buf).map_err(|e| DiskError::from_io("write", self.inner.path(), &e))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> DiskResult<usize> {
        uring_read(self.inner.file(), offset, buf).map_err(|e| DiskError::from_io("read", self.inner.path(), &e))
    }

    fn sync_data(&self) -> DiskResult<()> {
        uring_sync_data(self.inner.file()).map_err(|e| DiskError::from_io("sync_data", self.inner.path(), &e))
    }

    fn set_len(&self, len: u64) -> DiskResult<()> {
        self.inner.set_len(len)
    }

    fn len(&self) -> DiskResult<u64> {
        self.inner.len()
    }

    fn raw_fd(&self) -> Option<i32> {
        self.inner.raw_fd()
    }
}
