//! How the file system's writes and creates become calls to the segment:
//! one whole aligned block as a block write (an extend for the next
//! block), anything else as byte writes, a failure after some progress as a short
//! write; an `O_CREAT` that finds the file opens it.

use super::errno::io_errno;
use super::fs::FilerepFs;
use crate::cluster::client::ErrorClass;
use crate::protocol::MAX_WRITE_AT;
use fuser::Errno;

impl FilerepFs {
    /// Whether a write of `len` bytes at `offset` is whole aligned blocks.
    pub(super) fn whole_blocks(&self, offset: u64, len: usize) -> bool {
        offset % self.bs == 0 && len as u64 % self.bs == 0
    }

    /// Write through the segment (a write not held, `held.rs`). One whole
    /// aligned block is a block write (an extend when the block is the
    /// next one); anything else, several blocks too, byte writes of at
    /// most the API's limit: one call (one round trip to the mirror) each,
    /// not one a block. A failure after some progress is a short write,
    /// as POSIX has it.
    pub(super) fn write_through(
        &self,
        path: &str,
        offset: u64,
        data: &[u8],
        local_len: impl FnOnce() -> std::io::Result<u64>,
    ) -> Result<usize, Errno> {
        let fs = self.fs;
        let mut done = 0usize;
        let result = if self.whole_blocks(offset, data.len()) && data.len() as u64 == self.bs {
            let b = offset / self.bs;
            let len = local_len().map_err(|e| io_errno(&e))?;
            let call = if len == offset {
                self.changes.extend(fs, path, b, data).or_else(|e| match e.class() {
                    // Another writer extended first (a write-back racing
                    // a write): the block is no longer the next one.
                    Some(ErrorClass::Invalid) => self.changes.write_block(fs, path, b, data),
                    _ => Err(e),
                })
            } else {
                self.changes.write_block(fs, path, b, data)
            };
            call.map(|()| done = data.len()).map_err(|e| ("write_block", e))
        } else {
            let mut r = Ok(());
            for chunk in data.chunks(MAX_WRITE_AT) {
                let at = offset + done as u64;
                if let Err(e) = self.changes.write_at(fs, path, at, chunk) {
                    r = Err(("write_at", e));
                    break;
                }
                done += chunk.len();
            }
            r
        };
        match result {
            Ok(()) => Ok(done),
            Err((op, e)) => {
                let errno = self.failed(op, path, &e);
                if done > 0 {
                    Ok(done)
                } else {
                    Err(errno)
                }
            }
        }
    }

    pub(super) fn create_file(&self, path: &str, exclusive: bool, truncate: bool) -> Result<(), Errno> {
        let fs = self.fs;
        match self.changes.create(fs, path) {
            Ok(()) => {}
            // O_CREAT without O_EXCL: someone created it first; open theirs.
            Err(e) if e.class() == Some(ErrorClass::Exists) && !exclusive => {
                if truncate {
                    self.changes.set_len(fs, path, 0).map_err(|e| self.failed("set_len", path, &e))?;
                }
            }
            Err(e) => return Err(self.failed("create", path, &e)),
        }
        Ok(())
    }
}
