//! `mxsnap serve --config FILE`: the service's TOML configuration. It holds API key hashes and
//! database URLs (which may carry passwords), so, as ssh does with keys, a file that others can
//! read is refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::NaiveTime;
use chrono_tz::Tz;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Where the service listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8088";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<String>,
    /// The catalogue: a directory or `s3://bucket/prefix`.
    repo: PathBuf,
    /// Where the service keeps what is its own and local (prepared downloads, uploads, the
    /// link secret, the schedule's state): default `<repo>/serve` for a directory catalogue;
    /// required for an object-store one.
    state_dir: Option<PathBuf>,
    /// The time zone of the retention schedule (as `snapshots --tz`).
    timezone: Option<String>,
    /// How download links start (`http://host:port`), when clients reach the service by
    /// another name than the listen address.
    public_url: Option<String>,
    pg_bin: Option<PathBuf>,
    /// The largest upload the Backups page takes, in bytes (default 50 GiB).
    max_upload_bytes: Option<u64>,
    schedule: Option<ScheduleFile>,
    #[serde(default)]
    apps: Vec<AppFile>,
    #[serde(default)]
    users: Vec<UserFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    /// `HH:MM`, in `zone`; or leave it out and name a cloud `region`.
    time: Option<String>,
    zone: Option<String>,
    /// `europe` (19:00 UTC, Cloud v4), `europe-v3` (22:00), `us-east` (01:00),
    /// `us-east-v3` (05:00), `asia-pacific` (16:00).
    region: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    /// The v1 AppId (the app's sub-domain name).
    id: String,
    /// The v2 ProjectId (a UUID).
    project_id: Option<String>,
    #[serde(default)]
    environments: Vec<EnvFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvFile {
    /// Test, Acceptance, Production or a flexible environment's name.
    mode: String,
    /// The v2 EnvironmentId (a UUID).
    id: Option<String>,
    database: String,
    files: PathBuf,
    /// The app's pid file: a restore is refused while it names a live process.
    pid_file: Option<PathBuf>,
    model_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    /// The `Mendix-Username` header.
    name: String,
    /// SHA-256 (hex) of the API key: `mxsnap serve hash-key` prints it.
    key_sha256: String,
    /// `app/Mode`, `app/*` or `*`.
    environments: Vec<String>,
}

/// One environment the service manages.
#[derive(Debug, Clone)]
pub struct Environment {
    pub app: String,
    pub project_id: Option<uuid::Uuid>,
    pub mode: String,
    pub id: Option<uuid::Uuid>,
    pub database: String,
    pub files: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub model_version: Option<String>,
}

impl Environment {
    /// The environment's name in the catalogue: `<app>.<Mode>`.
    pub fn catalog_name(&self) -> String {
        format!("{}.{}", self.app, self.mode)
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub key_sha256: [u8; 32],
    /// (app, mode), either of which may be `*`.
    pub grants: Vec<(String, String)>,
}

impl User {
    pub fn may(&self, env: &Environment) -> bool {
        self.grants.iter().any(|(app, mode)| {
            (app == "*" || app == &env.app) && (mode == "*" || mode.eq_ignore_ascii_case(&env.mode))
        })
    }
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub time: NaiveTime,
    pub zone: Tz,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub repo: PathBuf,
    /// See the config file's `state_dir`.
    pub state_dir: PathBuf,
    pub timezone: Tz,
    pub public_url: Option<String>,
    pub pg_bin: Option<PathBuf>,
    pub max_upload_bytes: Option<u64>,
    pub schedule: Option<Schedule>,
    pub environments: Vec<Environment>,
    pub users: Vec<User>,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::usage(format!("{}: {what}", path.display()))
}

fn parse_zone(path: &Path, zone: &str) -> Result<Tz> {
    zone.parse().map_err(|_| {
        invalid(
            path,
            format!("{zone:?} is not a time zone name (e.g. Europe/Amsterdam)"),
        )
    })
}

fn parse_uuid(path: &Path, what: &str, text: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(text).map_err(|_| invalid(path, format!("{what} {text:?} is not a UUID")))
}

/// The cloud's nightly start times by region (API-NOTES.md).
fn region_time(region: &str) -> Option<NaiveTime> {
    let hour = match region {
        "europe" | "europe-v4" => 19,
        "europe-v3" => 22,
        "us-east" | "us-east-v4" => 1,
        "us-east-v3" => 5,
        "asia-pacific" => 16,
        _ => return None,
    };
    NaiveTime::from_hms_opt(hour, 0, 0)
}

/// Refuses a configuration file that group or others may read or write.
pub fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::usage(format!(
            "{} can be read or changed by others (mode {mode:o}); it holds API key hashes and \
             database settings",
            path.display()
        ))
        .with_hint(format!("chmod 600 {}", path.display())));
    }
    Ok(())
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        check_private(path)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| invalid(path, e))?;
        let listen = file
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse()
            .map_err(|_| {
                invalid(
                    path,
                    "listen must be an address and port, e.g. 127.0.0.1:8088",
                )
            })?;
        let timezone = match &file.timezone {
            Some(z) => parse_zone(path, z)?,
            None => Tz::UTC,
        };
        let schedule = match file.schedule {
            None => None,
            Some(s) => {
                let zone = match &s.zone {
                    Some(z) => parse_zone(path, z)?,
                    None => Tz::UTC,
                };
                let time = match (&s.time, &s.region) {
                    (Some(t), None) => NaiveTime::parse_from_str(t, "%H:%M")
                        .map_err(|_| invalid(path, format!("schedule.time {t:?} is not HH:MM")))?,
                    (None, Some(r)) => {
                        if s.zone.is_some() {
                            return Err(invalid(path, "a schedule.region sets its own zone (UTC)"));
                        }
                        region_time(r).ok_or_else(|| {
                            invalid(
                                path,
                                format!(
                                    "schedule.region {r:?} is not europe, europe-v3, us-east, \
                                     us-east-v3 or asia-pacific"
                                ),
                            )
                        })?
                    }
                    _ => return Err(invalid(path, "schedule needs either time or region")),
                };
                Some(Schedule { time, zone })
            }
        };
        let mut environments: Vec<Environment> = Vec::new();
        for app in file.apps {
            let app_ok = !app.id.is_empty()
                && app.id.len() <= 63
                && app
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !app.id.starts_with('-');
            if !app_ok {
                return Err(invalid(
                    path,
                    format!(
                        "app id {:?} is not a sub-domain name (letters, digits, '-')",
                        app.id
                    ),
                ));
            }
            let project_id = match &app.project_id {
                Some(p) => Some(parse_uuid(path, "project_id", p)?),
                None => None,
            };
            for env in app.environments {
                let e = Environment {
                    app: app.id.clone(),
                    project_id,
                    mode: env.mode.clone(),
                    id: match &env.id {
                        Some(i) => Some(parse_uuid(path, "environment id", i)?),
                        None => None,
                    },
                    database: env.database,
                    files: env.files,
                    pid_file: env.pid_file,
                    model_version: env.model_version,
                };
                crate::catalog::check_environment(&e.catalog_name())
                    .map_err(|err| invalid(path, err.message()))?;
                if environments.iter().any(|o| {
                    o.app == e.app && o.mode.eq_ignore_ascii_case(&e.mode)
                        || (e.id.is_some() && o.id == e.id)
                }) {
                    return Err(invalid(
                        path,
                        format!("environment {}/{} is configured twice", e.app, e.mode),
                    ));
                }
                environments.push(e);
            }
        }
        let mut users = Vec::new();
        for u in file.users {
            let mut key = [0u8; 32];
            let hex = u.key_sha256.trim();
            if hex.len() != 64
                || (0..32).any(|i| {
                    u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                        .map(|b| key[i] = b)
                        .is_err()
                })
            {
                return Err(invalid(
                    path,
                    format!(
                        "user {:?}: key_sha256 must be 64 hex digits (mxsnap serve hash-key)",
                        u.name
                    ),
                ));
            }
            let mut grants = Vec::new();
            for g in &u.environments {
                let grant = match g.split_once('/') {
                    Some((a, m)) => (a.to_string(), m.to_string()),
                    None if g == "*" => ("*".to_string(), "*".to_string()),
                    None => {
                        return Err(invalid(
                            path,
                            format!("user {:?}: {g:?} is not app/Mode, app/* or *", u.name),
                        ));
                    }
                };
                grants.push(grant);
            }
            if users.iter().any(|o: &User| o.name == u.name) {
                return Err(invalid(
                    path,
                    format!("user {:?} is configured twice", u.name),
                ));
            }
            users.push(User {
                name: u.name,
                key_sha256: key,
                grants,
            });
        }
        let in_bucket = file.repo.to_str().is_some_and(crate::objstore::is_s3);
        let state_dir = match file.state_dir {
            Some(d) => d,
            None if in_bucket => {
                return Err(invalid(
                    path,
                    "an object-store catalogue needs `state_dir`: the local directory where \
                     the service keeps prepared downloads, uploads and its link secret",
                ));
            }
            None => file.repo.join("serve"),
        };
        Ok(Config {
            listen,
            state_dir,
            repo: file.repo,
            timezone,
            public_url: file.public_url.map(|u| u.trim_end_matches('/').to_string()),
            pg_bin: file.pg_bin,
            max_upload_bytes: file.max_upload_bytes,
            schedule,
            environments,
            users,
        })
    }

    /// The v1 environment: the app by id, the mode case-insensitively.
    pub fn v1_environment(&self, app: &str, mode: &str) -> Option<&Environment> {
        self.environments
            .iter()
            .find(|e| e.app == app && e.mode.eq_ignore_ascii_case(mode))
    }

    pub fn v2_environment(&self, project: &uuid::Uuid, env: &uuid::Uuid) -> Option<&Environment> {
        self.environments
            .iter()
            .find(|e| e.project_id.as_ref() == Some(project) && e.id.as_ref() == Some(env))
    }

    pub fn by_catalog_name(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.catalog_name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
repo = "/var/lib/mxsnap"
[schedule]
region = "europe"
[[apps]]
id = "calc"
project_id = "8c3a2d7e-0d55-4f0e-9a6b-6f1f4a1e2b3c"
[[apps.environments]]
mode = "Acceptance"
id = "0f6b1c52-8e2b-4d8e-a1f5-2b7c9d0e4a11"
database = "postgresql:///calc"
files = "/srv/calc/data/files"
[[users]]
name = "richard.ford51@example.com"
key_sha256 = "a3c5c1f3f1a64f6a7e3b9f77d9a8c2b4e5f60718293a4b5c6d7e8f9012345678"
environments = ["calc/acceptance"]
"#;

    #[test]
    fn a_config_parses_and_grants_match_modes_case_insensitively() {
        let c = Config::parse(Path::new("c.toml"), GOOD).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.schedule.as_ref().unwrap().time.to_string(), "19:00:00");
        let env = c.v1_environment("calc", "ACCEPTANCE").unwrap();
        assert_eq!(env.catalog_name(), "calc.Acceptance");
        assert!(c.users[0].may(env));
        assert!(c.v1_environment("calc", "production").is_none());
    }

    #[test]
    fn mistakes_are_named() {
        for (from, to, says) in [
            (
                "region = \"europe\"",
                "region = \"mars\"",
                "schedule.region",
            ),
            ("id = \"calc\"", "id = \"../calc\"", "sub-domain"),
            ("key_sha256 = \"a3", "key_sha256 = \"zz", "64 hex digits"),
            ("repo =", "rep =", "unknown field"),
            ("\"calc/acceptance\"", "\"calc\"", "app/Mode"),
        ] {
            let e = Config::parse(Path::new("c.toml"), &GOOD.replace(from, to)).unwrap_err();
            assert!(e.message().contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn a_config_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serve.toml");
        std::fs::write(&p, GOOD).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::load(&p).unwrap_err();
        assert!(e.hint().unwrap().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        Config::load(&p).unwrap();
    }
}
