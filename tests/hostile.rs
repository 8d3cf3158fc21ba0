//! Bad input on the mirror's port. Each case shows that the mirror ends
//! that connection with a clear reason, applies nothing from it, and then
//! serves a good primary.

mod common;

use bytes::Bytes;
use common::*;
use filerep::config::SyncLevel;
use filerep::io::net::{tcp, Conn};
use filerep::protocol::handshake::{ClusterKey, Status};
use filerep::protocol::{Frame, Header, Kind, HEADER_LEN, MAX_BODY};
use filerep::runtime::mirror::SessionEnd;
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
