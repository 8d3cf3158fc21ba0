//! `filerep demo`: the whole story on one machine, with the real commands.
//! A cluster of 2 hosts (loopback addresses) with 2 segments each, no
//! mirrors; a workload on every content; mirrors added under load; a
//! mirror killed and recovered; a primary killed (failover) and recovered;
//! the roles rebalanced; every pair compared; `filerep state -m` at each step.

use filerep::cluster::client::Client;
use filerep::core::pair::{PairMode, Role};
use filerep::durable::catalog::Catalog;
use filerep_tools::cluster::ClusterDir;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOSTS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
const OFFSET: u16 = 500;

/// Run one `filerep` command as an operator would, showing it and its output.
fn run(exe: &Path, args: &[&str]) -> Result<String, String> {
    outln!("\n$ filerep {}", args.join(" "));
    let out = Command::new(exe)
        .args(args)
        .env("FILEREP_LOG", "error")
        .output()
        .map_err(|e| format!("running filerep {}: {e}", args[0]))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in text.lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
        outln!("  {line}");
    }
    if !out.status.success() {
        return Err(format!("filerep {} failed ({})", args.join(" "), out.status));
    }
    Ok(text)
}

/// A base port whose whole layout (primaries, mirrors, replication) is free on both hosts.
fn pick_base(seed: u64) -> Result<u16, String> {
    for i in 0..50u64 {
        let base = 20000 + ((seed.wrapping_add(i * 7919)) % 1500) as u16 * 20;
        let ports: Vec<u16> = (0..2).flat_map(|j| (0..4).map(move |k| base + j + k * OFFSET)).collect();
        if HOSTS.iter().all(|h| ports.iter().all(|p| TcpListener::bind((*h, *p)).is_ok()))
            && TcpListener::bind(("127.0.0.1", base - 1)).is_ok()
        {
            return Ok(base);
        }
    }
    Err("no free ports for the demo cluster on 127.0.0.2/127.0.0.3".into())
}

fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50)); // polling the arbiter's catalog
    }
    outln!("  ... {what} ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

/// The workload: one writer per content, writing blocks of a few files
/// through whichever segment acts as its primary, reconnecting when told
/// to retry on the new primary.
struct Workload {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Workload {
    fn start(dir: &ClusterDir, contents: &[u32], block_size: u32) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let retried = Arc::new(AtomicU64::new(0));
        let threads = contents
            .iter()
            .map(|&content| {
                let (dir, stop, acked, retried) = (dir.clone(), stop.clone(), acked.clone(), retried.clone());
                std::thread::spawn(move || writer(&dir, content, block_size, &stop, &acked, &retried))
            })
            .collect();
        Workload { stop, acked, retried, threads }
    }

    fn finish(self) -> Result<(u64, u64), String> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().map_err(|_| "a writer panicked".to_string())??;
        }
        Ok((self.acked.load(Ordering::SeqCst), self.retried.load(Ordering::SeqCst)))
    }
}

fn acting_primary_socket(dir: &ClusterDir, content: u32) -> Option<PathBuf> {
    let cat = Catalog::load(&dir.catalog()).ok()?;
    let dbid = match cat.pair(content) {
        Some(p) => p.pair.acting_primary().dbid,
        None => cat.unmirrored.iter().find(|s| s.content == content)?.address.dbid,
    };
    Some(dir.segment_dir(dbid).join("segment.sock"))
}

fn writer(
    dir: &ClusterDir,
    content: u32,
    block_size: u32,
    stop: &AtomicBool,
    acked: &AtomicU64,
    retried: &AtomicU64,
) -> Result<(), String> {
    let mut client: Option<Client> = None;
    let mut i = 0u64;
    let mut created = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Some(cl) = client.as_mut() else {
            client = acting_primary_socket(dir, content).and_then(|s| Client::connect(&s).ok());
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(50)); // the new primary starting
            }
            continue;
        };
        let file = format!("rel{}", i % 4);
        let r = if created < 4 {
            match cl.create(0, &file) {
                Err(e) if e.to_string().contains("exists") => Ok(()),
                r => r,
            }
        } else {
            let b = (i / 4) % 256;
            let data = vec![(i % 251) as u8; block_size as usize];
            match cl.nblocks(0, &file) {
                Ok(n) if b >= n => cl.extend(0, &file, n, &data),
                Ok(_) => cl.write_block(0, &file, b, &data),
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(()) => {
                if created < 4 {
                    created += 1;
                } else {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            Err(_) => {
                // NotPrimary ("retry on the new primary"), or the segment died: find the acting one.
                retried.fetch_add(1, Ordering::Relaxed);
                client = None;
            }
        }
    }
    Ok(())
}

fn kill(dir: &ClusterDir, dbid: u32) -> Result<(), String> {
    let pid: i32 = std::fs::read_to_string(dir.pid(&format!("dbid{dbid}")))
        .map_err(|e| format!("pid of dbid {dbid}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("pid of dbid {dbid}: {e}"))?;
    outln!("\n$ kill -9 {pid}   # segment dbid {dbid}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("kill {pid}: {e}"))
}

pub fn run_story(block_size: u32, seed: u64, keep: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let tmp = tempfile::Builder::new().prefix("filerep-demo").tempdir()?;
    let root = tmp.path().to_path_buf();
    let cdir = root.join("cluster");
    let cd = cdir.display().to_string();
    let dir = ClusterDir::new(&cdir);
    let base = pick_base(seed)?;
    outln!("filerep demo: a mirrored cluster on this machine, seed {seed}; data under {}", root.display());
    outln!("hosts {} (loopback addresses), 2 segments each, {block_size} B blocks", HOSTS.join(", "));
    let fs0 = format!("pg_system={}", root.join("primary").display());
    let fs1 = format!("fs_fast={}", root.join("fast").display());
    let bs = block_size.to_string();
    let bp = base.to_string();
    run(
        &exe,
        &[
            "init",
            "--cluster-dir",
            &cd,
            "--hosts",
            &HOSTS.join(","),
            "--segments-per-host",
            "2",
            "--base-port",
            &bp,
            "--data-dir",
            &fs0,
            "--data-dir",
            &fs1,
            "--block-size",
            &bs,
            "--allow-one-machine",
        ],
    )?;
    // Stop whatever runs, however the story ends.
    struct Stop(PathBuf, PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new(&self.0).args(["stop", "--cluster-dir"]).arg(&self.1).output();
        }
    }
    let _stop = Stop(exe.clone(), cdir.clone());
    run(&exe, &["start", "--cluster-dir", &cd])?;
    run(&exe, &["state", "--cluster-dir", &cd])?;
    let catalog = || Catalog::load(&dir.catalog()).map_err(|e| e.to_string());
    let contents: Vec<u32> = catalog()?.unmirrored.iter().map(|s| s.content).collect();

    outln!("\n== a workload on every content, running through everything that follows");
    let work = Workload::start(&dir, &contents, block_size);
    wait("the writers to get going", Duration::from_secs(20), || work.acked.load(Ordering::Relaxed) > 200)?;

    outln!("\n== add mirrors (group placement, port offset {OFFSET}) while the workload runs");
    let m0 = format!("pg_system={}", root.join("mirror").display());
    let m1 = format!("fs_fast={}", root.join("mirror_fast").display());
    let off = OFFSET.to_string();
    let cfg = root.join("mirrors.cfg").display().to_string();
    run(
        &exe,
        &[
            "addmirrors",
            "--cluster-dir",
            &cd,
            "-p",
            &off,
            "--mirror-data-dir",
            &m0,
            "--mirror-data-dir",
            &m1,
            "-o",
            &cfg,
        ],
    )?;
    outln!("\n$ cat {cfg}");
    for line in std::fs::read_to_string(&cfg)?.lines() {
        outln!("  {line}");
    }
    run(&exe, &["addmirrors", "--cluster-dir", &cd, "-i", &cfg])?;
    run(&exe, &["state", "--cluster-dir", &cd, "-m"])?;

    outln!("\n== a mirror dies: its primary goes on alone, tracking changes");
    let cat = catalog()?;
    let pair0 = cat.pair(contents[0]).ok_or("content 0 has no pair")?;
    let mirror0 = pair0.pair.acting_mirror().dbid;
    kill(&dir, mirror0)?;
    wait("change tracking", Duration::from_secs(30), || {
        catalog().is_ok_and(|c| c.pair(contents[0]).is_some_and(|p| p.pair.mode == PairMode::ChangeTracking))
    })?;
    run(&exe, &["state", "--cluster-dir", &cd, "-m"])?;
    outln!("\n== the host is repaired: start the segment again and recover (incremental)");
    run(&exe, &["start", "--cluster-dir", &cd])?;
    run(&exe, &["recover", "--cluster-dir", &cd])?;
    run(&exe, &["state", "--cluster-dir", &cd, "-m"])?;

    outln!("\n== a primary dies: its mirror is promoted and serves, tracking changes");
    let pair1 = catalog()?.pair(contents[1]).ok_or("content 1 has no pair")?.clone();
    let primary1 = pair1.pair.acting_primary().dbid;
    kill(&dir, primary1)?;
    wait("the mirror's promotion", Duration::from_secs(30), || {
        catalog().is_ok_and(|c| {
            c.pair(contents[1])
                .is_some_and(|p| p.pair.generation > pair1.pair.generation && p.pair.acting_primary().dbid != primary1)
        })
    })?;
    let before = work.acked.load(Ordering::Relaxed);
    wait("writes on the promoted mirror", Duration::from_secs(30), || {
        work.acked.load(Ordering::Relaxed) > before + 100
    })?;
    run(&exe, &["state", "--cluster-dir", &cd, "-m"])?;
    outln!("\n== the old primary returns as a mirror; recover makes it identical");
    run(&exe, &["start", "--cluster-dir", &cd])?;
    run(&exe, &["recover", "--cluster-dir", &cd])?;
    run(&exe, &["state", "--cluster-dir", &cd, "-m"])?;
    outln!("\n== rebalance: every segment back to its preferred role (an orderly switch)");
    run(&exe, &["recover", "--cluster-dir", &cd, "-r"])?;
    wait("the preferred roles", Duration::from_secs(30), || {
        catalog().is_ok_and(|c| {
            c.pairs.iter().all(|p| {
                p.pair.mode == PairMode::Synchronized
                    && p.pair.segments.iter().all(|s| s.role == s.preferred_role && s.up)
            })
        })
    })?;
    run(&exe, &["state", "--cluster-dir", &cd, "-m"])?;

    outln!("\n== verify every pair online, block by block, while the workload still runs");
    run(&exe, &["verify", "--cluster-dir", &cd])?;
    let (acked, retried) = work.finish()?;
    outln!("\n== the workload: {acked} block writes acknowledged; {retried} calls retried on the new primary");
    run(&exe, &["state", "--cluster-dir", &cd, "-s"])?;
    let cat = catalog()?;
    // Durable on both sides, then stopped in order, then compared.
    for p in &cat.pairs {
        let primary = p.pair.acting_primary().dbid;
        debug_assert_eq!(p.pair.segments.iter().find(|s| s.dbid == primary).map(|s| s.role), Some(Role::Primary));
        if let Ok(mut cl) = Client::connect(&dir.segment_dir(primary).join("segment.sock")) {
            for f in 0..4 {
                let _ = cl.sync(0, &format!("rel{f}"));
            }
        }
    }
    run(&exe, &["stop", "--cluster-dir", &cd])?;
    outln!("\n== and once stopped, every pair's directories compared offline, file by file");
    let mut differences = 0;
    for p in &cat.pairs {
        let dirs = |i: usize| -> Vec<(String, PathBuf)> {
            p.addresses[i]
                .filespaces
                .iter()
                .filter_map(|f| f.split_once('=').map(|(n, d)| (n.to_string(), PathBuf::from(d))))
                .collect()
        };
        let (a, b) = (dirs(0), dirs(1));
        let refs: Vec<(String, &Path, &Path)> =
            a.iter().zip(&b).map(|((n, x), (_, y))| (n.clone(), x.as_path(), y.as_path())).collect();
        let cmp = filerep::verify::compare(&refs)?;
        outln!(
            "  content {}: {} files, {} bytes compared: {}",
            p.pair.content,
            cmp.files,
            cmp.bytes,
            if cmp.identical() { "identical".to_string() } else { format!("{} DIFFERENCES", cmp.differences) }
        );
        differences += cmp.differences;
    }
    if keep {
        outln!("kept {}", tmp.keep().display());
    }
    Ok(if differences == 0 && acked > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
