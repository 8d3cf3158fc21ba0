//! `filerep state` (gpstate): the catalog as the arbiter keeps it, and what
//! each segment process says of itself. A table for people, `--json` for
//! scripts.

use crate::cli::ops::current_catalog;
use filerep::cluster::segment::{Acting, SegmentStatus};
use filerep::core::pair::{Pair, PairMode, Role};
use filerep::durable::catalog::{Catalog, SegmentAddress};
use filerep_tools::cluster;
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct StateCmd {
    #[command(flatten)]
    cluster: crate::cli::target::ClusterArg,
    /// The mirror list: host, data directory, port, status, data status.
    #[arg(short = 'm', long, group = "view")]
    mirrors: bool,
    /// Primary to mirror mapping.
    #[arg(short = 'c', long, group = "view")]
    mapping: bool,
    /// Per segment detail: role, mode, generation, resync progress, last fault.
    #[arg(short = 's', long, group = "view")]
    detail: bool,
    /// The catalog as gp_segment_configuration shows it.
    #[arg(long, group = "view")]
    catalog: bool,
    #[arg(long)]
    json: bool,
}

/// One segment, as the catalog and its own process describe it.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub dbid: u32,
    pub content: u32,
    pub role: char,
    pub preferred_role: char,
    pub mode: char,
    pub status: char,
    pub port: u16,
    pub hostname: String,
    pub address: String,
    pub replication_port: Option<u16>,
    pub generation: u64,
    pub datadirs: Vec<String>,
    /// Passive, Acting as Primary, Failed, or Primary.
    pub mirror_status: String,
    /// Synchronized, Resynchronizing, Change Tracking, Not in sync, Down, No mirror.
    pub data_status: String,
    /// What the process said (None: it does not answer).
    pub process: Option<SegmentStatus>,
    pub last_event: Option<String>,
}

fn data_status(p: Option<&Pair>) -> String {
    match p {
        None => "No mirror".into(),
        Some(p) if p.down => "Down".into(),
        Some(p) => match p.mode {
            PairMode::Synchronized => "Synchronized",
            PairMode::Resynchronizing => "Resynchronizing",
            PairMode::ChangeTracking => "Change Tracking",
            PairMode::NotInSync => "Not in sync",
        }
        .into(),
    }
}

fn rows(cat: &Catalog, key: &filerep::protocol::handshake::ClusterKey) -> Vec<Row> {
    let last = |content: u32| cat.history.iter().rev().find(|h| h.content == content).map(|h| h.reason.clone());
    // Every segment asked at once: a hung host costs one timeout, not one per segment.
    let controls: Vec<String> = cat
        .pairs
        .iter()
        .flat_map(|p| p.addresses.iter().map(|a| a.control.clone()))
        .chain(cat.unmirrored.iter().map(|s| s.address.control.clone()))
        .collect();
    let answers = cluster::probe_many(&controls, key, Duration::from_secs(1));
    let answers: std::collections::HashMap<&str, Option<SegmentStatus>> =
        controls.iter().map(String::as_str).zip(answers).collect();
    let process = |control: &str| answers.get(control).cloned().flatten();
    let row = |content: u32, a: &SegmentAddress, pair: Option<&Pair>, role: Role, pref: Role, up: bool, gen: u64| {
        let mirror_status = match (pref, role, up) {
            (_, _, false) => "Failed",
            (Role::Mirror, Role::Primary, true) => "Acting as Primary",
            (Role::Mirror, Role::Mirror, true) => "Passive",
            (Role::Primary, Role::Mirror, true) => "Passive (acting as mirror)",
            (Role::Primary, Role::Primary, true) => "Primary",
        };
        Row {
            dbid: a.dbid,
            content,
            role: role.letter(),
            preferred_role: pref.letter(),
            mode: pair.map_or('n', |p| p.mode.letter()),
            status: if up { 'u' } else { 'd' },
            port: a.port().unwrap_or(0),
            hostname: a.host.clone(),
            address: a.address().to_string(),
            replication_port: a.replication_port(),
            generation: gen,
            datadirs: a.filespaces.clone(),
            mirror_status: mirror_status.into(),
            data_status: data_status(pair),
            process: process(&a.control),
            last_event: last(content),
        }
    };
    let mut out = Vec::new();
    for p in &cat.pairs {
        for (s, a) in p.pair.segments.iter().zip(&p.addresses) {
            out.push(row(p.pair.content, a, Some(&p.pair), s.role, s.preferred_role, s.up, p.pair.generation));
        }
    }
    for s in &cat.unmirrored {
        out.push(row(s.content, &s.address, None, Role::Primary, Role::Primary, s.up, s.generation));
    }
    out.sort_by_key(|r| (r.preferred_role != 'p', r.content));
    out
}

/// Print rows under headers, columns as wide as their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i >= w.len() {
                w.push(0);
            }
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect();
        outln!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    line(w.iter().map(|n| "-".repeat(*n)).collect());
    for r in rows {
        line(r.clone());
    }
}

fn first_dir(r: &Row) -> String {
    r.datadirs.first().map(|d| d.split_once('=').map_or(d.as_str(), |(_, x)| x).to_string()).unwrap_or_default()
}

fn resync_text(s: &Option<SegmentStatus>) -> String {
    let Some(p) = s.as_ref().and_then(|s| s.resync.clone()) else { return String::new() };
    let pct = if p.blocks_total > 0 { 100.0 * p.blocks_done as f64 / p.blocks_total as f64 } else { 0.0 };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let secs = now_ms.saturating_sub(p.started_unix_ms) as f64 / 1000.0;
    let eta = if p.blocks_done > 0 && p.blocks_total > p.blocks_done && secs > 0.0 {
        format!(", ETA {:.0} s", secs * (p.blocks_total - p.blocks_done) as f64 / p.blocks_done as f64)
    } else {
        String::new()
    };
    let mut passes = if p.passes > 0 { format!(", {} extra passes", p.passes) } else { String::new() };
    if p.renames_held {
        passes.push_str(", renames outpaced it: holding new renames to finish");
    }
    format!("{}/{} blocks ({pct:.0}%), {} bytes shipped{passes}{eta}", p.blocks_done, p.blocks_total, p.bytes_done)
}

/// One arbiter as `filerep state` shows it.
#[derive(serde::Serialize)]
struct ArbiterState {
    address: String,
    /// `acting`, `standby`, `cut off` (from its coordinator), `down`.
    state: &'static str,
    epoch: Option<u64>,
    detail: String,
}

/// What each of the cluster's arbiters says of itself.
fn arbiter_states(file: &cluster::ClusterFile, key: &filerep::protocol::handshake::ClusterKey) -> Vec<ArbiterState> {
    use filerep::durable::catalog::Leadership;
    let addrs: Vec<String> = cluster::arbiters(file).into_iter().map(|(_, a)| a).collect();
    filerep::cluster::probe::at_once(&addrs, 8, |a| Some(cluster::leadership(a, key, Duration::from_secs(2))))
        .into_iter()
        .zip(&addrs)
        .map(|(answer, address)| {
            let address = address.clone();
            match answer {
                Some(Ok(l)) => match l.leadership {
                    Leadership::Acting { epoch } => ArbiterState {
                        address,
                        state: "acting",
                        epoch: Some(epoch),
                        detail: format!("on {}", l.coordinator),
                    },
                    Leadership::Standby { leader } => ArbiterState {
                        address,
                        state: "standby",
                        epoch: None,
                        detail: leader.map_or_else(|| "no leader known".into(), |l| format!("{l} acts")),
                    },
                    Leadership::Unreachable(why) => ArbiterState {
                        address,
                        state: "cut off",
                        epoch: None,
                        detail: format!("cannot reach its coordinator {}: {why}", l.coordinator),
                    },
                },
                Some(Err(e)) => {
                    ArbiterState { address, state: "down", epoch: None, detail: format!("does not answer: {e}") }
                }
                None => ArbiterState { address, state: "down", epoch: None, detail: "does not answer".into() },
            }
        })
        .collect()
}

fn print_arbiters(arbiters: &[ArbiterState]) {
    for a in arbiters {
        let epoch = a.epoch.map(|e| format!(" (epoch {e})")).unwrap_or_default();
        outln!("  arbiter {}: {}{epoch}, {}", a.address, a.state, a.detail);
    }
    if !arbiters.iter().any(|a| a.state == "acting") {
        outln!("  NO arbiter acts: nothing is promoted until one does (docs/operations.md, The coordinator on etcd)");
    }
}

pub fn run(c: StateCmd) -> Result<ExitCode, String> {
    let dir = c.cluster.dir()?;
    let file = dir.load().map_err(|e| e.to_string())?;
    let key = dir.key().map_err(|e| e.to_string())?;
    let arbiters = arbiter_states(&file, &key);
    let (cat, live) = match current_catalog(&dir) {
        Ok(found) => found,
        Err(e) => {
            // Which arbiter acts, and why none can, is the answer then.
            if c.json {
                let v = serde_json::json!({"arbiters": arbiters, "coordinator": file.coordinator, "error": e});
                outln!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
            } else {
                print_arbiters(&arbiters);
            }
            return Err(format!("the catalog cannot be read: {e}"));
        }
    };
    let rows = rows(&cat, &key);
    if !live && !c.json {
        eprintln!("the arbiter on {} does not answer: showing the catalog as last stored", file.arbiter);
    }
    if c.json {
        let v = serde_json::json!({
            "arbiter": file.arbiter, "arbiter_answers": live, "placement": file.placement,
            "coordinator": file.coordinator, "arbiters": arbiters,
            "segments": rows, "history_tail": cat.history.iter().rev().take(20).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        return Ok(ExitCode::SUCCESS);
    }
    if c.catalog {
        let headers = [
            "dbid",
            "content",
            "role",
            "preferred_role",
            "mode",
            "status",
            "port",
            "hostname",
            "address",
            "replication_port",
            "generation",
            "datadir",
        ];
        let mut rs: Vec<&Row> = rows.iter().collect();
        rs.sort_by_key(|r| r.dbid);
        let body: Vec<Vec<String>> = rs
            .iter()
            .map(|r| {
                vec![
                    r.dbid.to_string(),
                    r.content.to_string(),
                    r.role.to_string(),
                    r.preferred_role.to_string(),
                    r.mode.to_string(),
                    r.status.to_string(),
                    r.port.to_string(),
                    r.hostname.clone(),
                    r.address.clone(),
                    r.replication_port.map(|p| p.to_string()).unwrap_or_default(),
                    r.generation.to_string(),
                    r.datadirs.join(","),
                ]
            })
            .collect();
        table(&headers, &body);
        outln!("({} rows)", body.len());
    } else if c.mirrors {
        let mirrors: Vec<&Row> = rows.iter().filter(|r| r.preferred_role == 'm').collect();
        if mirrors.is_empty() {
            outln!("no mirrors: add them with filerep addmirrors");
            return Ok(ExitCode::SUCCESS);
        }
        outln!("Current mirror list and status (type = {})", file.placement.as_deref().unwrap_or("custom"));
        let body: Vec<Vec<String>> = mirrors
            .iter()
            .map(|r| {
                vec![
                    r.hostname.clone(),
                    first_dir(r),
                    r.port.to_string(),
                    r.mirror_status.clone(),
                    r.data_status.clone(),
                ]
            })
            .collect();
        table(&["Mirror", "Datadir", "Port", "Status", "Data Status"], &body);
    } else if c.mapping {
        let mut body = Vec::new();
        for p in &cat.pairs {
            let (pa, ma) = (&p.addresses[0], &p.addresses[1]);
            let (ps, ms) = (&p.pair.segments[0], &p.pair.segments[1]);
            let st = |up: bool, role: Role| {
                if !up {
                    "Failed"
                } else if role == Role::Primary {
                    "Primary"
                } else {
                    "Mirror"
                }
            };
            body.push(vec![
                p.pair.content.to_string(),
                data_status(Some(&p.pair)),
                format!("{} ({})", pa.host, st(ps.up, ps.role)),
                pa.filespaces.first().cloned().unwrap_or_default(),
                pa.port().unwrap_or(0).to_string(),
                format!("{} ({})", ma.host, st(ms.up, ms.role)),
                ma.filespaces.first().cloned().unwrap_or_default(),
                ma.port().unwrap_or(0).to_string(),
            ]);
        }
        for s in &cat.unmirrored {
            body.push(vec![
                s.content.to_string(),
                "No mirror".into(),
                s.address.host.clone(),
                s.address.filespaces.first().cloned().unwrap_or_default(),
                s.address.port().unwrap_or(0).to_string(),
                "-".into(),
                String::new(),
                String::new(),
            ]);
        }
        body.sort_by_key(|r| r[0].parse::<u32>().unwrap_or(u32::MAX));
        table(&["Content", "Data Status", "Primary", "Datadir", "Port", "Mirror", "Datadir", "Port"], &body);
    } else if c.detail {
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let p = r.process.as_ref();
                vec![
                    r.dbid.to_string(),
                    r.content.to_string(),
                    format!("{}:{}", r.hostname, r.port),
                    format!("{}/{}", r.role, r.preferred_role),
                    r.data_status.clone(),
                    r.generation.to_string(),
                    p.map_or("not answering".into(), |s| format!("{:?} {}", s.acting, s.mode)),
                    p.and_then(|s| s.replication.as_ref())
                        .map_or(String::new(), |x| format!("{} ops / {} B", x.lag_ops, x.lag_bytes)),
                    p.and_then(|s| s.changelog.as_ref()).map_or(String::new(), |c| {
                        format!("{} blocks, {} paths, {} B", c.distinct_blocks, c.touched_paths, c.bytes_on_disk)
                    }),
                    resync_text(&r.process),
                    r.last_event.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(
            &[
                "dbid",
                "content",
                "host:port",
                "role/pref",
                "data status",
                "gen",
                "process",
                "lag",
                "change-log",
                "resync",
                "last event",
            ],
            &body,
        );
    } else {
        let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
        let contents = cat.pairs.len() + cat.unmirrored.len();
        outln!(
            "cluster {:016x}: {} contents on {} hosts, arbiter {} ({})",
            cat.cluster_id,
            contents,
            file.hosts.len(),
            file.arbiter,
            if live { "answering" } else { "NOT answering" }
        );
        if file.coordinator.is_some() {
            print_arbiters(&arbiters);
        }
        let summary = [
            ("primaries (acting)", count(&|r| r.role == 'p').to_string()),
            ("primaries down", count(&|r| r.role == 'p' && r.status == 'd').to_string()),
            ("mirrors", count(&|r| r.preferred_role == 'm').to_string()),
            ("mirrors down", count(&|r| r.role == 'm' && r.status == 'd').to_string()),
            ("mirrors acting as primary", count(&|r| r.preferred_role == 'm' && r.role == 'p').to_string()),
            (
                "pairs synchronized",
                cat.pairs.iter().filter(|p| p.pair.mode == PairMode::Synchronized && !p.pair.down).count().to_string(),
            ),
            (
                "pairs resynchronizing",
                cat.pairs.iter().filter(|p| p.pair.mode == PairMode::Resynchronizing).count().to_string(),
            ),
            (
                "pairs in change tracking",
                cat.pairs.iter().filter(|p| p.pair.mode == PairMode::ChangeTracking).count().to_string(),
            ),
            ("pairs not in sync", cat.pairs.iter().filter(|p| p.pair.mode == PairMode::NotInSync).count().to_string()),
            ("contents down", cat.pairs.iter().filter(|p| p.pair.down).count().to_string()),
            ("contents without a mirror", cat.unmirrored.len().to_string()),
            ("segments not answering", count(&|r| r.process.is_none()).to_string()),
            (
                "segment processes acting",
                count(&|r| {
                    r.process.as_ref().is_some_and(|s| s.acting == Acting::Primary || s.acting == Acting::Mirror)
                })
                .to_string(),
            ),
        ];
        let body: Vec<Vec<String>> = summary.iter().map(|(k, v)| vec![k.to_string(), v.clone()]).collect();
        table(&["", "count"], &body);
    }
    Ok(ExitCode::SUCCESS)
}
