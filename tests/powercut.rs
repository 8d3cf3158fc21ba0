//! Power cuts of real processes. An arbiter and two `filerep segment`
//! processes on loopback, every file they write on a forgetfs file system
//! (each segment host's data directory and its state directory: change-log,
//! activity log, mirror state; the arbiter host's catalog). A host's power
//! cut is SIGKILL of its processes (the arbiter host's include `filerep
//! recover`) and then the forgetfs cut of its file systems: every write,
//! create, rename, unlink and truncate that no fsync made durable is gone,
//! and half the cuts tear the last write of each file at a 512-byte sector.
//! The host then comes back in another boot (its segment reads its boot id
//! from `FILEREP_BOOT_ID_FILE`), so a mirror cut while it streamed knows
//! that what it had only applied may be gone, and refuses promotion.
//!
//! Each round, seeded: writers that sync (`powercut/writer.rs`) run on the
//! acting primary; the cluster is brought into a phase (synchronized,
//! change tracking, an incremental or a full resync, a failover, the return
//! of an old primary) and power is cut to the primary's host, the mirror's,
//! the arbiter's, or two of them, at a random moment. Then what was cut is
//! restarted, `filerep recover` runs until the pair is synchronized, and
//! the round checks: no process refused to start (or stopped serving)
//! because of its own files, every write whose sync returned is on the
//! acting primary, and `filerep verify` finds both copies identical.
//!
//! `FILEREP_POWERCUT_ROUNDS` (default 21) and `FILEREP_POWERCUT_SEED` (the
//! first round's seed, default 1; round r uses seed + r) choose the rounds;
//! the sync level is the seed's (seed % 3: applied, durable, async), and
//! rounds of one level share a cluster. A failure prints its seed and the
//! command that replays that round alone. `FILEREP_POWERCUT_PLANT=NAME`
//! passes `FILEREP_PLANTED_BUG=NAME` to every filerep process and turns the
//! test around: it passes when a round fails (the bug is caught) and says
//! after how many rounds. Where FUSE cannot be mounted the test is skipped
//! with the reason, unless `FILEREP_REQUIRE_FUSE=1` (CI), which fails it.

#[path = "powercut/aim.rs"]
mod aim;
#[path = "powercut/cluster.rs"]
mod cluster;
mod common;
#[path = "powercut/plan.rs"]
mod plan;
#[path = "powercut/writer.rs"]
mod writer;

use cluster::*;
use filerep::cluster::client::{Client, ErrorClass};
use filerep::cluster::segment::Acting;
use filerep::core::pair::PairMode;
use plan::{Host, Phase, Plan};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &[u8] = b"power cut test cluster key material";
const FS: [&str; 2] = ["pg_system", "fs_fast"];
const LEVELS: [&str; 3] = ["applied", "durable", "async:64"];
/// Each level's cluster has file systems whose fsyncs take this long, in
/// microseconds (forgetfs --sync-latency-us), on the host of dbid 2 (and the
/// arbiter's) and on the host of dbid 3: a device's flush, during which a
/// power cut loses what it syncs, so steps that must wait for a sync are
/// seen when they do not. In one cluster both devices are slow and dbid
/// 3's much slower, as when one disk is busy or older: a mirror's
/// checkpoint there takes long enough (20 ms a file) for its primary to
/// act on an acknowledgement that came too early.
const SYNC_LATENCY_US: [[u64; 2]; 3] = [[2000, 2000], [0, 0], [5000, 20_000]];
const WRITERS: u32 = 2;
/// Activity-log entries a streaming primary holds before retiring (the
/// segment's `activity_limit`): small, so the writers' few files make it
/// retire all through a round (rule 5's retiring is then under the cuts
/// too; with the default 1024 it would wait for a resync's end).
const ACTIVITY_LIMIT: usize = 8;
/// How long the cluster has to settle after a cut (restarts, recover).
const SETTLE: Duration = Duration::from_secs(90);

/// A progress line, in one write (the processes' logs go to files).
fn say(msg: impl AsRef<str>) {
    let _ = std::io::stderr().write_all(format!("[powercut] {}\n", msg.as_ref()).as_bytes());
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

// ---- a round ------------------------------------------------------------------

/// Bring the cluster into the round's phase, with writers running; the
/// writers that run when the cut comes.
fn prepare(c: &mut Cluster, plan: &Plan, stop: &Arc<AtomicBool>) -> Result<Vec<Running>, String> {
    let mut running = c.start_writers(plan.workload, stop)?;
    let (p, m) = c.roles().ok_or("no catalog")?;
    let tracking = |c: &Cluster| c.status(p).is_some_and(|s| s.mode == 'c');
    match plan.phase {
        Phase::Synchronized | Phase::Failover => {}
        Phase::ChangeTracking => {
            kill(&mut c.seg_mut(m).child);
            c.wait("change tracking", Duration::from_secs(20), tracking)?;
        }
        Phase::IncrementalResync | Phase::FullResync => {
            kill(&mut c.seg_mut(m).child);
            c.wait("change tracking", Duration::from_secs(20), tracking)?;
            std::thread::sleep(Duration::from_millis(300)); // writes to resync
            c.start_seg(m)?;
            c.wait("the mirror to serve", Duration::from_secs(20), |c| {
                c.status(m).is_some_and(|s| s.acting == Acting::Mirror)
            })?;
            c.start_tool(if plan.phase == Phase::FullResync { &["-F"] } else { &[] });
        }
        Phase::Return => {
            // The writers follow the promotion onto the new primary.
            let ends = c.stop_writers(running, stop);
            stop.store(false, Ordering::SeqCst);
            kill(&mut c.seg_mut(p).child);
            c.wait("the promotion", Duration::from_secs(20), |c| {
                c.status(m).is_some_and(|s| s.acting == Acting::Primary && s.mode == 'c')
            })?;
            // A call that failed at the kill may have landed or not: the model keeps both.
            drop(ends);
            running = c.start_writers(plan.workload ^ 1, stop)?;
            std::thread::sleep(Duration::from_millis(200));
            c.start_seg(p)?;
            c.wait("the old primary to serve as mirror", Duration::from_secs(20), |c| {
                c.status(p).is_some_and(|s| s.acting == Acting::Mirror)
            })?;
            c.start_tool(&[]);
        }
    }
    Ok(running)
}

/// Where the round's cut landed: the acting primary's mode (`s`, `c`, `r`,
/// `d` deciding, `f` failed), or for a failover whether the promotion was
/// still under way.
fn landed(c: &Cluster, plan: &Plan, primary: u32, mirror: u32) -> String {
    if plan.phase == Phase::Failover {
        let promoted = c.status(mirror).is_some_and(|s| s.acting == Acting::Primary && s.mode == 'c');
        return if promoted { "after the promotion".into() } else { "during the promotion".into() };
    }
    c.status(primary).map(|s| format!("mode {}", s.mode)).unwrap_or_else(|| "no answer".into())
}

/// What the round looked like when the power went (for the summary).
fn moment(c: &Cluster, primary: u32) -> String {
    let s = c.status(primary);
    match s {
        Some(s) => format!(
            "primary {primary} mode {}{}",
            s.mode,
            s.resync
                .filter(|_| s.mode == 'r')
                .map(|r| format!(" ({} of {} blocks shipped)", r.blocks_done, r.blocks_total))
                .unwrap_or_default()
        ),
        None => format!("primary {primary} not answering"),
    }
}

/// One round: its story, and where its cut landed.
fn round(c: &mut Cluster, plan: &Plan) -> Result<(String, String), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let running = prepare(c, plan, &stop)?;
    let (p, m) = c.roles().ok_or("no catalog")?;
    let (seen, at, dropped) = if plan.phase == Phase::Failover {
        let first = c.cut(&[Host::Seg(p)], plan.tear, plan.seed)?;
        std::thread::sleep(Duration::from_millis(plan.delay_ms));
        let seen = format!("mirror {m}: {:?}", c.status(m).map(|s| (s.acting, s.mode)));
        let at = landed(c, plan, p, m);
        let second = c.cut(&plan.victims.hosts(p, m), plan.tear, plan.seed ^ 1)?;
        (seen, at, format!("{first}; {second}"))
    } else {
        std::thread::sleep(Duration::from_millis(plan.delay_ms));
        // Aimed: cut at once, and look after (the primary, not cut, tells).
        let (seen, at, dropped) = match aim::wait(c, plan, p) {
            Some(aimed) => {
                let dropped = c.cut(&plan.victims.hosts(p, m), plan.tear, plan.seed)?;
                (moment(c, p) + &aimed, landed(c, plan, p, m), dropped)
            }
            None => {
                let (seen, at) = (moment(c, p), landed(c, plan, p, m));
                (seen, at, c.cut(&plan.victims.hosts(p, m), plan.tear, plan.seed)?)
            }
        };
        (seen, at, dropped)
    };
    let ends = c.stop_writers(running, &stop);
    let runs = restart_and_check(c, &dropped)?;
    Ok((format!("at the cut: {seen}; writers: {}; {runs} recover runs; {dropped}", ends.join(", ")), at))
}

/// After a cut: every process back, `filerep recover` until the pair is
/// synchronized, then every promise kept on the acting primary and the
/// copies identical; the writers' models start again from what is there.
/// The recover runs it took.
fn restart_and_check(c: &mut Cluster, dropped: &str) -> Result<usize, String> {
    c.restart()?;
    let runs = c.settle(SETTLE)?;
    let (p, _) = c.roles().ok_or("no catalog after settling")?;
    let roots = c.roots(p);
    let roots: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
    let bad: Vec<String> = c.writers.iter().flat_map(|w| w.check(&roots)).collect();
    if !bad.is_empty() {
        return Err(format!(
            "acknowledged syncs lost on the acting primary {p}:\n  {}\nwhat the cut dropped: {dropped}",
            bad.join("\n  ")
        ));
    }
    let (code, out) = c.tool("verify", &[]);
    if code != 0 {
        return Err(format!("filerep verify does not find the copies identical (exit {code}):\n{out}"));
    }
    let mut cl = c.client()?;
    for w in &mut c.writers {
        w.rebase(&mut cl, &roots)?;
    }
    Ok(runs)
}

/// Rule 8 on real processes: the acting primary's data file system fails
/// one fdatasync with EIO and lets that file's dirty pages go, as Linux
/// does. The primary must fault (refuse every change: nothing it answers
/// after reports anything durable) and say so: the arbiter promotes its
/// mirror, which holds every acknowledged write, and the content stays in
/// service. Then the old primary's host loses power: after the restart and
/// `filerep recover`, every promise the writers were given is on the
/// acting primary and the copies are identical. A primary that retried the
/// fsync, or went on, would have promised pages the cut takes.
#[test]
fn a_failed_fdatasync_faults_the_primary_and_breaks_no_promise() {
    if !fuse_here("a_failed_fdatasync_faults_the_primary_and_breaks_no_promise") {
        return;
    }
    let mut c = Cluster::start(LEVELS[0], SYNC_LATENCY_US[0], planted_env());
    for round in 1..=2u64 {
        let r = (|| -> Result<String, String> {
            let stop = Arc::new(AtomicBool::new(false));
            let running = c.start_writers(0xf5_0000 + round, &stop)?;
            let (p, m) = c.roles().ok_or("no catalog")?;
            // Into a stream of writes and syncs.
            std::thread::sleep(Duration::from_millis(300));
            fail_one_fdatasync(&c, p)?;
            // Once its engine has heard of the failure (forgetfs counts it
            // as it answers; the segment notes the fault durably first):
            c.wait("the primary to fault", Duration::from_secs(30), |c| {
                c.status(p).is_some_and(|s| s.faulted) || c.roles().is_some_and(|(now, _)| now != p)
            })?;
            // Faulted: it takes no more changes (asked directly, before or
            // after the arbiter moved the role away from it).
            let refused = match Client::connect(&c.seg(p).cfg.socket)
                .map_err(|e| format!("client of segment {p}: {e}"))?
                .create(0, &format!("after-the-failed-fsync-{round}"))
            {
                Ok(()) => return Err(format!("primary {p} took a change after its fdatasync failed")),
                Err(e) if e.class() == Some(ErrorClass::Faulted) => e.to_string(),
                Err(e) if c.roles().is_some_and(|(now, _)| now != p) => format!("no longer primary: {e}"),
                Err(e) => return Err(format!("primary {p} refused a change, but not as faulted: {e}")),
            };
            c.wait("the arbiter to promote the mirror of the faulted primary", Duration::from_secs(30), |c| {
                c.roles().is_some_and(|(now, _)| now == m)
            })?;
            let ends = c.stop_writers(running, &stop);
            let dropped = c.cut(&[Host::Seg(p)], false, round)?;
            let runs = restart_and_check(&mut c, &dropped)?;
            Ok(format!(
                "primary {p} refused a change ({refused}); mirror {m} promoted; writers: {}; {runs} recover runs; {dropped}",
                ends.join(", ")
            ))
        })();
        conclude(&mut c, &format!("failed fdatasync round {round}"), r);
    }
}

/// Rule 8 across a process restart: the primary serves alone (its mirror's
/// process killed), one fdatasync of its data file system fails, so the
/// content is down (a double fault). Its process is then restarted on the
/// same host, with no power cut: the pages the failed fsync let go are
/// still readable there and absent from its disk. `filerep recover` serves
/// the content from it again and resyncs the mirror; then its host loses
/// power. The copies must still be identical after the restart and
/// recover: a segment that served those pages without writing them back
/// first (`FILEREP_POWERCUT_PLANT=fault-note-ignored`) has shipped data to
/// the mirror that its own disk lacks, and the cut shows it.
#[test]
fn a_faulted_primary_restarted_without_a_power_cut_serves_only_what_its_disk_holds() {
    story("a_faulted_primary_restarted_without_a_power_cut_serves_only_what_its_disk_holds", |c| {
        let stop = Arc::new(AtomicBool::new(false));
        let running = c.start_writers(0xf6_0001, &stop)?;
        let (p, m) = c.roles().ok_or("no catalog")?;
        kill(&mut c.seg_mut(m).child);
        c.wait("change tracking", Duration::from_secs(20), |c| c.status(p).is_some_and(|s| s.mode == 'c'))?;
        // Writes the mirror lacks, then a failed fdatasync among them.
        std::thread::sleep(Duration::from_millis(300));
        fail_one_fdatasync(c, p)?;
        c.wait("the content to be down (a faulted primary, its mirror down)", Duration::from_secs(30), |c| {
            c.catalog().is_some_and(|cat| cat.pairs[0].pair.down)
        })?;
        let ends = c.stop_writers(running, &stop);
        // The operator restarts the faulted segment: its host stays up.
        kill(&mut c.seg_mut(p).child);
        c.restart()?;
        let runs = c.settle(SETTLE)?;
        let (code, out) = c.tool("verify", &[]);
        if code != 0 {
            return Err(format!("filerep verify after the restore (exit {code}):\n{out}"));
        }
        let (now, _) = c.roles().ok_or("no catalog after settling")?;
        let dropped = c.cut(&[Host::Seg(now)], false, 0xf6)?;
        let after = restart_and_check(c, &dropped)?;
        Ok(format!(
            "writers: {}; {runs} recover runs to restore; then segment {now}'s host cut, {after} recover runs; {dropped}",
            ends.join(", ")
        ))
    });
}

/// Rule 8 on the mirror: its data file system fails one fdatasync under
/// the writers, so it faults and refuses its primary (the pair leaves
/// sync). Its files are in doubt, so `filerep recover` is refused and names
/// `-F`; `filerep recover -F` has it forget its fault and rebuilds it with
/// a full resync; `verify` finds the copies identical. Then its host is
/// cut: after the restart and recover, still identical, every promise kept.
#[test]
fn a_faulted_mirror_is_rebuilt_by_a_full_resync() {
    story("a_faulted_mirror_is_rebuilt_by_a_full_resync", |c| {
        let stop = Arc::new(AtomicBool::new(false));
        let running = c.start_writers(0xf7_0001, &stop)?;
        let (p, m) = c.roles().ok_or("no catalog")?;
        std::thread::sleep(Duration::from_millis(300));
        fail_one_fdatasync(c, m)?;
        c.wait("the mirror to say it faulted", Duration::from_secs(30), |c| c.status(m).is_some_and(|s| s.faulted))?;
        c.wait("the pair to leave sync", Duration::from_secs(30), |c| {
            c.catalog().is_some_and(|cat| cat.pairs[0].pair.mode != PairMode::Synchronized)
        })?;
        let ends = c.stop_writers(running, &stop);
        let (code, out) = c.tool("recover", &[]);
        if code == 0 || !out.contains("recover -F") {
            return Err(format!("an incremental recover of a faulted mirror (exit {code}) did not name -F:\n{out}"));
        }
        let (code, out) = c.tool("recover", &["-F"]);
        if code != 0 {
            return Err(format!("filerep recover -F (exit {code}):\n{out}"));
        }
        c.wait("the rebuilt pair to stream", Duration::from_secs(60), |c| {
            c.catalog().is_some_and(|cat| cat.pairs[0].pair.mode == PairMode::Synchronized)
                && c.status(p).is_some_and(|s| s.mode == 's')
                && c.status(m).is_some_and(|s| !s.faulted)
        })?;
        let (code, out) = c.tool("verify", &[]);
        if code != 0 {
            return Err(format!("filerep verify after the rebuild (exit {code}):\n{out}"));
        }
        let dropped = c.cut(&[Host::Seg(m)], false, 0xf7)?;
        let runs = restart_and_check(c, &dropped)?;
        Ok(format!(
            "writers: {}; mirror {m} rebuilt, then its host cut, {runs} recover runs; {dropped}",
            ends.join(", ")
        ))
    });
}

/// The next fdatasync of a changed file on segment `p`'s data file system
/// fails (forgetfs rule 14); returns once one did.
fn fail_one_fdatasync(c: &Cluster, p: u32) -> Result<(), String> {
    let before = c.seg(p).data.status()?.failed_syncs;
    c.seg(p).data.fail_next_sync()?;
    c.wait("the primary's fdatasync to fail", Duration::from_secs(30), |c| {
        c.seg(p).data.status().is_ok_and(|r| r.failed_syncs > before)
    })
}

/// A rule-8 test told on a cluster of its own at the `applied` level
/// (skipped, or failed in CI, where FUSE cannot be mounted).
fn story(name: &str, tell: impl FnOnce(&mut Cluster) -> Result<String, String>) {
    if !fuse_here(name) {
        return;
    }
    let mut c = Cluster::start(LEVELS[0], SYNC_LATENCY_US[0], planted_env());
    let r = tell(&mut c);
    conclude(&mut c, name, r);
}

/// Say how a rule-8 test's story went, or fail it keeping the logs.
fn conclude(c: &mut Cluster, what: &str, r: Result<String, String>) {
    match r {
        Ok(story) => say(format!("{what}: ok; {story}")),
        Err(e) => {
            let kept = std::mem::replace(&mut c.dir, tempfile::tempdir().unwrap()).keep();
            panic!("{what}: {e}\nlogs kept under {}", kept.display());
        }
    }
}

/// The defect `FILEREP_POWERCUT_PLANT` names, planted in every process a
/// rule-8 test starts (to see the test fail with it).
fn planted_env() -> Vec<(String, String)> {
    let plant = std::env::var("FILEREP_POWERCUT_PLANT").ok().filter(|p| !p.is_empty());
    plant.map(|p| ("FILEREP_PLANTED_BUG".to_string(), p)).into_iter().collect()
}

// ---- the test -------------------------------------------------------------------

/// Whether FUSE can be mounted here. Where it cannot, test `name` is
/// skipped with the reason, unless `FILEREP_REQUIRE_FUSE=1` (CI), which
/// makes that a failure.
fn fuse_here(name: &str) -> bool {
    let Some(why) = forgetfs::fuse_unavailable() else { return true };
    if std::env::var_os("FILEREP_REQUIRE_FUSE").is_some_and(|v| v == "1") {
        panic!("{name}: FILEREP_REQUIRE_FUSE=1 but {why}");
    }
    say(format!("SKIPPED {name}: {why}"));
    false
}

#[test]
fn power_cuts_of_real_processes() {
    if !fuse_here("power_cuts_of_real_processes") {
        return;
    }
    let rounds = env_u64("FILEREP_POWERCUT_ROUNDS", 21);
    let first = env_u64("FILEREP_POWERCUT_SEED", 1);
    let env = planted_env();
    let plant = env.first().map(|(_, p)| p.clone());
    let started = Instant::now();
    say(format!(
        "{rounds} rounds, seeds {first}..{}{}",
        first + rounds,
        plant.as_ref().map(|p| format!(", planted bug {p}")).unwrap_or_default()
    ));
    let mut done = 0u64;
    let (mut calls, mut syncs) = (0u64, 0u64);
    let mut landings: std::collections::BTreeMap<(String, String), u64> = Default::default();
    // Rounds of one sync level share a cluster.
    for level in 0..3u64 {
        let seeds: Vec<u64> = (first..first + rounds).filter(|s| s % 3 == level).collect();
        if seeds.is_empty() {
            continue;
        }
        let t = Instant::now();
        let (name, latency) = (LEVELS[level as usize], SYNC_LATENCY_US[level as usize]);
        let mut c = Cluster::start(name, latency, env.clone());
        say(format!(
            "cluster at sync level {name}, fsyncs taking {} µs on dbid 2's host and {} µs on dbid 3's, ready in {:?}",
            latency[0],
            latency[1],
            t.elapsed()
        ));
        for seed in seeds {
            let plan = Plan::new(seed);
            let t = Instant::now();
            match round(&mut c, &plan) {
                Ok((story, at)) => {
                    done += 1;
                    *landings.entry((format!("{:?}", plan.phase), at)).or_insert(0) += 1;
                    say(format!("round {done}/{rounds} {} ({:?}): ok; {story}", plan.describe(), t.elapsed()));
                }
                Err(e) => {
                    let replay = format!(
                        "FILEREP_POWERCUT_SEED={seed} FILEREP_POWERCUT_ROUNDS=1{} cargo test --release --test powercut -- --nocapture",
                        plant.as_ref().map(|p| format!(" FILEREP_POWERCUT_PLANT={p}")).unwrap_or_default()
                    );
                    let logs = format!(
                        "logs under {} (segment.log, arbiter.log, forgetfs.log per file system)",
                        c.dir.path().display()
                    );
                    if let Some(p) = &plant {
                        say(format!(
                            "planted bug {p} caught in round {} of {rounds} ({}): {e}",
                            done + 1,
                            plan.describe()
                        ));
                        return;
                    }
                    // Keep the directory for a look.
                    let kept = std::mem::replace(&mut c.dir, tempfile::tempdir().unwrap()).keep();
                    panic!(
                        "round {} {} failed: {e}\nreplay: {replay}\n{logs} (kept: {})",
                        done + 1,
                        plan.describe(),
                        kept.display()
                    );
                }
            }
        }
        if std::env::var_os("FILEREP_POWERCUT_KEEP").is_some() {
            let kept = std::mem::replace(&mut c.dir, tempfile::tempdir().unwrap()).keep();
            say(format!("kept {} (FILEREP_POWERCUT_KEEP)", kept.display()));
        }
        calls += c.writers.iter().map(|w| w.calls).sum::<u64>();
        syncs += c.writers.iter().map(|w| w.syncs).sum::<u64>();
    }
    if let Some(p) = &plant {
        panic!("planted bug {p} not caught in {rounds} rounds");
    }
    for ((phase, at), n) in &landings {
        say(format!("  {phase}: {n} cut(s) landed {at}"));
    }
    say(format!(
        "{done} rounds (seeds {first}..{}) passed in {:.1} s: {calls} writer calls, {syncs} of them syncs, flushes and directory syncs that returned",
        first + rounds,
        started.elapsed().as_secs_f64()
    ));
}
