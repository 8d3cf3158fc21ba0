//! Tests of the placement checks.

use super::super::{test_primary as primary, LocalFs, MirrorLine, SHOWN_PROBLEMS};
use super::*;
use std::io;

/// sdw1..sdw3, two primaries each (contents 0..5 in host order), ports
/// 40000 and 40001, replication ports 39000 and 39001 (replaced when
/// mirrored), filespaces pg_system and fs1.
fn cluster() -> Cluster {
    let mut instances = Vec::new();
    for content in 0..6u32 {
        let (h, s) = (content / 2 + 1, content % 2);
        let mut p = primary(content, &format!("sdw{h}"), 40000 + s as u16, &["/data/primary", "/fs1/primary"]);
        p.replication_port = Some(39000 + s as u16);
        instances.push(p);
    }
    Cluster { filespaces: vec!["pg_system".into(), "fs1".into()], instances, ..Default::default() }
}

/// Group placement of `cluster()`, as a file.
const VALID: &str = "filespaceOrder=fs1
mirror0=0:sdw2:41000:42000:43000:/data/mirror/gpseg0:/fs1/mirror/gpseg0
mirror1=1:sdw2:41001:42001:43001:/data/mirror/gpseg1:/fs1/mirror/gpseg1
mirror2=2:sdw3:41000:42000:43000:/data/mirror/gpseg2:/fs1/mirror/gpseg2
mirror3=3:sdw3:41001:42001:43001:/data/mirror/gpseg3:/fs1/mirror/gpseg3
mirror4=4:sdw1:41000:42000:43000:/data/mirror/gpseg4:/fs1/mirror/gpseg4
mirror5=5:sdw1:41001:42001:43001:/data/mirror/gpseg5:/fs1/mirror/gpseg5
";

fn absent(_: &str, _: &Path) -> io::Result<PathState> {
    Ok(PathState::Absent)
}

/// Validate `VALID` with `from` replaced by `to`; the problems.
fn problems_with(from: &str, to: &str) -> Vec<Problem> {
    assert!(VALID.contains(from), "{from}");
    problems(&VALID.replacen(from, to, 1), &cluster(), &absent)
}

fn problems(text: &str, c: &Cluster, probe: &dyn HostProbe) -> Vec<Problem> {
    let config = MirrorConfig::parse(text, "mirrors.cfg").unwrap();
    validate(&config, c, probe).expect_err("the configuration must be refused").0
}

/// The problem of `kind` (exactly one) and its message.
fn the(problems: &[Problem], kind: ProblemKind) -> &Problem {
    let found: Vec<&Problem> = problems.iter().filter(|p| p.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind:?} expected in {problems:#?}");
    found[0]
}

fn in_file(line: usize, column: usize) -> Where {
    Where::File { file: "mirrors.cfg".into(), line, column }
}

#[test]
fn a_valid_file_gives_the_plan() {
    let config = MirrorConfig::parse(VALID, "mirrors.cfg").unwrap();
    let plan = validate(&config, &cluster(), &absent).unwrap();
    assert_eq!(plan.len(), 6);
    let p = &plan[3];
    assert_eq!((p.key, p.content, p.primary_dbid, p.primary_host.as_str(), p.host.as_str()), (3, 3, 5, "sdw2", "sdw3"));
    assert_eq!((p.port, p.mirror_replication_port, p.primary_replication_port), (41001, 42001, 43001));
    assert_eq!(p.data_dirs, [PathBuf::from("/data/mirror/gpseg3"), "/fs1/mirror/gpseg3".into()]);
    // The primary's old replication port is replaced, so reusing it is fine.
    let plan = validate(
        &MirrorConfig::parse(&VALID.replacen("41000:42000:43000", "41000:42000:39000", 1), "m.cfg").unwrap(),
        &cluster(),
        &absent,
    )
    .unwrap();
    assert_eq!(plan[0].primary_replication_port, 39000);
}

#[test]
fn locations_are_reordered_into_the_clusters_filespace_order() {
    let mut c = cluster();
    c.filespaces.push("fs2".into());
    for i in &mut c.instances {
        i.data_dirs.push(format!("/fs2/primary/gpseg{}", i.content).into());
    }
    // The file lists fs2 before fs1; the cluster fs1 before fs2.
    let mut text = String::from("filespaceOrder=fs2:fs1\n");
    for (content, host, s) in
        [(0, "sdw2", 0), (1, "sdw2", 1), (2, "sdw3", 0), (3, "sdw3", 1), (4, "sdw1", 0), (5, "sdw1", 1)]
    {
        text += &format!(
                "mirror{content}={content}:{host}:{}:{}:{}:/data/mirror/gpseg{content}:/fs2/mirror/gpseg{content}:/fs1/mirror/gpseg{content}\n",
                41000 + s,
                42000 + s,
                43000 + s
            );
    }
    let config = MirrorConfig::parse(&text, "m.cfg").unwrap();
    let plan = validate(&config, &c, &absent).unwrap();
    assert_eq!(
        plan[0].data_dirs,
        [PathBuf::from("/data/mirror/gpseg0"), "/fs1/mirror/gpseg0".into(), "/fs2/mirror/gpseg0".into()]
    );
}

#[test]
fn unknown_and_missing_contents() {
    let p = problems_with("mirror5=5:", "mirror5=9:");
    let u = the(&p, ProblemKind::UnknownContent);
    assert_eq!(u.at, in_file(7, 9));
    assert!(u.message.contains("content 9 has no primary in the cluster (its contents: 0, 1, 2, 3, 4, 5)"), "{u}");
    let m = the(&p, ProblemKind::MissingMirror);
    assert_eq!(m.at, Where::Segment { host: "sdw3".into(), content: 5, dbid: 7 });
    assert!(
        m.to_string().starts_with("host sdw3, content 5 (dbid 7): content 5 has no mirror; add a line mirror5=5:"),
        "{m}"
    );
    assert_eq!(p.len(), 2, "{p:#?}");
}

#[test]
fn a_content_mirrored_twice() {
    // mirror5 names content 4 and moves to sdw2's free ports, so only the content is wrong.
    let p = problems_with("mirror5=5:sdw1:41001:42001:43001", "mirror5=4:sdw1:41001:42001:43002");
    let d = the(&p, ProblemKind::DuplicateContent);
    assert_eq!(d.at, in_file(7, 9));
    assert!(d.message.contains("content 4 is mirrored twice: by mirror4 (line 6) and by mirror5"), "{d}");
    assert_eq!(the(&p, ProblemKind::MissingMirror).at, Where::Segment { host: "sdw3".into(), content: 5, dbid: 7 });
}

#[test]
fn a_mirror_on_its_primarys_host_and_unbalanced_hosts() {
    // mirror0 moves from sdw2 to sdw1 (its primary's host), on free ports.
    let p = problems_with("mirror0=0:sdw2:41000:42000", "mirror0=0:sdw1:45000:46000");
    let s = the(&p, ProblemKind::SameHost);
    assert_eq!(s.at, in_file(2, 11));
    assert!(
        s.message.contains("mirror0 would be on host sdw1 (address sdw1), the host of its primary (dbid 2)"),
        "{s}"
    );
    let unbalanced: Vec<String> =
        p.iter().filter(|p| p.kind == ProblemKind::Unbalanced).map(|p| p.to_string()).collect();
    assert_eq!(
            unbalanced,
            [
                "host sdw1: would run 2 primaries and 3 mirrors (mirror0 (line 2), mirror4 (line 6), mirror5 (line 7)); every host needs as many mirrors as primaries: move mirrors between hosts",
                "host sdw2: would run 2 primaries and 1 mirrors (mirror1 (line 3)); every host needs as many mirrors as primaries: move mirrors between hosts",
            ]
        );
    assert_eq!(p.len(), 3, "{p:#?}");
}

#[test]
fn an_unknown_address() {
    let p = problems_with("mirror3=3:sdw3:", "mirror3=3:sdw9:");
    let u = the(&p, ProblemKind::UnknownAddress);
    assert_eq!(u.at, in_file(5, 11));
    assert!(u.message.contains("address \"sdw9\" of mirror3 is not an address or host name"), "{u}");
    assert_eq!(p.len(), 1, "balance is not judged with a host unknown: {p:#?}");
}

#[test]
fn port_collisions_name_both_claimants() {
    // With another new mirror on the same host.
    let p = problems_with("mirror1=1:sdw2:41001", "mirror1=1:sdw2:41000");
    let c = the(&p, ProblemKind::PortCollision);
    assert_eq!(c.at, in_file(3, 16));
    assert_eq!(
        c.message,
        "port 41000 on host sdw2 is already the port of mirror0 (line 2); choose another port for mirror1"
    );
    assert_eq!(p.len(), 1);
    // With an existing primary on the mirror's host.
    let p = problems_with("mirror0=0:sdw2:41000:42000", "mirror0=0:sdw2:41000:40001");
    let c = the(&p, ProblemKind::PortCollision);
    assert_eq!(c.at, in_file(2, 22));
    assert!(
        c.message
            .contains("mirror replication port 40001 on host sdw2 is already the port of primary content 3 (dbid 5)"),
        "{c}"
    );
    // The primary replication port is on the primary's host.
    let p = problems_with("mirror0=0:sdw2:41000:42000:43000", "mirror0=0:sdw2:41000:42000:40001");
    let c = the(&p, ProblemKind::PortCollision);
    assert_eq!(c.at, in_file(2, 28));
    assert!(
        c.message
            .contains("primary replication port 40001 on host sdw1 is already the port of primary content 1 (dbid 3)"),
        "{c}"
    );
    // Within one line.
    let p = problems_with("mirror0=0:sdw2:41000:42000", "mirror0=0:sdw2:41000:41000");
    assert!(the(&p, ProblemKind::PortCollision).message.contains("already the port of mirror0 (line 2)"));
    // With the replication port of an existing mirror (content 1 already
    // mirrored on sdw2, so the file has no line for it).
    let mut c = cluster();
    let mut existing = c.instances[1].clone();
    (existing.role, existing.dbid, existing.host, existing.address) = (Role::Mirror, 20, "sdw2".into(), "sdw2".into());
    (existing.port, existing.replication_port) = (41001, Some(50001));
    existing.data_dirs = vec!["/data/mirror/gpseg1".into(), "/fs1/mirror/gpseg1".into()];
    c.instances.push(existing);
    let text = VALID.replacen("mirror1=1:sdw2:41001:42001:43001:/data/mirror/gpseg1:/fs1/mirror/gpseg1\n", "", 1);
    assert!(validate(&MirrorConfig::parse(&text, "m.cfg").unwrap(), &c, &absent).is_ok());
    let text = text.replacen("mirror0=0:sdw2:41000:42000", "mirror0=0:sdw2:41000:50001", 1);
    let p = problems(&text, &c, &absent);
    let e = the(&p, ProblemKind::PortCollision);
    assert!(
        e.message.contains("50001 on host sdw2 is already the replication port of mirror content 1 (dbid 20)"),
        "{e}"
    );
    // A line for an already mirrored content.
    let p = problems(VALID, &c, &absent);
    let a = the(&p, ProblemKind::AlreadyMirrored);
    assert_eq!(a.at, in_file(3, 9));
    assert!(a.message.contains("content 1 already has a mirror (dbid 20 on host sdw2); remove mirror1"), "{a}");
}

#[test]
fn filespace_order_and_location_count_against_the_cluster() {
    // The file forgets fs1 entirely: the order misses it, each line has one location.
    let text: String = VALID
        .lines()
        .map(|l| {
            if l.starts_with("filespaceOrder") {
                "filespaceOrder=\n".to_string()
            } else {
                format!("{}\n", l.rsplit_once(':').unwrap().0)
            }
        })
        .collect();
    let p = problems(&text, &cluster(), &absent);
    let o = the(&p, ProblemKind::FilespaceOrder);
    assert_eq!(o.at, in_file(1, 16));
    assert!(o.message.contains("filespace fs1 of the cluster is missing from filespaceOrder"), "{o}");
    let counts: Vec<&Problem> = p.iter().filter(|p| p.kind == ProblemKind::LocationCount).collect();
    assert_eq!(counts.len(), 6);
    assert_eq!(counts[0].at, in_file(2, 53));
    assert!(
        counts[0].message.contains("mirror0 has 1 location(s) but the cluster has 2 filespace(s) (pg_system, fs1)"),
        "{}",
        counts[0]
    );
    assert_eq!(p.len(), 7);
    // An unknown name and the default filespace's name.
    let p = problems_with("filespaceOrder=fs1", "filespaceOrder=fsX");
    let o: Vec<&Problem> = p.iter().filter(|p| p.kind == ProblemKind::FilespaceOrder).collect();
    assert_eq!(o.len(), 2, "{p:#?}");
    assert_eq!(o[0].at, in_file(1, 16));
    assert!(o[0].message.contains("filespace \"fsX\" is not one of the cluster's (pg_system, fs1)"), "{}", o[0]);
    assert_eq!(o[1].at, in_file(1, 19));
    let p = problems_with("filespaceOrder=fs1", "filespaceOrder=pg_system");
    assert!(p.iter().any(|p| p.message.contains("pg_system is the default filespace")), "{p:#?}");
}

#[test]
fn directories_the_primarys_overlapping_relative() {
    let p = problems_with("/data/mirror/gpseg0", "/data/primary/gpseg0");
    let d = the(&p, ProblemKind::SameDirectoryAsPrimary);
    assert_eq!(d.at, in_file(2, 34));
    assert!(
        d.message.contains("location /data/primary/gpseg0 of mirror0 is its primary's own pg_system directory"),
        "{d}"
    );
    assert_eq!(p.len(), 1);
    // The same directory as another mirror on the host (sdw3 holds mirrors 2 and 3).
    let p = problems_with("/data/mirror/gpseg3", "/data/mirror/gpseg2/");
    let d = the(&p, ProblemKind::DirectoryOverlap);
    assert_eq!(d.at, in_file(5, 34));
    assert!(
        d.message
            .contains("on host sdw3 is the same as /data/mirror/gpseg2, the pg_system directory of mirror2 (line 4)"),
        "{d}"
    );
    // Inside an existing primary's directory on that host.
    let p = problems_with("/fs1/mirror/gpseg0", "/fs1/primary/gpseg2/m0");
    let d = the(&p, ProblemKind::DirectoryOverlap);
    assert_eq!(d.at, in_file(2, 54));
    assert!(
        d.message.contains("is inside /fs1/primary/gpseg2, the fs1 directory of primary content 2 (dbid 4)"),
        "{d}"
    );
    // Containing one.
    // (and then mirror1's directory is inside it: two problems)
    let p = problems_with("/data/mirror/gpseg0", "/data");
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!((p[0].kind, p[1].kind), (ProblemKind::DirectoryOverlap, ProblemKind::DirectoryOverlap));
    assert!(p[1].message.contains("is inside /data, the pg_system directory of mirror0 (line 2)"), "{}", p[1]);
    assert!(p[0].message.contains("contains /data/primary/gpseg2, the pg_system directory of primary content 2"));
    // Relative, or with ..
    let p = problems_with("/data/mirror/gpseg1", "data/mirror/gpseg1");
    let r = the(&p, ProblemKind::RelativeLocation);
    assert_eq!(r.at, in_file(3, 34));
    assert!(
        r.message.contains("location \"data/mirror/gpseg1\" of mirror1 (filespace pg_system) is not an absolute path"),
        "{r}"
    );
    let p = problems_with("/fs1/mirror/gpseg1", "/fs1/../mirror/gpseg1");
    assert_eq!(the(&p, ProblemKind::RelativeLocation).at, in_file(3, 54));
}

#[test]
fn directories_must_be_empty_or_absent_on_their_host() {
    let probe = |host: &str, path: &Path| -> io::Result<PathState> {
        Ok(match (host, path.to_str().unwrap_or("")) {
            ("sdw2", "/data/mirror/gpseg1") => PathState::NonEmptyDirectory,
            ("sdw3", "/fs1/mirror/gpseg2") => PathState::NotADirectory,
            ("sdw1", "/data/mirror/gpseg5") => return Err(io::Error::other("ssh: connection refused")),
            ("sdw3", "/data/mirror/gpseg3") => PathState::EmptyDirectory,
            _ => PathState::Absent,
        })
    };
    let p = problems(VALID, &cluster(), &probe);
    assert_eq!(p.len(), 3, "{p:#?}");
    let n = the(&p, ProblemKind::DirectoryNotEmpty);
    assert_eq!(n.to_string(), "mirrors.cfg:3:34: directory /data/mirror/gpseg1 on host sdw2 (mirror1, filespace pg_system) is not empty; empty it or choose another location");
    let f = the(&p, ProblemKind::NotADirectory);
    assert_eq!(f.at, in_file(4, 54));
    assert!(
        f.message.contains("/fs1/mirror/gpseg2 on host sdw3 (mirror2, filespace fs1) exists and is not a directory"),
        "{f}"
    );
    let e = the(&p, ProblemKind::ProbeFailed);
    assert_eq!(e.at, in_file(7, 34));
    assert!(
        e.message.contains(
            "cannot check /data/mirror/gpseg5 on host sdw1 (mirror5, filespace pg_system): ssh: connection refused"
        ),
        "{e}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = VALID
        .replacen("mirror0=0:sdw2:41000", "mirror0=0:sdw2:41001", 1)
        .replacen("mirror2=2:", "mirror2=7:", 1)
        .replacen("/fs1/mirror/gpseg4", "fs1/mirror/gpseg4", 1);
    let e = validate(&MirrorConfig::parse(&text, "mirrors.cfg").unwrap(), &cluster(), &absent).unwrap_err();
    let kinds: Vec<ProblemKind> = e.0.iter().map(|p| p.kind).collect();
    use ProblemKind::*;
    assert_eq!(kinds, [UnknownContent, MissingMirror, PortCollision, RelativeLocation], "{e}");
    let shown = e.to_string();
    assert!(shown.starts_with("the mirror configuration has 4 problems:\n  mirrors.cfg:4:9: content 7"), "{shown}");
    assert_eq!(shown.lines().count(), 5);
}

#[test]
fn a_configuration_built_in_code_names_its_entries() {
    let line = MirrorLine {
        key: 0,
        content: 0,
        address: "sdw1".into(),
        port: 0,
        mirror_replication_port: 42000,
        primary_replication_port: 43000,
        locations: vec!["/m/gpseg0".into()],
    };
    let config = MirrorConfig { filespace_order: vec![], mirrors: vec![line], origin: None };
    let mut c = Cluster {
        filespaces: vec!["pg_system".into()],
        instances: vec![cluster().instances[0].clone()],
        ..Default::default()
    };
    c.instances[0].data_dirs.clear();
    let p = validate(&config, &c, &absent).unwrap_err().0;
    let at = |kind| the(&p, kind).at.clone();
    assert_eq!(at(ProblemKind::SameHost), Where::Entry { name: "mirror0".into() });
    assert_eq!(at(ProblemKind::BadPort), Where::Entry { name: "mirror0".into() });
    assert!(the(&p, ProblemKind::BadPort).message.contains("the port of mirror0 is 0"));
    assert!(p.iter().all(|p| p.kind != ProblemKind::Unbalanced), "one primary and one mirror on sdw1: {p:#?}");
    assert_eq!(at(ProblemKind::Cluster), Where::Segment { host: "sdw1".into(), content: 0, dbid: 2 });
}

#[test]
fn the_local_filesystem_probe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("empty")).unwrap();
    std::fs::create_dir(d.join("full")).unwrap();
    std::fs::write(d.join("full/PG_VERSION"), b"9.4").unwrap();
    std::fs::write(d.join("file"), b"x").unwrap();
    std::os::unix::fs::symlink(d.join("nowhere"), d.join("dangling")).unwrap();
    std::os::unix::fs::symlink(d.join("empty"), d.join("link")).unwrap();
    let s = |p: &str| LocalFs.state("any", &d.join(p)).unwrap();
    assert_eq!(s("absent"), PathState::Absent);
    assert_eq!(s("empty"), PathState::EmptyDirectory);
    assert_eq!(s("full"), PathState::NonEmptyDirectory);
    assert_eq!(s("file"), PathState::NotADirectory);
    assert_eq!(s("dangling"), PathState::NotADirectory);
    assert_eq!(s("link"), PathState::EmptyDirectory);
    assert!(LocalFs.state("any", &d.join("file/below")).is_err(), "a path through a file cannot be checked");
}

/// A world of machines with symbolic links, unwritable places and busy
/// ports, for the checks that look at the hosts.
#[derive(Default)]
struct World {
    /// Host → machine (a host not listed is its own machine).
    machines: BTreeMap<&'static str, &'static str>,
    /// (machine, link, target): a symbolic link on that machine.
    links: Vec<(&'static str, &'static str, &'static str)>,
    unwritable: Vec<&'static str>,
    busy: Vec<(&'static str, u16)>,
}

impl HostProbe for World {
    fn machine(&self, host: &str) -> String {
        self.machines.get(host).map_or(host.to_string(), |m| m.to_string())
    }
    fn state(&self, _: &str, _: &Path) -> io::Result<PathState> {
        Ok(PathState::Absent)
    }
    fn inspect(&self, host: &str, paths: &[(PathBuf, bool)]) -> Vec<io::Result<PathInfo>> {
        let machine = self.machine(host);
        paths
            .iter()
            .map(|(p, write)| {
                let mut resolved = p.clone();
                for (m, link, target) in &self.links {
                    if *m == machine {
                        if let Ok(rest) = p.strip_prefix(link) {
                            resolved = Path::new(target).join(rest);
                        }
                    }
                }
                let unwritable = (*write && self.unwritable.iter().any(|u| p.starts_with(u)))
                    .then(|| "a directory cannot be created in /proc: No such file or directory".to_string());
                Ok(PathInfo { state: PathState::Absent, resolved, unwritable })
            })
            .collect()
    }
    fn ports_free(&self, host: &str, ports: &[(String, u16)]) -> Vec<Result<(), String>> {
        ports
            .iter()
            .map(|(a, p)| match self.busy.contains(&(host, *p)) {
                true => Err(format!("port {p} on {a} is in use by another process")),
                false => Ok(()),
            })
            .collect()
    }
}

#[test]
fn a_symbolic_link_into_another_contents_directory_is_refused() {
    // sdw3 holds primaries 4 and 5; mirror2's location there is a link into content 4's directory.
    let world = World { links: vec![("sdw3", "/data/mirror", "/data/primary/gpseg4")], ..Default::default() };
    let p = problems(VALID, &cluster(), &world);
    let overlaps: Vec<&Problem> = p.iter().filter(|p| p.kind == ProblemKind::DirectoryOverlap).collect();
    assert_eq!(overlaps.len(), 2, "mirror2 and mirror3 both go through the link: {p:#?}");
    assert_eq!(overlaps[0].at, in_file(4, 34));
    assert_eq!(
            overlaps[0].message,
            "location /data/mirror/gpseg2 of mirror2 on host sdw3 (which is /data/primary/gpseg4/gpseg2 once symbolic links are resolved) is inside /data/primary/gpseg4, the pg_system directory of primary content 4 (dbid 6); give each instance a directory of its own"
        );
    // The same link on another machine harms nothing there.
    let world = World { links: vec![("sdw1", "/data/mirror", "/data/primary/gpseg4")], ..Default::default() };
    assert!(validate(&MirrorConfig::parse(VALID, "m.cfg").unwrap(), &cluster(), &world).is_ok());
}

#[test]
fn hosts_of_one_machine_share_their_directories() {
    // sdw2 and sdw3 are one machine: mirror0 (on sdw2) links into the
    // directory of content 4, whose primary is on sdw3.
    let world = World {
        machines: [("sdw2", "box"), ("sdw3", "box")].into_iter().collect(),
        links: vec![("box", "/data/mirror/gpseg0", "/data/primary/gpseg4")],
        ..Default::default()
    };
    let p = problems(VALID, &cluster(), &world);
    let o = the(&p, ProblemKind::DirectoryOverlap);
    assert_eq!(o.at, in_file(2, 34));
    assert!(
            o.message.contains(
                "is the same as /data/primary/gpseg4, the pg_system directory of primary content 4 (dbid 6) on host sdw3, the same machine"
            ),
            "{o}"
        );
    // Without the link, mirror2 and mirror0 still use distinct directories on the shared machine.
    let world = World { machines: world.machines, ..Default::default() };
    assert!(validate(&MirrorConfig::parse(VALID, "m.cfg").unwrap(), &cluster(), &world).is_ok());
}

#[test]
fn the_cluster_directory_is_no_mirrors_place() {
    let mut c = cluster();
    c.local_paths.push(("/srv/cluster".into(), "the cluster directory".into()));
    let world = World { machines: [("sdw3", ""), ("", "")].into_iter().collect(), ..Default::default() };
    let p = problems(&VALID.replacen("/data/mirror/gpseg2", "/srv/cluster/segments/m2", 1), &c, &world);
    let o = the(&p, ProblemKind::DirectoryOverlap);
    assert!(o.message.contains("is inside /srv/cluster, the cluster directory on this machine"), "{o}");
}

#[test]
fn a_location_that_cannot_be_created_and_a_busy_port() {
    let world = World { unwritable: vec!["/proc"], busy: vec![("sdw2", 42001), ("sdw3", 43002)], ..Default::default() };
    let text = VALID.replacen("/fs1/mirror/gpseg3", "/proc/mirror/gpseg3", 1);
    // Content 4's primary is on sdw3: its new primary replication port is asked of sdw3.
    let text = text.replacen("mirror4=4:sdw1:41000:42000:43000", "mirror4=4:sdw1:41000:42000:43002", 1);
    let p = problems(&text, &cluster(), &world);
    let w = the(&p, ProblemKind::NotWritable);
    assert_eq!(w.at, in_file(5, 54));
    assert!(w.message.contains("/proc/mirror/gpseg3 on host sdw3 (mirror3, filespace fs1) cannot be made the mirror's directory: a directory cannot be created in /proc"), "{w}");
    let busy: Vec<String> = p.iter().filter(|p| p.kind == ProblemKind::PortInUse).map(|p| p.to_string()).collect();
    assert_eq!(
            busy,
            [
                "mirrors.cfg:3:22: mirror replication port of mirror1 on host sdw2: port 42001 on sdw2 is in use by another process; choose another mirror replication port for it",
                "mirrors.cfg:6:28: primary replication port of mirror4 on host sdw3: port 43002 on sdw3 is in use by another process; choose another primary replication port for it",
            ]
        );
    assert_eq!(p.len(), 3, "{p:#?}");
}

/// `hosts` hosts of `per_host` primaries each (one filespace), mirrors
/// placed by group placement: the configuration as a file's text.
fn large(hosts: usize, per_host: usize) -> (Cluster, String) {
    let mut instances = Vec::with_capacity(hosts * per_host);
    for h in 0..hosts {
        for slot in 0..per_host {
            let content = (h * per_host + slot) as u32;
            instances.push(primary(content, &format!("sdw{h}"), 20000 + slot as u16, &["/data/primary"]));
        }
    }
    let c = Cluster { filespaces: vec!["pg_system".into()], instances, ..Default::default() };
    let config =
        crate::cluster::layout::place(&c, crate::cluster::layout::Placement::Group, 100, &["/data/mirror".into()])
            .unwrap();
    (c, config.format().unwrap())
}

#[test]
fn a_hundred_thousand_lines_are_validated_in_one_pass() {
    // 1,000 hosts of 100 primaries: 100,000 mirror lines, all valid.
    let (c, text) = large(1000, 100);
    assert_eq!(text.lines().count(), 100_001);
    let started = std::time::Instant::now();
    let config = MirrorConfig::parse(&text, "mirrors.cfg").unwrap();
    let parsed = started.elapsed();
    let plan = validate(&config, &c, &absent).unwrap();
    let total = started.elapsed();
    assert_eq!(plan.len(), 100_000);
    println!(
        "100,000 valid lines: parsed in {:.0} ms, validated in {:.0} ms",
        parsed.as_secs_f64() * 1e3,
        (total - parsed).as_secs_f64() * 1e3
    );
    // The same lines against a cluster of 4 contents: every problem
    // found, the message lists the first ones and counts the rest.
    let (small, _) = large(2, 2);
    let started = std::time::Instant::now();
    let e = validate(&config, &small, &absent).unwrap_err();
    println!("100,000 lines for 4 contents: {} problems in {:.0} ms", e.0.len(), started.elapsed().as_secs_f64() * 1e3);
    assert!(e.0.len() >= 99_996, "{}", e.0.len());
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), SHOWN_PROBLEMS + 2, "{shown}");
    assert!(shown.contains("more (the first 50 are shown"), "{shown}");
}
