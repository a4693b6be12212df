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

criterion_group!(benches, codecs, tar_stage);
criterion_main!(benches);
