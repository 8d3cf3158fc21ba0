//! The change-log's part in a resync that renames run through: what a
//! rename moves, what the engine takes for another pass, the journal it
//! names what it shipped by, and the children a walked directory owes
//! (architecture.md § 7.7).

use super::*;

impl ChangeLog {
    /// [`ChangeLog::clear_entries_keeping`] for names as they were at
    /// rename journal position `as_of`: each is named as renames since then
    /// moved it, and one that a rename since renamed something over is left
    /// as it is (what it names now was not shipped).
    pub fn clear_entries_as_of(
        &self,
        blocks: &BTreeMap<FsPath, BTreeSet<u64>>,
        paths: &[FsPath],
        keep_extents: &BTreeMap<FsPath, BTreeSet<u64>>,
        keep_paths: &BTreeSet<FsPath>,
        as_of: u64,
    ) -> Result<()> {
        let s = lock(&self.shared);
        if as_of < s.inner.journal_base {
            return Err(ChangeLogError::Corrupt(format!(
                "a resync checkpoint names paths as of rename {as_of}, before the journal's first ({})",
                s.inner.journal_base
            )));
        }
        let skip = (as_of - s.inner.journal_base) as usize;
        let since: Vec<crate::core::resync::Renamed> = s.inner.journal.iter().skip(skip).cloned().collect();
        let now = |p: &FsPath| crate::core::resync::renamed_since(&since, p);
        let blocks: BTreeMap<FsPath, BTreeSet<u64>> =
            blocks.iter().filter_map(|(f, b)| now(f).map(|f| (f, b.clone()))).collect();
        let paths: Vec<FsPath> = paths.iter().filter_map(now).collect();
        self.clear_locked(s, &blocks, &paths, keep_extents, keep_paths)
    }

    /// Resync: a call renamed `from` to `to` here, and the rename goes to
    /// the mirror next, in the stream's order (if it never gets there, the
    /// pair is back in change tracking and the rename's own entries name
    /// both paths whole). The mirror's copy of what the resync still owes
    /// under `from` moves with it, so what is owed moves too: every owed
    /// block, extent and path under `from` is recorded, durably, under
    /// `to` and is owed there, no longer under `from`; and `to` is kept for
    /// another pass ([`ChangeLog::take_redo`]). Two cases owe `to` whole:
    /// a full resync (`all`) before its walk is done, and a rename out of
    /// a directory owed whole that the resync has not walked yet. Checked
    /// and recorded in one step with the lock held, so a resync's final
    /// clear comes wholly before (then nothing is owed any more) or after
    /// (then it sees the pass owed and clears nothing). The rename is
    /// journaled either way. Whether anything was owed.
    pub fn rename_owed(&self, from: &FsPath, to: &FsPath, all: bool) -> Result<bool> {
        let mut s = lock(&self.shared);
        s.usable()?;
        let under = |p: &FsPath| p.filespace == from.filespace && p.path.is_within(&from.path);
        let moved = |p: &FsPath| p.path.rebase(&from.path, &to.path).map(|r| FsPath::new(to.filespace, r));
        let inner = &s.inner;
        let whole = all
            || inner.recovered_touched.iter().any(|(a, subtree)| {
                *subtree
                    && a.filespace == from.filespace
                    && from.path.is_within(&a.path)
                    && a.path != from.path
                    && !(to.filespace == a.filespace && to.path.is_within(&a.path))
            });
        let files: Vec<FsPath> = inner.owed_files.iter().filter(|f| under(f)).cloned().collect();
        let extents: Vec<FsPath> = inner.recovered.keys().filter(|f| under(f)).cloned().collect();
        let paths: Vec<(FsPath, bool)> =
            inner.recovered_touched.iter().filter(|(p, _)| under(p)).map(|(p, t)| (p.clone(), *t)).collect();
        s.inner.journal.push_back(crate::core::resync::Renamed { from: from.clone(), to: to.clone(), whole });
        if s.inner.journal.len() > MAX_JOURNAL {
            s.inner.journal.pop_front();
            s.inner.journal_base += 1;
        }
        if !whole && files.is_empty() && extents.is_empty() && paths.is_empty() {
            return Ok(false);
        }
        for f in files {
            s.inner.owed_files.remove(&f);
            let (Some(blocks), Some(nf)) = (s.inner.set.blocks.remove(&f), moved(&f)) else { continue };
            s.add_blocks(&nf, &blocks)?;
            s.inner.owed_files.insert(nf);
        }
        for f in extents {
            let (Some(es), Some(nf)) = (s.inner.recovered.remove(&f), moved(&f)) else { continue };
            for e in &es {
                s.add_extent(&nf, *e)?;
            }
            s.inner.recovered.entry(nf).or_default().extend(es);
        }
        for (p, subtree) in paths {
            s.inner.recovered_touched.remove(&p);
            let Some(np) = moved(&p) else { continue };
            s.add_touched(&np, subtree);
            *s.inner.recovered_touched.entry(np).or_insert(false) |= subtree;
        }
        if whole {
            s.add_touched(to, true);
            s.inner.recovered_touched.insert(to.clone(), true);
        }
        s.inner.redo.insert(to.clone());
        let n = s.recorded;
        self.wait_durable(s, n)?;
        Ok(true)
    }

    /// Resync: what renames moved to the paths [`ChangeLog::rename_owed`]
    /// kept since the last call, as it is owed now (what the resync
    /// recorded done meanwhile is gone from it), for another pass. The
    /// records stay until the pass clears them. Called when a mirror is
    /// taken back too, to start afresh.
    pub fn take_redo(&self) -> ChangeSet {
        let mut s = lock(&self.shared);
        let roots = std::mem::take(&mut s.inner.redo);
        let under = |p: &FsPath| roots.iter().any(|r| r.filespace == p.filespace && p.path.is_within(&r.path));
        let inner = &s.inner;
        ChangeSet {
            blocks: inner
                .owed_files
                .iter()
                .filter(|f| under(f))
                .filter_map(|f| inner.set.blocks.get(f).map(|b| (f.clone(), b.clone())))
                .collect(),
            touched: inner.recovered_touched.iter().filter(|(p, _)| under(p)).map(|(p, t)| (p.clone(), *t)).collect(),
            extents: inner.recovered.iter().filter(|(f, _)| under(f)).map(|(f, e)| (f.clone(), e.clone())).collect(),
        }
    }

    /// Resync: a mirror was taken back: forget renames and passes owed by
    /// an earlier resync (its plan is in the change-log now).
    pub fn start_resync(&self) {
        let mut s = lock(&self.shared);
        s.inner.redo.clear();
        let n = s.inner.journal.len() as u64;
        s.inner.journal.clear();
        s.inner.journal_base += n;
    }

    /// Resync: the journal's position now (renames made so far).
    pub fn rename_position(&self) -> u64 {
        let s = lock(&self.shared);
        s.inner.journal_base + s.inner.journal.len() as u64
    }

    /// Resync: the renames made from position `from` on, in order; `None`
    /// when the journal no longer reaches back that far.
    pub fn renames_since(&self, from: u64) -> Option<Vec<crate::core::resync::Renamed>> {
        let s = lock(&self.shared);
        let skip = from.checked_sub(s.inner.journal_base)?;
        Some(s.inner.journal.iter().skip(skip as usize).cloned().collect())
    }

    /// Resync: the children of a directory the resync walks are owed,
    /// durably, before the directory counts as done: a directory whole
    /// (with all under it), a file by name and every block (its length
    /// read from `disk`; its contents are then named in full by blocks), so
    /// a rename in the middle of the walk moves only what is still owed,
    /// block by block. Also a file the plan names, before it is copied. A
    /// child gone meanwhile needs nothing: its removal streams to the mirror.
    pub fn owe_children(&self, disk: &dyn Disk, children: &[(FsPath, crate::io::disk::EntryKind)]) -> Result<()> {
        let mut files = Vec::new();
        for (p, kind) in children {
            if *kind != crate::io::disk::EntryKind::File {
                continue;
            }
            let len = match disk.open(p, OpenMode::Existing).and_then(|f| f.len()) {
                Ok(len) => len,
                Err(e) if e.kind == crate::io::disk::DiskErrorKind::NotFound => continue,
                Err(e) => return Err(ChangeLogError::Disk { op: "look at a walked file", source: e }),
            };
            files.push((p.clone(), len));
        }
        let mut s = lock(&self.shared);
        s.usable()?;
        let bs = s.inner.block_size.max(1) as u64;
        for (p, kind) in children {
            if *kind == crate::io::disk::EntryKind::Dir {
                s.add_touched(p, true);
                *s.inner.recovered_touched.entry(p.clone()).or_insert(false) |= true;
            }
        }
        for (p, len) in files {
            // Its name (and length) until it is reconciled and synced here,
            // its contents block by block.
            s.add_touched(&p, false);
            s.inner.recovered_touched.entry(p.clone()).or_insert(false);
            let n = len.div_ceil(bs);
            if n > 0 {
                s.add_blocks(&p, &(0..n).collect())?;
                s.inner.owed_files.insert(p.clone());
            }
        }
        let n = s.recorded;
        self.wait_durable(s, n)
    }
}
