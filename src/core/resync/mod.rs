//! Resynchronization (brief rule 6): ship what the change-log names to a
//! mirror taken back (the primary's `attach_mirror`), through the same
//! ordered stream as new writes, while the primary keeps serving.
//!
//! Order: namespace first (every touched path, parents before children,
//! made on the mirror what it is here: absent, a file of the right length,
//! or a directory; a touched directory's whole subtree is walked and its
//! files copied), then the changed blocks in file order, batched into
//! copies of up to 256 KiB. Each copy is read and queued with its file
//! locked against writes, so a later write of the same block is queued
//! after it and the mirror never goes back in time. When everything
//! shipped is durable on the mirror, the change-log is cleared (unless the
//! mirror was lost meanwhile: then the pair is back in change tracking and
//! the log still names everything). Running it again changes nothing.
//!
//! A full resync (`full`) does the same for every file and directory of
//! every filespace, removing what the mirror has and the primary does not:
//! it builds a mirror from an empty directory.

//!
//! The engine drives a [`ResyncLink`]: the primary's end of the stream, one
//! step at a time, with the link's clock. The runtime's link is the
//! primary's threads; the simulator's is its virtual world, so the same
//! engine runs there under crashes, disconnects and writers.

mod changes;
mod renames;

pub use changes::ChangeSet;
pub(crate) use changes::{contiguous_after, runs};
pub(crate) use renames::renamed_since;
pub use renames::Renamed;
use renames::{translate, Facts, Window};

use crate::error::{Error, Result};
use crate::protocol::path::{EntryKind, FsPath, RelPath};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Renames a resync's journal keeps: past it the oldest go, and a resync
/// that still names what it shipped before them stops with an error
/// (nothing cleared; the next one starts afresh). The change-log keeps the
/// journal ([`crate::durable::changelog`]); the limit is the resync's rule.
pub const MAX_JOURNAL: usize = 1 << 16;

/// What a path is on the primary, as a resync found it and shipped it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalEntry {
    Absent,
    File { len: u64 },
    Dir { children: Vec<(String, EntryKind)> },
}

#[derive(Clone, Debug, Default)]
pub struct ResyncOptions {
    /// Every file of every filespace, not only the change-log's.
    pub full: bool,
    /// Bytes per second of block copies, at most (`None`: as fast as it goes).
    pub max_rate: Option<u64>,
    /// How long to wait at the end for the mirror to make everything durable.
    pub finish_timeout: Option<Duration>,
    /// Bytes shipped between durable progress records (default 64 MiB).
    pub checkpoint_bytes: Option<u64>,
    /// Compare every listed block's hash on both sides and ship only those
    /// that differ (extents recovered from a crash are always compared).
    pub compare: bool,
    /// Only the simulator sets this (see [`PlantedBug`]).
    pub planted: Option<crate::core::PlantedBug>,
}

/// Live counters, read by status probes while the resync runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub paths_done: AtomicU64,
    pub blocks_total: AtomicU64,
    pub blocks_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub started_unix_ms: AtomicU64,
    /// Extra passes over paths renamed while the resync still owed them.
    pub passes: AtomicU64,
    /// Bytes a second of block copies (0: no limit). Set from the options
    /// at the start; a later `filerep recover --max-rate` changes it while
    /// the resync runs.
    pub max_rate: AtomicU64,
    /// Renames kept moving what the resync owed faster than it shipped: it
    /// holds new renames while it finishes ([`HOLD_AFTER_PASSES`]).
    pub renames_held: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgressSnapshot {
    pub paths_done: u64,
    pub blocks_total: u64,
    pub blocks_done: u64,
    pub bytes_done: u64,
    pub started_unix_ms: u64,
    /// Extra passes so far (absent in older answers: 0).
    #[serde(default)]
    pub passes: u64,
    /// Renames outpaced the resync: it holds new ones while it finishes.
    #[serde(default)]
    pub renames_held: bool,
}

impl Progress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            paths_done: self.paths_done.load(Ordering::Relaxed),
            blocks_total: self.blocks_total.load(Ordering::Relaxed),
            blocks_done: self.blocks_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            started_unix_ms: self.started_unix_ms.load(Ordering::Relaxed),
            passes: self.passes.load(Ordering::Relaxed),
            renames_held: self.renames_held.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ResyncReport {
    pub full: bool,
    pub paths: u64,
    pub blocks: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Of which: waiting for the mirror to make everything durable.
    pub durable_wait_seconds: f64,
    /// Blocks found equal on both sides by compare mode (not shipped).
    pub compared_equal: u64,
    /// Extra passes over what renames moved while the resync still owed it.
    pub extra_passes: u64,
    /// Of which with new renames held.
    pub held_passes: u64,
}

/// Extra passes after which new renames are held while the resync finishes:
/// each pass ships only what renames moved before it was shipped, so a
/// workload renaming faster than the resync ships can make passes
/// without end, each one small.
pub const HOLD_AFTER_PASSES: u64 = 8;

/// How long one hold lasts at most (the primary lets renames go by itself
/// then). Renames are held only once what is left fits in one hold at the
/// rate limit: until then passes go on, each shipping what it reaches
/// before the next rename moves the rest.
pub const HOLD_MS: u64 = 2000;

/// Extra passes a resync takes before it gives up (it holds renames long
/// before: only a hold that keeps running out gets here).
pub const MAX_EXTRA_PASSES: u64 = 1000;

/// What the resync engine drives: the primary's end of the stream, one
/// step at a time. The runtime implements it over its threads and socket
/// ([`Primary`]); the fault simulator implements it on its virtual clock,
/// so the same engine runs there under crashes, disconnects and writers.
/// Blocking steps (`hashes`, `checkpoint`, `finish`) wait for the mirror.
pub trait ResyncLink {
    /// Milliseconds on the link's clock (real or virtual).
    fn now_ms(&self) -> u64;
    /// Let `ms` pass: the resync keeps under its rate limit.
    fn pause(&mut self, ms: u64);
    fn block_size(&self) -> u32;
    fn filespace_count(&self) -> u16;
    /// What the change-log says differs; an error if there is no change
    /// tracking or no mirror taken back.
    /// What to ship (`full`: every path is owed, renames included).
    fn change_set(&mut self, full: bool) -> Result<ChangeSet>;
    /// What renames moved while the resync still owed it, as owed now:
    /// another pass.
    fn redo(&mut self) -> Result<ChangeSet>;
    /// The position of the primary's rename journal: renames made so far
    /// during this resync (what the resync ships is named by it).
    fn renames_at(&mut self) -> u64;
    /// The journal's position while the last `reconcile` or `copy` read
    /// what it shipped, with what it read claimed (exact: no rename of it
    /// was between), if the link knows it; taken once.
    fn step_renames_at(&mut self) -> Option<u64> {
        None
    }
    /// The renames made from position `pos` on, in order; `None` when the
    /// journal no longer reaches back that far.
    fn renames_since(&mut self, pos: u64) -> Option<Vec<Renamed>>;
    /// Record the children of a directory the resync walks as owed,
    /// durably (a directory whole, a file block by block).
    fn owe(&mut self, children: &[(FsPath, EntryKind)]) -> Result<()>;
    /// Hold new renames on the primary for `ms` (0: let them go): the
    /// primary lets them go by itself when the time is up.
    fn hold(&mut self, ms: u64) -> Result<()>;
    /// A full resync's walk is done: renames owe only what is still named.
    fn walked(&mut self);
    /// What `p` is here, unlocked (a peek: `reconcile` looks again locked).
    fn entry_kind(&mut self, p: &FsPath) -> Result<Option<EntryKind>>;
    /// Ship what one path (`None`: the filespace root) is here, locked
    /// against calls; with `prune`, the mirror keeps only its children.
    fn reconcile(&mut self, fs: u16, path: Option<&RelPath>, prune: bool) -> Result<LocalEntry>;
    /// Queue a copy of blocks `first..first + count` (at most 256 KiB),
    /// read and queued while the step claims the file (no write of it runs
    /// meanwhile); the bytes queued. `ahead`: the blocks right after it
    /// that this resync copies next, which its activity cover may take in
    /// the same record.
    fn copy(&mut self, p: &FsPath, first: u64, count: u64, ahead: u64) -> Result<u64>;
    /// Hashes of `count` blocks from `first` here and on the mirror, at
    /// the same point of the stream; `None` if the file is gone here.
    fn hashes(&mut self, p: &FsPath, first: u64, count: u32, timeout: Duration)
        -> Result<Option<(Vec<u64>, Vec<u64>)>>;
    /// Send whatever is queued.
    fn send(&mut self);
    /// Whether the resync may go on (its mirror still streams); checked
    /// while it waits to keep under its rate.
    fn check(&mut self) -> Result<()>;
    /// Ask the mirror to make `p` durable; the flush's sequence number.
    fn flush(&mut self, p: &FsPath) -> Result<Option<u64>>;
    /// Once `synced` is synced on the mirror, record durably that `blocks`
    /// and `paths` no longer differ (unless the mirror was lost).
    fn checkpoint(
        &mut self,
        synced: u64,
        flushed: &BTreeSet<FsPath>,
        blocks: &BTreeMap<FsPath, BTreeSet<u64>>,
        paths: &[FsPath],
        as_of: u64,
        timeout: Duration,
    ) -> Result<()>;
    /// Everything shipped is durable on the mirror: clear the change-log;
    /// `false` (nothing cleared) if a rename owes another pass.
    fn finish(&mut self, synced: Option<u64>, flushed: &BTreeSet<FsPath>, timeout: Duration) -> Result<bool>;
}

struct Run<'a> {
    p: &'a mut dyn ResyncLink,
    opts: &'a ResyncOptions,
    progress: &'a Progress,
    bs: u64,
    started_ms: u64,
    /// Where the journal stood when the resync took its plan.
    start_pos: u64,
    /// Record a walked directory's children as owed before it counts as
    /// done (not during a full resync's first walk: everything is owed).
    expand: bool,
    /// Paths this pass made right on the mirror already (files copied
    /// whole, directories walked), with the window that did it.
    walked: BTreeMap<FsPath, Window>,
    /// Every file a copy or a length went to, for the final flushes.
    written: Vec<(Window, FsPath)>,
    /// Copies queued since the last send.
    queued: usize,
    /// Blocks compare mode found equal on both sides (not shipped).
    compared_equal: u64,
    /// Since the last checkpoint: what is shipped, and the bytes of it.
    facts: Facts,
    since_checkpoint: u64,
    /// The journal's position at the last checkpoint.
    checkpoint_pos: u64,
    /// This pass's blocks per file (extents expanded), to clear as done.
    listed: BTreeMap<FsPath, BTreeSet<u64>>,
    /// The rate in force (bytes a second, 0: none), since when, and the
    /// bytes shipped by then.
    rate: (u64, u64, u64),
    /// New renames were held (see [`HOLD_AFTER_PASSES`]).
    holding: bool,
}

/// Bytes shipped between durable progress records.
const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Renames between durable progress records (each checkpoint translates
/// what it clears through them).
const CHECKPOINT_RENAMES: u64 = 1024;

/// Copies queued before they are sent together (one vectored write).
const SEND_EVERY: usize = 16;

impl Run<'_> {
    fn pos(&mut self) -> u64 {
        self.p.renames_at()
    }

    fn wrote(&mut self, file: &FsPath, w: Window) {
        if self.facts.written.last().is_some_and(|(lw, f)| f == file && lw.at == w.at) {
            return;
        }
        self.facts.written.push((w, file.clone()));
        self.written.push((w, file.clone()));
    }

    fn reconcile(&mut self, fs: u16, path: Option<&RelPath>, prune: bool) -> Result<(LocalEntry, Window)> {
        let since = self.pos();
        let local = self.p.reconcile(fs, path, prune)?;
        let w = match self.p.step_renames_at() {
            Some(at) => Window { since: at, at },
            None => Window { since, at: self.pos() },
        };
        if let (LocalEntry::File { .. }, Some(path)) = (&local, path) {
            self.wrote(&FsPath::new(fs, path.clone()), w);
        }
        self.progress.paths_done.fetch_add(1, Ordering::Relaxed);
        Ok((local, w))
    }

    /// One path the plan names: made what it is here, a directory walked
    /// whole with `subtree`, a file copied whole.
    fn touched(&mut self, path: &FsPath, subtree: bool) -> Result<()> {
        if let Some(w) = self.walked.get(path).copied() {
            self.facts.paths.push((w, path.clone()));
            return Ok(());
        }
        // A peek: the reconcile itself looks again with the path locked,
        // and anything that changes meanwhile streams to the mirror anyway.
        match self.p.entry_kind(path)? {
            Some(EntryKind::Dir) if subtree => self.tree(path.filespace, Some(&path.path))?,
            Some(EntryKind::File) => {
                // Copied whole: the name's fact holds only if no rename of
                // it came between its reconcile and its last copy.
                let whole = self.whole_file(path.filespace, &path.path)?;
                self.facts.paths.push((whole, path.clone()));
            }
            _ => {
                let (_, w) = self.reconcile(path.filespace, Some(&path.path), false)?;
                self.facts.paths.push((w, path.clone()));
            }
        }
        self.checkpoint(false)
    }

    /// A directory and everything under it, pruned on the mirror to what is
    /// here. In a pass, its children are recorded as owed before the
    /// directory counts as done, and each counts as done once copied: a
    /// rename halfway through moves only what is left.
    fn tree(&mut self, fs: u16, dir: Option<&RelPath>) -> Result<()> {
        let since = self.pos();
        let me = dir.map(|d| FsPath::new(fs, d.clone()));
        let (local, w) = self.reconcile(fs, dir, true)?;
        let LocalEntry::Dir { children } = local else {
            // Gone or replaced meanwhile: its own change is queued.
            if let Some(me) = me {
                self.facts.paths.push((Window { since, at: w.at }, me));
            }
            return Ok(());
        };
        let mut kids = Vec::with_capacity(children.len());
        for (name, kind) in children {
            let child = match dir {
                Some(d) => d.join(&name)?,
                None => RelPath::top(&name)?,
            };
            if kind != EntryKind::Other {
                kids.push((FsPath::new(fs, child), kind));
            }
        }
        if self.expand && !kids.is_empty() {
            self.p.owe(&kids)?;
        }
        let w = Window { since, at: self.pos() };
        if let Some(me) = me {
            self.walked.insert(me.clone(), w);
            if self.expand {
                self.facts.paths.push((w, me));
            }
        }
        for (child, kind) in kids {
            match kind {
                EntryKind::Dir => self.tree(fs, Some(&child.path))?,
                _ => {
                    // Owed by name (whole) and block by block: each copy is
                    // a fact of its own; the name's holds only if no rename
                    // of it came before its last copy (else a later pass
                    // copies it whole: it may have grown over stale data).
                    let whole = self.whole_file(fs, &child.path)?;
                    if self.expand {
                        self.facts.paths.push((whole, child));
                    }
                }
            }
            // A full resync's first walk records its progress at its end,
            // in one checkpoint: nothing it shipped is owed by name before.
            if self.expand {
                self.checkpoint(false)?;
            }
        }
        Ok(())
    }

    /// One file, made the right length and copied whole: the window from
    /// its reconcile to its last copy (exact when the link knows where each
    /// step read: the throttle's pauses between copies are not in it).
    fn whole_file(&mut self, fs: u16, path: &RelPath) -> Result<Window> {
        let file = FsPath::new(fs, path.clone());
        let (local, rw) = self.reconcile(fs, Some(path), false)?;
        let mut end = rw.at;
        if let LocalEntry::File { len } = local {
            let n = len.div_ceil(self.bs);
            self.progress.blocks_total.fetch_add(n, Ordering::Relaxed);
            let blocks = if self.opts.compare {
                let differ = self.differing(&file, (0..n).collect())?;
                end = self.pos();
                differ
            } else {
                (0..n).collect()
            };
            if let Some(at) = self.copy_runs(&file, blocks)? {
                end = end.max(at);
            }
        }
        let w = Window { since: rw.since, at: end };
        self.file_done(&file, w);
        self.walked.insert(file, w);
        Ok(w)
    }

    /// Copy the listed blocks, consecutive ones together (up to 256 KiB);
    /// each copy is a fact of its own. Where the last one's window ended.
    fn copy_runs(&mut self, file: &FsPath, blocks: BTreeSet<u64>) -> Result<Option<u64>> {
        let mut last = None;
        let per_copy = (crate::protocol::MAX_WRITE_AT as u64 / self.bs).max(1);
        let runs = runs(blocks, per_copy);
        let ahead = contiguous_after(&runs);
        for (&(first, count), ahead) in runs.iter().zip(ahead) {
            let since = self.pos();
            let bytes = self.p.copy(file, first, count, ahead)?;
            let w = match self.p.step_renames_at() {
                Some(at) => Window { since: at, at },
                None => Window { since, at: self.pos() },
            };
            self.facts.copies.push((w, file.clone(), first, first + count));
            last = Some(w.at);
            if bytes > 0 {
                self.wrote(file, w);
            }
            self.since_checkpoint += bytes;
            self.queued += 1;
            if self.queued >= SEND_EVERY {
                self.p.send();
                self.queued = 0;
            }
            self.progress.blocks_done.fetch_add(count, Ordering::Relaxed);
            let done = self.progress.bytes_done.fetch_add(bytes, Ordering::Relaxed) + bytes;
            self.throttle(done)?;
        }
        Ok(last)
    }

    /// Of `blocks`, those whose hash differs between here and the mirror
    /// (compare mode); the others count as done.
    fn differing(&mut self, file: &FsPath, blocks: BTreeSet<u64>) -> Result<BTreeSet<u64>> {
        let mut out = BTreeSet::new();
        let timeout = self.opts.finish_timeout.unwrap_or(Duration::from_secs(60));
        for (first, count) in runs(blocks, crate::protocol::MAX_HASH_BLOCKS as u64) {
            let count = count as u32;
            // Queued copies go first: the hashes must see them.
            self.p.send();
            match self.p.hashes(file, first, count, timeout)? {
                Some((local, remote)) => {
                    let mut same = 0u64;
                    for (i, (a, b)) in local.iter().zip(&remote).enumerate() {
                        if a == b {
                            same += 1;
                        } else {
                            out.insert(first + i as u64);
                        }
                    }
                    self.progress.blocks_done.fetch_add(same, Ordering::Relaxed);
                    self.compared_equal += same;
                }
                // Gone here meanwhile: its removal streams to the mirror.
                None => {
                    self.progress.blocks_done.fetch_add(count as u64, Ordering::Relaxed);
                }
            }
        }
        Ok(out)
    }

    /// `file`'s listed blocks are all shipped (copied, equal, or past its
    /// end) within `w`.
    fn file_done(&mut self, file: &FsPath, w: Window) {
        if let Some(b) = self.listed.get(file) {
            self.facts.blocks.push((w, file.clone(), b.clone()));
        }
    }

    /// Record progress durably once enough has been shipped, enough renames
    /// made, or `force`: flush the files written since, and once the
    /// mirror has them, mark what is shipped, named as it is now, as no
    /// longer differing.
    fn checkpoint(&mut self, force: bool) -> Result<()> {
        let renames = self.pos().saturating_sub(self.checkpoint_pos);
        if !force
            && self.since_checkpoint < self.opts.checkpoint_bytes.unwrap_or(CHECKPOINT_BYTES)
            && renames < CHECKPOINT_RENAMES
        {
            return Ok(());
        }
        if self.facts.is_empty() {
            return Ok(());
        }
        let base = self.facts.oldest().unwrap_or(self.start_pos);
        let journal = self.journal(base)?;
        let as_of = base + journal.len() as u64;
        self.checkpoint_pos = as_of;
        let name = |w: Window, f: &FsPath| translate(&journal, base, w, f);
        let flushed: BTreeSet<FsPath> =
            std::mem::take(&mut self.facts.written).into_iter().filter_map(|(w, f)| name(w, &f)).collect();
        let mut blocks: BTreeMap<FsPath, BTreeSet<u64>> = BTreeMap::new();
        for (w, f, b) in &self.facts.blocks {
            if let Some(f) = name(*w, f) {
                blocks.entry(f).or_default().extend(b.iter().copied());
            }
        }
        for (w, f, first, end) in &self.facts.copies {
            if let Some(f) = name(*w, f) {
                blocks.entry(f).or_default().extend(*first..*end);
            }
        }
        let paths: Vec<FsPath> =
            self.facts.paths.iter().filter_map(|(w, p)| name(*w, p)).collect::<BTreeSet<_>>().into_iter().collect();
        let Some(seq) = flush_all(self.p, &flushed)? else { return Ok(()) };
        let timeout = self.opts.finish_timeout.unwrap_or(Duration::from_secs(60));
        self.p.checkpoint(seq, &flushed, &blocks, &paths, as_of, timeout)?;
        self.facts = Facts::default();
        self.since_checkpoint = 0;
        Ok(())
    }

    /// The renames from position `base` on.
    fn journal(&mut self, base: u64) -> Result<Vec<Renamed>> {
        self.p.renames_since(base).ok_or_else(|| {
            Error::Rejected(format!(
                "more than {} renames were made while the resync ran: what it shipped can no longer be named; \
                 run filerep recover again (nothing is lost: the change-log still names it)",
                MAX_JOURNAL
            ))
        })
    }

    /// Keep the copies under `max_rate` on average, in short pauses so a
    /// lost mirror ends the resync promptly.
    fn throttle(&mut self, bytes_done: u64) -> Result<()> {
        let rate = self.progress.max_rate.load(Ordering::Relaxed);
        if rate != self.rate.0 {
            // A new rate counts from now: the average before it is history.
            self.rate = (rate, self.p.now_ms(), bytes_done);
            tracing::info!(bytes_per_second = rate, "resync: rate changed");
        }
        let (rate, since_ms, base) = self.rate;
        if rate > 0 {
            let due_ms = ((bytes_done - base) as u128 * 1000 / rate as u128) as u64;
            loop {
                let elapsed = self.p.now_ms().saturating_sub(since_ms);
                if due_ms <= elapsed {
                    break;
                }
                self.p.check()?;
                self.p.pause((due_ms - elapsed).min(50));
            }
        }
        Ok(())
    }

    /// One pass over what the change-log owes: namespace first (a prefix
    /// sorts before what it contains), then blocks in file order.
    fn pass(&mut self, set: &ChangeSet) -> Result<()> {
        // Blocks named exactly or by their extent, per file, in file order.
        let blocks = set.all_named_blocks();
        // Blocks named only by an extent may well be unchanged: compared first.
        let by_extent = set.blocks_named_by_extents();
        self.listed = blocks.clone();
        self.walked.clear();
        for (path, subtree) in &set.touched {
            self.touched(path, *subtree)?;
        }
        let listed: u64 =
            blocks.iter().filter(|(f, _)| !self.walked.contains_key(*f)).map(|(_, b)| b.len() as u64).sum();
        self.progress.blocks_total.fetch_add(listed, Ordering::Relaxed);
        self.checkpoint(true)?;
        for (file, wanted) in blocks {
            if let Some(w) = self.walked.get(&file).copied() {
                self.file_done(&file, w);
                continue;
            }
            let since = self.pos();
            // Its length first (writes may have extended or shortened it).
            if let (LocalEntry::File { len }, _) = self.reconcile(file.filespace, Some(&file.path), false)? {
                let n = len.div_ceil(self.bs);
                let (inside, past): (BTreeSet<u64>, BTreeSet<u64>) = wanted.into_iter().partition(|b| *b < n);
                self.progress.blocks_done.fetch_add(past.len() as u64, Ordering::Relaxed);
                let compare_all = self.opts.compare;
                let (compare, mut copy): (BTreeSet<u64>, BTreeSet<u64>) = inside
                    .into_iter()
                    .partition(|b| compare_all || by_extent.get(&file).is_some_and(|x| x.contains(b)));
                copy.extend(self.differing(&file, compare)?);
                self.copy_runs(&file, copy)?;
            } else {
                self.progress.blocks_done.fetch_add(wanted.len() as u64, Ordering::Relaxed);
            }
            let w = Window { since, at: self.pos() };
            self.file_done(&file, w);
            self.checkpoint(false)?;
        }
        Ok(())
    }

    /// Passes over what renames moved until the change-log is cleared:
    /// the extra passes, those with renames held, and when shipping ended
    /// (ms on the link's clock, before the final wait for durability).
    fn passes(&mut self) -> Result<(u64, u64, u64)> {
        let (mut extra, mut held) = (0, 0);
        loop {
            // Progress first: what is checkpointed is no longer owed, so the
            // next pass holds only what renames moved before it was shipped.
            self.checkpoint(true)?;
            let mut redo = self.p.redo()?;
            let hold = extra >= HOLD_AFTER_PASSES && !redo.is_empty() && self.fits_one_hold(&redo);
            self.progress.renames_held.store(hold, Ordering::Relaxed);
            if hold {
                if !self.holding {
                    tracing::warn!(
                        passes = extra,
                        hold_ms = HOLD_MS,
                        "resync: renames keep moving what it owes; holding new renames while it finishes"
                    );
                }
                // Again before each pass: a hold lasts HOLD_MS at most.
                self.p.hold(HOLD_MS)?;
                self.holding = true;
                // What renames moved before the hold took hold.
                redo.merge(self.p.redo()?);
            }
            if redo.is_empty() {
                let shipped = self.p.now_ms().saturating_sub(self.started_ms);
                if self.finish()? {
                    return Ok((extra, held, shipped));
                }
                continue;
            }
            extra += 1;
            held += hold as u64;
            self.progress.passes.store(extra, Ordering::Relaxed);
            if extra > MAX_EXTRA_PASSES {
                return Err(Error::Rejected(format!(
                    "the resync took {MAX_EXTRA_PASSES} extra passes over what renames moved while it still owed it, \
                     renames held or not: run filerep recover again when fewer renames run"
                )));
            }
            tracing::info!(
                paths = redo.touched.len(),
                files = redo.blocks.len(),
                pass = extra,
                held = self.holding,
                "resync: another pass over what renames moved"
            );
            self.pass(&redo)?;
        }
    }

    /// Whether `set` ships within one hold at the rate in force.
    fn fits_one_hold(&self, set: &ChangeSet) -> bool {
        let rate = self.progress.max_rate.load(Ordering::Relaxed);
        rate == 0 || set.named_blocks().saturating_mul(self.bs) <= rate.saturating_mul(HOLD_MS) / 1000
    }

    /// Everything shipped is durable on the mirror: one flush per file
    /// written (named as it is now), then the change-log is cleared;
    /// `false` if a rename owes another pass first.
    fn finish(&mut self) -> Result<bool> {
        let journal = self.journal(self.start_pos)?;
        let base = self.start_pos;
        let flushed: BTreeSet<FsPath> =
            self.written.iter().filter_map(|(w, f)| translate(&journal, base, *w, f)).collect();
        let synced = flush_all(self.p, &flushed)?;
        // With no file to flush (only namespace changes), the mirror's own checkpoint is waited for instead.
        self.p.finish(synced, &flushed, self.opts.finish_timeout.unwrap_or(Duration::from_secs(60)))
    }
}

/// Ask the mirror to make each file durable; the last flush's number.
fn flush_all(p: &mut dyn ResyncLink, files: &BTreeSet<FsPath>) -> Result<Option<u64>> {
    let mut last = None;
    for f in files {
        last = p.flush(f)?.or(last);
    }
    Ok(last)
}

/// The engine itself, over any [`ResyncLink`].
pub fn run_on(p: &mut dyn ResyncLink, opts: &ResyncOptions, progress: &Progress) -> Result<ResyncReport> {
    let set = p.change_set(opts.full)?;
    let span = tracing::info_span!("resync", full = opts.full);
    let _e = span.enter();
    let bs = p.block_size() as u64;
    let started_ms = p.now_ms();
    let filespaces = p.filespace_count();
    let start_pos = p.renames_at();
    let mut run = Run {
        p,
        opts,
        progress,
        bs,
        started_ms,
        start_pos,
        expand: !opts.full,
        walked: BTreeMap::new(),
        written: Vec::new(),
        queued: 0,
        compared_equal: 0,
        facts: Facts::default(),
        since_checkpoint: 0,
        checkpoint_pos: start_pos,
        listed: BTreeMap::new(),
        rate: (opts.max_rate.unwrap_or(0), started_ms, 0),
        holding: false,
    };
    progress.max_rate.store(opts.max_rate.unwrap_or(0), Ordering::Relaxed);
    if opts.full {
        for fs in 0..filespaces {
            run.tree(fs, None)?;
        }
        // The walk covered everything the change-log named: recorded done
        // once durable, so renames from here on (databases rename all the
        // time) owe another pass only for what is named again.
        run.p.walked();
        run.expand = true;
        if opts.planted != Some(crate::core::PlantedBug::FullResyncWithoutWalkCheckpoint) {
            let w = Window { since: start_pos, at: run.pos() };
            run.facts.paths.extend(set.touched.keys().map(|p| (w, p.clone())));
            for (f, bs) in &set.blocks {
                run.facts.blocks.push((w, f.clone(), bs.clone()));
            }
            for (f, all) in set.blocks_named_by_extents() {
                run.facts.blocks.push((w, f, all));
            }
        }
    } else {
        tracing::info!(paths = set.touched.len(), files = set.blocks.len(), "resync: shipping the change-log");
        run.pass(&set)?;
    }
    // Renames of what the resync still owed moved it, on the mirror and in
    // the change-log alike: each rename's share gets another pass, until the
    // change-log can be cleared with nothing owed.
    let passes = run.passes();
    if run.holding {
        progress.renames_held.store(false, Ordering::Relaxed);
        // A finished resync let them go; a failed one lets them go now (or
        // the primary does when the hold runs out, if it cannot be told).
        if passes.is_err() {
            let _ = run.p.hold(0);
        }
    }
    let (extra_passes, held_passes, shipped) = passes?;
    let s = progress.snapshot();
    let total_ms = run.p.now_ms().saturating_sub(run.started_ms);
    Ok(ResyncReport {
        full: opts.full,
        paths: s.paths_done,
        blocks: s.blocks_done,
        bytes: s.bytes_done,
        seconds: total_ms as f64 / 1000.0,
        durable_wait_seconds: total_ms.saturating_sub(shipped) as f64 / 1000.0,
        compared_equal: run.compared_equal,
        extra_passes,
        held_passes,
    })
}

#[cfg(test)]
mod tests;
