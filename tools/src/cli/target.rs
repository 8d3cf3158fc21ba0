//! Which cluster a command works on: its directory, given by
//! `--cluster-dir` or `FILEREP_CLUSTER_DIR`, from which the arbiter's
//! address and the key are read; `recover` and `verify` also take the
//! arbiter's address and the key file directly.

use filerep::protocol::handshake::ClusterKey;
use filerep_tools::cluster::ClusterDir;
use std::path::PathBuf;

/// `--cluster-dir DIR`, or `FILEREP_CLUSTER_DIR`.
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterArg {
    /// The cluster's directory (default: $FILEREP_CLUSTER_DIR).
    #[arg(long, env = "FILEREP_CLUSTER_DIR")]
    pub cluster_dir: Option<PathBuf>,
}

impl ClusterArg {
    pub fn dir(&self) -> Result<ClusterDir, String> {
        let d = self.cluster_dir.as_ref().ok_or_else(|| {
            "which cluster? give --cluster-dir DIR, or set FILEREP_CLUSTER_DIR=DIR (the directory filerep init made)"
                .to_string()
        })?;
        Ok(ClusterDir::new(crate::cli::ops::absolute(d)?))
    }
}

/// The cluster as `recover` and `verify` reach it: the arbiter and the key.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    #[command(flatten)]
    pub cluster: ClusterArg,
    /// The arbiter's control address (default: the cluster directory's).
    #[arg(long)]
    pub arbiter: Option<String>,
    /// File holding the cluster key (default: the cluster directory's).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

impl Target {
    /// The arbiter's address and the cluster key: each as given, else
    /// from the cluster directory.
    pub fn reach(&self) -> Result<(String, ClusterKey), String> {
        let dir = match (&self.arbiter, &self.key_file) {
            (Some(_), Some(_)) => None,
            _ => Some(
                self.cluster.dir().map_err(|e| format!("{e}; or give both --arbiter HOST:PORT and --key-file FILE"))?,
            ),
        };
        let arbiter = match (&self.arbiter, &dir) {
            (Some(a), _) => a.clone(),
            (None, Some(d)) => d.load().map_err(|e| e.to_string())?.arbiter,
            (None, None) => return Err("give --arbiter HOST:PORT or --cluster-dir DIR".into()),
        };
        let key = match (&self.key_file, &dir) {
            (Some(f), _) => ClusterKey::from_file(f).map_err(|e| e.to_string())?,
            (None, Some(d)) => d.key().map_err(|e| e.to_string())?,
            (None, None) => return Err("give --key-file FILE or --cluster-dir DIR".into()),
        };
        Ok((arbiter, key))
    }

    pub fn of(dir: &ClusterDir) -> Target {
        Target { cluster: ClusterArg { cluster_dir: Some(dir.root.clone()) }, arbiter: None, key_file: None }
    }
}
