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
