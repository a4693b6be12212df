//! Download links and the downloads behind them.
//!
//! A link is `/download/<snapshot>.<variant>.<expiry>.<signature>`: the signature is an
//! HMAC-SHA256 over the rest with the service's secret (`serve/secret`, made once, mode 0600),
//! so links cannot be forged and stop working at their expiry (8 hours, as the cloud's).
//! A full snapshot is served from the catalogue's own file; a database-only or files-only one
//! is prepared once into `serve/prepared/` and kept while links to it may live. Files stream
//! from disk with Content-Length, ETag and single byte ranges (206, 416), so `curl -C -` and
//! browsers resume.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Service;
use super::api::ApiError;
use crate::archive::{Compression, Variant, cloud_file_name};
use crate::catalog::{Record, State};
use crate::crypt::Keys;
use crate::error::{Error, Result};

/// How long a download link works.
pub const LINK_HOURS: i64 = 8;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Reads the service's link secret, making it on first use.
pub fn load_secret(dir: &Path) -> Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("secret");
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(secret);
        }
        return Err(
            Error::environment(format!("{} is damaged (not 32 bytes)", path.display()))
                .with_hint("remove it: a new one is made, and links given out before stop working"),
        );
    }
    let mut secret = [0u8; 32];
    secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(&secret)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(secret)
}

fn variant_word(v: Variant) -> &'static str {
    match v {
        Variant::Full => "full",
        Variant::Database => "database",
        Variant::Files => "files",
    }
}

pub(crate) fn signature(secret: &[u8; 32], payload: &str) -> String {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(payload.as_bytes());
    crate::archive::writer::hex(&mac.finalize().into_bytes())
}

/// Compares in time that does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The link to `variant` of snapshot `id`, good until `expires`.
pub fn link(svc: &Service, id: &str, variant: Variant, expires: DateTime<Utc>) -> String {
    let payload = format!("{id}.{}.{}", variant_word(variant), expires.timestamp());
    format!(
        "{}/download/{payload}.{}",
        svc.base_url,
        signature(&svc.secret, &payload)
    )
}

/// The snapshot and variant a token stands for, when it is genuine and not expired.
fn check_token(secret: &[u8; 32], token: &str) -> std::result::Result<(String, Variant), ApiError> {
    let forged = || ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "No such download link.");
    let parts: Vec<&str> = token.split('.').collect();
    let [id, variant, expires, sig] = parts.as_slice() else {
        return Err(forged());
    };
    let payload = format!("{id}.{variant}.{expires}");
    if !constant_time_eq(signature(secret, &payload).as_bytes(), sig.as_bytes()) {
        return Err(forged());
    }
    uuid::Uuid::parse_str(id).map_err(|_| forged())?;
    let variant = match *variant {
        "full" => Variant::Full,
        "database" => Variant::Database,
        "files" => Variant::Files,
        _ => return Err(forged()),
    };
    let expires: i64 = expires.parse().map_err(|_| forged())?;
    if expires <= Utc::now().timestamp() {
        return Err(ApiError::new(
            StatusCode::GONE,
            "LINK_EXPIRED",
            "This download link has expired; ask for a new one.",
        ));
    }
    Ok((id.to_string(), variant))
}

fn prepared_path(state_dir: &Path, id: &str, variant: Variant) -> PathBuf {
    let ext = match variant {
        Variant::Database => "backup",
        _ => "tar.gz",
    };
    state_dir
        .join("prepared")
        .join(format!("{id}.{}.{ext}", variant_word(variant)))
}

/// The file a download of `variant` of `rec` serves, preparing it when needed.
pub fn prepare(svc: &Service, rec: &Record, variant: Variant) -> Result<PathBuf> {
    let repo = &svc.repo;
    if variant == Variant::Full && !repo.is_object_store() {
        return repo.completed_archive(rec, "there is nothing to download");
    }
    // Served from a local file (ranges, resumes): from an object store, even the full
    // archive is fetched once into `prepared/`.
    let path = prepared_path(&svc.config.state_dir, &rec.id, variant);
    // One preparation at a time: a second request for the same file waits, then finds it.
    let _guard = svc.prepare_lock.lock().unwrap_or_else(|p| p.into_inner());
    if path.is_file() {
        return Ok(path);
    }
    let dir = path.parent().expect("prepared files have a folder");
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let plan = crate::catalog::ops::plan_download(
        &svc.config.repo,
        &rec.id,
        variant,
        crate::catalog::ops::DownloadTo::Path(partial.clone()),
        true,
        Keys::none(),
    )?;
    crate::catalog::ops::execute_download(plan, &crate::progress::Silent, &svc.cancel)?;
    std::fs::rename(&partial, &path)
        .map_err(|e| Error::io(format!("renaming {}", partial.display()), e))?;
    Ok(path)
}

/// Removes prepared files no link can still point at.
pub fn sweep(state_dir: &Path) {
    let dir = state_dir.join("prepared");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let keep = std::time::Duration::from_secs(LINK_HOURS as u64 * 3600 + 600);
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > keep);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// One byte range of a file of `len` bytes, as `Range: bytes=...` asks; `Err` when it cannot
/// be satisfied, `Ok(None)` for a header we do not honour (several ranges: the whole file).
fn parse_range(value: &str, len: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.checked_sub(1).ok_or(())?),
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| ())?, e.parse().map_err(|_| ())?);
            if e < s {
                return Err(());
            }
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Streams `path` (whole, or the range asked for) with the headers a resuming client needs.
pub async fn serve_file(
    path: PathBuf,
    etag: String,
    filename: String,
    request: &HeaderMap,
    cancel: crate::progress::Cancel,
) -> Response {
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return ApiError::internal(format!("cannot open the archive: {e}")).into_response();
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => {
            return ApiError::internal(format!("cannot read the archive: {e}")).into_response();
        }
    };
    let etag_value = format!("\"{etag}\"");
    // If-Range: resume only when the file is still the one the client began.
    let range_allowed = request
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v == etag_value);
    let range = match request.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if range_allowed => match parse_range(r, len) {
            Ok(r) => r,
            Err(()) => {
                let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
        },
        _ => None,
    };
    let (status, start, count) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, len),
    };
    let mut file = file;
    if start > 0 {
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
            return ApiError::internal(format!("cannot read the archive: {e}")).into_response();
        }
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 256 * 1024);
    // A download in flight ends when the service stops.
    let stream = futures_stop(stream, cancel);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Ok(v) = HeaderValue::from_str(&etag_value) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// Ends `stream` with an error once `cancel` is set.
fn futures_stop<S>(
    stream: S,
    cancel: crate::progress::Cancel,
) -> impl futures_core::Stream<Item = std::io::Result<bytes::Bytes>>
where
    S: futures_core::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
{
    struct Stop<S> {
        inner: S,
        cancel: crate::progress::Cancel,
    }
    impl<S: futures_core::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin> futures_core::Stream
        for Stop<S>
    {
        type Item = std::io::Result<bytes::Bytes>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.cancel.is_cancelled() {
                return std::task::Poll::Ready(Some(Err(std::io::Error::other(
                    "the service is stopping",
                ))));
            }
            std::pin::Pin::new(&mut self.inner).poll_next(cx)
        }
    }
    Stop {
        inner: stream,
        cancel,
    }
}

/// `GET /download/<token>`.
pub async fn download(svc: Arc<Service>, token: String, headers: HeaderMap) -> Response {
    let (id, variant) = match check_token(&svc.secret, &token) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let svc2 = svc.clone();
    let found = tokio::task::spawn_blocking(move || -> std::result::Result<_, ApiError> {
        let rec = svc2.repo.get(&id, svc2.config.timezone).map_err(|_| {
            ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "Snapshot not found.")
        })?;
        if rec.state != State::Completed {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The snapshot is not available.",
            ));
        }
        let path = prepare(&svc2, &rec, variant).map_err(ApiError::from_lib)?;
        Ok((rec, path))
    })
    .await;
    let (rec, path) = match found {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => return ApiError::internal(format!("{e}")).into_response(),
    };
    let etag = match (variant, &rec.archive_sha256) {
        (Variant::Full, Some(sha)) => sha[..32.min(sha.len())].to_string(),
        _ => {
            let meta = std::fs::metadata(&path).ok();
            let stamp = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!(
                "{}-{}-{}-{stamp:x}",
                rec.id,
                variant_word(variant),
                meta.map_or(0, |m| m.len())
            )
        }
    };
    let tag = &rec.id.replace('-', "")[..8];
    let stamp = rec.created_on.format("%Y%m%d%H%M").to_string();
    let mut filename = cloud_file_name(variant, Compression::Gzip, tag, &stamp);
    if variant == Variant::Full && rec.encrypted_to.is_some() {
        filename.push_str(".age");
    }
    serve_file(path, etag, filename, &headers, svc.cancel.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-500", 100), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=9-1", 100), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=0-", 0), Err(()));
    }

    #[test]
    fn tokens_cannot_be_forged_or_outlive_their_expiry() {
        let secret = [7u8; 32];
        let id = "0c982ca3-621f-40e9-9c6e-96492934170a";
        let exp = Utc::now().timestamp() + 60;
        let payload = format!("{id}.files.{exp}");
        let good = format!("{payload}.{}", signature(&secret, &payload));
        assert_eq!(check_token(&secret, &good).unwrap().1, Variant::Files);
        let other = good.replace(".files.", ".full.");
        assert_eq!(check_token(&secret, &other).unwrap_err().code, "NOT_FOUND");
        assert!(check_token(&[8u8; 32], &good).is_err());
        let old = Utc::now().timestamp() - 1;
        let payload = format!("{id}.files.{old}");
        let expired = format!("{payload}.{}", signature(&secret, &payload));
        assert_eq!(
            check_token(&secret, &expired).unwrap_err().code,
            "LINK_EXPIRED"
        );
        assert!(check_token(&secret, "../../etc/passwd").is_err());
    }
}
