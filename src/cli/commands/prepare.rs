//! `mxsnap prepare-upload`.

use std::io::Write;

use anyhow::Context;

use crate::cli::args::PrepareArgs;
use crate::cli::ui::{self, Reporter, human};
use mxsnap::prepare::{self, PrepareOptions};

pub fn run(args: &PrepareArgs, quiet: bool) -> anyhow::Result<()> {
    let (database, files, pid_file) = match (&args.m2ee, &args.files) {
        (Some(path), _) => {
            let config = mxsnap::target::m2ee::load(path)?;
            (
                Some(config.conninfo()),
                config.files.clone(),
                args.pid_file.clone().or(config.pid_file.clone()),
            )
        }
        (None, Some(files)) => (args.database.clone(), files.clone(), args.pid_file.clone()),
        (None, None) => anyhow::bail!(mxsnap::Error::usage("pass --files DIR, or --m2ee FILE")),
    };
    let plan = prepare::plan(PrepareOptions {
        database,
        files,
        pid_file,
        output_dir: args.output.clone(),
        pg_bin: args.pg_bin.clone(),
        allow_running: args.allow_running,
        model_version: args.model_version.clone(),
    })
    .context("preparing the upload")?;
    if args.dry_run {
        let view = plan.view();
        if args.json {
            return ui::print_json(&view);
        }
        let mut o = ui::out();
        writeln!(o, "plan (dry run, nothing written):")?;
        writeln!(o, "  full snapshot:  {}", view.full_snapshot.display())?;
        writeln!(o, "  database only:  {}", view.database_file.display())?;
        for c in &view.checks {
            writeln!(o, "  check ok:       {c}")?;
        }
        for w in &view.warnings {
            writeln!(o, "  warning:        {w}")?;
        }
        ui::print_steps(&mut o, &view.create.steps)?;
        return Ok(());
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
