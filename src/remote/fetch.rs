//! A download link into a file that survives being stopped: the bytes go to `<file>.partial`,
//! with `<file>.partial.json` saying what they are and the server's validator (ETag or
//! Last-Modified). A later run for the same thing resumes with `Range` + `If-Range`; a file
//! that changed on the server starts over. The file gets its final name only when it is
//! complete and verified (checksums, manifest, pg_restore reading the dump).
//!
//! The link itself is never stored (it is a credential for 8 hours, and a new one is asked for
//! each run); what identifies the download is the caller's `identity`, e.g. the environment,
//! snapshot id and variant.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::archive::Variant;
use crate::crypt::Keys;
use crate::error::{Error, ErrorKind, Result};
use crate::http::{HttpReader, Notes, Resumed};
use crate::inspect::{self, ReadOptions, Report};
use crate::output::{PendingFile, write_json_atomically};
use crate::progress::{Cancel, Progress};
use crate::source::Source;

pub struct FetchOptions {
    pub url: String,
    pub target: PathBuf,
    /// What the bytes are: a `.partial` left by a download of something else is not resumed.
    pub identity: String,
    /// The variant the file must be (checked by verification).
    pub variant: Option<Variant>,
    pub overwrite: bool,
    pub pg_bin: Option<PathBuf>,
    pub keys: Keys,
    pub notes: Notes,
    /// The verified file's final name, when it depends on what arrived (a directory given:
    /// the cloud's name, whose extension follows the compression); `target` otherwise.
    pub final_name: Option<FinalName>,
}

pub type FinalName = Box<dyn FnOnce(&Report) -> PathBuf + Send>;

#[derive(Debug, Clone, Serialize)]
pub struct FetchReport {
    pub file: PathBuf,
    pub bytes: u64,
    /// Where this run started when it resumed a partial download.
    pub resumed_at: Option<u64>,
    /// A partial download was there but could not be continued (the file changed on the
    /// server, or the server cannot resume): it started over.
    pub started_over: bool,
    pub seconds: f64,
    pub verified: Report,
}

/// The sidecar of a `.partial`: what it holds and how to ask for the rest.
#[derive(Debug, Serialize, Deserialize)]
struct PartialState {
    identity: String,
    validator: Option<String>,
    total: Option<u64>,
}

pub fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    target.with_file_name(name)
}

fn state_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".partial.json");
    target.with_file_name(name)
}

/// How many bytes of the same download are kept, their validator, and the whole size.
fn kept(target: &Path, identity: &str) -> Option<(u64, String, Option<u64>)> {
    let state: PartialState =
        serde_json::from_slice(&std::fs::read(state_path(target)).ok()?).ok()?;
    let len = std::fs::metadata(partial_path(target)).ok()?.len();
    if state.identity != identity || state.total.is_some_and(|t| len > t) {
        return None;
    }
    Some((len, state.validator?, state.total))
}

fn remove_partial(target: &Path) {
    let _ = std::fs::remove_file(partial_path(target));
    let _ = std::fs::remove_file(state_path(target));
}

/// Downloads `opts.url` into `opts.target` (see the module's description).
pub fn to_file(
    opts: FetchOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<FetchReport> {
    let started = Instant::now();
    let FetchOptions {
        url,
        target,
        identity,
        variant,
        overwrite,
        pg_bin,
        keys,
        notes,
        final_name,
    } = opts;
    PendingFile::check_target(&target, overwrite)?;
    let partial = partial_path(&target);
    let shown = partial.display().to_string();
    let kept = kept(&target, &identity);
    if kept.is_none() && partial.exists() {
        progress.note(&format!(
            "{shown} is of another download (or has no validator to resume by): starting over"
        ));
    }
    let (offset, validator) = match &kept {
        Some((len, v, _)) if *len > 0 => (*len, Some(v.clone())),
        _ => (0, None),
    };
    // Stopped after the last byte (before verification): nothing left to ask for.
    let complete = kept
        .as_ref()
        .is_some_and(|(len, _, total)| *total == Some(*len) && *len > 0);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&partial)
        .map_err(|e| Error::io(format!("opening {shown}"), e))?;
    let (bytes, resumed_at, started_over) = if complete {
        progress.note(&format!("{shown} is complete: verifying it"));
        (offset, Some(offset), false)
    } else {
        let (reader, resumed) = HttpReader::resume(&url, offset, validator, notes)?;
        let total = reader.size();
        let (resumed_at, started_over) = match resumed {
            Resumed::At(n) => (Some(n), false),
            Resumed::FromStart => (None, offset > 0),
        };
        write_json_atomically(
            &state_path(&target),
            &PartialState {
                identity,
                validator: reader.validator().map(str::to_string),
                total,
            },
        )?;
        let at = resumed_at.unwrap_or(0);
        file.set_len(at)
            .and_then(|_| std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(at)))
            .map_err(|e| Error::io(format!("preparing {shown}"), e))?;
        if let Some(n) = resumed_at {
            progress.note(&format!(
                "resuming the download at byte {n}{}",
                total.map_or(String::new(), |t| format!(" of {t}"))
            ));
        }
        progress.stage("downloading", total);
        progress.advance(at);
        let bytes = match copy(reader, &mut file, progress, cancel) {
            Ok(n) => at + n,
            Err(e) => return Err(kept_error(e, &partial, cancel)),
        };
        if let Some(t) = total.filter(|t| *t != bytes) {
            return Err(Error::corrupt(format!(
                "the download ended at byte {bytes} of the {t} the server announced"
            ))
            .with_hint(format!(
                "{shown} is kept: run the same command again to resume"
            )));
        }
        (bytes, resumed_at, started_over)
    };
    file.sync_all()
        .map_err(|e| Error::io(format!("syncing {shown}"), e))?;
    drop(file);
    crate::sys::crash_point("download-complete");

    let verified = verify(&partial, pg_bin, keys, progress, cancel).map_err(|e| {
        if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotAnArchive) {
            // The bytes are what the server sent, and they are bad: resuming would not help.
            remove_partial(&target);
            e.with_hint("the download was removed; the server's copy may be damaged: try another snapshot or download it again")
        } else {
            e
        }
    })?;
    if let Some(v) = variant.filter(|v| *v != verified.variant) {
        remove_partial(&target);
        return Err(Error::corrupt(format!(
            "the server sent a {} archive where {v} was asked for",
            verified.variant
        ))
        .with_hint("the download was removed; report this to whoever runs the service"));
    }
    let file = match final_name {
        Some(name) => name(&verified),
        None => target.clone(),
    };
    PendingFile::check_target(&file, overwrite)?;
    std::fs::rename(&partial, &file)
        .map_err(|e| Error::io(format!("renaming {shown} into {}", file.display()), e))?;
    if let Some(dir) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    let _ = std::fs::remove_file(state_path(&target));
    Ok(FetchReport {
        file,
        bytes,
        resumed_at,
        started_over,
        seconds: started.elapsed().as_secs_f64(),
        verified,
    })
}

fn copy(
    reader: HttpReader,
    file: &mut File,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<u64> {
    let mut reader = cancel.reader(reader);
    // What a socket read gives at a time anyway; a stop loses at most this much.
    let mut buf = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        let got = match reader.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("downloading", e)),
        };
        file.write_all(&buf[..got])
            .map_err(|e| Error::io("writing the download", e))?;
        n += got as u64;
        progress.advance(got as u64);
        crate::sys::crash_point("download");
    }
}

/// A stopped download keeps its bytes: the error says so, and how to go on.
fn kept_error(e: Error, partial: &Path, cancel: &Cancel) -> Error {
    let len = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let keep = format!(
        "the {len} bytes downloaded are kept in {}: the same command resumes",
        partial.display()
    );
    if e.kind() == ErrorKind::Cancelled || cancel.is_cancelled() {
        return Error::new(ErrorKind::Cancelled, format!("cancelled; {keep}"));
    }
    e.with_hint(keep)
}

fn verify(
    partial: &Path,
    pg_bin: Option<PathBuf>,
    keys: Keys,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Report> {
    let plan = inspect::plan(ReadOptions {
        source: Source::File(partial.to_path_buf()),
        verify: true,
        pg_bin,
        keys,
    })?;
    inspect::execute(plan, progress, cancel)
}
