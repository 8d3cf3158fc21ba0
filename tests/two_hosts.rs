//! `filerep bench --mirror` between two hosts, emulated on this machine by
//! two network namespaces joined by a veth pair that the test makes (and
//! removes): the mirror daemon listens in one, the bench runs in the
//! other, and the report gives the pair's rate against the network's own
//! (a raw stream timed in the same run) and the local disk's.
//!
//! Making namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the
//! `ip` tool; where they cannot be made the test is skipped with the
//! reason, unless `FILEREP_REQUIRE_NETNS=1` (CI), which fails it.

mod common;

use common::pair::{exe, is_root, skipped};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Two namespaces and the veth pair between them; removed on drop.
struct Link {
    mirror_ns: String,
    bench_ns: String,
}

const MIRROR_IP: &str = "10.231.77.2";
const BENCH_IP: &str = "10.231.77.1";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Link {
    fn make() -> Result<Link, String> {
        if !is_root() {
            return Err("making network namespaces needs root".into());
        }
        let tag = std::process::id() % 100_000;
        let link = Link { mirror_ns: format!("frm{tag}"), bench_ns: format!("frb{tag}") };
        let (vm, vb) = (format!("frvm{tag}"), format!("frvb{tag}"));
        ip(&["netns", "add", &link.mirror_ns])?;
        ip(&["netns", "add", &link.bench_ns])?;
        ip(&["link", "add", &vm, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &vm, "netns", &link.mirror_ns])?;
        ip(&["link", "set", &vb, "netns", &link.bench_ns])?;
        for (ns, dev, addr) in [(&link.mirror_ns, &vm, MIRROR_IP), (&link.bench_ns, &vb, BENCH_IP)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(link)
    }

    /// `filerep ARGS` inside namespace `ns`.
    fn filerep(ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(exe()).args(args).env("FILEREP_LOG", "filerep=info");
        c
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and so the pair.
        let _ = ip(&["netns", "del", &self.mirror_ns]);
        let _ = ip(&["netns", "del", &self.bench_ns]);
    }
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_bench_replicates_to_a_mirror_on_another_host_and_reports_its_ratio() {
    let name = "the_bench_replicates_to_a_mirror_on_another_host_and_reports_its_ratio";
    let link = match Link::make() {
        Ok(l) => l,
        Err(why) => {
            if std::env::var_os("FILEREP_REQUIRE_NETNS").is_some_and(|v| v == "1") {
                panic!("{name}: FILEREP_REQUIRE_NETNS=1 but {why}");
            }
            skipped(name, &why);
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mirror_dir, bench_dir, key) = (dir.path().join("mirror"), dir.path().join("bench"), dir.path().join("key"));
    std::fs::create_dir_all(&mirror_dir).expect("mirror dir");
    std::fs::create_dir_all(&bench_dir).expect("bench dir");
    std::fs::write(&key, "a key shared by the two hosts of this test").expect("key");
    let listen = format!("{MIRROR_IP}:7430");
    let fs = format!("bench={}", mirror_dir.display());
    let key_s = key.display().to_string();
    let mut daemon = Link::filerep(
        &link.mirror_ns,
        &["mirror", "--listen", &listen, "--filespace", &fs, "--key-file", &key_s, "--cluster-id", "48716"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start the mirror daemon");
    let mut ready = String::new();
    BufReader::new(daemon.stdout.take().expect("stdout")).read_line(&mut ready).expect("ready line");
    let mut daemon = Reaped(daemon);
    assert!(ready.contains(&listen), "the mirror did not start: {ready:?}");

    let bench = |extra: &[&str]| {
        let d = bench_dir.display().to_string();
        let mut args =
            vec!["bench", "--mirror", &listen, "--key-file", &key_s, "--writers", "2", "--rounds", "2", "--dir", &d];
        args.extend_from_slice(extra);
        Link::filerep(&link.bench_ns, &args).output().expect("run the bench")
    };
    let out = bench(&["--count", "2048", "--json"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let num = |f: &str| r[f].as_f64().unwrap_or_else(|| panic!("{f} missing in {r}"));
    assert_eq!(r["mirror"].as_str(), Some(listen.as_str()), "{r}");
    assert_eq!(r["baseline_copies"].as_u64(), Some(1), "{r}");
    let (net, rep, local, ratio) =
        (num("network_mb_s"), num("replicated_mb_s"), num("baseline_double_write_mb_s"), num("remote_ratio"));
    assert!(net > 0.0 && rep > 0.0 && local > 0.0, "{r}");
    assert!((ratio - rep / local.min(net)).abs() < 1e-6 * ratio.max(1.0), "remote_ratio {ratio} in {r}");
    assert!(r["replicated_mirror_cpu_us_per_block"].is_null(), "the other host's CPU is not ours to count: {r}");
    eprintln!("two namespaces: network {net:.0} MB/s, local {local:.0} MB/s, replicated {rep:.0} MB/s: remote_ratio {ratio:.3}");

    // What the pair shipped is on the other host: every writer's file,
    // each block of it written (2048 blocks over 2 writers, 2 rounds).
    for w in 0..2 {
        let f = mirror_dir.join(format!("bench{w}"));
        let len = std::fs::metadata(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())).len();
        assert!(len >= 512 * 32768, "{}: {len} bytes", f.display());
    }

    // A bench with the wrong key is refused by name and changes nothing there.
    std::fs::write(dir.path().join("wrong"), "not the key the mirror was given").expect("key");
    let wrong = dir.path().join("wrong").display().to_string();
    let d = bench_dir.display().to_string();
    let out = Link::filerep(
        &link.bench_ns,
        &["bench", "--mirror", &listen, "--key-file", &wrong, "--count", "64", "--dir", &d],
    )
    .output()
    .expect("run the bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("BadKey") && stderr.contains(&listen), "{stderr}");

    // The mirror served both benches' connections and is still there.
    assert!(daemon.0.try_wait().expect("wait").is_none(), "the mirror daemon exited");
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    let mut log = String::new();
    use std::io::Read;
    daemon.0.stderr.take().expect("stderr").read_to_string(&mut log).expect("log");
    assert!(log.contains("network check of"), "{log}");
    assert!(Path::new(&mirror_dir).is_dir());
}
