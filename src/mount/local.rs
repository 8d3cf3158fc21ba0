//! Read-only access to the filespace's local root, for the requests the
//! mount serves without the segment (lookup, getattr, read, readdir,
//! statfs). Every lookup starts at the root's descriptor and is confined
//! beneath it by `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, as the
//! engine's own disk layer does: a symlink planted in the root is never
//! followed out of it.

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A directory entry as the local file system lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LocalEntry {
    pub name: String,
    /// The local inode number (informational: readdir's `d_ino`).
    pub ino: u64,
    pub kind: fuser::FileType,
}

/// The filespace's root directory, opened once at mount time.
pub(super) struct Root {
    dir: File,
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let dir = File::options().read(true).custom_flags(libc::O_DIRECTORY).open(path)?;
        Ok(Root { dir })
    }

    /// `rel` beneath the root ("" is the root itself); a final symlink is
    /// not followed (an `O_PATH` open returns the link itself).
    fn open_at(&self, rel: &str, flags: OFlag) -> io::Result<File> {
        let rel = if rel.is_empty() { "." } else { rel };
        let resolve =
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW).resolve(resolve);
        let fd = openat2(self.dir.as_raw_fd(), rel, how).map_err(io::Error::from)?;
        // SAFETY: openat2 just returned this descriptor; nothing else owns
        // it, so the File becomes its only owner and closes it once.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    pub fn metadata(&self, rel: &str) -> io::Result<Metadata> {
        self.open_at(rel, OFlag::O_PATH)?.metadata()
    }

    /// A read-only descriptor on a regular file (reads and fstat).
    pub fn open_read(&self, rel: &str) -> io::Result<File> {
        self.open_at(rel, OFlag::O_RDONLY)
    }

    /// The entries of a directory, sorted by name, without `.` and `..`.
    /// Names that are not UTF-8 cannot have come through the engine (its
    /// paths are UTF-8): they are left out.
    pub fn list(&self, rel: &str) -> io::Result<Vec<LocalEntry>> {
        let file = self.open_at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut dir = nix::dir::Dir::from_fd(file.into_raw_fd()).map_err(io::Error::from)?;
        let dfd = dir.as_raw_fd();
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(io::Error::from)?;
            let Ok(name) = entry.file_name().to_str() else {
                tracing::warn!(dir = rel, name = ?entry.file_name(), "a name that is not UTF-8 is not shown");
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            use nix::dir::Type;
            let kind = match entry.file_type() {
                Some(Type::File) => fuser::FileType::RegularFile,
                Some(Type::Directory) => fuser::FileType::Directory,
                Some(Type::Symlink) => fuser::FileType::Symlink,
                Some(Type::Fifo) => fuser::FileType::NamedPipe,
                Some(Type::Socket) => fuser::FileType::Socket,
                Some(Type::CharacterDevice) => fuser::FileType::CharDevice,
                Some(Type::BlockDevice) => fuser::FileType::BlockDevice,
                // Some file systems do not fill d_type: ask.
                None => {
                    match nix::sys::stat::fstatat(
                        Some(dfd),
                        entry.file_name(),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    ) {
                        Ok(st) => kind_of_mode(st.st_mode),
                        Err(nix::errno::Errno::ENOENT) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            out.push(LocalEntry { name: name.to_string(), ino: entry.ino(), kind });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn statvfs(&self) -> io::Result<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::fstatvfs(&self.dir).map_err(io::Error::from)
    }
}

pub(super) fn kind_of_mode(mode: libc::mode_t) -> fuser::FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => fuser::FileType::Directory,
        libc::S_IFLNK => fuser::FileType::Symlink,
        libc::S_IFIFO => fuser::FileType::NamedPipe,
        libc::S_IFSOCK => fuser::FileType::Socket,
        libc::S_IFCHR => fuser::FileType::CharDevice,
        libc::S_IFBLK => fuser::FileType::BlockDevice,
        _ => fuser::FileType::RegularFile,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_stay_beneath_the_root_and_do_not_follow_symlinks() {
        let outer = tempfile::tempdir().unwrap();
        let root_path = outer.path().join("root");
        std::fs::create_dir_all(root_path.join("d")).unwrap();
        std::fs::write(root_path.join("d/f"), b"abc").unwrap();
        std::fs::write(outer.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink("../secret", root_path.join("link")).unwrap();
        let root = Root::open(&root_path).unwrap();
        assert_eq!(root.metadata("d/f").unwrap().len(), 3);
        assert!(root.metadata("").unwrap().is_dir());
        // The link itself is visible, never what it points to.
        assert!(root.metadata("link").unwrap().file_type().is_symlink());
        assert!(root.open_read("link").is_err());
        assert_eq!(root.metadata("missing").unwrap_err().kind(), io::ErrorKind::NotFound);
        let names: Vec<_> = root.list("").unwrap().into_iter().map(|e| (e.name, e.kind)).collect();
        assert_eq!(
            names,
            vec![("d".to_string(), fuser::FileType::Directory), ("link".to_string(), fuser::FileType::Symlink)]
        );
        assert!(root.statvfs().unwrap().blocks() > 0);
    }
}
