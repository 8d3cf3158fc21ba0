//! Connection admission, shared by every listener: the mirror's data port,
//! the control port and the local client socket.
//!
//! A connection is **unauthenticated** from `accept` until its peer has
//! proved itself (the handshake's key proof on the data port, a request
//! whose MAC checks on the control port, a first well-formed request on
//! the client socket). Unauthenticated connections have their own small
//! budget, apart from the authenticated ones, so slots held by peers that
//! say nothing (port scanners, health checks, a flood) can never keep an
//! authenticated peer out:
//!
//! - at most `per_source` of them from one source (an IP address; a user id
//!   on the Unix socket): one more from that source drops its oldest;
//! - at most `pre_auth` in all: one more drops the oldest connection of the
//!   source holding the most, so one busy source cannot push out another's;
//! - each must authenticate within `deadline` of its accept (2 s by
//!   default), or it is closed;
//! - authenticated connections count against `established` only.
//!
//! A connection is never refused at accept: it is always taken, and an
//! older unauthenticated one makes room. So a peer that completes its
//! handshake in one round trip gets in unless more than `pre_auth` other
//! sources keep connecting faster than that round trip.
//!
//! [`serve`] is the accept loop: it blocks in `poll` on the listener and on
//! a [`Stop`] wake-up, with a timeout only for the next handshake deadline,
//! so a new connection is accepted as soon as it arrives.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long an unauthenticated connection may stay, by default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);
/// Unauthenticated connections held at once, by default.
pub const DEFAULT_PRE_AUTH: usize = 16;
/// Unauthenticated connections from one source at once, by default.
pub const DEFAULT_PER_SOURCE: usize = 4;
/// The longest deadline a configuration may set.
pub const MAX_DEADLINE: Duration = Duration::from_secs(60);

/// The budgets of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Unauthenticated connections at once.
    pub pre_auth: usize,
    /// Unauthenticated connections from one source at once.
    pub per_source: usize,
    /// Authenticated connections at once.
    pub established: usize,
    /// From accept to authentication.
    pub deadline: Duration,
}

impl Limits {
    /// The defaults, with room for `established` authenticated connections.
    pub fn new(established: usize) -> Limits {
        Limits { pre_auth: DEFAULT_PRE_AUTH, per_source: DEFAULT_PER_SOURCE, established, deadline: DEFAULT_DEADLINE }
    }

    pub fn with_deadline(self, deadline: Duration) -> Limits {
        Limits { deadline, ..self }
    }

    /// Every budget at least 1, the deadline within 10 ms..=60 s.
    pub fn check(&self) -> Result<(), String> {
        if self.pre_auth == 0 || self.per_source == 0 || self.established == 0 {
            return Err(format!("connection budgets must be at least 1 ({self:?})"));
        }
        if self.deadline < Duration::from_millis(10) || self.deadline > MAX_DEADLINE {
            return Err(format!("handshake deadline {:?}: use 10 ms to {MAX_DEADLINE:?}", self.deadline));
        }
        Ok(())
    }
}

/// Where a connection comes from, for the per-source budget.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Ip(IpAddr),
    /// A local peer on a Unix socket, by its user id.
    Uid(u32),
    /// The kernel did not say.
    Unknown,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Ip(a) => write!(f, "{a}"),
            Source::Uid(u) => write!(f, "uid {u}"),
            Source::Unknown => f.write_str("unknown source"),
        }
    }
}

/// A stop request that wakes the accept loops blocked in `poll`: a flag and
/// a socket pair whose read end turns readable (and stays so) once stopped.
pub struct Stop {
    flag: Arc<AtomicBool>,
    rx: UnixStream,
    tx: UnixStream,
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stop({})", self.is_stopped())
    }
}

impl Stop {
    pub fn new() -> std::io::Result<Arc<Stop>> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Arc::new(Stop { flag: Arc::new(AtomicBool::new(false)), rx, tx }))
    }

    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // One byte is enough: nobody reads it, so the end stays readable.
        let _ = (&self.tx).write(&[1]);
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Wait up to `timeout` for the stop; whether it came.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.wait_or(None, timeout)
    }

    /// Wait up to `timeout` for the stop or, if given, a nudge (taken);
    /// whether the stop came.
    pub fn wait_or(&self, nudge: Option<&Nudge>, timeout: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let deadline = Instant::now() + timeout;
        while !self.is_stopped() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ms = PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32).unwrap_or(PollTimeout::MAX);
            let mut fds = vec![PollFd::new(self.wake_fd(), PollFlags::POLLIN)];
            if let Some(n) = nudge {
                fds.push(PollFd::new(n.rx.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, ms) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                // No way to wait on the wake-ups: wait out the time instead.
                Err(_) => std::thread::sleep(left),
            }
            if nudge.is_some_and(|n| n.take()) {
                return self.is_stopped();
            }
        }
        true
    }

    /// The flag alone, for loops that look at it between timed waits.
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }

    /// A handle on the wake-up's write end, for a signal handler to write
    /// to (with `signal_hook::low_level::pipe::register`, after the flag).
    pub fn wake_handle(&self) -> std::io::Result<UnixStream> {
        self.tx.try_clone()
    }

    fn wake_fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
}

/// A wake-up for a loop that waits in [`Stop::wait_or`]: "something
/// changed, do not wait out the interval". Nudges before the wait are not
/// lost; several count as one.
pub struct Nudge {
    rx: UnixStream,
    tx: UnixStream,
}

impl Nudge {
    pub fn new() -> std::io::Result<Nudge> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Nudge { rx, tx })
    }

    pub fn nudge(&self) {
        // A full buffer already holds a nudge.
        let _ = (&self.tx).write(&[1]);
    }

    /// Whether there were nudges (all taken).
    fn take(&self) -> bool {
        let mut buf = [0u8; 64];
        let mut any = false;
        while let Ok(n) = std::io::Read::read(&mut (&self.rx), &mut buf) {
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }
}

/// Why the gate closed an unauthenticated connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// It did not authenticate within the deadline.
    Deadline(Duration),
    /// Its source had its budget full and opened another.
    SourceFull,
    /// The unauthenticated budget was full and another connection came.
    BudgetFull,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Deadline(d) => write!(f, "the handshake deadline ({} ms) passed", d.as_millis()),
            Closed::SourceFull => f.write_str("dropped for a newer unauthenticated connection from the same source"),
            Closed::BudgetFull => f.write_str("dropped for a newer connection: the unauthenticated budget was full"),
        }
    }
}

const OPEN: u8 = 0;
const DEADLINE: u8 = 1;
const SOURCE_FULL: u8 = 2;
const BUDGET_FULL: u8 = 3;

/// Why an authenticated peer was not given a slot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Closed(String),
    #[error("{limit} authenticated connections are open already")]
    Full { limit: usize },
}

struct Pending {
    id: u64,
    source: Source,
    since: Instant,
    closer: OwnedFd,
    why: Arc<AtomicU8>,
}

#[derive(Default)]
struct GateState {
    next_id: u64,
    /// Unauthenticated connections, oldest first.
    pending: Vec<Pending>,
    established: usize,
    /// Drops since the last summary in the log, and when that was.
    dropped: [u64; 3],
    reported: Option<Instant>,
    /// Refused peers (bad key, malformed) since the last warning about one.
    refused: u64,
    refusal_reported: Option<Instant>,
}

/// Counters since the gate was made.
#[derive(Debug, Default)]
pub struct GateStats {
    pub accepted: AtomicU64,
    pub authenticated: AtomicU64,
    pub deadline: AtomicU64,
    pub source_full: AtomicU64,
    pub budget_full: AtomicU64,
    pub refused_full: AtomicU64,
}

/// The admission state of one listener.
pub struct Gate {
    name: &'static str,
    limits: Limits,
    state: Mutex<GateState>,
    pub stats: GateStats,
}

/// How often the log summarises dropped connections.
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Gate {
    pub fn new(name: &'static str, limits: Limits) -> Arc<Gate> {
        Arc::new(Gate { name, limits, state: Mutex::new(GateState::default()), stats: GateStats::default() })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unauthenticated and authenticated connections open now.
    pub fn open(&self) -> (usize, usize) {
        let st = self.lock();
        (st.pending.len(), st.established)
    }

    /// Take a new connection (never refused): room is made by closing an
    /// older unauthenticated one. `closer` is a duplicate of its descriptor.
    pub fn admit(self: &Arc<Self>, source: Source, closer: OwnedFd) -> Ticket {
        let now = Instant::now();
        let why = Arc::new(AtomicU8::new(OPEN));
        let mut st = self.lock();
        let from_source = st.pending.iter().filter(|p| p.source == source).count();
        if from_source >= self.limits.per_source {
            if let Some(i) = st.pending.iter().position(|p| p.source == source) {
                self.close(&mut st, i, SOURCE_FULL);
            }
        } else if st.pending.len() >= self.limits.pre_auth {
            if let Some(i) = heaviest_oldest(&st.pending) {
                self.close(&mut st, i, BUDGET_FULL);
            }
        }
        st.next_id += 1;
        let id = st.next_id;
        st.pending.push(Pending { id, source: source.clone(), since: now, closer, why: why.clone() });
        self.report(&mut st, now);
        drop(st);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ticket { gate: self.clone(), id, source, deadline: now + self.limits.deadline, why, authenticated: false }
    }

    fn close(&self, st: &mut GateState, index: usize, why: u8) {
        let p = st.pending.remove(index);
        p.why.store(why, Ordering::SeqCst);
        // Wakes the connection's thread, blocked in a read: it sees the end.
        let _ = nix::sys::socket::shutdown(p.closer.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let (counter, slot) = match why {
            DEADLINE => (&self.stats.deadline, 0),
            SOURCE_FULL => (&self.stats.source_full, 1),
            _ => (&self.stats.budget_full, 2),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        st.dropped[slot] += 1;
        tracing::debug!(listener = self.name, source = %p.source, reason = %Closed::from_code(why, self.limits.deadline),
            "unauthenticated connection closed");
    }

    /// One warning per [`REPORT_EVERY`] at most, when connections were dropped.
    fn report(&self, st: &mut GateState, now: Instant) {
        if st.dropped == [0; 3] || st.reported.is_some_and(|t| now.duration_since(t) < REPORT_EVERY) {
            return;
        }
        let [deadline, source, budget] = std::mem::take(&mut st.dropped);
        st.reported = Some(now);
        tracing::warn!(
            listener = self.name,
            deadline,
            source_full = source,
            budget_full = budget,
            "unauthenticated connections closed (port scans, health checks or a flood): {deadline} past the {} ms handshake deadline, {} for newer ones",
            self.limits.deadline.as_millis(),
            source + budget
        );
    }

    /// Log a refused unauthenticated peer (malformed handshake, wrong key):
    /// a warning at most once per [`REPORT_EVERY`], counting the others, so
    /// a flood of garbage cannot flood the log.
    pub fn refused(&self, peer: &str, reason: &str) {
        let now = Instant::now();
        let mut st = self.lock();
        if st.refusal_reported.is_some_and(|t| now.duration_since(t) < REPORT_EVERY) {
            st.refused += 1;
            drop(st);
            tracing::debug!(listener = self.name, peer, reason, "unauthenticated peer refused");
            return;
        }
        let others = std::mem::take(&mut st.refused);
        st.refusal_reported = Some(now);
        drop(st);
        tracing::warn!(
            listener = self.name,
            peer,
            others_since_last_warning = others,
            "unauthenticated peer refused: {reason}"
        );
    }

    /// Close every unauthenticated connection (the listener stops: their
    /// threads end now, not at their deadlines).
    pub fn close_pending(&self) {
        let mut st = self.lock();
        while !st.pending.is_empty() {
            let p = st.pending.remove(0);
            p.why.store(DEADLINE, Ordering::SeqCst);
            let _ = nix::sys::socket::shutdown(p.closer.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }

    /// Close every connection past its deadline; when the next one falls due.
    pub fn expire(&self, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        while let Some(i) = st.pending.iter().position(|p| now >= p.since + self.limits.deadline) {
            self.close(&mut st, i, DEADLINE);
        }
        self.report(&mut st, now);
        st.pending.iter().map(|p| p.since + self.limits.deadline).min()
    }
}

/// The oldest connection of the source holding the most.
fn heaviest_oldest(pending: &[Pending]) -> Option<usize> {
    let mut count: BTreeMap<&Source, usize> = BTreeMap::new();
    for p in pending {
        *count.entry(&p.source).or_default() += 1;
    }
    let most = count.values().copied().max()?;
    pending.iter().position(|p| count.get(&p.source) == Some(&most))
}

impl Closed {
    fn from_code(code: u8, deadline: Duration) -> Closed {
        match code {
            DEADLINE => Closed::Deadline(deadline),
            SOURCE_FULL => Closed::SourceFull,
            _ => Closed::BudgetFull,
        }
    }
}

/// One admitted connection's place at the gate; dropping it frees the slot.
pub struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    source: Source,
    deadline: Instant,
    why: Arc<AtomicU8>,
    authenticated: bool,
}

impl Ticket {
    /// A ticket outside any gate (a connection handed over by a caller
    /// that did its own accepting): it never expires and is never closed.
    pub fn unlimited() -> Ticket {
        let gate = Gate::new("unlimited", Limits::new(usize::MAX));
        Ticket {
            gate,
            id: 0,
            source: Source::Unknown,
            deadline: Instant::now() + Duration::from_secs(3600 * 24 * 365),
            why: Arc::new(AtomicU8::new(OPEN)),
            authenticated: true,
        }
    }

    /// When the peer must have authenticated.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The gate's deadline: how long a peer has to authenticate.
    pub fn limit(&self) -> Duration {
        self.gate.limits.deadline
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The gate this connection was admitted at.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The same, to keep after the ticket is gone.
    pub fn gate_handle(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// The gate closed this connection before it authenticated, and why.
    pub fn closed(&self) -> Option<Closed> {
        match self.why.load(Ordering::SeqCst) {
            OPEN => None,
            code => Some(Closed::from_code(code, self.gate.limits.deadline)),
        }
    }

    /// The peer proved itself: move to the authenticated budget. Refused
    /// if the gate closed it meanwhile, or if that budget is full.
    pub fn authenticate(&mut self) -> Result<(), Refused> {
        if self.authenticated {
            return Ok(());
        }
        let mut st = self.gate.lock();
        let Some(i) = st.pending.iter().position(|p| p.id == self.id) else {
            let why = self.closed().map_or_else(|| "closed".to_string(), |c| c.to_string());
            return Err(Refused::Closed(why));
        };
        st.pending.remove(i);
        if st.established >= self.gate.limits.established {
            drop(st);
            self.gate.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            // Out of the unauthenticated list already: nothing to release.
            self.authenticated = false;
            self.id = 0;
            return Err(Refused::Full { limit: self.gate.limits.established });
        }
        st.established += 1;
        drop(st);
        self.authenticated = true;
        self.gate.stats.authenticated.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        if self.authenticated {
            st.established = st.established.saturating_sub(1);
        } else if let Some(i) = st.pending.iter().position(|p| p.id == self.id) {
            st.pending.remove(i);
        }
    }
}

/// A listener [`serve`] can accept from.
pub trait Listen: AsFd {
    type Conn: AsFd + Send + 'static;
    fn accept_conn(&self) -> std::io::Result<(Self::Conn, Source)>;
    fn nonblocking(&self) -> std::io::Result<()>;
}

impl Listen for TcpListener {
    type Conn = TcpStream;
    fn accept_conn(&self) -> std::io::Result<(TcpStream, Source)> {
        let (s, addr) = self.accept()?;
        s.set_nonblocking(false)?;
        Ok((s, Source::Ip(addr.ip())))
    }
    fn nonblocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
}

impl Listen for UnixListener {
    type Conn = UnixStream;
    fn accept_conn(&self) -> std::io::Result<(UnixStream, Source)> {
        let (s, _) = self.accept()?;
        s.set_nonblocking(false)?;
        let source = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
            .map_or(Source::Unknown, |c| Source::Uid(c.uid()));
        Ok((s, source))
    }
    fn nonblocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(true)
    }
}

/// Accept until `stop`: each connection is admitted at `gate` and handed to
/// `admitted` with its ticket (which spawns whatever serves it). Blocks in
/// `poll` on the listener and the stop wake-up; the only timeout is the
/// next handshake deadline.
pub fn serve<L: Listen>(
    listener: &L,
    gate: &Arc<Gate>,
    stop: &Stop,
    mut admitted: impl FnMut(L::Conn, Ticket),
) -> std::io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    listener.nonblocking()?;
    let stopped = || {
        gate.close_pending();
        Ok(())
    };
    loop {
        if stop.is_stopped() {
            return stopped();
        }
        let now = Instant::now();
        let timeout = match gate.expire(now) {
            None => PollTimeout::NONE,
            Some(due) => {
                // Rounded up, so the wake-up finds the deadline passed.
                let ms = due.saturating_duration_since(now).as_micros().div_ceil(1000);
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::NONE)
            }
        };
        let mut fds =
            [PollFd::new(listener.as_fd(), PollFlags::POLLIN), PollFd::new(stop.wake_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) {
            return stopped();
        }
        if !ready(&fds[0]) {
            continue;
        }
        loop {
            match listener.accept_conn() {
                Ok((conn, source)) => {
                    let closer = match conn.as_fd().try_clone_to_owned() {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(listener = gate.name, error = %e, "cannot take a connection: out of descriptors?");
                            break;
                        }
                    };
                    let ticket = gate.admit(source, closer);
                    admitted(conn, ticket);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of descriptors or memory: the listener stays
                    // readable, so wait a little instead of spinning.
                    tracing::warn!(listener = gate.name, error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn conn() -> (UnixStream, OwnedFd) {
        let (a, b) = UnixStream::pair().unwrap();
        let closer = b.as_fd().try_clone_to_owned().unwrap();
        // The far end stays with the test: `a` sees the shutdown of `b`.
        std::mem::forget(b);
        (a, closer)
    }

    fn ip(last: u8) -> Source {
        Source::Ip(IpAddr::from([127, 0, 0, last]))
    }

    fn is_closed(s: &mut UnixStream) -> bool {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        matches!(s.read(&mut [0u8; 1]), Ok(0))
    }

    #[test]
    fn a_busy_source_drops_its_own_oldest_and_never_another_sources() {
        let gate = Gate::new("test", Limits { pre_auth: 4, per_source: 2, established: 2, deadline: DEFAULT_DEADLINE });
        let (mut legit, c) = conn();
        let legit_ticket = gate.admit(ip(1), c);
        let mut flood = Vec::new();
        for _ in 0..20 {
            let (s, c) = conn();
            flood.push((s, gate.admit(ip(2), c)));
        }
        assert_eq!(gate.open(), (3, 0), "source 2 holds two, source 1 one");
        assert!(legit_ticket.closed().is_none());
        assert!(!is_closed(&mut legit));
        assert_eq!(flood[0].1.closed(), Some(Closed::SourceFull));
        assert!(is_closed(&mut flood[0].0), "the dropped connection sees its end");
        assert!(flood[19].1.closed().is_none());
        assert_eq!(gate.stats.source_full.load(Ordering::Relaxed), 18);
    }

    #[test]
    fn a_full_budget_drops_the_oldest_of_the_heaviest_source() {
        let gate = Gate::new("test", Limits { pre_auth: 4, per_source: 3, established: 2, deadline: DEFAULT_DEADLINE });
        let (_l, c) = conn();
        let legit = gate.admit(ip(1), c);
        let mut t = Vec::new();
        for i in 0..3 {
            let (s, c) = conn();
            t.push((s, gate.admit(ip(2 + (i % 2)), c)));
        }
        assert_eq!(gate.open(), (4, 0));
        let (_s, c) = conn();
        let newest = gate.admit(ip(4), c);
        assert!(legit.closed().is_none(), "the oldest overall is spared: its source holds one");
        assert_eq!(t[0].1.closed(), Some(Closed::BudgetFull), "source 2 held the most");
        assert!(newest.closed().is_none());
        assert_eq!(gate.open(), (4, 0));
    }

    #[test]
    fn authenticated_connections_have_their_own_budget_and_free_it_when_dropped() {
        let gate = Gate::new("test", Limits { pre_auth: 2, per_source: 2, established: 1, deadline: DEFAULT_DEADLINE });
        let (_a, c) = conn();
        let mut a = gate.admit(ip(1), c);
        a.authenticate().unwrap();
        for _ in 0..10 {
            let (_s, c) = conn();
            drop(gate.admit(ip(2), c));
        }
        assert_eq!(gate.open(), (0, 1), "dropped tickets free their slots");
        let (_b, c) = conn();
        let mut b = gate.admit(ip(3), c);
        assert_eq!(b.authenticate(), Err(Refused::Full { limit: 1 }));
        drop(b);
        drop(a);
        assert_eq!(gate.open(), (0, 0));
        let (_c, c) = conn();
        let mut c = gate.admit(ip(3), c);
        assert_eq!(c.authenticate(), Ok(()));
        assert_eq!(gate.open(), (0, 1));
    }

    #[test]
    fn the_deadline_closes_and_a_closed_connection_cannot_authenticate() {
        let gate = Gate::new(
            "test",
            Limits { pre_auth: 4, per_source: 4, established: 4, deadline: Duration::from_millis(10) },
        );
        let (mut s, c) = conn();
        let mut t = gate.admit(ip(1), c);
        let due = gate.expire(Instant::now()).expect("a deadline is pending");
        assert!(due <= t.deadline());
        assert!(gate.expire(t.deadline() + Duration::from_millis(1)).is_none(), "nothing left to expire");
        assert_eq!(t.closed(), Some(Closed::Deadline(Duration::from_millis(10))));
        assert!(is_closed(&mut s));
        assert!(matches!(t.authenticate(), Err(Refused::Closed(r)) if r.contains("deadline")));
        assert_eq!(gate.open(), (0, 0));
    }

    #[test]
    fn serve_accepts_without_a_tick_and_stops_when_woken() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Stop::new().unwrap();
        let gate = Gate::new("test", Limits::new(4));
        let (tx, rx) = crossbeam_channel::unbounded();
        let t = {
            let (stop, gate) = (stop.clone(), gate.clone());
            std::thread::spawn(move || {
                serve(&l, &gate, &stop, |conn, ticket| {
                    let _ = tx.send((conn, ticket));
                })
            })
        };
        for _ in 0..3 {
            let _c = TcpStream::connect(addr).unwrap();
            let (_conn, ticket) = rx.recv_timeout(Duration::from_secs(5)).expect("accepted");
            assert_eq!(ticket.source(), &Source::Ip(IpAddr::from([127, 0, 0, 1])));
        }
        stop.stop();
        t.join().unwrap().unwrap();
        assert!(Limits::new(1).with_deadline(Duration::ZERO).check().is_err());
        assert!(Limits::new(1).check().is_ok());
    }
}
