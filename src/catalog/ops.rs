//! The catalogue's operations, each a plan (checked, nothing changed; its view is the dry run)
//! and an execution: create, download, delete, prune, comment.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::{Decision, Kind, Record, Repo, State, check_environment, current_user, retention};
use crate::archive::{Compression, Variant, cloud_file_name};
use crate::create::{self, CreateOptions, Output};
use crate::crypt::{EncryptTo, Keys};
use crate::error::Result;
use crate::output::PendingFile;
use crate::progress::{Cancel, Progress};

// ---- create ---------------------------------------------------------------------------------

/// What `snapshots create` is asked to do.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub repo: PathBuf,
    pub environment: String,
    pub database: Option<String>,
    pub files: PathBuf,
    pub comment: Option<String>,
    pub nightly: bool,
    /// Who asks for it (the service's signed-in user); the system user when `None`.
    pub created_by: Option<String>,
    pub model_version: Option<String>,
    pub pg_bin: Option<PathBuf>,
    /// The time zone of the retention schedule, for the new snapshot's expiry.
    pub tz: Tz,
}

pub struct CreatePlan {
    req: SnapshotRequest,
    id: String,
    archive: String,
    /// The create's own plan, or why it cannot run: a snapshot that cannot be made is still
    /// recorded, as Failed with the reason, as the cloud lists failed backups.
    create: Result<create::Plan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreatePlanView {
    pub snapshot_id: String,
    pub environment: String,
    pub kind: Kind,
    pub repo: PathBuf,
    /// Whether the catalogue is made first.
    pub repo_created: bool,
    pub archive: PathBuf,
    pub create: create::PlanView,
}

impl CreatePlan {
    /// The plan, or the error that would make the snapshot fail (for a dry run).
    pub fn checked(self) -> Result<CreatePlan> {
        match self.create {
            Ok(_) => Ok(self),
            Err(e) => Err(e),
        }
    }
}

impl CreatePlan {
    /// The id the snapshot will have.
    pub fn snapshot_id(&self) -> &str {
        &self.id
    }

    /// Records the snapshot as Queued before it is made (a service answers with it at once),
    /// making the catalogue when missing.
    pub fn record_queued(&self) -> Result<Record> {
        let repo = Repo::open(&self.req.repo, true)?;
        let rec = new_record(&self.req, &self.id, State::Queued, "queued");
        repo.save_new(&rec)?;
        Ok(rec)
    }

    /// What will be done; `None` when the create cannot run (see [`checked`](Self::checked)).
    pub fn view(&self) -> Option<CreatePlanView> {
        let create = self.create.as_ref().ok()?.view();
        Some(CreatePlanView {
            snapshot_id: self.id.clone(),
            environment: self.req.environment.clone(),
            kind: kind_of(&self.req),
            repo: self.req.repo.clone(),
            repo_created: !Repo::exists(&self.req.repo),
            archive: self.req.repo.join("archives").join(&self.archive),
            create,
        })
    }
}

/// The record of a snapshot about to be made by this process.
fn new_record(req: &SnapshotRequest, id: &str, state: State, message: &str) -> Record {
    Record {
        id: id.to_string(),
        environment: req.environment.clone(),
        created_by: if req.nightly {
            "Nightly".into()
        } else {
            req.created_by.clone().unwrap_or_else(current_user)
        },
        kind: kind_of(req),
        state,
        status_message: Some(message.into()),
        created_on: Utc::now(),
        finished_on: None,
        expires_on: None,
        model_version: req.model_version.clone(),
        comment: req.comment.clone(),
        archive: None,
        archive_bytes: None,
        archive_sha256: None,
        dump_bytes: None,
        files_bytes: None,
        database_bytes: None,
        file_count: None,
        pid: Some(std::process::id()),
        host: Some(super::host_name()),
        heartbeat_on: Some(Utc::now()),
        upload: None,
        encrypted_to: None,
    }
}

fn kind_of(req: &SnapshotRequest) -> Kind {
    if req.nightly {
        Kind::Nightly
    } else {
        Kind::Manual
    }
}

/// Checks the environment name, the catalogue and the create; nothing is written. A create
/// that cannot run (the database unreachable, say) fails only in [`execute_create`], which
/// records it.
pub fn plan_create(req: SnapshotRequest) -> Result<CreatePlan> {
    check_environment(&req.environment)?;
    let in_bucket = req.repo.to_str().is_some_and(crate::objstore::is_s3);
    if !in_bucket && !Repo::exists(&req.repo) && req.repo.exists() && !req.repo.is_dir() {
        return Err(crate::Error::usage(format!(
            "{} is not a directory",
            req.repo.display()
        )));
    }
    let id = uuid::Uuid::new_v4().to_string();
    // A catalogue set to encrypt seals every snapshot to its recipients.
    // (An object store is asked here too: its credentials and bucket are checked before a
    // record is made.)
    let encrypt_to = if in_bucket || Repo::exists(&req.repo) {
        match Repo::open(&req.repo, false) {
            Ok(repo) => repo.config()?.encrypt_to,
            Err(e) if in_bucket && e.kind() == crate::error::ErrorKind::Usage => Vec::new(),
            Err(e) => return Err(e),
        }
    } else {
        Vec::new()
    };
    let encrypt = if encrypt_to.is_empty() {
        None
    } else {
        Some(EncryptTo::recipients(&encrypt_to, &[])?)
    };
    let archive = match encrypt {
        Some(_) => format!("{id}.tar.gz.age"),
        None => format!("{id}.tar.gz"),
    };
    let create = create::plan(CreateOptions {
        database: req.database.clone(),
        files: Some(req.files.clone()),
        model_version: req.model_version.clone(),
        comment: req.comment.clone(),
        pg_bin: req.pg_bin.clone(),
        encrypt,
        ..CreateOptions::new(
            Variant::Full,
            if in_bucket {
                // The multipart upload starts only when the create does.
                Output::Writer(Box::new(std::io::sink()))
            } else {
                Output::Path(req.repo.join("archives").join(&archive))
            },
        )
    });
    Ok(CreatePlan {
        req,
        id,
        archive,
        create,
    })
}

/// Makes a full snapshot into the catalogue (made when missing): Running first, then
/// Completed with sizes and checksum, or Failed with the reason (the partial archive removed).
pub fn execute_create(
    plan: CreatePlan,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Record> {
    let CreatePlan {
        req,
        id,
        archive,
        create,
    } = plan;
    let repo = Repo::open(&req.repo, true)?;
    let mut rec = new_record(&req, &id, State::Running, "creating the snapshot");
    repo.upsert(&rec)?;
    let beat = repo
        .is_object_store()
        .then(|| Heartbeat::start(repo.clone(), id.clone()));
    let result = create.and_then(|plan| {
        let (plan, upload) = if repo.is_object_store() {
            let (output, upload) = repo.archive_output(&archive)?;
            if let Some(upload) = &upload {
                // Recorded before a byte is sent: a crash from here on leaves an upload
                // that the next prune can name and abort.
                rec.upload = Some(super::PendingUpload {
                    key: format!("archives/{archive}"),
                    id: upload.id(),
                });
                repo.upsert(&rec)?;
            }
            (plan.with_output(output), upload)
        } else {
            (plan, None)
        };
        let report = create::execute(plan, progress, cancel)?;
        if let Some(upload) = upload {
            // Only now does the archive appear, whole.
            upload.finish()?;
        }
        Ok(report)
    });
    drop(beat);
    let _lock = repo.lock()?;
    rec.finished_on = Some(Utc::now());
    rec.pid = None;
    rec.heartbeat_on = None;
    rec.upload = None;
    match result {
        Ok(report) => {
            rec.state = State::Completed;
            rec.status_message = None;
            rec.archive = Some(archive);
            rec.archive_bytes = Some(report.output_bytes);
            rec.archive_sha256 = Some(report.output_sha256);
            rec.dump_bytes = report.dump_size;
            rec.files_bytes = report.files_size;
            rec.database_bytes = report.database_size;
            rec.file_count = report.files.map(|c| c.included);
            rec.encrypted_to = report.encrypted_to;
            let all = repo.load_all(false)?;
            let mut snaps: Vec<_> = all
                .iter()
                .filter(|r| r.environment == rec.environment && r.id != rec.id)
                .map(Record::snap)
                .collect();
            snaps.push(rec.snap());
            rec.expires_on = retention::evaluate(&snaps, Utc::now(), req.tz)
                .pop()
                .and_then(|d| d.expires);
            drop(_lock);
            repo.upsert(&rec)?;
            Ok(rec)
        }
        Err(e) => {
            rec.state = State::Failed;
            rec.status_message = Some(format!("{e}"));
            drop(_lock);
            // The create's own error is the one to tell; a record that cannot be written now
            // (the store is gone) stays Running with a dead maker, and is read as Failed.
            let _ = repo.upsert(&rec);
            Err(e)
        }
    }
}

/// Renews a Running record's heartbeat in an object-store catalogue until dropped, so other
/// hosts can tell a long create from a crashed one.
pub(super) struct Heartbeat {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub(super) fn start(repo: Repo, id: String) -> Heartbeat {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let every = super::heartbeat_every();
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every)
            {
                // A failed beat is retried at the next; only a long run of them matters.
                let _ = repo.update(&id, |rec| {
                    if rec.state == State::Running {
                        rec.heartbeat_on = Some(Utc::now());
                    }
                    Ok(())
                });
            }
        });
        Heartbeat {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- download -------------------------------------------------------------------------------

/// Where a download goes.
pub enum DownloadTo {
    Writer(Box<dyn Write + Send>),
    /// A file, or a directory in which it is named as the cloud names downloads.
    Path(PathBuf),
}

pub struct DownloadPlan {
    rec: Record,
    keys: Keys,
    variant: Variant,
    source: super::Stored,
    /// The final name of the file written; `None` for a writer.
    target: Option<PathBuf>,
    writer: Option<Box<dyn Write + Send>>,
    force: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DownloadPlanView {
    pub snapshot_id: String,
    pub variant: Variant,
    pub source: PathBuf,
    pub output: Option<PathBuf>,
    pub steps: Vec<String>,
}

impl DownloadPlan {
    pub fn view(&self) -> DownloadPlanView {
        let to = self
            .target
            .as_ref()
            .map_or("the stream".to_string(), |t| t.display().to_string());
        let step = match self.variant {
            Variant::Full => {
                format!("copy the stored archive to {to}, checking its recorded SHA-256 on the way")
            }
            Variant::Database => format!("copy the stored dump (db/db.backup) to {to}"),
            Variant::Files => {
                format!("write the stored tree/ as a files-only gzip archive to {to}")
            }
        };
        DownloadPlanView {
            snapshot_id: self.rec.id.clone(),
            variant: self.variant,
            source: PathBuf::from(self.source.name()),
            output: self.target.clone(),
            steps: vec![step],
        }
    }

    /// Bytes the download reads, for a progress total.
    pub fn source_bytes(&self) -> Option<u64> {
        self.rec.archive_bytes
    }
}

/// Finds the snapshot (Completed), names the output and refuses an existing file.
pub fn plan_download(
    repo: &Path,
    id: &str,
    variant: Variant,
    to: DownloadTo,
    force: bool,
    keys: Keys,
) -> Result<DownloadPlan> {
    let repo = Repo::open(repo, false)?;
    let rec = repo.get(id, Tz::UTC)?;
    let source = repo.completed(&rec, "there is nothing to download")?;
    if rec.encrypted_to.is_some() && variant != Variant::Full && keys.is_empty() {
        return Err(crate::Error::usage(format!(
            "snapshot {} is encrypted: a {variant} download must decrypt it, and no key was given",
            rec.id
        ))
        .with_hint(
            "pass --identity KEYFILE, or download the full snapshot, which is handed over \
             encrypted as stored",
        ));
    }
    let (target, writer) = match to {
        DownloadTo::Writer(w) => (None, Some(w)),
        DownloadTo::Path(p) => {
            let path = if p.is_dir() {
                let tag = &rec.id.replace('-', "")[..8];
                let stamp = rec.created_on.format("%Y%m%d%H%M").to_string();
                let mut name = cloud_file_name(variant, Compression::Gzip, tag, &stamp);
                if rec.encrypted_to.is_some() && variant == Variant::Full {
                    name.push_str(".age");
                }
                p.join(name)
            } else {
                p
            };
            PendingFile::check_target(&path, force)?;
            (Some(path), None)
        }
    };
    Ok(DownloadPlan {
        rec,
        keys,
        variant,
        source,
        target,
        writer,
        force,
    })
}

/// Streams the download; returns the file written (`None` for a writer).
pub fn execute_download(
    plan: DownloadPlan,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Option<PathBuf>> {
    progress.stage("downloading", plan.rec.archive_bytes);
    super::download::download(
        &plan.rec,
        &plan.keys,
        &plan.source,
        plan.variant,
        plan.target.as_deref(),
        plan.writer,
        plan.force,
        progress,
        cancel,
    )
    .map_err(|e| cancel.explain(e))
}

// ---- delete and comment ---------------------------------------------------------------------

pub struct DeletePlan {
    repo: Repo,
    rec: Record,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeletePlanView {
    pub snapshot_id: String,
    pub environment: String,
    pub state: State,
    pub archive: Option<PathBuf>,
}

impl DeletePlan {
    pub fn view(&self) -> DeletePlanView {
        DeletePlanView {
            snapshot_id: self.rec.id.clone(),
            environment: self.rec.environment.clone(),
            state: self.rec.state,
            archive: self.repo.archive_path(&self.rec),
        }
    }
}

/// Finds the snapshot and refuses one still being made.
pub fn plan_delete(repo: &Path, id: &str) -> Result<DeletePlan> {
    let repo = Repo::open(repo, false)?;
    let rec = repo.get(id, Tz::UTC)?;
    refuse_running(&rec)?;
    Ok(DeletePlan { repo, rec })
}

fn refuse_running(rec: &Record) -> Result<()> {
    if rec.state == State::Running {
        return Err(crate::Error::not_allowed(format!(
            "snapshot {} is still being made (process {})",
            rec.id,
            rec.pid.unwrap_or(0)
        )));
    }
    Ok(())
}

pub fn execute_delete(plan: DeletePlan, cancel: &Cancel) -> Result<Record> {
    cancel.check()?;
    plan.repo.delete(&plan.rec.id)
}

pub struct CommentPlan {
    repo: Repo,
    rec: Record,
    comment: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommentPlanView {
    pub snapshot_id: String,
    pub comment_before: Option<String>,
    pub comment: String,
}

impl CommentPlan {
    pub fn view(&self) -> CommentPlanView {
        CommentPlanView {
            snapshot_id: self.rec.id.clone(),
            comment_before: self.rec.comment.clone(),
            comment: self.comment.clone(),
        }
    }
}

pub fn plan_comment(repo: &Path, id: &str, comment: &str) -> Result<CommentPlan> {
    let repo = Repo::open(repo, false)?;
    let rec = repo.get(id, Tz::UTC)?;
    Ok(CommentPlan {
        repo,
        rec,
        comment: comment.to_string(),
    })
}

pub fn execute_comment(plan: CommentPlan, cancel: &Cancel) -> Result<Record> {
    cancel.check()?;
    plan.repo.set_comment(&plan.rec.id, &plan.comment)
}

// ---- prune ----------------------------------------------------------------------------------

pub struct PrunePlan {
    repo: Repo,
    environment: Option<String>,
    now: DateTime<Utc>,
    tz: Tz,
    decisions: Vec<(Record, Decision)>,
}

impl PrunePlan {
    /// Every snapshot with its decision and the rule behind it.
    pub fn decisions(&self) -> &[(Record, Decision)] {
        &self.decisions
    }
}

/// Evaluates the retention schedule at `now`; deletes nothing.
pub fn plan_prune(
    repo: &Path,
    environment: Option<&str>,
    now: DateTime<Utc>,
    tz: Tz,
) -> Result<PrunePlan> {
    let repo = Repo::open(repo, false)?;
    let decisions = repo.prune(environment, now, tz, true)?;
    Ok(PrunePlan {
        repo,
        environment: environment.map(str::to_string),
        now,
        tz,
        decisions,
    })
}

/// Deletes the expired snapshots (decided again under the catalogue's lock, so a snapshot
/// completed since the plan is judged as it is now) and removes crashed ones' partial archives.
pub fn execute_prune(plan: PrunePlan, cancel: &Cancel) -> Result<Vec<(Record, Decision)>> {
    cancel.check()?;
    plan.repo
        .prune(plan.environment.as_deref(), plan.now, plan.tz, false)
}

// ---- config ---------------------------------------------------------------------------------

pub struct ConfigPlan {
    repo: PathBuf,
    before: super::RepoConfig,
    after: super::RepoConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigPlanView {
    pub repo: PathBuf,
    pub repo_created: bool,
    pub encrypt_to_before: Vec<String>,
    pub encrypt_to: Vec<String>,
}

impl ConfigPlan {
    pub fn view(&self) -> ConfigPlanView {
        ConfigPlanView {
            repo: self.repo.clone(),
            repo_created: !Repo::exists(&self.repo),
            encrypt_to_before: self.before.encrypt_to.clone(),
            encrypt_to: self.after.encrypt_to.clone(),
        }
    }
}

/// Sets the catalogue to encrypt every new snapshot to `encrypt` (checked public keys), or to
/// stop encrypting with `None`. Snapshots already written stay as they are.
pub fn plan_config(repo: &Path, encrypt: Option<EncryptTo>) -> Result<ConfigPlan> {
    let before = if Repo::exists(repo) {
        Repo::open(repo, false)?.config()?
    } else {
        super::RepoConfig::default()
    };
    let encrypt_to = match encrypt {
        None => Vec::new(),
        Some(EncryptTo::Recipients(r)) => r.iter().map(|r| r.to_string()).collect(),
        Some(EncryptTo::Passphrase(_)) => {
            return Err(crate::Error::usage(
                "a catalogue encrypts to public keys only: a passphrase would have to be kept \
                 beside it for nightly snapshots",
            ));
        }
    };
    Ok(ConfigPlan {
        repo: repo.to_path_buf(),
        after: super::RepoConfig { encrypt_to },
        before,
    })
}

pub fn execute_config(plan: ConfigPlan, cancel: &Cancel) -> Result<super::RepoConfig> {
    cancel.check()?;
    let repo = Repo::open(&plan.repo, true)?;
    repo.set_config(&plan.after)?;
    Ok(plan.after)
}
