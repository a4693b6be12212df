//! What the binary shows: progress on stderr, results on stdout, questions on the terminal.
//! Every write to stdout goes through [`Out`], whose errors (a closed pipe) end the command.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use mxsnap::progress::{Cancel, Event, Progress};

/// Standard output, written with `writeln!` so that a closed pipe is an error to return, not
/// a panic.
pub type Out = io::StdoutLock<'static>;

pub fn out() -> Out {
    io::stdout().lock()
}

/// Prints `value` as pretty JSON and a newline.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut o = out();
    serde_json::to_writer_pretty(&mut o, value).map_err(io::Error::from)?;
    writeln!(o)?;
    o.flush()?;
    Ok(())
}

/// Progress on stderr: a bar on a terminal, log lines otherwise, nothing with --quiet.
/// Warnings are not shown as they come: every report lists them at its end.
pub struct Reporter {
    bar: Option<ProgressBar>,
    quiet: bool,
    /// Without a terminal: the current stage, for a line every few seconds.
    log: std::sync::Mutex<StageLog>,
}

/// How far the current stage is, for the lines written to a log (no bar there).
struct StageLog {
    name: String,
    total: Option<u64>,
    done: u64,
    /// Bytes done before this run (a resumed download): not part of the rate.
    base: u64,
    started: std::time::Instant,
    last: std::time::Instant,
}

/// How often a log gets a progress line: MXSNAP_PROGRESS_SECS, default 10.
fn log_interval() -> Duration {
    Duration::from_secs(
        std::env::var("MXSNAP_PROGRESS_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    )
}

impl StageLog {
    fn new(name: &str, total: Option<u64>) -> StageLog {
        let now = std::time::Instant::now();
        StageLog {
            name: name.to_string(),
            total,
            done: 0,
            base: 0,
            started: now,
            last: now,
        }
    }

    /// "downloading: 1.2 GiB of 3.4 GiB (35 %), 85.3 MiB/s, 27 s left".
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (self.done - self.base) as f64 / secs;
        let mut line = format!("{}: {}", self.name, human(self.done));
        if let Some(t) = self.total.filter(|t| *t > 0) {
            line.push_str(&format!(
                " of {} ({} %)",
                human(t),
                self.done.min(t) * 100 / t
            ));
        }
        line.push_str(&format!(", {}/s", human(rate as u64)));
        if let Some(t) = self.total.filter(|t| *t > self.done && rate > 0.0) {
            line.push_str(&format!(", {:.0} s left", (t - self.done) as f64 / rate));
        }
        line
    }
}

impl Reporter {
    pub fn new(quiet: bool) -> Reporter {
        let bar = (!quiet && io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Reporter {
            bar,
            quiet,
            log: std::sync::Mutex::new(StageLog::new("", None)),
        }
    }

    pub fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn line(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("mxsnap: {message}")),
            None if !self.quiet => eprintln!("mxsnap: {message}"),
            None => {}
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.done();
    }
}

const BAR: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}";
const SPINNER: &str = "{spinner} {msg} {elapsed}";

impl Progress for Reporter {
    fn event(&self, event: &Event) {
        match event {
            Event::Stage {
                name, bytes_total, ..
            } => match &self.bar {
                Some(bar) => {
                    bar.reset();
                    bar.set_length(bytes_total.unwrap_or(0));
                    let template = if bytes_total.is_some() { BAR } else { SPINNER };
                    if let Ok(style) = ProgressStyle::with_template(template) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_message(name.clone());
                }
                None => {
                    self.line(name);
                    if let Ok(mut log) = self.log.lock() {
                        *log = StageLog::new(name, *bytes_total);
                    }
                }
            },
            Event::Advance { bytes, .. } => {
                if let Some(bar) = &self.bar {
                    bar.inc(*bytes);
                    return;
                }
                if self.quiet {
                    return;
                }
                let line = self.log.lock().ok().and_then(|mut log| {
                    // The first advance of a stage that starts part-way (a resumed
                    // download) is what was there before.
                    if log.done == 0 && log.started.elapsed() < Duration::from_millis(50) {
                        log.base = *bytes;
                    }
                    log.done += bytes;
                    (log.last.elapsed() >= log_interval()).then(|| {
                        log.last = std::time::Instant::now();
                        log.line()
                    })
                });
                if let Some(line) = line {
                    self.line(&line);
                }
            }
            Event::Note { message } => self.line(message),
            Event::Warning { .. } => {}
        }
    }
}

/// A cancel that SIGINT and SIGTERM set: the operation stops at its next check and undoes
/// what it began.
/// Where a URL reader's remarks go: stderr, unless --quiet.
pub fn url_notes(quiet: bool) -> mxsnap::http::Notes {
    std::sync::Arc::new(move |note: &str| {
        if !quiet {
            let _ = writeln!(std::io::stderr(), "mxsnap: note: {note}");
        }
    })
}

pub fn interrupt_cancel() -> Cancel {
    let cancel = Cancel::new();
    let flag = mxsnap::sys::catch_interrupts();
    let watched = cancel.clone();
    std::thread::Builder::new()
        .name("interrupts".into())
        .spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            watched.cancel();
        })
        .ok();
    cancel
}

/// Asks on the terminal; refuses without one.
pub fn confirm(question: &str) -> anyhow::Result<bool> {
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

pub use mxsnap::output::human_bytes as human;

pub fn parse_tz(name: &str) -> anyhow::Result<chrono_tz::Tz> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        anyhow::Error::new(mxsnap::Error::usage(format!(
            "unknown time zone {name:?} (use an IANA name such as UTC or Europe/Amsterdam)"
        )))
    })
}

pub fn local_time(t: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string()
}

/// Prints a dry run: the plan's view as JSON, or `text` under a heading.
pub fn print_plan(
    view: &impl serde::Serialize,
    json: bool,
    text: impl FnOnce(&mut Out) -> io::Result<()>,
) -> anyhow::Result<()> {
    if json {
        return print_json(view);
    }
    let mut o = out();
    writeln!(o, "plan (dry run, nothing changed):")?;
    text(&mut o)?;
    o.flush()?;
    Ok(())
}

/// Prints a plan's steps, numbered.
pub fn print_steps(o: &mut Out, steps: &[String]) -> io::Result<()> {
    for (i, s) in steps.iter().enumerate() {
        writeln!(o, "  {}. {s}", i + 1)?;
    }
    Ok(())
}

/// The passphrase from MXSNAP_PASSPHRASE, else asked on the terminal (twice when `confirm`).
pub fn passphrase(confirm: bool) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("MXSNAP_PASSPHRASE") {
        return Ok(p);
    }
    let ask = |prompt: &str| -> anyhow::Result<String> {
        match mxsnap::sys::read_secret(prompt) {
            Some(answer) => Ok(answer?),
            None => anyhow::bail!(
                mxsnap::Error::usage("a passphrase is needed and there is no terminal to ask on")
                    .with_hint("set MXSNAP_PASSPHRASE")
            ),
        }
    };
    let first = ask("mxsnap: passphrase: ")?;
    if confirm && ask("mxsnap: the same passphrase again: ")? != first {
        anyhow::bail!(mxsnap::Error::usage(
            "the two passphrases differ; nothing was done"
        ));
    }
    Ok(first)
}

/// What opens encrypted archives, from `--identity`, `--passphrase` and MXSNAP_PASSPHRASE.
pub fn keys(args: &crate::cli::args::KeyArgs) -> anyhow::Result<mxsnap::crypt::Keys> {
    let mut keys = mxsnap::crypt::Keys::none();
    for path in &args.identity {
        keys.add_identity_file(path)?;
    }
    if args.passphrase || std::env::var_os("MXSNAP_PASSPHRASE").is_some() {
        keys.set_passphrase(passphrase(false)?);
    }
    Ok(keys)
}

/// To whom a new archive is sealed, from `--encrypt-to`, `--encrypt-to-file` and
/// `--encrypt-passphrase`; `None` for no encryption.
pub fn encrypt_to(
    args: &crate::cli::args::EncryptArgs,
) -> anyhow::Result<Option<mxsnap::crypt::EncryptTo>> {
    if args.encrypt_passphrase {
        return Ok(Some(mxsnap::crypt::EncryptTo::passphrase(passphrase(
            true,
        )?)?));
    }
    if args.encrypt_to.is_empty() && args.encrypt_to_file.is_empty() {
        return Ok(None);
    }
    Ok(Some(mxsnap::crypt::EncryptTo::recipients(
        &args.encrypt_to,
        &args.encrypt_to_file,
    )?))
}
