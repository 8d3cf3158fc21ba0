//! The connection's read side, shared by the receiver thread and a call
//! that waits alone.
//!
//! The receiver thread reads the mirror's frames and feeds them to the
//! engine, which wakes the calls they complete. For a call that waits
//! alone (a database committing: one sync at a time) that is two wake-ups
//! between the mirror's answer and the call's return, the receiver's and
//! the call's. Such a call reads the connection itself instead: it takes
//! the read side over (the receiver, polling the socket beside a nudge
//! pipe, lets go and sleeps), feeds what it reads exactly as the receiver
//! would, and gives the read side back when its own result is in. Measured
//! with the bare reference of `benches/db.rs --references`: the receiver's
//! hop costs a SQLite WAL commit about 15 % (docs/performance.md).
//! Where the connection has no descriptor to poll (in-memory connections),
//! the receiver alone reads, as before.

use super::exec::{lock, Runtime};
use crate::core::primary::Event;
use crate::io::net::{is_timeout, ConnReader};
use crate::protocol::Decoder;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a leading call sleeps in `poll` before it looks at its own
/// result again: a result another thread gives it (a loss decision, a
/// failed send) is seen within this.
const LEAD_POLL: Duration = Duration::from_millis(10);

/// What reads the connection needs between two reads.
struct ReadSide {
    conn: Box<dyn ConnReader>,
    dec: Decoder,
    buf: Vec<u8>,
    /// When the engine last had a tick.
    ticked: Instant,
}

/// One connection's read side and who reads it.
pub(super) struct Link {
    pub epoch: u64,
    side: Mutex<ReadSide>,
    /// Whether a call may take the reads over (the connection can be polled).
    pollable: bool,
    /// A call reads, or waits to: the receiver keeps out of the way.
    call_reads: AtomicBool,
    /// The receiver has stepped aside for calls that read themselves. It
    /// comes back when a call waits without reading (`passive`), or when
    /// no call has read for a tick.
    yielded: AtomicBool,
    /// Calls waiting for the receiver to read for them.
    passive: AtomicUsize,
    /// Reads by calls so far (the receiver's sign that calls still read).
    leads: AtomicU64,
    /// The receiver is to come back now (the primary is stopping).
    resume: AtomicBool,
    /// The stream ended (disconnected, replaced, the mirror lost): nobody reads.
    ended: AtomicBool,
    /// The socket again (a duplicate descriptor), for the receiver to
    /// notice the peer's hang-up while it is aside and holds no read side.
    watch: Option<std::os::fd::OwnedFd>,
    /// A byte written here takes the receiver out of its `poll`.
    nudge_tx: UnixStream,
    nudge_rx: UnixStream,
    /// The engine's clock between reads with nothing to read.
    tick: Duration,
}

/// Why a read ended the stream.
type Ended = String;

impl Link {
    pub fn new(conn: Box<dyn ConnReader>, epoch: u64, tick: Duration) -> std::io::Result<Link> {
        let (nudge_tx, nudge_rx) = UnixStream::pair()?;
        nudge_tx.set_nonblocking(true)?;
        nudge_rx.set_nonblocking(true)?;
        let watch = conn.poll_fd().map(|fd| fd.try_clone_to_owned()).transpose()?;
        let pollable = watch.is_some();
        Ok(Link {
            watch,
            epoch,
            side: Mutex::new(ReadSide { conn, dec: Decoder::new(), buf: vec![0u8; 64 * 1024], ticked: Instant::now() }),
            pollable,
            call_reads: AtomicBool::new(false),
            yielded: AtomicBool::new(false),
            passive: AtomicUsize::new(0),
            leads: AtomicU64::new(0),
            resume: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            nudge_tx,
            nudge_rx,
            tick,
        })
    }

    /// Waits calls ended by reading this link themselves.
    pub fn leads(&self) -> u64 {
        self.leads.load(Ordering::Acquire)
    }

    /// Whether a call waiting alone may read this link itself.
    pub fn takes_a_reader(&self) -> bool {
        self.pollable && !self.ended.load(Ordering::Acquire)
    }

    /// A call waits without reading: the receiver must read for it. The
    /// returned guard says when it stops waiting.
    pub fn wait_passively(&self) -> Passive<'_> {
        self.passive.fetch_add(1, Ordering::SeqCst);
        if self.yielded.load(Ordering::SeqCst) {
            self.nudge();
        }
        Passive(self)
    }

    /// Bring the receiver back from aside at once (the primary stops: it
    /// is to see the connection's end and exit).
    pub fn resume_receiver(&self) {
        self.resume.store(true, Ordering::SeqCst);
        self.nudge();
    }

    /// The receiver steps aside until a call waits passively, the stream
    /// ends, it is told to come back, the peer hangs up (it comes back to
    /// read the end at once, as it would have), or no call has read for a
    /// tick. It sleeps in `poll` on the nudge pipe and the socket's
    /// hang-up, not its data: the calls read that.
    fn step_aside(&self) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        self.yielded.store(true, Ordering::SeqCst);
        while self.passive.load(Ordering::SeqCst) == 0
            && !self.ended.load(Ordering::Acquire)
            && !self.resume.load(Ordering::SeqCst)
        {
            let leads = self.leads.load(Ordering::Acquire);
            let nudge = std::os::fd::AsFd::as_fd(&self.nudge_rx);
            let mut fds = vec![PollFd::new(nudge, PollFlags::POLLIN)];
            if let Some(w) = &self.watch {
                fds.push(PollFd::new(std::os::fd::AsFd::as_fd(w), PollFlags::from_bits_retain(libc::POLLRDHUP)));
            }
            let ms = PollTimeout::try_from(self.tick.as_millis().clamp(1, 60_000) as i32).unwrap_or(PollTimeout::MAX);
            if poll(&mut fds, ms).is_err() {
                break;
            }
            let fired = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let hung_up = fds.get(1).is_some_and(fired);
            if fired(&fds[0]) {
                self.drain_nudges();
            }
            let idle = !self.call_reads.load(Ordering::Acquire) && self.leads.load(Ordering::Acquire) == leads;
            if hung_up || idle {
                break;
            }
        }
        self.yielded.store(false, Ordering::SeqCst);
    }

    fn nudge(&self) {
        // A full pipe already holds a nudge.
        let _ = (&self.nudge_tx).write(&[1]);
    }

    fn drain_nudges(&self) {
        let mut b = [0u8; 64];
        while matches!((&self.nudge_rx).read(&mut b), Ok(n) if n > 0) {}
    }

    fn stale(&self, rt: &Runtime) -> bool {
        let core = lock(&rt.core);
        core.engine.epoch() != self.epoch || core.engine.mirror_lost().is_some()
    }

    /// The stream ended on this link: tell the engine, once.
    fn end(&self, rt: &Runtime, reason: Ended) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            rt.feed_and_run(Some(Event::Disconnected { epoch: self.epoch, reason }));
        }
    }
}

/// A call waiting for the receiver to read for it (see [`Link::wait_passively`]).
pub(super) struct Passive<'a>(&'a Link);

impl Drop for Passive<'_> {
    fn drop(&mut self) {
        self.0.passive.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Read once (`readable`: the socket has something; otherwise only the
/// clock moves) and feed what came to the engine, carrying out the
/// commands left for this thread.
fn read_once(rt: &Runtime, link: &Link, side: &mut ReadSide, readable: bool) -> Result<(), Ended> {
    let n = match readable {
        false => 0,
        true => match side.conn.recv(&mut side.buf) {
            Ok(0) => return Err("the mirror closed the connection".to_string()),
            Ok(n) => n,
            Err(e) if is_timeout(&e) => 0,
            Err(e) => return Err(format!("receive failed: {e}")),
        },
    };
    side.dec.feed(&side.buf[..n]);
    let mut bad = None;
    let mut frames = Vec::new();
    loop {
        match side.dec.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(e) => {
                bad = Some(format!("bad frame from the mirror: {e}"));
                break;
            }
        }
    }
    side.ticked = Instant::now();
    let received = frames.into_iter().map(|frame| Event::Received { epoch: link.epoch, frame });
    rt.run_left(rt.feed_all(received.chain([Event::Tick]), None));
    match bad {
        Some(b) => Err(b),
        None => Ok(()),
    }
}

/// Wait up to `limit` for the socket (and, for the receiver, the nudge
/// pipe): whether the socket is readable, whether a nudge came.
fn wait_readable(link: &Link, side: &ReadSide, limit: Duration, with_nudge: bool) -> Result<(bool, bool), Ended> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let Some(fd) = side.conn.poll_fd() else { return Ok((true, false)) };
    let mut fds = vec![PollFd::new(fd, PollFlags::POLLIN)];
    if with_nudge {
        fds.push(PollFd::new(std::os::fd::AsFd::as_fd(&link.nudge_rx), PollFlags::POLLIN));
    }
    let ms = PollTimeout::try_from(limit.as_millis().clamp(1, 60_000) as i32).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, ms) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok((false, false)),
        Err(e) => return Err(format!("waiting to receive failed: {e}")),
    }
    let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
    Ok((ready(&fds[0]), fds.get(1).is_some_and(ready)))
}

/// The receiver thread: reads the mirror's frames and feeds them with the
/// clock, except while a call reads them itself.
pub(super) fn receiver_loop(rt: Arc<Runtime>, link: Arc<Link>) {
    let reason = loop {
        if link.ended.load(Ordering::Acquire) || link.stale(&rt) {
            link.ended.store(true, Ordering::Release);
            return;
        }
        if link.call_reads.load(Ordering::Acquire)
            && link.passive.load(Ordering::SeqCst) == 0
            && !link.resume.load(Ordering::SeqCst)
        {
            link.step_aside();
            continue;
        }
        let mut side = lock(&link.side);
        let readable = match link.pollable {
            false => true,
            true => match wait_readable(&link, &side, link.tick, true) {
                Err(e) => break e,
                Ok((readable, nudged)) => {
                    if nudged {
                        link.drain_nudges();
                    }
                    if !readable && nudged {
                        continue;
                    }
                    readable
                }
            },
        };
        if let Err(e) = read_once(&rt, &link, &mut side, readable) {
            break e;
        }
    };
    link.end(&rt, reason);
}

/// What a call that read for itself came back with.
pub(super) enum Led {
    /// Its mailbox has something (or it waited long enough to report).
    Ready,
    /// Its deadline passed.
    Expired,
    /// The stream ended or went stale: wait the ordinary way.
    Gave,
}

/// A call waiting alone reads the link itself until `ready()` says its
/// mailbox has something, `deadline` passes, or `report_after` passes
/// (no deadline: it then reports that it is still waiting).
pub(super) fn lead(
    rt: &Runtime,
    link: &Link,
    ready: impl Fn() -> bool,
    deadline: Option<Instant>,
    report_after: Instant,
) -> Led {
    link.call_reads.store(true, Ordering::Release);
    if !link.yielded.load(Ordering::SeqCst) {
        // Out of its poll, so that it lets the read side go.
        link.nudge();
    }
    let led = {
        let mut side = lock(&link.side);
        loop {
            if ready() {
                break Led::Ready;
            }
            let now = Instant::now();
            let until = match deadline {
                Some(d) if d <= now => break Led::Expired,
                Some(d) => d,
                None if now >= report_after => break Led::Ready,
                None => report_after,
            };
            if link.ended.load(Ordering::Acquire) || link.stale(rt) {
                break Led::Gave;
            }
            let limit = LEAD_POLL.min(until - now);
            let readable = match wait_readable(link, &side, limit, false) {
                Ok((readable, _)) => readable,
                Err(e) => {
                    drop(side);
                    link.end(rt, e);
                    break Led::Gave;
                }
            };
            // The engine's clock moves as the receiver's would.
            if readable || side.ticked.elapsed() >= link.tick {
                if let Err(e) = read_once(rt, link, &mut side, readable) {
                    drop(side);
                    link.end(rt, e);
                    break Led::Gave;
                }
            }
        }
    };
    // The receiver stays aside while calls go on reading (the next commit
    // of a database usually comes within a tick); it comes back by itself.
    link.leads.fetch_add(1, Ordering::AcqRel);
    link.call_reads.store(false, Ordering::Release);
    led
}
