//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`, seeds and what the fuzzers
//! kept) and the regressions (`fuzz/regressions/<target>/`, inputs that once crashed) through
//! the same entry points as the fuzz targets, so CI checks them without a fuzzer.

use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn every_corpus_input_is_read_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, entry) in mxsnap::fuzz::TARGETS {
        for dir in ["corpus", "regressions"] {
            let Ok(files) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for file in files {
                let path = file.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let t0 = Instant::now();
                entry(&data);
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "{name}: {} took {:?}",
                    path.display(),
                    t0.elapsed()
                );
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 100, "only {replayed} corpus inputs found");
}

#[test]
fn mangled_seeds_are_read_without_a_panic() {
    // A cheap, seeded stand-in for the fuzzer: every seed cut at many points and with bytes
    // flipped, through its target.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (name, entry) in mxsnap::fuzz::TARGETS {
        let Ok(files) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for file in files {
            let path = file.unwrap().path();
            // The named seeds only; what the fuzzers kept is named by its hash.
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let seed = std::fs::read(&path).unwrap();
            for _ in 0..40 {
                let mut data = seed.clone();
                if !data.is_empty() {
                    let cut = (next() as usize) % (data.len() + 1);
                    data.truncate(cut.max(1));
                    for _ in 0..(next() % 4) {
                        let at = (next() as usize) % data.len();
                        data[at] ^= 1 << (next() % 8);
                    }
                }
                entry(&data);
            }
        }
    }
}
