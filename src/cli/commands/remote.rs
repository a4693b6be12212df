//! `mxsnap remote ...`: a client of the Backups API (the cloud's, or `mxsnap serve`).

use std::io::Write;

use anyhow::Context;

use crate::cli::args::{ApiArgs, ApiChoice, RemoteAction as A, RemoteArgs, TargetArgs};
use crate::cli::ui::{self, Reporter, human};
use mxsnap::archive::Variant;
use mxsnap::remote::fetch::{self, FetchOptions};
use mxsnap::remote::{ApiVersion, Credentials, Remote, RemoteOptions, RemoteSnapshot};
use mxsnap::source::Source;

fn connect(args: &ApiArgs) -> anyhow::Result<Remote> {
    let missing = |what: &str, flag: &str, var: &str| {
        mxsnap::Error::usage(format!("which {what}? pass {flag} (or set {var})"))
    };
    let app = args
        .app
        .clone()
        .ok_or_else(|| missing("app", "--app", "MXSNAP_APP"))?;
    let environment = args
        .environment
        .clone()
        .ok_or_else(|| missing("environment", "--env", "MXSNAP_ENV"))?;
    Ok(Remote::new(RemoteOptions {
        base_url: args.api_url.clone(),
        api: args.api.map(|a| match a {
            ApiChoice::V1 => ApiVersion::V1,
            ApiChoice::V2 => ApiVersion::V2,
        }),
        app,
        environment,
        credentials: Credentials::find(args.credentials.as_deref())?,
    })?)
}

pub fn run(args: &RemoteArgs, quiet: bool) -> anyhow::Result<()> {
    let remote = connect(&args.api)?;
    let cancel = ui::interrupt_cancel();
    match &args.action {
        A::List { json } => {
            let list = remote.list()?;
            if *json {
                return ui::print_json(&list);
            }
            print_list(&list)
        }
        A::Create {
            comment,
            wait,
            json,
        } => {
            let mut snap = remote.create(comment.as_deref())?;
            if *wait {
                let reporter = Reporter::new(quiet);
                let waited = remote.wait(&snap.id, &reporter, &cancel);
                reporter.done();
                snap = waited?;
            }
            if *json {
                return ui::print_json(&snap);
            }
            writeln!(ui::out(), "{}", snap.id)?;
            if !quiet {
                eprintln!(
                    "mxsnap: snapshot {} of {}: {}",
                    snap.id,
                    remote.describe(),
                    snap.state
                );
            }
            Ok(())
        }
        A::Wait { id, json } => {
            let reporter = Reporter::new(quiet);
            let snap = remote.wait(id, &reporter, &cancel);
            reporter.done();
            let snap = snap?;
            if *json {
                return ui::print_json(&snap);
            }
            writeln!(ui::out(), "{} {}", snap.id, snap.state)?;
            Ok(())
        }
        A::Link { id, variant, json } => {
            let snap = remote.completed(id)?;
            let reporter = Reporter::new(quiet);
            let link = remote.link(&snap.id, *variant, &reporter, &cancel);
            reporter.done();
            let link = link?;
            if *json {
                return ui::print_json(&link);
            }
            writeln!(ui::out(), "{}", link.url)?;
            Ok(())
        }
        A::Download {
            id,
            variant,
            output,
            force,
            pg_bin,
            keys,
            json,
        } => {
            let keys = ui::keys(keys)?;
            let snap = remote.completed(id)?;
            let reporter = Reporter::new(quiet);
            let link = remote.link(&snap.id, *variant, &reporter, &cancel);
            let report = link.and_then(|link| {
                let (target, final_name): (_, Option<fetch::FinalName>) = if output.is_dir() {
                    // Named as the cloud names it; the extension follows what arrives.
                    let dir = output.clone();
                    let guess = mxsnap::archive::cloud_file_name(
                        *variant,
                        mxsnap::archive::Compression::Gzip,
                        &snap.id.replace('-', "").chars().take(8).collect::<String>(),
                        &snap
                            .created_at
                            .unwrap_or_else(chrono::Utc::now)
                            .format("%Y%m%d%H%M")
                            .to_string(),
                    );
                    let named = snap.clone();
                    (
                        dir.join(guess),
                        Some(Box::new(move |r: &mxsnap::inspect::Report| {
                            dir.join(mxsnap::remote::download_name(&named, r))
                        })),
                    )
                } else {
                    (output.clone(), None)
                };
                fetch::to_file(
                    FetchOptions {
                        url: link.url,
                        target,
                        identity: format!("{} snapshot {} {}", remote.describe(), snap.id, variant),
                        variant: Some(*variant),
                        overwrite: *force,
                        pg_bin: pg_bin.clone(),
                        keys,
                        notes: ui::url_notes(quiet),
                        final_name,
                    },
                    &reporter,
                    &cancel,
                )
            });
            reporter.done();
            let report = report.context("downloading")?;
            if *json {
                return ui::print_json(&report);
            }
            writeln!(ui::out(), "{}", report.file.display())?;
            if !quiet {
                for w in &report.verified.warnings {
                    eprintln!("mxsnap: warning: {w}");
                }
                eprintln!(
                    "mxsnap: downloaded and verified {} ({}) in {:.1} s{}",
                    report.file.display(),
                    human(report.bytes),
                    report.seconds,
                    match (report.resumed_at, report.started_over) {
                        (Some(at), _) => format!(", resumed at byte {at}"),
                        (None, true) => ", started over (the server's file changed)".into(),
                        _ => String::new(),
                    }
                );
            }
            Ok(())
        }
        A::Restore { id, target } => restore(&remote, id, target, &cancel, quiet),
        A::RestoreThere { id, db_only, yes } => {
            if !yes
                && !ui::confirm(&format!(
                    "replace the data of {} with snapshot {id}?",
                    remote.describe()
                ))?
            {
                anyhow::bail!(mxsnap::Error::usage(
                    "restore cancelled; nothing was changed"
                ));
            }
            let reporter = Reporter::new(quiet);
            let done = remote.restore_there(id, *db_only, &reporter, &cancel);
            reporter.done();
            done?;
            if !quiet {
                eprintln!("mxsnap: restored snapshot {id} into {}", remote.describe());
            }
            Ok(())
        }
    }
}

/// Which link to stream for a restore of `part`: the smaller database-only download when only
/// the database is wanted; files only from v1's link (the cloud's v2 has no files-only
/// archive), else the full snapshot, of which the restore takes the files.
fn link_variant(remote: &Remote, part: Option<Variant>) -> Variant {
    match (part, remote.api()) {
        (Some(Variant::Database), _) => Variant::Database,
        (Some(Variant::Files), ApiVersion::V1) => Variant::Files,
        _ => Variant::Full,
    }
}

fn restore(
    remote: &Remote,
    id: &str,
    target: &TargetArgs,
    cancel: &mxsnap::progress::Cancel,
    quiet: bool,
) -> anyhow::Result<()> {
    let snap = remote.completed(id)?;
    if !quiet {
        eprintln!(
            "mxsnap: restoring snapshot {} of {} (created {}, model {})",
            snap.id,
            remote.describe(),
            snap.created_at
                .map_or("?".into(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
            snap.model_version.as_deref().unwrap_or("?")
        );
    }
    let reporter = Reporter::new(quiet);
    let link = remote.link(
        &snap.id,
        link_variant(remote, target.variant),
        &reporter,
        cancel,
    );
    reporter.done();
    let link = link?;
    super::restore::run(
        target,
        Source::Url {
            url: link.url,
            notes: ui::url_notes(quiet),
        },
        quiet,
    )
}

fn print_list(list: &[RemoteSnapshot]) -> anyhow::Result<()> {
    let mut o = ui::out();
    writeln!(
        o,
        "{:<36}  {:<9}  {:<16}  {:<16}  {:<12}  COMMENT",
        "ID", "STATE", "CREATED (UTC)", "EXPIRES (UTC)", "MODEL"
    )?;
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string())
    };
    for s in list {
        writeln!(
            o,
            "{:<36}  {:<9}  {:<16}  {:<16}  {:<12}  {}",
            s.id,
            s.state,
            time(s.created_at),
            time(s.expires_at),
            s.model_version.as_deref().unwrap_or("-"),
            s.comment.as_deref().unwrap_or("")
        )?;
    }
    o.flush()?;
    Ok(())
}
