//! The catalog: every pair's roles, mode, status and generation, where its
//! segments listen, and the history of every change (Greenplum's
//! `gp_segment_configuration` plus its configuration history). Owned by
//! the arbiter; written atomically and durably before any order that
//! depends on it is sent, so a restarted arbiter never goes back in time.
//!
//! Format: one JSON document in a sealed file (`docs/catalog.md`): a
//! header with a format version and xxh3 checksums, so that a changed byte
//! anywhere is reported as damage, never read as a valid catalog. Every
//! store also writes the last good copy beside it (`catalog.json.good`),
//! which `filerep catalog restore` puts back.

use crate::core::pair::{describe, HistoryEntry};
use crate::core::pair::{Event, Outcome, Pair};
use crate::durable::files;
use crate::error::{Error, Result};
use crate::io::disk::{Disk, FsPath};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The catalog's format version (in its sealed header): 2 since the
/// header came; 1 was plain JSON.
pub const FORMAT_VERSION: u32 = 2;

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
    /// Its data directory per filespace, `NAME=DIRECTORY`, in the
    /// cluster's filespace order (empty in catalogs written by hand).
    #[serde(default)]
    pub filespaces: Vec<String>,
}

impl SegmentAddress {
    /// The port of `HOST:PORT`, if it has one.
    pub fn port_of(addr: &str) -> Option<u16> {
        addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
    }

    /// The control port: Greenplum's `port` column.
    pub fn port(&self) -> Option<u16> {
        Self::port_of(&self.control)
    }

    /// The replication port (where it listens as a mirror).
    pub fn replication_port(&self) -> Option<u16> {
        Self::port_of(&self.data)
    }

    /// The address the control endpoint binds (`HOST` of `HOST:PORT`).
    pub fn address(&self) -> &str {
        self.control.rsplit_once(':').map_or(self.control.as_str(), |(h, _)| h)
    }
}

/// A content without a mirror (yet): its primary serves alone, tracking
/// every change, until `filerep addmirrors` gives it one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSolo {
    pub content: u32,
    pub generation: u64,
    pub up: bool,
    pub address: SegmentAddress,
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

    /// Why a resync of this pair (`full`: a full one) cannot start now, as
    /// the arbiter answers `filerep recover` ([`crate::core::arbiter::recover_refusal`]).
    pub fn recover_refusal(&self, full: bool) -> Option<String> {
        crate::core::arbiter::recover_refusal(&self.pair, full)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub cluster_id: u64,
    pub block_size: u32,
    pub pairs: Vec<CatalogPair>,
    /// Contents without a mirror.
    #[serde(default)]
    pub unmirrored: Vec<CatalogSolo>,
    /// The last [`MAX_HISTORY`] changes. Stored in the history file beside
    /// the catalog ([`super::history`]), not in its document; sent whole to
    /// the tools that ask for the catalog.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// Changes ever recorded: the next one's number in the history file,
    /// and its commit point (0 in a catalog from before the history file,
    /// whose document holds its history).
    #[serde(default)]
    pub history_total: u64,
    /// The epoch of the last arbiter that opened this catalog file (0 in
    /// older ones): each arbiter takes the next, and its orders carry it.
    /// Unused on etcd, where the epoch is the leadership's.
    #[serde(default)]
    pub arbiter_epoch: u64,
}

pub use super::store::{CatalogStore, Committed, FileStore, Leadership, Snapshot};

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The command that restores the catalog at `path`: by its cluster
/// directory when it lives in one, else by the file.
pub fn restore_command(path: &Path) -> String {
    match path.parent().filter(|d| d.join("cluster.json").exists()) {
        Some(dir) => format!("restore it with: filerep catalog restore --cluster-dir {}", dir.display()),
        None => format!("restore it with: filerep catalog restore --catalog {}", path.display()),
    }
}

impl Catalog {
    /// Read and check a catalog file. A file that cannot be read is an I/O
    /// error; one whose checksums, JSON or rules do not hold is
    /// [`Error::Damaged`], with the command that restores it.
    pub fn load(path: &Path) -> Result<Catalog> {
        match files::on_host(path)? {
            Some((disk, p)) => Self::load_from(&disk, &p, path),
            None => Err(Error::io(format!("reading catalog {}", path.display()), std::io::ErrorKind::NotFound.into())),
        }
    }

    /// [`Catalog::load`] through any disk (`shown` names it in messages).
    pub fn load_from(disk: &dyn Disk, path: &FsPath, shown: &Path) -> Result<Catalog> {
        let bytes = files::read(disk, path)
            .map_err(|e| Error::io(format!("reading catalog {}", shown.display()), std::io::Error::other(e)))?
            .ok_or_else(|| {
                Error::io(format!("reading catalog {}", shown.display()), std::io::ErrorKind::NotFound.into())
            })?;
        let mut cat = Catalog::from_bytes(&bytes).map_err(|reason| {
            tracing::info!(path = %shown.display(), %reason, "the catalog is damaged");
            let restore = match reason.contains("plain JSON") {
                true => format!(
                    "if it was written by hand on purpose, seal it with: filerep catalog seal --catalog {}; else {}",
                    shown.display(),
                    restore_command(shown)
                ),
                false => restore_command(shown),
            };
            Error::Damaged { what: "catalog", path: shown.display().to_string(), reason, restore }
        })?;
        cat.read_history(disk, path, shown);
        Ok(cat)
    }

    /// The history from the history file beside the catalog (a catalog
    /// from before that file keeps the history its document holds). The
    /// history only informs: a damaged file is said in the log, and its
    /// readable entries kept.
    fn read_history(&mut self, disk: &dyn Disk, path: &FsPath, shown: &Path) {
        if !self.history.is_empty() || self.history_total == 0 {
            return; // From before the history file: its document holds it.
        }
        let file = match super::history::path_of(path) {
            Ok(f) => f,
            Err(e) => return tracing::warn!(catalog = %shown.display(), error = %e, "no history file name"),
        };
        match super::history::load(disk, &file, self.history_total) {
            Ok(h) => self.history = h,
            Err(reason) => tracing::warn!(
                catalog = %shown.display(),
                %reason,
                "the catalog's history file cannot be read: the catalog goes on without its history"
            ),
        }
    }

    /// A catalog from a sealed file's bytes: the header and checksums,
    /// the JSON, then [`Catalog::check`]. `Err`: what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Catalog, String> {
        let sealed =
            super::sealed::open(super::sealed::Kind::Catalog, FORMAT_VERSION, bytes).map_err(|e| e.to_string())?;
        Catalog::from_json(sealed.body)
    }

    /// A catalog from its JSON alone (a hand-written one, to be sealed), checked.
    pub fn from_json(json: &[u8]) -> std::result::Result<Catalog, String> {
        let mut c: Catalog = serde_json::from_slice(json).map_err(|e| format!("its JSON does not read: {e}"))?;
        c.check()?;
        if c.history_total == 0 {
            // From before the history file: its entries are the first ones.
            c.history_total = c.history.len() as u64;
        }
        Ok(c)
    }

    /// The sealed bytes of this catalog's document (what [`Catalog::store`]
    /// writes beside its history).
    pub fn to_sealed(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec_pretty(&self.document()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(super::sealed::seal(super::sealed::Kind::Catalog, FORMAT_VERSION, &json))
    }

    /// The rules every catalog keeps.
    pub fn check(&self) -> std::result::Result<(), String> {
        crate::config::check_block_size(self.block_size).map_err(|e| e.to_string())?;
        let mut dbids = std::collections::BTreeSet::new();
        let mut contents = std::collections::BTreeSet::new();
        for s in &self.unmirrored {
            if !contents.insert(s.content) {
                return Err(format!("content {} appears twice", s.content));
            }
            if !dbids.insert(s.address.dbid) {
                return Err(format!("dbid {} appears twice", s.address.dbid));
            }
            if s.generation == 0 {
                return Err(format!("content {}: generation 0", s.content));
            }
        }
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
            }
        }
        // Two segments never listen on one address.
        let mut endpoints: std::collections::BTreeMap<String, String> = Default::default();
        for (_, a) in self.addresses() {
            for (what, addr) in [("control", &a.control), ("data", &a.data)] {
                let port = SegmentAddress::port_of(addr);
                if port.is_none_or(|p| p == 0) || addr.rsplit_once(':').is_none_or(|(h, _)| h.is_empty()) {
                    return Err(format!("dbid {}: {what} address {addr:?} is not HOST:PORT", a.dbid));
                }
                let key =
                    addr.parse::<std::net::SocketAddr>().map_or_else(|_| addr.to_ascii_lowercase(), |s| s.to_string());
                let who = format!("the {what} address of dbid {}", a.dbid);
                if let Some(first) = endpoints.insert(key, who.clone()) {
                    return Err(format!("{addr} is {who} and also {first}: two segments cannot listen on one address"));
                }
            }
        }
        Ok(())
    }

    /// Replace the file, sealed, atomically and durably, and its last good
    /// copy beside it (`FILE.good`, written first: see
    /// [`super::sealed::store_with_copy`]).
    pub fn store(&self, path: &Path) -> Result<()> {
        match files::on_host(path)? {
            Some((disk, p)) => self.store_to(&disk, &p, path),
            None => Err(Error::io(format!("writing catalog {}", path.display()), std::io::ErrorKind::NotFound.into())),
        }
    }

    /// [`Catalog::store`] through any disk.
    pub fn store_to(&self, disk: &dyn Disk, path: &FsPath, shown: &Path) -> Result<()> {
        self.store_after(disk, path, shown, None).map(|_| ())
    }

    /// The history's new entries appended to its file and synced, then the
    /// document (its commit point, `history_total`), sealed, with its last
    /// good copy. `tail`: where the previous store left the history file;
    /// returned: where this one left it (`None` if it could not be written:
    /// the history only informs, so that is said and the catalog stored).
    pub fn store_after(
        &self,
        disk: &dyn Disk,
        path: &FsPath,
        shown: &Path,
        tail: Option<super::history::Tail>,
    ) -> Result<Option<super::history::Tail>> {
        let failed = |e: std::io::Error| Error::io(format!("writing catalog {}", shown.display()), e);
        let tail = super::history::path_of(path)
            .and_then(|file| super::history::store(disk, &file, &self.history, self.history_total, tail))
            .map_err(|e| {
                tracing::warn!(catalog = %shown.display(), error = %e,
                    "the catalog's history file cannot be written: the catalog is stored without its newest history")
            })
            .ok();
        let json = serde_json::to_vec_pretty(&self.document()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        super::sealed::store_with_copy_on(disk, path, super::sealed::Kind::Catalog, FORMAT_VERSION, &json)
            .map_err(failed)?;
        Ok(tail)
    }

    /// The catalog's document: everything but the history (in its own file).
    fn document(&self) -> Catalog {
        Catalog {
            cluster_id: self.cluster_id,
            block_size: self.block_size,
            pairs: self.pairs.clone(),
            unmirrored: self.unmirrored.clone(),
            history: Vec::new(),
            history_total: self.history_total,
            arbiter_epoch: self.arbiter_epoch,
        }
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
            self.push_history(content, before, after, outcome.reason.clone());
        }
        Some(outcome)
    }

    /// The content a dbid belongs to.
    pub fn content_of(&self, dbid: u32) -> Option<u32> {
        self.pairs
            .iter()
            .find(|p| p.pair.segments.iter().any(|s| s.dbid == dbid))
            .map(|p| p.pair.content)
            .or_else(|| self.unmirrored.iter().find(|s| s.address.dbid == dbid).map(|s| s.content))
    }

    /// Record a change that is not a pair transition (a content without a
    /// mirror up or down, mirrors added) in the history.
    pub fn note(&mut self, content: u32, before: String, after: String, reason: String) {
        tracing::warn!(content, %before, %after, %reason, "catalog change");
        self.push_history(content, before, after, reason);
    }

    /// Append to the history, dropping the oldest past [`MAX_HISTORY`].
    fn push_history(&mut self, content: u32, before: String, after: String, reason: String) {
        self.history.push(HistoryEntry { unix_ms: unix_ms(), content, before, after, reason });
        self.history_total += 1;
        if self.history.len() > MAX_HISTORY {
            let excess = self.history.len() - MAX_HISTORY;
            self.history.drain(..excess);
        }
    }

    /// Every segment's address, with its content (pairs and unmirrored).
    pub fn addresses(&self) -> impl Iterator<Item = (u32, &SegmentAddress)> {
        self.pairs
            .iter()
            .flat_map(|p| p.addresses.iter().map(move |a| (p.pair.content, a)))
            .chain(self.unmirrored.iter().map(|s| (s.content, &s.address)))
    }

    /// Give unmirrored `content` a mirror: the pair starts not in sync
    /// (`n`, the mirror down until it answers), at the content's generation;
    /// only a full resync can make it synchronized.
    pub fn add_mirror(
        &mut self,
        content: u32,
        mirror: SegmentAddress,
        primary_data: Option<String>,
    ) -> std::result::Result<(), String> {
        let i = self
            .unmirrored
            .iter()
            .position(|s| s.content == content)
            .ok_or_else(|| format!("content {content} has a mirror already or does not exist"))?;
        if self.addresses().any(|(_, a)| a.dbid == mirror.dbid) {
            return Err(format!("dbid {} is taken", mirror.dbid));
        }
        if !self.unmirrored[i].up {
            return Err(format!("content {content}: its primary is down; start it first"));
        }
        let mut solo = self.unmirrored.remove(i);
        if let Some(d) = primary_data {
            solo.address.data = d;
        }
        let mut pair = Pair::new(content, solo.address.dbid, mirror.dbid);
        pair.generation = solo.generation;
        pair.mode = crate::core::pair::PairMode::NotInSync;
        pair.segments[0].up = solo.up;
        pair.segments[1].up = false;
        let after = describe(&pair);
        let dbid = mirror.dbid;
        let before = format!("gen {} primary {} without a mirror", solo.generation, solo.address.dbid);
        self.pairs.push(CatalogPair { pair, addresses: [solo.address, mirror] });
        self.pairs.sort_by_key(|p| p.pair.content);
        self.note(content, before, after, format!("mirror {dbid} added: a full resync builds it (n -> r -> s)"));
        Ok(())
    }

    /// A new catalog of one pair per `(content, primary, mirror)`.
    pub fn new(cluster_id: u64, block_size: u32, pairs: Vec<(u32, SegmentAddress, SegmentAddress)>) -> Catalog {
        let pairs = pairs
            .into_iter()
            .map(|(content, p, m)| CatalogPair { pair: Pair::new(content, p.dbid, m.dbid), addresses: [p, m] })
            .collect();
        Catalog {
            cluster_id,
            block_size,
            pairs,
            unmirrored: Vec::new(),
            history: Vec::new(),
            history_total: 0,
            arbiter_epoch: 0,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A segment address on loopback, for tests.
    pub(crate) fn addr(dbid: u32) -> SegmentAddress {
        SegmentAddress {
            dbid,
            host: "h".into(),
            control: format!("127.0.0.1:{}", 7000 + dbid),
            data: format!("127.0.0.1:{}", 8000 + dbid),
            filespaces: Vec::new(),
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

    /// The history lives in its own file: a store appends its new entries
    /// there, and the document holds none of them.
    #[test]
    fn the_history_is_appended_beside_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let history = dir.path().join("catalog.json.history");
        let mut c = sample();
        c.store(&path).unwrap();
        let document = std::fs::metadata(&path).unwrap().len();
        let mut sizes = vec![std::fs::metadata(&history).unwrap().len()];
        for i in 0..20 {
            c.note(1, format!("before {i}"), format!("after {i}"), format!("a note {i}"));
            c.store(&path).unwrap();
            sizes.push(std::fs::metadata(&history).unwrap().len());
        }
        assert!(sizes.windows(2).all(|w| w[1] > w[0]), "each store appends: {sizes:?}");
        let doc_len = std::fs::metadata(&path).unwrap().len();
        assert!(doc_len < document + 16, "the document does not grow with the history: {document} -> {doc_len}");
        assert_eq!(Catalog::load(&path).unwrap(), c);
        assert_eq!(c.history_total, 21);
    }

    /// A catalog from before the history file (its history in its document)
    /// reads with that history, and the next store moves it to the file.
    #[test]
    fn a_catalog_with_its_history_inside_is_read_and_moved_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let c = sample();
        let mut old = serde_json::to_value(&c).unwrap();
        old.as_object_mut().unwrap().remove("history_total");
        let body = serde_json::to_vec_pretty(&old).unwrap();
        std::fs::write(&path, super::super::sealed::seal(super::super::sealed::Kind::Catalog, FORMAT_VERSION, &body))
            .unwrap();
        let read = Catalog::load(&path).unwrap();
        assert_eq!((read.history.len(), read.history_total), (1, 1));
        assert_eq!(read, c);
        read.store(&path).unwrap();
        let document = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        assert!(document.contains("\"history_total\": 1") && !document.contains("failed its probe"), "{document}");
        assert_eq!(Catalog::load(&path).unwrap(), c);
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
        c.pairs[0].addresses[0].control = c.pairs[0].addresses[1].data.clone();
        assert!(c.check().unwrap_err().contains("two segments cannot listen on one address"));
        c.pairs[0].addresses[0].control = "127.0.0.1:1".into();
        c.block_size = 1000;
        assert!(c.check().is_err());
    }

    /// A catalog with a pair, a content without a mirror and history.
    fn sample() -> Catalog {
        let mut c = Catalog::new(0xfa, 8192, vec![(0, addr(2), addr(3))]);
        c.unmirrored.push(CatalogSolo { content: 1, generation: 4, up: true, address: addr(4) });
        c.apply(0, &Event::ProbeFailed { dbid: 3 });
        c
    }

    #[test]
    fn every_single_byte_change_to_a_catalog_is_detected() {
        let c = sample();
        let bytes = c.to_sealed().unwrap();
        assert_eq!(Catalog::from_bytes(&bytes).unwrap(), c.document(), "the document: all but the history");
        let mut damaged = bytes.clone();
        let mut seen = 0u64;
        for at in 0..bytes.len() {
            for v in 0..=255u8 {
                if v != bytes[at] {
                    damaged[at] = v;
                    assert!(
                        Catalog::from_bytes(&damaged).is_err(),
                        "byte {at} set to {v:#04x} was read as a valid catalog"
                    );
                    seen += 1;
                }
            }
            damaged[at] = bytes[at];
        }
        assert_eq!(seen, bytes.len() as u64 * 255);
        // Truncated at every length, and one byte too many.
        for n in 0..bytes.len() {
            assert!(Catalog::from_bytes(&bytes[..n]).is_err(), "truncated to {n} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(b'\n');
        assert!(Catalog::from_bytes(&longer).is_err());
    }

    #[test]
    fn damage_is_said_as_damage_with_the_command_that_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let c = sample();
        c.store(&path).unwrap();
        let good = crate::durable::sealed::good_copy(&path);
        assert_eq!(std::fs::read(&good).unwrap(), std::fs::read(&path).unwrap(), "the last good copy is beside it");
        // A digit of a port flipped: 7002 -> 7003, dbid 2's control port is now dbid 3's.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(4).position(|w| w == b"7002").unwrap();
        bytes[at + 3] = b'3';
        std::fs::write(&path, &bytes).unwrap();
        let e = Catalog::load(&path).unwrap_err();
        assert!(matches!(e, Error::Damaged { .. }), "{e}");
        let m = e.to_string();
        assert!(m.starts_with("the catalog is damaged: ") && m.contains("body checksum"), "{m}");
        assert!(m.contains(&format!("filerep catalog restore --catalog {}", path.display())), "{m}");
        // Sealed with the flip (a writer's mistake, not a disk's): the rules still catch it.
        let mut wrong = c.clone();
        wrong.pairs[0].addresses[0].control = wrong.pairs[0].addresses[1].control.clone();
        let json = serde_json::to_vec(&wrong).unwrap();
        std::fs::write(
            &path,
            crate::durable::sealed::seal(crate::durable::sealed::Kind::Catalog, FORMAT_VERSION, &json),
        )
        .unwrap();
        let m = Catalog::load(&path).unwrap_err().to_string();
        assert!(m.contains("two segments cannot listen on one address"), "{m}");
        // Plain JSON (by hand, or an older filerep): said so, with the way to seal it.
        std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
        let m = Catalog::load(&path).unwrap_err().to_string();
        assert!(m.contains("plain JSON") && m.contains("filerep catalog seal"), "{m}");
        // Truncated.
        std::fs::write(&path, &bytes[..100]).unwrap();
        assert!(Catalog::load(&path).unwrap_err().to_string().contains("the catalog is damaged"));
    }

    #[test]
    fn a_content_without_a_mirror_gets_one_not_in_sync() {
        let mut c = Catalog::new(7, 8192, vec![]);
        c.unmirrored.push(CatalogSolo { content: 4, generation: 3, up: true, address: addr(6) });
        c.check().unwrap();
        assert_eq!(c.content_of(6), Some(4));
        assert!(c.add_mirror(4, addr(6), None).unwrap_err().contains("taken"));
        assert!(c.add_mirror(5, addr(9), None).unwrap_err().contains("content 5"));
        c.unmirrored[0].up = false;
        assert!(c.add_mirror(4, addr(9), None).unwrap_err().contains("down"));
        c.unmirrored[0].up = true;
        c.add_mirror(4, addr(9), Some("127.0.0.1:9999".into())).unwrap();
        assert!(c.unmirrored.is_empty());
        let p = c.pair(4).unwrap();
        assert_eq!((p.pair.mode, p.pair.generation), (crate::core::pair::PairMode::NotInSync, 3));
        assert_eq!((p.pair.segments[0].up, p.pair.segments[1].up), (true, false));
        assert_eq!(p.addresses[0].data, "127.0.0.1:9999", "the primary's new replication port");
        assert!(c.history.last().unwrap().reason.contains("mirror 9 added"));
        c.check().unwrap();
    }
}
