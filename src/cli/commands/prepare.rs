//! `mxsnap prepare-upload`.

use std::io::Write;

use anyhow::Context;

use crate::cli::args::PrepareArgs;
use crate::cli::ui::{self, Reporter, human};
use mxsnap::prepare::{self, PrepareOptions};

pub fn run(args: &PrepareArgs, quiet: bool) -> anyhow::Result<()> {
    let opts = match (&args.m2ee, &args.files) {
        (Some(m2ee), _) => {
            let from = PrepareOptions::from_m2ee(m2ee, args.output.clone())?;
            PrepareOptions {
                pid_file: args.pid_file.clone().or(from.pid_file.clone()),
                ..from
            }
        }
        (None, Some(files)) => PrepareOptions {
            database: args.database.clone(),
            files: files.clone(),
            pid_file: args.pid_file.clone(),
            output_dir: args.output.clone(),
            pg_bin: None,
            allow_running: false,
            model_version: None,
            files_as: None,
        },
        (None, None) => anyhow::bail!(mxsnap::Error::usage("pass --files DIR, or --m2ee FILE")),
    };
    let plan = prepare::plan(PrepareOptions {
        pg_bin: args.pg_bin.clone(),
        allow_running: args.allow_running,
        model_version: args.model_version.clone(),
        files_as: args.files_as,
        ..opts
    })
    .context("preparing the upload")?;
    if args.dry_run {
        let view = plan.view();
        return ui::print_plan(&view, args.json, |o| {
            writeln!(o, "  full snapshot:  {}", view.full_snapshot.display())?;
            writeln!(o, "  database only:  {}", view.database_file.display())?;
            if let Some(f) = &view.files_archive {
                writeln!(o, "  files only:     {}", f.display())?;
            }
            for c in &view.checks {
                writeln!(o, "  check ok:       {c}")?;
            }
            for w in &view.warnings {
                writeln!(o, "  warning:        {w}")?;
            }
            ui::print_steps(o, &view.create.steps)
        });
    }
    let reporter = Reporter::new(quiet);
    let report = prepare::execute(plan, &reporter, &ui::interrupt_cancel());
    reporter.done();
    let r = report.context("preparing the upload")?;
    if args.json {
        return ui::print_json(&r);
    }
    let mut o = ui::out();
    writeln!(o, "Ready for the cloud's upload:")?;
    writeln!(
        o,
        "  full snapshot:  {} ({})",
        r.full_snapshot.display(),
        human(r.full_snapshot_bytes)
    )?;
    writeln!(
        o,
        "  database only:  {} ({}, dump archive version {})",
        r.database_file.display(),
        human(r.database_file_bytes),
        r.dump_archive_version
    )?;
    if let Some(f) = &r.files_archive {
        writeln!(
            o,
            "  files only:     {} ({})",
            f.display(),
            human(r.files_archive_bytes.unwrap_or(0))
        )?;
    }
    let c = &r.files;
    writeln!(
        o,
        "  files:          {} included ({}); {} referenced, {} missing, {} orphaned, {} \
         delete-after-download left out, {} in the legacy layout",
        c.included,
        human(r.files_bytes),
        c.referenced,
        c.missing,
        c.orphaned,
        c.delete_after_download,
        c.legacy_layout
    )?;
    for check in &r.checks {
        writeln!(o, "  check ok:       {check}")?;
    }
    for w in &r.warnings {
        writeln!(o, "  warning:        {w}")?;
    }
    Ok(())
}
