//! Entry points for the fuzz targets (`fuzz/`) and for the test that replays their corpus
//! (`tests/fuzz_corpus.rs`): each feeds untrusted bytes to one reader of the crate. They may
//! return errors; they must never panic, hang or grow memory without bound.

use std::io::Read;
use std::path::Path;

use crate::archive::Content;
use crate::archive::manifest::Metadata;
use crate::inspect::Extraction;
use crate::progress::Silent;

/// Format detection and the dry run's peek.
pub fn detect(data: &[u8]) {
    let _ = crate::source::peek(Box::new(data));
    if let Ok(mut opened) = crate::archive::detect::open(Box::new(data)) {
        let _ = std::io::copy(
            &mut opened.content.by_ref().take(1 << 20),
            &mut std::io::sink(),
        );
    }
}

/// Takes every part and writes nothing: the walk then makes every check a restore makes
/// (manifest against computed checksums, `.metadata` against the members).
struct Discard;

impl Extraction for Discard {
    fn variant_known(&mut self, _found: crate::archive::Variant) -> crate::Result<()> {
        Ok(())
    }
    fn metadata(&mut self, _metadata: &Metadata) -> crate::Result<()> {
        Ok(())
    }
    fn wants_dump(&self) -> bool {
        true
    }
    fn dump(&mut self, data: &mut dyn Read) -> crate::Result<()> {
        crate::inspect::copy_into(data, &mut std::io::sink(), "nowhere").map(|_| ())
    }
    fn tree_file(&mut self, _rel: &str, data: &mut dyn Read) -> crate::Result<()> {
        crate::inspect::copy_into(data, &mut std::io::sink(), "nowhere").map(|_| ())
    }
    fn finish(&mut self) -> crate::Result<()> {
        Ok(())
    }
}

/// The archive reader as inspect drives it, and as verify and restore drive it.
pub fn read_archive(data: &[u8]) {
    let _ = crate::inspect::inspect(Content::Stream(Box::new(data)), &Silent);
    let _ = crate::inspect::extract(Content::Stream(Box::new(data)), &mut Discard, &Silent);
}

/// The zip reader, as inspect and as verify and restore drive it.
pub fn read_zip(data: &[u8]) {
    let file = |d: &[u8]| Content::File {
        reader: Box::new(std::io::Cursor::new(d.to_vec())),
        size: d.len() as u64,
    };
    let _ = crate::inspect::inspect(file(data), &Silent);
    let _ = crate::inspect::extract(file(data), &mut Discard, &Silent);
}

/// The manifest's header and entries.
pub fn manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    if let Some(first) = lines.next() {
        let _ = crate::archive::manifest::parse_header(first);
    }
    for entry in crate::archive::manifest::read_entries(data) {
        let _ = entry;
    }
}

/// `.metadata`, as others write it.
pub fn metadata(data: &[u8]) {
    if let Ok((m, _)) = Metadata::parse_lenient(data) {
        let _ = Metadata::size(&m.dump_size);
    }
}

/// The pg_dump custom-format header.
pub fn dump_header(data: &[u8]) {
    if let Ok(h) = crate::archive::dump_header::parse(data) {
        let _ = h.check_cloud_accepts();
    }
}

/// m2ee-tools' `m2ee.yaml`.
pub fn m2ee(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = crate::target::m2ee::parse(Path::new("/srv/app/m2ee.yaml"), text) {
            let _ = crate::pg::ConnSpec::resolve(Some(&config.conninfo()));
        }
    }
}

/// One entry point: feeds the bytes, returns nothing.
pub type Entry = fn(&[u8]);

/// Every entry point by name, for the corpus replay.
pub const TARGETS: &[(&str, Entry)] = &[
    ("detect", detect),
    ("read_archive", read_archive),
    ("read_zip", read_zip),
    ("manifest", manifest),
    ("metadata", metadata),
    ("dump_header", dump_header),
    ("m2ee", m2ee),
];
