//! Where the catalog is kept ([`CatalogStore`]): the arbiter reads it
//! once and commits every change before any order that depends on it. The
//! file ([`FileStore`]: one arbiter, a local lock) or etcd
//! ([`crate::cluster::coordinator`]: several arbiters, one acting, every
//! commit checked against the revisions read and the leadership).

use super::catalog::Catalog;
use crate::durable::files;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The catalog as its store holds it, and what the store needs to commit
/// the next one over it: per key, the revision it was read at and a hash
/// of its value (a replicated store's compare-and-swap; empty for the
/// file, which has one writer), and how much of the history is stored.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub catalog: Catalog,
    /// Key → (revision, xxh3 of the value) as read or last committed.
    pub stored: std::collections::BTreeMap<String, (i64, u64)>,
    /// `history_total` as stored: entries past it are new.
    pub history_stored: u64,
}

impl Snapshot {
    /// A snapshot of a catalog that has no revisions (the file's).
    pub fn plain(catalog: Catalog) -> Snapshot {
        let history_stored = catalog.history_total;
        Snapshot { catalog, stored: Default::default(), history_stored }
    }
}

/// What a commit did.
#[derive(Debug)]
pub enum Committed {
    /// Stored (the snapshot now records it).
    Done,
    /// Something it would replace changed in the store since it was read
    /// (another arbiter committed): nothing was written. Read it again and
    /// apply the change again.
    Conflict(String),
}

pub use crate::core::lease::Leadership;

/// Where the catalog is kept: the arbiter reads it once and commits every
/// change before any order that depends on it. The file (one arbiter, a
/// local lock) or etcd (several arbiters, one acting, every commit checked
/// against both the revisions read and the acting arbiter's leadership).
pub trait CatalogStore: Send + Sync {
    fn load(&self) -> Result<Snapshot>;
    /// Commit `snap.catalog`: every key whose value differs from what was
    /// read is replaced, each only if it has not changed since (per pair);
    /// the history's new entries go with their pair. Done: `snap` records
    /// what is now stored.
    fn commit(&self, snap: &mut Snapshot) -> Result<Committed>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// Whether this arbiter acts now.
    fn leadership(&self) -> Leadership;
    /// A segment obeyed `epoch`, above this arbiter's: on the file
    /// (one arbiter by its lock) that is an epoch from before a catalog
    /// restore, and the arbiter's is raised above it; on a coordinator it
    /// means a newer leader, and changes nothing here.
    fn raise_epoch(&self, _seen: u64) -> Result<()> {
        Ok(())
    }
}

/// The catalog in one JSON file, replaced atomically, with an exclusive
/// lock (`flock` on `<file>.lock`) held as long as this value lives: a
/// second writer (another arbiter, an offline tool) is refused.
pub struct FileStore {
    path: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// Where the history file ended after the last store (this store is
    /// its only writer): the next store appends without reading it.
    history_tail: std::sync::Mutex<Option<super::history::Tail>>,
    /// The arbiter's epoch ([`FileStore::for_arbiter`]; 0 for tools).
    epoch: std::sync::atomic::AtomicU64,
}

impl FileStore {
    pub fn lock(path: &Path) -> Result<FileStore> {
        let lock_path = path.with_extension("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening the catalog lock {}", lock_path.display()), e))?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            Error::InvalidArgument(format!(
                "catalog {} is in use by another writer (an arbiter or an operator tool holds {}): {e}; stop it first",
                path.display(),
                lock_path.display()
            ))
        })?;
        Ok(FileStore {
            path: path.to_path_buf(),
            _lock: lock,
            history_tail: std::sync::Mutex::new(None),
            epoch: Default::default(),
        })
    }

    /// The store of an arbiter: locked, and its epoch one above the last
    /// arbiter's on this catalog, stored before it gives any order.
    pub fn for_arbiter(path: &Path) -> Result<FileStore> {
        let store = FileStore::lock(path)?;
        let mut cat = store.load()?.catalog;
        let next = cat.arbiter_epoch.saturating_add(1);
        store.set_epoch(&mut cat, next)?;
        Ok(store)
    }

    fn set_epoch(&self, cat: &mut Catalog, epoch: u64) -> Result<()> {
        cat.arbiter_epoch = epoch;
        self.write(cat)?;
        self.epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(catalog = %self.path.display(), epoch, "arbiter epoch");
        Ok(())
    }

    fn write(&self, c: &Catalog) -> Result<()> {
        let mut tail = self.history_tail.lock().unwrap_or_else(|e| e.into_inner());
        let stored = match files::on_host(&self.path)? {
            Some((disk, p)) => c.store_after(&disk, &p, &self.path, *tail),
            None => {
                Err(Error::io(format!("writing catalog {}", self.path.display()), std::io::ErrorKind::NotFound.into()))
            }
        };
        // A failed store leaves the file as it may be: read it next time.
        *tail = stored.as_ref().ok().copied().flatten();
        stored.map(|_| ())
    }
}

impl CatalogStore for FileStore {
    fn load(&self) -> Result<Snapshot> {
        let mut cat = Catalog::load(&self.path)?;
        // The epoch is this store's: a catalog put back by hand under a
        // running arbiter does not lower it.
        cat.arbiter_epoch = cat.arbiter_epoch.max(self.epoch.load(std::sync::atomic::Ordering::SeqCst));
        Ok(Snapshot::plain(cat))
    }
    fn commit(&self, snap: &mut Snapshot) -> Result<Committed> {
        let c = &mut snap.catalog;
        c.arbiter_epoch = c.arbiter_epoch.max(self.epoch.load(std::sync::atomic::Ordering::SeqCst));
        self.write(c)?;
        snap.history_stored = c.history_total;
        Ok(Committed::Done)
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn leadership(&self) -> Leadership {
        Leadership::Acting { epoch: self.epoch.load(std::sync::atomic::Ordering::SeqCst) }
    }
    fn raise_epoch(&self, seen: u64) -> Result<()> {
        if seen <= self.epoch.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let mut cat = self.load()?.catalog;
        tracing::warn!(
            seen,
            "a segment obeyed an epoch above this arbiter's (a catalog restored from an older copy?): raising it"
        );
        self.set_epoch(&mut cat, seen.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::catalog::tests::addr;

    /// Each arbiter on a catalog file takes the next epoch, stored before it
    /// orders; one that finds a segment above it (after a catalog put back
    /// from an older copy) raises its own above that, and no higher.
    #[test]
    fn each_arbiter_on_a_file_takes_the_next_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        Catalog::new(7, 8192, vec![(0, addr(2), addr(3))]).store(&path).unwrap();
        let epoch = |s: &FileStore| match s.leadership() {
            Leadership::Acting { epoch } => epoch,
            other => panic!("a file store always acts: {other:?}"),
        };
        let first = FileStore::for_arbiter(&path).unwrap();
        assert_eq!(epoch(&first), 1);
        drop(first);
        let second = FileStore::for_arbiter(&path).unwrap();
        assert_eq!((epoch(&second), Catalog::load(&path).unwrap().arbiter_epoch), (2, 2));
        second.raise_epoch(2).unwrap();
        assert_eq!(epoch(&second), 2, "its own epoch seen: nothing to raise");
        second.raise_epoch(9).unwrap();
        assert_eq!((epoch(&second), Catalog::load(&path).unwrap().arbiter_epoch), (10, 10));
        // A commit keeps the epoch even from a snapshot that lacks it.
        let mut snap = Snapshot::plain(Catalog::new(7, 8192, vec![(0, addr(2), addr(3))]));
        assert!(matches!(second.commit(&mut snap).unwrap(), Committed::Done));
        assert_eq!(Catalog::load(&path).unwrap().arbiter_epoch, 10);
    }

    #[test]
    fn one_writer_per_catalog_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        Catalog::new(7, 8192, vec![(0, addr(2), addr(3))]).store(&path).unwrap();
        let first = FileStore::lock(&path).unwrap();
        let e = FileStore::lock(&path).err().expect("a second writer is refused").to_string();
        assert!(e.contains("in use") && e.contains("catalog.json"), "{e}");
        assert_eq!(first.load().unwrap().catalog.pairs.len(), 1);
        drop(first);
        FileStore::lock(&path).expect("free again once the first is gone");
    }
}
