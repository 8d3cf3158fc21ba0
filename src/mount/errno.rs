//! How a refused or failed change, a local I/O error or a bad path is
//! answered to the kernel (`docs/mount.md`, errno mapping).

use crate::cluster::client::{ClientError, ErrorClass};
use crate::protocol::path::PathError;
use fuser::Errno;

/// The errno for a refused or failed call (`docs/mount.md`, errno mapping).
pub fn errno_of(e: &ClientError) -> Errno {
    match e.class() {
        Some(ErrorClass::Invalid) => Errno::EINVAL,
        Some(ErrorClass::NotFound) => Errno::ENOENT,
        Some(ErrorClass::Exists) => Errno::EEXIST,
        Some(ErrorClass::NotEmpty) => Errno::ENOTEMPTY,
        Some(ErrorClass::NoSpace) => Errno::ENOSPC,
        // Not the primary, the pair cannot take changes, the segment
        // faulted, or it cannot be reached: the change was not made (or not
        // made durable), which callers must see as an I/O error.
        Some(ErrorClass::NotPrimary | ErrorClass::Unavailable | ErrorClass::Faulted | ErrorClass::Other) | None => {
            Errno::EIO
        }
    }
}

pub(super) fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

pub(super) fn path_errno(e: &PathError) -> Errno {
    match e {
        PathError::TooLong(_) | PathError::ComponentTooLong(_) => Errno::ENAMETOOLONG,
        _ => Errno::EINVAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_the_documented_errnos() {
        let call = |class| ClientError::Call { class, message: String::new() };
        for (class, errno) in [
            (ErrorClass::Invalid, Errno::EINVAL),
            (ErrorClass::NotFound, Errno::ENOENT),
            (ErrorClass::Exists, Errno::EEXIST),
            (ErrorClass::NotEmpty, Errno::ENOTEMPTY),
            (ErrorClass::NoSpace, Errno::ENOSPC),
            (ErrorClass::NotPrimary, Errno::EIO),
            (ErrorClass::Unavailable, Errno::EIO),
            (ErrorClass::Faulted, Errno::EIO),
            (ErrorClass::Other, Errno::EIO),
        ] {
            assert_eq!(errno_of(&call(class)), errno, "{class:?}");
        }
        let gone = ClientError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(errno_of(&gone), Errno::EIO, "an unreachable segment is an I/O error");
        assert_eq!(path_errno(&PathError::TooLong(2000)), Errno::ENAMETOOLONG);
        assert_eq!(path_errno(&PathError::DotDot("..".into())), Errno::EINVAL);
    }
}
