//! Settings shared by the primary and the mirror.

use crate::error::{Error, Result};
use crate::protocol::handshake::valid_filespace_name;
use crate::protocol::BLOCK_SIZES;
use std::path::PathBuf;
use std::time::Duration;

/// A filespace: a name agreed by both sides and this host's root for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filespace {
    pub name: String,
    pub root: PathBuf,
}

impl Filespace {
    /// Parse `NAME=DIR` (command lines and config files).
    pub fn parse(spec: &str) -> Result<Filespace> {
        let (name, root) = spec.split_once('=').ok_or_else(|| {
            Error::InvalidArgument(format!("filespace {spec:?}: expected NAME=DIRECTORY, e.g. pg_system=/data/fs0"))
        })?;
        if !valid_filespace_name(name) {
            return Err(Error::InvalidArgument(format!(
                "filespace name {name:?}: use 1 to 64 letters, digits, '_', '-' or '.'"
            )));
        }
        if root.is_empty() {
            return Err(Error::InvalidArgument(format!("filespace {name}: the directory is empty")));
        }
        Ok(Filespace { name: name.to_string(), root: PathBuf::from(root) })
    }
}

/// What identifies a pair's stream; both sides must agree on all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairIdentity {
    pub cluster_id: u64,
    pub content_id: u32,
    pub block_size: u32,
    pub generation: u64,
}

pub fn check_block_size(bs: u32) -> Result<u32> {
    if BLOCK_SIZES.contains(&bs) {
        Ok(bs)
    } else {
        Err(Error::InvalidArgument(format!("block size {bs}: choose 8192, 16384 or 32768 (8, 16 or 32 KiB)")))
    }
}

pub fn check_filespaces(fs: &[Filespace]) -> Result<()> {
    if fs.is_empty() || fs.len() > crate::protocol::handshake::MAX_FILESPACES {
        return Err(Error::InvalidArgument(format!(
            "{} filespaces given; between 1 and {} are allowed",
            fs.len(),
            crate::protocol::handshake::MAX_FILESPACES
        )));
    }
    for (i, a) in fs.iter().enumerate() {
        if fs[..i].iter().any(|b| b.name == a.name) {
            return Err(Error::InvalidArgument(format!("filespace {} is named twice", a.name)));
        }
    }
    Ok(())
}

/// When a call returns (brief rule 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncLevel {
    /// Return after the local write while at most `window` operations are
    /// unacknowledged by the mirror; wait otherwise.
    Async { window: u64 },
    /// Return when written locally and applied on the mirror (the default).
    Applied,
    /// Return when written locally and durable on the mirror.
    Durable,
}

impl SyncLevel {
    pub fn parse(s: &str) -> Result<SyncLevel> {
        match s {
            "applied" => Ok(SyncLevel::Applied),
            "durable" => Ok(SyncLevel::Durable),
            "async" => Ok(SyncLevel::Async { window: 256 }),
            other => {
                if let Some(w) = other.strip_prefix("async:") {
                    let window = w.parse::<u64>().ok().filter(|w| (1..=1_000_000).contains(w)).ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "sync level {other:?}: the window must be 1..=1000000 operations"
                        ))
                    })?;
                    return Ok(SyncLevel::Async { window });
                }
                Err(Error::InvalidArgument(format!(
                    "sync level {other:?}: choose applied (default), durable, async or async:WINDOW"
                )))
            }
        }
    }

    pub fn name(&self) -> String {
        match self {
            SyncLevel::Async { window } => format!("async:{window}"),
            SyncLevel::Applied => "applied".into(),
            SyncLevel::Durable => "durable".into(),
        }
    }
}

/// Timing and bounds of a stream.
#[derive(Clone, Debug)]
pub struct StreamTuning {
    pub heartbeat: Duration,
    /// Silence longer than this means the mirror is lost.
    pub ack_timeout: Duration,
    /// Frames queued for the sender before callers wait (backpressure).
    pub queue_frames: usize,
    pub handshake_timeout: Duration,
    /// Activity-log entries (extents of 32 blocks) a streaming primary holds
    /// before it retires those the mirror has durably (rule 5): fewer means
    /// a smaller log to resync after a crash and more frequent retiring.
    pub activity_limit: usize,
}

impl Default for StreamTuning {
    fn default() -> Self {
        StreamTuning {
            heartbeat: Duration::from_millis(200),
            ack_timeout: Duration::from_secs(5),
            queue_frames: 1024,
            // Also the mirror's deadline for an unauthenticated connection.
            handshake_timeout: crate::io::admission::DEFAULT_DEADLINE,
            activity_limit: crate::core::primary::ACTIVITY_LIMIT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(Filespace::parse("pg_system=/d").unwrap().name, "pg_system");
        assert!(Filespace::parse("nodir").is_err());
        assert!(Filespace::parse("bad name=/d").is_err());
        assert!(Filespace::parse("x=").is_err());
        assert_eq!(SyncLevel::parse("async:8").unwrap(), SyncLevel::Async { window: 8 });
        assert!(SyncLevel::parse("async:0").is_err());
        assert!(SyncLevel::parse("fast").is_err());
        assert!(check_block_size(4096).is_err());
        assert_eq!(check_block_size(16384).unwrap(), 16384);
    }
}
