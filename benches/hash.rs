//! Hashing a file that is only read to be hashed (compare-mode resync and
//! online verification: `exec::hash_blocks`, a read per block) against
//! larger reads and against a memory map (memmap2), the alternative issue
//! 18 asked to measure. The
//! file (256 MiB, larger than the caches) stays in the page cache, as a
//! resync's source does. The three ways run interleaved, 15 rounds, and
//! each is timed by this thread's CPU time: on a shared machine wall time
//! swings by a third between runs, CPU time by a few percent.
//! Run: `cargo bench --bench hash`. Findings: docs/performance.md,
//! "Hashing from a memory map".

use filerep::io::disk::{Disk, DiskFile, OpenMode, StdDisk};
use filerep::protocol::path::{FsPath, RelPath};
use std::os::unix::fs::FileExt;

const FILE_BYTES: usize = 256 << 20;
const BLOCK: usize = 32 * 1024;
const ROUNDS: usize = 15;

/// This thread's CPU time (nanosecond clock; getrusage counts in ticks).
fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to fill; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "the thread CPU clock");
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Reads of 1 MiB, each hashed block by block.
fn read_per_mib(file: &std::fs::File) -> Vec<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::with_capacity(FILE_BYTES / BLOCK);
    for chunk in 0..FILE_BYTES >> 20 {
        let n = file.read_at(&mut buf, (chunk << 20) as u64).expect("read");
        out.extend(buf[..n].chunks(BLOCK).map(xxhash_rust::xxh3::xxh3_64));
    }
    out
}

/// The engine's own: `exec::hash_blocks` through the std disk, one read per block.
fn engine(file: &dyn DiskFile) -> Vec<u64> {
    filerep::exec::hash_blocks(Some(file), 0, (FILE_BYTES / BLOCK) as u32, BLOCK as u32).expect("hash")
}

/// Mapped anew each time, as a hashing path would map a file it is asked
/// about (its page faults are part of the cost).
fn mapped(file: &std::fs::File) -> Vec<u64> {
    // SAFETY: the file is this benchmark's own, in its own directory, and
    // nothing writes or truncates it while it is mapped. That is what the
    // engine's hashing paths cannot promise: their files are live, and a
    // file truncated under a mapping raises SIGBUS in the process.
    let map = unsafe { memmap2::Mmap::map(file) }.expect("map");
    let _ = map.advise(memmap2::Advice::Sequential);
    map.chunks(BLOCK).map(xxhash_rust::xxh3::xxh3_64).collect()
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    let data: Vec<u8> = (0..FILE_BYTES).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::write(&path, &data).expect("write the file");
    drop(data);
    let disk = StdDisk::open(&[dir.path().to_path_buf()]).expect("disk");
    let file = disk.open(&FsPath::new(0, RelPath::new("data").expect("path")), OpenMode::Existing).expect("open");
    let plain = std::fs::File::open(&path).expect("open");
    let names = ["exec::hash_blocks (a read per block)", "reads of 1 MiB", "memory map"];
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for _ in 0..ROUNDS {
        let mut results = Vec::new();
        for (i, times) in cpu.iter_mut().enumerate() {
            let start = thread_cpu_s();
            results.push(match i {
                0 => engine(file.as_ref()),
                1 => read_per_mib(&plain),
                _ => mapped(&plain),
            });
            times.push(thread_cpu_s() - start);
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "the three ways disagree");
    }
    println!("CPU per 256 MiB hashed (ms), {ROUNDS} interleaved rounds:");
    for (name, mut times) in names.iter().zip(cpu) {
        times.sort_by(f64::total_cmp);
        println!("  {name:<38} median {:6.1}  min {:6.1}", times[ROUNDS / 2] * 1e3, times[0] * 1e3);
    }
}
