//! A segment's configuration file (`SegmentConfig`, sealed or plain
//! JSON; docs/operations.md) and the role record it keeps in its state
//! directory (`RoleRecord`, `roles.json`).

use crate::config::{Filespace, StreamTuning, SyncLevel};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The highest generation at which a segment was ordered to act as
/// primary, and as mirror, recorded before it does (`roles.json` in its
/// state directory, sealed): which segment of a pair acted as primary
/// last, for `filerep catalog restore` when it rebuilds a catalog while
/// the cluster is stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRecord {
    pub primary: u64,
    pub mirror: u64,
    /// The highest arbiter epoch whose order it obeyed (0: none yet, or a
    /// record from before epochs): orders of an older one are refused.
    #[serde(default)]
    pub epoch: u64,
}

impl RoleRecord {
    pub const FILE: &'static str = "roles.json";
    pub const VERSION: u32 = 1;

    /// The record in `state_dir` (none yet: zeros).
    pub fn load(state_dir: &std::path::Path) -> Result<RoleRecord> {
        use crate::durable::sealed;
        let restore = "remove it: the arbiter's next order writes it again";
        let path = state_dir.join(Self::FILE);
        Ok(sealed::read_state(&path, sealed::Kind::SegmentRoles, Self::VERSION, false, restore)?.unwrap_or_default())
    }

    /// Raise the record to these generations, durably.
    pub(super) fn note(state_dir: &std::path::Path, primary: Option<u64>, mirror: Option<u64>) -> Result<()> {
        Self::raise(state_dir, |old| RoleRecord {
            primary: old.primary.max(primary.unwrap_or(0)),
            mirror: old.mirror.max(mirror.unwrap_or(0)),
            epoch: old.epoch,
        })
    }

    /// Raise the record's epoch, durably (before the order is obeyed).
    pub(super) fn note_epoch(state_dir: &std::path::Path, epoch: u64) -> Result<()> {
        Self::raise(state_dir, |old| RoleRecord { epoch: old.epoch.max(epoch), ..old })
    }

    fn raise(state_dir: &std::path::Path, to: impl FnOnce(RoleRecord) -> RoleRecord) -> Result<()> {
        use crate::durable::sealed;
        let old = RoleRecord::load(state_dir).unwrap_or_default();
        let new = to(old);
        if new == old {
            return Ok(());
        }
        let path = state_dir.join(Self::FILE);
        let json = serde_json::to_vec(&new).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        sealed::replace(&path, &sealed::seal(sealed::Kind::SegmentRoles, Self::VERSION, &json))
            .map_err(|e| Error::io(format!("recording the role in {}", path.display()), e))
    }
}

/// The format version of a sealed segment configuration.
pub const CONFIG_VERSION: u32 = 1;

/// A segment's settings (a JSON file; `docs/operations.md`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    pub dbid: u32,
    pub content: u32,
    pub cluster_id: u64,
    pub block_size: u32,
    /// `NAME=DIRECTORY`, in the cluster's filespace order.
    pub filespaces: Vec<String>,
    pub key_file: PathBuf,
    /// Control endpoint (probes and orders), `HOST:PORT`.
    pub control_listen: String,
    /// Replication endpoint (used when this segment is the mirror).
    pub data_listen: String,
    /// Unix socket for local clients (used when it is the primary).
    pub socket: PathBuf,
    /// Change-log, activity log and mirror state live here.
    pub state_dir: PathBuf,
    /// The arbiter's control endpoint.
    pub arbiter: String,
    #[serde(default = "default_level")]
    pub sync_level: String,
    #[serde(default = "default_decision_ms")]
    pub decision_timeout_ms: u64,
    #[serde(default = "default_ack_ms")]
    pub ack_timeout_ms: u64,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long a new connection (replication, control or client socket)
    /// may take to prove itself before it is closed.
    #[serde(default = "default_handshake_ms")]
    pub handshake_timeout_ms: u64,
    #[serde(default = "default_true")]
    pub prefer_uring: bool,
    /// Aligned block writes with O_DIRECT, on both roles (the NVMe path:
    /// the page cache skipped, durability unchanged; docs/operations.md).
    #[serde(default)]
    pub direct: bool,
    /// Serve replication statistics as Prometheus text on `HOST:PORT`
    /// (`GET /metrics`); none when absent.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Activity-log entries (extents of 32 blocks) a streaming primary
    /// holds before it retires what the mirror has durably (DRBD's
    /// al-extents): 4 to 65536.
    #[serde(default = "default_activity_limit")]
    pub activity_limit: usize,
    /// Filespaces this process serves as file systems, as `filerep segment
    /// --mount` does (docs/mount.md): `filerep start` starts them with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountEntry>,
}

/// One filespace served as a file system by the segment process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountEntry {
    /// The filespace's name (one of `filespaces`).
    pub filespace: String,
    /// An absolute path outside every filespace; made if absent.
    pub mountpoint: PathBuf,
    /// Present every file and directory as owned by this user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Present every file and directory as owned by this group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Let users other than the one running the segment use the mount.
    #[serde(default)]
    pub allow_other: bool,
    /// Threads serving FUSE requests (1 to `mount::MAX_THREADS`).
    #[serde(default = "default_mount_threads")]
    pub threads: usize,
    /// Glob patterns (relative to the filespace root) of the database's
    /// log files, opened without the kernel's write-back cache; absent:
    /// `mount::log_files::DEFAULT_LOG_FILES`, empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_files: Option<Vec<String>>,
}

fn default_mount_threads() -> usize {
    8
}

fn default_level() -> String {
    "applied".into()
}
fn default_decision_ms() -> u64 {
    5000
}
fn default_ack_ms() -> u64 {
    3000
}
fn default_heartbeat_ms() -> u64 {
    200
}
fn default_activity_limit() -> usize {
    crate::core::primary::ACTIVITY_LIMIT
}
fn default_handshake_ms() -> u64 {
    crate::io::admission::DEFAULT_DEADLINE.as_millis() as u64
}
fn default_true() -> bool {
    true
}

impl SegmentConfig {
    /// Read a configuration: sealed (as the cluster tools write it: a
    /// changed byte is damage) or plain JSON (written by hand).
    pub fn load(path: &std::path::Path) -> Result<SegmentConfig> {
        use crate::durable::sealed;
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("reading segment config {}", path.display()), e))?;
        let json =
            sealed::body_or_plain(sealed::Kind::SegmentConfig, CONFIG_VERSION, &bytes).map_err(|e| Error::Damaged {
                what: "segment configuration",
                path: path.display().to_string(),
                reason: e.to_string(),
                restore:
                    "copy it back from another copy of the cluster directory, or write it again (docs/operations.md)"
                        .into(),
            })?;
        Self::parse(json, &path.display().to_string())
    }

    /// Decode and check a configuration's JSON; `origin` names it in messages.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<SegmentConfig> {
        let c: SegmentConfig = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidArgument(format!("segment config {origin}: {e}")))?;
        c.check().map_err(|e| Error::InvalidArgument(format!("segment config {origin}: {e}")))?;
        Ok(c)
    }

    /// The sealed form the cluster tools write.
    pub fn to_sealed(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(crate::durable::sealed::seal(crate::durable::sealed::Kind::SegmentConfig, CONFIG_VERSION, &json))
    }

    pub(super) fn check(&self) -> Result<()> {
        crate::config::check_block_size(self.block_size)?;
        self.filespaces()?;
        SyncLevel::parse(&self.sync_level)?;
        for (what, v) in [("decision_timeout_ms", self.decision_timeout_ms), ("ack_timeout_ms", self.ack_timeout_ms)] {
            if !(10..=600_000).contains(&v) {
                return Err(Error::InvalidArgument(format!("{what} = {v}: use 10 to 600000")));
            }
        }
        self.limits(1).check().map_err(|e| Error::InvalidArgument(format!("handshake_timeout_ms: {e}")))?;
        if !(10..=60_000).contains(&self.heartbeat_ms) || self.heartbeat_ms >= self.ack_timeout_ms {
            return Err(Error::InvalidArgument(format!(
                "heartbeat_ms = {}: use 10 to 60000, below ack_timeout_ms",
                self.heartbeat_ms
            )));
        }
        if !(4..=65_536).contains(&self.activity_limit) {
            return Err(Error::InvalidArgument(format!("activity_limit = {}: use 4 to 65536", self.activity_limit)));
        }
        self.check_mounts()
    }

    /// Each mount names a filespace of this segment, at an absolute path
    /// of its own outside every filespace, with a thread count in range;
    /// no filespace and no path twice. (Whether the path can be mounted is
    /// checked when the segment starts.)
    fn check_mounts(&self) -> Result<()> {
        let filespaces = self.filespaces()?;
        let bad = |i: usize, why: String| Err(Error::InvalidArgument(format!("mounts[{i}]: {why}")));
        for (i, m) in self.mounts.iter().enumerate() {
            if !filespaces.iter().any(|f| f.name == m.filespace) {
                let known: Vec<&str> = filespaces.iter().map(|f| f.name.as_str()).collect();
                return bad(
                    i,
                    format!("filespace {:?}: no such filespace (this segment has {})", m.filespace, known.join(", ")),
                );
            }
            if !crate::cluster::hosts::plain_absolute(&m.mountpoint) {
                return bad(i, format!("mountpoint {}: give an absolute path without . or ..", m.mountpoint.display()));
            }
            if let Some(f) =
                filespaces.iter().find(|f| m.mountpoint.starts_with(&f.root) || f.root.starts_with(&m.mountpoint))
            {
                return bad(
                    i,
                    format!(
                        "mountpoint {}: overlaps filespace {}'s root {}; mount outside it",
                        m.mountpoint.display(),
                        f.name,
                        f.root.display()
                    ),
                );
            }
            if !(1..=crate::mount::MAX_THREADS).contains(&m.threads) {
                return bad(i, format!("threads = {}: use 1 to {}", m.threads, crate::mount::MAX_THREADS));
            }
            if let Some(patterns) = &m.log_files {
                if let Err(e) = crate::mount::LogFiles::new(patterns) {
                    return bad(i, format!("log_files: {e}"));
                }
            }
            if let Some(j) =
                self.mounts[..i].iter().position(|o| o.filespace == m.filespace || o.mountpoint == m.mountpoint)
            {
                return bad(
                    i,
                    format!(
                        "filespace {} at {}: mounts[{j}] serves the same filespace or path",
                        m.filespace,
                        m.mountpoint.display()
                    ),
                );
            }
        }
        Ok(())
    }

    pub fn filespaces(&self) -> Result<Vec<Filespace>> {
        let fs = self.filespaces.iter().map(|s| Filespace::parse(s)).collect::<Result<Vec<_>>>()?;
        crate::config::check_filespaces(&fs)?;
        Ok(fs)
    }

    pub(super) fn tuning(&self) -> StreamTuning {
        StreamTuning {
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            activity_limit: self.activity_limit,
            ..StreamTuning::default()
        }
    }

    /// A listener's admission budgets, with this segment's handshake deadline.
    pub(super) fn limits(&self, established: usize) -> crate::io::admission::Limits {
        crate::io::admission::Limits::new(established).with_deadline(Duration::from_millis(self.handshake_timeout_ms))
    }
}
