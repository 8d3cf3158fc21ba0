//! Running a `filerep mirror` daemon as a child process (demo, bench, tests).

use filerep::config::Filespace;
use filerep::error::{Error, Result};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// The line a mirror daemon prints on stdout once it accepts connections.
pub const READY_PREFIX: &str = "filerep mirror listening on ";

#[derive(Clone, Debug)]
pub struct MirrorArgs {
    pub filespaces: Vec<Filespace>,
    pub key_file: PathBuf,
    pub cluster_id: u64,
    pub content_id: u32,
    pub block_size: u32,
    pub generation: u64,
    pub listen: String,
    pub extra: Vec<String>,
}

impl MirrorArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec!["mirror".to_string(), "--listen".into(), self.listen.clone()];
        for f in &self.filespaces {
            a.push("--filespace".into());
            a.push(format!("{}={}", f.name, f.root.display()));
        }
        a.extend([
            "--key-file".into(),
            self.key_file.display().to_string(),
            "--cluster-id".into(),
            self.cluster_id.to_string(),
            "--content".into(),
            self.content_id.to_string(),
            "--block-size".into(),
            self.block_size.to_string(),
            "--generation".into(),
            self.generation.to_string(),
        ]);
        a.extend(self.extra.iter().cloned());
        a
    }
}

pub struct MirrorProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl MirrorProcess {
    /// Start `exe mirror ...` and wait until it says where it listens.
    pub fn spawn(exe: &Path, args: &MirrorArgs) -> Result<MirrorProcess> {
        let mut child = Command::new(exe)
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::io(format!("starting {} mirror", exe.display()), e))?;
        let pid = child.id();
        let stdout =
            child.stdout.take().ok_or_else(|| Error::InvalidArgument("mirror stdout was not captured".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.strip_prefix(READY_PREFIX) {
                        break a.trim().parse::<SocketAddr>().map_err(|e| {
                            Error::InvalidArgument(format!("mirror announced a bad address {a:?}: {e}"))
                        })?;
                    }
                }
                Some(Err(e)) => return Err(Error::io("reading the mirror's output", e)),
                None => {
                    let status = child.wait().map_err(|e| Error::io("waiting for the mirror", e))?;
                    return Err(Error::InvalidArgument(format!("the mirror exited before listening ({status})")));
                }
            }
        };
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(MirrorProcess { child: Some(child), addr, pid })
    }

    /// Ask the daemon to stop (SIGTERM) and wait for it.
    pub fn stop(mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| Error::InvalidArgument("mirror already stopped".into()))?;
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        child.wait().map_err(|e| Error::io("waiting for the mirror", e))
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for MirrorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
