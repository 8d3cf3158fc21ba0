//! The control channel between the arbiter and the segments: probes,
//! orders, and a primary's "my mirror is gone". One request and one
//! response per TCP connection, each MACed with the cluster key over a
//! nonce the server picks, so a peer without the key can neither ask nor
//! answer, and a recorded exchange cannot be replayed.
//!
//! Wire (all integers little-endian; `docs/protocol.md` § control):
//! - server → client: `"FRCT"`, version u16 = 1, nonce [32];
//! - client → server: body length u32, body (JSON), MAC [32] =
//!   keyed-BLAKE3("filerep v1 control request" ‖ nonce ‖ len u64 ‖ body);
//! - server → client: body length u32, body (JSON), MAC [32] over the
//!   same nonce with the label "response".
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
/// Authenticated requests handled at once (unauthenticated connections
/// have their own budget: [`crate::io::admission`]).
pub const MAX_CONNECTIONS: usize = 32;

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
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(io_err(addr))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_BODY {
        return Err(ControlError::Malformed {
            addr: addr.into(),
            reason: format!("body of {len} bytes (at most {MAX_BODY})"),
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

/// Send one request and wait for its response, all within `timeout`.
pub fn call<Req: Serialize, Resp: DeserializeOwned>(
    addr: &str,
    key: &ClusterKey,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, ControlError> {
    let target: SocketAddr = addr.to_socket_addrs().map_err(io_err(addr))?.next().ok_or_else(|| {
        ControlError::Malformed { addr: addr.into(), reason: "the address resolves to nothing".into() }
    })?;
    let mut s = TcpStream::connect_timeout(&target, timeout).map_err(io_err(addr))?;
    s.set_read_timeout(Some(timeout)).map_err(io_err(addr))?;
    s.set_write_timeout(Some(timeout)).map_err(io_err(addr))?;
    let _ = s.set_nodelay(true);
    let mut hello = [0u8; 38];
    s.read_exact(&mut hello).map_err(io_err(addr))?;
    if hello[..4] != MAGIC || u16::from_le_bytes([hello[4], hello[5]]) != VERSION {
        return Err(ControlError::Malformed {
            addr: addr.into(),
            reason: "not a filerep control endpoint (version 1)".into(),
        });
    }
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(&hello[6..38]);
    let body =
        serde_json::to_vec(req).map_err(|e| ControlError::Malformed { addr: addr.into(), reason: e.to_string() })?;
    write_body(&mut s, addr, key, b"request", &nonce, &body)?;
    let resp = read_body(&mut s, addr, key, b"response", &nonce)?;
    serde_json::from_slice(&resp).map_err(|e| ControlError::Malformed { addr: addr.into(), reason: e.to_string() })
}

/// Serve requests until `stop`: each connection on its own thread.
/// Connections whose request has not yet passed its MAC are held to the
/// admission gate's small budget and deadline ([`crate::io::admission`]), so a
/// flood of silent connections cannot keep the arbiter's probes out;
/// authenticated ones (the handler running) count against
/// `limits.established`. `timeout` bounds sending the response. A bad
/// request is logged and its connection closed; serving goes on.
pub fn serve<Req, Resp, H>(
    listener: TcpListener,
    key: ClusterKey,
    stop: Arc<Stop>,
    limits: Limits,
    timeout: Duration,
    handle: H,
) where
    Req: DeserializeOwned,
    Resp: Serialize,
    H: Fn(Req) -> Resp + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let gate = Gate::new("control", limits);
    let served = crate::io::admission::serve(&listener, &gate, &stop, |stream, ticket| {
        let (key, handle) = (key.clone(), handle.clone());
        let spawned = std::thread::Builder::new().name("filerep-control".into()).spawn(move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
            let gate = ticket.gate_handle();
            match serve_one(stream, &peer, &key, ticket, timeout, handle.as_ref()) {
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

fn serve_one<Req: DeserializeOwned, Resp: Serialize>(
    mut s: TcpStream,
    peer: &str,
    key: &ClusterKey,
    mut ticket: Ticket,
    timeout: Duration,
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
    let body = read_body(&mut s, peer, key, b"request", &nonce).map_err(|e| unauthenticated(&ticket, e))?;
    // The MAC checked: out of the unauthenticated budget while it is handled.
    ticket.authenticate().map_err(|e| ControlError::Malformed { addr: peer.into(), reason: e.to_string() })?;
    let req: Req = serde_json::from_slice(&body)
        .map_err(|e| ControlError::Malformed { addr: peer.into(), reason: e.to_string() })?;
    let resp = handle(req);
    let out =
        serde_json::to_vec(&resp).map_err(|e| ControlError::Malformed { addr: peer.into(), reason: e.to_string() })?;
    s.set_write_timeout(Some(timeout)).map_err(io_err(peer))?;
    write_body(&mut s, peer, key, b"response", &nonce, &out)
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
            serve(l, k, st, Limits::new(MAX_CONNECTIONS), Duration::from_secs(5), |x: u64| x + 1)
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
}
