//! The tree a mount test expects, and the tree a segment's directory holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

// ---- the model -------------------------------------------------------------

/// What the mount's tree must hold: files with their contents, directories.
#[derive(Default)]
pub struct Model {
    pub files: BTreeMap<String, Vec<u8>>,
    pub dirs: BTreeSet<String>,
}

impl Model {
    pub fn write(&mut self, path: &str, offset: u64, data: &[u8]) {
        let f = self.files.get_mut(path).expect("modelled file");
        let end = offset as usize + data.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[offset as usize..end].copy_from_slice(data);
    }

    pub fn is_empty_dir(&self, d: &str) -> bool {
        let prefix = format!("{d}/");
        !self.files.keys().chain(self.dirs.iter()).any(|p| p.starts_with(&prefix))
    }

    /// Move `from` (and everything under it) to `to`.
    pub fn rename(&mut self, from: &str, to: &str) {
        let moved = |p: &str| -> Option<String> {
            if p == from {
                Some(to.to_string())
            } else {
                p.strip_prefix(&format!("{from}/")).map(|rest| format!("{to}/{rest}"))
            }
        };
        self.files.remove(to);
        self.dirs.remove(to);
        self.files = std::mem::take(&mut self.files).into_iter().map(|(p, c)| (moved(&p).unwrap_or(p), c)).collect();
        self.dirs = std::mem::take(&mut self.dirs).into_iter().map(|p| moved(&p).unwrap_or(p)).collect();
    }
}

/// Everything under `root`: files with contents, directories.
pub fn walk(root: &Path) -> Model {
    let mut m = Model::default();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).expect("read_dir") {
            let e = e.expect("entry");
            let name = e.file_name().into_string().expect("UTF-8");
            let p = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if e.file_type().expect("type").is_dir() {
                m.dirs.insert(p.clone());
                stack.push(p);
            } else {
                m.files.insert(p.clone(), std::fs::read(root.join(&p)).expect("read"));
            }
        }
    }
    m
}

pub fn assert_matches(what: &str, got: &Model, want: &Model, seed: u64) {
    assert_eq!(got.dirs, want.dirs, "{what}: directories differ (seed {seed})");
    assert_eq!(
        got.files.keys().collect::<Vec<_>>(),
        want.files.keys().collect::<Vec<_>>(),
        "{what}: file names differ (seed {seed})"
    );
    for (p, c) in &want.files {
        let g = &got.files[p];
        assert!(
            g == c,
            "{what}: {p} differs (seed {seed}): {} bytes, {} expected; first difference at {:?}",
            g.len(),
            c.len(),
            g.iter().zip(c).position(|(a, b)| a != b)
        );
    }
}
