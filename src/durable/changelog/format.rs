//! The change-log's bytes on disk (docs/changelog.md): the file header, a
//! group's header and checksum, and the records a group's payload holds,
//! encoded here and decoded by replay (`replay.rs`).

use crate::io::disk::FsPath;
use xxhash_rust::xxh3::xxh3_64;

pub const FILE_MAGIC: [u8; 4] = *b"FRCL";
pub const GROUP_MAGIC: [u8; 4] = *b"FRCG";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 24;
pub const GROUP_HEADER_LEN: usize = 24;
/// Largest group payload (a torn or hostile length is refused before use).
pub const MAX_GROUP: usize = 16 << 20;
pub(super) const REC_FILE: u8 = 1;
pub(super) const REC_BLOCKS: u8 = 2;
pub(super) const REC_TOUCHED: u8 = 3;
pub(super) const REC_EXTENT: u8 = 4;
/// A resync's progress: these blocks (and extents wholly inside) no longer differ.
pub(super) const REC_CLEARED: u8 = 5;
/// A resync's progress: this path's namespace state no longer differs.
pub(super) const REC_CLEARED_PATH: u8 = 6;

/// Encodes records into a payload, remembering where each record starts so
/// the payload can be split into groups of at most [`MAX_GROUP`] bytes.
#[derive(Default)]
pub(super) struct Encoder {
    // Read by the tests (a payload split into groups joins back whole).
    pub(super) buf: Vec<u8>,
    starts: Vec<usize>,
}

impl Encoder {
    pub(super) fn start(&mut self) {
        self.starts.push(self.buf.len());
    }

    /// The payload as consecutive groups numbered from `first`, split at
    /// record boundaries; returns the bytes and the number of groups.
    pub(super) fn groups(&self, first: u64) -> (Vec<u8>, u64) {
        let mut out = Vec::with_capacity(self.buf.len() + GROUP_HEADER_LEN);
        let (mut n, mut begin, mut prev) = (0u64, 0usize, 0usize);
        for end in self.starts.iter().skip(1).copied().chain(std::iter::once(self.buf.len())) {
            if end - begin > MAX_GROUP && prev > begin {
                out.extend(group_bytes(first + n, &self.buf[begin..prev]));
                n += 1;
                begin = prev;
            }
            prev = end;
        }
        if prev > begin {
            out.extend(group_bytes(first + n, &self.buf[begin..prev]));
            n += 1;
        }
        (out, n)
    }

    pub(super) fn file(&mut self, no: u32, p: &FsPath) {
        self.start();
        let path = p.path.as_str().as_bytes();
        self.buf.push(REC_FILE);
        self.buf.extend_from_slice(&no.to_le_bytes());
        self.buf.extend_from_slice(&p.filespace.to_le_bytes());
        self.buf.extend_from_slice(&(path.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(path);
    }

    pub(super) fn blocks(&mut self, no: u32, first: u64, count: u32) {
        self.start();
        self.buf.push(REC_BLOCKS);
        self.buf.extend_from_slice(&no.to_le_bytes());
        self.buf.extend_from_slice(&first.to_le_bytes());
        self.buf.extend_from_slice(&count.to_le_bytes());
    }

    pub(super) fn extent(&mut self, no: u32, extent: u64) {
        self.start();
        self.buf.push(REC_EXTENT);
        self.buf.extend_from_slice(&no.to_le_bytes());
        self.buf.extend_from_slice(&extent.to_le_bytes());
    }

    pub(super) fn cleared(&mut self, no: u32, first: u64, count: u32) {
        self.start();
        self.buf.push(REC_CLEARED);
        self.buf.extend_from_slice(&no.to_le_bytes());
        self.buf.extend_from_slice(&first.to_le_bytes());
        self.buf.extend_from_slice(&count.to_le_bytes());
    }

    pub(super) fn cleared_path(&mut self, p: &FsPath) {
        self.start();
        let path = p.path.as_str().as_bytes();
        self.buf.push(REC_CLEARED_PATH);
        self.buf.extend_from_slice(&p.filespace.to_le_bytes());
        self.buf.push(0);
        self.buf.extend_from_slice(&(path.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(path);
    }

    pub(super) fn touched(&mut self, p: &FsPath, subtree: bool) {
        self.start();
        let path = p.path.as_str().as_bytes();
        self.buf.push(REC_TOUCHED);
        self.buf.extend_from_slice(&p.filespace.to_le_bytes());
        self.buf.push(subtree as u8);
        self.buf.extend_from_slice(&(path.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(path);
    }
}

pub(super) fn group_bytes(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut g = Vec::with_capacity(GROUP_HEADER_LEN + payload.len());
    g.extend_from_slice(&GROUP_MAGIC);
    g.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    g.extend_from_slice(&seq.to_le_bytes());
    g.extend_from_slice(&xxh3_64(payload).to_le_bytes());
    g.extend_from_slice(payload);
    g
}

pub(super) fn file_header(block_size: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&FILE_MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&block_size.to_le_bytes());
    let sum = xxh3_64(&h[..16]);
    h[16..24].copy_from_slice(&sum.to_le_bytes());
    h
}
