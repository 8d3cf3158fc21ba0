//! `filerep segment` and `filerep arbiter`: the two long-running processes
//! of a mirrored cluster.

use filerep::cluster::probe::{ArbiterProcess, ProbeConfig};
use filerep::cluster::segment::{Segment, SegmentConfig, SegmentHandle};
use filerep::mount::{LogFiles, MountOptions, Unmounter, MOUNT_READY};
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
    /// Serve filespace NAME as a file system at MOUNTPOINT from this
    /// process (repeatable; docs/mount.md): FUSE requests call the segment
    /// directly, with no client socket between them.
    #[arg(long, value_name = "NAME=MOUNTPOINT")]
    mount: Vec<String>,
    /// Present every file and directory of the mounts as owned by this user id.
    #[arg(long, requires = "mount")]
    mount_uid: Option<u32>,
    /// Present every file and directory of the mounts as owned by this group id.
    #[arg(long, requires = "mount")]
    mount_gid: Option<u32>,
    /// Let users other than the one running the segment use the mounts.
    #[arg(long, requires = "mount")]
    mount_allow_other: bool,
    /// Threads serving FUSE requests, per mount.
    #[arg(long, default_value_t = 8, requires = "mount")]
    mount_threads: usize,
    /// Clear a dead mount left on a mountpoint (its process was killed) before mounting.
    #[arg(long, requires = "mount")]
    mount_force: bool,
    /// A database's log files in the mounts (repeatable; replaces the
    /// defaults `**/pg_wal/*` and `**/*-wal`): glob patterns relative to
    /// the filespace root, opened without the kernel's write-back cache so
    /// that a commit's write and fsync are two requests (docs/mount.md).
    #[arg(long, value_name = "GLOB", requires = "mount")]
    mount_log_files: Vec<String>,
    /// No file of the mounts is a log file: every file uses the write-back cache.
    #[arg(long, requires = "mount", conflicts_with = "mount_log_files")]
    mount_no_log_files: bool,
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
    // Every mount is checked before the segment opens: a bad one changes
    // nothing. Those of the configuration first, then those of the command line.
    let mut mounts = Vec::with_capacity(cfg.mounts.len() + c.mount.len());
    let mut own = Vec::with_capacity(cfg.mounts.len());
    for (i, m) in cfg.mounts.iter().enumerate() {
        let at = format!("segment config {}, mounts[{i}]", c.config.display());
        let mut opts = MountOptions::from_segment(&cfg, &c.config, &m.filespace, m.mountpoint.clone())
            .map_err(|e| format!("{at}: {e}"))?;
        opts.uid = m.uid;
        opts.gid = m.gid;
        opts.allow_other = m.allow_other;
        opts.threads = m.threads;
        if let Some(patterns) = &m.log_files {
            opts.log_files = LogFiles::new(patterns).map_err(|e| format!("{at}: log_files: {e}"))?;
        }
        refuse_inside_a_filespace(&opts, &cfg).map_err(|e| format!("{at}: {e}"))?;
        own.push(at);
        mounts.push(opts);
    }
    for spec in &c.mount {
        let Some((name, mountpoint)) = spec.split_once('=').filter(|(n, m)| !n.is_empty() && !m.is_empty()) else {
            return Err(format!("--mount {spec}: give NAME=MOUNTPOINT (a filespace name and a directory)"));
        };
        let mut opts = MountOptions::from_segment(&cfg, &c.config, name, PathBuf::from(mountpoint))
            .map_err(|e| format!("--mount {spec}: {e}"))?;
        opts.uid = c.mount_uid;
        opts.gid = c.mount_gid;
        opts.allow_other = c.mount_allow_other;
        opts.threads = c.mount_threads;
        opts.force = c.mount_force;
        if c.mount_no_log_files {
            opts.log_files = LogFiles::none();
        } else if !c.mount_log_files.is_empty() {
            opts.log_files = LogFiles::new(&c.mount_log_files).map_err(|e| format!("--mount-log-files: {e}"))?;
        }
        if !opts.force {
            opts.check().map_err(|e| format!("--mount {spec}: {e}"))?;
        }
        mounts.push(opts);
    }
    if let Some((a, b)) = mounts.iter().enumerate().find_map(|(i, a)| {
        mounts[..i].iter().find(|b| b.mountpoint == a.mountpoint || b.filespace == a.filespace).map(|b| (a, b))
    }) {
        return Err(format!(
            "filespace {} at {} and filespace {} at {}: each filespace and each mountpoint once (the segment config's mounts and --mount together)",
            b.filespace_name,
            b.mountpoint.display(),
            a.filespace_name,
            a.mountpoint.display()
        ));
    }
    // The configuration's mountpoints are this segment's own, named by the
    // cluster tools: a dead mount a killed run of it left there is cleared
    // (a live one is left alone, and refused by the check), a missing
    // directory made; only after everything above passed.
    for (opts, at) in mounts.iter().zip(&own) {
        filerep::mount::clear_dead_mount(&opts.mountpoint).map_err(|e| format!("{at}: {e}"))?;
        std::fs::create_dir_all(&opts.mountpoint)
            .map_err(|e| format!("{at}: cannot make the mountpoint {}: {e}", opts.mountpoint.display()))?;
        opts.check().map_err(|e| format!("{at}: {e}"))?;
    }
    let seg = Segment::open(cfg).map_err(|e| e.to_string())?;
    stop_on_signals(&seg.stop_signal())?;
    let addr = seg.control_addr().map_err(|e| e.to_string())?;
    let handle = seg.start().map_err(|e| e.to_string())?;
    let served = match serve_mounts(&mounts, &handle) {
        Ok(s) => s,
        Err(e) => {
            handle.close();
            return Err(e);
        }
    };
    // One write: a reader that takes only the first line (and closes the
    // pipe) cannot make a later line fail.
    let mut ready = format!("{SEGMENT_READY}{addr}\n");
    for (_, mountpoint) in &served {
        ready.push_str(&format!("{MOUNT_READY}{}\n", mountpoint.display()));
    }
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, ready.as_bytes()).and_then(|_| std::io::Write::flush(&mut out));
    drop(out);
    handle.wait();
    // The segment has stopped (calls through a mount fail with EIO from
    // then on): unmount, lazily where a file is still open there.
    for (mut unmounter, mountpoint) in served {
        if let Err(e) = unmounter.unmount() {
            tracing::error!(error = %e, mountpoint = %mountpoint.display(), "cannot unmount");
        }
    }
    Ok(())
}

/// Refuse a mountpoint that is, once symbolic links are resolved, inside a
/// filespace root of the segment or over one, before it is made: its
/// directory would be made in the replicated data. (What does not exist
/// yet is resolved through its longest existing prefix, as `filerep init`
/// resolves data directories: `hosts::Resolver`.)
fn refuse_inside_a_filespace(opts: &MountOptions, cfg: &SegmentConfig) -> Result<(), String> {
    // Configuration mountpoints are absolute without . or .. (checked at
    // load); a path the resolver refuses is compared as written.
    let mut resolver = filerep::cluster::hosts::Resolver::default();
    let mut resolved = |p: &std::path::Path| resolver.resolve(p).unwrap_or_else(|_| p.to_path_buf());
    let mp = resolved(&opts.mountpoint);
    for f in cfg.filespaces().map_err(|e| e.to_string())? {
        let root = resolved(&f.root);
        if mp.starts_with(&root) || root.starts_with(&mp) {
            return Err(format!(
                "mountpoint {} (which is {} once symbolic links are resolved) overlaps filespace {}'s root {}; mount outside it",
                opts.mountpoint.display(),
                mp.display(),
                f.name,
                root.display()
            ));
        }
    }
    Ok(())
}

/// Mount each filespace and serve it from threads of this process; on a
/// failure, unmount those already mounted.
fn serve_mounts(mounts: &[MountOptions], handle: &SegmentHandle) -> Result<Vec<(Unmounter, PathBuf)>, String> {
    let mut served: Vec<(Unmounter, PathBuf)> = Vec::with_capacity(mounts.len());
    let result = (|| {
        for opts in mounts {
            let mut session = filerep::mount::mount_in_process(opts, handle.storage())
                .map_err(|e| format!("--mount {}={}: {e}", opts.filespace_name, opts.mountpoint.display()))?;
            let mountpoint = session.mountpoint().to_path_buf();
            served.push((session.unmounter(), mountpoint.clone()));
            std::thread::Builder::new()
                .name(format!("filerep-mount-{}", opts.filespace_name))
                .spawn(move || match session.run() {
                    Ok(()) => tracing::info!(mountpoint = %mountpoint.display(), "unmounted"),
                    Err(e) => tracing::error!(error = %e, "the mount stopped serving"),
                })
                .map_err(|e| format!("cannot start a mount thread: {e}"))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(served),
        Err(e) => {
            for (mut unmounter, _) in served {
                let _ = unmounter.unmount();
            }
            Err(e)
        }
    }
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
    outln!("{ARBITER_READY}{addr}");
    arb.run().map_err(|e| e.to_string())
}
