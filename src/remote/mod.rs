//! A client for the cloud's Backups API, v1 and v2, so that "the cloud has a backup" becomes
//! "my local app runs on it" in one command. The base URL is configurable: the same client
//! talks to the cloud (`https://deploy.mendix.com`) and to `mxsnap serve`.
//!
//! Everything here is blocking, like the rest of the library. The API key goes in the
//! `Mendix-ApiKey` header of API requests only; download links are pre-signed and get no
//! credentials (they may point at another host). Errors name the API's error code and say what
//! to do; they never quote the key.

pub mod credentials;
pub mod fetch;

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;

pub use credentials::Credentials;

use crate::archive::Variant;
use crate::error::{Error, ErrorKind, Result};
use crate::http::env_secs;
use crate::progress::{Cancel, Progress};

/// The cloud's deploy API.
pub const DEFAULT_BASE_URL: &str = "https://deploy.mendix.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ApiVersion {
    /// `/api/1/apps/<AppId>/environments/<Mode>`: the app's name and Test, Acceptance,
    /// Production or a flexible environment's name.
    V1,
    /// `/api/v2/apps/<ProjectId>/environments/<EnvironmentId>`: both UUIDs.
    V2,
}

impl ApiVersion {
    /// v2 when both ids are UUIDs (only v2 takes those), else v1.
    pub fn guess(app: &str, environment: &str) -> ApiVersion {
        let uuid = |s: &str| uuid::Uuid::parse_str(s).is_ok();
        if uuid(app) && uuid(environment) {
            ApiVersion::V2
        } else {
            ApiVersion::V1
        }
    }
}

pub struct RemoteOptions {
    pub base_url: String,
    pub api: Option<ApiVersion>,
    pub app: String,
    pub environment: String,
    pub credentials: Credentials,
}

/// A snapshot as either version shows it, in one shape.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteSnapshot {
    pub id: String,
    /// `queued`, `running`, `completed` or `failed` (v1's `Completed` etc. in lower case).
    pub state: String,
    pub comment: Option<String>,
    pub model_version: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status_message: Option<String>,
}

impl RemoteSnapshot {
    pub fn is_completed(&self) -> bool {
        self.state == "completed"
    }
    fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "completed" | "failed")
    }
}

/// A download link of one variant of a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub snapshot_id: String,
    pub variant: Variant,
    pub url: String,
    /// v2 says until when the link works (8 hours); v1 does not.
    pub expires_at: Option<DateTime<Utc>>,
}

pub struct Remote {
    agent: ureq::Agent,
    base: String,
    api: ApiVersion,
    app: String,
    environment: String,
    credentials: Credentials,
    /// How long a wait for a snapshot, an archive or a restore may take.
    wait_limit: Duration,
    /// How long GETs are retried while the service is unavailable.
    give_up: Duration,
}

/// How a request ended.
enum Outcome {
    Answer(Value),
    /// The API said no.
    Refused(Failure),
    /// No answer: the connection failed (worth retrying a GET).
    Unreachable(Error),
}

/// The API's answer to a request that did not succeed.
struct Failure {
    status: u16,
    code: String,
    message: String,
}

/// Ids go into URL paths: only what the API's ids are made of is let through.
fn path_segment(what: &str, value: &str) -> Result<String> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value != "."
        && value != "..";
    if ok {
        Ok(value.to_string())
    } else {
        Err(Error::usage(format!(
            "{what} {value:?} is not an id the Backups API knows (letters, digits, '-', '_', '.')"
        )))
    }
}

fn epoch_ms(v: &Value) -> Option<DateTime<Utc>> {
    v.as_i64()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

fn iso(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

fn snapshot_v1(v: &Value) -> Option<RemoteSnapshot> {
    Some(RemoteSnapshot {
        id: text(&v["SnapshotID"])?,
        state: text(&v["State"])?.to_ascii_lowercase(),
        comment: text(&v["Comment"]),
        model_version: text(&v["ModelVersion"]),
        created_at: epoch_ms(&v["CreatedOn"]),
        expires_at: epoch_ms(&v["ExpiresOn"]),
        finished_at: None,
        status_message: None,
    })
}

fn snapshot_v2(v: &Value) -> Option<RemoteSnapshot> {
    Some(RemoteSnapshot {
        id: text(&v["snapshot_id"])?,
        state: text(&v["state"])?.to_ascii_lowercase(),
        comment: text(&v["comment"]),
        model_version: text(&v["model_version"]),
        created_at: iso(&v["created_at"]),
        expires_at: iso(&v["expires_at"]),
        finished_at: iso(&v["finished_at"]),
        status_message: text(&v["status_message"]),
    })
}

fn data_type(variant: Variant) -> &'static str {
    match variant {
        Variant::Full => "files_and_database",
        Variant::Database => "database_only",
        Variant::Files => "files_only",
    }
}

/// Sleeps `pause` (growing to 5 s) in slices, so a cancel is seen within a tenth of a second.
fn pause(pause: &mut Duration, cancel: &Cancel) -> Result<()> {
    let until = Instant::now() + *pause;
    while Instant::now() < until {
        cancel.check()?;
        std::thread::sleep(Duration::from_millis(100).min(*pause));
    }
    *pause = (*pause * 2).min(Duration::from_secs(5));
    Ok(())
}

impl Remote {
    pub fn new(opts: RemoteOptions) -> Result<Remote> {
        let base = opts.base_url.trim_end_matches('/').to_string();
        if !crate::http::is_url(&base) {
            return Err(Error::usage(format!(
                "the API's base URL {} is not http:// or https://",
                crate::http::shown(&base)
            )));
        }
        let api = opts
            .api
            .unwrap_or_else(|| ApiVersion::guess(&opts.app, &opts.environment));
        let app = path_segment("the app", &opts.app)?;
        let environment = path_segment("the environment", &opts.environment)?;
        if api == ApiVersion::V2 {
            for (what, id) in [("project", &app), ("environment", &environment)] {
                if uuid::Uuid::parse_str(id).is_err() {
                    return Err(Error::usage(format!(
                        "v2 of the Backups API names the {what} by its UUID, not {id:?}"
                    ))
                    .with_hint(
                        "the Portal's environment details show both ids; or use --api v1 with \
                         the app's name and Test, Acceptance or Production",
                    ));
                }
            }
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Ok(Remote {
            agent,
            base,
            api,
            app,
            environment,
            credentials: opts.credentials,
            wait_limit: env_secs("MXSNAP_REMOTE_WAIT_SECS", 6 * 3600),
            give_up: env_secs("MXSNAP_HTTP_GIVE_UP_SECS", 120),
        })
    }

    pub fn api(&self) -> ApiVersion {
        self.api
    }

    /// What the environment is called in messages.
    pub fn describe(&self) -> String {
        format!(
            "{}/{} at {} (API {})",
            self.app,
            self.environment,
            crate::http::shown(&self.base),
            match self.api {
                ApiVersion::V1 => "v1",
                ApiVersion::V2 => "v2",
            }
        )
    }

    fn env_url(&self) -> String {
        match self.api {
            ApiVersion::V1 => format!(
                "{}/api/1/apps/{}/environments/{}",
                self.base, self.app, self.environment
            ),
            ApiVersion::V2 => format!(
                "{}/api/v2/apps/{}/environments/{}",
                self.base, self.app, self.environment
            ),
        }
    }

    /// One request.
    fn request(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Outcome> {
        let auth = |b: ureq::http::request::Builder| {
            b.header("Mendix-Username", &self.credentials.username)
                .header("Mendix-ApiKey", &self.credentials.api_key)
                .header("Accept", "application/json")
        };
        let req = auth(ureq::http::Request::builder().method(method).uri(url));
        let shown = crate::http::shown(url);
        let resp = match body {
            Some(b) => self.agent.run(
                req.header("Content-Type", "application/json")
                    .body(b.to_string())
                    .map_err(|e| Error::usage(format!("{shown}: {e}")))?,
            ),
            None => self.agent.run(
                req.body(())
                    .map_err(|e| Error::usage(format!("{shown}: {e}")))?,
            ),
        };
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return Ok(Outcome::Unreachable(
                    Error::environment(format!("{method} {shown}: {e}"))
                        .with_hint("check the API's base URL (--api-url) and the network"),
                ));
            }
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| {
            Error::environment(format!("{method} {shown}: reading the answer: {e}"))
        })?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(Outcome::Answer(Value::Null));
            }
            return serde_json::from_str(&text)
                .map(Outcome::Answer)
                .map_err(|e| {
                    Error::environment(format!(
                        "{method} {shown}: the answer is not JSON ({e}); is this the Backups API?"
                    ))
                });
        }
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Outcome::Refused(Failure {
            status,
            code: text_or(&parsed["errorCode"], ""),
            message: text_or(&parsed["errorMessage"], text.trim()),
        }))
    }

    /// A request whose failure is an error; GETs are retried while the service is
    /// unavailable (5xx other than v1's "not ready yet", 429), for a bounded time.
    fn call(&self, method: &str, url: &str, body: Option<&Value>, what: &str) -> Result<Value> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(250);
        loop {
            let outcome = self.request(method, url, body)?;
            let retry = method == "GET"
                && match &outcome {
                    Outcome::Unreachable(_) => true,
                    Outcome::Refused(f) => matches!(f.status, 429 | 502 | 503 | 504),
                    Outcome::Answer(_) => false,
                };
            if !retry || started.elapsed() >= self.give_up {
                return match outcome {
                    Outcome::Answer(v) => Ok(v),
                    Outcome::Refused(f) => Err(self.failure(f, what)),
                    Outcome::Unreachable(e) => Err(e.context(what)),
                };
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(4));
        }
    }

    /// The API's refusal, as what happened and what to do.
    fn failure(&self, f: Failure, what: &str) -> Error {
        let code = if f.code.is_empty() {
            String::new()
        } else {
            format!(" {}", f.code)
        };
        let message = format!(
            "{what}: the Backups API answered {}{code}: {}",
            f.status, f.message
        );
        let (kind, hint): (ErrorKind, String) = match (f.status, f.code.as_str()) {
            (401, _) => (
                ErrorKind::Usage,
                "the API did not accept the user name and API key: check MENDIX_USERNAME and \
                 MENDIX_APIKEY (or the credentials file)"
                    .into(),
            ),
            (_, "NO_ACCESS") | (403, _) => (
                ErrorKind::NotAllowed,
                format!(
                    "{} may not use the backups of this environment: ask for the API access \
                     and Backups permissions",
                    self.credentials.username
                ),
            ),
            (_, "ERROR_NOT_ALLOWED") => (
                ErrorKind::NotAllowed,
                "stop the environment first (in the Portal, or with the Deploy API), then run \
                 this again"
                    .into(),
            ),
            (_, "ENVIRONMENT_BUSY") => (
                ErrorKind::NotAllowed,
                "another backup or restore of this environment is running: wait for it to \
                 finish, then try again"
                    .into(),
            ),
            (_, "ENVIRONMENT_NOT_FOUND" | "INVALID_ENVIRONMENT") => (
                ErrorKind::Usage,
                match self.api {
                    ApiVersion::V1 => "check --app (the app's name) and --env (Test, Acceptance, \
                                       Production or a flexible environment's name)"
                        .into(),
                    ApiVersion::V2 => "check --app and --env: the project and environment \
                                       UUIDs of the Portal's environment details"
                        .into(),
                },
            ),
            (_, "NOT_FOUND" | "SNAPSHOT_NOT_FOUND") => (
                ErrorKind::Usage,
                "`mxsnap remote list` shows the environment's snapshots and their ids".into(),
            ),
            (_, "INVALID_STATE") => (
                ErrorKind::NotAllowed,
                "the snapshot is not completed (still being made, or failed): wait for it, or \
                 pick another"
                    .into(),
            ),
            (_, "UNSUPPORTED" | "NOT_SUPPORTED") => (
                ErrorKind::Usage,
                "this API does not offer that here (the cloud's v2 archives only \
                 files_and_database and database_only; v1's links include files only)"
                    .into(),
            ),
            (_, "INVALID_PARAMETERS") => (
                ErrorKind::Usage,
                "the request was refused as malformed; check the ids and the comment".into(),
            ),
            (s, _) if s >= 500 => (
                ErrorKind::Environment,
                "the service failed or is unavailable: try again later".into(),
            ),
            (404, _) => (
                ErrorKind::Usage,
                "no such resource: check --api-url, --api, --app and --env".into(),
            ),
            _ => (ErrorKind::Environment, "see the API's message above".into()),
        };
        Error::new(kind, message).with_hint(hint)
    }

    /// Every snapshot of the environment, newest first.
    pub fn list(&self) -> Result<Vec<RemoteSnapshot>> {
        let what = format!("listing the snapshots of {}", self.describe());
        let mut out = Vec::new();
        match self.api {
            ApiVersion::V1 => {
                let v = self.call("GET", &format!("{}/snapshots", self.env_url()), None, &what)?;
                let items = v.as_array().ok_or_else(|| unexpected(&what, &v))?;
                for item in items {
                    out.push(snapshot_v1(item).ok_or_else(|| unexpected(&what, item))?);
                }
            }
            ApiVersion::V2 => loop {
                let url = format!(
                    "{}/snapshots?offset={}&limit=100",
                    self.env_url(),
                    out.len()
                );
                let v = self.call("GET", &url, None, &what)?;
                let page = v["snapshots"]
                    .as_array()
                    .ok_or_else(|| unexpected(&what, &v))?;
                for item in page {
                    out.push(snapshot_v2(item).ok_or_else(|| unexpected(&what, item))?);
                }
                let total = v["total"].as_u64().unwrap_or(0) as usize;
                if page.is_empty() || out.len() >= total {
                    break;
                }
            },
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(out)
    }

    /// One snapshot by id (v1 has no such call: it is found in the list).
    pub fn snapshot(&self, id: &str) -> Result<RemoteSnapshot> {
        let id = path_segment("the snapshot", id)?;
        match self.api {
            ApiVersion::V1 => self
                .list()?
                .into_iter()
                .find(|s| s.id == id)
                .ok_or_else(|| {
                    Error::usage(format!("{} has no snapshot {id}", self.describe())).with_hint(
                        "`mxsnap remote list` shows the environment's snapshots and their ids",
                    )
                }),
            ApiVersion::V2 => {
                let what = format!("reading snapshot {id} of {}", self.describe());
                let v = self.call(
                    "GET",
                    &format!("{}/snapshots/{id}", self.env_url()),
                    None,
                    &what,
                )?;
                snapshot_v2(&v).ok_or_else(|| unexpected(&what, &v))
            }
        }
    }

    /// `latest` (the newest completed snapshot) or an id, which must be completed.
    pub fn completed(&self, which: &str) -> Result<RemoteSnapshot> {
        let snap = if which == "latest" {
            self.list()?
                .into_iter()
                .find(RemoteSnapshot::is_completed)
                .ok_or_else(|| {
                    Error::usage(format!("{} has no completed snapshot", self.describe()))
                        .with_hint("make one with `mxsnap remote create --wait`")
                })?
        } else {
            self.snapshot(which)?
        };
        if !snap.is_completed() {
            return Err(Error::not_allowed(format!(
                "snapshot {} of {} is {}, not completed",
                snap.id,
                self.describe(),
                snap.state
            ))
            .with_hint(match snap.state.as_str() {
                "failed" => "pick another snapshot; `mxsnap remote list` shows them",
                _ => "wait for it: `mxsnap remote wait <id>`",
            }));
        }
        Ok(snap)
    }

    /// Asks for a new snapshot; it is made in the background (see [`Remote::wait`]).
    pub fn create(&self, comment: Option<&str>) -> Result<RemoteSnapshot> {
        let what = format!("creating a snapshot of {}", self.describe());
        let url = format!("{}/snapshots", self.env_url());
        let (body, parse): (Value, fn(&Value) -> Option<RemoteSnapshot>) = match self.api {
            ApiVersion::V1 => (serde_json::json!({"Comment": comment}), snapshot_v1),
            ApiVersion::V2 => (serde_json::json!({"comment": comment}), snapshot_v2),
        };
        let v = self.call("POST", &url, Some(&body), &what)?;
        parse(&v).ok_or_else(|| unexpected(&what, &v))
    }

    /// Polls until the snapshot is completed (its record) or failed (an error).
    pub fn wait(
        &self,
        id: &str,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<RemoteSnapshot> {
        progress.stage(&format!("waiting for snapshot {id}"), None);
        let started = Instant::now();
        let mut wait = Duration::from_millis(250);
        let mut said = None;
        loop {
            let snap = self.snapshot(id)?;
            let line = (snap.state.clone(), snap.status_message.clone());
            if said.as_ref() != Some(&line) {
                progress.note(&format!(
                    "snapshot {id}: {}{}",
                    snap.state,
                    snap.status_message
                        .as_deref()
                        .map_or(String::new(), |m| format!(" ({m})"))
                ));
                said = Some(line);
            }
            if snap.is_finished() {
                if snap.is_completed() {
                    return Ok(snap);
                }
                return Err(Error::environment(format!(
                    "snapshot {id} of {} failed: {}",
                    self.describe(),
                    snap.status_message.as_deref().unwrap_or("no reason given")
                )));
            }
            self.check_time(started, &format!("snapshot {id}"))?;
            pause(&mut wait, cancel)?;
        }
    }

    fn check_time(&self, started: Instant, what: &str) -> Result<()> {
        if started.elapsed() >= self.wait_limit {
            return Err(Error::environment(format!(
                "gave up waiting for {what} after {} s",
                self.wait_limit.as_secs()
            ))
            .with_hint("it may still finish: look with `mxsnap remote list`"));
        }
        Ok(())
    }

    /// A download link of `variant`: v1's links (retried while the snapshot is being made),
    /// or v2's archive job, polled until its URL is there.
    pub fn link(
        &self,
        id: &str,
        variant: Variant,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<Link> {
        let id = path_segment("the snapshot", id)?;
        let what = format!("getting a download link of snapshot {id}");
        let started = Instant::now();
        let mut wait = Duration::from_millis(250);
        match self.api {
            ApiVersion::V1 => loop {
                let url = format!("{}/snapshots/{id}", self.env_url());
                match self.request("GET", &url, None)? {
                    Outcome::Unreachable(e) => return Err(e.context(&what)),
                    Outcome::Answer(v) => {
                        let key = match variant {
                            Variant::Full => "DatabaseAndFiles",
                            Variant::Database => "DatabaseOnly",
                            Variant::Files => "FilesOnly",
                        };
                        let url = text(&v[key]).ok_or_else(|| unexpected(&what, &v))?;
                        return Ok(Link {
                            snapshot_id: id,
                            variant,
                            url,
                            expires_at: None,
                        });
                    }
                    // The seed: 500 INTERNAL_SERVER_ERROR while the snapshot is being made.
                    Outcome::Refused(f) if f.status == 500 || f.status == 503 => {
                        if started.elapsed() >= self.wait_limit.min(self.give_up * 30) {
                            return Err(self.failure(f, &what));
                        }
                        progress.note(&format!("snapshot {id} is not ready: {}", f.message));
                        pause(&mut wait, cancel)?;
                    }
                    Outcome::Refused(f) => return Err(self.failure(f, &what)),
                }
            },
            ApiVersion::V2 => {
                progress.stage(&format!("preparing the {variant} download of {id}"), None);
                let url = format!(
                    "{}/snapshots/{id}/archives?data_type={}",
                    self.env_url(),
                    data_type(variant)
                );
                let job = self.call("POST", &url, None, &what)?;
                let archive = text(&job["archive_id"]).ok_or_else(|| unexpected(&what, &job))?;
                let archive = path_segment("the archive", &archive)?;
                let poll = format!("{}/snapshots/{id}/archives/{archive}", self.env_url());
                let job = self.finish_job(job, &poll, &what, "the archive job", cancel)?;
                let url = text(&job["url"]).ok_or_else(|| unexpected(&what, &job))?;
                Ok(Link {
                    snapshot_id: id,
                    variant,
                    url,
                    expires_at: iso(&job["updated_at"]).map(|t| t + chrono::Duration::hours(8)),
                })
            }
        }
    }

    /// Polls a v2 job (`first` is its answer to the POST) until it is completed (its last
    /// answer) or failed (an error with its status message).
    fn finish_job(
        &self,
        first: Value,
        poll: &str,
        what: &str,
        kind: &str,
        cancel: &Cancel,
    ) -> Result<Value> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(250);
        let mut job = first;
        loop {
            match job["state"].as_str() {
                Some("completed") => return Ok(job),
                Some("failed") => {
                    return Err(Error::environment(format!(
                        "{what}: {kind} failed: {}",
                        text_or(&job["status_message"], "no reason given")
                    )));
                }
                _ => {}
            }
            self.check_time(started, kind)?;
            pause(&mut wait, cancel)?;
            job = self.call("GET", poll, None, what)?;
        }
    }

    /// Restores snapshot `id` (of this or another environment of the app) into the API's own
    /// environment, which must be stopped; waits for the end.
    pub fn restore_there(
        &self,
        id: &str,
        db_only: bool,
        progress: &dyn Progress,
        cancel: &Cancel,
    ) -> Result<()> {
        let id = path_segment("the snapshot", id)?;
        let what = format!("restoring snapshot {id} into {}", self.describe());
        progress.stage(&what, None);
        match self.api {
            ApiVersion::V1 => {
                if db_only {
                    return Err(Error::usage(
                        "v1 of the Backups API restores database and files together",
                    )
                    .with_hint("use --api v2 for a database-only restore"));
                }
                // v1 answers when the restore has finished.
                self.call(
                    "POST",
                    &format!("{}/restore/{id}", self.env_url()),
                    None,
                    &what,
                )?;
                Ok(())
            }
            ApiVersion::V2 => {
                let url = format!(
                    "{}/restores?source_snapshot_id={id}&db_only={db_only}",
                    self.env_url()
                );
                let job = self.call("POST", &url, None, &what)?;
                let restore = text(&job["restore_id"]).ok_or_else(|| unexpected(&what, &job))?;
                let poll = format!(
                    "{}/restores/{}",
                    self.env_url(),
                    path_segment("the restore", &restore)?
                );
                self.finish_job(job, &poll, &what, "the restore", cancel)?;
                Ok(())
            }
        }
    }
}

/// The name the cloud gives a download of `snap` (`files_and_database-<id8>-<stamp>.tar.gz`),
/// with the extension of what arrived.
pub fn download_name(snap: &RemoteSnapshot, report: &crate::inspect::Report) -> String {
    let tag: String = snap.id.chars().filter(|c| *c != '-').take(8).collect();
    let stamp = snap
        .created_at
        .unwrap_or_else(Utc::now)
        .format("%Y%m%d%H%M")
        .to_string();
    let mut name =
        crate::archive::cloud_file_name(report.variant, report.compression, &tag, &stamp);
    if report.encrypted {
        name.push_str(".age");
    }
    name
}

fn text_or(v: &Value, default: &str) -> String {
    text(v).unwrap_or_else(|| default.to_string())
}

fn unexpected(what: &str, v: &Value) -> Error {
    let mut shown = v.to_string();
    shown.truncate(200);
    Error::environment(format!(
        "{what}: the answer does not have the Backups API's shape: {shown}"
    ))
    .with_hint("check --api-url and --api (v1 or v2)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_parse_into_one_shape() {
        let v1 = serde_json::json!({"SnapshotID": "c879", "Comment": "Manually created snapshot",
            "State": "Completed", "ExpiresOn": 1509804470000_i64, "CreatedOn": 1501855670000_i64,
            "ModelVersion": "1.0.11.50"});
        let s = snapshot_v1(&v1).unwrap();
        assert_eq!((s.id.as_str(), s.state.as_str()), ("c879", "completed"));
        assert_eq!(s.created_at.unwrap().timestamp_millis(), 1501855670000);
        let v2 = serde_json::json!({"snapshot_id": "a-b", "state": "queued", "comment": null,
            "created_at": "2021-05-05T18:38:41.000Z", "expires_at": null});
        let s = snapshot_v2(&v2).unwrap();
        assert_eq!(s.state, "queued");
        assert!(s.expires_at.is_none() && s.comment.is_none());
        assert_eq!(
            s.created_at.unwrap().to_rfc3339(),
            "2021-05-05T18:38:41+00:00"
        );
    }

    #[test]
    fn ids_cannot_climb_out_of_the_path_and_v2_wants_uuids() {
        assert!(path_segment("x", "../admin").is_err());
        assert!(path_segment("x", "a/b").is_err());
        assert!(path_segment("x", "a?b").is_err());
        assert!(path_segment("x", "201703221355").is_ok());
        let u = "8c3a2d7e-0d55-4f0e-9a6b-6f1f4a1e2b3c";
        assert_eq!(ApiVersion::guess(u, u), ApiVersion::V2);
        assert_eq!(ApiVersion::guess("calc", "acceptance"), ApiVersion::V1);
        let creds = Credentials {
            username: "u".into(),
            api_key: "k".into(),
        };
        let opts = |api| RemoteOptions {
            base_url: "http://127.0.0.1:1".into(),
            api,
            app: "calc".into(),
            environment: "test".into(),
            credentials: creds.clone(),
        };
        assert!(Remote::new(opts(Some(ApiVersion::V2))).is_err());
        assert_eq!(Remote::new(opts(None)).unwrap().api(), ApiVersion::V1);
    }
}
