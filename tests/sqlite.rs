//! SQLite on the segment's own mount, failed over (issue 19).
//!
//! A real pair; the primary segment serves its filespace as a file system
//! (`filerep segment --mount`). The `sqlite3` program writes a database
//! there, with the WAL or with the rollback journal and `synchronous=FULL`:
//! transactions of one row and of five, each acknowledged (a line on its
//! output) only after its COMMIT returned, and in WAL mode a checkpoint
//! every few transactions besides SQLite's own. The primary segment is then
//! killed with SIGKILL, as a host crash would end it (its mount with it), at
//! a seeded moment: right after a checkpoint began, or after a seeded number
//! of acknowledgements, in the middle of the transactions that follow. The
//! arbiter promotes the mirror; the promoted side's filespace is mounted
//! (`filerep mount`) and SQLite must open the database as it would after a
//! crash of its own host:
//!
//! - `PRAGMA integrity_check` is `ok`;
//! - every acknowledged transaction is there;
//! - the rows present are exactly ids 1..=N with N the end of a
//!   transaction: nothing from a transaction that did not commit, nothing
//!   half of one.
//!
//! Needs FUSE and the `sqlite3` and `stdbuf` programs (Debian: sqlite3,
//! coreutils). Skipped, with the reason printed, where one is missing,
//! unless FILEREP_REQUIRE_SQLITE=1 (CI), which makes that a failure.
//! `FILEREP_SQLITE_SEED` and `FILEREP_SQLITE_ROUNDS` vary the kill points.

#[macro_use]
mod common;

use common::pair::{fuse_unavailable, kill, skipped, wait_for, Mount, Pair};
use common::sqlite;
use filerep::cluster::segment::Acting;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

const BS: u32 = 8192;

fn prerequisites(name: &str) -> bool {
    let have = |program: &str, arg: &str| {
        Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    let missing = match fuse_unavailable() {
        Some(why) => Some(why),
        None if !sqlite::available() => Some("no sqlite3 program on PATH (Debian: apt-get install sqlite3)".into()),
        None if !have("stdbuf", "--version") => Some("no stdbuf program on PATH (Debian: coreutils)".into()),
        None => None,
    };
    match missing {
        None => true,
        Some(why) if std::env::var_os("FILEREP_REQUIRE_SQLITE").is_some_and(|v| v == "1") => {
            panic!("{name}: FILEREP_REQUIRE_SQLITE=1 but {why}")
        }
        Some(why) => {
            skipped(name, &why);
            false
        }
    }
}

/// Where the primary dies.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// Right after the line printed just before an explicit checkpoint.
    Checkpoint,
    /// Once this many transactions were acknowledged.
    Acknowledged(u64),
}

/// The statements the writer runs: transactions of 1 or 5 rows with ids
/// 1, 2, 3...; after each COMMIT, `acked LAST_ID`; in WAL mode, every 7th
/// transaction is followed by `ckpt LAST_ID` and a checkpoint. Returns the
/// script and the id that ends each transaction.
fn script(wal: bool, rng: &mut impl Rng, transactions: usize) -> (String, Vec<u64>) {
    // What the pragmas answer is not output of ours: sent nowhere.
    let mut s = String::from(".bail on\n.output /dev/null\n");
    if wal {
        s.push_str("PRAGMA journal_mode=WAL;\nPRAGMA wal_autocheckpoint=16;\n");
    } else {
        s.push_str("PRAGMA journal_mode=DELETE;\n");
    }
    s.push_str("PRAGMA synchronous=FULL;\n.output\nCREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);\n");
    let (mut next, mut ends) = (1u64, Vec::with_capacity(transactions));
    for tx in 0..transactions {
        let rows = if rng.gen_bool(0.3) { 5 } else { 1 };
        s.push_str("BEGIN;\n");
        for _ in 0..rows {
            // Rows of 200 to 3000 bytes: some transactions span pages.
            s.push_str(&format!("INSERT INTO t(id, v) VALUES ({next}, randomblob({}));\n", rng.gen_range(200..3000)));
            next += 1;
        }
        s.push_str(&format!("COMMIT;\nSELECT 'acked ' || {};\n", next - 1));
        ends.push(next - 1);
        if wal && tx % 7 == 6 {
            s.push_str(&format!(
                "SELECT 'ckpt ' || {};\n.output /dev/null\nPRAGMA wal_checkpoint(TRUNCATE);\n.output\n",
                next - 1
            ));
        }
    }
    (s, ends)
}

fn round(wal: bool, seed: u64, kill_at: KillAt) {
    let what = format!("{} journal, seed {seed}, kill at {kill_at:?}", if wal { "WAL" } else { "rollback" });
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pair = Pair::start_with(BS, |seg| seg.try_start_mounting("pg_system", &[]));
    let mut own = Mount { child: None, path: pair.seg(2).own_mountpoint("pg_system") };
    let db = own.p("app.db");
    let (sql, ends) = script(wal, &mut rng, 20_000);

    // The writer, with its output line-buffered: each acknowledgement is
    // seen as soon as it is printed, after its COMMIT returned.
    let mut writer: Child = Command::new("stdbuf")
        .args(["-oL", "sqlite3"])
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sqlite3");
    let mut stdin = writer.stdin.take().expect("stdin");
    let feeding = Arc::new(AtomicBool::new(true));
    let feeder = {
        let feeding = feeding.clone();
        // Ends at the end of the script or when the writer is gone (EPIPE).
        std::thread::spawn(move || {
            for chunk in sql.as_bytes().chunks(4096) {
                if !feeding.load(Ordering::Relaxed) || stdin.write_all(chunk).is_err() {
                    return;
                }
            }
        })
    };
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = writer.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut acked = 0u64;
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{what}: no line from the writer ({e}) after {acked} acknowledged"));
        if let Some(id) = line.strip_prefix("acked ") {
            acked = id.parse().expect("acked id");
            if matches!(kill_at, KillAt::Acknowledged(n) if acked >= n) {
                break;
            }
        } else if line.starts_with("ckpt ") {
            if matches!(kill_at, KillAt::Checkpoint) && acked >= 40 {
                break;
            }
        } else {
            panic!("{what}: unexpected output from the writer: {line:?}");
        }
    }
    // The host dies: the segment with its mount, then the writer.
    kill(&mut pair.seg_mut(2).child);
    let _ = writer.kill();
    let _ = writer.wait();
    feeding.store(false, Ordering::Relaxed);
    // Every acknowledgement printed before the end counts.
    for line in lines.iter() {
        if let Some(id) = line.strip_prefix("acked ") {
            acked = acked.max(id.parse().expect("acked id"));
        }
    }
    let _ = reader.join();
    let _ = feeder.join();
    own.crash();

    wait_for("the mirror's promotion", Duration::from_secs(30), || {
        pair.seg(3).status(&pair.key).is_some_and(|s| s.acting == Acting::Primary)
    });
    let promoted = pair.mount(3, "pg_system");
    let db = promoted.p("app.db");
    assert_eq!(sqlite::run(&db, "PRAGMA integrity_check;"), "ok", "{what}: the promoted copy is damaged");
    // The mode the writer ran in (WAL is recorded in the database file).
    let mode = sqlite::run(&db, "PRAGMA journal_mode;");
    assert_eq!(mode, if wal { "wal" } else { "delete" }, "{what}: the database's journal mode");
    let counts =
        sqlite::run(&db, "SELECT count(*) || ' ' || coalesce(max(id), 0) || ' ' || coalesce(min(id), 0) FROM t;");
    let v: Vec<u64> = counts.split(' ').map(|x| x.parse().expect("number")).collect();
    let (rows, max) = (v[0], v[1]);
    assert!(max >= acked, "{what}: {acked} acknowledged, only up to id {max} on the promoted side");
    assert_eq!(rows, max, "{what}: ids 1..={max} should all be there, {rows} rows are");
    assert!(max == 0 || v[2] == 1, "{what}: the first row is {}", v[2]);
    assert!(
        max == 0 || ends.binary_search(&max).is_ok(),
        "{what}: the promoted side ends at id {max}, inside a transaction (half of it is there)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "sqlite {what}: {acked} acknowledged, {max} rows on the promoted side, integrity ok"
    );
}

fn rounds(wal: bool, name: &str) {
    let seed: u64 = std::env::var("FILEREP_SQLITE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5_1175);
    let n: u64 = std::env::var("FILEREP_SQLITE_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    for r in 0..n {
        // Everything a round does follows from its seed (but for the
        // timing of the kill, which is the machine's).
        let round_seed = seed.wrapping_add(r);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(round_seed.rotate_left(17));
        let kill_at =
            if wal && round_seed % 2 == 0 { KillAt::Checkpoint } else { KillAt::Acknowledged(rng.gen_range(50..400)) };
        let _ = writeln!(
            std::io::stderr(),
            "{name}: round {r} (rerun one: FILEREP_SQLITE_SEED={round_seed} FILEREP_SQLITE_ROUNDS=1)"
        );
        round(wal, round_seed, kill_at);
    }
}

#[test]
fn sqlite_wal_keeps_every_acknowledged_transaction_when_the_primary_dies_mid_transaction_or_checkpoint() {
    const NAME: &str =
        "sqlite_wal_keeps_every_acknowledged_transaction_when_the_primary_dies_mid_transaction_or_checkpoint";
    if prerequisites(NAME) {
        rounds(true, NAME);
    }
}

#[test]
fn sqlite_rollback_journal_keeps_every_acknowledged_transaction_when_the_primary_dies_mid_transaction() {
    const NAME: &str =
        "sqlite_rollback_journal_keeps_every_acknowledged_transaction_when_the_primary_dies_mid_transaction";
    if prerequisites(NAME) {
        rounds(false, NAME);
    }
}
