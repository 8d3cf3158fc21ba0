//! The storage layer on the primary: the API the host calls for every file
//! change. Each call does its local I/O and ships the change to the mirror
//! in one ordered stream, then returns when its sync level is met.
//!
//! The rules live in [`crate::core::primary::Engine`]; this module checks
//! the caller's arguments, runs the engine's commands on threads
//! ([`exec`]), and turns its replies into results.

mod exec;
mod reader;
mod steps;

pub use crate::core::primary::{Decision, Mode, ReplicationStats};
pub use crate::exec::primary::LocalEntry;
pub(crate) use steps::HashTicket;

use crate::config::{check_block_size, check_filespaces, Filespace, PairIdentity, StreamTuning, SyncLevel};
use crate::core::primary::{EngineConfig, Op, Reply, Wait};
use crate::durable::changelog::ChangeLog;
use crate::error::{Error, Result};
use crate::exec::primary::error_of;
use crate::io::disk::{Disk, DiskError, DiskErrorKind, EntryKind, FsPath};
use crate::io::net::{recv_exact_until, Conn, ConnReader, ConnWriter};
use crate::protocol::handshake::{self, ClusterKey, Hello, Status};
use crate::protocol::path::RelPath;
use crate::protocol::{body_hash, HEADER_LEN, MAX_WRITE_AT};
use crate::runtime::arbiter::Arbiter;
use bytes::Bytes;
use exec::{lock, Extras, Runtime};
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    /// Aligned block writes with O_DIRECT (the NVMe path; durability unchanged).
    pub direct: bool,
    /// What to do when the mirror is lost. `None`: calls fail (`MirrorLost`).
    pub change_tracking: Option<ChangeTracking>,
}

/// Change tracking: when the mirror is lost, ask the arbiter; if it marks
/// the mirror down, record every change the mirror has not durably
/// acknowledged in the change-log and go on alone (brief rules 3 and 4).
#[derive(Clone)]
pub struct ChangeTracking {
    pub changelog: Arc<ChangeLog>,
    pub arbiter: Arc<dyn Arbiter>,
    /// How long to wait for the arbiter before failing calls.
    pub decision_timeout: Duration,
}

impl std::fmt::Debug for ChangeTracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeTracking").field("decision_timeout", &self.decision_timeout).finish()
    }
}

/// A plain copy of the primary's counters.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StatsSnapshot {
    pub operations: u64,
    pub payload_bytes: u64,
    pub frames_sent: u64,
    pub wire_bytes_sent: u64,
    pub batches_sent: u64,
    pub acked_applied: u64,
    pub acked_durable: u64,
    /// Waits a call ended by reading the mirror's answer itself, being the
    /// only call in progress (`reader.rs`), on the current connection.
    pub answers_read_by_callers: u64,
}

/// The primary side of a pair. Cheap to share: wrap it in an `Arc` and call
/// from as many threads as you like.
pub struct Primary {
    rt: Arc<Runtime>,
    config: PrimaryConfig,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn engine_config(cfg: &PrimaryConfig) -> EngineConfig {
    EngineConfig {
        block_size: cfg.identity.block_size,
        filespaces: cfg.filespaces.len() as u16,
        level: cfg.sync_level,
        tracking: cfg.change_tracking.is_some(),
        heartbeat_ms: cfg.tuning.heartbeat.as_millis() as u64,
        ack_timeout_ms: cfg.tuning.ack_timeout.as_millis() as u64,
        max_pending_bytes: cfg.tuning.queue_frames.max(1) * (HEADER_LEN + 32 * 1024),
        activity_limit: cfg.tuning.activity_limit,
        planted: crate::core::planted_in_process(),
    }
}

impl Primary {
    /// Open the local filespaces, handshake with the mirror over `conn`, and
    /// start the receiver.
    pub fn start(cfg: PrimaryConfig, conn: Conn, peer: &str) -> Result<Primary> {
        check_block_size(cfg.identity.block_size)?;
        check_filespaces(&cfg.filespaces)?;
        let roots: Vec<_> = cfg.filespaces.iter().map(|f| f.root.clone()).collect();
        let disk = crate::io::disk::open_local_with(&roots, cfg.prefer_uring, cfg.direct)?;
        crate::io::disk::check_largest_file(&roots)?;
        Self::start_with_disk(cfg, disk, conn, peer)
    }

    pub fn start_with_disk(cfg: PrimaryConfig, disk: Arc<dyn Disk>, conn: Conn, peer: &str) -> Result<Primary> {
        let (mut reader, mut writer) = conn;
        client_handshake(&cfg, 1, reader.as_mut(), writer.as_mut(), peer)?;
        let closer = writer.clone_writer().map_err(|e| Error::io("cloning the connection", e))?;
        // A mirror that stops reading must not hold a sending caller (or the
        // heartbeat) forever: a send that cannot finish in time loses the mirror.
        writer.set_send_timeout(Some(cfg.tuning.ack_timeout)).map_err(|e| Error::io("setting the send timeout", e))?;
        reader.set_timeout(Some(cfg.tuning.heartbeat)).map_err(|e| Error::io("setting the receive timeout", e))?;
        tracing::info!(peer, content = cfg.identity.content_id, generation = cfg.identity.generation,
            level = %cfg.sync_level.name(), "primary streaming to mirror");
        let p = Self::launch(cfg, disk, writer, closer, None)?;
        p.start_receiver(reader, 0)?;
        Ok(p)
    }

    /// Start with no mirror, in change tracking from the first call: a
    /// mirror promoted by the arbiter, or a primary whose mirror the
    /// arbiter has marked down. Every change goes to the change-log.
    pub fn start_alone(cfg: PrimaryConfig, disk: Arc<dyn Disk>, why: &str) -> Result<Primary> {
        if cfg.change_tracking.is_none() {
            return Err(Error::InvalidArgument("a primary without a mirror needs change tracking".into()));
        }
        // A pipe nobody reads: nothing is ever sent on it.
        let ((_r, writer), _other) = crate::io::net::mem_pair(1, 1);
        let closer = writer.clone_writer().map_err(|e| Error::io("cloning the connection", e))?;
        tracing::warn!(
            content = cfg.identity.content_id,
            generation = cfg.identity.generation,
            why,
            "primary starting alone: change tracking"
        );
        Self::launch(cfg, disk, writer, closer, Some(why.to_string()))
    }

    fn launch(
        cfg: PrimaryConfig,
        disk: Arc<dyn Disk>,
        writer: Box<dyn ConnWriter>,
        closer: Box<dyn ConnWriter>,
        alone: Option<String>,
    ) -> Result<Primary> {
        // Files an earlier fault left in doubt are rewritten first: the
        // sync below cannot write pages a failed write-back let go.
        if let Some(t) = &cfg.change_tracking {
            crate::exec::doubt::settle_in_doubt(disk.as_ref(), &t.changelog, crate::core::planted_in_process())?;
        }
        // What an earlier process left in the page cache becomes durable
        // before anything is cleared on the strength of it.
        let synced = crate::io::disk::sync_tree(disk.as_ref(), cfg.filespaces.len() as u16)?;
        tracing::debug!(entries = synced, "primary: the data directories are durable");
        let engine = crate::core::primary::Engine::new(engine_config(&cfg), 0, alone);
        tracing::debug!(backend = disk.name(), "primary local I/O");
        let rt = Arc::new(Runtime::new(
            engine,
            disk,
            cfg.change_tracking.clone(),
            cfg.identity.clone(),
            exec::Conn { epoch: 0, writer },
            closer,
        ));
        let bg = rt.start_background()?;
        Ok(Primary { rt, config: cfg, threads: Mutex::new(vec![bg]) })
    }

    fn start_receiver(&self, reader: Box<dyn ConnReader>, epoch: u64) -> Result<()> {
        let rt = self.rt.clone();
        let link = Arc::new(
            reader::Link::new(reader, epoch, self.config.tuning.heartbeat)
                .map_err(|e| Error::io("making the receiver's nudge pipe", e))?,
        );
        *lock(&self.rt.link) = Some(link.clone());
        let t = std::thread::Builder::new()
            .name("filerep-receiver".into())
            .spawn(move || reader::receiver_loop(rt, link))
            .map_err(|e| Error::io("spawning the receiver thread", e))?;
        lock(&self.threads).push(t);
        Ok(())
    }

    /// Run one engine call on this thread.
    fn run(&self, op: Op, deadline: Option<Instant>, x: &mut Extras) -> Result<Reply> {
        self.rt.call(op, deadline, x).map_err(|f| error_of(f, x))
    }

    fn run_simple(&self, op: Op) -> Result<()> {
        self.run(op, None, &mut Extras::default()).map(|_| ())
    }

    /// The generation this primary streams in.
    pub fn generation(&self) -> u64 {
        self.config.identity.generation
    }

    pub fn block_size(&self) -> u32 {
        self.config.identity.block_size
    }

    pub fn filespaces(&self) -> &[Filespace] {
        &self.config.filespaces
    }

    pub fn sync_level(&self) -> SyncLevel {
        self.config.sync_level
    }

    pub fn stats(&self) -> StatsSnapshot {
        let core = lock(&self.rt.core);
        let c = core.engine.counters();
        let ack = core.engine.acked();
        StatsSnapshot {
            operations: c.operations,
            payload_bytes: c.payload_bytes,
            frames_sent: c.frames_sent,
            wire_bytes_sent: c.wire_bytes_sent,
            batches_sent: c.batches_sent,
            acked_applied: ack.applied,
            acked_durable: ack.durable,
            answers_read_by_callers: lock(&self.rt.link).as_ref().map_or(0, |l| l.leads()),
        }
    }

    /// Replication figures (cheap: the engine's lock for a moment).
    pub fn replication(&self) -> ReplicationStats {
        lock(&self.rt.core).engine.replication()
    }

    /// Where the pair stands.
    pub fn mode(&self) -> Mode {
        lock(&self.rt.core).engine.mode()
    }

    /// Why the mirror was lost, if it was.
    pub fn mirror_lost(&self) -> Option<String> {
        lock(&self.rt.core).engine.mirror_lost()
    }

    /// Failed only because the arbiter could not be asked about a lost
    /// mirror ([`crate::core::primary::Engine::failed_unheard`]).
    pub fn failed_unheard(&self) -> bool {
        lock(&self.rt.core).engine.failed_unheard()
    }

    /// Why this primary faulted (a local write, truncate or sync failed,
    /// rule 8), if it did: it refuses every change from then on.
    pub fn faulted(&self) -> Option<String> {
        lock(&self.rt.core).engine.faulted()
    }

    fn fspath(&self, fs: u16, path: &str) -> Result<FsPath> {
        if fs as usize >= self.config.filespaces.len() {
            return Err(Error::InvalidArgument(format!(
                "filespace {fs} does not exist (this segment has {})",
                self.config.filespaces.len()
            )));
        }
        Ok(FsPath::new(fs, RelPath::new(path)?))
    }

    fn check_block(&self, data_len: usize) -> Result<()> {
        let bs = self.config.identity.block_size as usize;
        if data_len != bs {
            return Err(Error::InvalidArgument(format!("a block is {bs} bytes; {data_len} given")));
        }
        Ok(())
    }

    // ---- relation files -------------------------------------------------

    /// Create a relation (or flat) file. Fails if it exists.
    pub fn create(&self, fs: u16, path: &str) -> Result<()> {
        self.changing(Wait::Level).create(fs, path)
    }

    /// Write one block (an evicted dirty buffer).
    pub fn write_block(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<()> {
        self.changing(Wait::Level).write_block(fs, path, block, data)
    }

    /// Append one block: `block` must equal the current number of blocks.
    pub fn extend(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<()> {
        self.changing(Wait::Level).extend(fs, path, block, data)
    }

    /// Read one block. A block past the end of the file is an error.
    pub fn read_block(&self, fs: u16, path: &str, block: u64, buf: &mut [u8]) -> Result<()> {
        let p = self.fspath(fs, path)?;
        self.check_block(buf.len())?;
        let offset = block
            .checked_mul(self.config.identity.block_size as u64)
            .ok_or_else(|| Error::InvalidArgument(format!("block {block} is beyond the largest file")))?;
        let file = self.rt.exec.file(&p)?;
        let n = file.read_at(offset, buf)?;
        if n != buf.len() {
            return Err(Error::InvalidArgument(format!("block {block} of {p} is past the end of the file")));
        }
        Ok(())
    }

    /// Number of whole blocks in a relation file.
    pub fn nblocks(&self, fs: u16, path: &str) -> Result<u64> {
        let p = self.fspath(fs, path)?;
        Ok(self.rt.exec.file(&p)?.len()? / self.config.identity.block_size as u64)
    }

    /// Truncate a relation file to `nblocks` blocks.
    pub fn truncate(&self, fs: u16, path: &str, nblocks: u64) -> Result<()> {
        self.changing(Wait::Level).truncate(fs, path, nblocks)
    }

    /// Set a flat file's length in bytes.
    pub fn set_len(&self, fs: u16, path: &str, len: u64) -> Result<()> {
        self.changing(Wait::Level).set_len(fs, path, len)
    }

    /// Remove a file.
    pub fn unlink(&self, fs: u16, path: &str) -> Result<()> {
        self.changing(Wait::Level).unlink(fs, path)
    }

    /// Make a relation file durable on both sides.
    pub fn sync(&self, fs: u16, path: &str) -> Result<()> {
        let file = self.fspath(fs, path)?;
        self.run_simple(Op::Sync { file, flush: false })
    }

    // ---- flat and log files ---------------------------------------------

    /// Write bytes at an offset of a flat or log file (at most 256 KiB a call).
    pub fn write_at(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.changing(Wait::Level).write_at(fs, path, offset, data)
    }

    /// `write_at` and then `flush` of the same file, as one call: one
    /// frame and one round trip to the mirror instead of two. Returns when
    /// the bytes are durable on both sides (or, in change tracking, here).
    pub fn write_at_and_flush(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.changing(Wait::Level).write_bytes(fs, path, offset, data, true)
    }

    /// Make a flat or log file durable on both sides.
    pub fn flush(&self, fs: u16, path: &str) -> Result<()> {
        let file = self.fspath(fs, path)?;
        self.run_simple(Op::Sync { file, flush: true })
    }

    /// Make every directory change made before this call (creates,
    /// unlinks, renames, mkdir, rmdir, anywhere in any filespace) durable on
    /// both sides: a directory fsync. `dir` names an existing directory of
    /// filespace `fs` ("" for its root); the engine tracks which directories
    /// changed and syncs all of them, here and on the mirror.
    pub fn sync_dir(&self, fs: u16, dir: &str) -> Result<()> {
        if dir.is_empty() {
            if fs as usize >= self.config.filespaces.len() {
                return Err(Error::InvalidArgument(format!("filespace {fs} does not exist")));
            }
        } else {
            let p = self.fspath(fs, dir)?;
            match self.rt.exec.disk.entry_kind(&p)? {
                Some(EntryKind::Dir) => {}
                Some(_) => return Err(Error::InvalidArgument(format!("{p} is not a directory"))),
                None => {
                    return Err(Error::Disk(DiskError::new(
                        "sync_dir",
                        &p,
                        DiskErrorKind::NotFound,
                        "no such directory",
                    )))
                }
            }
        }
        self.run_simple(Op::SyncDir { fs })
    }

    /// Length of a flat file in bytes.
    pub fn len(&self, fs: u16, path: &str) -> Result<u64> {
        let p = self.fspath(fs, path)?;
        Ok(self.rt.exec.file(&p)?.len()?)
    }

    // ---- filespace operations -------------------------------------------

    pub fn mkdir(&self, fs: u16, path: &str) -> Result<()> {
        self.changing(Wait::Level).mkdir(fs, path)
    }

    pub fn rmdir(&self, fs: u16, path: &str) -> Result<()> {
        self.changing(Wait::Level).rmdir(fs, path)
    }

    /// Rename a file or directory within a filespace (atomic, replaces a file at `to`).
    pub fn rename(&self, fs: u16, from: &str, to: &str) -> Result<()> {
        self.changing(Wait::Level).rename(fs, from, to)
    }

    /// The changing calls, returning when `wait` says: at the pair's sync
    /// level ([`Wait::Level`], what the methods of `Primary` do), or once
    /// made here and on their way ([`Wait::Queued`]), for a host that
    /// promises nothing before a sync (the mount). Syncs are always
    /// `Primary`'s, and wait.
    pub fn changing(&self, wait: Wait) -> Changing<'_> {
        Changing { p: self, wait }
    }

    /// Whether a file or directory exists on the primary.
    pub fn exists(&self, fs: u16, path: &str) -> Result<bool> {
        let p = self.fspath(fs, path)?;
        Ok(self.rt.exec.disk.exists(&p)?)
    }

    /// Orderly end: new calls are refused, calls already past their local
    /// step finish, the mirror makes everything durable and acknowledges,
    /// then both sides close. Returns the last sequence number shipped.
    pub fn shutdown(&self, timeout: Duration) -> Result<u64> {
        let r = self.run(Op::Shutdown, Some(Instant::now() + timeout), &mut Extras::default());
        self.rt.stop_background();
        if let Some(link) = lock(&self.rt.link).as_ref() {
            link.resume_receiver();
        }
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
        match r? {
            Reply::Seq(last) => Ok(last),
            other => Err(Error::Rejected(format!("internal: shutdown answered {other:?}"))),
        }
    }

    /// Take a repaired mirror back (resync): from change tracking, hand-
    /// shake over `conn` and stream again. New calls ship from here on; the
    /// change-log keeps what the mirror lacks until [`crate::runtime::resync`]
    /// has shipped it and the resync's finish clears it.
    pub fn attach_mirror(&self, conn: Conn, peer: &str) -> Result<()> {
        if self.config.change_tracking.is_none() || self.mode() != Mode::ChangeTracking {
            return Err(Error::InvalidArgument(format!(
                "only a primary in change tracking takes a mirror back (this one is {:?})",
                self.mode()
            )));
        }
        let (mut reader, mut writer) = conn;
        client_handshake(&self.config, 1, reader.as_mut(), writer.as_mut(), peer)?;
        let tuning = &self.config.tuning;
        let closer = writer.clone_writer().map_err(|e| Error::io("cloning the connection", e))?;
        writer.set_send_timeout(Some(tuning.ack_timeout)).map_err(|e| Error::io("setting the send timeout", e))?;
        reader.set_timeout(Some(tuning.heartbeat)).map_err(|e| Error::io("setting the receive timeout", e))?;
        // In change tracking nothing is sent: the connection can be swapped
        // before the engine starts the new stream (its epoch is the next one).
        let epoch = lock(&self.rt.core).engine.epoch() + 1;
        *lock(&self.rt.conn) = exec::Conn { epoch, writer };
        *lock(&self.rt.closer) = closer;
        self.run_simple(Op::Attach)?;
        self.start_receiver(reader, epoch)?;
        tracing::warn!(
            peer,
            generation = self.config.identity.generation,
            "mirror taken back: streaming, resync pending"
        );
        Ok(())
    }

    /// Whether a resync is in progress (the stream runs, the change-log is not yet drained).
    pub fn resyncing(&self) -> bool {
        lock(&self.rt.core).engine.resyncing()
    }

    pub(crate) fn disk(&self) -> &Arc<dyn Disk> {
        &self.rt.exec.disk
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        let mine = {
            let mut core = lock(&self.rt.core);
            core.engine.stop("primary dropped");
            core.engine.take_commands().filter(|c| matches!(c, crate::core::primary::Command::Close)).count()
        };
        if mine > 0 {
            lock(&self.rt.closer).close();
        }
        self.rt.stop_background();
        if let Some(link) = lock(&self.rt.link).as_ref() {
            link.resume_receiver();
        }
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

/// A primary's changing calls, each returning when its [`Wait`] says
/// ([`Primary::changing`]).
pub struct Changing<'a> {
    p: &'a Primary,
    wait: Wait,
}

impl Changing<'_> {
    fn run(&self, op: Op) -> Result<()> {
        let x = &mut Extras::default();
        self.p.rt.call_with(op, self.wait, None, x).map(|_| ()).map_err(|f| error_of(f, x))
    }

    /// Create a relation (or flat) file. Fails if it exists.
    pub fn create(&self, fs: u16, path: &str) -> Result<()> {
        let file = self.p.fspath(fs, path)?;
        self.run(Op::Create { file })
    }

    /// Write one block (an evicted dirty buffer).
    pub fn write_block(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<()> {
        self.block_op(fs, path, block, data, false)
    }

    /// Append one block: `block` must equal the current number of blocks.
    pub fn extend(&self, fs: u16, path: &str, block: u64, data: &[u8]) -> Result<()> {
        self.block_op(fs, path, block, data, true)
    }

    fn block_op(&self, fs: u16, path: &str, block: u64, data: &[u8], extend: bool) -> Result<()> {
        let file = self.p.fspath(fs, path)?;
        self.p.check_block(data.len())?;
        let bs = self.p.config.identity.block_size as u64;
        let what = if extend { "extend" } else { "write_block" };
        check_file_limit(|| format!("{what} of {file} at block {block}"), block.checked_mul(bs), bs)?;
        // Copied and hashed here, outside the engine's lock.
        let data = Bytes::copy_from_slice(data);
        let hash = body_hash(&data);
        self.run(Op::WriteBlock { file, block, data, hash, extend })
    }

    /// Truncate a relation file to `nblocks` blocks.
    pub fn truncate(&self, fs: u16, path: &str, nblocks: u64) -> Result<()> {
        let len = nblocks.checked_mul(self.p.config.identity.block_size as u64);
        check_file_limit(|| format!("truncate of {path} to {nblocks} blocks"), len, 0)?;
        self.set_len(fs, path, len.unwrap_or_default())
    }

    /// Set a flat file's length in bytes.
    pub fn set_len(&self, fs: u16, path: &str, len: u64) -> Result<()> {
        let file = self.p.fspath(fs, path)?;
        check_file_limit(|| format!("set_len of {file} to {len} bytes"), Some(len), 0)?;
        self.run(Op::SetLen { file, len })
    }

    /// Remove a file.
    pub fn unlink(&self, fs: u16, path: &str) -> Result<()> {
        let file = self.p.fspath(fs, path)?;
        self.run(Op::Unlink { file })
    }

    /// Write bytes at an offset of a flat or log file (at most 256 KiB a call).
    pub fn write_at(&self, fs: u16, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.write_bytes(fs, path, offset, data, false)
    }

    pub(crate) fn write_bytes(&self, fs: u16, path: &str, offset: u64, data: &[u8], flush: bool) -> Result<()> {
        let file = self.p.fspath(fs, path)?;
        check_write_at_len(data.len())?;
        check_file_limit(|| format!("write_at of {file} at byte {offset}"), Some(offset), data.len() as u64)?;
        let data = Bytes::copy_from_slice(data);
        let hash = body_hash(&data);
        self.run(Op::WriteAt { file, offset, data, hash, flush })
    }

    pub fn mkdir(&self, fs: u16, path: &str) -> Result<()> {
        let dir = self.p.fspath(fs, path)?;
        self.run(Op::Mkdir { dir })
    }

    pub fn rmdir(&self, fs: u16, path: &str) -> Result<()> {
        let dir = self.p.fspath(fs, path)?;
        self.run(Op::Rmdir { dir })
    }

    /// Rename a file or directory within a filespace (atomic, replaces a file at `to`).
    pub fn rename(&self, fs: u16, from: &str, to: &str) -> Result<()> {
        let from = self.p.fspath(fs, from)?;
        let to = self.p.fspath(fs, to)?;
        if to.path.is_within(&from.path) {
            return Err(Error::InvalidArgument(format!("cannot move {from} into itself ({to})")));
        }
        self.run(Op::Rename { from, to })
    }
}

/// Run the primary's side of the handshake (public for tools and tests
/// that speak the protocol directly).
pub fn client_handshake(
    cfg: &PrimaryConfig,
    start_seq: u64,
    reader: &mut dyn ConnReader,
    writer: &mut dyn ConnWriter,
    peer: &str,
) -> Result<()> {
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
    let key = &cfg.key;
    let proofs = (
        |h: &[u8], cn: &[u8; 32], sn: &[u8; 32]| key.primary_proof(h, cn, sn),
        |h: &[u8], cn: &[u8; 32], sn: &[u8; 32]| key.mirror_proof(h, cn, sn),
    );
    prove_to_mirror(reader, writer, &hello.encode(), &client_nonce, proofs, peer, cfg.tuning.handshake_timeout)
}

/// The primary's side of the key proofs, after its first message (a Hello
/// or a network check's, encoded as sent): send it, read the Challenge (or
/// the Verdict of a mirror that refuses it at once), send the proof
/// `proofs.0(first, client nonce, server nonce)`, read the Verdict and
/// check the mirror's proof against `proofs.1`. `limit` bounds the whole.
pub(crate) fn prove_to_mirror<P, M>(
    reader: &mut dyn ConnReader,
    writer: &mut dyn ConnWriter,
    first: &[u8],
    client_nonce: &[u8; 32],
    proofs: (P, M),
    peer: &str,
    limit: Duration,
) -> Result<()>
where
    P: Fn(&[u8], &[u8; 32], &[u8; 32]) -> [u8; 32],
    M: Fn(&[u8], &[u8; 32], &[u8; 32]) -> [u8; 32],
{
    let hs_err = |source| Error::Handshake { peer: peer.to_string(), source };
    let io_err = |e: std::io::Error| match crate::io::net::is_timeout(&e) {
        true => Error::io(
            format!("handshake with {peer}"),
            std::io::Error::new(
                e.kind(),
                format!("no answer within the handshake deadline ({} ms)", limit.as_millis()),
            ),
        ),
        false => Error::io(format!("handshake with {peer}"), e),
    };
    let deadline = Some(Instant::now() + limit);
    writer.send_all(&[IoSlice::new(first)]).map_err(io_err)?;
    let challenge = read_message(reader, deadline).map_err(io_err)?;
    // A mirror that refuses the first message answers with a Verdict at
    // once; the two are told apart by their length (docs/protocol.md § 2.3).
    if challenge.len() != handshake::CHALLENGE_LEN {
        let verdict = handshake::Verdict::decode(&challenge).map_err(hs_err)?;
        return Err(Error::Refused { peer: peer.to_string(), status: verdict.status, reason: verdict.reason });
    }
    let challenge = handshake::Challenge::decode(&challenge).map_err(hs_err)?;
    let body = handshake::payload(first);
    let proof = (proofs.0)(body, client_nonce, &challenge.server_nonce);
    writer.send_all(&[IoSlice::new(&handshake::Proof { proof }.encode())]).map_err(io_err)?;
    let verdict = read_message(reader, deadline).map_err(io_err)?;
    let verdict = handshake::Verdict::decode(&verdict).map_err(hs_err)?;
    if verdict.status != Status::Accepted {
        return Err(Error::Refused { peer: peer.to_string(), status: verdict.status, reason: verdict.reason });
    }
    if !handshake::proofs_equal(&(proofs.1)(body, client_nonce, &challenge.server_nonce), &verdict.mirror_proof) {
        return Err(hs_err(handshake::HandshakeError::Malformed(
            "the mirror did not prove it holds the cluster key".into(),
        )));
    }
    Ok(())
}

/// A `write_at` carries 1 to [`MAX_WRITE_AT`] bytes.
pub(crate) fn check_write_at_len(len: usize) -> Result<()> {
    if len == 0 || len > MAX_WRITE_AT {
        return Err(Error::InvalidArgument(format!("write_at takes 1 to {MAX_WRITE_AT} bytes; {len} given")));
    }
    Ok(())
}

/// The one limit on file sizes (docs/protocol.md § 3.4), checked before a
/// call does anything locally: `len` bytes from `start` (`None`: the start
/// overflowed) must end within [`crate::protocol::MAX_FILE_BYTES`].
fn check_file_limit(what: impl FnOnce() -> String, start: Option<u64>, len: u64) -> Result<()> {
    match crate::protocol::file_end(start, len) {
        Some(_) => Ok(()),
        None => Err(Error::InvalidArgument(format!(
            "{} would end past the largest file a pair holds ({} bytes, 4 TiB; docs/protocol.md § 3.4): \
             refused, nothing changed",
            what(),
            crate::protocol::MAX_FILE_BYTES
        ))),
    }
}

/// Read one length-prefixed handshake message; returns it without the prefix.
/// With a deadline, the whole message must arrive before it.
pub fn read_message(reader: &mut dyn ConnReader, deadline: Option<Instant>) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv_exact_until(reader, &mut len, deadline)?;
    let n = u32::from_le_bytes(len) as usize;
    if n > handshake::MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("handshake message of {n} bytes is over the limit of {}", handshake::MAX_MESSAGE),
        ));
    }
    let mut msg = vec![0u8; n];
    recv_exact_until(reader, &mut msg, deadline)?;
    Ok(msg)
}
