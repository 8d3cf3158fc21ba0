//! The mirror daemon's runtime: accept a primary, check who it is, then
//! receive, validate and apply its stream.
//!
//! Per connection: this thread reads large chunks, decodes frames in place,
//! validates each one through [`MirrorSession`], applies each chunk's valid
//! operations as one batch with [`Applier`] and acknowledges once per
//! batch. Durability (grouped fdatasync and directory fsync) runs on a
//! syncer thread, so applying never waits for the disk to flush. On a
//! direct disk, batches of plain writes go to round threads instead
//! ([`rounds`]) and this thread reads on. A bad frame
//! ends the connection with a logged reason; the chunk it arrived in is
//! discarded, and the daemon serves the next connection.

mod rounds;
mod server_handshake;
mod syncer;

use crate::config::{check_block_size, check_filespaces, Filespace, StreamTuning};
use crate::core::mirror::policy::{self, Action, Batch};
use crate::core::mirror::{Checkpoints, MirrorSession, SessionPolicy, Step};
use crate::error::{Error, Result};
use crate::exec::apply::{Applier, FaultClass, Sequenced};
use crate::io::admission::{Gate, Limits, Stop, Ticket};
use crate::io::disk::Disk;
use crate::io::net::{is_timeout, Conn, ConnReader, ConnWriter};
use crate::protocol::handshake::{ClusterKey, Hello, Status};
use crate::protocol::{Decoder, Frame};
use server_handshake::Admitted;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use syncer::{AckSender, Marks, Syncer};

/// Highest first sequence number a primary may announce (room to count up).
const MAX_START_SEQ: u64 = 1 << 62;
/// Authenticated sessions open at once (one streams; the others are
/// refused with Busy once they prove the key).
pub const MAX_CONNECTIONS: usize = 16;

/// Largest single read from the socket.
const READ_CHUNK: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct MirrorConfig {
    pub cluster_id: u64,
    pub content_id: u32,
    pub block_size: u32,
    pub filespaces: Vec<Filespace>,
    pub key: ClusterKey,
    /// The lowest generation accepted; the mirror adopts any higher one it sees.
    pub generation: u64,
    pub tuning: StreamTuning,
    pub prefer_uring: bool,
    /// Aligned block writes with O_DIRECT (the NVMe path; durability unchanged).
    pub direct: bool,
    /// Where the mirror keeps its generation and fault state across restarts
    /// (rule 7: a restarted mirror still refuses a stale primary; rule 8: a
    /// faulted one still refuses every primary). `None`: memory only.
    pub state_dir: Option<PathBuf>,
}

pub use crate::durable::mirror_state::MirrorState;

/// Whether a session recorded as streaming in boot `recorded` was cut by
/// the host going down: recorded in another boot (or a boot not known).
pub fn lost_power_since(recorded: Option<&str>) -> bool {
    crate::core::mirror::lost_power_streaming(recorded, boot_id().as_deref())
}

/// Names a file to read this host's boot id from instead of the kernel's:
/// the power-cut tests cut a host's file systems without rebooting it, and
/// give each host a file whose id they change at every cut.
pub const BOOT_ID_FILE_ENV: &str = "FILEREP_BOOT_ID_FILE";

/// This host's boot id: it changes at every boot, so a record of it tells
/// a restarted process whether the page cache it wrote through survived.
/// `None` where the kernel does not say (then a session cut counts as cut
/// by a power loss). Read from [`BOOT_ID_FILE_ENV`] if that is set.
pub fn boot_id() -> Option<String> {
    let path = std::env::var_os(BOOT_ID_FILE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/sys/kernel/random/boot_id"));
    let id = std::fs::read_to_string(path).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// How long a network check may go without a byte before it is closed.
const NET_CHECK_IDLE: Duration = Duration::from_secs(10);

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Orderly shutdown by the primary; everything durable.
    Shutdown,
    /// The primary went away (end of stream, reset, silence).
    Disconnected(String),
    /// The peer went away, or was closed, before it proved the key: a port
    /// scan, a health check, a flood, or the handshake deadline.
    Unauthenticated(String),
    /// The handshake refused the peer.
    Refused(Status, String),
    /// A frame failed validation; nothing of its batch was applied.
    BadFrame(String),
    /// The mirror could not apply an operation (reported to the primary).
    ApplyFailed(String),
    /// A network check ended: its bytes were read (and thrown away), or it
    /// failed with the reason.
    NetCheck(Result<u64, String>),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Shutdown => write!(f, "orderly shutdown"),
            SessionEnd::Disconnected(r) => write!(f, "disconnected: {r}"),
            SessionEnd::Unauthenticated(r) => write!(f, "closed before it authenticated: {r}"),
            SessionEnd::Refused(s, r) => write!(f, "refused ({s:?}): {r}"),
            SessionEnd::BadFrame(r) => write!(f, "bad frame: {r}"),
            SessionEnd::ApplyFailed(r) => write!(f, "apply failed: {r}"),
            SessionEnd::NetCheck(Ok(n)) => write!(f, "network check of {n} bytes done"),
            SessionEnd::NetCheck(Err(r)) => write!(f, "network check failed: {r}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SessionReport {
    pub peer: String,
    pub end: SessionEnd,
    pub frames: u64,
    pub applied_through: u64,
    pub durable_through: u64,
    /// Sync jobs run on the session's own thread, and handed to its syncer
    /// thread (where each flush's fdatasync ran; see `Syncer`).
    pub syncs: SyncCounts,
}

impl SessionReport {
    /// A session that ended before it applied anything.
    fn nothing_applied(peer: &str, end: SessionEnd) -> SessionReport {
        SessionReport {
            peer: peer.into(),
            end,
            frames: 0,
            applied_through: 0,
            durable_through: 0,
            syncs: SyncCounts::default(),
        }
    }
}

/// Where a session's sync jobs ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    pub on_session: u64,
    pub on_syncer: u64,
}

pub struct MirrorServer {
    cfg: MirrorConfig,
    disk: Arc<dyn Disk>,
    generation: AtomicU64,
    /// Held by the one session that streams.
    streaming: Mutex<()>,
    /// Held by the network check running, if any.
    net_checking: Mutex<()>,
    /// Set after a failed write or fsync: the files are in doubt, and no
    /// primary is accepted until they are rebuilt.
    fault: Mutex<Option<String>>,
    /// Set when `serve` is asked to stop: sessions end.
    stopping: AtomicBool,
    /// [`MirrorState::streaming_boot`] as stored.
    streaming_boot: Mutex<Option<String>>,
}

impl MirrorServer {
    pub fn new(cfg: MirrorConfig) -> Result<MirrorServer> {
        check_block_size(cfg.block_size)?;
        check_filespaces(&cfg.filespaces)?;
        let roots: Vec<_> = cfg.filespaces.iter().map(|f| f.root.clone()).collect();
        let disk = crate::io::disk::open_local_with(&roots, cfg.prefer_uring, cfg.direct)?;
        crate::io::disk::check_largest_file(&roots)?;
        Self::with_disk(cfg, disk)
    }

    pub fn with_disk(cfg: MirrorConfig, disk: Arc<dyn Disk>) -> Result<MirrorServer> {
        let state = match &cfg.state_dir {
            Some(dir) => MirrorState::load(dir)?,
            None => MirrorState::default(),
        };
        if let Some(f) = &state.fault {
            tracing::error!(fault = %f, "this mirror faulted before it was restarted: refusing primaries");
        }
        let generation = AtomicU64::new(cfg.generation.max(state.generation));
        let fault = Mutex::new(state.fault);
        let streaming_boot = Mutex::new(state.streaming_boot);
        Ok(MirrorServer {
            cfg,
            disk,
            generation,
            streaming: Mutex::new(()),
            net_checking: Mutex::new(()),
            fault,
            stopping: AtomicBool::new(false),
            streaming_boot,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn disk_name(&self) -> &'static str {
        self.disk.name()
    }

    /// Why this mirror faulted, if it did.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forget this mirror's fault, durably, because a full resync is about
    /// to rebuild its files (`filerep recover -F`): every block is shipped
    /// and written again, whatever its page cache shows. Returns the fault
    /// forgotten. The arbiter sends it only with a full resync.
    pub fn forget_fault_for_rebuild(&self) -> Result<Option<String>> {
        let mut f = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        let Some(old) = f.take() else { return Ok(None) };
        drop(f);
        if let Err(e) = self.persist() {
            *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(old);
            return Err(e);
        }
        tracing::warn!(fault = %old, "mirror fault forgotten: a full resync rebuilds its files");
        Ok(Some(old))
    }

    fn set_fault(&self, reason: String) {
        tracing::error!(%reason, "mirror faulted: refusing primaries until its files are rebuilt");
        let mut f = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(reason);
        }
        drop(f);
        if let Err(e) = self.persist() {
            tracing::error!(error = %e, "cannot record the fault in the state file");
        }
    }

    fn persist(&self) -> Result<()> {
        match &self.cfg.state_dir {
            None => Ok(()),
            Some(dir) => MirrorState {
                generation: self.generation(),
                fault: self.fault(),
                streaming_boot: self.streaming_boot.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            }
            .store(dir),
        }
    }

    /// Record (`Some`: this boot's id) or clear that a session streams.
    fn set_streaming(&self, streaming: bool) -> Result<()> {
        let boot = streaming.then(|| boot_id().unwrap_or_else(|| "unknown".into()));
        *self.streaming_boot.lock().unwrap_or_else(|e| e.into_inner()) = boot;
        self.persist()
    }

    /// Whether a session was streaming when this host last went down: a
    /// session of a process of another boot (or of a boot not known) that
    /// never ended by making what it applied durable. Its acknowledged but
    /// unsynced writes went with that boot's page cache.
    pub fn lost_power_streaming(&self) -> bool {
        lost_power_since(self.streaming_boot.lock().unwrap_or_else(|e| e.into_inner()).as_deref())
    }

    /// Serve connections until `stop`. Each connection gets its own thread;
    /// unauthenticated ones are bounded by the admission gate
    /// ([`crate::io::admission`]: a small budget, per source, closed at the
    /// handshake deadline), so silent or slow peers cannot keep a primary
    /// out; only one session may stream at a time.
    pub fn serve(&self, listener: &TcpListener, stop: &Stop) -> Result<()> {
        let limits = Limits::new(MAX_CONNECTIONS).with_deadline(self.cfg.tuning.handshake_timeout);
        let gate = Gate::new("replication port", limits);
        let gate = &gate;
        self.stopping.store(false, Ordering::SeqCst);
        let served = std::thread::scope(|s| {
            let r = crate::io::admission::serve(listener, gate, stop, |stream, ticket| {
                let spawned = std::thread::Builder::new().name("filerep-session".into()).spawn_scoped(s, move || {
                    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown peer".into());
                    match crate::io::net::tcp(stream) {
                        Ok(conn) => {
                            let report = self.serve_admitted(conn, &peer, ticket);
                            match &report.end {
                                // Before the key proof: anyone can send garbage.
                                SessionEnd::Refused(Status::Malformed | Status::BadKey, _) => {
                                    gate.refused(&peer, &report.end.to_string())
                                }
                                _ => log_report(&report),
                            }
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, "cannot set up the connection"),
                    }
                });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot spawn a session thread");
                }
            });
            // Sessions see this and end (after making what they applied durable).
            self.stopping.store(true, Ordering::SeqCst);
            r
        });
        served.map_err(|e| Error::io("accepting on the replication port", e))
    }

    /// Handshake, then receive and apply until the connection ends (a
    /// connection accepted by the caller: no admission limits).
    pub fn serve_conn(&self, conn: Conn, peer: &str) -> SessionReport {
        self.serve_admitted(conn, peer, Ticket::unlimited())
    }

    fn serve_admitted(&self, conn: Conn, peer: &str, mut ticket: Ticket) -> SessionReport {
        let (mut reader, mut writer) = conn;
        let span = tracing::info_span!("mirror_session", peer);
        let _e = span.enter();
        let report = |end| SessionReport::nothing_applied(peer, end);
        match self.server_handshake(reader.as_mut(), writer.as_mut(), &mut ticket) {
            Ok(Admitted::Stream(hello, _streaming)) => {
                tracing::info!(generation = hello.generation, start = hello.start_seq, "stream accepted");
                self.stream(hello, reader, writer, peer)
            }
            Ok(Admitted::NetCheck(bytes, _checking)) => {
                tracing::info!(bytes, "network check accepted");
                let end = crate::runtime::netcheck::sink(reader.as_mut(), writer.as_mut(), bytes, NET_CHECK_IDLE);
                writer.close();
                report(end)
            }
            Err(end) => {
                writer.close();
                report(end)
            }
        }
    }

    fn stream(
        &self,
        hello: Hello,
        mut reader: Box<dyn ConnReader>,
        mut writer: Box<dyn ConnWriter>,
        peer: &str,
    ) -> SessionReport {
        // Durably recorded before anything is acknowledged: a power loss
        // from here until the end's final sync makes this mirror one that
        // must not be promoted.
        if let Err(e) = self.set_streaming(true) {
            tracing::error!(error = %e, "cannot record the session in the state file; refusing the stream");
            writer.close();
            let end = SessionEnd::ApplyFailed(format!("cannot record the session in the state file: {e}"));
            return SessionReport::nothing_applied(peer, end);
        }
        let mut session = MirrorSession::new(self.cfg.block_size, self.cfg.filespaces.len() as u16, hello.start_seq);
        let mut applier = Applier::new(self.disk.clone(), hello.start_seq);
        applier.plant(crate::core::planted_in_process());
        let base = applier.applied();
        let acks =
            Arc::new(AckSender { marks: Marks::default(), writer: Mutex::new(writer), failed: AtomicBool::new(false) });
        for m in [&acks.marks.received, &acks.marks.applied, &acks.marks.synced, &acks.marks.durable] {
            m.store(base, Ordering::SeqCst);
        }
        let report = |end, frames, syncs| SessionReport {
            peer: peer.into(),
            end,
            frames,
            applied_through: acks.marks.applied.load(Ordering::SeqCst),
            durable_through: acks.marks.durable.load(Ordering::SeqCst),
            syncs,
        };
        let mut syncer = match Syncer::spawn(self.disk.clone(), acks.clone()) {
            Ok(x) => x,
            Err(e) => {
                acks.close();
                let why = format!("cannot start the syncer thread: {e}");
                return report(SessionEnd::ApplyFailed(why), 0, SyncCounts::default());
            }
        };
        let _ = reader.set_timeout(Some(self.cfg.tuning.ack_timeout));
        // A primary that stops reading acknowledgements ends the session.
        let timeout_set =
            acks.writer.lock().unwrap_or_else(|e| e.into_inner()).set_send_timeout(Some(self.cfg.tuning.ack_timeout));
        if let Err(e) = timeout_set {
            tracing::warn!(error = %e, "cannot set the send timeout");
        }
        let mut dec = Decoder::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut frames = 0u64;
        let clock = Instant::now();
        let now_ms = || clock.elapsed().as_millis() as u64;
        let mut policy = SessionPolicy::new(Checkpoints::new(0)).with_bug(crate::core::planted_in_process());
        // Bytes received since the last sync job (where the next one runs).
        let mut received_since_sync = 0u64;
        let mut rounds = match self.cfg.direct {
            true => match rounds::Rounds::start(self.disk.clone(), acks.clone(), base, reader.poll_fd().is_some()) {
                Ok(r) => Some(r),
                Err(e) => {
                    acks.close();
                    drop(syncer.finish());
                    let why = format!("cannot start the write round threads: {e}");
                    return report(SessionEnd::ApplyFailed(why), 0, SyncCounts::default());
                }
            },
            false => None,
        };
        // Receive, validate and apply on this thread: one wake-up per batch
        // between the socket and the disk. Only durability is handed off.
        let end = 'conn: loop {
            if acks.failed.load(Ordering::SeqCst) {
                break SessionEnd::ApplyFailed("a sync failed".into());
            }
            if self.stopping.load(Ordering::SeqCst) {
                break SessionEnd::Disconnected("the mirror daemon is stopping".into());
            }
            // With rounds on this thread's ring, a receive must not block
            // while they are in flight: wait for the socket and settle them.
            if let (Some(r), Some(fd)) = (&rounds, reader.poll_fd()) {
                match r.await_readable(fd, self.cfg.tuning.ack_timeout) {
                    Ok(true) => {}
                    Ok(false) => {
                        break SessionEnd::Disconnected(format!("silent for {:?}", self.cfg.tuning.ack_timeout))
                    }
                    Err(e) => break SessionEnd::Disconnected(format!("waiting to receive failed: {e}")),
                }
            }
            let n = match reader.recv(&mut buf) {
                Ok(0) => {
                    break match dec.finish() {
                        Err(e) => SessionEnd::BadFrame(e.to_string()),
                        Ok(()) => SessionEnd::Disconnected("the primary closed the connection".into()),
                    };
                }
                Ok(n) => n,
                Err(e) if is_timeout(&e) => {
                    break SessionEnd::Disconnected(format!("silent for {:?}", self.cfg.tuning.ack_timeout))
                }
                Err(e) => break SessionEnd::Disconnected(format!("receive failed: {e}")),
            };
            dec.feed(&buf[..n]);
            received_since_sync += n as u64;
            let mut ops = Vec::new();
            let mut wake = false;
            let mut shutdown = false;
            loop {
                let frame: Frame = match dec.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => break 'conn SessionEnd::BadFrame(e.to_string()),
                };
                frames += 1;
                match session.on_frame(&frame) {
                    Ok(Step::Apply { seq, op, durable, catching_up }) => {
                        ops.push(Sequenced { seq, op, durable, catching_up })
                    }
                    Ok(Step::Heartbeat) => wake = true,
                    Ok(Step::Shutdown) => {
                        shutdown = true;
                        break;
                    }
                    // The whole chunk is dropped: nothing of it is applied.
                    Err(e) => break 'conn SessionEnd::BadFrame(e.to_string()),
                }
            }
            if ops.is_empty() && !wake && !shutdown {
                continue;
            }
            // What the batch does, in order, is the core's (the simulator
            // runs the same): a batch of plain writes goes to a round
            // thread on a direct disk while the session reads on; anything
            // else waits for the rounds in flight, then applies here.
            let batch = Batch {
                operations: ops.len(),
                round_takes_it: rounds.as_ref().is_some_and(|r| r.takes(&ops)),
                heartbeat: wake,
                shutdown,
            };
            // Before a round can land: an acknowledgement never has applied past received.
            acks.marks.received.store(session.received(), Ordering::SeqCst);
            let placed = policy.place(&batch);
            for action in placed.iter() {
                let result = match action {
                    Action::DrainRounds => drain(&rounds, &mut applier),
                    Action::StageRound => match &rounds {
                        Some(r) => stage_retrying(&mut applier, &ops)
                            .and_then(|w| r.submit(w, ops.last().map_or(0, |o| o.seq))),
                        // Never: no round takes a batch of a session without rounds.
                        None => apply_retrying(&mut applier, &ops),
                    },
                    // Whether the batch asked for a sync the applier says below.
                    Action::Apply => apply_retrying(&mut applier, &ops),
                    Action::RequestFull | Action::QueueSync | Action::SendReplies | Action::Ack | Action::EndStream => {
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    break 'conn self.apply_failed(&acks, &e);
                }
            }
            acks.marks.applied.fetch_max(applier.applied(), Ordering::SeqCst);
            // With nothing unsynced (operations that changed nothing, such
            // as a reconcile of what is already so) a checkpoint still
            // moves "durable through" up to what was applied.
            let state = applier.state(acks.marks.durable.load(Ordering::SeqCst));
            for action in policy.after(now_ms(), &batch, &placed, state).iter() {
                match action {
                    Action::RequestFull => applier.request_full(),
                    Action::DrainRounds => {
                        if let Err(e) = drain(&rounds, &mut applier) {
                            break 'conn self.apply_failed(&acks, &e);
                        }
                    }
                    Action::QueueSync => {
                        let since = std::mem::take(&mut received_since_sync);
                        if let Err(e) = syncer.sync(applier.take_sync_job(), since, self.disk.as_ref(), &acks) {
                            break 'conn SessionEnd::ApplyFailed(e);
                        }
                    }
                    Action::SendReplies => {
                        let replies = applier.take_replies();
                        if !replies.is_empty() && !acks.replies(replies) {
                            break 'conn SessionEnd::Disconnected("sending hashes or a listing failed".into());
                        }
                    }
                    Action::Ack => {
                        if !acks.send() {
                            break 'conn SessionEnd::Disconnected("sending an acknowledgement failed".into());
                        }
                    }
                    Action::EndStream => break 'conn SessionEnd::Shutdown,
                    // Placements only.
                    Action::StageRound | Action::Apply => {}
                }
            }
        };
        // Rounds in flight land (or fail) before anything else.
        let mut end = end;
        if let Some(r) = rounds.take() {
            match r.drain() {
                Ok(through) => applier.landed(through),
                Err(e) if !matches!(end, SessionEnd::ApplyFailed(_)) => end = self.apply_failed(&acks, &e),
                Err(_) => {}
            }
            // Rule 8: a round that found the disk failing faults the mirror,
            // even when another failure ended the session first.
            if let Some(why) = r.disk_failing() {
                self.set_fault(why);
            }
            acks.marks.applied.fetch_max(applier.applied(), Ordering::SeqCst);
        }
        // Whatever was applied is made durable before the session ends.
        let apply_failed = matches!(end, SessionEnd::ApplyFailed(_));
        let mut sync_error = None;
        if policy::final_sync_due(apply_failed, applier.has_unsynced()) {
            applier.request_full();
            sync_error = syncer.sync(applier.take_sync_job(), u64::MAX, self.disk.as_ref(), &acks).err();
        }
        let syncs = syncer.counts;
        let sync_error = syncer.finish().or(sync_error);
        let sync_error = match (&end, sync_error) {
            // A sync that failed on this thread ended the session: the same
            // rule as one that failed on the syncer.
            (SessionEnd::ApplyFailed(e), None) if acks.failed.load(Ordering::SeqCst) => Some(e.clone()),
            (_, e) => e,
        };
        if let Some(e) = &sync_error {
            // Rule 8: after a failed fsync nothing here is reported durable again.
            self.set_fault(e.clone());
        }
        let closing = policy::closing(end == SessionEnd::Shutdown, apply_failed, sync_error.is_some());
        if closing.clear_record {
            // A power loss now takes nothing it acknowledged.
            if let Err(e) = self.set_streaming(false) {
                tracing::warn!(error = %e, "cannot clear the session's record in the state file");
            }
        }
        if closing.final_ack {
            // Everything durable.
            acks.send();
        }
        acks.close();
        let end = match sync_error {
            Some(e) => SessionEnd::ApplyFailed(e),
            None => end,
        };
        report(end, frames, syncs)
    }
}

impl MirrorServer {
    /// Log an operation that failed, tell the primary, and fault this
    /// mirror if its disk is failing: the end of the session.
    fn apply_failed(&self, acks: &AckSender, e: &crate::exec::apply::ApplyError) -> SessionEnd {
        acks.fault(e.seq, &e.to_string());
        // What the error says decides (one table: apply::ERRNO_CLASSES).
        match e.class() {
            FaultClass::DiskFailing => {
                tracing::error!(seq = e.seq, error = %e, "apply failed: the disk is failing; ending the session");
                // The written data is in doubt (rule 8).
                self.set_fault(e.to_string());
            }
            FaultClass::BadRequest => tracing::warn!(seq = e.seq, error = %e,
                "the primary asked for what this mirror's files cannot do; session ended, the mirror stays in service"),
            FaultClass::Retry => tracing::warn!(seq = e.seq, error = %e, tries = RETRY_PAUSES.len() + 1,
                "apply kept failing for a passing reason; session ended, the mirror stays in service"),
        }
        SessionEnd::ApplyFailed(e.to_string())
    }
}

/// Wait for the write rounds in flight, if any, and count them applied.
fn drain(rounds: &Option<rounds::Rounds>, applier: &mut Applier) -> Result<(), crate::exec::apply::ApplyError> {
    if let Some(r) = rounds {
        applier.landed(r.drain()?);
    }
    Ok(())
}

/// Pauses before each new try of an operation that failed for a passing
/// reason ([`FaultClass::Retry`]); well under any primary's ack timeout.
const RETRY_PAUSES: [Duration; 3] = [Duration::from_millis(10), Duration::from_millis(50), Duration::from_millis(200)];

/// Run `attempt` again after each pause of [`RETRY_PAUSES`] while it fails
/// for a passing reason; its last result.
fn retrying<T>(
    what: &'static str,
    mut attempt: impl FnMut() -> Result<T, crate::exec::apply::ApplyError>,
) -> Result<T, crate::exec::apply::ApplyError> {
    let mut pauses = RETRY_PAUSES.iter();
    loop {
        match attempt() {
            Err(e) if e.class() == FaultClass::Retry => {
                let Some(pause) = pauses.next() else { return Err(e) };
                tracing::debug!(seq = e.seq, error = %e, what, "failed for a passing reason: trying again");
                std::thread::sleep(*pause);
            }
            r => return r,
        }
    }
}

/// Stage a batch for the write rounds; opening a file that fails for a
/// passing reason (EMFILE, ENOMEM) is tried again, as applying is.
fn stage_retrying(
    applier: &mut Applier,
    ops: &[Sequenced],
) -> Result<Vec<crate::exec::apply::StagedWrite>, crate::exec::apply::ApplyError> {
    retrying("staging", || applier.stage_writes(ops))
}

/// Apply a batch; an operation that fails for a passing reason is tried
/// again (with what follows it) after a pause, a few times. Safe: the
/// failed operation did not happen, and everything before it is applied
/// (`Applier::applied` says how far).
fn apply_retrying(applier: &mut Applier, ops: &[Sequenced]) -> Result<(), crate::exec::apply::ApplyError> {
    let mut rest = ops;
    retrying("apply", || {
        let r = applier.apply(rest);
        if r.is_err() {
            let done = applier.applied();
            rest = &rest[rest.iter().position(|o| o.seq > done).unwrap_or(rest.len())..];
        }
        r.map(drop)
    })
}

fn log_report(r: &SessionReport) {
    match &r.end {
        SessionEnd::Shutdown => {
            tracing::info!(
                peer = %r.peer,
                frames = r.frames,
                durable = r.durable_through,
                syncs_on_session = r.syncs.on_session,
                syncs_on_syncer = r.syncs.on_syncer,
                "session ended: orderly shutdown"
            )
        }
        // Normal on an open port: the gate sums these up in the log.
        SessionEnd::Unauthenticated(_) => tracing::debug!(peer = %r.peer, "connection ended: {}", r.end),
        SessionEnd::NetCheck(Ok(_)) => tracing::info!(peer = %r.peer, "{}", r.end),
        end => tracing::warn!(peer = %r.peer, frames = r.frames, applied = r.applied_through, "session ended: {end}"),
    }
}
