//! A target environment: a database on a PostgreSQL server plus a file-store directory, and
//! the machinery that replaces both without ever losing either.
//!
//! Next to the file store (same parent, same filesystem) live three hidden things, named after
//! the store (for `/srv/app/data/files`):
//! - `.files.mxsnap-lock`: an `flock` held while an operation runs on the environment;
//! - `.files.mxsnap-journal`: what an unfinished restore was doing (see [`Journal`]);
//! - `.files.mxsnap-work-<id>/`: the staging area (extracted files, spooled dump).
//!
//! The swap itself is two atomic steps: both database renames in one transaction, and the
//! directories exchanged with `renameat2(RENAME_EXCHANGE)`. The journal records, before the
//! first of them, the OID of the staging database and the inode of the staging directory, so a
//! later run can tell for each step whether it happened, and finish the swap.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pg::query::quote_ident;
use crate::pg::{ConnSpec, Session};

/// The database and file store a restore replaces.
#[derive(Debug, Clone)]
pub struct Target {
    pub database: ConnSpec,
    pub files: PathBuf,
    pub pid_file: Option<PathBuf>,
}

/// Test hook: `MXSNAP_CRASH_AT=<point>` makes the process kill itself with SIGKILL at that
/// point, exactly as `kill -9` would, so crash recovery can be tested deterministically.
pub fn crash_point(point: &str) {
    if std::env::var("MXSNAP_CRASH_AT").is_ok_and(|p| p == point) {
        // SAFETY: kill on our own pid; SIGKILL does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

impl Target {
    fn store_name(&self) -> String {
        self.files
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "files".into())
    }

    /// The directory holding the file store (created if missing).
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

    /// Takes the environment's lock, or says who holds it.
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
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::not_allowed(format!(
                "another mxsnap operation is running on this environment (it holds {})",
                path.display()
            ))
            .with_hint("wait for it to finish, then run this again"));
        }
        Ok(EnvLock { _file: file })
    }

    /// Refuses when the app may be running: a live pid file, or sessions on the database.
    /// Returns the checks that passed, for the plan.
    pub fn check_stopped(&self, admin: &Session) -> Result<Vec<String>> {
        let mut passed = Vec::new();
        if let Some(pid_file) = &self.pid_file {
            match read_pid(pid_file)? {
                Some(pid) if process_alive(pid) => {
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
fn settled_sessions(admin: &Session, db: &str) -> Result<Vec<String>> {
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

pub struct EnvLock {
    _file: File,
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

/// True when process `pid` exists (ours to signal or not).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The admin connection: the server's maintenance database, never the target itself.
pub fn admin_session(target: &ConnSpec) -> Result<Session> {
    match Session::connect(&target.with_dbname("postgres")) {
        Ok(s) => Ok(s),
        Err(first) => Session::connect(&target.with_dbname("template1")).map_err(|_| first),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Staging copies are being made; an interrupted run is rolled back.
    Staging,
    /// Staging copies are complete and checked; an interrupted run is rolled forward.
    Prepared,
}

/// What an unfinished restore was doing; enough for the next run to finish or undo it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub phase: Phase,
    pub target_db: String,
    pub staging_db: Option<String>,
    pub staging_db_oid: Option<u32>,
    /// The name the replaced database gets during the swap.
    pub old_db: String,
    pub files: PathBuf,
    pub work_dir: PathBuf,
    /// True when the file store is replaced.
    pub swap_files: bool,
    pub staging_files_ino: Option<u64>,
    /// Where the replaced file store goes with --keep-previous.
    pub old_files: PathBuf,
    pub keep_previous: bool,
    pub model_version: Option<String>,
}

impl Journal {
    pub fn staging_files(&self) -> PathBuf {
        self.work_dir.join("files")
    }

    /// Writes the journal durably: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = path.with_extension("tmp");
        let data = serde_json::to_vec_pretty(self).expect("journal serializes");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| Error::io(format!("writing the journal {}", path.display()), e))
    }

    pub fn load(path: &Path) -> Result<Option<Journal>> {
        match fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
                Error::environment(format!(
                    "the restore journal {} is unreadable: {e}",
                    path.display()
                ))
                .with_hint("inspect it by hand; it names the staging database and directory")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
}

/// What the swap did, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Swapped {
    pub database_replaced: bool,
    pub files_replaced: bool,
    /// Names the previous database and directory keep with --keep-previous.
    pub previous_database: Option<String>,
    pub previous_files: Option<PathBuf>,
}

fn dir_ino(path: &Path) -> Option<u64> {
    fs::symlink_metadata(path).ok().map(|m| m.ino())
}

/// Atomically exchanges two directory entries (Linux `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid C strings, AT_FDCWD-relative paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn sync_dir(path: &Path) {
    if let Ok(d) = File::open(path) {
        let _ = d.sync_all();
    }
}

/// Finishes a prepared swap; every step checks whether it already happened, so running this
/// again after a crash at any point completes the same swap.
pub fn complete_swap(j: &Journal, admin: &Session, journal_path: &Path) -> Result<Swapped> {
    let mut out = Swapped::default();
    if let (Some(staging), Some(oid)) = (&j.staging_db, j.staging_db_oid) {
        let now = admin.database_name(oid)?;
        if now.as_deref() == Some(staging.as_str()) {
            let target_exists = admin.database_oid(&j.target_db)?.is_some();
            if target_exists {
                let sessions = settled_sessions(admin, &j.target_db)?;
                if !sessions.is_empty() {
                    return Err(Error::not_allowed(format!(
                        "database {} gained sessions during the restore: {}",
                        j.target_db,
                        sessions.join("; ")
                    ))
                    .with_hint(
                        "stop the app and run mxsnap again: the prepared restore is kept and \
                         the next run completes it",
                    ));
                }
            }
            let mut sql = String::from("BEGIN;");
            if target_exists {
                sql.push_str(&format!(
                    "ALTER DATABASE {} RENAME TO {};",
                    quote_ident(&j.target_db),
                    quote_ident(&j.old_db)
                ));
            }
            sql.push_str(&format!(
                "ALTER DATABASE {} RENAME TO {}; COMMIT;",
                quote_ident(staging),
                quote_ident(&j.target_db)
            ));
            admin.execute(&sql)?;
        } else if now.as_deref() != Some(j.target_db.as_str()) {
            return Err(Error::environment(format!(
                "the staging database {staging} (oid {oid}) has disappeared; the restore \
                 cannot be completed"
            ))
            .with_hint(format!(
                "remove {} once you have checked database {}",
                journal_path.display(),
                j.target_db
            )));
        }
        out.database_replaced = true;
    }
    crash_point("swap-db");

    if j.swap_files {
        let staging = j.staging_files();
        let ino = j
            .staging_files_ino
            .expect("prepared journals record the inode");
        if dir_ino(&j.files) != Some(ino) {
            if j.files.exists() {
                exchange(&staging, &j.files).map_err(|e| {
                    Error::io(
                        format!(
                            "exchanging {} with {}",
                            staging.display(),
                            j.files.display()
                        ),
                        e,
                    )
                })?;
            } else {
                fs::rename(&staging, &j.files)
                    .map_err(|e| Error::io(format!("renaming into {}", j.files.display()), e))?;
            }
            sync_dir(j.files.parent().unwrap_or(Path::new(".")));
        }
        out.files_replaced = true;
    }
    crash_point("swap-files");

    // The old copies: kept under their own names, or removed.
    if admin.database_oid(&j.old_db)?.is_some() {
        if j.keep_previous {
            out.previous_database = Some(j.old_db.clone());
        } else {
            admin.execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&j.old_db)
            ))?;
        }
    }
    let old_tree = j.staging_files();
    if j.swap_files && old_tree.exists() && j.keep_previous {
        fs::rename(&old_tree, &j.old_files).map_err(|e| {
            Error::io(
                format!("keeping the previous files as {}", j.old_files.display()),
                e,
            )
        })?;
        out.previous_files = Some(j.old_files.clone());
    }
    remove_dir_all_if_exists(&j.work_dir)?;
    fs::remove_file(journal_path)
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| Error::io(format!("removing {}", journal_path.display()), e))?;
    sync_dir(journal_path.parent().unwrap_or(Path::new(".")));
    Ok(out)
}

/// Undoes a restore that never reached the swap: drops the staging database and removes the
/// staging directory. The target was never touched.
pub fn roll_back(j: &Journal, admin: &Session, journal_path: &Path) -> Result<()> {
    if let Some(staging) = &j.staging_db {
        admin.execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(staging)
        ))?;
    }
    remove_dir_all_if_exists(&j.work_dir)?;
    match fs::remove_file(journal_path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", journal_path.display()), e)),
    }
}

fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// Finishes or undoes whatever an interrupted restore left, as its journal says. Returns a
/// sentence for the report, or `None` when there was nothing to do.
pub fn recover(target: &Target, admin: &Session) -> Result<Option<String>> {
    let path = target.journal_path();
    let Some(j) = Journal::load(&path)? else {
        return Ok(None);
    };
    match j.phase {
        Phase::Staging => {
            roll_back(&j, admin, &path)?;
            Ok(Some(
                "an interrupted restore had not reached its swap: its staging copies were \
                 removed, the environment was never changed"
                    .to_string(),
            ))
        }
        Phase::Prepared => {
            complete_swap(&j, admin, &path)?;
            Ok(Some(
                "an interrupted restore had prepared its swap: the swap was completed".to_string(),
            ))
        }
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// What an earlier restore recorded about the environment (the model version, for the
/// older-model warning).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnvState {
    pub model_version: Option<String>,
}

impl EnvState {
    pub fn load(target: &Target) -> EnvState {
        fs::read(target.state_path())
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, target: &Target) -> Result<()> {
        let path = target.state_path();
        let data = serde_json::to_vec_pretty(self).expect("state serializes");
        fs::write(&path, data).map_err(|e| Error::io(format!("writing {}", path.display()), e))
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
    fn exchange_swaps_two_directories_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("x"), "from a").unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(fs::read_to_string(b.join("x")).unwrap(), "from a");
        assert!(!a.join("x").exists());
    }

    #[test]
    fn pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.pid");
        assert_eq!(read_pid(&p).unwrap(), None);
        fs::write(&p, format!("{}\n", std::process::id())).unwrap();
        let pid = read_pid(&p).unwrap().unwrap();
        assert!(process_alive(pid));
        fs::write(&p, "garbage").unwrap();
        assert!(read_pid(&p).is_err());
    }
}
