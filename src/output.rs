//! Output files that appear whole or not at all: written under a hidden temporary name in the
//! destination directory with mode 0600 (snapshots hold personal data), synced, then renamed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::archive::codec::IO_BUFFER;
use crate::error::{Error, Result};

pub struct PendingFile {
    temp: tempfile::NamedTempFile,
    target: PathBuf,
    overwrite: bool,
}

impl PendingFile {
    /// Prepares to write `target`; refuses an existing file unless `overwrite`.
    pub fn create(target: &Path, overwrite: bool) -> Result<PendingFile> {
        if target.exists() && !overwrite {
            return Err(Error::usage(format!(
                "{} already exists; refusing to overwrite it",
                target.display()
            ))
            .with_hint("choose another name, remove the file, or pass --force"));
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "mxsnap".into());
        // tempfile creates the file with mode 0600.
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(dir)
            .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))?;
        Ok(PendingFile {
            temp,
            target: target.to_path_buf(),
            overwrite,
        })
    }

    /// Where the bytes go until [`commit`](PendingFile::commit).
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn writer(&self) -> Result<BufWriter<File>> {
        let file = self
            .temp
            .reopen()
            .map_err(|e| Error::io(format!("opening {}", self.path().display()), e))?;
        Ok(BufWriter::with_capacity(IO_BUFFER, file))
    }

    /// Syncs the data and gives the file its final name. Dropping a `PendingFile` without
    /// committing removes the temporary file.
    pub fn commit(self) -> Result<PathBuf> {
        let target_shown = self.target.display().to_string();
        self.temp
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {target_shown}"), e))?;
        let persisted = if self.overwrite {
            self.temp.persist(&self.target)
        } else {
            self.temp.persist_noclobber(&self.target)
        };
        persisted.map_err(|e| Error::io(format!("renaming into {target_shown}"), e.error))?;
        if let Some(dir) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The rename is durable only once the directory is synced.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.target)
    }
}

/// Flushes a buffered file writer and reports a failure (a full disk shows up here).
pub fn flush(mut w: BufWriter<File>, what: &str) -> Result<File> {
    w.flush()
        .map_err(|e| Error::io(format!("writing {what}"), e))?;
    w.into_inner()
        .map_err(|e| Error::io(format!("writing {what}"), e.into_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn appears_whole_with_mode_0600_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.tar.gz");
        let pending = PendingFile::create(&target, false).unwrap();
        let mut w = pending.writer().unwrap();
        w.write_all(b"data").unwrap();
        flush(w, "a").unwrap();
        assert!(!target.exists());
        pending.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"data");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(PendingFile::create(&target, false).is_err());

        let other = dir.path().join("b.tar.gz");
        drop(PendingFile::create(&other, false).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
