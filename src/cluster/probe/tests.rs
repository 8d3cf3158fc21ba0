use super::*;

fn config(probe_threads: usize) -> ProbeConfig {
    ProbeConfig {
        catalog: PathBuf::from("catalog.json"),
        key: ClusterKey::from_material(b"probe config test key material!!").expect("key"),
        listen: "127.0.0.1:0".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        retries: 2,
        handshake_timeout: Duration::from_secs(2),
        probe_threads,
        coordinator: None,
    }
}

#[test]
fn probe_threads_out_of_range_are_refused_with_the_range() {
    for bad in [0, MAX_PROBE_THREADS + 1] {
        let e = config(bad).check().expect_err("refused").to_string();
        assert!(e.contains(&format!("{bad} probe threads")) && e.contains("1 to 1024"), "{e}");
    }
    for good in [1, 16, MAX_PROBE_THREADS] {
        config(good).check().unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[test]
fn at_once_answers_in_the_order_of_the_items() {
    let items: Vec<u64> = (0..100).collect();
    for in_flight in [1, 7, 200] {
        assert_eq!(at_once(&items, in_flight, |i| i * 2), items.iter().map(|i| i * 2).collect::<Vec<_>>());
    }
    assert!(at_once(&[] as &[u64], 4, |i| *i).is_empty());
}

#[test]
fn workers_answer_in_the_order_of_the_items() {
    let w = Workers::new(3).unwrap();
    let items: Vec<u64> = (0..50).collect();
    let got = w.map(items.clone(), |i| i * 3);
    assert_eq!(got, items.iter().map(|i| Some(i * 3)).collect::<Vec<_>>());
    assert!(w.map(Vec::<u64>::new(), |i| i).is_empty());
}

fn status(dbid: u32) -> SegmentStatus {
    SegmentStatus::plain(dbid, 0, Acting::Idle, 0, '-')
}

/// Wait for a condition another thread makes true, up to 20 s.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(5)); // polling another thread's progress
    }
}

/// A segment that stops answering is probed within the round once;
/// after that only off the round, one attempt at a time, so the round
/// does not wait for it; when it answers again the next round sees it.
#[test]
fn a_down_segment_is_probed_off_the_round_until_it_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("catalog.json");
    Catalog::new(7, 8192, Vec::new()).store(&path).unwrap();
    let mut cfg = config(4);
    cfg.catalog = path;
    cfg.timeout = Duration::from_millis(300);
    cfg.interval = Duration::from_millis(20);
    cfg.retries = 0;
    let key = cfg.key.clone();
    let arb = ArbiterProcess::open(cfg).unwrap();
    let state = arb.state.clone();
    // Listening, but nobody accepts: every probe waits out its timeout.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hung.local_addr().unwrap().to_string();
    assert!(state.probe_all(vec![addr.clone()]).get(&addr).is_none());
    assert_eq!(lock(&state.down).get(&addr).map(|d| d.failures), Some(1));
    // Once due, the next rounds start one probe off the round and do not wait for it.
    wait_for("an off-round probe started", || {
        assert!(state.probe_all(vec![addr.clone()]).get(&addr).is_none());
        lock(&state.down).get(&addr).is_some_and(|d| d.probing)
    });
    // It answers from now on: the probe under way gets its answer.
    let stop = Stop::new().unwrap();
    let st = stop.clone();
    std::thread::spawn(move || {
        control::serve(
            hung,
            key,
            st,
            (Limits::new(4), control::MAX_BODY),
            Duration::from_secs(5),
            |r: SegmentRequest| match r {
                SegmentRequest::Probe => SegmentResponse::Status(status(9)),
                _ => SegmentResponse::Refused("a probe only".into()),
            },
        )
    });
    wait_for("the segment seen again", || state.probe_all(vec![addr.clone()]).get(&addr).is_some());
    assert!(lock(&state.down).get(&addr).is_none(), "it is no longer down");
    assert_eq!(state.probe_all(vec![addr.clone()]).get(&addr).map(|s| s.dbid), Some(9));
    stop.stop();
}

/// A store that fails when the stored catalog cannot be read back
/// either: the arbiter decides nothing, and says why, until it can.
#[test]
fn an_arbiter_that_cannot_read_back_its_catalog_decides_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("catalog.json");
    Catalog::new(7, 8192, Vec::new()).store(&path).unwrap();
    let mut cfg = config(2);
    cfg.catalog = path.clone();
    let arb = ArbiterProcess::open(cfg).unwrap();
    let state = arb.state.clone();
    assert!(matches!(state.answer(ArbiterRequest::Catalog), ArbiterResponse::Catalog(_)));
    // Its directory gone: the store fails, and so does reading it back.
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(state.answer(ArbiterRequest::StoreCatalog), ArbiterResponse::Refused(_)));
    match state.answer(ArbiterRequest::Catalog) {
        ArbiterResponse::Refused(why) => assert!(why.contains("decides nothing"), "{why}"),
        other => panic!("answered from a catalog it could not store: {other:?}"),
    }
    // Back: read, and answered from again.
    std::fs::create_dir(&dir).unwrap();
    Catalog::new(7, 8192, Vec::new()).store(&path).unwrap();
    assert!(matches!(state.answer(ArbiterRequest::Catalog), ArbiterResponse::Catalog(_)));
}

/// A segment that records the orders it is given and answers probes idle.
fn recording_segment(key: ClusterKey, dbid: u32) -> (String, Arc<Mutex<Vec<String>>>, Arc<Stop>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let got = Arc::new(Mutex::new(Vec::new()));
    let stop = Stop::new().unwrap();
    let (g, st) = (got.clone(), stop.clone());
    std::thread::spawn(move || {
        control::serve(l, key, st, (Limits::new(4), control::MAX_BODY), Duration::from_secs(5), move |r| match r {
            SegmentRequest::Probe => SegmentResponse::Status(status(dbid)),
            SegmentRequest::Fenced { epoch, order } => {
                assert!(epoch >= 1, "an arbiter's orders carry its epoch");
                lock(&g).push(format!("{order:?}"));
                SegmentResponse::Done
            }
            other => {
                lock(&g).push(format!("unfenced {other:?}"));
                SegmentResponse::Done
            }
        })
    });
    (addr, got, stop)
}

/// Rule 7's order: a round whose change cannot be stored gives no order
/// that depends on it; once it can, the order goes out.
#[test]
fn a_round_whose_change_is_not_stored_gives_no_order() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("catalog.json");
    let mut cfg = config(2);
    let (primary, got, stop) = recording_segment(cfg.key.clone(), 2);
    // The mirror's address: nothing listens there.
    let gone = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let address = |dbid: u32, control: String| crate::durable::catalog::SegmentAddress {
        dbid,
        host: "h".into(),
        control,
        data: format!("127.0.0.1:{}", 1000 + dbid),
        filespaces: Vec::new(),
    };
    Catalog::new(7, 8192, vec![(0, address(2, primary), address(3, gone))]).store(&path).unwrap();
    cfg.catalog = path.clone();
    cfg.timeout = Duration::from_millis(300);
    cfg.retries = 0;
    let arb = ArbiterProcess::open(cfg).unwrap();
    let state = arb.state.clone();
    // The last good copy is written first: a directory in its place fails the store.
    let good = crate::durable::sealed::good_copy(&path);
    std::fs::remove_file(&good).unwrap();
    std::fs::create_dir(&good).unwrap();
    state.round();
    assert!(lock(&got).is_empty(), "ordered from a change not stored: {:?}", lock(&got));
    assert_eq!(
        lock(&state.catalog).catalog.pairs[0].pair.mode,
        PairMode::Synchronized,
        "the stored catalog, read back"
    );
    std::fs::remove_dir(&good).unwrap();
    state.round();
    assert_eq!(Catalog::load(&path).unwrap().pairs[0].pair.mode, PairMode::ChangeTracking);
    assert!(lock(&got).iter().any(|o| o.starts_with("BecomePrimary")), "{:?}", lock(&got));
    stop.stop();
}

/// A client asks the acting arbiter past one whose host is gone (its
/// connection hangs: a listener that never accepts) and one that stands
/// by, within the time it was given: the hung one gets only its share.
#[test]
fn ask_finds_the_acting_arbiter_past_a_hung_one_and_a_standby() {
    let key = ClusterKey::from_material(b"probe config test key material!!").expect("key");
    // Accepted by the kernel (backlog), never served: a hung host.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let answering = |answer: ArbiterResponse| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (key, stop) = (key.clone(), Stop::new().unwrap());
        std::thread::spawn(move || {
            let answer = answer.clone();
            control::serve(
                l,
                key,
                stop,
                (Limits::new(4), control::MAX_BODY),
                Duration::from_secs(5),
                move |_r: ArbiterRequest| answer.clone(),
            )
        });
        addr
    };
    let acting = answering(ArbiterResponse::Started);
    let standby = answering(ArbiterResponse::NotActing { leader: Some(acting.clone()), why: "stands by".into() });
    let list = format!("{},{standby}", hung.local_addr().unwrap());
    let started = Instant::now();
    let r = ask(&list, &key, &ArbiterRequest::Catalog, Duration::from_secs(6)).expect("the acting arbiter answers");
    assert!(matches!(r, ArbiterResponse::Started), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(6), "within the time given: {:?}", started.elapsed());
    // None acting: said, with how many were asked and the last reason.
    let lost = answering(ArbiterResponse::NotActing { leader: None, why: "cannot reach its coordinator".into() });
    let e =
        ask(&format!("{lost},{}", hung.local_addr().unwrap()), &key, &ArbiterRequest::Catalog, Duration::from_secs(2))
            .expect_err("no arbiter acts");
    assert!(e.contains("no arbiter acts (2 asked)"), "{e}");
}
