//! Replay: reading the change-log back after a restart or a crash, group by
//! group, cutting a torn tail and refusing damage anywhere else.

use super::format::*;
use super::{disk_err, ChangeLogError, Inner, Recovery, Result, MAX_FILES};
use crate::io::disk::FsPath;
use crate::protocol::path::RelPath;
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64;

impl Inner {
    pub(super) fn replay(&mut self) -> Result<Recovery> {
        let total = self.file.len().map_err(disk_err("length"))?;
        let mut header = [0u8; HEADER_LEN];
        if self.file.read_at(0, &mut header).map_err(disk_err("read header"))? != HEADER_LEN
            || header[..4] != FILE_MAGIC
            || u64::from_le_bytes(header[16..24].try_into().unwrap_or_default()) != xxh3_64(&header[..16])
        {
            return Err(ChangeLogError::Corrupt("bad file header".into()));
        }
        let version = u16::from_le_bytes([header[4], header[5]]);
        if version != VERSION {
            return Err(ChangeLogError::Corrupt(format!("version {version} is not {VERSION}")));
        }
        self.block_size = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        let mut at = HEADER_LEN as u64;
        let mut names: HashMap<u32, FsPath> = HashMap::new();
        let mut rec = Recovery::default();
        loop {
            let mut gh = [0u8; GROUP_HEADER_LEN];
            if total - at < GROUP_HEADER_LEN as u64 {
                break;
            }
            self.file.read_at(at, &mut gh).map_err(disk_err("read"))?;
            let Some(payload) = self.group_at(at, total, &gh)? else {
                // Only the last append can be torn: a good group further on
                // means the damage is in the middle, and that is corruption.
                if let Some(good) = self.next_good_group(at + 1, total)? {
                    return Err(ChangeLogError::Corrupt(format!(
                        "a damaged group at byte {at} is followed by a good one at byte {good}"
                    )));
                }
                break;
            };
            let len = payload.len();
            let seq = u64::from_le_bytes(gh[8..16].try_into().unwrap_or_default());
            self.apply_payload(&payload, &mut names)?;
            at += (GROUP_HEADER_LEN + len) as u64;
            self.next_group = seq + 1;
            rec.groups += 1;
        }
        rec.torn_bytes = total - at;
        if rec.torn_bytes > 0 {
            // `ChangeLog::open` rewrites the file from what was read: the tail goes with it.
            tracing::warn!(torn = rec.torn_bytes, "change-log: cutting a torn tail");
        }
        self.len = at;
        self.file_nos = names.into_iter().map(|(n, p)| (p, n)).collect();
        self.recovered = self.set.extents.clone();
        self.recovered_touched = self.set.touched.clone();
        self.owed_files = self.set.blocks.keys().cloned().collect();
        Ok(rec)
    }

    /// The payload of a whole, checksum-matching group at `at`, if there is one.
    fn group_at(&self, at: u64, total: u64, gh: &[u8; GROUP_HEADER_LEN]) -> Result<Option<Vec<u8>>> {
        let len = u32::from_le_bytes(gh[4..8].try_into().unwrap_or_default()) as usize;
        if gh[..4] != GROUP_MAGIC || len > MAX_GROUP || total - at - (GROUP_HEADER_LEN as u64) < len as u64 {
            return Ok(None);
        }
        let mut payload = vec![0u8; len];
        self.file.read_at(at + GROUP_HEADER_LEN as u64, &mut payload).map_err(disk_err("read"))?;
        if u64::from_le_bytes(gh[16..24].try_into().unwrap_or_default()) != xxh3_64(&payload) {
            return Ok(None);
        }
        Ok(Some(payload))
    }

    /// The offset of the first good group at or after `from`, scanning for
    /// its magic (recovery only).
    fn next_good_group(&self, from: u64, total: u64) -> Result<Option<u64>> {
        let mut rest = vec![0u8; (total - from.min(total)) as usize];
        self.file.read_at(from, &mut rest).map_err(disk_err("read"))?;
        let mut i = 0;
        while i + GROUP_HEADER_LEN <= rest.len() {
            if rest[i..i + 4] == GROUP_MAGIC {
                let mut gh = [0u8; GROUP_HEADER_LEN];
                gh.copy_from_slice(&rest[i..i + GROUP_HEADER_LEN]);
                if self.group_at(from + i as u64, total, &gh)?.is_some() {
                    return Ok(Some(from + i as u64));
                }
            }
            i += 1;
        }
        Ok(None)
    }

    fn apply_payload(&mut self, mut b: &[u8], names: &mut HashMap<u32, FsPath>) -> Result<()> {
        let bad = |what: &str| ChangeLogError::Corrupt(format!("a checksummed group holds {what}"));
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if b.len() < n {
                return None;
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Some(h)
        }
        while let Some(kind) = take(&mut b, 1) {
            match kind[0] {
                REC_FILE => {
                    let f = take(&mut b, 8).ok_or_else(|| bad("a cut file record"))?;
                    let no = u32::from_le_bytes(f[0..4].try_into().unwrap_or_default());
                    let fs = u16::from_le_bytes([f[4], f[5]]);
                    let len = u16::from_le_bytes([f[6], f[7]]) as usize;
                    let raw = take(&mut b, len).ok_or_else(|| bad("a cut path"))?;
                    let path = RelPath::from_bytes(raw).map_err(|e| bad(&format!("a bad path ({e})")))?;
                    if names.len() >= MAX_FILES {
                        return Err(ChangeLogError::TooManyFiles);
                    }
                    names.insert(no, FsPath::new(fs, path));
                }
                REC_BLOCKS => {
                    let f = take(&mut b, 16).ok_or_else(|| bad("a cut block record"))?;
                    let no = u32::from_le_bytes(f[0..4].try_into().unwrap_or_default());
                    let first = u64::from_le_bytes(f[4..12].try_into().unwrap_or_default());
                    let count = u32::from_le_bytes(f[12..16].try_into().unwrap_or_default());
                    let p = names.get(&no).ok_or_else(|| bad(&format!("blocks of unnamed file {no}")))?;
                    let end = first.checked_add(count as u64).ok_or_else(|| bad("a block run past the end"))?;
                    self.set.blocks.entry(p.clone()).or_default().extend(first..end);
                }
                REC_TOUCHED => {
                    let f = take(&mut b, 5).ok_or_else(|| bad("a cut path record"))?;
                    let fs = u16::from_le_bytes([f[0], f[1]]);
                    let subtree = f[2] != 0;
                    let len = u16::from_le_bytes([f[3], f[4]]) as usize;
                    let raw = take(&mut b, len).ok_or_else(|| bad("a cut path"))?;
                    let path = RelPath::from_bytes(raw).map_err(|e| bad(&format!("a bad path ({e})")))?;
                    let e = self.set.touched.entry(FsPath::new(fs, path)).or_insert(false);
                    *e |= subtree;
                }
                REC_EXTENT => {
                    let f = take(&mut b, 12).ok_or_else(|| bad("a cut extent record"))?;
                    let no = u32::from_le_bytes(f[0..4].try_into().unwrap_or_default());
                    let extent = u64::from_le_bytes(f[4..12].try_into().unwrap_or_default());
                    let p = names.get(&no).ok_or_else(|| bad(&format!("an extent of unnamed file {no}")))?;
                    self.set.extents.entry(p.clone()).or_default().insert(extent);
                }
                REC_CLEARED => {
                    let f = take(&mut b, 16).ok_or_else(|| bad("a cut cleared record"))?;
                    let no = u32::from_le_bytes(f[0..4].try_into().unwrap_or_default());
                    let first = u64::from_le_bytes(f[4..12].try_into().unwrap_or_default());
                    let count = u32::from_le_bytes(f[12..16].try_into().unwrap_or_default());
                    let p = names.get(&no).ok_or_else(|| bad(&format!("cleared blocks of unnamed file {no}")))?;
                    let end = first.checked_add(count as u64).ok_or_else(|| bad("a cleared run past the end"))?;
                    let p = p.clone();
                    self.set.remove_blocks(&p, first, end);
                }
                REC_CLEARED_PATH => {
                    let f = take(&mut b, 5).ok_or_else(|| bad("a cut cleared path record"))?;
                    let fs = u16::from_le_bytes([f[0], f[1]]);
                    let len = u16::from_le_bytes([f[3], f[4]]) as usize;
                    let raw = take(&mut b, len).ok_or_else(|| bad("a cut path"))?;
                    let path = RelPath::from_bytes(raw).map_err(|e| bad(&format!("a bad path ({e})")))?;
                    self.set.touched.remove(&FsPath::new(fs, path));
                }
                other => return Err(bad(&format!("unknown record kind {other}"))),
            }
        }
        Ok(())
    }
}
