//! What a segment's start pays for its change-log (criterion):
//! `ChangeLog::open` replays the file, then rewrites what it read into a
//! fresh durable file (rule 8: a group a failed fdatasync let go may still
//! read back from the page cache). The cost grows with the distinct blocks
//! it names: after a long outage that is every block changed meanwhile.
//! Measured on a real file system (the bench's temporary directory), with
//! the worst layout for its runs: no two named blocks adjacent.
//!
//! Run: `cargo bench --bench changelog`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use filerep::durable::changelog::ChangeLog;
use filerep::io::disk::{Disk, FsPath, StdDisk};
use filerep::protocol::path::RelPath;
use std::sync::Arc;

/// Files the named blocks are spread over.
const FILES: u64 = 100;

fn log_path() -> FsPath {
    FsPath::new(0, RelPath::new("changelog").expect("path"))
}

/// A change-log in `dir` naming `blocks` scattered blocks.
fn written(dir: &std::path::Path, blocks: u64) -> Arc<dyn Disk> {
    let disk: Arc<dyn Disk> = Arc::new(StdDisk::open(&[dir.to_path_buf()]).expect("disk"));
    let log = ChangeLog::create(disk.clone(), log_path(), 8192).expect("create");
    let per_file = blocks / FILES;
    for f in 0..FILES {
        let file = FsPath::new(0, RelPath::new(&format!("base/{f}")).expect("path"));
        log.record_batch((0..per_file).map(|b| (file.clone(), b * 2)), []).expect("record");
    }
    disk
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("changelog_open");
    g.sample_size(10);
    for blocks in [10_000u64, 100_000, 1_000_000] {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = written(dir.path(), blocks);
        g.throughput(Throughput::Elements(blocks));
        g.bench_with_input(BenchmarkId::from_parameter(blocks), &blocks, |b, &blocks| {
            b.iter(|| {
                let (log, _) = ChangeLog::open(disk.clone(), log_path()).expect("open");
                assert_eq!(log.change_set().distinct_blocks(), blocks);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
