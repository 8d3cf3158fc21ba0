//! The catalog: every pair's roles, mode, status and generation, where its
//! segments listen, and the history of every change (Greenplum's
//! `gp_segment_configuration` plus its configuration history). Owned by
//! the arbiter; written atomically and durably before any order that
//! depends on it is sent, so a restarted arbiter never goes back in time.
//!
//! Format: one JSON document (`docs/catalog.md`).

use crate::arbiter::HistoryEntry;
use crate::core::pair::{Event, Outcome, Pair};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Most history entries kept (the oldest are dropped first).
pub const MAX_HISTORY: usize = 10_000;

/// Where one segment listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentAddress {
    pub dbid: u32,
    pub host: String,
    /// The control endpoint (probes and orders).
    pub control: String,
    /// The replication endpoint (the stream, when it is the mirror).
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogPair {
    pub pair: Pair,
    pub addresses: [SegmentAddress; 2],
}

impl CatalogPair {
    pub fn address(&self, dbid: u32) -> Option<&SegmentAddress> {
        self.addresses.iter().find(|a| a.dbid == dbid)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub cluster_id: u64,
    pub block_size: u32,
    pub pairs: Vec<CatalogPair>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A pair as one line: generation, mode, and each segment's dbid, role, status.
pub fn describe(p: &Pair) -> String {
    let seg =
        |s: &crate::core::pair::Segment| format!("{}:{}{}", s.dbid, s.role.letter(), if s.up { 'u' } else { 'd' });
    format!(
        "gen {} mode {} {} {}{}",
        p.generation,
        p.mode.letter(),
        seg(&p.segments[0]),
        seg(&p.segments[1]),
        if p.down { " (segment down)" } else { "" }
    )
}

impl Catalog {
    /// Read and check a catalog file; every problem names the file and what is wrong.
    pub fn load(path: &Path) -> Result<Catalog> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading catalog {}", path.display()), e))?;
        let c: Catalog = serde_json::from_slice(&bytes)
            .map_err(|e| Error::InvalidArgument(format!("catalog {}: {e}", path.display())))?;
        c.check().map_err(|e| Error::InvalidArgument(format!("catalog {}: {e}", path.display())))?;
        Ok(c)
    }

    /// The rules every catalog keeps.
    pub fn check(&self) -> std::result::Result<(), String> {
        crate::config::check_block_size(self.block_size).map_err(|e| e.to_string())?;
        let mut dbids = std::collections::BTreeSet::new();
        let mut contents = std::collections::BTreeSet::new();
        for p in &self.pairs {
            if !contents.insert(p.pair.content) {
                return Err(format!("content {} appears twice", p.pair.content));
            }
            p.pair.check().map_err(|e| format!("content {}: {e}", p.pair.content))?;
            for (s, a) in p.pair.segments.iter().zip(&p.addresses) {
                if s.dbid != a.dbid {
                    return Err(format!(
                        "content {}: segment {} has the addresses of {}",
                        p.pair.content, s.dbid, a.dbid
                    ));
                }
                if !dbids.insert(s.dbid) {
                    return Err(format!("dbid {} appears twice", s.dbid));
                }
                for (what, addr) in [("control", &a.control), ("data", &a.data)] {
                    if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
                        return Err(format!("dbid {}: {what} address {addr:?} is not HOST:PORT", a.dbid));
                    }
                }
            }
        }
        Ok(())
    }

    /// Replace the file atomically and durably (temporary file, fsync,
    /// rename, fsync of the directory).
    pub fn store(&self, path: &Path) -> Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = path.with_extension("tmp");
        let io = |what: &str, e| Error::io(format!("{what} catalog {}", path.display()), e);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("writing", e))?;
        std::io::Write::write_all(&mut f, &bytes).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("replacing", e))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing the directory of", e))
    }

    pub fn pair(&self, content: u32) -> Option<&CatalogPair> {
        self.pairs.iter().find(|p| p.pair.content == content)
    }

    /// Apply an event to a pair and record the change, if any, in the history.
    pub fn apply(&mut self, content: u32, event: &Event) -> Option<Outcome> {
        let p = self.pairs.iter_mut().find(|p| p.pair.content == content)?;
        let before = describe(&p.pair);
        let outcome = p.pair.apply(event);
        if outcome.changed {
            let after = describe(&p.pair);
            tracing::warn!(content, %before, %after, reason = %outcome.reason, "pair transition");
            self.history.push(HistoryEntry {
                unix_ms: unix_ms(),
                content,
                before,
                after,
                reason: outcome.reason.clone(),
            });
            if self.history.len() > MAX_HISTORY {
                let excess = self.history.len() - MAX_HISTORY;
                self.history.drain(..excess);
            }
        }
        Some(outcome)
    }

    /// The content a dbid belongs to.
    pub fn content_of(&self, dbid: u32) -> Option<u32> {
        self.pairs.iter().find(|p| p.pair.segments.iter().any(|s| s.dbid == dbid)).map(|p| p.pair.content)
    }

    /// A new catalog of one pair per `(content, primary, mirror)`.
    pub fn new(cluster_id: u64, block_size: u32, pairs: Vec<(u32, SegmentAddress, SegmentAddress)>) -> Catalog {
        let pairs = pairs
            .into_iter()
            .map(|(content, p, m)| CatalogPair { pair: Pair::new(content, p.dbid, m.dbid), addresses: [p, m] })
            .collect();
        Catalog { cluster_id, block_size, pairs, history: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(dbid: u32) -> SegmentAddress {
        SegmentAddress {
            dbid,
            host: "h".into(),
            control: format!("127.0.0.1:{}", 7000 + dbid),
            data: format!("127.0.0.1:{}", 8000 + dbid),
        }
    }

    #[test]
    fn a_catalog_round_trips_and_records_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let mut c = Catalog::new(7, 8192, vec![(0, addr(2), addr(3))]);
        c.store(&path).unwrap();
        assert_eq!(Catalog::load(&path).unwrap(), c);
        let o = c.apply(0, &Event::ProbeFailed { dbid: 2 }).unwrap();
        assert!(o.changed);
        assert_eq!(c.pairs[0].pair.generation, 2, "a promotion increments the generation");
        assert_eq!(c.history.len(), 1);
        assert!(c.history[0].before.contains("gen 1") && c.history[0].after.contains("gen 2"));
        c.store(&path).unwrap();
        assert_eq!(Catalog::load(&path).unwrap().history.len(), 1);
    }

    #[test]
    fn bad_catalogs_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let e = Catalog::load(&path).unwrap_err().to_string();
        assert!(e.contains("catalog.json"), "{e}");
        let mut c = Catalog::new(7, 8192, vec![(0, addr(2), addr(3)), (1, addr(2), addr(5))]);
        assert!(c.check().unwrap_err().contains("dbid 2 appears twice"));
        c.pairs.pop();
        c.pairs[0].addresses[0].control = "nowhere".into();
        assert!(c.check().unwrap_err().contains("not HOST:PORT"));
        c.pairs[0].addresses[0].control = "127.0.0.1:1".into();
        c.block_size = 1000;
        assert!(c.check().is_err());
    }
}
