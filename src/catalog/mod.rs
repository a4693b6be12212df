//! The snapshot catalogue: a directory of archives and one JSON record per snapshot, with the
//! cloud's retention schedule ([`retention`]).
//!
//! Layout (see docs/FORMAT.md): `mxsnap-repo.json` marks the directory; `snapshots/<id>.json`
//! holds each record, written atomically; `archives/<id>.tar.gz` each full archive; `.lock` is
//! `flock`ed while records change. Archive creation itself runs outside the lock, so snapshots
//! of different environments can be made at once.

pub mod retention;

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::archive::codec::{PumpError, pump};
use crate::archive::layout::Member;
use crate::archive::reader::{Visitor, walk_tar};
use crate::archive::writer::{MemberInfo, TarOptions, TarWriter, now_secs};
use crate::archive::{Compression, Variant, cloud_file_name, detect};
use crate::create::{self, CreateOptions, Output};
use crate::error::{Error, Result};
use crate::output::PendingFile;
use crate::progress::Progress;
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

impl Record {
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
            fs::write(&marker, br#"{"format":"mxsnap-repo","version":1}"#)
                .map_err(|e| Error::io(format!("writing {}", marker.display()), e))?;
        }
        Ok(Repo {
            root: root.to_path_buf(),
        })
    }

    fn lock(&self) -> Result<RepoLock> {
        let path = self.root.join(".lock");
        let file =
            File::create(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        // SAFETY: flock on a descriptor we own; blocking, as every holder is brief.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(
                format!("locking {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
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
        let path = self.record_path(&rec.id);
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(rec).expect("records serialize");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
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
            if rec.state == State::Running
                && !rec.pid.is_some_and(|p| crate::env::process_alive(p as i32))
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
        let found: Vec<Record> = all
            .into_iter()
            .filter(|r| r.id == id || (id.len() >= 8 && r.id.starts_with(id)))
            .collect();
        match found.len() {
            1 => Ok(found.into_iter().next().expect("one")),
            0 => Err(
                Error::usage(format!("no snapshot {id} in {}", self.root.display()))
                    .with_hint("list them with `mxsnap snapshots list`"),
            ),
            _ => Err(Error::usage(format!(
                "{id} matches more than one snapshot; give more of it"
            ))),
        }
    }

    pub fn set_comment(&self, id: &str, comment: &str) -> Result<Record> {
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

    pub fn delete(&self, id: &str) -> Result<Record> {
        let _lock = self.lock()?;
        let rec = self.get(id, Tz::UTC)?;
        if rec.state == State::Running {
            return Err(Error::not_allowed(format!(
                "snapshot {} is still being made (process {})",
                rec.id,
                rec.pid.unwrap_or(0)
            )));
        }
        self.delete_unlocked(&rec)?;
        Ok(rec)
    }

    /// Applies the retention schedule at `now`: every snapshot (of `environment`) with its
    /// decision; unless `dry_run`, the expired ones are deleted.
    pub fn prune(
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

/// What `snapshots create` is asked to do.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub environment: String,
    pub database: Option<String>,
    pub files: PathBuf,
    pub comment: Option<String>,
    pub nightly: bool,
    pub model_version: Option<String>,
    pub pg_bin: Option<PathBuf>,
}

/// Makes a full snapshot into the catalogue: Running first, then Completed with sizes and
/// checksum, or Failed with the reason (and the partial archive removed).
pub fn create_snapshot(
    repo: &Repo,
    req: &SnapshotRequest,
    tz: Tz,
    progress: &dyn Progress,
) -> Result<Record> {
    check_environment(&req.environment)?;
    let id = uuid::Uuid::new_v4().to_string();
    let archive = format!("{id}.tar.gz");
    let mut rec = Record {
        id: id.clone(),
        environment: req.environment.clone(),
        created_by: if req.nightly {
            "Nightly".into()
        } else {
            current_user()
        },
        kind: if req.nightly {
            Kind::Nightly
        } else {
            Kind::Manual
        },
        state: State::Running,
        status_message: Some("creating the snapshot".into()),
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
    };
    {
        let _lock = repo.lock()?;
        repo.save(&rec)?;
    }
    let result = create::create(
        &CreateOptions {
            database: req.database.clone(),
            files: Some(req.files.clone()),
            output: Output::Path(repo.root.join("archives").join(&archive)),
            variant: Variant::Full,
            compression: Compression::Gzip,
            level: None,
            model_version: req.model_version.clone(),
            comment: req.comment.clone(),
            all_files: false,
            strict_layout: false,
            pg_bin: req.pg_bin.clone(),
            force: false,
            keep_dump_as: None,
        },
        progress,
    );
    let _lock = repo.lock()?;
    rec.finished_on = Some(Utc::now());
    rec.pid = None;
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
            let all = repo.load_all(false)?;
            let mut snaps: Vec<_> = all
                .iter()
                .filter(|r| r.environment == rec.environment && r.id != rec.id)
                .map(Record::snap)
                .collect();
            snaps.push(rec.snap());
            let decision = retention::evaluate(&snaps, Utc::now(), tz)
                .pop()
                .expect("ours is last");
            rec.expires_on = decision.expires;
            repo.save(&rec)?;
            Ok(rec)
        }
        Err(e) => {
            rec.state = State::Failed;
            rec.status_message = Some(format!("{e}"));
            repo.save(&rec)?;
            Err(e)
        }
    }
}

/// Streams a stored full snapshot out as the cloud's download of `variant`: the archive itself,
/// its dump as a bare `.backup`, or its tree as a files-only archive. No new dump is made.
pub fn download(
    repo: &Repo,
    rec: &Record,
    variant: Variant,
    output: &Output,
    force: bool,
    progress: &dyn Progress,
) -> Result<Option<PathBuf>> {
    if rec.state != State::Completed {
        return Err(Error::usage(format!(
            "snapshot {} is {:?}, not Completed: there is nothing to download",
            rec.id, rec.state
        )));
    }
    let source = repo
        .archive_path(rec)
        .ok_or_else(|| Error::environment("the record names no archive"))?;
    let tag = &rec.id.replace('-', "")[..8];
    let stamp = rec.created_on.format("%Y%m%d%H%M").to_string();
    let pending = match output {
        Output::Stdout => None,
        Output::Path(p) if p.is_dir() => Some(PendingFile::create(
            &p.join(cloud_file_name(variant, Compression::Gzip, tag, &stamp)),
            force,
        )?),
        Output::Path(p) => Some(PendingFile::create(p, force)?),
    };
    let mut sink: Box<dyn Write> = match &pending {
        Some(p) => Box::new(p.writer()?),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let input =
        File::open(&source).map_err(|e| Error::io(format!("opening {}", source.display()), e))?;
    match variant {
        Variant::Full => {
            use sha2::{Digest, Sha256};
            let mut hasher = Sha256::new();
            let mut input = input;
            pump(&mut input, |chunk| {
                hasher.update(chunk);
                progress.advance(chunk.len() as u64);
                sink.write_all(chunk)
            })
            .map_err(|e| match e {
                PumpError::Read(e) => Error::io(format!("reading {}", source.display()), e),
                PumpError::Write(e) => Error::io("writing the download", e),
            })?;
            let sha = crate::archive::writer::hex(&hasher.finalize());
            if rec.archive_sha256.as_deref() != Some(sha.as_str()) {
                return Err(Error::corrupt(format!(
                    "the stored archive {} no longer matches its recorded SHA-256",
                    source.display()
                ))
                .with_hint("the catalogue's copy is damaged; use another copy"));
            }
        }
        Variant::Database | Variant::Files => {
            let opened = detect::open(Box::new(input))?;
            let mut content = opened.content;
            let mut visitor = Extractor {
                variant,
                tar: None,
                sink: Some(&mut sink),
                found_dump: false,
                progress,
            };
            if variant == Variant::Files {
                let options = TarOptions {
                    compression: Compression::Gzip,
                    level: Compression::Gzip.default_level(),
                    variant: Variant::Files,
                    manifest: true,
                    comment: rec.comment.clone(),
                };
                let sink = visitor.sink.take().expect("set above");
                visitor.tar = Some(
                    TarWriter::new(sink, &options, progress)
                        .map_err(|e| Error::io("writing the download", e))?,
                );
            }
            walk_tar(&mut content, &mut visitor)?;
            if variant == Variant::Database && !visitor.found_dump {
                return Err(Error::corrupt("the stored snapshot holds no database dump"));
            }
            if let Some(tar) = visitor.tar.take() {
                let (w, _) = tar
                    .finish()
                    .map_err(|e| Error::io("writing the download", e))?;
                w.flush()
                    .map_err(|e| Error::io("writing the download", e))?;
            }
        }
    }
    sink.flush()
        .map_err(|e| Error::io("writing the download", e))?;
    drop(sink);
    match pending {
        Some(p) => Ok(Some(p.commit()?)),
        None => Ok(None),
    }
}

struct Extractor<'a, 'p> {
    variant: Variant,
    tar: Option<TarWriter<'p, &'a mut Box<dyn Write>>>,
    sink: Option<&'a mut Box<dyn Write>>,
    found_dump: bool,
    progress: &'p dyn Progress,
}

impl Visitor for Extractor<'_, '_> {
    fn content(&mut self, member: &Member, size: u64, data: &mut dyn std::io::Read) -> Result<()> {
        match (self.variant, member) {
            (Variant::Database, Member::Dump) => {
                self.found_dump = true;
                let sink = self.sink.as_mut().expect("database downloads write raw");
                let progress = self.progress;
                pump(data, |chunk| {
                    progress.advance(chunk.len() as u64);
                    sink.write_all(chunk)
                })
                .map_err(|e| match e {
                    PumpError::Read(e) => Error::reading("reading the stored dump", e),
                    PumpError::Write(e) => Error::io("writing the download", e),
                })?;
                Ok(())
            }
            (Variant::Files, Member::TreeFile(_)) => {
                let path = member.path();
                let info = MemberInfo {
                    path: &path,
                    size,
                    mode: 0o644,
                    mtime: now_secs(),
                };
                self.tar
                    .as_mut()
                    .expect("files downloads write a tar")
                    .append(&info, data)
                    .map_err(|e| Error::io("writing the download", e))
            }
            _ => Ok(()),
        }
    }

    fn finished(&mut self, _member: &Member, _size: u64, _sha256: &str) -> Result<()> {
        Ok(())
    }
}
