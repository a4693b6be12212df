//! The dump job and the packing of members: a full snapshot overlaps pg_dump with the packing
//! of the files ([`write_full`]).

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use crate::archive::Compression;
use crate::archive::codec::{Encoder, IO_BUFFER, PumpError, pump};
use crate::archive::layout::{DUMP, METADATA, TREE_PREFIX};
use crate::archive::manifest::Metadata;
use crate::archive::writer::{MemberInfo, Tally, TarOptions, TarWriter, Written, now_secs};
use crate::error::{Error, Result};
use crate::output::Relay;
use crate::pg::{ConnSpec, PgTools};
use crate::progress::{Cancel, Progress};
use crate::store::{Selection, StoreFiles};

pub(super) struct Dumped {
    /// The dump as pg_dump wrote it, or (with `compressed`) its tar content compressed.
    pub spool: Option<tempfile::NamedTempFile>,
    pub size: u64,
    pub seconds: u64,
    pub compressed: Option<CompressedDump>,
}

/// A dump compressed while pg_dump wrote it: the spool holds the dump's tar content and its
/// padding to the tar record as a complete compressed stream, which the archive takes as it
/// is after the dump's tar header (gzip members and zstd frames concatenate). The dump is
/// read once, not spooled raw and read back to be compressed.
pub(super) struct CompressedDump {
    /// Compressed bytes in the spool.
    pub bytes: u64,
    /// SHA-256 of the dump itself.
    pub sha256: String,
}

pub(super) fn writing(e: io::Error) -> Error {
    Error::io("writing the archive", e)
}

/// What `.metadata` records besides the dump's own figures.
pub(super) struct MetadataFacts<'a> {
    pub model_version: &'a str,
    pub database_size: u64,
    pub files_size: u64,
}

/// Everything pg_dump needs, shareable with the thread that runs it.
pub(super) struct DumpJob<'a> {
    pub tools: &'a PgTools,
    pub spec: &'a ConnSpec,
    pub snapshot: Option<&'a str>,
    pub inner_level: Option<u32>,
    /// Dump straight into this file instead of a spool.
    pub direct_to: Option<&'a Path>,
    pub target: Option<&'a Path>,
    pub spool_dir: &'a Path,
    pub metadata: MetadataFacts<'a>,
    pub cancel: &'a Cancel,
}

impl DumpJob<'_> {
    pub fn run(&self, progress: &dyn Progress) -> Result<Dumped> {
        self.note_dumping(progress);
        let t0 = Instant::now();
        let spool = match self.direct_to {
            Some(_) => None,
            None => Some(self.spool()?),
        };
        let dump_path = match (&spool, self.direct_to) {
            (Some(s), _) => s.path(),
            (None, Some(p)) => p,
            (None, None) => unreachable!("a dump is spooled or direct"),
        };
        self.tools.dump_to_file(
            self.spec,
            self.snapshot,
            self.inner_level,
            dump_path,
            self.cancel,
        )?;
        let size = std::fs::metadata(dump_path)
            .map_err(|e| Error::io("reading the dump's size", e))?
            .len();
        Ok(Dumped {
            spool,
            size,
            seconds: t0.elapsed().as_secs(),
            compressed: None,
        })
    }

    /// Runs pg_dump and compresses its output as it comes (see [`CompressedDump`]).
    fn run_compressed(
        &self,
        progress: &dyn Progress,
        compression: Compression,
        level: i32,
    ) -> Result<Dumped> {
        use sha2::{Digest, Sha256};
        self.note_dumping(progress);
        let t0 = Instant::now();
        let spool = self.spool()?;
        let spooling = |e| {
            Error::io(
                format!("spooling the dump in {}", self.spool_dir.display()),
                e,
            )
        };
        let file = spool.reopen().map_err(spooling)?;
        let out = Tally::counting(io::BufWriter::with_capacity(IO_BUFFER, file));
        // zstd on one thread: pg_dump is slower than one core compresses, and a second
        // multithreaded encoder beside the files' would double zstd's memory.
        let workers = match compression {
            Compression::Zstd => 1,
            _ => crate::archive::codec::workers(),
        };
        let mut encoder =
            Encoder::with_workers(out, compression, level, workers).map_err(spooling)?;
        let mut hasher = Sha256::new();
        let size = self.tools.dump_to_each(
            self.spec,
            self.snapshot,
            self.inner_level,
            &mut |chunk| {
                hasher.update(chunk);
                encoder.write_all(chunk)
            },
            self.cancel,
        )?;
        let pad = (512 - (size % 512) as usize) % 512;
        encoder.write_all(&[0u8; 512][..pad]).map_err(spooling)?;
        let (buffered, bytes, _) = encoder.finish().map_err(spooling)?.into_parts();
        buffered
            .into_inner()
            .map_err(|e| spooling(e.into_error()))?
            .flush()
            .map_err(spooling)?;
        Ok(Dumped {
            spool: Some(spool),
            size,
            seconds: t0.elapsed().as_secs(),
            compressed: Some(CompressedDump {
                bytes,
                sha256: crate::archive::writer::hex(&hasher.finalize()),
            }),
        })
    }

    fn note_dumping(&self, progress: &dyn Progress) {
        progress.note(&format!(
            "dumping {} with {}",
            self.spec.describe(),
            self.tools.pg_dump.display()
        ));
    }

    /// A new spool file beside the output.
    fn spool(&self) -> Result<tempfile::NamedTempFile> {
        // Named after the output, so whoever cleans up after a crashed create (the catalogue
        // does) recognises it.
        let prefix = match self.target {
            Some(t) => format!(
                ".{}.dump.",
                t.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ),
            None => ".mxsnap-dump.".to_string(),
        };
        tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".partial")
            .tempfile_in(self.spool_dir)
            .map_err(|e| {
                Error::io(
                    format!("creating a dump spool in {}", self.spool_dir.display()),
                    e,
                )
            })
    }

    fn metadata(&self, dumped: &Dumped) -> Metadata {
        Metadata {
            duration: dumped.seconds.to_string(),
            dump_size: dumped.size.to_string(),
            model_version: self.metadata.model_version.to_string(),
            database_size: self.metadata.database_size.to_string(),
            files_size: self.metadata.files_size.to_string(),
        }
    }
}

/// A full snapshot, with the dump and the file packing overlapping.
///
/// The cloud's member order puts `.metadata` and the dump before the files, but the dump's
/// size (for its tar header) and `.metadata`'s figures are known only once pg_dump is done. So
/// a second thread runs pg_dump and then writes those members as the archive's leading part
/// (a complete compressed stream), while this thread packs the files as the trailing part
/// into a [`Relay`]: spilled to disk until the leading part is in the output, then copied
/// after it, and from then on written straight to the output. Joined, the parts are one
/// valid gzip or zstd stream of one tar.
pub(super) fn write_full<W: Write + Send>(
    job: &DumpJob<'_>,
    selection: &mut Selection,
    store: &Path,
    sink: W,
    options: &TarOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(Dumped, Written, W)> {
    progress.stage_with_files(
        "dumping the database and writing the files",
        Some(selection.total_bytes),
        Some(selection.files.len()),
    );
    let (handoff, handed) = std::sync::mpsc::channel();
    let relay = Relay::new(job.spool_dir, handed).map_err(|e| {
        Error::io(
            format!("creating a spill file in {}", job.spool_dir.display()),
            e,
        )
    })?;
    std::thread::scope(|scope| {
        let leading = scope.spawn(move || -> Result<_> {
            // Compressed as pg_dump writes it when the dump inside is uncompressed (-Z0).
            let dumped = match (options.compression, job.inner_level) {
                (Compression::Gzip | Compression::Zstd, Some(0)) => {
                    job.run_compressed(progress, options.compression, options.level)?
                }
                _ => job.run(progress)?,
            };
            let sink = if options.hash_output {
                Tally::new(sink)
            } else {
                Tally::counting(sink)
            };
            let mut tar = TarWriter::leading_part(sink, options, &crate::progress::Silent)
                .map_err(writing)?;
            let (out, written, entries) = match &dumped.compressed {
                None => {
                    append_dump(&mut tar, &job.metadata(&dumped), &dumped)?;
                    tar.finish_leading().map_err(writing)?
                }
                Some(compressed) => {
                    append_metadata(&mut tar, &job.metadata(&dumped))?;
                    let info = MemberInfo {
                        path: DUMP,
                        size: dumped.size,
                        mode: 0o644,
                        mtime: now_secs(),
                    };
                    let (mut out, written, entries) = tar
                        .finish_leading_with_header(&info, &compressed.sha256)
                        .map_err(writing)?;
                    copy_compressed_dump(&dumped, compressed, &mut out)?;
                    (out, written, entries)
                }
            };
            // The trailing part's relay notices on its next write, or waits in finish.
            let _ = handoff.send(out);
            Ok((dumped, written, entries))
        });
        let trailing = TarWriter::trailing_part(relay, options, progress)
            .map_err(writing)
            .and_then(|mut tar| {
                append_files(&mut tar, store, selection, progress, cancel).map(|()| tar)
            });
        if trailing.is_ok() && !leading.is_finished() {
            progress.stage("waiting for the database dump", None);
        }
        // The dump's failure explains a broken relay better than the relay's own error.
        let (dumped, leading_written, entries) = leading
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        let (relay, trailing_written) = trailing?.finish_trailing(&entries).map_err(writing)?;
        let mut out = relay.finish().map_err(writing)?;
        out.flush().map_err(writing)?;
        let (sink, output_bytes, output_sha256) = out.into_parts();
        Ok((
            dumped,
            Written {
                members: leading_written.members + trailing_written.members,
                content_bytes: leading_written.content_bytes + trailing_written.content_bytes,
                output_bytes,
                output_sha256,
            },
            sink,
        ))
    })
}

/// `.metadata`.
fn append_metadata<W: Write>(tar: &mut TarWriter<'_, W>, metadata: &Metadata) -> Result<()> {
    let json = serde_json::to_vec(metadata)
        .map_err(|e| Error::environment(format!("encoding {METADATA}: {e}")))?;
    let info = MemberInfo {
        path: METADATA,
        size: json.len() as u64,
        mode: 0o644,
        mtime: now_secs(),
    };
    tar.append(&info, &mut &json[..]).map_err(writing)
}

/// The compressed dump's stream, from its spool into the output after the dump's header.
fn copy_compressed_dump<W: Write>(
    dumped: &Dumped,
    compressed: &CompressedDump,
    out: &mut W,
) -> Result<()> {
    let spool = dumped.spool.as_ref().expect("a compressed dump is spooled");
    let mut file = spool
        .reopen()
        .map_err(|e| Error::io("reopening the dump spool", e))?;
    let copied = pump(&mut file, |chunk| out.write_all(chunk)).map_err(|e| match e {
        PumpError::Read(e) => Error::io("reading the dump spool", e),
        PumpError::Write(e) => writing(e),
    })?;
    if copied != compressed.bytes {
        return Err(Error::environment(format!(
            "the dump spool holds {copied} bytes, {} were written to it",
            compressed.bytes
        )));
    }
    Ok(())
}

/// `.metadata` and `db/db.backup`, from the spool.
fn append_dump<W: Write>(
    tar: &mut TarWriter<'_, W>,
    metadata: &Metadata,
    dumped: &Dumped,
) -> Result<()> {
    append_metadata(tar, metadata)?;
    let now = now_secs();
    let spool = dumped.spool.as_ref().expect("a tar's dump is spooled");
    let mut file = spool
        .reopen()
        .map_err(|e| Error::io("reopening the dump spool", e))?;
    let info = MemberInfo {
        path: DUMP,
        size: dumped.size,
        mode: 0o644,
        mtime: now,
    };
    tar.append(&info, &mut file).map_err(writing)
}

/// The selected files of the store, under `tree/`. Each file is read through the cancel.
pub(super) fn append_files<W: Write>(
    tar: &mut TarWriter<'_, W>,
    store: &Path,
    selection: &mut Selection,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<()> {
    let mut files = StoreFiles::new(store);
    for (i, f) in selection.files.iter()?.enumerate() {
        let f = f?;
        if i == 1 {
            crate::sys::crash_point("create-writing");
        }
        let rel = f.rel();
        let (file, mtime) = open_store_file(&mut files, store, &rel, f.size)?;
        let mut file = cancel.reader(file);
        let path = format!("{TREE_PREFIX}{rel}");
        let info = MemberInfo {
            path: &path,
            size: f.size,
            mode: 0o644,
            mtime,
        };
        tar.append(&info, &mut file).map_err(|e| {
            if crate::progress::is_cancelled_io(&e) {
                Error::cancelled()
            } else if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::Other {
                Error::environment(format!("{e}"))
                    .with_hint("the file store changed during create: stop the app and retry")
            } else {
                writing(e)
            }
        })?;
        progress.file_done();
    }
    Ok(())
}

/// Opens a file of the store and checks it still has the size the scan saw.
fn open_store_file(
    files: &mut StoreFiles,
    store: &Path,
    rel: &str,
    size: u64,
) -> Result<(File, u64)> {
    // Paths for messages only: the open itself is relative to the folder.
    let path = || store.join(rel);
    let changed = || {
        Error::environment(format!(
            "{} changed or vanished while the snapshot was made",
            path().display()
        ))
        .with_hint("the file store changed during create: stop the app and retry")
    };
    let file = files.open(rel).map_err(|e| {
        // Gone, or replaced by a link (or its folder by one), since the scan.
        if e.kind() == io::ErrorKind::NotFound
            || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
        {
            changed()
        } else {
            Error::io(format!("opening {}", path().display()), e)
        }
    })?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path().display()), e))?;
    if meta.len() != size {
        return Err(changed());
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok((file, mtime))
}

/// Copies the spooled dump to the output (a stream, or an encrypted file).
pub(super) fn copy_dump<W: Write>(
    dumped: &Dumped,
    mut out: W,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(Written, W)> {
    use sha2::{Digest, Sha256};
    let spool = dumped
        .spool
        .as_ref()
        .expect("a dump for a stream is spooled");
    let file = spool
        .reopen()
        .map_err(|e| Error::io("reopening the dump spool", e))?;
    let mut file = cancel.reader(file);
    let mut hasher = Sha256::new();
    progress.stage("writing the dump", Some(dumped.size));
    pump(&mut file, |chunk| {
        hasher.update(chunk);
        progress.advance(chunk.len() as u64);
        out.write_all(chunk)
    })
    .map_err(|e| match e {
        PumpError::Read(e) => Error::io("reading the dump spool", e),
        PumpError::Write(e) => Error::io("writing the dump", e),
    })?;
    out.flush().map_err(|e| Error::io("writing the dump", e))?;
    let written = Written {
        members: 1,
        content_bytes: dumped.size,
        output_bytes: dumped.size,
        output_sha256: crate::archive::writer::hex(&hasher.finalize()),
    };
    Ok((written, out))
}

pub(super) fn sha256_of_file(path: &Path, cancel: &Cancel) -> Result<String> {
    use sha2::{Digest, Sha256};
    let file = File::open(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut file = cancel.reader(file);
    let mut hasher = Sha256::new();
    pump(&mut file, |chunk| {
        hasher.update(chunk);
        Ok(())
    })
    .map_err(|e| match e {
        PumpError::Read(e) | PumpError::Write(e) => {
            Error::io(format!("reading {}", path.display()), e)
        }
    })?;
    Ok(crate::archive::writer::hex(&hasher.finalize()))
}

/// The archive's way out: the file or stream as it is, or sealed with age. Sealed, what the
/// archive writers count and hash is the plaintext, so the file's own size and SHA-256 (what
/// a catalogue records and checks) are taken here, below the encryption.
pub(super) enum OutputSink {
    Plain(Box<dyn Write + Send>),
    // Boxed: the age writer holds a whole chunk buffer, the plain side one pointer.
    Sealed(Box<age::stream::StreamWriter<Tally<Box<dyn Write + Send>>>>),
}

impl OutputSink {
    pub fn new(
        out: Box<dyn Write + Send>,
        encrypt: Option<&crate::crypt::EncryptTo>,
    ) -> Result<Self> {
        Ok(match encrypt {
            None => OutputSink::Plain(out),
            Some(to) => OutputSink::Sealed(Box::new(to.seal(Tally::new(out)).map_err(writing)?)),
        })
    }

    /// Ends the output: for a sealed one, the last chunk; then the bytes and SHA-256 of
    /// what reached the file, when they differ from what the writers saw.
    pub fn finish(self) -> Result<Option<(u64, String)>> {
        match self {
            OutputSink::Plain(mut out) => {
                out.flush().map_err(writing)?;
                Ok(None)
            }
            OutputSink::Sealed(sealed) => {
                let mut tally = sealed.finish().map_err(writing)?;
                tally.flush().map_err(writing)?;
                let (_, bytes, sha) = tally.into_parts();
                Ok(Some((bytes, sha)))
            }
        }
    }
}

impl Write for OutputSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            OutputSink::Plain(w) => w.write(buf),
            OutputSink::Sealed(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            OutputSink::Plain(w) => w.flush(),
            OutputSink::Sealed(w) => w.flush(),
        }
    }
}
