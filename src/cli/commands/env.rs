//! `mxsnap env status|start|stop`.

use std::io::Write;

use crate::cli::args::EnvAction as Action;
use crate::cli::commands::restore::print_settings;
use crate::cli::ui::{self, Reporter};
use mxsnap::target::local::{self, EnvAction};

pub fn run(action: &Action, quiet: bool) -> anyhow::Result<()> {
    let (args, action) = match action {
        Action::Status(a) => (a, EnvAction::Status),
        Action::Start(a) => (a, EnvAction::Start),
        Action::Stop(a) => (a, EnvAction::Stop),
    };
    let plan = local::plan(&args.dir, action)?;
    if args.dry_run {
        let view = plan.view();
        return ui::print_plan(&view, args.json, |o| ui::print_steps(o, &view.steps));
    }
    let reporter = Reporter::new(quiet);
    let status = local::execute(plan, &reporter, &ui::interrupt_cancel());
    reporter.done();
    let status = status?;
    if args.json {
        return ui::print_json(&status);
    }
    let mut o = ui::out();
    writeln!(
        o,
        "{}: PostgreSQL {}",
        status.dir.display(),
        if status.running { "running" } else { "stopped" }
    )?;
    if status.running {
        print_settings(&mut o, &status.settings)?;
    }
    Ok(())
}
