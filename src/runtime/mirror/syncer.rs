//! The acknowledgements a session sends and the durability behind them:
//! the watermarks, the Ack writer, and the syncer thread that runs sync
//! jobs (group commit).

use super::SyncCounts;
use crate::exec::apply::SyncJob;
use crate::io::disk::Disk;
use crate::io::net::ConnWriter;
use crate::protocol::{Ack, Frame, Header, Kind};
use bytes::Bytes;
use crossbeam_channel::Sender;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The watermarks acknowledged to the primary, shared by receiver and syncer.
#[derive(Default)]
pub(super) struct Marks {
    pub(super) received: AtomicU64,
    pub(super) applied: AtomicU64,
    pub(super) synced: AtomicU64,
    pub(super) durable: AtomicU64,
}

pub(super) struct AckSender {
    pub(super) marks: Marks,
    pub(super) writer: Mutex<Box<dyn ConnWriter>>,
    /// Set when the session must end (a failed sync).
    pub(super) failed: AtomicBool,
}

impl AckSender {
    /// Send the current watermarks. They are read under the writer lock,
    /// durable first, so every acknowledgement is monotonic and consistent.
    pub(super) fn send(&self) -> bool {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let durable = self.marks.durable.load(Ordering::SeqCst);
        let synced = self.marks.synced.load(Ordering::SeqCst);
        let applied = self.marks.applied.load(Ordering::SeqCst);
        let received = self.marks.received.load(Ordering::SeqCst);
        let ack = Ack { received, applied, synced, durable };
        w.send_all(&[IoSlice::new(&ack.to_frame().to_vec())]).is_ok()
    }

    /// Answer hash requests (compare-mode resync, verification) and list
    /// requests (verification), in order.
    pub(super) fn replies(&self, replies: Vec<crate::exec::apply::Reply>) -> bool {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        for reply in replies {
            let f = reply.into_frame();
            if w.send_all(&[IoSlice::new(&f.to_vec())]).is_err() {
                return false;
            }
        }
        true
    }

    /// Run a sync job and move the synced (and durable) marks; a failure
    /// ends the session, with a fault frame to the primary (rule 8: a
    /// failed fsync is never retried into a success).
    pub(super) fn run_sync(&self, job: &SyncJob, disk: &dyn Disk) -> std::result::Result<(), String> {
        match job.run(disk) {
            Ok(through) => {
                self.marks.synced.fetch_max(through, Ordering::SeqCst);
                if let Some(d) = job.durable_through {
                    self.marks.durable.fetch_max(d, Ordering::SeqCst);
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(seq = e.seq, error = %e, "sync failed; ending the session");
                self.failed.store(true, Ordering::SeqCst);
                self.fault(e.seq, &e.to_string());
                Err(e.to_string())
            }
        }
    }

    pub(super) fn fault(&self, seq: u64, reason: &str) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut h = Header::new(Kind::Fault);
        h.seq = seq;
        let f = Frame::new(h, Bytes::from(reason.as_bytes().to_vec()));
        let _ = w.send_all(&[IoSlice::new(&f.to_vec())]);
        w.close();
    }

    pub(super) fn close(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).close();
    }
}

type SyncerHandle = std::thread::JoinHandle<Option<String>>;

/// Sync jobs waiting for the syncer, at most. Each holds open handles of
/// up to [`crate::exec::apply::MAX_DIRTY_FILES`] files: when fsyncs are slower
/// than the stream, the applier waits here (and the primary behind it)
/// instead of piling up jobs until the process runs out of descriptors
/// (seen under a disk slowed by other work: EMFILE faulted the mirror).
/// Eight jobs (at most 4,096 handles) leave room for a slow fsync before
/// the applier stops reading: a primary whose send then waits longer than
/// its `ack_timeout` counts the mirror as lost.
const SYNC_JOBS_QUEUED: usize = 8;

/// A flush's sync job runs on the session's thread only if at most this
/// many bytes arrived since the last job: a database's commit (a log
/// record, a page or two), not a stream of blocks whose fdatasync would
/// hold up the writers behind it (measured: `filerep bench` shipped a
/// quarter less with every flush run on the session's thread).
const INLINE_SYNC_AFTER: u64 = 256 * 1024;

/// Where a session's sync jobs run: the syncer thread (jobs merged when
/// several are queued: group commit, then the new durable watermark
/// acknowledged), or, for a job that flushes asked for (not a checkpoint),
/// the session's own thread when the syncer has nothing in hand. Handing a job to an idle thread costs a wake-up (tens of
/// microseconds on a virtual machine's idle CPU) on the path of every
/// flush a lone client waits for, and the acknowledgement of the batch
/// then carries the synced mark too (docs/performance.md, "A sync on the
/// session's thread").
pub(super) struct Syncer {
    tx: Sender<SyncJob>,
    handle: SyncerHandle,
    /// Jobs handed to the syncer and not finished: with none, no job is
    /// running there, so one run here cannot finish out of order with it.
    in_hand: Arc<AtomicU64>,
    /// The planted defect that acknowledges before syncing lives in the
    /// syncer: with it, every job goes there.
    ack_first: bool,
    pub(super) counts: SyncCounts,
}

impl Syncer {
    pub(super) fn spawn(disk: Arc<dyn Disk>, acks: Arc<AckSender>) -> std::io::Result<Syncer> {
        let (tx, rx) = crossbeam_channel::bounded::<SyncJob>(SYNC_JOBS_QUEUED);
        let in_hand = Arc::new(AtomicU64::new(0));
        let ack_first = crate::core::mirror::acks_before_sync(crate::core::planted_in_process());
        let done = in_hand.clone();
        let handle = std::thread::Builder::new().name("filerep-syncer".into()).spawn(move || {
            while let Ok(mut job) = rx.recv() {
                let mut jobs = 1;
                while let Ok(more) = rx.try_recv() {
                    job.merge(more);
                    jobs += 1;
                }
                if ack_first {
                    // The defect: the flush is acknowledged before it is durable.
                    acks.marks.synced.fetch_max(job.through, Ordering::SeqCst);
                    if let Some(d) = job.durable_through {
                        acks.marks.durable.fetch_max(d, Ordering::SeqCst);
                    }
                    if !acks.send() {
                        break;
                    }
                }
                if let Err(e) = acks.run_sync(&job, disk.as_ref()) {
                    return Some(e);
                }
                done.fetch_sub(jobs, Ordering::SeqCst);
                if !acks.send() {
                    break;
                }
            }
            None
        })?;
        Ok(Syncer { tx, handle, in_hand, ack_first, counts: SyncCounts::default() })
    }

    /// Run `job` here if it is what a flush asked for, after little was
    /// received since the last job (`received_since`, bytes), and the
    /// syncer has nothing in hand (the caller then acknowledges); else hand
    /// it over. A full job (a checkpoint: every dirty file) or a job after
    /// much data goes to the syncer, so applying goes on meanwhile: an
    /// fdatasync of megabytes takes milliseconds, and writers waiting for
    /// their acknowledgement would wait for it. Err: it ran here and failed.
    pub(super) fn sync(
        &mut self,
        job: SyncJob,
        received_since: u64,
        disk: &dyn Disk,
        acks: &AckSender,
    ) -> std::result::Result<(), String> {
        let here = !self.ack_first && job.durable_through.is_none() && received_since <= INLINE_SYNC_AFTER;
        if here && self.in_hand.load(Ordering::SeqCst) == 0 {
            self.counts.on_session += 1;
            return acks.run_sync(&job, disk);
        }
        self.counts.on_syncer += 1;
        self.in_hand.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(job);
        Ok(())
    }

    /// Wait for the jobs handed over; the error of one that failed.
    pub(super) fn finish(self) -> Option<String> {
        drop(self.tx);
        self.handle.join().unwrap_or_else(|_| Some("syncer panicked".into()))
    }
}
