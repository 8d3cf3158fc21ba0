//! Carrying out the core's commands against a [`Disk`](crate::io::disk::Disk)
//! and a [`ChangeLog`](crate::durable::changelog::ChangeLog), with no
//! threads, sockets or clocks: the runtime calls it from its threads, the
//! simulator from its event loop, so both do the same I/O for the same
//! command. [`primary`] performs the primary engine's steps; [`apply`] is
//! the mirror's executor (batched writes, grouped syncs).

pub mod apply;
pub mod doubt;
mod fault;
pub mod primary;

use crate::error::{Error, Result};

/// A copy's bytes: blocks `first..first + count` of `file` as far as it
/// reaches (at most 256 KiB), with their offset; `None` past its end. The
/// runtime and the fault simulator read copies the same way.
pub fn read_copy(
    file: &dyn crate::io::disk::DiskFile,
    first: u64,
    count: u64,
    bs: u64,
) -> Result<Option<(u64, Vec<u8>)>> {
    if count == 0 || count * bs > crate::protocol::MAX_WRITE_AT as u64 {
        return Err(Error::InvalidArgument(format!("{count} blocks do not fit one copy")));
    }
    let offset = first.checked_mul(bs).ok_or_else(|| Error::InvalidArgument("block past the end".into()))?;
    let len = file.len()?;
    if offset >= len {
        return Ok(None);
    }
    let mut buf = vec![0u8; (count * bs).min(len - offset) as usize];
    let n = file.read_at(offset, &mut buf)?;
    buf.truncate(n);
    Ok((!buf.is_empty()).then_some((offset, buf)))
}

/// xxh3-64 of each of `count` blocks from `first`, as read: a block past
/// the end (or of a missing file) hashes its short or empty contents. Both
/// sides compute it the same way, so equal hashes mean equal blocks. One
/// read per block: reads of 1 MiB saved 2 % of its CPU and a memory map 6 %,
/// and a live file truncated under a map would kill the process with
/// SIGBUS (docs/performance.md, "Hashing from a memory map").
pub fn hash_blocks(
    file: Option<&dyn crate::io::disk::DiskFile>,
    first: u64,
    count: u32,
    block_size: u32,
) -> std::result::Result<Vec<u64>, crate::io::disk::DiskError> {
    let bs = block_size as u64;
    let mut buf = vec![0u8; block_size as usize];
    let mut out = Vec::with_capacity(count as usize);
    for b in first..first + count as u64 {
        let n = match file {
            Some(f) => f.read_at(b * bs, &mut buf)?,
            None => 0,
        };
        out.push(xxhash_rust::xxh3::xxh3_64(&buf[..n]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::hash_blocks;
    use crate::io::disk::{Disk, OpenMode, SimDisk};
    use crate::protocol::path::{FsPath, RelPath};

    #[test]
    fn each_block_hashes_its_own_bytes_and_past_the_end_its_short_or_empty_ones() {
        let bs = 32 * 1024u32;
        let disk = SimDisk::new(1);
        let file = disk.open(&FsPath::new(0, RelPath::new("f").unwrap()), OpenMode::CreateNew).unwrap();
        // 40 and a half blocks: whole blocks, a short one, then nothing.
        let len = 40 * bs as usize + bs as usize / 2;
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 977) as u8).collect();
        file.write_at(0, &data).unwrap();
        let (first, count) = (3u64, 70u32);
        let want: Vec<u64> = (first..first + count as u64)
            .map(|b| {
                let start = ((b * bs as u64) as usize).min(len);
                let stop = (((b + 1) * bs as u64) as usize).min(len);
                xxhash_rust::xxh3::xxh3_64(&data[start..stop])
            })
            .collect();
        assert_eq!(hash_blocks(Some(file.as_ref()), first, count, bs).unwrap(), want);
        // A missing file: every block hashes empty.
        let empty = xxhash_rust::xxh3::xxh3_64(&[]);
        assert_eq!(hash_blocks(None, first, 5, bs).unwrap(), vec![empty; 5]);
        // One block longer than the file.
        let big = 2 << 20;
        let want: Vec<u64> = vec![xxhash_rust::xxh3::xxh3_64(&data), empty];
        assert_eq!(hash_blocks(Some(file.as_ref()), 0, 2, big).unwrap(), want);
    }
}
