//! What the `filerep` command needs and a host that links the library does
//! not: the cluster tools' process management ([`cluster`]: init, start,
//! stop), child mirror daemons ([`process`]), the seeded demo [`workload`],
//! and the benchmarks ([`bench`], [`bench_resync`], [`bench_cluster`]).

pub mod bench;
pub mod bench_bare;
pub mod bench_cluster;
pub mod bench_mirror_down;
pub mod bench_probe;
pub mod bench_resync;
pub mod cluster;
pub mod cpu;
pub mod output;
pub mod process;
pub mod workload;
