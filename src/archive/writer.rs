//! Streams a snapshot tar: members are appended one at a time straight from their sources
//! (a spooled dump, files of the store) through the compressor to the output. Each member is
//! hashed on the way and recorded in the manifest spool.

use std::io::{self, Read, Write};

use std::collections::VecDeque;

use super::codec::{Encoder, IO_BUFFER};
use super::hashpipe::HashPipe;
use super::layout::MANIFEST;
use super::manifest::{ManifestEntry, ManifestSpool};
use super::{Compression, Variant};
use crate::progress::Progress;

/// A writer that counts and hashes what passes through it: the archive's own size and
/// SHA-256, as a catalogue records them.
pub struct Tally<W> {
    inner: W,
    count: u64,
    /// `None` counts only: a part of an archive, hashed as a whole further out.
    hasher: Option<HashPipe>,
}

impl<W: Write> Tally<W> {
    pub fn new(inner: W) -> Self {
        Tally {
            inner,
            count: 0,
            hasher: Some(HashPipe::new()),
        }
    }

    pub fn counting(inner: W) -> Self {
        Tally {
            inner,
            count: 0,
            hasher: None,
        }
    }

    /// Bytes written so far, and the SHA-256 of them (empty when only counting).
    pub fn into_parts(self) -> (W, u64, String) {
        let sha = self
            .hasher
            .map(|mut h| {
                h.end_member();
                hex(&h.next_digest(true).expect("one member"))
            })
            .unwrap_or_default();
        (self.inner, self.count, sha)
    }
}

impl<W: Write> Write for Tally<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a finished archive amounts to.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub members: u64,
    /// Bytes of member content (before compression, without tar headers).
    pub content_bytes: u64,
    /// Bytes written to the output (after compression).
    pub output_bytes: u64,
    /// SHA-256 of the output, as written.
    pub output_sha256: String,
}

/// How to write a snapshot tar.
#[derive(Debug, Clone)]
pub struct TarOptions {
    pub compression: Compression,
    pub level: i32,
    pub variant: Variant,
    /// False writes the strict cloud layout: no manifest member.
    pub manifest: bool,
    /// Recorded in the manifest header.
    pub comment: Option<String>,
    /// Hash the output as written (its SHA-256 in [`Written`]); off when something further
    /// out (an encryption layer) changes the bytes and hashes them itself.
    pub hash_output: bool,
}

/// Writes one snapshot tar through a compressor, whole or in two parts.
///
/// Parts let two threads write one archive at once (the dump's members and the file tree in
/// `create`): each part is a complete compressed stream (gzip members, zstd frames) of tar
/// records, and the parts joined in order are one valid stream holding one tar. Only the
/// trailing part ends the tar and holds the manifest, into which it puts the leading part's
/// entries first.
pub struct TarWriter<'p, W: Write> {
    out: Encoder<Tally<W>>,
    manifest: ManifestSink,
    /// Members' SHA-256, computed behind the writing on a thread of their own.
    hasher: HashPipe,
    /// Members written whose digests have not come back yet: (path, size).
    hashing_behind: VecDeque<(String, u64)>,
    buf: Vec<u8>,
    written: Written,
    progress: &'p dyn Progress,
}

enum ManifestSink {
    /// Strict layout: no manifest.
    None,
    /// The whole archive, or its trailing part: spooled, written as the last member.
    Spool(ManifestSpool),
    /// A leading part: a few entries, handed to the trailing part.
    Entries(Vec<ManifestEntry>),
}

/// A member's metadata as stored in its tar header.
pub struct MemberInfo<'a> {
    pub path: &'a str,
    pub size: u64,
    pub mode: u32,
    pub mtime: u64,
}

impl<'p, W: Write> TarWriter<'p, W> {
    pub fn new(out: W, options: &TarOptions, progress: &'p dyn Progress) -> io::Result<Self> {
        let out = if options.hash_output {
            Tally::new(out)
        } else {
            Tally::counting(out)
        };
        Self::build(out, options, progress, false)
    }

    /// The leading part of an archive: see [`finish_leading`](TarWriter::finish_leading).
    pub fn leading_part(
        out: W,
        options: &TarOptions,
        progress: &'p dyn Progress,
    ) -> io::Result<Self> {
        Self::build(Tally::counting(out), options, progress, true)
    }

    /// The trailing part of an archive: see [`finish_trailing`](TarWriter::finish_trailing).
    /// The output is only counted; hash the joined parts further out.
    pub fn trailing_part(
        out: W,
        options: &TarOptions,
        progress: &'p dyn Progress,
    ) -> io::Result<Self> {
        Self::build(Tally::counting(out), options, progress, false)
    }

    fn build(
        out: Tally<W>,
        options: &TarOptions,
        progress: &'p dyn Progress,
        leading: bool,
    ) -> io::Result<Self> {
        let manifest = match (options.manifest, leading) {
            (false, _) => ManifestSink::None,
            (true, true) => ManifestSink::Entries(Vec::new()),
            (true, false) => ManifestSink::Spool(ManifestSpool::new(
                options.variant,
                options.comment.as_deref(),
            )?),
        };
        Ok(TarWriter {
            out: Encoder::new(out, options.compression, options.level)?,
            manifest,
            hasher: HashPipe::new(),
            hashing_behind: VecDeque::new(),
            buf: vec![0; IO_BUFFER],
            written: Written::default(),
            progress,
        })
    }

    /// Appends a regular file member of exactly `info.size` bytes read from `data`.
    ///
    /// A source that ends early or holds more than `size` bytes is an error: the file changed
    /// between the moment its size was taken and now, and the archive would lie.
    pub fn append(&mut self, info: &MemberInfo<'_>, data: &mut dyn Read) -> io::Result<()> {
        self.append_raw(info, data, true)?;
        if self.hashing() {
            self.hasher.end_member();
            self.hashing_behind
                .push_back((info.path.to_string(), info.size));
        }
        self.record_digests(false)
    }

    /// Whether members are hashed: for the manifest; the strict layout has none.
    fn hashing(&self) -> bool {
        !matches!(self.manifest, ManifestSink::None)
    }

    /// Puts the members whose digests are ready (all of them, when `wait`) in the manifest.
    fn record_digests(&mut self, wait: bool) -> io::Result<()> {
        while let Some(digest) = self.hasher.next_digest(wait) {
            let (path, size) = self
                .hashing_behind
                .pop_front()
                .expect("a member per digest");
            let entry = ManifestEntry {
                path,
                size,
                sha256: hex(&digest),
            };
            match &mut self.manifest {
                ManifestSink::None => {}
                ManifestSink::Spool(spool) => spool.add(&entry)?,
                ManifestSink::Entries(entries) => entries.push(entry),
            }
        }
        Ok(())
    }

    /// Writes the member. A content member (`report`) counts as progress and, when there is
    /// a manifest, goes to `self.hasher` as its current member, which the caller ends; the
    /// manifest itself does neither.
    fn append_raw(
        &mut self,
        info: &MemberInfo<'_>,
        data: &mut dyn Read,
        report: bool,
    ) -> io::Result<()> {
        self.out.write_all(header(info)?.as_bytes())?;

        let mut left = info.size;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} shrank while being archived ({} of {} bytes read)",
                            info.path,
                            info.size - left,
                            info.size
                        ),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if report && self.hashing() {
                self.hasher.update(&self.buf[..n]);
            }
            self.out.write_all(&self.buf[..n])?;
            left -= n as u64;
            if report {
                self.progress.advance(n as u64);
            }
        }
        let mut probe = [0u8; 1];
        if data.read(&mut probe)? != 0 {
            return Err(io::Error::other(format!(
                "{} grew while being archived (more than {} bytes)",
                info.path, info.size
            )));
        }
        let pad = (512 - (info.size % 512) as usize) % 512;
        self.out.write_all(&[0u8; 512][..pad])?;
        self.written.members += 1;
        self.written.content_bytes += info.size;
        Ok(())
    }

    /// Appends the manifest (unless strict), the end-of-archive blocks and the codec trailer,
    /// and hands back the output writer, flushed. The caller syncs and renames it.
    pub fn finish(self) -> io::Result<(W, Written)> {
        self.finish_trailing(&[])
    }

    /// Ends a leading part: the codec's stream is complete but the tar is not (no manifest,
    /// no end-of-archive blocks). Returns the output, what was written, and the manifest
    /// entries for the trailing part.
    pub fn finish_leading(mut self) -> io::Result<(W, Written, Vec<ManifestEntry>)> {
        self.record_digests(true)?;
        let entries = match std::mem::replace(&mut self.manifest, ManifestSink::None) {
            ManifestSink::Entries(entries) => entries,
            _ => Vec::new(),
        };
        let (out, written) = self.finish_codec()?;
        Ok((out, written, entries))
    }

    /// Ends a leading part with the tar header of one more member, whose content (padded to
    /// the tar record) the caller writes to the output next as a compressed stream of its own:
    /// a dump compressed while pg_dump wrote it. `sha256` is that content's digest, for the
    /// manifest.
    pub fn finish_leading_with_header(
        mut self,
        info: &MemberInfo<'_>,
        sha256: &str,
    ) -> io::Result<(W, Written, Vec<ManifestEntry>)> {
        self.out.write_all(header(info)?.as_bytes())?;
        self.written.members += 1;
        self.written.content_bytes += info.size;
        self.record_digests(true)?;
        if let ManifestSink::Entries(entries) = &mut self.manifest {
            entries.push(ManifestEntry {
                path: info.path.to_string(),
                size: info.size,
                sha256: sha256.to_string(),
            });
        }
        self.finish_leading()
    }

    /// Ends the archive: the manifest (the leading part's entries, then this writer's), the
    /// end-of-archive blocks and the codec trailer.
    pub fn finish_trailing(mut self, leading: &[ManifestEntry]) -> io::Result<(W, Written)> {
        self.record_digests(true)?;
        if let ManifestSink::Spool(manifest) =
            std::mem::replace(&mut self.manifest, ManifestSink::None)
        {
            let (mut content, len) = manifest.finish(leading)?;
            let info = MemberInfo {
                path: MANIFEST,
                size: len,
                mode: 0o644,
                mtime: now_secs(),
            };
            self.append_raw(&info, &mut content, false)?;
        }
        self.out.write_all(&[0u8; 1024])?;
        self.finish_codec()
    }

    fn finish_codec(self) -> io::Result<(W, Written)> {
        let mut tally = self.out.finish()?;
        tally.flush()?;
        let (out, count, sha) = tally.into_parts();
        let mut written = self.written;
        written.output_bytes = count;
        written.output_sha256 = sha;
        Ok((out, written))
    }
}

/// A regular file's ustar header.
fn header(info: &MemberInfo<'_>) -> io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(info.path)?;
    header.set_size(info.size);
    header.set_mode(info.mode);
    header.set_mtime(info.mtime);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(header)
}

/// Lower-case hex of `bytes`. By table, not `format!`: a create of 200,000 small files spent
/// 6 % of its walking thread formatting their digests.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff, 0x10]), "000fabff10");
        assert_eq!(hex(&[]), "");
    }

    fn options() -> TarOptions {
        TarOptions {
            compression: Compression::None,
            level: 0,
            variant: Variant::Files,
            manifest: true,
            comment: None,
            hash_output: true,
        }
    }

    fn info(path: &str, size: u64) -> MemberInfo<'_> {
        MemberInfo {
            path,
            size,
            mode: 0o644,
            mtime: 1,
        }
    }

    #[test]
    fn writes_a_tar_that_the_tar_crate_reads_back() {
        let mut w = TarWriter::new(Vec::new(), &options(), &Silent).unwrap();
        w.append(&info("tree/00/7", 5), &mut &b"hello"[..]).unwrap();
        let (bytes, written) = w.finish().unwrap();
        assert_eq!(written.members, 2);
        let mut ar = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["tree/00/7", MANIFEST]);
    }

    #[test]
    fn a_source_that_changes_size_is_an_error() {
        let mut w = TarWriter::new(Vec::new(), &options(), &Silent).unwrap();
        assert!(w.append(&info("tree/00/7", 6), &mut &b"hello"[..]).is_err());
        let mut w = TarWriter::new(Vec::new(), &options(), &Silent).unwrap();
        assert!(w.append(&info("tree/00/7", 4), &mut &b"hello"[..]).is_err());
    }
}
