//! What validation asks of the hosts: what is at a path (its symbolic links
//! resolved there), whether a directory can be made, whether a port is free.

use std::path::{Path, PathBuf};

/// What is at a path on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PathState {
    Absent,
    EmptyDirectory,
    NonEmptyDirectory,
    /// A file, a dangling symbolic link, anything but a directory.
    NotADirectory,
}

/// What a host says of one path.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathInfo {
    pub state: PathState,
    /// The path with every symbolic link of its existing part resolved on
    /// that host: what it really names there.
    pub resolved: PathBuf,
    /// Why a directory cannot be created (an absent path) or written (an
    /// empty directory) there, when it was asked and cannot.
    pub unwritable: Option<String>,
}

/// The host name that stands for the machine validation runs on (for
/// [`Cluster::local_paths`]).
pub const THIS_MACHINE: &str = "";

/// What validation asks of the world: which machine a host is, what is at
/// a path on a host (its symbolic links resolved there), whether a
/// directory can be made there, whether a port is free. Closures
/// `Fn(&str, &Path) -> io::Result<PathState>` are probes that know only
/// the state (every host its own machine, paths as written, every port
/// free); [`LocalFs`] looks on this machine.
pub trait HostProbe {
    /// The machine `host` is: hosts with the same answer share one file
    /// system. [`THIS_MACHINE`] names the machine validation runs on.
    fn machine(&self, host: &str) -> String {
        host.to_string()
    }

    /// What is at `path` on `host`.
    fn state(&self, host: &str, path: &Path) -> std::io::Result<PathState>;

    /// Every path of one host at once (one round trip for another
    /// machine). With the flag set, also prove a directory can be created
    /// and written there. Paths are absolute without `.` or `..`.
    fn inspect(&self, host: &str, paths: &[(PathBuf, bool)]) -> Vec<std::io::Result<PathInfo>> {
        paths
            .iter()
            .map(|(p, _)| {
                self.state(host, p).map(|state| PathInfo { state, resolved: normalized(p), unwritable: None })
            })
            .collect()
    }

    /// Whether each `(address, port)` is free on `host` (`Err`: why not).
    fn ports_free(&self, host: &str, ports: &[(String, u16)]) -> Vec<Result<(), String>> {
        let _ = host;
        ports.iter().map(|_| Ok(())).collect()
    }
}

impl<F: Fn(&str, &Path) -> std::io::Result<PathState>> HostProbe for F {
    fn state(&self, host: &str, path: &Path) -> std::io::Result<PathState> {
        self(host, path)
    }
}

/// This machine, whatever the host: right when every host is this
/// machine (test clusters on loopback addresses). Symbolic links are
/// resolved, directories really created (and removed) to prove they can
/// be, ports really bound (and released).
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalFs;

impl HostProbe for LocalFs {
    fn machine(&self, _host: &str) -> String {
        crate::cluster::hosts::Machine::This.key()
    }
    fn state(&self, _host: &str, path: &Path) -> std::io::Result<PathState> {
        crate::cluster::hosts::path_state(path)
    }
    fn inspect(&self, _host: &str, paths: &[(PathBuf, bool)]) -> Vec<std::io::Result<PathInfo>> {
        crate::cluster::hosts::inspect_paths(paths)
    }
    fn ports_free(&self, _host: &str, ports: &[(String, u16)]) -> Vec<Result<(), String>> {
        ports.iter().map(|(a, p)| crate::cluster::hosts::port_free(a, *p)).collect()
    }
}

/// `p` as its components: no `.`, no trailing or doubled `/` (`..` is kept;
/// the paths validation looks at are plain absolute ones).
pub(super) fn normalized(p: &Path) -> PathBuf {
    p.components().collect()
}
