//! The power-cut workload: writers that sync, and the model of what each
//! sync promised.
//!
//! Each writer owns `w<N>/` in both filespaces: relation files of blocks
//! (`rel<K>`, block writes and extends, synced now and then, truncated and
//! synced), a log (`log`, appended with `write_at`, flushed after half the
//! appends, cut back to empty and flushed when long), a file replaced by
//! the write-sync-rename-sync-directory pattern (`cfg` via `cfg.tmp`),
//! files created and unlinked (`tmp<K>`), directories with a file in
//! them made and removed (`d<K>/f`), and cold files (`c<N>`: created and
//! written once, never synced nor written again, the oldest unlinked).
//! Beside its directory, in filespace 1, an 8 MiB sparse file
//! (`sparse<N>`) whose extents it writes in turn, outside the model (no
//! promise is made of it: `verify` compares it).
//!
//! For every path the model keeps the state its last durability point
//! promised (`durable`) and every state a later call produced or may have
//! produced (`since`: calls that returned, and the one that failed). After
//! a power cut and recovery the acting primary must hold, for each path,
//! one of those states, where each block of a file may come from any of
//! them (the writes after a sync reach the disk in no order) and its length
//! lies between their shortest and longest. A synced write is then never
//! lost: every state since its sync contains it.

use filerep::cluster::client::{Client, ClientError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;

pub const BS: usize = 8192;
/// What a torn write keeps whole.
const SECTOR: usize = 512;
/// Relation files per writer, and their largest size in blocks.
const RELS: u64 = 3;
const REL_BLOCKS: u64 = 32;
/// The log is cut back to empty once longer than this.
const LOG_MAX: usize = 48 << 10;
const TMPS: u64 = 2;
const DIRS: u64 = 2;
/// Cold files a writer keeps.
const COLD: u64 = 6;
/// Extents of the sparse file (8 MiB): first writes go round them.
const SPARSE_EXTENTS: u64 = 32;
/// The primary's activity-log extent, in blocks.
const EXTENT_BLOCKS: u64 = filerep::core::primary::EXTENT_BLOCKS;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Absent,
    Dir,
    /// `synced`: this content was made durable by a sync of its file (maybe
    /// under another name, before a rename) and not changed since.
    File {
        bytes: Vec<u8>,
        synced: bool,
    },
}

impl State {
    fn file(bytes: Vec<u8>) -> State {
        State::File { bytes, synced: false }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match self {
            State::File { bytes, .. } => Some(bytes),
            _ => None,
        }
    }

    fn shown(&self) -> String {
        match self {
            State::Absent => "absent".into(),
            State::Dir => "a directory".into(),
            State::File { bytes, .. } => format!("a file of {} bytes", bytes.len()),
        }
    }
}

#[derive(Clone, Debug)]
struct PathModel {
    durable: State,
    since: Vec<State>,
}

impl PathModel {
    fn current(&self) -> &State {
        self.since.last().unwrap_or(&self.durable)
    }
}

/// (filespace, path)
pub type Key = (u16, String);

/// One writer's namespace and what it was promised.
#[derive(Clone, Debug)]
pub struct Model {
    pub w: u32,
    paths: BTreeMap<Key, PathModel>,
    version: u64,
    /// Cold files made so far (the last is `c<cold>`).
    cold: u64,
    /// Writes into the sparse file, each counted just before it is sent
    /// (a cut can be aimed at it).
    pub sparse_sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Calls made, and durability points reached, in all rounds.
    pub calls: u64,
    pub syncs: u64,
}

/// Distinct, recognisable bytes: each 8-byte word says which write it is.
pub fn tagged(len: usize, tag: u64) -> Vec<u8> {
    let mut b = vec![0u8; len.div_ceil(8) * 8];
    for (i, c) in b.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64) << 40 ^ tag).to_le_bytes());
    }
    b.truncate(len);
    b
}

/// What a path holds on a host's data directory (`roots[fs]`).
pub fn actual(roots: &[&Path], key: &Key) -> State {
    let p = roots[usize::from(key.0)].join(&key.1);
    match std::fs::symlink_metadata(&p) {
        Err(_) => State::Absent,
        Ok(m) if m.is_dir() => State::Dir,
        Ok(_) => match std::fs::read(&p) {
            Ok(bytes) => State::File { bytes, synced: true },
            Err(_) => State::Absent,
        },
    }
}

/// One call the workload makes, with the states it leaves its paths in.
enum Call {
    Create(Key),
    WriteBlock(Key, u64, Vec<u8>),
    Extend(Key, u64, Vec<u8>),
    WriteAt(Key, u64, Vec<u8>),
    SetLen(Key, u64),
    Truncate(Key, u64),
    Unlink(Key),
    Mkdir(Key),
    Rmdir(Key),
    Rename(Key, String),
    Sync(Key),
    Flush(Key),
    SyncDir(u16, String),
}

impl Model {
    pub fn new(w: u32) -> Model {
        Model { w, paths: BTreeMap::new(), version: 0, cold: 0, sparse_sent: Default::default(), calls: 0, syncs: 0 }
    }

    fn dir(&self) -> String {
        format!("w{}", self.w)
    }

    /// The sparse file, in filespace 1 beside the writers' directories.
    fn sparse(&self) -> String {
        format!("sparse{}", self.w)
    }

    fn key(&self, fs: u16, name: &str) -> Key {
        (fs, format!("{}/{name}", self.dir()))
    }

    fn current(&self, k: &Key) -> State {
        self.paths.get(k).map(|p| p.current().clone()).unwrap_or(State::Absent)
    }

    fn tag(&mut self) -> u64 {
        self.version += 1;
        (u64::from(self.w) << 48) | self.version
    }

    /// The states a call leaves its paths in (before it is made).
    fn effects(&self, call: &Call) -> Vec<(Key, State)> {
        let file = |k: &Key| self.current(k).bytes().map(<[u8]>::to_vec).unwrap_or_default();
        let write = |k: &Key, at: usize, data: &[u8]| {
            let mut b = file(k);
            if b.len() < at + data.len() {
                b.resize(at + data.len(), 0);
            }
            b[at..at + data.len()].copy_from_slice(data);
            vec![(k.clone(), State::file(b))]
        };
        let resize = |k: &Key, len: usize| {
            let mut b = file(k);
            b.resize(len, 0);
            vec![(k.clone(), State::file(b))]
        };
        match call {
            Call::Create(k) => vec![(k.clone(), State::file(Vec::new()))],
            Call::WriteBlock(k, b, d) | Call::Extend(k, b, d) => write(k, *b as usize * BS, d),
            Call::WriteAt(k, at, d) => write(k, *at as usize, d),
            Call::SetLen(k, len) => resize(k, *len as usize),
            Call::Truncate(k, blocks) => resize(k, *blocks as usize * BS),
            Call::Unlink(k) | Call::Rmdir(k) => vec![(k.clone(), State::Absent)],
            Call::Mkdir(k) => vec![(k.clone(), State::Dir)],
            Call::Rename(k, to) => {
                vec![(k.clone(), State::Absent), ((k.0, to.clone()), self.current(k))]
            }
            Call::Sync(_) | Call::Flush(_) | Call::SyncDir(..) => Vec::new(),
        }
    }

    fn send(cl: &mut Client, call: &Call) -> Result<(), ClientError> {
        match call {
            Call::Create((fs, p)) => cl.create(*fs, p),
            Call::WriteBlock((fs, p), b, d) => cl.write_block(*fs, p, *b, d),
            Call::Extend((fs, p), b, d) => cl.extend(*fs, p, *b, d),
            Call::WriteAt((fs, p), at, d) => cl.write_at(*fs, p, *at, d),
            Call::SetLen((fs, p), len) => cl.set_len(*fs, p, *len),
            Call::Truncate((fs, p), n) => cl.truncate(*fs, p, *n),
            Call::Unlink((fs, p)) => cl.unlink(*fs, p),
            Call::Mkdir((fs, p)) => cl.mkdir(*fs, p),
            Call::Rmdir((fs, p)) => cl.rmdir(*fs, p),
            Call::Rename((fs, p), to) => cl.rename(*fs, p, to),
            Call::Sync((fs, p)) => cl.sync(*fs, p),
            Call::Flush((fs, p)) => cl.flush(*fs, p),
            Call::SyncDir(fs, d) => cl.sync_dir(*fs, d),
        }
    }

    /// Make one call; its outcome is a possible state whether it returned
    /// or not; a durability point that returned moves `durable`.
    fn call(&mut self, cl: &mut Client, call: Call) -> Result<(), String> {
        for (k, s) in self.effects(&call) {
            let cur = self.current(&k);
            let p = self.paths.entry(k).or_insert(PathModel { durable: cur, since: Vec::new() });
            p.since.push(s);
        }
        self.calls += 1;
        Self::send(cl, &call).map_err(|e| e.to_string())?;
        match call {
            Call::Sync(k) | Call::Flush(k) => {
                self.syncs += 1;
                // The file and the directories above it (the engine syncs
                // every changed directory with a file's sync).
                let mut keys = vec![k.clone()];
                let mut dir = k.1.as_str();
                while let Some((parent, _)) = dir.rsplit_once('/') {
                    keys.push((k.0, parent.to_string()));
                    dir = parent;
                }
                for key in keys {
                    if let Some(p) = self.paths.get_mut(&key) {
                        let mut s = p.current().clone();
                        if let State::File { synced, .. } = &mut s {
                            *synced = true;
                        }
                        p.durable = s;
                        p.since.clear();
                    }
                }
            }
            Call::SyncDir(fs, _) => {
                self.syncs += 1;
                // Every namespace change is durable; a file's content only
                // if a sync of it made it so.
                for ((f, _), p) in self.paths.iter_mut() {
                    if *f == fs && !matches!(p.current(), State::File { synced: false, .. }) {
                        p.durable = p.current().clone();
                        p.since.clear();
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Make the writer's directories and files and sync them (no cut runs).
    pub fn setup(&mut self, cl: &mut Client) -> Result<(), String> {
        for fs in 0..2 {
            self.call(cl, Call::Mkdir((fs, self.dir())))?;
        }
        for k in 0..RELS {
            // Full size from the start: a resync has something to ship.
            let rel = self.key(0, &format!("rel{k}"));
            self.call(cl, Call::Create(rel.clone()))?;
            for b in 0..REL_BLOCKS {
                let data = tagged(BS, self.tag());
                self.call(cl, Call::Extend(rel.clone(), b, data))?;
            }
            self.call(cl, Call::Sync(rel))?;
        }
        self.call(cl, Call::Create(self.key(1, "log")))?;
        // Outside the model: nothing is ever promised of its content.
        let sparse = self.sparse();
        let fail = |e: ClientError| format!("setting up {sparse}: {e}");
        cl.create(1, &sparse).map_err(fail)?;
        cl.set_len(1, &sparse, SPARSE_EXTENTS * EXTENT_BLOCKS * BS as u64).map_err(fail)?;
        cl.sync(1, &sparse).map_err(fail)?;
        for fs in 0..2 {
            self.call(cl, Call::SyncDir(fs, String::new()))?;
            self.call(cl, Call::SyncDir(fs, self.dir()))?;
        }
        Ok(())
    }

    /// Calls until `stop`, or until one fails (its error).
    pub fn run(&mut self, cl: &mut Client, seed: u64, stop: &std::sync::atomic::AtomicBool) -> Result<(), String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ u64::from(self.w));
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            self.step(cl, &mut rng)?;
        }
        Ok(())
    }

    fn step(&mut self, cl: &mut Client, rng: &mut ChaCha8Rng) -> Result<(), String> {
        let len = |s: &State| s.bytes().map_or(0, <[u8]>::len);
        match rng.gen_range(0..100) {
            0..=5 => {
                // A first write into a block of the sparse file: each write
                // goes to the next extent in turn, so in change tracking it
                // lands in an extent the activity log no longer covered at
                // the loss and the change-log does not name yet: it must be
                // recorded before it lands. A torn cut of the primary's host
                // keeps what landed; a record that came after names nothing.
                let data = tagged(BS, self.tag());
                self.calls += 1;
                let i = self.sparse_sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let block = (i % SPARSE_EXTENTS) * EXTENT_BLOCKS + (i / SPARSE_EXTENTS) % EXTENT_BLOCKS;
                cl.write_block(1, &self.sparse(), block, &data).map_err(|e| e.to_string())
            }
            6..=11 => {
                // A cold file: its data is made durable on the mirror only by
                // a checkpoint, and once the primary has retired its activity
                // entries nothing else names it (no later write covers its
                // extent again): a checkpoint acknowledged before its fsyncs
                // and then cut loses it for good, and `verify` sees it.
                self.cold += 1;
                if self.cold > COLD {
                    let old = self.key(1, &format!("c{}", self.cold - COLD));
                    if self.current(&old) != State::Absent {
                        self.call(cl, Call::Unlink(old))?;
                    }
                }
                let k = self.key(1, &format!("c{}", self.cold));
                self.call(cl, Call::Create(k.clone()))?;
                self.call(cl, Call::SyncDir(1, self.dir()))?;
                let data = tagged(rng.gen_range(100..3 * BS), self.tag());
                self.call(cl, Call::WriteAt(k, 0, data))
            }
            12..=44 => {
                let k = self.key(0, &format!("rel{}", rng.gen_range(0..RELS)));
                let n = (len(&self.current(&k)) / BS) as u64;
                // Grow back after truncates, else rewrite a block.
                let b = if n < REL_BLOCKS && rng.gen_bool(0.3) { n } else { rng.gen_range(0..=n.min(REL_BLOCKS - 1)) };
                let data = tagged(BS, self.tag());
                self.call(cl, if b == n { Call::Extend(k, b, data) } else { Call::WriteBlock(k, b, data) })
            }
            45..=54 => self.call(cl, Call::Sync(self.key(0, &format!("rel{}", rng.gen_range(0..RELS))))),
            55..=74 => {
                let k = self.key(1, "log");
                let at = len(&self.current(&k));
                if at > LOG_MAX {
                    self.call(cl, Call::SetLen(k.clone(), 0))?;
                    return self.call(cl, Call::Flush(k));
                }
                let data = tagged(rng.gen_range(64..3000), self.tag());
                self.call(cl, Call::WriteAt(k.clone(), at as u64, data))?;
                if rng.gen_bool(0.5) {
                    self.call(cl, Call::Flush(k))?;
                }
                Ok(())
            }
            75..=82 => {
                // Replace `cfg` whole: write, sync, rename, sync the directory.
                let (tmp, cfg) = (self.key(1, "cfg.tmp"), self.key(1, "cfg"));
                if self.current(&tmp) == State::Absent {
                    self.call(cl, Call::Create(tmp.clone()))?;
                } else {
                    self.call(cl, Call::SetLen(tmp.clone(), 0))?;
                }
                let data = tagged(rng.gen_range(100..6000), self.tag());
                self.call(cl, Call::WriteAt(tmp.clone(), 0, data))?;
                self.call(cl, Call::Sync(tmp.clone()))?;
                self.call(cl, Call::Rename(tmp, cfg.1))?;
                self.call(cl, Call::SyncDir(1, self.dir()))
            }
            83..=89 => {
                let k = self.key(1, &format!("tmp{}", rng.gen_range(0..TMPS)));
                if self.current(&k) == State::Absent {
                    self.call(cl, Call::Create(k.clone()))?;
                    let data = tagged(rng.gen_range(1..10_000), self.tag());
                    self.call(cl, Call::WriteAt(k.clone(), 0, data))?;
                    self.call(cl, Call::Sync(k))
                } else {
                    self.call(cl, Call::Unlink(k))?;
                    self.call(cl, Call::SyncDir(1, self.dir()))
                }
            }
            90..=95 => {
                let d = self.key(0, &format!("d{}", rng.gen_range(0..DIRS)));
                let f = (0, format!("{}/f", d.1));
                if self.current(&d) == State::Absent {
                    self.call(cl, Call::Mkdir(d))?;
                    self.call(cl, Call::Create(f.clone()))?;
                    let data = tagged(BS, self.tag());
                    self.call(cl, Call::Extend(f.clone(), 0, data))?;
                    self.call(cl, Call::Sync(f))
                } else {
                    // A cut may have kept the directory and not its file.
                    if self.current(&f) != State::Absent {
                        self.call(cl, Call::Unlink(f))?;
                    }
                    self.call(cl, Call::Rmdir(d))?;
                    self.call(cl, Call::SyncDir(0, self.dir()))
                }
            }
            _ => {
                let k = self.key(0, &format!("rel{}", rng.gen_range(0..RELS)));
                let n = (len(&self.current(&k)) / BS) as u64;
                self.call(cl, Call::Truncate(k.clone(), rng.gen_range(0..=n)))?;
                self.call(cl, Call::Sync(k))
            }
        }
    }

    /// Check the acting primary's data directory against every promise:
    /// the list of what is wrong (empty: all kept).
    pub fn check(&self, roots: &[&Path]) -> Vec<String> {
        let mut bad = Vec::new();
        for (k, p) in &self.paths {
            let got = actual(roots, k);
            let allowed: Vec<&State> = std::iter::once(&p.durable).chain(&p.since).collect();
            if let Some(why) = explain(&got, &allowed) {
                bad.push(format!(
                    "fs {} {}: {why}; durable promise: {}, {} later states",
                    k.0,
                    k.1,
                    p.durable.shown(),
                    p.since.len()
                ));
            }
        }
        // Nothing the writer never made.
        for fs in 0..2u16 {
            let dir = roots[usize::from(fs)].join(self.dir());
            if let Ok(list) = filerep::verify::scan(&dir) {
                for (rel, _) in list {
                    let k = (fs, format!("{}/{rel}", self.dir()));
                    if !self.paths.contains_key(&k) {
                        bad.push(format!("fs {fs} {}: exists, but the writer never made it", k.1));
                    }
                }
            }
        }
        bad
    }

    /// After a checked round: take what the acting primary holds as the new
    /// promise, and make it durable (sync every file and directory).
    pub fn rebase(&mut self, cl: &mut Client, roots: &[&Path]) -> Result<(), String> {
        let keys: Vec<Key> = self.paths.keys().cloned().collect();
        for k in &keys {
            let got = actual(roots, k);
            if let State::File { .. } = got {
                cl.sync(k.0, &k.1).map_err(|e| format!("rebase: sync of fs {} {}: {e}", k.0, k.1))?;
            }
            if got == State::Absent {
                // Made again later, it starts from absent; never made again,
                // it no longer costs a look each round.
                self.paths.remove(k);
            } else {
                self.paths.insert(k.clone(), PathModel { durable: got, since: Vec::new() });
            }
        }
        for fs in 0..2 {
            for d in [String::new(), self.dir()] {
                cl.sync_dir(fs, &d).map_err(|e| format!("rebase: sync_dir of fs {fs} {d:?}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Why `got` is none of the allowed states (each 512-byte sector from any
/// of them: a torn write keeps whole sectors; the length between the
/// shortest and the longest), if it is not.
fn explain(got: &State, allowed: &[&State]) -> Option<String> {
    let files: Vec<&[u8]> = allowed.iter().filter_map(|s| s.bytes()).collect();
    match got {
        State::Absent | State::Dir => {
            if allowed.contains(&got) {
                None
            } else {
                Some(format!("{}, but it must be {}", got.shown(), allowed[0].shown()))
            }
        }
        State::File { bytes, .. } => {
            if files.is_empty() {
                return Some(format!("{}, but it must be {}", got.shown(), allowed[0].shown()));
            }
            let (min, max) = files.iter().fold((usize::MAX, 0), |(lo, hi), f| (lo.min(f.len()), hi.max(f.len())));
            if bytes.len() < min || bytes.len() > max {
                return Some(format!("{} bytes long, but between {min} and {max} were promised", bytes.len()));
            }
            for (b, chunk) in bytes.chunks(SECTOR).enumerate() {
                let at = b * SECTOR;
                let from = |f: &[u8]| (0..chunk.len()).all(|i| chunk[i] == f.get(at + i).copied().unwrap_or(0));
                if !files.iter().any(|f| from(f)) {
                    return Some(format!(
                        "sector {b} (bytes {at}..{}, block {}) is none of the states it may hold",
                        at + chunk.len(),
                        at / BS
                    ));
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_may_come_from_any_allowed_state_and_a_lost_sync_is_caught() {
        let synced = State::file([tagged(BS, 1), tagged(BS, 2)].concat());
        let later = State::file([tagged(BS, 3), tagged(BS, 2), tagged(100, 4)].concat());
        let allowed = [&synced, &later];
        let mix = State::file([tagged(BS, 3), tagged(BS, 2)].concat());
        assert_eq!(explain(&mix, &allowed), None);
        let torn_tail = State::file([tagged(BS, 1), tagged(BS, 2), tagged(50, 4)].concat());
        assert_eq!(explain(&torn_tail, &allowed), None, "a torn prefix of an unsynced write");
        let lost = State::file(tagged(BS, 1));
        assert!(explain(&lost, &allowed).unwrap().contains("between"), "the synced second block is gone");
        let garbage = State::file([tagged(BS, 1), tagged(BS, 9)].concat());
        assert!(explain(&garbage, &allowed).unwrap().contains("block 1"));
        let mut torn = [tagged(BS, 1), tagged(BS, 2)].concat();
        torn[..1024].copy_from_slice(&tagged(BS, 3)[..1024]);
        assert_eq!(explain(&State::file(torn.clone()), &allowed), None, "whole sectors of a later write");
        torn[1024..1030].copy_from_slice(&[0xee; 6]);
        assert!(explain(&State::file(torn), &allowed).unwrap().contains("sector 2"));
        assert!(explain(&State::Absent, &allowed).is_some());
        assert_eq!(explain(&State::Absent, &[&State::Absent, &synced]), None);
    }
}
