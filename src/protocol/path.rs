//! Relative paths inside a filespace, validated before anything uses them.
//!
//! A [`RelPath`] is UTF-8, non-empty, at most [`MAX_PATH_BYTES`] long, made of
//! `/`-separated components that are neither empty, `.` nor `..`, with no NUL
//! byte and no component longer than [`MAX_COMPONENT_BYTES`]. It is never
//! absolute. These are the rules the mirror applies to every path from the wire.

use std::fmt;

pub const MAX_PATH_BYTES: usize = 1024;
pub const MAX_COMPONENT_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is {0} bytes long, over the limit of {MAX_PATH_BYTES}")]
    TooLong(usize),
    #[error("path is not UTF-8")]
    NotUtf8,
    #[error("path {0:?} is absolute; paths are relative to a filespace root")]
    Absolute(String),
    #[error("path {0:?} has a '..' component")]
    DotDot(String),
    #[error("path {0:?} has an empty or '.' component")]
    EmptyComponent(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} has a component over {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong(String),
    #[error("{0:?} is not a single path component")]
    BadComponent(String),
}

/// A validated relative path (see the module docs for the rules).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    pub fn new(s: &str) -> Result<RelPath, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(s.len()));
        }
        if s.contains('\0') {
            return Err(PathError::Nul(s.escape_debug().to_string()));
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute(s.to_string()));
        }
        for component in s.split('/') {
            match component {
                ".." => return Err(PathError::DotDot(s.to_string())),
                "" | "." => return Err(PathError::EmptyComponent(s.to_string())),
                c if c.len() > MAX_COMPONENT_BYTES => return Err(PathError::ComponentTooLong(s.to_string())),
                _ => {}
            }
        }
        Ok(RelPath(s.to_string()))
    }

    pub fn from_bytes(b: &[u8]) -> Result<RelPath, PathError> {
        if b.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(b.len()));
        }
        let s = std::str::from_utf8(b).map_err(|_| PathError::NotUtf8)?;
        RelPath::new(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parent directory, or `None` for a top-level name.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| RelPath(self.0[..i].to_string()))
    }

    /// `self/name`, validated like any path (`name` must be one component).
    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        if name.contains('/') {
            return Err(PathError::BadComponent(name.to_string()));
        }
        RelPath::new(&format!("{}/{name}", self.0))
    }

    /// A top-level name as a path (one component).
    pub fn top(name: &str) -> Result<RelPath, PathError> {
        if name.contains('/') {
            return Err(PathError::BadComponent(name.to_string()));
        }
        RelPath::new(name)
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// Whether `self` is `dir` or lies beneath it.
    pub fn is_within(&self, dir: &RelPath) -> bool {
        self.0 == dir.0
            || (self.0.len() > dir.0.len()
                && self.0.starts_with(dir.0.as_str())
                && self.0.as_bytes()[dir.0.len()] == b'/')
    }

    /// `self` with its `from` prefix replaced by `to` (for a directory rename).
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> Option<RelPath> {
        if !self.is_within(from) {
            return None;
        }
        let rest = &self.0[from.0.len()..];
        let joined = format!("{}{}", to.0, rest);
        RelPath::new(&joined).ok()
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A file named by (filespace index, relative path).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FsPath {
    pub filespace: u16,
    pub path: RelPath,
}

impl FsPath {
    pub fn new(filespace: u16, path: RelPath) -> Self {
        FsPath { filespace, path }
    }

    /// Same filespace, and one path is the other or lies under it.
    pub fn related(&self, other: &FsPath) -> bool {
        self.filespace == other.filespace && (self.path.is_within(&other.path) || other.path.is_within(&self.path))
    }
}

impl std::fmt::Display for FsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fs{}:{}", self.filespace, self.path)
    }
}

/// What a directory entry is (a final symlink is not followed: `Other`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    File,
    Dir,
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for p in ["base/16384/1259", "pg_xlog/000000010000000000000001", "a", "a.b/c-d_e"] {
            assert_eq!(RelPath::new(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn rejects_escapes_and_malformed() {
        assert_eq!(RelPath::new(""), Err(PathError::Empty));
        assert!(matches!(RelPath::new("/etc/passwd"), Err(PathError::Absolute(_))));
        assert!(matches!(RelPath::new("a/../../b"), Err(PathError::DotDot(_))));
        assert!(matches!(RelPath::new(".."), Err(PathError::DotDot(_))));
        assert!(matches!(RelPath::new("a//b"), Err(PathError::EmptyComponent(_))));
        assert!(matches!(RelPath::new("a/./b"), Err(PathError::EmptyComponent(_))));
        assert!(matches!(RelPath::new("a/"), Err(PathError::EmptyComponent(_))));
        assert!(matches!(RelPath::new("a\0b"), Err(PathError::Nul(_))));
        assert!(matches!(RelPath::new(&"x".repeat(256)), Err(PathError::ComponentTooLong(_))));
        assert!(matches!(RelPath::new(&"x/".repeat(600)), Err(PathError::TooLong(_))));
        assert_eq!(RelPath::from_bytes(&[0xff, 0xfe]), Err(PathError::NotUtf8));
    }

    #[test]
    fn parent_and_rebase() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c");
        assert!(RelPath::new("top").unwrap().parent().is_none());
        let from = RelPath::new("a/b").unwrap();
        let to = RelPath::new("z").unwrap();
        assert_eq!(p.rebase(&from, &to).unwrap().as_str(), "z/c");
        assert!(RelPath::new("a/bc").unwrap().rebase(&from, &to).is_none());
        assert!(!RelPath::new("a/bc").unwrap().is_within(&from));
    }
}
