//! A write held back a moment, so that the write continuing it goes out
//! with it as one call, and the write an `fsync` follows returns without
//! waiting for the segment. SQLite appends each WAL frame as two writes, a
//! 24-byte frame header and then the page, and syncs after the last;
//! PostgreSQL writes a WAL page and then syncs it: holding the write makes
//! the commit one call to the segment (one round trip to the mirror), sent
//! by the `fsync` (docs/mount.md, "Small writes").
//!
//! What keeps this invisible to clients:
//! - only a write shorter than [`HOLD_BELOW`] is held, at most one at a
//!   time for the whole mount, and for at most [`HOLD_FOR`] (a timer
//!   thread sends it then);
//! - a write that continues it (same file, the next byte) goes out with
//!   it; an `fsync` of its file sends it with the sync, as one call; every
//!   other request that looks at its file (a read, its attributes, a
//!   lookup of its name, a close, a length change, another write to it)
//!   sends it first (`settle_file`, `settle_path`), and every namespace
//!   change sends it under the exclusive namespace lock (`settle`), so the
//!   held write's path still names its file when it goes. Requests about
//!   other files do not wait for it: nothing orders a file's unsynced
//!   write against another file's requests;
//! - a held write goes out from outside the lock (another file's requests
//!   go on meanwhile); until it has landed, requests about its file wait,
//!   so they see it, and a later write to the file goes after it;
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

/// Writes shorter than this may be held (a WAL frame header and its page,
/// a journal header and its records, a database page); a write that brings
/// a held one to this size sends it. A bound on the copy a held write costs.
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

/// What the lock guards: the write held, and the held writes on their way.
#[derive(Default)]
struct Slot {
    held: Option<Pending>,
    /// Held writes being sent (outside the lock): inode and path of each.
    sending: Vec<(u64, String)>,
}

pub(super) struct Held {
    fs: u16,
    changes: Arc<dyn Changes>,
    slot: Mutex<Slot>,
    /// Wakes the timer when a write is held, or to stop.
    wake: Condvar,
    /// A held write that was on its way has landed.
    landed: Condvar,
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
    /// Not for holding: the caller writes it through (anything held for
    /// its file went first).
    WriteThrough,
}

impl Held {
    /// Holding for filespace `fs`, and the timer thread that bounds it.
    pub(super) fn start(fs: u16, changes: Arc<dyn Changes>) -> std::io::Result<Arc<Held>> {
        let held = Arc::new(Held {
            fs,
            changes,
            slot: Mutex::new(Slot::default()),
            wake: Condvar::new(),
            landed: Condvar::new(),
            failed: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let timer = held.clone();
        std::thread::Builder::new().name("filerep-mount-held".into()).spawn(move || timer.run_timer())?;
        Ok(held)
    }

    /// Wait (releasing the lock meanwhile) until no held write that
    /// `mine` picks is on its way.
    fn wait_landed<'a>(
        &self,
        mut g: MutexGuard<'a, Slot>,
        mine: impl Fn(&(u64, String)) -> bool,
    ) -> MutexGuard<'a, Slot> {
        while g.sending.iter().any(&mine) {
            g = self.landed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g
    }

    /// Send `p`, taken from the slot under `g`, from outside the lock:
    /// after any earlier send to its file has landed, and with requests
    /// about its file waiting until it has. `with_sync`: the write and its
    /// file's sync as one call (the caller reports the result); otherwise
    /// a failure is kept for the file's next fsync or close.
    fn send_out(&self, g: MutexGuard<'_, Slot>, p: Pending, with_sync: bool) -> Result<(), Errno> {
        let ino = p.ino;
        let mut g = self.wait_landed(g, |(i, _)| *i == ino);
        g.sending.push((ino, p.path.clone()));
        drop(g);
        let r = if with_sync {
            self.changes.write_at_and_sync(self.fs, &p.path, p.offset, &p.data).map_err(|e| {
                tracing::warn!(path = %p.path, offset = p.offset, bytes = p.data.len(), error = %e,
                    "a held write and the fsync that sent it failed");
                errno_of(&e)
            })
        } else {
            self.send(p)
        };
        let mut g = lock(&self.slot);
        if let Some(at) = g.sending.iter().position(|(i, _)| *i == ino) {
            g.sending.swap_remove(at);
        }
        drop(g);
        self.landed.notify_all();
        r
    }

    /// A write of `data` at `offset` to inode `ino` (named `path`).
    pub(super) fn write(&self, ino: u64, path: &str, offset: u64, data: &[u8]) -> Taken {
        // A write goes after every earlier one to its file.
        let mut g = self.wait_landed(lock(&self.slot), |(i, _)| *i == ino);
        if let Some(p) = g.held.as_mut() {
            let continues = p.ino == ino && p.offset + p.data.len() as u64 == offset;
            if continues && p.data.len() + data.len() <= MAX_WRITE_AT {
                p.data.extend_from_slice(data);
                if p.data.len() < HOLD_BELOW {
                    return Taken::Done(Ok(data.len()));
                }
                let Some(p) = g.held.take() else { return Taken::WriteThrough };
                // The held part was answered already: a failure is its
                // file's to report, and this write's own error.
                return Taken::Done(self.send_out(g, p, false).map(|()| data.len()));
            }
        }
        let before = g.held.take();
        if data.len() >= HOLD_BELOW {
            if let Some(p) = before {
                let _ = self.send_out(g, p, false);
            }
            return Taken::WriteThrough;
        }
        g.held = Some(Pending { ino, path: path.to_string(), offset, data: data.to_vec(), since: Instant::now() });
        self.wake.notify_one();
        // The one it displaces goes now. If it is this file's, the new one
        // cannot overtake it: its send waits for this one to land.
        if let Some(p) = before {
            let _ = self.send_out(g, p, false);
        }
        Taken::Done(Ok(data.len()))
    }

    /// Before a request about inode `ino`: its held write sent, and landed.
    pub(super) fn settle_file(&self, ino: u64) {
        self.settle_where(|p| p.ino == ino, |(i, _)| *i == ino)
    }

    /// Before a request about the file named `path` (a lookup, a create
    /// that may truncate it): its held write sent, and landed.
    pub(super) fn settle_path(&self, path: &str) {
        self.settle_where(|p| p.path == path, |(_, p)| p == path)
    }

    /// Before a namespace change: whatever is held sent, and everything landed.
    pub(super) fn settle(&self) {
        self.settle_where(|_| true, |_| true)
    }

    fn settle_where(&self, held: impl Fn(&Pending) -> bool, sending: impl Fn(&(u64, String)) -> bool) {
        let mut g = lock(&self.slot);
        if g.held.as_ref().is_some_and(held) {
            if let Some(p) = g.held.take() {
                let _ = self.send_out(g, p, false);
                g = lock(&self.slot);
            }
        }
        drop(self.wait_landed(g, sending));
    }

    /// An `fsync` of inode `ino`: if the write held is its file's, send it
    /// with the sync as one call (one round trip to the mirror) and give
    /// the sync's result; otherwise give `None` (the caller syncs; another
    /// file's held write stays held). Either way every earlier write to
    /// the file has landed first, and its failure is the fsync's to report.
    pub(super) fn sync_held(&self, ino: u64) -> Option<Result<(), Errno>> {
        let mut g = self.wait_landed(lock(&self.slot), |(i, _)| *i == ino);
        if g.held.as_ref().is_some_and(|p| p.ino == ino) {
            let p = g.held.take()?;
            return Some(self.send_out(g, p, true));
        }
        None
    }

    /// The failure of a held write to inode `ino` not reported yet, if any;
    /// reported once.
    pub(super) fn take_failure(&self, ino: u64) -> Option<Errno> {
        lock(&self.failed).remove(&ino)
    }

    /// Send `p`; a failure is kept for its file's next fsync or close.
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
        let mut g = lock(&self.slot);
        loop {
            if self.stop.load(Ordering::Acquire) {
                drop(g);
                return self.settle();
            }
            let due = g.held.as_ref().map(|p| p.since + HOLD_FOR);
            match due {
                None => g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(due) => {
                    let now = Instant::now();
                    if now >= due {
                        if let Some(p) = g.held.take() {
                            let _ = self.send_out(g, p, false);
                        }
                        g = lock(&self.slot);
                    } else {
                        g = self.wake.wait_timeout(g, due - now).unwrap_or_else(|e| e.into_inner()).0;
                    }
                }
            }
        }
    }

    /// Send what is held and end the timer (the mount is going away).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.settle();
        // Under the lock: the timer is either waiting (and wakes) or
        // checks the flag before it waits again.
        let _g = lock(&self.slot);
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
        /// Byte writes to this path wait in the call until `open_gate`.
        gate: Mutex<Option<String>>,
        entered: (Mutex<bool>, Condvar),
    }

    impl Recorder {
        /// Wait until a write to the gated path is in its call.
        fn wait_entered(&self) {
            let mut e = lock(&self.entered.0);
            while !*e {
                e = self.entered.1.wait(e).unwrap();
            }
        }

        fn open_gate(&self) {
            let _e = lock(&self.entered.0);
            *lock(&self.gate) = None;
            self.entered.1.notify_all();
        }
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
            if lock(&self.gate).as_deref() == Some(path) {
                let mut e = lock(&self.entered.0);
                *e = true;
                self.entered.1.notify_all();
                while lock(&self.gate).is_some() {
                    e = self.entered.1.wait(e).unwrap();
                }
                // Recorded as it lands: a write that overtook it shows first.
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
        assert_eq!(done(held.write(7, "db-wal", 32, &[1u8; 24])), Ok(24));
        assert!(lock(&seg.writes).is_empty(), "the header is held");
        assert_eq!(done(held.write(7, "db-wal", 56, &[2u8; 4096])), Ok(4096));
        assert!(lock(&seg.writes).is_empty(), "the frame is held until something else comes");
        held.settle();
        let w = lock(&seg.writes).clone();
        assert_eq!(w.len(), 1, "one call for both");
        assert_eq!((w[0].0.as_str(), w[0].1, w[0].2.len()), ("db-wal", 32, 4120));
        assert_eq!((&w[0].2[..24], &w[0].2[24..]), (&[1u8; 24][..], &[2u8; 4096][..]));
        // A continuation that brings it to HOLD_BELOW goes out at once, with it.
        done(held.write(7, "db-wal", 4152, &[3u8; 24])).unwrap();
        assert_eq!(done(held.write(7, "db-wal", 4176, &[4u8; HOLD_BELOW])), Ok(HOLD_BELOW));
        let w = lock(&seg.writes).clone();
        assert_eq!(w.len(), 2);
        assert_eq!((w[1].1, w[1].2.len()), (4152, 24 + HOLD_BELOW));
    }

    #[test]
    fn an_fsync_sends_its_files_held_write_with_the_sync() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        done(held.write(7, "db-wal", 32, &[1u8; 24])).unwrap();
        done(held.write(7, "db-wal", 56, &[2u8; 4096])).unwrap();
        // Another file's fsync does not cover it: it stays held.
        assert_eq!(held.sync_held(8), None);
        assert!(lock(&seg.writes).is_empty());
        // Its own file's fsync: the write and the sync as one call.
        assert_eq!(held.sync_held(7), Some(Ok(())));
        assert_eq!(lock(&seg.synced).clone(), [("db-wal".to_string(), 32, 4120)]);
        // A whole database page and its fsync, the same way.
        done(held.write(7, "db-wal", 8192, &[3u8; 8192])).unwrap();
        assert_eq!(held.sync_held(7), Some(Ok(())));
        assert_eq!(lock(&seg.synced).last().cloned(), Some(("db-wal".to_string(), 8192, 8192)));
        // Nothing held: the caller syncs.
        assert_eq!(held.sync_held(7), None);
        // A failure is the fsync's own result, not kept for later.
        done(held.write(7, "db-wal", 8272, b"x")).unwrap();
        seg.fail.store(true, Ordering::Relaxed);
        assert_eq!(held.sync_held(7), Some(Err(Errno::EIO)));
        assert_eq!(held.take_failure(7), None);
    }

    #[test]
    fn requests_about_a_file_send_its_held_write_first_and_in_order() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        let order = || -> Vec<(String, u64)> { lock(&seg.writes).iter().map(|(p, o, _)| (p.clone(), *o)).collect() };
        // Not continuing it (another file, a gap): the held one goes first.
        done(held.write(1, "a", 0, b"one")).unwrap();
        done(held.write(2, "b", 0, b"two")).unwrap();
        done(held.write(2, "b", 10, b"gap")).unwrap();
        // A whole block is held too, and displaces the one before.
        assert_eq!(done(held.write(2, "b", 8192, &[0u8; 8192])), Ok(8192));
        assert_eq!(order(), [("a".to_string(), 0), ("b".to_string(), 0), ("b".to_string(), 10)]);
        // A request about another file leaves it held; one about its own
        // file (by inode, or by name) sends it.
        held.settle_file(3);
        held.settle_path("a");
        assert_eq!(order().len(), 3, "another file's request sent nothing");
        held.settle_path("b");
        assert_eq!(order().last(), Some(&("b".to_string(), 8192)));
        done(held.write(4, "d", 5, b"x")).unwrap();
        held.settle_file(4);
        assert_eq!(lock(&seg.writes).last().map(|(p, o, d)| (p.as_str(), *o, d.len())), Some(("d", 5, 1)));
        // A large write is not held; what was held goes before it.
        done(held.write(5, "e", 0, b"y")).unwrap();
        assert!(matches!(held.write(3, "c", 0, &[0u8; HOLD_BELOW]), Taken::WriteThrough));
        assert_eq!(order().last(), Some(&("e".to_string(), 0)));
        // A namespace change's settle sends whatever is held.
        done(held.write(6, "f", 0, b"z")).unwrap();
        held.settle();
        assert_eq!(order().last(), Some(&("f".to_string(), 0)));
        held.settle();
        assert_eq!(order().len(), 7, "nothing was left held");
    }

    #[test]
    fn a_held_write_on_its_way_holds_up_its_files_requests_only() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        *lock(&seg.gate) = Some("slow".to_string());
        done(held.write(1, "slow", 0, b"first")).unwrap();
        // Another file's write displaces it: its sender is held up in the
        // segment's call, outside the lock.
        let sender = {
            let held = held.clone();
            std::thread::spawn(move || done(held.write(2, "other", 0, b"second")))
        };
        seg.wait_entered();
        // Requests about other files go on meanwhile (a hang here fails
        // the test by its timeout).
        let (tx, rx) = std::sync::mpsc::channel();
        let others = {
            let held = held.clone();
            std::thread::spawn(move || {
                held.settle_file(2);
                held.settle_path("third");
                let _ = tx.send(held.sync_held(3));
            })
        };
        assert_eq!(rx.recv_timeout(Duration::from_secs(60)), Ok(None), "another file's requests waited");
        others.join().unwrap();
        // A read of the slow file waits until its write has landed; a later
        // write to it goes after it.
        let reader = {
            let (held, seg) = (held.clone(), seg.clone());
            std::thread::spawn(move || {
                held.settle_file(1);
                lock(&seg.writes).iter().any(|(p, _, _)| p == "slow")
            })
        };
        let writer = {
            let held = held.clone();
            std::thread::spawn(move || {
                done(held.write(1, "slow", 100, b"later")).unwrap();
                held.settle_file(1);
            })
        };
        seg.open_gate();
        assert!(reader.join().unwrap(), "the read of its file returned before its write landed");
        writer.join().unwrap();
        assert_eq!(sender.join().unwrap(), Ok(6));
        let slow: Vec<u64> = lock(&seg.writes).iter().filter(|(p, _, _)| p == "slow").map(|(_, o, _)| *o).collect();
        assert_eq!(slow, [0, 100], "the later write to the file went after the held one");
        held.settle();
    }

    #[test]
    fn a_held_write_left_alone_is_sent_by_the_timer() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        done(held.write(1, "a", 0, b"alone")).unwrap();
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
        done(held.write(9, "f", 0, b"lost")).unwrap();
        seg.fail.store(true, Ordering::Relaxed);
        held.settle();
        assert_eq!(held.take_failure(8), None, "another file has nothing to report");
        assert_eq!(held.take_failure(9), Some(Errno::EIO));
        assert_eq!(held.take_failure(9), None, "reported once");
        // A write continuing a held one that then fails: its own error too.
        seg.fail.store(false, Ordering::Relaxed);
        done(held.write(9, "f", 0, &[1u8; 100])).unwrap();
        seg.fail.store(true, Ordering::Relaxed);
        assert_eq!(done(held.write(9, "f", 100, &[2u8; HOLD_BELOW])), Err(Errno::EIO));
        assert_eq!(held.take_failure(9), Some(Errno::EIO));
    }
}
