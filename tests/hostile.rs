//! Bad input on the mirror's port. Each case shows that the mirror ends
//! that connection with a clear reason, applies nothing from it, and then
//! serves a good primary.

mod common;

use bytes::Bytes;
use common::*;
use filerep::config::SyncLevel;
use filerep::io::net::{tcp, Conn};
use filerep::protocol::handshake::{payload, ClusterKey, NetCheckHello, Status, MAX_NET_CHECK_BYTES};
use filerep::protocol::{Frame, Header, Kind, HEADER_LEN, MAX_BODY};
use filerep::runtime::mirror::SessionEnd;
use filerep::runtime::netcheck;
use filerep::runtime::primary::client_handshake;
use rand::{Rng, SeedableRng};
use std::io::IoSlice;
use std::net::TcpStream;
use std::time::Duration;

/// Connect and complete a genuine handshake, as a primary would.
fn handshaken(mirror: &InProcessMirror, dirs: &Dirs) -> Conn {
    let (mut r, mut w) = tcp(TcpStream::connect(mirror.addr).expect("connect")).expect("tcp");
    let cfg = primary_config(dirs, 8192, SyncLevel::Applied);
    client_handshake(&cfg, 1, r.as_mut(), w.as_mut(), "test").expect("handshake");
    (r, w)
}

fn frame(kind: Kind, seq: u64, id: u32, offset: u64, body: &[u8]) -> Vec<u8> {
    let mut h = Header::new(kind);
    h.seq = seq;
    h.file_id = id;
    h.offset = offset;
    Frame::new(h, Bytes::copy_from_slice(body)).to_vec()
}

/// Send raw bytes after the handshake, then wait for the mirror's verdict.
fn send_after_handshake(mirror: &InProcessMirror, dirs: &Dirs, bytes: &[u8], close: bool) -> SessionEnd {
    let (_r, mut w) = handshaken(mirror, dirs);
    w.send_all(&[IoSlice::new(bytes)]).expect("send");
    if close {
        w.close();
    }
    let report = mirror.next_report();
    drop(w);
    report.end
}

/// Afterwards a good primary is served and its changes land.
fn good_primary_still_served(mirror: &InProcessMirror, dirs: &Dirs) {
    let p = connect_primary(primary_config(dirs, 8192, SyncLevel::Applied), mirror.addr).expect("good primary");
    p.mkdir(1, "ok").expect("mkdir");
    p.create(1, "ok/rel").expect("create");
    p.extend(1, "ok/rel", 0, &[7u8; 8192]).expect("extend");
    p.sync(1, "ok/rel").expect("sync");
    p.shutdown(Duration::from_secs(10)).expect("shutdown");
    assert_eq!(mirror.next_report().end, SessionEnd::Shutdown);
    dirs.assert_identical();
}

fn bad_frame_case(bytes: Vec<u8>, close: bool, expect: &str) {
    let dirs = Dirs::new();
    let mirror = InProcessMirror::start(&dirs, 8192, 1);
    let end = send_after_handshake(&mirror, &dirs, &bytes, close);
    match &end {
        SessionEnd::BadFrame(reason) => assert!(reason.contains(expect), "reason {reason:?} lacks {expect:?}"),
        other => panic!("expected a bad frame ({expect}), got {other:?}"),
    }
    assert_eq!(dirs.mirror_entries(), 0, "nothing from the bad connection was applied");
    good_primary_still_served(&mirror, &dirs);
}

/// A valid bind and create, then the bad frame, all in one write: the
/// whole chunk is refused.
fn with_valid_prefix(bad: Vec<u8>) -> Vec<u8> {
    let mut v = frame(Kind::Bind, 1, 1, 0, b"victim");
    v.extend(frame(Kind::Create, 2, 1, 0, b""));
    v.extend(bad);
    v
}

#[test]
fn bad_header_checksum() {
    let mut f = frame(Kind::WriteBlock, 3, 1, 0, &[1u8; 8192]);
    f[10] ^= 0x40;
    bad_frame_case(with_valid_prefix(f), false, "header checksum");
}

#[test]
fn bad_body_checksum() {
    let mut f = frame(Kind::WriteBlock, 3, 1, 0, &[1u8; 8192]);
    f[HEADER_LEN + 5] ^= 1;
    bad_frame_case(with_valid_prefix(f), false, "body checksum");
}

#[test]
fn length_over_the_bound() {
    let mut h = Header::new(Kind::WriteAt);
    h.seq = 3;
    h.file_id = 1;
    h.body_len = MAX_BODY as u32 + 1;
    bad_frame_case(with_valid_prefix(h.encode().to_vec()), false, "over the limit");
}

#[test]
fn truncated_frame() {
    let f = frame(Kind::WriteBlock, 1, 1, 0, &[1u8; 8192]);
    bad_frame_case(f[..HEADER_LEN + 100].to_vec(), true, "ended inside a frame");
}

#[test]
fn unknown_operation() {
    let mut b = Header::new(Kind::Sync).encode();
    b[0] = 77;
    let sum = xxhash_rust::xxh3::xxh3_64(&b[..40]);
    b[40..48].copy_from_slice(&sum.to_le_bytes());
    bad_frame_case(with_valid_prefix(b.to_vec()), false, "unknown frame kind 77");
}

#[test]
fn random_bytes_after_handshake() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let junk: Vec<u8> = (0..5000).map(|_| rng.gen()).collect();
    bad_frame_case(junk, false, "checksum");
}

#[test]
fn random_bytes_instead_of_a_handshake() {
    let dirs = Dirs::new();
    let mirror = InProcessMirror::start(&dirs, 8192, 1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let junk: Vec<u8> = (0..3000).map(|_| rng.gen()).collect();
    let (_r, mut w) = tcp(TcpStream::connect(mirror.addr).expect("connect")).expect("tcp");
    w.send_all(&[IoSlice::new(&junk)]).expect("send");
    let end = mirror.next_report().end;
    assert!(matches!(end, SessionEnd::Refused(Status::Malformed, _)), "{end:?}");
    assert_eq!(dirs.mirror_entries(), 0);
    good_primary_still_served(&mirror, &dirs);
}

/// A frame past the largest file (docs/protocol.md § 3.4) is a protocol
/// error on its session; the mirror stays in service.
#[test]
fn frames_past_the_largest_file_end_the_session_not_the_mirror() {
    use filerep::protocol::MAX_FILE_BYTES;
    bad_frame_case(with_valid_prefix(frame(Kind::Truncate, 3, 1, MAX_FILE_BYTES + 1, b"")), false, "largest file");
    let block = MAX_FILE_BYTES / 8192;
    bad_frame_case(with_valid_prefix(frame(Kind::WriteBlock, 3, 1, block, &[1u8; 8192])), false, "largest file");
    bad_frame_case(with_valid_prefix(frame(Kind::WriteAt, 3, 1, MAX_FILE_BYTES, b"x")), false, "largest file");
}

/// The primary's API refuses a write or truncate past the largest file
/// before it changes anything, with a message that says so; the pair
/// goes on streaming. A file of exactly the largest size is held by both.
#[test]
fn a_write_or_truncate_past_the_largest_file_is_refused_and_the_pair_goes_on() {
    use filerep::protocol::MAX_FILE_BYTES;
    let dirs = Dirs::new();
    let mirror = InProcessMirror::start(&dirs, 8192, 1);
    let p = connect_primary(primary_config(&dirs, 8192, SyncLevel::Applied), mirror.addr).expect("primary");
    p.create(0, "rel").expect("create");
    p.extend(0, "rel", 0, &[1u8; 8192]).expect("extend");
    let past = MAX_FILE_BYTES / 8192;
    for (what, r) in [
        ("write_block", p.write_block(0, "rel", past, &[2u8; 8192])),
        ("extend", p.extend(0, "rel", past, &[2u8; 8192])),
        ("truncate", p.truncate(0, "rel", past + 1)),
        ("set_len", p.set_len(0, "rel", MAX_FILE_BYTES + 1)),
        ("write_at", p.write_at(0, "rel", MAX_FILE_BYTES - 1, b"xy")),
    ] {
        let e = r.expect_err(what);
        assert!(matches!(e, filerep::Error::InvalidArgument(_)), "{what}: {e}");
        let text = e.to_string();
        assert!(text.contains("largest file") && text.contains("nothing changed"), "{what}: {text}");
    }
    let local = dirs.primary[0].root.join("rel");
    assert_eq!(std::fs::metadata(&local).expect("stat").len(), 8192, "nothing changed locally");
    // Exactly the largest file: both sides hold it (sparse), the pair goes on.
    p.set_len(0, "rel", MAX_FILE_BYTES).expect("a file of the largest size");
    p.write_at(0, "rel", MAX_FILE_BYTES - 2, b"ok").expect("a write ending at the limit");
    p.flush(0, "rel").expect("flush");
    assert_eq!(std::fs::metadata(dirs.mirror[0].root.join("rel")).expect("stat").len(), MAX_FILE_BYTES);
    p.set_len(0, "rel", 8192).expect("back to one block");
    p.write_block(0, "rel", 0, &[3u8; 8192]).expect("streaming still");
    p.shutdown(Duration::from_secs(10)).expect("shutdown");
    assert_eq!(mirror.next_report().end, SessionEnd::Shutdown, "the mirror stayed in service");
    dirs.assert_identical();
}

#[test]
fn path_with_dot_dot() {
    bad_frame_case(frame(Kind::Bind, 1, 1, 0, b"base/../../etc/passwd"), false, "'..'");
}

#[test]
fn absolute_path() {
    bad_frame_case(frame(Kind::Mkdir, 1, 0, 0, b"/tmp/evil"), false, "absolute");
}

#[test]
fn path_through_a_symlink_out_of_the_filespace() {
    let dirs = Dirs::new();
    let outside = tempfile::tempdir().expect("outside");
    std::os::unix::fs::symlink(outside.path(), dirs.mirror[0].root.join("link")).expect("symlink");
    std::os::unix::fs::symlink(outside.path(), dirs.primary[0].root.join("link")).expect("symlink");
    let mirror = InProcessMirror::start(&dirs, 8192, 1);
    let mut bytes = frame(Kind::Bind, 1, 1, 0, b"link/planted");
    bytes.extend(frame(Kind::Create, 2, 1, 0, b""));
    let end = send_after_handshake(&mirror, &dirs, &bytes, false);
    match &end {
        SessionEnd::ApplyFailed(reason) => assert!(reason.contains("Escapes"), "{reason}"),
        other => panic!("expected the create to be refused, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(outside.path()).expect("read").count(), 0, "nothing written outside");
    // mkdir through the link is refused the same way.
    let end = send_after_handshake(&mirror, &dirs, &frame(Kind::Mkdir, 1, 0, 0, b"link/d"), false);
    assert!(matches!(end, SessionEnd::ApplyFailed(_)), "{end:?}");
    assert_eq!(std::fs::read_dir(outside.path()).expect("read").count(), 0);
    good_primary_still_served(&mirror, &dirs);
}

fn refused_case(
    tweak: impl FnOnce(&mut filerep::runtime::primary::PrimaryConfig),
    mirror_generation: u64,
    want: Status,
) {
    let dirs = Dirs::new();
    let mirror = InProcessMirror::start(&dirs, 8192, mirror_generation);
    let mut cfg = primary_config(&dirs, 8192, SyncLevel::Applied);
    tweak(&mut cfg);
    let err = connect_primary(cfg, mirror.addr).err().expect("refused");
    match &err {
        filerep::Error::Refused { status, reason, .. } => {
            assert_eq!(*status, want, "{reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected a refusal, got {other}"),
    }
    let end = mirror.next_report().end;
    assert!(matches!(&end, SessionEnd::Refused(s, _) if *s == want), "{end:?}");
    assert_eq!(dirs.mirror_entries(), 0);
    let mut good = primary_config(&dirs, 8192, SyncLevel::Applied);
    good.identity.generation = mirror_generation;
    let p = connect_primary(good, mirror.addr).expect("good primary");
    p.mkdir(0, "after").expect("mkdir");
    p.shutdown(Duration::from_secs(10)).expect("shutdown");
    assert_eq!(mirror.next_report().end, SessionEnd::Shutdown);
    assert!(dirs.mirror[0].root.join("after").is_dir());
}

#[test]
fn wrong_key() {
    refused_case(|c| c.key = ClusterKey::from_material(b"some other cluster's key").expect("key"), 1, Status::BadKey);
}

#[test]
fn wrong_cluster_id() {
    refused_case(|c| c.identity.cluster_id = 0xbad, 1, Status::WrongCluster);
}

#[test]
fn wrong_block_size() {
    refused_case(|c| c.identity.block_size = 16384, 1, Status::WrongBlockSize);
}

#[test]
fn stale_generation() {
    refused_case(|c| c.identity.generation = 2, 3, Status::StaleGeneration);
}

#[test]
fn wrong_filespaces() {
    refused_case(|c| c.filespaces[1].name = "other".into(), 1, Status::FilespaceMismatch);
}

#[test]
fn out_of_order_and_unbound_frames() {
    bad_frame_case(frame(Kind::Bind, 5, 1, 0, b"x"), false, "out of order");
    bad_frame_case(frame(Kind::WriteBlock, 1, 9, 0, &[0u8; 8192]), false, "not bound");
}

/// Mutated streams never panic the codec or the session: every frame is
/// either accepted or refused with a reason.
#[test]
fn random_mutations_never_panic() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    let mut valid = frame(Kind::Bind, 1, 1, 0, b"d/f");
    valid.extend(frame(Kind::Create, 2, 1, 0, b""));
    valid.extend(frame(Kind::WriteBlock, 3, 1, 2, &[3u8; 8192]));
    valid.extend(frame(Kind::WriteAt, 4, 1, 10, b"hello"));
    valid.extend(frame(Kind::Flush, 5, 1, 0, b""));
    let mut refused = 0;
    for _ in 0..3000 {
        let mut bytes = valid.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.gen();
        }
        let mut dec = filerep::protocol::Decoder::new();
        let mut session = filerep::core::mirror::MirrorSession::new(8192, 2, 1);
        dec.feed(&bytes);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    if session.on_frame(&f).is_err() {
                        refused += 1;
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    refused += 1;
                    break;
                }
            }
        }
    }
    assert!(refused > 2500, "most random mutations must be caught ({refused} of 3000)");
}

/// The real daemon process logs why it dropped a connection and goes on serving.
#[test]
fn daemon_logs_the_reason_and_keeps_serving() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dirs = Dirs::new();
    let args = mirror_args(&dirs, 8192, vec![]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_filerep"))
        .args(args.to_args())
        .env("FILEREP_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut lines = stdout.lines();
    let addr: std::net::SocketAddr = loop {
        let line = lines.next().expect("ready line").expect("read");
        if let Some(a) = line.strip_prefix(filerep_tools::process::READY_PREFIX) {
            break a.trim().parse().expect("address");
        }
    };
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| -> String {
        loop {
            let line =
                rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    };
    // A peer that speaks garbage after a genuine handshake.
    let cfg = primary_config(&dirs, 8192, SyncLevel::Applied);
    let (mut r2, mut w2) = tcp(TcpStream::connect(addr).expect("connect")).expect("tcp");
    client_handshake(&cfg, 1, r2.as_mut(), w2.as_mut(), "test").expect("handshake");
    w2.send_all(&[IoSlice::new(&[0xee; 100])]).expect("send");
    let line = wait_for("bad frame");
    assert!(line.contains("header checksum"), "{line}");
    w2.close();
    drop(r2);
    assert_eq!(dirs.mirror_entries(), 0);
    let p = connect_primary(primary_config(&dirs, 8192, SyncLevel::Applied), addr).expect("good primary");
    p.mkdir(0, "served").expect("mkdir");
    p.shutdown(Duration::from_secs(10)).expect("shutdown");
    wait_for("orderly shutdown");
    assert!(dirs.mirror[0].root.join("served").is_dir());
    let _ = child.kill();
    let _ = child.wait();
}

/// Random and mutated handshake messages never panic the decoders.
#[test]
fn handshake_decoders_survive_random_input() {
    use filerep::protocol::handshake::{split_message, Challenge, Hello, Proof, Verdict};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
    let valid = Hello {
        cluster_id: 1,
        content_id: 2,
        block_size: 8192,
        generation: 3,
        start_seq: 1,
        client_nonce: [9; 32],
        filespaces: vec!["pg_system".into(), "fs_fast".into()],
    }
    .encode();
    let mut refused = 0;
    for i in 0..20_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            let n = rng.gen_range(0..300);
            (0..n).map(|_| rng.gen()).collect()
        } else {
            let mut v = valid.clone();
            let j = rng.gen_range(0..v.len());
            v[j] ^= rng.gen_range(1..=255u8);
            v
        };
        if let Ok(Some((msg, _))) = split_message(&bytes) {
            let all_failed = Hello::decode(msg).is_err()
                && Challenge::decode(msg).is_err()
                && Proof::decode(msg).is_err()
                && Verdict::decode(msg).is_err();
            refused += all_failed as u32;
        } else {
            refused += 1;
        }
    }
    assert!(refused > 19_900, "nearly every random or mutated message is refused ({refused})");
}

// ---- a flood of connections that never authenticate ------------------------

use common::pair::{kill, wait_for, Pair};
use filerep::cluster::segment::Acting;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where a flood thread connects, and from where.
#[derive(Clone, Debug)]
enum Target {
    Tcp { name: &'static str, addr: SocketAddr, from: Ipv4Addr },
    Unix { name: &'static str, path: std::path::PathBuf },
}

/// A connection the flood holds: idle ones send nothing, trickling ones one
/// byte per tick, and both are opened again whenever the server closes them.
enum Held {
    Tcp(std::net::TcpStream),
    Unix(UnixStream),
}

impl Held {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Held::Tcp(s) => s,
            Held::Unix(s) => s,
        }
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

#[derive(Default, Debug, Clone)]
struct FloodFigures {
    opened: u64,
    closed_by_server: u64,
    /// Of those, closed after living 1.5 s or more: at the handshake deadline.
    closed_at_deadline: u64,
    refused: u64,
    held_most: usize,
}

/// Bounds on the whole flood: connections opened, and ticks of 100 ms.
const FLOOD_MAX_CONNECTIONS: u64 = 60_000;
const FLOOD_TICK: Duration = Duration::from_millis(100);

fn open(t: &Target) -> std::io::Result<Held> {
    match t {
        Target::Tcp { addr: SocketAddr::V4(to), from, .. } => {
            use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
            use std::os::fd::AsRawFd;
            let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
            bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(*from, 0)))?;
            connect(fd.as_raw_fd(), &SockaddrIn::from(*to))?;
            let s = std::net::TcpStream::from(fd);
            s.set_nonblocking(true)?;
            Ok(Held::Tcp(s))
        }
        Target::Tcp { .. } => Err(std::io::Error::other("IPv4 targets only")),
        Target::Unix { path, .. } => {
            let s = UnixStream::connect(path)?;
            s.set_nonblocking(true)?;
            Ok(Held::Unix(s))
        }
    }
}

/// Whether the server closed it (reads what it sent, if anything).
fn closed(h: &mut Held) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match h.io().read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Hold `idle + trickle` connections to `target` until `stop`, renewing
/// each one the server closes, one tick at a time.
fn flood(
    target: Target,
    idle: usize,
    trickle: usize,
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    at_deadline: Arc<AtomicU64>,
) -> std::thread::JoinHandle<FloodFigures> {
    std::thread::spawn(move || {
        let mut f = FloodFigures::default();
        // Slow trickles announce a 4 KiB message, then send one byte a tick.
        let trickled = |k: u64| [0x00, 0x10, 0x00, 0x00].get(k as usize).copied().unwrap_or(b'A');
        let mut slots: Vec<Option<(Held, u64, Instant)>> = (0..idle + trickle).map(|_| None).collect();
        while !stop.load(Ordering::SeqCst) {
            for (i, slot) in slots.iter_mut().enumerate() {
                if let Some((h, sent, since)) = slot {
                    if closed(h) {
                        f.closed_by_server += 1;
                        if since.elapsed() >= Duration::from_millis(1500) {
                            f.closed_at_deadline += 1;
                            at_deadline.fetch_add(1, Ordering::SeqCst);
                        }
                        *slot = None;
                    } else if i >= idle && h.io().write(&[trickled(*sent)]).is_ok() {
                        *sent += 1;
                    }
                }
                if slot.is_none() && total.load(Ordering::SeqCst) < FLOOD_MAX_CONNECTIONS {
                    match open(&target) {
                        Ok(h) => {
                            total.fetch_add(1, Ordering::SeqCst);
                            f.opened += 1;
                            *slot = Some((h, 0, Instant::now()));
                        }
                        // The process is down (killed on purpose): try again next tick.
                        Err(_) => f.refused += 1,
                    }
                }
            }
            f.held_most = f.held_most.max(slots.iter().flatten().count());
            // Pacing of the load (each slot renews at most once a tick), not synchronisation.
            std::thread::sleep(FLOOD_TICK);
        }
        f
    })
}

/// Say something in the test's output whether or not it passes.
fn figure(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "flood: {line}");
}

fn timed(what: &str, steps: &mut Vec<(String, Duration)>, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    steps.push((what.to_string(), t.elapsed()));
}

/// Idle and slow-trickle connections from four loopback addresses other
/// than the pair's, held and renewed for the whole test against every
/// listener (both segments' replication and control ports, the arbiter's
/// control port, both client sockets), more of them than any listener
/// used to allow at once. Meanwhile the pair streams, loses its mirror,
/// is recovered, and fails over: every step must finish in its bound.
#[test]
fn a_connection_flood_does_not_lock_out_the_pair() {
    let mut pair = Pair::start(8192);
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let at_deadline = Arc::new(AtomicU64::new(0));
    let addr = |s: &str| -> SocketAddr { s.parse().expect("address") };
    let mut targets = Vec::new();
    for from in 2..=5u8 {
        let from = Ipv4Addr::new(127, 0, 0, from);
        for (name, a) in [
            ("primary's replication port", pair.seg(2).cfg.data_listen.clone()),
            ("mirror's replication port", pair.seg(3).cfg.data_listen.clone()),
            ("primary's control port", pair.seg(2).cfg.control_listen.clone()),
            ("mirror's control port", pair.seg(3).cfg.control_listen.clone()),
            ("arbiter's control port", pair.arbiter_addr.clone()),
        ] {
            targets.push(Target::Tcp { name, addr: addr(&a), from });
        }
    }
    targets.push(Target::Unix { name: "primary's client socket", path: pair.seg(2).cfg.socket.clone() });
    targets.push(Target::Unix { name: "mirror's client socket", path: pair.seg(3).cfg.socket.clone() });
    // Two sources hold 14 connections per port, over the per-source budget
    // (4), so each renewal drops one of their own; two hold 3, which stay
    // until the handshake deadline closes them. 34 per port: over the 32
    // the control port used to serve at once (16 on the replication port).
    let size = |t: &Target| match t {
        Target::Tcp { from, .. } if from.octets()[3] <= 3 => (8, 6),
        Target::Tcp { .. } => (2, 1),
        Target::Unix { .. } => (8, 6),
    };
    let floods: Vec<_> = targets
        .iter()
        .map(|t| {
            let (idle, trickle) = size(t);
            (t.clone(), flood(t.clone(), idle, trickle, stop.clone(), total.clone(), at_deadline.clone()))
        })
        .collect();
    wait_for("the flood to open its connections", Duration::from_secs(10), || {
        total.load(Ordering::SeqCst) >= targets.iter().map(|t| size(t).0 + size(t).1).sum::<usize>() as u64
    });
    let key = pair.key.clone();
    let mut steps = Vec::new();
    let mut cl = filerep::cluster::client::Client::connect(&pair.seg(2).cfg.socket).expect("client");
    // Every TCP listener that accepts has closed the small sources' first
    // connections at the handshake deadline (2 s) by the end of this step
    // (the primary's replication port is not served while it is primary).
    let first_round = 3 * 2 * 4;
    let mut streamed = 0u64;
    timed("stream through a deadline round of the flood", &mut steps, || {
        let mut fresh = filerep::cluster::client::Client::connect(&pair.seg(2).cfg.socket).expect("client");
        fresh.create(0, "rel").expect("create");
        let started = Instant::now();
        while at_deadline.load(Ordering::SeqCst) < first_round {
            assert!(started.elapsed() < Duration::from_secs(30), "the flood was not closed at the deadline");
            cl.write_block(0, "rel", streamed % 50, &[streamed as u8; 8192]).expect("write while streaming");
            streamed += 1;
        }
        assert_eq!(pair.seg(2).status(&key).map(|s| s.mode), Some('s'));
    });
    figure(&format!("{streamed} blocks written and acknowledged by the mirror in the first step"));
    timed("lose the mirror: change tracking", &mut steps, || {
        kill(&mut pair.seg_mut(3).child);
        wait_for("change tracking", Duration::from_secs(20), || {
            pair.seg(2).status(&key).is_some_and(|s| s.mode == 'c')
        });
        for i in 0..50 {
            cl.write_block(0, "rel", i, &[0xc0; 8192]).expect("write in change tracking");
        }
    });
    timed("mirror back and recovered: synchronized", &mut steps, || {
        pair.seg_mut(3).start();
        wait_for("the mirror to serve", Duration::from_secs(20), || {
            pair.seg(3).status(&key).is_some_and(|s| s.acting == Acting::Mirror)
        });
        let (code, out, err) = pair.recover(&[]);
        assert_eq!(code, 0, "recover under the flood: {out}{err}");
        wait_for("synchronized", Duration::from_secs(20), || pair.seg(2).status(&key).is_some_and(|s| s.mode == 's'));
        cl.write_block(0, "rel", 0, &[0x5e; 8192]).expect("write once synchronized");
    });
    timed("primary killed: the mirror takes over", &mut steps, || {
        kill(&mut pair.seg_mut(2).child);
        wait_for("the promotion", Duration::from_secs(20), || {
            pair.seg(3).status(&key).is_some_and(|s| s.acting == Acting::Primary && s.mode == 'c')
        });
        let mut nl = filerep::cluster::client::Client::connect(&pair.seg(3).cfg.socket).expect("client");
        assert_eq!(nl.read_block(0, "rel", 0).expect("read on the new primary"), vec![0x5e; 8192]);
        nl.write_block(0, "rel", 1, &[0xfa; 8192]).expect("write on the new primary");
    });
    stop.store(true, Ordering::SeqCst);
    let mut all = FloodFigures::default();
    for (t, h) in floods {
        let f = h.join().expect("flood thread");
        match &t {
            Target::Unix { name, .. } => figure(&format!("{name}: {f:?}")),
            Target::Tcp { name, from, .. } if from.octets()[3] == 2 => figure(&format!("{name}, from {from}: {f:?}")),
            Target::Tcp { .. } => {}
        }
        all.opened += f.opened;
        all.closed_by_server += f.closed_by_server;
        all.closed_at_deadline += f.closed_at_deadline;
        all.refused += f.refused;
        all.held_most += f.held_most;
    }
    figure(&format!(
        "{} connections opened from 4 addresses to 7 listeners, {} closed by the servers ({} at the handshake \
         deadline, the others for newer ones), {} refused while a process was down, {} held at once at most",
        all.opened, all.closed_by_server, all.closed_at_deadline, all.refused, all.held_most
    ));
    for (what, d) in &steps {
        figure(&format!("{what}: {} ms", d.as_millis()));
    }
    assert!(all.closed_by_server > 100, "the flood was renewed: the servers closed its connections");
    assert!(all.closed_at_deadline >= first_round, "the deadline closed silent connections");
    assert!(all.opened < FLOOD_MAX_CONNECTIONS, "the flood stayed within its bound ({})", all.opened);
}

/// A network check (docs/protocol.md § 14) with the key: its bytes are
/// read and counted, nothing lands in the filespaces, and a primary is
/// served after it.
#[test]
fn a_network_check_is_timed_and_the_mirror_goes_on() {
    let dirs = Dirs::new();
    let mirror = InProcessMirror::start(&dirs, 8192, 1);
    let (mut r, mut w) = tcp(TcpStream::connect(mirror.addr).expect("connect")).expect("tcp");
    let key = ClusterKey::from_material(common::KEY).expect("key");
    let bytes = 8 << 20;
    let check = netcheck::run(r.as_mut(), w.as_mut(), &key, bytes, "test", Duration::from_secs(30)).expect("check");
    assert_eq!(check.bytes, bytes);
    assert!(check.seconds > 0.0 && check.mb_s() > 0.0, "{check:?}");
    assert_eq!(mirror.next_report().end, SessionEnd::NetCheck(Ok(bytes)));
    assert_eq!(dirs.mirror_entries(), 0);
    good_primary_still_served(&mirror, &dirs);
}

/// A network check's handshake for 1 MiB over `conn`, its proof made by
/// `prove(hello, client nonce, server nonce)`: the connection and the
/// Verdict's status.
fn check_handshake(conn: Conn, prove: impl Fn(&[u8], &[u8; 32], &[u8; 32]) -> [u8; 32]) -> (Conn, Status) {
    use filerep::protocol::handshake::{Challenge, Proof, Verdict};
    use filerep::runtime::primary::read_message;
    let (mut r, mut w) = conn;
    let nonce = [5u8; 32];
    let hello = NetCheckHello { client_nonce: nonce, bytes: 1 << 20 }.encode();
    w.send_all(&[IoSlice::new(&hello)]).expect("send");
    let challenge = Challenge::decode(&read_message(r.as_mut(), None).expect("challenge")).expect("challenge");
    let proof = prove(payload(&hello), &nonce, &challenge.server_nonce);
    w.send_all(&[IoSlice::new(&Proof { proof }.encode())]).expect("proof");
    let status = Verdict::decode(&read_message(r.as_mut(), None).expect("verdict")).expect("verdict").status;
    ((r, w), status)
}

/// A network check's hello, proof and byte stream are as untrusted as a
/// stream's: each bad one ends its connection with the reason, and the
/// mirror then serves a primary.
#[test]
fn bad_network_checks_end_their_connection_only() {
    let dirs = Dirs::new();
    let mirror = InProcessMirror::start(&dirs, 8192, 1);
    let key = ClusterKey::from_material(common::KEY).expect("key");
    let connect = || tcp(TcpStream::connect(mirror.addr).expect("connect")).expect("tcp");

    // The wrong key: refused before a byte is read.
    let (mut r, mut w) = connect();
    let wrong = ClusterKey::from_material(b"some other cluster's key").expect("key");
    let e = netcheck::run(r.as_mut(), w.as_mut(), &wrong, 1 << 20, "test", Duration::from_secs(30)).unwrap_err();
    assert!(matches!(e, filerep::Error::Refused { status: Status::BadKey, .. }), "{e}");
    assert!(matches!(mirror.next_report().end, SessionEnd::Refused(Status::BadKey, _)));

    // A byte count of 0, or past the limit: malformed, refused at once.
    for bytes in [0, MAX_NET_CHECK_BYTES + 1] {
        let (mut r, mut w) = connect();
        let hello = NetCheckHello { client_nonce: [3; 32], bytes }.encode();
        w.send_all(&[IoSlice::new(&hello)]).expect("send");
        let answer = filerep::runtime::primary::read_message(r.as_mut(), None).expect("verdict");
        let v = filerep::protocol::handshake::Verdict::decode(&answer).expect("a verdict");
        assert_eq!(v.status, Status::Malformed, "{bytes}: {}", v.reason);
        assert!(v.reason.contains("network check"), "{}", v.reason);
        let end = mirror.next_report().end;
        assert!(matches!(&end, SessionEnd::Refused(Status::Malformed, _)), "{end:?}");
    }

    // Accepted, then the peer goes away half way: the check fails, named.
    let ((_r, mut w), status) = check_handshake(connect(), |h, n, s| key.net_check_proof(h, n, s));
    assert_eq!(status, Status::Accepted);
    w.send_all(&[IoSlice::new(&[0u8; 1000])]).expect("some bytes");
    w.close();
    let end = mirror.next_report().end;
    assert!(matches!(&end, SessionEnd::NetCheck(Err(why)) if why.contains("1000 of 1048576")), "{end:?}");

    // A stream's proof does not open a network check (labels differ).
    let (_conn, status) = check_handshake(connect(), |h, n, s| key.primary_proof(h, n, s));
    assert_eq!(status, Status::BadKey);
    assert!(matches!(mirror.next_report().end, SessionEnd::Refused(Status::BadKey, _)));

    assert_eq!(dirs.mirror_entries(), 0);
    good_primary_still_served(&mirror, &dirs);
}
