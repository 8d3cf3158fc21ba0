//! The catalog's history, in a file of its own beside the catalog
//! (`catalog.json.history`), appended to, never rewritten on a transition:
//! a store of the catalog writes its new entries and the document, not
//! every entry there ever was (`docs/catalog.md` § History file).
//!
//! Format (all integers little-endian): the magic `FRHIST01`, then records
//! one after another, each
//!
//! | bytes | field |
//! |---:|---|
//! | 4 | body length B (at most 64 KiB) |
//! | 8 | the entry's sequence number (0 for the first entry ever recorded) |
//! | 8 | xxh3-64 of the 12 bytes before and the body |
//! | B | the body: the entry as JSON |
//!
//! The catalog document says how many entries were ever recorded
//! (`history_total`): that is the commit point. Records are appended and
//! synced before the document is stored, so a crash in between leaves
//! records at or past `history_total`, which readers ignore and the next
//! store cuts off. A torn or damaged record ends the file as far as a
//! reader goes. Every [`COMPACT_AT`] records the file is replaced whole by
//! the last [`MAX_HISTORY`] entries.

use super::catalog::MAX_HISTORY;
use super::files;
use crate::core::pair::HistoryEntry;
use crate::io::disk::{Disk, DiskError, DiskErrorKind, DiskResult, FsPath, OpenMode};
use crate::protocol::path::RelPath;
use xxhash_rust::xxh3::xxh3_64;

pub const MAGIC: [u8; 8] = *b"FRHIST01";
const RECORD_HEADER: usize = 20;
/// Longest record body (an entry is a few hundred bytes).
pub const MAX_RECORD: usize = 64 << 10;
/// Records in the file at which it is replaced by the last [`MAX_HISTORY`].
pub const COMPACT_AT: u64 = 2 * MAX_HISTORY as u64;

/// The history file of the catalog at `catalog`.
pub fn path_of(catalog: &FsPath) -> DiskResult<FsPath> {
    let name = format!("{}.history", catalog.path.as_str());
    let rel = RelPath::new(&name).map_err(|e| DiskError::new("history file name", &name, DiskErrorKind::Io, e))?;
    Ok(FsPath::new(catalog.filespace, rel))
}

/// One record as found in the file.
struct Found {
    seq: u64,
    body: std::ops::Range<usize>,
}

/// The records of a history file, in order, up to the first that is torn,
/// damaged or out of order; and whether the file starts with the magic.
fn parse(bytes: &[u8]) -> (Vec<Found>, bool) {
    if !bytes.starts_with(&MAGIC) {
        return (Vec::new(), false);
    }
    let mut found: Vec<Found> = Vec::new();
    let mut at = MAGIC.len();
    while bytes.len() - at >= RECORD_HEADER {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&bytes[at + 4..at + 12]);
        let seq = u64::from_le_bytes(seq);
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&bytes[at + 12..at + 20]);
        let body = at + RECORD_HEADER..at + RECORD_HEADER + len;
        let ordered = found.last().is_none_or(|f| seq > f.seq);
        if len > MAX_RECORD || body.end > bytes.len() || !ordered {
            break;
        }
        let mut summed = bytes[at..at + 12].to_vec();
        summed.extend_from_slice(&bytes[body.clone()]);
        if xxh3_64(&summed) != u64::from_le_bytes(sum) {
            break;
        }
        found.push(Found { seq, body: body.clone() });
        at = body.end;
    }
    (found, true)
}

fn record(seq: u64, entry: &HistoryEntry) -> Vec<u8> {
    let body = serde_json::to_vec(entry).unwrap_or_default();
    let mut out = Vec::with_capacity(RECORD_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let mut summed = out.clone();
    summed.extend_from_slice(&body);
    out.extend_from_slice(&xxh3_64(&summed).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The committed history: the entries of the file at `path` numbered below
/// `total`, the last [`MAX_HISTORY`] of them (none when there is no file).
/// `Err`: what is wrong with the file (the caller goes on without it).
pub fn load(disk: &dyn Disk, path: &FsPath, total: u64) -> Result<Vec<HistoryEntry>, String> {
    let Some(bytes) = files::read(disk, path).map_err(|e| e.to_string())? else { return Ok(Vec::new()) };
    if bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
        return Ok(Vec::new()); // Made, and cut before its first record.
    }
    let (found, magic) = parse(&bytes);
    if !magic {
        return Err("it does not start with the history magic FRHIST01".into());
    }
    let committed: Vec<&Found> = found.iter().filter(|f| f.seq < total).collect();
    let skip = committed.len().saturating_sub(MAX_HISTORY);
    committed[skip..]
        .iter()
        .map(|f| {
            serde_json::from_slice(&bytes[f.body.clone()]).map_err(|e| format!("entry {} does not read: {e}", f.seq))
        })
        .collect()
}

/// Where the file ends after a store, so the next one appends without
/// reading it again (the arbiter, the only writer, keeps it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    /// The byte after the last record.
    pub end: u64,
    /// The number of the next entry to append.
    pub next: u64,
    /// Records in the file.
    pub records: u64,
}

/// Make the file at `path` hold the history `entries` (the last ones of
/// `total` ever recorded, numbered `total - entries.len()` on), synced: the
/// records it has that agree are kept, what does not agree (left by a crash
/// before its document was stored, or by another history) is cut off, and
/// the rest of `entries` appended. `tail`: where the last call left it.
pub fn store(
    disk: &dyn Disk,
    path: &FsPath,
    entries: &[HistoryEntry],
    total: u64,
    tail: Option<Tail>,
) -> DiskResult<Tail> {
    let first = total.saturating_sub(entries.len() as u64);
    let (cut, next, records, fresh) = match tail.filter(|t| t.next >= first && t.next <= total) {
        Some(t) => (t.end, t.next, t.records, false),
        None => scan(disk, path, entries, total, first)?,
    };
    let mut out = Vec::new();
    let mut seq = next.max(first);
    let mut records = records;
    while seq < total {
        out.extend_from_slice(&record(seq, &entries[(seq - first) as usize]));
        seq += 1;
        records += 1;
    }
    if records > COMPACT_AT {
        // The last entries only, replacing the file whole.
        let mut all = MAGIC.to_vec();
        for (i, e) in entries.iter().enumerate() {
            all.extend_from_slice(&record(first + i as u64, e));
        }
        files::replace(disk, path, &all)?;
        return Ok(Tail { end: all.len() as u64, next: total, records: entries.len() as u64 });
    }
    let f = disk.open(path, OpenMode::Create)?;
    let mut end = cut;
    if fresh {
        f.write_at(0, &MAGIC)?;
        end = MAGIC.len() as u64;
    }
    if f.len()? != end {
        f.set_len(end)?;
    }
    if !out.is_empty() || fresh {
        f.write_at(end, &out)?;
        f.sync_data()?;
    }
    if fresh {
        disk.sync_parent_dir(path)?;
    }
    Ok(Tail { end: end + out.len() as u64, next: total, records })
}

/// Read the file: where the records that agree with `entries` end, the
/// next number to append, how many records stay, and whether the file must
/// be started afresh (absent, or not a history file).
fn scan(
    disk: &dyn Disk,
    path: &FsPath,
    entries: &[HistoryEntry],
    total: u64,
    first: u64,
) -> DiskResult<(u64, u64, u64, bool)> {
    let Some(bytes) = files::read(disk, path)? else { return Ok((0, first, 0, true)) };
    let (found, magic) = parse(&bytes);
    if !magic {
        return Ok((0, first, 0, true));
    }
    let mut end = MAGIC.len() as u64;
    let mut next = 0;
    let mut kept = 0;
    for f in &found {
        let agrees = match f.seq.checked_sub(first) {
            // Older than what is in memory: kept as it is.
            None => true,
            Some(i) if f.seq < total => {
                serde_json::to_vec(&entries[i as usize]).is_ok_and(|b| b == bytes[f.body.clone()])
            }
            Some(_) => false,
        };
        if !agrees {
            break;
        }
        end = f.body.end as u64;
        next = f.seq + 1;
        kept += 1;
    }
    Ok((end, next, kept, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::disk::StdDisk;

    fn entry(i: u64) -> HistoryEntry {
        HistoryEntry {
            unix_ms: 1_795_312_000_000 + i,
            content: (i % 3) as u32,
            before: format!("gen {i}"),
            after: format!("gen {}", i + 1),
            reason: format!("change {i}"),
        }
    }

    fn setup() -> (tempfile::TempDir, StdDisk, FsPath) {
        let tmp = tempfile::tempdir().unwrap();
        let disk = StdDisk::open(&[tmp.path().to_path_buf()]).unwrap();
        let path = path_of(&FsPath::new(0, RelPath::new("catalog.json").unwrap())).unwrap();
        (tmp, disk, path)
    }

    #[test]
    fn appends_only_what_is_new_and_reads_back_what_is_committed() {
        let (tmp, disk, path) = setup();
        let all: Vec<HistoryEntry> = (0..10).map(entry).collect();
        let t = store(&disk, &path, &all[..4], 4, None).unwrap();
        assert_eq!((t.next, t.records), (4, 4));
        let size = std::fs::metadata(tmp.path().join("catalog.json.history")).unwrap().len();
        assert_eq!(size, t.end);
        // Six more: appended after the four, with or without the tail.
        let t2 = store(&disk, &path, &all, 10, Some(t)).unwrap();
        assert_eq!(store(&disk, &path, &all, 10, None).unwrap(), t2, "a scan finds what the tail said");
        assert_eq!(load(&disk, &path, 10).unwrap(), all);
        // Committed at 7: the last three are not history yet.
        assert_eq!(load(&disk, &path, 7).unwrap(), all[..7].to_vec());
    }

    #[test]
    fn records_past_the_commit_point_are_replaced_by_the_next_store() {
        let (_tmp, disk, path) = setup();
        let a: Vec<HistoryEntry> = (0..6).map(entry).collect();
        store(&disk, &path, &a, 6, None).unwrap();
        // A crash left 4 and 5 uncommitted: the catalog says 4; two others come.
        let mut b = a[..4].to_vec();
        b.push(entry(100));
        b.push(entry(101));
        store(&disk, &path, &b, 6, None).unwrap();
        assert_eq!(load(&disk, &path, 6).unwrap(), b);
    }

    #[test]
    fn a_torn_tail_ends_the_file_and_damage_is_cut_off() {
        let (tmp, disk, path) = setup();
        let all: Vec<HistoryEntry> = (0..5).map(entry).collect();
        let t = store(&disk, &path, &all, 5, None).unwrap();
        let file = tmp.path().join("catalog.json.history");
        let mut bytes = std::fs::read(&file).unwrap();
        // Every truncation reads as a prefix of whole records.
        for len in 0..bytes.len() {
            std::fs::write(&file, &bytes[..len]).unwrap();
            let got = load(&disk, &path, 5).unwrap();
            assert_eq!(got, all[..got.len()].to_vec(), "{len} bytes");
        }
        // Not a history file at all: said.
        std::fs::write(&file, b"something else").unwrap();
        assert!(load(&disk, &path, 5).unwrap_err().contains("FRHIST01"));
        // A changed byte in the third record: the first two read.
        let (found, _) = parse(&bytes);
        bytes[found[2].body.start + 3] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(load(&disk, &path, 5).unwrap(), all[..2].to_vec());
        // The next store puts the rest back.
        assert_eq!(store(&disk, &path, &all, 5, None).unwrap().end, t.end);
        assert_eq!(load(&disk, &path, 5).unwrap(), all);
    }

    #[test]
    fn the_file_is_compacted_to_the_last_entries() {
        let (_tmp, disk, path) = setup();
        let mut entries: Vec<HistoryEntry> = Vec::new();
        let mut tail = None;
        let mut total = 0u64;
        // Stores of 1,000 entries each, the catalog keeping the last MAX_HISTORY.
        while total < COMPACT_AT + 2_000 {
            for _ in 0..1_000 {
                entries.push(entry(total));
                total += 1;
            }
            if entries.len() > MAX_HISTORY {
                entries.drain(..entries.len() - MAX_HISTORY);
            }
            let t = store(&disk, &path, &entries, total, tail).unwrap();
            assert!(t.records <= COMPACT_AT, "{t:?}");
            tail = Some(t);
        }
        assert!(tail.unwrap().records < COMPACT_AT, "compacted at least once");
        assert_eq!(load(&disk, &path, total).unwrap(), entries);
    }
}
