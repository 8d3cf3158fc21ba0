//! Mirror layout for `filerep addmirrors`: where the mirrors of existing
//! primaries go, on which ports and in which directories, and the
//! configuration file that describes it (Greenplum's `gpaddmirrors -o`/`-i`
//! format). Pure: no network, no processes; what it asks of the world
//! (which machine a host is, what a path names there once symbolic links
//! are resolved, whether a directory can be made there, whether a port is
//! free) goes through [`HostProbe`].
//!
//! The flow the tool follows:
//! 1. describe the existing cluster as a [`Cluster`] (from the catalog);
//! 2. get a [`MirrorConfig`], either computed by [`place`] (group or
//!    spread placement, ports by [`mirror_ports`]) or read from a file by
//!    [`MirrorConfig::parse`]; `-o` writes [`MirrorConfig::format`];
//! 3. run [`validate`] on it, whatever its source: it collects every
//!    problem before anything is changed and, when there are none, returns
//!    the [`PlannedMirror`]s to build.
//!
//! The file format and every rule are documented for operators in
//! `docs/operations.md`, section "Mirror configuration files".

mod config_file;
mod overlap;
mod placement;
mod probe;
mod problems;
mod validate;

pub use config_file::{ParseError, ParseErrorKind, ParseErrors};
pub use overlap::{DirIndex, Relation};
pub use placement::{place, Placement};
pub use probe::{HostProbe, LocalFs, PathInfo, PathState, THIS_MACHINE};
pub use problems::{Problem, ProblemKind, ValidationErrors, Where, SHOWN_PROBLEMS};
pub use validate::{elide, shown};
pub use validate::{validate, PlannedMirror};

use std::path::PathBuf;

/// The offset `gpaddmirrors -p` uses when none is given.
pub const DEFAULT_PORT_OFFSET: u32 = 1000;

/// Errors of the layout module. Parse and validation problems come as
/// lists ([`ParseErrors`], [`ValidationErrors`]) so an operator sees all of
/// them at once; they convert into this type for callers that want one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("content {content}: port offset 0 would put the mirror on its primary's port; give an offset of at least 1 (default {DEFAULT_PORT_OFFSET})")]
    ZeroOffset { content: u32 },
    #[error("content {content} (primary port {primary_port}): offset {offset} puts the {which} at {value}, past 65535; {fix}")]
    PortOverflow { content: u32, primary_port: u16, offset: u32, which: &'static str, value: u64, fix: String },
    #[error("the cluster has no primaries to mirror")]
    NoPrimaries,
    #[error("content {content} has two primaries (dbid {first} and dbid {second}); fix the cluster description")]
    DuplicatePrimary { content: u32, first: u32, second: u32 },
    #[error("content {content} already has a mirror (dbid {dbid} on host {host}); placement adds mirrors to a cluster that has none, write a configuration file for the others")]
    AlreadyMirrored { content: u32, dbid: u32, host: String },
    #[error("{given} mirror directory bases given for {expected} filespaces ({names}); give one per filespace, the default filespace's first")]
    BaseCount { expected: usize, given: usize, names: String },
    #[error("content {content} (dbid {dbid}): {given} data directories for {expected} filespaces; fix the cluster description")]
    DataDirCount { content: u32, dbid: u32, expected: usize, given: usize },
    #[error("content {content}: the primary's directory {dir:?} has no last component to name the mirror's directory after; give the primary's real data directory")]
    NoBasename { content: u32, dir: PathBuf },
    #[error("group placement needs at least 2 hosts, the cluster has 1 ({host}): a mirror never shares its primary's host; add a host or write a configuration file")]
    GroupNeedsTwoHosts { host: String },
    #[error("spread placement needs more hosts than segments per host: {hosts} hosts with {per_host} primaries each; add hosts or use group placement")]
    SpreadNeedsMoreHosts { hosts: usize, per_host: usize },
    #[error("placement needs the same number of primaries on every host: {detail}; write a configuration file for this cluster")]
    UnevenHosts { detail: String },
    #[error("{mirror}: {what}; it cannot be written to a mirror configuration file")]
    Unrepresentable { mirror: String, what: String },
    #[error(transparent)]
    Parse(#[from] ParseErrors),
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

/// The three ports a new mirror pair uses, from the primary's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorPorts {
    /// `primary port + offset`: the mirror's own (control) port.
    pub mirror: u16,
    /// `primary port + 2 × offset`: where the mirror receives the stream.
    pub mirror_replication: u16,
    /// `primary port + 3 × offset`: the primary's replication port.
    pub primary_replication: u16,
}

/// Greenplum's `-p OFFSET` arithmetic: for primary port P, the mirror gets
/// P+O, the mirror replication port P+2O and the primary replication port
/// P+3O. An offset of 0, or any of them past 65535, is an error naming the
/// segment (by content) and the largest offset that would fit.
pub fn mirror_ports(content: u32, primary_port: u16, offset: u32) -> Result<MirrorPorts, LayoutError> {
    if offset == 0 {
        return Err(LayoutError::ZeroOffset { content });
    }
    let at = |k: u64, which: &'static str| -> Result<u16, LayoutError> {
        let value = u64::from(primary_port) + k * u64::from(offset);
        u16::try_from(value).map_err(|_| {
            let max = (65535 - u32::from(primary_port)) / 3;
            let fix = if max == 0 {
                format!("no offset fits: move the primary off port {primary_port} or write a configuration file")
            } else {
                format!("choose an offset from 1 to {max}")
            };
            LayoutError::PortOverflow { content, primary_port, offset, which, value, fix }
        })
    };
    Ok(MirrorPorts {
        mirror: at(1, "mirror port")?,
        mirror_replication: at(2, "mirror replication port")?,
        primary_replication: at(3, "primary replication port")?,
    })
}

/// A segment instance's role in the existing cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Mirror,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Mirror => "mirror",
        }
    }
}

/// One existing segment instance (a row of `gp_segment_configuration`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub content: u32,
    pub dbid: u32,
    pub role: Role,
    /// The host's name: what "the same host" means.
    pub host: String,
    /// The address the instance is reached at (a host name or an interface
    /// name such as `sdw1-1`, or an IP address).
    pub address: String,
    pub port: u16,
    /// The replication port, if it has one. A primary's is replaced by the
    /// configuration's primary replication port when it gets a mirror.
    pub replication_port: Option<u16>,
    /// One directory per filespace, in [`Cluster::filespaces`] order.
    pub data_dirs: Vec<PathBuf>,
}

/// The existing cluster, as the layout needs to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Every filespace's name; the first is the default one (`pg_system`).
    pub filespaces: Vec<String>,
    pub instances: Vec<Instance>,
    /// Directories of the machine validation runs on that no mirror may
    /// overlap (the cluster directory), each with what it is.
    pub local_paths: Vec<(PathBuf, String)>,
}

impl Cluster {
    pub fn primaries(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| i.role == Role::Primary)
    }

    pub fn primary(&self, content: u32) -> Option<&Instance> {
        self.primaries().find(|i| i.content == content)
    }

    /// The host an address belongs to: the host of an instance reached at
    /// that address, else the host of that name. Addresses no instance uses
    /// are unknown: mirrors go on the cluster's own hosts.
    pub fn host_of(&self, address: &str) -> Option<&str> {
        self.instances
            .iter()
            .find(|i| i.address == address)
            .or_else(|| self.instances.iter().find(|i| i.host == address))
            .map(|i| i.host.as_str())
    }
}

/// One `mirror<N>=` line: a mirror for one content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorLine {
    /// The `N` of `mirror<N>`: a label, unique in the file; by convention
    /// (and as written by [`MirrorConfig::format`] of a placement) the content.
    pub key: u32,
    pub content: u32,
    /// Where the mirror is reached; its host is found through the cluster.
    pub address: String,
    pub port: u16,
    pub mirror_replication_port: u16,
    pub primary_replication_port: u16,
    /// The mirror's directory per filespace: the default filespace's first,
    /// then one per name of [`MirrorConfig::filespace_order`], in that order.
    pub locations: Vec<PathBuf>,
}

impl MirrorLine {
    pub fn name(&self) -> String {
        format!("mirror{}", self.key)
    }
}

/// A mirror configuration: what `-o` writes and `-i` reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorConfig {
    /// The non-default filespaces, in the order of each line's locations
    /// after the first (the default filespace's, which is never named).
    pub filespace_order: Vec<String>,
    pub mirrors: Vec<MirrorLine>,
    /// Where each part was read, when parsed from a file (`None` when built
    /// in code): validation problems then name file, line and column.
    pub origin: Option<Origin>,
}

/// Positions (1-based lines and columns, columns counted in characters) of
/// a parsed configuration's parts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    /// The `filespaceOrder=` line (0 if the file had none).
    pub filespace_order_line: usize,
    /// The column of each name of `filespace_order`.
    pub filespace_order_columns: Vec<usize>,
    /// The column just past the `filespaceOrder=` line's end.
    pub filespace_order_end: usize,
    /// One per entry of [`MirrorConfig::mirrors`], same order.
    pub lines: Vec<LineOrigin>,
}

/// Where one mirror line's fields start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineOrigin {
    pub line: usize,
    pub key: usize,
    pub content: usize,
    pub address: usize,
    pub port: usize,
    pub mirror_replication_port: usize,
    pub primary_replication_port: usize,
    pub locations: Vec<usize>,
    /// The column just past the line's last character.
    pub end: usize,
}

/// Content `content`'s primary on `host` (dbid content + 2), its data
/// directory per filespace `BASE/gpseg<content>`: the tests' clusters.
#[cfg(test)]
pub(crate) fn test_primary(content: u32, host: &str, port: u16, bases: &[&str]) -> Instance {
    Instance {
        content,
        dbid: content + 2,
        role: Role::Primary,
        host: host.into(),
        address: host.into(),
        port,
        replication_port: None,
        data_dirs: bases.iter().map(|b| format!("{b}/gpseg{content}").into()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_example_ports() {
        let p = mirror_ports(0, 50001, 1000).unwrap();
        assert_eq!(p, MirrorPorts { mirror: 51001, mirror_replication: 52001, primary_replication: 53001 });
        let p = mirror_ports(0, 40000, DEFAULT_PORT_OFFSET).unwrap();
        assert_eq!((p.mirror, p.mirror_replication, p.primary_replication), (41000, 42000, 43000));
    }

    #[test]
    fn ports_past_65535_name_the_segment_and_the_largest_offset() {
        // The seed's cluster: primary port 40000 with `-p 10000` does not fit.
        let e = mirror_ports(3, 40000, 10000).unwrap_err();
        assert!(matches!(e, LayoutError::PortOverflow { content: 3, value: 70000, .. }), "{e:?}");
        let m = e.to_string();
        assert!(m.contains("content 3") && m.contains("primary replication port at 70000"), "{m}");
        assert!(m.contains("from 1 to 8511"), "{m}");
        // The largest offset that fits does fit, one more does not.
        assert_eq!(mirror_ports(3, 40000, 8511).unwrap().primary_replication, 65533);
        assert!(mirror_ports(3, 40000, 8512).is_err());
        // The mirror port itself can overflow first.
        let m = mirror_ports(1, 65000, 600).unwrap_err().to_string();
        assert!(m.contains("mirror port at 65600"), "{m}");
        let m = mirror_ports(1, 65534, 1).unwrap_err().to_string();
        assert!(m.contains("no offset fits"), "{m}");
        // Huge offsets do not wrap around.
        assert!(mirror_ports(1, 1, u32::MAX).is_err());
    }

    #[test]
    fn offset_zero_is_refused_naming_the_segment() {
        let e = mirror_ports(7, 40000, 0).unwrap_err();
        assert_eq!(e, LayoutError::ZeroOffset { content: 7 });
        assert!(e.to_string().contains("content 7") && e.to_string().contains("at least 1"));
    }

    #[test]
    fn addresses_resolve_to_hosts_through_the_cluster() {
        let i = |content, host: &str, address: &str| Instance {
            content,
            dbid: content + 2,
            role: Role::Primary,
            host: host.into(),
            address: address.into(),
            port: 40000,
            replication_port: None,
            data_dirs: vec![],
        };
        let c = Cluster {
            filespaces: vec!["pg_system".into()],
            instances: vec![i(0, "sdw1", "sdw1-1"), i(1, "sdw2", "sdw2")],
            ..Default::default()
        };
        assert_eq!(c.host_of("sdw1-1"), Some("sdw1"));
        assert_eq!(c.host_of("sdw1"), Some("sdw1"), "a host's own name is one of its addresses");
        assert_eq!(c.host_of("sdw2"), Some("sdw2"));
        assert_eq!(c.host_of("sdw3"), None);
    }
}
