//! Every call into libc and every `unsafe` block of the crate, each behind a safe function.

use std::borrow::Borrow;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Reads a file from an offset of its own (`pread`), leaving the file's position alone, so one
/// spool can be read back in several places while it is still written.
pub struct ReadAt<F: Borrow<File>> {
    file: F,
    pos: u64,
}

impl<F: Borrow<File>> ReadAt<F> {
    pub fn new(file: F, pos: u64) -> ReadAt<F> {
        ReadAt { file, pos }
    }
}

impl<F: Borrow<File>> Read for ReadAt<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.borrow().read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Test hook: `MXSNAP_CRASH_AT=<point>` makes the process kill itself with SIGKILL at that
/// point, exactly as `kill -9` would, so crash recovery can be tested deterministically.
/// `MXSNAP_PAUSE_AT=<point>` instead holds the thread there for `MXSNAP_PAUSE_MS` (default
/// 3000), so a test can signal a process in the middle of an operation.
pub fn crash_point(point: &str) {
    if std::env::var("MXSNAP_PAUSE_AT").is_ok_and(|p| p == point) {
        let ms = std::env::var("MXSNAP_PAUSE_MS")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(3000);
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    if std::env::var("MXSNAP_CRASH_AT").is_ok_and(|p| p == point) {
        // SAFETY: kill on our own pid; SIGKILL does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Takes an exclusive `flock` on `file`: waiting for it when `wait`, else failing at once with
/// `WouldBlock` when another process holds it.
pub fn lock_exclusive(file: &File, wait: bool) -> io::Result<()> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True when process `pid` exists (ours to signal or not).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The name of the user we run as, from the password database.
pub fn os_user_name() -> Option<String> {
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr((*pw).pw_name);
        Some(name.to_string_lossy().into_owned())
    }
}

/// Atomically exchanges two directory entries (Linux `renameat2(RENAME_EXCHANGE)`).
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
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
        Err(io::Error::last_os_error())
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
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

/// Makes everything written to the filesystem holding `dir` durable: one `syncfs` costs far
/// less than an `fsync` per file when a store holds tens of thousands of them.
pub fn sync_filesystem(dir: &File) -> io::Result<()> {
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens `rel` (a relative path) below the folder `dir`, read-only, refusing any path that
/// passes through a link or leaves `dir` (`openat2` with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`: a link is `ELOOP`). On kernels before 5.6, which lack `openat2`, only
/// the last component is checked (`O_NOFOLLOW`).
pub fn open_beneath(dir: &File, rel: &str, flags: libc::c_int) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
    let path = CString::new(rel).map_err(io::Error::other)?;
    let flags = flags | libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY;
    let mut fd = -1;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        // SAFETY: open_how is plain integers; all zero is its empty value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        // SAFETY: openat2 on a descriptor we own, a NUL-terminated path and an open_how of
        // the size passed.
        fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        } as libc::c_int;
        if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            NO_OPENAT2.store(true, Ordering::Relaxed);
        }
    }
    if NO_OPENAT2.load(Ordering::Relaxed) {
        // SAFETY: openat on a descriptor we own, with a NUL-terminated path.
        fd = unsafe { libc::openat(dir.as_raw_fd(), path.as_ptr(), flags | libc::O_NOFOLLOW) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor just opened, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Starts writing `len` bytes of `file` from `offset` back to the disk and returns at once.
/// Only a hint: a failure is ignored, the final sync reports any real write error.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range on a descriptor we own, over bytes already written.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// glibc gives each thread that allocates its own heap arena; with the pipeline's threads
/// passing megabyte buffers between them, how much each arena keeps depended on timing, and
/// peak memory varied by a quarter between identical runs. The buffers are pooled, so the
/// allocator is hardly used once an archive streams: one arena costs nothing measurable.
/// Call before any other thread exists.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The errno value of "no space left" and "quota exceeded", for hints.
pub fn is_disk_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The errno value of "permission denied" and "operation not permitted", for hints.
pub fn is_permission(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// Makes the child `cmd` starts die (SIGKILL) when the thread that started it ends, which
/// includes mxsnap being killed: a `kill -9` of mxsnap must not leave pg_dump writing a spool
/// that a later prune has already cleaned up. The spawning thread must wait for the child.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid before the fork; in the child only async-signal-safe calls (prctl,
    // getppid, _exit) between fork and exec.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Asks `prompt` on the controlling terminal and reads a line with echo turned off (a
/// passphrase). `None` when there is no terminal.
pub fn read_secret(prompt: &str) -> Option<io::Result<String>> {
    use std::io::{BufRead, Write};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let fd = tty.as_raw_fd();
    // SAFETY: tcgetattr/tcsetattr on a terminal descriptor we own, with a struct we own.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        saved
    };
    let result = (|| {
        let mut w = &tty;
        w.write_all(prompt.as_bytes())?;
        w.flush()?;
        let mut line = String::new();
        io::BufReader::new(&tty).read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    })();
    // SAFETY: restoring the settings read above.
    unsafe {
        libc::tcsetattr(fd, libc::TCSANOW, &saved);
    }
    Some(result)
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_interrupt(signal: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    // A second interrupt ends the process at once; the restore journal covers that too.
    // SAFETY: signal() is async-signal-safe; restoring the default action.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// Makes SIGINT and SIGTERM set a flag instead of ending the process, so an operation can be
/// cancelled and undo what it began; returns the flag. A second signal ends the process.
pub fn catch_interrupts() -> &'static std::sync::atomic::AtomicBool {
    let handler = note_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler that only stores to an atomic and calls signal().
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    &INTERRUPTED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_two_directories_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("x"), "from a").unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("x")).unwrap(), "from a");
        assert!(!a.join("x").exists());
    }

    #[test]
    fn a_held_lock_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = File::create(&path).unwrap();
        lock_exclusive(&first, false).unwrap();
        let second = File::create(&path).unwrap();
        let err = lock_exclusive(&second, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(first);
        lock_exclusive(&second, false).unwrap();
    }
}
