//! Shared helpers for the integration tests.
#![allow(dead_code)]

#[macro_use]
pub mod pair;

pub mod etcd;

pub mod postgres;

pub mod sqlite;

pub mod tree;

use filerep::config::{Filespace, PairIdentity, StreamTuning, SyncLevel};
use filerep::protocol::handshake::ClusterKey;
use filerep::runtime::mirror::{MirrorConfig, MirrorServer, SessionReport};
use filerep::runtime::primary::{Primary, PrimaryConfig};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const KEY: &[u8] = b"test cluster key: not for production";
pub const CLUSTER: u64 = 0xc1;
pub const NAMES: [&str; 2] = ["pg_system", "fs_fast"];

/// Primary and mirror roots for two filespaces under one temporary directory.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
    pub primary: Vec<Filespace>,
    pub mirror: Vec<Filespace>,
}

impl Dirs {
    pub fn new() -> Dirs {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut primary = Vec::new();
        let mut mirror = Vec::new();
        for n in NAMES {
            let p = tmp.path().join("primary").join(n);
            let m = tmp.path().join("mirror").join(n);
            std::fs::create_dir_all(&p).expect("mkdir");
            std::fs::create_dir_all(&m).expect("mkdir");
            primary.push(Filespace { name: n.into(), root: p });
            mirror.push(Filespace { name: n.into(), root: m });
        }
        Dirs { tmp, primary, mirror }
    }

    pub fn key_file(&self) -> PathBuf {
        let p = self.tmp.path().join("cluster.key");
        std::fs::write(&p, KEY).expect("key file");
        p
    }

    /// Compare every filespace; panics with the differing rows.
    pub fn assert_identical(&self) -> filerep::verify::Comparison {
        let refs: Vec<(String, &Path, &Path)> = self
            .primary
            .iter()
            .zip(&self.mirror)
            .map(|(p, m)| (p.name.clone(), p.root.as_path(), m.root.as_path()))
            .collect();
        let cmp = filerep::verify::compare(&refs).expect("compare");
        let bad: Vec<_> = cmp.rows.iter().filter(|r| !r.identical()).collect();
        assert!(bad.is_empty(), "mirror differs: {bad:#?}");
        cmp
    }

    /// Every entry in the mirror's filespaces.
    pub fn mirror_entries(&self) -> usize {
        self.mirror.iter().map(|f| filerep::verify::scan(&f.root).expect("scan").len()).sum()
    }
}

pub fn identity(block_size: u32) -> PairIdentity {
    PairIdentity { cluster_id: CLUSTER, content_id: 0, block_size, generation: 1 }
}

pub fn primary_config(dirs: &Dirs, block_size: u32, level: SyncLevel) -> PrimaryConfig {
    PrimaryConfig {
        identity: identity(block_size),
        filespaces: dirs.primary.clone(),
        key: ClusterKey::from_material(KEY).expect("key"),
        sync_level: level,
        tuning: StreamTuning::default(),
        prefer_uring: true,
        direct: false,
        change_tracking: None,
    }
}

pub fn connect_primary(cfg: PrimaryConfig, addr: SocketAddr) -> filerep::Result<Primary> {
    let stream = TcpStream::connect(addr).expect("connect");
    Primary::start(cfg, filerep::io::net::tcp(stream).expect("tcp"), &addr.to_string())
}

/// An in-process mirror serving one connection after another on loopback,
/// reporting how each ended.
pub struct InProcessMirror {
    pub addr: SocketAddr,
    pub reports: crossbeam_channel::Receiver<SessionReport>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessMirror {
    pub fn start(dirs: &Dirs, block_size: u32, generation: u64) -> InProcessMirror {
        let server = MirrorServer::new(MirrorConfig {
            cluster_id: CLUSTER,
            content_id: 0,
            block_size,
            filespaces: dirs.mirror.clone(),
            key: ClusterKey::from_material(KEY).expect("key"),
            generation,
            tuning: StreamTuning { ack_timeout: Duration::from_secs(5), ..StreamTuning::default() },
            prefer_uring: true,
            direct: false,
            state_dir: None,
        })
        .expect("mirror");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, reports) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                let conn = filerep::io::net::tcp(stream).expect("tcp");
                let report = server.serve_conn(conn, &peer);
                if tx.send(report).is_err() {
                    break;
                }
            }
        });
        InProcessMirror { addr, reports, stop, thread: Some(thread) }
    }

    /// The report of the next connection to end.
    pub fn next_report(&self) -> SessionReport {
        self.reports.recv_timeout(Duration::from_secs(30)).expect("a session report")
    }
}

impl Drop for InProcessMirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Arguments for a `filerep mirror` daemon serving `dirs` on a free port.
pub fn mirror_args(dirs: &Dirs, block_size: u32, extra: Vec<String>) -> filerep_tools::process::MirrorArgs {
    filerep_tools::process::MirrorArgs {
        filespaces: dirs.mirror.clone(),
        key_file: dirs.key_file(),
        cluster_id: CLUSTER,
        content_id: 0,
        block_size,
        generation: 1,
        listen: "127.0.0.1:0".into(),
        extra,
    }
}

/// A real `filerep mirror` daemon process for `dirs`.
pub fn spawn_daemon(dirs: &Dirs, block_size: u32) -> filerep_tools::process::MirrorProcess {
    filerep_tools::process::MirrorProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_filerep")),
        &mirror_args(dirs, block_size, vec![]),
    )
    .expect("mirror daemon")
}

/// Write blocks 0..4 of `path` over and over until a call fails (the mirror
/// is gone); panics if 10,000 calls all succeed.
pub fn first_failing_write(p: &Primary, path: &str, block_size: usize) -> filerep::Error {
    for i in 0..10_000u64 {
        if let Err(e) = p.write_block(0, path, i % 4, &vec![(i % 251) as u8; block_size]) {
            return e;
        }
    }
    panic!("10,000 writes succeeded after the mirror was lost");
}

/// A mirror configuration for `dirs` (no state directory, std I/O).
pub fn mirror_config(dirs: &Dirs, block_size: u32) -> filerep::runtime::mirror::MirrorConfig {
    filerep::runtime::mirror::MirrorConfig {
        cluster_id: CLUSTER,
        content_id: 0,
        block_size,
        filespaces: dirs.mirror.clone(),
        key: ClusterKey::from_material(KEY).expect("key"),
        generation: 1,
        tuning: StreamTuning::default(),
        prefer_uring: false,
        direct: false,
        state_dir: None,
    }
}
