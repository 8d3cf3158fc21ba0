//! Group and spread placement of mirrors for a cluster's primaries.
//!
//! Hosts are ordered by the lowest content they hold, and each host's
//! primaries by content; call a primary's rank on its host its slot
//! (0, 1, …). With `n` hosts of `k` primaries each:
//! - **group**: every mirror of host `h`'s primaries goes on host `h+1`
//!   (mod `n`). Needs `n ≥ 2`. When a host fails, the next one runs twice
//!   its primaries.
//! - **spread**: the mirror of slot `j` of host `h` goes on host `h+1+j`
//!   (mod `n`): one on each of the `k` following hosts. Needs `n > k`. When
//!   a host fails, no surviving host gains more than one promoted mirror.
//!
//! Either way every host ends with `k` mirrors, each on another host than
//! its primary. A mirror is reached at the address its destination host's
//! primary of the same slot uses (so multi-interface hosts spread mirrors
//! over their interfaces); its ports come from [`mirror_ports`]; its
//! directory for filespace `f` is `<base f>/<last component of the
//! primary's directory for f>` (`/data/primary/gpseg3` with base
//! `/data/mirror` gives `/data/mirror/gpseg3`).

use super::{mirror_ports, Cluster, Instance, LayoutError, MirrorConfig, MirrorLine, Role};
use std::path::PathBuf;

/// How mirrors are spread over the hosts (`gpaddmirrors` default: group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    #[default]
    Group,
    Spread,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Group => "group",
            Placement::Spread => "spread",
        }
    }
}

impl std::str::FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> Result<Placement, String> {
        match s {
            "group" => Ok(Placement::Group),
            "spread" => Ok(Placement::Spread),
            _ => Err(format!("placement {s:?}: choose group (the default) or spread")),
        }
    }
}

/// Place one mirror per primary. `mirror_bases` holds the mirror data
/// directory base per filespace, in [`Cluster::filespaces`] order (the
/// default filespace's first). The cluster must have no mirror yet. The
/// result is a configuration like one read from a file: run
/// [`validate`](super::validate) on it before acting (it checks ports
/// against every instance, and the directories on the hosts).
pub fn place(
    cluster: &Cluster,
    placement: Placement,
    offset: u32,
    mirror_bases: &[PathBuf],
) -> Result<MirrorConfig, LayoutError> {
    if let Some(m) = cluster.instances.iter().find(|i| i.role == Role::Mirror) {
        return Err(LayoutError::AlreadyMirrored { content: m.content, dbid: m.dbid, host: m.host.clone() });
    }
    let filespaces = cluster.filespaces.len();
    if mirror_bases.len() != filespaces {
        return Err(LayoutError::BaseCount {
            expected: filespaces,
            given: mirror_bases.len(),
            names: cluster.filespaces.join(", "),
        });
    }
    let mut primaries: Vec<&Instance> = cluster.primaries().collect();
    if primaries.is_empty() {
        return Err(LayoutError::NoPrimaries);
    }
    primaries.sort_by_key(|p| (p.content, p.dbid));
    for w in primaries.windows(2) {
        if w[0].content == w[1].content {
            return Err(LayoutError::DuplicatePrimary { content: w[0].content, first: w[0].dbid, second: w[1].dbid });
        }
    }
    if let Some(p) = primaries.iter().find(|p| p.data_dirs.len() != filespaces) {
        return Err(LayoutError::DataDirCount {
            content: p.content,
            dbid: p.dbid,
            expected: filespaces,
            given: p.data_dirs.len(),
        });
    }
    // Hosts in order of their lowest content; primaries already by content.
    let mut hosts: Vec<(&str, Vec<&Instance>)> = Vec::new();
    for p in primaries {
        match hosts.iter_mut().find(|(h, _)| *h == p.host) {
            Some((_, on)) => on.push(p),
            None => hosts.push((&p.host, vec![p])),
        }
    }
    let per_host = hosts[0].1.len();
    if hosts.iter().any(|(_, on)| on.len() != per_host) {
        let detail: Vec<String> = hosts.iter().map(|(h, on)| format!("{h} has {}", on.len())).collect();
        return Err(LayoutError::UnevenHosts { detail: detail.join(", ") });
    }
    let n = hosts.len();
    match placement {
        Placement::Group if n < 2 => return Err(LayoutError::GroupNeedsTwoHosts { host: hosts[0].0.to_string() }),
        Placement::Spread if n <= per_host => return Err(LayoutError::SpreadNeedsMoreHosts { hosts: n, per_host }),
        _ => {}
    }
    let mut mirrors = Vec::new();
    for (h, (_, on)) in hosts.iter().enumerate() {
        for (slot, p) in on.iter().enumerate() {
            let dest = match placement {
                Placement::Group => (h + 1) % n,
                Placement::Spread => (h + 1 + slot) % n,
            };
            let ports = mirror_ports(p.content, p.port, offset)?;
            let mut locations = Vec::with_capacity(filespaces);
            for (dir, base) in p.data_dirs.iter().zip(mirror_bases) {
                let name =
                    dir.file_name().ok_or_else(|| LayoutError::NoBasename { content: p.content, dir: dir.clone() })?;
                locations.push(base.join(name));
            }
            mirrors.push(MirrorLine {
                key: p.content,
                content: p.content,
                address: hosts[dest].1[slot].address.clone(),
                port: ports.mirror,
                mirror_replication_port: ports.mirror_replication,
                primary_replication_port: ports.primary_replication,
                locations,
            });
        }
    }
    mirrors.sort_by_key(|m| m.content);
    Ok(MirrorConfig { filespace_order: cluster.filespaces[1..].to_vec(), mirrors, origin: None })
}

#[cfg(test)]
mod tests {
    use super::super::{validate, PathState};
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// `hosts` hosts `sdw1…` of `per_host` primaries each, contents in host
    /// order, ports 40000+slot, each primary on its own interface `sdwH-S`.
    fn cluster(hosts: usize, per_host: usize) -> Cluster {
        let mut instances = Vec::new();
        for h in 0..hosts {
            for s in 0..per_host {
                let content = (h * per_host + s) as u32;
                instances.push(Instance {
                    content,
                    dbid: content + 2,
                    role: Role::Primary,
                    host: format!("sdw{}", h + 1),
                    address: format!("sdw{}-{}", h + 1, s + 1),
                    port: 40000 + s as u16,
                    replication_port: None,
                    data_dirs: vec![
                        format!("/data/primary/gpseg{content}").into(),
                        format!("/fast/primary/gpseg{content}").into(),
                    ],
                });
            }
        }
        Cluster { filespaces: vec!["pg_system".into(), "fast".into()], instances, ..Default::default() }
    }

    fn bases() -> Vec<PathBuf> {
        vec!["/data/mirror".into(), "/fast/mirror".into()]
    }

    fn absent(_: &str, _: &Path) -> std::io::Result<PathState> {
        Ok(PathState::Absent)
    }

    /// Content → (primary host, mirror host).
    fn hosts_of(c: &Cluster, config: &MirrorConfig) -> BTreeMap<u32, (String, String)> {
        config
            .mirrors
            .iter()
            .map(|m| {
                let primary = c.primary(m.content).unwrap().host.clone();
                (m.content, (primary, c.host_of(&m.address).unwrap().to_string()))
            })
            .collect()
    }

    #[test]
    fn every_combination_of_2_to_8_hosts_and_1_to_4_segments() {
        for n in 2..=8 {
            for k in 1..=4 {
                let c = cluster(n, k);
                for placement in [Placement::Group, Placement::Spread] {
                    let what = format!("{} with {n} hosts of {k}", placement.name());
                    let config = match place(&c, placement, 1000, &bases()) {
                        Ok(config) => config,
                        Err(e) => {
                            assert!(placement == Placement::Spread && n <= k, "{what}: {e}");
                            assert_eq!(e, LayoutError::SpreadNeedsMoreHosts { hosts: n, per_host: k });
                            assert!(e.to_string().contains("more hosts than segments per host"), "{e}");
                            continue;
                        }
                    };
                    assert!(placement == Placement::Group || n > k, "{what} must be refused");
                    assert_eq!(config.mirrors.len(), n * k, "{what}");
                    let hosts = hosts_of(&c, &config);
                    assert_eq!(hosts.len(), n * k, "{what}: one mirror per content");
                    let mut mirrors_on: BTreeMap<&str, usize> = BTreeMap::new();
                    for (content, (p, m)) in &hosts {
                        assert_ne!(p, m, "{what}: content {content}'s mirror is on its primary's host");
                        *mirrors_on.entry(m).or_default() += 1;
                    }
                    assert_eq!(mirrors_on.len(), n, "{what}: {mirrors_on:?}");
                    assert!(mirrors_on.values().all(|&m| m == k), "{what}: {mirrors_on:?}");
                    // One host fails: its mirrors are promoted where they live.
                    for failed in 1..=n {
                        let failed = format!("sdw{failed}");
                        let mut gained: BTreeMap<&str, usize> = BTreeMap::new();
                        for (p, m) in hosts.values() {
                            if *p == failed {
                                *gained.entry(m).or_default() += 1;
                            }
                        }
                        let most = gained.values().copied().max().unwrap_or(0);
                        match placement {
                            Placement::Spread => assert_eq!(most, 1, "{what}, {failed} fails: {gained:?}"),
                            Placement::Group => assert_eq!((gained.len(), most), (1, k), "{what}, {failed} fails"),
                        }
                    }
                    // The output is a valid configuration, and survives its file.
                    let planned = validate(&config, &c, &absent)
                        .unwrap_or_else(|e| panic!("{what}: placement output is invalid:\n{e}"));
                    assert_eq!(planned.len(), n * k);
                    let text = config.format().unwrap();
                    let back = MirrorConfig::parse(&text, "placed.cfg").unwrap();
                    assert_eq!((&back.filespace_order, &back.mirrors), (&config.filespace_order, &config.mirrors));
                    assert!(validate(&back, &c, &absent).is_ok(), "{what}");
                }
            }
        }
    }

    #[test]
    fn one_host_is_refused_with_the_reason() {
        for k in 1..=4 {
            let c = cluster(1, k);
            let e = place(&c, Placement::Group, 1000, &bases()).unwrap_err();
            assert_eq!(e, LayoutError::GroupNeedsTwoHosts { host: "sdw1".into() });
            assert!(e.to_string().contains("at least 2 hosts, the cluster has 1 (sdw1)"), "{e}");
            let e = place(&c, Placement::Spread, 1000, &bases()).unwrap_err();
            assert_eq!(e, LayoutError::SpreadNeedsMoreHosts { hosts: 1, per_host: k });
        }
    }

    #[test]
    fn the_seed_cluster_in_group_placement() {
        // gp_segment_configuration of the seed: contents 0,1 on sdw1 and
        // 2,3 on sdw2, ports 40000 and 40001; gpstate -m shows group
        // mirroring with gpseg0,1 mirrored on sdw2 and gpseg2,3 on sdw1.
        let p = |content: u32, host: &str, port: u16| {
            super::super::test_primary(content, host, port, &["/home/hanson/data/primary"])
        };
        let c = Cluster {
            filespaces: vec!["pg_system".into()],
            instances: vec![p(0, "sdw1", 40000), p(2, "sdw2", 40000), p(1, "sdw1", 40001), p(3, "sdw2", 40001)],
            ..Default::default()
        };
        let base = [PathBuf::from("/home/hanson/data/mirror")];
        let config = place(&c, Placement::Group, 1000, &base).unwrap();
        assert_eq!(
            config.format().unwrap(),
            "filespaceOrder=
mirror0=0:sdw2:41000:42000:43000:/home/hanson/data/mirror/gpseg0
mirror1=1:sdw2:41001:42001:43001:/home/hanson/data/mirror/gpseg1
mirror2=2:sdw1:41000:42000:43000:/home/hanson/data/mirror/gpseg2
mirror3=3:sdw1:41001:42001:43001:/home/hanson/data/mirror/gpseg3
"
        );
        // `-p 10000` (the seed's example) does not fit under 65536 from port 40000.
        let e = place(&c, Placement::Group, 10000, &base).unwrap_err();
        assert!(matches!(e, LayoutError::PortOverflow { content: 0, value: 70000, .. }), "{e}");
    }

    #[test]
    fn the_operations_guide_example_is_group_placement_and_valid() {
        // docs/operations.md, "Mirror configuration files".
        const EXAMPLE: &str = "# mirrors of sdw1's primaries go on sdw2 and the other way round
filespaceOrder=fast
mirror0=0:sdw2:41000:42000:43000:/data/mirror/gpseg0:/fast/mirror/gpseg0
mirror1=1:sdw2:41001:42001:43001:/data/mirror/gpseg1:/fast/mirror/gpseg1
mirror2=2:sdw1:41000:42000:43000:/data/mirror/gpseg2:/fast/mirror/gpseg2
mirror3=3:sdw1:41001:42001:43001:/data/mirror/gpseg3:/fast/mirror/gpseg3
";
        let mut c = cluster(2, 2);
        for i in &mut c.instances {
            i.address = i.host.clone();
        }
        let config = place(&c, Placement::Group, 1000, &bases()).unwrap();
        assert_eq!(config.format().unwrap(), EXAMPLE.split_once('\n').unwrap().1);
        let read = MirrorConfig::parse(EXAMPLE, "example.cfg").unwrap();
        assert_eq!(read.mirrors, config.mirrors);
        assert!(validate(&read, &c, &absent).is_ok());
    }

    #[test]
    fn mirrors_use_each_interface_of_their_host_once() {
        let c = cluster(3, 2);
        let config = place(&c, Placement::Spread, 1000, &bases()).unwrap();
        let mut addresses: Vec<&str> = config.mirrors.iter().map(|m| m.address.as_str()).collect();
        addresses.sort();
        assert_eq!(addresses, ["sdw1-1", "sdw1-2", "sdw2-1", "sdw2-2", "sdw3-1", "sdw3-2"]);
        // Directories: the base, then the primary's last component.
        assert_eq!(config.mirrors[4].locations, [PathBuf::from("/data/mirror/gpseg4"), "/fast/mirror/gpseg4".into()]);
        assert_eq!(config.filespace_order, ["fast"]);
    }

    #[test]
    fn clusters_placement_cannot_serve_are_refused() {
        let mut c = cluster(3, 2);
        c.instances.pop();
        let e = place(&c, Placement::Group, 1000, &bases()).unwrap_err();
        assert!(e.to_string().contains("sdw1 has 2, sdw2 has 2, sdw3 has 1"), "{e}");
        let c = cluster(3, 2);
        let e = place(&c, Placement::Group, 1000, &bases()[..1]).unwrap_err();
        assert_eq!(e, LayoutError::BaseCount { expected: 2, given: 1, names: "pg_system, fast".into() });
        let mut c = cluster(3, 2);
        c.instances[1].data_dirs[1] = "/".into();
        let e = place(&c, Placement::Group, 1000, &bases()).unwrap_err();
        assert!(matches!(e, LayoutError::NoBasename { content: 1, .. }), "{e}");
        let mut c = cluster(3, 2);
        c.instances[2].data_dirs.pop();
        assert!(matches!(
            place(&c, Placement::Group, 1000, &bases()),
            Err(LayoutError::DataDirCount { content: 2, .. })
        ));
        let mut c = cluster(3, 2);
        c.instances[5].role = Role::Mirror;
        let e = place(&c, Placement::Group, 1000, &bases()).unwrap_err();
        assert!(e.to_string().contains("content 5 already has a mirror (dbid 7 on host sdw3)"), "{e}");
        let mut c = cluster(3, 2);
        c.instances[3].content = 2;
        assert!(matches!(
            place(&c, Placement::Group, 1000, &bases()),
            Err(LayoutError::DuplicatePrimary { content: 2, .. })
        ));
        assert_eq!(place(&Cluster::default(), Placement::Group, 1000, &[]), Err(LayoutError::NoPrimaries));
        assert_eq!(place(&cluster(2, 1), Placement::Group, 0, &bases()), Err(LayoutError::ZeroOffset { content: 0 }));
        assert_eq!("spread".parse::<Placement>(), Ok(Placement::Spread));
        assert!("grouped".parse::<Placement>().unwrap_err().contains("group (the default) or spread"));
    }
}
