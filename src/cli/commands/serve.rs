//! `mxsnap serve`: runs the service until SIGINT/SIGTERM; `serve hash-key` hashes a key.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::Context;

use crate::cli::args::{ServeAction, ServeArgs};
use crate::cli::ui;

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(ServeAction::HashKey) = &args.action {
        let mut key = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut key)
            .context("reading the API key from standard input")?;
        if key.trim().is_empty() {
            anyhow::bail!(mxsnap::Error::usage(
                "no API key on standard input (echo \"$KEY\" | mxsnap serve hash-key)"
            ));
        }
        let mut o = ui::out();
        writeln!(o, "{}", mxsnap::serve::hash_key(&key))?;
        return Ok(());
    }
    let Some(path) = &args.config else {
        anyhow::bail!(
            mxsnap::Error::usage("mxsnap serve needs --config FILE")
                .with_hint("see the README's serve section for a small configuration")
        );
    };
    let config = mxsnap::serve::Config::load(path).context("reading the service configuration")?;
    let cancel = ui::interrupt_cancel();
    // Log lines on stderr, one per event; the library never sees the terminal.
    let log: mxsnap::serve::Log = Arc::new(|line: &str| {
        let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        let _ = writeln!(std::io::stderr(), "mxsnap serve: {stamp} {line}");
    });
    let log2 = log.clone();
    let environments = config.environments.len();
    mxsnap::serve::run(config, cancel, log, move |addr| {
        log2(&format!(
            "listening on http://{addr} ({environments} environment(s))"
        ))
    })
    .context("serving")?;
    Ok(())
}
