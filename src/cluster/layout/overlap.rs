//! Directories by machine, for the one question placement asks of every
//! new directory: is it the same as, inside, or around one already taken
//! on that machine? Each answer costs O(depth × log n), so checking n
//! directories is O(n log n), not O(n²).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

/// How a directory stands to one already taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    Same,
    Inside,
    Contains,
}

impl Relation {
    pub fn words(self) -> &'static str {
        match self {
            Relation::Same => "is the same as",
            Relation::Inside => "is inside",
            Relation::Contains => "contains",
        }
    }
}

/// Taken directories, keyed by machine and path (compared component by
/// component, so a directory's descendants sort right after it).
pub struct DirIndex<T> {
    map: BTreeMap<(String, PathBuf), T>,
}

impl<T> Default for DirIndex<T> {
    fn default() -> Self {
        DirIndex { map: BTreeMap::new() }
    }
}

impl<T> DirIndex<T> {
    /// The first taken directory `path` overlaps on `machine`: the same
    /// one, else the nearest one it is inside, else the first one inside it.
    pub fn overlap(&self, machine: &str, path: &Path) -> Option<(Relation, &Path, &T)> {
        let key = (machine.to_string(), path.to_path_buf());
        if let Some((k, v)) = self.map.get_key_value(&key) {
            return Some((Relation::Same, &k.1, v));
        }
        for a in path.ancestors().skip(1) {
            if let Some((k, v)) = self.map.get_key_value(&(key.0.clone(), a.to_path_buf())) {
                return Some((Relation::Inside, &k.1, v));
            }
        }
        let ((m, p), v) = self.map.range((Bound::Excluded(key), Bound::Unbounded)).next()?;
        (m == machine && p.starts_with(path)).then_some((Relation::Contains, p.as_path(), v))
    }

    /// Take `path` on `machine` (the first owner stays).
    pub fn insert(&mut self, machine: &str, path: PathBuf, value: T) {
        self.map.entry((machine.to_string(), path)).or_insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inside_and_containing_per_machine() {
        let mut ix = DirIndex::default();
        ix.insert("m1", "/data/primary/gpseg0".into(), 0);
        ix.insert("m1", "/data/primary/gpseg1".into(), 1);
        ix.insert("m2", "/fast".into(), 2);
        let rel = |m: &str, p: &str| ix.overlap(m, Path::new(p)).map(|(r, at, v)| (r, at.to_path_buf(), *v));
        assert_eq!(rel("m1", "/data/primary/gpseg0"), Some((Relation::Same, "/data/primary/gpseg0".into(), 0)));
        assert_eq!(rel("m1", "/data/primary/gpseg1/m"), Some((Relation::Inside, "/data/primary/gpseg1".into(), 1)));
        assert_eq!(rel("m1", "/data"), Some((Relation::Contains, "/data/primary/gpseg0".into(), 0)));
        assert_eq!(rel("m1", "/"), Some((Relation::Contains, "/data/primary/gpseg0".into(), 0)));
        assert_eq!(rel("m1", "/data/primary/gpseg"), None, "a name that is a prefix is not a parent");
        assert_eq!(rel("m1", "/data/primary/gpseg00"), None);
        assert_eq!(rel("m1", "/fast/x"), None, "another machine's directory");
        assert_eq!(rel("m2", "/fast/x").map(|r| r.0), Some(Relation::Inside));
        assert_eq!(rel("m0", "/"), None);
        // The first owner stays.
        ix.insert("m1", "/data/primary/gpseg0".into(), 9);
        assert_eq!(ix.overlap("m1", Path::new("/data/primary/gpseg0")).map(|r| *r.2), Some(0));
    }
}
