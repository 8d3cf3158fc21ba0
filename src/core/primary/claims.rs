//! Which calls may run at once. A call names what it touches (a file, a
//! block, a directory tree, a file's local sync...) and holds those claims
//! from its admission through its local step; a call whose claims conflict
//! with held ones, or with those of a call waiting ahead of it, waits its
//! turn. This is what keeps the primary's local order and the stream's
//! order the same for any one block, file or path (rule 6), and what lets a
//! rename, a resync copy or a shutdown wait for exactly the calls they
//! depend on instead of taking every lock in the process.

use super::CallId;
use crate::protocol::path::{FsPath, RelPath};
use std::collections::{HashMap, VecDeque};

/// What a claim covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One file (or directory entry), exactly.
    Path(FsPath),
    /// A directory and everything under it; `None`: a whole filespace.
    Tree(u16, Option<RelPath>),
    /// One block of a file (writers of the same block take turns).
    Block(FsPath, u64),
    /// The local fdatasync of one file: one at a time, so a write-back
    /// error reported to one of them is seen before another succeeds (rule 8).
    SyncOf(FsPath),
    /// The local fsync of changed directories: one at a time, so a caller
    /// never returns before the directory syncs it relies on are done.
    DirSync,
    /// Renames (shared) against taking a resync's redo set (exclusive): a
    /// rename records its target before it renames, so the set is taken
    /// only when no rename is between the two.
    Renames,
    /// Every call (shared) against a shutdown or a mirror taken back
    /// (exclusive), which need no call between admission and its local step.
    Global,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub target: Target,
    pub exclusive: bool,
}

impl Claim {
    pub fn shared(target: Target) -> Claim {
        Claim { target, exclusive: false }
    }
    pub fn exclusive(target: Target) -> Claim {
        Claim { target, exclusive: true }
    }
}

fn tree_covers(fs: u16, tree: &Option<RelPath>, p: &FsPath) -> bool {
    fs == p.filespace && tree.as_ref().is_none_or(|t| p.path.is_within(t))
}

fn trees_overlap(a: (u16, &Option<RelPath>), b: (u16, &Option<RelPath>)) -> bool {
    a.0 == b.0
        && match (a.1, b.1) {
            (None, _) | (_, None) => true,
            (Some(x), Some(y)) => x.is_within(y) || y.is_within(x),
        }
}

/// Whether two targets overlap (whatever the modes).
fn overlap(a: &Target, b: &Target) -> bool {
    use Target::*;
    match (a, b) {
        (Path(x), Path(y)) => x == y,
        (Path(p), Tree(fs, t)) | (Tree(fs, t), Path(p)) => {
            tree_covers(*fs, t, p) || t.as_ref().is_some_and(|t| p.filespace == *fs && t.is_within(&p.path))
        }
        (Tree(f1, t1), Tree(f2, t2)) => trees_overlap((*f1, t1), (*f2, t2)),
        (Block(f1, b1), Block(f2, b2)) => b1 == b2 && f1 == f2,
        (SyncOf(x), SyncOf(y)) => x == y,
        (DirSync, DirSync) | (Renames, Renames) | (Global, Global) => true,
        _ => false,
    }
}

fn conflicts(a: &Claim, b: &Claim) -> bool {
    (a.exclusive || b.exclusive) && overlap(&a.target, &b.target)
}

/// Held claims per file, for the write path's quick check.
#[derive(Default, Debug)]
struct FileHold {
    shared: u32,
    exclusive: bool,
    blocks: Vec<u64>,
    syncing: bool,
}

/// Claims held and calls waiting for theirs, in arrival order.
#[derive(Default, Debug)]
pub struct Claims {
    files: HashMap<FsPath, FileHold>,
    trees: Vec<(u16, Option<RelPath>, bool)>,
    dir_sync: bool,
    renames: (u32, bool),
    global: (u32, bool),
    /// Held by each call (released together).
    held: HashMap<CallId, Vec<Claim>>,
    waiting: VecDeque<(CallId, Vec<Claim>)>,
}

impl Claims {
    /// Calls holding claims.
    pub fn holders(&self) -> usize {
        self.held.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn held_conflict(&self, c: &Claim) -> bool {
        let global = |(shared, excl): (u32, bool)| if c.exclusive { shared > 0 || excl } else { excl };
        match &c.target {
            Target::Global => global(self.global),
            Target::Renames => global(self.renames),
            Target::DirSync => self.dir_sync,
            Target::SyncOf(f) => self.files.get(f).is_some_and(|h| h.syncing),
            Target::Block(f, b) => self.files.get(f).is_some_and(|h| h.blocks.contains(b)),
            Target::Path(p) => {
                let file = self.files.get(p).is_some_and(|h| h.exclusive || (c.exclusive && h.shared > 0));
                file || self
                    .trees
                    .iter()
                    .any(|(fs, t, excl)| (*excl || c.exclusive) && overlap(&Target::Tree(*fs, t.clone()), &c.target))
            }
            Target::Tree(fs, t) => {
                let trees = self
                    .trees
                    .iter()
                    .any(|(f2, t2, excl)| (*excl || c.exclusive) && trees_overlap((*fs, t), (*f2, t2)));
                trees
                    || self.files.iter().any(|(p, h)| {
                        (h.exclusive || (c.exclusive && h.shared > 0)) && overlap(&Target::Path(p.clone()), &c.target)
                    })
            }
        }
    }

    fn grant(&mut self, call: CallId, claims: Vec<Claim>) {
        for c in &claims {
            match &c.target {
                Target::Global => bump(&mut self.global, c.exclusive),
                Target::Renames => bump(&mut self.renames, c.exclusive),
                Target::DirSync => self.dir_sync = true,
                Target::SyncOf(f) => self.files.entry(f.clone()).or_default().syncing = true,
                Target::Block(f, b) => self.files.entry(f.clone()).or_default().blocks.push(*b),
                Target::Path(p) => {
                    let h = self.files.entry(p.clone()).or_default();
                    if c.exclusive {
                        h.exclusive = true;
                    } else {
                        h.shared += 1;
                    }
                }
                Target::Tree(fs, t) => self.trees.push((*fs, t.clone(), c.exclusive)),
            }
        }
        self.held.entry(call).or_default().extend(claims);
    }

    /// Ask for `claims` on behalf of `call`: granted now (`true`), or queued
    /// behind what they conflict with (`false`; [`Claims::release`] grants
    /// them later, in arrival order).
    pub fn request(&mut self, call: CallId, claims: Vec<Claim>) -> bool {
        let blocked = claims.iter().any(|c| self.held_conflict(c))
            || self.waiting.iter().any(|(_, w)| w.iter().any(|a| claims.iter().any(|b| conflicts(a, b))));
        if blocked {
            self.waiting.push_back((call, claims));
            return false;
        }
        self.grant(call, claims);
        true
    }

    /// Release every claim `call` holds (and forget it if it was waiting);
    /// returns the calls whose claims are granted as a result, in order.
    pub fn release(&mut self, call: CallId) -> Vec<CallId> {
        self.waiting.retain(|(c, _)| *c != call);
        for c in self.held.remove(&call).unwrap_or_default() {
            self.undo(c);
        }
        self.admit_waiting()
    }

    /// Release the claims of `call` on `target` only, keeping the others.
    pub fn release_target(&mut self, call: CallId, target: &Target) -> Vec<CallId> {
        let mut gone = Vec::new();
        if let Some(held) = self.held.get_mut(&call) {
            held.retain(|c| {
                let keep = c.target != *target;
                if !keep {
                    gone.push(c.clone());
                }
                keep
            });
            if held.is_empty() {
                self.held.remove(&call);
            }
        }
        for c in gone {
            self.undo(c);
        }
        self.admit_waiting()
    }

    fn undo(&mut self, c: Claim) {
        match c.target {
            Target::Global => drop_hold(&mut self.global, c.exclusive),
            Target::Renames => drop_hold(&mut self.renames, c.exclusive),
            Target::DirSync => self.dir_sync = false,
            Target::SyncOf(f) => self.with_file(&f, |h| h.syncing = false),
            Target::Block(f, b) => self.with_file(&f, |h| {
                if let Some(i) = h.blocks.iter().position(|x| *x == b) {
                    h.blocks.swap_remove(i);
                }
            }),
            Target::Path(p) => self.with_file(&p, |h| {
                if c.exclusive {
                    h.exclusive = false;
                } else {
                    h.shared = h.shared.saturating_sub(1);
                }
            }),
            Target::Tree(fs, t) => {
                if let Some(i) = self.trees.iter().position(|(f2, t2, e)| *f2 == fs && *t2 == t && *e == c.exclusive) {
                    self.trees.swap_remove(i);
                }
            }
        }
    }

    fn with_file(&mut self, f: &FsPath, change: impl FnOnce(&mut FileHold)) {
        if let Some(h) = self.files.get_mut(f) {
            change(h);
            if h.shared == 0 && !h.exclusive && h.blocks.is_empty() && !h.syncing {
                self.files.remove(f);
            }
        }
    }

    fn admit_waiting(&mut self) -> Vec<CallId> {
        let mut granted = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let (_, claims) = &self.waiting[i];
            let ahead = self.waiting.iter().take(i);
            let free = !claims.iter().any(|c| self.held_conflict(c))
                && !ahead.clone().any(|(_, w)| w.iter().any(|a| claims.iter().any(|b| conflicts(a, b))));
            if free {
                if let Some((call, claims)) = self.waiting.remove(i) {
                    self.grant(call, claims);
                    granted.push(call);
                }
            } else {
                i += 1;
            }
        }
        granted
    }
}

fn bump(h: &mut (u32, bool), exclusive: bool) {
    if exclusive {
        h.1 = true;
    } else {
        h.0 += 1;
    }
}

fn drop_hold(h: &mut (u32, bool), exclusive: bool) {
    if exclusive {
        h.1 = false;
    } else {
        h.0 = h.0.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> FsPath {
        FsPath::new(0, RelPath::new(s).unwrap())
    }

    fn write(f: &str, b: u64) -> Vec<Claim> {
        vec![Claim::shared(Target::Global), Claim::shared(Target::Path(p(f))), Claim::exclusive(Target::Block(p(f), b))]
    }

    #[test]
    fn writers_of_different_blocks_share_a_file_and_one_block_takes_turns() {
        let mut c = Claims::default();
        assert!(c.request(1, write("a", 0)));
        assert!(c.request(2, write("a", 1)));
        assert!(!c.request(3, write("a", 0)));
        assert_eq!(c.release(2), Vec::<CallId>::new());
        assert_eq!(c.release(1), vec![3]);
        assert_eq!(c.holders(), 1);
    }

    #[test]
    fn a_tree_claim_waits_for_files_under_it_and_later_calls_queue_behind_it() {
        let mut c = Claims::default();
        assert!(c.request(1, write("d/x", 0)));
        let rename = vec![Claim::exclusive(Target::Tree(0, Some(RelPath::new("d").unwrap())))];
        assert!(!c.request(2, rename));
        // Arrival order: a write under d that comes later waits behind the rename.
        assert!(!c.request(3, write("d/y", 0)));
        // Unrelated calls go on.
        assert!(c.request(4, write("e/z", 0)));
        assert_eq!(c.release(1), vec![2]);
        assert_eq!(c.release(2), vec![3]);
    }

    #[test]
    fn global_exclusive_waits_for_every_call_and_holds_off_new_ones() {
        let mut c = Claims::default();
        assert!(c.request(1, write("a", 0)));
        assert!(!c.request(2, vec![Claim::exclusive(Target::Global)]));
        assert!(!c.request(3, write("b", 0)));
        assert_eq!(c.release(1), vec![2]);
        assert_eq!(c.release(2), vec![3]);
    }

    #[test]
    fn a_whole_filespace_tree_covers_every_path_of_it_only() {
        let mut c = Claims::default();
        assert!(c.request(1, vec![Claim::exclusive(Target::Tree(0, None))]));
        assert!(!c.request(2, write("a/b", 0)));
        assert!(c.request(3, vec![Claim::shared(Target::Path(FsPath::new(1, RelPath::new("a").unwrap())))]));
    }

    #[test]
    fn syncs_of_one_file_take_turns_but_not_with_writes() {
        let mut c = Claims::default();
        assert!(c.request(1, vec![Claim::exclusive(Target::SyncOf(p("a")))]));
        assert!(c.request(2, write("a", 0)));
        assert!(!c.request(3, vec![Claim::exclusive(Target::SyncOf(p("a")))]));
        assert_eq!(c.release(1), vec![3]);
    }
}
