//! The `sqlite3` program, for the SQLite failover tests and the database
//! benchmark.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Whether the `sqlite3` program runs here.
pub fn available() -> bool {
    Command::new("sqlite3")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run `sqlite3` on `db` with `sql` fed to it; what it printed, trimmed.
pub fn run(db: &Path, sql: &str) -> String {
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sqlite3");
    child.stdin.take().expect("stdin").write_all(sql.as_bytes()).expect("sql");
    let out = child.wait_with_output().expect("sqlite3");
    assert!(out.status.success(), "sqlite3 on {} failed: {}", db.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
