//! `create`: dump the database, pick the file objects it references, and stream both into one
//! archive in the cloud's layout.
//!
//! [`plan`] validates the options, connects and checks the client against the server, and
//! names the output; nothing is written. [`execute`] opens a repeatable-read transaction and
//! exports its snapshot, reads `system$filedocument` inside it and dumps with `pg_dump
//! --snapshot` (so the file list and the dump describe the same moment), then streams
//! `.metadata`, `db/db.backup`, `tree/...` and the manifest (`full` overlaps the dump with
//! the packing). The output appears under its final name only when complete and synced.

mod full;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::archive::writer::{TarOptions, TarWriter, Written};
use crate::archive::{Compression, Variant, cloud_file_name};
use crate::crypt::EncryptTo;
use crate::error::{Error, Result};
use crate::output::PendingFile;
use crate::pg::{ConnSpec, PgTools, Session};
use crate::progress::{Cancel, Progress};
use crate::store::{self, FileCounts, Selection};
use full::{DumpJob, MetadataFacts, OutputSink};

/// Where the archive goes.
pub enum Output {
    /// Any stream (standard output, a socket): written front to back, never named.
    Writer(Box<dyn Write + Send>),
    /// A file, or a directory in which the file is named as the cloud names it.
    Path(PathBuf),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Writer(_) => f.write_str("Writer"),
            Output::Path(p) => write!(f, "Path({})", p.display()),
        }
    }
}

#[derive(Debug)]
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
    /// Seal the output with age to these recipients (or a passphrase).
    pub encrypt: Option<EncryptTo>,
}

impl CreateOptions {
    /// The defaults for `variant` written to `output`: the cloud's gzip, referenced files.
    pub fn new(variant: Variant, output: Output) -> CreateOptions {
        CreateOptions {
            database: None,
            files: None,
            output,
            variant,
            compression: Compression::Gzip,
            level: None,
            model_version: None,
            comment: None,
            all_files: false,
            strict_layout: false,
            pg_bin: None,
            force: false,
            keep_dump_as: None,
            encrypt: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    /// The file written, or `None` for a stream.
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
    /// Who can open the archive when it is encrypted: public keys, or "passphrase".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted_to: Option<Vec<String>>,
}

pub use crate::archive::manifest::UNKNOWN_MODEL_VERSION;

/// A create, validated and connected; nothing written yet.
pub struct Plan {
    opts: CreateOptions,
    level: i32,
    spec: Option<ConnSpec>,
    session: Option<Session>,
    tools: Option<PgTools>,
    /// The output file's final name; `None` for a stream.
    target: Option<PathBuf>,
}

impl Plan {
    /// The same create, written to `output` instead (an object-store upload started only
    /// once the create runs).
    pub fn with_output(mut self, output: Output) -> Plan {
        self.target = match &output {
            Output::Writer(_) => None,
            Output::Path(p) => Some(p.clone()),
        };
        self.opts.output = output;
        self
    }
}

/// What a create will do: the dry run.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    pub variant: Variant,
    pub compression: Compression,
    pub level: i32,
    /// The file that will be written (the cloud's name when given a directory; the
    /// `<8hex>-<stamp>` part is drawn again when it runs); `None` for a stream.
    pub output: Option<PathBuf>,
    pub database: Option<String>,
    pub files: Option<PathBuf>,
    /// "referenced" (system$filedocument, when the database has it), "all", or none.
    pub file_selection: Option<&'static str>,
    pub manifest: bool,
    /// Public keys (or "passphrase") the output is sealed to.
    pub encrypted_to: Option<Vec<String>>,
    pub steps: Vec<String>,
}

impl Plan {
    pub fn view(&self) -> PlanView {
        let o = &self.opts;
        let database = self.spec.as_ref().map(ConnSpec::describe);
        let file_selection =
            o.variant
                .has_files()
                .then_some(if self.session.is_some() && !o.all_files {
                    "referenced"
                } else {
                    "all"
                });
        let mut steps = Vec::new();
        if let Some(db) = &database {
            steps.push(format!(
                "open a repeatable-read snapshot of {db}{}",
                if o.variant.has_files() && file_selection == Some("referenced") {
                    " and read system$filedocument in it"
                } else {
                    ""
                }
            ));
        }
        if let Some(store) = &o.files {
            steps.push(format!(
                "scan {} for {} files",
                store.display(),
                if file_selection == Some("referenced") {
                    "the referenced"
                } else {
                    "all well-named"
                }
            ));
        }
        if o.variant.has_database() {
            steps.push("dump the database with pg_dump --snapshot (custom format)".to_string());
        }
        let shown = self
            .target
            .as_ref()
            .map_or("the stream".to_string(), |t| t.display().to_string());
        steps.push(match o.variant {
            Variant::Database => format!("write the dump to {shown}"),
            _ => format!(
                "stream the {} archive ({}, level {}) to {shown}{}",
                o.variant,
                o.compression,
                self.level,
                if o.strict_layout {
                    ", cloud members only"
                } else {
                    ", with a manifest"
                }
            ),
        });
        if let Some(to) = &o.encrypt {
            steps.push(format!(
                "seal it with age (encrypted to {})",
                to.describe().join(", ")
            ));
        }
        if self.target.is_some() {
            steps.push("sync it, then give it its final name (mode 0600)".to_string());
        }
        PlanView {
            variant: o.variant,
            compression: o.compression,
            level: self.level,
            output: self.target.clone(),
            database,
            files: o.files.clone(),
            file_selection,
            manifest: o.variant != Variant::Database && !o.strict_layout,
            encrypted_to: o.encrypt.as_ref().map(EncryptTo::describe),
            steps,
        }
    }

    /// The output file's final name; `None` for a stream.
    pub fn target(&self) -> Option<&Path> {
        self.target.as_deref()
    }
}

/// Validates the options, connects, checks pg_dump against the server and names the output.
pub fn plan(opts: CreateOptions) -> Result<Plan> {
    let variant = opts.variant;
    let level = opts.level.unwrap_or(opts.compression.default_level());
    opts.compression.check_level(level).map_err(Error::usage)?;
    if variant.has_files() {
        match &opts.files {
            None => {
                return Err(Error::usage(format!(
                    "the {variant} variant needs the file store: pass --files DIR"
                )));
            }
            Some(store) if !store.is_dir() => {
                return Err(Error::usage(format!(
                    "the file store {} is not a directory",
                    store.display()
                ))
                .with_hint("pass the app's uploaded-files directory (data/files) as --files"));
            }
            Some(_) => {}
        }
    }
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
    let tools = match (&session, variant.has_database()) {
        (Some(session), true) => {
            let tools = PgTools::find(opts.pg_bin.as_deref())?;
            tools.ensure_can_dump(session.server_version_num()?)?;
            Some(tools)
        }
        _ => None,
    };
    let target = match &opts.output {
        Output::Writer(_) => None,
        Output::Path(p) if p.is_dir() => {
            let (tag, stamp) = crate::archive::new_tag_and_stamp();
            let mut name = cloud_file_name(variant, opts.compression, &tag, &stamp);
            if opts.encrypt.is_some() {
                name.push_str(".age");
            }
            Some(p.join(name))
        }
        Output::Path(p) => Some(p.clone()),
    };
    for path in target.iter().chain(opts.keep_dump_as.iter()) {
        PendingFile::check_target(path, opts.force)?;
    }
    Ok(Plan {
        opts,
        level,
        spec,
        session,
        tools,
        target,
    })
}

/// Makes the archive. A failure or a cancel leaves no file under the final name.
pub fn execute(plan: Plan, progress: &dyn Progress, cancel: &Cancel) -> Result<CreateReport> {
    make(plan, progress, cancel).map_err(|e| cancel.explain(e))
}

fn make(plan: Plan, progress: &dyn Progress, cancel: &Cancel) -> Result<CreateReport> {
    let started = Instant::now();
    cancel.check()?;
    let Plan {
        opts,
        level,
        spec,
        session,
        tools,
        target,
    } = plan;
    let variant = opts.variant;
    let mut warnings = Vec::new();
    let mut warn = |w: String| {
        progress.warning(&w);
        warnings.push(w);
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
    let (mut selection, file_selection) = match (&opts.files, variant.has_files()) {
        (Some(store), true) => {
            progress.note(&format!("scanning the file store {}", store.display()));
            let referenced = match (&session, opts.all_files) {
                (Some(s), false) => store::select_referenced_by(s, store)?,
                _ => None,
            };
            let (sel, how) = match referenced {
                Some(sel) => (sel, "referenced"),
                None => {
                    if session.is_some() && !opts.all_files {
                        warn(
                            "the database has no system$filedocument table: packing every \
                             file of the store"
                                .to_string(),
                        );
                    }
                    (store::select_all(store)?, "all")
                }
            };
            for w in selection_warnings(&sel) {
                warn(w);
            }
            (Some(sel), Some(how))
        }
        _ => (None, None),
    };
    cancel.check()?;

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
        // Sealed, the file's own hash is taken below the encryption (OutputSink).
        hash_output: opts.encrypt.is_none(),
    };
    let dump_job = match (&tools, &spec) {
        (Some(tools), Some(spec)) => Some(DumpJob {
            tools,
            spec,
            snapshot: snapshot.as_deref(),
            // A database-only file is the dump itself, compressed by pg_dump; inside a
            // compressed tar it is left uncompressed (-Z0) so the outer codec does the work
            // once.
            inner_level: match (variant, opts.compression, &opts.keep_dump_as) {
                (Variant::Full, Compression::Gzip | Compression::Zstd, None) => Some(0),
                _ => None,
            },
            // pg_dump writes a database-only file straight into the pending output.
            direct_to: match (variant, &pending, &opts.encrypt) {
                (Variant::Database, Some(p), None) => Some(p.path()),
                _ => None,
            },
            target: target.as_deref(),
            spool_dir: &spool_dir,
            metadata: MetadataFacts {
                model_version: &model_version,
                database_size: database_size.unwrap_or(0),
                files_size: files_size.unwrap_or(0),
            },
            cancel,
        }),
        _ => None,
    };
    // The output, as one writer type for every case.
    let out: Box<dyn Write + Send> = match (&pending, opts.output) {
        (Some(p), _) => Box::new(p.writer()?),
        (None, Output::Writer(w)) => Box::new(io::BufWriter::with_capacity(
            crate::archive::codec::IO_BUFFER,
            w,
        )),
        (None, Output::Path(_)) => unreachable!("a path output is a pending file"),
    };
    let sink = OutputSink::new(out, opts.encrypt.as_ref())?;
    let needs = |what: &str| Error::environment(format!("internal: the create has no {what}"));

    let (dumped, written) = match variant {
        Variant::Database => {
            progress.stage("dumping the database", None);
            let job = dump_job.as_ref().ok_or_else(|| needs("dump job"))?;
            let dumped = job.run(progress)?;
            let written = match (&pending, job.direct_to) {
                // pg_dump wrote straight into the pending file.
                (Some(p), Some(_)) => {
                    drop(sink);
                    Written {
                        members: 1,
                        content_bytes: dumped.size,
                        output_bytes: dumped.size,
                        output_sha256: full::sha256_of_file(p.path(), cancel)?,
                    }
                }
                _ => {
                    let (written, sink) = full::copy_dump(&dumped, sink, progress, cancel)?;
                    sealed(written, sink)?
                }
            };
            (Some(dumped), written)
        }
        Variant::Files => {
            let sel = selection.as_mut().ok_or_else(|| needs("file selection"))?;
            let store = opts.files.as_deref().ok_or_else(|| needs("file store"))?;
            progress.stage_with_files("writing the archive", files_size, Some(sel.files.len()));
            let mut tar = TarWriter::new(sink, &tar_options, progress).map_err(full::writing)?;
            full::append_files(&mut tar, store, sel, progress, cancel)?;
            let (out, written) = tar.finish().map_err(full::writing)?;
            (None, sealed(written, out)?)
        }
        Variant::Full => {
            let job = dump_job.as_ref().ok_or_else(|| needs("dump job"))?;
            let sel = selection.as_mut().ok_or_else(|| needs("file selection"))?;
            let store = opts.files.as_deref().ok_or_else(|| needs("file store"))?;
            let (dumped, written, sink) =
                full::write_full(job, sel, store, sink, &tar_options, progress, cancel)?;
            (Some(dumped), sealed(written, sink)?)
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
    // The last moment a cancel is honoured: nothing has its final name yet.
    cancel.check()?;
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
        encrypted_to: opts.encrypt.as_ref().map(EncryptTo::describe),
    })
}

/// Ends the output; a sealed one's file is what was written, not the plaintext.
fn sealed(mut written: Written, sink: OutputSink) -> Result<Written> {
    if let Some((bytes, sha)) = sink.finish()? {
        written.output_bytes = bytes;
        written.output_sha256 = sha;
    }
    Ok(written)
}

fn selection_warnings(sel: &Selection) -> Vec<String> {
    let mut warnings = Vec::new();
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
    warnings
}
