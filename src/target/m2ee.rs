//! Reads an on-premises app's `m2ee.yaml` (the configuration of the open-source m2ee-tools):
//! the database settings from its `mxruntime` section, the file store under the app base
//! (`<app_base>/data/files`), and the pid file from its `m2ee` section.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct M2eeConfig {
    pub app_name: Option<String>,
    pub app_base: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub files: PathBuf,
    pub db_host: String,
    pub db_port: u16,
    pub db_name: String,
    pub db_user: String,
    pub db_password: Option<String>,
}

fn bad(path: &Path, key: &str, what: &str) -> Error {
    Error::usage(format!("{}: {key} {what}", path.display()))
        .with_hint("fix the key in m2ee.yaml, or pass --database and --files instead of --m2ee")
}

fn section<'a>(doc: &'a Yaml, path: &Path, name: &str) -> Result<&'a Yaml> {
    match &doc[name] {
        Yaml::Hash(_) => Ok(&doc[name]),
        Yaml::BadValue => Err(bad(
            path,
            name,
            "is missing (a section m2ee-tools requires)",
        )),
        _ => Err(bad(path, name, "is not a section of keys")),
    }
}

/// A scalar as text (m2ee.yaml writes ports and hosts both quoted and bare).
fn text(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn required(sec: &Yaml, path: &Path, section: &str, key: &str) -> Result<String> {
    match &sec[key] {
        Yaml::BadValue | Yaml::Null => Err(bad(path, &format!("{section}.{key}"), "is missing")),
        v => text(v)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(path, &format!("{section}.{key}"), "must be a plain value")),
    }
}

fn optional(sec: &Yaml, key: &str) -> Option<String> {
    text(&sec[key]).filter(|s| !s.is_empty())
}

/// Parses `m2ee.yaml` text; `path` is for messages and for relative paths.
pub fn parse(path: &Path, source: &str) -> Result<M2eeConfig> {
    let docs = YamlLoader::load_from_str(source)
        .map_err(|e| Error::usage(format!("{}: not valid YAML: {e}", path.display())))?;
    let doc = docs
        .first()
        .ok_or_else(|| Error::usage(format!("{}: the file is empty", path.display())))?;
    let m2ee = section(doc, path, "m2ee")?;
    let runtime = section(doc, path, "mxruntime")?;

    let db_type = optional(runtime, "DatabaseType").unwrap_or_else(|| "PostgreSQL".into());
    if !db_type.eq_ignore_ascii_case("postgresql") {
        return Err(bad(
            path,
            "mxruntime.DatabaseType",
            &format!("is {db_type:?}; mxsnap supports PostgreSQL only"),
        ));
    }
    let host_port = required(runtime, path, "mxruntime", "DatabaseHost")?;
    // "host:port", "host", or "/socket/dir:port"; m2ee-tools splits on the last colon.
    let (db_host, db_port) = match host_port.rsplit_once(':') {
        Some((h, p)) => {
            let port = p.parse::<u16>().map_err(|_| {
                bad(
                    path,
                    "mxruntime.DatabaseHost",
                    &format!("has port {p:?}, which is not a number"),
                )
            })?;
            (h.to_string(), port)
        }
        None => (host_port.clone(), 5432),
    };
    let app_base = PathBuf::from(required(m2ee, path, "m2ee", "app_base")?);
    let app_base = if app_base.is_relative() {
        path.parent().unwrap_or(Path::new(".")).join(app_base)
    } else {
        app_base
    };
    let files = optional(runtime, "UploadedFilesPath")
        .map(PathBuf::from)
        .unwrap_or_else(|| app_base.join("data").join("files"));
    Ok(M2eeConfig {
        app_name: optional(m2ee, "app_name"),
        pid_file: optional(m2ee, "pidfile").map(PathBuf::from),
        files,
        app_base,
        db_host,
        db_port,
        db_name: required(runtime, path, "mxruntime", "DatabaseName")?,
        db_user: required(runtime, path, "mxruntime", "DatabaseUserName")?,
        db_password: optional(runtime, "DatabasePassword"),
    })
}

pub fn load(path: &Path) -> Result<M2eeConfig> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| Error::usage(format!("cannot read {}: {e}", path.display())))?;
    parse(path, &source)
}

impl M2eeConfig {
    /// A key=value connection string for libpq and tokio-postgres alike.
    pub fn conninfo(&self) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut s = format!(
            "host={} port={} dbname={} user={}",
            q(&self.db_host),
            self.db_port,
            q(&self.db_name),
            q(&self.db_user)
        );
        if let Some(pw) = &self.db_password {
            s.push_str(&format!(" password={}", q(pw)));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
m2ee:
  app_name: Shop
  app_base: /srv/shop
  admin_port: 9000
  admin_pass: secret
  pidfile: /srv/shop/.m2ee/m2ee.pid
mxruntime:
  DatabaseType: PostgreSQL
  DatabaseHost: "db.internal:5433"
  DatabaseName: shop
  DatabaseUserName: shop
  DatabasePassword: "it's secret"
  MicroflowConstants: {}
"#;

    #[test]
    fn reads_what_m2ee_tools_reads() {
        let c = parse(Path::new("m2ee.yaml"), GOOD).unwrap();
        assert_eq!(c.db_host, "db.internal");
        assert_eq!(c.db_port, 5433);
        assert_eq!(c.files, PathBuf::from("/srv/shop/data/files"));
        assert_eq!(c.pid_file, Some(PathBuf::from("/srv/shop/.m2ee/m2ee.pid")));
        let spec = crate::pg::ConnSpec::resolve(Some(&c.conninfo())).unwrap();
        assert_eq!(spec.describe(), "shop@db.internal:5433/shop");
    }

    #[test]
    fn missing_and_unsupported_keys_are_named() {
        let no_name = GOOD.replace("  DatabaseName: shop\n", "");
        let e = parse(Path::new("m2ee.yaml"), &no_name).unwrap_err();
        assert!(
            e.message().contains("mxruntime.DatabaseName is missing"),
            "{e}"
        );
        let no_base = GOOD.replace("  app_base: /srv/shop\n", "");
        let e = parse(Path::new("m2ee.yaml"), &no_base).unwrap_err();
        assert!(e.message().contains("m2ee.app_base is missing"), "{e}");
        let mssql = GOOD.replace("DatabaseType: PostgreSQL", "DatabaseType: SQLSERVER");
        let e = parse(Path::new("m2ee.yaml"), &mssql).unwrap_err();
        assert!(e.message().contains("mxruntime.DatabaseType"), "{e}");
        let port = GOOD.replace("db.internal:5433", "db.internal:fivefour");
        assert!(parse(Path::new("m2ee.yaml"), &port).is_err());
        let e = parse(Path::new("m2ee.yaml"), "m2ee:\n  app_base: /x\n").unwrap_err();
        assert!(e.message().contains("mxruntime is missing"), "{e}");
    }
}
