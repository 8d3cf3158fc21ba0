//! Micro-benchmarks of the frame codec and checksums (criterion).
//! Run: `cargo bench --bench codec`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use filerep::core::mirror::MirrorSession;
use filerep::protocol::{Decoder, Frame, Header, Kind};
use std::hint::black_box;

fn block_frame(seq: u64, bs: usize) -> Frame {
    let mut h = Header::new(Kind::WriteBlock);
    h.seq = seq;
    h.file_id = 1;
    h.offset = seq;
    Frame::new(h, Bytes::from(vec![(seq % 251) as u8; bs]))
}

fn checksums(c: &mut Criterion) {
    let mut g = c.benchmark_group("xxh3");
    for bs in [8 * 1024usize, 32 * 1024] {
        let data = vec![0x5au8; bs];
        g.throughput(Throughput::Bytes(bs as u64));
        g.bench_with_input(BenchmarkId::from_parameter(bs), &data, |b, d| {
            b.iter(|| xxhash_rust::xxh3::xxh3_64(black_box(d)))
        });
    }
    g.finish();
}

fn header(c: &mut Criterion) {
    let h = block_frame(42, 32 * 1024).header;
    let enc = h.encode();
    c.bench_function("header/encode", |b| b.iter(|| black_box(&h).encode()));
    c.bench_function("header/decode", |b| b.iter(|| Header::decode(black_box(&enc))));
}

fn decode_stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_and_validate");
    let bs = 32 * 1024;
    let mut wire = Vec::new();
    let mut bind = Header::new(Kind::Bind);
    bind.seq = 1;
    bind.file_id = 1;
    wire.extend(Frame::new(bind, Bytes::from_static(b"base/16384/1259")).to_vec());
    for seq in 2..=257 {
        wire.extend(block_frame(seq, bs).to_vec());
    }
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("256_blocks_32k", |b| {
        b.iter(|| {
            let mut dec = Decoder::new();
            let mut session = MirrorSession::new(bs as u32, 1, 1);
            for chunk in wire.chunks(256 * 1024) {
                dec.feed(chunk);
                while let Ok(Some(f)) = dec.next_frame() {
                    black_box(session.on_frame(&f).is_ok());
                }
            }
        })
    });
    g.finish();
}

fn encode_block(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_block");
    let data = vec![7u8; 32 * 1024];
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("copy_hash_header_32k", |b| {
        b.iter(|| {
            let body = Bytes::copy_from_slice(black_box(&data));
            let f = Frame::new(Header::new(Kind::WriteBlock), body);
            black_box(f.header.encode())
        })
    });
    g.finish();
}

criterion_group!(benches, checksums, header, decode_stream, encode_block);
criterion_main!(benches);
