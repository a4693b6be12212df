//! The journal of a restore and the swap it makes, so that no failure and no `kill -9` ever
//! leaves a half-restored target.
//!
//! The swap is two atomic steps: both database renames in one transaction, and the directories
//! exchanged with `renameat2(RENAME_EXCHANGE)`. The journal (`.files.mxsnap-journal` beside the
//! store) records, before the first of them, the OID of the staging database and the inode of
//! the staging directory, so a later run can tell for each step whether it happened, and
//! finish the swap.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::write_json_atomically;
use crate::pg::Session;
use crate::sys::{self, crash_point};
use crate::target::{Target, settled_sessions};

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

/// The hint for a journal that cannot be acted on: it is the only record of what was staged.
fn journal_hint(path: &Path) -> String {
    format!(
        "the target was not changed by this run; look at {} (it names the staging database and \
         directory), check the target, then remove the staging copies and the journal by hand",
        path.display()
    )
}

impl Journal {
    pub fn staging_files(&self) -> PathBuf {
        self.work_dir.join("files")
    }

    /// Writes the journal durably and atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json_atomically(path, self)
    }

    pub fn load(path: &Path) -> Result<Option<Journal>> {
        match fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
                Error::environment(format!(
                    "the restore journal {} is unreadable: {e}",
                    path.display()
                ))
                .with_hint(journal_hint(path))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Refuses a journal whose fields contradict each other (edited or damaged on disk)
    /// before any step acts on it.
    fn check(&self, path: &Path) -> Result<()> {
        let damaged = |what: &str| {
            Err(Error::environment(format!(
                "the restore journal {} is damaged: {what}",
                path.display()
            ))
            .with_hint(journal_hint(path)))
        };
        if self.phase == Phase::Prepared && self.swap_files && self.staging_files_ino.is_none() {
            return damaged("a prepared swap of the files records no staging directory inode");
        }
        if self.phase == Phase::Prepared
            && self.staging_db.is_some()
            && self.staging_db_oid.is_none()
        {
            return damaged("a prepared swap of the database records no staging database OID");
        }
        if self.target_db.is_empty() || self.old_db.is_empty() {
            return damaged("a database name is empty");
        }
        // The work directory is removed whole: it must be ours, beside the store.
        let parent = |p: &Path| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let ours = self
            .work_dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(".mxsnap-work-"));
        if !ours || parent(&self.work_dir) != parent(&self.files) {
            return damaged(
                "the staging directory is not an mxsnap work directory beside the store",
            );
        }
        Ok(())
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

fn sync_dir(path: &Path) {
    if let Ok(d) = File::open(path) {
        let _ = d.sync_all();
    }
}

/// Finishes a prepared swap; every step checks whether it already happened, so running this
/// again after a crash at any point completes the same swap.
pub fn complete_swap(j: &Journal, admin: &Session, journal_path: &Path) -> Result<Swapped> {
    j.check(journal_path)?;
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
            let mut renames = Vec::new();
            if target_exists {
                renames.push((j.target_db.as_str(), j.old_db.as_str()));
            }
            renames.push((staging.as_str(), j.target_db.as_str()));
            admin.rename_databases(&renames)?;
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

    if let (true, Some(ino)) = (j.swap_files, j.staging_files_ino) {
        let staging = j.staging_files();
        if dir_ino(&j.files) != Some(ino) {
            if j.files.exists() {
                sys::exchange(&staging, &j.files).map_err(|e| {
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
            admin.drop_database(&j.old_db)?;
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
    remove_file_if_exists(journal_path)?;
    sync_dir(journal_path.parent().unwrap_or(Path::new(".")));
    Ok(out)
}

/// Undoes a restore that never reached the swap: drops the staging database and removes the
/// staging directory. The target was never touched.
pub fn roll_back(j: &Journal, admin: &Session, journal_path: &Path) -> Result<()> {
    j.check(journal_path)?;
    if let Some(staging) = &j.staging_db {
        admin.drop_database(staging)?;
    }
    remove_dir_all_if_exists(&j.work_dir)?;
    remove_file_if_exists(journal_path)
}

fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// What the journal of an interrupted restore will make the next run do.
pub fn pending_recovery(target: &Target) -> Result<Option<Phase>> {
    Ok(Journal::load(&target.journal_path())?.map(|j| j.phase))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(dir: &Path) -> Journal {
        Journal {
            phase: Phase::Prepared,
            target_db: "app".into(),
            staging_db: Some("mxsnap_staging_1".into()),
            staging_db_oid: Some(16384),
            old_db: "app_previous".into(),
            files: dir.join("files"),
            work_dir: dir.join(".files.mxsnap-work-1"),
            swap_files: true,
            staging_files_ino: Some(42),
            old_files: dir.join("files.previous"),
            keep_previous: false,
            model_version: None,
        }
    }

    #[test]
    fn contradictory_journals_are_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".files.mxsnap-journal");
        assert!(journal(dir.path()).check(&path).is_ok());
        let mut no_ino = journal(dir.path());
        no_ino.staging_files_ino = None;
        let mut no_oid = journal(dir.path());
        no_oid.staging_db_oid = None;
        let mut elsewhere = journal(dir.path());
        elsewhere.work_dir = PathBuf::from("/tmp/x/.files.mxsnap-work-1");
        let mut not_ours = journal(dir.path());
        not_ours.work_dir = dir.path().join("important");
        for bad in [no_ino, no_oid, elsewhere, not_ours] {
            let err = bad.check(&path).unwrap_err();
            assert!(err.message().contains("damaged"), "{}", err.message());
            assert!(err.hint().unwrap().contains("by hand"));
        }
    }

    #[test]
    fn an_unparsable_journal_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        fs::write(&path, b"{\"phase\": \"prepared\", \"target_db\": 7").unwrap();
        let err = Journal::load(&path).unwrap_err();
        assert!(err.message().contains("unreadable"));
        assert!(err.hint().is_some());
    }
}
