//! `restore`: replace a stopped environment's database and files with a snapshot's, atomically.
//!
//! [`plan`] opens the archive (refusing what is not one before touching anything), takes the
//! environment's lock, finishes or undoes any restore a crash interrupted (the one change a
//! plan makes: nothing can be planned on a half-swapped target), and refuses a running
//! target. [`execute`] stages everything beside the target (a staging database on the same
//! server, a staging directory on the same filesystem, see `stage`), checks it all, and only
//! then swaps ([`journal`]). Until the swap the target is untouched; a failure or a cancel
//! drops the staging copies.

pub mod journal;
mod stage;
pub mod tree_writer;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::Variant;
use crate::crypt::Keys;
use crate::error::{Error, Result};
use crate::pg::{PgTools, Session};
use crate::progress::{Cancel, Progress};
use crate::source::{ArchiveInput, Peek, Source};
use crate::sys;
use crate::target::local::{LocalEnv, Settings};
use crate::target::{self, EnvLock, EnvState, Target};
use journal::{Journal, Phase, Swapped};
pub use stage::RestoreOrder;

/// Where a restore goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// An existing environment: a database URL and a file store.
    Env(Box<Target>),
    /// A managed local environment in this directory, made and started when needed.
    Local(PathBuf),
}

#[derive(Debug)]
pub struct RestoreOptions {
    pub source: Source,
    pub destination: Destination,
    /// Restore only this part of a full snapshot; `None` restores whatever the archive holds.
    pub variant: Option<Variant>,
    pub jobs: usize,
    pub keep_previous: bool,
    /// When the database and the files are restored, relative to each other.
    pub order: RestoreOrder,
    /// Clear the half of the environment the archive does not hold (an empty database or an
    /// empty file store is swapped in with the rest), as the cloud's Upload data clears the
    /// environment: a database-only upload leaves no files, a files-only one an empty
    /// database. Staged and swapped like the rest, so a failure still changes nothing.
    pub clear_rest: bool,
    /// Swap the extracted files in without waiting for them to reach the disk (PostgreSQL's
    /// tools call it `--no-sync`). Writing a store back costs about as long as extracting
    /// it on a slow disk; a power failure or OS crash soon after such a restore can leave the
    /// restored files incomplete. A killed mxsnap cannot: the files are in the page cache.
    /// The database half is as durable as its server makes it either way.
    pub no_sync: bool,
    /// The target's model version, for the older-model warning.
    pub model_version: Option<String>,
    pub pg_bin: Option<PathBuf>,
    /// What opens an encrypted archive.
    pub keys: Keys,
}

/// What a restore will do, decided before anything changes; its [`view`](Plan::view) is the
/// dry run.
pub struct Plan {
    input: ArchiveInput,
    variant: Option<Variant>,
    jobs: usize,
    keep_previous: bool,
    order: RestoreOrder,
    clear_rest: bool,
    no_sync: bool,
    model_version: Option<String>,
    pg_bin: Option<PathBuf>,
    /// The local environment, when the destination is one (opened, or to be made).
    local: Option<LocalPlan>,
    /// The environment's side of the plan; `None` while a local environment is still to be
    /// made or started (execute plans it then).
    env: Option<EnvPlan>,
    free_bytes: Option<u64>,
}

struct LocalPlan {
    dir: PathBuf,
    /// Open when it exists.
    env: Option<LocalEnv>,
}

/// The environment checked, locked and named: what the swap needs.
struct EnvPlan {
    target: Target,
    _lock: EnvLock,
    admin: Session,
    tools: PgTools,
    checks: Vec<String>,
    /// What was done about an earlier, interrupted restore.
    recovered: Option<String>,
    target_db_exists: bool,
    target_files_exist: bool,
    staging_db: String,
    old_db: String,
    work_dir: PathBuf,
    old_files: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    /// The archive as named in messages.
    pub archive_name: String,
    pub archive_bytes: Option<u64>,
    /// What the archive's first bytes tell (a file only; a stream is known once read).
    #[serde(rename = "archive")]
    pub peek: Option<Peek>,
    /// Free bytes where the staging copies go.
    pub free_bytes: Option<u64>,
    /// Read through age decryption.
    pub encrypted: bool,
    /// The local environment, when restoring into one, and whether it must be made first.
    pub local: Option<PathBuf>,
    pub local_created: bool,
    pub database: String,
    pub files: PathBuf,
    pub database_exists: bool,
    pub files_exist: bool,
    pub checks: Vec<String>,
    pub recovered: Option<String>,
    pub steps: Vec<String>,
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
    /// The local environment restored into, with what an app needs to connect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LocalReport {
    pub dir: PathBuf,
    /// Made by this restore.
    pub created: bool,
    #[serde(flatten)]
    pub settings: Settings,
}

impl Plan {
    /// True when the restore would replace existing data (worth a confirmation).
    pub fn replaces_data(&self) -> bool {
        match (&self.env, &self.local) {
            (Some(env), _) => env.target_db_exists || env.target_files_exist,
            (None, Some(local)) => local.env.is_some(),
            (None, None) => false,
        }
    }

    pub fn view(&self) -> PlanView {
        let (database, files, mut steps) = match (&self.env, &self.local) {
            (Some(env), _) => (
                env.target.database.describe(),
                env.target.files.clone(),
                Vec::new(),
            ),
            (None, local) => {
                let local = local.as_ref();
                let dir = local.map(|l| l.dir.clone()).unwrap_or_default();
                let step = match local.and_then(|l| l.env.as_ref()) {
                    Some(_) => format!("start the local environment in {}", dir.display()),
                    None => format!(
                        "make a local environment in {} (a private PostgreSQL cluster and a \
                         file store) and start it",
                        dir.display()
                    ),
                };
                let files = match local.and_then(|l| l.env.as_ref()) {
                    Some(env) => env.settings.files.clone(),
                    None => dir.join("data").join("files"),
                };
                (
                    format!("database app of the local environment in {}", dir.display()),
                    files,
                    vec![step],
                )
            }
        };
        match &self.env {
            Some(env) => steps.extend(self.env_steps(env)),
            None => steps
                .push("then check the environment, stage and swap as for any restore".to_string()),
        }
        PlanView {
            archive_name: self.input.name().to_string(),
            archive_bytes: self.input.size(),
            peek: self.input.peek().cloned(),
            free_bytes: self.free_bytes,
            encrypted: self.input.encrypted(),
            local: self.local.as_ref().map(|l| l.dir.clone()),
            local_created: self.local.as_ref().is_some_and(|l| l.env.is_none()),
            database,
            files,
            database_exists: self.env.as_ref().is_some_and(|e| e.target_db_exists),
            files_exist: self.env.as_ref().is_some_and(|e| e.target_files_exist),
            checks: self
                .env
                .as_ref()
                .map(|e| e.checks.clone())
                .unwrap_or_default(),
            recovered: self.env.as_ref().and_then(|e| e.recovered.clone()),
            steps,
        }
    }

    fn env_steps(&self, env: &EnvPlan) -> Vec<String> {
        let t = &env.target;
        let db = t.database.dbname();
        let with_db = self.variant != Some(Variant::Files);
        let with_files = self.variant != Some(Variant::Database);
        let mut steps = vec![format!(
            "read and check the whole archive, extracting into {}",
            env.work_dir.display()
        )];
        if with_db {
            steps.push(format!(
                "create staging database {} and pg_restore into it (--no-owner \
                 --no-privileges --exit-on-error, {} job(s)){}",
                env.staging_db,
                self.jobs,
                match (with_files, self.order) {
                    (false, _) => "",
                    (true, RestoreOrder::DatabaseFirst) => ", before the files are extracted",
                    (true, RestoreOrder::FilesFirst) => ", after the files are extracted",
                    (true, _) => ", while the files are extracted",
                }
            ));
            steps.push(if env.target_db_exists {
                format!(
                    "swap: rename database {db} to {} and {} to {db} (one transaction)",
                    env.old_db, env.staging_db
                )
            } else {
                format!("create database {db} by renaming {}", env.staging_db)
            });
        }
        if with_files {
            steps.push(if env.target_files_exist {
                format!(
                    "swap: exchange {} with the staged files (one atomic rename)",
                    t.files.display()
                )
            } else {
                format!("create {} by renaming the staged files", t.files.display())
            });
        }
        if self.keep_previous {
            steps.push(format!(
                "keep the previous database as {} and files as {}",
                env.old_db,
                env.old_files.display()
            ));
        } else if env.target_db_exists || env.target_files_exist {
            steps.push("drop the previous database and remove the previous files".to_string());
        }
        if with_files && self.no_sync {
            steps.push(
                "the extracted files are swapped in without waiting for them to reach the disk \
                 (--no-sync): an OS crash or power failure soon after can leave them incomplete"
                    .to_string(),
            );
        }
        steps.push(if self.clear_rest {
            "the part of the environment the archive does not hold is cleared: an empty \
             database or an empty file store is swapped in"
                .to_string()
        } else {
            "the part of the environment the archive does not hold stays untouched".to_string()
        });
        steps
    }
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

/// Opens the archive, checks the environment and decides names. Changes nothing but
/// finishing an interrupted restore; a local environment that does not exist yet or is
/// stopped is only described.
pub fn plan(opts: RestoreOptions) -> Result<Plan> {
    // Say "not an archive" before touching the environment.
    let input = ArchiveInput::open(opts.source, &opts.keys)?;
    if let (Some(wanted), Some(found)) = (opts.variant, input.peek().and_then(|p| p.variant)) {
        if !found.holds(wanted) {
            return Err(found.wrong_variant(wanted));
        }
    }
    let (local, env) = match opts.destination {
        Destination::Env(target) => (None, Some(plan_env(*target, opts.pg_bin.as_deref())?)),
        Destination::Local(dir) => {
            let existing = LocalEnv::find(&dir)?;
            let env = match &existing {
                Some(local) if local.running() => {
                    Some(plan_env(local.target()?, opts.pg_bin.as_deref())?)
                }
                _ => None,
            };
            (Some(LocalPlan { dir, env: existing }), env)
        }
    };
    let free_on = match (&env, &local) {
        (Some(env), _) => env.target.parent(),
        (None, Some(l)) => l.dir.clone(),
        (None, None) => PathBuf::from("."),
    };
    let free_bytes = nearest_existing(&free_on).and_then(|p| sys::free_space(&p));
    Ok(Plan {
        input,
        variant: opts.variant,
        jobs: opts.jobs,
        keep_previous: opts.keep_previous,
        clear_rest: opts.clear_rest,
        no_sync: opts.no_sync,
        order: opts.order,
        model_version: opts.model_version,
        pg_bin: opts.pg_bin,
        local,
        env,
        free_bytes,
    })
}

/// `path`, or its nearest ancestor that exists (where a new directory would be made).
fn nearest_existing(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .find(|p| p.as_os_str().is_empty() || p.exists())
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
}

fn plan_env(mut target: Target, pg_bin: Option<&Path>) -> Result<EnvPlan> {
    target.files = follow_store_link(&target.files)?;
    let tools = PgTools::find(pg_bin)?;
    let lock = target.lock()?;
    let admin = target::admin_session(&target.database)?;
    let server = admin.server_version_num()?;
    if server < 130000 {
        return Err(Error::environment(format!(
            "restoring needs PostgreSQL 13 or newer (DROP DATABASE ... WITH (FORCE)); the \
             server is {}",
            server / 10000
        )));
    }
    let recovered = journal::recover(&target, &admin)?;
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
    Ok(EnvPlan {
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
        target,
    })
}

/// A store given as a symbolic link (often to a bigger disk) is restored where the link
/// points: staging next to the real directory keeps the swap a rename on one filesystem, puts
/// the free-space check on the right disk, and leaves the link itself in place.
fn follow_store_link(files: &Path) -> Result<PathBuf> {
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

/// Runs the plan. A cancel before the swap undoes everything staged and leaves the target as
/// it was; once the swap has begun it is finished (a half swap is never left).
pub fn execute(plan: Plan, progress: &dyn Progress, cancel: &Cancel) -> Result<RestoreReport> {
    let started = std::time::Instant::now();
    let Plan {
        input,
        variant,
        jobs,
        keep_previous,
        order,
        clear_rest,
        no_sync,
        model_version,
        pg_bin,
        local,
        env,
        ..
    } = plan;
    cancel.check()?;
    // A local environment is made and started only now, then planned like any other.
    let mut local_report = None;
    let env = match (env, local) {
        (Some(env), local) => {
            if let Some(LocalPlan { dir, env: Some(l) }) = local {
                local_report = Some(LocalReport {
                    dir,
                    created: false,
                    settings: l.settings,
                });
            }
            env
        }
        (None, Some(LocalPlan { dir, .. })) => {
            let (mut l, created) = LocalEnv::open_or_create(&dir)?;
            if created {
                progress.note(&format!(
                    "made a local environment in {}{}",
                    l.dir.display(),
                    match &l.settings.run_as {
                        Some(u) => format!(
                            " (PostgreSQL runs as the system user {u}: initdb refuses root)"
                        ),
                        None => String::new(),
                    }
                ));
            }
            l.start()?;
            let env = plan_env(l.target()?, pg_bin.as_deref())?;
            local_report = Some(LocalReport {
                dir: l.dir.clone(),
                created,
                settings: l.settings.clone(),
            });
            env
        }
        (None, None) => unreachable!("a plan has an environment or a local one to make"),
    };
    let name = input.name().to_string();
    progress.stage("restoring", input.size());
    let content = input.into_content(cancel);
    let settings = stage::Settings {
        variant,
        jobs,
        keep_previous,
        order,
        clear_rest,
        no_sync,
    };
    let mut report = run(&env, &settings, content, model_version, progress, cancel)
        .map_err(|e| cancel.explain(e).context(format!("restoring {name}")))?;
    report.seconds = started.elapsed().as_secs_f64();
    report.local = local_report;
    Ok(report)
}

fn run(
    env: &EnvPlan,
    settings: &stage::Settings,
    input: crate::archive::Content<'_>,
    model_version: Option<String>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<RestoreReport> {
    let target = &env.target;
    let journal_path = target.journal_path();
    let mut journal = Journal {
        phase: Phase::Staging,
        target_db: target.database.dbname().to_string(),
        staging_db: None,
        staging_db_oid: None,
        old_db: env.old_db.clone(),
        files: target.files.clone(),
        work_dir: env.work_dir.clone(),
        swap_files: false,
        staging_files_ino: None,
        old_files: env.old_files.clone(),
        keep_previous: settings.keep_previous,
        model_version: None,
    };
    journal.save(&journal_path)?;

    // The last moment a cancel is honoured is before the swap: after it, the swap finishes.
    let staged = stage::stage(env, settings, &mut journal, input, progress, cancel)
        .and_then(|staged| cancel.check().map(|()| staged));
    let (report, mut warnings) = match staged {
        Ok(v) => v,
        Err(e) => {
            return Err(
                match journal::roll_back(&journal, &env.admin, &journal_path) {
                    Ok(()) => e,
                    Err(undo) => e.context(format!(
                        "(and removing the staging copies failed too: {undo})"
                    )),
                },
            );
        }
    };
    sys::crash_point("prepared");
    progress.stage("swapping in the restored data", None);
    let swapped = journal::complete_swap(&journal, &env.admin, &journal_path)?;

    let archive_model = report
        .metadata
        .as_ref()
        .map(|m| m.model_version.clone())
        .filter(|v| !v.is_empty() && v != crate::archive::manifest::UNKNOWN_MODEL_VERSION);
    let mut state = EnvState::load(target);
    let known = model_version.or(state.model_version.clone());
    if let (Some(archive), Some(current)) = (&archive_model, &known) {
        if target::compare_versions(archive, current) == Some(std::cmp::Ordering::Less) {
            let w = format!(
                "the snapshot was made on model version {archive}, older than the \
                 environment's {current}: deploy model {archive} before starting the app"
            );
            progress.warning(&w);
            warnings.push(w);
        }
    }
    if archive_model.is_some() {
        state.model_version = archive_model.clone();
        state.save(target)?;
    }
    let mut checks = env.checks.clone();
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
        recovered: env.recovered.clone(),
        warnings,
        seconds: 0.0,
        local: None,
    })
}
