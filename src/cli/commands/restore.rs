//! `mxsnap restore` (and `snapshots restore`, which gives a catalogue archive as the source).

use std::io::Write;

use crate::cli::args::TargetArgs;
use crate::cli::ui::{self, Reporter, human};
use mxsnap::pg::ConnSpec;
use mxsnap::restore::{self, Destination, RestoreOptions, RestoreReport};
use mxsnap::source::Source;
use mxsnap::target::Target;
use mxsnap::target::local::Settings;

pub fn run(args: &TargetArgs, source: Source, quiet: bool) -> anyhow::Result<()> {
    let destination = match (&args.into, &args.files) {
        (Some(dir), _) => Destination::Local(dir.clone()),
        (None, Some(files)) => Destination::Env(Box::new(Target {
            database: ConnSpec::resolve(args.database.as_deref())?,
            files: files.clone(),
            pid_file: args.pid_file.clone(),
        })),
        (None, None) => anyhow::bail!(mxsnap::Error::usage("pass --files DIR, or --into DIR")),
    };
    let plan = restore::plan(RestoreOptions {
        source,
        destination,
        variant: args.variant,
        jobs: args.jobs,
        keep_previous: args.keep_previous,
        clear_rest: args.clear_rest,
        no_sync: args.no_sync,
        order: args.order,
        model_version: args.model_version.clone(),
        pg_bin: args.pg_bin.clone(),
        keys: ui::keys(&args.keys)?,
    })?;
    if args.dry_run {
        return print_plan(&plan.view(), args.json);
    }
    if plan.replaces_data() && !args.yes {
        let view = plan.view();
        let question = format!(
            "replace database {} and files in {}?",
            view.database,
            view.files.display()
        );
        if !ui::confirm(&question)? {
            anyhow::bail!(mxsnap::Error::usage(
                "restore cancelled; nothing was changed"
            ));
        }
    }
    let reporter = Reporter::new(quiet);
    let report = restore::execute(plan, &reporter, &ui::interrupt_cancel());
    reporter.done();
    let report = report?;
    if args.json {
        return ui::print_json(&report);
    }
    print_report(&report, quiet)
}

fn print_plan(view: &restore::PlanView, json: bool) -> anyhow::Result<()> {
    ui::print_plan(view, json, |o| print_plan_text(o, view))
}

fn print_plan_text(o: &mut ui::Out, view: &restore::PlanView) -> std::io::Result<()> {
    let peek = view.peek.as_ref();
    writeln!(
        o,
        "  archive:  {} ({}{})",
        view.archive_name,
        match peek {
            Some(p) => format!(
                "{}, {}",
                p.variant
                    .map_or("variant known once read".to_string(), |v| v.to_string()),
                p.compression
            ),
            None => "a stream, known once read".to_string(),
        },
        view.archive_bytes
            .map_or(String::new(), |s| format!(", {}", human(s)))
            + if view.encrypted {
                ", age-encrypted"
            } else {
                ""
            }
    )?;
    if let Some(m) = peek.and_then(|p| p.metadata.as_ref()) {
        writeln!(
            o,
            "  needs:    dump {} bytes, files {} bytes (from .metadata); {} free there",
            m.dump_size,
            m.files_size,
            view.free_bytes.map_or("?".to_string(), human)
        )?;
    }
    let state = |exists: bool, known: bool, plural: bool| match (known, exists, plural) {
        (false, _, _) => "checked once the environment runs",
        (true, true, false) => "exists, will be replaced",
        (true, true, true) => "exist, will be replaced",
        (true, false, _) => "will be created",
    };
    // Only a planned environment has been looked at (it always has a check).
    let known = !view.checks.is_empty();
    writeln!(
        o,
        "  database: {} ({})",
        view.database,
        state(view.database_exists, known, false)
    )?;
    writeln!(
        o,
        "  files:    {} ({})",
        view.files.display(),
        state(view.files_exist, known, true)
    )?;
    if let Some(r) = &view.recovered {
        writeln!(o, "  recovered: {r}")?;
    }
    for c in &view.checks {
        writeln!(o, "  check ok: {c}")?;
    }
    ui::print_steps(o, &view.steps)
}

fn print_report(report: &RestoreReport, quiet: bool) -> anyhow::Result<()> {
    for w in &report.warnings {
        eprintln!("mxsnap: warning: {w}");
    }
    if !quiet {
        if let Some(r) = &report.recovered {
            eprintln!("mxsnap: {r}");
        }
        eprintln!(
            "mxsnap: restored {} snapshot in {:.1} s: database {}, files {} ({} files, {})",
            report.variant,
            report.seconds,
            report.database.as_deref().unwrap_or("untouched"),
            report
                .files
                .as_ref()
                .map_or("untouched".to_string(), |p| p.display().to_string()),
            report.tree_files,
            human(report.tree_bytes)
        );
        if let Some(db) = &report.swapped.previous_database {
            eprintln!("mxsnap: previous database kept as {db}");
        }
        if let Some(f) = &report.swapped.previous_files {
            eprintln!("mxsnap: previous files kept in {}", f.display());
        }
    }
    // -q means quiet: `mxsnap env status DIR` prints the same settings on demand.
    if let (Some(local), false) = (&report.local, quiet) {
        let mut o = ui::out();
        writeln!(
            o,
            "Local environment in {} is running{}:",
            local.dir.display(),
            match &local.settings.run_as {
                Some(u) => format!(" (PostgreSQL as system user {u}, since initdb refuses root)"),
                None => String::new(),
            }
        )?;
        print_settings(&mut o, &local.settings)?;
        writeln!(o, "Stop it with: mxsnap env stop {}", local.dir.display())?;
    }
    Ok(())
}

pub fn print_settings(o: &mut ui::Out, s: &Settings) -> std::io::Result<()> {
    writeln!(o, "  host:     {}", s.host)?;
    writeln!(o, "  port:     {}", s.port)?;
    writeln!(o, "  database: {}", s.database)?;
    writeln!(o, "  user:     {}", s.user)?;
    writeln!(o, "  password: {}", s.password.as_deref().unwrap_or("?"))?;
    writeln!(o, "  files:    {}", s.files.display())?;
    writeln!(o, "  url:      {}", s.url())?;
    writeln!(
        o,
        "  jdbc:     jdbc:postgresql://{}:{}/{}",
        s.host, s.port, s.database
    )
}
