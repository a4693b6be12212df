//! Everything a restore does before the swap: read and check the archive, extracting the
//! files into the staging directory and spooling the dump; restore the dump into a staging
//! database meanwhile; make it all durable and record the journal as prepared.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};

use super::EnvPlan;
use super::journal::{Journal, Phase};
use super::tree_writer::TreeWriter;
use crate::archive::Variant;
use crate::archive::detect::Container;
use crate::archive::manifest::Metadata;
use crate::error::{Error, Result};
use crate::inspect::{self, Extraction, Report};
use crate::pg::Session;
use crate::progress::{Cancel, Progress};
use crate::{store, sys, target};
use serde::Serialize;

/// The restore's options that staging needs.
pub(super) struct Settings {
    pub variant: Option<Variant>,
    pub jobs: usize,
    pub keep_previous: bool,
    pub order: RestoreOrder,
    pub clear_rest: bool,
    /// No writeback while extracting and no sync before the swap.
    pub no_sync: bool,
}

/// When the database and the files are restored, relative to each other. Overlapped, each
/// half waits less for the disk; back to back, neither competes with the other for the cores.
/// On two cores overlap won every round of benches/restore_order.sh (median 22.5 s against
/// 27.0 s files first and 30.4 s database first), so it is the default; the others stay for
/// machines where that measures otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreOrder {
    /// pg_restore starts once the dump is spooled and runs while the files are extracted.
    #[default]
    Overlap,
    /// The files wait until the database is restored.
    DatabaseFirst,
    /// The database is restored once every file is extracted.
    FilesFirst,
}

impl std::str::FromStr for RestoreOrder {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "overlap" => Ok(RestoreOrder::Overlap),
            "database-first" => Ok(RestoreOrder::DatabaseFirst),
            "files-first" => Ok(RestoreOrder::FilesFirst),
            other => Err(format!(
                "unknown order '{other}' (expected overlap, database-first or files-first)"
            )),
        }
    }
}

/// Where the archive's parts go: the dump into a spool for pg_restore, the files below the
/// staging directory (written on a thread of their own).
struct Staging<'p> {
    wanted: Option<Variant>,
    /// The filesystem whose free space `.metadata`'s figures are checked against.
    space_on: PathBuf,
    dump_to: Option<File>,
    /// Told once the dump is whole in its spool (the archive's second member), so pg_restore
    /// can start while the files are still being extracted.
    dump_ready: Option<Sender<()>>,
    tree_to: Option<PathBuf>,
    /// Set when the first tree file is created, for whoever writes the files back meanwhile.
    tree_begun: Arc<AtomicBool>,
    tree_writer: Option<TreeWriter>,
    extracted_files: u64,
    /// With the database first: ends (its sender dropped) when pg_restore is done, and the
    /// extraction waits for it once the dump is spooled.
    database_done: Option<Receiver<()>>,
    progress: &'p dyn Progress,
}

impl Extraction for Staging<'_> {
    fn variant_known(&mut self, found: Variant) -> Result<()> {
        match self.wanted {
            Some(wanted) if !found.holds(wanted) => Err(found.wrong_variant(wanted)),
            _ => Ok(()),
        }
    }

    /// Refuses early when the staging area's filesystem cannot hold what the archive says is
    /// coming.
    fn metadata(&mut self, m: &Metadata) -> Result<()> {
        let mut needed = 0u64;
        if self.tree_to.is_some() {
            needed += Metadata::size(&m.files_size).unwrap_or(0);
        }
        if self.dump_to.is_some() {
            needed += Metadata::size(&m.dump_size).unwrap_or(0);
        }
        match sys::free_space(&self.space_on) {
            Some(free) if needed > free => Err(Error::environment(format!(
                "not enough space: the archive needs {needed} bytes in {} but only {free} are \
                 free",
                self.space_on.display()
            ))
            .with_hint("free some space there (or restore elsewhere); nothing was changed")),
            _ => Ok(()),
        }
    }

    fn wants_dump(&self) -> bool {
        self.dump_to.is_some()
    }

    fn dump(&mut self, data: &mut dyn Read) -> Result<()> {
        let Some(spool) = self.dump_to.as_mut() else {
            return Ok(());
        };
        inspect::copy_into(data, spool, "the dump spool")?;
        spool
            .flush()
            .map_err(|e| Error::io("writing the dump spool", e))?;
        if let Some(tx) = self.dump_ready.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.database_done.take() {
            self.progress.stage("restoring the database", None);
            let _ = done.recv();
            self.progress
                .stage("reading and checking the archive", None);
        }
        Ok(())
    }

    fn tree_file(&mut self, rel: &str, data: &mut dyn Read) -> Result<()> {
        let Some(root) = &self.tree_to else {
            return Ok(());
        };
        // `rel` passed layout::classify: two or three plain components, no "..", no "/".
        let path = root.join(rel);
        if self.extracted_files == 0 {
            self.tree_begun.store(true, Ordering::Relaxed);
        }
        self.tree_writer
            .get_or_insert_with(TreeWriter::new)
            .write_file(path, data)?;
        self.extracted_files += 1;
        self.progress.file_done();
        if self.extracted_files == 10 {
            sys::crash_point("extract");
        }
        Ok(())
    }

    /// Every file is written and closed before the extraction counts as done.
    fn finish(&mut self) -> Result<()> {
        match self.tree_writer.take() {
            Some(writer) => writer.finish(),
            None => Ok(()),
        }
    }
}

/// Extracts and checks, restores into staging, records the journal as prepared. On error the
/// caller rolls back.
pub(super) fn stage(
    plan: &EnvPlan,
    settings: &Settings,
    journal: &mut Journal,
    input: crate::archive::Content<'_>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<(Report, Vec<String>)> {
    let target = &plan.target;
    let want = settings.variant;
    let journal_path = target.journal_path();
    let work = &plan.work_dir;
    let staging_files = journal.staging_files();
    std::fs::create_dir_all(&staging_files)
        .map_err(|e| Error::io(format!("creating {}", staging_files.display()), e))?;
    let spool_path = work.join("db.backup");
    let spool = File::create(&spool_path)
        .map_err(|e| Error::io(format!("creating {}", spool_path.display()), e))?;
    let maybe_db = want != Some(Variant::Files);
    if maybe_db {
        // Named before it exists, so a crash from here on drops it on the next run.
        journal.staging_db = Some(plan.staging_db.clone());
        journal.save(&journal_path)?;
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let order = settings.order;
    // Dropped when its half is done: the other half waits on it when the order says so.
    let (database_done_tx, database_done_rx) = std::sync::mpsc::channel::<()>();
    let (files_done_tx, files_done_rx) = std::sync::mpsc::channel::<()>();
    let tree_begun = Arc::new(AtomicBool::new(false));
    let database_loading = AtomicBool::new(false);
    let mut staging = Staging {
        wanted: want,
        space_on: work.clone(),
        dump_to: maybe_db.then_some(spool),
        dump_ready: maybe_db.then_some(ready_tx),
        tree_to: (want != Some(Variant::Database)).then(|| staging_files.clone()),
        tree_begun: tree_begun.clone(),
        tree_writer: None,
        extracted_files: 0,
        database_done: (order == RestoreOrder::DatabaseFirst).then_some(database_done_rx),
        progress,
    };
    let abort = AtomicBool::new(false);
    progress.stage("reading and checking the archive", None);
    // The database half starts as soon as the dump is spooled and runs while the files are
    // extracted and checked; both must succeed before anything is swapped.
    let (spool_ref, abort_ref, loading) = (&spool_path, &abort, &database_loading);
    let (extracted, restored) = std::thread::scope(|scope| {
        let db_half = scope.spawn(move || -> Result<bool> {
            let _done = database_done_tx;
            if ready_rx.recv().is_err() {
                return Ok(false);
            }
            if order == RestoreOrder::FilesFirst {
                let _ = files_done_rx.recv();
            }
            loading.store(true, Ordering::Relaxed);
            let restored = restore_staging_db(plan, settings, spool_ref, abort_ref, cancel);
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
        let flusher = (want != Some(Variant::Database) && !settings.no_sync).then(|| {
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
        let extracted = inspect::extract(input, &mut staging, progress);
        drop(files_done_tx);
        drop(stop_flushing);
        if let Some(f) = flusher {
            let _ = f.join();
        }
        // Stops the file writer (on failure, before the staging tree is removed).
        drop(staging.tree_writer.take());
        drop(staging.dump_ready.take());
        drop(staging.dump_to.take());
        if extracted.is_err() {
            // Stop pg_restore early: dropping the staging database ends its connections.
            abort.store(true, Ordering::SeqCst);
            let _ = plan.admin.drop_database(&plan.staging_db);
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
    // With clear_rest the half the archive lacks is replaced too: by the empty staging
    // directory, or by an empty staging database made below.
    let clear_db = settings.clear_rest && want.is_none() && !actual.has_database();
    let clear_files = settings.clear_rest && want.is_none() && !actual.has_files();
    let restore_db = actual.has_database() && want != Some(Variant::Files);
    let restore_files = actual.has_files() && want != Some(Variant::Database);
    if restore_files && staging.extracted_files != report.tree_files {
        return Err(Error::corrupt(format!(
            "extracted {} files but the archive holds {}",
            staging.extracted_files, report.tree_files
        )));
    }
    let mut warnings = report.warnings.clone();
    for w in &warnings {
        progress.warning(w);
    }
    if report.container == Container::Tar && restore_db && report.dump_size.is_none() {
        return Err(Error::corrupt("the archive holds no database dump"));
    }
    let restored = restored?;
    if clear_db {
        create_empty_staging_db(plan)?;
    }
    let restore_db = restore_db || clear_db;
    let restore_files = restore_files || clear_files;
    if restore_db != (restored || clear_db) {
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
        if (actual == Variant::Database || !restore_files) && !clear_db {
            if let Some(w) = missing_files_warning(plan)? {
                progress.warning(&w);
                warnings.push(w);
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
        if !settings.no_sync {
            sync_tree(&staging_files)?;
        }
    }
    journal.phase = Phase::Prepared;
    journal.save(&journal_path)?;
    Ok((report, warnings))
}

/// A database restored without its files may reference files this environment's store lacks.
fn missing_files_warning(plan: &EnvPlan) -> Result<Option<String>> {
    let target = &plan.target;
    let staging_spec = target.database.with_dbname(&plan.staging_db);
    let staging = Session::connect(&staging_spec)?;
    if !staging.has_file_documents()? {
        return Ok(None);
    }
    if !target.files.is_dir() {
        return Ok(Some(format!(
            "database-only restore: the restored database references files, and {} does not \
             exist",
            target.files.display()
        )));
    }
    let Some(sel) = store::select_referenced_by(&staging, &target.files)? else {
        return Ok(None);
    };
    Ok((sel.counts.missing > 0).then(|| {
        format!(
            "database-only restore: the restored database references {} file(s) that {} \
             lacks (e.g. {})",
            sel.counts.missing,
            target.files.display(),
            sel.missing_examples.join(", ")
        )
    }))
}

/// Creates the staging database like the target (encoding and locale), saying what it is for
/// whoever finds it: a crash before the swap may leave it behind until the next mxsnap run on
/// the environment drops it.
fn create_staging_db(plan: &EnvPlan, admin: &Session, what: &str) -> Result<()> {
    let target = &plan.target;
    let db = target.database.dbname();
    let like = if plan.target_db_exists {
        admin.database_locale(db)?
    } else {
        None
    };
    let note = format!(
        "mxsnap staging copy{what} for database {db} (files {}); the next mxsnap run on that \
         environment removes it",
        target.files.display()
    );
    admin.create_database(&plan.staging_db, like.as_ref(), &note)
}

/// The staging database, empty: what a files-only upload leaves of the database.
fn create_empty_staging_db(plan: &EnvPlan) -> Result<()> {
    let admin = target::admin_session(&plan.target.database)?;
    create_staging_db(plan, &admin, " (empty)")
}

/// Creates the staging database (like the target: encoding and locale) and pg_restores the
/// spooled dump into it. Runs on its own thread, with its own admin connection, while the main
/// thread extracts the files. `abort` stops it between steps, a cancel also during pg_restore.
fn restore_staging_db(
    plan: &EnvPlan,
    settings: &Settings,
    spool_path: &Path,
    abort: &AtomicBool,
    cancel: &Cancel,
) -> Result<()> {
    let stopped = || {
        cancel.check()?;
        if abort.load(Ordering::SeqCst) {
            return Err(Error::environment("restore aborted"));
        }
        Ok(())
    };
    let target = &plan.target;
    let admin = target::admin_session(&target.database)?;
    stopped()?;
    create_staging_db(plan, &admin, "")?;
    stopped()?;
    let staging_spec = target.database.with_dbname(&plan.staging_db);
    plan.tools
        .restore_into(&staging_spec, spool_path, settings.jobs.max(1), cancel)
}

/// Makes everything written below `root` durable (one `syncfs` of its filesystem).
fn sync_tree(root: &Path) -> Result<()> {
    let dir = File::open(root).map_err(|e| Error::io(format!("syncing {}", root.display()), e))?;
    sys::sync_filesystem(&dir).map_err(|e| Error::io(format!("syncing {}", root.display()), e))
}
