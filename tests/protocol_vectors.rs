//! Checks every test vector in docs/protocol-vectors.md against the Rust
//! encoders and decoders: frames of every kind, a whole handshake with a
//! fixed key and nonces, a control exchange, and the JSON form of every
//! control message. The document is the reference a stranger implements
//! from; this test keeps it and the code in step.

use bytes::Bytes;
use filerep::cluster::segment::{ArbiterRequest, ArbiterResponse, SegmentRequest, SegmentResponse};
use filerep::protocol::handshake::{
    is_net_check, payload, split_message, Challenge, ClusterKey, Hello, NetCheckHello, NetCheckResult, Proof, Status,
    Verdict, CHALLENGE_LEN,
};
use filerep::protocol::{
    Ack, ChildKind, Decoder, Frame, Header, Kind, ListedKind, ListingBody, ReconcileBody, ReconcileEntry, HEADER_LEN,
};
use std::collections::{BTreeMap, BTreeSet};

const DOC: &str = include_str!("../docs/protocol-vectors.md");

/// Fenced blocks: (info string, lines).
fn blocks() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, Vec<String>)> = None;
    for line in DOC.lines() {
        match (&mut cur, line.strip_prefix("```")) {
            (None, Some(info)) => cur = Some((info.trim().to_string(), Vec::new())),
            (Some(_), Some(_)) => out.push(cur.take().expect("open block")),
            (Some((_, lines)), None) => lines.push(line.to_string()),
            (None, None) => {}
        }
    }
    assert!(cur.is_none(), "an unclosed code block");
    out
}

/// The bytes of a dump: lines of `OFFSET  xx xx ...`, offsets checked.
fn dump_bytes(lines: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        let mut words = l.split_whitespace();
        let Some(off) = words.next() else { continue };
        let off = usize::from_str_radix(off, 16).unwrap_or_else(|_| panic!("bad offset in {l:?}"));
        assert_eq!(off, out.len(), "dump line {l:?} starts at the wrong offset");
        for w in words {
            out.push(u8::from_str_radix(w, 16).unwrap_or_else(|_| panic!("bad byte {w:?} in {l:?}")));
        }
    }
    out
}

fn fields(line: &str, prefix: &str) -> BTreeMap<String, String> {
    let rest = line.strip_prefix(prefix).unwrap_or_else(|| panic!("{line:?} should start with {prefix:?}"));
    rest.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{kv:?} in {line:?} is not key=value"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn num(m: &BTreeMap<String, String>, k: &str) -> u64 {
    let v = m.get(k).unwrap_or_else(|| panic!("no {k} in {m:?}"));
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => v.parse().unwrap_or_else(|_| panic!("{k}={v} is not a number")),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// `xx*n`: n bytes of xx.
fn filled(s: &str) -> [u8; 32] {
    let (b, n) = s.split_once('*').expect("xx*32");
    assert_eq!(n, "32");
    [u8::from_str_radix(b, 16).expect("byte"); 32]
}

fn children(s: &str) -> Vec<(String, &'static str)> {
    s.split(',')
        .filter(|c| !c.is_empty())
        .map(|c| {
            let (k, n) = c.split_once(':').expect("kind:name");
            (n.to_string(), if k == "file" { "file" } else { "dir" })
        })
        .collect()
}

/// The body a `body ...` line describes, and whether the dump shows it.
fn body(spec: &str) -> (Vec<u8>, bool) {
    let (form, rest) = spec.split_once(' ').unwrap_or((spec, ""));
    match form {
        "none" => (Vec::new(), true),
        "text" => (rest.as_bytes().to_vec(), true),
        "repeat" => {
            let (b, n) = rest.split_once(' ').expect("repeat BYTE COUNT");
            (vec![u8::from_str_radix(b, 16).expect("byte"); n.parse().expect("count")], false)
        }
        "u64" => (
            rest.split_whitespace()
                .flat_map(|w| match w.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).expect("hex u64").to_le_bytes(),
                    None => w.parse::<u64>().expect("u64").to_le_bytes(),
                })
                .collect(),
            true,
        ),
        "reconcile" => {
            let m = fields(rest, "");
            let path = m.get("path").cloned().unwrap_or_default().into_bytes();
            let entry = match num(&m, "entry") {
                0 => ReconcileEntry::Absent,
                1 => ReconcileEntry::File,
                2 => ReconcileEntry::Dir { keep: None },
                _ => ReconcileEntry::Dir {
                    keep: Some(
                        children(&m["children"])
                            .into_iter()
                            .map(|(n, k)| (n, if k == "file" { ChildKind::File } else { ChildKind::Dir }))
                            .collect(),
                    ),
                },
            };
            let b = ReconcileBody { entry, path };
            let enc = b.encode();
            assert_eq!(ReconcileBody::decode(&enc).expect("decodes"), b);
            (enc, true)
        }
        "listing" => {
            let m = fields(rest, "");
            assert_eq!(num(&m, "entry"), 2, "listing vectors list a directory");
            let kids: Vec<(String, ListedKind)> = children(&m["children"])
                .into_iter()
                .map(|(n, k)| (n, if k == "file" { ListedKind::File } else { ListedKind::Dir }))
                .collect();
            let l = ListingBody::build(ListedKind::Dir, &kids);
            assert_eq!((l.complete as u64, l.others as u64), (num(&m, "complete"), num(&m, "others")));
            let enc = l.encode();
            assert_eq!(ListingBody::decode(&enc).expect("decodes"), l);
            (enc, true)
        }
        other => panic!("unknown body form {other:?}"),
    }
}

#[test]
fn every_frame_kind_has_a_vector_that_encodes_and_decodes_as_written() {
    let mut seen = BTreeSet::new();
    for (info, lines) in blocks().into_iter().filter(|(i, _)| i == "frame") {
        let _ = info;
        let m = fields(&lines[0], "header ");
        let kind = Kind::from_u8(num(&m, "kind") as u8).unwrap_or_else(|| panic!("kind {}", m["kind"]));
        let (body, shown) = body(lines[1].strip_prefix("body ").expect("a body line"));
        let mut h = Header::new(kind);
        h.flags = num(&m, "flags") as u8;
        h.filespace = num(&m, "filespace") as u16;
        h.seq = num(&m, "seq");
        h.file_id = num(&m, "file_id") as u32;
        h.aux = num(&m, "aux") as u32;
        h.offset = num(&m, "offset");
        let frame = Frame::new(h, Bytes::from(body.clone()));
        assert_eq!(frame.header.body_len as u64, num(&m, "body_len"), "{}: body_len", kind.name());
        let wire = frame.to_vec();
        let dumped = dump_bytes(&lines[2..]);
        let want = if shown { &wire[..] } else { &wire[..HEADER_LEN] };
        assert_eq!(dumped, want, "{}: the dump is not what the encoder writes", kind.name());
        // The decoder, fed the bytes in two pieces, gives the frame back.
        let mut dec = Decoder::new();
        let cut = wire.len() / 2;
        dec.feed(&wire[..cut]);
        let mut got = dec.next_frame().expect("valid");
        if got.is_none() {
            dec.feed(&wire[cut..]);
            got = dec.next_frame().expect("valid");
        }
        assert_eq!(got.as_ref(), Some(&frame), "{}: decoded", kind.name());
        if kind == Kind::Ack {
            let a = Ack::from_body(&body).expect("an ack body");
            assert_eq!(a.to_frame(), frame);
        }
        seen.insert(kind as u8);
    }
    let all: BTreeSet<u8> = (0..=255u8).filter(|k| Kind::from_u8(*k).is_some()).collect();
    assert_eq!(seen, all, "every frame kind has a vector");
}

fn block<'a>(all: &'a [(String, Vec<String>)], info: &str) -> &'a [String] {
    &all.iter().find(|(i, _)| i == info).unwrap_or_else(|| panic!("no ```{info} block")).1
}

#[test]
fn the_handshake_transcript_is_what_both_sides_compute() {
    let all = blocks();
    let k = fields(&block(&all, "key")[0], "key ");
    let material = k["material"].replace('_', " ");
    let key = ClusterKey::from_material(material.as_bytes()).expect("key");
    assert_eq!(key.derived_bytes().to_vec(), hex(&k["derived"]), "the derived key");

    let lines = block(&all, "hello");
    let m = fields(&lines[0], "hello ");
    let hello = Hello {
        cluster_id: num(&m, "cluster_id"),
        content_id: num(&m, "content_id") as u32,
        block_size: num(&m, "block_size") as u32,
        generation: num(&m, "generation"),
        start_seq: num(&m, "start_seq"),
        client_nonce: filled(&m["client_nonce"]),
        filespaces: m["filespaces"].split(',').map(String::from).collect(),
    };
    let hello_wire = dump_bytes(&lines[1..]);
    assert_eq!(hello.encode(), hello_wire, "Hello");
    let (msg, used) = split_message(&hello_wire).expect("framing").expect("whole");
    assert_eq!(used, hello_wire.len());
    assert_eq!(Hello::decode(msg).expect("decodes"), hello);

    let lines = block(&all, "challenge");
    let sn = filled(&fields(&lines[0], "challenge ")["server_nonce"]);
    let wire = dump_bytes(&lines[1..]);
    assert_eq!(Challenge { server_nonce: sn }.encode(), wire, "Challenge");
    assert_eq!(wire.len() - 4, CHALLENGE_LEN);
    assert_eq!(Challenge::decode(payload(&wire)).expect("decodes").server_nonce, sn);

    let lines = block(&all, "proof");
    let proof = key.primary_proof(payload(&hello_wire), &hello.client_nonce, &sn);
    assert_eq!(proof.to_vec(), hex(&fields(&lines[0], "proof ")["primary_proof"]), "the primary proof");
    let wire = dump_bytes(&lines[1..]);
    assert_eq!(Proof { proof }.encode(), wire, "Proof");

    let lines = block(&all, "verdict");
    let mp = key.mirror_proof(payload(&hello_wire), &hello.client_nonce, &sn);
    assert_eq!(mp.to_vec(), hex(&fields(&lines[0], "verdict ")["mirror_proof"]), "the mirror proof");
    let accepted =
        Verdict { status: Status::Accepted, generation: hello.generation, mirror_proof: mp, reason: String::new() };
    let wire = dump_bytes(&lines[1..]);
    assert_eq!(accepted.encode(), wire, "accepted Verdict");
    assert_eq!(Verdict::decode(payload(&wire)).expect("decodes"), accepted);

    let lines = block(&all, "verdict-refused");
    let m = fields(&lines[0], "verdict ");
    let refused = Verdict {
        status: Status::from_u16(num(&m, "status") as u16).expect("status"),
        generation: num(&m, "generation"),
        mirror_proof: [0; 32],
        reason: m["reason"].clone(),
    };
    let wire = dump_bytes(&lines[1..]);
    assert_eq!(refused.encode(), wire, "refused Verdict");
    assert_ne!(wire.len() - 4, CHALLENGE_LEN, "an early Verdict is told from a Challenge by its length");
}

#[test]
fn the_network_check_is_what_both_sides_compute() {
    let all = blocks();
    let k = fields(&block(&all, "key")[0], "key ");
    let key = ClusterKey::from_material(k["material"].replace('_', " ").as_bytes()).expect("key");
    let hello_nonce = filled(&fields(&block(&all, "hello")[0], "hello ")["client_nonce"]);
    let sn = filled(&fields(&block(&all, "challenge")[0], "challenge ")["server_nonce"]);

    let lines = block(&all, "netcheck-hello");
    let m = fields(&lines[0], "netcheck ");
    let hello = NetCheckHello { client_nonce: filled(&m["client_nonce"]), bytes: num(&m, "bytes") };
    assert_eq!(hello.client_nonce, hello_nonce, "the same client nonce as the Hello's");
    let hello_wire = dump_bytes(&lines[1..]);
    assert_eq!(hello.encode(), hello_wire, "NetCheckHello");
    assert!(is_net_check(payload(&hello_wire)));
    assert_eq!(NetCheckHello::decode(payload(&hello_wire)).expect("decodes"), hello);
    assert!(Hello::decode(payload(&hello_wire)).is_err(), "a check is not a Hello");

    let lines = block(&all, "netcheck-proof");
    let proof = key.net_check_proof(payload(&hello_wire), &hello.client_nonce, &sn);
    assert_eq!(proof.to_vec(), hex(&fields(&lines[0], "proof ")["check_proof"]), "the check proof");
    assert_ne!(proof, key.primary_proof(payload(&hello_wire), &hello.client_nonce, &sn));
    assert_eq!(Proof { proof }.encode(), dump_bytes(&lines[1..]), "Proof");

    let lines = block(&all, "netcheck-verdict");
    let mp = key.net_check_mirror_proof(payload(&hello_wire), &hello.client_nonce, &sn);
    assert_eq!(mp.to_vec(), hex(&fields(&lines[0], "verdict ")["mirror_check_proof"]), "the mirror's check proof");
    let accepted = Verdict { status: Status::Accepted, generation: 2, mirror_proof: mp, reason: String::new() };
    assert_eq!(accepted.encode(), dump_bytes(&lines[1..]), "accepted Verdict");

    let lines = block(&all, "netcheck-result");
    let m = fields(&lines[0], "result ");
    let result = NetCheckResult { received: num(&m, "received"), elapsed_ns: num(&m, "elapsed_ns") };
    let wire = dump_bytes(&lines[1..]);
    assert_eq!(result.encode(), wire, "NetCheckResult");
    assert_eq!(NetCheckResult::decode(payload(&wire)).expect("decodes"), result);
}

#[test]
fn the_control_exchange_is_what_both_sides_compute() {
    let all = blocks();
    let k = fields(&block(&all, "key")[0], "key ");
    let key = ClusterKey::from_material(k["material"].replace('_', " ").as_bytes()).expect("key");
    let lines = block(&all, "control-hello");
    let nonce = filled(&fields(&lines[0], "control-hello ")["nonce"]);
    let mut hello = b"FRCT".to_vec();
    hello.extend_from_slice(&1u16.to_le_bytes());
    hello.extend_from_slice(&nonce);
    assert_eq!(dump_bytes(&lines[1..]), hello, "the server's first bytes");
    for (info, label) in [("control-request", &b"request"[..]), ("control-response", &b"response"[..])] {
        let lines = block(&all, info);
        let body = lines[0].strip_prefix("json ").expect("json BODY").as_bytes();
        let mut wire = (body.len() as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(body);
        wire.extend_from_slice(&key.control_mac(label, &nonce, body));
        assert_eq!(dump_bytes(&lines[1..]), wire, "{info}");
    }
    // A later exchange on the same connection: its own nonce, its own MAC.
    let lines = block(&all, "control-exchange");
    let m = fields(&lines[0], "exchange 1 ");
    let mut h = blake3::Hasher::new();
    h.update(b"filerep v1 control exchange");
    h.update(&nonce);
    h.update(&1u64.to_le_bytes());
    let next: [u8; 32] = *h.finalize().as_bytes();
    assert_eq!(hex(&m["nonce"]), next.to_vec(), "the nonce of exchange 1, as protocol.md § 12 defines it");
    assert_eq!(filerep::cluster::control::exchange_nonce(&nonce, 1), next, "as the control channel computes it");
    let body = lines[1].strip_prefix("json ").expect("json BODY").as_bytes();
    let mut wire = (body.len() as u32).to_le_bytes().to_vec();
    wire.extend_from_slice(body);
    wire.extend_from_slice(&key.control_mac(b"request", &next, body));
    let shown: Vec<String> = wire.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(dump_bytes(&lines[2..]), wire, "exchange 1's request: {}", shown.join(" "));
    assert_ne!(next, nonce, "exchange 1 does not reuse the connection's nonce");
}

fn segment_request_name(r: &SegmentRequest) -> &'static str {
    match r {
        SegmentRequest::Probe => "Probe",
        SegmentRequest::BecomeMirror { .. } => "BecomeMirror",
        SegmentRequest::BecomePrimary { .. } => "BecomePrimary",
        SegmentRequest::TakeChanges => "TakeChanges",
        SegmentRequest::AddChanges { .. } => "AddChanges",
        SegmentRequest::ClearChanges => "ClearChanges",
        SegmentRequest::RebuildMirror => "RebuildMirror",
        SegmentRequest::StartResync { .. } => "StartResync",
        SegmentRequest::Rebind { .. } => "Rebind",
        SegmentRequest::StartVerify { .. } => "StartVerify",
        SegmentRequest::VerifyReport { .. } => "VerifyReport",
        SegmentRequest::Inspect { .. } => "Inspect",
        SegmentRequest::Stop => "Stop",
        SegmentRequest::Fenced { .. } => "Fenced",
    }
}

fn segment_response_name(r: &SegmentResponse) -> &'static str {
    match r {
        SegmentResponse::Status(_) => "Status",
        SegmentResponse::Changes(_) => "Changes",
        SegmentResponse::Done => "Done",
        SegmentResponse::Refused(_) => "Refused",
        SegmentResponse::Verifying { .. } => "Verifying",
        SegmentResponse::VerifyReport(_) => "VerifyReport",
        SegmentResponse::Inspected { .. } => "Inspected",
    }
}

fn arbiter_request_name(r: &ArbiterRequest) -> &'static str {
    match r {
        ArbiterRequest::MirrorLost { .. } => "MirrorLost",
        ArbiterRequest::Catalog => "Catalog",
        ArbiterRequest::StoreCatalog => "StoreCatalog",
        ArbiterRequest::Recover { .. } => "Recover",
        ArbiterRequest::Rebalance { .. } => "Rebalance",
        ArbiterRequest::AddMirrors { .. } => "AddMirrors",
        ArbiterRequest::Verify { .. } => "Verify",
        ArbiterRequest::Leadership => "Leadership",
    }
}

fn arbiter_response_name(r: &ArbiterResponse) -> &'static str {
    match r {
        ArbiterResponse::MirrorDown => "MirrorDown",
        ArbiterResponse::Demoted => "Demoted",
        ArbiterResponse::Catalog(_) => "Catalog",
        ArbiterResponse::Started => "Started",
        ArbiterResponse::Restored { .. } => "Restored",
        ArbiterResponse::Verifying { .. } => "Verifying",
        ArbiterResponse::Refused(_) => "Refused",
        ArbiterResponse::NotActing { .. } => "NotActing",
        ArbiterResponse::Leadership { .. } => "Leadership",
    }
}

/// Decode as `T`, encode again: the same JSON value (nothing lost, nothing
/// the document left out). Returns the variant's name.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(text: &str, name: fn(&T) -> &'static str) -> String {
    let v: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let doc: serde_json::Value = serde_json::from_str(text).expect("JSON");
    assert_eq!(serde_json::to_value(&v).expect("encodes"), doc, "re-encoded differently: {text}");
    name(&v).to_string()
}

#[test]
fn every_control_message_has_a_json_example_that_round_trips() {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (info, lines) in blocks() {
        let Some(ty) = info.strip_prefix("json ") else { continue };
        let text = lines.join("\n");
        let name = match ty {
            "SegmentRequest" => round_trip(&text, segment_request_name),
            "SegmentResponse" => round_trip(&text, segment_response_name),
            "ArbiterRequest" => round_trip(&text, arbiter_request_name),
            "ArbiterResponse" => round_trip(&text, arbiter_response_name),
            other => panic!("unknown type {other}"),
        };
        seen.entry(ty.to_string()).or_default().insert(name);
    }
    let want = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let expect = [
        (
            "SegmentRequest",
            want(&[
                "Probe",
                "BecomeMirror",
                "BecomePrimary",
                "TakeChanges",
                "AddChanges",
                "ClearChanges",
                "RebuildMirror",
                "StartResync",
                "Rebind",
                "StartVerify",
                "VerifyReport",
                "Inspect",
                "Stop",
                "Fenced",
            ]),
        ),
        ("SegmentResponse", want(&["Status", "Changes", "Done", "Refused", "Verifying", "VerifyReport", "Inspected"])),
        (
            "ArbiterRequest",
            want(&[
                "MirrorLost",
                "Catalog",
                "StoreCatalog",
                "Recover",
                "Rebalance",
                "AddMirrors",
                "Verify",
                "Leadership",
            ]),
        ),
        (
            "ArbiterResponse",
            want(&[
                "MirrorDown",
                "Demoted",
                "Catalog",
                "Started",
                "Restored",
                "Verifying",
                "Refused",
                "NotActing",
                "Leadership",
            ]),
        ),
    ];
    for (ty, names) in expect {
        assert_eq!(seen.get(ty), Some(&names), "{ty}: every variant has an example");
    }
}
