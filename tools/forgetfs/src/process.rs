//! A `forgetfs` child process for tests: started over a fresh store
//! directory, asked for power cuts over its control socket, and unmounted
//! (or detached, if it died) when dropped.

use crate::control::{self, Response};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ForgetFs {
    child: Option<Child>,
    pub mountpoint: PathBuf,
    pub control: PathBuf,
    pub label: String,
    /// forgetfs's own log (what every cut dropped).
    pub log: PathBuf,
}

/// Whether `path` is a mount point now.
pub fn mounted(path: &Path) -> bool {
    let mp = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap_or("")))
}

/// Detach a mount lazily (a dead FUSE mount cannot finish its users).
pub fn detach(path: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    } else {
        let _ = Command::new("fusermount3").arg("-uz").arg(path).status();
    }
}

impl ForgetFs {
    /// Start `exe` with its mount point, store, control socket and log all
    /// under `dir` (created), named `label`; returns once it is mounted.
    pub fn spawn(exe: &Path, dir: &Path, label: &str) -> Result<ForgetFs, String> {
        Self::spawn_with_latency(exe, dir, label, 0)
    }

    /// [`ForgetFs::spawn`], each fsync taking `sync_latency_us` microseconds
    /// before it makes anything durable.
    pub fn spawn_with_latency(exe: &Path, dir: &Path, label: &str, sync_latency_us: u64) -> Result<ForgetFs, String> {
        let io = |what: &str, e: std::io::Error| format!("{label}: {what}: {e}");
        let mountpoint = dir.join("mnt");
        let store = dir.join("store");
        for d in [&mountpoint, &store] {
            std::fs::create_dir_all(d).map_err(|e| io("creating directories", e))?;
        }
        let control = dir.join("control.sock");
        let log = dir.join("forgetfs.log");
        let log_file = std::fs::File::create(&log).map_err(|e| io("creating the log", e))?;
        let mut child = Command::new(exe)
            .arg("--store")
            .arg(&store)
            .arg("--control")
            .arg(&control)
            .arg("--label")
            .arg(label)
            .arg("--sync-latency-us")
            .arg(sync_latency_us.to_string())
            .arg(&mountpoint)
            .env("FORGETFS_LOG", std::env::var("FORGETFS_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| io(&format!("starting {}", exe.display()), e))?;
        let stdout = child.stdout.take().ok_or_else(|| format!("{label}: stdout not captured"))?;
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if !line.starts_with(crate::READY) {
            let _ = child.kill();
            let _ = child.wait();
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{label}: forgetfs did not mount ({line:?}); its log:\n{tail}"));
        }
        let mountpoint = mountpoint.canonicalize().map_err(|e| io("mount point", e))?;
        Ok(ForgetFs { child: Some(child), mountpoint, control, label: label.to_string(), log })
    }

    /// Power cut: everything never synced is gone.
    pub fn cut(&self, tear: bool, seed: u64) -> Result<Response, String> {
        control::cut(&self.control, tear, seed).map_err(|e| format!("{}: {e}", self.label))
    }

    /// The next fsync of a file with unsynced changes fails with EIO and
    /// lets its dirty pages go (as Linux does after a failed writeback).
    pub fn fail_next_sync(&self) -> Result<Response, String> {
        control::fail_next_sync(&self.control).map_err(|e| format!("{}: {e}", self.label))
    }

    pub fn status(&self) -> Result<Response, String> {
        control::status(&self.control).map_err(|e| format!("{}: {e}", self.label))
    }

    /// Unmount (SIGTERM) and wait, at most 20 s, then detach whatever is left.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if mounted(&self.mountpoint) {
            detach(&self.mountpoint);
        }
    }
}

impl Drop for ForgetFs {
    fn drop(&mut self) {
        self.stop();
    }
}
