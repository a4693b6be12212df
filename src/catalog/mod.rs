//! The snapshot catalogue: a directory of archives and one JSON record per snapshot, with the
//! cloud's retention schedule ([`retention`]).
//!
//! Layout (see docs/FORMAT.md): `mxsnap-repo.json` marks the directory; `snapshots/<id>.json`
//! holds each record, written atomically; `archives/<id>.tar.gz` each full archive; `.lock` is
//! `flock`ed while records change. Archive creation itself runs outside the lock, so snapshots
//! of different environments can be made at once.

mod download;
pub mod ops;
pub mod retention;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::write_json_atomically;
pub use retention::{Decision, Kind, Rule, State};

const MARKER: &str = "mxsnap-repo.json";

/// One snapshot, as stored in `snapshots/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub environment: String,
    pub created_by: String,
    pub kind: Kind,
    pub state: State,
    pub status_message: Option<String>,
    pub created_on: DateTime<Utc>,
    pub finished_on: Option<DateTime<Utc>>,
    pub expires_on: Option<DateTime<Utc>>,
    pub model_version: Option<String>,
    pub comment: Option<String>,
    /// File name below `archives/`.
    pub archive: Option<String>,
    pub archive_bytes: Option<u64>,
    pub archive_sha256: Option<String>,
    pub dump_bytes: Option<u64>,
    pub files_bytes: Option<u64>,
    pub database_bytes: Option<u64>,
    pub file_count: Option<u64>,
    /// The process making a Running snapshot, to tell a live one from a crashed one.
    pub pid: Option<u32>,
    /// The age public keys the archive is encrypted to; `None` when it is not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_to: Option<Vec<String>>,
}

/// What `mxsnap-repo.json` says: the format, and what is done to every new snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoConfig {
    /// Encrypt every new snapshot to these age public keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypt_to: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
    #[serde(flatten)]
    config: RepoConfig,
}

/// The Backups API v1 view of a record, so scripts written for the cloud read it unchanged.
#[derive(Debug, Clone, Serialize)]
pub struct ApiV1 {
    #[serde(rename = "SnapshotID")]
    pub snapshot_id: String,
    #[serde(rename = "Comment")]
    pub comment: String,
    #[serde(rename = "State")]
    pub state: State,
    #[serde(rename = "ExpiresOn")]
    pub expires_on: Option<i64>,
    #[serde(rename = "CreatedOn")]
    pub created_on: i64,
    #[serde(rename = "ModelVersion")]
    pub model_version: String,
}

/// `show --json`: the Backups API v1 fields, then everything else the record knows.
#[derive(Debug, Clone, Serialize)]
pub struct Details {
    #[serde(flatten)]
    pub api: ApiV1,
    #[serde(rename = "Environment")]
    pub environment: String,
    #[serde(rename = "CreatedBy")]
    pub created_by: String,
    #[serde(rename = "Kind")]
    pub kind: Kind,
    #[serde(rename = "StatusMessage")]
    pub status_message: Option<String>,
    #[serde(rename = "FinishedOn")]
    pub finished_on: Option<i64>,
    #[serde(rename = "Size")]
    pub size: Option<u64>,
    #[serde(rename = "DumpSize")]
    pub dump_size: Option<u64>,
    #[serde(rename = "FilesSize")]
    pub files_size: Option<u64>,
    #[serde(rename = "DatabaseSize")]
    pub database_size: Option<u64>,
    #[serde(rename = "FileCount")]
    pub file_count: Option<u64>,
    #[serde(rename = "ArchiveSHA256")]
    pub archive_sha256: Option<String>,
    #[serde(rename = "EncryptedTo", skip_serializing_if = "Option::is_none")]
    pub encrypted_to: Option<Vec<String>>,
}

impl Record {
    pub fn details(&self) -> Details {
        Details {
            api: self.api_v1(),
            environment: self.environment.clone(),
            created_by: self.created_by.clone(),
            kind: self.kind,
            status_message: self.status_message.clone(),
            finished_on: self.finished_on.map(|t| t.timestamp_millis()),
            size: self.archive_bytes,
            dump_size: self.dump_bytes,
            files_size: self.files_bytes,
            database_size: self.database_bytes,
            file_count: self.file_count,
            archive_sha256: self.archive_sha256.clone(),
            encrypted_to: self.encrypted_to.clone(),
        }
    }

    pub fn api_v1(&self) -> ApiV1 {
        ApiV1 {
            snapshot_id: self.id.clone(),
            comment: self.comment.clone().unwrap_or_default(),
            state: self.state,
            expires_on: self.expires_on.map(|t| t.timestamp_millis()),
            created_on: self.created_on.timestamp_millis(),
            model_version: self.model_version.clone().unwrap_or_default(),
        }
    }

    fn snap(&self) -> retention::Snap {
        retention::Snap {
            id: self.id.clone(),
            created: self.created_on,
            kind: self.kind,
            state: self.state,
        }
    }
}

/// Checks an environment name: the cloud's modes, or a flexible environment's name.
pub fn check_environment(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "invalid environment {name:?}: use Test, Acceptance, Production or a flexible \
             environment's name (letters, digits, '-', '_', '.')"
        )))
    }
}

pub struct Repo {
    root: PathBuf,
}

struct RepoLock {
    _file: File,
}

impl Repo {
    /// Whether `root` holds a catalogue.
    pub fn exists(root: &Path) -> bool {
        root.join(MARKER).is_file()
    }

    /// Opens the catalogue at `root`, making it when `create` and it does not exist yet.
    pub fn open(root: &Path, create: bool) -> Result<Repo> {
        let marker = root.join(MARKER);
        if !marker.is_file() {
            if !create {
                return Err(
                    Error::usage(format!("{} is not an mxsnap catalogue", root.display()))
                        .with_hint("make one with `mxsnap snapshots create --repo DIR ...`"),
                );
            }
            for dir in [root.join("snapshots"), root.join("archives")] {
                fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            }
            write_json_atomically(
                &marker,
                &Marker {
                    format: "mxsnap-repo".into(),
                    version: 1,
                    config: RepoConfig::default(),
                },
            )?;
        }
        Ok(Repo {
            root: root.to_path_buf(),
        })
    }

    fn lock(&self) -> Result<RepoLock> {
        let path = self.root.join(".lock");
        let file =
            File::create(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        // Blocking, as every holder is brief.
        crate::sys::lock_exclusive(&file, true)
            .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        Ok(RepoLock { _file: file })
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{id}.json"))
    }

    pub fn archive_path(&self, rec: &Record) -> Option<PathBuf> {
        rec.archive
            .as_ref()
            .map(|a| self.root.join("archives").join(a))
    }

    fn save(&self, rec: &Record) -> Result<()> {
        write_json_atomically(&self.record_path(&rec.id), rec)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The catalogue's settings.
    pub fn config(&self) -> Result<RepoConfig> {
        let path = self.root.join(MARKER);
        let data =
            fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let marker: Marker = serde_json::from_slice(&data)
            .map_err(|e| Error::environment(format!("{} is unreadable: {e}", path.display())))?;
        Ok(marker.config)
    }

    pub(crate) fn set_config(&self, config: &RepoConfig) -> Result<()> {
        let _lock = self.lock()?;
        write_json_atomically(
            &self.root.join(MARKER),
            &Marker {
                format: "mxsnap-repo".into(),
                version: 1,
                config: config.clone(),
            },
        )
    }

    /// The archive of a snapshot that can be restored or downloaded: a Completed one.
    pub fn completed_archive(&self, rec: &Record, what: &str) -> Result<PathBuf> {
        if rec.state != State::Completed {
            return Err(Error::usage(format!(
                "snapshot {} is {:?}, not Completed: {what}",
                rec.id, rec.state
            )));
        }
        self.archive_path(rec)
            .ok_or_else(|| Error::environment(format!("the record of {} names no archive", rec.id)))
    }

    /// Every record, oldest first. A Running record whose process is gone is reported as
    /// Failed (it crashed); `repair` also rewrites it and removes its partial archive.
    fn load_all(&self, repair: bool) -> Result<Vec<Record>> {
        let dir = self.root.join("snapshots");
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
        {
            let path = entry
                .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
                .path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let data =
                fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let mut rec: Record = serde_json::from_slice(&data).map_err(|e| {
                Error::environment(format!("{} is not a snapshot record: {e}", path.display()))
            })?;
            if matches!(rec.state, State::Running | State::Queued)
                && !rec.pid.is_some_and(|p| crate::sys::process_alive(p as i32))
            {
                rec.state = State::Failed;
                rec.status_message = Some(
                    "interrupted: the process making this snapshot died before finishing"
                        .to_string(),
                );
                if repair {
                    self.remove_partials(&rec.id)?;
                    self.save(&rec)?;
                }
            }
            out.push(rec);
        }
        out.sort_by_key(|r| r.created_on);
        Ok(out)
    }

    fn remove_partials(&self, id: &str) -> Result<()> {
        let dir = self.root.join("archives");
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!(".{id}.")) && name.ends_with(".partial") {
                fs::remove_file(entry.path())
                    .map_err(|e| Error::io(format!("removing {name}"), e))?;
            }
        }
        Ok(())
    }

    /// The records (of `environment`, if given), with expiries as the schedule sets them now.
    pub fn list(&self, environment: Option<&str>, tz: Tz) -> Result<Vec<Record>> {
        let mut all = self.load_all(false)?;
        let decisions = retention::evaluate(
            &all.iter().map(Record::snap).collect::<Vec<_>>(),
            Utc::now(),
            tz,
        );
        for (r, d) in all.iter_mut().zip(decisions) {
            r.expires_on = d.expires;
        }
        Ok(all
            .into_iter()
            .filter(|r| environment.is_none_or(|e| r.environment == e))
            .collect())
    }

    /// One record, by its id or a unique prefix of at least 8 characters.
    pub fn get(&self, id: &str, tz: Tz) -> Result<Record> {
        let all = self.list(None, tz)?;
        let mut found: Vec<Record> = all
            .into_iter()
            .filter(|r| r.id == id || (id.len() >= 8 && r.id.starts_with(id)))
            .collect();
        match found.len() {
            1 => Ok(found.swap_remove(0)),
            0 => Err(
                Error::usage(format!("no snapshot {id} in {}", self.root.display()))
                    .with_hint("list them with `mxsnap snapshots list`"),
            ),
            _ => Err(Error::usage(format!(
                "{id} matches more than one snapshot; give more of it"
            ))),
        }
    }

    pub(crate) fn set_comment(&self, id: &str, comment: &str) -> Result<Record> {
        let _lock = self.lock()?;
        let mut rec = self.get(id, Tz::UTC)?;
        rec.comment = Some(comment.to_string());
        self.save(&rec)?;
        Ok(rec)
    }

    fn delete_unlocked(&self, rec: &Record) -> Result<()> {
        if let Some(path) = self.archive_path(rec) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
            }
        }
        self.remove_partials(&rec.id)?;
        let path = self.record_path(&rec.id);
        fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))
    }

    pub(crate) fn delete(&self, id: &str) -> Result<Record> {
        let _lock = self.lock()?;
        let rec = self.get(id, Tz::UTC)?;
        if matches!(rec.state, State::Running | State::Queued) {
            return Err(Error::not_allowed(format!(
                "snapshot {} is still being made (process {})",
                rec.id,
                rec.pid.unwrap_or(0)
            )));
        }
        self.delete_unlocked(&rec)?;
        Ok(rec)
    }

    /// The retention schedule at `now`: every snapshot (of `environment`) with its decision;
    /// unless `dry_run`, the expired ones are deleted (and crashed ones' records repaired).
    pub(crate) fn prune(
        &self,
        environment: Option<&str>,
        now: DateTime<Utc>,
        tz: Tz,
        dry_run: bool,
    ) -> Result<Vec<(Record, Decision)>> {
        let _lock = self.lock()?;
        let all = self.load_all(!dry_run)?;
        // Each environment has its own schedule.
        let mut out = Vec::new();
        let mut envs: Vec<&str> = all.iter().map(|r| r.environment.as_str()).collect();
        envs.sort();
        envs.dedup();
        for env in envs
            .into_iter()
            .filter(|e| environment.is_none_or(|w| w == *e))
        {
            let recs: Vec<&Record> = all.iter().filter(|r| r.environment == env).collect();
            let snaps: Vec<_> = recs.iter().map(|r| r.snap()).collect();
            for (rec, decision) in recs.into_iter().zip(retention::evaluate(&snaps, now, tz)) {
                if !decision.keep && !dry_run {
                    self.delete_unlocked(rec)?;
                }
                out.push((rec.clone(), decision));
            }
        }
        out.sort_by_key(|(r, _)| r.created_on);
        Ok(out)
    }
}

fn current_user() -> String {
    crate::pg::conn::current_os_user().unwrap_or_else(|| "unknown".into())
}
