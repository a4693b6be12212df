//! The Backups API, v1 (../shared/seeds/backups-api-v1.md) and v2 (API-NOTES.md), over the
//! catalogue and the library's operations. Every handler authenticates first, then finds the
//! environment, then checks the user's access to it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;

use super::Service;
use super::config::Environment;
use super::download::{LINK_HOURS, constant_time_eq, link};
use super::jobs::{Done, Job, JobKind, JobState};
use crate::archive::Variant;
use crate::catalog::{Record, State as SnapState};
use crate::error::{Error, ErrorKind};

/// An error as the cloud's deploy APIs give it: `{"errorCode", "errorMessage"}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_SERVER_ERROR",
            message,
        )
    }

    /// A library error: a target that runs is the cloud's ERROR_NOT_ALLOWED, anything else an
    /// internal error with the library's words.
    pub fn from_lib(e: Error) -> ApiError {
        let mut message = e.message().to_string();
        if let Some(h) = e.hint() {
            message.push_str(&format!(" ({h})"));
        }
        match e.kind() {
            ErrorKind::NotAllowed => {
                ApiError::new(StatusCode::BAD_REQUEST, "ERROR_NOT_ALLOWED", message)
            }
            ErrorKind::Cancelled => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "The service is stopping.",
            ),
            _ => ApiError::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"errorCode": self.code, "errorMessage": self.message})),
        )
            .into_response()
    }
}

type ApiResult = std::result::Result<Response, ApiError>;

fn invalid_parameters(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETERS", message)
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "A valid Mendix-Username and Mendix-ApiKey are required.",
    )
}

/// The user the request's headers name, when the key is theirs.
fn authenticate<'a>(
    svc: &'a Service,
    headers: &HeaderMap,
) -> Result<&'a super::config::User, ApiError> {
    let name = headers
        .get("Mendix-Username")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let key = headers
        .get("Mendix-ApiKey")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    check_key(svc, name, key).ok_or_else(unauthorized)
}

/// The user named, when `key` is theirs. The key is hashed whether or not the user exists,
/// so the time taken does not tell.
pub(super) fn check_key<'a>(
    svc: &'a Service,
    name: &str,
    key: &str,
) -> Option<&'a super::config::User> {
    let given = sha2::Sha256::digest(key.trim().as_bytes());
    let user = svc.config.users.iter().find(|u| u.name == name);
    user.filter(|u| constant_time_eq(&u.key_sha256, &given))
}

fn invalid_environment(mode: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "INVALID_ENVIRONMENT",
        format!(
            "Could not parse environment mode '{mode}'. Valid options are Test, Acceptance, \
             Production or the name of a flexible environment."
        ),
    )
}

fn environment_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ENVIRONMENT_NOT_FOUND",
        "Environment not found.",
    )
}

fn no_access() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "NO_ACCESS",
        "The user does not have access to the backups of this environment.",
    )
}

pub(super) fn busy(env: &Environment) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "ENVIRONMENT_BUSY",
        format!(
            "Another job runs on {}/{}; try again when it has finished.",
            env.app, env.mode
        ),
    )
}

pub(super) fn stopping() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
        "The service is stopping.",
    )
}

/// v1: authenticate, parse the mode, find the environment, check access.
fn v1_env(
    svc: &Service,
    headers: &HeaderMap,
    app: &str,
    mode: &str,
) -> Result<Environment, ApiError> {
    let user = authenticate(svc, headers)?;
    if app.is_empty() || mode.is_empty() {
        return Err(invalid_parameters(
            "Not enough parameters given. Please set AppId and Mode parameters.",
        ));
    }
    if crate::catalog::check_environment(mode).is_err() {
        return Err(invalid_environment(mode));
    }
    let env = svc
        .config
        .v1_environment(app, mode)
        .ok_or_else(environment_not_found)?;
    if !user.may(env) {
        return Err(no_access());
    }
    Ok(env.clone())
}

/// v2: the same, by project and environment UUIDs.
fn v2_env(
    svc: &Service,
    headers: &HeaderMap,
    project: &str,
    env: &str,
) -> Result<Environment, ApiError> {
    let user = authenticate(svc, headers)?;
    let parse = |s: &str| uuid::Uuid::parse_str(s).map_err(|_| environment_not_found());
    let (project, env) = (parse(project)?, parse(env)?);
    let env = svc
        .config
        .v2_environment(&project, &env)
        .ok_or_else(environment_not_found)?;
    if !user.may(env) {
        return Err(no_access());
    }
    Ok(env.clone())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("{e}")))?
}

/// The environment's snapshots, newest first (none when the catalogue is still empty).
pub(super) fn list_records(svc: &Service, env: &Environment) -> Result<Vec<Record>, ApiError> {
    let failed = |e: Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SNAPSHOT_LISTING_FAILED",
            format!(
                "An error occurred while listing the backups: {}",
                e.message()
            ),
        )
    };
    let mut records = svc
        .repo
        .list(Some(&env.catalog_name()), svc.config.timezone)
        .map_err(failed)?;
    records.sort_by_key(|r| std::cmp::Reverse(r.created_on));
    Ok(records.into_iter().map(|r| as_served(svc, r)).collect())
}

/// A snapshot as the service shows it: while the job making it has not ended (its archive may
/// already be catalogued as completed), it has the job's state, so that whoever sees it
/// completed finds its environment free for the next job.
fn as_served(svc: &Service, mut rec: Record) -> Record {
    if let Some(job) = svc.jobs.running_for_snapshot(&rec.id) {
        let state = match job.state {
            JobState::Queued => SnapState::Queued,
            JobState::Running => SnapState::Running,
            JobState::Completed | JobState::Failed => return rec,
        };
        rec.state = state;
        rec.finished_on = None;
    }
    rec
}

/// One snapshot of `env` (or, with `same_app`, of any environment of its app) by its full id.
pub(super) fn find_record(
    svc: &Service,
    env: &Environment,
    id: &str,
    same_app: bool,
) -> Result<Option<Record>, ApiError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Ok(None);
    }
    let Ok(rec) = svc.repo.get(id, svc.config.timezone) else {
        return Ok(None);
    };
    let belongs = if same_app {
        svc.config
            .by_catalog_name(&rec.environment)
            .is_some_and(|e| e.app == env.app)
    } else {
        rec.environment == env.catalog_name()
    };
    Ok(belongs.then(|| as_served(svc, rec)))
}

/// Claims `env` for a new job: refused while the service stops or another job holds it.
pub(super) fn claim(svc: &Service, env: &Environment) -> Result<super::jobs::Ticket, ApiError> {
    if svc.cancel.is_cancelled() {
        return Err(stopping());
    }
    svc.jobs.claim(&env.catalog_name()).ok_or_else(|| busy(env))
}

/// Starts a snapshot of `env`: planned (and recorded as Queued) before the answer, made on a
/// job thread.
pub(super) fn start_snapshot(
    svc: &Arc<Service>,
    env: &Environment,
    comment: Option<String>,
    nightly: bool,
    created_by: Option<String>,
) -> Result<(Record, Job), ApiError> {
    let ticket = claim(svc, env)?;
    let plan = crate::catalog::ops::plan_create(crate::catalog::ops::SnapshotRequest {
        repo: svc.config.repo.clone(),
        environment: env.catalog_name(),
        database: Some(env.database.clone()),
        files: env.files.clone(),
        comment,
        nightly,
        created_by,
        model_version: env.model_version.clone(),
        pg_bin: svc.config.pg_bin.clone(),
        tz: svc.config.timezone,
    })
    .map_err(ApiError::from_lib)?;
    let queued = plan.record_queued().map_err(ApiError::from_lib)?;
    let mut job = Job::new(JobKind::Snapshot, &env.catalog_name());
    job.snapshot_id = Some(queued.id.clone());
    let log = svc.log.clone();
    let what = format!("{}/{}", env.app, env.mode);
    let job = svc
        .jobs
        .start(ticket, job, move |tracker, cancel| {
            log(&format!("making a snapshot of {what}"));
            let made = crate::catalog::ops::execute_create(plan, tracker, cancel);
            match &made {
                Ok(r) => log(&format!("snapshot {} of {what} completed", r.id)),
                Err(e) => log(&format!("snapshot of {what} failed: {e}")),
            }
            made.map(|_| Done::default())
        })
        .map_err(ApiError::from_lib)?;
    Ok((queued, job))
}

/// The schedule's nightly snapshot of `env`, as a job.
pub fn start_nightly(svc: &Arc<Service>, env: &Environment) -> Result<Job, ApiError> {
    start_snapshot(svc, env, None, true, None).map(|(_, job)| job)
}

// ---- v1 -------------------------------------------------------------------------------------

pub async fn v1_list(
    State(svc): State<Arc<Service>>,
    Path((app, mode)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let env = v1_env(&svc, &headers, &app, &mode)?;
    let records = blocking(move || list_records(&svc, &env)).await?;
    let out: Vec<_> = records.iter().map(Record::api_v1).collect();
    Ok(Json(out).into_response())
}

#[derive(Deserialize, Default)]
pub struct V1CreateBody {
    #[serde(rename = "Comment")]
    comment: Option<String>,
}

pub async fn v1_create(
    State(svc): State<Arc<Service>>,
    Path((app, mode)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let env = v1_env(&svc, &headers, &app, &mode)?;
    let user = authenticate(&svc, &headers)?.name.clone();
    let body: V1CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        V1CreateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            invalid_parameters(format!("The body is not {{\"Comment\": \"...\"}}: {e}"))
        })?
    };
    let (rec, _job) =
        blocking(move || start_snapshot(&svc, &env, body.comment, false, Some(user))).await?;
    Ok(Json(rec.api_v1()).into_response())
}

pub async fn v1_links(
    State(svc): State<Arc<Service>>,
    Path((app, mode, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let env = v1_env(&svc, &headers, &app, &mode)?;
    let svc2 = svc.clone();
    let rec = blocking(move || find_record(&svc2, &env, &id, false))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "SNAPSHOT_NOT_FOUND",
                "Snapshot not found.",
            )
        })?;
    if rec.state != SnapState::Completed {
        return Err(ApiError::internal(match rec.state {
            SnapState::Failed => "The snapshot failed; there is nothing to download.",
            _ => "The snapshot is still being created; try downloading it later.",
        }));
    }
    let expires = Utc::now() + Duration::hours(LINK_HOURS);
    Ok(Json(json!({
        "FilesOnly": link(&svc, &rec.id, Variant::Files, expires),
        "DatabaseOnly": link(&svc, &rec.id, Variant::Database, expires),
        "DatabaseAndFiles": link(&svc, &rec.id, Variant::Full, expires),
    }))
    .into_response())
}

/// The target of `env`, as the library's restore takes it.
pub(super) fn target_of(env: &Environment) -> Result<crate::target::Target, ApiError> {
    Ok(crate::target::Target {
        database: crate::pg::ConnSpec::resolve(Some(&env.database)).map_err(ApiError::from_lib)?,
        files: env.files.clone(),
        pid_file: env.pid_file.clone(),
    })
}

/// The cloud's refusal of a restore into a running environment.
pub(super) fn please_stop(env: &Environment, e: &Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "ERROR_NOT_ALLOWED",
        format!(
            "Please stop {} ({}) before restoring a backup: {}",
            env.app,
            env.mode,
            e.message()
        ),
    )
}

/// Plans a restore of `source` into `env`: refused here while the environment runs.
pub(super) fn plan_restore(
    svc: &Service,
    env: &Environment,
    source: crate::source::Source,
    variant: Option<Variant>,
    clear_rest: bool,
) -> Result<crate::restore::Plan, ApiError> {
    crate::restore::plan(crate::restore::RestoreOptions {
        source,
        destination: crate::restore::Destination::Env(Box::new(target_of(env)?)),
        variant,
        jobs: 2,
        keep_previous: false,
        order: Default::default(),
        clear_rest,
        no_sync: false,
        model_version: env.model_version.clone(),
        pg_bin: svc.config.pg_bin.clone(),
        keys: crate::crypt::Keys::none(),
    })
    .map_err(|e| match e.kind() {
        ErrorKind::NotAllowed => please_stop(env, &e),
        _ => ApiError::from_lib(e),
    })
}

/// Plans a restore of `rec` into `env` (refused here while it runs) and starts it as a job.
pub(super) fn start_restore(
    svc: &Arc<Service>,
    env: &Environment,
    rec: &Record,
    db_only: bool,
) -> Result<Job, ApiError> {
    if rec.state != SnapState::Completed {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_STATE",
            format!("Snapshot {} is {:?}, not Completed.", rec.id, rec.state),
        ));
    }
    let ticket = claim(svc, env)?;
    let archive = svc
        .repo
        .completed(rec, "there is nothing to restore")
        .and_then(|a| a.into_source())
        .map_err(ApiError::from_lib)?;
    let plan = plan_restore(
        svc,
        env,
        archive,
        db_only.then_some(Variant::Database),
        false,
    )?;
    let mut job = Job::new(JobKind::Restore, &env.catalog_name());
    job.snapshot_id = Some(rec.id.clone());
    job.source_environment = Some(rec.environment.clone());
    let log = svc.log.clone();
    let what = format!("snapshot {} into {}/{}", rec.id, env.app, env.mode);
    svc.jobs
        .start(ticket, job, move |tracker, cancel| {
            log(&format!("restoring {what}"));
            let restored = crate::restore::execute(plan, tracker, cancel);
            match &restored {
                Ok(_) => log(&format!("restored {what}")),
                Err(e) => log(&format!("restore of {what} failed: {e}")),
            }
            restored.map(|_| Done {
                message: Some("restored".into()),
                url_expires_at: None,
            })
        })
        .map_err(ApiError::from_lib)
}

pub(super) fn restore_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "NOT_FOUND",
        format!(
            "Invalid snapshot ID {id}. Either the snapshot does not exist or it belongs to a \
             different application."
        ),
    )
}

pub async fn v1_restore(
    State(svc): State<Arc<Service>>,
    Path((app, mode, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let env = v1_env(&svc, &headers, &app, &mode)?;
    let svc2 = svc.clone();
    let rec = blocking(move || {
        let rec = find_record(&svc2, &env, &id, true)?.ok_or_else(|| restore_not_found(&id))?;
        let job = start_restore(&svc2, &env, &rec, false)?;
        let done = svc2
            .jobs
            .wait(&job.id)
            .ok_or_else(|| ApiError::internal("the job vanished"))?;
        match done.state {
            JobState::Completed => Ok(rec),
            _ if svc2.cancel.is_cancelled() => Err(stopping()),
            _ => Err(ApiError::internal(format!(
                "The restore failed: {}",
                done.status_message.unwrap_or_default()
            ))),
        }
    })
    .await?;
    Ok(Json(rec.api_v1()).into_response())
}

// ---- v2 -------------------------------------------------------------------------------------

fn iso(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
    })
}

fn snap_state(s: SnapState) -> &'static str {
    match s {
        SnapState::Queued => "queued",
        SnapState::Running => "running",
        SnapState::Completed => "completed",
        SnapState::Failed => "failed",
    }
}

fn job_state(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Completed => "completed",
        JobState::Failed => "failed",
    }
}

/// A snapshot as v2 shows it; a running one's message says how far it is.
fn v2_snapshot(svc: &Service, r: &Record) -> Value {
    let mut message = r.status_message.clone();
    if matches!(r.state, SnapState::Queued | SnapState::Running) {
        if let Some(job) = svc.jobs.running_for_snapshot(&r.id) {
            message = job.status_message;
        }
    }
    json!({
        "snapshot_id": r.id,
        "model_version": r.model_version,
        "comment": r.comment,
        "expires_at": iso(r.expires_on),
        "state": snap_state(r.state),
        "status_message": message,
        "created_at": iso(Some(r.created_on)),
        "finished_at": iso(r.finished_on),
        "updated_at": iso(Some(r.finished_on.unwrap_or(r.created_on))),
    })
}

#[derive(Deserialize)]
pub struct Paging {
    offset: Option<String>,
    limit: Option<String>,
}

pub async fn v2_list(
    State(svc): State<Arc<Service>>,
    Path((project, env)): Path<(String, String)>,
    Query(paging): Query<Paging>,
    headers: HeaderMap,
) -> ApiResult {
    let env = v2_env(&svc, &headers, &project, &env)?;
    let bad =
        |what: &str| invalid_parameters(format!("{what} must be a whole number (limit 1 to 1000)"));
    let offset: usize = match &paging.offset {
        Some(o) => o.parse().map_err(|_| bad("offset"))?,
        None => 0,
    };
    let limit: usize = match &paging.limit {
        Some(l) => l
            .parse()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| bad("limit"))?,
        None => 100,
    };
    let svc2 = svc.clone();
    let records = blocking(move || list_records(&svc2, &env)).await?;
    let page: Vec<Value> = records
        .iter()
        .skip(offset)
        .take(limit)
        .map(|r| v2_snapshot(&svc, r))
        .collect();
    Ok(Json(json!({
        "snapshots": page,
        "total": records.len(),
        "offset": offset,
        "limit": limit,
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
pub struct V2CommentBody {
    comment: Option<String>,
}

fn comment_body(body: &[u8], required: bool) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) && !required {
        return Ok(None);
    }
    let parsed: V2CommentBody = serde_json::from_slice(body).map_err(|e| {
        invalid_parameters(format!("The body is not {{\"comment\": \"...\"}}: {e}"))
    })?;
    if required && parsed.comment.is_none() {
        return Err(invalid_parameters("The body needs a comment."));
    }
    Ok(parsed.comment)
}

pub async fn v2_create(
    State(svc): State<Arc<Service>>,
    Path((project, env)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let env = v2_env(&svc, &headers, &project, &env)?;
    let user = authenticate(&svc, &headers)?.name.clone();
    let comment = comment_body(&body, false)?;
    let svc2 = svc.clone();
    let (rec, _job) =
        blocking(move || start_snapshot(&svc2, &env, comment, false, Some(user))).await?;
    Ok((StatusCode::CREATED, Json(v2_snapshot(&svc, &rec))).into_response())
}

pub(super) fn snapshot_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "Snapshot not found.")
}

pub async fn v2_get(
    State(svc): State<Arc<Service>>,
    Path((project, env, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let env = v2_env(&svc, &headers, &project, &env)?;
    let svc2 = svc.clone();
    let rec = blocking(move || find_record(&svc2, &env, &id, false))
        .await?
        .ok_or_else(snapshot_not_found)?;
    Ok(Json(v2_snapshot(&svc, &rec)).into_response())
}

pub async fn v2_comment(
    State(svc): State<Arc<Service>>,
    Path((project, env, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let env = v2_env(&svc, &headers, &project, &env)?;
    let comment = comment_body(&body, true)?.unwrap_or_default();
    let svc2 = svc.clone();
    let rec = blocking(move || {
        let rec = find_record(&svc2, &env, &id, false)?.ok_or_else(snapshot_not_found)?;
        let plan = crate::catalog::ops::plan_comment(&svc2.config.repo, &rec.id, &comment)
            .map_err(ApiError::from_lib)?;
        crate::catalog::ops::execute_comment(plan, &svc2.cancel).map_err(ApiError::from_lib)?;
        find_record(&svc2, &env, &rec.id, false)?.ok_or_else(snapshot_not_found)
    })
    .await?;
    Ok(Json(v2_snapshot(&svc, &rec)).into_response())
}

pub async fn v2_delete(
    State(svc): State<Arc<Service>>,
    Path((project, env, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let env = v2_env(&svc, &headers, &project, &env)?;
    blocking(move || {
        let rec = find_record(&svc, &env, &id, false)?.ok_or_else(snapshot_not_found)?;
        if matches!(rec.state, SnapState::Queued | SnapState::Running) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_STATE",
                "The snapshot is still being made; delete it when it has finished.",
            ));
        }
        let plan = crate::catalog::ops::plan_delete(&svc.config.repo, &rec.id)
            .map_err(ApiError::from_lib)?;
        crate::catalog::ops::execute_delete(plan, &svc.cancel).map_err(ApiError::from_lib)?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) fn data_type_variant(data_type: &str) -> Option<Variant> {
    match data_type {
        "files_and_database" => Some(Variant::Full),
        "database_only" => Some(Variant::Database),
        "files_only" => Some(Variant::Files),
        _ => None,
    }
}

fn v2_archive(svc: &Service, job: &Job) -> Value {
    let url = match (
        job.state,
        job.url_expires_at,
        &job.snapshot_id,
        &job.data_type,
    ) {
        (JobState::Completed, Some(exp), Some(id), Some(dt)) if exp > Utc::now() => {
            data_type_variant(dt).map(|v| link(svc, id, v, exp))
        }
        _ => None,
    };
    json!({
        "archive_id": job.id,
        "snapshot_id": job.snapshot_id,
        "data_type": job.data_type,
        "state": job_state(job.state),
        "status_message": job.status_message,
        "created_at": iso(Some(job.created_at)),
        "updated_at": iso(Some(job.updated_at)),
        "finished_at": iso(job.finished_at),
        "url": url,
    })
}

/// Prepares `variant` of `rec` for download as a job; its link is good for [`LINK_HOURS`].
pub(super) fn start_archive(
    svc: &Arc<Service>,
    env: &Environment,
    rec: Record,
    variant: Variant,
    data_type: String,
) -> Result<Job, ApiError> {
    let ticket = claim(svc, env)?;
    let mut job = Job::new(JobKind::Archive, &env.catalog_name());
    job.snapshot_id = Some(rec.id.clone());
    job.data_type = Some(data_type);
    let svc2 = svc.clone();
    svc.jobs
        .start(ticket, job, move |_tracker, _cancel| {
            super::download::prepare(&svc2, &rec, variant)?;
            Ok(Done {
                message: Some("the archive is ready".into()),
                url_expires_at: Some(Utc::now() + Duration::hours(LINK_HOURS)),
            })
        })
        .map_err(ApiError::from_lib)
}

#[derive(Deserialize)]
pub struct ArchiveQuery {
    data_type: Option<String>,
}

pub async fn v2_archive_create(
    State(svc): State<Arc<Service>>,
    Path((project, env, id)): Path<(String, String, String)>,
    Query(q): Query<ArchiveQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let env = v2_env(&svc, &headers, &project, &env)?;
    let data_type = q.data_type.unwrap_or_else(|| "files_and_database".into());
    let variant = data_type_variant(&data_type).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            format!(
                "data_type {data_type:?} is not files_and_database, database_only or files_only"
            ),
        )
    })?;
    let svc2 = svc.clone();
    let job = blocking(move || {
        let rec = find_record(&svc2, &env, &id, false)?.ok_or_else(snapshot_not_found)?;
        if rec.state != SnapState::Completed {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_STATE",
                "The snapshot is not completed; archive it when it is.",
            ));
        }
        if svc2.cancel.is_cancelled() {
            return Err(stopping());
        }
        start_archive(&svc2, &env, rec, variant, data_type)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v2_archive(&svc, &job))).into_response())
}

pub async fn v2_archive_get(
    State(svc): State<Arc<Service>>,
    Path((project, env, id, archive)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let env = v2_env(&svc, &headers, &project, &env)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "Archive not found.");
    let job = svc.jobs.get(&archive).ok_or_else(not_found)?;
    if job.kind != JobKind::Archive
        || job.environment != env.catalog_name()
        || job.snapshot_id.as_deref() != Some(id.as_str())
    {
        return Err(not_found());
    }
    Ok(Json(v2_archive(&svc, &job)).into_response())
}

fn v2_restore_json(svc: &Service, job: &Job) -> Value {
    let env_id = |name: &Option<String>| {
        name.as_deref()
            .and_then(|n| svc.config.by_catalog_name(n))
            .and_then(|e| e.id)
            .map(|u| u.to_string())
    };
    json!({
        "restore_id": job.id,
        "source_snapshot_id": job.snapshot_id,
        "source_environment_id": env_id(&job.source_environment),
        "target_environment_id": env_id(&Some(job.environment.clone())),
        "state": job_state(job.state),
        "status_message": job.status_message,
        "created_at": iso(Some(job.created_at)),
        "updated_at": iso(Some(job.updated_at)),
        "finished_at": iso(job.finished_at),
    })
}

#[derive(Deserialize)]
pub struct RestoreQuery {
    source_snapshot_id: Option<String>,
    db_only: Option<String>,
}

pub async fn v2_restore_create(
    State(svc): State<Arc<Service>>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Query<RestoreQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let env = v2_env(&svc, &headers, &project, &env)?;
    let id = q
        .source_snapshot_id
        .ok_or_else(|| invalid_parameters("source_snapshot_id is required."))?;
    let db_only = match q.db_only.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(invalid_parameters(format!(
                "db_only must be true or false, not {other:?}"
            )));
        }
    };
    let svc2 = svc.clone();
    let job = blocking(move || {
        let rec = find_record(&svc2, &env, &id, true)?.ok_or_else(|| restore_not_found(&id))?;
        start_restore(&svc2, &env, &rec, db_only)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v2_restore_json(&svc, &job))).into_response())
}

pub async fn v2_restore_get(
    State(svc): State<Arc<Service>>,
    Path((project, env, restore)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let env = v2_env(&svc, &headers, &project, &env)?;
    let not_found = || ApiError::new(StatusCode::BAD_REQUEST, "NOT_FOUND", "Restore not found.");
    let job = svc.jobs.get(&restore).ok_or_else(not_found)?;
    if job.kind != JobKind::Restore || job.environment != env.catalog_name() {
        return Err(not_found());
    }
    Ok(Json(v2_restore_json(&svc, &job)).into_response())
}
