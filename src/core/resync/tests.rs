//! The engine over scripted links: renames after a full resync's walk,
//! a rate changed mid-way, shipped paths following renames.

use super::*;

fn p(s: &str) -> FsPath {
    FsPath::new(0, RelPath::new(s).unwrap_or_else(|e| panic!("{s}: {e}")))
}

/// A scripted link: one filespace holding one file `f` of `len` bytes,
/// a change-log naming the paths `owed` and the blocks `blocks`, a
/// clock that moves only when the resync pauses. Once the walk of a
/// full resync is done, every path still owed is renamed by a call (a
/// database renames all the time) and asks for one more pass, as the
/// primary's RenameOwed does. After the first copy an operator may
/// change the rate to `rate_after_first_copy`.
#[derive(Default)]
struct Scripted<'a> {
    owed: BTreeSet<FsPath>,
    blocks: BTreeMap<FsPath, BTreeSet<u64>>,
    len: u64,
    kind: Option<EntryKind>,
    walked: bool,
    renamed: bool,
    now: u64,
    copies: u64,
    progress: Option<&'a Progress>,
    rate_after_first_copy: u64,
}

impl ResyncLink for Scripted<'_> {
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn pause(&mut self, ms: u64) {
        self.now += ms;
    }
    fn block_size(&self) -> u32 {
        8192
    }
    fn filespace_count(&self) -> u16 {
        1
    }
    fn change_set(&mut self, _full: bool) -> Result<ChangeSet> {
        let touched = self.owed.iter().map(|p| (p.clone(), true)).collect();
        Ok(ChangeSet { touched, blocks: self.blocks.clone(), ..ChangeSet::default() })
    }
    fn redo(&mut self) -> Result<ChangeSet> {
        if self.walked && !self.renamed {
            self.renamed = true;
            let touched = self.owed.iter().map(|p| (p.clone(), true)).collect();
            return Ok(ChangeSet { touched, ..ChangeSet::default() });
        }
        Ok(ChangeSet::default())
    }
    fn renames_at(&mut self) -> u64 {
        0
    }
    fn renames_since(&mut self, _pos: u64) -> Option<Vec<Renamed>> {
        Some(Vec::new())
    }
    fn owe(&mut self, _children: &[(FsPath, EntryKind)]) -> Result<()> {
        Ok(())
    }
    fn hold(&mut self, _ms: u64) -> Result<()> {
        Ok(())
    }
    fn walked(&mut self) {
        self.walked = true;
    }
    fn entry_kind(&mut self, _p: &FsPath) -> Result<Option<EntryKind>> {
        Ok(self.kind)
    }
    fn reconcile(&mut self, _fs: u16, path: Option<&RelPath>, _prune: bool) -> Result<LocalEntry> {
        Ok(match path {
            None => LocalEntry::Dir { children: vec![("f".to_string(), EntryKind::File)] },
            Some(_) => LocalEntry::File { len: self.len },
        })
    }
    fn copy(&mut self, _p: &FsPath, _first: u64, count: u64, _ahead: u64) -> Result<u64> {
        self.copies += 1;
        if let (1, Some(progress)) = (self.copies, self.progress) {
            if self.rate_after_first_copy > 0 {
                progress.max_rate.store(self.rate_after_first_copy, Ordering::Relaxed);
            }
        }
        Ok(count * 8192)
    }
    fn hashes(&mut self, _p: &FsPath, _f: u64, _c: u32, _t: Duration) -> Result<Option<(Vec<u64>, Vec<u64>)>> {
        Ok(None)
    }
    fn send(&mut self) {}
    fn check(&mut self) -> Result<()> {
        Ok(())
    }
    fn flush(&mut self, _p: &FsPath) -> Result<Option<u64>> {
        Ok(Some(1))
    }
    fn checkpoint(
        &mut self,
        _synced: u64,
        _flushed: &BTreeSet<FsPath>,
        _blocks: &BTreeMap<FsPath, BTreeSet<u64>>,
        paths: &[FsPath],
        _as_of: u64,
        _timeout: Duration,
    ) -> Result<()> {
        for done in paths {
            self.owed.remove(done);
        }
        Ok(())
    }
    fn finish(&mut self, _synced: Option<u64>, _flushed: &BTreeSet<FsPath>, _t: Duration) -> Result<bool> {
        Ok(true)
    }
}

fn full_resync(planted: Option<crate::core::PlantedBug>) -> ResyncReport {
    let owed = ["a", "b/c", "d"].into_iter().map(p).collect();
    let mut link = Scripted { owed, ..Scripted::default() };
    let opts = ResyncOptions { full: true, planted, ..ResyncOptions::default() };
    run_on(&mut link, &opts, &Progress::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// A full resync records what its walk covered as soon as the walk is
/// done, so renames after it owe nothing the walk shipped (it once
/// kept every path owed until its end: each rename meanwhile cost a
/// pass over the renamed tree).
#[test]
fn renames_after_a_full_resyncs_walk_owe_no_pass() {
    assert_eq!(full_resync(None).extra_passes, 0);
    let planted = full_resync(Some(crate::core::PlantedBug::FullResyncWithoutWalkCheckpoint));
    assert!(planted.extra_passes > 0, "the schedule must fail with the fix removed: {planted:?}");
}
fn renamed(from: &str, to: &str) -> Renamed {
    Renamed { from: p(from), to: p(to), whole: false }
}

/// What a resync shipped is named as renames since have moved it: the
/// fact follows its directory back and forth, ends when something else
/// is renamed over it or a rename made the target owed whole, and
/// never holds when a rename of it fell between its steps.
#[test]
fn shipped_paths_follow_the_renames_made_after_them() {
    let journal = vec![renamed("d", "d.alt"), renamed("d.alt", "d"), renamed("x", "d/f"), renamed("d", "e")];
    let after = |at: u64, name: &str| translate(&journal, 10, Window { since: at, at }, &p(name));
    assert_eq!(after(10, "d/g"), Some(p("e/g")), "back and forth, then on to e");
    assert_eq!(after(11, "d.alt/g"), Some(p("e/g")));
    assert_eq!(after(10, "d/f"), None, "x was renamed over d/f: what was shipped there is gone");
    assert_eq!(after(13, "d/f"), Some(p("e/f")), "shipped after that rename: it follows d");
    assert_eq!(after(14, "d/g"), Some(p("d/g")), "after every rename: as it was");
    assert_eq!(after(10, "other"), Some(p("other")));
    let spanning = Window { since: 10, at: 12 };
    assert_eq!(translate(&journal, 10, spanning, &p("d/g")), None, "renamed between its steps");
    assert_eq!(translate(&journal, 10, spanning, &p("other")), Some(p("other")), "an unrelated rename between");
    let whole = vec![Renamed { from: p("a"), to: p("b"), whole: true }];
    assert_eq!(translate(&whole, 0, Window { since: 0, at: 0 }, &p("a/f")), None, "b is owed whole");
    assert_eq!(renamed_since(&journal[3..], &p("d/f")), Some(p("e/f")));
}

/// A rate given while the resync runs applies from then on: 512 KiB in
/// two copies of 256 KiB at 256 KiB/s takes 2 s of pauses; doubled after
/// the first copy, the second takes 0.5 s and the first is not made up for.
#[test]
fn a_rate_changed_during_the_resync_applies_from_then_on() {
    let rate = 256 * 1024;
    let elapsed = |doubled_to: u64| {
        let progress = Progress::default();
        let mut link = Scripted {
            blocks: BTreeMap::from([(p("f"), (0..64).collect())]),
            len: 64 * 8192,
            kind: Some(EntryKind::File),
            progress: Some(&progress),
            rate_after_first_copy: doubled_to,
            ..Scripted::default()
        };
        let opts = ResyncOptions { max_rate: Some(rate), ..ResyncOptions::default() };
        run_on(&mut link, &opts, &progress).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(link.copies, 2);
        link.now
    };
    assert_eq!(elapsed(rate), 2000);
    assert_eq!(elapsed(2 * rate), 500);
}

#[test]
fn each_run_knows_the_blocks_that_continue_it() {
    use super::{contiguous_after, runs};
    let r = runs([0, 1, 2, 3, 4, 5, 6, 9, 10, 20], 3);
    assert_eq!(r, vec![(0, 3), (3, 3), (6, 1), (9, 2), (20, 1)]);
    assert_eq!(contiguous_after(&r), vec![4, 1, 0, 0, 0]);
    assert!(contiguous_after(&[]).is_empty());
}
