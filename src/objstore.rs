//! A catalogue's objects in S3-protocol storage (`s3://bucket/prefix`), through the
//! `object_store` crate, behind blocking calls like the rest of the library.
//!
//! Credentials, region and endpoint come from the usual `AWS_*` variables (`AWS_ENDPOINT_URL`
//! for a local server; path-style addressing unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`);
//! they are never put in a message. Small objects (records) are written with conditional
//! puts: create-only, or replace-if-the-ETag-matches. Archives stream into a multipart upload
//! (bounded part buffers) and out through ranged reads that resume after a dropped connection.

use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use crate::error::{Error, Result};

/// Each part of a multipart upload (S3 wants at least 5 MiB but the last).
const PART_BYTES: usize = 8 << 20;
/// Parts uploading at once; with the one filling, the memory an upload holds.
const PARTS_IN_FLIGHT: usize = 2;

pub fn is_s3(arg: &str) -> bool {
    arg.starts_with("s3://")
}

/// The runtime every object-store call runs on, apart from the caller's own (the service's
/// handlers call the library from blocking threads of another runtime).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mxsnap-objstore")
            .enable_all()
            .build()
            .expect("starting the object-store runtime")
    })
}

/// Runs `f` to completion on the object-store runtime, from any thread.
fn run<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("the object-store runtime dropped a call")
}

/// An object's bytes and the ETag to replace it with.
pub struct Versioned {
    pub bytes: Vec<u8>,
    pub etag: String,
}

/// One listed object.
pub struct Listed {
    /// Its key below the catalogue's prefix.
    pub key: String,
    pub size: u64,
}

/// A bucket and a prefix in it: where one catalogue lives.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

impl Bucket {
    /// `s3://bucket[/prefix]`, configured from the `AWS_*` variables.
    pub fn open(url: &str) -> Result<Bucket> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::usage(format!("{url} is not an s3:// address")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::usage(format!("{url}: no bucket named")));
        }
        let prefix = prefix.trim_matches('/').to_string();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(object_store::RetryConfig {
                max_retries: 4,
                retry_timeout: crate::http::env_secs("MXSNAP_S3_RETRY_SECS", 60),
                ..Default::default()
            });
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .unwrap_or_default();
        if endpoint.starts_with("http://") {
            // Asked for by name: a local server without TLS.
            builder = builder.with_allow_http(true);
        }
        if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
            builder = builder.with_region("us-east-1");
        }
        let store = builder.build().map_err(|e| {
            Error::usage(format!("{url}: the object store cannot be set up: {e}")).with_hint(
                "set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for a server \
                 other than AWS, AWS_ENDPOINT_URL",
            )
        })?;
        Ok(Bucket {
            store: Arc::new(store),
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// The catalogue's address, for messages.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn fail(&self, what: &str, key: &str, e: object_store::Error) -> Error {
        failure(&self.url(), what, key, e)
    }

    /// The object at `key`, or `None` when there is none.
    pub fn get(&self, key: &str) -> Result<Option<Versioned>> {
        let store = self.store.clone();
        let path = self.path(key);
        let got = run(async move {
            let r = store.get(&path).await?;
            let etag = r.meta.e_tag.clone().unwrap_or_default();
            let bytes = r.bytes().await?;
            Ok::<_, object_store::Error>((bytes, etag))
        });
        match got {
            Ok((bytes, etag)) => Ok(Some(Versioned {
                bytes: bytes.to_vec(),
                etag,
            })),
            Err(e @ object_store::Error::NotFound { .. }) if !no_bucket(&e) => Ok(None),
            Err(e) => Err(self.fail("reading", key, e)),
        }
    }

    /// Writes `bytes` at `key` only if nothing is there: `false` when something is.
    pub fn create(&self, key: &str, bytes: Vec<u8>) -> Result<bool> {
        Ok(self.create_tagged(key, bytes)?.is_some())
    }

    /// As [`Bucket::create`], giving the new object's ETag (empty when the store gives none).
    pub fn create_tagged(&self, key: &str, bytes: Vec<u8>) -> Result<Option<String>> {
        self.put(key, bytes, PutMode::Create)
    }

    /// Replaces the object at `key` only if it is still the version `etag`: `false` when it
    /// changed or is gone.
    pub fn replace(&self, key: &str, bytes: Vec<u8>, etag: &str) -> Result<bool> {
        Ok(self.replace_tagged(key, bytes, etag)?.is_some())
    }

    /// As [`Bucket::replace`], giving the new version's ETag.
    pub fn replace_tagged(&self, key: &str, bytes: Vec<u8>, etag: &str) -> Result<Option<String>> {
        self.put(
            key,
            bytes,
            PutMode::Update(UpdateVersion {
                e_tag: Some(etag.to_string()),
                version: None,
            }),
        )
    }

    fn put(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> Result<Option<String>> {
        let store = self.store.clone();
        let path = self.path(key);
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match run(async move { store.put_opts(&path, bytes.into(), opts).await }) {
            Ok(done) => Ok(Some(done.e_tag.unwrap_or_default())),
            Err(e @ object_store::Error::NotFound { .. }) if no_bucket(&e) => {
                Err(self.fail("writing", key, e))
            }
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("writing", key, e)),
        }
    }

    /// Removes `key`; nothing there is not an error.
    pub fn delete(&self, key: &str) -> Result<()> {
        let store = self.store.clone();
        let path = self.path(key);
        match run(async move { store.delete(&path).await }) {
            Err(e @ object_store::Error::NotFound { .. }) if no_bucket(&e) => {
                Err(self.fail("removing", key, e))
            }
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("removing", key, e)),
        }
    }

    /// Every object under `dir/`, by key below the prefix.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let store = self.store.clone();
        let path = self.path(dir);
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let listed = run(async move {
            let mut out = Vec::new();
            let mut stream = store.list(Some(&path));
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                out.push((meta.location.to_string(), meta.size));
            }
            Ok::<_, object_store::Error>(out)
        })
        .map_err(|e| self.fail("listing", dir, e))?;
        Ok(listed
            .into_iter()
            .map(|(loc, size)| Listed {
                key: loc.strip_prefix(&strip).unwrap_or(&loc).to_string(),
                size,
            })
            .collect())
    }

    /// A multipart upload to `key`, written as a stream; nothing appears at `key` until
    /// [`Upload::finish`], and a dropped, unfinished upload is aborted.
    pub fn upload(&self, key: &str) -> Result<Upload> {
        let store = self.store.clone();
        let path = self.path(key);
        let id = {
            let (store, path) = (store.clone(), path.clone());
            run(async move { store.create_multipart(&path).await })
                .map_err(|e| self.fail("starting the upload of", key, e))?
        };
        Ok(Upload {
            shared: Arc::new(std::sync::Mutex::new(UploadState {
                store,
                path,
                id: Some(id),
                buffer: Vec::with_capacity(PART_BYTES),
                parts: Vec::new(),
                in_flight: std::collections::VecDeque::new(),
                failed: None,
                what: format!("{}/{key}", self.url()),
            })),
        })
    }

    /// Aborts the multipart upload `id` to `key` (one a crashed create left); one already
    /// completed or aborted is not an error.
    pub fn abort_upload(&self, key: &str, id: &str) -> Result<()> {
        let store = self.store.clone();
        let path = self.path(key);
        let id = id.to_string();
        match run(async move { store.abort_multipart(&path, &id).await }) {
            Ok(()) => Ok(()),
            Err(e @ object_store::Error::NotFound { .. }) if !no_bucket(&e) => Ok(()),
            Err(e) if full_text(&e).contains("NoSuchUpload") => Ok(()),
            Err(e) => Err(self.fail("aborting the upload of", key, e)),
        }
    }

    /// A reader of the object at `key` from its start, resuming after a dropped connection
    /// with a ranged read of the same version.
    pub fn reader(&self, key: &str) -> Result<ObjectReader> {
        let mut reader = ObjectReader {
            store: self.store.clone(),
            path: self.path(key),
            name: format!("{}/{key}", self.url()),
            etag: None,
            size: 0,
            offset: 0,
            stream: None,
            chunk: Bytes::new(),
        };
        reader.connect().map_err(|e| match e {
            object_store::Error::NotFound { .. } if !no_bucket(&e) => {
                Error::environment(format!("{}: no such object", reader.name))
            }
            e => failure(&self.url(), "reading", key, e),
        })?;
        Ok(reader)
    }
}

/// An error's message with its causes' (where the server's words and the transport's are).
fn full_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Whether a "not found" is of the bucket rather than of an object in it.
fn no_bucket(e: &object_store::Error) -> bool {
    full_text(e).contains("NoSuchBucket")
}

/// A clear error for a failed call, with the fix where the cause is known.
fn failure(url: &str, what: &str, key: &str, e: object_store::Error) -> Error {
    let text = full_text(&e);
    let summary = if text.contains("NoSuchBucket") {
        "the bucket does not exist".to_string()
    } else {
        text.clone()
    };
    let err = Error::environment(format!("{what} {url}/{key}: {summary}"));
    if text.contains("NoSuchBucket") || text.contains("bucket does not exist") {
        err.with_hint(format!(
            "the bucket of {url} does not exist: make it, or give another with --repo"
        ))
    } else if text.contains("InvalidAccessKeyId") || text.contains("SignatureDoesNotMatch") {
        err.with_hint(
            "the object store refused the credentials: check AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (and AWS_REGION)",
        )
    } else if text.contains("AccessDenied")
        || matches!(e, object_store::Error::PermissionDenied { .. })
    {
        // Valid keys can be denied too (a bucket policy, a key limited to other prefixes).
        err.with_hint(
            "the object store denied access: check AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, and that they may read, write, list and delete under this \
             bucket and prefix (and abort multipart uploads)",
        )
    } else if text.contains("connect")
        || text.contains("Connection refused")
        || text.contains("error sending request")
        || text.contains("dns error")
    {
        err.with_hint("the object store cannot be reached: check AWS_ENDPOINT_URL and the network")
    } else {
        err
    }
}

struct UploadState {
    store: Arc<AmazonS3>,
    path: ObjPath,
    /// The multipart upload's id; `None` once it is completed or aborted.
    id: Option<String>,
    buffer: Vec<u8>,
    parts: Vec<Option<PartId>>,
    in_flight: std::collections::VecDeque<(usize, mpsc::Receiver<object_store::Result<PartId>>)>,
    failed: Option<String>,
    what: String,
}

impl UploadState {
    fn fail(&mut self, e: object_store::Error) -> io::Error {
        let msg = format!("uploading {}: {}", self.what, full_text(&e));
        self.failed = Some(msg.clone());
        io::Error::other(msg)
    }

    /// Waits for the oldest part in flight.
    fn wait_one(&mut self) -> io::Result<()> {
        if let Some((index, rx)) = self.in_flight.pop_front() {
            match rx.recv() {
                Ok(Ok(part)) => self.parts[index] = Some(part),
                Ok(Err(e)) => return Err(self.fail(e)),
                Err(_) => {
                    return Err(self.fail(object_store::Error::Generic {
                        store: "S3",
                        source: "the upload of a part was dropped".into(),
                    }));
                }
            }
        }
        Ok(())
    }

    /// Sends the buffer as the next part, with at most [`PARTS_IN_FLIGHT`] uploading.
    fn send_part(&mut self) -> io::Result<()> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_one()?;
        }
        let id = self
            .id
            .clone()
            .ok_or_else(|| io::Error::other("the upload is over"))?;
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(PART_BYTES));
        let index = self.parts.len();
        self.parts.push(None);
        let (store, path) = (self.store.clone(), self.path.clone());
        let (tx, rx) = mpsc::sync_channel(1);
        runtime().spawn(async move {
            let _ = tx.send(
                store
                    .put_part(&path, &id, index, PutPayload::from(data))
                    .await,
            );
        });
        self.in_flight.push_back((index, rx));
        Ok(())
    }

    fn abort(&mut self) {
        while !self.in_flight.is_empty() {
            let _ = self.wait_one();
        }
        if let Some(id) = self.id.take() {
            let (store, path) = (self.store.clone(), self.path.clone());
            let _ = run(async move { store.abort_multipart(&path, &id).await });
        }
    }
}

/// A streaming multipart upload; clones share it (one writes, one finishes). Dropped
/// unfinished, with its last clone, it is aborted (its parts removed).
#[derive(Clone)]
pub struct Upload {
    shared: Arc<std::sync::Mutex<UploadState>>,
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.shared.lock().unwrap();
        if let Some(msg) = &st.failed {
            return Err(io::Error::other(msg.clone()));
        }
        let room = PART_BYTES - st.buffer.len();
        let n = room.min(buf.len());
        st.buffer.extend_from_slice(&buf[..n]);
        if st.buffer.len() == PART_BYTES {
            st.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload {
    /// The object store's id of this upload: recorded, so that a crash's unfinished upload
    /// can be aborted later by whoever finds it.
    pub fn id(&self) -> String {
        self.shared.lock().unwrap().id.clone().unwrap_or_default()
    }

    /// Sends what is left and completes the upload: the object appears whole, or not at all.
    pub fn finish(&self) -> Result<()> {
        let mut st = self.shared.lock().unwrap();
        let what = st.what.clone();
        let io_err = |e: io::Error| Error::environment(e.to_string());
        if let Some(msg) = &st.failed {
            return Err(Error::environment(msg.clone()));
        }
        if !st.buffer.is_empty() || st.parts.is_empty() {
            // An empty object still needs one (empty) part.
            st.send_part().map_err(io_err)?;
        }
        while !st.in_flight.is_empty() {
            st.wait_one().map_err(io_err)?;
        }
        let parts: Vec<PartId> = st.parts.iter().map(|p| p.clone().expect("sent")).collect();
        let id = st.id.clone().expect("finished twice");
        let (store, path) = (st.store.clone(), st.path.clone());
        run(async move { store.complete_multipart(&path, &id, parts).await }).map_err(|e| {
            Error::environment(format!(
                "completing the upload of {what}: {}",
                full_text(&e)
            ))
        })?;
        st.id = None;
        Ok(())
    }
}

impl Drop for UploadState {
    fn drop(&mut self) {
        self.abort();
    }
}

/// An object read front to back; a connection that drops is resumed where it stopped, with a
/// ranged read guarded by the ETag first seen (a changed object is an error, not a splice).
pub struct ObjectReader {
    store: Arc<AmazonS3>,
    path: ObjPath,
    name: String,
    etag: Option<String>,
    size: u64,
    offset: u64,
    stream: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    chunk: Bytes,
}

impl ObjectReader {
    fn connect(&mut self) -> object_store::Result<()> {
        let store = self.store.clone();
        let path = self.path.clone();
        let opts = GetOptions {
            if_match: self.etag.clone(),
            range: (self.offset > 0).then_some(GetRange::Offset(self.offset)),
            ..Default::default()
        };
        let got = run(async move { store.get_opts(&path, opts).await })?;
        if self.etag.is_none() {
            self.etag = got.meta.e_tag.clone();
            self.size = got.meta.size;
        }
        self.stream = Some(got.into_stream());
        Ok(())
    }

    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let started = Instant::now();
        let give_up = crate::http::env_secs("MXSNAP_S3_RETRY_SECS", 60);
        let mut wait = Duration::from_millis(250);
        loop {
            if let Some(mut stream) = self.stream.take() {
                let (stream, item) = run(async move {
                    let item = stream.next().await;
                    (stream, item)
                });
                match item {
                    Some(Ok(bytes)) => {
                        self.stream = Some(stream);
                        return Ok(Some(bytes));
                    }
                    None if self.offset >= self.size => return Ok(None),
                    None => {} // Ended short: resume.
                    Some(Err(_)) => {}
                }
            }
            if self.offset >= self.size {
                return Ok(None);
            }
            if started.elapsed() > give_up {
                return Err(io::Error::other(format!(
                    "reading {}: the connection dropped at byte {} of {} and could not be \
                     resumed",
                    self.name, self.offset, self.size
                )));
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(4));
            match self.connect() {
                Ok(()) => {}
                Err(object_store::Error::Precondition { .. }) => {
                    return Err(io::Error::other(format!(
                        "reading {}: the object changed while it was read",
                        self.name
                    )));
                }
                Err(_) => {} // Retried until `give_up`.
            }
        }
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.next_chunk()? {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        }
    }

    #[test]
    fn a_port_with_403_in_it_is_not_a_refusal() {
        // A CI run once chose port 40321 for "nothing listening" and got the permissions hint.
        let e = failure(
            "s3://team",
            "listing",
            "x",
            generic(
                "error sending request for url (http://127.0.0.1:40321/team): Connection refused",
            ),
        );
        assert!(e.hint().unwrap().contains("cannot be reached"), "{e:?}");
    }

    #[test]
    fn a_403_is_a_refusal() {
        let e = failure(
            "s3://team",
            "listing",
            "x",
            object_store::Error::PermissionDenied {
                path: "x".into(),
                source: "Server returned non-2xx status code: 403 Forbidden".into(),
            },
        );
        assert!(e.hint().unwrap().contains("denied access"), "{e:?}");
    }
}
