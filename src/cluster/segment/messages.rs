//! The control messages between the arbiter and a segment (protocol.md
//! § 12, their JSON forms in protocol-vectors.md), the change sets they
//! carry, and the arbiter as a primary asks it ([`RemoteArbiter`]).

use crate::durable::changelog::{ChangeSet, EXTENT_BLOCKS};
use crate::io::disk::FsPath;
use crate::protocol::handshake::ClusterKey;
use crate::protocol::path::RelPath;
use crate::runtime::arbiter::{Arbiter, Decision};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::MAX_WIRE_ENTRIES;

/// Orders and questions from the arbiter to a segment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SegmentRequest {
    Probe,
    /// Serve as the mirror, refusing any primary below `generation`.
    BecomeMirror {
        generation: u64,
    },
    /// Serve as the primary at `generation`: streaming to the mirror at
    /// `mirror` (Synchronized), or alone in change tracking (`None`).
    BecomePrimary {
        generation: u64,
        mirror: Option<String>,
    },
    /// The change set this segment holds (an old primary's activity log).
    TakeChanges,
    /// Add a peer's change set to this primary's change-log.
    AddChanges {
        set: WireChangeSet,
    },
    /// Forget the change set (after it was handed over).
    ClearChanges,
    /// This mirror's files are about to be rebuilt by a full resync
    /// (`filerep recover -F`): forget its disk's fault (rule 8's sticky
    /// record), so that the rebuilding primary is admitted.
    RebuildMirror,
    /// Take the mirror at `mirror` back and resync it (from change
    /// tracking), or run the resync again (a mirror already taken back).
    StartResync {
        generation: u64,
        mirror: String,
        full: bool,
        max_rate: Option<u64>,
        /// Compare hashes of every listed block and ship only those that differ.
        #[serde(default)]
        compare: bool,
        /// Bytes shipped between durable progress records (`None`: the default).
        #[serde(default)]
        checkpoint_bytes: Option<u64>,
    },
    /// Listen for replication on another address from now on (not while
    /// acting as mirror). `filerep addmirrors` gives a primary its
    /// replication port by the seeds' arithmetic.
    Rebind {
        data_listen: String,
    },
    /// Compare the mirror with this primary online, block by block, in a
    /// background thread (`filerep verify`); with `repair`, ship what
    /// differs. Progress and counts show in the status (`verify`).
    StartVerify {
        generation: u64,
        #[serde(default)]
        repair: bool,
    },
    /// The full report (every mismatch row) of verification `id`.
    VerifyReport {
        id: u64,
    },
    /// Answer for this machine what the operator tools cannot see from
    /// another one (`filerep addmirrors`): each path with its symbolic
    /// links resolved here, what is there, and (flag set) whether a
    /// directory can be created and written there; whether each
    /// `(address, port)` is free here. Changes nothing (a directory made
    /// to prove it can be is removed at once). At most [`MAX_INSPECT`] of each.
    Inspect {
        paths: Vec<(PathBuf, bool)>,
        ports: Vec<(String, u16)>,
    },
    /// Stop the process.
    Stop,
    /// An order of the acting arbiter of `epoch`: carried out only if no
    /// order of a newer epoch was obeyed before (the epoch is recorded
    /// durably first). Role orders come only this way once the segment
    /// obeyed any epoch.
    Fenced {
        epoch: u64,
        order: Box<SegmentRequest>,
    },
}

impl SegmentRequest {
    /// An order that changes what the segment does with its data: only the
    /// acting arbiter gives it, fenced by its epoch. (Probes, reports,
    /// inspection, `Rebind` by `filerep addmirrors` and `Stop` by the
    /// operator need none.)
    pub fn needs_epoch(&self) -> bool {
        matches!(
            self,
            SegmentRequest::BecomeMirror { .. }
                | SegmentRequest::BecomePrimary { .. }
                | SegmentRequest::TakeChanges
                | SegmentRequest::AddChanges { .. }
                | SegmentRequest::ClearChanges
                | SegmentRequest::RebuildMirror
                | SegmentRequest::StartResync { .. }
                | SegmentRequest::StartVerify { .. }
        )
    }
}

/// Most paths (and ports) one `Inspect` asks about.
pub const MAX_INSPECT: usize = 8192;

// One per control call: the size of the status variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SegmentResponse {
    Status(SegmentStatus),
    Changes(WireChangeSet),
    Done,
    Refused(String),
    /// Verification `id` runs (just started, or already running).
    Verifying {
        id: u64,
    },
    VerifyReport(Box<crate::verify::online::VerifyReport>),
    /// The answers to `Inspect`, in its order.
    Inspected {
        paths: Vec<std::result::Result<crate::cluster::layout::PathInfo, String>>,
        ports: Vec<std::result::Result<(), String>>,
    },
}

pub use crate::core::arbiter::Acting;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentStatus {
    pub dbid: u32,
    pub content: u32,
    pub acting: Acting,
    pub generation: u64,
    /// The primary's view: `s` streaming, `c` change tracking, `d` deciding,
    /// `f` failed; `-` for other roles.
    pub mode: char,
    pub detail: String,
    /// The change-log holds changes (for a non-primary: to hand over).
    pub changes_pending: bool,
    /// A mirror that faulted (its disk failed): never promoted.
    #[serde(default)]
    pub faulted: bool,
    /// A primary failed (`f`) only because it could not ask the arbiter
    /// about its lost mirror: the arbiter may tell it to go on alone.
    #[serde(default)]
    pub unheard: bool,
    /// A mirror (or a segment back and idle) whose host went down while it
    /// streamed: never promoted, no longer in sync.
    #[serde(default)]
    pub lost_power_streaming: bool,
    /// The resync in progress (or the last one), as counted so far.
    #[serde(default)]
    pub resync: Option<crate::runtime::resync::ProgressSnapshot>,
    /// Why the last resync stopped short, if it did.
    #[serde(default)]
    pub resync_error: Option<String>,
    /// The running (or last) verification.
    #[serde(default)]
    pub verify: Option<crate::verify::online::VerifyState>,
    /// Replication figures, while this segment is the primary.
    #[serde(default)]
    pub replication: Option<crate::runtime::primary::ReplicationStats>,
    /// What the change-log holds.
    #[serde(default)]
    pub changelog: Option<crate::durable::changelog::ChangeLogStats>,
    /// The highest arbiter epoch whose order it obeyed.
    #[serde(default)]
    pub epoch: u64,
}

impl SegmentStatus {
    /// A plain status: the segment acts so at `generation`, with nothing
    /// pending, no fault, no figures (test segments and benchmarks).
    pub fn plain(dbid: u32, content: u32, acting: Acting, generation: u64, mode: char) -> SegmentStatus {
        SegmentStatus {
            dbid,
            content,
            acting,
            generation,
            mode,
            detail: String::new(),
            changes_pending: false,
            faulted: false,
            unheard: false,
            lost_power_streaming: false,
            resync: None,
            resync_error: None,
            verify: None,
            replication: None,
            changelog: None,
            epoch: 0,
        }
    }

    /// What the arbiter's round decides from.
    pub fn seen(&self) -> crate::core::arbiter::Seen {
        crate::core::arbiter::Seen {
            dbid: self.dbid,
            acting: self.acting,
            generation: self.generation,
            mode: self.mode,
            changes_pending: self.changes_pending,
            faulted: self.faulted,
            unheard: self.unheard,
            lost_power_streaming: self.lost_power_streaming,
        }
    }
}

/// Questions from a segment to the arbiter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ArbiterRequest {
    MirrorLost {
        dbid: u32,
        content: u32,
        generation: u64,
        reason: String,
    },
    /// The whole catalog (for operators and tests).
    Catalog,
    /// Write the catalog the arbiter holds to its file again (and the last
    /// good copy): `filerep catalog restore` while the arbiter runs.
    StoreCatalog,
    /// `filerep recover`: resync the pair (`full`: every file), at most
    /// `max_rate` bytes a second.
    Recover {
        content: u32,
        full: bool,
        max_rate: Option<u64>,
        #[serde(default)]
        compare: bool,
        #[serde(default)]
        checkpoint_bytes: Option<u64>,
    },
    /// `filerep recover -r`: return the pair's segments to their preferred roles.
    Rebalance {
        content: u32,
    },
    /// `filerep addmirrors`: give unmirrored contents their mirrors (all or none).
    AddMirrors {
        mirrors: Vec<NewMirror>,
    },
    /// `filerep verify`: compare a synchronized pair online (and repair it).
    Verify {
        content: u32,
        #[serde(default)]
        repair: bool,
    },
    /// Whether this arbiter acts (any arbiter answers, acting or not).
    Leadership,
}

/// A mirror to add: its content and where it listens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewMirror {
    pub content: u32,
    pub address: crate::durable::catalog::SegmentAddress,
    /// The primary's replication address from now on (`None`: unchanged).
    #[serde(default)]
    pub primary_data: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ArbiterResponse {
    MirrorDown,
    Demoted,
    Catalog(Box<crate::durable::catalog::Catalog>),
    /// The resync was ordered.
    Started,
    /// The segment was down; it is back in change tracking at `generation`
    /// from its acting primary. Ask again once the primary serves there.
    Restored {
        generation: u64,
    },
    /// Verification `id` runs on the acting primary `dbid` (at `generation`):
    /// follow it with probes there.
    Verifying {
        dbid: u32,
        generation: u64,
        id: u64,
    },
    Refused(String),
    /// This arbiter does not act (it stands by, or cannot reach its
    /// coordinator): ask `leader`, or another arbiter of the cluster.
    NotActing {
        leader: Option<String>,
        why: String,
    },
    /// The answer to `Leadership`.
    Leadership {
        arbiter: String,
        coordinator: String,
        leadership: crate::durable::catalog::Leadership,
    },
}

/// A change set on the wire: runs of blocks, extents and touched paths per file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChangeSet {
    pub files: Vec<WireFile>,
    pub touched: Vec<(u16, String, bool)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFile {
    pub filespace: u16,
    pub path: String,
    /// `(first block, count)` runs.
    pub runs: Vec<(u64, u64)>,
    pub extents: Vec<u64>,
}

impl WireChangeSet {
    pub fn from_set(set: &ChangeSet) -> WireChangeSet {
        let mut files: BTreeMap<&FsPath, WireFile> = BTreeMap::new();
        let entry = |p: &FsPath| WireFile {
            filespace: p.filespace,
            path: p.path.as_str().to_string(),
            runs: Vec::new(),
            extents: Vec::new(),
        };
        for (p, blocks) in &set.blocks {
            let f = files.entry(p).or_insert_with(|| entry(p));
            for b in blocks {
                match f.runs.last_mut() {
                    Some((first, n)) if *first + *n == *b => *n += 1,
                    _ => f.runs.push((*b, 1)),
                }
            }
        }
        for (p, es) in &set.extents {
            files.entry(p).or_insert_with(|| entry(p)).extents.extend(es.iter().copied());
        }
        WireChangeSet {
            files: files.into_values().collect(),
            touched: set.touched.iter().map(|(p, s)| (p.filespace, p.path.as_str().to_string(), *s)).collect(),
        }
    }

    /// Back to a change set; paths, filespaces and sizes are checked.
    pub fn to_set(&self, filespaces: usize) -> std::result::Result<ChangeSet, String> {
        let mut set = ChangeSet::default();
        let mut entries = 0usize;
        let path = |fs: u16, p: &str| -> std::result::Result<FsPath, String> {
            if fs as usize >= filespaces {
                return Err(format!("filespace {fs} does not exist"));
            }
            Ok(FsPath::new(fs, RelPath::new(p).map_err(|e| format!("path {p:?}: {e}"))?))
        };
        for f in &self.files {
            let p = path(f.filespace, &f.path)?;
            for (first, n) in &f.runs {
                entries = entries.saturating_add(*n as usize);
                if entries > MAX_WIRE_ENTRIES || first.checked_add(*n).is_none() {
                    return Err(format!("more than {MAX_WIRE_ENTRIES} blocks"));
                }
                set.blocks.entry(p.clone()).or_default().extend(*first..*first + *n);
            }
            for e in &f.extents {
                entries = entries.saturating_add(EXTENT_BLOCKS as usize);
                if entries > MAX_WIRE_ENTRIES || e.checked_mul(EXTENT_BLOCKS).is_none() {
                    return Err(format!("more than {MAX_WIRE_ENTRIES} blocks"));
                }
                set.extents.entry(p.clone()).or_default().insert(*e);
            }
        }
        for (fs, p, subtree) in &self.touched {
            *set.touched.entry(path(*fs, p)?).or_insert(false) |= *subtree;
        }
        Ok(set)
    }
}

/// The arbiter as a primary sees it: a control call to the acting arbiter
/// process.
pub struct RemoteArbiter {
    /// The arbiters' addresses (comma-separated: one acts at a time).
    pub addr: String,
    pub key: ClusterKey,
    pub dbid: u32,
    pub timeout: Duration,
}

impl Arbiter for RemoteArbiter {
    /// Asked again, with backoff, until `timeout` when the arbiter cannot
    /// be reached (asking twice is harmless: the same loss of the same
    /// generation gets the same answer); its answers are final.
    fn mirror_lost(&self, content: u32, generation: u64, reason: &str) -> std::result::Result<Decision, String> {
        let req = ArbiterRequest::MirrorLost { dbid: self.dbid, content, generation, reason: reason.into() };
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(50);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let asked = crate::cluster::probe::ask(&self.addr, &self.key, &req, left.max(Duration::from_millis(1)));
            match asked {
                Ok(ArbiterResponse::MirrorDown) => return Ok(Decision::MirrorDown),
                Ok(ArbiterResponse::Demoted) => return Ok(Decision::Demoted),
                Ok(other) => return Err(format!("the arbiter answered {other:?}")),
                Err(e) if Instant::now() + pause >= deadline => {
                    return Err(format!("cannot reach the arbiter ({attempts} attempts): {e}"))
                }
                Err(e) => {
                    tracing::warn!(content, generation, attempts, error = %e, "cannot reach the arbiter; asking again");
                    std::thread::sleep(pause); // a backoff between attempts
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}
