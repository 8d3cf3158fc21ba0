//! The control channel between the arbiter and the segments: probes,
//! orders, and a primary's "my mirror is gone". A request and its
//! response (an exchange), each MACed with the cluster key over a nonce
//! the server picks, so a peer without the key can neither ask nor
//! answer, and a recorded exchange cannot be replayed. A connection
//! carries one exchange or several in turn ([`Kept`]: the arbiter's probes
//! reuse one connection per segment).
//!
//! Wire (all integers little-endian; `docs/protocol.md` § 12):
//! - server → client: `"FRCT"`, version u16 = 1, nonce N [32];
//! - client → server: body length u32, body (JSON), MAC [32] =
//!   keyed-BLAKE3("filerep v1 control request" ‖ nonce(i) ‖ len u64 ‖ body);
//! - server → client: body length u32, body (JSON), MAC [32] over the
//!   same nonce with the label "response";
//! - the last two repeat for exchanges i = 1, 2, …: nonce(0) = N, then
//!   nonce(i) = BLAKE3("filerep v1 control exchange" ‖ N ‖ i u64).
//!
//! Bodies are JSON (serde): messages are small and rare, and an operator
//! can read them in a packet capture. Every length is bounded before use.

use crate::io::admission::{Gate, Limits, Stop, Ticket};
use crate::protocol::handshake::{proofs_equal, ClusterKey};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub const MAGIC: [u8; 4] = *b"FRCT";
pub const VERSION: u16 = 1;
/// Largest body (a handed-over change set is the biggest message).
pub const MAX_BODY: usize = 16 << 20;
/// Authenticated requests a segment handles at once (unauthenticated
/// connections have their own budget: [`crate::io::admission`]).
pub const MAX_CONNECTIONS: usize = 32;

/// The arbiter's control port: every segment of a host may ask at once
/// (a killed host makes each of its mirrors' primaries ask), and tools
/// follow many pairs at once, all from a few addresses. Unauthenticated
/// connections are budgeted per source so that a host's own segments fit,
/// and a flood from one source still pushes out only its own.
pub fn arbiter_limits(deadline: Duration) -> Limits {
    Limits { pre_auth: 512, per_source: 128, established: 512, deadline }
}

/// The largest first request the arbiter reads before its MAC is checked
/// (`addmirrors` of thousands of mirrors fits): its 512 unauthenticated
/// connections hold at most 512 MiB, not 512 times [`MAX_BODY`].
pub const ARBITER_MAX_REQUEST: usize = 1 << 20;

/// Attempts of one call whose connection closed before the server's hello
/// (its unauthenticated budget was full: the request was never sent, so
/// sending it again is safe).
const HELLO_ATTEMPTS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control connection to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control message from {addr}: {reason}")]
    Malformed { addr: String, reason: String },
    #[error("control message from {addr} failed authentication (wrong cluster key?)")]
    BadMac { addr: String },
    #[error("control connection from {addr} closed before a request arrived: {reason}")]
    Unauthenticated { addr: String, reason: String },
}

fn io_err(addr: &str) -> impl Fn(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io { addr: addr.to_string(), source }
}

fn read_body(
    s: &mut TcpStream,
    addr: &str,
    key: &ClusterKey,
    label: &[u8],
    nonce: &[u8; 32],
) -> Result<Vec<u8>, ControlError> {
    read_body_at_most(s, addr, key, (label, nonce), MAX_BODY)
}

/// [`read_body`] of at most `max` bytes (checked before reading it).
fn read_body_at_most(
    s: &mut TcpStream,
    addr: &str,
    key: &ClusterKey,
    (label, nonce): (&[u8], &[u8; 32]),
    max: usize,
) -> Result<Vec<u8>, ControlError> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(io_err(addr))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(ControlError::Malformed {
            addr: addr.into(),
            reason: format!("body of {len} bytes (at most {max})"),
        });
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(io_err(addr))?;
    let mut mac = [0u8; 32];
    s.read_exact(&mut mac).map_err(io_err(addr))?;
    if !proofs_equal(&key.control_mac(label, nonce, &body), &mac) {
        return Err(ControlError::BadMac { addr: addr.into() });
    }
    Ok(body)
}

fn write_body(
    s: &mut TcpStream,
    addr: &str,
    key: &ClusterKey,
    label: &[u8],
    nonce: &[u8; 32],
    body: &[u8],
) -> Result<(), ControlError> {
    let mut out = Vec::with_capacity(body.len() + 36);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&key.control_mac(label, nonce, body));
    s.write_all(&out).map_err(io_err(addr))
}

/// Send one request and wait for its response, all within `timeout`. A
/// connection the server closes before its hello (its budget for new
/// connections was full) is tried again, a few times, within `timeout`.
pub fn call<Req: Serialize, Resp: DeserializeOwned>(
    addr: &str,
    key: &ClusterKey,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, ControlError> {
    let target: SocketAddr = addr.to_socket_addrs().map_err(io_err(addr))?.next().ok_or_else(|| {
        ControlError::Malformed { addr: addr.into(), reason: "the address resolves to nothing".into() }
    })?;
    let deadline = std::time::Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(1));
        match call_once(addr, target, key, req, left) {
            Err(Attempt::BeforeHello(e)) => {
                let pause = Duration::from_millis(10 << attempt.min(6));
                if attempt >= HELLO_ATTEMPTS || std::time::Instant::now() + pause >= deadline {
                    return Err(e);
                }
                tracing::debug!(addr, attempt, error = %e, "control connection closed before the hello; trying again");
                std::thread::sleep(pause); // a backoff: the server's budget frees as its peers finish
            }
            Err(Attempt::After(e)) => return Err(e),
            Ok(r) => return Ok(r),
        }
    }
}

enum Attempt {
    /// Closed before the server's hello: nothing was sent.
    BeforeHello(ControlError),
    After(ControlError),
}

fn call_once<Req: Serialize, Resp: DeserializeOwned>(
    addr: &str,
    target: SocketAddr,
    key: &ClusterKey,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, Attempt> {
    let mut conn = connect(addr, target, timeout)?;
    conn.exchange(addr, key, req, timeout).map_err(Attempt::After)
}

/// The nonce of a connection's exchange `i`: the server's own for the
/// first, then one derived from it and `i`, so no request or response of
/// one exchange passes for another's.
pub fn exchange_nonce(first: &[u8; 32], i: u64) -> [u8; 32] {
    if i == 0 {
        return *first;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"filerep v1 control exchange");
    h.update(first);
    h.update(&i.to_le_bytes());
    *h.finalize().as_bytes()
}

/// An open control connection, past the server's hello.
struct Conn {
    s: TcpStream,
    nonce: [u8; 32],
    /// Exchanges done on it.
    done: u64,
    last_used: std::time::Instant,
}

fn connect(addr: &str, target: SocketAddr, timeout: Duration) -> Result<Conn, Attempt> {
    let after = Attempt::After;
    let mut s = TcpStream::connect_timeout(&target, timeout).map_err(io_err(addr)).map_err(after)?;
    s.set_read_timeout(Some(timeout)).map_err(io_err(addr)).map_err(after)?;
    s.set_write_timeout(Some(timeout)).map_err(io_err(addr)).map_err(after)?;
    let _ = s.set_nodelay(true);
    let mut hello = [0u8; 38];
    if let Err(e) = s.read_exact(&mut hello) {
        let closed = matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        );
        let e = io_err(addr)(e);
        return Err(if closed { Attempt::BeforeHello(e) } else { Attempt::After(e) });
    }
    if hello[..4] != MAGIC || u16::from_le_bytes([hello[4], hello[5]]) != VERSION {
        return Err(after(ControlError::Malformed {
            addr: addr.into(),
            reason: "not a filerep control endpoint (version 1)".into(),
        }));
    }
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(&hello[6..38]);
    Ok(Conn { s, nonce, done: 0, last_used: std::time::Instant::now() })
}

impl Conn {
    fn exchange<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        addr: &str,
        key: &ClusterKey,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, ControlError> {
        self.s.set_read_timeout(Some(timeout)).map_err(io_err(addr))?;
        self.s.set_write_timeout(Some(timeout)).map_err(io_err(addr))?;
        let nonce = exchange_nonce(&self.nonce, self.done);
        let body = serde_json::to_vec(req)
            .map_err(|e| ControlError::Malformed { addr: addr.into(), reason: e.to_string() })?;
        write_body(&mut self.s, addr, key, b"request", &nonce, &body)?;
        let resp = read_body(&mut self.s, addr, key, b"response", &nonce)?;
        self.done += 1;
        self.last_used = std::time::Instant::now();
        serde_json::from_slice(&resp).map_err(|e| ControlError::Malformed { addr: addr.into(), reason: e.to_string() })
    }
}

/// How long a kept connection may sit unused before the client drops it
/// (the server keeps it [`SERVER_IDLE`], longer, so a kept connection is
/// not closed under a request as a rule).
const KEEP_IDLE: Duration = Duration::from_secs(20);
/// How long a server waits for a connection's next request.
pub const SERVER_IDLE: Duration = Duration::from_secs(60);

/// Connections kept open between calls, for requests sent again and again
/// (the arbiter's probes): a probe is then one round trip on a connection
/// the segment already serves, not a connect, an accept, a new thread and
/// a hello. Only for requests that may be sent twice: one whose kept
/// connection turns out closed is sent again on a new one.
#[derive(Default)]
pub struct Kept {
    idle: std::sync::Mutex<std::collections::HashMap<String, Vec<Conn>>>,
}

impl Kept {
    pub fn new() -> Kept {
        Kept::default()
    }

    fn take(&self, addr: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.get_mut(addr)?;
        // Unused too long: the server may close it any moment (dropped here).
        conns.retain(|c| c.last_used.elapsed() < KEEP_IDLE);
        conns.pop()
    }

    fn put(&self, addr: &str, c: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.entry(addr.to_string()).or_default();
        conns.retain(|c| c.last_used.elapsed() < KEEP_IDLE);
        // One per address is what sequential probes need; a few cover overlaps.
        if conns.len() < 4 {
            conns.push(c);
        }
    }

    /// Close the connections to every address not in `addrs` (sorted):
    /// segments that left the catalog.
    pub fn keep_only(&self, addrs: &[String]) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|a, _| addrs.binary_search(a).is_ok());
    }

    /// Close every kept connection to `addr` (it stopped answering).
    pub fn forget(&self, addr: &str) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).remove(addr);
    }

    /// [`call`] on a kept connection when there is one (sent again on a new
    /// connection if that one fails), and the connection kept afterwards.
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        key: &ClusterKey,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, ControlError> {
        if let Some(mut c) = self.take(addr) {
            match c.exchange(addr, key, req, timeout) {
                Ok(r) => {
                    self.put(addr, c);
                    return Ok(r);
                }
                // Silent for the whole timeout: the server hangs, and a new
                // connection would only wait as long again.
                Err(e @ ControlError::Io { .. }) if matches!(&e, ControlError::Io { source, .. } if crate::io::net::is_timeout(source)) => {
                    return Err(e)
                }
                // Closed by the server (restarted, idle): a new connection decides.
                Err(e) => tracing::debug!(addr, error = %e, "kept control connection failed; trying a new one"),
            }
        }
        let target: SocketAddr = addr.to_socket_addrs().map_err(io_err(addr))?.next().ok_or_else(|| {
            ControlError::Malformed { addr: addr.into(), reason: "the address resolves to nothing".into() }
        })?;
        let mut c = match connect(addr, target, timeout) {
            Ok(c) => c,
            Err(Attempt::BeforeHello(e) | Attempt::After(e)) => return Err(e),
        };
        let r = c.exchange(addr, key, req, timeout)?;
        self.put(addr, c);
        Ok(r)
    }
}

/// Serve requests until `stop`: each connection on its own thread.
/// Connections whose request has not yet passed its MAC are held to the
/// admission gate's small budget and deadline ([`crate::io::admission`]), so a
/// flood of silent connections cannot keep the arbiter's probes out;
/// authenticated ones (the handler running) count against
/// `limits.established`. `timeout` bounds sending the response. A bad
/// request is logged and its connection closed; serving goes on.
/// `first_request_max`: the largest first request read (before its MAC is
/// checked); later requests on a connection that proved the key may take
/// [`MAX_BODY`].
pub fn serve<Req, Resp, H>(
    listener: TcpListener,
    key: ClusterKey,
    stop: Arc<Stop>,
    limits: (Limits, usize),
    timeout: Duration,
    handle: H,
) where
    Req: DeserializeOwned,
    Resp: Serialize,
    H: Fn(Req) -> Resp + Send + Sync + 'static,
{
    let (limits, first_request_max) = limits;
    let handle = Arc::new(handle);
    let gate = Gate::new("control", limits);
    let served = crate::io::admission::serve(&listener, &gate, &stop, |stream, ticket| {
        let (key, handle, stop) = (key.clone(), handle.clone(), stop.clone());
        let spawned = std::thread::Builder::new().name("filerep-control".into()).spawn(move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
            let gate = ticket.gate_handle();
            match serve_one(stream, &peer, &key, (ticket, first_request_max), timeout, &stop, handle.as_ref()) {
                Ok(()) => {}
                // Normal on an open port: the gate sums these up in the log.
                Err(e @ ControlError::Unauthenticated { .. }) => {
                    tracing::debug!(%peer, error = %e, "control connection closed")
                }
                // Before the MAC checked: anyone can send garbage.
                Err(e @ (ControlError::BadMac { .. } | ControlError::Malformed { .. })) => {
                    gate.refused(&peer, &e.to_string())
                }
                Err(e) => tracing::warn!(%peer, error = %e, "control request refused"),
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot spawn a control thread");
        }
    });
    if let Err(e) = served {
        tracing::error!(error = %e, "control listener failed");
    }
}

/// One connection: its first request under the admission gate's deadline,
/// then, once that one proved the key, further requests as the client
/// sends them (each its own exchange nonce), until the client closes,
/// [`SERVER_IDLE`] passes without one, or the server stops.
pub(crate) fn serve_one<Req: DeserializeOwned, Resp: Serialize>(
    mut s: TcpStream,
    peer: &str,
    key: &ClusterKey,
    (mut ticket, first_request_max): (Ticket, usize),
    timeout: Duration,
    stop: &Stop,
    handle: &dyn Fn(Req) -> Resp,
) -> Result<(), ControlError> {
    let unauthenticated = |ticket: &Ticket, e: ControlError| match (ticket.closed(), &e) {
        (Some(why), _) => ControlError::Unauthenticated { addr: peer.into(), reason: why.to_string() },
        (None, ControlError::Io { source, .. }) if crate::io::net::is_timeout(source) => {
            ControlError::Unauthenticated {
                addr: peer.into(),
                reason: format!("the request did not arrive within the deadline ({} ms)", ticket.limit().as_millis()),
            }
        }
        (None, ControlError::Io { source, .. }) => {
            ControlError::Unauthenticated { addr: peer.into(), reason: source.to_string() }
        }
        _ => e,
    };
    let _ = s.set_nodelay(true);
    let left = ticket.deadline().saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(io_err(peer))?;
    s.set_write_timeout(Some(left)).map_err(io_err(peer))?;
    let mut nonce = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let mut hello = Vec::with_capacity(38);
    hello.extend_from_slice(&MAGIC);
    hello.extend_from_slice(&VERSION.to_le_bytes());
    hello.extend_from_slice(&nonce);
    s.write_all(&hello).map_err(io_err(peer)).map_err(|e| unauthenticated(&ticket, e))?;
    // A peer trickling bytes is closed by the gate at the deadline.
    let body = read_body_at_most(&mut s, peer, key, (b"request", &nonce), first_request_max)
        .map_err(|e| unauthenticated(&ticket, e))?;
    // The MAC checked: out of the unauthenticated budget while it is handled.
    ticket.authenticate().map_err(|e| ControlError::Malformed { addr: peer.into(), reason: e.to_string() })?;
    let req: Req = serde_json::from_slice(&body)
        .map_err(|e| ControlError::Malformed { addr: peer.into(), reason: e.to_string() })?;
    let respond = |s: &mut TcpStream, req: Req, nonce: &[u8; 32]| {
        let resp = handle(req);
        let out = serde_json::to_vec(&resp)
            .map_err(|e| ControlError::Malformed { addr: peer.into(), reason: e.to_string() })?;
        s.set_write_timeout(Some(timeout)).map_err(io_err(peer))?;
        write_body(s, peer, key, b"response", nonce, &out)
    };
    respond(&mut s, req, &nonce)?;
    for i in 1u64.. {
        s.set_read_timeout(Some(SERVER_IDLE)).map_err(io_err(peer))?;
        let next = exchange_nonce(&nonce, i);
        let body = match read_body(&mut s, peer, key, b"request", &next) {
            Ok(b) => b,
            // The client closed, or went quiet: the connection ends here.
            Err(ControlError::Io { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if stop.is_stopped() {
            return Ok(());
        }
        let req: Req = serde_json::from_slice(&body)
            .map_err(|e| ControlError::Malformed { addr: peer.into(), reason: e.to_string() })?;
        respond(&mut s, req, &next)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(m: &str) -> ClusterKey {
        ClusterKey::from_material(m.as_bytes()).unwrap()
    }

    fn server(k: ClusterKey) -> (String, Arc<Stop>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = Stop::new().unwrap();
        let st = stop.clone();
        std::thread::spawn(move || {
            serve(l, k, st, (Limits::new(MAX_CONNECTIONS), MAX_BODY), Duration::from_secs(5), |x: u64| x + 1)
        });
        (addr, stop)
    }

    #[test]
    fn a_request_gets_its_response() {
        let (addr, stop) = server(key("the cluster key material"));
        let r: u64 = call(&addr, &key("the cluster key material"), &41u64, Duration::from_secs(5)).unwrap();
        assert_eq!(r, 42);
        stop.stop();
    }

    #[test]
    fn a_wrong_key_is_refused_and_the_server_keeps_serving() {
        let (addr, stop) = server(key("the cluster key material"));
        let r: Result<u64, _> = call(&addr, &key("some other key material"), &1u64, Duration::from_secs(5));
        assert!(r.is_err(), "a request MACed with another key must not be answered");
        // Garbage: a huge length, then nothing.
        let mut s = TcpStream::connect(&addr).unwrap();
        let mut hello = [0u8; 38];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "no response to a malformed request");
        let r: u64 = call(&addr, &key("the cluster key material"), &1u64, Duration::from_secs(5)).unwrap();
        assert_eq!(r, 2);
        stop.stop();
    }

    #[test]
    fn a_kept_connection_serves_several_exchanges() {
        let k = key("the cluster key material");
        let (addr, stop) = server(k.clone());
        let kept = Kept::new();
        for i in 0..3u64 {
            let r: u64 = kept.call(&addr, &k, &(10 * i), Duration::from_secs(5)).unwrap();
            assert_eq!(r, 10 * i + 1);
        }
        let c = kept.take(&addr).expect("the connection is kept");
        assert_eq!(c.done, 3, "all three exchanges went over one connection");
        stop.stop();
    }

    #[test]
    fn an_exchange_replayed_on_its_connection_is_refused() {
        let k = key("the cluster key material");
        let (addr, stop) = server(k.clone());
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut hello = [0u8; 38];
        s.read_exact(&mut hello).unwrap();
        let nonce: [u8; 32] = hello[6..38].try_into().unwrap();
        let body = serde_json::to_vec(&1u64).unwrap();
        let mut request = Vec::new();
        request.extend_from_slice(&(body.len() as u32).to_le_bytes());
        request.extend_from_slice(&body);
        request.extend_from_slice(&k.control_mac(b"request", &nonce, &body));
        s.write_all(&request).unwrap();
        let answer = read_body(&mut s, &addr, &k, b"response", &nonce).unwrap();
        assert_eq!(serde_json::from_slice::<u64>(&answer).unwrap(), 2);
        // The same bytes again: the second exchange has a nonce of its own.
        s.write_all(&request).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "a replayed request is not answered: {rest:?}");
        stop.stop();
    }

    #[test]
    fn a_connection_closed_before_the_hello_is_tried_again() {
        let k = key("the cluster key material");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let sk = k.clone();
        let server = std::thread::spawn(move || {
            // The first connection is closed at once, as a full budget does.
            drop(l.accept().unwrap().0);
            let (s, peer) = l.accept().unwrap();
            let stop = Stop::new().unwrap();
            let handle = |x: u64| x + 1;
            serve_one(
                s,
                &peer.to_string(),
                &sk,
                (Ticket::unlimited(), MAX_BODY),
                Duration::from_secs(5),
                &stop,
                &handle,
            )
        });
        let r: u64 = call(&addr, &k, &6u64, Duration::from_secs(5)).unwrap();
        assert_eq!(r, 7);
        server.join().unwrap().unwrap();
    }

    /// A first request longer than the server's cap is not read (its
    /// length is checked before its body), even with a good MAC; the
    /// server goes on serving.
    #[test]
    fn a_first_request_past_the_cap_is_not_read() {
        let k = key("the cluster key material");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = Stop::new().unwrap();
        let (sk, st) = (k.clone(), stop.clone());
        std::thread::spawn(move || {
            serve(l, sk, st, (Limits::new(4), 1024), Duration::from_secs(5), |x: String| x.len() as u64)
        });
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut hello = [0u8; 38];
        s.read_exact(&mut hello).unwrap();
        let nonce: [u8; 32] = hello[6..38].try_into().unwrap();
        let body = serde_json::to_vec(&"x".repeat(2048)).unwrap();
        let mut request = (body.len() as u32).to_le_bytes().to_vec();
        request.extend_from_slice(&body);
        request.extend_from_slice(&k.control_mac(b"request", &nonce, &body));
        let _ = s.write_all(&request);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "a request past the cap was answered: {rest:?}");
        let r: u64 = call(&addr, &k, &"x".repeat(100), Duration::from_secs(5)).unwrap();
        assert_eq!(r, 100);
        stop.stop();
    }
}
