//! The snapshot archive: its layout (which members, in which order, under which names), the
//! codecs around it, the manifest that makes it verifiable offline, and the streaming writer and
//! reader. `docs/FORMAT.md` is the specification this module implements.

pub mod codec;
pub mod detect;
pub mod dump_header;
pub mod hashpipe;
pub mod layout;
pub mod manifest;
pub mod pgzip;
pub mod reader;
pub(crate) mod seen;
pub mod writer;
pub mod zipped;

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An archive being read: any byte source that can move to a reader thread.
pub type Input<'a> = Box<dyn Read + Send + 'a>;

/// A byte source that can also seek: a regular file.
pub trait ReadSeek: Read + std::io::Seek + Send {}
impl<T: Read + std::io::Seek + Send> ReadSeek for T {}

/// An archive as the reader gets it: a stream for tar and dumps, a file for a zip (whose index
/// is at its end).
pub enum Content<'a> {
    Stream(Input<'a>),
    File {
        reader: Box<dyn ReadSeek + 'a>,
        size: u64,
    },
}

/// What a snapshot holds, named as the cloud names its downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// `.metadata`, `db/db.backup` and `tree/`: "files and database".
    Full,
    /// A bare custom-format dump.
    Database,
    /// A tar of `tree/` only.
    Files,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Full => "full",
            Variant::Database => "database",
            Variant::Files => "files",
        }
    }

    pub fn has_database(self) -> bool {
        matches!(self, Variant::Full | Variant::Database)
    }

    pub fn has_files(self) -> bool {
        matches!(self, Variant::Full | Variant::Files)
    }

    /// True when an archive of this variant holds what `wanted` asks to restore.
    pub fn holds(self, wanted: Variant) -> bool {
        match wanted {
            Variant::Full => self == Variant::Full,
            Variant::Database => self.has_database(),
            Variant::Files => self.has_files(),
        }
    }

    /// The error for asking an archive of this variant for what it does not hold.
    pub fn wrong_variant(self, wanted: Variant) -> crate::Error {
        crate::Error::usage(format!(
            "wrong variant: --variant {wanted} asks for what a {self} archive does not hold"
        ))
        .with_hint("drop --variant to restore whatever the archive holds")
    }

    /// The prefix of the cloud's file name for this variant.
    fn file_prefix(self) -> &'static str {
        match self {
            Variant::Full => "files_and_database",
            Variant::Database => "database",
            Variant::Files => "files",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Variant::Full),
            "database" => Ok(Variant::Database),
            "files" => Ok(Variant::Files),
            other => Err(format!(
                "unknown variant '{other}' (expected full, database or files)"
            )),
        }
    }
}

/// The outer compression of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }

    /// The default level of each codec: gzip 6 as gzip(1) and pigz use, zstd 3 as zstd(1).
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Gzip => 6,
            Compression::Zstd => 3,
            Compression::None => 0,
        }
    }

    pub fn check_level(self, level: i32) -> Result<(), String> {
        let (lo, hi) = match self {
            Compression::Gzip => (0, 9),
            Compression::Zstd => (1, 22),
            Compression::None => return Ok(()),
        };
        if (lo..=hi).contains(&level) {
            Ok(())
        } else {
            Err(format!(
                "--level {level} is out of range for {} ({lo} to {hi})",
                self.as_str()
            ))
        }
    }

    fn tar_extension(self) -> &'static str {
        match self {
            Compression::Gzip => "tar.gz",
            Compression::Zstd => "tar.zst",
            Compression::None => "tar",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" | "gz" => Ok(Compression::Gzip),
            "zstd" | "zst" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            other => Err(format!(
                "unknown compression '{other}' (expected gzip, zstd or none)"
            )),
        }
    }
}

/// A new `tag` and `stamp` for [`cloud_file_name`]: 8 random hex digits and the current minute
/// (UTC). Files made together (prepare-upload's pair) share one.
pub fn new_tag_and_stamp() -> (String, String) {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M").to_string();
    (tag, stamp)
}

/// The file name the cloud gives a download, e.g.
/// `files_and_database-fc9e126f-201811210121.tar.gz`. `tag` is 8 lowercase hex digits and
/// `stamp` is `YYYYMMDDhhmm` (UTC).
pub fn cloud_file_name(
    variant: Variant,
    compression: Compression,
    tag: &str,
    stamp: &str,
) -> String {
    let ext = match variant {
        // A database-only download is a bare dump: the dump compresses itself.
        Variant::Database => "backup",
        Variant::Full | Variant::Files => compression.tar_extension(),
    };
    format!("{}-{tag}-{stamp}.{ext}", variant.file_prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_cloud() {
        assert_eq!(
            cloud_file_name(Variant::Full, Compression::Gzip, "fc9e126f", "201811210121"),
            "files_and_database-fc9e126f-201811210121.tar.gz"
        );
        assert_eq!(
            cloud_file_name(
                Variant::Database,
                Compression::Gzip,
                "fc9e126f",
                "201811210121"
            ),
            "database-fc9e126f-201811210121.backup"
        );
        assert_eq!(
            cloud_file_name(
                Variant::Files,
                Compression::Zstd,
                "0123abcd",
                "202601010000"
            ),
            "files-0123abcd-202601010000.tar.zst"
        );
    }

    #[test]
    fn which_variants_hold_which_parts() {
        use Variant::*;
        assert!(Full.holds(Database) && Full.holds(Files) && Full.holds(Full));
        assert!(Database.holds(Database) && !Database.holds(Full) && !Database.holds(Files));
        assert!(Files.holds(Files) && !Files.holds(Full) && !Files.holds(Database));
        assert!(
            Database
                .wrong_variant(Full)
                .message()
                .contains("wrong variant")
        );
    }

    #[test]
    fn levels_are_checked_per_codec() {
        assert!(Compression::Gzip.check_level(9).is_ok());
        assert!(Compression::Gzip.check_level(10).is_err());
        assert!(Compression::Zstd.check_level(0).is_err());
        assert!(Compression::Zstd.check_level(19).is_ok());
    }
}
