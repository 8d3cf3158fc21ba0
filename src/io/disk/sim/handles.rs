//! Open handles on the simulated disk: a file (refers to its inode, like a
//! descriptor) and a directory (its `sync_data` makes its entries durable).
//! Both fail once the disk crashed after they were opened.

use super::{apply_write, lock, take, DirId, FileRef, PendingWrite, Shared, MAX_SIM_FILE_BYTES};
use crate::io::disk::{DiskError, DiskErrorKind, DiskFile, DiskResult};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// An open simulated file: refers to the file inode, like a descriptor.
pub struct SimFile {
    pub(super) shared: Arc<Shared>,
    pub(super) data: FileRef,
    pub(super) path: String,
    pub(super) epoch: u64,
}

impl std::fmt::Debug for SimFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFile").field("path", &self.path).field("epoch", &self.epoch).finish()
    }
}

impl SimFile {
    fn check_epoch(&self, op: &'static str) -> DiskResult<()> {
        if self.shared.epoch.load(Ordering::SeqCst) == self.epoch {
            Ok(())
        } else {
            Err(DiskError::new(op, &self.path, DiskErrorKind::Io, "EBADF: handle opened before a crash"))
        }
    }

    /// Fail with NoSpace if the file would grow past the simulator's limit.
    fn check_size(&self, op: &'static str, end: Option<u64>) -> DiskResult<()> {
        match end {
            Some(end) if end <= MAX_SIM_FILE_BYTES => Ok(()),
            _ => Err(DiskError::new(op, &self.path, DiskErrorKind::NoSpace, "over the simulated file size limit")),
        }
    }
}

impl DiskFile for SimFile {
    fn start_writeback(&self) {
        self.shared.writebacks_started.fetch_add(1, Ordering::Relaxed);
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> DiskResult<()> {
        const OP: &str = "write";
        self.check_epoch(OP)?;
        {
            let mut faults = lock(&self.shared.faults);
            if take(&mut faults.fail_writes) {
                return Err(DiskError::new(OP, &self.path, DiskErrorKind::Io, "injected write failure"));
            }
            if take(&mut faults.no_space) {
                return Err(DiskError::new(OP, &self.path, DiskErrorKind::NoSpace, "injected ENOSPC"));
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.check_size(OP, offset.checked_add(buf.len() as u64))?;
        let mut data = lock(&self.data);
        apply_write(&mut data.live, offset, buf);
        data.rewritten(offset, offset + buf.len() as u64);
        let seq = self.shared.write_seq.fetch_add(1, Ordering::SeqCst);
        data.last_write = Some(PendingWrite { seq, offset, data: buf.to_vec() });
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> DiskResult<usize> {
        self.check_epoch("read")?;
        let data = lock(&self.data);
        let len = data.live.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let start = offset as usize;
        let n = buf.len().min(data.live.len() - start);
        buf[..n].copy_from_slice(&data.live[start..start + n]);
        Ok(n)
    }

    fn sync_data(&self) -> DiskResult<()> {
        const OP: &str = "sync_data";
        self.check_epoch(OP)?;
        if take(&mut lock(&self.shared.faults).fail_syncs) {
            lock(&self.data).lose_unsynced();
            return Err(DiskError::new(OP, &self.path, DiskErrorKind::Io, "injected sync failure"));
        }
        let mut data = lock(&self.data);
        data.make_durable();
        data.last_write = None;
        Ok(())
    }

    fn set_len(&self, len: u64) -> DiskResult<()> {
        const OP: &str = "set_len";
        self.check_epoch(OP)?;
        self.check_size(OP, Some(len))?;
        let mut data = lock(&self.data);
        if len > data.live.len() as u64 && take(&mut lock(&self.shared.faults).no_space) {
            return Err(DiskError::new(OP, &self.path, DiskErrorKind::NoSpace, "injected ENOSPC"));
        }
        data.live.resize(len as usize, 0);
        data.rewritten(len, u64::MAX);
        Ok(())
    }

    fn len(&self) -> DiskResult<u64> {
        self.check_epoch("len")?;
        Ok(lock(&self.data).live.len() as u64)
    }
}

/// An open simulated directory: `sync_data` makes its entries durable.
pub struct SimDirHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) dir_id: DirId,
    pub(super) path: String,
    pub(super) epoch: u64,
}

impl std::fmt::Debug for SimDirHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDirHandle").field("path", &self.path).field("dir", &self.dir_id).finish()
    }
}

impl SimDirHandle {
    fn not_a_file(&self, op: &'static str) -> DiskError {
        DiskError::new(op, &self.path, DiskErrorKind::Io, "EISDIR: a directory handle")
    }
}

impl DiskFile for SimDirHandle {
    fn write_at(&self, _offset: u64, _buf: &[u8]) -> DiskResult<()> {
        Err(self.not_a_file("write"))
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> DiskResult<usize> {
        Err(self.not_a_file("read"))
    }
    fn sync_data(&self) -> DiskResult<()> {
        const OP: &str = "sync_dir";
        if self.shared.epoch.load(Ordering::SeqCst) != self.epoch {
            return Err(DiskError::new(OP, &self.path, DiskErrorKind::Io, "EBADF: handle opened before a crash"));
        }
        if take(&mut lock(&self.shared.faults).fail_syncs) {
            return Err(DiskError::new(OP, &self.path, DiskErrorKind::Io, "injected sync failure"));
        }
        let mut ns = lock(&self.shared.ns);
        // A removed directory has nothing left to make durable.
        ns.sync_dir(self.dir_id);
        Ok(())
    }
    fn set_len(&self, _len: u64) -> DiskResult<()> {
        Err(self.not_a_file("set_len"))
    }
    fn len(&self) -> DiskResult<u64> {
        Err(self.not_a_file("len"))
    }
}
