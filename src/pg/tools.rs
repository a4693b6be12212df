//! The PostgreSQL client programs: finding them, checking their versions, and running them
//! with their stderr captured on a thread (so a chatty child never blocks) and turned into an
//! error on a non-zero exit.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use super::ConnSpec;
use crate::error::{Error, Result};
use crate::progress::Cancel;

pub struct PgTools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
}

/// Keeps the last `LIMIT` bytes of a child's stderr: the end holds the error.
const STDERR_LIMIT: usize = 16 * 1024;

fn capture_stderr(child: &mut Child) -> JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * STDERR_LIMIT {
                kept.drain(..kept.len() - STDERR_LIMIT);
            }
        }
        String::from_utf8_lossy(&kept).trim().to_string()
    })
}

/// Runs `cmd` with no input or output and its stderr captured; `spawned` runs while the child
/// does. Returns the exit status and the (end of the) stderr text. A cancel kills the child.
fn run_captured(
    cmd: &mut Command,
    program: &Path,
    cancel: &Cancel,
    spawned: impl FnOnce(),
) -> Result<(std::process::ExitStatus, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    crate::sys::die_with_parent(cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", program.display()), e))?;
    spawned();
    let stderr = capture_stderr(&mut child);
    let waiting = |e| Error::io(format!("waiting for {}", program.display()), e);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(waiting)? {
            break status;
        }
        if cancel.is_cancelled() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = stderr.join();
            return Err(Error::cancelled());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Ok((status, stderr.join().unwrap_or_default()))
}

fn search_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The newest `/usr/lib/postgresql/<N>/bin` that holds `program` (Debian's layout).
fn debian_bin(program: &str) -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join(program);
            p.is_file().then_some((major, p))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Parses "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" into 15.
fn parse_major(version_line: &str) -> Option<u32> {
    let after = version_line.split(')').nth(1)?.trim();
    let number = after.split_whitespace().next()?;
    number.split('.').next()?.parse().ok()
}

impl PgTools {
    /// Finds `pg_dump` and `pg_restore` in `pg_bin`, else on PATH, else under
    /// `/usr/lib/postgresql/*/bin`.
    pub fn find(pg_bin: Option<&Path>) -> Result<PgTools> {
        let locate = |program: &str| -> Result<PathBuf> {
            match pg_bin {
                Some(dir) => {
                    let p = dir.join(program);
                    if p.is_file() {
                        Ok(p)
                    } else {
                        Err(Error::environment(format!(
                            "{program} not found in --pg-bin {}",
                            dir.display()
                        )))
                    }
                }
                None => search_path(program)
                    .or_else(|| debian_bin(program))
                    .ok_or_else(|| {
                        Error::environment(format!("{program} not found on PATH")).with_hint(
                            "install the PostgreSQL client (apt-get install postgresql-client) or \
                         pass --pg-bin DIR",
                        )
                    }),
            }
        };
        Ok(PgTools {
            pg_dump: locate("pg_dump")?,
            pg_restore: locate("pg_restore")?,
        })
    }

    fn major_of(program: &Path) -> Result<u32> {
        let out = Command::new(program)
            .arg("--version")
            .output()
            .map_err(|e| Error::io(format!("running {}", program.display()), e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_major(&text).ok_or_else(|| {
            Error::environment(format!(
                "cannot tell the version of {} from {:?}",
                program.display(),
                text.trim()
            ))
        })
    }

    pub fn pg_dump_major(&self) -> Result<u32> {
        Self::major_of(&self.pg_dump)
    }

    pub fn pg_restore_major(&self) -> Result<u32> {
        Self::major_of(&self.pg_restore)
    }

    /// pg_dump refuses servers newer than itself; say so before we start, with what to do.
    pub fn ensure_can_dump(&self, server_version_num: u32) -> Result<u32> {
        let client = self.pg_dump_major()?;
        let server = server_version_num / 10000;
        if client < server {
            return Err(Error::environment(format!(
                "{} is version {client}, older than the PostgreSQL {server} server",
                self.pg_dump.display()
            ))
            .with_hint(format!(
                "install the PostgreSQL {server} client and pass its bin directory with --pg-bin"
            )));
        }
        Ok(client)
    }

    /// `pg_dump -Fc -O -x` of `spec`. `snapshot` pins the dump to an exported snapshot;
    /// `level` sets pg_dump's own compression (`Some(0)` when the outer stream compresses).
    fn dump_command(&self, spec: &ConnSpec, snapshot: Option<&str>, level: Option<u32>) -> Command {
        let mut cmd = Command::new(&self.pg_dump);
        cmd.args(["--format=custom", "--no-owner", "--no-privileges"]);
        if let Some(level) = level {
            cmd.arg(format!("--compress={level}"));
        }
        if let Some(s) = snapshot {
            cmd.arg(format!("--snapshot={s}"));
        }
        // The connection travels in the environment only: nothing secret in argv.
        cmd.envs(spec.child_env());
        cmd
    }

    fn dump_failed(spec: &ConnSpec, status: std::process::ExitStatus, text: &str) -> Error {
        let e = Error::environment(format!(
            "pg_dump of {} failed ({status}): {text}",
            spec.describe()
        ));
        if text.contains("No space left") {
            e.with_hint("free some space where the dump is spooled")
        } else {
            e
        }
    }

    /// Runs pg_dump (see `dump_command`) into `path`.
    pub fn dump_to_file(
        &self,
        spec: &ConnSpec,
        snapshot: Option<&str>,
        level: Option<u32>,
        path: &Path,
        cancel: &Cancel,
    ) -> Result<()> {
        let mut cmd = self.dump_command(spec, snapshot, level);
        cmd.arg("--file").arg(path);
        let (status, text) = run_captured(&mut cmd, &self.pg_dump, cancel, || {})?;
        if !status.success() {
            return Err(Self::dump_failed(spec, status, &text));
        }
        Ok(())
    }

    /// Runs pg_dump (see `dump_command`) and hands its output to `each` as it comes, a chunk
    /// at a time; returns the dump's size. A failure of `each` (a full disk) stops pg_dump and
    /// is returned as it is; a cancel kills pg_dump within 50 ms, even while it writes nothing.
    pub fn dump_to_each(
        &self,
        spec: &ConnSpec,
        snapshot: Option<&str>,
        level: Option<u32>,
        each: &mut dyn FnMut(&[u8]) -> io::Result<()>,
        cancel: &Cancel,
    ) -> Result<u64> {
        let mut cmd = self.dump_command(spec, snapshot, level);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::sys::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", self.pg_dump.display()), e))?;
        let stderr = capture_stderr(&mut child);
        let mut stdout = child.stdout.take().expect("stdout piped");
        let pid = child.id() as libc::pid_t;
        let ended = std::sync::atomic::AtomicBool::new(false);
        let pumped = std::thread::scope(|scope| {
            // The pipe read blocks while pg_dump is quiet (reading the catalogue); a cancel
            // must not wait for its next write.
            scope.spawn(|| {
                while !ended.load(std::sync::atomic::Ordering::Relaxed) {
                    if cancel.is_cancelled() {
                        // SAFETY: kill on our own child, not yet reaped (waited below).
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            });
            let pumped = crate::archive::codec::pump(&mut stdout, |chunk| each(chunk));
            ended.store(true, std::sync::atomic::Ordering::Relaxed);
            pumped
        });
        if pumped.is_err() {
            let _ = child.kill();
        }
        drop(stdout);
        let status = child
            .wait()
            .map_err(|e| Error::io(format!("waiting for {}", self.pg_dump.display()), e))?;
        let text = stderr.join().unwrap_or_default();
        if cancel.is_cancelled() {
            return Err(Error::cancelled());
        }
        let size = pumped.map_err(|e| match e {
            crate::archive::codec::PumpError::Read(e) => Error::io("reading pg_dump's output", e),
            crate::archive::codec::PumpError::Write(e) => Error::io("spooling the dump", e),
        })?;
        if !status.success() {
            return Err(Self::dump_failed(spec, status, &text));
        }
        Ok(size)
    }

    /// Restores the dump at `path` into the (empty) database `spec` names: no owners, no
    /// privileges (objects belong to the restoring role), stopping at the first error, with
    /// `jobs` parallel workers.
    pub fn restore_into(
        &self,
        spec: &ConnSpec,
        path: &Path,
        jobs: usize,
        cancel: &Cancel,
    ) -> Result<()> {
        let mut cmd = Command::new(&self.pg_restore);
        cmd.args(["--no-owner", "--no-privileges", "--exit-on-error"]);
        if jobs > 1 {
            cmd.arg(format!("--jobs={jobs}"));
        }
        cmd.arg("--dbname").arg(spec.dbname());
        cmd.arg(path);
        cmd.envs(spec.child_env());
        let (status, text) = run_captured(&mut cmd, &self.pg_restore, cancel, || {
            crate::sys::crash_point("pg_restore")
        })?;
        if status.success() {
            return Ok(());
        }
        let damaged = [
            "input file",
            "unexpected end",
            "corrupt",
            "invalid",
            "unsupported version",
        ]
        .iter()
        .any(|w| text.contains(w));
        let message = format!("pg_restore failed ({status}): {text}");
        Err(if damaged {
            Error::corrupt(message)
        } else {
            Error::environment(message)
        })
    }

    /// Reads a whole custom-format dump from `data` with `pg_restore -f /dev/null`, which
    /// decodes every TOC entry and data block: a damaged or cut dump makes it fail.
    ///
    /// `data` is read to its end even when pg_restore gives up early, so a caller hashing the
    /// stream still sees all of it.
    pub fn check_dump(&self, data: &mut dyn Read) -> Result<()> {
        let mut cmd = Command::new(&self.pg_restore);
        crate::sys::die_with_parent(&mut cmd);
        let mut child = cmd
            .args(["--file", "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", self.pg_restore.display()), e))?;
        let stderr = capture_stderr(&mut child);
        let mut stdin = child.stdin.take().expect("stdin piped");
        let mut buf = vec![0u8; 256 * 1024];
        let mut child_gone = false;
        let read_result = loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            };
            if !child_gone {
                if let Err(e) = stdin.write_all(&buf[..n]) {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        child_gone = true;
                    } else {
                        break Err(e);
                    }
                }
            }
        };
        drop(stdin);
        let status = child
            .wait()
            .map_err(|e| Error::io("waiting for pg_restore", e))?;
        let text = stderr.join().unwrap_or_default();
        read_result.map_err(|e| Error::reading("reading the dump", e))?;
        if !status.success() {
            if text.contains("unsupported version") {
                return Err(Error::environment(format!(
                    "{} cannot read this dump: {text}",
                    self.pg_restore.display()
                ))
                .with_hint("pass --pg-bin with the bin directory of a newer PostgreSQL client"));
            }
            return Err(Error::corrupt(format!(
                "pg_restore rejects the database dump: {text}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_major;

    #[test]
    fn version_lines() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_restore (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 17beta1"), None);
    }
}
