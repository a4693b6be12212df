//! Archives at an `http://` or `https://` URL, read as a stream that survives a bad network.
//!
//! A dropped, stalled or short connection is resumed with `Range: bytes=<offset>-`, guarded
//! by the validator the first response gave (`If-Range` with its strong ETag, else its
//! Last-Modified), so the bytes joined are of one and the same file. A server that ignores
//! Range is read again from the start once, skipping what was already read (and said so); a
//! file that changed on the server is an error. Retries back off (0.25 s doubling to 4 s) and
//! give up after a bounded time without progress. Nothing is kept on disk: the reader hands
//! the bytes on, and every check downstream (codec trailer, manifest) still applies.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Receives what the reader has to say while it works (a restart from zero, retries).
pub type Notes = Arc<dyn Fn(&str) + Send + Sync>;

/// A duration in seconds from the variable `name`, else `default`.
pub(crate) fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

pub fn is_url(arg: &str) -> bool {
    arg.starts_with("http://") || arg.starts_with("https://")
}

/// The URL with any user:password removed, for messages.
pub fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}/{path}")
        }
        None => url.to_string(),
    }
}

pub struct HttpReader {
    agent: ureq::Agent,
    url: String,
    body: Option<Box<dyn Read + Send>>,
    offset: u64,
    total: Option<u64>,
    /// (`If-Range` value, as first seen): a strong ETag or Last-Modified.
    validator: Option<String>,
    restarted: bool,
    /// Set by [`HttpReader::resume`] until the first response: a 200 then means "start over",
    /// not "skip what was read".
    resuming_file: bool,
    give_up: Duration,
    notes: Notes,
}

/// Where a [`HttpReader::resume`] really starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// At the byte asked for: the server honoured Range and the file is the same.
    At(u64),
    /// At zero: the file changed on the server, or the server cannot resume.
    FromStart,
}

enum Attempt {
    Body(Box<dyn Read + Send>),
    /// Worth trying again (a 5xx, a connection error).
    Retry(String),
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl HttpReader {
    /// Connects and reads the response headers (retrying a failing server for a while).
    pub fn open(url: &str, notes: Notes) -> Result<HttpReader> {
        let mut reader = HttpReader::new(url, notes);
        reader.connect(url)?;
        Ok(reader)
    }

    /// Continues a download of which `offset` bytes are already kept (in a `.partial` file),
    /// guarded by the `validator` the first response gave. The server may start over; the
    /// answer says where the body begins.
    pub fn resume(
        url: &str,
        offset: u64,
        validator: Option<String>,
        notes: Notes,
    ) -> Result<(HttpReader, Resumed)> {
        let mut reader = HttpReader::new(url, notes);
        if offset > 0 && validator.is_some() {
            reader.offset = offset;
            reader.validator = validator;
            reader.resuming_file = true;
        }
        reader.connect(url)?;
        let at = match reader.offset {
            0 => Resumed::FromStart,
            n => Resumed::At(n),
        };
        Ok((reader, at))
    }

    fn connect(&mut self, url: &str) -> Result<()> {
        self.connect_with_retries().map_err(|e| match e.kind() {
            io::ErrorKind::Other => Error::environment(format!("{}: {e}", shown(url))),
            _ => Error::io(format!("reading {}", shown(url)), e),
        })
    }

    fn new(url: &str, notes: Notes) -> HttpReader {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            // A connection that stops delivering is treated as dropped.
            .timeout_per_read(Some(env_secs("MXSNAP_HTTP_STALL_SECS", 20)))
            .build()
            .into();
        HttpReader {
            agent,
            url: url.to_string(),
            body: None,
            offset: 0,
            total: None,
            validator: None,
            restarted: false,
            resuming_file: false,
            give_up: env_secs("MXSNAP_HTTP_GIVE_UP_SECS", 120),
            notes,
        }
    }

    /// The first response's strong ETag, else its Last-Modified: what a later
    /// [`HttpReader::resume`] is guarded by.
    pub fn validator(&self) -> Option<&str> {
        self.validator.as_deref()
    }

    /// Bytes of the file read so far (with those a resume started after).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The size from Content-Length, when the server gave one.
    pub fn size(&self) -> Option<u64> {
        self.total
    }

    fn attempt(&mut self) -> io::Result<Attempt> {
        let mut req = self.agent.get(&self.url);
        let resuming = self.offset > 0;
        if resuming {
            req = req.header("Range", &format!("bytes={}-", self.offset));
            if let Some(v) = &self.validator {
                req = req.header("If-Range", v);
            }
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(format!("{e}"))),
        };
        let status = resp.status().as_u16();
        match status {
            200 | 206 => {}
            500..=599 | 408 | 429 => {
                return Ok(Attempt::Retry(format!("the server answered {status}")));
            }
            404 => return Err(io::Error::other("no such file on the server (404)")),
            401 | 403 => {
                return Err(io::Error::other(format!(
                    "the server refused access ({status}); is the link expired or private?"
                )));
            }
            other => return Err(io::Error::other(format!("the server answered {other}"))),
        }
        let etag = header(&resp, "etag").filter(|e| !e.starts_with("W/"));
        let validator = etag.or_else(|| header(&resp, "last-modified"));
        if !resuming {
            self.total = header(&resp, "content-length").and_then(|l| l.parse().ok());
            self.validator = validator;
            return Ok(Attempt::Body(Box::new(resp.into_body().into_reader())));
        }
        let first_of_file = std::mem::take(&mut self.resuming_file);
        if status == 206 {
            let range = header(&resp, "content-range");
            let range = range.as_deref().and_then(|r| r.strip_prefix("bytes "));
            let starts = range
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<u64>().ok());
            if first_of_file {
                self.total = range
                    .and_then(|r| r.rsplit('/').next())
                    .and_then(|t| t.parse().ok());
            }
            if starts != Some(self.offset) {
                return Err(io::Error::other(format!(
                    "the server resumed at another place than byte {} asked for",
                    self.offset
                )));
            }
            return Ok(Attempt::Body(Box::new(resp.into_body().into_reader())));
        }
        // 200 to a Range request: the file changed (If-Range failed) or the server cannot
        // resume.
        if first_of_file {
            // Nothing read in this process yet: the kept bytes are dropped, the body is the
            // whole file.
            (self.notes)(&format!(
                "{} {}: downloading it again from the start",
                shown(&self.url),
                if validator.is_some() && validator != self.validator {
                    "changed on the server since the partial download"
                } else {
                    "cannot resume (it ignores Range)"
                }
            ));
            self.offset = 0;
            self.total = header(&resp, "content-length").and_then(|l| l.parse().ok());
            self.validator = validator;
            return Ok(Attempt::Body(Box::new(resp.into_body().into_reader())));
        }
        if self.validator.is_some() && validator != self.validator {
            return Err(io::Error::other(format!(
                "the file changed on the server while it was read ({} then {}); nothing \
                 can be joined across it",
                self.validator.as_deref().unwrap_or("?"),
                validator.as_deref().unwrap_or("none")
            )));
        }
        if self.restarted {
            return Err(io::Error::other(
                "the server cannot resume (it ignores Range) and the connection dropped again",
            ));
        }
        self.restarted = true;
        (self.notes)(&format!(
            "{} cannot resume (it ignores Range): reading it again from the start, skipping \
             the {} bytes already read",
            shown(&self.url),
            self.offset
        ));
        let mut body = resp.into_body().into_reader();
        let skipped = io::copy(&mut (&mut body).take(self.offset), &mut io::sink())?;
        if skipped < self.offset {
            return Ok(Attempt::Retry("the restarted download dropped too".into()));
        }
        Ok(Attempt::Body(Box::new(body)))
    }

    /// Gets a body at the current offset, retrying with back-off until `give_up` passes
    /// without success.
    fn connect_with_retries(&mut self) -> io::Result<()> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            match self.attempt()? {
                Attempt::Body(b) => {
                    self.body = Some(b);
                    return Ok(());
                }
                Attempt::Retry(why) => {
                    if started.elapsed() >= self.give_up {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "gave up after {} s of retrying at byte {}: {why}",
                                self.give_up.as_secs(),
                                self.offset
                            ),
                        ));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(4));
                }
            }
        }
    }
}

impl Read for HttpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Every return with bytes is progress, so this read's start is the last progress.
        let since = Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            if self.body.is_none() {
                self.connect_with_retries()?;
            }
            let body = self.body.as_mut().expect("connected above");
            match body.read(buf) {
                Ok(0) if buf.is_empty() => return Ok(0),
                Ok(0) => match self.total {
                    // Fewer bytes than Content-Length: the connection was cut.
                    Some(total) if self.offset < total => self.body = None,
                    _ => return Ok(0),
                },
                Ok(n) => {
                    self.offset += n as u64;
                    if self.total.is_some_and(|t| self.offset > t) {
                        return Err(io::Error::other(
                            "the server sent more bytes than its Content-Length",
                        ));
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.body = None,
            }
            // The connection dropped: resume, but not for ever without progress.
            if since.elapsed() >= self.give_up {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "gave up at byte {} after {} s without progress",
                        self.offset,
                        self.give_up.as_secs()
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(4));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(
            shown("https://u:p@h.example/a/b?x"),
            "https://h.example/a/b?x"
        );
        assert_eq!(shown("http://h:8080/x"), "http://h:8080/x");
        assert!(is_url("https://x") && !is_url("./https"));
    }
}
