//! Structure-aware fuzzing on stable Rust: every decoder of untrusted bytes
//! (frames and the mirror's session checks, the handshake, the mirror
//! configuration file, a segment's configuration, the catalog, the
//! change-log and activity log replay, control messages, the client
//! socket's requests) gets inputs built from structure (the `arbitrary`
//! crate: valid messages with arbitrary fields) and then mutated (bytes
//! flipped, set, cut, inserted, spliced). A panic, or a decoded value that
//! does not survive its own encoder, is a finding.
//!
//! CI runs a fixed number of cases per target (`cargo test --release
//! --test fuzz`, seconds). By hand, for hours:
//!
//! ```text
//! FILEREP_FUZZ_SECONDS=3600 cargo test --release --test fuzz -- --nocapture --test-threads 2
//! ```
//!
//! runs every target for that many seconds from a random seed, printing
//! the seed; `FILEREP_FUZZ_SEED=S` replays one, `FILEREP_FUZZ_CASES=N`
//! sets the count. A failure prints the target, the seed and the input in
//! hex: add it to `REGRESSIONS` below once fixed.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use filerep::cluster::client::Request;
use filerep::cluster::segment::{ArbiterRequest, SegmentConfig, SegmentRequest, SegmentResponse};
use filerep::core::mirror::MirrorSession;
use filerep::durable::catalog::Catalog;
use filerep::durable::changelog::ChangeLog;
use filerep::io::disk::{Disk, FsPath, OpenMode, SimDisk};
use filerep::protocol::handshake::{
    split_message, Challenge, Hello, NetCheckHello, NetCheckResult, Proof, Status, Verdict, MAX_NET_CHECK_BYTES,
};
use filerep::protocol::path::RelPath;
use filerep::protocol::{Ack, Decoder, Frame, Header, Kind, ListingBody, ReconcileBody};
use rand::{Rng, RngCore, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Target = fn(&mut Unstructured) -> arbitrary::Result<()>;

/// Findings kept as regression cases: (target, input). Each ran into a
/// panic once; they run first, every time.
const REGRESSIONS: &[(&str, &str)] = &[];

// ---- mutation --------------------------------------------------------------

/// Mutate `b` a few times as the fuzz input says.
fn mutate(u: &mut Unstructured, b: &mut Vec<u8>) -> arbitrary::Result<()> {
    for _ in 0..u.int_in_range(0..=4u8)? {
        match u.int_in_range(0..=5u8)? {
            0 if !b.is_empty() => {
                let i = u.choose_index(b.len())?;
                b[i] ^= 1 << u.int_in_range(0..=7u8)?;
            }
            1 if !b.is_empty() => {
                let i = u.choose_index(b.len())?;
                b[i] = u.arbitrary()?;
            }
            2 => {
                let n = u.int_in_range(0..=b.len())?;
                b.truncate(n);
            }
            3 => {
                let i = u.int_in_range(0..=b.len())?;
                let extra: Vec<u8> = u.arbitrary()?;
                b.splice(i..i, extra);
            }
            4 if b.len() > 1 => {
                // Repeat a piece of itself somewhere (lengths and headers
                // end up where a parser expects other things).
                let from = u.choose_index(b.len())?;
                let to = u.int_in_range(from..=b.len())?;
                let piece = b[from..to].to_vec();
                let at = u.int_in_range(0..=b.len())?;
                b.splice(at..at, piece);
            }
            _ => {
                // Interesting integers over 1, 2, 4 or 8 bytes.
                if b.len() >= 8 {
                    let i = u.int_in_range(0..=b.len() - 8)?;
                    let v: u64 = *u.choose(&[0, 1, u64::MAX, 1 << 42, (1 << 42) + 1, 1 << 63, 255, 65535, 1 << 32])?;
                    let w = *u.choose(&[1usize, 2, 4, 8])?;
                    b[i..i + w].copy_from_slice(&v.to_le_bytes()[..w]);
                }
            }
        }
    }
    Ok(())
}

fn text(u: &mut Unstructured, valid: &str) -> arbitrary::Result<String> {
    let mut b = valid.as_bytes().to_vec();
    mutate(u, &mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

// ---- frames and the mirror's session ----------------------------------------

#[derive(Arbitrary, Debug)]
struct ArbFrame {
    kind: u8,
    flags: u8,
    filespace: u8,
    seq_delta: u8,
    file_id: u8,
    aux: u16,
    offset: u64,
    body: Vec<u8>,
}

const KINDS: [u8; 22] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 32, 33, 64, 65, 66, 67];

fn frames(u: &mut Unstructured) -> arbitrary::Result<()> {
    let n = u.int_in_range(1..=12u8)?;
    let mut wire = Vec::new();
    let mut seq = 1u64;
    // Files 1..=3 bound first, as a primary's session starts.
    for (id, path) in [(1u32, &b"f1"[..]), (2, b"a/f2"), (3, b"a/b/f3")] {
        let mut h = Header::new(Kind::Bind);
        h.seq = seq;
        h.file_id = id;
        seq += 1;
        wire.extend_from_slice(&Frame::new(h, Bytes::copy_from_slice(path)).to_vec());
    }
    for _ in 0..n {
        let f: ArbFrame = u.arbitrary()?;
        let kind = Kind::from_u8(f.kind).unwrap_or(Kind::from_u8(KINDS[f.kind as usize % KINDS.len()]).expect("kind"));
        let mut h = Header::new(kind);
        h.flags = f.flags & 3;
        h.filespace = (f.filespace % 3) as u16;
        h.file_id = (f.file_id % 4) as u32;
        h.aux = f.aux as u32;
        h.offset = f.offset;
        // Mostly what a primary would send (bound ids, sane bodies), so
        // frames get past the checks and into the deeper ones.
        let raw = u.ratio(1, 8)?;
        if !raw {
            h.file_id = 1 + (f.file_id % 3) as u32;
            h.filespace = (f.filespace % 2) as u16;
            h.offset = f.offset % 64;
        }
        let paths: [&[u8]; 6] = [b"a", b"a/b", b"a/b/c", b"../x", b"", b"/abs"];
        let reconcile;
        let body: &[u8] = match kind {
            Kind::Bind | Kind::Mkdir | Kind::Rmdir | Kind::ListRequest => {
                paths[f.aux as usize % if raw { 6 } else { 3 }]
            }
            Kind::WriteBlock | Kind::Extend => &[0x5a; 8192][..],
            Kind::Rename => {
                h.aux = if raw { h.aux } else { 1 };
                b"ab/c"
            }
            Kind::Reconcile => {
                reconcile = ReconcileBody {
                    entry: match f.flags % 4 {
                        0 => filerep::protocol::ReconcileEntry::Absent,
                        1 => filerep::protocol::ReconcileEntry::File,
                        2 => filerep::protocol::ReconcileEntry::Dir { keep: None },
                        _ => filerep::protocol::ReconcileEntry::Dir {
                            keep: Some(vec![("x".into(), filerep::protocol::ChildKind::File)]),
                        },
                    },
                    path: if f.flags % 4 >= 2 { b"a".to_vec() } else { b"a/b".to_vec() },
                }
                .encode();
                &reconcile
            }
            Kind::WriteAt | Kind::Fault | Kind::Hashes | Kind::Listing => &f.body[..],
            _ if raw => &f.body[..],
            _ => b"",
        };
        if !raw && kind == Kind::HashRequest {
            h.aux = 1 + (f.aux as u32 % 1024);
        }
        if kind.is_operation() {
            seq += (raw && f.seq_delta % 8 == 0) as u64;
            h.seq = seq;
            seq += 1;
        }
        wire.extend_from_slice(&Frame::new(h, Bytes::copy_from_slice(body)).to_vec());
    }
    if u.ratio(1, 2)? {
        mutate(u, &mut wire)?;
    }
    let mut dec = Decoder::new();
    let mut session = MirrorSession::new(8192, 2, 1);
    // What passes the checks is applied to a simulated mirror's disk.
    let mut applier = filerep::exec::apply::Applier::new(Arc::new(SimDisk::new(2)), 1);
    let mut at = 0;
    while at < wire.len() {
        let step = u.int_in_range(1..=wire.len() - at)?;
        dec.feed(&wire[at..at + step]);
        at += step;
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    check_bodies(&f);
                    let r = session.on_frame(&f);
                    if let Ok(filerep::core::mirror::Step::Apply { seq, op, durable, catching_up }) = &r {
                        let s = filerep::exec::apply::Sequenced {
                            seq: *seq,
                            op: op.clone(),
                            durable: *durable,
                            catching_up: *catching_up,
                        };
                        if applier.apply(&[s]).is_err() {
                            return Ok(());
                        }
                        let _ = applier.take_replies();
                        if applier.wants_sync() {
                            let _ = applier.take_sync_job();
                        }
                    }
                    if r.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(_) => return Ok(()),
            }
        }
    }
    let _ = dec.finish();
    Ok(())
}

/// The body decoders of every frame a primary or mirror reads.
fn check_bodies(f: &Frame) {
    if let Some(a) = Ack::from_body(&f.body) {
        assert_eq!(Ack::from_body(&a.to_frame().body), Some(a));
    }
    if let Ok(r) = ReconcileBody::decode(&f.body) {
        assert_eq!(ReconcileBody::decode(&r.encode()), Ok(r));
    }
    if let Ok(l) = ListingBody::decode(&f.body) {
        assert_eq!(ListingBody::decode(&l.encode()), Ok(l));
    }
}

// ---- handshake ---------------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct ArbHello {
    cluster_id: u64,
    content_id: u32,
    block_size: u32,
    generation: u64,
    start_seq: u64,
    client_nonce: [u8; 32],
    filespaces: Vec<String>,
}

fn handshake(u: &mut Unstructured) -> arbitrary::Result<()> {
    let h: ArbHello = u.arbitrary()?;
    let mut hello = Hello {
        cluster_id: h.cluster_id,
        content_id: h.content_id,
        block_size: h.block_size,
        generation: h.generation,
        start_seq: h.start_seq,
        client_nonce: h.client_nonce,
        filespaces: h.filespaces.into_iter().take(70).map(|f| f.chars().take(70).collect()).collect(),
    };
    if u.arbitrary()? {
        hello.filespaces = vec!["pg_system".into(), "fs_fast".into()];
    }
    let mut msgs = [
        hello.encode(),
        Challenge { server_nonce: u.arbitrary()? }.encode(),
        Proof { proof: u.arbitrary()? }.encode(),
        Verdict {
            status: Status::from_u16(u.int_in_range(0..=9u16)?).expect("status"),
            generation: u.arbitrary()?,
            mirror_proof: u.arbitrary()?,
            reason: u.arbitrary::<String>()?.chars().take(1100).collect(),
        }
        .encode(),
        NetCheckHello { client_nonce: u.arbitrary()?, bytes: u.arbitrary()? }.encode(),
        NetCheckResult { received: u.arbitrary()?, elapsed_ns: u.arbitrary()? }.encode(),
    ];
    let i = u.choose_index(msgs.len())?;
    let mut b = std::mem::take(&mut msgs[i]);
    mutate(u, &mut b)?;
    if let Ok(Some((msg, _))) = split_message(&b) {
        if let Ok(h) = Hello::decode(msg) {
            assert_eq!(Hello::decode(&h.encode()[4..]), Ok(h));
        }
        if let Ok(v) = Verdict::decode(msg) {
            assert_eq!(Verdict::decode(&v.encode()[4..]), Ok(v));
        }
        if let Ok(n) = NetCheckHello::decode(msg) {
            assert!(n.bytes >= 1 && n.bytes <= MAX_NET_CHECK_BYTES, "{n:?}");
            assert_eq!(NetCheckHello::decode(&n.encode()[4..]), Ok(n));
        }
        if let Ok(r) = NetCheckResult::decode(msg) {
            assert_eq!(NetCheckResult::decode(&r.encode()[4..]), Ok(r));
        }
        let _ = (Challenge::decode(msg), Proof::decode(msg));
    }
    Ok(())
}

// ---- configuration files -------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct ArbMirrorLine {
    content: u16,
    host: u8,
    port: u16,
    mirror_port: u16,
    primary_port: u16,
    locations: Vec<u8>,
}

fn mirror_config_file(u: &mut Unstructured) -> arbitrary::Result<()> {
    use filerep::cluster::layout::MirrorConfig;
    let names = ["fs_fast", "fs_slow", "pg_system", "bad name"];
    let k = u.int_in_range(0..=2usize)?;
    let mut text = format!("filespaceOrder={}\n", names[..k].join(":"));
    let lines: Vec<ArbMirrorLine> = u.arbitrary()?;
    for (i, l) in lines.iter().take(8).enumerate() {
        let host = ["sdw1", "127.0.0.2", "[::1]", "10.0.0.300", ""][l.host as usize % 5];
        let locs: Vec<String> =
            (0..=k).map(|j| format!("/data/m{}/fs{j}", l.locations.get(j).copied().unwrap_or(0))).collect();
        text += &format!(
            "mirror{i}={}:{host}:{}:{}:{}:{}\n",
            l.content,
            l.port,
            l.mirror_port,
            l.primary_port,
            locs.join(":")
        );
    }
    let text = crate::text(u, &text)?;
    if let Ok(cfg) = MirrorConfig::parse(&text, "fuzz.conf") {
        if let Ok(again) = cfg.format() {
            let re = MirrorConfig::parse(&again, "fuzz.conf").expect("what was written parses");
            assert_eq!(re.format().ok(), Some(again), "format and parse agree");
        }
    }
    Ok(())
}

const SEGMENT_JSON: &str = r#"{"dbid":2,"content":0,"cluster_id":193,"block_size":8192,"filespaces":["pg_system=/data/p/pg","fs_fast=/fast/p"],"key_file":"/c/cluster.key","control_listen":"127.0.0.1:40000","data_listen":"127.0.0.1:40500","socket":"/c/seg2.sock","state_dir":"/c/state2","arbiter":"127.0.0.1:39999","sync_level":"applied","decision_timeout_ms":5000,"ack_timeout_ms":3000,"heartbeat_ms":200,"handshake_timeout_ms":2000,"prefer_uring":true,"metrics_listen":null}"#;

fn segment_config(u: &mut Unstructured) -> arbitrary::Result<()> {
    let text = text(u, SEGMENT_JSON)?;
    let _ = SegmentConfig::parse(text.as_bytes(), "fuzz.json");
    Ok(())
}

fn catalog(u: &mut Unstructured) -> arbitrary::Result<()> {
    let a = |dbid, port: u16| filerep::durable::catalog::SegmentAddress {
        dbid,
        host: "localhost".into(),
        control: format!("127.0.0.1:{port}"),
        data: format!("127.0.0.1:{}", port + 1),
        filespaces: vec![],
    };
    let n = u.int_in_range(1..=3u32)?;
    let pairs = (0..n).map(|c| (c, a(2 + 2 * c, 40000 + c as u16 * 10), a(3 + 2 * c, 41000 + c as u16 * 10))).collect();
    let cat = Catalog::new(u.arbitrary()?, 8192, pairs);
    let text = text(u, &serde_json::to_string(&cat).expect("encodes"))?;
    if let Ok(c) = serde_json::from_str::<Catalog>(&text) {
        let _ = c.check();
    }
    Ok(())
}

// ---- change-log and activity log replay ------------------------------------------

fn changelog(u: &mut Unstructured) -> arbitrary::Result<()> {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(1));
    let at = FsPath::new(0, RelPath::new("changelog").expect("path"));
    let log = ChangeLog::create(disk.clone(), at.clone(), 8192).expect("create");
    let files = ["base/1", "base/2", "x", "d/e/f"];
    for _ in 0..u.int_in_range(0..=12u8)? {
        let p = FsPath::new(u.int_in_range(0..=1u16)?, RelPath::new(u.choose(&files)?).expect("path"));
        let r = match u.int_in_range(0..=4u8)? {
            0 => log.record_block(&p, u.int_in_range(0..=1u64 << 20)?),
            1 => log.record_touched(&p, u.arbitrary()?),
            2 => {
                let first = u.int_in_range(0..=4096u64)?;
                log.record_extents(&p, first, first + u.int_in_range(0..=64u64)?)
            }
            3 => log.compact(),
            _ => log.clear(),
        };
        r.expect("a valid change-log takes every record");
    }
    drop(log);
    let file = disk.open(&at, OpenMode::Existing).expect("open");
    let mut bytes = vec![0u8; file.len().expect("len") as usize];
    let n = file.read_at(0, &mut bytes).expect("read");
    bytes.truncate(n);
    mutate(u, &mut bytes)?;
    file.set_len(0).expect("cut");
    if !bytes.is_empty() {
        file.write_at(0, &bytes).expect("write");
    }
    let opened = ChangeLog::open(disk.clone(), at.clone());
    if let Ok((log, _)) = opened {
        let set = log.change_set();
        // A replayed log takes new records and replays to a superset.
        let p = FsPath::new(0, RelPath::new("after").expect("path"));
        if log.record_block(&p, 7).is_ok() {
            drop(log);
            if let Ok((again, _)) = ChangeLog::open(disk, at) {
                let s2 = again.change_set();
                assert!(s2.covers_block(&p, 7), "a record made after a replay is replayed");
                for (f, blocks) in &set.blocks {
                    assert!(blocks.iter().all(|b| s2.covers_block(f, *b)), "replay lost a block of {f}");
                }
            }
        }
    }
    Ok(())
}

// ---- control messages and the client socket ------------------------------------------

const CONTROL_JSON: &[&str] = &[
    r#""Probe""#,
    r#"{"BecomePrimary":{"generation":2,"mirror":"10.0.0.3:40500"}}"#,
    r#"{"AddChanges":{"set":{"files":[{"filespace":0,"path":"base/16384/1259","runs":[[0,3],[7,1]],"extents":[2]}],"touched":[[1,"base/16385",true]]}}}"#,
    r#"{"StartResync":{"generation":2,"mirror":"10.0.0.3:40500","full":false,"max_rate":50000000,"compare":false,"checkpoint_bytes":null}}"#,
    r#"{"Recover":{"content":0,"full":false,"max_rate":null}}"#,
    r#"{"MirrorLost":{"dbid":2,"content":0,"generation":2,"reason":"no acknowledgement"}}"#,
    r#"{"Status":{"dbid":2,"content":0,"acting":"Primary","generation":2,"mode":"s","detail":"","changes_pending":false}}"#,
];

fn control(u: &mut Unstructured) -> arbitrary::Result<()> {
    let valid = *u.choose(CONTROL_JSON)?;
    let text = text(u, valid)?;
    if let Ok(SegmentRequest::AddChanges { set }) = serde_json::from_str::<SegmentRequest>(&text) {
        let _ = set.to_set(2);
    }
    let _ = serde_json::from_str::<ArbiterRequest>(&text);
    let _ = serde_json::from_str::<SegmentResponse>(&text);
    // The client socket's request (a length-checked binary form).
    let req = Request {
        op: filerep::cluster::client::Op::from_u8(u.int_in_range(1..=17u8)?).expect("op"),
        filespace: u.arbitrary()?,
        a: u.arbitrary()?,
        flags: u.int_in_range(0..=1u64)?,
        path: u.arbitrary()?,
        path2: u.arbitrary()?,
        data: u.arbitrary()?,
    };
    let mut b = req.encode()[4..].to_vec();
    mutate(u, &mut b)?;
    if let Ok(r) = Request::decode(&b) {
        assert_eq!(Request::decode(&r.encode()[4..]), Ok(r));
    }
    Ok(())
}

// ---- the driver --------------------------------------------------------------

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// Run one input; a panic is reported with everything needed to replay it.
fn run_one(name: &str, target: Target, input: &[u8], seed: u64) {
    let r = std::panic::catch_unwind(|| {
        let mut u = Unstructured::new(input);
        let _ = target(&mut u);
    });
    if r.is_err() {
        panic!("fuzz finding in {name} (seed {seed}): input {}", hex(input));
    }
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn drive(name: &str, target: Target) {
    for (t, input) in REGRESSIONS {
        if *t == name {
            run_one(name, target, &unhex(input), 0);
        }
    }
    let seconds = env("FILEREP_FUZZ_SECONDS");
    let cases = env("FILEREP_FUZZ_CASES").unwrap_or(if seconds.is_some() { u64::MAX } else { 20_000 });
    let seed = env("FILEREP_FUZZ_SEED").unwrap_or(if seconds.is_some() { rand::random() } else { 0x5eed });
    let until = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ name.len() as u64);
    let mut done = 0u64;
    while done < cases && until.is_none_or(|t| Instant::now() < t) {
        let mut input = vec![0u8; rng.gen_range(0..4096)];
        rng.fill_bytes(&mut input);
        run_one(name, target, &input, seed);
        done += 1;
    }
    if seconds.is_some() {
        println!("fuzz {name}: {done} cases from seed {seed}, no finding");
    }
}

#[test]
fn fuzz_frames_and_the_mirror_session() {
    drive("frames", frames);
}

#[test]
fn fuzz_handshake() {
    drive("handshake", handshake);
}

#[test]
fn fuzz_mirror_config_file() {
    drive("mirror_config_file", mirror_config_file);
}

#[test]
fn fuzz_segment_config() {
    drive("segment_config", segment_config);
}

#[test]
fn fuzz_catalog() {
    drive("catalog", catalog);
}

#[test]
fn fuzz_changelog_and_activity_log_replay() {
    drive("changelog", changelog);
}

#[test]
fn fuzz_control_messages_and_client_requests() {
    drive("control", control);
}
