//! `filerep bench --probe-round N`: the arbiter's probe round against the
//! number of segments. N cheap segments in this process answer probes only
//! (each as the role the catalog gives it, so the round orders nothing),
//! and a real arbiter, on a catalog of N/2 pairs, probes them: its round,
//! on connections kept between rounds, timed against its default interval.

use filerep::cluster::control;
use filerep::cluster::probe::{ArbiterProcess, ProbeConfig, DEFAULT_PROBE_THREADS};
use filerep::cluster::segment::{Acting, SegmentRequest, SegmentResponse, SegmentStatus};
use filerep::durable::catalog::{Catalog, SegmentAddress};
use filerep::io::admission::{Limits, Stop};
use filerep::protocol::handshake::ClusterKey;
use serde::Serialize;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// The arbiter's default probe interval (`filerep arbiter --interval-ms`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
/// Rounds timed per size, after one that opens the connections.
const ROUNDS: usize = 5;

#[derive(Clone, Debug, Serialize)]
pub struct ProbeRoundRow {
    pub segments: usize,
    /// Median and slowest of the timed rounds.
    pub round_ms_median: f64,
    pub round_ms_max: f64,
    /// The first round, which opens a connection to every segment.
    pub first_round_ms: f64,
    pub interval_ms: u64,
    pub within_interval: bool,
}

fn status(dbid: u32, content: u32, primary: bool) -> SegmentStatus {
    match primary {
        true => SegmentStatus::plain(dbid, content, Acting::Primary, 1, 's'),
        false => SegmentStatus::plain(dbid, content, Acting::Mirror, 1, '-'),
    }
}

/// Time the round over `segments` (even; at least 2) cheap segments.
pub fn measure(segments: usize, dir: &std::path::Path) -> Result<ProbeRoundRow, String> {
    let pairs = (segments / 2).max(1);
    let key = ClusterKey::from_material(b"probe round bench key material!!").map_err(|e| e.to_string())?;
    let stop = Stop::new().map_err(|e| e.to_string())?;
    let mut addrs = Vec::with_capacity(pairs * 2);
    for i in 0..pairs * 2 {
        let (dbid, content, primary) = (i as u32 + 2, (i / 2) as u32, i % 2 == 0);
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a test segment: {e}"))?;
        addrs.push(SegmentAddress {
            dbid,
            host: "bench".into(),
            control: l.local_addr().map_err(|e| e.to_string())?.to_string(),
            // Never connected to (nothing streams): distinct, as the catalog requires.
            data: format!("127.0.0.1:{}", 1 + i),
            filespaces: Vec::new(),
        });
        let (key, stop) = (key.clone(), stop.clone());
        std::thread::Builder::new()
            .name("bench-segment".into())
            .spawn(move || {
                let answer = move |r: SegmentRequest| match r {
                    SegmentRequest::Probe => SegmentResponse::Status(status(dbid, content, primary)),
                    other => SegmentResponse::Refused(format!("a test segment answers probes only, not {other:?}")),
                };
                control::serve(l, key, stop, (Limits::new(4), control::MAX_BODY), Duration::from_secs(5), answer)
            })
            .map_err(|e| format!("spawning a test segment: {e}"))?;
    }
    let mut it = addrs.into_iter();
    let mut list = Vec::with_capacity(pairs);
    for content in 0..pairs as u32 {
        if let (Some(p), Some(m)) = (it.next(), it.next()) {
            list.push((content, p, m));
        }
    }
    let catalog = dir.join(format!("probe-round-{segments}.json"));
    Catalog::new(7, 8192, list).store(&catalog).map_err(|e| e.to_string())?;
    let arb = ArbiterProcess::open(ProbeConfig {
        catalog,
        key,
        listen: "127.0.0.1:0".into(),
        interval: DEFAULT_INTERVAL,
        timeout: Duration::from_millis(1000),
        retries: 2,
        handshake_timeout: Duration::from_millis(2000),
        probe_threads: DEFAULT_PROBE_THREADS,
        coordinator: None,
    })
    .map_err(|e| e.to_string())?;
    let timed = |arb: &ArbiterProcess| {
        let t = Instant::now();
        arb.probe_round();
        t.elapsed().as_secs_f64() * 1000.0
    };
    let first = timed(&arb);
    let mut rounds: Vec<f64> = (0..ROUNDS).map(|_| timed(&arb)).collect();
    rounds.sort_by(f64::total_cmp);
    let down = arb.segments_down();
    drop(arb);
    stop.stop();
    if down > 0 {
        return Err(format!("{down} of {segments} test segments did not answer the arbiter's probes"));
    }
    let median = rounds[ROUNDS / 2];
    Ok(ProbeRoundRow {
        segments: pairs * 2,
        round_ms_median: median,
        round_ms_max: rounds[ROUNDS - 1],
        first_round_ms: first,
        interval_ms: DEFAULT_INTERVAL.as_millis() as u64,
        within_interval: rounds[ROUNDS - 1] < DEFAULT_INTERVAL.as_secs_f64() * 1000.0,
    })
}

/// The round at 10, 100 and `max` segments (those up to `max`).
pub fn run(max: usize, dir: &std::path::Path) -> Result<Vec<ProbeRoundRow>, String> {
    if !(2..=4096).contains(&max) {
        return Err(format!("--probe-round {max}: give 2 to 4096 segments"));
    }
    let mut sizes: Vec<usize> = [10, 100, max].into_iter().filter(|n| *n <= max).collect();
    sizes.dedup();
    sizes.into_iter().map(|n| measure(n, dir)).collect()
}
