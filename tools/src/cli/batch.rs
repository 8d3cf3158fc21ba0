//! What `recover`, `recover -r`, `verify` and `addmirrors` share to run
//! many pairs at once (gprecoverseg's `-B`): the batch size, one catalog
//! fetched for every pair being followed (not one fetch per pair per
//! tick), and one progress display for the whole run.

use filerep::durable::catalog::Catalog;
use filerep::protocol::handshake::ClusterKey;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most pairs handled at once.
pub const MAX_BATCH: u64 = 256;

/// `-B N`: pairs handled at once.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct BatchArg {
    /// Pairs handled at once (1 to 256), as gprecoverseg -B.
    #[arg(short = 'B', long = "batch-size", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH))]
    pub batch: u64,
}

impl Default for BatchArg {
    fn default() -> Self {
        BatchArg { batch: 16 }
    }
}

/// `f` of every content, `batch` at once: the answers in the order of `contents`.
pub fn each<R: Default + Send>(contents: &[u32], batch: BatchArg, f: impl Fn(u32) -> R + Sync) -> Vec<R> {
    filerep::cluster::probe::at_once(contents, batch.batch as usize, |c| f(*c))
}

/// How old a catalog the pairs being followed may share.
const CATALOG_AGE: Duration = Duration::from_millis(150);

/// The arbiter's catalog, fetched at most once per [`CATALOG_AGE`] for
/// everyone following a pair.
pub struct Watch {
    pub arbiter: String,
    pub key: ClusterKey,
    last: Mutex<Option<(Instant, Arc<Catalog>)>>,
}

impl Watch {
    pub fn new(arbiter: &str, key: &ClusterKey) -> Watch {
        Watch { arbiter: arbiter.to_string(), key: key.clone(), last: Mutex::new(None) }
    }

    /// A catalog no older than [`CATALOG_AGE`].
    pub fn catalog(&self) -> Result<Arc<Catalog>, String> {
        self.catalog_after(None)
    }

    /// A catalog no older than [`CATALOG_AGE`] and fetched after `since`
    /// (a request the caller made then is in it).
    pub fn catalog_after(&self, since: Option<Instant>) -> Result<Arc<Catalog>, String> {
        // Held while fetching: the others wait for this fetch, not make their own.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, cat)) = last.as_ref() {
            if at.elapsed() < CATALOG_AGE && since.is_none_or(|s| *at >= s) {
                return Ok(cat.clone());
            }
        }
        let asked = Instant::now();
        let cat = Arc::new(
            filerep::cluster::probe::fetch_catalog(&self.arbiter, &self.key, Duration::from_secs(5))
                .map_err(|e| format!("cannot read the catalog from {}: {e}", self.arbiter))?,
        );
        *last = Some((asked, cat.clone()));
        Ok(cat)
    }
}

#[derive(Default)]
struct Counts {
    /// content → (done, total), in the run's unit.
    pairs: BTreeMap<u32, (u64, u64)>,
    finished: usize,
    last_line: Option<Instant>,
}

/// One progress display for a run over many pairs: a bar on a terminal
/// (nothing with `--json`), else a plain line every 2 s.
pub struct RunProgress {
    what: &'static str,
    unit: &'static str,
    pairs: usize,
    bar: indicatif::ProgressBar,
    lines: bool,
    counts: Mutex<Counts>,
}

impl RunProgress {
    /// `what` the run does (recover, verify …), over `pairs` pairs, counting `unit` (blocks, bytes).
    pub fn new(what: &'static str, unit: &'static str, pairs: usize, json: bool) -> RunProgress {
        let terminal = std::io::stderr().is_terminal() && !json;
        let bar = if terminal {
            let b = indicatif::ProgressBar::new(0);
            let template = if unit == "bytes" {
                "{prefix} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {msg} ETA {eta}"
            } else {
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} blocks {msg} ETA {eta}"
            };
            b.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(what);
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        RunProgress { what, unit, pairs, bar, lines: !terminal && !json, counts: Mutex::new(Counts::default()) }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn show(&self, c: &mut Counts, extra: &str) {
        let (done, total) = c.pairs.values().fold((0, 0), |(d, t), (pd, pt)| (d + pd, t + pt.max(pd)));
        self.bar.set_length(total);
        self.bar.set_position(done);
        self.bar.set_message(format!("{}/{} pairs done{extra}", c.finished, self.pairs));
        if self.lines && c.last_line.is_none_or(|t| t.elapsed() > Duration::from_secs(2)) {
            let amount = if self.unit == "bytes" {
                format!("{:.1}/{:.1} MiB", done as f64 / 1048576.0, total as f64 / 1048576.0)
            } else {
                format!("{done}/{total} {}", self.unit)
            };
            eprintln!("{}: {}/{} pairs done, {amount}{extra}", self.what, c.finished, self.pairs);
            c.last_line = Some(Instant::now());
        }
    }

    /// A pair's progress: `done` of `total`.
    pub fn update(&self, content: u32, done: u64, total: u64, extra: &str) {
        let mut c = self.counts();
        c.pairs.insert(content, (done, total));
        self.show(&mut c, extra);
    }

    /// A pair is done, whatever its outcome.
    pub fn finished(&self) {
        let mut c = self.counts();
        c.finished += 1;
        self.show(&mut c, "");
    }

    /// Say something above the bar (a line of its own on stderr).
    pub fn say(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
    }
}
