//! `filerep init`, `start`, `stop` and `addmirrors`: creating and running a
//! cluster from its directory (`filerep::cluster`).

use filerep::cluster::layout::{self, MirrorConfig, Placement};
use filerep::cluster::segment::{ArbiterRequest, ArbiterResponse, NewMirror, SegmentRequest, SegmentResponse};
use filerep::durable::catalog::{Catalog, SegmentAddress};
use filerep::protocol::handshake::ClusterKey;
use filerep_tools::cluster::{self, ClusterDir, InitSpec};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const RPC: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct InitCmd {
    /// The new cluster's directory (must be absent or empty).
    #[arg(long)]
    cluster_dir: PathBuf,
    /// Segment hosts, comma-separated (loopback addresses on one machine: 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',', required = true)]
    hosts: Vec<String>,
    #[arg(long, default_value_t = 2)]
    segments_per_host: u32,
    /// The first primary port on each host (slot j uses BASE + j).
    #[arg(long, default_value_t = 40000)]
    base_port: u16,
    /// NAME=BASE per filespace, the default one first; each primary keeps its data in BASE/gpseg<content>.
    #[arg(long = "data-dir", required = true)]
    data_dirs: Vec<String>,
    #[arg(long, default_value_t = 32768)]
    block_size: u32,
    /// Create mirrors too, with this placement (group or spread).
    #[arg(long)]
    mirrors: Option<Placement>,
    /// Mirror port offset (mirror port = primary port + OFFSET, as gpaddmirrors -p).
    #[arg(short = 'p', long, default_value_t = layout::DEFAULT_PORT_OFFSET)]
    mirror_offset: u32,
    /// NAME=BASE per filespace for the mirrors' directories (with --mirrors).
    #[arg(long = "mirror-data-dir")]
    mirror_data_dirs: Vec<String>,
    /// The arbiter's control address (default 127.0.0.1:BASE-1); with
    /// --coordinator, several separated by commas (one arbiter each, on
    /// their hosts; one acts at a time).
    #[arg(long)]
    arbiter: Option<String>,
    /// Keep the catalog and the arbiters' leadership on etcd instead of
    /// catalog.json: etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (the prefix
    /// defaults to /filerep/<cluster id>; docs/operations.md).
    #[arg(long)]
    coordinator: Option<String>,
    /// Accept hosts that are all this machine (a test cluster on loopback
    /// addresses such as 127.0.0.2,127.0.0.3): without it, two hosts that
    /// are one machine are refused, since a mirror "on another host" would
    /// share its primary's machine.
    #[arg(long)]
    allow_one_machine: bool,
    /// Serve filespace NAME as a file system from every segment process
    /// (repeatable; docs/mount.md): segment D mounts it at BASE/segD on its
    /// host, made when it starts, and `filerep start` starts it so.
    #[arg(long = "mount", value_name = "NAME=BASE")]
    mounts: Vec<String>,
}

#[derive(clap::Args)]
pub struct StartCmd {
    #[command(flatten)]
    cluster: crate::cli::target::ClusterArg,
    /// Start only this host's segments (and the arbiter if it lives there).
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct StopCmd {
    #[command(flatten)]
    cluster: crate::cli::target::ClusterArg,
    /// Stop only this host's segments (and the arbiter if it lives there).
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AddMirrorsCmd {
    #[command(flatten)]
    cluster: crate::cli::target::ClusterArg,
    /// Port offset: mirror port = P + OFFSET, mirror replication port = P + 2 OFFSET, primary replication port = P + 3 OFFSET.
    #[arg(short = 'p', long, default_value_t = layout::DEFAULT_PORT_OFFSET)]
    offset: u32,
    /// Spread placement (default: group).
    #[arg(short = 's', long)]
    spread: bool,
    /// NAME=BASE per filespace for the mirrors' directories (each mirror gets BASE/<its primary's directory name>).
    #[arg(long = "mirror-data-dir")]
    mirror_data_dirs: Vec<String>,
    /// Write the computed configuration to FILE and change nothing.
    #[arg(short = 'o', long, conflicts_with = "input")]
    output: Option<PathBuf>,
    /// Read the mirrors from FILE (gpaddmirrors format) instead of computing them.
    #[arg(short = 'i', long = "input")]
    input: Option<PathBuf>,
    #[command(flatten)]
    batch: crate::cli::batch::BatchArg,
    /// Limit the initial full resyncs to this many MB/s.
    #[arg(long)]
    max_rate: Option<f64>,
    /// Accept a cluster whose hosts are all this machine (a test cluster;
    /// `init --allow-one-machine` records it for the cluster).
    #[arg(long)]
    allow_one_machine: bool,
    #[arg(long)]
    json: bool,
}

/// `NAME=DIR` options, checked against the cluster's filespace names, in its order.
fn bases_by_name(opts: &[String], names: &[String], flag: &str) -> Result<Vec<PathBuf>, String> {
    let mut given = std::collections::BTreeMap::new();
    for o in opts {
        let (n, d) = o.split_once('=').ok_or_else(|| format!("{flag} {o:?}: expected NAME=DIRECTORY"))?;
        if d.is_empty() {
            return Err(format!("{flag} {o:?}: the directory is empty"));
        }
        if !names.iter().any(|x| x == n) {
            return Err(format!("{flag} {o:?}: no filespace {n:?} (the cluster has {})", names.join(", ")));
        }
        if given.insert(n.to_string(), PathBuf::from(d)).is_some() {
            return Err(format!("{flag}: filespace {n} given twice"));
        }
    }
    names.iter().map(|n| given.remove(n).ok_or_else(|| format!("{flag}: give a directory for filespace {n}"))).collect()
}

/// `--mount NAME=BASE` values as given (checked with the spec).
fn mount_bases(opts: &[String]) -> Result<Vec<(String, PathBuf)>, String> {
    opts.iter()
        .map(|o| match o.split_once('=') {
            Some((n, b)) if !n.is_empty() && !b.is_empty() => Ok((n.to_string(), PathBuf::from(b))),
            _ => Err(format!("--mount {o:?}: give NAME=BASE (a filespace name and a directory)")),
        })
        .collect()
}

pub fn init(c: InitCmd) -> Result<ExitCode, String> {
    let mut names = Vec::new();
    let mut data_dirs = Vec::new();
    for o in &c.data_dirs {
        let f = filerep::config::Filespace::parse(o).map_err(|e| format!("--data-dir: {e}"))?;
        names.push(f.name.clone());
        data_dirs.push((f.name, f.root));
    }
    let mirrors = match c.mirrors {
        Some(p) => Some((p, c.mirror_offset, bases_by_name(&c.mirror_data_dirs, &names, "--mirror-data-dir")?)),
        None if !c.mirror_data_dirs.is_empty() => return Err("--mirror-data-dir needs --mirrors group|spread".into()),
        None => None,
    };
    let arbiter = match c.arbiter {
        Some(a) => a,
        None if c.base_port > 1 => format!("127.0.0.1:{}", c.base_port - 1),
        None if c.base_port == 0 => return Err("--base-port 0: give the first primary port, from 1 to 65535".into()),
        None => {
            return Err("--base-port 1 leaves no port below it for the arbiter (by default on BASE-1): give --arbiter HOST:PORT, or a higher --base-port".into())
        }
    };
    let spec = InitSpec {
        hosts: c.hosts,
        segments_per_host: c.segments_per_host,
        base_port: c.base_port,
        data_dirs,
        block_size: c.block_size,
        mirrors,
        arbiter,
        coordinator: c.coordinator,
        allow_one_machine: c.allow_one_machine,
        mounts: mount_bases(&c.mounts)?,
    };
    let dir = ClusterDir::new(absolute(&c.cluster_dir)?);
    let made = cluster::init(&dir, &spec).map_err(|e| e.to_string())?;
    let cat = &made.catalog;
    outln!(
        "cluster created in {}: {} contents ({} with mirrors) on {} hosts; start it with: filerep start --cluster-dir {}",
        dir.root.display(),
        cat.pairs.len() + cat.unmirrored.len(),
        cat.pairs.len(),
        spec.hosts.len(),
        dir.root.display()
    );
    for host in &made.elsewhere {
        eprintln!(
            "host {host} is another machine: its data directories were not created, and were compared with the others as written; \
             there, create each one empty and make sure none is a symbolic link into another's (readlink -f DIR), \
             and that its ports are free, before filerep start --host {host}"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `p` made absolute against the current directory (a cluster directory
/// is written into every segment's configuration).
pub fn absolute(p: &std::path::Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the filerep executable: {e}"))
}

pub fn start(c: StartCmd) -> Result<ExitCode, String> {
    let dir = c.cluster.dir()?;
    let r = cluster::start(&dir, &exe()?, c.host.as_deref()).map_err(|e| e.to_string())?;
    if c.json {
        outln!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    } else {
        outln!(
            "started {} segments{}{}",
            r.started.len(),
            if r.arbiters.is_empty() {
                String::new()
            } else {
                format!(" and the arbiter on {}", r.arbiters.join(", "))
            },
            if r.already_running.is_empty() {
                String::new()
            } else {
                format!(" ({} were running already)", r.already_running.len())
            }
        );
        for (dbid, why) in &r.failed {
            eprintln!("dbid {dbid} did not start: {why}");
        }
        for content in &r.down {
            eprintln!(
                "content {content} is down (a double fault, or its primary lost during a resync): its segments get no role \
                 until filerep recover restores it from its acting primary (docs/operations.md, When things go wrong)"
            );
        }
        if !r.without_role.is_empty() {
            eprintln!("dbids {:?} run but have no role yet: see filerep state -s", r.without_role);
        }
    }
    Ok(if r.without_role.is_empty() && r.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn stop(c: StopCmd) -> Result<ExitCode, String> {
    let dir = c.cluster.dir()?;
    let r = cluster::stop(&dir, c.host.as_deref()).map_err(|e| e.to_string())?;
    if c.json {
        outln!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    } else {
        outln!(
            "stopped {} segments{}{}",
            r.stopped.len(),
            if r.arbiter { " and the arbiter" } else { "" },
            if r.killed.is_empty() { String::new() } else { format!("; killed {:?} (no orderly stop)", r.killed) }
        );
    }
    Ok(if r.killed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The catalog: from the arbiter when it runs, else from the file.
pub fn current_catalog(dir: &ClusterDir) -> Result<(Catalog, bool), String> {
    let file = dir.load().map_err(|e| e.to_string())?;
    let key = dir.key().map_err(|e| e.to_string())?;
    match filerep::cluster::probe::fetch_catalog(&file.arbiter, &key, Duration::from_secs(3)) {
        Ok(c) => {
            dir.agrees(&file, &c).map_err(|r| dir.damaged("catalog", &dir.catalog(), r).to_string())?;
            if let Err(e) = dir.load_catalog(&file) {
                eprintln!("warning: {e} (the running arbiter holds a good catalog, which restore writes back)");
            }
            Ok((c, true))
        }
        Err(_) => dir.load_catalog(&file).map(|c| (c, false)).map_err(|e| e.to_string()),
    }
}

pub fn addmirrors(c: AddMirrorsCmd) -> Result<ExitCode, String> {
    let dir = c.cluster.dir()?;
    let mut file = dir.load().map_err(|e| e.to_string())?;
    let key = dir.key().map_err(|e| e.to_string())?;
    let (cat, live) = current_catalog(&dir)?;
    let mut cluster = cluster::catalog_layout(&file, &cat);
    cluster.local_paths.push((dir.root.clone(), "the cluster directory".into()));
    for m in &file.mounts {
        cluster.local_paths.push((m.base.clone(), format!("the base of filespace {}'s mountpoints", m.filespace)));
    }
    // The configuration: read, or computed by placement.
    let (config, placement) = match &c.input {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let cfg = MirrorConfig::parse_bytes(&bytes, &path.display().to_string()).map_err(|e| e.to_string())?;
            (cfg, "custom".to_string())
        }
        None => {
            let bases = bases_by_name(&c.mirror_data_dirs, &file.filespaces, "--mirror-data-dir")?;
            let placement = if c.spread { Placement::Spread } else { Placement::Group };
            let cfg = layout::place(&cluster, placement, c.offset, &bases).map_err(|e| e.to_string())?;
            (cfg, placement.name().to_string())
        }
    };
    if let Some(out) = &c.output {
        let text = config.format().map_err(|e| e.to_string())?;
        std::fs::write(out, text).map_err(|e| format!("writing {}: {e}", out.display()))?;
        eprintln!(
            "wrote {} mirrors to {}; edit it if needed, then run filerep addmirrors -i {}",
            config.mirrors.len(),
            out.display(),
            out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Everything is checked before anything changes: the hosts are
    // different machines (or the operator said they may not be), and each
    // mirror's place on its host, asked of that host.
    let hosts = filerep::cluster::hosts::check_hosts(&file.hosts, file.one_machine || c.allow_one_machine)
        .map_err(|e| format!("the cluster's hosts (cluster.json): {e}"))?;
    let mut agents: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (_, a) in cat.addresses() {
        agents.entry(a.host.clone()).or_default().push(a.control.clone());
    }
    let probe = cluster::ClusterProbe::new(&hosts).with_agents(key.clone(), agents);
    let planned = layout::validate(&config, &cluster, &probe).map_err(|e| e.to_string())?;
    if !live {
        return Err(format!(
            "the arbiter on {} does not answer: start the cluster first (filerep start --cluster-dir {})",
            file.arbiter,
            dir.root.display()
        ));
    }
    let first_dbid = cat.addresses().map(|(_, a)| a.dbid).max().unwrap_or(1) + 1;
    let mut mirrors = Vec::new();
    for (i, m) in planned.iter().enumerate() {
        let address = cluster::planned_address(first_dbid + i as u32, m, &file.filespaces);
        let primary = cat
            .unmirrored
            .iter()
            .find(|s| s.content == m.content)
            .ok_or_else(|| format!("content {}: not a content without a mirror", m.content))?;
        let primary_data = format!("{}:{}", primary.address.address(), m.primary_replication_port);
        mirrors.push((m.content, address, primary.address.clone(), primary_data));
    }
    let long: Vec<String> =
        mirrors.iter().filter_map(|(_, m, _, _)| cluster::socket_path_problem(&dir, m.dbid)).collect();
    if !long.is_empty() {
        return Err(format!("nothing was changed: {}", long.join("; ")));
    }
    // Every primary that gets a mirror serves, before anything changes.
    let controls: Vec<String> = mirrors.iter().map(|(_, _, p, _)| p.control.clone()).collect();
    let statuses = cluster::probe_many(&controls, &key, Duration::from_secs(2));
    let idle: Vec<String> = mirrors
        .iter()
        .zip(statuses)
        .filter(|((_, _, p, _), s)| {
            s.as_ref().is_none_or(|s| s.dbid != p.dbid || s.acting != filerep::cluster::segment::Acting::Primary)
        })
        .map(|((content, _, p, _), _)| format!("content {content} (primary dbid {} on {})", p.dbid, p.control))
        .collect();
    if !idle.is_empty() {
        return Err(format!(
            "nothing was changed: these primaries do not serve: {}; start them (filerep start) and see filerep state -s",
            idle.join(", ")
        ));
    }
    let exe = exe()?;
    let mut applied = Applied::default();
    if let Err(why) = add(&dir, &file, &key, &exe, &mirrors, &mut applied) {
        let left = applied.undo(&dir, &key);
        return Err(if left.is_empty() {
            format!("{why}; everything addmirrors had done was undone: the cluster is as it was")
        } else {
            format!(
                "{why}; undoing what addmirrors had done left these behind: {}; the catalog was not changed",
                left.join("; ")
            )
        });
    }
    file.placement = Some(placement);
    dir.write_cluster_file(&file).map_err(|e| e.to_string())?;
    if !c.json {
        eprintln!("added {} mirrors; building them with full resyncs while the primaries serve", mirrors.len());
    }
    // Each new mirror is built by an online full resync: the pair shows r, then s.
    // The mirrors are in the catalog now: a pair not built stays `n`, and
    // `filerep recover -F --content N` builds it later.
    let waited = crate::cli::batch::each(&mirrors.iter().map(|(x, _, _, _)| *x).collect::<Vec<_>>(), c.batch, |x| {
        let m = mirrors.iter().find(|(y, _, _, _)| *y == x).map(|(_, m, _, _)| m);
        Some(m.map_or(Ok(()), |m| wait_mirror_serving(&dir, &key, m, Duration::from_secs(60))))
    });
    let mut code = ExitCode::SUCCESS;
    let not_built = |content: u32, m: &SegmentAddress, why: String| {
        eprintln!(
            "content {content}: its mirror (dbid {}) was added but is not built yet{why}; build it with: filerep recover -F --content {content} --cluster-dir {}",
            m.dbid,
            dir.root.display()
        );
    };
    let mut serving = Vec::new();
    for ((content, m, _, _), w) in mirrors.iter().zip(waited) {
        match w {
            Some(Ok(())) => serving.push(*content),
            other => {
                code = ExitCode::from(1);
                not_built(*content, m, other.and_then(|r| r.err()).map(|e| format!(" ({e})")).unwrap_or_default());
            }
        }
    }
    if !serving.is_empty() {
        let rc = crate::cli::recover::RecoverCmd::full_resync(&dir, serving.clone(), c.max_rate, c.json, c.batch);
        // Each pair's own line says whether it was built.
        match crate::cli::recover::run(rc) {
            Ok(ExitCode::SUCCESS) => {}
            Ok(_) => {
                code = ExitCode::from(1);
                eprintln!(
                    "some mirrors were added but are not built yet (see each content's line); build one with: filerep recover -F --content N --cluster-dir {}",
                    dir.root.display()
                );
            }
            Err(e) => {
                code = ExitCode::from(1);
                for (content, m, _, _) in mirrors.iter().filter(|(x, _, _, _)| serving.contains(x)) {
                    not_built(*content, m, format!(" ({e})"));
                }
            }
        }
    }
    Ok(code)
}

/// What `addmirrors` changed before the arbiter added the mirrors: undone,
/// newest first, when a later step fails.
#[derive(Default)]
struct Applied {
    /// Directories, configurations, logs and state made for the new mirrors.
    journal: cluster::Journal,
    /// Primaries told to listen for replication elsewhere: their address,
    /// the old replication address, the old configuration file's bytes.
    rebound: Vec<(SegmentAddress, String, Vec<u8>)>,
    /// Mirror processes started.
    spawned: Vec<cluster::Spawned>,
}

impl Applied {
    fn undo(self, dir: &ClusterDir, key: &ClusterKey) -> Vec<String> {
        let mut left = Vec::new();
        cluster::stop_spawned(dir, &self.spawned);
        for (p, old, bytes) in self.rebound.into_iter().rev() {
            if let Err(e) = rebind(key, &p, &old) {
                left.push(format!("primary dbid {} still listens for replication on its new port ({e})", p.dbid));
            }
            let path = dir.segment_config(p.dbid);
            if let Err(e) = std::fs::write(&path, bytes) {
                left.push(format!("{}: {e}", path.display()));
            }
        }
        left.extend(self.journal.undo());
        left
    }
}

/// Tell a primary to listen for replication on `data`.
fn rebind(key: &ClusterKey, p: &SegmentAddress, data: &str) -> Result<(), String> {
    let req = SegmentRequest::Rebind { data_listen: data.to_string() };
    match filerep::cluster::control::call::<_, SegmentResponse>(&p.control, key, &req, RPC) {
        Ok(SegmentResponse::Done) => Ok(()),
        Ok(SegmentResponse::Refused(why)) => Err(format!("primary dbid {} cannot listen on {data}: {why}", p.dbid)),
        Ok(other) => Err(format!("primary dbid {} answered {other:?}", p.dbid)),
        Err(e) => Err(format!("primary dbid {} did not answer: {e}", p.dbid)),
    }
}

/// The changes, in order, each recorded in `applied`: the mirrors' directories and
/// configurations; the primaries' new replication ports; the mirror
/// processes, each answering; then the arbiter adds them all in one store.
fn add(
    dir: &ClusterDir,
    file: &cluster::ClusterFile,
    key: &ClusterKey,
    exe: &std::path::Path,
    mirrors: &[(u32, SegmentAddress, SegmentAddress, String)],
    applied: &mut Applied,
) -> Result<(), String> {
    for (content, m, _, _) in mirrors {
        for fs in &m.filespaces {
            if let Some((_, d)) = fs.split_once('=') {
                applied.journal.create_dir_all(std::path::Path::new(d)).map_err(|e| e.to_string())?;
            }
        }
        // A mirror that does not start keeps its log (logs/dbid<N>.log), for the record.
        for made in [dir.segment_config(m.dbid), dir.segment_dir(m.dbid)] {
            applied.journal.created(&made);
        }
        let cfg = cluster::segment_config(dir, file, *content, m).map_err(|e| e.to_string())?;
        dir.write_segment(&cfg).map_err(|e| e.to_string())?;
    }
    // The primaries listen for replication on their new ports first (used
    // only once they act as mirrors; a mirror may take a port a primary gives up).
    for (_, _, p, data) in mirrors {
        let bytes = std::fs::read(dir.segment_config(p.dbid))
            .map_err(|e| format!("reading dbid {}'s configuration: {e}", p.dbid))?;
        rebind(key, p, data)?;
        applied.rebound.push((p.clone(), p.data.clone(), bytes));
        let mut pc = dir.segment(p.dbid).map_err(|e| e.to_string())?;
        pc.data_listen = data.clone();
        dir.write_segment(&pc).map_err(|e| e.to_string())?;
    }
    let addrs: Vec<SegmentAddress> = mirrors.iter().map(|(_, m, _, _)| m.clone()).collect();
    let (spawned, failed) = cluster::start_segments(dir, exe, key, &addrs, Duration::from_secs(30));
    applied.spawned = spawned;
    if !failed.is_empty() {
        let why: Vec<String> = failed.into_iter().map(|(_, why)| why).collect();
        return Err(why.join("; "));
    }
    let req = ArbiterRequest::AddMirrors {
        mirrors: mirrors
            .iter()
            .map(|(content, m, _, data)| NewMirror {
                content: *content,
                address: m.clone(),
                primary_data: Some(data.clone()),
            })
            .collect(),
    };
    match filerep::cluster::probe::ask(&file.arbiter, key, &req, RPC) {
        Ok(ArbiterResponse::Started) => Ok(()),
        Ok(ArbiterResponse::Refused(why)) => Err(format!("the arbiter refused the mirrors: {why}")),
        Ok(other) => Err(format!("the arbiter answered {other:?}")),
        // The answer may be lost after the store: then they are added, and stay.
        Err(e) => match filerep::cluster::probe::fetch_catalog(&file.arbiter, key, RPC) {
            Ok(cat) if mirrors.iter().all(|(c, m, _, _)| cat.pair(*c).is_some_and(|p| p.address(m.dbid).is_some())) => {
                Ok(())
            }
            _ => Err(format!("the arbiter did not answer: {e}")),
        },
    }
}

/// Wait until a new mirror serves as mirror (the arbiter's rounds order it).
fn wait_mirror_serving(
    dir: &ClusterDir,
    key: &filerep::protocol::handshake::ClusterKey,
    m: &filerep::durable::catalog::SegmentAddress,
    limit: Duration,
) -> Result<(), String> {
    cluster::wait_until(&format!("mirror dbid {} serving", m.dbid), limit, || {
        cluster::probe(&m.control, key, Duration::from_secs(1))
            .is_some_and(|s| s.acting == filerep::cluster::segment::Acting::Mirror)
    })
    .map_err(|e| format!("{e}; see {}", dir.log(&format!("dbid{}", m.dbid)).display()))
}
