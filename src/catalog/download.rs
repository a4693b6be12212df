//! A stored full snapshot streamed out as one of the cloud's downloads.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Record;
use crate::archive::codec::{PumpError, pump};
use crate::archive::layout::Member;
use crate::archive::reader::{Visitor, walk_tar};
use crate::archive::writer::{MemberInfo, TarOptions, TarWriter, now_secs};
use crate::archive::{Compression, Variant, detect};
use crate::error::{Error, Result};
use crate::output::PendingFile;
use crate::progress::{Cancel, Progress};

/// Streams a stored full snapshot out as the cloud's download of `variant`: the archive itself,
/// its dump as a bare `.backup`, or its tree as a files-only archive. No new dump is made.
/// `target` is the final name of the file to write; without one the bytes go to `writer`.
#[allow(clippy::too_many_arguments)]
pub(super) fn download(
    rec: &Record,
    keys: &crate::crypt::Keys,
    source: &super::Stored,
    variant: Variant,
    target: Option<&Path>,
    writer: Option<Box<dyn Write + Send>>,
    force: bool,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Option<PathBuf>> {
    let pending = match target {
        Some(t) => Some(PendingFile::create(t, force)?),
        None => None,
    };
    let mut sink: Box<dyn Write> = match (&pending, writer) {
        (Some(p), _) => Box::new(p.writer()?),
        (None, Some(w)) => Box::new(std::io::BufWriter::new(w)),
        (None, None) => return Err(Error::usage("a download needs a file or a stream")),
    };
    let input = cancel.reader(source.open()?);
    match variant {
        Variant::Full => {
            use sha2::{Digest, Sha256};
            let mut hasher = Sha256::new();
            let mut input = input;
            pump(&mut input, |chunk| {
                hasher.update(chunk);
                progress.advance(chunk.len() as u64);
                sink.write_all(chunk)
            })
            .map_err(|e| match e {
                PumpError::Read(e) => Error::io(format!("reading {}", source.name()), e),
                PumpError::Write(e) => Error::io("writing the download", e),
            })?;
            let sha = crate::archive::writer::hex(&hasher.finalize());
            if rec.archive_sha256.as_deref() != Some(sha.as_str()) {
                return Err(Error::corrupt(format!(
                    "the stored archive {} no longer matches its recorded SHA-256",
                    source.name()
                ))
                .with_hint("the catalogue's copy is damaged; use another copy"));
            }
        }
        Variant::Database | Variant::Files => {
            let input: crate::archive::Input<'_> = if rec.encrypted_to.is_some() {
                Box::new(keys.open(input, &format!("snapshot {}", rec.id), rec.archive_bytes)?)
            } else {
                Box::new(input)
            };
            let opened = detect::open(input)?;
            let mut content = opened.content;
            let mut visitor = Extractor {
                variant,
                tar: None,
                sink: Some(&mut sink),
                found_dump: false,
                progress,
            };
            if variant == Variant::Files {
                let options = TarOptions {
                    compression: Compression::Gzip,
                    level: Compression::Gzip.default_level(),
                    variant: Variant::Files,
                    manifest: true,
                    comment: rec.comment.clone(),
                    hash_output: false,
                };
                let sink = visitor.sink.take().expect("set above");
                visitor.tar = Some(
                    TarWriter::new(sink, &options, progress)
                        .map_err(|e| Error::io("writing the download", e))?,
                );
            }
            walk_tar(&mut content, &mut visitor)?;
            if variant == Variant::Database && !visitor.found_dump {
                return Err(Error::corrupt("the stored snapshot holds no database dump"));
            }
            if let Some(tar) = visitor.tar.take() {
                let (w, _) = tar
                    .finish()
                    .map_err(|e| Error::io("writing the download", e))?;
                w.flush()
                    .map_err(|e| Error::io("writing the download", e))?;
            }
        }
    }
    sink.flush()
        .map_err(|e| Error::io("writing the download", e))?;
    drop(sink);
    cancel.check()?;
    match pending {
        Some(p) => Ok(Some(p.commit()?)),
        None => Ok(None),
    }
}

struct Extractor<'a, 'p> {
    variant: Variant,
    tar: Option<TarWriter<'p, &'a mut Box<dyn Write>>>,
    sink: Option<&'a mut Box<dyn Write>>,
    found_dump: bool,
    progress: &'p dyn Progress,
}

impl Visitor for Extractor<'_, '_> {
    fn content(&mut self, member: &Member, size: u64, data: &mut dyn std::io::Read) -> Result<()> {
        match (self.variant, member) {
            (Variant::Database, Member::Dump) => {
                self.found_dump = true;
                let sink = self.sink.as_mut().expect("database downloads write raw");
                let progress = self.progress;
                pump(data, |chunk| {
                    progress.advance(chunk.len() as u64);
                    sink.write_all(chunk)
                })
                .map_err(|e| match e {
                    PumpError::Read(e) => Error::reading("reading the stored dump", e),
                    PumpError::Write(e) => Error::io("writing the download", e),
                })?;
                Ok(())
            }
            (Variant::Files, Member::TreeFile(_)) => {
                let path = member.path();
                let info = MemberInfo {
                    path: &path,
                    size,
                    mode: 0o644,
                    mtime: now_secs(),
                };
                self.tar
                    .as_mut()
                    .expect("files downloads write a tar")
                    .append(&info, data)
                    .map_err(|e| Error::io("writing the download", e))
            }
            _ => Ok(()),
        }
    }

    fn finished(&mut self, _member: &Member, _size: u64, _sha256: &str) -> Result<()> {
        Ok(())
    }
}
