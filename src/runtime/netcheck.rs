//! Timing the network between a primary's host and a mirror's
//! (docs/protocol.md § 14): a stream of bytes the mirror reads and throws
//! away, after the same key proofs as a stream's handshake. `filerep bench
//! --mirror` uses it for the network's own ceiling beside the pair's rate.

use super::mirror::SessionEnd;
use crate::error::{Error, Result};
use crate::io::net::{is_timeout, ConnReader, ConnWriter};
use crate::protocol::handshake::{ClusterKey, NetCheckHello, NetCheckResult, MAX_NET_CHECK_BYTES};
use crate::runtime::primary::{prove_to_mirror, read_message};
use std::io::IoSlice;
use std::time::{Duration, Instant};

/// Bytes per send and per receive.
const CHUNK: usize = 1 << 20;

/// What a network check measured.
#[derive(Debug, Clone, Copy)]
pub struct NetCheck {
    pub bytes: u64,
    /// From the first byte sent to the mirror's answer that all arrived.
    pub seconds: f64,
    /// From the mirror's first byte to its last.
    pub mirror_seconds: f64,
}

impl NetCheck {
    /// Megabytes (10^6) a second, as the sender saw it.
    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// Send `bytes` bytes to the mirror behind `reader`/`writer` (a fresh
/// connection) after proving the key, and time them until the mirror says
/// they all arrived. `timeout` bounds each handshake message and the wait
/// for the answer.
pub fn run(
    reader: &mut dyn ConnReader,
    writer: &mut dyn ConnWriter,
    key: &ClusterKey,
    bytes: u64,
    peer: &str,
    timeout: Duration,
) -> Result<NetCheck> {
    if bytes == 0 || bytes > MAX_NET_CHECK_BYTES {
        return Err(Error::InvalidArgument(format!(
            "a network check of {bytes} bytes: give 1..={MAX_NET_CHECK_BYTES}"
        )));
    }
    let hs_err = |source| Error::Handshake { peer: peer.to_string(), source };
    let io_err = |what: &str, e: std::io::Error| Error::io(format!("network check with {peer}: {what}"), e);
    let mut client_nonce = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut client_nonce);
    let hello = NetCheckHello { client_nonce, bytes }.encode();
    let proofs = (
        |h: &[u8], cn: &[u8; 32], sn: &[u8; 32]| key.net_check_proof(h, cn, sn),
        |h: &[u8], cn: &[u8; 32], sn: &[u8; 32]| key.net_check_mirror_proof(h, cn, sn),
    );
    prove_to_mirror(reader, writer, &hello, &client_nonce, proofs, peer, timeout)?;
    // Incompressible bytes, in case a link compresses.
    let mut chunk = vec![0u8; CHUNK];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut chunk);
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        writer.send_all(&[IoSlice::new(&chunk[..n])]).map_err(|e| io_err("sending", e))?;
        left -= n as u64;
    }
    let answer = read_message(reader, Some(Instant::now() + timeout)).map_err(|e| io_err("reading the result", e))?;
    let seconds = started.elapsed().as_secs_f64();
    let result = NetCheckResult::decode(&answer).map_err(hs_err)?;
    if result.received != bytes {
        return Err(Error::Rejected(format!(
            "network check with {peer}: the mirror read {} of {bytes} bytes",
            result.received
        )));
    }
    Ok(NetCheck { bytes, seconds, mirror_seconds: result.elapsed_ns as f64 / 1e9 })
}

/// The mirror's side once the check is accepted: read `bytes` bytes and
/// throw them away, each read within `idle` of the last, then answer.
pub(crate) fn sink(reader: &mut dyn ConnReader, writer: &mut dyn ConnWriter, bytes: u64, idle: Duration) -> SessionEnd {
    let end = |r: std::result::Result<u64, String>| {
        if let Err(why) = &r {
            tracing::warn!(reason = %why, "network check ended early");
        }
        SessionEnd::NetCheck(r)
    };
    if let Err(e) = reader.set_timeout(Some(idle)) {
        return end(Err(format!("cannot set the read timeout: {e}")));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    let mut first = None;
    while received < bytes {
        let want = (bytes - received).min(CHUNK as u64) as usize;
        match reader.recv(&mut buf[..want]) {
            Ok(0) => return end(Err(format!("the peer closed after {received} of {bytes} bytes"))),
            Ok(n) => {
                first.get_or_insert_with(Instant::now);
                received += n as u64;
            }
            Err(e) if is_timeout(&e) => {
                return end(Err(format!("nothing for {} s after {received} of {bytes} bytes", idle.as_secs())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return end(Err(format!("receive failed after {received} of {bytes} bytes: {e}"))),
        }
    }
    let elapsed_ns = first.map_or(0, |t| t.elapsed().as_nanos() as u64);
    let answer = NetCheckResult { received, elapsed_ns }.encode();
    match writer.send_all(&[IoSlice::new(&answer)]) {
        Ok(_) => end(Ok(received)),
        Err(e) => end(Err(format!("sending the result: {e}"))),
    }
}
