//! `filerep demo`: by default the whole story of a mirrored cluster
//! (`story.rs`). With `--pair`: a real mirror daemon process and a primary
//! on loopback, a randomized multi-writer workload over two filespaces, and
//! the proof that the mirror is byte-identical.

use filerep::config::{Filespace, PairIdentity, StreamTuning, SyncLevel};
use filerep::protocol::handshake::ClusterKey;
use filerep::runtime::primary::{Primary, PrimaryConfig};
use filerep::verify::{Comparison, Entry};
use filerep_tools::process::{MirrorArgs, MirrorProcess};
use filerep_tools::workload::{self, WorkloadConfig};
use rand::RngCore;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct DemoCmd {
    /// One pair and a workload only (no cluster, arbiter or failover).
    #[arg(long)]
    pair: bool,
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Operations per writer.
    #[arg(long, default_value_t = 250)]
    ops: usize,
    /// Workload seed (random when not given; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 32768)]
    block_size: u32,
    /// applied (default), durable, async or async:WINDOW
    #[arg(long, default_value = "applied")]
    sync_level: String,
    /// Keep the data directories afterwards and print where they are.
    #[arg(long)]
    keep: bool,
    #[arg(long)]
    std_io: bool,
    /// Rows of the comparison table to print (all when 0).
    #[arg(long, default_value_t = 0)]
    rows: usize,
}

fn show(e: &Option<Entry>) -> (String, String) {
    match e {
        None => ("-".into(), "missing".into()),
        Some(Entry::Dir) => ("dir".into(), "".into()),
        Some(Entry::Other) => ("other".into(), "".into()),
        Some(Entry::File { len, xxh3 }) => (len.to_string(), format!("{xxh3:016x}")),
    }
}

pub fn print_comparison(cmp: &Comparison, rows: usize) {
    outln!("{:<10} {:<36} {:>10} {:<16} {:<16} status", "filespace", "path", "bytes", "primary xxh3", "mirror xxh3");
    for (i, r) in cmp.rows.iter().enumerate() {
        if i >= rows {
            outln!("... {} more rows", cmp.rows.len() - rows);
            break;
        }
        let (len, ph) = show(&r.primary);
        let (mlen, mh) = show(&r.mirror);
        let status = if r.identical() { "identical" } else { "DIFFERENT" };
        let size = if r.primary.is_some() { len } else { mlen };
        outln!("{:<10} {:<36} {:>10} {:<16} {:<16} {}", r.filespace, r.path, size, ph, mh, status);
    }
    outln!(
        "{} files, {} directories, {} bytes compared: {}",
        cmp.files,
        cmp.dirs,
        cmp.bytes,
        if cmp.identical() {
            "the mirror is byte-identical".to_string()
        } else {
            format!("{} DIFFERENCES", cmp.differences)
        }
    );
}

pub fn run(c: DemoCmd) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let sync_level = SyncLevel::parse(&c.sync_level)?;
    filerep::config::check_block_size(c.block_size)?;
    if c.writers == 0 || c.writers > 256 {
        return Err(format!("--writers {}: give 1 to 256", c.writers).into());
    }
    let seed = c.seed.unwrap_or_else(|| rand::rngs::OsRng.next_u64() >> 16);
    if !c.pair {
        return crate::cli::story::run_story(c.block_size, seed, c.keep);
    }
    let tmp = tempfile::Builder::new().prefix("filerep-demo").tempdir()?;
    let root = tmp.path();
    let names = ["pg_system", "fs_fast"];
    let mut primary_fs = Vec::new();
    let mut mirror_fs = Vec::new();
    for n in names {
        let p = root.join("primary").join(n);
        let m = root.join("mirror").join(n);
        std::fs::create_dir_all(&p)?;
        std::fs::create_dir_all(&m)?;
        primary_fs.push(Filespace { name: n.into(), root: p });
        mirror_fs.push(Filespace { name: n.into(), root: m });
    }
    let key_file = root.join("cluster.key");
    let mut material = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut material);
    let hex: String = material.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key_file, &hex)?;

    outln!(
        "filerep demo: seed {seed}, {} writers x {} operations, {} B blocks, sync level {}",
        c.writers,
        c.ops,
        c.block_size,
        sync_level.name()
    );
    outln!(
        "data under {} ({})",
        root.display(),
        if c.keep { "kept afterwards" } else { "removed at the end; --keep keeps it" }
    );
    let identity = PairIdentity { cluster_id: 0xdead_beef, content_id: 0, block_size: c.block_size, generation: 1 };
    let exe = std::env::current_exe()?;
    let mirror = MirrorProcess::spawn(
        &exe,
        &MirrorArgs {
            filespaces: mirror_fs.clone(),
            key_file: key_file.clone(),
            cluster_id: identity.cluster_id,
            content_id: 0,
            block_size: c.block_size,
            generation: 1,
            listen: "127.0.0.1:0".into(),
            extra: if c.std_io { vec!["--std-io".into()] } else { vec![] },
        },
    )?;
    outln!("mirror daemon: pid {} listening on {}", mirror.pid, mirror.addr);
    let stream = std::net::TcpStream::connect(mirror.addr)?;
    let primary = Arc::new(Primary::start(
        PrimaryConfig {
            identity,
            filespaces: primary_fs.clone(),
            key: ClusterKey::from_material(hex.as_bytes())?,
            sync_level,
            tuning: StreamTuning::default(),
            prefer_uring: !c.std_io,
            direct: false,
            change_tracking: None,
        },
        filerep::io::net::tcp(stream)?,
        &mirror.addr.to_string(),
    )?);
    outln!("primary: handshake done, streaming\n");

    let started = Instant::now();
    let report = workload::run(&primary, &WorkloadConfig { writers: c.writers, ops_per_writer: c.ops, seed })?;
    let last = primary.shutdown(Duration::from_secs(30))?;
    let elapsed = started.elapsed();
    let stats = primary.stats();
    drop(primary);
    let status = mirror.stop()?;

    outln!("{:<14} {:>10}", "operation", "count");
    for (k, v) in &report.by_kind {
        outln!("{k:<14} {v:>10}");
    }
    outln!("{:<14} {:>10}\n", "total", report.operations);
    let payload = stats.payload_bytes as f64;
    outln!(
        "shipped {} frames in {} batches, {:.1} MiB on the wire for {:.1} MiB of payload ({:.2}% overhead)",
        stats.frames_sent,
        stats.batches_sent,
        stats.wire_bytes_sent as f64 / 1048576.0,
        payload / 1048576.0,
        (stats.wire_bytes_sent as f64 - payload) / payload.max(1.0) * 100.0
    );
    outln!(
        "{} operations in {:.2} s: {:.0} ops/s, {:.1} MB/s of payload; last sequence {last}, durable on the mirror through {}",
        report.operations,
        elapsed.as_secs_f64(),
        report.operations as f64 / elapsed.as_secs_f64(),
        payload / 1e6 / elapsed.as_secs_f64(),
        stats.acked_durable
    );
    outln!("mirror daemon stopped: {status}\n");

    let refs: Vec<(String, &std::path::Path, &std::path::Path)> =
        primary_fs.iter().zip(&mirror_fs).map(|(p, m)| (p.name.clone(), p.root.as_path(), m.root.as_path())).collect();
    let cmp = filerep::verify::compare(&refs)?;
    print_comparison(&cmp, if c.rows == 0 { usize::MAX } else { c.rows });
    if c.keep {
        let kept = tmp.keep();
        outln!("kept {}", kept.display());
    }
    Ok(if cmp.identical() && cmp.files > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
