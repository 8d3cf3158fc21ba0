use super::*;
use crate::durable::changelog::ChangeSet;

fn p(s: &str) -> FsPath {
    FsPath::new(0, RelPath::new(s).unwrap())
}

/// A primary whose arbiter refuses it for a while (its connections
/// closed before the hello, more often than one call tries again)
/// keeps asking within its decision time, and gets the answer.
#[test]
fn a_primary_keeps_asking_an_arbiter_it_cannot_reach() {
    let key = ClusterKey::from_material(b"remote arbiter test key material").unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    const CLOSED: usize = 10;
    let sk = key.clone();
    let server = std::thread::spawn(move || {
        for _ in 0..CLOSED {
            drop(l.accept().unwrap().0);
        }
        let (s, peer) = l.accept().unwrap();
        let stop = crate::io::admission::Stop::new().unwrap();
        let handle = |r: ArbiterRequest| match r {
            ArbiterRequest::MirrorLost { dbid: 2, content: 0, generation: 3, .. } => ArbiterResponse::MirrorDown,
            other => ArbiterResponse::Refused(format!("unexpected {other:?}")),
        };
        let ticket = crate::io::admission::Ticket::unlimited();
        control::serve_one(
            s,
            &peer.to_string(),
            &sk,
            (ticket, control::MAX_BODY),
            Duration::from_secs(5),
            &stop,
            &handle,
        )
    });
    let arbiter = RemoteArbiter { addr, key, dbid: 2, timeout: Duration::from_secs(30) };
    assert_eq!(arbiter.mirror_lost(0, 3, "test").unwrap(), Decision::MirrorDown);
    server.join().unwrap().unwrap();
}

#[test]
fn change_sets_cross_the_wire_intact_and_bad_ones_are_refused() {
    let mut set = ChangeSet::default();
    set.blocks.entry(p("a")).or_default().extend([1, 2, 3, 7]);
    set.extents.entry(p("b")).or_default().insert(4);
    set.touched.insert(p("d"), true);
    let w = WireChangeSet::from_set(&set);
    assert_eq!(w.files[0].runs, vec![(1, 3), (7, 1)]);
    assert_eq!(w.to_set(1).unwrap(), set);
    let mut bad = w.clone();
    bad.files[0].path = "../escape".into();
    assert!(bad.to_set(1).is_err());
    let mut bad = w.clone();
    bad.files[0].filespace = 3;
    assert!(bad.to_set(1).unwrap_err().contains("filespace 3"));
    let mut bad = w;
    bad.files[0].runs.push((u64::MAX, 2));
    assert!(bad.to_set(1).is_err());
}

/// A segment in this process, on ports of its own, with its state in `dir`.
fn test_segment(dir: &std::path::Path) -> (SegmentHandle, ClusterKey) {
    let material = b"epoch fencing test key material!";
    std::fs::write(dir.join("key"), material).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let cfg: SegmentConfig = serde_json::from_value(serde_json::json!({
        "dbid": 2, "content": 0, "cluster_id": 7, "block_size": 8192,
        "filespaces": [format!("pg_system={}", dir.join("data").display())],
        "key_file": dir.join("key"), "control_listen": "127.0.0.1:0", "data_listen": "127.0.0.1:0",
        "socket": dir.join("s.sock"), "state_dir": dir.join("state"), "arbiter": "127.0.0.1:1",
    }))
    .unwrap();
    (Segment::open(cfg).unwrap().start().unwrap(), ClusterKey::from_material(material).unwrap())
}

fn send(h: &SegmentHandle, key: &ClusterKey, req: &SegmentRequest) -> SegmentResponse {
    control::call(&h.control_addr().to_string(), key, req, Duration::from_secs(5)).unwrap()
}

fn fenced(epoch: u64, order: SegmentRequest) -> SegmentRequest {
    SegmentRequest::Fenced { epoch, order: Box::new(order) }
}

/// Once a segment obeyed an arbiter's epoch, orders of an older one, and
/// role orders without one, are refused with the reason and change
/// nothing; the epoch is recorded before the order runs, and a restarted
/// segment still refuses the older one.
#[test]
fn orders_of_an_older_epoch_are_refused_and_the_epoch_outlives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (h, key) = test_segment(tmp.path());
    assert!(matches!(
        send(&h, &key, &fenced(5, SegmentRequest::BecomeMirror { generation: 1 })),
        SegmentResponse::Done
    ));
    assert_eq!((h.status().epoch, h.status().acting), (5, Acting::Mirror));
    assert_eq!(RoleRecord::load(&tmp.path().join("state")).unwrap().epoch, 5, "recorded durably");
    for stale in [
        fenced(4, SegmentRequest::BecomePrimary { generation: 2, mirror: None }),
        SegmentRequest::BecomePrimary { generation: 2, mirror: None },
        fenced(5, fenced(6, SegmentRequest::ClearChanges)),
        SegmentRequest::RebuildMirror,
        fenced(4, SegmentRequest::RebuildMirror),
    ] {
        match send(&h, &key, &stale) {
            SegmentResponse::Refused(why) => assert!(why.contains("epoch") || why.contains("fenced"), "{why}"),
            other => panic!("{stale:?} answered {other:?}"),
        }
        assert_eq!((h.status().epoch, h.status().acting), (5, Acting::Mirror), "{stale:?} changed something");
    }
    // Probes and an equal or newer epoch go through.
    assert!(matches!(send(&h, &key, &SegmentRequest::Probe), SegmentResponse::Status(_)));
    assert!(matches!(
        send(&h, &key, &fenced(6, SegmentRequest::BecomeMirror { generation: 1 })),
        SegmentResponse::Done
    ));
    assert_eq!(h.status().epoch, 6);
    h.close();
    h.wait();
    let (h, key) = test_segment(tmp.path());
    assert_eq!(h.status().epoch, 6, "the epoch read back at start");
    assert!(matches!(
        send(&h, &key, &fenced(5, SegmentRequest::BecomeMirror { generation: 1 })),
        SegmentResponse::Refused(_)
    ));
    assert_eq!(h.status().acting, Acting::Idle);
    h.close();
    h.wait();
}

/// A segment whose host went down while its mirror role streamed (its
/// state file records a session of another boot) says so in every probe,
/// idle and as a mirror again, and refuses to be promoted with the reason;
/// a record from this boot (the process was killed, the page cache kept
/// what it applied) does not.
#[test]
fn a_segment_whose_host_went_down_mid_session_says_so_and_is_not_promoted() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let cut = crate::runtime::mirror::MirrorState {
        generation: 1,
        fault: None,
        streaming_boot: Some("a boot before this one".into()),
    };
    cut.store(&state).unwrap();
    let (h, key) = test_segment(tmp.path());
    assert_eq!(h.status().acting, Acting::Idle);
    assert!(h.status().lost_power_streaming && h.status().seen().lost_power_streaming, "idle, it says so");
    assert!(matches!(
        send(&h, &key, &fenced(1, SegmentRequest::BecomeMirror { generation: 1 })),
        SegmentResponse::Done
    ));
    assert!(h.status().lost_power_streaming, "as a mirror, until a primary streams to it");
    match send(&h, &key, &fenced(1, SegmentRequest::BecomePrimary { generation: 2, mirror: None })) {
        SegmentResponse::Refused(why) => assert!(why.contains("went down while it streamed"), "{why}"),
        other => panic!("a mirror cut by its host going down was promoted: {other:?}"),
    }
    h.close();
    h.wait();
    // The same record from this boot: a killed process, nothing lost.
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let boot = crate::runtime::mirror::boot_id().expect("this kernel names its boot");
    crate::runtime::mirror::MirrorState { streaming_boot: Some(boot), ..cut }.store(&state).unwrap();
    let (h, _key) = test_segment(tmp.path());
    assert!(!h.status().lost_power_streaming);
    h.close();
    h.wait();
}

/// A segment whose mirror role faulted (its state file records the fault)
/// says so in every probe once restarted, idle too, and is not promoted
/// from idle; told to forget the fault for a rebuild while idle, it
/// forgets it durably, and a restart finds it forgotten.
#[test]
fn a_restarted_faulted_mirror_says_so_while_idle_and_forgets_only_when_told() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let faulted = crate::runtime::mirror::MirrorState {
        generation: 1,
        fault: Some("fdatasync of base/1 failed".into()),
        streaming_boot: None,
    };
    faulted.store(&state).unwrap();
    let (h, key) = test_segment(tmp.path());
    let status = h.status();
    assert_eq!(status.acting, Acting::Idle);
    assert!(status.faulted && status.seen().faulted, "idle, it says its disk failed");
    match send(&h, &key, &fenced(1, SegmentRequest::BecomePrimary { generation: 2, mirror: None })) {
        SegmentResponse::Refused(why) => assert!(why.contains("fdatasync of base/1 failed"), "{why}"),
        other => panic!("a faulted mirror was promoted from idle: {other:?}"),
    }
    h.close();
    h.wait();
    let (h, key) = test_segment(tmp.path());
    assert!(h.status().faulted, "still, after another restart");
    assert!(matches!(send(&h, &key, &fenced(1, SegmentRequest::RebuildMirror)), SegmentResponse::Done));
    assert!(!h.status().faulted);
    assert_eq!(crate::runtime::mirror::MirrorState::load(&state).unwrap().fault, None, "forgotten durably");
    assert!(matches!(
        send(&h, &key, &fenced(1, SegmentRequest::BecomeMirror { generation: 1 })),
        SegmentResponse::Done
    ));
    assert!(!h.status().faulted, "as a mirror too");
    h.close();
    h.wait();
    let (h, _key) = test_segment(tmp.path());
    assert!(!h.status().faulted);
    h.close();
    h.wait();
}
