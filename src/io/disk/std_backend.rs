//! The std backend: `pread`/`pwrite`/`fdatasync` on file descriptors resolved
//! beneath each filespace root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`.
//!
//! Nothing here resolves a path from the process's working directory or the
//! root of the file system: every lookup starts at a filespace root's
//! directory descriptor, and the kernel refuses (with `EXDEV` or `ELOOP`,
//! reported as [`DiskErrorKind::Escapes`]) any resolution that would leave it
//! or pass through a symlink. Namespace operations open the *parent* directory
//! that way and then act on the final component with the `*at` calls, which
//! never follow a final symlink either.

use super::{Disk, DiskError, DiskErrorKind, DiskFile, DiskResult, EntryKind, FsPath, OpenMode};
use crate::protocol::path::RelPath;
use nix::errno::Errno;
use nix::fcntl::{openat2, renameat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

fn kind_of_mode(mode: libc::mode_t) -> EntryKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => EntryKind::File,
        libc::S_IFDIR => EntryKind::Dir,
        _ => EntryKind::Other,
    }
}

/// Resolution rules for every lookup beneath a root.
fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// `openat2` relative to `dirfd`, confined beneath it, as an owned descriptor.
/// `mode` is only passed along when `flags` creates a file (the kernel rejects
/// a non-zero mode otherwise).
fn open_beneath(dirfd: RawFd, rel: &str, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let mut how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(beneath());
    if flags.contains(OFlag::O_CREAT) {
        how = how.mode(mode);
    }
    let fd = openat2(dirfd, rel, how)?;
    // SAFETY: `fd` was just returned by openat2, is open, and is owned by
    // nobody else; the OwnedFd becomes its only owner and closes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A directory descriptor to run an `*at` call against: a filespace root
/// (borrowed from the disk) or a directory opened beneath it.
enum DirFd<'a> {
    Root(&'a File),
    Opened(OwnedFd),
}

impl DirFd<'_> {
    fn raw(&self) -> RawFd {
        match self {
            DirFd::Root(f) => f.as_raw_fd(),
            DirFd::Opened(fd) => fd.as_raw_fd(),
        }
    }
}

/// The local file system through `openat2`-confined descriptors.
pub struct StdDisk {
    roots: Vec<File>,
    root_paths: Vec<PathBuf>,
    /// Aligned block writes with O_DIRECT ([`super::direct`]).
    direct: bool,
}

impl std::fmt::Debug for StdDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdDisk").field("roots", &self.root_paths).finish()
    }
}

impl StdDisk {
    /// Open each filespace root (index = position in `roots`) as a directory
    /// descriptor. Fails if a root is missing or is not a directory.
    pub fn open(roots: &[PathBuf]) -> DiskResult<StdDisk> {
        if roots.is_empty() {
            return Err(DiskError::new("open_roots", "", DiskErrorKind::Io, "no filespace roots given"));
        }
        if roots.len() > usize::from(u16::MAX) + 1 {
            return Err(DiskError::new(
                "open_roots",
                "",
                DiskErrorKind::Io,
                format!("{} filespace roots; at most {} are addressable", roots.len(), usize::from(u16::MAX) + 1),
            ));
        }
        let mut files = Vec::with_capacity(roots.len());
        for root in roots {
            // std opens with O_CLOEXEC; O_DIRECTORY makes a non-directory fail with ENOTDIR.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(root)
                .map_err(|e| DiskError::from_io("open_root", root.display(), &e))?;
            let meta = file.metadata().map_err(|e| DiskError::from_io("open_root", root.display(), &e))?;
            if !meta.is_dir() {
                return Err(DiskError::new("open_root", root.display(), DiskErrorKind::Io, "not a directory"));
            }
            // Fail here, not on first use, where openat2 is missing (Linux < 5.6)
            // or filtered out (some seccomp profiles).
            open_beneath(file.as_raw_fd(), ".", OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).map_err(|e| {
                DiskError::new(
                    "open_root",
                    root.display(),
                    DiskErrorKind::Io,
                    format!("openat2 unusable here (Linux 5.6 or later is needed): {e}"),
                )
            })?;
            files.push(file);
        }
        Ok(StdDisk { roots: files, root_paths: roots.to_vec(), direct: false })
    }

    /// The same disk, with aligned writes to its files made with O_DIRECT
    /// (the NVMe path: [`super::direct`]). Checked here: a root whose file
    /// system refuses O_DIRECT (tmpfs, some FUSE file systems) fails now,
    /// naming it, rather than at the first write.
    pub fn with_direct(mut self, direct: bool) -> DiskResult<StdDisk> {
        if direct {
            for shown in &self.root_paths {
                // An unnamed file in the root, reopened with O_DIRECT.
                let probe =
                    super::unnamed_file_in(shown).map_err(|e| DiskError::from_io("open_root", shown.display(), &e))?;
                super::direct::reopen_direct(&probe).map_err(|e| {
                    DiskError::new(
                        "open_root",
                        shown.display(),
                        DiskErrorKind::Io,
                        format!("O_DIRECT is not possible on this file system ({e}); run without direct I/O"),
                    )
                })?;
            }
        }
        self.direct = direct;
        Ok(self)
    }

    /// Whether aligned writes go with O_DIRECT.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The filespace roots this disk was opened on.
    pub fn root_paths(&self) -> &[PathBuf] {
        &self.root_paths
    }

    fn root(&self, op: &'static str, path: &FsPath) -> DiskResult<&File> {
        self.roots.get(usize::from(path.filespace)).ok_or_else(|| {
            DiskError::new(
                op,
                path,
                DiskErrorKind::Io,
                format!("no filespace {} (have {})", path.filespace, self.roots.len()),
            )
        })
    }

    /// The directory containing `path`'s final component: the root itself
    /// for a top-level name, else the parent opened beneath the root with
    /// `O_DIRECTORY | extra` (`O_PATH` for `*at` calls, `O_RDONLY` to fsync).
    fn parent<'a>(root: &'a File, path: &FsPath, extra: OFlag) -> nix::Result<DirFd<'a>> {
        match path.path.parent() {
            None => Ok(DirFd::Root(root)),
            Some(parent) => open_beneath(root.as_raw_fd(), parent.as_str(), OFlag::O_DIRECTORY | extra, Mode::empty())
                .map(DirFd::Opened),
        }
    }

    /// [`Self::parent`] with the filespace lookup and the error mapped for `op`.
    fn parent_of(&self, op: &'static str, path: &FsPath, extra: OFlag) -> DiskResult<DirFd<'_>> {
        let root = self.root(op, path)?;
        Self::parent(root, path, extra).map_err(|e| DiskError::from_errno(op, path, e))
    }

    /// Open a regular file beneath its root (used by the io_uring backend too).
    pub(super) fn open_file(&self, path: &FsPath, mode: OpenMode) -> DiskResult<StdFile> {
        const OP: &str = "open";
        let root = self.root(OP, path)?;
        let flags = OFlag::O_RDWR
            | OFlag::O_NOCTTY
            | match mode {
                OpenMode::Existing => OFlag::empty(),
                OpenMode::CreateNew => OFlag::O_CREAT | OFlag::O_EXCL,
                OpenMode::CreateTruncate => OFlag::O_CREAT | OFlag::O_TRUNC,
                OpenMode::Create => OFlag::O_CREAT,
            };
        let fd = open_beneath(root.as_raw_fd(), path.path.as_str(), flags, Mode::from_bits_truncate(0o644))
            .map_err(|e| DiskError::from_errno(OP, path, e))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| DiskError::from_io(OP, path, &e))?;
        if !meta.file_type().is_file() {
            return Err(DiskError::new(OP, path, DiskErrorKind::Io, "not a regular file").with_errno(libc::EISDIR));
        }
        let direct = match self.direct {
            true => {
                Some(super::direct::reopen_direct(&file).map_err(|e| DiskError::from_io("open O_DIRECT", path, &e))?)
            }
            false => None,
        };
        Ok(StdFile { file, direct, path: path.to_string() })
    }
}

impl Disk for StdDisk {
    fn open(&self, path: &FsPath, mode: OpenMode) -> DiskResult<Arc<dyn DiskFile>> {
        Ok(Arc::new(self.open_file(path, mode)?))
    }

    fn remove_file(&self, path: &FsPath) -> DiskResult<()> {
        const OP: &str = "remove_file";
        let dir = self.parent_of(OP, path, OFlag::O_PATH)?;
        unlinkat(Some(dir.raw()), path.path.file_name(), UnlinkatFlags::NoRemoveDir)
            .map_err(|e| DiskError::from_errno(OP, path, e))
    }

    fn rename(&self, from: &FsPath, to: &FsPath) -> DiskResult<()> {
        const OP: &str = "rename";
        if from.filespace != to.filespace {
            return Err(DiskError::new(OP, format!("{from} -> {to}"), DiskErrorKind::Io, "rename across filespaces")
                .with_errno(libc::EXDEV));
        }
        let from_dir = self.parent_of(OP, from, OFlag::O_PATH)?;
        let to_dir = self.parent_of(OP, to, OFlag::O_PATH)?;
        renameat(Some(from_dir.raw()), from.path.file_name(), Some(to_dir.raw()), to.path.file_name())
            .map_err(|e| DiskError::from_errno(OP, format!("{from} -> {to}"), e))
    }

    fn create_dir(&self, path: &FsPath) -> DiskResult<()> {
        const OP: &str = "create_dir";
        let dir = self.parent_of(OP, path, OFlag::O_PATH)?;
        mkdirat(Some(dir.raw()), path.path.file_name(), Mode::from_bits_truncate(0o755))
            .map_err(|e| DiskError::from_errno(OP, path, e))
    }

    fn remove_dir(&self, path: &FsPath) -> DiskResult<()> {
        const OP: &str = "remove_dir";
        let dir = self.parent_of(OP, path, OFlag::O_PATH)?;
        unlinkat(Some(dir.raw()), path.path.file_name(), UnlinkatFlags::RemoveDir).map_err(|e| {
            // POSIX lets rmdir report a non-empty directory as EEXIST too.
            if e == Errno::EEXIST {
                DiskError::new(OP, path, DiskErrorKind::NotEmpty, e)
            } else {
                DiskError::from_errno(OP, path, e)
            }
        })
    }

    fn sync_parent_dir(&self, path: &FsPath) -> DiskResult<()> {
        const OP: &str = "sync_parent_dir";
        match self.parent_of(OP, path, OFlag::O_RDONLY)? {
            DirFd::Root(root) => root.sync_all().map_err(|e| DiskError::from_io(OP, path, &e)),
            DirFd::Opened(fd) => File::from(fd).sync_all().map_err(|e| DiskError::from_io(OP, path, &e)),
        }
    }

    fn parent_dir_handle(&self, path: &FsPath) -> DiskResult<Arc<dyn DiskFile>> {
        const OP: &str = "open_parent_dir";
        let file = match self.parent_of(OP, path, OFlag::O_RDONLY)? {
            DirFd::Root(root) => root.try_clone().map_err(|e| DiskError::from_io(OP, path, &e))?,
            DirFd::Opened(fd) => File::from(fd),
        };
        let shown = match path.path.parent() {
            Some(p) => format!("fs{}:{p}", path.filespace),
            None => format!("fs{}:", path.filespace),
        };
        Ok(Arc::new(StdFile { file, direct: None, path: shown }))
    }

    fn exists(&self, path: &FsPath) -> DiskResult<bool> {
        const OP: &str = "exists";
        let root = self.root(OP, path)?;
        let dir = match Self::parent(root, path, OFlag::O_PATH) {
            Ok(dir) => dir,
            // A missing parent, or one that is not a directory, means no such path.
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(false),
            Err(e) => return Err(DiskError::from_errno(OP, path, e)),
        };
        match fstatat(Some(dir.raw()), path.path.file_name(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(DiskError::from_errno(OP, path, e)),
        }
    }

    fn entry_kind(&self, path: &FsPath) -> DiskResult<Option<EntryKind>> {
        const OP: &str = "entry_kind";
        let root = self.root(OP, path)?;
        let dir = match Self::parent(root, path, OFlag::O_PATH) {
            Ok(dir) => dir,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
            Err(e) => return Err(DiskError::from_errno(OP, path, e)),
        };
        match fstatat(Some(dir.raw()), path.path.file_name(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(kind_of_mode(st.st_mode))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(DiskError::from_errno(OP, path, e)),
        }
    }

    fn list_dir(&self, filespace: u16, dir: Option<&RelPath>) -> DiskResult<Vec<(String, EntryKind)>> {
        const OP: &str = "list_dir";
        let shown = format!("fs{filespace}:{}", dir.map(|d| d.as_str()).unwrap_or(""));
        let root = self.roots.get(usize::from(filespace)).ok_or_else(|| {
            DiskError::new(OP, &shown, DiskErrorKind::Io, "no such filespace").with_errno(libc::EINVAL)
        })?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        let fd = open_beneath(root.as_raw_fd(), dir.map(|d| d.as_str()).unwrap_or("."), flags, Mode::empty())
            .map_err(|e| DiskError::from_errno(OP, &shown, e))?;
        let mut d = nix::dir::Dir::from_fd(fd.into_raw_fd()).map_err(|e| DiskError::from_errno(OP, &shown, e))?;
        let dfd = d.as_raw_fd();
        let mut out = Vec::new();
        for entry in d.iter() {
            let entry = entry.map_err(|e| DiskError::from_errno(OP, &shown, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                Some(nix::dir::Type::File) => EntryKind::File,
                Some(nix::dir::Type::Directory) => EntryKind::Dir,
                Some(_) => EntryKind::Other,
                // Some file systems do not fill d_type: ask.
                None => match fstatat(Some(dfd), entry.file_name(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => kind_of_mode(st.st_mode),
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(DiskError::from_errno(OP, &shown, e)),
                },
            };
            out.push((name, kind));
        }
        out.sort();
        Ok(out)
    }

    fn writes_direct(&self) -> bool {
        self.direct()
    }
    fn name(&self) -> &'static str {
        if self.direct {
            "std, O_DIRECT"
        } else {
            "std"
        }
    }
}

/// A regular file opened beneath a filespace root.
#[derive(Debug)]
pub struct StdFile {
    file: File,
    /// The same file with O_DIRECT, on a direct disk: aligned writes go here.
    direct: Option<File>,
    /// `fs<N>:<path>` as opened, for error messages.
    path: String,
}

impl DiskFile for StdFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> DiskResult<()> {
        match &self.direct {
            Some(d) if super::direct::aligned(offset, buf.len()) => {
                super::direct::write_all(d, &self.file, offset, buf)
            }
            _ => self.file.write_all_at(buf, offset),
        }
        .map_err(|e| DiskError::from_io("write", &self.path, &e))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> DiskResult<usize> {
        let mut done = 0;
        while done < buf.len() {
            let at = offset.checked_add(done as u64).ok_or_else(|| {
                DiskError::new("read", &self.path, DiskErrorKind::Io, "offset overflows").with_errno(libc::EOVERFLOW)
            })?;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DiskError::from_io("read", &self.path, &e)),
            }
        }
        Ok(done)
    }

    fn sync_data(&self) -> DiskResult<()> {
        self.file.sync_data().map_err(|e| DiskError::from_io("sync_data", &self.path, &e))
    }

    fn set_len(&self, len: u64) -> DiskResult<()> {
        self.file.set_len(len).map_err(|e| DiskError::from_io("set_len", &self.path, &e))
    }

    fn len(&self) -> DiskResult<u64> {
        self.file.metadata().map(|m| m.len()).map_err(|e| DiskError::from_io("len", &self.path, &e))
    }

    fn raw_fd(&self) -> Option<i32> {
        Some(self.file.as_raw_fd())
    }

    fn direct_fd(&self) -> Option<i32> {
        self.direct.as_ref().map(|d| d.as_raw_fd())
    }

    fn start_writeback(&self) {
        super::uring::start_writeback(self.file.as_raw_fd(), &self.path);
    }
}
