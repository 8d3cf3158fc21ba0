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
use filerep::cluster::segment::{Acting, SegmentConfig, SegmentRequest, SegmentResponse, SegmentStatus};
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

/// What `filerep init` creates.
#[derive(Clone, Debug)]
pub struct InitSpec {
    /// Segment hosts (loopback addresses on one machine).
    pub hosts: Vec<String>,
    pub segments_per_host: u32,
    /// The first primary port on each host; slot `j` uses `base_port + j`.
    pub base_port: u16,
    /// Per filespace, its name and the base under which each primary gets
    /// `gpseg<content>` (the default filespace first).
    pub data_dirs: Vec<(String, PathBuf)>,
    pub block_size: u32,
    /// Mirrors from the start: placement, port offset, and per filespace
    /// the base of the mirrors' directories.
    pub mirrors: Option<(Placement, u32, Vec<PathBuf>)>,
    /// The arbiters' control addresses, comma-separated (several only
    /// with a coordinator).
    pub arbiter: String,
    /// The catalog and leadership on etcd (`etcd://HOST:PORT[,…][/PREFIX]`;
    /// the prefix defaults to `/filerep/<cluster id>`).
    pub coordinator: Option<String>,
    /// Accept hosts that are all this machine (test clusters on loopback
    /// addresses); without it two such hosts are refused.
    pub allow_one_machine: bool,
}

/// Most arbiters a cluster lists.
pub const MAX_ARBITERS: usize = 7;

/// Most hosts and segments per host `init` accepts (a bound, not a goal).
pub const MAX_HOSTS: usize = 256;
pub const MAX_SEGMENTS_PER_HOST: u32 = 64;

impl InitSpec {
    /// Every value on its own, and the hosts: each resolved, no two one
    /// host, no two this machine unless allowed.
    fn check(&self) -> Result<Vec<hosts::Host>> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.hosts.is_empty() || self.hosts.len() > MAX_HOSTS {
            return bad(format!("--hosts: give 1 to {MAX_HOSTS} hosts (got {})", self.hosts.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for h in &self.hosts {
            if h.is_empty() || h.contains([':', ' ', '/']) {
                return bad(format!("--hosts: {:?} is not a host name or IPv4 address", layout::elide(h)));
            }
            if !seen.insert(h) {
                return bad(format!("--hosts: {h} appears twice"));
            }
        }
        let hosts = hosts::check_hosts(&self.hosts, self.allow_one_machine)
            .map_err(|e| Error::InvalidArgument(format!("--hosts: {e}")))?;
        if self.segments_per_host == 0 || self.segments_per_host > MAX_SEGMENTS_PER_HOST {
            return bad(format!("--segments-per-host {}: give 1 to {MAX_SEGMENTS_PER_HOST}", self.segments_per_host));
        }
        if self.data_dirs.is_empty() {
            return bad("--data-dir: give at least one NAME=DIRECTORY (the default filespace first)".into());
        }
        let here = hosts.iter().any(|h| h.machine == hosts::Machine::This);
        check_bases("--data-dir", &self.data_dirs, here)?;
        filerep::config::check_block_size(self.block_size)?;
        let last = self.base_port as u64 + self.segments_per_host as u64 - 1;
        if self.base_port == 0 {
            return bad("--base-port 0: give the first primary port, from 1 to 65535".into());
        }
        if last > 65535 {
            return bad(format!(
                "--base-port {}: {} segments per host would use ports up to {last}, past 65535; choose a base port of at most {}",
                self.base_port,
                self.segments_per_host,
                65536 - self.segments_per_host as u64
            ));
        }
        if let Some((_, offset, bases)) = &self.mirrors {
            if bases.len() != self.data_dirs.len() {
                return bad(format!(
                    "--mirror-data-dir: {} given for {} filespaces; give one per --data-dir, in the same order",
                    bases.len(),
                    self.data_dirs.len()
                ));
            }
            let named: Vec<(String, PathBuf)> =
                self.data_dirs.iter().map(|(n, _)| n.clone()).zip(bases.iter().cloned()).collect();
            check_bases("--mirror-data-dir", &named, here)?;
            for slot in 0..self.segments_per_host {
                layout::mirror_ports(slot, self.base_port + slot as u16, *offset)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            }
        }
        Ok(hosts)
    }
}

/// Filespace bases as given: each name once, absolute paths without `.` or
/// `..` (a relative one would depend on where each command runs), no base
/// the same as or inside another, as written and (`resolve`: some host is
/// this machine) once symbolic links are resolved here.
fn check_bases(flag: &str, bases: &[(String, PathBuf)], resolve: bool) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    let mut names = std::collections::BTreeSet::new();
    let mut taken: DirIndex<(String, PathBuf)> = DirIndex::default();
    let mut resolver = hosts::Resolver::default();
    for (name, base) in bases {
        if !names.insert(name) {
            return bad(format!("{flag}: filespace {name} is given twice; give each filespace once"));
        }
        if !hosts::plain_absolute(base) {
            return bad(format!(
                "{flag} {name}={}: not an absolute path without . or ..; give the full path, starting with / (a relative one would depend on where each command runs)",
                layout::shown(base)
            ));
        }
        let written: PathBuf = base.components().collect();
        let real = if resolve { resolver.resolve(base).unwrap_or_else(|_| written.clone()) } else { written.clone() };
        for (path, how) in [
            (&written, String::new()),
            (&real, format!(" (which is {} once symbolic links are resolved)", layout::shown(&real))),
        ] {
            if let Some((relation, other, (other_name, other_base))) = taken.overlap("", path) {
                let _ = other;
                let how = if path == &written { String::new() } else { how };
                return bad(format!(
                    "{flag} {name}={}{how} {} {}, the base of filespace {other_name}; every filespace needs a base of its own, apart from the others",
                    layout::shown(base),
                    relation.words(),
                    layout::shown(other_base)
                ));
            }
        }
        taken.insert("", written.clone(), (name.clone(), written.clone()));
        if real != written {
            taken.insert("", real, (name.clone(), written));
        }
    }
    Ok(())
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
    })
}

/// What `filerep init` made.
#[derive(Clone, Debug)]
pub struct Initialized {
    pub catalog: Catalog,
    /// Hosts on other machines: their directories and ports were taken as
    /// written (no segment runs there yet to look) and not created; the
    /// operator checks and creates them there (docs/operations.md, Placement).
    pub elsewhere: Vec<String>,
}

/// What a command created, undone in reverse order when a later step
/// fails, so that a refusal leaves things as they were.
#[derive(Default)]
pub struct Journal {
    created: Vec<PathBuf>,
}

impl Journal {
    /// `create_dir_all`, remembering the topmost directory it made.
    pub fn create_dir_all(&mut self, d: &Path) -> Result<()> {
        let top = d.ancestors().take_while(|a| !a.exists()).last().map(Path::to_path_buf);
        filerep::durable::files::create_dir_all(d)?;
        self.created.extend(top);
        Ok(())
    }

    /// Remember a file this command created (it did not exist before).
    pub fn created(&mut self, f: &Path) {
        self.created.push(f.to_path_buf());
    }

    /// Remove everything made, newest first; what could not be removed.
    pub fn undo(self) -> Vec<String> {
        let mut left = Vec::new();
        for p in self.created.into_iter().rev() {
            let r = match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
                Ok(_) => std::fs::remove_file(&p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::error!(path = %p.display(), error = %e, "cannot undo");
                left.push(format!("{}: {e}", p.display()));
            }
        }
        left
    }
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

/// One message for a list of problems.
fn problems_error(what: &str, problems: Vec<String>) -> Error {
    let n = problems.len();
    let shown: Vec<String> = problems.iter().take(layout::SHOWN_PROBLEMS).map(|p| format!("\n  {p}")).collect();
    let more = if n > layout::SHOWN_PROBLEMS {
        format!("\n  … and {} more", n - layout::SHOWN_PROBLEMS)
    } else {
        String::new()
    };
    Error::InvalidArgument(format!("{what} ({n} problem{}):{}{more}", if n == 1 { "" } else { "s" }, shown.concat()))
}

/// Before `init` writes anything: every segment directory, on its host
/// (symbolic links resolved there), is absent or empty, can be created
/// and written, and overlaps no other segment's directory on its machine
/// nor the cluster directory; no two endpoints share a port; every port
/// is free.
fn check_placement(
    dir: &ClusterDir,
    spec: &InitSpec,
    segments: &[(u32, SegmentAddress)],
    probe: &ClusterProbe,
) -> Result<()> {
    let mut problems = Vec::new();
    let here = probe.machine(layout::THIS_MACHINE);
    let mut taken: DirIndex<String> = DirIndex::default();
    let root = hosts::Resolver::default().resolve(&dir.root).unwrap_or_else(|_| dir.root.clone());
    taken.insert(&here, root, "the cluster directory".to_string());
    // Every directory of a host in one question.
    let mut asks: std::collections::BTreeMap<&str, Vec<(PathBuf, bool)>> = Default::default();
    let mut dirs = Vec::new();
    for (_, a) in segments {
        for fs in &a.filespaces {
            let Some((name, d)) = fs.split_once('=') else { continue };
            let list = asks.entry(a.host.as_str()).or_default();
            list.push((PathBuf::from(d), true));
            dirs.push((a, name, PathBuf::from(d), list.len() - 1));
        }
    }
    let answers: std::collections::BTreeMap<&str, Vec<std::io::Result<layout::PathInfo>>> =
        asks.iter().map(|(h, paths)| (*h, probe.inspect(h, paths))).collect();
    for (a, name, d, k) in dirs {
        let what =
            format!("data directory {} of dbid {} (filespace {name}) on host {}", layout::shown(&d), a.dbid, a.host);
        let info = match &answers[a.host.as_str()][k] {
            Ok(info) => info,
            Err(e) => {
                problems.push(format!("cannot check the {what}: {e}"));
                continue;
            }
        };
        let machine = probe.machine(&a.host);
        if let Some((relation, other, owner)) = taken.overlap(&machine, &info.resolved) {
            let via = if info.resolved == d {
                String::new()
            } else {
                format!(" (which is {} once symbolic links are resolved)", layout::shown(&info.resolved))
            };
            problems.push(format!(
                "the {what}{via} {} {}, {owner}; give every segment a directory of its own, outside the cluster directory",
                relation.words(),
                layout::shown(other)
            ));
        }
        taken.insert(
            &machine,
            info.resolved.clone(),
            format!("the {name} directory of dbid {} on host {}", a.dbid, a.host),
        );
        match (info.state, &info.unwritable) {
            (layout::PathState::NonEmptyDirectory, _) => {
                problems.push(format!("the {what} is not empty: give a new or empty directory"))
            }
            (layout::PathState::NotADirectory, _) => {
                problems.push(format!("the {what} exists and is not a directory: remove it or give another base"))
            }
            (_, Some(why)) => problems.push(format!("the {what} cannot be created: {why}")),
            _ => {}
        }
    }
    problems.extend(segments.iter().filter_map(|(_, a)| socket_path_problem(dir, a.dbid)));
    // Endpoints: no two on one port of one host, each free there.
    let mut ports: std::collections::BTreeMap<(String, u16), String> = Default::default();
    let mut free: std::collections::BTreeMap<&str, Vec<(String, u16, String)>> = Default::default();
    for (_, a) in segments {
        for (which, endpoint) in [("control", &a.control), ("replication", &a.data)] {
            let Some(port) = SegmentAddress::port_of(endpoint) else { continue };
            let who = format!("the {which} port of dbid {} ({endpoint})", a.dbid);
            if let Some(first) = ports.insert((a.host.clone(), port), who.clone()) {
                problems.push(format!("{who} is also {first}; choose another --base-port or offset"));
            }
            free.entry(a.host.as_str()).or_default().push((host_of(endpoint).to_string(), port, who));
        }
    }
    for (host, list) in free {
        let asked: Vec<(String, u16)> = list.iter().map(|(a, p, _)| (a.clone(), *p)).collect();
        for ((_, _, who), r) in list.iter().zip(probe.ports_free(host, &asked)) {
            if let Err(why) = r {
                problems.push(format!("{who} on host {host}: {why}"));
            }
        }
    }
    // Each arbiter's endpoint: on a segment's port, or taken on this machine.
    let arbiters = filerep::cluster::probe::arbiter_addresses(&spec.arbiter);
    if arbiters.len() > 1 && spec.coordinator.is_none() {
        problems.push(format!(
            "--arbiter {}: several arbiters need a coordinator to choose the acting one (--coordinator etcd://...)",
            spec.arbiter
        ));
    }
    if arbiters.is_empty() || arbiters.len() > MAX_ARBITERS {
        problems.push(format!("--arbiter {:?}: give 1 to {MAX_ARBITERS} HOST:PORT, separated by commas", spec.arbiter));
    }
    for (i, arbiter) in arbiters.iter().enumerate() {
        if arbiters[..i].contains(arbiter) {
            problems.push(format!("--arbiter: {arbiter} appears twice"));
            continue;
        }
        match (arbiter.rsplit_once(':'), SegmentAddress::port_of(arbiter)) {
            (Some((h, _)), Some(port)) => match hosts::resolve_host(h) {
                Ok(arbiter_host) => {
                    for (_, a) in segments {
                        let same_host = hosts::resolve_host(&a.host)
                            .is_ok_and(|s| s.addrs.iter().any(|x| arbiter_host.addrs.contains(x)));
                        for endpoint in [&a.control, &a.data] {
                            if same_host && SegmentAddress::port_of(endpoint) == Some(port) {
                                problems.push(format!("the arbiter's address {} is also the endpoint {endpoint} of dbid {}; give --arbiter another port", arbiter, a.dbid));
                            }
                        }
                    }
                    if arbiter_host.machine == hosts::Machine::This {
                        if let Err(why) = hosts::port_free(h, port) {
                            problems
                                .push(format!("the arbiter's address {}: {why}; give --arbiter another port", arbiter));
                        }
                    }
                }
                Err(e) => problems.push(format!("--arbiter {}: {e}", arbiter)),
            },
            _ => problems.push(format!("--arbiter {:?}: give HOST:PORT", arbiter)),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems_error("the cluster cannot be created as given", problems))
    }
}

/// Create a cluster directory: key, catalog, every segment's configuration
/// and data directories. Nothing is started. Everything is checked first
/// (hosts, directories on their machines, ports); a step that still fails
/// undoes what was made, so a refusal changes nothing.
pub fn init(dir: &ClusterDir, spec: &InitSpec) -> Result<Initialized> {
    let hosts = spec.check()?;
    if !hosts::plain_absolute(&dir.root) {
        return Err(Error::InvalidArgument(format!(
            "--cluster-dir {}: give an absolute path without . or ..",
            layout::shown(&dir.root)
        )));
    }
    check_fresh_dir(&dir.root, "cluster directory")?;
    let probe = ClusterProbe::new(&hosts).taking_remote_paths_as_written();
    let spp = spec.segments_per_host;
    let names: Vec<String> = spec.data_dirs.iter().map(|(n, _)| n.clone()).collect();
    let fs_of = |bases: &[PathBuf], content: u32| -> Vec<String> {
        names.iter().zip(bases).map(|(n, b)| format!("{n}={}", segment_data_dir(b, content).display())).collect()
    };
    let primary_bases: Vec<PathBuf> = spec.data_dirs.iter().map(|(_, b)| b.components().collect()).collect();
    // Primaries: content = host index * segments per host + slot; dbid = content + 2
    // (dbid 1 is Greenplum's coordinator; kept free so the numbers match its tools).
    let mut primaries = Vec::new();
    for (h, host) in spec.hosts.iter().enumerate() {
        for slot in 0..spp {
            let content = h as u32 * spp + slot;
            let port = spec.base_port + slot as u16;
            let offset = spec.mirrors.as_ref().map_or(layout::DEFAULT_PORT_OFFSET, |m| m.1);
            let repl = layout::mirror_ports(content, port, offset)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?
                .primary_replication;
            primaries.push((
                content,
                SegmentAddress {
                    dbid: content + 2,
                    host: host.clone(),
                    control: format!("{host}:{port}"),
                    data: format!("{host}:{repl}"),
                    filespaces: fs_of(&primary_bases, content),
                },
            ));
        }
    }
    let cluster_id = u64::from_le_bytes(random_bytes::<8>()?);
    let file = ClusterFile {
        cluster_id,
        block_size: spec.block_size,
        filespaces: names.clone(),
        hosts: spec.hosts.clone(),
        arbiter: spec.arbiter.clone(),
        coordinator: spec.coordinator.as_ref().map(|c| coordinator_name(c, cluster_id)).transpose()?,
        placement: spec.mirrors.as_ref().map(|m| m.0.name().to_string()),
        one_machine: spec.allow_one_machine,
    };
    let mut catalog = Catalog::new(cluster_id, spec.block_size, Vec::new());
    let mut segments: Vec<(u32, SegmentAddress)> = primaries.clone();
    match &spec.mirrors {
        None => {
            catalog.unmirrored = primaries
                .into_iter()
                .map(|(content, address)| CatalogSolo { content, generation: 1, up: false, address })
                .collect();
        }
        Some((placement, offset, bases)) => {
            let bases: Vec<PathBuf> = bases.iter().map(|b| b.components().collect()).collect();
            let mut cluster = layout_cluster(&names, primaries.iter().map(|(c, a)| (*c, a, layout::Role::Primary)));
            cluster.local_paths.push((dir.root.clone(), "the cluster directory".into()));
            let cfg = layout::place(&cluster, *placement, *offset, &bases)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let planned =
                layout::validate(&cfg, &cluster, &probe).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let next_dbid = primaries.len() as u32 + 2;
            for (i, m) in planned.iter().enumerate() {
                let (_, p) = primaries.iter().find(|(c, _)| *c == m.content).ok_or_else(|| {
                    Error::InvalidArgument(format!("placement named content {} that has no primary", m.content))
                })?;
                let mirror = planned_address(next_dbid + i as u32, m, &names);
                let mut primary = p.clone();
                primary.data = format!("{}:{}", primary.address(), m.primary_replication_port);
                // Both start empty: identical, hence synchronized.
                let pair = Pair::new(m.content, primary.dbid, mirror.dbid);
                segments.retain(|(c, _)| *c != m.content);
                segments.push((m.content, primary.clone()));
                segments.push((m.content, mirror.clone()));
                catalog.pairs.push(CatalogPair { pair, addresses: [primary, mirror] });
            }
            catalog.pairs.sort_by_key(|p| p.pair.content);
        }
    }
    check_placement(dir, spec, &segments, &probe)?;
    catalog.check().map_err(Error::InvalidArgument)?;
    let mut journal = Journal::default();
    let made = write_cluster(dir, &file, &catalog, &segments, &probe, &mut journal);
    if let Err(e) = made {
        let left = journal.undo();
        return Err(Error::InvalidArgument(format!(
            "{e}; {}",
            if left.is_empty() {
                "everything made so far was removed: nothing changed".to_string()
            } else {
                format!("these could not be removed: {}", left.join(", "))
            }
        )));
    }
    Ok(Initialized { catalog, elsewhere: probe.unchecked() })
}

/// `init`'s writes, each recorded in `journal`.
fn write_cluster(
    dir: &ClusterDir,
    file: &ClusterFile,
    catalog: &Catalog,
    segments: &[(u32, SegmentAddress)],
    probe: &ClusterProbe,
    journal: &mut Journal,
) -> Result<()> {
    journal.create_dir_all(&dir.root)?;
    for f in [
        dir.key_file(),
        dir.cluster_file(),
        sealed::good_copy(&dir.cluster_file()),
        dir.catalog(),
        sealed::good_copy(&dir.catalog()),
        dir.root.join("segments"),
    ] {
        journal.created(&f);
    }
    write_key(&dir.key_file())?;
    dir.write_cluster_file(file)?;
    for (content, a) in segments {
        // Another machine's directories are made there (docs/operations.md, Placement).
        if probe.machine(&a.host) == probe.machine(layout::THIS_MACHINE) {
            for fs in &a.filespaces {
                if let Some((_, d)) = fs.split_once('=') {
                    journal.create_dir_all(Path::new(d))?;
                }
            }
        }
        dir.write_segment(&segment_config(dir, file, *content, a)?)?;
    }
    match &file.coordinator {
        Some(spec) => filerep::cluster::coordinator::initialize(spec, catalog),
        None => catalog.store(&dir.catalog()),
    }
}

/// The coordinator's name as recorded: its prefix defaulted to the cluster's.
fn coordinator_name(spec: &str, cluster_id: u64) -> Result<String> {
    use filerep::cluster::coordinator::EtcdSpec;
    let given = match spec.strip_prefix("etcd://") {
        Some(rest) if !rest.contains('/') => format!("{spec}{}", EtcdSpec::default_prefix(cluster_id)),
        _ => spec.to_string(),
    };
    EtcdSpec::parse(&given).map(|s| s.name()).map_err(|e| Error::InvalidArgument(format!("--coordinator: {e}")))
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

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::io("reading random bytes for the cluster key", e))?;
    Ok(b)
}

/// The key, readable by its owner only, written whole and durably: the
/// temporary file is made with mode 0600 first, and the replace keeps it.
fn write_key(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Err(Error::InvalidArgument(format!("key file {} exists already", path.display())));
    }
    let hex: String = random_bytes::<32>()?.iter().map(|b| format!("{b:02x}")).collect();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(format!("creating key file {}", path.display()), e))?;
    filerep::durable::files::replace_file(path, hex.as_bytes())
}

// ---- processes -------------------------------------------------------------

/// Ask a segment for its status (`None`: it does not answer).
pub fn probe(control: &str, key: &ClusterKey, timeout: Duration) -> Option<SegmentStatus> {
    match filerep::cluster::control::call::<_, SegmentResponse>(control, key, &SegmentRequest::Probe, timeout) {
        Ok(SegmentResponse::Status(s)) => Some(s),
        _ => None,
    }
}

/// Segments asked at once by [`probe_many`] (a waiting probe costs a
/// blocked thread, no CPU).
const PROBES_IN_FLIGHT: usize = 256;

/// Ask every segment at once (at most 256 in flight): the answers, in the
/// order of `controls`, within about one `timeout` however many hang.
pub fn probe_many(controls: &[String], key: &ClusterKey, timeout: Duration) -> Vec<Option<SegmentStatus>> {
    filerep::cluster::probe::at_once(controls, PROBES_IN_FLIGHT, |c| probe(c, key, timeout))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether process `pid` runs. A zombie does not: a process started by an
/// earlier `filerep start` is reaped by whoever adopted it, maybe late.
fn alive(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The cluster's arbiters: the process name of each (`arbiter` for the
/// first, `arbiter2`, `arbiter3`… for the others) and its address.
pub fn arbiters(file: &ClusterFile) -> Vec<(String, String)> {
    filerep::cluster::probe::arbiter_addresses(&file.arbiter)
        .into_iter()
        .enumerate()
        .map(|(i, a)| (if i == 0 { "arbiter".to_string() } else { format!("arbiter{}", i + 1) }, a.to_string()))
        .collect()
}

/// What the arbiter at `addr` says of itself (acting, standing by, or
/// cut off from its coordinator).
pub fn leadership(addr: &str, key: &ClusterKey, timeout: Duration) -> std::result::Result<ArbiterLeadership, String> {
    use filerep::cluster::segment::{ArbiterRequest, ArbiterResponse};
    match filerep::cluster::control::call::<_, ArbiterResponse>(addr, key, &ArbiterRequest::Leadership, timeout) {
        Ok(ArbiterResponse::Leadership { arbiter, coordinator, leadership }) => {
            Ok(ArbiterLeadership { arbiter, coordinator, leadership })
        }
        Ok(other) => Err(format!("{addr} answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// An arbiter's answer to `Leadership`.
#[derive(Clone, Debug, Serialize)]
pub struct ArbiterLeadership {
    pub arbiter: String,
    pub coordinator: String,
    pub leadership: filerep::durable::catalog::Leadership,
}

/// The pid of process `name` of this cluster (`arbiter`, `dbid<N>`) if it
/// runs: its pid file names a live process whose command line holds
/// `mark` (its configuration or catalog path). A stale or damaged pid file
/// naming another process is not ours: nothing is ever signalled by it.
fn running(dir: &ClusterDir, name: &str) -> Option<i32> {
    let pid = read_pid(&dir.pid(name)).filter(|p| alive(*p))?;
    let mark = match name.strip_prefix("dbid").and_then(|d| d.parse::<u32>().ok()) {
        Some(dbid) => dir.segment_config(dbid),
        // An arbiter on a coordinator names no catalog file: its key file.
        None if dir.load().is_ok_and(|f| f.coordinator.is_some()) => dir.key_file(),
        None => dir.catalog(),
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let mark = mark.as_os_str().as_encoded_bytes();
    if args.contains(&mark) {
        Some(pid)
    } else {
        tracing::warn!(name, pid, "the pid file names a process that is not this cluster's: ignored");
        None
    }
}

/// Start `exe args...` in its own process group (a Ctrl-C of the caller
/// does not reach it), output appended to `log`, pid in `pid_file`.
fn spawn_detached(exe: &Path, args: &[String], log: &Path, pid_file: &Path) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    for p in [log, pid_file] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening log {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| Error::io("log handle", e))?;
    let child = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("starting {} {}", exe.display(), args.join(" ")), e))?;
    std::fs::write(pid_file, format!("{}\n", child.id()))
        .map_err(|e| Error::io(format!("writing {}", pid_file.display()), e))?;
    Ok(child.id() as i32)
}

/// Wait until `ready()` or the deadline; `what` names it in the error.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > limit {
            return Err(Error::NotDone(format!("{what} did not happen within {} s", limit.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(50)); // polling another process
    }
    Ok(())
}

/// The host part of `HOST:PORT`.
fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// The line of a process's log that says why it stopped: the last one it
/// printed as `filerep: …` (its fatal error), else its last line; terminal
/// colours removed.
pub fn log_cause(log: &Path) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text);
    let plain = |l: &str| {
        let mut out = String::new();
        let mut chars = l.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // ESC [ … letter
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out.trim().to_string()
    };
    let lines: Vec<String> = text.lines().map(plain).filter(|l| !l.is_empty()).collect();
    let fatal = lines.iter().rev().find(|l| l.starts_with("filerep: "));
    fatal.or(lines.last()).map(|l| layout::elide(l.trim_start_matches("filerep: ")))
}

/// A segment process this command started.
#[derive(Clone, Debug)]
pub struct Spawned {
    pub dbid: u32,
    pub pid: i32,
}

/// Start the segments of `addrs`, each in its own process group, and wait
/// until each answers on its control port (a process that exits is seen
/// at once). The failures, each with its cause from the segment's log.
pub fn start_segments(
    dir: &ClusterDir,
    exe: &Path,
    key: &ClusterKey,
    addrs: &[SegmentAddress],
    limit: Duration,
) -> (Vec<Spawned>, Vec<(u32, String)>) {
    let mut spawned = Vec::new();
    let mut failed = Vec::new();
    for a in addrs {
        let name = format!("dbid{}", a.dbid);
        let args: Vec<String> =
            vec!["segment".into(), "--config".into(), dir.segment_config(a.dbid).display().to_string()];
        match spawn_detached(exe, &args, &dir.log(&name), &dir.pid(&name)) {
            Ok(pid) => spawned.push((a, Spawned { dbid: a.dbid, pid })),
            Err(e) => failed.push((a.dbid, e.to_string())),
        }
    }
    let deadline = Instant::now() + limit;
    let mut answered = Vec::new();
    for (a, s) in spawned {
        let log = dir.log(&format!("dbid{}", a.dbid));
        loop {
            if probe(&a.control, key, Duration::from_secs(1)).is_some() {
                answered.push(s);
                break;
            }
            let gone = !alive(s.pid);
            if gone || Instant::now() > deadline {
                let cause = log_cause(&log).unwrap_or_else(|| "its log is empty".into());
                let what = if gone {
                    format!("segment dbid {} exited before answering on {}: {cause}", a.dbid, a.control)
                } else {
                    format!(
                        "segment dbid {} did not answer on {} within {} s (its log ends: {cause})",
                        a.dbid,
                        a.control,
                        limit.as_secs()
                    )
                };
                tracing::info!(dbid = a.dbid, %what, "segment did not start");
                failed.push((a.dbid, format!("{what}; log {}", log.display())));
                if !gone {
                    // Neither serving nor gone: it is not left half-started.
                    stop_spawned(dir, std::slice::from_ref(&s));
                }
                let _ = std::fs::remove_file(dir.pid(&format!("dbid{}", a.dbid)));
                break;
            }
            std::thread::sleep(Duration::from_millis(50)); // polling another process
        }
    }
    (answered, failed)
}

/// Stop processes this command started (SIGTERM, then SIGKILL), and
/// remove their pid files.
pub fn stop_spawned(dir: &ClusterDir, spawned: &[Spawned]) {
    use nix::sys::signal::{kill, Signal};
    for s in spawned {
        let pid = nix::unistd::Pid::from_raw(s.pid);
        let _ = kill(pid, Signal::SIGTERM);
        if wait_until("exit", Duration::from_secs(10), || !alive(s.pid)).is_err() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = wait_until("exit", Duration::from_secs(5), || !alive(s.pid));
        }
        let _ = std::fs::remove_file(dir.pid(&format!("dbid{}", s.dbid)));
    }
}

/// What `start` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StartReport {
    /// The arbiters started (their addresses).
    pub arbiters: Vec<String>,
    pub started: Vec<u32>,
    pub already_running: Vec<u32>,
    /// Started, but given no role by the arbiter in time (see `filerep state`).
    pub without_role: Vec<u32>,
    /// Not started: dbid and why (from its log).
    pub failed: Vec<(u32, String)>,
    /// Contents that are down (a double fault, or the primary lost while
    /// resynchronizing): their segments run but get no role until
    /// `filerep recover` restores them; not waited for.
    pub down: Vec<u32>,
}

/// Start the arbiter (if this is its host and it is not running) and
/// every segment of `host` (all when `None`) that is not running; wait
/// until each answers, and then until the arbiter has given each its role
/// (except those of a content that is down: none is coming).
pub fn start(dir: &ClusterDir, exe: &Path, host: Option<&str>) -> Result<StartReport> {
    let file = dir.load()?;
    let key = dir.key()?;
    let cat = dir.load_catalog(&file)?;
    let mut report = StartReport::default();
    let mine = |h: &str| host.is_none_or(|x| x == h);
    let mut to_start = Vec::new();
    for (_, a) in cat.addresses() {
        if !mine(&a.host) {
            continue;
        }
        if running(dir, &format!("dbid{}", a.dbid)).is_some() {
            report.already_running.push(a.dbid);
        } else {
            to_start.push(a.clone());
        }
    }
    let (spawned, failed) = start_segments(dir, exe, &key, &to_start, Duration::from_secs(30));
    report.started = spawned.iter().map(|s| s.dbid).collect();
    report.failed = failed;
    // The arbiters last: segments that are not answering yet would fail their probes.
    for (name, addr) in arbiters(&file) {
        if !mine(host_of(&addr)) || running(dir, &name).is_some() {
            continue;
        }
        let mut args: Vec<String> = vec!["arbiter".into()];
        match &file.coordinator {
            Some(spec) => args.extend(["--coordinator".into(), spec.clone()]),
            None => args.extend(["--catalog".into(), dir.catalog().display().to_string()]),
        }
        args.extend([
            "--key-file".into(),
            dir.key_file().display().to_string(),
            "--listen".into(),
            addr.clone(),
            "--interval-ms".into(),
            "200".into(),
        ]);
        let pid = spawn_detached(exe, &args, &dir.log(&name), &dir.pid(&name))?;
        // Answering: acting, standing by, or saying it cannot reach its coordinator.
        let answering = wait_until("the arbiter answering", Duration::from_secs(20), || {
            !alive(pid) || leadership(&addr, &key, Duration::from_secs(1)).is_ok()
        });
        if answering.is_err() || !alive(pid) {
            let cause = log_cause(&dir.log(&name)).unwrap_or_else(|| "its log is empty".into());
            return Err(Error::NotDone(format!(
                "the arbiter did not start on {addr}: {cause}; log {}",
                dir.log(&name).display()
            )));
        }
        report.arbiters.push(addr);
    }
    // Started means serving: wait until the arbiter has given every started
    // segment its role. A content that is down gets none: said, not waited for.
    let down: Vec<u32> = cat.pairs.iter().filter(|p| p.pair.down).map(|p| p.pair.content).collect();
    if !report.arbiters.is_empty() || arbiters(&file).iter().any(|(name, _)| running(dir, name).is_some()) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for a in &to_start {
            if !report.started.contains(&a.dbid) {
                continue;
            }
            if cat.content_of(a.dbid).is_some_and(|c| down.contains(&c)) {
                continue;
            }
            while !probe(&a.control, &key, Duration::from_secs(1))
                .is_some_and(|s| matches!(s.acting, Acting::Primary | Acting::Mirror))
            {
                if Instant::now() > deadline {
                    report.without_role.push(a.dbid);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50)); // the arbiter's rounds
            }
        }
    }
    report.down = down;
    Ok(report)
}

/// What `stop` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StopReport {
    pub arbiter: bool,
    pub stopped: Vec<u32>,
    pub killed: Vec<u32>,
}

/// Stop a cluster in order: the arbiter first (so stopping segments is not
/// taken for failures), then primaries (each shuts down in order: its
/// mirror confirms everything durable), then mirrors.
pub fn stop(dir: &ClusterDir, host: Option<&str>) -> Result<StopReport> {
    let file = dir.load()?;
    let key = dir.key()?;
    let cat = match dir.load_catalog(&file) {
        Ok(c) => c,
        // A coordinator that cannot be reached does not keep the processes
        // here running: each segment this directory configured is stopped,
        // in dbid order (roles unknown).
        Err(e) if file.coordinator.is_some() => {
            tracing::warn!(error = %e, "the catalog cannot be read: stopping every configured segment");
            configured_segments(dir, &file)?
        }
        Err(e) => return Err(e),
    };
    let mut report = StopReport::default();
    let mine = |h: &str| host.is_none_or(|x| x == h);
    let stop_pid = |name: &str| -> bool {
        let Some(pid) = running(dir, name) else { return false };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        let gone = wait_until(&format!("{name} exiting"), Duration::from_secs(20), || !alive(pid)).is_ok();
        if !gone {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(dir.pid(name));
        gone
    };
    for (name, addr) in arbiters(&file) {
        if mine(host_of(&addr)) {
            report.arbiter |= stop_pid(&name);
        }
    }
    // The catalog as the arbiter left it: primaries first.
    let cat = dir.load_catalog(&file).unwrap_or(cat);
    let mut order: Vec<(bool, &SegmentAddress)> = Vec::new();
    for p in &cat.pairs {
        for (s, a) in p.pair.segments.iter().zip(&p.addresses) {
            order.push((s.role == filerep::core::pair::Role::Mirror, a));
        }
    }
    for s in &cat.unmirrored {
        order.push((false, &s.address));
    }
    order.sort_by_key(|(mirror, a)| (*mirror, a.dbid));
    for (_, a) in order {
        if !mine(&a.host) {
            continue;
        }
        let name = format!("dbid{}", a.dbid);
        let Some(pid) = running(dir, &name) else { continue };
        // An orderly stop first, once the process on that address says it
        // is this dbid; a signal if it does not answer.
        if probe(&a.control, &key, Duration::from_secs(2)).is_some_and(|s| s.dbid == a.dbid) {
            let stop = SegmentRequest::Stop;
            let _ =
                filerep::cluster::control::call::<_, SegmentResponse>(&a.control, &key, &stop, Duration::from_secs(5));
        }
        if wait_until(&format!("dbid {} exiting", a.dbid), Duration::from_secs(30), || !alive(pid)).is_ok() {
            report.stopped.push(a.dbid);
            let _ = std::fs::remove_file(dir.pid(&name));
        } else if stop_pid(&name) {
            report.stopped.push(a.dbid);
        } else {
            report.killed.push(a.dbid);
        }
    }
    Ok(report)
}

/// A catalog of every segment configured in the directory, each as a
/// content without a mirror (roles unknown), addressed by its control
/// endpoint's host.
fn configured_segments(dir: &ClusterDir, file: &ClusterFile) -> Result<Catalog> {
    let mut cat = Catalog::new(file.cluster_id, file.block_size, Vec::new());
    let entries = std::fs::read_dir(dir.root.join("segments"))
        .map_err(|e| Error::io(format!("reading {}", dir.root.join("segments").display()), e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(dbid) = name.strip_prefix("dbid").and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let cfg = dir.segment(dbid)?;
        let host = host_of(&cfg.control_listen).to_string();
        let address = SegmentAddress {
            dbid,
            host,
            control: cfg.control_listen,
            data: cfg.data_listen,
            filespaces: cfg.filespaces,
        };
        cat.unmirrored.push(CatalogSolo { content: cfg.content, generation: 0, up: true, address });
    }
    Ok(cat)
}

// ---- damage and restore ----------------------------------------------------

/// What `filerep catalog restore` did, file by file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Restored {
    /// One line per file: what was wrong and where the good version came from.
    pub done: Vec<String>,
    /// Notes on a rebuilt catalog (what was assumed, what to run next).
    pub notes: Vec<String>,
}

/// Put back a damaged cluster file and catalog. The cluster file comes
/// from its last good copy (`cluster.json.good`), else is rebuilt from the
/// catalog and the segments' configurations. The catalog comes, in this
/// order, from the running arbiter (asked to write the one it holds), its
/// last good copy (`catalog.json.good`), or, when neither is whole and
/// agrees with the segments' configurations (or `rebuild` is asked), from
/// the segments themselves ([`rebuild_catalog`]; `primaries` names the
/// acting primary of a content where the segments cannot tell).
pub fn restore(dir: &ClusterDir, rebuild: bool, primaries: &BTreeMap<u32, u32>) -> Result<Restored> {
    let mut out = Restored::default();
    let key = dir.key()?;
    let file = match dir.load() {
        Ok(f) => f,
        Err(e) => {
            let good = std::fs::read(sealed::good_copy(&dir.cluster_file()))
                .map_err(|e| e.to_string())
                .and_then(|b| ClusterFile::from_bytes(&b));
            let file = match good {
                Ok(f) => {
                    out.done.push(format!(
                        "{}: {}; put back from its last good copy",
                        dir.cluster_file().display(),
                        reason(&e)
                    ));
                    f
                }
                Err(why) => {
                    let f = rebuild_cluster_file(dir)?;
                    out.done.push(format!(
                        "{}: {}; its last good copy is not whole either ({why}): rebuilt from the catalog and the segments' configurations",
                        dir.cluster_file().display(),
                        reason(&e)
                    ));
                    f
                }
            };
            dir.write_cluster_file(&file)?;
            file
        }
    };
    let catalog_ok = dir.load_catalog(&file);
    if let Some(spec) = &file.coordinator {
        // etcd keeps its own copies on every member: nothing here to put back.
        return match catalog_ok {
            Ok(_) if !rebuild => {
                out.done.push(format!("the catalog on {spec}: whole, and it agrees with the segments: nothing to restore"));
                Ok(out)
            }
            Ok(_) => Err(Error::InvalidArgument(format!(
                "the catalog is on {spec}, whole: a rebuild from the segments is only for a catalog file"
            ))),
            Err(e) => Err(Error::NotDone(format!(
                "the catalog on {spec}: {}; it is etcd's to restore (etcdctl snapshot restore on its members), not this tool's",
                reason(&e)
            ))),
        };
    }
    if catalog_ok.is_ok() && !rebuild {
        if out.done.is_empty() {
            out.done.push(format!(
                "{}: whole, and it agrees with the segments: nothing to restore",
                dir.catalog().display()
            ));
        }
        return Ok(out);
    }
    let why = catalog_ok.err().map_or_else(|| "a rebuild was asked".to_string(), |e| reason(&e));
    // The running arbiter's own catalog: it writes it itself, under its lock.
    if !rebuild {
        if let Ok(live) = filerep::cluster::probe::fetch_catalog(&file.arbiter, &key, Duration::from_secs(3)) {
            if dir.agrees(&file, &live).is_ok() {
                let req = filerep::cluster::segment::ArbiterRequest::StoreCatalog;
                match filerep::cluster::probe::ask(&file.arbiter, &key, &req, Duration::from_secs(10)) {
                    Ok(filerep::cluster::segment::ArbiterResponse::Started) => {
                        dir.load_catalog(&file)?;
                        out.done.push(format!(
                            "{}: {why}; written again by the running arbiter from the catalog it holds",
                            dir.catalog().display()
                        ));
                        return Ok(out);
                    }
                    other => {
                        return Err(Error::NotDone(format!("the running arbiter did not write its catalog: {other:?}")))
                    }
                }
            }
        }
    }
    // With no arbiter running: the file is ours to replace.
    let _lock = filerep::durable::catalog::FileStore::lock(&dir.catalog()).map_err(|e| {
        Error::NotDone(format!("{}; stop it first (filerep stop --cluster-dir {})", e.cause(), dir.root.display()))
    })?;
    if !rebuild {
        let good = sealed::good_copy(&dir.catalog());
        let copy = std::fs::read(&good).map_err(|e| e.to_string()).and_then(|b| {
            let c = Catalog::from_bytes(&b)?;
            dir.agrees(&file, &c)?;
            Ok((b, c))
        });
        match copy {
            Ok((bytes, _)) => {
                sealed::replace(&dir.catalog(), &bytes)
                    .map_err(|e| Error::io(format!("writing {}", dir.catalog().display()), e))?;
                dir.load_catalog(&file)?;
                out.done.push(format!(
                    "{}: {why}; put back from its last good copy {}",
                    dir.catalog().display(),
                    good.display()
                ));
                return Ok(out);
            }
            Err(copy_why) => out.notes.push(format!("the last good copy {} is not usable: {copy_why}", good.display())),
        }
    }
    let (cat, notes) = rebuild_catalog(dir, &file, &key, primaries)?;
    out.notes.extend(notes);
    cat.store(&dir.catalog())?;
    dir.load_catalog(&file)?;
    out.done.push(format!(
        "{}: {why}; rebuilt from the segments' configurations, role records and answers",
        dir.catalog().display()
    ));
    Ok(out)
}

/// What is wrong with a file, without its path.
fn reason(e: &Error) -> String {
    match e {
        Error::Damaged { reason, .. } => reason.clone(),
        e => e.cause(),
    }
}

/// The cluster file again, from the catalog (or its last good copy) and
/// the segments' configurations.
fn rebuild_cluster_file(dir: &ClusterDir) -> Result<ClusterFile> {
    let cat = Catalog::load(&dir.catalog()).or_else(|e| {
        std::fs::read(sealed::good_copy(&dir.catalog()))
            .map_err(|_| e.cause())
            .and_then(|b| Catalog::from_bytes(&b))
            .map_err(|why| {
                Error::NotDone(format!(
                    "the cluster file cannot be rebuilt: neither the catalog nor its last good copy is whole ({why})"
                ))
            })
    })?;
    let mut hosts: Vec<String> = Vec::new();
    let mut filespaces = Vec::new();
    let mut arbiter = None;
    let mut addrs: Vec<(u32, &SegmentAddress)> = cat.addresses().collect();
    addrs.sort_by_key(|(c, a)| (*c, a.dbid));
    for (_, a) in addrs {
        if !hosts.contains(&a.host) {
            hosts.push(a.host.clone());
        }
        let cfg = dir.segment(a.dbid)?;
        if filespaces.is_empty() {
            filespaces =
                cfg.filespaces.iter().map(|f| f.split_once('=').map_or(f.clone(), |(n, _)| n.to_string())).collect();
        }
        arbiter.get_or_insert(cfg.arbiter);
    }
    let arbiter = arbiter
        .ok_or_else(|| Error::NotDone("the cluster file cannot be rebuilt: the catalog lists no segment".into()))?;
    let one_machine = hosts::check_hosts(&hosts, false).is_err();
    Ok(ClusterFile {
        cluster_id: cat.cluster_id,
        block_size: cat.block_size,
        filespaces,
        hosts,
        arbiter,
        // A cluster on a coordinator has no catalog file to rebuild from.
        coordinator: None,
        placement: (!cat.pairs.is_empty()).then(|| "custom".to_string()),
        one_machine,
    })
}

/// What one segment says of itself: as it answers now, and as its state
/// directory records (when it is on this machine).
struct Evidence {
    cfg: SegmentConfig,
    live: Option<SegmentStatus>,
    roles: filerep::cluster::segment::RoleRecord,
    mirror_generation: u64,
}

/// A catalog rebuilt from the segments, for when the catalog and its last
/// good copy are both lost: the segments' configurations give every
/// segment (its dbid, content, addresses, directories); which of a pair
/// acts as primary, and the generation, come from the segments running
/// now, else from their role records (`roles.json`: the highest generation
/// each was ordered to act as primary and as mirror), else from
/// `primaries` (content → dbid), else the content is refused. The lower
/// dbid of a pair is its preferred primary (as init and addmirrors number
/// them). A pair is synchronized only if its two segments say so now;
/// every other is `n`, to be rebuilt by `filerep recover -F` (its mirror
/// may lack what the primary wrote while they were apart).
pub fn rebuild_catalog(
    dir: &ClusterDir,
    file: &ClusterFile,
    key: &ClusterKey,
    primaries: &BTreeMap<u32, u32>,
) -> Result<(Catalog, Vec<String>)> {
    let mut evidence: BTreeMap<u32, Vec<Evidence>> = BTreeMap::new();
    let entries = std::fs::read_dir(dir.root.join("segments"))
        .map_err(|e| Error::io(format!("reading {}", dir.root.join("segments").display()), e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(dbid) =
            name.strip_prefix("dbid").and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cfg = dir.segment(dbid)?;
        if cfg.cluster_id != file.cluster_id || cfg.dbid != dbid {
            return Err(Error::NotDone(format!(
                "segments/{name} is dbid {} of cluster {:016x}, not dbid {dbid} of this cluster ({:016x}): remove it or put the right one back",
                cfg.dbid, cfg.cluster_id, file.cluster_id
            )));
        }
        let live = probe(&cfg.control_listen, key, Duration::from_secs(2)).filter(|s| s.dbid == dbid);
        let roles = filerep::cluster::segment::RoleRecord::load(&cfg.state_dir).unwrap_or_default();
        let mirror_generation = filerep::runtime::mirror::MirrorState::load(&cfg.state_dir).map_or(0, |m| m.generation);
        evidence.entry(cfg.content).or_default().push(Evidence { cfg, live, roles, mirror_generation });
    }
    let mut cat = Catalog::new(file.cluster_id, file.block_size, Vec::new());
    let mut notes = Vec::new();
    let address = |e: &Evidence| SegmentAddress {
        dbid: e.cfg.dbid,
        host: host_of(&e.cfg.control_listen).to_string(),
        control: e.cfg.control_listen.clone(),
        data: e.cfg.data_listen.clone(),
        filespaces: e.cfg.filespaces.clone(),
    };
    for (content, mut segs) in evidence {
        segs.sort_by_key(|e| e.cfg.dbid);
        let newest = |e: &Evidence| {
            e.live
                .as_ref()
                .map_or(0, |s| s.generation)
                .max(e.roles.primary)
                .max(e.roles.mirror)
                .max(e.mirror_generation)
        };
        let generation = segs.iter().map(newest).max().unwrap_or(0).max(1);
        match segs.as_slice() {
            [one] => cat.unmirrored.push(CatalogSolo { content, generation, up: false, address: address(one) }),
            [a, b] => {
                let acting_live =
                    |e: &Evidence| e.live.as_ref().filter(|s| s.acting == Acting::Primary).map(|s| s.generation);
                let primary = match (acting_live(a), acting_live(b)) {
                    (Some(x), Some(y)) if x == y => None,
                    (Some(x), Some(y)) => Some(if x > y { 0 } else { 1 }),
                    (Some(_), None) => Some(0),
                    (None, Some(_)) => Some(1),
                    (None, None) if a.roles.primary != b.roles.primary => {
                        Some(if a.roles.primary > b.roles.primary { 0 } else { 1 })
                    }
                    (None, None) => None,
                };
                let primary = match (primary, primaries.get(&content)) {
                    (_, Some(&dbid)) if dbid == a.cfg.dbid => 0,
                    (_, Some(&dbid)) if dbid == b.cfg.dbid => 1,
                    (_, Some(&dbid)) => {
                        return Err(Error::InvalidArgument(format!("--primary {content}={dbid}: content {content}'s segments are dbid {} and {}", a.cfg.dbid, b.cfg.dbid)))
                    }
                    (Some(p), None) => p,
                    (None, None) => {
                        return Err(Error::NotDone(format!(
                            "content {content}: neither dbid {} nor dbid {} answers as primary, and their role records do not tell which acted as primary last; if you know it, say so with --primary {content}=DBID",
                            a.cfg.dbid, b.cfg.dbid
                        )))
                    }
                };
                let (p, m) = if primary == 0 { (a, b) } else { (b, a) };
                let synchronized = p.live.as_ref().is_some_and(|s| s.mode == 's' && s.generation == generation)
                    && m.live.as_ref().is_some_and(|s| s.acting == Acting::Mirror && s.generation == generation);
                let role = |e: &Evidence, r| filerep::core::pair::Segment {
                    dbid: e.cfg.dbid,
                    role: r,
                    preferred_role: if e.cfg.dbid == a.cfg.dbid {
                        filerep::core::pair::Role::Primary
                    } else {
                        filerep::core::pair::Role::Mirror
                    },
                    up: r == filerep::core::pair::Role::Primary || e.live.is_some(),
                };
                let pair = Pair {
                    content,
                    generation,
                    mode: if synchronized {
                        filerep::core::pair::PairMode::Synchronized
                    } else {
                        filerep::core::pair::PairMode::NotInSync
                    },
                    segments: [role(p, filerep::core::pair::Role::Primary), role(m, filerep::core::pair::Role::Mirror)],
                    down: false,
                };
                if !synchronized {
                    notes.push(format!(
                        "content {content}: dbid {} acts as primary at generation {generation}; the pair is marked not in sync: rebuild its mirror with filerep recover -F --content {content}",
                        p.cfg.dbid
                    ));
                }
                let after = filerep::core::pair::describe(&pair);
                cat.pairs.push(CatalogPair { pair, addresses: [address(p), address(m)] });
                cat.note(
                    content,
                    "catalog lost".into(),
                    after,
                    "catalog rebuilt from the segments (filerep catalog restore)".into(),
                );
            }
            more => {
                return Err(Error::NotDone(format!(
                "content {content} has {} segment configurations ({}); a content has one or two: remove the extra ones",
                more.len(),
                more.iter().map(|e| format!("dbid {}", e.cfg.dbid)).collect::<Vec<_>>().join(", ")
            )))
            }
        }
    }
    cat.pairs.sort_by_key(|p| p.pair.content);
    cat.unmirrored.sort_by_key(|s| s.content);
    cat.check().map_err(|e| Error::NotDone(format!("the rebuilt catalog does not hold together: {e}")))?;
    Ok((cat, notes))
}

// ---- a full rebuild's target ------------------------------------------------

/// Why a full rebuild of `content` (`recover -F`, which empties the
/// segment it rebuilds) could delete another segment's files: a directory
/// of one of its segments that, once symbolic links are resolved on its
/// machine, is the same as, inside or around another segment's directory.
/// A link made after `addmirrors` checked the place is how this happens.
/// Machines are asked through their segments; a path no one can look at
/// is compared as written.
pub fn rebuild_overlaps(cat: &Catalog, key: &ClusterKey, content: u32) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut agents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, a) in cat.addresses() {
        if !names.contains(&a.host) {
            names.push(a.host.clone());
        }
        agents.entry(a.host.clone()).or_default().push(a.control.clone());
    }
    // The catalog's hosts were checked when the cluster was made; one that
    // no longer resolves is asked by name only.
    let resolved = hosts::check_hosts(&names, true).unwrap_or_default();
    let probe = ClusterProbe::new(&resolved).with_agents(key.clone(), agents);
    // Every directory, resolved on its host: (host, dbid, content, filespace, as written, resolved).
    let mut dirs: Vec<(String, u32, u32, String, PathBuf, PathBuf)> = Vec::new();
    let mut by_host: BTreeMap<&str, Vec<(u32, &SegmentAddress)>> = BTreeMap::new();
    for (c, a) in cat.addresses() {
        by_host.entry(a.host.as_str()).or_default().push((c, a));
    }
    for (host, segments) in by_host {
        let mut asked = Vec::new();
        for (c, a) in &segments {
            for f in &a.filespaces {
                let (name, d) = f.split_once('=').unwrap_or(("pg_system", f.as_str()));
                asked.push((*c, a.dbid, name.to_string(), PathBuf::from(d)));
            }
        }
        let paths: Vec<(PathBuf, bool)> = asked.iter().map(|(.., p)| (p.components().collect(), false)).collect();
        let answers = probe.inspect(host, &paths);
        for (i, (c, dbid, name, written)) in asked.into_iter().enumerate() {
            let resolved = match answers.get(i) {
                Some(Ok(info)) => info.resolved.clone(),
                _ => written.components().collect(),
            };
            dirs.push((probe.machine(host), dbid, c, name, written, resolved));
        }
    }
    let mut index: DirIndex<usize> = DirIndex::default();
    let mut problems = Vec::new();
    let say = |i: usize| {
        let (_, dbid, c, name, written, resolved) = &dirs[i];
        let via = if written != resolved {
            format!(" (which is {} once symbolic links are resolved)", layout::shown(resolved))
        } else {
            String::new()
        };
        format!("the {name} directory {}{via} of content {c} (dbid {dbid})", layout::shown(written))
    };
    for i in 0..dirs.len() {
        let (machine, _, c, _, _, resolved) = &dirs[i];
        if let Some((relation, _, &j)) = index.overlap(machine, resolved) {
            // Said from the rebuilt content's side.
            if *c == content {
                problems.push(format!("{} {} {}", say(i), relation.words(), say(j)));
            } else if dirs[j].2 == content {
                let back = match relation {
                    layout::Relation::Same => layout::Relation::Same,
                    layout::Relation::Inside => layout::Relation::Contains,
                    layout::Relation::Contains => layout::Relation::Inside,
                };
                problems.push(format!("{} {} {}", say(j), back.words(), say(i)));
            }
        }
        index.insert(machine, resolved.clone(), i);
    }
    if !problems.is_empty() {
        tracing::warn!(content, problems = problems.len(), "full rebuild refused: segment directories overlap");
    }
    problems
}

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
