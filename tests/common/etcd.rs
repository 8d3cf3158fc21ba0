//! A real etcd cluster of three members on loopback for the coordinator
//! tests, and a TCP proxy the test can cut (an arbiter cut off from etcd
//! while it still reaches the segments). etcd comes from Debian's
//! etcd-server; without it a test is skipped with the reason, or fails
//! when FILEREP_REQUIRE_ETCD=1 (CI).
#![allow(dead_code)]

use super::pair::free_addr;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Member {
    pub name: String,
    pub client: String,
    pub peer: String,
    dir: PathBuf,
    child: Option<Child>,
}

pub struct Etcd {
    _tmp: tempfile::TempDir,
    pub members: Vec<Member>,
    token: String,
}

/// The etcd binary, if installed.
pub fn etcd_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("etcd"))
        .find(|f| f.is_file())
}

/// Skip (return from) the calling test, saying why, where etcd is not
/// installed; with FILEREP_REQUIRE_ETCD=1 (CI) fail instead.
#[macro_export]
macro_rules! skip_without_etcd {
    ($name:expr) => {
        if $crate::common::etcd::etcd_binary().is_none() {
            let why = "etcd is not installed (Debian: etcd-server)";
            if std::env::var_os("FILEREP_REQUIRE_ETCD").is_some_and(|v| v == "1") {
                panic!("{}: FILEREP_REQUIRE_ETCD=1 but {why}", $name);
            }
            $crate::common::pair::skipped($name, why);
            return;
        }
    };
}

impl Etcd {
    /// Three members, started and answering.
    pub fn start() -> Etcd {
        let tmp = tempfile::tempdir().expect("tempdir");
        let token = format!("filerep-test-{}-{}", std::process::id(), rand::random::<u32>());
        let members = (1..=3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_addr(),
                peer: free_addr(),
                dir: tmp.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let mut e = Etcd { _tmp: tmp, members, token };
        for i in 0..3 {
            e.spawn(i);
        }
        e.wait_healthy(Duration::from_secs(30));
        e
    }

    fn spawn(&mut self, i: usize) {
        let cluster: Vec<String> = self.members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect();
        let m = &self.members[i];
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(m.dir.with_extension("log")).expect("etcd log");
        // Heartbeats of 100 ms and elections after 1 s: quick enough for a
        // test, slow enough for a loaded 2-core machine.
        let child = Command::new(etcd_binary().expect("etcd installed (the test checks first)"))
            .args(["--name", &m.name, "--data-dir", &m.dir.display().to_string()])
            .args(["--listen-client-urls", &format!("http://{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://{}", m.peer)])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// The client endpoints, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client.clone()).collect::<Vec<_>>().join(",")
    }

    /// Wait until a majority answers a write: a put through etcd's v3
    /// JSON gateway (no etcdctl needed).
    pub fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            if self.members.iter().filter(|m| m.child.is_some()).any(|m| put_ok(&m.client)) {
                return;
            }
            assert!(start.elapsed() < limit, "etcd did not become healthy in {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a killed member again, on its data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} runs");
        self.spawn(i);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A write through etcd's v3 JSON gateway (`/v3/kv/put`), which succeeds
/// only when the cluster has a leader and a majority.
fn put_ok(client: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(client) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    // key "health-check", value "ok", base64.
    let body = r#"{"key":"aGVhbHRoLWNoZWNr","value":"b2s="}"#;
    let req = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: {client}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200") && out.contains("\"revision\"")
}

/// A TCP proxy in front of one address; `cut` closes every connection
/// through it and refuses new ones until `heal`.
pub struct Proxy {
    pub addr: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn new(target: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = l.local_addr().expect("addr").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (target, c, o) = (target.to_string(), cut.clone(), open.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    let _ = s.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(up) = TcpStream::connect(&target) else { continue };
                let pairs = [(s.try_clone(), up.try_clone()), (up.try_clone(), s.try_clone())];
                {
                    let mut open = o.lock().unwrap_or_else(|e| e.into_inner());
                    open.extend([s, up]);
                }
                for (from, to) in pairs {
                    if let (Ok(mut from), Ok(mut to)) = (from, to) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Write);
                        });
                    }
                }
            }
        });
        Proxy { addr, cut, open }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
