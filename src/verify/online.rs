//! Online verification (`filerep verify`, Greenplum's gpcheckmirrorseg):
//! compare the mirror with the primary block by block while the pair
//! streams and serves writes, and optionally repair what differs.
//!
//! It runs in the acting primary and asks the mirror through the stream
//! itself, so every answer describes the same point of the stream as the
//! primary's own reading:
//! - a directory is listed here and a ListRequest queued with the
//!   namespace locked: a create, unlink, rename or directory change is in
//!   both listings or in neither;
//! - a file's blocks are hashed here and a HashRequest queued with the
//!   file locked against writes (as compare-mode resync does), in ranges,
//!   the last one reaching one block past the end so that a longer mirror
//!   copy shows. The mirror answers after applying everything before it.
//!
//! So a write racing the verification is either before a request on both
//! sides or after it on both: no false mismatches under load. Repairs go
//! through the stream too (Reconcile frames for lengths and directories,
//! block copies read and queued with the file locked, then flushes), so
//! they never go back in time either (brief rule 6).

use crate::error::Result;
use crate::io::disk::{EntryKind, FsPath, OpenMode};
use crate::protocol::path::RelPath;
use crate::protocol::{listing_hash, ListedKind, ListingBody, MAX_WRITE_AT};
use crate::runtime::primary::{HashTicket, LocalEntry, Primary};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Blocks per hash request: the file stays locked against writes while
/// they are read and hashed here (4 MiB of 32 KiB blocks, a few ms).
pub const RANGE_BLOCKS: u32 = 128;
/// Hash requests in flight per file, so both sides hash at once.
const PIPELINE: usize = 4;
/// Repair copies queued before they are sent together.
const SEND_EVERY: usize = 16;
/// Mismatch rows kept in a report, and block runs kept per row; the rest
/// are counted only. Bounds the report to well under a control message.
pub const MAX_ROWS: usize = 4096;
pub const MAX_RUNS_PER_ROW: usize = 64;

#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Ship every mismatching block (and fix lengths and directories).
    pub repair: bool,
    /// How long to wait for any one answer from the mirror.
    pub timeout: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { repair: false, timeout: Duration::from_secs(60) }
    }
}

/// Live counters, read by status probes while the verification runs.
#[derive(Debug, Default)]
pub struct VerifyProgress {
    /// Estimated from a walk of the primary before the comparison starts.
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub files_done: AtomicU64,
    pub dirs_done: AtomicU64,
    pub blocks_done: AtomicU64,
    pub bytes_done: AtomicU64,
    /// Mismatch rows found, and repaired, so far.
    pub mismatches: AtomicU64,
    pub repaired: AtomicU64,
    pub started_unix_ms: AtomicU64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyProgressSnapshot {
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub dirs_done: u64,
    pub blocks_done: u64,
    pub bytes_done: u64,
    pub mismatches: u64,
    pub repaired: u64,
    pub started_unix_ms: u64,
}

impl VerifyProgress {
    pub fn snapshot(&self) -> VerifyProgressSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VerifyProgressSnapshot {
            files_total: l(&self.files_total),
            bytes_total: l(&self.bytes_total),
            files_done: l(&self.files_done),
            dirs_done: l(&self.dirs_done),
            blocks_done: l(&self.blocks_done),
            bytes_done: l(&self.bytes_done),
            mismatches: l(&self.mismatches),
            repaired: l(&self.repaired),
            started_unix_ms: l(&self.started_unix_ms),
        }
    }
}

/// What differs at one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// Blocks of a file on both sides differ (or the mirror's copy is
    /// longer or shorter: its blocks past the primary's end count).
    Blocks,
    /// The primary has it, the mirror does not.
    MissingOnMirror,
    /// The mirror has it, the primary does not.
    ExtraOnMirror,
    /// A file on one side, a directory (or something else) on the other.
    TypeDiffers,
    /// A directory's entries differ, and it is too large to name them.
    ListingDiffers,
}

impl MismatchKind {
    pub fn name(self) -> &'static str {
        match self {
            MismatchKind::Blocks => "blocks",
            MismatchKind::MissingOnMirror => "missing on mirror",
            MismatchKind::ExtraOnMirror => "extra on mirror",
            MismatchKind::TypeDiffers => "type differs",
            MismatchKind::ListingDiffers => "listing differs",
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub filespace: String,
    pub path: String,
    pub kind: MismatchKind,
    pub detail: String,
    /// Differing blocks as `(first, count)` runs (files only).
    pub blocks: Vec<(u64, u64)>,
    /// Repaired by this run (`--repair`).
    pub repaired: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifySummary {
    pub repair: bool,
    /// Files and directories compared.
    pub files: u64,
    pub dirs: u64,
    /// Blocks compared (the one past each file's end included) and the
    /// primary's bytes they held.
    pub blocks: u64,
    pub bytes: u64,
    /// Mismatch rows, and the blocks they name.
    pub mismatches: u64,
    pub mismatching_blocks: u64,
    /// Of which repaired.
    pub repaired: u64,
    pub repaired_blocks: u64,
    pub millis: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyReport {
    pub summary: VerifySummary,
    /// At most [`MAX_ROWS`]; `truncated` says when more were found.
    pub mismatches: Vec<Mismatch>,
    pub truncated: bool,
}

/// How the children of one directory compare.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListingDiff {
    /// On the mirror only (files, directories, and any other entry).
    pub extra: Vec<(String, ListedKind)>,
    /// A file or directory here that is something else there: (name, here, there).
    pub type_differs: Vec<(String, ListedKind, ListedKind)>,
    /// What the mirror has at each of our files and directories, where known
    /// (`None`: absent there).
    pub there: BTreeMap<String, Option<ListedKind>>,
    /// The listings differ but the mirror's was too large to name the entries.
    pub uncertain: bool,
}

fn listed(k: EntryKind) -> ListedKind {
    match k {
        EntryKind::File => ListedKind::File,
        EntryKind::Dir => ListedKind::Dir,
        EntryKind::Other => ListedKind::Other,
    }
}

/// Compare our children (sorted by name) with the mirror's listing of the
/// same directory. Only files and directories are replicated: other
/// entries here are ignored, other entries there are extra.
pub fn compare_listing(here: &[(String, EntryKind)], there: &ListingBody) -> ListingDiff {
    let ours: Vec<(&str, ListedKind)> = here
        .iter()
        .map(|(n, k)| (n.as_str(), listed(*k)))
        .filter(|(_, k)| matches!(k, ListedKind::File | ListedKind::Dir))
        .collect();
    let mut d = ListingDiff::default();
    if there.hash == listing_hash(ours.iter().copied()) && there.others == 0 {
        d.there = ours.iter().map(|(n, k)| (n.to_string(), Some(*k))).collect();
        return d;
    }
    if !there.complete {
        d.uncertain = true;
        return d;
    }
    let theirs: BTreeMap<&str, ListedKind> = there.children.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    for (name, kind) in &ours {
        let t = theirs.get(name).copied();
        if let Some(t) = t.filter(|t| t != kind) {
            d.type_differs.push((name.to_string(), *kind, t));
        }
        d.there.insert(name.to_string(), t);
    }
    let mine: BTreeSet<&str> = ours.iter().map(|(n, _)| *n).collect();
    d.extra = there.children.iter().filter(|(n, _)| !mine.contains(n.as_str())).cloned().collect();
    d
}

/// `(first, count)` runs of consecutive blocks.
pub fn runs(blocks: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in blocks {
        match out.last_mut() {
            Some((first, n)) if *first + *n == *b => *n += 1,
            _ => out.push((*b, 1)),
        }
    }
    out
}

struct Verifier<'a> {
    p: &'a Primary,
    opts: &'a VerifyOptions,
    progress: &'a VerifyProgress,
    attachment: u64,
    names: Vec<String>,
    bs: u64,
    report: VerifyReport,
    /// Repairs: copies queued since the last send, and whether any ran.
    queued: usize,
    repaired_any: bool,
}

/// Compare every filespace of a streaming primary with its mirror (and
/// repair what differs with `opts.repair`). Fails, with the reason, if
/// the pair stops streaming meanwhile.
pub fn run(p: &Primary, opts: &VerifyOptions, progress: &VerifyProgress) -> Result<VerifyReport> {
    let started = Instant::now();
    let attachment = p.attachment();
    p.verify_check(attachment)?;
    let span = tracing::info_span!("verify", repair = opts.repair, generation = p.generation());
    let _e = span.enter();
    let unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    progress.started_unix_ms.store(unix_ms, Ordering::Relaxed);
    estimate(p, progress);
    tracing::info!(
        files = progress.files_total.load(Ordering::Relaxed),
        bytes = progress.bytes_total.load(Ordering::Relaxed),
        "verification started"
    );
    let mut v = Verifier {
        p,
        opts,
        progress,
        attachment,
        names: p.filespaces().iter().map(|f| f.name.clone()).collect(),
        bs: p.block_size() as u64,
        report: VerifyReport {
            summary: VerifySummary { repair: opts.repair, ..Default::default() },
            ..Default::default()
        },
        queued: 0,
        repaired_any: false,
    };
    for fs in 0..v.names.len() as u16 {
        v.dir(fs, None, false)?;
    }
    if v.repaired_any {
        // Every repair is durable on the mirror before it is reported. A
        // loss meanwhile returns from the wait too (the repairs then sit in
        // the change-log): the check says so.
        p.flush_queue();
        p.wait_all_durable(opts.timeout)?;
        p.verify_check(attachment)?;
    }
    let mut report = v.report;
    report.summary.millis = started.elapsed().as_millis() as u64;
    let s = &report.summary;
    tracing::warn!(
        files = s.files,
        blocks = s.blocks,
        mismatches = s.mismatches,
        mismatching_blocks = s.mismatching_blocks,
        repaired = s.repaired,
        "verification done"
    );
    Ok(report)
}

/// Files and bytes to compare, for the progress display (a walk without
/// locks: only an estimate).
fn estimate(p: &Primary, progress: &VerifyProgress) {
    let disk = p.disk();
    for fs in 0..p.filespaces().len() as u16 {
        let mut stack: Vec<Option<RelPath>> = vec![None];
        while let Some(dir) = stack.pop() {
            let Ok(children) = disk.list_dir(fs, dir.as_ref()) else { continue };
            for (name, kind) in children {
                let Ok(path) = (match &dir {
                    Some(d) => d.join(&name),
                    None => RelPath::top(&name),
                }) else {
                    continue;
                };
                match kind {
                    EntryKind::Dir => stack.push(Some(path)),
                    EntryKind::File => {
                        progress.files_total.fetch_add(1, Ordering::Relaxed);
                        let len = disk.open(&FsPath::new(fs, path), OpenMode::Existing).and_then(|f| f.len());
                        progress.bytes_total.fetch_add(len.unwrap_or(0), Ordering::Relaxed);
                    }
                    EntryKind::Other => {}
                }
            }
        }
    }
}

impl Verifier<'_> {
    fn shown(dir: Option<&RelPath>) -> String {
        dir.map_or_else(|| ".".to_string(), |d| d.as_str().to_string())
    }

    fn row(&mut self, fs: u16, path: String, kind: MismatchKind, detail: String, blocks: Vec<(u64, u64)>) -> usize {
        let s = &mut self.report.summary;
        s.mismatches += 1;
        s.mismatching_blocks += blocks.iter().map(|(_, n)| n).sum::<u64>();
        let (mut blocks, mut detail) = (blocks, detail);
        if blocks.len() > MAX_RUNS_PER_ROW {
            detail = format!("{detail} (the first {MAX_RUNS_PER_ROW} of {} runs listed)", blocks.len());
            blocks.truncate(MAX_RUNS_PER_ROW);
        }
        self.progress.mismatches.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(filespace = fs, %path, kind = kind.name(), %detail, "mirror differs");
        if self.report.mismatches.len() >= MAX_ROWS {
            self.report.truncated = true;
            return usize::MAX;
        }
        let filespace = self.names.get(fs as usize).cloned().unwrap_or_default();
        self.report.mismatches.push(Mismatch { filespace, path, kind, detail, blocks, repaired: false });
        self.report.mismatches.len() - 1
    }

    fn repaired(&mut self, row: usize, blocks: u64) {
        let s = &mut self.report.summary;
        s.repaired += 1;
        s.repaired_blocks += blocks;
        self.progress.repaired.fetch_add(1, Ordering::Relaxed);
        self.repaired_any = true;
        if let Some(r) = self.report.mismatches.get_mut(row) {
            r.repaired = true;
        }
    }

    /// One directory (`None`: the filespace root), then everything in it.
    /// `reported`: its parent's listing already named it as of another type there.
    fn dir(&mut self, fs: u16, dir: Option<&RelPath>, reported: bool) -> Result<()> {
        self.p.verify_check(self.attachment)?;
        let t = self.p.queue_listing(fs, dir)?;
        self.p.flush_queue();
        let there = self.p.await_listing(t.seq, self.opts.timeout)?;
        if t.kind != Some(EntryKind::Dir) {
            return Ok(()); // Gone or replaced here meanwhile: that change streams too.
        }
        self.report.summary.dirs += 1;
        self.progress.dirs_done.fetch_add(1, Ordering::Relaxed);
        let mut rows = Vec::new();
        let path_of = |name: &str| -> Result<RelPath> {
            Ok(match dir {
                Some(d) => d.join(name)?,
                None => RelPath::top(name)?,
            })
        };
        if there.entry != ListedKind::Dir && !reported {
            let (kind, detail) = match there.entry {
                ListedKind::Absent => (MismatchKind::MissingOnMirror, "directory".to_string()),
                k => (MismatchKind::TypeDiffers, format!("directory here, {} on the mirror", k.name())),
            };
            rows.push(self.row(fs, Self::shown(dir), kind, detail, Vec::new()));
        }
        let diff = if there.entry == ListedKind::Dir {
            compare_listing(&t.children, &there)
        } else {
            // Nothing there: every child is missing.
            ListingDiff { there: t.children.iter().map(|(n, _)| (n.clone(), None)).collect(), ..Default::default() }
        };
        if diff.uncertain {
            let detail = "the entries differ; too many to name them in one listing".to_string();
            rows.push(self.row(fs, Self::shown(dir), MismatchKind::ListingDiffers, detail, Vec::new()));
        }
        for (name, kind) in &diff.extra {
            let path = path_of(name).map(|p| p.as_str().to_string()).unwrap_or_else(|_| name.clone());
            let detail = format!("{} on the mirror only", kind.name());
            rows.push(self.row(fs, path, MismatchKind::ExtraOnMirror, detail, Vec::new()));
        }
        for (name, here, t) in &diff.type_differs {
            let detail = format!("{} here, {} on the mirror", here.name(), t.name());
            rows.push(self.row(fs, path_of(name)?.as_str().to_string(), MismatchKind::TypeDiffers, detail, Vec::new()));
        }
        let missing_children = diff.there.values().any(|k| k.is_none());
        if self.opts.repair && (there.entry != ListedKind::Dir || !rows.is_empty() || missing_children) {
            // One Reconcile: the directory exists on the mirror and keeps
            // only what is here (children still missing are made below).
            if let LocalEntry::Dir { .. } = self.p.resync_reconcile(fs, dir, true)? {
                self.repaired_any = true;
                for r in rows {
                    self.repaired(r, 0);
                }
            }
        }
        for (name, kind) in &t.children {
            let child = path_of(name)?;
            let known = !diff.uncertain;
            let there = diff.there.get(name).copied().flatten();
            match kind {
                EntryKind::Dir => self.dir(fs, Some(&child), known && there.is_some_and(|t| t != ListedKind::Dir))?,
                EntryKind::File => self.file(fs, &child, known.then_some(there))?,
                EntryKind::Other => {}
            }
        }
        Ok(())
    }

    /// One file. `there`: what the mirror has at its path, when its
    /// directory's listing says (`Some(None)`: nothing).
    fn file(&mut self, fs: u16, path: &RelPath, there: Option<Option<ListedKind>>) -> Result<()> {
        let file = FsPath::new(fs, path.clone());
        if let Some(t) = there.filter(|t| *t != Some(ListedKind::File)) {
            return self.file_absent_there(&file, t);
        }
        let mut differing = BTreeSet::new();
        let (mut next, mut queueing, mut gone) = (0u64, true, false);
        let mut inflight: VecDeque<HashTicket> = VecDeque::new();
        loop {
            while queueing && inflight.len() < PIPELINE {
                self.p.verify_check(self.attachment)?;
                // The range follows the file's size at the moment it is locked;
                // the last one takes the block past the end.
                let from = next;
                let pick = move |n: u64| {
                    let first = from.min(n);
                    (first, (n + 1 - first).min(RANGE_BLOCKS as u64) as u32)
                };
                match self.p.queue_hashes(&file, pick)? {
                    None => {
                        (queueing, gone) = (false, true);
                    }
                    Some(t) => {
                        next = t.first + t.local.len() as u64;
                        queueing = next <= t.blocks;
                        inflight.push_back(t);
                    }
                }
            }
            self.p.flush_queue();
            let Some(t) = inflight.pop_front() else { break };
            let remote = self.p.await_hashes(t.seq, self.opts.timeout)?;
            for (i, (a, b)) in t.local.iter().zip(&remote).enumerate() {
                if a != b {
                    differing.insert(t.first + i as u64);
                }
            }
            let s = &mut self.report.summary;
            s.blocks += t.local.len() as u64;
            s.bytes += t.bytes;
            self.progress.blocks_done.fetch_add(t.local.len() as u64, Ordering::Relaxed);
            self.progress.bytes_done.fetch_add(t.bytes, Ordering::Relaxed);
        }
        if gone {
            return Ok(()); // Removed here meanwhile: the removal streams to the mirror.
        }
        self.report.summary.files += 1;
        self.progress.files_done.fetch_add(1, Ordering::Relaxed);
        if differing.is_empty() {
            return Ok(());
        }
        let detail = format!("{} block(s) differ", differing.len());
        let row = self.row(fs, path.as_str().to_string(), MismatchKind::Blocks, detail, runs(&differing));
        if self.opts.repair && self.repair_file(&file, &differing)? {
            self.repaired(row, differing.len() as u64);
        }
        Ok(())
    }

    /// A file here that the mirror lacks (or has as something else): one
    /// row, no hashing; repaired by shipping the whole file.
    fn file_absent_there(&mut self, file: &FsPath, there: Option<ListedKind>) -> Result<()> {
        let len = match self.p.disk().open(file, OpenMode::Existing).and_then(|f| f.len()) {
            Ok(l) => l,
            Err(e) if e.kind == crate::io::disk::DiskErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.report.summary.files += 1;
        self.progress.files_done.fetch_add(1, Ordering::Relaxed);
        let n = len.div_ceil(self.bs);
        let blocks = if n > 0 { vec![(0, n)] } else { Vec::new() };
        let shown = file.path.as_str().to_string();
        let row = match there {
            None => {
                let detail = format!("file of {len} bytes");
                Some(self.row(file.filespace, shown, MismatchKind::MissingOnMirror, detail, blocks))
            }
            // Its row came with its directory's listing; the blocks count here.
            Some(_) => {
                self.report.summary.mismatching_blocks += n;
                None
            }
        };
        if self.opts.repair && self.repair_file(file, &(0..n).collect())? {
            match row {
                Some(r) => self.repaired(r, n),
                None => self.report.summary.repaired_blocks += n,
            }
        }
        Ok(())
    }

    /// Make the mirror's copy of `file` its length here (created if it is
    /// missing) and ship `blocks` (those still inside the file), each copy
    /// read and queued with the file locked, then a flush. False if the
    /// file is gone here meanwhile (its removal streams instead).
    fn repair_file(&mut self, file: &FsPath, blocks: &BTreeSet<u64>) -> Result<bool> {
        self.p.verify_check(self.attachment)?;
        let LocalEntry::File { len } = self.p.resync_reconcile(file.filespace, Some(&file.path), false)? else {
            return Ok(false);
        };
        let n = len.div_ceil(self.bs);
        let per_copy = (MAX_WRITE_AT as u64 / self.bs).max(1);
        let mut it = blocks.range(..n).copied().peekable();
        while let Some(first) = it.next() {
            let mut count = 1;
            while count < per_copy && it.peek() == Some(&(first + count)) {
                it.next();
                count += 1;
            }
            self.p.resync_copy(file, first, count)?;
            self.queued += 1;
            if self.queued >= SEND_EVERY {
                self.p.flush_queue();
                self.queued = 0;
            }
        }
        self.p.resync_flush(file)?;
        self.queued = 0;
        self.repaired_any = true;
        Ok(true)
    }
}

/// The state of a segment's verifications, as its status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyState {
    /// Which verification (counts up from 1 per segment process).
    pub id: u64,
    pub repair: bool,
    pub running: bool,
    pub progress: VerifyProgressSnapshot,
    /// Once done: the counts (the rows: `SegmentRequest::VerifyReport`).
    pub summary: Option<VerifySummary>,
    /// Why it stopped short, if it did.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kids(v: &[(&str, EntryKind)]) -> Vec<(String, EntryKind)> {
        v.iter().map(|(n, k)| (n.to_string(), *k)).collect()
    }

    fn listing(v: &[(&str, ListedKind)]) -> ListingBody {
        ListingBody::build(ListedKind::Dir, &v.iter().map(|(n, k)| (n.to_string(), *k)).collect::<Vec<_>>())
    }

    #[test]
    fn equal_listings_have_no_differences_and_others_here_are_ignored() {
        let here = kids(&[("a", EntryKind::File), ("d", EntryKind::Dir), ("link", EntryKind::Other)]);
        let d = compare_listing(&here, &listing(&[("a", ListedKind::File), ("d", ListedKind::Dir)]));
        assert_eq!(d.extra, vec![]);
        assert_eq!(d.type_differs, vec![]);
        assert!(!d.uncertain);
        assert_eq!(d.there.get("a"), Some(&Some(ListedKind::File)));
        assert_eq!(d.there.len(), 2);
    }

    #[test]
    fn extra_missing_and_type_differences_are_named() {
        let here = kids(&[("a", EntryKind::File), ("b", EntryKind::File), ("d", EntryKind::Dir)]);
        let there = listing(&[
            ("a", ListedKind::File),
            ("d", ListedKind::File),
            ("x", ListedKind::File),
            ("y", ListedKind::Other),
        ]);
        let d = compare_listing(&here, &there);
        assert_eq!(d.extra, vec![("x".to_string(), ListedKind::File), ("y".to_string(), ListedKind::Other)]);
        assert_eq!(d.type_differs, vec![("d".to_string(), ListedKind::Dir, ListedKind::File)]);
        assert_eq!(d.there.get("b"), Some(&None), "missing there");
        assert_eq!(d.there.get("d"), Some(&Some(ListedKind::File)));
    }

    #[test]
    fn a_cut_listing_that_differs_is_uncertain() {
        let mut there = listing(&[("a", ListedKind::File), ("b", ListedKind::File)]);
        there.children.truncate(1);
        there.complete = false;
        let d = compare_listing(&kids(&[("a", EntryKind::File)]), &there);
        assert!(d.uncertain && d.there.is_empty());
        // The same cut listing with an equal hash is known equal.
        let d = compare_listing(&kids(&[("a", EntryKind::File), ("b", EntryKind::File)]), &there);
        assert!(!d.uncertain && d.there.len() == 2);
    }

    #[test]
    fn runs_join_consecutive_blocks() {
        let b: BTreeSet<u64> = [1, 2, 3, 7, 9, 10].into_iter().collect();
        assert_eq!(runs(&b), vec![(1, 3), (7, 1), (9, 2)]);
        assert_eq!(runs(&BTreeSet::new()), vec![]);
    }
}
