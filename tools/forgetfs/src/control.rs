//! The control socket: a test asks forgetfs for a power cut (or what one
//! would drop) over a Unix socket. Fixed-width little-endian messages,
//! documented byte by byte in `docs/forgetfs.md`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub const REQUEST_MAGIC: [u8; 4] = *b"FGFQ";
pub const RESPONSE_MAGIC: [u8; 4] = *b"FGFA";
pub const VERSION: u16 = 2;
pub const REQUEST_LEN: usize = 32;
pub const RESPONSE_HEADER_LEN: usize = 72;
/// Longest report text carried by a response (the rest is in the log).
pub const MAX_TEXT: usize = 1 << 20;

/// Request flag: tear the last unsynced write of each file.
pub const FLAG_TEAR: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// What a cut now would drop; changes nothing.
    Status = 1,
    /// Power cut.
    Cut = 2,
    /// The next fsync of a file with unsynced changes fails with EIO and
    /// lets its dirty pages go, as Linux does (one more per request).
    FailSync = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub tear: bool,
    /// Seeds the torn writes' lengths.
    pub seed: u64,
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(self.op as u16).to_le_bytes());
        b[8..12].copy_from_slice(&(if self.tear { FLAG_TEAR } else { 0 }).to_le_bytes());
        b[16..24].copy_from_slice(&self.seed.to_le_bytes());
        b
    }

    /// Every field checked: a request with anything unknown is refused.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request, String> {
        if b[0..4] != REQUEST_MAGIC {
            return Err(format!("bad magic {:02x?} (want FGFQ)", &b[0..4]));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(format!("version {version}, this forgetfs speaks {VERSION}"));
        }
        let op = match u16::from_le_bytes([b[6], b[7]]) {
            1 => Op::Status,
            2 => Op::Cut,
            3 => Op::FailSync,
            n => return Err(format!("unknown op {n} (1 status, 2 cut, 3 fail the next fsync)")),
        };
        let flags = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if flags & !FLAG_TEAR != 0 {
            return Err(format!("unknown flags {flags:#x} (bit 0: tear)"));
        }
        if b[12..16] != [0; 4] || b[24..32] != [0; 8] {
            return Err("reserved bytes 12..16 and 24..32 must be zero".into());
        }
        let seed = u64::from_le_bytes(b[16..24].try_into().unwrap_or_default());
        Ok(Request { op, tear: flags & FLAG_TEAR != 0, seed })
    }
}

/// The answer: counts, and the report text (one line per item).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// 0: done; 1: the request was refused (the text says why).
    pub status: u16,
    /// Power cuts so far, this one included.
    pub cuts: u64,
    /// Cut: files whose unsynced changes were dropped. Status: files with unsynced changes.
    pub files: u64,
    /// Bytes of dirty pages dropped (or held).
    pub bytes: u64,
    /// Directory entries whose unsynced change was undone (or pending).
    pub entries: u64,
    /// Cut: last writes torn.
    pub torn: u64,
    /// Cut: inodes no durable name leads to any more.
    pub removed: u64,
    /// Fsyncs failed on purpose so far (every op answers it).
    pub failed_syncs: u64,
    pub text: String,
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let mut text = self.text.as_bytes();
        if text.len() > MAX_TEXT {
            // Cut at a character boundary.
            let mut n = MAX_TEXT;
            while !self.text.is_char_boundary(n) {
                n -= 1;
            }
            text = &text[..n];
        }
        let mut b = Vec::with_capacity(RESPONSE_HEADER_LEN + text.len());
        b.extend_from_slice(&RESPONSE_MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.status.to_le_bytes());
        for v in [self.cuts, self.files, self.bytes, self.entries, self.torn, self.removed, self.failed_syncs] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(text.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0u8; 4]);
        b.extend_from_slice(text);
        b
    }

    pub fn read_from(r: &mut impl Read) -> Result<Response, String> {
        let mut h = [0u8; RESPONSE_HEADER_LEN];
        r.read_exact(&mut h).map_err(|e| format!("reading the response header: {e}"))?;
        if h[0..4] != RESPONSE_MAGIC {
            return Err(format!("bad response magic {:02x?}", &h[0..4]));
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != VERSION {
            return Err(format!("response version {version}, expected {VERSION}"));
        }
        let u = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(h[64..68].try_into().unwrap_or_default()) as usize;
        if len > MAX_TEXT {
            return Err(format!("response text of {len} bytes (at most {MAX_TEXT})"));
        }
        let mut text = vec![0u8; len];
        r.read_exact(&mut text).map_err(|e| format!("reading the response text: {e}"))?;
        Ok(Response {
            status: u16::from_le_bytes([h[6], h[7]]),
            cuts: u(8),
            files: u(16),
            bytes: u(24),
            entries: u(32),
            torn: u(40),
            removed: u(48),
            failed_syncs: u(56),
            text: String::from_utf8(text).map_err(|e| format!("response text is not UTF-8: {e}"))?,
        })
    }
}

/// Send one request to the forgetfs listening on `socket`; its answer.
pub fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let limit = Some(Duration::from_secs(60));
    s.set_read_timeout(limit).and_then(|_| s.set_write_timeout(limit)).map_err(|e| e.to_string())?;
    s.write_all(&req.encode()).map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    let r = Response::read_from(&mut s).map_err(|e| format!("{}: {e}", socket.display()))?;
    if r.status != 0 {
        return Err(format!("{} refused the request: {}", socket.display(), r.text));
    }
    Ok(r)
}

/// A power cut, torn with `seed` if `tear`.
pub fn cut(socket: &Path, tear: bool, seed: u64) -> Result<Response, String> {
    call(socket, &Request { op: Op::Cut, tear, seed })
}

/// Make the next fsync of a file with unsynced changes fail (EIO, its
/// dirty pages let go).
pub fn fail_next_sync(socket: &Path) -> Result<Response, String> {
    call(socket, &Request { op: Op::FailSync, tear: false, seed: 0 })
}

/// What a cut now would drop.
pub fn status(socket: &Path) -> Result<Response, String> {
    call(socket, &Request { op: Op::Status, tear: false, seed: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_anything_unknown_is_refused() {
        for req in [
            Request { op: Op::Cut, tear: true, seed: 0x1234_5678_9abc_def0 },
            Request { op: Op::Status, tear: false, seed: 0 },
            Request { op: Op::FailSync, tear: false, seed: 0 },
        ] {
            assert_eq!(Request::decode(&req.encode()), Ok(req));
        }
        let good = Request { op: Op::Cut, tear: false, seed: 7 }.encode();
        let mut b = good;
        b[0] = b'X';
        assert!(Request::decode(&b).unwrap_err().contains("magic"));
        let mut b = good;
        b[4] = 9;
        assert!(Request::decode(&b).unwrap_err().contains("version"));
        let mut b = good;
        b[6] = 9;
        assert!(Request::decode(&b).unwrap_err().contains("unknown op 9"));
        let mut b = good;
        b[8] = 2;
        assert!(Request::decode(&b).unwrap_err().contains("flags"));
        let mut b = good;
        b[30] = 1;
        assert!(Request::decode(&b).unwrap_err().contains("reserved"));
    }

    #[test]
    fn responses_round_trip_with_their_text() {
        let r = Response {
            status: 0,
            cuts: 3,
            files: 2,
            bytes: 8192,
            entries: 5,
            torn: 1,
            removed: 4,
            failed_syncs: 6,
            text: "/a: unsynced changes dropped\n".into(),
        };
        let b = r.encode();
        assert_eq!(b.len(), RESPONSE_HEADER_LEN + r.text.len());
        assert_eq!(&b[0..4], b"FGFA");
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 8192);
        assert_eq!(Response::read_from(&mut &b[..]), Ok(r));
    }
}
