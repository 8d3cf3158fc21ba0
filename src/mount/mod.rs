//! `filerep mount`: one filespace of a segment, exposed as a FUSE file
//! system, so that unmodified programs get mirroring. Every change (create,
//! write, truncate, unlink, rename, mkdir, rmdir, fsync) goes through the
//! segment's client API and is therefore replicated or change-tracked;
//! reads, attributes and listings are served from the filespace's local
//! root, which the segment writes through the same page cache.
//! Semantics, errno mapping and operation: `docs/mount.md`.

mod changes;
mod errno;
mod fs;
mod held;
mod inodes;
mod local;
pub mod log_files;
mod pool;
pub mod reference;
mod write;

pub use errno::errno_of;
pub use log_files::LogFiles;

use crate::cluster::client::{Client, ClientError, ErrorClass};
use crate::cluster::segment::SegmentConfig;
use crate::cluster::storage::Storage;
use std::path::{Path, PathBuf};

/// The line `filerep mount` prints on stdout once the file system is mounted.
pub const MOUNT_READY: &str = "filerep mount ready on ";
/// Most FUSE request threads (each may hold one segment connection).
pub const MAX_THREADS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A bad argument or setting; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the segment on its client socket {socket} (is `filerep segment` running with this config?): {source}")]
    Segment {
        socket: PathBuf,
        #[source]
        source: ClientError,
    },
}

impl MountError {
    fn io(context: impl Into<String>, source: std::io::Error) -> MountError {
        MountError::Io { context: context.into(), source }
    }
}

/// What to mount, and how to present it.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// The segment's client socket.
    pub socket: PathBuf,
    /// The filespace's index in the segment's configuration, and its name.
    pub filespace: u16,
    pub filespace_name: String,
    /// The filespace's local root on this host (served for reads).
    pub root: PathBuf,
    pub block_size: u32,
    pub mountpoint: PathBuf,
    /// Present every entry as owned by this user and group (nothing is stored).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Let other users than the one mounting use the file system.
    pub allow_other: bool,
    /// FUSE request threads.
    pub threads: usize,
    /// Clear a dead mount found on the mountpoint (one whose process was
    /// killed) before mounting, instead of refusing.
    pub force: bool,
    /// The files opened without the kernel's write-back cache where the
    /// mount has it (`log_files.rs`).
    pub log_files: LogFiles,
}

impl MountOptions {
    /// Options for filespace `name` of the segment configured by `cfg`
    /// (loaded from `config_path`, named in messages).
    pub fn from_segment(
        cfg: &SegmentConfig,
        config_path: &Path,
        name: &str,
        mountpoint: PathBuf,
    ) -> Result<MountOptions, MountError> {
        let filespaces =
            cfg.filespaces().map_err(|e| MountError::Invalid(format!("{}: {e}", config_path.display())))?;
        let Some(index) = filespaces.iter().position(|f| f.name == name) else {
            let known: Vec<&str> = filespaces.iter().map(|f| f.name.as_str()).collect();
            return Err(MountError::Invalid(format!(
                "--filespace {name}: the segment config {} has no such filespace (it has {})",
                config_path.display(),
                known.join(", ")
            )));
        };
        Ok(MountOptions {
            socket: cfg.socket.clone(),
            filespace: index as u16,
            filespace_name: name.to_string(),
            root: filespaces[index].root.clone(),
            block_size: cfg.block_size,
            mountpoint,
            uid: None,
            gid: None,
            allow_other: false,
            threads: 8,
            force: false,
            log_files: LogFiles::default(),
        })
    }

    /// Check everything that can be checked before mounting.
    pub fn check(&self) -> Result<(), MountError> {
        crate::config::check_block_size(self.block_size).map_err(|e| MountError::Invalid(e.to_string()))?;
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(MountError::Invalid(format!("--threads {}: use 1 to {MAX_THREADS}", self.threads)));
        }
        // A dead FUSE mount (its process killed) answers ENOTCONN to a stat.
        if let Err(e) = std::fs::metadata(&self.mountpoint) {
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                return Err(MountError::Invalid(dead_mount_message(&self.mountpoint)));
            }
        }
        let mp = self.mountpoint.canonicalize().map_err(|e| {
            MountError::Invalid(format!("mountpoint {}: {e} (give an existing directory)", self.mountpoint.display()))
        })?;
        if !mp.is_dir() {
            return Err(MountError::Invalid(format!("mountpoint {}: not a directory", self.mountpoint.display())));
        }
        if fuse_mounted_at(&mp) {
            return Err(MountError::Invalid(format!(
                "mountpoint {}: a FUSE file system is mounted there and serving (another filerep mount?); \
                 stop it first (SIGTERM), or `{}`",
                self.mountpoint.display(),
                clear_command(&mp)
            )));
        }
        let root = self.root.canonicalize().map_err(|e| {
            MountError::Invalid(format!("filespace {} root {}: {e}", self.filespace_name, self.root.display()))
        })?;
        // The mount serves reads from the root: a mount inside it (or over
        // it) would read through itself.
        if mp.starts_with(&root) || root.starts_with(&mp) {
            return Err(MountError::Invalid(format!(
                "mountpoint {}: overlaps filespace {}'s root {}; mount outside it",
                mp.display(),
                self.filespace_name,
                root.display()
            )));
        }
        Ok(())
    }
}

/// Whether a message the FUSE library logs as an error or warning reports
/// normal client behaviour. The library answers the kernel's INTERRUPT
/// requests with ENOSYS (the kernel then lets each request finish, which
/// every request here does in bounded time: a change handed to the segment
/// cannot be taken back); a reply the kernel no longer waits for (its
/// caller was interrupted or killed, or an interrupt's answer raced the
/// request's) fails with ENOENT, and that is no error.
pub fn normal_fuse_message(target: &str, message: &std::fmt::Arguments<'_>) -> bool {
    if !target.starts_with("fuser") {
        return false;
    }
    let text = message.to_string();
    let enoent = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    text.starts_with("Failed to send FUSE reply") && (text.contains(&enoent) || text.contains("ENOENT"))
}

/// The absolute path of `mountpoint` as `/proc/self/mountinfo` shows it,
/// without touching the mountpoint itself (a dead mount answers ENOTCONN).
fn mount_path(mountpoint: &Path) -> Option<PathBuf> {
    let parent = mountpoint.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(parent.canonicalize().ok()?.join(mountpoint.file_name()?))
}

/// Whether a FUSE file system is mounted at `mountpoint` (live or dead).
pub fn fuse_mounted_at(mountpoint: &Path) -> bool {
    let Some(want) = mount_path(mountpoint) else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    // Fields: id, parent, dev, root, mount point, options, optional..., "-", type, ...
    info.lines().any(|l| {
        let mut fields = l.split(' ');
        let point = fields.nth(4).map(unescape_mountinfo);
        let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("");
        point.as_deref() == Some(want.as_os_str().to_str().unwrap_or("")) && fstype.starts_with("fuse")
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal =
            b.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok()).and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How to clear a dead mount, as the operator would type it.
pub fn clear_command(mountpoint: &Path) -> String {
    let p = mount_path(mountpoint).unwrap_or_else(|| mountpoint.to_path_buf());
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        format!("umount -l {}", p.display())
    } else {
        format!("fusermount3 -uz {}", p.display())
    }
}

fn dead_mount_message(mountpoint: &Path) -> String {
    format!(
        "mountpoint {}: a dead FUSE mount is still there (the process that served it is gone, e.g. killed); \
         clear it with `{}`, or run filerep mount again with --force to clear it",
        mountpoint.display(),
        clear_command(mountpoint)
    )
}

/// Clear a dead mount at `mountpoint` (lazily detached: anything still
/// holding a file there keeps an error, not a hang). Only a mount whose
/// process is gone is cleared: a live one answers, and is left alone.
pub fn clear_dead_mount(mountpoint: &Path) -> Result<bool, MountError> {
    let dead = matches!(std::fs::metadata(mountpoint), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
    if !dead || !fuse_mounted_at(mountpoint) {
        return Ok(false);
    }
    let p = mount_path(mountpoint).unwrap_or_else(|| mountpoint.to_path_buf());
    // SAFETY: geteuid has no preconditions and cannot fail.
    let detached = if unsafe { libc::geteuid() } == 0 {
        nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from)
    } else {
        match std::process::Command::new("fusermount3").arg("-uz").arg(&p).status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(std::io::Error::other(format!("fusermount3 -uz exited with {s}"))),
            Err(e) => Err(e),
        }
    };
    detached.map_err(|e| {
        MountError::io(format!("clearing the dead mount at {} (`{}`)", p.display(), clear_command(mountpoint)), e)
    })?;
    tracing::warn!(mountpoint = %p.display(), "a dead mount was cleared (--force)");
    Ok(true)
}

/// A mounted file system, not yet serving requests.
pub struct MountSession {
    session: fuser::Session<fs::FilerepFs>,
    mountpoint: PathBuf,
}

/// Unmounts a [`MountSession`] from another thread (a signal handler thread).
pub struct Unmounter {
    inner: fuser::SessionUnmounter,
    mountpoint: PathBuf,
}

impl Unmounter {
    /// Unmount; if the file system is busy (a process has a file open or
    /// its working directory there), detach it lazily instead: it goes on
    /// serving those users and disappears once they let go.
    pub fn unmount(&mut self) -> Result<(), MountError> {
        match self.inner.unmount() {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, mountpoint = %self.mountpoint.display(),
                    "unmount failed; detaching lazily: open files are served until closed");
                nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(|e| MountError::io(format!("unmounting {}", self.mountpoint.display()), e.into()))
            }
        }
    }
}

impl MountSession {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter { inner: self.session.unmount_callable(), mountpoint: self.mountpoint.clone() }
    }

    /// Serve requests until the file system is unmounted.
    pub fn run(self) -> Result<(), MountError> {
        let mp = self.mountpoint.clone();
        self.session.run().map_err(|e| MountError::io(format!("serving {}", mp.display()), e))
    }
}

/// Mount the filespace served by a segment in another process, through its
/// client socket (after checking the options and that the segment answers
/// there). The file system is live when this returns; requests are served
/// once [`MountSession::run`] is called.
pub fn mount(opts: &MountOptions) -> Result<MountSession, MountError> {
    if opts.force {
        clear_dead_mount(&opts.mountpoint)?;
    }
    opts.check()?;
    probe_segment(opts)?;
    mount_with(opts, std::sync::Arc::new(pool::Pool::new(opts.socket.clone(), opts.threads)))
}

/// Mount the filespace of the segment running in this process: each FUSE
/// request calls its storage API directly, with no client socket and no
/// second process between the kernel and the segment (the default way to
/// mount, `filerep segment --mount`).
pub fn mount_in_process(opts: &MountOptions, storage: Storage) -> Result<MountSession, MountError> {
    if opts.force {
        clear_dead_mount(&opts.mountpoint)?;
    }
    opts.check()?;
    if storage.filespaces().get(usize::from(opts.filespace)) != Some(&opts.filespace_name) {
        return Err(MountError::Invalid(format!(
            "filespace {} is not filespace {} of this segment",
            opts.filespace_name, opts.filespace
        )));
    }
    // A file system promises nothing of a change before an fsync, so the
    // mount's changes return once made here and on their way to the mirror
    // (`Storage::queued`); its fsyncs, fdatasyncs and directory fsyncs wait
    // until everything before them is durable on both hosts.
    mount_with(opts, std::sync::Arc::new(storage.queued()))
}

fn mount_with(opts: &MountOptions, changes: std::sync::Arc<dyn changes::Changes>) -> Result<MountSession, MountError> {
    let root = local::Root::open(&opts.root).map_err(|e| {
        MountError::io(format!("opening filespace {} root {}", opts.filespace_name, opts.root.display()), e)
    })?;
    let fs = fs::FilerepFs::new(fs::FsParams {
        filespace: opts.filespace,
        block_size: opts.block_size,
        root,
        changes,
        uid: opts.uid,
        gid: opts.gid,
        log_files: opts.log_files.clone(),
    })
    .map_err(|e| MountError::io("starting the mount's timer thread", e))?;
    let mountpoint = opts.mountpoint.canonicalize().map_err(|e| MountError::io("mountpoint", e))?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("filerep:{}", opts.filespace_name)),
        fuser::MountOption::Subtype("filerep".into()),
        // The kernel checks permissions against the presented owner and
        // modes: with allow_other, only that owner (and root) get in.
        fuser::MountOption::DefaultPermissions,
    ];
    config.acl = if opts.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    let session = fuser::Session::new(fs, &mountpoint, &config).map_err(|e| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let hint = if root {
            "is /dev/fuse available?"
        } else {
            "is /dev/fuse open to this user, fusermount3 (Debian package fuse3) installed, \
             and user_allow_other set in /etc/fuse.conf for --allow-other?"
        };
        MountError::io(format!("mounting {} ({hint})", mountpoint.display()), e)
    })?;
    tracing::info!(mountpoint = %mountpoint.display(), filespace = %opts.filespace_name, "mounted");
    Ok(MountSession { session, mountpoint })
}

/// Fail early and clearly when the segment is not there; warn when it is
/// not (yet) the acting primary: reads work, changes fail with EIO.
fn probe_segment(opts: &MountOptions) -> Result<(), MountError> {
    let segment = |source| MountError::Segment { socket: opts.socket.clone(), source };
    let mut c = Client::connect(&opts.socket).map_err(segment)?;
    match c.exists(opts.filespace, ".filerep-mount-probe") {
        Ok(_) => Ok(()),
        Err(e) if e.class() == Some(ErrorClass::NotPrimary) => {
            tracing::warn!(error = %e, "the segment is not the acting primary: changes through the mount fail (EIO) until it is");
            Ok(())
        }
        Err(e @ ClientError::Call { .. }) => {
            tracing::warn!(error = %e, "the segment refused a probe");
            Ok(())
        }
        Err(e) => Err(segment(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_the_kernel_no_longer_wants_is_normal_and_other_failures_are_not() {
        let gone = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert!(normal_fuse_message("fuser::reply", &format_args!("Failed to send FUSE reply: {gone}")));
        let dead = std::io::Error::from_raw_os_error(libc::EBADF);
        assert!(!normal_fuse_message("fuser::reply", &format_args!("Failed to send FUSE reply: {dead}")));
        assert!(!normal_fuse_message("other", &format_args!("Failed to send FUSE reply: {gone}")));
        assert!(!normal_fuse_message("fuser::request", &format_args!("Reply not sent for operation 7")));
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/odd\\9"), "/odd\\9");
    }
}
