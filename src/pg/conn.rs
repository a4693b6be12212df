//! Connection settings: a postgres URL or key=value string in any form libpq accepts, with
//! libpq's environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGPASSFILE) filling in
//! what it leaves out.
//!
//! TLS settings (`sslmode`, `sslrootcert`, `sslcert`, `sslkey` and their PGSSL* variables) are
//! taken out of the string first, since tokio-postgres knows only part of them; see [`super::tls`].
//!
//! Child processes get the settings through their environment, never their argv, so the
//! password cannot be seen in `ps`; [`ConnSpec`]'s `Debug` and [`ConnSpec::describe`] never
//! show it either.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::config::Host;

use super::tls::{TlsParams, TlsSettings};
use crate::error::{Error, Result};

/// Resolved connection settings for one database.
#[derive(Clone)]
pub struct ConnSpec {
    config: tokio_postgres::Config,
    tls: TlsSettings,
}

impl fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnSpec({})", self.describe())
    }
}

/// Where libpq looks by default when no host is given (Debian's build).
const DEFAULT_SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/tmp"];

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse_host(h: &str) -> Host {
    if h.starts_with('/') {
        Host::Unix(PathBuf::from(h))
    } else {
        Host::Tcp(h.to_string())
    }
}

impl ConnSpec {
    /// Parses `url` (or nothing, to rely on the environment alone) and fills the gaps as libpq
    /// would.
    pub fn resolve(url: Option<&str>) -> Result<ConnSpec> {
        let (rest, tls_params) = match url {
            Some(u) => {
                let (rest, params) = split_tls(u)?;
                (Some(rest), params)
            }
            None => (None, TlsParams::default()),
        };
        let tls = TlsSettings::resolve(&tls_params)?;
        let mut config = match rest.as_deref() {
            Some(u) => tokio_postgres::Config::from_str(u).map_err(|e| {
                Error::usage(format!("the database URL cannot be parsed: {e}")).with_hint(
                    "use postgresql://user@host:port/dbname, or postgresql:///dbname?host=/socket/dir",
                )
            })?,
            None => tokio_postgres::Config::new(),
        };
        if config.get_hosts().is_empty() {
            match env("PGHOST") {
                Some(hosts) => {
                    for h in hosts.split(',') {
                        match parse_host(h) {
                            Host::Tcp(h) => config.host(&h),
                            Host::Unix(p) => config.host_path(p),
                        };
                    }
                }
                None => {
                    let dir = DEFAULT_SOCKET_DIRS
                        .iter()
                        .find(|d| Path::new(d).is_dir())
                        .copied();
                    match dir {
                        Some(d) => config.host_path(d),
                        None => config.host("localhost"),
                    };
                }
            }
        }
        if config.get_ports().is_empty() {
            let ports = env("PGPORT").unwrap_or_else(|| "5432".into());
            for p in ports.split(',') {
                let port: u16 = p.trim().parse().map_err(|_| {
                    Error::usage(format!("PGPORT holds {p:?}, which is not a port number"))
                })?;
                config.port(port);
            }
        }
        if config.get_user().is_none() {
            let user = env("PGUSER").or_else(current_os_user).ok_or_else(|| {
                Error::usage("no database user given (set it in the URL or PGUSER)")
            })?;
            config.user(&user);
        }
        if config.get_dbname().is_none() {
            let db =
                env("PGDATABASE").unwrap_or_else(|| config.get_user().unwrap_or("").to_string());
            config.dbname(&db);
        }
        if config.get_password().is_none() {
            if let Some(pw) = env("PGPASSWORD") {
                config.password(pw);
            } else if let Some(pw) = password_from_file(&config) {
                config.password(pw);
            }
        }
        Ok(ConnSpec { config, tls })
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Whether every host is a Unix socket (libpq never uses TLS on those).
    pub fn local_only(&self) -> bool {
        self.config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)))
    }

    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("")
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("")
    }

    /// The same settings pointed at another database of the same server.
    pub fn with_dbname(&self, dbname: &str) -> ConnSpec {
        let mut config = self.config.clone();
        config.dbname(dbname);
        ConnSpec {
            config,
            tls: self.tls.clone(),
        }
    }

    fn hosts_string(&self) -> String {
        self.config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn ports_string(&self) -> String {
        self.config
            .get_ports()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `user@host:port/dbname`, for messages. Never includes the password.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user(),
            self.hosts_string(),
            self.ports_string(),
            self.dbname()
        )
    }

    /// The environment a libpq client (pg_dump, pg_restore, psql) needs to reach this database.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("PGHOST", self.hosts_string()),
            ("PGPORT", self.ports_string()),
            ("PGUSER", self.user().to_string()),
            ("PGDATABASE", self.dbname().to_string()),
        ];
        if let Some(pw) = self.config.get_password() {
            vars.push(("PGPASSWORD", String::from_utf8_lossy(pw).into_owned()));
        }
        vars.extend(self.tls.child_env());
        if let Some(app) = self.config.get_application_name() {
            vars.push(("PGAPPNAME", app.to_string()));
        }
        if let Some(options) = self.config.get_options() {
            vars.push(("PGOPTIONS", options.to_string()));
        }
        if let Some(t) = self.config.get_connect_timeout() {
            vars.push(("PGCONNECT_TIMEOUT", t.as_secs().max(1).to_string()));
        }
        vars
    }
}

/// Takes the TLS keys out of a URL or `key=value` string, leaving the rest for tokio-postgres.
fn split_tls(conninfo: &str) -> Result<(String, TlsParams)> {
    let mut params = TlsParams::default();
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((conninfo.to_string(), params));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !params.take(&percent_decode(k), percent_decode(v))? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    let mut kept = Vec::new();
    for (k, v) in conninfo_pairs(conninfo)? {
        if !params.take(&k, v.clone())? {
            kept.push(format!(
                "{k}='{}'",
                v.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    Ok((kept.join(" "), params))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's `key = value` syntax: values bare or in single quotes, `\` escaping.
fn conninfo_pairs(text: &str) -> Result<Vec<(String, String)>> {
    let bad = |why: &str| {
        Error::usage(format!(
            "the database connection string cannot be parsed: {why}"
        ))
        .with_hint("use key=value pairs (host=... dbname=...) or a postgresql:// URL")
    };
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(bad(&format!("{key:?} has no value")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(bad("a quoted value is not closed")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// The name of the user we run as ($USER, else the password database).
pub(crate) fn current_os_user() -> Option<String> {
    env("USER").or_else(crate::sys::os_user_name)
}

/// Looks the password up in PGPASSFILE or ~/.pgpass the way libpq does: the first line whose
/// `host:port:database:user` fields match, `*` matching anything, `\` escaping `:` and `\`.
fn password_from_file(config: &tokio_postgres::Config) -> Option<String> {
    let path = env("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let host = match config.get_hosts().first()? {
        Host::Tcp(h) => h.clone(),
        Host::Unix(_) => "localhost".to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let wanted = [
        host.as_str(),
        port.as_str(),
        config.get_dbname().unwrap_or(""),
        config.get_user().unwrap_or(""),
    ];
    pgpass_lookup(&text, wanted)
}

fn pgpass_lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(wanted)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_dir_urls_and_passwords_stay_out_of_descriptions() {
        let spec = ConnSpec::resolve(Some(
            "postgresql://app:s3cr%3At@/appdb?host=/tmp/sock&port=6543",
        ))
        .unwrap();
        assert_eq!(spec.describe(), "app@/tmp/sock:6543/appdb");
        assert!(!format!("{spec:?}").contains("s3cr"));
        let env = spec.child_env();
        assert!(env.contains(&("PGPASSWORD", "s3cr:t".to_string())));
        assert!(env.contains(&("PGHOST", "/tmp/sock".to_string())));
        let kv = ConnSpec::resolve(Some("host=db.example port=5433 user=u dbname=d")).unwrap();
        assert_eq!(kv.describe(), "u@db.example:5433/d");
    }

    #[test]
    fn tls_settings_come_out_of_urls_and_key_value_strings() {
        let (rest, tls) = split_tls(
            "postgresql://u@h:5433/d?sslmode=verify-full&application_name=x&sslrootcert=%2Fca%20dir%2Froot.crt",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u@h:5433/d?application_name=x");
        assert_eq!(tls.mode.as_deref(), Some("verify-full"));
        assert_eq!(tls.root_cert.as_deref(), Some("/ca dir/root.crt"));
        let (rest, tls) =
            split_tls("host=h  sslmode = require sslkey='/k\\'s dir/k.key' dbname='my db'")
                .unwrap();
        assert_eq!(rest, "host='h' dbname='my db'");
        assert_eq!(tls.mode.as_deref(), Some("require"));
        assert_eq!(tls.key.as_deref(), Some("/k's dir/k.key"));
        let spec = ConnSpec::resolve(Some(
            "host=h dbname='it''s' sslmode=verify-ca sslrootcert=/r.crt",
        ));
        assert!(spec.is_err(), "'' is not an escape in libpq");
        let spec = ConnSpec::resolve(Some("host=h dbname=d sslmode=verify-ca sslrootcert=/r.crt"))
            .unwrap();
        let env = spec.child_env();
        assert!(env.contains(&("PGSSLMODE", "verify-ca".to_string())));
        assert!(env.contains(&("PGSSLROOTCERT", "/r.crt".to_string())));
        let e = ConnSpec::resolve(Some("postgresql://h/d?sslcrl=/x")).unwrap_err();
        assert!(e.message().contains("sslcrl"));
        assert!(split_tls("host=h dbname='open").is_err());
    }

    #[test]
    fn pgpass_matching_follows_libpq() {
        let text =
            "# comment\nother:5432:*:*:nope\nlocalhost:5432:app\\:db:*:pa\\:ss\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, ["localhost", "5432", "app:db", "u"]).as_deref(),
            Some("pa:ss")
        );
        assert_eq!(
            pgpass_lookup(text, ["h", "1", "d", "u"]).as_deref(),
            Some("fallback")
        );
    }
}
