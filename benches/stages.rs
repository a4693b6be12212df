//! Micro-benchmarks of the pipeline's stages, for catching regressions:
//! `cargo bench --bench stages`. The side-by-side comparison with the shell tools is
//! `benches/compare.sh`.

use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};

use mxsnap::archive::codec::Encoder;
use mxsnap::archive::writer::{MemberInfo, TarOptions, TarWriter};
use mxsnap::archive::{Compression, Variant};
use mxsnap::progress::Silent;

/// 16 MiB, two thirds text-like (about 2:1 compressible), one third random.
fn sample() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..16 << 20)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i >> 16) % 3 == 2 {
                x as u8
            } else {
                b"eeeettaaoinshrdlu  \n"[(x % 20) as usize]
            }
        })
        .collect()
}

fn codecs(c: &mut Criterion) {
    let data = sample();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for (name, compression) in [
        ("gzip6-parallel", Compression::Gzip),
        ("zstd3-mt", Compression::Zstd),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut e = Encoder::new(std::io::sink(), compression, compression.default_level())
                    .unwrap();
                e.write_all(&data).unwrap();
                e.finish().unwrap();
            })
        });
    }
    g.bench_function("gzip6-one-thread", |b| {
        b.iter(|| {
            let mut e = flate2::write::GzEncoder::new(std::io::sink(), flate2::Compression::new(6));
            e.write_all(&data).unwrap();
            e.finish().unwrap();
        })
    });
    g.bench_function("sha256", |b| b.iter(|| Sha256::digest(&data)));
    g.finish();
}

fn tar_stage(c: &mut Criterion) {
    let file = vec![7u8; 16 * 1024];
    let names: Vec<String> = (0..1000)
        .map(|i| format!("tree/{:02}/{}", i / 1000, i))
        .collect();
    let mut g = c.benchmark_group("tar");
    g.throughput(Throughput::Bytes((file.len() * names.len()) as u64));
    g.bench_function("1000 files of 16 KiB, hashed, no compression", |b| {
        b.iter(|| {
            let options = TarOptions {
                compression: Compression::None,
                level: 0,
                variant: Variant::Files,
                manifest: true,
                comment: None,
                hash_output: true,
            };
            let mut w = TarWriter::new(std::io::sink(), &options, &Silent).unwrap();
            for name in &names {
                let info = MemberInfo {
                    path: name,
                    size: file.len() as u64,
                    mode: 0o644,
                    mtime: 0,
                };
                w.append(&info, &mut &file[..]).unwrap();
            }
            w.finish().unwrap();
        })
    });
    g.finish();
}

/// 1 MiB of the sample's text-like segments: what deflate gets (dense ones are stored).
fn text_block() -> Vec<u8> {
    sample()
        .chunks(64 * 1024)
        .enumerate()
        .filter(|(i, _)| i % 3 != 2)
        .flat_map(|(_, c)| c.iter().copied())
        .take(1 << 20)
        .collect()
}

/// One 1 MiB block deflated at level 6 (how mxsnap's gzip members are made) by zlib-rs
/// (through flate2) and by libdeflate, and inflated back by each: the text-like part of the
/// sample only, since dense segments are stored without either.
fn deflate_block(c: &mut Criterion) {
    let block = text_block();
    let mut g = c.benchmark_group("deflate 1 MiB");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.sample_size(20);
    let mut zlib = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut out = Vec::with_capacity(2 << 20);
    g.bench_function("compress zlib-rs 6", |b| {
        b.iter(|| {
            zlib.reset();
            out.clear();
            zlib.compress_vec(&block, &mut out, flate2::FlushCompress::Finish)
                .unwrap();
        })
    });
    let zlib_out = out.clone();
    let mut libdeflate = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
    let mut buf = vec![0u8; libdeflate.deflate_compress_bound(block.len())];
    g.bench_function("compress libdeflate 6", |b| {
        b.iter(|| libdeflate.deflate_compress(&block, &mut buf).unwrap())
    });
    let n = libdeflate.deflate_compress(&block, &mut buf).unwrap();
    eprintln!(
        "deflate 1 MiB: zlib-rs 6 -> {} bytes, libdeflate 6 -> {n} bytes",
        zlib_out.len()
    );
    let deflated = buf[..n].to_vec();
    let mut inflated = vec![0u8; block.len()];
    g.bench_function("decompress zlib-rs", |b| {
        let mut z = flate2::Decompress::new(false);
        b.iter(|| {
            z.reset(false);
            z.decompress(&deflated, &mut inflated, flate2::FlushDecompress::Finish)
                .unwrap();
        })
    });
    let mut d = libdeflater::Decompressor::new();
    g.bench_function("decompress libdeflate", |b| {
        b.iter(|| d.deflate_decompress(&deflated, &mut inflated).unwrap())
    });
    g.finish();
}

/// pgbench_accounts as pg_dump's COPY text has it (what a database dump mostly looks like to
/// the compressor: short numbers, repeated filler).
fn dump_like(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut i = 1u64;
    while out.len() < len {
        let row = format!(
            "{i}\t{}\t{}\t{:84}\n",
            i / 100_000 + 1,
            (i * 7919) % 5000,
            ""
        );
        out.extend_from_slice(row.as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Prose and code, repeats of every length: this crate's own sources, read until 1 MiB.
fn source_block() -> Vec<u8> {
    let mut source = Vec::new();
    for entry in
        walkdir::WalkDir::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).sort_by_file_name()
    {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            source.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    while source.len() < 1 << 20 {
        source.extend_from_within(..);
    }
    source.truncate(1 << 20);
    source
}

/// Size and speed of every level of zlib-rs and libdeflate on one 1 MiB block of each kind
/// of data, printed as a table (a sweep, not a criterion measurement: 20 rounds each).
fn level_sweep(_: &mut Criterion) {
    let letters = text_block();
    let dump = dump_like(1 << 20);
    let source = source_block();
    let rounds = 40;
    let mut out = Vec::with_capacity(2 << 20);
    for (kind, block) in [("letters", &letters), ("dump", &dump), ("source", &source)] {
        {
            let mut run_length = zlib_rs::Deflate::new_with_config(zlib_rs::DeflateConfig {
                level: 6,
                window_bits: -15,
                strategy: zlib_rs::Strategy::Rle,
                ..Default::default()
            });
            let mut buf = vec![0u8; zlib_rs::compress_bound(block.len())];
            let t = std::time::Instant::now();
            let mut n = 0;
            for _ in 0..rounds {
                run_length.reset();
                run_length
                    .compress(block, &mut buf, zlib_rs::DeflateFlush::Finish)
                    .unwrap();
                n = run_length.total_out();
            }
            let mibs = rounds as f64 / t.elapsed().as_secs_f64();
            eprintln!("sweep {kind:8} run-length: zlib-rs {n:8} B {mibs:6.1} MiB/s");
        }
        for level in 1..=9 {
            let mut zlib = flate2::Compress::new(flate2::Compression::new(level), false);
            let t = std::time::Instant::now();
            for _ in 0..rounds {
                zlib.reset();
                out.clear();
                zlib.compress_vec(block, &mut out, flate2::FlushCompress::Finish)
                    .unwrap();
            }
            let zlib_mibs = rounds as f64 / t.elapsed().as_secs_f64();
            let zlib_len = out.len();
            let mut ld = libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(level as i32).unwrap(),
            );
            let mut buf = vec![0u8; ld.deflate_compress_bound(block.len())];
            let t = std::time::Instant::now();
            let mut n = 0;
            for _ in 0..rounds {
                n = ld.deflate_compress(block, &mut buf).unwrap();
            }
            let ld_mibs = rounds as f64 / t.elapsed().as_secs_f64();
            eprintln!(
                "sweep {kind:8} level {level}: zlib-rs {zlib_len:8} B {zlib_mibs:6.1} MiB/s   libdeflate {n:8} B {ld_mibs:6.1} MiB/s"
            );
            if level == 6 {
                let deflated = buf[..n].to_vec();
                let mut inflated = vec![0u8; block.len()];
                let mut z = flate2::Decompress::new(false);
                let t = std::time::Instant::now();
                for _ in 0..rounds {
                    z.reset(false);
                    z.decompress(&deflated, &mut inflated, flate2::FlushDecompress::Finish)
                        .unwrap();
                }
                let zlib_mibs = rounds as f64 / t.elapsed().as_secs_f64();
                let mut d = libdeflater::Decompressor::new();
                let t = std::time::Instant::now();
                for _ in 0..rounds {
                    d.deflate_decompress(&deflated, &mut inflated).unwrap();
                }
                let ld_mibs = rounds as f64 / t.elapsed().as_secs_f64();
                eprintln!(
                    "sweep {kind:8} inflate: zlib-rs {zlib_mibs:6.1} MiB/s   libdeflate {ld_mibs:6.1} MiB/s"
                );
            }
        }
    }
}

/// zstd level 3 with its defaults and with longer minimum matches and smaller tables, on one
/// 1 MiB block of each kind (a sweep printed as a table, 20 rounds each).
fn zstd_sweep(_: &mut Criterion) {
    use zstd::stream::raw::CParameter;
    let letters = text_block();
    let dump = dump_like(1 << 20);
    let source = source_block();
    let configs: [(&str, &[CParameter]); 5] = [
        ("level 3", &[]),
        ("mml 6", &[CParameter::MinMatch(6)]),
        (
            "mml 6 h16 c15",
            &[
                CParameter::MinMatch(6),
                CParameter::HashLog(16),
                CParameter::ChainLog(15),
            ],
        ),
        ("mml 7", &[CParameter::MinMatch(7)]),
        (
            "h16 c15",
            &[CParameter::HashLog(16), CParameter::ChainLog(15)],
        ),
    ];
    for (kind, block) in [("letters", &letters), ("dump", &dump), ("source", &source)] {
        for (name, params) in configs {
            let rounds = 20;
            let mut n = 0;
            let t = std::time::Instant::now();
            for _ in 0..rounds {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
                for p in params {
                    e.set_parameter(*p).unwrap();
                }
                e.write_all(block).unwrap();
                n = e.finish().unwrap().len();
            }
            let mibs = rounds as f64 / t.elapsed().as_secs_f64();
            eprintln!("zsweep {kind:8} {name:14}: {n:8} B {mibs:7.1} MiB/s");
        }
    }
}

criterion_group!(
    benches,
    codecs,
    tar_stage,
    deflate_block,
    level_sweep,
    zstd_sweep
);
criterion_main!(benches);
