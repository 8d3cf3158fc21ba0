//! The cluster's processes: segments and arbiters started detached, with
//! pid files and logs, checked alive, stopped in order.
use super::*;

/// Ask a segment for its status (`None`: it does not answer).
pub fn probe(control: &str, key: &ClusterKey, timeout: Duration) -> Option<SegmentStatus> {
    match filerep::cluster::control::call::<_, SegmentResponse>(control, key, &SegmentRequest::Probe, timeout) {
        Ok(SegmentResponse::Status(s)) => Some(s),
        _ => None,
    }
}

/// Segments asked at once by [`probe_many`] (a waiting probe costs a
/// blocked thread, no CPU).
pub(super) const PROBES_IN_FLIGHT: usize = 256;

/// Ask every segment at once (at most 256 in flight): the answers, in the
/// order of `controls`, within about one `timeout` however many hang.
pub fn probe_many(controls: &[String], key: &ClusterKey, timeout: Duration) -> Vec<Option<SegmentStatus>> {
    filerep::cluster::probe::at_once(controls, PROBES_IN_FLIGHT, |c| probe(c, key, timeout))
}

pub(super) fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether process `pid` runs. A zombie does not: a process started by an
/// earlier `filerep start` is reaped by whoever adopted it, maybe late.
pub(super) fn alive(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The cluster's arbiters: the process name of each (`arbiter` for the
/// first, `arbiter2`, `arbiter3`… for the others) and its address.
pub fn arbiters(file: &ClusterFile) -> Vec<(String, String)> {
    filerep::cluster::probe::arbiter_addresses(&file.arbiter)
        .into_iter()
        .enumerate()
        .map(|(i, a)| (if i == 0 { "arbiter".to_string() } else { format!("arbiter{}", i + 1) }, a.to_string()))
        .collect()
}

/// What the arbiter at `addr` says of itself (acting, standing by, or
/// cut off from its coordinator).
pub fn leadership(addr: &str, key: &ClusterKey, timeout: Duration) -> std::result::Result<ArbiterLeadership, String> {
    use filerep::cluster::segment::{ArbiterRequest, ArbiterResponse};
    match filerep::cluster::control::call::<_, ArbiterResponse>(addr, key, &ArbiterRequest::Leadership, timeout) {
        Ok(ArbiterResponse::Leadership { arbiter, coordinator, leadership }) => {
            Ok(ArbiterLeadership { arbiter, coordinator, leadership })
        }
        Ok(other) => Err(format!("{addr} answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// An arbiter's answer to `Leadership`.
#[derive(Clone, Debug, Serialize)]
pub struct ArbiterLeadership {
    pub arbiter: String,
    pub coordinator: String,
    pub leadership: filerep::durable::catalog::Leadership,
}

/// The pid of process `name` of this cluster (`arbiter`, `dbid<N>`) if it
/// runs: its pid file names a live process whose command line holds
/// `mark` (its configuration or catalog path). A stale or damaged pid file
/// naming another process is not ours: nothing is ever signalled by it.
pub(super) fn running(dir: &ClusterDir, name: &str) -> Option<i32> {
    let pid = read_pid(&dir.pid(name)).filter(|p| alive(*p))?;
    let mark = match name.strip_prefix("dbid").and_then(|d| d.parse::<u32>().ok()) {
        Some(dbid) => dir.segment_config(dbid),
        // An arbiter on a coordinator names no catalog file: its key file.
        None if dir.load().is_ok_and(|f| f.coordinator.is_some()) => dir.key_file(),
        None => dir.catalog(),
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let mark = mark.as_os_str().as_encoded_bytes();
    if args.contains(&mark) {
        Some(pid)
    } else {
        tracing::warn!(name, pid, "the pid file names a process that is not this cluster's: ignored");
        None
    }
}

/// Start `exe args...` in its own process group (a Ctrl-C of the caller
/// does not reach it), output appended to `log`, pid in `pid_file`.
pub(super) fn spawn_detached(exe: &Path, args: &[String], log: &Path, pid_file: &Path) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    for p in [log, pid_file] {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening log {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| Error::io("log handle", e))?;
    let child = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io(format!("starting {} {}", exe.display(), args.join(" ")), e))?;
    std::fs::write(pid_file, format!("{}\n", child.id()))
        .map_err(|e| Error::io(format!("writing {}", pid_file.display()), e))?;
    Ok(child.id() as i32)
}

/// Wait until `ready()` or the deadline; `what` names it in the error.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > limit {
            return Err(Error::NotDone(format!("{what} did not happen within {} s", limit.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(50)); // polling another process
    }
    Ok(())
}

/// The host part of `HOST:PORT`.
pub(super) fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// The line of a process's log that says why it stopped: the last one it
/// printed as `filerep: …` (its fatal error), else its last line; terminal
/// colours removed.
pub fn log_cause(log: &Path) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(&text);
    let plain = |l: &str| {
        let mut out = String::new();
        let mut chars = l.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // ESC [ … letter
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out.trim().to_string()
    };
    let lines: Vec<String> = text.lines().map(plain).filter(|l| !l.is_empty()).collect();
    let fatal = lines.iter().rev().find(|l| l.starts_with("filerep: "));
    fatal.or(lines.last()).map(|l| layout::elide(l.trim_start_matches("filerep: ")))
}

/// A segment process this command started.
#[derive(Clone, Debug)]
pub struct Spawned {
    pub dbid: u32,
    pub pid: i32,
}

/// Start the segments of `addrs`, each in its own process group, and wait
/// until each answers on its control port (a process that exits is seen
/// at once). The failures, each with its cause from the segment's log.
pub fn start_segments(
    dir: &ClusterDir,
    exe: &Path,
    key: &ClusterKey,
    addrs: &[SegmentAddress],
    limit: Duration,
) -> (Vec<Spawned>, Vec<(u32, String)>) {
    let mut spawned = Vec::new();
    let mut failed = Vec::new();
    for a in addrs {
        let name = format!("dbid{}", a.dbid);
        let args: Vec<String> =
            vec!["segment".into(), "--config".into(), dir.segment_config(a.dbid).display().to_string()];
        match spawn_detached(exe, &args, &dir.log(&name), &dir.pid(&name)) {
            Ok(pid) => spawned.push((a, Spawned { dbid: a.dbid, pid })),
            Err(e) => failed.push((a.dbid, e.to_string())),
        }
    }
    let deadline = Instant::now() + limit;
    let mut answered = Vec::new();
    for (a, s) in spawned {
        let log = dir.log(&format!("dbid{}", a.dbid));
        loop {
            if probe(&a.control, key, Duration::from_secs(1)).is_some() {
                answered.push(s);
                break;
            }
            let gone = !alive(s.pid);
            if gone || Instant::now() > deadline {
                let cause = log_cause(&log).unwrap_or_else(|| "its log is empty".into());
                let what = if gone {
                    format!("segment dbid {} exited before answering on {}: {cause}", a.dbid, a.control)
                } else {
                    format!(
                        "segment dbid {} did not answer on {} within {} s (its log ends: {cause})",
                        a.dbid,
                        a.control,
                        limit.as_secs()
                    )
                };
                tracing::info!(dbid = a.dbid, %what, "segment did not start");
                failed.push((a.dbid, format!("{what}; log {}", log.display())));
                if !gone {
                    // Neither serving nor gone: it is not left half-started.
                    stop_spawned(dir, std::slice::from_ref(&s));
                }
                let _ = std::fs::remove_file(dir.pid(&format!("dbid{}", a.dbid)));
                break;
            }
            std::thread::sleep(Duration::from_millis(50)); // polling another process
        }
    }
    (answered, failed)
}

/// Stop processes this command started (SIGTERM, then SIGKILL), and
/// remove their pid files.
pub fn stop_spawned(dir: &ClusterDir, spawned: &[Spawned]) {
    use nix::sys::signal::{kill, Signal};
    for s in spawned {
        let pid = nix::unistd::Pid::from_raw(s.pid);
        let _ = kill(pid, Signal::SIGTERM);
        if wait_until("exit", Duration::from_secs(10), || !alive(s.pid)).is_err() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = wait_until("exit", Duration::from_secs(5), || !alive(s.pid));
        }
        let _ = std::fs::remove_file(dir.pid(&format!("dbid{}", s.dbid)));
    }
}

/// What `start` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StartReport {
    /// The arbiters started (their addresses).
    pub arbiters: Vec<String>,
    pub started: Vec<u32>,
    pub already_running: Vec<u32>,
    /// Started, but given no role by the arbiter in time (see `filerep state`).
    pub without_role: Vec<u32>,
    /// Not started: dbid and why (from its log).
    pub failed: Vec<(u32, String)>,
    /// Contents that are down (a double fault, or the primary lost while
    /// resynchronizing): their segments run but get no role until
    /// `filerep recover` restores them; not waited for.
    pub down: Vec<u32>,
}

/// Start the arbiter (if this is its host and it is not running) and
/// every segment of `host` (all when `None`) that is not running; wait
/// until each answers, and then until the arbiter has given each its role
/// (except those of a content that is down: none is coming).
pub fn start(dir: &ClusterDir, exe: &Path, host: Option<&str>) -> Result<StartReport> {
    let file = dir.load()?;
    let key = dir.key()?;
    let cat = dir.load_catalog(&file)?;
    let mut report = StartReport::default();
    let mine = |h: &str| host.is_none_or(|x| x == h);
    let mut to_start = Vec::new();
    for (_, a) in cat.addresses() {
        if !mine(&a.host) {
            continue;
        }
        if running(dir, &format!("dbid{}", a.dbid)).is_some() {
            report.already_running.push(a.dbid);
        } else {
            to_start.push(a.clone());
        }
    }
    let (spawned, failed) = start_segments(dir, exe, &key, &to_start, Duration::from_secs(30));
    report.started = spawned.iter().map(|s| s.dbid).collect();
    report.failed = failed;
    // The arbiters last: segments that are not answering yet would fail their probes.
    for (name, addr) in arbiters(&file) {
        if !mine(host_of(&addr)) || running(dir, &name).is_some() {
            continue;
        }
        let mut args: Vec<String> = vec!["arbiter".into()];
        match &file.coordinator {
            Some(spec) => args.extend(["--coordinator".into(), spec.clone()]),
            None => args.extend(["--catalog".into(), dir.catalog().display().to_string()]),
        }
        args.extend([
            "--key-file".into(),
            dir.key_file().display().to_string(),
            "--listen".into(),
            addr.clone(),
            "--interval-ms".into(),
            "200".into(),
        ]);
        let pid = spawn_detached(exe, &args, &dir.log(&name), &dir.pid(&name))?;
        // Answering: acting, standing by, or saying it cannot reach its coordinator.
        let answering = wait_until("the arbiter answering", Duration::from_secs(20), || {
            !alive(pid) || leadership(&addr, &key, Duration::from_secs(1)).is_ok()
        });
        if answering.is_err() || !alive(pid) {
            let cause = log_cause(&dir.log(&name)).unwrap_or_else(|| "its log is empty".into());
            return Err(Error::NotDone(format!(
                "the arbiter did not start on {addr}: {cause}; log {}",
                dir.log(&name).display()
            )));
        }
        report.arbiters.push(addr);
    }
    // Started means serving: wait until the arbiter has given every started
    // segment its role. A content that is down gets none: said, not waited for.
    let down: Vec<u32> = cat.pairs.iter().filter(|p| p.pair.down).map(|p| p.pair.content).collect();
    if !report.arbiters.is_empty() || arbiters(&file).iter().any(|(name, _)| running(dir, name).is_some()) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for a in &to_start {
            if !report.started.contains(&a.dbid) {
                continue;
            }
            if cat.content_of(a.dbid).is_some_and(|c| down.contains(&c)) {
                continue;
            }
            while !probe(&a.control, &key, Duration::from_secs(1))
                .is_some_and(|s| matches!(s.acting, Acting::Primary | Acting::Mirror))
            {
                if Instant::now() > deadline {
                    report.without_role.push(a.dbid);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50)); // the arbiter's rounds
            }
        }
    }
    report.down = down;
    Ok(report)
}

/// What `stop` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StopReport {
    pub arbiter: bool,
    pub stopped: Vec<u32>,
    pub killed: Vec<u32>,
}

/// Stop a cluster in order: the arbiter first (so stopping segments is not
/// taken for failures), then primaries (each shuts down in order: its
/// mirror confirms everything durable), then mirrors.
pub fn stop(dir: &ClusterDir, host: Option<&str>) -> Result<StopReport> {
    let file = dir.load()?;
    let key = dir.key()?;
    let cat = match dir.load_catalog(&file) {
        Ok(c) => c,
        // A coordinator that cannot be reached does not keep the processes
        // here running: each segment this directory configured is stopped,
        // in dbid order (roles unknown).
        Err(e) if file.coordinator.is_some() => {
            tracing::warn!(error = %e, "the catalog cannot be read: stopping every configured segment");
            configured_segments(dir, &file)?
        }
        Err(e) => return Err(e),
    };
    let mut report = StopReport::default();
    let mine = |h: &str| host.is_none_or(|x| x == h);
    let stop_pid = |name: &str| -> bool {
        let Some(pid) = running(dir, name) else { return false };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        let gone = wait_until(&format!("{name} exiting"), Duration::from_secs(20), || !alive(pid)).is_ok();
        if !gone {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(dir.pid(name));
        gone
    };
    for (name, addr) in arbiters(&file) {
        if mine(host_of(&addr)) {
            report.arbiter |= stop_pid(&name);
        }
    }
    // The catalog as the arbiter left it: primaries first.
    let cat = dir.load_catalog(&file).unwrap_or(cat);
    let mut order: Vec<(bool, &SegmentAddress)> = Vec::new();
    for p in &cat.pairs {
        for (s, a) in p.pair.segments.iter().zip(&p.addresses) {
            order.push((s.role == filerep::core::pair::Role::Mirror, a));
        }
    }
    for s in &cat.unmirrored {
        order.push((false, &s.address));
    }
    order.sort_by_key(|(mirror, a)| (*mirror, a.dbid));
    for (_, a) in order {
        if !mine(&a.host) {
            continue;
        }
        let name = format!("dbid{}", a.dbid);
        let Some(pid) = running(dir, &name) else { continue };
        // An orderly stop first, once the process on that address says it
        // is this dbid; a signal if it does not answer.
        if probe(&a.control, &key, Duration::from_secs(2)).is_some_and(|s| s.dbid == a.dbid) {
            let stop = SegmentRequest::Stop;
            let _ =
                filerep::cluster::control::call::<_, SegmentResponse>(&a.control, &key, &stop, Duration::from_secs(5));
        }
        if wait_until(&format!("dbid {} exiting", a.dbid), Duration::from_secs(30), || !alive(pid)).is_ok() {
            report.stopped.push(a.dbid);
            let _ = std::fs::remove_file(dir.pid(&name));
        } else if stop_pid(&name) {
            report.stopped.push(a.dbid);
        } else {
            report.killed.push(a.dbid);
        }
    }
    Ok(report)
}

/// A catalog of every segment configured in the directory, each as a
/// content without a mirror (roles unknown), addressed by its control
/// endpoint's host.
pub(super) fn configured_segments(dir: &ClusterDir, file: &ClusterFile) -> Result<Catalog> {
    let mut cat = Catalog::new(file.cluster_id, file.block_size, Vec::new());
    for (_, cfg) in dir.segment_configs()? {
        cat.unmirrored.push(CatalogSolo { content: cfg.content, generation: 0, up: true, address: address_of(&cfg) });
    }
    Ok(cat)
}
