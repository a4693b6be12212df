//! Output files that appear whole or not at all: written under a hidden temporary name in the
//! destination directory with mode 0600 (snapshots hold personal data), synced, then renamed.
//! And [`Relay`], which lets the second half of an output be written before the first.

use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};

use crate::archive::codec::IO_BUFFER;
use crate::error::{Error, Result};

/// A byte count for people: `1.5 KiB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Writes `value` as pretty JSON to `path` durably and atomically: a temporary file beside it,
/// fsync, rename, fsync of the directory. A reader sees the old file or the new one, never a
/// part; a crash leaves at most the temporary file, which the next save replaces.
pub fn write_json_atomically<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let shown = path.display();
    let data = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::environment(format!("encoding {shown}: {e}")))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| Error::io(format!("writing {shown}"), e))
}

pub struct PendingFile {
    temp: tempfile::NamedTempFile,
    target: PathBuf,
    overwrite: bool,
}

impl PendingFile {
    /// Prepares to write `target`; refuses an existing file unless `overwrite`.
    pub fn create(target: &Path, overwrite: bool) -> Result<PendingFile> {
        PendingFile::check_target(target, overwrite)?;
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

    /// Refuses an existing `target` unless `overwrite` (what [`create`](Self::create) checks
    /// first, for a plan that must not write anything).
    pub fn check_target(target: &Path, overwrite: bool) -> Result<()> {
        if target.exists() && !overwrite {
            return Err(Error::usage(format!(
                "{} already exists; refusing to overwrite it",
                target.display()
            ))
            .with_hint("choose another name, remove the file, or pass --force"));
        }
        Ok(())
    }

    /// Where the bytes go until [`commit`](PendingFile::commit).
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn writer(&self) -> Result<BufWriter<WriteBehind>> {
        let file = self
            .temp
            .reopen()
            .map_err(|e| Error::io(format!("opening {}", self.path().display()), e))?;
        Ok(BufWriter::with_capacity(IO_BUFFER, WriteBehind::new(file)))
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

/// A file written front to back whose pages are handed to the disk as each few MiB fill,
/// while the rest is still being made. Without it the kernel starts writing only at its dirty
/// threshold (gigabytes here), and the sync before the rename wrote the whole archive with
/// the CPU idle: 0.8 s at the end of a 1 GiB create.
pub struct WriteBehind {
    file: File,
    written: u64,
    handed: u64,
}

/// How much is written before it is handed to the disk.
const WRITE_BEHIND_STEP: u64 = 8 << 20;

impl WriteBehind {
    pub fn new(file: File) -> WriteBehind {
        WriteBehind {
            file,
            written: 0,
            handed: 0,
        }
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.handed >= WRITE_BEHIND_STEP {
            // Starts the writeback and returns; a failure here is only a missed hint, and the
            // final sync reports any real write error.
            crate::sys::start_writeback(&self.file, self.handed, self.written - self.handed);
            self.handed = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The writer for the second half of an output whose first half is still being made on
/// another thread. Until that thread hands the output over (through `handoff`, once its half
/// is written), bytes go to an anonymous spill file; at the hand-over the spill is copied to
/// the output and later bytes go straight there. The spill holds only what was written while
/// waiting, and vanishes with the process however it ends.
pub struct Relay<W: Write> {
    state: RelayState<W>,
    handoff: Receiver<W>,
}

enum RelayState<W> {
    Spilling(File),
    Direct(W),
    /// The first half failed, or copying the spill did: nothing more can be written.
    Broken,
}

impl<W: Write> Relay<W> {
    /// Spills into an unnamed file in `spill_dir` until `handoff` delivers the output. A
    /// dropped sender means the first half failed: writes then fail too.
    pub fn new(spill_dir: &Path, handoff: Receiver<W>) -> io::Result<Relay<W>> {
        Ok(Relay {
            state: RelayState::Spilling(tempfile::tempfile_in(spill_dir)?),
            handoff,
        })
    }

    fn take_over(&mut self, mut out: W) -> io::Result<()> {
        let RelayState::Spilling(mut spill) =
            std::mem::replace(&mut self.state, RelayState::Broken)
        else {
            unreachable!("only a spilling relay takes over");
        };
        spill.rewind()?;
        crate::archive::codec::pump(&mut spill, |chunk| out.write_all(chunk)).map_err(
            |e| match e {
                crate::archive::codec::PumpError::Read(e)
                | crate::archive::codec::PumpError::Write(e) => e,
            },
        )?;
        self.state = RelayState::Direct(out);
        Ok(())
    }

    fn first_half_failed() -> io::Error {
        io::Error::other("the first part of the output was not written")
    }

    /// Waits for the output if it has not come yet, and returns it with everything written.
    pub fn finish(mut self) -> io::Result<W> {
        if matches!(self.state, RelayState::Spilling(_)) {
            let out = self.handoff.recv().map_err(|_| Self::first_half_failed())?;
            self.take_over(out)?;
        }
        match std::mem::replace(&mut self.state, RelayState::Broken) {
            RelayState::Direct(mut out) => {
                out.flush()?;
                Ok(out)
            }
            _ => Err(Self::first_half_failed()),
        }
    }
}

impl<W: Write> Write for Relay<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if matches!(self.state, RelayState::Spilling(_)) {
            match self.handoff.try_recv() {
                Ok(out) => self.take_over(out)?,
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    self.state = RelayState::Broken;
                }
            }
        }
        match &mut self.state {
            RelayState::Spilling(spill) => spill.write(buf),
            RelayState::Direct(out) => out.write(buf),
            RelayState::Broken => Err(Self::first_half_failed()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.state {
            RelayState::Direct(out) => out.flush(),
            _ => Ok(()),
        }
    }
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
        w.flush().unwrap();
        drop(w);
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

    #[test]
    fn write_behind_passes_every_byte_through_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w = WriteBehind::new(File::create(&path).unwrap());
        // Uneven writes that cross several hand-over points.
        let data: Vec<u8> = (0..(3 * WRITE_BEHIND_STEP as usize + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        for chunk in data.chunks(1_000_003) {
            w.write_all(chunk).unwrap();
        }
        w.flush().unwrap();
        // Handed over twice (after 9 and 18 writes); less than a step is left to the sync.
        assert_eq!(w.handed, 18 * 1_000_003);
        assert!(w.written - w.handed < WRITE_BEHIND_STEP);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_relay_joins_halves_in_order_whenever_the_first_arrives() {
        use std::sync::mpsc::channel;
        let dir = tempfile::tempdir().unwrap();
        // The first half arrives after some of the second was written, before the rest.
        let (tx, rx) = channel::<Vec<u8>>();
        let mut relay = Relay::new(dir.path(), rx).unwrap();
        relay.write_all(b"second ").unwrap();
        tx.send(b"first ".to_vec()).unwrap();
        relay.write_all(b"half").unwrap();
        assert_eq!(relay.finish().unwrap(), b"first second half");
        // It arrives only at the end.
        let (tx, rx) = channel::<Vec<u8>>();
        let mut relay = Relay::new(dir.path(), rx).unwrap();
        relay.write_all(b"late").unwrap();
        let sender = std::thread::spawn(move || tx.send(b"early ".to_vec()).unwrap());
        assert_eq!(relay.finish().unwrap(), b"early late");
        sender.join().unwrap();
        // It never arrives: the first half failed.
        let (tx, rx) = channel::<Vec<u8>>();
        let mut relay = Relay::new(dir.path(), rx).unwrap();
        drop(tx);
        assert!(relay.write_all(b"x").is_err());
        assert!(relay.finish().is_err());
        // The spill files are anonymous: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
