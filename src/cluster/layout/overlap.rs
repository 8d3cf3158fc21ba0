//! Directories by machine, for the one question placement asks of every
//! new directory: is it the same as, inside, or around one already taken
//! on that machine? Each answer costs O(depth × log n) byte comparisons,
//! so checking n directories is O(n log n), not O(n²).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
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

/// Taken directories, per machine. A path's key is its bytes with each
/// `/` as a NUL (which no path holds): byte order is then component order,
/// a directory's descendants sort right after it, and every comparison is
/// one `memcmp`.
pub struct DirIndex<T> {
    machines: HashMap<String, BTreeMap<Vec<u8>, (PathBuf, T)>>,
}

impl<T> Default for DirIndex<T> {
    fn default() -> Self {
        DirIndex { machines: HashMap::new() }
    }
}

/// The key of a path (normalized: no `.`, no trailing `/`).
fn key(path: &Path) -> Vec<u8> {
    let normal: PathBuf = path.components().collect();
    normal.as_os_str().as_bytes().iter().map(|&b| if b == b'/' { 0 } else { b }).collect()
}

impl<T> DirIndex<T> {
    /// The first taken directory `path` overlaps on `machine`: the same
    /// one, else the nearest one it is inside, else the first one inside it.
    pub fn overlap(&self, machine: &str, path: &Path) -> Option<(Relation, &Path, &T)> {
        let map = self.machines.get(machine)?;
        let k = key(path);
        let found = |k: &[u8]| map.get(k).map(|(p, v)| (p.as_path(), v));
        if let Some((p, v)) = found(&k) {
            return Some((Relation::Same, p, v));
        }
        // Ancestors: the prefixes that end before a separator (the root's is the separator itself).
        for end in (0..k.len()).rev().filter(|&i| k[i] == 0) {
            if let Some((p, v)) = found(&k[..end.max(1)]) {
                return Some((Relation::Inside, p, v));
            }
        }
        let (next, (p, v)) = map.range::<[u8], _>((Bound::Excluded(k.as_slice()), Bound::Unbounded)).next()?;
        let below = next.starts_with(&k) && (k == [0] || next.get(k.len()) == Some(&0));
        below.then_some((Relation::Contains, p.as_path(), v))
    }

    /// Take `path` on `machine` (the first owner stays).
    pub fn insert(&mut self, machine: &str, path: PathBuf, value: T) {
        let map = match self.machines.get_mut(machine) {
            Some(m) => m,
            None => self.machines.entry(machine.to_string()).or_default(),
        };
        map.entry(key(&path)).or_insert((path, value));
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
