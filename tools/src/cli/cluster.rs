//! `filerep segment` and `filerep arbiter`: the two long-running processes
//! of a mirrored cluster.

use filerep::cluster::probe::{ArbiterProcess, ProbeConfig};
use filerep::cluster::segment::{Segment, SegmentConfig};
use filerep::protocol::handshake::ClusterKey;
use std::path::PathBuf;
use std::time::Duration;

/// The line each process prints on stdout once it serves (for scripts and tests).
pub const SEGMENT_READY: &str = "filerep segment ready, control on ";
pub const ARBITER_READY: &str = "filerep arbiter ready on ";

#[derive(clap::Args)]
pub struct SegmentCmd {
    /// The segment's settings (JSON; see docs/operations.md).
    #[arg(long)]
    config: PathBuf,
}

#[derive(clap::Args)]
pub struct ArbiterCmd {
    /// The catalog file (JSON); rewritten atomically on every change.
    #[arg(long, required_unless_present = "coordinator")]
    catalog: Option<PathBuf>,
    /// The catalog and the leadership on etcd instead of the file:
    /// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX` (as `filerep init
    /// --coordinator` recorded it). Several arbiters may run; one acts.
    #[arg(long, conflicts_with = "catalog")]
    coordinator: Option<String>,
    /// File holding the cluster key.
    #[arg(long)]
    key_file: PathBuf,
    /// Address for the segments' questions (port 0 picks one; it is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Milliseconds between probe rounds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Milliseconds one probe may take.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Failed probes retried before a segment is declared down.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Milliseconds a new control connection may take to send its request before it is closed.
    #[arg(long, default_value_t = 2000)]
    handshake_timeout_ms: u64,
    /// Segments probed at once (1 to 1024): a hung segment costs its own
    /// timeout, not every other segment's.
    #[arg(long, default_value_t = filerep::cluster::probe::DEFAULT_PROBE_THREADS)]
    probe_threads: usize,
}

fn stop_on_signals(stop: &filerep::io::admission::Stop) -> Result<(), String> {
    crate::stop_on_signals(stop).map_err(|e| format!("cannot handle signals: {e}"))
}

pub fn run_segment(c: SegmentCmd) -> Result<(), String> {
    // A defect planted for the power-cut tests: refused if unknown, said loudly if known.
    if let Some(bug) = filerep::core::PlantedBug::from_env()? {
        tracing::warn!(
            bug = bug.name(),
            "{} plants a defect in this segment, for a test: never run a segment in service so",
            filerep::core::PLANTED_BUG_ENV
        );
    }
    let cfg = SegmentConfig::load(&c.config).map_err(|e| e.to_string())?;
    let seg = Segment::open(cfg).map_err(|e| e.to_string())?;
    stop_on_signals(&seg.stop_signal())?;
    let addr = seg.control_addr().map_err(|e| e.to_string())?;
    println!("{SEGMENT_READY}{addr}");
    seg.run().map_err(|e| e.to_string())
}

pub fn run_arbiter(c: ArbiterCmd) -> Result<(), String> {
    let key = ClusterKey::from_file(&c.key_file).map_err(|e| e.to_string())?;
    let cfg = ProbeConfig {
        catalog: c.catalog.unwrap_or_default(),
        key,
        listen: c.listen,
        interval: Duration::from_millis(c.interval_ms),
        timeout: Duration::from_millis(c.timeout_ms),
        retries: c.retries,
        handshake_timeout: Duration::from_millis(c.handshake_timeout_ms),
        probe_threads: c.probe_threads,
        coordinator: c.coordinator,
    };
    let arb = ArbiterProcess::open(cfg).map_err(|e| e.to_string())?;
    stop_on_signals(&arb.stop_signal())?;
    let addr = arb.local_addr().map_err(|e| e.to_string())?;
    println!("{ARBITER_READY}{addr}");
    arb.run().map_err(|e| e.to_string())
}
