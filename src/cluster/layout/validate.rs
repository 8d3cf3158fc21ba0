//! Validation of a mirror configuration against the existing cluster,
//! complete before anything changes: every problem is collected, each
//! naming the file, line and column (or, for a configuration built in
//! code, the `mirror<N>` entry), or the host and segment.

use super::overlap::DirIndex;
use super::probe::{normalized, HostProbe, PathInfo, PathState, THIS_MACHINE};
use super::problems::{Problem, ProblemKind, ValidationErrors, Where};
use super::{Cluster, Instance, MirrorConfig, MirrorLine, Role};
use crate::cluster::hosts::plain_absolute;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A mirror to build, once the whole configuration is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedMirror {
    /// The `N` of `mirror<N>`.
    pub key: u32,
    pub content: u32,
    pub primary_dbid: u32,
    pub primary_host: String,
    /// The mirror's host, resolved from its address through the cluster.
    pub host: String,
    pub address: String,
    pub port: u16,
    pub mirror_replication_port: u16,
    /// The primary's new replication port (on `primary_host`).
    pub primary_replication_port: u16,
    /// One per filespace, in [`Cluster::filespaces`] order (the file's
    /// locations reordered from `filespaceOrder`).
    pub data_dirs: Vec<PathBuf>,
}

#[derive(Clone, Copy)]
enum Field {
    Content,
    Address,
    Port,
    MirrorReplicationPort,
    PrimaryReplicationPort,
    Location(usize),
    End,
}

struct Check<'a> {
    config: &'a MirrorConfig,
    cluster: &'a Cluster,
    problems: Vec<Problem>,
    /// Each content's primary (the first, if the cluster lists two).
    primaries: BTreeMap<u32, &'a Instance>,
    /// Address or host name → host.
    hosts_by_address: HashMap<&'a str, &'a str>,
    /// Lines that would be built: their content needs them and their host
    /// is known. Only their directories and ports are looked at on the hosts.
    built: Vec<bool>,
    /// Ports (line, field index) already refused: not probed again.
    refused_ports: BTreeSet<(usize, usize)>,
}

/// A path for a message: long ones are cut in the middle (an operator
/// needs to recognise it, not to read 5,000 characters of it).
pub fn shown(p: &Path) -> String {
    elide(&p.display().to_string())
}

/// `text`, cut in the middle past 160 characters.
pub fn elide(text: &str) -> String {
    let n = text.chars().count();
    if n <= 160 {
        return text.to_string();
    }
    let head: String = text.chars().take(100).collect();
    let tail: String = text.chars().skip(n - 40).collect();
    format!("{head}…{tail} ({n} characters)")
}

/// How a message refers to mirror line `i`: `mirror1 (line 3)`.
fn line_label(config: &MirrorConfig, i: usize) -> String {
    let name = config.mirrors[i].name();
    match config.origin.as_ref().and_then(|o| o.lines.get(i)) {
        Some(l) => format!("{name} (line {})", l.line),
        None => name,
    }
}

fn instance_name(i: &Instance) -> String {
    format!("{} content {} (dbid {})", i.role.name(), i.content, i.dbid)
}

impl<'a> Check<'a> {
    fn new(config: &'a MirrorConfig, cluster: &'a Cluster) -> Check<'a> {
        let mut primaries = BTreeMap::new();
        let mut hosts_by_address = HashMap::new();
        for i in &cluster.instances {
            if i.role == Role::Primary {
                primaries.entry(i.content).or_insert(i);
            }
            hosts_by_address.entry(i.address.as_str()).or_insert(i.host.as_str());
        }
        // A host's own name is one of its addresses, after every address an instance uses.
        for i in &cluster.instances {
            hosts_by_address.entry(i.host.as_str()).or_insert(i.host.as_str());
        }
        Check {
            config,
            cluster,
            problems: Vec::new(),
            primaries,
            hosts_by_address,
            built: Vec::new(),
            refused_ports: BTreeSet::new(),
        }
    }

    fn primary(&self, content: u32) -> Option<&'a Instance> {
        self.primaries.get(&content).copied()
    }

    fn push(&mut self, at: Where, kind: ProblemKind, message: String) {
        self.problems.push(Problem { at, kind, message });
    }

    /// Where a field of mirror line `i` is.
    fn at(&self, i: usize, field: Field) -> Where {
        let origin = self.config.origin.as_ref();
        match origin.and_then(|o| o.lines.get(i).map(|l| (o, l))) {
            Some((o, l)) => {
                let column = match field {
                    Field::Content => l.content,
                    Field::Address => l.address,
                    Field::Port => l.port,
                    Field::MirrorReplicationPort => l.mirror_replication_port,
                    Field::PrimaryReplicationPort => l.primary_replication_port,
                    Field::Location(k) => l.locations.get(k).copied().unwrap_or(l.end),
                    Field::End => l.end,
                };
                Where::File { file: o.file.clone(), line: l.line, column }
            }
            None => Where::Entry { name: self.config.mirrors[i].name() },
        }
    }

    /// Where name `k` of `filespaceOrder` is (its end for `None`).
    fn order_at(&self, k: Option<usize>) -> Where {
        match &self.config.origin {
            Some(o) if o.filespace_order_line > 0 => Where::File {
                file: o.file.clone(),
                line: o.filespace_order_line,
                column: k.and_then(|k| o.filespace_order_columns.get(k).copied()).unwrap_or(o.filespace_order_end),
            },
            _ => Where::Entry { name: "filespaceOrder".into() },
        }
    }

    /// How a message refers to mirror line `i`: `mirror1 (line 3)`.
    fn line_name(&self, i: usize) -> String {
        line_label(self.config, i)
    }

    fn cluster_sanity(&mut self) {
        let c = self.cluster;
        if c.filespaces.is_empty() {
            self.push(
                Where::Cluster,
                ProblemKind::Cluster,
                "the cluster lists no filespace; it needs at least the default one (pg_system)".into(),
            );
        }
        let mut primaries: BTreeMap<u32, &Instance> = BTreeMap::new();
        for i in &c.instances {
            let at = Where::Segment { host: i.host.clone(), content: i.content, dbid: i.dbid };
            if i.data_dirs.len() != c.filespaces.len() {
                let m = format!(
                    "{} has {} data directories for {} filespaces; fix the cluster description",
                    instance_name(i),
                    i.data_dirs.len(),
                    c.filespaces.len()
                );
                self.push(at.clone(), ProblemKind::Cluster, m);
            }
            if i.role == Role::Primary {
                if let Some(first) = primaries.insert(i.content, i) {
                    let m = format!(
                        "content {} has two primaries (dbid {} and dbid {}); fix the cluster description",
                        i.content, first.dbid, i.dbid
                    );
                    self.push(at, ProblemKind::Cluster, m);
                }
            }
        }
    }

    /// Check `filespaceOrder`; returns, per location index, the cluster
    /// filespace it is for (`None` when the name is not the cluster's).
    fn filespace_order(&mut self) -> Vec<Option<usize>> {
        let fs = &self.cluster.filespaces;
        let order = &self.config.filespace_order;
        let all = fs.join(", ");
        let mut map = vec![if fs.is_empty() { None } else { Some(0) }];
        for (k, name) in order.iter().enumerate() {
            let index = fs.iter().position(|f| f == name);
            let message = if index == Some(0) {
                Some(format!("{name} is the default filespace: it is never named in filespaceOrder, its location is always each line's first; remove it"))
            } else if index.is_none() {
                Some(format!("filespace {name:?} is not one of the cluster's ({all}); check the spelling or remove it"))
            } else if order[..k].contains(name) {
                Some(format!("filespace {name} is named twice; name it once"))
            } else {
                None
            };
            match message {
                Some(m) => {
                    self.push(self.order_at(Some(k)), ProblemKind::FilespaceOrder, m);
                    map.push(None);
                }
                None => map.push(index),
            }
        }
        for name in fs.iter().skip(1).filter(|f| !order.contains(f)) {
            let m = format!("filespace {name} of the cluster is missing from filespaceOrder; add it, and a location for it on every mirror line");
            self.push(self.order_at(None), ProblemKind::FilespaceOrder, m);
        }
        map
    }

    fn run(mut self, probe: &dyn HostProbe) -> Result<Vec<PlannedMirror>, Vec<Problem>> {
        let (c, config) = (self.cluster, self.config);
        self.cluster_sanity();
        let fs_of = self.filespace_order();
        let fs_name = |li: usize| match fs_of.get(li).copied().flatten() {
            Some(ci) => format!("filespace {}", c.filespaces[ci]),
            None => format!("location {}", li + 1),
        };
        let mirrored: BTreeMap<u32, &Instance> =
            c.instances.iter().filter(|i| i.role == Role::Mirror).map(|i| (i.content, i)).collect();
        let mut hosts: Vec<Option<&str>> = Vec::new();
        let mut covered: BTreeMap<u32, usize> = BTreeMap::new();
        let mut contents_list: Option<String> = None;
        for (i, m) in config.mirrors.iter().enumerate() {
            let name = m.name();
            let n = m.locations.len();
            if n != c.filespaces.len() {
                let at = if n > c.filespaces.len() { Field::Location(c.filespaces.len()) } else { Field::End };
                let msg = format!(
                    "{name} has {n} location(s) but the cluster has {} filespace(s) ({}): one location for the default filespace, then one per name of filespaceOrder; give exactly {}",
                    c.filespaces.len(),
                    c.filespaces.join(", "),
                    c.filespaces.len()
                );
                self.push(self.at(i, at), ProblemKind::LocationCount, msg);
            }
            let primary = self.primary(m.content);
            match (primary, mirrored.get(&m.content), covered.get(&m.content)) {
                (None, _, _) => {
                    let list = contents_list.get_or_insert_with(|| {
                        let list: Vec<String> = self.primaries.keys().map(u32::to_string).collect();
                        elide(&list.join(", "))
                    });
                    let msg = format!("content {} has no primary in the cluster (its contents: {list}); fix the content field of {name} or remove the line", m.content);
                    self.push(self.at(i, Field::Content), ProblemKind::UnknownContent, msg);
                }
                (Some(_), Some(existing), _) => {
                    let msg = format!(
                        "content {} already has a mirror (dbid {} on host {}); remove {name}",
                        m.content, existing.dbid, existing.host
                    );
                    self.push(self.at(i, Field::Content), ProblemKind::AlreadyMirrored, msg);
                }
                (Some(_), None, Some(&first)) => {
                    let msg = format!("content {} is mirrored twice: by {} and by {name}; each content has exactly one mirror, remove one", m.content, self.line_name(first));
                    self.push(self.at(i, Field::Content), ProblemKind::DuplicateContent, msg);
                }
                (Some(_), None, None) => {
                    covered.insert(m.content, i);
                }
            }
            let host = self.hosts_by_address.get(m.address.as_str()).copied();
            match (host, primary) {
                (None, _) => {
                    let msg = format!("address {:?} of {name} is not an address or host name of the cluster's hosts; mirrors go on the cluster's hosts (each ends with as many mirrors as primaries): use an address its segments use, or a host's name", elide(&m.address));
                    self.push(self.at(i, Field::Address), ProblemKind::UnknownAddress, msg);
                }
                (Some(h), Some(p)) if h == p.host => {
                    let msg = format!("{name} would be on host {h} (address {}), the host of its primary (dbid {}); a mirror never shares its primary's host: use an address of another host", m.address, p.dbid);
                    self.push(self.at(i, Field::Address), ProblemKind::SameHost, msg);
                }
                _ => {}
            }
            hosts.push(host);
        }
        for p in c.primaries() {
            if !covered.contains_key(&p.content) && !mirrored.contains_key(&p.content) {
                let msg = format!("content {} has no mirror; add a line mirror{}={}:<address>:<port>:<mirror replication port>:<primary replication port>:<location>...", p.content, p.content, p.content);
                self.push(
                    Where::Segment { host: p.host.clone(), content: p.content, dbid: p.dbid },
                    ProblemKind::MissingMirror,
                    msg,
                );
            }
        }
        // Balance, unless an address is unknown (its mirror's host is too).
        if hosts.iter().all(Option::is_some) {
            let mut count: HashMap<&str, (usize, usize, Vec<usize>)> = HashMap::new();
            for i in &c.instances {
                let e = count.entry(&i.host).or_default();
                match i.role {
                    Role::Primary => e.0 += 1,
                    Role::Mirror => e.1 += 1,
                }
            }
            for (i, h) in hosts.iter().enumerate() {
                if let Some(h) = h {
                    let e = count.entry(h).or_default();
                    e.1 += 1;
                    e.2.push(i);
                }
            }
            let mut count: Vec<_> = count.into_iter().filter(|(_, (p, m, _))| p != m).collect();
            count.sort_by_key(|(h, _)| *h);
            for (h, (p, m, lines)) in count {
                {
                    let names: Vec<String> = lines.iter().map(|&i| self.line_name(i)).collect();
                    let listed =
                        if names.is_empty() { String::new() } else { format!(" ({})", elide(&names.join(", "))) };
                    let msg = format!("would run {p} primaries and {m} mirrors{listed}; every host needs as many mirrors as primaries: move mirrors between hosts");
                    self.push(Where::Host { host: h.to_string() }, ProblemKind::Unbalanced, msg);
                }
            }
        }
        self.built = (0..config.mirrors.len())
            .map(|i| hosts[i].is_some() && covered.get(&config.mirrors[i].content) == Some(&i))
            .collect();
        self.ports(&hosts);
        self.free_ports(&hosts, probe);
        self.directories(&hosts, &fs_name, probe);
        if !self.problems.is_empty() {
            return Err(self.problems);
        }
        let mut planned = Vec::with_capacity(config.mirrors.len());
        for (m, host) in config.mirrors.iter().zip(&hosts) {
            let (Some(p), Some(host)) = (self.primary(m.content), host) else { continue };
            let mut data_dirs = vec![PathBuf::new(); c.filespaces.len()];
            for (li, l) in m.locations.iter().enumerate() {
                if let Some(Some(ci)) = fs_of.get(li) {
                    data_dirs[*ci] = l.clone();
                }
            }
            planned.push(PlannedMirror {
                key: m.key,
                content: m.content,
                primary_dbid: p.dbid,
                primary_host: p.host.clone(),
                host: host.to_string(),
                address: m.address.clone(),
                port: m.port,
                mirror_replication_port: m.mirror_replication_port,
                primary_replication_port: m.primary_replication_port,
                data_dirs,
            });
        }
        Ok(planned)
    }

    /// No two instances listen on one port of one host, counting the ports
    /// being added. A primary that gets a mirror gives up its old
    /// replication port for the configuration's primary replication port.
    fn ports(&mut self, hosts: &[Option<&str>]) {
        let (c, config) = (self.cluster, self.config);
        // Who holds a port: (instance, its replication port?) or (line, claim); said only in a message.
        enum Holder {
            Instance(usize, bool),
            Line(usize, usize),
        }
        let mut taken: HashMap<(&str, u16), Holder> = HashMap::new();
        let replaced: BTreeSet<u32> = config.mirrors.iter().map(|m| m.content).collect();
        for (n, i) in c.instances.iter().enumerate() {
            taken.entry((&i.host, i.port)).or_insert(Holder::Instance(n, false));
            if let Some(r) = i.replication_port {
                if !(i.role == Role::Primary && replaced.contains(&i.content)) {
                    taken.entry((&i.host, r)).or_insert(Holder::Instance(n, true));
                }
            }
        }
        let owner = |h: &Holder| match *h {
            Holder::Instance(n, false) => format!("the port of {}", instance_name(&c.instances[n])),
            Holder::Instance(n, true) => format!("the replication port of {}", instance_name(&c.instances[n])),
            Holder::Line(i, k) => format!("the {} of {}", Self::claims(&config.mirrors[i])[k].1, line_label(config, i)),
        };
        let mut collisions = Vec::new();
        for (i, m) in config.mirrors.iter().enumerate() {
            let primary_host = self.primary(m.content).map(|p| p.host.as_str());
            for (k, (field, what, port)) in Self::claims(m).into_iter().enumerate() {
                let host = if k == 2 { primary_host } else { hosts[i] };
                if port == 0 {
                    let msg = format!("the {what} of {} is 0; give a port from 1 to 65535", m.name());
                    self.push(self.at(i, field), ProblemKind::BadPort, msg);
                    self.refused_ports.insert((i, k));
                    continue;
                }
                let Some(host) = host else { continue };
                match taken.get(&(host, port)) {
                    Some(holder) => {
                        let msg = format!(
                            "{what} {port} on host {host} is already {}; choose another {what} for {}",
                            owner(holder),
                            m.name()
                        );
                        collisions.push((self.at(i, field), msg));
                        self.refused_ports.insert((i, k));
                    }
                    None => {
                        taken.insert((host, port), Holder::Line(i, k));
                    }
                }
            }
        }
        for (at, msg) in collisions {
            self.push(at, ProblemKind::PortCollision, msg);
        }
    }

    /// A line's three ports: field, name, value (the third on the primary's host).
    fn claims(m: &MirrorLine) -> [(Field, &'static str, u16); 3] {
        [
            (Field::Port, "port", m.port),
            (Field::MirrorReplicationPort, "mirror replication port", m.mirror_replication_port),
            (Field::PrimaryReplicationPort, "primary replication port", m.primary_replication_port),
        ]
    }

    /// Every new port of a line to build is free on its host (no process
    /// outside the cluster holds it), asked of each host once. A port an
    /// instance of the cluster holds is not asked: a primary keeps its
    /// own, or gives up its replication port before the mirrors start (a
    /// port that stays taken was refused as a collision already).
    fn free_ports(&mut self, hosts: &[Option<&'a str>], probe: &dyn HostProbe) {
        let config = self.config;
        let mut cluster_ports: std::collections::HashSet<(&str, u16)> = Default::default();
        for i in &self.cluster.instances {
            cluster_ports.insert((i.host.as_str(), i.port));
            cluster_ports.extend(i.replication_port.map(|r| (i.host.as_str(), r)));
        }
        let mut asks: BTreeMap<&str, Vec<(String, u16)>> = BTreeMap::new();
        let mut who: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
        for (i, m) in config.mirrors.iter().enumerate() {
            let (Some(host), Some(p)) = (hosts[i].filter(|_| self.built[i]), self.primary(m.content)) else { continue };
            for (k, (_, _, port)) in Self::claims(m).into_iter().enumerate() {
                let (on, address) =
                    if k == 2 { (p.host.as_str(), p.address.as_str()) } else { (host, m.address.as_str()) };
                if self.refused_ports.contains(&(i, k)) || cluster_ports.contains(&(on, port)) {
                    continue;
                }
                asks.entry(on).or_default().push((address.to_string(), port));
                who.entry(on).or_default().push((i, k));
            }
        }
        for (host, ports) in asks {
            let answers = probe.ports_free(host, &ports);
            for (&(i, k), answer) in who[host].iter().zip(answers) {
                if let Err(why) = answer {
                    let m = &config.mirrors[i];
                    let (field, what, _) = Self::claims(m)[k];
                    let msg = format!("{what} of {} on host {host}: {why}; choose another {what} for it", m.name());
                    self.push(self.at(i, field), ProblemKind::PortInUse, msg);
                }
            }
        }
    }

    /// Every location is absolute, not its primary's own directory, does
    /// not overlap (same, inside, containing) any instance's directory or
    /// another location on the same machine, or the cluster's own
    /// directories, once symbolic links are resolved on its host; and is
    /// absent or empty, where a directory can be created and written.
    fn directories(&mut self, hosts: &[Option<&'a str>], fs_name: &dyn Fn(usize) -> String, probe: &dyn HostProbe) {
        let (c, config) = (self.cluster, self.config);
        // What to ask each host: the instances' directories (resolved only),
        // then the locations of the lines to build (checked for writing too).
        let mut asks: HashMap<&str, Vec<(PathBuf, bool)>> = HashMap::new();
        let mut ask = |host: &'a str, path: &Path, write: bool| -> (&'a str, usize) {
            let list = asks.entry(host).or_default();
            list.push((normalized(path), write));
            (host, list.len() - 1)
        };
        let mut instance_asks = Vec::new();
        for i in &c.instances {
            for d in &i.data_dirs {
                instance_asks.push(plain_absolute(d).then(|| ask(&i.host, d, false)));
            }
        }
        let local_asks: Vec<_> =
            c.local_paths.iter().map(|(p, _)| plain_absolute(p).then(|| ask(THIS_MACHINE, p, false))).collect();
        let mut location_asks: Vec<Vec<Option<(&str, usize)>>> = Vec::with_capacity(config.mirrors.len());
        for (i, m) in config.mirrors.iter().enumerate() {
            let host = hosts[i].filter(|_| self.built[i]);
            location_asks.push(
                m.locations.iter().map(|l| host.filter(|_| plain_absolute(l)).map(|h| ask(h, l, true))).collect(),
            );
        }
        let answers: HashMap<&str, Vec<std::io::Result<PathInfo>>> =
            asks.iter().map(|(h, paths)| (*h, probe.inspect(h, paths))).collect();
        let answer = |a: Option<(&str, usize)>| a.and_then(|(h, k)| answers.get(h).and_then(|v| v.get(k)));
        let resolved = |a: Option<(&str, usize)>, written: &Path| match answer(a) {
            Some(Ok(info)) => info.resolved.clone(),
            _ => normalized(written),
        };
        let mut machines: HashMap<&str, String> = HashMap::new();
        let mut machine = |host: &'a str| machines.entry(host).or_insert_with(|| probe.machine(host)).clone();
        // The directories already taken, per machine: every instance's, the
        // cluster's own, then each new location. Described only in a message.
        #[derive(Clone, Copy)]
        enum Taker {
            Instance(usize, usize),
            Local(usize),
            Line(usize, usize),
        }
        let describe = |t: Taker| -> (&str, PathBuf, String) {
            match t {
                Taker::Instance(n, ci) => {
                    let i = &c.instances[n];
                    let fs = c.filespaces.get(ci).map_or("a", String::as_str);
                    (&i.host, normalized(&i.data_dirs[ci]), format!("the {fs} directory of {}", instance_name(i)))
                }
                Taker::Local(n) => (THIS_MACHINE, normalized(&c.local_paths[n].0), c.local_paths[n].1.clone()),
                Taker::Line(i, li) => {
                    let host = hosts[i].unwrap_or_default();
                    let what = fs_name(li);
                    let what =
                        format!("the {} directory of {}", what.trim_start_matches("filespace "), line_label(config, i));
                    (host, normalized(&config.mirrors[i].locations[li]), what)
                }
            }
        };
        let mut taken: DirIndex<Taker> = DirIndex::default();
        let mut k = 0;
        for (n, i) in c.instances.iter().enumerate() {
            for (ci, d) in i.data_dirs.iter().enumerate() {
                if let Some(Err(e)) = answer(instance_asks[k]) {
                    let what = describe(Taker::Instance(n, ci)).2;
                    let msg = format!("cannot resolve {} ({what}) on host {}: {e}; the new mirrors' directories cannot be compared with it: make sure the host answers", shown(d), i.host);
                    let at = Where::Segment { host: i.host.clone(), content: i.content, dbid: i.dbid };
                    self.push(at, ProblemKind::ProbeFailed, msg);
                }
                taken.insert(&machine(&i.host), resolved(instance_asks[k], d), Taker::Instance(n, ci));
                k += 1;
            }
        }
        let here = machine(THIS_MACHINE);
        for (n, ((p, _), a)) in c.local_paths.iter().zip(&local_asks).enumerate() {
            taken.insert(&here, resolved(*a, p), Taker::Local(n));
        }
        for (i, m) in config.mirrors.iter().enumerate() {
            let primary = self.primary(m.content);
            for (li, loc) in m.locations.iter().enumerate() {
                let at = || self.at(i, Field::Location(li));
                if !plain_absolute(loc) {
                    let msg = format!("location {:?} of {} ({}) is not an absolute path without . or ..; give the full path, starting with /", elide(&loc.display().to_string()), m.name(), fs_name(li));
                    self.push(at(), ProblemKind::RelativeLocation, msg);
                    continue;
                }
                let norm = normalized(loc);
                if let Some(p) = primary {
                    if let Some(ci) = p.data_dirs.iter().position(|d| normalized(d) == norm) {
                        let fs = c.filespaces.get(ci).map_or("a", String::as_str);
                        let msg = format!("location {} of {} is its primary's own {fs} directory; a mirror needs a directory of its own", shown(loc), m.name());
                        self.push(at(), ProblemKind::SameDirectoryAsPrimary, msg);
                        continue;
                    }
                }
                let Some(host) = hosts[i] else { continue };
                let a = location_asks[i][li];
                let real = resolved(a, loc);
                let on = machine(host);
                let overlap = taken.overlap(&on, &real).map(|(relation, other, &t)| {
                    let (owner_host, written, what) = describe(t);
                    let via = if written == other { String::new() } else { format!(" (written {})", shown(&written)) };
                    let elsewhere = if owner_host == host {
                        String::new()
                    } else if owner_host == THIS_MACHINE {
                        " on this machine".to_string()
                    } else {
                        format!(" on host {owner_host}, the same machine")
                    };
                    format!("{} {}{via}, {what}{elsewhere}", relation.words(), shown(other))
                });
                if let Some(o) = overlap {
                    let via = if real == norm {
                        String::new()
                    } else {
                        format!(" (which is {} once symbolic links are resolved)", shown(&real))
                    };
                    let msg = format!(
                        "location {} of {} on host {host}{via} {o}; give each instance a directory of its own",
                        shown(loc),
                        m.name()
                    );
                    taken.insert(&on, real, Taker::Line(i, li));
                    self.push(at(), ProblemKind::DirectoryOverlap, msg);
                    continue;
                }
                taken.insert(&on, real, Taker::Line(i, li));
                let Some(answer) = answer(a) else { continue };
                let (name, what) = (m.name(), fs_name(li));
                let problem = match answer {
                    Ok(PathInfo { state: PathState::NonEmptyDirectory, .. }) => Some((ProblemKind::DirectoryNotEmpty, format!("directory {} on host {host} ({name}, {what}) is not empty; empty it or choose another location", shown(loc)))),
                    Ok(PathInfo { state: PathState::NotADirectory, .. }) => Some((ProblemKind::NotADirectory, format!("{} on host {host} ({name}, {what}) exists and is not a directory; remove it or choose another location", shown(loc)))),
                    Ok(PathInfo { unwritable: Some(why), .. }) => Some((ProblemKind::NotWritable, format!("{} on host {host} ({name}, {what}) cannot be made the mirror's directory: {why}; choose a location on a writable file system", shown(loc)))),
                    Ok(_) => None,
                    Err(e) => {
                        let advice = match e.raw_os_error() {
                            Some(libc::ENAMETOOLONG) => "the path or one of its names is too long for the file system (at most 4095 bytes, 255 per name)",
                            Some(libc::ENOTDIR) => "a component of the path is a file, not a directory",
                            Some(libc::EACCES) => "a directory on the way cannot be read: check its permissions",
                            _ => "make sure the host answers and the path can be read",
                        };
                        Some((ProblemKind::ProbeFailed, format!("cannot check {} on host {host} ({name}, {what}): {e}; {advice}", shown(loc))))
                    }
                };
                if let Some((kind, msg)) = problem {
                    self.push(at(), kind, msg);
                }
            }
        }
    }
}

/// Check a configuration against the cluster, collecting every problem:
/// the filespaces and the number of locations; every content has exactly
/// one mirror and no line names an unknown content; every address is one
/// of the cluster's hosts, never the primary's; every host ends with as
/// many mirrors as primaries; no port is used twice on a host, and the
/// new ports are free there; every location is absolute, not its
/// primary's directory, overlaps no instance's directory or the cluster's
/// own directories on its machine (symbolic links resolved there), and is
/// absent or empty where a directory can be created and written
/// (`probe`). Returns the mirrors to build, in the configuration's order.
/// Linear in the lines (with a log factor): 100,000 lines are no problem.
pub fn validate(
    config: &MirrorConfig,
    cluster: &Cluster,
    probe: &dyn HostProbe,
) -> Result<Vec<PlannedMirror>, ValidationErrors> {
    Check::new(config, cluster).run(probe).map_err(ValidationErrors)
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
