//! PostgreSQL on a mirrored mount, failed over (issue 6).
//!
//! A real pair (arbiter and two `filerep segment` processes), the primary's
//! filespace mounted with `filerep mount`, and an unmodified PostgreSQL
//! server running on it as its own user: `initdb`, `pgbench -i`, then
//! `pgbench` with 4 clients for 60 s. Right after pgbench has reported its
//! committed transactions, the primary side is killed with SIGKILL, as a
//! host crash would end it: the postmaster with all its children, the mount
//! and the primary segment process. The arbiter promotes the mirror; the
//! promoted side's filespace is mounted and PostgreSQL started on the same
//! data directory must go through crash recovery and hold every committed
//! transaction (one `pgbench_history` row each, balances consistent). Then
//! the old primary returns as mirror, `filerep recover` resynchronizes it
//! while PostgreSQL serves more transactions, PostgreSQL stops cleanly and
//! the two segments' filespaces are compared file by file.
//!
//! Why the kill comes after pgbench ended: pgbench reports the committed
//! count only when it finishes, and that count is what must survive. The
//! server is then still running with dirty buffers and 60 s of WAL since
//! its last checkpoint (checkpoints are pushed out of the run), so every
//! one of those transactions is recovered from WAL that reached the mirror
//! through the mount's fsyncs, not from data files written at a clean
//! shutdown.
//!
//! Skipped, with the reason printed, where FUSE or PostgreSQL is missing;
//! with `FILEREP_REQUIRE_POSTGRES=1` (CI sets it) a missing prerequisite is
//! a failure instead. `FILEREP_PG_SECONDS` shortens the pgbench run for
//! local iteration.

#[macro_use]
mod common;

use common::pair::{fuse_unavailable, is_root, kill, skipped, wait_for, Pair};
use filerep::cluster::segment::Acting;
use filerep::core::pair::{PairMode, Role};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BS: u32 = 8192;
/// pgbench clients and threads, and the scale of its data set.
const CLIENTS: &str = "4";
const THREADS: &str = "2";
const SCALE: &str = "2";

/// PostgreSQL's programs, from one installation.
struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    fn find() -> Result<PgBin, String> {
        const PROGRAMS: [&str; 4] = ["initdb", "postgres", "pgbench", "psql"];
        let mut candidates = Vec::new();
        // initdb on PATH (often a symlink into the versioned directory).
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                if let Ok(real) = d.join("initdb").canonicalize() {
                    candidates.extend(real.parent().map(Path::to_path_buf));
                }
            }
        }
        // Debian and Ubuntu keep them off PATH, one directory per major version.
        let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
            .unwrap_or_default();
        versioned.sort_by_key(|p| {
            std::cmp::Reverse(
                p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()?.parse::<u32>().ok()).unwrap_or(0),
            )
        });
        candidates.extend(versioned);
        candidates
            .into_iter()
            .find(|d| PROGRAMS.iter().all(|p| d.join(p).is_file()))
            .map(|dir| PgBin { dir })
            .ok_or_else(|| {
                "no PostgreSQL installation with initdb, postgres, pgbench and psql on PATH or under \
                 /usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)"
                    .into()
            })
    }

    fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }
}

/// The operating-system user PostgreSQL runs as: `postgres` when the test
/// runs as root (the server refuses root), else the test's own user.
#[derive(Clone, Copy)]
struct DbUser {
    ids: Option<(u32, u32)>,
}

impl DbUser {
    fn find() -> Result<DbUser, String> {
        if !is_root() {
            return Ok(DbUser { ids: None });
        }
        let name = CString::new("postgres").map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; the result is read at once, before any
        // other call that could reuse getpwnam's static buffer.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err("running as root and there is no `postgres` user to run PostgreSQL as \
                        (the postgresql package creates it)"
                .into());
        }
        // SAFETY: non-null, as returned by getpwnam.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(DbUser { ids: Some((uid, gid)) })
    }

    /// `filerep mount` arguments that let this user in.
    fn mount_args(&self) -> Vec<String> {
        match self.ids {
            Some((uid, gid)) => {
                vec!["--uid".into(), uid.to_string(), "--gid".into(), gid.to_string(), "--allow-other".into()]
            }
            None => Vec::new(),
        }
    }

    /// Give a directory outside the mount to this user.
    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
        }
    }
}

/// What the test needs, or why it cannot run here.
fn prerequisites(name: &str) -> Option<(PgBin, DbUser)> {
    let found = match fuse_unavailable() {
        Some(why) => Err(why),
        None => PgBin::find().and_then(|bin| Ok((bin, DbUser::find()?))),
    };
    match found {
        Ok(p) => Some(p),
        Err(why) if std::env::var_os("FILEREP_REQUIRE_POSTGRES").is_some_and(|v| v == "1") => {
            panic!("{name}: FILEREP_REQUIRE_POSTGRES=1 but {why}")
        }
        Err(why) => {
            skipped(name, &why);
            None
        }
    }
}

/// A progress line, in one write so that the pair's logs do not split it.
fn say(msg: impl AsRef<str>) {
    let line = format!("[postgres] {}\n", msg.as_ref());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// One PostgreSQL server: its data directory, port and socket directory
/// (outside any mount), and the postmaster when it runs.
struct Postgres<'a> {
    bin: &'a PgBin,
    user: DbUser,
    data: PathBuf,
    port: u16,
    sockets: PathBuf,
    logs: PathBuf,
    starts: usize,
    postmaster: Option<Child>,
}

impl<'a> Postgres<'a> {
    fn new(bin: &'a PgBin, user: DbUser, data: PathBuf, work: &Path, tag: &str) -> Postgres<'a> {
        let sockets = work.join(format!("sockets-{tag}"));
        std::fs::create_dir_all(&sockets).expect("socket directory");
        user.own(&sockets);
        let port = pick_port();
        Postgres { bin, user, data, port, sockets, logs: work.join(format!("pg-{tag}")), starts: 0, postmaster: None }
    }

    /// A PostgreSQL program, run as the database user, talking to this server.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.path(program));
        c.current_dir(&self.sockets)
            .env("PGHOST", &self.sockets)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres")
            .env_remove("PGDATA")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.user.ids {
            c.uid(uid).gid(gid).env("HOME", &self.sockets);
        }
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let out = self.command(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn initdb(&self) {
        let data = self.data.display().to_string();
        // Synced at the end (the default): every file durable on both sides.
        self.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8"]);
    }

    fn log_path(&self) -> PathBuf {
        self.logs.with_extension(format!("{}.log", self.starts))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Start the postmaster (in a process group of its own, so that it and
    /// every child can be killed at once) and wait until it takes queries:
    /// after a crash, that is after recovery. A port taken meanwhile by
    /// another process is replaced by another.
    fn start(&mut self) {
        for _ in 0..5 {
            match self.try_start() {
                Ok(()) => return,
                Err(log) => say(format!("port {} was taken, trying another:\n{log}", self.port)),
            }
            self.port = pick_port();
        }
        panic!("no free port for postgres after 5 attempts");
    }

    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.postmaster.is_none());
        self.starts += 1;
        let log = File::create(self.log_path()).expect("log file");
        let data = self.data.display().to_string();
        let sockets = self.sockets.display().to_string();
        let port = self.port.to_string();
        let child = self
            .command("postgres")
            .args(["-D", &data, "-p", &port, "-k", &sockets])
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Keep checkpoints out of the run: recovery then replays all of it.
            .args(["-c", "checkpoint_timeout=1h", "-c", "max_wal_size=4GB"])
            // Durability as shipped (stated, so a changed default cannot weaken the test).
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("postgres");
        self.postmaster = Some(child);
        let start = Instant::now();
        loop {
            let ok = self.command("psql").args(["-X", "-Atqc", "select 1"]).output().is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            if let Some(status) = self.postmaster.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.postmaster = None;
                let log = self.log();
                if log.contains("could not create any TCP/IP sockets") {
                    return Err(log);
                }
                panic!("postgres exited with {status} while starting:\n{log}");
            }
            assert!(start.elapsed() < Duration::from_secs(180), "postgres is not ready after 180 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn query(&self, sql: &str) -> String {
        let out = self.run("psql", &["-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn count(&self, sql: &str) -> i64 {
        let v = self.query(sql);
        v.parse().unwrap_or_else(|e| panic!("{sql}: {v:?}: {e}"))
    }

    /// SIGKILL to the postmaster's process group: it and every backend and
    /// auxiliary process, at once.
    fn crash(&mut self) {
        if let Some(mut c) = self.postmaster.take() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Fast shutdown (SIGINT): a shutdown checkpoint, then exit.
    fn stop(&mut self) {
        let Some(mut c) = self.postmaster.take() else { return };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::SIGINT).expect("SIGINT");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = c.try_wait().expect("wait") {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "postgres did not stop:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "postgres exited with {status}:\n{}", self.log());
        assert!(self.log().contains("database system is shut down"), "{}", self.log());
    }
}

impl Drop for Postgres<'_> {
    fn drop(&mut self) {
        // Never leave a server behind a failed test.
        self.crash();
    }
}

/// A free loopback port below the kernel's ephemeral range, so that no
/// outgoing connection (the pair's own) takes it before the server binds it.
fn pick_port() -> u16 {
    use rand::Rng;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(32768);
    let (from, to) = if low > 12000 { (10000, low) } else { (low / 2, low) };
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(from..to);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

/// What a pgbench run reported.
struct Bench {
    committed: i64,
    tps: f64,
    stdout: String,
}

fn pgbench(pg: &Postgres, args: &[&str]) -> Bench {
    let out = pg.run("pgbench", args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> Option<&str> {
        stdout.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim_start_matches([':', ' ', '=']))
    };
    // "number of transactions actually processed: 12345" (with -t: "12345/20000")
    let committed = field("number of transactions actually processed")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no committed count in pgbench's report:\n{stdout}"));
    if let Some(failed) = field("number of failed transactions") {
        assert!(failed.starts_with("0 "), "pgbench reports failed transactions: {failed}\n{stdout}");
    }
    let tps = field("tps")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's report:\n{stdout}"));
    Bench { committed, tps, stdout }
}

/// Each default (TPC-B-like) transaction adds one delta to an account, its
/// teller and its branch and records it in the history: the four sums agree
/// exactly when no committed transaction is lost or half-applied.
fn assert_balances_agree(pg: &Postgres) {
    let sums = pg.query(
        "select (select coalesce(sum(abalance), 0) from pgbench_accounts) || ' ' || \
                (select coalesce(sum(tbalance), 0) from pgbench_tellers) || ' ' || \
                (select coalesce(sum(bbalance), 0) from pgbench_branches) || ' ' || \
                (select coalesce(sum(delta), 0) from pgbench_history)",
    );
    let v: Vec<&str> = sums.split(' ').collect();
    assert!(v.len() == 4 && v.iter().all(|s| *s == v[0]), "accounts, tellers, branches and history disagree: {sums}");
}

/// The WAL position ("0/1A2B3C4D") after `prefix` in a server log.
fn lsn_after(log: &str, prefix: &str) -> Option<u64> {
    let at = log.find(prefix)? + prefix.len();
    let lsn = log[at..].split_whitespace().next()?;
    let (hi, lo) = lsn.split_once('/')?;
    Some(u64::from_str_radix(hi, 16).ok()? << 32 | u64::from_str_radix(lo, 16).ok()?)
}

fn pgbench_seconds() -> String {
    std::env::var("FILEREP_PG_SECONDS").ok().filter(|s| s.parse::<u32>().is_ok_and(|n| n > 0)).unwrap_or("60".into())
}

#[test]
fn postgres_survives_a_primary_crash_and_the_pair_ends_identical() {
    const NAME: &str = "postgres_survives_a_primary_crash_and_the_pair_ends_identical";
    let Some((bin, user)) = prerequisites(NAME) else { return };
    let t0 = Instant::now();
    let phase = |what: &dyn std::fmt::Display| say(format!("{:>6.1}s {what}", t0.elapsed().as_secs_f64()));
    say(format!("PostgreSQL from {}", bin.dir.display()));

    // 1. A real pair; the primary's filespace mounted for the database user.
    let mut pair = Pair::start(BS);
    // The database user must reach the mount points and its socket directory.
    std::fs::set_permissions(pair.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let work = pair.dir.path().to_path_buf();
    let mount_args = user.mount_args();
    let args: Vec<&str> = mount_args.iter().map(String::as_str).collect();
    let mut mnt = pair.mount_with(2, "pg_system", &args);
    phase(&"pair synchronized, primary's pg_system mounted");

    // 2. initdb inside the mount, a server on a free loopback port, pgbench.
    let mut pg = Postgres::new(&bin, user, mnt.p("pgdata"), &work, "primary");
    pg.initdb();
    phase(&"initdb done");
    pg.start();
    pg.run("pgbench", &["-i", "-s", SCALE, "-q"]);
    phase(&"pgbench -i done");
    let seconds = pgbench_seconds();
    let run = pgbench(&pg, &["-c", CLIENTS, "-j", THREADS, "-T", &seconds]);
    phase(&format!("pgbench -c {CLIENTS} -j {THREADS} -T {seconds}: {} committed, {:.1} tps", run.committed, run.tps));
    assert!(run.committed > 0, "pgbench committed nothing:\n{}", run.stdout);

    // 3. The primary side dies, as in a host crash: every PostgreSQL process
    // at once (one signal to the process group), then the segment process
    // and the mount.
    pg.crash();
    kill(&mut pair.seg_mut(2).child);
    mnt.crash();
    phase(&"primary side killed (postmaster and children, segment, mount)");

    // 4. The arbiter promotes the mirror at a new generation.
    wait_for("the mirror's promotion", Duration::from_secs(30), || {
        pair.seg(3).status(&pair.key).is_some_and(|s| s.acting == Acting::Primary && s.mode == 'c')
    });
    let p = pair.catalog().pairs[0].pair.clone();
    let role = |dbid: u32| p.segments.iter().find(|s| s.dbid == dbid).map(|s| (s.role, s.up));
    assert_eq!((p.mode, p.generation), (PairMode::ChangeTracking, 2), "{p:?}");
    assert_eq!(role(3), Some((Role::Primary, true)));
    assert_eq!(role(2), Some((Role::Mirror, false)));
    phase(&"mirror promoted: generation 2, dbid 3 primary in change tracking");

    // 5. The promoted side's filespace, the same data directory: crash
    // recovery, and every committed transaction is there.
    let mnt3 = pair.mount_with(3, "pg_system", &args);
    let mut pg3 = Postgres::new(&bin, user, mnt3.p("pgdata"), &work, "promoted");
    pg3.start();
    let log = pg3.log();
    assert!(log.contains("was not properly shut down") || log.contains("was interrupted"), "no crash recovery:\n{log}");
    let replayed = match (lsn_after(&log, "redo starts at "), lsn_after(&log, "redo done at ")) {
        (Some(from), Some(to)) => to.saturating_sub(from),
        _ => panic!("recovery replayed no WAL:\n{log}"),
    };
    // The whole run is in WAL after the last checkpoint: recovery redid it.
    assert!(replayed > 1 << 20, "recovery replayed only {replayed} bytes of WAL:\n{log}");
    phase(&format!("PostgreSQL recovered on the promoted side: {:.1} MB of WAL replayed", replayed as f64 / 1e6));
    let history = pg3.count("select count(*) from pgbench_history");
    assert_eq!(history, run.committed, "pgbench reported {} committed transactions", run.committed);
    assert_balances_agree(&pg3);
    phase(&format!("all {history} committed transactions present, balances agree"));

    // 6. The old primary returns as mirror and is resynchronized while
    // the promoted side serves more transactions.
    pair.seg_mut(2).start();
    wait_for("the old primary to serve as mirror, its activity log handed over", Duration::from_secs(30), || {
        pair.seg(2)
            .status(&pair.key)
            .is_some_and(|s| s.acting == Acting::Mirror && s.generation == 2 && !s.changes_pending)
    });
    phase(&"old primary back as mirror");
    let more = std::thread::scope(|s| {
        let load = s.spawn(|| pgbench(&pg3, &["-c", CLIENTS, "-j", THREADS, "-T", "5", "--no-vacuum"]));
        let (code, out, err) = pair.recover(&[]);
        assert_eq!(code, 0, "filerep recover:\n{out}{err}");
        let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).expect("summary");
        assert_eq!(summary["result"], "synchronized", "{summary}");
        phase(&format!("filerep recover: {summary}"));
        load.join().expect("pgbench during the resync")
    });
    let p = pair.catalog().pairs[0].pair.clone();
    assert_eq!((p.mode, p.generation), (PairMode::Synchronized, 2), "{p:?}");
    assert_eq!(pg3.count("select count(*) from pgbench_history"), run.committed + more.committed);
    assert_balances_agree(&pg3);
    phase(&format!("pair synchronized; {} more transactions committed meanwhile", more.committed));
    // Online, with the server still running: every file and block through the stream.
    let (code, out, err) = pair.verify(&[]);
    assert_eq!(code, 0, "filerep verify found differences or failed:\n{out}{err}");
    phase(&format!("filerep verify: {}", out.lines().last().unwrap_or("")));

    // Stopped cleanly, synced, unmounted: the two copies are identical.
    pg3.stop();
    File::open(&mnt3.path).and_then(|d| d.sync_all()).expect("fsync of the mount's root");
    let mut mnt3 = mnt3;
    mnt3.stop();
    // And offline, file by file, once nothing runs.
    let (r3, r2) = (pair.seg(3).root(0), pair.seg(2).root(0));
    let cmp = filerep::verify::compare(&[("pg_system".to_string(), r3.as_path(), r2.as_path())]).expect("compare");
    let bad: Vec<_> = cmp.rows.iter().filter(|r| !r.identical()).collect();
    assert!(bad.is_empty(), "the two sides differ: {bad:#?}");
    assert!(cmp.files > 500, "suspiciously few files compared: {}", cmp.files);
    phase(&format!(
        "promoted primary and returned mirror identical: {} files, {} directories, {} bytes, {} differences",
        cmp.files, cmp.dirs, cmp.bytes, cmp.differences
    ));
}

/// Not a test: pgbench through the mirrored mount beside pgbench on a plain
/// local directory of the same disk, same server settings, scale, clients
/// and duration, in one run (rounds alternate). For docs/performance.md:
/// `cargo test --release --test postgres -- --ignored --nocapture`
/// (`FILEREP_PG_SECONDS`, `FILEREP_PG_SCALE`, `FILEREP_PG_ROUNDS` to vary).
#[test]
#[ignore]
fn perf_pgbench_through_the_mount_and_on_a_local_directory() {
    const NAME: &str = "perf_pgbench_through_the_mount_and_on_a_local_directory";
    let Some((bin, user)) = prerequisites(NAME) else { return };
    let env = |k: &str, d: u32| std::env::var(k).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(d);
    let (seconds, scale, rounds) =
        (env("FILEREP_PG_SECONDS", 60), env("FILEREP_PG_SCALE", 10), env("FILEREP_PG_ROUNDS", 1));
    let pair = Pair::start(BS);
    std::fs::set_permissions(pair.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let work = pair.dir.path().to_path_buf();
    let mount_args = user.mount_args();
    let args: Vec<&str> = mount_args.iter().map(String::as_str).collect();
    let mnt = pair.mount_with(2, "pg_system", &args);
    let local = work.join("local");
    std::fs::create_dir(&local).expect("local directory");
    user.own(&local);
    let mut servers = [
        ("local directory", Postgres::new(&bin, user, local.join("pgdata"), &work, "local")),
        ("mirrored mount", Postgres::new(&bin, user, mnt.p("pgdata"), &work, "mount")),
    ];
    let (scale, seconds) = (scale.to_string(), seconds.to_string());
    for (what, pg) in servers.iter_mut() {
        let t = Instant::now();
        pg.initdb();
        pg.start();
        pg.run("pgbench", &["-i", "-s", &scale, "-q"]);
        say(format!("{what}: initdb and pgbench -i -s {scale} in {:.1} s", t.elapsed().as_secs_f64()));
    }
    let mut tps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, (what, pg)) in servers.iter().enumerate() {
            let b = pgbench(pg, &["-c", CLIENTS, "-j", THREADS, "-T", &seconds]);
            say(format!("round {round}: {what}: {:.1} tps ({} transactions)", b.tps, b.committed));
            tps[i].push(b.tps);
        }
    }
    for (_, pg) in servers.iter_mut() {
        pg.stop();
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    say(format!(
        "pgbench -c {CLIENTS} -j {THREADS} -T {seconds}, scale {scale}, {rounds} round(s): local {:.1} tps, \
         mount {:.1} tps, mount/local {:.2}",
        mean(&tps[0]),
        mean(&tps[1]),
        mean(&tps[1]) / mean(&tps[0])
    ));
}
