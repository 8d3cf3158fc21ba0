//! Which files of a mount are a database's logs: files written a little at
//! a time and synced after nearly every write (PostgreSQL's WAL segments,
//! SQLite's `-wal` file). The segment's own mount opens them without the
//! kernel's write-back cache (`FOPEN_DIRECT_IO`): a write is a request at
//! once, as the database wrote it, and the fsync that follows has no dirty
//! page to send and no file times to set first (with the cache the kernel
//! keeps a file's times itself and sends them in a SETATTR before each
//! fsync: a third request on the commit's path). Every other file keeps the
//! cache, which pays for files written in bulk and synced rarely (tables,
//! indexes, a load). Durability is the same either way: an fsync returns
//! once the file is durable on both hosts (docs/mount.md, "Log files").
//!
//! A log is not always written a commit at a time: a bulk load writes its
//! log in megabytes between syncs, and without the cache each of its pages
//! is then a request of its own (measured: PostgreSQL's `pgbench -i` a
//! fifth slower). So the choice is made again at every open, from how the
//! last syncs of log files in the same directory went ([`LogHistory`]): a
//! log opens without the cache while most of them covered less than
//! [`SMALL_SYNC`] bytes, and with it otherwise (and before any sync). A
//! file open already is opened again as it is (never both ways at once);
//! one opened for synchronous writes keeps the cache.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::{HashMap, VecDeque};

/// The patterns used when none are given: the logs of the databases the
/// project measures (docs/performance.md).
pub const DEFAULT_LOG_FILES: &[&str] = &["**/pg_wal/*", "**/*-wal"];
/// Patterns at most (a bound on the matcher's size).
pub const MAX_LOG_FILE_PATTERNS: usize = 64;
/// Bytes in one pattern, at most.
pub const MAX_LOG_FILE_PATTERN_BYTES: usize = 1024;

/// A set of glob patterns over paths relative to the filespace root (`/`
/// separates components and `*` does not cross it; `**/` is any number of
/// directories).
#[derive(Clone, Debug)]
pub struct LogFiles {
    patterns: Vec<String>,
    set: GlobSet,
}

impl LogFiles {
    /// Compile `patterns`; the error names the pattern and what is wrong.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<LogFiles, String> {
        if patterns.len() > MAX_LOG_FILE_PATTERNS {
            return Err(format!("{} log file patterns: at most {MAX_LOG_FILE_PATTERNS}", patterns.len()));
        }
        let mut builder = GlobSetBuilder::new();
        let mut kept = Vec::with_capacity(patterns.len());
        for p in patterns {
            let p = p.as_ref();
            if p.is_empty() {
                return Err("an empty log file pattern (give a glob such as **/pg_wal/*)".into());
            }
            if p.len() > MAX_LOG_FILE_PATTERN_BYTES {
                return Err(format!("log file pattern of {} bytes: at most {MAX_LOG_FILE_PATTERN_BYTES}", p.len()));
            }
            if p.starts_with('/') {
                return Err(format!(
                    "log file pattern {p:?}: patterns match paths relative to the filespace root (drop the leading /)"
                ));
            }
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("log file pattern {p:?}: {}", e.kind()))?;
            builder.add(glob);
            kept.push(p.to_string());
        }
        let set = builder.build().map_err(|e| format!("log file patterns: {e}"))?;
        Ok(LogFiles { patterns: kept, set })
    }

    /// No file is a log: every file keeps the cache.
    pub fn none() -> LogFiles {
        LogFiles { patterns: Vec::new(), set: GlobSet::empty() }
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether the file at `path` (relative to the filespace root) is a log.
    pub fn is_log(&self, path: &str) -> bool {
        !self.patterns.is_empty() && self.set.is_match(path)
    }
}

impl Default for LogFiles {
    fn default() -> LogFiles {
        // The defaults are constants checked by the tests below.
        LogFiles::new(DEFAULT_LOG_FILES).unwrap_or_else(|_| LogFiles::none())
    }
}

/// A sync of a log file that covered fewer bytes than this counts as a
/// commit's (a held write's bound: a commit's writes go out as one call).
pub const SMALL_SYNC: u64 = super::held::HOLD_BELOW as u64;
/// Syncs remembered per directory.
const SYNCS_REMEMBERED: usize = 16;
/// Of the syncs remembered, how many must have been small for the next
/// open to go without the cache: a log's occasional large sync (a new
/// segment zero-filled, a checkpoint's burst) does not switch it back.
const SMALL_SYNCS_NEEDED: usize = 12;
/// Directories remembered, at most (a bound on memory; past it the history
/// starts over, and opens use the cache until it has grown again).
const MAX_LOG_DIRS: usize = 256;
/// Log files (inodes) whose bytes since their last sync are counted, at most.
const MAX_COUNTED_FILES: usize = 4096;
/// Open files whose mode is remembered, at most (as many as a process may
/// usually have descriptors).
const MAX_OPEN_FILES: usize = 1 << 16;

/// How the syncs of log files went, per directory; the bytes written to
/// each open log file since its last sync; and how each open file is open.
#[derive(Debug, Default)]
pub struct LogHistory {
    syncs: HashMap<String, VecDeque<bool>>,
    unsynced: HashMap<u64, (String, u64)>,
    /// Files with handles open: whether without the cache, and how many.
    open: HashMap<u64, (bool, u64)>,
    /// Handles opened when `open` was full (so not remembered, and cached):
    /// while there are any, every open uses the cache (one of them may be
    /// a handle of the same file).
    unremembered: u64,
}

impl LogHistory {
    /// File `ino` at `path` is opened (`log`: it matches a log file
    /// pattern; `sync_writes`: opened O_SYNC or O_DSYNC): whether this
    /// handle goes without the cache. While a file has handles open, every
    /// new one is opened as the first was: a read through a cached handle
    /// while a direct write is on its way could cache the old bytes for
    /// good, so one file is never open both ways at once. A file opened for
    /// synchronous writes keeps the cache: the kernel follows each of its
    /// cached writes with an fsync, which it does not for a direct write.
    pub fn opened(&mut self, ino: u64, path: &str, log: bool, sync_writes: bool) -> bool {
        if let Some((direct, handles)) = self.open.get_mut(&ino) {
            *handles += 1;
            let direct = *direct;
            if log {
                self.count(ino, path);
            }
            return direct;
        }
        if self.open.len() >= MAX_OPEN_FILES {
            self.unremembered += 1;
            return false;
        }
        let direct = self.unremembered == 0
            && log
            && !sync_writes
            && self.count(ino, path)
            && self.syncs_were_small(parent_of(path));
        self.open.insert(ino, (direct, 1));
        direct
    }

    /// A handle of file `ino` is released (every handle the mount gave out
    /// was [`LogHistory::opened`] first).
    pub fn released(&mut self, ino: u64) {
        match self.open.get_mut(&ino) {
            Some((_, handles)) => {
                *handles = handles.saturating_sub(1);
                if *handles == 0 {
                    self.open.remove(&ino);
                }
            }
            None => self.unremembered = self.unremembered.saturating_sub(1),
        }
    }

    /// Whether file `ino` is open without the cache.
    pub fn is_direct(&self, ino: u64) -> bool {
        self.open.get(&ino).is_some_and(|&(direct, _)| direct)
    }

    /// Whether most remembered syncs of logs in `dir` were small.
    fn syncs_were_small(&self, dir: &str) -> bool {
        self.syncs.get(dir).is_some_and(|s| {
            s.len() >= SMALL_SYNCS_NEEDED && s.iter().filter(|&&small| small).count() >= SMALL_SYNCS_NEEDED
        })
    }

    /// Count what is written to log file `ino` (now at `path`); false if
    /// there is no room to (then it is not opened without the cache: its
    /// syncs would go uncounted).
    fn count(&mut self, ino: u64, path: &str) -> bool {
        let dir = parent_of(path);
        let room = self.unsynced.len() < MAX_COUNTED_FILES;
        match self.unsynced.get_mut(&ino) {
            Some(entry) => {
                // Renamed since: its syncs count for where it is now.
                if entry.0 != dir {
                    entry.0 = dir.to_string();
                }
                true
            }
            None if room => {
                self.unsynced.insert(ino, (dir.to_string(), 0));
                true
            }
            None => false,
        }
    }

    /// `bytes` were written to inode `ino` (nothing if it is not a log file).
    pub fn wrote(&mut self, ino: u64, bytes: u64) {
        if let Some(entry) = self.unsynced.get_mut(&ino) {
            entry.1 = entry.1.saturating_add(bytes);
        }
    }

    /// Inode `ino` was synced: one more sync for its directory's history.
    pub fn synced(&mut self, ino: u64) {
        let Some((dir, bytes)) = self.unsynced.get_mut(&ino) else { return };
        let small = *bytes < SMALL_SYNC;
        *bytes = 0;
        if !self.syncs.contains_key(dir.as_str()) && self.syncs.len() >= MAX_LOG_DIRS {
            self.syncs.clear();
        }
        let ring = self.syncs.entry(dir.clone()).or_default();
        if ring.len() == SYNCS_REMEMBERED {
            ring.pop_front();
        }
        ring.push_back(small);
    }

    /// The kernel forgot inode `ino`.
    pub fn forgot(&mut self, ino: u64) {
        self.unsynced.remove(&ino);
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Open `ino` at `path` as a log (not for synchronous writes), release
    /// it, and say how it was open.
    fn open_once(h: &mut LogHistory, ino: u64, path: &str) -> bool {
        let direct = h.opened(ino, path, true, false);
        h.released(ino);
        direct
    }

    #[test]
    fn a_log_goes_without_the_cache_once_most_recent_syncs_in_its_directory_were_small() {
        let mut h = LogHistory::default();
        // No history: the cache.
        assert!(!h.opened(1, "pg_wal/1", true, false));
        for _ in 0..SMALL_SYNCS_NEEDED - 1 {
            h.wrote(1, 8192);
            h.synced(1);
        }
        assert!(!open_once(&mut h, 2, "pg_wal/2"), "too few syncs yet");
        h.wrote(1, 8192);
        h.synced(1);
        assert!(open_once(&mut h, 2, "pg_wal/2"), "a commit's worth at every sync");
        assert!(!open_once(&mut h, 3, "other/3"), "another directory has its own history");
        assert!(!h.opened(8, "pg_wal/8", false, false), "not a log");
        assert!(!h.opened(9, "pg_wal/9", true, true), "opened for synchronous writes");
        // A burst of large syncs (a load) switches the next opens back.
        assert!(h.opened(2, "pg_wal/2", true, false));
        for _ in 0..SYNCS_REMEMBERED - SMALL_SYNCS_NEEDED + 1 {
            h.wrote(2, 16 << 20);
            h.synced(2);
        }
        assert!(!open_once(&mut h, 4, "pg_wal/4"));
        // One large sync among small ones does not.
        for _ in 0..SYNCS_REMEMBERED {
            h.wrote(2, 100);
            h.synced(2);
        }
        h.wrote(2, 16 << 20);
        h.synced(2);
        assert!(open_once(&mut h, 5, "pg_wal/5"));
        // Bytes count per file, from its last sync; a forgotten file counts nothing.
        h.forgot(5);
        h.wrote(5, 1 << 30);
        h.synced(5);
        assert!(open_once(&mut h, 6, "pg_wal/6"));
        // Files outside any log are not counted.
        h.wrote(99, 1 << 30);
        h.synced(99);
        assert!(open_once(&mut h, 7, "pg_wal/7"));
    }

    #[test]
    fn a_file_stays_open_one_way_until_its_last_handle_is_released() {
        let mut h = LogHistory::default();
        // Opened with the cache (no history yet), then the history turns.
        assert!(!h.opened(1, "log/1", true, false));
        for _ in 0..SYNCS_REMEMBERED {
            h.wrote(1, 10);
            h.synced(1);
        }
        assert!(!h.opened(1, "log/1", true, false), "a second handle as the first");
        assert!(!h.is_direct(1));
        h.released(1);
        assert!(!h.opened(1, "log/1", true, false), "one handle still open");
        h.released(1);
        h.released(1);
        assert!(h.opened(1, "log/1", true, false), "all released: the history decides");
        assert!(h.is_direct(1));
        // The other way round too: a non-log open of a direct file is direct.
        assert!(h.opened(1, "elsewhere/1", false, false));
        h.released(1);
        h.released(1);
        assert!(!h.is_direct(1));
    }

    #[test]
    fn past_the_open_files_bound_every_open_uses_the_cache_until_those_opened_then_are_closed() {
        let mut h = LogHistory::default();
        for _ in 0..SYNCS_REMEMBERED {
            h.opened(0, "log/0", true, false);
            h.wrote(0, 10);
            h.synced(0);
            h.released(0);
        }
        for ino in 1..=MAX_OPEN_FILES as u64 {
            h.opened(ino, "other/x", false, false);
        }
        assert!(!h.opened(u64::MAX, "log/y", true, false), "no room to remember it");
        for ino in 1..=MAX_OPEN_FILES as u64 {
            h.released(ino);
        }
        assert!(!h.opened(u64::MAX - 1, "log/z", true, false), "one not remembered is still open");
        h.released(u64::MAX - 1);
        h.released(u64::MAX);
        assert!(h.opened(u64::MAX - 2, "log/w", true, false), "all such closed: the history decides again");
    }

    #[test]
    fn the_defaults_name_postgresql_and_sqlite_logs_and_nothing_else() {
        assert!(LogFiles::new(DEFAULT_LOG_FILES).is_ok());
        let logs = LogFiles::default();
        assert_eq!(logs.patterns(), DEFAULT_LOG_FILES);
        for p in
            ["pgdata/pg_wal/000000010000000000000001", "pg_wal/000000010000000000000002", "a/b/app.db-wal", "x-wal"]
        {
            assert!(logs.is_log(p), "{p} is a log");
        }
        for p in [
            "pgdata/base/1/1259",
            "pgdata/pg_wal/archive_status/000000010000000000000001.ready",
            "pgdata/pg_wal",
            "app.db",
            "app.db-journal",
            "app.db-shm",
            "wal",
            "pg_walx/1",
        ] {
            assert!(!logs.is_log(p), "{p} is not a log");
        }
    }

    #[test]
    fn a_star_stays_within_one_component_and_none_matches_nothing() {
        let logs = LogFiles::new(&["log/*"]).unwrap();
        assert!(logs.is_log("log/1"));
        assert!(!logs.is_log("log/a/1"));
        assert!(!logs.is_log("x/log/1"));
        assert!(!LogFiles::none().is_log("log/1"));
        assert!(!LogFiles::new::<&str>(&[]).unwrap().is_log("log/1"));
    }

    #[test]
    fn bad_patterns_are_refused_with_what_is_wrong() {
        let e = LogFiles::new(&["**/pg_wal/*", "[unclosed"]).unwrap_err();
        assert!(e.contains("\"[unclosed\""), "{e}");
        assert!(LogFiles::new(&[""]).unwrap_err().contains("empty"));
        assert!(LogFiles::new(&["/abs/*"]).unwrap_err().contains("relative"));
        let long = "a".repeat(MAX_LOG_FILE_PATTERN_BYTES + 1);
        assert!(LogFiles::new(&[long]).unwrap_err().contains("at most"));
        let many = vec!["a"; MAX_LOG_FILE_PATTERNS + 1];
        assert!(LogFiles::new(&many).unwrap_err().contains("at most"));
    }
}
