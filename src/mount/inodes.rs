//! The kernel names files by inode number; the engine by path. This table
//! maps one to the other for every inode the kernel holds (its lookup
//! count), and keeps it right across the namespace changes made through
//! the mount: a renamed inode (and everything under a renamed directory)
//! takes its new path, and an unlinked or replaced one is *detached*: it
//! keeps its number for the kernel's open handles but no longer names any
//! path, so nothing written through it can land in a file that later takes
//! its old name.
//!
//! Numbers are never reused (a counter), so the generation is always 0.
//!
//! The numbers belong to a *term*: a stretch in which nothing but the
//! mount changed the files (the segment acting as primary, without a role
//! change). With the kernel's write-back cache the kernel trusts its own
//! idea of a file's length once it has an inode for it, so an inode must
//! not outlive a role change, in which the mirror's applier or a resync
//! may have changed the file: a new term detaches every inode but the
//! root, and lookups hand the kernel new numbers (new inodes, read afresh).
//! An inode of the old term answers ESTALE.

use std::collections::HashMap;

pub(super) const ROOT: u64 = 1;

#[derive(Debug)]
struct Node {
    /// Relative to the filespace root ("" for the root).
    path: String,
    /// References the kernel holds (entries handed out minus forgets).
    lookups: u64,
    detached: bool,
    /// Detached by a new term (not by an unlink or a rename over it).
    old_term: bool,
}

#[derive(Debug)]
pub(super) struct Inodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
    /// The term the numbers belong to (see above).
    term: Term,
}

/// Which stretch of unchanged ownership the files are in, as the mount's
/// [`super::changes::Changes`] knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Term {
    /// Unknown (a segment over its client socket): the mount keeps no
    /// write-back cache and no cached page across opens.
    Unknown,
    /// The segment is not the acting primary: something else may change
    /// its files.
    Between,
    /// The segment acts as primary, in its term N: only the mount changes
    /// the files.
    In(u64),
}

/// What an inode number stands for now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resolved<'a> {
    Path(&'a str),
    /// Unlinked, removed or replaced since the kernel learned it.
    Detached,
    /// Learned in an earlier term (a role change came since).
    OldTerm,
    /// Not (or no longer) known: the kernel forgot it.
    Unknown,
}

impl Inodes {
    pub fn new() -> Inodes {
        let mut by_ino = HashMap::new();
        by_ino.insert(ROOT, Node { path: String::new(), lookups: 1, detached: false, old_term: false });
        let mut by_path = HashMap::new();
        by_path.insert(String::new(), ROOT);
        Inodes { by_ino, by_path, next: ROOT + 1, term: Term::Unknown }
    }

    /// Enter term `term`: if it is another one, every inode but the root is
    /// detached, so the kernel learns the files anew under new numbers.
    pub fn enter(&mut self, term: Term) {
        if term == self.term {
            return;
        }
        tracing::debug!(from = ?self.term, to = ?term, inodes = self.by_ino.len(), "mount: a new term renumbers the files");
        self.term = term;
        self.by_path.retain(|p, _| p.is_empty());
        for (&ino, n) in self.by_ino.iter_mut() {
            if ino != ROOT && !n.detached {
                n.detached = true;
                n.old_term = true;
            }
        }
    }

    /// The term the numbers belong to.
    pub fn term(&self) -> Term {
        self.term
    }

    pub fn resolve(&self, ino: u64) -> Resolved<'_> {
        match self.by_ino.get(&ino) {
            Some(n) if n.old_term => Resolved::OldTerm,
            Some(n) if n.detached => Resolved::Detached,
            Some(n) => Resolved::Path(&n.path),
            None => Resolved::Unknown,
        }
    }

    /// The inode for `path`, created if new; the kernel holds one more reference.
    pub fn lookup(&mut self, path: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.lookups += 1;
                return ino;
            }
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(ino, Node { path: path.to_string(), lookups: 1, detached: false, old_term: false });
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// The inode for `path` if the kernel holds one (no new reference).
    pub fn peek(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// Returns whether the inode is gone (numbers are never used again).
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT {
            return false;
        }
        let Some(node) = self.by_ino.get_mut(&ino) else { return false };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return false;
        }
        if let Some(node) = self.by_ino.remove(&ino) {
            if !node.detached && self.by_path.get(&node.path) == Some(&ino) {
                self.by_path.remove(&node.path);
            }
        }
        true
    }

    /// `path` (and, for a directory, everything under it) no longer exists.
    pub fn detach(&mut self, path: &str, subtree: bool) {
        for (_, ino) in self.take_paths(path, subtree) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.detached = true;
            }
        }
    }

    /// `from` now lives at `to`, replacing whatever was there (POSIX rename).
    pub fn rename(&mut self, from: &str, to: &str, is_dir: bool) {
        self.detach(to, true);
        for (old, ino) in self.take_paths(from, is_dir) {
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.path = new.clone();
            }
            self.by_path.insert(new, ino);
        }
    }

    /// Remove `path` (and its descendants, with `subtree`) from the path
    /// index, returning what was there.
    fn take_paths(&mut self, path: &str, subtree: bool) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        if let Some(ino) = self.by_path.remove(path) {
            out.push((path.to_string(), ino));
        }
        if subtree {
            let prefix = format!("{path}/");
            let under: Vec<String> = self.by_path.keys().filter(|p| p.starts_with(&prefix)).cloned().collect();
            for p in under {
                if let Some(ino) = self.by_path.remove(&p) {
                    out.push((p, ino));
                }
            }
        }
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_ino.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_carry_inodes_and_their_descendants_and_detach_the_target() {
        let mut t = Inodes::new();
        let d = t.lookup("d");
        let f = t.lookup("d/f");
        let g = t.lookup("d/sub/g");
        let other = t.lookup("de"); // shares a prefix, not a parent
        let target = t.lookup("e");
        assert_eq!(t.lookup("d"), d, "a second lookup returns the same inode");
        t.rename("d", "e", true);
        assert_eq!(t.resolve(d), Resolved::Path("e"));
        assert_eq!(t.resolve(f), Resolved::Path("e/f"));
        assert_eq!(t.resolve(g), Resolved::Path("e/sub/g"));
        assert_eq!(t.resolve(other), Resolved::Path("de"));
        assert_eq!(t.resolve(target), Resolved::Detached);
        assert_eq!(t.peek("d/f"), None);
        assert_eq!(t.peek("e/f"), Some(f));
        // A new file at the old name is a new inode.
        let fresh = t.lookup("d");
        assert!(fresh != d && fresh != target);
    }

    #[test]
    fn a_new_term_detaches_every_inode_but_the_root_and_numbers_afresh() {
        let mut t = Inodes::new();
        t.enter(Term::In(1));
        let d = t.lookup("d");
        let f = t.lookup("d/f");
        let gone = t.lookup("gone");
        t.detach("gone", false);
        t.enter(Term::In(1));
        assert_eq!(t.resolve(f), Resolved::Path("d/f"), "the same term changes nothing");
        assert_eq!(t.lookup("d/f"), f);
        for next in [Term::Between, Term::In(2)] {
            let before = t.lookup("d/f");
            t.enter(next);
            assert_eq!(t.resolve(ROOT), Resolved::Path(""), "the root stays");
            assert_eq!(t.resolve(before), Resolved::OldTerm, "{next:?}: an inode of the old term is stale");
            assert_eq!(t.resolve(d), Resolved::OldTerm);
            assert_eq!(t.term(), next);
            assert_eq!(t.resolve(gone), Resolved::Detached, "unlinked before: still only unlinked");
            assert_eq!(t.peek("d/f"), None);
            let fresh = t.lookup("d/f");
            assert!(fresh != before && fresh != f, "{next:?}: a new number");
            assert_eq!(t.resolve(fresh), Resolved::Path("d/f"));
        }
        // The kernel's forgets of old numbers still clear them.
        t.forget(f, 3);
        assert_eq!(t.resolve(f), Resolved::Unknown);
    }

    #[test]
    fn forgotten_and_detached_inodes_leave_the_table() {
        let mut t = Inodes::new();
        let f = t.lookup("f");
        t.lookup("f");
        t.forget(f, 1);
        assert_eq!(t.resolve(f), Resolved::Path("f"));
        t.detach("f", false);
        assert_eq!(t.resolve(f), Resolved::Detached);
        let again = t.lookup("f");
        assert_ne!(again, f);
        t.forget(f, 1);
        assert_eq!(t.resolve(f), Resolved::Unknown);
        assert_eq!(t.resolve(again), Resolved::Path("f"), "forgetting the old inode keeps the new one");
        t.forget(again, 1);
        t.forget(ROOT, 100);
        assert_eq!(t.len(), 1, "only the root is left");
        assert_eq!(t.resolve(ROOT), Resolved::Path(""));
    }
}
