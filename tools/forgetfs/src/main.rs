//! `forgetfs`: mount the file system that forgets, in the foreground, until
//! SIGTERM or SIGINT. A test asks for power cuts on the control socket.

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "forgetfs",
    version,
    about = "A FUSE file system that forgets what was never synced (power-cut tests)"
)]
struct Cli {
    /// Where durable contents are kept, one file per inode: an existing, empty directory.
    #[arg(long)]
    store: PathBuf,
    /// The control socket to create (power cuts, status).
    #[arg(long)]
    control: PathBuf,
    /// A name for this file system in the log.
    #[arg(long, default_value = "forgetfs")]
    label: String,
    /// Unsynced data held in memory before writes fail with ENOSPC, in MiB.
    #[arg(long, default_value_t = 1024)]
    max_dirty_mib: u64,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Microseconds each fsync waits before it makes anything durable, as a
    /// device's flush takes time (0 to 1000000): a power cut meanwhile loses
    /// what it was syncing.
    #[arg(long, default_value_t = 0)]
    sync_latency_us: u64,
    /// Where to mount: an existing directory.
    mountpoint: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FORGETFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forgetfs: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    if !(1..=64).contains(&cli.threads) {
        return Err(format!("--threads {}: use 1 to 64", cli.threads));
    }
    let max_dirty = cli
        .max_dirty_mib
        .checked_mul(1 << 20)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("--max-dirty-mib {}: use 1 or more (and less than 2^44)", cli.max_dirty_mib))?;
    if cli.sync_latency_us > 1_000_000 {
        return Err(format!("--sync-latency-us {}: use 0 to 1000000", cli.sync_latency_us));
    }
    let opts = forgetfs::Options {
        mountpoint: cli.mountpoint,
        store: cli.store,
        control: cli.control,
        label: cli.label,
        max_dirty,
        threads: cli.threads,
        sync_latency: std::time::Duration::from_micros(cli.sync_latency_us),
    };
    // Taken before mounting: a signal during set-up waits for the handler.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("signals: {e}"))?;
    let mut mounted = forgetfs::mount(&opts).map_err(|e| e.to_string())?;
    let mut unmounter = mounted.unmounter();
    let mountpoint = mounted.mountpoint.clone();
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("forgetfs-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                if let Err(e) = unmounter.unmount() {
                    tracing::warn!(error = %e, "unmount failed; detaching lazily");
                    let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        })
        .map_err(|e| format!("signal thread: {e}"))?;
    println!("{}{}", forgetfs::READY, mounted.mountpoint.display());
    let r = mounted.run().map_err(|e| e.to_string());
    handle.close();
    r
}
