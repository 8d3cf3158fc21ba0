//! `filerep init`: a cluster directory made, every value and every
//! host's place checked first, and undone whole if a step fails.

use super::*;

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
    /// Filespaces every segment serves as a file system, each with the base
    /// of the mountpoints (`filerep init --mount NAME=BASE`: segment D at
    /// `BASE/segD`).
    pub mounts: Vec<(String, PathBuf)>,
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
        self.check_mounts(here)?;
        Ok(hosts)
    }

    /// Each mount names a filespace, once, at a base of its own apart
    /// from every data directory base (a mount inside a filespace would
    /// read through itself).
    fn check_mounts(&self, here: bool) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        for (name, base) in &self.mounts {
            if !self.data_dirs.iter().any(|(n, _)| n == name) {
                let known: Vec<&str> = self.data_dirs.iter().map(|(n, _)| n.as_str()).collect();
                return bad(format!(
                    "--mount {name}={}: no filespace {name} (the cluster has {})",
                    layout::shown(base),
                    known.join(", ")
                ));
            }
        }
        check_bases("--mount", &self.mounts, here)?;
        let mirror_bases = self.mirrors.iter().flat_map(|(_, _, bases)| bases.iter());
        let data_bases = self.data_dirs.iter().map(|(_, b)| b).chain(mirror_bases);
        for data in data_bases {
            let data: PathBuf = data.components().collect();
            for (name, base) in &self.mounts {
                let written: PathBuf = base.components().collect();
                if written.starts_with(&data) || data.starts_with(&written) {
                    return bad(format!(
                        "--mount {name}={}: overlaps the data directory base {}; give the mounts a base apart from the data",
                        layout::shown(base),
                        layout::shown(&data)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Filespace bases as given: each name once, absolute paths without `.` or
/// `..` (a relative one would depend on where each command runs), no base
/// the same as or inside another, as written and (`resolve`: some host is
/// this machine) once symbolic links are resolved here.
pub(super) fn check_bases(flag: &str, bases: &[(String, PathBuf)], resolve: bool) -> Result<()> {
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

/// One message for a list of problems.
pub(super) fn problems_error(what: &str, problems: Vec<String>) -> Error {
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
pub(super) fn check_placement(
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
            dirs.push((a, name, PathBuf::from(d), list.len() - 1, "data directory"));
        }
        // Its mountpoints: apart from every directory of the cluster too,
        // or a segment would mount inside another's data.
        for (name, base) in &spec.mounts {
            let list = asks.entry(a.host.as_str()).or_default();
            let d = super::mountpoint(base, a.dbid);
            list.push((d.clone(), true));
            dirs.push((a, name.as_str(), d, list.len() - 1, "mountpoint"));
        }
    }
    let answers: std::collections::BTreeMap<&str, Vec<std::io::Result<layout::PathInfo>>> =
        asks.iter().map(|(h, paths)| (*h, probe.inspect(h, paths))).collect();
    for (a, name, d, k, kind) in dirs {
        let what = format!("{kind} {} of dbid {} (filespace {name}) on host {}", layout::shown(&d), a.dbid, a.host);
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
            format!("the {name} {kind} of dbid {} on host {}", a.dbid, a.host),
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
        mounts: spec
            .mounts
            .iter()
            .map(|(filespace, base)| super::ClusterMount {
                filespace: filespace.clone(),
                base: base.components().collect(),
            })
            .collect(),
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
            for (name, base) in &spec.mounts {
                cluster.local_paths.push((base.clone(), format!("the base of filespace {name}'s mountpoints")));
            }
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
pub(super) fn write_cluster(
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
pub(super) fn coordinator_name(spec: &str, cluster_id: u64) -> Result<String> {
    use filerep::cluster::coordinator::EtcdSpec;
    let given = match spec.strip_prefix("etcd://") {
        Some(rest) if !rest.contains('/') => format!("{spec}{}", EtcdSpec::default_prefix(cluster_id)),
        _ => spec.to_string(),
    };
    EtcdSpec::parse(&given).map(|s| s.name()).map_err(|e| Error::InvalidArgument(format!("--coordinator: {e}")))
}

pub(super) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::io("reading random bytes for the cluster key", e))?;
    Ok(b)
}

/// The key, readable by its owner only, written whole and durably: the
/// temporary file is made with mode 0600 first, and the replace keeps it.
pub(super) fn write_key(path: &Path) -> Result<()> {
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
