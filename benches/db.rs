//! A database on the mount against the same database on a local directory
//! and on its own synchronous replication, in one run (docs/performance.md,
//! docs/mount.md):
//!
//! ```text
//! cargo bench -p filerep-tools --bench db -- [--seconds 20] [--rounds 3] [--scale 10]
//!     [--clients 4] [--sqlite-tx 2000] [--mount-process] [--sync-level applied]
//!     [--sqlite-only] [--load-only] [--references] [--json]
//! ```
//!
//! - a real pair on loopback (arbiter and two `filerep segment` processes,
//!   block size 8 KiB, the primary's sync level `applied` unless
//!   `--sync-level` says otherwise), the primary serving its
//!   `pg_system` filespace as a file system itself (`--mount`), or through
//!   a separate `filerep mount` with `--mount-process`;
//! - PostgreSQL (`initdb`, `pgbench -i -s SCALE`, timed) on a local
//!   directory, on the mount, and as a primary with a synchronous standby
//!   on this machine (`pg_basebackup -R`, `synchronous_standby_names = '*'`),
//!   its pgbench rounds run at `synchronous_commit = on` and at
//!   `remote_apply`;
//! - `pgbench -c CLIENTS -j 2 -T SECONDS` on each setup in turn, ROUNDS
//!   times, and the CPU time of each of our processes per mount transaction;
//! - small SQLite transactions (one 100-byte row each, `synchronous=FULL`)
//!   with the WAL and with the rollback journal, on the local directory and
//!   on the mount, through the `sqlite3` program.
//!
//! `--sqlite-only` runs the SQLite part alone (PostgreSQL need not be
//! installed). `--load-only` runs only the loads (`initdb` and `pgbench -i`),
//! on the local directory and on the mount alternately, ROUNDS times, each
//! on a fresh data directory, and reports their medians. `--references`
//! adds two mounts of this process to the SQLite rounds, the mount's own
//! FUSE layer over changes that are not the engine's
//! (`filerep::mount::reference`): made in a local directory only
//! (`sqlite_MODE_fuse_only_tps`: what FUSE costs), and also sent to a bare
//! mirror thread over loopback TCP that makes them before each returns
//! (`sqlite_MODE_bare_tps`: the least a synchronous replication adds).
//!
//! Medians go to the JSON report (`local_tps`, `pg_sync_tps`,
//! `pg_remote_apply_tps`, `mount_tps`, `load_s_local`, `load_s_mount`, ...).
//! It installs nothing: without PostgreSQL, `sqlite3` or FUSE it fails,
//! saying what is missing.

#[path = "../tests/common/mod.rs"]
#[allow(unused_macros)]
mod common;

use common::pair::{fuse_unavailable, wait_for, Mount, Pair};
use common::postgres::{pgbench_with, say, DbUser, PgBin, Postgres};
use filerep_tools::cpu;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const BS: u32 = 8192;

struct Args {
    seconds: u32,
    rounds: u32,
    scale: u32,
    clients: u32,
    sqlite_tx: u32,
    mount_process: bool,
    sync_level: String,
    sqlite_only: bool,
    load_only: bool,
    references: bool,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seconds: 20,
        rounds: 3,
        scale: 10,
        clients: 4,
        sqlite_tx: 2000,
        mount_process: false,
        sync_level: "applied".into(),
        sqlite_only: false,
        load_only: false,
        references: false,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u32, String> {
            let v = it.next().ok_or_else(|| format!("{name}: give a number"))?;
            v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{name} {v}: give a whole number above 0"))
        };
        match arg.as_str() {
            "--seconds" => a.seconds = number("--seconds")?,
            "--rounds" => a.rounds = number("--rounds")?,
            "--scale" => a.scale = number("--scale")?,
            "--clients" => a.clients = number("--clients")?,
            "--sqlite-tx" => a.sqlite_tx = number("--sqlite-tx")?,
            "--mount-process" => a.mount_process = true,
            "--sync-level" => {
                let v = it.next().ok_or("--sync-level: give applied, durable, async or async:N")?;
                filerep::config::SyncLevel::parse(&v).map_err(|e| format!("--sync-level {v}: {e}"))?;
                a.sync_level = v;
            }
            "--sqlite-only" => a.sqlite_only = true,
            "--load-only" => a.load_only = true,
            "--references" => a.references = true,
            "--json" => a.json = true,
            // cargo bench passes --bench to every bench program.
            "--bench" => {}
            other => return Err(format!("{other}: unknown argument (see the top of benches/db.rs)")),
        }
    }
    if a.sqlite_only && a.load_only {
        return Err("--sqlite-only and --load-only: give one of them".into());
    }
    Ok(a)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("db bench: {e}");
            std::process::exit(2);
        }
    };
    let found = match fuse_unavailable() {
        Some(why) => Err(format!("the mount cannot be made here: {why}")),
        None if !common::sqlite::available() => {
            Err("no sqlite3 program on PATH (Debian: apt-get install sqlite3)".to_string())
        }
        None if args.sqlite_only => DbUser::find().map(|user| (None, user)),
        None => PgBin::find().and_then(|bin| {
            if bin.path("pg_basebackup").is_file() {
                Ok((Some(bin), DbUser::find()?))
            } else {
                Err(format!("no pg_basebackup beside {} (the standby is made with it)", bin.dir.display()))
            }
        }),
    };
    let (bin, user) = match found {
        Ok(f) => f,
        Err(why) => {
            eprintln!("db bench: {why}");
            std::process::exit(1);
        }
    };
    run(&args, bin.as_ref(), user);
}

/// One setup's pgbench rounds.
#[derive(Default)]
struct Rounds {
    tps: Vec<f64>,
    committed: i64,
}

fn run(args: &Args, bin: Option<&PgBin>, user: DbUser) {
    let own = user.segment_mount_args();
    let own: Vec<&str> = own.iter().map(String::as_str).collect();
    // The primary's sync level: what a change waits for before it returns
    // (a sync is durable on both hosts at every level).
    let configure = |seg: &mut common::pair::Seg| {
        seg.cfg.sync_level = args.sync_level.clone();
        std::fs::write(&seg.cfg_path, serde_json::to_vec_pretty(&seg.cfg).expect("config")).expect("config file");
    };
    let pair = if args.mount_process {
        Pair::start_with(BS, |seg| {
            configure(seg);
            seg.try_start()
        })
    } else {
        Pair::start_with(BS, |seg| {
            configure(seg);
            seg.try_start_mounting("pg_system", &own)
        })
    };
    std::fs::set_permissions(pair.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let work = pair.dir.path().to_path_buf();
    let mount_args = user.mount_args();
    let mount_args: Vec<&str> = mount_args.iter().map(String::as_str).collect();
    let mnt = if args.mount_process {
        pair.mount_with(2, "pg_system", &mount_args)
    } else {
        Mount { child: None, path: pair.seg(2).own_mountpoint("pg_system") }
    };
    // Our processes, whose CPU time is counted per mount transaction.
    let mut ours: Vec<(&str, u32)> = vec![
        ("primary_segment", pair.seg(2).child.as_ref().expect("primary").id()),
        ("mirror_segment", pair.seg(3).child.as_ref().expect("mirror").id()),
        ("arbiter", pair.arbiter.as_ref().expect("arbiter").id()),
    ];
    if let Some(c) = &mnt.child {
        ours.push(("mount_process", c.id()));
    }
    // PostgreSQL first, on a fresh mount, as the figures in the docs were taken.
    let pg = match bin {
        Some(bin) if args.load_only => {
            let report = serde_json::Value::Object(loads_only(args, bin, user, &work, &mnt));
            println!(
                "{}",
                if args.json { report.to_string() } else { serde_json::to_string_pretty(&report).unwrap_or_default() }
            );
            return;
        }
        Some(bin) => Some(postgres(args, bin, user, &work, &mnt, &ours)),
        None => None,
    };
    let dir = |name: &str| user_dir(&work, user, name);
    let references = args.references.then(|| References::mount(&work, user));
    let sqlite: Vec<(String, f64)> = ["wal", "rollback"]
        .iter()
        .flat_map(|mode| {
            let (l, m) = (dir(&format!("sqlite-{mode}")), mnt.p(&format!("sqlite-{mode}")));
            std::fs::create_dir_all(&m).expect("sqlite directory on the mount");
            let mut places = vec![("local", l), ("mount", m)];
            for (name, r) in references.iter().flat_map(|r| r.places()) {
                let d = r.join(format!("sqlite-{mode}"));
                std::fs::create_dir_all(&d).expect("sqlite directory on a reference mount");
                places.push((name, d));
            }
            let mut v = Vec::new();
            for r in 0..args.rounds {
                for (place, d) in &places {
                    let place = *place;
                    let tps = sqlite_tps(&d.join(format!("r{r}.db")), mode, args.sqlite_tx);
                    say(format!("sqlite {mode} round {r}: {place}: {tps:.0} transactions/s"));
                    v.push((format!("sqlite_{mode}_{place}_tps"), tps));
                }
            }
            v
        })
        .collect();
    let sqlite_med = |k: &str| median(&sqlite.iter().filter(|(n, _)| n == k).map(|(_, t)| *t).collect::<Vec<_>>());
    let mut report = serde_json::json!({
        "mount": if args.mount_process { "filerep mount (a separate process)" } else { "filerep segment --mount" },
        "sync_level": args.sync_level, "seconds": args.seconds, "rounds": args.rounds, "scale": args.scale, "clients": args.clients,
    });
    if let (Some(pg), serde_json::Value::Object(r)) = (pg, &mut report) {
        r.extend(pg);
    }
    for mode in ["wal", "rollback"] {
        let (l, m) = (sqlite_med(&format!("sqlite_{mode}_local_tps")), sqlite_med(&format!("sqlite_{mode}_mount_tps")));
        report[format!("sqlite_{mode}_local_tps")] = serde_json::json!(l.round());
        report[format!("sqlite_{mode}_mount_tps")] = serde_json::json!(m.round());
        report[format!("sqlite_{mode}_mount_over_local")] = serde_json::json!(m / l);
        if args.references {
            for place in ["fuse_only", "bare"] {
                let t = sqlite_med(&format!("sqlite_{mode}_{place}_tps"));
                report[format!("sqlite_{mode}_{place}_tps")] = serde_json::json!(t.round());
                report[format!("sqlite_{mode}_{place}_over_local")] = serde_json::json!(t / l);
            }
            report[format!("sqlite_{mode}_mount_over_bare")] =
                serde_json::json!(m / sqlite_med(&format!("sqlite_{mode}_bare_tps")));
        }
    }
    drop(references);
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    }
}

/// `--references`: the mount's FUSE layer over changes made locally only,
/// and over a bare synchronous replication (`filerep::mount::reference`),
/// each served by threads of this process until dropped.
struct References {
    mounts: Vec<(&'static str, std::path::PathBuf, filerep::mount::Unmounter, std::thread::JoinHandle<()>)>,
}

impl References {
    fn mount(work: &Path, user: DbUser) -> References {
        use filerep::mount::reference::{mount_reference, Reference};
        let mut mounts = Vec::new();
        let mirror_root = user_dir(work, user, "reference-bare-mirror");
        for (name, reference) in [("fuse_only", Reference::FuseOnly), ("bare", Reference::Bare { mirror_root })] {
            let root = user_dir(work, user, &format!("reference-{name}-root"));
            let mountpoint = work.join(format!("reference-{name}"));
            std::fs::create_dir_all(&mountpoint).expect("reference mountpoint");
            let opts = filerep::mount::MountOptions {
                socket: std::path::PathBuf::new(),
                filespace: 0,
                filespace_name: format!("reference-{name}"),
                root,
                block_size: BS,
                mountpoint: mountpoint.clone(),
                uid: user.ids.map(|(u, _)| u),
                gid: user.ids.map(|(_, g)| g),
                allow_other: user.ids.is_some(),
                threads: 8,
                force: false,
                // The same log files as the segment's mount: the references
                // then measure the same FUSE layer.
                log_files: filerep::mount::LogFiles::default(),
            };
            let mut session =
                mount_reference(&opts, reference).unwrap_or_else(|e| panic!("reference mount {name}: {e}"));
            let unmounter = session.unmounter();
            let serving = std::thread::spawn(move || {
                if let Err(e) = session.run() {
                    eprintln!("reference mount: {e}");
                }
            });
            mounts.push((name, mountpoint, unmounter, serving));
        }
        References { mounts }
    }

    fn places(&self) -> Vec<(&'static str, std::path::PathBuf)> {
        self.mounts.iter().map(|(name, mp, _, _)| (*name, mp.clone())).collect()
    }
}

impl Drop for References {
    fn drop(&mut self) {
        for (name, _, mut unmounter, serving) in self.mounts.drain(..) {
            if let Err(e) = unmounter.unmount() {
                eprintln!("unmounting the reference mount {name}: {e}");
            }
            let _ = serving.join();
        }
    }
}

/// A directory of the run's own, outside the mount, given to the database's user.
fn user_dir(work: &Path, user: DbUser, name: &str) -> std::path::PathBuf {
    let d = work.join(name);
    std::fs::create_dir_all(&d).expect("directory");
    user.own(&d);
    d
}

/// `initdb`, then the server's start and `pgbench -i -s SCALE`: the
/// whole load's seconds and initdb's.
fn load(pg: &mut Postgres, scale: &str, what: &str) -> (f64, f64) {
    let t = Instant::now();
    pg.initdb();
    let initdb = t.elapsed().as_secs_f64();
    pg.start();
    pg.run("pgbench", &["-i", "-s", scale, "-q"]);
    let s = t.elapsed().as_secs_f64();
    say(format!("{what}: initdb and pgbench -i -s {scale} in {s:.1} s (initdb {initdb:.1} s)"));
    (s, initdb)
}

/// `--load-only`: the loads alone, local and mount alternately, each
/// round on fresh data directories; medians of the rounds.
fn loads_only(
    args: &Args,
    bin: &PgBin,
    user: DbUser,
    work: &Path,
    mnt: &Mount,
) -> serde_json::Map<String, serde_json::Value> {
    let scale = args.scale.to_string();
    let mut seconds: [Vec<f64>; 4] = Default::default();
    for r in 0..args.rounds {
        let local_data = user_dir(work, user, &format!("local-{r}")).join("pgdata");
        for (i, data) in [local_data, mnt.p(&format!("pgdata-{r}"))].into_iter().enumerate() {
            let what = if i == 0 { "local directory" } else { "mount" };
            let mut pg = Postgres::new(bin, user, data, work, &format!("load-{i}-{r}"));
            let (s, initdb) = load(&mut pg, &scale, &format!("round {r}: {what}"));
            pg.stop();
            seconds[i].push(s);
            seconds[2 + i].push(initdb);
        }
    }
    let m: Vec<f64> = seconds.iter().map(|v| median(v)).collect();
    let report = serde_json::json!({
        "load_s_local": m[0], "load_s_mount": m[1], "load_mount_over_local": m[1] / m[0],
        "initdb_s_local": m[2], "initdb_s_mount": m[3],
        "rounds_load_s_local": seconds[0], "rounds_load_s_mount": seconds[1],
    });
    match report {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

/// PostgreSQL's part: the loads, the alternating pgbench rounds, and the
/// CPU time of our processes per mount transaction.
fn postgres(
    args: &Args,
    bin: &PgBin,
    user: DbUser,
    work: &Path,
    mnt: &Mount,
    ours: &[(&str, u32)],
) -> serde_json::Map<String, serde_json::Value> {
    let dir = |name: &str| user_dir(work, user, name);
    let scale = args.scale.to_string();
    let mut local = Postgres::new(bin, user, dir("local").join("pgdata"), work, "local");
    let mut mounted = Postgres::new(bin, user, mnt.p("pgdata"), work, "mount");
    let load = |pg: &mut Postgres, what: &str| load(pg, &scale, what).0;
    let load_s_local = load(&mut local, "local directory");
    let load_s_mount = load(&mut mounted, "mount");
    // The replicated setup: a primary and its synchronous standby.
    let mut primary = Postgres::new(bin, user, dir("sync").join("pgdata"), work, "sync-primary");
    let load_s_pg_sync_primary = load(&mut primary, "PostgreSQL primary (before its standby)");
    let standby_data = dir("standby").join("pgdata");
    let port = primary.port.to_string();
    primary.run(
        "pg_basebackup",
        &[
            "-D",
            &standby_data.display().to_string(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ],
    );
    let mut standby = Postgres::new(bin, user, standby_data, work, "standby");
    standby.start();
    // Named synchronous only now: before, the load would wait for it.
    primary.query("alter system set synchronous_standby_names = '*'");
    primary.query("select pg_reload_conf()");
    wait_for("the standby to be synchronous", Duration::from_secs(60), || {
        primary.query("select count(*) from pg_stat_replication where sync_state = 'sync'") == "1"
    });
    say("PostgreSQL standby streaming, synchronous");

    let (clients, threads, seconds) = (args.clients.to_string(), "2", args.seconds.to_string());
    let bench = |pg: &Postgres, options: &[(&str, &str)]| {
        pgbench_with(pg, options, &["-c", &clients, "-j", threads, "-T", &seconds, "--no-vacuum"])
    };
    let names = ["local", "pg_sync", "pg_remote_apply", "mount"];
    let mut rounds: Vec<Rounds> = names.iter().map(|_| Rounds::default()).collect();
    let mut cpu_ticks = vec![0u64; ours.len()];
    let pids: Vec<u32> = ours.iter().map(|(_, p)| *p).collect();
    for round in 0..args.rounds {
        for (i, name) in names.iter().enumerate() {
            let before = cpu::Sample::now(&pids);
            let report = match *name {
                "local" => bench(&local, &[]),
                "pg_sync" => bench(&primary, &[("PGOPTIONS", "-c synchronous_commit=on")]),
                "pg_remote_apply" => bench(&primary, &[("PGOPTIONS", "-c synchronous_commit=remote_apply")]),
                _ => bench(&mounted, &[]),
            };
            let (_, spent) = cpu::Sample::now(&pids).since(&before);
            let (tps, committed) = (report.tps, report.committed);
            if *name == "mount" {
                for (t, s) in cpu_ticks.iter_mut().zip(&spent) {
                    *t += s;
                }
            }
            rounds[i].tps.push(tps);
            rounds[i].committed += committed;
            say(format!("round {round}: {name}: {tps:.1} tps ({committed} transactions)"));
        }
    }
    let tick_us = 1e6 / cpu::ticks_per_second();
    let mount_tx = rounds[3].committed.max(1) as f64;
    let cpu_per_tx: serde_json::Map<String, serde_json::Value> = ours
        .iter()
        .zip(&cpu_ticks)
        .map(|((name, _), t)| (name.to_string(), serde_json::json!((*t as f64 * tick_us / mount_tx).round())))
        .collect();
    for pg in [&mut local, &mut mounted, &mut standby, &mut primary] {
        pg.stop();
    }

    let med = |i: usize| median(&rounds[i].tps);
    let report = serde_json::json!({
        "local_tps": med(0), "pg_sync_tps": med(1), "pg_remote_apply_tps": med(2), "mount_tps": med(3),
        "mount_over_local": med(3) / med(0), "mount_over_pg_sync": med(3) / med(1),
        "mount_over_pg_remote_apply": med(3) / med(2),
        "load_s_local": load_s_local, "load_s_mount": load_s_mount, "load_s_pg_sync_primary": load_s_pg_sync_primary,
        "load_mount_over_local": load_s_mount / load_s_local,
        "cpu_us_per_mount_tx": cpu_per_tx,
        "rounds_tps": names.iter().zip(&rounds).map(|(n, r)| (n.to_string(), serde_json::json!(r.tps))).collect::<serde_json::Map<_, _>>(),
    });
    match report {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Small SQLite transactions: `n` one-row inserts, each its own durable
/// transaction, through the `sqlite3` program; transactions per second.
fn sqlite_tps(db: &Path, mode: &str, n: u32) -> f64 {
    let journal = if mode == "wal" { "WAL" } else { "DELETE" };
    let mut script = format!(
        "PRAGMA journal_mode={journal};\nPRAGMA synchronous=FULL;\n\
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);\n"
    );
    for _ in 0..n {
        script.push_str("INSERT INTO t(v) VALUES (randomblob(100));\n");
    }
    let t = Instant::now();
    common::sqlite::run(db, &script);
    let s = t.elapsed().as_secs_f64();
    f64::from(n) / s
}
