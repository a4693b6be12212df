//! The `mxsnap` binary: parses arguments, calls the library, prints results and maps errors to
//! the documented exit codes.

mod cli;

use std::fs::File;
use std::io::{self, IsTerminal};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use cli::{Cli, Command};
use mxsnap::check::{self, Report};
use mxsnap::create::{self, CreateOptions, CreateReport, Output};
use mxsnap::env::Target;
use mxsnap::local::LocalEnv;
use mxsnap::pg::{ConnSpec, PgTools};
use mxsnap::prepare::{self, PrepareOptions};
use mxsnap::progress::Progress;
use mxsnap::restore::{self, RestoreOptions};

/// glibc gives each thread that allocates its own heap arena; with the pipeline's threads
/// passing megabyte buffers between them, how much each arena keeps depended on timing, and
/// peak memory varied by a quarter between identical runs. The buffers are pooled, so the
/// allocator is hardly used once an archive streams: one arena costs nothing measurable.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(io) = err.downcast_ref::<io::Error>() {
                if io.kind() == io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            let (code, hint) = match err.downcast_ref::<mxsnap::Error>() {
                Some(e) => (e.kind().exit_code(), e.hint().map(str::to_string)),
                None => (1, None),
            };
            eprintln!("mxsnap: error: {err:#}");
            if let Some(hint) = hint {
                eprintln!("mxsnap: hint: {hint}");
            }
            ExitCode::from(code)
        }
    }
}

/// Progress on stderr: a bar on a terminal, log lines otherwise, nothing with --quiet.
struct Reporter {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Reporter {
    fn new(quiet: bool) -> Reporter {
        let bar = (!quiet && io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Reporter { bar, quiet }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Reporter {
    fn stage(&self, name: &str, total: Option<u64>) {
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(total.unwrap_or(0));
            let template = if total.is_some() {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
            } else {
                "{spinner} {msg} {elapsed}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(name.to_string());
        } else if !self.quiet {
            eprintln!("mxsnap: {name}");
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("mxsnap: {message}")),
            None if !self.quiet => eprintln!("mxsnap: {message}"),
            None => {}
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Create(args) => run_create(args, cli.quiet),
        Command::Inspect(args) => {
            let reporter = Reporter::new(cli.quiet);
            let (input, size) = open_input(&args.archive)?;
            reporter.stage("reading", size);
            let report = check::inspect(input, &reporter);
            reporter.done();
            let report =
                report.with_context(|| format!("inspecting {}", args.archive.display()))?;
            if cli.quiet && !args.json {
                return Ok(());
            }
            print_report(&args.archive, &report, args.json, false)
        }
        Command::Restore(args) => run_restore(&args.target, &args.archive, cli.quiet),
        Command::Snapshots { action } => run_snapshots(action, cli.quiet),
        Command::Env { action } => run_env(action),
        Command::PrepareUpload(args) => run_prepare(args, cli.quiet),
        Command::Verify(args) => {
            let reporter = Reporter::new(cli.quiet);
            let tools = PgTools::find(args.pg_bin.as_deref())?;
            let (input, size) = open_input(&args.read.archive)?;
            reporter.stage("verifying", size);
            let report = check::verify(input, &tools, &reporter);
            reporter.done();
            let report =
                report.with_context(|| format!("verifying {}", args.read.archive.display()))?;
            if cli.quiet && !args.read.json {
                return Ok(());
            }
            print_report(&args.read.archive, &report, args.read.json, true)
        }
    }
}

fn parse_tz(name: &str) -> anyhow::Result<chrono_tz::Tz> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        anyhow::Error::new(mxsnap::Error::usage(format!(
            "unknown time zone {name:?} (use an IANA name such as UTC or Europe/Amsterdam)"
        )))
    })
}

fn local_time(t: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string()
}

fn run_snapshots(action: &cli::SnapshotsAction, quiet: bool) -> anyhow::Result<()> {
    use cli::SnapshotsAction as A;
    use mxsnap::catalog::{self, Repo};
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
        } => {
            let tz = parse_tz(&repo.tz)?;
            let store = Repo::open(&repo.repo, true)?;
            let reporter = Reporter::new(quiet);
            let req = catalog::SnapshotRequest {
                environment: environment.clone(),
                database: database.clone(),
                files: files.clone(),
                comment: comment.clone(),
                nightly: *nightly,
                model_version: model_version.clone(),
                pg_bin: pg_bin.clone(),
            };
            let rec = catalog::create_snapshot(&store, &req, tz, &reporter);
            reporter.done();
            let rec = rec.context("creating the snapshot")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&rec.api_v1())?);
            } else {
                println!("{}", rec.id);
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
        }
        A::List {
            repo,
            environment,
            json,
        } => {
            let tz = parse_tz(&repo.tz)?;
            let recs = Repo::open(&repo.repo, false)?.list(environment.as_deref(), tz)?;
            if *json {
                let v: Vec<_> = recs.iter().map(|r| r.api_v1()).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:36}  {:12} {:9} {:7} {:16}  {:16}  {:>9}  {:10} COMMENT",
                    "SNAPSHOT ID",
                    "ENVIRONMENT",
                    "STATE",
                    "KIND",
                    "CREATED",
                    "EXPIRES",
                    "SIZE",
                    "MODEL"
                );
                for r in &recs {
                    println!(
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
                    );
                }
            }
        }
        A::Show { repo, id, json } => {
            let tz = parse_tz(&repo.tz)?;
            let r = Repo::open(&repo.repo, false)?.get(id, tz)?;
            if *json {
                let mut v = serde_json::to_value(r.api_v1())?;
                v["Environment"] = serde_json::json!(r.environment);
                v["CreatedBy"] = serde_json::json!(r.created_by);
                v["Kind"] = serde_json::json!(r.kind);
                v["StatusMessage"] = serde_json::json!(r.status_message);
                v["FinishedOn"] = serde_json::json!(r.finished_on.map(|t| t.timestamp_millis()));
                v["Size"] = serde_json::json!(r.archive_bytes);
                v["DumpSize"] = serde_json::json!(r.dump_bytes);
                v["FilesSize"] = serde_json::json!(r.files_bytes);
                v["DatabaseSize"] = serde_json::json!(r.database_bytes);
                v["FileCount"] = serde_json::json!(r.file_count);
                v["ArchiveSHA256"] = serde_json::json!(r.archive_sha256);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("Snapshot ID:    {}", r.id);
                println!("Environment:    {}", r.environment);
                println!(
                    "Status:         {:?}{}",
                    r.state,
                    r.status_message
                        .as_ref()
                        .map_or(String::new(), |m| format!(" ({m})"))
                );
                println!("Created by:     {}", r.created_by);
                println!("Kind:           {:?}", r.kind);
                println!("Date:           {}", local_time(r.created_on, tz));
                println!(
                    "Finished on:    {}",
                    r.finished_on.map_or("-".into(), |t| local_time(t, tz))
                );
                println!(
                    "Expires on:     {}",
                    r.expires_on.map_or("-".into(), |t| local_time(t, tz))
                );
                println!(
                    "Model version:  {}",
                    r.model_version.as_deref().unwrap_or("-")
                );
                println!("Comment:        {}", r.comment.as_deref().unwrap_or(""));
                println!(
                    "Size:           {} (dump {}, files {} in {} files, database {})",
                    r.archive_bytes.map_or("-".into(), human),
                    r.dump_bytes.map_or("-".into(), human),
                    r.files_bytes.map_or("-".into(), human),
                    r.file_count.map_or("-".into(), |c| c.to_string()),
                    r.database_bytes.map_or("-".into(), human)
                );
                println!(
                    "SHA-256:        {}",
                    r.archive_sha256.as_deref().unwrap_or("-")
                );
            }
        }
        A::Comment { repo, id, text } => {
            let r = Repo::open(&repo.repo, false)?.set_comment(id, text)?;
            if !quiet {
                eprintln!("mxsnap: comment of {} set", r.id);
            }
        }
        A::Delete { repo, id } => {
            let r = Repo::open(&repo.repo, false)?.delete(id)?;
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
        } => {
            let store = Repo::open(&repo.repo, false)?;
            let rec = store.get(id, chrono_tz::Tz::UTC)?;
            let out = if output == Path::new("-") {
                Output::Stdout
            } else {
                Output::Path(output.clone())
            };
            let reporter = Reporter::new(quiet);
            reporter.stage("downloading", rec.archive_bytes);
            let written = catalog::download(&store, &rec, *variant, &out, *force, &reporter);
            reporter.done();
            if let Some(path) = written.context("downloading the snapshot")? {
                println!("{}", path.display());
            }
        }
        A::Restore { repo, id, target } => {
            let store = Repo::open(&repo.repo, false)?;
            let rec = store.get(id, chrono_tz::Tz::UTC)?;
            if rec.state != catalog::State::Completed {
                anyhow::bail!(mxsnap::Error::usage(format!(
                    "snapshot {} is {:?}, not Completed: it cannot be restored",
                    rec.id, rec.state
                )));
            }
            let archive = store
                .archive_path(&rec)
                .ok_or_else(|| mxsnap::Error::environment("the record names no archive"))?;
            run_restore(target, &archive, quiet)?;
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
            let decisions =
                Repo::open(&repo.repo, false)?.prune(environment.as_deref(), now, tz, *dry_run)?;
            if *json {
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
                            "Deleted": !d.keep && !*dry_run,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (r, d) in &decisions {
                    let verdict = match (d.keep, *dry_run) {
                        (true, _) => "keep",
                        (false, true) => "delete",
                        (false, false) => "deleted",
                    };
                    println!(
                        "{verdict:8} {}  {:12} {:9} {}  expires {:16}  {}",
                        r.id,
                        r.environment,
                        format!("{:?}", r.state),
                        local_time(r.created_on, tz),
                        d.expires.map_or("never".into(), |t| local_time(t, tz)),
                        d.rule.describe()
                    );
                }
            }
        }
    }
    Ok(())
}

fn run_prepare(args: &cli::PrepareArgs, quiet: bool) -> anyhow::Result<()> {
    let (database, files, pid_file) = match &args.m2ee {
        Some(path) => {
            let config = mxsnap::m2ee::load(path)?;
            (
                Some(config.conninfo()),
                config.files.clone(),
                args.pid_file.clone().or(config.pid_file.clone()),
            )
        }
        None => (
            args.database.clone(),
            args.files.clone().expect("clap requires --files"),
            args.pid_file.clone(),
        ),
    };
    let opts = PrepareOptions {
        database,
        files,
        pid_file,
        output_dir: args.output.clone(),
        pg_bin: args.pg_bin.clone(),
        allow_running: args.allow_running,
        model_version: args.model_version.clone(),
    };
    let reporter = Reporter::new(quiet);
    let report = prepare::prepare(&opts, &reporter);
    reporter.done();
    let r = report.context("preparing the upload")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("Ready for the cloud's upload:");
    println!(
        "  full snapshot:  {} ({})",
        r.full_snapshot.display(),
        human(r.full_snapshot_bytes)
    );
    println!(
        "  database only:  {} ({}, dump archive version {})",
        r.database_file.display(),
        human(r.database_file_bytes),
        r.dump_archive_version
    );
    let c = &r.files;
    println!(
        "  files:          {} included ({}); {} referenced, {} missing, {} orphaned, {} \
         delete-after-download left out, {} in the legacy layout",
        c.included,
        human(r.files_bytes),
        c.referenced,
        c.missing,
        c.orphaned,
        c.delete_after_download,
        c.legacy_layout
    );
    for check in &r.checks {
        println!("  check ok:       {check}");
    }
    for w in &r.warnings {
        println!("  warning:        {w}");
    }
    Ok(())
}

fn run_env(action: &cli::EnvAction) -> anyhow::Result<()> {
    use cli::EnvAction;
    let (args, verb) = match action {
        EnvAction::Status(a) => (a, "status"),
        EnvAction::Start(a) => (a, "start"),
        EnvAction::Stop(a) => (a, "stop"),
    };
    let mut env = LocalEnv::open(&args.dir)?;
    match verb {
        "start" => env.start()?,
        "stop" => env.stop()?,
        _ => {}
    }
    let status = env.status();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!(
            "{}: PostgreSQL {}",
            status.dir.display(),
            if status.running { "running" } else { "stopped" }
        );
        if status.running {
            print_settings(&env.settings);
        }
    }
    Ok(())
}

fn print_settings(s: &mxsnap::local::Settings) {
    println!("  host:     {}", s.host);
    println!("  port:     {}", s.port);
    println!("  database: {}", s.database);
    println!("  user:     {}", s.user);
    println!("  password: {}", s.password.as_deref().unwrap_or("?"));
    println!("  files:    {}", s.files.display());
    println!("  url:      {}", s.url());
    println!(
        "  jdbc:     jdbc:postgresql://{}:{}/{}",
        s.host, s.port, s.database
    );
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    if !io::stdin().is_terminal() {
        anyhow::bail!(
            mxsnap::Error::usage(format!(
                "{question}: refusing to replace data without confirmation"
            ))
            .with_hint("pass --yes to confirm, or --dry-run to see the plan")
        );
    }
    eprint!("mxsnap: {question} [y/N] ");
    io::stderr().flush()?;
    let mut answer = String::new();
    io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn run_restore(args: &cli::TargetArgs, archive: &Path, quiet: bool) -> anyhow::Result<()> {
    if archive != Path::new("-") {
        // Say "not an archive" before touching the environment (stdin can be read only once).
        let (input, _) = open_input(archive)?;
        check::peek(input).with_context(|| format!("reading {}", archive.display()))?;
    }
    let reporter = Reporter::new(quiet);
    let mut local = None;
    let target = match &args.into {
        Some(dir) => {
            let (mut env, created) = LocalEnv::open_or_create(dir)?;
            if created {
                reporter.note(&format!(
                    "made a local environment in {}{}",
                    env.dir.display(),
                    match &env.settings.run_as {
                        Some(u) => format!(
                            " (PostgreSQL runs as the system user {u}: initdb refuses root)"
                        ),
                        None => String::new(),
                    }
                ));
            }
            env.start()?;
            let target = env.target()?;
            local = Some(env);
            target
        }
        None => Target {
            database: ConnSpec::resolve(args.database.as_deref())?,
            files: args.files.clone().expect("clap requires --files"),
            pid_file: args.pid_file.clone(),
        },
    };
    let opts = RestoreOptions {
        target,
        variant: args.variant,
        jobs: args.jobs,
        keep_previous: args.keep_previous,
        model_version: args.model_version.clone(),
        pg_bin: args.pg_bin.clone(),
    };
    let plan = restore::plan(opts)?;
    if args.dry_run {
        let view = plan.view();
        let (input, size) = open_input(archive)?;
        let peeked = check::peek(input)?;
        let free = mxsnap::env::free_space(view.files.parent().unwrap_or(Path::new(".")));
        if args.json {
            let mut value = serde_json::to_value(&view)?;
            value["archive"] = serde_json::to_value(&peeked)?;
            value["archive_bytes"] = serde_json::json!(size);
            value["free_bytes"] = serde_json::json!(free);
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            println!("plan (dry run, nothing changed):");
            println!(
                "  archive:  {} ({}, {}{})",
                archive.display(),
                peeked
                    .variant
                    .map_or("variant known once read".to_string(), |v| v.to_string()),
                peeked.compression,
                size.map_or(String::new(), |s| format!(", {}", human(s)))
            );
            if let Some(m) = &peeked.metadata {
                println!(
                    "  needs:    dump {} bytes, files {} bytes (from .metadata); {} free there",
                    m.dump_size,
                    m.files_size,
                    free.map_or("?".to_string(), human)
                );
            }
            println!(
                "  database: {} ({})",
                view.database,
                if view.database_exists {
                    "exists, will be replaced"
                } else {
                    "will be created"
                }
            );
            println!(
                "  files:    {} ({})",
                view.files.display(),
                if view.files_exist {
                    "exist, will be replaced"
                } else {
                    "will be created"
                }
            );
            if let Some(r) = &view.recovered {
                println!("  recovered: {r}");
            }
            for c in &view.checks {
                println!("  check ok: {c}");
            }
            for (i, s) in view.steps.iter().enumerate() {
                println!("  {}. {s}", i + 1);
            }
        }
        return Ok(());
    }
    if plan.replaces_data() && !args.yes {
        let view = plan.view();
        let question = format!(
            "replace database {} and files in {}?",
            view.database,
            view.files.display()
        );
        if !confirm(&question)? {
            anyhow::bail!(mxsnap::Error::usage(
                "restore cancelled; nothing was changed"
            ));
        }
    }
    let (input, size) = open_input(archive)?;
    reporter.stage("restoring", size);
    let report = restore::execute(plan, input, &reporter);
    reporter.done();
    let report = report.with_context(|| format!("restoring {}", archive.display()))?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(env) = &local {
            value["local"] = serde_json::to_value(&env.settings)?;
            value["local"]["password"] =
                serde_json::Value::String(env.settings.password.clone().unwrap_or_default());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
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
    if let (Some(env), false) = (&local, quiet) {
        println!(
            "Local environment in {} is running{}:",
            env.dir.display(),
            match &env.settings.run_as {
                Some(u) => format!(" (PostgreSQL as system user {u}, since initdb refuses root)"),
                None => String::new(),
            }
        );
        print_settings(&env.settings);
        println!("Stop it with: mxsnap env stop {}", env.dir.display());
    }
    Ok(())
}

fn open_input(path: &Path) -> anyhow::Result<(mxsnap::archive::Input<'static>, Option<u64>)> {
    if path == Path::new("-") {
        return Ok((Box::new(io::stdin()), None));
    }
    let file = File::open(path).map_err(|e| {
        let err = if e.kind() == io::ErrorKind::NotFound {
            mxsnap::Error::usage(format!("{}: no such file", path.display()))
        } else {
            mxsnap::Error::io(format!("opening {}", path.display()), e)
        };
        anyhow::Error::new(err)
    })?;
    let size = file.metadata().ok().map(|m| m.len());
    Ok((Box::new(file), size))
}

fn run_create(args: &cli::CreateArgs, quiet: bool) -> anyhow::Result<()> {
    let output = if args.output == Path::new("-") {
        if io::stdout().is_terminal() {
            anyhow::bail!(mxsnap::Error::usage(
                "refusing to write an archive to a terminal; redirect stdout or use --output FILE"
            ));
        }
        Output::Stdout
    } else {
        Output::Path(args.output.clone())
    };
    let json_to_stdout = args.json && matches!(output, Output::Path(_));
    if args.json && !json_to_stdout {
        anyhow::bail!(mxsnap::Error::usage(
            "--json prints on stdout, which --output - already uses for the archive"
        ));
    }
    let opts = CreateOptions {
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
    };
    let reporter = Reporter::new(quiet);
    let report = create::create(&opts, &reporter);
    reporter.done();
    let report = report.context("creating the snapshot")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !quiet {
        print_create(&report);
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn print_create(r: &CreateReport) {
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

fn print_report(path: &Path, r: &Report, json: bool, verified: bool) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(r)?;
        value["archive"] = serde_json::Value::String(path.display().to_string());
        if verified {
            value["ok"] = serde_json::Value::Bool(true);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("archive:      {}", path.display());
    let variant = match r.variant {
        mxsnap::archive::Variant::Full => "full (files and database)",
        mxsnap::archive::Variant::Database => "database only",
        mxsnap::archive::Variant::Files => "files only",
    };
    println!("variant:      {variant}");
    println!("compression:  {}", r.compression);
    println!(
        "members:      {} ({} of content)",
        r.members,
        human(r.content_bytes)
    );
    if let Some(m) = &r.metadata {
        println!(
            ".metadata:    modelVersion {}, dumpSize {}, databaseSize {}, filesSize {}, duration {} s",
            m.model_version, m.dump_size, m.database_size, m.files_size, m.duration
        );
    }
    if let Some(d) = &r.dump {
        println!(
            "dump:         archive version {} ({} format, data compression {}), {} bytes",
            d.archive_version,
            d.format,
            d.compression,
            r.dump_size.unwrap_or(0)
        );
        println!(
            "              database {}, server {}, pg_dump {}, created {}",
            d.database.as_deref().unwrap_or("?"),
            d.server_version.as_deref().unwrap_or("?"),
            d.pg_dump_version.as_deref().unwrap_or("?"),
            d.created.as_deref().unwrap_or("?")
        );
    }
    if r.variant != mxsnap::archive::Variant::Database {
        println!(
            "files:        {} in tree/ ({})",
            r.tree_files,
            human(r.tree_bytes)
        );
        println!(
            "manifest:     {}",
            if r.manifest { "present" } else { "absent" }
        );
    }
    if let Some(c) = &r.manifest_comment {
        println!("comment:      {c}");
    }
    for w in &r.warnings {
        println!("warning:      {w}");
    }
    if verified {
        for c in &r.checks {
            println!("check:        ok: {c}");
        }
        println!("result:       OK, the archive is complete and intact");
    }
    Ok(())
}
