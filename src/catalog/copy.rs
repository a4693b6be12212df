//! `snapshots copy`: snapshots moved between two catalogues (a directory and an object store,
//! or two of either), each archive streamed once from one to the other and verified on the way:
//! its size and SHA-256 against the source record, and, unless it is encrypted and no key was
//! given, every member's checks as `verify` makes them. The copy appears in the destination
//! (archive, then a Completed record) only once all of that passed.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use chrono_tz::Tz;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Record, Repo, State};
use crate::crypt::Keys;
use crate::error::{Error, Result};
use crate::progress::{Cancel, Progress};

/// What to copy.
pub struct CopyRequest<'a> {
    pub from: &'a Path,
    pub to: &'a Path,
    /// Snapshot ids (or unique prefixes); none: every Completed snapshot (of `environment`).
    pub ids: Vec<String>,
    pub environment: Option<String>,
    /// Opens encrypted archives so that they are verified in full, not only by checksum.
    pub keys: Keys,
    pub pg_bin: Option<std::path::PathBuf>,
}

pub struct CopyPlan {
    from: Repo,
    to: Repo,
    /// The snapshots to copy, and those the destination already has.
    copy: Vec<Record>,
    present: Vec<Record>,
    keys: Keys,
    pg_bin: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyPlanView {
    pub from: String,
    pub to: String,
    pub copy: Vec<String>,
    pub already_there: Vec<String>,
    pub bytes: u64,
}

impl CopyPlan {
    pub fn view(&self) -> CopyPlanView {
        CopyPlanView {
            from: self.from.root().display().to_string(),
            to: self.to.root().display().to_string(),
            copy: self.copy.iter().map(|r| r.id.clone()).collect(),
            already_there: self.present.iter().map(|r| r.id.clone()).collect(),
            bytes: self.copy.iter().filter_map(|r| r.archive_bytes).sum(),
        }
    }
}

/// The outcome: what was copied and what was there already.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    pub copied: Vec<Record>,
    pub already_there: Vec<String>,
    /// Archives verified only by size and checksum (encrypted, and no key given).
    pub checksum_only: Vec<String>,
}

pub fn plan_copy(req: CopyRequest<'_>) -> Result<CopyPlan> {
    let from = Repo::open(req.from, false)?;
    let to = Repo::open(req.to, true)?;
    if from.root() == to.root() {
        return Err(Error::usage(format!(
            "{} is both the source and the destination",
            from.root().display()
        )));
    }
    let tz = Tz::UTC;
    let chosen: Vec<Record> = if req.ids.is_empty() {
        from.list(req.environment.as_deref(), tz)?
            .into_iter()
            .filter(|r| r.state == State::Completed)
            .collect()
    } else {
        let mut out = Vec::new();
        for id in &req.ids {
            let rec = from.get(id, tz)?;
            if rec.state != State::Completed {
                return Err(Error::usage(format!(
                    "snapshot {} is {:?}, not Completed: there is nothing to copy",
                    rec.id, rec.state
                )));
            }
            out.push(rec);
        }
        out
    };
    let there: std::collections::HashMap<String, Record> = to
        .list(None, tz)?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let (mut copy, mut present) = (Vec::new(), Vec::new());
    for rec in chosen {
        match there.get(&rec.id) {
            Some(t) if t.state == State::Completed && t.archive_sha256 == rec.archive_sha256 => {
                present.push(rec)
            }
            Some(t) => {
                return Err(Error::usage(format!(
                    "snapshot {} is already in {} as a {:?} one",
                    rec.id,
                    to.root().display(),
                    t.state
                ))
                .with_hint("delete it there first, then copy again"));
            }
            None => copy.push(rec),
        }
    }
    Ok(CopyPlan {
        from,
        to,
        copy,
        present,
        keys: req.keys,
        pg_bin: req.pg_bin,
    })
}

pub fn execute_copy(
    plan: CopyPlan,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<CopyReport> {
    let mut report = CopyReport {
        copied: Vec::new(),
        already_there: plan.present.iter().map(|r| r.id.clone()).collect(),
        checksum_only: Vec::new(),
    };
    for rec in &plan.copy {
        cancel.check()?;
        let deep = rec.encrypted_to.is_none() || !plan.keys.is_empty();
        let copied = copy_one(&plan, rec, deep, progress, cancel)?;
        if !deep {
            report.checksum_only.push(rec.id.clone());
        }
        report.copied.push(copied);
    }
    Ok(report)
}

/// What the copy reads, seen by the verifier and written to the destination as it goes.
struct Tee {
    source: Box<dyn Read + Send>,
    /// Taken out once the stream has been read to its end.
    sink: Option<super::ArchiveSink>,
    hasher: Sha256,
    bytes: u64,
}

#[derive(Clone)]
struct TeeReader(Arc<Mutex<Tee>>);

impl Read for TeeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut t = self.0.lock().unwrap();
        let n = t.source.read(buf)?;
        t.sink
            .as_mut()
            .ok_or_else(|| io::Error::other("the copy is over"))?
            .write_all(&buf[..n])?;
        t.hasher.update(&buf[..n]);
        t.bytes += n as u64;
        Ok(n)
    }
}

fn copy_one(
    plan: &CopyPlan,
    rec: &Record,
    deep: bool,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Record> {
    let source = plan.from.completed(rec, "there is nothing to copy")?;
    let name = rec
        .archive
        .clone()
        .ok_or_else(|| Error::environment(format!("snapshot {} names no archive", rec.id)))?;
    let sink = plan.to.archive_sink(&name)?;

    // A Running record first, as a create's: a copy killed now is a crashed one, cleaned up by
    // the destination's next prune (its upload aborted, its partial file removed).
    let mut running = rec.clone();
    running.state = State::Running;
    running.status_message = Some(format!("copying from {}", plan.from.root().display()));
    running.finished_on = None;
    running.pid = Some(std::process::id());
    running.host = Some(super::host_name());
    running.heartbeat_on = Some(Utc::now());
    running.upload = sink.pending_upload();
    plan.to.save_new(&running)?;
    let beat = plan
        .to
        .is_object_store()
        .then(|| super::ops::Heartbeat::start(plan.to.clone(), rec.id.clone()));

    let tee = Arc::new(Mutex::new(Tee {
        source: source.open()?,
        sink: Some(sink),
        hasher: Sha256::new(),
        bytes: 0,
    }));
    let outcome = (|| -> Result<()> {
        let reader = TeeReader(tee.clone());
        if deep {
            let read = crate::inspect::plan(crate::inspect::ReadOptions {
                source: crate::source::Source::Stream {
                    name: source.name(),
                    reader: Box::new(reader),
                },
                verify: true,
                pg_bin: plan.pg_bin.clone(),
                keys: plan.keys.clone(),
            })?;
            crate::inspect::execute(read, progress, cancel)?;
        } else {
            progress.stage("copying the archive", rec.archive_bytes);
            let mut reader = reader;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                cancel.check()?;
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| Error::io(format!("copying {}", source.name()), e))?;
                if n == 0 {
                    break;
                }
                progress.advance(n as u64);
            }
        }
        // Whatever the verifier did not need to read (the end-of-archive padding) still goes.
        let mut rest = TeeReader(tee.clone());
        io::copy(&mut rest, &mut io::sink())
            .map_err(|e| Error::io(format!("copying {}", source.name()), e))?;
        let t = tee.lock().unwrap();
        let sha = crate::archive::writer::hex(&t.hasher.clone().finalize());
        if rec.archive_bytes.is_some_and(|b| b != t.bytes)
            || rec.archive_sha256.as_ref().is_some_and(|s| *s != sha)
        {
            return Err(Error::corrupt(format!(
                "{}: the archive read ({} bytes, SHA-256 {sha}) is not the one recorded \
                 ({} bytes, SHA-256 {})",
                source.name(),
                t.bytes,
                rec.archive_bytes.unwrap_or(0),
                rec.archive_sha256.as_deref().unwrap_or("-")
            ))
            .with_hint("the stored archive changed or is damaged: nothing was copied"));
        }
        Ok(())
    })();
    let sink = tee.lock().unwrap().sink.take().expect("taken once");
    let finished = outcome.and_then(|()| sink.finish());
    drop(beat);
    if let Err(e) = finished {
        // Nothing of the copy stays (the sink removed its partial file or aborted its upload
        // when dropped); the record goes too, unless the store is what failed.
        let _ = plan.to.delete_record(&rec.id);
        return Err(e);
    }
    let mut done = rec.clone();
    done.pid = None;
    done.host = None;
    done.heartbeat_on = None;
    done.upload = None;
    plan.to.upsert(&done)?;
    Ok(done)
}
