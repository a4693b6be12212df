//! The command line: arguments ([`args`]), what is shown ([`ui`]), and one module per command
//! ([`commands`]) that turns arguments into a library operation's options, plans, prints the
//! plan for `--dry-run` or executes it, and prints the report.

pub mod args;
pub mod commands;
pub mod ui;

use std::io;
use std::process::ExitCode;

use args::{Cli, Command};

/// The status of a command whose standard output was closed by its reader (`| head`): what a
/// shell reports for a program ended by SIGPIPE, so a pipeline never mistakes a cut output
/// for a complete one.
pub const CLOSED_PIPE_STATUS: u8 = 141;

pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let quiet = cli.quiet;
    match &cli.command {
        Command::Create(a) => commands::create::run(a, quiet),
        Command::Inspect(a) => commands::read::run(a, None, quiet),
        Command::Verify(a) => commands::read::run(&a.read, Some(a.pg_bin.clone()), quiet),
        Command::Restore(a) => commands::restore::run(
            &a.target,
            mxsnap::source::Source::from_arg(&a.archive, ui::url_notes(quiet)),
            quiet,
        ),
        Command::PrepareUpload(a) => commands::prepare::run(a, quiet),
        Command::Snapshots { action } => commands::snapshots::run(action, quiet),
        Command::Env { action } => commands::env::run(action, quiet),
        Command::Serve(a) => commands::serve::run(a),
        Command::Remote(a) => commands::remote::run(a, quiet),
    }
}

fn is_closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<mxsnap::Error>()
                .is_some_and(mxsnap::Error::is_broken_pipe)
    })
}

/// Prints the error and its hint on stderr and returns the exit code of its kind; a closed
/// standard output ends quietly.
pub fn report_error(err: &anyhow::Error) -> ExitCode {
    if is_closed_pipe(err) {
        return ExitCode::from(CLOSED_PIPE_STATUS);
    }
    let (code, hint) = match err.chain().find_map(|e| e.downcast_ref::<mxsnap::Error>()) {
        Some(e) => (e.kind().exit_code(), e.hint().map(str::to_string)),
        None => (1, None),
    };
    // An mxsnap error's message already says what its source said: stop the chain there.
    let mut parts = Vec::new();
    for e in err.chain() {
        parts.push(e.to_string());
        if e.downcast_ref::<mxsnap::Error>().is_some() {
            break;
        }
    }
    eprintln!("mxsnap: error: {}", parts.join(": "));
    if let Some(hint) = hint {
        eprintln!("mxsnap: hint: {hint}");
    }
    ExitCode::from(code)
}
