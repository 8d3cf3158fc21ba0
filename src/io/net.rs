//! The `net` layer: a connection is a reader half and a writer half of an
//! ordered byte stream. Backends: TCP (with `TCP_NODELAY` and large socket
//! buffers) and an in-memory pipe that delivers in arbitrary chunk sizes, for
//! tests that run the real primary and mirror threads without sockets.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::io::{self, IoSlice, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Socket buffers large enough for a few hundred 32 KiB frames in flight.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

pub trait ConnReader: Send {
    /// Read some bytes; `Ok(0)` at end of stream. With a timeout set, an
    /// expired wait is `ErrorKind::WouldBlock` or `ErrorKind::TimedOut`.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;
    /// A descriptor that polls readable when a receive would not block
    /// (a socket's); `None` where there is none (in-memory connections).
    fn poll_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

pub trait ConnWriter: Send {
    /// Write every byte of every slice, in order.
    fn send_all(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<()>;
    /// Close both directions: the peer's reads see end of stream, and a
    /// local reader blocked on this connection wakes up.
    fn close(&mut self);
    /// A second handle on the same connection, so another thread can
    /// close it while this one is blocked in a send.
    fn clone_writer(&self) -> io::Result<Box<dyn ConnWriter>>;
    /// Fail a send that cannot complete within `t` (the peer stopped reading).
    fn set_send_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;
}

pub type Conn = (Box<dyn ConnReader>, Box<dyn ConnWriter>);

/// Whether an error is a read timeout rather than a failure.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

struct TcpReader(TcpStream);
struct TcpWriter(TcpStream);

impl ConnReader for TcpReader {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
    fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.0.set_read_timeout(t)
    }
    fn poll_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(std::os::fd::AsFd::as_fd(&self.0))
    }
}

impl ConnWriter for TcpWriter {
    fn send_all(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let mut owned: Vec<IoSlice<'_>> = bufs.to_vec();
        let mut slices: &mut [IoSlice<'_>] = &mut owned;
        while !slices.is_empty() {
            // sendmsg takes at most IOV_MAX (1024) slices at a time.
            let n = slices.len().min(1024);
            match send_no_signal(&self.0, &slices[..n]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "peer stopped reading")),
                Ok(written) => IoSlice::advance_slices(&mut slices, written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn close(&mut self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
    fn clone_writer(&self) -> io::Result<Box<dyn ConnWriter>> {
        Ok(Box::new(TcpWriter(self.0.try_clone()?)))
    }
    fn set_send_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.0.set_write_timeout(t)
    }
}

/// A vectored send that never raises SIGPIPE: a peer gone is the error
/// `EPIPE`, not the end of the process. `write_vectored` is `writev`,
/// which raises it, and a C process that links this library (the C API)
/// keeps SIGPIPE's default, which kills it: the primary died with its
/// mirror (std's plain `write` on a socket already passes MSG_NOSIGNAL).
fn send_no_signal(stream: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;
    sendmsg::<SockaddrStorage>(stream.as_raw_fd(), slices, &[], MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
}

/// Tune a TCP stream for the replication stream and split it.
pub fn tcp(stream: TcpStream) -> io::Result<Conn> {
    stream.set_nodelay(true)?;
    let sock = socket2_ref(&stream);
    // Larger buffers than the defaults let the sender keep whole batches in flight.
    let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBuf, &SOCKET_BUFFER_BYTES);
    let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &SOCKET_BUFFER_BYTES);
    let reader = stream.try_clone()?;
    Ok((Box::new(TcpReader(reader)), Box::new(TcpWriter(stream))))
}

fn socket2_ref(s: &TcpStream) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd;
    s.as_fd()
}

/// Bytes travelling through an in-memory pipe; `None` is end of stream.
type Chunk = Option<Vec<u8>>;

pub struct MemReader {
    rx: Receiver<Chunk>,
    /// Set by a close of either side: the end of stream even when the
    /// close's end marker found the pipe full (a peer still holds a sender).
    pair_closed: Arc<AtomicBool>,
    leftover: Vec<u8>,
    at: usize,
    timeout: Option<Duration>,
    eof: bool,
}

pub struct MemWriter {
    tx: Sender<Chunk>,
    /// Shared with both readers ([`MemReader::pair_closed`]).
    pair_closed: Arc<AtomicBool>,
    /// Wakes our own reader on close, as shutting down a socket does.
    own_rx_wake: Sender<Chunk>,
    /// Split every send into pieces of at most this many bytes.
    chunk: usize,
    closed: bool,
    send_timeout: Option<Duration>,
}

impl MemReader {
    /// The next piece, waiting in short slices so that a close whose end
    /// marker could not be queued is still seen once the pipe is empty.
    fn next_chunk(&mut self) -> Result<Chunk, RecvTimeoutError> {
        const SLICE: Duration = Duration::from_millis(50);
        let deadline = self.timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(std::time::Instant::now()).min(SLICE),
                None => SLICE,
            };
            match self.rx.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {
                    if self.pair_closed.load(Ordering::SeqCst) && self.rx.is_empty() {
                        return Ok(None);
                    }
                    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        return Err(RecvTimeoutError::Timeout);
                    }
                }
                other => return other,
            }
        }
    }
}

impl ConnReader for MemReader {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.leftover.len() {
            if self.eof {
                return Ok(0);
            }
            let next = self.next_chunk();
            match next {
                Ok(Some(v)) => {
                    self.leftover = v;
                    self.at = 0;
                }
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                    self.eof = true;
                    return Ok(0);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
                }
            }
        }
        let n = buf.len().min(self.leftover.len() - self.at);
        buf[..n].copy_from_slice(&self.leftover[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
    fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.timeout = t;
        Ok(())
    }
}

impl ConnWriter for MemWriter {
    fn send_all(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"));
        }
        for b in bufs {
            for piece in b.chunks(self.chunk.max(1)) {
                let msg = Some(piece.to_vec());
                let sent = match self.send_timeout {
                    None => self.tx.send(msg).map_err(|_| io::ErrorKind::BrokenPipe),
                    Some(t) => self.tx.send_timeout(msg, t).map_err(|e| match e {
                        crossbeam_channel::SendTimeoutError::Timeout(_) => io::ErrorKind::TimedOut,
                        crossbeam_channel::SendTimeoutError::Disconnected(_) => io::ErrorKind::BrokenPipe,
                    }),
                };
                sent.map_err(|k| io::Error::new(k, "in-memory send failed"))?;
            }
        }
        Ok(())
    }
    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.pair_closed.store(true, Ordering::SeqCst);
            // Never block in close: on a full pipe the flag ends the stream.
            let _ = self.tx.try_send(None);
            let _ = self.own_rx_wake.try_send(None);
        }
    }
    fn clone_writer(&self) -> io::Result<Box<dyn ConnWriter>> {
        Ok(Box::new(MemWriter {
            tx: self.tx.clone(),
            pair_closed: self.pair_closed.clone(),
            own_rx_wake: self.own_rx_wake.clone(),
            chunk: self.chunk,
            closed: self.closed,
            send_timeout: self.send_timeout,
        }))
    }
    fn set_send_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.send_timeout = t;
        Ok(())
    }
}

impl Drop for MemWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// Two connected in-memory endpoints; each send is delivered in pieces of at
/// most `chunk` bytes. Bounded, like a socket buffer: a writer blocks when
/// `capacity` pieces are queued.
pub fn mem_pair(chunk: usize, capacity: usize) -> (Conn, Conn) {
    let (a_tx, a_rx) = crossbeam_channel::bounded::<Chunk>(capacity);
    let (b_tx, b_rx) = crossbeam_channel::bounded::<Chunk>(capacity);
    // A close of either side ends both directions, as a socket's shutdown does.
    let closed = Arc::new(AtomicBool::new(false));
    let reader =
        |rx| MemReader { rx, pair_closed: closed.clone(), leftover: Vec::new(), at: 0, timeout: None, eof: false };
    let writer = |tx, own_rx_wake| MemWriter {
        tx,
        pair_closed: closed.clone(),
        own_rx_wake,
        chunk,
        closed: false,
        send_timeout: None,
    };
    let a = (
        Box::new(reader(b_rx)) as Box<dyn ConnReader>,
        Box::new(writer(a_tx.clone(), b_tx.clone())) as Box<dyn ConnWriter>,
    );
    let b = (Box::new(reader(a_rx)) as Box<dyn ConnReader>, Box::new(writer(b_tx, a_tx)) as Box<dyn ConnWriter>);
    (a, b)
}

/// Read exactly `buf.len()` bytes before `deadline` (if any), or fail.
pub fn recv_exact_until(
    r: &mut dyn ConnReader,
    buf: &mut [u8],
    deadline: Option<std::time::Instant>,
) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
            }
            r.set_timeout(Some(left))?;
        }
        match r.recv(&mut buf[at..])? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")),
            n => at += n,
        }
    }
    Ok(())
}

/// Read exactly `buf.len()` bytes, or fail on end of stream.
pub fn recv_exact(r: &mut dyn ConnReader, buf: &mut [u8]) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match r.recv(&mut buf[at..])? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")),
            n => at += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod conformance {
    //! One suite, run against TCP on loopback and the in-memory pipe.
    use super::*;
    use std::net::TcpListener;

    fn tcp_pair() -> (Conn, Conn) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        (tcp(c).unwrap(), tcp(s).unwrap())
    }

    fn ordered_vectored_delivery(make: fn() -> (Conn, Conn)) {
        let ((_ar, mut aw), (mut br, _bw)) = make();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let t = std::thread::spawn(move || {
            let slices: Vec<IoSlice<'_>> = sent.chunks(4099).map(IoSlice::new).collect();
            aw.send_all(&slices).unwrap();
            aw.close();
        });
        let mut got = Vec::new();
        let mut buf = vec![0u8; 10_000];
        loop {
            let n = br.recv(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        t.join().unwrap();
        assert_eq!(got, data);
    }

    fn timeout_then_data(make: fn() -> (Conn, Conn)) {
        let ((_ar, mut aw), (mut br, _bw)) = make();
        br.set_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = [0u8; 4];
        let e = br.recv(&mut buf).unwrap_err();
        assert!(is_timeout(&e), "{e:?}");
        aw.send_all(&[IoSlice::new(b"ping")]).unwrap();
        br.set_timeout(None).unwrap();
        recv_exact(br.as_mut(), &mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    fn close_wakes_both_sides(make: fn() -> (Conn, Conn)) {
        let ((mut ar, mut aw), (mut br, mut bw)) = make();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 1];
            ar.recv(&mut b)
        });
        aw.close();
        assert_eq!(t.join().unwrap().unwrap(), 0, "own reader sees end of stream after close");
        let mut b = [0u8; 1];
        assert_eq!(br.recv(&mut b).unwrap(), 0, "peer sees end of stream");
        bw.close();
    }

    #[test]
    fn tcp_conformance() {
        ordered_vectored_delivery(tcp_pair);
        timeout_then_data(tcp_pair);
        close_wakes_both_sides(tcp_pair);
    }

    #[test]
    fn mem_conformance() {
        fn make() -> (Conn, Conn) {
            mem_pair(777, 64)
        }
        ordered_vectored_delivery(make);
        timeout_then_data(make);
        close_wakes_both_sides(make);
    }

    /// A close that finds the pipe full still ends the stream, though the
    /// other side's writer (which holds a sender to this pipe) lives on.
    #[test]
    fn a_close_on_a_full_pipe_still_ends_the_stream() {
        let ((_ar, mut aw), (mut br, _bw)) = mem_pair(4, 1);
        aw.send_all(&[IoSlice::new(b"full")]).unwrap();
        aw.close();
        let mut buf = [0u8; 8];
        assert_eq!(br.recv(&mut buf).unwrap(), 4, "the data sent before the close");
        assert_eq!(&buf[..4], b"full");
        assert_eq!(br.recv(&mut buf).unwrap(), 0, "then the end of the stream");
    }
}

#[cfg(test)]
mod no_sigpipe {
    use super::*;
    use std::net::TcpListener;

    /// Whether SIGPIPE is pending for this thread (`SigPnd` in its status).
    fn sigpipe_pending() -> bool {
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("thread status");
        let line = status.lines().find(|l| l.starts_with("SigPnd:")).expect("SigPnd line");
        let mask = u64::from_str_radix(line["SigPnd:".len()..].trim(), 16).expect("hex mask");
        mask & (1 << (libc::SIGPIPE - 1)) != 0
    }

    /// A C process that links the library keeps SIGPIPE's default action
    /// (terminate). A send to a peer that is gone must be an error, not a
    /// signal. The test blocks SIGPIPE in its own thread, so a raised one
    /// stays pending where it can be seen (this test binary ignores it).
    #[test]
    fn a_send_to_a_peer_that_is_gone_fails_without_raising_sigpipe() {
        std::thread::spawn(|| {
            let mut pipe = nix::sys::signal::SigSet::empty();
            pipe.add(nix::sys::signal::Signal::SIGPIPE);
            pipe.thread_block().expect("block SIGPIPE in this thread");
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (peer, _) = l.accept().unwrap();
            // Closed with a reset: the next sends fail at once.
            nix::sys::socket::setsockopt(
                &peer,
                nix::sys::socket::sockopt::Linger,
                &libc::linger { l_onoff: 1, l_linger: 0 },
            )
            .unwrap();
            drop(peer);
            let (_r, mut w) = tcp(c).unwrap();
            let block = [7u8; 4096];
            let mut broken = false;
            // The reset arrives within a few sends on loopback; then EPIPE.
            for _ in 0..10_000 {
                if w.send_all(&[IoSlice::new(&block)]).is_err_and(|e| e.kind() == io::ErrorKind::BrokenPipe) {
                    broken = true;
                    break;
                }
            }
            assert!(broken, "no send met the closed peer with EPIPE");
            assert!(!sigpipe_pending(), "a send raised SIGPIPE");
        })
        .join()
        .expect("the test thread");
    }
}
