//! The `filerep` command: thin wrappers that parse arguments, call the
//! library and print.

// `outln!`: operator output that a closed pipe stops instead of panicking.
#[macro_use]
extern crate filerep_tools;

mod cli;

use cli::{catalog, cluster, demo, mount, ops, recover, state, verify};

use clap::{Parser, Subcommand};
use filerep::config::{check_block_size, Filespace, StreamTuning, SyncLevel};
use filerep::protocol::handshake::ClusterKey;
use filerep::runtime::mirror::{MirrorConfig, MirrorServer};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "filerep",
    version,
    about = "Block-level file replication: primary and mirror for a segment's data directory"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a mirror daemon: accept a primary's stream and apply it to this host's filespaces.
    Mirror(MirrorCmd),
    /// Start a real mirror daemon and a primary on loopback, run a randomized workload, prove the mirror identical.
    Demo(demo::DemoCmd),
    /// Block-shipping benchmark: a local double-write baseline, then a replicated pair, on the same disk.
    Bench(BenchCmd),
    /// Run the deterministic simulator over a range of seeds.
    Sim(SimCmd),
    /// Compare two copies of a filespace offline (per-file xxh3).
    Compare(CompareCmd),
    /// Run a segment storage process: it serves as primary or mirror as the arbiter orders.
    Segment(cluster::SegmentCmd),
    /// Run the arbiter (fault probe): probe every segment, decide roles and modes, keep the catalog.
    Arbiter(cluster::ArbiterCmd),
    /// Resynchronize pairs that left Synchronized (incremental, or -F full) while their primaries serve.
    Recover(recover::RecoverCmd),
    /// Create a cluster directory: hosts, segments per host, ports, data directories, optionally mirrors.
    Init(ops::InitCmd),
    /// Start a cluster's segment processes and its arbiter (those of one host with --host).
    Start(ops::StartCmd),
    /// Stop a cluster in order: the arbiter, then primaries, then mirrors.
    Stop(ops::StopCmd),
    /// Add mirrors to the contents that have none (gpaddmirrors): -p OFFSET [-s], -o FILE, or -i FILE.
    Addmirrors(ops::AddMirrorsCmd),
    /// Show the cluster's state (gpstate): summary, -m mirrors, -c mapping, -s details, --catalog.
    State(state::StateCmd),
    /// Expose one filespace of the acting primary as a FUSE file system: every change is replicated.
    Mount(mount::MountCmd),
    /// Compare synchronized pairs online, block by block, with no false mismatches under load (--repair: fix them).
    Verify(verify::VerifyCmd),
    /// The catalog and the cluster's other state files: check, restore when damaged, seal, show.
    Catalog(catalog::CatalogCmd),
}

#[derive(clap::Args)]
struct MirrorCmd {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// A filespace as NAME=DIRECTORY, in the primary's order; repeat for each.
    #[arg(long = "filespace", required = true)]
    filespaces: Vec<String>,
    /// File holding the cluster key (at least 16 bytes).
    #[arg(long)]
    key_file: PathBuf,
    #[arg(long)]
    cluster_id: u64,
    /// The segment's content id.
    #[arg(long, default_value_t = 0)]
    content: u32,
    #[arg(long, default_value_t = 32768)]
    block_size: u32,
    /// Lowest generation accepted (streams from older generations are refused).
    #[arg(long, default_value_t = 1)]
    generation: u64,
    /// Use the std I/O backend instead of io_uring.
    #[arg(long)]
    std_io: bool,
    /// Write aligned blocks with O_DIRECT (the NVMe path: the page cache
    /// skipped; a sync is still durable). Refused where the file system cannot.
    #[arg(long)]
    direct: bool,
    /// Keep the generation and fault state here across restarts.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Milliseconds a new connection may take to prove the cluster key before it is closed.
    #[arg(long, default_value_t = 2000)]
    handshake_timeout_ms: u64,
}

#[derive(clap::Args)]
struct BenchCmd {
    #[arg(long, default_value_t = 8)]
    writers: usize,
    #[arg(long, default_value_t = 32768)]
    block_size: u32,
    /// applied (default), durable, async or async:WINDOW
    #[arg(long, default_value = "applied")]
    sync_level: String,
    /// Seconds for each side (baseline and replicated): about twice this in all.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The sides alternate this many times (each round gets an equal share).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Blocks per phase instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// Directory for the data (put it on the disk under test). Default: a temporary directory here.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Blocks in each writer's file (the working set wraps around it).
    #[arg(long, default_value_t = 2048)]
    file_blocks: u64,
    /// Each writer syncs after this many writes (0: never).
    #[arg(long, default_value_t = 64)]
    flush_every: u64,
    #[arg(long)]
    std_io: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure writes in change tracking (mirror down) beside local-only writes.
    #[arg(long)]
    mirror_down: bool,
    /// Replicate without change tracking configured (no activity log), unlike a segment.
    #[arg(long)]
    no_activity_log: bool,
    /// Two hosts on one machine: this process (the primary) on CPU 0, the
    /// mirror daemon on CPU 1, and a baseline that writes each block once,
    /// on CPU 0 (pinned_ratio).
    #[arg(long, conflicts_with_all = ["mirror_down", "resync", "cluster"])]
    pin: bool,
    /// Two real hosts: replicate to a `filerep mirror` already running on
    /// the other host at HOST:PORT (its filespace named `bench`, the same
    /// block size, --cluster-id 48716 unless --mirror-cluster-id says
    /// otherwise; docs/performance.md). The baseline writes each block
    /// once here, and each round also times a raw stream to that host
    /// (network_mb_s, remote_ratio).
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["pin", "mirror_down", "resync", "cluster"], requires = "key_file")]
    mirror: Option<String>,
    /// With --mirror: the cluster key file the remote mirror was given.
    #[arg(long, requires = "mirror")]
    key_file: Option<PathBuf>,
    /// O_DIRECT for aligned block writes on every side (baseline, primary,
    /// mirror daemon; start a --mirror daemon with --direct too): the NVMe
    /// path (direct_ratio).
    #[arg(long, conflicts_with_all = ["mirror_down", "resync", "cluster"])]
    direct: bool,
    /// Each round also runs the bare pair: the same writes shipped with
    /// nothing but the copies, the sends and the waits (no engine, checksum
    /// or log; a TCP connection and a mirror thread per writer), what this
    /// machine allows a pair (bare_ratio, replicated_over_bare).
    #[arg(long, conflicts_with_all = ["mirror", "mirror_down", "resync", "cluster"])]
    bare: bool,
    /// With --mirror: the remote mirror's --cluster-id.
    #[arg(long, requires = "mirror", default_value_t = filerep_tools::bench::BENCH_CLUSTER_ID)]
    mirror_cluster_id: u64,
    /// Measure resync (1 %, 10 %, 100 % of the blocks changed, and a full resync) beside rsync.
    #[arg(long)]
    resync: bool,
    /// With --resync: the data set in GiB.
    #[arg(long, default_value_t = 2.0)]
    data_gib: f64,
    /// Time the cluster tools and the arbiter on a loopback cluster of this
    /// many mirrored primary segments (addmirrors, verify, idle CPU, a killed
    /// and a hung host, recover, recover -r).
    #[arg(long)]
    cluster: Option<u32>,
    /// With --cluster: host addresses (127.0.0.2 onwards) the segments are spread over.
    #[arg(long, default_value_t = 4)]
    cluster_hosts: u32,
    /// With --cluster: MiB written to each primary before its mirror is added.
    #[arg(long, default_value_t = 4)]
    cluster_mib: u32,
    /// With --cluster: the first primary port on each host.
    #[arg(long, default_value_t = 30000)]
    base_port: u16,
    /// With --cluster: pairs the cluster tools handle at once (their -B; default: theirs).
    #[arg(short = 'B', long)]
    batch: Option<u32>,
    /// With --cluster: history entries put in the catalog before the cluster starts.
    #[arg(long, default_value_t = 0)]
    cluster_history: u32,
    /// With --cluster: time this `filerep` binary's cluster instead of this one's (compare two versions).
    #[arg(long)]
    cluster_exe: Option<PathBuf>,
    /// Time the arbiter's probe round over 10, 100 and this many cheap
    /// segments that answer probes only (against its default interval).
    #[arg(long, conflicts_with_all = ["cluster", "resync", "mirror", "direct"])]
    probe_round: Option<usize>,
}

#[derive(clap::Args)]
struct SimCmd {
    /// Run this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Otherwise run this many seeds starting at --first.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Calls per seed (default: 400, or 300 with --faults).
    #[arg(long)]
    operations: Option<usize>,
    /// Fault schedules: crashes, disconnects, partitions, torn writes, fsync errors, a full disk.
    #[arg(long)]
    faults: bool,
    /// With --faults: run with a deliberate defect by name, to see the checks
    /// catch it (an unknown name lists them all).
    #[arg(long, requires = "faults")]
    bug: Option<String>,
    /// With --faults: namespace calls only in the first third of each
    /// schedule, data calls after (a steady OLTP-like workload).
    #[arg(long, requires = "faults")]
    steady: bool,
    /// With --faults: while a resync runs, half the writers' calls rename
    /// files and directories.
    #[arg(long, requires = "faults")]
    rename_storm: bool,
    /// With --faults: half the writers' calls are queued, as the mount
    /// makes them (they return once made and on their way; only a later
    /// sync promises them).
    #[arg(long, requires = "faults")]
    queued: bool,
}

#[derive(clap::Args)]
struct CompareCmd {
    /// NAME=PRIMARY_DIR=MIRROR_DIR; repeat per filespace.
    #[arg(long = "filespace", required = true)]
    filespaces: Vec<String>,
    #[arg(long)]
    json: bool,
}

/// `default` unless FILEREP_LOG says otherwise.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FILEREP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if tracing::subscriber::set_global_default(subscriber.finish()).is_ok()
        && log::set_boxed_logger(Box::new(LogBridge(tracing_log::LogTracer::new()))).is_ok()
    {
        log::set_max_level(tracing_log::AsLog::as_log(&tracing::level_filters::LevelFilter::current()));
    }
}

/// Stop on SIGTERM or SIGINT: the handler sets the flag, then writes the
/// wake-up that the accept loops block on.
fn stop_on_signals(stop: &filerep::io::admission::Stop) -> std::io::Result<()> {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.flag().clone())?;
        signal_hook::low_level::pipe::register(sig, stop.wake_handle()?)?;
    }
    Ok(())
}

/// Records of crates that log through `log` (the FUSE library), passed on
/// to tracing; those that report normal client behaviour go at debug level.
struct LogBridge(tracing_log::LogTracer);

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.level() <= log::Level::Warn && filerep::mount::normal_fuse_message(record.target(), record.args()) {
            let quiet = log::Record::builder()
                .args(*record.args())
                .level(log::Level::Debug)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            return self.0.log(&quiet);
        }
        self.0.log(record)
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// Dirty files stay open until synced, on both sides: use the hard limit
/// on descriptors rather than the (often 1024) soft one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator injects failures on purpose: their error logs are noise there.
    init_tracing(if matches!(cli.cmd, Cmd::Sim(_)) { "off" } else { "warn" });
    raise_fd_limit();
    let r = match cli.cmd {
        Cmd::Mirror(c) => run_mirror(c),
        Cmd::Demo(c) => demo::run(c),
        Cmd::Bench(c) => run_bench(c),
        Cmd::Sim(c) => run_sim(c),
        Cmd::Compare(c) => run_compare(c),
        Cmd::Segment(c) => cluster::run_segment(c).map(|_| ExitCode::SUCCESS).map_err(Into::into),
        Cmd::Arbiter(c) => cluster::run_arbiter(c).map(|_| ExitCode::SUCCESS).map_err(Into::into),
        Cmd::Recover(c) => recover::run(c).map_err(Into::into),
        Cmd::Init(c) => ops::init(c).map_err(Into::into),
        Cmd::Start(c) => ops::start(c).map_err(Into::into),
        Cmd::Stop(c) => ops::stop(c).map_err(Into::into),
        Cmd::Addmirrors(c) => ops::addmirrors(c).map_err(Into::into),
        Cmd::State(c) => state::run(c).map_err(Into::into),
        Cmd::Mount(c) => mount::run(c).map(|_| ExitCode::SUCCESS).map_err(Into::into),
        Cmd::Verify(c) => verify::run(c).map_err(Into::into),
        Cmd::Catalog(c) => catalog::run(c).map_err(Into::into),
    };
    let code = match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("filerep: {e}");
            ExitCode::from(2)
        }
    };
    // Output cut short other than by its reader (a full disk behind a
    // redirection): not a success, whatever the command found.
    match filerep_tools::output::failure() {
        Some(why) => {
            eprintln!("filerep: writing the output failed ({why}); what was written is incomplete");
            ExitCode::from(2)
        }
        None => code,
    }
}

type CmdResult = Result<ExitCode, Box<dyn std::error::Error>>;

fn run_mirror(c: MirrorCmd) -> CmdResult {
    let filespaces = c.filespaces.iter().map(|s| Filespace::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let key = ClusterKey::from_file(&c.key_file)?;
    check_block_size(c.block_size)?;
    let server = MirrorServer::new(MirrorConfig {
        cluster_id: c.cluster_id,
        content_id: c.content,
        block_size: c.block_size,
        filespaces,
        key,
        generation: c.generation,
        tuning: StreamTuning { handshake_timeout: Duration::from_millis(c.handshake_timeout_ms), ..Default::default() },
        prefer_uring: !c.std_io,
        direct: c.direct,
        state_dir: c.state_dir,
    })?;
    let listener = std::net::TcpListener::bind(&c.listen).map_err(|e| format!("cannot listen on {}: {e}", c.listen))?;
    let addr = listener.local_addr()?;
    let stop = filerep::io::admission::Stop::new()?;
    stop_on_signals(&stop)?;
    tracing::info!(%addr, backend = server.disk_name(), "mirror ready");
    outln!("{}{addr}", filerep_tools::process::READY_PREFIX);
    server.serve(&listener, &stop)?;
    Ok(ExitCode::SUCCESS)
}

fn run_bench(c: BenchCmd) -> CmdResult {
    let sync_level = SyncLevel::parse(&c.sync_level)?;
    if !(c.duration > 0.0 && c.duration <= 3600.0) {
        return Err(format!("--duration {}: give 0 < seconds <= 3600", c.duration).into());
    }
    let tmp;
    let dir = match c.dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new().prefix("filerep-bench").tempdir_in(".")?;
            tmp.path().to_path_buf()
        }
    };
    if let Some(max) = c.probe_round {
        let rows = filerep_tools::bench_probe::run(max, &dir)?;
        if c.json {
            outln!("{}", serde_json::to_string_pretty(&serde_json::json!({ "probe_rounds": rows }))?);
        } else {
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.segments.to_string(),
                        format!("{:.1}", r.first_round_ms),
                        format!("{:.1}", r.round_ms_median),
                        format!("{:.1}", r.round_ms_max),
                        format!("{}{}", r.interval_ms, if r.within_interval { "" } else { " (EXCEEDED)" }),
                    ]
                })
                .collect();
            cli::state::table(
                &["segments", "first round (ms)", "round median (ms)", "round max (ms)", "interval (ms)"],
                &body,
            );
        }
        return Ok(if rows.iter().all(|r| r.within_interval) { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    if let Some(segments) = c.cluster {
        let cc = filerep_tools::bench_cluster::ClusterBenchConfig {
            segments,
            hosts: c.cluster_hosts,
            mib_per_segment: c.cluster_mib,
            dir: dir.clone(),
            base_port: c.base_port,
            exe: std::env::current_exe()?,
            batch: c.batch,
            history: c.cluster_history,
            tools: c.cluster_exe.clone(),
            verbose: !c.json,
        };
        let r = filerep_tools::bench_cluster::run(&cc)?;
        if c.json {
            outln!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            outln!(
                "{} mirrored segments over {} hosts, {} MiB each, {} history entries",
                r.segments,
                r.hosts,
                r.mib_per_segment,
                r.history_entries
            );
            for (what, v) in [
                ("addmirrors (s)", r.addmirrors_s),
                ("verify (s)", r.verify_s),
                ("idle: all segments (% of a core)", r.idle_segments_cpu_pct),
                ("idle: arbiter (% of a core)", r.idle_arbiter_cpu_pct),
                ("killed host: every pair serving (s)", r.killed_host_serving_s),
                ("recover (s)", r.recover_s),
                ("recover -r (s)", r.recover_rebalance_s),
                ("hung host: every pair taken over (s)", r.hung_host_takeover_s),
                ("state --json while hung (s)", r.state_json_hung_s),
            ] {
                outln!("{what:<40} {v:>8.2}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = filerep_tools::bench::BenchConfig {
        writers: c.writers,
        block_size: c.block_size,
        sync_level,
        phase: Duration::from_secs_f64(c.duration),
        rounds: c.rounds,
        count: c.count,
        dir,
        file_blocks: c.file_blocks,
        flush_every: c.flush_every,
        prefer_uring: !c.std_io,
        exe: std::env::current_exe()?,
        progress: !c.json,
        activity_log: !c.no_activity_log,
        pin: c.pin,
        direct: c.direct,
        bare: c.bare,
        remote: match (&c.mirror, &c.key_file) {
            (Some(addr), Some(key_file)) => Some(filerep_tools::bench::RemoteMirror {
                addr: addr.clone(),
                key: ClusterKey::from_file(key_file)?,
                cluster_id: c.mirror_cluster_id,
            }),
            _ => None,
        },
    };
    if !c.json {
        eprintln!(
            "bench: {} writers, {} B blocks, sync level {}, {} per side in {} rounds, data in {}",
            cfg.writers,
            cfg.block_size,
            sync_level.name(),
            match cfg.count {
                Some(n) => format!("{n} blocks"),
                None => format!("{:.0} s", c.duration),
            },
            cfg.rounds,
            cfg.dir.display()
        );
    }
    if c.resync {
        if !(c.data_gib > 0.0 && c.data_gib <= 1024.0) {
            return Err(format!("--data-gib {}: give 0 < GiB <= 1024", c.data_gib).into());
        }
        let rc = filerep_tools::bench_resync::ResyncBenchConfig {
            dir: cfg.dir.clone(),
            data_bytes: (c.data_gib * (1u64 << 30) as f64) as u64,
            block_size: c.block_size,
            prefer_uring: !c.std_io,
            exe: cfg.exe.clone(),
            verbose: !c.json,
        };
        let r = filerep_tools::bench_resync::run(&rc)?;
        if c.json {
            outln!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            let gib = r.data_bytes as f64 / (1u64 << 30) as f64;
            outln!("data set: {gib:.1} GiB in {} files of {} B blocks", r.files, r.block_size);
            outln!("{:<40} {:>10}", "", "seconds");
            for (what, s) in [
                ("incremental resync, 1 % changed", r.incremental_1pct_s),
                ("rsync -a --inplace --no-whole-file, 1 %", r.rsync_inplace_1pct_s),
                ("incremental resync, 10 % changed", r.incremental_10pct_s),
                ("incremental resync, 100 % changed", r.incremental_100pct_s),
                ("full resync into an empty directory", r.full_s),
                ("rsync -a -W into an empty directory", r.rsync_whole_s),
                ("the same, then syncfs (durable)", r.rsync_whole_sync_s),
            ] {
                outln!("{what:<40} {s:>10.2}");
            }
            outln!("1 %: {:.1}x faster than rsync --inplace (target 20x)", r.speedup_1pct);
            outln!(
                "full: {:.2}x faster than rsync -W, {:.2}x faster than rsync -W and a sync (target 1.5x)",
                r.speedup_full,
                r.speedup_full_sync
            );
            outln!(
                "full: {:.0} MB/s, {:.2} of the disk's sequential write rate ({:.0} MB/s, O_DIRECT, 1 MiB x 32; target 0.8)",
                r.full_resync_mb_s, r.full_over_disk, r.disk_seq_write_mb_s
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if c.mirror_down {
        let r = filerep_tools::bench_mirror_down::run_mirror_down(&cfg)?;
        if c.json {
            outln!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            outln!("{:<34} {:>12} {:>16} {:>8}", "", "local only", "change tracking", "ratio");
            outln!(
                "{:<34} {:>12.1} {:>16.1} {:>8.2}",
                "throughput (MB/s)",
                r.local_mb_s,
                r.change_tracking_mb_s,
                r.ratio
            );
            outln!("{:<34} {:>12.0} {:>16.0}", "write p50 (us)", r.local_write_p50_us, r.change_tracking_write_p50_us);
            outln!(
                "change-log: {} distinct blocks, {} bytes, {} after compaction ({:.1} bytes a block)",
                r.changelog_distinct_blocks,
                r.changelog_bytes,
                r.changelog_bytes_after_compaction,
                r.changelog_bytes_after_compaction as f64 / r.changelog_distinct_blocks.max(1) as f64
            );
            outln!("io backend: {}", r.io_backend);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = filerep_tools::bench::run(&cfg)?;
    if c.json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let baseline = if r.baseline_copies == 1 { "one copy" } else { "baseline" };
        outln!("{:<34} {:>12} {:>12} {:>8}", "", baseline, "replicated", "ratio");
        outln!(
            "{:<34} {:>12.1} {:>12.1} {:>8.2}",
            "throughput (MB/s)",
            r.baseline_double_write_mb_s,
            r.replicated_mb_s,
            r.throughput_ratio
        );
        outln!("{:<34} {:>12.0} {:>12.0}", "blocks/s", r.baseline_blocks_s, r.replicated_blocks_s);
        outln!("{:<34} {:>12.0} {:>12.0}", "write p50 (us)", r.baseline_write_p50_us, r.write_p50_us);
        outln!("{:<34} {:>12.0} {:>12.0}", "write p99 (us)", r.baseline_write_p99_us, r.write_p99_us);
        outln!("{:<34} {:>12} {:>12.0}", "write p99.9 (us)", "", r.write_p999_us);
        outln!(
            "{:<34} {:>12.0} {:>12.0} {:>8.2}",
            "fdatasync / flush p50 (us)",
            r.local_fdatasync_p50_us,
            r.flush_p50_us,
            r.flush_ratio
        );
        outln!("{:<34} {:>12.0} {:>12.0}", "fdatasync / flush p99 (us)", r.local_fdatasync_p99_us, r.flush_p99_us);
        outln!(
            "{:<34} {:>12.1} {:>12.1} {:>8.2}",
            "CPU per block, machine (us)",
            r.baseline_cpu_us_per_block,
            r.replicated_cpu_us_per_block,
            r.cpu_ratio
        );
        match r.replicated_mirror_cpu_us_per_block {
            Some(m) => outln!(
                "{:<34} {:>12} {:>12.1} (primary process {:.1}, mirror daemon {:.1})",
                "",
                "",
                r.replicated_primary_cpu_us_per_block + m,
                r.replicated_primary_cpu_us_per_block,
                m
            ),
            None => outln!(
                "{:<34} {:>12} {:>12.1} (primary process; the mirror's host is not counted)",
                "",
                "",
                r.replicated_primary_cpu_us_per_block
            ),
        }
        outln!(
            "{:<34} {:>12} {:>12.1} ({:.3}% over the payload)",
            "wire bytes per block",
            "",
            r.wire_bytes_per_block,
            r.wire_overhead_pct
        );
        if let Some(p) = r.pinned_ratio {
            outln!("pinned (primary on CPU 0, mirror on CPU 1): {p:.2} of one copy's throughput");
        }
        if let Some(d) = r.direct_ratio {
            outln!("O_DIRECT on every side: replicated is {d:.2} of the baseline's throughput");
        }
        if let (Some(mb), Some(ratio), Some(cpu), Some(of)) =
            (r.bare_mb_s, r.bare_ratio, r.bare_cpu_us_per_block, r.replicated_over_bare)
        {
            outln!(
                "bare pair (copies, sends and waits only): {mb:.1} MB/s, {ratio:.2} of the baseline, \
                 {cpu:.1} us CPU per block; replicated is {of:.2} of it"
            );
        }
        if let (Some(m), Some(n), Some(x)) = (&r.mirror, r.network_mb_s, r.remote_ratio) {
            outln!("mirror at {m}: network {n:.1} MB/s; replicated is {x:.2} of min(local disk, network)");
        }
        outln!("io backend: {}", r.io_backend);
    }
    Ok(ExitCode::SUCCESS)
}

fn run_sim(c: SimCmd) -> CmdResult {
    let seeds: Vec<u64> = match c.seed {
        Some(s) => vec![s],
        None => (c.first..c.first.saturating_add(c.seeds)).collect(),
    };
    if c.faults {
        return run_fault_sim(&c, &seeds);
    }
    let cfg = filerep::sim::SimConfig { operations: c.operations.unwrap_or(400), ..Default::default() };
    let start = std::time::Instant::now();
    let mut frames = 0;
    let bar = seed_bar(seeds.len());
    for &seed in &seeds {
        match filerep::sim::run(seed, &cfg) {
            Ok(r) => frames += r.frames,
            Err(f) => {
                bar.abandon();
                eprintln!("{f}");
                return Ok(ExitCode::from(1));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    outln!("{} seeds passed ({} frames) in {:.1} s", seeds.len(), frames, start.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// A bar with ETA on a terminal; nothing when stderr is not one.
fn seed_bar(n: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:40} {pos}/{len} seeds ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

fn run_fault_sim(c: &SimCmd, seeds: &[u64]) -> CmdResult {
    use filerep::sim::{FaultConfig, FaultKind, FaultReport, PlantedBug};
    let bug = c.bug.as_deref().map(str::parse::<PlantedBug>).transpose()?;
    let defaults = FaultConfig::default();
    let cfg = FaultConfig {
        operations: c.operations.unwrap_or(defaults.operations),
        bug,
        steady: c.steady,
        rename_storm: c.rename_storm,
        queued: c.queued,
        ..defaults
    };
    let start = std::time::Instant::now();
    let mut total = FaultReport::default();
    let mut ran = 0;
    let bar = seed_bar(seeds.len());
    let mut failed = None;
    for &seed in seeds {
        match filerep::sim::run_faults(seed, &cfg) {
            Ok(r) => {
                ran += 1;
                total.add(&r);
            }
            Err(f) => {
                failed = Some(f);
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    outln!(
        "{ran} fault schedules, {} calls ({} succeeded) in {:.1} s",
        total.operations,
        total.acked,
        start.elapsed().as_secs_f64()
    );
    outln!("faults that fired:");
    for k in FaultKind::all() {
        outln!("  {:<44} {:>8}", k.to_string(), total.faults.get(&k).copied().unwrap_or(0));
    }
    outln!("outcomes:");
    for (k, v) in &total.outcomes {
        outln!("  {k:<62} {v:>8}");
    }
    outln!("the primary engine's commands carried out (what the schedules exercised):");
    for (k, v) in &total.commands {
        outln!("  {k:<30} {v:>10}");
    }
    outln!("events fed to it:");
    for (k, v) in &total.events {
        outln!("  {k:<30} {v:>10}");
    }
    let resync = &total.resync;
    outln!(
        "resync engine: {} runs, {} completed, {} interrupted by their fault; {} paths, {} blocks ({} bytes) \
         shipped or compared, {} compared equal, {} extra passes over what renames moved ({} with renames held); \
         {} calls by writers while a resync ran",
        resync.runs,
        resync.completed,
        resync.interrupted,
        resync.paths,
        resync.blocks,
        resync.bytes,
        resync.compared_equal,
        resync.extra_passes,
        resync.held_passes,
        resync.concurrent_calls
    );
    match failed {
        Some(f) => {
            eprintln!("{f}");
            if let Some(n) = c.operations {
                eprintln!("  (add --operations {n} to the replay)");
            }
            if let Some(b) = &c.bug {
                eprintln!("  (add --bug {b} to the replay)");
            }
            Ok(ExitCode::from(1))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

fn run_compare(c: CompareCmd) -> CmdResult {
    let mut specs = Vec::new();
    for s in &c.filespaces {
        let parts: Vec<&str> = s.splitn(3, '=').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("--filespace {s:?}: expected NAME=PRIMARY_DIR=MIRROR_DIR").into());
        }
        specs.push((parts[0].to_string(), PathBuf::from(parts[1]), PathBuf::from(parts[2])));
    }
    let refs: Vec<(String, &std::path::Path, &std::path::Path)> =
        specs.iter().map(|(n, a, b)| (n.clone(), a.as_path(), b.as_path())).collect();
    let cmp = filerep::verify::compare(&refs)?;
    if c.json {
        outln!("{}", serde_json::to_string_pretty(&cmp)?);
    } else {
        demo::print_comparison(&cmp, usize::MAX);
    }
    Ok(if cmp.identical() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
