//! `restore`: replace a stopped environment's database and files with a snapshot's, atomically.
//!
//! Plan, then execute. The plan takes the environment's lock, finishes or undoes any restore
//! a crash interrupted, and refuses a running target. Execution stages everything beside the
//! target (a staging database on the same server, a staging directory on the same
//! filesystem), checks it all, and only then swaps (see `env`). Until the swap the target is
//! untouched; a failure drops the staging copies.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::archive::Variant;
use crate::archive::detect::Container;
use crate::check::{self, Report, Sinks};
use crate::env::{self, EnvLock, EnvState, Journal, Phase, Swapped, Target};
use crate::error::{Error, Result};
use crate::files;
use crate::pg::{PgTools, Session};
use crate::progress::Progress;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub target: Target,
    /// Restore only this part of a full snapshot; `None` restores whatever the archive holds.
    pub variant: Option<Variant>,
    pub jobs: usize,
    pub keep_previous: bool,
    /// The target's model version, for the older-model warning.
    pub model_version: Option<String>,
    pub pg_bin: Option<PathBuf>,
}

/// What a restore will do, made before anything changes; the dry run prints it.
pub struct Plan {
    opts: RestoreOptions,
    _lock: EnvLock,
    admin: Session,
    tools: PgTools,
    pub checks: Vec<String>,
    /// What was done about an earlier, interrupted restore.
    pub recovered: Option<String>,
    pub target_db_exists: bool,
    pub target_files_exist: bool,
    pub staging_db: String,
    pub old_db: String,
    pub work_dir: PathBuf,
    pub old_files: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    pub database: String,
    pub files: PathBuf,
    pub database_exists: bool,
    pub files_exist: bool,
    pub checks: Vec<String>,
    pub recovered: Option<String>,
    pub steps: Vec<String>,
}

impl Plan {
    /// True when the restore would replace existing data (worth a confirmation).
    pub fn replaces_data(&self) -> bool {
        self.target_db_exists || self.target_files_exist
    }

    pub fn view(&self) -> PlanView {
        let t = &self.opts.target;
        let db = t.database.dbname();
        let keep = self.opts.keep_previous;
        let with_db = self.opts.variant != Some(Variant::Files);
        let with_files = self.opts.variant != Some(Variant::Database);
        let mut steps = vec![format!(
            "read and check the whole archive, extracting into {}",
            self.work_dir.display()
        )];
        if with_db {
            steps.push(format!(
                "create staging database {} and pg_restore into it (--no-owner \
                 --no-privileges --exit-on-error, {} job(s))",
                self.staging_db, self.opts.jobs
            ));
            steps.push(if self.target_db_exists {
                format!(
                    "swap: rename database {db} to {} and {} to {db} (one transaction)",
                    self.old_db, self.staging_db
                )
            } else {
                format!("create database {db} by renaming {}", self.staging_db)
            });
        }
        if with_files {
            steps.push(if self.target_files_exist {
                format!(
                    "swap: exchange {} with the staged files (one atomic rename)",
                    t.files.display()
                )
            } else {
                format!("create {} by renaming the staged files", t.files.display())
            });
        }
        if keep {
            steps.push(format!(
                "keep the previous database as {} and files as {}",
                self.old_db,
                self.old_files.display()
            ));
        } else if self.replaces_data() {
            steps.push("drop the previous database and remove the previous files".to_string());
        }
        steps.push(
            "the part of the environment the archive does not hold stays untouched".to_string(),
        );
        PlanView {
            database: t.database.describe(),
            files: t.files.clone(),
            database_exists: self.target_db_exists,
            files_exist: self.target_files_exist,
            checks: self.checks.clone(),
            recovered: self.recovered.clone(),
            steps,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub variant: Variant,
    pub database: Option<String>,
    pub files: Option<PathBuf>,
    pub tree_files: u64,
    pub tree_bytes: u64,
    pub dump_size: Option<u64>,
    pub model_version: Option<String>,
    pub swapped: Swapped,
    pub checks: Vec<String>,
    pub recovered: Option<String>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%d%H%M%S").to_string()
}

/// PostgreSQL truncates identifiers to 63 bytes; keep ours whole and unambiguous.
fn db_name(base: &str, suffix: &str) -> String {
    let room = 63 - suffix.len();
    let mut cut = base.len().min(room);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &base[..cut])
}

/// Checks the environment and decides names; changes nothing but finishing an interrupted
/// restore.
pub fn plan(mut opts: RestoreOptions) -> Result<Plan> {
    opts.target.files = follow_store_link(&opts.target.files)?;
    let target = &opts.target;
    let tools = PgTools::find(opts.pg_bin.as_deref())?;
    let lock = target.lock()?;
    let admin = env::admin_session(&target.database)?;
    let server = admin.server_version_num()?;
    if server < 130000 {
        return Err(Error::environment(format!(
            "restoring needs PostgreSQL 13 or newer (DROP DATABASE ... WITH (FORCE)); the \
             server is {}",
            server / 10000
        )));
    }
    let recovered = env::recover(target, &admin)?;
    let checks = target.check_stopped(&admin)?;
    let db = target.database.dbname();
    let target_db_exists = admin.database_oid(db)?.is_some();
    let target_files_exist = std::fs::read_dir(&target.files).is_ok_and(|mut d| d.next().is_some());
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let ts = stamp();
    let name = target
        .files
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "files".into());
    Ok(Plan {
        staging_db: format!("mxsnap_staging_{id}"),
        old_db: db_name(db, &format!("_previous_{ts}")),
        work_dir: target.side_path(&format!("work-{id}")),
        old_files: target.parent().join(format!("{name}.previous-{ts}")),
        _lock: lock,
        admin,
        tools,
        checks,
        recovered,
        target_db_exists,
        target_files_exist,
        opts,
    })
}

/// A store given as a symbolic link (often to a bigger disk) is restored where the link
/// points: staging next to the real directory keeps the swap a rename on one filesystem, puts
/// the free-space check on the right disk, and leaves the link itself in place.
fn follow_store_link(files: &std::path::Path) -> Result<std::path::PathBuf> {
    match std::fs::symlink_metadata(files) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(files).map_err(|e| {
            Error::io(
                format!("following the file store link {}", files.display()),
                e,
            )
            .with_hint("point the link at an existing directory, or pass that directory")
        }),
        _ => Ok(files.to_path_buf()),
    }
}

/// Runs the plan with the archive read from `input`.
pub fn execute(
    plan: Plan,
    input: crate::archive::Input<'_>,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = std::time::Instant::now();
    let target = plan.opts.target.clone();
    let journal_path = target.journal_path();
    let want = plan.opts.variant;
    let mut journal = Journal {
        phase: Phase::Staging,
        target_db: target.database.dbname().to_string(),
        staging_db: None,
        staging_db_oid: None,
        old_db: plan.old_db.clone(),
        files: target.files.clone(),
        work_dir: plan.work_dir.clone(),
        swap_files: false,
        staging_files_ino: None,
        old_files: plan.old_files.clone(),
        keep_previous: plan.opts.keep_previous,
        model_version: None,
    };
    journal.save(&journal_path)?;

    let staged = stage(&plan, &mut journal, input, want, progress);
    let (report, mut warnings) = match staged {
        Ok(v) => v,
        Err(e) => {
            return Err(match env::roll_back(&journal, &plan.admin, &journal_path) {
                Ok(()) => e,
                Err(undo) => e.context(format!(
                    "(and removing the staging copies failed too: {undo})"
                )),
            });
        }
    };
    env::crash_point("prepared");
    progress.stage("swapping in the restored data", None);
    let swapped = env::complete_swap(&journal, &plan.admin, &journal_path)?;

    let archive_model = report
        .metadata
        .as_ref()
        .map(|m| m.model_version.clone())
        .filter(|v| v != crate::create::UNKNOWN_MODEL_VERSION);
    let mut state = EnvState::load(&target);
    let known = plan
        .opts
        .model_version
        .clone()
        .or(state.model_version.clone());
    if let (Some(archive), Some(current)) = (&archive_model, &known) {
        if env::compare_versions(archive, current) == Some(std::cmp::Ordering::Less) {
            warnings.push(format!(
                "the snapshot was made on model version {archive}, older than the \
                 environment's {current}: deploy model {archive} before starting the app"
            ));
        }
    }
    if archive_model.is_some() {
        state.model_version = archive_model.clone();
        state.save(&target)?;
    }
    let mut checks = plan.checks.clone();
    checks.extend(report.checks.iter().cloned());
    Ok(RestoreReport {
        variant: report.variant,
        database: swapped
            .database_replaced
            .then(|| target.database.describe()),
        files: swapped.files_replaced.then(|| target.files.clone()),
        tree_files: report.tree_files,
        tree_bytes: report.tree_bytes,
        dump_size: report.dump_size,
        model_version: archive_model,
        swapped,
        checks,
        recovered: plan.recovered.clone(),
        warnings,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Everything before the swap: extract and check, restore into staging, record the journal
/// as prepared. On error the caller rolls back.
fn stage(
    plan: &Plan,
    journal: &mut Journal,
    input: crate::archive::Input<'_>,
    want: Option<Variant>,
    progress: &dyn Progress,
) -> Result<(Report, Vec<String>)> {
    let target = &plan.opts.target;
    let journal_path = target.journal_path();
    let work = &plan.work_dir;
    let staging_files = journal.staging_files();
    std::fs::create_dir_all(&staging_files)
        .map_err(|e| Error::io(format!("creating {}", staging_files.display()), e))?;
    let spool_path = work.join("db.backup");
    let spool = std::fs::File::create(&spool_path)
        .map_err(|e| Error::io(format!("creating {}", spool_path.display()), e))?;
    let maybe_db = want != Some(Variant::Files);
    if maybe_db {
        // Named before it exists, so a crash from here on drops it on the next run.
        journal.staging_db = Some(plan.staging_db.clone());
        journal.save(&journal_path)?;
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let tree_begun = std::sync::Arc::new(AtomicBool::new(false));
    let database_loading = AtomicBool::new(false);
    let mut sinks = Sinks {
        dump_to: maybe_db.then_some(spool),
        tree_to: (want != Some(Variant::Database)).then(|| staging_files.clone()),
        space_on: Some(work.clone()),
        extracted_files: 0,
        extracted_bytes: 0,
        wanted: want,
        dump_ready: maybe_db.then_some(ready_tx),
        tree_begun: Some(tree_begun.clone()),
    };
    let abort = AtomicBool::new(false);
    progress.stage("reading and checking the archive", None);
    // The database half starts as soon as the dump is spooled and runs while the files are
    // extracted and checked; both must succeed before anything is swapped.
    let (spool_ref, abort_ref, loading) = (&spool_path, &abort, &database_loading);
    let (extracted, restored) = std::thread::scope(|scope| {
        let db_half = scope.spawn(move || -> Result<bool> {
            if ready_rx.recv().is_err() {
                return Ok(false);
            }
            loading.store(true, Ordering::Relaxed);
            let restored = restore_staging_db(plan, spool_ref, abort_ref);
            // Gone before the writeback below resumes: its pages need never reach the disk.
            let _ = std::fs::remove_file(spool_ref);
            loading.store(false, Ordering::Relaxed);
            restored?;
            Ok(true)
        });
        // The disk idles while files are extracted into the page cache, and the sync before
        // the swap would then write them all at once: write them back as they come instead.
        // Not while PostgreSQL loads the dump: its WAL flushes would queue behind our writes
        // (a full restore measured 0.6 s slower), nor while the dump is being spooled.
        let (stop_flushing, flush_until_told) = std::sync::mpsc::channel::<()>();
        let flusher = (want != Some(Variant::Database)).then(|| {
            let (dir, begun) = (&staging_files, &tree_begun);
            scope.spawn(move || {
                let pause = std::time::Duration::from_millis(250);
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    flush_until_told.recv_timeout(pause)
                {
                    if begun.load(Ordering::Relaxed) && !loading.load(Ordering::Relaxed) {
                        let _ = sync_tree(dir);
                    }
                }
            })
        });
        let extracted = check::extract(input, &mut sinks, progress);
        drop(stop_flushing);
        if let Some(f) = flusher {
            let _ = f.join();
        }
        drop(sinks.dump_ready.take());
        drop(sinks.dump_to.take());
        if extracted.is_err() {
            // Stop pg_restore early: dropping the staging database ends its connections.
            abort.store(true, Ordering::SeqCst);
            let _ = plan.admin.execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                crate::pg::query::quote_ident(&plan.staging_db)
            ));
        }
        let restored = db_half
            .join()
            .unwrap_or_else(|_| Err(Error::environment("the database restore thread panicked")));
        (extracted, restored)
    });
    let report = extracted?;
    let actual = report.variant;
    // Settled only now for a tar whose first entry was a directory.
    if let Some(wanted) = want {
        if !actual.holds(wanted) {
            return Err(actual.wrong_variant(wanted));
        }
    }
    let restore_db = actual.has_database() && want != Some(Variant::Files);
    let restore_files = actual.has_files() && want != Some(Variant::Database);
    if restore_files && sinks.extracted_files != report.tree_files {
        return Err(Error::corrupt(format!(
            "extracted {} files but the archive holds {}",
            sinks.extracted_files, report.tree_files
        )));
    }
    let mut warnings = report.warnings.clone();
    if report.container == Container::Tar && restore_db && report.dump_size.is_none() {
        return Err(Error::corrupt("the archive holds no database dump"));
    }
    let restored = restored?;
    if restore_db != restored {
        return Err(Error::environment(
            "the database half of the restore did not run as the archive required",
        ));
    }

    if restore_db {
        journal.staging_db_oid = plan.admin.database_oid(&plan.staging_db)?;
        if journal.staging_db_oid.is_none() {
            return Err(Error::environment(
                "the staging database vanished during the restore",
            ));
        }
        if actual == Variant::Database || !restore_files {
            // The restored database may reference files this environment's store lacks.
            let staging_spec = target.database.with_dbname(&plan.staging_db);
            let staging = Session::connect(&staging_spec)?;
            if let Some(docs) = staging.file_documents()? {
                if target.files.is_dir() {
                    let sel = files::select_referenced(&target.files, &docs)?;
                    if sel.counts.missing > 0 {
                        warnings.push(format!(
                            "database-only restore: the restored database references {} \
                             file(s) that {} lacks (e.g. {})",
                            sel.counts.missing,
                            target.files.display(),
                            sel.missing_examples.join(", ")
                        ));
                    }
                } else {
                    warnings.push(format!(
                        "database-only restore: the restored database references files, and \
                         {} does not exist",
                        target.files.display()
                    ));
                }
            }
        }
    } else if maybe_db {
        // Nothing was restored into it; the name need not be dropped at cleanup.
        journal.staging_db = None;
    }
    let _ = std::fs::remove_file(&spool_path);
    journal.swap_files = restore_files;
    if restore_files {
        let meta = std::fs::metadata(&staging_files)
            .map_err(|e| Error::io(format!("reading {}", staging_files.display()), e))?;
        journal.staging_files_ino = Some(std::os::unix::fs::MetadataExt::ino(&meta));
        // The extracted files must be on disk before the swap makes them the target.
        sync_tree(&staging_files)?;
    }
    journal.phase = Phase::Prepared;
    journal.save(&journal_path)?;
    Ok((report, warnings))
}

/// Creates the staging database (like the target: encoding and locale) and pg_restores the
/// spooled dump into it. Runs on its own thread, with its own admin connection, while the main
/// thread extracts the files. `abort` stops it between steps.
fn restore_staging_db(plan: &Plan, spool_path: &std::path::Path, abort: &AtomicBool) -> Result<()> {
    let target = &plan.opts.target;
    let admin = env::admin_session(&target.database)?;
    if abort.load(Ordering::SeqCst) {
        return Err(Error::environment("restore aborted"));
    }
    let db = target.database.dbname();
    let like = if plan.target_db_exists {
        admin.database_locale(db)?
    } else {
        None
    };
    let quoted = crate::pg::query::quote_ident(&plan.staging_db);
    let mut sql = format!("CREATE DATABASE {quoted} TEMPLATE template0");
    if let Some((encoding, collate, ctype)) = like {
        sql.push_str(&format!(
            " ENCODING '{encoding}' LC_COLLATE '{}' LC_CTYPE '{}'",
            collate.replace('\'', "''"),
            ctype.replace('\'', "''")
        ));
    }
    admin.execute(&sql)?;
    // Say what it is, for whoever finds it: a crash before the swap may leave it behind until
    // the next mxsnap run on the environment drops it.
    let note = format!(
        "mxsnap staging copy for database {db} (files {}); the next mxsnap run on that \
         environment removes it",
        target.files.display()
    );
    admin.execute(&format!(
        "COMMENT ON DATABASE {quoted} IS '{}'",
        note.replace('\'', "''")
    ))?;
    if abort.load(Ordering::SeqCst) {
        return Err(Error::environment("restore aborted"));
    }
    let staging_spec = target.database.with_dbname(&plan.staging_db);
    plan.tools
        .restore_into(&staging_spec, spool_path, plan.opts.jobs.max(1))
}

/// Makes everything written below `root` durable. One `syncfs` of the filesystem costs far
/// less than an `fsync` per file when a store holds tens of thousands of them.
fn sync_tree(root: &std::path::Path) -> Result<()> {
    let dir = std::fs::File::open(root)
        .map_err(|e| Error::io(format!("syncing {}", root.display()), e))?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(Error::io(
            format!("syncing {}", root.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
