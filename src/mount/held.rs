//! Writes held back a moment, so that the writes continuing them go out
//! with them as one call, and the write an `fsync` follows returns without
//! waiting for the segment. SQLite appends each WAL frame as two writes, a
//! 24-byte frame header and then the page, and syncs after the last;
//! PostgreSQL writes a WAL page and then syncs it, and loads a table as
//! two interleaved runs of 8 KiB pages: holding makes a commit one call to
//! the segment (one round trip to the mirror), sent by the `fsync`, and a
//! run of pages a call per 64 KiB (docs/mount.md, "Held writes").
//!
//! What keeps this invisible to clients:
//! - only a write shorter than [`HOLD_BELOW`] is held, at most
//!   [`MAX_HELD`] at a time for the whole mount (the oldest goes when one
//!   more comes), each for at most [`HOLD_FOR`] (a timer thread sends it
//!   then);
//! - a write that continues one (same file, the next byte) goes out with
//!   it; an `fsync` of its file sends its file's, the last with the sync
//!   as one call; a write that overlaps a held one of its file sends that
//!   one first; every other request that reads or changes its file (a
//!   read, a close, a length change, an `O_TRUNC` create) sends it first
//!   (`settle_file`, `settle_path`), and every namespace change sends all
//!   under the exclusive namespace lock (`settle`), so a held write's path
//!   still names its file when it goes. A file's attributes and lookups
//!   do not send it: they report the length it makes (`held_end`).
//!   Requests about other files neither send it nor wait for it: nothing
//!   orders a file's unsynced writes against another file's requests;
//! - held writes go out from outside the lock (other requests go on
//!   meanwhile), each file's in the order they were held (`Sending`'s
//!   tickets); until they have landed, requests about their file wait, so
//!   they see them, and a later write to the file goes after them;
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
// A held write starts under HOLD_BELOW and grows only up to MAX_WRITE_AT:
// it is always one call to the segment.
const _: () = assert!(HOLD_BELOW <= MAX_WRITE_AT);
/// The longest a write is held when nothing follows it.
pub(super) const HOLD_FOR: Duration = Duration::from_millis(2);
/// While writes come, the timer wakes this often on its own and writers
/// need not wake it; after this long without a held write it sleeps until
/// woken (an idle mount costs no wake-ups). A wake-up per held write would
/// cost each SQLite commit a futex call and another thread's run.
const TICK_WHILE_BUSY_FOR: Duration = Duration::from_millis(100);
/// Writes held at once, at most (the oldest goes when one more comes): a
/// database loading a table writes two interleaved runs of pages (the new
/// pages it appends and the ones its ring evicts), and each run joins up.
/// A bound on memory too: each is under [`HOLD_BELOW`].
pub(super) const MAX_HELD: usize = 8;
/// Files with a failure waiting for their next fsync or close, at most (a
/// bound on memory if clients never sync). A report is never dropped: past
/// this many, the mount's every later fsync and close fails (see [`Failures`]).
const MAX_FAILED: usize = 4096;

struct Pending {
    ino: u64,
    path: String,
    offset: u64,
    data: Vec<u8>,
    since: Instant,
}

impl Pending {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    /// Whether it is inode `ino`'s and shares a byte with `offset..end`.
    fn overlaps(&self, ino: u64, offset: u64, end: u64) -> bool {
        self.ino == ino && self.offset < end && offset < self.end()
    }
}

/// A held write taken out of the slot to be sent. Tickets are handed out
/// as writes are taken, so a file's writes go in the order they were held
/// (each waits for the earlier tickets of its file), and a request about a
/// file waits for every one of its writes taken before it looked.
struct Sending {
    ticket: u64,
    ino: u64,
    path: String,
    end: u64,
}

/// What the lock guards: the writes held, and the held writes on their way.
#[derive(Default)]
struct Slot {
    /// Held writes, oldest first.
    held: Vec<Pending>,
    sending: Vec<Sending>,
    next_ticket: u64,
    /// The timer sleeps until woken (it saw no held write for
    /// [`TICK_WHILE_BUSY_FOR`]); otherwise it wakes every [`HOLD_FOR`].
    timer_asleep: bool,
    /// When a write was last held.
    last_held: Option<Instant>,
}

impl Slot {
    /// Take the held writes `pick` picks out, oldest first.
    fn take_held(&mut self, pick: impl Fn(&Pending) -> bool) -> Vec<Pending> {
        let (taken, kept) = std::mem::take(&mut self.held).into_iter().partition(pick);
        self.held = kept;
        taken
    }
}

pub(super) struct Held {
    fs: u16,
    changes: Arc<dyn Changes>,
    slot: Mutex<Slot>,
    /// Wakes the timer when a write is held, or to stop.
    wake: Condvar,
    /// A held write that was on its way has landed.
    landed: Condvar,
    /// Held writes that failed once sent, waiting to be reported.
    failed: Mutex<Failures>,
    stop: AtomicBool,
}

/// Failures of held writes not reported yet. A dropped report would let
/// the file's next fsync succeed over a write that never landed (rule 8),
/// so when more files than [`MAX_FAILED`] have one, the mount stops
/// telling files apart: every later fsync and close fails, for good (a
/// segment failing writes to thousands of files is beyond one file's
/// retry; the operator remounts).
#[derive(Default)]
struct Failures {
    by_ino: HashMap<u64, Errno>,
    /// Set once a failure found no room: what every later report returns.
    overflow: Option<Errno>,
}

impl Failures {
    fn keep(&mut self, ino: u64, errno: Errno) {
        if self.by_ino.len() >= MAX_FAILED && !self.by_ino.contains_key(&ino) {
            if self.overflow.is_none() {
                tracing::error!(
                    files = MAX_FAILED,
                    "held writes failed for more files than the mount tracks: every later fsync and close fails"
                );
            }
            self.overflow = Some(errno);
            return;
        }
        self.by_ino.insert(ino, errno);
    }

    /// `ino`'s failure, reported once; after an overflow, every time.
    fn take(&mut self, ino: u64) -> Option<Errno> {
        self.by_ino.remove(&ino).or(self.overflow)
    }

    /// `ino`'s failure, left for the next [`Failures::take`].
    fn peek(&self, ino: u64) -> Option<Errno> {
        self.by_ino.get(&ino).copied().or(self.overflow)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`Held::write`] did with a write.
pub(super) enum Taken {
    /// Held, or sent with the one it continues: the bytes accepted, or the error.
    Done(Result<usize, Errno>),
    /// Not for holding: the caller writes it through (every earlier write
    /// to its file that it overlaps has landed).
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
            failed: Mutex::new(Failures::default()),
            stop: AtomicBool::new(false),
        });
        let timer = held.clone();
        std::thread::Builder::new().name("filerep-mount-held".into()).spawn(move || timer.run_timer())?;
        Ok(held)
    }

    /// Wait (releasing the lock meanwhile) until no write on its way that
    /// `mine` picks is left.
    fn wait_landed<'a>(&self, mut g: MutexGuard<'a, Slot>, mine: impl Fn(&Sending) -> bool) -> MutexGuard<'a, Slot> {
        while g.sending.iter().any(&mine) {
            g = self.landed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g
    }

    /// Take writes out of the slot to be sent: each gets its ticket, under
    /// the same lock that took it, so no request can miss it.
    fn launch(&self, g: &mut Slot, writes: Vec<Pending>) -> Vec<(u64, Pending)> {
        writes.into_iter().map(|p| self.launch_one(g, p)).collect()
    }

    fn launch_one(&self, g: &mut Slot, p: Pending) -> (u64, Pending) {
        let ticket = g.next_ticket;
        g.next_ticket += 1;
        g.sending.push(Sending { ticket, ino: p.ino, path: p.path.clone(), end: p.end() });
        (ticket, p)
    }

    /// Send a launched write from outside the lock, once every earlier
    /// ticket of its file has landed. `with_sync`: the write and its file's
    /// sync as one call (the caller reports the result); otherwise a
    /// failure is kept for the file's next fsync or close.
    fn deliver(&self, (ticket, p): (u64, Pending), with_sync: bool) -> Result<(), Errno> {
        let ino = p.ino;
        drop(self.wait_landed(lock(&self.slot), |s| s.ino == ino && s.ticket < ticket));
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
        g.sending.retain(|s| s.ticket != ticket);
        drop(g);
        self.landed.notify_all();
        r
    }

    /// Deliver launched writes in order; failures are their files' to report.
    fn deliver_all(&self, launched: Vec<(u64, Pending)>) {
        for write in launched {
            let _ = self.deliver(write, false);
        }
    }

    /// A write of `data` at `offset` to inode `ino` (named `path`).
    pub(super) fn write(&self, ino: u64, path: &str, offset: u64, data: &[u8]) -> Taken {
        let end = offset + data.len() as u64;
        let mut g = lock(&self.slot);
        // It continues a held write of its file, and no other held write
        // has the bytes it writes: one write.
        let continues = g.held.iter().position(|p| p.ino == ino && p.end() == offset);
        let overlaps = |g: &Slot| g.held.iter().any(|p| p.overlaps(ino, offset, end));
        if let Some(i) = continues {
            if g.held[i].data.len() + data.len() <= MAX_WRITE_AT && !overlaps(&g) {
                g.held[i].data.extend_from_slice(data);
                if g.held[i].data.len() < HOLD_BELOW {
                    return Taken::Done(Ok(data.len()));
                }
                let p = g.held.remove(i);
                let write = self.launch_one(&mut g, p);
                drop(g);
                // The held part was answered already: a failure is its
                // file's to report, and this write's own error.
                return Taken::Done(self.deliver(write, false).map(|()| data.len()));
            }
        }
        // Held writes of its file that it overlaps are older: they go first.
        let mut out = g.take_held(|p| p.overlaps(ino, offset, end));
        let hold = data.len() < HOLD_BELOW;
        if hold {
            let now = Instant::now();
            g.held.push(Pending { ino, path: path.to_string(), offset, data: data.to_vec(), since: now });
            if g.held.len() > MAX_HELD {
                out.push(g.held.remove(0));
            }
            // The timer ticks while writes come and sleeps when they
            // stop: it needs waking only then (a wake-up per write costs CPU).
            g.last_held = Some(now);
            if g.timer_asleep {
                g.timer_asleep = false;
                self.wake.notify_one();
            }
        }
        let launched = self.launch(&mut g, out);
        drop(g);
        self.deliver_all(launched);
        if hold {
            return Taken::Done(Ok(data.len()));
        }
        // Written through by the caller: after every write to its file on its way.
        drop(self.wait_landed(lock(&self.slot), |s| s.ino == ino));
        Taken::WriteThrough
    }

    /// The end of the furthest write held or on its way for inode `ino`:
    /// the file's length as its writer sees it is at least this.
    pub(super) fn held_end(&self, ino: u64) -> Option<u64> {
        self.end_where(|p| p.ino == ino, |s| s.ino == ino)
    }

    /// [`Held::held_end`] by the file's name.
    pub(super) fn held_end_of(&self, path: &str) -> Option<u64> {
        self.end_where(|p| p.path == path, |s| s.path == path)
    }

    fn end_where(&self, held: impl Fn(&&Pending) -> bool, sending: impl Fn(&&Sending) -> bool) -> Option<u64> {
        let g = lock(&self.slot);
        let held = g.held.iter().filter(held).map(Pending::end);
        held.chain(g.sending.iter().filter(sending).map(|s| s.end)).max()
    }

    /// Before a request about inode `ino`: its held writes sent, and landed.
    pub(super) fn settle_file(&self, ino: u64) {
        self.settle_where(|p| p.ino == ino, |s| s.ino == ino)
    }

    /// Before a request about the file named `path` (a create that may
    /// truncate it): its held writes sent, and landed.
    pub(super) fn settle_path(&self, path: &str) {
        self.settle_where(|p| p.path == path, |s| s.path == path)
    }

    /// Before a namespace change: whatever is held sent, and everything landed.
    pub(super) fn settle(&self) {
        self.settle_where(|_| true, |_| true)
    }

    fn settle_where(&self, held: impl Fn(&Pending) -> bool, sending: impl Fn(&Sending) -> bool) {
        let mut g = lock(&self.slot);
        let out = g.take_held(held);
        let launched = self.launch(&mut g, out);
        drop(g);
        self.deliver_all(launched);
        drop(self.wait_landed(lock(&self.slot), sending));
    }

    /// An `fsync` of inode `ino`: if writes of its file are held, send them,
    /// the last with the sync as one call (one round trip to the mirror),
    /// and give the sync's result; otherwise give `None` (the caller
    /// syncs; other files' held writes stay held). Either way every earlier
    /// write to the file has landed first, and a failure of one sent
    /// without the sync is the fsync's to report.
    pub(super) fn sync_held(&self, ino: u64) -> Option<Result<(), Errno>> {
        let mut g = lock(&self.slot);
        let mut mine = g.take_held(|p| p.ino == ino);
        let Some(last) = mine.pop() else {
            drop(self.wait_landed(g, |s| s.ino == ino));
            return None;
        };
        let before = self.launch(&mut g, mine);
        let last = self.launch_one(&mut g, last);
        drop(g);
        self.deliver_all(before);
        Some(self.deliver(last, true))
    }

    /// The failure of a held write to inode `ino` not reported by an
    /// fsync yet, if any, left for that fsync: a close reports it (every
    /// close, whoever opened the file: a reader's close, or a writer's
    /// that ignores the error, must not consume what the checkpointer's
    /// fsync has to see).
    pub(super) fn failure_at_close(&self, ino: u64) -> Option<Errno> {
        lock(&self.failed).peek(ino)
    }

    /// The failure of a held write to inode `ino` not reported yet, if any;
    /// reported once (by an fsync).
    pub(super) fn take_failure(&self, ino: u64) -> Option<Errno> {
        lock(&self.failed).take(ino)
    }

    /// Send `p` (one call: a held write never grows past [`MAX_WRITE_AT`]);
    /// a failure is kept for its file's next fsync or close.
    fn send(&self, p: Pending) -> Result<(), Errno> {
        self.changes.write_at(self.fs, &p.path, p.offset, &p.data).map_err(|e| {
            let errno = errno_of(&e);
            tracing::warn!(
                path = %p.path,
                offset = p.offset,
                bytes = p.data.len(),
                error = %e,
                "a held write failed once sent: the file's next fsync or close reports it"
            );
            lock(&self.failed).keep(p.ino, errno);
            errno
        })
    }

    /// Send each held write once it has waited [`HOLD_FOR`]; at the end, what is left.
    fn run_timer(&self) {
        let mut g = lock(&self.slot);
        loop {
            if self.stop.load(Ordering::Acquire) {
                // `stop` sends what is left.
                return;
            }
            // Oldest first: the first is the next due. With none held, a
            // tick: a write held meanwhile is due no sooner than it.
            let busy = g.last_held.is_some_and(|t| t.elapsed() < TICK_WHILE_BUSY_FOR);
            let due = g.held.first().map(|p| p.since + HOLD_FOR);
            match due {
                None if !busy => {
                    g.timer_asleep = true;
                    g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                None => g = self.wake.wait_timeout(g, HOLD_FOR).unwrap_or_else(|e| e.into_inner()).0,
                Some(due) => {
                    let now = Instant::now();
                    if now >= due {
                        let p = g.held.remove(0);
                        let write = self.launch_one(&mut g, p);
                        drop(g);
                        let _ = self.deliver(write, false);
                        g = lock(&self.slot);
                    } else {
                        g = self.wake.wait_timeout(g, due - now).unwrap_or_else(|e| e.into_inner()).0;
                    }
                }
            }
        }
    }

    /// End the timer and send what is held (the mount is going away).
    pub(super) fn stop(&self) {
        {
            // Under the lock: the timer is either waiting (and wakes) or
            // checks the flag before it waits again.
            let _g = lock(&self.slot);
            self.stop.store(true, Ordering::Release);
            self.wake.notify_all();
        }
        self.settle();
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
    fn requests_about_a_file_send_its_held_writes_first_and_in_order() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        let order = || -> Vec<(String, u64)> { lock(&seg.writes).iter().map(|(p, o, _)| (p.clone(), *o)).collect() };
        // Writes that do not continue one another are held side by side,
        // whole blocks too.
        done(held.write(1, "a", 0, b"one")).unwrap();
        done(held.write(2, "b", 0, b"two")).unwrap();
        done(held.write(2, "b", 10, b"gap")).unwrap();
        assert_eq!(done(held.write(2, "b", 8192, &[0u8; 8192])), Ok(8192));
        assert!(order().is_empty());
        // Their files' lengths count them.
        assert_eq!((held.held_end(2), held.held_end_of("b"), held.held_end(3)), (Some(16384), Some(16384), None));
        // A request about another file sends nothing; one about a file (by
        // inode, or by name) sends its writes, in the order they were held.
        held.settle_file(3);
        assert!(order().is_empty(), "another file's request sent nothing");
        held.settle_path("a");
        held.settle_file(2);
        assert_eq!(
            order(),
            [("a".to_string(), 0), ("b".to_string(), 0), ("b".to_string(), 10), ("b".to_string(), 8192)]
        );
        // A write over a held one of its file sends that one first.
        done(held.write(4, "d", 0, b"xxxx")).unwrap();
        done(held.write(4, "d", 2, b"yy")).unwrap();
        assert_eq!(order().last(), Some(&("d".to_string(), 0)));
        held.settle_file(4);
        assert_eq!(order().last(), Some(&("d".to_string(), 2)));
        // One more than MAX_HELD: the oldest goes.
        for f in 0..=MAX_HELD as u64 {
            done(held.write(100 + f, &format!("f{f}"), 0, b"z")).unwrap();
        }
        assert_eq!(order().last(), Some(&("f0".to_string(), 0)));
        // (This one sends f1 in its turn.)
        done(held.write(5, "e", 0, b"y")).unwrap();
        assert_eq!(order().last(), Some(&("f1".to_string(), 0)));
        let before = order().len();
        // A large write is not held; a held write of its file that it
        // overlaps goes before it, others stay.
        assert!(matches!(held.write(5, "e", 0, &[0u8; HOLD_BELOW]), Taken::WriteThrough));
        assert_eq!(order().last(), Some(&("e".to_string(), 0)));
        assert_eq!(order().len(), before + 1);
        // A namespace change's settle sends whatever is held (f2 to f8).
        held.settle();
        assert_eq!(order().len(), before + MAX_HELD);
        held.settle();
        assert_eq!(order().len(), before + MAX_HELD, "nothing was left held");
    }

    #[test]
    fn two_interleaved_runs_of_pages_each_go_out_as_one_write() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        // A table being loaded: a new page appended, and a page far behind
        // it written as it is evicted, in turn.
        let pages = (HOLD_BELOW / 8192) as u64;
        for i in 0..pages {
            done(held.write(1, "table", (1000 + i) * 8192, &[1u8; 8192])).unwrap();
            done(held.write(1, "table", i * 8192, &[2u8; 8192])).unwrap();
        }
        let w: Vec<(u64, usize)> = lock(&seg.writes).iter().map(|(_, o, d)| (*o, d.len())).collect();
        assert_eq!(w, [(1000 * 8192, HOLD_BELOW), (0, HOLD_BELOW)], "each run went out as one write");
    }

    #[test]
    fn a_held_write_on_its_way_holds_up_its_files_requests_only() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        *lock(&seg.gate) = Some("slow".to_string());
        done(held.write(1, "slow", 0, b"first")).unwrap();
        done(held.write(2, "other", 0, b"second")).unwrap();
        // A close of the slow file sends its write, and is held up in the
        // segment's call, outside the lock.
        let closer = {
            let held = held.clone();
            std::thread::spawn(move || held.settle_file(1))
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
        // write over it goes after it.
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
                done(held.write(1, "slow", 0, b"LATER")).unwrap();
                held.settle_file(1);
            })
        };
        seg.open_gate();
        assert!(reader.join().unwrap(), "the read of its file returned before its write landed");
        writer.join().unwrap();
        closer.join().unwrap();
        let slow: Vec<Vec<u8>> =
            lock(&seg.writes).iter().filter(|(p, _, _)| p == "slow").map(|(_, _, d)| d.clone()).collect();
        assert_eq!(slow, [b"first".to_vec(), b"LATER".to_vec()], "the later write went after the held one");
        held.settle();
    }

    #[test]
    fn a_held_write_left_alone_is_sent_by_the_timer() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        let sent = |n: usize| {
            // The timer sends it after HOLD_FOR; allow a loaded machine 10 s.
            let deadline = Instant::now() + Duration::from_secs(10);
            while lock(&seg.writes).len() < n {
                assert!(Instant::now() < deadline, "the timer never sent held write {n}");
                std::thread::yield_now();
            }
        };
        // The timer sleeps until this write wakes it.
        done(held.write(1, "a", 0, b"alone")).unwrap();
        sent(1);
        // Now it ticks (nothing wakes it for this one).
        done(held.write(2, "b", 0, b"again")).unwrap();
        sent(2);
        // Asleep again after a quiet spell: woken again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lock(&held.slot).timer_asleep {
            assert!(Instant::now() < deadline, "the timer never went back to sleep");
            std::thread::sleep(HOLD_FOR);
        }
        done(held.write(3, "c", 0, b"third")).unwrap();
        sent(3);
        let w = lock(&seg.writes);
        assert_eq!([&w[0].2[..], &w[1].2[..], &w[2].2[..]], [b"alone", b"again", b"third"]);
        drop(w);
        held.stop();
    }

    #[test]
    fn a_held_write_that_fails_is_reported_by_its_files_closes_and_once_by_its_fsync() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        done(held.write(9, "f", 0, b"lost")).unwrap();
        seg.fail.store(true, Ordering::Relaxed);
        held.settle();
        assert_eq!(held.take_failure(8), None, "another file has nothing to report");
        // Closes report it and leave it for the fsync (a reader's close must
        // not consume what the checkpointer's fsync has to see).
        assert_eq!(held.failure_at_close(8), None);
        assert_eq!(held.failure_at_close(9), Some(Errno::EIO));
        assert_eq!(held.failure_at_close(9), Some(Errno::EIO), "every close until the fsync");
        assert_eq!(held.take_failure(9), Some(Errno::EIO));
        assert_eq!(held.take_failure(9), None, "reported once by an fsync");
        assert_eq!(held.failure_at_close(9), None, "and then by no close");
        // A write continuing a held one that then fails: its own error too.
        seg.fail.store(false, Ordering::Relaxed);
        done(held.write(9, "f", 0, &[1u8; 100])).unwrap();
        seg.fail.store(true, Ordering::Relaxed);
        assert_eq!(done(held.write(9, "f", 100, &[2u8; HOLD_BELOW])), Err(Errno::EIO));
        assert_eq!(held.take_failure(9), Some(Errno::EIO));
    }

    #[test]
    fn failures_past_the_bound_fail_every_later_sync_rather_than_drop_one() {
        let seg = Arc::new(Recorder::default());
        let held = Held::start(0, seg.clone()).unwrap();
        held.stop();
        seg.fail.store(true, Ordering::Relaxed);
        // One more failed file than the mount tracks by inode.
        for ino in 0..=MAX_FAILED as u64 {
            done(held.write(ino, &format!("f{ino}"), 0, b"lost")).unwrap();
            held.settle_file(ino);
        }
        // Every file that failed still reports it, the first as the last.
        assert_eq!(held.take_failure(0), Some(Errno::EIO));
        assert_eq!(held.take_failure(MAX_FAILED as u64), Some(Errno::EIO));
        // Past the bound the mount cannot tell which files lost a write:
        // files with no failure of their own, and ones already reported, fail too.
        assert_eq!(held.take_failure(u64::MAX), Some(Errno::EIO));
        assert_eq!(held.take_failure(0), Some(Errno::EIO));
    }
}
