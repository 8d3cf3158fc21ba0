//! The C ABI from C: `examples/c/storage.c` compiled with `cc -Wall
//! -Werror` against `include/filerep.h` and the library, run as the
//! primary of a real pair started here (an arbiter and a `filerep segment`
//! mirror): its mirror compared block by block; once more under
//! AddressSanitizer with no error and no leak; and once with the mirror
//! killed under load, the C process going on in change tracking, `filerep
//! recover` bringing the pair back to Synchronized, the copies identical.
//!
//! A missing C compiler fails these tests (.ci/run installs gcc).

mod common;

use common::pair::{assert_trees_equal, kill, wait_for, Pair, Seg};
use filerep::cluster::segment::Acting;
use filerep::core::pair::PairMode;
use filerep::protocol::handshake::ClusterKey;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const BS: u32 = 8192;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace holds tools/").to_path_buf()
}

/// target/<profile>: where cargo puts this test's binary (in deps/) and the library.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/").to_path_buf()
}

/// `cargo test` builds test targets only, not the C library: build it with
/// the cargo that built this test (a no-op when it is fresh). Once per run.
fn library() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let target = profile.parent().expect("target/");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "filerep-capi", "--target-dir"]).arg(target).current_dir(workspace());
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("running cargo");
        assert!(out.status.success(), "building the C library failed:\n{}", String::from_utf8_lossy(&out.stderr));
        for lib in ["libfilerep.so", "libfilerep.a"] {
            assert!(profile.join(lib).is_file(), "{lib} was not built in {}", profile.display());
        }
        profile
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Build {
    /// Against the shared library, as the example's Makefile does.
    Shared,
    /// AddressSanitizer, against the static library.
    Asan,
}

/// The example, compiled once per run.
fn example(build: Build) -> PathBuf {
    static BUILT: Mutex<Vec<(Build, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(b, _)| *b == build) {
        return p.clone();
    }
    let dir = library().join("capi-example");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = dir.join(format!("storage-{build:?}").to_lowercase());
    let exe = compile(&workspace().join("examples/c/storage.c"), &out, build);
    built.push((build, exe.clone()));
    exe
}

/// Compile a C program against the header and the library as the CI
/// does: warnings are errors.
fn compile(source: &Path, out: &Path, build: Build) -> PathBuf {
    let lib = library();
    // Written aside, then renamed over: another test run may be executing
    // the previous build ("Text file busy").
    let partial = out.with_extension(format!("{}.partial", std::process::id()));
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", "-I"])
        .arg(workspace().join("include"))
        .arg(source)
        .arg("-o")
        .arg(&partial);
    match build {
        Build::Shared => {
            cc.arg("-O2").arg("-L").arg(lib).arg("-lfilerep").arg(format!("-Wl,-rpath,{}", lib.display()));
        }
        Build::Asan => {
            cc.args(["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"])
                .arg(lib.join("libfilerep.a"))
                // What the static library needs (rustc --print native-static-libs).
                .args(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"]);
        }
    }
    let result = cc.output().unwrap_or_else(|e| {
        panic!("cannot run cc ({e}): a C compiler is needed for the C ABI tests (Debian package gcc)")
    });
    assert!(
        result.status.success(),
        "cc failed on {} ({build:?}):\n{}{}",
        source.display(),
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&partial, out).unwrap_or_else(|e| panic!("renaming {}: {e}", partial.display()));
    out.to_path_buf()
}

/// A C process: its stdin (commands), its stdout lines, its stderr.
struct CProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// How a C process ended.
struct Ended {
    status: std::process::ExitStatus,
    stdout: Vec<String>,
    stderr: String,
}

impl Ended {
    /// Its stdout line that starts with `prefix`.
    fn line(&self, prefix: &str) -> &str {
        let found = self.stdout.iter().find(|l| l.starts_with(prefix));
        found.unwrap_or_else(|| panic!("no line {prefix:?} in {:?}; stderr:\n{}", self.stdout, self.stderr))
    }
}

impl CProcess {
    /// Start `exe` with `seg`'s configuration file first among its
    /// arguments; it has opened the segment once it answers the arbiter's
    /// probes on the segment's control address.
    fn spawn(exe: &Path, seg: &Seg, args: &[String], env: &[(&str, &str)]) -> Result<CProcess, String> {
        let mut child = Command::new(exe)
            .arg(&seg.cfg_path)
            .args(args)
            .env("FILEREP_LOG", "filerep=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        let out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut p = CProcess { stdin: child.stdin.take(), child, lines, stderr: Some(stderr) };
        let key = ClusterKey::from_file(&seg.cfg.key_file).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seg.status(&key).is_none() {
            let exited = p.child.try_wait().map_err(|e| e.to_string())?;
            if exited.is_some() || Instant::now() >= deadline {
                let _ = p.child.kill();
                let _ = p.child.wait();
                let stderr = p.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
                return Err(format!("{} did not open its segment ({exited:?}): {stderr}", exe.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    /// The next stdout line that starts with `prefix` (others are skipped).
    fn expect_line(&self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no line {prefix:?} within {limit:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("the process ended before {prefix:?}"),
            }
        }
    }

    /// (calls, calls in change tracking) so far; none refused or failed.
    fn report(&mut self) -> (u64, u64) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"report\n").and_then(|_| stdin.flush()).expect("report");
        let l = self.expect_line("calls ", Duration::from_secs(30));
        let n: Vec<u64> = l.split(' ').filter_map(|w| w.parse().ok()).collect();
        assert_eq!(n.len(), 4, "{l}");
        assert_eq!((n[2], n[3]), (0, 0), "calls refused or failed in the C process: {l}");
        (n[0], n[1])
    }

    /// Poll the counts until `cond` holds (a deadline, not a sleep).
    fn wait_report(&mut self, what: &str, cond: impl Fn((u64, u64)) -> bool) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.report();
            if cond(r) {
                return r;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {r:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Close its stdin (the example stops, closes its segment and exits)
    /// and wait for it to exit.
    fn finish(mut self) -> Ended {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "the C process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
        // The reader ends at the pipe's end: every line is in the channel.
        let stdout = self.lines.iter().collect();
        Ended { status, stdout, stderr }
    }
}

impl Drop for CProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test shows what the C process logged (its stderr is
        // captured, unlike the segments' and the arbiter's).
        if std::thread::panicking() {
            let stderr = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "the C process's stderr:\n{stderr}");
        }
    }
}

/// A pair whose primary is a C process (`args` after its configuration
/// file), streaming.
fn pair_with_c_primary(exe: &Path, args: &[String], env: &[(&str, &str)]) -> (Pair, CProcess) {
    let mut c = None;
    let pair = Pair::start_with(BS, |seg| {
        c = Some(CProcess::spawn(exe, seg, args, env)?);
        Ok(())
    });
    (pair, c.expect("the C process"))
}

/// The example as the primary: `threads` threads, `rounds` rounds each (0:
/// until told to stop).
fn example_primary(build: Build, threads: u32, rounds: u32, env: &[(&str, &str)]) -> (Pair, CProcess) {
    let (pair, c) = pair_with_c_primary(&example(build), &[threads.to_string(), rounds.to_string()], env);
    let l = c.expect_line("primary at generation ", Duration::from_secs(60));
    assert_eq!(l, format!("primary at generation 1, block size {BS}, 2 filespaces"));
    (pair, c)
}

/// Stop the arbiter (nothing is promoted when the primary goes), then the
/// example; it must exit 0 with no call refused or failed, and no report
/// from AddressSanitizer (when built with it). Its "done" line.
fn stop(pair: &mut Pair, c: CProcess) -> String {
    kill(&mut pair.arbiter);
    let end = c.finish();
    for report in ["AddressSanitizer", "LeakSanitizer"] {
        assert!(!end.stderr.contains(report), "{report} reported:\n{}", end.stderr);
    }
    let done = end.line("done: ").to_string();
    assert!(end.status.success(), "the C process exited with {}: {done}\n{}", end.status, end.stderr);
    assert!(done.ends_with(" 0 refused as not primary, 0 failures"), "{done}\n{}", end.stderr);
    done
}

fn roots(seg: &Seg) -> Vec<PathBuf> {
    vec![seg.root(0), seg.root(1)]
}

/// What the example leaves, whatever the interleaving: per thread a
/// relation file, a log of 100-byte records (one per round), and its kept
/// directories, each with a file.
fn assert_work_done(seg: &Seg, threads: u32, rounds: u64) {
    for t in 0..threads {
        let log = seg.root(1).join(format!("t{t}/log"));
        let len = std::fs::metadata(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display())).len();
        assert_eq!(len, rounds * 100, "{}", log.display());
        assert!(seg.root(0).join(format!("t{t}/rel")).is_file());
        let kept = (0..rounds).filter(|r| r % 5 == 0).map(|r| (r / 5) % 4).collect::<std::collections::BTreeSet<_>>();
        for k in kept {
            assert!(seg.root(0).join(format!("t{t}/k{k}/f")).is_file(), "thread {t}: k{k}/f");
        }
    }
}

#[test]
fn a_c_storage_process_is_the_primary_of_a_real_pair_and_its_mirror_is_identical() {
    let (threads, rounds) = (4, 60);
    let (mut pair, c) = example_primary(Build::Shared, threads, rounds, &[]);
    c.expect_line("workers finished: ", Duration::from_secs(120));
    let status = pair.seg(2).status(&pair.key).expect("the C process answers probes");
    assert_eq!((status.acting, status.mode, status.generation), (Acting::Primary, 's', 1));
    assert_eq!(pair.catalog().pairs[0].pair.mode, PairMode::Synchronized);
    stop(&mut pair, c);
    assert!(!pair.seg(2).cfg.socket.exists(), "closing the segment removes its client socket");
    assert_work_done(pair.seg(2), threads, rounds.into());
    assert_trees_equal(&roots(pair.seg(2)), &roots(pair.seg(3)), BS);
}

#[test]
fn under_address_sanitizer_the_c_process_runs_with_no_error_and_no_leak() {
    let (threads, rounds) = (3, 24);
    let asan = [("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1:exitcode=23")];
    let (mut pair, c) = example_primary(Build::Asan, threads, rounds, &asan);
    c.expect_line("workers finished: ", Duration::from_secs(120));
    stop(&mut pair, c);
    assert_work_done(pair.seg(2), threads, rounds.into());
    assert_trees_equal(&roots(pair.seg(2)), &roots(pair.seg(3)), BS);
}

#[test]
fn the_mirror_killed_under_load_the_c_process_tracks_changes_and_recover_makes_the_pair_identical() {
    let (mut pair, mut c) = example_primary(Build::Shared, 4, 0, &[]);
    c.wait_report("calls while synchronized", |(calls, _)| calls >= 2000);
    kill(&mut pair.seg_mut(3).child);
    wait_for("the C primary to track changes", Duration::from_secs(30), || {
        pair.seg(2).status(&pair.key).is_some_and(|s| s.mode == 'c')
    });
    c.wait_report("calls in change tracking", |(_, tracking)| tracking >= 2000);
    assert_eq!(pair.catalog().pairs[0].pair.mode, PairMode::ChangeTracking);
    pair.seg_mut(3).start();
    wait_for("the mirror to serve again", Duration::from_secs(30), || {
        pair.seg(3).status(&pair.key).is_some_and(|s| s.acting == Acting::Mirror && s.generation == 1)
    });
    // The resync runs while the C process keeps writing.
    let (code, out, err) = pair.recover(&[]);
    assert_eq!(code, 0, "{out}{err}");
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).expect("summary");
    assert_eq!(summary["result"], "synchronized", "{summary}");
    assert_eq!(pair.catalog().pairs[0].pair.mode, PairMode::Synchronized);
    let (after, _) = c.report();
    c.wait_report("calls after the resync", |(calls, _)| calls >= after + 1000);
    assert_eq!(pair.seg(2).status(&pair.key).expect("probe").mode, 's');
    let done = stop(&mut pair, c);
    assert!(!done.contains(" 0 in change tracking"), "{done}");
    assert_trees_equal(&roots(pair.seg(2)), &roots(pair.seg(3)), BS);
}

/// The program in docs/c-api.md, as it is printed there.
fn docs_program() -> PathBuf {
    let doc = std::fs::read_to_string(workspace().join("docs/c-api.md")).expect("docs/c-api.md");
    let section = doc.split("## A complete minimal program").nth(1).expect("the section");
    let code = section.split("```c\n").nth(1).and_then(|c| c.split("```").next()).expect("a C block");
    let dir = library().join("capi-example");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let source = dir.join("minimal.c");
    std::fs::write(&source, code).expect("write");
    compile(&source, &dir.join("minimal"), Build::Shared)
}

#[test]
fn the_minimal_program_of_the_docs_runs_as_the_primary_and_its_mirror_is_identical() {
    // It may be done before a probe sees it stream: no wait for that.
    let exe = docs_program();
    let mut c = None;
    let mut pair = Pair::launch_with(BS, |seg| {
        c = Some(CProcess::spawn(&exe, seg, &[], &[])?);
        Ok(())
    });
    let end = c.expect("the C process").finish();
    assert!(end.status.success(), "exited with {}: {:?}\n{}", end.status, end.stdout, end.stderr);
    assert_eq!(end.line("primary at generation"), "primary at generation 1: done");
    // Its primary gone, the arbiter may promote the mirror, which changes
    // no file: compare either way.
    kill(&mut pair.arbiter);
    let root = pair.seg(3).root(0);
    assert_eq!(std::fs::read(root.join("wal")).expect("wal on the mirror"), b"BEGIN; INSERT ...; COMMIT;\n");
    assert_eq!(std::fs::metadata(root.join("base/16385")).expect("the renamed relation").len(), BS as u64);
    assert!(!root.join("base/16384").exists());
    assert_trees_equal(&roots(pair.seg(2)), &roots(pair.seg(3)), BS);
}
