//! The frame format's tests: headers and bodies round-trip, bad ones are
//! refused, the decoder takes any split of the stream; listing bodies.

use super::*;

fn sample() -> Frame {
    let mut h = Header::new(Kind::WriteBlock);
    h.seq = 42;
    h.file_id = 7;
    h.filespace = 1;
    h.offset = 1234;
    Frame::new(h, Bytes::from(vec![0xab; 32 * 1024]))
}

#[test]
fn round_trip_in_random_chunks() {
    let frames: Vec<Frame> = (0..5)
        .map(|i| {
            let mut f = sample();
            f.header.seq = i;
            f
        })
        .collect();
    let wire: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
    for chunk in [1usize, 7, 48, 1000, 70_000] {
        let mut d = Decoder::new();
        let mut out = vec![];
        for c in wire.chunks(chunk) {
            d.feed(c);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        d.finish().unwrap();
        assert_eq!(out, frames);
    }
}

#[test]
fn corrupt_header_and_body_are_refused() {
    let mut wire = sample().to_vec();
    wire[9] ^= 1;
    let mut d = Decoder::new();
    d.feed(&wire);
    assert!(matches!(d.next_frame(), Err(FrameError::HeaderChecksum { .. })));

    let mut wire = sample().to_vec();
    wire[HEADER_LEN + 100] ^= 1;
    let mut d = Decoder::new();
    d.feed(&wire);
    assert!(matches!(d.next_frame(), Err(FrameError::BodyChecksum { .. })));
}

#[test]
fn oversized_body_refused_before_body_arrives() {
    let mut h = Header::new(Kind::WriteAt);
    h.body_len = (MAX_BODY + 1) as u32;
    let mut d = Decoder::new();
    d.feed(&h.encode());
    assert!(matches!(d.next_frame(), Err(FrameError::BodyTooLong { .. })));
}

#[test]
fn unknown_kind_and_truncation() {
    let mut b = Header::new(Kind::Sync).encode();
    b[0] = 200;
    let h = xxh3_64(&b[..40]);
    b[40..48].copy_from_slice(&h.to_le_bytes());
    assert_eq!(Header::decode(&b), Err(FrameError::UnknownKind(200)));

    let wire = sample().to_vec();
    let mut d = Decoder::new();
    d.feed(&wire[..wire.len() - 1]);
    assert_eq!(d.next_frame(), Ok(None));
    assert!(matches!(d.finish(), Err(FrameError::Truncated { .. })));
}

#[test]
fn ack_round_trip() {
    let a = Ack { received: 9, applied: 8, synced: 5, durable: 3 };
    let f = a.to_frame();
    assert_eq!(f.header.kind, Kind::Ack);
    assert_eq!(Ack::from_body(&f.body), Some(a));
    assert_eq!(Ack::from_body(&f.body[..10]), None);
}

#[test]
fn header_overhead_under_one_percent_of_a_32k_block() {
    assert!((HEADER_LEN as f64) / (32.0 * 1024.0) < 0.01);
}

/// Listing bodies (verification).
mod listing {
    use super::*;

    #[test]
    fn listings_round_trip_and_bad_ones_are_refused() {
        let kids =
            vec![("a".to_string(), ListedKind::File), ("b".into(), ListedKind::Dir), ("l".into(), ListedKind::Other)];
        let l = ListingBody::build(ListedKind::Dir, &kids);
        assert!(l.complete);
        assert_eq!(l.others, 1);
        assert_eq!(l.hash, listing_hash([("a", ListedKind::File), ("b", ListedKind::Dir)]), "others do not count");
        assert_ne!(l.hash, listing_hash([("a", ListedKind::Dir), ("b", ListedKind::Dir)]), "kinds count");
        assert_eq!(ListingBody::decode(&l.encode()).unwrap(), l);
        let absent = ListingBody::build(ListedKind::Absent, &[]);
        assert_eq!(ListingBody::decode(&absent.encode()).unwrap(), absent);
        let good = l.encode();
        for (i, v) in [(0usize, 9u8), (1, 2), (LISTING_FIXED, 0), (LISTING_FIXED, 7)] {
            let mut bad = good.clone();
            bad[i] = v;
            assert!(ListingBody::decode(&bad).is_err(), "byte {i} = {v}");
        }
        assert!(ListingBody::decode(&good[..good.len() - 1]).is_err(), "cut name");
        assert!(ListingBody::decode(&good[..5]).is_err());
        let mut slash = ListingBody::build(ListedKind::Dir, &[("x".into(), ListedKind::File)]).encode();
        *slash.last_mut().unwrap() = b'/';
        assert!(ListingBody::decode(&slash).is_err());
        let mut file_with_kids = l.clone();
        file_with_kids.entry = ListedKind::File;
        assert!(ListingBody::decode(&file_with_kids.encode()).is_err());
    }

    #[test]
    fn random_and_mutated_listings_never_panic_and_what_decodes_re_encodes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let kids: Vec<(String, ListedKind)> =
            (0..20).map(|i| (format!("n{i}"), if i % 3 == 0 { ListedKind::Dir } else { ListedKind::File })).collect();
        let good = ListingBody::build(ListedKind::Dir, &kids).encode();
        for _ in 0..20_000 {
            let mut b = if rng.gen_bool(0.5) {
                (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect::<Vec<u8>>()
            } else {
                good.clone()
            };
            for _ in 0..rng.gen_range(0..4) {
                if b.is_empty() {
                    break;
                }
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            b.truncate(rng.gen_range(0..=b.len()));
            if let Ok(l) = ListingBody::decode(&b) {
                assert_eq!(ListingBody::decode(&l.encode()), Ok(l));
            }
        }
    }

    #[test]
    fn a_listing_too_large_for_one_body_is_cut_but_hashed_whole() {
        let kids: Vec<(String, ListedKind)> = (0..2000).map(|i| (format!("{i:0>200}"), ListedKind::File)).collect();
        let l = ListingBody::build(ListedKind::Dir, &kids);
        assert!(!l.complete && !l.children.is_empty() && l.children.len() < kids.len());
        assert!(l.encode().len() <= MAX_BODY);
        assert_eq!(l.hash, listing_hash(kids.iter().map(|(n, k)| (n.as_str(), *k))));
        assert_eq!(ListingBody::decode(&l.encode()).unwrap(), l);
    }
}
