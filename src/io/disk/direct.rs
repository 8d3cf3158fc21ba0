//! O_DIRECT writes for the NVMe path (`direct` disks): block data goes to
//! the device without the page cache, from buffers aligned to
//! [`DIRECT_ALIGN`]. A caller's buffer that is not aligned is copied into
//! a per-thread aligned buffer first (made once, reused: no allocation per
//! write). Writes whose offset or length is not aligned (log appends,
//! tails) go through the file's buffered descriptor instead: Linux keeps
//! the two coherent (a direct write writes back and drops the page cache's
//! pages of its range first).
//!
//! Durability is unchanged: O_DIRECT skips the page cache, not the
//! device's write cache, so a sync is still an `fdatasync` (on either
//! descriptor: it acts on the file).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// Offsets, lengths and buffer addresses of direct writes are multiples of
/// this: the largest logical block size of the devices we expect (4 KiB
/// sectors), a multiple of every smaller one.
pub const DIRECT_ALIGN: usize = 4096;
/// The most bytes one direct write copies through the aligned buffer at a
/// time (the buffer's size).
const BOUNCE: usize = 1 << 20;

thread_local! {
    /// This thread's aligned copy of what a direct write sends (`BOUNCE` bytes once used).
    static BOUNCE_BUF: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
}

/// A buffer whose bytes start on a [`DIRECT_ALIGN`] boundary, for direct
/// writes: a window found inside a larger allocation, so no unsafe
/// allocation code is needed. It moves only when it grows (what it held is
/// then not kept), so pointers into it stay valid while it is borrowed.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes, aligned.
    pub fn new(len: usize) -> AlignedBuf {
        let mut b = AlignedBuf::default();
        b.set_len(len);
        b
    }

    /// Make the buffer `len` bytes long, growing the allocation only if it
    /// must (then every byte is zero).
    pub fn set_len(&mut self, len: usize) {
        if self.raw.len() < len + DIRECT_ALIGN {
            self.raw = vec![0u8; len + DIRECT_ALIGN];
            // For a byte pointer the offset is always found; `min` only keeps
            // the window inside the allocation whatever it answers.
            self.start = self.raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        }
        self.len = len;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// A second descriptor on the file behind `file`, with O_DIRECT: reopened
/// through `/proc/self/fd`, so it is the same inode whatever happened to
/// its path since.
pub fn reopen_direct(file: &File) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Whether a write of `len` bytes at `offset` can go direct.
pub fn aligned(offset: u64, len: usize) -> bool {
    len > 0 && offset % DIRECT_ALIGN as u64 == 0 && len % DIRECT_ALIGN == 0
}

/// Whether `buf` starts on a [`DIRECT_ALIGN`] boundary (usable as it is).
pub fn is_aligned_ptr(buf: &[u8]) -> bool {
    (buf.as_ptr() as usize) % DIRECT_ALIGN == 0
}

/// Write all of `buf` at `offset` through `direct` (both aligned, see
/// [`aligned`]); a short write's unaligned rest goes through `buffered`.
pub fn write_all(direct: &File, buffered: &File, mut offset: u64, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = if is_aligned_ptr(buf) {
            write_some(direct, offset, buf)?
        } else {
            BOUNCE_BUF.with(|cell| -> io::Result<usize> {
                let mut bounce = cell.borrow_mut();
                if bounce.len() < BOUNCE {
                    bounce.set_len(BOUNCE);
                }
                let len = buf.len().min(BOUNCE);
                let window = &mut bounce.as_mut_slice()[..len];
                window.copy_from_slice(&buf[..len]);
                write_some(direct, offset, window)
            })?
        };
        buf = &buf[n..];
        offset += n as u64;
        if !buf.is_empty() && !aligned(offset, buf.len()) {
            // A short direct write that stopped off alignment: the rest the ordinary way.
            return buffered.write_all_at(buf, offset);
        }
    }
    Ok(())
}

/// One `pwrite` through the direct descriptor, retried on EINTR; never 0.
fn write_some(direct: &File, offset: u64, buf: &[u8]) -> io::Result<usize> {
    loop {
        match direct.write_at(buf, offset) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "direct write returned 0 bytes")),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn aligned_unaligned_and_short_writes_all_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f =
            File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("f")).expect("f");
        let d = reopen_direct(&f).expect("O_DIRECT on this file system");
        // An unaligned buffer (one byte into a vector) of aligned length at an aligned offset: bounced.
        let backing: Vec<u8> = (0..(3 * DIRECT_ALIGN + 1)).map(|i| (i % 251) as u8).collect();
        let unaligned = &backing[1..];
        assert!(!is_aligned_ptr(unaligned) || is_aligned_ptr(&backing));
        write_all(&d, &f, DIRECT_ALIGN as u64, &unaligned[..2 * DIRECT_ALIGN]).expect("bounced write");
        // Larger than the bounce buffer: written in windows.
        let big: Vec<u8> = (0..(BOUNCE + 2 * DIRECT_ALIGN)).map(|i| (i % 241) as u8).collect();
        let at = 8 * DIRECT_ALIGN as u64;
        write_all(&d, &f, at, &big).expect("big write");
        let mut back = vec![0u8; 2 * DIRECT_ALIGN];
        f.read_exact_at(&mut back, DIRECT_ALIGN as u64).expect("read");
        assert_eq!(back, &unaligned[..2 * DIRECT_ALIGN]);
        let mut back = vec![0u8; big.len()];
        f.read_exact_at(&mut back, at).expect("read");
        assert_eq!(back, big);
        assert!(aligned(0, DIRECT_ALIGN) && !aligned(1, DIRECT_ALIGN) && !aligned(0, 100) && !aligned(0, 0));
    }

    /// Aligned at every length; it moves only when it grows.
    #[test]
    fn an_aligned_buffer_stays_aligned_and_moves_only_to_grow() {
        let mut b = AlignedBuf::default();
        assert!(b.is_empty() && b.as_slice().is_empty());
        b.set_len(3 * DIRECT_ALIGN);
        assert!(is_aligned_ptr(b.as_slice()) && b.len() == 3 * DIRECT_ALIGN);
        b.as_mut_slice().fill(7);
        let at = b.as_slice().as_ptr();
        b.set_len(DIRECT_ALIGN);
        b.set_len(2 * DIRECT_ALIGN);
        assert_eq!(b.as_slice().as_ptr(), at, "within its allocation it stays");
        assert!(b.as_slice().iter().all(|&x| x == 7), "and keeps its bytes");
        b.set_len(8 * DIRECT_ALIGN);
        assert!(is_aligned_ptr(b.as_slice()) && b.as_slice().iter().all(|&x| x == 0));
        assert!(is_aligned_ptr(AlignedBuf::new(100).as_slice()));
    }
}
