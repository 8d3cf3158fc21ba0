//! Where the mount sends changes: the segment's storage API, either in this
//! process (the segment serves the mount itself: `filerep segment --mount`,
//! no hop between processes) or over the segment's client socket (a
//! separate `filerep mount`). Both answer with the client API's errors, so
//! the errno mapping is one table (`docs/mount.md`).

use super::inodes::Term;
use super::pool::Pool;
use crate::cluster::client::{ClientError, ErrorClass};
use crate::cluster::storage::Storage;

/// The changes the file system makes; every one replicated or
/// change-tracked by the segment before it returns.
pub(crate) trait Changes: Send + Sync + 'static {
    fn create(&self, fs: u16, path: &str) -> Result<(), ClientError>;
    fn write_block(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError>;
    fn extend(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError>;
    fn write_at(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError>;
    /// A write and the sync of its file after it; one call where the
    /// segment is in this process (one round trip to the mirror), two
    /// over the client socket.
    fn write_at_and_sync(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.write_at(fs, path, offset, data)?;
        self.sync(fs, path)
    }
    fn set_len(&self, fs: u16, path: &str, len: u64) -> Result<(), ClientError>;
    fn mkdir(&self, fs: u16, path: &str) -> Result<(), ClientError>;
    fn unlink(&self, fs: u16, path: &str) -> Result<(), ClientError>;
    fn rmdir(&self, fs: u16, path: &str) -> Result<(), ClientError>;
    fn rename(&self, fs: u16, from: &str, to: &str) -> Result<(), ClientError>;
    fn sync(&self, fs: u16, path: &str) -> Result<(), ClientError>;
    fn sync_dir(&self, fs: u16, dir: &str) -> Result<(), ClientError>;
    /// The term the files are in (`inodes.rs`): while it stays `In(n)`,
    /// nothing but changes made through this trait touch them.
    fn term(&self) -> Term {
        Term::Unknown
    }
}

impl Changes for Pool {
    fn create(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.call(|c| c.create(fs, path))
    }
    fn write_block(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError> {
        self.call(|c| c.write_block(fs, path, block, data))
    }
    fn extend(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError> {
        self.call(|c| c.extend(fs, path, block, data))
    }
    fn write_at(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.call(|c| c.write_at(fs, path, offset, data))
    }
    fn set_len(&self, fs: u16, path: &str, len: u64) -> Result<(), ClientError> {
        self.call(|c| c.set_len(fs, path, len))
    }
    fn mkdir(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.call(|c| c.mkdir(fs, path))
    }
    fn unlink(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.call(|c| c.unlink(fs, path))
    }
    fn rmdir(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.call(|c| c.rmdir(fs, path))
    }
    fn rename(&self, fs: u16, from: &str, to: &str) -> Result<(), ClientError> {
        self.call(|c| c.rename(fs, from, to))
    }
    fn sync(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        self.call(|c| c.sync(fs, path))
    }
    fn sync_dir(&self, fs: u16, dir: &str) -> Result<(), ClientError> {
        self.call(|c| c.sync_dir(fs, dir))
    }
}

/// An engine error as the client socket would have answered it.
fn as_client(r: crate::Result<()>) -> Result<(), ClientError> {
    r.map_err(|e| ClientError::Call { class: ErrorClass::of(&e), message: e.to_string() })
}

impl Changes for Storage {
    fn create(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        as_client(Storage::create(self, fs, path))
    }
    fn write_block(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError> {
        as_client(Storage::write_block(self, fs, path, block, data))
    }
    fn extend(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<(), ClientError> {
        as_client(Storage::extend(self, fs, path, block, data))
    }
    fn write_at(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        as_client(Storage::write_at(self, fs, path, offset, data))
    }
    fn write_at_and_sync(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        as_client(Storage::write_at_and_flush(self, fs, path, offset, data))
    }
    fn set_len(&self, fs: u16, path: &str, len: u64) -> Result<(), ClientError> {
        as_client(Storage::set_len(self, fs, path, len))
    }
    fn mkdir(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        as_client(Storage::mkdir(self, fs, path))
    }
    fn unlink(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        as_client(Storage::unlink(self, fs, path))
    }
    fn rmdir(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        as_client(Storage::rmdir(self, fs, path))
    }
    fn rename(&self, fs: u16, from: &str, to: &str) -> Result<(), ClientError> {
        as_client(Storage::rename(self, fs, from, to))
    }
    fn sync(&self, fs: u16, path: &str) -> Result<(), ClientError> {
        as_client(Storage::sync(self, fs, path))
    }
    fn sync_dir(&self, fs: u16, dir: &str) -> Result<(), ClientError> {
        as_client(Storage::sync_dir(self, fs, dir))
    }
    /// The segment's term as the acting primary: a mirror's applier or a
    /// resync changes its files only between terms.
    fn term(&self) -> Term {
        match self.primary_term() {
            Some(n) => Term::In(n),
            None => Term::Between,
        }
    }
}
