//! `filerep verify`: compare every synchronized pair's mirror with its
//! primary online (gpcheckmirrorseg), optionally repairing what differs.
//! The acting primary does the work through the replication stream; this
//! command asks the arbiter to start it, follows it with a progress bar
//! (plain lines when stderr is not a terminal), then prints the mismatches
//! and a summary per pair (`--json`: one object per pair).
//!
//! Exit codes: 0 every pair identical; 1 differences found (with
//! `--repair`: and repaired, unless a row says otherwise); 2 a pair could
//! not be verified (not synchronized, unreachable, stopped short).

use crate::cli::batch::RunProgress;
use filerep::cluster::segment::{ArbiterRequest, ArbiterResponse, SegmentRequest, SegmentResponse, SegmentStatus};
use filerep::protocol::handshake::ClusterKey;
use filerep::verify::online::{Mismatch, VerifyReport, VerifySummary};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct VerifyCmd {
    #[command(flatten)]
    target: crate::cli::target::Target,
    /// The arbiter's address, from `target`.
    #[arg(skip)]
    arbiter: String,
    /// Only this content (default: every pair).
    #[arg(long)]
    content: Option<u32>,
    /// Ship every mismatching block (and fix lengths and directories) to the mirror.
    #[arg(long)]
    repair: bool,
    /// Give up following after this many seconds (the verification itself goes on).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// One JSON object per pair instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    batch: crate::cli::batch::BatchArg,
}

/// One pair's outcome (`--json`).
#[derive(serde::Serialize)]
struct PairResult {
    content: u32,
    /// identical, differences, repaired, or error.
    result: String,
    dbid: u32,
    generation: u64,
    id: u64,
    seconds: f64,
    #[serde(flatten)]
    summary: VerifySummary,
    rows: Vec<Mismatch>,
    rows_truncated: bool,
    error: Option<String>,
}

const RPC: Duration = Duration::from_secs(5);

fn status(addr: &str, key: &ClusterKey) -> Option<SegmentStatus> {
    match filerep::cluster::control::call::<_, SegmentResponse>(addr, key, &SegmentRequest::Probe, RPC) {
        Ok(SegmentResponse::Status(s)) => Some(s),
        _ => None,
    }
}

pub fn run(mut c: VerifyCmd) -> Result<std::process::ExitCode, String> {
    let (arbiter, key) = c.target.reach()?;
    c.arbiter = arbiter;
    let cat = filerep::cluster::probe::fetch_catalog(&c.arbiter, &key, RPC)
        .map_err(|e| format!("cannot read the catalog from {}: {e}", c.arbiter))?;
    let contents: Vec<u32> = match c.content {
        Some(x) if cat.pair(x).is_none() => return Err(format!("--content {x}: no such content in the catalog")),
        Some(x) => vec![x],
        None => cat.pairs.iter().map(|p| p.pair.content).collect(),
    };
    let (mut differ, mut failed) = (false, false);
    let mut rows_shown = false;
    let progress =
        RunProgress::new(if c.repair { "verify --repair" } else { "verify" }, "bytes", contents.len(), c.json);
    let results = crate::cli::batch::each(&contents, c.batch, |content| {
        let r = verify_pair(&c, &key, content, &progress);
        progress.finished();
        Some(r)
    });
    progress.done();
    for (content, r) in contents.into_iter().zip(results) {
        let Some(r) = r else { continue };
        failed |= r.result == "error";
        differ |= r.summary.mismatches > 0;
        if c.json {
            outln!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
            continue;
        }
        if !r.rows.is_empty() {
            if !rows_shown {
                outln!("{:<8} {:<12} {:<40} {:<18} {:<9} blocks", "content", "filespace", "path", "what", "repaired");
                rows_shown = true;
            }
            for m in &r.rows {
                outln!(
                    "{:<8} {:<12} {:<40} {:<18} {:<9} {}",
                    content,
                    m.filespace,
                    m.path,
                    m.kind.name(),
                    if m.repaired { "yes" } else { "no" },
                    blocks(m)
                );
            }
            if r.rows_truncated {
                outln!("… more rows: the first {} are listed", r.rows.len());
            }
        }
        let s = &r.summary;
        match &r.error {
            Some(e) => outln!("content {content}: not verified: {e}"),
            None => outln!(
                "content {content}: {} in {:.1} s: {} files, {} directories, {} blocks ({:.1} MiB) compared; \
                 {} mismatches ({} blocks){}",
                r.result,
                r.seconds,
                s.files,
                s.dirs,
                s.blocks,
                s.bytes as f64 / 1048576.0,
                s.mismatches,
                s.mismatching_blocks,
                if s.repair {
                    format!("; {} repaired ({} blocks)", s.repaired, s.repaired_blocks)
                } else {
                    String::new()
                }
            ),
        }
    }
    Ok(std::process::ExitCode::from(if failed {
        2
    } else if differ {
        1
    } else {
        0
    }))
}

/// A row's blocks: `3, 7-9` (or `-` for a directory entry).
fn blocks(m: &Mismatch) -> String {
    if m.blocks.is_empty() {
        return format!("- ({})", m.detail);
    }
    let mut parts: Vec<String> = m
        .blocks
        .iter()
        .take(8)
        .map(|(f, n)| if *n == 1 { f.to_string() } else { format!("{f}-{}", f + n - 1) })
        .collect();
    if m.blocks.len() > 8 {
        parts.push(format!("… ({} runs)", m.blocks.len()));
    }
    parts.join(", ")
}

fn verify_pair(c: &VerifyCmd, key: &ClusterKey, content: u32, progress: &RunProgress) -> PairResult {
    let started = Instant::now();
    let mut out = PairResult {
        content,
        result: "error".into(),
        dbid: 0,
        generation: 0,
        id: 0,
        seconds: 0.0,
        summary: VerifySummary { repair: c.repair, ..Default::default() },
        rows: Vec::new(),
        rows_truncated: false,
        error: None,
    };
    match follow(c, key, content, &mut out, progress) {
        Ok(report) => {
            out.result = match (report.summary.mismatches, report.summary.repaired) {
                (0, _) => "identical",
                (m, r) if c.repair && r == m => "repaired",
                _ => "differences",
            }
            .into();
            out.summary = report.summary;
            out.rows = report.mismatches;
            out.rows_truncated = report.truncated;
        }
        Err(e) => out.error = Some(e),
    }
    out.seconds = started.elapsed().as_secs_f64();
    out
}

/// Start the verification of one pair, follow it to the end, fetch the report.
fn follow(
    c: &VerifyCmd,
    key: &ClusterKey,
    content: u32,
    out: &mut PairResult,
    progress: &RunProgress,
) -> Result<VerifyReport, String> {
    let started = Instant::now();
    let req = ArbiterRequest::Verify { content, repair: c.repair };
    let (dbid, generation, id) = match filerep::cluster::probe::ask(&c.arbiter, key, &req, RPC) {
        Ok(ArbiterResponse::Verifying { dbid, generation, id }) => (dbid, generation, id),
        Ok(ArbiterResponse::Refused(why)) => return Err(why),
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(format!("cannot reach the arbiter: {e}")),
    };
    (out.dbid, out.generation, out.id) = (dbid, generation, id);
    let cat = filerep::cluster::probe::fetch_catalog(&c.arbiter, key, RPC)
        .map_err(|e| format!("cannot read the catalog: {e}"))?;
    let addr = cat
        .pair(content)
        .and_then(|cp| cp.address(dbid))
        .map(|a| a.control.clone())
        .ok_or_else(|| format!("no address for segment {dbid}"))?;
    let mut unanswered = 0;
    loop {
        if started.elapsed() > Duration::from_secs(c.timeout) {
            return Err(format!("verification {id} still runs on segment {dbid} (stopped following)"));
        }
        std::thread::sleep(Duration::from_millis(200)); // polling interval of a progress display
        let Some(s) = status(&addr, key) else {
            unanswered += 1;
            if unanswered > 25 {
                return Err(format!("segment {dbid} stopped answering during verification {id}"));
            }
            continue;
        };
        unanswered = 0;
        let Some(v) = s.verify.filter(|v| v.id == id) else {
            return Err(format!("segment {dbid} no longer knows verification {id} (restarted?)"));
        };
        let p = &v.progress;
        progress.update(content, p.bytes_done, p.bytes_total.max(p.bytes_done), "");
        if v.running {
            continue;
        }
        if let Some(e) = v.error {
            return Err(format!("verification stopped short: {e}"));
        }
        return match filerep::cluster::control::call::<_, SegmentResponse>(
            &addr,
            key,
            &SegmentRequest::VerifyReport { id },
            RPC,
        ) {
            Ok(SegmentResponse::VerifyReport(r)) => Ok(*r),
            Ok(SegmentResponse::Refused(why)) => Err(why),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(format!("cannot fetch the report from segment {dbid}: {e}")),
        };
    }
}
