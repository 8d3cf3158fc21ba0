//! A cluster on disk, and its processes: what `filerep init`, `start`,
//! `stop` and the operator tools share.
//!
//! A cluster directory (on the host that runs the arbiter) holds:
//!
//! | path | what |
//! |---|---|
//! | `cluster.json` | [`ClusterFile`]: id, block size, filespace names, hosts, the arbiter's address |
//! | `cluster.key` | the cluster key (random, hex), mode 0600 |
//! | `catalog.json` | the catalog ([`filerep::durable::catalog`]), owned by the arbiter while it runs |
//! | `segments/dbid<N>.json` | each segment's [`SegmentConfig`] |
//! | `segments/dbid<N>/` | its state directory (change-log, activity log) and client socket |
//! | `logs/`, `run/` | process logs and pid files |
//!
//! On one machine every "host" is a loopback address (127.0.0.2, ...). On
//! several machines, copy the directory to each host and run
//! `filerep start --host H` there: each host starts only its own segments,
//! and the host named by `cluster.json`'s arbiter address starts the arbiter.

use filerep::cluster::hosts;
use filerep::cluster::layout::{self, DirIndex, HostProbe, Placement};
use filerep::cluster::segment::{Acting, MountEntry, SegmentConfig, SegmentRequest, SegmentResponse, SegmentStatus};
use filerep::core::pair::Pair;
use filerep::durable::catalog::{Catalog, CatalogPair, CatalogSolo, SegmentAddress};
use filerep::durable::sealed;
use filerep::error::{Error, Result};
use filerep::protocol::handshake::ClusterKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cluster's settings, fixed at `filerep init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub cluster_id: u64,
    pub block_size: u32,
    /// Filespace names, the default one first.
    pub filespaces: Vec<String>,
    /// Segment hosts, in content order.
    pub hosts: Vec<String>,
    /// The arbiter's control address, `HOST:PORT`; on a coordinator,
    /// several, separated by commas (one arbiter per address, one acting).
    pub arbiter: String,
    /// Where the catalog lives when not in `catalog.json`: etcd,
    /// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX` (`filerep init --coordinator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// How the mirrors were placed (`group`, `spread`, `custom`), if any.
    #[serde(default)]
    pub placement: Option<String>,
    /// The operator allowed hosts that are one machine (`--allow-one-machine`:
    /// a test cluster on loopback addresses); `addmirrors` keeps to it.
    #[serde(default)]
    pub one_machine: bool,
    /// Filespaces every segment serves as a file system (`filerep init
    /// --mount NAME=BASE`): segment D mounts it at [`mountpoint`] `BASE/segD`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ClusterMount>,
}

/// A filespace served as a file system by every segment of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMount {
    pub filespace: String,
    /// Absolute; each segment's mountpoint is a directory in it.
    pub base: PathBuf,
}

/// Where segment `dbid` mounts a filespace of the cluster, under `base`:
/// by dbid, so the two segments of a pair on one machine never share one.
pub fn mountpoint(base: &Path, dbid: u32) -> PathBuf {
    base.join(format!("seg{dbid}"))
}

/// The paths of a cluster directory.
#[derive(Clone, Debug)]
pub struct ClusterDir {
    pub root: PathBuf,
}

impl ClusterDir {
    pub fn new(root: impl Into<PathBuf>) -> ClusterDir {
        ClusterDir { root: root.into() }
    }
    pub fn cluster_file(&self) -> PathBuf {
        self.root.join("cluster.json")
    }
    pub fn key_file(&self) -> PathBuf {
        self.root.join("cluster.key")
    }
    pub fn catalog(&self) -> PathBuf {
        self.root.join("catalog.json")
    }
    pub fn segment_config(&self, dbid: u32) -> PathBuf {
        self.root.join("segments").join(format!("dbid{dbid}.json"))
    }
    pub fn segment_dir(&self, dbid: u32) -> PathBuf {
        self.root.join("segments").join(format!("dbid{dbid}"))
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }
    pub fn pid(&self, name: &str) -> PathBuf {
        self.root.join("run").join(format!("{name}.pid"))
    }

    /// Read `cluster.json` (sealed; a changed byte is damage).
    pub fn load(&self) -> Result<ClusterFile> {
        let path = self.cluster_file();
        let bytes = std::fs::read(&path).map_err(|e| {
            if sealed::good_copy(&path).exists() {
                return self.damaged(
                    "cluster file",
                    &path,
                    format!("it cannot be read ({e}), but its last good copy is there"),
                );
            }
            Error::io(
                format!(
                    "reading {} (is {} a cluster directory? see filerep init)",
                    path.display(),
                    self.root.display()
                ),
                e,
            )
        })?;
        ClusterFile::from_bytes(&bytes).map_err(|reason| self.damaged("cluster file", &path, reason))
    }

    /// The error for a damaged file of this directory, with the command that restores it.
    pub fn damaged(&self, what: &'static str, path: &Path, reason: String) -> Error {
        tracing::info!(path = %path.display(), %reason, "{what} damaged");
        let restore = format!("restore it with: filerep catalog restore --cluster-dir {}", self.root.display());
        let restore = match reason.contains("plain JSON") {
            true => format!(
                "if it was written by hand or by an older filerep, seal it with: filerep catalog seal --cluster-dir {}; else {restore}",
                self.root.display()
            ),
            false => restore,
        };
        Error::Damaged { what, path: path.display().to_string(), reason, restore }
    }

    /// The catalog file, checked against this directory: the cluster's id
    /// and block size, and each segment's configuration (its cluster,
    /// content and control address). A catalog that disagrees is damaged.
    pub fn load_catalog(&self, file: &ClusterFile) -> Result<Catalog> {
        let (cat, shown) = match &file.coordinator {
            Some(spec) => (filerep::cluster::coordinator::read(spec)?, PathBuf::from(spec)),
            None => (Catalog::load(&self.catalog())?, self.catalog()),
        };
        self.agrees(file, &cat).map_err(|reason| self.damaged("catalog", &shown, reason))?;
        Ok(cat)
    }

    /// Whether `cat` agrees with the cluster file and every segment's
    /// configuration; else what disagrees.
    pub fn agrees(&self, file: &ClusterFile, cat: &Catalog) -> std::result::Result<(), String> {
        if cat.cluster_id != file.cluster_id || cat.block_size != file.block_size {
            return Err(format!(
                "it is of cluster {:016x} with {} B blocks, the cluster file says {:016x} with {} B blocks",
                cat.cluster_id, cat.block_size, file.cluster_id, file.block_size
            ));
        }
        for (content, a) in cat.addresses() {
            let cfg = self.segment(a.dbid).map_err(|e| format!("dbid {}: {}", a.dbid, e.cause()))?;
            if cfg.cluster_id != cat.cluster_id || cfg.content != content || cfg.control_listen != a.control {
                return Err(format!(
                    "dbid {} is content {content} of cluster {:016x} on {} in the catalog, but its configuration says content {} of cluster {:016x} on {}",
                    a.dbid, cat.cluster_id, a.control, cfg.content, cfg.cluster_id, cfg.control_listen
                ));
            }
        }
        Ok(())
    }

    pub fn key(&self) -> Result<ClusterKey> {
        ClusterKey::from_file(&self.key_file())
            .map_err(|e| Error::InvalidArgument(format!("key file {}: {e}", self.key_file().display())))
    }

    pub fn segment(&self, dbid: u32) -> Result<SegmentConfig> {
        SegmentConfig::load(&self.segment_config(dbid))
    }

    /// Every segment configuration in the directory, by the dbid its file
    /// name gives (`segments/dbid<N>.json`; other files are not ones).
    pub fn segment_configs(&self) -> Result<Vec<(u32, SegmentConfig)>> {
        let segments = self.root.join("segments");
        let entries =
            std::fs::read_dir(&segments).map_err(|e| Error::io(format!("reading {}", segments.display()), e))?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let dbid = name.strip_prefix("dbid").and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse().ok());
            if let Some(dbid) = dbid {
                out.push((dbid, self.segment(dbid)?));
            }
        }
        Ok(out)
    }

    /// Replace `cluster.json`, sealed, atomically and durably, with its
    /// last good copy beside it.
    pub fn write_cluster_file(&self, file: &ClusterFile) -> Result<()> {
        let path = self.cluster_file();
        let json = serde_json::to_vec_pretty(file).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        sealed::store_with_copy(&path, sealed::Kind::ClusterFile, CLUSTER_FILE_VERSION, &json)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Write a segment's configuration, sealed, atomically and durably.
    pub fn write_segment(&self, cfg: &SegmentConfig) -> Result<()> {
        let path = self.segment_config(cfg.dbid);
        if let Some(d) = path.parent() {
            filerep::durable::files::create_dir_all(d)?;
        }
        sealed::replace(&path, &cfg.to_sealed()?).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

/// The format version of a sealed cluster file.
pub const CLUSTER_FILE_VERSION: u32 = 1;

impl ClusterFile {
    /// From a sealed file's bytes; `Err`: what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<ClusterFile, String> {
        let s = sealed::open(sealed::Kind::ClusterFile, CLUSTER_FILE_VERSION, bytes).map_err(|e| e.to_string())?;
        serde_json::from_slice(s.body).map_err(|e| format!("its JSON does not read: {e}"))
    }
}

/// What the operator tools ask of the hosts ([`layout::HostProbe`]):
/// answered on this machine for the hosts that are this machine, and by a
/// segment running there for another machine's (over the control channel,
/// `SegmentRequest::Inspect`). Before any segment exists (`filerep init`),
/// another machine's paths can be taken as written: they are then listed
/// by [`ClusterProbe::unchecked`], for the operator to check by hand.
pub struct ClusterProbe {
    machines: std::collections::BTreeMap<String, hosts::Machine>,
    key: Option<ClusterKey>,
    /// Host → the control endpoints of its segments, to ask.
    agents: std::collections::BTreeMap<String, Vec<String>>,
    as_written: bool,
    unchecked: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// The answers of one host: per path, per port.
type Answers = (Vec<std::result::Result<layout::PathInfo, String>>, Vec<std::result::Result<(), String>>);

impl ClusterProbe {
    pub fn new(hosts: &[hosts::Host]) -> ClusterProbe {
        ClusterProbe {
            machines: hosts.iter().map(|h| (h.name.clone(), h.machine.clone())).collect(),
            key: None,
            agents: Default::default(),
            as_written: false,
            unchecked: Default::default(),
        }
    }

    /// Ask these segments (host → control endpoints) about their machines.
    pub fn with_agents(mut self, key: ClusterKey, agents: std::collections::BTreeMap<String, Vec<String>>) -> Self {
        self.key = Some(key);
        self.agents = agents;
        self
    }

    /// Take another machine's paths as written when no segment there answers.
    pub fn taking_remote_paths_as_written(mut self) -> Self {
        self.as_written = true;
        self
    }

    /// The hosts whose paths and ports were taken as written, unchecked.
    pub fn unchecked(&self) -> Vec<String> {
        self.unchecked.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    fn here(&self, host: &str) -> bool {
        host == layout::THIS_MACHINE || self.machines.get(host) == Some(&hosts::Machine::This)
    }

    /// Ask a segment of `host` (the first that answers).
    fn ask(
        &self,
        host: &str,
        paths: &[(PathBuf, bool)],
        ports: &[(String, u16)],
    ) -> std::result::Result<Answers, String> {
        let agents = self.agents.get(host).map(Vec::as_slice).unwrap_or_default();
        let Some(key) = &self.key else { return Err(format!("no segment of host {host} to ask")) };
        let mut why = format!("no segment of host {host} is known to ask");
        for agent in agents {
            let (mut p, mut q) = (Vec::new(), Vec::new());
            let chunks = paths.len().max(ports.len()).div_ceil(filerep::cluster::segment::MAX_INSPECT).max(1);
            let mut ok = true;
            for c in 0..chunks {
                let range = |n: usize| {
                    (c * filerep::cluster::segment::MAX_INSPECT).min(n)
                        ..((c + 1) * filerep::cluster::segment::MAX_INSPECT).min(n)
                };
                let req = SegmentRequest::Inspect {
                    paths: paths[range(paths.len())].to_vec(),
                    ports: ports[range(ports.len())].to_vec(),
                };
                match filerep::cluster::control::call::<_, SegmentResponse>(agent, key, &req, Duration::from_secs(30)) {
                    Ok(SegmentResponse::Inspected { paths, ports }) => {
                        p.extend(paths);
                        q.extend(ports);
                    }
                    Ok(SegmentResponse::Refused(r)) => {
                        why = format!("the segment on {agent} refused: {r}");
                        ok = false;
                        break;
                    }
                    Ok(other) => {
                        why = format!("the segment on {agent} answered {other:?}");
                        ok = false;
                        break;
                    }
                    Err(e) => {
                        why = e.to_string();
                        ok = false;
                        break;
                    }
                }
            }
            if ok && p.len() == paths.len() && q.len() == ports.len() {
                return Ok((p, q));
            }
        }
        Err(why)
    }

    fn remote_unchecked(&self, host: &str) -> bool {
        let unchecked = self.as_written && !self.agents.contains_key(host);
        if unchecked {
            self.unchecked.lock().unwrap_or_else(|e| e.into_inner()).insert(host.to_string());
        }
        unchecked
    }
}

impl layout::HostProbe for ClusterProbe {
    fn machine(&self, host: &str) -> String {
        if self.here(host) {
            return hosts::Machine::This.key();
        }
        self.machines.get(host).map_or_else(|| format!("host {host}"), hosts::Machine::key)
    }

    fn state(&self, host: &str, path: &Path) -> std::io::Result<layout::PathState> {
        let mut r = self.inspect(host, &[(path.to_path_buf(), false)]);
        r.pop().unwrap_or_else(|| Err(std::io::Error::other("no answer"))).map(|i| i.state)
    }

    fn inspect(&self, host: &str, paths: &[(PathBuf, bool)]) -> Vec<std::io::Result<layout::PathInfo>> {
        if self.here(host) {
            return hosts::inspect_paths(paths);
        }
        if self.remote_unchecked(host) {
            let written = |p: &PathBuf| layout::PathInfo {
                state: layout::PathState::Absent,
                resolved: p.components().collect(),
                unwritable: None,
            };
            return paths.iter().map(|(p, _)| Ok(written(p))).collect();
        }
        match self.ask(host, paths, &[]) {
            Ok((answers, _)) => answers.into_iter().map(|a| a.map_err(std::io::Error::other)).collect(),
            Err(why) => {
                let e = format!("host {host} is another machine, where this command cannot look itself, and no segment there answered to look for it ({why}); start that host's segments, or check by hand there that the path is absent or an empty directory and not a symbolic link into another segment's directory (readlink -f PATH)");
                paths.iter().map(|_| Err(std::io::Error::other(e.clone()))).collect()
            }
        }
    }

    fn ports_free(&self, host: &str, ports: &[(String, u16)]) -> Vec<std::result::Result<(), String>> {
        if self.here(host) {
            return ports.iter().map(|(a, p)| hosts::port_free(a, *p)).collect();
        }
        if self.remote_unchecked(host) {
            return ports.iter().map(|_| Ok(())).collect();
        }
        match self.ask(host, &[], ports) {
            Ok((_, answers)) => answers,
            Err(why) => ports
                .iter()
                .map(|(a, p)| {
                    Err(format!(
                        "cannot tell whether port {p} is free on {a}: no segment of host {host} answered ({why})"
                    ))
                })
                .collect(),
        }
    }
}

/// The directory a segment keeps filespace `base`'s data in.
/// Where a segment listens, as its configuration says (its host: the
/// address of its control endpoint).
pub fn address_of(cfg: &SegmentConfig) -> SegmentAddress {
    SegmentAddress {
        dbid: cfg.dbid,
        host: host_of(&cfg.control_listen).to_string(),
        control: cfg.control_listen.clone(),
        data: cfg.data_listen.clone(),
        filespaces: cfg.filespaces.clone(),
    }
}

pub fn segment_data_dir(base: &Path, content: u32) -> PathBuf {
    base.join(format!("gpseg{content}"))
}

/// A directory a new segment may use: absent, or empty.
fn check_fresh_dir(d: &Path, what: &str) -> Result<()> {
    match std::fs::read_dir(d) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{what} {} is not empty: give a new or empty directory",
                    d.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("{what} {}", d.display()), e)),
    }
}

/// A segment's configuration in this cluster directory.
pub fn segment_config(
    dir: &ClusterDir,
    file: &ClusterFile,
    content: u32,
    address: &SegmentAddress,
) -> Result<SegmentConfig> {
    let home = dir.segment_dir(address.dbid);
    Ok(SegmentConfig {
        dbid: address.dbid,
        content,
        cluster_id: file.cluster_id,
        block_size: file.block_size,
        filespaces: address.filespaces.clone(),
        key_file: dir.key_file(),
        control_listen: address.control.clone(),
        data_listen: address.data.clone(),
        socket: home.join("segment.sock"),
        state_dir: home.join("state"),
        arbiter: file.arbiter.clone(),
        sync_level: "applied".into(),
        decision_timeout_ms: 5000,
        ack_timeout_ms: 3000,
        // An idle pair's only traffic: hundreds of pairs on a host pay it
        // together (six heartbeats per ack timeout still find silence in time).
        heartbeat_ms: 500,
        handshake_timeout_ms: 2000,
        prefer_uring: true,
        direct: false,
        // Prometheus metrics are asked for per segment (docs/operations.md, Metrics).
        metrics_listen: None,
        activity_limit: filerep::core::primary::ACTIVITY_LIMIT,
        mounts: file
            .mounts
            .iter()
            .map(|m| MountEntry {
                filespace: m.filespace.clone(),
                mountpoint: mountpoint(&m.base, address.dbid),
                uid: None,
                gid: None,
                allow_other: false,
                threads: 8,
                log_files: None,
            })
            .collect(),
    })
}

/// Longest path a Unix socket takes (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Why segment `dbid`'s client socket cannot be made in this cluster
/// directory (its path too long for a Unix socket), if it cannot.
pub fn socket_path_problem(dir: &ClusterDir, dbid: u32) -> Option<String> {
    let sock = dir.segment_dir(dbid).join("segment.sock");
    let n = sock.as_os_str().len();
    (n > MAX_SOCKET_PATH).then(|| {
        format!(
            "the client socket of dbid {dbid} would be {} ({n} bytes), longer than the {MAX_SOCKET_PATH} a Unix socket path holds; use a cluster directory with a shorter path",
            layout::shown(&sock)
        )
    })
}

/// The address of a planned mirror.
pub fn planned_address(dbid: u32, m: &layout::PlannedMirror, names: &[String]) -> SegmentAddress {
    SegmentAddress {
        dbid,
        host: m.host.clone(),
        control: format!("{}:{}", m.address, m.port),
        data: format!("{}:{}", m.address, m.mirror_replication_port),
        filespaces: names.iter().zip(&m.data_dirs).map(|(n, d)| format!("{n}={}", d.display())).collect(),
    }
}

/// The cluster as the layout module sees it.
pub fn layout_cluster<'a>(
    names: &[String],
    instances: impl Iterator<Item = (u32, &'a SegmentAddress, layout::Role)>,
) -> layout::Cluster {
    layout::Cluster {
        filespaces: names.to_vec(),
        instances: instances
            .map(|(content, a, role)| layout::Instance {
                content,
                dbid: a.dbid,
                role,
                host: a.host.clone(),
                address: a.address().to_string(),
                port: a.port().unwrap_or(0),
                replication_port: a.replication_port(),
                data_dirs: a
                    .filespaces
                    .iter()
                    .map(|f| PathBuf::from(f.split_once('=').map_or(f.as_str(), |(_, d)| d)))
                    .collect(),
            })
            .collect(),
        local_paths: Vec::new(),
    }
}

/// The catalog's segments as the layout module sees them (roles as preferred).
pub fn catalog_layout(file: &ClusterFile, cat: &Catalog) -> layout::Cluster {
    let mut all = Vec::new();
    for p in &cat.pairs {
        for (s, a) in p.pair.segments.iter().zip(&p.addresses) {
            let role = match s.preferred_role {
                filerep::core::pair::Role::Primary => layout::Role::Primary,
                filerep::core::pair::Role::Mirror => layout::Role::Mirror,
            };
            all.push((p.pair.content, a, role));
        }
    }
    for s in &cat.unmirrored {
        all.push((s.content, &s.address, layout::Role::Primary));
    }
    layout_cluster(&file.filespaces, all.into_iter())
}

mod init;
mod overlaps;
mod processes;
mod restore;

pub use init::*;
pub use overlaps::*;
pub use processes::*;
pub use restore::*;

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
                out.push(e.path());
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_journal_undoes_what_was_made_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        std::fs::create_dir_all(t.join("data/existing")).unwrap();
        std::fs::write(t.join("data/existing/keep"), b"mine").unwrap();
        let before = listing(t);
        let mut j = Journal::default();
        j.create_dir_all(&t.join("data/mirror/gpseg0")).unwrap();
        j.create_dir_all(&t.join("data/mirror/gpseg1")).unwrap();
        j.create_dir_all(&t.join("data/existing")).unwrap();
        std::fs::write(t.join("data/new.json"), b"{}").unwrap();
        j.created(&t.join("data/new.json"));
        j.created(&t.join("data/never-made"));
        assert!(t.join("data/mirror/gpseg1").is_dir());
        assert_eq!(j.undo(), Vec::<String>::new());
        assert_eq!(listing(t), before, "everything made is gone; what was there stays");
    }

    #[test]
    fn a_segment_log_names_its_fatal_error() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("dbid9.log");
        std::fs::write(
            &log,
            "\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m starting\nfilerep: binding 127.0.0.3:41000: Address already in use (os error 98)\n\n",
        )
        .unwrap();
        assert_eq!(log_cause(&log).unwrap(), "binding 127.0.0.3:41000: Address already in use (os error 98)");
        std::fs::write(&log, "\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m still starting\n").unwrap();
        assert_eq!(log_cause(&log).unwrap(), "2026  WARN still starting");
        assert_eq!(log_cause(&tmp.path().join("none.log")), None);
    }
}
