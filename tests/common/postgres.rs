//! PostgreSQL for the tests and the database benchmark: finding its
//! programs, the user it runs as, one server (start, crash, stop, queries)
//! and pgbench's report. Everything runs as the database user (`postgres`
//! when the caller is root: the server refuses root).

use super::pair::{fuse_unavailable, is_root, skipped};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// PostgreSQL's programs, from one installation.
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    pub fn find() -> Result<PgBin, String> {
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

    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }
}

/// The operating-system user PostgreSQL runs as: `postgres` when the test
/// runs as root (the server refuses root), else the test's own user.
#[derive(Clone, Copy)]
pub struct DbUser {
    pub ids: Option<(u32, u32)>,
}

impl DbUser {
    pub fn find() -> Result<DbUser, String> {
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
    pub fn mount_args(&self) -> Vec<String> {
        match self.ids {
            Some((uid, gid)) => {
                vec!["--uid".into(), uid.to_string(), "--gid".into(), gid.to_string(), "--allow-other".into()]
            }
            None => Vec::new(),
        }
    }

    /// The same, for a segment that serves the mount itself (`--mount`).
    pub fn segment_mount_args(&self) -> Vec<String> {
        self.mount_args()
            .into_iter()
            .map(|a| a.strip_prefix("--").map(|o| format!("--mount-{o}")).unwrap_or(a))
            .collect()
    }

    /// Give a directory outside the mount to this user.
    pub fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
        }
    }
}

/// What the test needs, or why it cannot run here.
pub fn prerequisites(name: &str) -> Option<(PgBin, DbUser)> {
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
pub fn say(msg: impl AsRef<str>) {
    let line = format!("[postgres] {}\n", msg.as_ref());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// One PostgreSQL server: its data directory, port and socket directory
/// (outside any mount), and the postmaster when it runs.
pub struct Postgres<'a> {
    pub bin: &'a PgBin,
    pub user: DbUser,
    pub data: PathBuf,
    pub port: u16,
    pub sockets: PathBuf,
    pub logs: PathBuf,
    pub starts: usize,
    pub postmaster: Option<Child>,
    /// More `-c NAME=VALUE` settings for the server (a benchmark's).
    pub settings: Vec<String>,
}

impl<'a> Postgres<'a> {
    pub fn new(bin: &'a PgBin, user: DbUser, data: PathBuf, work: &Path, tag: &str) -> Postgres<'a> {
        let sockets = work.join(format!("sockets-{tag}"));
        std::fs::create_dir_all(&sockets).expect("socket directory");
        user.own(&sockets);
        let port = pick_port();
        Postgres {
            bin,
            user,
            data,
            port,
            sockets,
            logs: work.join(format!("pg-{tag}")),
            starts: 0,
            postmaster: None,
            settings: Vec::new(),
        }
    }

    /// A PostgreSQL program, run as the database user, talking to this server.
    pub fn command(&self, program: &str) -> Command {
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

    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.run_with(program, &[], args)
    }

    /// [`Postgres::run`] with more environment (such as `PGOPTIONS`).
    pub fn run_with(&self, program: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        let out = self
            .command(program)
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn initdb(&self) {
        let data = self.data.display().to_string();
        // Synced at the end (the default): every file durable on both sides.
        self.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8"]);
    }

    pub fn log_path(&self) -> PathBuf {
        self.logs.with_extension(format!("{}.log", self.starts))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Start the postmaster (in a process group of its own, so that it and
    /// every child can be killed at once) and wait until it takes queries:
    /// after a crash, that is after recovery. A port taken meanwhile by
    /// another process is replaced by another.
    pub fn start(&mut self) {
        for _ in 0..5 {
            match self.try_start() {
                Ok(()) => return,
                Err(log) => say(format!("port {} was taken, trying another:\n{log}", self.port)),
            }
            self.port = pick_port();
        }
        panic!("no free port for postgres after 5 attempts");
    }

    pub fn try_start(&mut self) -> Result<(), String> {
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
            .args(self.settings.iter().flat_map(|kv| ["-c", kv.as_str()]))
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

    pub fn query(&self, sql: &str) -> String {
        let out = self.run("psql", &["-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn count(&self, sql: &str) -> i64 {
        let v = self.query(sql);
        v.parse().unwrap_or_else(|e| panic!("{sql}: {v:?}: {e}"))
    }

    /// SIGKILL to the postmaster's process group: it and every backend and
    /// auxiliary process, at once.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.postmaster.take() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Fast shutdown (SIGINT): a shutdown checkpoint, then exit.
    pub fn stop(&mut self) {
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
pub fn pick_port() -> u16 {
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
pub struct Bench {
    pub committed: i64,
    pub tps: f64,
    pub stdout: String,
}

pub fn pgbench(pg: &Postgres, args: &[&str]) -> Bench {
    pgbench_with(pg, &[], args)
}

/// [`pgbench`] with more environment: `PGOPTIONS` sets a server setting
/// for its sessions (`-c synchronous_commit=remote_apply`).
pub fn pgbench_with(pg: &Postgres, env: &[(&str, &str)], args: &[&str]) -> Bench {
    let out = pg.run_with("pgbench", env, args);
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
pub fn assert_balances_agree(pg: &Postgres) {
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
pub fn lsn_after(log: &str, prefix: &str) -> Option<u64> {
    let at = log.find(prefix)? + prefix.len();
    let lsn = log[at..].split_whitespace().next()?;
    let (hi, lo) = lsn.split_once('/')?;
    Some(u64::from_str_radix(hi, 16).ok()? << 32 | u64::from_str_radix(lo, 16).ok()?)
}
