//! The local client API of `filerep segment`: a process on the segment's
//! host drives the storage API over a Unix socket (workloads, tests, the
//! demo). A host database links the library instead.
//!
//! Wire (little-endian; `docs/protocol.md` § client socket). Request:
//! length u32 of what follows, then op u8, filespace u16, a u64, b u64,
//! path length u16, second path length u16, data length u32, then the
//! path, the second path and the data. Response: length u32, then status
//! u8 (0 = ok, else an [`ErrorClass`]), value u64, data length u32, then
//! the data (a block read) or the error message. One request at a time
//! per connection; open several connections for parallel calls.

use crate::io::disk::DiskErrorKind;
use crate::protocol::MAX_WRITE_AT;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub const REQUEST_HEADER: usize = 27;

/// Request flag (bit 0 of `flags`): a changing call returns once made on
/// the primary and on its way to the mirror, as the segment's own mount
/// does (`Storage::queued`); syncs still wait for both hosts. The other
/// bits are refused.
pub const FLAG_QUEUED: u64 = 1;
pub const RESPONSE_HEADER: usize = 13;
/// Largest request or response after its length (a 256 KiB write plus two paths).
pub const MAX_MESSAGE: usize = MAX_WRITE_AT + 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Create = 1,
    WriteBlock = 2,
    Extend = 3,
    ReadBlock = 4,
    Nblocks = 5,
    Truncate = 6,
    Unlink = 7,
    Sync = 8,
    WriteAt = 9,
    Flush = 10,
    Len = 11,
    SetLen = 12,
    Mkdir = 13,
    Rmdir = 14,
    Rename = 15,
    Exists = 16,
    /// A directory fsync: every namespace change made before it durable on both hosts.
    SyncDir = 17,
}

impl Op {
    pub fn from_u8(v: u8) -> Option<Op> {
        use Op::*;
        Some(match v {
            1 => Create,
            2 => WriteBlock,
            3 => Extend,
            4 => ReadBlock,
            5 => Nblocks,
            6 => Truncate,
            7 => Unlink,
            8 => Sync,
            9 => WriteAt,
            10 => Flush,
            11 => Len,
            12 => SetLen,
            13 => Mkdir,
            14 => Rmdir,
            15 => Rename,
            16 => Exists,
            17 => SyncDir,
            _ => return None,
        })
    }
}

/// Why a call failed, as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorClass {
    /// Bad arguments: fix the call.
    Invalid = 1,
    /// This segment is not the acting primary: retry on the new primary.
    NotPrimary = 2,
    /// The pair cannot accept the change (mirror lost without a decision,
    /// demoted, change-log failed): nothing was changed by this call.
    Unavailable = 3,
    /// The segment faulted (rule 8).
    Faulted = 4,
    /// Anything else (I/O errors, a malformed request).
    Other = 5,
    /// The path, or a directory on the way to it, does not exist.
    NotFound = 6,
    /// The path exists already (create, mkdir).
    Exists = 7,
    /// The directory to remove, or to rename over, is not empty.
    NotEmpty = 8,
    /// The primary's disk is full (or over quota).
    NoSpace = 9,
}

impl ErrorClass {
    fn from_u8(v: u8) -> ErrorClass {
        match v {
            1 => ErrorClass::Invalid,
            2 => ErrorClass::NotPrimary,
            3 => ErrorClass::Unavailable,
            4 => ErrorClass::Faulted,
            6 => ErrorClass::NotFound,
            7 => ErrorClass::Exists,
            8 => ErrorClass::NotEmpty,
            9 => ErrorClass::NoSpace,
            _ => ErrorClass::Other,
        }
    }

    pub fn of(e: &crate::Error) -> ErrorClass {
        match e {
            crate::Error::InvalidArgument(_) | crate::Error::Path(_) => ErrorClass::Invalid,
            crate::Error::MirrorLost(_) | crate::Error::ChangeLog(_) | crate::Error::Closed(_) => {
                ErrorClass::Unavailable
            }
            crate::Error::Faulted(_) => ErrorClass::Faulted,
            crate::Error::NotPrimary(_) => ErrorClass::NotPrimary,
            // A namespace error on the primary: nothing was changed, and a
            // caller (the FUSE mount) needs to tell these apart (errno).
            crate::Error::Disk(d) => match d.kind {
                DiskErrorKind::NotFound => ErrorClass::NotFound,
                DiskErrorKind::AlreadyExists => ErrorClass::Exists,
                DiskErrorKind::NotEmpty => ErrorClass::NotEmpty,
                DiskErrorKind::NoSpace => ErrorClass::NoSpace,
                DiskErrorKind::Escapes | DiskErrorKind::Io => ErrorClass::Other,
            },
            _ => ErrorClass::Other,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("segment socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{class:?}: {message}")]
    Call { class: ErrorClass, message: String },
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl ClientError {
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            ClientError::Call { class, .. } => Some(*class),
            _ => None,
        }
    }
}

/// A decoded request (the segment's side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub filespace: u16,
    pub a: u64,
    /// [`FLAG_QUEUED`], or 0.
    pub flags: u64,
    pub path: String,
    pub path2: String,
    pub data: Vec<u8>,
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let body_len = REQUEST_HEADER + self.path.len() + self.path2.len() + self.data.len();
        let mut out = Vec::with_capacity(4 + body_len);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.push(self.op as u8);
        out.extend_from_slice(&self.filespace.to_le_bytes());
        out.extend_from_slice(&self.a.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&(self.path.len() as u16).to_le_bytes());
        out.extend_from_slice(&(self.path2.len() as u16).to_le_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(self.path2.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Decode a request body (after its length); every length is checked.
    pub fn decode(b: &[u8]) -> Result<Request, String> {
        if b.len() < REQUEST_HEADER {
            return Err(format!("a request of {} bytes is shorter than its {REQUEST_HEADER}-byte header", b.len()));
        }
        let op = Op::from_u8(b[0]).ok_or_else(|| format!("unknown operation {}", b[0]))?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let filespace = u16_at(1);
        let (a, flags) = (u64_at(3), u64_at(11));
        if flags & !FLAG_QUEUED != 0 {
            return Err(format!("flags {flags:#x}: only bit 0 (queued) is defined"));
        }
        let (pl, p2l) = (u16_at(19) as usize, u16_at(21) as usize);
        let dl = u32::from_le_bytes(b[23..27].try_into().unwrap_or_default()) as usize;
        if REQUEST_HEADER + pl + p2l + dl != b.len() {
            return Err(format!(
                "lengths {pl}+{p2l}+{dl} do not add up to the {} bytes after the header",
                b.len() - REQUEST_HEADER
            ));
        }
        let s = REQUEST_HEADER;
        let text = |r: &[u8]| String::from_utf8(r.to_vec()).map_err(|_| "a path is not UTF-8".to_string());
        Ok(Request {
            op,
            filespace,
            a,
            flags,
            path: text(&b[s..s + pl])?,
            path2: text(&b[s + pl..s + pl + p2l])?,
            data: b[s + pl + p2l..].to_vec(),
        })
    }
}

/// Read one length-prefixed message (at most [`MAX_MESSAGE`] bytes).
pub fn read_message(s: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message of {len} bytes (at most {MAX_MESSAGE})"),
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Encode a response.
pub fn response(result: Result<(u64, Vec<u8>), (ErrorClass, String)>) -> Vec<u8> {
    let (status, value, data) = match result {
        Ok((v, d)) => (0u8, v, d),
        Err((c, m)) => (c as u8, 0, m.into_bytes()),
    };
    let mut out = Vec::with_capacity(4 + RESPONSE_HEADER + data.len());
    out.extend_from_slice(&((RESPONSE_HEADER + data.len()) as u32).to_le_bytes());
    out.push(status);
    out.extend_from_slice(&value.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

/// A connection to a segment's client socket.
pub struct Client {
    stream: UnixStream,
    socket: PathBuf,
    /// A request was answered on this connection.
    used: bool,
    /// Every request carries [`FLAG_QUEUED`] ([`Client::set_queued`]).
    queued: bool,
}

/// How one request and its response went.
enum Exchange {
    Answered(Vec<u8>),
    /// The segment closed the connection before answering.
    Closed(ClientError),
    Failed(ClientError),
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        Ok(Client { stream: UnixStream::connect(socket)?, socket: socket.to_path_buf(), used: false, queued: false })
    }

    /// From now on this connection's changing calls return once made on
    /// the primary and on their way to the mirror ([`FLAG_QUEUED`]): a
    /// caller with file system semantics, which promises nothing of a
    /// change before its sync (the separate `filerep mount`). Its syncs
    /// still return once what they cover is durable on both hosts.
    pub fn set_queued(&mut self, queued: bool) {
        self.queued = queued;
    }

    fn exchange(&mut self, req: &[u8]) -> Exchange {
        let closed = |e: &std::io::Error| {
            matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
        };
        match self.stream.write_all(req) {
            Err(e) if closed(&e) => return Exchange::Closed(e.into()),
            Err(e) => return Exchange::Failed(e.into()),
            Ok(()) => {}
        }
        match read_message(&mut self.stream) {
            Ok(Some(body)) => Exchange::Answered(body),
            Ok(None) => Exchange::Closed(ClientError::Malformed("the segment closed the connection".into())),
            Err(e) if closed(&e) => Exchange::Closed(e.into()),
            Err(e) => Exchange::Failed(e.into()),
        }
    }

    fn call(&mut self, mut req: Request) -> Result<(u64, Vec<u8>), ClientError> {
        req.flags = if self.queued { FLAG_QUEUED } else { 0 };
        let bytes = req.encode();
        let mut answer = self.exchange(&bytes);
        // The segment closes a connection that makes no request within its
        // handshake deadline, before reading anything: a first call on it
        // was never seen, so it is sent once more on a new connection.
        if let (Exchange::Closed(_), false) = (&answer, self.used) {
            self.stream = UnixStream::connect(&self.socket)?;
            answer = self.exchange(&bytes);
        }
        let body = match answer {
            Exchange::Answered(b) => b,
            Exchange::Closed(e) | Exchange::Failed(e) => return Err(e),
        };
        self.used = true;
        if body.len() < RESPONSE_HEADER {
            return Err(ClientError::Malformed(format!("a response of {} bytes", body.len())));
        }
        let value = u64::from_le_bytes(body[1..9].try_into().unwrap_or_default());
        let dl = u32::from_le_bytes(body[9..13].try_into().unwrap_or_default()) as usize;
        if RESPONSE_HEADER + dl != body.len() {
            return Err(ClientError::Malformed("response lengths do not add up".into()));
        }
        let data = body[RESPONSE_HEADER..].to_vec();
        match body[0] {
            0 => Ok((value, data)),
            c => Err(ClientError::Call {
                class: ErrorClass::from_u8(c),
                message: String::from_utf8_lossy(&data).into_owned(),
            }),
        }
    }

    fn simple(&mut self, op: Op, fs: u16, path: &str, a: u64, data: &[u8]) -> Result<u64, ClientError> {
        let req =
            Request { op, filespace: fs, a, flags: 0, path: path.into(), path2: String::new(), data: data.to_vec() };
        self.call(req).map(|(v, _)| v)
    }

    pub fn create(&mut self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.simple(Op::Create, fs, path, 0, &[]).map(drop)
    }
    pub fn write_block(&mut self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError> {
        self.simple(Op::WriteBlock, fs, path, block, data).map(drop)
    }
    pub fn extend(&mut self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError> {
        self.simple(Op::Extend, fs, path, block, data).map(drop)
    }
    pub fn read_block(&mut self, fs: u16, path: &str, block: u64) -> Result<Vec<u8>, ClientError> {
        let req = Request {
            op: Op::ReadBlock,
            filespace: fs,
            a: block,
            flags: 0,
            path: path.into(),
            path2: String::new(),
            data: vec![],
        };
        self.call(req).map(|(_, d)| d)
    }
    pub fn nblocks(&mut self, fs: u16, path: &str) -> Result<u64, ClientError> {
        self.simple(Op::Nblocks, fs, path, 0, &[])
    }
    pub fn truncate(&mut self, fs: u16, path: &str, nblocks: u64) -> Result<(), ClientError> {
        self.simple(Op::Truncate, fs, path, nblocks, &[]).map(drop)
    }
    pub fn unlink(&mut self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.simple(Op::Unlink, fs, path, 0, &[]).map(drop)
    }
    pub fn sync(&mut self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.simple(Op::Sync, fs, path, 0, &[]).map(drop)
    }
    pub fn write_at(&mut self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.simple(Op::WriteAt, fs, path, offset, data).map(drop)
    }
    pub fn flush(&mut self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.simple(Op::Flush, fs, path, 0, &[]).map(drop)
    }
    pub fn len(&mut self, fs: u16, path: &str) -> Result<u64, ClientError> {
        self.simple(Op::Len, fs, path, 0, &[])
    }
    pub fn set_len(&mut self, fs: u16, path: &str, len: u64) -> Result<(), ClientError> {
        self.simple(Op::SetLen, fs, path, len, &[]).map(drop)
    }
    pub fn mkdir(&mut self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.simple(Op::Mkdir, fs, path, 0, &[]).map(drop)
    }
    pub fn rmdir(&mut self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.simple(Op::Rmdir, fs, path, 0, &[]).map(drop)
    }
    pub fn rename(&mut self, fs: u16, from: &str, to: &str) -> Result<(), ClientError> {
        let req = Request {
            op: Op::Rename,
            filespace: fs,
            a: 0,
            flags: 0,
            path: from.into(),
            path2: to.into(),
            data: vec![],
        };
        self.call(req).map(drop)
    }
    pub fn exists(&mut self, fs: u16, path: &str) -> Result<bool, ClientError> {
        self.simple(Op::Exists, fs, path, 0, &[]).map(|v| v != 0)
    }
    /// Make every change to directories made before the call (creates,
    /// unlinks, renames, mkdir, rmdir) durable on both hosts, as an fsync of
    /// a directory would. `dir` names an existing directory ("" the root).
    pub fn sync_dir(&mut self, fs: u16, dir: &str) -> Result<(), ClientError> {
        self.simple(Op::SyncDir, fs, dir, 0, &[]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_lengths_are_refused() {
        let r = Request {
            op: Op::Rename,
            filespace: 1,
            a: 7,
            flags: FLAG_QUEUED,
            path: "a/b".into(),
            path2: "c".into(),
            data: vec![1, 2, 3],
        };
        let enc = r.encode();
        assert_eq!(Request::decode(&enc[4..]).unwrap(), r);
        let mut bad = enc[4..].to_vec();
        bad[19] = 200; // path length past the end
        assert!(Request::decode(&bad).unwrap_err().contains("do not add up"));
        bad = enc[4..].to_vec();
        bad[0] = 99;
        assert!(Request::decode(&bad).unwrap_err().contains("unknown operation"));
        assert!(Request::decode(&enc[4..10]).is_err());
        bad = enc[4..].to_vec();
        bad[11] = 2; // a flag not defined
        assert!(Request::decode(&bad).unwrap_err().contains("flags 0x2: only bit 0 (queued) is defined"));
    }

    #[test]
    fn namespace_errors_keep_their_kind_across_the_socket() {
        use crate::io::disk::{DiskError, DiskErrorKind as K};
        for (kind, class) in [
            (K::NotFound, ErrorClass::NotFound),
            (K::AlreadyExists, ErrorClass::Exists),
            (K::NotEmpty, ErrorClass::NotEmpty),
            (K::NoSpace, ErrorClass::NoSpace),
            (K::Io, ErrorClass::Other),
        ] {
            let e = crate::Error::Disk(DiskError::new("op", "fs0:p", kind, "detail"));
            assert_eq!(ErrorClass::of(&e), class);
            assert_eq!(ErrorClass::from_u8(class as u8), class);
        }
        assert_eq!(ErrorClass::from_u8(200), ErrorClass::Other);
    }
}
