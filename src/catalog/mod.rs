//! The snapshot catalogue: a directory of archives and one JSON record per snapshot, with the
//! cloud's retention schedule ([`retention`]).
//!
//! Layout (see docs/FORMAT.md): `mxsnap-repo.json` marks the directory; `snapshots/<id>.json`
//! holds each record, written atomically; `archives/<id>.tar.gz` each full archive; `.lock` is
//! `flock`ed while records change. Archive creation itself runs outside the lock, so snapshots
//! of different environments can be made at once.

pub mod copy;
mod download;
pub mod ops;
pub mod retention;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::objstore::Bucket;
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
    /// The machine of that process (a pid means nothing on another host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the maker of a Running snapshot in an object-store catalogue last said it was
    /// alive; other hosts judge it crashed when this grows old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_on: Option<DateTime<Utc>>,
    /// The id of the multipart upload a Running snapshot's archive is streaming into (an
    /// object-store catalogue): whoever finds the maker crashed aborts it, so its parts do not
    /// stay behind, unseen and billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<PendingUpload>,
    /// The age public keys the archive is encrypted to; `None` when it is not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_to: Option<Vec<String>>,
}

/// A multipart upload under way: the object it will become (below the catalogue's prefix)
/// and the store's id for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingUpload {
    pub key: String,
    pub id: String,
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

/// A catalogue: a directory (records changed under an `flock`), or a bucket prefix
/// (`s3://bucket/prefix`, records changed with conditional puts, no lock at all).
#[derive(Clone)]
pub struct Repo {
    root: PathBuf,
    bucket: Option<Bucket>,
}

struct RepoLock {
    _file: Option<File>,
}

/// How long a Running record on another host lives without a heartbeat before it counts as
/// crashed (four missed beats).
fn stale_after() -> chrono::Duration {
    chrono::Duration::from_std(heartbeat_every() * 4).unwrap_or(chrono::Duration::minutes(2))
}

/// How often a create in an object-store catalogue says it is alive.
pub(crate) fn heartbeat_every() -> std::time::Duration {
    crate::http::env_secs("MXSNAP_HEARTBEAT_SECS", 30)
}

/// This machine's name, recorded with a Running snapshot so that another host does not judge
/// it by a process id that means nothing there.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Where a stored archive's bytes are.
pub enum Stored {
    File(PathBuf),
    Object { bucket: Bucket, key: String },
}

impl Stored {
    pub fn name(&self) -> String {
        match self {
            Stored::File(p) => p.display().to_string(),
            Stored::Object { bucket, key } => format!("{}/{key}", bucket.url()),
        }
    }

    /// Its bytes from the start.
    pub fn open(&self) -> Result<Box<dyn std::io::Read + Send>> {
        match self {
            Stored::File(p) => {
                Ok(Box::new(File::open(p).map_err(|e| {
                    Error::io(format!("opening {}", p.display()), e)
                })?))
            }
            Stored::Object { bucket, key } => Ok(Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                bucket.reader(key)?,
            ))),
        }
    }

    /// As a restore's or verify's source.
    pub fn into_source(self) -> Result<crate::source::Source> {
        Ok(match self {
            Stored::File(p) => crate::source::Source::File(p),
            Stored::Object { .. } => crate::source::Source::Stream {
                name: self.name(),
                reader: self.open()?,
            },
        })
    }
}

/// An archive being written into a catalogue ([`Repo::archive_sink`]); dropped unfinished, it
/// leaves nothing behind.
pub(crate) enum ArchiveSink {
    File {
        file: Option<std::io::BufWriter<File>>,
        partial: PathBuf,
        path: PathBuf,
    },
    Object {
        key: String,
        upload: crate::objstore::Upload,
    },
}

impl ArchiveSink {
    /// The upload to abort should the writer die (object stores only).
    pub(crate) fn pending_upload(&self) -> Option<PendingUpload> {
        match self {
            ArchiveSink::File { .. } => None,
            ArchiveSink::Object { key, upload } => Some(PendingUpload {
                key: key.clone(),
                id: upload.id(),
            }),
        }
    }

    /// Makes the archive appear, whole and durable.
    pub(crate) fn finish(mut self) -> Result<()> {
        match &mut self {
            ArchiveSink::File {
                file,
                partial,
                path,
            } => {
                let f = file.take().expect("finished once");
                let f = f.into_inner().map_err(|e| {
                    Error::io(format!("writing {}", partial.display()), e.into_error())
                })?;
                f.sync_all()
                    .map_err(|e| Error::io(format!("writing {}", partial.display()), e))?;
                fs::rename(&*partial, &*path)
                    .map_err(|e| Error::io(format!("renaming to {}", path.display()), e))?;
                if let Some(dir) = path.parent() {
                    // The rename itself survives a power cut.
                    let _ = File::open(dir).and_then(|d| d.sync_all());
                }
                Ok(())
            }
            ArchiveSink::Object { upload, .. } => upload.finish(),
        }
    }
}

impl std::io::Write for ArchiveSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ArchiveSink::File { file, .. } => file
                .as_mut()
                .ok_or_else(|| std::io::Error::other("finished"))?
                .write(buf),
            ArchiveSink::Object { upload, .. } => upload.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ArchiveSink {
    fn drop(&mut self) {
        match self {
            ArchiveSink::File { file, partial, .. } => {
                if file.take().is_some() {
                    let _ = fs::remove_file(&*partial);
                }
            }
            // An unfinished upload aborts itself when its last handle drops.
            ArchiveSink::Object { .. } => {}
        }
    }
}

fn is_bucket(root: &Path) -> bool {
    root.to_str().is_some_and(crate::objstore::is_s3)
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value)
        .map_err(|e| Error::environment(format!("encoding {what}: {e}")))
}

fn marker(config: &RepoConfig) -> Marker {
    Marker {
        format: "mxsnap-repo".into(),
        version: 1,
        config: config.clone(),
    }
}

impl Repo {
    /// Whether `root` holds a catalogue (an object store that cannot be asked says no; `open`
    /// then tells why).
    pub fn exists(root: &Path) -> bool {
        if is_bucket(root) {
            let url = root.to_string_lossy();
            return Bucket::open(&url)
                .and_then(|b| b.get(MARKER))
                .is_ok_and(|m| m.is_some());
        }
        root.join(MARKER).is_file()
    }

    /// Opens the catalogue at `root` (a directory or `s3://bucket/prefix`), making it when
    /// `create` and it does not exist yet.
    pub fn open(root: &Path, create: bool) -> Result<Repo> {
        let not_one = || {
            Error::usage(format!("{} is not an mxsnap catalogue", root.display()))
                .with_hint("make one with `mxsnap snapshots create --repo DIR ...`")
        };
        if is_bucket(root) {
            let bucket = Bucket::open(&root.to_string_lossy())?;
            if bucket.get(MARKER)?.is_none() {
                if !create {
                    return Err(not_one());
                }
                // Another host making it at the same moment is as good.
                bucket.create(MARKER, encode(MARKER, &marker(&RepoConfig::default()))?)?;
            }
            return Ok(Repo {
                root: PathBuf::from(bucket.url()),
                bucket: Some(bucket),
            });
        }
        let marker_path = root.join(MARKER);
        if !marker_path.is_file() {
            if !create {
                return Err(not_one());
            }
            for dir in [root.join("snapshots"), root.join("archives")] {
                fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            }
            write_json_atomically(&marker_path, &marker(&RepoConfig::default()))?;
        }
        Ok(Repo {
            root: root.to_path_buf(),
            bucket: None,
        })
    }

    /// The object store the catalogue is in, if it is in one.
    pub(crate) fn bucket(&self) -> Option<&Bucket> {
        self.bucket.as_ref()
    }

    /// Whether the catalogue is in an object store.
    pub fn is_object_store(&self) -> bool {
        self.bucket.is_some()
    }

    /// The directory lock; nothing for a bucket, whose changes are conditional puts.
    fn lock(&self) -> Result<RepoLock> {
        if self.bucket.is_some() {
            return Ok(RepoLock { _file: None });
        }
        let path = self.root.join(".lock");
        let file =
            File::create(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        // Blocking, as every holder is brief.
        crate::sys::lock_exclusive(&file, true)
            .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        Ok(RepoLock { _file: Some(file) })
    }

    fn record_key(id: &str) -> String {
        format!("snapshots/{id}.json")
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{id}.json"))
    }

    /// Where the archive is, for messages and plans.
    pub fn archive_path(&self, rec: &Record) -> Option<PathBuf> {
        rec.archive
            .as_ref()
            .map(|a| self.root.join("archives").join(a))
    }

    /// Where a new archive named `name` is written: a file path, or a multipart upload.
    pub(crate) fn archive_output(
        &self,
        name: &str,
    ) -> Result<(crate::create::Output, Option<crate::objstore::Upload>)> {
        match &self.bucket {
            Some(b) => {
                let upload = b.upload(&format!("archives/{name}"))?;
                Ok((
                    crate::create::Output::Writer(Box::new(upload.clone())),
                    Some(upload),
                ))
            }
            None => Ok((
                crate::create::Output::Path(self.root.join("archives").join(name)),
                None,
            )),
        }
    }

    /// Where an archive is written whole before it appears as `archives/<name>`: a partial
    /// file renamed at the end, or a multipart upload completed at the end.
    pub(crate) fn archive_sink(&self, name: &str) -> Result<ArchiveSink> {
        match &self.bucket {
            Some(b) => {
                let key = format!("archives/{name}");
                let upload = b.upload(&key)?;
                Ok(ArchiveSink::Object { key, upload })
            }
            None => {
                let dir = self.root.join("archives");
                fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                // `.<id>.<ext>.copy.partial`: what a prune removes for a crashed record.
                let partial = dir.join(format!(".{name}.copy.partial"));
                let file = File::create(&partial)
                    .map_err(|e| Error::io(format!("creating {}", partial.display()), e))?;
                Ok(ArchiveSink::File {
                    file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
                    partial,
                    path: dir.join(name),
                })
            }
        }
    }

    /// Removes the record `id` only (a failed copy's).
    fn delete_record(&self, id: &str) -> Result<()> {
        match &self.bucket {
            Some(b) => b.delete(&Self::record_key(id)),
            None => {
                let _lock = self.lock()?;
                match fs::remove_file(self.record_path(id)) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(Error::io(format!("removing the record of {id}"), e)),
                }
            }
        }
    }

    /// Writes a record as it is: for a bucket, only where none is yet (a new record).
    fn save_new(&self, rec: &Record) -> Result<()> {
        match &self.bucket {
            Some(b) => {
                if !b.create(&Self::record_key(&rec.id), encode("a record", rec)?)? {
                    return Err(Error::environment(format!(
                        "snapshot {} already exists in {}",
                        rec.id,
                        b.url()
                    )));
                }
                Ok(())
            }
            None => {
                let _lock = self.lock()?;
                self.save(rec)
            }
        }
    }

    /// Writes `rec` whether or not it exists (a create's Running record over its Queued one),
    /// keeping a comment changed meanwhile.
    pub(crate) fn upsert(&self, rec: &Record) -> Result<()> {
        let Some(b) = &self.bucket else {
            let _lock = self.lock()?;
            return self.save(rec);
        };
        let key = Self::record_key(&rec.id);
        loop {
            match b.get(&key)? {
                None => {
                    if b.create(&key, encode("a record", rec)?)? {
                        return Ok(());
                    }
                }
                Some(v) => {
                    let current = read_record(&key, &v.bytes)?;
                    let mut new = rec.clone();
                    new.comment = current.comment;
                    if b.replace(&key, encode("a record", &new)?, &v.etag)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn save(&self, rec: &Record) -> Result<()> {
        write_json_atomically(&self.record_path(&rec.id), rec)
    }

    /// Changes the record `id` with `change`: under the lock for a directory; for a bucket as
    /// a compare-and-swap on its ETag, read again and retried when another host changed it.
    pub(crate) fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Record) -> Result<()>,
    ) -> Result<Record> {
        let Some(b) = &self.bucket else {
            let _lock = self.lock()?;
            let path = self.record_path(id);
            let mut rec = read_record(&path.display().to_string(), &read_file(&path)?)?;
            change(&mut rec)?;
            self.save(&rec)?;
            return Ok(rec);
        };
        let key = Self::record_key(id);
        loop {
            let Some(v) = b.get(&key)? else {
                return Err(Error::usage(format!("no snapshot {id} in {}", b.url())));
            };
            let mut rec = read_record(&key, &v.bytes)?;
            change(&mut rec)?;
            if b.replace(&key, encode("a record", &rec)?, &v.etag)? {
                return Ok(rec);
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The catalogue's settings.
    pub fn config(&self) -> Result<RepoConfig> {
        let (name, data) = match &self.bucket {
            Some(b) => (
                format!("{}/{MARKER}", b.url()),
                b.get(MARKER)?.map(|v| v.bytes).unwrap_or_default(),
            ),
            None => {
                let path = self.root.join(MARKER);
                (path.display().to_string(), read_file(&path)?)
            }
        };
        let marker: Marker = serde_json::from_slice(&data)
            .map_err(|e| Error::environment(format!("{name} is unreadable: {e}")))?;
        Ok(marker.config)
    }

    pub(crate) fn set_config(&self, config: &RepoConfig) -> Result<()> {
        if let Some(b) = &self.bucket {
            // Last writer wins, as with the directory's lock: settings are not merged.
            loop {
                let Some(current) = b.get(MARKER)? else {
                    return Err(Error::environment(format!(
                        "{}/{MARKER} is gone: the catalogue was removed",
                        b.url()
                    )));
                };
                let etag = current.etag;
                if b.replace(MARKER, encode(MARKER, &marker(config))?, &etag)? {
                    return Ok(());
                }
            }
        }
        let _lock = self.lock()?;
        write_json_atomically(&self.root.join(MARKER), &marker(config))
    }

    /// The archive of a snapshot that can be restored or downloaded: a Completed one.
    pub fn completed(&self, rec: &Record, what: &str) -> Result<Stored> {
        if rec.state != State::Completed {
            return Err(Error::usage(format!(
                "snapshot {} is {:?}, not Completed: {what}",
                rec.id, rec.state
            )));
        }
        let name = rec.archive.as_ref().ok_or_else(|| {
            Error::environment(format!("the record of {} names no archive", rec.id))
        })?;
        Ok(match &self.bucket {
            Some(b) => Stored::Object {
                bucket: b.clone(),
                key: format!("archives/{name}"),
            },
            None => Stored::File(self.root.join("archives").join(name)),
        })
    }

    /// The archive of a Completed snapshot as a local file (what the service serves).
    pub fn completed_archive(&self, rec: &Record, what: &str) -> Result<PathBuf> {
        match self.completed(rec, what)? {
            Stored::File(p) => Ok(p),
            Stored::Object { .. } => Err(Error::usage(format!(
                "{} is in an object store, which this operation does not read yet",
                self.root.display()
            ))),
        }
    }

    /// Whether a Running or Queued record's maker is gone: a dead process on this host, or,
    /// from another host, a heartbeat not renewed in time.
    fn crashed(rec: &Record) -> bool {
        if !matches!(rec.state, State::Running | State::Queued) {
            return false;
        }
        let here = rec.host.as_deref().is_none_or(|h| h == host_name());
        if here {
            !rec.pid.is_some_and(|p| crate::sys::process_alive(p as i32))
        } else {
            rec.heartbeat_on
                .is_none_or(|t| Utc::now() - t > stale_after())
        }
    }

    /// Every record, oldest first. A Running record whose process is gone is reported as
    /// Failed (it crashed); `repair` also rewrites it and removes its partial archive.
    fn load_all(&self, repair: bool) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for (name, data) in self.read_records()? {
            let mut rec = read_record(&name, &data)?;
            if Self::crashed(&rec) {
                rec.state = State::Failed;
                rec.status_message = Some(
                    "interrupted: the process making this snapshot died before finishing"
                        .to_string(),
                );
                if repair {
                    self.remove_partials(&rec)?;
                    if self.bucket.is_some() {
                        // Only if it is still the crashed one: a beat since wins.
                        let _ = self.update(&rec.id, |cur| {
                            if Self::crashed(cur) {
                                cur.state = State::Failed;
                                cur.status_message = rec.status_message.clone();
                                cur.upload = None;
                            }
                            Ok(())
                        });
                    } else {
                        self.save(&rec)?;
                    }
                }
            }
            out.push(rec);
        }
        out.sort_by_key(|r| r.created_on);
        Ok(out)
    }

    /// Each record's name (for messages) and bytes.
    fn read_records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        if let Some(b) = &self.bucket {
            for listed in b.list("snapshots")? {
                if !listed.key.ends_with(".json") {
                    continue;
                }
                // Gone since the listing: deleted by another host.
                if let Some(v) = b.get(&listed.key)? {
                    out.push((listed.key, v.bytes));
                }
            }
            return Ok(out);
        }
        let dir = self.root.join("snapshots");
        for entry in
            fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
        {
            let path = entry
                .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
                .path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let data = read_file(&path)?;
            out.push((path.display().to_string(), data));
        }
        Ok(out)
    }

    fn remove_partials(&self, rec: &Record) -> Result<()> {
        let id = &rec.id;
        if let Some(b) = &self.bucket {
            if let Some(upload) = &rec.upload {
                b.abort_upload(&upload.key, &upload.id)?;
            }
            // A crashed create's archive is visible only if its upload completed.
            for listed in b.list("archives")? {
                if listed.key.starts_with(&format!("archives/{id}.")) {
                    b.delete(&listed.key)?;
                }
            }
            return Ok(());
        }
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
        let id = self.get(id, Tz::UTC)?.id;
        self.update(&id, |rec| {
            rec.comment = Some(comment.to_string());
            Ok(())
        })
    }

    fn delete_unlocked(&self, rec: &Record) -> Result<()> {
        if let Some(b) = &self.bucket {
            // The record first: it is what makes a snapshot exist; an archive left by a crash
            // between the two is swept by the next prune.
            b.delete(&Self::record_key(&rec.id))?;
            if let Some(a) = &rec.archive {
                b.delete(&format!("archives/{a}"))?;
            }
            return self.remove_partials(rec);
        }
        if let Some(path) = self.archive_path(rec) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
            }
        }
        self.remove_partials(rec)?;
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

    /// Archives no record names (left by a crash between removing a record and its archive).
    /// Listed before the records: a create writes its record before its upload starts, so an
    /// archive seen here whose record is missing below is really an orphan.
    fn sweep_orphans(&self) -> Result<()> {
        let Some(b) = &self.bucket else {
            return Ok(());
        };
        let archives = b.list("archives")?;
        let ids: std::collections::HashSet<String> = b
            .list("snapshots")?
            .into_iter()
            .filter_map(|l| {
                l.key
                    .strip_prefix("snapshots/")
                    .and_then(|k| k.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .collect();
        for a in archives {
            let id = a
                .key
                .strip_prefix("archives/")
                .and_then(|n| n.split('.').next())
                .unwrap_or_default();
            if !ids.contains(id) {
                b.delete(&a.key)?;
            }
        }
        Ok(())
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
        if !dry_run {
            self.sweep_orphans()?;
        }
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

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

fn read_record(name: &str, data: &[u8]) -> Result<Record> {
    serde_json::from_slice(data)
        .map_err(|e| Error::environment(format!("{name} is not a snapshot record: {e}")))
}

fn current_user() -> String {
    crate::pg::conn::current_os_user().unwrap_or_else(|| "unknown".into())
}
