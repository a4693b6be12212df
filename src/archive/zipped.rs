//! Uploaded files as a zip, the cloud's other upload format: read with the same rules as a tar
//! (every name through [`classify`], no links, no duplicates) and the checks a zip needs on top:
//! no encrypted entries, no entry or archive that expands far beyond its compressed size, no
//! entries sharing compressed bytes (how the worst zip bombs are built), and every entry
//! exactly as long as its declared size and matching its CRC-32.
//!
//! A zip's index is at its end, so it is read from a file (seekable), never from a stream.
//! Entries are named `tree/<aa>/<bb>/<uuid>` or bare `<aa>/<bb>/<uuid>`, as a store holds them.

use std::io::{self, Read, Seek, Write};

use sha2::{Digest, Sha256};
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use super::layout::{EntryKind, METADATA, Member, TREE_PREFIX, classify};
use super::reader::{SeenMembers, Visitor, Walked};
use super::writer::hex;
use crate::error::{Error, Result};

/// The first bytes of a zip: a local file header, or the end record of an empty zip.
pub const MAGIC: &[u8] = b"PK\x03\x04";
pub const EMPTY_MAGIC: &[u8] = b"PK\x05\x06";

/// An entry may expand to at most this many times its compressed size...
pub const MAX_ENTRY_RATIO: u64 = 200;
/// ...once it is larger than this (small entries of zeros are harmless and common).
pub const ENTRY_RATIO_FROM: u64 = 1 << 20;
/// All entries together may expand to at most this many times the zip's size...
pub const MAX_TOTAL_RATIO: u64 = 50;
/// ...once they are larger than this.
pub const TOTAL_RATIO_FROM: u64 = 64 << 20;

pub fn is_zip(head: &[u8]) -> bool {
    head.starts_with(MAGIC) || head.starts_with(EMPTY_MAGIC)
}

fn zip_error(e: ZipError) -> Error {
    match e {
        ZipError::Io(e) => Error::reading("reading the zip", e),
        ZipError::UnsupportedArchive(what) => {
            Error::corrupt(format!("the zip uses what mxsnap does not read: {what}"))
                .with_hint("zip the files again with plain deflate (e.g. `zip -r`), or use tar.gz")
        }
        other => Error::corrupt(format!("the zip is damaged: {other}"))
            .with_hint("the file was cut short or altered; copy it again"),
    }
}

/// One entry as the central directory declares it, checked.
struct Declared {
    index: usize,
    member: Member,
    size: u64,
}

/// The archive name an entry stands for: `tree/...` as given, or a bare store path under
/// `tree/`. Hostile names are left as they are, for [`classify`] to refuse with their own words.
fn layout_name(raw: &[u8]) -> Vec<u8> {
    let name = raw.strip_prefix(b"./").unwrap_or(raw);
    let hostile = name.starts_with(b"/") || name.split(|&b| b == b'/').any(|c| c == b"..");
    if hostile || name.starts_with(TREE_PREFIX.as_bytes()) || name == b"tree/" {
        return name.to_vec();
    }
    let mut full = TREE_PREFIX.as_bytes().to_vec();
    full.extend_from_slice(name);
    full
}

/// Reads every entry's header and refuses the zip before anything is extracted when one of
/// them breaks a rule; returns the content entries in the zip's order.
fn check_directory<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    archive_size: u64,
) -> Result<Vec<Declared>> {
    let mut seen = SeenMembers::default();
    let mut declared = Vec::with_capacity(zip.len());
    let mut ranges = Vec::with_capacity(zip.len());
    let mut total = 0u64;
    for index in 0..zip.len() {
        let entry = zip.by_index_raw(index).map_err(zip_error)?;
        let raw = entry.name_raw().to_vec();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        if entry.encrypted() {
            return Err(Error::corrupt(format!(
                "zip entry {shown:?} is encrypted; mxsnap reads only unencrypted zips"
            ))
            .with_hint("unpack it with its password and zip the files again without one"));
        }
        let kind = if entry.is_symlink() {
            EntryKind::Symlink
        } else if entry.is_dir() {
            EntryKind::Directory
        } else {
            EntryKind::File
        };
        let bare = raw.strip_prefix(b"./").unwrap_or(&raw);
        if bare == METADATA.as_bytes() || bare.starts_with(b"db/") {
            return Err(Error::corrupt(format!(
                "zip entry {shown:?} is part of a full snapshot; a zip holds uploaded files only"
            ))
            .with_hint("a full snapshot travels as the tar.gz the cloud makes"));
        }
        let member = classify(&layout_name(&raw), kind)
            .map_err(|e| Error::corrupt(format!("zip {}", e.message())))?;
        let size = entry.size();
        let compressed = entry.compressed_size();
        match &member {
            Member::Directory => continue,
            Member::TreeFile(_) => {}
            _ => {
                return Err(Error::corrupt(format!(
                    "zip entry {shown:?} is not an uploaded file"
                )));
            }
        }
        if !matches!(
            entry.compression(),
            CompressionMethod::Stored | CompressionMethod::Deflated
        ) {
            return Err(Error::corrupt(format!(
                "zip entry {shown:?} is compressed with {}, which mxsnap does not read",
                entry.compression()
            ))
            .with_hint("zip the files again with plain deflate (e.g. `zip -r`), or use tar.gz"));
        }
        if size > ENTRY_RATIO_FROM && size / compressed.max(1) > MAX_ENTRY_RATIO {
            return Err(Error::corrupt(format!(
                "zip entry {shown:?} expands from {compressed} to {size} bytes, more than \
                 {MAX_ENTRY_RATIO} times: refusing what looks like a zip bomb"
            )));
        }
        let path = member.path();
        if let Some(repeat) = seen.insert(&path)? {
            return Err(zip_twice(&repeat));
        }
        let start = entry.data_start().unwrap_or_else(|| entry.header_start());
        if compressed > 0 {
            ranges.push((start, start.saturating_add(compressed), index));
        }
        total = total.saturating_add(size);
        declared.push(Declared {
            index,
            member,
            size,
        });
    }
    ranges.sort_unstable();
    if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(Error::corrupt(format!(
            "zip entries {} and {} share compressed data: refusing what looks like a zip bomb",
            w[0].2, w[1].2
        )));
    }
    if ranges.last().is_some_and(|last| last.1 > archive_size) {
        return Err(Error::corrupt(
            "a zip entry's data runs past the end of the file: the zip is truncated",
        ));
    }
    if total > TOTAL_RATIO_FROM && total / archive_size.max(1) > MAX_TOTAL_RATIO {
        return Err(Error::corrupt(format!(
            "the zip's {} entries expand from {archive_size} to {total} bytes, more than \
             {MAX_TOTAL_RATIO} times: refusing what looks like a zip bomb",
            declared.len()
        )));
    }
    if let Some(repeat) = seen.finish()? {
        return Err(zip_twice(&repeat));
    }
    Ok(declared)
}

fn zip_twice(path: &str) -> Error {
    Error::corrupt(format!(
        "zip entry {path} appears twice; refusing an ambiguous archive"
    ))
}

/// Hashes and counts what is read through it, and never lets more than `limit` bytes through
/// (so an entry that lies about its size cannot expand without end).
struct Checked<'a, R> {
    inner: R,
    hasher: &'a mut Sha256,
    read: u64,
    limit: u64,
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = (self.limit - self.read).min(buf.len() as u64) as usize;
        if room == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..room])?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Walks a zip of uploaded files: checks every entry's header first, then reads each entry,
/// calling `visitor` as [`super::reader::walk_tar`] does.
pub fn walk_zip<R: Read + Seek>(
    reader: R,
    archive_size: u64,
    visitor: &mut dyn Visitor,
) -> Result<Walked> {
    let mut zip = ZipArchive::new(reader).map_err(|e| match e {
        ZipError::InvalidArchive(_) => Error::corrupt(format!(
            "the zip's index (central directory) cannot be read: {e}"
        ))
        .with_hint("the file was cut short or is not a zip; copy it again"),
        other => zip_error(other),
    })?;
    let declared = check_directory(&mut zip, archive_size)?;
    let mut walked = Walked::default();
    let mut drain = vec![0u8; 64 * 1024];
    for d in declared {
        let path = d.member.path();
        let entry = zip.by_index(d.index).map_err(zip_error)?;
        let mut hasher = Sha256::new();
        let mut checked = Checked {
            inner: entry,
            hasher: &mut hasher,
            read: 0,
            limit: d.size + 1,
        };
        let damaged = |e: io::Error| {
            if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::UnexpectedEof {
                Error::corrupt(format!("zip entry {path} is damaged: {e}"))
                    .with_hint("the file was cut short or altered; copy it again")
            } else {
                Error::reading(format!("reading zip entry {path}"), e)
            }
        };
        visitor
            .content(&d.member, d.size, &mut checked)
            .map_err(|e| {
                // A CRC or inflate failure surfaces as the visitor's read error.
                if e.kind() == crate::error::ErrorKind::Environment
                    && e.message().contains("reading the archive")
                {
                    Error::corrupt(format!("zip entry {path} is damaged: {}", e.message()))
                } else {
                    e
                }
            })?;
        loop {
            match checked.read(&mut drain) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(damaged(e)),
            }
        }
        if checked.read > d.size {
            return Err(Error::corrupt(format!(
                "zip entry {path} expands beyond the {} bytes it declares: refusing it",
                d.size
            )));
        }
        if checked.read < d.size {
            return Err(Error::corrupt(format!(
                "zip entry {path} ends after {} of the {} bytes it declares: the zip is damaged",
                checked.read, d.size
            )));
        }
        drop(checked);
        walked.members += 1;
        walked.content_bytes += d.size;
        visitor.finished(&d.member, d.size, &hex(&hasher.finalize()))?;
    }
    Ok(walked)
}

/// Writes uploaded files into a zip (deflate), entries named `tree/<path>` as in a tar.
pub struct ZipFilesWriter<W: Write + Seek> {
    zip: zip::ZipWriter<W>,
}

impl<W: Write + Seek> ZipFilesWriter<W> {
    pub fn new(out: W) -> Self {
        ZipFilesWriter {
            zip: zip::ZipWriter::new(out),
        }
    }

    /// Adds one file of `size` bytes read from `data`; `rel` is its path below `tree/`.
    pub fn add(&mut self, rel: &str, size: u64, data: &mut dyn Read) -> io::Result<()> {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .unix_permissions(0o644)
            .large_file(size >= u32::MAX as u64);
        self.zip
            .start_file(format!("{TREE_PREFIX}{rel}"), options)
            .map_err(io::Error::other)?;
        io::copy(data, &mut self.zip)?;
        Ok(())
    }

    pub fn finish(self) -> io::Result<W> {
        self.zip.finish().map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::codec::tests::ShortReader;
    use crate::error::ErrorKind;
    use std::io::Cursor;

    struct Collect(Vec<(String, u64, String)>);
    impl Visitor for Collect {
        fn content(&mut self, _m: &Member, _size: u64, data: &mut dyn Read) -> Result<()> {
            // Read through a short reader, as a restore's writer would, in odd pieces.
            let mut short = ShortReader::new(data, 7);
            let mut sink = Vec::new();
            short
                .read_to_end(&mut sink)
                .map_err(|e| Error::reading("reading the archive", e))?;
            Ok(())
        }
        fn finished(&mut self, m: &Member, size: u64, sha: &str) -> Result<()> {
            self.0.push((m.path(), size, sha.to_string()));
            Ok(())
        }
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(CompressionMethod::Deflated);
            if name.ends_with('/') {
                w.add_directory(*name, opts).unwrap();
            } else {
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    fn walk(bytes: &[u8]) -> Result<Vec<(String, u64, String)>> {
        let mut c = Collect(Vec::new());
        walk_zip(Cursor::new(bytes), bytes.len() as u64, &mut c)?;
        Ok(c.0)
    }

    const UUID: &str = "ab/cd/abcd0000-1111-4222-8333-444455556666";

    #[test]
    fn reads_both_layouts_and_round_trips_the_writer() {
        let bare = zip_of(&[("ab/", b""), (UUID, b"hello"), ("00/7", b"seven")]);
        let found = walk(&bare).unwrap();
        assert_eq!(found[0].0, format!("tree/{UUID}"));
        assert_eq!(
            found[1],
            ("tree/00/7".into(), 5, hex(&Sha256::digest(b"seven")))
        );
        let mut w = ZipFilesWriter::new(Cursor::new(Vec::new()));
        w.add(UUID, 5, &mut &b"hello"[..]).unwrap();
        let written = w.finish().unwrap().into_inner();
        assert_eq!(walk(&written).unwrap(), found[..1].to_vec());
        assert!(walk(&zip_of(&[])).unwrap().is_empty());
    }

    #[test]
    fn refuses_hostile_entries() {
        for (bytes, why) in [
            (zip_of(&[("../evil", b"x")]), "climbs out"),
            (zip_of(&[("/etc/evil", b"x")]), "absolute"),
            (zip_of(&[("tree/../../x", b"x")]), "climbs out"),
            (
                zip_of(&[("evil.sh", b"x")]),
                "does not match the file-store layout",
            ),
            (zip_of(&[(".metadata", b"{}")]), "full snapshot"),
            (
                zip_of(&[(UUID, b"a"), (&format!("tree/{UUID}"), b"b")]),
                "twice",
            ),
        ] {
            let e = walk(&bytes).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{why}: {e}");
            assert!(format!("{e}").contains(why), "wanted {why:?}: {e}");
        }
        // a symbolic link
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.add_symlink(
            UUID,
            "/etc/passwd",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        let e = walk(&w.finish().unwrap().into_inner()).unwrap_err();
        assert!(format!("{e}").contains("symbolic link"), "{e}");
    }

    #[test]
    fn damage_and_lies_are_caught() {
        let good = zip_of(&[(UUID, &[42u8; 5000])]);
        // cut anywhere
        for cut in [10, good.len() / 2, good.len() - 5] {
            assert_eq!(
                walk(&good[..cut]).unwrap_err().kind(),
                ErrorKind::Corrupt,
                "cut {cut}"
            );
        }
        // a flipped bit in the compressed data fails inflate or the CRC
        let mut flipped = good.clone();
        let at = 30 + UUID.len() + 3;
        flipped[at] ^= 0x55;
        assert_eq!(walk(&flipped).unwrap_err().kind(), ErrorKind::Corrupt);
        // the declared size, in the central directory, lowered by one
        let mut lying = good.clone();
        let cd = lying.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
        lying[cd + 24..cd + 28].copy_from_slice(&4999u32.to_le_bytes());
        let e = walk(&lying).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        // ...or raised
        lying[cd + 24..cd + 28].copy_from_slice(&5001u32.to_le_bytes());
        assert_eq!(walk(&lying).unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn zip_bombs_are_refused_before_extraction() {
        // one entry of 8 MiB of zeros: deflate makes it ~8 KiB (ratio ~1000)
        let zeros = vec![0u8; 8 << 20];
        let bomb = zip_of(&[(UUID, &zeros)]);
        let e = walk(&bomb).unwrap_err();
        assert!(format!("{e}").contains("zip bomb"), "{e}");
        // a small file of zeros is fine
        walk(&zip_of(&[(UUID, &zeros[..64 << 10])])).unwrap();

        // two central directory entries pointing at the same compressed bytes (the
        // overlapping construction that makes a 42 KB zip expand to gigabytes)
        let mut z = zip_of(&[(UUID, b"hello hello hello")]);
        let cd = z.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
        let eocd = z.len() - 22;
        let mut record = z[cd..eocd].to_vec();
        let other = UUID.replace("abcd0000", "abcd9999");
        record[46..46 + other.len()].copy_from_slice(other.as_bytes());
        let cd_size = u32::from_le_bytes(z[eocd + 12..eocd + 16].try_into().unwrap());
        let mut end = z[eocd..].to_vec();
        end[8..10].copy_from_slice(&2u16.to_le_bytes());
        end[10..12].copy_from_slice(&2u16.to_le_bytes());
        end[12..16].copy_from_slice(&(cd_size + record.len() as u32).to_le_bytes());
        z.truncate(eocd);
        z.extend_from_slice(&record);
        z.extend_from_slice(&end);
        let e = walk(&z).unwrap_err();
        assert!(format!("{e}").contains("share compressed data"), "{e}");
    }
}
