//! `filerep recover`: ask the arbiter to resynchronize pairs, then follow
//! each resync to the end with a progress bar (or plain lines when stderr
//! is not a terminal) and a summary (`--json` for scripts).

use crate::cli::batch::{RunProgress, Watch};
use filerep::cluster::segment::{ArbiterRequest, ArbiterResponse, SegmentRequest, SegmentResponse, SegmentStatus};
use filerep::core::pair::PairMode;
use filerep::durable::catalog::Catalog;
use filerep::protocol::handshake::ClusterKey;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct RecoverCmd {
    #[command(flatten)]
    target: crate::cli::target::Target,
    /// The arbiter's address, from `target`.
    #[arg(skip)]
    arbiter: String,
    /// Only this content (default: every pair that is not synchronized).
    #[arg(long)]
    content: Option<u32>,
    /// Full resync: every file, and remove what the mirror has and the primary lacks.
    #[arg(short = 'F', long)]
    full: bool,
    /// Rebalance: return every synchronized pair to its preferred roles (an orderly switch).
    #[arg(short = 'r', long, conflicts_with = "full")]
    rebalance: bool,
    /// Compare hashes of every listed block on both sides and ship only those that differ.
    #[arg(long, conflicts_with = "full")]
    compare: bool,
    /// Limit block copies to this many MB/s (10^6 bytes a second). Given
    /// while a resync runs, it changes that resync's rate from then on.
    #[arg(long)]
    max_rate: Option<f64>,
    /// Record progress durably every this many MiB shipped (default 64).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    checkpoint_mib: Option<u64>,
    /// Give up following after this many seconds (the resync itself goes on).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// One JSON object per pair instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    batch: crate::cli::batch::BatchArg,
    /// These contents (addmirrors builds its new mirrors so).
    #[arg(skip)]
    contents: Vec<u32>,
}

impl RecoverCmd {
    /// A full resync of each of `contents`, `batch` at once (how `filerep
    /// addmirrors` builds its new mirrors).
    pub fn full_resync(
        dir: &filerep_tools::cluster::ClusterDir,
        contents: Vec<u32>,
        max_rate: Option<f64>,
        json: bool,
        batch: crate::cli::batch::BatchArg,
    ) -> RecoverCmd {
        RecoverCmd {
            target: crate::cli::target::Target::of(dir),
            arbiter: String::new(),
            content: None,
            contents,
            batch,
            full: true,
            rebalance: false,
            compare: false,
            max_rate,
            checkpoint_mib: None,
            timeout: 3600,
            json,
        }
    }
}

#[derive(serde::Serialize)]
struct Summary {
    content: u32,
    full: bool,
    result: String,
    seconds: f64,
    paths: u64,
    blocks: u64,
    bytes: u64,
    /// Extra passes over what renames moved while the resync owed it.
    passes: u64,
    /// Whether renames outpaced it when last seen (it was holding new ones to finish).
    renames_held: bool,
    mode: char,
    generation: u64,
}

impl Summary {
    fn not_started(content: u32, full: bool, why: String) -> Summary {
        Summary {
            content,
            full,
            result: format!("not started: {why}"),
            seconds: 0.0,
            paths: 0,
            blocks: 0,
            bytes: 0,
            passes: 0,
            renames_held: false,
            mode: '-',
            generation: 0,
        }
    }
}

/// The result of a resync the segment stopped short: its cause, and the
/// advice to run the command again unless the cause gives its own.
fn stopped_short(cause: &str) -> String {
    let cause = cause.trim_start_matches("refused: ");
    if cause.contains("filerep recover") {
        format!("resync stopped short: {cause}")
    } else {
        format!("resync stopped short: {cause}; run filerep recover again")
    }
}

const RPC: Duration = Duration::from_secs(5);

fn status(addr: &str, key: &ClusterKey) -> Option<SegmentStatus> {
    match filerep::cluster::control::call::<_, SegmentResponse>(addr, key, &SegmentRequest::Probe, RPC) {
        Ok(SegmentResponse::Status(s)) => Some(s),
        _ => None,
    }
}

pub fn run(mut c: RecoverCmd) -> Result<std::process::ExitCode, String> {
    let (arbiter, key) = c.target.reach()?;
    c.arbiter = arbiter;
    let max_rate = match c.max_rate {
        None => None,
        Some(r) if r > 0.0 && r <= 1e6 => Some((r * 1e6) as u64),
        Some(r) => return Err(format!("--max-rate {r}: give 0 < MB/s <= 1000000")),
    };
    let watch = Watch::new(&c.arbiter, &key);
    let cat = watch.catalog()?;
    if c.rebalance {
        return rebalance(&c, &watch, &cat);
    }
    let mut contents: Vec<u32> = match c.content {
        Some(x) if cat.pair(x).is_none() => return Err(format!("--content {x}: no such content in the catalog")),
        Some(x) => vec![x],
        None if !c.contents.is_empty() => c.contents.clone(),
        None => cat.pairs.iter().filter(|p| p.pair.mode != PairMode::Synchronized).map(|p| p.pair.content).collect(),
    };
    if contents.is_empty() {
        if !c.json {
            eprintln!("every pair is synchronized: nothing to recover");
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    // A full rebuild empties the segment it rebuilds: never when one of the
    // pair's directories is, through a symbolic link, another segment's.
    let mut overlaps: Vec<(u32, String)> = Vec::new();
    if c.full {
        for &x in &contents {
            overlaps.extend(filerep_tools::cluster::rebuild_overlaps(&cat, &key, x).into_iter().map(|p| (x, p)));
        }
    }
    let refusals: Vec<(u32, String)> =
        contents.iter().filter_map(|x| cat.pair(*x).and_then(|p| p.recover_refusal(c.full)).map(|r| (*x, r))).collect();
    // Pairs addmirrors has just added: those that cannot start are each said
    // not built, and the others are built.
    let mut blocked: Vec<Summary> = Vec::new();
    if !c.contents.is_empty() {
        for (x, why) in overlaps.drain(..).chain(refusals) {
            blocked.push(Summary::not_started(x, c.full, why));
        }
        contents.retain(|x| !blocked.iter().any(|b| b.content == *x));
    } else {
        if !overlaps.is_empty() {
            let each: Vec<String> = overlaps.iter().map(|(x, p)| format!("content {x}: {p}")).collect();
            return Err(format!(
                "{}: a full recovery empties the segment it rebuilds and would delete the other segment's files; nothing was started. \
                 Give each segment a directory of its own (no symbolic link into another segment's), then run recover -F again",
                each.join("; ")
            ));
        }
        // Every pair can start before any is started.
        if !refusals.is_empty() {
            let also = if contents.len() > refusals.len() {
                "; nothing was started (name the others with --content)"
            } else {
                ""
            };
            let each: Vec<String> = refusals.into_iter().map(|(_, r)| r).collect();
            return Err(format!("{}{also}", each.join("; ")));
        }
    }
    let several = contents.len() > 1;
    let progress = RunProgress::new(if c.full { "recover -F" } else { "recover" }, "blocks", contents.len(), c.json);
    let results = crate::cli::batch::each(&contents, c.batch, |content| {
        let r = follow(&c, &watch, &progress, content, max_rate);
        progress.finished();
        Some(r)
    });
    progress.done();
    let mut failed = false;
    let mut summaries: Vec<Summary> = blocked;
    for (content, r) in contents.iter().zip(results) {
        // A pair that cannot start after all stays as it is (c, r or n);
        // the others go on, and running the command again completes it.
        summaries.push(match r {
            Some(Ok(s)) => s,
            Some(Err(e)) if several || !summaries.is_empty() => Summary::not_started(*content, c.full, e),
            Some(Err(e)) => return Err(e),
            None => Summary::not_started(*content, c.full, "not run".into()),
        });
    }
    summaries.sort_by_key(|s| s.content);
    for s in summaries {
        failed |= s.result != "synchronized";
        if c.json {
            outln!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?);
        } else {
            outln!(
                "content {}: {} in {:.1} s ({} paths, {} blocks, {:.1} MiB shipped, {} extra passes); mode {}, generation {}",
                s.content,
                s.result,
                s.seconds,
                s.paths,
                s.blocks,
                s.bytes as f64 / 1048576.0,
                s.passes,
                s.mode,
                s.generation
            );
        }
    }
    Ok(if failed { std::process::ExitCode::from(1) } else { std::process::ExitCode::SUCCESS })
}

/// The latest reason the history gives for `content`'s state.
fn last_reason(cat: &Catalog, content: u32) -> String {
    cat.history.iter().rev().find(|h| h.content == content).map(|h| h.reason.clone()).unwrap_or_default()
}

fn follow(
    c: &RecoverCmd,
    watch: &Watch,
    progress: &RunProgress,
    content: u32,
    max_rate: Option<u64>,
) -> Result<Summary, String> {
    let key = &watch.key;
    let started = Instant::now();
    let checkpoint_bytes = c.checkpoint_mib.map(|m| m << 20);
    let req = ArbiterRequest::Recover { content, full: c.full, max_rate, compare: c.compare, checkpoint_bytes };
    let mut restored = false;
    // The arbiter stores a change before it answers: a catalog fetched
    // after the answer holds it.
    let answered = loop {
        match filerep::cluster::probe::ask(&c.arbiter, key, &req, RPC) {
            Ok(ArbiterResponse::Started) => break Instant::now(),
            // Once only: a second answer like it means the primary fell again.
            Ok(ArbiterResponse::Restored { generation }) if !restored => {
                restored = true;
                if !c.json {
                    progress.say(&format!(
                        "content {content} was down: restored from its acting primary at generation {generation}; \
                         waiting for it to serve, then resynchronizing the mirror"
                    ));
                }
                wait_serving(c, watch, content, generation, (started, Instant::now()))?;
            }
            Ok(ArbiterResponse::Refused(why)) => return Err(format!("content {content}: {why}")),
            Ok(other) => return Err(format!("content {content}: unexpected answer {other:?}")),
            Err(e) => return Err(format!("cannot reach the arbiter: {e}")),
        }
    };
    let mut last: Option<SegmentStatus> = None;
    let result = loop {
        if started.elapsed() > Duration::from_secs(c.timeout) {
            break "still resynchronizing (stopped following)".to_string();
        }
        std::thread::sleep(Duration::from_millis(200)); // polling interval of a progress display
        let cat = watch.catalog_after(Some(answered))?;
        let Some(cp) = cat.pair(content) else { break "the content left the catalog".into() };
        let primary = cp.pair.acting_primary().dbid;
        if let Some(s) = cp.address(primary).and_then(|a| status(&a.control, key)) {
            last = Some(s);
        }
        if let Some(p) = last.as_ref().and_then(|s| s.resync.as_ref()) {
            let held = if p.renames_held { "; renames outpaced a resync: holding new renames to finish" } else { "" };
            progress.update(content, p.blocks_done, p.blocks_total, held);
        }
        if cp.pair.down {
            break format!("the content is down ({})", last_reason(&cat, content));
        }
        match cp.pair.mode {
            PairMode::Synchronized => break "synchronized".into(),
            PairMode::Resynchronizing => {
                if let Some(e) = last.as_ref().and_then(|s| s.resync_error.as_ref()) {
                    break stopped_short(e);
                }
            }
            m => break format!("the pair went back to {} ({})", m.letter(), last_reason(&cat, content)),
        }
    };
    let p = last.and_then(|s| s.resync).unwrap_or_default();
    let cat = watch.catalog_after(Some(answered))?;
    let pair = cat.pair(content).map(|p| p.pair.clone());
    Ok(Summary {
        content,
        full: c.full,
        result,
        seconds: started.elapsed().as_secs_f64(),
        paths: p.paths_done,
        blocks: p.blocks_done,
        bytes: p.bytes_done,
        passes: p.passes,
        renames_held: p.renames_held,
        mode: pair.as_ref().map_or('-', |p| p.mode.letter()),
        generation: pair.map_or(0, |p| p.generation),
    })
}

/// Wait until a restored pair's primary serves alone at `generation` and
/// its mirror is up at it, so a resync can be ordered.
/// `times`: when the command started, and when the arbiter answered.
fn wait_serving(
    c: &RecoverCmd,
    watch: &Watch,
    content: u32,
    generation: u64,
    times: (Instant, Instant),
) -> Result<(), String> {
    let (started, answered) = times;
    loop {
        if started.elapsed() > Duration::from_secs(c.timeout) {
            return Err(format!(
                "content {content}: the restored primary did not serve at generation {generation} in time"
            ));
        }
        let cat = watch.catalog_after(Some(answered))?;
        let Some(cp) = cat.pair(content) else { return Err(format!("content {content} left the catalog")) };
        if cp.pair.down || cp.pair.generation != generation {
            return Err(format!(
                "content {content} changed while being restored (generation {}, {}): run filerep recover again",
                cp.pair.generation,
                if cp.pair.down { "down" } else { "up" }
            ));
        }
        let ready = |dbid: u32, want: filerep::cluster::segment::Acting| {
            cp.address(dbid)
                .and_then(|a| status(&a.control, &watch.key))
                .is_some_and(|s| s.acting == want && s.generation == generation)
        };
        let (p, m) = (cp.pair.acting_primary(), cp.pair.acting_mirror());
        if ready(p.dbid, filerep::cluster::segment::Acting::Primary)
            && m.up
            && ready(m.dbid, filerep::cluster::segment::Acting::Mirror)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100)); // polling the arbiter's rounds
    }
}

/// `-r`: ask for the switch of every pair out of its preferred roles,
/// `-B` at once, then follow each until its preferred primary streams.
fn rebalance(c: &RecoverCmd, watch: &Watch, cat: &Catalog) -> Result<std::process::ExitCode, String> {
    use filerep::core::pair::Role;
    let contents: Vec<u32> = match c.content {
        Some(x) if cat.pair(x).is_none() => return Err(format!("--content {x}: no such content in the catalog")),
        Some(x) => vec![x],
        None => cat
            .pairs
            .iter()
            .filter(|p| p.pair.acting_primary().preferred_role != Role::Primary)
            .map(|p| p.pair.content)
            .collect(),
    };
    if contents.is_empty() {
        if !c.json {
            eprintln!("every pair is in its preferred roles: nothing to rebalance");
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let progress = RunProgress::new("recover -r", "pairs", contents.len(), c.json);
    let results = crate::cli::batch::each(&contents, c.batch, |content| {
        let r = switch(c, watch, content);
        progress.finished();
        Some(r)
    });
    progress.done();
    let mut failed = false;
    for (content, r) in contents.iter().zip(results) {
        // One pair refused or unreachable: said on its line; the others' stand.
        let s = match r {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                Summary { result: format!("not switched: {e}"), ..Summary::not_started(*content, false, e) }
            }
            None => Summary::not_started(*content, false, "not run".into()),
        };
        failed |= s.result != "rebalanced";
        if c.json {
            outln!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?);
        } else {
            outln!(
                "content {}: {} in {:.1} s; mode {}, generation {}",
                s.content,
                s.result,
                s.seconds,
                s.mode,
                s.generation
            );
        }
    }
    Ok(if failed { std::process::ExitCode::from(1) } else { std::process::ExitCode::SUCCESS })
}

/// One pair's switch back to its preferred roles, followed to the end.
fn switch(c: &RecoverCmd, watch: &Watch, content: u32) -> Result<Summary, String> {
    let key = &watch.key;
    let started = Instant::now();
    match filerep::cluster::probe::ask(&c.arbiter, key, &ArbiterRequest::Rebalance { content }, RPC) {
        Ok(ArbiterResponse::Started) => {}
        Ok(ArbiterResponse::Refused(why)) => return Err(format!("content {content}: {why}")),
        Ok(other) => return Err(format!("content {content}: unexpected answer {other:?}")),
        Err(e) => return Err(format!("cannot reach the arbiter: {e}")),
    }
    // Stored before the answer: a catalog fetched from now on holds the switch.
    let asked = Some(Instant::now());
    let result = loop {
        if started.elapsed() > Duration::from_secs(c.timeout) {
            break "still switching (stopped following)".to_string();
        }
        std::thread::sleep(Duration::from_millis(100)); // polling interval of a progress display
        let cat = watch.catalog_after(asked)?;
        let Some(cp) = cat.pair(content) else { break "the content left the catalog".into() };
        let p = cp.pair.acting_primary();
        let streaming = cp.address(p.dbid).and_then(|a| status(&a.control, key)).is_some_and(|s| {
            s.acting == filerep::cluster::segment::Acting::Primary
                && s.mode == 's'
                && s.generation == cp.pair.generation
        });
        if streaming && cp.pair.mode == PairMode::Synchronized {
            break "rebalanced".into();
        }
        if cp.pair.down || cp.pair.mode != PairMode::Synchronized {
            break format!("the pair left synchronized ({})", cp.pair.mode.letter());
        }
    };
    let cat = watch.catalog_after(asked)?;
    let pair = cat.pair(content).map(|p| p.pair.clone());
    Ok(Summary {
        content,
        full: false,
        result,
        seconds: started.elapsed().as_secs_f64(),
        paths: 0,
        blocks: 0,
        bytes: 0,
        passes: 0,
        renames_held: false,
        mode: pair.as_ref().map_or('-', |p| p.mode.letter()),
        generation: pair.as_ref().map_or(0, |p| p.generation),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn stopped_short_says_why_once_and_never_refused() {
        assert_eq!(
            super::stopped_short("refused: the mirror could not be taken back: connection refused"),
            "resync stopped short: the mirror could not be taken back: connection refused; run filerep recover again"
        );
        let own = "the resync took 1000 extra passes ...: run filerep recover again when fewer renames run";
        let m = super::stopped_short(own);
        assert_eq!(m.matches("filerep recover").count(), 1, "{m}");
        assert!(!m.contains("refused"), "{m}");
    }
}
