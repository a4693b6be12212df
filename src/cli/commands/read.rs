//! `mxsnap inspect` and `mxsnap verify`.

use std::io::Write;
use std::path::PathBuf;

use crate::cli::args::ReadArgs;
use crate::cli::ui::{self, Reporter, human};
use mxsnap::archive::Variant;
use mxsnap::inspect::{self, ReadOptions, Report};
use mxsnap::source::Source;

/// `pg_bin` is `Some` for verify (holding `--pg-bin`, which may itself be unset).
pub fn run(args: &ReadArgs, pg_bin: Option<Option<PathBuf>>, quiet: bool) -> anyhow::Result<()> {
    let verify = pg_bin.is_some();
    let plan = inspect::plan(ReadOptions {
        source: Source::from_arg(&args.archive, ui::url_notes(quiet)),
        verify,
        pg_bin: pg_bin.flatten(),
        keys: ui::keys(&args.keys)?,
    })?;
    let reporter = Reporter::new(quiet);
    let report = inspect::execute(plan, &reporter, &ui::interrupt_cancel());
    reporter.done();
    let report = report?;
    if args.json {
        return ui::print_json(&report);
    }
    if quiet {
        return Ok(());
    }
    print_report(&report, verify)
}

fn print_report(r: &Report, verified: bool) -> anyhow::Result<()> {
    let mut o = ui::out();
    writeln!(o, "archive:      {}", r.archive.as_deref().unwrap_or("-"))?;
    let variant = match r.variant {
        Variant::Full => "full (files and database)",
        Variant::Database => "database only",
        Variant::Files => "files only",
    };
    writeln!(o, "variant:      {variant}")?;
    match r.container {
        mxsnap::archive::detect::Container::Zip => writeln!(o, "format:       zip (deflate)")?,
        _ => writeln!(o, "compression:  {}", r.compression)?,
    }
    writeln!(
        o,
        "members:      {} ({} of content)",
        r.members,
        human(r.content_bytes)
    )?;
    if let Some(m) = &r.metadata {
        writeln!(
            o,
            ".metadata:    modelVersion {}, dumpSize {}, databaseSize {}, filesSize {}, duration {} s",
            m.model_version, m.dump_size, m.database_size, m.files_size, m.duration
        )?;
    }
    if let Some(d) = &r.dump {
        writeln!(
            o,
            "dump:         archive version {} ({} format, data compression {}), {} bytes",
            d.archive_version,
            d.format,
            d.compression,
            r.dump_size.unwrap_or(0)
        )?;
        writeln!(
            o,
            "              database {}, server {}, pg_dump {}, created {}",
            d.database.as_deref().unwrap_or("?"),
            d.server_version.as_deref().unwrap_or("?"),
            d.pg_dump_version.as_deref().unwrap_or("?"),
            d.created.as_deref().unwrap_or("?")
        )?;
    }
    if r.variant != Variant::Database {
        writeln!(
            o,
            "files:        {} in tree/ ({})",
            r.tree_files,
            human(r.tree_bytes)
        )?;
        writeln!(
            o,
            "manifest:     {}",
            if r.manifest { "present" } else { "absent" }
        )?;
    }
    if let Some(c) = &r.manifest_comment {
        writeln!(o, "comment:      {c}")?;
    }
    for w in &r.warnings {
        writeln!(o, "warning:      {w}")?;
    }
    if verified {
        for c in &r.checks {
            writeln!(o, "check:        ok: {c}")?;
        }
        writeln!(o, "result:       OK, the archive is complete and intact")?;
    }
    o.flush()?;
    Ok(())
}
