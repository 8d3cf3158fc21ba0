//! An operator cannot hurt the cluster by mistake: placements that would
//! overlap (through symbolic links too) and hosts that are one machine are
//! refused before anything is written; the refusals change nothing.

mod common;
use common::pair::run_filerep as filerep;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The stderr of a command that must be refused (exit code 2).
fn refused(args: &[&str]) -> String {
    let (code, out, err) = filerep(args);
    assert_eq!(code, 2, "filerep {} must be refused: {out}{err}", args.join(" "));
    assert!(!err.contains("refused: refused"), "{err}");
    err
}

/// A base port whose 4 × 16 ports are free on 127.0.0.2 and 127.0.0.3
/// (and the arbiter's, below it, on 127.0.0.1), off the ephemeral range.
fn free_base() -> u16 {
    for _ in 0..1000 {
        let base = rand::random::<u16>() % 2_000 * 4 + 21_000;
        let free = |h: &str, p: u16| TcpListener::bind((h, p)).is_ok();
        let ports = (0..4).flat_map(|k| (0..16).map(move |j| base + j + k * 1000));
        if free("127.0.0.1", base - 1) && ports.clone().all(|p| free("127.0.0.2", p) && free("127.0.0.3", p)) {
            return base;
        }
    }
    panic!("no free base port");
}

/// Every file under `root` (symbolic links not followed) with its bytes,
/// or `None` for directories and links: what a refusal must leave as it was.
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(p.clone());
                out.insert(p, None);
            } else if t.is_file() {
                out.insert(p.clone(), Some(std::fs::read(&p).unwrap()));
            } else {
                out.insert(p, None);
            }
        }
    }
    out
}

struct Init<'a> {
    cluster: PathBuf,
    hosts: &'a str,
    data: Vec<String>,
    extra: Vec<String>,
}

impl Init<'_> {
    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["init", "--cluster-dir", &self.cluster.display().to_string(), "--hosts", self.hosts]
            .map(String::from)
            .into();
        for d in &self.data {
            a.extend(["--data-dir".to_string(), d.clone()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    fn run(&self) -> (i32, String, String) {
        let args = self.args();
        filerep(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

#[test]
fn one_host_named_twice_is_refused_even_with_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let data = format!("pg_system={}", tmp.path().join("primary").display());
    for hosts in ["127.0.0.2,127.0.0.02", "localhost,127.0.0.1"] {
        for flag in [None, Some("--allow-one-machine")] {
            let init = Init {
                cluster: tmp.path().join("cluster"),
                hosts,
                data: vec![data.clone()],
                extra: flag.into_iter().map(String::from).collect(),
            };
            let args = init.args();
            let err = refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(err.contains("are one host: both resolve to"), "{hosts}: {err}");
            assert!(!tmp.path().join("cluster").exists() && !tmp.path().join("primary").exists(), "nothing is made");
        }
    }
    // Two loopback addresses are two names of this machine: only with the flag.
    let base = free_base().to_string();
    let init = Init {
        cluster: tmp.path().join("cluster"),
        hosts: "127.0.0.2,127.0.0.3",
        data: vec![data.clone()],
        extra: vec!["--base-port".into(), base.clone()],
    };
    let (code, _, err) = init.run();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("both this machine") && err.contains("--allow-one-machine"), "{err}");
    assert!(!tmp.path().join("cluster").exists());
    let init = Init { extra: vec!["--base-port".into(), base, "--allow-one-machine".into()], ..init };
    let (code, out, err) = init.run();
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn overlapping_filespaces_and_data_in_the_cluster_directory_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = std::fs::canonicalize(tmp.path()).unwrap();
    let d = |p: &str| t.join(p).display().to_string();
    std::fs::create_dir(t.join("real")).unwrap();
    std::os::unix::fs::symlink(t.join("real"), t.join("link")).unwrap();
    let base = free_base().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![format!("pg_system={}", d("a")), format!("pg_system={}", d("b"))], "filespace pg_system is given twice"),
        (vec![format!("pg_system={}", d("a")), format!("fast={}", d("a"))], "is the same as"),
        (vec![format!("pg_system={}", d("a")), format!("fast={}", d("a/gpseg0/fast"))], "is inside"),
        (vec![format!("pg_system={}", d("a/x")), format!("fast={}", d("a"))], "contains"),
        (vec![format!("pg_system={}", d("cluster/data"))], "inside"),
        (vec!["pg_system=relative/data".to_string()], "not an absolute path"),
        (vec![format!("pg_system={}", d("real")), format!("fast={}", d("link"))], "once symbolic links are resolved"),
        // Content 1's directory is a link to content 0's.
        (vec![format!("pg_system={}", d("real"))], "is the same as"),
    ];
    std::fs::create_dir(t.join("real/gpseg0")).unwrap();
    std::os::unix::fs::symlink(t.join("real/gpseg0"), t.join("real/gpseg1")).unwrap();
    let before = tree(&t);
    for (data, expect) in cases {
        let init = Init {
            cluster: t.join("cluster"),
            hosts: "127.0.0.2,127.0.0.3",
            data: data.clone(),
            extra: vec!["--base-port".into(), base.clone(), "--allow-one-machine".into()],
        };
        let (code, out, err) = init.run();
        assert_eq!(code, 2, "{data:?} must be refused: {out}{err}");
        assert!(err.contains(expect), "{data:?}: expected {expect:?} in {err}");
        assert_eq!(tree(&t), before, "{data:?}: a refusal changes nothing");
    }
}

#[test]
fn a_mirror_location_through_a_symbolic_link_into_another_contents_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = std::fs::canonicalize(tmp.path()).unwrap();
    let cluster = t.join("cluster");
    let cd = cluster.display().to_string();
    let base = free_base();
    let init = Init {
        cluster: cluster.clone(),
        hosts: "127.0.0.2,127.0.0.3",
        data: vec![format!("pg_system={}", t.join("primary").display())],
        extra: vec![
            "--segments-per-host".into(),
            "1".into(),
            "--base-port".into(),
            base.to_string(),
            "--allow-one-machine".into(),
        ],
    };
    let (code, out, err) = init.run();
    assert_eq!(code, 0, "{out}{err}");
    // Content 0's primary is on 127.0.0.2, content 1's on 127.0.0.3.
    // mirror0 goes on 127.0.0.3 through a link into content 1's directory.
    std::fs::create_dir(t.join("mirrors")).unwrap();
    std::os::unix::fs::symlink(t.join("primary/gpseg1"), t.join("mirrors/m0")).unwrap();
    std::fs::write(t.join("primary/gpseg1/base_file"), b"content 1's data").unwrap();
    let (p, m, r) = (base + 1000, base + 2000, base + 3000);
    let cfg = t.join("mirrors.cfg");
    let text = format!(
        "filespaceOrder=\nmirror0=0:127.0.0.3:{p}:{m}:{r}:{}\nmirror1=1:127.0.0.2:{p}:{m}:{r}:{}\n",
        t.join("mirrors/m0").display(),
        t.join("mirrors/m1").display()
    );
    std::fs::write(&cfg, text).unwrap();
    let before = tree(&t);
    let err = refused(&["addmirrors", "--cluster-dir", &cd, "-i", &cfg.display().to_string()]);
    assert!(err.contains("mirrors.cfg:2:"), "{err}");
    assert!(
        err.contains(&format!(
            "which is {} once symbolic links are resolved) is the same as {}, the pg_system directory of primary content 1 (dbid 3)",
            t.join("primary/gpseg1").display(),
            t.join("primary/gpseg1").display()
        )),
        "{err}"
    );
    assert_eq!(tree(&t), before, "a refused configuration changes nothing");
    // Into the cluster directory, through a link: refused too.
    std::fs::remove_file(t.join("mirrors/m0")).unwrap();
    std::os::unix::fs::symlink(&cluster, t.join("mirrors/m0")).unwrap();
    let err = refused(&["addmirrors", "--cluster-dir", &cd, "-i", &cfg.display().to_string()]);
    assert!(err.contains("the cluster directory on this machine"), "{err}");
}

/// Run `filerep` with only `FILEREP_CLUSTER_DIR` naming the cluster.
fn by_dir(cluster: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_filerep"))
        .args(args)
        .env("FILEREP_LOG", "warn")
        .env("FILEREP_CLUSTER_DIR", cluster)
        .output()
        .expect("run filerep");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn by_dir_ok(cluster: &Path, args: &[&str]) -> String {
    let (code, out, err) = by_dir(cluster, args);
    if code != 0 {
        let mut logs = String::new();
        for e in std::fs::read_dir(cluster.join("logs")).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            logs += &format!("--- {}\n{}\n", e.path().display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        panic!("filerep {} exited {code}: {out}{err}\n{logs}", args.join(" "));
    }
    out
}

/// The processes whose command line names `cluster` (its segments and arbiter).
fn processes(cluster: &Path) -> Vec<(i32, String)> {
    let needle = cluster.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) && cmd.contains("filerep") {
            out.push((pid, cmd));
        }
    }
    out.sort();
    out
}

/// Stops the cluster whatever happens to the test.
struct Running(PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = by_dir(&self.0, &["stop"]);
    }
}

#[test]
fn a_cluster_named_by_its_directory_alone_refuses_what_would_hurt_it_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = std::fs::canonicalize(tmp.path()).unwrap();
    let cluster = t.join("cluster");
    let base = free_base();
    let init = Init {
        cluster: cluster.clone(),
        hosts: "127.0.0.2,127.0.0.3",
        data: vec![format!("pg_system={}", t.join("primary").display())],
        extra: [
            "--segments-per-host",
            "1",
            "--base-port",
            &base.to_string(),
            "--block-size",
            "8192",
            "--allow-one-machine",
        ]
        .map(String::from)
        .into(),
    };
    let (code, out, err) = init.run();
    assert_eq!(code, 0, "{out}{err}");
    by_dir_ok(&cluster, &["start"]);
    let _running = Running(cluster.clone());
    assert!(by_dir_ok(&cluster, &["state"]).contains("contents without a mirror"));

    // What a refusal must leave alone: the cluster directory (its logs
    // aside), the data directories, the running processes.
    let snapshot = || {
        let mut c = tree(&cluster);
        c.retain(|p, _| !p.starts_with(cluster.join("logs")));
        (c, tree(&t.join("primary")), processes(&cluster))
    };
    let before = snapshot();
    assert_eq!(before.2.len(), 3, "two segments and the arbiter: {:?}", before.2);
    let (p, m, r) = (base + 1000, base + 2000, base + 3000);
    let cfg = t.join("mirrors.cfg");
    let write_cfg = |m0: &Path| {
        let text = format!(
            "filespaceOrder=\nmirror0=0:127.0.0.3:{p}:{m}:{r}:{}\nmirror1=1:127.0.0.2:{p}:{m}:{r}:{}\n",
            m0.display(),
            t.join("mirror/gpseg1").display()
        );
        std::fs::write(&cfg, text).unwrap();
    };
    let cf = cfg.display().to_string();
    // A location that cannot be created.
    write_cfg(Path::new("/proc/filerep-mirror/gpseg0"));
    let (code, _, err) = by_dir(&cluster, &["addmirrors", "-i", &cf]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mirrors.cfg:2:") && err.contains("cannot be made the mirror's directory"), "{err}");
    assert!(!err.contains("refused: refused"), "{err}");
    assert!(snapshot() == before, "a refusal changes nothing");
    assert!(!t.join("mirror").exists());
    // A port another process holds.
    write_cfg(&t.join("mirror/gpseg0"));
    let holder = TcpListener::bind(("127.0.0.3", p)).unwrap();
    let (code, _, err) = by_dir(&cluster, &["addmirrors", "-i", &cf]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("port {p} on 127.0.0.3 is in use by another process")), "{err}");
    assert!(snapshot() == before, "a refusal changes nothing");
    drop(holder);

    // Every command by the directory alone: add the mirrors, lose one,
    // start it again, recover, verify, state, stop.
    let out = by_dir_ok(&cluster, &["addmirrors", "-i", &cf, "--json"]);
    assert_eq!(out.matches("\"synchronized\"").count(), 2, "{out}");
    let mirror0: i32 = std::fs::read_to_string(cluster.join("run/dbid4.pid")).unwrap().trim().parse().unwrap();
    assert!(std::fs::read_to_string(cluster.join("run/dbid4.pid")).unwrap().ends_with('\n'));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(mirror0), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !by_dir_ok(&cluster, &["state", "-m"]).contains("Change Tracking") {
        assert!(std::time::Instant::now() < deadline, "the mirror's loss is never seen");
        std::thread::sleep(std::time::Duration::from_millis(100)); // the arbiter's probe rounds
    }
    by_dir_ok(&cluster, &["start"]);
    let out = by_dir_ok(&cluster, &["recover", "--json"]);
    assert!(out.contains("\"synchronized\""), "{out}");
    let out = by_dir_ok(&cluster, &["verify", "--json"]);
    assert_eq!(out.matches("\"identical\"").count(), 2, "{out}");
    let state: serde_json::Value = serde_json::from_str(&by_dir_ok(&cluster, &["state", "--json"])).unwrap();
    assert_eq!(state["segments"].as_array().unwrap().len(), 4, "{state}");
    assert!(state["arbiter_answers"].as_bool().unwrap());

    // The catalog file damaged while the arbiter runs: state says so; the
    // arbiter writes back the catalog it holds.
    let catalog = cluster.join("catalog.json");
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        let at = bytes.windows(10).position(|w| w == b"127.0.0.2:").unwrap() + 10;
        bytes[at] = if bytes[at] == b'9' { b'8' } else { bytes[at] + 1 };
        std::fs::write(path, bytes).unwrap();
    };
    flip(&catalog);
    let (code, _, err) = by_dir(&cluster, &["state"]);
    assert_eq!(code, 0, "the arbiter's catalog is whole: {err}");
    assert!(err.contains("the catalog is damaged") && err.contains("body checksum"), "{err}");
    let out = by_dir_ok(&cluster, &["catalog", "restore"]);
    assert!(out.contains("written again by the running arbiter"), "{out}");
    by_dir_ok(&cluster, &["catalog", "check"]);
    by_dir_ok(&cluster, &["stop"]);
    assert!(processes(&cluster).is_empty(), "{:?}", processes(&cluster));

    // Damaged while stopped: every command says so, with the command that restores it.
    flip(&catalog);
    for args in [&["state"][..], &["start"], &["stop"], &["addmirrors", "-i", &cf]] {
        let (code, _, err) = by_dir(&cluster, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("the catalog is damaged: "), "{args:?}: {err}");
        assert!(err.contains(&format!("filerep catalog restore --cluster-dir {}", cluster.display())), "{err}");
    }
    assert!(processes(&cluster).is_empty(), "nothing was started on a damaged catalog");
    let (code, out, _) = by_dir(&cluster, &["catalog", "check"]);
    assert_eq!(code, 1, "{out}");
    let out = by_dir_ok(&cluster, &["catalog", "restore"]);
    assert!(out.contains("put back from its last good copy"), "{out}");
    by_dir_ok(&cluster, &["catalog", "check"]);

    // Both the catalog and its copy lost: rebuilt from the segments' role
    // records; the pairs are marked not in sync and rebuilt by recover -F.
    std::fs::remove_file(&catalog).unwrap();
    std::fs::remove_file(cluster.join("catalog.json.good")).unwrap();
    let out = by_dir_ok(&cluster, &["catalog", "restore"]);
    assert!(out.contains("rebuilt from the segments"), "{out}");
    assert!(out.contains("recover -F --content 0") && out.contains("recover -F --content 1"), "{out}");
    by_dir_ok(&cluster, &["start"]);
    let out = by_dir_ok(&cluster, &["recover", "-F", "--json"]);
    assert_eq!(out.matches("\"synchronized\"").count(), 2, "{out}");
    let out = by_dir_ok(&cluster, &["verify", "--json"]);
    assert_eq!(out.matches("\"identical\"").count(), 2, "{out}");
    let out = by_dir_ok(&cluster, &["state", "-c"]);
    assert_eq!(out.matches("Synchronized").count(), 2, "{out}");

    // Content 0's mirror directory swapped for a link into content 1's
    // primary directory after addmirrors checked it: a full rebuild would
    // empty content 1's files, so recover -F refuses and changes nothing.
    let m0 = t.join("mirror/gpseg0");
    std::fs::rename(&m0, t.join("mirror/gpseg0.moved")).unwrap();
    std::os::unix::fs::symlink(t.join("primary/gpseg1"), &m0).unwrap();
    let primaries = tree(&t.join("primary"));
    assert!(primaries.keys().any(|p| p.starts_with(t.join("primary/gpseg1/"))), "content 1 has files");
    let (code, _, err) = by_dir(&cluster, &["recover", "-F", "--content", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "content 0: the pg_system directory {} (which is {} once symbolic links are resolved) of content 0 (dbid 4) is the same as the pg_system directory {} of content 1 (dbid 3)",
            m0.display(),
            t.join("primary/gpseg1").display(),
            t.join("primary/gpseg1").display()
        )),
        "{err}"
    );
    assert!(err.contains("would delete the other segment's files; nothing was started"), "{err}");
    assert_eq!(tree(&t.join("primary")), primaries, "the refusal changes nothing");
    std::fs::remove_file(&m0).unwrap();
    std::fs::rename(t.join("mirror/gpseg0.moved"), &m0).unwrap();
    let out = by_dir_ok(&cluster, &["state", "-c"]);
    assert_eq!(out.matches("Synchronized").count(), 2, "nothing was started: {out}");
    by_dir_ok(&cluster, &["stop"]);
}

#[test]
fn messages_name_the_value_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    // --base-port 0 is said as given, not as --base-port 1.
    let init = Init {
        cluster: tmp.path().join("cluster"),
        hosts: "127.0.0.2,127.0.0.3",
        data: vec![format!("pg_system={}", tmp.path().join("primary").display())],
        extra: vec!["--base-port".into(), "0".into(), "--allow-one-machine".into()],
    };
    let args = init.args();
    let err = refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("--base-port 0: give the first primary port, from 1 to 65535"), "{err}");
    assert!(!err.contains("--base-port 1"), "{err}");
    // A missing key file is named as such, not as a malformed handshake.
    let key = tmp.path().join("no.key");
    let (code, _, err) = filerep(&["recover", "--arbiter", "127.0.0.1:1", "--key-file", &key.display().to_string()]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&format!("key file {}: cannot be read", key.display())), "{err}");
    assert!(!err.contains("handshake"), "{err}");
    // A UTF-16 mirror file: its encoding named, with the line and column.
    let cfg = tmp.path().join("mirrors.cfg");
    let utf16: Vec<u8> =
        [0xff, 0xfe].into_iter().chain("filespaceOrder=\n".encode_utf16().flat_map(u16::to_le_bytes)).collect();
    std::fs::write(&cfg, utf16).unwrap();
    let (init_code, out, err) = init_cluster(&tmp.path().join("c2"), &tmp.path().join("p2"));
    assert_eq!(init_code, 0, "{out}{err}");
    let err = refused(&[
        "addmirrors",
        "--cluster-dir",
        &tmp.path().join("c2").display().to_string(),
        "-i",
        &cfg.display().to_string(),
    ]);
    assert!(err.contains("mirrors.cfg:1:1: byte 0 (0xFF) is not UTF-8 text") && err.contains("UTF-16"), "{err}");
}

/// A stopped cluster of two segments on two loopback addresses.
fn init_cluster(cluster: &Path, data: &Path) -> (i32, String, String) {
    Init {
        cluster: cluster.to_path_buf(),
        hosts: "127.0.0.2,127.0.0.3",
        data: vec![format!("pg_system={}", data.display())],
        extra: ["--segments-per-host", "1", "--base-port", &free_base().to_string(), "--allow-one-machine"]
            .map(String::from)
            .into(),
    }
    .run()
}

#[test]
fn a_mirror_file_of_a_hundred_thousand_lines_is_answered_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let t = std::fs::canonicalize(tmp.path()).unwrap();
    let cluster = t.join("cluster");
    let init = Init {
        cluster: cluster.clone(),
        hosts: "127.0.0.2,127.0.0.3",
        data: vec![format!("pg_system={}", t.join("primary").display())],
        extra: ["--segments-per-host", "1", "--base-port", &free_base().to_string(), "--allow-one-machine"]
            .map(String::from)
            .into(),
    };
    let (code, out, err) = init.run();
    assert_eq!(code, 0, "{out}{err}");
    let mut text = String::from("filespaceOrder=\n");
    for n in 0..100_000u32 {
        text += &format!(
            "mirror{n}={n}:127.0.0.3:{}:{}:{}:{}\n",
            30000 + n % 1000,
            31000 + n % 1000,
            32000 + n % 1000,
            t.join(format!("m/gpseg{n}")).display()
        );
    }
    let cfg = t.join("big.cfg");
    std::fs::write(&cfg, text).unwrap();
    let started = std::time::Instant::now();
    let (code, _, err) =
        filerep(&["addmirrors", "--cluster-dir", &cluster.display().to_string(), "-i", &cfg.display().to_string()]);
    let took = started.elapsed();
    println!("addmirrors -i with 100,000 lines: refused in {:.0} ms", took.as_secs_f64() * 1e3);
    assert_eq!(code, 2, "{err}");
    let first = err.lines().next().unwrap();
    assert!(first.starts_with("filerep: the mirror configuration has "), "{first}");
    assert!(err.contains("big.cfg:4:9: content 2 has no primary in the cluster (its contents: 0, 1)"), "{err}");
    assert!(err.contains("… and ") && err.contains("more (the first 50 are shown"), "{err}");
    assert!(err.lines().count() <= 53, "the message stays readable: {} lines", err.lines().count());
    assert!(!t.join("m").exists(), "nothing was made");
}

/// `filerep compare ... | head`: the reader stops reading. The command's
/// output stops; the command does not panic, and its exit status is still
/// its answer (1: the copies differ). Output to a full disk is a failure
/// (2), said on stderr, never a success.
#[test]
fn output_to_a_closed_pipe_stops_the_output_not_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for (d, bytes) in [(&a, b"primary"), (&b, b"mirror!")] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("f"), bytes).unwrap();
    }
    // Close-on-exec: no process another test spawns keeps the read end.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    drop(reader);
    let spec = format!("fs={}={}", a.display(), b.display());
    let compare_into = |stdout: std::process::Stdio| {
        Command::new(env!("CARGO_BIN_EXE_filerep")).args(["compare", "--filespace", &spec]).stdout(stdout).output()
    };
    let out = compare_into(writer.into()).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the copies differ: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    std::fs::write(b.join("f"), b"primary").unwrap();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = compare_into(full.into()).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "identical copies, but the output was lost: {stderr}");
    assert!(stderr.contains("writing the output failed") && !stderr.contains("panicked"), "{stderr}");
}
