//! `filerep recover` after a mirror loss and after a failover, losses during
//! a resync, and each process killed at each step of a resync.

use super::*;

#[test]
fn recover_after_a_mirror_loss_returns_the_pair_to_synchronized_and_identical() {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.mkdir(0, "base").unwrap();
    cl.create(0, "base/rel").unwrap();
    for i in 0..32 {
        cl.extend(0, "base/rel", i, &block(1, i)).unwrap();
    }
    cl.create(1, "gone").unwrap();
    c.seg_mut(3).kill();
    c.wait_for("change tracking", Duration::from_secs(20), || c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'c'));
    // Every kind of change while the mirror is down.
    for i in 0..8 {
        cl.write_block(0, "base/rel", i * 3, &block(2, i)).unwrap();
    }
    cl.truncate(0, "base/rel", 20).unwrap();
    cl.unlink(1, "gone").unwrap();
    cl.mkdir(1, "new").unwrap();
    cl.create(1, "new/file").unwrap();
    cl.write_at(1, "new/file", 0, b"written while the mirror was down").unwrap();
    cl.rename(0, "base", "moved").unwrap();
    c.seg_mut(3).start();
    c.wait_mirror_serving(3, 1);
    let (code, out, err) = c.recover(&[]);
    assert_eq!(code, 0, "{out}{err}");
    let s = summary(&out);
    assert_eq!(s["result"], "synchronized", "{s}");
    assert!(s["blocks"].as_u64().unwrap() > 0, "{s}");
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::Synchronized, 1));
    assert!(c.catalog().history.iter().any(|h| h.reason.contains("resync completed")));
    // Streaming again: a new write reaches the mirror; then both sides match.
    cl.write_block(0, "moved/rel", 0, &block(3, 0)).unwrap();
    cl.sync(0, "moved/rel").unwrap();
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
    // Nothing left to recover: refused, with the reason.
    let (code, _, err) = c.recover(&["--content", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("already synchronized"), "{err}");
}

#[test]
fn after_a_failover_one_recover_makes_the_returning_old_primary_identical() {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.create(0, "rel").unwrap();
    for i in 0..40 {
        cl.extend(0, "rel", i, &block(4, i)).unwrap();
    }
    c.seg_mut(2).kill();
    c.wait_for("the promotion", Duration::from_secs(20), || {
        c.seg(3).status(&c.key).is_some_and(|s| s.acting == Acting::Primary && s.mode == 'c')
    });
    let mut nl = c.seg(3).client();
    for i in 0..10 {
        nl.write_block(0, "rel", i * 2, &block(5, i)).unwrap();
    }
    nl.create(1, "made-after-failover").unwrap();
    c.seg_mut(2).start();
    c.wait_for("the old primary to serve as mirror, its activity log handed over", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.acting == Acting::Mirror && s.generation == 2 && !s.changes_pending)
    });
    let (code, out, err) = c.recover(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(summary(&out)["result"], "synchronized");
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::Synchronized, 2));
    assert_eq!(role_of(&p, 3), (Role::Primary, true));
    assert_eq!(role_of(&p, 2), (Role::Mirror, true));
    nl.sync(0, "rel").unwrap();
    assert_trees_equal(&c.seg(3).roots(), &c.seg(2).roots());
    // Rebalance: back to the preferred roles, in order, at a new generation,
    // with a client writing to the old primary throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut w, stop) = (c.seg(3).client(), stop.clone());
        std::thread::spawn(move || {
            let (mut acked, mut refused) = (BTreeMap::new(), Vec::new());
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let b = 5 + i % 35;
                let t = Instant::now();
                match w.write_block(0, "rel", b, &block(100 + i, b)) {
                    Ok(()) => {
                        acked.insert(b, i);
                    }
                    Err(e) => refused.push((e.class(), e.to_string())),
                }
                assert!(t.elapsed() < Duration::from_secs(10), "a call hung for {:?}", t.elapsed());
                i += 1;
            }
            (acked, refused)
        })
    };
    let (code, out, err) = c.recover(&["-r"]);
    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = writer.join().unwrap();
    assert!(!acked.is_empty(), "the writer got some calls through before the switch");
    for (class, msg) in &refused {
        assert_eq!(*class, Some(ErrorClass::NotPrimary), "a call failed unclearly during the switch: {msg}");
    }
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(summary(&out)["result"], "rebalanced", "{out}");
    let p = c.pair();
    assert_eq!((p.mode, p.generation), (PairMode::Synchronized, 3));
    assert_eq!(role_of(&p, 2), (Role::Primary, true));
    assert_eq!(role_of(&p, 3), (Role::Mirror, true));
    // The old mirror's clients are told to go elsewhere; the preferred primary serves.
    let e = c.seg(3).client().write_block(0, "rel", 0, &block(6, 0)).unwrap_err();
    assert_eq!(e.class(), Some(ErrorClass::NotPrimary), "{e}");
    let mut back = c.seg(2).client();
    for i in 0..5 {
        back.write_block(0, "rel", i, &block(7, i)).unwrap();
    }
    back.sync(0, "rel").unwrap();
    // Every write acknowledged before the switch is on the preferred primary.
    for (b, i) in &acked {
        assert_eq!(back.read_block(0, "rel", *b).unwrap(), block(100 + i, *b), "acknowledged block {b} lost");
    }
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
}

/// Start `filerep recover` in the background, slowed down, and wait until the pair is resynchronizing.
fn slow_recover(c: &Cluster) -> std::process::Child {
    let key = c.key_file.display().to_string();
    let child = Command::new(exe())
        .args(["recover", "--arbiter", &c.arbiter_addr, "--key-file", &key, "--json", "--max-rate", "1"])
        .env("FILEREP_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recover");
    c.wait_for("the resync to run", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'r') && c.pair().mode == PairMode::Resynchronizing
    });
    child
}

/// A pair in change tracking with 16 MiB to resync (16 s at 1 MB/s).
fn diverged_cluster() -> Cluster {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.create(0, "big").unwrap();
    c.seg_mut(3).kill();
    c.wait_for("change tracking", Duration::from_secs(20), || c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'c'));
    for i in 0..2048 {
        cl.extend(0, "big", i, &block(11, i)).unwrap();
    }
    c.seg_mut(3).start();
    c.wait_mirror_serving(3, 1);
    c
}

#[test]
fn losing_the_mirror_during_a_resync_returns_the_pair_to_change_tracking() {
    let mut c = diverged_cluster();
    let tool = slow_recover(&c);
    c.seg_mut(3).kill();
    c.wait_for("change tracking again", Duration::from_secs(20), || c.pair().mode == PairMode::ChangeTracking);
    let out = tool.wait_with_output().unwrap();
    assert!(!out.status.success(), "the tool reports that the resync did not finish");
    let p = c.pair();
    assert_eq!(p.generation, 1);
    assert_eq!(role_of(&p, 2), (Role::Primary, true));
    // The primary goes on alone.
    c.wait_for("the primary to track changes", Duration::from_secs(20), || {
        c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'c')
    });
    c.seg(2).client().write_block(0, "big", 0, &block(12, 0)).unwrap();
}

#[test]
fn losing_the_primary_during_a_resync_takes_the_segment_down_without_a_promotion() {
    let mut c = diverged_cluster();
    let tool = slow_recover(&c);
    c.seg_mut(2).kill();
    c.wait_for("the segment to be down", Duration::from_secs(20), || c.pair().down);
    let out = tool.wait_with_output().unwrap();
    assert!(!out.status.success());
    let p = c.pair();
    assert_eq!(p.generation, 1, "a mirror that is not yet consistent is never promoted");
    assert_eq!(role_of(&p, 3).0, Role::Mirror);
    assert_ne!(c.seg(3).status(&c.key).unwrap().acting, Acting::Primary);
    assert!(c.catalog().history.iter().any(|h| h.reason.contains("during resync")), "{:#?}", c.catalog().history);
}

// ---- a crash at each step of a resync -----------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Primary,
    Mirror,
    /// `filerep recover` itself: the resync runs in the primary and goes on.
    Tool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Moment {
    /// Shipping the namespace (new directories and files, copied whole).
    Namespace,
    /// Copying changed blocks, before the first durable progress record.
    Copying,
    /// Copying, after several progress records.
    AfterCheckpoints,
}

/// Blocks of `hot` the writers hammer during the resync.
const HOT_BLOCKS: u64 = 64;
/// Files whose blocks change while the mirror is down, and their blocks.
const RELS: u64 = 16;
const REL_BLOCKS: u64 = 64;
/// New directories (each with one file of `DIR_FILE_BLOCKS`), shipped first.
const DIRS: u64 = 8;
const DIR_FILE_BLOCKS: u64 = 8;

/// Writer `w` of two hammering its half of `hot` until stopped or refused:
/// per block, the last tag acknowledged and the tag of a call that failed
/// (which may or may not have landed).
fn hammer(seg: &Seg, w: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<BTreeMap<u64, (u64, Option<u64>)>> {
    let mut cl = seg.client();
    std::thread::spawn(move || {
        let mut seen = BTreeMap::new();
        let mut tag = 1000;
        while !stop.load(Ordering::SeqCst) {
            let b = (tag * 7) % (HOT_BLOCKS / 2) * 2 + w;
            tag += 1;
            if cl.write_block(0, "hot", b, &block(tag, b)).is_err() {
                // A block not yet written by this writer holds what the setup wrote.
                seen.entry(b).or_insert((hot_setup_tag(b), None)).1 = Some(tag);
                break;
            }
            seen.insert(b, (tag, None));
        }
        seen
    })
}

/// The tag of what `crash_during_resync` leaves in block `b` of `hot`
/// before the writers start (the last blocks truncated and written again).
fn hot_setup_tag(b: u64) -> u64 {
    if b >= HOT_BLOCKS - 4 {
        2
    } else {
        1
    }
}

fn crash_during_resync(victim: Victim, moment: Moment) {
    let mut c = Cluster::start(Links::Direct);
    let mut cl = c.seg(2).client();
    cl.create(0, "hot").unwrap();
    for i in 0..HOT_BLOCKS {
        cl.extend(0, "hot", i, &block(1, i)).unwrap();
    }
    for r in 0..RELS {
        cl.create(0, &format!("r{r:02}")).unwrap();
        cl.extend(0, &format!("r{r:02}"), 0, &block(5, r)).unwrap();
    }
    cl.create(1, "gone").unwrap();
    c.seg_mut(3).kill();
    c.wait_for("change tracking", Duration::from_secs(20), || c.seg(2).status(&c.key).is_some_and(|s| s.mode == 'c'));
    // Every kind of change. The namespace ships first ("a.." sorts before
    // the rest), then the files' blocks: progress is recorded between files.
    for d in 0..DIRS {
        let dir = format!("a{d:02}");
        cl.mkdir(0, &dir).unwrap();
        cl.create(0, &format!("{dir}/f")).unwrap();
        for i in 0..DIR_FILE_BLOCKS {
            cl.extend(0, &format!("{dir}/f"), i, &block(20 + d, i)).unwrap();
        }
    }
    cl.rename(0, "a00", "z00").unwrap();
    cl.unlink(1, "gone").unwrap();
    for r in 0..RELS {
        for i in 0..REL_BLOCKS {
            let rel = format!("r{r:02}");
            if i == 0 {
                cl.write_block(0, &rel, 0, &block(6, r)).unwrap();
            } else {
                cl.extend(0, &rel, i, &block(7 + r, i)).unwrap();
            }
        }
    }
    cl.truncate(0, "hot", HOT_BLOCKS - 4).unwrap();
    for i in HOT_BLOCKS - 4..HOT_BLOCKS {
        cl.extend(0, "hot", i, &block(2, i)).unwrap();
    }
    c.seg_mut(3).start();
    c.wait_mirror_serving(3, 1);

    // A slow resync (1 MB/s, progress recorded every 1 MiB) with writers hammering `hot`.
    let key = c.key_file.display().to_string();
    let mut tool = Command::new(exe())
        .args(["recover", "--arbiter", &c.arbiter_addr, "--key-file", &key, "--json"])
        .args(["--max-rate", "1", "--checkpoint-mib", "1"])
        .env("FILEREP_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recover");
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2).map(|w| hammer(c.seg(2), w, stop.clone())).collect();
    let progress = || c.seg(2).status(&c.key).and_then(|s| s.resync);
    let per_mib = (1 << 20) / BS as u64;
    c.wait_for(&format!("{moment:?} in the resync"), Duration::from_secs(60), || {
        progress().is_some_and(|p| match moment {
            Moment::Namespace => p.paths_done >= 2,
            Moment::Copying => p.blocks_done >= DIRS * DIR_FILE_BLOCKS + 16,
            Moment::AfterCheckpoints => p.blocks_done >= 4 * per_mib,
        })
    });
    let at = progress().unwrap_or_default();
    match moment {
        Moment::Namespace => assert!(at.blocks_done < DIRS * DIR_FILE_BLOCKS, "still early: {at:?}"),
        Moment::Copying => assert!(at.blocks_done < per_mib, "before the first progress record: {at:?}"),
        Moment::AfterCheckpoints => {}
    }
    match victim {
        Victim::Primary => {
            c.seg_mut(2).kill();
            c.wait_for("the segment to be down", Duration::from_secs(20), || c.pair().down);
        }
        Victim::Mirror => {
            c.seg_mut(3).kill();
            c.wait_for("change tracking", Duration::from_secs(20), || c.pair().mode == PairMode::ChangeTracking);
        }
        Victim::Tool => {
            let _ = tool.kill();
            assert_eq!(c.pair().mode, PairMode::Resynchronizing, "the resync goes on without its tool");
        }
    }
    let _ = tool.kill();
    let _ = tool.wait();
    stop.store(true, Ordering::SeqCst);
    let hot: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    match victim {
        Victim::Primary => c.seg_mut(2).start(),
        Victim::Mirror => c.seg_mut(3).start(),
        Victim::Tool => {}
    }
    c.wait_for("both segments up", Duration::from_secs(20), || c.pair().segments.iter().all(|s| s.up));

    // One `filerep recover` (the restore of a down segment included) finishes the job.
    let (code, out, err) = c.recover(&["--checkpoint-mib", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    let s = summary(&out);
    assert_eq!(s["result"], "synchronized", "{s}");
    // What the resync shipped and how many extra passes it made are reported.
    assert!(s["bytes"].is_u64() && s["passes"].is_u64(), "{s}");
    let p = c.pair();
    let generation = if victim == Victim::Primary { 2 } else { 1 };
    assert_eq!((p.mode, p.generation, p.acting_primary().dbid), (PairMode::Synchronized, generation, 2), "{p:?}");
    if moment == Moment::AfterCheckpoints && victim != Victim::Tool {
        // Progress was kept: the second resync did not ship everything again.
        let all = (RELS * REL_BLOCKS + DIRS * DIR_FILE_BLOCKS + HOT_BLOCKS) * BS as u64;
        assert!(s["bytes"].as_u64().unwrap() < all, "{s}");
    }
    // Every acknowledged write is on the primary (a failed one may have landed or not).
    let mut cl = c.seg(2).client();
    for seen in &hot {
        for (b, (acked, failed)) in seen {
            let now = cl.read_block(0, "hot", *b).unwrap();
            let ok = now == block(*acked, *b) || failed.is_some_and(|t| now == block(t, *b));
            assert!(ok, "acknowledged write {acked} of hot block {b} lost");
        }
    }
    cl.write_block(0, "r00", 0, &block(3, 0)).unwrap();
    cl.sync(0, "r00").unwrap();
    assert_trees_equal(&c.seg(2).roots(), &c.seg(3).roots());
}

#[test]
fn primary_killed_while_the_resync_ships_the_namespace() {
    crash_during_resync(Victim::Primary, Moment::Namespace);
}

#[test]
fn primary_killed_while_the_resync_copies_blocks() {
    crash_during_resync(Victim::Primary, Moment::Copying);
}

#[test]
fn primary_killed_after_resync_progress_records() {
    crash_during_resync(Victim::Primary, Moment::AfterCheckpoints);
}

#[test]
fn mirror_killed_while_the_resync_ships_the_namespace() {
    crash_during_resync(Victim::Mirror, Moment::Namespace);
}

#[test]
fn mirror_killed_while_the_resync_copies_blocks() {
    crash_during_resync(Victim::Mirror, Moment::Copying);
}

#[test]
fn mirror_killed_after_resync_progress_records() {
    crash_during_resync(Victim::Mirror, Moment::AfterCheckpoints);
}

#[test]
fn recover_tool_killed_while_the_resync_ships_the_namespace() {
    crash_during_resync(Victim::Tool, Moment::Namespace);
}

#[test]
fn recover_tool_killed_while_the_resync_copies_blocks() {
    crash_during_resync(Victim::Tool, Moment::Copying);
}

#[test]
fn recover_tool_killed_after_resync_progress_records() {
    crash_during_resync(Victim::Tool, Moment::AfterCheckpoints);
}
