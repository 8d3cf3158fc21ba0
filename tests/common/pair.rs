//! A real pair for tests that mount: an arbiter and two `filerep segment`
//! processes on loopback (dbid 2 the preferred primary, dbid 3 its mirror),
//! and `filerep mount` processes on their filespaces. Used by
//! `tests/mount.rs` and `tests/postgres.rs`; its process helpers
//! (`spawn_ready`, `free_addr`, `arbiter_args`) by `tests/failover.rs` too.

use filerep::cluster::segment::{Acting, SegmentConfig, SegmentRequest, SegmentResponse, SegmentStatus};
use filerep::durable::catalog::{Catalog, SegmentAddress};
use filerep::protocol::handshake::ClusterKey;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &[u8] = b"mount test cluster key material!";
pub const FS: [&str; 2] = ["pg_system", "fs_fast"];
pub const READY_SEGMENT: &str = "filerep segment ready, control on ";
pub const READY_ARBITER: &str = "filerep arbiter ready on ";
pub const READY_MOUNT: &str = "filerep mount ready on ";

/// Why FUSE cannot be used here, if it cannot.
#[allow(unused_imports)] // not every test binary that shares this module mounts
pub use forgetfs::fuse_unavailable;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Print why a test is skipped where cargo test shows it (the print macros
/// are captured; a direct write to stderr is not).
pub fn skipped(name: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {why}");
}

/// Skip (return from) the calling test, saying why, where FUSE cannot
/// mount; with FILEREP_REQUIRE_FUSE=1 (CI) fail instead.
#[allow(unused_macros)]
macro_rules! skip_without_fuse {
    ($name:expr) => {
        if let Some(why) = $crate::common::pair::fuse_unavailable() {
            if std::env::var_os("FILEREP_REQUIRE_FUSE").is_some_and(|v| v == "1") {
                panic!("{}: FILEREP_REQUIRE_FUSE=1 but {why}", $name);
            }
            $crate::common::pair::skipped($name, &why);
            return;
        }
    };
}

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_filerep"))
}

/// Run `filerep ARGS` to its end (logging warnings only, and deaf to a
/// `FILEREP_CLUSTER_DIR` of the caller's): its exit code, stdout and stderr.
pub fn run_filerep(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(exe())
        .args(args)
        .env("FILEREP_LOG", "warn")
        .env_remove("FILEREP_CLUSTER_DIR")
        .output()
        .expect("run filerep");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// A port nothing listens on now, picked below the kernel's usual
/// ephemeral range (32768..): between this check and the segment's bind,
/// no outgoing connection (probes, clients: many, in parallel tests) is
/// handed that port, which happened with port 0 ("Address already in use").
pub fn free_addr() -> String {
    for _ in 0..1000 {
        let port = rand::random::<u16>() % 12_000 + 20_000;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("addr").to_string();
        }
    }
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").to_string()
}

/// `filerep arbiter` on `catalog`, probing every 100 ms (a test's pace).
/// A segment is lost after four failed attempts of 300 ms: a dead one is
/// refused at once, a live one starved of CPU on a loaded machine (a
/// compiler beside four pairs on two cores) is not taken for dead.
pub fn arbiter_args(catalog: &Path, key_file: &Path, listen: &str) -> Vec<String> {
    [
        "arbiter",
        "--catalog",
        &catalog.display().to_string(),
        "--key-file",
        &key_file.display().to_string(),
        "--listen",
        listen,
        "--interval-ms",
        "100",
        "--timeout-ms",
        "300",
        "--retries",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Start a process and wait for the line that says it serves.
pub fn spawn_ready(args: &[String], ready: &str) -> (Child, String) {
    try_spawn_ready(args, ready).unwrap_or_else(|e| panic!("{e}"))
}

/// Start a process; if it does not say it serves, it is reaped and the
/// line it printed instead is the error.
pub fn try_spawn_ready(args: &[String], ready: &str) -> Result<(Child, String), String> {
    try_spawn_ready_with(args, ready, &[], Stdio::inherit())
}

/// [`try_spawn_ready`] with more environment and stderr sent where asked.
pub fn try_spawn_ready_with(
    args: &[String],
    ready: &str,
    env: &[(String, String)],
    stderr: Stdio,
) -> Result<(Child, String), String> {
    let mut child = Command::new(exe())
        .args(args)
        .env("FILEREP_LOG", "filerep=warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn");
    let line = read_line(&mut child).expect("ready line");
    if !line.starts_with(ready) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{args:?}: unexpected first line {line:?}"));
    }
    Ok((child, line[ready.len()..].trim().to_string()))
}

/// One line of the child's stdout, read a byte at a time so that nothing
/// after it is taken from the pipe (a later line stays for the next read).
fn read_line(child: &mut Child) -> std::io::Result<String> {
    let out = child.stdout.as_mut().expect("stdout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while std::io::Read::read(out, &mut byte)? == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The next line a process started by [`try_spawn_ready`] prints, which must
/// start with `ready`: what follows it.
#[allow(dead_code)] // not every test binary that shares this module uses it
pub fn next_ready_line(child: &mut Child, ready: &str) -> Result<String, String> {
    let line = read_line(child).map_err(|e| format!("reading the next ready line: {e}"))?;
    match line.strip_prefix(ready) {
        Some(rest) => Ok(rest.trim().to_string()),
        None => Err(format!("unexpected line {line:?}, expected one starting {ready:?}")),
    }
}

/// Poll a condition until it holds (a deadline, not a sleep: the test
/// fails with what it was waiting for).
pub fn wait_for(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Hash every file under the roots block by block (path -> xxh3 of each
/// block), so a difference names the file and the block.
pub fn block_tree(roots: &[PathBuf], block_size: u32) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut out = std::collections::BTreeMap::new();
    for (i, r) in roots.iter().enumerate() {
        for (p, e) in filerep::verify::scan(r).unwrap() {
            let h = match e {
                filerep::verify::Entry::File { .. } => std::fs::read(r.join(&p))
                    .unwrap()
                    .chunks(block_size as usize)
                    .map(xxhash_rust::xxh3::xxh3_64)
                    .collect(),
                _ => Vec::new(),
            };
            out.insert(format!("{i}/{p}"), h);
        }
    }
    out
}

/// Two copies hold the same entries and every block matches; a panic names
/// the first path or block that differs.
pub fn assert_trees_equal(a: &[PathBuf], b: &[PathBuf], block_size: u32) {
    let (x, y) = (block_tree(a, block_size), block_tree(b, block_size));
    for (path, blocks) in &x {
        let Some(other) = y.get(path) else { panic!("{path} is on one side only") };
        assert_eq!(blocks.len(), other.len(), "{path}: {} blocks against {}", blocks.len(), other.len());
        if let Some(b) = blocks.iter().zip(other).position(|(p, q)| p != q) {
            panic!("{path}: block {b} differs");
        }
    }
    assert_eq!(
        x.len(),
        y.len(),
        "entries on one side only: {:?}",
        y.keys().filter(|k| !x.contains_key(*k)).collect::<Vec<_>>()
    );
}

/// SIGTERM, then wait (30 s at most) for the process to exit 0.
fn sigterm_and_reap(mut c: Child, what: &str) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().expect("wait") {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what} did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{what} exited with {status}");
}

/// SIGKILL and reap.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub struct Seg {
    pub cfg: SegmentConfig,
    pub cfg_path: PathBuf,
    pub child: Option<Child>,
}

impl Drop for Seg {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

impl Seg {
    pub fn root(&self, fs: usize) -> PathBuf {
        PathBuf::from(self.cfg.filespaces[fs].split_once('=').expect("NAME=DIR").1)
    }

    pub fn status(&self, key: &ClusterKey) -> Option<SegmentStatus> {
        match filerep::cluster::control::call::<_, SegmentResponse>(
            &self.cfg.control_listen,
            key,
            &SegmentRequest::Probe,
            Duration::from_secs(2),
        ) {
            Ok(SegmentResponse::Status(s)) => Some(s),
            _ => None,
        }
    }

    pub fn try_start(&mut self) -> Result<(), String> {
        let args = vec!["segment".into(), "--config".into(), self.cfg_path.display().to_string()];
        self.child = Some(try_spawn_ready(&args, READY_SEGMENT)?.0);
        Ok(())
    }

    /// Where [`Seg::try_start_mounting`] mounts filespace `name`.
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn own_mountpoint(&self, name: &str) -> PathBuf {
        self.cfg_path.with_file_name(format!("mnt{}-{name}-own", self.cfg.dbid))
    }

    /// Start the segment serving filespace `name` as a file system itself
    /// (`filerep segment --mount`, plus `extra` arguments), at
    /// [`Seg::own_mountpoint`]; returns once it says the mount is ready.
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn try_start_mounting(&mut self, name: &str, extra: &[&str]) -> Result<(), String> {
        let path = self.own_mountpoint(name);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut args: Vec<String> = vec![
            "segment".into(),
            "--config".into(),
            self.cfg_path.display().to_string(),
            "--mount".into(),
            format!("{name}={}", path.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = try_spawn_ready(&args, READY_SEGMENT)?.0;
        let shown = next_ready_line(&mut child, READY_MOUNT);
        self.child = Some(child);
        let shown = shown?;
        if Path::new(&shown) != path.canonicalize().map_err(|e| e.to_string())? {
            return Err(format!("mounted at {shown}, not at {}", path.display()));
        }
        Ok(())
    }

    /// SIGTERM, as an operator would stop it: it exits 0 (and unmounts
    /// what it served).
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn terminate(&mut self) {
        if let Some(c) = self.child.take() {
            let what = format!("segment {}", self.cfg.dbid);
            sigterm_and_reap(c, &what);
        }
    }

    /// (Re)start the segment process (it learns its role from the arbiter).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "segment {} is running", self.cfg.dbid);
        self.try_start().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Write a segment's configuration to `path`; its addresses for the catalog.
pub fn store_config(cfg: &SegmentConfig, path: &Path, host: &str) -> SegmentAddress {
    std::fs::write(path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
    SegmentAddress {
        dbid: cfg.dbid,
        host: host.into(),
        control: cfg.control_listen.clone(),
        data: cfg.data_listen.clone(),
        filespaces: Vec::new(),
    }
}

/// An arbiter and two segments (dbid 2 the primary, dbid 3 its mirror), synchronized.
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub key: ClusterKey,
    pub key_file: PathBuf,
    pub arbiter_addr: String,
    pub arbiter: Option<Child>,
    pub segs: Vec<Seg>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        kill(&mut self.arbiter);
        // Before the fields drop: the directory goes first, and segments
        // still running would log its disappearance as their own failure.
        for s in &mut self.segs {
            kill(&mut s.child);
        }
    }
}

impl Pair {
    pub fn start(block_size: u32) -> Pair {
        Pair::start_with(block_size, Seg::try_start)
    }

    /// A pair whose primary (dbid 2) is started by `primary` (another
    /// program that opens the segment from `cfg_path`, such as a C storage
    /// process); its mirror is a `filerep segment`.
    pub fn start_with(block_size: u32, primary: impl FnMut(&mut Seg) -> Result<(), String>) -> Pair {
        Pair::started(Pair::launch_with(block_size, primary))
    }

    /// A pair of segments configured with `direct: true` (aligned blocks
    /// written with O_DIRECT on both), synchronized.
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn start_direct(block_size: u32) -> Pair {
        Pair::started(Pair::launch(block_size, &|c| c.direct = true, Seg::try_start))
    }

    /// A pair whose two configurations `tune` changes, synchronized.
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn start_tuned(block_size: u32, tune: &dyn Fn(&mut SegmentConfig)) -> Pair {
        Pair::started(Pair::launch(block_size, tune, Seg::try_start))
    }

    fn started(p: Pair) -> Pair {
        wait_for("the pair to stream", Duration::from_secs(30), || {
            p.seg(2).status(&p.key).is_some_and(|s| s.acting == Acting::Primary && s.mode == 's')
        });
        p
    }

    /// The same, without waiting for the pair to stream (a primary that
    /// may be done and gone by then).
    pub fn launch_with(block_size: u32, primary: impl FnMut(&mut Seg) -> Result<(), String>) -> Pair {
        Pair::launch(block_size, &|_| {}, primary)
    }

    fn launch(
        block_size: u32,
        tune: &dyn Fn(&mut SegmentConfig),
        mut primary: impl FnMut(&mut Seg) -> Result<(), String>,
    ) -> Pair {
        // Ports are picked free and bound by the child a moment later:
        // another process on this machine may take one in between.
        let mut errors = Vec::new();
        for _ in 0..5 {
            match Pair::try_start(block_size, tune, &mut primary) {
                Ok(p) => return p,
                Err(e) => errors.push(e),
            }
        }
        panic!("cannot start a pair: {errors:#?}");
    }

    fn try_start(
        block_size: u32,
        tune: &dyn Fn(&mut SegmentConfig),
        primary: &mut impl FnMut(&mut Seg) -> Result<(), String>,
    ) -> Result<Pair, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("cluster.key");
        std::fs::write(&key_file, KEY).unwrap();
        let key = ClusterKey::from_material(KEY).unwrap();
        let arbiter_listen = free_addr();
        let mut segs = Vec::new();
        let mut addrs = Vec::new();
        for dbid in [2u32, 3] {
            let base = dir.path().join(format!("seg{dbid}"));
            let filespaces = FS
                .iter()
                .map(|n| {
                    let root = base.join(n);
                    std::fs::create_dir_all(&root).unwrap();
                    format!("{n}={}", root.display())
                })
                .collect();
            let mut cfg = SegmentConfig {
                dbid,
                content: 0,
                cluster_id: 0x6d,
                block_size,
                filespaces,
                key_file: key_file.clone(),
                control_listen: free_addr(),
                data_listen: free_addr(),
                socket: base.join("segment.sock"),
                state_dir: base.join("state"),
                arbiter: arbiter_listen.clone(),
                sync_level: "applied".into(),
                decision_timeout_ms: 2000,
                ack_timeout_ms: 2000,
                heartbeat_ms: 100,
                handshake_timeout_ms: 2000,
                prefer_uring: true,
                direct: false,
                metrics_listen: None,
                activity_limit: filerep::core::primary::ACTIVITY_LIMIT,
                mounts: Vec::new(),
            };
            tune(&mut cfg);
            let cfg_path = base.join("segment.json");
            addrs.push(store_config(&cfg, &cfg_path, "localhost"));
            segs.push(Seg { cfg, cfg_path, child: None });
        }
        let catalog = dir.path().join("catalog.json");
        Catalog::new(0x6d, block_size, vec![(0, addrs[0].clone(), addrs[1].clone())]).store(&catalog).unwrap();
        primary(&mut segs[0])?;
        segs[1].try_start()?;
        let args = arbiter_args(&catalog, &key_file, &arbiter_listen);
        let (arbiter, arbiter_addr) = try_spawn_ready(&args, READY_ARBITER)?;
        Ok(Pair { dir, key, key_file, arbiter_addr, arbiter: Some(arbiter), segs })
    }

    pub fn seg(&self, dbid: u32) -> &Seg {
        &self.segs[(dbid - 2) as usize]
    }

    pub fn seg_mut(&mut self, dbid: u32) -> &mut Seg {
        &mut self.segs[(dbid - 2) as usize]
    }

    pub fn mount(&self, dbid: u32, filespace: &str) -> Mount {
        self.mount_with(dbid, filespace, &[])
    }

    pub fn mount_with(&self, dbid: u32, filespace: &str, extra: &[&str]) -> Mount {
        let path = self.dir.path().join(format!("mnt{dbid}-{filespace}"));
        std::fs::create_dir_all(&path).unwrap();
        let mut args = vec![
            "mount".to_string(),
            "--config".into(),
            self.seg(dbid).cfg_path.display().to_string(),
            "--filespace".into(),
            filespace.into(),
            path.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, shown) = spawn_ready(&args, READY_MOUNT);
        assert_eq!(PathBuf::from(shown), path.canonicalize().unwrap());
        Mount { child: Some(child), path }
    }

    /// The arbiter's catalog.
    pub fn catalog(&self) -> Catalog {
        filerep::cluster::probe::fetch_catalog(&self.arbiter_addr, &self.key, Duration::from_secs(5)).expect("catalog")
    }

    /// Run `filerep recover --json` to the end: its exit code, stdout and stderr.
    pub fn recover(&self, extra: &[&str]) -> (i32, String, String) {
        self.tool("recover", extra)
    }

    /// Run `filerep verify --json` (online, through the stream): exit code 0 means identical.
    #[allow(dead_code)] // not every test binary that shares this module verifies
    pub fn verify(&self, extra: &[&str]) -> (i32, String, String) {
        self.tool("verify", extra)
    }

    fn tool(&self, name: &str, extra: &[&str]) -> (i32, String, String) {
        let key = self.key_file.display().to_string();
        let mut args = vec![name, "--arbiter", &self.arbiter_addr, "--json", "--timeout", "60", "--key-file", &key];
        args.extend(extra);
        let out = Command::new(exe()).args(&args).env("FILEREP_LOG", "warn").output().expect("recover");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }
}

pub struct Mount {
    pub child: Option<Child>,
    pub path: PathBuf,
}

#[allow(unused_imports)]
pub use forgetfs::process::{detach, mounted};

impl Mount {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// SIGTERM, as an operator would stop it: it unmounts and exits 0.
    pub fn stop(&mut self) {
        let Some(c) = self.child.take() else { return };
        sigterm_and_reap(c, "filerep mount");
        assert!(!mounted(&self.path), "{} is still mounted", self.path.display());
    }

    /// SIGKILL, as a host crash would end it, then detach the dead mount.
    pub fn crash(&mut self) {
        kill(&mut self.child);
        if mounted(&self.path) {
            detach(&self.path);
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        kill(&mut self.child);
        // Never leave a dead mount behind a failed test.
        if mounted(&self.path) {
            detach(&self.path);
        }
    }
}

/// The segment's own mount of filespace `fs_fast` at `mountpoint`.
pub fn fast_mount(mountpoint: PathBuf, log_files: Option<Vec<String>>) -> filerep::cluster::segment::MountEntry {
    filerep::cluster::segment::MountEntry {
        filespace: "fs_fast".into(),
        mountpoint,
        uid: None,
        gid: None,
        allow_other: false,
        threads: 8,
        log_files,
    }
}
