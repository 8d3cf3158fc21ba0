//! The ABI from Rust, through the extern functions: a segment opened in
//! this process from its configuration file, made the primary (alone, in
//! change tracking) by an order on its control endpoint, as the arbiter
//! would give it. No `filerep` binary and no mirror are needed.

use super::*;
use filerep_lib::cluster::control;
use filerep_lib::cluster::segment::{SegmentRequest, SegmentResponse};
use filerep_lib::protocol::handshake::ClusterKey;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

const KEY: &[u8] = b"capi test cluster key material!!";
const BS: usize = 8192;

struct Fixture {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_dbid(2)
    }

    fn with_dbid(dbid: u32) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("cluster.key");
        std::fs::write(&key_file, KEY).expect("key");
        let fs: Vec<String> = ["pg_system", "fs_fast"]
            .iter()
            .map(|n| {
                let root = dir.path().join("data").join(n);
                std::fs::create_dir_all(&root).expect("mkdir");
                format!("{n}={}", root.display())
            })
            .collect();
        let cfg = serde_json::json!({
            "dbid": dbid, "content": 0, "cluster_id": 7, "block_size": BS,
            "filespaces": fs, "key_file": key_file,
            "control_listen": "127.0.0.1:0", "data_listen": "127.0.0.1:0",
            "socket": dir.path().join("segment.sock"), "state_dir": dir.path().join("state"),
            // Never asked: a primary alone asks the arbiter only when it loses a mirror.
            "arbiter": "127.0.0.1:9",
        });
        let config = dir.path().join("segment.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&cfg).expect("json")).expect("config");
        Fixture { dir, config }
    }

    fn root(&self, fs: &str) -> PathBuf {
        self.dir.path().join("data").join(fs)
    }

    fn open(&self) -> filerep_segment {
        let path = cstring(self.config.to_str().expect("utf-8"));
        let mut seg = filerep_segment::default();
        // SAFETY: a valid C string and a writable handle.
        let rc = unsafe { filerep_segment_open(path.as_ptr(), &mut seg) };
        assert_eq!(rc, FILEREP_OK, "{}", last_error());
        assert_ne!(seg.id, 0);
        seg
    }

    /// Every entry under the data directory, with file contents.
    fn tree(&self) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
            for e in std::fs::read_dir(dir).expect("read_dir") {
                let p = e.expect("entry").path();
                let rel = p.strip_prefix(base).expect("under base").to_path_buf();
                if p.is_dir() {
                    out.insert(rel, None);
                    walk(&p, base, out);
                } else {
                    out.insert(rel, Some(std::fs::read(&p).expect("read")));
                }
            }
        }
        // Not the state directory: the change-log moves with every call.
        let mut out = BTreeMap::new();
        walk(&self.dir.path().join("data"), self.dir.path(), &mut out);
        out
    }
}

fn cstring(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn last_error() -> String {
    // SAFETY: filerep_last_error never returns null, and the string stays
    // valid until this thread's next failing call.
    unsafe { CStr::from_ptr(filerep_last_error()) }.to_string_lossy().into_owned()
}

/// The segment's control address (as the arbiter knows it).
fn control_addr(seg: filerep_segment) -> String {
    entry(seg).ok().expect("open").handle.control_addr().to_string()
}

fn order(seg: filerep_segment, req: SegmentRequest) {
    let key = ClusterKey::from_material(KEY).expect("key");
    let r: SegmentResponse =
        control::call(&control_addr(seg), &key, &req, Duration::from_secs(10)).expect("control call");
    assert!(matches!(r, SegmentResponse::Done), "{r:?}");
}

fn info(seg: filerep_segment) -> filerep_info {
    let mut i = filerep_info::default();
    // SAFETY: a writable filerep_info.
    let rc = unsafe { filerep_segment_info(seg, &mut i) };
    assert_eq!(rc, FILEREP_OK, "{}", last_error());
    i
}

/// Open, and make it the primary at generation 1 (alone: change tracking).
fn primary(f: &Fixture) -> filerep_segment {
    let seg = f.open();
    order(seg, SegmentRequest::BecomePrimary { generation: 1, mirror: None });
    assert_eq!(filerep_segment_wait_primary(seg, 20_000), FILEREP_OK, "{}", last_error());
    seg
}

/// Assert a refusal: its code, and a message that names the call and says why.
fn refused(rc: c_int, code: c_int, call: &str, why: &str) {
    let msg = last_error();
    assert_eq!(rc, code, "{call}: expected {code}, got {rc}: {msg}");
    assert!(msg.starts_with(call) && msg.contains(why), "{call}: {why:?} not in {msg:?}");
}

#[test]
fn bad_input_is_refused_with_a_clear_message_and_changes_nothing() {
    let f = Fixture::new();
    let seg = primary(&f);
    let (rel, dir, log) = (cstring("rel"), cstring("dir"), cstring("log"));
    let block = vec![7u8; BS];
    // SAFETY: here and below, every pointer given is null on purpose or
    // points to a live buffer of the length given.
    unsafe {
        assert_eq!(filerep_create(seg, 0, rel.as_ptr()), FILEREP_OK, "{}", last_error());
        assert_eq!(filerep_extend(seg, 0, rel.as_ptr(), 0, block.as_ptr().cast(), BS), FILEREP_OK);
        assert_eq!(filerep_mkdir(seg, 1, dir.as_ptr()), FILEREP_OK);
        assert_eq!(filerep_create(seg, 1, log.as_ptr()), FILEREP_OK);
        assert_eq!(filerep_write_at(seg, 1, log.as_ptr(), 0, b"record".as_ptr().cast(), 6), FILEREP_OK);
    }
    let before = f.tree();
    assert_eq!(before.len(), 5, "{:?}", before.keys());

    let null = std::ptr::null::<c_char>();
    let (dotdot, absolute, inner_dotdot) = (cstring("../escape"), cstring("/tmp/escape"), cstring("dir/../rel"));
    let short = vec![1u8; BS - 1];
    let long = vec![1u8; BS + 1];
    let mut readbuf = vec![0u8; BS + 1];
    let mut n = 0u64;
    let mut yes = false;
    let not_utf8 = [b'a', 0xff, b'b', 0];
    let overlong = vec![b'a'; 2000];
    let mut overlong_c = overlong.clone();
    overlong_c.push(0);
    let big = vec![0u8; 256 * 1024 + 1];
    // SAFETY: as above.
    unsafe {
        // Null pointers.
        refused(filerep_create(seg, 0, null), FILEREP_ERR_INVALID, "filerep_create", "path is a null pointer");
        refused(
            filerep_write_block(seg, 0, rel.as_ptr(), 0, std::ptr::null(), BS),
            FILEREP_ERR_INVALID,
            "filerep_write_block",
            "buf is a null pointer",
        );
        refused(
            filerep_read_block(seg, 0, rel.as_ptr(), 0, std::ptr::null_mut(), BS),
            FILEREP_ERR_INVALID,
            "filerep_read_block",
            "buf is a null pointer",
        );
        refused(
            filerep_nblocks(seg, 0, rel.as_ptr(), std::ptr::null_mut()),
            FILEREP_ERR_INVALID,
            "filerep_nblocks",
            "out is a null pointer",
        );
        refused(filerep_rename(seg, 0, rel.as_ptr(), null), FILEREP_ERR_INVALID, "filerep_rename", "to is a null");
        refused(filerep_segment_info(seg, std::ptr::null_mut()), FILEREP_ERR_INVALID, "filerep_segment_info", "out");
        refused(filerep_sync_dir(seg, 0, null), FILEREP_ERR_INVALID, "filerep_sync_dir", "dir is a null pointer");
        // A misaligned out pointer.
        let mut words = [0u64; 2];
        let odd = words.as_mut_ptr().cast::<u8>().add(1).cast::<u64>();
        refused(filerep_len(seg, 1, log.as_ptr(), odd), FILEREP_ERR_INVALID, "filerep_len", "not aligned");
        // Lengths that are not the block size.
        let not_a_block = format!("a block is {BS} bytes");
        let rc = filerep_write_block(seg, 0, rel.as_ptr(), 0, short.as_ptr().cast(), BS - 1);
        refused(rc, FILEREP_ERR_INVALID, "filerep_write_block", &not_a_block);
        let rc = filerep_write_block(seg, 0, rel.as_ptr(), 0, long.as_ptr().cast(), BS + 1);
        refused(rc, FILEREP_ERR_INVALID, "filerep_write_block", &not_a_block);
        let rc = filerep_write_block(seg, 0, rel.as_ptr(), 0, block.as_ptr().cast(), 0);
        refused(rc, FILEREP_ERR_INVALID, "filerep_write_block", &not_a_block);
        let rc = filerep_extend(seg, 0, rel.as_ptr(), 1, short.as_ptr().cast(), BS - 1);
        refused(rc, FILEREP_ERR_INVALID, "filerep_extend", &not_a_block);
        let rc = filerep_read_block(seg, 0, rel.as_ptr(), 0, readbuf.as_mut_ptr().cast(), BS + 1);
        refused(rc, FILEREP_ERR_INVALID, "filerep_read_block", &not_a_block);
        refused(
            filerep_write_at(seg, 1, log.as_ptr(), 0, b"x".as_ptr().cast(), 0),
            FILEREP_ERR_INVALID,
            "filerep_write_at",
            "1 to 262144 bytes; 0 given",
        );
        refused(
            filerep_write_at(seg, 1, log.as_ptr(), 0, big.as_ptr().cast(), big.len()),
            FILEREP_ERR_INVALID,
            "filerep_write_at",
            "262145 given",
        );
        // Paths that leave the filespace or are not paths.
        refused(filerep_create(seg, 0, dotdot.as_ptr()), FILEREP_ERR_INVALID, "filerep_create", "'..'");
        refused(filerep_mkdir(seg, 0, inner_dotdot.as_ptr()), FILEREP_ERR_INVALID, "filerep_mkdir", "'..'");
        refused(filerep_create(seg, 0, absolute.as_ptr()), FILEREP_ERR_INVALID, "filerep_create", "absolute");
        refused(filerep_rename(seg, 0, rel.as_ptr(), dotdot.as_ptr()), FILEREP_ERR_INVALID, "filerep_rename", "'..'");
        refused(
            filerep_write_block(seg, 0, dotdot.as_ptr(), 0, block.as_ptr().cast(), BS),
            FILEREP_ERR_INVALID,
            "filerep_write_block",
            "'..'",
        );
        refused(filerep_unlink(seg, 0, dotdot.as_ptr()), FILEREP_ERR_INVALID, "filerep_unlink", "'..'");
        refused(filerep_sync_dir(seg, 0, dotdot.as_ptr()), FILEREP_ERR_INVALID, "filerep_sync_dir", "'..'");
        refused(filerep_create(seg, 0, not_utf8.as_ptr().cast()), FILEREP_ERR_INVALID, "filerep_create", "not UTF-8");
        // Not NUL-terminated within the limit: read no further than it.
        refused(
            filerep_create(seg, 0, overlong_c.as_ptr().cast()),
            FILEREP_ERR_INVALID,
            "filerep_create",
            "longer than 1024 bytes",
        );
        // A filespace that does not exist.
        refused(filerep_create(seg, 2, rel.as_ptr()), FILEREP_ERR_INVALID, "filerep_create", "filespace 2 does not");
        refused(
            filerep_filespace_index(seg, cstring("nope").as_ptr(), &mut 0u16),
            FILEREP_ERR_INVALID,
            "filerep_filespace_index",
            "pg_system, fs_fast",
        );
        // Namespace errors keep their codes.
        refused(filerep_create(seg, 0, rel.as_ptr()), FILEREP_ERR_EXISTS, "filerep_create", "rel");
        refused(filerep_rmdir(seg, 0, cstring("nothing").as_ptr()), FILEREP_ERR_NOT_FOUND, "filerep_rmdir", "");
        // Reads that are fine.
        assert_eq!(filerep_nblocks(seg, 0, rel.as_ptr(), &mut n), FILEREP_OK);
        assert_eq!(n, 1);
        assert_eq!(filerep_exists(seg, 1, dir.as_ptr(), &mut yes), FILEREP_OK);
        assert!(yes);
        let mut fs = 9u16;
        assert_eq!(filerep_filespace_index(seg, cstring("fs_fast").as_ptr(), &mut fs), FILEREP_OK);
        assert_eq!(fs, 1);
    }
    assert!(f.tree() == before, "a refused call changed the filespaces");
    assert!(!f.dir.path().join("escape").exists() && !Path::new("/tmp/escape").exists());

    // The last error belongs to the thread that failed.
    assert!(!last_error().is_empty());
    let other = std::thread::spawn(last_error).join().expect("thread");
    assert_eq!(other, "");

    // Closed, and never-opened, handles.
    assert_eq!(filerep_segment_close(seg), FILEREP_OK, "{}", last_error());
    let closed = "is closed or was never opened";
    // SAFETY: as above.
    unsafe {
        refused(filerep_create(seg, 0, cstring("after").as_ptr()), FILEREP_ERR_CLOSED, "filerep_create", closed);
        refused(
            filerep_write_block(seg, 0, rel.as_ptr(), 0, block.as_ptr().cast(), BS),
            FILEREP_ERR_CLOSED,
            "filerep_write_block",
            closed,
        );
        refused(
            filerep_segment_info(seg, &mut filerep_info::default()),
            FILEREP_ERR_CLOSED,
            "filerep_segment_info",
            closed,
        );
        refused(
            filerep_create(filerep_segment { id: 0 }, 0, rel.as_ptr()),
            FILEREP_ERR_CLOSED,
            "filerep_create",
            closed,
        );
    }
    refused(filerep_segment_close(seg), FILEREP_ERR_CLOSED, "filerep_segment_close", closed);
    refused(filerep_segment_wait_primary(seg, 0), FILEREP_ERR_CLOSED, "filerep_segment_wait_primary", closed);
    assert!(f.tree() == before, "a call on a closed handle changed the filespaces");
    assert!(!f.dir.path().join("segment.sock").exists(), "close removes the client socket");
}

#[test]
fn opening_refuses_a_bad_configuration_with_its_file_name() {
    let f = Fixture::new();
    let mut seg = filerep_segment { id: 77 };
    let missing = cstring(f.dir.path().join("missing.json").to_str().expect("utf-8"));
    // SAFETY: valid strings and handles, or null on purpose.
    unsafe {
        refused(
            filerep_segment_open(std::ptr::null(), &mut seg),
            FILEREP_ERR_INVALID,
            "filerep_segment_open",
            "config_path is a null pointer",
        );
        let path = cstring(f.config.to_str().expect("utf-8"));
        refused(
            filerep_segment_open(path.as_ptr(), std::ptr::null_mut()),
            FILEREP_ERR_INVALID,
            "filerep_segment_open",
            "out is a null pointer",
        );
        refused(
            filerep_segment_open(missing.as_ptr(), &mut seg),
            FILEREP_ERR_IO,
            "filerep_segment_open",
            "missing.json",
        );
        std::fs::write(&f.config, b"{\"dbid\": 2, \"surprise\": 1}").expect("write");
        refused(
            filerep_segment_open(path.as_ptr(), &mut seg),
            FILEREP_ERR_INVALID,
            "filerep_segment_open",
            "segment.json",
        );
    }
    assert_eq!(seg.id, 77, "a failed open leaves *out as it was");
    assert!(!f.dir.path().join("state").exists(), "nothing was created for a refused configuration");
}

#[test]
fn calls_go_to_the_acting_primary_in_this_process_and_the_client_socket_shares_them() {
    let f = Fixture::new();
    let seg = f.open();
    let i = info(seg);
    assert_eq!((i.dbid, i.role, i.mode, i.generation), (2, FILEREP_ROLE_IDLE, FILEREP_MODE_NONE, 0));
    assert_eq!((i.block_size, i.filespaces), (BS as u32, 2));
    let rel = cstring("rel");
    // SAFETY: a valid C string.
    unsafe {
        refused(filerep_create(seg, 0, rel.as_ptr()), FILEREP_ERR_NOT_PRIMARY, "filerep_create", "no role yet");
    }
    refused(filerep_segment_wait_primary(seg, 50), FILEREP_ERR_NOT_PRIMARY, "filerep_segment_wait_primary", "no role");
    // As the mirror, it refuses storage calls with the distinct code.
    order(seg, SegmentRequest::BecomeMirror { generation: 1 });
    assert_eq!((info(seg).role, info(seg).generation), (FILEREP_ROLE_MIRROR, 1));
    // SAFETY: a valid C string.
    unsafe {
        refused(filerep_create(seg, 0, rel.as_ptr()), FILEREP_ERR_NOT_PRIMARY, "filerep_create", "is the mirror");
    }
    let mut client = filerep_lib::cluster::client::Client::connect(&f.dir.path().join("segment.sock")).expect("socket");
    let e = client.create(0, "rel").expect_err("the mirror refuses clients");
    assert_eq!(e.class(), Some(ErrorClass::NotPrimary), "{e}");
    // Promoted (alone): change tracking at generation 2.
    order(seg, SegmentRequest::BecomePrimary { generation: 2, mirror: None });
    assert_eq!(filerep_segment_wait_primary(seg, 20_000), FILEREP_OK, "{}", last_error());
    let i = info(seg);
    assert_eq!((i.role, i.mode, i.generation), (FILEREP_ROLE_PRIMARY, FILEREP_MODE_CHANGE_TRACKING, 2));
    // One storage, two ways in: the C call and the socket see each other's changes.
    let block: Vec<u8> = (0..BS).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; BS];
    // SAFETY: valid C strings and buffers of the lengths given.
    unsafe {
        assert_eq!(filerep_create(seg, 0, rel.as_ptr()), FILEREP_OK, "{}", last_error());
        assert_eq!(filerep_extend(seg, 0, rel.as_ptr(), 0, block.as_ptr().cast(), BS), FILEREP_OK);
    }
    assert_eq!(client.read_block(0, "rel", 0).expect("read over the socket"), block);
    client.extend(0, "rel", 1, &block).expect("extend over the socket");
    let e = client.create(0, "../x").expect_err("the same path rules");
    assert_eq!(e.class(), Some(ErrorClass::Invalid), "{e}");
    // SAFETY: as above.
    unsafe {
        assert_eq!(filerep_read_block(seg, 0, rel.as_ptr(), 1, back.as_mut_ptr().cast(), BS), FILEREP_OK);
        assert_eq!(back, block);
        let mut n = 0u64;
        assert_eq!(filerep_nblocks(seg, 0, rel.as_ptr(), &mut n), FILEREP_OK);
        assert_eq!(n, 2);
    }
    assert_eq!(std::fs::read(f.root("pg_system").join("rel")).expect("on disk").len(), 2 * BS);
    assert_eq!(filerep_segment_close(seg), FILEREP_OK, "{}", last_error());
}

#[test]
fn a_panic_is_caught_the_segment_faults_and_every_later_call_says_so() {
    let f = Fixture::new();
    let seg = primary(&f);
    let addr = control_addr(seg);
    let rc = guard("filerep_test_call", Some(seg), || panic!("a planted bug"));
    refused(rc, FILEREP_ERR_FAULTED, "filerep_test_call", "a planted bug");
    assert!(last_error().contains("the segment is faulted and stopped"), "{}", last_error());
    let rel = cstring("rel");
    // SAFETY: a valid C string.
    unsafe {
        refused(filerep_create(seg, 0, rel.as_ptr()), FILEREP_ERR_FAULTED, "filerep_create", "a planted bug");
    }
    assert_eq!(info(seg).role, FILEREP_ROLE_STOPPED);
    // A probe that reaches it before it stops hears that it faulted.
    assert!(entry(seg).ok().expect("open").handle.status().faulted);
    assert!(!f.root("pg_system").join("rel").exists());
    // It stops answering the arbiter, which then decides as for a crash.
    let key = ClusterKey::from_material(KEY).expect("key");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while control::call::<_, SegmentResponse>(&addr, &key, &SegmentRequest::Probe, Duration::from_millis(500)).is_ok() {
        assert!(std::time::Instant::now() < deadline, "a faulted segment still answers probes");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(filerep_segment_close(seg), FILEREP_OK, "{}", last_error());
}

#[test]
fn codes_have_names_and_the_version_is_the_crates() {
    let name = |c| {
        // SAFETY: static strings, never null.
        unsafe { CStr::from_ptr(filerep_error_name(c)) }.to_str().expect("utf-8").to_string()
    };
    assert_eq!(name(FILEREP_OK), "FILEREP_OK");
    assert_eq!(name(FILEREP_ERR_NOT_PRIMARY), "FILEREP_ERR_NOT_PRIMARY");
    assert_eq!(name(FILEREP_ERR_CLOSED), "FILEREP_ERR_CLOSED");
    assert_eq!(name(-3), "unknown code");
    // SAFETY: a static string.
    let v = unsafe { CStr::from_ptr(filerep_version()) };
    assert_eq!(v.to_str().expect("utf-8"), env!("CARGO_PKG_VERSION"));
}

#[test]
fn a_stopped_segment_ends_a_wait_for_the_primary_role_at_once() {
    let f = Fixture::new();
    let seg = f.open();
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = started.clone();
    let waiter = std::thread::spawn(move || {
        s.store(true, Ordering::SeqCst);
        let t = std::time::Instant::now();
        (filerep_segment_wait_primary(seg, 60_000), last_error(), t.elapsed())
    });
    while !started.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    // Stopped by its cluster (`filerep stop`), while or before it waits.
    order(seg, SegmentRequest::Stop);
    let (rc, msg, waited) = waiter.join().expect("waiter");
    assert_eq!(rc, FILEREP_ERR_NOT_PRIMARY, "{msg}");
    assert!(waited < Duration::from_secs(10), "waited {waited:?} on a stopped segment: {msg}");
    assert_eq!(info(seg).role, FILEREP_ROLE_STOPPED);
    assert_eq!(filerep_segment_close(seg), FILEREP_OK, "{}", last_error());
}

#[test]
fn two_segments_opened_through_the_abi_stream_as_a_pair_and_the_mirror_takes_over() {
    let (pf, mf) = (Fixture::with_dbid(2), Fixture::with_dbid(3));
    let m = mf.open();
    order(m, SegmentRequest::BecomeMirror { generation: 1 });
    assert_eq!((info(m).role, info(m).generation), (FILEREP_ROLE_MIRROR, 1));
    let mirror = entry(m).ok().expect("open").handle.data_addr().expect("address").to_string();
    let p = pf.open();
    order(p, SegmentRequest::BecomePrimary { generation: 1, mirror: Some(mirror) });
    assert_eq!(filerep_segment_wait_primary(p, 20_000), FILEREP_OK, "{}", last_error());
    let i = info(p);
    assert_eq!((i.role, i.mode, i.generation), (FILEREP_ROLE_PRIMARY, FILEREP_MODE_SYNCHRONIZED, 1));
    let (base, rel, moved, log) = (cstring("base"), cstring("base/rel"), cstring("base/moved"), cstring("log"));
    let block: Vec<u8> = (0..BS).map(|i| (i % 241) as u8).collect();
    let record = b"commit 1\n";
    // SAFETY: valid C strings and buffers of the lengths given.
    unsafe {
        assert_eq!(filerep_mkdir(p, 0, base.as_ptr()), FILEREP_OK, "{}", last_error());
        assert_eq!(filerep_create(p, 0, rel.as_ptr()), FILEREP_OK, "{}", last_error());
        for b in 0..3 {
            assert_eq!(filerep_extend(p, 0, rel.as_ptr(), b, block.as_ptr().cast(), BS), FILEREP_OK);
        }
        assert_eq!(filerep_truncate(p, 0, rel.as_ptr(), 2), FILEREP_OK, "{}", last_error());
        assert_eq!(filerep_rename(p, 0, rel.as_ptr(), moved.as_ptr()), FILEREP_OK, "{}", last_error());
        assert_eq!(filerep_create(p, 1, log.as_ptr()), FILEREP_OK, "{}", last_error());
        assert_eq!(filerep_write_at(p, 1, log.as_ptr(), 0, record.as_ptr().cast(), record.len()), FILEREP_OK);
        assert_eq!(filerep_flush(p, 1, log.as_ptr()), FILEREP_OK, "{}", last_error());
        assert_eq!(filerep_sync_dir(p, 0, base.as_ptr()), FILEREP_OK, "{}", last_error());
        // The mirror takes no storage call of its own.
        refused(filerep_create(m, 0, rel.as_ptr()), FILEREP_ERR_NOT_PRIMARY, "filerep_create", "is the mirror");
    }
    // Every call returned once applied on the mirror: the copies are the same.
    assert_eq!(mf.tree(), pf.tree());
    assert_eq!(std::fs::read(mf.root("pg_system").join("base/moved")).expect("on the mirror").len(), 2 * BS);
    // The primary closes in order; the mirror is promoted (alone) and serves the same data.
    assert_eq!(filerep_segment_close(p), FILEREP_OK, "{}", last_error());
    order(m, SegmentRequest::BecomePrimary { generation: 2, mirror: None });
    assert_eq!(filerep_segment_wait_primary(m, 20_000), FILEREP_OK, "{}", last_error());
    let i = info(m);
    assert_eq!((i.role, i.mode, i.generation), (FILEREP_ROLE_PRIMARY, FILEREP_MODE_CHANGE_TRACKING, 2));
    let mut back = vec![0u8; BS];
    let mut len = 0u64;
    // SAFETY: valid C strings and buffers of the lengths given.
    unsafe {
        assert_eq!(filerep_read_block(m, 0, moved.as_ptr(), 1, back.as_mut_ptr().cast(), BS), FILEREP_OK);
        assert_eq!(filerep_len(m, 1, log.as_ptr(), &mut len), FILEREP_OK, "{}", last_error());
        assert_eq!(filerep_write_at(m, 1, log.as_ptr(), len, record.as_ptr().cast(), record.len()), FILEREP_OK);
    }
    assert_eq!(back, block);
    assert_eq!(len, record.len() as u64);
    assert_eq!(std::fs::read(mf.root("fs_fast").join("log")).expect("log"), [&record[..], &record[..]].concat());
    assert_eq!(filerep_segment_close(m), FILEREP_OK, "{}", last_error());
}
