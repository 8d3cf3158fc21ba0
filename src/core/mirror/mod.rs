//! The mirror side of one session, as a plain state machine: every frame
//! that passed the codec's checksums comes in; either a fully resolved
//! operation comes out, or the reason the session must end.
//!
//! Nothing here touches a file: it checks sequence order, file-id bindings,
//! per-kind bounds and paths (brief rule 9), and keeps the id → path map in
//! step with the primary's. The executor (`crate::apply`) performs the result.

pub mod policy;

pub use policy::{acks_before_sync, ApplyState, Checkpoints, SessionPolicy, CHECKPOINT_MS};

use crate::core::primary::MAX_BOUND_FILES;
use crate::protocol::path::FsPath;
use crate::protocol::path::{PathError, RelPath};
use crate::protocol::{
    Frame, Kind, ReconcileBody, ReconcileEntry, FLAG_CATCHING_UP, FLAG_DURABLE, MAX_FILE_BYTES, MAX_WRITE_AT,
};
use bytes::Bytes;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("frame {got} is out of order (expected {want})")]
    OutOfOrder { want: u64, got: u64 },
    #[error("{kind} frame {seq}: file id {id} is not bound")]
    UnknownFile { kind: &'static str, seq: u64, id: u32 },
    #[error("{kind} frame {seq} names no file: its file id field is unset (a Bind gives a path an id from 1 up)")]
    NoFile { kind: &'static str, seq: u64 },
    #[error("bind frame {seq}: file id {id} is already bound")]
    Rebind { seq: u64, id: u32 },
    #[error("bind frame {seq}: file ids start at 1 (the field is unset)")]
    BindNoId { seq: u64 },
    #[error("frame {seq}: filespace {fs} does not exist (this mirror has {count})")]
    NoFilespace { seq: u64, fs: u16, count: u16 },
    #[error("frame {seq}: path refused: {err}")]
    BadPath { seq: u64, err: PathError },
    #[error("{kind} frame {seq}: {what}")]
    Bounds { kind: &'static str, seq: u64, what: String },
    #[error("a {kind} frame goes from mirror to primary: a primary must not send one")]
    WrongDirection { kind: &'static str },
    #[error("more than {MAX_BOUND_FILES} files bound in one session")]
    TooManyFiles,
}

/// A validated operation, ready to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Binding only: nothing to do on disk.
    Bind,
    Create {
        id: u32,
        path: FsPath,
    },
    Write {
        id: u32,
        path: FsPath,
        offset: u64,
        data: Bytes,
    },
    Truncate {
        id: u32,
        path: FsPath,
        len: u64,
    },
    Unlink {
        id: u32,
        path: FsPath,
    },
    /// Sync or flush: the file's data up to here, and every directory
    /// entry changed so far, must be durable.
    Sync {
        id: u32,
        path: FsPath,
    },
    /// Every directory entry changed so far must be durable.
    SyncDirs,
    Mkdir {
        path: FsPath,
    },
    Rmdir {
        path: FsPath,
    },
    Rename {
        from: FsPath,
        to: FsPath,
    },
    /// Resync, compare mode: hash `count` blocks from `first` and answer.
    Hash {
        id: u32,
        path: FsPath,
        first: u64,
        count: u32,
        block_size: u32,
    },
    /// Verification: list the directory `path` (`None`: the filespace root) and answer.
    List {
        filespace: u16,
        path: Option<RelPath>,
    },
    /// Resync: make `path` (`None`: the filespace root) what the primary has.
    Reconcile {
        filespace: u16,
        path: Option<RelPath>,
        entry: ReconcileEntry,
        /// For a file: its length.
        len: u64,
    },
}

/// What one frame asks of the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Apply {
        seq: u64,
        op: Op,
        durable: bool,
        /// Shipped during a resync ([`crate::protocol::FLAG_CATCHING_UP`]).
        catching_up: bool,
    },
    /// Answer with an acknowledgement.
    Heartbeat,
    /// Make everything durable, acknowledge, close.
    Shutdown,
}

#[derive(Debug)]
pub struct MirrorSession {
    block_size: u32,
    filespaces: u16,
    expected_seq: u64,
    bindings: HashMap<u32, FsPath>,
}

impl MirrorSession {
    pub fn new(block_size: u32, filespaces: u16, start_seq: u64) -> MirrorSession {
        MirrorSession { block_size, filespaces, expected_seq: start_seq.max(1), bindings: HashMap::new() }
    }

    /// The last sequence number accepted.
    pub fn received(&self) -> u64 {
        self.expected_seq - 1
    }

    fn path_of(&self, kind: Kind, seq: u64, id: u32) -> Result<FsPath, SessionError> {
        if id == 0 {
            return Err(SessionError::NoFile { kind: kind.name(), seq });
        }
        self.bindings.get(&id).cloned().ok_or(SessionError::UnknownFile { kind: kind.name(), seq, id })
    }

    fn body_path(&self, seq: u64, fs: u16, raw: &[u8]) -> Result<FsPath, SessionError> {
        if fs >= self.filespaces {
            return Err(SessionError::NoFilespace { seq, fs, count: self.filespaces });
        }
        let p = RelPath::from_bytes(raw).map_err(|err| SessionError::BadPath { seq, err })?;
        Ok(FsPath::new(fs, p))
    }

    pub fn on_frame(&mut self, f: &Frame) -> Result<Step, SessionError> {
        let h = &f.header;
        let kind = h.kind.name();
        if !h.kind.is_operation() {
            if !f.body.is_empty() || h.seq != 0 {
                return Err(SessionError::Bounds {
                    kind,
                    seq: h.seq,
                    what: "a control frame carries no body and no sequence number".into(),
                });
            }
            return match h.kind {
                Kind::Heartbeat => Ok(Step::Heartbeat),
                // The primary names its last frame: nothing may follow it.
                Kind::Shutdown if h.offset != self.received() => Err(SessionError::Bounds {
                    kind,
                    seq: h.offset,
                    what: format!("shutdown after {} but {} frames were received", h.offset, self.received()),
                }),
                Kind::Shutdown => Ok(Step::Shutdown),
                _ => Err(SessionError::WrongDirection { kind }),
            };
        }
        if h.seq != self.expected_seq {
            return Err(SessionError::OutOfOrder { want: self.expected_seq, got: h.seq });
        }
        let seq = h.seq;
        let bounds = |what: String| SessionError::Bounds { kind, seq, what };
        let no_body = |len: usize| {
            if len != 0 {
                Err(SessionError::Bounds { kind, seq, what: format!("carries a {len}-byte body; none expected") })
            } else {
                Ok(())
            }
        };
        let op = match h.kind {
            Kind::Bind => {
                if h.file_id == 0 {
                    return Err(SessionError::BindNoId { seq });
                }
                if self.bindings.contains_key(&h.file_id) {
                    return Err(SessionError::Rebind { seq, id: h.file_id });
                }
                if self.bindings.len() >= MAX_BOUND_FILES {
                    return Err(SessionError::TooManyFiles);
                }
                let p = self.body_path(seq, h.filespace, &f.body)?;
                self.bindings.insert(h.file_id, p);
                Op::Bind
            }
            Kind::Create => {
                no_body(f.body.len())?;
                Op::Create { id: h.file_id, path: self.path_of(h.kind, seq, h.file_id)? }
            }
            Kind::WriteBlock | Kind::Extend => {
                if f.body.len() != self.block_size as usize {
                    return Err(bounds(format!(
                        "body is {} bytes; the block size is {}",
                        f.body.len(),
                        self.block_size
                    )));
                }
                let start = h.offset.checked_mul(self.block_size as u64);
                crate::protocol::file_end(start, self.block_size as u64).ok_or_else(|| {
                    bounds(format!("block {} ends past the largest file ({MAX_FILE_BYTES} bytes)", h.offset))
                })?;
                let offset = start.unwrap_or_default();
                Op::Write { id: h.file_id, path: self.path_of(h.kind, seq, h.file_id)?, offset, data: f.body.clone() }
            }
            Kind::WriteAt => {
                if f.body.is_empty() || f.body.len() > MAX_WRITE_AT {
                    return Err(bounds(format!("body is {} bytes; 1..={MAX_WRITE_AT} allowed", f.body.len())));
                }
                if crate::protocol::file_end(Some(h.offset), f.body.len() as u64).is_none() {
                    return Err(bounds(format!(
                        "byte {} ends past the largest file ({MAX_FILE_BYTES} bytes)",
                        h.offset
                    )));
                }
                Op::Write {
                    id: h.file_id,
                    path: self.path_of(h.kind, seq, h.file_id)?,
                    offset: h.offset,
                    data: f.body.clone(),
                }
            }
            Kind::Truncate => {
                no_body(f.body.len())?;
                if crate::protocol::file_end(Some(h.offset), 0).is_none() {
                    return Err(bounds(format!(
                        "length {} is past the largest file ({MAX_FILE_BYTES} bytes)",
                        h.offset
                    )));
                }
                Op::Truncate { id: h.file_id, path: self.path_of(h.kind, seq, h.file_id)?, len: h.offset }
            }
            Kind::Unlink => {
                no_body(f.body.len())?;
                let path = self.path_of(h.kind, seq, h.file_id)?;
                self.bindings.remove(&h.file_id);
                Op::Unlink { id: h.file_id, path }
            }
            Kind::Sync | Kind::Flush => {
                no_body(f.body.len())?;
                Op::Sync { id: h.file_id, path: self.path_of(h.kind, seq, h.file_id)? }
            }
            Kind::SyncDirs => {
                no_body(f.body.len())?;
                if h.filespace >= self.filespaces {
                    return Err(SessionError::NoFilespace { seq, fs: h.filespace, count: self.filespaces });
                }
                Op::SyncDirs
            }
            Kind::Mkdir => Op::Mkdir { path: self.body_path(seq, h.filespace, &f.body)? },
            Kind::Rmdir => Op::Rmdir { path: self.body_path(seq, h.filespace, &f.body)? },
            Kind::Rename => {
                let split = h.aux as usize;
                if split == 0 || split >= f.body.len() {
                    return Err(bounds(format!("source length {split} does not split a {}-byte body", f.body.len())));
                }
                let from = self.body_path(seq, h.filespace, &f.body[..split])?;
                let to = self.body_path(seq, h.filespace, &f.body[split..])?;
                if to.path.is_within(&from.path) {
                    return Err(bounds(format!("cannot move {} into itself ({})", from.path, to.path)));
                }
                self.rebind(&from, &to);
                Op::Rename { from, to }
            }
            Kind::Reconcile => {
                let body = ReconcileBody::decode(&f.body).map_err(bounds)?;
                if h.filespace >= self.filespaces {
                    return Err(SessionError::NoFilespace { seq, fs: h.filespace, count: self.filespaces });
                }
                if crate::protocol::file_end(Some(h.offset), 0).is_none() {
                    return Err(bounds(format!(
                        "length {} is past the largest file ({MAX_FILE_BYTES} bytes)",
                        h.offset
                    )));
                }
                let path =
                    if body.path.is_empty() { None } else { Some(self.body_path(seq, h.filespace, &body.path)?.path) };
                if let ReconcileEntry::Dir { keep: Some(children) } = &body.entry {
                    for (name, _) in children {
                        RelPath::top(name).map_err(|err| SessionError::BadPath { seq, err })?;
                    }
                }
                Op::Reconcile { filespace: h.filespace, path, entry: body.entry, len: h.offset }
            }
            Kind::HashRequest => {
                no_body(f.body.len())?;
                if h.aux == 0 || h.aux > crate::protocol::MAX_HASH_BLOCKS {
                    return Err(bounds(format!("{} blocks; 1..={} allowed", h.aux, crate::protocol::MAX_HASH_BLOCKS)));
                }
                let end = h.offset.checked_add(h.aux as u64).and_then(|e| e.checked_mul(self.block_size as u64));
                if crate::protocol::file_end(end, 0).is_none() {
                    return Err(bounds(format!(
                        "block {} is past the largest file ({MAX_FILE_BYTES} bytes)",
                        h.offset
                    )));
                }
                Op::Hash {
                    id: h.file_id,
                    path: self.path_of(h.kind, seq, h.file_id)?,
                    first: h.offset,
                    count: h.aux,
                    block_size: self.block_size,
                }
            }
            Kind::ListRequest => {
                if h.filespace >= self.filespaces {
                    return Err(SessionError::NoFilespace { seq, fs: h.filespace, count: self.filespaces });
                }
                let path = if f.body.is_empty() { None } else { Some(self.body_path(seq, h.filespace, &f.body)?.path) };
                Op::List { filespace: h.filespace, path }
            }
            Kind::Heartbeat | Kind::Shutdown | Kind::Ack | Kind::Fault | Kind::Hashes | Kind::Listing => {
                return Err(SessionError::WrongDirection { kind })
            }
        };
        self.expected_seq += 1;
        Ok(Step::Apply { seq, op, durable: h.flags & FLAG_DURABLE != 0, catching_up: h.flags & FLAG_CATCHING_UP != 0 })
    }

    fn rebind(&mut self, from: &FsPath, to: &FsPath) {
        self.bindings.retain(|_, p| {
            !(p.filespace == to.filespace && p.path.is_within(&to.path)) || p.path.is_within(&from.path)
        });
        // A binding whose new path would be too long is retired, as on the primary.
        self.bindings.retain(|_, p| {
            if p.filespace != from.filespace || !p.path.is_within(&from.path) {
                return true;
            }
            match p.path.rebase(&from.path, &to.path) {
                Some(np) => {
                    p.path = np;
                    true
                }
                None => false,
            }
        });
    }
}

/// Whether a session recorded as streaming in boot `recorded` was cut by
/// the host going down: there is a record, and it is of another boot than
/// `now` (or this boot is not known). The segment process (boot ids) and
/// the simulator (boot counts) both ask here.
pub fn lost_power_streaming<B: PartialEq + ?Sized>(recorded: Option<&B>, now: Option<&B>) -> bool {
    recorded.is_some_and(|r| now.is_none_or(|n| n != r))
}

/// Why a mirror asked to serve as primary must not. Rule 8: its disk
/// failed (a write, or the sync that ends its session), so what it had
/// only applied may be gone and its files are in doubt until a full
/// resync. Or its host lost power while it streamed (`lost_power_streaming`:
/// a session of an earlier boot never ended by making what it applied
/// durable): writes it acknowledged as applied went with the page cache,
/// and its primary, which still has them, must bring it back first.
/// `None`: it may be promoted. The segment process and the simulator both
/// ask here.
pub fn promotion_refusal(fault: Option<&str>, lost_power_streaming: bool) -> Option<String> {
    match fault {
        Some(why) => Some(format!(
            "this mirror's disk failed as it was promoted ({why}): its files are in doubt until a full resync"
        )),
        None if lost_power_streaming => Some(
            "this mirror's host went down while it streamed: writes it acknowledged as applied and had not yet made \
             durable may be gone; recover it from its primary (filerep recover) before it serves"
                .to_string(),
        ),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Header;

    fn frame(kind: Kind, seq: u64, id: u32, offset: u64, body: &[u8]) -> Frame {
        let mut h = Header::new(kind);
        h.seq = seq;
        h.file_id = id;
        h.offset = offset;
        Frame::new(h, Bytes::copy_from_slice(body))
    }

    #[test]
    fn sync_dirs_carries_no_body_and_names_a_filespace() {
        let mut m = MirrorSession::new(8192, 2, 1);
        assert!(matches!(m.on_frame(&frame(Kind::SyncDirs, 1, 0, 0, b"x")), Err(SessionError::Bounds { .. })));
        let mut h = Header::new(Kind::SyncDirs);
        h.seq = 1;
        h.filespace = 2;
        let e = m.on_frame(&Frame::new(h, Bytes::new())).unwrap_err();
        assert!(matches!(e, SessionError::NoFilespace { fs: 2, .. }), "{e}");
        h.filespace = 1;
        assert!(matches!(m.on_frame(&Frame::new(h, Bytes::new())), Ok(Step::Apply { seq: 1, op: Op::SyncDirs, .. })));
    }

    #[test]
    fn binds_then_writes_in_order() {
        let mut m = MirrorSession::new(8192, 2, 1);
        assert!(matches!(m.on_frame(&frame(Kind::Bind, 1, 5, 0, b"base/1")), Ok(Step::Apply { op: Op::Bind, .. })));
        let step = m.on_frame(&frame(Kind::WriteBlock, 2, 5, 3, &[1; 8192])).unwrap();
        match step {
            Step::Apply { seq: 2, op: Op::Write { offset, path, .. }, durable: false, .. } => {
                assert_eq!(offset, 3 * 8192);
                assert_eq!(path.path.as_str(), "base/1");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(m.received(), 2);
        assert_eq!(m.on_frame(&frame(Kind::Flush, 4, 5, 0, b"")), Err(SessionError::OutOfOrder { want: 3, got: 4 }));
    }

    #[test]
    fn refuses_hostile_frames() {
        let mut m = MirrorSession::new(8192, 1, 1);
        assert!(matches!(m.on_frame(&frame(Kind::Bind, 1, 1, 0, b"../etc/passwd")), Err(SessionError::BadPath { .. })));
        let mut m = MirrorSession::new(8192, 1, 1);
        assert!(matches!(m.on_frame(&frame(Kind::Bind, 1, 1, 0, b"/etc/passwd")), Err(SessionError::BadPath { .. })));
        let mut m = MirrorSession::new(8192, 1, 1);
        assert!(matches!(
            m.on_frame(&frame(Kind::WriteBlock, 1, 9, 0, &[0; 8192])),
            Err(SessionError::UnknownFile { .. })
        ));
        let mut m = MirrorSession::new(8192, 1, 1);
        m.on_frame(&frame(Kind::Bind, 1, 1, 0, b"f")).unwrap();
        assert!(matches!(m.on_frame(&frame(Kind::WriteBlock, 2, 1, 0, &[0; 100])), Err(SessionError::Bounds { .. })));
        assert!(matches!(
            m.on_frame(&frame(Kind::WriteBlock, 2, 1, u64::MAX / 2, &[0; 8192])),
            Err(SessionError::Bounds { .. })
        ));
        assert!(matches!(
            m.on_frame(&frame(Kind::WriteAt, 2, 1, MAX_FILE_BYTES, b"x")),
            Err(SessionError::Bounds { .. })
        ));
        assert!(matches!(m.on_frame(&frame(Kind::Ack, 0, 0, 0, b"")), Err(SessionError::WrongDirection { .. })));
        assert!(matches!(m.on_frame(&frame(Kind::Heartbeat, 0, 0, 0, b"x")), Err(SessionError::Bounds { .. })));
        let top = u64::MAX / 8192;
        assert!(matches!(
            m.on_frame(&frame(Kind::WriteBlock, 2, 1, top, &[0; 8192])),
            Err(SessionError::Bounds { .. })
        ));
        let mut h = Header::new(Kind::Mkdir);
        h.seq = 2;
        h.filespace = 3;
        assert!(matches!(m.on_frame(&Frame::new(h, Bytes::from_static(b"d"))), Err(SessionError::NoFilespace { .. })));
    }

    #[test]
    fn reconcile_frames_are_checked() {
        use crate::protocol::{ChildKind, ReconcileBody};
        let frame_of = |body: &ReconcileBody, seq: u64, fs: u16| {
            let mut h = Header::new(Kind::Reconcile);
            h.seq = seq;
            h.filespace = fs;
            h.offset = 5;
            Frame::new(h, Bytes::from(body.encode()))
        };
        let mut m = MirrorSession::new(8192, 1, 1);
        let keep = vec![("a".to_string(), ChildKind::File), ("b".to_string(), ChildKind::Dir)];
        let good = ReconcileBody { entry: ReconcileEntry::Dir { keep: Some(keep) }, path: vec![] };
        match m.on_frame(&frame_of(&good, 1, 0)).unwrap() {
            Step::Apply { op: Op::Reconcile { path: None, entry, .. }, .. } => assert_eq!(entry, good.entry),
            other => panic!("unexpected {other:?}"),
        }
        for bad in [
            ReconcileBody { entry: ReconcileEntry::Absent, path: b"../x".to_vec() },
            ReconcileBody { entry: ReconcileEntry::File, path: vec![] },
            ReconcileBody {
                entry: ReconcileEntry::Dir { keep: Some(vec![("x/y".into(), ChildKind::File)]) },
                path: b"d".to_vec(),
            },
            ReconcileBody {
                entry: ReconcileEntry::Dir { keep: Some(vec![("..".into(), ChildKind::Dir)]) },
                path: vec![],
            },
        ] {
            let mut m = MirrorSession::new(8192, 1, 1);
            assert!(m.on_frame(&frame_of(&bad, 1, 0)).is_err(), "{bad:?}");
        }
        let mut m = MirrorSession::new(8192, 1, 1);
        assert!(matches!(m.on_frame(&frame_of(&good, 1, 4)), Err(SessionError::NoFilespace { .. })));
        // A cut body and trailing bytes.
        let mut raw = good.encode();
        raw.truncate(raw.len() - 1);
        assert!(ReconcileBody::decode(&raw).is_err());
        let mut raw = ReconcileBody { entry: ReconcileEntry::File, path: b"f".to_vec() }.encode();
        raw.push(0);
        assert!(ReconcileBody::decode(&raw).is_err());
    }

    #[test]
    fn hash_requests_are_bounded() {
        let req = |seq, count: u32, first: u64| {
            let mut h = Header::new(Kind::HashRequest);
            h.seq = seq;
            h.file_id = 1;
            h.offset = first;
            h.aux = count;
            Frame::new(h, Bytes::new())
        };
        let mut m = MirrorSession::new(8192, 1, 1);
        m.on_frame(&frame(Kind::Bind, 1, 1, 0, b"f")).unwrap();
        match m.on_frame(&req(2, 32, 64)).unwrap() {
            Step::Apply { op: Op::Hash { first: 64, count: 32, block_size: 8192, .. }, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        for (count, first) in [(0, 0), (crate::protocol::MAX_HASH_BLOCKS + 1, 0), (1, u64::MAX / 2)] {
            let mut m = MirrorSession::new(8192, 1, 1);
            m.on_frame(&frame(Kind::Bind, 1, 1, 0, b"f")).unwrap();
            assert!(matches!(m.on_frame(&req(2, count, first)), Err(SessionError::Bounds { .. })), "{count} {first}");
        }
        let mut m = MirrorSession::new(8192, 1, 1);
        assert!(matches!(m.on_frame(&frame(Kind::Hashes, 0, 0, 0, b"")), Err(SessionError::WrongDirection { .. })));
    }

    #[test]
    fn list_requests_name_a_directory_of_an_existing_filespace() {
        let list = |seq, fs: u16, body: &[u8]| {
            let mut h = Header::new(Kind::ListRequest);
            h.seq = seq;
            h.filespace = fs;
            Frame::new(h, Bytes::copy_from_slice(body))
        };
        let mut m = MirrorSession::new(8192, 2, 1);
        match m.on_frame(&list(1, 1, b"")).unwrap() {
            Step::Apply { op: Op::List { filespace: 1, path: None }, .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        match m.on_frame(&list(2, 0, b"a/b")).unwrap() {
            Step::Apply { op: Op::List { filespace: 0, path: Some(p) }, .. } => assert_eq!(p.as_str(), "a/b"),
            other => panic!("unexpected {other:?}"),
        }
        let mut m = MirrorSession::new(8192, 2, 1);
        assert!(m.on_frame(&list(1, 0, b"../x")).is_err());
        let mut m = MirrorSession::new(8192, 2, 1);
        assert!(matches!(m.on_frame(&list(1, 2, b"")), Err(SessionError::NoFilespace { .. })));
        let mut m = MirrorSession::new(8192, 2, 1);
        assert!(matches!(m.on_frame(&frame(Kind::Listing, 0, 0, 0, b"")), Err(SessionError::WrongDirection { .. })));
    }

    #[test]
    fn rename_rebinds_ids() {
        let mut m = MirrorSession::new(8192, 1, 1);
        m.on_frame(&frame(Kind::Bind, 1, 1, 0, b"d/f")).unwrap();
        let mut h = Header::new(Kind::Rename);
        h.seq = 2;
        h.aux = 1;
        m.on_frame(&Frame::new(h, Bytes::from_static(b"de"))).unwrap();
        match m.on_frame(&frame(Kind::Truncate, 3, 1, 0, b"")).unwrap() {
            Step::Apply { op: Op::Truncate { path, .. }, .. } => assert_eq!(path.path.as_str(), "e/f"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
