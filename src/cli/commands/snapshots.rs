//! `mxsnap snapshots ...`: the catalogue.

use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;
use chrono_tz::Tz;

use crate::cli::args::SnapshotsAction as A;
use crate::cli::ui::{self, Reporter, human, local_time, parse_tz};
use mxsnap::catalog::ops::{self, DownloadTo, SnapshotRequest};
use mxsnap::catalog::{Record, Repo};

pub fn run(action: &A, quiet: bool) -> anyhow::Result<()> {
    let cancel = ui::interrupt_cancel();
    match action {
        A::Create {
            repo,
            environment,
            database,
            files,
            comment,
            nightly,
            model_version,
            pg_bin,
            json,
            dry_run,
        } => {
            let tz = parse_tz(&repo.tz)?;
            let plan = ops::plan_create(SnapshotRequest {
                repo: repo.repo.clone(),
                environment: environment.clone(),
                database: database.clone(),
                files: files.clone(),
                comment: comment.clone(),
                nightly: *nightly,
                created_by: None,
                model_version: model_version.clone(),
                pg_bin: pg_bin.clone(),
                tz,
            })
            .context("creating the snapshot")?;
            if *dry_run {
                let plan = plan.checked().context("creating the snapshot")?;
                let Some(view) = plan.view() else {
                    return Ok(());
                };
                return ui::print_plan(&view, *json, |o| {
                    writeln!(
                        o,
                        "  snapshot: {} of {} ({:?}) into {}{}",
                        view.snapshot_id,
                        view.environment,
                        view.kind,
                        view.repo.display(),
                        if view.repo_created {
                            " (the catalogue is made first)"
                        } else {
                            ""
                        }
                    )?;
                    writeln!(o, "  archive:  {}", view.archive.display())?;
                    ui::print_steps(o, &view.create.steps)
                });
            }
            let reporter = Reporter::new(quiet);
            let rec = ops::execute_create(plan, &reporter, &cancel);
            reporter.done();
            let rec = rec.context("creating the snapshot")?;
            if *json {
                return ui::print_json(&rec.api_v1());
            }
            writeln!(ui::out(), "{}", rec.id)?;
            if !quiet {
                eprintln!(
                    "mxsnap: snapshot {} of {} completed: {}, expires {}",
                    rec.id,
                    rec.environment,
                    human(rec.archive_bytes.unwrap_or(0)),
                    rec.expires_on.map_or("never".into(), |t| local_time(t, tz))
                );
            }
        }
        A::Config {
            repo,
            encrypt_to,
            encrypt_to_file,
            no_encryption,
            json,
            dry_run,
        } => {
            let encrypt = if *no_encryption {
                None
            } else {
                Some(mxsnap::crypt::EncryptTo::recipients(
                    encrypt_to,
                    encrypt_to_file,
                )?)
            };
            let plan = ops::plan_config(&repo.repo, encrypt)?;
            if *dry_run {
                let view = plan.view();
                return ui::print_plan(&view, *json, |o| {
                    writeln!(
                        o,
                        "  {}: encrypt new snapshots to {}{}",
                        view.repo.display(),
                        describe_keys(&view.encrypt_to),
                        if view.repo_created {
                            " (the catalogue is made first)"
                        } else {
                            ""
                        }
                    )
                });
            }
            let config = ops::execute_config(plan, &cancel)?;
            if *json {
                return ui::print_json(&config);
            }
            if !quiet {
                eprintln!(
                    "mxsnap: {}: new snapshots are encrypted to {}",
                    repo.repo.display(),
                    describe_keys(&config.encrypt_to)
                );
            }
        }
        A::List {
            repo,
            environment,
            json,
        } => {
            let tz = parse_tz(&repo.tz)?;
            let recs = Repo::open(&repo.repo, false)?.list(environment.as_deref(), tz)?;
            if *json {
                let v: Vec<_> = recs.iter().map(Record::api_v1).collect();
                return ui::print_json(&v);
            }
            print_list(&recs, tz)?;
        }
        A::Show { repo, id, json } => {
            let tz = parse_tz(&repo.tz)?;
            let r = Repo::open(&repo.repo, false)?.get(id, tz)?;
            if *json {
                return ui::print_json(&r.details());
            }
            print_show(&r, tz)?;
        }
        A::Copy {
            from,
            to,
            ids,
            environment,
            pg_bin,
            keys,
            json,
            dry_run,
        } => {
            let plan = mxsnap::catalog::copy::plan_copy(mxsnap::catalog::copy::CopyRequest {
                from,
                to,
                ids: ids.clone(),
                environment: environment.clone(),
                keys: ui::keys(keys)?,
                pg_bin: pg_bin.clone(),
            })?;
            if *dry_run {
                let v = plan.view();
                return ui::print_plan(&v, *json, |o| {
                    for id in &v.copy {
                        writeln!(o, "  copy {id} from {} to {}", v.from, v.to)?;
                    }
                    for id in &v.already_there {
                        writeln!(o, "  skip {id}: already in {}", v.to)?;
                    }
                    writeln!(o, "  {} to copy", human(v.bytes))
                });
            }
            let reporter = Reporter::new(quiet);
            let report = mxsnap::catalog::copy::execute_copy(plan, &reporter, &cancel);
            reporter.done();
            let report = report.context("copying snapshots")?;
            if *json {
                return ui::print_json(&report);
            }
            let mut o = ui::out();
            for r in &report.copied {
                writeln!(o, "{}", r.id)?;
            }
            if !quiet {
                for id in &report.checksum_only {
                    eprintln!(
                        "mxsnap: {id} is encrypted and no key was given: checked by size and \
                         SHA-256 only"
                    );
                }
                for id in &report.already_there {
                    eprintln!("mxsnap: {id} is already there");
                }
                eprintln!(
                    "mxsnap: copied {} snapshot(s), each verified",
                    report.copied.len()
                );
            }
        }
        A::Comment {
            repo,
            id,
            text,
            dry_run,
        } => {
            let plan = ops::plan_comment(&repo.repo, id, text)?;
            if *dry_run {
                let v = plan.view();
                return ui::print_plan(&v, false, |o| {
                    writeln!(
                        o,
                        "  set the comment of {} from {:?} to {:?}",
                        v.snapshot_id,
                        v.comment_before.as_deref().unwrap_or_default(),
                        v.comment
                    )
                });
            }
            let r = ops::execute_comment(plan, &cancel)?;
            if !quiet {
                eprintln!("mxsnap: comment of {} set", r.id);
            }
        }
        A::Delete { repo, id, dry_run } => {
            let plan = ops::plan_delete(&repo.repo, id)?;
            if *dry_run {
                let v = plan.view();
                return ui::print_plan(&v, false, |o| {
                    let archive = v.archive.as_ref();
                    writeln!(
                        o,
                        "  delete snapshot {} of {} ({:?}) and its archive {}",
                        v.snapshot_id,
                        v.environment,
                        v.state,
                        archive.map_or("(none)".to_string(), |p| p.display().to_string())
                    )
                });
            }
            let r = ops::execute_delete(plan, &cancel)?;
            if !quiet {
                eprintln!("mxsnap: deleted snapshot {} of {}", r.id, r.environment);
            }
        }
        A::Download {
            repo,
            id,
            variant,
            output,
            force,
            json,
            keys,
            dry_run,
        } => {
            let to = if output == Path::new("-") {
                DownloadTo::Writer(Box::new(io::stdout()))
            } else {
                DownloadTo::Path(output.clone())
            };
            let plan = ops::plan_download(&repo.repo, id, *variant, to, *force, ui::keys(keys)?)?;
            if *dry_run {
                let view = plan.view();
                return ui::print_plan(&view, *json, |o| ui::print_steps(o, &view.steps));
            }
            let reporter = Reporter::new(quiet);
            let written = ops::execute_download(plan, &reporter, &cancel);
            reporter.done();
            if let Some(path) = written.context("downloading the snapshot")? {
                if *json {
                    return ui::print_json(&serde_json::json!({ "output": path }));
                }
                writeln!(ui::out(), "{}", path.display())?;
            }
        }
        A::Restore { repo, id, target } => {
            let store = Repo::open(&repo.repo, false)?;
            let rec = store.get(id, Tz::UTC)?;
            let archive = store.completed(&rec, "it cannot be restored")?;
            crate::cli::commands::restore::run(target, archive.into_source()?, quiet)?;
        }
        A::Prune {
            repo,
            environment,
            now,
            dry_run,
            json,
        } => {
            let tz = parse_tz(&repo.tz)?;
            let now = match now {
                Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| {
                        mxsnap::Error::usage(format!("--now {t:?} is not an RFC 3339 time: {e}"))
                    })?
                    .with_timezone(&chrono::Utc),
                None => chrono::Utc::now(),
            };
            let plan = ops::plan_prune(&repo.repo, environment.as_deref(), now, tz)?;
            let decisions = if *dry_run {
                plan.decisions().to_vec()
            } else {
                ops::execute_prune(plan, &cancel)?
            };
            print_prune(&decisions, *dry_run, *json, tz)?;
        }
    }
    Ok(())
}

fn describe_keys(keys: &[String]) -> String {
    if keys.is_empty() {
        "nobody (not encrypted)".to_string()
    } else {
        keys.join(", ")
    }
}

fn print_list(recs: &[Record], tz: Tz) -> io::Result<()> {
    let mut o = ui::out();
    writeln!(
        o,
        "{:36}  {:12} {:9} {:7} {:16}  {:16}  {:>9}  {:10} COMMENT",
        "SNAPSHOT ID", "ENVIRONMENT", "STATE", "KIND", "CREATED", "EXPIRES", "SIZE", "MODEL"
    )?;
    for r in recs {
        writeln!(
            o,
            "{:36}  {:12} {:9} {:7} {:16}  {:16}  {:>9}  {:10} {}",
            r.id,
            r.environment,
            format!("{:?}", r.state),
            format!("{:?}", r.kind).to_lowercase(),
            local_time(r.created_on, tz),
            r.expires_on.map_or("-".into(), |t| local_time(t, tz)),
            r.archive_bytes.map_or("-".into(), human),
            r.model_version.as_deref().unwrap_or("-"),
            r.comment.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

fn print_show(r: &Record, tz: Tz) -> io::Result<()> {
    let mut o = ui::out();
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".into(), |t| local_time(t, tz));
    writeln!(o, "Snapshot ID:    {}", r.id)?;
    writeln!(o, "Environment:    {}", r.environment)?;
    writeln!(
        o,
        "Status:         {:?}{}",
        r.state,
        r.status_message
            .as_ref()
            .map_or(String::new(), |m| format!(" ({m})"))
    )?;
    writeln!(o, "Created by:     {}", r.created_by)?;
    writeln!(o, "Kind:           {:?}", r.kind)?;
    writeln!(o, "Date:           {}", local_time(r.created_on, tz))?;
    writeln!(o, "Finished on:    {}", time(r.finished_on))?;
    writeln!(o, "Expires on:     {}", time(r.expires_on))?;
    writeln!(
        o,
        "Model version:  {}",
        r.model_version.as_deref().unwrap_or("-")
    )?;
    writeln!(o, "Comment:        {}", r.comment.as_deref().unwrap_or(""))?;
    writeln!(
        o,
        "Size:           {} (dump {}, files {} in {} files, database {})",
        r.archive_bytes.map_or("-".into(), human),
        r.dump_bytes.map_or("-".into(), human),
        r.files_bytes.map_or("-".into(), human),
        r.file_count.map_or("-".into(), |c| c.to_string()),
        r.database_bytes.map_or("-".into(), human)
    )?;
    writeln!(
        o,
        "SHA-256:        {}",
        r.archive_sha256.as_deref().unwrap_or("-")
    )?;
    if let Some(keys) = &r.encrypted_to {
        writeln!(o, "Encrypted to:   {}", keys.join(", "))?;
    }
    Ok(())
}

fn print_prune(
    decisions: &[(Record, mxsnap::catalog::Decision)],
    dry_run: bool,
    json: bool,
    tz: Tz,
) -> anyhow::Result<()> {
    if json {
        let v: Vec<_> = decisions
            .iter()
            .map(|(r, d)| {
                serde_json::json!({
                    "SnapshotID": r.id,
                    "Environment": r.environment,
                    "State": r.state,
                    "CreatedOn": r.created_on.timestamp_millis(),
                    "ExpiresOn": d.expires.map(|t| t.timestamp_millis()),
                    "Keep": d.keep,
                    "Rule": d.rule,
                    "Deleted": !d.keep && !dry_run,
                })
            })
            .collect();
        return ui::print_json(&v);
    }
    let mut o = ui::out();
    for (r, d) in decisions {
        let verdict = match (d.keep, dry_run) {
            (true, _) => "keep",
            (false, true) => "delete",
            (false, false) => "deleted",
        };
        writeln!(
            o,
            "{verdict:8} {}  {:12} {:9} {}  expires {:16}  {}",
            r.id,
            r.environment,
            format!("{:?}", r.state),
            local_time(r.created_on, tz),
            d.expires.map_or("never".into(), |t| local_time(t, tz)),
            d.rule.describe()
        )?;
    }
    Ok(())
}
