//! `filerep catalog check | restore | seal | show`: the catalog (and the
//! other sealed state files of a cluster directory) checked, put back when
//! damaged, sealed when written by hand, shown.

use crate::cli::target::ClusterArg;
use filerep::durable::catalog::{Catalog, FileStore};
use filerep::durable::sealed;
use filerep_tools::cluster::{self, ClusterDir};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CatalogCmd {
    #[command(subcommand)]
    what: What,
}

/// A cluster directory, or a lone catalog file (an arbiter run by hand).
#[derive(clap::Args, Clone)]
struct Which {
    #[command(flatten)]
    cluster: ClusterArg,
    /// A catalog file outside a cluster directory (only its last good copy can
    /// restore it); it takes the place of the cluster directory.
    #[arg(long)]
    catalog: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum What {
    /// Check the catalog, its last good copy, the cluster file and every segment configuration: checksums, rules, agreement.
    Check {
        #[command(flatten)]
        which: Which,
    },
    /// Put back a damaged catalog and cluster file: from the running arbiter, the last good copy, or rebuilt from the segments.
    Restore {
        #[command(flatten)]
        which: Which,
        /// Rebuild the catalog from the segments even if a good copy exists.
        #[arg(long)]
        rebuild: bool,
        /// CONTENT=DBID: the acting primary of a content whose segments cannot tell (with a rebuild).
        #[arg(long = "primary", value_parser = parse_primary)]
        primaries: Vec<(u32, u32)>,
    },
    /// Seal a catalog, cluster file or segment configurations written by hand (or by an older filerep), once they check.
    Seal {
        #[command(flatten)]
        which: Which,
    },
    /// Print the catalog's JSON.
    Show {
        #[command(flatten)]
        which: Which,
    },
}

fn parse_primary(s: &str) -> Result<(u32, u32), String> {
    let (c, d) = s.split_once('=').ok_or_else(|| format!("{s:?}: give CONTENT=DBID, e.g. 2=7"))?;
    let n = |x: &str, what: &str| x.parse::<u32>().map_err(|_| format!("{s:?}: the {what} {x:?} is not a number"));
    Ok((n(c, "content")?, n(d, "dbid")?))
}

impl Which {
    /// The cluster directory, or `None` with a lone catalog file.
    fn resolve(&self) -> Result<(Option<ClusterDir>, PathBuf), String> {
        match &self.catalog {
            Some(f) => Ok((None, crate::cli::ops::absolute(f)?)),
            None => {
                let dir = self.cluster.dir()?;
                let cat = dir.catalog();
                Ok((Some(dir), cat))
            }
        }
    }
}

pub fn run(c: CatalogCmd) -> Result<ExitCode, String> {
    match c.what {
        What::Check { which } => check(&which),
        What::Restore { which, rebuild, primaries } => restore(&which, rebuild, &primaries.into_iter().collect()),
        What::Seal { which } => seal(&which),
        What::Show { which } => {
            let (dir, path) = which.resolve()?;
            let cat = match coordinated(&dir) {
                // A cluster on a coordinator: its catalog is on etcd.
                Some((dir, file)) => dir.load_catalog(&file),
                None => Catalog::load(&path),
            }
            .map_err(|e| e.to_string())?;
            outln!("{}", serde_json::to_string_pretty(&cat).map_err(|e| e.to_string())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(which: &Which) -> Result<ExitCode, String> {
    let (dir, path) = which.resolve()?;
    let mut bad = 0;
    let mut say = |what: String, r: Result<String, String>| match r {
        Ok(fine) => outln!("{what}: {fine}"),
        Err(e) => {
            bad += 1;
            outln!("{what}: {e}");
        }
    };
    let on_coordinator = coordinated(&dir).map(|(_, f)| f.coordinator.unwrap_or_default());
    if on_coordinator.is_none() {
        let good = sealed::good_copy(&path);
        let copy = std::fs::read(&good).map_err(|e| e.to_string()).and_then(|b| Catalog::from_bytes(&b));
        say(good.display().to_string(), copy.map(|_| "whole".into()));
    }
    match &dir {
        None => {
            say(path.display().to_string(), Catalog::load(&path).map(|_| "whole".into()).map_err(|e| e.to_string()))
        }
        Some(dir) => {
            let file = dir.load();
            say(
                dir.cluster_file().display().to_string(),
                file.as_ref().map(|_| "whole".into()).map_err(|e| e.to_string()),
            );
            if let Ok(file) = &file {
                let r = dir.load_catalog(file).map(|c| {
                    format!(
                        "whole, {} pairs and {} contents without a mirror, agreeing with every segment's configuration",
                        c.pairs.len(),
                        c.unmirrored.len()
                    )
                });
                let what = on_coordinator
                    .clone()
                    .map_or_else(|| path.display().to_string(), |c| format!("the catalog on {c}"));
                say(what, r.map_err(|e| e.to_string()));
            }
            let segments = dir.root.join("segments");
            let mut configs: Vec<PathBuf> = std::fs::read_dir(&segments)
                .map_err(|e| format!("{}: {e}", segments.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            configs.sort();
            for p in configs {
                let r = filerep::cluster::segment::SegmentConfig::load(&p)
                    .map(|_| "whole".to_string())
                    .map_err(|e| e.to_string());
                say(p.display().to_string(), r);
            }
        }
    }
    if on_coordinator.is_none() {
        history(&path);
    }
    if bad > 0 {
        eprintln!("{bad} damaged; restore them with: filerep catalog restore {}", how(&dir, &path));
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The cluster directory and its file, when the cluster keeps its catalog
/// on a coordinator (no catalog file, no last good copy, no history file).
fn coordinated(dir: &Option<ClusterDir>) -> Option<(ClusterDir, cluster::ClusterFile)> {
    let dir = dir.as_ref()?;
    let file = dir.load().ok().filter(|f| f.coordinator.is_some())?;
    Some((dir.clone(), file))
}

/// The history file's state, said: it only informs (a damaged one is cut
/// back to what reads at the catalog's next change), so it fails no check.
fn history(catalog: &Path) {
    let file = PathBuf::from(format!("{}.history", catalog.display()));
    let Ok(cat) = Catalog::load(catalog) else { return };
    let expected = (cat.history_total as usize).min(filerep::durable::catalog::MAX_HISTORY);
    let state = match (file.exists(), cat.history.len()) {
        (false, 0) => "absent (no change recorded yet)".to_string(),
        (false, n) => format!("absent: the catalog holds its {n} entries itself (from before the history file)"),
        (true, n) if n == expected => format!("whole, the last {n} of {} changes", cat.history_total),
        (true, n) => format!(
            "{n} of the last {expected} changes read (the rest is damaged or missing; the history only informs,              and the catalog's next change cuts the file back to what reads)"
        ),
    };
    outln!("{}: {state}", file.display());
}

fn how(dir: &Option<ClusterDir>, path: &Path) -> String {
    match dir {
        Some(d) => format!("--cluster-dir {}", d.root.display()),
        None => format!("--catalog {}", path.display()),
    }
}

fn restore(which: &Which, rebuild: bool, primaries: &BTreeMap<u32, u32>) -> Result<ExitCode, String> {
    let (dir, path) = which.resolve()?;
    let Some(dir) = dir else {
        // A lone catalog: its last good copy, or nothing.
        if Catalog::load(&path).is_ok() {
            outln!("{}: whole: nothing to restore", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        let _lock = FileStore::lock(&path).map_err(|e| format!("{}; stop the arbiter first", e.cause()))?;
        let good = sealed::good_copy(&path);
        let bytes = std::fs::read(&good).map_err(|e| format!("{}: {e}: nothing to restore from", good.display()))?;
        Catalog::from_bytes(&bytes)
            .map_err(|why| format!("the last good copy {} is not whole either: {why}", good.display()))?;
        sealed::replace(&path, &bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
        outln!("{}: put back from its last good copy", path.display());
        return Ok(ExitCode::SUCCESS);
    };
    let r = cluster::restore(&dir, rebuild, primaries).map_err(|e| e.to_string())?;
    for line in r.done.iter().chain(&r.notes) {
        outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Seal what is plain JSON, once it reads and checks.
fn seal(which: &Which) -> Result<ExitCode, String> {
    let (dir, path) = which.resolve()?;
    let plain = |p: &Path| -> Result<Option<Vec<u8>>, String> {
        let b = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(sealed::looks_like_json(&b).then_some(b))
    };
    if let Some(dir) = &dir {
        if let Some(json) = plain(&dir.cluster_file())? {
            let file: cluster::ClusterFile =
                serde_json::from_slice(&json).map_err(|e| format!("{}: {e}", dir.cluster_file().display()))?;
            dir.write_cluster_file(&file).map_err(|e| e.to_string())?;
            outln!("{}: sealed", dir.cluster_file().display());
        }
        let segments = dir.root.join("segments");
        for e in std::fs::read_dir(&segments).map_err(|e| format!("{}: {e}", segments.display()))?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") && plain(&p)?.is_some() {
                let cfg = filerep::cluster::segment::SegmentConfig::load(&p).map_err(|e| e.to_string())?;
                dir.write_segment(&cfg).map_err(|e| e.to_string())?;
                outln!("{}: sealed", p.display());
            }
        }
    }
    if coordinated(&dir).is_some() {
        // No catalog file to seal: the catalog is on etcd.
        return Ok(ExitCode::SUCCESS);
    }
    match plain(&path)? {
        Some(json) => {
            let cat =
                Catalog::from_json(&json).map_err(|why| format!("{}: {why}; fix it, then seal it", path.display()))?;
            let _lock = FileStore::lock(&path).map_err(|e| format!("{}; stop the arbiter first", e.cause()))?;
            cat.store(&path).map_err(|e| e.to_string())?;
            outln!("{}: sealed", path.display());
        }
        None => outln!("{}: already sealed", path.display()),
    }
    Ok(ExitCode::SUCCESS)
}
