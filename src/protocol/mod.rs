//! Wire protocol v1: the frame codec, sans I/O.
//!
//! Every frame is a 48-byte little-endian header followed by `body_len` bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | kind ([`Kind`]) |
//! | 1 | 1 | flags ([`FLAG_DURABLE`], [`FLAG_CATCHING_UP`]) |
//! | 2 | 2 | filespace index |
//! | 4 | 4 | body length |
//! | 8 | 8 | sequence number (0 for control frames) |
//! | 16 | 4 | file id |
//! | 20 | 4 | aux (rename: length of the source path) |
//! | 24 | 8 | offset (block number, byte offset or new length) |
//! | 32 | 8 | xxh3 of the body |
//! | 40 | 8 | xxh3 of bytes 0..40 |
//!
//! The receiver checks the header checksum before it reads any other field,
//! bounds the body length before it waits for the body, and checks the body
//! checksum before the body is used. `docs/protocol.md` is the full reference.

pub mod handshake;
pub mod path;

use bytes::{Bytes, BytesMut};
use xxhash_rust::xxh3::xxh3_64;

pub const HEADER_LEN: usize = 48;
/// Largest `write_at` payload in one frame.
pub const MAX_WRITE_AT: usize = 256 * 1024;
/// Largest body of any frame: a write, or two maximal paths for a rename.
pub const MAX_BODY: usize = MAX_WRITE_AT;
/// Largest file a pair holds, in bytes: 4 TiB. No write may end past it and
/// no length exceed it, on either side. Every file system a mirror may use
/// holds it (ext4 with 4 KiB blocks stops just under 16 TiB; XFS, btrfs and
/// tmpfs far beyond); both sides check that theirs does at startup.
pub const MAX_FILE_BYTES: u64 = 1 << 42;

/// The end of `len` bytes from `start` (`None`: computing the start
/// overflowed), if it is within [`MAX_FILE_BYTES`]: the one limit check
/// both sides make.
pub fn file_end(start: Option<u64>, len: u64) -> Option<u64> {
    start?.checked_add(len).filter(|end| *end <= MAX_FILE_BYTES)
}
/// Block sizes a cluster may choose.
pub const BLOCK_SIZES: [u32; 3] = [8 * 1024, 16 * 1024, 32 * 1024];

/// The mirror must make this operation durable before it acknowledges it as
/// synced (the strict sync level sets it on every operation).
pub const FLAG_DURABLE: u8 = 0x01;
/// Shipped while a resync catches the mirror up: what the operation names
/// may not exist there yet (or may still exist), and the mirror makes it so
/// instead of failing; the resync reconciles the rest.
pub const FLAG_CATCHING_UP: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_DURABLE | FLAG_CATCHING_UP;

/// Frame kinds. Values 1..=31 are replicated operations and carry a sequence
/// number; 32.. are control frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Bind a file id to (filespace, path) for the rest of the session. Body: path.
    Bind = 1,
    /// Create (or truncate to empty) the bound file.
    Create = 2,
    /// Write one block; offset = block number; body = exactly one block.
    WriteBlock = 3,
    /// Append one block at the end; offset = block number; body = one block.
    Extend = 4,
    /// Write bytes of a flat or log file; offset = byte offset.
    WriteAt = 5,
    /// Set the file's length; offset = new length in bytes.
    Truncate = 6,
    /// Remove the file; its id is retired.
    Unlink = 7,
    /// Make everything up to this frame durable (relation file sync).
    Sync = 8,
    /// Make everything up to this frame durable (flat/log file flush).
    Flush = 9,
    /// Create a directory. Body: path.
    Mkdir = 10,
    /// Remove an empty directory. Body: path.
    Rmdir = 11,
    /// Rename a file or directory. Body: source path then destination path; aux = source length.
    Rename = 12,
    /// Resync: make one path on the mirror what it is on the primary (absent,
    /// a file of length `offset`, or a directory, optionally holding nothing
    /// but the listed children). Body: [`ReconcileBody`].
    Reconcile = 13,
    /// Resync, compare mode: hash blocks `offset..offset + aux` of the bound
    /// file as they are after every earlier operation; the mirror answers
    /// with a [`Kind::Hashes`] frame carrying this frame's sequence number.
    HashRequest = 14,
    /// Make every directory changed up to this frame durable (a directory
    /// fsync: no file, no body).
    SyncDirs = 16,
    /// Verification: list the directory named by the body (empty: the
    /// filespace root) as it is after every earlier operation; the mirror
    /// answers with a [`Kind::Listing`] frame carrying this frame's sequence
    /// number. Body: path.
    ListRequest = 15,
    /// Primary → mirror keep-alive; the mirror answers with an [`Kind::Ack`].
    Heartbeat = 32,
    /// Orderly end of the stream: the mirror makes everything durable, acknowledges, closes.
    Shutdown = 33,
    /// Mirror → primary cumulative acknowledgement. Body: received, applied, synced, durable (u64 each).
    Ack = 64,
    /// Mirror → primary: the mirror could not apply `seq`; body: reason. The stream ends.
    Fault = 65,
    /// Mirror → primary: the answer to the HashRequest `seq`; body: one
    /// xxh3-64 (u64) per block, of the block's bytes as read (short or
    /// empty past the end of the file).
    Hashes = 66,
    /// Mirror → primary: the answer to the ListRequest `seq`. Body: [`ListingBody`].
    Listing = 67,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Bind,
            2 => Kind::Create,
            3 => Kind::WriteBlock,
            4 => Kind::Extend,
            5 => Kind::WriteAt,
            6 => Kind::Truncate,
            7 => Kind::Unlink,
            8 => Kind::Sync,
            9 => Kind::Flush,
            10 => Kind::Mkdir,
            11 => Kind::Rmdir,
            12 => Kind::Rename,
            13 => Kind::Reconcile,
            14 => Kind::HashRequest,
            16 => Kind::SyncDirs,
            15 => Kind::ListRequest,
            32 => Kind::Heartbeat,
            33 => Kind::Shutdown,
            64 => Kind::Ack,
            65 => Kind::Fault,
            66 => Kind::Hashes,
            67 => Kind::Listing,
            _ => return None,
        })
    }

    /// Replicated operations take a sequence number; control frames do not.
    pub fn is_operation(self) -> bool {
        (self as u8) < 32
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Bind => "bind",
            Kind::Create => "create",
            Kind::WriteBlock => "write_block",
            Kind::Extend => "extend",
            Kind::WriteAt => "write_at",
            Kind::Truncate => "truncate",
            Kind::Unlink => "unlink",
            Kind::Sync => "sync",
            Kind::Flush => "flush",
            Kind::Mkdir => "mkdir",
            Kind::Rmdir => "rmdir",
            Kind::Rename => "rename",
            Kind::Reconcile => "reconcile",
            Kind::HashRequest => "hash_request",
            Kind::SyncDirs => "sync_dirs",
            Kind::Hashes => "hashes",
            Kind::ListRequest => "list_request",
            Kind::Listing => "listing",
            Kind::Heartbeat => "heartbeat",
            Kind::Shutdown => "shutdown",
            Kind::Ack => "ack",
            Kind::Fault => "fault",
        }
    }
}

/// A decoded, checksum-verified frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u8,
    pub filespace: u16,
    pub body_len: u32,
    pub seq: u64,
    pub file_id: u32,
    pub aux: u32,
    pub offset: u64,
    pub body_hash: u64,
}

impl Header {
    pub fn new(kind: Kind) -> Header {
        Header {
            kind,
            flags: 0,
            filespace: 0,
            body_len: 0,
            seq: 0,
            file_id: 0,
            aux: 0,
            offset: 0,
            body_hash: body_hash(&[]),
        }
    }

    /// Encode, computing the header checksum. `body_len` and `body_hash`
    /// must already describe the body.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.kind as u8;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.filespace.to_le_bytes());
        b[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.file_id.to_le_bytes());
        b[20..24].copy_from_slice(&self.aux.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.body_hash.to_le_bytes());
        let h = xxh3_64(&b[..40]);
        b[40..48].copy_from_slice(&h.to_le_bytes());
        b
    }

    /// Decode and verify a header. Nothing but the checksum is read before
    /// the checksum is known good.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let want = u64::from_le_bytes(le8(&b[40..48]));
        let got = xxh3_64(&b[..40]);
        if want != got {
            return Err(FrameError::HeaderChecksum { want, got });
        }
        let kind = Kind::from_u8(b[0]).ok_or(FrameError::UnknownKind(b[0]))?;
        let flags = b[1];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::UnknownFlags(flags));
        }
        let body_len = u32::from_le_bytes(le4(&b[4..8]));
        if body_len as usize > MAX_BODY {
            return Err(FrameError::BodyTooLong { len: body_len, max: MAX_BODY as u32 });
        }
        Ok(Header {
            kind,
            flags,
            filespace: u16::from_le_bytes([b[2], b[3]]),
            body_len,
            seq: u64::from_le_bytes(le8(&b[8..16])),
            file_id: u32::from_le_bytes(le4(&b[16..20])),
            aux: u32::from_le_bytes(le4(&b[20..24])),
            offset: u64::from_le_bytes(le8(&b[24..32])),
            body_hash: u64::from_le_bytes(le8(&b[32..40])),
        })
    }
}

fn le8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}

fn le4(s: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    a
}

pub fn body_hash(body: &[u8]) -> u64 {
    xxh3_64(body)
}

/// Why a frame was refused. Every variant closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("header checksum mismatch (frame says {want:#018x}, computed {got:#018x})")]
    HeaderChecksum { want: u64, got: u64 },
    #[error("body checksum mismatch (frame says {want:#018x}, computed {got:#018x})")]
    BodyChecksum { want: u64, got: u64 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("body length {len} is over the limit of {max}")]
    BodyTooLong { len: u32, max: u32 },
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated { have: usize, need: usize },
}

/// A whole frame: verified header and verified body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub body: Bytes,
}

impl Frame {
    /// Build a frame, computing the body checksum and length.
    pub fn new(mut header: Header, body: Bytes) -> Frame {
        header.body_len = body.len() as u32;
        header.body_hash = body_hash(&body);
        Frame { header, body }
    }

    /// Header and body as one buffer (tests, control frames).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.body.len());
        v.extend_from_slice(&self.header.encode());
        v.extend_from_slice(&self.body);
        v
    }
}

/// Cumulative acknowledgement carried by [`Kind::Ack`] frames. Each field
/// is "through N": every operation with a sequence number up to N.
/// Always `durable <= synced <= applied <= received`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ack {
    /// Received and validated.
    pub received: u64,
    /// Written to the mirror's files (page cache).
    pub applied: u64,
    /// Every sync/flush frame and every operation flagged durable: its file
    /// (and every changed directory) is durable on the mirror.
    pub synced: u64,
    /// Everything, data and directory entries, is durable on the mirror.
    pub durable: u64,
}

impl Ack {
    pub const BODY_LEN: usize = 32;

    pub fn to_frame(self) -> Frame {
        let mut body = [0u8; Self::BODY_LEN];
        body[0..8].copy_from_slice(&self.received.to_le_bytes());
        body[8..16].copy_from_slice(&self.applied.to_le_bytes());
        body[16..24].copy_from_slice(&self.synced.to_le_bytes());
        body[24..32].copy_from_slice(&self.durable.to_le_bytes());
        Frame::new(Header::new(Kind::Ack), Bytes::copy_from_slice(&body))
    }

    pub fn from_body(body: &[u8]) -> Option<Ack> {
        if body.len() != Self::BODY_LEN {
            return None;
        }
        Some(Ack {
            received: u64::from_le_bytes(le8(&body[0..8])),
            applied: u64::from_le_bytes(le8(&body[8..16])),
            synced: u64::from_le_bytes(le8(&body[16..24])),
            durable: u64::from_le_bytes(le8(&body[24..32])),
        })
    }
}

/// Incremental frame decoder: feed bytes as they arrive, take whole frames.
/// Bodies are split off the receive buffer without copying.
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
    pending: Option<Header>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder { buf: BytesMut::with_capacity(1 << 20), pending: None }
    }

    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let header = match self.pending {
            Some(h) => h,
            None => {
                if self.buf.len() < HEADER_LEN {
                    return Ok(None);
                }
                let mut hb = [0u8; HEADER_LEN];
                hb.copy_from_slice(&self.buf[..HEADER_LEN]);
                let h = Header::decode(&hb)?;
                let _ = self.buf.split_to(HEADER_LEN);
                self.pending = Some(h);
                h
            }
        };
        let need = header.body_len as usize;
        if self.buf.len() < need {
            if self.buf.capacity() < need {
                self.buf.reserve(need - self.buf.len());
            }
            return Ok(None);
        }
        let body = self.buf.split_to(need).freeze();
        self.pending = None;
        let got = body_hash(&body);
        if got != header.body_hash {
            return Err(FrameError::BodyChecksum { want: header.body_hash, got });
        }
        Ok(Some(Frame { header, body }))
    }

    /// Call at end of stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.pending {
            Some(h) => {
                Err(FrameError::Truncated { have: HEADER_LEN + self.buf.len(), need: HEADER_LEN + h.body_len as usize })
            }
            None if !self.buf.is_empty() => Err(FrameError::Truncated { have: self.buf.len(), need: HEADER_LEN }),
            None => Ok(()),
        }
    }
}

/// Most blocks one HashRequest may name.
pub const MAX_HASH_BLOCKS: u32 = 1024;

/// What a [`Kind::Reconcile`] frame makes a path into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReconcileEntry {
    /// Nothing there: remove whatever is (a whole tree for a directory).
    Absent,
    /// A regular file of the frame's length (contents follow as writes).
    File,
    /// A directory; with `keep`, any child not listed (or of another kind)
    /// is removed.
    Dir { keep: Option<Vec<(String, ChildKind)>> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChildKind {
    File = 1,
    Dir = 2,
}

/// The body of a [`Kind::Reconcile`] frame: entry u8 (0 absent, 1 file,
/// 2 directory, 3 directory holding only the listed children), path length
/// u16 (0: the filespace root, directories only), path, then for entry 3
/// the children: kind u8 (1 file, 2 directory), name length u16, name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileBody {
    pub entry: ReconcileEntry,
    /// Raw path bytes (validated by the receiver); empty for the root.
    pub path: Vec<u8>,
}

impl ReconcileBody {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(3 + self.path.len());
        b.push(match &self.entry {
            ReconcileEntry::Absent => 0,
            ReconcileEntry::File => 1,
            ReconcileEntry::Dir { keep: None } => 2,
            ReconcileEntry::Dir { keep: Some(_) } => 3,
        });
        b.extend_from_slice(&(self.path.len() as u16).to_le_bytes());
        b.extend_from_slice(&self.path);
        if let ReconcileEntry::Dir { keep: Some(children) } = &self.entry {
            for (name, kind) in children {
                b.push(*kind as u8);
                b.extend_from_slice(&(name.len() as u16).to_le_bytes());
                b.extend_from_slice(name.as_bytes());
            }
        }
        b
    }

    /// Decode; every length is checked against the body. Names are checked
    /// for being single valid components by the receiver.
    pub fn decode(b: &[u8]) -> Result<ReconcileBody, String> {
        if b.len() < 3 {
            return Err(format!("a {}-byte body is shorter than 3", b.len()));
        }
        let plen = u16::from_le_bytes([b[1], b[2]]) as usize;
        let path = b.get(3..3 + plen).ok_or("the path runs past the body")?.to_vec();
        let mut rest = &b[3 + plen..];
        let entry = match b[0] {
            0..=2 if !rest.is_empty() => return Err("trailing bytes after the path".into()),
            0 => ReconcileEntry::Absent,
            1 => ReconcileEntry::File,
            2 => ReconcileEntry::Dir { keep: None },
            3 => {
                let mut keep = Vec::new();
                while !rest.is_empty() {
                    if rest.len() < 3 {
                        return Err("a cut child entry".into());
                    }
                    let kind = match rest[0] {
                        1 => ChildKind::File,
                        2 => ChildKind::Dir,
                        k => return Err(format!("child kind {k}")),
                    };
                    let n = u16::from_le_bytes([rest[1], rest[2]]) as usize;
                    let name = rest.get(3..3 + n).ok_or("a child name runs past the body")?;
                    let name = std::str::from_utf8(name).map_err(|_| "a child name is not UTF-8")?;
                    keep.push((name.to_string(), kind));
                    rest = &rest[3 + n..];
                }
                ReconcileEntry::Dir { keep: Some(keep) }
            }
            e => return Err(format!("entry type {e}")),
        };
        if path.is_empty() && !matches!(entry, ReconcileEntry::Dir { .. }) {
            return Err("only a directory may name the filespace root".into());
        }
        Ok(ReconcileBody { entry, path })
    }
}

/// What a path is, in a [`Kind::Listing`] answer (and each of its children).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListedKind {
    Absent = 0,
    File = 1,
    Dir = 2,
    /// Neither a regular file nor a directory (a symlink, a socket…).
    Other = 3,
}

impl ListedKind {
    fn from_u8(v: u8) -> Option<ListedKind> {
        Some(match v {
            0 => ListedKind::Absent,
            1 => ListedKind::File,
            2 => ListedKind::Dir,
            3 => ListedKind::Other,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ListedKind::Absent => "absent",
            ListedKind::File => "file",
            ListedKind::Dir => "directory",
            ListedKind::Other => "other",
        }
    }
}

/// Bytes of a [`ListingBody`] before its children.
pub const LISTING_FIXED: usize = 14;

/// The body of a [`Kind::Listing`] frame: entry u8 (what the listed path
/// is), complete u8 (1: every child follows), others u32 (children that are
/// neither files nor directories), hash u64 ([`listing_hash`] of the files
/// and directories), then children in name order as far as they fit one
/// body: kind u8 (1 file, 2 directory, 3 other), name length u16, name.
/// A directory too large to list whole is still compared by its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListingBody {
    pub entry: ListedKind,
    pub complete: bool,
    pub others: u32,
    pub hash: u64,
    pub children: Vec<(String, ListedKind)>,
}

/// xxh3 over the files and directories of a listing (kind u8, name length
/// u16, name, in the order given: by name); other entries do not count.
/// Both sides compute it the same way, so equal hashes mean equal listings.
pub fn listing_hash<'a>(children: impl IntoIterator<Item = (&'a str, ListedKind)>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (name, kind) in children {
        if matches!(kind, ListedKind::File | ListedKind::Dir) {
            h.update(&[kind as u8]);
            h.update(&(name.len() as u16).to_le_bytes());
            h.update(name.as_bytes());
        }
    }
    h.digest()
}

/// A child name as a listing carries it: 1..=255 bytes, no `/` or NUL, not `.` or `..`.
fn listing_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= crate::protocol::path::MAX_COMPONENT_BYTES
        && n != "."
        && n != ".."
        && !n.contains(['/', '\0'])
}

impl ListingBody {
    /// The listing of a path: every child (sorted by name) for its hash,
    /// as many as fit in one body for the names.
    pub fn build(entry: ListedKind, children: &[(String, ListedKind)]) -> ListingBody {
        let hash = listing_hash(children.iter().map(|(n, k)| (n.as_str(), *k)));
        let others = children.iter().filter(|(_, k)| *k == ListedKind::Other).count() as u32;
        let mut size = LISTING_FIXED;
        let mut listed = Vec::new();
        for (name, kind) in children {
            // A name the file system gave lossily may be longer; never more than a component.
            let mut n = name.as_str();
            while n.len() > crate::protocol::path::MAX_COMPONENT_BYTES {
                let mut cut = crate::protocol::path::MAX_COMPONENT_BYTES;
                while !n.is_char_boundary(cut) {
                    cut -= 1;
                }
                n = &n[..cut];
            }
            if size + 3 + n.len() > MAX_BODY {
                break;
            }
            size += 3 + n.len();
            listed.push((n.to_string(), *kind));
        }
        ListingBody { entry, complete: listed.len() == children.len(), others, hash, children: listed }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LISTING_FIXED + self.children.iter().map(|(n, _)| 3 + n.len()).sum::<usize>());
        b.push(self.entry as u8);
        b.push(self.complete as u8);
        b.extend_from_slice(&self.others.to_le_bytes());
        b.extend_from_slice(&self.hash.to_le_bytes());
        for (name, kind) in &self.children {
            b.push(*kind as u8);
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        b
    }

    /// Decode; every length and kind is checked, and every name must be one
    /// plausible component (the primary prints them).
    pub fn decode(b: &[u8]) -> Result<ListingBody, String> {
        if b.len() < LISTING_FIXED {
            return Err(format!("a {}-byte listing is shorter than {LISTING_FIXED}", b.len()));
        }
        let entry = ListedKind::from_u8(b[0]).ok_or_else(|| format!("entry type {}", b[0]))?;
        let complete = match b[1] {
            0 => false,
            1 => true,
            c => return Err(format!("complete flag {c}")),
        };
        let others = u32::from_le_bytes(le4(&b[2..6]));
        let hash = u64::from_le_bytes(le8(&b[6..14]));
        let mut rest = &b[LISTING_FIXED..];
        let mut children = Vec::new();
        while !rest.is_empty() {
            if rest.len() < 3 {
                return Err("a cut child entry".into());
            }
            let kind = match ListedKind::from_u8(rest[0]) {
                Some(k) if k != ListedKind::Absent => k,
                _ => return Err(format!("child kind {}", rest[0])),
            };
            let n = u16::from_le_bytes([rest[1], rest[2]]) as usize;
            let name = rest.get(3..3 + n).ok_or("a child name runs past the body")?;
            let name = std::str::from_utf8(name).map_err(|_| "a child name is not UTF-8")?;
            if !listing_name_ok(name) {
                return Err(format!("child name {name:?} is not one path component"));
            }
            children.push((name.to_string(), kind));
            rest = &rest[3 + n..];
        }
        if entry != ListedKind::Dir && (!children.is_empty() || others != 0) {
            return Err(format!("a {} has children", entry.name()));
        }
        Ok(ListingBody { entry, complete, others, hash, children })
    }
}

#[cfg(test)]
mod tests;
