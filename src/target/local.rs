//! Managed local environments: `restore --into DIR` makes DIR hold a private PostgreSQL cluster
//! (the system's `initdb`/`pg_ctl`, a free local port, a generated password) and the app's file
//! store, so a downloaded snapshot becomes a running database and a files directory in one
//! command.
//!
//! Layout: `DIR/env.json` (settings), `DIR/password` (0600), `DIR/pgdata` (the cluster),
//! `DIR/run` (its socket), `DIR/postgresql.log`, `DIR/data/files` (the file store). PostgreSQL
//! refuses to run as root, so when we are root the cluster runs as the `postgres` system user;
//! if that user cannot reach DIR, the cluster's own files go to `/var/lib/mxsnap/<id>` instead
//! and `DIR/pgdata` links there.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::{Deserialize, Serialize};

use super::Target;
use crate::error::{Error, Result};
use crate::pg::ConnSpec;
use crate::progress::{Cancel, Progress};

const SERVER_USER: &str = "postgres";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub files: PathBuf,
    pub socket_dir: PathBuf,
    pub pgdata: PathBuf,
    /// The system user the server runs as when mxsnap runs as root.
    pub run_as: Option<String>,
    pub bin: PathBuf,
}

impl Settings {
    /// `postgresql://user:password@host:port/database`.
    pub fn url(&self) -> String {
        format!(
            "postgresql://{}:{}@{}:{}/{}",
            self.user,
            self.password.as_deref().unwrap_or(""),
            self.host,
            self.port,
            self.database
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub dir: PathBuf,
    pub running: bool,
    pub settings: Settings,
}

pub struct LocalEnv {
    pub dir: PathBuf,
    pub settings: Settings,
}

fn is_root() -> bool {
    crate::sys::is_root()
}

/// The directory of the newest PostgreSQL server binaries: next to a real `initdb` on PATH, or
/// under /usr/lib/postgresql/*/bin.
pub fn server_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Ok(initdb) = fs::canonicalize(dir.join("initdb")) {
                if let Some(real) = initdb.parent().filter(|d| d.join("pg_ctl").is_file()) {
                    return Ok(real.to_path_buf());
                }
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        Error::environment("PostgreSQL server programs (initdb, pg_ctl) not found")
            .with_hint("install the server: apt-get install postgresql")
    })
}

fn server_cmd(settings: &Settings, program: &str) -> Command {
    let path = settings.bin.join(program);
    match &settings.run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(path);
            c
        }
        None => Command::new(path),
    }
}

fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if !out.status.success() {
        return Err(Error::environment(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

fn chown_to(path: &Path, user: &str) -> Result<()> {
    let out = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:"))
        .arg(path)
        .output()
        .map_err(|e| Error::io("running chown", e))?;
    if !out.status.success() {
        return Err(Error::environment(format!(
            "chown {} to {user} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// True when `user` can reach `dir` (traverse every parent).
fn reachable_by(user: &str, dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", user, "--", "test", "-x"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.write_all(data)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

impl LocalEnv {
    fn settings_path(dir: &Path) -> PathBuf {
        dir.join("env.json")
    }

    /// Opens the environment in `dir`, if there is one.
    pub fn open(dir: &Path) -> Result<LocalEnv> {
        let dir = fs::canonicalize(dir).map_err(|e| {
            Error::usage(format!("{}: {e}", dir.display()))
                .with_hint("make one with: mxsnap restore ARCHIVE --into DIR")
        })?;
        let data = fs::read(Self::settings_path(&dir)).map_err(|_| {
            Error::usage(format!(
                "{} is not an mxsnap local environment",
                dir.display()
            ))
            .with_hint("make one with: mxsnap restore ARCHIVE --into DIR")
        })?;
        let mut settings: Settings = serde_json::from_slice(&data).map_err(|e| {
            Error::environment(format!("{}/env.json is unreadable: {e}", dir.display()))
        })?;
        settings.password = fs::read_to_string(dir.join("password"))
            .ok()
            .map(|p| p.trim().to_string());
        Ok(LocalEnv { dir, settings })
    }

    /// The environment in `dir` when there is one; `None` when one can be made there (`dir`
    /// missing or empty); an error when `dir` holds something else. Changes nothing.
    pub fn find(dir: &Path) -> Result<Option<LocalEnv>> {
        if Self::settings_path(dir).is_file() {
            return Self::open(dir).map(Some);
        }
        if fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Error::usage(format!(
                "{} is not empty and is not an mxsnap local environment",
                dir.display()
            ))
            .with_hint("choose a new or empty directory"));
        }
        Ok(None)
    }

    /// Opens the environment in `dir`, making it first when there is none. Returns whether it
    /// was made now.
    pub fn open_or_create(dir: &Path) -> Result<(LocalEnv, bool)> {
        if let Some(env) = Self::find(dir)? {
            return Ok((env, false));
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let dir = fs::canonicalize(dir)
            .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
        let run_as = is_root().then(|| SERVER_USER.to_string());
        let files = dir.join("data").join("files");
        fs::create_dir_all(&files)
            .map_err(|e| Error::io(format!("creating {}", files.display()), e))?;
        // Where the cluster's files go: DIR itself, unless the server user cannot reach it.
        let cluster_home = match &run_as {
            Some(user) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))?;
                if reachable_by(user, &dir) {
                    dir.clone()
                } else {
                    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
                    let home = PathBuf::from("/var/lib/mxsnap").join(id);
                    fs::create_dir_all(&home)
                        .map_err(|e| Error::io(format!("creating {}", home.display()), e))?;
                    fs::set_permissions("/var/lib/mxsnap", fs::Permissions::from_mode(0o755))
                        .map_err(|e| Error::io("chmod /var/lib/mxsnap", e))?;
                    home
                }
            }
            None => dir.clone(),
        };
        let pgdata = cluster_home.join("pgdata");
        let socket_dir = cluster_home.join("run");
        fs::create_dir_all(&socket_dir)
            .map_err(|e| Error::io(format!("creating {}", socket_dir.display()), e))?;
        if cluster_home != dir {
            std::os::unix::fs::symlink(&pgdata, dir.join("pgdata"))
                .map_err(|e| Error::io("linking pgdata", e))?;
            std::os::unix::fs::symlink(&socket_dir, dir.join("run"))
                .map_err(|e| Error::io("linking run", e))?;
        }
        let password = uuid::Uuid::new_v4().simple().to_string();
        write_private(&dir.join("password"), password.as_bytes())?;
        let pwfile = cluster_home.join(".pwfile");
        write_private(&pwfile, password.as_bytes())?;
        if let Some(user) = &run_as {
            chown_to(&socket_dir, user)?;
            chown_to(&pwfile, user)?;
            if cluster_home != dir {
                chown_to(&cluster_home, user)?;
            }
        }
        let settings = Settings {
            host: "127.0.0.1".into(),
            port: free_port()?,
            database: "app".into(),
            user: "mxsnap".into(),
            password: Some(password),
            files,
            socket_dir,
            pgdata: pgdata.clone(),
            run_as,
            bin: server_bin()?,
        };
        if settings.run_as.is_some() && cluster_home == dir {
            // initdb makes pgdata itself, but its parent must be writable by the server user.
            fs::create_dir_all(&pgdata).map_err(|e| Error::io("creating pgdata", e))?;
            chown_to(&pgdata, SERVER_USER)?;
            let log = dir.join("postgresql.log");
            fs::write(&log, b"").map_err(|e| Error::io("creating the log", e))?;
            chown_to(&log, SERVER_USER)?;
        }
        let mut initdb = server_cmd(&settings, "initdb");
        initdb
            .arg("-D")
            .arg(&pgdata)
            .args(["-U", &settings.user, "-E", "UTF8", "--locale=C"])
            .args(["--auth-local=scram-sha-256", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let result = run(initdb, "initdb");
        let _ = fs::remove_file(&pwfile);
        result?;
        let env = LocalEnv { dir, settings };
        env.save()?;
        Ok((env, true))
    }

    fn save(&self) -> Result<()> {
        let mut public = self.settings.clone();
        public.password = None;
        crate::output::write_json_atomically(&Self::settings_path(&self.dir), &public)
    }

    fn log_path(&self) -> PathBuf {
        self.settings
            .pgdata
            .parent()
            .unwrap_or(&self.dir)
            .join("postgresql.log")
    }

    pub fn running(&self) -> bool {
        server_cmd(&self.settings, "pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.settings.pgdata)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the cluster (a no-op when it runs). A port taken since last time is replaced by
    /// a free one.
    pub fn start(&mut self) -> Result<()> {
        if self.running() {
            return Ok(());
        }
        for attempt in 0..2 {
            let opts = format!(
                "-p {} -k {} -c listen_addresses={}",
                self.settings.port,
                self.settings.socket_dir.display(),
                self.settings.host
            );
            let mut cmd = server_cmd(&self.settings, "pg_ctl");
            cmd.arg("start")
                .arg("-D")
                .arg(&self.settings.pgdata)
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", "60", "-o", &opts]);
            match run(cmd, "pg_ctl start") {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                    if attempt == 0 && log.contains("could not bind") {
                        self.settings.port = free_port()?;
                        self.save()?;
                        continue;
                    }
                    return Err(e.with_hint(format!("see {}", self.log_path().display())));
                }
            }
        }
        unreachable!("the loop returns")
    }

    pub fn stop(&self) -> Result<()> {
        if !self.running() {
            return Ok(());
        }
        let mut cmd = server_cmd(&self.settings, "pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.settings.pgdata)
            .args(["-m", "fast", "-w"]);
        run(cmd, "pg_ctl stop").map(|_| ())
    }

    pub fn status(&self) -> Status {
        Status {
            dir: self.dir.clone(),
            running: self.running(),
            settings: self.settings.clone(),
        }
    }

    /// The restore target inside this environment.
    pub fn target(&self) -> Result<Target> {
        Ok(Target {
            database: ConnSpec::resolve(Some(&self.settings.url()))?,
            files: self.settings.files.clone(),
            pid_file: None,
        })
    }
}

/// What `env start`, `env stop` or `env status` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvAction {
    Status,
    Start,
    Stop,
}

/// An environment opened, and what the action will change.
pub struct EnvPlan {
    env: LocalEnv,
    action: EnvAction,
    running: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvPlanView {
    pub dir: PathBuf,
    pub action: EnvAction,
    pub running: bool,
    pub steps: Vec<String>,
}

impl EnvPlan {
    pub fn view(&self) -> EnvPlanView {
        let dir = &self.env.dir;
        let step = match (self.action, self.running) {
            (EnvAction::Start, false) => format!(
                "start PostgreSQL of {} on {}:{}",
                dir.display(),
                self.env.settings.host,
                self.env.settings.port
            ),
            (EnvAction::Stop, true) => {
                format!("stop PostgreSQL of {} (fast shutdown)", dir.display())
            }
            (EnvAction::Status, _) => "nothing: report the status".to_string(),
            (_, running) => format!(
                "nothing: PostgreSQL is already {}",
                if running { "running" } else { "stopped" }
            ),
        };
        EnvPlanView {
            dir: dir.clone(),
            action: self.action,
            running: self.running,
            steps: vec![step],
        }
    }
}

/// Opens the local environment in `dir` for `action`; changes nothing.
pub fn plan(dir: &Path, action: EnvAction) -> Result<EnvPlan> {
    let env = LocalEnv::open(dir)?;
    let running = env.running();
    Ok(EnvPlan {
        env,
        action,
        running,
    })
}

/// Starts or stops the environment (or neither, for status), and says how it stands.
pub fn execute(plan: EnvPlan, progress: &dyn Progress, cancel: &Cancel) -> Result<Status> {
    cancel.check()?;
    let mut env = plan.env;
    match plan.action {
        EnvAction::Start => {
            progress.stage("starting PostgreSQL", None);
            env.start()?
        }
        EnvAction::Stop => {
            progress.stage("stopping PostgreSQL", None);
            env.stop()?
        }
        EnvAction::Status => {}
    }
    Ok(env.status())
}
