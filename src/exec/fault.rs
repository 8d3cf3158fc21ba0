//! What an error applying an operation says, and so what the mirror does
//! (the one errno table both the daemon and the simulator act on).
//! Re-exported from [`super::apply`].

use crate::io::disk::{DiskError, DiskErrorKind};

#[derive(Debug, thiserror::Error)]
#[error("applying {op} #{seq}: {error}")]
pub struct ApplyError {
    pub seq: u64,
    pub op: &'static str,
    #[source]
    pub error: DiskError,
}

impl ApplyError {
    pub fn class(&self) -> FaultClass {
        fault_class(&self.error)
    }
}

/// What an error applying an operation says, and so what the mirror does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// The request asks for what this mirror's files cannot be (past the
    /// largest file, a name the file system refuses, a missing or
    /// unexpected entry): the session ends with a Fault frame naming it, and
    /// the mirror stays in service. Its files are as sound as before.
    BadRequest,
    /// The disk failed, or this host cannot write its own files: what was
    /// written is in doubt, so the mirror faults (refuses every primary
    /// until a full resync; rule 8).
    DiskFailing,
    /// A passing shortage (memory, descriptors, a signal): the operation is
    /// tried again a few times; if it still fails, the session ends and the
    /// mirror stays in service (the primary tracks what it did not get).
    Retry,
}

/// Every errno the applier can see, sorted: the one table the mirror acts
/// on. An errno not listed counts as a failing disk (the safe side).
pub const ERRNO_CLASSES: &[(i32, &str, FaultClass)] = {
    use FaultClass::*;
    &[
        (libc::EFBIG, "EFBIG", BadRequest),
        (libc::EOVERFLOW, "EOVERFLOW", BadRequest),
        (libc::EINVAL, "EINVAL", BadRequest),
        (libc::ENAMETOOLONG, "ENAMETOOLONG", BadRequest),
        (libc::ENOENT, "ENOENT", BadRequest),
        (libc::EEXIST, "EEXIST", BadRequest),
        (libc::ENOTEMPTY, "ENOTEMPTY", BadRequest),
        (libc::ENOTDIR, "ENOTDIR", BadRequest),
        (libc::EISDIR, "EISDIR", BadRequest),
        (libc::ELOOP, "ELOOP", BadRequest),
        (libc::EXDEV, "EXDEV", BadRequest),
        (libc::EMLINK, "EMLINK", BadRequest),
        (libc::ETXTBSY, "ETXTBSY", BadRequest),
        (libc::EIO, "EIO", DiskFailing),
        (libc::EROFS, "EROFS", DiskFailing),
        (libc::EUCLEAN, "EUCLEAN", DiskFailing),
        (libc::EBADMSG, "EBADMSG", DiskFailing),
        (libc::ENXIO, "ENXIO", DiskFailing),
        (libc::ENODEV, "ENODEV", DiskFailing),
        (libc::ESTALE, "ESTALE", DiskFailing),
        (libc::EREMOTEIO, "EREMOTEIO", DiskFailing),
        (libc::EACCES, "EACCES", DiskFailing),
        (libc::EPERM, "EPERM", DiskFailing),
        (libc::EBADF, "EBADF", DiskFailing),
        // A full disk faults too: a write cut short may have left part of a
        // block, and the simulator's rules (src/sim) fault it the same way.
        (libc::ENOSPC, "ENOSPC", DiskFailing),
        (libc::EDQUOT, "EDQUOT", DiskFailing),
        (libc::EINTR, "EINTR", Retry),
        (libc::EAGAIN, "EAGAIN", Retry),
        (libc::ENOMEM, "ENOMEM", Retry),
        (libc::ENOBUFS, "ENOBUFS", Retry),
        (libc::EMFILE, "EMFILE", Retry),
        (libc::ENFILE, "ENFILE", Retry),
        (libc::EBUSY, "EBUSY", Retry),
        (libc::ETIMEDOUT, "ETIMEDOUT", Retry),
    ]
};

/// How the mirror treats an error applying an operation: by its errno in
/// [`ERRNO_CLASSES`]; an error with none (the simulator, checks of our
/// own) by its kind.
pub fn fault_class(e: &DiskError) -> FaultClass {
    if let Some(n) = e.errno {
        return ERRNO_CLASSES.iter().find(|(errno, ..)| *errno == n).map_or(FaultClass::DiskFailing, |(.., c)| *c);
    }
    match e.kind {
        DiskErrorKind::NotFound | DiskErrorKind::AlreadyExists | DiskErrorKind::NotEmpty | DiskErrorKind::Escapes => {
            FaultClass::BadRequest
        }
        DiskErrorKind::NoSpace | DiskErrorKind::Io => FaultClass::DiskFailing,
    }
}
