//! Small files replaced whole, and directories made, so that a power cut
//! leaves the old state or the new one and never a name without its
//! contents: write a temporary file, `fdatasync` it, rename it over the
//! file, `fsync` the directory. Every state and configuration file the
//! engine and its tools write goes through here (the change-log's own
//! rewrites too), through the [`Disk`] trait, so the crash tests of
//! `crashtest.rs` cut power at every step of it.

use crate::error::{Error, Result};
use crate::io::disk::{Disk, DiskError, DiskErrorKind, DiskFile, DiskResult, FsPath, OpenMode, StdDisk};
use crate::protocol::path::RelPath;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the next version is written before it replaces `path`.
pub fn temporary(path: &FsPath) -> DiskResult<FsPath> {
    let name = format!("{}.tmp", path.path.as_str());
    let rel = RelPath::new(&name).map_err(|e| DiskError::new("temporary name", &name, DiskErrorKind::Io, e))?;
    Ok(FsPath::new(path.filespace, rel))
}

/// Replace `path` with `bytes`: the temporary file written and synced,
/// renamed over `path`, the directory synced. A power cut at any step
/// leaves the old contents or the new ones (and maybe a stale temporary
/// file, which the next replace truncates). Returns the open file, now
/// named `path`.
pub fn replace(disk: &dyn Disk, path: &FsPath, bytes: &[u8]) -> DiskResult<Arc<dyn DiskFile>> {
    let tmp = temporary(path)?;
    let f = disk.open(&tmp, OpenMode::CreateTruncate)?;
    f.write_at(0, bytes)?;
    f.sync_data()?;
    disk.rename(&tmp, path)?;
    disk.sync_parent_dir(path)?;
    Ok(f)
}

/// The whole contents of `path`, or `None` if there is no such file.
pub fn read(disk: &dyn Disk, path: &FsPath) -> DiskResult<Option<Vec<u8>>> {
    let f = match disk.open(path, OpenMode::Existing) {
        Ok(f) => f,
        Err(e) if e.kind == DiskErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len =
        usize::try_from(f.len()?).map_err(|_| DiskError::new("read", path, DiskErrorKind::Io, "larger than memory"))?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(got as u64, &mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    Ok(Some(buf))
}

/// A host path as (a disk over its directory, the file's name in it): how
/// the path-based functions here, and the state files' `load`/`store`,
/// reach [`replace`] and [`read`]. `None`: the directory does not exist.
pub fn on_host(path: &Path) -> Result<Option<(StdDisk, FsPath)>> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a file name", path.display())))?;
    let rel = FsPath::new(0, RelPath::new(name)?);
    match StdDisk::open(&[dir.to_path_buf()]) {
        Ok(disk) => Ok(Some((disk, rel))),
        Err(e) if e.kind == DiskErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// [`replace`] for a file named by a host path (its directory must exist).
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let Some((disk, p)) = on_host(path)? else {
        return Err(Error::io(format!("replacing {}", path.display()), std::io::ErrorKind::NotFound.into()));
    };
    replace(&disk, &p, bytes)
        .map(drop)
        .map_err(|e| Error::io(format!("replacing {}", path.display()), std::io::Error::other(e)))
}

/// [`read`] for a file named by a host path (`None`: no such file, or no
/// such directory).
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    let Some((disk, p)) = on_host(path)? else { return Ok(None) };
    read(&disk, &p).map_err(|e| Error::io(format!("reading {}", path.display()), std::io::Error::other(e)))
}

/// `create_dir_all`, durably: each directory made is named in a synced
/// parent, so a power cut cannot take it (and what is later written in it)
/// away. Directories that exist are left as they are.
pub fn create_dir_all(path: &Path) -> Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(path);
    while let Some(p) = at.filter(|p| !p.as_os_str().is_empty()) {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(Error::InvalidArgument(format!("{} exists and is not a directory", p.display()))),
            Err(_) => missing.push(p.to_path_buf()),
        }
        at = p.parent();
    }
    for dir in missing.iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
        let parent = dir.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("syncing {} after creating {}", parent.display(), dir.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        assert_eq!(read_file(&p).unwrap(), None);
        replace_file(&p, b"one").unwrap();
        replace_file(&p, b"two, longer").unwrap();
        assert_eq!(read_file(&p).unwrap().as_deref(), Some(&b"two, longer"[..]));
        assert!(!d.path().join("state.json.tmp").exists(), "renamed away");
        let e = replace_file(&d.path().join("missing-dir/x"), b"").unwrap_err();
        assert!(e.to_string().contains("missing-dir"), "{e}");
    }

    #[test]
    fn directories_are_made_with_every_missing_parent() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        std::fs::write(d.path().join("file"), b"").unwrap();
        assert!(create_dir_all(&d.path().join("file/x")).unwrap_err().to_string().contains("not a directory"));
    }
}
