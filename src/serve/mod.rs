//! `mxsnap serve`: the cloud's Backups API (v1 and v2) over a catalogue, so scripts written for
//! the cloud run unchanged against an on-premises installation. Every action is a library
//! operation (plan, execute with progress and cancellation) run as a [`jobs`] job; the HTTP
//! layer (axum on tokio) only authenticates, validates and translates.
//!
//! State kept in the catalogue directory, under `serve/`: `jobs/<id>.json`, `prepared/` (the
//! database-only and files-only files download links serve), `secret` (the key download links
//! are signed with) and `schedule.json` (the last nightly run).

pub mod api;
pub mod config;
pub mod download;
pub mod jobs;
pub mod schedule;
pub mod web;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::{Error, Result};
use crate::progress::Cancel;
pub use config::Config;

/// Where the service's log lines go (the binary prints them on stderr). Keys never reach it.
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// The OpenAPI description of the service, served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

pub struct Service {
    pub config: Config,
    /// The catalogue, opened once: an object store's client (and its connections) is kept
    /// for every request rather than made per request.
    pub repo: crate::catalog::Repo,
    pub jobs: jobs::Jobs,
    pub secret: [u8; 32],
    /// How links start: `public_url`, or `http://<listen address>`.
    pub base_url: String,
    /// Set when the service stops: no new work, running jobs cancelled.
    pub cancel: Cancel,
    pub log: Log,
    /// Browsers signed in to the Backups page.
    pub sessions: web::session::Sessions,
    prepare_lock: Mutex<()>,
}

fn router(svc: Arc<Service>) -> Router {
    let v1 = "/api/1/apps/{app}/environments/{mode}";
    let v2 = "/api/v2/apps/{project}/environments/{env}";
    Router::new()
        .route(
            &format!("{v1}/snapshots"),
            get(api::v1_list).post(api::v1_create),
        )
        .route(&format!("{v1}/snapshots/"), post(api::v1_create))
        .route(&format!("{v1}/snapshots/{{id}}"), get(api::v1_links))
        .route(&format!("{v1}/restore/{{id}}"), post(api::v1_restore))
        .route(
            &format!("{v2}/snapshots"),
            get(api::v2_list).post(api::v2_create),
        )
        .route(
            &format!("{v2}/snapshots/{{id}}"),
            get(api::v2_get).put(api::v2_comment).delete(api::v2_delete),
        )
        .route(
            &format!("{v2}/snapshots/{{id}}/archives"),
            post(api::v2_archive_create),
        )
        .route(
            &format!("{v2}/snapshots/{{id}}/archives/{{archive}}"),
            get(api::v2_archive_get),
        )
        .route(&format!("{v2}/restores"), post(api::v2_restore_create))
        .route(&format!("{v2}/restores/{{restore}}"), get(api::v2_restore_get))
        .route(
            "/download/{token}",
            get(
                |State(svc): State<Arc<Service>>, Path(token): Path<String>, headers: HeaderMap| async move {
                    download::download(svc, token, headers).await
                },
            ),
        )
        .route(
            "/api/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .merge(web::routes())
        .fallback(fallback)
        .with_state(svc)
}

/// Unknown paths; a v1 path with an empty AppId or Mode is the seed's INVALID_PARAMETERS.
async fn fallback(uri: Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/api/1/apps/") && (path.contains("//") || path.ends_with("/environments/"))
    {
        return api::ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETERS",
            "Not enough parameters given. Please set AppId and Mode parameters.",
        )
        .into_response();
    }
    api::ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("No such resource: {path}"),
    )
    .into_response()
}

/// Runs the service until `cancel` is set: binds, calls `ready` with the address it listens
/// on, serves, and on the cancel stops taking work, cancels running jobs (a restore leaves its
/// target as it was) and waits for them.
pub fn run(config: Config, cancel: Cancel, log: Log, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    // Made when missing, refused when the directory is something else.
    let repo = crate::catalog::Repo::open(&config.repo, true)?;
    let serve_dir = config.state_dir.clone();
    std::fs::create_dir_all(&serve_dir)
        .map_err(|e| Error::io(format!("creating {}", serve_dir.display()), e))?;
    let secret = download::load_secret(&serve_dir)?;
    let store = match repo.bucket() {
        Some(bucket) => jobs::JobStore::Bucket {
            bucket: bucket.clone(),
            etags: Default::default(),
            saved: Default::default(),
        },
        None => jobs::JobStore::Dir(serve_dir.join("jobs")),
    };
    let (jobs, interrupted) = jobs::Jobs::open(store, &service_id(&secret), cancel.clone())?;
    for job in interrupted {
        log(&format!(
            "job {} ({:?} of {}) was interrupted when the service last stopped",
            job.id, job.kind, job.environment
        ));
    }
    let listener = std::net::TcpListener::bind(config.listen).map_err(|e| {
        Error::environment(format!("cannot listen on {}: {e}", config.listen))
            .with_hint("choose another address with listen = \"127.0.0.1:PORT\" in the config")
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("setting up the listener", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listen address", e))?;
    let base_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let svc = Arc::new(Service {
        config,
        repo,
        jobs,
        secret,
        base_url,
        cancel: cancel.clone(),
        log: log.clone(),
        sessions: Default::default(),
        prepare_lock: Mutex::new(()),
    });
    download::sweep(&svc.config.state_dir);
    web::sweep_uploads(&svc.config.state_dir);
    let schedule = svc.config.schedule.clone().map(|s| {
        let svc = svc.clone();
        std::thread::spawn(move || schedule::run(svc, s))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the service runtime", e))?;
    let app = router(svc.clone());
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::io("setting up the listener", e))?;
        ready(addr);
        let stop = cancel.clone();
        let shutdown = async move {
            while !stop.is_cancelled() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
        // Requests still open a few seconds after the stop (a slow download) are dropped.
        let stop = cancel.clone();
        let deadline = async move {
            while !stop.is_cancelled() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        };
        tokio::select! {
            r = server => r.map_err(|e| Error::io("serving", e)),
            () = deadline => Ok(()),
        }
    });
    log("stopping: waiting for running jobs to end");
    svc.jobs.join_all();
    if let Some(t) = schedule {
        let _ = t.join();
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

/// This service's identity: stable for its state directory (derived from the link secret kept
/// there), different for two services on one host.
fn service_id(secret: &[u8; 32]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"mxsnap service id\0")
        .chain_update(secret)
        .finalize();
    crate::archive::writer::hex(&digest[..8])
}

/// The hex SHA-256 of an API key, as `key_sha256` holds it.
pub fn hash_key(key: &str) -> String {
    use sha2::Digest;
    crate::archive::writer::hex(&sha2::Sha256::digest(key.trim().as_bytes()))
}
