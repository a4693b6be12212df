//! The service's jobs: each long task (making a snapshot, preparing an archive, a restore) runs
//! on a thread of its own, one per environment at a time, and is a record in the catalogue
//! (`serve/jobs/<id>.json`: a file beside a directory catalogue, an object in an object-store
//! one, written create-only and then compare-and-swap on its ETag), so a job outlives the
//! request that started it and is still there after a restart; one that was running when its
//! server died is failed as "interrupted" by that host's next start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::write_json_atomically;
use crate::progress::{Cancel, Tracker};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Snapshot,
    Archive,
    Restore,
    /// Data uploaded on the Backups page, verified and restored with the rest cleared.
    Upload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    /// The environment it works on (the catalogue's name: `<app>.<Mode>`).
    pub environment: String,
    pub state: JobState,
    pub status_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The snapshot made, archived or restored.
    pub snapshot_id: Option<String>,
    /// Archives: `files_and_database`, `database_only` or `files_only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<String>,
    /// Restores: the environment the snapshot came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_environment: Option<String>,
    /// Archives: until when the download link is good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_expires_at: Option<DateTime<Utc>>,
    /// The machine whose service runs it: only that host's next start may call it interrupted
    /// (several services can share one object-store catalogue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Which service on that host (from its state directory): two services on one machine
    /// sharing a catalogue judge only their own jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Job {
    pub fn new(kind: JobKind, environment: &str) -> Job {
        let now = Utc::now();
        Job {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            environment: environment.to_string(),
            state: JobState::Queued,
            status_message: Some("queued".into()),
            created_at: now,
            updated_at: now,
            finished_at: None,
            snapshot_id: None,
            data_type: None,
            source_environment: None,
            url_expires_at: None,
            host: Some(crate::catalog::host_name()),
            service: None,
        }
    }
}

/// What a finished job hands back for its record.
#[derive(Debug, Default)]
pub struct Done {
    pub message: Option<String>,
    pub url_expires_at: Option<DateTime<Utc>>,
}

/// A claim on an environment, taken before a job is planned so that two requests cannot both
/// start one; released when dropped unless a job took it over.
pub struct Ticket {
    jobs: Arc<JobsInner>,
    environment: String,
    taken: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.taken {
            self.jobs.lock().busy.remove(&self.environment);
        }
    }
}

struct State {
    /// Environment -> the job (or the pending claim, "") holding it.
    busy: HashMap<String, String>,
    /// Running jobs' progress.
    trackers: HashMap<String, Arc<Tracker>>,
    /// Snapshot id -> the job making it.
    making: HashMap<String, String>,
    threads: Vec<JoinHandle<()>>,
}

/// Where job records live.
pub enum JobStore {
    Dir(PathBuf),
    /// `serve/jobs/` in an object-store catalogue; the ETags of the records this process wrote
    /// are kept, so that each change is a compare-and-swap on the version it made.
    Bucket {
        bucket: crate::objstore::Bucket,
        etags: Mutex<HashMap<String, String>>,
        /// The records this process wrote, as written: read back without a request (a job's
        /// waiters poll it).
        saved: Mutex<HashMap<String, Job>>,
    },
}

impl JobStore {
    fn key(id: &str) -> String {
        format!("serve/jobs/{id}.json")
    }

    fn save(&self, job: &Job) -> Result<()> {
        match self {
            JobStore::Dir(dir) => write_json_atomically(&dir.join(format!("{}.json", job.id)), job),
            JobStore::Bucket {
                bucket,
                etags,
                saved,
            } => {
                let key = Self::key(&job.id);
                let bytes = serde_json::to_vec_pretty(job)
                    .map_err(|e| Error::environment(format!("encoding job {}: {e}", job.id)))?;
                let known = etags.lock().unwrap().get(&job.id).cloned();
                let mut written = match &known {
                    None => bucket.create_tagged(&key, bytes.clone())?,
                    Some(etag) => bucket.replace_tagged(&key, bytes.clone(), etag)?,
                };
                if written.is_none() {
                    // Changed by another writer (a host that judged it interrupted): this
                    // process runs the job, so its state stands, on the current version.
                    let current = bucket.get(&key)?.map(|v| v.etag);
                    written = match current {
                        Some(etag) => bucket.replace_tagged(&key, bytes, &etag)?,
                        None => bucket.create_tagged(&key, bytes)?,
                    };
                }
                let etag = written.ok_or_else(|| {
                    Error::environment(format!("job {} changed while it was written", job.id))
                })?;
                etags.lock().unwrap().insert(job.id.clone(), etag);
                saved.lock().unwrap().insert(job.id.clone(), job.clone());
                Ok(())
            }
        }
    }

    fn load(&self, id: &str) -> Option<Job> {
        let bytes = match self {
            JobStore::Dir(dir) => std::fs::read(dir.join(format!("{id}.json"))).ok()?,
            JobStore::Bucket { bucket, saved, .. } => {
                if let Some(job) = saved.lock().unwrap().get(id) {
                    return Some(job.clone());
                }
                bucket.get(&Self::key(id)).ok()??.bytes
            }
        };
        serde_json::from_slice(&bytes).ok()
    }

    /// Every job record (those unreadable are skipped).
    fn all(&self) -> Result<Vec<Job>> {
        let mut out = Vec::new();
        match self {
            JobStore::Dir(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                for entry in std::fs::read_dir(dir)
                    .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
                {
                    let path = entry
                        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
                        .path();
                    if path.extension().is_none_or(|x| x != "json") {
                        continue;
                    }
                    if let Some(job) = std::fs::read(&path)
                        .ok()
                        .and_then(|t| serde_json::from_slice::<Job>(&t).ok())
                    {
                        out.push(job);
                    }
                }
            }
            JobStore::Bucket { bucket, etags, .. } => {
                for listed in bucket.list("serve/jobs")? {
                    if let Some(v) = bucket.get(&listed.key)? {
                        if let Ok(job) = serde_json::from_slice::<Job>(&v.bytes) {
                            etags.lock().unwrap().insert(job.id.clone(), v.etag);
                            out.push(job);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

struct JobsInner {
    store: JobStore,
    /// This service's identity, written into each job it starts.
    service: String,
    state: Mutex<State>,
    cancel: Cancel,
}

impl JobsInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, job: &Job) -> Result<()> {
        self.store.save(job)
    }
}

#[derive(Clone)]
pub struct Jobs(Arc<JobsInner>);

/// "42% of 1.2 GiB": how far a job is, from its tracker.
fn progress_message(t: &Tracker) -> String {
    let s = t.status();
    let stage = s.stage.unwrap_or_else(|| "starting".into());
    match s.bytes_total {
        Some(total) if total > 0 => format!(
            "{stage}: {} of {total} bytes ({}%)",
            s.bytes_done.min(total),
            s.bytes_done.min(total) * 100 / total
        ),
        _ if s.bytes_done > 0 => format!("{stage}: {} bytes", s.bytes_done),
        _ => stage,
    }
}

impl Jobs {
    /// Opens the job records in `store`; those this service (`service`, on this host) left
    /// queued or running when it stopped are failed as interrupted; other services' jobs are
    /// theirs to judge. `cancel` stops every running job (the server's shutdown).
    pub fn open(store: JobStore, service: &str, cancel: Cancel) -> Result<(Jobs, Vec<Job>)> {
        let inner = JobsInner {
            store,
            service: service.to_string(),
            state: Mutex::new(State {
                busy: HashMap::new(),
                trackers: HashMap::new(),
                making: HashMap::new(),
                threads: Vec::new(),
            }),
            cancel,
        };
        let here = crate::catalog::host_name();
        let mut interrupted = Vec::new();
        for mut job in inner.store.all()? {
            // Records from before services had an identity are judged by host alone.
            let ours = match &job.service {
                Some(s) => *s == inner.service,
                None => job.host.as_deref().is_none_or(|h| h == here),
            };
            if ours && matches!(job.state, JobState::Queued | JobState::Running) {
                job.state = JobState::Failed;
                job.status_message = Some("interrupted: the server stopped while it ran".into());
                job.finished_at = Some(Utc::now());
                job.updated_at = Utc::now();
                inner.save(&job)?;
                interrupted.push(job);
            }
        }
        Ok((Jobs(Arc::new(inner)), interrupted))
    }

    /// Claims `environment` for a job about to be planned; `None` while another job holds it.
    pub fn claim(&self, environment: &str) -> Option<Ticket> {
        let mut s = self.0.lock();
        if s.busy.contains_key(environment) {
            return None;
        }
        s.busy.insert(environment.to_string(), String::new());
        Some(Ticket {
            jobs: self.0.clone(),
            environment: environment.to_string(),
            taken: false,
        })
    }

    /// Records `job` as queued and runs `work` on a thread of its own, holding the ticket's
    /// environment until it ends.
    pub fn start(
        &self,
        mut ticket: Ticket,
        job: Job,
        work: impl FnOnce(&Tracker, &Cancel) -> Result<Done> + Send + 'static,
    ) -> Result<Job> {
        let mut job = job;
        job.service = Some(self.0.service.clone());
        self.0.save(&job)?;
        let tracker = Arc::new(Tracker::new());
        {
            let mut s = self.0.lock();
            s.busy.insert(ticket.environment.clone(), job.id.clone());
            s.trackers.insert(job.id.clone(), tracker.clone());
            if let (JobKind::Snapshot, Some(snap)) = (job.kind, &job.snapshot_id) {
                s.making.insert(snap.clone(), job.id.clone());
            }
        }
        ticket.taken = true;
        let inner = self.0.clone();
        let environment = ticket.environment.clone();
        let mut record = job.clone();
        let thread = std::thread::spawn(move || {
            record.state = JobState::Running;
            record.status_message = Some("running".into());
            record.updated_at = Utc::now();
            let _ = inner.save(&record);
            let result = work(&tracker, &inner.cancel);
            crate::sys::crash_point("job-ending");
            let now = Utc::now();
            record.updated_at = now;
            record.finished_at = Some(now);
            match result {
                Ok(done) => {
                    record.state = JobState::Completed;
                    record.status_message =
                        Some(done.message.unwrap_or_else(|| "completed".into()));
                    record.url_expires_at = done.url_expires_at;
                }
                Err(e) => {
                    record.state = JobState::Failed;
                    let mut message = e.message().to_string();
                    if let Some(h) = e.hint() {
                        message.push_str(&format!(" ({h})"));
                    }
                    record.status_message = Some(message);
                }
            }
            // The final record is written under the lock that claims take, so that whoever
            // sees the job ended finds its environment free.
            let mut s = inner.lock();
            let _ = inner.save(&record);
            s.busy.remove(&environment);
            s.trackers.remove(&record.id);
            s.making.retain(|_, j| *j != record.id);
        });
        let mut s = self.0.lock();
        s.threads.retain(|t| !t.is_finished());
        s.threads.push(thread);
        Ok(job)
    }

    /// A job as it stands (a running one's message says how far it is).
    pub fn get(&self, id: &str) -> Option<Job> {
        uuid::Uuid::parse_str(id).ok()?;
        let mut job = self.0.store.load(id)?;
        if job.state == JobState::Running {
            if let Some(t) = self.0.lock().trackers.get(id) {
                job.status_message = Some(progress_message(t));
            }
        }
        Some(job)
    }

    /// A running job's progress (stage, bytes of total); `None` once it has ended.
    pub fn progress(&self, id: &str) -> Option<crate::progress::Status> {
        self.0.lock().trackers.get(id).map(|t| t.status())
    }

    /// The job making snapshot `id`, while it runs.
    pub fn running_for_snapshot(&self, id: &str) -> Option<Job> {
        let job = self.0.lock().making.get(id).cloned()?;
        self.get(&job)
    }

    /// Waits for the job to end and returns its record.
    pub fn wait(&self, id: &str) -> Option<Job> {
        loop {
            let job = self.get(id)?;
            if matches!(job.state, JobState::Completed | JobState::Failed) {
                return Some(job);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The job holding `environment`, while one runs.
    pub fn holder(&self, environment: &str) -> Option<String> {
        self.0
            .lock()
            .busy
            .get(environment)
            .filter(|id| !id.is_empty())
            .cloned()
    }

    /// Whether any job holds `environment`.
    pub fn busy(&self, environment: &str) -> bool {
        self.0.lock().busy.contains_key(environment)
    }

    /// Waits for every job thread (after the cancel was set, they end quickly: a restore
    /// rolls back, a create removes its partial archive).
    pub fn join_all(&self) {
        let threads = std::mem::take(&mut self.0.lock().threads);
        for t in threads {
            let _ = t.join();
        }
    }
}
