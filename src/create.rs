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
use crate::archive::writer::{MemberInfo, TarOptions, TarWriter, Written, now_secs};
use crate::archive::{Compression, Variant, cloud_file_name};
use crate::error::{Error, Result};
use crate::files::{self, FileCounts, Selection};
use crate::output::{self, PendingFile};
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

    // The dump. A database-only file is the dump itself, compressed by pg_dump; inside a
    // compressed tar it is left uncompressed (-Z0) so the outer codec does the work once.
    let dumped = if let Some(tools) = &tools {
        let spec = spec.as_ref().expect("connected");
        progress.stage("dumping the database", None);
        progress.note(&format!(
            "dumping {} with {}",
            spec.describe(),
            tools.pg_dump.display()
        ));
        let t0 = Instant::now();
        let direct = variant == Variant::Database && pending.is_some();
        let spool = if direct {
            None
        } else {
            // Named after the output, so whoever cleans up after a crashed create (the
            // catalogue does) recognises it.
            let prefix = match &target {
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
                    .tempfile_in(&spool_dir)
                    .map_err(|e| {
                        Error::io(
                            format!("creating a dump spool in {}", spool_dir.display()),
                            e,
                        )
                    })?,
            )
        };
        let dump_path = match (&spool, &pending) {
            (Some(s), _) => s.path().to_path_buf(),
            (None, Some(p)) => p.path().to_path_buf(),
            (None, None) => unreachable!("direct dumps have a file"),
        };
        let inner_level = match (variant, opts.compression, &opts.keep_dump_as) {
            (Variant::Full, Compression::Gzip | Compression::Zstd, None) => Some(0),
            _ => None,
        };
        tools.dump_to_file(spec, snapshot.as_deref(), inner_level, &dump_path)?;
        let size = std::fs::metadata(&dump_path)
            .map_err(|e| Error::io("reading the dump's size", e))?
            .len();
        Some(Dumped {
            spool,
            size,
            seconds: t0.elapsed().as_secs(),
        })
    } else {
        None
    };
    if let (Some(s), Some(_)) = (&session, &snapshot) {
        s.commit()?;
    }
    drop(session);

    let model_version = opts
        .model_version
        .clone()
        .unwrap_or_else(|| UNKNOWN_MODEL_VERSION.to_string());
    let files_size = selection.as_ref().map(|s| s.total_bytes);

    let written = if variant == Variant::Database {
        let dumped = dumped.as_ref().expect("dumped");
        match &pending {
            // pg_dump wrote straight into the pending file.
            Some(_) => Written {
                members: 1,
                content_bytes: dumped.size,
                output_bytes: dumped.size,
                output_sha256: sha256_of_file(pending.as_ref().expect("file").path())?,
            },
            None => copy_to_stdout(dumped, progress)?,
        }
    } else {
        let tar_options = TarOptions {
            compression: opts.compression,
            level,
            variant,
            manifest: !opts.strict_layout,
            comment: opts.comment.clone(),
        };
        let total = dumped.as_ref().map_or(0, |d| d.size) + files_size.unwrap_or(0);
        progress.stage("writing the archive", Some(total));
        let metadata = dumped.as_ref().map(|d| Metadata {
            duration: d.seconds.to_string(),
            dump_size: d.size.to_string(),
            model_version: model_version.clone(),
            database_size: database_size.unwrap_or(0).to_string(),
            files_size: files_size.unwrap_or(0).to_string(),
        });
        let members = Members {
            store: opts.files.as_deref().unwrap_or(Path::new(".")),
            metadata: metadata.as_ref(),
            dump: dumped.as_ref(),
            files: selection.as_ref(),
        };
        match &pending {
            Some(p) => {
                let (w, written) = write_tar(p.writer()?, &members, &tar_options, progress)?;
                output::flush(w, "the archive")?;
                written
            }
            None => {
                let stdout = io::stdout().lock();
                let w = io::BufWriter::with_capacity(crate::archive::codec::IO_BUFFER, stdout);
                let (mut w, written) = write_tar(w, &members, &tar_options, progress)?;
                w.flush()
                    .map_err(|e| Error::io("writing the archive to standard output", e))?;
                written
            }
        }
    };
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

struct Members<'a> {
    store: &'a Path,
    metadata: Option<&'a Metadata>,
    dump: Option<&'a Dumped>,
    files: Option<&'a Selection>,
}

fn write_tar<W: Write>(
    out: W,
    members: &Members<'_>,
    options: &TarOptions,
    progress: &dyn Progress,
) -> Result<(W, Written)> {
    let writing = |e: io::Error| Error::io("writing the archive", e);
    let mut tar = TarWriter::new(out, options, progress).map_err(writing)?;
    let now = now_secs();
    if let Some(metadata) = members.metadata {
        let json = serde_json::to_vec(metadata).expect("metadata serializes");
        let info = MemberInfo {
            path: METADATA,
            size: json.len() as u64,
            mode: 0o644,
            mtime: now,
        };
        tar.append(&info, &mut &json[..]).map_err(writing)?;
    }
    if let Some(dumped) = members.dump {
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
        tar.append(&info, &mut file).map_err(writing)?;
    }
    if let Some(sel) = members.files {
        for (i, f) in sel.files.iter().enumerate() {
            if i == 1 {
                crate::env::crash_point("create-writing");
            }
            let (mut file, mtime) = open_store_file(&members.store.join(&*f.rel), f.size)?;
            let path = format!("{TREE_PREFIX}{}", f.rel);
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
    }
    tar.finish().map_err(writing)
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
