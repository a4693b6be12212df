//! The header of a pg_dump custom-format archive, read without pg_restore.
//!
//! Layout (PostgreSQL's `WriteHead` in pg_backup_archiver.c): `PGDMP`, major, minor and revision
//! bytes, int size, offset size, format byte; then the compression (a byte from archive 1.15
//! on, an int before); then the creation time as seven ints, the database name, the server
//! version and the pg_dump version as strings. Ints are a sign byte followed by `int size`
//! bytes, least significant first; strings are an int length then the bytes.

use serde::Serialize;

use crate::error::{Error, Result};

pub const MAGIC: &[u8] = b"PGDMP";

/// The newest dump archive version the cloud accepts (PostgreSQL 16's pg_dump writes it).
pub const CLOUD_MAX_VERSION: (u8, u8) = (1, 15);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DumpHeader {
    /// Archive format version, e.g. "1.14.0".
    pub archive_version: String,
    #[serde(skip)]
    pub version: (u8, u8, u8),
    /// "custom", "tar", "directory" ...
    pub format: String,
    /// How the data blocks are compressed, e.g. "none", "gzip", "gzip level 6".
    pub compression: String,
    pub created: Option<String>,
    pub database: Option<String>,
    pub server_version: Option<String>,
    pub pg_dump_version: Option<String>,
}

impl DumpHeader {
    /// True when the cloud's upload accepts a dump of this archive version.
    pub fn cloud_accepts(&self) -> bool {
        (self.version.0, self.version.1) <= CLOUD_MAX_VERSION
    }

    /// An error, saying what to do, when the cloud would reject this dump.
    pub fn check_cloud_accepts(&self) -> Result<()> {
        if self.cloud_accepts() {
            return Ok(());
        }
        Err(Error::environment(format!(
            "the dump has archive version {} (pg_dump {}), newer than the {}.{} the cloud \
             accepts; the cloud would reject this upload",
            self.archive_version,
            self.pg_dump_version.as_deref().unwrap_or("?"),
            CLOUD_MAX_VERSION.0,
            CLOUD_MAX_VERSION.1
        ))
        .with_hint(
            "dump with a PostgreSQL 16 or older client: pass its bin directory with --pg-bin \
             (the server must be no newer than that client)",
        ))
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    int_size: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| Error::corrupt("the dump header is cut short"))?;
        self.pos += 1;
        Ok(b)
    }

    fn int(&mut self) -> Result<i64> {
        let negative = self.byte()? != 0;
        let mut value: i64 = 0;
        for i in 0..self.int_size {
            let b = self.byte()? as i64;
            if i < 8 {
                value |= b << (8 * i);
            }
        }
        Ok(if negative { -value } else { value })
    }

    fn string(&mut self) -> Result<Option<String>> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        if len > 4096 || self.pos + len > self.buf.len() {
            return Err(Error::corrupt(
                "the dump header holds an impossible string length",
            ));
        }
        let s = String::from_utf8_lossy(&self.buf[self.pos..self.pos + len]).into_owned();
        self.pos += len;
        Ok(Some(s))
    }
}

/// Parses the header from the first bytes of a dump (a few hundred bytes suffice; give 4 KiB).
pub fn parse(buf: &[u8]) -> Result<DumpHeader> {
    if !buf.starts_with(MAGIC) {
        return Err(Error::not_an_archive(
            "not a pg_dump custom-format archive (no PGDMP signature)",
        ));
    }
    let mut c = Cursor {
        buf,
        pos: MAGIC.len(),
        int_size: 4,
    };
    let version = (c.byte()?, c.byte()?, c.byte()?);
    let int_size = c.byte()? as usize;
    let _off_size = c.byte()?;
    if !(1..=8).contains(&int_size) {
        return Err(Error::corrupt(format!(
            "the dump header gives an impossible integer size {int_size}"
        )));
    }
    c.int_size = int_size;
    let format = match c.byte()? {
        1 => "custom",
        2 => "files",
        3 => "tar",
        4 => "null",
        5 => "directory",
        _ => "unknown",
    }
    .to_string();
    if version.0 != 1 || version.1 < 10 {
        // Old enough (PostgreSQL < 9.0) that we do not decode the rest; report what we know.
        return Ok(DumpHeader {
            archive_version: format!("{}.{}.{}", version.0, version.1, version.2),
            version,
            format,
            compression: "unknown".into(),
            created: None,
            database: None,
            server_version: None,
            pg_dump_version: None,
        });
    }
    let compression = if version.1 >= 15 {
        match c.byte()? {
            0 => "none".to_string(),
            1 => "gzip".to_string(),
            2 => "lz4".to_string(),
            3 => "zstd".to_string(),
            other => format!("algorithm {other}"),
        }
    } else {
        match c.int()? {
            0 => "none".to_string(),
            -1 => "gzip (default level)".to_string(),
            level => format!("gzip level {level}"),
        }
    };
    let mut t = [0i64; 7];
    for v in t.iter_mut() {
        *v = c.int()?;
    }
    let created = Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t[5] + 1900,
        t[4] + 1,
        t[3],
        t[2],
        t[1],
        t[0]
    ));
    let database = c.string()?;
    let server_version = c.string()?;
    let pg_dump_version = c.string()?;
    Ok(DumpHeader {
        archive_version: format!("{}.{}.{}", version.0, version.1, version.2),
        version,
        format,
        compression,
        created,
        database,
        server_version,
        pg_dump_version,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a header as pg_dump writes it, for the version given.
    pub fn craft(major: u8, minor: u8) -> Vec<u8> {
        fn int(out: &mut Vec<u8>, v: i64) {
            out.push(u8::from(v < 0));
            out.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        fn string(out: &mut Vec<u8>, s: &str) {
            int(out, s.len() as i64);
            out.extend_from_slice(s.as_bytes());
        }
        let mut h = b"PGDMP".to_vec();
        h.extend_from_slice(&[major, minor, 0, 4, 8, 1]);
        if minor >= 15 {
            h.push(0);
        } else {
            int(&mut h, 0);
        }
        for v in [5, 4, 3, 21, 10, 126, 0] {
            int(&mut h, v);
        }
        string(&mut h, "app");
        string(&mut h, "16.4");
        string(&mut h, "16.4");
        h
    }

    #[test]
    fn parses_a_crafted_header() {
        let h = parse(&craft(1, 14)).unwrap();
        assert_eq!(h.archive_version, "1.14.0");
        assert_eq!(h.format, "custom");
        assert_eq!(h.compression, "none");
        assert_eq!(h.created.as_deref(), Some("2026-11-21 03:04:05"));
        assert_eq!(h.database.as_deref(), Some("app"));
        assert_eq!(h.server_version.as_deref(), Some("16.4"));
        assert!(h.cloud_accepts());
    }

    #[test]
    fn newer_than_the_cloud_accepts_is_flagged() {
        assert!(parse(&craft(1, 15)).unwrap().cloud_accepts());
        assert!(parse(&craft(1, 15)).unwrap().check_cloud_accepts().is_ok());
        let too_new = parse(&craft(1, 16)).unwrap();
        assert!(!too_new.cloud_accepts());
        let e = too_new.check_cloud_accepts().unwrap_err();
        assert!(e.message().contains("1.16.0"), "{e}");
        assert!(e.hint().unwrap().contains("--pg-bin"));
    }

    #[test]
    fn cut_and_foreign_headers_are_errors() {
        let h = craft(1, 14);
        assert!(parse(&h[..20]).is_err());
        assert_eq!(
            parse(b"hello world").unwrap_err().kind(),
            crate::error::ErrorKind::NotAnArchive
        );
    }
}
