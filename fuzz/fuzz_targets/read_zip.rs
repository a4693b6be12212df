#![no_main]
// The same entry point tests/fuzz_corpus.rs replays the committed corpus through.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mxsnap::fuzz::read_zip(data));
