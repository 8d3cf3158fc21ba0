//! `filerep mount`: expose one filespace of a segment as a FUSE file system,
//! in the foreground, until SIGTERM or SIGINT.

use filerep::cluster::segment::SegmentConfig;
use filerep::mount::{MountOptions, MOUNT_READY};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct MountCmd {
    /// The segment's settings (the JSON file given to `filerep segment`).
    #[arg(long)]
    config: PathBuf,
    /// The filespace to expose, by name (one of the config's `filespaces`).
    #[arg(long)]
    filespace: String,
    /// Where to mount: an existing directory outside every filespace root.
    mountpoint: PathBuf,
    /// Present every file and directory as owned by this user id (nothing is stored).
    #[arg(long)]
    uid: Option<u32>,
    /// Present every file and directory as owned by this group id (nothing is stored).
    #[arg(long)]
    gid: Option<u32>,
    /// Let users other than the one mounting use the file system (a database running as its own user).
    #[arg(long)]
    allow_other: bool,
    /// Mount options, comma-separated: allow_other, default_permissions (always on).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Threads serving FUSE requests (each with its own connection to the segment).
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Clear a dead mount left on the mountpoint (its process was killed) before mounting.
    #[arg(long)]
    force: bool,
}

pub fn run(c: MountCmd) -> Result<(), String> {
    let mut allow_other = c.allow_other;
    for o in c.options.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
        match o {
            "allow_other" => allow_other = true,
            "default_permissions" => {}
            other => {
                return Err(format!("-o {other}: unknown mount option (filerep mount takes allow_other)"));
            }
        }
    }
    let cfg = SegmentConfig::load(&c.config).map_err(|e| format!("--config: {e}"))?;
    let mut opts =
        MountOptions::from_segment(&cfg, &c.config, &c.filespace, c.mountpoint).map_err(|e| e.to_string())?;
    opts.uid = c.uid;
    opts.gid = c.gid;
    opts.allow_other = allow_other;
    opts.threads = c.threads;
    opts.force = c.force;
    // Taken before mounting: a signal during set-up waits for the handler
    // instead of killing the process with the file system mounted.
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("cannot handle signals: {e}"))?;
    let mut session = filerep::mount::mount(&opts).map_err(|e| e.to_string())?;
    let mut unmounter = session.unmounter();
    let signals_handle = signals.handle();
    std::thread::Builder::new()
        .name("filerep-mount-signals".into())
        .spawn(move || {
            for (n, sig) in signals.forever().enumerate() {
                if n == 0 {
                    tracing::info!(signal = sig, "unmounting");
                    if let Err(e) = unmounter.unmount() {
                        tracing::error!(error = %e, "cannot unmount");
                    }
                } else {
                    // A second signal while lazily detached: stop now;
                    // files still open there fail from here on.
                    eprintln!("filerep mount: second signal, exiting with the file system still in use");
                    std::process::exit(1);
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    outln!("{MOUNT_READY}{}", session.mountpoint().display());
    let r = session.run().map_err(|e| e.to_string());
    signals_handle.close();
    r
}
