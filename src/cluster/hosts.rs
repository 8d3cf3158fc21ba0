//! Where things really are, asked before the operator tools change
//! anything: which machine a host name is (by the addresses it resolves
//! to), what a path names once its symbolic links are resolved, whether a
//! directory can be created and written there, and whether a port is free.
//!
//! The tools answer these questions themselves for the machine they run
//! on; for another machine they ask a segment running there, over the
//! authenticated control channel (`SegmentRequest::Inspect`), which runs
//! [`inspect_paths`] and [`port_free`] on its own machine.
//! `docs/operations.md` ("Placement") says what is checked and how.

use crate::cluster::layout::{PathInfo, PathState};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Which machine a host name is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Machine {
    /// The machine this process runs on: a loopback address, or an address
    /// of one of its interfaces.
    This,
    /// Another machine, known by the lowest address its name resolves to.
    Other(IpAddr),
}

impl Machine {
    /// A key for "the same file system": equal keys, one machine.
    pub fn key(&self) -> String {
        match self {
            Machine::This => "this machine".into(),
            Machine::Other(ip) => format!("the machine of {ip}"),
        }
    }
}

/// A host name and what it resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// Every address it resolves to, sorted, without repeats.
    pub addrs: Vec<IpAddr>,
    pub machine: Machine,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host {host:?} does not resolve to an address ({reason}); give a host name this machine can resolve, or an IPv4 address")]
    Unresolved { host: String, reason: String },
    #[error("host {host:?} is the unspecified address {addr}: it names no machine (a segment bound there would take the port on every address); give the host's own address")]
    Unspecified { host: String, addr: IpAddr },
    #[error("hosts {first} and {second} are one host: both resolve to {addr}; name each host once")]
    SameHost { first: String, second: String, addr: IpAddr },
    #[error("hosts {first} and {second} are both this machine: a mirror placed on one would share the machine (and its disks) with its primary on the other; name hosts that are different machines, or pass --allow-one-machine for a test cluster on one machine")]
    OneMachine { first: String, second: String },
}

/// Whether `ip` belongs to this machine: loopback, or an address one of
/// its interfaces holds (only those can be bound).
pub fn is_this_machine(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Resolve a host name (or address, in any form the system's resolver
/// reads: `127.0.0.02`, `localhost`) to its addresses and machine.
pub fn resolve_host(name: &str) -> Result<Host, HostError> {
    let unresolved = |reason: String| HostError::Unresolved { host: name.to_string(), reason };
    if name.is_empty() {
        return Err(unresolved("the name is empty".into()));
    }
    let mut addrs: Vec<IpAddr> =
        (name, 0u16).to_socket_addrs().map_err(|e| unresolved(e.to_string()))?.map(|a| a.ip()).collect();
    addrs.sort();
    addrs.dedup();
    if let Some(&addr) = addrs.iter().find(|a| a.is_unspecified()) {
        return Err(HostError::Unspecified { host: name.to_string(), addr });
    }
    let Some(&lowest) = addrs.first() else { return Err(unresolved("no address".into())) };
    let machine = if addrs.iter().any(|&a| is_this_machine(a)) { Machine::This } else { Machine::Other(lowest) };
    Ok(Host { name: name.to_string(), addrs, machine })
}

/// Resolve every host of a cluster and refuse two that are one host (they
/// share an address: `127.0.0.2` and `127.0.0.02`, `localhost` and
/// `127.0.0.1`), always; and two that are both this machine, unless
/// `allow_one_machine` (test clusters on loopback addresses).
pub fn check_hosts(names: &[String], allow_one_machine: bool) -> Result<Vec<Host>, HostError> {
    let mut hosts = Vec::with_capacity(names.len());
    let mut by_addr: HashMap<IpAddr, usize> = HashMap::new();
    let mut first_here: Option<usize> = None;
    for name in names {
        let h = resolve_host(name)?;
        for a in &h.addrs {
            if let Some(&i) = by_addr.get(a) {
                let first: &Host = &hosts[i];
                return Err(HostError::SameHost { first: first.name.clone(), second: h.name.clone(), addr: *a });
            }
        }
        if h.machine == Machine::This && !allow_one_machine {
            if let Some(i) = first_here {
                let first: &Host = &hosts[i];
                return Err(HostError::OneMachine { first: first.name.clone(), second: h.name.clone() });
            }
            first_here = Some(hosts.len());
        }
        for a in &h.addrs {
            by_addr.insert(*a, hosts.len());
        }
        hosts.push(h);
    }
    Ok(hosts)
}

/// Whether `path` is absolute and has no `.` or `..` component.
pub fn plain_absolute(path: &Path) -> bool {
    path.is_absolute() && !path.components().any(|c| matches!(c, Component::CurDir | Component::ParentDir))
}

/// Resolves paths on this machine, remembering the directories it has
/// resolved (validating 100,000 locations under one base costs one
/// `realpath` of the base, not 100,000).
#[derive(Default)]
pub struct Resolver {
    dirs: HashMap<PathBuf, PathBuf>,
}

impl Resolver {
    /// `path` with every symbolic link of its existing part resolved: the
    /// longest prefix that exists, canonicalized, then the rest as written.
    /// `path` must be absolute without `.` or `..`.
    pub fn resolve(&mut self, path: &Path) -> io::Result<PathBuf> {
        if !plain_absolute(path) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not an absolute path without . or ..", path.display()),
            ));
        }
        match std::fs::symlink_metadata(path) {
            Ok(_) => self.canonical_dir(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match (path.parent(), path.file_name()) {
                (Some(parent), Some(name)) => Ok(self.resolve(parent)?.join(name)),
                _ => Ok(path.to_path_buf()),
            },
            Err(e) => Err(e),
        }
    }

    fn canonical_dir(&mut self, path: &Path) -> io::Result<PathBuf> {
        if let Some(r) = self.dirs.get(path) {
            return Ok(r.clone());
        }
        let r = match std::fs::canonicalize(path) {
            Ok(r) => r,
            // A dangling symbolic link: it names its own place, where nothing can be made.
            Err(e) if e.kind() == io::ErrorKind::NotFound => match (path.parent(), path.file_name()) {
                (Some(parent), Some(name)) => self.resolve(parent)?.join(name),
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        };
        self.dirs.insert(path.to_path_buf(), r.clone());
        Ok(r)
    }

    /// The deepest existing directory at or above `resolved` (itself resolved).
    fn existing_ancestor(resolved: &Path) -> Option<&Path> {
        resolved.ancestors().find(|a| std::fs::metadata(a).is_ok_and(|m| m.is_dir()))
    }
}

static CHECK_SEQ: AtomicU64 = AtomicU64::new(0);

/// Create a directory with a file in it under `dir`, write the file, and
/// remove both: proof that a directory can be created and written there.
/// `None` when it can; else why not.
fn write_test(dir: &Path) -> Option<String> {
    let probe =
        dir.join(format!(".filerep-check-{}-{}", std::process::id(), CHECK_SEQ.fetch_add(1, Ordering::Relaxed)));
    if let Err(e) = std::fs::create_dir(&probe) {
        return Some(format!("a directory cannot be created in {}: {e}", dir.display()));
    }
    let file = probe.join("check");
    let written =
        std::fs::write(&file, b"filerep").map_err(|e| format!("a file cannot be written in {}: {e}", dir.display()));
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir(&probe);
    written.err()
}

/// What is at each path on this machine, with its symbolic links resolved;
/// where `write` is set, also whether a directory can be created (an
/// absent path) or written (an empty directory) there, proven by doing it
/// and undoing it. Paths must be absolute without `.` or `..`.
pub fn inspect_paths(paths: &[(PathBuf, bool)]) -> Vec<io::Result<PathInfo>> {
    let mut resolver = Resolver::default();
    let mut tested: BTreeMap<PathBuf, Option<String>> = BTreeMap::new();
    paths
        .iter()
        .map(|(path, write)| {
            let resolved = resolver.resolve(path)?;
            let state = path_state(path)?;
            let unwritable = match (write, state) {
                (false, _) | (true, PathState::NonEmptyDirectory | PathState::NotADirectory) => None,
                (true, PathState::EmptyDirectory) => write_test(&resolved),
                (true, PathState::Absent) => match Resolver::existing_ancestor(&resolved) {
                    Some(a) => tested.entry(a.to_path_buf()).or_insert_with(|| write_test(a)).clone(),
                    None => Some(format!("no directory above {} exists", resolved.display())),
                },
            };
            Ok(PathInfo { state, resolved, unwritable })
        })
        .collect()
}

/// What is at `path` on this machine (symbolic links followed; a dangling
/// one is "not a directory").
pub fn path_state(path: &Path) -> io::Result<PathState> {
    use std::io::ErrorKind::NotFound;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(match std::fs::read_dir(path)?.next().transpose()? {
            None => PathState::EmptyDirectory,
            Some(_) => PathState::NonEmptyDirectory,
        }),
        Ok(_) => Ok(PathState::NotADirectory),
        Err(e) if e.kind() == NotFound => match std::fs::symlink_metadata(path) {
            Ok(_) => Ok(PathState::NotADirectory),
            Err(e) if e.kind() == NotFound => Ok(PathState::Absent),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Whether a TCP port is free at `address` on this machine: bound for a
/// moment and released. `Err` says why not.
pub fn port_free(address: &str, port: u16) -> Result<(), String> {
    match std::net::TcpListener::bind((address, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(format!(
            "port {port} on {address} is in use by another process (ss -ltnp 'sport = :{port}' shows which)"
        )),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
            Err(format!("{address} is not an address of this machine, so port {port} cannot be bound there"))
        }
        Err(e) => Err(format!("port {port} on {address} cannot be bound: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_host_spelt_twice_is_refused_always() {
        for pair in [["127.0.0.2", "127.0.0.02"], ["localhost", "127.0.0.1"], ["127.0.0.2", "0x7f000002"]] {
            for allow in [false, true] {
                let e = check_hosts(&names(&pair), allow).unwrap_err();
                assert!(matches!(e, HostError::SameHost { .. }), "{pair:?}: {e}");
                let m = e.to_string();
                assert!(m.contains(pair[0]) && m.contains(pair[1]) && m.contains("one host"), "{m}");
            }
        }
        // Two spellings of another machine's address.
        let e = check_hosts(&names(&["192.0.2.50", "3221226034"]), false).unwrap_err();
        assert!(m_contains(&e, "both resolve to 192.0.2.50"), "{e}");
    }

    fn m_contains(e: &HostError, s: &str) -> bool {
        e.to_string().contains(s)
    }

    #[test]
    fn two_names_of_this_machine_need_the_flag() {
        let e = check_hosts(&names(&["127.0.0.2", "127.0.0.3"]), false).unwrap_err();
        assert_eq!(e, HostError::OneMachine { first: "127.0.0.2".into(), second: "127.0.0.3".into() });
        assert!(m_contains(&e, "--allow-one-machine"), "{e}");
        let hosts = check_hosts(&names(&["127.0.0.2", "127.0.0.3"]), true).unwrap();
        assert!(hosts.iter().all(|h| h.machine == Machine::This));
        // Other machines, and one host of this machine among them.
        let hosts = check_hosts(&names(&["192.0.2.50", "192.0.2.51", "127.0.0.2"]), false).unwrap();
        assert_eq!(hosts[0].machine, Machine::Other("192.0.2.50".parse().unwrap()));
        assert_eq!(hosts[2].machine, Machine::This);
        assert_ne!(hosts[0].machine.key(), hosts[1].machine.key());
    }

    #[test]
    fn names_that_name_no_machine() {
        let e = resolve_host("no-such-host.invalid").unwrap_err();
        assert!(matches!(e, HostError::Unresolved { .. }), "{e}");
        assert!(m_contains(&e, "does not resolve"), "{e}");
        let e = resolve_host("0.0.0.0").unwrap_err();
        assert!(matches!(e, HostError::Unspecified { .. }), "{e}");
        assert!(resolve_host("").is_err());
    }

    #[test]
    fn paths_resolve_through_symbolic_links_and_absent_tails() {
        let tmp = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(real.join("a/b")).unwrap();
        std::os::unix::fs::symlink(real.join("a/b"), real.join("link")).unwrap();
        std::os::unix::fs::symlink(real.join("nowhere"), real.join("dangling")).unwrap();
        let mut r = Resolver::default();
        assert_eq!(r.resolve(&real.join("link")).unwrap(), real.join("a/b"));
        assert_eq!(r.resolve(&real.join("link/new/deeper")).unwrap(), real.join("a/b/new/deeper"));
        assert_eq!(r.resolve(&real.join("dangling")).unwrap(), real.join("dangling"));
        assert!(r.resolve(Path::new("relative/path")).is_err());
        assert!(r.resolve(&real.join("a/../a")).is_err());
        std::fs::write(real.join("file"), b"x").unwrap();
        assert!(r.resolve(&real.join("file/below")).is_err(), "a path through a file cannot be resolved");
    }

    #[test]
    fn inspection_proves_a_directory_can_be_made_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir(d.join("empty")).unwrap();
        std::fs::create_dir(d.join("full")).unwrap();
        std::fs::write(d.join("full/x"), b"x").unwrap();
        let ask = |p: &str| (d.join(p), true);
        let r = inspect_paths(&[ask("new/one"), ask("new/two"), ask("empty"), ask("full")]);
        let r: Vec<PathInfo> = r.into_iter().map(Result::unwrap).collect();
        assert_eq!(r[0].state, PathState::Absent);
        assert_eq!((r[0].unwritable.as_ref(), r[2].unwritable.as_ref()), (None, None));
        assert_eq!((r[2].state, r[3].state), (PathState::EmptyDirectory, PathState::NonEmptyDirectory));
        let mut left: Vec<String> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["empty", "full"], "the checks leave nothing behind");
        assert_eq!(std::fs::read_dir(d.join("empty")).unwrap().count(), 0);
        // Under /proc nothing can be created, even by root.
        let r = inspect_paths(&[(PathBuf::from("/proc/filerep-mirror/gpseg0"), true)]);
        let why = r[0].as_ref().unwrap().unwritable.clone().expect("/proc refuses directories");
        assert!(why.contains("cannot be created in /proc"), "{why}");
    }

    #[test]
    fn a_port_in_use_is_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let e = port_free("127.0.0.1", port).unwrap_err();
        assert!(e.contains("in use by another process"), "{e}");
        drop(l);
        assert_eq!(port_free("127.0.0.1", port), Ok(()));
        assert!(port_free("192.0.2.50", port).unwrap_err().contains("not an address of this machine"));
    }
}
