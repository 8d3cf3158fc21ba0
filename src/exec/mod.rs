//! Carrying out the core's commands against a [`Disk`](crate::io::disk::Disk)
//! and a [`ChangeLog`](crate::durable::changelog::ChangeLog), with no
//! threads, sockets or clocks: the runtime calls it from its threads, the
//! simulator from its event loop, so both do the same I/O for the same
//! command. [`primary`] performs the primary engine's steps; [`apply`] is
//! the mirror's executor (batched writes, grouped syncs).

pub mod apply;
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
/// sides compute it the same way, so equal hashes mean equal blocks.
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
