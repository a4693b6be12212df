//! `create`: dump the database, pick the file objects it references, and stream both into one
//! archive in the cloud's layout.
//!
//! Order of work: connect and check versions; open a repeatable-read transaction and export its
//! snapshot; read `system$filedocument` inside it and dump with `pg_dump --snapshot`, so the
//! file list and the dump describe the same moment; spool the dump (a tar header needs its
//! size); then stream `.metadata`, `db/db.backup`, `tree/...` and the manifest.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::archive::codec::{PumpError, pump};
use crate::archive::layout::{DUMP, METADATA, TREE_PREFIX};
use crate::archive::manifest::Metadata;
use crate::archive::writer::{MemberInfo, Tally, TarOptions, TarWriter, Written, now_secs};
use crate::archive::{Compression, Variant, cloud_file_name};
use crate::error::{Error, Result};
use crate::files::{self, FileCounts, Selection};
use crate::output::{PendingFile, Relay};
use crate::pg::{ConnSpec, PgTools, Session};
use crate::progress::Progress;

/// Where the archive goes.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout,
    /// A file, or a directory in which the file is named as the cloud names it.
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// A postgres URL; `None` relies on libpq's environment.
    pub database: Option<String>,
    pub files: Option<PathBuf>,
    pub output: Output,
    pub variant: Variant,
    pub compression: Compression,
    pub level: Option<i32>,
    pub model_version: Option<String>,
    pub comment: Option<String>,
    /// Pack every file of the store, referenced or not.
    pub all_files: bool,
    /// Only the cloud's members: no manifest.
    pub strict_layout: bool,
    pub pg_bin: Option<PathBuf>,
    /// Replace an existing output file.
    pub force: bool,
    /// Also keep the (full archive's) dump as a database-only file here: the same dump, so the
    /// pair is consistent. The dump then keeps pg_dump's own compression.
    pub keep_dump_as: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    /// The file written, or `None` for standard output.
    pub output: Option<PathBuf>,
    pub variant: Variant,
    pub compression: Compression,
    pub members: u64,
    pub content_bytes: u64,
    pub output_bytes: u64,
    pub output_sha256: String,
    pub manifest: bool,
    pub dump_size: Option<u64>,
    pub database_size: Option<u64>,
    pub files_size: Option<u64>,
    /// How the file list was chosen: "referenced" (system$filedocument) or "all".
    pub file_selection: Option<&'static str>,
    pub files: Option<FileCounts>,
    pub model_version: String,
    pub seconds: f64,
    pub warnings: Vec<String>,
    /// The database-only file kept with `keep_dump_as`.
    pub dump_file: Option<PathBuf>,
}

/// Model version recorded when none is given: the cloud always knows it, we may not.
pub const UNKNOWN_MODEL_VERSION: &str = "unknown";

struct Dumped {
    spool: Option<tempfile::NamedTempFile>,
    size: u64,
    seconds: u64,
}

pub fn create(opts: &CreateOptions, progress: &dyn Progress) -> Result<CreateReport> {
    let started = Instant::now();
    let variant = opts.variant;
    let level = opts.level.unwrap_or(opts.compression.default_level());
    opts.compression.check_level(level).map_err(Error::usage)?;
    if variant.has_files() && opts.files.is_none() {
        return Err(Error::usage(format!(
            "the {variant} variant needs the file store: pass --files DIR"
        )));
    }
    let mut warnings = Vec::new();

    // Connect when there is a dump to make, or a files-only archive that should follow the
    // database's references.
    let want_db = variant.has_database() || (opts.database.is_some() && !opts.all_files);
    let spec = if want_db {
        Some(ConnSpec::resolve(opts.database.as_deref())?)
    } else {
        None
    };
    let session = match &spec {
        Some(s) => Some(Session::connect(s)?),
        None => None,
    };
    let tools = if variant.has_database() {
        let tools = PgTools::find(opts.pg_bin.as_deref())?;
        let server = session.as_ref().expect("connected").server_version_num()?;
        tools.ensure_can_dump(server)?;
        Some(tools)
    } else {
        None
    };
    let database_size = match (&session, variant.has_database()) {
        (Some(s), true) => Some(s.database_size()?),
        _ => None,
    };
    let snapshot = match (&session, variant.has_database()) {
        (Some(s), true) => Some(s.begin_exported_snapshot()?),
        _ => None,
    };

    // Which files, read in the same snapshot as the dump.
    let (selection, file_selection) = if variant.has_files() {
        let store = opts.files.as_deref().expect("checked above");
        progress.note(&format!("scanning the file store {}", store.display()));
        let docs = match (&session, opts.all_files) {
            (Some(s), false) => s.file_documents()?,
            _ => None,
        };
        let (sel, how) = match docs {
            Some(docs) => (files::select_referenced(store, &docs)?, "referenced"),
            None => {
                if session.is_some() && !opts.all_files {
                    warnings.push(
                        "the database has no system$filedocument table: packing every file of \
                         the store"
                            .to_string(),
                    );
                }
                (files::select_all(store)?, "all")
            }
        };
        warn_about_selection(&sel, &mut warnings);
        (Some(sel), Some(how))
    } else {
        (None, None)
    };

    let target = match &opts.output {
        Output::Stdout => None,
        Output::Path(p) if p.is_dir() => {
            let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
            let stamp = chrono::Utc::now().format("%Y%m%d%H%M").to_string();
            Some(p.join(cloud_file_name(variant, opts.compression, &tag, &stamp)))
        }
        Output::Path(p) => Some(p.clone()),
    };
    let pending = match &target {
        Some(t) => Some(PendingFile::create(t, opts.force)?),
        None => None,
    };
    let spool_dir = match &target {
        Some(t) => t
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        None => std::env::temp_dir(),
    };

    let model_version = opts
        .model_version
        .clone()
        .unwrap_or_else(|| UNKNOWN_MODEL_VERSION.to_string());
    let files_size = selection.as_ref().map(|s| s.total_bytes);
    let tar_options = TarOptions {
        compression: opts.compression,
        level,
        variant,
        manifest: !opts.strict_layout,
        comment: opts.comment.clone(),
    };
    let dump_job = tools.as_ref().map(|tools| DumpJob {
        tools,
        spec: spec.as_ref().expect("connected"),
        snapshot: snapshot.as_deref(),
        // A database-only file is the dump itself, compressed by pg_dump; inside a
        // compressed tar it is left uncompressed (-Z0) so the outer codec does the work once.
        inner_level: match (variant, opts.compression, &opts.keep_dump_as) {
            (Variant::Full, Compression::Gzip | Compression::Zstd, None) => Some(0),
            _ => None,
        },
        // pg_dump writes a database-only file straight into the pending output.
        direct_to: match (variant, &pending) {
            (Variant::Database, Some(p)) => Some(p.path()),
            _ => None,
        },
        target: target.as_deref(),
        spool_dir: &spool_dir,
        metadata: MetadataFacts {
            model_version: &model_version,
            database_size: database_size.unwrap_or(0),
            files_size: files_size.unwrap_or(0),
        },
    });
    // The output, as one writer type for every case. Standard output is taken unlocked: a
    // lock cannot cross threads, and the 1 MiB buffer makes the per-write locking rare.
    let sink: Box<dyn Write + Send> = match &pending {
        Some(p) => Box::new(p.writer()?),
        None => Box::new(io::BufWriter::with_capacity(
            crate::archive::codec::IO_BUFFER,
            io::stdout(),
        )),
    };
    let store = opts.files.as_deref().unwrap_or(Path::new("."));

    let (dumped, written) = match variant {
        Variant::Database => {
            drop(sink);
            progress.stage("dumping the database", None);
            let dumped = dump_job.as_ref().expect("tools found").run(progress)?;
            let written = match &pending {
                // pg_dump wrote straight into the pending file.
                Some(p) => Written {
                    members: 1,
                    content_bytes: dumped.size,
                    output_bytes: dumped.size,
                    output_sha256: sha256_of_file(p.path())?,
                },
                None => copy_to_stdout(&dumped, progress)?,
            };
            (Some(dumped), written)
        }
        Variant::Files => {
            let sel = selection.as_ref().expect("files selected");
            progress.stage("writing the archive", files_size);
            let mut tar = TarWriter::new(sink, &tar_options, progress).map_err(writing)?;
            append_files(&mut tar, store, sel)?;
            let (mut out, written) = tar.finish().map_err(writing)?;
            out.flush().map_err(writing)?;
            (None, written)
        }
        Variant::Full => {
            let job = dump_job.as_ref().expect("tools found");
            let sel = selection.as_ref().expect("files selected");
            let (dumped, written) = write_full(job, sel, store, sink, &tar_options, progress)?;
            (Some(dumped), written)
        }
    };
    if let (Some(s), Some(_)) = (&session, &snapshot) {
        s.commit()?;
    }
    drop(session);

    let dump_file = match (
        &opts.keep_dump_as,
        dumped.as_ref().and_then(|d| d.spool.as_ref()),
    ) {
        (Some(path), Some(spool)) => {
            spool
                .as_file()
                .sync_all()
                .map_err(|e| Error::io("syncing the dump", e))?;
            let copy = PendingFile::create(path, opts.force)?;
            std::fs::copy(spool.path(), copy.path())
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            Some(copy)
        }
        _ => None,
    };
    let output = match pending {
        Some(p) => Some(p.commit()?),
        None => None,
    };
    let dump_file = match dump_file {
        Some(p) => Some(p.commit()?),
        None => None,
    };
    Ok(CreateReport {
        output,
        variant,
        compression: if variant == Variant::Database {
            Compression::None
        } else {
            opts.compression
        },
        members: written.members,
        content_bytes: written.content_bytes,
        output_bytes: written.output_bytes,
        output_sha256: written.output_sha256,
        manifest: variant != Variant::Database && !opts.strict_layout,
        dump_size: dumped.as_ref().map(|d| d.size),
        database_size,
        files_size,
        file_selection,
        files: selection.map(|s| s.counts),
        model_version,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
        dump_file,
    })
}

fn warn_about_selection(sel: &Selection, warnings: &mut Vec<String>) {
    if sel.counts.missing > 0 {
        warnings.push(format!(
            "{} referenced file(s) are missing from the store and are not in the archive \
             (e.g. {})",
            sel.counts.missing,
            sel.missing_examples.join(", ")
        ));
    }
    if sel.counts.skipped > 0 {
        warnings.push(format!(
            "{} entr(ies) of the store were skipped (e.g. {})",
            sel.counts.skipped,
            sel.skipped_examples.join(", ")
        ));
    }
}

fn writing(e: io::Error) -> Error {
    Error::io("writing the archive", e)
}

/// What `.metadata` records besides the dump's own figures.
struct MetadataFacts<'a> {
    model_version: &'a str,
    database_size: u64,
    files_size: u64,
}

/// Everything pg_dump needs, shareable with the thread that runs it.
struct DumpJob<'a> {
    tools: &'a PgTools,
    spec: &'a ConnSpec,
    snapshot: Option<&'a str>,
    inner_level: Option<u32>,
    /// Dump straight into this file instead of a spool.
    direct_to: Option<&'a Path>,
    target: Option<&'a Path>,
    spool_dir: &'a Path,
    metadata: MetadataFacts<'a>,
}

impl DumpJob<'_> {
    fn run(&self, progress: &dyn Progress) -> Result<Dumped> {
        progress.note(&format!(
            "dumping {} with {}",
            self.spec.describe(),
            self.tools.pg_dump.display()
        ));
        let t0 = Instant::now();
        let spool = match self.direct_to {
            Some(_) => None,
            None => {
                // Named after the output, so whoever cleans up after a crashed create (the
                // catalogue does) recognises it.
                let prefix = match self.target {
                    Some(t) => format!(
                        ".{}.dump.",
                        t.file_name()
                            .map(|n| n.to_string_lossy())
                            .unwrap_or_default()
                    ),
                    None => ".mxsnap-dump.".to_string(),
                };
                Some(
                    tempfile::Builder::new()
                        .prefix(&prefix)
                        .suffix(".partial")
                        .tempfile_in(self.spool_dir)
                        .map_err(|e| {
                            Error::io(
                                format!("creating a dump spool in {}", self.spool_dir.display()),
                                e,
                            )
                        })?,
                )
            }
        };
        let dump_path = match (&spool, self.direct_to) {
            (Some(s), _) => s.path(),
            (None, Some(p)) => p,
            (None, None) => unreachable!("a dump is spooled or direct"),
        };
        self.tools
            .dump_to_file(self.spec, self.snapshot, self.inner_level, dump_path)?;
        let size = std::fs::metadata(dump_path)
            .map_err(|e| Error::io("reading the dump's size", e))?
            .len();
        Ok(Dumped {
            spool,
            size,
            seconds: t0.elapsed().as_secs(),
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
fn write_full(
    job: &DumpJob<'_>,
    selection: &Selection,
    store: &Path,
    sink: Box<dyn Write + Send>,
    options: &TarOptions,
    progress: &dyn Progress,
) -> Result<(Dumped, Written)> {
    progress.stage(
        "dumping the database and writing the files",
        Some(selection.total_bytes),
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
            let dumped = job.run(progress)?;
            let mut tar =
                TarWriter::leading_part(Tally::new(sink), options, &crate::progress::Silent)
                    .map_err(writing)?;
            append_dump(&mut tar, &job.metadata(&dumped), &dumped)?;
            let (out, written, entries) = tar.finish_leading().map_err(writing)?;
            // The trailing part's relay notices on its next write, or waits in finish.
            let _ = handoff.send(out);
            Ok((dumped, written, entries))
        });
        let trailing = TarWriter::trailing_part(relay, options, progress)
            .map_err(writing)
            .and_then(|mut tar| append_files(&mut tar, store, selection).map(|()| tar));
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
        let (_, output_bytes, output_sha256) = out.into_parts();
        Ok((
            dumped,
            Written {
                members: leading_written.members + trailing_written.members,
                content_bytes: leading_written.content_bytes + trailing_written.content_bytes,
                output_bytes,
                output_sha256,
            },
        ))
    })
}

/// `.metadata` and `db/db.backup`, from the spool.
fn append_dump<W: Write>(
    tar: &mut TarWriter<'_, W>,
    metadata: &Metadata,
    dumped: &Dumped,
) -> Result<()> {
    let now = now_secs();
    let json = serde_json::to_vec(metadata).expect("metadata serializes");
    let info = MemberInfo {
        path: METADATA,
        size: json.len() as u64,
        mode: 0o644,
        mtime: now,
    };
    tar.append(&info, &mut &json[..]).map_err(writing)?;
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

/// The selected files of the store, under `tree/`.
fn append_files<W: Write>(
    tar: &mut TarWriter<'_, W>,
    store: &Path,
    selection: &Selection,
) -> Result<()> {
    for (i, f) in selection.files.iter().enumerate() {
        if i == 1 {
            crate::env::crash_point("create-writing");
        }
        let rel = f.rel();
        let (mut file, mtime) = open_store_file(&store.join(&*rel), f.size)?;
        let path = format!("{TREE_PREFIX}{rel}");
        let info = MemberInfo {
            path: &path,
            size: f.size,
            mode: 0o644,
            mtime,
        };
        tar.append(&info, &mut file).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::Other {
                Error::environment(format!("{e}"))
                    .with_hint("the file store changed during create: stop the app and retry")
            } else {
                writing(e)
            }
        })?;
    }
    Ok(())
}

/// Opens a file of the store and checks it still has the size the scan saw.
fn open_store_file(path: &Path, size: u64) -> Result<(File, u64)> {
    let changed = || {
        Error::environment(format!(
            "{} changed or vanished while the snapshot was made",
            path.display()
        ))
        .with_hint("the file store changed during create: stop the app and retry")
    };
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            changed()
        } else {
            Error::io(format!("opening {}", path.display()), e)
        }
    })?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
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

fn copy_to_stdout(dumped: &Dumped, progress: &dyn Progress) -> Result<Written> {
    use sha2::{Digest, Sha256};
    let spool = dumped.spool.as_ref().expect("spooled");
    let mut file = spool
        .reopen()
        .map_err(|e| Error::io("reopening the dump spool", e))?;
    let mut out = io::stdout().lock();
    let mut hasher = Sha256::new();
    progress.stage("writing the dump", Some(dumped.size));
    pump(&mut file, |chunk| {
        hasher.update(chunk);
        progress.advance(chunk.len() as u64);
        out.write_all(chunk)
    })
    .map_err(|e| match e {
        PumpError::Read(e) => Error::io("reading the dump spool", e),
        PumpError::Write(e) => Error::io("writing to standard output", e),
    })?;
    out.flush()
        .map_err(|e| Error::io("writing to standard output", e))?;
    Ok(Written {
        members: 1,
        content_bytes: dumped.size,
        output_bytes: dumped.size,
        output_sha256: crate::archive::writer::hex(&hasher.finalize()),
    })
}

fn sha256_of_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file =
        File::open(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
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
