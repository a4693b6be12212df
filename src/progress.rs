//! How an operation reports what it is doing and how it is told to stop, without printing.
//!
//! Every operation's `execute` takes a [`Progress`], which receives [`Event`]s (serialisable,
//! so a service can put them in a job's status; the binary draws a bar), and a [`Cancel`],
//! checked between chunks. [`Tracker`] folds the events into a [`Status`] anyone can poll.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// What an operation tells while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new stage starts; the totals are those of this stage, when known.
    Stage {
        name: String,
        bytes_total: Option<u64>,
        files_total: Option<u64>,
    },
    /// This much more of the current stage is done.
    Advance { bytes: u64, files: u64 },
    /// A line worth logging: what is happening.
    Note { message: String },
    /// Something the user should know; the operation goes on (its report lists it too).
    Warning { message: String },
}

/// Receives an operation's events. `event` is the one method to implement; the others are
/// shorthands the library uses.
pub trait Progress: Sync {
    fn event(&self, event: &Event);

    /// A new stage starts, moving `total` bytes when that is known.
    fn stage(&self, name: &str, total: Option<u64>) {
        self.event(&Event::Stage {
            name: name.to_string(),
            bytes_total: total,
            files_total: None,
        });
    }
    /// A new stage starts, moving `bytes` bytes in `files` files.
    fn stage_with_files(&self, name: &str, bytes: Option<u64>, files: Option<u64>) {
        self.event(&Event::Stage {
            name: name.to_string(),
            bytes_total: bytes,
            files_total: files,
        });
    }
    /// `bytes` more of the current stage are done.
    fn advance(&self, bytes: u64) {
        self.event(&Event::Advance { bytes, files: 0 });
    }
    /// One more file of the current stage is done.
    fn file_done(&self) {
        self.event(&Event::Advance { bytes: 0, files: 1 });
    }
    fn note(&self, message: &str) {
        self.event(&Event::Note {
            message: message.to_string(),
        });
    }
    fn warning(&self, message: &str) {
        self.event(&Event::Warning {
            message: message.to_string(),
        });
    }
}

/// Shows nothing.
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _event: &Event) {}
}

/// Any function of an event is a progress receiver.
impl<F: Fn(&Event) + Sync> Progress for F {
    fn event(&self, event: &Event) {
        self(event)
    }
}

/// Where an operation stands, as a job's status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    pub stage: Option<String>,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub files_done: u64,
    pub files_total: Option<u64>,
    pub warnings: Vec<String>,
    pub last_note: Option<String>,
}

/// Folds events into a [`Status`]; share it (`Arc`) between the job and whoever polls it.
#[derive(Debug, Default)]
pub struct Tracker {
    status: Mutex<Status>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Progress for Tracker {
    fn event(&self, event: &Event) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Stage {
                name,
                bytes_total,
                files_total,
            } => {
                s.stage = Some(name.clone());
                s.bytes_done = 0;
                s.files_done = 0;
                s.bytes_total = *bytes_total;
                s.files_total = *files_total;
            }
            Event::Advance { bytes, files } => {
                s.bytes_done += bytes;
                s.files_done += files;
            }
            Event::Note { message } => s.last_note = Some(message.clone()),
            Event::Warning { message } => s.warnings.push(message.clone()),
        }
    }
}

/// A request to stop, shared between whoever may ask (a signal handler, a service's cancel
/// endpoint) and the operation, which checks it between chunks. Cloning shares the request.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks the operation to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err` with [`Cancelled`] inside once cancelled: what a read or write of the pipeline
    /// returns to unwind it. [`crate::Error`] turns it into an error of kind `Cancelled`.
    pub fn check_io(&self) -> io::Result<()> {
        if self.is_cancelled() {
            Err(io::Error::other(Cancelled))
        } else {
            Ok(())
        }
    }

    pub fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() {
            Err(crate::Error::cancelled())
        } else {
            Ok(())
        }
    }

    /// What an operation that failed after being cancelled reports: the cancel, whatever
    /// error the unwinding produced on the way (a reader cut short looks like a damaged
    /// archive to the code reading it).
    pub fn explain(&self, err: crate::Error) -> crate::Error {
        if self.is_cancelled() && err.kind() != crate::ErrorKind::Cancelled {
            crate::Error::cancelled()
        } else {
            err
        }
    }

    /// `inner`, failing its next read once cancelled.
    pub fn reader<R: Read>(&self, inner: R) -> CancellableReader<R> {
        CancellableReader {
            inner,
            cancel: self.clone(),
        }
    }
}

/// The payload of the I/O error a cancelled read returns.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// True when `err` is, or wraps at any depth (tar and the decoders wrap what they read), a
/// cancellation.
pub fn is_cancelled_io(err: &io::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = cur {
        if e.is::<Cancelled>() {
            return true;
        }
        cur = match e.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|e| e as _),
            None => e.source(),
        };
    }
    false
}

/// A reader that fails once its [`Cancel`] is set: the cheapest place to check, since every
/// pipeline pulls its bytes through one.
pub struct CancellableReader<R> {
    inner: R,
    cancel: Cancel,
}

impl<R: Read> Read for CancellableReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.cancel.check_io()?;
        self.inner.read(buf)
    }
}

impl<R: io::Seek> io::Seek for CancellableReader<R> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.cancel.check_io()?;
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracker_folds_events_into_a_status() {
        let t = Tracker::new();
        t.stage_with_files("packing", Some(100), Some(2));
        t.advance(60);
        t.file_done();
        t.warning("one file is missing");
        t.note("still going");
        let s = t.status();
        assert_eq!(s.stage.as_deref(), Some("packing"));
        assert_eq!((s.bytes_done, s.bytes_total), (60, Some(100)));
        assert_eq!((s.files_done, s.files_total), (1, Some(2)));
        assert_eq!(s.warnings, vec!["one file is missing".to_string()]);
        t.stage("next", None);
        let s = t.status();
        assert_eq!((s.bytes_done, s.files_done, s.bytes_total), (0, 0, None));
        assert_eq!(s.warnings.len(), 1, "warnings outlive their stage");
    }

    #[test]
    fn events_serialise_with_their_kind() {
        let e = Event::Advance { bytes: 5, files: 1 };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"advance","bytes":5,"files":1}"#
        );
    }

    #[test]
    fn a_cancelled_reader_fails_with_a_recognisable_error() {
        let cancel = Cancel::new();
        let mut r = cancel.reader(&b"abcdef"[..]);
        let mut buf = [0u8; 3];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        cancel.clone().cancel();
        let err = r.read(&mut buf).unwrap_err();
        assert!(is_cancelled_io(&err));
        let nested = io::Error::other(io::Error::other(Cancelled));
        assert!(is_cancelled_io(&nested));
        assert!(!is_cancelled_io(&io::Error::other("damaged")));
        let lib = crate::Error::reading("reading", err);
        assert_eq!(lib.kind(), crate::ErrorKind::Cancelled);
        let other = cancel.explain(crate::Error::corrupt("cut short"));
        assert_eq!(other.kind(), crate::ErrorKind::Cancelled);
    }
}
