//! The library's error type.

use crate::io::disk::DiskError;
use crate::protocol::handshake::{HandshakeError, Status};
use crate::protocol::path::PathError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The mirror stopped answering or broke the protocol. No further call
    /// succeeds on this stream: the pair is no longer synchronized.
    #[error("mirror lost: {0}")]
    MirrorLost(String),
    /// The change-log cannot be written: the segment needs a full resync.
    #[error("change tracking failed, a full resync is needed: {0}")]
    ChangeLog(#[from] crate::durable::changelog::ChangeLogError),
    /// The stream was shut down; no further call is accepted.
    #[error("closed: {0}")]
    Closed(String),
    /// A local write or fsync failed; nothing more is reported durable (brief rule 8).
    #[error("segment faulted: {0}")]
    Faulted(String),
    /// This segment is not the acting primary (it is the mirror, has no role
    /// yet, is handing its role over or stopping): retry the call on the
    /// acting primary. Nothing was changed.
    #[error("not the acting primary: {0}")]
    NotPrimary(String),
    /// An order or request that does not fit this segment's role or state.
    #[error("refused: {0}")]
    Rejected(String),
    /// A state file whose checksums or rules do not hold: said as damage,
    /// with the command that restores it.
    #[error("the {what} is damaged: {path}: {reason}; {restore}")]
    Damaged { what: &'static str, path: String, reason: String, restore: String },
    /// Something that was to happen did not (a process that did not start,
    /// a wait that ran out); the message names what and why.
    #[error("{0}")]
    NotDone(String),
    #[error("handshake with {peer}: {source}")]
    Handshake {
        peer: String,
        #[source]
        source: HandshakeError,
    },
    #[error("mirror {peer} refused the stream ({status:?}): {reason}")]
    Refused { peer: String, status: Status, reason: String },
    /// The coordinator (etcd) cannot be reached, refused a call, or this
    /// arbiter no longer acts on it.
    #[error("coordinator: {0}")]
    Coordinator(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// The message without its kind's prefix (`refused: `, `invalid
    /// argument: `), for a line that already says what happened.
    pub fn cause(&self) -> String {
        match self {
            Error::Rejected(m) | Error::InvalidArgument(m) | Error::NotDone(m) | Error::Coordinator(m) => m.clone(),
            Error::Damaged { path, reason, .. } => format!("{path}: {reason}"),
            e => e.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
