//! The library's one error type.
//!
//! Every error carries a [`ErrorKind`] (which decides the exit code of the binary), a message
//! that says what failed and on what, and, where we know one, a hint saying what to do next.

use std::fmt;
use std::io;

/// What class of failure this is. The binary maps each kind to a documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command line asked for something impossible (exit 2).
    Usage,
    /// The input is not a snapshot archive at all (exit 3).
    NotAnArchive,
    /// The input is an archive, but it is truncated, damaged or fails its checks (exit 4).
    Corrupt,
    /// Something around us is wrong: the database is unreachable, a tool is missing or too old,
    /// a disk is full, a file cannot be read (exit 5).
    Environment,
    /// The operation is refused because the target is in use (exit 6; the cloud's
    /// `ERROR_NOT_ALLOWED`).
    NotAllowed,
    /// The caller asked the operation to stop (exit 130, as for an interrupt); what it had
    /// begun was undone.
    Cancelled,
}

impl ErrorKind {
    /// The process exit code documented in the README for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::NotAnArchive => 3,
            ErrorKind::Corrupt => 4,
            ErrorKind::Environment => 5,
            ErrorKind::NotAllowed => 6,
            ErrorKind::Cancelled => 130,
        }
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from the mxsnap library.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
    #[source]
    source: Option<Source>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Usage, message)
    }

    pub fn not_an_archive(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotAnArchive, message)
    }

    pub fn corrupt(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Corrupt, message)
    }

    pub fn environment(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Environment, message)
    }

    pub fn not_allowed(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotAllowed, message)
    }

    pub fn cancelled() -> Error {
        Error::new(
            ErrorKind::Cancelled,
            "cancelled; everything the operation had begun was undone",
        )
    }

    /// An I/O failure on our side (reading the file store, writing the output): an
    /// environment problem, not a damaged archive. The `io::Error` stays as the source, so a
    /// caller can still tell a closed pipe or a full disk.
    pub fn io(context: impl Into<String>, err: io::Error) -> Error {
        if crate::progress::is_cancelled_io(&err) {
            return Error::cancelled();
        }
        let hint = if crate::sys::is_disk_full(&err) {
            Some("free some space on that filesystem, or write somewhere else".to_string())
        } else if crate::sys::is_permission(&err) {
            Some("check the permissions of that path".to_string())
        } else {
            None
        };
        Error {
            kind: ErrorKind::Environment,
            message: format!("{}: {}", context.into(), err),
            hint,
            source: Some(Box::new(err)),
        }
    }

    /// True when this error comes from writing to a pipe whose reader has gone.
    pub fn is_broken_pipe(&self) -> bool {
        self.source
            .as_ref()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// An I/O error met while decoding an archive: a damaged or cut stream shows up as an
    /// `UnexpectedEof` or `InvalidData` from the decoder, so those count as corruption.
    pub fn reading(context: impl Into<String>, err: io::Error) -> Error {
        use io::ErrorKind as K;
        if crate::progress::is_cancelled_io(&err) {
            return Error::cancelled();
        }
        match err.kind() {
            K::UnexpectedEof => Error::corrupt(format!(
                "{}: the archive ends too early (truncated): {}",
                context.into(),
                err
            ))
            .with_hint("the file was cut short; download or copy it again"),
            K::InvalidData | K::InvalidInput | K::Other => {
                Error::corrupt(format!("{}: damaged data: {}", context.into(), err))
                    .with_hint("the archive is corrupt; use another copy")
            }
            _ => Error::io(context, err),
        }
    }

    /// The same error, its message prefixed with what was being worked on.
    pub fn context(mut self, what: impl std::fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_source(mut self, source: impl Into<Source>) -> Error {
        self.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_eof_is_corruption_and_disk_full_is_environment() {
        let cut = Error::reading("x", io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
        assert_eq!(cut.kind(), ErrorKind::Corrupt);
        assert!(cut.message().contains("truncated"));
        let full = Error::io("write", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.kind(), ErrorKind::Environment);
        assert!(full.hint().unwrap().contains("space"));
        let source = std::error::Error::source(&full).expect("the io error is kept");
        assert!(source.downcast_ref::<io::Error>().is_some());
        let pipe = Error::io("write", io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(pipe.is_broken_pipe());
        assert!(!full.is_broken_pipe());
    }
}
