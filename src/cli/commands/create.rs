//! `mxsnap create`.

use std::io::{self, IsTerminal, Write};
use std::path::Path;

use anyhow::Context;

use crate::cli::args::CreateArgs;
use crate::cli::ui::{self, Reporter, human};
use mxsnap::create::{self, CreateOptions, CreateReport, Output};

pub fn run(args: &CreateArgs, quiet: bool) -> anyhow::Result<()> {
    let to_stdout = args.output == Path::new("-");
    let output = if to_stdout {
        if io::stdout().is_terminal() && !args.dry_run {
            anyhow::bail!(mxsnap::Error::usage(
                "refusing to write an archive to a terminal; redirect stdout or use --output FILE"
            ));
        }
        // Taken unlocked: a lock cannot cross threads, and the 1 MiB buffer makes the
        // per-write locking rare.
        Output::Writer(Box::new(io::stdout()))
    } else {
        Output::Path(args.output.clone())
    };
    if args.json && to_stdout && !args.dry_run {
        anyhow::bail!(mxsnap::Error::usage(
            "--json prints on stdout, which --output - already uses for the archive"
        ));
    }
    let plan = create::plan(CreateOptions {
        database: args.database.clone(),
        files: args.files.clone(),
        output,
        variant: args.variant,
        compression: args.compression,
        level: args.level,
        model_version: args.model_version.clone(),
        comment: args.comment.clone(),
        all_files: args.all_files,
        strict_layout: args.strict_layout,
        pg_bin: args.pg_bin.clone(),
        force: args.force,
        keep_dump_as: None,
        encrypt: ui::encrypt_to(&args.encrypt)?,
    })
    .context("creating the snapshot")?;
    if args.dry_run {
        let view = plan.view();
        return ui::print_plan(&view, args.json, |o| {
            let output = view.output.as_ref();
            let shown = output.map_or("standard output".to_string(), |p| p.display().to_string());
            writeln!(o, "  output:   {shown}")?;
            if let Some(db) = &view.database {
                writeln!(o, "  database: {db} (connected, pg_dump can dump it)")?;
            }
            if let Some(f) = &view.files {
                writeln!(o, "  files:    {}", f.display())?;
            }
            ui::print_steps(o, &view.steps)
        });
    }
    let reporter = Reporter::new(quiet);
    let report = create::execute(plan, &reporter, &ui::interrupt_cancel());
    reporter.done();
    let report = report.context("creating the snapshot")?;
    if args.json {
        ui::print_json(&report)?;
    } else if !quiet {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &CreateReport) {
    for w in &r.warnings {
        eprintln!("mxsnap: warning: {w}");
    }
    let target = r
        .output
        .as_ref()
        .map_or("standard output".to_string(), |p| p.display().to_string());
    eprintln!(
        "mxsnap: wrote {} snapshot to {target}: {} members, {} of content, {} written ({}), {:.1} s",
        r.variant,
        r.members,
        human(r.content_bytes),
        human(r.output_bytes),
        r.compression,
        r.seconds
    );
    match (&r.files, r.file_selection) {
        (Some(c), Some("referenced")) => eprintln!(
            "mxsnap: files: {} referenced, {} included, {} missing, {} orphaned, {} \
             delete-after-download left out, {} in the legacy layout",
            c.referenced,
            c.included,
            c.missing,
            c.orphaned,
            c.delete_after_download,
            c.legacy_layout
        ),
        (Some(c), _) => eprintln!(
            "mxsnap: files: every file of the store, {} included ({} in the legacy layout), {} \
             skipped",
            c.included, c.legacy_layout, c.skipped
        ),
        (None, _) => {}
    }
    eprintln!("mxsnap: sha256 {}", r.output_sha256);
}
