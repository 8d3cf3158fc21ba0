//! The write rounds on round threads: order, overlap, failure, retry.

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
    let st = wait_for(&fx.rounds, |st| st.rounds.landed_early(3));
    assert_eq!(st, 0, "nothing counts applied while an earlier round is on its way");
    assert_eq!(b.data.lock().unwrap().len(), 8302);
    assert_eq!(fx.acks.marks.applied.load(Ordering::SeqCst), 0);
    // A write over the first round's range waits for it; one beside it does not.
    assert!(!fx.rounds.admits([(&path("a"), 100, 200)].into_iter()));
    assert!(fx.rounds.admits([(&path("a"), 4096, 8192), (&path("c"), 0, 10)].into_iter()));
    // Judged by pages: a write beside the short one, in its page, overlaps too.
    assert!(!fx.rounds.admits([(&path("b"), 8192, 8242)].into_iter()));
    assert!(fx.rounds.admits([(&path("b"), 4096, 8192)].into_iter()));
    a.open_gate();
    assert_eq!(fx.rounds.drain().expect("landed"), 3);
    assert_eq!(fx.acks.marks.applied.load(Ordering::SeqCst), 3);
    let acks = frames_until(fx.primary.as_mut(), Kind::Ack);
    let ack = Ack::from_body(&acks[0].body).expect("ack");
    assert_eq!((ack.received, ack.applied), (100, 3), "the first acknowledgement covers both rounds");
    assert!(fx.rounds.admits([(&path("a"), 100, 200)].into_iter()), "nothing is in flight");
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
    st.rounds.applied()
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
