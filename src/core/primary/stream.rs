//! The primary side of one pair's stream, as a plain state machine.
//!
//! It assigns sequence numbers and file ids, builds frame headers, checks the
//! mirror's cumulative acknowledgements, and decides when a heartbeat is due
//! or the mirror has gone silent. The engine ([`super::Engine`]) owns it;
//! the runtime and the simulator reach it only through the engine. Time is
//! passed in as milliseconds, never read.

use crate::protocol::path::FsPath;
use crate::protocol::{Ack, Header, Kind};
use std::collections::{HashMap, HashSet};

/// Most file ids bound at once in one session; the mirror enforces the same.
pub const MAX_BOUND_FILES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamViolation {
    #[error("acknowledgement went backwards: had {had:?}, got {got:?}")]
    Backwards { had: Ack, got: Ack },
    #[error("acknowledgement {got:?} is beyond the last sequence sent ({last})")]
    Ahead { got: Ack, last: u64 },
    #[error("acknowledgement {0:?} breaks durable <= synced <= applied <= received")]
    Inconsistent(Ack),
    #[error("more than {MAX_BOUND_FILES} files bound in one session")]
    TooManyFiles,
}

/// A `Bind` header (sequence number assigned) and its body, the path.
pub type BindFrame = (Header, Vec<u8>);

/// What the timer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    Nothing,
    SendHeartbeat,
    /// No acknowledgement for longer than the timeout: the mirror is lost.
    MirrorSilent {
        silent_ms: u64,
    },
}

#[derive(Debug)]
pub struct PrimaryStream {
    next_seq: u64,
    acked: Ack,
    bindings: HashMap<FsPath, u32>,
    bound_ids: HashSet<u32>,
    next_file_id: u32,
    heartbeat_ms: u64,
    timeout_ms: u64,
    last_sent_ms: u64,
    last_heard_ms: u64,
}

impl PrimaryStream {
    /// `start_seq` is the first sequence number this session sends.
    pub fn new(start_seq: u64, now_ms: u64, heartbeat_ms: u64, timeout_ms: u64) -> PrimaryStream {
        let start = start_seq.max(1);
        PrimaryStream {
            next_seq: start,
            acked: Ack { received: start - 1, applied: start - 1, synced: start - 1, durable: start - 1 },
            bindings: HashMap::new(),
            bound_ids: HashSet::new(),
            next_file_id: 1,
            heartbeat_ms,
            timeout_ms,
            last_sent_ms: now_ms,
            last_heard_ms: now_ms,
        }
    }

    /// The last sequence number handed out (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn acked(&self) -> Ack {
        self.acked
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// The id bound to `path`, binding it first if needed; a new binding
    /// yields a `Bind` header that must be sent before the caller's frame.
    pub fn bind(&mut self, path: &FsPath) -> Result<(u32, Option<BindFrame>), StreamViolation> {
        if let Some(&id) = self.bindings.get(path) {
            return Ok((id, None));
        }
        if self.bindings.len() >= MAX_BOUND_FILES {
            return Err(StreamViolation::TooManyFiles);
        }
        // Ids wrap after 2^32 binds; skip any still bound (at most 2^20 are).
        let mut id = self.next_file_id;
        while self.bound_ids.contains(&id) {
            id = id.wrapping_add(1).max(1);
        }
        self.next_file_id = id.wrapping_add(1).max(1);
        self.bindings.insert(path.clone(), id);
        self.bound_ids.insert(id);
        let mut h = Header::new(Kind::Bind);
        h.seq = self.take_seq();
        h.file_id = id;
        h.filespace = path.filespace;
        Ok((id, Some((h, path.path.as_str().as_bytes().to_vec()))))
    }

    /// Header for an operation; the sequence number is assigned here.
    pub fn operation(&mut self, mut h: Header) -> Header {
        debug_assert!(h.kind.is_operation());
        h.seq = self.take_seq();
        h
    }

    /// After an unlink: the id is retired on both sides.
    pub fn unbind(&mut self, path: &FsPath) {
        if let Some(id) = self.bindings.remove(path) {
            self.bound_ids.remove(&id);
        }
    }

    /// After a rename: bindings at or under `from` move to `to`; a file
    /// replaced at `to` loses its binding. The mirror does the same.
    pub fn rebind(&mut self, from: &FsPath, to: &FsPath) {
        let ids = &mut self.bound_ids;
        self.bindings.retain(|p, id| {
            let keep = !(p.filespace == to.filespace && p.path.is_within(&to.path)) || p.path.is_within(&from.path);
            if !keep {
                ids.remove(id);
            }
            keep
        });
        let moved: Vec<(FsPath, u32)> = self
            .bindings
            .iter()
            .filter(|(p, _)| p.filespace == from.filespace && p.path.is_within(&from.path))
            .map(|(p, &id)| (p.clone(), id))
            .collect();
        for (old, id) in moved {
            self.bindings.remove(&old);
            match old.path.rebase(&from.path, &to.path) {
                Some(np) => {
                    self.bindings.insert(FsPath::new(to.filespace, np), id);
                }
                None => {
                    self.bound_ids.remove(&id);
                }
            }
        }
    }

    /// Note that frames went out (heartbeat scheduling).
    pub fn on_sent(&mut self, now_ms: u64) {
        self.last_sent_ms = now_ms;
    }

    /// A cumulative acknowledgement arrived. Returns the new watermarks.
    pub fn on_ack(&mut self, got: Ack, now_ms: u64) -> Result<Ack, StreamViolation> {
        let had = self.acked;
        if got.received < had.received
            || got.applied < had.applied
            || got.synced < had.synced
            || got.durable < had.durable
        {
            return Err(StreamViolation::Backwards { had, got });
        }
        if got.received > self.last_seq() {
            return Err(StreamViolation::Ahead { got, last: self.last_seq() });
        }
        if got.applied > got.received || got.synced > got.applied || got.durable > got.synced {
            return Err(StreamViolation::Inconsistent(got));
        }
        self.acked = got;
        self.last_heard_ms = now_ms;
        Ok(got)
    }

    pub fn on_tick(&mut self, now_ms: u64) -> TimerAction {
        let silent = now_ms.saturating_sub(self.last_heard_ms);
        if silent > self.timeout_ms {
            return TimerAction::MirrorSilent { silent_ms: silent };
        }
        if now_ms.saturating_sub(self.last_sent_ms) >= self.heartbeat_ms {
            self.last_sent_ms = now_ms;
            return TimerAction::SendHeartbeat;
        }
        TimerAction::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::path::RelPath;

    fn p(s: &str) -> FsPath {
        FsPath::new(0, RelPath::new(s).unwrap())
    }

    #[test]
    fn sequences_and_bindings() {
        let mut s = PrimaryStream::new(1, 0, 100, 1000);
        let (id, bind) = s.bind(&p("a")).unwrap();
        let (h, body) = bind.unwrap();
        assert_eq!((h.seq, h.file_id, body.as_slice()), (1, id, b"a".as_slice()));
        assert!(s.bind(&p("a")).unwrap().1.is_none());
        let op = s.operation(Header::new(Kind::WriteBlock));
        assert_eq!(op.seq, 2);
        assert_eq!(s.last_seq(), 2);
        s.unbind(&p("a"));
        let (id2, bind2) = s.bind(&p("a")).unwrap();
        assert!(bind2.is_some());
        assert_ne!(id, id2);
    }

    #[test]
    fn rename_moves_bindings_under_a_directory() {
        let mut s = PrimaryStream::new(1, 0, 100, 1000);
        let (a, _) = s.bind(&p("d/x")).unwrap();
        let (victim, _) = s.bind(&p("e/x")).unwrap();
        s.rebind(&p("d"), &p("e"));
        assert_eq!(s.bind(&p("e/x")).unwrap(), (a, None));
        assert_ne!(s.bind(&p("d/x")).unwrap().0, a);
        assert_ne!(s.bind(&p("e/x")).unwrap().0, victim);
    }

    #[test]
    fn acks_are_checked() {
        let mut s = PrimaryStream::new(1, 0, 100, 1000);
        for _ in 0..5 {
            s.operation(Header::new(Kind::Sync));
        }
        let a = Ack { received: 4, applied: 3, synced: 2, durable: 1 };
        assert_eq!(s.on_ack(a, 1), Ok(a));
        let ack = |received, applied, synced, durable| Ack { received, applied, synced, durable };
        assert!(matches!(s.on_ack(ack(3, 3, 2, 1), 2), Err(StreamViolation::Backwards { .. })));
        assert!(matches!(s.on_ack(ack(4, 3, 1, 1), 2), Err(StreamViolation::Backwards { .. })));
        assert!(matches!(s.on_ack(ack(6, 3, 2, 1), 2), Err(StreamViolation::Ahead { .. })));
        assert!(matches!(s.on_ack(ack(5, 3, 3, 4), 2), Err(StreamViolation::Inconsistent(_))));
        assert!(matches!(s.on_ack(ack(5, 3, 4, 1), 2), Err(StreamViolation::Inconsistent(_))));
    }

    #[test]
    fn timer_heartbeats_then_declares_silence() {
        let mut s = PrimaryStream::new(1, 0, 100, 1000);
        assert_eq!(s.on_tick(50), TimerAction::Nothing);
        assert_eq!(s.on_tick(100), TimerAction::SendHeartbeat);
        assert_eq!(s.on_tick(150), TimerAction::Nothing);
        assert!(matches!(s.on_tick(1001), TimerAction::MirrorSilent { .. }));
    }
}
