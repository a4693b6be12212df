//! A target environment: a database on a PostgreSQL server plus a file-store directory; its
//! lock, and the checks that it is stopped.
//!
//! Next to the file store (same parent, same filesystem) live hidden side files named after
//! the store (for `/srv/app/data/files`): `.files.mxsnap-lock` (an `flock` held while an
//! operation runs), `.files.mxsnap-journal` and `.files.mxsnap-work-<id>/` (an unfinished
//! restore, see `restore::journal`) and `.files.mxsnap-state` ([`EnvState`]).

pub mod local;
pub mod m2ee;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::write_json_atomically;
use crate::pg::{ConnSpec, Session};
use crate::sys;

/// The database and file store a restore replaces.
#[derive(Debug, Clone)]
pub struct Target {
    pub database: ConnSpec,
    pub files: PathBuf,
    pub pid_file: Option<PathBuf>,
}

/// Held while an operation runs on an environment; released when dropped.
pub struct EnvLock {
    _file: File,
}

impl Target {
    fn store_name(&self) -> String {
        self.files
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "files".into())
    }

    /// The directory holding the file store.
    pub fn parent(&self) -> PathBuf {
        match self.files.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn side_path(&self, what: &str) -> PathBuf {
        self.parent()
            .join(format!(".{}.mxsnap-{what}", self.store_name()))
    }

    pub fn journal_path(&self) -> PathBuf {
        self.side_path("journal")
    }

    pub fn state_path(&self) -> PathBuf {
        self.side_path("state")
    }

    /// Takes the environment's lock (making the store's parent when missing), or says who
    /// holds it.
    pub fn lock(&self) -> Result<EnvLock> {
        let parent = self.parent();
        fs::create_dir_all(&parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        let path = self.side_path("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        match sys::lock_exclusive(&file, false) {
            Ok(()) => Ok(EnvLock { _file: file }),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                Err(Error::not_allowed(format!(
                    "another mxsnap operation is running on this environment (it holds {})",
                    path.display()
                ))
                .with_hint("wait for it to finish, then run this again"))
            }
            Err(e) => Err(Error::io(format!("locking {}", path.display()), e)),
        }
    }

    /// Refuses when the app may be running: a live pid file, or sessions on the database.
    /// Returns the checks that passed, for the plan.
    pub fn check_stopped(&self, admin: &Session) -> Result<Vec<String>> {
        let mut passed = Vec::new();
        if let Some(pid_file) = &self.pid_file {
            match read_pid(pid_file)? {
                Some(pid) if sys::process_alive(pid) => {
                    return Err(Error::not_allowed(format!(
                        "the app is running: process {pid} named in {} is alive",
                        pid_file.display()
                    ))
                    .with_hint("stop the app first, then restore (the cloud refuses too: ERROR_NOT_ALLOWED)"));
                }
                Some(pid) => passed.push(format!(
                    "pid file {} names process {pid}, which is not running",
                    pid_file.display()
                )),
                None => passed.push(format!("no pid file at {}", pid_file.display())),
            }
        }
        let db = self.database.dbname();
        let sessions = settled_sessions(admin, db)?;
        if !sessions.is_empty() {
            return Err(Error::not_allowed(format!(
                "database {db} is in use by {} session(s): {}",
                sessions.len(),
                sessions.join("; ")
            ))
            .with_hint("stop the app and close other connections to the database, then restore"));
        }
        passed.push(format!("no other session is connected to database {db}"));
        Ok(passed)
    }
}

/// Sessions on `db`, asked again for up to two seconds while there are any: a client that has
/// just disconnected stays listed until its backend has exited, which takes a moment.
pub fn settled_sessions(admin: &Session, db: &str) -> Result<Vec<String>> {
    let mut sessions = admin.sessions_on(db)?;
    for _ in 0..20 {
        if sessions.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        sessions = admin.sessions_on(db)?;
    }
    Ok(sessions)
}

fn read_pid(path: &Path) -> Result<Option<i32>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let pid = text.trim().parse::<i32>().map_err(|_| {
                Error::not_allowed(format!(
                    "the pid file {} does not hold a process id ({:?})",
                    path.display(),
                    text.trim()
                ))
                .with_hint("check --pid-file; remove the file if the app is stopped")
            })?;
            Ok(Some(pid))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// The admin connection: the server's maintenance database, never the target itself.
pub fn admin_session(target: &ConnSpec) -> Result<Session> {
    match Session::connect(&target.with_dbname("postgres")) {
        Ok(s) => Ok(s),
        Err(first) => Session::connect(&target.with_dbname("template1")).map_err(|_| first),
    }
}

/// What an earlier restore recorded about the environment (the model version, for the
/// older-model warning).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnvState {
    pub model_version: Option<String>,
}

impl EnvState {
    /// The recorded state; an unreadable file counts as none (it only feeds a warning).
    pub fn load(target: &Target) -> EnvState {
        fs::read(target.state_path())
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, target: &Target) -> Result<()> {
        write_json_atomically(&target.state_path(), self)
    }
}

/// Compares dotted version numbers ("1.0.11.50"); `None` when either is not one.
pub fn compare_versions(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let parse = |s: &str| -> Option<Vec<u64>> { s.split('.').map(|p| p.parse().ok()).collect() };
    Some(parse(a)?.cmp(&parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("1.0.11.50", "1.0.9.60"), Some(Greater));
        assert_eq!(compare_versions("1.2", "1.2"), Some(Equal));
        assert_eq!(compare_versions("unknown", "1.2"), None);
    }

    #[test]
    fn pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.pid");
        assert_eq!(read_pid(&p).unwrap(), None);
        fs::write(&p, format!("{}\n", std::process::id())).unwrap();
        let pid = read_pid(&p).unwrap().unwrap();
        assert!(sys::process_alive(pid));
        fs::write(&p, "garbage").unwrap();
        assert!(read_pid(&p).is_err());
    }
}
