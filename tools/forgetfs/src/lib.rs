//! forgetfs: a FUSE file system that forgets what was never synced, for
//! power-cut tests of real processes (test-only; the filerep library does
//! not depend on it).
//!
//! It keeps every write, truncate, create, rename and unlink since the last
//! `fsync`/`fdatasync` of the file (for names: of their directory) in
//! memory, and on a power cut ([`control::cut`]) throws away what was not
//! synced, optionally tearing the last unsynced write of each file at a
//! 512-byte sector boundary; then it serves the durable image. Semantics
//! and the control protocol: `docs/forgetfs.md`.

pub mod control;
mod fuse;
pub mod model;
pub mod process;

use control::{Op, Request, Response, REQUEST_LEN};
use model::Model;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The line forgetfs prints on stdout once mounted and listening.
pub const READY: &str = "forgetfs ready on ";

#[derive(Clone, Debug)]
pub struct Options {
    pub mountpoint: PathBuf,
    /// Durable contents, one file per inode: an empty directory.
    pub store: PathBuf,
    /// The control socket (created; an existing socket file is replaced).
    pub control: PathBuf,
    /// Shown in the log with every dropped item.
    pub label: String,
    /// Unsynced data held before writes fail with ENOSPC.
    pub max_dirty: u64,
    pub threads: usize,
    /// How long each fsync and fsyncdir waits before it makes anything
    /// durable (a device's flush latency; zero: at once).
    pub sync_latency: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] model::StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// A mounted forgetfs, not yet serving.
pub struct Mounted {
    session: fuser::Session<fuse::ForgetFs>,
    pub mountpoint: PathBuf,
}

impl Mounted {
    pub fn unmounter(&mut self) -> fuser::SessionUnmounter {
        self.session.unmount_callable()
    }

    /// Serve FUSE requests until unmounted.
    pub fn run(self) -> Result<(), ServeError> {
        let mp = self.mountpoint.display().to_string();
        self.session.run().map_err(io(format!("serving {mp}")))
    }
}

/// Mount forgetfs and start its control socket.
pub fn mount(opts: &Options) -> Result<Mounted, ServeError> {
    let model = Arc::new(Mutex::new(Model::new(opts.store.clone(), opts.max_dirty)?));
    let mountpoint = opts.mountpoint.canonicalize().map_err(io(format!("mountpoint {}", opts.mountpoint.display())))?;
    let _ = std::fs::remove_file(&opts.control);
    let listener =
        UnixListener::bind(&opts.control).map_err(io(format!("control socket {}", opts.control.display())))?;
    let (m, label) = (model.clone(), opts.label.clone());
    std::thread::Builder::new()
        .name("forgetfs-control".into())
        .spawn(move || serve_control(&listener, &m, &label))
        .map_err(io("starting the control thread"))?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("forgetfs".into()),
        fuser::MountOption::Subtype("forgetfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let fs = fuse::ForgetFs { model, store: opts.store.clone(), sync_latency: opts.sync_latency };
    let session = fuser::Session::new(fs, &mountpoint, &config).map_err(io(format!(
        "mounting {} (is /dev/fuse there, and are we root or is fusermount3 installed?)",
        mountpoint.display()
    )))?;
    Ok(Mounted { session, mountpoint })
}

fn serve_control(listener: &UnixListener, model: &Arc<Mutex<Model>>, label: &str) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                // A connection of its own: a client that says nothing blocks no cut.
                let (m, l) = (model.clone(), label.to_string());
                let spawned = std::thread::Builder::new().name("forgetfs-control-conn".into()).spawn(move || {
                    if let Err(e) = serve_conn(s, &m, &l) {
                        tracing::warn!(label = l, error = %e, "control connection ended");
                    }
                });
                if let Err(e) = spawned {
                    tracing::warn!(label, error = %e, "cannot serve a control connection");
                }
            }
            Err(e) => tracing::warn!(label, error = %e, "control socket accept failed"),
        }
    }
}

/// Requests one after another until the peer closes.
fn serve_conn(mut s: UnixStream, model: &Arc<Mutex<Model>>, label: &str) -> std::io::Result<()> {
    loop {
        let mut b = [0u8; REQUEST_LEN];
        match s.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let resp = match Request::decode(&b) {
            Ok(req) => handle(&req, model, label),
            Err(why) => {
                tracing::warn!(label, why, "refused a control request");
                Response { status: 1, text: why, ..Response::default() }
            }
        };
        s.write_all(&resp.encode())?;
    }
}

/// Carry out one request (the model's lock held throughout, so a cut falls
/// between two FUSE requests).
pub fn handle(req: &Request, model: &Mutex<Model>, label: &str) -> Response {
    let mut m = fuse::lock(model);
    match req.op {
        Op::Status => {
            let p = m.pending();
            Response {
                cuts: m.cuts(),
                files: p.files,
                bytes: p.bytes,
                entries: p.entries,
                failed_syncs: m.failed_syncs(),
                ..Response::default()
            }
        }
        Op::FailSync => {
            m.fail_next_sync();
            tracing::warn!(label, "armed: the next fsync of a file with unsynced changes fails");
            Response { cuts: m.cuts(), failed_syncs: m.failed_syncs(), ..Response::default() }
        }
        Op::Cut => {
            let r = m.cut(req.tear.then_some(req.seed));
            tracing::warn!(
                label,
                cut = m.cuts(),
                files = r.files,
                bytes = r.bytes,
                entries = r.entries,
                torn = r.torn,
                removed = r.removed,
                "power cut: everything never synced is gone"
            );
            for line in &r.lines {
                tracing::info!(label, "dropped: {line}");
            }
            Response {
                cuts: m.cuts(),
                files: r.files,
                bytes: r.bytes,
                entries: r.entries,
                torn: r.torn,
                removed: r.removed,
                failed_syncs: m.failed_syncs(),
                text: r.lines.join("\n"),
                ..Response::default()
            }
        }
    }
}

/// Whether FUSE can be mounted here, or why not.
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist".into());
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("cannot open /dev/fuse: {e}"));
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && !std::process::Command::new("fusermount3").arg("-V").output().is_ok_and(|o| o.status.success()) {
        return Some("not root, and no fusermount3 (Debian package fuse3) to mount with".into());
    }
    None
}

#[cfg(test)]
mod tests;
