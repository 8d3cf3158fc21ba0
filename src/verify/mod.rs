//! Offline comparison of two copies of a segment's filespaces: every
//! directory and file, with a per-file xxh3 of the contents. [`online`]
//! compares a streaming pair while it serves (`filerep verify`).

pub mod online;

use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Entry {
    Dir,
    File { len: u64, xxh3: u64 },
    Other,
}

/// One row of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct FileRow {
    pub filespace: String,
    pub path: String,
    pub primary: Option<Entry>,
    pub mirror: Option<Entry>,
}

impl FileRow {
    pub fn identical(&self) -> bool {
        self.primary.is_some() && self.primary == self.mirror
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub rows: Vec<FileRow>,
    pub files: usize,
    pub dirs: usize,
    pub bytes: u64,
    pub differences: usize,
}

impl Comparison {
    pub fn identical(&self) -> bool {
        self.differences == 0
    }
}

/// Hash every entry under `root` (symlinks are not followed; they count as `Other`).
pub fn scan(root: &Path) -> Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let rel_child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let ft = ent.file_type().map_err(|e| Error::io(format!("stat {}", ent.path().display()), e))?;
            if ft.is_dir() {
                out.insert(rel_child.clone(), Entry::Dir);
                stack.push((ent.path(), rel_child));
            } else if ft.is_file() {
                let (len, xxh3) = hash_file(&ent.path())?;
                out.insert(rel_child, Entry::File { len, xxh3 });
            } else {
                out.insert(rel_child, Entry::Other);
            }
        }
    }
    Ok(out)
}

pub fn hash_file(path: &Path) -> Result<(u64, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, h.digest()))
}

/// Compare filespace roots pairwise: `(name, primary root, mirror root)`.
pub fn compare(filespaces: &[(String, &Path, &Path)]) -> Result<Comparison> {
    let mut rows = Vec::new();
    let (mut files, mut dirs, mut bytes, mut differences) = (0, 0, 0u64, 0);
    for (name, p_root, m_root) in filespaces {
        let p = scan(p_root)?;
        let mut m = scan(m_root)?;
        for (path, pe) in p {
            let me = m.remove(&path);
            match &pe {
                Entry::Dir => dirs += 1,
                Entry::File { len, .. } => {
                    files += 1;
                    bytes += len;
                }
                Entry::Other => {}
            }
            let row = FileRow { filespace: name.clone(), path, primary: Some(pe), mirror: me };
            if !row.identical() {
                differences += 1;
            }
            rows.push(row);
        }
        for (path, me) in m {
            differences += 1;
            rows.push(FileRow { filespace: name.clone(), path, primary: None, mirror: Some(me) });
        }
    }
    Ok(Comparison { rows, files, dirs, bytes, differences })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_differences() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir(d.join("sub")).unwrap();
            std::fs::write(d.join("sub/f"), b"same").unwrap();
        }
        let c = compare(&[("fs".into(), a.path(), b.path())]).unwrap();
        assert!(c.identical());
        assert_eq!((c.files, c.dirs), (1, 1));
        std::fs::write(b.path().join("sub/f"), b"diff").unwrap();
        std::fs::write(b.path().join("extra"), b"").unwrap();
        let c = compare(&[("fs".into(), a.path(), b.path())]).unwrap();
        assert_eq!(c.differences, 2);
    }
}
