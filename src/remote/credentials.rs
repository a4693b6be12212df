//! Who talks to the Backups API: a user name and an API key, from `MENDIX_USERNAME` and
//! `MENDIX_APIKEY`, or from a file only its owner may read. Never from the command line (other
//! users see argv), and never shown: the key is redacted wherever the type is printed.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub api_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, key redacted)", self.username)
    }
}

/// Where a credentials file is looked for when none is named and the variables are unset:
/// `$XDG_CONFIG_HOME/mxsnap/credentials.toml`, else `~/.config/mxsnap/credentials.toml`.
pub fn default_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("mxsnap").join("credentials.toml"))
}

const HOW: &str = "set MENDIX_USERNAME and MENDIX_APIKEY, or write username = \"...\" and \
                   api_key = \"...\" to a file (chmod 600) named by --credentials or kept as \
                   ~/.config/mxsnap/credentials.toml";

impl Credentials {
    /// From `file` when given; else from the variables; else from [`default_file`] when it
    /// exists.
    pub fn find(file: Option<&Path>) -> Result<Credentials> {
        if let Some(f) = file {
            return Credentials::from_file(f);
        }
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        match (var("MENDIX_USERNAME"), var("MENDIX_APIKEY")) {
            (Some(username), Some(api_key)) => {
                return Ok(Credentials {
                    username: username.trim().to_string(),
                    api_key: api_key.trim().to_string(),
                });
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    Error::usage("only one of MENDIX_USERNAME and MENDIX_APIKEY is set")
                        .with_hint(HOW),
                );
            }
            (None, None) => {}
        }
        match default_file().filter(|f| f.exists()) {
            Some(f) => Credentials::from_file(&f),
            None => Err(Error::usage("no credentials for the Backups API").with_hint(HOW)),
        }
    }

    /// A TOML file with `username` and `api_key`, refused when group or others may read it.
    pub fn from_file(path: &Path) -> Result<Credentials> {
        use std::os::unix::fs::MetadataExt;
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("reading credentials {shown}"), e))?;
        if meta.mode() & 0o077 != 0 {
            return Err(Error::usage(format!(
                "the credentials file {shown} may be read by others (mode {:o})",
                meta.mode() & 0o777
            ))
            .with_hint(format!("chmod 600 {shown}")));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading credentials {shown}"), e))?;
        // toml's message quotes the offending line, which may hold the key: not passed on.
        let creds: Credentials = toml::from_str(&text).map_err(|_| {
            Error::usage(format!(
                "the credentials file {shown} is not TOML with username and api_key"
            ))
            .with_hint(HOW)
        })?;
        if creds.username.trim().is_empty() || creds.api_key.trim().is_empty() {
            return Err(
                Error::usage(format!("the credentials file {shown} has an empty field"))
                    .with_hint(HOW),
            );
        }
        Ok(Credentials {
            username: creds.username.trim().to_string(),
            api_key: creds.api_key.trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_others_may_read_is_refused_and_the_key_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "username = \"u@x\"\napi_key = \"secret-42\"\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::from_file(&f).unwrap_err();
        assert!(e.hint().unwrap().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Credentials::from_file(&f).unwrap();
        assert_eq!(
            (c.username.as_str(), c.api_key.as_str()),
            ("u@x", "secret-42")
        );
        assert!(!format!("{c:?}").contains("secret-42"));
        std::fs::write(&f, "username = \"u\"\napi_key = secret-42\n").unwrap();
        let e = Credentials::from_file(&f).unwrap_err();
        assert!(!e.to_string().contains("secret-42"), "{e}");
    }
}
