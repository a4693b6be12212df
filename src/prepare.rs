//! `prepare-upload`: turn an on-premises app's data into what the cloud's upload accepts: a
//! full snapshot in the strict cloud layout and a database-only file, made from one dump, plus
//! a report of everything the cloud would object to.

use std::path::PathBuf;

use serde::Serialize;

use crate::archive::dump_header;
use crate::archive::{Compression, Variant, cloud_file_name};
use crate::create::{self, CreateOptions, Output};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::{ConnSpec, PgTools};
use crate::progress::{Cancel, Progress};
use crate::store::FileCounts;
use crate::target::{self, Target};

/// The cloud grows slow beyond this many files.
pub const CLOUD_FILE_WARNING: u64 = 50_000;

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// URL or key=value connection string; `None` uses libpq's environment.
    pub database: Option<String>,
    pub files: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub output_dir: PathBuf,
    pub pg_bin: Option<PathBuf>,
    pub allow_running: bool,
    pub model_version: Option<String>,
    /// Also write the uploaded files on their own, in the form the older upload page takes.
    pub files_as: Option<FilesFormat>,
}

/// The forms the cloud's upload takes uploaded files in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilesFormat {
    Zip,
    #[serde(rename = "tar.gz")]
    TarGz,
}

impl std::str::FromStr for FilesFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "zip" => Ok(FilesFormat::Zip),
            "tar.gz" | "tgz" => Ok(FilesFormat::TarGz),
            other => Err(format!("{other:?} is not zip or tar.gz")),
        }
    }
}

impl PrepareOptions {
    /// The app's database, file store and pid file as its m2ee-tools `m2ee.yaml` gives them;
    /// the caller sets the rest (and may override the pid file).
    pub fn from_m2ee(m2ee: &std::path::Path, output_dir: PathBuf) -> Result<PrepareOptions> {
        let config = crate::target::m2ee::load(m2ee)?;
        Ok(PrepareOptions {
            database: Some(config.conninfo()),
            files: config.files.clone(),
            pid_file: config.pid_file.clone(),
            output_dir,
            pg_bin: None,
            allow_running: false,
            model_version: None,
            files_as: None,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    pub full_snapshot: PathBuf,
    pub full_snapshot_bytes: u64,
    pub database_file: PathBuf,
    pub database_file_bytes: u64,
    /// The uploaded files on their own (`--files-as`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_archive: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_archive_bytes: Option<u64>,
    pub dump_archive_version: String,
    pub files_bytes: u64,
    pub files: FileCounts,
    pub checks: Vec<String>,
    pub warnings: Vec<String>,
}

/// The checks passed and the two files named; nothing written yet.
pub struct Plan {
    create: create::Plan,
    output_dir: PathBuf,
    full: PathBuf,
    database_file: PathBuf,
    files_archive: Option<(PathBuf, FilesFormat)>,
    checks: Vec<String>,
    warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    pub full_snapshot: PathBuf,
    pub database_file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_archive: Option<PathBuf>,
    pub checks: Vec<String>,
    pub warnings: Vec<String>,
    pub create: create::PlanView,
}

impl Plan {
    pub fn view(&self) -> PlanView {
        PlanView {
            full_snapshot: self.full.clone(),
            database_file: self.database_file.clone(),
            files_archive: self.files_archive.as_ref().map(|(p, _)| p.clone()),
            checks: self.checks.clone(),
            warnings: self.warnings.clone(),
            create: self.create.view(),
        }
    }
}

/// Checks the client, that the app is stopped, and names the files; changes nothing.
pub fn plan(opts: PrepareOptions) -> Result<Plan> {
    let spec = ConnSpec::resolve(opts.database.as_deref())?;
    let mut checks = Vec::new();
    let mut warnings = Vec::new();

    // The cloud rejects dumps newer than archive 1.15 (pg_dump 16): refuse before working.
    let tools = PgTools::find(opts.pg_bin.as_deref())?;
    let client = tools.pg_dump_major()?;
    if client > 16 {
        return Err(Error::environment(format!(
            "{} is pg_dump {client}, which writes dump archives newer than 1.15; the cloud \
             rejects them",
            tools.pg_dump.display()
        ))
        .with_hint(
            "pass --pg-bin with the bin directory of a PostgreSQL 16 or older client (the \
             server must be no newer than that client)",
        ));
    }
    checks.push(format!(
        "pg_dump {client} writes dump archives the cloud accepts"
    ));

    // A running app gives a database and files from different moments.
    let admin = target::admin_session(&spec)?;
    let target = Target {
        database: spec.clone(),
        files: opts.files.clone(),
        pid_file: opts.pid_file.clone(),
    };
    match target.check_stopped(&admin) {
        Ok(passed) => checks.extend(passed),
        Err(e) if e.kind() == ErrorKind::NotAllowed && opts.allow_running => {
            warnings.push(format!(
                "{}; continuing (--allow-running): the database comes from one consistent \
             snapshot, but files changed meanwhile may not match it",
                e.message()
            ))
        }
        Err(e) => {
            return Err(e.with_hint(
                "stop the app first: a running app gives an inconsistent pair of database and \
                 files (or pass --allow-running to accept that)",
            ));
        }
    }
    drop(admin);

    let (tag, stamp) = crate::archive::new_tag_and_stamp();
    let full = opts.output_dir.join(cloud_file_name(
        Variant::Full,
        Compression::Gzip,
        &tag,
        &stamp,
    ));
    let database_file = opts.output_dir.join(cloud_file_name(
        Variant::Database,
        Compression::Gzip,
        &tag,
        &stamp,
    ));
    let files_archive = opts.files_as.map(|format| {
        let ext = match format {
            FilesFormat::Zip => "zip",
            FilesFormat::TarGz => "tar.gz",
        };
        (
            opts.output_dir.join(format!("files-{tag}-{stamp}.{ext}")),
            format,
        )
    });
    if let Some((path, _)) = &files_archive {
        crate::output::PendingFile::check_target(path, false)?;
    }
    let create = create::plan(CreateOptions {
        database: opts.database.clone(),
        files: Some(opts.files.clone()),
        model_version: opts.model_version.clone(),
        strict_layout: true,
        pg_bin: opts.pg_bin.clone(),
        keep_dump_as: Some(database_file.clone()),
        ..CreateOptions::new(Variant::Full, Output::Path(full.clone()))
    })?;
    Ok(Plan {
        create,
        output_dir: opts.output_dir,
        full,
        database_file,
        files_archive,
        checks,
        warnings,
    })
}

/// Makes both files from one dump and checks what was written.
pub fn execute(plan: Plan, progress: &dyn Progress, cancel: &Cancel) -> Result<PrepareReport> {
    let Plan {
        create,
        output_dir,
        full,
        database_file,
        files_archive,
        mut checks,
        mut warnings,
    } = plan;
    std::fs::create_dir_all(&output_dir)
        .map_err(|e| Error::io(format!("creating {}", output_dir.display()), e))?;
    let created = create::execute(create, progress, cancel)?;
    warnings.extend(created.warnings.iter().cloned());

    // The authoritative check: the header of what was written.
    let mut head = vec![0u8; 4096];
    let n = {
        let mut f = std::fs::File::open(&database_file)
            .map_err(|e| Error::io(format!("reading {}", database_file.display()), e))?;
        crate::archive::codec::read_full(&mut f, &mut head)
            .map_err(|e| Error::io(format!("reading {}", database_file.display()), e))?
    };
    let header = dump_header::parse(&head[..n])?;
    if let Err(e) = header.check_cloud_accepts() {
        let _ = std::fs::remove_file(&full);
        let _ = std::fs::remove_file(&database_file);
        return Err(e);
    }
    checks.push(format!(
        "dump archive version {} is at most 1.15",
        header.archive_version
    ));

    let counts = created.files.clone().unwrap_or_default();
    if counts.legacy_layout > 0 {
        warnings.push(format!(
            "{} file(s) are stored in the legacy numeric layout (<nn>/<number>); they travel \
             as tree/<nn>/<number>",
            counts.legacy_layout
        ));
    }
    if counts.included > CLOUD_FILE_WARNING {
        warnings.push(format!(
            "{} files: with more than {CLOUD_FILE_WARNING} files every operation in the cloud \
             (backup, restore, upload) becomes slow",
            counts.included
        ));
    }
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if let Some((path, format)) = &files_archive {
        progress.stage("writing the uploaded files on their own", Some(size(&full)));
        if let Err(e) = write_files_archive(&full, path, *format, progress, cancel) {
            let _ = std::fs::remove_file(&full);
            let _ = std::fs::remove_file(&database_file);
            return Err(cancel.explain(e));
        }
        checks.push(format!(
            "{} holds the same files as the full snapshot",
            path.display()
        ));
    }
    Ok(PrepareReport {
        full_snapshot_bytes: size(&full),
        database_file_bytes: size(&database_file),
        files_archive_bytes: files_archive.as_ref().map(|(p, _)| size(p)),
        files_archive: files_archive.map(|(p, _)| p),
        full_snapshot: full,
        database_file,
        dump_archive_version: header.archive_version,
        files_bytes: created.files_size.unwrap_or(0),
        files: counts,
        checks,
        warnings,
    })
}

/// Copies the `tree/` of the full snapshot just written into a zip or a files-only tar.gz, so
/// both hold exactly the same files (read back through every check of a restore).
fn write_files_archive(
    full: &std::path::Path,
    target: &std::path::Path,
    format: FilesFormat,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<()> {
    use crate::archive::layout::Member;
    use crate::archive::reader::{Visitor, walk_tar};
    use crate::archive::writer::{MemberInfo, TarOptions, TarWriter, now_secs};
    use crate::archive::zipped::ZipFilesWriter;
    use std::io::{Read, Write};

    // One of each per run: the size difference does not matter.
    #[allow(clippy::large_enum_variant)]
    enum Sink<'p> {
        Zip(ZipFilesWriter<std::fs::File>),
        Tar(TarWriter<'p, std::io::BufWriter<crate::output::WriteBehind>>),
    }
    struct Copy<'p> {
        sink: Option<Sink<'p>>,
        mtime: u64,
    }
    impl Visitor for Copy<'_> {
        fn content(&mut self, member: &Member, size: u64, data: &mut dyn Read) -> Result<()> {
            let Member::TreeFile(rel) = member else {
                return Ok(());
            };
            let written = match self.sink.as_mut().expect("a sink until the end") {
                Sink::Zip(z) => z.add(rel, size, data),
                Sink::Tar(t) => t.append(
                    &MemberInfo {
                        path: &member.path(),
                        size,
                        mode: 0o644,
                        mtime: self.mtime,
                    },
                    data,
                ),
            };
            written.map_err(|e| {
                if crate::progress::is_cancelled_io(&e) {
                    Error::cancelled()
                } else {
                    Error::io(format!("writing {rel} into the files archive"), e)
                }
            })
        }
        fn finished(&mut self, _m: &Member, _size: u64, _sha: &str) -> Result<()> {
            Ok(())
        }
    }

    let pending = crate::output::PendingFile::create(target, false)?;
    let sink = match format {
        FilesFormat::Zip => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(pending.path())
                .map_err(|e| Error::io(format!("opening {}", pending.path().display()), e))?;
            Sink::Zip(ZipFilesWriter::new(file))
        }
        FilesFormat::TarGz => {
            let options = TarOptions {
                compression: Compression::Gzip,
                level: Compression::Gzip.default_level(),
                variant: Variant::Files,
                manifest: false,
                comment: None,
                hash_output: false,
            };
            Sink::Tar(
                TarWriter::new(pending.writer()?, &options, progress)
                    .map_err(|e| Error::io("starting the files archive", e))?,
            )
        }
    };
    let mut copy = Copy {
        sink: Some(sink),
        mtime: now_secs(),
    };
    let file = std::fs::File::open(full)
        .map_err(|e| Error::io(format!("reading {}", full.display()), e))?;
    let opened = crate::archive::detect::open(Box::new(cancel.reader(file)))?;
    let mut content = opened.content;
    walk_tar(&mut content, &mut copy)?;
    let written = match copy.sink.take().expect("the sink") {
        Sink::Zip(z) => z.finish().map(drop),
        Sink::Tar(t) => t.finish().and_then(|(mut w, _)| w.flush()),
    };
    written.map_err(|e| Error::io(format!("writing {}", target.display()), e))?;
    cancel.check()?;
    pending.commit()?;
    Ok(())
}
