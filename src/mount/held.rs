//! A byte write held back a moment, so that the write continuing it goes
//! out with it as one call, and the write an `fsync` follows returns
//! without waiting for the segment. SQLite appends each WAL frame as two
//! writes, a 24-byte frame header and then the page, and syncs after the
//! last: holding both makes the frame one call instead of two, sent by the
//! `fsync` (docs/mount.md, "Small writes").
//!
//! What keeps this invisible to clients:
//! - only a byte write shorter than [`HOLD_BELOW`] is held, at most one at
//!   a time for the whole mount, and for at most [`HOLD_FOR`] (a timer
//!   thread sends it then);
//! - a write that continues it (same file, the next byte) goes out with
//!   it; an `fsync` of its file sends it with the sync, as one call; any
//!   other request sends it first (`settle`), so reads, attributes,
//!   syncs and namespace changes all see it. Namespace changes settle under
//!   the exclusive namespace lock, so the held write's path still names its
//!   file when it goes;
//! - a held write that fails once sent is reported by the next `fsync` or
//!   close (`flush`) of its file, as the kernel reports a failed write-back;
//!   and nothing is durable before an `fsync` anyway.

use super::changes::Changes;
use super::errno::errno_of;
use crate::protocol::MAX_WRITE_AT;
use fuser::Errno;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Byte writes shorter than this may be held (a WAL frame header and its
/// page, a journal header and its records); a write that brings a held
/// one to this size sends it. A bound on the copy a held write costs.
pub(super) const HOLD_BELOW: usize = 64 * 1024;
/// The longest a write is held when nothing follows it.
pub(super) const HOLD_FOR: Duration = Duration::from_millis(2);
/// Files with a failure waiting for their next fsync or close, at most (a
/// bound on memory if clients never sync; the oldest reports are dropped).
const MAX_FAILED: usize = 4096;

struct Pending {
    ino: u64,
    path: String,
    offset: u64,
    data: Vec<u8>,
    since: Instant,
}

pub(super) struct Held {
    fs: u16,
    changes: Arc<dyn Changes>,
    slot: Mutex<Option<Pending>>,
    /// Wakes the timer when a write is held, or to stop.
    wake: Condvar,
    /// Held writes that failed once sent, by inode.
    failed: Mutex<HashMap<u64, Errno>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`Held::write`] did with a write.
pub(super) enum Taken {
    /// Held, or sent with the one it continues: the bytes accepted, or the error.
    Done(Result<usize, Errno>),
    /// Not for holding: the caller writes it through (anything held went first).
    WriteThrough,
}

impl Held {
    /// Holding for filespace `fs`, and the timer thread that bounds it.
    pub(super) fn start(fs: u16, changes: Arc<dyn Changes>) -> std::io::Result<Arc<Held>> {
        let held = Arc::new(Held {
            fs,
            changes,
            slot: Mutex::new(None),
            wake: Condvar::new(),
            failed: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let timer = held.clone();
        std::thread::Builder::new().name("filerep-mount-held".into()).spawn(move || timer.run_timer())?;
        Ok(held)
    }

    /// A write of `data` at `offset` to inode `ino` (named `path`); `blocks`:
    /// it is whole aligned blocks (those are never held).
    pub(super) fn write(&self, ino: u64, path: &str, offset: u64, data: &[u8], blocks: bool) -> Taken {
        let mut slot = lock(&self.slot);
        if let Some(p) = slot.as_mut() {
            let continues = p.ino == ino && p.offset + p.data.len() as u64 == offset;
            if continues && !blocks && p.data.len() + data.len() <= MAX_WRITE_AT {
                p.data.extend_from_slice(data);
                if p.data.len() < HOLD_BELOW {
                    return Taken::Done(Ok(data.len()));
                }
                let Some(p) = slot.take() else { return Taken::WriteThrough };
                // The held part was answered already: a failure is its
                // file's to report, and this write's own error.
                return Taken::Done(self.send(p).map(|()| data.len()));
            }
            self.send_held(&mut slot);
        }
        if blocks || data.len() >= HOLD_BELOW {
            return Taken::WriteThrough;
        }
        *slot = Some(Pending { ino, path: path.to_string(), offset, data: data.to_vec(), since: Instant::now() });
        self.wake.notify_one();
        Taken::Done(Ok(data.len()))
    }

    /// Send what is held, if anything: before any request that is not a
    /// write continuing it.
    pub(super) fn settle(&self) {
        self.send_held(&mut lock(&self.slot));
    }

    /// An `fsync` of inode `ino`: if the write held is its file's, send it
    /// with the sync as one call (one round trip to the mirror) and give
    /// the sync's result; otherwise send what is held and give `None` (the
    /// caller syncs).
    pub(super) fn sync_held(&self, ino: u64) -> Option<Result<(), Errno>> {
        let mut slot = lock(&self.slot);
        match slot.take() {
            Some(p) if p.ino == ino => {
                let r = self.changes.write_at_and_sync(self.fs, &p.path, p.offset, &p.data);
                Some(r.map_err(|e| {
                    tracing::warn!(path = %p.path, offset = p.offset, bytes = p.data.len(), error = %e,
                        "a held write and the fsync that sent it failed");
                    errno_of(&e)
                }))
            }
            other => {
                *slot = other;
                self.send_held(&mut slot);
                None
            }
        }
    }

    /// Send what `slot` (the locked slot) holds, if anything; a failure is
    /// its file's to report.
    fn send_held(&self, slot: &mut Option<Pending>) {
        if let Some(p) = slot.take() {
            let _ = self.send(p);
        }
    }

    /// The failure of a held write to inode `ino` not reported yet, if any;
    /// reported once.
    pub(super) fn take_failure(&self, ino: u64) -> Option<Errno> {
        lock(&self.failed).remove(&ino)
    }

    /// Send `p` (the slot's lock is held by the caller, or `p` was taken
    /// under it: nothing else reaches the segment for its file meanwhile).
    /// A failure is kept for its file's next fsync or close.
    fn send(&self, p: Pending) -> Result<(), Errno> {
        let mut done = 0usize;
        for chunk in p.data.chunks(MAX_WRITE_AT) {
            if let Err(e) = self.changes.write_at(self.fs, &p.path, p.offset + done as u64, chunk) {
                let errno = errno_of(&e);
                tracing::warn!(
                    path = %p.path,
                    offset = p.offset,
                    bytes = p.data.len(),
                    error = %e,
                    "a held write failed once sent: the file's next fsync or close reports it"
                );
                let mut failed = lock(&self.failed);
                if failed.len() >= MAX_FAILED {
                    failed.clear();
                }
                failed.insert(p.ino, errno);
                return Err(errno);
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// Send a held write once it has waited [`HOLD_FOR`]; at the end, what is left.
    fn run_timer(&self) {
        let mut slot = lock(&self.slot);
        loop {
            if self.stop.load(Ordering::Acquire) {
                return self.send_held(&mut slot);
            }
            let due = slot.as_ref().map(|p| p.since + HOLD_FOR);
            match due {
                None => slot = self.wake.wait(slot).unwrap_or_else(|e| e.into_inner()),
                Some(due) => {
                    let now = Instant::now();
                    if now >= due {
                        self.send_held(&mut slot);
                    } else {
                        slot = self.wake.wait_timeout(slot, due - now).unwrap_or_else(|e| e.into_inner()).0;
                    }
                }
            }
        }
    }

    /// Send what is held and end the timer (the mount is going away).
    pub(super) fn stop(&self) {
        let mut slot = lock(&self.slot);
        self.send_held(&mut slot);
        self.stop.store(true, Ordering::Release);
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::client::{ClientError, ErrorClass};

    /// A segment that records byte writes and fails them on demand.
    #[derive(Default)]
    struct Recorder {
        writes: Mutex<Vec<(String, u64, Vec<u8>)>>,
        /// Writes that came with their file's sync: path, offset, length.
        synced: Mutex<Vec<(String, u64, usize)>>,
        fail: AtomicBool,
    }

    impl Changes for Recorder {
        fn create(&self, _: u16, _: &str) -> Result<(), ClientError> {
            Ok(())
        }
        fn write_block(&self, _: u16, _: &str, _: u64, _: &[u8]) -> Result<(), ClientError> {
            Ok(())
        }
        fn extend(&self, _: u16, _: &str, _: u64, _: &[u8]) -> Result<(), ClientError> {
            Ok(())
        }
        fn write_at(&self, _: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(ClientError::Call { class: ErrorClass::Faulted, message: "injected".into() });
            }
            lock(&self.writes).push((path.to_string(), offset, data.to_vec()));
            Ok(())
        }
        fn write_at_and_sync(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
            self.write_at(fs, path, offset, data)?;
            lock(&self.synced).push((path.to_string(), offset, data.len()));
            Ok(())
        }
        fn set_len(&self, _: u16, _: &str, _: u64) -> Result<(), ClientError> {
            Ok(())
        }
        fn mkdir(&self, _: u16, _: &str) -> Result<(), ClientError> {
            Ok(())
        }
        fn unlink(&self, _: u16, _: &str) -> Result<(), ClientError> {
            Ok(())
        }
        fn rmdir(&self, _: u16, _: &str) -> Result<(), ClientError> {
            Ok(())
        }
        fn rename(&self, _: u16, _: &str, _: &str) -> Result<(), ClientError> {
            Ok(())
        }
        fn sync(&self, _: u16, _: &str) -> Result<(), ClientError> {
            Ok(())
        }
        fn sync_dir(&self, _: u16, _: &str) -> Result<(), ClientError> {
            Ok(())
        }
    }

    fn done(t: Taken) -> Result<usize, Errno> {
        match t {
            Taken::Done(r) => r,
            Taken::WriteThrough => panic!("expected the write to be taken"),
        }
    }

    #[test]
    fn a_header_and_the_page_after_it_go_out_as_one_write() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        // Stop the timer first: this test drives the slot by hand.
        held.stop();
        assert_eq!(done(held.write(7, "db-wal", 32, &[1u8; 24], false)), Ok(24));
        assert!(lock(&seg.writes).is_empty(), "the header is held");
        assert_eq!(done(held.write(7, "db-wal", 56, &[2u8; 4096], false)), Ok(4096));
        assert!(lock(&seg.writes).is_empty(), "the frame is held until something else comes");
        held.settle();
        let w = lock(&seg.writes).clone();
        assert_eq!(w.len(), 1, "one call for both");
        assert_eq!((w[0].0.as_str(), w[0].1, w[0].2.len()), ("db-wal", 32, 4120));
        assert_eq!((&w[0].2[..24], &w[0].2[24..]), (&[1u8; 24][..], &[2u8; 4096][..]));
        // A continuation that brings it to HOLD_BELOW goes out at once, with it.
        done(held.write(7, "db-wal", 4152, &[3u8; 24], false)).unwrap();
        assert_eq!(done(held.write(7, "db-wal", 4176, &[4u8; HOLD_BELOW], false)), Ok(HOLD_BELOW));
        let w = lock(&seg.writes).clone();
        assert_eq!(w.len(), 2);
        assert_eq!((w[1].1, w[1].2.len()), (4152, 24 + HOLD_BELOW));
    }

    #[test]
    fn an_fsync_sends_its_files_held_write_with_the_sync() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        done(held.write(7, "db-wal", 32, &[1u8; 24], false)).unwrap();
        done(held.write(7, "db-wal", 56, &[2u8; 4096], false)).unwrap();
        // Another file's fsync: the held write goes out alone, first.
        assert_eq!(held.sync_held(8), None);
        assert_eq!(lock(&seg.writes).len(), 1);
        assert!(lock(&seg.synced).is_empty());
        // Its own file's fsync: the write and the sync as one call.
        done(held.write(7, "db-wal", 4152, &[3u8; 24], false)).unwrap();
        done(held.write(7, "db-wal", 4176, &[4u8; 4096], false)).unwrap();
        assert_eq!(held.sync_held(7), Some(Ok(())));
        assert_eq!(lock(&seg.synced).clone(), [("db-wal".to_string(), 4152, 4120)]);
        // Nothing held: the caller syncs.
        assert_eq!(held.sync_held(7), None);
        // A failure is the fsync's own result, not kept for later.
        done(held.write(7, "db-wal", 8272, b"x", false)).unwrap();
        seg.fail.store(true, Ordering::Relaxed);
        assert_eq!(held.sync_held(7), Some(Err(Errno::EIO)));
        assert_eq!(held.take_failure(7), None);
    }

    #[test]
    fn anything_else_sends_what_is_held_first_and_in_order() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        // Not continuing it (another file, a gap): the held one goes first.
        done(held.write(1, "a", 0, b"one", false)).unwrap();
        done(held.write(2, "b", 0, b"two", false)).unwrap();
        done(held.write(2, "b", 10, b"gap", false)).unwrap();
        // Whole blocks are never held, and go after what was.
        assert!(matches!(held.write(2, "b", 8192, &[0u8; 8192], true), Taken::WriteThrough));
        let order: Vec<(String, u64)> = lock(&seg.writes).iter().map(|(p, o, _)| (p.clone(), *o)).collect();
        assert_eq!(order, [("a".to_string(), 0), ("b".to_string(), 0), ("b".to_string(), 10)]);
        // A large byte write is not held either.
        assert!(matches!(held.write(3, "c", 0, &[0u8; HOLD_BELOW], false), Taken::WriteThrough));
        // settle sends what is held; then nothing is.
        held.settle();
        held.settle();
        assert_eq!(lock(&seg.writes).len(), 3, "nothing was held after the whole blocks");
        done(held.write(4, "d", 5, b"x", false)).unwrap();
        held.settle();
        assert_eq!(lock(&seg.writes).last().map(|(p, o, d)| (p.as_str(), *o, d.len())), Some(("d", 5, 1)));
    }

    #[test]
    fn a_held_write_left_alone_is_sent_by_the_timer() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        done(held.write(1, "a", 0, b"alone", false)).unwrap();
        // The timer sends it after HOLD_FOR; allow a loaded machine 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&seg.writes).is_empty() {
            assert!(Instant::now() < deadline, "the timer never sent the held write");
            std::thread::yield_now();
        }
        assert_eq!(lock(&seg.writes)[0].2, b"alone");
        held.stop();
    }

    #[test]
    fn a_held_write_that_fails_is_reported_once_by_its_file() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        done(held.write(9, "f", 0, b"lost", false)).unwrap();
        seg.fail.store(true, Ordering::Relaxed);
        held.settle();
        assert_eq!(held.take_failure(8), None, "another file has nothing to report");
        assert_eq!(held.take_failure(9), Some(Errno::EIO));
        assert_eq!(held.take_failure(9), None, "reported once");
        // A write continuing a held one that then fails: its own error too.
        seg.fail.store(false, Ordering::Relaxed);
        done(held.write(9, "f", 0, &[1u8; 100], false)).unwrap();
        seg.fail.store(true, Ordering::Relaxed);
        assert_eq!(done(held.write(9, "f", 100, &[2u8; HOLD_BELOW], false)), Err(Errno::EIO));
        assert_eq!(held.take_failure(9), Some(Errno::EIO));
    }
}
