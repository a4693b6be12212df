//! The Backups page (../shared/seeds/backups-page.md) in the browser, under `/ui/`: the same
//! users and keys as the API, the same jobs and operations (`api`'s `start_*`), rendered on
//! the server as plain HTML with one small script for live progress. Every POST carries the
//! session's CSRF token; anything that replaces or removes data is confirmed first.

pub mod html;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::Service;
use super::api::{self, ApiError};
use super::config::{Environment, User};
use super::jobs::{Job, JobKind, JobState};
use crate::archive::Variant;
use crate::catalog::{Record, State as SnapState};
use crate::error::{Error, ErrorKind};
use html::{Header, csrf_field, esc, seg, size, when};
use session::Signed;

/// Backups shown on one page of the list.
const PAGE: usize = 20;
/// Uploads larger than this are refused unless `max_upload_bytes` says otherwise.
pub const DEFAULT_MAX_UPLOAD: u64 = 50 << 30;
/// How much of an upload past the limit is still read (and dropped) before answering.
const DRAIN_AFTER_LIMIT: u64 = 1 << 30;

pub fn routes() -> Router<Arc<Service>> {
    let env = "/ui/environments/{app}/{mode}";
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(home))
        .route("/ui/sign-in", get(sign_in_form).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/go", get(go))
        .route("/ui/static/app.css", get(|| asset("text/css", APP_CSS)))
        .route(
            "/ui/static/app.js",
            get(|| asset("text/javascript", APP_JS)),
        )
        .route(env, get(list))
        .route(&format!("{env}/snapshots"), post(create))
        .route(&format!("{env}/snapshots/{{id}}"), get(details))
        .route(&format!("{env}/snapshots/{{id}}/download"), post(download))
        .route(&format!("{env}/snapshots/{{id}}/restore"), post(restore))
        .route(&format!("{env}/snapshots/{{id}}/comment"), post(comment))
        .route(&format!("{env}/snapshots/{{id}}/delete"), post(delete))
        .route(
            &format!("{env}/upload"),
            get(upload_form)
                .post(upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/ui/jobs/{id}", get(job_page))
        .route("/ui/jobs/{id}/status", get(job_status))
}

const APP_CSS: &str = include_str!("app.css");
const APP_JS: &str = include_str!("app.js");

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    html::secure_headers(h);
    resp
}

/// A signed-in visitor: the session and the user it belongs to.
struct Visitor {
    signed: Signed,
    user: User,
}

impl Visitor {
    fn header(&self) -> Header<'_> {
        Header {
            user: &self.signed.user,
            csrf: &self.signed.csrf,
        }
    }

    /// The environments this user may see, in the configuration's order.
    fn environments<'a>(&self, svc: &'a Service) -> Vec<&'a Environment> {
        svc.config
            .environments
            .iter()
            .filter(|e| self.user.may(e))
            .collect()
    }
}

/// What a handler gives instead of its page: a redirect to sign in, or a message.
pub struct Stop(Box<Response>);

impl From<Response> for Stop {
    fn from(r: Response) -> Stop {
        Stop(Box::new(r))
    }
}

impl IntoResponse for Stop {
    fn into_response(self) -> Response {
        *self.0
    }
}

type Page = std::result::Result<Response, Stop>;

fn visitor(svc: &Service, headers: &HeaderMap) -> Result<Visitor, Stop> {
    let signed = svc
        .sessions
        .get(headers)
        .ok_or_else(|| Redirect::to("/ui/sign-in").into_response())?;
    // A user removed from the configuration (and the service restarted) is signed out.
    let user = svc
        .config
        .users
        .iter()
        .find(|u| u.name == signed.user)
        .cloned()
        .ok_or_else(|| Redirect::to("/ui/sign-in").into_response())?;
    Ok(Visitor { signed, user })
}

/// The visitor of a POST, whose form carried the session's CSRF token.
fn poster(svc: &Service, headers: &HeaderMap, csrf: &str) -> Result<Visitor, Stop> {
    let v = visitor(svc, headers)?;
    if !v.signed.csrf_ok(csrf) {
        return Err(Stop::from(html::message(
            StatusCode::FORBIDDEN,
            "Form expired",
            Some(v.header()),
            "This form is not from your current session (it may be from before you signed in \
             again). Nothing was changed; open the page again and retry.",
            "/ui/",
        )));
    }
    Ok(v)
}

fn not_found(v: &Visitor, what: &str) -> Response {
    html::message(
        StatusCode::NOT_FOUND,
        "Not found",
        Some(v.header()),
        &format!("{what} does not exist, or you have no access to it."),
        "/ui/",
    )
}

/// The environment of the path, when the visitor may use it.
fn environment(svc: &Service, v: &Visitor, app: &str, mode: &str) -> Result<Environment, Stop> {
    svc.config
        .v1_environment(app, mode)
        .filter(|e| v.user.may(e))
        .cloned()
        .ok_or_else(|| not_found(v, &format!("Environment {app}/{mode}")).into())
}

fn env_path(env: &Environment) -> String {
    format!("/ui/environments/{}/{}", seg(&env.app), seg(&env.mode))
}

fn env_label(env: &Environment) -> String {
    format!("{} / {}", env.app, env.mode)
}

/// An API refusal shown as a page.
fn refused(v: &Visitor, title: &str, e: ApiError, back: &str) -> Response {
    let status = if e.status.is_server_error() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::CONFLICT
    };
    html::message(status, title, Some(v.header()), &e.message, back)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

// ---- signing in ---------------------------------------------------------------------------

async fn home(State(svc): State<Arc<Service>>, headers: HeaderMap) -> Page {
    let v = visitor(&svc, &headers)?;
    match v.environments(&svc).first() {
        Some(env) => Ok(Redirect::to(&env_path(env)).into_response()),
        None => Ok(html::message(
            StatusCode::OK,
            "No environments",
            Some(v.header()),
            "Your user has access to no environment of this service; ask its administrator.",
            "/ui/",
        )),
    }
}

fn sign_in_page(svc: &Service, status: StatusCode, problem: Option<&str>) -> Response {
    let nonce = session::random_token();
    let token = session::sign_in_token(&svc.secret, &nonce);
    let problem = problem
        .map(|p| format!(r#"<p class="error" role="alert">{}</p>"#, esc(p)))
        .unwrap_or_default();
    let body = format!(
        r#"<h1>Sign in</h1>
{problem}
<form method="post" action="/ui/sign-in" class="card narrow">
<input type="hidden" name="csrf" value="{token}">
<label for="username">User name</label>
<input id="username" name="username" autocomplete="username" required autofocus>
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required>
<p class="hint">The same name and API key as for the Backups API (the Mendix-Username and Mendix-ApiKey headers).</p>
<button type="submit">Sign in</button>
</form>"#
    );
    let mut resp = html::page(status, "Sign in", None, &body);
    if let Ok(c) = HeaderValue::from_str(&session::set_cookie(
        session::SIGN_IN_COOKIE,
        &nonce,
        secure(svc),
        Some(3600),
    )) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Cookies are marked Secure when the service is reached over https.
fn secure(svc: &Service) -> bool {
    svc.base_url.starts_with("https://")
}

async fn sign_in_form(State(svc): State<Arc<Service>>, headers: HeaderMap) -> Response {
    if svc.sessions.get(&headers).is_some() {
        return Redirect::to("/ui/").into_response();
    }
    sign_in_page(&svc, StatusCode::OK, None)
}

#[derive(Deserialize)]
struct SignInForm {
    csrf: String,
    username: String,
    key: String,
}

async fn sign_in(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if !session::sign_in_ok(&svc.secret, &headers, &form.csrf) {
        return sign_in_page(
            &svc,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired; please sign in again."),
        );
    }
    let Some(user) = api::check_key(&svc, &form.username, &form.key) else {
        // A pause on every failure makes guessing keys slow.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        (svc.log)(&format!(
            "web: failed sign-in for {:?}",
            form.username.chars().take(64).collect::<String>()
        ));
        return sign_in_page(
            &svc,
            StatusCode::UNAUTHORIZED,
            Some("Unknown user name or wrong API key."),
        );
    };
    let signed = svc.sessions.open(&user.name);
    (svc.log)(&format!("web: {} signed in", user.name));
    let mut resp = Redirect::to("/ui/").into_response();
    let h = resp.headers_mut();
    for c in [
        session::set_cookie(
            session::COOKIE,
            &signed.token,
            secure(&svc),
            Some(session::IDLE.as_secs()),
        ),
        session::set_cookie(session::SIGN_IN_COOKIE, "", secure(&svc), Some(0)),
    ] {
        if let Ok(c) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, c);
        }
    }
    resp
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn sign_out(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Page {
    let v = poster(&svc, &headers, &form.csrf)?;
    svc.sessions.close(&v.signed.token);
    let mut resp = Redirect::to("/ui/sign-in").into_response();
    if let Ok(c) = HeaderValue::from_str(&session::set_cookie(
        session::COOKIE,
        "",
        secure(&svc),
        Some(0),
    )) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(resp)
}

// ---- the list -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct GoQuery {
    environment: Option<String>,
}

/// The environment selector's target: `app/Mode` to that environment's page.
async fn go(State(svc): State<Arc<Service>>, headers: HeaderMap, Query(q): Query<GoQuery>) -> Page {
    let v = visitor(&svc, &headers)?;
    let chosen = q.environment.unwrap_or_default();
    let (app, mode) = chosen.split_once('/').unwrap_or((&chosen, ""));
    let env = environment(&svc, &v, app, mode)?;
    Ok(Redirect::to(&env_path(&env)).into_response())
}

fn selector(svc: &Service, v: &Visitor, current: &Environment) -> String {
    let options: String = v
        .environments(svc)
        .iter()
        .map(|e| {
            let value = format!("{}/{}", e.app, e.mode);
            let selected = if e.app == current.app && e.mode == current.mode {
                " selected"
            } else {
                ""
            };
            format!(
                r#"<option value="{}"{selected}>{}</option>"#,
                esc(&value),
                esc(&env_label(e))
            )
        })
        .collect();
    format!(
        r#"<form method="get" action="/ui/go" class="selector" data-autosubmit>
<label for="environment">Environment</label>
<select id="environment" name="environment">{options}</select>
<button type="submit">Show</button>
</form>"#
    )
}

fn state_word(s: SnapState) -> &'static str {
    match s {
        SnapState::Queued => "Queued",
        SnapState::Running => "Running",
        SnapState::Completed => "Completed",
        SnapState::Failed => "Failed",
    }
}

fn state_badge(s: SnapState) -> String {
    format!(
        r#"<span class="badge {}">{}</span>"#,
        state_word(s).to_lowercase(),
        state_word(s)
    )
}

/// A note with a link when a job holds the environment.
fn busy_note(svc: &Service, env: &Environment) -> String {
    match svc
        .jobs
        .holder(&env.catalog_name())
        .and_then(|id| svc.jobs.get(&id))
    {
        Some(job) => format!(
            r#"<p class="notice" role="status">{} is running on this environment. <a href="/ui/jobs/{}">Follow it</a></p>"#,
            esc(kind_title(job.kind)),
            esc(&job.id)
        ),
        None => String::new(),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    page: Option<usize>,
}

async fn list(
    State(svc): State<Arc<Service>>,
    Path((app, mode)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Page {
    let v = visitor(&svc, &headers)?;
    let env = environment(&svc, &v, &app, &mode)?;
    let svc2 = svc.clone();
    let env2 = env.clone();
    let records = match blocking(move || api::list_records(&svc2, &env2)).await {
        Ok(r) => r,
        Err(e) => return Err(Stop::from(refused(&v, "Backups", e, "/ui/"))),
    };
    let pages = records.len().div_ceil(PAGE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let base = env_path(&env);
    let rows: String = records
        .iter()
        .skip((page - 1) * PAGE)
        .take(PAGE)
        .map(|r| {
            let link = format!("{base}/snapshots/{}", seg(&r.id));
            format!(
                r#"<tr>
<td data-label="Status">{}</td>
<td data-label="Created by">{}</td>
<td data-label="Date">{}</td>
<td data-label="Expires on">{}</td>
<td data-label="Model version">{}</td>
<td data-label="Comment">{}</td>
<td data-label="Size">{}</td>
<td><a href="{}">Details<span class="sr"> of the backup of {}</span></a></td>
</tr>"#,
                state_badge(r.state),
                esc(&r.created_by),
                esc(&when(Some(r.created_on), svc.config.timezone)),
                esc(&when(r.expires_on, svc.config.timezone)),
                esc(r.model_version.as_deref().unwrap_or("–")),
                esc(r.comment.as_deref().unwrap_or("")),
                esc(&size(r.archive_bytes)),
                esc(&link),
                esc(&when(Some(r.created_on), svc.config.timezone)),
            )
        })
        .collect();
    let table = if records.is_empty() {
        r#"<p class="empty">No backups yet.</p>"#.to_string()
    } else {
        format!(
            r#"<table class="backups">
<caption>Backups, newest first</caption>
<thead><tr><th scope="col">Status</th><th scope="col">Created by</th><th scope="col">Date</th><th scope="col">Expires on</th><th scope="col">Model version</th><th scope="col">Comment</th><th scope="col">Size</th><th scope="col"><span class="sr">Actions</span></th></tr></thead>
<tbody>{rows}</tbody>
</table>"#
        )
    };
    let mut pager = String::new();
    if pages > 1 {
        pager.push_str(r#"<nav class="pager" aria-label="Pages">"#);
        if page > 1 {
            pager.push_str(&format!(
                r#"<a href="{base}?page={}" rel="prev">Newer</a>"#,
                page - 1
            ));
        }
        pager.push_str(&format!(
            "<span>Page {page} of {pages} ({} backups)</span>",
            records.len()
        ));
        if page < pages {
            pager.push_str(&format!(
                r#"<a href="{base}?page={}" rel="next">Older</a>"#,
                page + 1
            ));
        }
        pager.push_str("</nav>");
    }
    let body = format!(
        r#"<h1>Backups</h1>
{selector}
{busy}
<section class="actions" aria-label="Actions">
<form method="post" action="{base}/snapshots" class="inline">
{csrf}
<label for="comment">Comment</label>
<input id="comment" name="comment" maxlength="500" placeholder="optional">
<button type="submit">Create backup</button>
</form>
<a class="button secondary" href="{base}/upload">Upload data</a>
</section>
{table}
{pager}"#,
        selector = selector(&svc, &v, &env),
        busy = busy_note(&svc, &env),
        csrf = csrf_field(&v.signed.csrf),
    );
    Ok(html::page(
        StatusCode::OK,
        &format!("Backups of {}", env_label(&env)),
        Some(v.header()),
        &body,
    ))
}

#[derive(Deserialize)]
struct CreateForm {
    csrf: String,
    comment: Option<String>,
}

async fn create(
    State(svc): State<Arc<Service>>,
    Path((app, mode)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Page {
    let v = poster(&svc, &headers, &form.csrf)?;
    let env = environment(&svc, &v, &app, &mode)?;
    let comment = form
        .comment
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty());
    let (svc2, env2, user) = (svc.clone(), env.clone(), v.user.name.clone());
    match blocking(move || api::start_snapshot(&svc2, &env2, comment, false, Some(user))).await {
        Ok((_, job)) => Ok(Redirect::to(&format!("/ui/jobs/{}", job.id)).into_response()),
        Err(e) => Err(Stop::from(refused(&v, "Create backup", e, &env_path(&env)))),
    }
}

// ---- one backup ---------------------------------------------------------------------------

async fn record(
    svc: &Arc<Service>,
    v: &Visitor,
    env: &Environment,
    id: &str,
) -> Result<Record, Stop> {
    let (svc2, env2, id2) = (svc.clone(), env.clone(), id.to_string());
    match blocking(move || api::find_record(&svc2, &env2, &id2, false)).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(Stop::from(not_found(v, &format!("Backup {id}")))),
        Err(e) => Err(Stop::from(refused(v, "Backup", e, &env_path(env)))),
    }
}

/// The other environments of the same app this user may restore into.
fn restore_targets<'a>(svc: &'a Service, v: &Visitor, env: &Environment) -> Vec<&'a Environment> {
    v.environments(svc)
        .into_iter()
        .filter(|e| e.app == env.app)
        .collect()
}

async fn details(
    State(svc): State<Arc<Service>>,
    Path((app, mode, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Page {
    let v = visitor(&svc, &headers)?;
    let env = environment(&svc, &v, &app, &mode)?;
    let rec = record(&svc, &v, &env, &id).await?;
    let tz = svc.config.timezone;
    let base = format!("{}/snapshots/{}", env_path(&env), seg(&rec.id));
    let csrf = csrf_field(&v.signed.csrf);
    let mut message = rec.status_message.clone().unwrap_or_default();
    if matches!(rec.state, SnapState::Queued | SnapState::Running) {
        if let Some(job) = svc.jobs.running_for_snapshot(&rec.id) {
            message = format!(
                r#"{} (<a href="/ui/jobs/{}">follow</a>)"#,
                esc(job.status_message.as_deref().unwrap_or("")),
                esc(&job.id)
            );
        } else {
            message = esc(&message);
        }
    } else {
        message = esc(&message);
    }
    let facts = [
        ("Status", state_badge(rec.state)),
        ("Status message", message),
        ("Created by", esc(&rec.created_by)),
        ("Date", esc(&when(Some(rec.created_on), tz))),
        ("Finished", esc(&when(rec.finished_on, tz))),
        ("Expires on", esc(&when(rec.expires_on, tz))),
        (
            "Model version",
            esc(rec.model_version.as_deref().unwrap_or("–")),
        ),
        ("Comment", esc(rec.comment.as_deref().unwrap_or(""))),
        ("Size", esc(&size(rec.archive_bytes))),
        (
            "Contents",
            esc(&format!(
                "{} files, database dump {}",
                rec.file_count.map_or("–".to_string(), |n| n.to_string()),
                size(rec.dump_bytes)
            )),
        ),
        ("Backup ID", format!("<code>{}</code>", esc(&rec.id))),
    ];
    let dl: String = facts
        .iter()
        .map(|(k, v)| format!("<dt>{k}</dt><dd>{v}</dd>"))
        .collect();
    let mut actions = String::new();
    if rec.state == SnapState::Completed {
        let targets: String = restore_targets(&svc, &v, &env)
            .iter()
            .map(|e| {
                let selected = if e.mode == env.mode { " selected" } else { "" };
                format!(
                    r#"<option value="{}"{selected}>{}</option>"#,
                    esc(&e.mode),
                    esc(&env_label(e))
                )
            })
            .collect();
        actions.push_str(&format!(
            r#"<section aria-labelledby="dl-h"><h2 id="dl-h">Download</h2>
<p>The archive is prepared first; then its link appears.</p>
<form method="post" action="{base}/download" class="buttons">{csrf}
<button type="submit" name="variant" value="full">Full snapshot</button>
<button type="submit" name="variant" value="database">Database only</button>
<button type="submit" name="variant" value="files">Files only</button>
</form></section>
<section aria-labelledby="rs-h"><h2 id="rs-h">Restore</h2>
<form method="post" action="{base}/restore" class="inline">{csrf}
<label for="target">Into environment</label>
<select id="target" name="target">{targets}</select>
<button type="submit">Restore…</button>
</form></section>"#
        ));
    }
    actions.push_str(&format!(
        r#"<section aria-labelledby="cm-h"><h2 id="cm-h">Comment</h2>
<form method="post" action="{base}/comment" class="inline">{csrf}
<label for="new-comment">Comment</label>
<input id="new-comment" name="comment" maxlength="500" value="{}">
<button type="submit">Save comment</button>
</form></section>"#,
        esc(rec.comment.as_deref().unwrap_or(""))
    ));
    if !matches!(rec.state, SnapState::Queued | SnapState::Running) {
        actions.push_str(&format!(
            r#"<section aria-labelledby="del-h"><h2 id="del-h">Delete</h2>
<form method="post" action="{base}/delete">{csrf}
<button type="submit" class="danger">Delete…</button>
</form></section>"#
        ));
    }
    let body = format!(
        r#"<p><a href="{back}">← Backups of {label}</a></p>
<h1>Backup details</h1>
<dl class="details">{dl}</dl>
{actions}"#,
        back = env_path(&env),
        label = esc(&env_label(&env)),
    );
    Ok(html::page(
        StatusCode::OK,
        "Backup details",
        Some(v.header()),
        &body,
    ))
}

#[derive(Deserialize)]
struct DownloadForm {
    csrf: String,
    variant: String,
}

async fn download(
    State(svc): State<Arc<Service>>,
    Path((app, mode, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<DownloadForm>,
) -> Page {
    let v = poster(&svc, &headers, &form.csrf)?;
    let env = environment(&svc, &v, &app, &mode)?;
    let rec = record(&svc, &v, &env, &id).await?;
    let (variant, data_type) = match form.variant.as_str() {
        "full" => (Variant::Full, "files_and_database"),
        "database" => (Variant::Database, "database_only"),
        "files" => (Variant::Files, "files_only"),
        _ => return Err(Stop::from(not_found(&v, "That download choice"))),
    };
    if rec.state != SnapState::Completed {
        return Err(Stop::from(html::message(
            StatusCode::CONFLICT,
            "Download",
            Some(v.header()),
            "The backup is not completed; download it when it is.",
            &env_path(&env),
        )));
    }
    let (svc2, env2) = (svc.clone(), env.clone());
    match blocking(move || api::start_archive(&svc2, &env2, rec, variant, data_type.into())).await {
        Ok(job) => Ok(Redirect::to(&format!("/ui/jobs/{}", job.id)).into_response()),
        Err(e) => Err(Stop::from(refused(&v, "Download", e, &env_path(&env)))),
    }
}

/// A page asking to confirm `what`: the same form posted again with `confirmed=yes`.
/// A question before something is replaced or removed.
struct Confirm<'a> {
    title: &'a str,
    paragraphs: Vec<String>,
    warnings: Vec<String>,
    /// Where the form posts again, with `fields` and `confirmed=yes`.
    action: String,
    fields: Vec<(&'a str, &'a str)>,
    button: String,
    back: &'a str,
}

fn confirm_page(v: &Visitor, c: Confirm<'_>) -> Response {
    let Confirm {
        title,
        paragraphs,
        warnings,
        action,
        fields,
        button,
        back,
    } = c;
    let text: String = paragraphs
        .iter()
        .map(|p| format!("<p>{}</p>", esc(p)))
        .collect();
    let warn: String = warnings
        .iter()
        .map(|w| format!(r#"<p class="warning" role="alert">{}</p>"#, esc(w)))
        .collect();
    let hidden: String = fields
        .iter()
        .map(|(n, val)| {
            format!(
                r#"<input type="hidden" name="{}" value="{}">"#,
                esc(n),
                esc(val)
            )
        })
        .collect();
    let body = format!(
        r#"<h1>{}</h1>
{warn}{text}
<form method="post" action="{}" class="buttons">{}{hidden}
<input type="hidden" name="confirmed" value="yes">
<button type="submit" class="danger">{}</button>
<a class="button secondary" href="{}">Cancel</a>
</form>"#,
        esc(title),
        esc(&action),
        csrf_field(&v.signed.csrf),
        esc(&button),
        esc(back)
    );
    html::page(StatusCode::OK, title, Some(v.header()), &body)
}

#[derive(Deserialize)]
struct RestoreForm {
    csrf: String,
    target: String,
    confirmed: Option<String>,
}

/// Whether `env` runs now: the stop message when it does.
fn running_message(env: &Environment) -> Option<String> {
    let target = api::target_of(env).ok()?;
    let admin = crate::target::admin_session(&target.database).ok()?;
    match target.check_stopped(&admin) {
        Err(e) if e.kind() == ErrorKind::NotAllowed => Some(api::please_stop(env, &e).message),
        _ => None,
    }
}

/// The older-model warning of the seed: the backup's model against the target's.
fn older_model(rec: &Record, target: &Environment) -> Option<String> {
    let current = target.model_version.clone().or_else(|| {
        api::target_of(target)
            .ok()
            .and_then(|t| crate::target::EnvState::load(&t).model_version)
    })?;
    let made = rec.model_version.as_deref()?;
    (crate::target::compare_versions(made, &current) == Some(std::cmp::Ordering::Less)).then(|| {
        format!(
            "This backup was made with model version {made}, older than the {current} of \
             {}/{}. You can restore it, but you have to deploy model {made} afterwards.",
            target.app, target.mode
        )
    })
}

async fn restore(
    State(svc): State<Arc<Service>>,
    Path((app, mode, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<RestoreForm>,
) -> Page {
    let v = poster(&svc, &headers, &form.csrf)?;
    let env = environment(&svc, &v, &app, &mode)?;
    let rec = record(&svc, &v, &env, &id).await?;
    let target = environment(&svc, &v, &env.app, &form.target)?;
    let back = format!("{}/snapshots/{}", env_path(&env), seg(&rec.id));
    let target2 = target.clone();
    if let Some(stop) = blocking(move || running_message(&target2)).await {
        return Err(Stop::from(html::message(
            StatusCode::CONFLICT,
            "Restore refused",
            Some(v.header()),
            &stop,
            &back,
        )));
    }
    if form.confirmed.as_deref() != Some("yes") {
        let warnings: Vec<String> = older_model(&rec, &target).into_iter().collect();
        return Ok(confirm_page(
            &v,
            Confirm {
                title: "Restore this backup?",
                paragraphs: vec![
                    format!(
                        "The backup of {} made {} replaces the database and the uploaded files of \
                     {}.",
                        env_label(&env),
                        when(Some(rec.created_on), svc.config.timezone),
                        env_label(&target)
                    ),
                    "What is there now is removed once the restore has succeeded; a restore that \
                 fails changes nothing. Make a backup of it first if you may want it back."
                        .to_string(),
                ],
                warnings,
                action: format!("{back}/restore"),
                fields: vec![("target", &target.mode)],
                button: format!("Restore into {}", env_label(&target)),
                back: &back,
            },
        ));
    }
    let svc2 = svc.clone();
    let target2 = target.clone();
    match blocking(move || api::start_restore(&svc2, &target2, &rec, false)).await {
        Ok(job) => Ok(Redirect::to(&format!("/ui/jobs/{}", job.id)).into_response()),
        Err(e) => Err(Stop::from(refused(&v, "Restore refused", e, &back))),
    }
}

#[derive(Deserialize)]
struct CommentForm {
    csrf: String,
    comment: String,
}

async fn comment(
    State(svc): State<Arc<Service>>,
    Path((app, mode, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<CommentForm>,
) -> Page {
    let v = poster(&svc, &headers, &form.csrf)?;
    let env = environment(&svc, &v, &app, &mode)?;
    let rec = record(&svc, &v, &env, &id).await?;
    let back = format!("{}/snapshots/{}", env_path(&env), seg(&rec.id));
    let svc2 = svc.clone();
    let text = form.comment.trim().to_string();
    let done = blocking(move || {
        let plan = crate::catalog::ops::plan_comment(&svc2.config.repo, &rec.id, &text)?;
        crate::catalog::ops::execute_comment(plan, &svc2.cancel)
    })
    .await;
    match done {
        Ok(_) => Ok(Redirect::to(&back).into_response()),
        Err(e) => Err(Stop::from(refused(
            &v,
            "Comment",
            ApiError::from_lib(e),
            &back,
        ))),
    }
}

#[derive(Deserialize)]
struct DeleteForm {
    csrf: String,
    confirmed: Option<String>,
}

async fn delete(
    State(svc): State<Arc<Service>>,
    Path((app, mode, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<DeleteForm>,
) -> Page {
    let v = poster(&svc, &headers, &form.csrf)?;
    let env = environment(&svc, &v, &app, &mode)?;
    let rec = record(&svc, &v, &env, &id).await?;
    let back = format!("{}/snapshots/{}", env_path(&env), seg(&rec.id));
    if matches!(rec.state, SnapState::Queued | SnapState::Running) {
        return Err(Stop::from(html::message(
            StatusCode::CONFLICT,
            "Delete",
            Some(v.header()),
            "The backup is still being made; delete it when it has finished.",
            &back,
        )));
    }
    if form.confirmed.as_deref() != Some("yes") {
        return Ok(confirm_page(
            &v,
            Confirm {
                title: "Delete this backup?",
                paragraphs: vec![format!(
                    "The backup of {} made {} ({}) is removed for good.",
                    env_label(&env),
                    when(Some(rec.created_on), svc.config.timezone),
                    size(rec.archive_bytes)
                )],
                warnings: Vec::new(),
                action: format!("{back}/delete"),
                fields: Vec::new(),
                button: "Delete backup".into(),
                back: &back,
            },
        ));
    }
    let svc2 = svc.clone();
    let done = blocking(move || {
        let plan = crate::catalog::ops::plan_delete(&svc2.config.repo, &rec.id)?;
        crate::catalog::ops::execute_delete(plan, &svc2.cancel)
    })
    .await;
    match done {
        Ok(_) => Ok(Redirect::to(&env_path(&env)).into_response()),
        Err(e) => Err(Stop::from(refused(
            &v,
            "Delete",
            ApiError::from_lib(e),
            &back,
        ))),
    }
}

// ---- upload -------------------------------------------------------------------------------

/// What an upload is said to be, and the variant it must then hold.
fn upload_kind(word: &str) -> Option<(Variant, &'static str, &'static str)> {
    match word {
        "full" => Some((Variant::Full, "files_and_database", "a full snapshot")),
        "database" => Some((Variant::Database, "database_only", "a database")),
        "files" => Some((Variant::Files, "files_only", "uploaded files")),
        _ => None,
    }
}

fn max_upload(svc: &Service) -> u64 {
    svc.config.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD)
}

async fn upload_form(
    State(svc): State<Arc<Service>>,
    Path((app, mode)): Path<(String, String)>,
    headers: HeaderMap,
) -> Page {
    let v = visitor(&svc, &headers)?;
    let env = environment(&svc, &v, &app, &mode)?;
    let label = esc(&env_label(&env));
    let body = format!(
        r#"<p><a href="{base}">← Backups of {label}</a></p>
<h1>Upload data</h1>
<p class="warning">Stop the application first. The environment {label} is cleared completely: its database and uploaded files are removed and replaced by what you upload. This adds no backup to the list.</p>
<form method="post" action="{base}/upload" enctype="multipart/form-data" class="card">
{csrf}
<fieldset><legend>What you upload</legend>
<label class="choice"><input type="radio" name="kind" value="full" checked> Full snapshot (database and files, as downloaded: <code>.tar.gz</code>)</label>
<label class="choice"><input type="radio" name="kind" value="database"> Database (a PostgreSQL dump, <code>.backup</code> or <code>.backup.gz</code>)</label>
<label class="choice"><input type="radio" name="kind" value="files"> Uploaded files (<code>.zip</code> or <code>.tar.gz</code>)</label>
</fieldset>
<label class="choice"><input type="checkbox" name="confirmed" value="yes" required> I understand that the database and uploaded files of {label} are removed and replaced</label>
<label for="file">File (at most {limit})</label>
<input id="file" type="file" name="file" required data-max-bytes="{max}">
<p id="file-problem" class="error" role="alert" hidden></p>
<button type="submit" class="danger">Upload and replace</button>
</form>"#,
        base = env_path(&env),
        csrf = csrf_field(&v.signed.csrf),
        limit = esc(&size(Some(max_upload(&svc)))),
        max = max_upload(&svc),
    );
    Ok(html::page(
        StatusCode::OK,
        "Upload data",
        Some(v.header()),
        &body,
    ))
}

/// Removes an upload's file however its job ends.
struct UploadFile(std::path::PathBuf);

impl Drop for UploadFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn upload(
    State(svc): State<Arc<Service>>,
    Path((app, mode)): Path<(String, String)>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Page {
    let v = visitor(&svc, &headers)?;
    let env = environment(&svc, &v, &app, &mode)?;
    let back = format!("{}/upload", env_path(&env));
    let fail = |status: StatusCode, text: &str| {
        html::message(status, "Upload refused", Some(v.header()), text, &back)
    };
    let limit = max_upload(&svc);
    // The fields come in the form's order: the token, the kind and the confirmation before
    // the file, so nothing is written for a form that would be refused.
    let mut csrf_ok = false;
    let mut kind = None;
    let mut confirmed = false;
    let mut saved: Option<(UploadFile, super::jobs::Ticket)> = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(Stop::from(fail(
                    StatusCode::BAD_REQUEST,
                    &format!("The upload did not arrive whole ({e}). Nothing was changed."),
                )));
            }
        };
        match field.name().unwrap_or("") {
            "csrf" => {
                let text = field.text().await.unwrap_or_default();
                csrf_ok = v.signed.csrf_ok(&text);
            }
            "kind" => kind = upload_kind(&field.text().await.unwrap_or_default()),
            "confirmed" => confirmed = field.text().await.is_ok_and(|t| t == "yes"),
            "file" if saved.is_none() => {
                if !csrf_ok {
                    return Err(Stop::from(fail(
                        StatusCode::FORBIDDEN,
                        "This form is not from your current session. Nothing was changed; \
                         open the upload page again.",
                    )));
                }
                if kind.is_none() || !confirmed {
                    return Err(Stop::from(fail(
                        StatusCode::BAD_REQUEST,
                        "Say what you upload and confirm that the environment is cleared.",
                    )));
                }
                let ticket = match api::claim(&svc, &env) {
                    Ok(t) => t,
                    Err(e) => return Err(Stop::from(fail(StatusCode::CONFLICT, &e.message))),
                };
                let env2 = env.clone();
                if let Some(stop) = blocking(move || running_message(&env2)).await {
                    return Err(Stop::from(fail(StatusCode::CONFLICT, &stop)));
                }
                match receive(&svc, field, limit).await {
                    Ok(file) => saved = Some((file, ticket)),
                    Err(e) => {
                        let status = if e.kind() == ErrorKind::Usage {
                            StatusCode::PAYLOAD_TOO_LARGE
                        } else {
                            StatusCode::BAD_REQUEST
                        };
                        return Err(Stop::from(fail(status, &format!("{e}"))));
                    }
                }
            }
            _ => {}
        }
    }
    let (Some((file, ticket)), Some(kind)) = (saved, kind) else {
        return Err(Stop::from(fail(
            StatusCode::BAD_REQUEST,
            "Choose a file to upload.",
        )));
    };
    let svc2 = svc.clone();
    match blocking(move || start_upload(&svc2, &env, ticket, file, kind)).await {
        Ok(job) => Ok(Redirect::to(&format!("/ui/jobs/{}", job.id)).into_response()),
        Err(e) => Err(Stop::from(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("{e}"),
        ))),
    }
}

/// Removes uploads left by a service that died while receiving or restoring them: at the
/// start no job can be using one.
pub fn sweep_uploads(state_dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(state_dir.join("uploads")) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Streams the file field to `serve/uploads/`, refusing it past `limit` bytes.
async fn receive(
    svc: &Service,
    mut field: axum::extract::multipart::Field<'_>,
    limit: u64,
) -> crate::Result<UploadFile> {
    use tokio::io::AsyncWriteExt;
    let dir = svc.config.state_dir.join("uploads");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(format!("{}.upload", uuid::Uuid::new_v4()));
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .await
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let file = UploadFile(path);
    let mut total = 0u64;
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                return Err(Error::environment(format!(
                    "the upload did not arrive whole ({e}); nothing was changed"
                )));
            }
        };
        total += chunk.len() as u64;
        if total > limit {
            // Read on (up to a bound) so the browser gets the answer rather than a reset
            // connection; nothing more is written.
            while total <= limit.saturating_add(DRAIN_AFTER_LIMIT) {
                match field.chunk().await {
                    Ok(Some(c)) => total += c.len() as u64,
                    _ => break,
                }
            }
            return Err(Error::usage(format!(
                "the upload is larger than the {} this service takes (max_upload_bytes in its \
                 configuration); nothing was changed",
                size(Some(limit))
            )));
        }
        out.write_all(&chunk).await.map_err(|e| {
            Error::io(format!("saving the upload in {}", dir.display()), e)
                .with_hint("free some space there; nothing was changed")
        })?;
    }
    if total == 0 {
        return Err(Error::environment("the file is empty; nothing was changed"));
    }
    out.sync_all()
        .await
        .map_err(|e| Error::io(format!("saving the upload in {}", dir.display()), e))?;
    Ok(file)
}

/// The upload's job: verify the file whole, check it is what was said, then restore it with
/// the rest of the environment cleared (staged and swapped like any restore).
fn start_upload(
    svc: &Arc<Service>,
    env: &Environment,
    ticket: super::jobs::Ticket,
    file: UploadFile,
    (variant, data_type, said): (Variant, &'static str, &'static str),
) -> crate::Result<Job> {
    let mut job = Job::new(JobKind::Upload, &env.catalog_name());
    job.data_type = Some(data_type.into());
    let (svc2, env2) = (svc.clone(), env.clone());
    let log = svc.log.clone();
    let what = format!("{}/{}", env.app, env.mode);
    svc.jobs.start(ticket, job, move |tracker, cancel| {
        log(&format!(
            "uploaded data: verifying, then restoring into {what}"
        ));
        let file = file;
        let read = crate::inspect::plan(crate::inspect::ReadOptions {
            source: crate::source::Source::File(file.0.clone()),
            verify: true,
            pg_bin: svc2.config.pg_bin.clone(),
            keys: crate::crypt::Keys::none(),
        })?;
        let report = crate::inspect::execute(read, tracker, cancel)?;
        if report.variant != variant {
            return Err(Error::usage(format!(
                "the file holds {}, not {said}",
                match report.variant {
                    Variant::Full => "a full snapshot (database and files)",
                    Variant::Database => "only a database",
                    Variant::Files => "only uploaded files",
                }
            ))
            .with_hint("upload it again with the right choice"));
        }
        let plan = api::plan_restore(
            &svc2,
            &env2,
            crate::source::Source::File(file.0.clone()),
            None,
            true,
        )
        .map_err(|e| Error::not_allowed(e.message))?;
        let restored = crate::restore::execute(plan, tracker, cancel);
        match &restored {
            Ok(_) => log(&format!("uploaded data restored into {what}")),
            Err(e) => log(&format!("uploaded data into {what} failed: {e}")),
        }
        restored.map(|r| super::jobs::Done {
            message: Some(match r.warnings.first() {
                Some(w) => format!("restored, with a warning: {w}"),
                None => "restored".into(),
            }),
            url_expires_at: None,
        })
    })
}

// ---- jobs ---------------------------------------------------------------------------------

fn kind_title(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Snapshot => "Creating a backup",
        JobKind::Archive => "Preparing a download",
        JobKind::Restore => "Restoring a backup",
        JobKind::Upload => "Uploading data",
    }
}

/// The job, when the visitor may see its environment.
fn visible_job(svc: &Service, v: &Visitor, id: &str) -> Option<(Job, Environment)> {
    let job = svc.jobs.get(id)?;
    let env = svc.config.by_catalog_name(&job.environment)?.clone();
    v.user.may(&env).then_some((job, env))
}

async fn job_page(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Page {
    let v = visitor(&svc, &headers)?;
    let (job, env) = visible_job(&svc, &v, &id).ok_or_else(|| not_found(&v, "That job"))?;
    let base = env_path(&env);
    let snapshot_link = job.snapshot_id.as_ref().map(|s| {
        format!(
            r#"<a href="{base}/snapshots/{}">the backup's details</a>"#,
            seg(s)
        )
    });
    let state = match job.state {
        JobState::Queued => SnapState::Queued,
        JobState::Running => SnapState::Running,
        JobState::Completed => SnapState::Completed,
        JobState::Failed => SnapState::Failed,
    };
    let message = esc(job.status_message.as_deref().unwrap_or(""));
    let outcome = match job.state {
        JobState::Queued | JobState::Running => {
            let p = svc.jobs.progress(&job.id).unwrap_or_default();
            let (value, max) = match p.bytes_total {
                Some(t) if t > 0 => (p.bytes_done.min(t).to_string(), t.to_string()),
                _ => (String::new(), String::new()),
            };
            let bar = if max.is_empty() {
                r#"<progress id="job-bar" aria-label="Progress"></progress>"#.to_string()
            } else {
                format!(
                    r#"<progress id="job-bar" aria-label="Progress" value="{value}" max="{max}"></progress>"#
                )
            };
            format!(
                r#"<div class="progress" data-job-status="/ui/jobs/{}/status">{bar}
<p id="job-stage" aria-live="polite">{message}</p>
<noscript><p>Reload the page to see how far it is.</p></noscript></div>"#,
                esc(&job.id)
            )
        }
        JobState::Failed => format!(
            r#"<p class="error" role="alert" id="job-result">Failed: {message}</p><p>Nothing was changed.</p>"#
        ),
        JobState::Completed => {
            let mut done = format!(
                r#"<p class="notice" role="status" id="job-result">Completed: {message}</p>"#
            );
            if job.kind == JobKind::Archive {
                let url = match (job.url_expires_at, &job.snapshot_id, &job.data_type) {
                    (Some(exp), Some(snap), Some(dt)) if exp > chrono::Utc::now() => {
                        let variant = match dt.as_str() {
                            "database_only" => Variant::Database,
                            "files_only" => Variant::Files,
                            _ => Variant::Full,
                        };
                        Some((super::download::link(&svc, snap, variant, exp), exp))
                    }
                    _ => None,
                };
                match url {
                    Some((url, exp)) => done.push_str(&format!(
                        r#"<div class="download">
<a class="button" id="download-link" href="{u}" download>Download</a>
<details><summary>Show URL</summary>
<label for="download-url">Link (works until {until})</label>
<input id="download-url" readonly value="{u}">
</details></div>"#,
                        u = esc(&url),
                        until = esc(&when(Some(exp), svc.config.timezone))
                    )),
                    None => done.push_str(
                        "<p>The link has expired; prepare the download again from the backup's \
                         details.</p>",
                    ),
                }
            }
            done
        }
    };
    let body = format!(
        r#"<p><a href="{base}">← Backups of {label}</a></p>
<h1>{title}</h1>
<p>{what} · {status}{snap}</p>
{outcome}"#,
        label = esc(&env_label(&env)),
        title = kind_title(job.kind),
        what = esc(&env_label(&env)),
        status = state_badge(state),
        snap = snapshot_link.map(|l| format!(" · {l}")).unwrap_or_default(),
    );
    Ok(html::page(
        StatusCode::OK,
        kind_title(job.kind),
        Some(v.header()),
        &body,
    ))
}

/// A job's progress as the page's script polls it.
async fn job_status(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(v) = visitor(&svc, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Some((job, _)) = visible_job(&svc, &v, &id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let p = svc.jobs.progress(&job.id).unwrap_or_default();
    let mut resp = axum::Json(serde_json::json!({
        "state": job.state,
        "message": job.status_message,
        "stage": p.stage,
        "bytes_done": p.bytes_done,
        "bytes_total": p.bytes_total,
        "files_done": p.files_done,
    }))
    .into_response();
    html::secure_headers(resp.headers_mut());
    resp
}
