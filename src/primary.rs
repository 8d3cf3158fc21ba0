//! The storage layer on the primary: the API the host calls for every file
//! change. Each call does its local I/O and ships the change to the mirror
//! in one ordered stream, then returns when its sync level is met.
//!
//! Threads: callers (any number), one sender that drains the bounded frame
//! queue into large vectored socket writes, one receiver that reads the
//! mirror's cumulative acknowledgements and wakes every caller at or below
//! them. The only lock every mutating call takes is the queue lock, held
//! for a sequence number and a push; per-file and per-block stripes order
//! calls that touch the same file or block, so local and mirror order agree.

use crate::config::{check_block_size, check_filespaces, Filespace, PairIdentity, StreamTuning, SyncLevel};
use crate::core::primary::{PrimaryStream, TimerAction};
use crate::disk::{Disk, DiskError, DiskFile, FsPath, OpenMode};
use crate::error::{Error, Result};
use crate::net::{is_timeout, recv_exact, Conn, ConnReader, ConnWriter};
use crate::path::RelPath;
use crate::protocol::handshake::{self, ClusterKey, Hello, Status};
use crate::protocol::{body_hash, Ack, Decoder, Header, Kind, FLAG_DURABLE, HEADER_LEN, MAX_WRITE_AT};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const FILE_STRIPES: usize = 256;
const BLOCK_STRIPES: usize = 4096;
const CACHE_SHARDS: usize = 64;
const MAX_CACHED_PER_SHARD: usize = 64;
/// Frames the sender gathers into one vectored write.
const MAX_BATCH_FRAMES: usize = 512;
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Everything the primary needs to start.
#[derive(Clone, Debug)]
pub struct PrimaryConfig {
    pub identity: PairIdentity,
    pub filespaces: Vec<Filespace>,
    pub key: ClusterKey,
    pub sync_level: SyncLevel,
    pub tuning: StreamTuning,
    /// Use io_uring for local I/O when the kernel offers it.
    pub prefer_uring: bool,
}

/// Counters for reports and monitoring.
#[derive(Debug, Default)]
pub struct Stats {
    pub operations: AtomicU64,
    pub payload_bytes: AtomicU64,
    pub frames_sent: AtomicU64,
    pub wire_bytes_sent: AtomicU64,
    pub batches_sent: AtomicU64,
}

/// A plain copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StatsSnapshot {
    pub operations: u64,
    pub payload_bytes: u64,
    pub frames_sent: u64,
    pub wire_bytes_sent: u64,
    pub batches_sent: u64,
    pub acked_applied: u64,
    pub acked_durable: u64,
}

enum Out {
    Frame { header: [u8; HEADER_LEN], body: Bytes },
}

struct Queue {
    stream: PrimaryStream,
    tx: Sender<Out>,
}

struct Marks {
    ack: Ack,
    lost: Option<String>,
}

struct Inner {
    identity: PairIdentity,
    level: SyncLevel,
    disk: Arc<dyn Disk>,
    filespaces: Vec<Filespace>,
    queue: Mutex<Queue>,
    marks: Mutex<Marks>,
    marks_cv: Condvar,
    file_stripes: Vec<RwLock<()>>,
    block_stripes: Vec<Mutex<()>>,
    /// Taken for writing by directory operations and renames, for reading
    /// when a file is opened: the open-file cache never serves a stale path.
    namespace: RwLock<()>,
    cache: Vec<Mutex<HashMap<FsPath, Arc<dyn DiskFile>>>>,
    faulted: Mutex<Option<String>>,
    stats: Stats,
    epoch: Instant,
}

/// The primary side of a pair. Cheap to share: wrap it in an `Arc` and call
/// from as many threads as you like.
pub struct Primary {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn stripe_of<H: Hash>(h: &H, n: usize) -> usize {
    let mut s = std::collections::hash_map::DefaultHasher::new();
    h.hash(&mut s);
    (s.finish() as usize) % n
}

impl Primary {
    /// Open the local filespaces, handshake with the mirror over `conn`, and
    /// start the sender and receiver threads.
    pub fn start(cfg: PrimaryConfig, conn: Conn, peer: &str) -> Result<Primary> {
        check_block_size(cfg.identity.block_size)?;
        check_filespaces(&cfg.filespaces)?;
        let roots: Vec<_> = cfg.filespaces.iter().map(|f| f.root.clone()).collect();
        let disk = crate::disk::open_local(&roots, cfg.prefer_uring)?;
        Self::start_with_disk(cfg, disk, conn, peer)
    }

    pub fn start_with_disk(cfg: PrimaryConfig, disk: Arc<dyn Disk>, conn: Conn, peer: &str) -> Result<Primary> {
        let (mut reader, mut writer) = conn;
        let start_seq = 1;
        client_handshake(&cfg, start_seq, reader.as_mut(), writer.as_mut(), peer)?;
        let tuning = cfg.tuning.clone();
        let (tx, rx) = crossbeam_channel::bounded(tuning.queue_frames.max(1));
        let epoch = Instant::now();
        let inner = Arc::new(Inner {
            identity: cfg.identity.clone(),
            level: cfg.sync_level,
            disk,
            filespaces: cfg.filespaces.clone(),
            queue: Mutex::new(Queue {
                stream: PrimaryStream::new(
                    start_seq,
                    0,
                    tuning.heartbeat.as_millis() as u64,
                    tuning.ack_timeout.as_millis() as u64,
                ),
                tx,
            }),
            marks: Mutex::new(Marks { ack: Ack::default(), lost: None }),
            marks_cv: Condvar::new(),
            file_stripes: (0..FILE_STRIPES).map(|_| RwLock::new(())).collect(),
            block_stripes: (0..BLOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            namespace: RwLock::new(()),
            cache: (0..CACHE_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            faulted: Mutex::new(None),
            stats: Stats::default(),
            epoch,
        });
        tracing::info!(peer, content = cfg.identity.content_id, generation = cfg.identity.generation,
            backend = inner.disk.name(), level = %cfg.sync_level.name(), "primary streaming to mirror");
        let s_inner = inner.clone();
        let sender = std::thread::Builder::new()
            .name("filerep-sender".into())
            .spawn(move || sender_loop(s_inner, rx, writer))
            .map_err(|e| Error::io("spawning the sender thread", e))?;
        let r_inner = inner.clone();
        reader
            .set_timeout(Some(tuning.heartbeat))
            .map_err(|e| Error::io("setting the receive timeout", e))?;
        let receiver = std::thread::Builder::new()
            .name("filerep-receiver".into())
            .spawn(move || receiver_loop(r_inner, reader))
            .map_err(|e| Error::io("spawning the receiver thread", e))?;
        Ok(Primary { inner, threads: Mutex::new(vec![sender, receiver]) })
    }

    pub fn block_size(&self) -> u32 {
        self.inner.identity.block_size
    }

    pub fn filespaces(&self) -> &[Filespace] {
        &self.inner.filespaces
    }

    pub fn sync_level(&self) -> SyncLevel {
        self.inner.level
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        let ack = lock(&self.inner.marks).ack;
        StatsSnapshot {
            operations: s.operations.load(Ordering::Relaxed),
            payload_bytes: s.payload_bytes.load(Ordering::Relaxed),
            frames_sent: s.frames_sent.load(Ordering::Relaxed),
            wire_bytes_sent: s.wire_bytes_sent.load(Ordering::Relaxed),
            batches_sent: s.batches_sent.load(Ordering::Relaxed),
            acked_applied: ack.applied,
            acked_durable: ack.durable,
        }
    }

    /// Why the mirror was lost, if it was.
    pub fn mirror_lost(&self) -> Option<String> {
        lock(&self.inner.marks).lost.clone()
    }

    fn fspath(&self, fs: u16, path: &str) -> Result<FsPath> {
        if fs as usize >= self.inner.filespaces.len() {
            return Err(Error::InvalidArgument(format!(
                "filespace {fs} does not exist (this segment has {})",
                self.inner.filespaces.len()
            )));
        }
        Ok(FsPath::new(fs, RelPath::new(path)?))
    }

    fn check_block(&self, data_len: usize) -> Result<()> {
        let bs = self.inner.identity.block_size as usize;
        if data_len != bs {
            return Err(Error::InvalidArgument(format!("a block is {bs} bytes; {data_len} given")));
        }
        Ok(())
    }

    // ---- relation files -------------------------------------------------

    /// Create a relation (or flat) file. Fails if it exists.
    pub fn create(&self, fs: u16, path: &str) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.inner.usable()?;
        let _f = self.inner.file_stripe(&p).write().unwrap_or_else(|e| e.into_inner());
        let seq = {
            let _ns = self.inner.namespace.read().unwrap_or_else(|e| e.into_inner());
            let file = self.inner.disk.open(&p, OpenMode::CreateNew)?;
            self.inner.cache_put(&p, file);
            self.inner.ship(&p, Header::new(Kind::Create), Bytes::new(), 0)?
        };
        self.inner.wait_namespace(seq)
    }

    /// Write one block (an evicted dirty buffer).
    pub fn write_block(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.check_block(data.len())?;
        self.write_block_at(&p, Kind::WriteBlock, block, data, false)
    }

    /// Append one block: `block` must equal the current number of blocks.
    pub fn extend(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.check_block(data.len())?;
        self.write_block_at(&p, Kind::Extend, block, data, true)
    }

    fn write_block_at(&self, p: &FsPath, kind: Kind, block: u64, data: &[u8], extend: bool) -> Result<()> {
        let inner = &self.inner;
        inner.usable()?;
        let bs = inner.identity.block_size as u64;
        let offset = block
            .checked_mul(bs)
            .filter(|o| o + bs <= crate::protocol::MAX_FILE_BYTES)
            .ok_or_else(|| Error::InvalidArgument(format!("block {block} is beyond the largest file")))?;
        // Extends of one file serialize on its stripe so that "block == nblocks" holds.
        let file_guard = inner.file_stripe(p);
        let (_shared, _exclusive);
        if extend {
            _exclusive = Some(file_guard.write().unwrap_or_else(|e| e.into_inner()));
            _shared = None;
        } else {
            _shared = Some(file_guard.read().unwrap_or_else(|e| e.into_inner()));
            _exclusive = None;
        }
        let _b = lock(&inner.block_stripes[stripe_of(&(p, block), BLOCK_STRIPES)]);
        let file = inner.file(p)?;
        if extend {
            let n = file.len()? / bs;
            if block != n {
                return Err(Error::InvalidArgument(format!("extend of {p} at block {block}: the file has {n} blocks")));
            }
        }
        let mut h = Header::new(kind);
        h.offset = block;
        let seq = inner.ship(p, h, Bytes::copy_from_slice(data), data.len())?;
        // The frame is on its way; the local write overlaps the network.
        if let Err(e) = file.write_at(offset, data) {
            return Err(inner.fault(format!("local write of {p} block {block} failed: {e}")));
        }
        drop(_b);
        inner.wait_level(seq)
    }

    /// Read one block. A block past the end of the file is an error.
    pub fn read_block(&self, fs: u16, path: &str, block: u64, buf: &mut [u8]) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.check_block(buf.len())?;
        let file = self.inner.file(&p)?;
        let offset = block
            .checked_mul(self.inner.identity.block_size as u64)
            .ok_or_else(|| Error::InvalidArgument(format!("block {block} is beyond the largest file")))?;
        let n = file.read_at(offset, buf)?;
        if n != buf.len() {
            return Err(Error::InvalidArgument(format!("block {block} of {p} is past the end of the file")));
        }
        Ok(())
    }

    /// Number of whole blocks in a relation file.
    pub fn nblocks(&self, fs: u16, path: &str) -> Result<u64> {
        let p = self.fspath(fs, path)?;
        Ok(self.inner.file(&p)?.len()? / self.inner.identity.block_size as u64)
    }

    /// Truncate a relation file to `nblocks` blocks.
    pub fn truncate(&self, fs: u16, path: &str, nblocks: u64) -> Result<()> {
        let len = nblocks
            .checked_mul(self.inner.identity.block_size as u64)
            .filter(|l| *l <= crate::protocol::MAX_FILE_BYTES)
            .ok_or_else(|| Error::InvalidArgument(format!("{nblocks} blocks is beyond the largest file")))?;
        self.set_len(fs, path, len)
    }

    /// Set a flat file's length in bytes.
    pub fn set_len(&self, fs: u16, path: &str, len: u64) -> Result<()> {
        let p = self.fspath(fs, path)?;
        if len > crate::protocol::MAX_FILE_BYTES {
            return Err(Error::InvalidArgument(format!("length {len} is beyond the largest file")));
        }
        let inner = &self.inner;
        inner.usable()?;
        let _f = inner.file_stripe(&p).write().unwrap_or_else(|e| e.into_inner());
        let file = inner.file(&p)?;
        if let Err(e) = file.set_len(len) {
            return Err(inner.fault(format!("local truncate of {p} failed: {e}")));
        }
        let mut h = Header::new(Kind::Truncate);
        h.offset = len;
        let seq = inner.ship(&p, h, Bytes::new(), 0)?;
        drop(_f);
        inner.wait_namespace(seq)
    }

    /// Remove a file.
    pub fn unlink(&self, fs: u16, path: &str) -> Result<()> {
        let p = self.fspath(fs, path)?;
        let inner = &self.inner;
        inner.usable()?;
        let _f = inner.file_stripe(&p).write().unwrap_or_else(|e| e.into_inner());
        let seq = {
            let _ns = inner.namespace.read().unwrap_or_else(|e| e.into_inner());
            inner.disk.remove_file(&p)?;
            inner.cache_remove_under(&p);
            let seq = inner.ship(&p, Header::new(Kind::Unlink), Bytes::new(), 0)?;
            lock(&inner.queue).stream.unbind(&p);
            seq
        };
        inner.wait_namespace(seq)
    }

    /// Make a relation file durable on both sides.
    pub fn sync(&self, fs: u16, path: &str) -> Result<()> {
        self.durable_point(fs, path, Kind::Sync)
    }

    // ---- flat and log files ---------------------------------------------

    /// Write bytes at an offset of a flat or log file (at most 256 KiB a call).
    pub fn write_at(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        let p = self.fspath(fs, path)?;
        if data.is_empty() || data.len() > MAX_WRITE_AT {
            return Err(Error::InvalidArgument(format!(
                "write_at takes 1 to {MAX_WRITE_AT} bytes; {} given",
                data.len()
            )));
        }
        if offset.checked_add(data.len() as u64).is_none_or(|e| e > crate::protocol::MAX_FILE_BYTES) {
            return Err(Error::InvalidArgument(format!("offset {offset} is beyond the largest file")));
        }
        let inner = &self.inner;
        inner.usable()?;
        let _f = inner.file_stripe(&p).read().unwrap_or_else(|e| e.into_inner());
        // Byte ranges of one file may overlap: order them per file.
        let _b = lock(&inner.block_stripes[stripe_of(&p, BLOCK_STRIPES)]);
        let file = inner.file(&p)?;
        let mut h = Header::new(Kind::WriteAt);
        h.offset = offset;
        let seq = inner.ship(&p, h, Bytes::copy_from_slice(data), data.len())?;
        if let Err(e) = file.write_at(offset, data) {
            return Err(inner.fault(format!("local write of {p} at {offset} failed: {e}")));
        }
        drop(_b);
        inner.wait_level(seq)
    }

    /// Make a flat or log file durable on both sides.
    pub fn flush(&self, fs: u16, path: &str) -> Result<()> {
        self.durable_point(fs, path, Kind::Flush)
    }

    /// Length of a flat file in bytes.
    pub fn len(&self, fs: u16, path: &str) -> Result<u64> {
        let p = self.fspath(fs, path)?;
        Ok(self.inner.file(&p)?.len()?)
    }

    fn durable_point(&self, fs: u16, path: &str, kind: Kind) -> Result<()> {
        let p = self.fspath(fs, path)?;
        let inner = &self.inner;
        inner.usable()?;
        let file = inner.file(&p)?;
        let seq = inner.ship(&p, Header::new(kind), Bytes::new(), 0)?;
        // The mirror syncs while we do: the caller waits for the slower.
        if let Err(e) = file.sync_data() {
            return Err(inner.fault(format!("local fdatasync of {p} failed: {e}; nothing written to it is durable")));
        }
        inner.wait_for(seq, |a| a.durable)
    }

    // ---- filespace operations -------------------------------------------

    pub fn mkdir(&self, fs: u16, path: &str) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.dir_op(&p, Kind::Mkdir, |d| d.create_dir(&p))
    }

    pub fn rmdir(&self, fs: u16, path: &str) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.dir_op(&p, Kind::Rmdir, |d| d.remove_dir(&p))
    }

    fn dir_op(&self, p: &FsPath, kind: Kind, local: impl FnOnce(&dyn Disk) -> Result<(), DiskError>) -> Result<()> {
        let inner = &self.inner;
        inner.usable()?;
        let seq = {
            let _ns = inner.namespace.write().unwrap_or_else(|e| e.into_inner());
            local(inner.disk.as_ref())?;
            let mut h = Header::new(kind);
            h.filespace = p.filespace;
            inner.ship_unbound(h, Bytes::copy_from_slice(p.path.as_str().as_bytes()))?
        };
        inner.wait_namespace(seq)
    }

    /// Rename a file or directory within a filespace (atomic, replaces a file at `to`).
    pub fn rename(&self, fs: u16, from: &str, to: &str) -> Result<()> {
        let from = self.fspath(fs, from)?;
        let to = self.fspath(fs, to)?;
        if to.path.is_within(&from.path) {
            return Err(Error::InvalidArgument(format!("cannot move {from} into itself ({to})")));
        }
        let inner = &self.inner;
        inner.usable()?;
        let (a, b) = {
            let (x, y) = (stripe_of(&from, FILE_STRIPES), stripe_of(&to, FILE_STRIPES));
            (x.min(y), x.max(y))
        };
        let _ga = inner.file_stripes[a].write().unwrap_or_else(|e| e.into_inner());
        let _gb = (a != b).then(|| inner.file_stripes[b].write().unwrap_or_else(|e| e.into_inner()));
        let seq = {
            let _ns = inner.namespace.write().unwrap_or_else(|e| e.into_inner());
            inner.disk.rename(&from, &to)?;
            inner.cache_remove_under(&from);
            inner.cache_remove_under(&to);
            let mut h = Header::new(Kind::Rename);
            h.filespace = fs;
            h.aux = from.path.as_str().len() as u32;
            let mut body = Vec::with_capacity(from.path.as_str().len() + to.path.as_str().len());
            body.extend_from_slice(from.path.as_str().as_bytes());
            body.extend_from_slice(to.path.as_str().as_bytes());
            let body = Bytes::from(body);
            h.body_len = body.len() as u32;
            h.body_hash = body_hash(&body);
            let mut q = lock(&inner.queue);
            let seq = inner.push_locked(&mut q, h, body)?;
            q.stream.rebind(&from, &to);
            seq
        };
        inner.wait_namespace(seq)
    }

    /// Whether a file or directory exists on the primary.
    pub fn exists(&self, fs: u16, path: &str) -> Result<bool> {
        let p = self.fspath(fs, path)?;
        Ok(self.inner.disk.exists(&p)?)
    }

    /// Orderly end: the mirror makes everything durable and acknowledges,
    /// then both sides close. Returns the last sequence number shipped.
    pub fn shutdown(&self, timeout: Duration) -> Result<u64> {
        let inner = &self.inner;
        let last = {
            let q = lock(&inner.queue);
            let last = q.stream.last_seq();
            let mut h = Header::new(Kind::Shutdown);
            h.offset = last;
            let _ = q.tx.send(Out::Frame { header: h.encode(), body: Bytes::new() });
            last
        };
        let result = inner.wait_timeout(last, timeout);
        inner.stop("shut down");
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        result.map(|_| last)
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.inner.stop("primary dropped");
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn file_stripe(&self, p: &FsPath) -> &RwLock<()> {
        &self.file_stripes[stripe_of(p, FILE_STRIPES)]
    }

    fn usable(&self) -> Result<()> {
        if let Some(f) = lock(&self.faulted).clone() {
            return Err(Error::Faulted(f));
        }
        if let Some(l) = lock(&self.marks).lost.clone() {
            return Err(Error::MirrorLost(l));
        }
        Ok(())
    }

    /// Rule 8: after a local write or fsync failure nothing is reported durable.
    fn fault(&self, reason: String) -> Error {
        tracing::error!(%reason, "segment faulted");
        let mut f = lock(&self.faulted);
        if f.is_none() {
            *f = Some(reason.clone());
        }
        Error::Faulted(reason)
    }

    fn file(&self, p: &FsPath) -> Result<Arc<dyn DiskFile>> {
        let shard = &self.cache[stripe_of(p, CACHE_SHARDS)];
        if let Some(f) = lock(shard).get(p) {
            return Ok(f.clone());
        }
        let _ns = self.namespace.read().unwrap_or_else(|e| e.into_inner());
        let f = self.disk.open(p, OpenMode::Existing)?;
        self.cache_put(p, f.clone());
        Ok(f)
    }

    fn cache_put(&self, p: &FsPath, f: Arc<dyn DiskFile>) {
        let mut shard = lock(&self.cache[stripe_of(p, CACHE_SHARDS)]);
        if shard.len() >= MAX_CACHED_PER_SHARD {
            shard.clear();
        }
        shard.insert(p.clone(), f);
    }

    /// Forget cached handles at or under `p` (after unlink or rename).
    fn cache_remove_under(&self, p: &FsPath) {
        for shard in &self.cache {
            lock(shard).retain(|k, _| !(k.filespace == p.filespace && k.path.is_within(&p.path)));
        }
    }

    /// Assign a sequence number (binding the file first if needed) and queue
    /// the frame. The body checksum is computed before the lock is taken.
    fn ship(&self, p: &FsPath, mut h: Header, body: Bytes, payload: usize) -> Result<u64> {
        h.filespace = p.filespace;
        h.body_len = body.len() as u32;
        h.body_hash = body_hash(&body);
        if self.level == SyncLevel::Durable && matches!(h.kind, Kind::WriteBlock | Kind::Extend | Kind::WriteAt) {
            h.flags |= FLAG_DURABLE;
        }
        let mut q = lock(&self.queue);
        let (id, bind) = q.stream.bind(p).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if let Some((bh, path)) = bind {
            // A path is a few bytes: hashing it under the lock costs little.
            let path = Bytes::from(path);
            let mut bh = bh;
            bh.body_len = path.len() as u32;
            bh.body_hash = body_hash(&path);
            self.send_locked(&q, bh, path)?;
        }
        h.file_id = id;
        let seq = self.push_locked(&mut q, h, body)?;
        self.stats.operations.fetch_add(1, Ordering::Relaxed);
        self.stats.payload_bytes.fetch_add(payload as u64, Ordering::Relaxed);
        Ok(seq)
    }

    fn ship_unbound(&self, mut h: Header, body: Bytes) -> Result<u64> {
        h.body_len = body.len() as u32;
        h.body_hash = body_hash(&body);
        let mut q = lock(&self.queue);
        self.push_locked(&mut q, h, body)
    }

    /// `h` must already carry the body's length and checksum.
    fn push_locked(&self, q: &mut Queue, h: Header, body: Bytes) -> Result<u64> {
        let h = q.stream.operation(h);
        q.stream.on_sent(self.now_ms());
        self.send_locked(q, h, body)?;
        Ok(h.seq)
    }

    fn send_locked(&self, q: &Queue, h: Header, body: Bytes) -> Result<()> {
        // Blocking here while full is the backpressure: callers queue behind.
        q.tx.send(Out::Frame { header: h.encode(), body })
            .map_err(|_| Error::MirrorLost(self.lost_reason()))
    }

    fn lost_reason(&self) -> String {
        lock(&self.marks).lost.clone().unwrap_or_else(|| "the sender stopped".into())
    }

    fn wait_level(&self, seq: u64) -> Result<()> {
        match self.level {
            SyncLevel::Applied => self.wait_for(seq, |a| a.applied),
            SyncLevel::Durable => self.wait_for(seq, |a| a.durable),
            SyncLevel::Async { window } => self.wait_for(seq.saturating_sub(window), |a| a.applied),
        }
    }

    /// File operations wait for the mirror to apply them at every level:
    /// they are rare and a later write depends on them.
    fn wait_namespace(&self, seq: u64) -> Result<()> {
        match self.level {
            SyncLevel::Durable => self.wait_for(seq, |a| a.durable),
            _ => self.wait_for(seq, |a| a.applied),
        }
    }

    fn wait_for(&self, seq: u64, mark: impl Fn(&Ack) -> u64) -> Result<()> {
        let mut m = lock(&self.marks);
        loop {
            if mark(&m.ack) >= seq {
                return Ok(());
            }
            if let Some(l) = &m.lost {
                return Err(Error::MirrorLost(l.clone()));
            }
            m = self.marks_cv.wait(m).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn wait_timeout(&self, seq: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut m = lock(&self.marks);
        loop {
            if m.ack.durable >= seq {
                return Ok(());
            }
            if let Some(l) = &m.lost {
                return Err(Error::MirrorLost(l.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::MirrorLost(format!("no durable acknowledgement of {seq} within {timeout:?}")));
            }
            m = self.marks_cv.wait_timeout(m, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn lose(&self, reason: String) {
        let mut m = lock(&self.marks);
        if m.lost.is_none() {
            tracing::warn!(%reason, "mirror lost");
            m.lost = Some(reason);
        }
        drop(m);
        self.marks_cv.notify_all();
    }

    /// End the stream on purpose: the threads see it and close the connection.
    fn stop(&self, why: &str) {
        let mut m = lock(&self.marks);
        if m.lost.is_none() {
            tracing::info!(why, "stream closed");
            m.lost = Some(why.to_string());
        }
        drop(m);
        self.marks_cv.notify_all();
    }
}

fn sender_loop(inner: Arc<Inner>, rx: Receiver<Out>, mut writer: Box<dyn ConnWriter>) {
    let mut batch: Vec<Out> = Vec::with_capacity(MAX_BATCH_FRAMES);
    loop {
        // Wake now and then to notice a lost stream even when idle.
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(f) => f,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if lock(&inner.marks).lost.is_some() {
                    break;
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        batch.push(first);
        let mut bytes = 0usize;
        while batch.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(f) => {
                    let Out::Frame { body, .. } = &f;
                    bytes += HEADER_LEN + body.len();
                    batch.push(f);
                }
                Err(_) => break,
            }
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
        let mut wire = 0u64;
        for Out::Frame { header, body } in &batch {
            slices.push(IoSlice::new(header));
            wire += HEADER_LEN as u64;
            if !body.is_empty() {
                slices.push(IoSlice::new(body));
                wire += body.len() as u64;
            }
        }
        let r = writer.send_all(&slices);
        drop(slices);
        let frames = batch.len() as u64;
        batch.clear();
        if let Err(e) = r {
            tracing::warn!(error = %e, "send to mirror failed");
            inner.lose(format!("send failed: {e}"));
            break;
        }
        inner.stats.frames_sent.fetch_add(frames, Ordering::Relaxed);
        inner.stats.wire_bytes_sent.fetch_add(wire, Ordering::Relaxed);
        inner.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
        if lock(&inner.marks).lost.is_some() {
            break;
        }
    }
    writer.close();
}

fn receiver_loop(inner: Arc<Inner>, mut reader: Box<dyn ConnReader>) {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let reason = loop {
        if let Some(l) = lock(&inner.marks).lost.clone() {
            break l;
        }
        let n = match reader.recv(&mut buf) {
            Ok(0) => break "the mirror closed the connection".to_string(),
            Ok(n) => n,
            Err(e) if is_timeout(&e) => 0,
            Err(e) => break format!("receive failed: {e}"),
        };
        dec.feed(&buf[..n]);
        let mut stop = None;
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => match f.header.kind {
                    Kind::Ack => {
                        let Some(ack) = Ack::from_body(&f.body) else {
                            stop = Some("malformed acknowledgement".to_string());
                            break;
                        };
                        let now = inner.now_ms();
                        let r = lock(&inner.queue).stream.on_ack(ack, now);
                        match r {
                            Ok(a) => {
                                lock(&inner.marks).ack = a;
                                inner.marks_cv.notify_all();
                            }
                            Err(e) => {
                                stop = Some(format!("protocol violation: {e}"));
                                break;
                            }
                        }
                    }
                    Kind::Fault => {
                        stop = Some(format!(
                            "the mirror could not apply #{}: {}",
                            f.header.seq,
                            String::from_utf8_lossy(&f.body)
                        ));
                        break;
                    }
                    other => {
                        stop = Some(format!("unexpected {} frame from the mirror", other.name()));
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    stop = Some(format!("bad frame from the mirror: {e}"));
                    break;
                }
            }
        }
        if let Some(s) = stop {
            break s;
        }
        let now = inner.now_ms();
        let action = {
            let mut q = lock(&inner.queue);
            let a = q.stream.on_tick(now);
            if a == TimerAction::SendHeartbeat {
                let mut h = Header::new(Kind::Heartbeat);
                h.offset = q.stream.last_seq();
                let _ = q.tx.try_send(Out::Frame { header: h.encode(), body: Bytes::new() });
            }
            a
        };
        if let TimerAction::MirrorSilent { silent_ms } = action {
            break format!("no acknowledgement for {silent_ms} ms");
        }
    };
    inner.lose(reason);
}

/// Run the primary's side of the handshake.
fn client_handshake(
    cfg: &PrimaryConfig,
    start_seq: u64,
    reader: &mut dyn ConnReader,
    writer: &mut dyn ConnWriter,
    peer: &str,
) -> Result<()> {
    let hs_err = |source| Error::Handshake { peer: peer.to_string(), source };
    let io_err = |e: std::io::Error| Error::io(format!("handshake with {peer}"), e);
    reader.set_timeout(Some(cfg.tuning.handshake_timeout)).map_err(io_err)?;
    let mut client_nonce = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut client_nonce);
    let hello = Hello {
        cluster_id: cfg.identity.cluster_id,
        content_id: cfg.identity.content_id,
        block_size: cfg.identity.block_size,
        generation: cfg.identity.generation,
        start_seq,
        client_nonce,
        filespaces: cfg.filespaces.iter().map(|f| f.name.clone()).collect(),
    };
    let hello_bytes = hello.encode();
    writer.send_all(&[IoSlice::new(&hello_bytes)]).map_err(io_err)?;
    let challenge = read_message(reader).map_err(io_err)?;
    let challenge = handshake::Challenge::decode(&challenge).map_err(hs_err)?;
    let proof = cfg.key.primary_proof(handshake::payload(&hello_bytes), &client_nonce, &challenge.server_nonce);
    writer
        .send_all(&[IoSlice::new(&handshake::Proof { proof }.encode())])
        .map_err(io_err)?;
    let verdict = read_message(reader).map_err(io_err)?;
    let verdict = handshake::Verdict::decode(&verdict).map_err(hs_err)?;
    if verdict.status != Status::Accepted {
        return Err(Error::Refused { peer: peer.to_string(), status: verdict.status, reason: verdict.reason });
    }
    let expect = cfg.key.mirror_proof(handshake::payload(&hello_bytes), &client_nonce, &challenge.server_nonce);
    if !handshake::proofs_equal(&expect, &verdict.mirror_proof) {
        return Err(hs_err(handshake::HandshakeError::Malformed(
            "the mirror did not prove it holds the cluster key".into(),
        )));
    }
    Ok(())
}

/// Read one length-prefixed handshake message; returns it without the prefix.
pub fn read_message(reader: &mut dyn ConnReader) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv_exact(reader, &mut len)?;
    let n = u32::from_le_bytes(len) as usize;
    if n > handshake::MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("handshake message of {n} bytes is over the limit of {}", handshake::MAX_MESSAGE),
        ));
    }
    let mut msg = vec![0u8; n];
    recv_exact(reader, &mut msg)?;
    Ok(msg)
}
