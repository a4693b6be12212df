//! Tells what an input is by its content, never by its name: gzip, zstd or no compression
//! around either a tar or a bare pg_dump custom-format archive.

use std::io::{BufReader, Cursor, Read};

use serde::Serialize;

use super::codec::{Copied, Decoded, Rejoined, decoder, read_full};
use super::dump_header::MAGIC as DUMP_MAGIC;
use super::{Compression, Input, Variant};
use crate::error::{Error, Result};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// How many decompressed bytes we look at: a tar header, or a dump header with its strings.
const PEEK: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    Tar,
    Dump,
    /// Uploaded files as a zip (read from a file only).
    Zip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub compression: Compression,
    pub container: Container,
    /// The variant as far as the first bytes tell; a tar whose first member is a directory
    /// entry is settled only once read.
    pub variant: Option<Variant>,
}

/// An input whose kind is known, positioned at the start of its decompressed content.
pub struct Opened<'a> {
    pub detected: Detected,
    /// The first decompressed bytes (up to 4 KiB), also still readable from `content`.
    pub head: Vec<u8>,
    pub content: Decoded<'a>,
}

fn is_tar(block: &[u8]) -> bool {
    block.len() >= 263 && &block[257..262] == b"ustar"
}

fn tar_variant(block: &[u8]) -> Option<Variant> {
    let name_end = block[..100].iter().position(|&b| b == 0).unwrap_or(100);
    let name = String::from_utf8_lossy(&block[..name_end]);
    let name = name.strip_prefix("./").unwrap_or(&name);
    if name.starts_with("tree/") {
        Some(Variant::Files)
    } else if name == ".metadata" || name.starts_with("db/") {
        Some(Variant::Full)
    } else {
        None
    }
}

/// Opens `raw` and works out what it is.
pub fn open<'a>(mut raw: Input<'a>) -> Result<Opened<'a>> {
    let mut magic = vec![0u8; 512];
    // A decrypting input reports a damaged or cut file as an error here already.
    let n = read_full(&mut raw, &mut magic).map_err(|e| Error::reading("reading the input", e))?;
    magic.truncate(n);
    if n == 0 {
        return Err(Error::not_an_archive("the input is empty"));
    }
    if super::zipped::is_zip(&magic) {
        let head = magic.clone();
        return Ok(Opened {
            detected: Detected {
                compression: Compression::None,
                container: Container::Zip,
                variant: Some(Variant::Files),
            },
            head,
            content: Box::new(Copied(Cursor::new(magic).chain(raw))),
        });
    }
    let compression = if magic.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if magic.starts_with(ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let rejoined: Input<'a> = Box::new(Cursor::new(magic).chain(raw));
    // A small buffer: reads larger than it (a whole gzip member, a read-ahead chunk) go
    // straight into the reader's buffer instead of being copied out of this one.
    let mut content = decoder(BufReader::with_capacity(64 << 10, rejoined), compression)
        .map_err(|e| Error::reading("opening the compressed stream", e))?;
    let mut head = vec![0u8; PEEK];
    let n = read_full(&mut content, &mut head)
        .map_err(|e| Error::reading("decompressing the start of the input", e))?;
    head.truncate(n);

    let (container, variant) = if head.starts_with(DUMP_MAGIC) {
        (Container::Dump, Some(Variant::Database))
    } else if is_tar(&head) {
        (Container::Tar, tar_variant(&head))
    } else {
        let what = match compression {
            Compression::None => {
                "neither a tar, a zip, a gzip or zstd stream, nor a pg_dump archive"
            }
            Compression::Gzip => "a gzip stream holding neither a tar nor a pg_dump archive",
            Compression::Zstd => "a zstd stream holding neither a tar nor a pg_dump archive",
        };
        return Err(Error::not_an_archive(format!(
            "the input is not a snapshot: it is {what}"
        )));
    };
    let content: Decoded<'a> = Box::new(Rejoined::new(head.clone(), content));
    Ok(Opened {
        detected: Detected {
            compression,
            container,
            variant,
        },
        head,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::codec::Encoder;
    use crate::archive::codec::tests::ShortReader;
    use std::io::Write;

    fn tar_with(name: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_cksum();
        b.append_data(&mut h, name, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new(), c, c.default_level()).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn detect(bytes: Vec<u8>) -> Result<Detected> {
        let short = ShortReader::new(Cursor::new(bytes), 9);
        open(Box::new(short)).map(|o| o.detected)
    }

    #[test]
    fn detects_every_kind_by_content() {
        let dump = crate::archive::dump_header::tests::craft(1, 14);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let d = detect(compress(c, &tar_with(".metadata"))).unwrap();
            assert_eq!((d.container, d.compression), (Container::Tar, c));
            assert_eq!(d.variant, Some(Variant::Full));
            let d = detect(compress(c, &tar_with("./tree/00/1"))).unwrap();
            assert_eq!(d.variant, Some(Variant::Files));
            let d = detect(compress(c, &dump)).unwrap();
            assert_eq!((d.container, d.compression), (Container::Dump, c));
        }
    }

    #[test]
    fn content_survives_detection() {
        let tar = tar_with("db/db.backup");
        let opened = open(Box::new(Cursor::new(compress(Compression::Zstd, &tar)))).unwrap();
        let mut all = Vec::new();
        let mut content = opened.content;
        content.read_to_end(&mut all).unwrap();
        assert_eq!(all, tar);
    }

    #[test]
    fn refuses_what_is_not_an_archive() {
        use crate::error::ErrorKind;
        assert_eq!(
            detect(Vec::new()).unwrap_err().kind(),
            ErrorKind::NotAnArchive
        );
        assert_eq!(
            detect(b"just some text\n".to_vec()).unwrap_err().kind(),
            ErrorKind::NotAnArchive
        );
        assert_eq!(
            detect(compress(Compression::Gzip, b"text"))
                .unwrap_err()
                .kind(),
            ErrorKind::NotAnArchive
        );
    }
}
