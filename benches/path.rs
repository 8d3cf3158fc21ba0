//! The whole primary-to-mirror path without a disk or a network (criterion):
//! a real [`Primary`] and a real mirror session (`MirrorServer::serve_conn`)
//! joined by the in-memory connection, each over the simulator's in-memory
//! disk. What is left is the CPU of the path itself: the engine, framing,
//! checksums, the mirror's decode, validation and apply, the
//! acknowledgements, and the hand-offs between threads. A change that adds
//! CPU to the path shows here (docs/performance.md, "Regression guard").
//!
//! Run: `cargo bench --bench path`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use filerep::config::{Filespace, PairIdentity, StreamTuning, SyncLevel};
use filerep::io::disk::{Disk, SimDisk};
use filerep::protocol::handshake::ClusterKey;
use filerep::runtime::mirror::{MirrorConfig, MirrorServer};
use filerep::runtime::primary::{Primary, PrimaryConfig};
use std::sync::Arc;
use std::time::Duration;

const CLUSTER: u64 = 0x9a7;
const KEY: &[u8] = b"path benchmark cluster key, not a secret";
/// Blocks the writes cycle over (the in-memory files stay bounded).
const BLOCKS: u64 = 512;

/// A primary streaming to an in-process mirror session over memory.
struct Pair {
    primary: Primary,
    session: Option<std::thread::JoinHandle<()>>,
    _dirs: [tempfile::TempDir; 2],
}

impl Pair {
    fn start(block_size: u32, level: SyncLevel) -> Pair {
        let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
        let fs = |d: &tempfile::TempDir| vec![Filespace { name: "bench".into(), root: d.path().to_path_buf() }];
        let key = ClusterKey::from_material(KEY).expect("key");
        let identity = PairIdentity { cluster_id: CLUSTER, content_id: 0, block_size, generation: 1 };
        let server = MirrorServer::with_disk(
            MirrorConfig {
                cluster_id: CLUSTER,
                content_id: 0,
                block_size,
                filespaces: fs(&dirs[1]),
                key: key.clone(),
                generation: 1,
                tuning: StreamTuning::default(),
                prefer_uring: false,
                direct: false,
                state_dir: None,
            },
            Arc::new(SimDisk::new(1)) as Arc<dyn Disk>,
        )
        .expect("mirror");
        let (p_conn, m_conn) = filerep::io::net::mem_pair(256 * 1024, 1024);
        let session = std::thread::spawn(move || {
            server.serve_conn(m_conn, "memory");
        });
        let primary = Primary::start_with_disk(
            PrimaryConfig {
                identity,
                filespaces: fs(&dirs[0]),
                key,
                sync_level: level,
                tuning: StreamTuning::default(),
                prefer_uring: false,
                direct: false,
                change_tracking: None,
            },
            Arc::new(SimDisk::new(1)) as Arc<dyn Disk>,
            p_conn,
            "memory",
        )
        .expect("primary");
        primary.create(0, "f").expect("create");
        Pair { primary, session: Some(session), _dirs: dirs }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.primary.shutdown(Duration::from_secs(10));
        if let Some(s) = self.session.take() {
            let _ = s.join();
        }
    }
}

/// One block write, acknowledged at the level given (applied: the
/// mirror's apply is in the time; async: only the primary's side).
fn write_block(c: &mut Criterion) {
    let mut g = c.benchmark_group("path/write_block");
    for (level, name) in [(SyncLevel::Applied, "applied"), (SyncLevel::Async { window: 256 }, "async")] {
        for bs in [8192u32, 32768] {
            let pair = Pair::start(bs, level);
            let data = vec![0xa5u8; bs as usize];
            let mut i = 0u64;
            g.throughput(Throughput::Bytes(bs as u64));
            g.bench_with_input(BenchmarkId::new(name, bs), &data, |b, d| {
                b.iter(|| {
                    pair.primary.write_block(0, "f", i % BLOCKS, d).expect("write");
                    i += 1;
                })
            });
        }
    }
    g.finish();
}

/// A write and a sync of its file: the round trip to the mirror's apply
/// and sync and back. The file is kept to four blocks: the in-memory
/// disk's sync copies the whole file, which is not the path's cost.
fn write_and_sync(c: &mut Criterion) {
    let pair = Pair::start(32768, SyncLevel::Applied);
    let data = vec![0x3cu8; 32768];
    let mut i = 0u64;
    c.bench_function("path/write_and_sync/32768", |b| {
        b.iter(|| {
            pair.primary.write_block(0, "f", i % 4, &data).expect("write");
            pair.primary.sync(0, "f").expect("sync");
            i += 1;
        })
    });
}

criterion_group!(benches, write_block, write_and_sync);
criterion_main!(benches);
