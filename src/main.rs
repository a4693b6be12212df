//! The `mxsnap` binary: parses arguments, runs the command, and maps errors to the documented
//! exit codes. Everything else is in `cli` (arguments, display) and the library (the work).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    mxsnap::sys::one_malloc_arena();
    let args = cli::args::Cli::parse();
    match cli::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => cli::report_error(&err),
    }
}
