//! Where the catalog and the arbiters' leadership live: the catalog file
//! (one arbiter, held by a local lock: [`crate::durable::catalog::FileStore`])
//! or etcd (several arbiters on several hosts, one acting by an etcd lease,
//! every catalog change one etcd transaction that also checks that lease:
//! [`etcd`]). `filerep init --coordinator` chooses, once for the cluster.
//!
//! A coordinator is named `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`: the
//! members' client endpoints and the key prefix under which this cluster's
//! catalog lives (`/filerep/<cluster id>` by default).

use crate::durable::catalog::CatalogStore;
use crate::error::{Error, Result};
use std::time::Duration;

#[cfg(feature = "etcd")]
pub mod etcd;

/// Most etcd endpoints in a coordinator's name.
pub const MAX_ENDPOINTS: usize = 16;

/// The lease's TTL, its renewal period and the margin by which an arbiter
/// stops ordering before its lease could expire: the leadership's rules,
/// in the core ([`crate::core::lease`]).
pub use crate::core::lease::{LEASE_TTL, RENEW_EVERY, SAFETY};
/// Pause between campaigns of a standby arbiter.
pub const CAMPAIGN_EVERY: Duration = Duration::from_millis(250);
/// One etcd call's time limit.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1500);

/// A parsed coordinator name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSpec {
    pub endpoints: Vec<String>,
    /// The key prefix, without a trailing `/`.
    pub prefix: String,
}

impl EtcdSpec {
    /// `etcd://HOST:PORT[,HOST:PORT…]/PREFIX` (PREFIX: `/`-separated
    /// names of letters, digits, `-`, `_`, `.`).
    pub fn parse(spec: &str) -> std::result::Result<EtcdSpec, String> {
        let rest = spec
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("coordinator {spec:?}: give etcd://HOST:PORT[,HOST:PORT...]/PREFIX"))?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let endpoints: Vec<String> = hosts.split(',').map(|h| h.trim().to_string()).collect();
        if endpoints.is_empty() || endpoints.len() > MAX_ENDPOINTS {
            return Err(format!("coordinator {spec:?}: 1 to {MAX_ENDPOINTS} endpoints"));
        }
        for e in &endpoints {
            let ok = e.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(format!("coordinator {spec:?}: endpoint {e:?} is not HOST:PORT"));
            }
        }
        let prefix = prefix.trim_end_matches('/');
        let good = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
        if prefix.is_empty() || prefix.len() > 200 || !prefix.chars().all(good) || prefix.contains("//") {
            return Err(format!(
                "coordinator {spec:?}: the key prefix {prefix:?} must be 1 to 200 characters of letters, digits, - _ . and /"
            ));
        }
        Ok(EtcdSpec { endpoints, prefix: format!("/{}", prefix.trim_start_matches('/')) })
    }

    /// The name back, as `filerep init` records it.
    pub fn name(&self) -> String {
        format!("etcd://{}{}", self.endpoints.join(","), self.prefix)
    }

    /// The key `rest` under this cluster's prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    /// The default prefix of a cluster.
    pub fn default_prefix(cluster_id: u64) -> String {
        format!("/filerep/{cluster_id}")
    }
}

/// The store of an arbiter at `me` (its control address, which the other
/// arbiters show as the leader) on the coordinator `spec`.
pub fn open(spec: &str, me: &str) -> Result<Box<dyn CatalogStore>> {
    let spec = EtcdSpec::parse(spec).map_err(Error::InvalidArgument)?;
    open_etcd(spec, me)
}

/// The catalog on the coordinator `spec`, read once (for the cluster
/// tools: no leadership is taken).
pub fn read(spec: &str) -> Result<crate::durable::catalog::Catalog> {
    let spec = EtcdSpec::parse(spec).map_err(Error::InvalidArgument)?;
    #[cfg(feature = "etcd")]
    return etcd::read(&spec);
    #[cfg(not(feature = "etcd"))]
    return Err(without_etcd(&spec));
}

/// Put a new cluster's catalog on the coordinator `spec` (`filerep init
/// --coordinator`); refused if a catalog is there already.
pub fn initialize(spec: &str, catalog: &crate::durable::catalog::Catalog) -> Result<()> {
    let spec = EtcdSpec::parse(spec).map_err(Error::InvalidArgument)?;
    #[cfg(feature = "etcd")]
    return etcd::initialize(&spec, catalog);
    #[cfg(not(feature = "etcd"))]
    {
        let _ = catalog;
        Err(without_etcd(&spec))
    }
}

#[cfg(not(feature = "etcd"))]
fn without_etcd(spec: &EtcdSpec) -> Error {
    Error::InvalidArgument(format!(
        "coordinator {}: this build of the library has no etcd client (built without the feature etcd)",
        spec.name()
    ))
}

#[cfg(feature = "etcd")]
fn open_etcd(spec: EtcdSpec, me: &str) -> Result<Box<dyn CatalogStore>> {
    Ok(Box::new(etcd::EtcdStore::open(spec, me)?))
}

#[cfg(not(feature = "etcd"))]
fn open_etcd(spec: EtcdSpec, _me: &str) -> Result<Box<dyn CatalogStore>> {
    Err(without_etcd(&spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_names_parse_and_bad_ones_say_why() {
        let s = EtcdSpec::parse("etcd://10.0.0.1:2379,h2:2379/filerep/7").expect("good");
        assert_eq!(s.endpoints, vec!["10.0.0.1:2379", "h2:2379"]);
        assert_eq!(s.prefix, "/filerep/7");
        assert_eq!(EtcdSpec::parse(&s.name()).expect("round trip"), s);
        for (bad, why) in [
            ("http://h:1/p", "etcd://"),
            ("etcd://h/p", "not HOST:PORT"),
            ("etcd://h:0/p", "not HOST:PORT"),
            ("etcd://h:1", "key prefix"),
            ("etcd://h:1/a b", "key prefix"),
            ("etcd://h:1/a//b", "key prefix"),
        ] {
            let e = EtcdSpec::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
